//! The roster: every key this node indexes as an author, each with a local [`MemberIdx`].
//!
//! The genesis members come first, at their genesis positions (key order). A key named later by
//! a membership op (a seat founded, a rotation's successor, PROTOCOL.md §17) gets the next
//! index when this node accepts the first event that names it, so the indices of such keys
//! depend on the order this node accepted events in. Nothing shared may therefore depend on an
//! index: digests, orders on the wire and the document's sibling order use keys. An index only
//! names a key inside one node (its clocks, its chain states, its store), and a node keeps its
//! roster with its history so that its indices never change.

use std::collections::BTreeMap;

use cairn_crypto::PublicKey;

use crate::genesis::{Genesis, MemberIdx};

/// The keys a node indexes, in index order. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Roster {
    keys: Vec<PublicKey>,
    index: BTreeMap<PublicKey, MemberIdx>,
    n_genesis: usize,
}

/// A roster that cannot be resumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RosterError {
    /// A resumed roster lists a key twice.
    #[error("key {0} appears twice in the roster")]
    Duplicate(PublicKey),
}

impl Roster {
    /// The genesis members, at their genesis positions.
    pub fn new(genesis: &Genesis) -> Self {
        let keys: Vec<PublicKey> = genesis.members().iter().map(|m| m.key).collect();
        let index = keys.iter().enumerate().map(|(idx, key)| (*key, idx)).collect();
        Self { n_genesis: keys.len(), keys, index }
    }

    /// The genesis roster followed by `later` (as [`Roster::later_keys`] gave them), for a node
    /// that resumes. Fails if `later` repeats a key or is too long.
    pub fn with_later(genesis: &Genesis, later: &[PublicKey]) -> Result<Self, RosterError> {
        let mut roster = Self::new(genesis);
        for key in later {
            if roster.idx(key).is_some() {
                return Err(RosterError::Duplicate(*key));
            }
            roster.insert(*key);
        }
        Ok(roster)
    }

    /// The index of `key`, if this node indexes it.
    pub fn idx(&self, key: &PublicKey) -> Option<MemberIdx> {
        self.index.get(key).copied()
    }

    /// The key at `idx`.
    pub fn key(&self, idx: MemberIdx) -> Option<&PublicKey> {
        self.keys.get(idx)
    }

    /// The index of `key`, which is given the next index if it had none. There is no limit
    /// here on purpose: a key a valid op named must be indexed on every node, or validity would
    /// depend on what else a node had indexed (review 3). What bounds the roster is how many
    /// keys valid ops can name (see `docs/PROTOCOL.md` §17, "The roster").
    pub fn insert(&mut self, key: PublicKey) -> MemberIdx {
        if let Some(idx) = self.idx(&key) {
            return idx;
        }
        let idx = self.keys.len();
        self.keys.push(key);
        self.index.insert(key, idx);
        idx
    }

    /// Every key, in index order.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// The keys after the genesis members, in index order: what a node persists to resume.
    pub fn later_keys(&self) -> &[PublicKey] {
        &self.keys[self.n_genesis..]
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the roster is empty (never, for a valid genesis).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Every index, in key order: the order in which anything shared lists authors.
    pub fn in_key_order(&self) -> Vec<MemberIdx> {
        let mut order: Vec<MemberIdx> = (0..self.keys.len()).collect();
        order.sort_unstable_by_key(|&idx| self.keys[idx]);
        order
    }
}
