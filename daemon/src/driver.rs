//! The driver: one task owns the replica ([`cairn_protocol::Node`]) and drives it, in the
//! style of quinn's `ConnectionDriver`. Transport events, API commands and timers come in;
//! messages go out to the transport, commit jobs to the store's writer thread, changes to the
//! watch stream. The decisions live in sans-I/O state machines with time passed in, which the
//! simulator runs too: the replica, the group commit ([`crate::commit`]: what is stored
//! together, when, what each writer is answered, the full-disk back-off) and the peer
//! discipline ([`crate::discipline`]: muting peers that send too much invalid input). The
//! driver is the thin loop around them: it reads the clock, moves bytes, and logs.
//!
//! A commit that fails because the store's file system is full does not stop the daemon (see
//! [`crate::commit`]): the batch's writes fail with [`ServiceError::NoSpace`] (HTTP 507) and
//! commits are tried again after a back-off. Reads, status and replication go on from memory.
//! The first failure logs one warning, the first commit that succeeds again one line. Any
//! other store failure stops the daemon.

use crate::commit::MemberOp;
use crate::service::MemberChange;
use crate::service::MembershipBrief;
use std::net::SocketAddr;

use cairn_crypto::PublicKey;
use cairn_protocol::EventId;
use cairn_protocol::document::KeyKind;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::service::{
    AUTHOR_RATE_WINDOW, AuthorFigures, COMMAND_QUEUE_MAX, ChangeNotice, Command, EventInfo, EventQuery,
    KeyQuery, PeerInfo, PeerState, ServiceError, ServiceHandle, Status, WATCH_BUFFER_MAX, WriteAck,
};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_crypto::SecretKey;
use cairn_protocol::{Genesis, Node, NodeEvent, PendingEvents, SignatureChecks, SignatureVerdicts};
use tracing::{debug, error, info, warn};

use crate::backup::{BackupPiece, BackupRead};
use crate::commit::{
    Acked, CommitJob, Committed, GroupCommit, RETRY_MIN_MS, WRITES_QUEUED_BYTES_MAX, WRITES_QUEUED_MAX,
    WriteFailure,
};
use crate::discipline::{PeerDiscipline, Verdict};
use crate::metrics::{Metrics, PeerLabel, ReasonLabel};
use crate::store::{Append, Store, StoreError};
use crate::transport::{InboundCredit, Transport, TransportEvent};
use prometheus_client::metrics::counter::Counter;

/// While a peer's transport queue is full and the node still has output for it, the driver
/// looks again this often.
pub const TRANSMIT_RETRY: Duration = Duration::from_millis(5);
/// Inputs handled per loop turn before output is flushed, so one busy source cannot starve
/// transmission or the timer.
pub const INPUTS_PER_TURN_MAX: usize = 256;
/// Transport events queued towards the service.
pub const TRANSPORT_EVENTS_MAX: usize = 1_024;
/// Peer input handled in one loop turn before commands, timers and output get their turn: one
/// message of a catch-up (up to `MESSAGE_BYTES_MAX` of events to verify) can take tens of
/// milliseconds, so the turn is bounded by time, not by a message count.
pub const PEER_INPUT_PER_TURN: Duration = Duration::from_millis(5);
/// `Events` messages whose signatures are being checked, at most, while the loop goes on: one
/// on the verifier thread and one waiting for it, so the verifier always has the next batch at
/// hand while the loop applies the one before (its events, the document, the group commit) and
/// handles other input. Each holds its message's inbound credit, and one message is at most
/// `MESSAGE_BYTES_MAX` bytes, so this bounds the bytes held too. Past it, nothing more is read
/// from peers until a batch comes back.
pub const VERIFY_BATCHES_IN_FLIGHT_MAX: usize = 2;
/// How fast a peer may send waste. A message's inbound credit is held back for its wasted
/// bytes (its share of old events sent again, `OLD_DUPLICATE_SEQS` below their author's
/// newest, and of orphans dropped because the sender's buffer share is full) at this rate, one
/// message after another per peer, so a replay or orphan flood costs the node the decoding of
/// about this many bytes per second and peer (plus one `INBOUND_BYTES_PER_CONNECTION_MAX` of
/// credit, 2 MiB, read ahead). Duplicates of recent events are not waste: pushes, grafts and
/// sessions cross each other, and holding them back made more of them (a peer read slowly
/// misses the graft timeout, is grafted, and sends again).
pub const WASTED_INPUT_BYTES_PER_SEC: u64 = 4 * 1024 * 1024;
/// Inbound credits held back at most at once ([`WASTED_INPUT_BYTES_PER_SEC`]): each
/// connection holds at most `INBOUND_BYTES_PER_CONNECTION_MAX` of credit, so this is never
/// reached with the members Cairn allows; past it a credit is released at once.
pub const HELD_CREDITS_MAX: usize = 4 * cairn_protocol::limits::MEMBERS_MAX;

/// How long a message's inbound credit is held back: its wasted bytes at
/// [`WASTED_INPUT_BYTES_PER_SEC`].
pub fn wasted_input_hold(message_bytes: usize, wasted_share: f64) -> Duration {
    let wasted = message_bytes as f64 * wasted_share.clamp(0.0, 1.0);
    Duration::from_secs_f64(wasted / WASTED_INPUT_BYTES_PER_SEC as f64)
}
pub use crate::discipline::{INVALID_INPUTS_MAX, INVALID_INPUTS_WINDOW_MS, MUTE_MAX_MS, MUTE_MIN_MS};

/// What the driver needs to run.
pub struct DriverParts {
    /// The replica, already restored from the store.
    pub node: Node,
    /// This node's key.
    pub key: SecretKey,
    /// The genesis.
    pub genesis: Genesis,
    /// The store (moved to its writer thread).
    pub store: Store,
    /// The transport.
    pub transport: Transport,
    /// Its events.
    pub transport_events: mpsc::Receiver<TransportEvent>,
    /// Most local writes per commit.
    pub commit_writes_max: usize,
    /// The driver's side of the node's archive: which events are committed.
    pub archive: crate::archive::ArchiveHandle,
    /// The store's database, for listings.
    pub db: crate::store::SharedDb,
    /// The causal buffer's bound, for status.
    pub buffer_bytes_max: usize,
    /// Per member index: events and encoded bytes of it the store held at start.
    pub authored: Vec<(u64, u64)>,
    /// The node's key file: a key rotation replaces it.
    pub key_file: std::path::PathBuf,
    /// `timing.removal_quiet`.
    pub removal_quiet: Duration,
    /// The overlay's settings (`[overlay]`).
    pub overlay: cairn_protocol::OverlayConfig,
    /// The overlay's seed, from the operating system (`crate::overlay::seed`).
    pub overlay_seed: u64,
    /// The address this node's signed record publishes, if any (re-signed after a key
    /// rotation).
    pub advertised: Option<SocketAddr>,
    /// Threads that check one batch's signatures (`limits.verify_threads`, 0 resolved).
    pub verify_threads: usize,
}

/// A key rotation under way: asked for, its event being signed and stored.
struct Rotating {
    next: Arc<SecretKey>,
    /// `<key_file>.next`, holding `next` until the rotation is stored.
    next_file: std::path::PathBuf,
    /// The group commit's answer for the rotation's event.
    ack: oneshot::Receiver<Result<WriteAck, ServiceError>>,
    /// The operator's request.
    reply: oneshot::Sender<Result<crate::service::KeyRotated, ServiceError>>,
}

/// The keys in force as `node`'s accepted set resolves them: each seat's current key.
pub(crate) fn keys_in_force(node: &Node) -> std::collections::BTreeSet<PublicKey> {
    let resolution = node.adapter().membership();
    resolution.in_force().seats().iter().map(|seat| resolution.chains().current(&seat.founder)).collect()
}

/// The name of the seat `key` is (or was) a key of: the genesis's, or, for a key a membership
/// change brought in, its seat's in force; else the key, short.
fn seat_name(genesis: &Genesis, node: &Node, key: &PublicKey) -> String {
    if let Some(i) = genesis.member_idx(key) {
        return genesis.members()[i].name.clone();
    }
    let resolution = node.adapter().membership();
    resolution
        .seats_of(key)
        .iter()
        .find_map(|(founder, _)| resolution.in_force().seat(founder))
        .map_or_else(|| key.short(), |seat| seat.name.clone())
}

/// The file beside `key_file` that holds a key rotation's new key until the rotation is stored.
pub fn next_key_file(key_file: &std::path::Path) -> std::path::PathBuf {
    let mut name = key_file.file_name().map(std::ffi::OsStr::to_os_string).unwrap_or_default();
    name.push(".next");
    key_file.with_file_name(name)
}

/// What the store's writer thread reports for a job: the verdict, with the job given back.
type StoreDone = (Committed, CommitJob);

/// What the store's writer thread does, one request at a time, in the order they come: a
/// group commit, or a read for a backup (which thus waits for at most one commit, and delays
/// one by at most one read of [`crate::backup::BACKUP_READ_BYTES`]).
#[derive(Debug)]
pub(crate) enum StoreRequest {
    Commit(CommitJob),
    Backup(BackupRead, oneshot::Sender<Result<BackupPiece, String>>),
}

type WriteReply = oneshot::Sender<Result<WriteAck, ServiceError>>;

/// The driver. See the module docs.
pub struct Driver {
    node: Node,
    key: SecretKey,
    genesis: Genesis,
    transport: Transport,
    metrics: Arc<Metrics>,
    changes: broadcast::Sender<ChangeNotice>,
    n_changes: u64,
    started: Instant,
    last_seen: BTreeMap<PublicKey, Instant>,
    /// Input from peers is paused for the store (`GroupCommit::takes_peer_input`).
    input_paused: bool,
    archive: crate::archive::ArchiveHandle,
    db: crate::store::SharedDb,
    commit: GroupCommit<WriteReply>,
    store_jobs: std::sync::mpsc::Sender<StoreRequest>,
    store_done: mpsc::Receiver<StoreDone>,
    /// Whether the store's file system was full at the last commit (for the log lines).
    was_full: bool,
    warned: std::collections::BTreeSet<(PublicKey, &'static str)>,
    buffer_bytes_max: usize,
    /// The sum of the peers' rate-limited events already counted in the metric.
    rate_limited_seen: u64,
    discipline: PeerDiscipline,
    /// Peers the transport reports connected (the node may be ignoring some of them).
    linked: std::collections::BTreeSet<PublicKey>,
    /// Per member index: its events this node holds, and their bytes.
    authored: Vec<(u64, u64)>,
    /// `authored` at the start of the current rate window, and when it started.
    authored_window: (Instant, Vec<(u64, u64)>),
    /// Per member index: events and bytes per second over the last whole window.
    authored_rates: Vec<(f64, f64)>,
    /// Per member index: its `cairn_author_events` and `cairn_author_bytes` counters (looked up
    /// once, not per event).
    authored_metrics: Vec<(Counter, Counter)>,
    /// The keys in force (every seat's current key) as the transport last followed them.
    in_force: std::collections::BTreeSet<PublicKey>,
    /// An accepted event carried a membership op since the transport last followed it.
    membership_changed: bool,
    /// Keys refused for a double approval of their seat.
    double_approvers: std::collections::BTreeSet<PublicKey>,
    /// Peers whose last handshake failed for a protocol version mismatch: (ours, theirs).
    version_mismatch: BTreeMap<PublicKey, (u8, Option<u8>)>,
    /// When each author's newest event was accepted here (for the removal check).
    last_wrote: BTreeMap<PublicKey, Instant>,
    removal_quiet: Duration,
    key_file: std::path::PathBuf,
    rotating: Option<Rotating>,
    /// After a rotation: the new key, until handshakes present it (once a peer holds the
    /// rotation), with when the rotation was stored and each peer's sessions in sync then.
    identity_pending: Option<(Arc<SecretKey>, Instant, BTreeMap<PublicKey, u64>)>,
    /// Which members the transport dials (`crate::overlay`).
    topology: crate::overlay::Topology,
    /// The address this node's record publishes.
    advertised: Option<SocketAddr>,
    /// Batches whose signatures the verifier thread is checking, oldest first, each with its
    /// message's inbound credit (at most [`VERIFY_BATCHES_IN_FLIGHT_MAX`]).
    verifying: std::collections::VecDeque<(PendingEvents, InboundCredit, Duration)>,
    /// Inbound credits held back until their time ([`WASTED_INPUT_BYTES_PER_SEC`]), by release
    /// time (with a counter to keep equal times apart).
    held_credits: BTreeMap<(Instant, u64), InboundCredit>,
    n_held: u64,
    /// Per peer, when its last held credit is released: the next one's hold starts there.
    wasted_until: BTreeMap<PublicKey, Instant>,
    verify_jobs: std::sync::mpsc::SyncSender<SignatureChecks>,
    verdicts: mpsc::Receiver<SignatureVerdicts>,
}

impl Driver {
    /// Builds the driver and its handle, and starts the store's writer thread.
    pub(crate) fn new(
        parts: DriverParts,
    ) -> (Self, ServiceHandle, mpsc::Receiver<Command>, mpsc::Receiver<TransportEvent>) {
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE_MAX);
        let (changes, _) = broadcast::channel(WATCH_BUFFER_MAX);
        let metrics = Arc::new(Metrics::new());
        let (store_jobs, store_done) = spawn_store_writer(parts.store);
        let (verify_jobs, verdicts) = spawn_verifier(parts.verify_threads);
        // Per key of the roster (the genesis members, then keys membership ops named), as the
        // store counted them.
        let roster: Vec<PublicKey> = parts.node.adapter().roster().keys().to_vec();
        let n_members = roster.len();
        let mut authored = parts.authored;
        authored.resize(n_members, (0, 0));
        let authored_metrics: Vec<(Counter, Counter)> = roster
            .iter()
            .zip(&authored)
            .map(|(key, (events, bytes))| {
                let counters = metrics.author_counters(seat_name(&parts.genesis, &parts.node, key));
                counters.0.inc_by(*events);
                counters.1.inc_by(*bytes);
                counters
            })
            .collect();
        let handle = ServiceHandle {
            commands: commands_tx,
            changes: changes.clone(),
            metrics: metrics.clone(),
            store: store_jobs.clone(),
            backup_slot: Arc::default(),
        };
        // What the transport was started with (`daemon::run`).
        let in_force = keys_in_force(&parts.node);
        let topology = crate::overlay::Topology::new(parts.key.public(), parts.overlay_seed, parts.overlay);
        let driver = Self {
            node: parts.node,
            key: parts.key,
            genesis: parts.genesis,
            transport: parts.transport,
            metrics,
            changes,
            n_changes: 0,
            started: Instant::now(),
            last_seen: BTreeMap::new(),
            input_paused: false,
            archive: parts.archive,
            db: parts.db,
            commit: GroupCommit::new(parts.commit_writes_max),
            store_jobs,
            store_done,
            was_full: false,
            warned: Default::default(),
            buffer_bytes_max: parts.buffer_bytes_max,
            rate_limited_seen: 0,
            discipline: PeerDiscipline::new(),
            linked: Default::default(),
            authored_window: (Instant::now(), authored.clone()),
            authored_rates: vec![(0.0, 0.0); n_members],
            authored,
            authored_metrics,
            in_force,
            // The membership the node resumed may differ from the genesis's.
            membership_changed: true,
            last_wrote: BTreeMap::new(),
            version_mismatch: BTreeMap::new(),
            double_approvers: std::collections::BTreeSet::new(),
            removal_quiet: parts.removal_quiet,
            key_file: parts.key_file,
            rotating: None,
            identity_pending: None,
            topology,
            advertised: parts.advertised,
            verifying: std::collections::VecDeque::new(),
            held_credits: BTreeMap::new(),
            n_held: 0,
            wasted_until: BTreeMap::new(),
            verify_jobs,
            verdicts,
        };
        (driver, handle, commands_rx, parts.transport_events)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn name_of(&self, key: &PublicKey) -> String {
        seat_name(&self.genesis, &self.node, key)
    }

    /// Runs until `shutdown` turns true, then drains: queued writes are stored and
    /// acknowledged, accepted events stored, output flushed for up to `grace`. Returns an error
    /// if the store failed (the daemon must exit and be restarted).
    pub(crate) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut transport_events: mpsc::Receiver<TransportEvent>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
        grace: Duration,
    ) -> anyhow::Result<()> {
        let watchdog = sd_notify::watchdog_enabled().map(|period| period / 2);
        let mut next_watchdog = Instant::now();
        loop {
            if *shutdown.borrow() || self.commit.failed().is_some() || self.archive.read_error().is_some() {
                break;
            }
            // The watchdog's time is a wake-up of its own: a node with no peer connected and no
            // client has no other timer, and systemd would kill it for being silent.
            let wake = earliest(self.next_wake(), watchdog.map(|_| next_watchdog));
            tokio::select! {
                biased;
                _ = shutdown.changed() => {}
                Some((committed, job)) = self.store_done.recv() => self.on_committed(committed, job),
                // A batch's verdicts first among peer input: its events are the oldest.
                Some(verdicts) = self.verdicts.recv() => self.on_verdicts(verdicts),
                // Local commands and timers first: a peer flooding data must not delay the
                // API or anti-entropy.
                Some(command) = commands.recv() => {
                    self.on_command(command);
                    for _ in 1..INPUTS_PER_TURN_MAX {
                        match commands.try_recv() {
                            Ok(command) => self.on_command(command),
                            Err(_) => break,
                        }
                    }
                }
                () = sleep_until_opt(wake) => {
                    let now = self.now_ms();
                    self.node.handle_timeout(now);
                }
                // Backpressure: while too many events from peers wait for the store, nothing
                // more is read from peers until a commit lands (`GroupCommit::takes_peer_input`);
                // the transport's bounded queues and QUIC's flow control hold the peers back.
                Some(event) = transport_events.recv(), if self.takes_peer_input() => {
                    let turn_started = Instant::now();
                    self.on_transport(event);
                    for _ in 1..INPUTS_PER_TURN_MAX {
                        if turn_started.elapsed() >= PEER_INPUT_PER_TURN {
                            break;
                        }
                        // What the replica accepted goes to the group commit first, so the
                        // bound is checked against it.
                        self.drain_node_events();
                        if !self.takes_peer_input() {
                            break;
                        }
                        match transport_events.try_recv() {
                            Ok(event) => self.on_transport(event),
                            Err(_) => break,
                        }
                    }
                }
            }
            self.after_input();
            if let Some(period) = watchdog
                && Instant::now() >= next_watchdog
            {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                next_watchdog = Instant::now() + period;
            }
        }
        if let Some(error) = self.commit.failed() {
            let error = error.to_owned();
            self.answer_writers();
            anyhow::bail!("{error}");
        }
        if let Some(error) = self.archive.read_error() {
            anyhow::bail!(
                "{error}; the store is damaged or failed, so the daemon stops rather than go on without it. Run \
                 `cairnd check-store`; if it reports damage, move the store away and restart"
            );
        }
        // Drain: no new commands; store what was accepted and acknowledge queued writes.
        commands.close();
        while let Ok(command) = commands.try_recv() {
            self.on_command(command);
        }
        let deadline = Instant::now() + grace;
        self.commit.start_draining();
        loop {
            self.after_input();
            if self.commit.is_done_draining() || Instant::now() >= deadline {
                break;
            }
            match tokio::time::timeout_at(deadline.into(), self.store_done.recv()).await {
                Ok(Some((committed, job))) => self.on_committed(committed, job),
                _ => break,
            }
        }
        if let Some(error) = self.commit.failed() {
            let error = error.to_owned();
            self.answer_writers();
            anyhow::bail!("{error}");
        }
        if self.commit.no_space().is_some() && self.commit.n_peer_events_waiting() > 0 {
            warn!(
                events = self.commit.n_peer_events_waiting(),
                "stopping with events from peers that could not be stored (the file system is full); \
                 the node fetches them from its peers again after the restart"
            );
        }
        self.commit.fail_queued(&WriteFailure::Storage("the daemon is shutting down".to_owned()));
        self.answer_writers();
        // Give queued messages a moment to leave, then close connections.
        let flush_until = Instant::now() + grace.min(Duration::from_millis(500));
        while Instant::now() < flush_until && self.has_output() {
            self.transmit();
            tokio::time::sleep(TRANSMIT_RETRY).await;
        }
        self.transport.shutdown().await;
        Ok(())
    }

    /// The next time the loop must wake without input: the replica's timer, the group
    /// commit's, the end of a mute, or a retry of output the transport had no room for.
    fn next_wake(&self) -> Option<Instant> {
        let at = |ms: u64| self.started + Duration::from_millis(ms);
        let timers = [
            self.node.poll_timeout(),
            self.commit.poll_timeout(),
            self.discipline.poll_timeout(),
            Some(self.topology.next_timeout()),
        ];
        let timer = timers.into_iter().flatten().min().map(at);
        let retry = self.has_output().then(|| Instant::now() + TRANSMIT_RETRY);
        let credit = self.held_credits.keys().next().map(|(at, _)| *at);
        earliest(earliest(timer, retry), credit)
    }

    /// Gives `peer`'s message's inbound credit back to its connection after `hold`, counted
    /// from the release of its last held one (at once if there is nothing to hold).
    fn release_credit(&mut self, peer: PublicKey, credit: InboundCredit, hold: Duration) {
        if hold.is_zero() || self.held_credits.len() >= HELD_CREDITS_MAX {
            return;
        }
        let now = Instant::now();
        let from = self.wasted_until.get(&peer).copied().filter(|at| *at > now).unwrap_or(now);
        let until = from + hold;
        self.wasted_until.insert(peer, until);
        self.n_held += 1;
        self.held_credits.insert((until, self.n_held), credit);
    }

    /// Gives back the held credits whose time has come.
    fn release_held_credits(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.held_credits.first_entry()
            && entry.key().0 <= now
        {
            entry.remove();
        }
        if self.held_credits.is_empty() {
            self.wasted_until.clear();
        }
    }

    /// Whether the loop reads more from peers: not while too many events from peers wait for
    /// the store (`GroupCommit::takes_peer_input`), nor while [`VERIFY_BATCHES_IN_FLIGHT_MAX`]
    /// batches wait for their signatures.
    fn takes_peer_input(&self) -> bool {
        self.commit.takes_peer_input() && self.verifying.len() < VERIFY_BATCHES_IN_FLIGHT_MAX
    }

    /// The verifier thread checked the oldest batch's signatures: its events are accepted or
    /// buffered now, and its message's credit is given back to its connection.
    fn on_verdicts(&mut self, verdicts: SignatureVerdicts) {
        // The verifier answers each batch once, in the order they were sent.
        let (pending, credit, hold) =
            self.verifying.pop_front().expect("verdicts come only for batches sent to the verifier");
        let now = self.now_ms();
        let peer = pending.peer();
        self.node.finish_events(pending, verdicts, now);
        self.release_credit(peer, credit, hold);
    }

    fn has_output(&self) -> bool {
        self.node.connected_peers().iter().any(|p| self.node.queued(p) != (0, 0))
    }

    /// Whether `key` is a proven equivocator: this node holds evidence against it.
    fn is_equivocator(&self, key: &PublicKey) -> bool {
        let adapter = self.node.adapter();
        adapter.roster().idx(key).is_some_and(|idx| adapter.is_equivocator(idx))
    }

    /// Whether `key` is refused for good: a proven equivocator, or a double approver.
    fn is_refused(&self, key: &PublicKey) -> bool {
        self.double_approvers.contains(key) || self.is_equivocator(key)
    }

    fn is_muted(&self, peer: &PublicKey) -> bool {
        self.discipline.is_muted(peer, self.now_ms())
    }

    /// Counts one invalid input from `peer`; too many in a window mute it: its connection is
    /// closed and whatever it sends is ignored until the mute ends, twice as long each time.
    fn strike(&mut self, peer: PublicKey) {
        let now = self.now_ms();
        if let Verdict::Muted { for_ms } = self.discipline.strike(peer, now) {
            warn!(peer = %self.name_of(&peer), mute_ms = for_ms,
                "peer sent more than {INVALID_INPUTS_MAX} invalid inputs in {INVALID_INPUTS_WINDOW_MS} ms: \
                 disconnecting it and ignoring it for a while");
            self.node.handle_disconnected(&peer);
            self.transport.disconnect(&peer);
        }
    }

    /// Peers whose mute ended while their transport link is up start afresh.
    fn unmute_expired(&mut self) {
        let now_ms = self.now_ms();
        for peer in self.discipline.expire(now_ms) {
            if self.linked.contains(&peer) && !self.node.is_connected(&peer) {
                self.node.handle_connected(peer, now_ms);
            }
        }
    }

    fn after_input(&mut self) {
        self.release_held_credits();
        self.unmute_expired();
        self.drain_node_events();
        self.follow_membership();
        self.drive_overlay();
        self.transmit();
        self.start_commit();
        self.answer_writers();
        // A rotation refused before it reached the store is answered here.
        self.answer_rotation();
        self.update_gauges();
        self.roll_author_window();
    }

    /// Closes the per-author rate window once it is [`AUTHOR_RATE_WINDOW`] old.
    fn roll_author_window(&mut self) {
        let elapsed = self.authored_window.0.elapsed();
        if elapsed < AUTHOR_RATE_WINDOW {
            return;
        }
        let secs = elapsed.as_secs_f64();
        for ((now, then), rate) in
            self.authored.iter().zip(&self.authored_window.1).zip(&mut self.authored_rates)
        {
            *rate = ((now.0 - then.0) as f64 / secs, (now.1 - then.1) as f64 / secs);
        }
        self.authored_window = (Instant::now(), self.authored.clone());
    }

    /// Counts an accepted event for its author.
    fn count_authored(&mut self, author: usize, bytes: usize) {
        // A key a membership op brought into the roster gets its figures when it first writes.
        while self.authored.len() <= author && self.authored.len() < self.node.adapter().roster().len() {
            let idx = self.authored.len();
            let name =
                self.node.adapter().roster().key(idx).map_or_else(String::new, |key| self.name_of(key));
            self.authored.push((0, 0));
            self.authored_window.1.push((0, 0));
            self.authored_rates.push((0.0, 0.0));
            self.authored_metrics.push(self.metrics.author_counters(name));
        }
        let Some(tally) = self.authored.get_mut(author) else { return };
        tally.0 += 1;
        tally.1 += bytes as u64;
        if let Some((events, total)) = self.authored_metrics.get(author) {
            events.inc();
            total.inc_by(bytes as u64);
        }
    }

    fn on_transport(&mut self, event: TransportEvent) {
        let now = self.now_ms();
        match event {
            TransportEvent::Connected { peer, address } => {
                self.version_mismatch.remove(&peer);
                self.linked.insert(peer);
                self.topology.mark();
                if self.is_muted(&peer) {
                    debug!(peer = %self.name_of(&peer), "ignoring a muted peer's new connection for now");
                } else if self.node.handle_connected(peer, now) {
                    info!(peer = %self.name_of(&peer), %address, "peer connected");
                    self.last_seen.insert(peer, Instant::now());
                } else {
                    warn!(peer = %self.name_of(&peer), "refusing a connection from a refused peer");
                    self.transport.refuse(&peer);
                }
            }
            TransportEvent::VersionMismatch { peer, ours, theirs } => {
                self.metrics.version_mismatches.get_or_create(&PeerLabel { peer: self.name_of(&peer) }).inc();
                // A stray handshake of a peer that is connected says nothing about the peer.
                if !self.linked.contains(&peer) {
                    self.version_mismatch.insert(peer, (ours, theirs));
                }
            }
            TransportEvent::Disconnected { peer, reason, removed_by_peer } => {
                self.linked.remove(&peer);
                self.topology.mark();
                if self.node.is_connected(&peer) {
                    info!(peer = %self.name_of(&peer), %reason, "peer lost");
                }
                self.node.handle_disconnected(&peer);
                // A peer that closes the old key's connection as out of force (code 8) holds
                // the rotation: new handshakes may present the new key.
                if removed_by_peer {
                    self.rotation_reached_a_peer(true);
                }
            }
            // The credit is dropped at the end of this arm, or once the message's signatures are
            // checked: the connection may read on.
            TransportEvent::Message { peer, bytes, credit } => {
                if self.is_muted(&peer) {
                    return;
                }
                self.last_seen.insert(peer, Instant::now());
                self.metrics
                    .bytes_in
                    .get_or_create(&PeerLabel { peer: self.name_of(&peer) })
                    .inc_by(bytes.len() as u64);
                let Some((pending, checks)) = self.node.begin_message(peer, &bytes, now) else { return };
                let hold = wasted_input_hold(bytes.len(), pending.wasted_share());
                drop(bytes);
                if checks.is_empty() && self.verifying.is_empty() {
                    // Nothing to check and nothing before it: finished at once.
                    self.node.finish_events(pending, checks.run(1), now);
                    self.release_credit(peer, credit, hold);
                    return;
                }
                if self.verify_jobs.send(checks).is_err() {
                    // The verifier never stops while the driver holds its queue; its thread
                    // panicked, which is a bug.
                    panic!("the signature verifier thread stopped");
                }
                self.verifying.push_back((pending, credit, hold));
            }
        }
    }

    fn drain_node_events(&mut self) {
        while let Some(event) = self.node.poll_event() {
            match event {
                NodeEvent::Accepted { event, from } => {
                    self.metrics.events_accepted.inc();
                    if event.event().ops.iter().any(cairn_protocol::Op::is_membership) {
                        self.membership_changed = true;
                    }
                    self.last_wrote.insert(event.event().header.author, Instant::now());
                    self.count_authored(event.author_idx(), event.bytes().len());
                    if from.is_some() {
                        let now = self.now_ms();
                        self.commit.handle_accepted(event, now);
                    } else {
                        // Own events are accepted only once stored (`commit_writes`).
                        self.metrics.own_events.inc();
                    }
                }
                NodeEvent::Rejected { peer, id, reason } => {
                    self.strike(peer);
                    self.metrics.events_rejected.get_or_create(&ReasonLabel { reason: reason.name() }).inc();
                    if self.warned.insert((peer, reason.name())) {
                        warn!(peer = %self.name_of(&peer), %reason, id = ?id,
                            "rejected an invalid event (further rejections of this kind from this peer are only counted)");
                    }
                }
                NodeEvent::Evidence(evidence) => {
                    let author = evidence.author();
                    warn!(author = %self.name_of(&author), seq = evidence.seq(), "equivocation evidence: this member signed two events with one seq");
                    self.commit.handle_evidence(author.0, evidence.encode());
                }
                NodeEvent::BadMessage { peer, misbehaviour, detail } => {
                    self.strike(peer);
                    let reason = misbehaviour.name();
                    self.metrics.bad_messages.get_or_create(&ReasonLabel { reason }).inc();
                    if self.warned.insert((peer, reason)) {
                        warn!(peer = %self.name_of(&peer), reason, %detail,
                            "bad message from peer (further ones of this kind from this peer are only counted)");
                    }
                }
                NodeEvent::PeerRefused(peer) => {
                    if self.is_equivocator(&peer) {
                        warn!(peer = %self.name_of(&peer), "refusing a proven equivocator");
                        self.transport.refuse(&peer);
                    } else {
                        // Out of force: the membership sync below retires it.
                        self.membership_changed = true;
                    }
                }
                NodeEvent::Addresses { key, addrs } => {
                    if self.topology.learn(key, &addrs, &self.transport) {
                        debug!(peer = %self.name_of(&key), ?addrs, "learned a member's address from its signed record");
                    }
                }
                NodeEvent::Changed(changes) => {
                    for change in changes {
                        self.n_changes += 1;
                        // No subscriber is fine: the send only fails when nobody listens.
                        let _ = self.changes.send(ChangeNotice {
                            kind: change.kind,
                            key: change.key,
                            position: self.n_changes,
                        });
                    }
                }
            }
        }
    }

    /// Makes the transport follow the membership in force, once an accepted event carried a
    /// membership op: keys a change brought in are admitted (and dialed, if their address is
    /// configured), keys it took out of force are retired (their connections closed, their
    /// handshakes refused, saying why).
    fn follow_membership(&mut self) {
        self.rotation_reached_a_peer(false);
        if !std::mem::take(&mut self.membership_changed) {
            return;
        }
        let resolution = self.node.adapter().membership();
        // This node's own keys (before and after a rotation) are never peers.
        let me = self.key.public();
        let own_seats: Vec<PublicKey> = resolution.seats_of(&me).iter().map(|(seat, _)| *seat).collect();
        let is_own = |key: &PublicKey| {
            *key == me || resolution.seats_of(key).iter().any(|(seat, _)| own_seats.contains(seat))
        };
        // A double approval is handled like an equivocation: the keys that signed the seat's
        // two votes, and its key of now, are refused for good (its later votes and writes are
        // already out, rule M7 and M9).
        let mut double_approvers = Vec::new();
        for double in resolution.double_approvals() {
            for key in [double.first.key, double.second.key, resolution.chains().current(&double.seat)] {
                if !is_own(&key) && !self.double_approvers.contains(&key) {
                    double_approvers.push(key);
                }
            }
        }
        let in_force = keys_in_force(&self.node);
        for key in double_approvers {
            warn!(peer = %self.name_of(&key), "refusing a double approver: its seat approved two changes of one membership and round");
            self.transport.refuse_for(&key, crate::tls::KeyRefusal::DoubleApprover);
            self.double_approvers.insert(key);
        }
        if in_force == self.in_force {
            return;
        }
        self.topology.mark();
        let mut admit = Vec::new();
        for key in in_force.difference(&self.in_force).filter(|key| !is_own(key)) {
            // A rotated seat's new key is reached at its founder's address until the new key's
            // own record arrives: the one the transport dials the founder at, from the founder's
            // signed record if one came (it replaces the configured seed, `crate::overlay`).
            let address =
                resolution.seats_of(key).iter().find_map(|(seat, _)| self.transport.address_of(seat));
            admit.push((*key, address));
        }
        // This node's own old key too: nobody may connect as it.
        let retire: Vec<PublicKey> =
            self.in_force.difference(&in_force).filter(|key| **key != me).copied().collect();
        for (key, address) in admit {
            if self.transport.admit(key, address) {
                info!(peer = %self.name_of(&key), "a membership change in force brought this key in");
            }
        }
        for key in &retire {
            warn!(peer = %self.name_of(key), "a membership change in force took this key out: its connections are closed and refused");
            self.transport.retire(key);
        }
        self.in_force = in_force;
    }

    fn transmit(&mut self) {
        for peer in self.node.connected_peers() {
            while self.transport.has_room(&peer) {
                let Some(bytes) = self.node.poll_transmit_to(&peer) else { break };
                let n = bytes.len() as u64;
                if self.transport.send(&peer, bytes).is_err() {
                    break;
                }
                self.metrics.bytes_out.get_or_create(&PeerLabel { peer: self.name_of(&peer) }).inc_by(n);
            }
        }
    }

    /// Hands the next group commit to the store's writer thread, if one is due.
    fn start_commit(&mut self) {
        let now = self.now_ms();
        let Some(job) = self.commit.poll_commit(&mut self.node, &self.key, now) else { return };
        if let Err(std::sync::mpsc::SendError(request)) = self.store_jobs.send(StoreRequest::Commit(job)) {
            // Only a writer thread that stopped makes this fail.
            let StoreRequest::Commit(job) = request else { unreachable!("a commit was sent") };
            error!("the store's writer thread has stopped; the daemon stops");
            self.commit.handle_unsent(job, "the store's writer thread has stopped", &mut self.node);
        }
    }

    fn on_committed(&mut self, committed: Committed, job: CommitJob) {
        self.metrics.commits.inc();
        match &committed {
            Committed::Ok => {
                self.metrics.committed_events.inc_by(job.events.len() as u64);
                if std::mem::take(&mut self.was_full) {
                    info!("the store's file system has room again: writes are stored and acknowledged again");
                }
            }
            Committed::NoSpace { reason, .. } => {
                if !std::mem::replace(&mut self.was_full, true) {
                    warn!(%reason, retry_in_ms = RETRY_MIN_MS,
                        "the store's file system is full: writes fail (HTTP 507) until there is room again, and the \
                         store is tried again by itself; reads, status and replication go on (further failures are \
                         logged at debug level)");
                } else {
                    debug!(%reason, peer_events = self.commit.n_peer_events_waiting(), "commit failed: no space");
                }
            }
            Committed::Failed { reason } => {
                error!(%reason, "the store failed; writes are no longer acknowledged and the daemon stops");
            }
        }
        let now = self.now_ms();
        let stored = matches!(committed, Committed::Ok);
        let rotated_to = job.node_key.filter(|_| stored);
        let ids: Vec<EventId> =
            if stored { job.events.iter().map(|event| EventId(event.id())).collect() } else { Vec::new() };
        if stored && let Some(delta) = &job.document {
            self.archive.committed_covered(&delta.covered);
        }
        self.commit.handle_committed(committed, job, &mut self.node, now);
        // After `handle_committed`, which hands the job's own events to the node: every event
        // of the job is in the store now, and read from there.
        self.archive.committed(ids);
        // Before any later job is prepared: it must be signed by the new key.
        if rotated_to.is_some() {
            self.finish_rotation();
        }
        // The next job goes to the store at once, before the writers are answered and the rest
        // of the turn runs (transmit, gauges): the store commits it meanwhile instead of
        // waiting for them. What the node accepted is drained first, so that the job holds
        // every event from peers whose changes are in the document delta it takes.
        self.drain_node_events();
        self.start_commit();
        self.answer_writers();
        self.answer_rotation();
    }

    /// `cairnd rotate-key`: a new key is made and written beside the key file, and the old key
    /// signs its rotation to it (`docs/PROTOCOL.md` §17), in an event of its own; once that is
    /// stored (with the new key as the store's node key, in the same transaction) the new key
    /// replaces the key file and signs from then on (see [`Driver::finish_rotation`]).
    fn start_rotation(&mut self, reply: oneshot::Sender<Result<crate::service::KeyRotated, ServiceError>>) {
        let refuse = |why: String| Err(ServiceError::Membership(why));
        if self.rotating.is_some() || self.identity_pending.is_some() {
            let _ =
                reply.send(refuse("a key rotation is under way already; wait until it is done".to_owned()));
            return;
        }
        if self.node.connected_peers().is_empty() {
            // The rotation reaches the others over the old key's connections: new ones present
            // the new key, which nobody admits before it holds the rotation.
            let _ = reply.send(refuse(
                "no peer is connected: the rotation must reach a peer over the old key's connections; retry once one is"
                    .to_owned(),
            ));
            return;
        }
        if let Some(refusal) = self.node.write_refusal(&self.key.public()) {
            let _ = reply.send(Err(ServiceError::NotReady(refusal)));
            return;
        }
        let next = SecretKey::generate();
        let next_file = next_key_file(&self.key_file);
        if let Err(error) = next.write_file(&next_file) {
            let _ = reply.send(Err(ServiceError::Storage {
                reason: format!("cannot write the new key to {}: {error}", next_file.display()),
            }));
            return;
        }
        let next = Arc::new(next);
        let (tx, ack) = oneshot::channel();
        self.commit.handle_member_op(MemberOp::Rotate(next.clone()), tx);
        info!(new_key = %next.public(), file = %next_file.display(), "rotating this node's key");
        self.rotating = Some(Rotating { next, next_file, ack, reply });
    }

    /// The rotation's event is stored, and the store names the new key: the new key file
    /// replaces the old (the old key is gone from disk), and the node signs with the new key.
    /// Handshakes keep presenting the old key until a peer holds the rotation.
    fn finish_rotation(&mut self) {
        let Some(rotating) = &self.rotating else { return };
        let next = rotating.next.clone();
        if let Err(error) = std::fs::rename(&rotating.next_file, &self.key_file).and_then(|()| {
            let dir = self
                .key_file
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            std::fs::File::open(dir)?.sync_all()
        }) {
            // The store names the new key already; a start finishes the rename (see `daemon`).
            error!(%error, file = %rotating.next_file.display(),
                "cannot move the new key over the key file; the next start does it");
        }
        let old = self.key.public();
        self.key = SecretKey::from_seed(&next.seed_bytes());
        self.node.rekey(next.public());
        let sessions = self
            .node
            .connected_peers()
            .into_iter()
            .map(|peer| (peer, self.node.peer_stats(&peer).map_or(0, |s| s.sessions_in_sync)))
            .collect();
        // Dials that peers refuse under the old key (they hold the rotation) try the new one.
        self.transport.add_alternate_identity(&next);
        self.identity_pending = Some((next.clone(), Instant::now(), sessions));
        info!(old = %old, new = %next.public(), "the key rotation is stored: this node signs with its new key");
    }

    /// Answers the operator once the rotation's event is acknowledged (or failed).
    fn answer_rotation(&mut self) {
        let Some(rotating) = &mut self.rotating else { return };
        let answer = match rotating.ack.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => return,
            Ok(Ok(write)) => Ok(crate::service::KeyRotated { key: rotating.next.public(), write }),
            Ok(Err(error)) => Err(error),
            Err(oneshot::error::TryRecvError::Closed) => {
                Err(ServiceError::Storage { reason: "the rotation's commit was dropped".to_owned() })
            }
        };
        let Some(rotating) = self.rotating.take() else { return };
        // The new key is thrown away only when the rotation is certainly not stored: refused
        // before it was signed, never queued, or a full disk the store proved it did not reach.
        // A store failure may have stored it: the key stays beside the key file, and the next
        // start looks at what the store names (`daemon::finish_key_rotation`).
        let not_stored = matches!(
            &answer,
            Err(ServiceError::NotReady(_)
                | ServiceError::Membership(_)
                | ServiceError::WritesQueued { .. }
                | ServiceError::NoSpace { .. })
        );
        if not_stored && self.identity_pending.is_none() {
            let _ = std::fs::remove_file(&rotating.next_file);
        }
        let _ = rotating.reply.send(answer);
    }

    /// Switches the transport's server identity to the new key once a peer holds the rotation:
    /// it closed the old key's connection as out of force (code 8), or a sync session with it
    /// ended in sync since. Until then peers that dial this node expect the old key, and only a
    /// node holding the rotation admits the new one; this node's own dials try both keys
    /// meanwhile (`Transport::add_alternate_identity`), so it reaches every peer whose address it
    /// knows either way.
    fn rotation_reached_a_peer(&mut self, removed_by_peer: bool) {
        let Some((next, _, sessions)) = &self.identity_pending else { return };
        let synced = sessions
            .iter()
            .any(|(peer, before)| self.node.peer_stats(peer).is_some_and(|s| s.sessions_in_sync > *before));
        if !(removed_by_peer || synced) {
            return;
        }
        self.transport.set_identity(next);
        // The new key's address record: peers that hold the rotation dial the new key there.
        if let Some(address) = self.advertised {
            let record = crate::overlay::own_record(&self.genesis.cluster_id(), next, address);
            self.node.set_own_addr(record);
        }
        self.identity_pending = None;
    }

    /// Brings the overlay up to date (if something changed or its timer is due) with the
    /// members it may dial: in force, not this node, not refused, with a known address.
    fn drive_overlay(&mut self) {
        let now = self.now_ms();
        if !self.topology.is_due(now) {
            return;
        }
        let me = self.key.public();
        let members: Vec<PublicKey> = self
            .in_force
            .iter()
            .filter(|key| **key != me && !self.is_refused(key))
            .filter(|key| self.transport.address_of(key).is_some())
            .copied()
            .collect();
        let linked = &self.linked;
        self.topology.update(&members, |key| linked.contains(key), now, &self.transport);
    }

    /// Sends the group commit's answers to the writers.
    fn answer_writers(&mut self) {
        while let Some((reply, answer)) = self.commit.poll_reply() {
            let answer = match answer {
                Ok(Acked { event }) => {
                    self.metrics.writes.inc();
                    Ok(WriteAck { id: event.id(), seq: event.seq(), lamport: event.lamport() })
                }
                Err(failure) => {
                    self.metrics.write_errors.inc();
                    Err(match failure {
                        WriteFailure::NotReady(cairn_protocol::WriteError::Membership(why)) => {
                            ServiceError::Membership(why.to_string())
                        }
                        WriteFailure::NotReady(why) => ServiceError::NotReady(why),
                        WriteFailure::QueueFull => ServiceError::WritesQueued {
                            writes_max: WRITES_QUEUED_MAX,
                            bytes_max: WRITES_QUEUED_BYTES_MAX,
                        },
                        WriteFailure::NoSpace(message) => ServiceError::NoSpace { message },
                        WriteFailure::Storage(reason) => ServiceError::Storage { reason },
                    })
                }
            };
            // A writer that went away does not mind.
            let _ = reply.send(answer);
        }
    }

    fn update_gauges(&mut self) {
        // The node counts rate-limited events per peer; the metric is their sum.
        let rate_limited: u64 = self
            .genesis
            .members()
            .iter()
            .filter_map(|member| self.node.peer_stats(&member.key))
            .map(|stats| stats.events_rate_limited)
            .sum();
        self.metrics.rate_limited_events.inc_by(rate_limited.saturating_sub(self.rate_limited_seen));
        self.rate_limited_seen = self.rate_limited_seen.max(rate_limited);
        let adapter = self.node.adapter();
        let dropped = adapter.orphans_dropped();
        self.metrics.orphans_dropped.inc_by(dropped.saturating_sub(self.metrics.orphans_dropped.get()));
        let (n_buffered, buffer_bytes) = adapter.buffer_use();
        let transport = self.transport.counters();
        self.metrics.dials_busy.inc_by(transport.n_dials_busy.saturating_sub(self.metrics.dials_busy.get()));
        self.metrics
            .inbound_busy
            .inc_by(transport.n_inbound_busy.saturating_sub(self.metrics.inbound_busy.get()));
        self.metrics.peers_connected.set(self.node.connected_peers().len() as i64);
        self.metrics.events_held.set(adapter.n_accepted() as i64);
        self.metrics.evidence_held.set(adapter.evidence().count() as i64);
        self.metrics.buffer_events.set(n_buffered as i64);
        self.metrics.buffer_bytes.set(buffer_bytes as i64);
        self.metrics.unstored_events.set(self.commit.peer_events_unstored().0 as i64);
        let paused = !self.commit.takes_peer_input();
        if paused && !self.input_paused {
            debug!(unstored = ?self.commit.peer_events_unstored(), "pausing input from peers until a store commit lands");
            self.metrics.peer_input_paused.inc();
        }
        self.input_paused = paused;
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Write(mut ops, reply) => {
                // A context is checked (its events held here) and reduced (those in another's
                // causal past dropped) before the ops' limits are.
                let checked = self.node.check_seen(&ops).and_then(|()| {
                    self.node.reduce_seen(&mut ops);
                    Node::check_ops(&ops)
                });
                if let Err(error) = checked {
                    self.metrics.write_errors.inc();
                    let _ = reply.send(Err(ServiceError::Invalid(error)));
                } else if let Some(refusal) = self.node.write_refusal(&self.key.public()) {
                    self.metrics.write_errors.inc();
                    let _ = reply.send(Err(ServiceError::NotReady(refusal)));
                } else {
                    self.commit.handle_write(ops, reply);
                }
            }
            Command::Register(key, reply) => {
                let _ = reply.send(self.node.register(&key));
            }
            Command::Counter(key, reply) => {
                let _ = reply.send(self.node.document().counter(&key));
            }
            Command::SetMembers(key, reply) => {
                let _ = reply.send(self.node.document().set_member_contexts(&key));
            }
            Command::Keys(query, reply) => {
                let document = self.node.document();
                let keys = match query.kind {
                    KeyKind::Register => key_page(document.register_keys(), &query),
                    KeyKind::Counter => key_page(document.counter_keys(), &query),
                    KeyKind::Set => key_page(document.set_keys(), &query),
                };
                let _ = reply.send(keys);
            }
            Command::Events(query, reply) => {
                let _ = reply.send(self.events(&query));
            }
            Command::Event(id, reply) => {
                let _ = reply.send(self.event_info(&id));
            }
            Command::Evidence(reply) => {
                let _ = reply.send(self.node.adapter().evidence().cloned().collect());
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.peers());
            }
            Command::Membership(reply) => {
                let adapter = self.node.adapter();
                let resolution = adapter.membership().clone();
                let pending = resolution
                    .pending()
                    .into_iter()
                    .map(|(id, votes)| (id, votes, adapter.change(&id).cloned()))
                    .collect();
                let policy = self.genesis.policy();
                let _ = reply.send(crate::service::MembershipInfo { resolution, pending, policy });
            }
            Command::MemberChange(request, reply) => match self.member_op(request) {
                Ok(op) => self.commit.handle_member_op(op, reply),
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            Command::RotateKey(reply) => self.start_rotation(reply),
            Command::Health(reply) => {
                let me = self.key.public();
                let store_problem =
                    self.commit.failed().map(str::to_owned).or_else(|| self.archive.read_error());
                let own_seq_learning = match self.node.write_refusal(&me) {
                    Some(refusal @ cairn_protocol::WriteError::OwnSeqUnknown { .. }) => {
                        Some(refusal.to_string())
                    }
                    _ => None,
                };
                let peers: Vec<&PublicKey> = self.in_force.iter().filter(|key| **key != me).collect();
                let _ = reply.send(crate::service::Health {
                    store_ok: store_problem.is_none(),
                    store_problem,
                    own_seq_learning,
                    peers: peers.len(),
                    peers_connected: peers.iter().filter(|key| self.node.is_connected(key)).count(),
                });
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
        }
    }

    /// The seat named `seat` (its name, or any key of its chain) in force: its founder and
    /// current key.
    fn seat_in_force(&self, seat: &str) -> Result<(PublicKey, PublicKey, String), ServiceError> {
        let resolution = self.node.adapter().membership();
        let in_force = resolution.in_force();
        // A key first: a seat's name may look like another seat's key.
        let by_key = seat
            .parse::<PublicKey>()
            .ok()
            .and_then(|key| resolution.seats_of(&key).iter().find_map(|(founder, _)| in_force.seat(founder)));
        let found = by_key.or_else(|| in_force.seats().iter().find(|s| s.name == seat));
        let Some(found) = found else {
            let names: Vec<&str> = in_force.seats().iter().map(|s| s.name.as_str()).collect();
            return Err(ServiceError::Membership(format!(
                "{seat:?} names no seat in force (seats: {}); give a seat's name or one of its keys",
                names.join(", ")
            )));
        };
        Ok((found.founder, resolution.chains().current(&found.founder), found.name.clone()))
    }

    /// The cut of a removal of the seat whose current key is `key`: `cut`, or the highest seq
    /// of `key` this node holds. Without `force`, refuses a cut that may drop writes the seat
    /// acknowledged: one below what this node holds, or any while the seat is connected or
    /// wrote in the last `timing.removal_quiet` (it may have acknowledged writes that have not
    /// reached this node yet). The same check guards an approval of a removal. It cannot see
    /// writes a seat acknowledged and never sent anyone before it went silent.
    fn removal_cut(
        &self,
        name: &str,
        key: &PublicKey,
        cut: Option<u64>,
        force: bool,
    ) -> Result<u64, ServiceError> {
        if *key == self.key.public() {
            return Err(ServiceError::Membership(format!(
                "this node is {name}: propose its removal on another member, once it is drained and stopped (a node \
                 cannot cut its own writes as it acknowledges them)"
            )));
        }
        let adapter = self.node.adapter();
        let held = adapter.roster().idx(key).map_or(0, |idx| adapter.max_seq(idx));
        let cut = cut.unwrap_or(held);
        if cut > held {
            return Err(ServiceError::Membership(format!(
                "the cut {cut} is past seq {held}, the highest of {name} this node holds: a cut names an event it holds"
            )));
        }
        if force {
            return Ok(cut);
        }
        if cut < held {
            return Err(ServiceError::NeedsForce(format!(
                "the cut {cut} drops {} event(s) of {name} that this node holds (seqs {} to {held}), writes it may have \
                 acknowledged; give --force to cut them",
                held - cut,
                cut + 1
            )));
        }
        if self.node.is_connected(key) {
            return Err(ServiceError::NeedsForce(format!(
                "{name} is connected: it may have acknowledged writes that have not reached this node (which holds its \
                 seq {held}), and the removal would cut them. Drain it first (stop its clients, wait until its seq here \
                 stops growing, stop its cairnd), or give --force"
            )));
        }
        if let Some(wrote) = self.last_wrote.get(key).filter(|at| at.elapsed() < self.removal_quiet) {
            return Err(ServiceError::NeedsForce(format!(
                "{name} wrote {:.1} s ago (through a peer): it may have acknowledged writes that have not reached this \
                 node yet. Wait until it has been quiet for {:.1} s, or give --force",
                wrote.elapsed().as_secs_f64(),
                self.removal_quiet.as_secs_f64()
            )));
        }
        Ok(cut)
    }

    /// The membership op an operator's request asks for, checked against this node's view.
    fn member_op(&self, request: MemberChange) -> Result<MemberOp, ServiceError> {
        use cairn_protocol::ChangeKind;
        let kind = match request {
            MemberChange::Add { key, name } => ChangeKind::Add { key, name },
            MemberChange::Remove { seat, cut, force } => {
                let (founder, key, name) = self.seat_in_force(&seat)?;
                let cut = self.removal_cut(&name, &key, cut, force)?;
                ChangeKind::Remove { seat: founder, key, cut }
            }
            MemberChange::Replace { seat, successor, cut, force } => {
                let (founder, key, name) = self.seat_in_force(&seat)?;
                let cut = self.removal_cut(&name, &key, cut, force)?;
                ChangeKind::Replace { seat: founder, key, cut, successor }
            }
            MemberChange::Approve { change, force } => {
                let Some(proposed) = self.node.adapter().change(&change) else {
                    return Err(ServiceError::Membership(format!(
                        "no change {change} was proposed in what this node holds (see `cairnctl member pending`)"
                    )));
                };
                // An approval of a removal cuts as much as its proposal: the same check.
                if let Some((seat, key, cut)) = proposed.kind.removes() {
                    let name = self.name_of(seat);
                    self.removal_cut(&name, key, Some(cut), force)?;
                }
                return Ok(MemberOp::Approve(change));
            }
        };
        Ok(MemberOp::Propose(kind))
    }

    fn event_info(&self, id: &EventId) -> Option<EventInfo> {
        let stored = self.node.adapter().event(id)?;
        // The archive holds canonical bytes it accepted; an event that no longer decodes is
        // reported as absent rather than shown wrong.
        let event = stored.event()?;
        let header = &event.header;
        let excluded =
            self.node.document().excluded_from(stored.author_idx()).is_some_and(|f| stored.seq() >= f);
        Some(EventInfo {
            id: *id,
            author: header.author,
            author_name: self.name_of(&header.author),
            seq: header.seq,
            lamport: header.lamport,
            deps: header.deps.clone(),
            n_bytes: stored.bytes().len(),
            ops: event.ops,
            sig: event.sig,
            excluded,
        })
    }

    fn events(&self, query: &EventQuery) -> Vec<EventInfo> {
        let limit = query.limit.max(1);
        match query.author {
            Some(author) => {
                let Some(idx) = self.node.adapter().roster().idx(&author) else { return Vec::new() };
                let adapter = self.node.adapter();
                let from = query.after.unwrap_or(0).saturating_add(1);
                (from..=adapter.max_seq(idx))
                    .flat_map(|seq| adapter.at_seq(idx, seq).to_vec())
                    .take(limit)
                    .filter_map(|id| self.event_info(&id))
                    .collect()
            }
            None => {
                // The store's log, in the order events were stored, then the events accepted
                // and not stored yet (a group commit's delay), in the order they were accepted.
                let from = query.after.unwrap_or(0);
                let committed = self.archive.n_committed();
                let mut ids: Vec<EventId> = if from < committed {
                    self.read_log_page(from, limit)
                        .into_iter()
                        .filter_map(|(_, _, bytes)| {
                            Some(cairn_protocol::codec::decode_event(&bytes).ok()?.id())
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let skip = usize::try_from(from.saturating_sub(committed)).unwrap_or(usize::MAX);
                ids.extend(self.archive.pending_page(skip, limit - ids.len()));
                ids.iter().filter_map(|id| self.event_info(id)).collect()
            }
        }
    }

    /// A page of the store's log; a failed read is recorded like any archive read, and the
    /// daemon stops on it.
    fn read_log_page(&self, from: u64, limit: usize) -> Vec<(u64, cairn_protocol::EventMeta, Vec<u8>)> {
        crate::store::reads::log_page(&self.db, from, limit).unwrap_or_else(|error| {
            self.archive.fail(error);
            Vec::new()
        })
    }

    /// Every key this node indexes but its own: the genesis members, then the keys membership
    /// ops named, each with its state (`out_of_force`: removed, rotated away, or not added yet).
    fn peers(&self) -> Vec<PeerInfo> {
        let me = self.key.public();
        let adapter = self.node.adapter();
        adapter
            .roster()
            .keys()
            .iter()
            .filter(|key| **key != me)
            .map(|key| {
                let state = if self.is_refused(key) {
                    PeerState::Refused
                } else if !self.in_force.contains(key) {
                    PeerState::OutOfForce
                } else if self.node.is_connected(key) {
                    PeerState::Connected
                } else if self.version_mismatch.contains_key(key) {
                    PeerState::VersionMismatch
                } else {
                    PeerState::Connecting
                };
                PeerInfo {
                    key: *key,
                    name: self.name_of(key),
                    address: self.transport.address_of(key),
                    state,
                    outbound: self.topology.is_outbound(key),
                    eager: self.node.is_eager(key),
                    last_seen_ms_ago: self.last_seen.get(key).map(|t| t.elapsed().as_millis() as u64),
                    rtt_ms: self.transport.rtt(key).map(|d| d.as_secs_f64() * 1000.0),
                    stats: self.node.peer_stats(key).cloned().unwrap_or_default(),
                    lag_events: self.node.peer_lag(key),
                    version_mismatch: self
                        .version_mismatch
                        .get(key)
                        .copied()
                        .filter(|_| state == PeerState::VersionMismatch),
                }
            })
            .collect()
    }

    fn status(&mut self) -> Status {
        self.roll_author_window();
        let authors = self
            .node
            .adapter()
            .roster()
            .keys()
            .iter()
            .zip(self.authored.iter().zip(&self.authored_rates))
            .map(|(key, (&(events, bytes), &(events_per_sec, bytes_per_sec)))| AuthorFigures {
                key: *key,
                name: self.name_of(key),
                events,
                bytes,
                events_per_sec,
                bytes_per_sec,
            })
            .collect();
        let me = self.key.public();
        let own_idx = self.node.adapter().roster().idx(&me);
        let resolution = self.node.adapter().membership();
        let membership = MembershipBrief {
            id: resolution.in_force().id().0,
            n_seats: resolution.in_force().seats().len(),
            round: resolution.round(),
            n_pending: resolution.pending().len(),
        };
        let sync_digest = self.node.sync_digest();
        let adapter = self.node.adapter();
        let (buffer_events, buffer_bytes) = adapter.buffer_use();
        Status {
            key: me,
            name: self.name_of(&me),
            cluster_id: self.genesis.cluster_id(),
            own_seq: own_idx.map_or(0, |i| adapter.max_seq(i)),
            digest: self.node.document().digest(),
            sync_digest,
            n_events: adapter.n_accepted(),
            n_evidence: adapter.evidence().count(),
            buffer_events,
            buffer_bytes,
            buffer_bytes_max: self.buffer_bytes_max,
            writes_refused: self
                .node
                .write_refusal(&me)
                .map(|e| e.to_string())
                .or_else(|| self.commit.no_space().map(str::to_owned)),
            n_peers_connected: self.node.connected_peers().len(),
            n_peers: self.in_force.iter().filter(|key| **key != me).count(),
            authors,
            membership,
        }
    }
}

/// The earlier of two optional instants.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One page of `keys` (in key order): the keys above `query.after`, at most `query.limit`.
/// The document offers its keys only as an iterator from the first, so reaching a late page
/// walks past the earlier keys, without copying them.
fn key_page<'a>(keys: impl Iterator<Item = &'a [u8]>, query: &KeyQuery) -> Vec<Vec<u8>> {
    let after = query.after.as_deref();
    keys.skip_while(|key| after.is_some_and(|after| *key <= after))
        .take(query.limit)
        .map(<[u8]>::to_vec)
        .collect()
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The verdict for a commit that failed for want of space: the store's own words for the
/// writes, a short line for the status.
fn no_space(error: &StoreError) -> Committed {
    let reason = match error {
        StoreError::NoSpace { path, .. } => format!(
            "the file system holding the store {} is full: writes fail until there is room again \
             (cairnd retries by itself)",
            path.display()
        ),
        other => other.to_string(),
    };
    Committed::NoSpace { write_error: error.to_string(), reason }
}

/// Signature checks live on their own thread, so that the loop applies one batch while the
/// next one's signatures are checked (each batch on `n_threads` threads, scoped to it). It
/// answers each batch in the order it came.
fn spawn_verifier(
    n_threads: usize,
) -> (std::sync::mpsc::SyncSender<SignatureChecks>, mpsc::Receiver<SignatureVerdicts>) {
    // The driver sends a batch only while fewer than `VERIFY_BATCHES_IN_FLIGHT_MAX` are
    // unanswered (it reads from peers only then: `Driver::takes_peer_input`), so neither queue
    // ever holds more, and a send to either never blocks: not the driver's loop on the jobs,
    // nor this thread on the verdicts.
    let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel::<SignatureChecks>(VERIFY_BATCHES_IN_FLIGHT_MAX);
    let (done_tx, done_rx) = mpsc::channel(VERIFY_BATCHES_IN_FLIGHT_MAX);
    std::thread::Builder::new()
        .name("cairn-verify".to_owned())
        .spawn(move || {
            while let Ok(checks) = jobs_rx.recv() {
                if done_tx.blocking_send(checks.run(n_threads)).is_err() {
                    break;
                }
            }
        })
        // Spawning a thread fails only when the OS is out of resources at start-up.
        .expect("cannot start the signature verifier thread");
    (jobs_tx, done_rx)
}

/// The store lives on its own thread: commits block on fsync, and the service loop must not.
/// One job at a time, so everything that accumulates meanwhile goes into the next commit.
/// A failed commit ends the thread, unless it failed for want of space: the store is usable
/// again after that (it reopened itself), and the job goes back for a later try.
fn spawn_store_writer(
    mut store: Store,
) -> (std::sync::mpsc::Sender<StoreRequest>, mpsc::Receiver<StoreDone>) {
    // Unbounded, yet bounded by its senders: the group commit has one job in flight at most,
    // and each backup stream one read.
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<StoreRequest>();
    let (done_tx, done_rx) = mpsc::channel(1);
    std::thread::Builder::new()
        .name("cairn-store".to_owned())
        .spawn(move || {
            while let Ok(request) = jobs_rx.recv() {
                let job = match request {
                    StoreRequest::Commit(job) => job,
                    StoreRequest::Backup(read, reply) => {
                        let _ = reply.send(crate::backup::read_piece(&store, &read));
                        continue;
                    }
                };
                store.extend_roster(&job.roster);
                if let Some(key) = job.node_key {
                    store.rotate_node_key(key);
                }
                let result = {
                    let events: Vec<Append<'_>> = job.events.iter().map(Append::from).collect();
                    let evidence: Vec<([u8; 32], &[u8])> =
                        job.evidence.iter().map(|(a, b)| (*a, b.as_slice())).collect();
                    let document = job
                        .document
                        .as_ref()
                        .map(|delta| crate::store::DocumentCommit { delta, n_applied: job.n_doc_events });
                    store.append_events(&events, &evidence, job.own_history_complete, document)
                };
                debug!(events = job.events.len(), ok = result.is_ok(), "store commit");
                let (committed, fatal) = match result {
                    Ok(()) => (Committed::Ok, false),
                    Err(error @ StoreError::NoSpace { .. }) => (no_space(&error), false),
                    Err(error) => (Committed::Failed { reason: format!("storage failed: {error}") }, true),
                };
                if done_tx.blocking_send((committed, job)).is_err() || fatal {
                    break;
                }
            }
        })
        // Spawning a thread fails only when the OS is out of resources at start-up.
        .expect("cannot start the store's writer thread");
    (jobs_tx, done_rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message's credit is held for its wasted bytes at `WASTED_INPUT_BYTES_PER_SEC`.
    #[test]
    fn the_hold_is_the_wasted_bytes_at_the_wasted_input_rate() {
        let rate = WASTED_INPUT_BYTES_PER_SEC as usize;
        assert_eq!(wasted_input_hold(rate, 1.0), Duration::from_secs(1));
        assert_eq!(wasted_input_hold(rate, 0.25), Duration::from_millis(250));
        assert_eq!(wasted_input_hold(rate, 0.0), Duration::ZERO);
        // A push that crossed another: one event of 300 bytes, under 100 µs.
        assert!(wasted_input_hold(300, 1.0) < Duration::from_micros(100));
    }
}
