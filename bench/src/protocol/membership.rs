//! `cairn-bench membership`: what resolving the membership costs, against `verify_strict`.
//!
//! Two parts. The first measures one resolution ([`ChangeLog::resolve_within`] of a clock, the
//! membership in force for an event) on logs of growing history: what the adapter pays when it
//! records a membership op or meets a causal past its cache lacks. The second measures ingest
//! through `Node::handle_message` of a stream with one membership change per 10 000 events
//! against the same stream without ([`ingest_section`]); [`count_run`] is one such ingest for
//! `valgrind --tool=callgrind`, which compares the two exactly.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

use cairn_bench::VerifySet;
use cairn_crypto::{Domain, PublicKey, SecretKey, hash};
use cairn_protocol::membership::{
    Approval, Change, ChangeId, ChangeKind, ChangeLog, MembershipId, Policy, Proposal, Rotation,
};
use cairn_protocol::{EventId, Genesis, Member, Node, NodeConfig, Op};

use crate::data;

/// Seats of the benchmark's cluster.
const SEATS: u64 = 5;

fn secret(i: u64) -> SecretKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&i.to_le_bytes());
    seed[8] = 0x3b;
    SecretKey::from_seed(&seed)
}

/// A log of `changes` changes applied one after another (an addition, then its removal, and so
/// on, so the cluster stays at 5 or 6 seats), each proposed by one seat and approved by three
/// more, plus a rotation of one genesis key every 10 changes. Returns the log and its ops.
fn history(changes: u64) -> (ChangeLog, usize) {
    let genesis =
        Genesis::new((0..SEATS).map(|i| Member { key: secret(i).public(), name: format!("m{i}") }).collect())
            .expect("a valid genesis");
    let cluster = genesis.cluster_id();
    let mut log = ChangeLog::new(&genesis, Policy::Majority);
    // The current key of genesis seat 0, which rotates; seats 1 to 3 always approve (4 of 5 or 6
    // seats: a majority of either).
    let mut rotating = secret(0).public();
    let mut seq = [0u64; 4];
    let mut ops = 0;
    let event = |key: &PublicKey, seq: u64| {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&seq.to_le_bytes());
        id[8..16].copy_from_slice(&key.0[..8]);
        EventId(id)
    };
    for i in 0..changes {
        let base = log.resolve().in_force().id();
        let added = secret(1_000 + i / 2).public();
        let kind = if i % 2 == 0 {
            ChangeKind::Add { key: added, name: format!("n{}", i / 2) }
        } else {
            ChangeKind::Remove { seat: added, key: added, cut: 0 }
        };
        let change = Change { base, kind };
        seq[0] += 1;
        log.propose(&Proposal {
            change: change.clone(),
            round: 0,
            author: rotating,
            seq: seq[0],
            event: event(&rotating, seq[0]),
            seen: 0,
        });
        for (s, seq) in seq.iter_mut().enumerate().skip(1) {
            *seq += 1;
            let author = secret(s as u64).public();
            log.approve(&Approval {
                change: change.id(),
                round: 0,
                author,
                seq: *seq,
                event: event(&author, *seq),
            });
        }
        ops += 4;
        if i % 10 == 9 {
            seq[0] += 1;
            let next = secret(100_000 + i);
            let rotation = Rotation::new(&cluster, rotating, seq[0], &next);
            log.rotate(&rotation, &rotating, seq[0]).expect("an own rotation with its proof");
            rotating = next.public();
            seq[0] = 0;
            ops += 1;
        }
    }
    let resolution = log.resolve();
    assert_eq!(resolution.applied().len() as u64, changes, "every change took effect");
    (log, ops)
}

/// Seconds per call of `f`, the median of 3 runs of enough calls to take about 50 ms.
fn per_call(mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    f();
    let once = start.elapsed().as_secs_f64().max(1e-7);
    let calls = ((0.05 / once) as usize).clamp(1, 100_000);
    let mut runs = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        for _ in 0..calls {
            f();
        }
        runs.push(start.elapsed().as_secs_f64() / calls as f64);
    }
    runs.sort_by(f64::total_cmp);
    runs[1]
}

/// The membership section of the report.
pub(crate) fn section(out: &mut String, set: &VerifySet, quick: bool) {
    let sizes: &[u64] = if quick { &[10, 100] } else { &[10, 100, 1_000] };
    let mut rows = Vec::new();
    for &changes in sizes {
        eprintln!("membership: a history of {changes} changes");
        let (log, ops) = history(changes);
        let baseline = set.run(1);
        let resolve = per_call(|| drop(black_box(log.resolve())));
        let within = per_call(|| drop(black_box(log.resolve_within(|_, seq| seq < 5))));
        let baseline_after = set.run(1);
        let verifies_per_sec = (baseline + baseline_after) / 2.0;
        rows.push((changes, ops, resolve, within, verifies_per_sec));
    }
    let _ = writeln!(out, "## membership: resolving the membership in force\n");
    let _ = writeln!(
        out,
        "| changes in the history (ops) | `resolve` µs | in `verify_strict`s (1 thread, same run) | \
         `resolve_within` an early clock µs | projected ingest cost at 1 change per 10 000 events |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|");
    for (changes, ops, resolve, within, verifies) in &rows {
        let equivalents = resolve * verifies;
        let ops_per_change = *ops as f64 / *changes as f64;
        let _ = writeln!(
            out,
            "| {changes} ({ops}) | {:.1} | {equivalents:.2} | {:.1} | {:.4} % |",
            resolve * 1e6,
            within * 1e6,
            100.0 * ops_per_change * equivalents / 10_000.0
        );
    }
    let _ = writeln!(
        out,
        "\nA cluster of {SEATS} seats; each change (an addition, then its removal, and so on) is proposed \
         by one seat and approved by three more (4 ops), and one genesis key rotates every 10 changes. \
         `resolve` resolves the whole log; `resolve_within` the part of it a clock of seq 4 covers \
         (the membership in force for an early event). The projection assumes the adapter resolves \
         once per membership op (the ops per change counted above) and that other events reuse their \
         deps' resolution (the adapter caches resolutions by membership frontier); the ingest \
         section below measures the whole path.\n"
    );
}

/// Events between two membership changes in the ingest stream with changes.
const EVENTS_PER_CHANGE: usize = 10_000;
/// Paired runs of each stream.
const INGEST_REPEATS: usize = 5;

/// The ops of event `i` of a stream by three seats in turn (`i % 3` signs it) with one
/// membership change per [`EVENTS_PER_CHANGE`] events: in each block, the first event of seat 0
/// from the block's middle on proposes the change and the next ones (seats 1, then 2) approve it
/// until it has a quorum. The changes add a seat (3 seats: 2 votes) and remove it again (4
/// seats: 3 votes), so the three writing seats stay a quorum. Every other event is an ordinary
/// write.
struct ChangeStream {
    base: MembershipId,
    /// The change voted on, the event that proposed it, and the votes it needs.
    pending: Option<(ChangeId, usize, usize)>,
    n_changes: usize,
}

impl ChangeStream {
    fn ops(&mut self, i: usize) -> Vec<Op> {
        if let Some((change, proposed_at, votes)) = self.pending
            && i < proposed_at + votes
        {
            if i + 1 == proposed_at + votes {
                // The last vote needed: it takes effect, and the next change is of the new
                // membership.
                self.base = MembershipId(hash(Domain::Membership, &[self.base.0, change.0].concat()));
                self.pending = None;
            }
            return vec![Op::Approve { change, round: 0 }];
        }
        let block = i / EVENTS_PER_CHANGE;
        if self.pending.is_none()
            && self.n_changes == block
            && i % EVENTS_PER_CHANGE >= EVENTS_PER_CHANGE / 2
            && i.is_multiple_of(3)
        {
            let newcomer = secret(5_000 + (self.n_changes / 2) as u64).public();
            let (kind, votes) = if self.n_changes.is_multiple_of(2) {
                (ChangeKind::Add { key: newcomer, name: format!("n{}", self.n_changes / 2) }, 2)
            } else {
                (ChangeKind::Remove { seat: newcomer, key: newcomer, cut: 0 }, 3)
            };
            let change = Change { base: self.base, kind };
            self.pending = Some((change.id(), i, votes));
            self.n_changes += 1;
            return vec![Op::Propose { change, round: 0 }];
        }
        data::small_ops(i, 0)
    }
}

/// One ingest, on one thread, of the 20 000-event stream without or with membership changes:
/// what `valgrind --tool=callgrind` counts to compare the two exactly (signing the stream is
/// counted too, and is the same work for both).
pub(crate) fn count_run(with_changes: bool, n_events: usize) {
    let seats: Vec<SecretKey> = (0..3).map(secret).collect();
    let genesis = Genesis::new(
        seats.iter().enumerate().map(|(i, k)| Member { key: k.public(), name: format!("s{i}") }).collect(),
    )
    .expect("a valid genesis");
    let authors: Vec<&SecretKey> = seats.iter().collect();
    let mut stream = ChangeStream { base: MembershipId(genesis.cluster_id()), pending: None, n_changes: 0 };
    let events = data::chain(&mut data::View::default(), &authors, n_events, |i| {
        if with_changes { stream.ops(i) } else { data::small_ops(i, 0) }
    });
    let mut node = Node::new(genesis, None, NodeConfig::default());
    let peer = seats[0].public();
    assert!(node.handle_connected(peer, 0));
    let mut accepted = 0;
    for message in data::events_messages(&events) {
        node.handle_message(peer, &message, 0);
        while node.poll_transmit().is_some() {}
        accepted += data::drain_events(&mut node).accepted;
    }
    assert_eq!(accepted, n_events);
    eprintln!("accepted {accepted}, changes in force {}", node.adapter().membership().applied().len());
}

/// `cairn-bench membership` part two: ingest through `Node::handle_message` on two threads of
/// a stream with one membership change per [`EVENTS_PER_CHANGE`] events, against the same
/// stream without, each run paired with a `verify_strict` baseline run.
pub(crate) fn ingest_section(out: &mut String, set: &VerifySet, n_events: usize) {
    let seats: Vec<SecretKey> = (0..3).map(secret).collect();
    let genesis = Genesis::new(
        seats.iter().enumerate().map(|(i, k)| Member { key: k.public(), name: format!("s{i}") }).collect(),
    )
    .expect("a valid genesis");
    let authors: Vec<&SecretKey> = seats.iter().collect();
    eprintln!("membership: signing two streams of {n_events} events");
    let plain = data::chain(&mut data::View::default(), &authors, n_events, |i| data::small_ops(i, 0));
    let mut stream = ChangeStream { base: MembershipId(genesis.cluster_id()), pending: None, n_changes: 0 };
    let with_changes = data::chain(&mut data::View::default(), &authors, n_events, |i| stream.ops(i));
    let n_changes = stream.n_changes;
    let peer = seats[0].public();
    let run = |events: &[Vec<u8>]| {
        let messages = data::events_messages(events);
        let mut config = NodeConfig::default();
        config.adapter.verify_threads = 2;
        let mut node = Node::new(genesis.clone(), None, config);
        assert!(node.handle_connected(peer, 0), "the sender is a member");
        let start = Instant::now();
        let mut accepted = 0;
        for message in &messages {
            node.handle_message(peer, message, 0);
            while node.poll_transmit().is_some() {}
            accepted += data::drain_events(&mut node).accepted;
        }
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(accepted, events.len(), "every generated event is accepted");
        let applied = node.adapter().membership().applied().len();
        drop(black_box(node));
        (events.len() as f64 / secs, applied)
    };
    let mut ratios = [Vec::new(), Vec::new()];
    let mut rates = [Vec::new(), Vec::new()];
    let mut applied = 0;
    for _ in 0..INGEST_REPEATS {
        for (which, events) in [&plain, &with_changes].into_iter().enumerate() {
            let baseline = set.run(2);
            let (rate, n_applied) = run(events);
            if which == 1 {
                applied = n_applied;
            }
            ratios[which].push(rate / baseline);
            rates[which].push(rate);
        }
    }
    let median = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let (plain_ratio, changes_ratio) = (median(ratios[0].clone()), median(ratios[1].clone()));
    eprintln!("membership: ingest {plain_ratio:.3} without changes, {changes_ratio:.3} with {n_changes}");
    let _ = writeln!(out, "## membership: ingest with membership changes in the stream\n");
    let _ = writeln!(
        out,
        "{n_events} events of 3 seats through `Node::handle_message` on 2 threads; {n_changes} changes \
         (a proposal and its approvals, one change per {EVENTS_PER_CHANGE} events; {applied} took effect). Each run \
         is paired with a `verify_strict` run on 2 threads; medians of {INGEST_REPEATS}.\n"
    );
    let _ = writeln!(out, "| stream | events/s | ratio to `verify_strict`/s | runs (ratio) |");
    let _ = writeln!(out, "|---|---:|---:|---|");
    for (which, name) in ["no membership op", "one change per 10 000 events"].into_iter().enumerate() {
        let runs: Vec<String> = ratios[which].iter().map(|r| format!("{r:.3}")).collect();
        let _ = writeln!(
            out,
            "| {name} | {:.0} | **{:.3}** | {} |",
            median(rates[which].clone()),
            median(ratios[which].clone()),
            runs.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "\nWith changes ÷ without: **{:.3}** (target: no measurable loss).\n",
        changes_ratio / plain_ratio
    );
}
