//! The group commit, sans-I/O: which accepted events, evidence and local writes go to the store
//! together, when, and what each writer is answered. The driver (`driver.rs`) runs it against
//! the real store's writer thread; the simulator (`cairn-tests`) runs the same code against a
//! simulated store that can lose what was not synced, fill up and crash.
//!
//! Call order, with time passed in as milliseconds (nothing here reads a clock):
//! 1. inputs: [`GroupCommit::handle_write`] (a client's ops, with the token its answer goes
//!    to) and [`GroupCommit::handle_member_op`] (an operator's membership op, likewise),
//!    [`GroupCommit::handle_accepted`] and [`GroupCommit::handle_evidence`] (accepted by
//!    the replica, to be stored), [`GroupCommit::handle_committed`] (the store's verdict on the
//!    job in flight), [`GroupCommit::start_draining`];
//! 2. [`GroupCommit::poll_commit`]: the next job for the store, if one is due and none is in
//!    flight (the local writes are signed into own events here, through
//!    `Node::prepare_writes`);
//! 3. [`GroupCommit::poll_reply`]: answers for writers, until `None`;
//! 4. [`GroupCommit::poll_timeout`]: when a commit that cannot start now may start.
//!
//! # Rules
//!
//! - One job in flight at a time; everything that arrives meanwhile goes into the next one, so
//!   concurrent writes share one fsync, and consecutive writes share one event (one signature)
//!   as far as the protocol's limits allow (`Node::pack_writes`).
//! - A write is answered `Ok` only after the job holding its event was committed, and its event
//!   reaches the replica (and so the peers) only then (`Node::commit_writes`).
//! - Events accepted from peers wait at most [`PEER_EVENTS_COMMIT_DELAY_MS`] (or until
//!   [`PEER_EVENTS_COMMIT_BATCH`] wait) when no write or evidence is due: nothing waits on their
//!   fsync.
//! - Events from peers not yet durable (waiting, and in the job in flight) are bounded
//!   ([`PEER_EVENTS_UNSTORED_MAX`], [`PEER_EVENTS_UNSTORED_BYTES_MAX`]): past either bound
//!   [`GroupCommit::takes_peer_input`] turns false and the driver stops reading from peers
//!   until a commit lands, so a store slower than the wire (a long catch-up, a full file
//!   system) slows the peers down through flow control instead of growing memory.
//! - The write queue is bounded ([`WRITES_QUEUED_MAX`] writes, [`WRITES_QUEUED_BYTES_MAX`]
//!   bytes of ops): a write past either bound is refused at once with
//!   [`WriteFailure::QueueFull`], never queued without bound while a commit or a full-disk
//!   back-off is pending.
//! - A commit that fails for want of space stored nothing (the store checks): its own events
//!   are dropped and their seqs given back (`Node::abort_writes`), its writes fail with
//!   [`WriteFailure::NoSpace`], its events from peers and its evidence wait for the next try,
//!   [`RETRY_MIN_MS`] later, doubling to [`RETRY_MAX_MS`]. While draining, one more try is made
//!   at once, and no other.
//! - Any other store failure is fatal: the writes in flight fail with
//!   [`WriteFailure::Storage`], and nothing is committed again.

use std::collections::VecDeque;

use cairn_crypto::SecretKey;
use cairn_protocol::{DocumentDelta, Node, Op, Prepared, Verified, WriteError};

use crate::store::Append;

/// Events accepted from peers wait this long at most for a store commit of their own when no
/// local write or evidence is due: nothing waits on their fsync (peers hold them too), and
/// fewer, larger commits leave the cores to signature checks during a catch-up. A commit
/// rewrites every page its inserts touch, and the `ids` and `metas` tables are keyed by random
/// ids, so a commit of a few hundred events rewrote about a page per event and table; at 100 ms
/// a catch-up at 30 000 events/s commits about 3 000 at a time (a local write still commits at
/// once, and takes these with it).
pub const PEER_EVENTS_COMMIT_DELAY_MS: u64 = 100;
/// ... unless this many are waiting.
pub const PEER_EVENTS_COMMIT_BATCH: usize = 4_096;
/// Events from peers accepted but not yet durable (waiting for a commit or in the one in
/// flight), at most, before the node stops reading from peers: eight full batches, so the store
/// always has a large commit to take while the replica goes on checking signatures.
pub const PEER_EVENTS_UNSTORED_MAX: usize = 8 * PEER_EVENTS_COMMIT_BATCH;
/// ... and their bytes. Each is held twice until its commit lands (in the job, and in the
/// archive for reads), so this bounds about twice as much memory.
pub const PEER_EVENTS_UNSTORED_BYTES_MAX: usize = 32 * 1024 * 1024;
/// After a commit failed because the store's file system is full, the next one is tried this
/// much later, then twice as late after each failure, up to [`RETRY_MAX_MS`]. Each attempt
/// reopens the store (redb requires it after a failed write), which reads the whole file.
pub const RETRY_MIN_MS: u64 = 100;
/// The longest wait between two commits tried while the file system is full, and so about the
/// longest a write waits for its answer then.
pub const RETRY_MAX_MS: u64 = 2_000;
/// Local writes waiting for a commit, at most: four full commits' worth at the default
/// `commit_writes_max` (1 024), enough to keep the store busy at any write rate it can take,
/// and a bound on what a client flood can queue while a commit or a full-disk back-off is
/// pending.
pub const WRITES_QUEUED_MAX: usize = 4_096;
/// Bytes of ops (keys, values and elements) waiting for a commit, at most: a few large writes
/// cannot queue more memory than this.
pub const WRITES_QUEUED_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Membership ops (proposals and approvals, `docs/PROTOCOL.md` §17) waiting for a commit, at
/// most. Each is signed into an event of its own, ahead of the document writes queued.
pub const MEMBER_OPS_QUEUED_MAX: usize = 16;

/// A membership op this node's operator asks it to sign.
#[derive(Clone, Debug)]
pub enum MemberOp {
    /// Propose a change of the membership in force (and vote for it).
    Propose(cairn_protocol::ChangeKind),
    /// Vote for a pending change.
    Approve(cairn_protocol::ChangeId),
    /// Rotate this node's key to this one: the old key signs the rotation (with the new key's
    /// proof), and the job that stores it records the new key as the store's node key.
    Rotate(std::sync::Arc<SecretKey>),
}

/// Why a write was not acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteFailure {
    /// The replica refuses to sign now (own seq unknown, own key equivocated, not a member).
    #[error("{0}")]
    NotReady(WriteError),
    /// The write queue is full; nothing was queued.
    #[error(
        "too many writes are waiting for the store ({WRITES_QUEUED_MAX} writes or \
         {WRITES_QUEUED_BYTES_MAX} bytes of ops at most); nothing was written, retry later"
    )]
    QueueFull,
    /// The store's file system is full; the write was not stored.
    #[error("{0}")]
    NoSpace(String),
    /// The store failed; the write may or may not be on disk, and the daemon stops.
    #[error("storage failed: {0}")]
    Storage(String),
}

/// An event for the store.
#[derive(Clone, Debug)]
pub enum JobEvent {
    /// Accepted from a peer: the proof of validation carries the event decoded, its bytes and
    /// its meta, so the store indexes it without decoding it again or reading its deps' metas
    /// (`store::Append::Accepted`), and its bytes are not copied.
    Accepted(Verified),
    /// An event as its id and canonical bytes: one of this node's own new events, signed for
    /// this job (accepted by the replica only once stored), or, in this module's tests, an
    /// event from a peer handed over without its proof. The store decodes and indexes it.
    Bytes([u8; 32], Vec<u8>),
}

impl JobEvent {
    /// The event's id.
    pub fn id(&self) -> [u8; 32] {
        Append::from(self).id()
    }

    /// The event's canonical bytes.
    pub fn bytes(&self) -> &[u8] {
        Append::from(self).bytes()
    }
}

/// The store takes a job's events as they are, without copying their bytes.
impl<'a> From<&'a JobEvent> for Append<'a> {
    fn from(event: &'a JobEvent) -> Self {
        match event {
            JobEvent::Accepted(event) => Self::Accepted(event),
            JobEvent::Bytes(id, bytes) => Self::Bytes(*id, bytes),
        }
    }
}

/// A batch for the store: events in causal order, and evidence (author, bytes).
#[derive(Debug, Default)]
pub struct CommitJob {
    /// Accepted events from peers first, then this node's own new events.
    pub events: Vec<JobEvent>,
    /// New evidence.
    pub evidence: Vec<([u8; 32], Vec<u8>)>,
    /// The job holds events this node signed in this process. The replica signs only once it
    /// knows its latest own seq, and the job holds every event accepted before them, so once
    /// it is durable the store holds the node's whole own chain: the store records that in the
    /// same transaction (`Store::append`), and a later start may sign without learning its seq
    /// from peers again.
    pub own_history_complete: bool,
    /// What changed in the node's document, when it persists it (`Node::track_document`): the
    /// state after the job's events from peers (its own events are applied once the job is
    /// durable, so their changes go with the next job).
    pub document: Option<DocumentDelta>,
    /// How many of `events`, from the first, the document had applied when `document` was
    /// taken: the events from peers.
    pub n_doc_events: usize,
    /// The keys the node's roster indexes after the genesis members, in index order, when the
    /// job was formed (`Roster::later_keys`): the author indices of the job's metas and of the
    /// persisted document mean these keys, so a start must index them the same way.
    pub roster: Vec<[u8; 32]>,
    /// The node's new key, when the job holds the rotation of its old one: the store records
    /// it in the same transaction (`Store::rotate_node_key`).
    pub node_key: Option<[u8; 32]>,
}

/// The store's verdict on a job.
#[derive(Debug)]
pub enum Committed {
    /// Durable (fsync'd).
    Ok,
    /// Nothing of the job was stored, for want of space.
    NoSpace {
        /// What the failed writes are told: where, and what to do.
        write_error: String,
        /// For the status, while the file system stays full.
        reason: String,
    },
    /// The store failed otherwise: nothing more can be committed.
    Failed {
        /// What failed.
        reason: String,
    },
}

/// An acknowledged write: its event is durable and accepted.
#[derive(Clone, Debug)]
pub struct Acked {
    /// The own event that holds the write (possibly with others).
    pub event: Verified,
}

/// The job in flight: own events waiting for their fsync, with the writers packed into each
/// (`replies[i]` wrote into the `i`th own event).
struct InFlight<R> {
    own: Option<Prepared>,
    replies: Vec<Vec<R>>,
    n_events: usize,
    /// Events from peers in the job, and their bytes.
    n_peer_events: usize,
    peer_bytes: usize,
}

/// The store's file system is full.
struct Full {
    retry_at_ms: u64,
    backoff_ms: u64,
    /// The last failure came while draining: no further try is made.
    while_draining: bool,
    reason: String,
}

/// The group commit of one node; `R` is what a writer's answer goes to (a channel in the
/// daemon, a write number in the simulator). See the module docs.
pub struct GroupCommit<R> {
    writes_per_commit_max: usize,
    writes: VecDeque<(Vec<Op>, R)>,
    writes_bytes: usize,
    member_ops: VecDeque<(MemberOp, R)>,
    peer_events: Vec<JobEvent>,
    /// The bytes of `peer_events`.
    peer_events_bytes: usize,
    /// When the oldest of `peer_events` was accepted.
    peer_events_since_ms: Option<u64>,
    evidence: Vec<([u8; 32], Vec<u8>)>,
    in_flight: Option<InFlight<R>>,
    full: Option<Full>,
    draining: bool,
    failed: Option<String>,
    replies: VecDeque<(R, Result<Acked, WriteFailure>)>,
}

/// The bytes a write's ops hold, for the queue's byte bound.
fn ops_bytes(ops: &[Op]) -> usize {
    ops.iter()
        .map(|op| {
            op.key().len()
                + match op {
                    Op::Put { value, .. } => value.len(),
                    Op::Add { element, .. } | Op::Remove { element, .. } => element.len(),
                    Op::Del { .. } | Op::Incr { .. } => 8,
                    // The named events' ids, 32 bytes each.
                    Op::PutSeen { value: bytes, seen, .. }
                    | Op::AddSeen { element: bytes, seen, .. }
                    | Op::RemoveSeen { element: bytes, seen, .. } => bytes.len() + 32 * seen.events.len(),
                    Op::DelSeen { seen, .. } => 8 + 32 * seen.events.len(),
                    // At most a change's bytes; local writes carry none (the API takes document
                    // ops only).
                    Op::Propose { .. } | Op::Approve { .. } | Op::Rotate(_) => {
                        cairn_protocol::limits::CHANGE_BYTES_MAX
                    }
                }
        })
        .sum()
}

impl<R> GroupCommit<R> {
    /// A group commit that packs at most `writes_per_commit_max` local writes into one job.
    ///
    /// # Panics
    ///
    /// If `writes_per_commit_max` is 0 (the configuration check refuses it before).
    pub fn new(writes_per_commit_max: usize) -> Self {
        assert!(writes_per_commit_max > 0, "a commit must take at least one write");
        Self {
            writes_per_commit_max,
            writes: VecDeque::new(),
            writes_bytes: 0,
            member_ops: VecDeque::new(),
            peer_events: Vec::new(),
            peer_events_bytes: 0,
            peer_events_since_ms: None,
            evidence: Vec::new(),
            in_flight: None,
            full: None,
            draining: false,
            failed: None,
            replies: VecDeque::new(),
        }
    }

    // ---- getters --------------------------------------------------------------------------

    /// Why writes are refused for want of space, while the store's file system is full.
    pub fn no_space(&self) -> Option<&str> {
        self.full.as_ref().map(|full| full.reason.as_str())
    }

    /// The fatal store failure, once one happened.
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Whether a job is with the store.
    pub fn is_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Writes waiting for a commit (not counting those in flight).
    pub fn n_writes_queued(&self) -> usize {
        self.writes.len()
    }

    /// Events from peers waiting for a commit.
    pub fn n_peer_events_waiting(&self) -> usize {
        self.peer_events.len()
    }

    /// Events from peers accepted and not yet durable (waiting, and in the job in flight), and
    /// their bytes.
    pub fn peer_events_unstored(&self) -> (usize, usize) {
        let (n, bytes) = self.in_flight.as_ref().map_or((0, 0), |f| (f.n_peer_events, f.peer_bytes));
        (self.peer_events.len() + n, self.peer_events_bytes + bytes)
    }

    /// Whether the node may read more from its peers: false while the events from peers not yet
    /// durable reach [`PEER_EVENTS_UNSTORED_MAX`] or [`PEER_EVENTS_UNSTORED_BYTES_MAX`]. It
    /// turns true again once a commit lands (one is due as soon as that many wait).
    pub fn takes_peer_input(&self) -> bool {
        let (n, bytes) = self.peer_events_unstored();
        n < PEER_EVENTS_UNSTORED_MAX && bytes < PEER_EVENTS_UNSTORED_BYTES_MAX
    }

    /// Nothing waits and nothing is in flight.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_none()
            && self.writes.is_empty()
            && self.member_ops.is_empty()
            && self.peer_events.is_empty()
            && self.evidence.is_empty()
    }

    /// Draining has nothing more to try: idle, failed, or the one try while draining found the
    /// file system full.
    pub fn is_done_draining(&self) -> bool {
        self.failed.is_some()
            || (self.in_flight.is_none()
                && (self.is_idle() || self.full.as_ref().is_some_and(|full| full.while_draining)))
    }

    // ---- inputs ---------------------------------------------------------------------------

    /// Queues a client's write (ops already checked with `Node::check_ops`). A write past the
    /// queue's bounds, or after a fatal store failure, is answered at once.
    pub fn handle_write(&mut self, ops: Vec<Op>, reply: R) {
        if let Some(reason) = &self.failed {
            self.replies.push_back((reply, Err(WriteFailure::Storage(reason.clone()))));
            return;
        }
        let bytes = ops_bytes(&ops);
        if self.writes.len() >= WRITES_QUEUED_MAX || self.writes_bytes + bytes > WRITES_QUEUED_BYTES_MAX {
            self.replies.push_back((reply, Err(WriteFailure::QueueFull)));
            return;
        }
        self.writes_bytes += bytes;
        self.writes.push_back((ops, reply));
    }

    /// Queues a membership op to sign, answered like a write: once its event is durable and
    /// accepted, or with why the replica refused to sign it ([`WriteFailure::NotReady`]).
    pub fn handle_member_op(&mut self, op: MemberOp, reply: R) {
        if let Some(reason) = &self.failed {
            self.replies.push_back((reply, Err(WriteFailure::Storage(reason.clone()))));
            return;
        }
        if self.member_ops.len() >= MEMBER_OPS_QUEUED_MAX {
            self.replies.push_back((reply, Err(WriteFailure::QueueFull)));
            return;
        }
        self.member_ops.push_back((op, reply));
    }

    /// An event the replica accepted from a peer, to be stored.
    pub fn handle_accepted(&mut self, event: Verified, now_ms: u64) {
        self.push_peer_event(JobEvent::Accepted(event), now_ms);
    }

    /// An event accepted from a peer, as its id and canonical bytes, to be stored (decoded and
    /// indexed by the store). Only the tests hand over events without their proof: they need
    /// no replica to make one.
    #[cfg(test)]
    pub(crate) fn handle_peer_event(&mut self, id: [u8; 32], bytes: Vec<u8>, now_ms: u64) {
        self.push_peer_event(JobEvent::Bytes(id, bytes), now_ms);
    }

    fn push_peer_event(&mut self, event: JobEvent, now_ms: u64) {
        self.peer_events_bytes += event.bytes().len();
        self.peer_events.push(event);
        self.peer_events_since_ms.get_or_insert(now_ms);
    }

    /// New evidence, to be stored.
    pub fn handle_evidence(&mut self, author: [u8; 32], bytes: Vec<u8>) {
        self.evidence.push((author, bytes));
    }

    /// Shutting down: commit what waits at once, without the peer events' delay.
    pub fn start_draining(&mut self) {
        self.draining = true;
    }

    /// Fails every queued write (the daemon is stopping without committing them).
    pub fn fail_queued(&mut self, failure: &WriteFailure) {
        for (_, reply) in self.writes.drain(..) {
            self.replies.push_back((reply, Err(failure.clone())));
        }
        for (_, reply) in self.member_ops.drain(..) {
            self.replies.push_back((reply, Err(failure.clone())));
        }
        self.writes_bytes = 0;
    }

    /// The store's verdict on the job in flight. On success the own events are accepted by
    /// `node` (and so pushed to peers) and their writers answered.
    ///
    /// # Panics
    ///
    /// If no job is in flight: the caller hands over one verdict per job.
    pub fn handle_committed(&mut self, committed: Committed, job: CommitJob, node: &mut Node, now_ms: u64) {
        let InFlight { own, replies, n_events, .. } =
            self.in_flight.take().expect("a verdict for a job in flight");
        debug_assert_eq!(n_events, job.events.len());
        match committed {
            Committed::Ok => {
                self.full = None;
                let accepted = own.map_or_else(Vec::new, |prepared| node.commit_writes(prepared, now_ms));
                for (event, writers) in accepted.into_iter().zip(replies) {
                    for reply in writers {
                        self.replies.push_back((reply, Ok(Acked { event: event.clone() })));
                    }
                }
            }
            Committed::NoSpace { write_error, reason } => {
                let n_own = own.as_ref().map_or(0, Prepared::len);
                if let Some(prepared) = own {
                    node.abort_writes(prepared);
                }
                for reply in replies.into_iter().flatten() {
                    self.replies.push_back((reply, Err(WriteFailure::NoSpace(write_error.clone()))));
                }
                // The own events were appended last. What came from peers goes back in front of
                // what was accepted since, so the store's log stays in causal order.
                let CommitJob { mut events, mut evidence, document, .. } = job;
                if let Some(delta) = document {
                    node.requeue_document_delta(delta);
                }
                let n_peer_events = events.len().checked_sub(n_own).expect("the job holds the own events");
                events.truncate(n_peer_events);
                events.append(&mut self.peer_events);
                self.peer_events = events;
                self.peer_events_bytes = self.peer_events.iter().map(|event| event.bytes().len()).sum();
                if !self.peer_events.is_empty() {
                    self.peer_events_since_ms.get_or_insert(now_ms);
                }
                evidence.append(&mut self.evidence);
                self.evidence = evidence;
                let backoff_ms = match &self.full {
                    Some(full) => (full.backoff_ms * 2).min(RETRY_MAX_MS),
                    None => RETRY_MIN_MS,
                };
                self.full = Some(Full {
                    retry_at_ms: now_ms + backoff_ms,
                    backoff_ms,
                    while_draining: self.draining,
                    reason,
                });
            }
            Committed::Failed { reason } => {
                // The store may or may not hold the own events: their seqs are never reused
                // (the node stops, and a restart learns them from the store or the peers).
                for reply in replies.into_iter().flatten() {
                    self.replies.push_back((reply, Err(WriteFailure::Storage(reason.clone()))));
                }
                self.fail_queued(&WriteFailure::Storage(reason.clone()));
                self.failed = Some(reason);
            }
        }
    }

    // ---- outputs --------------------------------------------------------------------------

    /// The next job for the store, if one is due and none is in flight: every accepted event
    /// not yet stored, new evidence, and the queued local writes signed (with `key`) as one
    /// chain. Writes the replica refuses to sign are answered with [`WriteFailure::NotReady`].
    pub fn poll_commit(&mut self, node: &mut Node, key: &SecretKey, now_ms: u64) -> Option<CommitJob> {
        if self.in_flight.is_some() || self.failed.is_some() {
            return None;
        }
        if let Some(full) = &self.full {
            // Draining tries once more at once; a failure then ends the tries.
            let may_try = if self.draining { !full.while_draining } else { now_ms >= full.retry_at_ms };
            if !may_try {
                return None;
            }
        }
        let n_writes = self.writes.len().min(self.writes_per_commit_max);
        let mut own: Option<Prepared> = None;
        let mut node_key = None;
        let mut replies = Vec::new();
        // A membership op goes alone, ahead of the document writes (they take the next job).
        while own.is_none()
            && let Some((op, reply)) = self.member_ops.pop_front()
        {
            let request = match &op {
                MemberOp::Propose(kind) => cairn_protocol::MemberRequest::Propose(kind.clone()),
                MemberOp::Approve(change) => cairn_protocol::MemberRequest::Approve(*change),
                MemberOp::Rotate(next) => cairn_protocol::MemberRequest::Rotate(next),
            };
            match node.prepare_membership(key, request) {
                Ok(prepared) => {
                    if let MemberOp::Rotate(next) = &op {
                        node_key = Some(next.public().0);
                    }
                    own = Some(prepared);
                    replies.push(vec![reply]);
                }
                Err(error) => self.replies.push_back((reply, Err(WriteFailure::NotReady(error)))),
            }
        }
        if own.is_none() && n_writes > 0 {
            let (writes, writers): (Vec<Vec<Op>>, Vec<R>) = self.writes.drain(..n_writes).unzip();
            self.writes_bytes -= writes.iter().map(|ops| ops_bytes(ops)).sum::<usize>();
            // Concurrent writes share one event (one signature) as far as the limits allow.
            let groups = Node::pack_writes(&writes);
            let mut writes = writes.into_iter();
            let mut writers = writers.into_iter();
            let mut packed = Vec::with_capacity(groups.len());
            for n in groups {
                packed.push(writes.by_ref().take(n).flatten().collect::<Vec<Op>>());
                replies.push(writers.by_ref().take(n).collect::<Vec<R>>());
            }
            match node.prepare_writes(key, packed) {
                Ok(prepared) => own = Some(prepared),
                Err(error) => {
                    for reply in replies.drain(..).flatten() {
                        self.replies.push_back((reply, Err(WriteFailure::NotReady(error.clone()))));
                    }
                }
            }
        }
        if own.is_none() && self.evidence.is_empty() && !self.peer_events_due(now_ms) {
            return None;
        }
        self.peer_events_since_ms = None;
        let mut events = std::mem::take(&mut self.peer_events);
        let peer_bytes = std::mem::take(&mut self.peer_events_bytes);
        let n_doc_events = events.len();
        // The document has applied every event from peers accepted so far (all in this job or
        // an earlier one) and the own events of every earlier job.
        let document = node.take_document_delta();
        events.extend(own.iter().flat_map(Prepared::events).map(|e| JobEvent::Bytes(e.id().0, e.encode())));
        let evidence = std::mem::take(&mut self.evidence);
        let own_history_complete = own.is_some();
        self.in_flight =
            Some(InFlight { own, replies, n_events: events.len(), n_peer_events: n_doc_events, peer_bytes });
        let roster = node.adapter().roster().later_keys().iter().map(|key| key.0).collect();
        Some(CommitJob { events, evidence, own_history_complete, document, n_doc_events, roster, node_key })
    }

    /// The job handed out by [`GroupCommit::poll_commit`] could not reach the store at all
    /// (its writer is gone): nothing of it was stored, so its own seqs are given back, and the
    /// failure is fatal.
    pub fn handle_unsent(&mut self, job: CommitJob, reason: &str, node: &mut Node) {
        let InFlight { own, replies, .. } = self.in_flight.take().expect("the job just polled is in flight");
        if let Some(prepared) = own {
            node.abort_writes(prepared);
        }
        drop(job);
        for reply in replies.into_iter().flatten() {
            self.replies.push_back((reply, Err(WriteFailure::Storage(reason.to_owned()))));
        }
        self.fail_queued(&WriteFailure::Storage(reason.to_owned()));
        self.failed = Some(reason.to_owned());
    }

    /// The next answer for a writer.
    pub fn poll_reply(&mut self) -> Option<(R, Result<Acked, WriteFailure>)> {
        self.replies.pop_front()
    }

    /// When a commit that cannot start now may start: the end of the peer events' wait, or of
    /// the back-off while the file system is full. `None` while a job is in flight (its verdict
    /// is the wake-up) or nothing waits.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.in_flight.is_some() || self.failed.is_some() {
            return None;
        }
        let peer_events_due = self.peer_events_since_ms.map(|t| t + PEER_EVENTS_COMMIT_DELAY_MS);
        let Some(full) = &self.full else {
            return if self.writes.is_empty() && self.member_ops.is_empty() && self.evidence.is_empty() {
                peer_events_due
            } else {
                Some(0)
            };
        };
        if !self.writes.is_empty() || !self.member_ops.is_empty() || !self.evidence.is_empty() {
            Some(full.retry_at_ms)
        } else {
            peer_events_due.map(|due| due.max(full.retry_at_ms))
        }
    }

    // ---- internals ------------------------------------------------------------------------

    fn peer_events_due(&self, now_ms: u64) -> bool {
        !self.peer_events.is_empty()
            && (self.draining
                || self.peer_events.len() >= PEER_EVENTS_COMMIT_BATCH
                || self.peer_events_bytes >= PEER_EVENTS_UNSTORED_BYTES_MAX / 2
                || self.peer_events_since_ms.is_some_and(|t| now_ms >= t + PEER_EVENTS_COMMIT_DELAY_MS))
    }
}

#[cfg(test)]
mod tests;
