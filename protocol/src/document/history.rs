//! The history an exclusion reads: the applied events and what their ops covered. The
//! document does not keep it; [`MemoryHistory`] keeps it in memory for the node, and the
//! daemon reads it from its store.

use std::collections::BTreeMap;
use std::ops::Range;

use super::{Covered, OpId};
use crate::event::{EventId, Op};
use crate::genesis::MemberIdx;
use crate::verified::Verified;

/// Where [`super::Document::exclude`] reads what it retracts and what comes back.
///
/// The history must hold every event applied to the document (more is allowed: an accepted
/// event the document skipped is never asked for) and every [`Covered`] record that
/// [`super::Document::apply`] and [`super::Document::exclude`] returned.
pub trait DocHistory {
    /// The accepted events of `author` with `seqs.start <= seq < seqs.end`, every branch of a
    /// fork, each once, in a causal order (ascending seq is one).
    fn events_of(&self, author: MemberIdx, seqs: Range<u64>) -> Vec<HistoricEvent>;

    /// One accepted event, `None` if unknown.
    fn event(&self, id: &EventId) -> Option<HistoricEvent>;

    /// The covered list of op `(id, op_idx)`: the ops of every [`Covered`] record with that op
    /// as `by`, in any order, duplicates allowed. Empty if there is none.
    fn covered(&self, id: &EventId, op_idx: u32) -> Vec<OpId>;
}

/// An applied event as the history gives it back: plain data, not a [`Verified`] (which only
/// validation makes, and which is the only way into the document; retraction only re-reads
/// ops applied before).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoricEvent {
    /// The event id.
    pub id: EventId,
    /// The author's member index.
    pub author: MemberIdx,
    /// The author's seq.
    pub seq: u64,
    /// The lamport timestamp.
    pub lamport: u64,
    /// The causal clock, as [`Verified::clock`] gave it: one entry per member.
    pub clock: Vec<u64>,
    /// The ops.
    pub ops: Vec<Op>,
    /// The seen clock of each op with a causal context ([`crate::archive::seen_clocks`]).
    pub seen: crate::archive::SeenClocks,
}

impl From<&Verified> for HistoricEvent {
    fn from(event: &Verified) -> Self {
        Self {
            id: event.id(),
            author: event.author_idx(),
            seq: event.seq(),
            lamport: event.lamport(),
            clock: event.clock().to_vec(),
            ops: event.event().ops.clone(),
            seen: event.seen_clocks().clone(),
        }
    }
}

/// A [`DocHistory`] in memory: every recorded event (shared with the adapter, a [`Verified`]
/// is a reference count) indexed by id and by author and seq, and the covered lists. It grows
/// with history; the daemon reads the same from its store instead.
#[derive(Clone, Debug, Default)]
pub struct MemoryHistory {
    events: BTreeMap<EventId, Verified>,
    by_author_seq: BTreeMap<(MemberIdx, u64), Vec<EventId>>,
    covered: BTreeMap<OpId, Vec<OpId>>,
}

impl MemoryHistory {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an accepted event; recording it again does nothing.
    pub fn record_event(&mut self, event: &Verified) {
        let id = event.id();
        if self.events.insert(id, event.clone()).is_none() {
            self.by_author_seq.entry((event.author_idx(), event.seq())).or_default().push(id);
        }
    }

    /// Records covered records returned by [`super::Document::apply`] or
    /// [`super::Document::exclude`].
    pub fn record_covered(&mut self, covered: Vec<Covered>) {
        for Covered { by, ops } in covered {
            self.covered.entry(by).or_default().extend(ops);
        }
    }

    /// How many events are recorded.
    pub fn n_events(&self) -> usize {
        self.events.len()
    }
}

impl DocHistory for MemoryHistory {
    fn events_of(&self, author: MemberIdx, seqs: Range<u64>) -> Vec<HistoricEvent> {
        if seqs.is_empty() {
            return Vec::new();
        }
        self.by_author_seq
            .range((author, seqs.start)..(author, seqs.end))
            .flat_map(|(_, ids)| ids)
            // `record_event` indexes only the events it holds.
            .map(|id| HistoricEvent::from(&self.events[id]))
            .collect()
    }

    fn event(&self, id: &EventId) -> Option<HistoricEvent> {
        self.events.get(id).map(HistoricEvent::from)
    }

    fn covered(&self, id: &EventId, op_idx: u32) -> Vec<OpId> {
        self.covered.get(&(*id, op_idx)).cloned().unwrap_or_default()
    }
}
