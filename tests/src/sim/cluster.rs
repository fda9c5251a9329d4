//! The cluster under simulation: the nodes, the event queue in virtual time, the network, the
//! Byzantine behaviours, and the checks. See the parent module for the shape of a run.
//!
//! Each node runs what the daemon runs around its replica: the group commit
//! ([`cairn_daemon::commit`]) over a simulated store ([`super::store`]), and the peer
//! discipline ([`cairn_daemon::discipline`]). Driving follows `driver.rs`'s `after_input`:
//! after every input to a node (a delivered message, a timeout, a write, a store verdict, a
//! connection change) mutes that ended are lifted, its events are drained (accepted peer events
//! and evidence into the group commit, invalid input into the discipline, everything into the
//! checks), it transmits through `poll_transmit_to` while each link's transport queue has room,
//! the next commit job goes to its store, the writers' answers are recorded, and its buffer
//! bounds are checked. When a link's queue frees room, its sender transmits again.
//!
//! A node can crash: its process dies (the job with the store lands or is lost), its
//! connections close, and after a while it starts again from its store alone, as the daemon
//! does (`daemon.rs`): `restore`, `restore_evidence`, and own-seq safety unless the store holds
//! an event of its own.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use cairn_crypto::{PublicKey, SecretKey};
use cairn_daemon::commit::{Acked, CommitJob, Committed, GroupCommit, MemberOp, WriteFailure};
use cairn_daemon::discipline::{PeerDiscipline, Verdict};
use cairn_protocol::codec::{decode_event, decode_evidence};
use cairn_protocol::document::Document;
use cairn_protocol::node::{Node, NodeConfig, NodeEvent};
use cairn_protocol::{Adapter, EventId, Genesis, Member, Op, Reject, Seen, StoredEvent};
use cairn_protocol::{ChainState, ChangeKind, MemoryArchive, Overlay, Roster};

use super::byzantine::{
    AfterHeal, Attack, ByzantineConfig, CraftContext, ForkChains, corrupt_one_signature, craft,
    mutated_ids_in_message,
};
use super::network::{Link, Network};
use super::rng::{PPM, Rng, TraceHash};
use super::store::{CrashedJob, SimStore};
use super::{SIM_STEPS_MAX, SimConfig};

/// After a mute closed a connection, the transport dials again this much later (the daemon's
/// `reconnect_backoff_min`); the muting side then holds the link but ignores the peer.
const REDIAL_MS: u64 = 200;
/// A crashed node stays down this long at least ...
const CRASH_DOWN_MS_MIN: u64 = 10;
/// ... and at most, when the downtime is drawn.
const CRASH_DOWN_MS_MAX: u64 = 1_500;

/// Message tags that honest nodes keep exchanging once they agree: `Summary` and `InSync`
/// (periodic anti-entropy) and `Want` (asks for deps of orphans nobody has). Any other message
/// between honest nodes in flight means work is still under way.
const IDLE_MESSAGE_TAGS: [u32; 3] = [0, 1, 4];

/// Rejection reasons that depend only on an event's header and the headers of its deps, so
/// on its id: an id rejected for one of them is invalid everywhere. (A bad signature or bad
/// ops may come with the id of a valid event whose bytes were altered, so those do not count.)
const HEADER_REASONS: [Reject; 4] =
    [Reject::DepsNotSorted, Reject::NotMember, Reject::BadSeq, Reject::BadLamport];

/// A scripted action, scheduled at a virtual time.
#[derive(Clone, Debug)]
pub enum Scripted {
    /// A node's client writes random ops: through the group commit, signed into an own event
    /// (`Node::prepare_writes`), stored, then committed to the replica and acknowledged.
    Write {
        /// Sim index of the writer.
        node: usize,
    },
    /// A node's process crashes (see [`Cluster::crash`]) and starts again from its store after
    /// `down_ms` (drawn when `None`).
    Crash {
        /// Sim index of the node.
        node: usize,
        /// What happens to the job with the store.
        job: JobFate,
        /// Downtime in virtual milliseconds, or `None` to draw it.
        down_ms: Option<u64>,
    },
    /// A node's store's file system is full for `duration_ms`: its commits store nothing and
    /// fail with [`Committed::NoSpace`].
    DiskFull {
        /// Sim index of the node.
        node: usize,
        /// How long, in virtual milliseconds.
        duration_ms: u64,
    },
    /// A Byzantine node attacks (ignored after healing).
    Attack {
        /// Sim index of the attacker; it must be Byzantine.
        node: usize,
        /// The attack, or `None` for one drawn from the node's list.
        attack: Option<Attack>,
    },
    /// A partition between the nodes with `side[i] == true` and the others begins.
    Partition {
        /// Which side each node is on.
        side: Vec<bool>,
        /// Whether the connections across the cut close (and reopen at the end).
        disconnects: bool,
        /// How long it lasts, in virtual milliseconds.
        duration_ms: u64,
    },
    /// Node `from` sends `bytes` to node `to` over the network, bypassing its state machine
    /// (a crafted message; ignored after healing if `from` is Byzantine).
    Send {
        /// Sim index of the sender.
        from: usize,
        /// Sim index of the receiver.
        to: usize,
        /// The message.
        bytes: Vec<u8>,
    },
    /// Node `node` restarts with an empty store (see [`Cluster::restart`]) as soon as every
    /// honest node holds all of its events (checked every 100 ms until then), so that no
    /// write is lost and its peers know its latest seq.
    Restart {
        /// Sim index of the node.
        node: usize,
        /// [`NodeConfig::own_seq_peers_needed`] of the new incarnation.
        own_seq_peers_needed: usize,
    },
    /// The partition with this id ends (scheduled by [`Scripted::Partition`]).
    PartitionEnd {
        /// The partition's id.
        id: u64,
    },
    /// An honest node's operator takes part in removing a member (see
    /// [`crate::sim::SimConfig::removal`]): through the group commit, like a write. Tried again
    /// [`MEMBER_RETRY_MS`] later until the node has signed it.
    Member {
        /// Sim index of the node.
        node: usize,
        /// What it signs.
        op: SimMember,
    },
}

/// A membership op an honest node signs in the simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimMember {
    /// Propose removing `target`'s seat, cut at the highest seq of its current key this node
    /// holds.
    ProposeRemoval {
        /// Sim index of the member to remove.
        target: usize,
    },
    /// Approve the removal of `target` that `proposer` proposed, once this node holds it.
    ApproveRemoval {
        /// Sim index of the member to remove.
        target: usize,
        /// Sim index of the node whose proposal to approve.
        proposer: usize,
    },
}

/// How long an honest node waits before trying a membership op again that it could not sign
/// yet (the proposal has not reached it, its seq is being relearned, its disk is full).
pub const MEMBER_RETRY_MS: u64 = 150;

/// What a crash does to the job with the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobFate {
    /// Landed or lost, drawn from the run's seed.
    Drawn,
    /// Its fsync completed just before the crash.
    Landed,
    /// It never reached the disk.
    Lost,
}

#[derive(Debug)]
enum Action {
    Deliver {
        from: usize,
        to: usize,
        epoch: u64,
        bytes: Vec<u8>,
        busy: bool,
    },
    /// The fsync of a node's commit job completes.
    StoreDone {
        node: usize,
        job_number: u64,
    },
    /// A crashed node starts again from its store.
    Recover {
        node: usize,
    },
    /// The transport dials the connections that are down again.
    Reconnect,
    /// The drivers bring their overlays up to date (see [`super::SIM_OVERLAY_TICK_MS`]).
    OverlayTick,
    Scripted(Scripted),
}

#[derive(Debug)]
struct Scheduled {
    at_ms: u64,
    order: u64,
    action: Action,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    /// By time, then by scheduling order: equal times never depend on anything but the run.
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at_ms, self.order).cmp(&(other.at_ms, other.order))
    }
}

/// What happens next.
#[derive(Clone, Copy, Debug)]
enum Wake {
    Queue,
    /// A node's timeout; `stale` when the node asked again for a time already handled.
    Timer {
        node: usize,
        stale: bool,
    },
    /// The wake-up of a node's driver: its group commit's or its discipline's timeout;
    /// `stale` as for `Timer`.
    Driver {
        node: usize,
        stale: bool,
    },
}

struct SimNode {
    key: SecretKey,
    node: Node,
    /// The node's settings; `own_seq_peers_needed` is the configured value, which applies when
    /// the node starts from a store without an event of its own (the first start of all is a
    /// brand-new cluster's, with 0).
    config: NodeConfig,
    byzantine: Option<ByzantineConfig>,
    /// The daemon's group commit; a writer's answer goes to its write number.
    commit: GroupCommit<u64>,
    /// The daemon's peer discipline.
    discipline: PeerDiscipline,
    /// The durable store; it outlives crashes of the process.
    store: SimStore,
    /// Write numbers given to the group commit and not answered yet.
    writes_pending: BTreeSet<u64>,
    /// Membership ops given to the group commit and not answered yet, by write number.
    members_pending: BTreeMap<u64, SimMember>,
    /// Membership ops this node has signed (durable and accepted).
    members_done: BTreeSet<SimMember>,
    /// The process is down (crashed, not yet started again).
    down: bool,
    /// When `handle_timeout` was last called.
    last_timeout_ms: Option<u64>,
    /// Whether the node had an input since `handle_timeout` was last called.
    input_since_timeout: bool,
    /// When the driver was last woken by its own timeouts (group commit, discipline).
    last_driver_wake_ms: Option<u64>,
    /// Whether the node had an input since the driver was last woken.
    input_since_driver_wake: bool,
    /// A Byzantine node's branches for [`Attack::ForkChains`].
    fork_chains: Option<ForkChains>,
    /// The current incarnation started with own-seq safety on (its store held no own event):
    /// it refuses writes until it has learned its own seq from its peers.
    learns_own_seq: bool,
}

/// Figures of one run, for reports and for comparing two runs of a seed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Nodes in the cluster.
    pub n_nodes: usize,
    /// Byzantine nodes among them.
    pub n_byzantine: usize,
    /// Writes made by honest nodes.
    pub n_honest_writes: usize,
    /// Events each honest node accepted (the same everywhere at the end).
    pub n_accepted: usize,
    /// Messages delivered to a node.
    pub n_messages: u64,
    /// Messages delivered to a node, by kind (see [`cairn_protocol::Message::kind`]);
    /// `"undecodable"` for bytes with an unknown tag.
    pub messages_by_kind: BTreeMap<&'static str, u64>,
    /// Bytes delivered to a node.
    pub n_bytes: u64,
    /// Message copies lost: dropped, cut by a partition, or on a closed connection.
    pub n_lost: u64,
    /// Messages a Byzantine node withheld.
    pub n_withheld: u64,
    /// Events honest nodes rejected, by reason.
    pub rejected: BTreeMap<Reject, u64>,
    /// Messages honest nodes could not decode, or evidence that did not verify.
    pub n_bad_messages: u64,
    /// Node restarts with an empty store.
    pub n_restarts: u64,
    /// Writes a node refused while it learned its own seq from peers (after it lost its store,
    /// or after a crash before any own event of it was stored).
    pub n_writes_refused_while_learning: u64,
    /// Writes of honest nodes that were not acknowledged, by reason: `not_ready`,
    /// `queue_full`, `no_space`, `storage` (the group commit's [`WriteFailure`]s), `down` (the
    /// node's process was down), `unanswered` (queued or in flight when the process died).
    pub writes_refused: BTreeMap<&'static str, u64>,
    /// Ops of honest clients' writes that carried a causal context (read on the same node, now
    /// or earlier), and how many of those contexts were stale.
    pub n_context_ops: u64,
    /// Of [`Outcome::n_context_ops`], those whose context was read before the latest write.
    pub n_stale_context_ops: u64,
    /// Distinct own events holding the acknowledged writes of honest nodes (concurrent writes
    /// share one).
    pub n_honest_write_events: usize,
    /// Process crashes.
    pub n_crashes: u64,
    /// Crashes with a commit in flight whose fsync completed just before.
    pub n_crash_jobs_landed: u64,
    /// Crashes with a commit in flight that never reached the disk.
    pub n_crash_jobs_lost: u64,
    /// Restarts that opened the persisted document (and checked it against a rebuild).
    pub n_documents_resumed: u64,
    /// Windows in which a node's store was full.
    pub n_disk_full: u64,
    /// Commit jobs stored.
    pub n_commits: u64,
    /// Commit jobs refused for want of space.
    pub n_commits_no_space: u64,
    /// Peers muted by a node's discipline.
    pub n_mutes: u64,
    /// Times a node had output for a peer whose transport queue had no room.
    pub n_link_full: u64,
    /// Messages a node ignored because it muted their sender.
    pub n_ignored_muted: u64,
    /// Distinct crafted events whose invalidity is certain.
    pub n_invalid_crafted: usize,
    /// Pairs of forked events Byzantine nodes sent.
    pub n_forks_crafted: usize,
    /// Authors with two accepted events at one seq.
    pub n_equivocators: usize,
    /// Evidence objects each honest node holds.
    pub n_evidence: usize,
    /// Events evicted from honest nodes' causal buffers.
    pub n_evicted: u64,
    /// Events the honest nodes dropped unverified: deps missing, the sender's buffer share full.
    pub n_orphans_dropped: u64,
    /// Largest causal buffer (bytes) seen at an honest node.
    pub buffer_bytes_peak: usize,
    /// Virtual time at which healing began.
    pub heal_started_ms: u64,
    /// Virtual time at which the honest nodes were quiescent.
    pub quiescent_ms: u64,
    /// Simulation steps.
    pub n_steps: u64,
    /// Hash of every delivery (time, link, bytes), every write and every attack.
    pub trace_hash: u64,
    /// Membership ops honest nodes signed.
    pub n_member_ops: u64,
    /// Membership changes in force at the end (the same on every honest node).
    pub n_member_changes: usize,
    /// Whether the honest nodes set out to remove a Byzantine member.
    pub removal_planned: bool,
}

/// A simulated cluster. Build it with [`Cluster::new`], then either [`Cluster::run_to_end`],
/// or drive it by hand with [`Cluster::schedule`], [`Cluster::step`], [`Cluster::run_until`],
/// [`Cluster::heal`] and [`Cluster::run_until_quiescent`].
pub struct Cluster {
    config: SimConfig,
    genesis: Genesis,
    now_ms: u64,
    nodes: Vec<SimNode>,
    publics: Vec<PublicKey>,
    index_of: BTreeMap<PublicKey, usize>,
    honest: Vec<usize>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    n_scheduled: u64,
    network: Network,
    rng_network: Rng,
    rng_actions: Rng,
    /// Store delays, crash fates and downtimes.
    rng_store: Rng,
    /// Which writes carry a client's causal context, and whether the client's read is stale
    /// (its own stream, so that the other streams, and every earlier figure, stay as they were).
    rng_contexts: Rng,
    healed: bool,
    /// Write numbers handed out, for the group commits' answers.
    n_writes_submitted: u64,
    /// The last causal context a client of each node read for each key, for stale reads.
    client_reads: BTreeMap<(usize, Vec<u8>), Vec<EventId>>,
    /// Every own event of an honest node that reached its store, by `(node, seq)`: a second id
    /// for one seq is a node signing a seq twice.
    own_seqs: BTreeMap<(usize, u64), EventId>,
    invalid_ids: BTreeSet<EventId>,
    honest_writes: Vec<(usize, EventId)>,
    forks: Vec<(usize, EventId, EventId)>,
    /// Ids honest nodes rejected for a reason that depends on the header alone (and the
    /// headers of its deps): no honest node may ever accept one of them.
    rejected_by_header: BTreeSet<EventId>,
    crafted_counter: u64,
    n_busy_in_flight: u64,
    violations: Vec<String>,
    outcome: Outcome,
    trace: TraceHash,
    /// Each node's overlay, when the run has one (`SimConfig::overlay`).
    overlays: Vec<Option<Overlay>>,
}

impl Cluster {
    /// A cluster of `config.n_nodes` genesis members, all connected pairwise at time 0, with
    /// the random writes, attacks and partitions of the active phase scheduled.
    ///
    /// # Panics
    ///
    /// If the configuration leaves fewer than two honest nodes, or names a Byzantine index
    /// outside the cluster.
    pub fn new(config: SimConfig) -> Self {
        let n = config.n_nodes;
        assert!(config.node_configs.len() == n, "one node config per node");
        assert!(config.byzantine.keys().all(|i| *i < n), "Byzantine indices are sim indices");
        let honest: Vec<usize> = (0..n).filter(|i| !config.byzantine.contains_key(i)).collect();
        assert!(honest.len() >= 2, "a simulation needs at least two honest nodes");

        let mut rng = Rng::new(config.seed);
        let mut rng_keys = rng.fork();
        let mut rng_network = rng.fork();
        let mut rng_script = rng.fork();
        let rng_actions = rng.fork();
        let rng_store = rng.fork();
        let rng_contexts = rng.fork();
        // The overlays' seeds: the nodes' own randomness (a stream of its own, after the others).
        let mut rng_overlay = rng.fork();

        let keys: Vec<SecretKey> = (0..n).map(|_| SecretKey::from_seed(&rng_keys.array32())).collect();
        let publics: Vec<PublicKey> = keys.iter().map(SecretKey::public).collect();
        let members =
            publics.iter().enumerate().map(|(i, key)| Member { key: *key, name: format!("node{i}") });
        // Keys drawn from 256 random bits are distinct and names are distinct by construction.
        let genesis = Genesis::new(members.collect()).expect("distinct keys and names make a valid genesis");
        let index_of = publics.iter().enumerate().map(|(i, key)| (*key, i)).collect();
        let nodes = keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| {
                // The first start of a brand-new cluster (`new_cluster = true`): no member has
                // written yet, so no node needs to learn its own seq.
                let first_start = NodeConfig { own_seq_peers_needed: 0, ..config.node_configs[i].clone() };
                let mut node = Node::new(genesis.clone(), Some(key.public()), first_start);
                // Every process persists its document with its commits, as the daemon does.
                node.track_document();
                SimNode {
                    node,
                    learns_own_seq: false,
                    key,
                    config: config.node_configs[i].clone(),
                    byzantine: config.byzantine.get(&i).cloned(),
                    commit: GroupCommit::new(config.commit_writes_max),
                    discipline: PeerDiscipline::new(),
                    // The first start of a brand-new cluster (`new_cluster = true`).
                    store: SimStore::new(true),
                    writes_pending: BTreeSet::new(),
                    members_pending: BTreeMap::new(),
                    members_done: BTreeSet::new(),
                    down: false,
                    last_timeout_ms: None,
                    input_since_timeout: false,
                    last_driver_wake_ms: None,
                    input_since_driver_wake: false,
                    fork_chains: None,
                }
            })
            .collect();
        let network = Network::new(n, config.links, &mut rng_network);
        let overlays: Vec<Option<Overlay>> = (0..n)
            .map(|i| config.overlay.clone().map(|oc| Overlay::new(publics[i], rng_overlay.next_u64(), oc)))
            .collect();
        let outcome = Outcome {
            seed: config.seed,
            n_nodes: n,
            n_byzantine: config.byzantine.len(),
            ..Outcome::default()
        };
        let mut cluster = Self {
            genesis,
            now_ms: 0,
            nodes,
            publics,
            index_of,
            honest,
            queue: BinaryHeap::new(),
            n_scheduled: 0,
            network,
            rng_network,
            rng_actions,
            rng_contexts,
            rng_store,
            healed: false,
            n_writes_submitted: 0,
            client_reads: BTreeMap::new(),
            own_seqs: BTreeMap::new(),
            invalid_ids: BTreeSet::new(),
            honest_writes: Vec::new(),
            forks: Vec::new(),
            rejected_by_header: BTreeSet::new(),
            crafted_counter: 0,
            n_busy_in_flight: 0,
            violations: Vec::new(),
            outcome,
            trace: TraceHash::default(),
            overlays,
            config,
        };
        let severed: Vec<(usize, usize)> =
            cluster.config.severed.iter().map(|(a, b)| ((*a).min(*b), (*a).max(*b))).collect();
        assert!(
            super::honest_connected(&cluster.honest, &severed),
            "severed pairs must leave an honest path"
        );
        // With an overlay, connections open only where one end dials and the other accepts.
        let with_overlay = cluster.config.overlay.is_some();
        if with_overlay {
            cluster.update_overlays();
            for a in 0..n {
                for b in a + 1..n {
                    cluster.network.close(a, b, false);
                }
            }
        }
        for a in 0..n {
            for b in a + 1..n {
                if severed.contains(&(a, b)) {
                    cluster.network.sever(a, b);
                    continue;
                }
                if with_overlay {
                    if !cluster.may_connect(a, b) {
                        continue;
                    }
                    cluster.network.open(a, b);
                }
                let (pa, pb) = (cluster.publics[a], cluster.publics[b]);
                let ok = cluster.nodes[a].node.handle_connected(pb, 0)
                    && cluster.nodes[b].node.handle_connected(pa, 0);
                assert!(ok, "members accept each other at the start");
            }
        }
        if cluster.config.overlay.is_some() {
            cluster.push(super::SIM_OVERLAY_TICK_MS, Action::OverlayTick);
        }
        cluster.schedule_random(&mut rng_script);
        cluster
    }

    // ---- the overlay ------------------------------------------------------------------------

    /// Whether node `a` dials node `b`: always without an overlay (a full mesh); with one, when
    /// `b` is among `a`'s outbound choices, or, for a Byzantine node trying to eclipse honest
    /// ones (`SimConfig::byzantine_dial_all`), whenever `b` is honest.
    fn dials(&self, a: usize, b: usize) -> bool {
        match &self.overlays[a] {
            None => true,
            Some(overlay) => {
                overlay.wants(&self.publics[b])
                    || (self.config.byzantine_dial_all && self.is_byzantine(a) && !self.is_byzantine(b))
            }
        }
    }

    /// Whether node `acceptor` takes a connection dialed by `dialer`: one it dials itself, or
    /// while its inbound connections (from peers it does not dial) are under its cap.
    fn accepts(&self, acceptor: usize, dialer: usize) -> bool {
        let Some(overlay) = &self.overlays[acceptor] else { return true };
        if self.dials(acceptor, dialer) {
            return true;
        }
        // Under a cap above the cluster's size every dial is accepted: no count needed (it
        // costs O(n) per pair, which made 300-node runs with Byzantine dialers crawl).
        if overlay.config().inbound_max >= self.nodes.len() {
            return true;
        }
        let n_inbound = (0..self.nodes.len())
            .filter(|&j| j != acceptor && self.network.is_up(acceptor, j) && !self.dials(acceptor, j))
            .count();
        overlay.accepts_inbound(&self.publics[dialer], n_inbound)
    }

    /// Whether the connection `a – b` may open: one end dials it and the other accepts it.
    fn may_connect(&self, a: usize, b: usize) -> bool {
        (self.dials(a, b) && self.accepts(b, a)) || (self.dials(b, a) && self.accepts(a, b))
    }

    /// Whether nodes `a` and `b` are connected now.
    pub fn is_connected(&self, a: usize, b: usize) -> bool {
        a != b && self.network.is_up(a, b)
    }

    /// Connections node `i` holds now.
    pub fn n_connections(&self, i: usize) -> usize {
        (0..self.nodes.len()).filter(|&j| j != i && self.network.is_up(i, j)).count()
    }

    /// Node `i`'s overlay, if the run has one.
    pub fn overlay(&self, i: usize) -> Option<&Overlay> {
        self.overlays[i].as_ref()
    }

    /// Brings every running node's overlay up to date with its members in force and its
    /// connections.
    fn update_overlays(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].down || self.overlays[i].is_none() {
                continue;
            }
            let members: Vec<PublicKey> =
                self.publics.iter().copied().filter(|key| !self.nodes[i].node.is_refused(key)).collect();
            let up: Vec<bool> = (0..self.nodes.len()).map(|j| j != i && self.network.is_up(i, j)).collect();
            let index_of = &self.index_of;
            let now = self.now_ms;
            if let Some(overlay) = &mut self.overlays[i] {
                overlay.update(&members, |key| index_of.get(key).is_some_and(|&j| up[j]), now);
            }
        }
    }

    /// The drivers' overlay tick: overlays updated, connections neither end wants closed, the
    /// wanted ones dialed.
    fn overlay_tick(&mut self) {
        self.update_overlays();
        let n = self.nodes.len();
        for a in 0..n {
            for b in a + 1..n {
                if self.network.is_up(a, b) && !self.dials(a, b) && !self.dials(b, a) {
                    self.close(a, b, false);
                }
            }
        }
        self.reconnect_all();
        self.push(self.now_ms + super::SIM_OVERLAY_TICK_MS, Action::OverlayTick);
    }

    fn schedule_random(&mut self, rng: &mut Rng) {
        let active_ms = self.config.active_ms.max(1);
        for _ in 0..self.config.n_writes {
            let node = *rng.pick(&self.honest);
            self.schedule(rng.below(active_ms), Scripted::Write { node });
        }
        let byzantine: Vec<(usize, usize)> =
            self.config.byzantine.iter().map(|(i, b)| (*i, b.n_actions)).collect();
        for (node, n_actions) in byzantine {
            for _ in 0..n_actions {
                self.schedule(rng.below(active_ms), Scripted::Attack { node, attack: None });
            }
        }
        for (node, own_seq_peers_needed, at_ms) in self.config.restarts.clone() {
            self.schedule(at_ms, Scripted::Restart { node, own_seq_peers_needed });
        }
        for (node, at_ms) in self.config.crashes.clone() {
            // Half the crashes come right after a write of the node, so its commit is in flight.
            if rng.chance(PPM / 2) {
                self.schedule(at_ms, Scripted::Write { node });
            }
            self.schedule(at_ms, Scripted::Crash { node, job: JobFate::Drawn, down_ms: None });
        }
        for (node, at_ms, duration_ms) in self.config.disk_full.clone() {
            self.schedule(at_ms, Scripted::DiskFull { node, duration_ms });
        }
        if let Some((proposer, target, at_ms)) = self.config.removal {
            self.schedule(
                at_ms,
                Scripted::Member { node: proposer, op: SimMember::ProposeRemoval { target } },
            );
            for node in self.honest.clone() {
                if node != proposer {
                    let op = SimMember::ApproveRemoval { target, proposer };
                    self.schedule(at_ms + rng.below(active_ms), Scripted::Member { node, op });
                }
            }
        }
        for _ in 0..self.config.n_partitions {
            let side = Network::random_bipartition(self.config.n_nodes, rng);
            let disconnects = rng.chance(PPM / 2);
            let duration_ms = rng.range(100, self.config.partition_ms_max.max(100));
            self.schedule(rng.below(active_ms), Scripted::Partition { side, disconnects, duration_ms });
        }
    }

    // ---- getters --------------------------------------------------------------------------

    /// The virtual time, in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The node with sim index `i`.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i].node
    }

    /// The number of nodes.
    pub fn n_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The public key of node `i`.
    pub fn public(&self, i: usize) -> PublicKey {
        self.publics[i]
    }

    /// Sim indices of the honest nodes.
    pub fn honest(&self) -> &[usize] {
        &self.honest
    }

    /// The store of node `i`.
    pub fn store(&self, i: usize) -> &SimStore {
        &self.nodes[i].store
    }

    /// The group commit of node `i`.
    pub fn commit(&self, i: usize) -> &GroupCommit<u64> {
        &self.nodes[i].commit
    }

    /// Whether node `i`'s process is down.
    pub fn is_down(&self, i: usize) -> bool {
        self.nodes[i].down
    }

    /// The acknowledged writes of honest nodes: `(writer, id of the event that holds it)`.
    pub fn acknowledged(&self) -> &[(usize, EventId)] {
        &self.honest_writes
    }

    /// The figures so far (final after [`Cluster::check_final`]).
    pub fn outcome(&self) -> Outcome {
        let mut outcome = self.outcome.clone();
        outcome.trace_hash = self.trace.value();
        outcome.n_honest_writes = self.honest_writes.len();
        outcome.n_honest_write_events =
            self.honest_writes.iter().map(|(_, id)| id).collect::<BTreeSet<_>>().len();
        outcome.n_invalid_crafted = self.invalid_ids.len();
        outcome.n_forks_crafted = self.forks.len();
        outcome
    }

    fn is_byzantine(&self, i: usize) -> bool {
        self.nodes[i].byzantine.is_some()
    }

    fn is_honest_key(&self, key: &PublicKey) -> Option<usize> {
        self.index_of.get(key).copied().filter(|i| !self.is_byzantine(*i))
    }

    fn is_silent(&self, i: usize) -> bool {
        self.healed && self.nodes[i].byzantine.as_ref().is_some_and(|b| b.after_heal == AfterHeal::Silent)
    }

    fn name(&self, i: usize) -> String {
        if self.is_byzantine(i) { format!("node {i} (byzantine)") } else { format!("node {i}") }
    }

    fn name_of(&self, key: &PublicKey) -> String {
        self.index_of.get(key).map_or_else(|| format!("non-member {}", key.short()), |i| self.name(*i))
    }

    // ---- scheduling and stepping ----------------------------------------------------------

    /// Schedules a scripted action at virtual time `at_ms` (not before now).
    pub fn schedule(&mut self, at_ms: u64, action: Scripted) {
        self.push(at_ms.max(self.now_ms), Action::Scripted(action));
    }

    fn push(&mut self, at_ms: u64, action: Action) {
        self.n_scheduled += 1;
        self.queue.push(Reverse(Scheduled { at_ms, order: self.n_scheduled, action }));
    }

    fn next_wake(&self) -> Option<(u64, Wake)> {
        let mut best = self.queue.peek().map(|Reverse(s)| (s.at_ms, Wake::Queue));
        // A node that, with no input since, asks again for a time it was already woken at
        // would spin a real driver; a real timer fires at the next tick, 1 ms later.
        let when = |at: u64, last: Option<u64>, input_since: bool| match last {
            Some(last) if at <= last && !input_since => (last + 1, true),
            _ => (at.max(self.now_ms), false),
        };
        for (i, sim) in self.nodes.iter().enumerate() {
            if self.is_silent(i) || sim.down {
                continue;
            }
            if let Some(at) = sim.node.poll_timeout() {
                let (at, stale) = when(at, sim.last_timeout_ms, sim.input_since_timeout);
                if best.is_none_or(|(b, _)| at < b) {
                    best = Some((at, Wake::Timer { node: i, stale }));
                }
            }
            let driver =
                [sim.commit.poll_timeout(), sim.discipline.poll_timeout()].into_iter().flatten().min();
            if let Some(at) = driver {
                let (at, stale) = when(at, sim.last_driver_wake_ms, sim.input_since_driver_wake);
                if best.is_none_or(|(b, _)| at < b) {
                    best = Some((at, Wake::Driver { node: i, stale }));
                }
            }
        }
        best
    }

    /// Performs the next thing that happens if it happens at or before `limit_ms`; returns
    /// whether it did, or the first violated invariant.
    pub fn step_until(&mut self, limit_ms: u64) -> Result<bool, String> {
        let Some((at_ms, wake)) = self.next_wake() else { return Ok(false) };
        if at_ms > limit_ms {
            return Ok(false);
        }
        self.now_ms = self.now_ms.max(at_ms);
        self.outcome.n_steps += 1;
        if self.outcome.n_steps > SIM_STEPS_MAX {
            return Err(format!(
                "still busy after {SIM_STEPS_MAX} steps at {} ms: a message storm?",
                self.now_ms
            ));
        }
        match wake {
            Wake::Queue => {
                // `next_wake` just peeked this entry.
                let Reverse(scheduled) = self.queue.pop().expect("the queue has the entry just peeked");
                self.perform(scheduled.action);
            }
            Wake::Timer { node, stale } => {
                if stale {
                    let last = self.nodes[node].last_timeout_ms.unwrap_or(0);
                    self.violations.push(format!(
                        "{} asks to be woken at or before {last} ms again, after handle_timeout at {last} ms and \
                         no input since: a driver that follows poll_timeout would spin",
                        self.name(node)
                    ));
                }
                let sim = &mut self.nodes[node];
                sim.last_timeout_ms = Some(self.now_ms);
                sim.node.handle_timeout(self.now_ms);
                sim.input_since_timeout = false;
                sim.input_since_driver_wake = true;
                self.after_input(node);
            }
            Wake::Driver { node, stale } => {
                if stale {
                    let last = self.nodes[node].last_driver_wake_ms.unwrap_or(0);
                    self.violations.push(format!(
                        "{}'s group commit or discipline asks to be woken at or before {last} ms again, after a \
                         wake-up at {last} ms and no input since: the driver would spin",
                        self.name(node)
                    ));
                }
                let sim = &mut self.nodes[node];
                sim.last_driver_wake_ms = Some(self.now_ms);
                sim.input_since_driver_wake = false;
                self.after_input(node);
            }
        }
        match self.violations.first() {
            Some(violation) => Err(format!("at {} ms: {violation}", self.now_ms)),
            None => Ok(true),
        }
    }

    /// Performs the next thing that happens, whenever it is.
    pub fn step(&mut self) -> Result<bool, String> {
        self.step_until(u64::MAX)
    }

    /// Runs everything that happens up to `t_ms`, then sets the clock to `t_ms`.
    pub fn run_until(&mut self, t_ms: u64) -> Result<(), String> {
        while self.step_until(t_ms)? {}
        self.now_ms = self.now_ms.max(t_ms);
        Ok(())
    }

    /// The whole run: the active phase, healing, quiescence, the final checks.
    pub fn run_to_end(&mut self) -> Result<(), String> {
        self.run_until(self.config.active_ms)?;
        self.heal();
        self.run_until_quiescent(self.now_ms + self.config.heal_deadline_ms)?;
        self.check_final()
    }

    /// Ends the active phase: partitions end, connections reopen, links stop dropping and
    /// duplicating (delays stay), Byzantine nodes stop attacking and tampering, and the silent
    /// ones stop sending and reading.
    pub fn heal(&mut self) {
        self.healed = true;
        self.outcome.heal_started_ms = self.now_ms;
        self.network.end_all_partitions();
        self.network.set_links(|link| Link { drop_ppm: 0, duplicate_ppm: 0, ..link });
        self.reconnect_all();
    }

    /// Whether the honest nodes are done: they all have the same sync digest, and the only
    /// messages in flight between them are the ones agreeing nodes keep sending (periodic
    /// `Summary`/`InSync`, and `Want`s for deps nobody has). Anti-entropy never stops, so
    /// "no message at all in flight" never holds. Every honest process must be up with nothing
    /// waiting for its store, and a node that started without own history must also have
    /// learned its own seq (its next sessions after catching up confirm it), so it can write
    /// again.
    pub fn is_quiescent(&mut self) -> bool {
        if self.n_busy_in_flight > 0 {
            return false;
        }
        if self.honest.iter().any(|i| {
            let sim = &self.nodes[*i];
            sim.down || !sim.commit.is_idle() || (sim.learns_own_seq && sim.node.own_seq_pending().is_some())
        }) {
            return false;
        }
        let mut first = None;
        for i in self.honest.clone() {
            let digest = self.nodes[i].node.sync_digest();
            if *first.get_or_insert(digest) != digest {
                return false;
            }
        }
        true
    }

    /// Runs until [`Cluster::is_quiescent`]; an error if `deadline_ms` passes first.
    pub fn run_until_quiescent(&mut self, deadline_ms: u64) -> Result<(), String> {
        loop {
            if self.is_quiescent() {
                self.outcome.quiescent_ms = self.now_ms;
                return Ok(());
            }
            if !self.step_until(deadline_ms)? {
                let heal_started_ms = self.outcome.heal_started_ms;
                let state = self.describe();
                return Err(format!(
                    "the honest nodes were not quiescent {} ms after healing began at {heal_started_ms} ms:\n{state}",
                    deadline_ms.saturating_sub(heal_started_ms),
                ));
            }
        }
    }

    /// One line per honest node: accepted events, digest, buffer, evidence.
    pub fn describe(&mut self) -> String {
        let mut out = format!(
            "  messages in flight between honest nodes that are not idle: {}\n",
            self.n_busy_in_flight
        );
        for i in self.honest.clone() {
            let digest = self.nodes[i].node.sync_digest();
            let adapter = self.nodes[i].node.adapter();
            let (n_buffered, buffer_bytes) = adapter.buffer_use();
            out.push_str(&format!(
                "  node {i}: {} accepted, sync digest {}, {} buffered ({} bytes), {} evidence\n",
                adapter.n_accepted(),
                hex::encode(&digest[..6]),
                n_buffered,
                buffer_bytes,
                adapter.evidence().count(),
            ));
        }
        out
    }

    // ---- actions ----------------------------------------------------------------------------

    fn perform(&mut self, action: Action) {
        match action {
            Action::Deliver { from, to, epoch, bytes, busy } => {
                self.n_busy_in_flight -= u64::from(busy);
                self.deliver(from, to, epoch, &bytes);
            }
            Action::StoreDone { node, job_number } => self.store_done(node, job_number),
            Action::Recover { node } => self.recover(node),
            Action::Reconnect => self.reconnect_all(),
            Action::OverlayTick => self.overlay_tick(),
            Action::Scripted(Scripted::Write { node }) => {
                if !self.is_silent(node) {
                    self.write(node);
                }
            }
            Action::Scripted(Scripted::Attack { node, attack }) => {
                if !self.healed && !self.nodes[node].down {
                    self.attack(node, attack);
                }
            }
            Action::Scripted(Scripted::Partition { side, disconnects, duration_ms }) => {
                let (id, across) = self.network.start_partition(side, disconnects);
                for (a, b) in across {
                    self.close(a, b, false);
                }
                self.schedule(self.now_ms + duration_ms, Scripted::PartitionEnd { id });
            }
            Action::Scripted(Scripted::Send { from, to, bytes }) => {
                if !(self.healed && self.is_byzantine(from)) {
                    self.transmit(from, to, bytes);
                }
            }
            Action::Scripted(Scripted::Restart { node, own_seq_peers_needed }) => {
                if !self.nodes[node].down && self.own_events_everywhere(node) {
                    self.restart(node, own_seq_peers_needed);
                } else {
                    self.schedule(self.now_ms + 100, Scripted::Restart { node, own_seq_peers_needed });
                }
            }
            Action::Scripted(Scripted::Crash { node, job, down_ms }) => self.crash(node, job, down_ms),
            Action::Scripted(Scripted::DiskFull { node, duration_ms }) => {
                self.outcome.n_disk_full += 1;
                self.nodes[node].store.fill_until(self.now_ms + duration_ms);
            }
            Action::Scripted(Scripted::PartitionEnd { id }) => {
                self.network.end_partition(id);
                self.reconnect_all();
            }
            Action::Scripted(Scripted::Member { node, op }) => self.member_op(node, op),
        }
    }

    /// Closes the connection `a – b`, and each end that is up sees it close.
    fn close(&mut self, a: usize, b: usize, refused: bool) {
        self.network.close(a, b, refused);
        for (x, y) in [(a, b), (b, a)] {
            if !self.nodes[x].down {
                let peer = self.publics[y];
                self.nodes[x].node.handle_disconnected(&peer);
                self.mark_input(x);
            }
        }
    }

    /// Closes every connection of node `i`.
    fn close_all(&mut self, i: usize) {
        for j in 0..self.nodes.len() {
            if j != i && self.network.is_up(i, j) {
                self.close(i, j, false);
            }
        }
    }

    /// Opens every connection that is down and may be up: not refused, not cut, both processes
    /// up. An end that mutes the other holds the link but does not tell its replica (the
    /// driver's `linked` set) until the mute ends.
    fn reconnect_all(&mut self) {
        for (a, b) in self.network.reconnectable() {
            if self.nodes[a].down || self.nodes[b].down || !self.may_connect(a, b) {
                continue;
            }
            let now = self.now_ms;
            let (pa, pb) = (self.publics[a], self.publics[b]);
            let connect = |sim: &mut SimNode, peer: PublicKey| {
                sim.discipline.is_muted(&peer, now) || sim.node.handle_connected(peer, now)
            };
            let ok_a = connect(&mut self.nodes[a], pb);
            let ok_b = connect(&mut self.nodes[b], pa);
            if ok_a && ok_b {
                self.network.open(a, b);
            } else {
                if ok_a {
                    self.nodes[a].node.handle_disconnected(&pb);
                }
                if ok_b {
                    self.nodes[b].node.handle_disconnected(&pa);
                }
                self.network.close(a, b, true);
            }
            self.drive(a);
            self.drive(b);
        }
    }

    /// A client of node `i` writes random ops, as the driver takes a write command: the ops
    /// are checked, a node that refuses to sign answers at once, and the group commit takes
    /// the rest (answered once stored, see [`Cluster::answer_writers`]).
    fn write(&mut self, i: usize) {
        let mut ops = random_ops(&mut self.rng_actions);
        if !self.nodes[i].down {
            self.add_contexts(i, &mut ops);
        }
        if self.nodes[i].down {
            if !self.is_byzantine(i) {
                *self.outcome.writes_refused.entry("down").or_default() += 1;
            }
            return;
        }
        // A context read on this node names only events it accepted, which it keeps; then, as
        // the driver does, the context is reduced before the ops' limits are checked.
        if let Err(error) = self.nodes[i].node.check_seen(&ops) {
            self.violations.push(format!("a context read on node {i} names an event it lacks: {error}"));
            return;
        }
        self.nodes[i].node.reduce_seen(&mut ops);
        if let Err(error) = Node::check_ops(&ops) {
            self.violations.push(format!("the simulator made invalid ops: {error}"));
            return;
        }
        let me = self.publics[i];
        if let Some(refusal) = self.nodes[i].node.write_refusal(&me) {
            self.refused(i, &WriteFailure::NotReady(refusal));
        } else {
            self.n_writes_submitted += 1;
            let number = self.n_writes_submitted;
            let sim = &mut self.nodes[i];
            sim.writes_pending.insert(number);
            sim.commit.handle_write(ops, number);
        }
        self.drive(i);
    }

    /// Gives some of `ops` the causal context a client of node `i` read: now, or (a stale
    /// read) at an earlier write of that client, which the node's document has moved past.
    fn add_contexts(&mut self, i: usize, ops: &mut [Op]) {
        // What a register or set op writes; an op with a context is alone on its key in its
        // event (rule 7), so only an op on a key no other op of the write touches gets one.
        fn target(op: &Op) -> Option<(bool, &[u8], &[u8])> {
            match op {
                Op::Put { key, .. } | Op::Del { key } => Some((false, key, &[])),
                Op::Add { key, element } | Op::Remove { key, element } => Some((true, key, element)),
                _ => None,
            }
        }
        let alone: Vec<bool> = ops
            .iter()
            .map(|op| {
                target(op).is_some_and(|t| ops.iter().filter(|other| target(other) == Some(t)).count() == 1)
            })
            .collect();
        for (op, alone) in ops.iter_mut().zip(alone) {
            if !alone || self.rng_contexts.below(3) != 0 {
                continue;
            }
            let document = self.nodes[i].node.document();
            let fresh = match &*op {
                Op::Put { key, .. } | Op::Del { key } => document.register(key).context(),
                Op::Add { key, element } | Op::Remove { key, element } => document
                    .set_member_contexts(key)
                    .into_iter()
                    .find(|(member, _)| member == element)
                    .map(|(_, adds)| adds)
                    .unwrap_or_default(),
                _ => continue,
            };
            let slot = (i, op.key().to_vec());
            let stale = self.rng_contexts.below(2) == 0;
            let events = match self.client_reads.get(&slot) {
                Some(earlier) if stale && *earlier != fresh => {
                    self.outcome.n_stale_context_ops += 1;
                    earlier.clone()
                }
                _ => fresh.clone(),
            };
            self.client_reads.insert(slot, fresh);
            self.outcome.n_context_ops += 1;
            let plain = std::mem::replace(op, Op::Del { key: Vec::new() });
            *op = plain.with_seen(Seen { events, own: Vec::new() });
        }
    }

    /// Node `i`'s operator asks it to sign `op`, unless it did or is doing so: queued in the
    /// group commit, or tried again later when the node cannot sign it yet.
    fn member_op(&mut self, i: usize, op: SimMember) {
        let sim = &self.nodes[i];
        if sim.members_done.contains(&op) || sim.members_pending.values().any(|pending| *pending == op) {
            return;
        }
        let request = if sim.down { None } else { self.member_request(i, op) };
        match request {
            Some(request) => {
                self.n_writes_submitted += 1;
                let number = self.n_writes_submitted;
                let sim = &mut self.nodes[i];
                sim.members_pending.insert(number, op);
                sim.commit.handle_member_op(request, number);
                self.drive(i);
            }
            None => self.schedule(self.now_ms + MEMBER_RETRY_MS, Scripted::Member { node: i, op }),
        }
    }

    /// What node `i` would sign for `op` now, if it can: `None` while the proposal to approve
    /// has not reached it.
    fn member_request(&self, i: usize, op: SimMember) -> Option<MemberOp> {
        let node = &self.nodes[i].node;
        let resolution = node.adapter().membership();
        match op {
            SimMember::ProposeRemoval { target } => {
                let seat = self.publics[target];
                let key = resolution.chains().current(&seat);
                let seen = node.adapter().roster().idx(&key).map_or(0, |idx| node.adapter().max_seq(idx));
                Some(MemberOp::Propose(ChangeKind::Remove { seat, key, cut: seen }))
            }
            SimMember::ApproveRemoval { proposer, .. } => {
                let base = resolution.in_force().id();
                let vote = resolution.ballot(&self.publics[proposer], &base, resolution.round()).first()?;
                Some(MemberOp::Approve(vote.change))
            }
        }
    }

    /// The group commit's answers to node `i`'s writers. Only an acknowledged write is
    /// expected everywhere at the end; it must be durable and accepted when it is answered.
    fn answer_writers(&mut self, i: usize) {
        while let Some((number, answer)) = self.nodes[i].commit.poll_reply() {
            if let Some(op) = self.nodes[i].members_pending.remove(&number) {
                match answer {
                    Ok(_) => {
                        self.nodes[i].members_done.insert(op);
                        self.outcome.n_member_ops += 1;
                    }
                    // Not yet (the proposal moved on, the seq is relearned, the disk is
                    // full): the operator tries again.
                    Err(_) => self.schedule(self.now_ms + MEMBER_RETRY_MS, Scripted::Member { node: i, op }),
                }
                continue;
            }
            self.nodes[i].writes_pending.remove(&number);
            match answer {
                Ok(Acked { event }) => {
                    let id = event.id();
                    self.trace.update(&id.0);
                    if self.is_byzantine(i) {
                        continue;
                    }
                    if !self.nodes[i].store.holds(&id.0) || !self.nodes[i].node.adapter().is_accepted(&id) {
                        self.violations.push(format!(
                            "honest node {i} acknowledged write {number} in event {id} before it was stored and \
                             accepted"
                        ));
                    }
                    self.honest_writes.push((i, id));
                }
                Err(failure) => self.refused(i, &failure),
            }
        }
    }

    /// Counts a write node `i` did not acknowledge; an honest node may refuse one only while it
    /// learns its own seq, or for a store that is full.
    fn refused(&mut self, i: usize, failure: &WriteFailure) {
        if self.is_byzantine(i) {
            return;
        }
        let reason = match failure {
            WriteFailure::NotReady(why) => {
                let sim = &self.nodes[i];
                if sim.learns_own_seq && sim.node.own_seq_pending().is_some() {
                    self.outcome.n_writes_refused_while_learning += 1;
                } else {
                    self.violations.push(format!("honest node {i} could not write: {why}"));
                }
                "not_ready"
            }
            WriteFailure::QueueFull => "queue_full",
            WriteFailure::NoSpace(_) => "no_space",
            WriteFailure::Storage(why) => {
                self.violations.push(format!("honest node {i}'s store failed: {why}"));
                "storage"
            }
            other => {
                self.violations.push(format!("honest node {i} refused a write: {other}"));
                "other"
            }
        };
        *self.outcome.writes_refused.entry(reason).or_default() += 1;
    }

    /// Hands node `i`'s next commit job to its store, if one is due; its fsync completes
    /// after a random delay.
    fn start_commit(&mut self, i: usize) {
        let now = self.now_ms;
        let sim = &mut self.nodes[i];
        let Some(job) = sim.commit.poll_commit(&mut sim.node, &sim.key, now) else { return };
        let job_number = sim.store.submit(job);
        let delay_ms = self.rng_store.range(1, self.config.store_delay_ms_max.max(1));
        self.push(now + delay_ms, Action::StoreDone { node: i, job_number });
    }

    /// The fsync of node `i`'s job `job_number` completed (unless the process died meanwhile):
    /// the verdict goes to the group commit.
    fn store_done(&mut self, i: usize, job_number: u64) {
        let now = self.now_ms;
        let Some((committed, job)) = self.nodes[i].store.complete(job_number, now) else { return };
        match &committed {
            Committed::Ok => {
                self.outcome.n_commits += 1;
                self.check_own_seqs(i, &job);
            }
            Committed::NoSpace { .. } => self.outcome.n_commits_no_space += 1,
            Committed::Failed { .. } => {}
        }
        let sim = &mut self.nodes[i];
        sim.commit.handle_committed(committed, job, &mut sim.node, now);
        self.drive(i);
    }

    /// Own events of honest node `i` that just became durable: none may have a seq that
    /// another own event already had. An own event leaves a node only after it is stored, so
    /// this sees every own event that could ever reach a peer.
    fn check_own_seqs(&mut self, i: usize, job: &CommitJob) {
        if self.is_byzantine(i) {
            return;
        }
        let me = self.publics[i];
        for event in &job.events {
            let (id, bytes) = (event.id(), event.bytes());
            if bytes.get(..32) != Some(&me.0[..]) {
                continue;
            }
            let Ok(event) = decode_event(bytes) else {
                self.violations.push(format!("honest node {i} stored an undecodable own event"));
                continue;
            };
            let id = EventId(id);
            let first = *self.own_seqs.entry((i, event.header.seq)).or_insert(id);
            if first != id {
                self.violations
                    .push(format!("honest node {i} signed seq {} twice: {first} and {id}", event.header.seq));
            }
        }
    }

    /// Whether every honest node has accepted every event node `i` has of its own.
    fn own_events_everywhere(&self, i: usize) -> bool {
        let adapter = self.nodes[i].node.adapter();
        let Some(me) = self.genesis.member_idx(&self.publics[i]) else { return true };
        (1..=adapter.max_seq(me))
            .flat_map(|seq| adapter.at_seq(me, seq))
            .all(|id| self.honest.iter().all(|j| self.nodes[*j].node.adapter().is_accepted(&id)))
    }

    /// Node `i` loses its process and its store, and starts again with the same key: a fresh
    /// [`Node`] with `own_seq_peers_needed` set, a fresh group commit and discipline, an empty
    /// store, and new connections to every peer it can reach (what was in flight on the old
    /// ones is lost, and so are the writes it had not answered). Its acknowledged writes stay
    /// expected everywhere, so restart a node only once its events have left it.
    pub fn restart(&mut self, i: usize, own_seq_peers_needed: usize) {
        self.outcome.n_restarts += 1;
        // Its clients' reads named events the empty store no longer holds.
        self.client_reads.retain(|(node, _), _| *node != i);
        self.close_all(i);
        self.lose_pending_writes(i);
        let me = self.publics[i];
        let sim = &mut self.nodes[i];
        sim.store.lose_everything();
        let config = NodeConfig { own_seq_peers_needed, ..sim.config.clone() };
        self.start_process(i, Node::new(self.genesis.clone(), Some(me), config));
    }

    /// Node `i`'s process dies: the job with its store lands or is lost as `job` says (drawn
    /// from the seed for [`JobFate::Drawn`]: an fsync may complete just before a crash, and
    /// both must be safe), unanswered writes stay unanswered, its connections close, and after
    /// `down_ms` (drawn when `None`) it starts again from its store (see [`Cluster::recover`]).
    pub fn crash(&mut self, i: usize, job: JobFate, down_ms: Option<u64>) {
        if self.nodes[i].down {
            return;
        }
        let landed = match job {
            JobFate::Drawn => self.rng_store.chance(PPM / 2),
            JobFate::Landed => true,
            JobFate::Lost => false,
        };
        let down_ms = down_ms.unwrap_or_else(|| self.rng_store.range(CRASH_DOWN_MS_MIN, CRASH_DOWN_MS_MAX));
        self.outcome.n_crashes += 1;
        // Its clients' reads may name peer events it had accepted but not stored, which the
        // crash loses (a real client then gets 409 unknown_context, and reads again).
        self.client_reads.retain(|(node, _), _| *node != i);
        self.trace.update_u64(i as u64);
        self.trace.update_u64(u64::from(landed));
        let (fate, landed_job) = self.nodes[i].store.crash(landed, self.now_ms);
        match fate {
            CrashedJob::Landed => self.outcome.n_crash_jobs_landed += 1,
            CrashedJob::Lost => self.outcome.n_crash_jobs_lost += 1,
            CrashedJob::None => {}
        }
        if let Some(job) = landed_job {
            self.check_own_seqs(i, &job);
        }
        self.lose_pending_writes(i);
        self.close_all(i);
        self.nodes[i].down = true;
        self.push(self.now_ms + down_ms, Action::Recover { node: i });
    }

    /// Node `i` starts again after a crash, as the daemon does (`daemon.rs`): a fresh [`Node`]
    /// restored from its store alone (`restore` checks every event again, signatures included;
    /// then `restore_evidence`), own-seq safety on unless the store is marked as holding the node's whole own history
    /// (`Config::node_config`), a fresh group commit and discipline; then it reconnects.
    pub fn recover(&mut self, i: usize) {
        if !self.nodes[i].down {
            return;
        }
        let me = self.publics[i];
        let sim = &self.nodes[i];
        let events = sim.store.events().to_vec();
        let n_stored = events.len();
        // The daemon's rule (`Config::node_config`): safety off only for a store marked as
        // holding the node's whole own history.
        let mut config = sim.config.clone();
        if sim.store.own_history_complete() {
            config.own_seq_peers_needed = 0;
        }
        // The reference: every event validated again and the document rebuilt from the log.
        let mut reference = Node::new(self.genesis.clone(), Some(me), config.clone());
        let rejected = reference.restore(events.clone());
        if let Some(first) = rejected.first() {
            self.violations.push(format!(
                "{}'s store holds {} event(s) that do not validate again (first: {:?}, {})",
                self.name(i),
                rejected.len(),
                first.id,
                first.reason
            ));
        }
        let evidence: Vec<Vec<u8>> = sim.store.evidence().cloned().collect();
        // The node itself starts as the daemon does: over its archive, from the persisted
        // document and its covered records, replaying only the log's tail.
        // The roster as stored: the persisted document's author indices mean these keys.
        let later: Vec<PublicKey> = sim.store.roster().iter().map(|key| PublicKey(*key)).collect();
        let roster = match Roster::with_later(&self.genesis, &later) {
            Ok(roster) => roster,
            Err(e) => {
                self.violations.push(format!("node {i}'s stored roster does not load: {e}"));
                Roster::new(&self.genesis)
            }
        };
        let chains = vec![ChainState::default(); roster.len()];
        let mut adapter = Adapter::resume(
            self.genesis.clone(),
            config.adapter.clone(),
            Box::new(MemoryArchive::new()),
            roster,
            chains,
        );
        let _ = adapter.restore(events.clone());
        // The log is in acceptance order, so validating it again gives the same roster.
        let (mut archive, roster, chains) = adapter.into_parts();
        let persisted = sim.store.document();
        archive.record_covered(persisted.covered);
        let mut restore_error = None;
        let document =
            if persisted.through == 0 && persisted.keys.is_empty() && persisted.exclusions.is_none() {
                None
            } else {
                let mut document = Document::new(roster.keys());
                if let Some(bytes) = persisted.exclusions
                    && let Err(e) = document.restore_exclusions(bytes)
                {
                    restore_error = Some(format!("exclusions: {e}"));
                }
                for ((kind, key), state) in persisted.keys {
                    if let Err(e) = document.restore_key(*kind, key, state) {
                        restore_error.get_or_insert(format!("key {key:?}: {e}"));
                    }
                }
                Some(document)
            };
        let tail: Vec<StoredEvent> = events[persisted.through.min(events.len())..]
            .iter()
            .filter_map(|bytes| decode_event(bytes).ok())
            .filter_map(|event| archive.event(&event.id()))
            .collect();
        let all: Vec<StoredEvent> = events
            .iter()
            .filter_map(|bytes| decode_event(bytes).ok())
            .filter_map(|event| archive.event(&event.id()))
            .collect();
        let mut node =
            Node::resume(self.genesis.clone(), Some(me), config, archive, roster, chains, document);
        // The store's log, in the order it was accepted, holds the membership ops.
        node.resume_membership(&all);
        // Tracked before the tail's replay, whose changes the next commit persists.
        node.track_document();
        if !node.replay_document(&tail).is_empty() {
            restore_error.get_or_insert("the log's tail does not replay".to_owned());
        }
        if let Some(error) = restore_error {
            self.violations.push(format!("{}'s persisted document does not restore: {error}", self.name(i)));
        }
        for bytes in evidence {
            let restored = decode_evidence(&bytes).map_err(|e| e.to_string()).and_then(|evidence| {
                reference.restore_evidence(evidence.clone()).map_err(|e| e.to_string())?;
                node.restore_evidence(evidence).map_err(|e| e.to_string())
            });
            if let Err(error) = restored {
                self.violations
                    .push(format!("{}'s store holds evidence that does not restore: {error}", self.name(i)));
            }
        }
        if reference.adapter().n_accepted() != n_stored {
            self.violations.push(format!(
                "{} restored {} of the {n_stored} events of its store: the store's log is not in causal order",
                self.name(i),
                reference.adapter().n_accepted()
            ));
        }
        if node.document().digest() != reference.document().digest() {
            self.violations.push(format!(
                "{}'s document opened from its store differs from the one rebuilt from its log",
                self.name(i)
            ));
        }
        self.outcome.n_documents_resumed += 1;
        self.nodes[i].down = false;
        self.start_process(i, node);
    }

    /// A new process of node `i` around `node`: a fresh group commit and discipline, no timer
    /// handled yet, then connections to every peer it can reach.
    fn start_process(&mut self, i: usize, mut node: Node) {
        // Every process persists its document with its commits, as the daemon does.
        node.track_document();
        let sim = &mut self.nodes[i];
        sim.learns_own_seq = node.own_seq_pending().is_some();
        sim.node = node;
        sim.commit = GroupCommit::new(self.config.commit_writes_max);
        sim.discipline = PeerDiscipline::new();
        sim.last_timeout_ms = None;
        sim.last_driver_wake_ms = None;
        self.reconnect_all();
        self.drive(i);
    }

    /// The writes node `i` had taken and not answered die with its process: their writers never
    /// hear back, and they are not expected anywhere.
    fn lose_pending_writes(&mut self, i: usize) {
        let n = std::mem::take(&mut self.nodes[i].writes_pending).len() as u64;
        if n > 0 && !self.is_byzantine(i) {
            *self.outcome.writes_refused.entry("unanswered").or_default() += n;
        }
    }

    fn attack(&mut self, i: usize, attack: Option<Attack>) {
        let Some(byzantine) = self.nodes[i].byzantine.clone() else {
            self.violations.push(format!("an attack was scripted for honest node {i}"));
            return;
        };
        let attack = attack.unwrap_or_else(|| *self.rng_actions.pick(&byzantine.attacks));
        self.trace.update_u64(attack as u64);
        if attack == Attack::Write {
            self.write(i);
            return;
        }
        let honest = self.honest.clone();
        let sim = &mut self.nodes[i];
        let mut cx = CraftContext {
            node: &sim.node,
            key: &sim.key,
            publics: &self.publics,
            honest: &honest,
            counter: &mut self.crafted_counter,
            fork_chains: &mut sim.fork_chains,
        };
        let crafted = craft(attack, &mut cx, &mut self.rng_actions);
        self.invalid_ids.extend(crafted.invalid);
        self.forks.extend(crafted.forks.into_iter().map(|(a, b)| (i, a, b)));
        for (to, bytes) in crafted.sends {
            self.transmit(i, to, bytes);
        }
    }

    /// Node `i` has had an input: see [`Cluster::after_input`].
    fn drive(&mut self, i: usize) {
        self.mark_input(i);
        self.after_input(i);
    }

    /// Node `i` had an input, so its timers may ask for any time again.
    fn mark_input(&mut self, i: usize) {
        self.nodes[i].input_since_timeout = true;
        self.nodes[i].input_since_driver_wake = true;
    }

    /// What `driver.rs`'s `after_input` does: mutes that ended are lifted, the node's events
    /// are drained, it transmits while its links have room, the next commit job goes to the
    /// store, its writers are answered; then its buffer bounds are checked.
    fn after_input(&mut self, i: usize) {
        if self.nodes[i].down {
            return;
        }
        self.unmute_expired(i);
        while let Some(event) = self.nodes[i].node.poll_event() {
            self.record(i, event);
        }
        for peer in self.nodes[i].node.connected_peers() {
            if let Some(&j) = self.index_of.get(&peer) {
                self.transmit_link(i, j);
            }
        }
        self.start_commit(i);
        self.answer_writers(i);
        self.check_bounds(i);
    }

    /// Peers whose mute at node `i` ended while their link is up start afresh.
    fn unmute_expired(&mut self, i: usize) {
        let now = self.now_ms;
        for peer in self.nodes[i].discipline.expire(now) {
            let Some(&j) = self.index_of.get(&peer) else { continue };
            if self.network.is_up(i, j) && !self.nodes[i].node.is_connected(&peer) {
                self.nodes[i].node.handle_connected(peer, now);
                self.mark_input(i);
            }
        }
    }

    /// Counts one invalid input from `peer` at node `i`; too many in a window mute it, as the
    /// driver does: node `i` drops it and closes the connection, and ignores it until the mute
    /// ends (the transport dials again meanwhile).
    fn strike(&mut self, i: usize, peer: PublicKey) {
        let now = self.now_ms;
        if let Verdict::Muted { .. } = self.nodes[i].discipline.strike(peer, now) {
            self.outcome.n_mutes += 1;
            self.nodes[i].node.handle_disconnected(&peer);
            self.mark_input(i);
            if let Some(&j) = self.index_of.get(&peer)
                && self.network.is_up(i, j)
            {
                self.close(i, j, false);
            }
            self.push(now + REDIAL_MS, Action::Reconnect);
        }
    }

    /// Node `i` sends to node `j` through `poll_transmit_to` while the link's transport queue
    /// has room.
    fn transmit_link(&mut self, i: usize, j: usize) {
        let peer = self.publics[j];
        if self.nodes[i].down || !self.nodes[i].node.is_connected(&peer) {
            return;
        }
        loop {
            if self.network.queued(i, j) >= self.config.transport_queue_max {
                if self.nodes[i].node.queued(&peer) != (0, 0) {
                    self.outcome.n_link_full += 1;
                }
                return;
            }
            let Some(bytes) = self.nodes[i].node.poll_transmit_to(&peer) else { return };
            self.route(i, j, bytes);
        }
    }

    /// A message from node `from`'s state machine: Byzantine nodes tamper with it first.
    fn route(&mut self, from: usize, to: usize, mut bytes: Vec<u8>) {
        if let Some(byzantine) = &self.nodes[from].byzantine {
            if self.healed {
                if byzantine.after_heal == AfterHeal::Silent {
                    return;
                }
            } else {
                let (withhold, flip, corrupt) =
                    (byzantine.withhold_ppm, byzantine.flip_ppm, byzantine.corrupt_signature_ppm);
                let rng = &mut self.rng_actions;
                if rng.chance(withhold) {
                    self.outcome.n_withheld += 1;
                    return;
                }
                if rng.chance(flip) && !bytes.is_empty() {
                    let original = bytes.clone();
                    let idx = rng.index(bytes.len());
                    bytes[idx] ^= rng.range(1, 255) as u8;
                    self.invalid_ids.extend(mutated_ids_in_message(&original, &bytes));
                } else if rng.chance(corrupt) {
                    bytes = corrupt_one_signature(&bytes, rng);
                }
            }
        }
        self.transmit(from, to, bytes);
    }

    /// Puts a message on the link `from → to`.
    fn transmit(&mut self, from: usize, to: usize, mut bytes: Vec<u8>) {
        let sent = self.network.send(from, to, &mut self.rng_network);
        if sent.delays_ms.is_empty() {
            self.outcome.n_lost += 1;
            return;
        }
        let busy = !self.is_byzantine(from) && !self.is_byzantine(to) && !is_idle_message(&bytes);
        let mut delays = sent.delays_ms.into_iter().peekable();
        while let Some(delay_ms) = delays.next() {
            self.n_busy_in_flight += u64::from(busy);
            let bytes = if delays.peek().is_some() { bytes.clone() } else { std::mem::take(&mut bytes) };
            self.push(self.now_ms + delay_ms, Action::Deliver { from, to, epoch: sent.epoch, bytes, busy });
        }
    }

    /// A copy arrives at node `to` (or is found lost); either way it frees room on the link,
    /// and the sender transmits again.
    fn deliver(&mut self, from: usize, to: usize, epoch: u64, bytes: &[u8]) {
        let freed = self.network.arrived(from, to, epoch);
        if !self.network.can_deliver(from, to, epoch) {
            self.outcome.n_lost += 1;
        } else if self.is_silent(to) {
            // A silent Byzantine node reads nothing.
        } else if self.nodes[to].discipline.is_muted(&self.publics[from], self.now_ms) {
            self.outcome.n_ignored_muted += 1;
        } else {
            self.trace.update_u64(self.now_ms);
            self.trace.update_u64((from * 64 + to) as u64);
            self.trace.update(bytes);
            self.outcome.n_messages += 1;
            *self.outcome.messages_by_kind.entry(message_kind(bytes)).or_default() += 1;
            self.outcome.n_bytes += bytes.len() as u64;
            let peer = self.publics[from];
            self.nodes[to].node.handle_message(peer, bytes, self.now_ms);
            self.drive(to);
        }
        if freed {
            self.transmit_link(from, to);
        }
    }

    // ---- checks -----------------------------------------------------------------------------

    /// One event of node `i`: to the group commit and the discipline as the driver's
    /// `drain_node_events` does, and into the checks.
    fn record(&mut self, i: usize, event: NodeEvent) {
        let honest_here = !self.is_byzantine(i);
        match event {
            NodeEvent::Accepted { event, from } => {
                // Own events are accepted only once stored (`commit_writes`).
                if from.is_some() {
                    let now = self.now_ms;
                    self.nodes[i].commit.handle_accepted(event, now);
                }
            }
            NodeEvent::Changed(_) | NodeEvent::Addresses { .. } => {}
            NodeEvent::Rejected { peer, id, reason } => {
                self.strike(i, peer);
                if honest_here {
                    *self.outcome.rejected.entry(reason).or_default() += 1;
                    if let Some(id) = id.filter(|_| HEADER_REASONS.contains(&reason)) {
                        self.rejected_by_header.insert(id);
                    }
                    // Honest nodes relay only accepted events, so a rejection is always the
                    // fault of the peer that sent the event, even when it was found only after
                    // the event waited in the buffer.
                    if let Some(j) = self.is_honest_key(&peer) {
                        self.violations.push(format!(
                            "honest node {i} rejected event {} from honest node {j}: {reason}; validity must \
                             be the same everywhere",
                            id.map_or_else(|| "(undecodable)".to_owned(), |id| id.to_string())
                        ));
                    }
                }
            }
            NodeEvent::BadMessage { peer, detail: error, .. } => {
                self.strike(i, peer);
                if honest_here {
                    self.outcome.n_bad_messages += 1;
                    if let Some(j) = self.is_honest_key(&peer) {
                        self.violations.push(format!(
                            "honest node {i} found a bad message from honest node {j}: {error}"
                        ));
                    }
                }
            }
            NodeEvent::Evidence(evidence) => {
                self.nodes[i].commit.handle_evidence(evidence.author().0, evidence.encode());
                if let Some(j) = self.is_honest_key(&evidence.author()) {
                    self.violations.push(format!(
                        "{} holds evidence against honest node {j} (seq {}): an honest node equivocated",
                        self.name(i),
                        evidence.seq()
                    ));
                }
            }
            NodeEvent::PeerRefused(peer) => {
                if !honest_here {
                    return;
                }
                match self.index_of.get(&peer).copied() {
                    Some(j) if !self.is_byzantine(j) => {
                        self.violations.push(format!("honest node {i} refused honest node {j}"));
                    }
                    Some(j) => {
                        // The node dropped the connection itself; the other end sees it close.
                        self.close(i, j, true);
                    }
                    None => {
                        self.violations.push(format!("honest node {i} refused {}", self.name_of(&peer)));
                    }
                }
            }
        }
    }

    fn check_bounds(&mut self, i: usize) {
        let adapter = self.nodes[i].node.adapter();
        let config = &self.nodes[i].config.adapter;
        let (_, total) = adapter.buffer_use();
        if !self.is_byzantine(i) {
            self.outcome.buffer_bytes_peak = self.outcome.buffer_bytes_peak.max(total);
        }
        if total > config.buffer_bytes_total_max {
            let max = config.buffer_bytes_total_max;
            self.violations
                .push(format!("{}'s causal buffer holds {total} bytes, over its bound {max}", self.name(i)));
        }
        for (j, key) in self.publics.iter().enumerate() {
            let bytes = adapter.buffer_peer_bytes(key);
            if bytes > config.buffer_bytes_per_peer_max {
                let max = config.buffer_bytes_per_peer_max;
                self.violations.push(format!(
                    "{}'s causal buffer holds {bytes} bytes from {}, over the per-peer bound {max}",
                    self.name(i),
                    self.name(j)
                ));
            }
        }
    }

    /// The promises of `docs/SECURITY.md` ("What Cairn promises honest nodes"), checked on quiescent honest nodes: the same accepted
    /// events, the same evidence and the same document everywhere; no crafted invalid event
    /// accepted anywhere; every honest write accepted everywhere; every author with an
    /// accepted fork proven, refused and excluded everywhere; no honest member accused.
    pub fn check_final(&mut self) -> Result<(), String> {
        let honest = self.honest.clone();
        let reference = honest[0];
        let ids = |c: &Self, i: usize| -> Vec<EventId> { c.nodes[i].node.adapter().accepted_ids() };
        let evidence = |c: &Self, i: usize| -> Vec<Vec<u8>> {
            c.nodes[i].node.adapter().evidence().map(|e| e.encode()).collect()
        };
        let reference_ids = ids(self, reference);
        let reference_evidence = evidence(self, reference);
        let reference_document = self.nodes[reference].node.document().digest();
        for &i in &honest[1..] {
            let mine = ids(self, i);
            if mine != reference_ids {
                let a: BTreeSet<_> = reference_ids.iter().collect();
                let b: BTreeSet<_> = mine.iter().collect();
                return Err(format!(
                    "honest nodes {reference} and {i} accepted different events: {} vs {}; only at {reference}: \
                     {:?}; only at {i}: {:?}",
                    a.len(),
                    b.len(),
                    a.difference(&b).take(4).collect::<Vec<_>>(),
                    b.difference(&a).take(4).collect::<Vec<_>>()
                ));
            }
            if evidence(self, i) != reference_evidence {
                return Err(format!("honest nodes {reference} and {i} hold different evidence"));
            }
            let document = self.nodes[i].node.document().digest();
            if document != reference_document {
                return Err(format!(
                    "honest nodes {reference} and {i} accepted the same {} events but their documents differ: {} vs {}",
                    reference_ids.len(),
                    hex::encode(reference_document),
                    hex::encode(document)
                ));
            }
        }
        for (i, sim) in self.nodes.iter().enumerate() {
            if let Some(id) = self.invalid_ids.iter().find(|id| sim.node.adapter().is_accepted(id)) {
                return Err(format!("{} accepted the crafted invalid event {id:?}", self.name(i)));
            }
        }
        for (i, sim) in self.nodes.iter().enumerate() {
            if let Some(id) = self.rejected_by_header.iter().find(|id| sim.node.adapter().is_accepted(id)) {
                return Err(format!(
                    "{} accepted event {id}, which an honest node rejected for a reason that depends on its \
                     header alone: validity differs between nodes",
                    self.name(i)
                ));
            }
        }
        for (writer, id) in &self.honest_writes {
            for &i in &honest {
                if !self.nodes[i].node.adapter().is_accepted(id) {
                    return Err(format!(
                        "honest node {i} lacks event {id:?} of a write acknowledged by honest node {writer}: an \
                         acknowledged write was lost"
                    ));
                }
            }
        }
        // No honest node signed a seq twice, across crashes and lost stores: no evidence against
        // one anywhere, Byzantine nodes included, and no two own events of one seq in any store.
        for (i, sim) in self.nodes.iter().enumerate() {
            if let Some(evidence) =
                sim.node.adapter().evidence().find(|e| self.is_honest_key(&e.author()).is_some())
            {
                return Err(format!(
                    "{} holds evidence against honest {} (seq {})",
                    self.name(i),
                    self.name_of(&evidence.author()),
                    evidence.seq()
                ));
            }
        }
        for (attacker, a, b) in &self.forks {
            let adapter = self.nodes[reference].node.adapter();
            if adapter.is_accepted(a) && adapter.is_accepted(b) {
                let author = adapter.event(a).map(|e| e.author_idx());
                if author.is_none_or(|author| adapter.fork_seq(author).is_none()) {
                    return Err(format!(
                        "both forked events {a:?} and {b:?} of node {attacker} are accepted, but no fork is recorded"
                    ));
                }
            }
        }
        let members: Vec<PublicKey> =
            self.nodes[reference].node.genesis().members().iter().map(|m| m.key).collect();
        let mut n_equivocators = 0;
        for (author_idx, key) in members.iter().enumerate() {
            let fork_seq = self.nodes[reference].node.adapter().fork_seq(author_idx);
            if fork_seq.is_some() {
                n_equivocators += 1;
                if self.is_honest_key(key).is_some() {
                    return Err(format!("the chain of honest {} forked", self.name_of(key)));
                }
            }
            for &i in &honest {
                let node = &self.nodes[i].node;
                let has_evidence = node.adapter().evidence().any(|e| e.author() == *key);
                if fork_seq.is_some() && !has_evidence {
                    return Err(format!(
                        "honest node {i} holds no evidence against {}, whose chain forked",
                        self.name_of(key)
                    ));
                }
                if fork_seq.is_some() && !node.is_refused(key) {
                    return Err(format!(
                        "honest node {i} does not refuse {}, whose chain forked",
                        self.name_of(key)
                    ));
                }
                // The document excludes from the lowest fork seq, or from the first seq past
                // what the membership admits (a removal's cut), whichever comes first.
                let through = node.adapter().admitted_through(author_idx);
                let cut = (node.adapter().max_seq(author_idx) > through).then(|| through.saturating_add(1));
                let expected = match (fork_seq, cut) {
                    (Some(fork), Some(cut)) => Some(fork.min(cut)),
                    (fork, cut) => fork.or(cut),
                };
                if node.document().excluded_from(author_idx) != expected {
                    return Err(format!(
                        "honest node {i} excludes {} from seq {:?}, but its lowest fork seq is {fork_seq:?} and \
                         the membership admits its seqs up to {through}",
                        self.name_of(key),
                        node.document().excluded_from(author_idx)
                    ));
                }
                if has_evidence && !node.is_refused(key) {
                    return Err(format!(
                        "honest node {i} holds evidence against {} but does not refuse it",
                        self.name_of(key)
                    ));
                }
                if has_evidence && self.is_honest_key(key).is_some() {
                    return Err(format!(
                        "honest node {i} holds evidence against honest {}",
                        self.name_of(key)
                    ));
                }
            }
        }
        for &i in &honest {
            if let Some(error) = self.nodes[i].node.own_seq_pending().filter(|_| self.nodes[i].learns_own_seq)
            {
                let peers: Vec<String> = (0..self.nodes.len())
                    .filter(|j| *j != i)
                    .map(|j| {
                        let key = self.publics[j];
                        let stats = self.nodes[i].node.peer_stats(&key);
                        format!(
                            "{j} (byzantine {}, its view: connected {} refused {} msgs_in {:?} out {:?} queued {:?}): connected {} in_sync {:?} tips {:?} in {:?} out {:?}",
                            self.is_byzantine(j),
                            self.nodes[j].node.is_connected(&self.publics[i]),
                            self.nodes[j].node.is_refused(&self.publics[i]),
                            self.nodes[j].node.peer_stats(&self.publics[i]).map(|s| s.messages_in),
                            self.nodes[j].node.peer_stats(&self.publics[i]).map(|s| s.messages_out),
                            self.nodes[j].node.queued(&self.publics[i]),
                            self.nodes[i].node.is_connected(&key),
                            stats.map(|s| s.sessions_in_sync),
                            stats.map(|s| s.sessions_tips),
                            stats.map(|s| s.messages_in),
                            stats.map(|s| s.messages_out)
                        )
                    })
                    .collect();
                return Err(format!(
                    "honest node {i}, started without own history, still refuses writes after healing: {error}; \
                     peers: {peers:?}"
                ));
            }
            for &j in &honest {
                if i != j && self.nodes[i].node.is_refused(&self.publics[j]) {
                    return Err(format!("honest node {i} refuses honest node {j}"));
                }
            }
        }
        self.check_membership()?;
        self.outcome.n_accepted = reference_ids.len();
        self.outcome.n_evidence = reference_evidence.len();
        self.outcome.n_equivocators = n_equivocators;
        self.outcome.n_evicted = honest.iter().map(|i| self.nodes[*i].node.adapter().buffer_evicted()).sum();
        self.outcome.n_orphans_dropped =
            honest.iter().map(|i| self.nodes[*i].node.adapter().orphans_dropped()).sum();
        self.trace.update(&reference_document);
        Ok(())
    }
}

impl Cluster {
    /// The membership at the end (`docs/PROTOCOL.md` §17): the honest nodes agree on it; it
    /// changed only as honest seats voted (with fewer Byzantine seats than a quorum, every
    /// change in force had a quorum's worth of honest votes less the Byzantine seats); and a
    /// removal every honest node signed its part of is in force.
    fn check_membership(&mut self) -> Result<(), String> {
        let honest = self.honest.clone();
        let reference = self.nodes[honest[0]].node.adapter().membership().clone();
        for &i in &honest[1..] {
            if self.nodes[i].node.adapter().membership().chain() != reference.chain() {
                return Err(format!("honest nodes {} and {i} hold different memberships", honest[0]));
            }
        }
        let n_byzantine = self.config.byzantine.len();
        let chain = reference.chain();
        let mut seats = self.publics.len();
        for (at, change) in reference.applied().iter().enumerate() {
            // The membership the change applied to: its seats and threshold.
            let base = chain[at];
            let honest_votes = honest
                .iter()
                .filter(|&&i| {
                    (0..=reference.round()).any(|round| {
                        reference
                            .ballot(&self.publics[i], &base, round)
                            .first()
                            .is_some_and(|v| v.change == *change)
                    })
                })
                .count();
            let threshold = seats / 2 + 1;
            if honest_votes + n_byzantine < threshold {
                return Err(format!(
                    "change {change} took effect with {honest_votes} honest votes of a threshold of {threshold} and \
                     {n_byzantine} Byzantine seats"
                ));
            }
            seats = match self.nodes[honest[0]].node.adapter().change(change).map(|c| &c.kind) {
                Some(ChangeKind::Add { .. }) => seats + 1,
                Some(ChangeKind::Remove { .. }) => seats - 1,
                _ => seats,
            };
        }
        if let Some((proposer, target, _)) = self.config.removal {
            let signed = honest.iter().all(|&i| {
                let op = if i == proposer {
                    SimMember::ProposeRemoval { target }
                } else {
                    SimMember::ApproveRemoval { target, proposer }
                };
                self.nodes[i].members_done.contains(&op)
            });
            if signed && reference.in_force().seat(&self.publics[target]).is_some() {
                return Err(format!(
                    "every honest node signed the removal of Byzantine node {target}, but its seat is in force"
                ));
            }
        }
        self.outcome.n_member_changes = reference.applied().len();
        self.outcome.removal_planned = self.config.removal.is_some();
        Ok(())
    }
}

/// Whether a message is one agreeing nodes keep exchanging (see [`IDLE_MESSAGE_TAGS`]).
fn is_idle_message(bytes: &[u8]) -> bool {
    bytes
        .get(..4)
        .is_some_and(|tag| IDLE_MESSAGE_TAGS.contains(&u32::from_le_bytes([tag[0], tag[1], tag[2], tag[3]])))
}

/// The kind of a message from its tag, as [`cairn_protocol::Message::kind`] names it.
fn message_kind(bytes: &[u8]) -> &'static str {
    const KINDS: [&str; 9] =
        ["summary", "in_sync", "tips", "events", "want", "fork_probe", "fork_ids", "want_chain", "evidence"];
    bytes
        .get(..4)
        .and_then(|tag| KINDS.get(u32::from_le_bytes([tag[0], tag[1], tag[2], tag[3]]) as usize))
        .copied()
        .unwrap_or("undecodable")
}

/// One to three random ops over four keys of each kind, with small values.
fn random_ops(rng: &mut Rng) -> Vec<Op> {
    (0..rng.range(1, 3))
        .map(|_| {
            let key = format!("k{}", rng.below(4)).into_bytes();
            let small = |rng: &mut Rng| format!("v{}", rng.below(8)).into_bytes();
            match rng.below(5) {
                0 => Op::Put { key, value: small(rng) },
                1 => Op::Del { key },
                2 => Op::Incr { key, delta: rng.range(0, 20) as i64 - 10 },
                3 => Op::Add { key, element: small(rng) },
                _ => Op::Remove { key, element: small(rng) },
            }
        })
        .collect()
}
