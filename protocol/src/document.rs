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

/// A `Put` (with its value) or a `Del` (without).
#[derive(Debug)]
struct RegisterWrite {
    op: OpMeta,
    value: Option<Box<[u8]>>,
}

#[derive(Debug, Default)]
struct RegisterState {
    /// Every included put and del on the key, in apply order (a causal order).
    history: Vec<RegisterWrite>,
    /// Indexes into `history` of the siblings, ascending by the sibling order.
    siblings: Vec<usize>,
}

impl RegisterState {
    /// Records a write that comes after every recorded write in its causal past. Nothing
    /// recorded can have the new write in its past, so the new write supersedes without ever
    /// being superseded.
    fn push(&mut self, write: RegisterWrite) {
        let history = &self.history;
        self.siblings.retain(|&idx| !history[idx].op.is_seen_by(&write.op));
        if write.value.is_some() {
            let order_key = write.op.order_key();
            let position = self.siblings.partition_point(|&idx| history[idx].op.order_key() < order_key);
            self.siblings.insert(position, history.len());
        }
        self.history.push(write);
    }

    /// Drops the ops of `author` from `from_seq` on and replays the rest, which gives the state
    /// as if they had never been applied. Returns the highest seq of `author` left, if any.
    fn retract(&mut self, author: MemberIdx, from_seq: u64) -> Option<u64> {
        let history = std::mem::take(&mut self.history);
        self.siblings.clear();
        let mut seq_max = None;
        for write in history {
            if write.op.is_excluded(author, from_seq) {
                continue;
            }
            if write.op.event.author == author {
                seq_max = seq_max.max(Some(write.op.event.seq));
            }
            self.push(write);
        }
        seq_max
    }

    fn sibling_ids(&self) -> Vec<(EventId, u32)> {
        self.siblings
            .iter()
            .map(|&idx| (self.history[idx].op.event.id, self.history[idx].op.op_idx))
            .collect()
    }

    fn sibling(&self, idx: usize) -> Sibling {
        let write = &self.history[idx];
        let value = write.value.as_deref().expect("only puts are siblings");
        Sibling {
            value: value.to_vec(),
            author: write.op.event.author,
            lamport: write.op.event.lamport,
            event_id: write.op.event.id,
            op_idx: write.op.op_idx,
        }
    }
}

#[derive(Debug, Default)]
struct CounterState {
    /// Per author with recorded deltas: its total and the deltas it is made of.
    by_author: BTreeMap<MemberIdx, AuthorTally>,
}

impl CounterState {
    fn value(&self) -> i128 {
        self.by_author.values().map(|tally| tally.total).fold(0, checked_sum)
    }

    fn is_empty(&self) -> bool {
        self.by_author.values().all(|tally| tally.total == 0)
    }
}

#[derive(Debug, Default)]
struct AuthorTally {
    total: i128,
    /// `(seq, sum of the event's deltas on this key)`, one entry per event with a non-zero sum.
    /// Exclusion goes by seq, so this is all the history a counter needs.
    by_seq: Vec<(u64, i128)>,
}

#[derive(Debug, Default)]
struct SetState {
    elements: BTreeMap<Vec<u8>, ElementState>,
    /// How many elements have a live tag.
    n_members: usize,
}

/// An `Add` (a tag) or a `Remove`.
#[derive(Debug)]
struct SetWrite {
    op: OpMeta,
    is_add: bool,
}

#[derive(Debug, Default)]
struct ElementState {
    /// Every included add and remove of the element, in apply order (a causal order).
    history: Vec<SetWrite>,
    /// Indexes into `history` of the live add tags.
    live: Vec<usize>,
}

impl ElementState {
    fn is_member(&self) -> bool {
        !self.live.is_empty()
    }

    /// Records an op that comes after every recorded op in its causal past (see
    /// [`RegisterState::push`]).
    fn push(&mut self, write: SetWrite) {
        if write.is_add {
            self.live.push(self.history.len());
        } else {
            let history = &self.history;
            self.live.retain(|&idx| !history[idx].op.is_seen_by(&write.op));
        }
        self.history.push(write);
    }

    /// Like [`RegisterState::retract`].
    fn retract(&mut self, author: MemberIdx, from_seq: u64) -> Option<u64> {
        let history = std::mem::take(&mut self.history);
        self.live.clear();
        let mut seq_max = None;
        for write in history {
            if write.op.is_excluded(author, from_seq) {
                continue;
            }
            if write.op.event.author == author {
                seq_max = seq_max.max(Some(write.op.event.seq));
            }
            self.push(write);
        }
        seq_max
    }
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
            let left = state.retract(author, from_seq);
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
                    element_state.retract(author, from_seq);
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::fmt::Write as _;

    use cairn_crypto::{SecretKey, hash};
    use proptest::prelude::*;

    use super::*;
    use crate::event::Event;

    const A: MemberIdx = 0;
    const B: MemberIdx = 1;
    const C: MemberIdx = 2;
    const N_AUTHORS: usize = 3;

    /// Signed test events with their causal relations; an event is named by its index.
    struct Dag {
        /// Sorted by public key, so a key's position is its member index.
        keys: Vec<SecretKey>,
        events: Vec<Verified>,
        deps: Vec<Vec<usize>>,
        own_tip: Vec<Option<usize>>,
    }

    impl Dag {
        fn new() -> Self {
            let mut keys: Vec<SecretKey> =
                (1..=N_AUTHORS as u8).map(|seed| SecretKey::from_seed(&[seed; 32])).collect();
            keys.sort_by_key(SecretKey::public);
            Self { keys, events: Vec::new(), deps: Vec::new(), own_tip: vec![None; N_AUTHORS] }
        }

        /// The next event on `author`'s latest event, having also seen `seen`.
        fn event(&mut self, author: MemberIdx, seen: &[usize], ops: Vec<Op>) -> usize {
            let idx = self.event_on(author, self.own_tip[author], seen, ops).expect("a new event");
            self.own_tip[author] = Some(idx);
            idx
        }

        /// An event of `author` whose own predecessor is `parent`: a fork when `parent` already
        /// has a successor. `None` if exactly this event exists already.
        fn event_on(
            &mut self,
            author: MemberIdx,
            parent: Option<usize>,
            seen: &[usize],
            ops: Vec<Op>,
        ) -> Option<usize> {
            let seq = parent.map_or(1, |p| self.events[p].seq() + 1);
            let mut deps: Vec<usize> = parent.into_iter().chain(seen.iter().copied()).collect();
            deps.sort_unstable();
            deps.dedup();
            let lamport = 1 + deps.iter().map(|&d| self.events[d].lamport()).max().unwrap_or(0);
            // The clock as the adapter keeps it: the pointwise max over the deps, and the own seq.
            let mut clock = vec![0u64; N_AUTHORS];
            for &dep in &deps {
                for (entry, &seen_seq) in clock.iter_mut().zip(self.events[dep].clock()) {
                    *entry = (*entry).max(seen_seq);
                }
            }
            clock[author] = clock[author].max(seq);
            let dep_ids = deps.iter().map(|&d| self.events[d].id()).collect();
            let event = Event::sign(&self.keys[author], seq, lamport, dep_ids, ops);
            let id = event.id();
            if self.events.iter().any(|e| e.id() == id) {
                return None;
            }
            let bytes = event.encode();
            self.events.push(Verified::new(event, id, bytes, author, clock.into()));
            self.deps.push(deps);
            Some(self.events.len() - 1)
        }

        /// A causal order of all events; `choose(n)` picks one of the `n` ready events.
        fn topological_order(&self, mut choose: impl FnMut(usize) -> usize) -> Vec<usize> {
            let mut placed = vec![false; self.events.len()];
            let mut order = Vec::new();
            while order.len() < self.events.len() {
                let ready: Vec<usize> = (0..self.events.len())
                    .filter(|&idx| !placed[idx] && self.deps[idx].iter().all(|&dep| placed[dep]))
                    .collect();
                let pick = ready[choose(ready.len()) % ready.len()];
                placed[pick] = true;
                order.push(pick);
            }
            order
        }

        fn is_excluded(&self, idx: usize, exclusions: &[(MemberIdx, u64)]) -> bool {
            let event = &self.events[idx];
            exclusions
                .iter()
                .any(|&(author, from_seq)| event.author_idx() == author && event.seq() >= from_seq)
        }
    }

    fn put(key: &str, value: &str) -> Op {
        Op::Put { key: key.into(), value: value.into() }
    }

    fn del(key: &str) -> Op {
        Op::Del { key: key.into() }
    }

    fn incr(key: &str, delta: i64) -> Op {
        Op::Incr { key: key.into(), delta }
    }

    fn add(key: &str, element: &str) -> Op {
        Op::Add { key: key.into(), element: element.into() }
    }

    fn remove(key: &str, element: &str) -> Op {
        Op::Remove { key: key.into(), element: element.into() }
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    fn author_name(author: MemberIdx) -> char {
        char::from(b'A' + u8::try_from(author).unwrap())
    }

    /// The visible state, one line per non-empty key: `register k = visible [siblings]`,
    /// `counter c = sum {author totals}`, `set s = {members}`.
    fn render(doc: &Document) -> String {
        let mut out = String::new();
        for key in doc.register_keys() {
            let read = doc.register(key);
            let siblings: Vec<String> = read
                .siblings
                .iter()
                .map(|s| format!("{}/{}", text(&s.value), author_name(s.author)))
                .collect();
            let visible = read.visible.expect("a listed register has a visible value");
            assert_eq!(Some(&visible), read.siblings.last());
            writeln!(out, "register {} = {} [{}]", text(key), text(&visible.value), siblings.join(" "))
                .unwrap();
        }
        for key in doc.counter_keys() {
            let totals: Vec<String> = counter_totals(doc, key)
                .iter()
                .map(|(author, total)| format!("{}:{total}", author_name(*author)))
                .collect();
            writeln!(out, "counter {} = {} {{{}}}", text(key), doc.counter(key), totals.join(" ")).unwrap();
        }
        for key in doc.set_keys() {
            let members: Vec<String> = doc.set_members(key).iter().map(|m| text(m)).collect();
            writeln!(out, "set {} = {{{}}}", text(key), members.join(" ")).unwrap();
        }
        out
    }

    /// The non-zero author totals of a counter.
    fn counter_totals(doc: &Document, key: &[u8]) -> Vec<(MemberIdx, i128)> {
        doc.counters.get(key).map_or_else(Vec::new, |state| {
            state
                .by_author
                .iter()
                .filter(|(_, tally)| tally.total != 0)
                .map(|(&author, tally)| (author, tally.total))
                .collect()
        })
    }

    fn normalize(expected: &str) -> String {
        expected
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(|line| format!("{line}\n"))
            .collect()
    }

    /// Applies every event of `dag` with `exclusions`, three ways: events in creation order then
    /// the exclusions; the exclusions first, then the events in another causal order; and only
    /// the events the exclusions leave, with no exclusion at all. All three must render as
    /// `expected` and have the same digest, which is the empty digest when nothing shows.
    fn check(dag: &Dag, exclusions: &[(MemberIdx, u64)], expected: &str) {
        let mut after = Document::new(N_AUTHORS);
        for event in &dag.events {
            after.apply(event);
        }
        for &(author, from_seq) in exclusions {
            after.exclude(author, from_seq);
        }
        let mut before = Document::new(N_AUTHORS);
        for &(author, from_seq) in exclusions {
            before.exclude(author, from_seq);
        }
        for idx in dag.topological_order(|n_ready| n_ready - 1) {
            before.apply(&dag.events[idx]);
        }
        let mut never = Document::new(N_AUTHORS);
        for (idx, event) in dag.events.iter().enumerate() {
            if !dag.is_excluded(idx, exclusions) {
                never.apply(event);
            }
        }
        let rendered = render(&after);
        assert_eq!(rendered, normalize(expected));
        assert_eq!(render(&before), rendered, "exclusion first, another causal order");
        assert_eq!(render(&never), rendered, "excluded events never applied");
        assert_eq!(before.digest(), after.digest());
        assert_eq!(never.digest(), after.digest());
        if rendered.is_empty() {
            assert_eq!(after.digest(), Document::new(N_AUTHORS).digest());
        } else {
            assert_ne!(after.digest(), Document::new(N_AUTHORS).digest());
        }
    }

    // ---- registers ------------------------------------------------------------------------

    #[test]
    fn register_single_write() {
        let mut dag = Dag::new();
        dag.event(A, &[], vec![put("k", "v1")]);
        check(&dag, &[], "register k = v1 [v1/A]");
        let mut doc = Document::new(N_AUTHORS);
        doc.apply(&dag.events[0]);
        let sibling =
            Sibling { value: b"v1".to_vec(), author: A, lamport: 1, event_id: dag.events[0].id(), op_idx: 0 };
        assert_eq!(
            doc.register(b"k"),
            RegisterRead { visible: Some(sibling.clone()), siblings: vec![sibling] }
        );
        assert_eq!(doc.register(b"unknown"), RegisterRead::default());
    }

    #[test]
    fn register_overwrite_in_causal_order() {
        let mut dag = Dag::new();
        let a1 = dag.event(A, &[], vec![put("k", "v1")]);
        let b1 = dag.event(B, &[a1], vec![put("k", "v2")]);
        dag.event(A, &[b1], vec![put("k", "v3")]);
        check(&dag, &[], "register k = v3 [v3/A]");
    }

    #[test]
    fn register_concurrent_puts_are_siblings() {
        // Equal lamports: the greater author index is visible.
        let mut dag = Dag::new();
        dag.event(B, &[], vec![put("k", "v2")]);
        dag.event(A, &[], vec![put("k", "v1")]);
        check(&dag, &[], "register k = v2 [v1/A v2/B]");

        // The greater lamport is visible whatever the author.
        let mut dag = Dag::new();
        let b1 = dag.event(B, &[], vec![put("other", "x")]);
        dag.event(A, &[b1], vec![put("k", "v1")]);
        dag.event(C, &[], vec![put("k", "v3")]);
        check(
            &dag,
            &[],
            "
            register k = v1 [v3/C v1/A]
            register other = x [x/B]
            ",
        );

        // A put that saw one sibling supersedes only that one.
        let mut dag = Dag::new();
        let a1 = dag.event(A, &[], vec![put("k", "v1")]);
        dag.event(B, &[], vec![put("k", "v2")]);
        dag.event(C, &[a1], vec![put("k", "v3")]);
        check(&dag, &[], "register k = v3 [v2/B v3/C]");
    }

    #[test]
    fn register_del() {
        // A del of a seen value leaves nothing, the same state as an empty document.
        let mut dag = Dag::new();
        let a1 = dag.event(A, &[], vec![put("k", "v1")]);
        dag.event(B, &[a1], vec![del("k")]);
        check(&dag, &[], "");

        // A del concurrent with a put keeps the put.
        let mut dag = Dag::new();
        dag.event(A, &[], vec![put("k", "v1")]);
        dag.event(B, &[], vec![del("k")]);
        check(&dag, &[], "register k = v1 [v1/A]");

        // A del takes out only the siblings it saw.
        let mut dag = Dag::new();
        let a1 = dag.event(A, &[], vec![put("k", "v1")]);
        dag.event(B, &[], vec![put("k", "v2")]);
        dag.event(C, &[a1], vec![del("k")]);
        check(&dag, &[], "register k = v2 [v2/B]");

        // A put after a del shows again.
        let mut dag = Dag::new();
        let a1 = dag.event(A, &[], vec![put("k", "v1")]);
        let b1 = dag.event(B, &[a1], vec![del("k")]);
        dag.event(C, &[b1], vec![put("k", "v3")]);
        check(&dag, &[], "register k = v3 [v3/C]");
    }

    #[test]
    fn register_ops_in_one_event_apply_in_index_order() {
        let mut dag = Dag::new();
        dag.event(
            A,
            &[],
            vec![
                put("two-puts", "first"),
                put("put-del", "gone"),
                del("del-put"),
                put("two-puts", "second"),
                del("put-del"),
                put("del-put", "kept"),
            ],
        );
        check(
            &dag,
            &[],
            "
            register del-put = kept [kept/A]
            register two-puts = second [second/A]
            ",
        );
    }

    // ---- counters -------------------------------------------------------------------------

    #[test]
    fn counter_sums_per_author() {
        let mut dag = Dag::new();
        let a1 = dag.event(A, &[], vec![incr("c", 5)]);
        dag.event(A, &[], vec![incr("c", -2), incr("d", 1)]);
        dag.event(B, &[a1], vec![incr("c", 10)]);
        dag.event(C, &[], vec![incr("c", -20)]);
        check(
            &dag,
            &[],
            "
            counter c = -7 {A:3 B:10 C:-20}
            counter d = 1 {A:1}
            ",
        );
        let mut doc = Document::new(N_AUTHORS);
        assert_eq!(doc.counter(b"c"), 0);
        for event in &dag.events {
            doc.apply(event);
        }
        assert_eq!(doc.counter(b"c"), -7);
    }

    #[test]
    fn counter_i64_extremes_do_not_overflow() {
        let mut dag = Dag::new();
        dag.event(A, &[], vec![incr("max", i64::MAX), incr("max", i64::MAX), incr("min", i64::MIN)]);
        dag.event(A, &[], vec![incr("max", i64::MAX), incr("min", i64::MIN)]);
        dag.event(B, &[], vec![incr("min", i64::MIN), incr("mixed", i64::MAX)]);
        dag.event(C, &[], vec![incr("mixed", i64::MIN)]);
        check(
            &dag,
            &[],
            "
            counter max = 27670116110564327421 {A:27670116110564327421}
            counter min = -27670116110564327424 {A:-18446744073709551616 B:-9223372036854775808}
            counter mixed = -1 {B:9223372036854775807 C:-9223372036854775808}
            ",
        );
    }

    #[test]
    fn counter_zero_totals() {
        // An author's total back at zero leaves no trace.
        let mut dag = Dag::new();
        dag.event(A, &[], vec![incr("c", 5)]);
        dag.event(A, &[], vec![incr("c", -5)]);
        dag.event(B, &[], vec![incr("c", 0), incr("d", 3), incr("d", -3)]);
        check(&dag, &[], "");

        // Authors' totals that cancel out are still state.
        let mut dag = Dag::new();
        dag.event(A, &[], vec![incr("c", 5)]);
        dag.event(B, &[], vec![incr("c", -5)]);
        check(&dag, &[], "counter c = 0 {A:5 B:-5}");
    }

    // ---- sets -----------------------------------------------------------------------------

    #[test]
    fn set_add_and_remove() {
        let mut dag = Dag::new();
        let a1 = dag.event(A, &[], vec![add("s", "x"), add("s", "y")]);
        dag.event(B, &[a1], vec![remove("s", "x")]);
        check(&dag, &[], "set s = {y}");

        let mut dag = Dag::new();
        let a1 = dag.event(A, &[], vec![add("s", "x")]);
        dag.event(B, &[a1], vec![remove("s", "x")]);
        check(&dag, &[], "");
    }

    #[test]
    fn set_concurrent_add_wins_over_remove() {
        let mut dag = Dag::new();
        let a1 = dag.event(A, &[], vec![add("s", "x")]);
        dag.event(B, &[a1], vec![remove("s", "x")]);
        dag.event(C, &[a1], vec![add("s", "x")]);
        check(&dag, &[], "set s = {x}");
    }

    #[test]
    fn set_remove_of_unseen_add_does_nothing() {
        let mut dag = Dag::new();
        dag.event(A, &[], vec![add("s", "x")]);
        dag.event(B, &[], vec![remove("s", "x"), remove("s", "never-added")]);
        check(&dag, &[], "set s = {x}");
    }

    #[test]
    fn set_readd_after_remove() {
        let mut dag = Dag::new();
        let a1 = dag.event(A, &[], vec![add("s", "x")]);
        let b1 = dag.event(B, &[a1], vec![remove("s", "x")]);
        dag.event(A, &[b1], vec![add("s", "x")]);
        check(&dag, &[], "set s = {x}");
    }

    #[test]
    fn set_ops_in_one_event_apply_in_index_order() {
        let mut dag = Dag::new();
        dag.event(
            A,
            &[],
            vec![add("s", "gone"), remove("s", "kept"), add("t", "z"), remove("s", "gone"), add("s", "kept")],
        );
        check(
            &dag,
            &[],
            "
            set s = {kept}
            set t = {z}
            ",
        );
    }

    // ---- exclusion ------------------------------------------------------------------------

    #[test]
    fn exclusion_equals_never_applying_the_ops() {
        let mut dag = Dag::new();
        let a1 = dag.event(A, &[], vec![put("k", "a1"), incr("c", 1), add("s", "x")]);
        dag.event(A, &[], vec![put("k", "a2"), incr("c", 2), add("s", "y"), put("only-a2", "v")]);
        let a3 = dag.event(A, &[], vec![incr("c", 4), remove("s", "x")]);
        let b1 = dag.event(B, &[a1], vec![incr("c", 8), put("b", "b1")]);
        dag.event(C, &[a3, b1], vec![add("s", "z")]);
        check(
            &dag,
            &[],
            "
            register b = b1 [b1/B]
            register k = a2 [a2/A]
            register only-a2 = v [v/A]
            counter c = 15 {A:7 B:8}
            set s = {y z}
            ",
        );
        check(
            &dag,
            &[(A, 2)],
            "
            register b = b1 [b1/B]
            register k = a1 [a1/A]
            counter c = 9 {A:1 B:8}
            set s = {x z}
            ",
        );
        check(
            &dag,
            &[(A, 1)],
            "
            register b = b1 [b1/B]
            counter c = 8 {B:8}
            set s = {z}
            ",
        );
    }

    #[test]
    fn exclusion_uncovers_what_only_the_excluded_op_superseded() {
        let mut dag = Dag::new();
        let c1 = dag.event(C, &[], vec![put("k", "v0"), add("s", "x")]);
        dag.event(A, &[c1], vec![put("k", "v1"), remove("s", "x")]);
        dag.event(B, &[], vec![put("k", "v2")]);
        check(&dag, &[], "register k = v1 [v2/B v1/A]");
        check(
            &dag,
            &[(A, 1)],
            "
            register k = v0 [v2/B v0/C]
            set s = {x}
            ",
        );
    }

    #[test]
    fn exclusion_keeps_hidden_what_an_included_op_superseded() {
        // B's put saw v0 through A's event, so v0 stays superseded when A's put goes.
        let mut dag = Dag::new();
        let c1 = dag.event(C, &[], vec![put("k", "v0"), add("s", "x")]);
        let a1 = dag.event(A, &[c1], vec![put("k", "v1")]);
        dag.event(B, &[a1], vec![put("k", "v2"), remove("s", "x")]);
        check(&dag, &[], "register k = v2 [v2/B]");
        check(&dag, &[(A, 1)], "register k = v2 [v2/B]");
    }

    #[test]
    fn exclusion_of_a_fork() {
        // A signs two events with seq 2; B sees both. Until the exclusion, the clock test is
        // wrong about A's forked ops; after it, they are gone and the rest is exact.
        let mut dag = Dag::new();
        let a1 = dag.event(A, &[], vec![put("k", "a1"), add("s", "x"), incr("c", 1)]);
        let a2 = dag.event_on(A, Some(a1), &[], vec![put("k", "left"), remove("s", "x")]).unwrap();
        let a2_fork = dag.event_on(A, Some(a1), &[], vec![put("k", "right"), incr("c", 10)]).unwrap();
        dag.event_on(A, Some(a2_fork), &[], vec![put("fork-only", "v")]).unwrap();
        let b1 = dag.event(B, &[a2, a2_fork], vec![put("b", "b1"), add("s", "y")]);
        dag.event(C, &[b1], vec![incr("c", 100)]);
        check(
            &dag,
            &[(A, 2)],
            "
            register b = b1 [b1/B]
            register k = a1 [a1/A]
            counter c = 101 {A:1 C:100}
            set s = {x y}
            ",
        );
    }

    #[test]
    fn exclusion_only_lowers() {
        let mut dag = Dag::new();
        for seq in 1..=4 {
            dag.event(A, &[], vec![incr("c", 1 << seq)]);
        }
        let mut doc = Document::new(N_AUTHORS);
        for event in &dag.events {
            doc.apply(event);
        }
        assert_eq!(doc.excluded_from(A), None);
        let counter_c = vec![Change { kind: KeyKind::Counter, key: b"c".to_vec() }];
        assert_eq!(doc.exclude(A, 4), counter_c);
        assert_eq!(doc.counter(b"c"), 2 + 4 + 8);
        assert_eq!(doc.exclude(A, 4), []);
        assert_eq!(doc.exclude(A, 9), []);
        assert_eq!(doc.excluded_from(A), Some(4));
        assert_eq!(doc.exclude(A, 2), counter_c);
        assert_eq!(doc.counter(b"c"), 2);
        assert_eq!(doc.excluded_from(A), Some(2));
        // Nothing of A's is left from seq 2 on, so a lower exclusion there changes nothing.
        let mut dag = Dag::new();
        dag.event(A, &[], vec![incr("c", 1)]);
        dag.event(A, &[], vec![put("k", "v")]);
        let mut doc = Document::new(N_AUTHORS);
        doc.apply(&dag.events[0]);
        doc.apply(&dag.events[1]);
        assert_eq!(doc.exclude(A, 2), [Change { kind: KeyKind::Register, key: b"k".to_vec() }]);
        assert_eq!(doc.exclude(A, 3), []);
        assert_eq!(doc.exclude(B, 1), []);
        // Events at or above the exclusion are skipped when they arrive.
        let mut late = Document::new(N_AUTHORS);
        late.exclude(A, 2);
        late.apply(&dag.events[0]);
        assert_eq!(late.apply(&dag.events[1]), []);
        assert_eq!(late.digest(), doc.digest());
    }

    #[test]
    fn changes_name_each_key_whose_visible_state_changed() {
        let mut dag = Dag::new();
        let a1 = dag.event(
            A,
            &[],
            vec![
                put("k2", "v"),
                add("s", "x"),
                put("k1", "v"),
                incr("zero", 3),
                incr("c", 3),
                incr("zero", -3),
                put("put-del", "v"),
                del("put-del"),
                del("never-put"),
                add("s", "y"),
                add("add-remove", "x"),
                remove("add-remove", "x"),
            ],
        );
        let b1 = dag.event(B, &[a1], vec![add("s", "x"), put("k1", "w")]);
        let c1 = dag.event(C, &[a1], vec![remove("s", "x"), del("k2"), incr("c", 0)]);
        let mut doc = Document::new(N_AUTHORS);
        let change = |kind, key: &str| Change { kind, key: key.as_bytes().to_vec() };
        assert_eq!(
            doc.apply(&dag.events[a1]),
            [
                change(KeyKind::Register, "k1"),
                change(KeyKind::Register, "k2"),
                change(KeyKind::Counter, "c"),
                change(KeyKind::Set, "s"),
            ]
        );
        // Another tag of a present element changes nothing visible.
        assert_eq!(doc.apply(&dag.events[b1]), [change(KeyKind::Register, "k1")]);
        // x keeps B's concurrent tag.
        assert_eq!(doc.apply(&dag.events[c1]), [change(KeyKind::Register, "k2")]);
        assert_eq!(doc.set_members(b"s"), [b"x".to_vec(), b"y".to_vec()]);
        assert_eq!(
            doc.exclude(B, 1),
            [change(KeyKind::Register, "k1"), change(KeyKind::Set, "s")],
            "k1 shows A's value again; x goes, C removed the tag it saw"
        );
        assert_eq!(doc.set_members(b"s"), [b"y".to_vec()]);
        assert_eq!(doc.register(b"k1").visible.unwrap().value, b"v");
    }

    // ---- digest ---------------------------------------------------------------------------

    #[test]
    fn empty_digest_vector() {
        // SHA-256("cairn/document/v1" ‖ three u64 zero counts), computed with `sha256sum`.
        assert_eq!(
            hex::encode(Document::new(N_AUTHORS).digest()),
            "a3a04f08c3dcb55d64ce3058421f4ce9c2416450bfc5373c58819b3b81aef735"
        );
    }

    #[test]
    fn digest_follows_the_documented_layout() {
        let mut dag = Dag::new();
        let a1 = dag.event(A, &[], vec![put("k", "v1"), incr("c", -7), add("s", "y"), add("s", "x")]);
        let b1 = dag.event(B, &[], vec![put("k", "v2"), incr("c", 9), put("gone", "v"), del("gone")]);
        let mut doc = Document::new(N_AUTHORS);
        doc.apply(&dag.events[a1]);
        doc.apply(&dag.events[b1]);

        let mut state = Vec::new();
        let u64_le = |state: &mut Vec<u8>, n: u64| state.extend_from_slice(&n.to_le_bytes());
        let bytes = |state: &mut Vec<u8>, b: &[u8]| {
            state.extend_from_slice(&(b.len() as u64).to_le_bytes());
            state.extend_from_slice(b);
        };
        u64_le(&mut state, 1); // registers
        bytes(&mut state, b"k");
        u64_le(&mut state, 2);
        for (event, value) in [(a1, b"v1"), (b1, b"v2")] {
            state.extend_from_slice(&dag.events[event].id().0);
            u64_le(&mut state, 0); // op index
            u64_le(&mut state, dag.events[event].author_idx() as u64);
            u64_le(&mut state, 1); // lamport
            bytes(&mut state, value);
        }
        u64_le(&mut state, 1); // counters
        bytes(&mut state, b"c");
        u64_le(&mut state, 2);
        u64_le(&mut state, A as u64);
        state.extend_from_slice(&(-7i128).to_le_bytes());
        u64_le(&mut state, B as u64);
        state.extend_from_slice(&9i128.to_le_bytes());
        u64_le(&mut state, 1); // sets
        bytes(&mut state, b"s");
        u64_le(&mut state, 2);
        bytes(&mut state, b"x");
        bytes(&mut state, b"y");
        assert_eq!(doc.digest(), hash(Domain::Document, &state));
    }

    // ---- convergence ----------------------------------------------------------------------

    const REGISTER_KEYS: [&str; 2] = ["r0", "r1"];
    const COUNTER_KEYS: [&str; 2] = ["c0", "c1"];
    const SET_KEYS: [&str; 2] = ["s0", "s1"];
    const VALUES: [&str; 4] = ["v0", "v1", "v2", "v3"];
    const ELEMENTS: [&str; 3] = ["x", "y", "z"];

    #[derive(Clone, Debug)]
    enum OpSpec {
        Put(usize, usize),
        Del(usize),
        Incr(usize, i64),
        Add(usize, usize),
        Remove(usize, usize),
    }

    impl OpSpec {
        fn op(&self) -> Op {
            match *self {
                Self::Put(key, value) => put(REGISTER_KEYS[key], VALUES[value]),
                Self::Del(key) => del(REGISTER_KEYS[key]),
                Self::Incr(key, delta) => incr(COUNTER_KEYS[key], delta),
                Self::Add(key, element) => add(SET_KEYS[key], ELEMENTS[element]),
                Self::Remove(key, element) => remove(SET_KEYS[key], ELEMENTS[element]),
            }
        }
    }

    fn op_spec() -> impl Strategy<Value = OpSpec> {
        prop_oneof![
            (0..2usize, 0..VALUES.len()).prop_map(|(key, value)| OpSpec::Put(key, value)),
            (0..2usize).prop_map(OpSpec::Del),
            (0..2usize, prop_oneof![4 => -3i64..=3, 1 => any::<i64>()])
                .prop_map(|(key, delta)| OpSpec::Incr(key, delta)),
            (0..2usize, 0..ELEMENTS.len()).prop_map(|(key, element)| OpSpec::Add(key, element)),
            (0..2usize, 0..ELEMENTS.len()).prop_map(|(key, element)| OpSpec::Remove(key, element)),
        ]
    }

    /// One new event: its author; for A sometimes a fork (a branch and a seq on it to fork at);
    /// which of the author's branches to extend; which other tips it sees (a bit mask); its ops.
    #[derive(Clone, Debug)]
    struct StepSpec {
        author: MemberIdx,
        fork: Option<(usize, usize)>,
        branch: usize,
        seen_mask: u32,
        ops: Vec<OpSpec>,
    }

    fn step_spec() -> impl Strategy<Value = StepSpec> {
        (
            0..N_AUTHORS,
            proptest::option::weighted(0.15, (any::<usize>(), any::<usize>())),
            any::<usize>(),
            any::<u32>(),
            proptest::collection::vec(op_spec(), 1..4),
        )
            .prop_map(|(author, fork, branch, seen_mask, ops)| StepSpec {
                author,
                fork,
                branch,
                seen_mask,
                ops,
            })
    }

    /// Builds the events. Only A forks; B and C each keep one chain.
    fn build(steps: &[StepSpec]) -> Dag {
        let mut dag = Dag::new();
        // Per author, its branches, each the chain of its event indexes from seq 1.
        let mut branches: Vec<Vec<Vec<usize>>> = vec![vec![Vec::new()]; N_AUTHORS];
        for step in steps {
            let author = step.author;
            let (mut chain, is_fork) = match step.fork {
                Some((branch, at)) if author == A && !branches[A][0].is_empty() => {
                    let chain = &branches[A][branch % branches[A].len()];
                    let seq = 1 + at % chain.len();
                    (chain[..seq - 1].to_vec(), true)
                }
                _ => {
                    let n_branches = branches[author].len();
                    (branches[author][step.branch % n_branches].clone(), false)
                }
            };
            let tips: Vec<usize> = (0..N_AUTHORS)
                .filter(|&other| other != author)
                .flat_map(|other| branches[other].iter().filter_map(|chain| chain.last().copied()))
                .collect();
            let seen: Vec<usize> = tips
                .iter()
                .enumerate()
                .filter(|&(position, _)| position < 32 && step.seen_mask & (1 << position) != 0)
                .map(|(_, &tip)| tip)
                .collect();
            let ops = step.ops.iter().map(OpSpec::op).collect();
            let Some(idx) = dag.event_on(author, chain.last().copied(), &seen, ops) else {
                continue;
            };
            if is_fork {
                chain.push(idx);
                branches[A].push(chain);
            } else {
                let n_branches = branches[author].len();
                branches[author][step.branch % n_branches].push(idx);
            }
        }
        dag
    }

    /// The lowest seq at which A has two different events.
    fn lowest_fork_seq(dag: &Dag) -> Option<u64> {
        let mut ids_by_seq: BTreeMap<u64, BTreeSet<EventId>> = BTreeMap::new();
        for event in dag.events.iter().filter(|e| e.author_idx() == A) {
            ids_by_seq.entry(event.seq()).or_default().insert(event.id());
        }
        ids_by_seq.into_iter().find(|(_, ids)| ids.len() > 1).map(|(seq, _)| seq)
    }

    /// Per counter key, its value and its non-zero author totals.
    type CounterReads = BTreeMap<String, (i128, Vec<(MemberIdx, i128)>)>;

    /// Everything a reader can see of the document at the keys the proptest uses.
    #[derive(Debug, PartialEq, Eq)]
    struct Reads {
        registers: BTreeMap<String, RegisterRead>,
        counters: CounterReads,
        sets: BTreeMap<String, Vec<Vec<u8>>>,
        listed: [Vec<Vec<u8>>; 3],
        digest: [u8; 32],
    }

    fn reads(doc: &Document) -> Reads {
        Reads {
            registers: REGISTER_KEYS.iter().map(|&k| (k.to_owned(), doc.register(k.as_bytes()))).collect(),
            counters: COUNTER_KEYS
                .iter()
                .map(|&k| (k.to_owned(), (doc.counter(k.as_bytes()), counter_totals(doc, k.as_bytes()))))
                .collect(),
            sets: SET_KEYS.iter().map(|&k| (k.to_owned(), doc.set_members(k.as_bytes()))).collect(),
            listed: [
                doc.register_keys().map(<[u8]>::to_vec).collect(),
                doc.counter_keys().map(<[u8]>::to_vec).collect(),
                doc.set_keys().map(<[u8]>::to_vec).collect(),
            ],
            digest: doc.digest(),
        }
    }

    /// The keys whose visible state differs between two reads.
    fn changed(before: &Reads, after: &Reads) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut push = |kind, key: &String, differs: bool| {
            if differs {
                changes.push(Change { kind, key: key.as_bytes().to_vec() });
            }
        };
        for (key, read) in &after.registers {
            push(KeyKind::Register, key, before.registers[key] != *read);
        }
        for (key, (_, totals)) in &after.counters {
            push(KeyKind::Counter, key, before.counters[key].1 != *totals);
        }
        for (key, members) in &after.sets {
            push(KeyKind::Set, key, before.sets[key] != *members);
        }
        changes.sort();
        changes
    }

    /// The document computed straight from the definitions over the included ops, with the
    /// causal past taken from the event graph rather than from clocks.
    fn model(dag: &Dag, exclusion: Option<u64>) -> Reads {
        let n_events = dag.events.len();
        let mut ancestors = vec![vec![false; n_events]; n_events];
        for idx in 0..n_events {
            for &dep in &dag.deps[idx] {
                // Deps come before their dependents, so `ancestors[dep]` is complete.
                let of_dep = ancestors[dep].clone();
                ancestors[idx][dep] = true;
                for (is_ancestor, &of_dep) in ancestors[idx].iter_mut().zip(&of_dep) {
                    *is_ancestor |= of_dep;
                }
            }
        }
        let exclusions: Vec<(MemberIdx, u64)> = exclusion.map(|from_seq| (A, from_seq)).into_iter().collect();
        // (event, op index, op) of every included op.
        let ops: Vec<(usize, u32, &Op)> = (0..n_events)
            .filter(|&idx| !dag.is_excluded(idx, &exclusions))
            .flat_map(|idx| {
                dag.events[idx]
                    .event()
                    .ops
                    .iter()
                    .enumerate()
                    .map(move |(op_idx, op)| (idx, op_idx as u32, op))
            })
            .collect();
        let seen =
            |x: (usize, u32), y: (usize, u32)| if x.0 == y.0 { x.1 < y.1 } else { ancestors[y.0][x.0] };

        let mut registers = BTreeMap::new();
        for key in REGISTER_KEYS {
            let writes: Vec<_> = ops
                .iter()
                .filter(|(_, _, op)| {
                    matches!(op, Op::Put { .. } | Op::Del { .. }) && op.key() == key.as_bytes()
                })
                .collect();
            let mut siblings: Vec<Sibling> = writes
                .iter()
                .filter_map(|&&(idx, op_idx, op)| {
                    let Op::Put { value, .. } = op else { return None };
                    let superseded = writes.iter().any(|&&(other, other_op_idx, _)| {
                        (other, other_op_idx) != (idx, op_idx) && seen((idx, op_idx), (other, other_op_idx))
                    });
                    let event = &dag.events[idx];
                    (!superseded).then(|| Sibling {
                        value: value.clone(),
                        author: event.author_idx(),
                        lamport: event.lamport(),
                        event_id: event.id(),
                        op_idx,
                    })
                })
                .collect();
            siblings.sort_by_key(|s| (s.lamport, s.author, s.event_id, s.op_idx));
            registers.insert(key.to_owned(), RegisterRead { visible: siblings.last().cloned(), siblings });
        }

        let mut counters = BTreeMap::new();
        for key in COUNTER_KEYS {
            let mut totals: BTreeMap<MemberIdx, i128> = BTreeMap::new();
            for &(idx, _, op) in &ops {
                if let Op::Incr { key: op_key, delta } = op
                    && op_key == key.as_bytes()
                {
                    *totals.entry(dag.events[idx].author_idx()).or_default() += i128::from(*delta);
                }
            }
            let totals: Vec<(MemberIdx, i128)> =
                totals.into_iter().filter(|&(_, total)| total != 0).collect();
            counters.insert(key.to_owned(), (totals.iter().map(|&(_, total)| total).sum(), totals));
        }

        let mut sets = BTreeMap::new();
        for key in SET_KEYS {
            let mut members = Vec::new();
            for element in ELEMENTS {
                let of_element = |want_add: bool| {
                    ops.iter().filter(move |(_, _, op)| match op {
                        Op::Add { key: k, element: e } => {
                            want_add && k == key.as_bytes() && e == element.as_bytes()
                        }
                        Op::Remove { key: k, element: e } => {
                            !want_add && k == key.as_bytes() && e == element.as_bytes()
                        }
                        _ => false,
                    })
                };
                let is_member = of_element(true).any(|&(idx, op_idx, _)| {
                    !of_element(false)
                        .any(|&(other, other_op_idx, _)| seen((idx, op_idx), (other, other_op_idx)))
                });
                if is_member {
                    members.push(element.as_bytes().to_vec());
                }
            }
            sets.insert(key.to_owned(), members);
        }

        let listed = [
            registers
                .iter()
                .filter(|(_, r)| !r.siblings.is_empty())
                .map(|(k, _)| k.as_bytes().to_vec())
                .collect(),
            counters.iter().filter(|(_, (_, t))| !t.is_empty()).map(|(k, _)| k.as_bytes().to_vec()).collect(),
            sets.iter().filter(|(_, m)| !m.is_empty()).map(|(k, _)| k.as_bytes().to_vec()).collect(),
        ];
        let digest = model_digest(&registers, &counters, &sets);
        Reads { registers, counters, sets, listed, digest }
    }

    /// The digest layout of the module documentation, written out a second time.
    fn model_digest(
        registers: &BTreeMap<String, RegisterRead>,
        counters: &CounterReads,
        sets: &BTreeMap<String, Vec<Vec<u8>>>,
    ) -> [u8; 32] {
        let mut state = Vec::new();
        let u64_le = |state: &mut Vec<u8>, n: usize| state.extend_from_slice(&(n as u64).to_le_bytes());
        let bytes = |state: &mut Vec<u8>, b: &[u8]| {
            u64_le(state, b.len());
            state.extend_from_slice(b);
        };
        let registers: Vec<_> = registers.iter().filter(|(_, r)| !r.siblings.is_empty()).collect();
        u64_le(&mut state, registers.len());
        for (key, read) in registers {
            bytes(&mut state, key.as_bytes());
            u64_le(&mut state, read.siblings.len());
            for sibling in &read.siblings {
                state.extend_from_slice(&sibling.event_id.0);
                u64_le(&mut state, sibling.op_idx as usize);
                u64_le(&mut state, sibling.author);
                state.extend_from_slice(&sibling.lamport.to_le_bytes());
                bytes(&mut state, &sibling.value);
            }
        }
        let counters: Vec<_> = counters.iter().filter(|(_, (_, totals))| !totals.is_empty()).collect();
        u64_le(&mut state, counters.len());
        for (key, (_, totals)) in counters {
            bytes(&mut state, key.as_bytes());
            u64_le(&mut state, totals.len());
            for &(author, total) in totals {
                u64_le(&mut state, author);
                state.extend_from_slice(&total.to_le_bytes());
            }
        }
        let sets: Vec<_> = sets.iter().filter(|(_, members)| !members.is_empty()).collect();
        u64_le(&mut state, sets.len());
        for (key, members) in sets {
            bytes(&mut state, key.as_bytes());
            u64_le(&mut state, members.len());
            for member in members {
                bytes(&mut state, member);
            }
        }
        hash(Domain::Document, &state)
    }

    /// Applies `order` to a fresh document, running each `(point, from_seq)` exclusion of A
    /// before the event at `point` (after all of them for `point == order.len()`), and checks
    /// that every call reports exactly the keys whose visible state changed.
    fn run(dag: &Dag, order: &[usize], exclusions: &[(usize, u64)]) -> Document {
        #[derive(Debug)]
        enum Step {
            Exclude(u64),
            Apply(usize),
        }
        let mut doc = Document::new(N_AUTHORS);
        let mut last = reads(&doc);
        for point in 0..=order.len() {
            let excludes = exclusions
                .iter()
                .filter(|&&(at, _)| at == point)
                .map(|&(_, from_seq)| Step::Exclude(from_seq));
            for step in excludes.chain(order.get(point).map(|&idx| Step::Apply(idx))) {
                let changes = match step {
                    Step::Apply(idx) => doc.apply(&dag.events[idx]),
                    Step::Exclude(from_seq) => doc.exclude(A, from_seq),
                };
                let now = reads(&doc);
                assert_eq!(changes, changed(&last, &now), "at point {point}, {step:?}");
                last = now;
            }
        }
        doc
    }

    proptest! {
        #[test]
        fn converges_whatever_the_order_and_the_time_of_exclusion(
            steps in proptest::collection::vec(step_spec(), 1..24),
            order_choices in proptest::array::uniform2(proptest::collection::vec(any::<usize>(), 24)),
            exclude_without_fork in any::<bool>(),
            from_seq_choice in any::<u64>(),
            higher_first in proptest::option::of(0..3u64),
            points in proptest::array::uniform3(any::<usize>()),
        ) {
            let dag = build(&steps);
            let n_events = dag.events.len();
            let a_seq_max = dag.events.iter().filter(|e| e.author_idx() == A).map(Verified::seq).max();
            // A fork must be excluded at or below its seq; without one, exclusion is optional.
            let from_seq = match lowest_fork_seq(&dag) {
                Some(fork_seq) => Some(1 + from_seq_choice % fork_seq),
                None if exclude_without_fork => Some(1 + from_seq_choice % (a_seq_max.unwrap_or(0) + 1)),
                None => None,
            };
            let [choices_1, choices_2] = order_choices;
            let mut choices_1 = choices_1.into_iter().cycle();
            let mut choices_2 = choices_2.into_iter().cycle();
            let order_1 = dag.topological_order(|n| choices_1.next().unwrap() % n);
            let order_2 = dag.topological_order(|n| choices_2.next().unwrap() % n);
            let point = |choice: usize| choice % (n_events + 1);

            // Document 1 may first exclude at a higher seq, then lowers it; document 2 excludes
            // once; document 3 excludes before anything arrives.
            let mut exclusions_1 = Vec::new();
            let mut exclusions_2 = Vec::new();
            let mut exclusions_3 = Vec::new();
            if let Some(from_seq) = from_seq {
                if let Some(higher) = higher_first {
                    exclusions_1.push((point(points[0]), from_seq + higher));
                }
                exclusions_1.push((point(points[1]), from_seq));
                exclusions_2.push((point(points[2]), from_seq));
                exclusions_3.push((0, from_seq));
            }
            // Document 1's exclusions run in point order; at one point, the higher one first.
            exclusions_1.sort_by_key(|&(at, _)| at);
            let doc_1 = run(&dag, &order_1, &exclusions_1);
            let doc_2 = run(&dag, &order_2, &exclusions_2);
            let doc_3 = run(&dag, &order_1, &exclusions_3);
            let expected = model(&dag, from_seq);
            prop_assert_eq!(reads(&doc_1), reads(&doc_2));
            prop_assert_eq!(reads(&doc_1), reads(&doc_3));
            prop_assert_eq!(reads(&doc_1), expected);
        }
    }
}
