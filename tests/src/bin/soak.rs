//! `cairn-soak`: runs the deterministic simulator over many seeds, on several threads, until
//! the first failure.
//!
//! ```text
//! cairn-soak [--seeds N] [--start S] [--threads T]
//! ```
//!
//! Seeds `S..S+N` run (default 10 000 seeds from 0, on 2 threads). Progress goes to stderr;
//! the summary to stdout. Exit codes: 0 when every seed passed, 1 on the first failing seed
//! (printed with the command that replays it), 2 on bad arguments.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_tests::sim::{Failure, Outcome, run_seed};

/// How often progress is printed.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

struct Args {
    n_seeds: u64,
    start: u64,
    n_threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { n_seeds: 10_000, start: 0, n_threads: 2 };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = iter.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number: u64 = value.parse().map_err(|_| format!("{flag} takes a number, got {value:?}"))?;
        match flag.as_str() {
            "--seeds" => args.n_seeds = number,
            "--start" => args.start = number,
            "--threads" => {
                args.n_threads = usize::try_from(number).map_err(|_| "--threads is too large")?.max(1)
            }
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    Ok(args)
}

/// Totals over the seeds that passed.
#[derive(Default)]
struct Totals {
    n_seeds: u64,
    n_events: u64,
    n_messages: u64,
    n_invalid_crafted: u64,
    n_equivocators: u64,
    n_evicted: u64,
    virtual_ms: u64,
    n_honest_writes: u64,
    n_writes_refused: u64,
    n_crashes: u64,
    n_crash_jobs_landed: u64,
    n_crash_jobs_lost: u64,
    n_restarts: u64,
    n_disk_full: u64,
    n_commits: u64,
    n_commits_no_space: u64,
    n_mutes: u64,
    n_link_full: u64,
    n_removals_planned: u64,
    n_member_ops: u64,
    n_member_changes: u64,
    n_context_ops: u64,
    n_stale_context_ops: u64,
}

impl Totals {
    fn add(&mut self, outcome: &Outcome) {
        self.n_seeds += 1;
        self.n_events += outcome.n_accepted as u64;
        self.n_messages += outcome.n_messages;
        self.n_invalid_crafted += outcome.n_invalid_crafted as u64;
        self.n_equivocators += outcome.n_equivocators as u64;
        self.n_evicted += outcome.n_evicted;
        self.virtual_ms += outcome.quiescent_ms;
        self.n_honest_writes += outcome.n_honest_writes as u64;
        self.n_writes_refused += outcome.writes_refused.values().sum::<u64>();
        self.n_crashes += outcome.n_crashes;
        self.n_crash_jobs_landed += outcome.n_crash_jobs_landed;
        self.n_crash_jobs_lost += outcome.n_crash_jobs_lost;
        self.n_restarts += outcome.n_restarts;
        self.n_disk_full += outcome.n_disk_full;
        self.n_commits += outcome.n_commits;
        self.n_commits_no_space += outcome.n_commits_no_space;
        self.n_mutes += outcome.n_mutes;
        self.n_link_full += outcome.n_link_full;
        self.n_removals_planned += u64::from(outcome.removal_planned);
        self.n_member_ops += outcome.n_member_ops;
        self.n_member_changes += outcome.n_member_changes as u64;
        self.n_context_ops += outcome.n_context_ops;
        self.n_stale_context_ops += outcome.n_stale_context_ops;
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            if !error.is_empty() {
                eprintln!("cairn-soak: {error}");
            }
            eprintln!("usage: cairn-soak [--seeds N] [--start S] [--threads T]");
            return ExitCode::from(2);
        }
    };
    let end = args.start.saturating_add(args.n_seeds);
    let next = AtomicU64::new(args.start);
    let n_done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<Failure>> = Mutex::new(None);
    let totals = Mutex::new(Totals::default());
    let started = Instant::now();
    eprintln!("cairn-soak: seeds {}..{end} on {} threads", args.start, args.n_threads);

    std::thread::scope(|scope| {
        for _ in 0..args.n_threads {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    match run_seed(seed) {
                        Ok(outcome) => {
                            // A poisoned lock means another thread panicked outside a run,
                            // which `run_seed` prevents; the totals are then still usable.
                            totals.lock().unwrap_or_else(|e| e.into_inner()).add(&outcome);
                            n_done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => {
                            stop.store(true, Ordering::Relaxed);
                            let mut first = failure.lock().unwrap_or_else(|e| e.into_inner());
                            if first.as_ref().is_none_or(|f| error.seed < f.seed) {
                                *first = Some(error);
                            }
                        }
                    }
                }
            });
        }
        let mut last = Instant::now();
        while n_done.load(Ordering::Relaxed) < args.n_seeds && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() >= PROGRESS_INTERVAL {
                last = Instant::now();
                let done = n_done.load(Ordering::Relaxed);
                let elapsed = started.elapsed().as_secs_f64();
                eprintln!(
                    "cairn-soak: {done}/{} seeds, {elapsed:.0} s, {:.1} seeds/s",
                    args.n_seeds,
                    done as f64 / elapsed
                );
            }
        }
    });

    let elapsed = started.elapsed().as_secs_f64();
    let totals = totals.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(failure) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        println!("cairn-soak: {failure}");
        println!("cairn-soak: {} other seeds passed, in {elapsed:.1} s", totals.n_seeds);
        return ExitCode::FAILURE;
    }
    println!(
        "cairn-soak: {} seeds passed in {elapsed:.1} s ({:.1} seeds/s on {} threads)",
        totals.n_seeds,
        totals.n_seeds as f64 / elapsed.max(1e-9),
        args.n_threads
    );
    println!(
        "cairn-soak: {} events accepted, {} messages delivered, {} crafted invalid events refused, {} equivocators \
         proven, {} buffered events evicted, {:.0} virtual seconds",
        totals.n_events,
        totals.n_messages,
        totals.n_invalid_crafted,
        totals.n_equivocators,
        totals.n_evicted,
        totals.virtual_ms as f64 / 1000.0
    );
    println!(
        "cairn-soak: {} honest writes acknowledged, {} not; {} commits stored, {} refused for want of space in {} \
         full-disk windows",
        totals.n_honest_writes,
        totals.n_writes_refused,
        totals.n_commits,
        totals.n_commits_no_space,
        totals.n_disk_full
    );
    println!(
        "cairn-soak: {} runs set out to remove a Byzantine member; honest nodes signed {} membership ops; {} \
         membership changes took effect",
        totals.n_removals_planned, totals.n_member_ops, totals.n_member_changes
    );
    println!(
        "cairn-soak: {} ops of honest clients carried a causal context, {} of them read before a later write",
        totals.n_context_ops, totals.n_stale_context_ops
    );
    println!(
        "cairn-soak: {} crashes ({} with a commit that landed, {} with one lost), {} restarts with a lost store, {} \
         peers muted, {} times a transport queue was full",
        totals.n_crashes,
        totals.n_crash_jobs_landed,
        totals.n_crash_jobs_lost,
        totals.n_restarts,
        totals.n_mutes,
        totals.n_link_full
    );
    ExitCode::SUCCESS
}
