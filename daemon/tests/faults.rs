//! Faults of real `cairnd` processes: a rolling restart of every node under continuous writes,
//! `kill -9` of two nodes at once, a store damaged on disk (flipped bytes, truncation), and a
//! file system that fills up under a node and frees again.
//!
//! The cluster tests put each node on a host of its own in network namespaces made by the test
//! (`common/netns.rs`) where that is permitted, and say `NOTE: ... on loopback` and run on
//! loopback where it is not: what they check does not depend on the network. The disk-full
//! tests mount a small tmpfs (`common/tmpfs.rs`) and report `SKIPPED: ...` where mounting is not
//! permitted. The partition test, which needs namespaces, is in `faults_netns.rs`.
//!
//! Every wait polls a condition with a deadline; a failing test prints every node's log.

mod common;

use std::path::Path;
use std::time::Instant;

use cairn_crypto::SecretKey;
use cairn_daemon::config::STORE_FILE;
use cairn_daemon::store::{OwnHistory, Store, StoreError};
use cairn_protocol::{Event, EventId, Op};
use common::netns::Network;
use common::tmpfs::Tmpfs;
use common::{Cluster, DEADLINE, TIMING, Writer, say, skip};
use hyper::{Method, StatusCode};
use nix::sys::signal::Signal;
use serde_json::json;

/// Acknowledged writes every writer makes between two steps of a test, so that the writes are
/// continuous across every step.
const PROGRESS: usize = 10;

/// Hosts in network namespaces for `n` nodes, or `None` (said as a note) where they are not
/// permitted. Declare it before the cluster, so that its processes go before the namespaces.
fn hosts(tag: &str, n: usize) -> Option<Network> {
    match Network::build(tag, n) {
        Ok(network) => Some(network),
        Err(error) => {
            say(&format!("NOTE: running on loopback, not on hosts in network namespaces: {error}"));
            None
        }
    }
}

/// Starts a cluster of `n` nodes with `timing`, on `network`'s hosts if there is one, and
/// waits until every node is connected to every other.
fn start(network: Option<&Network>, n: usize, timing: &str) -> Cluster {
    let mut c = Cluster::write(n, timing);
    if let Some(network) = network {
        network.place(&mut c);
    }
    c.spawn_all();
    c.wait_all_connected();
    c
}

/// [`TIMING`] with an idle timeout of 2 s instead of 6 s.
fn short_idle_timeout() -> String {
    let timing = TIMING.replace("idle_timeout = \"6s\"", "idle_timeout = \"2s\"");
    assert_ne!(timing, TIMING);
    timing
}

/// Waits until each of `writers` has had [`PROGRESS`] more writes acknowledged.
fn wait_progress(c: &Cluster, what: &str, writers: &[&Writer]) {
    let marks: Vec<usize> = writers.iter().map(|w| w.n_acked()).collect();
    c.wait_for(&format!("{what}: {PROGRESS} more writes acknowledged by each writer"), |_| {
        writers.iter().zip(&marks).all(|(w, mark)| w.n_acked() >= mark + PROGRESS)
    });
}

/// Stops `writers` and returns every acknowledged key, with the number of failed puts.
fn stop_writers(writers: Vec<Writer>) -> (Vec<String>, usize) {
    let mut acked = Vec::new();
    let mut n_failed = 0;
    for writer in writers {
        let (keys, failures) = writer.stop();
        acked.extend(keys);
        n_failed += failures.len();
    }
    (acked, n_failed)
}

fn assert_no_evidence(c: &Cluster) {
    for i in 0..c.len() {
        assert!(c.evidence(i).is_empty(), "node {i} holds evidence: {:?}", c.evidence(i));
    }
}

#[test]
fn rolling_restart_under_continuous_writes_loses_no_acknowledged_write() {
    const N: usize = 3;
    let network = hosts("roll", N);
    let mut c = start(network.as_ref(), N, TIMING);
    let started = Instant::now();
    let writers: Vec<Writer> = (0..N).map(|i| Writer::spawn(c.client(i), &format!("roll-{i}"))).collect();
    let all: Vec<&Writer> = writers.iter().collect();
    for i in 0..N {
        wait_progress(&c, &format!("before node {i} restarts"), &all);
        // SIGTERM: the node drains and exits 0 (asserted), as `systemctl restart` would.
        c.stop(i);
        let others: Vec<&Writer> = (0..N).filter(|&j| j != i).map(|j| &writers[j]).collect();
        wait_progress(&c, &format!("while node {i} is down"), &others);
        c.restart(i);
        c.wait_all_connected();
    }
    wait_progress(&c, "after the last restart", &all);
    let (acked, n_failed) = stop_writers(writers);
    c.wait_converged();
    c.assert_everywhere(&acked);
    assert_no_evidence(&c);
    eprintln!(
        "rolling restart of {N} nodes: {} writes acknowledged, {n_failed} failed while their node was down, \
         {:?} in all",
        acked.len(),
        started.elapsed()
    );
}

#[test]
fn kill_9_of_two_nodes_at_once_then_both_catch_up() {
    const N: usize = 5;
    const KILLED: [usize; 2] = [0, 1];
    let network = hosts("kill", N);
    // A short idle timeout: the survivors notice the dead connections, and take the restarted
    // nodes' new ones, within seconds.
    let mut c = start(network.as_ref(), N, &short_idle_timeout());
    let writers: Vec<Writer> = (0..N).map(|i| Writer::spawn(c.client(i), &format!("kill-{i}"))).collect();
    let all: Vec<&Writer> = writers.iter().collect();
    wait_progress(&c, "before the kill", &all);

    // Both at once: the signals first, then the reaping.
    for i in KILLED {
        c.signal(i, Signal::SIGKILL);
    }
    for i in KILLED {
        assert!(c.wait_exit(i, DEADLINE).is_some(), "node {i} survived SIGKILL");
    }
    let survivors: Vec<&Writer> = (0..N).filter(|i| !KILLED.contains(i)).map(|i| &writers[i]).collect();
    wait_progress(&c, "while two nodes are dead", &survivors);

    // Each killed node's own store holds every write it acknowledged (read while it is down,
    // so nothing can have come back from a peer).
    for i in KILLED {
        let acked = writers[i].acked();
        let stored = c.stored_own_puts(i);
        let lost: Vec<&String> = acked.iter().filter(|k| !stored.contains(*k)).collect();
        assert!(lost.is_empty(), "node {i} lost {} acknowledged writes in kill -9: {lost:?}", lost.len());
        eprintln!("node {i}: {} writes acknowledged before kill -9, all in its store", acked.len());
    }

    let restarted = Instant::now();
    for i in KILLED {
        c.spawn(i);
    }
    for i in KILLED {
        c.wait_ready(i);
    }
    c.wait_all_connected();
    wait_progress(&c, "after the restart", &all);
    let (acked, n_failed) = stop_writers(writers);
    c.wait_converged();
    eprintln!(
        "kill -9 of two of {N} nodes: restarted and caught up in {:?}; {} writes acknowledged, {n_failed} failed",
        restarted.elapsed(),
        acked.len()
    );
    c.assert_everywhere(&acked);
    // The restarted nodes signed on from their stored seqs: no equivocation anywhere.
    assert_no_evidence(&c);
}

/// The length of [`pattern`].
const PATTERN_BYTES: usize = 4096;
/// How much of [`pattern`] is looked for in a store file.
const NEEDLE_BYTES: usize = 256;
/// The tail a truncation cuts off a store (besides cutting it in half).
const TAIL_BYTES: usize = 4096;

/// A 4 KiB text value that cannot occur by chance, so that its place in a store file can be
/// found.
fn pattern() -> String {
    let mut state: u32 = 0x2545_f491;
    (0..PATTERN_BYTES)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            char::from(b'a' + (state % 26) as u8)
        })
        .collect()
}

/// Flips one bit in the middle of every copy of `pattern` in the file at `path`.
fn flip_in(path: &Path, pattern: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    let needle = &pattern.as_bytes()[..NEEDLE_BYTES];
    let offsets: Vec<usize> =
        bytes.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(i, _)| i).collect();
    assert!(!offsets.is_empty(), "the pattern is not in {}", path.display());
    for offset in offsets {
        bytes[offset + PATTERN_BYTES / 2] ^= 0x01;
    }
    std::fs::write(path, &bytes).unwrap();
}

/// Starts node `i` on a store that lost its last pages: returns true if it was refused (as
/// [`assert_refused`] checks), false if it started with exactly the events and digests it had
/// (then it is stopped again).
fn refused_or_served_whole(c: &mut Cluster, i: usize, before: (&str, &str, &serde_json::Value)) -> bool {
    let log_before = c.log(i).len();
    c.spawn(i);
    let started = common::wait_until(Instant::now() + DEADLINE, || {
        c.log(i)[log_before..].contains("cairnd started") || !c.is_running(i)
    });
    assert!(started, "cairnd neither started nor exited on a store with its last pages cut off");
    if !c.log(i)[log_before..].contains("cairnd started") {
        let log = c.log(i)[log_before..].to_owned();
        assert!(log.contains("it is refused, not used"), "{log}");
        let _ = c.wait_exit(i, DEADLINE);
        return true;
    }
    c.wait_ready(i);
    let (digest, sync_digest) = c.digests(i);
    assert_eq!(
        (digest.as_str(), sync_digest.as_str()),
        (before.0, before.1),
        "served with something missing"
    );
    assert_eq!(&c.status(i)["n_events"], before.2);
    c.stop(i);
    false
}

/// Starts node `i` on a damaged store and checks that it exits at once with a message naming
/// the store and saying that it is refused, without ever serving: no API socket, no start.
fn assert_refused(c: &mut Cluster, i: usize, what: &str) {
    let store = c.nodes[i].data_dir.join(STORE_FILE);
    let log_before = c.log(i).len();
    c.spawn(i);
    let status = c.wait_exit(i, DEADLINE).unwrap_or_else(|| panic!("cairnd ran on a store with {what}"));
    assert!(!status.success(), "cairnd exited with {status} on a store with {what}");
    let log = c.log(i)[log_before..].to_owned();
    for part in [&store.display().to_string(), "is corrupt or not a Cairn store", "it is refused, not used"] {
        assert!(log.contains(part), "the message for a store with {what} lacks {part:?}:\n{log}");
    }
    assert!(!log.contains("cairnd started"), "cairnd started on a store with {what}:\n{log}");
    assert!(!c.nodes[i].socket.exists(), "cairnd opened its API socket on a store with {what}");
    let first_line = log.lines().find(|l| l.contains("corrupt")).unwrap_or_default();
    eprintln!("a store with {what} is refused: {first_line}");
}

#[test]
fn a_damaged_store_is_refused_with_a_clear_message_and_never_served() {
    const N: usize = 3;
    let network = hosts("damage", N);
    let mut c = start(network.as_ref(), N, TIMING);
    let pattern = pattern();
    c.put(0, "pattern", &pattern);
    for n in 0..20 {
        c.put(0, &format!("k{n}"), "v");
    }
    c.put(1, "from-1", "v");
    c.wait_converged();
    let own_seq = c.status(0)["own_seq"].as_u64().unwrap();
    let (digest, sync_digest) = c.digests(0);
    let n_events = c.status(0)["n_events"].clone();
    c.stop(0);
    let store = c.nodes[0].data_dir.join(STORE_FILE);
    let good = std::fs::read(&store).unwrap();

    flip_in(&store, &pattern);
    // A start after a clean stop reads only what it uses, and the event is not among that: the
    // node starts, and the flipped bit is found when the event is first read (its large value
    // is read from the event, not kept in the document). It is never served: the node stops,
    // and says what to run.
    let log_before = c.log(0).len();
    c.spawn(0);
    c.wait_ready(0);
    let read = c.try_get(0, "/v1/registers/pattern");
    assert!(
        read.as_ref().map_or(true, |value| value["value"] != pattern.as_str()),
        "the damaged value was served: {read:?}"
    );
    let status = c.wait_exit(0, DEADLINE).expect("cairnd went on after reading a damaged event");
    assert!(!status.success(), "cairnd exited with {status} after reading a damaged event");
    let log = c.log(0)[log_before..].to_owned();
    for part in ["read from log position", "is damaged", "the store is corrupt", "cairnd check-store"] {
        assert!(log.contains(part), "the message for a damaged event lacks {part:?}:\n{log}");
    }
    // Asked to verify every page at start, it refuses the store before serving anything.
    c.edit_config(0, |text| format!("verify_store_on_start = true\n{text}"));
    assert_refused(&mut c, 0, "a flipped bit in an event");
    c.edit_config(0, |text| text.replace("verify_store_on_start = true\n", ""));
    let len = good.len();
    std::fs::write(&store, &good[..len / 2]).unwrap();
    assert_refused(&mut c, 0, "half of it cut off");
    // The last pages of the file may hold nothing live (redb allocates ahead): a store that
    // lost them is either refused, or served whole, never served with anything missing. A
    // start reads every event back and checks it against `ids`, `metas`, `by_seq` and the
    // chain states, so it cannot start on less.
    std::fs::write(&store, &good[..len - TAIL_BYTES]).unwrap();
    if refused_or_served_whole(&mut c, 0, (&digest, &sync_digest, &n_events)) {
        // The other nodes never saw it come back.
        for i in 1..N {
            assert_eq!(c.status(i)["n_peers_connected"], N as u64 - 2, "node {i}");
        }
    } else {
        eprintln!("a store with its last 4 KiB cut off held nothing live there: served whole");
        c.wait_for("the peers see node 0 gone again", |c| {
            (1..N).all(|i| c.status(i)["n_peers_connected"] == N as u64 - 2)
        });
    }

    // The remedy from the guide: move the store away; the node catches up from its peers and
    // learns its own last seq before it writes again.
    std::fs::rename(&store, store.with_extension("refused")).unwrap();
    c.edit_config(0, |text| {
        assert!(text.contains("new_cluster = true\n"), "{text}");
        text.replace("new_cluster = true\n", "")
    });
    c.restart(0);
    c.wait_all_connected();
    c.wait_converged();
    assert_eq!(c.register_value(0, "pattern").as_deref(), Some(pattern.as_str()));
    let mut ack = None;
    c.wait_for("node 0 accepts a write again", |c| {
        ack = c.send(0, Method::PUT, "/v1/registers/after", &json!({ "value": "v" })).ok();
        ack.is_some()
    });
    assert_eq!(ack.unwrap()["seq"], own_seq + 1, "the first write after the refused store");
    c.wait_converged();
    assert_no_evidence(&c);
}

/// The size of the tmpfs under a node's data directory: room for the store as it starts, and
/// little more once the filler is in.
const TMPFS_BYTES: u64 = 16 << 20;
/// A value near the protocol's limit, so that the store outgrows its file in a few writes.
const BIG_VALUE_BYTES: usize = 60_000;
/// Room left on the file system once it is filled: some big writes still succeed.
const ROOM_LEFT_BYTES: u64 = 1 << 20;
/// Big writes tried before the file system must have filled up.
const BIG_WRITES_MAX: usize = 1_000;

/// What the log says, once per episode, when the file system fills up.
const FULL_WARNING: &str = "the store's file system is full";

/// Checks that `error` is the daemon's answer to a write on a full file system.
fn assert_full(error: &cairn_daemon::client::ClientError, data_dir: &Path) {
    assert_eq!(error.status(), Some(StatusCode::INSUFFICIENT_STORAGE), "{error}");
    assert_eq!(error.code(), Some("no_space"), "{error}");
    let message = error.to_string();
    for part in ["the file system holding the data directory", "is full", "this write was not stored"] {
        assert!(message.contains(part), "the message lacks {part:?}: {message}");
    }
    assert!(
        message.contains(&data_dir.display().to_string()),
        "the message does not name the directory: {message}"
    );
}

/// Writes big values to node 0 until one fails, which must be for want of space; records the
/// acknowledged keys in `acked` and the seq of the last in `last_seq`. Returns the error.
fn write_until_full(
    c: &Cluster,
    prefix: &str,
    acked: &mut Vec<String>,
    last_seq: &mut u64,
) -> cairn_daemon::client::ClientError {
    let big = "x".repeat(BIG_VALUE_BYTES);
    for n in 0..BIG_WRITES_MAX {
        let key = format!("{prefix}-{n}");
        match c.send(0, Method::PUT, &format!("/v1/registers/{key}"), &json!({ "value": big })) {
            Ok(ack) => {
                *last_seq = ack["seq"].as_u64().unwrap();
                acked.push(key);
            }
            Err(error) => return error,
        }
    }
    panic!("{BIG_WRITES_MAX} big writes never filled the file system");
}

#[test]
fn a_full_disk_fails_writes_loses_nothing_and_recovers_or_reports_skipped() {
    let tmpfs = match Tmpfs::mount(TMPFS_BYTES) {
        Ok(tmpfs) => tmpfs,
        Err(error) => {
            skip(&format!("cannot mount a tmpfs for a full disk: {error}"));
            return;
        }
    };
    // Node 0's data directory is on the tmpfs (declared first, so it is unmounted after the
    // cluster's processes are gone).
    let mut c = Cluster::write(3, TIMING);
    let data_dir = tmpfs.path().join("data");
    let old = format!("data_dir = {:?}\n", c.nodes[0].data_dir);
    c.edit_config(0, |text| {
        assert!(text.contains(&old), "{text}");
        text.replace(&old, &format!("data_dir = {data_dir:?}\n"))
    });
    c.nodes[0].data_dir = data_dir.clone();
    c.spawn_all();
    c.wait_all_connected();
    let mut acked = Vec::new();
    for n in 0..5 {
        let key = format!("small-{n}");
        c.put(0, &key, &key);
        acked.push(key);
    }

    // Fill the file system but for a little room, then write big values until the store needs
    // room it cannot get.
    let filler = tmpfs.fill_leaving("filler", ROOM_LEFT_BYTES);
    let mut last_seq = c.status(0)["own_seq"].as_u64().unwrap();
    let n_before = acked.len();
    let error = write_until_full(&c, "big", &mut acked, &mut last_seq);
    assert_full(&error, &data_dir);
    eprintln!(
        "the file system filled up after {} big writes; the next failed: {error}",
        acked.len() - n_before
    );

    // While it is full: writes keep failing the same way (each is tried against the disk, so
    // one may still find a free page in the store's file), reads and status answer, and events
    // from peers are still taken (in memory).
    for _ in 0..2 {
        assert_full(&write_until_full(&c, "while-full", &mut acked, &mut last_seq), &data_dir);
    }
    let status = c.status(0);
    let refused = status["writes_refused"].as_str().unwrap_or_default();
    assert!(refused.contains("is full"), "{status}");
    assert_eq!(c.register_value(0, "small-0").as_deref(), Some("small-0"));
    c.put(1, "from-1-while-full", "v");
    c.wait_for("node 0 reads a peer's write while full", |c| {
        c.register_value(0, "from-1-while-full").as_deref() == Some("v")
    });
    assert_eq!(c.log(0).matches(FULL_WARNING).count(), 1, "one warning per full disk:\n{}", c.log(0));

    // A restart while full: it drains and exits 0, starts again on the full file system, and
    // answers as before.
    c.stop(0);
    let log_before = c.log(0).len();
    c.restart(0);
    c.wait_connected(0, 2);
    assert_full(&write_until_full(&c, "after-restart", &mut acked, &mut last_seq), &data_dir);
    assert_eq!(c.register_value(0, "small-1").as_deref(), Some("small-1"));
    assert_eq!(c.log(0)[log_before..].matches(FULL_WARNING).count(), 1);

    // Room again: writes succeed without a restart, the first with the seq after the last
    // acknowledged one (the failed writes' seqs were given back, never used).
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let mut ack = None;
    c.wait_for("node 0 accepts a write once there is room", |c| {
        ack = c.send(0, Method::PUT, "/v1/registers/after-full", &json!({ "value": "after-full" })).ok();
        ack.is_some()
    });
    eprintln!("writes succeed again {:?} after the space was freed", freed.elapsed());
    assert_eq!(ack.unwrap()["seq"], last_seq + 1, "the first write after the full disk");
    acked.push("after-full".to_owned());
    assert!(c.log(0).contains("has room again"), "no log line for the recovery");
    c.wait_converged();
    for i in 0..3 {
        let held = c.register_keys(i);
        let lost: Vec<&String> = acked.iter().filter(|k| !held.contains(*k)).collect();
        assert!(lost.is_empty(), "node {i} lacks acknowledged writes: {lost:?}");
    }

    // Node 0's own store holds every acknowledged write and the peer's write from the full
    // period: restarted with its peers frozen, it has them all.
    c.stop(0);
    c.signal(1, Signal::SIGSTOP);
    c.signal(2, Signal::SIGSTOP);
    c.restart(0);
    let held = c.register_keys(0);
    let lost: Vec<&String> = acked.iter().filter(|k| !held.contains(*k)).collect();
    assert!(lost.is_empty(), "node 0 lost acknowledged writes: {lost:?}");
    assert!(held.contains("from-1-while-full"), "the peer's write from the full period was not stored");
    c.signal(1, Signal::SIGCONT);
    c.signal(2, Signal::SIGCONT);
    c.wait_all_connected();
    c.wait_converged();
    assert_no_evidence(&c);
}

// ---- the store alone on a full file system ------------------------------------------------

const CLUSTER: [u8; 32] = [7; 32];

fn author() -> SecretKey {
    SecretKey::from_seed(&[1; 32])
}

/// The event with `seq` of [`author`]'s chain after `prev`, putting `value_len` bytes (with
/// `variant` in them) under its own key.
fn event(prev: Option<&Event>, seq: u64, value_len: usize, variant: u8) -> Event {
    let deps = prev.map(|e| vec![e.id()]).unwrap_or_default();
    let value: Vec<u8> = (0..value_len).map(|i| (i as u64 * 31 + seq) as u8 ^ variant).collect();
    let ops = vec![Op::Put { key: format!("k{seq}").into_bytes(), value }];
    Event::sign(&author(), seq, seq, deps, ops)
}

fn append(store: &mut Store, events: &[&Event]) -> Result<(), StoreError> {
    let encoded: Vec<(EventId, Vec<u8>)> = events.iter().map(|e| (e.id(), e.encode())).collect();
    let events: Vec<([u8; 32], &[u8])> = encoded.iter().map(|(id, bytes)| (id.0, bytes.as_slice())).collect();
    store.append(&events, &[], false)
}

/// The store-level full-disk tests: a tmpfs this small, filled with events of this size, at
/// most this many.
const SMALL_BYTES: u64 = 8 << 20;
const VALUE_BYTES: usize = 30_000;
const EVENTS_MAX: u64 = 1_000;

/// A [`SMALL_BYTES`] tmpfs, or `None` after reporting the test skipped.
fn small_tmpfs() -> Option<Tmpfs> {
    match Tmpfs::mount(SMALL_BYTES) {
        Ok(tmpfs) => Some(tmpfs),
        Err(error) => {
            skip(&format!("cannot mount a tmpfs for a full disk: {error}"));
            None
        }
    }
}

fn open(path: &Path) -> Result<(Store, cairn_daemon::store::Loaded), StoreError> {
    Store::open(path, CLUSTER, author().public().0, OwnHistory::Unknown, &[author().public().0])
}

#[test]
fn a_store_on_a_full_file_system_stores_nothing_of_the_batch_and_recovers_or_reports_skipped() {
    let Some(tmpfs) = small_tmpfs() else { return };
    let path = tmpfs.path().join("data").join(STORE_FILE);
    let (mut store, _) = open(&path).unwrap();
    let mut chain: Vec<Event> = Vec::new();
    for seq in 1..=5 {
        let next = event(chain.last(), seq, VALUE_BYTES, 0);
        append(&mut store, &[&next]).unwrap();
        chain.push(next);
    }
    let filler = tmpfs.fill("filler");

    // Append until the file system is full: the failed event is not stored.
    let mut failed = None;
    for seq in 6..EVENTS_MAX {
        let next = event(chain.last(), seq, VALUE_BYTES, 0);
        match append(&mut store, &[&next]) {
            Ok(()) => chain.push(next),
            Err(error) => {
                failed = Some((next, error));
                break;
            }
        }
    }
    let (lost, error) = failed.expect("the file system never filled up");
    assert!(matches!(error, StoreError::NoSpace { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("is full") && message.contains(&path.display().to_string()), "{message}");
    assert_eq!(store.n_events(), chain.len() as u64);
    // Again, while still full: the same answer, and the store stays usable.
    let again = append(&mut store, &[&lost]).expect_err("appended on a full file system");
    assert!(matches!(again, StoreError::NoSpace { .. }), "{again}");

    // Closed and opened again while still full (as after a crash and restart there): exactly
    // what was stored before.
    drop(store);
    let (store, loaded) = open(&path).unwrap();
    assert_eq!(loaded.events, chain.iter().map(Event::encode).collect::<Vec<_>>());
    drop(store);

    // Room again: a different event with the failed one's seq goes in, and only it is there
    // after a reopen: the failed one can never surface, so its seq could be signed again.
    std::fs::remove_file(&filler).unwrap();
    let (mut store, _) = open(&path).unwrap();
    let replacement = event(chain.last(), lost.header.seq, 100, 0xff);
    assert_ne!(replacement.id(), lost.id());
    append(&mut store, &[&replacement]).unwrap();
    chain.push(replacement);
    drop(store);
    let (_store, loaded) = open(&path).unwrap();
    assert_eq!(loaded.events, chain.iter().map(Event::encode).collect::<Vec<_>>());
    assert!(!loaded.ids.contains(&lost.id().0), "the failed event surfaced");
}

#[test]
fn a_store_recovers_without_being_closed_or_reports_skipped() {
    let Some(tmpfs) = small_tmpfs() else { return };
    let path = tmpfs.path().join(STORE_FILE);
    let (mut store, _) = open(&path).unwrap();
    let filler = tmpfs.fill("filler");
    let mut chain: Vec<Event> = Vec::new();
    let mut failures = 0;
    while failures < 3 {
        assert!((chain.len() as u64) < EVENTS_MAX, "the file system never filled up");
        let next = event(chain.last(), chain.len() as u64 + 1, VALUE_BYTES, 0);
        match append(&mut store, &[&next]) {
            Ok(()) => chain.push(next),
            Err(error) => {
                assert!(matches!(error, StoreError::NoSpace { .. }), "{error}");
                failures += 1;
            }
        }
    }
    // Room again: the same handle goes on.
    std::fs::remove_file(&filler).unwrap();
    for _ in 0..3 {
        let next = event(chain.last(), chain.len() as u64 + 1, VALUE_BYTES, 0);
        append(&mut store, &[&next]).unwrap();
        chain.push(next);
    }
    drop(store);
    let (_store, loaded) = open(&path).unwrap();
    assert_eq!(loaded.events, chain.iter().map(Event::encode).collect::<Vec<_>>());
}
