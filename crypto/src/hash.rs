//! Domain-separated SHA-256. Every hash in Cairn names its [`Domain`]; the table of domain
//! strings below is the complete list, mirrored in `docs/PROTOCOL.md`.

use sha2::{Digest, Sha256};

/// What a hash is for. Each domain prefixes its bytes with a distinct string, so a hash made
/// for one purpose can never be mistaken for a hash made for another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Domain {
    /// The cluster id: hash of the canonical genesis.
    Cluster,
    /// An event id: hash of the canonical event header.
    Event,
    /// The `ops_hash` field of a header: hash of the canonical op list.
    Ops,
    /// The reconciliation digest of a node's event set (its tips and evidence).
    SyncDigest,
    /// The canonical digest of the CRDT document state.
    Document,
    /// A register value in the document digest.
    Value,
    /// A membership's id: the id of the membership it came from and the change applied to it.
    Membership,
    /// A membership change's id: hash of the canonical change.
    Change,
    /// What a rotation's new key signs to prove it holds its secret key.
    Rotation,
    /// What a member signs to publish the addresses it can be dialed at.
    Address,
}

impl Domain {
    /// Every domain, in the order of the table in `docs/PROTOCOL.md`.
    pub const ALL: [Self; 10] = [
        Self::Cluster,
        Self::Event,
        Self::Ops,
        Self::SyncDigest,
        Self::Document,
        Self::Value,
        Self::Membership,
        Self::Change,
        Self::Rotation,
        Self::Address,
    ];

    /// The domain string that prefixes the hashed bytes.
    pub const fn prefix(self) -> &'static [u8] {
        match self {
            Self::Cluster => b"cairn/cluster/v1",
            Self::Event => b"cairn/event/v1",
            Self::Ops => b"cairn/ops/v1",
            Self::SyncDigest => b"cairn/sync-digest/v1",
            Self::Document => b"cairn/document/v3",
            Self::Value => b"cairn/value/v1",
            Self::Membership => b"cairn/membership/v1",
            Self::Change => b"cairn/change/v1",
            Self::Rotation => b"cairn/rotation/v1",
            Self::Address => b"cairn/address/v1",
        }
    }
}

/// An incremental domain-separated SHA-256.
#[derive(Clone)]
pub struct Hasher {
    inner: Sha256,
}

impl Hasher {
    /// Starts a hash in `domain`: the domain string is absorbed first.
    pub fn new(domain: Domain) -> Self {
        let mut inner = Sha256::new();
        inner.update(domain.prefix());
        Self { inner }
    }

    /// Absorbs `bytes`.
    pub fn update(&mut self, bytes: &[u8]) -> &mut Self {
        self.inner.update(bytes);
        self
    }

    /// Returns the 32-byte digest.
    pub fn finish(self) -> [u8; 32] {
        self.inner.finalize().into()
    }
}

/// `SHA-256(domain string ‖ bytes)`.
pub fn hash(domain: Domain, bytes: &[u8]) -> [u8; 32] {
    let mut hasher = Hasher::new(domain);
    hasher.update(bytes);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_strings_are_distinct_and_prefix_free() {
        for a in Domain::ALL {
            for b in Domain::ALL {
                if a != b {
                    assert!(!a.prefix().starts_with(b.prefix()), "{a:?} starts with {b:?}");
                }
            }
        }
    }

    #[test]
    fn hash_is_sha256_of_prefix_then_bytes() {
        // SHA-256("cairn/event/v1" ‖ "abc"), computed independently with
        // `printf 'cairn/event/v1abc' | sha256sum`.
        let expected = "6fbb9c19b8e7b7e641df6979cde69e6a3569ae5f474c6c229c03791d727ccf34";
        assert_eq!(hex::encode(hash(Domain::Event, b"abc")), expected);
        let mut incremental = Hasher::new(Domain::Event);
        incremental.update(b"a").update(b"bc");
        assert_eq!(incremental.finish(), hash(Domain::Event, b"abc"));
    }
}
