//! Reconciliation messages between two peers. Their byte layout is in `docs/PROTOCOL.md`; the
//! state machine that sends and answers them is [`crate::node`].

use cairn_crypto::PublicKey;

pub use crate::addr::AddrRecord;
use crate::event::EventId;
use crate::evidence::Evidence;

/// One tip of an author's chain: an event with no own-successor in the sender's set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tip {
    /// The author.
    pub author: PublicKey,
    /// The tip's seq.
    pub seq: u64,
    /// The tip's id.
    pub id: EventId,
}

/// A reconciliation message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// "My set has this digest." Answered by `InSync` or by `Tips` with `reply` set.
    Summary {
        /// The sender's set digest (its tips and evidence).
        digest: [u8; 32],
    },
    /// "Mine too": the sets are equal.
    InSync {
        /// The digest both sides hold.
        digest: [u8; 32],
    },
    /// The sender's tips and evidence, possibly split over several messages.
    Tips {
        /// The receiver should answer with its own tips once it has them all.
        reply: bool,
        /// More `Tips` parts follow.
        more: bool,
        /// How many messages the sender had received from the receiver on this connection when
        /// it wrote these tips. The receiver's messages after that many were still in flight:
        /// the events they carry are on their way, and are not sent again in answer.
        heard: u64,
        /// Tips, sorted by author then id.
        tips: Vec<Tip>,
        /// The sender's evidence, one per equivocating author (in the last part only).
        evidence: Vec<Evidence>,
    },
    /// Encoded events, in an order where every event follows its deps.
    Events {
        /// Each entry is one event's canonical encoding.
        events: Vec<Vec<u8>>,
    },
    /// "Send me these events if you have them."
    Want {
        /// The ids asked for.
        ids: Vec<EventId>,
    },
    /// Fork search: "which ids does the own-chain of `tip` have at these seqs?"
    ForkProbe {
        /// A tip the sender does not hold.
        tip: EventId,
        /// Seqs below the tip's seq, ascending.
        seqs: Vec<u64>,
    },
    /// The answer to `ForkProbe`: the own-chain ancestors of `tip` at the asked seqs.
    ForkIds {
        /// The tip asked about.
        tip: EventId,
        /// `(seq, id)` for each asked seq, ascending.
        entries: Vec<(u64, EventId)>,
    },
    /// "Send me the own-chain of `tip` from `from_seq` up to the tip."
    WantChain {
        /// A tip the sender does not hold.
        tip: EventId,
        /// The lowest seq wanted.
        from_seq: u64,
    },
    /// Newly found evidence, pushed to peers at once.
    Evidence {
        /// The evidence objects.
        evidence: Vec<Evidence>,
    },
    /// A lazy push: "I hold these events" (ids of events the sender accepted and pushed
    /// eagerly to others). The receiver asks for those it still lacks with `Graft` if they do
    /// not reach it otherwise.
    Have {
        /// The ids announced.
        ids: Vec<EventId>,
    },
    /// "Stop pushing events to me; announce them": the receiver's pushes reached the sender
    /// another way first.
    Prune,
    /// "Push events to me again, and send these": a lazy announcement arrived before the event.
    Graft {
        /// The ids asked for (the receiver sends those it has accepted).
        ids: Vec<EventId>,
    },
    /// Members' signed address records, for dialing them.
    Addrs {
        /// The records.
        records: Vec<AddrRecord>,
    },
}

impl Message {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Summary { .. } => "summary",
            Self::InSync { .. } => "in_sync",
            Self::Tips { .. } => "tips",
            Self::Events { .. } => "events",
            Self::Want { .. } => "want",
            Self::ForkProbe { .. } => "fork_probe",
            Self::ForkIds { .. } => "fork_ids",
            Self::WantChain { .. } => "want_chain",
            Self::Evidence { .. } => "evidence",
            Self::Have { .. } => "have",
            Self::Prune => "prune",
            Self::Graft { .. } => "graft",
            Self::Addrs { .. } => "addrs",
        }
    }
}
