//! Test data for `cairn-bench`: fixed keys, the genesis, signed event chains built offline, and
//! helpers that load events into a [`Node`] and drain its outputs as a driver would.

use std::collections::BTreeMap;

use cairn_crypto::{PublicKey, SecretKey};
use cairn_protocol::codec::encode_message;
use cairn_protocol::node::{Node, NodeConfig, NodeEvent};
use cairn_protocol::{Event, EventId, Genesis, Member, Message, Op};

/// Events per `Events` message when the bench feeds a node directly.
pub(crate) const CHUNK_EVENTS: usize = 256;

/// The keys of the benchmark cluster: two replicas (`a`, `b`) that also write, and three
/// writers whose events reach the replicas from elsewhere.
pub(crate) struct Cast {
    pub(crate) a: SecretKey,
    pub(crate) b: SecretKey,
    pub(crate) writers: [SecretKey; 3],
    pub(crate) genesis: Genesis,
}

impl Cast {
    pub(crate) fn new() -> Self {
        let key = |tag: u8| SecretKey::from_seed(&[tag; 32]);
        let a = key(1);
        let b = key(2);
        let writers = [key(10), key(11), key(12)];
        let mut members = vec![
            Member { key: a.public(), name: "node-a".to_owned() },
            Member { key: b.public(), name: "node-b".to_owned() },
        ];
        for (i, w) in writers.iter().enumerate() {
            members.push(Member { key: w.public(), name: format!("writer-{i}") });
        }
        let genesis = Genesis::new(members).expect("a valid genesis");
        Self { a, b, writers, genesis }
    }

    /// All five authors, in a fixed order: the writers, then `a`, then `b`.
    pub(crate) fn authors(&self) -> [&SecretKey; 5] {
        [&self.writers[0], &self.writers[1], &self.writers[2], &self.a, &self.b]
    }

    /// The peer that loads events into a node outside any measurement. It is a member (so the
    /// node accepts its connection) and never a replica of the scenario.
    pub(crate) fn loader(&self) -> PublicKey {
        self.writers[2].public()
    }
}

/// One writer's view of the cluster: the newest event of every author it has seen. Each event
/// it signs depends on all of them, as an event written on a node that is in sync would.
#[derive(Clone, Default)]
pub(crate) struct View {
    /// author → (seq, id, lamport) of the newest event seen.
    heads: BTreeMap<PublicKey, (u64, EventId, u64)>,
}

impl View {
    /// Signs the author's next event over the whole view and adds it to the view.
    pub(crate) fn sign(&mut self, key: &SecretKey, ops: Vec<Op>) -> Event {
        let me = key.public();
        let seq = self.heads.get(&me).map_or(1, |h| h.0 + 1);
        let lamport = 1 + self.heads.values().map(|h| h.2).max().unwrap_or(0);
        let deps = self.heads.values().map(|h| h.1).collect();
        let event = Event::sign(key, seq, lamport, deps, ops);
        self.heads.insert(me, (seq, event.id(), lamport));
        event
    }
}

/// One or two small ops: a 16-byte register write, and every other event a counter bump.
pub(crate) fn small_ops(i: usize, salt: u8) -> Vec<Op> {
    let mut value = (i as u64).to_le_bytes().to_vec();
    value.extend_from_slice(&[salt; 8]);
    let mut ops = vec![Op::Put { key: format!("k{}", i % 64).into_bytes(), value }];
    if i % 2 == 1 {
        ops.push(Op::Incr { key: b"hits".to_vec(), delta: 1 });
    }
    ops
}

/// One register write with a `len`-byte value.
pub(crate) fn big_ops(i: usize, salt: u8, len: usize) -> Vec<Op> {
    let mut value = vec![salt; len];
    value[..8].copy_from_slice(&(i as u64).to_le_bytes());
    vec![Op::Put { key: format!("big{}", i % 256).into_bytes(), value }]
}

/// `n` events by `authors` in turn, each over `view` (which they extend), as encoded bytes.
pub(crate) fn chain(
    view: &mut View,
    authors: &[&SecretKey],
    n: usize,
    mut ops: impl FnMut(usize) -> Vec<Op>,
) -> Vec<Vec<u8>> {
    (0..n).map(|i| view.sign(authors[i % authors.len()], ops(i)).encode()).collect()
}

/// What a driver saw while draining a node's events.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Drained {
    pub(crate) accepted: usize,
    pub(crate) rejected: usize,
    pub(crate) bad_messages: usize,
    pub(crate) evidence: usize,
}

impl Drained {
    pub(crate) fn add(&mut self, other: Self) {
        self.accepted += other.accepted;
        self.rejected += other.rejected;
        self.bad_messages += other.bad_messages;
        self.evidence += other.evidence;
    }
}

/// Drains `poll_event` as a driver would (which would persist accepted events).
pub(crate) fn drain_events(node: &mut Node) -> Drained {
    let mut out = Drained::default();
    while let Some(event) = node.poll_event() {
        match event {
            NodeEvent::Accepted { .. } => out.accepted += 1,
            NodeEvent::Rejected { .. } => out.rejected += 1,
            NodeEvent::BadMessage { .. } => out.bad_messages += 1,
            NodeEvent::Evidence(_) => out.evidence += 1,
            NodeEvent::PeerRefused(_) | NodeEvent::Changed(_) | NodeEvent::Addresses { .. } => {}
        }
    }
    out
}

/// Encodes events into `Events` messages of [`CHUNK_EVENTS`] events each.
pub(crate) fn events_messages(events: &[Vec<u8>]) -> Vec<Vec<u8>> {
    events.chunks(CHUNK_EVENTS).map(|c| encode_message(&Message::Events { events: c.to_vec() })).collect()
}

/// Feeds `events` (in a causal order) to `node` from `loader`, which is connected only for
/// the load, so nothing is pushed to other peers. Returns what was drained.
pub(crate) fn load(node: &mut Node, loader: PublicKey, events: &[Vec<u8>], now_ms: u64) -> Drained {
    let mut seen = Drained::default();
    assert!(node.handle_connected(loader, now_ms), "the loader is a member");
    for message in events_messages(events) {
        node.handle_message(loader, &message, now_ms);
        while node.poll_transmit().is_some() {}
        seen.add(drain_events(node));
    }
    node.handle_disconnected(&loader);
    seen
}

/// A node config for the sync scenarios: sessions start only when the bench calls
/// `handle_timeout` at or after `sync_interval_ms` past the previous one.
pub(crate) fn sync_config(sync_interval_ms: u64) -> NodeConfig {
    let mut config = NodeConfig { sync_interval_ms, ..NodeConfig::default() };
    // Verification threads affect only speed; use both cores for loading.
    config.adapter.verify_threads = 2;
    config
}
