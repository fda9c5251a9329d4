//! The CRDT document: registers, counters and observed-remove sets over accepted events. It
//! knows nothing of signatures or the network; it receives [`Verified`] events in a causal order
//! and exclusions of equivocators, and its state is a function of the set of included ops alone.
//!
//! # Semantics
//!
//! An op is named by its event and its index in the event. Op X (author `a`, seq `s`) is in the
//! causal past of op Y when both are in the same event and X comes first, or when they are in
//! different events and `Y.clock[a] >= s`. That clock test is exact for included ops: ops of an
//! equivocator from its lowest fork seq on are excluded, and below that seq its chain is unique.
//! Until a fork is excluded the test can misjudge the forked ops; [`Document::exclude`] retracts
//! them and recomputes their keys, so from then on the state is exact again (the argument is in
//! the section Exclusion below).
//!
//! - Registers (multi-value): a `Put` or `Del` supersedes exactly the included puts on its key in
//!   its causal past. The siblings are the included puts that nothing included supersedes; the
//!   visible value is the greatest sibling by `(lamport, author index, event id, op index)`.
//! - Causal contexts: `PutSeen`, `DelSeen`, `AddSeen` and `RemoveSeen` carry what their writer
//!   had read ([`crate::Seen`]), and supersede exactly the ops on their key (or element) in the
//!   causal past of a named event, or in it: op X (author `a`, seq `s`) when the op's *seen
//!   clock* (the pointwise max of the named events' clocks, `crate::archive::seen_clocks`)
//!   has `seen[a] >= s`, and never an op of its own event. Without a context an op supersedes
//!   its causal past. Either way what an op supersedes is *closed downwards*: an op in the
//!   causal past of one it supersedes is superseded too (it is in the named event's past as
//!   well). Below, "X sees Y" and `⊑` mean this relation; the argument of the section
//!   Exclusion uses only that it lies within the causal past, is closed downwards (so
//!   transitive), and is decided by clocks that are exact for unforked ops. A context that
//!   named events by a bare vector of seqs would not be closed downwards, and an exclusion
//!   could then bring back an op that an included op still supersedes.
//! - Counters: the included `Incr` deltas of each author are summed in an `i128`; the value is
//!   the sum over authors.
//! - Sets (observed-remove): an `Add` makes a tag; a `Remove` takes out exactly the tags of its
//!   element in its causal past, so a concurrent add wins. The members are the elements with a
//!   live tag.
//!
//! # Digest
//!
//! [`Document::digest`] is `SHA-256("cairn/document/v2" ‖ state)`, where `state` is the visible
//! state in this layout. Every integer is little-endian; `u64(n)` is 8 bytes, `i128(n)` 16 bytes,
//! and `bytes(b)` is `u64(len(b)) ‖ b`. Keys sort by their bytes, lexicographically.
//!
//! ```text
//! state     = registers ‖ counters ‖ sets
//! registers = u64(number of registers with a sibling)
//!             then for each such register, in key order:
//!               bytes(key) ‖ u64(number of siblings)
//!               then for each sibling, ascending by (lamport, author index, event id, op index):
//!                 event id (32 bytes) ‖ u64(op index) ‖ u64(author index) ‖ u64(lamport)
//!                 ‖ u64(len(value)) ‖ SHA-256("cairn/value/v1" ‖ value)
//! counters  = u64(number of counters with a non-zero author total)
//!             then for each such counter, in key order:
//!               bytes(key) ‖ u64(number of non-zero author totals)
//!               then for each, ascending by author index: u64(author index) ‖ i128(total)
//! sets      = u64(number of sets with a member)
//!             then for each such set, in key order:
//!               bytes(key) ‖ u64(number of members)
//!               then each member in ascending byte order: bytes(member)
//! ```
//!
//! A key with no sibling, no non-zero author total or no member does not appear, so a document
//! whose puts were all deleted has the digest of the empty document.
//!
//! # Memory
//!
//! The document keeps the live state, not the history. For each register key and each set
//! element it keeps the *frontier*: the included ops on it (puts and dels; adds and removes)
//! that no included op applied after them has in its causal past, each with its event's id,
//! author, seq, lamport and clock (shared by the entries of one event) and a put's value. The
//! siblings are the puts of the frontier; an element is a member when its frontier holds an add
//! (an add is a live tag when no remove is above it, and then the maximal ops above it are adds,
//! which are in the frontier). For each counter key it keeps each author's non-zero total. So
//! memory grows with the keys, the elements and the concurrent writes on each, not with the ops
//! ever applied: a register overwritten 100 000 times by one writer holds one entry. Beyond the
//! visible state the frontier keeps tombstones (the dels of a deleted register, the removes of
//! a removed element): a later exclusion that brings back what an excluded op superseded must
//! still see what else supersedes it.
//!
//! History lives with the caller. When an op takes entries out of a frontier, it *covers* them:
//! [`Document::apply`] returns those records ([`Covered`]), the caller keeps them with the events
//! (the node in a [`MemoryHistory`], the daemon on disk, in the same commit as the event) and
//! hands both back through a [`DocHistory`] to [`Document::exclude`]. [`Document::encode_key`]
//! and [`Document::restore_key`] persist the state key by key, so that a restart reads the
//! document instead of replaying the history.
//!
//! # Exclusion
//!
//! [`Document::exclude`] of `author` from `from_seq` reads the author's events with seqs from
//! `from_seq` up to its previous exclusion seq (the only ones applied and not yet retracted),
//! subtracts their counter deltas from the author's totals, and for each register key and set
//! element they wrote to, with `E` their ops there, `F` the frontier and `I` the included ops:
//! the pool `P` is `F` without `E`, plus every included op named in the covered list of an op
//! of `E`; the new frontier is the maximal ops of `P` (those no other op of `P` has in its
//! causal past), and each op of `P` left out is recorded as covered by an op of `P` that has it
//! in its past (returned as [`Covered`] records, like `apply`'s). The cost is bounded by the
//! author's own excluded ops and what they covered, never by a key's history; and since each
//! exclusion reads only the seqs below the previous one, revealing forks at ever lower seqs
//! makes a node read each event at most once.
//!
//! Why that equals a replay of the included ops. Two facts about the causal test `⊑`: it is
//! complete (an op in `Y`'s causal past passes it, since `Y.clock` is the highest seq of each
//! author in `Y`'s past); and it is sound for an op `X` (author `b`, seq `s`) unless `b` has two
//! accepted events at some seq `≤ s` (call `X` *forked*): if `Y.clock[b] >= s`, `Y`'s past holds
//! an event of `b` at a seq `≥ s`, whose own chain (each event depends on its author's previous
//! one) passes seq `s` at an accepted event, which is `X`'s unless `b` forked there.
//!
//! - Invariant C, in every state: each included op not in `F` is in the covered list of an
//!   included op that it passes `⊑` against. `apply` keeps it (an op leaves `F` only when a new
//!   op sees it, and is recorded as covered by that op); `exclude` keeps it (each op of `P` left
//!   out is recorded against an op of `P`; an op covered only by an excluded op is in `P`).
//! - Call a key (or an element) *clean* when none of its included ops is forked; then `⊑`
//!   between its included ops is exactly causal precedence, a partial order that the apply
//!   order extends. Claim: on a clean key, `F` is the set of maximal included ops. A new empty
//!   key is clean with `F` empty. Forks only appear as events arrive and ops only leave `I` by
//!   exclusion, so a key that is clean after a step was clean before it unless that step is an
//!   exclusion with excluded ops on the key. An apply on a clean key adds an op that every
//!   earlier op it sees precedes and that nothing applied has in its past: it is maximal, and
//!   the ops it covers are exactly those it makes non-maximal. An exclusion that does not touch
//!   the key leaves `I` and `F` alone. An exclusion with `E` non-empty on the key, with the key
//!   clean afterwards (whatever `F` was before): every maximal `m` of `I \ E` is in `P`, since
//!   either `m ∈ F` or by C it is covered by an included `c ⊒ m` which, `m` being maximal, is in
//!   `E`; and `P ⊆ I \ E` is clean, so the maximal ops of `P` are exactly those maximal in
//!   `I \ E` (an op below another op of `I \ E` is below a maximal one, which is in `P`).
//! - A replay (apply order, each put or del superseding the puts it sees, each remove taking
//!   out the tags it sees) gives, when `⊑` is causal precedence and the apply order extends
//!   it, the puts not below any included write (the frontier's puts) and the elements with an
//!   add not below any remove (those whose frontier holds an add).
//!
//! So whenever no included op is forked (every fork of every author is excluded at or below
//! its seq), the document equals a replay of the included ops, and so does its digest. The
//! adapter reports each fork's exclusion with the event that reveals it and the node applies
//! exclusions before it reports changes, so every state a node shows is such a state. In
//! between, with a fork not yet excluded, the test misjudges the forked ops and neither this
//! document nor a replay is a function of the included ops; they can differ there (a remove
//! that sees a forked add, which covered an earlier add of the element, hides the element
//! here but not in a replay), until the exclusion makes both exact again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cairn_crypto::{Domain, Hasher, PublicKey};

use crate::archive::SeenClocks;
use crate::event::{EventId, Op};
use crate::genesis::MemberIdx;
use crate::verified::Verified;

mod counter;
mod frontier;
mod history;
mod persist;
#[cfg(test)]
mod reference;
mod register;
mod set;
#[cfg(test)]
mod tests;

use counter::CounterState;
pub use history::{DocHistory, HistoricEvent, MemoryHistory};
pub use persist::DocumentDecodeError;
pub use register::VALUE_INLINE_BYTES_MAX;
use register::{HeldValue, RegisterEntry, RegisterState};
use set::{SetEntry, SetState};

/// An op: its event and its index in the event.
pub type OpId = (EventId, u32);

/// One value of a register: a put that no included op supersedes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sibling {
    /// The value written, when `value_held`.
    pub value: Vec<u8>,
    /// Whether `value` holds the value. The document holds values of at most
    /// [`VALUE_INLINE_BYTES_MAX`] bytes; a larger one is op `op_idx` of event `event_id`, which
    /// `Node::register` reads from the archive (and then sets this).
    pub value_held: bool,
    /// The author of the put's event.
    pub author: MemberIdx,
    /// The lamport timestamp of the put's event.
    pub lamport: u64,
    /// The put's event.
    pub event_id: EventId,
    /// The put's index in its event.
    pub op_idx: u32,
}

/// A register as read: all siblings, and the one shown as its value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegisterRead {
    /// The greatest sibling by `(lamport, author, event id, op index)`; `None` when there is none.
    pub visible: Option<Sibling>,
    /// Every sibling, ascending by `(lamport, author, event id, op index)`.
    pub siblings: Vec<Sibling>,
}

impl RegisterRead {
    /// The causal context of this read: the events of its siblings, sorted and unique. A write
    /// or delete that carries it supersedes exactly what this read saw (module documentation);
    /// the node drops the named events another one has in its causal past before it signs
    /// (`Node::reduce_seen`).
    pub fn context(&self) -> Vec<EventId> {
        let mut events: Vec<EventId> = self.siblings.iter().map(|sibling| sibling.event_id).collect();
        events.sort_unstable();
        events.dedup();
        events
    }
}

/// The events of `ops` that no other of them has in its causal past, sorted and unique: a
/// causal context with the seen clock of all of them (an event in the causal past of another
/// adds nothing to the join of their clocks), at most one event per author that has not
/// forked, so never more than the authors.
fn reduced_context<'a>(ops: impl Iterator<Item = &'a OpMeta>) -> Vec<EventId> {
    let mut events: Vec<&EventMeta> = ops.map(|op| &*op.event).collect();
    events.sort_unstable_by_key(|event| event.id);
    events.dedup_by_key(|event| event.id);
    let in_past_of_another = |event: &EventMeta| {
        events.iter().any(|other| {
            other.id != event.id && other.clock.get(event.author).is_some_and(|&seq| seq >= event.seq)
        })
    };
    events.iter().filter(|event| !in_past_of_another(event)).map(|event| event.id).collect()
}

/// The first byte of a causal context as clients hold it ([`encode_context`]).
pub const CONTEXT_VERSION: u8 = 1;

/// Most events a client's causal context may name: a read of a register with that many
/// siblings. The node keeps of them only those no other has in its causal past (at most one per
/// author that has not forked) before it signs, within `crate::limits::SEEN_EVENTS_MAX`.
pub const CONTEXT_EVENTS_MAX: usize = 1024;

/// A causal context as clients hold it, opaque to them: [`CONTEXT_VERSION`] then the named
/// events' ids, 32 bytes each, strictly ascending.
pub fn encode_context(events: &[EventId]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 32 * events.len());
    out.push(CONTEXT_VERSION);
    for id in events {
        out.extend_from_slice(&id.0);
    }
    out
}

/// Why a client's causal context did not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// Empty, or a first byte other than [`CONTEXT_VERSION`].
    #[error("not a causal context of this version (it must come from a read of this API)")]
    Version,
    /// Not a whole number of event ids after the version.
    #[error("a causal context's ids are 32 bytes each; {0} bytes are left over")]
    Length(usize),
    /// The ids are not strictly ascending.
    #[error("a causal context's ids must be strictly ascending")]
    Order,
    /// More ids than [`CONTEXT_EVENTS_MAX`].
    #[error("a causal context names {0} events, over the limit of {CONTEXT_EVENTS_MAX}")]
    TooMany(usize),
}

/// The events a client's causal context names ([`encode_context`]'s form).
pub fn decode_context(bytes: &[u8]) -> Result<Vec<EventId>, ContextError> {
    let Some((&CONTEXT_VERSION, ids)) = bytes.split_first() else {
        return Err(ContextError::Version);
    };
    if ids.len() % 32 != 0 {
        return Err(ContextError::Length(ids.len() % 32));
    }
    let n = ids.len() / 32;
    if n > CONTEXT_EVENTS_MAX {
        return Err(ContextError::TooMany(n));
    }
    let events: Vec<EventId> = ids
        .chunks_exact(32)
        .map(|chunk| EventId(chunk.try_into().expect("chunks_exact gives 32 bytes")))
        .collect();
    if events.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err(ContextError::Order);
    }
    Ok(events)
}

/// The key space a key belongs to; each type of key has its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyKind {
    /// A register (`Put`, `Del`).
    Register,
    /// A counter (`Incr`).
    Counter,
    /// An observed-remove set (`Add`, `Remove`).
    Set,
}

/// A key whose visible state changed: its siblings, its author totals or its members.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Change {
    /// The key space.
    pub kind: KeyKind,
    /// The key.
    pub key: Vec<u8>,
}

/// The frontier entries one op took out of its key's (or element's) frontier: they are in its
/// causal past. The caller keeps these with the history and returns them through
/// [`DocHistory::covered`]: the covered list of an op is every record naming it, in any order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Covered {
    /// The op that covers.
    pub by: OpId,
    /// The ops it covers, all on the same key (and set element) as `by`.
    pub ops: Vec<OpId>,
}

/// What [`Document::apply`] or [`Document::exclude`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use = "the covered records belong in the history that a later exclusion reads"]
pub struct Applied {
    /// The keys whose visible state changed, sorted.
    pub changes: Vec<Change>,
    /// New covered records, for the history. Only ops that covered something appear.
    pub covered: Vec<Covered>,
}

/// The replicated CRDT document. Call order: [`Document::apply`] for each accepted event, in a
/// causal order; [`Document::exclude`] whenever an author is proved to have equivocated, before
/// or after its events arrived; the getters at any time.
#[derive(Debug)]
pub struct Document {
    /// The key of each author index: the node's roster (`crate::Roster`), which only grows.
    authors: Vec<PublicKey>,
    /// Per author index, the lowest seq whose ops are excluded; `u64::MAX` for an author in
    /// good standing.
    excluded_from: Vec<u64>,
    registers: BTreeMap<Vec<u8>, RegisterState>,
    counters: BTreeMap<Vec<u8>, CounterState>,
    sets: BTreeMap<Vec<u8>, SetState>,
    /// The keys whose persisted state may have changed since the last [`Document::take_dirty`],
    /// when tracking is on.
    dirty: Option<BTreeSet<(KeyKind, Vec<u8>)>>,
}

/// What the document keeps of an event: what orders siblings and decides the causal past.
#[derive(Debug, PartialEq, Eq)]
struct EventMeta {
    id: EventId,
    author: MemberIdx,
    /// The author's key: what orders siblings, since indices are local to a node.
    author_key: PublicKey,
    seq: u64,
    lamport: u64,
    clock: Box<[u64]>,
}

impl EventMeta {
    fn of(event: &Verified) -> Self {
        Self {
            id: event.id(),
            author: event.author_idx(),
            author_key: event.event().header.author,
            seq: event.seq(),
            lamport: event.lamport(),
            clock: event.clock().into(),
        }
    }
}

/// One op of a register or a set; the ops of one event share their [`EventMeta`].
#[derive(Clone, Debug)]
struct OpMeta {
    event: Arc<EventMeta>,
    op_idx: u32,
    /// For an op with a causal context, its seen clock (`crate::archive::seen_clocks`). Boxed
    /// behind a thin pointer, so that an op without one costs 8 bytes here, not 16.
    seen: Option<Arc<Box<[u64]>>>,
}

impl OpMeta {
    /// The op `op_idx` of `event`, with its seen clock from `seen` if it has one.
    fn new(event: Arc<EventMeta>, op_idx: u32, seen: &[(u32, Box<[u64]>)]) -> Self {
        let seen = seen.iter().find(|(idx, _)| *idx == op_idx).map(|(_, clock)| Arc::new(clock.clone()));
        Self { event, op_idx, seen }
    }

    /// Whether `self` is in the causal past of `later`.
    fn is_seen_by(&self, later: &Self) -> bool {
        if self.event.id == later.event.id {
            self.op_idx < later.op_idx
        } else {
            later.event.clock.get(self.event.author).is_some_and(|&seq| seq >= self.event.seq)
        }
    }

    /// Whether `later` supersedes `self` (both on one key or element): without a causal
    /// context, when `self` is in its causal past; with one, when `self` is in the causal past
    /// of an event the context names (never an op of `later`'s own event). Either way the ops
    /// `later` supersedes are closed downwards: an op in the causal past of one it supersedes
    /// is superseded too, which the exclusion's argument needs (module documentation).
    fn is_superseded_by(&self, later: &Self) -> bool {
        match &later.seen {
            None => self.is_seen_by(later),
            Some(seen) => {
                self.event.id != later.event.id
                    && seen.get(self.event.author).is_some_and(|&seq| seq >= self.event.seq)
            }
        }
    }

    /// The sibling order: `(lamport, author key, event id, op index)`.
    fn order_key(&self) -> (u64, PublicKey, EventId, u32) {
        (self.event.lamport, self.event.author_key, self.event.id, self.op_idx)
    }

    fn id(&self) -> OpId {
        (self.event.id, self.op_idx)
    }

    #[cfg(test)]
    fn is_excluded(&self, author: MemberIdx, from_seq: u64) -> bool {
        self.event.author == author && self.event.seq >= from_seq
    }
}

impl Document {
    /// An empty document whose author indices name `authors` (the node's roster).
    pub fn new(authors: &[PublicKey]) -> Self {
        Self {
            authors: authors.to_vec(),
            excluded_from: vec![u64::MAX; authors.len()],
            registers: BTreeMap::new(),
            counters: BTreeMap::new(),
            sets: BTreeMap::new(),
            dirty: None,
        }
    }

    /// Applies an accepted event: returns the keys whose visible state changed, sorted, and
    /// what its ops covered.
    ///
    /// Events must arrive in a causal order (each after all of its deps) and each at most once;
    /// the caller guarantees both. An event of an author excluded at or below its seq is skipped.
    ///
    /// # Panics
    ///
    /// If the event's author or clock does not fit the document's authors.
    pub fn apply(&mut self, event: &Verified) -> Applied {
        let author = event.author_idx();
        let n_authors = self.authors.len();
        assert!(
            self.authors.get(author) == Some(&event.event().header.author),
            "author {author} of a document with {n_authors} authors"
        );
        assert!(event.clock().len() <= n_authors, "an event's clock has an entry per author at most");
        if event.seq() >= self.excluded_from[author] {
            return Applied::default();
        }
        let ops = &event.event().ops;
        // Ops on different keys are independent, so the ops are applied grouped by key (and by
        // element within a set), each group in index order. That looks up every key once and
        // compares its visible state once, before and after the event.
        let order = key_order(ops);
        let mut meta = None;
        let mut event_meta = || Arc::clone(meta.get_or_insert_with(|| Arc::new(EventMeta::of(event))));
        let mut applied = Applied::default();
        for group in order.chunk_by(|&a, &b| same_key(ops, a, b)) {
            let (kind, key, _) = group_key(&ops[group[0] as usize]);
            let (changed, dirty) = match kind {
                KeyKind::Register => {
                    let covered = &mut applied.covered;
                    (
                        self.apply_register(key, ops, group, event.seen_clocks(), &mut event_meta, covered),
                        true,
                    )
                }
                KeyKind::Counter => {
                    let changed = self.apply_counter(author, key, ops, group);
                    (changed, changed)
                }
                KeyKind::Set => {
                    let covered = &mut applied.covered;
                    (self.apply_set(key, ops, group, event.seen_clocks(), &mut event_meta, covered), true)
                }
            };
            if changed {
                applied.changes.push(Change { kind, key: key.to_vec() });
            }
            if dirty {
                self.mark_dirty(kind, key);
            }
        }
        applied
    }

    fn apply_register(
        &mut self,
        key: &[u8],
        ops: &[Op],
        group: &[u32],
        seen: &SeenClocks,
        event_meta: &mut impl FnMut() -> Arc<EventMeta>,
        covered: &mut Vec<Covered>,
    ) -> bool {
        let state = entry(&mut self.registers, key);
        let before = state.sibling_ids();
        for &op_idx in group {
            let value = match &ops[op_idx as usize] {
                Op::Put { value, .. } | Op::PutSeen { value, .. } => Some(HeldValue::of(value)),
                Op::Del { .. } | Op::DelSeen { .. } => None,
                op => unreachable!("{op:?} in a register group"),
            };
            let op = OpMeta::new(event_meta(), op_idx, seen);
            let by = op.id();
            note_covered(covered, by, frontier::advance(&mut state.frontier, RegisterEntry { op, value }));
        }
        state.sibling_ids() != before
    }

    fn apply_counter(&mut self, author: MemberIdx, key: &[u8], ops: &[Op], group: &[u32]) -> bool {
        let delta = group
            .iter()
            .map(|&op_idx| match &ops[op_idx as usize] {
                Op::Incr { delta, .. } => i128::from(*delta),
                op => unreachable!("{op:?} in a counter group"),
            })
            .fold(0, checked_sum);
        if delta == 0 {
            return false;
        }
        entry(&mut self.counters, key).add(author, delta);
        if self.counters.get(key).is_some_and(CounterState::is_empty) {
            self.counters.remove(key);
        }
        true
    }

    fn apply_set(
        &mut self,
        key: &[u8],
        ops: &[Op],
        group: &[u32],
        seen: &SeenClocks,
        event_meta: &mut impl FnMut() -> Arc<EventMeta>,
        covered: &mut Vec<Covered>,
    ) -> bool {
        let state = entry(&mut self.sets, key);
        let mut changed = false;
        let mut start = 0;
        while start < group.len() {
            let (_, _, element) = group_key(&ops[group[start] as usize]);
            let end = start
                + group[start..].partition_point(|&op_idx| group_key(&ops[op_idx as usize]).2 == element);
            let element_state = entry(&mut state.elements, element);
            let was_member = element_state.is_member();
            for &op_idx in &group[start..end] {
                let is_add = match &ops[op_idx as usize] {
                    Op::Add { .. } | Op::AddSeen { .. } => true,
                    Op::Remove { .. } | Op::RemoveSeen { .. } => false,
                    op => unreachable!("{op:?} in a set group"),
                };
                let op = OpMeta::new(event_meta(), op_idx, seen);
                let by = op.id();
                note_covered(
                    covered,
                    by,
                    frontier::advance(&mut element_state.frontier, SetEntry { op, is_add }),
                );
            }
            changed |= update_membership(&mut state.n_members, was_member, element_state.is_member());
            start = end;
        }
        changed
    }

    /// Excludes every op of `author` with `seq >= from_seq` (the author's lowest fork seq):
    /// returns the keys whose visible state changed, sorted, and the new covered records.
    ///
    /// Exclusion only ever lowers: a `from_seq` at or above the current one changes nothing.
    /// Ops already applied are retracted and their keys recomputed as if the ops had never been
    /// applied; later events of `author` from `from_seq` on are skipped by [`Document::apply`].
    /// `history` must hold every event applied to this document and the covered records of
    /// every earlier `apply` and `exclude`; this call reads only the author's events with
    /// `from_seq <= seq <` the previous exclusion seq, their ops' covered lists and the events
    /// those name. The module documentation (section Exclusion) shows why the result equals a
    /// replay of the included ops.
    ///
    /// # Panics
    ///
    /// If `author` is not a member index, or if `history` breaks its contract: a covered list
    /// names an event it does not return, an op that is not on the covering op's key, or an
    /// event whose author or clock does not fit the document.
    pub fn exclude(&mut self, author: MemberIdx, from_seq: u64, history: &dyn DocHistory) -> Applied {
        assert!(author < self.excluded_from.len(), "author {author} is not a member index");
        let until = self.excluded_from[author];
        if from_seq >= until {
            return Applied::default();
        }
        self.excluded_from[author] = from_seq;

        // The excluded ops, by what they wrote to; each event once.
        let mut registers: BTreeMap<Vec<u8>, Vec<OpId>> = BTreeMap::new();
        let mut counters: BTreeMap<Vec<u8>, i128> = BTreeMap::new();
        let mut sets: BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<OpId>>> = BTreeMap::new();
        let mut read = BTreeSet::new();
        for event in history.events_of(author, from_seq..until) {
            if event.author != author || !(from_seq..until).contains(&event.seq) || !read.insert(event.id) {
                continue;
            }
            for (op_idx, op) in (0u32..).zip(&event.ops) {
                let id = (event.id, op_idx);
                match op {
                    Op::Put { key, .. }
                    | Op::Del { key }
                    | Op::PutSeen { key, .. }
                    | Op::DelSeen { key, .. } => registers.entry(key.clone()).or_default().push(id),
                    Op::Incr { key, delta } => {
                        let sum = counters.entry(key.clone()).or_default();
                        *sum = checked_sum(*sum, i128::from(*delta));
                    }
                    Op::Add { key, element }
                    | Op::Remove { key, element }
                    | Op::AddSeen { key, element, .. }
                    | Op::RemoveSeen { key, element, .. } => {
                        sets.entry(key.clone()).or_default().entry(element.clone()).or_default().push(id);
                    }
                    // Membership ops wrote nothing to the document.
                    Op::Propose { .. } | Op::Approve { .. } | Op::Rotate(_) => {}
                }
            }
        }

        // The loader reads the authors while the states change; exclusions are rare.
        let authors = self.authors.clone();
        let mut loader = Loader::new(history, &authors);
        let mut covered: BTreeMap<OpId, Vec<OpId>> = BTreeMap::new();
        let mut applied = Applied::default();
        for (key, excluded) in registers {
            let state = entry(&mut self.registers, &key);
            let before = state.frontier_ids();
            let before_siblings = state.sibling_ids();
            let pool = std::mem::take(&mut state.frontier);
            let excluded_from = &self.excluded_from;
            state.frontier = frontier::retract(pool, excluded_from, &excluded, history, &mut covered, |id| {
                let (op_meta, op) = loader.load(id);
                let value = match op {
                    Op::Put { key: op_key, value } | Op::PutSeen { key: op_key, value, .. }
                        if *op_key == key =>
                    {
                        Some(HeldValue::of(value))
                    }
                    Op::Del { key: op_key } | Op::DelSeen { key: op_key, .. } if *op_key == key => None,
                    _ => panic!("the history's covered list of a write on a register names {op:?}"),
                };
                RegisterEntry { op: op_meta, value }
            });
            if state.sibling_ids() != before_siblings {
                applied.changes.push(Change { kind: KeyKind::Register, key: key.clone() });
            }
            let is_empty = state.frontier.is_empty();
            if state.frontier_ids() != before {
                self.mark_dirty(KeyKind::Register, &key);
            }
            if is_empty {
                self.registers.remove(&key);
            }
        }
        for (key, delta) in counters {
            if delta == 0 {
                continue;
            }
            let state = entry(&mut self.counters, &key);
            state.add(author, delta.checked_neg().expect("a sum of i64 deltas is far from i128::MIN"));
            if state.is_empty() {
                self.counters.remove(&key);
            }
            applied.changes.push(Change { kind: KeyKind::Counter, key: key.clone() });
            self.mark_dirty(KeyKind::Counter, &key);
        }
        for (key, elements) in sets {
            let state = entry(&mut self.sets, &key);
            let mut changed = false;
            let mut dirty = false;
            for (element, excluded) in elements {
                let element_state = entry(&mut state.elements, &element);
                let was_member = element_state.is_member();
                let before = element_state.frontier_ids();
                let pool = std::mem::take(&mut element_state.frontier);
                element_state.frontier =
                    frontier::retract(pool, &self.excluded_from, &excluded, history, &mut covered, |id| {
                        let (op_meta, op) = loader.load(id);
                        let is_add = match op {
                            Op::Add { key: k, element: e } | Op::AddSeen { key: k, element: e, .. }
                                if *k == key && *e == element =>
                            {
                                true
                            }
                            Op::Remove { key: k, element: e } | Op::RemoveSeen { key: k, element: e, .. }
                                if *k == key && *e == element =>
                            {
                                false
                            }
                            _ => panic!("the history's covered list of a set op names {op:?}"),
                        };
                        SetEntry { op: op_meta, is_add }
                    });
                changed |= update_membership(&mut state.n_members, was_member, element_state.is_member());
                dirty |= element_state.frontier_ids() != before;
                if element_state.frontier.is_empty() {
                    state.elements.remove(&element);
                }
            }
            let is_empty = state.elements.is_empty();
            if changed {
                applied.changes.push(Change { kind: KeyKind::Set, key: key.clone() });
            }
            if dirty {
                self.mark_dirty(KeyKind::Set, &key);
            }
            if is_empty {
                self.sets.remove(&key);
            }
        }
        applied.covered = covered.into_iter().map(|(by, ops)| Covered { by, ops }).collect();
        applied
    }

    /// The lowest excluded seq of `author`, if it has been excluded.
    pub fn excluded_from(&self, author: MemberIdx) -> Option<u64> {
        self.excluded_from.get(author).copied().filter(|&seq| seq != u64::MAX)
    }

    /// The register `key`: its siblings and its visible value (none for an unknown key).
    pub fn register(&self, key: &[u8]) -> RegisterRead {
        let Some(state) = self.registers.get(key) else {
            return RegisterRead::default();
        };
        let siblings: Vec<Sibling> = state.siblings().map(RegisterEntry::sibling).collect();
        RegisterRead { visible: siblings.last().cloned(), siblings }
    }

    /// The counter `key`: the sum of the included deltas (0 for an unknown key).
    pub fn counter(&self, key: &[u8]) -> i128 {
        self.counters.get(key).map_or(0, CounterState::value)
    }

    /// The non-zero author totals of the counter `key`, ascending by author.
    pub fn counter_totals(&self, key: &[u8]) -> Vec<(MemberIdx, i128)> {
        self.counters
            .get(key)
            .map_or_else(Vec::new, |state| state.totals.iter().map(|(&a, &t)| (a, t)).collect())
    }

    /// The members of the set `key`, in ascending byte order (none for an unknown key).
    pub fn set_members(&self, key: &[u8]) -> Vec<Vec<u8>> {
        let Some(state) = self.sets.get(key) else {
            return Vec::new();
        };
        state.members().map(<[u8]>::to_vec).collect()
    }

    /// The members of the set `key` with their causal contexts: for each member, the events of
    /// its live adds, less those in the causal past of another. A remove that carries an
    /// element's context takes out exactly the adds this read saw, so a concurrent add stays.
    pub fn set_member_contexts(&self, key: &[u8]) -> Vec<(Vec<u8>, Vec<EventId>)> {
        let Some(state) = self.sets.get(key) else {
            return Vec::new();
        };
        state
            .elements
            .iter()
            .filter(|(_, element)| element.is_member())
            .map(|(element, element_state)| {
                let adds = element_state.frontier.iter().filter(|entry| entry.is_add).map(|entry| &entry.op);
                (element.clone(), reduced_context(adds))
            })
            .collect()
    }

    /// The registers with at least one sibling, in key order.
    pub fn register_keys(&self) -> impl Iterator<Item = &[u8]> {
        self.registers.iter().filter(|(_, state)| state.has_sibling()).map(|(key, _)| key.as_slice())
    }

    /// The counters with a non-zero author total, in key order.
    pub fn counter_keys(&self) -> impl Iterator<Item = &[u8]> {
        self.counters.iter().filter(|(_, state)| !state.is_empty()).map(|(key, _)| key.as_slice())
    }

    /// The sets with at least one member, in key order.
    pub fn set_keys(&self) -> impl Iterator<Item = &[u8]> {
        self.sets.iter().filter(|(_, state)| state.n_members > 0).map(|(key, _)| key.as_slice())
    }

    /// How many frontier entries the registers and set elements hold in all: what the document's
    /// memory grows with, besides keys, elements and counter totals. Walks every key.
    pub fn n_frontier_entries(&self) -> usize {
        let registers: usize = self.registers.values().map(|state| state.frontier.len()).sum();
        let sets: usize = self
            .sets
            .values()
            .flat_map(|state| state.elements.values())
            .map(|element| element.frontier.len())
            .sum();
        registers + sets
    }

    /// The canonical digest of the visible state; the layout is in the module documentation.
    /// Documents with equal sets of included ops have equal digests.
    pub fn digest(&self) -> [u8; 32] {
        let mut hasher = Hasher::new(Domain::Document);
        let registers: Vec<_> = self.registers.iter().filter(|(_, state)| state.has_sibling()).collect();
        update_len(&mut hasher, registers.len());
        for (key, state) in registers {
            update_bytes(&mut hasher, key);
            update_len(&mut hasher, state.siblings().count());
            for sibling in state.siblings() {
                hasher.update(&sibling.op.event.id.0);
                hasher.update(&u64::from(sibling.op.op_idx).to_le_bytes());
                hasher.update(sibling.op.event.author_key.as_bytes());
                hasher.update(&sibling.op.event.lamport.to_le_bytes());
                let (len, value_hash) = sibling.value.as_ref().expect("siblings are puts").len_and_hash();
                hasher.update(&len.to_le_bytes());
                hasher.update(&value_hash);
            }
        }
        let counters: Vec<_> = self.counters.iter().filter(|(_, state)| !state.is_empty()).collect();
        update_len(&mut hasher, counters.len());
        for (key, state) in counters {
            update_bytes(&mut hasher, key);
            update_len(&mut hasher, state.totals.len());
            let mut totals: Vec<(&PublicKey, i128)> =
                state.totals.iter().map(|(&author, &total)| (&self.authors[author], total)).collect();
            totals.sort_unstable();
            for (author, total) in totals {
                hasher.update(author.as_bytes());
                hasher.update(&total.to_le_bytes());
            }
        }
        let sets: Vec<_> = self.sets.iter().filter(|(_, state)| state.n_members > 0).collect();
        update_len(&mut hasher, sets.len());
        for (key, state) in sets {
            update_bytes(&mut hasher, key);
            update_len(&mut hasher, state.n_members);
            for member in state.members() {
                update_bytes(&mut hasher, member);
            }
        }
        hasher.finish()
    }

    /// Starts recording which keys' persisted state changes, for [`Document::take_dirty`]. Off by
    /// default, so that a caller who never persists the document does not collect keys.
    pub fn track_dirty(&mut self) {
        self.dirty.get_or_insert_with(BTreeSet::new);
    }

    /// The keys whose persisted state ([`Document::encode_key`]) may have changed since the
    /// last call (since [`Document::track_dirty`] for the first one), sorted: every key whose
    /// frontier or author totals changed, also when the visible state did not (a del replacing
    /// a del). A key whose state is gone is listed too; `encode_key` then gives `None`. Empty
    /// when tracking is off. Exclusions change [`Document::encode_exclusions`] too, which the
    /// caller persists after each [`Document::exclude`] that lowered a seq.
    pub fn take_dirty(&mut self) -> Vec<(KeyKind, Vec<u8>)> {
        self.dirty.as_mut().map_or_else(Vec::new, |dirty| std::mem::take(dirty).into_iter().collect())
    }

    /// Marks keys dirty again, for [`Document::take_dirty`]: keys taken whose state was not
    /// persisted after all. Does nothing when tracking is off.
    pub fn mark_dirty_keys(&mut self, keys: impl IntoIterator<Item = (KeyKind, Vec<u8>)>) {
        if let Some(dirty) = &mut self.dirty {
            dirty.extend(keys);
        }
    }

    /// The key of each author index.
    pub fn authors(&self) -> &[PublicKey] {
        &self.authors
    }

    /// Indexes `key` as the next author, as the node's roster did: call it with each key the
    /// roster gains, in order, before applying an event by it. Returns its index.
    pub fn add_author(&mut self, key: PublicKey) -> MemberIdx {
        if let Some(idx) = self.authors.iter().position(|k| *k == key) {
            return idx;
        }
        self.authors.push(key);
        self.excluded_from.push(u64::MAX);
        self.authors.len() - 1
    }

    /// Excludes `author` from `from_seq` in a document that has applied none of its events at
    /// or above that seq (an empty one, before a replay): nothing is retracted, so no history
    /// is read; [`Document::apply`] skips those events from now on. Only ever lowers.
    pub fn exclude_unapplied(&mut self, author: MemberIdx, from_seq: u64) {
        if let Some(seq) = self.excluded_from.get_mut(author) {
            *seq = (*seq).min(from_seq);
        }
    }

    fn mark_dirty(&mut self, kind: KeyKind, key: &[u8]) {
        if let Some(dirty) = &mut self.dirty {
            dirty.insert((kind, key.to_vec()));
        }
    }
}

/// Reads the events that candidates of an exclusion belong to, each once.
struct Loader<'h> {
    history: &'h dyn DocHistory,
    authors: &'h [PublicKey],
    events: BTreeMap<EventId, (Arc<EventMeta>, Vec<Op>, SeenClocks)>,
}

impl<'h> Loader<'h> {
    fn new(history: &'h dyn DocHistory, authors: &'h [PublicKey]) -> Self {
        Self { history, authors, events: BTreeMap::new() }
    }

    /// The meta and the op of `id`, from the history.
    fn load(&mut self, (event_id, op_idx): OpId) -> (OpMeta, &Op) {
        let authors = self.authors;
        let (meta, ops, seen) = self.events.entry(event_id).or_insert_with(|| {
            let Some(event) = self.history.event(&event_id) else {
                panic!("the history's covered lists name event {event_id}, which it does not hold");
            };
            let n_authors = authors.len();
            assert!(
                event.id == event_id && event.author < n_authors && event.clock.len() <= n_authors,
                "the history's event {event_id} does not fit a document of {n_authors} authors"
            );
            let HistoricEvent { id, author, seq, lamport, clock, ops, seen } = event;
            let author_key = authors[author];
            (Arc::new(EventMeta { id, author, author_key, seq, lamport, clock: clock.into() }), ops, seen)
        });
        let Some(op) = ops.get(op_idx as usize) else {
            panic!("the history's covered lists name op {op_idx} of event {event_id}, which has fewer");
        };
        (OpMeta::new(Arc::clone(meta), op_idx, seen), op)
    }
}

/// Records that `by` covered `ids`, if any.
fn note_covered(covered: &mut Vec<Covered>, by: OpId, ids: Vec<OpId>) {
    if !ids.is_empty() {
        covered.push(Covered { by, ops: ids });
    }
}

/// How an event's ops are grouped: by key space, key, and (for sets) element.
/// An event's document op indices sorted by [`group_key`]: ops on one key (and one set
/// element) are adjacent, in index order. Membership ops write no document key: they are left
/// out.
fn key_order(ops: &[Op]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..u32::try_from(ops.len()).expect("an event holds at most OPS_MAX ops"))
        .filter(|&idx| !ops[idx as usize].is_membership())
        .collect();
    order.sort_by(|&a, &b| group_key(&ops[a as usize]).cmp(&group_key(&ops[b as usize])));
    order
}

/// Whether ops `a` and `b` write to the same key of the same kind.
fn same_key(ops: &[Op], a: u32, b: u32) -> bool {
    let (kind_a, key_a, _) = group_key(&ops[a as usize]);
    let (kind_b, key_b, _) = group_key(&ops[b as usize]);
    (kind_a, key_a) == (kind_b, key_b)
}

/// The group of a document op. Only called on the ops [`key_order`] lists.
fn group_key(op: &Op) -> (KeyKind, &[u8], &[u8]) {
    match op {
        Op::Put { key, .. } | Op::Del { key } | Op::PutSeen { key, .. } | Op::DelSeen { key, .. } => {
            (KeyKind::Register, key, &[])
        }
        Op::Incr { key, .. } => (KeyKind::Counter, key, &[]),
        Op::Add { key, element }
        | Op::Remove { key, element }
        | Op::AddSeen { key, element, .. }
        | Op::RemoveSeen { key, element, .. } => (KeyKind::Set, key, element),
        // `key_order` leaves membership ops out, so no group holds one.
        Op::Propose { .. } | Op::Approve { .. } | Op::Rotate(_) => {
            unreachable!("a membership op in a document group")
        }
    }
}

/// The state of `key`, created empty if it is new. The key is copied only when it is new.
fn entry<'map, V: Default>(map: &'map mut BTreeMap<Vec<u8>, V>, key: &[u8]) -> &'map mut V {
    if !map.contains_key(key) {
        map.insert(key.to_vec(), V::default());
    }
    map.get_mut(key).expect("inserted above")
}

/// Keeps a set's member count in step with one element; returns whether its membership changed.
fn update_membership(n_members: &mut usize, was_member: bool, is_member: bool) -> bool {
    match (was_member, is_member) {
        (false, true) => *n_members += 1,
        (true, false) => *n_members -= 1,
        _ => return false,
    }
    true
}

/// Adds counter amounts. An `i128` cannot overflow here: every op adds at most 2^63 in
/// magnitude, so reaching 2^127 would take 2^64 ops, far beyond any event store.
fn checked_sum(a: i128, b: i128) -> i128 {
    a.checked_add(b).expect("a counter sum cannot overflow i128 (it would take 2^64 ops)")
}

fn update_len(hasher: &mut Hasher, n: usize) {
    hasher.update(&(n as u64).to_le_bytes());
}

fn update_bytes(hasher: &mut Hasher, bytes: &[u8]) {
    update_len(hasher, bytes.len());
    hasher.update(bytes);
}
