//! A replica, sans-I/O: the adapter, the document and the reconciliation state machine of
//! every peer, driven by its caller in the style of quinn-proto.
//!
//! Call order, for the daemon and the simulator alike:
//! 1. inputs: [`Node::handle_connected`], [`Node::handle_disconnected`],
//!    [`Node::handle_message`] (or, to check an `Events` message's signatures on other threads,
//!    [`Node::begin_message`] then [`Node::finish_events`] with the verdicts),
//!    [`Node::handle_timeout`], and local writes with [`Node::prepare_writes`] then (once
//!    stored) [`Node::commit_writes`];
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
//! Every accepted event goes at once to every connected peer but its source: whole to the
//! eager ones, as its id in a later `Have` to the lazy ones (see [`gossip`]). A peer's outbox
//! is bounded; when a push does not fit, the peer is marked for reconciliation instead.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use cairn_crypto::{Domain, Hasher, PublicKey};

use crate::adapter::{Adapter, AdapterConfig, Ingested, PendingIngest, SignatureChecks, SignatureVerdicts};
use crate::archive::ArchiveHistory;
use crate::buffer::PeerId;
use crate::codec::{self};
use crate::document::{Applied, Change, Covered, Document, KeyKind};
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

mod fork;
mod gossip;
mod misbehaviour;
mod outbox;
mod peer;
mod session;
mod writes;

use fork::ForkSearch;
pub use gossip::{
    ADDR_RECORD_INTERVAL_MS, ANNOUNCERS_PER_ID_MAX, AWAITED_IDS_MAX, AWAITED_PER_PEER_MAX,
    LAZY_QUEUE_IDS_MAX, RECENT_IDS_MAX,
};
use gossip::{Awaited, HeldAddr};
pub use misbehaviour::Misbehaviour;
pub use peer::PeerStats;
use peer::{Outgoing, Peer, SentEvents};
pub use writes::{MemberRequest, Prepared, WriteError};

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
    /// Milliseconds an announced event (`Have`) may take to arrive another way before this
    /// node asks an announcer for it (`Graft`).
    pub graft_timeout_ms: u64,
    /// Milliseconds between flushes of the ids queued for lazy peers (`Have`): announcements
    /// of the events accepted meanwhile share one message per peer.
    pub have_interval_ms: u64,
    /// Events per second one peer may send (a token bucket); the excess is dropped unread and
    /// fetched again by reconciliation from honest peers.
    pub peer_events_per_sec: u64,
    /// The bucket's size: the burst one peer may send at once.
    pub peer_events_burst: u64,
    /// Most tips accepted from one peer in one session.
    pub peer_tips_max: usize,
    /// Fork searches one peer may have open at once.
    pub fork_searches_max: usize,
    /// Own-seq safety: when non-zero, this node's store may lack own events, and it must not
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
            graft_timeout_ms: 100,
            have_interval_ms: 50,
            peer_events_per_sec: 100_000,
            peer_events_burst: 200_000,
            peer_tips_max: 65_536,
            fork_searches_max: 64,
            own_seq_peers_needed: 0,
        }
    }
}

/// An `Events` message whose events wait for their signatures: from [`Node::begin_message`]
/// to [`Node::finish_events`].
#[derive(Debug)]
pub struct PendingEvents {
    peer: PeerId,
    /// The peer's connection it came on ([`Peer::connection`]).
    connection: u64,
    /// Its number among the messages of that connection.
    number: u64,
    ingest: PendingIngest,
}

impl PendingEvents {
    /// The share of its events that bring nothing and are known so before any signature is
    /// checked (duplicates, and orphans dropped for want of buffer room): 0.0 to 1.0.
    pub fn wasted_share(&self) -> f64 {
        let n = self.ingest.n_events();
        if n == 0 { 0.0 } else { self.ingest.n_wasted() as f64 / n as f64 }
    }

    /// The peer that sent it.
    pub fn peer(&self) -> PeerId {
        self.peer
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
    /// A member's signed address record was taken: it may be dialed at these addresses.
    Addresses {
        /// The member.
        key: PublicKey,
        /// Its addresses, from its latest record.
        addrs: Vec<std::net::SocketAddr>,
    },
}

/// What the document changed since it was last persisted, besides its dirty keys.
#[derive(Debug, Default)]
struct DocTracking {
    covered: Vec<Covered>,
    exclusions_changed: bool,
}

/// What to persist of the document, with the events it applied (see [`Node::track_document`]).
#[derive(Debug, Default)]
pub struct DocumentDelta {
    /// Each key whose persisted state changed: [`Document::encode_key`] (`None`: the key has no
    /// state left, delete it).
    pub keys: Vec<(KeyKind, Vec<u8>, Option<Vec<u8>>)>,
    /// [`Document::encode_exclusions`], when an exclusion changed it.
    pub exclusions: Option<Vec<u8>>,
    /// The new covered records, which a later exclusion reads back ([`Archive::covered`]).
    ///
    /// [`Archive::covered`]: crate::archive::Archive::covered
    pub covered: Vec<Covered>,
}

impl DocumentDelta {
    /// Nothing to persist.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.exclusions.is_none() && self.covered.is_empty()
    }
}

/// A replica. See the module docs for the call order.
pub struct Node {
    config: NodeConfig,
    adapter: Adapter,
    document: Document,
    /// What changed in the document since it was last persisted, while persistence is on
    /// ([`Node::track_document`]).
    doc_tracking: Option<DocTracking>,
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
    /// Announced events this node lacks, by id (see [`gossip`]).
    awaited: BTreeMap<EventId, Awaited>,
    /// The awaited ids by deadline, earliest first; an entry whose id is no longer awaited, or
    /// awaited with another deadline, is stale and skipped (never at the front).
    awaited_due: VecDeque<(u64, EventId)>,
    /// When the ids queued for lazy peers are announced, if any are.
    next_flush_ms: Option<u64>,
    /// Members' address records, by key.
    addrs: BTreeMap<PublicKey, HeldAddr>,
    /// Ids accepted lately, oldest first, with when (see [`Node::drop_recent`]).
    recent: VecDeque<(u64, EventId)>,
    /// The same ids, for lookups.
    recent_ids: BTreeSet<EventId>,
    /// Connections counted so far: each peer connection's number ([`Peer::connection`]).
    n_connections: u64,
}

impl Node {
    /// A replica of the cluster `genesis`. `me` is this node's own key (never treated as a
    /// peer), or `None` for an observer.
    pub fn new(genesis: Genesis, me: Option<PublicKey>, config: NodeConfig) -> Self {
        let adapter = Adapter::new(genesis, config.adapter.clone());
        Self {
            document: Document::new(adapter.roster().keys()),
            adapter,
            doc_tracking: None,
            learning_own_seq: config.own_seq_peers_needed > 0,
            prepared_up_to: 0,
            prepared_from: None,
            now_ms: 0,
            n_connections: 0,
            config,
            me,
            peers: BTreeMap::new(),
            refused: BTreeSet::new(),
            events: VecDeque::new(),
            digest_cache: None,
            next_want_ms: 0,
            transmit_cursor: None,
            awaited: BTreeMap::new(),
            awaited_due: VecDeque::new(),
            next_flush_ms: None,
            addrs: BTreeMap::new(),
            recent: VecDeque::new(),
            recent_ids: BTreeSet::new(),
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

    /// How far `peer` lagged at the end of its last session with this node: the events this
    /// node holds now past the highest seq of each author the peer held then (from its tips,
    /// or none when the session found both sets equal). An upper bound of what it lacks now,
    /// since pushes may have reached it since; `None` before a session with it ended.
    pub fn peer_lag(&self, peer: &PeerId) -> Option<u64> {
        let reported = self.peers.get(peer)?.reported_max_seqs.as_ref()?;
        let lag = self
            .adapter
            .chain_states()
            .iter()
            .enumerate()
            .map(|(author, chain)| chain.max_seq.saturating_sub(reported.get(author).copied().unwrap_or(0)))
            .sum();
        Some(lag)
    }

    /// This node's highest seq of each author, by member index.
    fn max_seqs(&self) -> Vec<u64> {
        self.adapter.chain_states().iter().map(|chain| chain.max_seq).collect()
    }

    /// Whether `peer` is connected.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.connected)
    }

    /// This node's own key, if it has one.
    pub fn me(&self) -> Option<PublicKey> {
        self.me
    }

    /// Takes `key` as this node's own key from now on: after this node's rotation to it
    /// ([`crate::MemberRequest::Rotate`]) was committed. The new key starts its own chain at seq 1,
    /// and nothing it signed before can exist (it is new), so no own seq needs learning.
    ///
    /// # Panics
    ///
    /// If writes prepared by the old key are not committed or aborted yet.
    pub fn rekey(&mut self, key: PublicKey) {
        assert!(self.prepared_from.is_none(), "rekey with prepared writes of the old key pending");
        self.me = Some(key);
        self.prepared_up_to = 0;
    }

    /// Whether connections from `peer` must be refused: a proven equivocator, a key that is
    /// not a member, or one a membership change took out of force (a removed seat's, or a key
    /// its seat rotated away from).
    pub fn is_refused(&self, peer: &PeerId) -> bool {
        self.refused.contains(peer)
            || self.adapter.roster().idx(peer).is_none()
            || Some(*peer) == self.me
            || !self.is_in_force(peer)
    }

    /// Whether `key` is a key of a seat in force that may still sign (`docs/PROTOCOL.md` §17):
    /// one this node accepts connections from.
    fn is_in_force(&self, key: &PublicKey) -> bool {
        self.adapter.membership().may_author(key, u64::MAX)
    }

    /// Refuses, and disconnects, the peers a membership change just took out of force.
    fn refuse_out_of_force(&mut self) {
        let out: Vec<PeerId> = self.peers.keys().filter(|peer| !self.is_in_force(peer)).copied().collect();
        for peer in out {
            if self.refused.insert(peer) {
                self.events.push_back(NodeEvent::PeerRefused(peer));
                self.handle_disconnected(&peer);
            }
        }
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
        self.n_connections += 1;
        // The digest at which both were last in sync describes the two event sets, not the
        // connection: kept, it lets the first session after a reconnection open with tips
        // when this node's set changed meanwhile (1.5 round trips), instead of a summary that
        // is bound to differ (2 round trips).
        let last_in_sync = entry.last_in_sync;
        // Ids the peer announced on an earlier connection stay awaited (and grafted, from it
        // too, if it is back): they stay charged to it, or reconnecting would lift its bound.
        let n_awaited = entry.n_awaited;
        *entry = Peer::new(now_ms, burst);
        entry.n_awaited = n_awaited;
        entry.connection = self.n_connections;
        entry.stats = stats;
        entry.last_in_sync = last_in_sync;
        self.send_addr_book(peer);
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
            p.lazy.clear();
            if p.eager {
                p.eager = false;
                self.keep_an_eager_peer(None);
            }
        }
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

    /// A replica over an archive that holds the events accepted before (the node's store on
    /// disk): the adapter resumes from `roster` and `chains` ([`crate::Adapter::roster`] and
    /// [`crate::Adapter::chain_states`] as stored) without reading the history. The document is `document`, the one persisted with the
    /// archive (see [`Node::track_document`]), with every known fork excluded (an exclusion it
    /// holds already costs nothing); or, for `None`, an empty document with every known fork
    /// excluded, to which the caller replays the whole archive. Then feed it the stored events
    /// the document has not applied with [`Node::replay_document`], in the order they were
    /// accepted, and the evidence with [`Node::restore_evidence`].
    ///
    /// # Panics
    ///
    /// If `document` indexes other authors than `roster`, or `chains` does not have an entry
    /// per key of `roster`.
    pub fn resume(
        genesis: Genesis,
        me: Option<PublicKey>,
        config: NodeConfig,
        archive: Box<dyn crate::archive::Archive>,
        roster: crate::roster::Roster,
        chains: Vec<crate::adapter::ChainState>,
        document: Option<Document>,
    ) -> Self {
        let mut node = Self::new(genesis.clone(), me, config.clone());
        let forks: Vec<(MemberIdx, u64)> = chains
            .iter()
            .enumerate()
            .filter_map(|(author, chain)| chain.fork_seq.map(|seq| (author, seq)))
            .collect();
        node.adapter = Adapter::resume(genesis, config.adapter, archive, roster, chains);
        node.document = Document::new(node.adapter.roster().keys());
        match document {
            Some(document) => {
                assert_eq!(
                    document.authors(),
                    node.adapter.roster().keys(),
                    "a document of this node's roster"
                );
                node.document = document;
                for (author, seq) in forks {
                    let history = ArchiveHistory {
                        archive: node.adapter.archive(),
                        chains: node.adapter.chain_states(),
                    };
                    let Applied { covered, .. } = node.document.exclude(author, seq, &history);
                    node.record_covered(covered, true);
                }
            }
            None => {
                // Nothing is applied yet: nothing to retract, and no history to read.
                for (author, seq) in forks {
                    node.document.exclude_unapplied(author, seq);
                }
            }
        }
        node
    }

    /// Rebuilds the membership the node's accepted events resolve to, after [`Node::resume`]:
    /// `events` are accepted events, in the order they were accepted, among them every one that
    /// carries membership ops (see [`Adapter::resume_membership`]). Peers out of force are
    /// refused from then on.
    pub fn resume_membership(&mut self, events: &[crate::archive::StoredEvent]) {
        self.adapter.resume_membership(events);
        self.refuse_out_of_force();
        self.exclude_unadmitted();
        self.digest_cache = None;
    }

    /// Applies events read back from this node's own archive to the document, in the order
    /// they were accepted (a causal order), without validating them again (see
    /// `Verified::from_stored`). Returns the ids of those that could not be read back (bytes
    /// that no longer decode or match their meta): a non-empty list means the store was altered.
    pub fn replay_document(&mut self, events: &[crate::archive::StoredEvent]) -> Vec<EventId> {
        let n_keys = self.adapter.roster().len();
        let mut bad = Vec::new();
        for stored in events {
            match Verified::from_stored(stored, n_keys, self.adapter.archive()) {
                Some(event) => {
                    let Applied { covered, .. } = self.document.apply(&event);
                    self.record_covered(covered, false);
                }
                None => bad.push(stored.id),
            }
        }
        // What the membership does not admit of them (a removal's cut the persisted document
        // did not know of yet: its exclusions go with the commit after the events).
        self.exclude_unadmitted();
        self.digest_cache = None;
        bad
    }

    /// Excludes from the document what the membership in force does not admit (rule M9) of
    /// the events accepted so far. Costs nothing when the membership never changed.
    fn exclude_unadmitted(&mut self) {
        for (author, from) in self.adapter.admission_exclusions() {
            let Applied { covered, .. } = self.document.exclude(
                author,
                from,
                &ArchiveHistory { archive: self.adapter.archive(), chains: self.adapter.chain_states() },
            );
            self.record_covered(covered, true);
        }
    }

    /// The register `key` with every sibling's value: those the document does not hold (more
    /// than `VALUE_INLINE_BYTES_MAX` bytes) are read from their put's event in the archive. A
    /// sibling whose event cannot be read back keeps `value_held` false (an archive on disk
    /// reports the read error itself).
    pub fn register(&self, key: &[u8]) -> crate::document::RegisterRead {
        let mut read = self.document.register(key);
        for sibling in read.siblings.iter_mut().filter(|sibling| !sibling.value_held) {
            let value = self.adapter.archive().event(&sibling.event_id).and_then(|stored| {
                match stored.event()?.ops.into_iter().nth(sibling.op_idx as usize)? {
                    Op::Put { key: op_key, value } | Op::PutSeen { key: op_key, value, .. }
                        if op_key == key =>
                    {
                        Some(value)
                    }
                    _ => None,
                }
            });
            if let Some(value) = value {
                sibling.value = value;
                sibling.value_held = true;
            }
        }
        read.visible = read.siblings.last().cloned();
        read
    }

    /// The replica's adapter (with its archive) and its document, for a tool that compares a
    /// document rebuilt here with one a node persisted (`cairnd check-store`).
    pub fn into_parts(self) -> (Adapter, Document) {
        (self.adapter, self.document)
    }

    /// Starts collecting what to persist of the document: from now on every key whose
    /// persisted state changes, the exclusions and the covered records, until
    /// [`Node::take_document_delta`] hands them over. A node that persists its document writes
    /// each delta in the same transaction as the events applied when it was taken, so that a
    /// restart opens the document instead of replaying the history.
    pub fn track_document(&mut self) {
        self.document.track_dirty();
        self.doc_tracking.get_or_insert_with(DocTracking::default);
    }

    /// What changed in the document since the last call (since [`Node::track_document`] for
    /// the first): the state after every event applied so far. `None` when tracking is off.
    pub fn take_document_delta(&mut self) -> Option<DocumentDelta> {
        let tracking = self.doc_tracking.as_mut()?;
        let covered = std::mem::take(&mut tracking.covered);
        let exclusions_changed = std::mem::take(&mut tracking.exclusions_changed);
        let keys = self
            .document
            .take_dirty()
            .into_iter()
            .map(|(kind, key)| {
                let state = self.document.encode_key(kind, &key);
                (kind, key, state)
            })
            .collect();
        let exclusions = exclusions_changed.then(|| self.document.encode_exclusions());
        Some(DocumentDelta { keys, exclusions, covered })
    }

    /// A delta from [`Node::take_document_delta`] that was not persisted (the store had no
    /// room): its keys are marked dirty again and its records kept, so the next delta holds
    /// them, with the keys' state as it is then.
    pub fn requeue_document_delta(&mut self, delta: DocumentDelta) {
        let Some(tracking) = self.doc_tracking.as_mut() else { return };
        let DocumentDelta { keys, exclusions, mut covered } = delta;
        covered.append(&mut tracking.covered);
        tracking.covered = covered;
        tracking.exclusions_changed |= exclusions.is_some();
        self.document.mark_dirty_keys(keys.into_iter().map(|(kind, key, _)| (kind, key)));
    }

    /// Covered records from the document go to the archive (what an exclusion reads) and, when
    /// persisting, to the next delta.
    fn record_covered(&mut self, covered: Vec<Covered>, excluded: bool) {
        if let Some(tracking) = &mut self.doc_tracking {
            tracking.exclusions_changed |= excluded;
        }
        if covered.is_empty() {
            return;
        }
        self.adapter.archive_mut().record_covered(&covered);
        if let Some(tracking) = &mut self.doc_tracking {
            tracking.covered.extend(covered);
        }
    }

    /// Loads evidence from this node's own store at start; it is verified again.
    pub fn restore_evidence(&mut self, evidence: Evidence) -> Result<(), crate::evidence::EvidenceError> {
        if self.adapter.add_evidence(evidence.clone())? {
            self.digest_cache = None;
            self.refused.insert(evidence.author());
        }
        Ok(())
    }

    /// Bytes from `peer`: one reconciliation message. The same as [`Node::begin_message`],
    /// then, for an `Events` message, its signature checks on `adapter.verify_threads` threads
    /// and [`Node::finish_events`].
    pub fn handle_message(&mut self, peer: PeerId, bytes: &[u8], now_ms: u64) {
        if let Some((pending, checks)) = self.begin_message(peer, bytes, now_ms) {
            let verdicts = checks.run(self.config.adapter.verify_threads);
            self.finish_events(pending, verdicts, now_ms);
        }
    }

    /// Bytes from `peer`: one reconciliation message, handled at once, except an `Events`
    /// message's events that wait for their signatures. Those are returned with their checks,
    /// to run on any thread ([`SignatureChecks::run`]) while the node handles other input; the
    /// caller then passes the verdicts to [`Node::finish_events`] (batches of one peer in the
    /// order they began). Until then the message does not count in the `heard` this node
    /// reports to the peer, so the peer does not take its events for missing here.
    pub fn begin_message(
        &mut self,
        peer: PeerId,
        bytes: &[u8],
        now_ms: u64,
    ) -> Option<(PendingEvents, SignatureChecks)> {
        self.now_ms = self.now_ms.max(now_ms);
        let p = self.peers.get_mut(&peer)?;
        if !p.connected || self.refused.contains(&peer) {
            return None;
        }
        p.heard += 1;
        p.stats.messages_in += 1;
        p.stats.bytes_in += bytes.len() as u64;
        let message = match codec::decode_message(bytes) {
            Ok(message) => message,
            Err(error) => {
                self.bad_message(peer, Misbehaviour::undecodable(&error), &error);
                return None;
            }
        };
        match message {
            Message::Summary { digest } => {
                if digest == self.sync_digest() {
                    let max_seqs = self.max_seqs();
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.last_in_sync = Some(digest);
                        p.own_tips_reported = Some(Vec::new());
                        p.reported_max_seqs = Some(max_seqs);
                        p.stats.sessions_in_sync += 1;
                    }
                    self.send(peer, &Message::InSync { digest });
                } else {
                    self.send_tips(peer, true);
                }
            }
            Message::InSync { digest } => {
                let mine = self.sync_digest();
                let max_seqs = self.max_seqs();
                if let Some(p) = self.peers.get_mut(&peer) {
                    if digest == mine {
                        // Equal sets: the peer holds no own event this node lacks.
                        p.last_in_sync = Some(digest);
                        p.own_tips_reported = Some(Vec::new());
                        p.reported_max_seqs = Some(max_seqs);
                        p.stats.sessions_in_sync += 1;
                    }
                    p.session_since_ms = None;
                }
            }
            Message::Tips { reply, more, heard, tips, evidence } => {
                self.on_tips(peer, reply, more, heard, tips, evidence, now_ms);
            }
            Message::Events { events } => return self.begin_events(peer, events, now_ms),
            Message::Want { ids } => self.send_accepted(peer, ids),
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
            Message::Have { ids } => self.on_have(peer, ids),
            Message::Prune => self.on_prune(peer),
            Message::Graft { ids } => self.on_graft(peer, ids),
            Message::Addrs { records } => self.on_addrs(peer, records),
        }
        None
    }

    /// The second half of an `Events` message ([`Node::begin_message`]): the events whose
    /// signatures held are accepted or buffered, and what was accepted is applied and pushed.
    /// The peer may have disconnected meanwhile: its valid events are kept all the same.
    ///
    /// # Panics
    ///
    /// If `verdicts` are not those of `pending`'s checks.
    pub fn finish_events(&mut self, pending: PendingEvents, verdicts: SignatureVerdicts, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let PendingEvents { peer, connection, number, ingest } = pending;
        if let Some(p) = self.peers.get_mut(&peer)
            && p.connection == connection
            && let Some(at) = p.unheard.iter().position(|n| *n == number)
        {
            p.unheard.remove(at);
        }
        let ingested = self.adapter.finish_ingest(ingest, verdicts);
        // A message that brought only events held already: this link is redundant for pushes.
        let redundant = ingested.n_duplicate > 0
            && ingested.accepted.is_empty()
            && ingested.n_buffered == 0
            && ingested.rejected.is_empty();
        self.absorb(Some(peer), ingested, now_ms);
        if redundant {
            self.prune(peer);
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
        self.gossip_timeout(now_ms);
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
        if let Some(at) = self.gossip_deadline() {
            earliest(at);
        }
        next
    }

    fn bad_message(&mut self, peer: PeerId, misbehaviour: Misbehaviour, detail: &dyn std::fmt::Display) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.stats.bad_messages += 1;
        }
        self.events.push_back(NodeEvent::BadMessage { peer, misbehaviour, detail: detail.to_string() });
    }

    fn begin_events(
        &mut self,
        peer: PeerId,
        events: Vec<Vec<u8>>,
        now_ms: u64,
    ) -> Option<(PendingEvents, SignatureChecks)> {
        let per_sec = self.config.peer_events_per_sec;
        let burst = self.config.peer_events_burst;
        let p = self.peers.get_mut(&peer)?;
        let n = events.len() as u64;
        p.stats.events_in += n;
        let allowed = p.take_events(n, now_ms, per_sec, burst);
        let mut events = events;
        if allowed < n {
            p.stats.events_rate_limited += n - allowed;
            p.next_sync_ms = p.next_sync_ms.min(now_ms + self.config.sync_interval_ms);
            events.truncate(allowed as usize);
        }
        let (connection, number) = (p.connection, p.heard);
        p.unheard.push_back(number);
        let (ingest, checks) = self.adapter.begin_ingest(peer, events);
        Some((PendingEvents { peer, connection, number, ingest }, checks))
    }

    /// Applies what the adapter accepted, reports rejections and evidence, pushes and asks.
    fn absorb(&mut self, from: Option<PeerId>, ingested: Ingested, now_ms: u64) {
        let Ingested { accepted, rejected, missing, evidence, mut exclusions, membership_changed, .. } =
            ingested;
        if membership_changed {
            // A change that took effect, a cut, or a double approval: the document stops
            // admitting what the membership in force no longer allows (rule M9), and the keys
            // out of force are refused as peers.
            exclusions.extend(self.adapter.admission_exclusions());
            self.refuse_out_of_force();
        }
        // An event past its author's admitted seqs (a removed seat's, written before it saw
        // its removal) is valid but not admitted.
        for event in &accepted {
            let through = self.adapter.admitted_through(event.author_idx());
            if event.seq() > through {
                exclusions.push((event.author_idx(), through.saturating_add(1)));
            }
        }
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
        // The document indexes authors as the roster does; the roster grows as events that
        // name new keys are accepted, before any event by such a key.
        for key in self.adapter.roster().keys().iter().skip(self.document.authors().len()) {
            self.document.add_author(*key);
        }
        let mut changes: BTreeSet<Change> = BTreeSet::new();
        for event in &accepted {
            let Applied { changes: applied, covered } = self.document.apply(event);
            self.record_covered(covered, false);
            changes.extend(applied);
        }
        for (author, seq) in exclusions {
            let Applied { changes: applied, covered } = self.document.exclude(
                author,
                seq,
                &ArchiveHistory { archive: self.adapter.archive(), chains: self.adapter.chain_states() },
            );
            self.record_covered(covered, true);
            changes.extend(applied);
        }
        let ids: Vec<EventId> = accepted.iter().map(Verified::id).collect();
        for event in accepted {
            self.events.push_back(NodeEvent::Accepted { event, from });
        }
        if !changes.is_empty() {
            self.events.push_back(NodeEvent::Changed(changes.into_iter().collect()));
        }
        if !ids.is_empty() {
            self.disseminate(&ids, from);
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
}
