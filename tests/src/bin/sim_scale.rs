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
use cairn_tests::sim::{Cluster, LinkProfile, Scripted, SimConfig};

/// Virtual milliseconds a write may take to reach every node before the run is called stuck.
const CONVERGENCE_DEADLINE_MS: u64 = 60_000;
/// Virtual milliseconds between a write's convergence and the next write.
const WRITE_GAP_MS: u64 = 50;

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

/// What one cluster size cost.
struct Figures {
    n_nodes: usize,
    events: u64,
    messages: u64,
    bytes: u64,
    /// Events received from peers, over all nodes (an event sent to a node twice counts twice).
    received: u64,
    convergence_ms: Vec<u64>,
}

/// Events every node received from its peers so far, in all.
fn received(cluster: &Cluster, n_nodes: usize) -> u64 {
    (0..n_nodes)
        .flat_map(|i| (0..n_nodes).filter(move |&j| j != i).map(move |j| (i, j)))
        .filter_map(|(i, j)| cluster.node(i).peer_stats(&cluster.public(j)).map(|stats| stats.events_in))
        .sum()
}

fn measure(n_nodes: usize, writes: usize, seed: u64) -> Result<Figures, String> {
    let mut config = SimConfig::quiet(seed, n_nodes);
    config.n_writes = 0;
    config.links = LinkProfile::reliable(10);
    let mut cluster = Cluster::new(config);
    // Connections and the first sessions, before anything is counted.
    let settle =
        |cluster: &mut Cluster| cluster.run_until_quiescent(cluster.now_ms() + CONVERGENCE_DEADLINE_MS);
    settle(&mut cluster)?;
    let before = cluster.outcome();
    let received_before = received(&cluster, n_nodes);
    let accepted = |cluster: &Cluster, i: usize| cluster.node(i).adapter().n_accepted();
    let accepted_before = accepted(&cluster, 0);
    let mut convergence_ms = Vec::with_capacity(writes);
    for _ in 0..writes {
        let start = cluster.now_ms() + WRITE_GAP_MS;
        let target = accepted(&cluster, 0);
        cluster.schedule(start, Scripted::Write { node: 0 });
        cluster.run_until(start)?;
        // The write's event (or events) accepted by its node, then by every node.
        while accepted(&cluster, 0) <= target {
            if !cluster.step()? || cluster.now_ms() > start + CONVERGENCE_DEADLINE_MS {
                return Err(format!("{n_nodes} nodes: the write was not accepted by its node"));
            }
        }
        let goal = accepted(&cluster, 0);
        while (0..n_nodes).any(|i| accepted(&cluster, i) < goal) {
            if !cluster.step()? || cluster.now_ms() > start + CONVERGENCE_DEADLINE_MS {
                return Err(format!("{n_nodes} nodes: a write did not reach every node"));
            }
        }
        convergence_ms.push(cluster.now_ms() - start);
    }
    settle(&mut cluster)?;
    let after = cluster.outcome();
    Ok(Figures {
        n_nodes,
        events: (accepted(&cluster, 0) - accepted_before) as u64,
        received: received(&cluster, n_nodes) - received_before,
        messages: after.n_messages - before.n_messages,
        bytes: after.n_bytes - before.n_bytes,
        convergence_ms,
    })
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
        let per = (figures.events.max(1) * figures.n_nodes as u64) as f64;
        let copies = figures.received as f64 / (figures.events.max(1) * (figures.n_nodes as u64 - 1)) as f64;
        let mut sorted = figures.convergence_ms.clone();
        sorted.sort_unstable();
        println!(
            "| {} | {} | {:.2} | {:.1} | {:.0} | {} / {} |",
            figures.n_nodes,
            figures.events,
            copies,
            figures.messages as f64 / per,
            figures.bytes as f64 / per,
            sorted[sorted.len() / 2],
            sorted[sorted.len() - 1],
        );
    }
    ExitCode::SUCCESS
}
