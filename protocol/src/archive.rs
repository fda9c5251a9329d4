//! Where a node's accepted events live once accepted: the [`Archive`]. The adapter keeps in
//! memory only what it needs to decide (each author's tips, highest seq and fork seq, the
//! evidence, the causal buffer); everything else about accepted events it asks the archive.
//!
//! [`MemoryArchive`] keeps them in memory (the simulator, tests, observers); the daemon's
//! archive keeps them in its store on disk, with the events accepted since its last commit in
//! memory, so that memory does not grow with history.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::codec;
use crate::document::{Covered, DocHistory, HistoricEvent, OpId};
use crate::event::{Event, EventId, Op};
use crate::genesis::MemberIdx;
use crate::verified::Verified;

/// What the adapter needs of an accepted event to check the events that depend on it, to
/// order events, and to walk an author's chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventMeta {
    /// The author's member index.
    pub author: MemberIdx,
    /// The author's seq.
    pub seq: u64,
    /// The lamport timestamp.
    pub lamport: u64,
    /// The own predecessor: the dep by the same author, if any.
    pub own_pred: Option<EventId>,
    /// The causal clock (see [`Verified::clock`]).
    pub clock: Box<[u64]>,
}

impl EventMeta {
    /// The meta of an event by member `author` of a cluster of `n_members`, from its header's
    /// seq and lamport and the metas of its deps (all of them): the own predecessor is the dep
    /// by the same author, and the clock is the pointwise max of the deps' clocks with the
    /// author's entry raised to the event's own seq. The one definition, for the adapter and
    /// for a store that indexes events as it writes them.
    pub fn from_deps<'a>(
        author: MemberIdx,
        seq: u64,
        lamport: u64,
        n_members: usize,
        deps: impl IntoIterator<Item = (EventId, &'a Self)>,
    ) -> Self {
        let mut clock = vec![0u64; n_members].into_boxed_slice();
        let mut own_pred = None;
        for (id, dep) in deps {
            for (mine, theirs) in clock.iter_mut().zip(dep.clock.iter()) {
                *mine = (*mine).max(*theirs);
            }
            if dep.author == author {
                own_pred = Some(id);
            }
        }
        if let Some(entry) = clock.get_mut(author) {
            *entry = (*entry).max(seq);
        }
        Self { author, seq, lamport, own_pred, clock }
    }
}

/// For each op of an event that carries a causal context ([`crate::Seen`]), by op index: the
/// pointwise maximum of the clocks of the events the context names, `n` entries. An event in
/// that maximum's causal past is one the writer had read. The named events are deps and the
/// author's own earlier events, so every one is accepted before the event is. Of the own seqs
/// only the highest is read: the author's events at lower seqs are in its causal past, so their
/// clocks add nothing, unless the author forked below the event's seq; and then the event is
/// excluded from the document, which never reads its seen clocks (so where the author forked at
/// the highest named seq, the clocks of every event the archive holds there are joined, and
/// nothing depends on the result). Each named event is read once per event. Empty for an event
/// without contexts: nothing is looked up.
pub fn seen_clocks(archive: &dyn Archive, author: MemberIdx, ops: &[Op], n: usize) -> SeenClocks {
    let mut clocks = Vec::new();
    let mut metas: BTreeMap<EventId, Option<Box<[u64]>>> = BTreeMap::new();
    for (op_idx, op) in (0u32..).zip(ops) {
        let Some(seen) = op.seen() else { continue };
        let mut clock = vec![0u64; n].into_boxed_slice();
        let own = seen.own.iter().max().map(|&seq| archive.at_seq(author, seq)).unwrap_or_default();
        for id in seen.events.iter().chain(&own) {
            let named = metas.entry(*id).or_insert_with(|| archive.meta(id).map(|meta| meta.clock));
            if let Some(named) = named {
                for (mine, theirs) in clock.iter_mut().zip(named.iter()) {
                    *mine = (*mine).max(*theirs);
                }
            }
        }
        clocks.push((op_idx, clock));
    }
    clocks
}

/// What [`seen_clocks`] gives: `(op index, clock)` for each op with a causal context.
pub type SeenClocks = Vec<(u32, Box<[u64]>)>;

/// An accepted event as read back from an archive: its meta and its canonical bytes. Plain
/// data, not a proof: only validation makes a [`Verified`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its id.
    pub id: EventId,
    /// Its meta.
    pub meta: EventMeta,
    /// Its canonical encoding.
    pub bytes: Arc<[u8]>,
}

impl StoredEvent {
    /// Its id.
    pub fn id(&self) -> EventId {
        self.id
    }

    /// The author's member index.
    pub fn author_idx(&self) -> MemberIdx {
        self.meta.author
    }

    /// The author's seq.
    pub fn seq(&self) -> u64 {
        self.meta.seq
    }

    /// The lamport timestamp.
    pub fn lamport(&self) -> u64 {
        self.meta.lamport
    }

    /// The canonical encoding.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The event, decoded. `None` only if the archive's bytes were altered.
    pub fn event(&self) -> Option<Event> {
        codec::decode_event(&self.bytes).ok()
    }
}

/// Where accepted events live. Reads see every event [`Archive::insert`]ed before, whether or
/// not the caller has made it durable yet.
pub trait Archive: Send {
    /// The meta of the accepted event `id`.
    fn meta(&self, id: &EventId) -> Option<EventMeta>;

    /// Whether `id` is accepted.
    fn contains(&self, id: &EventId) -> bool {
        self.meta(id).is_some()
    }

    /// The accepted event `id`, with its bytes.
    fn event(&self, id: &EventId) -> Option<StoredEvent>;

    /// Whether each of `ids` is accepted: [`Archive::contains`] for many at once (an archive on
    /// disk answers them in one read).
    fn contains_many(&self, ids: &[EventId]) -> Vec<bool> {
        ids.iter().map(|id| self.contains(id)).collect()
    }

    /// The bytes of each of `ids`, `None` for one not accepted: for many at once, as
    /// [`Archive::contains_many`].
    fn bytes_many(&self, ids: &[EventId]) -> Vec<Option<Arc<[u8]>>> {
        ids.iter().map(|id| self.event(id).map(|e| e.bytes)).collect()
    }

    /// The metas of each of `ids`, as [`Archive::contains_many`].
    fn metas_many(&self, ids: &[EventId]) -> Vec<Option<EventMeta>> {
        ids.iter().map(|id| self.meta(id)).collect()
    }

    /// The accepted events of `author` with seq `seq`, in id order (more than one only after
    /// equivocation).
    fn at_seq(&self, author: MemberIdx, seq: u64) -> Vec<EventId>;

    /// The accepted events of `author` with a seq in `seqs`, by seq then id, at most `limit`:
    /// [`Archive::at_seq`] for a range at once.
    fn in_seqs(&self, author: MemberIdx, seqs: std::ops::RangeInclusive<u64>, limit: usize) -> Vec<EventId> {
        let mut out = Vec::new();
        for seq in seqs {
            if out.len() >= limit {
                break;
            }
            out.extend(self.at_seq(author, seq));
        }
        out.truncate(limit);
        out
    }

    /// Records a newly accepted event. The adapter calls it in acceptance order, a causal order.
    fn insert(&mut self, event: &Verified, meta: EventMeta);

    /// The number of accepted events.
    fn len(&self) -> u64;

    /// Whether no event is accepted.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The encoded bytes of all accepted events.
    fn n_bytes(&self) -> u64;

    /// Every accepted id, in id order. Linear in the history: for checks and tests.
    fn ids(&self) -> Vec<EventId>;

    /// Records what the document's ops covered ([`crate::document::Document::apply`] and
    /// [`crate::document::Document::exclude`] return it): an exclusion reads it back through
    /// [`Archive::covered`]. Reads see it at once, like events.
    fn record_covered(&mut self, covered: &[Covered]);

    /// The covered list of `op`: every op recorded as covered by it, in any order, duplicates
    /// allowed; empty if none.
    fn covered(&self, op: &OpId) -> Vec<OpId>;
}

/// An archive read as the history a document exclusion needs ([`DocHistory`]): the author's
/// events with their clocks and ops, and the covered records. `chains` (the adapter's) bound
/// each author's seqs, so a range open at the top reads only the seqs that exist.
pub struct ArchiveHistory<'a> {
    /// The archive.
    pub archive: &'a dyn Archive,
    /// Each member's chain state, in member order.
    pub chains: &'a [crate::adapter::ChainState],
}

impl ArchiveHistory<'_> {
    fn historic(&self, id: &EventId) -> Option<HistoricEvent> {
        let stored = self.archive.event(id)?;
        // Every archived event was validated when it was inserted, so it decodes; an archive
        // on disk that was altered reports its read errors itself (the daemon stops on them).
        let event = stored.event()?;
        Some(HistoricEvent {
            id: *id,
            author: stored.meta.author,
            seq: stored.meta.seq,
            lamport: stored.meta.lamport,
            clock: stored.meta.clock.to_vec(),
            seen: seen_clocks(self.archive, stored.meta.author, &event.ops, stored.meta.clock.len()),
            ops: event.ops,
        })
    }
}

impl DocHistory for ArchiveHistory<'_> {
    fn events_of(&self, author: MemberIdx, seqs: std::ops::Range<u64>) -> Vec<HistoricEvent> {
        let max_seq = self.chains.get(author).map_or(0, |chain| chain.max_seq);
        // `seqs.end > seqs.start >= 0` when not empty, so `end - 1` does not wrap.
        if seqs.is_empty() || seqs.start > max_seq {
            return Vec::new();
        }
        let ids = self.archive.in_seqs(author, seqs.start..=(seqs.end - 1).min(max_seq), usize::MAX);
        ids.iter().filter_map(|id| self.historic(id)).collect()
    }

    fn event(&self, id: &EventId) -> Option<HistoricEvent> {
        self.historic(id)
    }

    fn covered(&self, id: &EventId, op_idx: u32) -> Vec<OpId> {
        self.archive.covered(&(*id, op_idx))
    }
}

/// An [`Archive`] in memory.
#[derive(Debug, Default)]
pub struct MemoryArchive {
    events: BTreeMap<EventId, (EventMeta, Arc<[u8]>)>,
    by_seq: BTreeMap<(MemberIdx, u64), Vec<EventId>>,
    n_bytes: u64,
    covered: BTreeMap<OpId, Vec<OpId>>,
}

impl MemoryArchive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Archive for MemoryArchive {
    fn meta(&self, id: &EventId) -> Option<EventMeta> {
        self.events.get(id).map(|(meta, _)| meta.clone())
    }

    fn contains(&self, id: &EventId) -> bool {
        self.events.contains_key(id)
    }

    fn event(&self, id: &EventId) -> Option<StoredEvent> {
        self.events.get(id).map(|(meta, bytes)| StoredEvent {
            id: *id,
            meta: meta.clone(),
            bytes: Arc::clone(bytes),
        })
    }

    fn at_seq(&self, author: MemberIdx, seq: u64) -> Vec<EventId> {
        self.by_seq.get(&(author, seq)).cloned().unwrap_or_default()
    }

    fn in_seqs(&self, author: MemberIdx, seqs: std::ops::RangeInclusive<u64>, limit: usize) -> Vec<EventId> {
        let (from, to) = (*seqs.start(), *seqs.end());
        if from > to {
            return Vec::new();
        }
        let mut out: Vec<EventId> = self
            .by_seq
            .range((author, from)..=(author, to))
            .flat_map(|(_, ids)| ids.iter().copied())
            .take(limit)
            .collect();
        out.truncate(limit);
        out
    }

    fn insert(&mut self, event: &Verified, meta: EventMeta) {
        let id = event.id();
        let ids = self.by_seq.entry((meta.author, meta.seq)).or_default();
        if let Err(position) = ids.binary_search(&id) {
            ids.insert(position, id);
        }
        if self.events.insert(id, (meta, event.bytes().into())).is_none() {
            self.n_bytes += event.bytes().len() as u64;
        }
    }

    fn len(&self) -> u64 {
        self.events.len() as u64
    }

    fn n_bytes(&self) -> u64 {
        self.n_bytes
    }

    fn ids(&self) -> Vec<EventId> {
        self.events.keys().copied().collect()
    }

    fn record_covered(&mut self, covered: &[Covered]) {
        for Covered { by, ops } in covered {
            self.covered.entry(*by).or_default().extend_from_slice(ops);
        }
    }

    fn covered(&self, op: &OpId) -> Vec<OpId> {
        self.covered.get(op).cloned().unwrap_or_default()
    }
}
