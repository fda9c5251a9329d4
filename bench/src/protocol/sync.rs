//! The `sync` benchmark of `cairn-bench`: two [`Node`]s connected in memory, a lockstep driver
//! that counts one-way message flights and bytes, and the reconciliation scenarios.
//!
//! The driver delivers in waves: every message queued on one side goes to the other (one
//! flight), then every message queued on that side comes back (the next flight), until the side
//! whose turn it is has nothing to send. Only the initiator ever gets `handle_timeout`, so only
//! the session the bench starts runs. Each node's event set is built before the two connect,
//! by a loader peer that is connected only while it loads, so nothing is pushed.

use std::time::{Duration, Instant};

use cairn_crypto::PublicKey;
use cairn_protocol::node::Node;

use super::data::{Cast, Drained, View, big_ops, chain, drain_events, load, small_ops, sync_config};

/// Milliseconds between sessions (the default). Time moves only when the bench moves it, and
/// only the initiator is given `handle_timeout`, so no other session starts on its own.
const SYNC_INTERVAL_MS: u64 = 1_000;

/// Waves after which a session is declared not to converge.
const FLIGHTS_MAX: usize = 10_000;

/// Message kinds by wire tag, for the flight traces.
const KINDS: [&str; 9] =
    ["summary", "in_sync", "tips", "events", "want", "fork_probe", "fork_ids", "want_chain", "evidence"];

/// The sizes of the scenarios.
pub(crate) struct SyncSizes {
    pub(crate) in_sync: usize,
    pub(crate) lack_base: usize,
    pub(crate) lack: usize,
    pub(crate) both: Vec<usize>,
    pub(crate) both_value_bytes: usize,
    pub(crate) fork_prefix: usize,
    pub(crate) fork_k: Vec<usize>,
}

/// One measured session.
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) flights: usize,
    pub(crate) messages: usize,
    pub(crate) wire_bytes: u64,
    pub(crate) moved_events: usize,
    pub(crate) moved_bytes: u64,
    /// Events carried by `Events` messages during the session (duplicates included).
    pub(crate) events_sent: u64,
    pub(crate) elapsed: Duration,
    /// Most round trips the design aims for, if it names one.
    pub(crate) rt_target: Option<f64>,
    /// Most wire bytes per byte of events that had to move, if the design names it.
    pub(crate) ratio_target: Option<f64>,
    /// "ok", or "FAILED: why".
    pub(crate) check: String,
    /// One line per flight.
    pub(crate) trace: Vec<String>,
    /// The initiator's next session, one sync interval later: its flights, one line each
    /// (empty when it starts none).
    pub(crate) follow_up: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}

impl Side {
    fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }

    fn arrow(self) -> &'static str {
        match self {
            Self::A => "A→B",
            Self::B => "B→A",
        }
    }
}

#[derive(Default)]
struct Session {
    flights: usize,
    messages: usize,
    bytes: u64,
    events: u64,
    trace: Vec<String>,
    drained: Drained,
    quiescent: bool,
    elapsed: Duration,
}

struct Pair {
    a: Node,
    b: Node,
    ka: PublicKey,
    kb: PublicKey,
    loader: PublicKey,
    now_ms: u64,
    problems: Vec<String>,
}

impl Pair {
    fn new(cast: &Cast) -> Self {
        let (ka, kb) = (cast.a.public(), cast.b.public());
        Self {
            a: Node::new(cast.genesis.clone(), Some(ka), sync_config(SYNC_INTERVAL_MS)),
            b: Node::new(cast.genesis.clone(), Some(kb), sync_config(SYNC_INTERVAL_MS)),
            ka,
            kb,
            loader: cast.loader(),
            now_ms: 0,
            problems: Vec::new(),
        }
    }

    fn node(&mut self, side: Side) -> &mut Node {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    /// Loads events into one side before the sides connect.
    fn load(&mut self, side: Side, events: &[Vec<u8>]) {
        let (loader, now) = (self.loader, self.now_ms);
        let seen = load(self.node(side), loader, events, now);
        if seen.accepted != events.len() || seen.rejected + seen.bad_messages > 0 {
            self.problems.push(format!(
                "load: {} of {} accepted, {} rejected, {} bad messages",
                seen.accepted,
                events.len(),
                seen.rejected,
                seen.bad_messages
            ));
        }
    }

    fn connect(&mut self) {
        let ok =
            self.a.handle_connected(self.kb, self.now_ms) && self.b.handle_connected(self.ka, self.now_ms);
        if !ok {
            self.problems.push("a replica refused the other".to_owned());
        }
    }

    fn disconnect(&mut self) {
        self.a.handle_disconnected(&self.kb);
        self.b.handle_disconnected(&self.ka);
    }

    /// Drops everything both sides have queued (pushes the bench does not want to measure);
    /// returns the bytes dropped.
    fn discard_traffic(&mut self) -> u64 {
        let mut bytes = 0;
        for side in [Side::A, Side::B] {
            let node = self.node(side);
            while let Some((_, message)) = node.poll_transmit() {
                bytes += message.len() as u64;
            }
            drain_events(node);
        }
        bytes
    }

    /// Starts a session on `initiator` and delivers messages in lockstep waves until quiet.
    fn session(&mut self, initiator: Side) -> Session {
        let mut s = Session::default();
        let start = Instant::now();
        let now = self.now_ms;
        self.node(initiator).handle_timeout(now);
        let mut sender = initiator;
        while s.flights < FLIGHTS_MAX {
            let (from, to, from_key, to_key) = match sender {
                Side::A => (&mut self.a, &mut self.b, self.ka, self.kb),
                Side::B => (&mut self.b, &mut self.a, self.kb, self.ka),
            };
            let mut flight = Vec::new();
            while let Some((peer, bytes)) = from.poll_transmit() {
                if peer == to_key {
                    flight.push(bytes);
                }
            }
            s.drained.add(drain_events(from));
            if flight.is_empty() {
                s.quiescent = true;
                break;
            }
            s.flights += 1;
            s.trace.push(format!("{} {}", sender.arrow(), describe(&flight)));
            for bytes in &flight {
                s.events += events_in(bytes);
                s.messages += 1;
                s.bytes += bytes.len() as u64;
                to.handle_message(from_key, bytes, now);
                s.drained.add(drain_events(to));
            }
            sender = sender.other();
        }
        s.elapsed = start.elapsed();
        s
    }

    /// Events held by one side only: (count, encoded bytes).
    fn difference(&self) -> (usize, u64) {
        let mut count = 0;
        let mut bytes = 0;
        for (x, y) in [(&self.a, &self.b), (&self.b, &self.a)] {
            for id in &x.adapter().accepted_ids() {
                if !y.adapter().is_accepted(id) {
                    count += 1;
                    bytes += x.adapter().event(id).map_or(0, |e| e.bytes().len() as u64);
                }
            }
        }
        (count, bytes)
    }

    /// Whether both sides ended with the same set and document.
    fn converged(&mut self) -> Result<(), String> {
        let mut wrong = Vec::new();
        if self.a.sync_digest() != self.b.sync_digest() {
            wrong.push("sync_digest");
        }
        if self.a.document().digest() != self.b.document().digest() {
            wrong.push("document digest");
        }
        if self.a.adapter().n_accepted() != self.b.adapter().n_accepted() {
            wrong.push("event count");
        }
        if wrong.is_empty() { Ok(()) } else { Err(format!("{} differ", wrong.join(", "))) }
    }

    /// Runs the measured session and turns it into a row.
    fn measure(
        &mut self,
        scenario: String,
        initiator: Side,
        rt_target: Option<f64>,
        ratio_target: Option<f64>,
    ) -> Row {
        let (moved_events, moved_bytes) = self.difference();
        let s = self.session(initiator);
        let mut problems = std::mem::take(&mut self.problems);
        if !s.quiescent {
            problems.push(format!("still talking after {FLIGHTS_MAX} flights"));
        }
        if s.drained.rejected + s.drained.bad_messages > 0 {
            problems
                .push(format!("{} rejected, {} bad messages", s.drained.rejected, s.drained.bad_messages));
        }
        if s.events != moved_events as u64 {
            problems.push(format!("{} events sent for {moved_events} missing", s.events));
        }
        if let Err(e) = self.converged() {
            problems.push(e);
        }
        let check =
            if problems.is_empty() { "ok".to_owned() } else { format!("FAILED: {}", problems.join("; ")) };
        // Liveness: one interval later the initiator should open its next session.
        self.now_ms += SYNC_INTERVAL_MS;
        let follow_up = self.session(initiator).trace;
        Row {
            scenario,
            flights: s.flights,
            messages: s.messages,
            wire_bytes: s.bytes,
            moved_events,
            moved_bytes,
            events_sent: s.events,
            elapsed: s.elapsed,
            rt_target,
            ratio_target,
            check,
            trace: s.trace,
            follow_up,
        }
    }
}

/// The wire tag of a message.
fn kind(bytes: &[u8]) -> &'static str {
    let tag = bytes.get(..4).map_or(u32::MAX, |t| u32::from_le_bytes(t.try_into().expect("4 bytes")));
    KINDS.get(tag as usize).copied().unwrap_or("?")
}

/// The number of events an `Events` message carries (0 for other messages).
fn events_in(bytes: &[u8]) -> u64 {
    if kind(bytes) != "events" {
        return 0;
    }
    bytes.get(4..12).map_or(0, |n| u64::from_le_bytes(n.try_into().expect("8 bytes")))
}

/// A flight in words: each run of messages of one kind, with counts.
fn describe(flight: &[Vec<u8>]) -> String {
    let mut runs: Vec<(&str, usize, u64, u64)> = Vec::new(); // kind, messages, events, bytes
    for bytes in flight {
        let (kind, events) = (kind(bytes), events_in(bytes));
        match runs.last_mut() {
            Some(run) if run.0 == kind => {
                run.1 += 1;
                run.2 += events;
                run.3 += bytes.len() as u64;
            }
            _ => runs.push((kind, 1, events, bytes.len() as u64)),
        }
    }
    runs.iter()
        .map(|(kind, n, events, bytes)| {
            let times = if *n > 1 { format!("×{n}") } else { String::new() };
            let events = if *kind == "events" { format!(" {events} ev") } else { String::new() };
            format!("{kind}{times} ({bytes} B{events})")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// (a) Both sides hold the same `n` events.
fn in_sync(cast: &Cast, n: usize) -> Row {
    let mut view = View::default();
    let events = chain(&mut view, &cast.authors(), n, |i| small_ops(i, 0));
    let mut pair = Pair::new(cast);
    pair.load(Side::A, &events);
    pair.load(Side::B, &events);
    pair.connect();
    pair.measure(format!("(a) in sync, {n} events each"), Side::A, Some(1.0), None)
}

/// (b) Both share `base` events; A has `lack` more that B lacks.
fn lacking(cast: &Cast, base: usize, lack: usize, initiator: Side) -> Row {
    let mut view = View::default();
    let shared = chain(&mut view, &cast.authors(), base, |i| small_ops(i, 0));
    let extra = chain(&mut view, &cast.authors(), lack, |i| small_ops(base + i, 0));
    let mut pair = Pair::new(cast);
    pair.load(Side::A, &shared);
    pair.load(Side::A, &extra);
    pair.load(Side::B, &shared);
    pair.connect();
    let who = if initiator == Side::A { "A" } else { "B" };
    pair.measure(
        format!("(b) B lacks {lack} of A's {} events, {who} starts", base + lack),
        initiator,
        None,
        Some(1.05),
    )
}

/// (c) Both share `n` events and were in sync (A ran the previous session); then each writes `n`
/// more with `value_bytes` values while its pushes are lost, and `initiator` starts a session.
fn both_changed(cast: &Cast, n: usize, value_bytes: usize, initiator: Side) -> Row {
    let mut view = View::default();
    let shared = chain(&mut view, &cast.authors(), n, |i| big_ops(i, 0, value_bytes));
    let mut pair = Pair::new(cast);
    pair.load(Side::A, &shared);
    pair.load(Side::B, &shared);
    pair.connect();
    // The previous session: A records the in-sync digest for B.
    let warm = pair.session(Side::A);
    if warm.trace.len() != 2 || !warm.trace[1].contains("in_sync") {
        pair.problems.push(format!("warm-up session was not summary/in_sync: {}", warm.trace.join(" | ")));
    }
    // The connection drops; both write while apart, then reconnect. (A push on a live
    // connection cannot be lost: the stream is reliable and ordered, and what was sent on a
    // connection that dropped is forgotten with it.)
    pair.disconnect();
    for i in 0..n {
        let now = pair.now_ms;
        let written = pair.a.prepare_writes(&cast.a, vec![big_ops(n + i, 0xA, value_bytes)]);
        if let Err(e) = written.map(|prepared| pair.a.commit_writes(prepared, now)) {
            pair.problems.push(format!("write on A: {e}"));
            break;
        }
        let written = pair.b.prepare_writes(&cast.b, vec![big_ops(n + i, 0xB, value_bytes)]);
        if let Err(e) = written.map(|prepared| pair.b.commit_writes(prepared, now)) {
            pair.problems.push(format!("write on B: {e}"));
            break;
        }
    }
    pair.discard_traffic();
    pair.now_ms += SYNC_INTERVAL_MS;
    pair.connect();
    let who = if initiator == Side::A { "" } else { ", B starts (it answered the previous session)" };
    pair.measure(
        format!("(c) {n} shared, +{n} on each side ({value_bytes}-byte values){who}"),
        initiator,
        Some(1.5),
        Some(1.05),
    )
}

/// (d) An author forks after a shared prefix of `prefix` events (all authors): A holds one
/// branch of `k` events, B the other.
fn fork(cast: &Cast, prefix: usize, k: usize) -> Row {
    let mut view = View::default();
    let shared = chain(&mut view, &cast.authors(), prefix, |i| small_ops(i, 0));
    let forker = &cast.writers[0];
    let (mut view_x, mut view_y) = (view.clone(), view);
    let branch_x = chain(&mut view_x, &[forker], k, |i| small_ops(prefix + i, 1));
    let branch_y = chain(&mut view_y, &[forker], k, |i| small_ops(prefix + i, 2));
    let mut pair = Pair::new(cast);
    pair.load(Side::A, &shared);
    pair.load(Side::A, &branch_x);
    pair.load(Side::B, &shared);
    pair.load(Side::B, &branch_y);
    pair.connect();
    let fork_seq = prefix.div_ceil(5) + 1;
    let row = pair.measure(
        format!("(d) fork at seq {fork_seq} after {prefix} shared, branches of {k}"),
        Side::A,
        None,
        Some(1.05),
    );
    let evidence = (pair.a.adapter().evidence().count(), pair.b.adapter().evidence().count());
    if evidence != (1, 1) && row.check == "ok" {
        return Row { check: format!("FAILED: evidence held (A, B) = {evidence:?}"), ..row };
    }
    row
}

/// Runs every scenario, printing progress to stderr.
pub(crate) fn run(cast: &Cast, sizes: &SyncSizes) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut push = |row: Row| {
        eprintln!("  sync: {}: {} flights, {}", row.scenario, row.flights, row.check);
        rows.push(row);
    };
    push(in_sync(cast, sizes.in_sync));
    push(lacking(cast, sizes.lack_base, sizes.lack, Side::A));
    push(lacking(cast, sizes.lack_base, sizes.lack, Side::B));
    for &n in &sizes.both {
        push(both_changed(cast, n, sizes.both_value_bytes, Side::A));
    }
    if let Some(&n) = sizes.both.get(1) {
        push(both_changed(cast, n, sizes.both_value_bytes, Side::B));
    }
    for &k in &sizes.fork_k {
        push(fork(cast, sizes.fork_prefix, k));
    }
    rows
}
