//! A replica, sans-I/O: the adapter, the document and the reconciliation state machine of
//! every peer, driven by its caller in the style of quinn-proto.
//!
//! Call order, for the daemon and the simulator alike:
//! 1. inputs: [`Node::handle_connected`], [`Node::handle_disconnected`],
//!    [`Node::handle_message`], [`Node::handle_timeout`], and local writes with
//!    [`Node::prepare_writes`] then (once stored) [`Node::commit_writes`];
//! 2. outputs, until each returns `None`: [`Node::poll_transmit`] (bytes for a peer),
//!    [`Node::poll_event`] (accepted events, rejections, evidence, document changes);
//! 3. [`Node::poll_timeout`]: when to call `handle_timeout` next.
//!
//! Time is a number of milliseconds passed in by the caller; nothing here reads a clock.
//!
//! # Reconciliation
//!
//! An author's events form a chain through `seq`, and an honest node's set is causally closed,
//! so the set is described exactly by each author's tips. A session:
//! - `Summary{digest}` → `InSync` when the digests (of tips and evidence) are equal: one round
//!   trip, constant size. A node whose set changed since its last in-sync with that peer skips
//!   this step and opens with its tips.
//! - `Tips{reply: true}` → the receiver sends the events the sender lacks (exact for every
//!   author whose sender tips it holds), then its own `Tips{reply: false}`; the first node then
//!   sends what the second lacks. Both sides differing costs 1.5 round trips.
//! - A tip still unknown after that marks a fork (or a peer that is ahead): the node searches
//!   the peer's chain by seq with `ForkProbe`/`ForkIds` (at most 16 seqs a round, so the
//!   number of rounds is logarithmic in the chain length), pulls the missing part with
//!   `WantChain`, and sends the part of its own chain the peer lacks.
//! - `Want{ids}` asks for events the causal buffer misses; evidence travels in `Tips` and is
//!   pushed at once with `Evidence`.
//!
//! Every accepted event is pushed at once to every connected peer but its source. A peer's
//! outbox is bounded; when a push does not fit, the peer is marked for reconciliation instead.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use cairn_crypto::keys::SIGNATURE_BYTES;
use cairn_crypto::{Domain, Hasher, PublicKey, SecretKey};

use crate::adapter::{Adapter, AdapterConfig, Ingested};
use crate::buffer::PeerId;
use crate::codec::{self, CodecError};
use crate::document::{Change, Document};
use crate::event::{Event, EventId, Op};
use crate::evidence::Evidence;
use crate::genesis::{Genesis, MemberIdx};
use crate::limits::{
    DEPS_MAX, EVENT_BYTES_MAX, EVIDENCE_PER_MESSAGE_MAX, FORK_PROBE_SEQS_MAX, HEADER_BYTES_MAX,
    KEY_BYTES_MAX, MESSAGE_BYTES_MAX, OPS_MAX, TIPS_PER_MESSAGE_MAX, VALUE_BYTES_MAX, WANT_IDS_MAX,
};
use crate::message::{Message, Tip};
use crate::validate::Reject;
use crate::verified::Verified;

/// Seqs asked per fork-search round: each round narrows the unknown range about 32-fold.
pub const FORK_PROBE_SEQS_PER_ROUND: usize = 32;
const _: () = assert!(FORK_PROBE_SEQS_PER_ROUND <= FORK_PROBE_SEQS_MAX);

/// Most missing ids asked of every peer at each want interval; a larger gap is left to
/// reconciliation, which fills it in a bounded number of round trips.
pub const WANT_PERIODIC_IDS_MAX: usize = 256;
const _: () = assert!(WANT_PERIODIC_IDS_MAX <= WANT_IDS_MAX);

/// Target size of one `Events` message built from queued ids. Small enough to interleave with
/// other traffic, large enough that the 12 bytes of message overhead are negligible.
pub const EVENTS_CHUNK_BYTES: usize = 256 * 1024;
const _: () = assert!(EVENTS_CHUNK_BYTES + EVENT_BYTES_MAX + 64 <= MESSAGE_BYTES_MAX);

/// Node settings of the replica. They affect liveness only, never validity.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The adapter's settings.
    pub adapter: AdapterConfig,
    /// Milliseconds between anti-entropy sessions with each peer.
    pub sync_interval_ms: u64,
    /// Milliseconds after which an unanswered session or fork search is abandoned.
    pub session_timeout_ms: u64,
    /// Milliseconds between requests for ids the causal buffer misses.
    pub want_interval_ms: u64,
    /// Most event ids queued for one peer (pushes and sync answers); 32 bytes each.
    pub peer_queue_ids_max: usize,
    /// Most control messages queued for one peer.
    pub peer_queue_messages_max: usize,
    /// Events per second one peer may send (a token bucket); the excess is dropped unread and
    /// fetched again by reconciliation from honest peers.
    pub peer_events_per_sec: u64,
    /// The bucket's size: the burst one peer may send at once.
    pub peer_events_burst: u64,
    /// Most tips accepted from one peer in one session.
    pub peer_tips_max: usize,
    /// Fork searches one peer may have open at once.
    pub fork_searches_max: usize,
    /// Own-seq safety: when non-zero, this node has no history of its own key and must not
    /// sign until this many peers have sent their tips and it holds every own event they
    /// reported. 0 when the node's store holds its own events, or for a brand-new cluster.
    pub own_seq_peers_needed: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            adapter: AdapterConfig::default(),
            sync_interval_ms: 1_000,
            session_timeout_ms: 10_000,
            want_interval_ms: 500,
            peer_queue_ids_max: 262_144,
            peer_queue_messages_max: 1_024,
            peer_events_per_sec: 100_000,
            peer_events_burst: 200_000,
            peer_tips_max: 65_536,
            fork_searches_max: 64,
            own_seq_peers_needed: 0,
        }
    }
}

/// Something the driver should know about; drained with [`Node::poll_event`] after each input.
#[derive(Clone, Debug)]
pub enum NodeEvent {
    /// An event was accepted (persist it; it is already applied to the document).
    Accepted {
        /// The event.
        event: Verified,
        /// The peer that delivered it, `None` for a local write.
        from: Option<PeerId>,
    },
    /// A peer sent an invalid event.
    Rejected {
        /// The peer.
        peer: PeerId,
        /// The event's id, if it decoded that far.
        id: Option<EventId>,
        /// Why.
        reason: Reject,
    },
    /// The evidence held for an author is new (or lower than before): persist and show it.
    Evidence(Box<Evidence>),
    /// A peer sent a message that breaks a rule: it does not decode, it holds too many tips or
    /// a tip of a non-member, or its evidence does not verify.
    BadMessage {
        /// The peer.
        peer: PeerId,
        /// Which rule, by name: for metrics and for logging once per peer and rule.
        misbehaviour: Misbehaviour,
        /// The details, for the log line.
        detail: String,
    },
    /// A peer is now a proven equivocator: drop its connection and refuse new ones.
    PeerRefused(PeerId),
    /// Keys whose visible document state changed.
    Changed(Vec<Change>),
}

/// What a peer's message did wrong: one name per rule, like [`Reject`] for events. A node
/// reports each with [`NodeEvent::BadMessage`]; the daemon counts them by [`Misbehaviour::name`]
/// and logs each once per peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Misbehaviour {
    /// The message is over `MESSAGE_BYTES_MAX`.
    Oversize,
    /// The message ends in the middle.
    Truncated,
    /// A length or count prefix is over its limit.
    LengthOverLimit,
    /// An unknown message or op tag.
    UnknownTag,
    /// A field holds a value its type does not allow.
    InvalidValue,
    /// Bytes follow the message.
    TrailingBytes,
    /// The message is not in its canonical encoding.
    NonCanonical,
    /// A `Tips` sequence (`more` set) holds more tips than `peer_tips_max`.
    TooManyTips,
    /// A tip names an author that is not a member.
    TipOfNonMember,
    /// Evidence that does not verify (see `EvidenceError`).
    BadEvidence,
}

impl Misbehaviour {
    /// Every misbehaviour, in the order of the table in `docs/PROTOCOL.md`.
    pub const ALL: [Self; 10] = [
        Self::Oversize,
        Self::Truncated,
        Self::LengthOverLimit,
        Self::UnknownTag,
        Self::InvalidValue,
        Self::TrailingBytes,
        Self::NonCanonical,
        Self::TooManyTips,
        Self::TipOfNonMember,
        Self::BadEvidence,
    ];

    /// The misbehaviour of a message that did not decode: the decoding rule it broke.
    pub const fn undecodable(error: &CodecError) -> Self {
        match error {
            CodecError::Oversize { .. } => Self::Oversize,
            CodecError::Truncated => Self::Truncated,
            CodecError::LengthOverLimit(_) => Self::LengthOverLimit,
            CodecError::UnknownTag(_) => Self::UnknownTag,
            CodecError::InvalidValue(_) => Self::InvalidValue,
            CodecError::TrailingBytes(_) => Self::TrailingBytes,
            CodecError::NonCanonical => Self::NonCanonical,
        }
    }

    /// A stable snake_case name, for metrics and logs; a decoding rule's name is the codec's
    /// ([`CodecError::name`]).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Oversize => "oversize",
            Self::Truncated => "truncated",
            Self::LengthOverLimit => "length_over_limit",
            Self::UnknownTag => "unknown_tag",
            Self::InvalidValue => "invalid_value",
            Self::TrailingBytes => "trailing_bytes",
            Self::NonCanonical => "non_canonical",
            Self::TooManyTips => "too_many_tips",
            Self::TipOfNonMember => "tip_of_non_member",
            Self::BadEvidence => "bad_evidence",
        }
    }
}

const _: () = assert!(Misbehaviour::ALL.len() == CodecError::NAMES.len() + 3);

/// Why a local write failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The signing key is not a member of the genesis.
    #[error("this node's key is not a member of the cluster")]
    NotMember,
    /// The node's own key is a proven equivocator.
    #[error("this node's key has equivocated; it must not sign anything more")]
    Equivocator,
    /// This node has no history of its own key and has not yet learned its latest seq from
    /// enough peers: signing now could reuse a seq and make it an equivocator.
    #[error(
        "this node has no history of its own key and is learning its latest seq from peers \
         ({heard} of {needed} heard, own seq {held} of {reported} held); writes are refused until \
         then, so that it never signs a seq it already used. Connect it to its peers; \
         `new_cluster = true` is only for the first start of a cluster no member has written to"
    )]
    OwnSeqUnknown {
        /// Peers whose report of this node's own tips is confirmed (every tip held).
        heard: usize,
        /// Peers needed.
        needed: usize,
        /// Highest own seq held.
        held: u64,
        /// Highest own seq any peer reported (confirmed or not).
        reported: u64,
    },
    /// The ops do not form a valid event.
    #[error("the write is not a valid event: {0}")]
    Invalid(Reject),
}

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
}

enum Outgoing {
    Message(Vec<u8>),
    Events(VecDeque<EventId>),
}

struct ForkSearch {
    author: MemberIdx,
    /// Highest seq whose ancestor of the tip we hold (0: none yet).
    lo: u64,
    /// The tip's ancestor at `lo`, which we hold.
    lo_id: Option<EventId>,
    /// Lowest seq known not to be held (starts at the tip's seq).
    hi: u64,
    rounds: u32,
    since_ms: u64,
}

/// An `Events` message sent to a peer: its number on the connection, when, and its ids.
struct SentEvents {
    number: u64,
    at_ms: u64,
    ids: Vec<EventId>,
}

struct Peer {
    connected: bool,
    outbox: VecDeque<Outgoing>,
    n_queued_ids: usize,
    /// The ids in `outbox`, so an event queued twice (two sessions computing the same lack,
    /// or a push and an answer) is sent once.
    queued_ids: BTreeSet<EventId>,
    n_queued_messages: usize,
    next_sync_ms: u64,
    session_since_ms: Option<u64>,
    last_in_sync: Option<[u8; 32]>,
    incoming_tips: Vec<Tip>,
    /// The peer's tips from its last complete `Tips`, by author, for fork searches.
    peer_tips: BTreeMap<MemberIdx, Vec<Tip>>,
    /// This node's own tips as the peer reported them, `(seq, id)`, once it sent its tips or
    /// confirmed that the sets are equal (then: none beyond what this node holds).
    own_tips_reported: Option<Vec<(u64, EventId)>>,
    searches: BTreeMap<EventId, ForkSearch>,
    /// Messages received from the peer on this connection (sent back as `Tips.heard`).
    heard: u64,
    /// Messages sent to the peer on this connection.
    sent: u64,
    /// `Events` messages sent that the peer may not have read yet, oldest first.
    in_flight: VecDeque<SentEvents>,
    /// Ids in `in_flight`, at most `peer_queue_ids_max`.
    n_in_flight_ids: usize,
    milli_tokens: u64,
    tokens_at_ms: u64,
    stats: PeerStats,
}

impl Peer {
    fn new(now_ms: u64, burst: u64) -> Self {
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
            searches: BTreeMap::new(),
            heard: 0,
            sent: 0,
            in_flight: VecDeque::new(),
            n_in_flight_ids: 0,
            milli_tokens: burst.saturating_mul(1000),
            tokens_at_ms: now_ms,
            stats: PeerStats::default(),
        }
    }
}

/// Own events signed by [`Node::prepare_writes`] and not yet accepted: the caller stores
/// [`Prepared::events`], then hands this back to [`Node::commit_writes`] (or
/// [`Node::abort_writes`]). Only `prepare_writes` makes one, so no other bytes can take the
/// commit's path into the document, which skips the signature check. Neither a forged value
/// nor a list of events is accepted in its place:
///
/// ```compile_fail,E0451
/// # use cairn_protocol::node::Prepared;
/// let forged = Prepared { events: Vec::new(), up_to: 1 };
/// ```
///
/// ```compile_fail,E0308
/// # fn f(node: &mut cairn_protocol::Node, events: Vec<cairn_protocol::Event>) {
/// node.commit_writes(events, 0);
/// # }
/// ```
///
/// And there is no shortcut that signs and accepts in one step, past the caller's store:
///
/// ```compile_fail,E0599
/// # fn f(node: &mut cairn_protocol::Node, key: &cairn_crypto::SecretKey, ops: Vec<cairn_protocol::Op>) {
/// node.write(key, ops, 0);
/// # }
/// ```
#[derive(Debug)]
#[must_use = "prepared events must be committed (after they are stored) or aborted"]
pub struct Prepared {
    events: Vec<Event>,
    /// The last seq signed, which the node's `prepared_up_to` must still be.
    up_to: u64,
}

impl Prepared {
    /// The signed events, in seq order: what the caller must store before committing.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// How many events were signed.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event was signed (never the case for a non-empty list of writes).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// A replica. See the module docs for the call order.
pub struct Node {
    config: NodeConfig,
    adapter: Adapter,
    document: Document,
    me: Option<PublicKey>,
    peers: BTreeMap<PeerId, Peer>,
    refused: BTreeSet<PeerId>,
    events: VecDeque<NodeEvent>,
    digest_cache: Option<[u8; 32]>,
    next_want_ms: u64,
    transmit_cursor: Option<PeerId>,
    learning_own_seq: bool,
    /// The highest own seq handed out by `prepare_writes`.
    prepared_up_to: u64,
    /// `prepared_up_to` before the last `prepare_writes` whose events are not committed yet,
    /// for `abort_writes`.
    prepared_from: Option<u64>,
    /// The latest time any input carried (outputs have no clock of their own).
    now_ms: u64,
}

impl Node {
    /// A replica of the cluster `genesis`. `me` is this node's own key (never treated as a
    /// peer), or `None` for an observer.
    pub fn new(genesis: Genesis, me: Option<PublicKey>, config: NodeConfig) -> Self {
        let n_members = genesis.members().len();
        Self {
            adapter: Adapter::new(genesis, config.adapter.clone()),
            document: Document::new(n_members),
            learning_own_seq: config.own_seq_peers_needed > 0,
            prepared_up_to: 0,
            prepared_from: None,
            now_ms: 0,
            config,
            me,
            peers: BTreeMap::new(),
            refused: BTreeSet::new(),
            events: VecDeque::new(),
            digest_cache: None,
            next_want_ms: 0,
            transmit_cursor: None,
        }
    }

    // ---- getters ------------------------------------------------------------------------

    /// The adapter: accepted events, buffer, evidence.
    pub fn adapter(&self) -> &Adapter {
        &self.adapter
    }

    /// The CRDT document.
    pub fn document(&self) -> &Document {
        &self.document
    }

    /// The genesis.
    pub fn genesis(&self) -> &Genesis {
        self.adapter.genesis()
    }

    /// Counters of `peer`.
    pub fn peer_stats(&self, peer: &PeerId) -> Option<&PeerStats> {
        self.peers.get(peer).map(|p| &p.stats)
    }

    /// Whether `peer` is connected.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.connected)
    }

    /// Whether connections from `peer` must be refused (a proven equivocator or a non-member).
    pub fn is_refused(&self, peer: &PeerId) -> bool {
        self.refused.contains(peer) || self.genesis().member_idx(peer).is_none() || Some(*peer) == self.me
    }

    /// The reconciliation digest: `SHA-256("cairn/sync-digest/v1" ‖ tips ‖ evidence)`, where
    /// tips are `author ‖ seq ‖ id` sorted by author then id, and evidence is each held
    /// evidence's canonical encoding in author order, each list with a u64 count first.
    pub fn sync_digest(&mut self) -> [u8; 32] {
        if let Some(digest) = self.digest_cache {
            return digest;
        }
        let tips = self.adapter.tips();
        let mut hasher = Hasher::new(Domain::SyncDigest);
        hasher.update(&(tips.len() as u64).to_le_bytes());
        for tip in &tips {
            hasher.update(&tip.author.0).update(&tip.seq.to_le_bytes()).update(&tip.id.0);
        }
        let evidence: Vec<&Evidence> = self.adapter.evidence().collect();
        hasher.update(&(evidence.len() as u64).to_le_bytes());
        for e in evidence {
            hasher.update(&e.encode());
        }
        let digest = hasher.finish();
        self.digest_cache = Some(digest);
        digest
    }

    /// Bytes and ids queued for `peer`.
    pub fn queued(&self, peer: &PeerId) -> (usize, usize) {
        self.peers.get(peer).map_or((0, 0), |p| (p.n_queued_messages, p.n_queued_ids))
    }

    // ---- inputs ---------------------------------------------------------------------------

    /// A connection to `peer` is up. Returns false (and does nothing) if `peer` is refused.
    pub fn handle_connected(&mut self, peer: PeerId, now_ms: u64) -> bool {
        self.now_ms = self.now_ms.max(now_ms);
        if self.is_refused(&peer) {
            return false;
        }
        let burst = self.config.peer_events_burst;
        let entry = self.peers.entry(peer).or_insert_with(|| Peer::new(now_ms, burst));
        let stats = std::mem::take(&mut entry.stats);
        // The digest at which both were last in sync describes the two event sets, not the
        // connection: kept, it lets the first session after a reconnection open with tips
        // when this node's set changed meanwhile (1.5 round trips), instead of a summary that
        // is bound to differ (2 round trips).
        let last_in_sync = entry.last_in_sync;
        *entry = Peer::new(now_ms, burst);
        entry.stats = stats;
        entry.last_in_sync = last_in_sync;
        true
    }

    /// The connection to `peer` is gone; what was queued for it is dropped.
    pub fn handle_disconnected(&mut self, peer: &PeerId) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.connected = false;
            p.outbox.clear();
            p.n_queued_ids = 0;
            p.queued_ids.clear();
            p.n_queued_messages = 0;
            p.searches.clear();
            p.incoming_tips.clear();
            p.session_since_ms = None;
        }
    }

    /// Why a write signed by `me` would be refused now, if it would: not a member, a proven
    /// equivocator, or own-seq safety (see [`Node::own_seq_pending`]). The same checks as
    /// [`Node::prepare_writes`], for status reports.
    pub fn write_refusal(&self, me: &PublicKey) -> Option<WriteError> {
        let Some(author) = self.genesis().member_idx(me) else {
            return Some(WriteError::NotMember);
        };
        if self.adapter.is_equivocator(author) {
            return Some(WriteError::Equivocator);
        }
        self.own_seq_pending()
    }

    /// Whether own-seq safety still holds writes back, and why: see
    /// [`NodeConfig::own_seq_peers_needed`].
    pub fn own_seq_pending(&self) -> Option<WriteError> {
        if !self.learning_own_seq {
            return None;
        }
        // A report counts once this node holds every own tip it names: a peer that lies about
        // a tip can only fail to count, never hold writes back for ever.
        let reports: Vec<&Vec<(u64, EventId)>> =
            self.peers.values().filter_map(|p| p.own_tips_reported.as_ref()).collect();
        let heard =
            reports.iter().filter(|tips| tips.iter().all(|(_, id)| self.adapter.is_accepted(id))).count();
        let reported = reports.iter().flat_map(|tips| tips.iter().map(|(seq, _)| *seq)).max().unwrap_or(0);
        let held =
            self.me.and_then(|me| self.genesis().member_idx(&me)).map_or(0, |m| self.adapter.max_seq(m));
        let needed = self.config.own_seq_peers_needed;
        if heard >= needed {
            return None;
        }
        Some(WriteError::OwnSeqUnknown { heard, needed, held, reported })
    }

    /// Loads events from this node's own store at start, in the order they were accepted. They
    /// are validated again like any input, signatures included (checked in parallel, see
    /// [`Adapter::restore`]): bytes read from a disk are data, and only validation makes a
    /// [`Verified`]. Returns the events that did not validate again: a non-empty list means
    /// the store was altered.
    pub fn restore(&mut self, events: Vec<Vec<u8>>) -> Vec<crate::adapter::Rejection> {
        let ingested = self.adapter.restore(events);
        let rejected = ingested.rejected.clone();
        self.absorb(None, ingested, 0);
        self.events.retain(|e| !matches!(e, NodeEvent::Accepted { .. }));
        rejected
    }

    /// Loads evidence from this node's own store at start; it is verified again.
    pub fn restore_evidence(&mut self, evidence: Evidence) -> Result<(), crate::evidence::EvidenceError> {
        if self.adapter.add_evidence(evidence.clone())? {
            self.digest_cache = None;
            self.refused.insert(evidence.author());
        }
        Ok(())
    }

    /// Checks that `ops` can form an event: non-empty, within the count and size limits, and
    /// small enough that the event fits in [`crate::limits::EVENT_BYTES_MAX`] whatever its deps.
    pub fn check_ops(ops: &[Op]) -> Result<(), WriteError> {
        let invalid = || Err(WriteError::Invalid(Reject::BadOp));
        if ops.is_empty() || ops.len() > OPS_MAX {
            return invalid();
        }
        for op in ops {
            let value_len = match op {
                Op::Put { value, .. } => value.len(),
                Op::Add { element, .. } | Op::Remove { element, .. } => element.len(),
                Op::Del { .. } | Op::Incr { .. } => 0,
            };
            if op.key().is_empty() || op.key().len() > KEY_BYTES_MAX || value_len > VALUE_BYTES_MAX {
                return invalid();
            }
        }
        if HEADER_BYTES_MAX + codec::encode_ops(ops).len() + SIGNATURE_BYTES > EVENT_BYTES_MAX {
            return Err(WriteError::Invalid(Reject::Oversize));
        }
        Ok(())
    }

    /// Packs checked writes, in order, into as few events as the limits allow: returns how many
    /// consecutive writes go into each event. Every write stays whole inside one event (so a
    /// batch stays atomic), and the ops of one event are applied in order, so writes packed
    /// together relate exactly as they would in consecutive events of this node's own chain
    /// (an earlier op of an event is in the causal past of a later one).
    ///
    /// Concatenate the ops of each group and pass the lists to [`Node::prepare_writes`]: one
    /// signature then serves many concurrent writes.
    pub fn pack_writes(writes: &[Vec<Op>]) -> Vec<usize> {
        // The op list's length prefix is counted once per event, not once per write.
        let prefix = codec::encode_ops(&[]).len();
        let bytes_max = EVENT_BYTES_MAX - HEADER_BYTES_MAX - SIGNATURE_BYTES - prefix;
        let mut groups = Vec::new();
        let (mut n, mut ops, mut bytes) = (0usize, 0usize, 0usize);
        for write in writes {
            let write_bytes = codec::encode_ops(write).len() - prefix;
            if n > 0 && (ops + write.len() > OPS_MAX || bytes + write_bytes > bytes_max) {
                groups.push(n);
                (n, ops, bytes) = (0, 0, 0);
            }
            n += 1;
            ops += write.len();
            bytes += write_bytes;
        }
        if n > 0 {
            groups.push(n);
        }
        groups
    }

    /// Signs one event per op list, chained by seq (each depends on the one before; the first
    /// on the current frontier), without accepting them: the caller stores
    /// [`Prepared::events`] durably, then hands the [`Prepared`] to [`Node::commit_writes`] (or,
    /// if they certainly were not stored, to [`Node::abort_writes`]). Nothing is sent to peers
    /// before that, so an own event can never exist elsewhere without being on this node's disk.
    ///
    /// # Panics
    ///
    /// If an op list fails [`Node::check_ops`]: callers check every request first.
    pub fn prepare_writes(&mut self, key: &SecretKey, writes: Vec<Vec<Op>>) -> Result<Prepared, WriteError> {
        let me = key.public();
        let author = self.genesis().member_idx(&me).ok_or(WriteError::NotMember)?;
        if self.adapter.is_equivocator(author) {
            return Err(WriteError::Equivocator);
        }
        if let Some(pending) = self.own_seq_pending() {
            return Err(pending);
        }
        self.learning_own_seq = false;
        let mut tips = self.adapter.tips();
        // The own predecessor must be a dep; the other tips fill the rest, newest first.
        tips.sort_by_key(|t| {
            let lamport = self.adapter.event(&t.id).map_or(0, Verified::lamport);
            (t.author != me, std::cmp::Reverse(lamport), t.id)
        });
        tips.truncate(DEPS_MAX);
        let mut lamport =
            tips.iter().filter_map(|t| self.adapter.event(&t.id)).map(Verified::lamport).max().unwrap_or(0);
        let mut seq = self.adapter.max_seq(author);
        // Preparing again before the last prepared events were committed would sign their
        // seqs twice: equivocation by this node itself.
        assert!(self.prepared_up_to <= seq, "prepare_writes called again before commit_writes");
        let mut deps: Vec<EventId> = tips.iter().map(|t| t.id).collect();
        let mut events = Vec::with_capacity(writes.len());
        for ops in writes {
            assert!(Self::check_ops(&ops).is_ok(), "prepare_writes takes checked ops");
            seq += 1;
            lamport += 1;
            let event = Event::sign(key, seq, lamport, std::mem::take(&mut deps), ops);
            deps = vec![event.id()];
            events.push(event);
        }
        self.prepared_from = Some(self.prepared_up_to);
        self.prepared_up_to = seq;
        Ok(Prepared { events, up_to: seq })
    }

    /// Undoes a [`Node::prepare_writes`] whose events were never committed: their seqs are
    /// handed out again by the next `prepare_writes`, which signs other events with them.
    ///
    /// Only for events that can never surface: never given to [`Node::commit_writes`] (which
    /// consumes them, so no peer has them) and certainly not stored (a store that cannot tell
    /// whether a failed commit landed must not call this). Otherwise the node would equivocate
    /// against itself.
    ///
    /// # Panics
    ///
    /// If `prepared` is not the last prepared set: the seqs would not be the ones handed out last.
    pub fn abort_writes(&mut self, prepared: Prepared) {
        assert_eq!(prepared.up_to, self.prepared_up_to, "abort_writes takes the last prepared writes");
        if let Some(from) = self.prepared_from.take() {
            self.prepared_up_to = from;
        }
    }

    /// Accepts own events made by [`Node::prepare_writes`] (and stored), in order, and pushes
    /// them to peers. Their signatures were made by this node a moment ago, so they are not
    /// checked again; every other rule is. This is the one way into the document that skips a
    /// signature check, and [`Prepared`] is what guards it: only `prepare_writes` makes one.
    ///
    /// # Panics
    ///
    /// If one of them is not accepted: they were built on this node's own state, so that would
    /// be a bug (or events prepared twice without committing the first ones).
    pub fn commit_writes(&mut self, prepared: Prepared, now_ms: u64) -> Vec<Verified> {
        self.now_ms = self.now_ms.max(now_ms);
        self.prepared_from = None;
        let events = prepared.events;
        let ids: Vec<EventId> = events.iter().map(Event::id).collect();
        let ingested = self.adapter.ingest_own(events.iter().map(Event::encode).collect());
        assert!(ingested.rejected.is_empty(), "own events must be valid: {:?}", ingested.rejected);
        self.absorb(None, ingested, now_ms);
        ids.iter().map(|id| self.adapter.event(id).cloned().expect("own events are accepted")).collect()
    }

    /// Bytes from `peer`: one reconciliation message.
    pub fn handle_message(&mut self, peer: PeerId, bytes: &[u8], now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if !p.connected || self.refused.contains(&peer) {
            return;
        }
        p.heard += 1;
        p.stats.messages_in += 1;
        p.stats.bytes_in += bytes.len() as u64;
        let message = match codec::decode_message(bytes) {
            Ok(message) => message,
            Err(error) => {
                self.bad_message(peer, Misbehaviour::undecodable(&error), &error);
                return;
            }
        };
        match message {
            Message::Summary { digest } => {
                if digest == self.sync_digest() {
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.last_in_sync = Some(digest);
                        p.own_tips_reported = Some(Vec::new());
                        p.stats.sessions_in_sync += 1;
                    }
                    self.send(peer, &Message::InSync { digest });
                } else {
                    self.send_tips(peer, true);
                }
            }
            Message::InSync { digest } => {
                let mine = self.sync_digest();
                if let Some(p) = self.peers.get_mut(&peer) {
                    if digest == mine {
                        // Equal sets: the peer holds no own event this node lacks.
                        p.last_in_sync = Some(digest);
                        p.own_tips_reported = Some(Vec::new());
                        p.stats.sessions_in_sync += 1;
                    }
                    p.session_since_ms = None;
                }
            }
            Message::Tips { reply, more, heard, tips, evidence } => {
                self.on_tips(peer, reply, more, heard, tips, evidence, now_ms);
            }
            Message::Events { events } => self.on_events(peer, events, now_ms),
            Message::Want { ids } => {
                let mut have: Vec<EventId> =
                    ids.into_iter().filter(|id| self.adapter.is_accepted(id)).collect();
                self.sort_causally(&mut have);
                self.queue_events(peer, have, false);
            }
            Message::ForkProbe { tip, seqs } => {
                if self.adapter.is_accepted(&tip) {
                    let entries = seqs
                        .iter()
                        .filter_map(|s| self.adapter.ancestor_at(&tip, *s).map(|id| (*s, id)))
                        .collect();
                    self.send(peer, &Message::ForkIds { tip, entries });
                }
            }
            Message::ForkIds { tip, entries } => self.on_fork_ids(peer, tip, entries, now_ms),
            Message::WantChain { tip, from_seq } => self.on_want_chain(peer, tip, from_seq),
            Message::Evidence { evidence } => self.on_evidence(peer, evidence, now_ms),
        }
    }

    /// Time passed: start due sessions, abandon stale ones, ask for missing ids.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let peers: Vec<PeerId> = self.peers.iter().filter(|(_, p)| p.connected).map(|(k, _)| *k).collect();
        let timeout = self.config.session_timeout_ms;
        for peer in &peers {
            let p = self.peers.get_mut(peer).expect("listed above");
            if p.session_since_ms.is_some_and(|since| now_ms >= since + timeout) {
                p.session_since_ms = None;
                p.incoming_tips.clear();
            }
            p.searches.retain(|_, s| now_ms < s.since_ms + timeout);
            if now_ms >= p.next_sync_ms {
                p.next_sync_ms = now_ms + self.config.sync_interval_ms;
                if p.session_since_ms.is_none() {
                    self.start_session(*peer, now_ms);
                }
            }
        }
        if now_ms >= self.next_want_ms {
            self.next_want_ms = now_ms + self.config.want_interval_ms;
            let missing = self.adapter.missing(WANT_PERIODIC_IDS_MAX);
            if !missing.is_empty() {
                for peer in &peers {
                    self.send(*peer, &Message::Want { ids: missing.clone() });
                }
            }
        }
    }

    // ---- outputs --------------------------------------------------------------------------

    /// The next message to send: `(peer, bytes)`. Peers take turns.
    pub fn poll_transmit(&mut self) -> Option<(PeerId, Vec<u8>)> {
        let order: Vec<PeerId> = match self.transmit_cursor {
            Some(cursor) => self
                .peers
                .range((std::ops::Bound::Excluded(cursor), std::ops::Bound::Unbounded))
                .chain(self.peers.range(..=cursor))
                .map(|(k, _)| *k)
                .collect(),
            None => self.peers.keys().copied().collect(),
        };
        for peer in order {
            if let Some(bytes) = self.next_outgoing(peer) {
                self.transmit_cursor = Some(peer);
                let p = self.peers.get_mut(&peer).expect("listed above");
                p.stats.messages_out += 1;
                p.stats.bytes_out += bytes.len() as u64;
                return Some((peer, bytes));
            }
        }
        None
    }

    /// The next message for `peer` alone, for a driver whose send queue to that peer has
    /// room while others are full.
    pub fn poll_transmit_to(&mut self, peer: &PeerId) -> Option<Vec<u8>> {
        let bytes = self.next_outgoing(*peer)?;
        let p = self.peers.get_mut(peer).expect("next_outgoing found the peer");
        p.stats.messages_out += 1;
        p.stats.bytes_out += bytes.len() as u64;
        Some(bytes)
    }

    /// Connected peers, in key order.
    pub fn connected_peers(&self) -> Vec<PeerId> {
        self.peers.iter().filter(|(_, p)| p.connected).map(|(k, _)| *k).collect()
    }

    /// The next thing that happened.
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// When [`Node::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut earliest = |t: u64| next = Some(next.map_or(t, |n| n.min(t)));
        for p in self.peers.values().filter(|p| p.connected) {
            earliest(p.next_sync_ms);
            if let Some(since) = p.session_since_ms {
                earliest(since + self.config.session_timeout_ms);
            }
            for search in p.searches.values() {
                earliest(search.since_ms + self.config.session_timeout_ms);
            }
        }
        if self.adapter.buffer_use().0 > 0 {
            earliest(self.next_want_ms);
        }
        next
    }

    // ---- internals ------------------------------------------------------------------------

    fn next_outgoing(&mut self, peer: PeerId) -> Option<Vec<u8>> {
        let p = self.peers.get_mut(&peer)?;
        if !p.connected {
            return None;
        }
        loop {
            match p.outbox.front_mut()? {
                Outgoing::Message(_) => {
                    let Some(Outgoing::Message(bytes)) = p.outbox.pop_front() else { unreachable!() };
                    p.n_queued_messages -= 1;
                    p.sent += 1;
                    return Some(bytes);
                }
                Outgoing::Events(ids) => {
                    let mut chunk = Vec::new();
                    let mut chunk_ids = Vec::new();
                    let mut size = 0usize;
                    while let Some(id) = ids.front() {
                        let Some(event) = self.adapter.event(id) else {
                            p.queued_ids.remove(id);
                            ids.pop_front();
                            p.n_queued_ids -= 1;
                            continue;
                        };
                        if !chunk.is_empty() && size + event.bytes().len() > EVENTS_CHUNK_BYTES {
                            break;
                        }
                        size += event.bytes().len() + 8;
                        chunk.push(event.bytes().to_vec());
                        chunk_ids.push(*id);
                        p.queued_ids.remove(id);
                        ids.pop_front();
                        p.n_queued_ids -= 1;
                    }
                    if ids.is_empty() {
                        p.outbox.pop_front();
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    p.stats.events_out += chunk.len() as u64;
                    p.sent += 1;
                    p.n_in_flight_ids += chunk_ids.len();
                    p.in_flight.push_back(SentEvents { number: p.sent, at_ms: self.now_ms, ids: chunk_ids });
                    while p.n_in_flight_ids > self.config.peer_queue_ids_max {
                        let oldest = p.in_flight.pop_front().expect("ids are counted in in_flight");
                        p.n_in_flight_ids -= oldest.ids.len();
                    }
                    return Some(codec::encode_message(&Message::Events { events: chunk }));
                }
            }
        }
    }

    fn send(&mut self, peer: PeerId, message: &Message) {
        let max = self.config.peer_queue_messages_max;
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if !p.connected {
            return;
        }
        if p.n_queued_messages >= max {
            p.next_sync_ms = 0;
            return;
        }
        p.n_queued_messages += 1;
        p.outbox.push_back(Outgoing::Message(codec::encode_message(message)));
    }

    /// Queues events for `peer`, in the given order. A push that does not fit is dropped and
    /// the peer marked for reconciliation; an answer that does not fit is cut at the bound
    /// (the peer asks again in its next session).
    fn queue_events(&mut self, peer: PeerId, ids: Vec<EventId>, push: bool) {
        let max = self.config.peer_queue_ids_max;
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if !p.connected || ids.is_empty() {
            return;
        }
        let ids: Vec<EventId> = ids.into_iter().filter(|id| !p.queued_ids.contains(id)).collect();
        if ids.is_empty() {
            return;
        }
        let room = max.saturating_sub(p.n_queued_ids);
        if push && ids.len() > room {
            p.next_sync_ms = 0;
            return;
        }
        let take = ids.len().min(room);
        if take < ids.len() {
            p.next_sync_ms = 0;
        }
        p.n_queued_ids += take;
        p.queued_ids.extend(ids.iter().take(take).copied());
        if let Some(Outgoing::Events(queue)) = p.outbox.back_mut() {
            queue.extend(ids.into_iter().take(take));
        } else {
            p.outbox.push_back(Outgoing::Events(ids.into_iter().take(take).collect()));
        }
    }

    fn start_session(&mut self, peer: PeerId, now_ms: u64) {
        let digest = self.sync_digest();
        let Some(p) = self.peers.get_mut(&peer) else { return };
        p.session_since_ms = Some(now_ms);
        if p.last_in_sync == Some(digest) || p.last_in_sync.is_none() {
            // Unchanged since the last in-sync (or never synced): the digest alone may do.
            self.send(peer, &Message::Summary { digest });
        } else {
            self.send_tips(peer, true);
        }
    }

    fn send_tips(&mut self, peer: PeerId, reply: bool) {
        let Some(heard) = self.peers.get(&peer).map(|p| p.heard) else { return };
        let tips = self.adapter.tips();
        let evidence: Vec<Evidence> =
            self.adapter.evidence().take(EVIDENCE_PER_MESSAGE_MAX).cloned().collect();
        let mut parts = tips.chunks(TIPS_PER_MESSAGE_MAX).peekable();
        if parts.peek().is_none() {
            self.send(peer, &Message::Tips { reply, more: false, heard, tips: Vec::new(), evidence });
            return;
        }
        while let Some(part) = parts.next() {
            let last = parts.peek().is_none();
            let evidence = if last { evidence.clone() } else { Vec::new() };
            self.send(peer, &Message::Tips { reply, more: !last, heard, tips: part.to_vec(), evidence });
        }
    }

    fn bad_message(&mut self, peer: PeerId, misbehaviour: Misbehaviour, detail: &dyn std::fmt::Display) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.stats.bad_messages += 1;
        }
        self.events.push_back(NodeEvent::BadMessage { peer, misbehaviour, detail: detail.to_string() });
    }

    #[allow(clippy::too_many_arguments)]
    fn on_tips(
        &mut self,
        peer: PeerId,
        reply: bool,
        more: bool,
        heard: u64,
        tips: Vec<Tip>,
        evidence: Vec<Evidence>,
        now_ms: u64,
    ) {
        let max = self.config.peer_tips_max;
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if p.incoming_tips.len() + tips.len() > max {
            p.incoming_tips.clear();
            self.bad_message(peer, Misbehaviour::TooManyTips, &format!("more than {max} tips"));
            return;
        }
        p.incoming_tips.extend(tips);
        if more {
            return;
        }
        let tips = std::mem::take(&mut p.incoming_tips);
        p.stats.sessions_tips += 1;
        self.on_evidence(peer, evidence, now_ms);

        let mut by_author: BTreeMap<MemberIdx, Vec<Tip>> = BTreeMap::new();
        for tip in tips {
            match self.genesis().member_idx(&tip.author) {
                Some(author) => by_author.entry(author).or_default().push(tip),
                None => {
                    self.bad_message(peer, Misbehaviour::TipOfNonMember, &"a tip of a non-member");
                    return;
                }
            }
        }
        // Events the peer lacks, for every author whose peer tips we all hold.
        let mut lacking = Vec::new();
        let n_members = self.genesis().members().len();
        let mut unknown = Vec::new();
        for author in 0..n_members {
            let theirs = by_author.get(&author).map_or(&[][..], Vec::as_slice);
            if theirs.iter().all(|t| self.adapter.is_accepted(&t.id)) {
                let covers: Vec<EventId> = theirs.iter().map(|t| t.id).collect();
                lacking.extend(self.not_covered(author, &covers));
            } else {
                unknown.extend(theirs.iter().filter(|t| !self.adapter.is_known(&t.id)).copied());
            }
        }
        // What this node sent after the peer wrote its tips is on its way, on the same ordered
        // stream; sending it again would only double the bytes. In-flight records expire
        // after the session timeout, so an event the peer dropped unread is sent again later.
        let timeout = self.config.session_timeout_ms;
        let now_ms = self.now_ms;
        let p = self.peers.get_mut(&peer).expect("checked above");
        while p
            .in_flight
            .front()
            .is_some_and(|m| m.number <= heard || now_ms >= m.at_ms.saturating_add(timeout))
        {
            let done = p.in_flight.pop_front().expect("checked by the loop condition");
            p.n_in_flight_ids -= done.ids.len();
        }
        if !p.in_flight.is_empty() {
            let on_the_way: BTreeSet<EventId> =
                p.in_flight.iter().flat_map(|m| m.ids.iter().copied()).collect();
            lacking.retain(|id| !on_the_way.contains(id));
        }
        self.sort_causally(&mut lacking);
        self.queue_events(peer, lacking, false);
        let own = self.me.and_then(|me| self.genesis().member_idx(&me));
        let own_reported =
            own.map(|m| by_author.get(&m).map_or(Vec::new(), |t| t.iter().map(|t| (t.seq, t.id)).collect()));
        let p = self.peers.get_mut(&peer).expect("checked above");
        p.peer_tips = by_author;
        if own_reported.is_some() {
            p.own_tips_reported = own_reported;
        }
        // Whoever opened the session, a complete Tips ends this node's part of it: with
        // `reply` it answers with its own tips, and the peer finishes the exchange.
        p.session_since_ms = None;
        if reply {
            self.send_tips(peer, false);
        } else {
            let digest = self.sync_digest();
            if unknown.is_empty() {
                let p = self.peers.get_mut(&peer).expect("checked above");
                p.last_in_sync = Some(digest);
            }
            for tip in unknown {
                self.start_fork_search(peer, tip, now_ms);
            }
        }
    }

    /// Our accepted events of `author` that are not an own-ancestor (or self) of any of
    /// `covers` (accepted ids of that author).
    fn not_covered(&self, author: MemberIdx, covers: &[EventId]) -> Vec<EventId> {
        let fork_seq = self.adapter.fork_seq(author).unwrap_or(u64::MAX);
        // Below the fork seq the chain is unique: a cover at seq s covers every seq <= s.
        let mut prefix = 0u64;
        let mut walked: BTreeSet<EventId> = BTreeSet::new();
        for cover in covers {
            let Some(mut current) = self.adapter.event(cover) else { continue };
            prefix = prefix.max(current.seq().min(fork_seq.saturating_sub(1)));
            while current.seq() >= fork_seq {
                if !walked.insert(current.id()) {
                    break;
                }
                match self.adapter.own_predecessor(current).and_then(|id| self.adapter.event(&id)) {
                    Some(pred) => current = pred,
                    None => break,
                }
            }
        }
        let mut out = Vec::new();
        let max_seq = self.adapter.max_seq(author);
        for seq in prefix + 1..=max_seq {
            for id in self.adapter.at_seq(author, seq) {
                if !walked.contains(id) {
                    out.push(*id);
                }
            }
        }
        out
    }

    fn sort_causally(&self, ids: &mut [EventId]) {
        ids.sort_by_key(|id| (self.adapter.event(id).map_or(0, Verified::lamport), *id));
    }

    fn on_events(&mut self, peer: PeerId, events: Vec<Vec<u8>>, now_ms: u64) {
        let per_sec = self.config.peer_events_per_sec;
        let burst = self.config.peer_events_burst;
        let Some(p) = self.peers.get_mut(&peer) else { return };
        // Token bucket in thousandths of an event, so no fraction of a refill is lost however
        // often messages come: refill for the time passed, then spend 1000 per event.
        let elapsed = now_ms.saturating_sub(p.tokens_at_ms);
        p.tokens_at_ms = now_ms;
        p.milli_tokens =
            p.milli_tokens.saturating_add(elapsed.saturating_mul(per_sec)).min(burst.saturating_mul(1000));
        let n = events.len() as u64;
        p.stats.events_in += n;
        let allowed = n.min(p.milli_tokens / 1000);
        p.milli_tokens -= allowed * 1000;
        let mut events = events;
        if allowed < n {
            p.stats.events_rate_limited += n - allowed;
            p.next_sync_ms = p.next_sync_ms.min(now_ms + self.config.sync_interval_ms);
            events.truncate(allowed as usize);
        }
        let ingested = self.adapter.ingest(peer, events);
        self.absorb(Some(peer), ingested, now_ms);
    }

    /// Applies what the adapter accepted, reports rejections and evidence, pushes and asks.
    fn absorb(&mut self, from: Option<PeerId>, ingested: Ingested, now_ms: u64) {
        let Ingested { accepted, rejected, missing, evidence, exclusions, .. } = ingested;
        for r in rejected {
            // Restored and local events have no peer to blame.
            if let Some(p) = self.peers.get_mut(&r.from) {
                *p.stats.rejected.entry(r.reason).or_default() += 1;
                self.events.push_back(NodeEvent::Rejected { peer: r.from, id: r.id, reason: r.reason });
            }
        }
        if let Some(peer) = from
            && !missing.is_empty()
        {
            for chunk in missing.chunks(WANT_IDS_MAX) {
                self.send(peer, &Message::Want { ids: chunk.to_vec() });
            }
            // A gap deeper than one event is filled faster by a session than by asking for
            // one generation of deps per round trip.
            if let Some(p) = self.peers.get_mut(&peer) {
                p.next_sync_ms = p.next_sync_ms.min(now_ms);
            }
        }
        if !accepted.is_empty() || !evidence.is_empty() {
            self.digest_cache = None;
        }
        let mut changes: BTreeSet<Change> = BTreeSet::new();
        for event in &accepted {
            changes.extend(self.document.apply(event));
        }
        for (author, seq) in exclusions {
            changes.extend(self.document.exclude(author, seq));
        }
        let ids: Vec<EventId> = accepted.iter().map(Verified::id).collect();
        for event in accepted {
            self.events.push_back(NodeEvent::Accepted { event, from });
        }
        if !changes.is_empty() {
            self.events.push_back(NodeEvent::Changed(changes.into_iter().collect()));
        }
        if !ids.is_empty() {
            let targets: Vec<PeerId> = self
                .peers
                .iter()
                .filter(|(k, p)| p.connected && Some(**k) != from)
                .map(|(k, _)| *k)
                .collect();
            for peer in targets {
                self.queue_events(peer, ids.clone(), true);
            }
        }
        for e in evidence {
            self.new_evidence(e, from, now_ms);
        }
    }

    /// Evidence became ours: report it, refuse the equivocator, push it to every peer.
    fn new_evidence(&mut self, evidence: Evidence, from: Option<PeerId>, _now_ms: u64) {
        self.digest_cache = None;
        let author = evidence.author();
        self.events.push_back(NodeEvent::Evidence(Box::new(evidence.clone())));
        if self.refused.insert(author) {
            self.events.push_back(NodeEvent::PeerRefused(author));
            self.handle_disconnected(&author);
        }
        let targets: Vec<PeerId> =
            self.peers.iter().filter(|(k, p)| p.connected && Some(**k) != from).map(|(k, _)| *k).collect();
        for peer in targets {
            self.send(peer, &Message::Evidence { evidence: vec![evidence.clone()] });
        }
    }

    fn on_evidence(&mut self, peer: PeerId, evidence: Vec<Evidence>, now_ms: u64) {
        for e in evidence {
            match self.adapter.add_evidence(e.clone()) {
                Err(error) => self.bad_message(peer, Misbehaviour::BadEvidence, &error),
                Ok(false) => {}
                Ok(true) => {
                    let (a, b) = e.ids();
                    let want: Vec<EventId> =
                        [a, b].into_iter().filter(|id| !self.adapter.is_known(id)).collect();
                    if !want.is_empty() {
                        self.send(peer, &Message::Want { ids: want });
                    }
                    self.new_evidence(e, Some(peer), now_ms);
                }
            }
        }
    }

    fn start_fork_search(&mut self, peer: PeerId, tip: Tip, now_ms: u64) {
        let max = self.config.fork_searches_max;
        let Some(author) = self.genesis().member_idx(&tip.author) else { return };
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if p.searches.contains_key(&tip.id) || p.searches.len() >= max || tip.seq == 0 {
            return;
        }
        p.searches.insert(
            tip.id,
            ForkSearch { author, lo: 0, lo_id: None, hi: tip.seq, rounds: 0, since_ms: now_ms },
        );
        self.probe(peer, tip.id);
    }

    /// Asks for the next round of seqs, or pulls the chain once the fork point is found.
    fn probe(&mut self, peer: PeerId, tip: EventId) {
        let Some(search) = self.peers.get(&peer).and_then(|p| p.searches.get(&tip)) else { return };
        let (lo, hi) = (search.lo, search.hi);
        let first_round = search.rounds == 0;
        if hi <= lo + 1 {
            self.finish_fork_search(peer, tip);
            return;
        }
        let mut seqs: BTreeSet<u64> = BTreeSet::new();
        let gap = hi - lo - 1;
        if gap as usize <= FORK_PROBE_SEQS_PER_ROUND {
            seqs.extend(lo + 1..hi);
        } else {
            if first_round {
                // A recent fork, or a peer just ahead, is found in the first round: a few
                // probes just below the tip, doubling the distance each time.
                let mut step = 1u64;
                while seqs.len() < FORK_PROBE_SEQS_PER_ROUND / 4 && step <= gap {
                    seqs.insert(hi - step);
                    step *= 2;
                }
            }
            let spread = (FORK_PROBE_SEQS_PER_ROUND - seqs.len()) as u64;
            for i in 1..=spread {
                // In u128: `gap` comes from a peer's tip and may be near u64::MAX.
                let offset = (u128::from(gap) * u128::from(i)) / u128::from(spread + 1);
                seqs.insert(lo + offset as u64 + 1);
            }
        }
        let seqs: Vec<u64> = seqs.into_iter().filter(|s| *s > lo && *s < hi).collect();
        self.send(peer, &Message::ForkProbe { tip, seqs });
    }

    fn on_fork_ids(&mut self, peer: PeerId, tip: EventId, entries: Vec<(u64, EventId)>, now_ms: u64) {
        let Some(p) = self.peers.get(&peer) else { return };
        let Some(search) = p.searches.get(&tip) else { return };
        let (mut lo, mut lo_id, mut hi) = (search.lo, search.lo_id, search.hi);
        for (seq, id) in &entries {
            if *seq <= lo || *seq >= hi {
                continue;
            }
            let ours = self.adapter.event(id);
            if ours.is_some_and(|e| e.seq() == *seq && e.author_idx() == search.author) {
                lo = *seq;
                lo_id = Some(*id);
            }
        }
        for (seq, id) in &entries {
            if *seq > lo && *seq < hi && !self.adapter.is_accepted(id) {
                hi = *seq;
            }
        }
        let progressed = (lo, hi) != (search.lo, search.hi);
        let p = self.peers.get_mut(&peer).expect("checked above");
        let search = p.searches.get_mut(&tip).expect("checked above");
        search.lo = lo;
        search.lo_id = lo_id;
        search.hi = hi;
        search.rounds += 1;
        search.since_ms = now_ms;
        if progressed || hi <= lo + 1 {
            self.probe(peer, tip);
        } else {
            // The peer answered nothing useful: give up; the next session starts over.
            p.searches.remove(&tip);
        }
    }

    /// The fork point of the peer's `tip` is `lo`: pull the peer's chain above it, and send
    /// the part of our chains of that author the peer lacks.
    fn finish_fork_search(&mut self, peer: PeerId, tip: EventId) {
        let Some(p) = self.peers.get_mut(&peer) else { return };
        let Some(search) = p.searches.remove(&tip) else { return };
        let author = search.author;
        let peer_tips = p.peer_tips.get(&author).cloned().unwrap_or_default();
        self.send(peer, &Message::WantChain { tip, from_seq: search.lo + 1 });
        // What the peer holds of this author: the chains of its tips we hold, and the chain
        // of the common ancestor found by this search.
        let mut covers: Vec<EventId> =
            peer_tips.iter().map(|t| t.id).filter(|id| self.adapter.is_accepted(id)).collect();
        covers.extend(search.lo_id);
        let mut lacking = self.not_covered(author, &covers);
        self.sort_causally(&mut lacking);
        self.queue_events(peer, lacking, false);
    }

    fn on_want_chain(&mut self, peer: PeerId, tip: EventId, from_seq: u64) {
        let Some(mut current) = self.adapter.event(&tip) else { return };
        let mut chain = Vec::new();
        let limit = self.config.peer_queue_ids_max;
        while current.seq() >= from_seq.max(1) && chain.len() < limit {
            chain.push(current.id());
            match self.adapter.own_predecessor(current).and_then(|id| self.adapter.event(&id)) {
                Some(pred) => current = pred,
                None => break,
            }
        }
        chain.reverse();
        self.queue_events(peer, chain, false);
    }
}

#[cfg(test)]
mod misbehaviour_tests {
    use super::*;

    #[test]
    fn every_misbehaviour_has_a_distinct_name_and_decoding_rules_share_the_codecs() {
        let names: BTreeSet<&str> = Misbehaviour::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(names.len(), Misbehaviour::ALL.len());
        let every_codec_error = [
            CodecError::Oversize { len: 2, max: 1 },
            CodecError::Truncated,
            CodecError::LengthOverLimit(String::new()),
            CodecError::UnknownTag(String::new()),
            CodecError::InvalidValue(String::new()),
            CodecError::TrailingBytes(1),
            CodecError::NonCanonical,
        ];
        assert_eq!(every_codec_error.each_ref().map(CodecError::name), CodecError::NAMES);
        for error in &every_codec_error {
            assert_eq!(Misbehaviour::undecodable(error).name(), error.name());
        }
    }
}
