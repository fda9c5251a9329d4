//! The canonical codec: the only module that knows the byte layout. It uses bincode 2 with
//! fixed-width little-endian integers (`config::legacy()`): integers are 8 bytes (u64, i64),
//! enum tags 4 bytes (u32), lengths 8 bytes (u64), fixed arrays raw, strings UTF-8 with a length.
//! `docs/PROTOCOL.md` gives every layout byte by byte.
//!
//! Decoding is strict: a byte limit per kind of object, no trailing bytes, and the re-encoding
//! of what was decoded must equal the input. Length prefixes are checked against the protocol's
//! count limits before anything is allocated.

use bincode::de::{Decode, Decoder};
use bincode::enc::{Encode, Encoder};
use bincode::error::{DecodeError, EncodeError};
use cairn_crypto::{PublicKey, Signature};

use crate::addr::AddrRecord;
use crate::event::{Event, EventId, Header, Op, Seen};
use crate::evidence::{Evidence, SignedHeader};
use crate::genesis::{Genesis, Member};
use crate::limits::{
    ADDR_RECORDS_PER_MESSAGE_MAX, ADDR_TEXT_BYTES_MAX, ADDRS_PER_RECORD_MAX, CHANGE_BYTES_MAX, DEPS_MAX,
    EVENT_BYTES_MAX, EVENTS_PER_MESSAGE_MAX, EVIDENCE_BYTES_MAX, EVIDENCE_PER_MESSAGE_MAX,
    FORK_PROBE_SEQS_MAX, GENESIS_BYTES_MAX, KEY_BYTES_MAX, MEMBER_NAME_BYTES_MAX, MEMBERS_MAX,
    MESSAGE_BYTES_MAX, OPS_MAX, ROTATION_BYTES, SEEN_EVENTS_MAX, SEEN_OWN_MAX, TIPS_PER_MESSAGE_MAX,
    VALUE_BYTES_MAX, WANT_IDS_MAX,
};
use crate::membership::{Change, ChangeId, ChangeKind, MembershipId, Rotation};
use crate::message::{Message, Tip};

/// Why bytes did not decode into a canonical object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// More bytes than the object's limit.
    #[error("{len} bytes is over the limit of {max}")]
    Oversize {
        /// The input's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input ended in the middle of the object.
    #[error("the input ends in the middle of the object")]
    Truncated,
    /// A length or count prefix is over the protocol's limit for that field (checked before
    /// anything is allocated).
    #[error("{0}")]
    LengthOverLimit(String),
    /// An enum tag (message kind, op kind) that the protocol does not define.
    #[error("{0}")]
    UnknownTag(String),
    /// A field holds a value its type does not allow (a name that is not UTF-8, a genesis
    /// whose members break its rules, …).
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// A whole object decoded but bytes were left over.
    #[error("{0} bytes after the end of the object")]
    TrailingBytes(usize),
    /// The object decoded, but re-encoding it does not give the same bytes.
    #[error("not the canonical encoding")]
    NonCanonical,
}

impl CodecError {
    /// Every name [`CodecError::name`] gives, in the order of the table in `docs/PROTOCOL.md`.
    pub const NAMES: [&'static str; 7] = [
        "oversize",
        "truncated",
        "length_over_limit",
        "unknown_tag",
        "invalid_value",
        "trailing_bytes",
        "non_canonical",
    ];

    /// A stable snake_case name, for metrics, logs and `cairnctl inspect`.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Oversize { .. } => "oversize",
            Self::Truncated => "truncated",
            Self::LengthOverLimit(_) => "length_over_limit",
            Self::UnknownTag(_) => "unknown_tag",
            Self::InvalidValue(_) => "invalid_value",
            Self::TrailingBytes(_) => "trailing_bytes",
            Self::NonCanonical => "non_canonical",
        }
    }
}

/// Prefixes of the messages the hand-written decoders give bincode, by which
/// [`decode_canonical`] tells the kinds apart again.
const LENGTH_OVER_LIMIT: &str = "length over limit: ";
const UNKNOWN_TAG: &str = "unknown tag: ";

/// Sorts a bincode decoding error into a [`CodecError`].
fn classify(error: DecodeError) -> CodecError {
    match error {
        DecodeError::UnexpectedEnd { .. } => CodecError::Truncated,
        // The byte limit given to bincode is the object's own, checked before: only a length
        // prefix that claims more bytes than that can hit it.
        DecodeError::LimitExceeded => {
            CodecError::LengthOverLimit("a length is over the object's byte limit".into())
        }
        DecodeError::OtherString(message) => {
            if let Some(detail) = message.strip_prefix(LENGTH_OVER_LIMIT) {
                CodecError::LengthOverLimit(detail.to_owned())
            } else if let Some(detail) = message.strip_prefix(UNKNOWN_TAG) {
                CodecError::UnknownTag(detail.to_owned())
            } else {
                CodecError::InvalidValue(message)
            }
        }
        other => CodecError::InvalidValue(other.to_string()),
    }
}

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Fixint,
    bincode::config::NoLimit,
> {
    bincode::config::legacy()
}

// ---- encoding -----------------------------------------------------------------------------

fn to_vec<T: Encode>(value: &T) -> Vec<u8> {
    // Encoding into a Vec fails only if a writer fails, and a Vec writer cannot.
    bincode::encode_to_vec(value, config()).expect("encoding into a Vec cannot fail")
}

/// The canonical encoding of a header (the bytes hashed into the event id).
pub fn encode_header(header: &Header) -> Vec<u8> {
    to_vec(header)
}

/// The canonical encoding of an op list (the bytes hashed into `ops_hash`).
pub fn encode_ops(ops: &[Op]) -> Vec<u8> {
    to_vec(&OpsRef(ops))
}

/// The canonical encoding of an event.
pub fn encode_event(event: &Event) -> Vec<u8> {
    to_vec(event)
}

/// The canonical encoding of evidence.
pub fn encode_evidence(evidence: &Evidence) -> Vec<u8> {
    to_vec(evidence)
}

/// The canonical encoding of a genesis.
pub fn encode_genesis(genesis: &Genesis) -> Vec<u8> {
    to_vec(genesis)
}

/// The canonical encoding of a membership change (the bytes hashed into its id).
pub fn encode_change(change: &Change) -> Vec<u8> {
    to_vec(change)
}

/// The canonical encoding of a key rotation.
pub fn encode_rotation(rotation: &Rotation) -> Vec<u8> {
    to_vec(rotation)
}

/// The canonical encoding of a reconciliation message.
pub fn encode_message(message: &Message) -> Vec<u8> {
    to_vec(message)
}

/// The encoded size of a message, without building it.
pub fn message_len(message: &Message) -> usize {
    let mut writer = bincode::enc::write::SizeWriter::default();
    // Same argument as in `to_vec`: a size writer cannot fail.
    bincode::encode_into_writer(message, &mut writer, config()).expect("a size writer cannot fail");
    writer.bytes_written
}

// ---- decoding -----------------------------------------------------------------------------

fn decode_canonical<T, const LIMIT: usize>(
    bytes: &[u8],
    encode: impl Fn(&T) -> Vec<u8>,
) -> Result<T, CodecError>
where
    T: Decode<()>,
{
    if bytes.len() > LIMIT {
        return Err(CodecError::Oversize { len: bytes.len(), max: LIMIT });
    }
    let (value, used) =
        bincode::decode_from_slice::<T, _>(bytes, config().with_limit::<LIMIT>()).map_err(classify)?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - used));
    }
    if encode(&value) != bytes {
        return Err(CodecError::NonCanonical);
    }
    Ok(value)
}

/// Decodes one event; at most [`EVENT_BYTES_MAX`] bytes.
pub fn decode_event(bytes: &[u8]) -> Result<Event, CodecError> {
    decode_canonical::<Event, EVENT_BYTES_MAX>(bytes, encode_event)
}

/// Decodes evidence; at most [`EVIDENCE_BYTES_MAX`] bytes.
pub fn decode_evidence(bytes: &[u8]) -> Result<Evidence, CodecError> {
    decode_canonical::<Evidence, EVIDENCE_BYTES_MAX>(bytes, encode_evidence)
}

/// Decodes a genesis; at most [`GENESIS_BYTES_MAX`] bytes. Membership rules (sorted, unique,
/// names, the threshold) are checked too. The member list may be followed by exactly one
/// `u32` threshold (`Genesis::with_threshold`); without it the policy is a majority.
pub fn decode_genesis(bytes: &[u8]) -> Result<Genesis, CodecError> {
    const LIMIT: usize = GENESIS_BYTES_MAX;
    if bytes.len() > LIMIT {
        return Err(CodecError::Oversize { len: bytes.len(), max: LIMIT });
    }
    let (genesis, used) =
        bincode::decode_from_slice::<Genesis, _>(bytes, config().with_limit::<LIMIT>()).map_err(classify)?;
    let genesis = match &bytes[used..] {
        [] => genesis,
        &[a, b, c, d] => {
            let threshold = u32::from_le_bytes([a, b, c, d]);
            genesis
                .with_threshold(threshold)
                .map_err(|e| CodecError::InvalidValue(format!("{}: {e}", e.name())))?
        }
        rest => return Err(CodecError::TrailingBytes(rest.len())),
    };
    if encode_genesis(&genesis) != bytes {
        return Err(CodecError::NonCanonical);
    }
    Ok(genesis)
}

/// Decodes a membership change; at most [`CHANGE_BYTES_MAX`] bytes. A name must follow the
/// genesis's name rule.
pub fn decode_change(bytes: &[u8]) -> Result<Change, CodecError> {
    decode_canonical::<Change, CHANGE_BYTES_MAX>(bytes, encode_change)
}

/// Decodes a key rotation; exactly [`ROTATION_BYTES`] bytes.
pub fn decode_rotation(bytes: &[u8]) -> Result<Rotation, CodecError> {
    decode_canonical::<Rotation, ROTATION_BYTES>(bytes, encode_rotation)
}

/// Decodes a reconciliation message; at most [`MESSAGE_BYTES_MAX`] bytes.
pub fn decode_message(bytes: &[u8]) -> Result<Message, CodecError> {
    decode_canonical::<Message, MESSAGE_BYTES_MAX>(bytes, encode_message)
}

// ---- layouts ------------------------------------------------------------------------------

/// Reads a u64 length prefix and checks it against `max` before anything is allocated.
fn decode_len<D: Decoder>(decoder: &mut D, max: usize, what: &'static str) -> Result<usize, DecodeError> {
    let len = u64::decode(decoder)?;
    match usize::try_from(len) {
        Ok(len) if len <= max => Ok(len),
        _ => Err(DecodeError::OtherString(format!(
            "{LENGTH_OVER_LIMIT}{what}: length {len} is over the limit of {max}"
        ))),
    }
}

fn encode_len<E: Encoder>(len: usize, encoder: &mut E) -> Result<(), EncodeError> {
    (len as u64).encode(encoder)
}

fn decode_vec<D: Decoder, T>(
    decoder: &mut D,
    max: usize,
    what: &'static str,
    mut item: impl FnMut(&mut D) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let len = decode_len(decoder, max, what)?;
    let mut items = Vec::with_capacity(len);
    for _ in 0..len {
        items.push(item(decoder)?);
    }
    Ok(items)
}

fn decode_bytes<D: Decoder>(decoder: &mut D, max: usize, what: &'static str) -> Result<Vec<u8>, DecodeError> {
    let len = decode_len(decoder, max, what)?;
    decoder.claim_bytes_read(len)?;
    let mut bytes = vec![0u8; len];
    bincode::de::read::Reader::read(decoder.reader(), &mut bytes)?;
    Ok(bytes)
}

fn encode_bytes<E: Encoder>(bytes: &[u8], encoder: &mut E) -> Result<(), EncodeError> {
    encode_len(bytes.len(), encoder)?;
    bincode::enc::write::Writer::write(encoder.writer(), bytes)
}

fn decode_array<D: Decoder, const N: usize>(decoder: &mut D) -> Result<[u8; N], DecodeError> {
    <[u8; N]>::decode(decoder)
}

impl Encode for EventId {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.0.encode(encoder)
    }
}

fn decode_id<D: Decoder>(decoder: &mut D) -> Result<EventId, DecodeError> {
    Ok(EventId(decode_array(decoder)?))
}

impl Encode for Header {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.author.0.encode(encoder)?;
        self.seq.encode(encoder)?;
        self.lamport.encode(encoder)?;
        encode_len(self.deps.len(), encoder)?;
        for dep in &self.deps {
            dep.encode(encoder)?;
        }
        self.ops_hash.encode(encoder)
    }
}

impl<Context> Decode<Context> for Header {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        Ok(Self {
            author: PublicKey(decode_array(decoder)?),
            seq: u64::decode(decoder)?,
            lamport: u64::decode(decoder)?,
            deps: decode_vec(decoder, DEPS_MAX, "deps", decode_id)?,
            ops_hash: decode_array(decoder)?,
        })
    }
}

const OP_PUT: u32 = 0;
const OP_DEL: u32 = 1;
const OP_INCR: u32 = 2;
const OP_ADD: u32 = 3;
const OP_REMOVE: u32 = 4;
const OP_PROPOSE: u32 = 5;
const OP_APPROVE: u32 = 6;
const OP_ROTATE: u32 = 7;
const OP_PUT_SEEN: u32 = 8;
const OP_DEL_SEEN: u32 = 9;
const OP_ADD_SEEN: u32 = 10;
const OP_REMOVE_SEEN: u32 = 11;

impl Encode for Seen {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        encode_len(self.events.len(), encoder)?;
        self.events.iter().try_for_each(|id| id.encode(encoder))?;
        encode_len(self.own.len(), encoder)?;
        self.own.iter().try_for_each(|seq| seq.encode(encoder))
    }
}

impl<Context> Decode<Context> for Seen {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let events = decode_vec(decoder, SEEN_EVENTS_MAX, "seen events", |d| Ok(EventId(decode_array(d)?)))?;
        let own = decode_vec(decoder, SEEN_OWN_MAX, "seen own seqs", u64::decode)?;
        Ok(Self { events, own })
    }
}

impl Encode for Op {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        match self {
            Self::Put { key, value } => {
                OP_PUT.encode(encoder)?;
                encode_bytes(key, encoder)?;
                encode_bytes(value, encoder)
            }
            Self::Del { key } => {
                OP_DEL.encode(encoder)?;
                encode_bytes(key, encoder)
            }
            Self::Incr { key, delta } => {
                OP_INCR.encode(encoder)?;
                encode_bytes(key, encoder)?;
                delta.encode(encoder)
            }
            Self::Add { key, element } => {
                OP_ADD.encode(encoder)?;
                encode_bytes(key, encoder)?;
                encode_bytes(element, encoder)
            }
            Self::Remove { key, element } => {
                OP_REMOVE.encode(encoder)?;
                encode_bytes(key, encoder)?;
                encode_bytes(element, encoder)
            }
            Self::Propose { change, round } => {
                OP_PROPOSE.encode(encoder)?;
                change.encode(encoder)?;
                round.encode(encoder)
            }
            Self::Approve { change, round } => {
                OP_APPROVE.encode(encoder)?;
                change.0.encode(encoder)?;
                round.encode(encoder)
            }
            Self::Rotate(rotation) => {
                OP_ROTATE.encode(encoder)?;
                rotation.encode(encoder)
            }
            Self::PutSeen { key, value, seen } => {
                OP_PUT_SEEN.encode(encoder)?;
                encode_bytes(key, encoder)?;
                encode_bytes(value, encoder)?;
                seen.encode(encoder)
            }
            Self::DelSeen { key, seen } => {
                OP_DEL_SEEN.encode(encoder)?;
                encode_bytes(key, encoder)?;
                seen.encode(encoder)
            }
            Self::AddSeen { key, element, seen } => {
                OP_ADD_SEEN.encode(encoder)?;
                encode_bytes(key, encoder)?;
                encode_bytes(element, encoder)?;
                seen.encode(encoder)
            }
            Self::RemoveSeen { key, element, seen } => {
                OP_REMOVE_SEEN.encode(encoder)?;
                encode_bytes(key, encoder)?;
                encode_bytes(element, encoder)?;
                seen.encode(encoder)
            }
        }
    }
}

impl<Context> Decode<Context> for Op {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let tag = u32::decode(decoder)?;
        let key = |d: &mut D| decode_bytes(d, KEY_BYTES_MAX, "key");
        let value = |d: &mut D| decode_bytes(d, VALUE_BYTES_MAX, "value");
        // A set element has the limit of a value, but errors name it as what it is.
        let element = |d: &mut D| decode_bytes(d, VALUE_BYTES_MAX, "element");
        Ok(match tag {
            OP_PUT => Self::Put { key: key(decoder)?, value: value(decoder)? },
            OP_DEL => Self::Del { key: key(decoder)? },
            OP_INCR => Self::Incr { key: key(decoder)?, delta: i64::decode(decoder)? },
            OP_ADD => Self::Add { key: key(decoder)?, element: element(decoder)? },
            OP_REMOVE => Self::Remove { key: key(decoder)?, element: element(decoder)? },
            OP_PROPOSE => Self::Propose { change: Change::decode(decoder)?, round: u32::decode(decoder)? },
            OP_APPROVE => {
                Self::Approve { change: ChangeId(decode_array(decoder)?), round: u32::decode(decoder)? }
            }
            OP_ROTATE => Self::Rotate(Rotation::decode(decoder)?),
            OP_PUT_SEEN => {
                Self::PutSeen { key: key(decoder)?, value: value(decoder)?, seen: Seen::decode(decoder)? }
            }
            OP_DEL_SEEN => Self::DelSeen { key: key(decoder)?, seen: Seen::decode(decoder)? },
            OP_ADD_SEEN => {
                Self::AddSeen { key: key(decoder)?, element: element(decoder)?, seen: Seen::decode(decoder)? }
            }
            OP_REMOVE_SEEN => Self::RemoveSeen {
                key: key(decoder)?,
                element: element(decoder)?,
                seen: Seen::decode(decoder)?,
            },
            other => return Err(DecodeError::OtherString(format!("{UNKNOWN_TAG}op tag {other}"))),
        })
    }
}

/// An op list borrowed for encoding.
struct OpsRef<'a>(&'a [Op]);

impl Encode for OpsRef<'_> {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        encode_len(self.0.len(), encoder)?;
        self.0.iter().try_for_each(|op| op.encode(encoder))
    }
}

impl Encode for Event {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.header.encode(encoder)?;
        OpsRef(&self.ops).encode(encoder)?;
        self.sig.0.encode(encoder)
    }
}

impl<Context> Decode<Context> for Event {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        Ok(Self {
            header: Header::decode(decoder)?,
            ops: decode_vec(decoder, OPS_MAX, "ops", Op::decode)?,
            sig: Signature(decode_array(decoder)?),
        })
    }
}

impl Encode for SignedHeader {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.header.encode(encoder)?;
        self.sig.0.encode(encoder)
    }
}

impl<Context> Decode<Context> for SignedHeader {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        Ok(Self { header: Header::decode(decoder)?, sig: Signature(decode_array(decoder)?) })
    }
}

impl Encode for Evidence {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.first.encode(encoder)?;
        self.second.encode(encoder)
    }
}

impl<Context> Decode<Context> for Evidence {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        Ok(Self { first: SignedHeader::decode(decoder)?, second: SignedHeader::decode(decoder)? })
    }
}

impl Encode for Genesis {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        encode_len(self.members().len(), encoder)?;
        for member in self.members() {
            member.key.0.encode(encoder)?;
            encode_bytes(member.name.as_bytes(), encoder)?;
        }
        // The policy only when the genesis sets one: a genesis without one encodes (and so
        // hashes into its cluster id) as before thresholds existed.
        if let Some(threshold) = self.threshold() {
            threshold.encode(encoder)?;
        }
        Ok(())
    }
}

impl<Context> Decode<Context> for Genesis {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let members = decode_vec(decoder, MEMBERS_MAX, "members", |d| {
            let key = PublicKey(decode_array(d)?);
            let name = decode_bytes(d, MEMBER_NAME_BYTES_MAX, "member name")?;
            let name = String::from_utf8(name).map_err(|_| DecodeError::Other("member name is not UTF-8"))?;
            Ok(Member { key, name })
        })?;
        Self::from_sorted(members).map_err(|e| DecodeError::OtherString(format!("{}: {e}", e.name())))
    }
}

const CHANGE_ADD: u32 = 0;
const CHANGE_REMOVE: u32 = 1;
const CHANGE_REPLACE: u32 = 2;

impl Encode for Change {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.base.0.encode(encoder)?;
        match &self.kind {
            ChangeKind::Add { key, name } => {
                CHANGE_ADD.encode(encoder)?;
                key.0.encode(encoder)?;
                encode_bytes(name.as_bytes(), encoder)
            }
            ChangeKind::Remove { seat, key, cut } => {
                CHANGE_REMOVE.encode(encoder)?;
                seat.0.encode(encoder)?;
                key.0.encode(encoder)?;
                cut.encode(encoder)
            }
            ChangeKind::Replace { seat, key, cut, successor } => {
                CHANGE_REPLACE.encode(encoder)?;
                seat.0.encode(encoder)?;
                key.0.encode(encoder)?;
                cut.encode(encoder)?;
                successor.0.encode(encoder)
            }
        }
    }
}

impl<Context> Decode<Context> for Change {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let base = MembershipId(decode_array(decoder)?);
        let tag = u32::decode(decoder)?;
        if tag > CHANGE_REPLACE {
            return Err(DecodeError::OtherString(format!("{UNKNOWN_TAG}change tag {tag}")));
        }
        let first = PublicKey(decode_array(decoder)?);
        let kind = match tag {
            CHANGE_ADD => {
                let name = decode_bytes(decoder, MEMBER_NAME_BYTES_MAX, "member name")?;
                let name =
                    String::from_utf8(name).map_err(|_| DecodeError::Other("member name is not UTF-8"))?;
                if !crate::genesis::is_valid_name(&name) {
                    return Err(DecodeError::OtherString(format!(
                        "bad_name: member name {name:?} must be 1 to {MEMBER_NAME_BYTES_MAX} bytes without control characters"
                    )));
                }
                ChangeKind::Add { key: first, name }
            }
            CHANGE_REMOVE => ChangeKind::Remove {
                seat: first,
                key: PublicKey(decode_array(decoder)?),
                cut: u64::decode(decoder)?,
            },
            _ => ChangeKind::Replace {
                seat: first,
                key: PublicKey(decode_array(decoder)?),
                cut: u64::decode(decoder)?,
                successor: PublicKey(decode_array(decoder)?),
            },
        };
        Ok(Self { base, kind })
    }
}

impl Encode for Rotation {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.key.0.encode(encoder)?;
        self.cut.encode(encoder)?;
        self.successor.0.encode(encoder)?;
        self.proof.0.encode(encoder)
    }
}

impl<Context> Decode<Context> for Rotation {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        Ok(Self {
            key: PublicKey(decode_array(decoder)?),
            cut: u64::decode(decoder)?,
            successor: PublicKey(decode_array(decoder)?),
            proof: Signature(decode_array(decoder)?),
        })
    }
}

const MSG_SUMMARY: u32 = 0;
const MSG_IN_SYNC: u32 = 1;
const MSG_TIPS: u32 = 2;
const MSG_EVENTS: u32 = 3;
const MSG_WANT: u32 = 4;
const MSG_FORK_PROBE: u32 = 5;
const MSG_FORK_IDS: u32 = 6;
const MSG_WANT_CHAIN: u32 = 7;
const MSG_EVIDENCE: u32 = 8;
const MSG_HAVE: u32 = 9;
const MSG_PRUNE: u32 = 10;
const MSG_GRAFT: u32 = 11;
const MSG_ADDRS: u32 = 12;

/// A message made of its tag and a list of event ids (`Want`, `Have`, `Graft`).
fn encode_ids<E: Encoder>(tag: u32, ids: &[EventId], encoder: &mut E) -> Result<(), EncodeError> {
    tag.encode(encoder)?;
    encode_len(ids.len(), encoder)?;
    ids.iter().try_for_each(|id| id.encode(encoder))
}

fn encode_evidence_list<E: Encoder>(list: &[Evidence], encoder: &mut E) -> Result<(), EncodeError> {
    encode_len(list.len(), encoder)?;
    list.iter().try_for_each(|e| Encode::encode(e, encoder))
}

fn decode_evidence_list<D: Decoder>(decoder: &mut D) -> Result<Vec<Evidence>, DecodeError> {
    decode_vec(decoder, EVIDENCE_PER_MESSAGE_MAX, "evidence", Evidence::decode)
}

impl Encode for Message {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        match self {
            Self::Summary { digest } => {
                MSG_SUMMARY.encode(encoder)?;
                digest.encode(encoder)
            }
            Self::InSync { digest } => {
                MSG_IN_SYNC.encode(encoder)?;
                digest.encode(encoder)
            }
            Self::Tips { reply, more, heard, tips, evidence } => {
                MSG_TIPS.encode(encoder)?;
                reply.encode(encoder)?;
                more.encode(encoder)?;
                heard.encode(encoder)?;
                encode_len(tips.len(), encoder)?;
                for tip in tips {
                    tip.author.0.encode(encoder)?;
                    tip.seq.encode(encoder)?;
                    tip.id.encode(encoder)?;
                }
                encode_evidence_list(evidence, encoder)
            }
            Self::Events { events } => {
                MSG_EVENTS.encode(encoder)?;
                encode_len(events.len(), encoder)?;
                events.iter().try_for_each(|e| encode_bytes(e, encoder))
            }
            Self::Want { ids } => encode_ids(MSG_WANT, ids, encoder),
            Self::ForkProbe { tip, seqs } => {
                MSG_FORK_PROBE.encode(encoder)?;
                tip.encode(encoder)?;
                encode_len(seqs.len(), encoder)?;
                seqs.iter().try_for_each(|s| s.encode(encoder))
            }
            Self::ForkIds { tip, entries } => {
                MSG_FORK_IDS.encode(encoder)?;
                tip.encode(encoder)?;
                encode_len(entries.len(), encoder)?;
                entries.iter().try_for_each(|(seq, id)| {
                    seq.encode(encoder)?;
                    id.encode(encoder)
                })
            }
            Self::WantChain { tip, from_seq } => {
                MSG_WANT_CHAIN.encode(encoder)?;
                tip.encode(encoder)?;
                from_seq.encode(encoder)
            }
            Self::Evidence { evidence } => {
                MSG_EVIDENCE.encode(encoder)?;
                encode_evidence_list(evidence, encoder)
            }
            Self::Have { ids } => encode_ids(MSG_HAVE, ids, encoder),
            Self::Prune => MSG_PRUNE.encode(encoder),
            Self::Graft { ids } => encode_ids(MSG_GRAFT, ids, encoder),
            Self::Addrs { records } => {
                MSG_ADDRS.encode(encoder)?;
                encode_len(records.len(), encoder)?;
                for record in records {
                    record.key.0.encode(encoder)?;
                    record.seq.encode(encoder)?;
                    encode_len(record.addrs.len(), encoder)?;
                    record.addrs.iter().try_for_each(|a| encode_bytes(a.as_bytes(), encoder))?;
                    record.signature.0.encode(encoder)?;
                }
                Ok(())
            }
        }
    }
}

impl<Context> Decode<Context> for Message {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let tag = u32::decode(decoder)?;
        Ok(match tag {
            MSG_SUMMARY => Self::Summary { digest: decode_array(decoder)? },
            MSG_IN_SYNC => Self::InSync { digest: decode_array(decoder)? },
            MSG_TIPS => Self::Tips {
                reply: bool::decode(decoder)?,
                more: bool::decode(decoder)?,
                heard: u64::decode(decoder)?,
                tips: decode_vec(decoder, TIPS_PER_MESSAGE_MAX, "tips", |d| {
                    Ok(Tip { author: PublicKey(decode_array(d)?), seq: u64::decode(d)?, id: decode_id(d)? })
                })?,
                evidence: decode_evidence_list(decoder)?,
            },
            MSG_EVENTS => Self::Events {
                events: decode_vec(decoder, EVENTS_PER_MESSAGE_MAX, "events", |d| {
                    decode_bytes(d, EVENT_BYTES_MAX, "event")
                })?,
            },
            MSG_WANT => Self::Want { ids: decode_vec(decoder, WANT_IDS_MAX, "ids", decode_id)? },
            MSG_FORK_PROBE => Self::ForkProbe {
                tip: decode_id(decoder)?,
                seqs: decode_vec(decoder, FORK_PROBE_SEQS_MAX, "seqs", |d| u64::decode(d))?,
            },
            MSG_FORK_IDS => Self::ForkIds {
                tip: decode_id(decoder)?,
                entries: decode_vec(decoder, FORK_PROBE_SEQS_MAX, "entries", |d| {
                    Ok((u64::decode(d)?, decode_id(d)?))
                })?,
            },
            MSG_WANT_CHAIN => Self::WantChain { tip: decode_id(decoder)?, from_seq: u64::decode(decoder)? },
            MSG_EVIDENCE => Self::Evidence { evidence: decode_evidence_list(decoder)? },
            MSG_HAVE => Self::Have { ids: decode_vec(decoder, WANT_IDS_MAX, "ids", decode_id)? },
            MSG_PRUNE => Self::Prune,
            MSG_GRAFT => Self::Graft { ids: decode_vec(decoder, WANT_IDS_MAX, "ids", decode_id)? },
            MSG_ADDRS => Self::Addrs {
                records: decode_vec(decoder, ADDR_RECORDS_PER_MESSAGE_MAX, "records", |d| {
                    Ok(AddrRecord {
                        key: PublicKey(decode_array(d)?),
                        seq: u64::decode(d)?,
                        addrs: decode_vec(d, ADDRS_PER_RECORD_MAX, "addrs", |d| {
                            let bytes = decode_bytes(d, ADDR_TEXT_BYTES_MAX, "addr")?;
                            String::from_utf8(bytes)
                                .map_err(|_| DecodeError::OtherString("an address is not UTF-8".into()))
                        })?,
                        signature: Signature(decode_array(d)?),
                    })
                })?,
            },
            other => return Err(DecodeError::OtherString(format!("{UNKNOWN_TAG}message tag {other}"))),
        })
    }
}
