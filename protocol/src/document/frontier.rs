//! Frontiers, shared by registers and set elements: the included ops on one key (or element)
//! that no included op applied after them has in its causal past, ascending by the sibling
//! order. Applying an op covers the entries it sees; an exclusion recomputes the frontier from
//! what is left and what the excluded ops covered (see the module documentation, section
//! Exclusion).

use std::collections::{BTreeMap, BTreeSet};

use super::{DocHistory, OpId, OpMeta};

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

/// The entries of `pool` that no other entry has in its causal past, sorted by the sibling
/// order; the others are recorded in `covered`. Quadratic in the pool, which holds the
/// surviving frontier and what the excluded ops covered.
fn maximal<E: FrontierEntry>(pool: Vec<E>, covered: &mut BTreeMap<OpId, Vec<OpId>>) -> Vec<E> {
    let sees = |j: usize, i: usize| i != j && pool[i].op().is_superseded_by(pool[j].op());
    let kept: Vec<bool> = (0..pool.len()).map(|i| !(0..pool.len()).any(|j| sees(j, i))).collect();
    for i in (0..pool.len()).filter(|&i| !kept[i]) {
        // With the causal test exact, a kept op sees every dropped one (the order is finite and
        // transitive); with a fork not yet excluded there may be none, and any op that sees it
        // keeps the invariant.
        let Some(by) = (0..pool.len())
            .find(|&j| kept[j] && sees(j, i))
            .or_else(|| (0..pool.len()).find(|&j| sees(j, i)))
        else {
            unreachable!("an op is dropped only when another op of the pool sees it")
        };
        covered.entry(pool[by].op().id()).or_default().push(pool[i].op().id());
    }
    let mut frontier: Vec<E> =
        pool.into_iter().zip(kept).filter_map(|(entry, is_kept)| is_kept.then_some(entry)).collect();
    frontier.sort_by_key(|entry| entry.op().order_key());
    frontier
}
