//! The adapter between the wire and the document: it takes raw event bytes from a named peer,
//! checks every validity rule, holds events until their deps are accepted, detects
//! equivocation, and hands out [`Verified`] events in a causal order.
//!
//! Equivocation is detected at both places an event can first be seen as signed: when it is
//! buffered and when it is accepted, so an event that waited in the buffer is checked exactly
//! like one that did not.

use std::collections::{BTreeMap, BTreeSet};

use cairn_crypto::verify::{Check, KeyCache, verify_many_with};

use crate::archive::{Archive, EventMeta, MemoryArchive, StoredEvent};
use crate::buffer::{CausalBuffer, PeerId};
use crate::event::{EventId, Op};
use crate::evidence::{Evidence, EvidenceError, SignedHeader};
use crate::genesis::{Genesis, MemberIdx};
use crate::members::{MemberReject, MemberState};
use crate::membership::Resolution;
use crate::message::Tip;
use crate::roster::Roster;
use crate::validate::{Decoded, Reject, check_causal, check_stateless};
use crate::verified::Verified;

/// Node settings of the adapter. They affect liveness only, never validity.
#[derive(Clone, Debug)]
pub struct AdapterConfig {
    /// Bytes of buffered events one peer may hold.
    pub buffer_bytes_per_peer_max: usize,
    /// Bytes of buffered events in all.
    pub buffer_bytes_total_max: usize,
    /// Threads for signature checks of one batch (verdicts do not depend on it).
    pub verify_threads: usize,
    /// Whether events may carry membership ops (`docs/PROTOCOL.md` §17). A node that cannot
    /// keep what they resolve to across a restart (the daemon, until its store indexes them)
    /// refuses them as `bad_membership`, so that it never accepts what it would forget.
    pub membership_changes: bool,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        Self {
            buffer_bytes_per_peer_max: 16 * 1024 * 1024,
            buffer_bytes_total_max: 64 * 1024 * 1024,
            verify_threads: 1,
            membership_changes: true,
        }
    }
}

/// Answers of [`reaches`] kept, by (event sought, accepted event): an accepted event's causal
/// past never changes, so an answer never goes stale, and a walk from a new event stops at the
/// deps it meets here (usually its direct deps). Past this many the memo starts over: a node
/// setting, it only costs walks.
pub const REACH_MEMO_MAX: usize = 65_536;
/// A duplicate this many seqs or more below its author's highest accepted seq is *old*
/// ([`Ingested::n_old_duplicate`]): a replay, not a push or a session answer that crossed
/// another (those bring the newest events of their authors).
pub const OLD_DUPLICATE_SEQS: u64 = 4_096;

/// The buffer source charged for restored events (no peer has this all-zero key).
const RESTORE_SOURCE: cairn_crypto::PublicKey = cairn_crypto::PublicKey([0; 32]);

/// Whether a batch's signatures are checked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Signatures {
    Check,
    /// This node's own events, signed by it in this process (`Node::commit_writes`).
    OwnJustSigned,
}

/// What happens to candidates that would wait in a full buffer share.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Orphans {
    /// Dropped before their signatures are checked (input from a peer).
    DropUnaffordable,
    /// Kept (the node's own store and own writes, in causal order).
    Keep,
}

/// One rejected event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The peer that delivered it (for an event that waited in the buffer, the peer that sent
    /// the event, not the one whose dep released it).
    pub from: PeerId,
    /// The event's id, when the bytes decoded far enough to have one.
    pub id: Option<EventId>,
    /// Why.
    pub reason: Reject,
}

/// What one call to [`Adapter::ingest`] did.
#[derive(Debug, Default)]
pub struct Ingested {
    /// Newly accepted events, in a causal order (each after its deps).
    pub accepted: Vec<Verified>,
    /// Rejected events with their reasons.
    pub rejected: Vec<Rejection>,
    /// Ids that newly buffered events wait for and nobody has sent: ask peers for them.
    pub missing: Vec<EventId>,
    /// Events buffered until their deps arrive.
    pub n_buffered: usize,
    /// Events evicted from the buffer to keep it within bounds.
    pub n_evicted: usize,
    /// Events already accepted or buffered.
    pub n_duplicate: usize,
    /// Of those, the accepted ones [`OLD_DUPLICATE_SEQS`] or more below their author's highest
    /// accepted seq: old events sent again.
    pub n_old_duplicate: usize,
    /// Events dropped before their signature was checked: their deps were missing and their
    /// sender's share of the causal buffer was full (they are fetched again by sync if real).
    pub n_orphans_dropped: usize,
    /// Evidence that became this node's evidence for its author (new, or lower than before).
    pub evidence: Vec<Evidence>,
    /// Authors whose lowest accepted fork seq appeared or went down: `(author, fork seq)`.
    /// The document must exclude their ops from that seq on.
    pub exclusions: Vec<(MemberIdx, u64)>,
    /// Whether an accepted event carried membership ops: the membership in force, and what
    /// the document admits ([`Adapter::admitted_through`]), may have changed.
    pub membership_changed: bool,
}

/// A batch between [`Adapter::begin_ingest`] and [`Adapter::finish_ingest`]: its events past
/// every check that needs no signature, and what those checks found.
#[derive(Debug)]
pub struct PendingIngest {
    from: PeerId,
    ticket: u64,
    candidates: Vec<Decoded>,
    /// Candidates of which another copy, with another signature, was in flight when the batch
    /// began: one of them may be accepted before this batch finishes.
    contested: BTreeSet<EventId>,
    out: Ingested,
}

impl PendingIngest {
    /// Events of the batch that are waste, known before any signature is checked: old
    /// events sent again ([`OLD_DUPLICATE_SEQS`]), and the orphans dropped because their
    /// sender's share of the causal buffer is full. (A duplicate of a recent event is not:
    /// pushes, grafts and sessions cross each other, and more so when the node reads slowly.)
    pub fn n_wasted(&self) -> usize {
        self.out.n_old_duplicate + self.out.n_orphans_dropped
    }

    /// Events of the batch, whatever became of them so far.
    pub fn n_events(&self) -> usize {
        self.candidates.len() + self.out.n_duplicate + self.out.n_orphans_dropped + self.out.rejected.len()
    }
}

/// The signature checks of one batch ([`Adapter::begin_ingest`]), owned, to run on any thread.
pub struct SignatureChecks {
    ticket: u64,
    keys: std::sync::Arc<KeyCache>,
    /// (claimed author, event id: the signed message, signature)
    checks: Vec<(cairn_crypto::PublicKey, EventId, cairn_crypto::Signature)>,
}

impl std::fmt::Debug for SignatureChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureChecks")
            .field("ticket", &self.ticket)
            .field("n", &self.checks.len())
            .finish()
    }
}

impl SignatureChecks {
    /// How many signatures.
    pub fn len(&self) -> usize {
        self.checks.len()
    }

    /// Whether there is none to check.
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// Checks every signature with `verify_strict` on up to `n_threads` threads
    /// ([`verify_many_with`]: the verdicts do not depend on the thread count). The verdicts
    /// are the only way to finish the batch ([`Adapter::finish_ingest`]).
    pub fn run(self, n_threads: usize) -> SignatureVerdicts {
        let checks: Vec<Check<'_>> =
            self.checks.iter().map(|(key, id, sig)| Check { key, message: &id.0, signature: sig }).collect();
        let verdicts = verify_many_with(&self.keys, &checks, n_threads);
        SignatureVerdicts { ticket: self.ticket, verdicts }
    }
}

/// The verdicts of one batch's signature checks: only [`SignatureChecks::run`] makes them, so
/// an event is admitted only once `verify_strict` accepted its signature.
#[derive(Debug)]
pub struct SignatureVerdicts {
    ticket: u64,
    verdicts: Vec<bool>,
}

/// An event of a batch begun and not finished.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    /// The copy's signature: the id does not cover it, so a copy with another signature is
    /// another candidate (a forged copy must not shadow the genuine one).
    sig: cairn_crypto::Signature,
    /// Whether it needed no buffer when its batch began.
    ready: bool,
}

/// Per-author chain bookkeeping, kept in memory (the events themselves are in the archive).
/// Small: one tip per author, more only for an equivocator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainState {
    /// Accepted events with no accepted own-successor, with their seqs.
    pub tips: Vec<(EventId, u64)>,
    /// The highest accepted seq (0 when none).
    pub max_seq: u64,
    /// Lowest seq with two accepted events.
    pub fork_seq: Option<u64>,
}

/// The validation adapter. See the module docs.
pub struct Adapter {
    genesis: Genesis,
    /// The keys indexed as authors: `chains` has an entry per key.
    roster: Roster,
    config: AdapterConfig,
    archive: Box<dyn Archive>,
    /// See [`Adapter::orphans_dropped`].
    n_orphans_dropped: u64,
    chains: Vec<ChainState>,
    buffer: CausalBuffer,
    evidence: BTreeMap<MemberIdx, Evidence>,
    /// The roster's keys, decoded once for every signature check (shared with the checks of
    /// batches in flight, [`SignatureChecks`]).
    keys: std::sync::Arc<KeyCache>,
    /// The events of batches begun and not finished ([`Adapter::begin_ingest`]), by id: the
    /// first copy begun of each.
    in_flight: BTreeMap<EventId, InFlight>,
    /// The ticket of the next batch begun: it pairs a batch with its verdicts.
    next_ticket: u64,
    /// Membership over time: the ops, and what they resolve to.
    members: MemberState,
    /// Per indexed key, the highest seq the document admits (see [`Adapter::admitted_through`]).
    admitted_through: Vec<u64>,
    /// See [`REACH_MEMO_MAX`].
    reach_memo: BTreeMap<(EventId, EventId), bool>,
    /// The answers the last membership check of an event asked [`reaches`] for, kept in
    /// `reach_memo` under the event's id once it is accepted.
    reach_asked: Vec<(EventId, bool)>,
    /// See [`Adapter::reach_visits`].
    reach_visits: u64,
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapter")
            .field("n_accepted", &self.archive.len())
            .field("chains", &self.chains)
            .field("evidence", &self.evidence)
            .finish_non_exhaustive()
    }
}

impl Adapter {
    /// An empty adapter for the cluster `genesis`, its events in memory.
    pub fn new(genesis: Genesis, config: AdapterConfig) -> Self {
        let roster = Roster::new(&genesis);
        let chains = roster.keys().iter().map(|_| ChainState::default()).collect();
        Self::resume(genesis, config, Box::new(MemoryArchive::new()), roster, chains)
    }

    /// An adapter over `archive`, which holds the events accepted before, `roster`, the keys
    /// indexed then ([`Adapter::roster`]), and `chains`, the chain state of each
    /// ([`Adapter::chain_states`] when they were accepted). Evidence is added with
    /// [`Adapter::add_evidence`].
    ///
    /// # Panics
    ///
    /// If `chains` does not have one entry per key of `roster`.
    pub fn resume(
        genesis: Genesis,
        config: AdapterConfig,
        archive: Box<dyn Archive>,
        roster: Roster,
        chains: Vec<ChainState>,
    ) -> Self {
        assert_eq!(chains.len(), roster.len(), "one chain state per key of the roster");
        let buffer = CausalBuffer::new(config.buffer_bytes_per_peer_max, config.buffer_bytes_total_max);
        let keys = std::sync::Arc::new(KeyCache::new(roster.keys()));
        let members = MemberState::new(&genesis);
        Self {
            admitted_through: vec![u64::MAX; roster.len()],
            reach_memo: BTreeMap::new(),
            reach_asked: Vec::new(),
            reach_visits: 0,
            members,
            genesis,
            roster,
            config,
            archive,
            n_orphans_dropped: 0,
            chains,
            buffer,
            evidence: BTreeMap::new(),
            keys,
            in_flight: BTreeMap::new(),
            next_ticket: 0,
        }
    }

    /// Rebuilds what the membership ops of accepted events resolve to, for an adapter that
    /// resumed over an archive ([`Adapter::resume`] does not read the history): `events` are
    /// the accepted events that carry membership ops, in the order they were accepted (others
    /// are skipped). Their validity is not checked again.
    pub fn resume_membership(&mut self, events: &[StoredEvent]) {
        let mut any = false;
        for stored in events {
            let Some(event) = stored.event() else { continue };
            if !event.ops.iter().any(Op::is_membership) {
                continue;
            }
            let deps: Vec<EventMeta> =
                event.header.deps.iter().filter_map(|d| self.archive.meta(d)).collect();
            let past_clock = clock_of_deps(self.roster.len(), deps.iter());
            let roster = &self.roster;
            let clock = clock_by_key(roster, &past_clock);
            let named =
                self.members.record(event.header.author, event.header.seq, stored.id, &event.ops, clock);
            for key in named {
                self.index_key(key);
            }
            any = true;
        }
        if any {
            self.refresh_admission();
        }
    }

    /// The archive, the roster and the chain states, for a replica that resumes over them
    /// ([`crate::Node::resume`]): what a restart in a test or the simulator hands over, as the
    /// daemon's store does.
    pub fn into_parts(self) -> (Box<dyn Archive>, Roster, Vec<ChainState>) {
        (self.archive, self.roster, self.chains)
    }

    /// The keys indexed as authors, in index order.
    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    /// Every indexed key's chain state, in index order: what [`Adapter::resume`] takes.
    pub fn chain_states(&self) -> &[ChainState] {
        &self.chains
    }

    /// The archive of accepted events.
    pub fn archive(&self) -> &dyn Archive {
        self.archive.as_ref()
    }

    /// The archive, to record what the document keeps there besides events (covered records).
    pub fn archive_mut(&mut self) -> &mut dyn Archive {
        self.archive.as_mut()
    }

    /// The genesis.
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    /// The change of this id, if an accepted event proposed it.
    pub fn change(&self, id: &crate::membership::ChangeId) -> Option<&crate::membership::Change> {
        self.members.change(id)
    }

    /// The resolution of every accepted membership op (`docs/PROTOCOL.md` §17): the membership
    /// in force at this node, pending changes, double approvals, what the document admits.
    pub fn membership(&self) -> &Resolution {
        self.members.current()
    }

    /// The highest seq of `author` the document admits under the membership in force here
    /// (rule M9; `u64::MAX`: every seq). A key that is not a member yet admits none, and
    /// none of its events can be accepted until it is.
    pub fn admitted_through(&self, author: MemberIdx) -> u64 {
        self.admitted_through.get(author).copied().unwrap_or(0)
    }

    /// What the document may not admit of the events accepted so far (rule M9): for each
    /// author with accepted events past its admitted seqs, `(author, the first seq not
    /// admitted)`.
    pub fn admission_exclusions(&self) -> Vec<(MemberIdx, u64)> {
        (0..self.roster.len())
            .filter_map(|idx| {
                let through = self.admitted_through(idx);
                (self.max_seq(idx) > through).then(|| (idx, through.saturating_add(1)))
            })
            .collect()
    }

    /// The accepted event `id`, read from the archive.
    pub fn event(&self, id: &EventId) -> Option<StoredEvent> {
        self.archive.event(id)
    }

    /// The meta of the accepted event `id`.
    pub fn meta(&self, id: &EventId) -> Option<EventMeta> {
        self.archive.meta(id)
    }

    /// Whether `id` is accepted.
    pub fn is_accepted(&self, id: &EventId) -> bool {
        self.archive.contains(id)
    }

    /// Whether `id` is accepted or waiting in the buffer.
    pub fn is_known(&self, id: &EventId) -> bool {
        self.buffer.contains(id) || self.archive.contains(id)
    }

    /// [`Adapter::is_known`] for each of `ids`, with one question to the archive for those not
    /// buffered (one read, for an archive on disk).
    pub fn known_many(&self, ids: &[EventId]) -> Vec<bool> {
        let asked: Vec<EventId> = ids.iter().filter(|id| !self.buffer.contains(id)).copied().collect();
        let mut held = self.archive.contains_many(&asked).into_iter();
        // `held` answers the asked ids in order, one each.
        ids.iter().map(|id| self.buffer.contains(id) || held.next().unwrap_or(false)).collect()
    }

    /// Number of accepted events.
    pub fn n_accepted(&self) -> usize {
        usize::try_from(self.archive.len()).unwrap_or(usize::MAX)
    }

    /// Total encoded bytes of accepted events.
    pub fn n_bytes_accepted(&self) -> u64 {
        self.archive.n_bytes()
    }

    /// Accepted ids in id order. Linear in the history: for checks and tests.
    pub fn accepted_ids(&self) -> Vec<EventId> {
        self.archive.ids()
    }

    /// Events in the causal buffer, and their charged bytes.
    pub fn buffer_use(&self) -> (usize, usize) {
        (self.buffer.len(), self.buffer.total_bytes())
    }

    /// Bytes of the buffer charged to `peer`.
    pub fn buffer_peer_bytes(&self, peer: &PeerId) -> usize {
        self.buffer.peer_bytes(peer)
    }

    /// Events evicted from the buffer so far.
    pub fn buffer_evicted(&self) -> u64 {
        self.buffer.n_evicted()
    }

    /// Events dropped unverified because their sender's buffer share was full (see
    /// [`Ingested::n_orphans_dropped`]), since start.
    pub fn orphans_dropped(&self) -> u64 {
        self.n_orphans_dropped
    }

    /// Deps that buffered events wait for and nobody has sent, at most `limit`.
    pub fn missing(&self, limit: usize) -> Vec<EventId> {
        self.buffer.missing(limit)
    }

    /// The evidence held, one per equivocating author, in the order of the authors' keys.
    pub fn evidence(&self) -> impl Iterator<Item = &Evidence> {
        let mut held: Vec<&Evidence> = self.evidence.values().collect();
        held.sort_by_key(|evidence| evidence.author());
        held.into_iter()
    }

    /// Whether `author` is a proven equivocator.
    pub fn is_equivocator(&self, author: MemberIdx) -> bool {
        self.evidence.contains_key(&author)
    }

    /// The lowest accepted fork seq of `author`, if it forked.
    pub fn fork_seq(&self, author: MemberIdx) -> Option<u64> {
        self.chains.get(author).and_then(|c| c.fork_seq)
    }

    /// Accepted events of `author` at `seq`, in id order (more than one only after
    /// equivocation).
    pub fn at_seq(&self, author: MemberIdx, seq: u64) -> Vec<EventId> {
        if self.chains.get(author).is_none_or(|c| seq == 0 || seq > c.max_seq) {
            return Vec::new();
        }
        self.archive.at_seq(author, seq)
    }

    /// The highest accepted seq of `author` (0 when none).
    pub fn max_seq(&self, author: MemberIdx) -> u64 {
        self.chains.get(author).map_or(0, |c| c.max_seq)
    }

    /// The tips of every author, sorted by author then id: they describe the accepted set
    /// exactly, because it is causally closed.
    pub fn tips(&self) -> Vec<Tip> {
        let mut tips = Vec::new();
        for author in self.roster.in_key_order() {
            let key = self.roster.keys()[author];
            let mut ids = self.chains[author].tips.clone();
            ids.sort_unstable();
            for (id, seq) in ids {
                tips.push(Tip { author: key, seq, id });
            }
        }
        tips
    }

    /// The own-chain ancestor of accepted `id` at `seq` (the event itself at its own seq).
    pub fn ancestor_at(&self, id: &EventId, seq: u64) -> Option<EventId> {
        let mut current = self.archive.meta(id)?;
        if seq > current.seq || seq == 0 {
            return None;
        }
        // Below the fork seq an author's chain is unique, so the answer is a lookup.
        let chain = &self.chains[current.author];
        if chain.fork_seq.is_none_or(|f| seq < f) {
            return self.archive.at_seq(current.author, seq).first().copied();
        }
        let mut current_id = *id;
        while current.seq > seq {
            current_id = current.own_pred?;
            current = self.archive.meta(&current_id)?;
        }
        Some(current_id)
    }

    /// The own predecessor (the dep by the same author) of the accepted event `id`.
    pub fn own_predecessor(&self, id: &EventId) -> Option<EventId> {
        self.archive.meta(id)?.own_pred
    }

    /// Validates raw events delivered by `from` and accepts those whose deps are all accepted;
    /// the others wait in the buffer. Signatures of the batch are checked in parallel.
    pub fn ingest(&mut self, from: PeerId, raw: Vec<Vec<u8>>) -> Ingested {
        self.ingest_inner(from, raw, Signatures::Check, Orphans::DropUnaffordable)
    }

    /// Validates events read back from this node's own store at restart, every rule included
    /// (signatures in parallel, as for [`Adapter::ingest`]). They come in the order they were
    /// accepted, so none needs the buffer, and no orphan is dropped for want of buffer room.
    pub fn restore(&mut self, raw: Vec<Vec<u8>>) -> Ingested {
        self.ingest_inner(RESTORE_SOURCE, raw, Signatures::Check, Orphans::Keep)
    }

    /// Accepts this node's own events, signed by `Node::prepare_writes` a moment ago, without
    /// checking their signatures again; every other rule is checked. Crate-private: the only
    /// caller is `Node::commit_writes`, which takes a `Prepared` that only `prepare_writes`
    /// makes.
    pub(crate) fn ingest_own(&mut self, raw: Vec<Vec<u8>>) -> Ingested {
        self.ingest_inner(RESTORE_SOURCE, raw, Signatures::OwnJustSigned, Orphans::Keep)
    }

    fn ingest_inner(
        &mut self,
        from: PeerId,
        raw: Vec<Vec<u8>>,
        signatures: Signatures,
        orphans: Orphans,
    ) -> Ingested {
        let (pending, checks, _) = self.begin_inner(from, raw, signatures, orphans);
        let verdicts = match signatures {
            Signatures::Check => checks.run(self.config.verify_threads).verdicts,
            Signatures::OwnJustSigned => vec![true; pending.candidates.len()],
        };
        self.finish_inner(pending, verdicts)
    }

    /// The first half of [`Adapter::ingest`]: every check of `raw` that needs no signature
    /// (rules 1, 2 and 7, duplicates, strangers, orphans that would not fit their sender's
    /// buffer share), and the signature checks of the events left, to run on any thread
    /// ([`SignatureChecks::run`]) while this adapter goes on with other input. The batch is
    /// accepted by [`Adapter::finish_ingest`] with their verdicts; the outcome is the one
    /// [`Adapter::ingest`] gives, since validity depends only on the events and their causal
    /// pasts, and each event is admitted (buffered or accepted) only once its signature held.
    ///
    /// Batches may overlap: the events of a batch begun and not finished are *in flight*. An
    /// event in flight is a duplicate for the batches begun after it when they bring the same
    /// bytes (its signature is checked once; a copy with another signature is checked too,
    /// since the id does not cover the signature), and one that needed no buffer counts as
    /// ready for their orphan check.
    pub fn begin_ingest(&mut self, from: PeerId, raw: Vec<Vec<u8>>) -> (PendingIngest, SignatureChecks) {
        let (pending, checks, ready) =
            self.begin_inner(from, raw, Signatures::Check, Orphans::DropUnaffordable);
        for (c, ready) in pending.candidates.iter().zip(ready) {
            self.in_flight.entry(c.id).or_insert(InFlight { sig: c.event.sig, ready });
        }
        (pending, checks)
    }

    /// The second half of [`Adapter::ingest`]: the batch's events whose signatures held are
    /// admitted, in their order.
    ///
    /// # Panics
    ///
    /// If `verdicts` are not those of `pending`'s checks (a bug of the caller).
    pub fn finish_ingest(&mut self, pending: PendingIngest, verdicts: SignatureVerdicts) -> Ingested {
        assert_eq!(pending.ticket, verdicts.ticket, "signature verdicts of another batch");
        assert_eq!(pending.candidates.len(), verdicts.verdicts.len(), "one verdict per candidate");
        for decoded in &pending.candidates {
            if self.in_flight.get(&decoded.id).is_some_and(|f| f.sig == decoded.event.sig) {
                self.in_flight.remove(&decoded.id);
            }
        }
        self.finish_inner(pending, verdicts.verdicts)
    }

    /// Events of batches begun and not finished ([`Adapter::begin_ingest`]).
    pub fn n_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Every check of `raw` that needs no signature, for [`Adapter::ingest_inner`] and
    /// [`Adapter::begin_ingest`]; with the batch and its signature checks it returns, for a
    /// peer's batch, whether each candidate needs no buffer (nothing for the node's own input).
    fn begin_inner(
        &mut self,
        from: PeerId,
        raw: Vec<Vec<u8>>,
        signatures: Signatures,
        orphans: Orphans,
    ) -> (PendingIngest, SignatureChecks, Vec<bool>) {
        let mut out = Ingested::default();
        let mut decoded_all: Vec<Decoded> = Vec::with_capacity(raw.len());
        for bytes in raw {
            match check_stateless(bytes) {
                Err((id, reason)) => out.rejected.push(Rejection { from, id, reason }),
                Ok(decoded) => decoded_all.push(decoded),
            }
        }
        // One question to the archive for the whole batch (one read, for an archive on disk),
        // about the events it may hold: an event above its author's highest accepted seq is
        // not accepted (the chain states advance with every accepted event), so a batch of new
        // events, a catch-up's or a push's, costs no read of the store.
        let accepted: Vec<bool> = match signatures {
            Signatures::Check => {
                let may_hold = |d: &Decoded| {
                    let author = self.roster.idx(&d.event.header.author);
                    author.is_some_and(|author| d.event.header.seq <= self.max_seq(author))
                };
                let asked: Vec<EventId> = decoded_all.iter().filter(|d| may_hold(d)).map(|d| d.id).collect();
                let mut held = self.archive.contains_many(&asked).into_iter();
                // `held` answers the asked ids in order, one each.
                decoded_all.iter().map(|d| may_hold(d) && held.next().unwrap_or(false)).collect()
            }
            // The node's own new events are in its store already (see `is_known_for`).
            Signatures::OwnJustSigned => vec![false; decoded_all.len()],
        };
        let mut candidates: Vec<Decoded> = Vec::with_capacity(decoded_all.len());
        // The candidates' ids, so that a duplicate within the batch is found in log time: a
        // scan of `candidates` made a restore of n events O(n²) (minutes at 300 000).
        let mut candidate_ids: BTreeSet<EventId> = BTreeSet::new();
        let mut contested: BTreeSet<EventId> = BTreeSet::new();
        for (decoded, accepted) in decoded_all.into_iter().zip(accepted) {
            let id = decoded.id;
            let in_flight = self.in_flight.get(&id).map(|f| f.sig == decoded.event.sig);
            if accepted || self.buffer.contains(&id) || in_flight == Some(true) || !candidate_ids.insert(id) {
                out.n_duplicate += 1;
                let header = &decoded.event.header;
                if accepted
                    && self.roster.idx(&header.author).is_some_and(|author| {
                        header.seq.saturating_add(OLD_DUPLICATE_SEQS) <= self.max_seq(author)
                    })
                {
                    out.n_old_duplicate += 1;
                }
            } else if self.is_stranger(&decoded) {
                out.rejected.push(Rejection { from, id: Some(id), reason: Reject::NotMember });
            } else {
                if in_flight == Some(false) {
                    contested.insert(id);
                }
                candidates.push(decoded);
            }
        }
        let ready = match orphans {
            Orphans::DropUnaffordable => {
                self.drop_unaffordable_orphans(from, &mut candidates, &candidate_ids, &mut out)
            }
            Orphans::Keep => Vec::new(),
        };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let checks = match signatures {
            Signatures::Check => {
                candidates.iter().map(|c| (c.event.header.author, c.id, c.event.sig)).collect()
            }
            Signatures::OwnJustSigned => Vec::new(),
        };
        let checks = SignatureChecks { ticket, keys: std::sync::Arc::clone(&self.keys), checks };
        (PendingIngest { from, ticket, candidates, contested, out }, checks, ready)
    }

    fn finish_inner(&mut self, pending: PendingIngest, verdicts: Vec<bool>) -> Ingested {
        let PendingIngest { from, candidates, contested, mut out, .. } = pending;
        for (decoded, ok) in candidates.into_iter().zip(verdicts) {
            if !ok {
                out.rejected.push(Rejection { from, id: Some(decoded.id), reason: Reject::BadSignature });
                continue;
            }
            // Another copy, begun earlier, may have been accepted meanwhile.
            if contested.contains(&decoded.id) && self.archive.contains(&decoded.id) {
                out.n_duplicate += 1;
                continue;
            }
            self.admit(decoded, from, &mut out);
        }
        out
    }

    /// Whether `decoded`'s author is a key no accepted event names while every dep is accepted:
    /// the author is then not a member in its causal past (rule 3), and no signature check is
    /// spent on it. (With a dep missing, the op that names the key may still come.)
    fn is_stranger(&self, decoded: &Decoded) -> bool {
        self.roster.idx(&decoded.event.header.author).is_none()
            && decoded.event.header.deps.iter().all(|dep| self.archive.contains(dep))
    }

    /// Reads each indexed key's admitted seqs again from the membership in force.
    fn refresh_admission(&mut self) {
        let resolution = self.members.current();
        self.admitted_through = self.roster.keys().iter().map(|k| resolution.admitted_through(k)).collect();
    }

    /// Indexes `key` as an author from now on (a key a membership op named).
    fn index_key(&mut self, key: cairn_crypto::PublicKey) {
        let before = self.roster.len();
        if self.roster.insert(key) == before {
            self.chains.push(ChainState::default());
            self.admitted_through.push(0);
            self.keys = std::sync::Arc::new(KeyCache::new(self.roster.keys()));
        }
    }

    /// Drops, before any signature is checked, the candidates that would have to wait in the
    /// buffer while `from`'s share of it is full: checking them would cost a signature
    /// verification each, only for the buffer to evict one of `from`'s events. An orphan flood
    /// thus costs a decode per event once its sender's share is full, not a verification.
    ///
    /// A candidate needs no buffer if each dep is accepted, or is an earlier candidate or an
    /// event in flight that needed none; a dep that is merely buffered does not count, or a
    /// chain hanging from one orphan would pass. `batch` holds the batch's ids. Returns, for each
    /// candidate kept, whether it needs no buffer.
    fn drop_unaffordable_orphans(
        &mut self,
        from: PeerId,
        candidates: &mut Vec<Decoded>,
        batch: &BTreeSet<EventId>,
        out: &mut Ingested,
    ) -> Vec<bool> {
        let share = self.buffer.per_peer_max();
        let mut used = self.buffer.peer_bytes(&from);
        let mut ready: BTreeSet<EventId> = BTreeSet::new();
        let mut kept_ready = Vec::with_capacity(candidates.len());
        let before = candidates.len();
        let in_flight = &self.in_flight;
        // One question to the archive for every dep neither in the batch nor in flight (one
        // read, for an archive on disk): an orphan flood names deps nobody holds, and a read
        // per dep cost more than the decoding it was meant to be the only cost of.
        let asked: Vec<EventId> = candidates
            .iter()
            .flat_map(|c| c.event.header.deps.iter())
            .filter(|d| !batch.contains(d) && !in_flight.contains_key(d))
            .copied()
            .collect::<BTreeSet<EventId>>()
            .into_iter()
            .collect();
        let accepted: BTreeSet<EventId> = asked
            .iter()
            .zip(self.archive.contains_many(&asked))
            .filter(|(_, held)| *held)
            .map(|(d, _)| *d)
            .collect();
        candidates.retain(|c| {
            let is_ready = |d: &EventId| {
                ready.contains(d) || in_flight.get(d).is_some_and(|f| f.ready) || accepted.contains(d)
            };
            if c.event.header.deps.iter().all(is_ready) {
                ready.insert(c.id);
                kept_ready.push(true);
                return true;
            }
            let cost = CausalBuffer::cost(c.bytes.len());
            if used + cost > share {
                return false;
            }
            used += cost;
            kept_ready.push(false);
            true
        });
        let dropped = before - candidates.len();
        out.n_orphans_dropped += dropped;
        self.n_orphans_dropped += dropped as u64;
        kept_ready
    }

    /// Takes one signature-checked event: accept it now, or buffer it.
    fn admit(&mut self, decoded: Decoded, from: PeerId, out: &mut Ingested) {
        // The batch was checked against the archive, the buffer and the events in flight, and
        // its duplicates dropped, before the signatures; since then only candidates of batches
        // in flight (this one only as a copy with another signature, which `finish_inner`
        // checks against the archive: a batch begun later took the same copy for a duplicate)
        // and the buffered events they released (never an event in flight, which was not
        // buffered when its batch began and is admitted only now) were accepted or buffered.
        // This check is for safety (and catches a contested copy buffered meanwhile), and cheap.
        if self.buffer.contains(&decoded.id) {
            out.n_duplicate += 1;
            return;
        }
        self.detect_equivocation(&decoded, out);
        let missing: Vec<EventId> =
            decoded.event.header.deps.iter().filter(|d| !self.archive.contains(d)).copied().collect();
        if missing.is_empty() {
            self.accept_cascade(decoded, from, out);
            return;
        }
        for dep in &missing {
            if !self.buffer.contains(dep) && !out.missing.contains(dep) {
                out.missing.push(*dep);
            }
        }
        let evicted = self.buffer.insert(decoded, from, &missing);
        out.n_buffered += 1;
        out.n_evicted += evicted.len();
    }

    /// Accepts `first` (all deps accepted) and then every buffered event it unblocks.
    fn accept_cascade(&mut self, first: Decoded, from: PeerId, out: &mut Ingested) {
        let mut ready = vec![(first, from)];
        while let Some((decoded, from)) = ready.pop() {
            let id = decoded.id;
            match self.accept_one(decoded, out) {
                Ok(()) => {
                    let mut unblocked = self.buffer.on_accepted(&id);
                    // Pop order is last-first; reverse so events leave in arrival order.
                    unblocked.reverse();
                    ready.extend(unblocked);
                }
                Err(reason) => out.rejected.push(Rejection { from, id: Some(id), reason }),
            }
        }
    }

    /// Rules 5 and 6, then the event joins the accepted set.
    fn accept_one(&mut self, decoded: Decoded, out: &mut Ingested) -> Result<(), Reject> {
        // Every dep is accepted (the callers checked), so the archive has its meta.
        let deps: Vec<(EventId, EventMeta)> = decoded
            .event
            .header
            .deps
            .iter()
            .filter_map(|d| self.archive.meta(d).map(|meta| (*d, meta)))
            .collect();
        debug_assert_eq!(deps.len(), decoded.event.header.deps.len(), "every dep is accepted");
        // Every dep is accepted, so every op naming the author in its causal past is too: a
        // key the roster does not hold is no member there (rule 3).
        let key = decoded.event.header.author;
        let author = self.roster.idx(&key).ok_or(Reject::NotMember)?;
        check_causal(&decoded, author, deps.iter().map(|(_, d)| (d.author, d.seq, d.lamport)))?;
        let seq = decoded.event.header.seq;
        let meta = EventMeta::from_deps(
            author,
            seq,
            decoded.event.header.lamport,
            self.chains.len(),
            deps.iter().map(|(id, meta)| (*id, meta)),
        );
        // The clock of the causal past, the event itself left out (rule V1 onwards read it):
        // `meta.clock` counts the event's own seq for its author, and an equivocating author's
        // twin at that seq is not in the past. Only membership rules read it, so a cluster whose
        // membership never changed does not build it for every event.
        let carries_membership = decoded.event.ops.iter().any(Op::is_membership);
        let past_clock: Box<[u64]> = if carries_membership || !self.members.is_genesis_only() {
            clock_of_deps(self.chains.len(), deps.iter().map(|(_, meta)| meta))
        } else {
            Box::default()
        };
        self.reach_asked.clear();
        self.check_membership(&decoded, carries_membership, &past_clock)?;
        let own_predecessor = meta.own_pred;
        let forked_now = seq <= self.chains[author].max_seq && !self.archive.at_seq(author, seq).is_empty();
        let Decoded { event, id, bytes } = decoded;
        let seen = crate::archive::seen_clocks(self.archive.as_ref(), author, &event.ops, self.chains.len());
        let verified = Verified::new(event, id, bytes, (author, own_predecessor), meta.clock.clone(), seen);
        let chain = &mut self.chains[author];
        if let Some(pred) = own_predecessor {
            chain.tips.retain(|(t, _)| *t != pred);
        }
        chain.tips.push((id, seq));
        chain.max_seq = chain.max_seq.max(seq);
        if forked_now && chain.fork_seq.is_none_or(|f| seq < f) {
            chain.fork_seq = Some(seq);
            out.exclusions.push((author, seq));
        }
        if carries_membership {
            let roster = &self.roster;
            let clock = clock_by_key(roster, &past_clock);
            let named = self.members.record(key, seq, id, &verified.event().ops, clock);
            for key in named {
                self.index_key(key);
            }
            self.refresh_admission();
            out.membership_changed = true;
        }
        self.archive.insert(&verified, meta);
        self.remember_reach(id);
        out.accepted.push(verified);
        Ok(())
    }

    /// Rules 3 and 8 for an event `author` is about to sign at `seq` on `deps` (all accepted)
    /// with `ops`: why it would be refused, if it would. For the node's own membership ops,
    /// before it signs them.
    pub(crate) fn check_own(
        &mut self,
        author: &cairn_crypto::PublicKey,
        seq: u64,
        deps: &[EventId],
        ops: &[Op],
    ) -> Result<(), crate::membership::ChangeError> {
        use crate::membership::ChangeError;
        if self.roster.idx(author).is_none() {
            return Err(ChangeError::NotVoter(*author));
        }
        let metas: Vec<EventMeta> = deps.iter().filter_map(|d| self.archive.meta(d)).collect();
        let past_clock = clock_of_deps(self.chains.len(), metas.iter());
        let past = self.past_of(deps, &past_clock);
        let roster = &self.roster;
        let clock = clock_by_key(roster, &past_clock);
        MemberState::check(&past, author, seq, ops, clock).map_err(|reject| match reject {
            MemberReject::NotMember => ChangeError::NotVoter(*author),
            MemberReject::Op(error) => error,
        })
    }

    /// The resolution of the causal past of an event on `deps` (all accepted), whose clock is
    /// `past_clock` (the deps', see [`clock_of_deps`]).
    fn past_of(&mut self, deps: &[EventId], past_clock: &[u64]) -> std::sync::Arc<Resolution> {
        let (roster, chains, archive, memo) =
            (&self.roster, &self.chains, self.archive.as_ref(), &self.reach_memo);
        let clock = clock_by_key(roster, past_clock);
        let fork_seq = |k: &cairn_crypto::PublicKey| roster.idx(k).and_then(|i| chains.get(i)?.fork_seq);
        let asked = &mut self.reach_asked;
        let visits = &mut self.reach_visits;
        asked.clear();
        self.members.past(clock, fork_seq, |event| {
            let held = reaches(archive, memo, deps, event, visits);
            asked.push((*event, held));
            held
        })
    }

    /// Events the walks of [`reaches`] have looked at since start: the cost, counted exactly,
    /// of telling which events of an equivocating key's fork a causal past holds.
    pub fn reach_visits(&self) -> u64 {
        self.reach_visits
    }

    /// Keeps the answers the membership check of the accepted event `id` asked for.
    fn remember_reach(&mut self, id: EventId) {
        if self.reach_asked.is_empty() {
            return;
        }
        if self.reach_memo.len() + self.reach_asked.len() > REACH_MEMO_MAX {
            self.reach_memo.clear();
        }
        for (target, held) in self.reach_asked.drain(..) {
            self.reach_memo.insert((target, id), held);
        }
    }

    /// Rules 3 and 8 (`docs/PROTOCOL.md` §17, V1 to V5): the author may author the event at its
    /// seq, and may carry its membership ops (`carries_membership`: it has some), in its causal
    /// past, whose clock is `past_clock` (empty when neither the event nor any accepted one
    /// carries a membership op: then the genesis decides).
    fn check_membership(
        &mut self,
        decoded: &Decoded,
        carries_membership: bool,
        past_clock: &[u64],
    ) -> Result<(), Reject> {
        let ops = &decoded.event.ops;
        if carries_membership && !self.config.membership_changes {
            return Err(Reject::BadMembership);
        }
        if !carries_membership && self.members.is_genesis_only() {
            // No membership op anywhere: the genesis is in force, and the author is in it
            // (the roster holds only genesis keys).
            return Ok(());
        }
        let past = self.past_of(&decoded.event.header.deps, past_clock);
        let roster = &self.roster;
        let clock = clock_by_key(roster, past_clock);
        let header = &decoded.event.header;
        MemberState::check(&past, &header.author, header.seq, ops, clock).map_err(|reject| match reject {
            MemberReject::NotMember => Reject::NotMember,
            MemberReject::Op(_) => Reject::BadMembership,
        })
    }

    /// Records evidence if another signed event with the same author and seq is known. The
    /// least evidence for an author is the pair of the two smallest ids at its lowest fork
    /// seq, so comparing each new event with the smallest other id known at its seq finds it
    /// whatever the order of arrival.
    fn detect_equivocation(&mut self, decoded: &Decoded, out: &mut Ingested) {
        let key = decoded.event.header.author;
        let seq = decoded.event.header.seq;
        // A key no accepted event names has no accepted events.
        let Some(author) = self.roster.idx(&key) else { return };
        let accepted = self.at_seq(author, seq);
        let buffered = self.buffer.same_seq(&key, seq);
        let smallest_other = accepted.iter().chain(buffered).filter(|id| **id != decoded.id).min().copied();
        let Some(other) = smallest_other.and_then(|id| self.signed_header_of(&id)) else { return };
        let mine = SignedHeader { header: decoded.event.header.clone(), sig: decoded.event.sig };
        let evidence = Evidence::new(mine, other);
        if self.keep_evidence(author, evidence.clone()) {
            out.evidence.push(evidence);
        }
    }

    fn signed_header_of(&self, id: &EventId) -> Option<SignedHeader> {
        if let Some(buffered) = self.buffer.get(id) {
            let event = &buffered.event;
            return Some(SignedHeader { header: event.header.clone(), sig: event.sig });
        }
        let event = self.archive.event(id)?.event()?;
        Some(SignedHeader { header: event.header, sig: event.sig })
    }

    /// Keeps `evidence` if it is the least this node has for `author`.
    fn keep_evidence(&mut self, author: MemberIdx, evidence: Evidence) -> bool {
        match self.evidence.get(&author) {
            Some(held) if evidence_order(held) <= evidence_order(&evidence) => false,
            _ => {
                self.evidence.insert(author, evidence);
                true
            }
        }
    }

    /// Evidence from a peer: verified, and kept if it is the least for its author. Returns
    /// whether it was kept; the caller should then fetch the two events if they are unknown.
    pub fn add_evidence(&mut self, evidence: Evidence) -> Result<bool, EvidenceError> {
        let author = self.roster.idx(&evidence.author()).ok_or(EvidenceError::NotMember)?;
        // Evidence that would not replace what is held is dropped before its signatures are
        // checked: every `Tips` repeats the sender's evidence.
        if self.evidence.get(&author).is_some_and(|held| evidence_order(held) <= evidence_order(&evidence)) {
            return Ok(false);
        }
        evidence.verify(&self.roster)?;
        Ok(self.keep_evidence(author, evidence))
    }
}

/// A clock read by key: `clock`'s entry for the key's index in `roster`, 0 for a key it does not
/// index or past the clock's end.
fn clock_by_key<'a>(roster: &'a Roster, clock: &'a [u64]) -> impl Fn(&cairn_crypto::PublicKey) -> u64 + 'a {
    move |key| roster.idx(key).and_then(|idx| clock.get(idx).copied()).unwrap_or(0)
}

/// The clock of a causal past made of `deps` and their pasts: the pointwise maximum of the deps'
/// clocks, `n` entries. Unlike an event's own clock ([`EventMeta::from_deps`]) it does not count
/// the event itself.
fn clock_of_deps<'a>(n: usize, deps: impl Iterator<Item = &'a EventMeta>) -> Box<[u64]> {
    let mut clock = vec![0u64; n].into_boxed_slice();
    for dep in deps {
        for (mine, theirs) in clock.iter_mut().zip(dep.clock.iter()) {
            *mine = (*mine).max(*theirs);
        }
    }
    clock
}

/// Whether the causal past of an event on `deps` (all accepted) holds the accepted event
/// `target`: a walk down from the deps that leaves out every event whose clock shows it cannot
/// hold `target` (its entry for `target`'s author below `target`'s seq, or a lamport not above
/// `target`'s), and stops at events whose answer `memo` holds. Only asked where a key
/// equivocated and carried membership ops at or past its fork seq, where the clock alone cannot
/// tell which of two events of one seq a past holds.
fn reaches(
    archive: &dyn Archive,
    memo: &BTreeMap<(EventId, EventId), bool>,
    deps: &[EventId],
    target: &EventId,
    visits: &mut u64,
) -> bool {
    let Some(goal) = archive.meta(target) else { return false };
    let mut stack: Vec<EventId> = deps.to_vec();
    let mut visited: BTreeSet<EventId> = BTreeSet::new();
    while let Some(id) = stack.pop() {
        if id == *target {
            return true;
        }
        if !visited.insert(id) {
            continue;
        }
        *visits += 1;
        match memo.get(&(*target, id)) {
            Some(true) => return true,
            Some(false) => continue,
            None => {}
        }
        let Some(meta) = archive.meta(&id) else { continue };
        if meta.lamport <= goal.lamport || meta.clock.get(goal.author).is_none_or(|&seq| seq < goal.seq) {
            continue;
        }
        if let Some(event) = archive.event(&id).and_then(|stored| stored.event()) {
            stack.extend(event.header.deps);
        }
    }
    false
}

/// The order in which evidence for one author is preferred: its rank, then (for the same two
/// ids signed again with other nonces) the smaller encoding, so every node settles on the same
/// bytes.
fn evidence_order(evidence: &Evidence) -> ((u64, EventId, EventId), Vec<u8>) {
    (evidence.rank(), evidence.encode())
}
