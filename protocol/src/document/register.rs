//! Registers (multi-value): the frontier of one key's puts and dels, whose puts are the
//! siblings.

use super::frontier::FrontierEntry;
use super::{OpId, OpMeta, Sibling};

/// A `Put` (with its value) or a `Del` (without) in a register's frontier.
#[derive(Debug)]
pub(super) struct RegisterEntry {
    pub(super) op: OpMeta,
    pub(super) value: Option<Box<[u8]>>,
}

impl FrontierEntry for RegisterEntry {
    fn op(&self) -> &OpMeta {
        &self.op
    }
}

impl RegisterEntry {
    pub(super) fn sibling(&self) -> Sibling {
        Sibling {
            value: self.value.as_deref().expect("siblings are puts").to_vec(),
            author: self.op.event.author,
            lamport: self.op.event.lamport,
            event_id: self.op.event.id,
            op_idx: self.op.op_idx,
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct RegisterState {
    /// The included puts and dels that no included op applied after them has in its past,
    /// ascending by the sibling order.
    pub(super) frontier: Vec<RegisterEntry>,
}

impl RegisterState {
    /// The siblings: the puts of the frontier, ascending by the sibling order.
    pub(super) fn siblings(&self) -> impl Iterator<Item = &RegisterEntry> {
        self.frontier.iter().filter(|entry| entry.value.is_some())
    }

    pub(super) fn has_sibling(&self) -> bool {
        self.siblings().next().is_some()
    }

    pub(super) fn sibling_ids(&self) -> Vec<OpId> {
        self.siblings().map(|entry| entry.op.id()).collect()
    }

    pub(super) fn frontier_ids(&self) -> Vec<OpId> {
        self.frontier.iter().map(|entry| entry.op.id()).collect()
    }
}
