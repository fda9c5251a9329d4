//! The driver: one task owns the replica ([`cairn_protocol::Node`]) and drives it, in the
//! style of quinn's `ConnectionDriver`. Transport events, API commands and timers come in;
//! messages go out to the transport, accepted events to the store (group commit), changes to
//! the watch stream.
//!
//! A commit that fails because the store's file system is full does not stop the daemon: the
//! store has checked that nothing of it was stored, so the batch's writes fail with
//! [`ServiceError::NoSpace`] (HTTP 507), their own seqs are given back (`Node::abort_writes`),
//! the events from peers and the evidence wait for a later commit, and commits are tried again
//! after a back-off ([`STORE_RETRY_MIN`] doubling to [`STORE_RETRY_MAX`]); writes that arrive
//! meanwhile wait for that attempt. Reads, status and replication go on from memory. The first
//! failure logs one warning, the first commit that succeeds again one line. Any other store
//! failure stops the daemon.

use std::net::SocketAddr;

use cairn_crypto::PublicKey;
use cairn_protocol::document::KeyKind;
use cairn_protocol::{EventId, Op};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::service::{
    COMMAND_QUEUE_MAX, ChangeNotice, Command, EventInfo, EventQuery, KeyQuery, PeerInfo, PeerState,
    ServiceError, ServiceHandle, Status, WATCH_BUFFER_MAX, WriteAck,
};

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_crypto::SecretKey;
use cairn_protocol::{Event, Genesis, Node, NodeEvent};
use tracing::{debug, error, info, warn};

use crate::metrics::{Metrics, PeerLabel, ReasonLabel};
use crate::store::{Store, StoreError};
use crate::transport::{Transport, TransportEvent};

/// While a peer's transport queue is full and the node still has output for it, the driver
/// looks again this often.
pub const TRANSMIT_RETRY: Duration = Duration::from_millis(5);
/// Inputs handled per loop turn before output is flushed, so one busy source cannot starve
/// transmission or the timer.
pub const INPUTS_PER_TURN_MAX: usize = 256;
/// Events accepted from peers wait this long at most for a store commit of their own when no
/// local write or evidence is due: nothing waits on their fsync (peers hold them too), and
/// fewer, larger commits leave the cores to signature checks during a catch-up.
pub const PEER_EVENTS_COMMIT_DELAY: Duration = Duration::from_millis(20);
/// ... unless this many are waiting.
pub const PEER_EVENTS_COMMIT_BATCH: usize = 4_096;
/// Transport events queued towards the service.
pub const TRANSPORT_EVENTS_MAX: usize = 1_024;
/// Peer input handled in one loop turn before commands, timers and output get their turn: one
/// message of a catch-up (up to `MESSAGE_BYTES_MAX` of events to verify) can take tens of
/// milliseconds, so the turn is bounded by time, not by a message count.
pub const PEER_INPUT_PER_TURN: Duration = Duration::from_millis(5);
/// A peer that sends more invalid events or messages than this within
/// [`INVALID_INPUTS_WINDOW`] is disconnected and ignored for a while.
pub const INVALID_INPUTS_MAX: u32 = 100;
/// The window in which invalid inputs are counted.
pub const INVALID_INPUTS_WINDOW: Duration = Duration::from_secs(10);
/// How long a misbehaving peer is first ignored; each new offence doubles it, up to
/// [`MUTE_MAX`].
pub const MUTE_MIN: Duration = Duration::from_secs(1);
/// The longest a misbehaving peer is ignored.
pub const MUTE_MAX: Duration = Duration::from_secs(300);
/// After a commit failed because the store's file system is full, the next one is tried this
/// much later, then twice as late after each failure, up to [`STORE_RETRY_MAX`]. Each attempt
/// reopens the store (redb requires it after a failed write), which reads the whole file.
pub const STORE_RETRY_MIN: Duration = Duration::from_millis(100);
/// The longest wait between two commits tried while the file system is full, and so about the
/// longest a write waits for its answer then.
pub const STORE_RETRY_MAX: Duration = Duration::from_secs(2);

/// Invalid inputs of one peer, and whether it is being ignored.
#[derive(Debug)]
struct Strikes {
    window_start: Instant,
    count: u32,
    next_mute: Duration,
    muted_until: Option<Instant>,
}

/// What the service needs to run.
pub struct ServiceParts {
    /// The replica, already restored from the store.
    pub node: Node,
    /// This node's key.
    pub key: SecretKey,
    /// The genesis.
    pub genesis: Genesis,
    /// Configured peer addresses.
    pub addresses: BTreeMap<PublicKey, SocketAddr>,
    /// The store (moved to its writer thread).
    pub store: Store,
    /// The transport.
    pub transport: Transport,
    /// Its events.
    pub transport_events: mpsc::Receiver<TransportEvent>,
    /// Most local writes per commit.
    pub commit_writes_max: usize,
    /// Accepted events in store order (for listing), as restored.
    pub log: Vec<EventId>,
    /// The causal buffer's bound, for status.
    pub buffer_bytes_max: usize,
}

/// A batch for the store's writer thread.
struct StoreJob {
    events: Vec<([u8; 32], Vec<u8>)>,
    evidence: Vec<([u8; 32], Vec<u8>)>,
}

/// What the store's writer thread reports for a job: done, or why not, with the job given back.
type StoreResult = Result<(), (StoreError, StoreJob)>;

/// The store's file system is full: the last commit failed for want of space.
struct StoreFull {
    /// When the next commit may be tried.
    retry_at: Instant,
    /// The wait before `retry_at`, doubled after the next failure.
    backoff: Duration,
    /// The last failure came while draining: no further attempt is made.
    while_draining: bool,
    /// For `writes_refused` in the status.
    reason: String,
}

type WriteReply = oneshot::Sender<Result<WriteAck, ServiceError>>;

/// The batch being committed: own events waiting for their fsync, with the requesters of the
/// writes packed into each (`acks[i]` wrote into `own[i]`).
struct InFlight {
    own: Vec<Event>,
    acks: Vec<Vec<WriteReply>>,
    /// Events in the commit (own and from peers).
    n_events: usize,
}

type WriteRequest = (Vec<Op>, WriteReply);

/// The driver. See the module docs.
pub struct Service {
    node: Node,
    key: SecretKey,
    genesis: Genesis,
    addresses: BTreeMap<PublicKey, SocketAddr>,
    transport: Transport,
    metrics: Arc<Metrics>,
    changes: broadcast::Sender<ChangeNotice>,
    n_changes: u64,
    started: Instant,
    last_seen: BTreeMap<PublicKey, Instant>,
    log: Vec<EventId>,
    unstored: Vec<([u8; 32], Vec<u8>)>,
    /// When the oldest of `unstored` was accepted.
    unstored_since: Option<Instant>,
    /// Shutting down: commit at once, without [`PEER_EVENTS_COMMIT_DELAY`].
    draining: bool,
    unstored_evidence: Vec<([u8; 32], Vec<u8>)>,
    writes: VecDeque<WriteRequest>,
    in_flight: Option<InFlight>,
    commit_writes_max: usize,
    store_jobs: mpsc::Sender<StoreJob>,
    store_done: mpsc::Receiver<StoreResult>,
    /// Set while the store's file system is full.
    store_full: Option<StoreFull>,
    warned: std::collections::BTreeSet<(PublicKey, &'static str)>,
    failed: Option<String>,
    buffer_bytes_max: usize,
    /// The sum of the peers' rate-limited events already counted in the metric.
    rate_limited_seen: u64,
    strikes: BTreeMap<PublicKey, Strikes>,
    /// Peers the transport reports connected (the node may be ignoring some of them).
    linked: std::collections::BTreeSet<PublicKey>,
}

impl Service {
    /// Builds the service and its handle, and starts the store's writer thread.
    pub(crate) fn new(
        parts: ServiceParts,
    ) -> (Self, ServiceHandle, mpsc::Receiver<Command>, mpsc::Receiver<TransportEvent>) {
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE_MAX);
        let (changes, _) = broadcast::channel(WATCH_BUFFER_MAX);
        let metrics = Arc::new(Metrics::new());
        let (store_jobs, store_done) = spawn_store_writer(parts.store);
        let handle =
            ServiceHandle { commands: commands_tx, changes: changes.clone(), metrics: metrics.clone() };
        let service = Self {
            node: parts.node,
            key: parts.key,
            genesis: parts.genesis,
            addresses: parts.addresses,
            transport: parts.transport,
            metrics,
            changes,
            n_changes: 0,
            started: Instant::now(),
            last_seen: BTreeMap::new(),
            log: parts.log,
            unstored: Vec::new(),
            unstored_since: None,
            draining: false,
            unstored_evidence: Vec::new(),
            writes: VecDeque::new(),
            in_flight: None,
            commit_writes_max: parts.commit_writes_max,
            store_jobs,
            store_done,
            store_full: None,
            warned: Default::default(),
            failed: None,
            buffer_bytes_max: parts.buffer_bytes_max,
            rate_limited_seen: 0,
            strikes: BTreeMap::new(),
            linked: Default::default(),
        };
        (service, handle, commands_rx, parts.transport_events)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn name_of(&self, key: &PublicKey) -> String {
        self.genesis.member_idx(key).map_or_else(|| key.short(), |i| self.genesis.members()[i].name.clone())
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
            if *shutdown.borrow() || self.failed.is_some() {
                break;
            }
            // The watchdog's time is a wake-up of its own: a node with no peer connected and no
            // client has no other timer, and systemd would kill it for being silent.
            let wake = match (self.next_wake(), watchdog) {
                (Some(wake), Some(_)) => Some(wake.min(next_watchdog)),
                (None, Some(_)) => Some(next_watchdog),
                (wake, None) => wake,
            };
            tokio::select! {
                biased;
                _ = shutdown.changed() => {}
                Some(result) = self.store_done.recv() => self.on_committed(result),
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
                Some(event) = transport_events.recv() => {
                    let turn_started = Instant::now();
                    self.on_transport(event);
                    for _ in 1..INPUTS_PER_TURN_MAX {
                        if turn_started.elapsed() >= PEER_INPUT_PER_TURN {
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
        if let Some(error) = self.failed.take() {
            self.fail_writes(&error);
            anyhow::bail!("{error}");
        }
        // Drain: no new commands; store what was accepted and acknowledge queued writes.
        commands.close();
        while let Ok(command) = commands.try_recv() {
            self.on_command(command);
        }
        let deadline = Instant::now() + grace;
        self.draining = true;
        loop {
            self.after_input();
            let idle = self.in_flight.is_none() && self.writes.is_empty() && self.unstored.is_empty();
            // The file system is full, and the one attempt made while draining failed too.
            let full = self.in_flight.is_none() && self.store_full.as_ref().is_some_and(|f| f.while_draining);
            if idle || full || Instant::now() >= deadline {
                break;
            }
            match tokio::time::timeout_at(deadline.into(), self.store_done.recv()).await {
                Ok(Some(result)) => self.on_committed(result),
                _ => break,
            }
            if let Some(error) = self.failed.take() {
                self.fail_writes(&error);
                anyhow::bail!("{error}");
            }
        }
        if self.store_full.is_some() && !self.unstored.is_empty() {
            warn!(
                events = self.unstored.len(),
                "stopping with events from peers that could not be stored (the file system is full); \
                 the node fetches them from its peers again after the restart"
            );
        }
        self.fail_writes("the daemon is shutting down");
        // Give queued messages a moment to leave, then close connections.
        let flush_until = Instant::now() + grace.min(Duration::from_millis(500));
        while Instant::now() < flush_until && self.has_output() {
            self.transmit();
            tokio::time::sleep(TRANSMIT_RETRY).await;
        }
        self.transport.shutdown().await;
        Ok(())
    }

    /// Whether the events accepted from peers should be committed now.
    fn peer_events_due(&self) -> bool {
        !self.unstored.is_empty()
            && (self.draining
                || self.unstored.len() >= PEER_EVENTS_COMMIT_BATCH
                || self.unstored_since.is_some_and(|t| t.elapsed() >= PEER_EVENTS_COMMIT_DELAY))
    }

    fn next_wake(&self) -> Option<Instant> {
        let commit_due = self.commit_due();
        let mute_end = self.strikes.values().filter_map(|s| s.muted_until).min();
        let mute_end = match (mute_end, commit_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timer = self.node.poll_timeout().map(|ms| self.started + Duration::from_millis(ms));
        let timer = match (timer, mute_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let retry = self.has_output().then(|| Instant::now() + TRANSMIT_RETRY);
        match (timer, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When a commit that cannot start now may start: the end of the wait of events from peers,
    /// or of the back-off while the file system is full. `None` while a commit is in flight (its
    /// end wakes the loop) or nothing waits.
    fn commit_due(&self) -> Option<Instant> {
        if self.in_flight.is_some() {
            return None;
        }
        let peer_events_due = self.unstored_since.map(|t| t + PEER_EVENTS_COMMIT_DELAY);
        let Some(full) = &self.store_full else { return peer_events_due };
        if !self.writes.is_empty() || !self.unstored_evidence.is_empty() {
            Some(full.retry_at)
        } else {
            peer_events_due.map(|due| due.max(full.retry_at))
        }
    }

    fn has_output(&self) -> bool {
        self.node.connected_peers().iter().any(|p| self.node.queued(p) != (0, 0))
    }

    fn is_muted(&self, peer: &PublicKey) -> bool {
        self.strikes.get(peer).and_then(|s| s.muted_until).is_some_and(|until| Instant::now() < until)
    }

    /// Counts one invalid input from `peer`; too many in a window mute it: its connection is
    /// closed and whatever it sends is ignored until the mute ends, twice as long each time.
    fn strike(&mut self, peer: PublicKey) {
        let now = Instant::now();
        let strikes = self.strikes.entry(peer).or_insert(Strikes {
            window_start: now,
            count: 0,
            next_mute: MUTE_MIN,
            muted_until: None,
        });
        if now.duration_since(strikes.window_start) > INVALID_INPUTS_WINDOW {
            strikes.window_start = now;
            strikes.count = 0;
        }
        strikes.count += 1;
        if strikes.count <= INVALID_INPUTS_MAX || strikes.muted_until.is_some_and(|until| now < until) {
            return;
        }
        let mute = strikes.next_mute;
        strikes.muted_until = Some(now + mute);
        strikes.next_mute = (mute * 2).min(MUTE_MAX);
        strikes.count = 0;
        warn!(peer = %self.name_of(&peer), mute = ?mute,
            "peer sent more than {INVALID_INPUTS_MAX} invalid inputs in {INVALID_INPUTS_WINDOW:?}: disconnecting it and ignoring it for a while");
        self.node.handle_disconnected(&peer);
        self.transport.disconnect(&peer);
    }

    /// Peers whose mute ended while their transport link is up start afresh.
    fn unmute_expired(&mut self) {
        let now = Instant::now();
        let expired: Vec<PublicKey> = self
            .strikes
            .iter()
            .filter(|(_, s)| s.muted_until.is_some_and(|until| now >= until))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in expired {
            if let Some(strikes) = self.strikes.get_mut(&peer) {
                strikes.muted_until = None;
            }
            if self.linked.contains(&peer) && !self.node.is_connected(&peer) {
                let now_ms = self.now_ms();
                self.node.handle_connected(peer, now_ms);
            }
        }
    }

    fn after_input(&mut self) {
        self.unmute_expired();
        self.drain_node_events();
        self.transmit();
        self.start_commit();
        self.update_gauges();
    }

    fn on_transport(&mut self, event: TransportEvent) {
        let now = self.now_ms();
        match event {
            TransportEvent::Connected { peer, address } => {
                self.linked.insert(peer);
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
            TransportEvent::Disconnected { peer, reason } => {
                self.linked.remove(&peer);
                if self.node.is_connected(&peer) {
                    info!(peer = %self.name_of(&peer), %reason, "peer lost");
                }
                self.node.handle_disconnected(&peer);
            }
            // The credit is dropped at the end of this arm: the connection may read on.
            TransportEvent::Message { peer, bytes, credit: _credit } => {
                if self.is_muted(&peer) {
                    return;
                }
                self.last_seen.insert(peer, Instant::now());
                self.metrics
                    .bytes_in
                    .get_or_create(&PeerLabel { peer: self.name_of(&peer) })
                    .inc_by(bytes.len() as u64);
                self.node.handle_message(peer, &bytes, now);
            }
        }
    }

    fn drain_node_events(&mut self) {
        while let Some(event) = self.node.poll_event() {
            match event {
                NodeEvent::Accepted { event, from } => {
                    self.metrics.events_accepted.inc();
                    if from.is_some() {
                        self.log.push(event.id());
                        self.unstored.push((event.id().0, event.bytes().to_vec()));
                        self.unstored_since.get_or_insert_with(Instant::now);
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
                    self.unstored_evidence.push((author.0, evidence.encode()));
                }
                NodeEvent::BadMessage { peer, error } => {
                    self.strike(peer);
                    self.metrics.bad_messages.inc();
                    if self.warned.insert((peer, "bad_message")) {
                        warn!(peer = %self.name_of(&peer), %error, "bad message from peer (further ones are only counted)");
                    }
                }
                NodeEvent::PeerRefused(peer) => {
                    warn!(peer = %self.name_of(&peer), "refusing a proven equivocator");
                    self.transport.refuse(&peer);
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

    /// Starts the next group commit if none is in flight: every accepted event not yet stored,
    /// new evidence, and the queued local writes signed as one chain.
    fn start_commit(&mut self) {
        if self.in_flight.is_some() || self.failed.is_some() {
            return;
        }
        if let Some(full) = &self.store_full {
            // Draining tries once more at once; a failure then ends the tries.
            let may_try = if self.draining { !full.while_draining } else { Instant::now() >= full.retry_at };
            if !may_try {
                return;
            }
        }
        let n_writes = self.writes.len().min(self.commit_writes_max);
        let mut own = Vec::new();
        let mut acks = Vec::new();
        if n_writes > 0 {
            let (writes, senders): (Vec<Vec<Op>>, Vec<_>) = self.writes.drain(..n_writes).unzip();
            // Concurrent writes share one event (one signature) as far as the limits allow.
            let groups = Node::pack_writes(&writes);
            let mut writes = writes.into_iter();
            let mut senders = senders.into_iter();
            let mut packed = Vec::with_capacity(groups.len());
            for n in groups {
                packed.push(writes.by_ref().take(n).flatten().collect::<Vec<Op>>());
                acks.push(senders.by_ref().take(n).collect::<Vec<_>>());
            }
            match self.node.prepare_writes(&self.key, packed) {
                Ok(events) => own = events,
                Err(error) => {
                    let failed: Vec<WriteReply> = acks.drain(..).flatten().collect();
                    self.metrics.write_errors.inc_by(failed.len() as u64);
                    for sender in failed {
                        let _ = sender.send(Err(ServiceError::NotReady(error.to_string())));
                    }
                }
            }
        }
        if own.is_empty() && self.unstored_evidence.is_empty() && !self.peer_events_due() {
            return;
        }
        self.unstored_since = None;
        let mut events = std::mem::take(&mut self.unstored);
        events.extend(own.iter().map(|e| (e.id().0, e.encode())));
        let evidence = std::mem::take(&mut self.unstored_evidence);
        let n_events = events.len();
        if self.store_jobs.try_send(StoreJob { events, evidence }).is_err() {
            self.failed = Some("the store's writer thread has stopped".to_owned());
            for sender in acks.into_iter().flatten() {
                let _ = sender
                    .send(Err(ServiceError::Storage("the store's writer thread has stopped".to_owned())));
            }
            return;
        }
        self.in_flight = Some(InFlight { own, acks, n_events });
    }

    fn on_committed(&mut self, result: StoreResult) {
        let Some(InFlight { own, acks, n_events }) = self.in_flight.take() else { return };
        self.metrics.commits.inc();
        match result {
            Ok(()) => {
                if self.store_full.take().is_some() {
                    info!("the store's file system has room again: writes are stored and acknowledged again");
                }
                self.metrics.committed_events.inc_by(n_events as u64);
                let now = self.now_ms();
                let accepted = self.node.commit_writes(own, now);
                for (event, senders) in accepted.into_iter().zip(acks) {
                    self.log.push(event.id());
                    self.metrics.writes.inc_by(senders.len() as u64);
                    self.metrics.own_events.inc();
                    for sender in senders {
                        let _ = sender.send(Ok(WriteAck {
                            id: event.id(),
                            seq: event.seq(),
                            lamport: event.lamport(),
                        }));
                    }
                }
            }
            Err((error @ StoreError::NoSpace { .. }, job)) => self.on_store_full(&error, job, &own, acks),
            Err((error, _)) => {
                error!(%error, "the store failed; writes are no longer acknowledged and the daemon stops");
                for sender in acks.into_iter().flatten() {
                    let _ = sender.send(Err(ServiceError::Storage(error.to_string())));
                }
                self.failed = Some(format!("storage failed: {error}"));
            }
        }
    }

    /// A commit failed for want of space, and the store checked that nothing of it was stored
    /// (see `store.rs`): its writes fail, its own events are dropped and their seqs given back
    /// (no peer has seen them, and they can never surface from the store), its events from peers
    /// and its evidence wait for the next commit, which is tried after a back-off.
    fn on_store_full(
        &mut self,
        error: &StoreError,
        job: StoreJob,
        own: &[Event],
        acks: Vec<Vec<WriteReply>>,
    ) {
        self.node.abort_writes();
        let message = error.to_string();
        let failed: Vec<WriteReply> = acks.into_iter().flatten().collect();
        self.metrics.write_errors.inc_by(failed.len() as u64);
        for sender in failed {
            let _ = sender.send(Err(ServiceError::NoSpace(message.clone())));
        }
        // The own events were appended last (`start_commit`). What came from peers goes back in
        // front of what was accepted since, so the store's log stays in causal order.
        let StoreJob { mut events, mut evidence } = job;
        let n_peer_events = events.len().checked_sub(own.len()).expect("the job holds the own events");
        assert!(
            events[n_peer_events..].iter().zip(own).all(|((id, _), event)| *id == event.id().0),
            "the own events are the job's last"
        );
        events.truncate(n_peer_events);
        events.append(&mut self.unstored);
        self.unstored = events;
        if !self.unstored.is_empty() {
            self.unstored_since.get_or_insert_with(Instant::now);
        }
        evidence.append(&mut self.unstored_evidence);
        self.unstored_evidence = evidence;

        let backoff = match &self.store_full {
            Some(full) => (full.backoff * 2).min(STORE_RETRY_MAX),
            None => {
                warn!(%error, retry_in = ?STORE_RETRY_MIN,
                    "the store's file system is full: writes fail (HTTP 507) until there is room again, and the \
                     store is tried again by itself; reads, status and replication go on (further failures are \
                     logged at debug level)");
                STORE_RETRY_MIN
            }
        };
        debug!(%error, retry_in = ?backoff, peer_events = self.unstored.len(), "commit failed: no space");
        let reason = match error {
            StoreError::NoSpace { path, .. } => format!(
                "the file system holding the store {} is full: writes fail until there is room again \
                 (cairnd retries by itself)",
                path.display()
            ),
            other => other.to_string(),
        };
        self.store_full = Some(StoreFull {
            retry_at: Instant::now() + backoff,
            backoff,
            while_draining: self.draining,
            reason,
        });
    }

    fn fail_writes(&mut self, why: &str) {
        for (_, sender) in self.writes.drain(..) {
            let _ = sender.send(Err(ServiceError::ShuttingDown));
        }
        if let Some(in_flight) = self.in_flight.take() {
            for sender in in_flight.acks.into_iter().flatten() {
                let _ = sender.send(Err(ServiceError::Storage(why.to_owned())));
            }
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
        self.metrics.peers_connected.set(self.node.connected_peers().len() as i64);
        self.metrics.events_held.set(adapter.n_accepted() as i64);
        self.metrics.evidence_held.set(adapter.evidence().count() as i64);
        self.metrics.buffer_events.set(n_buffered as i64);
        self.metrics.buffer_bytes.set(buffer_bytes as i64);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Write(ops, reply) => {
                if let Err(error) = Node::check_ops(&ops) {
                    self.metrics.write_errors.inc();
                    let _ = reply.send(Err(ServiceError::Invalid(error.to_string())));
                } else if let Some(pending) = self.node.own_seq_pending() {
                    self.metrics.write_errors.inc();
                    let _ = reply.send(Err(ServiceError::NotReady(pending.to_string())));
                } else {
                    self.writes.push_back((ops, reply));
                }
            }
            Command::Register(key, reply) => {
                let _ = reply.send(self.node.document().register(&key));
            }
            Command::Counter(key, reply) => {
                let _ = reply.send(self.node.document().counter(&key));
            }
            Command::SetMembers(key, reply) => {
                let _ = reply.send(self.node.document().set_members(&key));
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
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
        }
    }

    fn event_info(&self, id: &EventId) -> Option<EventInfo> {
        let verified = self.node.adapter().event(id)?;
        let header = &verified.event().header;
        let excluded =
            self.node.document().excluded_from(verified.author_idx()).is_some_and(|f| verified.seq() >= f);
        Some(EventInfo {
            id: *id,
            author: header.author,
            author_name: self.name_of(&header.author),
            seq: header.seq,
            lamport: header.lamport,
            deps: header.deps.clone(),
            ops: verified.event().ops.clone(),
            sig: verified.event().sig,
            n_bytes: verified.bytes().len(),
            excluded,
        })
    }

    fn events(&self, query: &EventQuery) -> Vec<EventInfo> {
        let limit = query.limit.max(1);
        match query.author {
            Some(author) => {
                let Some(idx) = self.genesis.member_idx(&author) else { return Vec::new() };
                let adapter = self.node.adapter();
                let from = query.after.unwrap_or(0).saturating_add(1);
                (from..=adapter.max_seq(idx))
                    .flat_map(|seq| adapter.at_seq(idx, seq).to_vec())
                    .take(limit)
                    .filter_map(|id| self.event_info(&id))
                    .collect()
            }
            None => {
                let from = usize::try_from(query.after.unwrap_or(0)).unwrap_or(usize::MAX);
                self.log.iter().skip(from).take(limit).filter_map(|id| self.event_info(id)).collect()
            }
        }
    }

    fn peers(&self) -> Vec<PeerInfo> {
        let me = self.key.public();
        self.genesis
            .members()
            .iter()
            .filter(|m| m.key != me)
            .map(|m| {
                let state = if self.node.is_refused(&m.key) {
                    PeerState::Refused
                } else if self.node.is_connected(&m.key) {
                    PeerState::Connected
                } else {
                    PeerState::Connecting
                };
                PeerInfo {
                    key: m.key,
                    name: m.name.clone(),
                    address: self.addresses.get(&m.key).copied(),
                    state,
                    last_seen_ms_ago: self.last_seen.get(&m.key).map(|t| t.elapsed().as_millis() as u64),
                    rtt_ms: self.transport.rtt(&m.key).map(|d| d.as_secs_f64() * 1000.0),
                    stats: self.node.peer_stats(&m.key).cloned().unwrap_or_default(),
                }
            })
            .collect()
    }

    fn status(&mut self) -> Status {
        let me = self.key.public();
        let own_idx = self.genesis.member_idx(&me);
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
                .own_seq_pending()
                .map(|e| e.to_string())
                .or_else(|| self.store_full.as_ref().map(|full| full.reason.clone())),
            n_peers_connected: self.node.connected_peers().len(),
            n_peers: self.genesis.members().len().saturating_sub(1),
        }
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

/// The store lives on its own thread: commits block on fsync, and the service loop must not.
/// One job at a time, so everything that accumulates meanwhile goes into the next commit.
/// A failed commit ends the thread, unless it failed for want of space: the store is usable
/// again after that (it reopened itself), and the job goes back for a later try.
fn spawn_store_writer(mut store: Store) -> (mpsc::Sender<StoreJob>, mpsc::Receiver<StoreResult>) {
    let (jobs_tx, mut jobs_rx) = mpsc::channel::<StoreJob>(1);
    let (done_tx, done_rx) = mpsc::channel(1);
    std::thread::Builder::new()
        .name("cairn-store".to_owned())
        .spawn(move || {
            while let Some(job) = jobs_rx.blocking_recv() {
                let result = {
                    let events: Vec<([u8; 32], &[u8])> =
                        job.events.iter().map(|(id, b)| (*id, b.as_slice())).collect();
                    let evidence: Vec<([u8; 32], &[u8])> =
                        job.evidence.iter().map(|(a, b)| (*a, b.as_slice())).collect();
                    store.append(&events, &evidence)
                };
                debug!(events = job.events.len(), ok = result.is_ok(), "store commit");
                let fatal = result.as_ref().is_err_and(|e| !matches!(e, StoreError::NoSpace { .. }));
                if done_tx.blocking_send(result.map_err(|e| (e, job))).is_err() || fatal {
                    break;
                }
            }
        })
        // Spawning a thread fails only when the OS is out of resources at start-up.
        .expect("cannot start the store's writer thread");
    (jobs_tx, done_rx)
}
