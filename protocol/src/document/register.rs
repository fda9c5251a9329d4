//! Registers (multi-value): the frontier of one key's puts and dels, whose puts are the
//! siblings.

use cairn_crypto::{Domain, hash};

use super::frontier::FrontierEntry;
use super::{OpId, OpMeta, Sibling};

/// Values of at most this many bytes are held in the document's memory; a larger one is held as
/// its length and hash, and read from its put's event when asked for (`Node::register`), so
/// that the document's memory does not grow with the bytes members write.
pub const VALUE_INLINE_BYTES_MAX: usize = 64;

/// A put's value as the document holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum HeldValue {
    /// At most [`VALUE_INLINE_BYTES_MAX`] bytes: the value itself.
    Inline(Box<[u8]>),
    /// A larger value: its length and `SHA-256("cairn/value/v1" ‖ value)`.
    Elsewhere { len: u64, hash: [u8; 32] },
}

impl HeldValue {
    pub(super) fn of(value: &[u8]) -> Self {
        if value.len() <= VALUE_INLINE_BYTES_MAX {
            Self::Inline(value.into())
        } else {
            Self::Elsewhere { len: value.len() as u64, hash: hash(Domain::Value, value) }
        }
    }

    /// The value's length and hash, as the digest takes them.
    pub(super) fn len_and_hash(&self) -> (u64, [u8; 32]) {
        match self {
            Self::Inline(value) => (value.len() as u64, hash(Domain::Value, value)),
            Self::Elsewhere { len, hash } => (*len, *hash),
        }
    }
}

/// A `Put` (with its value) or a `Del` (without) in a register's frontier.
#[derive(Debug)]
pub(super) struct RegisterEntry {
    pub(super) op: OpMeta,
    pub(super) value: Option<HeldValue>,
}

impl FrontierEntry for RegisterEntry {
    fn op(&self) -> &OpMeta {
        &self.op
    }
}

impl RegisterEntry {
    pub(super) fn sibling(&self) -> Sibling {
        let (value, value_held) = match self.value.as_ref().expect("siblings are puts") {
            HeldValue::Inline(value) => (value.to_vec(), true),
            HeldValue::Elsewhere { .. } => (Vec::new(), false),
        };
        Sibling {
            value,
            value_held,
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
