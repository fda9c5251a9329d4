//! The causal buffer: signature-checked events whose deps have not all been accepted yet.
//!
//! It is bounded in bytes per peer and in total (node settings), deduplicated by id, and evicts
//! oldest first. When the total is over its bound, the peer holding the most bytes loses its
//! oldest event, so a peer that floods orphans only ever evicts its own events and never delays
//! the events of honest peers.

use std::collections::{BTreeMap, BTreeSet};

use cairn_crypto::PublicKey;

use crate::event::EventId;
use crate::validate::Decoded;

/// Bytes charged per buffered event on top of twice its encoded size (the raw bytes and the
/// decoded copy): map entries, the waiting lists and the event's bookkeeping.
pub const BUFFER_ENTRY_OVERHEAD_BYTES: usize = 256;

/// Who delivered an event: a peer's key, or the node itself.
pub type PeerId = PublicKey;

#[derive(Debug)]
struct Entry {
    decoded: Decoded,
    from: PeerId,
    arrival: u64,
    n_missing: usize,
    cost: usize,
}

#[derive(Debug, Default)]
struct PeerUse {
    bytes: usize,
    fifo: BTreeSet<(u64, EventId)>,
}

/// The causal buffer. See the module docs.
#[derive(Debug)]
pub(crate) struct CausalBuffer {
    per_peer_max: usize,
    total_max: usize,
    entries: BTreeMap<EventId, Entry>,
    /// For each missing dep, the buffered events waiting for it.
    waiting_on: BTreeMap<EventId, Vec<EventId>>,
    by_peer: BTreeMap<PeerId, PeerUse>,
    by_author_seq: BTreeMap<(PublicKey, u64), Vec<EventId>>,
    total_bytes: usize,
    arrivals: u64,
    n_evicted: u64,
}

impl CausalBuffer {
    pub(crate) fn new(per_peer_max: usize, total_max: usize) -> Self {
        Self {
            per_peer_max,
            total_max,
            entries: BTreeMap::new(),
            waiting_on: BTreeMap::new(),
            by_peer: BTreeMap::new(),
            by_author_seq: BTreeMap::new(),
            total_bytes: 0,
            arrivals: 0,
            n_evicted: 0,
        }
    }

    pub(crate) fn contains(&self, id: &EventId) -> bool {
        self.entries.contains_key(id)
    }

    pub(crate) fn get(&self, id: &EventId) -> Option<&Decoded> {
        self.entries.get(id).map(|e| &e.decoded)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    pub(crate) fn peer_bytes(&self, peer: &PeerId) -> usize {
        self.by_peer.get(peer).map_or(0, |u| u.bytes)
    }

    pub(crate) fn n_evicted(&self) -> u64 {
        self.n_evicted
    }

    /// The bytes one peer's events may take.
    pub(crate) fn per_peer_max(&self) -> usize {
        self.per_peer_max
    }

    /// What buffering an event of `encoded_len` bytes is charged.
    pub(crate) fn cost(encoded_len: usize) -> usize {
        2 * encoded_len + BUFFER_ENTRY_OVERHEAD_BYTES
    }

    /// Ids of buffered events with the same author and seq.
    pub(crate) fn same_seq(&self, author: &PublicKey, seq: u64) -> &[EventId] {
        self.by_author_seq.get(&(*author, seq)).map_or(&[], Vec::as_slice)
    }

    /// Buffers `decoded`, which waits for `missing` (its deps not yet accepted, non-empty).
    /// Returns the ids it evicted to stay within bounds (possibly `decoded` itself, when one
    /// event is larger than a peer's whole share).
    pub(crate) fn insert(&mut self, decoded: Decoded, from: PeerId, missing: &[EventId]) -> Vec<EventId> {
        debug_assert!(!missing.is_empty());
        let id = decoded.id;
        if self.entries.contains_key(&id) {
            return Vec::new();
        }
        let cost = Self::cost(decoded.bytes.len());
        self.arrivals += 1;
        let arrival = self.arrivals;
        for dep in missing {
            self.waiting_on.entry(*dep).or_default().push(id);
        }
        let key = (decoded.event.header.author, decoded.event.header.seq);
        self.by_author_seq.entry(key).or_default().push(id);
        let usage = self.by_peer.entry(from).or_default();
        usage.bytes += cost;
        usage.fifo.insert((arrival, id));
        self.total_bytes += cost;
        self.entries.insert(id, Entry { decoded, from, arrival, n_missing: missing.len(), cost });
        self.enforce_bounds(from)
    }

    fn enforce_bounds(&mut self, from: PeerId) -> Vec<EventId> {
        let mut evicted = Vec::new();
        while self.peer_bytes(&from) > self.per_peer_max {
            let Some(id) = self.oldest_of(&from) else { break };
            self.remove(&id);
            evicted.push(id);
        }
        while self.total_bytes > self.total_max {
            // The peer with the most bytes pays; ties go to the smallest key, deterministically.
            let Some(peer) =
                self.by_peer.iter().max_by(|a, b| a.1.bytes.cmp(&b.1.bytes).then(b.0.cmp(a.0))).map(|p| *p.0)
            else {
                break;
            };
            let Some(id) = self.oldest_of(&peer) else { break };
            self.remove(&id);
            evicted.push(id);
        }
        self.n_evicted += evicted.len() as u64;
        evicted
    }

    fn oldest_of(&self, peer: &PeerId) -> Option<EventId> {
        self.by_peer.get(peer).and_then(|u| u.fifo.first()).map(|(_, id)| *id)
    }

    /// Takes an event out of the buffer (evicted, or ready to be accepted).
    pub(crate) fn remove(&mut self, id: &EventId) -> Option<Decoded> {
        self.remove_entry(id).map(|(decoded, _)| decoded)
    }

    /// Takes an event out of the buffer with the peer that delivered it.
    fn remove_entry(&mut self, id: &EventId) -> Option<(Decoded, PeerId)> {
        let entry = self.entries.remove(id)?;
        if let Some(usage) = self.by_peer.get_mut(&entry.from) {
            usage.bytes -= entry.cost;
            usage.fifo.remove(&(entry.arrival, *id));
            if usage.fifo.is_empty() {
                self.by_peer.remove(&entry.from);
            }
        }
        self.total_bytes -= entry.cost;
        let key = (entry.decoded.event.header.author, entry.decoded.event.header.seq);
        if let Some(ids) = self.by_author_seq.get_mut(&key) {
            ids.retain(|x| x != id);
            if ids.is_empty() {
                self.by_author_seq.remove(&key);
            }
        }
        for dep in &entry.decoded.event.header.deps {
            if let Some(waiters) = self.waiting_on.get_mut(dep) {
                waiters.retain(|x| x != id);
                if waiters.is_empty() {
                    self.waiting_on.remove(dep);
                }
            }
        }
        Some((entry.decoded, entry.from))
    }

    /// `id` was accepted: returns the buffered events that now have all their deps, removed
    /// from the buffer, in arrival order, each with the peer that delivered it.
    pub(crate) fn on_accepted(&mut self, id: &EventId) -> Vec<(Decoded, PeerId)> {
        let Some(waiters) = self.waiting_on.remove(id) else { return Vec::new() };
        let mut ready = Vec::new();
        for waiter in waiters {
            if let Some(entry) = self.entries.get_mut(&waiter) {
                entry.n_missing -= 1;
                if entry.n_missing == 0 {
                    ready.push((entry.arrival, waiter));
                }
            }
        }
        ready.sort_unstable();
        ready.into_iter().filter_map(|(_, id)| self.remove_entry(&id)).collect()
    }

    /// Deps that buffered events wait for and that are not themselves buffered: the ids to ask
    /// peers for. At most `limit`, in id order.
    pub(crate) fn missing(&self, limit: usize) -> Vec<EventId> {
        self.waiting_on.keys().filter(|id| !self.entries.contains_key(id)).take(limit).copied().collect()
    }
}
