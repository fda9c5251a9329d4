//! `cairn-bench`: Cairn's performance figures, each given as a ratio against a baseline measured
//! in the same run on the same machine.
//!
//! ```text
//! cairn-bench [all | verify | ingest | sync | membership]... [--quick] [--out FILE]
//! ```
//!
//! - `verify`: the baseline, raw `verify_strict` per second on one and on two threads.
//! - `ingest`: events validated and applied per second through a [`Node`] (adapter and
//!   document), against `verify_strict` per second on the same number of threads.
//! - `sync`: flights, round trips and bytes of reconciliation sessions between two nodes,
//!   against the bytes of the events that had to move.
//! - `membership`: resolving the membership in force on histories of 10 to 1 000 changes,
//!   against `verify_strict` on one thread.
//!
//! Test data is signed before any clock starts. The tables go to stdout in markdown, and to
//! `FILE` too with `--out`. `--quick` shrinks every size for a smoke test.

#[path = "../protocol/data.rs"]
mod data;
#[path = "../protocol/membership.rs"]
mod membership;
#[path = "../protocol/sync.rs"]
mod sync;

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use cairn_bench::VerifySet;
use cairn_crypto::SecretKey;
use cairn_protocol::Adapter;
use cairn_protocol::node::{Node, NodeConfig};

use data::{Cast, View, chain, drain_events, events_messages, small_ops};

/// Times each measurement is repeated; the median is reported.
const REPEATS: usize = 3;

const USAGE: &str =
    "usage: cairn-bench [all | verify | ingest | sync | membership]... [--quick] [--out FILE]";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Command {
    Verify,
    Ingest,
    Sync,
    Membership,
}

struct Args {
    commands: Vec<Command>,
    quick: bool,
    out: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { commands: Vec::new(), quick: false, out: None };
    // One ingest of one stream on one thread, nothing else, for `valgrind --tool=callgrind`:
    // `cairn-bench membership-count plain|changes` (see `membership::count_run`).
    let all: Vec<String> = std::env::args().skip(1).collect();
    if all.first().map(String::as_str) == Some("membership-count") {
        let with_changes = match all.get(1).map(String::as_str) {
            Some("plain") => false,
            Some("changes") => true,
            _ => return Err("membership-count takes plain or changes".to_owned()),
        };
        membership::count_run(with_changes, 20_000);
        std::process::exit(0);
    }
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "all" => {
                args.commands.extend([Command::Verify, Command::Ingest, Command::Sync, Command::Membership])
            }
            "verify" => args.commands.push(Command::Verify),
            "ingest" => args.commands.push(Command::Ingest),
            "sync" => args.commands.push(Command::Sync),
            "membership" => args.commands.push(Command::Membership),
            "--quick" => args.quick = true,
            "--out" => args.out = Some(it.next().ok_or("--out needs a file name")?.into()),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.commands.is_empty() {
        return Err("name at least one benchmark".to_owned());
    }
    args.commands.dedup();
    Ok(args)
}

struct Sizes {
    verify: usize,
    ingest: usize,
    sync: sync::SyncSizes,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                verify: 2_000,
                ingest: 2_000,
                sync: sync::SyncSizes {
                    in_sync: 5_000,
                    lack_base: 1_000,
                    lack: 1_000,
                    both: vec![10, 100],
                    both_value_bytes: 1_000,
                    fork_prefix: 500,
                    fork_k: vec![1, 10, 100],
                },
            }
        } else {
            Self {
                verify: 20_000,
                ingest: 20_000,
                sync: sync::SyncSizes {
                    in_sync: 100_000,
                    lack_base: 10_000,
                    lack: 10_000,
                    both: vec![10, 100, 1_000],
                    both_value_bytes: 1_000,
                    fork_prefix: 10_000,
                    fork_k: vec![1, 10, 1_000],
                },
            }
        }
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn runs(xs: &[f64]) -> String {
    xs.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" / ")
}

/// A whole number with thin thousands separators, for the tables.
fn n(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

// ---- verify ---------------------------------------------------------------------------------

/// A warning when two threads verify less than 1.5 times as fast as one: then another process
/// held the second core, and every two-thread figure of the run is suspect.
fn contention_note(one: f64, two: f64) -> String {
    let speedup = two / one;
    if speedup < 1.5 {
        format!(
            "**Warning: two threads verified only {speedup:.2}× as fast as one; another process was using \
             the second core, so the two-thread figures are not reliable. Rerun on an idle machine.**\n\n"
        )
    } else {
        String::new()
    }
}

fn verify_section(out: &mut String, set: &VerifySet) {
    let mut all = [Vec::new(), Vec::new()];
    for _ in 0..REPEATS {
        all[0].push(set.run(1));
        all[1].push(set.run(2));
    }
    let per_sec = [median(all[0].clone()), median(all[1].clone())];
    eprintln!("verify: {:.0}/s on 1 thread, {:.0}/s on 2", per_sec[0], per_sec[1]);
    let _ = writeln!(out, "## verify: the baseline\n");
    let _ = writeln!(out, "| measurement | threads | signatures | per second (median of {REPEATS}) | runs |");
    let _ = writeln!(out, "|---|---:|---:|---:|---|");
    let size = n(set.len() as f64);
    let _ = writeln!(
        out,
        "| `verify_strict`, one after another | 1 | {size} | {} | {} |",
        n(per_sec[0]),
        runs(&all[0])
    );
    let _ = writeln!(
        out,
        "| `verify_many(checks, 2)`, one batch | 2 | {size} | {} | {} |",
        n(per_sec[1]),
        runs(&all[1])
    );
    let _ = writeln!(
        out,
        "\n32-byte messages (as event ids are), each signed by a distinct key. Two-thread speed-up: {:.2}×.\n",
        per_sec[1] / per_sec[0]
    );
    out.push_str(&contention_note(per_sec[0], per_sec[1]));
}

// ---- ingest ---------------------------------------------------------------------------------

/// One path measured on one thread count, each run right after a baseline run.
struct IngestRow {
    path: &'static str,
    threads: usize,
    runs: Vec<f64>,
    baseline_runs: Vec<f64>,
}

impl IngestRow {
    /// The median of the per-run ratios to the baseline run just before.
    fn ratio(&self) -> f64 {
        median(self.runs.iter().zip(&self.baseline_runs).map(|(x, b)| x / b).collect())
    }
}

fn ingest_section(out: &mut String, cast: &Cast, n_events: usize, set: &VerifySet) {
    eprintln!("ingest: signing {n_events} events of 3 authors");
    let mut view = View::default();
    let writers: Vec<&SecretKey> = cast.writers.iter().collect();
    let events = chain(&mut view, &writers, n_events, |i| small_ops(i, 0));
    let mean_bytes = events.iter().map(Vec::len).sum::<usize>() as f64 / n_events as f64;
    let messages = events_messages(&events);
    let peer = cast.b.public();

    let node_run = |config: &NodeConfig| {
        let mut node = Node::new(cast.genesis.clone(), Some(cast.a.public()), config.clone());
        assert!(node.handle_connected(peer, 0), "the sender is a member");
        let mut accepted = 0usize;
        let start = Instant::now();
        for message in &messages {
            node.handle_message(peer, message, 0);
            while node.poll_transmit().is_some() {}
            accepted += drain_events(&mut node).accepted;
        }
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(accepted, n_events, "every generated event is accepted");
        assert_eq!(node.adapter().n_accepted(), n_events);
        drop(black_box(node));
        n_events as f64 / secs
    };
    let adapter_run = |config: &NodeConfig| {
        let mut adapter = Adapter::new(cast.genesis.clone(), config.adapter.clone());
        let chunks: Vec<Vec<Vec<u8>>> = events.chunks(data::CHUNK_EVENTS).map(<[_]>::to_vec).collect();
        let start = Instant::now();
        let mut accepted = 0usize;
        for chunk in chunks {
            accepted += adapter.ingest(peer, chunk).accepted.len();
        }
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(accepted, n_events, "every generated event is accepted");
        drop(black_box(adapter));
        n_events as f64 / secs
    };

    let mut rows = Vec::new();
    let mut baselines = [0.0; 2];
    for threads in [1, 2] {
        let mut config = NodeConfig::default();
        config.adapter.verify_threads = threads;
        let mut node =
            IngestRow { path: "Node::handle_message", threads, runs: Vec::new(), baseline_runs: Vec::new() };
        let mut adapter =
            IngestRow { path: "Adapter::ingest only", threads, runs: Vec::new(), baseline_runs: Vec::new() };
        for _ in 0..REPEATS {
            let b = set.run(threads);
            node.baseline_runs.push(b);
            node.runs.push(node_run(&config));
            let b = set.run(threads);
            adapter.baseline_runs.push(b);
            adapter.runs.push(adapter_run(&config));
        }
        let mut all_baselines = node.baseline_runs.clone();
        all_baselines.extend(&adapter.baseline_runs);
        baselines[threads - 1] = median(all_baselines);
        eprintln!(
            "ingest: {threads} thread(s): node {:.0}/s ({:.2}), adapter {:.0}/s ({:.2})",
            median(node.runs.clone()),
            node.ratio(),
            median(adapter.runs.clone()),
            adapter.ratio()
        );
        rows.push(node);
        rows.push(adapter);
    }

    let _ = writeln!(out, "## ingest: events validated and applied per second\n");
    let _ = writeln!(
        out,
        "| path | threads | events/s (median of {REPEATS}) | `verify_strict`/s, same threads, interleaved | \
         ratio | target | runs: events/s (baseline/s) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---|---|");
    for r in &rows {
        let ratio = r.ratio();
        let target = if r.path.starts_with("Node") {
            if ratio >= 0.8 { "≥ 0.8 met" } else { "≥ 0.8 MISSED" }
        } else {
            "(diagnostic)"
        };
        let detail: Vec<String> =
            r.runs.iter().zip(&r.baseline_runs).map(|(x, b)| format!("{x:.0} ({b:.0})")).collect();
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {ratio:.2} | {target} | {} |",
            r.path,
            r.threads,
            n(median(r.runs.clone())),
            n(median(r.baseline_runs.clone())),
            detail.join(" / ")
        );
    }
    let _ = writeln!(
        out,
        "\n{} events from 3 authors in chains (each event depends on the newest event of every author), \
         one or two small ops each, {mean_bytes:.0} bytes on average, delivered in `Events` messages of \
         {} events to a fresh node (`adapter.verify_threads` = threads) after `handle_connected`; \
         `poll_transmit` and `poll_event` are drained after each message. The clock covers decoding, \
         validation, signature checks, the document and the driver's drain. The adapter-only rows feed \
         the same chunks to `Adapter::ingest` without the message codec, the document or the node. \
         Each run comes right after a baseline run on the same thread count (the `verify` set of {} \
         signatures), and the ratio is the median of the per-run ratios, so a burst of load from \
         another process skews both sides of a ratio alike.\n",
        n(n_events as f64),
        data::CHUNK_EVENTS,
        n(set.len() as f64)
    );
    out.push_str(&contention_note(baselines[0], baselines[1]));
}

// ---- sync -----------------------------------------------------------------------------------

fn sync_table(out: &mut String, rows: &[sync::Row]) {
    let _ = writeln!(out, "## sync: reconciliation between two nodes\n");
    let _ = writeln!(
        out,
        "| scenario | flights | round trips | messages | wire bytes | events to move | their bytes | \
         wire / event bytes | events sent | targets | ms (one run) | check | next session |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---|");
    for r in rows {
        let rt = r.flights as f64 / 2.0;
        let ratio = (r.moved_bytes > 0).then(|| r.wire_bytes as f64 / r.moved_bytes as f64);
        let mut targets = Vec::new();
        if let Some(t) = r.rt_target {
            targets.push(format!("rt ≤ {t} {}", if rt <= t { "met" } else { "MISSED" }));
        }
        if let (Some(t), Some(ratio)) = (r.ratio_target, ratio) {
            targets.push(format!("ratio ≤ {t} {}", if ratio <= t { "met" } else { "MISSED" }));
        }
        let _ = writeln!(
            out,
            "| {} | {} | {rt} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {} |",
            r.scenario,
            r.flights,
            r.messages,
            n(r.wire_bytes as f64),
            n(r.moved_events as f64),
            n(r.moved_bytes as f64),
            ratio.map_or("—".to_owned(), |x| format!("{x:.3}")),
            n(r.events_sent as f64),
            if targets.is_empty() { "—".to_owned() } else { targets.join(", ") },
            r.elapsed.as_secs_f64() * 1e3,
            r.check,
            if r.follow_up.is_empty() {
                "NONE started".to_owned()
            } else {
                format!("{} flights", r.follow_up.len())
            }
        );
    }
    let _ = writeln!(
        out,
        "\nHow it was measured. Each scenario builds two fresh nodes A and B and gives each its event set \
         before they connect (a loader peer, connected only while it loads), so nothing is pushed. \
         Only A (or B where named) is ever given `handle_timeout`, so only that one session runs. \
         Messages move in lockstep waves: everything queued on one side is delivered to the other (one \
         flight), then everything that side queued goes back (the next flight), until the side whose \
         turn it is has nothing to send; round trips = flights / 2. Wire bytes are the encoded \
         messages (transport framing not included). Events to move are those held by one side only \
         before the session; the ratio is wire bytes over their encoded bytes (Events messages add 8 \
         bytes per event and 12 per message). Events sent counts the events in Events messages; the \
         check fails if it differs from the events to move (an event sent twice or not at all). \
         Targets: wire / event bytes ≤ 1.05 wherever events move, round trips ≤ 1.5 in (c), and one \
         round trip in (a) as `docs/PROTOCOL.md` §12 states; the others have no round-trip target. ms is the wall time of the whole session in one thread, \
         validation of the moved events included. The check compares `sync_digest()`, \
         `document().digest()` and the event counts of A and B after the session. The next-session \
         column is a liveness check: one sync interval after the measured session, the initiator is \
         given `handle_timeout` again and should open a new session (a summary answered by in_sync).\n\n\
         (c) steady state: A and B load the n shared events, connect, and A runs one session to \
         completion (summary, in_sync: A records the in-sync digest for B). Then the connection \
         drops, each writes n events with its own key (`prepare_writes`, `commit_writes`) while \
         apart, they reconnect, time moves one sync interval and A starts the measured session. The \
         last in-sync digest survives the reconnection, and A's set changed since, so A opens with \
         its tips. In the row where B starts, B only answered that previous session. (A push on a \
         live connection is never lost: the stream is reliable and ordered, and a dropped \
         connection forgets what was sent on it.)\n\n\
         (d) the forking author is one of five that wrote the shared prefix in turn; its two branches \
         have only their own predecessor as dep after the fork, so A and B each hold a valid, \
         fork-free set and find the fork during the session.\n"
    );
    let _ = writeln!(out, "### Flights of each session\n");
    for r in rows {
        let _ = writeln!(out, "- {}:", r.scenario);
        for (i, line) in r.trace.iter().enumerate() {
            let _ = writeln!(out, "  {}. {line}", i + 1);
        }
        let next = if r.follow_up.is_empty() { "none started".to_owned() } else { r.follow_up.join(" | ") };
        let _ = writeln!(out, "  - next session, one interval later: {next}");
    }
    let _ = writeln!(out);
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            if error.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("cairn-bench: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let sizes = Sizes::new(args.quick);
    let cast = Cast::new();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mut out = String::new();
    let _ = writeln!(out, "# cairn-bench{}\n", if args.quick { " --quick" } else { "" });
    let _ = writeln!(
        out,
        "`available_parallelism()` = {cores}; release build: {}; each rate is a median of {REPEATS} runs; \
         the sync sessions are deterministic (their ms column is one run).\n",
        !cfg!(debug_assertions)
    );

    let mut verify_set: Option<VerifySet> = None;
    for command in &args.commands {
        match command {
            Command::Verify => {
                let set = verify_set.get_or_insert_with(|| {
                    eprintln!("verify: signing {} messages with distinct keys", sizes.verify);
                    VerifySet::new(sizes.verify)
                });
                verify_section(&mut out, set);
            }
            Command::Ingest => {
                let set = verify_set.get_or_insert_with(|| {
                    eprintln!("verify: signing {} messages with distinct keys", sizes.verify);
                    VerifySet::new(sizes.verify)
                });
                ingest_section(&mut out, &cast, sizes.ingest, set);
            }
            Command::Sync => {
                eprintln!("sync: building scenarios");
                let rows = sync::run(&cast, &sizes.sync);
                sync_table(&mut out, &rows);
            }
            Command::Membership => {
                let set = verify_set.get_or_insert_with(|| {
                    eprintln!("verify: signing {} messages with distinct keys", sizes.verify);
                    VerifySet::new(sizes.verify)
                });
                membership::section(&mut out, set, args.quick);
                membership::ingest_section(&mut out, set, if args.quick { 20_000 } else { 40_000 });
            }
        }
    }
    print!("{out}");
    if let Some(path) = &args.out
        && let Err(error) = std::fs::write(path, &out)
    {
        eprintln!("cairn-bench: writing {}: {error}", path.display());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
