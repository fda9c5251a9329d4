//! A local cluster of real `cairnd` processes for the integration tests: keys, genesis and
//! configs in a temporary directory (`cairn_daemon::demo::write_cluster`), the processes, and
//! their API sockets through `cairn_daemon::client`. Every wait polls a condition until a
//! deadline; a failing test prints every node's log (from `Drop`, while it panics).
//!
//! [`netns`] puts the nodes on hosts in network namespaces, [`tmpfs`] gives a node a file
//! system that can fill up, and [`Writer`] writes to a node without pause.

// Each test crate uses a part of this module.
#![allow(dead_code)]

pub(crate) mod netns;
pub(crate) mod tmpfs;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_daemon::client::{Client, ClientError, path_segment};
use cairn_daemon::demo::{self, LocalNode};
use hyper::Method;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tempfile::TempDir;

/// Short timings, so that a test waits for sync rounds and reconnects of a fraction of a second.
/// `write_cluster` inserts this after the top-level keys and before the `[[peers]]` tables, so
/// the `[timing]` table comes last here.
pub(crate) const TIMING: &str = demo::FAST_TIMING;

/// How long any one condition may take to come true. Generous: CI machines are slow and
/// shared; a healthy cluster meets every condition in well under a second.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// How often a condition is polled.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// How long `cairnd` may take to stop after SIGTERM before it is killed (and the test fails).
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The `cairnd` binary under test.
pub(crate) fn cairnd() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairnd"))
}

/// Polls `condition` until it holds (true) or `deadline` passes (false).
pub(crate) fn wait_until(deadline: Instant, mut condition: impl FnMut() -> bool) -> bool {
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Says loudly that a test did not run, and why (`SKIPPED: ...`). Written to the streams
/// themselves rather than with `println!`, which the test harness captures and shows only for a
/// failure.
pub(crate) fn skip(why: &str) {
    say(&format!("SKIPPED: {why}"));
}

/// Writes `line` to stdout and stderr, past the test harness's capture.
pub(crate) fn say(line: &str) {
    use std::io::Write as _;
    let line = format!("{line}\n");
    let _ = std::io::stdout().write_all(line.as_bytes());
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Waits for `child` to exit, up to `timeout`; kills it after that and returns `None`.
pub(crate) fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut status = None;
    wait_until(deadline, || {
        status = child.try_wait().expect("try_wait on a child");
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

/// Sends `signal` to the process `pid`.
pub(crate) fn signal_pid(pid: u32, signal: Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid fits in i32"));
    nix::sys::signal::kill(pid, signal).unwrap_or_else(|e| panic!("cannot send {signal} to {pid}: {e}"));
}

/// A local cluster of `cairnd` processes.
pub(crate) struct Cluster {
    /// Each node's files.
    pub(crate) nodes: Vec<LocalNode>,
    children: Vec<Option<Child>>,
    /// A command (and its arguments) to start `cairnd` through, per node: `ip netns exec NS`.
    prefixes: Vec<Vec<String>>,
    runtime: tokio::runtime::Runtime,
    // Last: the directory goes after the processes have been killed.
    dir: TempDir,
}

impl Cluster {
    /// Writes the files of a brand-new cluster of `n` nodes with `extra_config`, starts nothing.
    pub(crate) fn write(n: usize, extra_config: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("cairn-test-").tempdir().expect("a temp dir");
        let nodes = demo::write_cluster(dir.path(), n, extra_config).expect("write_cluster");
        Self::from_files(dir, nodes)
    }

    /// The cluster of the files written in `dir`, with a runtime of its own, nothing started.
    fn from_files(dir: TempDir, nodes: Vec<LocalNode>) -> Self {
        let n = nodes.len();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        Self { children: (0..n).map(|_| None).collect(), prefixes: vec![Vec::new(); n], nodes, runtime, dir }
    }

    /// [`Cluster::write`], with node `i`'s config listing only the nodes `seeds(i)` as peers.
    pub(crate) fn write_seeded(n: usize, extra_config: &str, seeds: impl Fn(usize) -> Vec<usize>) -> Self {
        let dir = tempfile::Builder::new().prefix("cairn-test-").tempdir().expect("a temp dir");
        let nodes = demo::write_cluster_with_seeds(dir.path(), n, extra_config, seeds)
            .expect("write_cluster_with_seeds");
        Self::from_files(dir, nodes)
    }

    /// A cluster of `n` nodes with short timings, every node connected to every other.
    pub(crate) fn start(n: usize) -> Self {
        let mut cluster = Self::write(n, TIMING);
        cluster.spawn_all();
        cluster.wait_all_connected();
        cluster
    }

    /// The temporary directory all nodes live in.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The number of nodes.
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Starts node `i` through `prefix` (`["ip", "netns", "exec", NS]`) from now on.
    pub(crate) fn set_prefix(&mut self, i: usize, prefix: Vec<String>) {
        self.prefixes[i] = prefix;
    }

    /// Rewrites node `i`'s config file with `edit`.
    pub(crate) fn edit_config(&self, i: usize, edit: impl FnOnce(String) -> String) {
        let path = &self.nodes[i].config;
        let text = std::fs::read_to_string(path).expect("read the config");
        std::fs::write(path, edit(text)).expect("write the config");
    }

    /// Removes the `[[peers]]` table naming node `j` from node `i`'s config.
    pub(crate) fn remove_peer(&self, i: usize, j: usize) {
        let table = format!(
            "\n[[peers]]\nname = {:?}\naddress = \"{}\"\n",
            self.nodes[j].name, self.nodes[j].address
        );
        self.edit_config(i, |text| {
            assert!(text.contains(&table), "node {i}'s config has no peers table for node {j}:\n{text}");
            text.replace(&table, "")
        });
    }

    /// Writes the files of a new host `name` that joins the running cluster through a
    /// membership change (`cairnctl member add`): a fresh key, the cluster's genesis, every
    /// node as a peer, no `new_cluster`; starts nothing. It dials them, and they learn its
    /// address from its signed address record once it is a member there (or from a restart
    /// with a `[[peers]]` table naming it, `name` and `key`). Returns its index and its public
    /// key.
    pub(crate) fn add_host(&mut self, name: &str) -> (usize, cairn_crypto::PublicKey) {
        let key = cairn_crypto::SecretKey::generate();
        let node_dir = self.dir.path().join(name);
        std::fs::create_dir_all(&node_dir).expect("the new host's directory");
        let key_file = node_dir.join("node.key");
        key.write_file(&key_file).expect("the new host's key");
        let address = demo::free_udp_addresses(1).expect("a free port")[0];
        let socket = node_dir.join("cairnd.sock");
        let data_dir = node_dir.join("data");
        let mut config = format!(
            "key_file = {key_file:?}\ngenesis_file = {:?}\nlisten = \"{address}\"\ndata_dir = {data_dir:?}\n\
             socket = {socket:?}\n{TIMING}\n",
            self.dir.path().join("genesis.toml"),
        );
        for node in &self.nodes {
            config
                .push_str(&format!("\n[[peers]]\nname = {:?}\naddress = \"{}\"\n", node.name, node.address));
        }
        let config_path = node_dir.join("cairnd.toml");
        std::fs::write(&config_path, config).expect("the new host's config");
        self.nodes.push(LocalNode {
            name: name.to_owned(),
            config: config_path,
            socket,
            address,
            key_file,
            data_dir,
            log: node_dir.join("cairnd.log"),
        });
        self.children.push(None);
        self.prefixes.push(Vec::new());
        (self.nodes.len() - 1, key.public())
    }

    /// Runs `cairnctl --socket <node i's socket> args…` and returns how it ended.
    pub(crate) fn cairnctl(&self, i: usize, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_cairnctl"))
            .arg("--socket")
            .arg(&self.nodes[i].socket)
            .args(args)
            .output()
            .expect("run cairnctl")
    }

    /// Adds a `[[peers]]` table for node `j` (by name and key: a host a membership change
    /// added) to node `i`'s config; it takes effect at node `i`'s next start.
    pub(crate) fn add_peer(&self, i: usize, j: usize, key: &cairn_crypto::PublicKey) {
        let (name, address) = (self.nodes[j].name.clone(), self.nodes[j].address);
        self.edit_config(i, |text| {
            format!("{text}\n[[peers]]\nname = {name:?}\nkey = \"{key}\"\naddress = \"{address}\"\n")
        });
    }

    /// Starts every node.
    pub(crate) fn spawn_all(&mut self) {
        for i in 0..self.len() {
            self.spawn(i);
        }
    }

    /// Starts node `i` (which must not be running).
    pub(crate) fn spawn(&mut self, i: usize) {
        assert!(self.children[i].is_none(), "node {i} is already running");
        let node = &self.nodes[i];
        let child = if self.prefixes[i].is_empty() {
            demo::spawn(&cairnd(), node).expect("spawn cairnd")
        } else {
            // As `demo::spawn`, through the prefix command.
            let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log).expect("log");
            Command::new(&self.prefixes[i][0])
                .args(&self.prefixes[i][1..])
                .arg(cairnd())
                .args(["run", "--config"])
                .arg(&node.config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn cairnd through its prefix")
        };
        self.children[i] = Some(child);
    }

    /// Node `i`'s process id.
    pub(crate) fn pid(&self, i: usize) -> u32 {
        self.children[i].as_ref().unwrap_or_else(|| panic!("node {i} is not running")).id()
    }

    /// Sends `signal` to node `i` (SIGSTOP and SIGCONT freeze and thaw it).
    pub(crate) fn signal(&self, i: usize, signal: Signal) {
        signal_pid(self.pid(i), signal);
    }

    /// Kills node `i` with SIGKILL and reaps it.
    pub(crate) fn kill9(&mut self, i: usize) {
        let mut child = self.children[i].take().unwrap_or_else(|| panic!("node {i} is not running"));
        child.kill().expect("kill -9");
        child.wait().expect("reap the killed node");
    }

    /// Stops node `i` with SIGTERM and asserts that it exits with status 0 in time.
    pub(crate) fn stop(&mut self, i: usize) {
        let mut child = self.children[i].take().unwrap_or_else(|| panic!("node {i} is not running"));
        let started = Instant::now();
        let status = demo::stop(&mut child, STOP_TIMEOUT).expect("stop the node");
        assert!(
            started.elapsed() < STOP_TIMEOUT,
            "node {i} did not stop within {STOP_TIMEOUT:?} of SIGTERM and was killed"
        );
        assert!(status.success(), "node {i} exited with {status} after SIGTERM");
    }

    /// Starts node `i` again and waits until its API answers.
    pub(crate) fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_ready(i);
    }

    /// Waits up to `timeout` for node `i` to exit by itself and returns how it exited; `None`
    /// if it did not (it is then killed).
    pub(crate) fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.children[i].take().unwrap_or_else(|| panic!("node {i} is not running"));
        wait_exit(&mut child, timeout)
    }

    /// Whether node `i` was started and still runs.
    pub(crate) fn is_running(&mut self, i: usize) -> bool {
        match self.children[i].as_mut() {
            None => false,
            Some(child) => child.try_wait().expect("try_wait").is_none(),
        }
    }

    /// Panics if node `i` was started and has exited.
    pub(crate) fn assert_alive(&mut self, i: usize) {
        if let Some(child) = self.children[i].as_mut()
            && let Some(status) = child.try_wait().expect("try_wait")
        {
            self.children[i] = None;
            panic!("node {i} ({}) exited unexpectedly with {status}", self.nodes[i].name);
        }
    }

    /// Waits until node `i`'s API answers `GET /v1/status`.
    pub(crate) fn wait_ready(&mut self, i: usize) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.assert_alive(i);
            if self.try_status(i).is_some() {
                return;
            }
            assert!(Instant::now() < deadline, "node {i}'s API did not answer within {DEADLINE:?}");
            std::thread::sleep(POLL);
        }
    }

    /// Waits until node `i` reports `n` connected peers.
    pub(crate) fn wait_connected(&mut self, i: usize, n: u64) {
        self.wait_ready(i);
        self.wait_for(&format!("node {i} has {n} connected peers"), |c| {
            c.status(i)["n_peers_connected"].as_u64() == Some(n)
        });
    }

    /// Waits until every node answers and reports every other node connected.
    pub(crate) fn wait_all_connected(&mut self) {
        let n_others = self.len() as u64 - 1;
        for i in 0..self.len() {
            self.wait_connected(i, n_others);
        }
    }

    /// Polls `condition` until it holds; panics naming `what` at the deadline (the logs are
    /// printed as the cluster drops).
    pub(crate) fn wait_for(&self, what: &str, mut condition: impl FnMut(&Self) -> bool) {
        let started = Instant::now();
        if !wait_until(started + DEADLINE, || condition(self)) {
            panic!("timed out after {DEADLINE:?} waiting until {what}");
        }
    }

    /// A client of node `i`'s API socket.
    pub(crate) fn client(&self, i: usize) -> Client {
        Client::new(&self.nodes[i].socket)
    }

    /// Runs `future` on the cluster's tokio runtime.
    pub(crate) fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// The cluster's tokio runtime, for tasks that run beside the test (a watch stream).
    pub(crate) fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    /// `GET path` on node `i`.
    pub(crate) fn try_get(&self, i: usize, path: &str) -> Result<Value, ClientError> {
        self.block_on(self.client(i).get_json(path))
    }

    /// `GET path` on node `i`; panics on an error.
    pub(crate) fn get(&self, i: usize, path: &str) -> Value {
        self.try_get(i, path).unwrap_or_else(|e| panic!("node {i}: GET {path}: {e}"))
    }

    /// `method path` with a JSON body on node `i`.
    pub(crate) fn send(
        &self,
        i: usize,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Result<Value, ClientError> {
        self.block_on(self.client(i).send_json(method, path, body))
    }

    /// Node `i`'s status, or `None` if its API does not answer.
    pub(crate) fn try_status(&self, i: usize) -> Option<Value> {
        self.try_get(i, "/v1/status").ok()
    }

    /// Node `i`'s status; panics if its API does not answer.
    pub(crate) fn status(&self, i: usize) -> Value {
        self.get(i, "/v1/status")
    }

    /// Puts `value` into register `key` on node `i`; returns the acknowledgement.
    pub(crate) fn put(&self, i: usize, key: &str, value: &str) -> Value {
        let path = format!("/v1/registers/{}", path_segment(key));
        self.send(i, Method::PUT, &path, &json!({ "value": value }))
            .unwrap_or_else(|e| panic!("node {i}: PUT {path}: {e}"))
    }

    /// Deletes register `key` on node `i`.
    pub(crate) fn delete(&self, i: usize, key: &str) -> Value {
        let path = format!("/v1/registers/{}", path_segment(key));
        self.block_on(self.client(i).request_json(Method::DELETE, &path, None::<&()>))
            .unwrap_or_else(|e| panic!("node {i}: DELETE {path}: {e}"))
    }

    /// Register `key` on node `i`: the visible value and the siblings.
    pub(crate) fn register(&self, i: usize, key: &str) -> Value {
        self.get(i, &format!("/v1/registers/{}", path_segment(key)))
    }

    /// The visible text value of register `key` on node `i`.
    pub(crate) fn register_value(&self, i: usize, key: &str) -> Option<String> {
        self.register(i, key)["value"].as_str().map(str::to_owned)
    }

    /// Adds `delta` to counter `key` on node `i`.
    pub(crate) fn incr(&self, i: usize, key: &str, delta: i64) -> Value {
        let path = format!("/v1/counters/{}/incr", path_segment(key));
        self.send(i, Method::POST, &path, &json!({ "delta": delta }))
            .unwrap_or_else(|e| panic!("node {i}: POST {path}: {e}"))
    }

    /// Counter `key` on node `i`.
    pub(crate) fn counter(&self, i: usize, key: &str) -> i64 {
        let path = format!("/v1/counters/{}", path_segment(key));
        self.get(i, &path)["value"].as_i64().unwrap_or_else(|| panic!("node {i}: {path} has no i64 value"))
    }

    /// Adds (`add`) or removes (`remove`) `element` in set `key` on node `i`.
    pub(crate) fn set_op(&self, i: usize, op: &str, key: &str, element: &str) -> Value {
        let path = format!("/v1/sets/{}/{op}", path_segment(key));
        self.send(i, Method::POST, &path, &json!({ "element": element }))
            .unwrap_or_else(|e| panic!("node {i}: POST {path}: {e}"))
    }

    /// The members of set `key` on node `i`, as text.
    pub(crate) fn set_members(&self, i: usize, key: &str) -> Vec<String> {
        let set = self.get(i, &format!("/v1/sets/{}", path_segment(key)));
        set["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| m["value"].as_str().expect("a text member").to_owned())
            .collect()
    }

    /// The evidence list of node `i`.
    pub(crate) fn evidence(&self, i: usize) -> Vec<Value> {
        self.get(i, "/v1/evidence")["evidence"].as_array().expect("an evidence list").clone()
    }

    /// Node `i`'s `(digest, sync_digest)`.
    pub(crate) fn digests(&self, i: usize) -> (String, String) {
        let status = self.status(i);
        (
            status["digest"].as_str().expect("digest").to_owned(),
            status["sync_digest"].as_str().expect("sync_digest").to_owned(),
        )
    }

    /// Whether `nodes` report equal document and reconciliation digests.
    pub(crate) fn converged(&self, nodes: &[usize]) -> bool {
        let digests: Vec<_> = nodes.iter().map(|&i| self.digests(i)).collect();
        digests.windows(2).all(|pair| pair[0] == pair[1])
    }

    /// Waits until every node reports the same document and reconciliation digests.
    pub(crate) fn wait_converged(&self) {
        let all: Vec<usize> = (0..self.len()).collect();
        self.wait_for("every node has equal digests", |c| c.converged(&all));
    }

    /// The register keys node `i` holds (`GET /v1/keys?kind=register`, every page), as text.
    pub(crate) fn register_keys(&self, i: usize) -> BTreeSet<String> {
        let mut held = BTreeSet::new();
        let mut path = "/v1/keys?kind=register".to_owned();
        loop {
            let page = self.get(i, &path);
            held.extend(
                page["keys"]
                    .as_array()
                    .expect("a key list")
                    .iter()
                    .map(|k| k["key"].as_str().expect("a text key").to_owned()),
            );
            match page["next"].as_str() {
                // A cursor needs no percent-encoding.
                Some(next) => path = format!("/v1/keys?kind=register&after={next}"),
                None => return held,
            }
        }
    }

    /// Asserts that every node that runs holds every key of `keys` as a register whose value is
    /// the key itself (what [`Writer`] writes).
    pub(crate) fn assert_everywhere(&mut self, keys: &[String]) {
        for i in 0..self.len() {
            if !self.is_running(i) {
                continue;
            }
            let held = self.register_keys(i);
            let missing: Vec<&String> = keys.iter().filter(|k| !held.contains(*k)).collect();
            assert!(missing.is_empty(), "node {i} lacks {} acknowledged writes: {missing:?}", missing.len());
        }
        // The values too, on one node (the digests say that the others agree).
        let reader = (0..self.len()).find(|&i| self.is_running(i)).expect("a running node");
        for key in keys {
            assert_eq!(
                self.register_value(reader, key).as_deref(),
                Some(key.as_str()),
                "node {reader}: {key}"
            );
        }
    }

    /// The keys of the registers that node `i`'s own events put, read from its store file
    /// while it is stopped (a kill -9 leaves the store to be recovered by this open).
    pub(crate) fn stored_own_puts(&self, i: usize) -> BTreeSet<String> {
        let genesis =
            cairn_daemon::config::load_genesis(&self.dir().join("genesis.toml")).expect("the genesis");
        let key = cairn_crypto::SecretKey::read_file(&self.nodes[i].key_file).expect("the key").public();
        let path = self.nodes[i].data_dir.join(cairn_daemon::config::STORE_FILE);
        let (_store, loaded) = cairn_daemon::store::Store::open(
            &path,
            genesis.cluster_id(),
            key.0,
            cairn_daemon::store::OwnHistory::Unknown,
            &cairn_daemon::store::member_keys(&genesis),
        )
        .unwrap_or_else(|e| panic!("node {i}'s store: {e}"));
        let mut puts = BTreeSet::new();
        for bytes in &loaded.events {
            let event = cairn_protocol::codec::decode_event(bytes).expect("a stored event");
            if event.header.author != key {
                continue;
            }
            for op in &event.ops {
                if let cairn_protocol::Op::Put { key, .. } = op {
                    puts.insert(String::from_utf8_lossy(key).into_owned());
                }
            }
        }
        puts
    }

    /// Node `i`'s log.
    pub(crate) fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// Every node's log.
    pub(crate) fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let log = std::fs::read_to_string(&node.log).unwrap_or_else(|e| format!("(no log: {e})\n"));
            out.push_str(&format!("===== log of {} ({}) =====\n{log}", node.name, node.log.display()));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().filter_map(Option::as_mut) {
            // SIGKILL also ends a stopped (SIGSTOP) process.
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// A writer thread: puts of distinct registers `<prefix>-<n>` (the value is the key) to one
/// node, one at a time, until stopped. Each acknowledged put is recorded. A failed put is
/// recorded too, and the writer goes on with the next key after a poll interval, so it writes
/// through restarts and kills of its node (a put that failed may still have been stored; only
/// acknowledged ones count).
pub(crate) struct Writer {
    acked: Arc<Mutex<Vec<String>>>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts writing to `client`.
    pub(crate) fn spawn(client: Client, prefix: &str) -> Self {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (record, failed, stopped, prefix) =
            (Arc::clone(&acked), Arc::clone(&failures), Arc::clone(&stop), prefix.to_owned());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let mut n = 0u64;
            while !stopped.load(Ordering::Relaxed) {
                let key = format!("{prefix}-{n}");
                n += 1;
                let path = format!("/v1/registers/{}", path_segment(&key));
                match runtime.block_on(client.send_json(Method::PUT, &path, &json!({ "value": key }))) {
                    Ok(_) => record.lock().unwrap().push(key),
                    Err(error) => {
                        failed.lock().unwrap().push(format!("{key}: {error}"));
                        std::thread::sleep(POLL);
                    }
                }
            }
        });
        Self { acked, failures, stop, thread: Some(thread) }
    }

    /// How many puts were acknowledged so far.
    pub(crate) fn n_acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// The keys acknowledged so far.
    pub(crate) fn acked(&self) -> Vec<String> {
        self.acked.lock().unwrap().clone()
    }

    /// Stops the thread; returns the acknowledged keys and the failures.
    pub(crate) fn stop(mut self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the writer thread panicked");
        }
        (self.acked.lock().unwrap().clone(), self.failures.lock().unwrap().clone())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Joined only when stopped explicitly: a failing test must not wait on a put.
    }
}

/// A command's stdout then stderr, as text.
pub(crate) fn output_text(output: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Whether a key rotation's staging file (`<key_file>.next`) is there.
pub(crate) fn next_key_file_exists(key_file: &Path) -> bool {
    cairn_daemon::driver::next_key_file(key_file).exists()
}

/// Dials `address` (whose server key is `server`) presenting `key`, expecting the server to
/// refuse it in the TLS handshake; returns the refusal's words. Panics if it is admitted.
pub(crate) async fn raw_tls_refusal(
    key: &cairn_crypto::SecretKey,
    server: &cairn_crypto::PublicKey,
    address: std::net::SocketAddr,
) -> String {
    use cairn_daemon::tls;
    let endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("an address")).expect("a client endpoint");
    let config = tls::client_config(&tls::Identity::new(key), server);
    let connecting = endpoint.connect_with(config, address, tls::SERVER_NAME).expect("connect");
    let error = match connecting.await {
        // TLS 1.3: the client may finish before the server has checked its certificate.
        Ok(connection) => {
            let _ = connection.open_bi().await;
            tokio::time::timeout(DEADLINE, connection.closed()).await.expect("the server did not close")
        }
        Err(error) => error,
    };
    match error {
        quinn::ConnectionError::ConnectionClosed(close) => {
            String::from_utf8_lossy(&close.reason).into_owned()
        }
        other => format!("{other}"),
    }
}
