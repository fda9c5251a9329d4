//! The simulated store of one node: what the daemon's redb store promises, in memory, with the
//! faults of a real disk. It holds the durable events (in commit order, each id once, as the
//! `log` and `ids` tables do) and the newest evidence per author; it takes one
//! [`CommitJob`] at a time, whose fsync completes after a virtual delay the cluster schedules;
//! it can be full for a while, when a commit stores nothing and is answered
//! [`Committed::NoSpace`]; and it survives a crash of its process, which may or may not have
//! landed the job in flight (an fsync can complete just before the process dies). It can also
//! be lost altogether (a node restarted with an empty data directory).

use std::collections::{BTreeMap, BTreeSet};

use cairn_daemon::commit::{CommitJob, Committed};
use cairn_protocol::document::{Covered, KeyKind};

/// What happened to the job in flight when the process crashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashedJob {
    /// No job was with the store.
    None,
    /// Its fsync completed just before the crash: everything of it is durable.
    Landed,
    /// It never reached the disk (or the disk was full): nothing of it is durable.
    Lost,
}

/// The store of one simulated node. See the module docs.
#[derive(Debug, Default)]
pub struct SimStore {
    events: Vec<Vec<u8>>,
    ids: BTreeSet<[u8; 32]>,
    evidence: BTreeMap<[u8; 32], Vec<u8>>,
    /// The store's file system is full until this time.
    full_until_ms: u64,
    /// The job with the store, by number.
    in_flight: Option<(u64, CommitJob)>,
    n_jobs: u64,
    /// The store's `own_history` mark: it holds every event the node's key signed (written in
    /// the same transaction as a job with `own_history_complete`, as the daemon's store does).
    own_history_complete: bool,
    /// The persisted document, as the daemon's `doc` table holds it: each key's state.
    doc: BTreeMap<(KeyKind, Vec<u8>), Vec<u8>>,
    /// Its exclusions (`meta["doc_exclusions"]`).
    doc_exclusions: Option<Vec<u8>>,
    /// The covered records (the `covered` table).
    covered: Vec<Covered>,
    /// How many of `events`, from the first, the persisted document has applied.
    doc_through: usize,
    /// The node's roster after the genesis members ([`CommitJob::roster`]), as last stored.
    roster: Vec<[u8; 32]>,
}

/// The persisted document of a [`SimStore`], as a start reads it.
#[derive(Debug)]
pub struct PersistedDocument<'a> {
    /// Each key's state.
    pub keys: &'a BTreeMap<(KeyKind, Vec<u8>), Vec<u8>>,
    /// The exclusions, if ever persisted.
    pub exclusions: Option<&'a [u8]>,
    /// Every covered record.
    pub covered: &'a [Covered],
    /// How many of the store's events, from the first, it has applied.
    pub through: usize,
}

impl SimStore {
    /// An empty store with room, made for a node of a brand-new cluster (`own_history_complete`)
    /// or for one that joins a running cluster.
    pub fn new(own_history_complete: bool) -> Self {
        Self { own_history_complete, ..Self::default() }
    }

    /// Whether the store is marked as holding every event of the node's own key.
    pub fn own_history_complete(&self) -> bool {
        self.own_history_complete
    }

    // ---- getters --------------------------------------------------------------------------

    /// The durable events, in commit order (a causal order).
    pub fn events(&self) -> &[Vec<u8>] {
        &self.events
    }

    /// The persisted document.
    pub fn document(&self) -> PersistedDocument<'_> {
        PersistedDocument {
            keys: &self.doc,
            exclusions: self.doc_exclusions.as_deref(),
            covered: &self.covered,
            through: self.doc_through,
        }
    }

    /// The keys the node's roster indexed after the genesis members, as last stored.
    pub fn roster(&self) -> &[[u8; 32]] {
        &self.roster
    }

    /// Whether the event with id `id` is durable.
    pub fn holds(&self, id: &[u8; 32]) -> bool {
        self.ids.contains(id)
    }

    /// The durable evidence, one (the newest) per author, in author order.
    pub fn evidence(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.evidence.values()
    }

    /// The job with the store, if one is in flight.
    pub fn in_flight(&self) -> Option<&CommitJob> {
        self.in_flight.as_ref().map(|(_, job)| job)
    }

    /// Whether the file system is full at `now_ms`.
    pub fn is_full(&self, now_ms: u64) -> bool {
        now_ms < self.full_until_ms
    }

    // ---- inputs ---------------------------------------------------------------------------

    /// The file system is full from now until `until_ms` (a longer window already running is
    /// kept).
    pub fn fill_until(&mut self, until_ms: u64) {
        self.full_until_ms = self.full_until_ms.max(until_ms);
    }

    /// Takes a job; returns its number, which [`SimStore::complete`] names.
    ///
    /// # Panics
    ///
    /// If a job is already in flight: the group commit hands out one at a time.
    pub fn submit(&mut self, job: CommitJob) -> u64 {
        assert!(self.in_flight.is_none(), "the group commit handed out a second job while one was in flight");
        self.n_jobs += 1;
        self.in_flight = Some((self.n_jobs, job));
        self.n_jobs
    }

    /// The fsync of job `job_number` completes at `now_ms`: the verdict, with the job given back,
    /// or `None` if that job is no longer in flight (its process crashed meanwhile). A full file
    /// system stores nothing of it.
    pub fn complete(&mut self, job_number: u64, now_ms: u64) -> Option<(Committed, CommitJob)> {
        if self.in_flight.as_ref().is_none_or(|(n, _)| *n != job_number) {
            return None;
        }
        let (_, job) = self.in_flight.take()?;
        if self.is_full(now_ms) {
            let committed = Committed::NoSpace {
                write_error: "the simulated store's file system is full".to_owned(),
                reason: "the simulated store's file system is full: writes fail until there is room again"
                    .to_owned(),
            };
            return Some((committed, job));
        }
        self.append(&job);
        Some((Committed::Ok, job))
    }

    /// The process crashes at `now_ms`. The job in flight lands if `landed` and the file system
    /// has room, and is lost otherwise. Returns what happened to it, and the job if it landed.
    pub fn crash(&mut self, landed: bool, now_ms: u64) -> (CrashedJob, Option<CommitJob>) {
        let Some((_, job)) = self.in_flight.take() else { return (CrashedJob::None, None) };
        if landed && !self.is_full(now_ms) {
            self.append(&job);
            (CrashedJob::Landed, Some(job))
        } else {
            (CrashedJob::Lost, None)
        }
    }

    /// The data directory is lost: nothing durable remains, and the job in flight with it.
    pub fn lose_everything(&mut self) {
        self.events.clear();
        self.ids.clear();
        self.evidence.clear();
        self.doc.clear();
        self.doc_exclusions = None;
        self.covered.clear();
        self.doc_through = 0;
        self.roster.clear();
        self.in_flight = None;
        // The node starts again with a new, empty store for a running cluster.
        self.own_history_complete = false;
    }

    // ---- internals ------------------------------------------------------------------------

    /// One write transaction: every new event in order (an id already held is skipped, as the
    /// `ids` table does), and the evidence (the newest per author).
    fn append(&mut self, job: &CommitJob) {
        for (i, event) in job.events.iter().enumerate() {
            if job.document.is_some() && i == job.n_doc_events {
                self.doc_through = self.events.len();
            }
            if self.ids.insert(event.id()) {
                self.events.push(event.bytes().to_vec());
            }
        }
        if let Some(delta) = &job.document {
            if job.n_doc_events == job.events.len() {
                self.doc_through = self.events.len();
            }
            for (kind, key, state) in &delta.keys {
                match state {
                    Some(state) => self.doc.insert((*kind, key.clone()), state.clone()),
                    None => self.doc.remove(&(*kind, key.clone())),
                };
            }
            if let Some(exclusions) = &delta.exclusions {
                self.doc_exclusions = Some(exclusions.clone());
            }
            self.covered.extend(delta.covered.iter().cloned());
        }
        for (author, bytes) in &job.evidence {
            self.evidence.insert(*author, bytes.clone());
        }
        self.own_history_complete |= job.own_history_complete;
        // The roster only grows.
        if job.roster.len() > self.roster.len() {
            self.roster = job.roster.clone();
        }
    }
}
