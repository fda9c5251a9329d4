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

/// The cluster's membership, sorted by key, and its membership policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Genesis {
    members: Vec<Member>,
    /// The approvals a membership change needs (`Policy::AtLeast`); `None`: a majority of the
    /// seats in force (`Policy::Majority`).
    threshold: Option<u32>,
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
    /// A threshold that is not more than half of the members, or more than all of them.
    #[error(
        "the threshold {threshold} must be more than half of the {members} members (so that two changes can never \
         both pass) and at most all of them"
    )]
    BadThreshold {
        /// The threshold given.
        threshold: u32,
        /// The members.
        members: usize,
    },
}

impl GenesisError {
    /// Every name [`GenesisError::name`] gives, in the order of `docs/PROTOCOL.md` §4.
    pub const NAMES: [&'static str; 7] = [
        "empty",
        "too_many_members",
        "duplicate_key",
        "duplicate_name",
        "bad_name",
        "not_sorted",
        "bad_threshold",
    ];

    /// A stable snake_case name for the rule broken, as `docs/PROTOCOL.md` §4 lists them.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooManyMembers(_) => "too_many_members",
            Self::DuplicateKey(_) => "duplicate_key",
            Self::DuplicateName(_) => "duplicate_name",
            Self::BadName(_) => "bad_name",
            Self::NotSorted => "not_sorted",
            Self::BadThreshold { .. } => "bad_threshold",
        }
    }
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
        if let Some(member) = members.iter().find(|m| !is_valid_name(&m.name)) {
            return Err(GenesisError::BadName(member.name.clone()));
        }
        Ok(Self { members, threshold: None })
    }

    /// This genesis with a membership policy of `threshold` approvals per change
    /// ([`Policy::AtLeast`](crate::Policy::AtLeast)): more than half of the members, at most
    /// all of them. Without one, a change needs a majority of the seats in force.
    pub fn with_threshold(mut self, threshold: u32) -> Result<Self, GenesisError> {
        let members = self.members.len();
        let n = threshold as usize;
        if n <= members / 2 || n > members {
            return Err(GenesisError::BadThreshold { threshold, members });
        }
        self.threshold = Some(threshold);
        Ok(self)
    }

    /// The threshold the genesis sets, if it sets one.
    pub fn threshold(&self) -> Option<u32> {
        self.threshold
    }

    /// The membership policy: the genesis's threshold, else a majority of the seats in force.
    pub fn policy(&self) -> crate::Policy {
        self.threshold.map_or(crate::Policy::Majority, crate::Policy::AtLeast)
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

/// A member name's rule, in the genesis and in a membership change: 1 to
/// [`MEMBER_NAME_BYTES_MAX`] bytes of UTF-8 without control characters.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MEMBER_NAME_BYTES_MAX && !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_has_its_name() {
        let key = PublicKey([1; 32]);
        let every = [
            GenesisError::Empty,
            GenesisError::TooManyMembers(65),
            GenesisError::DuplicateKey(key),
            GenesisError::DuplicateName(String::new()),
            GenesisError::BadName(String::new()),
            GenesisError::NotSorted,
            GenesisError::BadThreshold { threshold: 1, members: 3 },
        ];
        assert_eq!(every.each_ref().map(GenesisError::name), GenesisError::NAMES);
    }
}
