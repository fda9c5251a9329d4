//! `cairn-daemon-bench`: figures of real `cairnd` processes on loopback, each given as a ratio
//! against a baseline measured in the same run on the same machine.
//!
//! ```text
//! cairn-daemon-bench [all | writes | replication | catchup | history | idle | scale]... [--quick] [--out FILE]
//! ```
//!
//! - `writes`: durable writes per second through the API with 1, 16 and 256 concurrent
//!   clients, against redb's own commit rates in the same file system and against reads on the
//!   same connections; ops per second through `POST /v1/batch` (256 ops per request), against
//!   redb's rate at 256 inserts per commit.
//! - `replication`: events per second a fresh follower ingests from a writer, against raw
//!   `verify_strict` per second on the follower's cores.
//! - `catchup`: an empty node catching up from a peer holding many events (built offline):
//!   seconds, bytes on the wire against the events' encoded size, peak memory.
//! - `history`: a node holding many events over many registers (built offline): ingest through
//!   the adapter, document and store; restarts; memory after a restart and during a catch-up;
//!   store bytes against event bytes; a backup under writes.
//! - `idle`: anti-entropy traffic of an idle three-node cluster, per round and peer.
//! - `scale` (not in `all`): a 30-node cluster (10 with `--quick`) with the default overlay, each
//!   node configured with one seed: messages, bytes and copies received per event per node,
//!   connections per node, and convergence time after writes on one node.
//!
//! The nodes are the release `cairnd` next to this binary, each in its own process with its own
//! data directory under the system's temporary directory. The tables go to stdout in markdown,
//! and to `FILE` too with `--out`. `--quick` shrinks every size for a smoke test (under a
//! minute).

#[path = "../daemon/baseline.rs"]
mod baseline;
#[path = "../daemon/cluster.rs"]
mod cluster;
#[path = "../daemon/history.rs"]
mod history;
#[path = "../daemon/load.rs"]
mod load;
#[path = "../daemon/proxy.rs"]
mod proxy;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use cairn_crypto::SecretKey;
use cairn_daemon::config::{Config, load_genesis};
use cairn_daemon::store::{OwnHistory, Store};
use cairn_protocol::{DocumentDelta, Genesis, Member, Node, NodeConfig, Op};

use cairn_bench::VerifySet;
use cluster::{Cluster, CpuSnapshot, CpuSplit, cpu_seconds, load_average, machine_cpu, proc_status_mib};
use load::{LoadResult, Until};

const USAGE: &str = "usage: cairn-daemon-bench [all | writes | replication | catchup | history | idle | scale]... \
                     [--quick] [--out FILE] [--replication-events N] [--catchup-events N] [--catchup-new-member] [--history-events N]";

/// Settings every bench cluster shares: quiet logs, and the sync interval stated explicitly.
const BASE_CONFIG: &str = "log_level = \"warn\"\n[timing]\nsync_interval = \"1s\"\n";

/// Registers the chains signed offline for `writes` and `catchup` write to.
const CATCHUP_REGISTERS: usize = 256;

/// Runs of each baseline; the median is reported.
const REPEATS: usize = 3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Section {
    Writes,
    Replication,
    Catchup,
    History,
    Idle,
    Removal,
    Scale,
}

/// What `all` (or no section) runs.
const ALL: [Section; 6] = [
    Section::Writes,
    Section::Replication,
    Section::Catchup,
    Section::History,
    Section::Idle,
    Section::Removal,
];

struct Args {
    sections: Vec<Section>,
    quick: bool,
    out: Option<PathBuf>,
    replication_events: Option<usize>,
    catchup_events: Option<usize>,
    catchup_new_member: bool,
    history_events: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        sections: Vec::new(),
        quick: false,
        out: None,
        replication_events: None,
        catchup_events: None,
        catchup_new_member: false,
        history_events: None,
    };
    let number = |it: &mut dyn Iterator<Item = String>, flag: &str| -> Result<Option<usize>, String> {
        let text = it.next().ok_or(format!("{flag} needs a number"))?;
        text.parse().map(Some).map_err(|_| format!("{flag}: {text:?} is not a number"))
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "all" => args.sections.extend(ALL),
            "writes" => args.sections.push(Section::Writes),
            "replication" => args.sections.push(Section::Replication),
            "catchup" => args.sections.push(Section::Catchup),
            "history" => args.sections.push(Section::History),
            "idle" => args.sections.push(Section::Idle),
            "removal" => args.sections.push(Section::Removal),
            "scale" => args.sections.push(Section::Scale),
            "--quick" => args.quick = true,
            "--out" => args.out = Some(it.next().ok_or("--out needs a file name")?.into()),
            "--replication-events" => args.replication_events = number(&mut it, &arg)?,
            "--catchup-events" => args.catchup_events = number(&mut it, &arg)?,
            "--catchup-new-member" => args.catchup_new_member = true,
            "--history-events" => args.history_events = number(&mut it, &arg)?,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.sections.is_empty() {
        args.sections.extend(ALL);
    }
    let mut seen = Vec::new();
    args.sections.retain(|s| {
        let new = !seen.contains(s);
        seen.push(*s);
        new
    });
    Ok(args)
}

#[derive(Clone, Copy)]
struct Sizes {
    /// Writes completed in this first part of each load level are not counted.
    warm_up: Duration,
    /// The counted part of each load level.
    measured: Duration,
    /// How long each redb baseline run commits.
    redb: Duration,
    /// Runs of each redb baseline.
    redb_repeats: usize,
    /// Events for the `Store::append` diagnostic.
    store_events: usize,
    /// Signatures of the verify baseline.
    verify: usize,
    /// Events the writer holds before the follower starts.
    replication: usize,
    /// Events the catch-up holder holds.
    catchup: usize,
    /// Events the `history` holder holds.
    history: usize,
    /// The idle cluster settles this long before the window.
    idle_settle: Duration,
    /// The idle measurement window.
    idle_window: Duration,
    /// Nodes of the `scale` cluster.
    scale_nodes: usize,
    /// Events written on one node in `scale`.
    scale_events: usize,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                warm_up: Duration::from_millis(300),
                measured: Duration::from_millis(1_500),
                redb: Duration::from_millis(400),
                redb_repeats: 1,
                store_events: 5_120,
                verify: 2_000,
                replication: 5_000,
                catchup: 20_000,
                history: 20_000,
                idle_settle: Duration::from_secs(2),
                idle_window: Duration::from_secs(4),
                scale_nodes: 10,
                scale_events: 50,
            }
        } else {
            Self {
                warm_up: Duration::from_secs(1),
                measured: Duration::from_secs(5),
                redb: Duration::from_secs(2),
                redb_repeats: REPEATS,
                store_events: 51_200,
                verify: 20_000,
                replication: 50_000,
                catchup: 1_000_000,
                history: 1_000_000,
                idle_settle: Duration::from_secs(3),
                idle_window: Duration::from_secs(10),
                scale_nodes: 30,
                scale_events: 200,
            }
        }
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// A whole number with thin thousands separators, for the tables.
fn n(x: f64) -> String {
    if !x.is_finite() {
        return "—".to_owned();
    }
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// Everything the sections share.
struct Bench {
    exe: PathBuf,
    dir: PathBuf,
    sizes: Sizes,
    verify: Option<(VerifySet, [f64; 2], [Vec<f64>; 2])>,
    /// Daemon log lines at warn or above, by section, for the report.
    warnings: Vec<String>,
    /// `catchup`: the follower is a host a membership change adds (the genesis holds the
    /// holder alone, whose proposal puts it in force), not a genesis member.
    catchup_new_member: bool,
}

impl Bench {
    /// The verify baseline (measured once per run, on first use).
    fn verify_baseline(&mut self) -> [f64; 2] {
        if self.verify.is_none() {
            eprintln!("verify: signing {} messages with distinct keys", self.sizes.verify);
            let set = VerifySet::new(self.sizes.verify);
            let mut all = [Vec::new(), Vec::new()];
            for _ in 0..REPEATS {
                all[0].push(set.run(1));
                all[1].push(set.run(2));
            }
            let per_sec = [median(all[0].clone()), median(all[1].clone())];
            eprintln!("verify: {:.0}/s on 1 thread, {:.0}/s on 2", per_sec[0], per_sec[1]);
            self.verify = Some((set, per_sec, all));
        }
        self.verify.as_ref().map(|v| v.1).unwrap_or_default()
    }

    fn collect_warnings(&mut self, section: &str, cluster: &Cluster) {
        for (i, node) in cluster.nodes.iter().enumerate() {
            for line in cluster.log_warnings(i) {
                self.warnings.push(format!("{section} / {}: {line}", node.name));
            }
        }
    }
}

/// The file system holding `dir`, from `/proc/mounts` (device, mount point, type).
fn file_system_of(dir: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else { return "?".to_owned() };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && dir.starts_with(f[1]))
                .then(|| (f[1].len(), format!("{} on {} ({})", f[0], f[1], f[2])))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "?".to_owned(), |(_, s)| s)
}

// ---- writes ---------------------------------------------------------------------------------

/// Clients of the batch level, each sending `POST /v1/batch` with [`load::BATCH_OPS`] ops, one
/// request after another. Each request is one event (a batch fills an event's op limit, so no
/// two share one); while a commit is in flight the others' events wait for the next, so about
/// half of them share each fsync: 16 clients make commits of about 8 events (2 048 ops), enough
/// that the fsync is no longer what limits the rate, without a queue that only adds latency.
const BATCH_CLIENTS: usize = 16;

/// One load level: the load result and what the daemon's counters and CPU did in its window.
struct WriteRow {
    label: String,
    kind: load::Kind,
    clients: usize,
    result: LoadResult,
    commits: f64,
    writes: f64,
    own_events: f64,
    daemon_cpu: CpuSplit,
    /// Every node of the cluster, cores.
    cluster_cpu: f64,
    bench_cpu: f64,
}

/// A representative API write as the daemon signs it: `PUT` of a [`load::VALUE_BYTES`] value
/// to a `bench-NNN` register, one dep (the own predecessor). Returns its encoded size.
fn sample_event_bytes() -> usize {
    let key = SecretKey::from_seed(&[3; 32]);
    let genesis = Genesis::new(vec![Member { key: key.public(), name: "sample".to_owned() }])
        .expect("a one-member genesis");
    let mut node = Node::new(genesis, Some(key.public()), NodeConfig::default());
    let (k, v) = load::key_and_value(0, 0);
    let ops = || vec![Op::Put { key: k.clone().into_bytes(), value: v.clone().into_bytes() }];
    let mut write = || {
        let prepared = node.prepare_writes(&key, vec![ops()]).expect("a valid write");
        node.commit_writes(prepared, 0).remove(0)
    };
    write();
    write().bytes().len()
}

/// Signs `n` events as one chain with `key`, as the daemon's group commit does, in batches;
/// calls `sink` with each batch of (id, bytes). Returns the seconds spent signing.
fn sign_chain(
    genesis: &Genesis,
    key: &SecretKey,
    n: usize,
    registers: usize,
    mut sink: impl FnMut(&[([u8; 32], Vec<u8>)], &DocumentDelta) -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    const BATCH: usize = 10_000;
    let mut node = Node::new(genesis.clone(), Some(key.public()), NodeConfig::default());
    // The document's changes go with each batch, as a running node's commits carry them.
    node.track_document();
    let mut signing = 0.0;
    let mut done = 0;
    while done < n {
        let count = BATCH.min(n - done);
        let writes: Vec<Vec<Op>> = (done..done + count)
            .map(|i| {
                let (k, v) = load::key_and_value(i % registers, i);
                vec![Op::Put { key: k.into_bytes(), value: v.into_bytes() }]
            })
            .collect();
        let start = Instant::now();
        let events = node.prepare_writes(key, writes).map_err(|e| anyhow::anyhow!("{e}"))?;
        signing += start.elapsed().as_secs_f64();
        let accepted = node.commit_writes(events, 0);
        // Drained as the driver does, so the node's event queue does not grow.
        while node.poll_event().is_some() {}
        let batch: Vec<([u8; 32], Vec<u8>)> =
            accepted.iter().map(|v| (v.id().0, v.bytes().to_vec())).collect();
        let delta = node.take_document_delta().unwrap_or_default();
        sink(&batch, &delta)?;
        done += count;
    }
    Ok(signing)
}

async fn measure_level(
    cluster: &Cluster,
    node: usize,
    clients: usize,
    sizes: &Sizes,
    label: &str,
    kind: load::Kind,
) -> anyhow::Result<WriteRow> {
    let conns = load::connect(&cluster.nodes[node].socket, clients).await?;
    let pid = cluster.pid(node);
    let start = Instant::now();
    let sample = async {
        tokio::time::sleep_until((start + sizes.warm_up).into()).await;
        let m0 = cluster.metrics(node).await?;
        let all0: f64 = (0..cluster.nodes.len()).map(|i| cpu_seconds(cluster.pid(i))).sum();
        let c0 = (CpuSnapshot::take(pid), cpu_seconds(None), all0);
        tokio::time::sleep_until((start + sizes.warm_up + sizes.measured).into()).await;
        let m1 = cluster.metrics(node).await?;
        let all1: f64 = (0..cluster.nodes.len()).map(|i| cpu_seconds(cluster.pid(i))).sum();
        let c1 = (CpuSnapshot::take(pid), cpu_seconds(None), all1);
        anyhow::Ok((m0, m1, c0, c1))
    };
    let (result, sampled) = tokio::join!(
        load::run_kind(conns, start, Until::Time { warm_up: sizes.warm_up, measured: sizes.measured }, kind),
        sample
    );
    let result = result?;
    let (m0, m1, c0, c1) = sampled?;
    let secs = result.secs;
    let row = WriteRow {
        label: label.to_owned(),
        kind,
        clients,
        commits: m1.get("cairn_store_commits_total") - m0.get("cairn_store_commits_total"),
        writes: m1.get("cairn_writes_total") - m0.get("cairn_writes_total"),
        own_events: m1.get("cairn_own_events_total") - m0.get("cairn_own_events_total"),
        daemon_cpu: CpuSplit::between(&c0.0, &c1.0, secs),
        cluster_cpu: (c1.2 - c0.2) / secs,
        bench_cpu: (c1.1 - c0.1) / secs,
        result,
    };
    eprintln!(
        "writes: {label}, {clients} clients: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {:.1} writes/commit, cpu {}",
        row.result.per_sec(),
        row.result.latency_ms(0.5),
        row.result.latency_ms(0.99),
        row.writes / row.commits.max(1.0),
        row.daemon_cpu.describe()
    );
    Ok(row)
}

async fn writes_section(bench: &mut Bench, out: &mut String) -> anyhow::Result<()> {
    let sizes = bench.sizes;
    let event_bytes = sample_event_bytes();
    eprintln!("writes: redb baselines ({event_bytes}-byte values)");
    let redb_path = bench.dir.join("redb-baseline.redb");
    let mut redb = Vec::new();
    for batch in [1, 100, 256] {
        let runs: Vec<f64> = (0..sizes.redb_repeats)
            .map(|_| baseline::redb_rate(&redb_path, batch, event_bytes, sizes.redb))
            .collect::<anyhow::Result<_>>()?;
        eprintln!("writes: redb batch {batch}: {:.0}/s", median(runs.clone()));
        redb.push((batch, median(runs.clone()), runs));
    }
    // The daemon's store on its own, with real events.
    let key = SecretKey::from_seed(&[4; 32]);
    let genesis = Genesis::new(vec![Member { key: key.public(), name: "store".to_owned() }])?;
    let mut events = Vec::with_capacity(sizes.store_events);
    let signing = sign_chain(&genesis, &key, sizes.store_events, CATCHUP_REGISTERS, |batch, _| {
        events.extend_from_slice(batch);
        Ok(())
    })?;
    let chain_sign_rate = sizes.store_events as f64 / signing;
    let store_path = bench.dir.join("store-baseline").join("cairn.redb");
    let store_runs: Vec<f64> = (0..sizes.redb_repeats)
        .map(|_| baseline::store_rate(&store_path, &genesis, key.public().0, &events, 256))
        .collect::<anyhow::Result<_>>()?;
    let store_256 = median(store_runs.clone());
    drop(events);
    let sign_rate = baseline::sign_rate(if bench.sizes.verify > 5_000 { 50_000 } else { 5_000 });
    eprintln!("writes: Store::append 256/commit {store_256:.0} events/s; signing {sign_rate:.0}/s");

    let mut rows = Vec::new();
    {
        let mut cluster = Cluster::new(&bench.exe, bench.dir.join("writes-1"), 1, BASE_CONFIG)?;
        cluster.start_all().await?;
        for clients in [1, 16, 256] {
            rows.push(measure_level(&cluster, 0, clients, &sizes, "1 node", load::Kind::Write).await?);
        }
        // The API's own ceiling: the same requests as reads (after the writes, so each
        // register holds a value).
        rows.push(measure_level(&cluster, 0, 256, &sizes, "1 node, reads (GET)", load::Kind::Read).await?);
        let label = format!("1 node, batches of {} ops (`POST /v1/batch`)", load::BATCH_OPS);
        rows.push(measure_level(&cluster, 0, BATCH_CLIENTS, &sizes, &label, load::Kind::Batch).await?);
        bench.collect_warnings("writes, 1 node", &cluster);
    }
    {
        let mut cluster = Cluster::new(&bench.exe, bench.dir.join("writes-3"), 3, BASE_CONFIG)?;
        cluster.start_all().await?;
        cluster.wait_converged(0, Duration::from_secs(30)).await?;
        rows.push(
            measure_level(&cluster, 0, 256, &sizes, "3 nodes, writes to one", load::Kind::Write).await?,
        );
        bench.collect_warnings("writes, 3 nodes", &cluster);
    }

    let redb_of = |batch: usize| redb.iter().find(|r| r.0 == batch).map_or(f64::NAN, |r| r.1);
    let _ = writeln!(out, "## writes: durable writes per second through the API\n");
    let _ = writeln!(out, "### Baselines, same run, same file system\n");
    let _ = writeln!(out, "| measurement | per second (median) | runs |");
    let _ = writeln!(out, "|---|---:|---|");
    for (batch, rate, runs) in &redb {
        let what = if *batch == 1 {
            "redb: one insert per commit (commits/s)".to_owned()
        } else {
            format!("redb: {batch} inserts per commit (inserts/s)")
        };
        let runs: Vec<String> = runs.iter().map(|r| format!("{r:.0}")).collect();
        let _ = writeln!(out, "| {what} | {} | {} |", n(*rate), runs.join(" / "));
    }
    let store_runs_text: Vec<String> = store_runs.iter().map(|r| format!("{r:.0}")).collect();
    let _ = writeln!(
        out,
        "| diagnostic: the daemon's `Store::append`, 256 real events per commit (events/s) | {} | {} |",
        n(store_256),
        store_runs_text.join(" / ")
    );
    let _ = writeln!(
        out,
        "| diagnostic: ed25519 signing, one thread (signatures/s) | {} | one run |",
        n(sign_rate)
    );
    let _ = writeln!(
        out,
        "| diagnostic: `Node::prepare_writes`, a chain of own events, one thread (events/s) | {} | one run |",
        n(chain_sign_rate)
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| cluster | clients | requests/s | ops/s | p50 ms | p99 ms | refused | writes per commit | writes per event | commits/s | \
         daemon CPU (cores) | of which service loop / tokio workers / store thread | all nodes' CPU (cores) | \
         bench CPU (cores) | daemon CPU µs per request |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|");
    for r in &rows {
        let secs = r.result.secs;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2} | {:.2} | {} | {:.1} | {:.1} | {} | {:.2} | {:.2} / {:.2} / {:.2} | {:.2} | {:.2} | {:.1} |",
            r.label,
            r.clients,
            n(r.result.per_sec()),
            n(r.result.per_sec() * r.kind.ops_per_request() as f64),
            r.result.latency_ms(0.5),
            r.result.latency_ms(0.99),
            r.result.n_refused,
            r.writes / r.commits.max(1.0),
            r.writes / r.own_events.max(1.0),
            n(r.commits / secs),
            r.daemon_cpu.total,
            r.daemon_cpu.service,
            r.daemon_cpu.workers,
            r.daemon_cpu.store,
            r.cluster_cpu,
            r.bench_cpu,
            r.daemon_cpu.total * secs / r.result.n_ok.max(1) as f64 * 1e6
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "| ratio | value | target |");
    let _ = writeln!(out, "|---|---:|---|");
    let reads = rows.iter().find(|r| r.kind == load::Kind::Read).map_or(f64::NAN, |r| r.result.per_sec());
    // The two targets of issue 14 (point 6) first.
    for r in rows.iter().filter(|r| r.kind == load::Kind::Batch) {
        let ops = r.result.per_sec() * r.kind.ops_per_request() as f64;
        let _ = writeln!(
            out,
            "| **batch ops/s ({}, {} clients) ÷ redb inserts/s at 256 per commit** | **{:.2}** | ≥ 0.5 {} |",
            r.label,
            r.clients,
            ops / redb_of(256),
            met(ops / redb_of(256) >= 0.5)
        );
    }
    let at256: Vec<&WriteRow> =
        rows.iter().filter(|r| r.clients == 256 && r.kind == load::Kind::Write).collect();
    for r in at256.iter().filter(|r| r.label == "1 node") {
        let api = r.result.per_sec();
        let _ = writeln!(
            out,
            "| **API writes/s at 256 clients ({}) ÷ API reads/s at 256 clients (1 node)** | **{:.2}** | ≥ 0.9 {} |",
            r.label,
            api / reads,
            met(api / reads >= 0.9)
        );
    }
    for r in &at256 {
        let api = r.result.per_sec();
        if r.label != "1 node" {
            let _ = writeln!(
                out,
                "| API writes/s at 256 clients ({}) ÷ API reads/s at 256 clients (1 node) | {:.2} | (diagnostic) |",
                r.label,
                api / reads
            );
        }
        let _ = writeln!(
            out,
            "| API writes/s at 256 clients ({}) ÷ redb inserts/s at 256 per commit | {:.2} | (diagnostic) |",
            r.label,
            api / redb_of(256)
        );
        let _ = writeln!(
            out,
            "| API writes/s at 256 clients ({}) ÷ redb single-insert commits/s | {:.1} | (diagnostic) |",
            r.label,
            api / redb_of(1)
        );
    }
    let _ = writeln!(
        out,
        "\nHow it was measured. Each client is a tokio task in the bench process (a current-thread \
         runtime, so the bench uses at most one core) with its own persistent HTTP/1.1 connection to \
         the node's Unix socket; it sends `PUT /v1/registers/bench-NNN` with a {}-byte text value, waits \
         for the answer (200 means the event is fsync'd on this node) and sends the next. Each level \
         runs {:.1} s; writes that complete in the first {:.1} s are not counted. Latency is per \
         request, from send to the end of the answer. Writes per commit and commits/s come from the \
         node's `cairn_writes_total` and `cairn_store_commits_total` over the counted window; CPU from \
         `/proc/PID/stat` (user + system, all threads) over the same window, split by thread from \
         `/proc/PID/task/*/stat`: the service loop is the main thread (`cairnd run` drives \
         `Service::run` in `block_on`: packing, signing, `commit_writes`, commands, transmit), the \
         tokio workers run the API (HTTP, JSON) and the transport, the store thread runs \
         `Store::append` (fsync waits are not CPU). The node runs with default limits \
         (`commit_writes_max` = 1 024); the writes queued while a commit is in flight are packed \
         into as few events as the limits allow (up to 256 ops and 128 KiB an event), so one \
         signature and one `log` entry serve many writes. The reads row sends `GET` for the same \
         registers on the same connections: HTTP, JSON and the round trip through the service \
         loop without signing or fsync, the ceiling of this API on this machine. The batch row \
         has {} clients each send `POST /v1/batch` with {} puts of {}-byte text values to its \
         own registers (the same keys each time), one request after another: each request is \
         one event, and its ops/s is requests/s times {}. The 3-node row \
         writes to one node of a 3-node cluster, which pushes every event to both peers while it \
         commits.\n\n\
         The redb baselines use the redb crate directly on a fresh file in the bench directory ({}), \
         `Durability::Immediate` and `set_two_phase_commit(true)` as the daemon's store (two-phase \
         commit costs a second fsync per commit), one table `u64 → &[u8]` with {event_bytes}-byte \
         values (the encoded size of one API write's event); each run commits for {:.1} s. The \
         daemon's store writes two entries per event (`log` and `ids`), checks for a duplicate, and \
         decodes each event and recomputes its id before writing: the `Store::append` row is that \
         cost, with the same 256 events per commit.\n",
        load::VALUE_BYTES,
        (sizes.warm_up + sizes.measured).as_secs_f64(),
        sizes.warm_up.as_secs_f64(),
        BATCH_CLIENTS,
        load::BATCH_OPS,
        load::VALUE_BYTES,
        load::BATCH_OPS,
        file_system_of(&bench.dir),
        sizes.redb.as_secs_f64()
    );
    Ok(())
}

// ---- replication ----------------------------------------------------------------------------

async fn replication_section(bench: &mut Bench, out: &mut String) -> anyhow::Result<()> {
    let verify = bench.verify_baseline();
    let n_events = bench.sizes.replication;
    let mut cluster = Cluster::new(&bench.exe, bench.dir.join("replication"), 2, BASE_CONFIG)?;
    // The follower has the smaller key, so it dials as soon as it starts (the larger key only
    // accepts), and the writer's reconnect back-off plays no part.
    let order = cluster.by_key();
    let (follower, writer) = (order[0], order[1]);
    // One signature per event, as a writer signs them when writes come one at a time: the
    // API would pack concurrent writes into far fewer events, and this measures events.
    eprintln!("replication: signing {n_events} events into the writer's store (follower stopped)");
    let (_, build_secs) = sign_into_store(&cluster, writer, n_events, CATCHUP_REGISTERS)?;
    cluster.start(writer)?;
    cluster.wait_ready(writer, Instant::now()).await?;
    let held = cluster.n_events(writer).await?;
    if held != n_events as u64 {
        bail!("the writer holds {held} events, expected {n_events}");
    }
    let spawned = Instant::now();
    cluster.start(follower)?;
    let startup = cluster.wait_ready(follower, spawned).await?;
    let mut status_max = Duration::ZERO;
    let done = loop {
        let asked = Instant::now();
        let have = cluster.n_events(follower).await?;
        status_max = status_max.max(asked.elapsed());
        if have >= n_events as u64 {
            break spawned.elapsed();
        }
        if spawned.elapsed() > Duration::from_secs(600) {
            bail!("the follower holds {have} of {n_events} events after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let follower_cpu = CpuSnapshot::take(cluster.pid(follower));
    let split = CpuSplit::between(&CpuSnapshot::default(), &follower_cpu, done.as_secs_f64());
    let cpu = split.total * done.as_secs_f64();
    let writer_cpu_total = cpu_seconds(cluster.pid(writer));
    let follower_name = cluster.nodes[follower].name.clone();
    let writer_name = cluster.nodes[writer].name.clone();
    let stats = cluster.peer_stats(follower, &writer_name).await?;
    let writer_stats = cluster.peer_stats(writer, &follower_name).await?;
    let hwm = cluster.pid(follower).and_then(|p| proc_status_mib(p, "VmHWM"));
    bench.collect_warnings("replication", &cluster);

    let rate = n_events as f64 / done.as_secs_f64();
    let rate_ready = n_events as f64 / (done - startup).as_secs_f64();
    let ratio = rate / verify[1];
    eprintln!("replication: {rate:.0} events/s ({ratio:.2} of verify on 2 threads), start-up {startup:?}");
    let _ = writeln!(out, "## replication: events per second a follower ingests from a writer\n");
    let _ = writeln!(out, "| measurement | value |");
    let _ = writeln!(out, "|---|---:|");
    let _ = writeln!(out, "| events the writer held | {} |", n(n_events as f64));
    let _ = writeln!(out, "| signing them into the writer's store (before it starts) | {build_secs:.1} s |");
    let _ = writeln!(
        out,
        "| follower start-up: spawn until its socket answers | {:.0} ms |",
        startup.as_secs_f64() * 1e3
    );
    let _ = writeln!(out, "| spawn until the follower holds every event | {:.2} s |", done.as_secs_f64());
    let _ = writeln!(out, "| **follower events/s**, spawn to done | **{}** |", n(rate));
    let _ = writeln!(out, "| follower events/s, socket answering to done (diagnostic) | {} |", n(rate_ready));
    let _ = writeln!(out, "| baseline: `verify_strict`/s, 1 thread | {} |", n(verify[0]));
    let _ = writeln!(out, "| baseline: `verify_strict`/s, 2 threads (`verify_many`) | {} |", n(verify[1]));
    let _ = writeln!(
        out,
        "| **ratio: follower events/s ÷ `verify_strict`/s on 2 threads** | **{ratio:.2}** (target ≥ 0.8 {}) |",
        met(ratio >= 0.8)
    );
    let _ = writeln!(
        out,
        "| follower CPU from spawn to done: seconds (cores busy) | {cpu:.2} ({:.2}) |",
        cpu / done.as_secs_f64()
    );
    let _ = writeln!(out, "| follower CPU by thread, cores busy | {} |", split.describe());
    let _ = writeln!(
        out,
        "| follower CPU µs per event (one `verify_strict` = {:.1} µs) | {:.1} |",
        1e6 / verify[0],
        cpu / n_events as f64 * 1e6
    );
    let _ = writeln!(out, "| writer CPU seconds, whole run (load included) | {writer_cpu_total:.2} |");
    let _ = writeln!(
        out,
        "| follower: bytes in / events in / rate-limited / messages in | {} / {} / {} / {} |",
        n(stats["bytes_in"].as_f64().unwrap_or(0.0)),
        n(stats["events_in"].as_f64().unwrap_or(0.0)),
        n(stats["events_rate_limited"].as_f64().unwrap_or(0.0)),
        n(stats["messages_in"].as_f64().unwrap_or(0.0))
    );
    let events_in = stats["events_in"].as_f64().unwrap_or(0.0);
    let _ = writeln!(
        out,
        "| events sent twice (events in − events) | {} ({:.0} %) |",
        n(events_in - n_events as f64),
        (events_in / n_events as f64 - 1.0) * 100.0
    );
    let _ = writeln!(
        out,
        "| writer: bytes out / events out to the follower | {} / {} |",
        n(writer_stats["bytes_out"].as_f64().unwrap_or(0.0)),
        n(writer_stats["events_out"].as_f64().unwrap_or(0.0))
    );
    let _ = writeln!(out, "| follower VmHWM | {} |", hwm.map_or("?".to_owned(), |m| format!("{m:.0} MiB")));
    let _ = writeln!(
        out,
        "| slowest answer of the follower's `/v1/status` while it caught up | {:.0} ms |",
        status_max.as_secs_f64() * 1e3
    );
    let _ = writeln!(
        out,
        "\nHow it was measured. A 2-node cluster (`new_cluster = true`, sync interval 1 s, default \
         limits: `verify_threads` = 0, one per CPU, so 2). The writer's {} events, one `Put` each \
         (one signature per event, as the writer signs them when writes come one at a time), are \
         signed into its store before it starts, as in `catchup`; the writer starts and restores \
         them; then the follower starts with an empty store. The follower has the smaller key, so it is the \
         transport's dialer and connects as soon as it is up. The clock runs from spawning the \
         follower until its `/v1/status` reports every event (polled every 50 ms; `n_events` counts \
         events accepted in memory, the store commit follows within one commit). Nothing is \
         subtracted: start-up (process start, empty store creation, QUIC handshake) is inside the \
         rate and also shown on its own. The writer runs on the same 2 cores, and sends while the \
         follower verifies. The baseline is the `verify` set ({} signatures over 32-byte messages, \
         distinct keys), median of {REPEATS} runs, measured in this run before the cluster started.\n",
        n(n_events as f64),
        n(bench.verify.as_ref().map_or(0, |v| v.0.len()) as f64)
    );
    Ok(())
}

// ---- catchup --------------------------------------------------------------------------------

/// Signs a chain of `n` own events of node `i` (one `Put` each) into its store, which must not
/// be open: returns the events' encoded bytes and the seconds it took.
fn sign_into_store(cluster: &Cluster, i: usize, n: usize, registers: usize) -> anyhow::Result<(u64, f64)> {
    let config = Config::load(&cluster.nodes[i].config)?;
    let genesis = load_genesis(&config.genesis_file)?;
    let key = SecretKey::read_file(&config.key_file)?;
    let start = Instant::now();
    // Every event of the key is signed here, into this new store: its own history is whole.
    let (mut store, _) = Store::open_indexed(
        &config.store_path(),
        genesis.cluster_id(),
        key.public().0,
        OwnHistory::Complete,
        &cairn_daemon::store::member_keys(&genesis),
    )?;
    let mut event_bytes = 0u64;
    sign_chain(&genesis, &key, n, registers, |batch, delta| {
        let refs: Vec<([u8; 32], &[u8])> = batch.iter().map(|(id, b)| (*id, b.as_slice())).collect();
        event_bytes += batch.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
        // The document applied every event of the batch (they were committed to the node).
        let document = cairn_daemon::store::DocumentCommit { delta, n_applied: batch.len() };
        store.append_with_document(&refs, &[], false, Some(document))?;
        Ok(())
    })?;
    anyhow::ensure!(store.n_events() == n as u64, "the store holds {} events, not {n}", store.n_events());
    Ok((event_bytes, start.elapsed().as_secs_f64()))
}

async fn catchup_section(bench: &mut Bench, out: &mut String) -> anyhow::Result<()> {
    let n_events = bench.sizes.catchup;
    let mut cluster = Cluster::new(&bench.exe, bench.dir.join("catchup"), 2, BASE_CONFIG)?;
    let order = cluster.by_key();
    let (follower, holder) = (order[0], order[1]);
    let new_member = bench.catchup_new_member;
    if new_member {
        // The genesis holds the holder alone; the follower is added by its proposal (a
        // majority of one seat), then starts as a joining host.
        let holder_config = Config::load(&cluster.nodes[holder].config)?;
        let holder_key = SecretKey::read_file(&holder_config.key_file)?.public();
        let follower_key =
            SecretKey::read_file(&Config::load(&cluster.nodes[follower].config)?.key_file)?.public();
        let genesis =
            Genesis::new(vec![Member { key: holder_key, name: cluster.nodes[holder].name.clone() }])?;
        std::fs::write(&holder_config.genesis_file, cairn_daemon::config::render_genesis(&genesis))?;
        let follower_name = cluster.nodes[follower].name.clone();
        let holder_text = std::fs::read_to_string(&cluster.nodes[holder].config)?;
        let named = format!("name = {follower_name:?}\n");
        anyhow::ensure!(holder_text.contains(&named), "the holder's config does not name the follower");
        std::fs::write(
            &cluster.nodes[holder].config,
            holder_text.replace(&named, &format!("{named}key = \"{follower_key}\"\n")),
        )?;
        let follower_text = std::fs::read_to_string(&cluster.nodes[follower].config)?;
        std::fs::write(&cluster.nodes[follower].config, follower_text.replace("new_cluster = true\n", ""))?;
    }

    // The holder's store, built offline: its own chain, signed in-process and appended in
    // batches, as its group commit would have.
    let config = Config::load(&cluster.nodes[holder].config)?;
    let genesis = load_genesis(&config.genesis_file)?;
    eprintln!("catchup: signing {n_events} events into the holder's store");
    let (event_bytes, build_secs) = sign_into_store(&cluster, holder, n_events, CATCHUP_REGISTERS)?;
    let store_file_bytes = std::fs::metadata(config.store_path())?.len();

    let spawned = Instant::now();
    cluster.start(holder)?;
    let holder_startup = cluster.wait_ready(holder, spawned).await?;
    let held = cluster.n_events(holder).await?;
    if held != n_events as u64 {
        bail!("the holder restored {held} events, expected {n_events}");
    }
    // What the follower must hold: the history, and the proposal that added it.
    let mut n_target = n_events as u64;
    if new_member {
        let follower_key =
            SecretKey::read_file(&Config::load(&cluster.nodes[follower].config)?.key_file)?.public();
        let body = serde_json::json!({
            "action": "add",
            "key": follower_key.to_string(),
            "name": cluster.nodes[follower].name,
        });
        cluster.client(holder).send_json(hyper::Method::POST, "/v1/members/changes", &body).await?;
        n_target += 1;
        eprintln!("catchup: the holder added the follower's key (a membership change in force)");
    }
    eprintln!("catchup: holder up in {holder_startup:?}; starting the empty follower");
    let spawned = Instant::now();
    cluster.start(follower)?;
    let startup = cluster.wait_ready(follower, spawned).await?;
    let mut status_max = Duration::ZERO;
    let mut vm_peak = (0.0f64, 0.0f64);
    let mut next_report = Instant::now() + Duration::from_secs(10);
    // (seconds since spawn, events held), about every `step`.
    let step = if n_events >= 200_000 { 1.0 } else { 0.1 };
    // (seconds since spawn, events the follower held, MB the holder had sent it)
    let mut timeline: Vec<(f64, u64, f64)> = Vec::new();
    let done = loop {
        let asked = Instant::now();
        let have = cluster.n_events(follower).await?;
        status_max = status_max.max(asked.elapsed());
        let t = spawned.elapsed().as_secs_f64();
        if timeline.last().is_none_or(|(last, _, _)| t >= last + step) {
            let sent = cluster.peer_stats(holder, &cluster.nodes[follower].name).await?["bytes_out"]
                .as_f64()
                .unwrap_or(0.0);
            timeline.push(((t / step).floor() * step, have, sent / 1e6));
        }
        for (slot, i) in [(0, follower), (1, holder)] {
            if let Some(m) = cluster.pid(i).and_then(|p| proc_status_mib(p, "VmHWM")) {
                if slot == 0 {
                    vm_peak.0 = m;
                } else {
                    vm_peak.1 = m;
                }
            }
        }
        if have >= n_target {
            break spawned.elapsed();
        }
        if Instant::now() > next_report {
            eprintln!("catchup: {have} of {n_events} after {:.0} s", spawned.elapsed().as_secs_f64());
            next_report += Duration::from_secs(10);
        }
        if spawned.elapsed() > Duration::from_secs(1800) {
            bail!("the follower holds {have} of {n_events} events after 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let follower_split = CpuSplit::between(
        &CpuSnapshot::default(),
        &CpuSnapshot::take(cluster.pid(follower)),
        done.as_secs_f64(),
    );
    let follower_cpu = follower_split.total * done.as_secs_f64();
    let holder_cpu = cpu_seconds(cluster.pid(holder));
    let holder_name = cluster.nodes[holder].name.clone();
    let follower_name = cluster.nodes[follower].name.clone();
    let stats_at_done = cluster.peer_stats(follower, &holder_name).await?;
    // Events still queued or in flight when the follower is complete (duplicates) keep
    // arriving: wait until the holder has sent no event for 2 s (at most 2 minutes).
    let settle_start = Instant::now();
    let mut last_sent = -1.0;
    let mut still_since = Instant::now();
    while settle_start.elapsed() < Duration::from_secs(120) {
        let sent = cluster.peer_stats(holder, &follower_name).await?["events_out"].as_f64().unwrap_or(0.0);
        if sent != last_sent {
            last_sent = sent;
            still_since = Instant::now();
        } else if still_since.elapsed() >= Duration::from_secs(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settled_after = settle_start.elapsed().saturating_sub(Duration::from_secs(2));
    let stats = cluster.peer_stats(follower, &holder_name).await?;
    let holder_stats = cluster.peer_stats(holder, &follower_name).await?;
    let metrics = cluster.metrics(follower).await?;
    let rss = (
        cluster.pid(follower).and_then(|p| proc_status_mib(p, "VmRSS")),
        cluster.pid(holder).and_then(|p| proc_status_mib(p, "VmRSS")),
    );
    // Let the last commit land, stop the follower, and check its store.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.stop(follower)?;
    let check_start = Instant::now();
    let follower_config = Config::load(&cluster.nodes[follower].config)?;
    let follower_key = SecretKey::read_file(&follower_config.key_file)?;
    let (stored, loaded) = Store::open(
        &follower_config.store_path(),
        genesis.cluster_id(),
        follower_key.public().0,
        OwnHistory::Unknown,
        &cairn_daemon::store::member_keys(&genesis),
    )?;
    let stored_events = stored.n_events();
    let stored_bytes: u64 = loaded.events.iter().map(|e| e.len() as u64).sum();
    drop((stored, loaded));
    let reopen_secs = check_start.elapsed().as_secs_f64();
    // The follower's store holds what a running node writes: the document and its covered
    // records besides the events and their indexes.
    let follower_store_bytes = std::fs::metadata(follower_config.store_path())?.len();

    // Restarts, spawn until the API answers: the holder and the follower open the document
    // persisted with their logs and replay only its tail. After a clean stop, then after
    // kill -9 (redb's recovery of a file closed uncleanly included).
    let mut restarts = Vec::new();
    for (who, i) in [("holder", holder), ("follower", follower)] {
        cluster.stop(i)?;
        let spawned = Instant::now();
        cluster.start(i)?;
        let clean = cluster.wait_ready(i, spawned).await?;
        let hwm_clean = cluster.pid(i).and_then(|p| proc_status_mib(p, "VmHWM")).unwrap_or(0.0);
        cluster.kill(i)?;
        let spawned = Instant::now();
        cluster.start(i)?;
        let killed = cluster.wait_ready(i, spawned).await?;
        let held = cluster.n_events(i).await?;
        anyhow::ensure!(held == n_target, "the {who} holds {held} events after its restarts");
        restarts.push((who, clean, killed, hwm_clean));
    }
    bench.collect_warnings("catchup", &cluster);

    let bytes_in = stats["bytes_in"].as_f64().unwrap_or(0.0);
    // A new member's catch-up also carries the proposal that added it: the one event its store
    // holds past the history.
    let event_bytes = if new_member && stored_events == n_target { stored_bytes } else { event_bytes };
    let ratio = bytes_in / event_bytes as f64;
    let events_in = stats["events_in"].as_f64().unwrap_or(0.0);
    let messages_in = stats["messages_in"].as_f64().unwrap_or(0.0);
    eprintln!("catchup: {:.1} s, wire/event bytes {ratio:.4}", done.as_secs_f64());
    if new_member {
        let _ = writeln!(
            out,
            "## catchup: a host added by a membership change catching up from a peer\n\nThe genesis holds the \
             holder alone; its proposal to add the follower's key (in force at once: a majority of one seat) is \
             the one event past the history.\n"
        );
    } else {
        let _ = writeln!(out, "## catchup: an empty node catching up from a peer\n");
    }
    let _ = writeln!(out, "| measurement | value |");
    let _ = writeln!(out, "|---|---:|");
    let _ = writeln!(out, "| events the holder held | {} |", n(n_events as f64));
    let _ = writeln!(
        out,
        "| their encoded size (sum of the event bytes written to the store) | {} bytes ({:.1} per event) |",
        n(event_bytes as f64),
        event_bytes as f64 / n_events as f64
    );
    let _ = writeln!(
        out,
        "| building the holder's store offline (signing and `Store::append_with_document`): seconds | {build_secs:.1} |"
    );
    let _ = writeln!(
        out,
        "| holder's store file (built offline: events, indexes and document) | {:.1} MiB ({:.2} × the event bytes) |",
        store_file_bytes as f64 / (1 << 20) as f64,
        store_file_bytes as f64 / event_bytes as f64
    );
    let _ = writeln!(
        out,
        "| follower's store file after the catch-up (events, indexes, document, covered records) | {:.1} MiB \
         ({:.2} × the event bytes) |",
        follower_store_bytes as f64 / (1 << 20) as f64,
        follower_store_bytes as f64 / event_bytes as f64
    );
    let _ = writeln!(
        out,
        "| holder start-up with them: spawn until its socket answers | {:.2} s |",
        holder_startup.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| follower start-up: spawn until its socket answers | {:.0} ms |",
        startup.as_secs_f64() * 1e3
    );
    for (who, clean, killed, hwm) in &restarts {
        let _ = writeln!(
            out,
            "| {who} restart with every event, spawn until its socket answers: after a clean stop / after kill -9 | \
             {:.2} s / {:.2} s (VmHWM {hwm:.0} MiB) |",
            clean.as_secs_f64(),
            killed.as_secs_f64()
        );
    }
    let _ = writeln!(
        out,
        "| **seconds from spawning the follower until it holds every event** | **{:.2}** |",
        done.as_secs_f64()
    );
    let _ = writeln!(out, "| events/s, spawn to done | {} |", n(n_events as f64 / done.as_secs_f64()));
    if let Some((_, verify, _)) = &bench.verify {
        let _ = writeln!(
            out,
            "| ÷ `verify_strict`/s on 2 threads ({}, measured in this run) | {:.2} |",
            n(verify[1]),
            n_events as f64 / done.as_secs_f64() / verify[1]
        );
    }
    let at_done = stats_at_done["bytes_in"].as_f64().unwrap_or(0.0);
    let _ = writeln!(
        out,
        "| follower: message bytes in from the holder when it held every event | {} (÷ event bytes: {:.4}) |",
        n(at_done),
        at_done / event_bytes as f64
    );
    let _ = writeln!(
        out,
        "| follower: message bytes in from the holder once the holder stopped sending events \
         ({:.1} s later; `/v1/peers` `bytes_in`) | {} |",
        settled_after.as_secs_f64(),
        n(bytes_in)
    );
    let _ = writeln!(
        out,
        "| follower: `cairn_peer_bytes_in_total` (cross-check) | {} |",
        n(metrics.get("cairn_peer_bytes_in_total"))
    );
    let _ = writeln!(
        out,
        "| holder: message bytes out to the follower | {} |",
        n(holder_stats["bytes_out"].as_f64().unwrap_or(0.0))
    );
    let _ = writeln!(
        out,
        "| **ratio: bytes in (once the holder stopped sending events) ÷ the events' encoded size** | **{ratio:.4}** \
         (target ≤ 1.05 {}) |",
        met(ratio <= 1.05)
    );
    let _ = writeln!(
        out,
        "| overhead per event: (bytes in − event bytes) ÷ events | {:.1} bytes |",
        (bytes_in - event_bytes as f64) / n_events as f64
    );
    let _ = writeln!(
        out,
        "| follower: events in (sent twice: events in − events) / messages in / rate-limited | {} ({}) / {} / {} |",
        n(events_in),
        n(events_in - n_target as f64),
        n(messages_in),
        n(stats["events_rate_limited"].as_f64().unwrap_or(0.0))
    );
    let _ = writeln!(
        out,
        "| CPU seconds, spawn to done: follower / holder (holder includes its start-up) | {follower_cpu:.1} / {holder_cpu:.1} |"
    );
    let _ = writeln!(out, "| follower CPU by thread, cores busy | {} |", follower_split.describe());
    let _ = writeln!(out, "| follower CPU µs per event | {:.1} |", follower_cpu / n_events as f64 * 1e6);
    let mib = |m: Option<f64>| m.map_or("?".to_owned(), |m| format!("{m:.0} MiB"));
    let _ = writeln!(
        out,
        "| **peak memory (VmHWM): follower / holder** | **{:.0} MiB / {:.0} MiB** |",
        vm_peak.0, vm_peak.1
    );
    let _ =
        writeln!(out, "| resident at the end (VmRSS): follower / holder | {} / {} |", mib(rss.0), mib(rss.1));
    let _ = writeln!(
        out,
        "| check: the follower's store after it stopped: events (bytes) | {} ({}) {} |",
        n(stored_events as f64),
        n(stored_bytes as f64),
        if stored_events == n_target && stored_bytes == event_bytes { "match" } else { "DIFFER" }
    );
    let _ = writeln!(out, "| reopening that store (integrity check and load) | {reopen_secs:.2} s |");
    let _ = writeln!(
        out,
        "| slowest answer of the follower's `/v1/status` while it caught up | {:.0} ms |",
        status_max.as_secs_f64() * 1e3
    );
    let progress: Vec<String> =
        timeline.iter().map(|(t, have, mb)| format!("{t:.1} s: {} ({mb:.0} MB)", n(*have as f64))).collect();
    let _ = writeln!(
        out,
        "\nEvents the follower held while catching up (and message MB the holder had sent it): {}; \
         all at {:.2} s.",
        progress.join(", "),
        done.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "\nHow it was measured. A 2-node cluster (sync interval 1 s, default limits). The holder's \
         store is built before any node starts: `Node::prepare_writes`/`commit_writes` sign the \
         holder's own chain (each event's one dep is its predecessor; one `Put` of a {}-byte value \
         to one of 256 registers) in batches of 10 000, and `Store::append_with_document` writes \
         each batch in one commit, with the document's changes as a running node's commits carry \
         them, to the holder's `data_dir/cairn.redb` with the cluster id and the holder's key. \
         The holder starts and restores them; then the follower, with an empty store, starts; it has \
         the smaller key, so it dials at once. The clock runs from spawning the follower until its \
         `/v1/status` reports every event (polled every 50 ms). Bytes are the protocol's message \
         bytes as the node counts them (the frames' 4-byte length prefixes, QUIC and UDP headers \
         are not included; see `idle` for those). VmHWM is read from `/proc/PID/status` while \
         polling, so it covers start-up and catch-up. After the follower stopped, its store was \
         opened again by the bench to check that it holds every event.\n",
        load::VALUE_BYTES
    );
    Ok(())
}

// ---- idle -----------------------------------------------------------------------------------

/// Per directed pair (from node, to node): app bytes out, messages out, sessions completed.
type PairStats = std::collections::BTreeMap<(String, String), (f64, f64, f64)>;

async fn pair_stats(cluster: &Cluster) -> anyhow::Result<PairStats> {
    let mut stats = PairStats::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        for (peer, json) in cluster.peers(i).await? {
            let s = &json["stats"];
            let f = |k: &str| s[k].as_f64().unwrap_or(0.0);
            stats.insert(
                (node.name.clone(), peer),
                (f("bytes_out"), f("messages_out"), f("sessions_in_sync") + f("sessions_tips")),
            );
        }
    }
    Ok(stats)
}

// ---- removal --------------------------------------------------------------------------------

/// Removals measured (each on a fresh 5-node cluster), and writes timed for the baseline.
const REMOVAL_RUNS: usize = 5;
const REMOVAL_BASELINE_WRITES: usize = 20;

/// Polls `condition` every millisecond until it holds; the time it took.
async fn time_until<F, Fut>(what: &str, mut condition: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let start = Instant::now();
    loop {
        if condition().await? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("{what} did not happen within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The time from the approval that completes a removal's quorum (on a 5-node cluster: the
/// proposer's vote and two approvals) until every other node refuses the removed key (its peer
/// state `out_of_force` everywhere, and the removed node connected to nobody), against the time
/// a write takes to reach all five nodes, measured on the same cluster just before.
async fn removal_section(bench: &mut Bench, out: &mut String) -> anyhow::Result<()> {
    let mut refusals = Vec::new();
    let mut baselines = Vec::new();
    for run in 0..REMOVAL_RUNS {
        let mut cluster = Cluster::new(&bench.exe, bench.dir.join(format!("removal-{run}")), 5, BASE_CONFIG)?;
        cluster.start_all().await?;
        cluster.wait_converged(0, Duration::from_secs(60)).await?;
        let removed = 4;
        let removed_name = cluster.nodes[removed].name.clone();
        // The baseline: a write on node 0 until all five read it.
        for w in 0..REMOVAL_BASELINE_WRITES {
            let key = format!("baseline-{w}");
            let path = format!("/v1/registers/{key}");
            let start = Instant::now();
            cluster
                .client(0)
                .send_json(hyper::Method::PUT, &path, &serde_json::json!({"value": "v"}))
                .await?;
            let cl = &cluster;
            let path = &path;
            time_until("a write reaching every node", || async move {
                for i in 0..5 {
                    let register = cl.client(i).get_json(path).await?;
                    if register["value"] != "v" {
                        return Ok(false);
                    }
                }
                Ok(true)
            })
            .await?;
            baselines.push(start.elapsed().as_secs_f64());
        }
        // The removal: node 0 proposes (forced: the node is connected), 1 and 2 approve.
        let body = serde_json::json!({"action": "remove", "seat": removed_name, "force": true});
        let ack = cluster.client(0).send_json(hyper::Method::POST, "/v1/members/changes", &body).await?;
        let change =
            ack["change"].as_str().ok_or_else(|| anyhow::anyhow!("no change id in {ack}"))?.to_owned();
        for i in 1..3 {
            let cl = &cluster;
            let change = change.clone();
            time_until("the proposal reaching an approver", || {
                let change = change.clone();
                async move {
                    let members = cl.client(i).get_json("/v1/members").await?;
                    Ok(members["pending"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|c| c["change"] == change.as_str())))
                }
            })
            .await?;
        }
        cluster
            .client(1)
            .send_json(
                hyper::Method::POST,
                &format!("/v1/members/changes/{change}/approve?force=true"),
                &serde_json::json!(null),
            )
            .await?;
        // The clock starts as the approval that completes the quorum is asked for.
        let start = Instant::now();
        cluster
            .client(2)
            .send_json(
                hyper::Method::POST,
                &format!("/v1/members/changes/{change}/approve?force=true"),
                &serde_json::json!(null),
            )
            .await?;
        let cl = &cluster;
        let name = removed_name.clone();
        time_until("every node refusing the removed key", || {
            let name = name.clone();
            async move {
                for i in 0..4 {
                    let peers = cl.peers(i).await?;
                    if !peers.iter().any(|(n, p)| *n == name && p["state"] == "out_of_force") {
                        return Ok(false);
                    }
                }
                let status = cl.client(removed).get_json("/v1/status").await?;
                Ok(status["n_peers_connected"] == 0)
            }
        })
        .await?;
        refusals.push(start.elapsed().as_secs_f64());
        bench.collect_warnings("removal", &cluster);
        eprintln!("removal: run {run}: refused everywhere after {:.1} ms", refusals[run] * 1e3);
    }
    let refusal = median(refusals.clone());
    let baseline = median(baselines.clone());
    let _ = writeln!(out, "## removal: time until every node refuses a removed key (5 real nodes)\n");
    let _ = writeln!(out, "| measurement | value |");
    let _ = writeln!(out, "|---|---:|");
    let _ = writeln!(
        out,
        "| from asking for the approval that completes the quorum until the 4 others show the key `out_of_force` \
         and the removed node is connected to none: median of {REMOVAL_RUNS} (each run) | **{:.1} ms** ({}) |",
        refusal * 1e3,
        refusals.iter().map(|r| format!("{:.1}", r * 1e3)).collect::<Vec<_>>().join(", ")
    );
    let _ = writeln!(
        out,
        "| baseline: a write on one node until all five read it, median of {} | {:.1} ms |",
        baselines.len(),
        baseline * 1e3
    );
    let _ = writeln!(out, "| **ratio: refusal ÷ baseline** | **{:.2}** |", refusal / baseline);
    let _ = writeln!(
        out,
        "\nHow it was measured. Each run starts a fresh 5-node cluster on loopback (sync interval 1 s), times \
         {REMOVAL_BASELINE_WRITES} writes on node 0 until every node's API returns them (polled every millisecond), \
         then node 0 proposes removing node 4 (with `force`: node 4 is connected), nodes 1 and 2 approve (also forced; 3 of 5 \
         seats), and the clock runs from node 2's approval request until the other four nodes' `/v1/peers` show \
         node 4 `out_of_force` and node 4's `/v1/status` shows no peer connected.\n"
    );
    Ok(())
}

async fn idle_section(bench: &mut Bench, out: &mut String) -> anyhow::Result<()> {
    let sizes = bench.sizes;
    let interval = Duration::from_secs(1);
    let mut cluster = Cluster::new(&bench.exe, bench.dir.join("idle"), 3, BASE_CONFIG)?;
    // Every node reaches its peers through a counting relay, so the bench sees the QUIC
    // datagrams too.
    let counts: proxy::Counts = Default::default();
    let mut proxies = Vec::new();
    for node in &cluster.nodes {
        proxies.push(proxy::Proxy::start(node.address, counts.clone()).await?);
    }
    cluster.redirect_peers(&proxies.iter().map(|p| p.address).collect::<Vec<_>>())?;
    cluster.start_all().await?;
    // A little history, so the digests are not those of an empty set.
    let per_node = 10;
    for i in 0..cluster.nodes.len() {
        let conns = load::connect(&cluster.nodes[i].socket, 1).await?;
        load::run(conns, Instant::now(), Until::Count(per_node)).await?;
    }
    let total = (per_node * cluster.nodes.len()) as u64;
    cluster.wait_converged(total, Duration::from_secs(60)).await?;
    tokio::time::sleep(sizes.idle_settle).await;

    let snapshot =
        |counts: &proxy::Counts| counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let t0 = Instant::now();
    let app0 = pair_stats(&cluster).await?;
    let udp0 = snapshot(&counts);
    tokio::time::sleep(sizes.idle_window).await;
    let app1 = pair_stats(&cluster).await?;
    let udp1 = snapshot(&counts);
    let secs = t0.elapsed().as_secs_f64();
    bench.collect_warnings("idle", &cluster);
    drop(proxies);

    let rounds = secs / interval.as_secs_f64();
    let name_of = |addr: &std::net::SocketAddr| {
        cluster.nodes.iter().find(|n| n.address == *addr).map_or_else(|| addr.to_string(), |n| n.name.clone())
    };
    let _ = writeln!(out, "## idle: anti-entropy of an idle 3-node cluster\n");
    let _ = writeln!(
        out,
        "| from → to | app bytes/round | app messages/round | sessions/round | UDP payload bytes/round | datagrams/round | IP+UDP bytes/round (payload + 28 per datagram) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    let mut sums = [0.0f64; 6];
    let mut n_pairs = 0;
    for ((from, to), (b1, m1, s1)) in &app1 {
        let (b0, m0, s0) = app0.get(&(from.clone(), to.clone())).copied().unwrap_or_default();
        let udp_key = udp1.keys().find(|(a, b)| name_of(a) == *from && name_of(b) == *to).copied();
        let (d1, u1) = udp_key.and_then(|k| udp1.get(&k).copied()).unwrap_or_default();
        let (d0, u0) = udp_key.and_then(|k| udp0.get(&k).copied()).unwrap_or_default();
        let row = [
            (b1 - b0) / rounds,
            (m1 - m0) / rounds,
            (s1 - s0) / rounds,
            (u1 - u0) as f64 / rounds,
            (d1 - d0) as f64 / rounds,
            ((u1 - u0) as f64 + 28.0 * (d1 - d0) as f64) / rounds,
        ];
        for (sum, x) in sums.iter_mut().zip(row) {
            *sum += x;
        }
        n_pairs += 1;
        let _ = writeln!(
            out,
            "| {from} → {to} | {:.0} | {:.2} | {:.2} | {:.0} | {:.1} | {:.0} |",
            row[0], row[1], row[2], row[3], row[4], row[5]
        );
    }
    let avg: Vec<f64> = sums.iter().map(|s| s / f64::from(n_pairs.max(1))).collect();
    let _ = writeln!(
        out,
        "| **mean per peer** | **{:.0}** | {:.2} | {:.2} | **{:.0}** | {:.1} | {:.0} |",
        avg[0], avg[1], avg[2], avg[3], avg[4], avg[5]
    );
    let _ = writeln!(
        out,
        "\nHow it was measured. Three nodes (sync interval set to 1 s explicitly, default limits), each \
         reached by its peers through a counting UDP relay in the bench process (peers' configs name \
         the relay's address; the node still listens on its own). Each node wrote {per_node} events, \
         the cluster converged on {total} events and then settled for {:.0} s. Over a window of \
         {secs:.1} s ({rounds:.1} rounds of the sync interval) the bench read each node's \
         `/v1/peers` (`bytes_out`, `messages_out`, completed sessions) and the relay's counters at \
         both ends. Per round per peer = bytes ÷ (seconds ÷ interval), for each directed pair (each \
         node has 2 peers: 6 pairs). App bytes are the reconciliation messages as the node counts \
         them: no frame length prefix (4 bytes per message), no QUIC, no UDP. UDP payload bytes are \
         the QUIC packets (headers, AEAD tags, ACKs, keep-alives, and the frames with their length \
         prefixes); the last column adds 20 bytes of IPv4 and 8 of UDP header per datagram. A round \
         per pair holds both nodes' sessions with each other: the from-node's own session \
         (its summary out, the peer's answer in) and its answer to the peer's session.\n",
        sizes.idle_settle.as_secs_f64()
    );
    Ok(())
}

// ---- main -----------------------------------------------------------------------------------

/// Runs the sections; returns the report (also of the sections that ran when one failed) and
/// the first failure.
async fn run(args: &Args) -> (String, anyhow::Result<()>) {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name("cairnd"),
        Err(error) => return (String::new(), Err(error.into())),
    };
    if !exe.exists() {
        let error = anyhow::anyhow!(
            "{} not found: build it with `cargo build --release -p cairn-daemon`",
            exe.display()
        );
        return (String::new(), Err(error));
    }
    let dir = std::env::temp_dir().join(format!("cairn-daemon-bench-{}", std::process::id()));
    if let Err(error) = std::fs::create_dir_all(&dir) {
        return (String::new(), Err(anyhow::anyhow!("cannot create {}: {error}", dir.display())));
    }
    let mut sizes = Sizes::new(args.quick);
    sizes.replication = args.replication_events.unwrap_or(sizes.replication);
    sizes.catchup = args.catchup_events.unwrap_or(sizes.catchup);
    sizes.history = args.history_events.unwrap_or(sizes.history);
    let mut bench = Bench {
        exe,
        dir: dir.clone(),
        sizes,
        verify: None,
        warnings: Vec::new(),
        catchup_new_member: args.catchup_new_member,
    };
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let started = Instant::now();
    let load_before = load_average();
    let mut body = String::new();
    let mut result = Ok(());
    let mut machine = Vec::new();
    for section in &args.sections {
        eprintln!("== {section:?}");
        let (busy0, own0) = machine_cpu();
        let t0 = Instant::now();
        let outcome = match section {
            Section::Writes => writes_section(&mut bench, &mut body).await,
            Section::Replication => replication_section(&mut bench, &mut body).await,
            Section::Catchup => catchup_section(&mut bench, &mut body).await,
            Section::History => history::history_section(&mut bench, &mut body).await,
            Section::Idle => idle_section(&mut bench, &mut body).await,
            Section::Removal => removal_section(&mut bench, &mut body).await,
            Section::Scale => scale_section(&mut bench, &mut body).await,
        };
        let (busy1, own1) = machine_cpu();
        let wall = t0.elapsed().as_secs_f64();
        machine.push((
            *section,
            wall,
            (own1 - own0) / wall,
            ((busy1 - busy0) - (own1 - own0)).max(0.0) / wall,
        ));
        if let Err(error) = outcome {
            eprintln!("{section:?} failed: {error:#}");
            let _ = writeln!(body, "## {section:?}: FAILED\n\n```\n{error:#}\n```\n");
            if result.is_ok() {
                result = Err(error.context(format!("section {section:?}")));
            }
        }
    }
    if std::env::var_os("CAIRN_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }

    let mut out = String::new();
    let _ = writeln!(out, "# cairn-daemon-bench{}\n", if args.quick { " --quick" } else { "" });
    let _ = writeln!(
        out,
        "`available_parallelism()` = {cores}; release build: {}; cairnd: `{}`; load average (1, 5, 15 min) \
         {load_before} at the start, {} at the end; {:.0} s in all. Every node is a separate `cairnd` \
         process on loopback, sharing the {cores} cores with the bench process and each other.\n",
        !cfg!(debug_assertions),
        bench.exe.display(),
        load_average(),
        started.elapsed().as_secs_f64()
    );
    if let Some((_, v, runs)) = &bench.verify {
        let speedup = v[1] / v[0];
        let runs: Vec<String> = runs
            .iter()
            .map(|r| r.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" / "))
            .collect();
        let _ = writeln!(
            out,
            "Baseline `verify_strict`: {}/s on 1 thread (runs {}), {}/s on 2 (runs {}); speed-up {speedup:.2}×.{}\n",
            n(v[0]),
            runs[0],
            n(v[1]),
            runs[1],
            if speedup < 1.5 {
                " **Warning: under 1.5×, another process was using the second core; two-core figures are suspect.**"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(out, "Machine load per section (from `/proc/stat`; own = the bench and its nodes):\n");
    let _ = writeln!(out, "| section | wall s | own CPU (cores) | other processes (cores) |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for (section, wall, own, others) in &machine {
        let _ = writeln!(out, "| {section:?} | {wall:.1} | {own:.2} | {others:.2} |");
    }
    let _ = writeln!(out);
    out.push_str(&body);
    if !bench.warnings.is_empty() {
        let _ = writeln!(out, "## Daemon warnings during the run\n\n```");
        for line in bench.warnings.iter().take(40) {
            let _ = writeln!(out, "{line}");
        }
        if bench.warnings.len() > 40 {
            let _ = writeln!(out, "… {} more", bench.warnings.len() - 40);
        }
        let _ = writeln!(out, "```");
    }
    (out, result)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            if error.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("cairn-daemon-bench: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cairn-daemon-bench: cannot start tokio: {error}");
            return ExitCode::FAILURE;
        }
    };
    let (out, result) = runtime.block_on(run(&args));
    print!("{out}");
    if let Some(path) = &args.out
        && let Err(error) = std::fs::write(path, &out)
    {
        eprintln!("cairn-daemon-bench: writing {}: {error}", path.display());
        return ExitCode::FAILURE;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cairn-daemon-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// One node's traffic counters, summed over its peers (`/v1/peers` stats).
#[derive(Clone, Copy, Debug, Default)]
struct Traffic {
    messages_out: f64,
    bytes_out: f64,
    events_in: f64,
    events_out: f64,
}

impl Traffic {
    async fn of(cluster: &Cluster, i: usize) -> anyhow::Result<Self> {
        let mut sum = Self::default();
        for (_, peer) in cluster.peers(i).await? {
            let stats = &peer["stats"];
            let n = |field: &str| stats[field].as_f64().unwrap_or(0.0);
            sum.messages_out += n("messages_out");
            sum.bytes_out += n("bytes_out");
            sum.events_in += n("events_in");
            sum.events_out += n("events_out");
        }
        Ok(sum)
    }

    fn minus(self, before: Self) -> Self {
        Self {
            messages_out: self.messages_out - before.messages_out,
            bytes_out: self.bytes_out - before.bytes_out,
            events_in: self.events_in - before.events_in,
            events_out: self.events_out - before.events_out,
        }
    }
}

/// Each node's connections: `(connected peers, outbound choices, outbound choices connected,
/// peers with a known address)`.
async fn overlay_state(cluster: &Cluster, i: usize) -> anyhow::Result<(usize, usize, usize, usize)> {
    let peers = cluster.peers(i).await?;
    let connected = |p: &serde_json::Value| p["state"] == "connected";
    let outbound = |p: &serde_json::Value| p["outbound"] == true;
    Ok((
        peers.iter().filter(|(_, p)| connected(p)).count(),
        peers.iter().filter(|(_, p)| outbound(p)).count(),
        peers.iter().filter(|(_, p)| outbound(p) && connected(p)).count(),
        peers.iter().filter(|(_, p)| !p["address"].is_null()).count(),
    ))
}

/// `scale`: a cluster of `scale_nodes` real processes with the default overlay (outbound 6,
/// inbound cap 512: every member), each node configured with one seed (the next node), so that every other
/// address comes from the records. Measures what one node's writes cost every node.
async fn scale_section(bench: &mut Bench, out: &mut String) -> anyhow::Result<()> {
    let sizes = bench.sizes;
    let n = sizes.scale_nodes;
    let n_writes = sizes.scale_events;
    let mut cluster =
        Cluster::seeded(&bench.exe, bench.dir.join("scale"), n, BASE_CONFIG, |i| vec![(i + 1) % n])?;
    let overlay = cairn_protocol::OverlayConfig::default();
    let want_outbound = overlay.outbound.min(n - 1);
    let t_start = Instant::now();
    cluster.start_all().await?;
    let started_secs = t_start.elapsed().as_secs_f64();
    // Connected per the overlay: every node knows every address, has chosen its outbound
    // peers, and each of them is connected.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let mut ready = true;
        for i in 0..n {
            let (_, chosen, chosen_up, known) = overlay_state(&cluster, i).await?;
            if known < n - 1 || chosen != want_outbound || chosen_up != chosen {
                ready = false;
                break;
            }
        }
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!("the {n} nodes were not connected per the overlay within 180 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connected_secs = t_start.elapsed().as_secs_f64();
    let base = cluster.n_events(0).await?;
    // Idle traffic over a fixed window, to subtract: scaled below to the time the writes took.
    let idle_window = Duration::from_secs(5);
    let mut idle0 = Vec::with_capacity(n);
    for i in 0..n {
        idle0.push(Traffic::of(&cluster, i).await?);
    }
    let idle_t0 = Instant::now();
    tokio::time::sleep(idle_window).await;
    let mut idle = Vec::with_capacity(n);
    for (i, before) in idle0.iter().enumerate() {
        idle.push(Traffic::of(&cluster, i).await?.minus(*before));
    }
    let idle_secs = idle_t0.elapsed().as_secs_f64();

    // The writes: one client on node 0, one write at a time.
    let mut before = Vec::with_capacity(n);
    for i in 0..n {
        before.push(Traffic::of(&cluster, i).await?);
    }
    let t0 = Instant::now();
    let conns = load::connect(&cluster.nodes[0].socket, 1).await?;
    let written = load::run(conns, t0, Until::Count(n_writes)).await?;
    let acked = Instant::now();
    anyhow::ensure!(written.n_ok == n_writes, "{} of {n_writes} writes acknowledged", written.n_ok);
    let total = base + n_writes as u64;
    let converged = cluster.wait_all_hold(total, acked + Duration::from_secs(120)).await?;
    let write_secs = acked.duration_since(t0).as_secs_f64();
    let stream_secs = converged.duration_since(t0).as_secs_f64();
    let tail_ms = converged.duration_since(acked).as_secs_f64() * 1000.0;
    let mut after = Vec::with_capacity(n);
    for i in 0..n {
        after.push(Traffic::of(&cluster, i).await?);
    }
    // Single-write latency to the whole cluster: a write on node 0, until all hold it.
    let mut single_ms = Vec::new();
    for k in 0..5u64 {
        let conns = load::connect(&cluster.nodes[0].socket, 1).await?;
        let t = Instant::now();
        load::run(conns, t, Until::Count(1)).await?;
        let done = cluster.wait_all_hold(total + k + 1, Instant::now() + Duration::from_secs(60)).await?;
        single_ms.push(done.duration_since(t).as_secs_f64() * 1000.0);
    }
    let mut connections = Vec::with_capacity(n);
    let mut inbound_busy = 0.0;
    let mut dials_busy = 0.0;
    for i in 0..n {
        connections.push(overlay_state(&cluster, i).await?.0);
        let metrics = cluster.metrics(i).await?;
        inbound_busy += metrics.get("cairn_inbound_busy_total");
        dials_busy += metrics.get("cairn_dials_busy_total");
    }
    bench.collect_warnings("scale", &cluster);

    // Per node and event, the idle rate over the same time subtracted.
    let w = n_writes as f64;
    let window = stream_secs;
    let raw: Vec<Traffic> = (0..n).map(|i| after[i].minus(before[i])).collect();
    let per_event: Vec<Traffic> = (0..n)
        .map(|i| {
            let d = raw[i];
            let scale = window / idle_secs;
            Traffic {
                messages_out: (d.messages_out - idle[i].messages_out * scale).max(0.0) / w,
                bytes_out: (d.bytes_out - idle[i].bytes_out * scale).max(0.0) / w,
                events_in: d.events_in / w,
                events_out: d.events_out / w,
            }
        })
        .collect();
    let stat = |xs: Vec<f64>| -> (f64, f64, f64) {
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let max = xs.iter().copied().fold(f64::MIN, f64::max);
        (mean, median(xs), max)
    };
    let others = 1..n;
    let row = |name: &str, xs: Vec<f64>, out: &mut String| {
        let (mean, med, max) = stat(xs);
        let _ = writeln!(out, "| {name} | {mean:.2} | {med:.2} | {max:.2} |");
    };
    let _ = writeln!(
        out,
        "## scale: {n} nodes, default overlay (outbound {}, inbound cap {}), one seed each\n",
        overlay.outbound, overlay.inbound_max
    );
    let _ =
        writeln!(out, "| per node and event written (nodes other than the writer) | mean | median | max |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    row(
        "copies of each event received (`events_in`)",
        others.clone().map(|i| per_event[i].events_in).collect(),
        out,
    );
    row("events sent (`events_out`)", others.clone().map(|i| per_event[i].events_out).collect(), out);
    row(
        "messages sent, idle rate subtracted",
        others.clone().map(|i| per_event[i].messages_out).collect(),
        out,
    );
    row("messages sent, as counted", others.clone().map(|i| raw[i].messages_out / w).collect(), out);
    row("bytes sent, idle rate subtracted", others.clone().map(|i| per_event[i].bytes_out).collect(), out);
    row("bytes sent, as counted", others.clone().map(|i| raw[i].bytes_out / w).collect(), out);
    let (c_mean, _, c_max) = stat(connections.iter().map(|&c| c as f64).collect());
    let _ = writeln!(
        out,
        "\n| the writer (node 0) per event | messages sent {:.2} (as counted {:.2}) | bytes sent {:.0} | events sent {:.2} |",
        per_event[0].messages_out,
        raw[0].messages_out / w,
        per_event[0].bytes_out,
        per_event[0].events_out
    );
    let _ = writeln!(out, "|---|---|---|---|\n");
    let (s_mean, s_med, s_max) = stat(single_ms);
    let _ = writeln!(
        out,
        "Connections per node: mean {c_mean:.1}, max {c_max:.0} (cap {} = outbound + inbound_max). \
         Dials refused as busy: {dials_busy:.0} (nodes refusing: {inbound_busy:.0} inbound). \
         {n_writes} writes, one at a time on node 0: acknowledged in {write_secs:.2} s, on every node \
         {stream_secs:.2} s after the first ({tail_ms:.0} ms after the last acknowledgement). One write \
         to all {n} nodes, 5 times: mean {s_mean:.0} ms, median {s_med:.0} ms, max {s_max:.0} ms \
         (each poll reads all {n} nodes' status in turn).",
        overlay.outbound + overlay.inbound_max,
    );
    let _ = writeln!(
        out,
        "\nHow it was measured. {n} release `cairnd` processes on loopback, default limits and overlay, \
         sync interval 1 s; node i lists only node i+1 as a peer and learns every other address from \
         the signed address records. Started in {started_secs:.1} s; every node knew all {} addresses \
         and had its {want_outbound} outbound peers connected {connected_secs:.1} s after the start. \
         Counters are the sums of `/v1/peers` stats over each node's peers (messages and bytes as \
         framed by the protocol, before QUIC), read before the writes and once every node held them \
         all. \"Idle rate subtracted\" takes off each node's own traffic of an idle {idle_secs:.1} s \
         window just before, scaled to the {window:.2} s of the writes (anti-entropy sessions with \
         each connected peer every second).\n",
        n - 1
    );
    Ok(())
}
