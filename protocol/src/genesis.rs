//! The genesis: the sorted list of member keys with display names. It fixes the membership rule,
//! and its hash is the cluster id that peers compare when they connect.

use cairn_crypto::{Domain, PublicKey, hash};

use crate::codec;
use crate::limits::{MEMBER_NAME_BYTES_MAX, MEMBERS_MAX};

/// A member's index in the genesis (its position in key order).
pub type MemberIdx = usize;

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The member's ed25519 public key.
    pub key: PublicKey,
    /// A display name for people; it has no protocol meaning.
    pub name: String,
}

/// The cluster's membership, sorted by key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Genesis {
    members: Vec<Member>,
}

/// A genesis that breaks a rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GenesisError {
    /// No members.
    #[error("a genesis needs at least one member")]
    Empty,
    /// More than [`MEMBERS_MAX`] members.
    #[error("a genesis lists at most {MEMBERS_MAX} members, this one {0}")]
    TooManyMembers(usize),
    /// The same key twice.
    #[error("member key {0} appears twice")]
    DuplicateKey(PublicKey),
    /// The same name twice.
    #[error("member name {0:?} appears twice")]
    DuplicateName(String),
    /// A name that is empty, too long, or has control characters.
    #[error("member name {0:?} must be 1 to {MEMBER_NAME_BYTES_MAX} bytes without control characters")]
    BadName(String),
    /// The encoded members are not in ascending key order (only on decoding).
    #[error("members must be sorted by key")]
    NotSorted,
}

impl Genesis {
    /// Builds a genesis from members in any order; they are sorted by key.
    pub fn new(mut members: Vec<Member>) -> Result<Self, GenesisError> {
        members.sort_by_key(|m| m.key);
        Self::from_sorted(members)
    }

    /// Builds a genesis from members that must already be sorted by key (as decoded).
    pub(crate) fn from_sorted(members: Vec<Member>) -> Result<Self, GenesisError> {
        if members.is_empty() {
            return Err(GenesisError::Empty);
        }
        if members.len() > MEMBERS_MAX {
            return Err(GenesisError::TooManyMembers(members.len()));
        }
        for pair in members.windows(2) {
            if pair[0].key == pair[1].key {
                return Err(GenesisError::DuplicateKey(pair[0].key));
            }
            if pair[0].key > pair[1].key {
                return Err(GenesisError::NotSorted);
            }
        }
        let mut names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|p| p[0] == p[1]) {
            return Err(GenesisError::DuplicateName(pair[0].to_owned()));
        }
        for member in &members {
            let name = &member.name;
            if name.is_empty() || name.len() > MEMBER_NAME_BYTES_MAX || name.chars().any(char::is_control) {
                return Err(GenesisError::BadName(name.clone()));
            }
        }
        Ok(Self { members })
    }

    /// The members in key order; a member's position is its [`MemberIdx`].
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The index of `key`, if it is a member.
    pub fn member_idx(&self, key: &PublicKey) -> Option<MemberIdx> {
        self.members.binary_search_by(|m| m.key.cmp(key)).ok()
    }

    /// `SHA-256("cairn/cluster/v1" ‖ canonical(genesis))`.
    pub fn cluster_id(&self) -> [u8; 32] {
        hash(Domain::Cluster, &self.encode())
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode_genesis(self)
    }
}
