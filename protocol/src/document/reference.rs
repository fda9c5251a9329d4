//! The reference model for the tests: the document as it was before it kept only frontiers. It
//! records every included op of a key and replays them in apply order to retract an excluded
//! author's ops. Memory is linear in history, which is why it lives only in the tests now; the
//! frontier document must read the same as this model in every state whose causal test is
//! exact (see `Document::exclude`).

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_crypto::{Domain, Hasher, hash};

use super::{
    Change, EventMeta, KeyKind, OpMeta, RegisterRead, Sibling, checked_sum, entry, group_key, key_order,
    same_key, update_bytes, update_len, update_membership,
};
use crate::archive::SeenClocks;
use crate::event::{EventId, Op};
use crate::genesis::MemberIdx;
use crate::verified::Verified;

/// The replay document.
#[derive(Debug)]
pub(super) struct Reference {
    /// Per author, the lowest seq whose ops are excluded; `u64::MAX` for an author in good
    /// standing.
    excluded_from: Vec<u64>,
    registers: BTreeMap<Vec<u8>, RegisterState>,
    counters: BTreeMap<Vec<u8>, CounterState>,
    sets: BTreeMap<Vec<u8>, SetState>,
    /// Per author, the keys holding its ops, so that an exclusion recomputes only those.
    touched: Vec<Touched>,
    /// Each author's key, as its events named it: the digest orders authors by key.
    keys: BTreeMap<MemberIdx, cairn_crypto::PublicKey>,
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

    /// Records a write that comes after every recorded write in its causal past.
    fn push(&mut self, write: Self::Write);
}

/// Drops the ops of `author` from `from_seq` on from `state` and replays the rest, which gives
/// the state as if they had never been applied. Returns the highest seq of `author` left, if
/// any.
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

// ---- registers ------------------------------------------------------------------------

/// A `Put` (with its value) or a `Del` (without).
#[derive(Debug)]
struct RegisterWrite {
    op: OpMeta,
    value: Option<Box<[u8]>>,
}

#[derive(Debug, Default)]
struct RegisterState {
    /// Every included put and del on the key, in apply order.
    history: Vec<RegisterWrite>,
    /// Indexes into `history` of the siblings, ascending by the sibling order.
    siblings: Vec<usize>,
}

impl Replay for RegisterState {
    type Write = RegisterWrite;

    fn op(write: &RegisterWrite) -> &OpMeta {
        &write.op
    }

    fn take_history(&mut self) -> Vec<RegisterWrite> {
        self.siblings.clear();
        std::mem::take(&mut self.history)
    }

    fn push(&mut self, write: RegisterWrite) {
        let history = &self.history;
        self.siblings.retain(|&idx| !history[idx].op.is_superseded_by(&write.op));
        if write.value.is_some() {
            let order_key = write.op.order_key();
            let position = self.siblings.partition_point(|&idx| history[idx].op.order_key() < order_key);
            self.siblings.insert(position, history.len());
        }
        self.history.push(write);
    }
}

impl RegisterState {
    fn sibling_ids(&self) -> Vec<(EventId, u32)> {
        self.siblings.iter().map(|&idx| self.history[idx].op.id()).collect()
    }

    fn sibling(&self, idx: usize) -> Sibling {
        let write = &self.history[idx];
        let value = write.value.as_deref().expect("only puts are siblings");
        // As the document gives it: larger values are read from their event by the node.
        let value_held = value.len() <= super::VALUE_INLINE_BYTES_MAX;
        Sibling {
            value: if value_held { value.to_vec() } else { Vec::new() },
            value_held,
            author: write.op.event.author,
            lamport: write.op.event.lamport,
            event_id: write.op.event.id,
            op_idx: write.op.op_idx,
        }
    }
}

// ---- counters -------------------------------------------------------------------------

#[derive(Debug, Default)]
struct CounterState {
    by_author: BTreeMap<MemberIdx, AuthorTally>,
}

#[derive(Debug, Default)]
struct AuthorTally {
    total: i128,
    /// `(seq, sum of the event's deltas on this key)`, one entry per event with a non-zero sum.
    by_seq: Vec<(u64, i128)>,
}

impl CounterState {
    fn value(&self) -> i128 {
        self.by_author.values().map(|tally| tally.total).fold(0, checked_sum)
    }

    fn is_empty(&self) -> bool {
        self.by_author.values().all(|tally| tally.total == 0)
    }
}

// ---- sets -----------------------------------------------------------------------------

#[derive(Debug, Default)]
struct SetState {
    elements: BTreeMap<Vec<u8>, ElementState>,
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
    /// Every included add and remove of the element, in apply order.
    history: Vec<SetWrite>,
    /// Indexes into `history` of the live add tags.
    live: Vec<usize>,
}

impl ElementState {
    fn is_member(&self) -> bool {
        !self.live.is_empty()
    }
}

impl Replay for ElementState {
    type Write = SetWrite;

    fn op(write: &SetWrite) -> &OpMeta {
        &write.op
    }

    fn take_history(&mut self) -> Vec<SetWrite> {
        self.live.clear();
        std::mem::take(&mut self.history)
    }

    fn push(&mut self, write: SetWrite) {
        if write.is_add {
            self.live.push(self.history.len());
        } else {
            let history = &self.history;
            self.live.retain(|&idx| !history[idx].op.is_superseded_by(&write.op));
        }
        self.history.push(write);
    }
}

// ---- the document ---------------------------------------------------------------------

impl Reference {
    pub(super) fn new(n_members: usize) -> Self {
        Self {
            excluded_from: vec![u64::MAX; n_members],
            registers: BTreeMap::new(),
            counters: BTreeMap::new(),
            sets: BTreeMap::new(),
            touched: (0..n_members).map(|_| Touched::default()).collect(),
            keys: BTreeMap::new(),
        }
    }

    pub(super) fn apply(&mut self, event: &Verified) -> Vec<Change> {
        let author = event.author_idx();
        self.keys.insert(author, event.event().header.author);
        let seq = event.seq();
        if seq >= self.excluded_from[author] {
            return Vec::new();
        }
        let meta = Arc::new(EventMeta::of(event));
        let ops = &event.event().ops;
        let order = key_order(ops);
        let mut changes = Vec::new();
        for group in order.chunk_by(|&a, &b| same_key(ops, a, b)) {
            let (kind, key, _) = group_key(&ops[group[0] as usize]);
            let changed = match kind {
                KeyKind::Register => self.apply_register(&meta, key, ops, group, event.seen_clocks()),
                KeyKind::Counter => self.apply_counter(author, seq, key, ops, group),
                KeyKind::Set => self.apply_set(&meta, key, ops, group, event.seen_clocks()),
            };
            if changed {
                changes.push(Change { kind, key: key.to_vec() });
            }
        }
        changes
    }

    fn apply_register(
        &mut self,
        meta: &Arc<EventMeta>,
        key: &[u8],
        ops: &[Op],
        group: &[u32],
        seen: &SeenClocks,
    ) -> bool {
        note_touch(&mut self.touched[meta.author].registers, key, meta.seq);
        let state = entry(&mut self.registers, key);
        let before = state.siblings.clone();
        for &op_idx in group {
            let value = match &ops[op_idx as usize] {
                Op::Put { value, .. } | Op::PutSeen { value, .. } => Some(value.as_slice().into()),
                Op::Del { .. } | Op::DelSeen { .. } => None,
                op => unreachable!("{op:?} in a register group"),
            };
            state.push(RegisterWrite { op: OpMeta::new(Arc::clone(meta), op_idx, seen), value });
        }
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
        meta: &Arc<EventMeta>,
        key: &[u8],
        ops: &[Op],
        group: &[u32],
        seen: &SeenClocks,
    ) -> bool {
        note_touch(&mut self.touched[meta.author].sets, key, meta.seq);
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
                let is_add = matches!(&ops[op_idx as usize], Op::Add { .. } | Op::AddSeen { .. });
                element_state.push(SetWrite { op: OpMeta::new(Arc::clone(meta), op_idx, seen), is_add });
            }
            changed |= update_membership(&mut state.n_members, was_member, element_state.is_member());
            start = end;
        }
        changed
    }

    pub(super) fn exclude(&mut self, author: MemberIdx, from_seq: u64) -> Vec<Change> {
        if from_seq >= self.excluded_from[author] {
            return Vec::new();
        }
        self.excluded_from[author] = from_seq;
        let touched = &mut self.touched[author];
        let mut changes = Vec::new();
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

    pub(super) fn register(&self, key: &[u8]) -> RegisterRead {
        let Some(state) = self.registers.get(key) else {
            return RegisterRead::default();
        };
        let siblings: Vec<Sibling> = state.siblings.iter().map(|&idx| state.sibling(idx)).collect();
        RegisterRead { visible: siblings.last().cloned(), siblings }
    }

    pub(super) fn counter(&self, key: &[u8]) -> i128 {
        self.counters.get(key).map_or(0, CounterState::value)
    }

    /// The non-zero author totals of a counter.
    pub(super) fn counter_totals(&self, key: &[u8]) -> Vec<(MemberIdx, i128)> {
        self.counters.get(key).map_or_else(Vec::new, |state| {
            state
                .by_author
                .iter()
                .filter(|(_, tally)| tally.total != 0)
                .map(|(&author, tally)| (author, tally.total))
                .collect()
        })
    }

    pub(super) fn set_members(&self, key: &[u8]) -> Vec<Vec<u8>> {
        let Some(state) = self.sets.get(key) else {
            return Vec::new();
        };
        state.elements.iter().filter(|(_, element)| element.is_member()).map(|(e, _)| e.clone()).collect()
    }

    pub(super) fn register_keys(&self) -> impl Iterator<Item = &[u8]> {
        self.registers.iter().filter(|(_, state)| !state.siblings.is_empty()).map(|(key, _)| key.as_slice())
    }

    pub(super) fn counter_keys(&self) -> impl Iterator<Item = &[u8]> {
        self.counters.iter().filter(|(_, state)| !state.is_empty()).map(|(key, _)| key.as_slice())
    }

    pub(super) fn set_keys(&self) -> impl Iterator<Item = &[u8]> {
        self.sets.iter().filter(|(_, state)| state.n_members > 0).map(|(key, _)| key.as_slice())
    }

    pub(super) fn digest(&self) -> [u8; 32] {
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
                hasher.update(write.op.event.author_key.as_bytes());
                hasher.update(&write.op.event.lamport.to_le_bytes());
                let value = write.value.as_deref().expect("only puts are siblings");
                hasher.update(&(value.len() as u64).to_le_bytes());
                hasher.update(&hash(Domain::Value, value));
            }
        }
        let counters: Vec<_> = self.counters.iter().filter(|(_, state)| !state.is_empty()).collect();
        update_len(&mut hasher, counters.len());
        for (key, state) in counters {
            update_bytes(&mut hasher, key);
            let mut totals: Vec<_> = state
                .by_author
                .iter()
                .filter(|(_, tally)| tally.total != 0)
                .map(|(author, tally)| (self.keys[author], tally.total))
                .collect();
            totals.sort_unstable();
            update_len(&mut hasher, totals.len());
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
            for (element, _) in state.elements.iter().filter(|(_, element)| element.is_member()) {
                update_bytes(&mut hasher, element);
            }
        }
        hasher.finish()
    }
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
