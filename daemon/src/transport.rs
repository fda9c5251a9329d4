//! The QUIC transport between members: one authenticated connection per pair of peers, carrying
//! length-prefixed reconciliation messages, with bounded per-peer send queues.
//!
//! # Connections
//!
//! Each pair of members keeps at most one connection, and either side may dial it. A node dials
//! the peers it is told to want ([`Transport::set_outbound`]: the overlay's outbound choice,
//! `crate::overlay`), at the address it knows for each ([`Transport::learn_address`]: from
//! the config, or from the member's signed address record), whenever it holds no connection to
//! it (the node with the larger key first waits [`DIAL_DEFER`], so that when both want each
//! other usually only the smaller key's dial happens). Dials retry with exponential backoff (from
//! `reconnect_backoff_min`, doubling up to `reconnect_backoff_max`, reset after a connection that
//! lived more than [`CONNECTION_STABLE`]) while the peer is wanted, until the transport shuts
//! down or the peer is refused. A peer that stops being wanted is no longer dialed, and a
//! connection this node dialed to it is closed with [`CloseCode::Rotated`]; one the peer dialed
//! stays (the peer wants it). A peer whose address we do not know is reached only when it dials
//! us.
//!
//! Inbound connections from peers this node does not want itself are capped
//! ([`TransportConfig::inbound_max`]): past the cap the acceptor reads the dialer's hello and
//! closes with [`CloseCode::Busy`] instead of answering, so the dialer sees a failed dial.
//!
//! When a second connection with the same peer completes its hellos while one is up, one rule,
//! [`newcomer_wins`], applied the same way on both sides, keeps one and closes the other with
//! [`CloseCode::Replaced`]:
//!
//! - if the connection we hold is older than the duplicate window (`handshake_timeout` plus
//!   [`DUPLICATE_WINDOW_SLACK`]), the newcomer wins: an honest peer dials only when it holds no
//!   connection with us, so it has lost the old one (it restarted, or its side timed out);
//! - otherwise both are young (the two sides dialed each other at once): the connection dialed
//!   by the smaller key wins, and if the same side dialed both, the newer wins.
//!
//! A restarted node's endpoint answers packets of its previous life's connections with a QUIC
//! stateless reset, because its reset key is derived from its node key ([`tls::endpoint_config`]); with
//! keep-alives at most [`KEEP_ALIVE_INTERVAL_MAX`] apart, a peer learns within about a second
//! that the connection it holds to a restarted node is dead, even when the restarted node cannot
//! dial it.
//!
//! Authentication is mutual TLS 1.3 with raw public keys (see [`crate::tls`]): the server admits
//! only genesis members, the client accepts only the key of the peer it meant to reach.
//!
//! # Framing
//!
//! On each connection the dialer opens exactly one bidirectional QUIC stream, and all traffic
//! goes over it. Both directions carry a sequence of frames:
//!
//! ```text
//! frame = length: u32, little-endian ‖ payload: `length` bytes
//! ```
//!
//! `length` is at most `cairn_protocol::limits::MESSAGE_BYTES_MAX` (1 MiB); a larger length
//! prefix is a protocol violation, and the receiver closes the connection with
//! [`CloseCode::ProtocolViolation`]. A stream that ends (FIN or reset) ends the connection.
//!
//! The first frame in each direction is the **hello**, 38 bytes of payload:
//!
//! ```text
//! hello = "CAIRN3" (6 ASCII bytes: 43 41 49 52 4e 33) ‖ cluster_id (32 bytes)
//! on the wire: 26 00 00 00 ‖ 43 41 49 52 4e 33 ‖ cluster_id
//! ```
//!
//! The dialer sends its hello first; the acceptor checks it and only then answers with its
//! own. A hello frame of another length or whose first five bytes are not `CAIRN` closes the
//! connection with [`CloseCode::BadHello`] ("bad hello"); another protocol version byte with
//! [`CloseCode::VersionMismatch`]; a different cluster id closes it with
//! [`CloseCode::ClusterMismatch`] ("cluster id mismatch"). Nothing else is accepted before the
//! hello. A TLS 1.3 client finishes its handshake before the server has checked the client's
//! key, so the dialer counts the peer as connected only once it has received the acceptor's
//! hello. The QUIC handshake and the hello exchange together must finish within
//! `handshake_timeout`.
//!
//! Every later frame carries one reconciliation message (`cairn_protocol`'s codec); an empty
//! payload is a valid frame, whose meaning is the protocol's business.
//!
//! # Close codes
//!
//! QUIC application error codes, with a short ASCII reason: see [`CloseCode`].
//!
//! | code | name | meaning |
//! |---|---|---|
//! | 0 | `Shutdown` | the node is shutting down |
//! | 1 | `ProtocolViolation` | oversize frame, or the stream ended or was misused |
//! | 2 | `BadHello` | the first frame is not a hello |
//! | 3 | `ClusterMismatch` | the hello names another cluster |
//! | 4 | `Replaced` | another connection between the same pair replaced this one |
//! | 5 | `Refused` | the peer's key is refused (a proven equivocator) |
//! | 6 | `WrongDirection` | retired: sent by earlier versions, where only the smaller key dialed |
//! | 7 | `HandshakeTimeout` | the QUIC handshake and hello took longer than the timeout |
//! | 8 | `Removed` | the peer's key is out of force: a membership change removed its seat or rotated it away |
//! | 9 | `VersionMismatch` | the peer's hello names another protocol version (the reason names ours) |
//! | 10 | `Rotated` | the dialer's overlay no longer chose the peer: it closes the connection it dialed |
//! | 11 | `Busy` | the acceptor holds `inbound_max` connections from peers it did not choose (a failed dial) |
//!
//! # Limits
//!
//! A peer may open one bidirectional stream towards the acceptor and none towards the dialer,
//! and no unidirectional streams or datagrams; each stream's receive window is
//! [`STREAM_RECEIVE_WINDOW_BYTES`]. So a peer that opens streams or starts frames without
//! finishing them holds at most one stream window and one partial frame per connection, and a
//! connection that does not finish its hello in time is closed. At most
//! [`HANDSHAKES_CONCURRENT_MAX`] incoming handshakes run at once; more are refused.
//!
//! # Events
//!
//! Events of one peer arrive in order: `Connected`, then its `Message`s in the order they were
//! sent, then `Disconnected`, then possibly `Connected` again. `VersionMismatch` comes from a
//! failed handshake and may arrive at any point between them. After [`Transport::shutdown`]
//! (or when the last handle is dropped) no more events are sent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use cairn_crypto::{PublicKey, SecretKey};
use cairn_protocol::limits::MESSAGE_BYTES_MAX;
use quinn::{Connection, ConnectionError, ReadExactError, RecvStream, SendStream, VarInt, WriteError};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::tls;

/// The magic bytes at the start of a hello: [`HELLO_PREFIX`], then this node's
/// [`PROTOCOL_VERSION`].
pub const HELLO_MAGIC: &[u8; 6] = b"CAIRN3";
/// The first five bytes of every version's hello.
pub const HELLO_PREFIX: &[u8; 5] = b"CAIRN";
/// The protocol version this node speaks: the hello's sixth byte (`'3'`, 0x33). A node whose
/// hello names another version is closed with [`CloseCode::VersionMismatch`]. Version 2 added
/// the ops with a causal context (op tags 8 to 11), which a node of version 1 rejects as
/// `malformed`; version 3 added the messages of the bounded broadcast and the address records
/// (message tags 9 to 12: `Have`, `Prune`, `Graft`, `Addrs`), which a node of version 2 counts
/// as `unknown_tag` and drops. Nodes of two versions would misread each other, so they do not
/// connect.
pub const PROTOCOL_VERSION: u8 = b'3';
const _: () = assert!(HELLO_MAGIC[5] == PROTOCOL_VERSION);

/// A protocol version byte as people read it: the digit for `'0'` to `'9'`, else hex.
pub fn version_name(version: u8) -> String {
    if version.is_ascii_digit() { (version as char).to_string() } else { format!("0x{version:02x}") }
}
/// Length of a hello's payload: the magic and the cluster id.
pub const HELLO_BYTES: usize = HELLO_MAGIC.len() + 32;
/// Length of a frame's length prefix.
pub const FRAME_LENGTH_BYTES: usize = 4;
/// The per-stream (and per-connection) QUIC receive window: two full frames, so a sender is
/// never stalled waiting for a window update in the middle of one frame.
pub const STREAM_RECEIVE_WINDOW_BYTES: u32 = 2 * (FRAME_LENGTH_BYTES + MESSAGE_BYTES_MAX) as u32;
/// A connection that lived longer than this resets the dialer's backoff.
pub const CONNECTION_STABLE: Duration = Duration::from_secs(10);
/// How long the node with the larger key waits before dialing a peer it holds no connection
/// with: long enough for the smaller key's dial to arrive first when both start at once (one
/// handshake instead of two), short enough not to matter when the larger key restarted.
pub const DIAL_DEFER: Duration = Duration::from_millis(150);
/// Added to `handshake_timeout` to make the duplicate window of [`newcomer_wins`]: covers the
/// round trips by which the two sides' clocks of "established" differ.
pub const DUPLICATE_WINDOW_SLACK: Duration = Duration::from_secs(1);
/// The longest quiet time before a keep-alive (QUIC PING) goes out on a connection; at most a
/// third of `idle_timeout`. It bounds how long a connection to a restarted peer that cannot dial
/// us stays undetected: the restarted endpoint answers the keep-alive with a stateless reset.
pub const KEEP_ALIVE_INTERVAL_MAX: Duration = Duration::from_secs(1);
/// Incoming handshakes running at once; enough for every member of a large cluster to
/// reconnect at the same moment, small enough that a flood of handshakes costs bounded memory.
pub const HANDSHAKES_CONCURRENT_MAX: usize = 64;
/// Distinct (peer, reason) pairs whose handshake failures are counted for logging; past this,
/// new pairs are logged at debug level only, so that garbage from many addresses cannot grow
/// the table.
const WARNINGS_TRACKED_MAX: usize = 1024;
/// How long [`Transport::shutdown`] waits for tasks and for the endpoint to drain.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);
/// The longest [`Transport::shutdown`] waits for queued frames to leave.
pub const LINGER_MAX: Duration = Duration::from_secs(1);
/// The shortest wait after the queues are empty, for the last frames to be delivered.
pub const LINGER_MIN: Duration = Duration::from_millis(50);
/// How often the linger looks at the queues.
const LINGER_POLL: Duration = Duration::from_millis(5);
/// Peer-supplied close reasons are cut to this many characters in logs and events: room for
/// the longest reason Cairn sends (a key refusal, see [`tls::KeyRefusal`]).
const PEER_REASON_CHARS_MAX: usize = 400;

const _: () = assert!(MESSAGE_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(HELLO_BYTES <= MESSAGE_BYTES_MAX);
const _: () = assert!(STREAM_RECEIVE_WINDOW_BYTES as usize >= FRAME_LENGTH_BYTES + MESSAGE_BYTES_MAX);

/// Default of [`TransportConfig::inbound_bytes_per_sec`]: 32 MiB/s, three times what an
/// honest catch-up sends on two cores, well under what a flood of replays would push.
pub const INBOUND_BYTES_PER_SEC_DEFAULT: u64 = 32 * 1024 * 1024;
/// Default of [`TransportConfig::peer_queue_messages_max`].
pub const PEER_QUEUE_MESSAGES_DEFAULT: usize = 64;
/// Default of [`TransportConfig::reconnect_backoff_min`].
pub const RECONNECT_BACKOFF_MIN_DEFAULT: Duration = Duration::from_millis(200);
/// Default of [`TransportConfig::reconnect_backoff_max`].
pub const RECONNECT_BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(10);
/// Default of [`TransportConfig::handshake_timeout`].
pub const HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Default of [`TransportConfig::idle_timeout`].
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// The QUIC application error codes with which Cairn closes connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseCode {
    /// The node is shutting down.
    Shutdown = 0,
    /// The peer sent an oversize frame, or ended or misused the stream.
    ProtocolViolation = 1,
    /// The peer's first frame is not a hello.
    BadHello = 2,
    /// The peer's hello names another cluster.
    ClusterMismatch = 3,
    /// Another connection between the same pair replaced this one (see [`newcomer_wins`]).
    Replaced = 4,
    /// The peer's key is refused (a proven equivocator).
    Refused = 5,
    /// Retired: earlier versions, where only the smaller key dialed, closed a connection dialed
    /// by the larger key with it. This version never sends it.
    WrongDirection = 6,
    /// The QUIC handshake and the hello exchange took longer than the handshake timeout.
    HandshakeTimeout = 7,
    /// The peer's key is out of force: a membership change in force on the closing node
    /// removed its seat, or its seat rotated to another key (`docs/PROTOCOL.md` §17).
    Removed = 8,
    /// The peer's hello names another protocol version; the reason names the closing node's.
    VersionMismatch = 9,
    /// The dialer's overlay no longer chose the peer (a rotation, or a membership change): it
    /// closes the connection it dialed. The peer may dial back if it chose this node.
    Rotated = 10,
    /// The acceptor already holds its cap of inbound connections from peers it did not choose
    /// (`inbound_max`): sent before the acceptor's hello, so the dialer sees a failed dial.
    Busy = 11,
}

impl CloseCode {
    /// The code on the wire.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The close code with this wire code, if it is one of ours.
    pub fn from_code(code: u64) -> Option<Self> {
        [
            Self::Shutdown,
            Self::ProtocolViolation,
            Self::BadHello,
            Self::ClusterMismatch,
            Self::Replaced,
            Self::Refused,
            Self::WrongDirection,
            Self::HandshakeTimeout,
            Self::Removed,
            Self::VersionMismatch,
            Self::Rotated,
            Self::Busy,
        ]
        .into_iter()
        .find(|close| u64::from(close.code()) == code)
    }

    /// The reason sent with the code, and used in [`TransportEvent::Disconnected`].
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Shutdown => "shutting down",
            Self::ProtocolViolation => "protocol violation",
            Self::BadHello => "bad hello",
            Self::ClusterMismatch => "cluster id mismatch",
            Self::Replaced => "replaced by another connection between the same peers",
            Self::Refused => "refused",
            Self::WrongDirection => "wrong direction (retired close code)",
            Self::HandshakeTimeout => "handshake timed out",
            Self::Removed => "removed from the membership (its seat was removed, or rotated to another key)",
            Self::VersionMismatch => "protocol version mismatch",
            Self::Rotated => "rotated out of the dialer's overlay",
            Self::Busy => "busy: too many inbound connections",
        }
    }

    fn var_int(self) -> VarInt {
        VarInt::from_u32(self.code())
    }
}

/// The hello payload of a node of cluster `cluster_id` (without its length prefix).
pub fn hello(cluster_id: &[u8; 32]) -> [u8; HELLO_BYTES] {
    hello_of_version(cluster_id, PROTOCOL_VERSION)
}

/// The hello of a node that speaks `version`.
pub fn hello_of_version(cluster_id: &[u8; 32], version: u8) -> [u8; HELLO_BYTES] {
    let mut bytes = [0u8; HELLO_BYTES];
    bytes[..HELLO_PREFIX.len()].copy_from_slice(HELLO_PREFIX);
    bytes[HELLO_PREFIX.len()] = version;
    bytes[HELLO_MAGIC.len()..].copy_from_slice(cluster_id);
    bytes
}

/// The close reason of a version mismatch, which names the closing node's version so that the
/// other side can say both.
fn version_mismatch_reason(ours: u8) -> String {
    format!("{}: the closing node speaks {}", CloseCode::VersionMismatch.reason(), version_name(ours))
}

/// The version a [`version_mismatch_reason`] names.
fn version_in_reason(reason: &[u8]) -> Option<u8> {
    let text = std::str::from_utf8(reason).ok()?;
    let named = text.rsplit_once("speaks ")?.1;
    match named.as_bytes() {
        [digit] if digit.is_ascii_digit() => Some(*digit),
        _ => u8::from_str_radix(named.strip_prefix("0x")?, 16).ok(),
    }
}

/// The transport's settings.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// The UDP address to listen on (port 0 picks one; see [`Transport::local_addr`]).
    pub listen: SocketAddr,
    /// Members we dial, with their addresses (from the node configuration); our own entry, if
    /// present, is ignored. Members without an address are reached when they dial us.
    pub peers: Vec<(PublicKey, SocketAddr)>,
    /// The genesis members; the server admits these, except our own key.
    pub members: Vec<PublicKey>,
    /// The cluster id, exchanged in the hello.
    pub cluster_id: [u8; 32],
    /// Capacity of each peer's send queue, in messages.
    pub peer_queue_messages_max: usize,
    /// Bytes per second of messages one connection may deliver; past it the connection stops
    /// reading for a while and QUIC's flow control holds the peer back.
    pub inbound_bytes_per_sec: u64,
    /// The first reconnection delay.
    pub reconnect_backoff_min: Duration,
    /// The delay doubles after each failed attempt up to this.
    pub reconnect_backoff_max: Duration,
    /// The QUIC handshake plus the hello exchange must finish within this.
    pub handshake_timeout: Duration,
    /// A connection with no traffic for this long is dead (QUIC `max_idle_timeout`); keep-alives
    /// go out after a third of it, or [`KEEP_ALIVE_INTERVAL_MAX`] if that is shorter.
    pub idle_timeout: Duration,
    /// The protocol version the hello names: [`PROTOCOL_VERSION`]. Another value only in tests
    /// of the version check.
    pub protocol_version: u8,
    /// Whether every peer of `peers` is wanted (dialed) from the start, until
    /// [`Transport::set_outbound`] says otherwise. The daemon starts with none wanted and lets
    /// its overlay choose; tests of the transport alone dial what they configure.
    pub dial_peers: bool,
    /// Inbound connections accepted from peers this node does not want itself (see
    /// [`Transport::set_outbound`]); more are closed with [`CloseCode::Busy`].
    pub inbound_max: usize,
}

impl TransportConfig {
    /// A configuration with the default limits and timeouts.
    pub fn new(
        listen: SocketAddr,
        cluster_id: [u8; 32],
        members: Vec<PublicKey>,
        peers: Vec<(PublicKey, SocketAddr)>,
    ) -> Self {
        Self {
            listen,
            peers,
            members,
            cluster_id,
            peer_queue_messages_max: PEER_QUEUE_MESSAGES_DEFAULT,
            inbound_bytes_per_sec: INBOUND_BYTES_PER_SEC_DEFAULT,
            reconnect_backoff_min: RECONNECT_BACKOFF_MIN_DEFAULT,
            reconnect_backoff_max: RECONNECT_BACKOFF_MAX_DEFAULT,
            handshake_timeout: HANDSHAKE_TIMEOUT_DEFAULT,
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
            protocol_version: PROTOCOL_VERSION,
            dial_peers: true,
            inbound_max: usize::MAX,
        }
    }
}

/// What happens on the transport, for the sync service.
#[derive(Debug, PartialEq, Eq)]
pub enum TransportEvent {
    /// A connection to `peer` is up, and both hellos have been exchanged.
    Connected {
        /// The peer's key, proven in the TLS handshake.
        peer: PublicKey,
        /// The peer's UDP address.
        address: SocketAddr,
    },
    /// The connection to `peer` is gone; messages still queued to it are dropped.
    Disconnected {
        /// The peer's key.
        peer: PublicKey,
        /// Why, for logs and the API.
        reason: String,
        /// The peer closed it with [`CloseCode::Removed`]: our key is out of force there (after
        /// a key rotation, the peer holds it).
        removed_by_peer: bool,
    },
    /// A handshake with `peer` failed because the two speak different protocol versions.
    VersionMismatch {
        /// The peer's key.
        peer: PublicKey,
        /// The version this node speaks.
        ours: u8,
        /// The version the peer speaks, if it said.
        theirs: Option<u8>,
    },
    /// One frame from `peer`: a reconciliation message, not yet decoded.
    Message {
        /// The peer's key.
        peer: PublicKey,
        /// The frame's payload, at most `MESSAGE_BYTES_MAX` bytes.
        bytes: Vec<u8>,
        /// The message's share of the connection's inbound budget; dropping it (once the
        /// message is handled) lets the connection read on.
        credit: InboundCredit,
    },
}

/// Bytes of one connection's messages delivered but not yet handled. Past it the connection
/// stops reading, and QUIC's flow control holds the peer back: a peer can never run far ahead
/// of what this node has handled (nor make it buffer more than this per connection).
pub const INBOUND_BYTES_PER_CONNECTION_MAX: usize = 2 * MESSAGE_BYTES_MAX;
const _: () = assert!(INBOUND_BYTES_PER_CONNECTION_MAX >= MESSAGE_BYTES_MAX);
const _: () = assert!(INBOUND_BYTES_PER_CONNECTION_MAX <= tokio::sync::Semaphore::MAX_PERMITS);

/// A delivered message's bytes, held against its connection's inbound budget until dropped.
#[derive(Debug)]
pub struct InboundCredit(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

/// Credit is not part of what a message says: any two are equal.
impl PartialEq for InboundCredit {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for InboundCredit {}

/// A message could not be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No connection to the peer is up.
    #[error("the peer is not connected")]
    NotConnected,
    /// The peer's send queue is full; the peer falls back to reconciliation.
    #[error("the peer's send queue is full")]
    Full,
}

/// Counts of what happened on the transport since it started, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportCounters {
    /// Connections that completed the hello exchange, in either direction.
    pub n_connections_established: u64,
    /// Incoming connections that failed before the hello exchange completed (TLS rejection,
    /// bad hello, cluster id mismatch, timeout).
    pub n_incoming_handshakes_failed: u64,
    /// Dial attempts that failed before the hello exchange completed.
    pub n_outgoing_handshakes_failed: u64,
    /// Connections closed because the peer broke the framing rules.
    pub n_protocol_violations: u64,
    /// Handshakes that failed because the peer speaks another protocol version.
    pub n_version_mismatches: u64,
    /// Dials the acceptor refused as busy ([`CloseCode::Busy`]); counted in
    /// `n_outgoing_handshakes_failed` too.
    pub n_dials_busy: u64,
    /// Incoming connections this node refused as busy (past `inbound_max`); counted in
    /// `n_incoming_handshakes_failed` too.
    pub n_inbound_busy: u64,
}

#[derive(Default)]
struct Counters {
    n_connections_established: AtomicU64,
    n_incoming_handshakes_failed: AtomicU64,
    n_outgoing_handshakes_failed: AtomicU64,
    n_protocol_violations: AtomicU64,
    n_version_mismatches: AtomicU64,
    n_dials_busy: AtomicU64,
    n_inbound_busy: AtomicU64,
}

/// A handle to the running transport; clones share it. The transport stops when
/// [`Transport::shutdown`] is called or the last handle is dropped.
#[derive(Clone)]
pub struct Transport {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("own", &self.shared.own())
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

/// Stops the transport when the last [`Transport`] handle goes; the tasks hold only [`Shared`].
struct Owner {
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

/// The state the handles and the tasks share.
struct Shared {
    cluster_id: [u8; 32],
    protocol_version: u8,
    peer_queue_messages_max: usize,
    inbound_bytes_per_sec: u64,
    reconnect_backoff_min: Duration,
    reconnect_backoff_max: Duration,
    handshake_timeout: Duration,
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    /// The TLS identity of new handshakes, and the key it is of (which a key rotation
    /// changes, see [`Transport::set_identity`]).
    identity: RwLock<(tls::Identity, PublicKey)>,
    /// During a key rotation, the other key's identity: dials that the first refuses try it.
    alternate: RwLock<Option<tls::Identity>>,
    server_transport: Arc<quinn::TransportConfig>,
    members: tls::MemberKeys,
    client_transport: Arc<quinn::TransportConfig>,
    events: mpsc::Sender<TransportEvent>,
    /// The peers we may have a connection with: every key that was in force here but us. It
    /// grows as membership changes bring keys in ([`Transport::admit`]); a key taken out of
    /// force keeps its entry, its tasks stopped.
    peers: Mutex<BTreeMap<PublicKey, PeerControl>>,
    /// Every address we know, including those of keys not (yet) in force: a key that a
    /// membership change brings in is dialed at its address from then on. A dial reads it
    /// afresh, so a learned address applies from the next dial on.
    addresses: Mutex<BTreeMap<PublicKey, SocketAddr>>,
    /// The peers this node wants connected (dials, and accepts beyond the inbound cap). Lock
    /// order: `peers`, then `wanted`, then `inbound_reserved`, then `links`.
    wanted: Mutex<BTreeSet<PublicKey>>,
    /// Whether `admit` makes a key with an address wanted (see [`TransportConfig::dial_peers`]).
    dial_peers: bool,
    /// See [`TransportConfig::inbound_max`].
    inbound_max: usize,
    /// Inbound connections admitted under the cap whose peer task has not served them yet,
    /// with when: they hold their slot until served (or for a duplicate window at most), so
    /// that handshakes that run at once cannot all pass the cap.
    inbound_reserved: Mutex<BTreeMap<PublicKey, Instant>>,
    /// The span the peers' tasks run in.
    span: tracing::Span,
    /// The connections that are up.
    links: Mutex<BTreeMap<PublicKey, Link>>,
    shutdown: watch::Sender<bool>,
    warnings: Mutex<BTreeMap<(String, Trouble, String), u64>>,
    counters: Counters,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A connection that is up: what `send`, `has_room` and `rtt` need.
struct Link {
    connection: Connection,
    queue: mpsc::Sender<Vec<u8>>,
    dialed_by: DialedBy,
}

/// How to reach a peer's tasks.
struct PeerControl {
    /// Set when the peer is refused for good: the code its connection is closed with.
    refused: watch::Sender<Option<CloseCode>>,
    /// Where established connections with this peer, incoming or dialed, go to its task.
    handoff: Arc<Handoff>,
    /// Whether the peer is wanted: its dialer dials only while this is true.
    wanted: watch::Sender<bool>,
}

/// A connection whose hellos have been exchanged, with its one stream.
struct Established {
    connection: Connection,
    send: SendStream,
    recv: RecvStream,
}

/// Which side of a connection dialed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DialedBy {
    Us,
    Peer,
}

/// An established connection offered to a peer's task: it becomes the peer's connection, or
/// loses to the one held (see [`newcomer_wins`]).
struct Candidate {
    established: Established,
    dialed_by: DialedBy,
}

/// Whether a newly established connection with a peer replaces the one held, decided by the
/// same rule on both sides so that they keep the same one: a held connection older than
/// `window` loses (an honest peer dials only when it holds no connection with us, so it has
/// lost that one); between two young connections, the one dialed by the smaller key wins, and
/// if one side dialed both, the newer.
pub fn newcomer_wins(
    own: &PublicKey,
    peer: &PublicKey,
    held_dialed_by_us: bool,
    held_age: Duration,
    newcomer_dialed_by_us: bool,
    window: Duration,
) -> bool {
    if held_age > window || held_dialed_by_us == newcomer_dialed_by_us {
        return true;
    }
    let newcomer_dialer = if newcomer_dialed_by_us { own } else { peer };
    let held_dialer = if held_dialed_by_us { own } else { peer };
    newcomer_dialer < held_dialer
}

/// A one-place mailbox of established connections for a peer's task, from the accept loop and
/// from the dialer. Between two waiting candidates the same rule as for a held connection
/// picks one (both are young), and the other is closed as replaced; so the mailbox holds at
/// most one connection, and the accept loop never waits on a peer's task.
struct Handoff {
    peer: PublicKey,
    state: Mutex<HandoffState>,
    notify: Notify,
}

#[derive(Default)]
struct HandoffState {
    pending: Option<Candidate>,
    /// The peer's task has ended (refused): connections are closed instead of queued.
    closed: bool,
}

impl Handoff {
    fn new(peer: PublicKey) -> Self {
        Self { peer, state: Mutex::default(), notify: Notify::new() }
    }

    /// Offers `candidate`; `own` is this node's key now (a key rotation changes it).
    fn put(&self, own: &PublicKey, candidate: Candidate) {
        let mut state = lock(&self.state);
        if state.closed {
            close_with(&candidate.established.connection, CloseCode::Refused);
            return;
        }
        let loser = match state.pending.take() {
            None => {
                state.pending = Some(candidate);
                None
            }
            Some(waiting) => {
                let us = |c: &Candidate| c.dialed_by == DialedBy::Us;
                if newcomer_wins(own, &self.peer, us(&waiting), Duration::ZERO, us(&candidate), Duration::MAX)
                {
                    state.pending = Some(candidate);
                    Some(waiting)
                } else {
                    state.pending = Some(waiting);
                    Some(candidate)
                }
            }
        };
        drop(state);
        if let Some(loser) = loser {
            close_with(&loser.established.connection, CloseCode::Replaced);
        }
        self.notify.notify_one();
    }

    /// The next candidate. Cancel-safe: a candidate stays in the mailbox until taken.
    async fn take(&self) -> Candidate {
        loop {
            if let Some(candidate) = lock(&self.state).pending.take() {
                return candidate;
            }
            self.notify.notified().await;
        }
    }

    fn close(&self, code: CloseCode) {
        let mut state = lock(&self.state);
        state.closed = true;
        if let Some(pending) = state.pending.take() {
            close_with(&pending.established.connection, code);
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked: every critical section
/// here (and in [`crate::backup::BackupSlot`]) is a single insert, remove, lookup or replace.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The QUIC server configuration: `identity`, admitting `members`.
fn server_config(
    identity: &tls::Identity,
    members: &tls::MemberKeys,
    transport: &Arc<quinn::TransportConfig>,
) -> quinn::ServerConfig {
    let mut server = tls::server_config(identity, members);
    server.transport_config(transport.clone());
    // No 0-RTT, so an incoming connection attempt needs little buffering before we decide.
    server
        .max_incoming(4 * HANDSHAKES_CONCURRENT_MAX)
        .incoming_buffer_size(64 * 1024)
        .incoming_buffer_size_total(4 * 1024 * 1024);
    server
}

/// Why a peer's task stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stopped {
    Shutdown,
    /// Refused, closed with this code.
    Refused(CloseCode),
}

/// Waits for shutdown or for the refusal of one peer.
struct StopSignal {
    shutdown: watch::Receiver<bool>,
    refused: watch::Receiver<Option<CloseCode>>,
}

impl StopSignal {
    async fn wait(&mut self) -> Stopped {
        // The senders live in `Shared`, which outlives every task; an error would mean it is
        // gone, which is a shutdown too.
        tokio::select! {
            _ = self.shutdown.wait_for(|stop| *stop) => Stopped::Shutdown,
            code = self.refused.wait_for(Option::is_some) => {
                Stopped::Refused(code.ok().and_then(|code| *code).unwrap_or(CloseCode::Refused))
            }
        }
    }
}

/// Why a connection ended or a handshake failed: a reason for events and logs, and the close
/// code to send, if the connection is still open.
#[derive(Debug)]
struct Failure {
    reason: String,
    close: Option<CloseCode>,
    /// The protocol version the peer speaks, when it is not ours.
    peer_version: Option<u8>,
}

impl Failure {
    fn closing(code: CloseCode, reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), close: Some(code), peer_version: None }
    }

    fn lost(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), close: None, peer_version: None }
    }
}

impl From<ConnectionError> for Failure {
    fn from(error: ConnectionError) -> Self {
        Self::lost(describe_connection_error(&error))
    }
}

impl From<ReadExactError> for Failure {
    fn from(error: ReadExactError) -> Self {
        match error {
            ReadExactError::FinishedEarly(_) => {
                Self::closing(CloseCode::ProtocolViolation, "the peer finished its stream")
            }
            ReadExactError::ReadError(quinn::ReadError::ConnectionLost(error)) => error.into(),
            ReadExactError::ReadError(quinn::ReadError::Reset(code)) => Self::closing(
                CloseCode::ProtocolViolation,
                format!("the peer reset its stream (code {code})"),
            ),
            ReadExactError::ReadError(error) => {
                Self::closing(CloseCode::ProtocolViolation, error.to_string())
            }
        }
    }
}

impl From<WriteError> for Failure {
    fn from(error: WriteError) -> Self {
        match error {
            WriteError::ConnectionLost(error) => error.into(),
            WriteError::Stopped(code) => {
                Self::closing(CloseCode::ProtocolViolation, format!("the peer stopped reading (code {code})"))
            }
            error => Self::closing(CloseCode::ProtocolViolation, error.to_string()),
        }
    }
}

/// A connection error in words; a peer's close reason is sanitized and cut short.
fn describe_connection_error(error: &ConnectionError) -> String {
    match error {
        ConnectionError::ApplicationClosed(close) => {
            let reason: String =
                String::from_utf8_lossy(&close.reason).escape_debug().take(PEER_REASON_CHARS_MAX).collect();
            format!("closed by peer: {reason} (code {})", close.error_code)
        }
        ConnectionError::ConnectionClosed(close) => {
            // A transport-level close (a TLS refusal among them) carries the peer's words too.
            let reason: String =
                String::from_utf8_lossy(&close.reason).escape_debug().take(PEER_REASON_CHARS_MAX).collect();
            format!("closed by peer: {reason} (transport error {})", close.error_code)
        }
        ConnectionError::TransportError(error) => {
            let reason: String = error.reason.escape_debug().take(PEER_REASON_CHARS_MAX).collect();
            format!("{reason} (transport error {})", error.code)
        }
        ConnectionError::TimedOut => "idle timeout".to_owned(),
        ConnectionError::LocallyClosed => "closed locally".to_owned(),
        error => error.to_string(),
    }
}

impl Transport {
    /// Binds the endpoint on `config.listen` and starts dialing and accepting. Events go to
    /// `events`; when it is full, reading from peers waits (backpressure onto QUIC flow control).
    ///
    /// Fails if the configuration is inconsistent (a peer address for a non-member, a zero
    /// queue or timeout) or the address cannot be bound.
    pub async fn start(
        key: &SecretKey,
        config: TransportConfig,
        events: mpsc::Sender<TransportEvent>,
    ) -> anyhow::Result<Self> {
        let own = key.public();
        ensure!(config.peer_queue_messages_max > 0, "peer_queue_messages_max must be at least 1");
        ensure!(config.inbound_bytes_per_sec > 0, "inbound_bytes_per_sec must be at least 1");
        ensure!(
            !config.reconnect_backoff_min.is_zero()
                && config.reconnect_backoff_min <= config.reconnect_backoff_max,
            "the reconnect backoff needs 0 < min ({:?}) <= max ({:?})",
            config.reconnect_backoff_min,
            config.reconnect_backoff_max
        );
        ensure!(!config.handshake_timeout.is_zero(), "handshake_timeout must be positive");
        ensure!(!config.idle_timeout.is_zero(), "idle_timeout must be positive");

        ensure!(config.inbound_max > 0, "inbound_max must be at least 1");
        let mut addresses = BTreeMap::new();
        for (peer, address) in &config.peers {
            if *peer == own {
                continue;
            }
            if addresses.insert(*peer, *address).is_some() {
                bail!("peer {peer} is listed twice; give each peer one address");
            }
        }

        let identity = tls::Identity::new(key);
        let members = tls::MemberKeys::new(&config.members, &own);
        let server_transport = Arc::new(quic_transport(&config, Side::Acceptor)?);
        let server = server_config(&identity, &members, &server_transport);
        let client_transport = Arc::new(quic_transport(&config, Side::Dialer)?);
        let socket = std::net::UdpSocket::bind(config.listen)
            .with_context(|| format!("cannot listen on UDP {}", config.listen))?;
        let runtime = quinn::default_runtime().context("no async runtime for the QUIC endpoint")?;
        let endpoint = quinn::Endpoint::new(tls::endpoint_config(key), Some(server), socket, runtime)
            .with_context(|| format!("cannot start the QUIC endpoint on UDP {}", config.listen))?;
        let local_addr = endpoint.local_addr().context("the endpoint has no local address")?;

        let node_span = info_span!("transport", node = %own.short(), address = %local_addr);
        let shared = Arc::new(Shared {
            cluster_id: config.cluster_id,
            protocol_version: config.protocol_version,
            peer_queue_messages_max: config.peer_queue_messages_max,
            inbound_bytes_per_sec: config.inbound_bytes_per_sec,
            reconnect_backoff_min: config.reconnect_backoff_min,
            reconnect_backoff_max: config.reconnect_backoff_max,
            handshake_timeout: config.handshake_timeout,
            endpoint,
            local_addr,
            identity: RwLock::new((identity, own)),
            alternate: RwLock::default(),
            server_transport,
            members,
            client_transport,
            events,
            peers: Mutex::default(),
            wanted: Mutex::new(if config.dial_peers {
                addresses.keys().copied().collect()
            } else {
                BTreeSet::new()
            }),
            addresses: Mutex::new(addresses),
            dial_peers: config.dial_peers,
            inbound_max: config.inbound_max,
            inbound_reserved: Mutex::default(),
            span: node_span.clone(),
            links: Mutex::default(),
            shutdown: watch::channel(false).0,
            warnings: Mutex::default(),
            counters: Counters::default(),
            tasks: Mutex::default(),
        });

        let transport = Self { _owner: Arc::new(Owner { shared: shared.clone() }), shared };
        for peer in config.members.iter().filter(|peer| **peer != own) {
            transport.start_peer(*peer);
        }
        let accept = tokio::spawn(accept_loop(transport.shared.clone()).instrument(node_span.clone()));
        lock(&transport.shared.tasks).push(accept);
        info!(parent: &node_span, "transport listening");
        Ok(transport)
    }

    /// Starts the tasks of `peer`, a key in force that has none yet: its connection's task,
    /// and its dialer (which dials while the peer is wanted). Returns whether it started them.
    fn start_peer(&self, peer: PublicKey) -> bool {
        let shared = &self.shared;
        let mut peers = lock(&shared.peers);
        if peer == shared.own() || peers.contains_key(&peer) {
            return false;
        }
        // Read under `peers`: `Transport::set_outbound` updates `wanted` before it tells each
        // peer in `peers`, so either this reads its update or it finds this peer and tells it.
        let is_wanted = lock(&shared.wanted).contains(&peer);
        let (refused, refused_receiver) = watch::channel(None);
        let (wanted, wanted_receiver) = watch::channel(is_wanted);
        let handoff = Arc::new(Handoff::new(peer));
        peers.insert(peer, PeerControl { refused, handoff: handoff.clone(), wanted });
        drop(peers);
        let span = info_span!(parent: &shared.span, "peer", peer = %peer.short());
        let (link, link_receiver) = watch::channel(false);
        let mut tasks = Vec::new();
        let stop = StopSignal { shutdown: shared.shutdown.subscribe(), refused: refused_receiver.clone() };
        let dialer = dial_loop(shared.clone(), peer, handoff.clone(), link_receiver, wanted_receiver, stop);
        tasks.push(tokio::spawn(dialer.instrument(span.clone())));
        let stop = StopSignal { shutdown: shared.shutdown.subscribe(), refused: refused_receiver };
        tasks.push(tokio::spawn(run_peer(shared.clone(), peer, handoff, link, stop).instrument(span)));
        lock(&shared.tasks).extend(tasks);
        true
    }

    /// Admits `peer` from now on: a key a membership change in force brought in (an added
    /// seat's, or a rotated seat's new key). Its handshakes are accepted, and `address` (a
    /// rotated seat's founder's) is recorded as its address unless one is known already. It is
    /// dialed there only while wanted: once [`Transport::set_outbound`] names it, or at once
    /// with [`TransportConfig::dial_peers`] if an address is known. A key refused for good
    /// stays refused. Returns whether the key was new here.
    pub fn admit(&self, peer: PublicKey, address: Option<SocketAddr>) -> bool {
        if !self.shared.members.may_allow(&peer) {
            return false;
        }
        let has_address = {
            let mut addresses = lock(&self.shared.addresses);
            if let Some(address) = address {
                addresses.entry(peer).or_insert(address);
            }
            addresses.contains_key(&peer)
        };
        if self.shared.dial_peers && has_address {
            lock(&self.shared.wanted).insert(peer);
        }
        // The peer's task first, so that a handshake the server admits finds it.
        let started = self.start_peer(peer);
        self.shared.members.allow(&peer);
        if started {
            info!(parent: &self.shared.span, peer = %peer.short(), "a membership change brought this key in: admitted");
        }
        started
    }

    /// Presents `key` in every handshake from now on, as a server and as a client: this node's
    /// key rotated to it (`docs/PROTOCOL.md` §17). Connections already up keep the old key's
    /// identity until they end (the peers close them once the rotation is in force there, and
    /// dial the new key).
    pub fn set_identity(&self, key: &SecretKey) {
        let identity = tls::Identity::new(key);
        let server = server_config(&identity, &self.shared.members, &self.shared.server_transport);
        self.shared.endpoint.set_server_config(Some(server));
        let old = std::mem::replace(
            &mut *self.shared.identity.write().unwrap_or_else(PoisonError::into_inner),
            (identity, key.public()),
        );
        // Peers that do not hold the rotation yet still admit only the old key.
        *self.shared.alternate.write().unwrap_or_else(PoisonError::into_inner) = Some(old.0);
        info!(parent: &self.shared.span, key = %key.public(), "handshakes present the node's new key from now on");
    }

    /// Dials with `key`'s identity too when a peer refuses the current one: a key rotation is
    /// stored, and peers that hold it refuse the old key (see [`Transport::set_identity`]).
    pub fn add_alternate_identity(&self, key: &SecretKey) {
        *self.shared.alternate.write().unwrap_or_else(PoisonError::into_inner) =
            Some(tls::Identity::new(key));
    }

    /// Takes `peer` out of force for good: a membership change in force removed its seat or
    /// rotated it to another key. Its connection is closed with [`CloseCode::Removed`], it is
    /// never dialed again, and the server refuses its key (saying why) from now on.
    pub fn retire(&self, peer: &PublicKey) {
        self.shared.members.remove(peer);
        if let Some(control) = lock(&self.shared.peers).get(peer) {
            control.refused.send_replace(Some(CloseCode::Removed));
        }
    }

    /// The bound UDP address (useful when listening on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Dials `peer` at `address` from the next dial on (a configured address, or one from the
    /// member's signed record). Returns whether the address is new or changed.
    pub fn learn_address(&self, peer: PublicKey, address: SocketAddr) -> bool {
        lock(&self.shared.addresses).insert(peer, address) != Some(address)
    }

    /// The address `peer` is dialed at, if known.
    pub fn address_of(&self, peer: &PublicKey) -> Option<SocketAddr> {
        lock(&self.shared.addresses).get(peer).copied()
    }

    /// Makes `outbound` the peers this node wants connected: each is dialed whenever no
    /// connection with it is up (it needs a known address), and its inbound connections never
    /// count against `inbound_max`. A peer that leaves the set is no longer dialed, and a
    /// connection this node dialed to it is closed with [`CloseCode::Rotated`]; a connection
    /// the peer dialed stays (the peer wants it), counted as inbound from then on. Returns the
    /// peers whose connection was closed.
    pub fn set_outbound(&self, outbound: &BTreeSet<PublicKey>) -> Vec<PublicKey> {
        let left: Vec<PublicKey> = {
            let mut wanted = lock(&self.shared.wanted);
            let left = wanted.difference(outbound).copied().collect();
            wanted.clone_from(outbound);
            left
        };
        for (peer, control) in lock(&self.shared.peers).iter() {
            control.wanted.send_if_modified(|wanted| {
                let now = outbound.contains(peer);
                std::mem::replace(wanted, now) != now
            });
        }
        let mut closed = Vec::new();
        let links = lock(&self.shared.links);
        for peer in left {
            if let Some(link) = links.get(&peer)
                && link.dialed_by == DialedBy::Us
            {
                close_with(&link.connection, CloseCode::Rotated);
                closed.push(peer);
            }
        }
        closed
    }

    /// Queues `bytes` as one frame to `peer`, without waiting.
    ///
    /// # Panics
    ///
    /// If `bytes` is longer than `MESSAGE_BYTES_MAX`: the protocol never builds such a message.
    pub fn send(&self, peer: &PublicKey, bytes: Vec<u8>) -> Result<(), SendError> {
        assert!(
            bytes.len() <= MESSAGE_BYTES_MAX,
            "a message of {} bytes exceeds MESSAGE_BYTES_MAX ({MESSAGE_BYTES_MAX})",
            bytes.len()
        );
        let links = lock(&self.shared.links);
        let link = links.get(peer).ok_or(SendError::NotConnected)?;
        link.queue.try_send(bytes).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::NotConnected,
        })
    }

    /// Whether `peer` is connected and its send queue has room for at least one message.
    pub fn has_room(&self, peer: &PublicKey) -> bool {
        lock(&self.shared.links).get(peer).is_some_and(|link| link.queue.capacity() > 0)
    }

    /// Refuses `peer` for good (a proven equivocator): closes its connection now, never dials
    /// it again, and the server rejects its key from now on.
    pub fn refuse(&self, peer: &PublicKey) {
        self.refuse_for(peer, tls::KeyRefusal::Equivocator);
    }

    /// Refuses `peer` for good for `why` (a proven equivocator, or a double approver), as
    /// [`Transport::refuse`] does.
    pub fn refuse_for(&self, peer: &PublicKey, why: tls::KeyRefusal) {
        self.shared.members.refuse_for(peer, why);
        if let Some(control) = lock(&self.shared.peers).get(peer) {
            control.refused.send_replace(Some(CloseCode::Refused));
        }
    }

    /// Closes the current connection to `peer` as a protocol violation, without refusing it:
    /// it may connect again (the driver decides whether to listen to it). For a peer that
    /// keeps sending invalid data.
    pub fn disconnect(&self, peer: &PublicKey) {
        if let Some(link) = lock(&self.shared.links).get(peer) {
            let code = CloseCode::ProtocolViolation;
            link.connection.close(code.var_int(), b"too much invalid data");
        }
    }

    /// The smoothed round-trip time to `peer`, if connected.
    pub fn rtt(&self, peer: &PublicKey) -> Option<Duration> {
        lock(&self.shared.links).get(peer).map(|link| link.connection.rtt())
    }

    /// What happened since the start.
    pub fn counters(&self) -> TransportCounters {
        let counters = &self.shared.counters;
        TransportCounters {
            n_connections_established: counters.n_connections_established.load(Ordering::Relaxed),
            n_incoming_handshakes_failed: counters.n_incoming_handshakes_failed.load(Ordering::Relaxed),
            n_outgoing_handshakes_failed: counters.n_outgoing_handshakes_failed.load(Ordering::Relaxed),
            n_protocol_violations: counters.n_protocol_violations.load(Ordering::Relaxed),
            n_version_mismatches: counters.n_version_mismatches.load(Ordering::Relaxed),
            n_dials_busy: counters.n_dials_busy.load(Ordering::Relaxed),
            n_inbound_busy: counters.n_inbound_busy.load(Ordering::Relaxed),
        }
    }

    /// Lingers so queued frames can leave, closes every connection with
    /// [`CloseCode::Shutdown`], stops the tasks, and waits briefly for the endpoint to tell the
    /// peers. No events are sent after this returns.
    pub async fn shutdown(&self) {
        self.linger().await;
        self.shared.stop();
        let tasks = std::mem::take(&mut *lock(&self.shared.tasks));
        let joined = timeout(SHUTDOWN_WAIT, async {
            for task in tasks {
                // A task that panicked has nothing left to clean up; the panic was reported.
                let _ = task.await;
            }
        })
        .await;
        if joined.is_err() {
            warn!("transport tasks did not stop within {SHUTDOWN_WAIT:?}");
        }
        if timeout(SHUTDOWN_WAIT, self.shared.endpoint.wait_idle()).await.is_err() {
            debug!("the endpoint did not drain within {SHUTDOWN_WAIT:?}");
        }
    }
}

impl Transport {
    /// Waits, at most [`LINGER_MAX`], until every send queue is empty, then long enough for the
    /// last frames to reach the peers (two round trips, at least [`LINGER_MIN`]): closing the
    /// endpoint abandons stream data not yet delivered, so a write acknowledged just before
    /// SIGTERM would otherwise reach the peers only when this node comes back.
    async fn linger(&self) {
        let deadline = Instant::now() + LINGER_MAX;
        loop {
            let (queued, rtt) = {
                let links = lock(&self.shared.links);
                let queued = links.values().any(|l| l.queue.capacity() < l.queue.max_capacity());
                (queued, links.values().map(|l| l.connection.rtt()).max())
            };
            let Some(rtt) = rtt else { return };
            if !queued {
                let until = (Instant::now() + (2 * rtt).max(LINGER_MIN)).min(deadline);
                tokio::time::sleep_until(until).await;
                return;
            }
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(LINGER_POLL).await;
        }
    }
}

impl Shared {
    fn stop(&self) {
        self.shutdown.send_replace(true);
        self.endpoint.close(CloseCode::Shutdown.var_int(), CloseCode::Shutdown.reason().as_bytes());
    }

    fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Sends an event to the service, waiting for room; `false` if the transport is shutting
    /// down or the service is gone.
    async fn emit(&self, event: TransportEvent) -> bool {
        let mut shutdown = self.shutdown.subscribe();
        if *shutdown.borrow_and_update() {
            return false;
        }
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => false,
            sent = self.events.send(event) => sent.is_ok(),
        }
    }

    /// Logs peer trouble at warn the first time for this peer (or address), kind and reason,
    /// then again each time the count reaches a power of two; otherwise at debug. Protocol
    /// violations are counted per peer whatever the reason, whose numbers vary.
    fn log_trouble(&self, trouble: Trouble, who: &str, reason: &str) {
        let count = {
            let mut warnings = lock(&self.warnings);
            let reason_key = match trouble {
                Trouble::ProtocolViolation => "",
                Trouble::IncomingHandshake | Trouble::OutgoingHandshake => reason,
            };
            let key = (who.to_owned(), trouble, reason_key.to_owned());
            if let Some(count) = warnings.get_mut(&key) {
                *count += 1;
                *count
            } else if warnings.len() < WARNINGS_TRACKED_MAX {
                warnings.insert(key, 1);
                1
            } else {
                0
            }
        };
        if count.is_power_of_two() {
            warn!(peer = who, reason, count, "{}", trouble.as_str());
        } else {
            debug!(peer = who, reason, count, "{}", trouble.as_str());
        }
    }

    /// The QUIC client configurations for dialing `peer`, to try in order: the identity of now,
    /// then, during a key rotation, the other key's.
    fn client_configs(&self, peer: &PublicKey) -> Vec<quinn::ClientConfig> {
        let identity = self.identity.read().unwrap_or_else(PoisonError::into_inner);
        let alternate = self.alternate.read().unwrap_or_else(PoisonError::into_inner);
        std::iter::once(&identity.0)
            .chain(alternate.as_ref())
            .map(|identity| {
                let mut config = tls::client_config(identity, peer);
                config.transport_config(self.client_transport.clone());
                config
            })
            .collect()
    }

    /// Counts, logs (both versions named) and reports a hello that named another protocol
    /// version, if `failure` is one.
    ///
    /// Never waits: a handshake must not hang on a full event queue (the event is dropped then;
    /// the counter and the log still have it). The warning goes through `log_trouble` with the
    /// handshake's failure, rate-limited per peer.
    fn note_version_mismatch(&self, peer: &PublicKey, failure: &Failure) {
        if failure.close != Some(CloseCode::VersionMismatch) && failure.peer_version.is_none() {
            return;
        }
        self.counters.n_version_mismatches.fetch_add(1, Ordering::Relaxed);
        let ours = self.protocol_version;
        debug!(peer = %peer.short(), ours = %version_name(ours),
            theirs = %failure.peer_version.map_or_else(|| "unknown".to_owned(), version_name),
            "the peer speaks another protocol version: no connection until one of the two nodes is upgraded");
        if !self.is_shut_down() {
            let _ = self.events.try_send(TransportEvent::VersionMismatch {
                peer: *peer,
                ours,
                theirs: failure.peer_version,
            });
        }
    }

    /// Whether an inbound connection from `peer` may be served: it is wanted (this node's own
    /// choice), or it already holds an inbound slot, or fewer than `inbound_max` peers hold one
    /// (the rule of `cairn_protocol::Overlay::accepts_inbound`). An admitted peer holds its slot
    /// from now on, so that handshakes running at once cannot all pass the cap.
    fn admit_inbound(&self, peer: &PublicKey) -> bool {
        let wanted = lock(&self.wanted);
        if wanted.contains(peer) {
            return true;
        }
        let mut reserved = lock(&self.inbound_reserved);
        let now = Instant::now();
        let window = self.handshake_timeout + DUPLICATE_WINDOW_SLACK;
        reserved.retain(|_, at| now.duration_since(*at) < window);
        // The holders of a slot: the peers not wanted that dialed a connection up, or that hold
        // a reservation (a key can be both, and counts once).
        let links = lock(&self.links);
        let has_inbound_link =
            |key: &PublicKey| links.get(key).is_some_and(|link| link.dialed_by == DialedBy::Peer);
        // `peer` is not wanted (see above).
        let admitted = has_inbound_link(peer) || reserved.contains_key(peer) || {
            let n_linked = links
                .iter()
                .filter(|(key, link)| link.dialed_by == DialedBy::Peer && !wanted.contains(key))
                .count();
            let n_reserved_only =
                reserved.keys().filter(|key| !wanted.contains(key) && !has_inbound_link(key)).count();
            n_linked + n_reserved_only < self.inbound_max
        };
        drop(links);
        if admitted {
            reserved.insert(*peer, now);
        }
        admitted
    }

    /// The key of the identity new handshakes present.
    fn own(&self) -> PublicKey {
        self.identity.read().unwrap_or_else(PoisonError::into_inner).1
    }
}

/// Kinds of peer trouble worth a warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Trouble {
    IncomingHandshake,
    OutgoingHandshake,
    ProtocolViolation,
}

impl Trouble {
    const fn as_str(self) -> &'static str {
        match self {
            Self::IncomingHandshake => "incoming handshake failed",
            Self::OutgoingHandshake => "outgoing handshake failed",
            Self::ProtocolViolation => "peer broke the framing rules",
        }
    }
}

/// Which end of a connection a QUIC transport configuration is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Dialer,
    Acceptor,
}

/// The QUIC limits: the dialer may open one bidirectional stream, the acceptor none; no
/// unidirectional streams, no datagrams; windows sized for full frames.
fn quic_transport(config: &TransportConfig, side: Side) -> anyhow::Result<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    let bidi_streams_from_peer = match side {
        Side::Acceptor => 1u32,
        Side::Dialer => 0,
    };
    let idle_timeout = quinn::IdleTimeout::try_from(config.idle_timeout)
        .with_context(|| format!("idle_timeout {:?} is too large", config.idle_timeout))?;
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(bidi_streams_from_peer))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None)
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW_BYTES))
        .receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW_BYTES))
        .send_window(u64::from(STREAM_RECEIVE_WINDOW_BYTES))
        .max_idle_timeout(Some(idle_timeout))
        .keep_alive_interval(Some((config.idle_timeout / 3).min(KEEP_ALIVE_INTERVAL_MAX)));
    Ok(transport)
}

/// How a served connection ended.
enum Ended {
    Lost(Failure),
    Replaced(Candidate),
    Stopped(Stopped),
}

/// One peer's task: takes the established connections of the peer (incoming, or dialed by
/// [`dial_loop`]) from its mailbox and serves one at a time, keeping `link` true while one is
/// served. All events of the peer come from here, so they are in order.
async fn run_peer(
    shared: Arc<Shared>,
    peer: PublicKey,
    handoff: Arc<Handoff>,
    link: watch::Sender<bool>,
    mut stop: StopSignal,
) {
    let mut next = None;
    let stopped = loop {
        let candidate = match next.take() {
            Some(candidate) => candidate,
            None => tokio::select! {
                candidate = handoff.take() => candidate,
                stopped = stop.wait() => break stopped,
            },
        };
        link.send_replace(true);
        let ended = serve(&shared, peer, candidate, &handoff, &mut stop).await;
        link.send_replace(false);
        match ended {
            Ended::Lost(_) => {}
            Ended::Replaced(newer) => next = Some(newer),
            Ended::Stopped(stopped) => break stopped,
        }
    };
    handoff.close(CloseCode::Refused);
    debug!(?stopped, "peer task stopped");
}

/// Dials `peer` while it is wanted and no connection with it is up (`link` false): at once, or
/// after [`DIAL_DEFER`] if our key is the larger, then with doubling backoff while dials fail or
/// connections die young. The address is read afresh for each dial. Established connections
/// go to the peer's mailbox. A peer that stops being wanted is not dialed until it is wanted
/// again (with the backoff reset).
async fn dial_loop(
    shared: Arc<Shared>,
    peer: PublicKey,
    handoff: Arc<Handoff>,
    mut link: watch::Receiver<bool>,
    mut wanted: watch::Receiver<bool>,
    mut stop: StopSignal,
) {
    let defer = if shared.own() > peer { DIAL_DEFER } else { Duration::ZERO };
    let mut backoff = shared.reconnect_backoff_min;
    let mut wait = defer;
    let stopped = loop {
        if !*wanted.borrow_and_update() {
            // The sender lives in `Shared`, which outlives this task.
            tokio::select! {
                _ = wanted.wait_for(|wanted| *wanted) => {}
                stopped = stop.wait() => break stopped,
            }
            backoff = shared.reconnect_backoff_min;
            wait = defer;
            continue;
        }
        if *link.borrow_and_update() {
            let since = Instant::now();
            tokio::select! {
                _ = link.wait_for(|up| !*up) => {}
                _ = wanted.wait_for(|wanted| !*wanted) => continue,
                stopped = stop.wait() => break stopped,
            }
            if since.elapsed() > CONNECTION_STABLE {
                backoff = shared.reconnect_backoff_min;
                wait = defer;
            } else {
                wait = backoff;
                backoff = (backoff * 2).min(shared.reconnect_backoff_max);
            }
        }
        // Wait, unless a connection (the peer's dial) comes up meanwhile.
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = link.wait_for(|up| *up) => continue,
            _ = wanted.wait_for(|wanted| !*wanted) => continue,
            stopped = stop.wait() => break stopped,
        }
        let Some(address) = lock(&shared.addresses).get(&peer).copied() else {
            debug!("wanted, but no address known for this peer: it is reached when it dials us");
            wait = backoff;
            backoff = (backoff * 2).min(shared.reconnect_backoff_max);
            continue;
        };
        // The identity of now; during a key rotation, the other key too if the peer refuses this
        // one (it does not hold the rotation yet, or holds it and refuses the old key).
        let mut dialed = Err(Failure::lost("not dialed"));
        let mut stopped_now = None;
        for client_config in shared.client_configs(&peer) {
            tokio::select! {
                result = dial(&shared, &peer, address, client_config) => dialed = result,
                stopped = stop.wait() => {
                    stopped_now = Some(stopped);
                    break;
                }
            }
            if dialed.is_ok() || shared.is_shut_down() {
                break;
            }
        }
        if let Some(stopped) = stopped_now {
            break stopped;
        }
        match dialed {
            // Unwanted while the dial ran: the overlay moved on, so the connection goes.
            Ok(established) if !*wanted.borrow() => {
                close_with(&established.connection, CloseCode::Rotated);
            }
            Ok(established) => {
                handoff.put(&shared.own(), Candidate { established, dialed_by: DialedBy::Us });
                // If the connection loses to another or dies at once, the next dial waits.
                wait = backoff;
            }
            Err(failure) => {
                if !shared.is_shut_down() {
                    shared.counters.n_outgoing_handshakes_failed.fetch_add(1, Ordering::Relaxed);
                    shared.log_trouble(Trouble::OutgoingHandshake, &peer.short(), &failure.reason);
                }
                wait = backoff;
                backoff = (backoff * 2).min(shared.reconnect_backoff_max);
            }
        }
    };
    debug!(?stopped, "dialer stopped");
}

/// Dials `peer` and exchanges hellos, within the handshake timeout.
async fn dial(
    shared: &Shared,
    peer: &PublicKey,
    address: SocketAddr,
    client_config: quinn::ClientConfig,
) -> Result<Established, Failure> {
    let deadline = Instant::now() + shared.handshake_timeout;
    let connecting = shared
        .endpoint
        .connect_with(client_config, address, tls::SERVER_NAME)
        .map_err(|error| Failure::lost(format!("cannot dial {address}: {error}")))?;
    let connection = timeout_at(deadline, connecting)
        .await
        .map_err(|_| Failure::lost(CloseCode::HandshakeTimeout.reason()))??;
    let exchanged = timeout_at(deadline, async {
        // The verifier already accepted exactly `peer`; this only guards against a broken
        // verifier.
        if tls::peer_key(&connection).as_ref() != Some(peer) {
            return Err(Failure::closing(CloseCode::ProtocolViolation, "the server presented another key"));
        }
        let (mut send, mut recv) = connection.open_bi().await?;
        write_frame(&mut send, &hello_of_version(&shared.cluster_id, shared.protocol_version)).await?;
        read_hello(&mut recv, &shared.cluster_id, shared.protocol_version).await?;
        Ok((send, recv))
    })
    .await
    .unwrap_or_else(|_| {
        Err(Failure::closing(CloseCode::HandshakeTimeout, CloseCode::HandshakeTimeout.reason()))
    });
    match exchanged {
        Ok((send, recv)) => Ok(Established { connection, send, recv }),
        Err(mut failure) => {
            close(&connection, &failure);
            if let Some(ConnectionError::ApplicationClosed(closed)) = connection.close_reason()
                && closed.error_code == CloseCode::Busy.var_int()
            {
                shared.counters.n_dials_busy.fetch_add(1, Ordering::Relaxed);
            }
            // The acceptor closed us for speaking another version: its reason names its own.
            if let Some(ConnectionError::ApplicationClosed(closed)) = connection.close_reason()
                && closed.error_code == CloseCode::VersionMismatch.var_int()
            {
                failure.peer_version = version_in_reason(&closed.reason);
                // Counted and reported even when its reason does not say its version.
                failure.close = Some(CloseCode::VersionMismatch);
                failure.reason = format!(
                    "{}: the peer speaks {}, this node {}",
                    CloseCode::VersionMismatch.reason(),
                    failure.peer_version.map_or_else(|| "another".to_owned(), version_name),
                    version_name(shared.protocol_version)
                );
            }
            shared.note_version_mismatch(peer, &failure);
            Err(failure)
        }
    }
}

/// Serves one established connection until it ends, another replaces it, or the task stops:
/// publishes the link, emits `Connected`, pumps frames both ways, then emits `Disconnected`
/// (except on shutdown). Connections that arrive meanwhile either replace this one or are
/// closed, by [`newcomer_wins`].
async fn serve(
    shared: &Shared,
    peer: PublicKey,
    candidate: Candidate,
    handoff: &Handoff,
    stop: &mut StopSignal,
) -> Ended {
    let Candidate { established: Established { connection, mut send, mut recv }, dialed_by } = candidate;
    let since = Instant::now();
    let address = connection.remote_address();
    let (queue, queue_receiver) = mpsc::channel(shared.peer_queue_messages_max);
    lock(&shared.links).insert(peer, Link { connection: connection.clone(), queue, dialed_by });
    // The link holds the inbound slot from now on (see `Shared::admit_inbound`).
    lock(&shared.inbound_reserved).remove(&peer);
    // A dial checks that the peer is wanted before it hands the connection over, but
    // `Transport::set_outbound` may drop the peer before the link is in `links`, and then finds
    // nothing to close. It updates `wanted` before it looks at `links`, and this reads `wanted`
    // after the link is in, so one of the two sees the other and the connection goes.
    if dialed_by == DialedBy::Us && !lock(&shared.wanted).contains(&peer) {
        debug!("no longer wanted once the dialed connection came up: closed");
        close_with(&connection, CloseCode::Rotated);
    }
    shared.counters.n_connections_established.fetch_add(1, Ordering::Relaxed);
    info!(%address, dialed_by = ?dialed_by, "peer connected");

    let ended = if shared.emit(TransportEvent::Connected { peer, address }).await {
        let reading = read_loop(shared, peer, &mut recv);
        let writing = write_loop(queue_receiver, &mut send);
        let closed = connection.closed();
        tokio::pin!(reading, writing, closed);
        loop {
            tokio::select! {
                failure = &mut reading => break Ended::Lost(failure),
                failure = &mut writing => break Ended::Lost(failure),
                error = &mut closed => break Ended::Lost(error.into()),
                newcomer = handoff.take() => {
                    let held_by_us = dialed_by == DialedBy::Us;
                    let newcomer_by_us = newcomer.dialed_by == DialedBy::Us;
                    let window = shared.handshake_timeout + DUPLICATE_WINDOW_SLACK;
                    if newcomer_wins(&shared.own(), &peer, held_by_us, since.elapsed(), newcomer_by_us, window) {
                        break Ended::Replaced(newcomer);
                    }
                    debug!(dialed_by = ?newcomer.dialed_by, "closed a duplicate connection; kept the one held");
                    close_with(&newcomer.established.connection, CloseCode::Replaced);
                }
                stopped = stop.wait() => break Ended::Stopped(stopped),
            }
        }
    } else {
        Ended::Stopped(Stopped::Shutdown)
    };

    lock(&shared.links).remove(&peer);
    let reason = match &ended {
        Ended::Lost(failure) => {
            if failure.close == Some(CloseCode::ProtocolViolation) {
                shared.counters.n_protocol_violations.fetch_add(1, Ordering::Relaxed);
                shared.log_trouble(Trouble::ProtocolViolation, &peer.short(), &failure.reason);
            }
            close(&connection, failure);
            failure.reason.clone()
        }
        Ended::Replaced(_) => {
            close_with(&connection, CloseCode::Replaced);
            CloseCode::Replaced.reason().to_owned()
        }
        Ended::Stopped(Stopped::Refused(code)) => {
            close_with(&connection, *code);
            code.reason().to_owned()
        }
        Ended::Stopped(Stopped::Shutdown) => {
            close_with(&connection, CloseCode::Shutdown);
            return ended;
        }
    };
    info!(%address, reason, "peer lost");
    let removed_by_peer = matches!(
        connection.close_reason(),
        Some(ConnectionError::ApplicationClosed(close)) if close.error_code == CloseCode::Removed.var_int()
    );
    if !shared.emit(TransportEvent::Disconnected { peer, reason, removed_by_peer }).await {
        return Ended::Stopped(Stopped::Shutdown);
    }
    ended
}

fn close(connection: &Connection, failure: &Failure) {
    if let Some(code) = failure.close {
        // The reason goes to the peer; ours are short ASCII, but cut them to be sure the close
        // frame fits in a packet.
        let reason = failure.reason.as_bytes();
        connection.close(code.var_int(), &reason[..reason.len().min(PEER_REASON_CHARS_MAX)]);
    }
}

fn close_with(connection: &Connection, code: CloseCode) {
    connection.close(code.var_int(), code.reason().as_bytes());
}

/// Reads frames and delivers them as messages until something fails; waits while the service
/// channel is full.
async fn read_loop(shared: &Shared, peer: PublicKey, recv: &mut RecvStream) -> Failure {
    let budget = Arc::new(tokio::sync::Semaphore::new(INBOUND_BYTES_PER_CONNECTION_MAX));
    let mut rate = ByteRate::new(shared.inbound_bytes_per_sec);
    loop {
        let bytes = match read_frame(recv).await {
            Ok(bytes) => bytes,
            Err(failure) => return failure,
        };
        if let Some(wait) = rate.take(bytes.len() + FRAME_LENGTH_BYTES) {
            tokio::time::sleep(wait).await;
        }
        // A frame is at most MESSAGE_BYTES_MAX (checked by read_frame), within the budget and
        // a u32; the semaphore is never closed.
        let n = u32::try_from(bytes.len().max(1)).expect("a frame fits in u32");
        let Ok(permit) = budget.clone().acquire_many_owned(n).await else {
            return Failure::closing(CloseCode::Shutdown, "the inbound budget closed");
        };
        let credit = InboundCredit(permit);
        if shared.events.send(TransportEvent::Message { peer, bytes, credit }).await.is_err() {
            return Failure::closing(CloseCode::Shutdown, "the sync service stopped");
        }
    }
}

/// A token bucket of bytes per second for one connection's inbound messages, holding at most
/// one second's worth.
struct ByteRate {
    per_sec: u64,
    tokens: f64,
    at: Instant,
}

impl ByteRate {
    fn new(per_sec: u64) -> Self {
        Self { per_sec, tokens: per_sec as f64, at: Instant::now() }
    }

    /// Takes `n` bytes; returns how long to wait before reading on, if the bucket ran dry.
    fn take(&mut self, n: usize) -> Option<Duration> {
        let now = Instant::now();
        let rate = self.per_sec as f64;
        self.tokens = (self.tokens + (now - self.at).as_secs_f64() * rate).min(rate);
        self.at = now;
        self.tokens -= n as f64;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / rate))
    }
}

/// Writes queued messages as frames until something fails.
async fn write_loop(mut queue: mpsc::Receiver<Vec<u8>>, send: &mut SendStream) -> Failure {
    while let Some(bytes) = queue.recv().await {
        if let Err(failure) = write_frame(send, &bytes).await {
            return failure;
        }
    }
    // The sender lives in the link, which is removed only after this future is dropped.
    Failure::closing(CloseCode::Shutdown, "the send queue closed")
}

/// Reads one frame of at most `MESSAGE_BYTES_MAX` bytes.
async fn read_frame(recv: &mut RecvStream) -> Result<Vec<u8>, Failure> {
    let mut prefix = [0u8; FRAME_LENGTH_BYTES];
    recv.read_exact(&mut prefix).await?;
    let length = u32::from_le_bytes(prefix) as usize;
    if length > MESSAGE_BYTES_MAX {
        return Err(Failure::closing(
            CloseCode::ProtocolViolation,
            format!("a frame of {length} bytes exceeds the limit of {MESSAGE_BYTES_MAX} bytes"),
        ));
    }
    let mut bytes = vec![0u8; length];
    recv.read_exact(&mut bytes).await?;
    Ok(bytes)
}

/// Writes one frame. The caller guarantees `payload` is at most `MESSAGE_BYTES_MAX` bytes.
async fn write_frame(send: &mut SendStream, payload: &[u8]) -> Result<(), Failure> {
    assert!(payload.len() <= MESSAGE_BYTES_MAX, "frame payload over MESSAGE_BYTES_MAX");
    // Cannot truncate: MESSAGE_BYTES_MAX fits in a u32 (asserted at compile time).
    let length = payload.len() as u32;
    send.write_all(&length.to_le_bytes()).await?;
    send.write_all(payload).await?;
    Ok(())
}

/// Reads the peer's hello and checks it names our protocol version and our cluster.
async fn read_hello(recv: &mut RecvStream, cluster_id: &[u8; 32], version: u8) -> Result<(), Failure> {
    let bad_hello = || Failure::closing(CloseCode::BadHello, CloseCode::BadHello.reason());
    let mut prefix = [0u8; FRAME_LENGTH_BYTES];
    recv.read_exact(&mut prefix).await?;
    if u32::from_le_bytes(prefix) as usize != HELLO_BYTES {
        return Err(bad_hello());
    }
    let mut payload = [0u8; HELLO_BYTES];
    recv.read_exact(&mut payload).await?;
    if payload[..HELLO_PREFIX.len()] != HELLO_PREFIX[..] {
        return Err(bad_hello());
    }
    let theirs = payload[HELLO_PREFIX.len()];
    if theirs != version {
        let mut failure = Failure::closing(CloseCode::VersionMismatch, version_mismatch_reason(version));
        failure.peer_version = Some(theirs);
        return Err(failure);
    }
    if payload[HELLO_MAGIC.len()..] != cluster_id[..] {
        return Err(Failure::closing(CloseCode::ClusterMismatch, CloseCode::ClusterMismatch.reason()));
    }
    Ok(())
}

/// Accepts incoming connections and runs their handshakes, at most
/// [`HANDSHAKES_CONCURRENT_MAX`] at once.
async fn accept_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut handshakes = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            incoming = shared.endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break, // the endpoint is closed
            },
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        if handshakes.len() >= HANDSHAKES_CONCURRENT_MAX {
            shared.counters.n_incoming_handshakes_failed.fetch_add(1, Ordering::Relaxed);
            let who = incoming.remote_address().ip().to_string();
            shared.log_trouble(Trouble::IncomingHandshake, &who, "too many handshakes");
            incoming.refuse();
            continue;
        }
        let shared = shared.clone();
        handshakes.spawn(
            async move {
                let remote = incoming.remote_address();
                if let Err((who, failure)) = accept_one(&shared, incoming).await
                    && !shared.is_shut_down()
                {
                    shared.counters.n_incoming_handshakes_failed.fetch_add(1, Ordering::Relaxed);
                    let who = who.map_or_else(|| remote.ip().to_string(), |peer| peer.short());
                    shared.log_trouble(Trouble::IncomingHandshake, &who, &failure.reason);
                }
            }
            .in_current_span(),
        );
    }
    // Dropping the set aborts the handshakes still running; their connections close.
}

/// Completes one incoming connection: TLS (members only), direction, hellos; then hands it to
/// the peer's task. On failure, says who failed (if the TLS handshake got that far) and why.
async fn accept_one(shared: &Shared, incoming: quinn::Incoming) -> Result<(), (Option<PublicKey>, Failure)> {
    let deadline = Instant::now() + shared.handshake_timeout;
    let connection = timeout_at(deadline, incoming)
        .await
        .map_err(|_| (None, Failure::lost(CloseCode::HandshakeTimeout.reason())))?
        .map_err(|error| (None, Failure::from(error)))?;
    // The verifier admitted a member's key, so the peer key is present.
    let Some(peer) = tls::peer_key(&connection) else {
        let failure = Failure::closing(CloseCode::ProtocolViolation, "no peer key after the handshake");
        close(&connection, &failure);
        return Err((None, failure));
    };
    let checked = timeout_at(deadline, async {
        // A refusal may have landed during the TLS handshake.
        match shared.members.check(&peer) {
            Ok(()) => {}
            Err(tls::KeyRefusal::Removed) => {
                return Err(Failure::closing(CloseCode::Removed, CloseCode::Removed.reason()));
            }
            Err(_) => return Err(Failure::closing(CloseCode::Refused, CloseCode::Refused.reason())),
        }
        // The verifier admitted only members other than us, and every one has a task.
        let handoff = lock(&shared.peers).get(&peer).map(|control| control.handoff.clone());
        let Some(handoff) = handoff else {
            return Err(Failure::closing(CloseCode::Refused, CloseCode::Refused.reason()));
        };
        let (mut send, mut recv) = connection.accept_bi().await?;
        read_hello(&mut recv, &shared.cluster_id, shared.protocol_version).await?;
        // Past the cap, refused before our hello: the dialer sees a failed dial.
        if !shared.admit_inbound(&peer) {
            shared.counters.n_inbound_busy.fetch_add(1, Ordering::Relaxed);
            return Err(Failure::closing(CloseCode::Busy, CloseCode::Busy.reason()));
        }
        write_frame(&mut send, &hello_of_version(&shared.cluster_id, shared.protocol_version)).await?;
        Ok((handoff, send, recv))
    })
    .await
    .unwrap_or_else(|_| {
        Err(Failure::closing(CloseCode::HandshakeTimeout, CloseCode::HandshakeTimeout.reason()))
    });
    match checked {
        Ok((handoff, send, recv)) => {
            handoff.put(
                &shared.own(),
                Candidate { established: Established { connection, send, recv }, dialed_by: DialedBy::Peer },
            );
            Ok(())
        }
        Err(mut failure) => {
            close(&connection, &failure);
            if let Some(theirs) = failure.peer_version {
                failure.reason = format!(
                    "{}: the peer speaks {}, this node {}",
                    CloseCode::VersionMismatch.reason(),
                    version_name(theirs),
                    version_name(shared.protocol_version)
                );
            }
            shared.note_version_mismatch(&peer, &failure);
            Err((Some(peer), failure))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_layout() {
        let hello = hello(&[0xab; 32]);
        assert_eq!(hello.len(), 38);
        assert_eq!(&hello[..6], b"CAIRN3");
        assert_eq!(&hello[6..], &[0xab; 32]);
    }

    #[test]
    fn both_sides_keep_the_same_of_two_connections() {
        let (small, large) = (PublicKey([1; 32]), PublicKey([2; 32]));
        let window = Duration::from_secs(4);
        let young = Duration::from_millis(100);
        let old = Duration::from_secs(5);
        // Each case, from the small key's side: (held dialed by us, its age, newcomer by us).
        // From the large key's side the same two connections have "by us" flipped; both sides
        // must keep the same one whenever the held connection is young on both.
        for held_by_small in [true, false] {
            for newcomer_by_small in [true, false] {
                let small_side =
                    newcomer_wins(&small, &large, held_by_small, young, newcomer_by_small, window);
                let large_side =
                    newcomer_wins(&large, &small, !held_by_small, young, !newcomer_by_small, window);
                assert_eq!(
                    small_side, large_side,
                    "held by small {held_by_small}, new by small {newcomer_by_small}"
                );
            }
        }
        // Two young connections dialed by different sides: the small key's dial wins.
        assert!(newcomer_wins(&small, &large, false, young, true, window));
        assert!(!newcomer_wins(&small, &large, true, young, false, window));
        // The same side dialed again: it lost the first; the newer wins.
        assert!(newcomer_wins(&small, &large, false, young, false, window));
        // An old connection loses to any newcomer: the peer dialed because it lost it.
        assert!(newcomer_wins(&small, &large, true, old, false, window));
    }

    /// A dial checks that the peer is wanted before it hands its connection over; if
    /// `set_outbound` drops the peer before the connection is in `links`, it finds nothing to
    /// close. Here a connection this node dialed is handed over while the peer is not wanted
    /// (the state that race leaves): it is closed with `Rotated` as soon as it is served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dialed_connection_to_a_peer_no_longer_wanted_is_closed_once_served() {
        const DEADLINE: Duration = Duration::from_secs(15);
        let cluster_id = [0x5a; 32];
        let local: SocketAddr = "127.0.0.1:0".parse().expect("a socket address");
        let (a_key, b_key) = (SecretKey::from_seed(&[41; 32]), SecretKey::from_seed(&[42; 32]));
        let members = vec![a_key.public(), b_key.public()];
        // B knows no address of A, so it never dials.
        let (b_sender, mut b_events) = mpsc::channel(64);
        let config = TransportConfig::new(local, cluster_id, members.clone(), Vec::new());
        let b = Transport::start(&b_key, config, b_sender).await.expect("B starts");
        // A knows B's address but wants nobody (no overlay runs here), so it never dials either.
        let peer = b_key.public();
        let mut config = TransportConfig::new(local, cluster_id, members, vec![(peer, b.local_addr())]);
        config.dial_peers = false;
        let (a_sender, _a_events) = mpsc::channel(64);
        let a = Transport::start(&a_key, config, a_sender).await.expect("A starts");

        let shared = &a.shared;
        let client_config = shared.client_configs(&peer).into_iter().next().expect("A has an identity");
        let established = dial(shared, &peer, b.local_addr(), client_config).await.expect("B answers");
        let handoff = lock(&shared.peers).get(&peer).expect("B's task runs on A").handoff.clone();
        handoff.put(&shared.own(), Candidate { established, dialed_by: DialedBy::Us });

        let reason = loop {
            let event = timeout(DEADLINE, b_events.recv())
                .await
                .expect("B sees the connection closed before the deadline")
                .expect("B's transport runs");
            if let TransportEvent::Disconnected { reason, .. } = event {
                break reason;
            }
        };
        let code = format!("(code {})", u64::from(CloseCode::Rotated.code()));
        assert!(reason.contains(&code), "{reason}");
        let deadline = Instant::now() + DEADLINE;
        while lock(&shared.links).contains_key(&peer) {
            assert!(Instant::now() < deadline, "A still holds the link");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn close_codes_round_trip() {
        for code in 0..12 {
            let close = CloseCode::from_code(code).expect("codes 0 to 11 are defined");
            assert_eq!(u64::from(close.code()), code);
        }
        assert_eq!(CloseCode::from_code(12), None);
    }

    #[test]
    fn a_version_mismatch_reason_names_the_closing_nodes_version() {
        assert_eq!(hello(&[7; 32])[..], hello_of_version(&[7; 32], PROTOCOL_VERSION)[..]);
        assert_eq!(
            &hello(&[7; 32])[..6],
            b"CAIRN3",
            "version 3's hello differs from version 2's in its version byte only"
        );
        for version in [b'1', b'2', b'3', b'9', 0x00, 0xff] {
            assert_eq!(version_in_reason(version_mismatch_reason(version).as_bytes()), Some(version));
        }
        assert_eq!(version_name(b'2'), "2");
        assert_eq!(version_name(0x7f), "0x7f");
        assert_eq!(version_in_reason(b"shutting down"), None);
    }
}

#[cfg(test)]
mod byte_rate_tests {
    use super::*;

    #[test]
    fn a_connection_reads_a_second_of_bytes_then_waits_in_proportion() {
        let mut rate = ByteRate::new(1_000_000);
        assert_eq!(rate.take(1_000_000), None, "a full bucket takes one second's worth at once");
        // Half a second's worth more: wait about half a second (less whatever refilled since).
        let wait = rate.take(500_000).expect("the bucket is dry");
        assert!(wait <= Duration::from_millis(500) && wait >= Duration::from_millis(400), "{wait:?}");
    }
}
