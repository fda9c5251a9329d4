//! Frontiers, shared by registers and set elements: the included ops on one key (or element)
//! that no included op applied after them has in its causal past, ascending by the sibling
//! order. Applying an op covers the entries it sees; an exclusion recomputes the frontier from
//! what is left and what the excluded ops covered (see the module documentation, section
//! Exclusion).

use std::collections::{BTreeMap, BTreeSet};

use super::{DocHistory, OpId, OpMeta};
use crate::event::EventId;

/// A frontier entry: an op, and what it wrote.
pub(super) trait FrontierEntry {
    fn op(&self) -> &OpMeta;
}

/// Adds `new`, which comes after every op of the frontier in its causal past: the entries it
/// sees leave the frontier, and their ids are returned, in frontier order. Nothing in the
/// frontier can have the new op in its past, so it joins without being covered.
pub(super) fn advance<E: FrontierEntry>(frontier: &mut Vec<E>, new: E) -> Vec<OpId> {
    let mut covered = Vec::new();
    frontier.retain(|entry| {
        let is_seen = entry.op().is_superseded_by(new.op());
        if is_seen {
            covered.push(entry.op().id());
        }
        !is_seen
    });
    let order_key = new.op().order_key();
    let position = frontier.partition_point(|entry| entry.op().order_key() < order_key);
    frontier.insert(position, new);
    covered
}

/// The frontier after an exclusion has lowered `excluded_from`: the maximal ops of the pool
/// made of the entries of `frontier` still included and the included ops that the excluded
/// ops `excluded` covered (read from `history`, built by `load`). Every op of the pool left out
/// is recorded in `covered` as covered by an op of the pool that has it in its past (a kept one
/// when there is one), which keeps invariant C of the module documentation.
pub(super) fn retract<E: FrontierEntry>(
    frontier: Vec<E>,
    excluded_from: &[u64],
    excluded: &[OpId],
    history: &dyn DocHistory,
    covered: &mut BTreeMap<OpId, Vec<OpId>>,
    mut load: impl FnMut(OpId) -> E,
) -> Vec<E> {
    let is_included = |op: &OpMeta| op.event.seq < excluded_from[op.event.author];
    let mut pool: Vec<E> = frontier.into_iter().filter(|entry| is_included(entry.op())).collect();
    let mut in_pool: BTreeSet<OpId> = pool.iter().map(|entry| entry.op().id()).collect();
    for &(event_id, op_idx) in excluded {
        for id in history.covered(&event_id, op_idx) {
            if in_pool.contains(&id) {
                continue;
            }
            let candidate = load(id);
            // Ops excluded earlier, this author's or another's, stay out.
            if is_included(candidate.op()) {
                in_pool.insert(id);
                pool.push(candidate);
            }
        }
    }
    maximal(pool, covered)
}

/// The entries of `pool` that no other entry supersedes, sorted by the sibling order; the
/// others are recorded in `covered`. Linear in the pool times the authors ([`Superseders`]), so
/// an exclusion over a key with many siblings stays cheap.
fn maximal<E: FrontierEntry>(pool: Vec<E>, covered: &mut BTreeMap<OpId, Vec<OpId>>) -> Vec<E> {
    let all = Superseders::of(&pool, |_| true);
    let kept: Vec<bool> = (0..pool.len()).map(|i| all.find(&pool, i).is_none()).collect();
    let by_kept = Superseders::of(&pool, |j| kept[j]);
    for i in (0..pool.len()).filter(|&i| !kept[i]) {
        // With the causal test exact, a kept op supersedes every dropped one (the relation is
        // finite and transitive); with a fork not yet excluded there may be none, and any op
        // that supersedes it keeps the invariant.
        let Some(by) = by_kept.find(&pool, i).or_else(|| all.find(&pool, i)) else {
            unreachable!("an op is dropped only when another op of the pool supersedes it")
        };
        covered.entry(pool[by].op().id()).or_default().push(pool[i].op().id());
    }
    let mut frontier: Vec<E> =
        pool.into_iter().zip(kept).filter_map(|(entry, is_kept)| is_kept.then_some(entry)).collect();
    frontier.sort_by_key(|entry| entry.op().order_key());
    frontier
}

/// Which entries of a pool supersede a given one, found without comparing every pair. Op Y of
/// another event supersedes op X (author `a`, seq `s`) when Y's *reach* for `a` (its seen clock
/// with a causal context, else its event's clock) is at least `s`; an op of X's own event
/// supersedes it when it comes later and has no context. So it is enough to know, per author,
/// the two entries of highest reach from two distinct events, and per event its last op
/// without a context.
struct Superseders {
    /// Per author index: up to two `(reach, entry)` of the highest reach for that author, of
    /// two distinct events, the higher first.
    top: Vec<[Option<(u64, usize)>; 2]>,
    /// Per event: the entry with the highest op index among its ops without a context.
    last_plain: BTreeMap<EventId, (u32, usize)>,
}

impl Superseders {
    /// Over the entries `j` of `pool` with `counts(j)`.
    fn of<E: FrontierEntry>(pool: &[E], counts: impl Fn(usize) -> bool) -> Self {
        let mut top: Vec<[Option<(u64, usize)>; 2]> = Vec::new();
        let mut last_plain: BTreeMap<EventId, (u32, usize)> = BTreeMap::new();
        for (j, entry) in pool.iter().enumerate().filter(|&(j, _)| counts(j)) {
            let op = entry.op();
            let reach: &[u64] = op.seen.as_deref().map_or(&op.event.clock, |seen| &**seen);
            if top.len() < reach.len() {
                top.resize(reach.len(), [None, None]);
            }
            for (author, &value) in reach.iter().enumerate() {
                let slots = &mut top[author];
                let event_of = |k: usize| pool[k].op().event.id;
                match slots[0] {
                    None => slots[0] = Some((value, j)),
                    Some((best, k)) if value > best => {
                        if event_of(k) != op.event.id {
                            slots[1] = slots[0];
                        }
                        slots[0] = Some((value, j));
                    }
                    Some((_, k)) if event_of(k) != op.event.id => {
                        if slots[1].is_none_or(|(second, _)| value > second) {
                            slots[1] = Some((value, j));
                        }
                    }
                    Some(_) => {}
                }
            }
            if op.seen.is_none() {
                let last = last_plain.entry(op.event.id).or_insert((op.op_idx, j));
                if op.op_idx > last.0 {
                    *last = (op.op_idx, j);
                }
            }
        }
        Self { top, last_plain }
    }

    /// An entry that supersedes entry `i` of `pool`, if one does.
    fn find<E: FrontierEntry>(&self, pool: &[E], i: usize) -> Option<usize> {
        let op = pool[i].op();
        if let Some(&(op_idx, j)) = self.last_plain.get(&op.event.id)
            && op_idx > op.op_idx
        {
            return Some(j);
        }
        let slots = self.top.get(op.event.author)?;
        slots
            .iter()
            .flatten()
            .find(|&&(reach, j)| pool[j].op().event.id != op.event.id && reach >= op.event.seq)
            .map(|&(_, j)| j)
    }
}
