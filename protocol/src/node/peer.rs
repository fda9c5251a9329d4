//! What a node keeps per peer: counters, the outbox, the session and fork-search state, the
//! record of events in flight, and the rate limit's token bucket.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::*;

/// Per-peer counters, for status and metrics.
#[derive(Clone, Debug, Default)]
pub struct PeerStats {
    /// Messages received.
    pub messages_in: u64,
    /// Messages sent.
    pub messages_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Events received (valid or not).
    pub events_in: u64,
    /// Events sent.
    pub events_out: u64,
    /// Events dropped unread by the rate limit.
    pub events_rate_limited: u64,
    /// Rejected events, by reason.
    pub rejected: BTreeMap<Reject, u64>,
    /// Messages that did not decode or evidence that did not verify.
    pub bad_messages: u64,
    /// Completed sessions that found the sets equal.
    pub sessions_in_sync: u64,
    /// Completed sessions that exchanged tips.
    pub sessions_tips: u64,
    /// Ids grafted from this peer (asked for after its announcement, when the event had not
    /// arrived in time another way).
    pub grafts_out: u64,
}

/// Session timeouts after which an unheard `Events` message's events may be sent again even
/// while the peer's `heard` still grows.
pub(super) const IN_FLIGHT_TIMEOUTS_MAX: u64 = 6;

pub(super) enum Outgoing {
    Message(Vec<u8>),
    Events(VecDeque<EventId>),
}

/// An `Events` message sent to a peer: its number on the connection, when, and its ids.
pub(super) struct SentEvents {
    pub(super) number: u64,
    pub(super) at_ms: u64,
    pub(super) ids: Vec<EventId>,
}

pub(super) struct Peer {
    pub(super) connected: bool,
    pub(super) outbox: VecDeque<Outgoing>,
    pub(super) n_queued_ids: usize,
    /// The ids in `outbox`, so an event queued twice (two sessions computing the same lack,
    /// or a push and an answer) is sent once.
    pub(super) queued_ids: BTreeSet<EventId>,
    pub(super) n_queued_messages: usize,
    pub(super) next_sync_ms: u64,
    pub(super) session_since_ms: Option<u64>,
    pub(super) last_in_sync: Option<[u8; 32]>,
    pub(super) incoming_tips: Vec<Tip>,
    /// The peer's tips from its last complete `Tips`, by author, for fork searches.
    pub(super) peer_tips: BTreeMap<MemberIdx, Vec<Tip>>,
    /// This node's own tips as the peer reported them, `(seq, id)`, once it sent its tips or
    /// confirmed that the sets are equal (then: none beyond what this node holds).
    pub(super) own_tips_reported: Option<Vec<(u64, EventId)>>,
    /// The highest seq of each author (by member index) the peer held at the end of its last
    /// session with this node: from its complete `Tips`, or this node's own when the session
    /// found both sets equal. `None` before the first session ends.
    pub(super) reported_max_seqs: Option<Vec<u64>>,
    pub(super) searches: BTreeMap<EventId, ForkSearch>,
    /// Messages received from the peer on this connection.
    pub(super) heard: u64,
    /// The numbers of the peer's `Events` messages begun and not finished (their events wait
    /// for their signatures, `Node::begin_message`), oldest first.
    pub(super) unheard: VecDeque<u64>,
    /// This connection's number among the node's connections, so that a batch finished after
    /// a reconnection is not taken for one of the new connection's.
    pub(super) connection: u64,
    /// Messages sent to the peer on this connection.
    pub(super) sent: u64,
    /// `Events` messages sent that the peer may not have read yet, oldest first.
    pub(super) in_flight: VecDeque<SentEvents>,
    /// Ids in `in_flight`, at most `peer_queue_ids_max`.
    pub(super) n_in_flight_ids: usize,
    /// The largest `heard` the peer reported on this connection, and when it last grew.
    pub(super) peer_heard: u64,
    pub(super) peer_heard_at_ms: u64,
    pub(super) milli_tokens: u64,
    pub(super) tokens_at_ms: u64,
    pub(super) stats: PeerStats,
    /// Accepted events go to this peer whole (`Events`), else as ids (`Have`); see
    /// [`super::gossip`].
    pub(super) eager: bool,
    /// Ids to announce to this peer at the next flush.
    pub(super) lazy: Vec<EventId>,
    /// Awaited ids this peer announced first.
    pub(super) n_awaited: usize,
}

impl Peer {
    /// What this node reports as `Tips.heard`: the messages handled whole, which are the first
    /// `heard` but for those whose events still wait for their signatures (the first of those
    /// and every later one count as unread).
    pub(super) fn heard_through(&self) -> u64 {
        self.unheard.front().map_or(self.heard, |first| first - 1)
    }

    /// Drops the in-flight records of `Events` messages the peer has read (numbered up to
    /// `heard`). A record the peer has not read is dropped once it is older than `timeout_ms`
    /// *and* the peer's `heard` has not advanced for as long (a peer that stopped reading gets
    /// its events again, while one that reads on, however far behind, is not sent again what
    /// is still on its way to it), or once it is [`IN_FLIGHT_TIMEOUTS_MAX`] timeouts old.
    pub(super) fn forget_in_flight(&mut self, heard: u64, now_ms: u64, timeout_ms: u64) {
        if heard > self.peer_heard {
            self.peer_heard = heard;
            self.peer_heard_at_ms = now_ms;
        }
        let stalled = now_ms >= self.peer_heard_at_ms.saturating_add(timeout_ms);
        while let Some(sent) = self.in_flight.front() {
            let age = now_ms.saturating_sub(sent.at_ms);
            // However the peer's `heard` grows, nothing waits longer than IN_FLIGHT_TIMEOUTS_MAX
            // timeouts: a count that drifted (frames dropped unread on a live connection, as
            // while a peer is muted) cannot hold events back for long.
            let expired =
                (stalled && age >= timeout_ms) || age >= timeout_ms.saturating_mul(IN_FLIGHT_TIMEOUTS_MAX);
            if sent.number > heard && !expired {
                break;
            }
            self.n_in_flight_ids -= sent.ids.len();
            self.in_flight.pop_front();
        }
    }

    /// Keeps only the ids of `lacking` not in a message still on its way to the peer: sent on
    /// the same ordered stream after the peer wrote its tips, they need not be sent again.
    pub(super) fn retain_not_in_flight(&self, lacking: &mut Vec<EventId>) {
        if self.in_flight.is_empty() {
            return;
        }
        let on_the_way: BTreeSet<EventId> =
            self.in_flight.iter().flat_map(|m| m.ids.iter().copied()).collect();
        lacking.retain(|id| !on_the_way.contains(id));
    }

    /// A complete `Tips` from the peer ended this node's part of a session: keeps the peer's
    /// tips (for fork searches), its report of this node's own tips, and the digest at which
    /// both sets are now known equal, if they are.
    pub(super) fn end_tips_session(
        &mut self,
        peer_tips: BTreeMap<MemberIdx, Vec<Tip>>,
        own_reported: Option<Vec<(u64, EventId)>>,
        in_sync: Option<[u8; 32]>,
    ) {
        let n = peer_tips.keys().next_back().map_or(0, |&last| last + 1);
        let mut max_seqs = vec![0u64; n];
        for (&author, tips) in &peer_tips {
            max_seqs[author] = tips.iter().map(|tip| tip.seq).max().unwrap_or(0);
        }
        self.reported_max_seqs = Some(max_seqs);
        self.peer_tips = peer_tips;
        if own_reported.is_some() {
            self.own_tips_reported = own_reported;
        }
        self.session_since_ms = None;
        if in_sync.is_some() {
            self.last_in_sync = in_sync;
        }
    }

    /// The rate limit: a token bucket in thousandths of an event, so no fraction of a refill is
    /// lost however often messages come. Refills for the time passed (`per_sec`, holding at
    /// most `burst` events), then spends 1000 per event; returns how many of `n` events may be
    /// handled.
    pub(super) fn take_events(&mut self, n: u64, now_ms: u64, per_sec: u64, burst: u64) -> u64 {
        let elapsed = now_ms.saturating_sub(self.tokens_at_ms);
        self.tokens_at_ms = now_ms;
        self.milli_tokens =
            self.milli_tokens.saturating_add(elapsed.saturating_mul(per_sec)).min(burst.saturating_mul(1000));
        let allowed = n.min(self.milli_tokens / 1000);
        self.milli_tokens -= allowed * 1000;
        allowed
    }

    pub(super) fn new(now_ms: u64, burst: u64) -> Self {
        Self {
            connected: true,
            outbox: VecDeque::new(),
            n_queued_ids: 0,
            queued_ids: BTreeSet::new(),
            n_queued_messages: 0,
            next_sync_ms: now_ms,
            session_since_ms: None,
            last_in_sync: None,
            incoming_tips: Vec::new(),
            peer_tips: BTreeMap::new(),
            own_tips_reported: None,
            reported_max_seqs: None,
            searches: BTreeMap::new(),
            heard: 0,
            unheard: VecDeque::new(),
            connection: 0,
            sent: 0,
            in_flight: VecDeque::new(),
            n_in_flight_ids: 0,
            peer_heard: 0,
            peer_heard_at_ms: now_ms,
            milli_tokens: burst.saturating_mul(1000),
            tokens_at_ms: now_ms,
            stats: PeerStats::default(),
            eager: true,
            lazy: Vec::new(),
            n_awaited: 0,
        }
    }
}
