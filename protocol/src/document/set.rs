//! Observed-remove sets: the recorded adds and removes of each element of one key, and its
//! live tags.

use std::collections::BTreeMap;

use super::{OpMeta, Replay};

#[derive(Debug, Default)]
pub(super) struct SetState {
    pub(super) elements: BTreeMap<Vec<u8>, ElementState>,
    /// How many elements have a live tag.
    pub(super) n_members: usize,
}

/// An `Add` (a tag) or a `Remove`.
#[derive(Debug)]
pub(super) struct SetWrite {
    pub(super) op: OpMeta,
    pub(super) is_add: bool,
}

#[derive(Debug, Default)]
pub(super) struct ElementState {
    /// Every included add and remove of the element, in apply order (a causal order).
    pub(super) history: Vec<SetWrite>,
    /// Indexes into `history` of the live add tags.
    pub(super) live: Vec<usize>,
}

impl ElementState {
    pub(super) fn is_member(&self) -> bool {
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

    /// Records an op that comes after every recorded op in its causal past (see
    /// `RegisterState`'s `push`).
    fn push(&mut self, write: SetWrite) {
        if write.is_add {
            self.live.push(self.history.len());
        } else {
            let history = &self.history;
            self.live.retain(|&idx| !history[idx].op.is_seen_by(&write.op));
        }
        self.history.push(write);
    }
}
