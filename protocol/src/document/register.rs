//! Registers (multi-value): the recorded puts and dels of one key, and its siblings.

use super::{OpMeta, Replay, Sibling};
use crate::event::EventId;

/// A `Put` (with its value) or a `Del` (without).
#[derive(Debug)]
pub(super) struct RegisterWrite {
    pub(super) op: OpMeta,
    pub(super) value: Option<Box<[u8]>>,
}

#[derive(Debug, Default)]
pub(super) struct RegisterState {
    /// Every included put and del on the key, in apply order (a causal order).
    pub(super) history: Vec<RegisterWrite>,
    /// Indexes into `history` of the siblings, ascending by the sibling order.
    pub(super) siblings: Vec<usize>,
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
}

impl RegisterState {
    pub(super) fn sibling_ids(&self) -> Vec<(EventId, u32)> {
        self.siblings
            .iter()
            .map(|&idx| (self.history[idx].op.event.id, self.history[idx].op.op_idx))
            .collect()
    }

    pub(super) fn sibling(&self, idx: usize) -> Sibling {
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
