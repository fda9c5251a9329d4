//! The proof of validation: [`Verified`] can only be built inside this crate by the adapter,
//! after every validity rule held, so the document can only ever receive valid events.

use std::sync::Arc;

use crate::archive::SeenClocks;
use crate::event::{Event, EventId};
use crate::genesis::MemberIdx;

/// An accepted event: valid, with all of its deps accepted before it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Verified(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    event: Event,
    id: EventId,
    bytes: Vec<u8>,
    author_idx: MemberIdx,
    clock: Box<[u64]>,
    /// The dep by the same author, if any.
    own_pred: Option<EventId>,
    seen: SeenClocks,
}

impl Verified {
    /// Only validation calls this: `event` must have passed every rule, `bytes` must be its
    /// canonical encoding, and `clock[m]` the highest seq of member `m` in the event's causal
    /// past, the event itself included (it can exceed the event's own seq only for an author who
    /// forked). `own_pred` is its dep by the same author, if any.
    pub(crate) fn new(
        event: Event,
        id: EventId,
        bytes: Vec<u8>,
        (author_idx, own_pred): (MemberIdx, Option<EventId>),
        clock: Box<[u64]>,
        seen: SeenClocks,
    ) -> Self {
        assert!(
            clock.get(author_idx).is_some_and(|&seq| seq >= event.header.seq),
            "an event's clock covers its own seq"
        );
        Self(Arc::new(Inner { event, id, bytes, author_idx, clock, own_pred, seen }))
    }

    /// An event read back from this node's own archive, which only ever held events that
    /// passed validation here: decoded again (bytes that no longer decode give `None`), its
    /// clock taken from the archive. Crate-private like [`Verified::new`]: the archive is this
    /// node's own memory of what it validated, kept on its own disk (checksummed), and reading
    /// it back is how a restart avoids checking every signature again.
    pub(crate) fn from_stored(
        stored: &crate::archive::StoredEvent,
        n_keys: usize,
        archive: &dyn crate::archive::Archive,
    ) -> Option<Self> {
        let event = stored.event()?;
        if event.id() != stored.id || stored.meta.clock.len() > n_keys || stored.meta.author >= n_keys {
            return None;
        }
        if stored.meta.clock.get(stored.meta.author).is_none_or(|&seq| seq < event.header.seq) {
            return None;
        }
        Some(Self(Arc::new(Inner {
            id: stored.id,
            bytes: stored.bytes.to_vec(),
            author_idx: stored.meta.author,
            clock: stored.meta.clock.clone(),
            own_pred: stored.meta.own_pred,
            seen: crate::archive::seen_clocks(
                archive,
                stored.meta.author,
                &event.ops,
                stored.meta.clock.len(),
            ),
            event,
        })))
    }

    /// Its meta, as the adapter computed it when it accepted the event (for a store that
    /// indexes it without decoding it again or reading its deps' metas).
    pub fn meta(&self) -> crate::archive::EventMeta {
        crate::archive::EventMeta {
            author: self.0.author_idx,
            seq: self.0.event.header.seq,
            lamport: self.0.event.header.lamport,
            own_pred: self.0.own_pred,
            clock: self.0.clock.clone(),
        }
    }

    /// The event.
    pub fn event(&self) -> &Event {
        &self.0.event
    }

    /// The event id.
    pub fn id(&self) -> EventId {
        self.0.id
    }

    /// The canonical encoding, exactly as received or signed.
    pub fn bytes(&self) -> &[u8] {
        &self.0.bytes
    }

    /// The author's member index.
    pub fn author_idx(&self) -> MemberIdx {
        self.0.author_idx
    }

    /// The author's seq.
    pub fn seq(&self) -> u64 {
        self.0.event.header.seq
    }

    /// The lamport timestamp.
    pub fn lamport(&self) -> u64 {
        self.0.event.header.lamport
    }

    /// The causal clock: for each author index, the highest seq of that author in this event's
    /// causal past, this event included (0 when none). It has an entry for each key the node's
    /// roster held when the event was accepted (at least up to the event's author); authors
    /// indexed later have none, and read as 0 ([`Verified::clock_of`]). For any author that has
    /// not forked below a seq `s`, "the author's event at `s` is in the causal past of this
    /// event" holds exactly when `clock_of(author) >= s`.
    pub fn clock(&self) -> &[u64] {
        &self.0.clock
    }

    /// The seen clock of op `op_idx` when it carries a causal context
    /// ([`crate::archive::seen_clocks`]); `None` for an op without one.
    pub fn seen_clock(&self, op_idx: u32) -> Option<&[u64]> {
        self.0.seen.iter().find(|(idx, _)| *idx == op_idx).map(|(_, clock)| &**clock)
    }

    /// Every seen clock, by op index.
    pub fn seen_clocks(&self) -> &SeenClocks {
        &self.0.seen
    }

    /// The clock's entry for `author`: 0 past its end.
    pub fn clock_of(&self, author: MemberIdx) -> u64 {
        self.0.clock.get(author).copied().unwrap_or(0)
    }
}
