//! The JSON of the local API, as types: the request bodies and query parameters that
//! [`crate::api`] reads, and the answers it writes, which [`crate::client`] reads back and
//! [`crate::ctl`] prints; also the report of `cairnctl inspect --json`. One type per shape, so
//! that the server, the client and the CLI cannot disagree about a field's name or type. The
//! module documentation of [`crate::api`] describes the routes and shows the shapes.
//!
//! The field order of each struct is the order on the wire. Bytes that may not be UTF-8 (keys
//! in listings, values, set elements) come as a pair: `name`, the text when the bytes are UTF-8
//! (else `null`), and `name_base64`, always. Answers ignore fields they do not know, so a newer
//! daemon may add some; request bodies refuse them, so that a misspelt field is an error rather
//! than a write of nothing.
//!
//! Two fields keep names that are less exact than they could be, because scripts already read
//! them: a set's members are `{"value", "value_base64"}` although they are elements
//! ([`SetMember`]), and an event's size is `size` (bytes of its canonical encoding).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use cairn_protocol::{Header, Op as ProtocolOp};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The largest integer magnitude that JSON readers with double-precision numbers (JavaScript,
/// jq) hold exactly: 2^53 − 1. A counter beyond it is sent as a string.
pub const JSON_SAFE_INTEGER_MAX: i128 = (1 << 53) - 1;

/// Bytes as UTF-8 text when they are, for the `name` of a `name`/`name_base64` pair.
pub fn text_of(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

/// JSON text pretty-printed, its fields in the order they come: `cairnctl --json` prints the
/// daemon's answers so, where [`serde_json::Value`] would sort the fields by name.
pub fn pretty(text: &[u8]) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&serde_json::from_slice::<Ordered>(text)?)
}

/// Any JSON value, with the fields of its objects in their order.
enum Ordered {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Self>),
    Object(Vec<(String, Self)>),
}

impl Serialize for Ordered {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        match self {
            Self::Null => serializer.serialize_unit(),
            Self::Bool(value) => serializer.serialize_bool(*value),
            Self::Number(number) => number.serialize(serializer),
            Self::String(text) => serializer.serialize_str(text),
            Self::Array(items) => serializer.collect_seq(items),
            Self::Object(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (name, value) in fields {
                    map.serialize_entry(name, value)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Ordered;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_unit<E>(self) -> Result<Ordered, E> {
                Ok(Ordered::Null)
            }

            fn visit_bool<E>(self, value: bool) -> Result<Ordered, E> {
                Ok(Ordered::Bool(value))
            }

            fn visit_i64<E>(self, value: i64) -> Result<Ordered, E> {
                Ok(Ordered::Number(value.into()))
            }

            fn visit_u64<E>(self, value: u64) -> Result<Ordered, E> {
                Ok(Ordered::Number(value.into()))
            }

            fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Ordered, E> {
                // JSON text has no NaN or infinity, so this holds for every parsed number.
                serde_json::Number::from_f64(value)
                    .map(Ordered::Number)
                    .ok_or_else(|| E::custom("a number that is not finite"))
            }

            fn visit_str<E>(self, text: &str) -> Result<Ordered, E> {
                Ok(Ordered::String(text.to_owned()))
            }

            fn visit_string<E>(self, text: String) -> Result<Ordered, E> {
                Ok(Ordered::String(text))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Ordered, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Ordered::Array(items))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut fields = Vec::new();
                while let Some(field) = map.next_entry()? {
                    fields.push(field);
                }
                Ok(Ordered::Object(fields))
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

// ---- requests --------------------------------------------------------------------------------

/// The body of `PUT /v1/registers/{key}`: exactly one of the two fields. (Optional fields have
/// no `#[serde(default)]`: with it, serde would also take a JSON list such as `["v"]` for the
/// struct, which the API refuses.)
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueBody {
    /// The value as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value's bytes in standard base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    /// The causal context of a read of this register (`context` of `GET`): the write supersedes
    /// exactly what that read saw, and a value written since stays as a sibling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// A read-modify-write guard: the write is refused (409 `context_changed`) unless the
    /// register's context here is still this one, and otherwise made with it as `context`.
    /// Advisory: two guarded writes racing on one node can both pass, and then are siblings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub if_context: Option<String>,
}

/// The body of `POST /v1/members/changes`: a proposed membership change (`docs/PROTOCOL.md`
/// §17), which is also this seat's vote for it.
///
/// - `{"action": "add", "key": KEY, "name": NAME}` adds a seat;
/// - `{"action": "remove", "seat": NAME_OR_KEY}` removes one (optional `cut`: the last seq of
///   its current key kept, default the highest this node holds; `force`: cut even what the
///   seat may have acknowledged);
/// - `{"action": "replace", "seat": NAME_OR_KEY, "key": SUCCESSOR}` replaces one, with the
///   same `cut` and `force`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeBody {
    /// `add`, `remove` or `replace`.
    pub action: String,
    /// The key to add, or the successor (64 hex digits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The name of the seat to add.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The seat to remove or replace: its name or a key of its chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seat: Option<String>,
    /// The last seq of the seat's current key that is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut: Option<u64>,
    /// Remove even if that may cut writes the seat acknowledged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// The answer to `POST /v1/members/changes` and `/v1/members/changes/{id}/approve`: the change
/// and the event that carries this node's op, once it is on disk on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAck {
    /// The change's id (64 hex digits): what the other seats approve.
    pub change: String,
    /// The event that carries the proposal or approval.
    pub event: Ack,
}

/// The answer to `POST /v1/members/rotate`: the node's new key, and the event (signed by the
/// old key) that rotated it, once it is on disk on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotated {
    /// The new key (64 hex digits).
    pub key: String,
    /// The rotation's event.
    pub event: Ack,
}

/// The body of `POST /v1/sets/{key}/add` and `/remove`: exactly one of the two fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElementBody {
    /// The element as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub element: Option<String>,
    /// The element's bytes in standard base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub element_base64: Option<String>,
    /// The causal context of a read of the set (the member's `context` of `GET`): a remove
    /// takes out exactly the adds that read saw, so an add made since stays.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

/// The query of `DELETE /v1/registers/{key}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// The causal context of a read of the register: the delete supersedes exactly what that
    /// read saw.
    pub context: Option<String>,
}

/// The body of `POST /v1/counters/{key}/incr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncrBody {
    /// The amount to add; negative to subtract.
    pub delta: i64,
}

/// The body of `POST /v1/batch`: ops written as one event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// 1 to `OPS_MAX` ops, applied in this order.
    pub ops: Vec<BatchOp>,
}

/// One op of a batch: `{"op": "put", "key": "k", "value": "v"}` and so on. Values and elements
/// are given as text or as base64, exactly one of the two.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum BatchOp {
    /// A register write.
    Put {
        key: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        value_base64: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        context: Option<String>,
    },
    /// A register delete.
    Del {
        key: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        context: Option<String>,
    },
    /// A counter increment.
    Incr { key: String, delta: i64 },
    /// A set add.
    Add {
        key: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        element: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        element_base64: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        context: Option<String>,
    },
    /// A set remove.
    Remove {
        key: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        element: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        element_base64: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        context: Option<String>,
    },
}

/// A key space: `register`, `counter` or `set`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// Registers.
    Register,
    /// Counters.
    Counter,
    /// Sets.
    Set,
}

impl KeyKind {
    /// The name on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Counter => "counter",
            Self::Set => "set",
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<cairn_protocol::document::KeyKind> for KeyKind {
    fn from(kind: cairn_protocol::document::KeyKind) -> Self {
        use cairn_protocol::document::KeyKind as Document;
        match kind {
            Document::Register => Self::Register,
            Document::Counter => Self::Counter,
            Document::Set => Self::Set,
        }
    }
}

impl From<KeyKind> for cairn_protocol::document::KeyKind {
    fn from(kind: KeyKind) -> Self {
        match kind {
            KeyKind::Register => Self::Register,
            KeyKind::Counter => Self::Counter,
            KeyKind::Set => Self::Set,
        }
    }
}

/// The query of `GET /v1/keys`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysQuery {
    /// Only keys of this kind; all kinds without it.
    pub kind: Option<KeyKind>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// At most this many keys.
    pub limit: Option<usize>,
}

impl KeysQuery {
    /// The query string, `?` first, or nothing when no parameter is given.
    pub fn to_query(&self) -> String {
        query_string(&[
            ("kind", self.kind.map(|kind| kind.name().to_owned())),
            ("after", self.after.as_deref().map(crate::client::path_segment)),
            ("limit", self.limit.map(|limit| limit.to_string())),
        ])
    }
}

/// The query of `GET /v1/events`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only this member's events: its key (64 hex digits) or its name.
    pub author: Option<String>,
    /// With `author`, events above this seq; otherwise events accepted after this position.
    pub after: Option<u64>,
    /// At most this many events.
    pub limit: Option<usize>,
}

impl EventsQuery {
    /// The query string, `?` first, or nothing when no parameter is given.
    pub fn to_query(&self) -> String {
        query_string(&[
            ("author", self.author.as_deref().map(crate::client::path_segment)),
            ("after", self.after.map(|after| after.to_string())),
            ("limit", self.limit.map(|limit| limit.to_string())),
        ])
    }
}

/// `?name=value&…` of the parameters that are given; the values must be percent-encoded.
fn query_string(parameters: &[(&str, Option<String>)]) -> String {
    let given: Vec<String> = parameters
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|value| format!("{name}={value}")))
        .collect();
    if given.is_empty() { String::new() } else { format!("?{}", given.join("&")) }
}

// ---- answers ---------------------------------------------------------------------------------

/// Every error answer: `{"error": {"code", "message"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable code: `bad_key`, `not_found`, `not_ready`, …
    pub code: String,
    /// What happened and what to do, for people.
    pub message: String,
}

/// The answer to every write: the event that holds it, once it is on disk on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The event id (64 hex digits).
    pub id: String,
    /// The event's seq.
    pub seq: u64,
    /// The event's lamport.
    pub lamport: u64,
}

/// `GET /v1/health`: liveness (the service loop answered) and readiness, with each check. The
/// status code is 200 when ready, 503 when not (or when the loop did not answer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The service loop answered within the API's deadline.
    pub live: bool,
    /// Ready for clients: every check passes.
    pub ready: bool,
    /// The checks, by name, each `"ok"` or why not.
    pub checks: BTreeMap<String, String>,
}

/// `GET /v1/status`: the node in brief.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// This node's public key (64 hex digits).
    pub key: String,
    /// This node's name in the genesis.
    pub name: String,
    /// The cluster id (64 hex digits).
    pub cluster_id: String,
    /// The highest seq of this node's own events.
    pub own_seq: u64,
    /// The document digest (64 hex digits): equal on nodes that hold the same events.
    pub digest: String,
    /// The sync digest (64 hex digits): tips and evidence, which peers compare.
    pub sync_digest: String,
    /// Accepted events.
    pub n_events: usize,
    /// Evidence objects held (one per equivocating author).
    pub n_evidence: usize,
    /// Events waiting in the causal buffer.
    pub buffer_events: usize,
    /// Bytes in the causal buffer.
    pub buffer_bytes: usize,
    /// The causal buffer's limit in bytes.
    pub buffer_bytes_max: usize,
    /// Why writes are refused; `null` when they are accepted.
    pub writes_refused: Option<String>,
    /// Peers connected now.
    pub n_peers_connected: usize,
    /// Every other key in force.
    pub n_peers: usize,
    /// What each key has written, as this node holds it, this node included: the genesis
    /// members, then the keys membership changes brought in. Who fills the disks.
    #[serde(default)]
    pub authors: Vec<Author>,
    /// The membership in force (`GET /v1/members` has the details).
    #[serde(default)]
    pub membership: MembershipSummary,
}

/// The membership in force in brief, in [`Status`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipSummary {
    /// Its id (64 hex digits): the cluster id until a change is in force.
    pub id: String,
    /// Its seats.
    pub n_seats: usize,
    /// Its open round.
    pub round: u32,
    /// Changes with votes in the open round.
    pub n_pending: usize,
}

/// One member's writes, in [`Status`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Author {
    /// Its name in the genesis.
    pub name: String,
    /// Its key (64 hex digits).
    pub key: String,
    /// Its events this node holds.
    pub events: u64,
    /// Their encoded bytes.
    pub bytes: u64,
    /// Its events accepted per second, over the last whole 10 s.
    pub events_per_sec: f64,
    /// Their bytes per second, over the same window.
    pub bytes_per_sec: f64,
}

/// `GET /v1/members`: the membership in force (`docs/PROTOCOL.md` §17) and its pending changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The membership's id (the cluster id while no change took effect).
    pub id: String,
    /// Changes that took effect since the genesis.
    pub n_changes: usize,
    /// The round open for votes.
    pub round: u32,
    /// Votes a change needs.
    pub threshold: usize,
    /// The seats in force, by founding key.
    pub seats: Vec<MemberSeat>,
    /// The changes of this membership and round with votes, most votes first.
    pub pending: Vec<PendingChange>,
    /// Seats that approved two changes of one membership and round (evidence, rule M7).
    pub double_approvals: Vec<String>,
}

/// One seat in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSeat {
    /// Its name.
    pub name: String,
    /// The key that founded it.
    pub founder: String,
    /// The key that signs for it now (the founder, or the last key it rotated to).
    pub key: String,
}

/// A change with votes in the open round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingChange {
    /// Its id.
    pub change: String,
    /// `add`, `remove` or `replace`.
    pub action: String,
    /// The key it adds, or cuts.
    pub key: String,
    /// The seat it removes or replaces (its founding key), or the name it adds.
    pub seat: String,
    /// For a removal or replacement: the last seq of `key` it keeps.
    pub cut: Option<u64>,
    /// Votes counted for it.
    pub votes: usize,
}

/// `GET /v1/peers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Peers {
    /// Every other member.
    pub peers: Vec<Peer>,
}

/// A peer's connection state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// A connection is up.
    Connected,
    /// No connection yet, or it dropped: trying.
    Connecting,
    /// The peer is refused (it equivocated).
    Refused,
    /// Not a key of a seat in force: removed, rotated away, or not added yet.
    #[serde(rename = "out_of_force")]
    OutOfForce,
    /// Not connected: the two speak different protocol versions (`protocol_versions` says which).
    #[serde(rename = "version_mismatch")]
    VersionMismatch,
}

impl PeerState {
    /// The name on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Connecting => "connecting",
            Self::Refused => "refused",
            Self::OutOfForce => "out_of_force",
            Self::VersionMismatch => "version_mismatch",
        }
    }
}

/// One other member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    /// Its public key (64 hex digits).
    pub key: String,
    /// Its name in the genesis.
    pub name: String,
    /// The address this node dials it at (from the member's signed address record, else its
    /// configured seed address); `null` if no address is known.
    pub address: Option<String>,
    /// The connection state.
    pub state: PeerState,
    /// Whether it is one of this node's outbound choices (the overlay: this node dials it).
    /// Absent from older nodes' answers (read as false).
    #[serde(default)]
    pub outbound: bool,
    /// Whether it is connected and receives events eagerly (whole events; the others get
    /// announced ids). Absent from older nodes' answers (read as false).
    #[serde(default)]
    pub eager: bool,
    /// How long ago it last sent something; `null` if never.
    pub last_seen_ms_ago: Option<u64>,
    /// The connection's round-trip time; `null` without a connection.
    pub rtt_ms: Option<f64>,
    /// Counters since this node started.
    pub stats: PeerStats,
    /// How far it lagged at the end of its last sync session with this node: the events this
    /// node holds past each author's highest seq the peer held then (0 when both sets were
    /// equal). An upper bound of what it lacks now; `null` before a session ended.
    #[serde(default)]
    pub lag_events: Option<u64>,
    /// When the last handshake failed for a protocol version mismatch: the versions, this
    /// node's and the peer's (`null` if it did not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_versions: Option<ProtocolVersions>,
}

/// The two sides of a protocol version mismatch, as versions read (`"1"`, `"2"`, or hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolVersions {
    /// This node's.
    pub ours: String,
    /// The peer's, if it said.
    pub theirs: Option<String>,
}

/// Counters of one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStats {
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub events_in: u64,
    pub events_out: u64,
    pub events_rate_limited: u64,
    /// Events from this peer rejected, by reason (`Reject::name()`).
    pub rejected: BTreeMap<String, u64>,
    pub bad_messages: u64,
    pub sessions_in_sync: u64,
    pub sessions_tips: u64,
}

/// `GET /v1/keys`: one page of keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysPage {
    /// The keys of this page.
    pub keys: Vec<KeyEntry>,
    /// The `after` of the next page; `null` on the last.
    pub next: Option<String>,
}

/// One key with a non-empty state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    /// Its key space.
    pub kind: KeyKind,
    /// The key as text; `null` if it is not UTF-8.
    pub key: Option<String>,
    /// The key in base64.
    pub key_base64: String,
}

/// One concurrent value of a register.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sibling {
    /// The value as text; `null` if it is not UTF-8.
    pub value: Option<String>,
    /// The value in base64.
    pub value_base64: String,
    /// The author's key; `null` only if the service named an author outside the genesis.
    pub author: Option<String>,
    /// The author's name; `null` as `author`.
    pub author_name: Option<String>,
    /// The author's index in the genesis.
    pub author_index: usize,
    /// The lamport of the event that wrote it.
    pub lamport: u64,
    /// The event that wrote it.
    pub event_id: String,
    /// The op's index in that event.
    pub op_index: u32,
}

/// A register's state: the visible value (both fields `null` when there is none) and every
/// sibling.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterState {
    /// The visible value as text; `null` if there is none or it is not UTF-8.
    pub value: Option<String>,
    /// The visible value in base64; `null` if there is none.
    pub value_base64: Option<String>,
    /// Every concurrent value.
    pub siblings: Vec<Sibling>,
    /// The causal context of this read, opaque (base64): give it back with a write or delete
    /// so that it supersedes exactly what this read saw.
    #[serde(default)]
    pub context: String,
}

/// `GET /v1/registers/{key}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// The key asked for.
    pub key: String,
    /// Its state, flattened into this object.
    #[serde(flatten)]
    pub state: RegisterState,
}

/// A counter's value: a JSON number within ±[`JSON_SAFE_INTEGER_MAX`], else a string of its
/// decimal digits (`"-"` first if negative), so that JSON readers with double-precision numbers
/// never round it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterValue(pub i128);

impl Serialize for CounterValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match i64::try_from(self.0) {
            Ok(value) if self.0.unsigned_abs() <= JSON_SAFE_INTEGER_MAX.unsigned_abs() => {
                serializer.serialize_i64(value)
            }
            _ => serializer.collect_str(&self.0),
        }
    }
}

impl<'de> Deserialize<'de> for CounterValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = CounterValue;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer, or a string of its decimal digits")
            }

            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<CounterValue, E> {
                Ok(CounterValue(i128::from(value)))
            }

            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<CounterValue, E> {
                Ok(CounterValue(i128::from(value)))
            }

            fn visit_str<E: serde::de::Error>(self, digits: &str) -> Result<CounterValue, E> {
                digits
                    .parse()
                    .map(CounterValue)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(digits), &self))
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

impl fmt::Display for CounterValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `GET /v1/counters/{key}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// The key asked for.
    pub key: String,
    /// The sum of its deltas (0 for a counter no one incremented).
    pub value: CounterValue,
}

/// A member of a set. The fields are named `value`, as in the first version of the API,
/// although they hold an element.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetMember {
    /// The element as text; `null` if it is not UTF-8.
    pub value: Option<String>,
    /// The element in base64.
    pub value_base64: String,
    /// The causal context of this member in a set read, opaque (base64): a remove that
    /// carries it takes out exactly the adds this read saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

impl SetMember {
    /// The JSON of an element's bytes.
    pub fn of(element: &[u8]) -> Self {
        Self { value: text_of(element), value_base64: BASE64.encode(element), context: None }
    }
}

/// `GET /v1/sets/{key}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Set {
    /// The key asked for.
    pub key: String,
    /// The members, in bytewise order.
    pub members: Vec<SetMember>,
}

/// An op as the API shows it (in events, and in `cairnctl inspect --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    /// A register write.
    Put {
        key: Option<String>,
        key_base64: String,
        value: Option<String>,
        value_base64: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seen: Option<Seen>,
    },
    /// A register delete.
    Del {
        key: Option<String>,
        key_base64: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seen: Option<Seen>,
    },
    /// A counter increment.
    Incr { key: Option<String>, key_base64: String, delta: i64 },
    /// A set add.
    Add {
        key: Option<String>,
        key_base64: String,
        element: Option<String>,
        element_base64: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seen: Option<Seen>,
    },
    /// A set remove.
    Remove {
        key: Option<String>,
        key_base64: String,
        element: Option<String>,
        element_base64: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seen: Option<Seen>,
    },
    /// A membership change proposed (PROTOCOL.md §17): `action` is `add`, `remove` or
    /// `replace`, `key` the key it adds or cuts.
    Propose { change: String, base: String, action: String, key: String, round: u32 },
    /// A vote for a membership change.
    Approve { change: String, round: u32 },
    /// A key rotation: `key`'s seat passes to `successor` after seq `cut`.
    Rotate { key: String, cut: u64, successor: String },
}

/// An op's causal context as the API shows it (PROTOCOL.md §5): the events its writer had read,
/// by id (other authors', deps of the event) and by the author's own seq.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// Named events of other authors, hex.
    pub events: Vec<String>,
    /// Named own seqs.
    pub own: Vec<u64>,
}

impl From<&cairn_protocol::Seen> for Seen {
    fn from(seen: &cairn_protocol::Seen) -> Self {
        Self { events: seen.events.iter().map(ToString::to_string).collect(), own: seen.own.clone() }
    }
}

impl Op {
    /// The op's name on the wire.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Put { .. } => "put",
            Self::Del { .. } => "del",
            Self::Incr { .. } => "incr",
            Self::Add { .. } => "add",
            Self::Remove { .. } => "remove",
            Self::Propose { .. } => "propose",
            Self::Approve { .. } => "approve",
            Self::Rotate { .. } => "rotate",
        }
    }

    /// The key as the pair `(text, base64)`.
    pub fn key(&self) -> (Option<&str>, &str) {
        match self {
            Self::Put { key, key_base64, .. }
            | Self::Del { key, key_base64, .. }
            | Self::Incr { key, key_base64, .. }
            | Self::Add { key, key_base64, .. }
            | Self::Remove { key, key_base64, .. } => (key.as_deref(), key_base64),
            // A membership op writes no document key.
            Self::Propose { .. } | Self::Approve { .. } | Self::Rotate { .. } => (Some(""), ""),
        }
    }
}

impl From<&ProtocolOp> for Op {
    fn from(op: &ProtocolOp) -> Self {
        let key = text_of(op.key());
        let key_base64 = BASE64.encode(op.key());
        let seen = op.seen().map(Seen::from);
        match op {
            ProtocolOp::Put { value, .. } | ProtocolOp::PutSeen { value, .. } => {
                Self::Put { key, key_base64, value: text_of(value), value_base64: BASE64.encode(value), seen }
            }
            ProtocolOp::Del { .. } | ProtocolOp::DelSeen { .. } => Self::Del { key, key_base64, seen },
            ProtocolOp::Incr { delta, .. } => Self::Incr { key, key_base64, delta: *delta },
            ProtocolOp::Add { element, .. } | ProtocolOp::AddSeen { element, .. } => Self::Add {
                key,
                key_base64,
                element: text_of(element),
                element_base64: BASE64.encode(element),
                seen,
            },
            ProtocolOp::Remove { element, .. } | ProtocolOp::RemoveSeen { element, .. } => Self::Remove {
                key,
                key_base64,
                element: text_of(element),
                element_base64: BASE64.encode(element),
                seen,
            },
            ProtocolOp::Propose { change, round } => {
                use cairn_protocol::ChangeKind;
                let (action, key) = match &change.kind {
                    ChangeKind::Add { key, .. } => ("add", key),
                    ChangeKind::Remove { key, .. } => ("remove", key),
                    ChangeKind::Replace { successor, .. } => ("replace", successor),
                };
                Self::Propose {
                    change: change.id().to_string(),
                    base: change.base.to_string(),
                    action: action.to_owned(),
                    key: key.to_string(),
                    round: *round,
                }
            }
            ProtocolOp::Approve { change, round } => {
                Self::Approve { change: change.to_string(), round: *round }
            }
            ProtocolOp::Rotate(rotation) => Self::Rotate {
                key: rotation.key.to_string(),
                cut: rotation.cut,
                successor: rotation.successor.to_string(),
            },
        }
    }
}

/// `GET /v1/events`: one page of accepted events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsPage {
    /// The events of this page.
    pub events: Vec<EventSummary>,
    /// The `after` of the next page; `null` on the last.
    pub next: Option<u64>,
}

/// An accepted event in a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSummary {
    pub id: String,
    pub author: String,
    pub author_name: String,
    pub seq: u64,
    pub lamport: u64,
    pub n_deps: usize,
    pub n_ops: usize,
    /// Bytes of its canonical encoding.
    pub size: usize,
    /// Whether its ops are left out of the document (its author forked at or below its seq).
    pub excluded: bool,
}

/// `GET /v1/events/{id}`: one accepted event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub author: String,
    pub author_name: String,
    pub seq: u64,
    pub lamport: u64,
    pub deps: Vec<String>,
    /// Recomputed from the ops; an accepted event's header holds the same hash.
    pub ops_hash: String,
    pub ops: Vec<Op>,
    /// Bytes of its canonical encoding.
    pub size: usize,
    /// Whether its ops are left out of the document (its author forked at or below its seq).
    pub excluded: bool,
    /// The canonical encoding in hex, for `cairnctl inspect event`.
    pub encoded_hex: String,
}

/// `GET /v1/evidence`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceList {
    /// The least evidence held per equivocating author.
    pub evidence: Vec<Evidence>,
    /// Seats that approved two different changes of one membership and round (rule M7 of
    /// `docs/PROTOCOL.md` §17): each side is a signed event this node accepted, so anyone can
    /// check it with `GET /v1/events/{id}`.
    #[serde(default)]
    pub double_approvals: Vec<DoubleApproval>,
}

/// A seat's two votes in one membership and round, in [`EvidenceList`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoubleApproval {
    /// The seat's founding key.
    pub seat: String,
    /// The seat's name, if it is in force.
    pub name: Option<String>,
    /// The membership both changes change.
    pub base: String,
    /// The round both votes are in.
    pub round: u32,
    /// The vote that counts.
    pub first: VoteRef,
    /// The earliest vote for another change.
    pub second: VoteRef,
}

/// One vote: the event that carries it and the change it approves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRef {
    /// The approving event's id.
    pub event: String,
    /// Its author (a key of the seat's chain).
    pub key: String,
    /// Its seq.
    pub seq: u64,
    /// The change approved.
    pub change: String,
}

/// Proof that an author signed two events with one seq.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// The equivocating author's key.
    pub author: String,
    /// Its name; `null` if it is not a member this node knows.
    pub author_name: Option<String>,
    /// The seq both headers claim.
    pub seq: u64,
    /// The header with the smaller id.
    pub first: SignedHeader,
    /// The header with the larger id.
    pub second: SignedHeader,
    /// The canonical encoding in hex, for `cairnctl inspect evidence`.
    pub encoded_hex: String,
}

/// A header with its signature (in evidence, and in `cairnctl inspect --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHeader {
    pub id: String,
    pub author: String,
    pub seq: u64,
    pub lamport: u64,
    pub deps: Vec<String>,
    pub ops_hash: String,
    pub sig: String,
}

impl From<&cairn_protocol::SignedHeader> for SignedHeader {
    fn from(signed: &cairn_protocol::SignedHeader) -> Self {
        let Header { author, seq, lamport, deps, ops_hash } = &signed.header;
        Self {
            id: signed.header.id().to_string(),
            author: author.to_string(),
            seq: *seq,
            lamport: *lamport,
            deps: deps.iter().map(ToString::to_string).collect(),
            ops_hash: hex::encode(ops_hash),
            sig: hex::encode(signed.sig.0),
        }
    }
}

// ---- the watch stream --------------------------------------------------------------------------

/// The data of a `change` event of `GET /v1/watch`: which key changed and, when it could be
/// read, its state now (which may already include later changes; their own events follow).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The key's kind.
    pub kind: KeyKind,
    /// The key as text; `null` if it is not UTF-8.
    pub key: Option<String>,
    /// The key in base64.
    pub key_base64: String,
    /// The change's position in this node's stream of changes (1, 2, 3, …).
    pub position: u64,
    /// The state, flattened into this object.
    #[serde(flatten)]
    pub state: ChangeState,
}

/// The state in a [`Change`]: the fields of the key's kind, or `state_error`. Told apart by
/// their fields (`siblings`, `value`, `members`, `state_error`), in this order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChangeState {
    /// A register's state.
    Register(RegisterState),
    /// A counter's value.
    Counter {
        /// The counter's value.
        value: CounterValue,
    },
    /// A set's members.
    Set {
        /// The members.
        members: Vec<SetMember>,
    },
    /// The state could not be read (the service is busy or stopping).
    Unavailable {
        /// Why.
        state_error: String,
    },
}

/// The data of a `lagged` event of `GET /v1/watch`: the stream skipped some changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lagged {
    /// How many changes were skipped.
    pub missed: u64,
}

/// One event of `GET /v1/watch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key changed.
    Change(Change),
    /// The watcher fell behind.
    Lagged(Lagged),
}

impl WatchEvent {
    /// The event named `name` with JSON `data`; `Ok(None)` for a name this version does not
    /// know, so that a newer daemon can add some.
    pub fn parse(name: &str, data: &str) -> serde_json::Result<Option<Self>> {
        Ok(match name {
            "change" => Some(Self::Change(serde_json::from_str(data)?)),
            "lagged" => Some(Self::Lagged(serde_json::from_str(data)?)),
            _ => None,
        })
    }
}

// ---- cairnctl inspect --------------------------------------------------------------------------

/// The report of `cairnctl --json inspect event|evidence`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectReport<T> {
    /// `event` or `evidence`.
    pub kind: String,
    /// Bytes of input after hex decoding; `null` if the input could not be read as bytes.
    pub size: Option<usize>,
    /// Whether the input was hex text.
    pub hex_input: bool,
    /// Whether the bytes decode.
    pub well_formed: bool,
    /// Why the input is not well formed: the decoding rule and its detail.
    pub error: Option<String>,
    /// What the bytes decode to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decoded: Option<T>,
    /// Every rule's verdict, in the order of `docs/PROTOCOL.md`.
    pub checks: Vec<InspectCheck>,
    /// `valid`, `invalid` or `undecided`.
    pub outcome: String,
    /// Whether every rule holds, none undecided: the same as `outcome == "valid"`.
    pub valid: bool,
}

/// One rule's verdict in an [`InspectReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectCheck {
    /// The rule's name (`EventRule::name`, `EvidenceRule::name`).
    pub name: String,
    /// The rule's number in `docs/PROTOCOL.md` (§7 for events, §9 for evidence).
    pub rule: u8,
    /// `pass`, `fail` or `undecided`.
    pub verdict: String,
    /// `true` passed, `false` failed, `null` undecided.
    pub ok: Option<bool>,
    /// For a failure, the reason's name in `docs/PROTOCOL.md` (`bad_seq`, `NotTwoOrdered`).
    pub reason: Option<String>,
    /// For a decoding failure, the decoding rule broken (`truncated`, `length_over_limit`, …).
    pub codec: Option<String>,
    /// For an undecided rule, what it needs: `needs_genesis`, `needs_causal_past`, `not_decoded`.
    pub needs: Option<String>,
    /// What the rule requires, what is wrong, or why it is undecided.
    pub detail: String,
}

impl InspectCheck {
    /// The verdict of the rule `(name, number, requirement)` as the report shows it; an
    /// undecided verdict's detail is `undecided` of what it needs (each caller says what would
    /// decide it).
    pub fn of(
        (rule_name, number, requirement): (&str, u8, &str),
        verdict: &cairn_protocol::diagnose::Verdict,
        undecided: impl FnOnce(cairn_protocol::diagnose::Needs) -> String,
    ) -> Self {
        use cairn_protocol::diagnose::Verdict;
        let (name, ok, reason, codec, needs, detail) = match verdict {
            Verdict::Pass => ("pass", Some(true), None, None, None, requirement.to_owned()),
            Verdict::Fail(failure) => (
                "fail",
                Some(false),
                Some(failure.reason.to_owned()),
                failure.codec.map(str::to_owned),
                None,
                failure.to_string(),
            ),
            Verdict::Undecided(needs) => {
                ("undecided", None, None, None, Some(needs.name().to_owned()), undecided(*needs))
            }
        };
        Self {
            name: rule_name.to_owned(),
            rule: number,
            verdict: name.to_owned(),
            ok,
            reason,
            codec,
            needs,
            detail,
        }
    }
}

/// The decoded event of an [`InspectReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectedEvent {
    pub id: String,
    pub author: String,
    pub seq: u64,
    pub lamport: u64,
    pub deps: Vec<String>,
    pub ops_hash: String,
    pub sig: String,
    pub ops: Vec<Op>,
}

/// The decoded evidence of an [`InspectReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectedEvidence {
    pub author: String,
    pub seq: u64,
    pub first: SignedHeader,
    pub second: SignedHeader,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A peer as an older node answers it, without `outbound` and `eager`, still reads (as
    /// false): `cairnctl` of this version can talk to a daemon of the last.
    #[test]
    fn a_peer_without_the_overlay_fields_reads_as_neither() {
        let older = json!({"key": "ab", "name": "bob", "address": null, "state": "connected",
            "last_seen_ms_ago": 5, "rtt_ms": 0.4, "stats": PeerStats::default()});
        let peer: Peer = serde_json::from_value(older).unwrap();
        assert!(!peer.outbound && !peer.eager);
        let newer = serde_json::to_value(Peer { outbound: true, eager: true, ..peer }).unwrap();
        assert_eq!((&newer["outbound"], &newer["eager"]), (&json!(true), &json!(true)));
    }

    #[test]
    fn counters_are_json_numbers_only_where_json_readers_hold_them() {
        let check = |value: i128, expected: serde_json::Value| {
            let json = serde_json::to_value(CounterValue(value)).unwrap();
            assert_eq!(json, expected, "{value}");
            assert_eq!(serde_json::from_value::<CounterValue>(json).unwrap(), CounterValue(value), "{value}");
        };
        check(0, json!(0));
        check(-3, json!(-3));
        check(JSON_SAFE_INTEGER_MAX, json!(9_007_199_254_740_991_i64));
        check(-JSON_SAFE_INTEGER_MAX, json!(-9_007_199_254_740_991_i64));
        check(JSON_SAFE_INTEGER_MAX + 1, json!("9007199254740992"));
        check(-JSON_SAFE_INTEGER_MAX - 1, json!("-9007199254740992"));
        check(i128::from(i64::MAX), json!("9223372036854775807"));
        check(i128::MAX, json!(i128::MAX.to_string()));
        check(i128::MIN, json!(i128::MIN.to_string()));
        for bad in [json!("12x"), json!(1.5), json!(null), json!([1])] {
            assert!(serde_json::from_value::<CounterValue>(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn change_states_are_told_apart_by_their_fields() {
        // Read and written again: the same text, field for field and in order.
        let check = |data: &str| {
            let change: Change = serde_json::from_str(data).unwrap();
            assert_eq!(serde_json::to_string(&change).unwrap(), data);
            change.state
        };
        let state = check(
            r#"{"kind":"counter","key":"c","key_base64":"Yw==","position":1,"value":"-9007199254740992"}"#,
        );
        assert_eq!(state, ChangeState::Counter { value: CounterValue(-9_007_199_254_740_992) });
        let state = check(r#"{"kind":"set","key":"s","key_base64":"cw==","position":2,"members":[]}"#);
        assert_eq!(state, ChangeState::Set { members: vec![] });
        let state = check(
            r#"{"kind":"register","key":"r","key_base64":"cg==","position":3,"value":null,"value_base64":null,"siblings":[],"context":"AQ=="}"#,
        );
        assert_eq!(
            state,
            ChangeState::Register(RegisterState {
                value: None,
                value_base64: None,
                siblings: vec![],
                context: "AQ==".into()
            })
        );
        let state =
            check(r#"{"kind":"set","key":null,"key_base64":"/w==","position":4,"state_error":"busy"}"#);
        assert_eq!(state, ChangeState::Unavailable { state_error: "busy".into() });
    }

    #[test]
    fn pretty_keeps_the_order_and_the_values() {
        let text = br#"{"z":1,"a":[true,null,-2,0.5,"\u001b"],"m":{"y":18446744073709551615,"b":{}}}"#;
        assert_eq!(
            pretty(text).unwrap(),
            "{\n  \"z\": 1,\n  \"a\": [\n    true,\n    null,\n    -2,\n    0.5,\n    \"\\u001b\"\n  ],\n  \
             \"m\": {\n    \"y\": 18446744073709551615,\n    \"b\": {}\n  }\n}"
        );
        assert!(pretty(b"{\"a\":").is_err());
    }

    #[test]
    fn request_bodies_hold_only_what_is_given() {
        let body = ValueBody { value: Some("v".into()), ..ValueBody::default() };
        assert_eq!(serde_json::to_string(&body).unwrap(), r#"{"value":"v"}"#);
        let op = BatchOp::Add {
            key: "k".into(),
            element: None,
            element_base64: Some("/w==".into()),
            context: None,
        };
        assert_eq!(serde_json::to_string(&op).unwrap(), r#"{"op":"add","key":"k","element_base64":"/w=="}"#);
        assert!(serde_json::from_str::<BatchOp>(r#"{"op":"put","key":"k","vlaue":"v"}"#).is_err());
        let query = KeysQuery { kind: Some(KeyKind::Set), after: Some("set:YQ".into()), limit: Some(2) };
        assert_eq!(query.to_query(), "?kind=set&after=set%3AYQ&limit=2");
        assert_eq!(KeysQuery::default().to_query(), "");
        let query = EventsQuery { author: Some("al ice".into()), after: None, limit: Some(5) };
        assert_eq!(query.to_query(), "?author=al%20ice&limit=5");
    }
}
