//! Counters (PN-counter): each author's deltas on one key, summed per event so that an
//! exclusion by seq can take them out.

use std::collections::BTreeMap;

use super::checked_sum;
use crate::genesis::MemberIdx;

#[derive(Debug, Default)]
pub(super) struct CounterState {
    /// Per author with recorded deltas: its total and the deltas it is made of.
    pub(super) by_author: BTreeMap<MemberIdx, AuthorTally>,
}

impl CounterState {
    pub(super) fn value(&self) -> i128 {
        self.by_author.values().map(|tally| tally.total).fold(0, checked_sum)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_author.values().all(|tally| tally.total == 0)
    }
}

#[derive(Debug, Default)]
pub(super) struct AuthorTally {
    pub(super) total: i128,
    /// `(seq, sum of the event's deltas on this key)`, one entry per event with a non-zero sum.
    /// Exclusion goes by seq, so this is all the history a counter needs.
    pub(super) by_seq: Vec<(u64, i128)>,
}
