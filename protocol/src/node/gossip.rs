//! Epidemic broadcast over the node's connections, Plumtree-style: accepted events go eagerly
//! (whole, in `Events`) to the *eager* peers and lazily (ids only, in `Have`) to the others.
//!
//! - Every new connection starts eager, so a full mesh of fresh connections pushes as before.
//! - A push that brings nothing new (every event already held) shows that the link is redundant:
//!   the node answers `Prune`, and both ends take each other as lazy. What stays eager is a
//!   spanning tree of the connections, along which each event travels once.
//! - A `Have` for an event the node lacks starts a timer ([`NodeConfig::graft_timeout_ms`]); if
//!   the event has not arrived when it fires, the node sends `Graft` to an announcer, which
//!   sends the events and makes the link eager again (both ends): the tree repairs itself where
//!   a peer failed, was slow or withheld. Each further timeout tries another announcer.
//! - Anti-entropy sessions still run with every connected peer: a withheld event comes back
//!   within one session even if every announcer lied.
//!
//! Nothing here is trusted for validity or membership: a peer's `Prune` only changes what this
//! node sends to that peer, a `Have` only what it asks for (bounded per peer, see
//! [`AWAITED_PER_PEER_MAX`]), and an address record is kept only when its member signed it.

use super::*;
use crate::addr::AddrRecord;
use crate::limits::ADDR_RECORDS_PER_MESSAGE_MAX;

/// Most announced ids one node waits for at once, over all peers.
pub const AWAITED_IDS_MAX: usize = 65_536;
/// Most announced ids one peer may have this node wait for: a peer announcing ids it never
/// sends costs at most this many entries and grafts.
pub const AWAITED_PER_PEER_MAX: usize = WANT_IDS_MAX;
/// Announcers remembered per awaited id: the ones a graft may be sent to.
pub const ANNOUNCERS_PER_ID_MAX: usize = 4;
/// Ids waiting to be announced to one peer; past it, new ones are not announced to it (its
/// next anti-entropy session covers them).
pub const LAZY_QUEUE_IDS_MAX: usize = 4 * WANT_IDS_MAX;
/// Most recently accepted ids remembered for [`Node::drop_recent`].
pub const RECENT_IDS_MAX: usize = 65_536;
/// Shortest time between two address records of one member taken by this node: a member that
/// re-signs its record in a loop cannot make the cluster verify and flood records faster.
pub const ADDR_RECORD_INTERVAL_MS: u64 = 10_000;

/// An announced event this node lacks.
pub(super) struct Awaited {
    /// When to graft (the next announcer) if the event is still missing.
    pub(super) deadline_ms: u64,
    /// Who announced it, in order; the first is charged for it.
    pub(super) announcers: Vec<PeerId>,
    /// Announcers grafted so far.
    pub(super) tried: usize,
}

/// A member's address record, as held.
pub(super) struct HeldAddr {
    pub(super) record: AddrRecord,
    pub(super) taken_ms: u64,
}

impl Node {
    /// Whether `peer` receives events eagerly (tests and status).
    pub fn is_eager(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.connected && p.eager)
    }

    /// Connected peers that receive events eagerly.
    pub fn eager_peers(&self) -> Vec<PeerId> {
        self.peers.iter().filter(|(_, p)| p.connected && p.eager).map(|(k, _)| *k).collect()
    }

    /// Sends `peer` those of `ids` this node accepted, each after its deps (a `Want` or a
    /// `Graft`).
    pub(super) fn send_accepted(&mut self, peer: PeerId, ids: Vec<EventId>) {
        let accepted = self.adapter.archive().contains_many(&ids);
        let mut have: Vec<EventId> =
            ids.into_iter().zip(accepted).filter(|(_, accepted)| *accepted).map(|(id, _)| id).collect();
        self.sort_causally(&mut have);
        self.queue_events(peer, have, false);
    }

    /// Sends accepted `ids` on: whole to eager peers, as ids to lazy ones; never back to `from`.
    pub(super) fn disseminate(&mut self, ids: &[EventId], from: Option<PeerId>) {
        let targets: Vec<(PeerId, bool)> = self
            .peers
            .iter()
            .filter(|(k, p)| p.connected && Some(**k) != from)
            .map(|(k, p)| (*k, p.eager))
            .collect();
        let mut late = false;
        // Only events pushed or announced to some peer are on their way anywhere: events loaded
        // while no other peer is connected are answered at once in later sessions. But once an
        // event is left out of answers, so is every event accepted after it within the
        // horizon, which may depend on it: what is sent stays causally closed.
        self.expire_recent();
        let remember = !targets.is_empty() || !self.recent.is_empty();
        for id in ids {
            late |= self.forget_awaited(id);
            if !remember {
                continue;
            }
            if self.recent.len() >= RECENT_IDS_MAX
                && let Some((_, old)) = self.recent.pop_front()
            {
                self.recent_ids.remove(&old);
            }
            self.recent.push_back((self.now_ms, *id));
            self.recent_ids.insert(*id);
        }
        // An announced event that came by a lazy link (a session's answer, a fork search) rather
        // than along the tree: the tree does not reach this node in time from there, so that
        // link joins it. This heals a tree split by prunes that crossed, even when the event
        // arrives before the graft timeout.
        if late
            && let Some(peer) = from
            && let Some(p) = self.peers.get_mut(&peer)
            && p.connected
            && !p.eager
        {
            p.eager = true;
            self.send(peer, &Message::Graft { ids: Vec::new() });
        }
        let mut announced = false;
        for (peer, eager) in targets {
            if eager {
                self.queue_events(peer, ids.to_vec(), true);
            } else {
                let p = self.peers.get_mut(&peer).expect("listed above");
                let room = LAZY_QUEUE_IDS_MAX.saturating_sub(p.lazy.len());
                p.lazy.extend(ids.iter().take(room).copied());
                announced = true;
            }
        }
        if announced && self.next_flush_ms.is_none() {
            self.next_flush_ms = Some(self.now_ms + self.config.have_interval_ms);
        }
    }

    /// Leaves out of a session's answer the events this node accepted less than
    /// `graft_timeout_ms` ago: they are on their way to the peer along the tree (or announced to
    /// it, and grafted if they do not come), and sending them again would arrive as duplicates
    /// that prune the tree's links. The peer's next session asks for any still missing. The
    /// events left out are all accepted after any kept, so what is sent stays causally closed.
    pub(super) fn drop_recent(&mut self, lacking: &mut Vec<EventId>) {
        self.expire_recent();
        if !self.recent_ids.is_empty() {
            lacking.retain(|id| !self.recent_ids.contains(id));
        }
    }

    /// Forgets the ids accepted `graft_timeout_ms` ago or earlier.
    fn expire_recent(&mut self) {
        let horizon = self.now_ms.saturating_sub(self.config.graft_timeout_ms);
        while let Some(&(at, id)) = self.recent.front() {
            if at >= horizon {
                break;
            }
            self.recent.pop_front();
            self.recent_ids.remove(&id);
        }
    }

    /// An `Events` message from `peer` brought nothing new: the link is redundant for pushes.
    /// The last eager link is never pruned: the duplicate may have come first by a session or a
    /// graft, and a node without an eager link would receive every event late.
    pub(super) fn prune(&mut self, peer: PeerId) {
        let last_eager = self.peers.values().filter(|p| p.connected && p.eager).nth(1).is_none();
        if !self.is_eager(&peer) || last_eager {
            return;
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.eager = false;
        }
        self.send(peer, &Message::Prune);
    }

    pub(super) fn on_prune(&mut self, peer: PeerId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.eager = false;
        }
        self.keep_an_eager_peer(Some(peer));
    }

    /// A node with connected peers keeps at least one eager: when the last one pruned it or
    /// left, it grafts another (with no ids: "push to me again"), `not` only if no other is
    /// connected.
    pub(super) fn keep_an_eager_peer(&mut self, not: Option<PeerId>) {
        let connected = self.connected_peers();
        if connected.is_empty() || connected.iter().any(|peer| self.is_eager(peer)) {
            return;
        }
        let Some(&peer) = connected.iter().find(|peer| Some(**peer) != not).or(connected.first()) else {
            return;
        };
        if let Some(p) = self.peers.get_mut(&peer) {
            p.eager = true;
        }
        self.send(peer, &Message::Graft { ids: Vec::new() });
    }

    pub(super) fn on_graft(&mut self, peer: PeerId, ids: Vec<EventId>) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.eager = true;
        }
        self.send_accepted(peer, ids);
    }

    pub(super) fn on_have(&mut self, peer: PeerId, ids: Vec<EventId>) {
        let deadline_ms = self.now_ms + self.config.graft_timeout_ms;
        let known = self.adapter.known_many(&ids);
        for (id, known) in ids.into_iter().zip(known) {
            if known {
                continue;
            }
            if let Some(awaited) = self.awaited.get_mut(&id) {
                if awaited.announcers.len() < ANNOUNCERS_PER_ID_MAX && !awaited.announcers.contains(&peer) {
                    awaited.announcers.push(peer);
                }
                continue;
            }
            let Some(p) = self.peers.get_mut(&peer) else { return };
            if p.n_awaited >= AWAITED_PER_PEER_MAX || self.awaited.len() >= AWAITED_IDS_MAX {
                continue;
            }
            p.n_awaited += 1;
            self.awaited.insert(id, Awaited { deadline_ms, announcers: vec![peer], tried: 0 });
            self.awaited_due.push_back((deadline_ms, id));
        }
    }

    /// Stops waiting for `id` (it arrived, or no announcer is left); whether it was awaited.
    fn forget_awaited(&mut self, id: &EventId) -> bool {
        let Some(awaited) = self.awaited.remove(id) else { return false };
        if let Some(p) = self.peers.get_mut(&awaited.announcers[0]) {
            p.n_awaited = p.n_awaited.saturating_sub(1);
        }
        self.pop_stale_due();
        true
    }

    /// Drops the stale entries at the front of `awaited_due`, so that its front is the earliest
    /// graft deadline.
    fn pop_stale_due(&mut self) {
        while let Some((deadline_ms, id)) = self.awaited_due.front()
            && self.awaited.get(id).is_none_or(|a| a.deadline_ms != *deadline_ms)
        {
            self.awaited_due.pop_front();
        }
    }

    /// Whether `id` was announced to this node and is awaited.
    pub(super) fn is_awaited(&self, id: &EventId) -> bool {
        self.awaited.contains_key(id)
    }

    /// Grafts what is still missing after its timeout, and announces what is queued.
    pub(super) fn gossip_timeout(&mut self, now_ms: u64) {
        if self.next_flush_ms.is_some_and(|at| now_ms >= at) {
            self.next_flush_ms = None;
            let lazy: Vec<PeerId> = self
                .peers
                .iter()
                .filter(|(_, p)| p.connected && !p.lazy.is_empty())
                .map(|(k, _)| *k)
                .collect();
            for peer in lazy {
                let p = self.peers.get_mut(&peer).expect("listed above");
                let ids = std::mem::take(&mut p.lazy);
                for chunk in ids.chunks(WANT_IDS_MAX) {
                    self.send(peer, &Message::Have { ids: chunk.to_vec() });
                }
            }
        }
        let mut due: Vec<EventId> = Vec::new();
        while let Some(&(deadline_ms, id)) = self.awaited_due.front()
            && now_ms >= deadline_ms
        {
            self.awaited_due.pop_front();
            if self.awaited.get(&id).is_some_and(|a| a.deadline_ms == deadline_ms) {
                due.push(id);
            }
        }
        if due.is_empty() {
            return;
        }
        let known = self.adapter.known_many(&due);
        let mut grafts: BTreeMap<PeerId, Vec<EventId>> = BTreeMap::new();
        for (id, known) in due.into_iter().zip(known) {
            if known {
                self.forget_awaited(&id);
                continue;
            }
            let awaited = self.awaited.get_mut(&id).expect("listed above");
            // The next announcer still connected; none left: anti-entropy takes over.
            let next = awaited.announcers[awaited.tried.min(awaited.announcers.len())..]
                .iter()
                .position(|peer| self.peers.get(peer).is_some_and(|p| p.connected));
            match next {
                Some(offset) => {
                    let peer = awaited.announcers[awaited.tried + offset];
                    awaited.tried += offset + 1;
                    awaited.deadline_ms = now_ms + self.config.graft_timeout_ms;
                    self.awaited_due.push_back((awaited.deadline_ms, id));
                    grafts.entry(peer).or_default().push(id);
                }
                None => {
                    self.forget_awaited(&id);
                }
            }
        }
        self.pop_stale_due();
        for (peer, mut ids) in grafts {
            // In id order, as the ids awaited are kept.
            ids.sort_unstable();
            if let Some(p) = self.peers.get_mut(&peer) {
                p.eager = true;
                p.stats.grafts_out += ids.len() as u64;
            }
            for chunk in ids.chunks(WANT_IDS_MAX) {
                self.send(peer, &Message::Graft { ids: chunk.to_vec() });
            }
        }
    }

    /// The earliest gossip deadline: the next announcement flush or graft.
    pub(super) fn gossip_deadline(&self) -> Option<u64> {
        let graft = self.awaited_due.front().map(|(deadline_ms, _)| *deadline_ms);
        match (self.next_flush_ms, graft) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- addresses ------------------------------------------------------------------------

    /// Publishes this node's own address record (signed by its key): kept, and sent to every
    /// connected peer now and to every peer that connects later.
    pub fn set_own_addr(&mut self, record: AddrRecord) {
        if record.verify(&self.adapter.genesis().cluster_id()).is_ok() {
            self.hold_addr(&record);
            self.relay_addrs(vec![record], None);
        }
    }

    /// Keeps `record` (verified) as its member's latest.
    fn hold_addr(&mut self, record: &AddrRecord) {
        self.addrs.insert(record.key, HeldAddr { record: record.clone(), taken_ms: self.now_ms });
    }

    /// Sends `records` to every connected peer but `except`.
    fn relay_addrs(&mut self, records: Vec<AddrRecord>, except: Option<PeerId>) {
        for peer in self.connected_peers() {
            if Some(peer) != except {
                self.send(peer, &Message::Addrs { records: records.clone() });
            }
        }
    }

    /// Sends every record held (of keys still in force) to a peer that just connected.
    pub(super) fn send_addr_book(&mut self, peer: PeerId) {
        let records: Vec<AddrRecord> = self
            .addrs
            .iter()
            .filter(|(key, _)| self.is_in_force(key) && **key != peer)
            .map(|(_, held)| held.record.clone())
            .collect();
        for chunk in records.chunks(ADDR_RECORDS_PER_MESSAGE_MAX) {
            self.send(peer, &Message::Addrs { records: chunk.to_vec() });
        }
    }

    pub(super) fn on_addrs(&mut self, peer: PeerId, records: Vec<AddrRecord>) {
        let cluster = self.adapter.genesis().cluster_id();
        let mut taken = Vec::new();
        for record in records {
            // A key not in force here may be in force at an honest sender whose view of the
            // membership is ahead (the add not here yet) or behind (the removal not there yet):
            // ignored, never held against the sender. Skipping it costs a lookup.
            if !self.is_in_force(&record.key) {
                continue;
            }
            if Some(record.key) == self.me {
                continue;
            }
            // A relayed record replaces a held one at most every ADDR_RECORD_INTERVAL_MS; one
            // from its own member at once (a member that moved tells each peer it dials).
            if let Some(held) = self.addrs.get(&record.key)
                && (record.seq <= held.record.seq
                    || (peer != record.key && self.now_ms < held.taken_ms + ADDR_RECORD_INTERVAL_MS))
            {
                continue;
            }
            match record.verify(&cluster) {
                Err(error) => self.bad_message(peer, Misbehaviour::BadAddress, &error),
                Ok(addrs) => {
                    self.events.push_back(NodeEvent::Addresses { key: record.key, addrs });
                    self.hold_addr(&record);
                    taken.push(record);
                }
            }
        }
        if !taken.is_empty() {
            self.relay_addrs(taken, Some(peer));
        }
    }
}
