//! `cairn-adversary bench`: honest write throughput and latency while the orphan flood, the
//! replay flood and the connection flood run, as ratios to the same figures without attack
//! measured in the same run, and the attacked node's peak resident memory during the orphan
//! flood against its configured buffer bound. Figures, not assertions; the scenarios' tests
//! assert behaviour.
//!
//! Everything shares one machine: three `cairnd` processes, the honest clients and the
//! adversary. What the adversary prepares (signing the orphans, learning the events to replay)
//! happens before the measured window; sending them (and the TLS handshakes of the connection
//! flood) happens inside it, on the same cores, so the ratios include that CPU too.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_daemon::client::path_segment;
use serde_json::json;

use super::cluster::AttackCluster;
use super::scenarios::{self, FLOOD_CONNECTIONS};
use super::{Adversary, Target};

/// Concurrent honest clients writing to the attacked node.
pub const BENCH_CLIENTS: usize = 16;
/// The measured window of each run without an open-ended attack.
pub const BENCH_WINDOW: Duration = Duration::from_secs(10);
/// The share of honest writes/s kept during the orphan flood that issue 14 asks for.
const KEPT_DURING_ORPHANS_MIN: f64 = 0.7;
/// The share kept during the replay and the connection floods.
const KEPT_DURING_REPLAYS_AND_CONNECTIONS_MIN: f64 = 0.8;
/// The honest nodes' causal-buffer bounds during the bench (the defaults).
const BUFFER_PER_PEER_MAX: u64 = 16 * 1024 * 1024;
const BUFFER_TOTAL_MAX: u64 = 64 * 1024 * 1024;

/// Honest writes over a window.
#[derive(Clone, Debug)]
pub struct Load {
    /// Writes acknowledged.
    pub writes: usize,
    /// Writes that failed.
    pub failed: usize,
    /// Window length, seconds.
    pub secs: f64,
    /// Latency of each acknowledged write, sorted.
    pub latencies: Vec<Duration>,
    /// Cores busy in this process (the clients and the adversary) over the window.
    pub bench_cores: f64,
    /// Cores busy in the three honest nodes over the window.
    pub nodes_cores: f64,
}

impl Load {
    /// Writes per second.
    pub fn per_sec(&self) -> f64 {
        self.writes as f64 / self.secs
    }

    /// The `q`-quantile latency in milliseconds (nearest rank).
    pub fn latency_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[rank - 1].as_secs_f64() * 1e3
    }
}

/// CPU seconds (user + system) of process `pid` (`None`: this process) from `/proc/PID/stat`.
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = pid.map_or_else(|| "/proc/self/stat".to_owned(), |p| format!("/proc/{p}/stat"));
    let Ok(text) = std::fs::read_to_string(path) else { return 0.0 };
    // After the command name (in parentheses, may hold spaces): utime and stime are the 12th
    // and 13th fields, in clock ticks of 1/100 s.
    let Some((_, rest)) = text.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of (this process: the clients and the adversary; the honest nodes).
fn cpu_split(cluster: &AttackCluster) -> (f64, f64) {
    (cpu_seconds(None), cluster.pids().into_iter().map(|p| cpu_seconds(Some(p))).sum())
}

/// [`BENCH_CLIENTS`] clients writing to node `i` until `stop` is set.
async fn write_until(cluster: &AttackCluster, i: usize, stop: Arc<AtomicBool>) -> Load {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..BENCH_CLIENTS {
        let client = cluster.client(i);
        let stop = stop.clone();
        tasks.spawn(async move {
            let (mut latencies, mut failed) = (Vec::new(), 0usize);
            for n in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("bench/{c}");
                let path = format!("/v1/registers/{}", path_segment(&key));
                let sent = Instant::now();
                match client.send_json(hyper::Method::PUT, &path, &json!({ "value": n.to_string() })).await {
                    Ok(_) => latencies.push(sent.elapsed()),
                    Err(_) => failed += 1,
                }
            }
            (latencies, failed)
        });
    }
    let (mut latencies, mut failed) = (Vec::new(), 0);
    while let Some(Ok((l, f))) = tasks.join_next().await {
        latencies.extend(l);
        failed += f;
    }
    latencies.sort_unstable();
    Load {
        writes: latencies.len(),
        failed,
        secs: started.elapsed().as_secs_f64(),
        latencies,
        bench_cores: 0.0,
        nodes_cores: 0.0,
    }
}

/// Runs `attack` while the honest clients write to node 0; the window ends when the attack
/// does (or after [`BENCH_WINDOW`] for attacks that loop until told to stop).
async fn under<F, Fut>(cluster: &AttackCluster, attack: F) -> anyhow::Result<Load>
where
    F: FnOnce(Arc<AtomicBool>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let writer = write_until(cluster, 0, stop.clone());
    let attack = {
        let stop = stop.clone();
        async move {
            let result = attack(stop.clone()).await;
            stop.store(true, Ordering::Relaxed);
            result
        }
    };
    let (bench0, nodes0) = cpu_split(cluster);
    let (mut load, result) = tokio::join!(writer, attack);
    result?;
    let (bench1, nodes1) = cpu_split(cluster);
    load.bench_cores = (bench1 - bench0) / load.secs;
    load.nodes_cores = (nodes1 - nodes0) / load.secs;
    Ok(load)
}

/// Sets `stop` after [`BENCH_WINDOW`].
async fn window(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    tokio::time::sleep(BENCH_WINDOW).await;
    stop.store(true, Ordering::Relaxed);
    Ok(())
}

/// Runs the bench with `orphans` orphans; appends the report (Markdown) to `out`.
pub async fn run(out: &mut String, orphans: u64) -> anyhow::Result<()> {
    let limits = format!(
        "[limits]\nbuffer_bytes_per_peer_max = {BUFFER_PER_PEER_MAX}\nbuffer_bytes_total_max = {BUFFER_TOTAL_MAX}\n"
    );
    let mut cluster = AttackCluster::write(3, &limits)?;
    cluster.start()?;
    cluster.wait_connected(Duration::from_secs(60)).await?;
    for i in 0..3 {
        for k in 0..10 {
            let path = format!("/v1/registers/seed-{i}-{k}");
            cluster.client(i).send_json(hyper::Method::PUT, &path, &json!({ "value": "seed" })).await?;
        }
    }
    let targets = cluster.targets();
    let target: Target = targets[0].clone();
    let mut adversary = Adversary::new(
        cairn_crypto::SecretKey::from_seed(&cluster.mallory.seed_bytes()),
        cluster.genesis.clone(),
        targets,
    );

    eprintln!("bench: baseline, {BENCH_CLIENTS} clients for {BENCH_WINDOW:?}");
    let base_orphans = under(&cluster, window).await?;
    let rss_before = cluster.peak_rss_kib(0).context("alice's VmHWM")?;

    eprintln!("bench: signing {orphans} orphans (outside the window)");
    let mut link = scenarios::learned_link(&mut adversary, 0).await?;
    let replays = scenarios::learned_events(&adversary);
    let signed = scenarios::sign_orphans(&adversary.key, orphans).await?;
    eprintln!("bench: orphan flood");
    let orphan_started = Instant::now();
    // One connection for both floods: a second one from the same member would replace it.
    let during_orphans = under(&cluster, |_| async {
        scenarios::send_orphans(&mut link, &signed).await?;
        link.flush().await
    })
    .await?;
    let orphan_secs = orphan_started.elapsed().as_secs_f64();
    drop(signed);
    let rss_orphans = cluster.peak_rss_kib(0).context("alice's VmHWM")?;
    let status = cluster.status(0).await?;

    eprintln!("bench: baseline before the replay flood");
    let base_replays = under(&cluster, window).await?;
    eprintln!("bench: replay flood");
    let mut replayed = 0usize;
    let during_replays = under(&cluster, |stop| {
        let link = &mut link;
        let replayed = &mut replayed;
        async move {
            let deadline = Instant::now() + BENCH_WINDOW;
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                scenarios::send_replays(link, &replays, replays.len().max(1) * 10).await?;
                *replayed += replays.len() * 10;
            }
            link.flush().await
        }
    })
    .await?;
    link.close().await;

    eprintln!("bench: baseline before the connection flood");
    let base_connections = under(&cluster, window).await?;
    eprintln!("bench: connection flood");
    let mut rounds = 0usize;
    let member = cairn_crypto::SecretKey::from_seed(&adversary.key.seed_bytes());
    let cluster_id = adversary.cluster_id();
    let during_connections = under(&cluster, |_| {
        let rounds = &mut rounds;
        let target = &target;
        let member = &member;
        async move {
            let deadline = Instant::now() + BENCH_WINDOW;
            while Instant::now() < deadline {
                scenarios::flood_connections(member, target, cluster_id).await?;
                *rounds += 1;
            }
            Ok(())
        }
    })
    .await?;

    let _ = writeln!(out, "## Honest writes under attack\n");
    let _ = writeln!(
        out,
        "{BENCH_CLIENTS} honest clients write to alice (each `PUT` waits for its fsync'd acknowledgement) while \
         the adversary attacks alice; three `cairnd` processes (release), the clients and the adversary share the \
         machine's {} cores. Each attack is compared with a run without attack just before it.\n",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let _ = writeln!(
        out,
        "| run | window s | writes/s | p50 ms | p99 ms | failed | cores: honest nodes / clients + adversary | \
         ÷ baseline writes/s | ÷ baseline p99 | target |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|---:|---:|---|");
    // One row; with a baseline, the ratios to it and the verdict.
    let row = |out: &mut String, name: &str, load: &Load, base: Option<(&Load, f64)>| {
        let (ratio, p99, verdict) = match base {
            None => (String::new(), String::new(), String::new()),
            Some((base, target)) => {
                let ratio = load.per_sec() / base.per_sec();
                (
                    format!("**{ratio:.2}**"),
                    format!("{:.2}", load.latency_ms(0.99) / base.latency_ms(0.99)),
                    format!("≥ {target} {}", if ratio >= target { "met" } else { "MISSED" }),
                )
            }
        };
        let _ = writeln!(
            out,
            "| {name} | {:.1} | {:.0} | {:.2} | {:.2} | {} | {:.2} / {:.2} | {ratio} | {p99} | {verdict} |",
            load.secs,
            load.per_sec(),
            load.latency_ms(0.5),
            load.latency_ms(0.99),
            load.failed,
            load.nodes_cores,
            load.bench_cores,
        );
    };
    row(out, "baseline", &base_orphans, None);
    row(
        out,
        &format!("orphan flood ({orphans} validly signed orphans)"),
        &during_orphans,
        Some((&base_orphans, KEPT_DURING_ORPHANS_MIN)),
    );
    row(out, "baseline", &base_replays, None);
    row(
        out,
        &format!("replay flood ({replayed} old valid events)"),
        &during_replays,
        Some((&base_replays, KEPT_DURING_REPLAYS_AND_CONNECTIONS_MIN)),
    );
    row(out, "baseline", &base_connections, None);
    row(
        out,
        &format!("connection flood ({rounds} rounds of {FLOOD_CONNECTIONS} attempts)"),
        &during_connections,
        Some((&base_connections, KEPT_DURING_REPLAYS_AND_CONNECTIONS_MIN)),
    );
    let _ = writeln!(
        out,
        "\nThe orphan flood's window is the time to send all orphans and for alice to handle them \
         ({orphan_secs:.1} s); the other windows are {:.0} s.\n",
        BENCH_WINDOW.as_secs_f64()
    );
    let _ = writeln!(out, "| alice during the orphan flood | value |");
    let _ = writeln!(out, "|---|---:|");
    let _ = writeln!(out, "| peak RSS (VmHWM) before the flood | {} MiB |", rss_before / 1024);
    let _ = writeln!(out, "| peak RSS (VmHWM) after it | {} MiB |", rss_orphans / 1024);
    let _ = writeln!(out, "| growth | {} MiB |", rss_orphans.saturating_sub(rss_before) / 1024);
    let _ = writeln!(
        out,
        "| configured causal buffer: per peer / in total | {} / {} MiB |",
        BUFFER_PER_PEER_MAX >> 20,
        BUFFER_TOTAL_MAX >> 20
    );
    let _ = writeln!(
        out,
        "| buffer at the end: events / bytes | {} / {} |",
        status["buffer_events"], status["buffer_bytes"]
    );
    let _ =
        writeln!(out, "| events alice holds at the end (no orphan among them) | {} |", status["n_events"]);
    Ok(())
}
