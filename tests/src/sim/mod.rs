//! A deterministic simulator of a Cairn cluster, in the style of quinn-proto's `Pair` and
//! TigerBeetle's VOPR: sans-I/O [`Node`](cairn_protocol::node::Node)s, virtual time, and a
//! seeded network that drops, duplicates, delays (so reorders) and partitions, with Byzantine
//! members that tamper with their traffic and inject crafted messages.
//!
//! The simulator runs what production runs around each replica: the daemon's group commit
//! (`cairn_daemon::commit`: writes are signed by `prepare_writes`, stored, and only then
//! committed to the replica and acknowledged) over a simulated store that can lose what was not
//! synced, fill up and crash ([`SimStore`]); the daemon's peer discipline
//! (`cairn_daemon::discipline`); and transmission through `poll_transmit_to` into bounded
//! per-link transport queues. Nodes crash and start again from their store alone.
//!
//! A run is a function of its seed alone ([`SimConfig::random`]): the size of the cluster,
//! which members are Byzantine and how, the network's faults, partitions, pairs of nodes that
//! never connect, a node that loses its store and restarts, crashes, full disks, the nodes'
//! settings and the write schedule. A failure prints its seed, and [`run_seed`] with that seed
//! replays it exactly.
//!
//! A run has two phases. In the active phase honest nodes write, Byzantine nodes attack and the
//! network misbehaves. Then the cluster heals: partitions end, connections reopen, drop and
//! duplicate probabilities go to zero (delays stay) and the Byzantine nodes stop attacking
//! (each either goes silent or relays honestly). The simulator runs until the honest nodes are
//! quiescent (see [`Cluster::is_quiescent`]) or a virtual-time deadline passes, then checks
//! the promises of `docs/SECURITY.md` (see [`Cluster::check_final`]): every write an honest node
//! acknowledged is accepted by every honest node, no honest node ever signed a seq twice (no
//! evidence against it anywhere, even across crashes), and the honest nodes converged.
//! Invariants that must hold at every moment are checked after every input: buffer bounds, no
//! honest node rejecting an event or a message from an honest one or refusing it, no evidence
//! against an honest member, no two own events of an honest node with one seq in its store, no
//! write acknowledged before it was stored, no honest write refused except while the node learns
//! its own seq or its disk is full, a store that restores whole after a crash, and no node (or
//! driver) asking to be woken again at a time it already handled.

mod byzantine;
mod cluster;
mod network;
mod rng;
pub mod scale;
mod store;

pub use byzantine::{
    AfterHeal, Attack, ByzantineConfig, CraftContext, Crafted, ForkChains, craft, events_message,
};
pub use cluster::{Cluster, JobFate, MEMBER_RETRY_MS, Outcome, Scripted, SimMember};
pub use network::{Link, LinkProfile, Network};
pub use rng::{PPM, Rng, TraceHash};
pub use store::{CrashedJob, SimStore};

use std::collections::BTreeMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use cairn_protocol::node::NodeConfig;
use cairn_protocol::{AdapterConfig, OverlayConfig};

/// Bytes of the causal buffer one peer may fill at a simulated node: small, so that floods
/// reach the bound and eviction happens.
pub const SIM_BUFFER_PEER_BYTES_MAX: usize = 256 * 1024;
/// Bytes of the causal buffer of a simulated node in all.
pub const SIM_BUFFER_TOTAL_BYTES_MAX: usize = 1024 * 1024;
/// Virtual milliseconds the healed cluster has to become quiescent before the run fails.
pub const SIM_HEAL_DEADLINE_MS: u64 = 120_000;
/// Messages each directed link's transport queue holds, as the daemon's default
/// `transport_queue_messages_max`.
pub const SIM_TRANSPORT_QUEUE_MAX: usize = 64;
/// Most local writes signed and stored in one commit, as the daemon's default
/// `commit_writes_max`.
pub const SIM_COMMIT_WRITES_MAX: usize = 1_024;
/// Slowest fsync of a simulated store, in virtual milliseconds (each takes 1 to this).
pub const SIM_STORE_DELAY_MS_MAX: u64 = 10;
/// Simulation steps (deliveries, timeouts, scripted actions) after which a run is declared
/// stuck: far above what a run needs, low enough to fail in seconds rather than hang.
pub const SIM_STEPS_MAX: u64 = 5_000_000;

/// Everything that decides a run. [`SimConfig::random`] draws it from a seed; tests build
/// targeted ones from [`SimConfig::quiet`].
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed of every random choice made while running (network, attacks, write contents).
    pub seed: u64,
    /// Number of nodes, all genesis members.
    pub n_nodes: usize,
    /// The Byzantine nodes, by sim index, with their behaviour.
    pub byzantine: BTreeMap<usize, ByzantineConfig>,
    /// How each link's faults are drawn.
    pub links: LinkProfile,
    /// Each node's settings, by sim index. `own_seq_peers_needed` is the configured value,
    /// which applies when a node starts from a store that holds no event of its own; the first
    /// start of every node is a brand-new cluster's, with 0.
    pub node_configs: Vec<NodeConfig>,
    /// Honest writes at random times of the active phase, by random honest nodes.
    pub n_writes: usize,
    /// Length of the active phase in virtual milliseconds.
    pub active_ms: u64,
    /// Random partitions during the active phase.
    pub n_partitions: usize,
    /// Longest random partition, in virtual milliseconds.
    pub partition_ms_max: u64,
    /// Virtual milliseconds the healed cluster has to become quiescent.
    pub heal_deadline_ms: u64,
    /// Pairs of nodes that are never connected, even after healing. The honest nodes must
    /// stay connected through honest nodes (`docs/SECURITY.md` promises convergence only then).
    pub severed: Vec<(usize, usize)>,
    /// Restarts with an empty store: `(node, own_seq_peers_needed, at_ms)`, see
    /// [`Scripted::Restart`].
    pub restarts: Vec<(usize, usize, u64)>,
    /// Crashes of the process, restarted from its store: `(node, at_ms)`, see
    /// [`Scripted::Crash`] (what happens to the job in flight and the downtime are drawn).
    pub crashes: Vec<(usize, u64)>,
    /// Windows in which a node's store is full: `(node, at_ms, duration_ms)`.
    pub disk_full: Vec<(usize, u64, u64)>,
    /// Messages each directed link's transport queue holds.
    pub transport_queue_max: usize,
    /// Most local writes in one commit (the group commit's `writes_per_commit_max`).
    pub commit_writes_max: usize,
    /// Slowest fsync, in virtual milliseconds.
    pub store_delay_ms_max: u64,
    /// The honest nodes remove a Byzantine member (`docs/PROTOCOL.md` §17): `(proposer,
    /// target, at_ms)`. The proposer proposes the removal, cut at what it has seen of the
    /// target's key, from `at_ms` on; every other honest node approves that change as soon as
    /// it sees it. Each retries until it has signed (see [`Scripted::Member`]).
    pub removal: Option<(usize, usize, u64)>,
    /// The overlay each node draws its connections from (`protocol/src/overlay.rs`); `None`:
    /// every pair of nodes is connected (a full mesh), as a cluster of at most
    /// `outbound + 1` members is anyway.
    pub overlay: Option<OverlayConfig>,
    /// With an overlay: the Byzantine nodes try to eclipse honest ones, dialing every honest
    /// node (filling its inbound slots) instead of drawing their own.
    pub byzantine_dial_all: bool,
}

/// Virtual milliseconds between two overlay ticks of the simulated drivers: each node's overlay
/// is brought up to date, connections neither end wants are closed, and wanted ones dialed.
pub const SIM_OVERLAY_TICK_MS: u64 = 100;

/// The overlay settings of the simulator: the daemon's fan-out, with rotations and dial
/// timeouts shortened to the simulator's time scale.
pub fn sim_overlay_config() -> OverlayConfig {
    OverlayConfig { rotate_ms: 5_000, dial_timeout_ms: 1_000, ..OverlayConfig::default() }
}

/// The node settings of the simulator: small buffers, a short sync interval and timeouts.
pub fn sim_node_config() -> NodeConfig {
    NodeConfig {
        adapter: AdapterConfig {
            buffer_bytes_per_peer_max: SIM_BUFFER_PEER_BYTES_MAX,
            buffer_bytes_total_max: SIM_BUFFER_TOTAL_BYTES_MAX,
            verify_threads: 1,
            membership_changes: true,
        },
        sync_interval_ms: 200,
        session_timeout_ms: 2_000,
        want_interval_ms: 300,
        peer_queue_ids_max: 4_096,
        peer_queue_messages_max: 256,
        peer_events_per_sec: 100_000,
        peer_events_burst: 200_000,
        peer_tips_max: 4_096,
        fork_searches_max: 16,
        // Settings added later keep their defaults (a brand-new cluster, for instance).
        ..NodeConfig::default()
    }
}

impl SimConfig {
    /// A calm run of `n_nodes` honest nodes: reliable links with small delays, no partitions,
    /// 30 writes over 2 virtual seconds, no crash and no full disk. A node that starts from a
    /// store without an own event waits for the daemon's default number of peers (half the
    /// others, rounded up).
    pub fn quiet(seed: u64, n_nodes: usize) -> Self {
        let config = NodeConfig { own_seq_peers_needed: (n_nodes - 1).div_ceil(2), ..sim_node_config() };
        Self {
            seed,
            n_nodes,
            byzantine: BTreeMap::new(),
            links: LinkProfile::reliable(10),
            node_configs: vec![config; n_nodes],
            n_writes: 30,
            active_ms: 2_000,
            n_partitions: 0,
            partition_ms_max: 2_000,
            heal_deadline_ms: SIM_HEAL_DEADLINE_MS,
            severed: Vec::new(),
            restarts: Vec::new(),
            crashes: Vec::new(),
            disk_full: Vec::new(),
            transport_queue_max: SIM_TRANSPORT_QUEUE_MAX,
            commit_writes_max: SIM_COMMIT_WRITES_MAX,
            store_delay_ms_max: SIM_STORE_DELAY_MS_MAX,
            removal: None,
            overlay: None,
            byzantine_dial_all: false,
        }
    }

    /// Everything drawn from `seed`: 3 to 7 nodes, up to `(n - 1) / 2` of them Byzantine with
    /// random attacks, a network profile from calm to chaotic, up to 3 partitions, 20 to 80
    /// writes, per-node buffer, queue and rate settings, and in some runs crashes of honest
    /// nodes and windows of full disks; transport queues of 2 to 64 messages, commits of 1 to
    /// 1 024 writes, fsyncs of up to 3 to 25 ms; in a third of the runs a sparse overlay
    /// ([`random_overlay`]).
    pub fn random(seed: u64) -> Self {
        // The configuration has its own stream, so that the run's stream starts from the seed.
        let mut rng = Rng::new(seed ^ 0x5eed_c0f1_6000_0000);
        let n_nodes = rng.range(3, 7) as usize;
        let n_byzantine = rng.range(0, (n_nodes as u64 - 1) / 2) as usize;
        let mut order: Vec<usize> = (0..n_nodes).collect();
        rng.shuffle(&mut order);
        let byzantine: BTreeMap<usize, ByzantineConfig> =
            order[..n_byzantine].iter().map(|i| (*i, ByzantineConfig::random(&mut rng))).collect();
        let links = match rng.below(4) {
            0 => LinkProfile::reliable(rng.range(1, 20)),
            1 => LinkProfile { drop_max_ppm: 50_000, duplicate_max_ppm: 50_000, delay_max_ms: 50 },
            2 => LinkProfile { drop_max_ppm: 100_000, duplicate_max_ppm: 20_000, delay_max_ms: 30 },
            _ => LinkProfile { drop_max_ppm: 200_000, duplicate_max_ppm: 100_000, delay_max_ms: 150 },
        };
        let severed = if rng.chance(PPM / 3) {
            let honest: Vec<usize> = (0..n_nodes).filter(|i| !byzantine.contains_key(i)).collect();
            random_severed(n_nodes, &honest, &mut rng)
        } else {
            Vec::new()
        };
        let active_ms = rng.range(2_000, 6_000);
        // A restart needs more reports than there are Byzantine nodes, from honest peers that
        // can reach the node directly; otherwise lying or silent peers could decide its seq.
        let mut restarts = Vec::new();
        if rng.chance(PPM / 4) {
            let node = *rng.pick(&order[n_byzantine..]);
            let needed = n_byzantine + 1;
            let is_severed = |a: usize, b: usize| severed.contains(&(a.min(b), a.max(b)));
            let n_honest_peers =
                order[n_byzantine..].iter().filter(|j| **j != node && !is_severed(node, **j)).count();
            if n_honest_peers >= needed {
                restarts.push((node, needed, rng.below(active_ms)));
            }
        }
        let mut node_configs: Vec<NodeConfig> = (0..n_nodes)
            .map(|_| {
                let mut config = sim_node_config();
                config.peer_queue_ids_max = *rng.pick(&[32, 1_024, 65_536]);
                config.peer_queue_messages_max = *rng.pick(&[64, 1_024]);
                match rng.below(6) {
                    0 | 1 => {
                        config.peer_events_per_sec = 1_000;
                        config.peer_events_burst = 200;
                    }
                    // Slow enough that honest reconciliation runs into the limit too.
                    2 => {
                        config.peer_events_per_sec = 100;
                        config.peer_events_burst = 20;
                    }
                    _ => {}
                }
                if rng.chance(PPM / 6) {
                    // Tiny buffers evict honest events too; only liveness may suffer.
                    config.adapter.buffer_bytes_per_peer_max = 8 * 1024;
                    config.adapter.buffer_bytes_total_max = 24 * 1024;
                }
                config
            })
            .collect();
        let is_severed = |a: usize, b: usize| severed.contains(&(a.min(b), a.max(b)));
        let honest = &order[n_byzantine..];
        // A node whose store holds no own event after a crash waits for reports from this many
        // peers: any number is safe then (no own event of it exists anywhere), and up to its
        // honest neighbours it is live.
        for &i in honest {
            let n_honest_peers = honest.iter().filter(|j| **j != i && !is_severed(i, **j)).count() as u64;
            node_configs[i].own_seq_peers_needed = rng.range(1, n_honest_peers.max(1)) as usize;
        }
        // Any honest node may crash, one that lost its store and is still relearning its own
        // chain included: its store is marked complete only with its first new own event.
        let may_crash: Vec<usize> = honest.to_vec();
        let mut crashes = Vec::new();
        if rng.chance(PPM / 3) && !may_crash.is_empty() {
            for _ in 0..rng.range(1, 3) {
                crashes.push((*rng.pick(&may_crash), rng.below(active_ms)));
            }
        }
        let mut disk_full = Vec::new();
        if rng.chance(PPM / 4) {
            for _ in 0..rng.range(1, 3) {
                disk_full.push((rng.index(n_nodes), rng.below(active_ms), rng.range(50, 2_000)));
            }
        }
        let (overlay, byzantine_dial_all) = random_overlay(seed);
        let transport_queue_max = *rng.pick(&[2, 8, SIM_TRANSPORT_QUEUE_MAX]);
        let commit_writes_max = *rng.pick(&[1, 4, SIM_COMMIT_WRITES_MAX]);
        let store_delay_ms_max = *rng.pick(&[3, SIM_STORE_DELAY_MS_MAX, 25]);
        // In half the runs with a Byzantine member, the honest ones (always a majority here)
        // remove one.
        let removal = (n_byzantine > 0 && rng.chance(PPM / 2)).then(|| {
            (*rng.pick(&order[n_byzantine..]), *rng.pick(&order[..n_byzantine]), rng.below(active_ms / 2))
        });
        Self {
            seed,
            n_nodes,
            byzantine,
            links,
            node_configs,
            n_writes: rng.range(20, 80) as usize,
            active_ms,
            n_partitions: rng.below(4) as usize,
            partition_ms_max: 2_000,
            heal_deadline_ms: SIM_HEAL_DEADLINE_MS,
            severed,
            restarts,
            crashes,
            disk_full,
            transport_queue_max,
            commit_writes_max,
            store_delay_ms_max,
            removal,
            overlay,
            byzantine_dial_all,
        }
    }
}

/// The overlay of a random run, drawn from a stream of its own so that the rest of the
/// configuration and the run are those of the same seed without it: in a third of the runs a
/// sparse one (1 to 3 outbound connections per node, so that 3 to 7 nodes are not a full
/// mesh), with rotations, and in half of those the Byzantine nodes dial every honest node.
fn random_overlay(seed: u64) -> (Option<OverlayConfig>, bool) {
    let mut rng = Rng::new(seed ^ 0x0e7a_1a70_0000_0000);
    if !rng.chance(PPM / 3) {
        return (None, false);
    }
    let overlay = OverlayConfig {
        outbound: rng.range(1, 3) as usize,
        passive: rng.range(2, 6) as usize,
        rotate_ms: rng.range(500, 3_000),
        ..sim_overlay_config()
    };
    (Some(overlay), rng.chance(PPM / 2))
}

/// Each pair with probability 1/3, except where cutting it would leave the honest nodes
/// without an honest path between two of them.
fn random_severed(n_nodes: usize, honest: &[usize], rng: &mut Rng) -> Vec<(usize, usize)> {
    let mut severed: Vec<(usize, usize)> = Vec::new();
    for a in 0..n_nodes {
        for b in a + 1..n_nodes {
            if rng.chance(PPM / 3) {
                severed.push((a, b));
                if !honest_connected(honest, &severed) {
                    severed.pop();
                }
            }
        }
    }
    severed
}

/// Whether the honest nodes form one connected graph without the `severed` pairs.
pub fn honest_connected(honest: &[usize], severed: &[(usize, usize)]) -> bool {
    let is_severed = |a: usize, b: usize| severed.contains(&(a.min(b), a.max(b)));
    let mut reached = vec![honest[0]];
    let mut frontier = vec![honest[0]];
    while let Some(a) = frontier.pop() {
        for &b in honest {
            if !reached.contains(&b) && !is_severed(a, b) {
                reached.push(b);
                frontier.push(b);
            }
        }
    }
    reached.len() == honest.len()
}

/// A failed run: its seed and what went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The seed to replay.
    pub seed: u64,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {seed} failed: {message}\nreplay with CAIRN_SIM_SEED={seed} cargo test -p cairn-tests --test sim",
            seed = self.seed,
            message = self.message
        )
    }
}

impl std::error::Error for Failure {}

/// Runs `config` to the end: the active phase, healing, quiescence, the final checks. A panic
/// inside the protocol (a broken assertion) is a failure of the seed too.
pub fn run(config: SimConfig) -> Result<Outcome, Failure> {
    let seed = config.seed;
    let result = catch_unwind(AssertUnwindSafe(move || {
        let mut cluster = Cluster::new(config);
        cluster.run_to_end()?;
        Ok(cluster.outcome())
    }));
    match result {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(message)) => Err(Failure { seed, message }),
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic without a message".to_owned());
            Err(Failure { seed, message: format!("panicked: {text}") })
        }
    }
}

/// Runs the configuration [`SimConfig::random`] draws from `seed`.
pub fn run_seed(seed: u64) -> Result<Outcome, Failure> {
    run(SimConfig::random(seed))
}
