//! Counters (PN-counter): each author's total on one key. An exclusion subtracts the deltas
//! of the excluded events, read back from the history, so no per-event sums are kept.

use std::collections::BTreeMap;

use super::checked_sum;
use crate::genesis::MemberIdx;

#[derive(Debug, Default)]
pub(super) struct CounterState {
    /// Per author, its total when it is not zero.
    pub(super) totals: BTreeMap<MemberIdx, i128>,
}

impl CounterState {
    pub(super) fn value(&self) -> i128 {
        self.totals.values().copied().fold(0, checked_sum)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.totals.is_empty()
    }

    /// Adds `delta` to the total of `author`; a total back at zero is dropped.
    pub(super) fn add(&mut self, author: MemberIdx, delta: i128) {
        let total = checked_sum(self.totals.get(&author).copied().unwrap_or(0), delta);
        if total == 0 {
            self.totals.remove(&author);
        } else {
            self.totals.insert(author, total);
        }
    }
}
