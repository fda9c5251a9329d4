//! Backups of a node's store: the stream that `GET /v1/backup` sends and `cairnctl backup FILE`
//! writes, and what `cairnd restore` installs.
//!
//! A backup is taken from a running node without stopping its writes: the store's writer thread
//! serves it in reads of at most [`BACKUP_READ_BYTES`] between two commits (one short read
//! transaction each), so a write waits at most one such read. The store's log only grows at its
//! end, so the backup holds the first `n` events of the log at the moment it started (a causally
//! closed set), then the evidence held when the events were read.
//!
//! A restored backup is marked [`OwnHistory::Restored`]: events the node signed after the backup
//! are missing from it, so the node learns its latest own seq from its peers before it signs
//! anything, and can never sign a seq twice because of a backup.
//!
//! # Format (version 1)
//!
//! Integers are little-endian.
//!
//! ```text
//! backup  = magic ‖ cluster id (32 bytes) ‖ node key (32 bytes) ‖ record* ‖ end
//! magic   = "cairn-backup/v1\n" (16 bytes)
//! record  = tag (1 byte) ‖ u32 length ‖ bytes
//!           tag 1: an event's canonical encoding, in the store's log order (a causal order)
//!           tag 2: a piece of evidence's canonical encoding, after every event
//! end     = 0x00 ‖ u64 number of events ‖ u64 number of evidence ‖ SHA-256 of every byte before
//!           the 0x00 (32 bytes)
//! ```
//!
//! A file that is cut short, altered or not a backup fails the checks of [`Reader`]; every
//! event is validated again, signatures included, before `cairnd restore` installs anything.

use std::fs;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use cairn_protocol::{Genesis, Node, NodeConfig, codec};

use crate::store::{OwnHistory, Store};
use crate::transport::lock;

/// The first bytes of every backup.
pub const MAGIC: &[u8; 16] = b"cairn-backup/v1\n";
/// The most event bytes the store's writer thread reads for a backup between two commits.
pub const BACKUP_READ_BYTES: usize = 1 << 20;
/// The largest record a reader accepts: an event or evidence is far smaller.
pub const RECORD_BYTES_MAX: usize = 1 << 20;
/// Events a restore validates and stores per transaction.
const RESTORE_BATCH_BYTES: usize = 16 << 20;

const TAG_END: u8 = 0;
const TAG_EVENT: u8 = 1;
const TAG_EVIDENCE: u8 = 2;

/// What the API asks the store's writer thread for, one piece of a backup at a time.
#[derive(Debug)]
pub enum BackupRead {
    /// The store's identity and its number of events now.
    Start,
    /// Events from this log position on.
    Events {
        /// The first position.
        from: u64,
    },
    /// The evidence held now.
    Evidence,
}

/// The writer thread's answer to a [`BackupRead`].
#[derive(Debug)]
pub enum BackupPiece {
    /// For [`BackupRead::Start`].
    Start {
        /// The store's cluster.
        cluster_id: [u8; 32],
        /// The store's node key.
        node_key: [u8; 32],
        /// Events in the log now: the backup holds these.
        n_events: u64,
    },
    /// For [`BackupRead::Events`]: events in log order, and the position after the last one.
    Events {
        /// Canonical encodings.
        events: Vec<Vec<u8>>,
        /// The next position to read.
        next: u64,
    },
    /// For [`BackupRead::Evidence`].
    Evidence(Vec<Vec<u8>>),
}

/// Answers one backup read from `store` (on the store's writer thread).
pub fn read_piece(store: &Store, read: &BackupRead) -> Result<BackupPiece, String> {
    match read {
        BackupRead::Start => Ok(BackupPiece::Start {
            cluster_id: store.cluster_id(),
            node_key: store.node_key(),
            n_events: store.n_events(),
        }),
        BackupRead::Events { from } => store
            .read_log(*from, BACKUP_READ_BYTES)
            .map(|(events, next)| BackupPiece::Events { events, next })
            .map_err(|e| e.to_string()),
        BackupRead::Evidence => store.read_evidence().map(BackupPiece::Evidence).map_err(|e| e.to_string()),
    }
}

/// A backup stream that has sent nothing for this long (its client stopped reading and kept
/// the connection open) gives its slot to the next backup asked for, and ends at its next read.
pub const BACKUP_STALL_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// The one backup slot of a node: which stream holds it, and when that stream last moved on.
#[derive(Debug, Default)]
pub struct BackupSlot(std::sync::Mutex<SlotState>);

#[derive(Debug, Default)]
struct SlotState {
    holder: Option<SlotHolder>,
    /// Numbers the slot's streams, so that a stream that lost the slot knows it.
    n_streams: u64,
}

#[derive(Debug)]
struct SlotHolder {
    stream: u64,
    moved_at: std::time::Instant,
}

impl BackupSlot {
    /// Holds the slot for a new stream at `now`: when it is free, or its holder has not moved
    /// on for [`BACKUP_STALL_MAX`]. Returns the new stream's number.
    fn take(&self, now: std::time::Instant) -> Option<u64> {
        let mut state = lock(&self.0);
        if state.holder.as_ref().is_some_and(|h| now.saturating_duration_since(h.moved_at) < BACKUP_STALL_MAX)
        {
            return None;
        }
        state.n_streams += 1;
        let stream = state.n_streams;
        state.holder = Some(SlotHolder { stream, moved_at: now });
        Some(stream)
    }

    /// Records that `stream` moved on at `now`; false if it no longer holds the slot.
    fn moved_on(&self, stream: u64, now: std::time::Instant) -> bool {
        match lock(&self.0).holder.as_mut() {
            Some(holder) if holder.stream == stream => {
                holder.moved_at = now;
                true
            }
            _ => false,
        }
    }

    /// Frees the slot if `stream` holds it.
    fn release(&self, stream: u64) {
        let mut state = lock(&self.0);
        if state.holder.as_ref().is_some_and(|h| h.stream == stream) {
            state.holder = None;
        }
    }

    /// Whether a backup stream holds the slot.
    pub fn is_held(&self) -> bool {
        lock(&self.0).holder.is_some()
    }
}

/// A backup being streamed from the running node: [`BackupStream::next_chunk`] until `None`.
/// At most one holds the node's [`BackupSlot`] at a time (it frees it when dropped); one that
/// stalled for [`BACKUP_STALL_MAX`] loses it to the next backup asked for.
pub struct BackupStream {
    store: std::sync::mpsc::Sender<crate::driver::StoreRequest>,
    slot: std::sync::Arc<BackupSlot>,
    number: u64,
    state: StreamState,
}

enum StreamState {
    Start,
    Events { writer: Writer, next: u64, end: u64 },
    Evidence(Writer),
    Done,
}

impl BackupStream {
    /// A new stream, or `None` if another holds the slot and has not stalled.
    pub(crate) fn start(
        store: std::sync::mpsc::Sender<crate::driver::StoreRequest>,
        slot: std::sync::Arc<BackupSlot>,
    ) -> Option<Self> {
        let number = slot.take(std::time::Instant::now())?;
        Some(Self { store, slot, number, state: StreamState::Start })
    }

    async fn read(&self, read: BackupRead) -> Result<BackupPiece, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.store
            .send(crate::driver::StoreRequest::Backup(read, tx))
            .map_err(|_| "the store's writer thread has stopped".to_owned())?;
        rx.await.map_err(|_| "the store's writer thread has stopped".to_owned())?
    }

    /// The next bytes of the backup; `None` after the end. An error ends the stream: the
    /// backup is then incomplete, and a reader refuses it.
    pub async fn next_chunk(&mut self) -> Option<Result<Vec<u8>, String>> {
        let state = std::mem::replace(&mut self.state, StreamState::Done);
        if !matches!(state, StreamState::Done) && !self.slot.moved_on(self.number, std::time::Instant::now())
        {
            return Some(Err(format!(
                "this backup sent nothing for {} s and another backup took its place",
                BACKUP_STALL_MAX.as_secs()
            )));
        }
        let (bytes, state) = match state {
            StreamState::Done => return None,
            StreamState::Start => match self.read(BackupRead::Start).await {
                Ok(BackupPiece::Start { cluster_id, node_key, n_events }) => {
                    let (writer, bytes) = Writer::start(cluster_id, node_key);
                    (Ok(bytes), StreamState::Events { writer, next: 0, end: n_events })
                }
                Ok(other) => (Err(format!("unexpected answer {other:?}")), StreamState::Done),
                Err(e) => (Err(e), StreamState::Done),
            },
            StreamState::Events { writer, next, end } if next >= end => {
                return self.after_events(writer).await;
            }
            StreamState::Events { mut writer, next, end } => {
                match self.read(BackupRead::Events { from: next }).await {
                    Ok(BackupPiece::Events { mut events, next: after }) => {
                        // Only the events that were in the log when the backup started.
                        let keep = usize::try_from(end - next).unwrap_or(usize::MAX).min(events.len());
                        events.truncate(keep);
                        let next = (next + keep as u64).min(after);
                        if events.is_empty() {
                            (
                                Err("the store's log is shorter than when the backup started".to_owned()),
                                StreamState::Done,
                            )
                        } else {
                            (Ok(writer.events(&events)), StreamState::Events { writer, next, end })
                        }
                    }
                    Ok(other) => (Err(format!("unexpected answer {other:?}")), StreamState::Done),
                    Err(e) => (Err(e), StreamState::Done),
                }
            }
            StreamState::Evidence(writer) => (Ok(writer.finish()), StreamState::Done),
        };
        self.state = state;
        Some(bytes)
    }

    async fn after_events(&mut self, mut writer: Writer) -> Option<Result<Vec<u8>, String>> {
        match self.read(BackupRead::Evidence).await {
            Ok(BackupPiece::Evidence(evidence)) => {
                let bytes = writer.evidence(&evidence);
                self.state = StreamState::Evidence(writer);
                Some(Ok(bytes))
            }
            Ok(other) => Some(Err(format!("unexpected answer {other:?}"))),
            Err(e) => Some(Err(e)),
        }
    }
}

impl Drop for BackupStream {
    fn drop(&mut self) {
        self.slot.release(self.number);
    }
}

/// Writes a backup's bytes, keeping the running hash and counts for its end.
pub struct Writer {
    hash: ring::digest::Context,
    n_events: u64,
    n_evidence: u64,
}

impl Writer {
    /// A backup of the store of `node_key` in the cluster `cluster_id`: returns the writer and
    /// the first bytes.
    pub fn start(cluster_id: [u8; 32], node_key: [u8; 32]) -> (Self, Vec<u8>) {
        let mut writer =
            Self { hash: ring::digest::Context::new(&ring::digest::SHA256), n_events: 0, n_evidence: 0 };
        let mut bytes = Vec::with_capacity(80);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&cluster_id);
        bytes.extend_from_slice(&node_key);
        writer.hash.update(&bytes);
        (writer, bytes)
    }

    /// The records of `events`, in order.
    pub fn events(&mut self, events: &[Vec<u8>]) -> Vec<u8> {
        self.n_events += events.len() as u64;
        self.records(TAG_EVENT, events)
    }

    /// The records of `evidence`, in order; after every event.
    pub fn evidence(&mut self, evidence: &[Vec<u8>]) -> Vec<u8> {
        self.n_evidence += evidence.len() as u64;
        self.records(TAG_EVIDENCE, evidence)
    }

    /// The end: counts and the hash of everything before.
    pub fn finish(self) -> Vec<u8> {
        let digest = self.hash.finish();
        let mut bytes = Vec::with_capacity(49);
        bytes.push(TAG_END);
        bytes.extend_from_slice(&self.n_events.to_le_bytes());
        bytes.extend_from_slice(&self.n_evidence.to_le_bytes());
        bytes.extend_from_slice(digest.as_ref());
        bytes
    }

    fn records(&mut self, tag: u8, items: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(items.iter().map(|i| i.len() + 5).sum());
        for item in items {
            // Events and evidence are bounded far below 4 GiB (`EVENT_BYTES_MAX`).
            let len = u32::try_from(item.len()).expect("a record is smaller than 4 GiB");
            bytes.push(tag);
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(item);
        }
        self.hash.update(&bytes);
        bytes
    }
}

/// One record of a backup.
#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    /// An event's canonical encoding.
    Event(Vec<u8>),
    /// Evidence's canonical encoding.
    Evidence(Vec<u8>),
}

/// Reads a backup from the start, checking its form as it goes; only [`Reader::next_record`]
/// returning `Ok(None)` (the end, with matching counts and hash) means the whole backup was
/// read intact.
pub struct Reader<R> {
    input: R,
    hash: ring::digest::Context,
    /// The store's cluster.
    pub cluster_id: [u8; 32],
    /// The store's node key.
    pub node_key: [u8; 32],
    n_events: u64,
    n_evidence: u64,
    done: bool,
}

impl<R: Read> Reader<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R) -> anyhow::Result<Self> {
        let mut header = [0u8; 80];
        input.read_exact(&mut header).map_err(|e| cut_short(e, "the header"))?;
        if &header[..16] != MAGIC {
            bail!("this is not a Cairn backup of format 1 (it does not start with {MAGIC:?})");
        }
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        hash.update(&header);
        let mut cluster_id = [0u8; 32];
        cluster_id.copy_from_slice(&header[16..48]);
        let mut node_key = [0u8; 32];
        node_key.copy_from_slice(&header[48..80]);
        Ok(Self { input, hash, cluster_id, node_key, n_events: 0, n_evidence: 0, done: false })
    }

    /// The next record, or `None` at an intact end.
    pub fn next_record(&mut self) -> anyhow::Result<Option<Record>> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.input.read_exact(&mut tag).map_err(|e| cut_short(e, "a record"))?;
        if tag[0] == TAG_END {
            let mut end = [0u8; 48];
            self.input.read_exact(&mut end).map_err(|e| cut_short(e, "the end"))?;
            let n_events = u64::from_le_bytes(end[..8].try_into().expect("8 bytes"));
            let n_evidence = u64::from_le_bytes(end[8..16].try_into().expect("8 bytes"));
            let digest =
                std::mem::replace(&mut self.hash, ring::digest::Context::new(&ring::digest::SHA256)).finish();
            if (n_events, n_evidence) != (self.n_events, self.n_evidence) {
                bail!(
                    "the backup says it holds {n_events} events and {n_evidence} evidence, but {} and {} were read",
                    self.n_events,
                    self.n_evidence
                );
            }
            if digest.as_ref() != &end[16..] {
                bail!("the backup's checksum does not match its contents: it was altered or damaged");
            }
            let mut rest = [0u8; 1];
            if self.input.read(&mut rest).context("reading the backup")? != 0 {
                bail!("the backup has bytes after its end");
            }
            self.done = true;
            return Ok(None);
        }
        let mut len = [0u8; 4];
        self.input.read_exact(&mut len).map_err(|e| cut_short(e, "a record"))?;
        let len = u32::from_le_bytes(len) as usize;
        if len > RECORD_BYTES_MAX {
            bail!("the backup holds a record of {len} bytes, more than {RECORD_BYTES_MAX}: it is damaged");
        }
        let mut bytes = vec![0u8; len];
        self.input.read_exact(&mut bytes).map_err(|e| cut_short(e, "a record"))?;
        self.hash.update(&tag);
        self.hash.update(&(len as u32).to_le_bytes());
        self.hash.update(&bytes);
        match tag[0] {
            TAG_EVENT if self.n_evidence == 0 => {
                self.n_events += 1;
                Ok(Some(Record::Event(bytes)))
            }
            TAG_EVENT => bail!("the backup holds an event after its evidence: it is damaged"),
            TAG_EVIDENCE => {
                self.n_evidence += 1;
                Ok(Some(Record::Evidence(bytes)))
            }
            other => bail!("the backup holds a record of unknown type {other}: it is damaged"),
        }
    }
}

fn cut_short(error: io::Error, what: &str) -> anyhow::Error {
    if error.kind() == io::ErrorKind::UnexpectedEof {
        anyhow::anyhow!("the backup ends in the middle of {what}: it was cut short (an interrupted copy?)")
    } else {
        anyhow::Error::new(error).context("reading the backup")
    }
}

/// What [`restore`] did.
#[derive(Debug)]
pub struct Restored {
    /// Events installed.
    pub n_events: u64,
    /// Evidence installed.
    pub n_evidence: u64,
    /// Where the store that was there before went, if there was one.
    pub moved_aside: Option<PathBuf>,
}

/// Installs the backup `file` as the store at `store_path` of the node `me` of `genesis`:
/// checks that the backup belongs to this cluster and key, validates every event again
/// (signatures included) and every piece of evidence, writes a new store marked
/// [`OwnHistory::Restored`] next to the old one, and only then swaps it in. A store already at
/// `store_path` is refused unless `replace`, which moves it aside (never deletes it). The
/// node must be stopped (its store is locked while it runs).
pub fn restore(
    file: &Path,
    genesis: &Genesis,
    me: cairn_crypto::PublicKey,
    store_path: &Path,
    replace: bool,
) -> anyhow::Result<Restored> {
    let input = fs::File::open(file).with_context(|| format!("cannot open the backup {}", file.display()))?;
    let mut reader =
        Reader::new(BufReader::new(input)).with_context(|| format!("the backup {}", file.display()))?;
    let cluster_id = genesis.cluster_id();
    if reader.cluster_id != cluster_id {
        bail!(
            "the backup {} is of cluster {}, this node's genesis is cluster {}: it is not this cluster's backup",
            file.display(),
            hex::encode(reader.cluster_id),
            hex::encode(cluster_id)
        );
    }
    if reader.node_key != me.0 {
        bail!(
            "the backup {} is of the node with key {}, this node's key is {}: restore each node's own backup",
            file.display(),
            hex::encode(reader.node_key),
            me
        );
    }
    let exists =
        store_path.try_exists().with_context(|| format!("cannot look at {}", store_path.display()))?;
    // Held until the new store is in place: a cairnd started meanwhile finds the old one in use.
    let _lock = if exists { Some(lock_stopped(store_path)?) } else { None };
    if exists && !replace {
        bail!(
            "a store exists at {}; stop cairnd and pass --replace to move it aside (it is kept, renamed) and \
             install the backup in its place",
            store_path.display()
        );
    }
    let staging = with_suffix(store_path, ".restoring");
    if staging.try_exists().unwrap_or(false) {
        bail!(
            "{} exists: another restore is running, or one was interrupted. If none is running, remove it and \
             restore again",
            staging.display()
        );
    }
    let result = write_staging(&mut reader, genesis, me, &staging, file);
    let (n_events, n_evidence) = match result {
        Ok(counts) => counts,
        Err(error) => {
            let _ = fs::remove_file(&staging);
            return Err(error);
        }
    };
    // The old store gets a second name first, then the new one replaces it in one rename: at
    // every instant a store is at `store_path`, so a crash in between can never leave the node
    // to start with a new, empty store (which `new_cluster = true` would mark complete).
    let moved_aside = if exists {
        let aside = with_suffix(store_path, &format!(".before-restore-{}", unix_seconds()));
        fs::hard_link(store_path, &aside)
            .with_context(|| format!("cannot keep {} as {}", store_path.display(), aside.display()))?;
        Some(aside)
    } else {
        None
    };
    fs::rename(&staging, store_path)
        .with_context(|| format!("cannot move {} to {}", staging.display(), store_path.display()))?;
    if let Some(dir) = store_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", dir.display()))?;
    }
    Ok(Restored { n_events, n_evidence, moved_aside })
}

/// Reads the whole backup into a new store at `staging`, validating as it goes.
fn write_staging(
    reader: &mut Reader<impl Read>,
    genesis: &Genesis,
    me: cairn_crypto::PublicKey,
    staging: &Path,
    file: &Path,
) -> anyhow::Result<(u64, u64)> {
    let (mut store, _) = Store::open_indexed(
        staging,
        genesis.cluster_id(),
        me.0,
        OwnHistory::Restored,
        &crate::store::member_keys(genesis),
    )
    .with_context(|| format!("cannot create {}", staging.display()))?;
    // Validation only: an observer replica checks every rule, signatures included.
    let mut node = Node::new(genesis.clone(), None, NodeConfig::default());
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut batch_bytes = 0;
    let mut evidence: Vec<Vec<u8>> = Vec::new();
    let mut n_events = 0u64;
    let mut flush = |batch: &mut Vec<Vec<u8>>, store: &mut Store, node: &mut Node| -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let rejected = node.restore(batch.clone());
        if let Some(first) = rejected.first() {
            bail!(
                "the backup {} holds {} event(s) that do not validate (first: {}, {}); it is refused",
                file.display(),
                rejected.len(),
                first.id.map_or_else(|| "an event that does not decode".to_owned(), |id| id.to_string()),
                first.reason
            );
        }
        // A backup holds a prefix of a store's log, in causal order: every event must have been
        // accepted, and each of its deps must come before it in the file. (A file that is not
        // in that order was not written by `cairnctl backup`; the store would refuse it.)
        let decoded: Vec<cairn_protocol::Event> = batch
            .iter()
            .map(|bytes| codec::decode_event(bytes))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("an event of the backup does not decode: {e}"))?;
        let ids: Vec<[u8; 32]> = decoded.iter().map(|e| e.id().0).collect();
        let position: std::collections::BTreeMap<[u8; 32], usize> =
            ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        for (i, event) in decoded.iter().enumerate() {
            if !node.adapter().is_accepted(&event.id()) {
                bail!(
                    "the backup {} holds event {} whose dependencies it does not hold; it is refused",
                    file.display(),
                    event.id()
                );
            }
            for dep in &event.header.deps {
                let before = match position.get(&dep.0) {
                    Some(j) => *j < i,
                    None => node.adapter().is_accepted(dep),
                };
                if !before {
                    bail!(
                        "the backup {} holds event {} before its dependency {}: it is not in causal order, and \
                         is refused",
                        file.display(),
                        event.id(),
                        dep
                    );
                }
            }
        }
        let events: Vec<([u8; 32], &[u8])> =
            ids.iter().copied().zip(batch.iter().map(Vec::as_slice)).collect();
        // Keys membership ops brought in are indexed as the replica indexed them.
        let later: Vec<[u8; 32]> = node.adapter().roster().later_keys().iter().map(|key| key.0).collect();
        store.extend_roster(&later);
        store.append(&events, &[], false).with_context(|| format!("cannot write {}", staging.display()))?;
        n_events += batch.len() as u64;
        batch.clear();
        Ok(())
    };
    while let Some(record) = reader.next_record().with_context(|| format!("the backup {}", file.display()))? {
        match record {
            Record::Event(bytes) => {
                batch_bytes += bytes.len();
                batch.push(bytes);
                if batch_bytes >= RESTORE_BATCH_BYTES {
                    flush(&mut batch, &mut store, &mut node)?;
                    batch_bytes = 0;
                }
            }
            Record::Evidence(bytes) => {
                flush(&mut batch, &mut store, &mut node)?;
                evidence.push(bytes);
            }
        }
    }
    flush(&mut batch, &mut store, &mut node)?;
    let mut filed: Vec<([u8; 32], Vec<u8>)> = Vec::new();
    for bytes in &evidence {
        let decoded = codec::decode_evidence(bytes).map_err(|e| {
            anyhow::anyhow!("the backup {} holds evidence that does not decode: {e}", file.display())
        })?;
        node.restore_evidence(decoded.clone()).map_err(|e| {
            anyhow::anyhow!("the backup {} holds evidence that does not verify: {e}", file.display())
        })?;
        filed.push((decoded.author().0, bytes.clone()));
    }
    let filed: Vec<([u8; 32], &[u8])> = filed.iter().map(|(a, b)| (*a, b.as_slice())).collect();
    store.append(&[], &filed, false).with_context(|| format!("cannot write {}", staging.display()))?;
    Ok((n_events, evidence.len() as u64))
}

/// Fails if a process holds the store at `path` open (redb locks the file with `flock` while a
/// cairnd runs on it).
pub fn ensure_stopped(path: &Path) -> anyhow::Result<()> {
    lock_stopped(path).map(drop)
}

/// As [`ensure_stopped`], and keeps the lock while the returned file is open: a cairnd started
/// meanwhile on this store refuses it as in use.
pub fn lock_stopped(path: &Path) -> anyhow::Result<fs::File> {
    let file = fs::OpenOptions::new()
        .read(true)
        .open(path)
        .with_context(|| format!("cannot open the store {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => bail!(
            "a cairnd is running on the store {}; stop it first (systemctl stop cairnd)",
            path.display()
        ),
        Err(fs::TryLockError::Error(e)) => {
            Err(anyhow::Error::new(e).context(format!("cannot lock the store {}", path.display())))
        }
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(events: &[Vec<u8>], evidence: &[Vec<u8>]) -> Vec<u8> {
        let (mut writer, mut bytes) = Writer::start([1; 32], [2; 32]);
        bytes.extend(writer.events(events));
        bytes.extend(writer.evidence(evidence));
        bytes.extend(writer.finish());
        bytes
    }

    fn read_all(bytes: &[u8]) -> anyhow::Result<Vec<Record>> {
        let mut reader = Reader::new(bytes)?;
        let mut records = Vec::new();
        while let Some(record) = reader.next_record()? {
            records.push(record);
        }
        Ok(records)
    }

    #[test]
    fn the_backup_slot_goes_to_one_stream_and_to_the_next_only_once_it_stalled() {
        let slot = BackupSlot::default();
        let t0 = std::time::Instant::now();
        let first = slot.take(t0).expect("a free slot");
        assert!(slot.take(t0).is_none(), "one backup at a time");
        // Moving on keeps it: a stall is counted from the last move.
        let later = t0 + BACKUP_STALL_MAX;
        assert!(slot.moved_on(first, later));
        assert!(slot.take(later + BACKUP_STALL_MAX / 2).is_none());
        // Stalled for BACKUP_STALL_MAX: the next backup takes the slot, and the first learns it.
        let second = slot.take(later + BACKUP_STALL_MAX).expect("a stalled holder gives way");
        assert_ne!(first, second);
        assert!(!slot.moved_on(first, later + BACKUP_STALL_MAX));
        // The first one's end frees nothing that is not its own.
        slot.release(first);
        assert!(slot.is_held());
        slot.release(second);
        assert!(!slot.is_held());
        assert!(slot.take(later).is_some());
    }

    #[tokio::test]
    async fn a_stream_that_lost_its_slot_ends_with_an_error_that_says_why() {
        let slot = std::sync::Arc::new(BackupSlot::default());
        // No store thread: a read would fail, but the lost slot is found first.
        let (store, _) = std::sync::mpsc::channel();
        let mut stalled = BackupStream::start(store.clone(), slot.clone()).expect("a free slot");
        assert!(BackupStream::start(store.clone(), slot.clone()).is_none());
        // As if it had stalled: the slot goes to another stream.
        let taker = slot.take(std::time::Instant::now() + BACKUP_STALL_MAX).expect("stalled");
        let error = stalled.next_chunk().await.expect("an item").expect_err("the slot is lost");
        assert!(error.contains("another backup took its place"), "{error}");
        drop(stalled);
        assert!(slot.is_held(), "the stalled stream's end leaves the new holder in place");
        slot.release(taker);
    }

    #[test]
    fn a_backup_reads_back_record_for_record() {
        let bytes = backup(&[vec![1, 2, 3], vec![4]], &[vec![9; 10]]);
        let mut reader = Reader::new(bytes.as_slice()).unwrap();
        assert_eq!((reader.cluster_id, reader.node_key), ([1; 32], [2; 32]));
        assert_eq!(reader.next_record().unwrap(), Some(Record::Event(vec![1, 2, 3])));
        assert_eq!(reader.next_record().unwrap(), Some(Record::Event(vec![4])));
        assert_eq!(reader.next_record().unwrap(), Some(Record::Evidence(vec![9; 10])));
        assert_eq!(reader.next_record().unwrap(), None);
        // The layout: magic, ids, records of 5 + n bytes, the end of 49 bytes.
        assert_eq!(bytes.len(), 80 + (5 + 3) + (5 + 1) + (5 + 10) + 49);
        assert_eq!(&bytes[..16], b"cairn-backup/v1\n");
    }

    #[test]
    fn every_cut_and_every_flipped_byte_is_refused() {
        let bytes = backup(&[vec![1, 2, 3], vec![4, 5]], &[vec![6]]);
        for len in 0..bytes.len() {
            assert!(read_all(&bytes[..len]).is_err(), "cut at {len} bytes was accepted");
        }
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x01;
            assert!(read_all(&damaged).is_err(), "a flipped bit in byte {i} was accepted");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(read_all(&longer).is_err(), "trailing bytes were accepted");
    }
}
