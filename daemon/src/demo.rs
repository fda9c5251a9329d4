//! `cairnd demo`: a real local cluster of separate `cairnd` processes on loopback, with fresh
//! keys in a temporary directory, until Ctrl-C; then the nodes stop and the directory goes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use cairn_crypto::SecretKey;
use cairn_protocol::{Genesis, Member};

use crate::config::render_genesis;

/// How long the nodes may take to open their sockets.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the nodes may take to stop after SIGTERM before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Names for the demo's nodes; past these, `node17`, `node18`, ….
const NAMES: [&str; 16] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "niaj",
    "olivia", "peggy", "rupert", "sybil",
];
/// Most nodes of a local cluster (the benchmarks run 30).
pub const LOCAL_NODES_MAX: usize = 64;

/// The name of a local cluster's node `i`.
pub fn node_name(i: usize) -> String {
    NAMES.get(i).map_or_else(|| format!("node{}", i + 1), |name| (*name).to_owned())
}

/// Short timings for local test clusters, so that sync rounds and reconnects take a fraction of
/// a second. Goes after a config's top-level keys (it ends with the `[timing]` table).
pub const FAST_TIMING: &str = "log_level = \"info\"
[timing]
sync_interval = \"200ms\"
want_interval = \"200ms\"
session_timeout = \"3s\"
reconnect_backoff_min = \"50ms\"
reconnect_backoff_max = \"500ms\"
handshake_timeout = \"3s\"
idle_timeout = \"6s\"
shutdown_grace = \"3s\"
removal_quiet = \"300ms\"
";

/// One node of a local cluster: its directory, config, socket and process.
pub struct LocalNode {
    /// Its display name.
    pub name: String,
    /// Its config file.
    pub config: PathBuf,
    /// Its API socket.
    pub socket: PathBuf,
    /// Its QUIC address.
    pub address: std::net::SocketAddr,
    /// Its key file.
    pub key_file: PathBuf,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its log file (stderr of the process).
    pub log: PathBuf,
}

/// Writes keys, a genesis and one config per node into `dir` (which must exist): a brand-new
/// cluster on loopback, every node listing every other as a seed peer. Used by the demo and the
/// tests.
pub fn write_cluster(dir: &Path, n: usize, extra_config: &str) -> anyhow::Result<Vec<LocalNode>> {
    write_cluster_with_seeds(dir, n, extra_config, every_other(n))
}

/// The seeds of [`write_cluster`]'s node `i` of `n`: every other node.
pub fn every_other(n: usize) -> impl Fn(usize) -> Vec<usize> {
    move |i| (0..n).filter(|j| *j != i).collect()
}

/// [`write_cluster`], with node `i`'s config listing only the nodes `seeds(i)` as `[[peers]]`:
/// the others it learns from their address records.
pub fn write_cluster_with_seeds(
    dir: &Path,
    n: usize,
    extra_config: &str,
    seeds: impl Fn(usize) -> Vec<usize>,
) -> anyhow::Result<Vec<LocalNode>> {
    if n == 0 || n > LOCAL_NODES_MAX {
        bail!("a local cluster has 1 to {LOCAL_NODES_MAX} nodes");
    }
    let keys: Vec<SecretKey> = (0..n).map(|_| SecretKey::generate()).collect();
    let members =
        keys.iter().enumerate().map(|(i, k)| Member { key: k.public(), name: node_name(i) }).collect();
    let genesis = Genesis::new(members)?;
    let genesis_file = dir.join("genesis.toml");
    std::fs::write(&genesis_file, render_genesis(&genesis))?;
    let addresses = free_udp_addresses(n)?;
    let mut nodes = Vec::with_capacity(n);
    for (i, key) in keys.iter().enumerate() {
        let name = node_name(i);
        let node_dir = dir.join(&name);
        std::fs::create_dir_all(&node_dir)?;
        let key_file = node_dir.join("node.key");
        key.write_file(&key_file)?;
        let socket = node_dir.join("cairnd.sock");
        let data_dir = node_dir.join("data");
        let mut config = format!(
            "key_file = {:?}\ngenesis_file = {:?}\nlisten = \"{}\"\ndata_dir = {:?}\nsocket = {:?}\nnew_cluster = true\n{extra_config}\n",
            key_file, genesis_file, addresses[i], data_dir, socket
        );
        for j in seeds(i) {
            if j != i && j < n {
                let other = node_name(j);
                config.push_str(&format!("\n[[peers]]\nname = {other:?}\naddress = \"{}\"\n", addresses[j]));
            }
        }
        let config_path = node_dir.join("cairnd.toml");
        std::fs::write(&config_path, config)?;
        nodes.push(LocalNode {
            name,
            config: config_path,
            socket,
            address: addresses[i],
            key_file,
            data_dir,
            log: node_dir.join("cairnd.log"),
        });
    }
    Ok(nodes)
}

/// Addresses on 127.0.0.1 whose UDP ports were free a moment ago.
pub fn free_udp_addresses(n: usize) -> anyhow::Result<Vec<std::net::SocketAddr>> {
    // Hold all sockets at once so the ports differ, then release them for the nodes.
    let sockets: Vec<std::net::UdpSocket> =
        (0..n).map(|_| std::net::UdpSocket::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    sockets.iter().map(|s| s.local_addr().map_err(Into::into)).collect()
}

/// Starts `cairnd run` for `node` with `cairnd` at `exe`, stderr into its log file.
pub fn spawn(exe: &Path, node: &LocalNode) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
    Command::new(exe)
        .args(["run", "--config"])
        .arg(&node.config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))
}

/// Sends SIGTERM and waits up to `timeout`, then kills.
pub fn stop(child: &mut Child, timeout: Duration) -> std::io::Result<std::process::ExitStatus> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill()?;
    child.wait()
}

/// Lines of a dead node's log the demo prints.
const DEAD_LOG_LINES: usize = 40;

/// Runs the demo until Ctrl-C or SIGTERM (what `timeout` and systemd send): both stop every
/// node and remove the demo's directory. If a node dies, the others are stopped too, the tail
/// of its log is printed, and the directory is kept so the whole log can be read.
pub async fn run(n: usize) -> anyhow::Result<()> {
    // Registered first, so a SIGTERM during start-up is caught too (and not the default exit,
    // which would leave the nodes running).
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let dir = std::env::temp_dir().join(format!("cairn-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&dir, n, &mut terminate).await;
    match &result {
        Err(error) if error.downcast_ref::<NodeDied>().is_some() => {}
        _ => {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    result
}

/// A demo node exited by itself; its log was kept.
#[derive(Debug, thiserror::Error)]
#[error("node {name} exited unexpectedly ({status}); its whole log is {log} (the demo directory was kept)")]
struct NodeDied {
    name: String,
    status: String,
    log: String,
}

/// Waits for Ctrl-C or SIGTERM.
async fn stop_signal(terminate: &mut tokio::signal::unix::Signal) -> anyhow::Result<()> {
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

async fn run_in(dir: &Path, n: usize, terminate: &mut tokio::signal::unix::Signal) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let nodes = write_cluster(dir, n, "log_level = \"info\"\n[timing]\nsync_interval = \"500ms\"")?;
    let mut children = Vec::new();
    for node in &nodes {
        children.push(spawn(&exe, node)?);
    }
    if let Err(error) = wait_started(&nodes, &mut children).await {
        // Whatever went wrong, no node is left running.
        for child in &mut children {
            let _ = stop(child, STOP_TIMEOUT);
        }
        return Err(error);
    }
    let ctl = exe.with_file_name("cairnctl");
    let ctl = if ctl.exists() {
        ctl.display().to_string()
    } else {
        "cargo run --release --bin cairnctl --".to_owned()
    };
    println!("Cairn demo: {n} cairnd processes on loopback, data in {}", dir.display());
    for node in &nodes {
        println!(
            "  {:<6} quic {}  socket {}  log {}",
            node.name,
            node.address,
            node.socket.display(),
            node.log.display()
        );
    }
    let s = |i: usize| nodes[i % n].socket.display().to_string();
    println!("\nTry:");
    println!("  {ctl} --socket {} put greeting hello", s(0));
    println!("  {ctl} --socket {} get greeting", s(1));
    println!("  {ctl} --socket {} incr visits 5", s(2));
    println!("  {ctl} --socket {} sadd team {}", s(1), nodes[1 % n].name);
    println!("  {ctl} --socket {} watch", s(2));
    println!("  {ctl} --socket {} status", s(0));
    println!("  {ctl} --socket {} peers", s(0));
    println!("\nCtrl-C (or SIGTERM) stops the nodes and removes {}.", dir.display());

    let mut exited = None;
    tokio::select! {
        signal = stop_signal(terminate) => signal?,
        died = watch_children(&nodes, &mut children) => exited = Some(died),
    }
    println!("\nstopping the nodes…");
    for child in &mut children {
        let _ = stop(child, STOP_TIMEOUT);
    }
    if let Some((i, status)) = exited {
        let node = &nodes[i];
        let log = std::fs::read_to_string(&node.log).unwrap_or_default();
        eprintln!("--- the last lines of {}'s log ({}) ---", node.name, node.log.display());
        eprintln!("{}", tail(&log, DEAD_LOG_LINES));
        eprintln!("---");
        return Err(NodeDied {
            name: node.name.clone(),
            status: status.to_string(),
            log: node.log.display().to_string(),
        }
        .into());
    }
    Ok(())
}

/// Waits until every node has opened its API socket.
async fn wait_started(nodes: &[LocalNode], children: &mut [Child]) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while !nodes.iter().all(|node| node.socket.exists()) {
        for (node, child) in nodes.iter().zip(children.iter_mut()) {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                bail!("node {} exited ({status}) while starting:\n{}", node.name, tail(&log, DEAD_LOG_LINES));
            }
        }
        if Instant::now() > deadline {
            bail!("the nodes did not open their sockets within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Waits until a node exits; returns its index and how it exited.
async fn watch_children(nodes: &[LocalNode], children: &mut [Child]) -> (usize, std::process::ExitStatus) {
    loop {
        for (i, child) in children.iter_mut().enumerate().take(nodes.len()) {
            if let Ok(Some(status)) = child.try_wait() {
                return (i, status);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
