//! `cairnd check-store`: reads a stopped node's store and checks it offline, the way a start
//! would and more thoroughly: every page checksum (redb), every event decoded and matched with
//! its id and log position, then every event validated again against the genesis in log order
//! (id, signature, seq chain, causal closure: each event's deps before it), every piece of
//! evidence verified, and the persisted document compared with one rebuilt from the log (the
//! persisted one, with the log's tail it has not applied replayed as a start does, must equal
//! the rebuild key by key). Each problem is reported with the event's id or the key.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::bail;
use cairn_protocol::document::{Document, KeyKind};
use cairn_protocol::{EventId, Genesis, Node, NodeConfig, codec};

use crate::store::{OwnHistory, Store, StoreError};

/// What the check found.
#[derive(Debug, Default)]
pub struct Report {
    /// Events in the store.
    pub n_events: u64,
    /// Evidence in the store.
    pub n_evidence: u64,
    /// What the store knows of the node's own events.
    pub own_history: OwnHistory,
    /// The store's format before this open upgraded it, if it did.
    pub upgraded_from: Option<u64>,
    /// Every problem, one line each; empty for a sound store.
    pub problems: Vec<String>,
}

/// The most problems listed one by one; the rest are counted.
pub const PROBLEMS_LISTED_MAX: usize = 100;

/// Checks the store at `path` of the node `me` of `genesis`. An error means the check could
/// not run (no store, in use); a store that is damaged gives a report with problems.
pub fn check_store(path: &Path, genesis: &Genesis, me: cairn_crypto::PublicKey) -> anyhow::Result<Report> {
    if !path.try_exists().unwrap_or(false) {
        bail!("there is no store at {}", path.display());
    }
    crate::backup::ensure_stopped(path)?;
    let mut report = Report::default();
    let (store, loaded) = match Store::open(
        path,
        genesis.cluster_id(),
        me.0,
        OwnHistory::Unknown,
        &crate::store::member_keys(genesis),
    ) {
        Ok(opened) => opened,
        Err(error @ (StoreError::Corrupt { .. } | StoreError::Format { .. })) => {
            report.problems.push(error.to_string());
            return Ok(report);
        }
        Err(error) => return Err(error.into()),
    };
    // The persisted document's author indices mean the store's roster.
    let later: Vec<cairn_crypto::PublicKey> =
        loaded.roster_later.iter().map(|key| cairn_crypto::PublicKey(*key)).collect();
    let stored_roster = match cairn_protocol::Roster::with_later(genesis, &later) {
        Ok(roster) => roster,
        Err(error) => {
            report.problems.push(format!("the store's `roster` does not load: {error}"));
            return Ok(report);
        }
    };
    let persisted = match store.load_document(stored_roster.keys()) {
        Ok(document) => document,
        Err(error) => {
            report.problems.push(error.to_string());
            None
        }
    };
    drop(store);
    report.n_events = loaded.events.len() as u64;
    report.n_evidence = loaded.evidence.len() as u64;
    report.own_history = loaded.own_history;
    report.upgraded_from = loaded.upgraded_from;

    let ids: Vec<EventId> = loaded.ids.iter().map(|id| EventId(*id)).collect();
    let doc_through = usize::try_from(loaded.doc_through).unwrap_or(usize::MAX).min(ids.len());
    // Validated again over the store's roster, in its order: the node indexed keys in the order
    // it accepted the events that named them, which a log (in commit order) need not repeat.
    let mut node = Node::resume(
        genesis.clone(),
        None,
        NodeConfig::default(),
        Box::new(cairn_protocol::MemoryArchive::new()),
        stored_roster.clone(),
        vec![cairn_protocol::ChainState::default(); stored_roster.len()],
        None,
    );
    let rejected = node.restore(loaded.events);
    let mut flagged: BTreeSet<EventId> = BTreeSet::new();
    for rejection in &rejected {
        let position = rejection.id.and_then(|id| ids.iter().position(|i| *i == id));
        let id = rejection.id.map_or_else(|| "(does not decode)".to_owned(), |id| id.to_string());
        let at = position.map_or_else(String::new, |p| format!(" (log position {p})"));
        report.problems.push(format!("event {id}{at}: {}", rejection.reason));
        if let Some(id) = rejection.id {
            flagged.insert(id);
        }
    }
    // Events neither accepted nor rejected wait for deps the store does not hold before them.
    for (position, id) in ids.iter().enumerate() {
        if !node.adapter().is_accepted(id) && !flagged.contains(id) {
            report.problems.push(format!(
                "event {id} (log position {position}): a dependency is missing from the store or comes after it \
                 (the store is not causally closed)"
            ));
        }
    }
    for bytes in &loaded.evidence {
        match codec::decode_evidence(bytes) {
            Err(error) => report.problems.push(format!("evidence that does not decode: {error}")),
            Ok(evidence) => {
                let author = evidence.author();
                if let Err(error) = node.restore_evidence(evidence) {
                    report.problems.push(format!("the evidence against {author} does not verify: {error}"));
                }
            }
        }
    }
    // Every key the log's ops name must be in the store's roster: validating again appends any
    // it lacks.
    if node.adapter().roster().len() != stored_roster.len() {
        report.problems.push(format!(
            "the store's `roster` indexes {} key(s), but its log's membership ops name {}",
            stored_roster.len(),
            node.adapter().roster().len()
        ));
    }
    if report.problems.is_empty()
        && let Some(persisted) = persisted
    {
        compare_documents(node, persisted, &ids, doc_through, genesis, &mut report);
    }
    Ok(report)
}

/// Opens the persisted document over the rebuilt node's archive as a start does (forks
/// excluded, the log's tail from `tail` replayed) and reports every key whose visible state
/// differs from the rebuild's.
fn compare_documents(
    rebuilt: Node,
    persisted: Document,
    ids: &[EventId],
    doc_through: usize,
    genesis: &Genesis,
    report: &mut Report,
) {
    let (adapter, reference) = rebuilt.into_parts();
    let chains = adapter.chain_states().to_vec();
    let (archive, roster, _) = adapter.into_parts();
    let all: Vec<_> = ids.iter().filter_map(|id| archive.event(id)).collect();
    let tail = all[doc_through.min(all.len())..].to_vec();
    let mut resumed =
        Node::resume(genesis.clone(), None, NodeConfig::default(), archive, roster, chains, Some(persisted));
    resumed.resume_membership(&all);
    if !resumed.replay_document(&tail).is_empty() {
        report.problems.push("the log's tail after the persisted document does not replay".to_owned());
    }
    let opened = resumed.document();
    if opened.digest() == reference.digest() {
        return;
    }
    let mut differing = Vec::new();
    let keys = |doc: &Document| -> BTreeSet<(KeyKind, Vec<u8>)> {
        doc.register_keys()
            .map(|k| (KeyKind::Register, k.to_vec()))
            .chain(doc.counter_keys().map(|k| (KeyKind::Counter, k.to_vec())))
            .chain(doc.set_keys().map(|k| (KeyKind::Set, k.to_vec())))
            .collect()
    };
    for (kind, key) in keys(opened).union(&keys(&reference)) {
        let same = match kind {
            KeyKind::Register => opened.register(key) == reference.register(key),
            KeyKind::Counter => opened.counter_totals(key) == reference.counter_totals(key),
            KeyKind::Set => opened.set_members(key) == reference.set_members(key),
        };
        if !same {
            differing.push(format!("{kind:?} {}", String::from_utf8_lossy(key)));
        }
    }
    report.problems.push(format!(
        "the persisted document differs from the one rebuilt from the log ({} key(s): {}); a start would serve \
         it. Move the store away and let the node catch up from its peers",
        differing.len(),
        differing.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
    ));
}
