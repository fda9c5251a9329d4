//! The validity rules of `docs/PROTOCOL.md` §7, split by what they need: `check_stateless` needs only the
//! bytes and the genesis (rules 1, 2, 3, 7 and the shape of the deps); rule 4 (the signature)
//! runs in the adapter, `verify_strict` on each event, spread over threads; `check_causal` needs the accepted deps (rules 5
//! and 6). Each failure is a distinct [`Reject`] reason, counted in metrics and logs.

use std::fmt;

use crate::codec::{self, CodecError};
use crate::event::{Event, EventId, ops_hash};
use crate::genesis::{Genesis, MemberIdx};
use crate::limits::OPS_MAX;

/// Why an event is invalid. The numbering in the docs follows the rules of `docs/PROTOCOL.md` §7.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Reject {
    /// Rule 1: more than [`crate::limits::EVENT_BYTES_MAX`] bytes.
    Oversize,
    /// Rule 1: the bytes do not decode, or a count or length is over its limit.
    Malformed,
    /// Rule 1: bytes follow the end of the event.
    TrailingBytes,
    /// Rule 2: the bytes are not the canonical encoding of what they decode to.
    NonCanonical,
    /// Rule 2: the deps are not sorted ascending and unique.
    DepsNotSorted,
    /// Rule 3: the author is not a member.
    NotMember,
    /// Rule 4: `verify_strict(author, id, sig)` fails.
    BadSignature,
    /// Rule 5: the seq does not follow the author's own dep (or a seq-1 event has own deps).
    BadSeq,
    /// Rule 6: the lamport is not one more than the greatest lamport of the deps.
    BadLamport,
    /// Rule 7: `ops_hash` does not match the ops.
    OpsHashMismatch,
    /// Rule 7: no ops, more than [`OPS_MAX`], or an op with an empty key.
    BadOp,
}

impl Reject {
    /// Every reason, for metrics.
    pub const ALL: [Self; 11] = [
        Self::Oversize,
        Self::Malformed,
        Self::TrailingBytes,
        Self::NonCanonical,
        Self::DepsNotSorted,
        Self::NotMember,
        Self::BadSignature,
        Self::BadSeq,
        Self::BadLamport,
        Self::OpsHashMismatch,
        Self::BadOp,
    ];

    /// A stable snake_case name for metrics labels and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Oversize => "oversize",
            Self::Malformed => "malformed",
            Self::TrailingBytes => "trailing_bytes",
            Self::NonCanonical => "non_canonical",
            Self::DepsNotSorted => "deps_not_sorted",
            Self::NotMember => "not_member",
            Self::BadSignature => "bad_signature",
            Self::BadSeq => "bad_seq",
            Self::BadLamport => "bad_lamport",
            Self::OpsHashMismatch => "ops_hash_mismatch",
            Self::BadOp => "bad_op",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An event that passed every check that needs neither the signature nor the causal past.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) event: Event,
    pub(crate) id: EventId,
    pub(crate) bytes: Vec<u8>,
    pub(crate) author_idx: MemberIdx,
}

/// Rules 1, 2, 3 and 7, and the shape of the deps.
pub(crate) fn check_stateless(
    genesis: &Genesis,
    bytes: Vec<u8>,
) -> Result<Decoded, (Option<EventId>, Reject)> {
    let event = codec::decode_event(&bytes).map_err(|e| {
        let reason = match e {
            CodecError::Oversize { .. } => Reject::Oversize,
            CodecError::TrailingBytes(_) => Reject::TrailingBytes,
            CodecError::NonCanonical => Reject::NonCanonical,
            _ => Reject::Malformed,
        };
        (None, reason)
    })?;
    let id = event.id();
    let fail = |reason| Err((Some(id), reason));
    if !event.header.deps.windows(2).all(|pair| pair[0] < pair[1]) {
        return fail(Reject::DepsNotSorted);
    }
    let Some(author_idx) = genesis.member_idx(&event.header.author) else {
        return fail(Reject::NotMember);
    };
    if event.ops.is_empty() || event.ops.len() > OPS_MAX || event.ops.iter().any(|op| op.key().is_empty()) {
        return fail(Reject::BadOp);
    }
    if ops_hash(&event.ops) != event.header.ops_hash {
        return fail(Reject::OpsHashMismatch);
    }
    Ok(Decoded { event, id, bytes, author_idx })
}

/// Rules 5 and 6, given the accepted deps as `(author_idx, seq, lamport)` in the header's order.
pub(crate) fn check_causal(
    decoded: &Decoded,
    deps: impl Iterator<Item = (MemberIdx, u64, u64)>,
) -> Result<(), Reject> {
    let header = &decoded.event.header;
    let mut own_deps = 0usize;
    let mut own_dep_seq = 0u64;
    let mut lamport_max = 0u64;
    for (author_idx, seq, lamport) in deps {
        if author_idx == decoded.author_idx {
            own_deps += 1;
            own_dep_seq = seq;
        }
        lamport_max = lamport_max.max(lamport);
    }
    let seq_ok = match header.seq {
        0 => false,
        1 => own_deps == 0,
        seq => own_deps == 1 && own_dep_seq == seq - 1,
    };
    if !seq_ok {
        return Err(Reject::BadSeq);
    }
    if lamport_max.checked_add(1) != Some(header.lamport) {
        return Err(Reject::BadLamport);
    }
    Ok(())
}
