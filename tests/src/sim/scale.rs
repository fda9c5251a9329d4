//! What dissemination costs as a cluster grows (issue 14), on virtual time: the measurement
//! behind `cairn-sim-scale` and its regression tests. A full mesh (every pair connected) or the
//! bounded overlay (`protocol/src/overlay.rs`), with or without Byzantine members and lossy
//! links.

use cairn_protocol::OverlayConfig;

use super::{Attack, ByzantineConfig, Cluster, LinkProfile, PPM, Scripted, SimConfig, sim_overlay_config};

/// Virtual milliseconds a write may take to reach every honest node before the run is called
/// stuck.
pub const CONVERGENCE_DEADLINE_MS: u64 = 60_000;
/// Virtual milliseconds between a write's convergence and the next write.
pub const WRITE_GAP_MS: u64 = 50;
/// Virtual milliseconds the cluster runs before anything is counted: connections, the first
/// sessions, and a few overlay ticks.
pub const SETTLE_MS: u64 = 2_000;

/// One measurement.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Nodes, all genesis members.
    pub n_nodes: usize,
    /// Writes by node 0, one at a time.
    pub writes: usize,
    /// The run's seed.
    pub seed: u64,
    /// The overlay; `None`: a full mesh.
    pub overlay: Option<OverlayConfig>,
    /// Byzantine members (the last ones): each withholds every message it would send, attacks
    /// with noise, replays and orphans, and dials every honest node to fill its inbound slots.
    pub n_byzantine: usize,
    /// Lossy links: up to 5 % of messages dropped and 5 % duplicated, delays up to 30 ms
    /// (reliable links delay up to 10 ms).
    pub faults: bool,
}

impl Scenario {
    /// Today's full mesh: `n_nodes` honest nodes, reliable links.
    pub fn full_mesh(n_nodes: usize, writes: usize, seed: u64) -> Self {
        Self { n_nodes, writes, seed, overlay: None, n_byzantine: 0, faults: false }
    }

    /// The simulator's overlay ([`sim_overlay_config`]): `n_nodes` honest nodes, reliable links.
    pub fn overlay(n_nodes: usize, writes: usize, seed: u64) -> Self {
        Self { overlay: Some(sim_overlay_config()), ..Self::full_mesh(n_nodes, writes, seed) }
    }
}

/// What one scenario cost.
#[derive(Clone, Debug)]
pub struct Figures {
    /// The cluster size.
    pub n_nodes: usize,
    /// Honest nodes.
    pub n_honest: usize,
    /// Events written (one per write).
    pub events: u64,
    /// Messages the honest nodes sent in the window.
    pub messages: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Events the honest nodes other than the writer received from peers (an event received
    /// twice counts twice).
    pub received: u64,
    /// Per write, virtual milliseconds until every honest node had accepted it.
    pub convergence_ms: Vec<u64>,
    /// Connections per honest node at the end: the largest, and the mean.
    pub connections_max: usize,
    /// The mean.
    pub connections_mean: f64,
    /// Connections to honest peers, at the honest node with the fewest.
    pub honest_connections_min: usize,
}

/// `(messages, bytes, events received)` the honest nodes sent and received so far, in all.
fn honest_counts(cluster: &Cluster) -> (u64, u64, u64) {
    let n = cluster.n_nodes();
    let (mut messages, mut bytes, mut received) = (0, 0, 0);
    for &i in cluster.honest() {
        for j in (0..n).filter(|&j| j != i) {
            if let Some(stats) = cluster.node(i).peer_stats(&cluster.public(j)) {
                messages += stats.messages_out;
                bytes += stats.bytes_out;
                if i != 0 {
                    received += stats.events_in;
                }
            }
        }
    }
    (messages, bytes, received)
}

/// Runs `scenario`: node 0 writes `writes` times, one write at a time (each waits until every
/// honest node has accepted it), and counts what the honest nodes sent.
pub fn measure(scenario: &Scenario) -> Result<Figures, String> {
    let n_nodes = scenario.n_nodes;
    let mut config = SimConfig::quiet(scenario.seed, n_nodes);
    config.n_writes = 0;
    config.active_ms = SETTLE_MS + CONVERGENCE_DEADLINE_MS;
    config.links = if scenario.faults {
        LinkProfile { drop_max_ppm: 50_000, duplicate_max_ppm: 50_000, delay_max_ms: 30 }
    } else {
        LinkProfile::reliable(10)
    };
    config.overlay = scenario.overlay.clone();
    config.byzantine_dial_all = scenario.n_byzantine > 0;
    for i in n_nodes - scenario.n_byzantine..n_nodes {
        let byzantine = ByzantineConfig {
            withhold_ppm: PPM,
            ..ByzantineConfig::only(&[Attack::ProtocolNoise, Attack::Replay, Attack::Orphans], 20)
        };
        config.byzantine.insert(i, byzantine);
    }
    let mut cluster = Cluster::new(config);
    cluster.run_until(SETTLE_MS)?;
    let (messages_before, bytes_before, received_before) = honest_counts(&cluster);
    let accepted = |cluster: &Cluster, i: usize| cluster.node(i).adapter().n_accepted();
    let accepted_before = accepted(&cluster, 0);
    let honest: Vec<usize> = cluster.honest().to_vec();
    let mut convergence_ms = Vec::with_capacity(scenario.writes);
    for _ in 0..scenario.writes {
        let start = cluster.now_ms() + WRITE_GAP_MS;
        let target = accepted(&cluster, 0);
        cluster.schedule(start, Scripted::Write { node: 0 });
        cluster.run_until(start)?;
        while accepted(&cluster, 0) <= target {
            if !cluster.step()? || cluster.now_ms() > start + CONVERGENCE_DEADLINE_MS {
                return Err(format!("{n_nodes} nodes: the write was not accepted by its node"));
            }
        }
        // Every honest node holds at least node 0's events so far (others' too, as the
        // Byzantine ones write none that are accepted: their attacks are all invalid).
        let goal = accepted(&cluster, 0);
        while honest.iter().any(|&i| accepted(&cluster, i) < goal) {
            if !cluster.step()? || cluster.now_ms() > start + CONVERGENCE_DEADLINE_MS {
                let behind: Vec<usize> =
                    honest.iter().copied().filter(|&i| accepted(&cluster, i) < goal).collect();
                return Err(format!("{n_nodes} nodes: a write did not reach honest nodes {behind:?}"));
            }
        }
        convergence_ms.push(cluster.now_ms() - start);
    }
    // The last write's repairs and announcements settle.
    let end = cluster.now_ms() + 1_000;
    cluster.run_until(end)?;
    let (messages_after, bytes_after, received_after) = honest_counts(&cluster);
    let connections: Vec<usize> = honest.iter().map(|&i| cluster.n_connections(i)).collect();
    let honest_connections_min = honest
        .iter()
        .map(|&i| honest.iter().filter(|&&j| j != i && cluster.is_connected(i, j)).count())
        .min()
        .unwrap_or(0);
    Ok(Figures {
        n_nodes,
        n_honest: honest.len(),
        events: (accepted(&cluster, 0) - accepted_before) as u64,
        received: received_after - received_before,
        messages: messages_after - messages_before,
        bytes: bytes_after - bytes_before,
        convergence_ms,
        connections_max: connections.iter().copied().max().unwrap_or(0),
        connections_mean: connections.iter().sum::<usize>() as f64 / connections.len().max(1) as f64,
        honest_connections_min,
    })
}

impl Figures {
    /// Copies of each event an honest node other than the writer received (1.0: once).
    pub fn copies_per_event(&self) -> f64 {
        self.received as f64 / (self.events.max(1) * (self.n_honest as u64 - 1)) as f64
    }

    /// Messages sent per event and per honest node.
    pub fn messages_per_event_per_node(&self) -> f64 {
        self.messages as f64 / (self.events.max(1) * self.n_honest as u64) as f64
    }

    /// Bytes sent per event and per honest node.
    pub fn bytes_per_event_per_node(&self) -> f64 {
        self.bytes as f64 / (self.events.max(1) * self.n_honest as u64) as f64
    }

    /// The median time to convergence, virtual milliseconds.
    pub fn convergence_median_ms(&self) -> u64 {
        let mut sorted = self.convergence_ms.clone();
        sorted.sort_unstable();
        sorted.get(sorted.len() / 2).copied().unwrap_or(0)
    }

    /// The slowest convergence, virtual milliseconds.
    pub fn convergence_max_ms(&self) -> u64 {
        self.convergence_ms.iter().copied().max().unwrap_or(0)
    }
}
