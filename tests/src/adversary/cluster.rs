//! A cluster to attack: honest `cairnd` processes on loopback plus a genesis member `mallory`
//! whose key the adversary holds (and whose config file `cairn-adversary run --config` reads).
//! Used by `tests/tests/adversary.rs`; the nodes' logs are printed if the test panics.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_crypto::{PublicKey, SecretKey};
use cairn_daemon::client::Client;
use cairn_daemon::config::render_genesis;
use cairn_daemon::demo::{self, LocalNode, free_udp_addresses};
use cairn_protocol::{Genesis, Member};
use serde_json::Value;

use super::wire::Target;

pub use cairn_daemon::demo::FAST_TIMING;

/// The genesis names of the honest nodes, in order.
pub const HONEST_NAMES: [&str; 3] = ["alice", "bob", "carol"];
/// The adversary's genesis name.
pub const ADVERSARY_NAME: &str = "mallory";
/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(25);

/// One honest node.
#[derive(Debug)]
pub struct HonestNode {
    /// Genesis name.
    pub name: String,
    /// Public key.
    pub key: PublicKey,
    /// Config file.
    pub config: PathBuf,
    /// API socket.
    pub socket: PathBuf,
    /// QUIC address.
    pub address: std::net::SocketAddr,
    /// stderr of the process.
    pub log: PathBuf,
    child: Option<Child>,
}

/// Honest nodes and the adversary's member key, in a temporary directory.
pub struct AttackCluster {
    /// The honest nodes.
    pub honest: Vec<HonestNode>,
    /// The adversary's (member) key.
    pub mallory: SecretKey,
    /// The adversary's config file (a `cairnd` config naming every honest node as a peer).
    pub mallory_config: PathBuf,
    /// The genesis.
    pub genesis: Genesis,
    exe: PathBuf,
    // Last: removed after the processes are gone.
    dir: tempfile::TempDir,
}

/// The `cairnd` built alongside the running test or binary (`target/<profile>/cairnd`).
pub fn cairnd_exe() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // Test binaries live in `target/<profile>/deps`, binaries in `target/<profile>`.
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("cairnd");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no cairnd next to {} (build it first: cargo build -p cairn-daemon --bin cairnd, in the same profile)",
        exe.display()
    )
}

/// A key smaller (bytewise) than every key in `others`: the smaller key of a pair dials, so
/// the adversary can dial every honest node.
fn key_below(others: &[PublicKey]) -> SecretKey {
    loop {
        let key = SecretKey::generate();
        if others.iter().all(|k| key.public() < *k) {
            return key;
        }
    }
}

impl AttackCluster {
    /// Writes a cluster of `n_honest` honest nodes (each with `extra_config` after its
    /// top-level keys) and the adversary's files; starts nothing.
    pub fn write(n_honest: usize, extra_config: &str) -> anyhow::Result<Self> {
        if n_honest == 0 || n_honest > HONEST_NAMES.len() {
            bail!("1 to {} honest nodes", HONEST_NAMES.len());
        }
        let dir = tempfile::Builder::new().prefix("cairn-adversary-").tempdir()?;
        let keys: Vec<SecretKey> = (0..n_honest).map(|_| SecretKey::generate()).collect();
        let publics: Vec<PublicKey> = keys.iter().map(SecretKey::public).collect();
        let mallory = key_below(&publics);
        let mut members: Vec<Member> =
            publics.iter().zip(HONEST_NAMES).map(|(k, n)| Member { key: *k, name: n.to_owned() }).collect();
        members.push(Member { key: mallory.public(), name: ADVERSARY_NAME.to_owned() });
        let genesis = Genesis::new(members)?;
        let genesis_file = dir.path().join("genesis.toml");
        std::fs::write(&genesis_file, render_genesis(&genesis))?;
        let addresses = free_udp_addresses(n_honest + 1)?;
        let peers = |except: usize| -> String {
            (0..n_honest)
                .filter(|j| *j != except)
                .map(|j| {
                    format!("\n[[peers]]\nname = {:?}\naddress = \"{}\"\n", HONEST_NAMES[j], addresses[j])
                })
                .collect()
        };
        let mut honest = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let name = HONEST_NAMES[i];
            let node_dir = dir.path().join(name);
            std::fs::create_dir_all(&node_dir)?;
            let key_file = node_dir.join("node.key");
            key.write_file(&key_file)?;
            let socket = node_dir.join("cairnd.sock");
            let config = format!(
                "key_file = {:?}\ngenesis_file = {:?}\nlisten = \"{}\"\ndata_dir = {:?}\nsocket = {:?}\nnew_cluster = true\n{extra_config}\n{}",
                key_file,
                genesis_file,
                addresses[i],
                node_dir.join("data"),
                socket,
                peers(i)
            );
            let config_path = node_dir.join("cairnd.toml");
            std::fs::write(&config_path, config)?;
            honest.push(HonestNode {
                name: name.to_owned(),
                key: key.public(),
                config: config_path,
                socket,
                address: addresses[i],
                log: node_dir.join("cairnd.log"),
                child: None,
            });
        }
        let mallory_dir = dir.path().join(ADVERSARY_NAME);
        std::fs::create_dir_all(&mallory_dir)?;
        let mallory_key_file = mallory_dir.join("node.key");
        mallory.write_file(&mallory_key_file)?;
        let mallory_config = mallory_dir.join("cairnd.toml");
        std::fs::write(
            &mallory_config,
            format!(
                "key_file = {:?}\ngenesis_file = {:?}\nlisten = \"{}\"\ndata_dir = {:?}\nsocket = {:?}\n{}",
                mallory_key_file,
                genesis_file,
                addresses[n_honest],
                mallory_dir.join("data"),
                mallory_dir.join("cairnd.sock"),
                peers(usize::MAX)
            ),
        )?;
        Ok(Self { honest, mallory, mallory_config, genesis, exe: cairnd_exe()?, dir })
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Rewrites honest node `i`'s config with `edit` (before it starts).
    pub fn edit_config(&self, i: usize, edit: impl FnOnce(String) -> String) -> anyhow::Result<()> {
        let path = &self.honest[i].config;
        let text = std::fs::read_to_string(path)?;
        std::fs::write(path, edit(text))?;
        Ok(())
    }

    /// Removes honest node `j` from honest node `i`'s peers (so `i` never dials `j`).
    pub fn remove_peer(&self, i: usize, j: usize) -> anyhow::Result<()> {
        let table = format!(
            "\n[[peers]]\nname = {:?}\naddress = \"{}\"\n",
            self.honest[j].name, self.honest[j].address
        );
        self.edit_config(i, |text| text.replace(&table, ""))
    }

    /// Starts every honest node.
    pub fn start(&mut self) -> anyhow::Result<()> {
        for node in &mut self.honest {
            let dir = node.config.parent().context("a config in a node directory")?;
            let local = LocalNode {
                name: node.name.clone(),
                config: node.config.clone(),
                socket: node.socket.clone(),
                address: node.address,
                key_file: dir.join("node.key"),
                data_dir: dir.join("data"),
                log: node.log.clone(),
            };
            node.child = Some(demo::spawn(&self.exe, &local)?);
        }
        Ok(())
    }

    /// The honest nodes as the adversary's targets.
    pub fn targets(&self) -> Vec<Target> {
        self.honest.iter().map(|n| Target { name: n.name.clone(), key: n.key, address: n.address }).collect()
    }

    /// A client of honest node `i`'s API.
    pub fn client(&self, i: usize) -> Client {
        Client::new(&self.honest[i].socket)
    }

    /// Honest node `i`'s `/v1/status`.
    pub async fn status(&self, i: usize) -> anyhow::Result<Value> {
        Ok(self.client(i).get_json("/v1/status").await?)
    }

    /// Honest node `i`'s register `key` (`GET /v1/registers/{key}`).
    pub async fn register(&self, i: usize, key: &str) -> anyhow::Result<Value> {
        let path = format!("/v1/registers/{}", cairn_daemon::client::path_segment(key));
        Ok(self.client(i).get_json(&path).await?)
    }

    /// Honest node `i`'s `/v1/peers` entry for the peer called `name`.
    pub async fn peer(&self, i: usize, name: &str) -> anyhow::Result<Value> {
        let peers = self.client(i).get_json("/v1/peers").await?;
        let list =
            peers.as_array().or_else(|| peers["peers"].as_array()).context("/v1/peers is not a list")?;
        list.iter()
            .find(|p| p["name"] == name)
            .cloned()
            .with_context(|| format!("no peer {name} in /v1/peers"))
    }

    /// Whether honest node `i`'s process is still running.
    pub fn is_alive(&mut self, i: usize) -> bool {
        self.honest[i].child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The process ids of the running honest nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.honest.iter().filter_map(|n| n.child.as_ref().map(Child::id)).collect()
    }

    /// Peak resident memory of honest node `i` (`VmHWM`), KiB.
    pub fn peak_rss_kib(&self, i: usize) -> Option<u64> {
        let pid = self.honest[i].child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Polls `condition` every few milliseconds until it holds or `timeout` passes.
    pub async fn wait_for<F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut condition: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if condition().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting until {what}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every honest node answers and is connected to every peer its config names.
    pub async fn wait_connected(&self, timeout: Duration) -> anyhow::Result<()> {
        for i in 0..self.honest.len() {
            let n = std::fs::read_to_string(&self.honest[i].config)?.matches("[[peers]]").count() as u64;
            self.wait_for(
                &format!("{} is connected to its honest peers", self.honest[i].name),
                timeout,
                || async {
                    self.status(i)
                        .await
                        .ok()
                        .and_then(|s| s["n_peers_connected"].as_u64())
                        .is_some_and(|c| c >= n)
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Every honest node's log, for a failing test.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for node in &self.honest {
            let log = std::fs::read_to_string(&node.log).unwrap_or_default();
            text.push_str(&format!("----- {} ({}) -----\n{log}\n", node.name, node.log.display()));
        }
        text
    }
}

impl Drop for AttackCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for node in &mut self.honest {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
