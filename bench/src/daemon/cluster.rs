//! Local clusters of real `cairnd` processes for `cairn-daemon-bench`, and what the bench reads
//! from them: the API (a persistent HTTP/1.1 connection per writer, `client.rs` for the rest)
//! and `/proc` (CPU time, peak memory).

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use cairn_crypto::{PublicKey, SecretKey};
use cairn_daemon::client::Client;
use cairn_daemon::demo::{LocalNode, every_other, spawn, stop, write_cluster_with_seeds};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;

/// How long a node may take to answer on its socket after it was spawned.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a node may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A local cluster in its own directory: nodes that can be started and stopped one by one.
/// Dropping it stops every node and removes the directory.
pub(crate) struct Cluster {
    exe: PathBuf,
    dir: PathBuf,
    pub(crate) nodes: Vec<LocalNode>,
    pub(crate) keys: Vec<PublicKey>,
    children: Vec<Option<Child>>,
}

impl Cluster {
    /// Writes a cluster of `n` nodes into a fresh directory `dir` (see `demo::write_cluster`).
    pub(crate) fn new(exe: &Path, dir: PathBuf, n: usize, extra_config: &str) -> anyhow::Result<Self> {
        Self::seeded(exe, dir, n, extra_config, every_other(n))
    }

    /// [`Cluster::new`], with node `i` configured with the nodes `seeds(i)` only as peers
    /// (`demo::write_cluster_with_seeds`): it learns the others from their address records.
    pub(crate) fn seeded(
        exe: &Path,
        dir: PathBuf,
        n: usize,
        extra_config: &str,
        seeds: impl Fn(usize) -> Vec<usize>,
    ) -> anyhow::Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let nodes = write_cluster_with_seeds(&dir, n, extra_config, seeds)?;
        let keys = nodes
            .iter()
            .map(|node| Ok(SecretKey::read_file(&node.key_file)?.public()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let children = nodes.iter().map(|_| None).collect();
        Ok(Self { exe: exe.to_owned(), dir, nodes, keys, children })
    }

    /// Node indices ordered by key: the transport's dialer is the smaller key.
    pub(crate) fn by_key(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        order.sort_by_key(|&i| self.keys[i]);
        order
    }

    /// Spawns node `i`.
    pub(crate) fn start(&mut self, i: usize) -> anyhow::Result<()> {
        assert!(self.children[i].is_none(), "node {i} is already running");
        self.children[i] = Some(spawn(&self.exe, &self.nodes[i])?);
        Ok(())
    }

    /// Waits until node `i` answers `GET /v1/status`; returns the time since `since`.
    pub(crate) async fn wait_ready(&mut self, i: usize, since: Instant) -> anyhow::Result<Duration> {
        let client = self.client(i);
        loop {
            if client.get_json("/v1/status").await.is_ok() {
                return Ok(since.elapsed());
            }
            if let Some(child) = self.children[i].as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.children[i] = None;
                bail!("node {} exited ({status}) while starting:\n{}", self.nodes[i].name, self.log_tail(i));
            }
            if since.elapsed() > START_TIMEOUT {
                bail!(
                    "node {} did not answer within {START_TIMEOUT:?}:\n{}",
                    self.nodes[i].name,
                    self.log_tail(i)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts every node and waits until all of them answer.
    pub(crate) async fn start_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            self.start(i)?;
        }
        let since = Instant::now();
        for i in 0..self.nodes.len() {
            self.wait_ready(i, since).await?;
        }
        Ok(())
    }

    /// Stops node `i` (SIGTERM, then kill); fails if it did not exit cleanly.
    pub(crate) fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.children[i].take() {
            let status = stop(&mut child, STOP_TIMEOUT)?;
            if !status.success() {
                bail!("node {} stopped with {status}:\n{}", self.nodes[i].name, self.log_tail(i));
            }
        }
        Ok(())
    }

    /// Kills node `i` with SIGKILL (a crash: nothing is drained or closed) and reaps it.
    pub(crate) fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.children[i].take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// The process id of node `i`, if it runs.
    pub(crate) fn pid(&self, i: usize) -> Option<u32> {
        self.children[i].as_ref().map(Child::id)
    }

    /// A `client.rs` client of node `i` (one connection per request).
    pub(crate) fn client(&self, i: usize) -> Client {
        Client::new(&self.nodes[i].socket)
    }

    /// `GET /v1/status` of node `i`.
    pub(crate) async fn status(&self, i: usize) -> anyhow::Result<serde_json::Value> {
        Ok(self.client(i).get_json("/v1/status").await?)
    }

    /// `n_events` of node `i`.
    pub(crate) async fn n_events(&self, i: usize) -> anyhow::Result<u64> {
        let status = self.status(i).await?;
        status["n_events"].as_u64().context("status without n_events")
    }

    /// `GET /v1/peers` of node `i`: `(peer name, peer JSON)` for each other member.
    pub(crate) async fn peers(&self, i: usize) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
        let peers = self.client(i).get_json("/v1/peers").await?;
        let list = peers["peers"].as_array().context("peers without a list")?;
        Ok(list.iter().map(|p| (p["name"].as_str().unwrap_or_default().to_owned(), p.clone())).collect())
    }

    /// The stats of node `i`'s peer `name` (from `/v1/peers`).
    pub(crate) async fn peer_stats(&self, i: usize, name: &str) -> anyhow::Result<serde_json::Value> {
        let peers = self.peers(i).await?;
        let (_, peer) =
            peers.into_iter().find(|(n, _)| n == name).with_context(|| format!("no peer {name}"))?;
        Ok(peer["stats"].clone())
    }

    /// The counters of node `i`'s `/v1/metrics` (name without labels → value; labelled
    /// series are summed).
    pub(crate) async fn metrics(&self, i: usize) -> anyhow::Result<Metrics> {
        let text = self.client(i).get_text("/v1/metrics").await?;
        Ok(Metrics::parse(&text))
    }

    /// Waits until every node holds at least `n` events; returns when the last one did. Only
    /// the nodes still behind are polled again, so that the time is close to the last one's.
    pub(crate) async fn wait_all_hold(&self, n: u64, deadline: Instant) -> anyhow::Result<Instant> {
        let mut behind: Vec<usize> = (0..self.nodes.len()).collect();
        while !behind.is_empty() {
            let mut still = Vec::new();
            for &i in &behind {
                if self.n_events(i).await? < n {
                    still.push(i);
                }
            }
            behind = still;
            if behind.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                bail!("nodes {behind:?} do not hold {n} events by the deadline");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Instant::now())
    }

    /// Waits until every node holds `n` events and, in a cluster small enough to be a full
    /// mesh under the default overlay (at most `outbound + 1` nodes), is connected to all its
    /// peers. A larger cluster never is (each node dials `outbound` peers and drops the rest);
    /// `scale` waits for the overlay's own condition instead.
    pub(crate) async fn wait_converged(&self, n: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        self.wait_all_hold(n, deadline).await?;
        if self.nodes.len() > cairn_protocol::OverlayConfig::default().outbound + 1 {
            return Ok(());
        }
        loop {
            let mut connected = true;
            for i in 0..self.nodes.len() {
                let status = self.status(i).await?;
                if status["n_peers_connected"] != status["n_peers"] {
                    connected = false;
                }
            }
            if connected {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the cluster held {n} events but was not fully connected within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of node `i`'s log.
    pub(crate) fn log_tail(&self, i: usize) -> String {
        let log = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Warnings and errors in node `i`'s log (the bench runs nodes at `warn`).
    pub(crate) fn log_warnings(&self, i: usize) -> Vec<String> {
        let log = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).map(str::to_owned).collect()
    }

    /// Rewrites each node's config so that it reaches peer `j` at `addresses[j]` instead (for
    /// the counting proxies). Node `j` still listens on its own address, and advertises
    /// `addresses[j]` in its address record, so that no peer learns the direct way.
    pub(crate) fn redirect_peers(&self, addresses: &[std::net::SocketAddr]) -> anyhow::Result<()> {
        for (node, own) in self.nodes.iter().zip(addresses) {
            let mut text = format!("advertise = \"{own}\"\n{}", std::fs::read_to_string(&node.config)?);
            for (other, to) in self.nodes.iter().zip(addresses) {
                if other.config != node.config {
                    let from = format!("address = \"{}\"", other.address);
                    anyhow::ensure!(text.contains(&from), "the config of {} does not name {from}", node.name);
                    text = text.replace(&from, &format!("address = \"{to}\""));
                }
            }
            std::fs::write(&node.config, text)?;
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().filter_map(Option::as_mut) {
            let _ = stop(child, STOP_TIMEOUT);
        }
        if std::env::var_os("CAIRN_BENCH_KEEP").is_some() {
            eprintln!("kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Counters from `/v1/metrics`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Metrics(std::collections::BTreeMap<String, f64>);

impl Metrics {
    fn parse(text: &str) -> Self {
        let mut map = std::collections::BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let name = series.split('{').next().unwrap_or(series);
            if let Ok(value) = value.parse::<f64>() {
                *map.entry(name.to_owned()).or_insert(0.0) += value;
            }
        }
        Self(map)
    }

    /// A counter's value (0 when absent).
    pub(crate) fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0)
    }
}

/// One persistent HTTP/1.1 connection to a node's API socket, for the write load.
pub(crate) struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    pub(crate) async fn connect(socket: &Path) -> anyhow::Result<Self> {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .with_context(|| format!("cannot connect to {}", socket.display()))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { sender })
    }

    /// `PUT path` with a JSON body; returns the status (the answer is read in full).
    pub(crate) async fn put(&mut self, path: &str, body: Bytes) -> anyhow::Result<StatusCode> {
        self.request(Method::PUT, path, body).await
    }

    /// `POST path` with a JSON body; returns the status (the answer is read in full).
    pub(crate) async fn post(&mut self, path: &str, body: Bytes) -> anyhow::Result<StatusCode> {
        self.request(Method::POST, path, body).await
    }

    /// `GET path`; returns the status (the answer is read in full).
    pub(crate) async fn get(&mut self, path: &str) -> anyhow::Result<StatusCode> {
        self.request(Method::GET, path, Bytes::new()).await
    }

    async fn request(&mut self, method: Method, path: &str, body: Bytes) -> anyhow::Result<StatusCode> {
        self.sender.ready().await?;
        let mut request = Request::builder().method(method).uri(path).header(header::HOST, "cairnd");
        if !body.is_empty() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(body))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        Ok(status)
    }
}

/// CPU seconds (user + system, all threads) a process has used, from `/proc/PID/stat`.
pub(crate) fn cpu_seconds(pid: Option<u32>) -> f64 {
    stat_cpu_seconds(&pid.map_or_else(|| "/proc/self/stat".to_owned(), |p| format!("/proc/{p}/stat")))
}

/// CPU seconds (user + system) from a `/proc` `stat` file: a process's or one thread's
/// (`/proc/thread-self/stat`).
pub(crate) fn stat_cpu_seconds(path: &str) -> f64 {
    let Ok(text) = std::fs::read_to_string(path) else { return 0.0 };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some((_, rest)) = text.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here (0-based, after
    // the state at index 0). Clock ticks of 1/100 s (USER_HZ on Linux).
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of each live thread of `pid`: thread id → (thread name, seconds).
pub(crate) fn thread_cpu(pid: u32) -> std::collections::BTreeMap<u32, (String, f64)> {
    let mut threads = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return threads };
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else { continue };
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let (Some(open), Some((_, rest))) = (text.find('('), text.rsplit_once(')')) else { continue };
        let name = text[open + 1..text.len() - rest.len() - 1].to_owned();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        threads.insert(tid, (name, (ticks(11) + ticks(12)) / 100.0));
    }
    threads
}

/// A process's CPU by role over a window: the service loop (the main thread, which runs
/// `daemon::run` in `block_on`), the tokio workers (API, transport), the store's writer
/// thread, and threads that ended within the window (the adapter's scoped verify threads).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CpuSplit {
    pub(crate) total: f64,
    pub(crate) service: f64,
    pub(crate) workers: f64,
    pub(crate) store: f64,
    pub(crate) ended: f64,
}

/// A snapshot for [`CpuSplit::between`].
#[derive(Clone, Debug, Default)]
pub(crate) struct CpuSnapshot {
    pid: u32,
    total: f64,
    threads: std::collections::BTreeMap<u32, (String, f64)>,
}

impl CpuSnapshot {
    pub(crate) fn take(pid: Option<u32>) -> Self {
        let Some(pid) = pid else { return Self::default() };
        Self { pid, total: cpu_seconds(Some(pid)), threads: thread_cpu(pid) }
    }
}

impl CpuSplit {
    /// CPU seconds between two snapshots of one process, divided by `secs` (cores busy).
    pub(crate) fn between(a: &CpuSnapshot, b: &CpuSnapshot, secs: f64) -> Self {
        let mut split = Self { total: (b.total - a.total) / secs, ..Self::default() };
        let mut live = 0.0;
        for (tid, (name, t1)) in &b.threads {
            let t0 = a.threads.get(tid).map_or(0.0, |x| x.1);
            let d = (t1 - t0) / secs;
            live += d;
            if *tid == b.pid {
                split.service += d;
            } else if name.starts_with("cairn-store") {
                split.store += d;
            } else if name.starts_with("tokio") {
                split.workers += d;
            } else {
                split.ended += d;
            }
        }
        split.ended += (split.total - live).max(0.0);
        split
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "{:.2} = service loop {:.2} + tokio workers {:.2} + store {:.2} + other/ended threads {:.2}",
            self.total, self.service, self.workers, self.store, self.ended
        )
    }
}

/// Busy and own CPU seconds of the machine so far, to tell how much other processes used: busy
/// from `/proc/stat` (all CPUs, idle and iowait excluded), own = this process plus its
/// reaped children (the nodes, once stopped).
pub(crate) fn machine_cpu() -> (f64, f64) {
    let busy = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| {
            let line = t.lines().next()?.to_owned();
            let f: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal
            Some((f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7)?) / 100.0)
        })
        .unwrap_or(0.0);
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| {
            let (_, rest) = t.rsplit_once(')')?;
            let f: Vec<f64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            // After the state (not a number, so skipped): ppid … utime at 10, stime 11,
            // cutime 12, cstime 13 in this filtered list.
            Some((f.get(10)? + f.get(11)? + f.get(12)? + f.get(13)?) / 100.0)
        })
        .unwrap_or(0.0);
    (busy, own)
}

/// A `VmHWM`/`VmRSS`-style line of `/proc/PID/status`, in MiB.
pub(crate) fn proc_status_mib(pid: u32, field: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The 1-minute load average.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().take(3).map(str::to_owned).reduce(|a, b| format!("{a} {b}")))
        .unwrap_or_else(|| "?".to_owned())
}
