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
//! them and recomputes their keys, so from then on the state is exact again.
//!
//! - Registers (multi-value): a `Put` or `Del` supersedes exactly the included puts on its key in
//!   its causal past. The siblings are the included puts that nothing included supersedes; the
//!   visible value is the greatest sibling by `(lamport, author index, event id, op index)`.
//! - Counters: the included `Incr` deltas of each author are summed in an `i128`; the value is
//!   the sum over authors.
//! - Sets (observed-remove): an `Add` makes a tag; a `Remove` takes out exactly the tags of its
//!   element in its causal past, so a concurrent add wins. The members are the elements with a
//!   live tag.
//!
//! # Digest
//!
//! [`Document::digest`] is `SHA-256("cairn/document/v1" ‖ state)`, where `state` is the visible
//! state in this layout. Every integer is little-endian; `u64(n)` is 8 bytes, `i128(n)` 16 bytes,
//! and `bytes(b)` is `u64(len(b)) ‖ b`. Keys sort by their bytes, lexicographically.
//!
//! ```text
//! state     = registers ‖ counters ‖ sets
//! registers = u64(number of registers with a sibling)
//!             then for each such register, in key order:
//!               bytes(key) ‖ u64(number of siblings)
//!               then for each sibling, ascending by (lamport, author index, event id, op index):
//!                 event id (32 bytes) ‖ u64(op index) ‖ u64(author index) ‖ u64(lamport) ‖ bytes(value)
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
//! The document keeps the history of every included op (the op's event id, author, seq, lamport
//! and clock, shared by the ops of one event; the register value or set element; the counter
//! delta summed per key, author and event), not only the visible state. It has to: an author
//! can be proved an equivocator at any later time, even at an old seq, and then its ops from
//! that seq on are retracted and the keys they touched are recomputed from what remains, which
//! can bring back values that the retracted ops had superseded. Memory is therefore linear in
//! the included ops; excluded ops are dropped and never recorded again.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_crypto::{Domain, Hasher};

use crate::event::{EventId, Op};
use crate::genesis::MemberIdx;
use crate::verified::Verified;

mod counter;
mod register;
mod set;
#[cfg(test)]
mod tests;

use counter::CounterState;
use register::{RegisterState, RegisterWrite};
use set::{SetState, SetWrite};

/// One value of a register: a put that no included op supersedes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sibling {
    /// The value written.
    pub value: Vec<u8>,
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

/// The replicated CRDT document. Call order: [`Document::apply`] for each accepted event, in a
/// causal order; [`Document::exclude`] whenever an author is proved to have equivocated, before
/// or after its events arrived; the getters at any time.
#[derive(Debug)]
pub struct Document {
    /// Per author, the lowest seq whose ops are excluded; `u64::MAX` for an author in good
    /// standing.
    excluded_from: Vec<u64>,
    registers: BTreeMap<Vec<u8>, RegisterState>,
    counters: BTreeMap<Vec<u8>, CounterState>,
    sets: BTreeMap<Vec<u8>, SetState>,
    /// Per author, the keys holding its ops, so that an exclusion recomputes only those.
    touched: Vec<Touched>,
}

/// What the document keeps of an event: what orders siblings and decides the causal past.
#[derive(Debug)]
struct EventMeta {
    id: EventId,
    author: MemberIdx,
    seq: u64,
    lamport: u64,
    clock: Box<[u64]>,
}

/// One recorded op of a register or a set; the ops of one event share their [`EventMeta`].
#[derive(Clone, Debug)]
struct OpMeta {
    event: Arc<EventMeta>,
    op_idx: u32,
}

impl OpMeta {
    /// Whether `self` is in the causal past of `later`.
    fn is_seen_by(&self, later: &Self) -> bool {
        if self.event.id == later.event.id {
            self.op_idx < later.op_idx
        } else {
            later.event.clock[self.event.author] >= self.event.seq
        }
    }

    /// The sibling order: `(lamport, author index, event id, op index)`.
    fn order_key(&self) -> (u64, MemberIdx, EventId, u32) {
        (self.event.lamport, self.event.author, self.event.id, self.op_idx)
    }

    fn is_excluded(&self, author: MemberIdx, from_seq: u64) -> bool {
        self.event.author == author && self.event.seq >= from_seq
    }
}

/// A per-key state that keeps its included ops in apply order (a causal order) and derives
/// everything else from them: a register's siblings, a set element's live tags.
trait Replay {
    /// One recorded op, with what it wrote.
    type Write;

    /// The op of a recorded write.
    fn op(write: &Self::Write) -> &OpMeta;

    /// Takes the recorded writes out, leaving the state empty.
    fn take_history(&mut self) -> Vec<Self::Write>;

    /// Records a write that comes after every recorded write in its causal past. Nothing
    /// recorded can have the new write in its past, so the new write supersedes without ever
    /// being superseded.
    fn push(&mut self, write: Self::Write);
}

/// Drops the ops of `author` from `from_seq` on from `state` and replays the rest, which gives
/// the state as if they had never been applied. Returns the highest seq of `author` left, if
/// any. The one retraction of registers and set elements alike.
fn retract<S: Replay>(state: &mut S, author: MemberIdx, from_seq: u64) -> Option<u64> {
    let mut seq_max = None;
    for write in state.take_history() {
        let op = S::op(&write);
        if op.is_excluded(author, from_seq) {
            continue;
        }
        if op.event.author == author {
            seq_max = seq_max.max(Some(op.event.seq));
        }
        state.push(write);
    }
    seq_max
}

/// The keys of one author's recorded ops, each with the highest seq recorded there.
#[derive(Debug, Default)]
struct Touched {
    registers: BTreeMap<Vec<u8>, u64>,
    counters: BTreeMap<Vec<u8>, u64>,
    sets: BTreeMap<Vec<u8>, u64>,
}

impl Document {
    /// An empty document for a cluster of `n_members` members.
    pub fn new(n_members: usize) -> Self {
        Self {
            excluded_from: vec![u64::MAX; n_members],
            registers: BTreeMap::new(),
            counters: BTreeMap::new(),
            sets: BTreeMap::new(),
            touched: (0..n_members).map(|_| Touched::default()).collect(),
        }
    }

    /// Applies an accepted event and returns the keys whose visible state changed, sorted.
    ///
    /// Events must arrive in a causal order (each after all of its deps) and each at most once;
    /// the caller guarantees both. An event of an author excluded at or below its seq is skipped.
    ///
    /// # Panics
    ///
    /// If the event's author or clock does not fit the document's number of members.
    pub fn apply(&mut self, event: &Verified) -> Vec<Change> {
        let author = event.author_idx();
        let n_members = self.excluded_from.len();
        assert!(author < n_members, "author {author} of a document with {n_members} members");
        assert_eq!(event.clock().len(), n_members, "an event's clock has one entry per member");
        let seq = event.seq();
        if seq >= self.excluded_from[author] {
            return Vec::new();
        }
        let ops = &event.event().ops;
        // Ops on different keys are independent, so the ops are applied grouped by key (and by
        // element within a set), each group in index order. That looks up every key once and
        // compares its visible state once, before and after the event.
        let mut order: Vec<u32> =
            (0..u32::try_from(ops.len()).expect("an event holds at most OPS_MAX ops")).collect();
        order.sort_by(|&a, &b| group_key(&ops[a as usize]).cmp(&group_key(&ops[b as usize])));
        let mut meta = None;
        let mut event_meta = || {
            Arc::clone(meta.get_or_insert_with(|| {
                Arc::new(EventMeta {
                    id: event.id(),
                    author,
                    seq,
                    lamport: event.lamport(),
                    clock: event.clock().into(),
                })
            }))
        };
        let mut changes = Vec::new();
        let mut start = 0;
        while start < order.len() {
            let (kind, key, _) = group_key(&ops[order[start] as usize]);
            let end = start
                + order[start..].partition_point(|&op_idx| {
                    let (other_kind, other_key, _) = group_key(&ops[op_idx as usize]);
                    (other_kind, other_key) == (kind, key)
                });
            let group = &order[start..end];
            let changed = match kind {
                KeyKind::Register => self.apply_register(author, seq, key, ops, group, &mut event_meta),
                KeyKind::Counter => self.apply_counter(author, seq, key, ops, group),
                KeyKind::Set => self.apply_set(author, seq, key, ops, group, &mut event_meta),
            };
            if changed {
                changes.push(Change { kind, key: key.to_vec() });
            }
            start = end;
        }
        changes
    }

    fn apply_register(
        &mut self,
        author: MemberIdx,
        seq: u64,
        key: &[u8],
        ops: &[Op],
        group: &[u32],
        event_meta: &mut impl FnMut() -> Arc<EventMeta>,
    ) -> bool {
        note_touch(&mut self.touched[author].registers, key, seq);
        let state = entry(&mut self.registers, key);
        let before = state.siblings.clone();
        for &op_idx in group {
            let value = match &ops[op_idx as usize] {
                Op::Put { value, .. } => Some(value.as_slice().into()),
                Op::Del { .. } => None,
                op => unreachable!("{op:?} in a register group"),
            };
            state.push(RegisterWrite { op: OpMeta { event: event_meta(), op_idx }, value });
        }
        // History only grows here, so indexes name the same writes before and after.
        state.siblings != before
    }

    fn apply_counter(&mut self, author: MemberIdx, seq: u64, key: &[u8], ops: &[Op], group: &[u32]) -> bool {
        let delta = group
            .iter()
            .map(|&op_idx| match &ops[op_idx as usize] {
                Op::Incr { delta, .. } => i128::from(*delta),
                op => unreachable!("{op:?} in a counter group"),
            })
            .fold(0, checked_sum);
        if delta == 0 {
            // Nothing to record: retracting it later would subtract nothing.
            return false;
        }
        note_touch(&mut self.touched[author].counters, key, seq);
        let tally = entry(&mut self.counters, key).by_author.entry(author).or_default();
        tally.total = checked_sum(tally.total, delta);
        match tally.by_seq.last_mut() {
            Some((last_seq, sum)) if *last_seq == seq => *sum = checked_sum(*sum, delta),
            _ => tally.by_seq.push((seq, delta)),
        }
        true
    }

    fn apply_set(
        &mut self,
        author: MemberIdx,
        seq: u64,
        key: &[u8],
        ops: &[Op],
        group: &[u32],
        event_meta: &mut impl FnMut() -> Arc<EventMeta>,
    ) -> bool {
        note_touch(&mut self.touched[author].sets, key, seq);
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
                    Op::Add { .. } => true,
                    Op::Remove { .. } => false,
                    op => unreachable!("{op:?} in a set group"),
                };
                element_state.push(SetWrite { op: OpMeta { event: event_meta(), op_idx }, is_add });
            }
            changed |= update_membership(&mut state.n_members, was_member, element_state.is_member());
            start = end;
        }
        changed
    }

    /// Excludes every op of `author` with `seq >= from_seq` (the author's lowest fork seq) and
    /// returns the keys whose visible state changed, sorted.
    ///
    /// Exclusion only ever lowers: a `from_seq` at or above the current one changes nothing.
    /// Ops already applied are retracted and their keys recomputed as if the ops had never been
    /// applied; later events of `author` from `from_seq` on are skipped by [`Document::apply`].
    ///
    /// # Panics
    ///
    /// If `author` is not a member index.
    pub fn exclude(&mut self, author: MemberIdx, from_seq: u64) -> Vec<Change> {
        assert!(author < self.excluded_from.len(), "author {author} is not a member index");
        if from_seq >= self.excluded_from[author] {
            return Vec::new();
        }
        self.excluded_from[author] = from_seq;
        let touched = &mut self.touched[author];
        let mut changes = Vec::new();
        // Each map is walked in key order and the kinds in `KeyKind` order, so `changes` comes
        // out sorted.
        touched.registers.retain(|key, seq_max| {
            if *seq_max < from_seq {
                return true;
            }
            let state = self.registers.get_mut(key).expect("the author index names only recorded keys");
            let before = state.sibling_ids();
            let left = retract(state, author, from_seq);
            if state.sibling_ids() != before {
                changes.push(Change { kind: KeyKind::Register, key: key.clone() });
            }
            if state.history.is_empty() {
                self.registers.remove(key);
            }
            update_seq_max(seq_max, left)
        });
        touched.counters.retain(|key, seq_max| {
            if *seq_max < from_seq {
                return true;
            }
            let state = self.counters.get_mut(key).expect("the author index names only recorded keys");
            let tally = state.by_author.get_mut(&author).expect("the author index names only its own keys");
            tally.by_seq.retain(|&(seq, _)| seq < from_seq);
            let total = tally.by_seq.iter().map(|&(_, sum)| sum).fold(0, checked_sum);
            if total != tally.total {
                changes.push(Change { kind: KeyKind::Counter, key: key.clone() });
            }
            tally.total = total;
            let left = tally.by_seq.iter().map(|&(seq, _)| seq).max();
            if left.is_none() {
                state.by_author.remove(&author);
                if state.by_author.is_empty() {
                    self.counters.remove(key);
                }
            }
            update_seq_max(seq_max, left)
        });
        touched.sets.retain(|key, seq_max| {
            if *seq_max < from_seq {
                return true;
            }
            let state = self.sets.get_mut(key).expect("the author index names only recorded keys");
            let mut changed = false;
            let mut left = None;
            state.elements.retain(|_, element_state| {
                if element_state.history.iter().any(|write| write.op.is_excluded(author, from_seq)) {
                    let was_member = element_state.is_member();
                    retract(element_state, author, from_seq);
                    changed |= update_membership(&mut state.n_members, was_member, element_state.is_member());
                }
                let author_seqs =
                    element_state.history.iter().filter(|write| write.op.event.author == author);
                left = left.max(author_seqs.map(|write| write.op.event.seq).max());
                !element_state.history.is_empty()
            });
            if changed {
                changes.push(Change { kind: KeyKind::Set, key: key.clone() });
            }
            if state.elements.is_empty() {
                self.sets.remove(key);
            }
            update_seq_max(seq_max, left)
        });
        changes
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
        let siblings: Vec<Sibling> = state.siblings.iter().map(|&idx| state.sibling(idx)).collect();
        RegisterRead { visible: siblings.last().cloned(), siblings }
    }

    /// The counter `key`: the sum of the included deltas (0 for an unknown key).
    pub fn counter(&self, key: &[u8]) -> i128 {
        self.counters.get(key).map_or(0, CounterState::value)
    }

    /// The members of the set `key`, in ascending byte order (none for an unknown key).
    pub fn set_members(&self, key: &[u8]) -> Vec<Vec<u8>> {
        let Some(state) = self.sets.get(key) else {
            return Vec::new();
        };
        state.elements.iter().filter(|(_, element)| element.is_member()).map(|(e, _)| e.clone()).collect()
    }

    /// The registers with at least one sibling, in key order.
    pub fn register_keys(&self) -> impl Iterator<Item = &[u8]> {
        self.registers.iter().filter(|(_, state)| !state.siblings.is_empty()).map(|(key, _)| key.as_slice())
    }

    /// The counters with a non-zero author total, in key order.
    pub fn counter_keys(&self) -> impl Iterator<Item = &[u8]> {
        self.counters.iter().filter(|(_, state)| !state.is_empty()).map(|(key, _)| key.as_slice())
    }

    /// The sets with at least one member, in key order.
    pub fn set_keys(&self) -> impl Iterator<Item = &[u8]> {
        self.sets.iter().filter(|(_, state)| state.n_members > 0).map(|(key, _)| key.as_slice())
    }

    /// The canonical digest of the visible state; the layout is in the module documentation.
    /// Documents with equal sets of included ops have equal digests.
    pub fn digest(&self) -> [u8; 32] {
        let mut hasher = Hasher::new(Domain::Document);
        let registers: Vec<_> =
            self.registers.iter().filter(|(_, state)| !state.siblings.is_empty()).collect();
        update_len(&mut hasher, registers.len());
        for (key, state) in registers {
            update_bytes(&mut hasher, key);
            update_len(&mut hasher, state.siblings.len());
            for &idx in &state.siblings {
                let write = &state.history[idx];
                hasher.update(&write.op.event.id.0);
                hasher.update(&u64::from(write.op.op_idx).to_le_bytes());
                update_len(&mut hasher, write.op.event.author);
                hasher.update(&write.op.event.lamport.to_le_bytes());
                update_bytes(&mut hasher, write.value.as_deref().expect("only puts are siblings"));
            }
        }
        let counters: Vec<_> = self.counters.iter().filter(|(_, state)| !state.is_empty()).collect();
        update_len(&mut hasher, counters.len());
        for (key, state) in counters {
            update_bytes(&mut hasher, key);
            let totals: Vec<_> = state.by_author.iter().filter(|(_, tally)| tally.total != 0).collect();
            update_len(&mut hasher, totals.len());
            for (&author, tally) in totals {
                update_len(&mut hasher, author);
                hasher.update(&tally.total.to_le_bytes());
            }
        }
        let sets: Vec<_> = self.sets.iter().filter(|(_, state)| state.n_members > 0).collect();
        update_len(&mut hasher, sets.len());
        for (key, state) in sets {
            update_bytes(&mut hasher, key);
            update_len(&mut hasher, state.n_members);
            for (element, _) in state.elements.iter().filter(|(_, element)| element.is_member()) {
                update_bytes(&mut hasher, element);
            }
        }
        hasher.finish()
    }
}

/// How an event's ops are grouped: by key space, key, and (for sets) element.
fn group_key(op: &Op) -> (KeyKind, &[u8], &[u8]) {
    match op {
        Op::Put { key, .. } | Op::Del { key } => (KeyKind::Register, key, &[]),
        Op::Incr { key, .. } => (KeyKind::Counter, key, &[]),
        Op::Add { key, element } | Op::Remove { key, element } => (KeyKind::Set, key, element),
    }
}

/// The state of `key`, created empty if it is new. The key is copied only when it is new.
fn entry<'map, V: Default>(map: &'map mut BTreeMap<Vec<u8>, V>, key: &[u8]) -> &'map mut V {
    if !map.contains_key(key) {
        map.insert(key.to_vec(), V::default());
    }
    map.get_mut(key).expect("inserted above")
}

fn note_touch(keys: &mut BTreeMap<Vec<u8>, u64>, key: &[u8], seq: u64) {
    let seq_max = entry(keys, key);
    *seq_max = (*seq_max).max(seq);
}

/// Sets the author index entry to what is left after a retraction; `false` drops the entry.
fn update_seq_max(seq_max: &mut u64, left: Option<u64>) -> bool {
    match left {
        Some(seq) => {
            *seq_max = seq;
            true
        }
        None => false,
    }
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
