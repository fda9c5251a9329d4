//! Cairn's protocol core, sans-I/O: the event format and its canonical codec, validation and the
//! causal buffer (the adapter), every rule's verdict on bytes for tools (`diagnose`),
//! equivocation evidence, the CRDT document, and the reconciliation state machine. It does no
//! I/O, reads no clock and draws no randomness; the daemon and the simulator drive it with
//! bytes, events and the current time.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod adapter;
pub mod addr;
pub mod archive;
pub mod buffer;
pub mod codec;
pub mod diagnose;
pub mod document;
pub mod event;
pub mod evidence;
pub mod genesis;
pub mod limits;
mod members;
pub mod membership;
pub mod message;
pub mod node;
pub mod overlay;
pub mod roster;
pub mod validate;
pub mod verified;

pub use adapter::{
    Adapter, AdapterConfig, ChainState, Ingested, PendingIngest, Rejection, SignatureChecks,
    SignatureVerdicts,
};
pub use addr::{AddrError, AddrRecord};
pub use archive::{Archive, EventMeta, MemoryArchive, StoredEvent};
pub use buffer::PeerId;
pub use diagnose::{
    DepHeader, Diagnosis, EventRule, EvidenceRule, Failure, Needs, Outcome, Verdict, diagnose,
    diagnose_evidence,
};
pub use event::{Event, EventId, Header, Op, Seen};
pub use evidence::{Evidence, EvidenceError, SignedHeader};
pub use genesis::{Genesis, Member, MemberIdx};
pub use members::PAST_RESOLUTIONS_CACHED_MAX;
pub use membership::{Change, ChangeId, ChangeKind, ChangeLog, Membership, MembershipId, Policy, Resolution};
pub use message::{Message, Tip};
pub use node::{
    DocumentDelta, MemberRequest, Misbehaviour, Node, NodeConfig, NodeEvent, PeerStats, PendingEvents,
    Prepared, WriteError,
};
pub use overlay::{Overlay, OverlayChange, OverlayConfig};
pub use roster::{Roster, RosterError};
pub use validate::Reject;
pub use verified::Verified;
