//! Tests of the durable store at its boundary: what goes in comes back in order across a
//! reopen, duplicates and superseded evidence are not kept twice, and a store that belongs
//! elsewhere, is in use, or was damaged is refused with the right error and a message that
//! names the file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_crypto::SecretKey;
use cairn_daemon::store::{FORMAT_VERSION, Loaded, OwnHistory, Store, StoreError};
use cairn_protocol::{ChainState, Event, EventId, Evidence, Op, SignedHeader};
use redb::TableDefinition;

const CLUSTER: [u8; 32] = [7; 32];

/// The layout's tables, as a tool outside cairnd would open them to damage a store.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const IDS: TableDefinition<&[u8; 32], u64> = TableDefinition::new("ids");

fn author() -> SecretKey {
    SecretKey::from_seed(&[1; 32])
}

fn node_key() -> [u8; 32] {
    author().public().0
}

/// What a new store of one member holds.
fn empty() -> Loaded {
    Loaded { chains: vec![ChainState::default()], authors: vec![(0, 0)], ..Loaded::default() }
}

fn open(path: &Path) -> Result<(Store, Loaded), StoreError> {
    Store::open(path, CLUSTER, node_key(), OwnHistory::Unknown, &[author().public().0])
}

/// `n` events by [`author`], each depending on the one before, with `seq_first` as the first
/// seq, each putting `value` under its own key.
fn chain(seq_first: u64, n: u64, value: &[u8]) -> Vec<Event> {
    let key = author();
    let mut events: Vec<Event> = Vec::new();
    for seq in seq_first..seq_first + n {
        let deps = events.last().map(|e| vec![e.id()]).unwrap_or_default();
        let ops = vec![Op::Put { key: format!("k{seq}").into_bytes(), value: value.to_vec() }];
        events.push(Event::sign(&key, seq, seq, deps, ops));
    }
    events
}

/// Evidence that the member with key seed `seed` signed two events with seq `seq`; `variant`
/// picks one of many such pairs.
fn evidence(seed: u8, seq: u64, variant: u8) -> Evidence {
    let key = SecretKey::from_seed(&[seed; 32]);
    let signed = |value: Vec<u8>| {
        let event = Event::sign(&key, seq, seq, vec![], vec![Op::Put { key: b"x".to_vec(), value }]);
        SignedHeader { header: event.header, sig: event.sig }
    };
    Evidence::new(signed(vec![variant, 0]), signed(vec![variant, 1]))
}

fn append(store: &mut Store, events: &[Event], evidence: &[Evidence]) {
    let events: Vec<(EventId, Vec<u8>)> = events.iter().map(|e| (e.id(), e.encode())).collect();
    let evidence: Vec<([u8; 32], Vec<u8>)> = evidence.iter().map(|e| (e.author().0, e.encode())).collect();
    let events: Vec<([u8; 32], &[u8])> = events.iter().map(|(id, bytes)| (id.0, bytes.as_slice())).collect();
    let evidence: Vec<([u8; 32], &[u8])> = evidence.iter().map(|(k, bytes)| (*k, bytes.as_slice())).collect();
    store.append(&events, &evidence, false).unwrap();
}

fn encoded(events: &[Event]) -> Vec<Vec<u8>> {
    events.iter().map(Event::encode).collect()
}

/// A store at `dir/store.redb` holding `events`, closed again.
fn store_with(dir: &Path, events: &[Event]) -> PathBuf {
    let path = dir.join("store.redb");
    let (mut store, _) = open(&path).unwrap();
    append(&mut store, events, &[]);
    path
}

/// Opens `path` as this node expecting a refusal, and checks that the message names the file.
fn refused(path: &Path, cluster_id: [u8; 32], node_key: [u8; 32]) -> StoreError {
    let Err(error) = Store::open(path, cluster_id, node_key, OwnHistory::Unknown, &[author().public().0])
    else {
        panic!("the store at {} was opened, but should have been refused", path.display());
    };
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "the message does not name the file: {message}");
    error
}

/// Changes a closed store through redb itself, so its checksums stay valid and only the
/// store's own checks can notice.
fn tamper(path: &Path, change: impl FnOnce(&redb::WriteTransaction)) {
    let db = redb::Database::create(path).unwrap();
    let tx = db.begin_write().unwrap();
    change(&tx);
    tx.commit().unwrap();
}

fn assert_corrupt(error: &StoreError, detail_part: &str) {
    match error {
        StoreError::Corrupt { detail, .. } => assert!(detail.contains(detail_part), "{error}"),
        _ => panic!("expected Corrupt, got {error}"),
    }
}

/// A 4 KiB value that cannot occur by chance, so its place in a store file can be found.
fn pattern() -> Vec<u8> {
    (0..4096u32).flat_map(|i| (i ^ 0x5a5a).to_le_bytes()).take(4096).collect()
}

/// Flips one bit in the middle of every copy of [`pattern`] in the file. A bit flipped in free
/// space would go unnoticed, so this hits the live value wherever it is, and any old copy too.
fn flip_in_pattern(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let pattern = pattern();
    let needle = &pattern[..256];
    let offsets: Vec<usize> =
        bytes.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(i, _)| i).collect();
    assert!(!offsets.is_empty(), "the pattern is not in {}", path.display());
    for offset in offsets {
        bytes[offset + 2048] ^= 0x01;
    }
    fs::write(path, &bytes).unwrap();
}

/// Deterministic bytes that are not a redb file.
fn garbage(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

#[test]
fn round_trip_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let events = chain(1, 30, b"v");
    let evidence = [evidence(2, 5, 0), evidence(3, 9, 0)];

    let (mut store, loaded) = open(&path).unwrap();
    assert_eq!(loaded, empty());
    assert_eq!(store.path(), path);
    append(&mut store, &events[..10], &[]);
    append(&mut store, &events[10..25], &evidence[..1]);
    append(&mut store, &events[25..], &evidence[1..]);
    append(&mut store, &[], &[]);
    assert_eq!(store.n_events(), 30);
    drop(store);

    let (store, loaded) = open(&path).unwrap();
    assert_eq!(store.n_events(), 30);
    assert_eq!(loaded.events, encoded(&events));
    let mut expected: Vec<_> = evidence.iter().map(|e| (e.author().0, e.encode())).collect();
    expected.sort();
    assert_eq!(loaded.evidence, expected.into_iter().map(|(_, bytes)| bytes).collect::<Vec<_>>());
}

#[test]
fn appends_continue_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let events = chain(1, 6, b"v");
    let path = store_with(dir.path(), &events[..3]);
    let (mut store, _) = open(&path).unwrap();
    append(&mut store, &events[3..], &[]);
    drop(store);
    let (store, loaded) = open(&path).unwrap();
    assert_eq!(store.n_events(), 6);
    assert_eq!(loaded.events, encoded(&events));
}

#[test]
fn duplicate_ids_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let events = chain(1, 4, b"v");
    let (mut store, _) = open(&path).unwrap();
    append(&mut store, &events[..2], &[]);
    // Again across commits, and twice within one batch.
    append(&mut store, &[events[1].clone(), events[2].clone(), events[2].clone(), events[0].clone()], &[]);
    append(&mut store, &events[3..], &[]);
    append(&mut store, &events, &[]);
    assert_eq!(store.n_events(), 4);
    // Each id still finds its own event (a duplicate leaves its first entry in `ids` as it was).
    let db = store.shared_db();
    for event in &events {
        let (_, bytes) = cairn_daemon::store::reads::event(&db, &event.id()).unwrap().unwrap();
        assert_eq!(bytes, event.encode());
    }
    drop(db);
    drop(store);
    let (store, loaded) = open(&path).unwrap();
    assert_eq!(store.n_events(), 4);
    assert_eq!(loaded.events, encoded(&events));
}

#[test]
fn evidence_is_replaced_per_author() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let (mut store, _) = open(&path).unwrap();
    append(&mut store, &[], &[evidence(2, 5, 0), evidence(3, 9, 0)]);
    append(&mut store, &[], &[evidence(2, 4, 1)]);
    drop(store);
    let (_, loaded) = open(&path).unwrap();
    let mut expected = [evidence(2, 4, 1), evidence(3, 9, 0)];
    expected.sort_by_key(|e| e.author().0);
    assert_eq!(loaded.evidence, expected.iter().map(Evidence::encode).collect::<Vec<_>>());
}

#[test]
fn missing_directories_are_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/store.redb");
    let events = chain(1, 2, b"v");
    let (mut store, _) = open(&path).unwrap();
    append(&mut store, &events, &[]);
    drop(store);
    assert_eq!(open(&path).unwrap().1.events, encoded(&events));
}

#[test]
fn an_empty_file_becomes_a_new_store() {
    // What a crash can leave between creating the file and the first commit.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    fs::write(&path, b"").unwrap();
    let (store, loaded) = open(&path).unwrap();
    assert_eq!((store.n_events(), loaded), (0, empty()));
}

#[test]
fn other_cluster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(dir.path(), &chain(1, 1, b"v"));
    let error = refused(&path, [8; 32], node_key());
    assert!(matches!(error, StoreError::OtherCluster { stored, expected, .. }
        if stored == CLUSTER && expected == [8; 32]));
    let message = error.to_string();
    assert!(message.contains(&hex::encode(CLUSTER)) && message.contains("data_dir"), "{message}");
}

#[test]
fn other_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(dir.path(), &chain(1, 1, b"v"));
    let other = SecretKey::from_seed(&[9; 32]).public().0;
    let error = refused(&path, CLUSTER, other);
    assert!(matches!(error, StoreError::OtherKey { stored, expected, .. }
        if stored == node_key() && expected == other));
}

#[test]
fn unknown_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(dir.path(), &chain(1, 1, b"v"));
    tamper(&path, |tx| {
        let mut meta = tx.open_table(META).unwrap();
        meta.insert("format", (FORMAT_VERSION + 1).to_le_bytes().as_slice()).unwrap();
    });
    let error = refused(&path, CLUSTER, node_key());
    assert!(matches!(error, StoreError::Format { .. }), "{error}");
    assert!(error.to_string().contains(&format!("store format {}", FORMAT_VERSION + 1)), "{error}");
}

/// The own-history mark: what a new store starts with, set only in the transaction of a batch
/// that carries it, kept across reopens, and set by hand for a rolled-back disk.
#[test]
fn the_own_history_mark_is_written_with_the_batch_that_carries_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let events = chain(1, 3, b"v");
    let (mut store, loaded) = open(&path).unwrap();
    assert_eq!((loaded.own_history, store.own_history()), (OwnHistory::Unknown, OwnHistory::Unknown));
    // Own events relearned from peers do not mark it: only a batch signed in this process does.
    append(&mut store, &events[..2], &[]);
    drop(store);
    let (mut store, loaded) = open(&path).unwrap();
    assert_eq!(loaded.own_history, OwnHistory::Unknown);
    let bytes = events[2].encode();
    store.append(&[(events[2].id().0, bytes.as_slice())], &[], true).unwrap();
    assert_eq!(store.own_history(), OwnHistory::Complete);
    drop(store);
    let (mut store, loaded) = open(&path).unwrap();
    assert_eq!(loaded.own_history, OwnHistory::Complete);
    assert_eq!(loaded.events, encoded(&events));
    store.set_own_history(OwnHistory::RolledBack).unwrap();
    drop(store);
    let (_, loaded) = open(&path).unwrap();
    assert_eq!(loaded.own_history, OwnHistory::RolledBack);

    // A store made for a brand-new cluster is complete from the start; the mark of a store that
    // exists is never replaced by what a new one would get.
    let path = dir.path().join("new.redb");
    let (store, loaded) =
        Store::open(&path, CLUSTER, node_key(), OwnHistory::Complete, &[author().public().0]).unwrap();
    assert_eq!((loaded.own_history, store.own_history()), (OwnHistory::Complete, OwnHistory::Complete));
    drop(store);
    let (_, loaded) =
        Store::open(&path, CLUSTER, node_key(), OwnHistory::Unknown, &[author().public().0]).unwrap();
    assert_eq!(loaded.own_history, OwnHistory::Complete);
}

#[test]
fn a_bad_own_history_mark_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(dir.path(), &chain(1, 2, b"v"));
    tamper(&path, |tx| {
        tx.open_table(META).unwrap().insert("own_history", [7u8].as_slice()).unwrap();
    });
    assert_corrupt(&refused(&path, CLUSTER, node_key()), "own_history");
    tamper(&path, |tx| {
        tx.open_table(META).unwrap().remove("own_history").unwrap();
    });
    assert_corrupt(&refused(&path, CLUSTER, node_key()), "no `own_history`");
}

/// A store of format 1 (no own-history mark) is upgraded in place. Nothing in it says whether
/// it holds the node's whole own chain (format 1 trusted any store holding an own event, which
/// a crash while relearning made unsafe), so the node learns its seq once from its peers,
/// unless it is the only member. The real store written by format 1's cairnd is upgraded in
/// `store_upgrade.rs`.
#[test]
fn format_1_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let two = [author().public().0, SecretKey::from_seed(&[9; 32]).public().0];
    let one = [author().public().0];
    for (name, events, members, expected) in [
        ("own.redb", chain(1, 3, b"v"), &two[..], OwnHistory::Unknown),
        ("none.redb", Vec::new(), &two[..], OwnHistory::Unknown),
        ("sole.redb", chain(1, 3, b"v"), &one[..], OwnHistory::Complete),
    ] {
        let path = dir.path().join(name);
        let open = |path: &Path| Store::open(path, CLUSTER, node_key(), OwnHistory::Unknown, members);
        let (mut store, _) = open(&path).unwrap();
        append(&mut store, &events, &[]);
        drop(store);
        tamper(&path, |tx| {
            let mut meta = tx.open_table(META).unwrap();
            meta.insert("format", 1u64.to_le_bytes().as_slice()).unwrap();
            meta.remove("own_history").unwrap();
        });
        let (_, loaded) = open(&path).unwrap();
        assert_eq!((loaded.upgraded_from, loaded.own_history), (Some(1), expected), "{name}");
        assert_eq!(loaded.events, encoded(&events));
        let (_, loaded) = open(&path).unwrap();
        assert_eq!((loaded.upgraded_from, loaded.own_history), (None, expected), "{name} reopened");
    }
}

/// What a backup reads: the log in pieces of a bounded size, from any position, and the
/// evidence.
#[test]
fn the_log_reads_back_in_bounded_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let events = chain(1, 50, &[3; 1000]);
    let path = store_with(dir.path(), &events);
    let (mut store, _) = open(&path).unwrap();
    append(&mut store, &[], &[evidence(2, 1, 0)]);
    let mut read = Vec::new();
    let mut from = 0;
    loop {
        let (piece, next) = store.read_log(from, 4_500).unwrap();
        if piece.is_empty() {
            break;
        }
        assert!(piece.len() <= 4, "{} events of about 1 100 bytes in 4 500 bytes", piece.len());
        assert_eq!(next, from + piece.len() as u64);
        read.extend(piece);
        from = next;
    }
    assert_eq!(read, encoded(&events));
    // One event larger than the bound still comes, alone.
    assert_eq!(store.read_log(7, 10).unwrap().0, encoded(&events[7..8]));
    assert_eq!(store.read_evidence().unwrap(), vec![evidence(2, 1, 0).encode()]);
}

#[test]
fn not_a_redb_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [("short", b"this is not a database\n".to_vec()), ("long", garbage(64 * 1024))] {
        let path = dir.path().join(name);
        fs::write(&path, &bytes).unwrap();
        let error = refused(&path, CLUSTER, node_key());
        assert!(matches!(error, StoreError::Corrupt { .. }), "{name}: {error}");
        assert!(error.to_string().contains("refused, not used"), "{error}");
        // The file is left as it was, for whoever investigates.
        assert_eq!(fs::read(&path).unwrap(), bytes, "{name}");
    }
}

#[test]
fn another_programs_redb_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    tamper(&path, |tx| {
        let mut table = tx.open_table(TableDefinition::<u64, u64>::new("other")).unwrap();
        table.insert(1, 2).unwrap();
    });
    assert_corrupt(&refused(&path, CLUSTER, node_key()), "no `meta` table");

    // Its tables have our names but other types.
    let path = dir.path().join("typed.redb");
    tamper(&path, |tx| {
        let mut meta = tx.open_table(META).unwrap();
        meta.insert("format", FORMAT_VERSION.to_le_bytes().as_slice()).unwrap();
        meta.insert("cluster_id", CLUSTER.as_slice()).unwrap();
        meta.insert("node_key", node_key().as_slice()).unwrap();
        meta.insert("own_history", [1u8].as_slice()).unwrap();
        tx.open_table(TableDefinition::<&str, &str>::new("log")).unwrap();
    });
    assert_corrupt(&refused(&path, CLUSTER, node_key()), "log");
}

#[test]
fn truncated_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(dir.path(), &chain(1, 200, &[5; 1000]));
    let len = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len / 2).unwrap();
    let error = refused(&path, CLUSTER, node_key());
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
}

#[test]
fn flipped_byte_in_the_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut events = chain(1, 20, b"v");
    events.extend(chain(21, 1, &pattern()));
    let path = store_with(dir.path(), &events);
    flip_in_pattern(&path);
    let error = refused(&path, CLUSTER, node_key());
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
}

#[test]
fn log_and_ids_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    let events = chain(1, 3, b"v");
    type Change = Box<dyn FnOnce(&redb::WriteTransaction)>;
    let id_of_second = events[1].id().0;
    let other = chain(1, 1, b"w").remove(0);
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "id removed",
            Box::new(move |tx| {
                tx.open_table(IDS).unwrap().remove(&id_of_second).unwrap();
            }),
            "but `ids` 2",
        ),
        (
            "id moved",
            Box::new(move |tx| {
                tx.open_table(IDS).unwrap().insert(&id_of_second, 0).unwrap();
            }),
            "filed in `ids` at position 0",
        ),
        (
            "event replaced by another with valid checksums",
            Box::new(move |tx| {
                tx.open_table(LOG).unwrap().insert(1, other.encode().as_slice()).unwrap();
            }),
            "missing from `ids`",
        ),
        (
            "event bytes that do not decode",
            Box::new(|tx| {
                tx.open_table(LOG).unwrap().insert(1, b"junk".as_slice()).unwrap();
            }),
            "does not decode",
        ),
        (
            "ops changed under the header",
            Box::new({
                let mut changed = events[1].clone();
                changed.ops = vec![Op::Put { key: b"k2".to_vec(), value: b"X".to_vec() }];
                move |tx| {
                    tx.open_table(LOG).unwrap().insert(1, changed.encode().as_slice()).unwrap();
                }
            }),
            "ops do not match",
        ),
        (
            "a gap in the positions",
            Box::new(move |tx| {
                let mut log = tx.open_table(LOG).unwrap();
                let bytes = log.remove(2).unwrap().unwrap().value().to_vec();
                log.insert(7, bytes.as_slice()).unwrap();
                tx.open_table(IDS).unwrap().insert(&events[2].id().0, 7).unwrap();
            }),
            "entry 2 is at position 7",
        ),
    ];
    for (name, change, detail) in cases {
        let path = store_with(&dir.path().join(name.replace(' ', "_")), &chain(1, 3, b"v"));
        tamper(&path, change);
        let error = refused(&path, CLUSTER, node_key());
        assert!(
            matches!(&error, StoreError::Corrupt { detail: d, .. } if d.contains(detail)),
            "{name}: {error}"
        );
    }
}

#[test]
fn second_open_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(dir.path(), &chain(1, 1, b"v"));
    let (first, _) = open(&path).unwrap();
    let error = refused(&path, CLUSTER, node_key());
    assert!(matches!(error, StoreError::InUse { .. }), "{error}");
    assert!(error.to_string().contains("another cairnd is using"), "{error}");
    drop(first);
    assert_eq!(open(&path).unwrap().0.n_events(), 1);
}

#[test]
fn a_directory_in_the_way_is_an_access_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    fs::create_dir(&path).unwrap();
    let error = refused(&path, CLUSTER, node_key());
    assert!(matches!(error, StoreError::Access { .. }), "{error}");
}

#[test]
#[should_panic(expected = "does not have the id")]
fn appending_an_event_under_another_id_is_a_bug() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = open(&dir.path().join("store.redb")).unwrap();
    let event = chain(1, 1, b"v").remove(0);
    let _ = store.append(&[([0; 32], &event.encode())], &[], false);
}

#[test]
#[should_panic(expected = "not by the author")]
fn appending_evidence_under_another_author_is_a_bug() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = open(&dir.path().join("store.redb")).unwrap();
    let _ = store.append(&[], &[([0; 32], &evidence(2, 1, 0).encode())], false);
}

/// Set in the environment of a child test process that writes a store and then dies without
/// closing it; the value is the store's path.
const CRASH_CHILD_STORE: &str = "CAIRN_TEST_CRASH_CHILD_STORE";
/// The exit code of a child that committed everything and then "crashed".
const CRASH_CHILD_EXIT: i32 = 42;

/// The events the crash child writes: 20 small ones in four commits, then one with
/// [`pattern`] in a commit of its own.
fn crash_child_events() -> Vec<Event> {
    let mut events = chain(1, 20, b"v");
    events.extend(chain(21, 1, &pattern()));
    events
}

/// Runs this test binary again as the crash child, which fills the store at `path` and exits
/// without closing it: no destructor runs, as after `kill -9`.
fn write_and_crash(path: &Path) {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--test-threads=1", "--nocapture"])
        .env(CRASH_CHILD_STORE, path)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(CRASH_CHILD_EXIT),
        "the crash child failed: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Not a test of its own: the child process of [`write_and_crash`]. It does nothing unless
/// started by it.
#[test]
fn crash_child() {
    let Some(path) = std::env::var_os(CRASH_CHILD_STORE) else { return };
    let events = crash_child_events();
    let (mut store, _) = open(Path::new(&path)).unwrap();
    for batch in events[..20].chunks(5) {
        append(&mut store, batch, &[]);
    }
    append(&mut store, &events[20..], &[evidence(2, 3, 0)]);
    // `exit` runs no destructors, so redb never learns that the store is closing.
    std::process::exit(CRASH_CHILD_EXIT);
}

#[test]
fn every_commit_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    write_and_crash(&path);
    let (mut store, loaded) = open(&path).unwrap();
    assert!(!store.rolled_back());
    assert_eq!(loaded.events, encoded(&crash_child_events()));
    assert_eq!(loaded.evidence, vec![evidence(2, 3, 0).encode()]);
    // And the store takes new writes after the recovery.
    append(&mut store, &chain(22, 1, b"v"), &[]);
    assert_eq!(store.n_events(), 22);
}

#[test]
fn flipped_byte_in_the_last_commit_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    write_and_crash(&path);
    flip_in_pattern(&path);
    // Commits are two-phase, so a damaged acknowledged commit is refused, never rolled back
    // past silently.
    let err = open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

/// The store indexes each event as it writes it: its meta, its place by seq and its author's
/// chain state are exactly what the node's adapter computed when it accepted the event, a
/// fork included; and they come back after a reopen, and after an upgrade from format 2
/// that builds them from the log.
#[test]
fn the_indexes_are_what_the_adapter_computed() {
    use cairn_protocol::{Genesis, Member, Node, NodeConfig};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let key = author();
    let mut events = chain(1, 5, b"v");
    // A second event with seq 4: a fork of the author's own chain.
    events.push(Event::sign(&key, 4, 4, vec![events[2].id()], vec![Op::Del { key: b"k3".to_vec() }]));
    let genesis = Genesis::new(vec![Member { key: key.public(), name: "a".into() }]).unwrap();
    let mut node = Node::new(genesis, None, NodeConfig::default());
    assert!(node.restore(encoded(&events)).is_empty());
    let adapter = node.adapter();
    assert_eq!(adapter.fork_seq(0), Some(4));

    let (mut store, _) = open(&path).unwrap();
    append(&mut store, &events, &[]);
    let db = store.shared_db();
    for event in &events {
        assert_eq!(
            cairn_daemon::store::reads::meta(&db, &event.id()).unwrap(),
            adapter.meta(&event.id()),
            "{}",
            event.id()
        );
    }
    assert_eq!(cairn_daemon::store::reads::at_seq(&db, 0, 4).unwrap(), adapter.at_seq(0, 4));
    assert_eq!(adapter.at_seq(0, 4).len(), 2);
    drop((store, db));
    let (_, loaded) =
        Store::open_indexed(&path, CLUSTER, node_key(), OwnHistory::Unknown, &[author().public().0]).unwrap();
    assert_eq!(loaded.chains, adapter.chain_states());
    assert_eq!(loaded.n_events, 6);
    assert_eq!(loaded.n_bytes, encoded(&events).iter().map(|e| e.len() as u64).sum::<u64>());

    // Format 2 had no indexes: they are built from the log on the first open.
    tamper(&path, |tx| {
        tx.delete_table(TableDefinition::<&[u8; 32], &[u8]>::new("metas")).unwrap();
        tx.delete_table(TableDefinition::<(u32, u64, [u8; 32]), ()>::new("by_seq")).unwrap();
        tx.delete_table(TableDefinition::<u32, &[u8]>::new("chains")).unwrap();
        tx.open_table(META).unwrap().insert("format", 2u64.to_le_bytes().as_slice()).unwrap();
    });
    let (_, loaded) =
        Store::open_indexed(&path, CLUSTER, node_key(), OwnHistory::Unknown, &[author().public().0]).unwrap();
    assert_eq!(loaded.upgraded_from, Some(2));
    assert_eq!(loaded.chains, adapter.chain_states());
    assert_eq!(loaded.n_events, 6);
}

/// An event the node accepted is indexed from its proof of validation (`Append::Accepted`: its
/// meta as the adapter computed it, no decoding, no read of its deps' metas) exactly as from its
/// bytes: the same metas, the same places by seq, the same chain states and log, a fork
/// included, mixed in one commit with events given as bytes.
#[test]
fn accepted_events_are_indexed_from_their_proof_as_from_their_bytes() {
    use cairn_daemon::store::Append;
    use cairn_protocol::{Genesis, Member, Node, NodeConfig, NodeEvent};
    let dir = tempfile::tempdir().unwrap();
    let key = author();
    let mut events = chain(1, 5, b"v");
    events.push(Event::sign(&key, 4, 4, vec![events[2].id()], vec![Op::Del { key: b"k3".to_vec() }]));
    let genesis = Genesis::new(vec![Member { key: key.public(), name: "a".into() }]).unwrap();
    let mut node = Node::new(genesis, None, NodeConfig::default());
    // From a peer, as the driver takes them (a restore reports no acceptance).
    assert!(node.handle_connected(key.public(), 0));
    let message =
        cairn_protocol::codec::encode_message(&cairn_protocol::Message::Events { events: encoded(&events) });
    node.handle_message(key.public(), &message, 0);
    let mut accepted = Vec::new();
    while let Some(event) = node.poll_event() {
        if let NodeEvent::Accepted { event, .. } = event {
            accepted.push(event);
        }
    }
    assert_eq!(accepted.len(), events.len(), "every event was accepted, in order");
    let adapter = node.adapter();

    let bytes_path = dir.path().join("bytes.redb");
    let (mut by_bytes, _) = open(&bytes_path).unwrap();
    append(&mut by_bytes, &events, &[]);
    let proof_path = dir.path().join("proof.redb");
    let (mut by_proof, _) = open(&proof_path).unwrap();
    let encoded_events = encoded(&events);
    // The first two as bytes, the rest (the fork among them) from their proofs.
    let mixed: Vec<Append<'_>> = encoded_events
        .iter()
        .zip(&accepted)
        .enumerate()
        .map(
            |(i, (bytes, event))| {
                if i < 2 { Append::Bytes(event.id().0, bytes) } else { Append::Accepted(event) }
            },
        )
        .collect();
    by_proof.append_events(&mixed, &[], false, None).unwrap();
    let (bytes_db, proof_db) = (by_bytes.shared_db(), by_proof.shared_db());
    for event in &events {
        let meta = cairn_daemon::store::reads::meta(&proof_db, &event.id()).unwrap();
        assert_eq!(meta, adapter.meta(&event.id()), "{}", event.id());
        assert_eq!(meta, cairn_daemon::store::reads::meta(&bytes_db, &event.id()).unwrap());
    }
    assert_eq!(cairn_daemon::store::reads::at_seq(&proof_db, 0, 4).unwrap(), adapter.at_seq(0, 4));
    assert_eq!(by_proof.read_log(0, usize::MAX).unwrap(), by_bytes.read_log(0, usize::MAX).unwrap());
    drop((by_bytes, by_proof, bytes_db, proof_db));
    for path in [&bytes_path, &proof_path] {
        let (_, loaded) =
            Store::open_indexed(path, CLUSTER, node_key(), OwnHistory::Unknown, &[author().public().0])
                .unwrap();
        assert_eq!(loaded.chains, adapter.chain_states());
        assert_eq!(loaded.n_events, 6);
        assert_eq!(loaded.authors, vec![(6, encoded_events.iter().map(|e| e.len() as u64).sum::<u64>())]);
    }
}

/// The document goes to disk with the events that changed it: a reopen reads it back equal (same
/// digest) and knows which of the log's events it has applied; the author tallies too.
#[test]
fn the_document_is_persisted_with_the_events_it_applied() {
    use cairn_daemon::store::DocumentCommit;
    use cairn_protocol::{Genesis, Member, Node, NodeConfig};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let genesis = Genesis::new(vec![Member { key: author().public(), name: "a".into() }]).unwrap();
    let mut events = chain(1, 20, b"v");
    // Overwrites and a delete, so that ops cover others.
    let key = author();
    for seq in 21..=24 {
        let deps = vec![events.last().unwrap().id()];
        let op = if seq == 24 {
            Op::Del { key: b"k1".to_vec() }
        } else {
            Op::Put { key: b"k1".to_vec(), value: vec![seq as u8] }
        };
        events.push(Event::sign(&key, seq, seq, deps, vec![op]));
    }
    let mut node = Node::new(genesis.clone(), None, NodeConfig::default());
    node.track_document();
    // The document applies all but the last three, as a commit whose own events come last.
    assert!(node.restore(encoded(&events[..21])).is_empty());
    let delta = node.take_document_delta().unwrap();
    assert!(!delta.covered.is_empty(), "the overwrites covered the puts before them");
    let digest = node.document().digest();
    {
        let (mut store, _) = open(&path).unwrap();
        let ids: Vec<(EventId, Vec<u8>)> = events.iter().map(|e| (e.id(), e.encode())).collect();
        let batch: Vec<([u8; 32], &[u8])> = ids.iter().map(|(id, b)| (id.0, b.as_slice())).collect();
        let document = DocumentCommit { delta: &delta, n_applied: 21 };
        store.append_with_document(&batch, &[], false, Some(document)).unwrap();
    }
    let (store, loaded) = open(&path).unwrap();
    assert_eq!(loaded.doc_through, 21);
    assert_eq!(loaded.authors, vec![(24, events.iter().map(|e| e.encode().len() as u64).sum())]);
    let document = store.load_document(&[key.public()]).unwrap().expect("a document was persisted");
    assert_eq!(document.digest(), digest);
    assert_eq!(document.register(b"k1").visible.unwrap().value, vec![21]);
}

/// Covered records are filed by the covering op; one that covers ops in two commits lists them
/// all, in order, and a new op's record holds only its own.
#[test]
fn covered_records_accumulate_per_covering_op() {
    use cairn_daemon::store::DocumentCommit;
    use cairn_protocol::DocumentDelta;
    use cairn_protocol::document::Covered;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let (mut store, _) = open(&path).unwrap();
    let op = |i: u8, n: u32| (EventId([i; 32]), n);
    let commit = |store: &mut Store, covered: Vec<Covered>| {
        let delta = DocumentDelta { covered, ..DocumentDelta::default() };
        store
            .append_with_document(&[], &[], false, Some(DocumentCommit { delta: &delta, n_applied: 0 }))
            .unwrap();
    };
    commit(&mut store, vec![Covered { by: op(1, 0), ops: vec![op(2, 0), op(2, 1)] }]);
    commit(
        &mut store,
        vec![Covered { by: op(1, 0), ops: vec![op(3, 0)] }, Covered { by: op(4, 2), ops: vec![op(5, 0)] }],
    );
    let db = store.shared_db();
    let covered = |by| cairn_daemon::store::reads::covered(&db, &by).unwrap();
    assert_eq!(covered(op(1, 0)), vec![op(2, 0), op(2, 1), op(3, 0)]);
    assert_eq!(covered(op(4, 2)), vec![op(5, 0)]);
    assert_eq!(covered(op(1, 1)), Vec::new());
}

/// The keys membership ops brought in, and the events that carry those ops, come back from a
/// reopen as the node indexed them: a start rebuilds its roster and membership from them.
#[test]
fn the_roster_and_the_membership_events_are_kept() {
    use cairn_protocol::{Change, ChangeKind, MembershipId};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let newcomer = SecretKey::from_seed(&[9; 32]);
    let change = Change {
        base: MembershipId(CLUSTER),
        kind: ChangeKind::Add { key: newcomer.public(), name: "delta".to_owned() },
    };
    let first =
        Event::sign(&author(), 1, 1, vec![], vec![Op::Put { key: b"a".to_vec(), value: b"1".to_vec() }]);
    let propose = Event::sign(&author(), 2, 2, vec![first.id()], vec![Op::Propose { change, round: 0 }]);
    let by_newcomer = Event::sign(
        &newcomer,
        1,
        3,
        vec![propose.id()],
        vec![Op::Put { key: b"b".to_vec(), value: b"2".to_vec() }],
    );
    {
        let (mut store, _) = open(&path).unwrap();
        append(&mut store, &[first.clone(), propose.clone()], &[]);
        store.extend_roster(&[newcomer.public().0]);
        append(&mut store, std::slice::from_ref(&by_newcomer), &[]);
        assert_eq!(store.roster_later(), [newcomer.public().0]);
    }
    let (_, loaded) = open(&path).unwrap();
    assert_eq!(loaded.roster_later, vec![newcomer.public().0]);
    assert_eq!(loaded.member_events, vec![1], "the proposal is at log position 1");
    assert_eq!(loaded.chains.len(), 2);
    assert_eq!(loaded.chains[1].max_seq, 1, "the newcomer's chain is indexed under its roster index");
    assert_eq!(
        loaded.authors,
        vec![
            (2, (first.encode().len() + propose.encode().len()) as u64),
            (1, by_newcomer.encode().len() as u64)
        ]
    );
    assert_eq!(loaded.events, encoded(&[first, propose, by_newcomer]));
}

/// A roster that does not extend the one the store indexes is a bug of the caller.
#[test]
#[should_panic(expected = "does not extend")]
fn a_roster_that_does_not_extend_the_stored_one_is_a_bug() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = open(&dir.path().join("store.redb")).unwrap();
    store.extend_roster(&[[1; 32], [2; 32]]);
    store.extend_roster(&[[2; 32]]);
}

/// Format 4 had no `roster` and no `member_events`; its upgrade creates them and writes the
/// format, and nothing else: the persisted document is not replayed again (`doc_through` stays),
/// and the log and its indexes are as they were.
#[test]
fn format_4_is_upgraded_by_its_meta_alone() {
    let dir = tempfile::tempdir().unwrap();
    let events = chain(1, 5, b"v");
    let path = store_with(dir.path(), &events);
    const ROSTER: TableDefinition<u32, &[u8; 32]> = TableDefinition::new("roster");
    const MEMBER_EVENTS: TableDefinition<u64, ()> = TableDefinition::new("member_events");
    tamper(&path, |tx| {
        assert!(tx.delete_table(ROSTER).unwrap());
        assert!(tx.delete_table(MEMBER_EVENTS).unwrap());
        let mut meta = tx.open_table(META).unwrap();
        meta.insert("format", 4u64.to_le_bytes().as_slice()).unwrap();
        // As if a start had persisted the document through the whole log.
        meta.insert("doc_through", 5u64.to_le_bytes().as_slice()).unwrap();
    });
    let (_, loaded) = open(&path).unwrap();
    assert_eq!(loaded.upgraded_from, Some(4));
    assert_eq!(loaded.doc_through, 5, "an upgrade from format 4 does not replay the document");
    assert_eq!(loaded.events, encoded(&events));
    assert!(loaded.roster_later.is_empty() && loaded.member_events.is_empty());
    let (_, again) = open(&path).unwrap();
    assert_eq!(again.upgraded_from, None, "the format was written");
    assert_eq!(FORMAT_VERSION, 6);
}

#[test]
fn format_5_is_upgraded_by_writing_its_format() {
    let dir = tempfile::tempdir().unwrap();
    let events = chain(1, 5, b"v");
    let path = store_with(dir.path(), &events);
    tamper(&path, |tx| {
        let mut meta = tx.open_table(META).unwrap();
        meta.insert("format", 5u64.to_le_bytes().as_slice()).unwrap();
        meta.insert("doc_through", 5u64.to_le_bytes().as_slice()).unwrap();
    });
    let (_, loaded) = open(&path).unwrap();
    assert_eq!(loaded.upgraded_from, Some(5));
    assert_eq!(loaded.doc_through, 5, "an upgrade from format 5 does not replay the document");
    assert_eq!(loaded.events, encoded(&events));
    let (_, again) = open(&path).unwrap();
    assert_eq!(again.upgraded_from, None, "the format was written");
}
