//! What the full mesh costs as a cluster grows (issue 14, point 1), on virtual time: the
//! measurement behind `cairn-sim-scale` and its regression test.

use super::{Cluster, LinkProfile, Scripted, SimConfig};

/// Virtual milliseconds a write may take to reach every node before the run is called stuck.
pub const CONVERGENCE_DEADLINE_MS: u64 = 60_000;
/// Virtual milliseconds between a write's convergence and the next write.
pub const WRITE_GAP_MS: u64 = 50;

/// What one cluster size cost.
pub struct Figures {
    /// The cluster size.
    pub n_nodes: usize,
    /// Events written (one per write).
    pub events: u64,
    /// Reconciliation messages delivered in the window.
    pub messages: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Events received from peers, over all nodes (an event sent to a node twice counts twice).
    pub received: u64,
    /// Per write, virtual milliseconds until every node had accepted it.
    pub convergence_ms: Vec<u64>,
}

/// Events every node received from its peers so far, in all.
fn received(cluster: &Cluster, n_nodes: usize) -> u64 {
    (0..n_nodes)
        .flat_map(|i| (0..n_nodes).filter(move |&j| j != i).map(move |j| (i, j)))
        .filter_map(|(i, j)| cluster.node(i).peer_stats(&cluster.public(j)).map(|stats| stats.events_in))
        .sum()
}

/// Runs a full-mesh cluster of `n_nodes` (seed `seed`) in which node 0 writes `writes` times,
/// one write at a time, and counts what it cost.
pub fn measure(n_nodes: usize, writes: usize, seed: u64) -> Result<Figures, String> {
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

impl Figures {
    /// Copies of each event a node received from its peers (1.0: each event once).
    pub fn copies_per_event(&self) -> f64 {
        self.received as f64 / (self.events.max(1) * (self.n_nodes as u64 - 1)) as f64
    }

    /// Messages delivered per event and per node.
    pub fn messages_per_event_per_node(&self) -> f64 {
        self.messages as f64 / (self.events.max(1) * self.n_nodes as u64) as f64
    }

    /// Bytes delivered per event and per node.
    pub fn bytes_per_event_per_node(&self) -> f64 {
        self.bytes as f64 / (self.events.max(1) * self.n_nodes as u64) as f64
    }
}
