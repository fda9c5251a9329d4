//! The `history` section of `cairn-daemon-bench`: a node that holds many events (Puts over
//! [`HISTORY_REGISTERS`] registers, built offline), measured as a node that lives for years is:
//! ingest through the adapter, the document and the store against raw `verify_strict`; restart
//! after a clean stop and after `kill -9`; resident memory after a restart, while serving a
//! catch-up and while catching up; the store's bytes against the events'; and a backup of the
//! whole store while a client writes.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use bytes::Bytes;
use cairn_crypto::SecretKey;
use cairn_daemon::archive::StoreArchive;
use cairn_daemon::commit::PEER_EVENTS_UNSTORED_MAX;
use cairn_daemon::config::{Config, load_genesis};
use cairn_daemon::store::{self, DocumentCommit, OwnHistory, Store, reads};
use cairn_protocol::codec::encode_message;
use cairn_protocol::{DocumentDelta, Message, Node, NodeConfig, NodeEvent};

use super::cluster::{Cluster, Conn, proc_status_mib};
use super::{Bench, met, n, sign_into_store};

/// Registers the holder's events write to (as the figure asks: Puts over 100 000
/// registers), so the document is as large as a busy cluster's.
pub(crate) const HISTORY_REGISTERS: usize = 100_000;
/// Events fed to the in-process ingest pipeline, at most: the first ones of the holder's log.
const INGEST_EVENTS_MAX: usize = 200_000;
/// Events per `Events` message in the ingest pipeline, as a holder's catch-up batches them.
const INGEST_MESSAGE_EVENTS: usize = 256;
/// Events that start a store commit in the ingest pipeline when none is in flight (the
/// daemon's `PEER_EVENTS_COMMIT_BATCH`).
const INGEST_COMMIT_EVENTS: usize = cairn_daemon::commit::PEER_EVENTS_COMMIT_BATCH;
/// Writes measured before the backup starts, for the latency baseline.
const BACKUP_BASELINE: Duration = Duration::from_secs(3);
/// The longest a catch-up may take before the section fails.
const CATCHUP_TIMEOUT: Duration = Duration::from_secs(3600);

/// VmHWM and VmRSS of node `i`, in MiB.
fn memory(cluster: &Cluster, i: usize) -> (f64, f64) {
    let field = |name| cluster.pid(i).and_then(|p| proc_status_mib(p, name)).unwrap_or(f64::NAN);
    (field("VmHWM"), field("VmRSS"))
}

/// What the in-process ingest pipeline measured.
struct Ingest {
    events: usize,
    per_sec: f64,
    /// `verify_strict`/s on 2 threads, right before and right after.
    baseline: [f64; 2],
    secs: f64,
    /// CPU seconds of the node (decoding, signatures, the document, the archive) and of the
    /// store's thread.
    node_cpu: f64,
    store_cpu: f64,
    commits: usize,
}

/// Feeds the first `count` events of the holder's store, in `Events` messages, to a fresh
/// `Node` over a fresh store (its archive on disk, its document tracked), and commits what it
/// accepts with the document's changes on a second thread, as the daemon's writer thread does,
/// except that it hands the store each event as its id and bytes, which the store decodes again
/// and indexes from its deps' stored metas, where the daemon hands over the proof of validation
/// (`store::Append::Accepted`): validation, signatures, the document and the store inside the
/// clock; no network, no other process.
fn ingest_pipeline(
    bench: &mut Bench,
    cluster: &Cluster,
    holder: usize,
    follower: usize,
    count: usize,
) -> anyhow::Result<Ingest> {
    let holder_config = Config::load(&cluster.nodes[holder].config)?;
    let genesis = load_genesis(&holder_config.genesis_file)?;
    let members = store::member_keys(&genesis);
    let holder_key = SecretKey::read_file(&holder_config.key_file)?.public();
    let follower_key =
        SecretKey::read_file(&Config::load(&cluster.nodes[follower].config)?.key_file)?.public();

    // The events, read before the clock starts.
    let mut events: Vec<Vec<u8>> = Vec::with_capacity(count);
    {
        let (source, _) = Store::open_indexed(
            &holder_config.store_path(),
            genesis.cluster_id(),
            holder_key.0,
            OwnHistory::Complete,
            &members,
        )?;
        let db = source.shared_db();
        while events.len() < count {
            let page = reads::log_page(&db, events.len() as u64, (count - events.len()).min(10_000))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            ensure!(!page.is_empty(), "the holder's store holds fewer than {count} events");
            events.extend(page.into_iter().map(|(_, _, bytes)| bytes));
        }
    }
    let messages: Vec<Vec<u8>> = events
        .chunks(INGEST_MESSAGE_EVENTS)
        .map(|chunk| encode_message(&Message::Events { events: chunk.to_vec() }))
        .collect();
    drop(events);

    let path = bench.dir.join("ingest").join("cairn.redb");
    let (mut target, loaded) =
        Store::open_indexed(&path, genesis.cluster_id(), follower_key.0, OwnHistory::Unknown, &members)?;
    let (archive, handle) = StoreArchive::new(target.shared_db(), 0, 0);
    let roster = cairn_protocol::Roster::new(&genesis);
    let document = target.load_document(roster.keys())?;
    let mut config = NodeConfig::default();
    config.adapter.verify_threads = 2;
    let mut node =
        Node::resume(genesis, Some(follower_key), config, Box::new(archive), roster, loaded.chains, document);
    node.track_document();
    ensure!(node.handle_connected(holder_key, 0), "the holder is a member");

    let set = &bench.verify.as_ref().expect("the verify baseline is measured first").0;
    let before = set.run(2);
    // Scheduled as the daemon's group commit: one commit in flight; what is accepted meanwhile
    // goes into the next one, which starts once the first landed and a batch is waiting; past
    // the bound on unstored events the node takes no more input until a commit lands. (The
    // events go as bytes, not as the daemon's `Append::Accepted`: see `ingest_pipeline`.)
    let (jobs, jobs_rx) = std::sync::mpsc::channel::<(Vec<([u8; 32], Vec<u8>)>, DocumentDelta)>();
    let (done, done_rx) = std::sync::mpsc::channel::<usize>();
    let process_cpu = super::cluster::cpu_seconds(None);
    let start = Instant::now();
    let writer = std::thread::Builder::new().name("ingest-store".into()).spawn(
        move || -> anyhow::Result<(u64, f64, usize)> {
            let mut commits = 0;
            while let Ok((batch, delta)) = jobs_rx.recv() {
                let refs: Vec<([u8; 32], &[u8])> = batch.iter().map(|(id, b)| (*id, b.as_slice())).collect();
                let document = DocumentCommit { delta: &delta, n_applied: batch.len() };
                target.append_with_document(&refs, &[], false, Some(document))?;
                handle.committed_covered(&delta.covered);
                let n = batch.len();
                handle.committed(batch.into_iter().map(|(id, _)| cairn_protocol::EventId(id)));
                commits += 1;
                // The receiver is gone only once the last job was sent.
                let _ = done.send(n);
            }
            Ok((target.n_events(), super::cluster::stat_cpu_seconds("/proc/thread-self/stat"), commits))
        },
    )?;
    let mut batch = Vec::new();
    let mut accepted = 0usize;
    let mut in_flight: Option<usize> = None;
    let send = |jobs: &std::sync::mpsc::Sender<_>,
                batch: &mut Vec<([u8; 32], Vec<u8>)>,
                node: &mut Node,
                in_flight: &mut Option<usize>| {
        *in_flight = Some(batch.len());
        let delta = node.take_document_delta().unwrap_or_default();
        jobs.send((std::mem::take(batch), delta))
    };
    for message in &messages {
        node.handle_message(holder_key, message, 0);
        while node.poll_transmit().is_some() {}
        while let Some(event) = node.poll_event() {
            if let NodeEvent::Accepted { event, .. } = event {
                accepted += 1;
                batch.push((event.id().0, event.bytes().to_vec()));
            }
        }
        if in_flight.is_some() && done_rx.try_recv().is_ok() {
            in_flight = None;
        }
        if in_flight.is_some_and(|n| n + batch.len() >= PEER_EVENTS_UNSTORED_MAX) {
            done_rx.recv()?;
            in_flight = None;
        }
        if in_flight.is_none() && batch.len() >= INGEST_COMMIT_EVENTS {
            send(&jobs, &mut batch, &mut node, &mut in_flight)?;
        }
    }
    if in_flight.is_some() {
        done_rx.recv()?;
    }
    send(&jobs, &mut batch, &mut node, &mut in_flight)?;
    // The writer ends once the channel closes.
    drop(jobs);
    let (stored, store_cpu, commits) =
        writer.join().map_err(|_| anyhow::anyhow!("the store thread panicked"))??;
    let secs = start.elapsed().as_secs_f64();
    let all_cpu = super::cluster::cpu_seconds(None) - process_cpu;
    let after = set.run(2);
    ensure!(
        accepted == count && stored == count as u64,
        "accepted {accepted} and stored {stored} of {count}"
    );
    std::fs::remove_dir_all(bench.dir.join("ingest"))?;
    Ok(Ingest {
        events: count,
        per_sec: count as f64 / secs,
        baseline: [before, after],
        secs,
        node_cpu: all_cpu - store_cpu,
        store_cpu,
        commits,
    })
}

/// Write latencies of one sequential client: (started at, latency) of every acknowledged write.
type Latencies = Vec<(Instant, Duration)>;

/// One client writing to node `socket` one write after another until `stop`.
fn spawn_writer(
    socket: std::path::PathBuf,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<anyhow::Result<Latencies>> {
    tokio::spawn(async move {
        let mut conn = Conn::connect(&socket).await?;
        let mut done = Vec::new();
        for i in 0u64.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let sent = Instant::now();
            let body = Bytes::from(format!("{{\"value\":\"{i:064}\"}}"));
            let status = conn.put(&format!("/v1/registers/backup-probe-{}", i % 64), body).await?;
            ensure!(status.is_success(), "a write during the backup was answered {status}");
            done.push((sent, sent.elapsed()));
        }
        Ok(done)
    })
}

/// The largest and the 99th-percentile latency, in ms, of the writes started in `from..to`.
fn latency_ms(writes: &Latencies, from: Instant, to: Instant) -> (usize, f64, f64) {
    let mut window: Vec<Duration> =
        writes.iter().filter(|(t, _)| *t >= from && *t < to).map(|(_, latency)| *latency).collect();
    window.sort();
    let max = window.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    let p99 = if window.is_empty() {
        f64::NAN
    } else {
        window[((window.len() as f64 * 0.99).ceil() as usize).clamp(1, window.len()) - 1].as_secs_f64() * 1e3
    };
    (window.len(), max, p99)
}

pub(crate) async fn history_section(bench: &mut Bench, out: &mut String) -> anyhow::Result<()> {
    let n_events = bench.sizes.history;
    let registers = HISTORY_REGISTERS.min(n_events);
    let verify = bench.verify_baseline();
    let mut cluster = Cluster::new(&bench.exe, bench.dir.join("history"), 2, super::BASE_CONFIG)?;
    let order = cluster.by_key();
    let (follower, holder) = (order[0], order[1]);
    let holder_config = Config::load(&cluster.nodes[holder].config)?;

    eprintln!("history: signing {n_events} events over {registers} registers into the holder's store");
    let (event_bytes, build_secs) = sign_into_store(&cluster, holder, n_events, registers)?;
    let store_bytes = std::fs::metadata(holder_config.store_path())?.len();

    let ingest_events = n_events.min(INGEST_EVENTS_MAX);
    eprintln!("history: ingest of {ingest_events} events through node and store, in process");
    let ingest = ingest_pipeline(bench, &cluster, holder, follower, ingest_events)?;

    // Starts of the holder: the first (on the store built offline), a restart after kill -9
    // (redb's crash recovery), a restart after a clean stop. The last one serves the catch-up.
    let mut starts = Vec::new();
    for (what, crash) in
        [("first start", true), ("restart after kill -9", false), ("restart after a clean stop", false)]
    {
        let spawned = Instant::now();
        cluster.start(holder)?;
        let took = cluster.wait_ready(holder, spawned).await?;
        let held = cluster.n_events(holder).await?;
        ensure!(
            held == n_events as u64 + u64::from(what != "first start"),
            "the holder holds {held} events after its {what}"
        );
        starts.push((what, took, memory(&cluster, holder)));
        eprintln!("history: holder {what} in {took:?}");
        if crash {
            // One write, so that the process has written to the file since it opened it (an
            // open that wrote nothing leaves it marked clean, and kill -9 costs nothing then).
            let mut conn = Conn::connect(&cluster.nodes[holder].socket).await?;
            let status =
                conn.put("/v1/registers/before-the-crash", Bytes::from_static(b"{\"value\":\"x\"}")).await?;
            ensure!(status.is_success(), "the write before the crash was answered {status}");
            cluster.kill(holder)?;
        } else if what != "restart after a clean stop" {
            cluster.stop(holder)?;
        }
    }

    // The catch-up of an empty follower: memory of both while it runs.
    eprintln!("history: starting the empty follower");
    let spawned = Instant::now();
    cluster.start(follower)?;
    cluster.wait_ready(follower, spawned).await?;
    let mut peak = (0.0f64, 0.0f64);
    let mut samples: Vec<(f64, u64, f64)> = Vec::new();
    let mut next_report = Instant::now();
    let caught_up = loop {
        let have = cluster.n_events(follower).await?;
        let (f, h) = (memory(&cluster, follower).0, memory(&cluster, holder).0);
        peak = (peak.0.max(f), peak.1.max(h));
        if Instant::now() >= next_report {
            eprintln!(
                "history: follower holds {have} of {n_events} after {:.0} s, VmHWM {f:.0} MiB",
                spawned.elapsed().as_secs_f64()
            );
            samples.push((spawned.elapsed().as_secs_f64(), have, f));
            next_report += Duration::from_secs(if n_events >= 1_000_000 { 30 } else { 2 });
        }
        if have >= n_events as u64 {
            break spawned.elapsed();
        }
        if spawned.elapsed() > CATCHUP_TIMEOUT {
            bail!("the follower holds {have} of {n_events} events after {CATCHUP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let follower_rss = memory(&cluster, follower).1;
    let holder_rss = memory(&cluster, holder).1;
    let metrics = cluster.metrics(follower).await?;
    let paused = metrics.get("cairn_peer_input_paused_total");
    let holder_name = cluster.nodes[holder].name.clone();
    let bytes_in = cluster.peer_stats(follower, &holder_name).await?["bytes_in"].as_f64().unwrap_or(0.0);

    // The follower's own restart, holding every event it caught up on.
    cluster.stop(follower)?;
    let follower_config = Config::load(&cluster.nodes[follower].config)?;
    let follower_store_bytes = std::fs::metadata(follower_config.store_path())?.len();
    let space = {
        let genesis = load_genesis(&follower_config.genesis_file)?;
        let key = SecretKey::read_file(&follower_config.key_file)?.public();
        let (store, _) = Store::open_indexed(
            &follower_config.store_path(),
            genesis.cluster_id(),
            key.0,
            OwnHistory::Unknown,
            &store::member_keys(&genesis),
        )?;
        store.space()?
    };
    let spawned = Instant::now();
    cluster.start(follower)?;
    let follower_restart = cluster.wait_ready(follower, spawned).await?;
    let follower_after_restart = memory(&cluster, follower);

    // A backup of the holder's whole store while one client writes to it.
    let backup_file = bench.dir.join("history-backup.redb");
    let stop = Arc::new(AtomicBool::new(false));
    let writes = spawn_writer(cluster.nodes[holder].socket.clone(), stop.clone());
    let baseline_from = Instant::now();
    tokio::time::sleep(BACKUP_BASELINE).await;
    let backup_from = Instant::now();
    let ctl = bench.exe.with_file_name("cairnctl");
    let mut command = std::process::Command::new(&ctl);
    command.arg("--socket").arg(&cluster.nodes[holder].socket).arg("backup").arg(&backup_file);
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    let backup_to = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let writes = writes.await??;
    ensure!(
        output.status.success(),
        "cairnctl backup failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let backup_secs = (backup_to - backup_from).as_secs_f64();
    let backup_bytes = std::fs::metadata(&backup_file)?.len();
    let quiet = latency_ms(&writes, baseline_from, backup_from);
    let during = latency_ms(&writes, backup_from, backup_to);
    std::fs::remove_file(&backup_file)?;
    bench.collect_warnings("history", &cluster);

    let mib = |x: u64| x as f64 / (1 << 20) as f64;
    let _ = writeln!(out, "## history: a node holding {} events\n", n(n_events as f64));
    let _ = writeln!(out, "| measurement | value |");
    let _ = writeln!(out, "|---|---:|");
    let _ = writeln!(
        out,
        "| events (Puts of {}-byte values over {} registers, one chain) / their encoded bytes | {} / {} ({:.1} per event) |",
        super::load::VALUE_BYTES,
        n(registers as f64),
        n(n_events as f64),
        n(event_bytes as f64),
        event_bytes as f64 / n_events as f64
    );
    let _ = writeln!(out, "| building the holder's store offline: seconds | {build_secs:.0} |");
    let _ = writeln!(
        out,
        "| **store bytes ÷ event bytes**: the holder's store (built offline) / the follower's (after its catch-up) | **{:.2}** ({:.0} MiB) / {:.2} ({:.0} MiB) |",
        store_bytes as f64 / event_bytes as f64,
        mib(store_bytes),
        follower_store_bytes as f64 / event_bytes as f64,
        mib(follower_store_bytes)
    );
    let ratio = ingest.per_sec / ((ingest.baseline[0] + ingest.baseline[1]) / 2.0);
    let _ = writeln!(
        out,
        "| **ingest through adapter, document and store** (in process, {} events): events/s ÷ `verify_strict`/s on 2 threads (before / after) | {} ÷ {} / {} = **{ratio:.2}** (target ≥ 0.8 {}) |",
        n(ingest.events as f64),
        n(ingest.per_sec),
        n(ingest.baseline[0]),
        n(ingest.baseline[1]),
        met(ratio >= 0.8)
    );
    let _ = writeln!(
        out,
        "| where that ingest's CPU went: node (decoding, signatures on 2 threads, document, archive) / store thread (`append_with_document`), CPU µs per event; commits (events per commit) | {:.1} / {:.1}; {} ({:.0}) |",
        ingest.node_cpu / ingest.events as f64 * 1e6,
        ingest.store_cpu / ingest.events as f64 * 1e6,
        ingest.commits,
        ingest.events as f64 / ingest.commits.max(1) as f64
    );
    let _ = writeln!(
        out,
        "| the same, as cores busy over the {:.1} s: node / store | {:.2} / {:.2} |",
        ingest.secs,
        ingest.node_cpu / ingest.secs,
        ingest.store_cpu / ingest.secs
    );
    for (what, took, (hwm, rss)) in &starts {
        let target = if what.contains("clean") {
            format!(" (target < 2 s {})", met(took.as_secs_f64() < 2.0))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| holder {what}: spawn until its API answers{target} / VmHWM / VmRSS | **{:.2} s** / {hwm:.0} MiB / {rss:.0} MiB |",
            took.as_secs_f64()
        );
    }
    let _ = writeln!(
        out,
        "| **peak memory (VmHWM) during the catch-up: follower (ingesting) / holder (serving, since its clean restart)** | **{:.0} MiB / {:.0} MiB** (target < 512 MiB {}) |",
        peak.0,
        peak.1,
        met(peak.0 < 512.0 && peak.1 < 512.0)
    );
    let _ = writeln!(
        out,
        "| VmRSS when the follower held every event: follower / holder | {follower_rss:.0} MiB / {holder_rss:.0} MiB |"
    );
    let _ = writeln!(
        out,
        "| catch-up: seconds / events/s ÷ `verify_strict`/s on 2 threads ({}) / bytes in ÷ event bytes | {:.1} / {:.2} / {:.4} |",
        n(verify[1]),
        caught_up.as_secs_f64(),
        n_events as f64 / caught_up.as_secs_f64() / verify[1],
        bytes_in / event_bytes as f64
    );
    let _ = writeln!(
        out,
        "| times the follower paused reading from the holder for its store (`cairn_peer_input_paused_total`) | {paused:.0} |"
    );
    let _ = writeln!(
        out,
        "| follower restart after a clean stop, holding every event: spawn until its API answers / VmHWM / VmRSS | {:.2} s / {:.0} MiB / {:.0} MiB |",
        follower_restart.as_secs_f64(),
        follower_after_restart.0,
        follower_after_restart.1
    );
    let _ = writeln!(
        out,
        "| **backup of the holder's store** (`cairnctl backup`, while one client writes): seconds / file size | **{backup_secs:.1} s** / {:.0} MiB |",
        mib(backup_bytes)
    );
    let _ = writeln!(
        out,
        "| the client's write latency, max / p99 (writes): {:.0} s before the backup / during it | {:.1} / {:.1} ms ({}) / **{:.1}** / {:.1} ms ({}) |",
        BACKUP_BASELINE.as_secs_f64(),
        quiet.1,
        quiet.2,
        quiet.0,
        during.1,
        during.2,
        during.0
    );
    let _ = writeln!(
        out,
        "\nWhere the follower's store file ({:.0} MiB) goes, by table (redb's own figures): entries, bytes \
         of keys and values, of branch pages and metadata, lost in partly filled pages.\n",
        mib(follower_store_bytes)
    );
    let _ =
        writeln!(out, "| table | entries | stored MiB | metadata MiB | fragmented MiB | bytes per event |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    let mut in_tables = 0;
    for t in &space {
        let all = t.stored + t.metadata + t.fragmented;
        in_tables += all;
        let _ = writeln!(
            out,
            "| `{}` | {} | {:.1} | {:.1} | {:.1} | {:.0} |",
            t.name,
            n(t.entries as f64),
            mib(t.stored),
            mib(t.metadata),
            mib(t.fragmented),
            all as f64 / n_events as f64
        );
    }
    let _ = writeln!(
        out,
        "| free pages and redb's own state (the file minus the tables) | | | | | {:.0} |",
        follower_store_bytes.saturating_sub(in_tables) as f64 / n_events as f64
    );
    let progress: Vec<String> = samples
        .iter()
        .map(|(t, have, hwm)| format!("{t:.0} s: {} ({hwm:.0} MiB)", n(*have as f64)))
        .collect();
    let _ =
        writeln!(out, "\nThe follower while it caught up (events held, its VmHWM): {}.", progress.join(", "));
    let _ = writeln!(
        out,
        "\nHow it was measured. A 2-node cluster (sync interval 1 s, default limits). The holder's store is \
         built before any node starts, as `catchup` builds it, but over {} registers. The ingest row feeds the \
         first events of that store in `Events` messages of {INGEST_MESSAGE_EVENTS} to a fresh `Node` whose \
         archive is a fresh store on disk (`StoreArchive`), and commits what it accepts with the document's \
         changes (`Store::append_with_document`, which decodes each event again and indexes it from its deps' \
         stored metas, where the daemon stores an accepted event from its proof of validation, \
         `Append::Accepted`) on a second thread, scheduled as the daemon's group commit is: one \
         commit in flight, what is accepted meanwhile goes into the next once {INGEST_COMMIT_EVENTS} wait, \
         and past {PEER_EVENTS_UNSTORED_MAX} unstored events the node takes no input until a commit lands. \
         It runs between two runs of the `verify_strict` baseline on 2 threads; CPU is read from \
         `/proc` (the process's, and the store thread's own). The holder then starts three times: on the store built offline, after `kill -9` of \
         that first process (redb's crash recovery reads and verifies the whole file), and after a clean \
         stop (an open reads only what it uses). The last process serves the catch-up of an empty follower; \
         VmHWM is read from `/proc/PID/status` every 50 ms. The backup runs `cairnctl backup` against the \
         holder while one client writes to it, one write after another.\n",
        n(registers as f64)
    );
    Ok(())
}
