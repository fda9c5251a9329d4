//! What a peer's message can do wrong: one name per rule, for metrics and logs.

use crate::codec::CodecError;

/// What a peer's message did wrong: one name per rule, like [`Reject`] for events. A node
/// reports each with [`NodeEvent::BadMessage`]; the daemon counts them by [`Misbehaviour::name`]
/// and logs each once per peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Misbehaviour {
    /// The message is over `MESSAGE_BYTES_MAX`.
    Oversize,
    /// The message ends in the middle.
    Truncated,
    /// A length or count prefix is over its limit.
    LengthOverLimit,
    /// An unknown message or op tag.
    UnknownTag,
    /// A field holds a value its type does not allow.
    InvalidValue,
    /// Bytes follow the message.
    TrailingBytes,
    /// The message is not in its canonical encoding.
    NonCanonical,
    /// A `Tips` sequence (`more` set) holds more tips than `peer_tips_max`.
    TooManyTips,
    /// A tip names an author that is not a member.
    TipOfNonMember,
    /// Evidence that does not verify (see `EvidenceError`).
    BadEvidence,
    /// An address record of a key in force that does not verify (see `AddrError`).
    BadAddress,
}

impl Misbehaviour {
    /// Every misbehaviour, in the order of the table in `docs/PROTOCOL.md`.
    pub const ALL: [Self; 11] = [
        Self::Oversize,
        Self::Truncated,
        Self::LengthOverLimit,
        Self::UnknownTag,
        Self::InvalidValue,
        Self::TrailingBytes,
        Self::NonCanonical,
        Self::TooManyTips,
        Self::TipOfNonMember,
        Self::BadEvidence,
        Self::BadAddress,
    ];

    /// The misbehaviour of a message that did not decode: the decoding rule it broke.
    pub const fn undecodable(error: &CodecError) -> Self {
        match error {
            CodecError::Oversize { .. } => Self::Oversize,
            CodecError::Truncated => Self::Truncated,
            CodecError::LengthOverLimit(_) => Self::LengthOverLimit,
            CodecError::UnknownTag(_) => Self::UnknownTag,
            CodecError::InvalidValue(_) => Self::InvalidValue,
            CodecError::TrailingBytes(_) => Self::TrailingBytes,
            CodecError::NonCanonical => Self::NonCanonical,
        }
    }

    /// A stable snake_case name, for metrics and logs; a decoding rule's name is the codec's
    /// ([`CodecError::name`]).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Oversize => "oversize",
            Self::Truncated => "truncated",
            Self::LengthOverLimit => "length_over_limit",
            Self::UnknownTag => "unknown_tag",
            Self::InvalidValue => "invalid_value",
            Self::TrailingBytes => "trailing_bytes",
            Self::NonCanonical => "non_canonical",
            Self::TooManyTips => "too_many_tips",
            Self::TipOfNonMember => "tip_of_non_member",
            Self::BadEvidence => "bad_evidence",
            Self::BadAddress => "bad_address",
        }
    }
}

const _: () = assert!(Misbehaviour::ALL.len() == CodecError::NAMES.len() + 4);

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_misbehaviour_has_a_distinct_name_and_decoding_rules_share_the_codecs() {
        let names: BTreeSet<&str> = Misbehaviour::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(names.len(), Misbehaviour::ALL.len());
        let every_codec_error = [
            CodecError::Oversize { len: 2, max: 1 },
            CodecError::Truncated,
            CodecError::LengthOverLimit(String::new()),
            CodecError::UnknownTag(String::new()),
            CodecError::InvalidValue(String::new()),
            CodecError::TrailingBytes(1),
            CodecError::NonCanonical,
        ];
        assert_eq!(every_codec_error.each_ref().map(CodecError::name), CodecError::NAMES);
        for error in &every_codec_error {
            assert_eq!(Misbehaviour::undecodable(error).name(), error.name());
        }
    }
}
