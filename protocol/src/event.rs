//! The event: a header, its ops and a signature, as `docs/PROTOCOL.md` §5 lays it out. `ops_hash` binds the
//! ops to the header, the id is the hash of the canonical header, and the signature covers the
//! id, so a header and its signature verify without the ops.

use std::fmt;

use cairn_crypto::{Domain, PublicKey, SecretKey, Signature, hash};

use crate::codec;
use crate::membership::{Change, ChangeId, Rotation};

/// An event id: `SHA-256("cairn/event/v1" ‖ canonical(header))`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(pub [u8; 32]);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", hex::encode(&self.0[..6]))
    }
}

/// The signed part of an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The author's public key; the signature must verify under it.
    pub author: PublicKey,
    /// Position in the author's chain: 1, 2, 3, …
    pub seq: u64,
    /// `1 + max(lamport of deps)`, or 1 with no deps.
    pub lamport: u64,
    /// Ids of the causal predecessors, sorted ascending and unique.
    pub deps: Vec<EventId>,
    /// `SHA-256("cairn/ops/v1" ‖ canonical(ops))`.
    pub ops_hash: [u8; 32],
}

/// One CRDT operation. Keys and values are bytes; each type has its own key space.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// Register write: supersedes the writes to `key` in the event's causal past.
    Put {
        /// Register key.
        key: Vec<u8>,
        /// New value.
        value: Vec<u8>,
    },
    /// Register delete: supersedes the writes to `key` in the event's causal past.
    Del {
        /// Register key.
        key: Vec<u8>,
    },
    /// Counter increment by a signed delta.
    Incr {
        /// Counter key.
        key: Vec<u8>,
        /// Amount added (negative to decrement).
        delta: i64,
    },
    /// Observed-remove set add.
    Add {
        /// Set key.
        key: Vec<u8>,
        /// The element.
        element: Vec<u8>,
    },
    /// Observed-remove set remove: takes out the adds of `element` in the causal past.
    Remove {
        /// Set key.
        key: Vec<u8>,
        /// The element.
        element: Vec<u8>,
    },
    /// Proposes a membership change and votes for it (`docs/PROTOCOL.md` §17). Not a document
    /// op: it changes who may write.
    Propose {
        /// The change.
        change: Change,
        /// The round of the change's base it votes in.
        round: u32,
    },
    /// Votes for a membership change proposed in the event's causal past, by its id.
    Approve {
        /// The change.
        change: ChangeId,
        /// The round of the change's base it votes in.
        round: u32,
    },
    /// Hands the author's seat over to a new key, which signed the proof.
    Rotate(Rotation),
    /// Register write with a client's causal context: supersedes exactly the writes to `key`
    /// that `seen` names (`docs/PROTOCOL.md` §14).
    PutSeen {
        /// Register key.
        key: Vec<u8>,
        /// New value.
        value: Vec<u8>,
        /// What the writer had read.
        seen: Seen,
    },
    /// Register delete with a client's causal context: supersedes exactly the writes to `key`
    /// that `seen` names.
    DelSeen {
        /// Register key.
        key: Vec<u8>,
        /// What the writer had read.
        seen: Seen,
    },
    /// Set add with a client's causal context: supersedes exactly the adds and removes of
    /// `element` that `seen` names (a new tag either way).
    AddSeen {
        /// Set key.
        key: Vec<u8>,
        /// The element.
        element: Vec<u8>,
        /// What the writer had read.
        seen: Seen,
    },
    /// Set remove with a client's causal context: takes out exactly the adds of `element` that
    /// `seen` names, so an add the writer had not read stays.
    RemoveSeen {
        /// Set key.
        key: Vec<u8>,
        /// The element.
        element: Vec<u8>,
        /// What the writer had read.
        seen: Seen,
    },
}

/// A client's causal context as an op carries it: the events whose causal past (themselves
/// included) the writer had read. Other authors' events are named by id and must be deps of
/// the op's event; the author's own earlier events are named by seq (an event cannot depend on
/// two of its author's events). An op with a `Seen` supersedes exactly the ops on its key (or
/// set element) in the causal past of a named event, so what the writer had not read stays as
/// a sibling (`docs/PROTOCOL.md` §14).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seen {
    /// Events of other authors (or of the author's own predecessor), strictly ascending; each
    /// must be a dep of the op's event.
    pub events: Vec<EventId>,
    /// Seqs of the author's own earlier events, strictly ascending; each `1 ≤ seq <` the event's.
    pub own: Vec<u64>,
}

impl Op {
    /// The document key the op writes; empty for a membership op, which writes none.
    pub fn key(&self) -> &[u8] {
        match self {
            Self::Put { key, .. }
            | Self::Del { key }
            | Self::Incr { key, .. }
            | Self::Add { key, .. }
            | Self::Remove { key, .. }
            | Self::PutSeen { key, .. }
            | Self::DelSeen { key, .. }
            | Self::AddSeen { key, .. }
            | Self::RemoveSeen { key, .. } => key,
            Self::Propose { .. } | Self::Approve { .. } | Self::Rotate(_) => &[],
        }
    }

    /// The bytes a register write or set op carries: the value or the element; `None` for
    /// the other ops.
    pub fn payload(&self) -> Option<&[u8]> {
        match self {
            Self::Put { value, .. } | Self::PutSeen { value, .. } => Some(value),
            Self::Add { element, .. }
            | Self::Remove { element, .. }
            | Self::AddSeen { element, .. }
            | Self::RemoveSeen { element, .. } => Some(element),
            _ => None,
        }
    }

    /// This register or set op with the causal context `seen` (a `Put` becomes a `PutSeen`, and
    /// so on; an op that has one gets `seen` instead). A counter or membership op takes no
    /// context and is given back as it is.
    pub fn with_seen(self, seen: Seen) -> Self {
        match self {
            Self::Put { key, value } | Self::PutSeen { key, value, .. } => Self::PutSeen { key, value, seen },
            Self::Del { key } | Self::DelSeen { key, .. } => Self::DelSeen { key, seen },
            Self::Add { key, element } | Self::AddSeen { key, element, .. } => {
                Self::AddSeen { key, element, seen }
            }
            Self::Remove { key, element } | Self::RemoveSeen { key, element, .. } => {
                Self::RemoveSeen { key, element, seen }
            }
            other => other,
        }
    }

    /// The causal context the op carries, to change it.
    pub fn seen_mut(&mut self) -> Option<&mut Seen> {
        match self {
            Self::PutSeen { seen, .. }
            | Self::DelSeen { seen, .. }
            | Self::AddSeen { seen, .. }
            | Self::RemoveSeen { seen, .. } => Some(seen),
            _ => None,
        }
    }

    /// The causal context the op carries, if any.
    pub fn seen(&self) -> Option<&Seen> {
        match self {
            Self::PutSeen { seen, .. }
            | Self::DelSeen { seen, .. }
            | Self::AddSeen { seen, .. }
            | Self::RemoveSeen { seen, .. } => Some(seen),
            _ => None,
        }
    }

    /// Whether the op is a membership op (propose, approve, rotate) rather than a document op.
    pub fn is_membership(&self) -> bool {
        matches!(self, Self::Propose { .. } | Self::Approve { .. } | Self::Rotate(_))
    }
}

/// A whole event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The signed header.
    pub header: Header,
    /// One or more operations, applied atomically.
    pub ops: Vec<Op>,
    /// `Ed25519(author, id)`.
    pub sig: Signature,
}

impl Header {
    /// The event id: the domain-separated hash of the canonical header.
    pub fn id(&self) -> EventId {
        EventId(hash(Domain::Event, &codec::encode_header(self)))
    }
}

/// `SHA-256("cairn/ops/v1" ‖ canonical(ops))`.
pub fn ops_hash(ops: &[Op]) -> [u8; 32] {
    hash(Domain::Ops, &codec::encode_ops(ops))
}

impl Event {
    /// Builds and signs an event. The caller chooses seq, lamport and deps; the adapter decides
    /// whether they are valid. `deps` is sorted and deduplicated here.
    pub fn sign(key: &SecretKey, seq: u64, lamport: u64, mut deps: Vec<EventId>, ops: Vec<Op>) -> Self {
        deps.sort_unstable();
        deps.dedup();
        let header = Header { author: key.public(), seq, lamport, deps, ops_hash: ops_hash(&ops) };
        let sig = key.sign(&header.id().0);
        Self { header, ops, sig }
    }

    /// The event id.
    pub fn id(&self) -> EventId {
        self.header.id()
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode_event(self)
    }
}
