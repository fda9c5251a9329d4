//! The node's [`Archive`] on disk: accepted events are read back from the store (its `metas`,
//! `by_seq`, `ids` and `log` tables), so the node's memory does not grow with its history.
//!
//! An event is accepted (and must be readable at once) before its group commit makes it
//! durable, so the archive keeps the events accepted since the last commit in memory
//! (`pending`), until the driver tells it, through its [`ArchiveHandle`], that their commit
//! landed ([`ArchiveHandle::committed`]). That set is bounded by the group commit (events from
//! peers wait at most `PEER_EVENTS_COMMIT_DELAY_MS` or `PEER_EVENTS_COMMIT_BATCH` for their
//! commit; while the file system is full they wait longer, as they did before). Committed
//! events go through a small cache of the most recent ones ([`RECENT_EVENTS_MAX`],
//! [`RECENT_BYTES_MAX`]): the deps of a new event and the events pushed to peers are mostly
//! recent.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use cairn_protocol::archive::{Archive, EventMeta, StoredEvent};
use cairn_protocol::document::{Covered, OpId};
use cairn_protocol::{EventId, MemberIdx, Verified};

use crate::store::{SharedDb, reads};

/// Committed events kept in memory for reads, at most.
pub const RECENT_EVENTS_MAX: usize = 65_536;
/// Their bytes, at most.
pub const RECENT_BYTES_MAX: usize = 32 * 1024 * 1024;

/// One event kept in memory.
type Held = (EventMeta, Arc<[u8]>);

#[derive(Default)]
struct State {
    /// Accepted, not yet known to be committed.
    pending: BTreeMap<EventId, Held>,
    pending_by_seq: BTreeMap<(MemberIdx, u64), Vec<EventId>>,
    /// `pending`'s ids in the order they were accepted.
    pending_order: VecDeque<EventId>,
    pending_bytes: u64,
    /// Recently committed, oldest first in `recent_order`.
    recent: BTreeMap<EventId, Held>,
    recent_order: VecDeque<EventId>,
    recent_bytes: usize,
    /// Events, and their bytes, in the store.
    n_committed: u64,
    n_bytes_committed: u64,
    /// Covered records (see `Archive::record_covered`) not yet known to be committed.
    pending_covered: BTreeMap<OpId, Vec<OpId>>,
    /// The first read of the store that failed: the daemon stops on it.
    read_error: Option<String>,
}

impl State {
    fn held(&self, id: &EventId) -> Option<&Held> {
        self.pending.get(id).or_else(|| self.recent.get(id))
    }

    fn remember(&mut self, id: EventId, held: Held) {
        self.recent_bytes += held.1.len();
        if self.recent.insert(id, held).is_none() {
            self.recent_order.push_back(id);
        }
        while self.recent_order.len() > RECENT_EVENTS_MAX || self.recent_bytes > RECENT_BYTES_MAX {
            let Some(oldest) = self.recent_order.pop_front() else { break };
            if let Some((_, bytes)) = self.recent.remove(&oldest) {
                self.recent_bytes -= bytes.len();
            }
        }
    }
}

/// The archive the node owns. See the module docs.
pub struct StoreArchive {
    db: SharedDb,
    state: Arc<Mutex<State>>,
}

/// The driver's side of the archive: it says which events are committed.
#[derive(Clone)]
pub struct ArchiveHandle {
    state: Arc<Mutex<State>>,
}

impl StoreArchive {
    /// An archive over the store's database, which holds `n_events` events of `n_bytes`.
    pub fn new(db: SharedDb, n_events: u64, n_bytes: u64) -> (Self, ArchiveHandle) {
        let state = Arc::new(Mutex::new(State {
            n_committed: n_events,
            n_bytes_committed: n_bytes,
            ..State::default()
        }));
        (Self { db, state: Arc::clone(&state) }, ArchiveHandle { state })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock left the maps as they were between two operations.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Something about each of `ids`: from memory for those held there, from one read of the
    /// store for the others (`absent` for each of them if the read failed, which is recorded).
    fn many<T: Clone>(
        &self,
        ids: &[EventId],
        from_held: impl Fn(&Held) -> T,
        read: impl FnOnce(&[EventId]) -> Result<Vec<T>, reads::ReadError>,
        absent: T,
    ) -> Vec<T> {
        let mut out = vec![absent.clone(); ids.len()];
        let mut misses = Vec::new();
        {
            let state = self.state();
            for (i, id) in ids.iter().enumerate() {
                match state.held(id) {
                    Some(held) => out[i] = from_held(held),
                    None => misses.push(i),
                }
            }
        }
        if !misses.is_empty() {
            let asked: Vec<EventId> = misses.iter().map(|&i| ids[i]).collect();
            let found = self.read(read(&asked), vec![absent; asked.len()]);
            for (i, value) in misses.into_iter().zip(found) {
                out[i] = value;
            }
        }
        out
    }

    /// The value of a read, or `default` after recording why the store could not be read.
    fn read<T>(&self, result: Result<T, reads::ReadError>, default: T) -> T {
        result.unwrap_or_else(|error| {
            let mut state = self.state();
            if state.read_error.is_none() {
                tracing::error!(%error, "the store could not be read; the daemon stops");
                state.read_error = Some(error);
            }
            default
        })
    }
}

impl ArchiveHandle {
    /// The commit holding `ids` landed: they are read from the store from now on (the most
    /// recent from the cache).
    pub fn committed(&self, ids: impl IntoIterator<Item = EventId>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            let Some(held) = state.pending.remove(&id) else { continue };
            if state.pending_order.front() == Some(&id) {
                state.pending_order.pop_front();
            } else {
                state.pending_order.retain(|other| *other != id);
            }
            if let Some(same_seq) = state.pending_by_seq.get_mut(&(held.0.author, held.0.seq)) {
                same_seq.retain(|other| *other != id);
                if same_seq.is_empty() {
                    state.pending_by_seq.remove(&(held.0.author, held.0.seq));
                }
            }
            state.pending_bytes -= held.1.len() as u64;
            state.n_committed += 1;
            state.n_bytes_committed += held.1.len() as u64;
            state.remember(id, held);
        }
    }

    /// The commit holding these covered records landed: they are read from the store now.
    pub fn committed_covered(&self, covered: &[Covered]) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for Covered { by, ops } in covered {
            let Some(list) = state.pending_covered.get_mut(by) else { continue };
            for op in ops {
                if let Some(at) = list.iter().position(|o| o == op) {
                    list.swap_remove(at);
                }
            }
            if list.is_empty() {
                state.pending_covered.remove(by);
            }
        }
    }

    /// Events accepted and not yet committed, and their bytes.
    pub fn pending(&self) -> (usize, u64) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (state.pending.len(), state.pending_bytes)
    }

    /// Records that a read of the store failed (a read made outside the archive).
    pub fn fail(&self, error: String) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.read_error.is_none() {
            tracing::error!(%error, "the store could not be read; the daemon stops");
            state.read_error = Some(error);
        }
    }

    /// Why the store could not be read, if a read failed: the daemon must stop.
    pub fn read_error(&self) -> Option<String> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).read_error.clone()
    }

    /// Events in the store.
    pub fn n_committed(&self) -> u64 {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).n_committed
    }

    /// Up to `limit` ids of the events accepted and not yet committed, in the order they were
    /// accepted, from the `skip`th on.
    pub fn pending_page(&self, skip: usize, limit: usize) -> Vec<EventId> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.pending_order.iter().skip(skip).take(limit).copied().collect()
    }
}

impl Archive for StoreArchive {
    fn meta(&self, id: &EventId) -> Option<EventMeta> {
        if let Some((meta, _)) = self.state().held(id) {
            return Some(meta.clone());
        }
        self.read(reads::meta(&self.db, id), None)
    }

    fn contains(&self, id: &EventId) -> bool {
        // Not through `meta`: a miss would read and decode a meta only to drop it.
        self.contains_many(std::slice::from_ref(id)).first().copied().unwrap_or(false)
    }

    fn event(&self, id: &EventId) -> Option<StoredEvent> {
        if let Some((meta, bytes)) = self.state().held(id) {
            return Some(StoredEvent { id: *id, meta: meta.clone(), bytes: Arc::clone(bytes) });
        }
        let (meta, bytes) = self.read(reads::event(&self.db, id), None)?;
        Some(StoredEvent { id: *id, meta, bytes: bytes.into() })
    }

    fn contains_many(&self, ids: &[EventId]) -> Vec<bool> {
        self.many(ids, |_| true, |asked| reads::contains_many(&self.db, asked), false)
    }

    fn bytes_many(&self, ids: &[EventId]) -> Vec<Option<Arc<[u8]>>> {
        let read = |asked: &[EventId]| {
            reads::bytes_many(&self.db, asked)
                .map(|found| found.into_iter().map(|b| b.map(Into::into)).collect())
        };
        self.many(ids, |(_, bytes)| Some(Arc::clone(bytes)), read, None)
    }

    fn metas_many(&self, ids: &[EventId]) -> Vec<Option<EventMeta>> {
        self.many(ids, |(meta, _)| Some(meta.clone()), |asked| reads::metas_many(&self.db, asked), None)
    }

    fn in_seqs(&self, author: MemberIdx, seqs: std::ops::RangeInclusive<u64>, limit: usize) -> Vec<EventId> {
        let (from, to) = (*seqs.start(), *seqs.end());
        // An empty range (a BTreeMap range would panic on it).
        if from > to {
            return Vec::new();
        }
        let mut ids = self.read(reads::in_seqs(&self.db, author, from, to, limit), Vec::new());
        let state = self.state();
        let pending: Vec<(u64, EventId)> = state
            .pending_by_seq
            .range((author, from)..=(author, to))
            .flat_map(|(&(_, seq), ids)| ids.iter().map(move |id| (seq, *id)))
            .collect();
        drop(state);
        if !pending.is_empty() {
            // Merge by (seq, id): the pending ones are the newest, mostly above the stored ones.
            let mut all: Vec<(u64, EventId)> = Vec::with_capacity(ids.len() + pending.len());
            let metas = self.metas_many(&ids);
            all.extend(ids.iter().zip(metas).map(|(id, meta)| (meta.map_or(0, |m| m.seq), *id)));
            all.extend(pending);
            all.sort_unstable();
            all.dedup();
            ids = all.into_iter().map(|(_, id)| id).collect();
        }
        ids.truncate(limit);
        ids
    }

    fn at_seq(&self, author: MemberIdx, seq: u64) -> Vec<EventId> {
        let mut ids = self.read(reads::at_seq(&self.db, author, seq), Vec::new());
        if let Some(pending) = self.state().pending_by_seq.get(&(author, seq)) {
            ids.extend(pending);
            ids.sort_unstable();
            ids.dedup();
        }
        ids
    }

    fn insert(&mut self, event: &Verified, meta: EventMeta) {
        let mut state = self.state();
        let id = event.id();
        if state.pending.contains_key(&id) {
            return;
        }
        state.pending_bytes += event.bytes().len() as u64;
        let same_seq = state.pending_by_seq.entry((meta.author, meta.seq)).or_default();
        same_seq.push(id);
        state.pending_order.push_back(id);
        state.pending.insert(id, (meta, event.bytes().into()));
    }

    fn len(&self) -> u64 {
        let state = self.state();
        state.n_committed + state.pending.len() as u64
    }

    fn n_bytes(&self) -> u64 {
        let state = self.state();
        state.n_bytes_committed + state.pending_bytes
    }

    fn record_covered(&mut self, covered: &[Covered]) {
        let mut state = self.state();
        for Covered { by, ops } in covered {
            state.pending_covered.entry(*by).or_default().extend_from_slice(ops);
        }
    }

    fn covered(&self, op: &OpId) -> Vec<OpId> {
        let mut ops = self.read(reads::covered(&self.db, op), Vec::new());
        if let Some(pending) = self.state().pending_covered.get(op) {
            ops.extend_from_slice(pending);
        }
        ops
    }

    fn ids(&self) -> Vec<EventId> {
        let mut ids = self.read(reads::ids(&self.db), Vec::new());
        ids.extend(self.state().pending.keys());
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}
