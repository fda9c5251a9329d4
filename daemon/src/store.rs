//! The node's durable store: accepted events in the order they were appended, indexed, and
//! the equivocation evidence it holds, in one redb file inside the data directory.
//!
//! The store is written once per group commit ([`Store::append`]: one write transaction, one
//! fsync), and read while the node runs: the node's archive (`crate::archive`) reads accepted
//! events back through [`reads`], so the node's memory does not grow with its history. A start
//! ([`Store::open_for_start`]) reads the chain states, the counters and the evidence, then the
//! persisted document ([`Store::load_document`]); the daemon replays only the log's tail that
//! the document has not applied. [`Store::open`] also returns every event (for tools and
//! tests).
//!
//! Layout (format [`FORMAT_VERSION`]), twelve redb tables:
//!
//! | table      | key                   | value                                  |
//! |------------|-----------------------|----------------------------------------|
//! | `meta`     | `&str`                | `"format"`, `"n_bytes"`, `"doc_through"`: u64 LE; `"cluster_id"`, `"node_key"`: 32 bytes; `"own_history"`: 1 byte, see [`OwnHistory`]; `"doc_exclusions"`: the document's exclusions (`Document::encode_exclusions`) |
//! | `log`      | u64 position, 0, 1, … | canonical event bytes, in append order  |
//! | `ids`      | 32-byte event id      | u64 position in `log`                  |
//! | `evidence` | 32-byte author key    | canonical evidence bytes (the newest)  |
//! | `metas`    | 32-byte event id      | the event's meta ([`encode_meta`]): author, seq, lamport, own predecessor, clock |
//! | `by_seq`   | (author index u32, seq u64, id) | nothing                      |
//! | `chains`   | author index u32      | the author's chain state ([`ChainState`]: tips, highest seq, fork seq) |
//! | `authors`  | author index u32      | (events, bytes) of the author in `log` |
//! | `doc`      | kind (0 register, 1 counter, 2 set) ‖ key | the key's document state (`Document::encode_key`) |
//! | `covered`  | op: event id ‖ op index u32 LE | the ops it covered, 36 bytes each (`Archive::covered`) |
//! | `roster`   | author index u32, from the genesis's member count on | a 32-byte key the node indexed after the genesis members (`Roster::later_keys`) |
//! | `member_events` | u64 position in `log` | nothing: the event there carries a membership op |
//!
//! Author indices are the node's roster's (`cairn_protocol::Roster`): the genesis members in
//! member order, then every key a membership op named, in the order the node indexed it. A
//! commit writes the keys indexed since the last one ([`Store::extend_roster`]) in the same
//! transaction as its events, and a start reads them back ([`Loaded::roster_later`]), with the
//! membership events ([`Loaded::member_events`]) that `Node::resume_membership` resolves.
//!
//! The document is written with the events it applied: each group commit carries the document's
//! changed keys, exclusions and covered records as they were when the commit was formed, after
//! every event from peers in it (its own events are applied once it is durable, so their changes
//! go with the next commit), and `doc_through` is the log's length after those events. A start
//! opens the document and replays `log` from `doc_through` on: at most one commit's own events.
//!
//! `ids` makes appending an event twice a no-op. The append order is a causal order because the
//! node only accepts an event after its dependencies. The store computes `metas`, `by_seq` and
//! `chains` itself as it appends each event, with the adapter's own rule
//! (`EventMeta::from_deps`), in the same transaction; or, for an event the node accepted
//! ([`Append::Accepted`]), from the meta the adapter computed, so that the store's thread
//! neither decodes the event again nor reads its deps' metas.
//!
//! # The node's own history
//!
//! `meta["own_history"]` says whether the store holds every event the node's key ever signed
//! ([`OwnHistory::Complete`]): only then may the node sign its next seq without first learning
//! its latest own seq from its peers. The mark is written in the same transaction as the first
//! own event the node signs after it learned its seq (the group commit sets
//! `own_history_complete` on every job that holds an event signed in this process, and such a
//! job also holds every event accepted before it), so a crash can never leave a store marked
//! complete that lacks part of the node's own chain. A store created for a node that joins a
//! running cluster starts [`OwnHistory::Unknown`], a restored backup is
//! [`OwnHistory::Restored`], and `cairnd relearn-own-seq` marks a store rolled back by other
//! means [`OwnHistory::RolledBack`].
//!
//! # Versions
//!
//! Format 1 (cairnd up to commit 031c76c) had no `own_history`, format 2 no indexes, and format 3
//! (up to commit 84478ff) no persisted document. All are upgraded in place on the first open:
//! the indexes are built from the log, in transactions of [`REINDEX_BATCH`] events, and the
//! last one writes this format's meta with `doc_through` 0, so the start replays the whole log
//! into the document once, persisting it page by page. A
//! format-1 store becomes [`OwnHistory::Unknown`] (format 1 trusted any store holding an own
//! event, which a crash while relearning made unsafe; a sole member's becomes complete).
//! Format 4 (up to commit bbfb13e) had no `roster` and no `member_events`; its upgrade only
//! creates them, empty, and writes the new format (no cairnd of format 4 accepted a membership
//! op). Format 5 (up to commit 453d622) has this layout, but its document entries never carry a
//! seen clock (an op with a client's causal context); its upgrade only writes the new format, so
//! that an older cairnd refuses a store it could not read. A store of a later format is refused.
//!
//! A corrupt store is refused, never used: redb checks its pages' checksums, the tables must
//! agree in size (and `authors` with `log`), every document key must decode, and a start reads
//! the log's tail back, checking each event against `ids`, `metas` and `by_seq`. A start no
//! longer reads the whole log (that is what keeps it bounded by the live document): it does
//! not check signatures, chain states or the document against the log again; `cairnd
//! check-store` does all of that offline.
//!
//! # A full file system
//!
//! A commit that fails because the file system is full (`ENOSPC`, `EDQUOT`) is reported as
//! [`StoreError::NoSpace`], and the store stays usable. What redb 4 does after a failed commit:
//! the first failed file operation latches an I/O failure flag, and every later operation of
//! that `Database` fails with `PreviousIo` until it is dropped and opened again; the drop leaves
//! no clean-shutdown mark, so the next open recovers the file. Commits are two-phase: the new
//! commit slot is written and synced first, and only then is the primary flag switched and
//! synced; a primary written by a two-phase commit is used as it is, and the other slot is never
//! considered. So a commit that fails before its switch reached the file is not durable and can
//! never surface later; only one that fails in the last sync, after writing the switch, may have
//! landed. The store therefore closes the database after such a failure, opens it again at once
//! (recovery writes only the header page, which needs no new space) and counts what it holds:
//! exactly the events it held before means the batch was not stored, which
//! [`StoreError::NoSpace`] promises; every event of the batch present means the commit landed
//! after all, and `append` succeeds. Anything else, or a reopen that fails, is a fatal
//! [`StoreError::Io`].

use std::cell::Cell;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use cairn_crypto::PublicKey;
use cairn_protocol::document::{Covered, Document, KeyKind, OpId};
use cairn_protocol::event::ops_hash;
use cairn_protocol::{ChainState, DocumentDelta, EventId, EventMeta, Verified, codec};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

/// The layout version in `meta["format"]`. Bump it when the layout changes; a store with
/// another version is refused with [`StoreError::Format`].
pub const FORMAT_VERSION: u64 = 6;

/// The format before `own_history`, upgraded in place on open.
const FORMAT_WITHOUT_OWN_HISTORY: u64 = 1;
/// The format before the indexes (`metas`, `by_seq`, `chains`), upgraded in place on open.
const FORMAT_WITHOUT_INDEXES: u64 = 2;
/// The format before the persisted document (`doc`, `covered`, `authors`), upgraded in place
/// on open: its indexes are built again, and the first start replays the log into the document
/// once and persists it.
const FORMAT_WITHOUT_DOCUMENT: u64 = 3;
/// The format before membership changes (`roster`, `member_events`), upgraded in place on open
/// by creating those two tables, empty: no cairnd of that format accepted a membership op.
const FORMAT_WITHOUT_MEMBERSHIP: u64 = 4;
/// The format before causal contexts: the layout is the same, but from format 6 on a persisted
/// document entry may carry a seen clock (`cairn_protocol::document`'s persisted layout), which
/// a cairnd of format 5 would take for a corrupt store. Upgraded in place by writing the format.
const FORMAT_WITHOUT_CONTEXTS: u64 = 5;
/// Events indexed per transaction when an upgrade builds the indexes.
const REINDEX_BATCH: u64 = 50_000;

/// redb's page cache: the b-tree paths that appends and the node's reads touch (the right edge
/// of `log` and `by_seq`, the inner pages of `ids`, `metas`, `doc` and `covered`, recent
/// events). It bounds the store's share of the node's memory whatever the history's length.
const CACHE_BYTES: usize = 64 << 20;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const IDS: TableDefinition<&[u8; 32], u64> = TableDefinition::new("ids");
const EVIDENCE: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("evidence");
const METAS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("metas");
const BY_SEQ: TableDefinition<(u32, u64, [u8; 32]), ()> = TableDefinition::new("by_seq");
const CHAINS: TableDefinition<u32, &[u8]> = TableDefinition::new("chains");
const AUTHORS: TableDefinition<u32, (u64, u64)> = TableDefinition::new("authors");
const DOC: TableDefinition<&[u8], &[u8]> = TableDefinition::new("doc");
const COVERED: TableDefinition<&[u8; 36], &[u8]> = TableDefinition::new("covered");
const ROSTER: TableDefinition<u32, &[u8; 32]> = TableDefinition::new("roster");
const MEMBER_EVENTS: TableDefinition<u64, ()> = TableDefinition::new("member_events");
const META_DOC_THROUGH: &str = "doc_through";
const META_DOC_EXCLUSIONS: &str = "doc_exclusions";
const META_N_BYTES: &str = "n_bytes";

const META_FORMAT: &str = "format";
const META_CLUSTER_ID: &str = "cluster_id";
const META_NODE_KEY: &str = "node_key";
const META_OWN_HISTORY: &str = "own_history";

/// What a store knows of the events its node's key has signed: whether the node may sign its
/// next seq from the store alone, or must first learn its latest own seq from its peers (own-seq
/// safety). See the module docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OwnHistory {
    /// The store holds every event the node's key has signed.
    Complete,
    /// The store may lack some own events: made for a node that joined a running cluster (or
    /// whose store was lost), and no own event was signed on it since.
    #[default]
    Unknown,
    /// Installed from a backup by `cairnd restore`: events the node signed after the backup are
    /// missing.
    Restored,
    /// Marked by `cairnd relearn-own-seq`: the disk was rolled back (a VM snapshot, a file
    /// system snapshot, a copy put back by hand).
    RolledBack,
}

impl OwnHistory {
    /// The byte in `meta["own_history"]`.
    fn to_byte(self) -> u8 {
        match self {
            Self::Unknown => 0,
            Self::Complete => 1,
            Self::Restored => 2,
            Self::RolledBack => 3,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => Self::Unknown,
            1 => Self::Complete,
            2 => Self::Restored,
            3 => Self::RolledBack,
            _ => return None,
        })
    }

    /// Why a node must learn its own seq from its peers, in words for its log and status;
    /// `None` when it need not.
    pub fn why_learn(self) -> Option<&'static str> {
        match self {
            Self::Complete => None,
            Self::Unknown => {
                Some("this node's store may lack events it signed (it was made empty for a running cluster)")
            }
            Self::Restored => {
                Some("this node's store was restored from a backup and lacks what the node signed since")
            }
            Self::RolledBack => Some("this node's store was marked rolled back (cairnd relearn-own-seq)"),
        }
    }
}

/// What the store held when it was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Canonical event bytes in the order they were appended, a causal order.
    pub events: Vec<Vec<u8>>,
    /// The id of each event, in the same order (computed while checking the store).
    pub ids: Vec<[u8; 32]>,
    /// Canonical evidence encodings, one per equivocating author, in author key order.
    pub evidence: Vec<Vec<u8>>,
    /// Whether the store holds every event of the node's own key.
    pub own_history: OwnHistory,
    /// Each member's chain state, in member order.
    pub chains: Vec<ChainState>,
    /// Events in the log.
    pub n_events: u64,
    /// Their encoded bytes.
    pub n_bytes: u64,
    /// The format the store had before this open upgraded it, if it did.
    pub upgraded_from: Option<u64>,
    /// Per member, in member order: events in the log and their bytes.
    pub authors: Vec<(u64, u64)>,
    /// How many events of the log, from the first, the persisted document has applied.
    pub doc_through: u64,
    /// The keys the node's roster indexes after the genesis members, in index order
    /// (`Roster::with_later`): the author indices of `chains`, `authors`, the metas and the
    /// persisted document mean the genesis members, then these.
    pub roster_later: Vec<[u8; 32]>,
    /// The log positions of the events that carry membership ops, in log order: what
    /// `Node::resume_membership` reads back at a start.
    pub member_events: Vec<u64>,
}

/// One event for [`Store::append_events`].
#[derive(Clone, Copy, Debug)]
pub enum Append<'a> {
    /// An event's id and canonical bytes: decoded, checked against the id, and indexed from
    /// its deps' stored metas (`EventMeta::from_deps`).
    Bytes([u8; 32], &'a [u8]),
    /// An event this node's adapter accepted: the proof of validation carries the decoded
    /// event, its id, its bytes and its meta, which are indexed as they are.
    Accepted(&'a Verified),
}

impl<'a> Append<'a> {
    /// The event's id.
    pub fn id(&self) -> [u8; 32] {
        match self {
            Self::Bytes(id, _) => *id,
            Self::Accepted(event) => event.id().0,
        }
    }

    /// The event's canonical bytes.
    pub fn bytes(&self) -> &'a [u8] {
        match self {
            Self::Bytes(_, bytes) => bytes,
            Self::Accepted(event) => event.bytes(),
        }
    }
}

/// One event of a commit, checked before the write transaction starts: decoded from its bytes
/// (and checked against its id), or accepted by the node's adapter.
#[expect(
    clippy::large_enum_variant,
    reason = "held one per event of a commit, for the write only: boxing the event would add an allocation \
              per decoded event and save nothing for the accepted ones"
)]
enum Checked<'a> {
    /// Given as bytes, and decoded here: indexed from its deps' stored metas.
    Decoded { id: [u8; 32], bytes: &'a [u8], event: cairn_protocol::Event },
    /// Accepted: indexed from its proof of validation.
    Accepted(&'a Verified),
}

impl<'a> Checked<'a> {
    /// Decodes an event given as bytes; a node hands over only events it made or accepted, so
    /// one that does not decode or does not match its id is a bug, and panics.
    fn new(event: &Append<'a>) -> Self {
        match *event {
            Append::Bytes(id, bytes) => Self::Decoded { id, bytes, event: assert_event(&id, bytes) },
            Append::Accepted(event) => Self::Accepted(event),
        }
    }

    fn id(&self) -> [u8; 32] {
        match self {
            Self::Decoded { id, .. } => *id,
            Self::Accepted(event) => event.id().0,
        }
    }

    fn bytes(&self) -> &'a [u8] {
        match self {
            Self::Decoded { bytes, .. } => bytes,
            Self::Accepted(event) => event.bytes(),
        }
    }
}

/// The document's part of a commit ([`Store::append_with_document`]).
#[derive(Clone, Copy, Debug)]
pub struct DocumentCommit<'a> {
    /// What changed in the document.
    pub delta: &'a DocumentDelta,
    /// How many of the commit's events, from the first, the document had applied when the
    /// delta was taken (the events from peers: a commit's own events are applied once it is
    /// durable, and so land in the next delta).
    pub n_applied: usize,
}

/// Why the store could not be opened or written. Every message names the file and says what
/// to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store was created for another cluster.
    #[error(
        "the store at {path} belongs to cluster {}, this node's genesis is cluster {}; point \
         data_dir at the right directory, or move the old store away",
        hex::encode(.stored),
        hex::encode(.expected)
    )]
    OtherCluster {
        /// The store file.
        path: PathBuf,
        /// The cluster id in the store.
        stored: [u8; 32],
        /// This node's cluster id (from its genesis).
        expected: [u8; 32],
    },
    /// The store was written by a node with another key.
    #[error(
        "the store at {path} was written by node key {}, this node's key is {}; start the node \
         with the key that wrote the store, or point data_dir at this key's own directory, or \
         move the old store away",
        hex::encode(.stored),
        hex::encode(.expected)
    )]
    OtherKey {
        /// The store file.
        path: PathBuf,
        /// The node key in the store.
        stored: [u8; 32],
        /// This node's key.
        expected: [u8; 32],
    },
    /// The store has a layout version this build does not read.
    #[error(
        "the store at {path} has {found}, but this cairnd reads store format {FORMAT_VERSION}; run \
         the cairnd version that wrote it, or move the store away and let the node catch up \
         from its peers"
    )]
    Format {
        /// The store file.
        path: PathBuf,
        /// The version found, in words.
        found: String,
    },
    /// The file is not a Cairn store, or it failed an integrity check.
    #[error(
        "the store at {path} is corrupt or not a Cairn store ({detail}); it is refused, not used. \
         Move it away and restart: the node then catches up from its peers, and own-seq safety \
         makes it learn its own last seq before it writes again (first remove `new_cluster = true` \
         from the config if it is still there: it would mark the new, empty store as complete)"
    )]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// What did not check out.
        detail: String,
    },
    /// Another process (or another handle in this one) has the store open.
    #[error(
        "another cairnd is using the store at {path}; stop it first, or give each node its own \
         data_dir"
    )]
    InUse {
        /// The store file.
        path: PathBuf,
    },
    /// The store file or its directory could not be opened or created.
    #[error(
        "cannot open the store at {path}: {detail}; check that the data directory exists or can \
         be created, is on a writable file system, and belongs to the user cairnd runs as"
    )]
    Access {
        /// The store file.
        path: PathBuf,
        /// What the file system said.
        detail: String,
    },
    /// The file system holding the store is full. The batch was not stored (the store checked
    /// by reopening the file), nothing stored before was lost, and the store takes writes again
    /// once there is space.
    #[error(
        "the file system holding the data directory {} is full (writing the store at {path} \
         failed: {detail}); this write was not stored. Free space there or grow the file system: \
         writes succeed again by themselves, without a restart, and nothing acknowledged was lost",
        parent_dir(.path).display()
    )]
    NoSpace {
        /// The store file.
        path: PathBuf,
        /// What the file system said.
        detail: String,
    },
    /// A write failed. The store refuses every later write from this process.
    #[error(
        "writing the store at {path} failed: {detail}; this process can no longer write to it, so \
         cairnd must restart (what was committed before is safe; the failed write was not \
         acknowledged, though it may turn out to be stored after the restart)"
    )]
    Io {
        /// The store file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

/// The node's durable store: one redb database. See the module documentation for the layout.
pub struct Store {
    /// `None` only after a write failed and the database could not be opened again (`failed`).
    /// Shared with the node's [`crate::archive::StoreArchive`], which reads accepted events
    /// from it: a reopen takes the write lock, so it waits for reads under way.
    db: SharedDb,
    path: PathBuf,
    /// Entries in `log`; the next event goes to this position.
    n_events: u64,
    /// Set when a write failed for another reason than a full file system, or the store could
    /// not tell whether it was stored: this store then refuses every later write without
    /// touching the file again.
    failed: bool,
    /// Whether the open rolled back a last commit that did not verify.
    rolled_back: bool,
    /// `meta["own_history"]` as last committed.
    own_history: OwnHistory,
    cluster_id: [u8; 32],
    node_key: [u8; 32],
    /// The roster (`cairn_protocol::Roster`): the genesis members' keys in member order, then
    /// the keys membership ops named, in the order the node indexed them. An event's author
    /// index.
    members: Vec<[u8; 32]>,
    /// How many of `members` are the genesis's.
    n_genesis: usize,
    /// How many of `members` are in `roster` (or the genesis), as last committed.
    roster_stored: usize,
    /// A new node key to write with the next commit (a key rotation's, see
    /// [`Store::rotate_node_key`]).
    next_node_key: Option<[u8; 32]>,
    /// Each member's chain state, as last committed (see [`ChainState`]).
    chains: Vec<ChainState>,
    /// Encoded bytes of the events in `log`.
    n_bytes: u64,
    /// Per member: events in `log` and their bytes, as last committed.
    authors: Vec<(u64, u64)>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("n_events", &self.n_events)
            .field("failed", &self.failed)
            .field("rolled_back", &self.rolled_back)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens or creates the store at `path` (a file inside the data directory) for this
    /// cluster and this node key, and returns everything it holds: [`Store::open_indexed`],
    /// then every event read and checked against `log` and `ids`. For checks and tools; the
    /// daemon itself opens with [`Store::open_indexed`], which reads no event.
    pub fn open(
        path: &Path,
        cluster_id: [u8; 32],
        node_key: [u8; 32],
        new_store: OwnHistory,
        members: &[[u8; 32]],
    ) -> Result<(Self, Loaded), StoreError> {
        let (mut store, mut loaded) = Self::open_indexed(path, cluster_id, node_key, new_store, members)?;
        let full = store.load()?;
        loaded.events = full.events;
        loaded.ids = full.ids;
        Ok((store, loaded))
    }

    /// Opens or creates the store at `path` for this cluster, this node key and these members
    /// (the genesis's keys, in member order), without reading its events: what a start needs.
    ///
    /// A missing parent directory is created. A new store records `cluster_id`, `node_key` and
    /// `new_store` as what it knows of the node's own events ([`OwnHistory::Complete`] only for
    /// a brand-new cluster or a sole member: nobody else can hold an event of the node); an
    /// existing one must have been created with the same two keys, else it is refused. A store
    /// of format 1 or 2 is upgraded in place (its indexes are built from its log, once). Every
    /// page checksum is verified (redb reads the whole file once), the tables must agree in
    /// size, and the chain states and evidence are read; [`Loaded::events`] stays empty.
    pub fn open_indexed(
        path: &Path,
        cluster_id: [u8; 32],
        node_key: [u8; 32],
        new_store: OwnHistory,
        members: &[[u8; 32]],
    ) -> Result<(Self, Loaded), StoreError> {
        Self::open_for_start(path, cluster_id, node_key, new_store, members, PageCheck::Every)
    }

    /// [`Store::open_indexed`] as the daemon starts: redb verifies every page checksum only when
    /// the file was not closed cleanly (its crash recovery does, and must read the whole file to
    /// rebuild its allocator state anyway); after a clean stop the open reads only the pages it
    /// uses, so a start costs the live document, not the history. What is read later is still
    /// checked: every event read back must match its id (`reads`), and `cairnd check-store`
    /// verifies every page. Set `verify_store_on_start` to verify every page at each start.
    pub fn open_for_start(
        path: &Path,
        cluster_id: [u8; 32],
        node_key: [u8; 32],
        new_store: OwnHistory,
        members: &[[u8; 32]],
        pages: PageCheck,
    ) -> Result<(Self, Loaded), StoreError> {
        create_dir_durably(parent_dir(path)).map_err(|e| access(path, &e))?;
        let (db, rolled_back) = open_database(path, OpenMode::Create, pages)?;
        if rolled_back {
            // Commits are two-phase (see `append`), so redb falls back to the commit before only
            // when the last one was torn by a crash before it returned: that write was never
            // acknowledged. A committed one damaged later is refused as corrupt instead.
            tracing::warn!(
                path = %path.display(),
                "the store's last commit was torn by a crash and rolled back; it had not been acknowledged"
            );
        }

        let mut store = Self {
            db: Arc::new(RwLock::new(Some(db))),
            path: path.to_owned(),
            n_events: 0,
            failed: false,
            rolled_back,
            own_history: new_store,
            cluster_id,
            node_key,
            members: members.to_vec(),
            n_genesis: members.len(),
            roster_stored: members.len(),
            next_node_key: None,
            chains: vec![ChainState::default(); members.len()],
            n_bytes: 0,
            authors: vec![(0, 0); members.len()],
        };
        let found = store.check_meta(cluster_id, node_key)?;
        let mut upgraded_from = None;
        match found {
            Found::New => store.write_meta(cluster_id, node_key, new_store)?,
            Found::Current(_) => {}
            Found::Old { format: FORMAT_WITHOUT_MEMBERSHIP, .. } => {
                store.add_membership_tables()?;
                upgraded_from = Some(FORMAT_WITHOUT_MEMBERSHIP);
                tracing::info!(
                    path = %path.display(),
                    from = FORMAT_WITHOUT_MEMBERSHIP,
                    to = FORMAT_VERSION,
                    "upgraded the store's format in place (two empty tables for membership changes)"
                );
            }
            Found::Old { format: FORMAT_WITHOUT_CONTEXTS, .. } => {
                store.write_format()?;
                upgraded_from = Some(FORMAT_WITHOUT_CONTEXTS);
                tracing::info!(
                    path = %path.display(),
                    from = FORMAT_WITHOUT_CONTEXTS,
                    to = FORMAT_VERSION,
                    "upgraded the store's format in place (the same layout; document entries may now carry causal contexts)"
                );
            }
            Found::Old { format, own_history } => {
                let own_history = store.reindex(own_history)?;
                upgraded_from = Some(format);
                tracing::info!(
                    path = %path.display(),
                    from = format,
                    to = FORMAT_VERSION,
                    own_history = ?own_history,
                    events = store.n_events,
                    "upgraded the store's format in place (its indexes were built from its log)"
                );
            }
        }
        let mut loaded = store.load_indexed()?;
        loaded.upgraded_from = upgraded_from;
        Ok((store, loaded))
    }

    /// The cluster the store belongs to.
    pub fn cluster_id(&self) -> [u8; 32] {
        self.cluster_id
    }

    /// The key of the node the store belongs to.
    pub fn node_key(&self) -> [u8; 32] {
        self.node_key
    }

    /// What the store knows of the node's own events, as last committed.
    pub fn own_history(&self) -> OwnHistory {
        self.own_history
    }

    /// Records what the store knows of the node's own events, durably, in a transaction of its
    /// own: for `cairnd relearn-own-seq` and `cairnd restore`. (The group commit marks a store
    /// complete inside the transaction of an own event instead, see [`Store::append`].)
    pub fn set_own_history(&mut self, own_history: OwnHistory) -> Result<(), StoreError> {
        if self.failed {
            return Err(self.io_error("an earlier write failed".to_owned()));
        }
        let fail = |e: redb::Error| redb_error(&self.path, e, Stage::Write);
        let mut tx = self.db()?.begin_write().map_err(|e| fail(e.into()))?;
        tx.set_two_phase_commit(true);
        {
            let mut meta = tx.open_table(META).map_err(|e| fail(e.into()))?;
            meta.insert(META_OWN_HISTORY, [own_history.to_byte()].as_slice()).map_err(|e| fail(e.into()))?;
        }
        tx.commit().map_err(|e| fail(e.into()))?;
        self.own_history = own_history;
        Ok(())
    }

    /// Upgrades a store of format 5 in place: writes this format, in a transaction of its own.
    fn write_format(&mut self) -> Result<(), StoreError> {
        let fail = |e: redb::Error| redb_error(&self.path, e, Stage::Open);
        let mut tx = self.db()?.begin_write().map_err(|e| fail(e.into()))?;
        tx.set_two_phase_commit(true);
        {
            let mut meta = tx.open_table(META).map_err(|e| fail(e.into()))?;
            meta.insert(META_FORMAT, FORMAT_VERSION.to_le_bytes().as_slice()).map_err(|e| fail(e.into()))?;
        }
        tx.commit().map_err(|e| fail(e.into()))
    }

    /// Upgrades a store of format 4 in place: creates `roster` and `member_events`, empty (no
    /// cairnd of format 4 accepted a membership op, so it indexes the genesis members only and
    /// no event of its log carries one), and writes this format, in one transaction. Nothing
    /// else is read or written.
    fn add_membership_tables(&mut self) -> Result<(), StoreError> {
        let fail = |e: redb::Error| redb_error(&self.path, e, Stage::Open);
        let mut tx = self.db()?.begin_write().map_err(|e| fail(e.into()))?;
        tx.set_two_phase_commit(true);
        tx.open_table(ROSTER).map_err(|e| fail(e.into()))?;
        tx.open_table(MEMBER_EVENTS).map_err(|e| fail(e.into()))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| fail(e.into()))?;
            meta.insert(META_FORMAT, FORMAT_VERSION.to_le_bytes().as_slice()).map_err(|e| fail(e.into()))?;
        }
        tx.commit().map_err(|e| fail(e.into()))
    }

    /// Follows the node's roster: `later` is `Roster::later_keys` (the keys indexed after the
    /// genesis members, in index order), which only ever grows. The new keys are written with
    /// the next commit, ahead of its events (whose author indices may name them).
    ///
    /// # Panics
    ///
    /// If `later` does not extend the keys the store indexes: the node's roster never drops or
    /// reorders a key, so that is a bug.
    pub fn extend_roster(&mut self, later: &[[u8; 32]]) {
        let known = &self.members[self.n_genesis..];
        assert!(
            later.len() >= known.len() && later[..known.len()] == *known,
            "the roster handed to the store does not extend the one it indexes"
        );
        for key in &later[known.len()..] {
            self.members.push(*key);
            self.chains.push(ChainState::default());
            self.authors.push((0, 0));
        }
    }

    /// Records `key` as the node's key with the next commit, in the same transaction as the
    /// event that rotates the node's old key to it (`docs/PROTOCOL.md` §17): from then on the
    /// store is opened with the new key, and refused with the old one.
    pub fn rotate_node_key(&mut self, key: [u8; 32]) {
        self.next_node_key = Some(key);
    }

    /// The keys the store indexes after the genesis members, in index order (see
    /// [`Store::extend_roster`]).
    pub fn roster_later(&self) -> &[[u8; 32]] {
        &self.members[self.n_genesis..]
    }

    /// Builds the indexes of a store of an older format from its log, in transactions of
    /// [`REINDEX_BATCH`] events, then writes this format's meta: the node's own history is
    /// `own_history`, or for format 1 (which had no mark) that format's rule, complete if the
    /// store holds an own event. A crash in the middle leaves the old format, and the next open
    /// starts over. Returns the own history written.
    fn reindex(&mut self, own_history: Option<OwnHistory>) -> Result<OwnHistory, StoreError> {
        let path = self.path.clone();
        let fail = |e: redb::Error| redb_error(&path, e, Stage::Open);
        {
            let db = self.db()?;
            let tx = db.begin_write().map_err(|e| fail(e.into()))?;
            tx.delete_table(METAS).map_err(|e| fail(e.into()))?;
            tx.delete_table(BY_SEQ).map_err(|e| fail(e.into()))?;
            tx.delete_table(CHAINS).map_err(|e| fail(e.into()))?;
            tx.delete_table(AUTHORS).map_err(|e| fail(e.into()))?;
            tx.delete_table(DOC).map_err(|e| fail(e.into()))?;
            tx.delete_table(COVERED).map_err(|e| fail(e.into()))?;
            tx.delete_table(ROSTER).map_err(|e| fail(e.into()))?;
            tx.delete_table(MEMBER_EVENTS).map_err(|e| fail(e.into()))?;
            tx.open_table(ROSTER).map_err(|e| fail(e.into()))?;
            tx.open_table(MEMBER_EVENTS).map_err(|e| fail(e.into()))?;
            tx.open_table(METAS).map_err(|e| fail(e.into()))?;
            tx.open_table(BY_SEQ).map_err(|e| fail(e.into()))?;
            tx.open_table(CHAINS).map_err(|e| fail(e.into()))?;
            tx.open_table(AUTHORS).map_err(|e| fail(e.into()))?;
            tx.open_table(DOC).map_err(|e| fail(e.into()))?;
            tx.open_table(COVERED).map_err(|e| fail(e.into()))?;
            tx.commit().map_err(|e| fail(e.into()))?;
        }
        let mut chains = vec![ChainState::default(); self.members.len()];
        let mut authors = vec![(0u64, 0u64); self.members.len()];
        let mut dirty = std::collections::BTreeSet::new();
        let mut n_bytes = 0u64;
        let mut position = 0u64;
        loop {
            let db = self.db()?;
            let mut tx = db.begin_write().map_err(|e| fail(e.into()))?;
            tx.set_two_phase_commit(true);
            let batch: Vec<(u64, Vec<u8>)> = {
                let log = tx.open_table(LOG).map_err(|e| fail(e.into()))?;
                log.range(position..position + REINDEX_BATCH)
                    .map_err(|e| fail(e.into()))?
                    .map(|entry| entry.map(|(p, b)| (p.value(), b.value().to_vec())))
                    .collect::<Result<_, _>>()
                    .map_err(|e| fail(e.into()))?
            };
            if batch.is_empty() {
                break;
            }
            {
                let ids = tx.open_table(IDS).map_err(|e| fail(e.into()))?;
                let mut indexes = Indexes::open(&tx).map_err(&fail)?;
                for (at, bytes) in &batch {
                    if *at != position {
                        return Err(corrupt(&path, format!("`log` entry {position} is at position {at}")));
                    }
                    let event = codec::decode_event(bytes)
                        .map_err(|e| corrupt(&path, format!("event {at} does not decode: {e}")))?;
                    let id = event.id();
                    match ids.get(&id.0).map_err(|e| fail(e.into()))? {
                        Some(found) if found.value() == *at => {}
                        _ => {
                            return Err(corrupt(
                                &path,
                                format!("event {at} (id {id}) is not filed in `ids` at {at}"),
                            ));
                        }
                    }
                    match indexes.index(&self.members, &mut chains, &mut dirty, (*at, &id.0), &event) {
                        Ok(author) => {
                            authors[author].0 += 1;
                            authors[author].1 += bytes.len() as u64;
                        }
                        Err(IndexError::Redb(e)) => return Err(fail(e)),
                        Err(IndexError::Bad(detail)) => return Err(corrupt(&path, detail)),
                    }
                    n_bytes += bytes.len() as u64;
                    position += 1;
                }
            }
            tx.commit().map_err(|e| fail(e.into()))?;
        }
        let own_idx = self.members.iter().position(|k| *k == self.node_key);
        let own_history = own_history.unwrap_or_else(|| {
            // Format 1 trusted any store holding an own event with the own seq, which a crash
            // while relearning it made unsafe: nothing in such a store says whether it holds the
            // whole own chain. It learns its seq once from its peers, unless it has none.
            if self.members.len() <= 1 && own_idx.is_some() {
                OwnHistory::Complete
            } else {
                OwnHistory::Unknown
            }
        });
        {
            let db = self.db()?;
            let mut tx = db.begin_write().map_err(|e| fail(e.into()))?;
            tx.set_two_phase_commit(true);
            {
                let mut table = tx.open_table(CHAINS).map_err(|e| fail(e.into()))?;
                for (author, chain) in chains.iter().enumerate() {
                    let author32 = u32::try_from(author).expect("a member index fits u32");
                    table.insert(author32, encode_chain(chain).as_slice()).map_err(|e| fail(e.into()))?;
                }
                let mut table = tx.open_table(AUTHORS).map_err(|e| fail(e.into()))?;
                for (author, tally) in authors.iter().enumerate() {
                    let author32 = u32::try_from(author).expect("a member index fits u32");
                    table.insert(author32, *tally).map_err(|e| fail(e.into()))?;
                }
                let mut meta = tx.open_table(META).map_err(|e| fail(e.into()))?;
                meta.insert(META_N_BYTES, n_bytes.to_le_bytes().as_slice()).map_err(|e| fail(e.into()))?;
                // The document is replayed from the whole log at the next start, and persisted.
                meta.insert(META_DOC_THROUGH, 0u64.to_le_bytes().as_slice()).map_err(|e| fail(e.into()))?;
                meta.remove(META_DOC_EXCLUSIONS).map_err(|e| fail(e.into()))?;
                meta.insert(META_OWN_HISTORY, [own_history.to_byte()].as_slice())
                    .map_err(|e| fail(e.into()))?;
                meta.insert(META_FORMAT, FORMAT_VERSION.to_le_bytes().as_slice())
                    .map_err(|e| fail(e.into()))?;
            }
            tx.commit().map_err(|e| fail(e.into()))?;
        }
        self.n_events = position;
        Ok(own_history)
    }

    /// Reads what a start needs and checks that the tables agree: the chain states, the
    /// counters, the own-history mark and the evidence; no event.
    fn load_indexed(&mut self) -> Result<Loaded, StoreError> {
        let path = self.path.clone();
        let fail = |e: redb::Error| redb_error(&path, e, Stage::Open);
        let open_error = |e: redb::TableError| match e {
            redb::TableError::TableDoesNotExist(name) => {
                corrupt(&path, format!("the `{name}` table is missing"))
            }
            e => fail(e.into()),
        };
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| fail(e.into()))?;
        let n_events = tx.open_table(LOG).map_err(open_error)?.len().map_err(|e| fail(e.into()))?;
        let n_ids = tx.open_table(IDS).map_err(open_error)?.len().map_err(|e| fail(e.into()))?;
        let n_metas = tx.open_table(METAS).map_err(open_error)?.len().map_err(|e| fail(e.into()))?;
        let n_by_seq = tx.open_table(BY_SEQ).map_err(open_error)?.len().map_err(|e| fail(e.into()))?;
        // The document's tables are read by `load_document`; they must exist.
        tx.open_table(DOC).map_err(open_error)?;
        tx.open_table(COVERED).map_err(open_error)?;
        let mut members = self.members[..self.n_genesis].to_vec();
        for entry in tx.open_table(ROSTER).map_err(open_error)?.iter().map_err(|e| fail(e.into()))? {
            let (idx, key) = entry.map_err(|e| fail(e.into()))?;
            let (idx, key) = (idx.value() as usize, *key.value());
            if idx != members.len() {
                return Err(corrupt(
                    &path,
                    format!("`roster` has key index {idx} where index {} comes next", members.len()),
                ));
            }
            if members.contains(&key) {
                return Err(corrupt(&path, format!("`roster` indexes key {} twice", hex::encode(key))));
            }
            members.push(key);
        }
        let member_events: Vec<u64> = tx
            .open_table(MEMBER_EVENTS)
            .map_err(open_error)?
            .iter()
            .map_err(|e| fail(e.into()))?
            .map(|entry| entry.map(|(position, _)| position.value()))
            .collect::<Result<_, _>>()
            .map_err(|e| fail(e.into()))?;
        if member_events.last().is_some_and(|&last| last >= n_events) {
            return Err(corrupt(&path, "`member_events` names a position past the log".to_owned()));
        }
        let mut authors = vec![(0u64, 0u64); members.len()];
        for entry in tx.open_table(AUTHORS).map_err(open_error)?.iter().map_err(|e| fail(e.into()))? {
            let (author, tally) = entry.map_err(|e| fail(e.into()))?;
            let author = author.value() as usize;
            *authors.get_mut(author).ok_or_else(|| {
                corrupt(&path, format!("an author tally for member {author}, who is not one"))
            })? = tally.value();
        }
        if authors.iter().map(|(n, _)| n).sum::<u64>() != n_events {
            return Err(corrupt(
                &path,
                format!("`authors` does not add up to the {n_events} events of `log`"),
            ));
        }
        if n_ids != n_events || n_metas != n_events || n_by_seq != n_events {
            return Err(corrupt(
                &path,
                format!(
                    "`log` has {n_events} events but `ids` {n_ids}, `metas` {n_metas} and `by_seq` {n_by_seq}"
                ),
            ));
        }
        let mut chains = vec![ChainState::default(); members.len()];
        for entry in tx.open_table(CHAINS).map_err(open_error)?.iter().map_err(|e| fail(e.into()))? {
            let (author, bytes) = entry.map_err(|e| fail(e.into()))?;
            let author = author.value() as usize;
            let chain = decode_chain(bytes.value()).ok_or_else(|| {
                corrupt(&path, format!("the chain state of member {author} does not decode"))
            })?;
            *chains.get_mut(author).ok_or_else(|| {
                corrupt(&path, format!("a chain state for member {author}, who is not one"))
            })? = chain;
        }
        let meta = tx.open_table(META).map_err(open_error)?;
        let n_bytes = meta
            .get(META_N_BYTES)
            .map_err(|e| fail(e.into()))?
            .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| corrupt(&path, format!("meta `{META_N_BYTES}` is missing or not 8 bytes")))?;
        let doc_through = meta
            .get(META_DOC_THROUGH)
            .map_err(|e| fail(e.into()))?
            .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
            .map(u64::from_le_bytes)
            .filter(|&through| through <= n_events)
            .ok_or_else(|| {
                corrupt(&path, format!("meta `{META_DOC_THROUGH}` is missing, not 8 bytes or past the log"))
            })?;
        let own_history = meta
            .get(META_OWN_HISTORY)
            .map_err(|e| fail(e.into()))?
            .and_then(|v| match v.value() {
                [byte] => OwnHistory::from_byte(*byte),
                _ => None,
            })
            .ok_or_else(|| corrupt(&path, format!("meta `{META_OWN_HISTORY}` is missing or not 0 to 3")))?;
        let mut evidence = Vec::new();
        for entry in tx.open_table(EVIDENCE).map_err(open_error)?.iter().map_err(|e| fail(e.into()))? {
            let (author, bytes) = entry.map_err(|e| fail(e.into()))?;
            let (author, bytes) = (author.value(), bytes.value());
            let decoded = codec::decode_evidence(bytes).map_err(|e| {
                corrupt(&path, format!("the evidence against {} does not decode: {e}", hex::encode(author)))
            })?;
            if decoded.author().0 != *author {
                return Err(corrupt(
                    &path,
                    format!("the evidence filed under {} is against another author", hex::encode(author)),
                ));
            }
            evidence.push(bytes.to_vec());
        }
        drop(tx);
        drop(db);
        self.n_events = n_events;
        self.n_bytes = n_bytes;
        self.roster_stored = members.len();
        let roster_later = members[self.n_genesis..].to_vec();
        self.members = members;
        self.chains = chains.clone();
        self.own_history = own_history;
        self.authors = authors.clone();
        Ok(Loaded {
            evidence,
            own_history,
            chains,
            n_events,
            n_bytes,
            authors,
            doc_through,
            roster_later,
            member_events,
            ..Loaded::default()
        })
    }

    /// Events of `log` from position `from` on, in order, until `bytes_max` bytes (at least one
    /// event if there is one), and the position after the last one returned. Each call is one
    /// short read transaction: the log only ever grows at its end, so successive calls read one
    /// consistent, causally closed prefix of it (how `GET /v1/backup` streams a running store).
    pub fn read_log(&self, from: u64, bytes_max: usize) -> Result<(Vec<Vec<u8>>, u64), StoreError> {
        let fail = |e: redb::Error| redb_error(&self.path, e, Stage::Open);
        let tx = self.db()?.begin_read().map_err(|e| fail(e.into()))?;
        let log = tx.open_table(LOG).map_err(|e| fail(e.into()))?;
        let mut events = Vec::new();
        let mut bytes = 0;
        let mut next = from;
        for entry in log.range(from..).map_err(|e| fail(e.into()))? {
            let (position, event) = entry.map_err(|e| fail(e.into()))?;
            if !events.is_empty() && bytes + event.value().len() > bytes_max {
                break;
            }
            bytes += event.value().len();
            events.push(event.value().to_vec());
            next = position.value() + 1;
        }
        Ok((events, next))
    }

    /// The evidence held now, canonical encodings in author key order.
    pub fn read_evidence(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let fail = |e: redb::Error| redb_error(&self.path, e, Stage::Open);
        let tx = self.db()?.begin_read().map_err(|e| fail(e.into()))?;
        let table = tx.open_table(EVIDENCE).map_err(|e| fail(e.into()))?;
        let mut evidence = Vec::new();
        for entry in table.iter().map_err(|e| fail(e.into()))? {
            let (_, bytes) = entry.map_err(|e| fail(e.into()))?;
            evidence.push(bytes.value().to_vec());
        }
        Ok(evidence)
    }

    /// Appends accepted events (id, canonical bytes) and evidence (author key, canonical
    /// bytes) in one write transaction, durable (fsync'd) when it returns: see
    /// [`Store::append_with_document`], without a document.
    pub fn append(
        &mut self,
        events: &[([u8; 32], &[u8])],
        evidence: &[([u8; 32], &[u8])],
        own_history_complete: bool,
    ) -> Result<(), StoreError> {
        self.append_with_document(events, evidence, own_history_complete, None)
    }

    /// Appends accepted events (id, canonical bytes) and evidence (author key, canonical
    /// bytes), and the document's changes, in one write transaction, durable (fsync'd) when it
    /// returns. With `own_history_complete` (the batch holds an event the node signed in this
    /// process, after every event accepted before it) the same transaction marks the store
    /// [`OwnHistory::Complete`]. With `document`, the same transaction writes the changed keys,
    /// the exclusions and the covered records, and records that the persisted document has
    /// applied the log up to the commit's first `n_applied` events.
    ///
    /// An event whose id is already stored is skipped; evidence replaces the author's previous
    /// evidence. The caller's events and evidence come from its own validated node, so bytes
    /// that do not decode or do not match their id or author are a bug and panic.
    pub fn append_with_document(
        &mut self,
        events: &[([u8; 32], &[u8])],
        evidence: &[([u8; 32], &[u8])],
        own_history_complete: bool,
        document: Option<DocumentCommit<'_>>,
    ) -> Result<(), StoreError> {
        let events: Vec<Append<'_>> = events.iter().map(|(id, bytes)| Append::Bytes(*id, bytes)).collect();
        self.append_events(&events, evidence, own_history_complete, document)
    }

    /// [`Store::append_with_document`] for events given as bytes or as accepted events
    /// ([`Append`]). Bytes are decoded and checked against their id before they are written
    /// (TigerStyle); an accepted event was checked by validation, which is the only maker of a
    /// [`Verified`], and its meta is checked against its header and the roster.
    pub fn append_events(
        &mut self,
        events: &[Append<'_>],
        evidence: &[([u8; 32], &[u8])],
        own_history_complete: bool,
        document: Option<DocumentCommit<'_>>,
    ) -> Result<(), StoreError> {
        if self.failed {
            return Err(self.io_error("an earlier write failed".to_owned()));
        }
        // Check data before it is written (TigerStyle); the decoded events are indexed.
        let checked: Vec<Checked<'_>> = events.iter().map(Checked::new).collect();
        for (author, bytes) in evidence {
            let decoded = codec::decode_evidence(bytes)
                .unwrap_or_else(|e| panic!("evidence to store does not decode: {e}"));
            assert!(
                decoded.author().0 == *author,
                "evidence to store is not by the author it is filed under"
            );
        }
        if let Some(document) = document {
            assert!(document.n_applied <= events.len(), "the document applied events of the commit only");
        }
        if events.is_empty()
            && evidence.is_empty()
            && document.is_none_or(|d| d.delta.is_empty())
            && self.roster_stored == self.members.len()
            && self.next_node_key.is_none()
        {
            // Nothing to make durable: spare the fsync.
            return Ok(());
        }
        let mark = own_history_complete && self.own_history != OwnHistory::Complete;
        match self.write(&checked, evidence, mark, document) {
            Ok(written) => {
                assert!(written.n_events >= self.n_events);
                self.n_events = written.n_events;
                self.chains = written.chains;
                self.n_bytes = written.n_bytes;
                self.authors = written.authors;
                self.roster_stored = self.members.len();
                if let Some(key) = self.next_node_key.take() {
                    self.node_key = key;
                }
                if mark {
                    self.own_history = OwnHistory::Complete;
                }
                Ok(())
            }
            Err(error @ StoreError::NoSpace { .. }) => {
                let ids: Vec<[u8; 32]> = events.iter().map(Append::id).collect();
                let landed = self.after_no_space(&ids, mark, error);
                // The key goes with its batch (one transaction): stored with it, or not at all.
                let key = self.next_node_key.take();
                if landed.is_ok()
                    && let Some(key) = key
                {
                    self.node_key = key;
                }
                landed
            }
            Err(error) => {
                self.failed = true;
                self.next_node_key = None;
                Err(error)
            }
        }
    }

    /// Writes a document delta alone, recording that the persisted document has applied the
    /// log's first `through` events: for a start that replays the log's tail into the document
    /// read back ([`Store::load_document`]).
    pub fn persist_document(&mut self, delta: &DocumentDelta, through: u64) -> Result<(), StoreError> {
        if self.failed {
            return Err(self.io_error("an earlier write failed".to_owned()));
        }
        assert!(through <= self.n_events, "the document applied events of the log only");
        let write = || -> Result<(), StoreError> {
            let fail = |e: redb::Error| redb_error(&self.path, e, Stage::Write);
            let db = self.db()?;
            let mut tx = db.begin_write().map_err(|e| fail(e.into()))?;
            tx.set_two_phase_commit(true);
            {
                let mut meta = tx.open_table(META).map_err(|e| fail(e.into()))?;
                meta.insert(META_DOC_THROUGH, through.to_le_bytes().as_slice())
                    .map_err(|e| fail(e.into()))?;
                if let Some(exclusions) = &delta.exclusions {
                    meta.insert(META_DOC_EXCLUSIONS, exclusions.as_slice()).map_err(|e| fail(e.into()))?;
                }
            }
            write_document(&tx, delta).map_err(&fail)?;
            tx.commit().map_err(|e| fail(e.into()))
        };
        match write() {
            Ok(()) => Ok(()),
            // Reopens the database, as after a failed append; holding no event, the write
            // counts as not stored (it is written again, whole, with a later commit).
            Err(error @ StoreError::NoSpace { .. }) => self.after_no_space(&[], false, error),
            Err(error) => {
                self.failed = true;
                Err(error)
            }
        }
    }

    /// Per member, in member order: events in the log and their bytes.
    pub fn authors(&self) -> &[(u64, u64)] {
        &self.authors
    }

    /// The persisted document, if one was ever persisted (`None`: replay the whole log into
    /// an empty one), whose author indices name `authors` (the node's roster). Reads every
    /// key; what a start costs.
    pub fn load_document(&self, authors: &[PublicKey]) -> Result<Option<Document>, StoreError> {
        let path = &self.path;
        let fail = |e: redb::Error| redb_error(path, e, Stage::Open);
        let tx = self.db()?.begin_read().map_err(|e| fail(e.into()))?;
        let meta = tx.open_table(META).map_err(|e| fail(e.into()))?;
        let through = meta
            .get(META_DOC_THROUGH)
            .map_err(|e| fail(e.into()))?
            .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
            .map_or(0, u64::from_le_bytes);
        let exclusions =
            meta.get(META_DOC_EXCLUSIONS).map_err(|e| fail(e.into()))?.map(|v| v.value().to_vec());
        let doc = tx.open_table(DOC).map_err(|e| fail(e.into()))?;
        if through == 0 && exclusions.is_none() && doc.is_empty().map_err(|e| fail(e.into()))? {
            return Ok(None);
        }
        let mut document = Document::new(authors);
        if let Some(bytes) = exclusions {
            document
                .restore_exclusions(&bytes)
                .map_err(|e| corrupt(path, format!("the document's exclusions do not decode: {e}")))?;
        }
        for entry in doc.iter().map_err(|e| fail(e.into()))? {
            let (key, state) = entry.map_err(|e| fail(e.into()))?;
            let (kind, key) = decode_doc_key(key.value())
                .ok_or_else(|| corrupt(path, "a document key of an unknown kind".to_owned()))?;
            document.restore_key(kind, key, state.value()).map_err(|e| {
                corrupt(
                    path,
                    format!("the document's state of key {} does not decode: {e}", hex::encode(key)),
                )
            })?;
        }
        Ok(Some(document))
    }

    /// After a commit failed for want of space: reopens the database, which redb requires after
    /// any failed write, and finds out whether the batch was stored (see the module docs).
    /// Returns `error` if it was not, `Ok` if it was after all, and a fatal error if the store
    /// cannot tell.
    fn after_no_space(
        &mut self,
        events: &[[u8; 32]],
        own_history_complete: bool,
        error: StoreError,
    ) -> Result<(), StoreError> {
        // Dropping the database closes the file without a clean-shutdown mark; the reopen
        // recovers it to its last durable commit.
        *write_lock(&self.db) = None;
        let reopened =
            open_database(&self.path, OpenMode::Existing, PageCheck::AfterCrash).and_then(|(db, _)| {
                let counted = count_stored(&self.path, &db, events);
                *write_lock(&self.db) = Some(db);
                counted
            });
        match reopened {
            Ok((n_stored, _)) if n_stored == self.n_events => {
                // Nothing was stored: with the events before it intact, the batch is simply not
                // there, and it can never surface (its commit slot is not the primary).
                tracing::debug!(path = %self.path.display(), "a commit failed for want of space; not stored");
                Err(error)
            }
            Ok((n_stored, n_found)) if n_found == events.len() && n_stored > self.n_events => {
                // The mark and the indexes, if the batch carried them, landed with it (one
                // transaction): read them back.
                if own_history_complete {
                    self.own_history = OwnHistory::Complete;
                }
                if let Err(reload) = self.load_indexed() {
                    self.failed = true;
                    return Err(self.io_error(format!(
                        "{error}; it was stored after all, but reading it back failed: {reload}"
                    )));
                }
                tracing::warn!(
                    path = %self.path.display(),
                    "a commit reported that the file system is full, but it was stored after all"
                );
                self.n_events = n_stored;
                Ok(())
            }
            Ok((n_stored, n_found)) => {
                self.failed = true;
                Err(self.io_error(format!(
                    "{error}; after reopening it holds {n_stored} events, not {} as before, and {n_found} \
                     of the {} events of the failed batch",
                    self.n_events,
                    events.len()
                )))
            }
            Err(reopen) => {
                self.failed = true;
                *write_lock(&self.db) = None;
                Err(self
                    .io_error(format!("{error}; reopening it to check what it holds failed too: {reopen}")))
            }
        }
    }

    /// The number of events stored.
    pub fn n_events(&self) -> u64 {
        self.n_events
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the open found that the last commit did not verify and rolled the store back to
    /// the commit before it (redb's recovery after a crash in the middle of a commit; also what
    /// a damaged last commit looks like after a crash). A warning has been logged.
    pub fn rolled_back(&self) -> bool {
        self.rolled_back
    }

    /// One write transaction with all of `events` and `evidence`; returns the new event count.
    fn write(
        &self,
        events: &[Checked<'_>],
        evidence: &[([u8; 32], &[u8])],
        own_history_complete: bool,
        document: Option<DocumentCommit<'_>>,
    ) -> Result<Written, StoreError> {
        let fail = |e: redb::Error| redb_error(&self.path, e, Stage::Write);
        let db = self.db()?;
        let mut tx = db.begin_write().map_err(|e| fail(e.into()))?;
        let mut chains = self.chains.clone();
        let mut authors = self.authors.clone();
        let mut n_bytes = self.n_bytes;
        // The log's length after the events the document applied.
        let mut doc_through = None;
        let mut dirty = std::collections::BTreeSet::new();
        // Immediate is redb's default; it is set here because acknowledging a write depends on
        // it: the commit returns after the data and the new commit slot are fsync'd.
        tx.set_durability(Durability::Immediate).map_err(|e| fail(e.into()))?;
        // Two-phase commit (a second fsync) lets redb tell a commit torn by a crash (never
        // acknowledged, rolled back) from a committed one damaged later (refused as corrupt).
        // With one fsync it cannot, and would silently fall back past an acknowledged write.
        tx.set_two_phase_commit(true);
        let mut n_events = self.n_events;
        {
            // Keys the roster indexed since the last commit, before the events they author.
            let mut roster = tx.open_table(ROSTER).map_err(|e| fail(e.into()))?;
            for (idx, key) in self.members.iter().enumerate().skip(self.roster_stored) {
                let idx = u32::try_from(idx).expect("a roster index fits u32");
                roster.insert(idx, key).map_err(|e| fail(e.into()))?;
            }
            drop(roster);
            let mut log = tx.open_table(LOG).map_err(|e| fail(e.into()))?;
            let mut ids = tx.open_table(IDS).map_err(|e| fail(e.into()))?;
            let mut indexes = Indexes::open(&tx).map_err(&fail)?;
            for (i, event) in events.iter().enumerate() {
                let (id, bytes) = (&event.id(), event.bytes());
                if document.is_some_and(|d| d.n_applied == i) {
                    doc_through = Some(n_events);
                }
                // One descent of `ids` both files the event and finds a duplicate (stored
                // before, or earlier in this batch: reads see this transaction's own inserts),
                // whose entry is put back as it was.
                let stored_at = ids.insert(id, n_events).map_err(|e| fail(e.into()))?.map(|at| at.value());
                if let Some(at) = stored_at {
                    ids.insert(id, at).map_err(|e| fail(e.into()))?;
                    continue;
                }
                log.insert(n_events, bytes).map_err(|e| fail(e.into()))?;
                let position = n_events;
                n_events += 1;
                n_bytes += bytes.len() as u64;
                let indexed = match event {
                    Checked::Accepted(event) => {
                        indexes.index_accepted(&self.members, &mut chains, &mut dirty, position, event)
                    }
                    Checked::Decoded { event, .. } => {
                        indexes.index(&self.members, &mut chains, &mut dirty, (position, id), event)
                    }
                };
                match indexed {
                    Ok(author) => {
                        authors[author].0 += 1;
                        authors[author].1 += bytes.len() as u64;
                    }
                    Err(IndexError::Redb(e)) => return Err(fail(e)),
                    // The node hands over only events it accepted, in the order it accepted them.
                    Err(IndexError::Bad(detail)) => {
                        panic!("an event to store does not fit the store: {detail}")
                    }
                }
            }
            let mut table = tx.open_table(EVIDENCE).map_err(|e| fail(e.into()))?;
            for (author, bytes) in evidence {
                table.insert(author, *bytes).map_err(|e| fail(e.into()))?;
            }
            let mut meta = tx.open_table(META).map_err(|e| fail(e.into()))?;
            if own_history_complete {
                meta.insert(META_OWN_HISTORY, [OwnHistory::Complete.to_byte()].as_slice())
                    .map_err(|e| fail(e.into()))?;
            }
            meta.insert(META_N_BYTES, n_bytes.to_le_bytes().as_slice()).map_err(|e| fail(e.into()))?;
            if let Some(key) = &self.next_node_key {
                meta.insert(META_NODE_KEY, key.as_slice()).map_err(|e| fail(e.into()))?;
            }
            if let Some(document) = document {
                let through = doc_through.unwrap_or(n_events);
                meta.insert(META_DOC_THROUGH, through.to_le_bytes().as_slice())
                    .map_err(|e| fail(e.into()))?;
                if let Some(exclusions) = &document.delta.exclusions {
                    meta.insert(META_DOC_EXCLUSIONS, exclusions.as_slice()).map_err(|e| fail(e.into()))?;
                }
                write_document(&tx, document.delta).map_err(&fail)?;
            }
            let mut table = tx.open_table(CHAINS).map_err(|e| fail(e.into()))?;
            let mut tallies = tx.open_table(AUTHORS).map_err(|e| fail(e.into()))?;
            for author in dirty {
                let author32 = u32::try_from(author).expect("a member index fits u32");
                table
                    .insert(author32, encode_chain(&chains[author]).as_slice())
                    .map_err(|e| fail(e.into()))?;
                tallies.insert(author32, authors[author]).map_err(|e| fail(e.into()))?;
            }
        }
        tx.commit().map_err(|e| fail(e.into()))?;
        Ok(Written { n_events, chains, n_bytes, authors })
    }

    /// Checks the meta of an existing store against this node, and says what it found.
    fn check_meta(&self, cluster_id: [u8; 32], node_key: [u8; 32]) -> Result<Found, StoreError> {
        let path = &self.path;
        let fail = |e: redb::Error| redb_error(path, e, Stage::Open);
        let tx = self.db()?.begin_read().map_err(|e| fail(e.into()))?;
        if tx.list_tables().map_err(|e| fail(e.into()))?.next().is_none() {
            return Ok(Found::New);
        }
        let meta = match tx.open_table(META) {
            Ok(meta) => meta,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Err(corrupt(path, "it has tables but no `meta` table".to_owned()));
            }
            Err(e) => return Err(fail(e.into())),
        };
        let field = |name: &str| -> Result<Vec<u8>, StoreError> {
            match meta.get(name).map_err(|e| fail(e.into()))? {
                Some(value) => Ok(value.value().to_vec()),
                None => Err(corrupt(path, format!("meta has no `{name}`"))),
            }
        };
        let format = field(META_FORMAT)?;
        let format = <[u8; 8]>::try_from(format.as_slice())
            .map_err(|_| corrupt(path, format!("meta `{META_FORMAT}` is {} bytes, not 8", format.len())))?;
        let format = u64::from_le_bytes(format);
        if !(FORMAT_WITHOUT_OWN_HISTORY..=FORMAT_VERSION).contains(&format) {
            return Err(StoreError::Format { path: path.clone(), found: format!("store format {format}") });
        }
        let key32 = |name: &str| -> Result<[u8; 32], StoreError> {
            let value = field(name)?;
            <[u8; 32]>::try_from(value.as_slice())
                .map_err(|_| corrupt(path, format!("meta `{name}` is {} bytes, not 32", value.len())))
        };
        let stored = key32(META_CLUSTER_ID)?;
        if stored != cluster_id {
            return Err(StoreError::OtherCluster { path: path.clone(), stored, expected: cluster_id });
        }
        let stored = key32(META_NODE_KEY)?;
        if stored != node_key {
            return Err(StoreError::OtherKey { path: path.clone(), stored, expected: node_key });
        }
        if format == FORMAT_WITHOUT_OWN_HISTORY {
            return Ok(Found::Old { format, own_history: None });
        }
        let own_history = field(META_OWN_HISTORY)?;
        let own_history = match own_history.as_slice() {
            [byte] => OwnHistory::from_byte(*byte)
                .ok_or_else(|| corrupt(path, format!("meta `{META_OWN_HISTORY}` is {byte}, not 0 to 3")))?,
            other => {
                return Err(corrupt(
                    path,
                    format!("meta `{META_OWN_HISTORY}` is {} bytes, not 1", other.len()),
                ));
            }
        };
        if format == FORMAT_WITHOUT_INDEXES
            || format == FORMAT_WITHOUT_DOCUMENT
            || format == FORMAT_WITHOUT_MEMBERSHIP
            || format == FORMAT_WITHOUT_CONTEXTS
        {
            return Ok(Found::Old { format, own_history: Some(own_history) });
        }
        Ok(Found::Current(own_history))
    }

    /// Writes a new store's meta and creates its tables in its first transaction, then makes
    /// the file's directory entry durable.
    fn write_meta(
        &self,
        cluster_id: [u8; 32],
        node_key: [u8; 32],
        own_history: OwnHistory,
    ) -> Result<(), StoreError> {
        let path = &self.path;
        let fail = |e: redb::Error| redb_error(path, e, Stage::Open);
        let mut tx = self.db()?.begin_write().map_err(|e| fail(e.into()))?;
        // Two-phase like every later commit, so that a failed first append cannot bring a commit
        // slot that is not the primary back (see the module docs).
        tx.set_two_phase_commit(true);
        {
            let mut meta = tx.open_table(META).map_err(|e| fail(e.into()))?;
            meta.insert(META_FORMAT, FORMAT_VERSION.to_le_bytes().as_slice()).map_err(|e| fail(e.into()))?;
            meta.insert(META_CLUSTER_ID, cluster_id.as_slice()).map_err(|e| fail(e.into()))?;
            meta.insert(META_NODE_KEY, node_key.as_slice()).map_err(|e| fail(e.into()))?;
            meta.insert(META_OWN_HISTORY, [own_history.to_byte()].as_slice()).map_err(|e| fail(e.into()))?;
            // Created now so that a store without them is known to be damaged.
            meta.insert(META_N_BYTES, 0u64.to_le_bytes().as_slice()).map_err(|e| fail(e.into()))?;
            meta.insert(META_DOC_THROUGH, 0u64.to_le_bytes().as_slice()).map_err(|e| fail(e.into()))?;
            tx.open_table(AUTHORS).map_err(|e| fail(e.into()))?;
            tx.open_table(DOC).map_err(|e| fail(e.into()))?;
            tx.open_table(COVERED).map_err(|e| fail(e.into()))?;
            tx.open_table(LOG).map_err(|e| fail(e.into()))?;
            tx.open_table(IDS).map_err(|e| fail(e.into()))?;
            tx.open_table(EVIDENCE).map_err(|e| fail(e.into()))?;
            tx.open_table(METAS).map_err(|e| fail(e.into()))?;
            tx.open_table(BY_SEQ).map_err(|e| fail(e.into()))?;
            tx.open_table(CHAINS).map_err(|e| fail(e.into()))?;
            tx.open_table(ROSTER).map_err(|e| fail(e.into()))?;
            tx.open_table(MEMBER_EVENTS).map_err(|e| fail(e.into()))?;
        }
        tx.commit().map_err(|e| fail(e.into()))?;
        // redb syncs the file, not the directory that names it.
        sync_dir(parent_dir(path)).map_err(|e| access(path, &e))
    }

    /// Reads every event, checking it against `log` and `ids` (the evidence is read by
    /// [`Store::load_indexed`]).
    fn load(&mut self) -> Result<Loaded, StoreError> {
        let path = &self.path;
        let fail = |e: redb::Error| redb_error(path, e, Stage::Open);
        let open_error = |e: redb::TableError| match e {
            redb::TableError::TableDoesNotExist(name) => {
                corrupt(path, format!("the `{name}` table is missing"))
            }
            e => fail(e.into()),
        };
        let tx = self.db()?.begin_read().map_err(|e| fail(e.into()))?;
        let log = tx.open_table(LOG).map_err(open_error)?;
        let ids = tx.open_table(IDS).map_err(open_error)?;

        let n_events = log.len().map_err(|e| fail(e.into()))?;
        let n_ids = ids.len().map_err(|e| fail(e.into()))?;
        if n_ids != n_events {
            return Err(corrupt(path, format!("`log` has {n_events} events but `ids` has {n_ids}")));
        }
        let mut events = Vec::with_capacity(usize::try_from(n_events).unwrap_or(0));
        let mut event_ids = Vec::with_capacity(events.capacity());
        for (event_idx, entry) in (0u64..).zip(log.iter().map_err(|e| fail(e.into()))?) {
            let (position, bytes) = entry.map_err(|e| fail(e.into()))?;
            let (position, bytes) = (position.value(), bytes.value());
            if position != event_idx {
                return Err(corrupt(path, format!("`log` entry {event_idx} is at position {position}")));
            }
            let event = codec::decode_event(bytes)
                .map_err(|e| corrupt(path, format!("event {position} does not decode: {e}")))?;
            // The id covers the header only; the ops are bound to it by the ops hash.
            if event.header.ops_hash != ops_hash(&event.ops) {
                return Err(corrupt(path, format!("event {position}'s ops do not match its header")));
            }
            let id = event.id();
            match ids.get(&id.0).map_err(|e| fail(e.into()))? {
                Some(found) if found.value() == position => {}
                Some(found) => {
                    return Err(corrupt(
                        path,
                        format!("event {position} (id {id}) is filed in `ids` at position {}", found.value()),
                    ));
                }
                None => {
                    return Err(corrupt(path, format!("event {position} (id {id}) is missing from `ids`")));
                }
            }
            events.push(bytes.to_vec());
            event_ids.push(id.0);
        }
        // `log` positions are 0..n and each maps back through `ids`, and both tables have n
        // entries, so `ids` holds exactly the ids of `log`.

        self.n_events = n_events;
        Ok(Loaded { events, ids: event_ids, ..Loaded::default() })
    }

    fn io_error(&self, detail: String) -> StoreError {
        StoreError::Io { path: self.path.clone(), detail }
    }

    /// The open database, read-locked; an I/O error once a failed write left none.
    fn db(&self) -> Result<DbGuard<'_>, StoreError> {
        DbGuard::new(&self.db).ok_or_else(|| self.io_error("an earlier write failed".to_owned()))
    }

    /// Where the file's bytes go, for reports: each table's entries, bytes of keys and values,
    /// of branch pages and metadata, and bytes lost in partly filled pages. The file's length
    /// minus their sum is free pages and redb's own state.
    pub fn space(&self) -> Result<Vec<TableSpace>, StoreError> {
        use redb::{ReadableTableMetadata as _, TableHandle as _};
        let fail = |e: redb::Error| redb_error(&self.path, e, Stage::Open);
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| fail(e.into()))?;
        fn one<K: redb::Key + 'static, V: redb::Value + 'static>(
            tx: &redb::ReadTransaction,
            table: TableDefinition<K, V>,
        ) -> Result<TableSpace, redb::Error> {
            let opened = tx.open_table(table)?;
            let stats = opened.stats()?;
            Ok(TableSpace {
                name: table.name().to_owned(),
                entries: opened.len()?,
                stored: stats.stored_bytes(),
                metadata: stats.metadata_bytes(),
                fragmented: stats.fragmented_bytes(),
            })
        }
        let tables = [
            one(&tx, META),
            one(&tx, LOG),
            one(&tx, IDS),
            one(&tx, EVIDENCE),
            one(&tx, METAS),
            one(&tx, BY_SEQ),
            one(&tx, CHAINS),
            one(&tx, AUTHORS),
            one(&tx, DOC),
            one(&tx, COVERED),
        ];
        tables.into_iter().collect::<Result<Vec<_>, _>>().map_err(fail)
    }

    /// The database, for readers on other threads (the node's archive).
    pub fn shared_db(&self) -> SharedDb {
        Arc::clone(&self.db)
    }
}

/// One table's share of the store file (see [`Store::space`]).
#[derive(Clone, Debug)]
pub struct TableSpace {
    /// The table's name.
    pub name: String,
    /// Its entries.
    pub entries: u64,
    /// Bytes of its keys and values.
    pub stored: u64,
    /// Bytes of its branch pages and other metadata.
    pub metadata: u64,
    /// Bytes of its pages left unused (pages are 4 KiB; a leaf is rarely full).
    pub fragmented: u64,
}

/// The node key the store at `path` records (`None`: no store there yet), read without opening
/// it for use: what a start compares with the key file after a key rotation was interrupted.
pub fn stored_node_key(path: &Path) -> Result<Option<[u8; 32]>, StoreError> {
    if !path.try_exists().unwrap_or(false) {
        return Ok(None);
    }
    let (db, _) = open_database(path, OpenMode::Existing, PageCheck::AfterCrash)?;
    let fail = |e: redb::Error| redb_error(path, e, Stage::Open);
    let tx = db.begin_read().map_err(|e| fail(e.into()))?;
    let meta = match tx.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(fail(e.into())),
    };
    let key = meta.get(META_NODE_KEY).map_err(|e| fail(e.into()))?;
    Ok(key.and_then(|v| <[u8; 32]>::try_from(v.value()).ok()))
}

/// The member keys of `genesis`, in member order, as the store takes them.
pub fn member_keys(genesis: &cairn_protocol::Genesis) -> Vec<[u8; 32]> {
    genesis.members().iter().map(|m| m.key.0).collect()
}

/// The store's database, shared with the readers of other threads. `None` after a failed
/// write that could not be recovered.
pub type SharedDb = Arc<RwLock<Option<Database>>>;

/// Closes the database of `db` cleanly, once every reader and the commit in progress are done
/// (it takes the write lock): redb records its allocator state and a clean shutdown, so the
/// next open reads only what it uses instead of recovering the whole file as after a crash.
/// Reads after it fail with "the store failed earlier and is closed".
pub fn close(db: &SharedDb) {
    drop(write_lock(db).take());
}

/// A read lock on a [`SharedDb`] that holds a database. Readers keep it for the whole read (a
/// redb read transaction keeps the file open), so a reopen after a full disk waits for them.
pub struct DbGuard<'a>(RwLockReadGuard<'a, Option<Database>>);

impl<'a> DbGuard<'a> {
    /// The database, if there is one.
    pub fn new(db: &'a SharedDb) -> Option<Self> {
        // A poisoned lock only means a reader panicked; the database itself is intact.
        let guard = db.read().unwrap_or_else(PoisonError::into_inner);
        guard.is_some().then_some(Self(guard))
    }
}

impl std::ops::Deref for DbGuard<'_> {
    type Target = Database;

    fn deref(&self) -> &Database {
        // `new` made one only for a slot that holds a database, and holds the lock since.
        self.0.as_ref().expect("a DbGuard holds a database")
    }
}

fn write_lock(db: &SharedDb) -> std::sync::RwLockWriteGuard<'_, Option<Database>> {
    db.write().unwrap_or_else(PoisonError::into_inner)
}

/// The index tables of one write transaction.
struct Indexes<'tx> {
    metas: redb::Table<'tx, &'static [u8; 32], &'static [u8]>,
    by_seq: redb::Table<'tx, (u32, u64, [u8; 32]), ()>,
    member_events: redb::Table<'tx, u64, ()>,
    /// The metas written in this transaction: an event's deps are mostly the events just
    /// before it.
    written: std::collections::BTreeMap<[u8; 32], EventMeta>,
}

/// What a write transaction left, for the store's copy of it.
struct Written {
    n_events: u64,
    chains: Vec<ChainState>,
    n_bytes: u64,
    authors: Vec<(u64, u64)>,
}

/// The key of a document key in `doc`: its kind (0 register, 1 counter, 2 set), then its bytes.
fn doc_key(kind: KeyKind, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + key.len());
    out.push(match kind {
        KeyKind::Register => 0,
        KeyKind::Counter => 1,
        KeyKind::Set => 2,
    });
    out.extend_from_slice(key);
    out
}

fn decode_doc_key(bytes: &[u8]) -> Option<(KeyKind, &[u8])> {
    let (&kind, key) = bytes.split_first()?;
    let kind = match kind {
        0 => KeyKind::Register,
        1 => KeyKind::Counter,
        2 => KeyKind::Set,
        _ => return None,
    };
    Some((kind, key))
}

/// The key of an op in `covered`: its event id, then its index (u32 LE).
pub(crate) fn op_key(op: &OpId) -> [u8; 36] {
    let mut out = [0u8; 36];
    out[..32].copy_from_slice(&op.0.0);
    out[32..].copy_from_slice(&op.1.to_le_bytes());
    out
}

/// Ops as `covered` lists them: 36 bytes each ([`op_key`]).
pub(crate) fn decode_ops(bytes: &[u8]) -> Option<Vec<OpId>> {
    if !bytes.len().is_multiple_of(36) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(36)
            .map(|chunk| {
                // `chunks_exact(36)` gives 36 bytes: 32 of id, 4 of index.
                let id: [u8; 32] = chunk[..32].try_into().expect("32 bytes");
                let idx: [u8; 4] = chunk[32..].try_into().expect("4 bytes");
                (EventId(id), u32::from_le_bytes(idx))
            })
            .collect(),
    )
}

/// Writes a document delta's keys and covered records in `tx`.
fn write_document(tx: &redb::WriteTransaction, delta: &DocumentDelta) -> Result<(), redb::Error> {
    let mut doc = tx.open_table(DOC)?;
    for (kind, key, state) in &delta.keys {
        let key = doc_key(*kind, key);
        match state {
            Some(state) => doc.insert(key.as_slice(), state.as_slice())?,
            None => doc.remove(key.as_slice())?,
        };
    }
    let mut covered = tx.open_table(COVERED)?;
    for Covered { by, ops } in &delta.covered {
        let key = op_key(by);
        let mut list: Vec<u8> = ops.iter().flat_map(op_key).collect();
        // Mostly `by` is a new op and has no list yet: one descent files it. Otherwise the
        // new ops go after the ones it covered before.
        let before = covered.insert(&key, list.as_slice())?.map(|v| v.value().to_vec());
        if let Some(mut before) = before {
            before.append(&mut list);
            covered.insert(&key, before.as_slice())?;
        }
    }
    Ok(())
}

/// Why an event could not be indexed.
enum IndexError {
    Redb(redb::Error),
    /// The event does not fit: not a member's, or a dep not indexed before it.
    Bad(String),
}

impl From<redb::StorageError> for IndexError {
    fn from(e: redb::StorageError) -> Self {
        Self::Redb(e.into())
    }
}

impl<'tx> Indexes<'tx> {
    fn open(tx: &'tx redb::WriteTransaction) -> Result<Self, redb::Error> {
        Ok(Self {
            metas: tx.open_table(METAS)?,
            by_seq: tx.open_table(BY_SEQ)?,
            member_events: tx.open_table(MEMBER_EVENTS)?,
            written: std::collections::BTreeMap::new(),
        })
    }

    /// Indexes one event just appended to `log` at `position`: its meta (computed from its
    /// deps' metas, as the node's adapter does: `EventMeta::from_deps`), its entry in `by_seq`,
    /// its author's chain state (marked in `dirty`), and its position in `member_events` if it
    /// carries a membership op.
    fn index(
        &mut self,
        members: &[[u8; 32]],
        chains: &mut [ChainState],
        dirty: &mut std::collections::BTreeSet<usize>,
        (position, id): (u64, &[u8; 32]),
        event: &cairn_protocol::Event,
    ) -> Result<usize, IndexError> {
        self.file_membership(position, event)?;
        let header = &event.header;
        let author = members.iter().position(|k| *k == header.author.0).ok_or_else(|| {
            IndexError::Bad(format!("event {} is by {}, who is not a member", hex::encode(id), header.author))
        })?;
        let mut deps = Vec::with_capacity(header.deps.len());
        for dep in &header.deps {
            if let Some(meta) = self.written.get(&dep.0) {
                deps.push((*dep, meta.clone()));
                continue;
            }
            let meta = self.metas.get(&dep.0)?.ok_or_else(|| {
                IndexError::Bad(format!("event {} comes before its dep {dep}", hex::encode(id)))
            })?;
            let meta = decode_meta(meta.value())
                .ok_or_else(|| IndexError::Bad(format!("the meta of event {dep} does not decode")))?;
            deps.push((*dep, meta));
        }
        let meta = EventMeta::from_deps(
            author,
            header.seq,
            header.lamport,
            members.len(),
            deps.iter().map(|(d, m)| (*d, m)),
        );
        self.file(chains, dirty, id, meta)?;
        Ok(author)
    }

    /// [`Indexes::index`] for an event the node accepted: its meta is the adapter's, checked
    /// against its header and the roster (a mismatch is a bug of this node, and panics).
    fn index_accepted(
        &mut self,
        members: &[[u8; 32]],
        chains: &mut [ChainState],
        dirty: &mut std::collections::BTreeSet<usize>,
        position: u64,
        event: &Verified,
    ) -> Result<usize, IndexError> {
        let header = &event.event().header;
        self.file_membership(position, event.event())?;
        let meta = event.meta();
        assert!(
            members.get(meta.author) == Some(&header.author.0) && meta.seq == header.seq,
            "an accepted event's meta names its author and seq"
        );
        let author = meta.author;
        self.file(chains, dirty, &event.id().0, meta)?;
        Ok(author)
    }

    /// Files the log position of `event` in `member_events` if it carries a membership op.
    fn file_membership(&mut self, position: u64, event: &cairn_protocol::Event) -> Result<(), IndexError> {
        if event.ops.iter().any(cairn_protocol::Op::is_membership) {
            self.member_events.insert(position, ())?;
        }
        Ok(())
    }

    /// Files `meta` of event `id` in `metas` and `by_seq`, and advances its author's chain.
    fn file(
        &mut self,
        chains: &mut [ChainState],
        dirty: &mut std::collections::BTreeSet<usize>,
        id: &[u8; 32],
        meta: EventMeta,
    ) -> Result<(), IndexError> {
        let author = meta.author;
        let author32 = u32::try_from(author).expect("a member index fits u32");
        let seq = meta.seq;
        // An author's seqs are contiguous from 1 on each branch (the validity rules), so a seq
        // not above the author's highest is taken already: a fork.
        let forked = seq <= chains[author].max_seq;
        self.metas.insert(id, encode_meta(&meta).as_slice())?;
        self.by_seq.insert((author32, seq, *id), ())?;
        let own_pred = meta.own_pred;
        self.written.insert(*id, meta);
        let chain = &mut chains[author];
        if let Some(pred) = own_pred {
            chain.tips.retain(|(t, _)| *t != pred);
        }
        chain.tips.push((EventId(*id), seq));
        chain.max_seq = chain.max_seq.max(seq);
        if forked && chain.fork_seq.is_none_or(|f| seq < f) {
            chain.fork_seq = Some(seq);
        }
        dirty.insert(author);
        Ok(())
    }
}

/// `meta`'s encoding in `metas`: author (u32), seq, lamport (u64), 0 or 1 and the own
/// predecessor's id, the clock's length (u32) and entries (u64); little-endian.
pub fn encode_meta(meta: &EventMeta) -> Vec<u8> {
    let mut out = Vec::with_capacity(57 + 8 * meta.clock.len());
    out.extend_from_slice(&(meta.author as u32).to_le_bytes());
    out.extend_from_slice(&meta.seq.to_le_bytes());
    out.extend_from_slice(&meta.lamport.to_le_bytes());
    match meta.own_pred {
        Some(pred) => {
            out.push(1);
            out.extend_from_slice(&pred.0);
        }
        None => out.push(0),
    }
    out.extend_from_slice(&(meta.clock.len() as u32).to_le_bytes());
    for entry in meta.clock.iter() {
        out.extend_from_slice(&entry.to_le_bytes());
    }
    out
}

/// Reads what [`encode_meta`] wrote; `None` for anything else.
pub fn decode_meta(bytes: &[u8]) -> Option<EventMeta> {
    let mut r = Reader(bytes);
    let author = r.u32()? as usize;
    let seq = r.u64()?;
    let lamport = r.u64()?;
    let own_pred = match r.take(1)?[0] {
        0 => None,
        1 => Some(EventId(r.take(32)?.try_into().ok()?)),
        _ => return None,
    };
    let n = r.u32()? as usize;
    if r.0.len() != n.checked_mul(8)? {
        return None;
    }
    let clock = (0..n).map(|_| r.u64()).collect::<Option<Box<[u64]>>>()?;
    Some(EventMeta { author, seq, lamport, own_pred, clock })
}

/// Advances `chains` by one event in log order, as the store's indexing does: what a start
/// recomputes from the log to check the stored chain states. An author's seqs are contiguous
/// from 1 on each branch, so an event whose seq is not above its author's highest is a fork.
pub fn advance_chain(chains: &mut [ChainState], id: EventId, meta: &EventMeta) {
    let Some(chain) = chains.get_mut(meta.author) else { return };
    if let Some(pred) = meta.own_pred {
        chain.tips.retain(|(t, _)| *t != pred);
    }
    let forked = meta.seq <= chain.max_seq;
    chain.tips.push((id, meta.seq));
    chain.max_seq = chain.max_seq.max(meta.seq);
    if forked && chain.fork_seq.is_none_or(|f| meta.seq < f) {
        chain.fork_seq = Some(meta.seq);
    }
}

/// A chain state's encoding in `chains`: the number of tips (u32), each tip's id and seq
/// (u64), the highest seq, then 0, or 1 and the fork seq; little-endian.
fn encode_chain(chain: &ChainState) -> Vec<u8> {
    let mut out = Vec::with_capacity(21 + 40 * chain.tips.len());
    out.extend_from_slice(&(chain.tips.len() as u32).to_le_bytes());
    for (id, seq) in &chain.tips {
        out.extend_from_slice(&id.0);
        out.extend_from_slice(&seq.to_le_bytes());
    }
    out.extend_from_slice(&chain.max_seq.to_le_bytes());
    match chain.fork_seq {
        Some(seq) => {
            out.push(1);
            out.extend_from_slice(&seq.to_le_bytes());
        }
        None => out.push(0),
    }
    out
}

fn decode_chain(bytes: &[u8]) -> Option<ChainState> {
    let mut r = Reader(bytes);
    let n = r.u32()? as usize;
    let mut tips = Vec::with_capacity(n.min(bytes.len() / 40));
    for _ in 0..n {
        let id = EventId(r.take(32)?.try_into().ok()?);
        tips.push((id, r.u64()?));
    }
    let max_seq = r.u64()?;
    let fork_seq = match r.take(1)?[0] {
        0 => None,
        1 => Some(r.u64()?),
        _ => return None,
    };
    r.0.is_empty().then_some(ChainState { tips, max_seq, fork_seq })
}

/// A cursor over bytes for the decoders above.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// Reads of accepted events for the node's archive, each in one read transaction under the
/// shared database's lock. `Ok(None)` means the store does not hold it; `Err` that the store
/// could not be read (a damaged page, a failed store): the archive reports that, and the
/// daemon stops rather than go on with a store it cannot read.
pub mod reads {
    use super::*;

    /// Why a read failed, in words.
    pub type ReadError = String;

    fn failed(what: &str, e: impl fmt::Display) -> ReadError {
        format!("reading {what} from the store failed: {e}")
    }

    fn guard(db: &SharedDb) -> Result<DbGuard<'_>, ReadError> {
        DbGuard::new(db).ok_or_else(|| "the store failed earlier and is closed".to_owned())
    }

    /// Checks that `bytes`, read for event `id`, are that event: they decode, their ops match
    /// their header, and the header hashes to `id`. A start does not verify every page of the
    /// store (`PageCheck::AfterCrash`), so a bit flipped on disk is caught here, when the event
    /// is read, and never served to a peer or a client.
    fn check_bytes(id: &EventId, position: u64, bytes: &[u8]) -> Result<(), ReadError> {
        let damaged = |why: String| {
            format!("event {id} read from log position {position} is damaged ({why}); the store is corrupt")
        };
        let event = codec::decode_event(bytes).map_err(|e| damaged(format!("it does not decode: {e}")))?;
        if event.header.ops_hash != ops_hash(&event.ops) {
            return Err(damaged("its ops do not match its header".to_owned()));
        }
        if event.id() != *id {
            return Err(damaged(format!("its bytes hash to {}", event.id())));
        }
        Ok(())
    }

    /// The meta of event `id`.
    pub fn meta(db: &SharedDb, id: &EventId) -> Result<Option<EventMeta>, ReadError> {
        let guard = guard(db)?;
        let tx = guard.begin_read().map_err(|e| failed("a meta", e))?;
        let table = tx.open_table(METAS).map_err(|e| failed("a meta", e))?;
        let Some(value) = table.get(&id.0).map_err(|e| failed("a meta", e))? else { return Ok(None) };
        decode_meta(value.value()).map(Some).ok_or_else(|| format!("the meta of event {id} does not decode"))
    }

    /// The meta and bytes of event `id`.
    pub fn event(db: &SharedDb, id: &EventId) -> Result<Option<(EventMeta, Vec<u8>)>, ReadError> {
        let guard = guard(db)?;
        let tx = guard.begin_read().map_err(|e| failed("an event", e))?;
        let metas = tx.open_table(METAS).map_err(|e| failed("an event", e))?;
        let Some(meta) = metas.get(&id.0).map_err(|e| failed("an event", e))? else { return Ok(None) };
        let meta =
            decode_meta(meta.value()).ok_or_else(|| format!("the meta of event {id} does not decode"))?;
        let ids = tx.open_table(IDS).map_err(|e| failed("an event", e))?;
        let position = ids
            .get(&id.0)
            .map_err(|e| failed("an event", e))?
            .ok_or_else(|| format!("event {id} has a meta but no entry in `ids`"))?
            .value();
        let log = tx.open_table(LOG).map_err(|e| failed("an event", e))?;
        let bytes = log
            .get(position)
            .map_err(|e| failed("an event", e))?
            .ok_or_else(|| format!("event {id} is filed at log position {position}, which is empty"))?
            .value()
            .to_vec();
        check_bytes(id, position, &bytes)?;
        Ok(Some((meta, bytes)))
    }

    /// Whether each of `ids` is in the store, in one read.
    pub fn contains_many(db: &SharedDb, ids: &[EventId]) -> Result<Vec<bool>, ReadError> {
        let guard = guard(db)?;
        let tx = guard.begin_read().map_err(|e| failed("ids", e))?;
        let table = tx.open_table(IDS).map_err(|e| failed("ids", e))?;
        ids.iter().map(|id| table.get(&id.0).map(|v| v.is_some()).map_err(|e| failed("ids", e))).collect()
    }

    /// The bytes of each of `ids` (`None` for one not in the store), in one read.
    pub fn bytes_many(db: &SharedDb, ids: &[EventId]) -> Result<Vec<Option<Vec<u8>>>, ReadError> {
        let guard = guard(db)?;
        let tx = guard.begin_read().map_err(|e| failed("events", e))?;
        let positions = tx.open_table(IDS).map_err(|e| failed("events", e))?;
        let log = tx.open_table(LOG).map_err(|e| failed("events", e))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(position) = positions.get(&id.0).map_err(|e| failed("events", e))? else {
                out.push(None);
                continue;
            };
            let position = position.value();
            let bytes = log
                .get(position)
                .map_err(|e| failed("events", e))?
                .ok_or_else(|| format!("event {id} is filed at log position {position}, which is empty"))?;
            check_bytes(id, position, bytes.value())?;
            out.push(Some(bytes.value().to_vec()));
        }
        Ok(out)
    }

    /// The metas of each of `ids` (`None` for one not in the store), in one read.
    pub fn metas_many(db: &SharedDb, ids: &[EventId]) -> Result<Vec<Option<EventMeta>>, ReadError> {
        let guard = guard(db)?;
        let tx = guard.begin_read().map_err(|e| failed("metas", e))?;
        let table = tx.open_table(METAS).map_err(|e| failed("metas", e))?;
        ids.iter()
            .map(|id| match table.get(&id.0).map_err(|e| failed("metas", e))? {
                None => Ok(None),
                Some(value) => decode_meta(value.value())
                    .map(Some)
                    .ok_or_else(|| format!("the meta of event {id} does not decode")),
            })
            .collect()
    }

    /// The ids of `author`'s events with a seq from `from` to `to`, by seq then id, at most
    /// `limit`, in one read.
    pub fn in_seqs(
        db: &SharedDb,
        author: usize,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<EventId>, ReadError> {
        if from > to {
            return Ok(Vec::new());
        }
        let guard = guard(db)?;
        let tx = guard.begin_read().map_err(|e| failed("ids by seq", e))?;
        let table = tx.open_table(BY_SEQ).map_err(|e| failed("ids by seq", e))?;
        let author = u32::try_from(author).map_err(|e| failed("ids by seq", e))?;
        let range = table
            .range((author, from, [0u8; 32])..=(author, to, [0xffu8; 32]))
            .map_err(|e| failed("ids by seq", e))?;
        range
            .take(limit)
            .map(|entry| entry.map(|(key, _)| EventId(key.value().2)).map_err(|e| failed("ids by seq", e)))
            .collect()
    }

    /// The ops recorded as covered by `op` (see `Archive::covered`).
    pub fn covered(db: &SharedDb, op: &OpId) -> Result<Vec<OpId>, ReadError> {
        let guard = guard(db)?;
        let tx = guard.begin_read().map_err(|e| failed("covered ops", e))?;
        let table = tx.open_table(COVERED).map_err(|e| failed("covered ops", e))?;
        let Some(value) = table.get(&op_key(op)).map_err(|e| failed("covered ops", e))? else {
            return Ok(Vec::new());
        };
        decode_ops(value.value())
            .ok_or_else(|| format!("the covered list of op {}#{} does not decode", op.0, op.1))
    }

    /// The ids of `author`'s events at `seq`, in id order.
    pub fn at_seq(db: &SharedDb, author: usize, seq: u64) -> Result<Vec<EventId>, ReadError> {
        in_seqs(db, author, seq, seq, usize::MAX)
    }

    /// Every id, in id order.
    pub fn ids(db: &SharedDb) -> Result<Vec<EventId>, ReadError> {
        let guard = guard(db)?;
        let tx = guard.begin_read().map_err(|e| failed("the ids", e))?;
        let table = tx.open_table(IDS).map_err(|e| failed("the ids", e))?;
        let iter = table.iter().map_err(|e| failed("the ids", e))?;
        iter.map(|entry| entry.map(|(key, _)| EventId(*key.value())).map_err(|e| failed("the ids", e)))
            .collect()
    }

    /// The events of `log` at `positions`, `(position, meta, bytes)`, checked as
    /// [`log_page`] checks them: the membership events a start reads back.
    pub fn log_at(db: &SharedDb, positions: &[u64]) -> Result<Vec<(u64, EventMeta, Vec<u8>)>, ReadError> {
        let mut out = Vec::with_capacity(positions.len());
        for &position in positions {
            match log_page(db, position, 1)?.pop() {
                Some(found) if found.0 == position => out.push(found),
                _ => return Err(format!("event {position} of the log is missing")),
            }
        }
        Ok(out)
    }

    /// Up to `limit` events of `log` from position `from` on, `(position, meta, bytes)`, each
    /// checked as a start needs: its bytes decode, its ops match its header, and its id is
    /// filed in `ids` at its position and has a meta.
    pub fn log_page(
        db: &SharedDb,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, EventMeta, Vec<u8>)>, ReadError> {
        let guard = guard(db)?;
        let tx = guard.begin_read().map_err(|e| failed("the log", e))?;
        let log = tx.open_table(LOG).map_err(|e| failed("the log", e))?;
        let ids = tx.open_table(IDS).map_err(|e| failed("the log", e))?;
        let metas = tx.open_table(METAS).map_err(|e| failed("the log", e))?;
        let by_seq = tx.open_table(BY_SEQ).map_err(|e| failed("the log", e))?;
        let mut out = Vec::new();
        for entry in log.range(from..).map_err(|e| failed("the log", e))?.take(limit) {
            let (position, bytes) = entry.map_err(|e| failed("the log", e))?;
            let (position, bytes) = (position.value(), bytes.value().to_vec());
            let event = codec::decode_event(&bytes)
                .map_err(|e| format!("event {position} of the log does not decode: {e}"))?;
            if event.header.ops_hash != ops_hash(&event.ops) {
                return Err(format!("event {position}'s ops do not match its header"));
            }
            let id = event.id();
            match ids.get(&id.0).map_err(|e| failed("the log", e))? {
                Some(at) if at.value() == position => {}
                _ => return Err(format!("event {position} (id {id}) is not filed in `ids` at its position")),
            }
            let meta = metas
                .get(&id.0)
                .map_err(|e| failed("the log", e))?
                .and_then(|m| decode_meta(m.value()))
                .ok_or_else(|| format!("event {position} (id {id}) has no meta that decodes"))?;
            let key = (u32::try_from(meta.author).unwrap_or(u32::MAX), meta.seq, id.0);
            if by_seq.get(key).map_err(|e| failed("the log", e))?.is_none() {
                return Err(format!("event {position} (id {id}) is missing from `by_seq`"));
            }
            out.push((position, meta, bytes));
        }
        Ok(out)
    }
}

/// What [`Store::check_meta`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    /// A new file: no tables yet.
    New,
    /// A store of an older format, to upgrade; `own_history` is `None` for format 1.
    Old { format: u64, own_history: Option<OwnHistory> },
    /// A store of this format.
    Current(OwnHistory),
}

/// Whether [`open_database`] may create the file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OpenMode {
    Create,
    Existing,
}

/// Which page checksums an open verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageCheck {
    /// Every live page's, on every open: a file altered outside redb is refused instead of
    /// trusted. Reads the whole file.
    Every,
    /// Only when the file was not closed cleanly (redb's crash recovery reads and verifies the
    /// whole file then); otherwise only the pages the open reads.
    AfterCrash,
}

/// Opens (or creates) the redb database at `path` with the store's settings, verifying the page
/// checksums `pages` says. Returns it and whether redb rolled back a last commit that did not
/// verify.
fn open_database(path: &Path, mode: OpenMode, pages: PageCheck) -> Result<(Database, bool), StoreError> {
    // redb reports its repair steps by progress only. A step below one half, after the start at
    // 0, is the fall-back from a primary commit slot that fails its checksums to the previous
    // commit (redb `Database::do_repair`).
    let fell_back = Rc::new(Cell::new(false));
    let fell_back_seen = Rc::clone(&fell_back);
    let mut builder = Database::builder();
    builder
        .set_cache_size(CACHE_BYTES)
        // `Every` verifies the checksum of every live page on each open, so a file altered
        // outside redb is refused instead of trusted. The cost is one read of the whole file.
        .set_check_integrity_on_open(pages == PageCheck::Every)
        .set_repair_callback(move |session| {
            let progress = session.progress();
            if progress > 0.0 && progress < 0.5 {
                fell_back_seen.set(true);
            }
        });
    // redb promises an error, not a panic, for a damaged file only when it verifies every page;
    // a plain open reads only a few pages, but a damaged one of those must not crash the
    // daemon either: it is refused as corrupt, like any other.
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match mode {
        OpenMode::Create => builder.create(path),
        OpenMode::Existing => builder.open(path),
    }))
    .map_err(|_| corrupt(path, "redb failed on it while opening it (see the panic above)".to_owned()))?;
    let db = opened.map_err(|e| redb_error(path, e.into(), Stage::Open))?;
    Ok((db, fell_back.get()))
}

/// How many events `db` holds, and how many of `events` are among them.
fn count_stored(path: &Path, db: &Database, events: &[[u8; 32]]) -> Result<(u64, usize), StoreError> {
    let fail = |e: redb::Error| redb_error(path, e, Stage::Open);
    let tx = db.begin_read().map_err(|e| fail(e.into()))?;
    let n_stored = tx.open_table(LOG).map_err(|e| fail(e.into()))?.len().map_err(|e| fail(e.into()))?;
    let ids = tx.open_table(IDS).map_err(|e| fail(e.into()))?;
    let mut n_found = 0;
    for id in events {
        if ids.get(id).map_err(|e| fail(e.into()))?.is_some() {
            n_found += 1;
        }
    }
    Ok((n_stored, n_found))
}

/// Whether an I/O error says that the file system (or the user's quota on it) is full.
fn is_no_space(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

/// Asserts that `bytes` is the canonical encoding of the event `id`.
fn assert_event(id: &[u8; 32], bytes: &[u8]) -> cairn_protocol::Event {
    let event = codec::decode_event(bytes).unwrap_or_else(|e| panic!("event to store does not decode: {e}"));
    assert!(event.id().0 == *id, "event to store does not have the id it is filed under");
    event
}

/// Where an error happened, which decides what an I/O error means for the user.
#[derive(Clone, Copy)]
enum Stage {
    Open,
    Write,
}

/// Maps a redb error to the store error that tells the user what to do.
fn redb_error(path: &Path, error: redb::Error, stage: Stage) -> StoreError {
    match error {
        redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
            StoreError::InUse { path: path.to_owned() }
        }
        redb::Error::Corrupted(detail) => corrupt(path, detail),
        redb::Error::UpgradeRequired(version) => StoreError::Format {
            path: path.to_owned(),
            found: format!("redb file format {version}, which needs an upgrade"),
        },
        // A Cairn store opens its tables with these types only; another program's file may not.
        e @ (redb::Error::TableTypeMismatch { .. }
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_)) => corrupt(path, e.to_string()),
        // redb reports a file that does not start with its magic number this way.
        redb::Error::Io(e) if e.kind() == io::ErrorKind::InvalidData => corrupt(path, e.to_string()),
        // redb reads pages at the offsets its header promises: a short read means the file was
        // cut short.
        redb::Error::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            corrupt(path, format!("the file is shorter than its layout says ({e})"))
        }
        redb::Error::Io(e) if matches!(stage, Stage::Write) && is_no_space(&e) => {
            StoreError::NoSpace { path: path.to_owned(), detail: e.to_string() }
        }
        e => match stage {
            Stage::Open => access(path, &e),
            Stage::Write => StoreError::Io { path: path.to_owned(), detail: e.to_string() },
        },
    }
}

fn corrupt(path: &Path, detail: String) -> StoreError {
    StoreError::Corrupt { path: path.to_owned(), detail }
}

fn access(path: &Path, error: &dyn std::error::Error) -> StoreError {
    StoreError::Access { path: path.to_owned(), detail: error.to_string() }
}

/// The directory holding `path`; `.` for a bare file name.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Creates `dir` and its missing ancestors, and syncs the parent of each one created, so the
/// new directories survive a crash.
fn create_dir_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    // Bounded by the number of components of `dir`.
    for ancestor in dir.ancestors().filter(|a| !a.as_os_str().is_empty()) {
        if ancestor.try_exists()? {
            break;
        }
        missing.push(ancestor);
    }
    if missing.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    // Top-down, so each entry is synced after its own parent's entry is durable.
    for created in missing.iter().rev() {
        sync_dir(parent_dir(created))?;
    }
    Ok(())
}

/// Makes the entries of `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
