//! `cairn-adversary`: a Byzantine member (or an outsider) on the real wire. It dials honest
//! `cairnd` nodes over QUIC with mutual TLS ([`wire`]), learns their events with an ordinary
//! [`Node`] of its own (so that what it forges sits on top of the real history), and runs one of
//! the named [`scenarios`]: forged signatures, equivocation, orphan floods, lying frames, forged
//! evidence, connection floods and the rest.
//!
//! A scenario prints what it did and returns an [`Expect`]: what the honest nodes must show
//! afterwards (rejections by reason, closed connections, evidence, events that must never be
//! accepted). `tests/tests/adversary.rs` runs every scenario against a real 3-node cluster and
//! checks that, plus convergence, honest writes during the attack, and memory.

pub mod bench;
pub mod cluster;
pub mod scenarios;
pub mod wire;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_crypto::SecretKey;
use cairn_protocol::event::ops_hash;
use cairn_protocol::{Event, EventId, Genesis, Header, Message, Node, NodeConfig, Op, codec};

pub use scenarios::{SCENARIOS, Scenario};
pub use wire::{Link, Target};

/// How long the adversary may take to learn a target's events before it attacks.
pub const LEARN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the adversary waits for a frame before it lets its replica's timers run.
const PUMP_POLL: Duration = Duration::from_millis(20);

/// What the honest nodes must show once a scenario is over. Counts are per honest node, by
/// genesis name.
#[derive(Clone, Debug, Default)]
pub struct Expect {
    /// `(node, reason, n)`: the node counted exactly `n` rejections of this reason from the
    /// adversary (reason names as in `Reject::name`).
    pub rejected: Vec<(String, &'static str, u64)>,
    /// `(node, n)`: the node counted at least `n` bad messages from the adversary.
    pub bad_messages: Vec<(String, u64)>,
    /// `(node, close code)`: the node closed one of the adversary's connections with this
    /// application code (`None`: refused in the TLS handshake).
    pub closed: Vec<(String, Option<u64>)>,
    /// Events no honest node may ever accept.
    pub forbidden: Vec<EventId>,
    /// Orphans sent: none may be accepted, and the causal buffer must stay within its bound.
    pub orphans: u64,
    /// The adversary equivocated: every honest node must hold evidence against it and refuse
    /// its connections.
    pub equivocated: bool,
    /// The adversary approved two changes of one membership and round: every honest node must
    /// show the double approval, and no change may be in force.
    pub double_approval: bool,
    /// `(register, value)`: every honest node must hold this value among the register's
    /// siblings once converged.
    pub kept: Vec<(String, String)>,
}

/// A member (or would-be member) attacking a cluster.
pub struct Adversary {
    /// Its key: a genesis member's for most scenarios.
    pub key: SecretKey,
    /// The cluster's genesis.
    pub genesis: Genesis,
    /// The honest nodes it may dial.
    pub targets: Vec<Target>,
    /// Its own replica, fed with what the targets send while it learns.
    pub replica: Node,
    started: Instant,
    /// What it did, line by line.
    pub log: Vec<String>,
    /// What the honest nodes must show.
    pub expect: Expect,
}

impl Adversary {
    /// An adversary with `key` against `targets` of the cluster `genesis`.
    pub fn new(key: SecretKey, genesis: Genesis, targets: Vec<Target>) -> Self {
        let replica = Node::new(genesis.clone(), Some(key.public()), NodeConfig::default());
        Self {
            key,
            genesis,
            targets,
            replica,
            started: Instant::now(),
            log: Vec::new(),
            expect: Expect::default(),
        }
    }

    /// The cluster id the hello carries.
    pub fn cluster_id(&self) -> [u8; 32] {
        self.genesis.cluster_id()
    }

    /// Notes what the adversary did (printed by the binary, shown by failing tests).
    pub fn say(&mut self, line: impl Into<String>) {
        let line = line.into();
        eprintln!("adversary: {line}");
        self.log.push(line);
    }

    /// The target called `name`.
    pub fn target(&self, i: usize) -> anyhow::Result<&Target> {
        self.targets.get(i).with_context(|| format!("the scenario needs at least {} targets", i + 1))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Dials target `i` as a member.
    pub async fn link(&self, i: usize) -> anyhow::Result<Link> {
        wire::link(&self.key, self.target(i)?, &self.cluster_id()).await
    }

    /// Syncs the adversary's replica with the target of `link` as an honest member would,
    /// until the replica holds everything the target held at some point: a session ended in
    /// sync, or the replica accepted every tip of the target's last complete `Tips`. (The
    /// honest writer keeps the target's set moving; on a loaded machine a session can take
    /// longer than the pause between two writes, so the two sets may never be equal at the
    /// moment a session ends.)
    pub async fn learn(&mut self, link: &mut Link) -> anyhow::Result<()> {
        let peer = link.target.key;
        let now = self.now_ms();
        if !self.replica.handle_connected(peer, now) {
            bail!("the adversary's replica refuses {}", link.target.name);
        }
        let deadline = Instant::now() + LEARN_TIMEOUT;
        let in_sync_before = self.replica.peer_stats(&peer).map_or(0, |s| s.sessions_in_sync);
        // The tips of the target's `Tips` being received, and of its last complete one.
        let mut incoming_tips: Vec<EventId> = Vec::new();
        let mut target_tips: Option<Vec<EventId>> = None;
        loop {
            while let Some(bytes) = self.replica.poll_transmit_to(&peer) {
                link.send_frame(&bytes).await?;
            }
            let in_sync = self.replica.peer_stats(&peer).map_or(0, |s| s.sessions_in_sync);
            let holds_tips = target_tips
                .as_ref()
                .is_some_and(|tips| tips.iter().all(|id| self.replica.adapter().is_accepted(id)));
            if (in_sync > in_sync_before || holds_tips) && self.replica.queued(&peer) == (0, 0) {
                break;
            }
            if Instant::now() >= deadline {
                let stats = self.replica.peer_stats(&peer);
                bail!(
                    "no session with {} ended in sync within {LEARN_TIMEOUT:?} (the replica: {} events; with \
                     the target: messages in/out {:?}, sessions in sync/with tips {:?}, queued {:?})",
                    link.target.name,
                    self.replica.adapter().n_accepted(),
                    stats.map(|s| (s.messages_in, s.messages_out)),
                    stats.map(|s| (s.sessions_in_sync, s.sessions_tips)),
                    self.replica.queued(&peer),
                );
            }
            match link.recv(PUMP_POLL).await {
                Some(bytes) => {
                    if let Ok(Message::Tips { more, tips, .. }) = codec::decode_message(&bytes) {
                        incoming_tips.extend(tips.iter().map(|tip| tip.id));
                        if !more {
                            target_tips = Some(std::mem::take(&mut incoming_tips));
                        }
                    }
                    let now = self.now_ms();
                    self.replica.handle_message(peer, &bytes, now);
                }
                None => {
                    let now = self.now_ms();
                    self.replica.handle_timeout(now);
                }
            }
            while self.replica.poll_event().is_some() {}
        }
        self.replica.handle_disconnected(&peer);
        let n = self.replica.adapter().n_accepted();
        self.say(format!("learned {n} events from {}", link.target.name));
        Ok(())
    }

    /// The header of the adversary's next own event on top of everything its replica holds:
    /// `(seq, lamport, deps)`, all valid.
    pub fn next_header(&self) -> (u64, u64, Vec<EventId>) {
        let adapter = self.replica.adapter();
        let me = self.genesis.member_idx(&self.key.public());
        let seq = me.map_or(0, |m| adapter.max_seq(m)) + 1;
        let mut deps: Vec<EventId> = adapter.tips().iter().map(|t| t.id).collect();
        deps.sort_unstable();
        deps.truncate(cairn_protocol::limits::DEPS_MAX);
        let lamport =
            deps.iter().filter_map(|d| adapter.event(d)).map(|e| e.lamport()).max().unwrap_or(0) + 1;
        (seq, lamport, deps)
    }

    /// A validly signed own event with `ops` at the next seq (not added to the replica).
    pub fn next_event(&self, ops: Vec<Op>) -> Event {
        let (seq, lamport, deps) = self.next_header();
        Event::sign(&self.key, seq, lamport, deps, ops)
    }

    /// Takes `event` into the adversary's replica as its own (so the next one builds on it).
    pub fn keep(&mut self, event: &Event) {
        let _ = self.replica.restore(vec![event.encode()]);
    }
}

/// An event with `header` and `ops` signed by `key` over the header's id, whatever the header
/// says (its author may be someone else, its ops hash may lie).
pub fn sign_header(key: &SecretKey, header: Header, ops: Vec<Op>) -> Event {
    let sig = key.sign(&header.id().0);
    Event { header, ops, sig }
}

/// A fresh `Put` op: key `adversary/{tag}`, value `{n}`.
pub fn put(tag: &str, n: u64) -> Vec<Op> {
    vec![Op::Put { key: format!("adversary/{tag}").into_bytes(), value: n.to_string().into_bytes() }]
}

/// The ops hash the header of `ops` must carry.
pub fn hash_of(ops: &[Op]) -> [u8; 32] {
    ops_hash(ops)
}
