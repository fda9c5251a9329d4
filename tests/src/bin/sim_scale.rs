//! `cairn-sim-scale`: what dissemination costs as a cluster grows (issue 14), in the
//! deterministic simulator, on virtual time. For each cluster size, node 0 writes `--writes`
//! times, one write at a time: each write waits until every honest node has accepted its
//! event, which gives the time to convergence. Reported per event and per honest node: messages
//! and bytes sent (pushes, relays, announcements, grafts, anti-entropy sessions, all of them),
//! copies of each event received, and connections per node.
//!
//! ```text
//! cairn-sim-scale [--sizes 10,30,100] [--writes 50] [--seed S] [--mesh]
//!                 [--byzantine PERCENT] [--faults]
//! ```
//!
//! `--mesh` connects every pair (the cluster before issue 14); without it each node draws its
//! connections from the overlay (outbound 6, inbound from any member). `--byzantine 20` makes the
//! last 20 % of the nodes Byzantine: they withhold every message, attack with noise, replays and
//! orphans, and dial every honest node to fill its inbound slots. `--faults` drops and
//! duplicates up to 5 % of messages on each link.

use std::process::ExitCode;

use cairn_protocol::limits::MEMBERS_MAX;
use cairn_tests::sim::scale::{Scenario, measure};
use cairn_tests::sim::sim_overlay_config;

struct Args {
    sizes: Vec<usize>,
    writes: usize,
    seed: u64,
    mesh: bool,
    byzantine_percent: usize,
    faults: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        sizes: vec![10, 30, 100],
        writes: 50,
        seed: 14,
        mesh: false,
        byzantine_percent: 0,
        faults: false,
    };
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
            "--byzantine" => {
                args.byzantine_percent =
                    value()?.parse().map_err(|_| "--byzantine takes a percentage".to_owned())?;
                if args.byzantine_percent >= 50 {
                    return Err("--byzantine must be under 50 (a percentage)".to_owned());
                }
            }
            "--mesh" => args.mesh = true,
            "--faults" => args.faults = true,
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
            eprintln!(
                "usage: cairn-sim-scale [--sizes 10,30,100] [--writes 50] [--seed S] [--mesh] [--byzantine PERCENT] [--faults]"
            );
            return ExitCode::from(2);
        }
    };
    println!(
        "| nodes | Byzantine | events | copies of each event a node receives | messages / event / node | bytes / event / node | connections per node, mean / max | convergence after a write, median / max (virtual ms) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &args.sizes {
        let scenario = Scenario {
            n_nodes: n,
            writes: args.writes,
            seed: args.seed,
            overlay: (!args.mesh).then(sim_overlay_config),
            n_byzantine: n * args.byzantine_percent / 100,
            faults: args.faults,
        };
        let figures = match measure(&scenario) {
            Ok(figures) => figures,
            Err(error) => {
                eprintln!("cairn-sim-scale: {error}");
                return ExitCode::FAILURE;
            }
        };
        println!(
            "| {} | {} | {} | {:.2} | {:.1} | {:.0} | {:.1} / {} | {} / {} |",
            figures.n_nodes,
            scenario.n_byzantine,
            figures.events,
            figures.copies_per_event(),
            figures.messages_per_event_per_node(),
            figures.bytes_per_event_per_node(),
            figures.connections_mean,
            figures.connections_max,
            figures.convergence_median_ms(),
            figures.convergence_max_ms(),
        );
    }
    ExitCode::SUCCESS
}
