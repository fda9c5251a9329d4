//! The group commit driven by hand: what is committed together, when, and what each writer is
//! answered, on virtual time.

use cairn_crypto::SecretKey;
use cairn_protocol::{Genesis, Member, Node, NodeConfig, Op};

use super::*;

fn key(i: u8) -> SecretKey {
    SecretKey::from_seed(&[i; 32])
}

fn genesis() -> Genesis {
    Genesis::new((1..=2).map(|i| Member { key: key(i).public(), name: format!("m{i}") }).collect()).unwrap()
}

/// Node 1 of a two-member cluster, allowed to write at once.
fn node() -> Node {
    Node::new(
        genesis(),
        Some(key(1).public()),
        NodeConfig { own_seq_peers_needed: 0, ..NodeConfig::default() },
    )
}

fn put(k: &str) -> Vec<Op> {
    vec![Op::Put { key: k.as_bytes().to_vec(), value: b"v".to_vec() }]
}

fn replies(commit: &mut GroupCommit<u32>) -> Vec<(u32, Result<Acked, WriteFailure>)> {
    std::iter::from_fn(|| commit.poll_reply()).collect()
}

#[test]
fn concurrent_writes_share_one_job_and_are_answered_only_after_it_is_durable() {
    let (mut node, mut commit) = (node(), GroupCommit::new(1_024));
    for i in 0..10 {
        commit.handle_write(put(&format!("k{i}")), i);
    }
    let job = commit.poll_commit(&mut node, &key(1), 0).expect("writes are due at once");
    assert_eq!(job.events.len(), 1, "ten small writes are packed into one event");
    assert!(commit.poll_commit(&mut node, &key(1), 0).is_none(), "one job in flight at a time");
    assert!(replies(&mut commit).is_empty(), "no answer before the fsync");
    assert_eq!(node.adapter().n_accepted(), 0, "the event reaches the replica only once stored");
    commit.handle_write(put("later"), 10);
    commit.handle_committed(Committed::Ok, job, &mut node, 1);
    let answered = replies(&mut commit);
    assert_eq!(answered.iter().map(|(r, _)| *r).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    assert!(answered.iter().all(|(_, a)| a.as_ref().is_ok_and(|a| a.event.seq() == 1)));
    assert_eq!(node.adapter().n_accepted(), 1);
    // The write that came during the commit goes into the next job, as seq 2.
    let next = commit.poll_commit(&mut node, &key(1), 1).expect("the queued write");
    commit.handle_committed(Committed::Ok, next, &mut node, 2);
    let answered = replies(&mut commit);
    assert!(matches!(&answered[..], [(10, Ok(acked))] if acked.event.seq() == 2));
    assert!(commit.is_idle());
}

#[test]
fn a_full_queue_refuses_at_once_and_loses_nothing_it_took() {
    let (mut node, mut commit) = (node(), GroupCommit::new(1_024));
    for i in 0..WRITES_QUEUED_MAX + 3 {
        commit.handle_write(put("k"), i as u32);
    }
    let refused = replies(&mut commit);
    assert_eq!(refused.len(), 3);
    assert!(refused.iter().all(|(_, r)| matches!(r, Err(WriteFailure::QueueFull))));
    assert_eq!(commit.n_writes_queued(), WRITES_QUEUED_MAX);
    let mut acked = 0;
    let mut now = 0;
    while let Some(job) = commit.poll_commit(&mut node, &key(1), now) {
        now += 1;
        commit.handle_committed(Committed::Ok, job, &mut node, now);
        acked += replies(&mut commit).iter().filter(|(_, r)| r.is_ok()).count();
    }
    assert_eq!(acked, WRITES_QUEUED_MAX, "every write taken is acknowledged");
    // The byte bound holds too: a handful of large writes fill it.
    let big = vec![Op::Put { key: b"big".to_vec(), value: vec![7; 1_000_000] }];
    let fit = WRITES_QUEUED_BYTES_MAX / 1_000_003;
    for i in 0..=fit {
        commit.handle_write(big.clone(), i as u32);
    }
    assert!(matches!(&replies(&mut commit)[..], [(_, Err(WriteFailure::QueueFull))]));
    assert_eq!(commit.n_writes_queued(), fit);
}

#[test]
fn a_full_disk_fails_the_writes_gives_the_seqs_back_and_retries_with_backoff() {
    let (mut node, mut commit) = (node(), GroupCommit::new(1_024));
    commit.handle_peer_event([9; 32], vec![1, 2, 3], 0);
    commit.handle_evidence([8; 32], vec![4]);
    commit.handle_write(put("lost"), 1);
    let job = commit.poll_commit(&mut node, &key(1), 0).unwrap();
    assert_eq!(job.events.len(), 2, "the peer's event, then the own one");
    let lost_id = job.events[1].id();
    commit.handle_committed(
        Committed::NoSpace { write_error: "disk full".into(), reason: "disk full".into() },
        job,
        &mut node,
        10,
    );
    assert!(
        matches!(&replies(&mut commit)[..], [(1, Err(WriteFailure::NoSpace(why)))] if why == "disk full")
    );
    assert_eq!(commit.no_space(), Some("disk full"));
    assert_eq!(node.adapter().n_accepted(), 0);
    // Nothing is tried before the back-off ends, then the peer's event and evidence go again,
    // and a new write gets the seq the failed one had (it never surfaced: no equivocation).
    commit.handle_write(put("kept"), 2);
    assert_eq!(commit.poll_timeout(), Some(10 + RETRY_MIN_MS));
    assert!(commit.poll_commit(&mut node, &key(1), 10 + RETRY_MIN_MS - 1).is_none());
    let job = commit.poll_commit(&mut node, &key(1), 10 + RETRY_MIN_MS).unwrap();
    assert_eq!(job.events[0].id(), [9; 32]);
    assert_eq!(job.evidence.len(), 1);
    let event = cairn_protocol::codec::decode_event(job.events[1].bytes()).unwrap();
    assert_eq!(event.header.seq, 1, "the seq of the failed write is handed out again");
    assert_ne!(job.events[1].id(), lost_id);
    // A second failure doubles the back-off.
    commit.handle_committed(
        Committed::NoSpace { write_error: "disk full".into(), reason: "disk full".into() },
        job,
        &mut node,
        200,
    );
    assert_eq!(commit.poll_timeout(), Some(200 + 2 * RETRY_MIN_MS));
    commit.handle_write(put("third"), 3);
    let job = commit.poll_commit(&mut node, &key(1), 200 + 2 * RETRY_MIN_MS).unwrap();
    commit.handle_committed(Committed::Ok, job, &mut node, 500);
    assert_eq!(commit.no_space(), None, "room again");
    let answered = replies(&mut commit);
    assert!(answered.iter().any(|(r, a)| *r == 3 && a.is_ok()));
    assert_eq!(node.adapter().evidence().count(), 0);
}

#[test]
fn peer_events_wait_for_a_batch_or_a_delay_and_draining_commits_at_once() {
    let (mut node, mut commit) = (node(), GroupCommit::<u32>::new(1_024));
    commit.handle_peer_event([1; 32], vec![1], 100);
    assert!(commit.poll_commit(&mut node, &key(1), 100).is_none(), "waits for company");
    assert_eq!(commit.poll_timeout(), Some(100 + PEER_EVENTS_COMMIT_DELAY_MS));
    let job = commit.poll_commit(&mut node, &key(1), 100 + PEER_EVENTS_COMMIT_DELAY_MS).expect("due");
    commit.handle_committed(Committed::Ok, job, &mut node, 130);
    for i in 0..PEER_EVENTS_COMMIT_BATCH {
        commit.handle_peer_event([2; 32], vec![i as u8], 200);
    }
    let job = commit.poll_commit(&mut node, &key(1), 200).expect("a full batch goes at once");
    commit.handle_committed(Committed::Ok, job, &mut node, 201);
    commit.handle_peer_event([3; 32], vec![1], 300);
    commit.start_draining();
    assert!(commit.poll_commit(&mut node, &key(1), 300).is_some(), "draining does not wait");
}

#[test]
fn input_from_peers_pauses_while_too_many_events_wait_for_the_store_and_resumes_after_a_commit() {
    let (mut node, mut commit) = (node(), GroupCommit::<u32>::new(1_024));
    // By count: the bound counts the job in flight too.
    for i in 0..PEER_EVENTS_UNSTORED_MAX - 1 {
        commit.handle_peer_event([1; 32], vec![i as u8], 0);
    }
    assert!(commit.takes_peer_input());
    let in_flight = commit.poll_commit(&mut node, &key(1), 0).expect("a full batch goes at once");
    assert_eq!(commit.peer_events_unstored().0, PEER_EVENTS_UNSTORED_MAX - 1);
    commit.handle_peer_event([2; 32], vec![0], 1);
    assert_eq!(commit.peer_events_unstored(), (PEER_EVENTS_UNSTORED_MAX, PEER_EVENTS_UNSTORED_MAX));
    assert!(!commit.takes_peer_input(), "one past the bound: the node stops reading from peers");
    commit.handle_committed(Committed::Ok, in_flight, &mut node, 2);
    assert_eq!(commit.peer_events_unstored(), (1, 1), "the job that landed no longer counts");
    assert!(commit.takes_peer_input());
    let job = commit.poll_commit(&mut node, &key(1), 2 + PEER_EVENTS_COMMIT_DELAY_MS).unwrap();
    commit.handle_committed(Committed::Ok, job, &mut node, 30);

    // By bytes: a few large events reach the byte bound long before the count; a commit is
    // due at half of it, without waiting for the delay.
    let large = PEER_EVENTS_UNSTORED_BYTES_MAX / 4;
    commit.handle_peer_event([3; 32], vec![0; large], 100);
    assert!(commit.poll_commit(&mut node, &key(1), 100).is_none(), "a quarter waits for company");
    commit.handle_peer_event([4; 32], vec![0; large], 100);
    let job = commit.poll_commit(&mut node, &key(1), 100).expect("half of the byte bound goes at once");
    commit.handle_peer_event([5; 32], vec![0; large], 101);
    assert!(commit.takes_peer_input());
    commit.handle_peer_event([6; 32], vec![0; large], 101);
    assert!(!commit.takes_peer_input(), "the byte bound");
    // A full disk keeps them unstored, and the input paused, until a commit lands.
    commit.handle_committed(
        Committed::NoSpace { write_error: "disk full".into(), reason: "disk full".into() },
        job,
        &mut node,
        102,
    );
    assert_eq!(commit.peer_events_unstored(), (4, 4 * large));
    assert!(!commit.takes_peer_input());
    let job = commit.poll_commit(&mut node, &key(1), 102 + RETRY_MIN_MS).expect("the retry");
    assert_eq!(job.events.first().map(|e| e.id()), Some([3; 32]), "in the order accepted");
    commit.handle_committed(Committed::Ok, job, &mut node, 300);
    assert_eq!(commit.peer_events_unstored(), (0, 0));
    assert!(commit.takes_peer_input());
}

#[test]
fn a_store_failure_is_fatal_and_fails_every_write() {
    let (mut node, mut commit) = (node(), GroupCommit::new(1_024));
    commit.handle_write(put("a"), 1);
    let job = commit.poll_commit(&mut node, &key(1), 0).unwrap();
    commit.handle_write(put("b"), 2);
    commit.handle_committed(Committed::Failed { reason: "io error".into() }, job, &mut node, 1);
    commit.handle_write(put("c"), 3);
    let answered = replies(&mut commit);
    assert_eq!(answered.len(), 3);
    assert!(answered.iter().all(|(_, r)| matches!(r, Err(WriteFailure::Storage(why)) if why == "io error")));
    assert_eq!(commit.failed(), Some("io error"));
    assert!(commit.poll_commit(&mut node, &key(1), 2).is_none());
    assert!(commit.is_done_draining());
}

#[test]
fn writes_the_replica_refuses_to_sign_are_answered_not_ready() {
    // A node with own-seq safety on has not heard from its peers: it must not sign.
    let mut node = Node::new(
        genesis(),
        Some(key(1).public()),
        NodeConfig { own_seq_peers_needed: 1, ..NodeConfig::default() },
    );
    let mut commit = GroupCommit::new(1_024);
    commit.handle_write(put("a"), 1);
    assert!(commit.poll_commit(&mut node, &key(1), 0).is_none());
    assert!(matches!(&replies(&mut commit)[..], [(1, Err(WriteFailure::NotReady(_)))]));
}
