//! The cluster under simulation: the nodes, the event queue in virtual time, the network, the
//! Byzantine behaviours, and the checks. See the parent module for the shape of a run.
//!
//! Driving follows `node.rs`'s call order: after every input to a node (a delivered message, a
//! timeout, a write, a connection change) its outputs are drained at once, `poll_transmit` into
//! the network and `poll_event` into the checks, and then its buffer bounds are checked.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use cairn_crypto::{PublicKey, SecretKey};
use cairn_protocol::node::{Node, NodeConfig, NodeEvent, WriteError};
use cairn_protocol::{EventId, Genesis, Member, Op, Reject};

use super::byzantine::{
    AfterHeal, Attack, ByzantineConfig, CraftContext, ForkChains, corrupt_one_signature, craft,
    mutated_ids_in_message,
};
use super::network::{Link, Network};
use super::rng::{PPM, Rng, TraceHash};
use super::{SIM_STEPS_MAX, SimConfig};

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
    /// A node writes random ops through [`Node::write`].
    Write {
        /// Sim index of the writer.
        node: usize,
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
}

#[derive(Debug)]
enum Action {
    Deliver { from: usize, to: usize, epoch: u64, bytes: Vec<u8>, busy: bool },
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
}

struct SimNode {
    key: SecretKey,
    node: Node,
    config: NodeConfig,
    byzantine: Option<ByzantineConfig>,
    /// When `handle_timeout` was last called.
    last_timeout_ms: Option<u64>,
    /// Whether the node had an input since `handle_timeout` was last called.
    input_since_timeout: bool,
    /// A Byzantine node's branches for [`Attack::ForkChains`].
    fork_chains: Option<ForkChains>,
    /// The node lost its store and restarted at least once.
    restarted: bool,
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
    /// Writes a restarted node refused while it learned its own seq from peers.
    pub n_writes_refused_while_learning: u64,
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
    healed: bool,
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
            .map(|(i, key)| SimNode {
                node: Node::new(genesis.clone(), Some(key.public()), config.node_configs[i].clone()),
                restarted: false,
                key,
                config: config.node_configs[i].clone(),
                byzantine: config.byzantine.get(&i).cloned(),
                last_timeout_ms: None,
                input_since_timeout: false,
                fork_chains: None,
            })
            .collect();
        let network = Network::new(n, config.links, &mut rng_network);
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
            healed: false,
            invalid_ids: BTreeSet::new(),
            honest_writes: Vec::new(),
            forks: Vec::new(),
            rejected_by_header: BTreeSet::new(),
            crafted_counter: 0,
            n_busy_in_flight: 0,
            violations: Vec::new(),
            outcome,
            trace: TraceHash::default(),
            config,
        };
        let severed: Vec<(usize, usize)> =
            cluster.config.severed.iter().map(|(a, b)| ((*a).min(*b), (*a).max(*b))).collect();
        assert!(
            super::honest_connected(&cluster.honest, &severed),
            "severed pairs must leave an honest path"
        );
        for a in 0..n {
            for b in a + 1..n {
                if severed.contains(&(a, b)) {
                    cluster.network.sever(a, b);
                    continue;
                }
                let (pa, pb) = (cluster.publics[a], cluster.publics[b]);
                let ok = cluster.nodes[a].node.handle_connected(pb, 0)
                    && cluster.nodes[b].node.handle_connected(pa, 0);
                assert!(ok, "members accept each other at the start");
            }
        }
        cluster.schedule_random(&mut rng_script);
        cluster
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

    /// The public key of node `i`.
    pub fn public(&self, i: usize) -> PublicKey {
        self.publics[i]
    }

    /// Sim indices of the honest nodes.
    pub fn honest(&self) -> &[usize] {
        &self.honest
    }

    /// The figures so far (final after [`Cluster::check_final`]).
    pub fn outcome(&self) -> Outcome {
        let mut outcome = self.outcome.clone();
        outcome.trace_hash = self.trace.value();
        outcome.n_honest_writes = self.honest_writes.len();
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
        for (i, sim) in self.nodes.iter().enumerate() {
            if self.is_silent(i) {
                continue;
            }
            let Some(at) = sim.node.poll_timeout() else { continue };
            let (at, stale) = match sim.last_timeout_ms {
                // A node that, with no input since, asks again for a time it was already woken
                // at would spin a real driver; a real timer fires at the next tick, 1 ms later.
                Some(last) if at <= last && !sim.input_since_timeout => (last + 1, true),
                _ => (at.max(self.now_ms), false),
            };
            if best.is_none_or(|(b, _)| at < b) {
                best = Some((at, Wake::Timer { node: i, stale }));
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
                self.nodes[node].last_timeout_ms = Some(self.now_ms);
                self.nodes[node].node.handle_timeout(self.now_ms);
                self.drive(node);
                self.nodes[node].input_since_timeout = false;
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
    /// "no message at all in flight" never holds. A restarted node must also have learned its
    /// own seq (its next sessions after catching up confirm it), so it can write again.
    pub fn is_quiescent(&mut self) -> bool {
        if self.n_busy_in_flight > 0 {
            return false;
        }
        if self
            .honest
            .iter()
            .any(|i| self.nodes[*i].restarted && self.nodes[*i].node.own_seq_pending().is_some())
        {
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
            Action::Scripted(Scripted::Write { node }) => {
                if !self.is_silent(node) {
                    self.write(node);
                }
            }
            Action::Scripted(Scripted::Attack { node, attack }) => {
                if !self.healed {
                    self.attack(node, attack);
                }
            }
            Action::Scripted(Scripted::Partition { side, disconnects, duration_ms }) => {
                let (id, across) = self.network.start_partition(side, disconnects);
                for (a, b) in across {
                    self.network.close(a, b, false);
                    let (pa, pb) = (self.publics[a], self.publics[b]);
                    self.nodes[a].node.handle_disconnected(&pb);
                    self.nodes[b].node.handle_disconnected(&pa);
                }
                self.schedule(self.now_ms + duration_ms, Scripted::PartitionEnd { id });
            }
            Action::Scripted(Scripted::Send { from, to, bytes }) => {
                if !(self.healed && self.is_byzantine(from)) {
                    self.transmit(from, to, bytes);
                }
            }
            Action::Scripted(Scripted::Restart { node, own_seq_peers_needed }) => {
                if self.own_events_everywhere(node) {
                    self.restart(node, own_seq_peers_needed);
                } else {
                    self.schedule(self.now_ms + 100, Scripted::Restart { node, own_seq_peers_needed });
                }
            }
            Action::Scripted(Scripted::PartitionEnd { id }) => {
                self.network.end_partition(id);
                self.reconnect_all();
            }
        }
    }

    fn reconnect_all(&mut self) {
        for (a, b) in self.network.reconnectable() {
            let (pa, pb) = (self.publics[a], self.publics[b]);
            let ok_a = self.nodes[a].node.handle_connected(pb, self.now_ms);
            let ok_b = self.nodes[b].node.handle_connected(pa, self.now_ms);
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

    fn write(&mut self, i: usize) {
        let ops = random_ops(&mut self.rng_actions);
        let sim = &mut self.nodes[i];
        // Prepared, then committed at once: the simulator's nodes have no store yet.
        let result = sim.node.prepare_writes(&sim.key, vec![ops]).map(|prepared| {
            let mut accepted = sim.node.commit_writes(prepared, self.now_ms);
            accepted.remove(0)
        });
        match result {
            Ok(event) => {
                self.trace.update(&event.id().0);
                if !self.is_byzantine(i) {
                    self.honest_writes.push((i, event.id()));
                }
            }
            // A node that lost its store refuses writes until it has learned its own seq.
            Err(WriteError::OwnSeqUnknown { .. }) if self.nodes[i].restarted => {
                self.outcome.n_writes_refused_while_learning += 1;
            }
            Err(error) => {
                if !self.is_byzantine(i) {
                    self.violations.push(format!("honest node {i} could not write: {error}"));
                }
            }
        }
        self.drive(i);
    }

    /// Whether every honest node has accepted every event node `i` has of its own.
    fn own_events_everywhere(&self, i: usize) -> bool {
        let adapter = self.nodes[i].node.adapter();
        let Some(me) = self.genesis.member_idx(&self.publics[i]) else { return true };
        (1..=adapter.max_seq(me))
            .flat_map(|seq| adapter.at_seq(me, seq))
            .all(|id| self.honest.iter().all(|j| self.nodes[*j].node.adapter().is_accepted(id)))
    }

    /// Node `i` loses its process and its store, and starts again with the same key: a fresh
    /// [`Node`] with `own_seq_peers_needed` set, and new connections to every peer it can
    /// reach (what was in flight on the old ones is lost). Its writes so far stay expected
    /// everywhere, so restart a node only once its events have left it.
    pub fn restart(&mut self, i: usize, own_seq_peers_needed: usize) {
        self.outcome.n_restarts += 1;
        let me = self.publics[i];
        let sim = &mut self.nodes[i];
        let mut config = sim.config.clone();
        config.own_seq_peers_needed = own_seq_peers_needed;
        sim.node = Node::new(self.genesis.clone(), Some(me), config);
        sim.last_timeout_ms = None;
        sim.restarted = true;
        for j in 0..self.nodes.len() {
            if j != i && self.network.is_up(i, j) {
                self.network.close(i, j, false);
                self.nodes[j].node.handle_disconnected(&me);
            }
        }
        self.reconnect_all();
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

    /// Node `i` has had an input: send what it wants to send, record what it reports, and
    /// check its buffer bounds.
    fn drive(&mut self, i: usize) {
        // Every input is followed by a drive; the timer path clears this again.
        self.nodes[i].input_since_timeout = true;
        while let Some((peer, bytes)) = self.nodes[i].node.poll_transmit() {
            self.route(i, peer, bytes);
        }
        while let Some(event) = self.nodes[i].node.poll_event() {
            self.record(i, event);
        }
        self.check_bounds(i);
    }

    /// A message from node `from`'s state machine: Byzantine nodes tamper with it first.
    fn route(&mut self, from: usize, peer: PublicKey, mut bytes: Vec<u8>) {
        let Some(&to) = self.index_of.get(&peer) else {
            self.violations.push(format!("{} sent a message to a non-member", self.name(from)));
            return;
        };
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

    fn deliver(&mut self, from: usize, to: usize, epoch: u64, bytes: &[u8]) {
        if !self.network.can_deliver(from, to, epoch) {
            self.outcome.n_lost += 1;
            return;
        }
        if self.is_silent(to) {
            return;
        }
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

    // ---- checks -----------------------------------------------------------------------------

    fn record(&mut self, i: usize, event: NodeEvent) {
        let honest_here = !self.is_byzantine(i);
        match event {
            NodeEvent::Accepted { .. } | NodeEvent::Changed(_) => {}
            NodeEvent::Rejected { peer, id, reason } => {
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
                        if self.network.is_up(i, j) {
                            let me = self.publics[i];
                            self.nodes[j].node.handle_disconnected(&me);
                        }
                        self.network.close(i, j, true);
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
        let ids = |c: &Self, i: usize| -> Vec<EventId> {
            c.nodes[i].node.adapter().accepted_ids().copied().collect()
        };
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
                        "honest node {i} lacks event {id:?} written by honest node {writer}"
                    ));
                }
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
                if node.document().excluded_from(author_idx) != fork_seq {
                    return Err(format!(
                        "honest node {i} excludes {} from seq {:?}, but its lowest fork seq is {fork_seq:?}",
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
            if let Some(error) = self.nodes[i].node.own_seq_pending().filter(|_| self.nodes[i].restarted) {
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
                    "restarted honest node {i} still refuses writes after healing: {error}; peers: {peers:?}"
                ));
            }
            for &j in &honest {
                if i != j && self.nodes[i].node.is_refused(&self.publics[j]) {
                    return Err(format!("honest node {i} refuses honest node {j}"));
                }
            }
        }
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
