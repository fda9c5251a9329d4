//! Equivocation evidence: two signed headers by one author with the same seq and different
//! ids. It verifies on its own, with nothing but the keys the node indexes (its roster).

use cairn_crypto::{PublicKey, Signature, verify_strict};

use crate::codec;
use crate::event::{EventId, Header};
use crate::roster::Roster;

/// A header with its signature: enough to prove what its author signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHeader {
    /// The header.
    pub header: Header,
    /// The author's signature over the header's id.
    pub sig: Signature,
}

/// Proof that `author` signed two different events with the same seq. The header with the
/// smaller id comes first, so each pair has exactly one encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    /// The header with the smaller id.
    pub first: SignedHeader,
    /// The header with the larger id.
    pub second: SignedHeader,
}

impl SignedHeader {
    /// Whether `verify_strict(author, id, sig)` holds for this header.
    pub fn signature_holds(&self) -> bool {
        verify_strict(&self.header.author, &self.header.id().0, &self.sig)
    }
}

/// Why evidence does not prove anything. The variants are the steps of [`Evidence::verify`],
/// in its order ([`EvidenceError::ALL`]); `docs/PROTOCOL.md` §9 names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// The two headers name different authors.
    #[error("the headers have different authors")]
    DifferentAuthors,
    /// The two headers have different seqs.
    #[error("the headers have different seqs")]
    DifferentSeqs,
    /// The headers are the same event, or not in ascending id order.
    #[error("the headers must be two different events in ascending id order")]
    NotTwoOrdered,
    /// The author is not a member.
    #[error("the author is not a member")]
    NotMember,
    /// A signature does not verify.
    #[error("a signature does not verify")]
    BadSignature,
}

impl EvidenceError {
    /// Every step of [`Evidence::verify`], in the order it checks them.
    pub const ALL: [Self; 5] = [
        Self::DifferentAuthors,
        Self::DifferentSeqs,
        Self::NotTwoOrdered,
        Self::NotMember,
        Self::BadSignature,
    ];

    /// The name `docs/PROTOCOL.md` §9 gives the reason: the variant's name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::DifferentAuthors => "DifferentAuthors",
            Self::DifferentSeqs => "DifferentSeqs",
            Self::NotTwoOrdered => "NotTwoOrdered",
            Self::NotMember => "NotMember",
            Self::BadSignature => "BadSignature",
        }
    }
}

impl Evidence {
    /// Evidence from two signed headers in either order. It is not verified here.
    pub fn new(a: SignedHeader, b: SignedHeader) -> Self {
        if a.header.id() <= b.header.id() {
            Self { first: a, second: b }
        } else {
            Self { first: b, second: a }
        }
    }

    /// The equivocating author.
    pub fn author(&self) -> PublicKey {
        self.first.header.author
    }

    /// The seq both headers claim.
    pub fn seq(&self) -> u64 {
        self.first.header.seq
    }

    /// The ids of the two events.
    pub fn ids(&self) -> (EventId, EventId) {
        (self.first.header.id(), self.second.header.id())
    }

    /// The order in which evidence for one author is preferred: the lowest fork seq, then the
    /// smallest ids. Every node keeps the least evidence per author it has seen, so all honest
    /// nodes end up holding the same evidence.
    pub fn rank(&self) -> (u64, EventId, EventId) {
        let (a, b) = self.ids();
        (self.seq(), a, b)
    }

    /// Checks that the evidence proves an equivocation by a key of `roster` (the genesis
    /// members, and the keys that membership changes brought in, PROTOCOL.md §17): every step
    /// of [`EvidenceError::ALL`] in its order, stopping at the first that fails.
    pub fn verify(&self, roster: &Roster) -> Result<(), EvidenceError> {
        match EvidenceError::ALL.into_iter().find(|&step| self.step_holds(step, Some(roster)) == Some(false))
        {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Whether one step of [`Evidence::verify`] holds, the step named by the error it gives;
    /// `None` for membership without a roster. [`crate::diagnose`] runs the steps one by one.
    pub(crate) fn step_holds(&self, step: EvidenceError, roster: Option<&Roster>) -> Option<bool> {
        let (a, b) = (&self.first.header, &self.second.header);
        Some(match step {
            EvidenceError::DifferentAuthors => a.author == b.author,
            EvidenceError::DifferentSeqs => a.seq == b.seq,
            EvidenceError::NotTwoOrdered => {
                let (id_a, id_b) = self.ids();
                id_a < id_b
            }
            EvidenceError::NotMember => roster?.idx(&a.author).is_some(),
            EvidenceError::BadSignature => self.first.signature_holds() && self.second.signature_holds(),
        })
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode_evidence(self)
    }
}
