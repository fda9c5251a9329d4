//! Prometheus metrics, one registry per node (no globals, so many nodes can live in one test
//! process). Served as OpenMetrics text by the local API.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A label naming a rejection reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `Reject::name()`.
    pub reason: &'static str,
}

/// A label naming a peer by its display name.
/// An author: a member, by its name in the genesis.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthorLabel {
    pub author: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// The peer's genesis name.
    pub peer: String,
}

/// Every metric of a node.
pub struct Metrics {
    registry: Registry,
    /// Events accepted (local writes and from peers).
    pub events_accepted: Counter,
    /// Events rejected, by reason.
    pub events_rejected: Family<ReasonLabel, Counter>,
    /// Local writes acknowledged.
    pub writes: Counter,
    /// Local writes refused or failed.
    pub write_errors: Counter,
    /// Own events signed and stored (concurrent writes share one).
    pub own_events: Counter,
    /// Store commits (each one fsync), and the events they carried.
    pub commits: Counter,
    /// Events written by store commits.
    pub committed_events: Counter,
    /// Messages from peers that did not decode.
    pub bad_messages: Family<ReasonLabel, Counter>,
    /// Events dropped unread by the per-peer rate limit.
    pub rate_limited_events: Counter,
    /// Handshakes that failed because the peer speaks another protocol version, per peer.
    pub version_mismatches: Family<PeerLabel, Counter>,
    /// Events dropped before their signature check: deps missing, the sender's buffer share full.
    pub orphans_dropped: Counter,
    /// Bytes received, per peer.
    pub bytes_in: Family<PeerLabel, Counter>,
    /// Bytes sent, per peer.
    pub bytes_out: Family<PeerLabel, Counter>,
    /// Events accepted per author since start, restored ones included.
    pub author_events: Family<AuthorLabel, Counter>,
    /// Their encoded bytes.
    pub author_bytes: Family<AuthorLabel, Counter>,
    /// Connected peers.
    pub peers_connected: Gauge,
    /// Accepted events held.
    pub events_held: Gauge,
    /// Evidence held.
    pub evidence_held: Gauge,
    /// Events in the causal buffer.
    pub buffer_events: Gauge,
    /// Bytes charged to the causal buffer.
    pub buffer_bytes: Gauge,
    /// Events from peers accepted and not yet durable.
    pub unstored_events: Gauge,
    /// Times the node stopped reading from peers because too many events waited for the store.
    pub peer_input_paused: Counter,
    /// Dials a peer refused as busy (close code 11: past its `inbound_max`).
    pub dials_busy: Counter,
    /// Inbound connections this node refused as busy (past its `overlay.inbound_max`).
    pub inbound_busy: Counter,
}

impl Metrics {
    /// The `cairn_author_events` and `cairn_author_bytes` counters of the author named `name`.
    pub fn author_counters(&self, name: String) -> (Counter, Counter) {
        let label = AuthorLabel { author: name };
        (self.author_events.get_or_create_owned(&label), self.author_bytes.get_or_create_owned(&label))
    }

    /// A fresh registry with every metric registered (prefix `cairn`).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cairn");
        let metrics = Self {
            registry: Registry::default(),
            events_accepted: Counter::default(),
            events_rejected: Family::default(),
            writes: Counter::default(),
            write_errors: Counter::default(),
            own_events: Counter::default(),
            commits: Counter::default(),
            committed_events: Counter::default(),
            bad_messages: Family::default(),
            rate_limited_events: Counter::default(),
            version_mismatches: Family::default(),
            orphans_dropped: Counter::default(),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            author_events: Family::default(),
            author_bytes: Family::default(),
            peers_connected: Gauge::default(),
            events_held: Gauge::default(),
            evidence_held: Gauge::default(),
            buffer_events: Gauge::default(),
            buffer_bytes: Gauge::default(),
            unstored_events: Gauge::default(),
            peer_input_paused: Counter::default(),
            dials_busy: Counter::default(),
            inbound_busy: Counter::default(),
        };
        registry.register("events_accepted", "Events accepted", metrics.events_accepted.clone());
        registry.register("events_rejected", "Events rejected, by reason", metrics.events_rejected.clone());
        registry.register("writes", "Local writes acknowledged after fsync", metrics.writes.clone());
        registry.register("write_errors", "Local writes refused or failed", metrics.write_errors.clone());
        registry.register(
            "own_events",
            "Own events signed and stored (concurrent writes share one)",
            metrics.own_events.clone(),
        );
        registry.register("store_commits", "Store commits (one fsync each)", metrics.commits.clone());
        registry.register(
            "store_committed_events",
            "Events written by store commits",
            metrics.committed_events.clone(),
        );
        registry.register(
            "bad_messages",
            "Peer messages that broke a rule, by rule (`Misbehaviour::name`)",
            metrics.bad_messages.clone(),
        );
        registry.register(
            "version_mismatches",
            "Handshakes that failed because the peer speaks another protocol version, per peer",
            metrics.version_mismatches.clone(),
        );
        registry.register(
            "rate_limited_events",
            "Events dropped by the per-peer rate limit",
            metrics.rate_limited_events.clone(),
        );
        registry.register(
            "buffer_orphans_dropped",
            "Events dropped unverified: deps missing while the sender's buffer share was full",
            metrics.orphans_dropped.clone(),
        );
        registry.register("peer_bytes_in", "Bytes received from a peer", metrics.bytes_in.clone());
        registry.register("peer_bytes_out", "Bytes sent to a peer", metrics.bytes_out.clone());
        registry.register(
            "author_events",
            "Events accepted per author since start (restored events included): who fills the disks",
            metrics.author_events.clone(),
        );
        registry.register(
            "author_bytes",
            "Encoded bytes of the events accepted per author since start (restored events included)",
            metrics.author_bytes.clone(),
        );
        registry.register("peers_connected", "Connected peers", metrics.peers_connected.clone());
        registry.register("events_held", "Accepted events held", metrics.events_held.clone());
        registry.register("evidence_held", "Equivocation evidence held", metrics.evidence_held.clone());
        registry.register(
            "buffer_events",
            "Events waiting in the causal buffer",
            metrics.buffer_events.clone(),
        );
        registry.register("buffer_bytes", "Bytes charged to the causal buffer", metrics.buffer_bytes.clone());
        registry.register(
            "store_unstored_events",
            "Events from peers accepted and not yet durable (waiting for a commit or in the one in flight)",
            metrics.unstored_events.clone(),
        );
        registry.register(
            "peer_input_paused",
            "Times reading from peers paused because too many accepted events waited for the store",
            metrics.peer_input_paused.clone(),
        );
        registry.register(
            "dials_busy",
            "Dials a peer refused as busy (close code 11: it holds its cap of inbound connections)",
            metrics.dials_busy.clone(),
        );
        registry.register(
            "inbound_busy",
            "Inbound connections refused as busy (past overlay.inbound_max, close code 11)",
            metrics.inbound_busy.clone(),
        );
        Self { registry, ..metrics }
    }

    /// OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        encode(&mut out, &self.registry).expect("encoding into a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
