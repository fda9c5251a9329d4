//! Observed-remove sets: per element of one key, the frontier of its adds and removes. An
//! element is a member when its frontier holds an add.

use std::collections::BTreeMap;

use super::frontier::FrontierEntry;
use super::{OpId, OpMeta};

#[derive(Debug, Default)]
pub(super) struct SetState {
    /// Every element with a frontier, members and tombstones.
    pub(super) elements: BTreeMap<Vec<u8>, ElementState>,
    /// How many elements are members.
    pub(super) n_members: usize,
}

impl SetState {
    /// The members, in ascending byte order.
    pub(super) fn members(&self) -> impl Iterator<Item = &[u8]> {
        self.elements.iter().filter(|(_, element)| element.is_member()).map(|(element, _)| element.as_slice())
    }
}

/// An `Add` (a tag) or a `Remove` in an element's frontier.
#[derive(Debug)]
pub(super) struct SetEntry {
    pub(super) op: OpMeta,
    pub(super) is_add: bool,
}

impl FrontierEntry for SetEntry {
    fn op(&self) -> &OpMeta {
        &self.op
    }
}

#[derive(Debug, Default)]
pub(super) struct ElementState {
    /// The included adds and removes of the element that no included op applied after them
    /// has in its past, ascending by the sibling order.
    pub(super) frontier: Vec<SetEntry>,
}

impl ElementState {
    /// An add is a live tag when no remove is above it; then every maximal op above it is an
    /// add, so some add is in the frontier. Conversely an add in the frontier has nothing
    /// above it. (Exact when the causal test is; see the module documentation.)
    pub(super) fn is_member(&self) -> bool {
        self.frontier.iter().any(|entry| entry.is_add)
    }

    pub(super) fn frontier_ids(&self) -> Vec<OpId> {
        self.frontier.iter().map(|entry| entry.op.id()).collect()
    }
}
