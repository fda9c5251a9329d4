//! `cairn-sim-scale`: what today's full mesh costs as a cluster grows (issue 14, point 1), in
//! the deterministic simulator, on virtual time. For each cluster size, one node writes
//! `--writes` times, one write at a time: each write waits until every node has accepted its
//! event, which gives the time to convergence; then the cluster is left until quiet. Reported
//! per event and per node: reconciliation messages and bytes delivered (pushes, relays,
//! anti-entropy sessions, all of them), and events received more than once.
//!
//! ```text
//! cairn-sim-scale [--sizes 10,30,60] [--writes 20] [--seed S]
//! ```
//!
//! A genesis holds at most `MEMBERS_MAX` (64) members, so 100 nodes need that limit raised
//! first (issue 14).

use std::process::ExitCode;

use cairn_protocol::limits::MEMBERS_MAX;
use cairn_tests::sim::scale::measure;

struct Args {
    sizes: Vec<usize>,
    writes: usize,
    seed: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { sizes: vec![10, 30, MEMBERS_MAX], writes: 20, seed: 14 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--sizes" => {
                args.sizes = value()?
                    .split(',')
                    .map(|n| n.trim().parse().map_err(|_| format!("not a size: {n}")))
                    .collect::<Result<_, _>>()?;
            }
            "--writes" => args.writes = value()?.parse().map_err(|_| "--writes takes a number".to_owned())?,
            "--seed" => args.seed = value()?.parse().map_err(|_| "--seed takes a number".to_owned())?,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if let Some(n) = args.sizes.iter().find(|&&n| !(3..=MEMBERS_MAX).contains(&n)) {
        return Err(format!("a cluster of {n} nodes: sizes are 3 to {MEMBERS_MAX} (MEMBERS_MAX)"));
    }
    if args.writes == 0 {
        return Err("--writes must be at least 1".to_owned());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            if !error.is_empty() {
                eprintln!("cairn-sim-scale: {error}");
            }
            eprintln!("usage: cairn-sim-scale [--sizes 10,30,60] [--writes 20] [--seed S]");
            return ExitCode::from(2);
        }
    };
    println!(
        "| nodes | events | copies of each event a node receives | messages / event / node | bytes / event / node | convergence after a write, median / max (virtual ms) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for &n in &args.sizes {
        let figures = match measure(n, args.writes, args.seed) {
            Ok(figures) => figures,
            Err(error) => {
                eprintln!("cairn-sim-scale: {error}");
                return ExitCode::FAILURE;
            }
        };

        let mut sorted = figures.convergence_ms.clone();
        sorted.sort_unstable();
        println!(
            "| {} | {} | {:.2} | {:.1} | {:.0} | {} / {} |",
            figures.n_nodes,
            figures.events,
            figures.copies_per_event(),
            figures.messages_per_event_per_node(),
            figures.bytes_per_event_per_node(),
            sorted[sorted.len() / 2],
            sorted[sorted.len() - 1],
        );
    }
    ExitCode::SUCCESS
}
