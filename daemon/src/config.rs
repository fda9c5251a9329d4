//! Configuration: the node's TOML config file and the cluster's genesis file. Every setting is
//! documented here with its default; an error names the file and the field.

use crate::store::OwnHistory;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use cairn_crypto::PublicKey;
use cairn_protocol::{AdapterConfig, Genesis, Member, NodeConfig, OverlayConfig};
use serde::Deserialize;

/// Where the systemd unit puts the socket (`RuntimeDirectory=cairn`); `cairnctl` defaults to it.
pub const DEFAULT_SOCKET: &str = "/run/cairn/cairnd.sock";
/// The UDP port `cairnd` listens on unless configured.
pub const DEFAULT_PORT: u16 = 7710;
/// The store's file name inside the data directory.
pub const STORE_FILE: &str = "cairn.redb";

/// The node's config file (`cairnd.toml`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The node's secret key file (made by `cairnd keygen`, mode 0600).
    pub key_file: PathBuf,
    /// The cluster's genesis file (the same on every node).
    pub genesis_file: PathBuf,
    /// UDP address for QUIC. Default `0.0.0.0:7710`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The address peers should dial this node at (`ip:port`), published in its signed
    /// address record. Default: the listen address, unless it is unspecified (`0.0.0.0`,
    /// `::`); then no record is published and peers reach this node only at an address in
    /// their own `peers`, or when it dials them.
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// Directory of the store. Default `/var/lib/cairn`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Verify the checksum of every page of the store at each start, reading the whole file
    /// (seconds per GiB). By default a start verifies every page only after an unclean stop
    /// (redb's crash recovery does), and otherwise reads only what it uses: every event read
    /// later is still checked against its id, and `cairnd check-store` verifies everything.
    /// Default false.
    #[serde(default)]
    pub verify_store_on_start: bool,
    /// The local API's Unix socket. Default `/run/cairn/cairnd.sock`.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing directive list);
    /// `RUST_LOG` overrides it. Default `info`.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Set on every node of a brand-new cluster only: this node's key has never signed, so a
    /// store this start creates is marked as holding the node's whole own history, and the node
    /// need not learn its latest seq from peers before its first write. It has no effect on a
    /// store that exists (a restored backup keeps its mark). Default false.
    #[serde(default)]
    pub new_cluster: bool,
    /// Seed peers, by genesis name or key, with an address: where this node first dials. It
    /// learns every other member's address from their signed address records, exchanged over
    /// its connections, so one reachable seed is enough; a member's own record replaces the
    /// address configured here. Which members it dials is the overlay's choice (`[overlay]`).
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Which members this node connects to (`cairn_protocol::Overlay`).
    #[serde(default)]
    pub overlay: OverlaySettings,
    /// Bounds on memory, queues and rates.
    #[serde(default)]
    pub limits: Limits,
    /// Intervals and timeouts.
    #[serde(default)]
    pub timing: Timing,
    /// The web console (`crate::console`); off without this table.
    #[serde(default)]
    pub console: Option<ConsoleConfig>,
}

/// The `[console]` table: the web console, off by default (`crate::console`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// The TCP address the console listens on, such as `127.0.0.1:7780` (port 0: any free
    /// port; `cairnctl console-url` names the one bound). A loopback address unless
    /// `allow_non_loopback` is true.
    pub listen: SocketAddr,
    /// Allow a `listen` address that is not loopback. The console speaks plain HTTP: anyone on
    /// the path can read its token. Prefer an SSH tunnel (`deploy/GUIDE.md`). Default false.
    #[serde(default)]
    pub allow_non_loopback: bool,
    /// Extra `Host` header values the console answers to (`name:port`), besides the listen
    /// address, `localhost:PORT`, `127.0.0.1:PORT` and `[::1]:PORT`; for a name that reaches it
    /// through a tunnel or proxy. Any other `Host` is refused (421), against DNS rebinding.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// One peer to dial.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's name: a genesis member's (then `key` may be left out), or the seat name of a
    /// host a membership change added (then give `key` too).
    #[serde(default)]
    pub name: Option<String>,
    /// The peer's public key (hex): alone, or with `name` for a host a membership change added.
    #[serde(default)]
    pub key: Option<String>,
    /// Its UDP address, `host:port` or `ip:port`.
    pub address: String,
}

/// Bounds; the defaults suit a few-node cluster on a small host.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Causal buffer bytes one peer may fill. Default 16 MiB.
    pub buffer_bytes_per_peer_max: usize,
    /// Causal buffer bytes in all. Default 64 MiB.
    pub buffer_bytes_total_max: usize,
    /// Event ids queued for one peer. Default 262 144.
    pub peer_queue_ids_max: usize,
    /// Control messages queued for one peer in the protocol. Default 1 024.
    pub peer_queue_messages_max: usize,
    /// Encoded messages queued for one peer in the transport. Default 64.
    pub transport_queue_messages_max: usize,
    /// Bytes per second one peer's connection may deliver. Default 33 554 432 (32 MiB).
    pub peer_inbound_bytes_per_sec: u64,
    /// Events per second one peer may send. Default 100 000.
    pub peer_events_per_sec: u64,
    /// Burst of events one peer may send. Default 200 000.
    pub peer_events_burst: u64,
    /// Threads for signature checks; 0 = one per CPU. Default 0.
    pub verify_threads: usize,
    /// Peers that must report this node's own tips before a node with an empty store signs;
    /// 0 = half the other members, rounded up. Default 0.
    pub own_seq_peers_needed: usize,
    /// Most local writes signed and stored in one commit. Default 1 024.
    pub commit_writes_max: usize,
}

/// The `[overlay]` table: the bounded set of members this node dials, drawn by its own
/// randomness over the members in force (`protocol/src/overlay.rs`). A cluster of at most
/// `outbound + 1` members is a full mesh.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct OverlaySettings {
    /// Members this node dials and keeps connected. Default 6.
    pub outbound: usize,
    /// Members kept as candidates for an outbound slot that frees up. Default 30.
    pub passive: usize,
    /// Inbound connections accepted from members this node does not dial itself; more are
    /// refused (close code 11, `Busy`). Default 512 (`MEMBERS_MAX`, every member): a lower cap
    /// would let Byzantine members that dial first take every slot (`protocol/src/overlay.rs`).
    pub inbound_max: usize,
    /// Seconds between rotations: one outbound slot is redrawn. Default 60.
    pub rotate_secs: u64,
    /// Seconds an outbound peer may stay unconnected before its slot is redrawn. Default 10.
    pub dial_timeout_secs: u64,
}

impl Default for OverlaySettings {
    fn default() -> Self {
        let overlay = OverlayConfig::default();
        Self {
            outbound: overlay.outbound,
            passive: overlay.passive,
            inbound_max: overlay.inbound_max,
            rotate_secs: overlay.rotate_ms / 1000,
            dial_timeout_secs: overlay.dial_timeout_ms / 1000,
        }
    }
}

impl OverlaySettings {
    /// The protocol's overlay settings.
    pub fn overlay_config(&self) -> OverlayConfig {
        OverlayConfig {
            outbound: self.outbound,
            passive: self.passive,
            inbound_max: self.inbound_max,
            rotate_ms: self.rotate_secs.saturating_mul(1000),
            dial_timeout_ms: self.dial_timeout_secs.saturating_mul(1000),
        }
    }
}

/// Intervals and timeouts (humantime: `500ms`, `2s`, `1m`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// Anti-entropy period per peer. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
    /// An unanswered session or fork search is abandoned after this. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Period of requests for ids the causal buffer misses. Default 500 ms.
    #[serde(with = "humantime_serde")]
    pub want_interval: Duration,
    /// First reconnect delay, doubled up to `reconnect_backoff_max`. Default 200 ms.
    #[serde(with = "humantime_serde")]
    pub reconnect_backoff_min: Duration,
    /// Longest reconnect delay. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub reconnect_backoff_max: Duration,
    /// QUIC handshake plus hello must finish within this. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A silent connection is closed after this (keep-alives at a third). Default 30 s.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// On SIGTERM, the longest wait for queued writes to be stored and sent. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// A removal (or an approval of one) cuts a seat without `--force` only if no event of its
    /// key was accepted here for this long. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub removal_quiet: Duration,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/cairn")
}
fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
fn default_log_level() -> String {
    "info".to_owned()
}

impl Default for Limits {
    fn default() -> Self {
        let node = NodeConfig::default();
        Self {
            buffer_bytes_per_peer_max: node.adapter.buffer_bytes_per_peer_max,
            buffer_bytes_total_max: node.adapter.buffer_bytes_total_max,
            peer_queue_ids_max: node.peer_queue_ids_max,
            peer_queue_messages_max: node.peer_queue_messages_max,
            transport_queue_messages_max: 64,
            peer_inbound_bytes_per_sec: crate::transport::INBOUND_BYTES_PER_SEC_DEFAULT,
            peer_events_per_sec: node.peer_events_per_sec,
            peer_events_burst: node.peer_events_burst,
            verify_threads: 0,
            own_seq_peers_needed: 0,
            commit_writes_max: 1_024,
        }
    }
}

impl Default for Timing {
    fn default() -> Self {
        let node = NodeConfig::default();
        Self {
            sync_interval: Duration::from_millis(node.sync_interval_ms),
            session_timeout: Duration::from_millis(node.session_timeout_ms),
            want_interval: Duration::from_millis(node.want_interval_ms),
            reconnect_backoff_min: Duration::from_millis(200),
            reconnect_backoff_max: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            removal_quiet: Duration::from_secs(10),
        }
    }
}

/// The genesis file (`genesis.toml`): the members, each with a name and a key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenesisFile {
    /// The approvals a membership change needs; absent: a majority of the seats in force.
    #[serde(default)]
    threshold: Option<u32>,
    member: Vec<MemberEntry>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberEntry {
    name: String,
    key: String,
}

/// Reads and checks a genesis file.
pub fn load_genesis(path: &Path) -> anyhow::Result<Genesis> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read genesis file {}", path.display()))?;
    parse_genesis(&text).with_context(|| format!("genesis file {}", path.display()))
}

/// Parses genesis TOML (`[[member]]` tables with `name` and `key`).
pub fn parse_genesis(text: &str) -> anyhow::Result<Genesis> {
    let file: GenesisFile = toml::from_str(text)?;
    let mut members = Vec::with_capacity(file.member.len());
    for (i, entry) in file.member.into_iter().enumerate() {
        let key: PublicKey =
            entry.key.parse().with_context(|| format!("member[{i}] ({:?}).key", entry.name))?;
        members.push(Member { key, name: entry.name });
    }
    let genesis = Genesis::new(members)?;
    Ok(match file.threshold {
        Some(threshold) => genesis.with_threshold(threshold).context("threshold")?,
        None => genesis,
    })
}

/// Renders a genesis as TOML, in the form [`parse_genesis`] reads.
pub fn render_genesis(genesis: &Genesis) -> String {
    let mut out = String::from("# Cairn cluster genesis: the same file on every node.\n");
    if let Some(threshold) = genesis.threshold() {
        out.push_str(&format!(
            "\n# Approvals a membership change needs (without this line: a majority of the seats).\nthreshold = \
             {threshold}\n"
        ));
    }
    for member in genesis.members() {
        // The name as a TOML string, quoted and escaped by the TOML library: Rust's `{:?}`
        // writes escapes such as `\u{36b}` that TOML does not read.
        let name = toml::Value::String(member.name.clone());
        out.push_str(&format!("\n[[member]]\nname = {name}\nkey = \"{}\"\n", member.key));
    }
    out
}

/// A peer to dial, resolved against the genesis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its key.
    pub key: PublicKey,
    /// Its genesis name.
    pub name: String,
    /// Its address.
    pub address: SocketAddr,
}

impl Config {
    /// Reads and checks the config file (not the files it names).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// Parses config TOML.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        crate::logging::check_filter(&self.log_level).map_err(|why| anyhow::anyhow!("log_level: {why}"))?;
        let limits = &self.limits;
        let positive = [
            ("limits.buffer_bytes_per_peer_max", limits.buffer_bytes_per_peer_max as u64),
            ("limits.buffer_bytes_total_max", limits.buffer_bytes_total_max as u64),
            ("limits.peer_queue_ids_max", limits.peer_queue_ids_max as u64),
            ("limits.peer_queue_messages_max", limits.peer_queue_messages_max as u64),
            ("limits.transport_queue_messages_max", limits.transport_queue_messages_max as u64),
            ("limits.peer_inbound_bytes_per_sec", limits.peer_inbound_bytes_per_sec),
            ("limits.peer_events_per_sec", limits.peer_events_per_sec),
            ("limits.peer_events_burst", limits.peer_events_burst),
            ("limits.commit_writes_max", limits.commit_writes_max as u64),
        ];
        for (field, value) in positive {
            if value == 0 {
                bail!("{field} must be greater than 0");
            }
        }
        if limits.buffer_bytes_per_peer_max > limits.buffer_bytes_total_max {
            bail!("limits.buffer_bytes_per_peer_max must not exceed limits.buffer_bytes_total_max");
        }
        let timing = &self.timing;
        for (field, value) in [
            ("timing.sync_interval", timing.sync_interval),
            ("timing.session_timeout", timing.session_timeout),
            ("timing.want_interval", timing.want_interval),
            ("timing.reconnect_backoff_min", timing.reconnect_backoff_min),
            ("timing.handshake_timeout", timing.handshake_timeout),
            ("timing.idle_timeout", timing.idle_timeout),
        ] {
            if value.is_zero() {
                bail!("{field} must be longer than 0");
            }
        }
        if timing.reconnect_backoff_min > timing.reconnect_backoff_max {
            bail!("timing.reconnect_backoff_min must not exceed timing.reconnect_backoff_max");
        }
        if let Some(console) = &self.console {
            console.check()?;
        }
        let overlay = &self.overlay;
        for (field, value) in [
            ("overlay.outbound", overlay.outbound as u64),
            ("overlay.inbound_max", overlay.inbound_max as u64),
            ("overlay.rotate_secs", overlay.rotate_secs),
            ("overlay.dial_timeout_secs", overlay.dial_timeout_secs),
        ] {
            if value == 0 {
                bail!("{field} must be greater than 0");
            }
        }
        if let Some(advertise) = self.advertise
            && (advertise.ip().is_unspecified() || advertise.port() == 0)
        {
            bail!(
                "advertise: {advertise} cannot be dialed; give the address peers reach this node at, such as \
                 \"192.0.2.1:7710\""
            );
        }
        for (i, peer) in self.peers.iter().enumerate() {
            if peer.name.is_none() && peer.key.is_none() {
                bail!(
                    "peers[{i}]: give `name` (a genesis member's), `key`, or both (a host a membership change added)"
                );
            }
        }
        Ok(())
    }

    /// The peers to dial, resolved against `genesis`: each must be a member, and not this node.
    pub fn resolve_peers(&self, genesis: &Genesis, me: &PublicKey) -> anyhow::Result<Vec<Peer>> {
        let mut names: Vec<&str> = genesis.members().iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        let mut peers: Vec<Peer> = Vec::new();
        for (i, peer) in self.peers.iter().enumerate() {
            let key = peer
                .key
                .as_deref()
                .map(str::parse::<PublicKey>)
                .transpose()
                .with_context(|| format!("peers[{i}].key"))?;
            let in_genesis = |key: &PublicKey| genesis.member_idx(key).map(|idx| &genesis.members()[idx]);
            let (key, name) = match (&peer.name, key) {
                (Some(name), key) => match genesis.members().iter().find(|m| &m.name == name) {
                    Some(member) => {
                        if key.is_some_and(|key| key != member.key) {
                            bail!(
                                "peers[{i}]: the genesis member {name:?} has another key than the one given"
                            );
                        }
                        (member.key, member.name.clone())
                    }
                    // A member a membership change added (or will add): its key says who it is.
                    None => match key {
                        Some(key) => (key, name.clone()),
                        None => bail!(
                            "peers[{i}].name: {name:?} is not a member of the genesis (members are {}); for a host a \
                             membership change added, give its `key` too",
                            names.join(", ")
                        ),
                    },
                },
                (None, Some(key)) => match in_genesis(&key) {
                    Some(member) => (member.key, member.name.clone()),
                    None => (key, key.short()),
                },
                (None, None) => bail!("peers[{i}]: give `name` or `key`"),
            };
            if key == *me {
                bail!("peers[{i}]: {name:?} is this node itself");
            }
            if peers.iter().any(|p| p.key == key) {
                bail!("peers[{i}]: {name:?} is listed twice");
            }
            let address = resolve_address(&peer.address).with_context(|| format!("peers[{i}].address"))?;
            peers.push(Peer { key, name, address });
        }
        Ok(peers)
    }

    /// What a store created by this start knows of the node's own events: all of them for a
    /// brand-new cluster (`new_cluster`) or a sole member (nobody else can hold one), else
    /// nothing certain.
    pub fn new_store_own_history(&self, genesis: &Genesis) -> OwnHistory {
        if self.new_cluster || genesis.members().len() <= 1 {
            OwnHistory::Complete
        } else {
            OwnHistory::Unknown
        }
    }

    /// The protocol's node settings from these limits and timings. Own-seq safety is on unless
    /// the store holds the node's whole own history (or the node has no peer to learn from).
    pub fn node_config(&self, genesis: &Genesis, own_history: OwnHistory) -> NodeConfig {
        let limits = &self.limits;
        let timing = &self.timing;
        let verify_threads = match limits.verify_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let others = genesis.members().len().saturating_sub(1);
        let own_seq_peers_needed = if own_history == OwnHistory::Complete || others == 0 {
            0
        } else if limits.own_seq_peers_needed > 0 {
            limits.own_seq_peers_needed.min(others)
        } else {
            others.div_ceil(2)
        };
        NodeConfig {
            adapter: AdapterConfig {
                buffer_bytes_per_peer_max: limits.buffer_bytes_per_peer_max,
                buffer_bytes_total_max: limits.buffer_bytes_total_max,
                verify_threads,
                membership_changes: true,
            },
            sync_interval_ms: millis(timing.sync_interval),
            session_timeout_ms: millis(timing.session_timeout),
            want_interval_ms: millis(timing.want_interval),
            peer_queue_ids_max: limits.peer_queue_ids_max,
            peer_queue_messages_max: limits.peer_queue_messages_max,
            peer_events_per_sec: limits.peer_events_per_sec,
            peer_events_burst: limits.peer_events_burst,
            own_seq_peers_needed,
            ..NodeConfig::default()
        }
    }

    /// The store file.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join(STORE_FILE)
    }
}

impl ConsoleConfig {
    fn check(&self) -> anyhow::Result<()> {
        if !self.listen.ip().is_loopback() && !self.allow_non_loopback {
            bail!(
                "console.listen: {} is not a loopback address. The console speaks plain HTTP, so its token would \
                 cross the network in clear: listen on 127.0.0.1 and reach it through an SSH tunnel \
                 (deploy/GUIDE.md, \"The web console\"), or set `allow_non_loopback = true` in [console] if the \
                 network is trusted",
                self.listen
            );
        }
        for (i, host) in self.hosts.iter().enumerate() {
            let valid = !host.is_empty()
                && host.len() <= CONSOLE_HOST_BYTES_MAX
                && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
            if !valid {
                bail!(
                    "console.hosts[{i}]: {host:?} is not a Host header value (a name or address and a port, \
                     such as \"cairn.internal:7780\", at most {CONSOLE_HOST_BYTES_MAX} bytes)"
                );
            }
        }
        Ok(())
    }
}

/// The longest `Host` value `console.hosts` takes: a DNS name (253) and a port.
pub const CONSOLE_HOST_BYTES_MAX: usize = 253 + 6;

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `host:port` or `ip:port` to one socket address (the first the resolver gives).
pub fn resolve_address(text: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs as _;
    let mut addresses = text
        .to_socket_addrs()
        .with_context(|| format!("{text:?} is not an address (host:port or ip:port)"))?;
    addresses.next().with_context(|| format!("{text:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_crypto::SecretKey;

    fn genesis() -> (Genesis, Vec<SecretKey>) {
        let keys: Vec<SecretKey> = (1..=3).map(|i| SecretKey::from_seed(&[i; 32])).collect();
        let names = ["alice", "bob", "carol"];
        let members =
            keys.iter().zip(names).map(|(k, n)| Member { key: k.public(), name: n.to_owned() }).collect();
        (Genesis::new(members).unwrap(), keys)
    }

    #[test]
    fn genesis_round_trips_through_its_file_form() {
        let (g, _) = genesis();
        assert_eq!(parse_genesis(&render_genesis(&g)).unwrap(), g);
        let strict = g.clone().with_threshold(3).unwrap();
        let text = render_genesis(&strict);
        assert!(text.contains("threshold = 3"), "{text}");
        assert_eq!(parse_genesis(&text).unwrap(), strict);
        assert_ne!(strict.cluster_id(), g.cluster_id());
        let err =
            parse_genesis(&render_genesis(&g).replacen("\n[[member]]", "threshold = 1\n\n[[member]]", 1))
                .unwrap_err();
        assert!(format!("{err:#}").contains("more than half"), "{err:#}");
    }

    #[test]
    fn genesis_errors_name_the_member() {
        let err = parse_genesis("[[member]]\nname = \"a\"\nkey = \"xyz\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("member[0] (\"a\").key"), "{err:#}");
        let err = parse_genesis("[[member]]\nname = \"a\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("key"), "{err:#}");
        let (g, _) = genesis();
        let twice = format!(
            "{}{}",
            render_genesis(&g),
            render_genesis(&g).replace("# Cairn cluster genesis: the same file on every node.\n", "")
        );
        assert!(format!("{:#}", parse_genesis(&twice).unwrap_err()).contains("twice"));
    }

    const MINIMAL: &str = "key_file = \"/k\"\ngenesis_file = \"/g\"\n";

    #[test]
    fn defaults_apply() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.listen, default_listen());
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.timing.sync_interval, Duration::from_secs(1));
        assert!(!c.new_cluster);
        assert_eq!(c.advertise, None);
        assert_eq!(c.overlay.overlay_config(), OverlayConfig::default(), "the protocol's defaults");
        let set = Config::parse(&format!(
            "advertise = \"192.0.2.1:7710\"\n{MINIMAL}[overlay]\noutbound = 3\ninbound_max = 6\nrotate_secs = 2\n"
        ))
        .unwrap();
        assert_eq!(set.advertise, Some("192.0.2.1:7710".parse().unwrap()));
        let overlay = set.overlay.overlay_config();
        assert_eq!((overlay.outbound, overlay.inbound_max, overlay.rotate_ms), (3, 6, 2000));
        assert_eq!(overlay.dial_timeout_ms, OverlayConfig::default().dial_timeout_ms);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("listen = \"nowhere\"\n", "listen"),
            ("colour = 1\n", "colour"),
            ("[limits]\npeer_events_per_sec = 0\n", "limits.peer_events_per_sec"),
            ("[timing]\nsync_interval = \"soon\"\n", "sync_interval"),
            ("[[peers]]\naddress = \"127.0.0.1:1\"\n", "peers[0]"),
            ("log_level = \"loud\"\n", "log_level"),
            ("[overlay]\noutbound = 0\n", "overlay.outbound"),
            ("[overlay]\ninbound_max = 0\n", "overlay.inbound_max"),
            ("[overlay]\nfanout = 3\n", "fanout"),
            ("advertise = \"0.0.0.0:7710\"\n", "advertise"),
            ("advertise = \"192.0.2.1:0\"\n", "advertise"),
            ("advertise = \"example.org:7710\"\n", "advertise"),
        ];
        for (extra, field) in cases {
            let err = Config::parse(&format!("{MINIMAL}{extra}")).unwrap_err();
            assert!(format!("{err:#}").contains(field), "{extra:?}: {err:#}");
        }
    }

    #[test]
    fn the_console_is_off_by_default_and_on_loopback_unless_allowed() {
        assert!(Config::parse(MINIMAL).unwrap().console.is_none());
        let on = Config::parse(&format!("{MINIMAL}[console]\nlisten = \"127.0.0.1:7780\"\n")).unwrap();
        let console = on.console.expect("a console");
        assert_eq!(console.listen, "127.0.0.1:7780".parse().unwrap());
        assert!(!console.allow_non_loopback && console.hosts.is_empty());
        assert!(Config::parse(&format!("{MINIMAL}[console]\nlisten = \"[::1]:7780\"\n")).is_ok());
        // A non-loopback address is a config error unless explicitly allowed.
        for listen in ["0.0.0.0:7780", "192.0.2.1:7780", "[::]:7780"] {
            let text = format!("{MINIMAL}[console]\nlisten = \"{listen}\"\n");
            let err = Config::parse(&text).unwrap_err();
            let err = format!("{err:#}");
            assert!(err.contains("console.listen") && err.contains("allow_non_loopback"), "{listen}: {err}");
            let allowed = format!("{text}allow_non_loopback = true\n");
            assert!(Config::parse(&allowed).is_ok(), "{listen}");
        }
        let bad_host = format!("{MINIMAL}[console]\nlisten = \"127.0.0.1:1\"\nhosts = [\"a b\"]\n");
        assert!(format!("{:#}", Config::parse(&bad_host).unwrap_err()).contains("console.hosts[0]"));
        let unknown = format!("{MINIMAL}[console]\nlisten = \"127.0.0.1:1\"\ntoken = \"x\"\n");
        assert!(format!("{:#}", Config::parse(&unknown).unwrap_err()).contains("token"));
    }

    #[test]
    fn log_levels_are_levels_or_directives_of_levels() {
        for good in ["info", "WARN", "off", "info,cairn_daemon::transport=debug", "quinn=warn,debug"] {
            assert!(crate::logging::check_filter(good).is_ok(), "{good}");
        }
        for bad in ["loud", "", "info,loud", "cairn_daemon=loud", "info=", "[[="] {
            let error = crate::logging::check_filter(bad).unwrap_err();
            assert!(error.contains("error, warn, info, debug, trace"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn peers_resolve_against_the_genesis() {
        let (g, keys) = genesis();
        let text = format!(
            "{MINIMAL}[[peers]]\nname = \"bob\"\naddress = \"127.0.0.1:7711\"\n[[peers]]\nkey = \"{}\"\naddress = \"127.0.0.1:7712\"\n",
            keys[2].public()
        );
        let c = Config::parse(&text).unwrap();
        let peers = c.resolve_peers(&g, &keys[0].public()).unwrap();
        assert_eq!(peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["bob", "carol"]);
        let err = c.resolve_peers(&g, &keys[1].public()).unwrap_err();
        assert!(format!("{err:#}").contains("this node itself"));
        let unknown =
            Config::parse(&format!("{MINIMAL}[[peers]]\nname = \"dave\"\naddress = \"127.0.0.1:1\"\n"))
                .unwrap();
        let err = unknown.resolve_peers(&g, &keys[0].public()).unwrap_err();
        assert!(format!("{err:#}").contains("alice, bob, carol"), "{err:#}");
    }

    #[test]
    fn own_seq_safety_is_off_only_for_a_store_with_the_whole_own_history() {
        let (g, _) = genesis();
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.node_config(&g, OwnHistory::Complete).own_seq_peers_needed, 0);
        for own_history in [OwnHistory::Unknown, OwnHistory::Restored, OwnHistory::RolledBack] {
            assert_eq!(c.node_config(&g, own_history).own_seq_peers_needed, 1, "{own_history:?}");
        }
        assert_eq!(c.new_store_own_history(&g), OwnHistory::Unknown);
        // `new_cluster` marks a store this start creates; it never overrides a store's mark.
        let new = Config::parse(&format!("new_cluster = true\n{MINIMAL}")).unwrap();
        assert_eq!(new.new_store_own_history(&g), OwnHistory::Complete);
        assert_eq!(new.node_config(&g, OwnHistory::Restored).own_seq_peers_needed, 1);
    }
}
