//! The service interface: what the local API may ask of the replica, and the answers.
//! [`ServiceHandle`] is how the API talks to the driver task (`driver.rs`), which owns the
//! replica.

use std::net::SocketAddr;

use cairn_crypto::{PublicKey, Signature};
use cairn_protocol::document::{KeyKind, RegisterRead};
use cairn_protocol::{EventId, Evidence, Op, PeerStats, WriteError};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Commands queued from the API to the service; a full queue makes the API answer "busy".
pub const COMMAND_QUEUE_MAX: usize = 4_096;
/// Changes buffered per watch subscriber; a slower subscriber is told how many it missed.
pub const WATCH_BUFFER_MAX: usize = 4_096;

/// Why the service could not do what was asked. Each variant carries what a caller can act
/// on, not only words: the protocol's own reason for a refused or invalid write, the bounds of
/// a full queue.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The replica refuses to sign for now: not a member, its key equivocated, or it has not
    /// learned its own latest seq yet.
    #[error("{0}")]
    NotReady(WriteError),
    /// The request is not a valid write (bad ops, too large).
    #[error("{0}")]
    Invalid(WriteError),
    /// The store failed; the write may or may not be on disk, and the daemon stops.
    #[error("storage failed: {reason}")]
    Storage {
        /// What failed.
        reason: String,
    },
    /// The store's file system is full; the write was not stored.
    #[error("{message}")]
    NoSpace {
        /// Where, and what to do.
        message: String,
    },
    /// Too many requests are queued.
    #[error("the daemon is busy: {COMMAND_QUEUE_MAX} requests are queued; retry")]
    Busy,
    /// Too many writes wait for the store; this one was not queued.
    #[error(
        "too many writes are waiting for the store ({writes_max} writes or {bytes_max} bytes of ops \
         at most); nothing was written, retry later"
    )]
    WritesQueued {
        /// The bound on queued writes.
        writes_max: usize,
        /// The bound on their bytes of ops.
        bytes_max: usize,
    },
    /// The daemon is stopping.
    #[error("the daemon is shutting down")]
    ShuttingDown,
    /// A backup is being taken already; one at a time (one that stalled for
    /// [`crate::backup::BACKUP_STALL_MAX`] gives way).
    #[error(
        "a backup of this node is being taken already (one at a time); retry when it is done, or \
         once it has sent nothing for a minute"
    )]
    BackupRunning,
    /// A membership request that cannot be made as asked: an unknown seat, a change the
    /// membership in force refuses, or a vote this node gave already.
    #[error("{0}")]
    Membership(String),
    /// A removal that would cut writes a live member may have acknowledged: it needs `force`.
    #[error("{0}")]
    NeedsForce(String),
}

/// An acknowledged write: durable on this node (fsync'd) before this is returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteAck {
    /// The new event.
    pub id: EventId,
    /// Its seq.
    pub seq: u64,
    /// Its lamport timestamp.
    pub lamport: u64,
}

/// A membership change an operator asks this node to propose or approve (`docs/PROTOCOL.md`
/// §17). A seat is named by its name or by any key of its chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// Add a seat founded by `key`, named `name`.
    Add {
        /// The new seat's key.
        key: PublicKey,
        /// The new seat's name.
        name: String,
    },
    /// Remove a seat, keeping its current key's events up to `cut` (default: the highest seq of
    /// it this node holds).
    Remove {
        /// The seat.
        seat: String,
        /// The last seq kept.
        cut: Option<u64>,
        /// Remove it even if that may cut writes it acknowledged.
        force: bool,
    },
    /// Replace a seat by a new one founded by `successor` that keeps its name, with a cut as
    /// for a removal.
    Replace {
        /// The seat.
        seat: String,
        /// The new seat's key.
        successor: PublicKey,
        /// The last seq kept.
        cut: Option<u64>,
        /// Replace it even if that may cut writes it acknowledged.
        force: bool,
    },
    /// Vote for a pending change; for a removal, with the same cut check as proposing it.
    Approve {
        /// The change.
        change: cairn_protocol::ChangeId,
        /// Approve a removal even if its cut may drop writes the seat acknowledged.
        force: bool,
    },
}

/// What readiness checks, as the service loop sees it (`GET /v1/health`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// The store is open and has not failed (a failed store stops the daemon).
    pub store_ok: bool,
    /// Why the store is not usable, if it is not.
    pub store_problem: Option<String>,
    /// Why the node does not know its latest own seq yet (it is learning it from peers).
    pub own_seq_learning: Option<String>,
    /// Keys in force other than this node's, and how many are connected.
    pub peers: usize,
    /// Of them, connected.
    pub peers_connected: usize,
}

impl Health {
    /// Ready: the store is usable, the node knows its own seq, and at least one peer is
    /// connected or none is in force.
    pub fn ready(&self) -> bool {
        self.store_ok && self.own_seq_learning.is_none() && (self.peers == 0 || self.peers_connected > 0)
    }
}

/// A key rotation done: the new key, and the event (signed by the old key) that carries it.
#[derive(Clone, Debug)]
pub struct KeyRotated {
    /// The node's key from now on.
    pub key: PublicKey,
    /// The rotation's event.
    pub write: WriteAck,
}

/// A membership op signed and stored.
#[derive(Clone, Debug)]
pub struct MemberAck {
    /// The change proposed or approved.
    pub change: cairn_protocol::ChangeId,
    /// The event that carries the op.
    pub write: WriteAck,
}

/// An accepted event, for listing and inspection.
#[derive(Clone, Debug)]
pub struct EventInfo {
    /// Its id.
    pub id: EventId,
    /// Its author.
    pub author: PublicKey,
    /// The author's display name from the genesis.
    pub author_name: String,
    /// Its seq.
    pub seq: u64,
    /// Its lamport timestamp.
    pub lamport: u64,
    /// Its deps.
    pub deps: Vec<EventId>,
    /// Its ops.
    pub ops: Vec<Op>,
    /// Its signature: with the rest, the API re-encodes the event's canonical bytes.
    pub sig: Signature,
    /// Its encoded size.
    pub n_bytes: usize,
    /// Whether its ops are excluded from the document (its author equivocated at or below its seq).
    pub excluded: bool,
}

/// Which events to list.
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    /// Only this author's events.
    pub author: Option<PublicKey>,
    /// Only events with a seq above this (with `author`), or accepted after this position.
    pub after: Option<u64>,
    /// At most this many (the API caps it).
    pub limit: usize,
}

/// Which keys to list: one kind, in key order, from after a key on.
#[derive(Clone, Debug)]
pub struct KeyQuery {
    /// The key space.
    pub kind: KeyKind,
    /// Only keys above this one (bytewise): the last key of the previous page.
    pub after: Option<Vec<u8>>,
    /// At most this many (the API caps it).
    pub limit: usize,
}

/// The state of a connection to a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Connected and exchanging messages.
    Connected,
    /// Not connected; the transport is trying (with backoff).
    Connecting,
    /// A proven equivocator: connections are refused.
    Refused,
    /// Not a key of a seat in force (removed, rotated away, or not added yet): connections are
    /// refused.
    OutOfForce,
    /// Not connected: the last handshake failed because the two speak different protocol
    /// versions (see `PeerInfo::version_mismatch`).
    VersionMismatch,
}

/// The membership in force, in brief, for the status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MembershipBrief {
    /// Its id.
    pub id: [u8; 32],
    /// Its seats.
    pub n_seats: usize,
    /// Its open round.
    pub round: u32,
    /// Changes with votes in the open round.
    pub n_pending: usize,
}

/// The membership in force and what is pending (`docs/PROTOCOL.md` §17), as the node's
/// accepted set resolves it.
#[derive(Clone, Debug)]
pub struct MembershipInfo {
    /// The resolution of every accepted membership op.
    pub resolution: cairn_protocol::Resolution,
    /// The pending changes of the open round: id, votes, and the change.
    pub pending: Vec<(cairn_protocol::ChangeId, usize, Option<cairn_protocol::Change>)>,
    /// The genesis's membership policy.
    pub policy: cairn_protocol::Policy,
}

/// What the daemon knows about one peer.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The peer's key.
    pub key: PublicKey,
    /// Its display name.
    pub name: String,
    /// The address this node dials it at: from its signed address record, else configured.
    pub address: Option<SocketAddr>,
    /// The connection state.
    pub state: PeerState,
    /// Whether it is one of this node's outbound choices (the overlay's: this node dials it).
    pub outbound: bool,
    /// Whether it is connected and receives events eagerly (whole), not as announced ids.
    pub eager: bool,
    /// Milliseconds since the last message from it.
    pub last_seen_ms_ago: Option<u64>,
    /// The transport's smoothed round-trip time.
    pub rtt_ms: Option<f64>,
    /// Counters: messages, bytes, events in and out, rejections by reason.
    pub stats: PeerStats,
    /// Events this node holds past what the peer held at the end of its last session with
    /// it (`Node::peer_lag`); `None` before one ended.
    pub lag_events: Option<u64>,
    /// The protocol versions, this node's and the peer's (if it said), when the state is
    /// [`PeerState::VersionMismatch`]: not connected, and a handshake with it since the last
    /// connection failed because they differ.
    pub version_mismatch: Option<(u8, Option<u8>)>,
}

/// What one member has written, as this node holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthorFigures {
    /// The member's key.
    pub key: PublicKey,
    /// Its display name.
    pub name: String,
    /// Its events this node holds.
    pub events: u64,
    /// Their encoded bytes.
    pub bytes: u64,
    /// Events of it accepted per second over the last whole [`AUTHOR_RATE_WINDOW`].
    pub events_per_sec: f64,
    /// Their bytes per second over the same window.
    pub bytes_per_sec: f64,
}

/// The window over which [`AuthorFigures`] rates are measured.
pub const AUTHOR_RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// The node's state in brief.
#[derive(Clone, Debug)]
pub struct Status {
    /// This node's key.
    pub key: PublicKey,
    /// Its display name.
    pub name: String,
    /// The cluster id.
    pub cluster_id: [u8; 32],
    /// Highest seq of this node's own events.
    pub own_seq: u64,
    /// Document digest.
    pub digest: [u8; 32],
    /// Reconciliation digest (tips and evidence).
    pub sync_digest: [u8; 32],
    /// Accepted events.
    pub n_events: usize,
    /// Evidence held.
    pub n_evidence: usize,
    /// Events waiting in the causal buffer, and their charged bytes.
    pub buffer_events: usize,
    /// Bytes charged to the causal buffer.
    pub buffer_bytes: usize,
    /// The configured bound of the buffer, in bytes.
    pub buffer_bytes_max: usize,
    /// Why writes are refused, if they are.
    pub writes_refused: Option<String>,
    /// Connected peers.
    pub n_peers_connected: usize,
    /// Keys in force other than this node's.
    pub n_peers: usize,
    /// What each key this node indexes has written, this node included, in roster order.
    pub authors: Vec<AuthorFigures>,
    /// The membership in force.
    pub membership: MembershipBrief,
}

/// A key whose visible state changed, for the watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeNotice {
    /// The key space.
    pub kind: KeyKind,
    /// The key.
    pub key: Vec<u8>,
    /// Position of this notice in the node's stream (1, 2, 3, …).
    pub position: u64,
}

/// A request to the service, with the channel for its answer.
#[derive(Debug)]
pub(crate) enum Command {
    Write(Vec<Op>, oneshot::Sender<Result<WriteAck, ServiceError>>),
    Register(Vec<u8>, oneshot::Sender<RegisterRead>),
    Counter(Vec<u8>, oneshot::Sender<i128>),
    SetMembers(Vec<u8>, oneshot::Sender<Vec<(Vec<u8>, Vec<EventId>)>>),
    Keys(KeyQuery, oneshot::Sender<Vec<Vec<u8>>>),
    Events(EventQuery, oneshot::Sender<Vec<EventInfo>>),
    Event(EventId, oneshot::Sender<Option<EventInfo>>),
    Evidence(oneshot::Sender<Vec<Evidence>>),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    Membership(oneshot::Sender<MembershipInfo>),
    MemberChange(MemberChange, oneshot::Sender<Result<WriteAck, ServiceError>>),
    RotateKey(oneshot::Sender<Result<KeyRotated, ServiceError>>),
    Health(oneshot::Sender<Health>),
    Status(oneshot::Sender<Status>),
}

/// How the API reaches the service. Cheap to clone.
#[derive(Clone)]
pub struct ServiceHandle {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) changes: broadcast::Sender<ChangeNotice>,
    pub(crate) metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// The store's writer thread, for backups.
    pub(crate) store: std::sync::mpsc::Sender<crate::driver::StoreRequest>,
    /// The backup slot: which backup stream is open.
    pub(crate) backup_slot: std::sync::Arc<crate::backup::BackupSlot>,
}

impl ServiceHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, ServiceError> {
        let (tx, rx) = oneshot::channel();
        self.commands.try_send(make(tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ServiceError::Busy,
            mpsc::error::TrySendError::Closed(_) => ServiceError::ShuttingDown,
        })?;
        rx.await.map_err(|_| ServiceError::ShuttingDown)
    }

    /// Signs, applies and durably stores one event with `ops`; returns once it is fsync'd.
    pub async fn write(&self, ops: Vec<Op>) -> Result<WriteAck, ServiceError> {
        self.ask(|tx| Command::Write(ops, tx)).await?
    }

    /// A register: its visible value and siblings.
    pub async fn register(&self, key: Vec<u8>) -> Result<RegisterRead, ServiceError> {
        self.ask(|tx| Command::Register(key, tx)).await
    }

    /// A counter's value.
    pub async fn counter(&self, key: Vec<u8>) -> Result<i128, ServiceError> {
        self.ask(|tx| Command::Counter(key, tx)).await
    }

    /// A set's members, sorted, each with its causal context: the events of its live adds.
    pub async fn set_members(&self, key: Vec<u8>) -> Result<Vec<(Vec<u8>, Vec<EventId>)>, ServiceError> {
        self.ask(|tx| Command::SetMembers(key, tx)).await
    }

    /// One page of the keys of one kind with a non-empty state, sorted.
    pub async fn keys(&self, query: KeyQuery) -> Result<Vec<Vec<u8>>, ServiceError> {
        self.ask(|tx| Command::Keys(query, tx)).await
    }

    /// Accepted events matching `query`.
    pub async fn events(&self, query: EventQuery) -> Result<Vec<EventInfo>, ServiceError> {
        self.ask(|tx| Command::Events(query, tx)).await
    }

    /// One accepted event.
    pub async fn event(&self, id: EventId) -> Result<Option<EventInfo>, ServiceError> {
        self.ask(|tx| Command::Event(id, tx)).await
    }

    /// The evidence held, one per equivocating member.
    pub async fn evidence(&self) -> Result<Vec<Evidence>, ServiceError> {
        self.ask(Command::Evidence).await
    }

    /// Every other member, with its connection state and counters.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, ServiceError> {
        self.ask(Command::Peers).await
    }

    /// The membership in force and the pending changes.
    pub async fn membership(&self) -> Result<MembershipInfo, ServiceError> {
        self.ask(Command::Membership).await
    }

    /// Signs a membership op (a proposal, which is this seat's vote too, or an approval) and
    /// stores it durably; returns once it is fsync'd. See [`MemberChange`].
    pub async fn member_change(&self, request: MemberChange) -> Result<MemberAck, ServiceError> {
        let write = self.ask(|tx| Command::MemberChange(request, tx)).await??;
        // The change as signed (its id names the membership in force when it was signed).
        let info = self.event(write.id).await?;
        let change = info
            .iter()
            .flat_map(|info| &info.ops)
            .find_map(|op| match op {
                Op::Propose { change, .. } => Some(change.id()),
                Op::Approve { change, .. } => Some(*change),
                _ => None,
            })
            .ok_or_else(|| ServiceError::Storage {
                reason: format!("the membership op's event {} is not readable after it was stored", write.id),
            })?;
        Ok(MemberAck { change, write })
    }

    /// The node's readiness, from its service loop (an answer at all is the liveness).
    pub async fn health(&self) -> Result<Health, ServiceError> {
        self.ask(Command::Health).await
    }

    /// Rotates the node's key: see [`Command::RotateKey`] and `cairnd rotate-key`.
    pub async fn rotate_key(&self) -> Result<KeyRotated, ServiceError> {
        self.ask(Command::RotateKey).await?
    }

    /// The node's state in brief.
    pub async fn status(&self) -> Result<Status, ServiceError> {
        self.ask(Command::Status).await
    }

    /// The Prometheus metrics in OpenMetrics text.
    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    /// Starts a backup of the store (one at a time): see [`crate::backup`].
    pub fn backup(&self) -> Result<crate::backup::BackupStream, ServiceError> {
        crate::backup::BackupStream::start(self.store.clone(), self.backup_slot.clone())
            .ok_or(ServiceError::BackupRunning)
    }

    /// A stream of changes applied to the document from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ChangeNotice> {
        self.changes.subscribe()
    }
}
