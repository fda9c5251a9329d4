//! Membership over time on the wire (`docs/PROTOCOL.md` §17): replicas that sign membership ops
//! in ordinary events, validate them on each event's causal past (rules V1 to V5), follow the
//! membership in force, and keep the document to what it admits (rule M9).

use cairn_crypto::{PublicKey, SecretKey};
use cairn_protocol::codec::encode_message;
use cairn_protocol::membership::{ChangeKind, Rotation};
use cairn_protocol::{
    Adapter, AdapterConfig, Event, EventId, Genesis, Member, MemberRequest, Message, Node, NodeConfig, Op,
    PeerId, Reject, Verified, WriteError,
};

fn key(i: u8) -> SecretKey {
    SecretKey::from_seed(&[i; 32])
}

fn genesis(n: u8) -> Genesis {
    Genesis::new((1..=n).map(|i| Member { key: key(i).public(), name: format!("m{i}") }).collect()).unwrap()
}

fn put(k: &str, v: &str) -> Vec<Op> {
    vec![Op::Put { key: k.as_bytes().to_vec(), value: v.as_bytes().to_vec() }]
}

/// Replicas, each with the secret key it signs with now.
struct Cluster {
    genesis: Genesis,
    nodes: Vec<(SecretKey, Node)>,
}

impl Cluster {
    /// Replicas of the genesis of members 1..=n_members, run by the keys `running`.
    fn new(n_members: u8, running: &[u8]) -> Self {
        let genesis = genesis(n_members);
        let nodes = running
            .iter()
            .map(|&i| (key(i), Node::new(genesis.clone(), Some(key(i).public()), NodeConfig::default())))
            .collect();
        Self { genesis, nodes }
    }

    /// A replica for a key that is not (yet) a member.
    fn join(&mut self, secret: SecretKey) -> usize {
        let node = Node::new(self.genesis.clone(), Some(secret.public()), NodeConfig::default());
        self.nodes.push((secret, node));
        self.nodes.len() - 1
    }

    fn write(&mut self, i: usize, ops: Vec<Op>) -> Result<Verified, WriteError> {
        let (secret, node) = &mut self.nodes[i];
        let prepared = node.prepare_writes(secret, vec![ops])?;
        Ok(node.commit_writes(prepared, 1).remove(0))
    }

    fn member_op(&mut self, i: usize, request: MemberRequest<'_>) -> Result<Verified, WriteError> {
        let (secret, node) = &mut self.nodes[i];
        let prepared = node.prepare_membership(secret, request)?;
        Ok(node.commit_writes(prepared, 1).remove(0))
    }

    /// Every accepted event of node `from`, in a causal order (ascending lamport).
    fn events_of(&self, from: usize) -> Vec<Vec<u8>> {
        let node = &self.nodes[from].1;
        let mut events: Vec<(u64, EventId, Vec<u8>)> = node
            .adapter()
            .accepted_ids()
            .into_iter()
            .map(|id| {
                let stored = node.adapter().event(&id).unwrap();
                (stored.lamport(), id, stored.bytes().to_vec())
            })
            .collect();
        events.sort();
        events.into_iter().map(|(_, _, bytes)| bytes).collect()
    }

    /// Node `from` sends node `to` everything it has accepted.
    fn send(&mut self, from: usize, to: usize) {
        let events = self.events_of(from);
        self.deliver(from, to, events);
    }

    /// Node `to` receives `events` from node `from` (as the peer it is now).
    fn deliver(&mut self, from: usize, to: usize, events: Vec<Vec<u8>>) {
        let sender: PeerId = self.nodes[from].0.public();
        let node = &mut self.nodes[to].1;
        if !node.is_connected(&sender) {
            node.handle_connected(sender, 1);
        }
        node.handle_message(sender, &encode_message(&Message::Events { events }), 1);
        while node.poll_transmit().is_some() {}
        while node.poll_event().is_some() {}
    }

    /// Everyone sends everyone everything, twice (so relayed events arrive too).
    fn gossip(&mut self) {
        for _ in 0..2 {
            for from in 0..self.nodes.len() {
                for to in 0..self.nodes.len() {
                    if from != to {
                        self.send(from, to);
                    }
                }
            }
        }
    }

    fn seats(&self, i: usize) -> Vec<PublicKey> {
        self.nodes[i].1.adapter().membership().in_force().seats().iter().map(|s| s.founder).collect()
    }

    /// Every node holds the same events, membership and document.
    fn assert_agree(&mut self) {
        let first = self.nodes[0].1.adapter().membership().chain().to_vec();
        let digest = self.nodes[0].1.document().digest();
        let sync = self.nodes[0].1.sync_digest();
        for (i, (_, node)) in self.nodes.iter_mut().enumerate() {
            assert_eq!(
                node.adapter().membership().chain(),
                first.as_slice(),
                "node {i}: the membership chain"
            );
            assert_eq!(node.document().digest(), digest, "node {i}: the document");
            assert_eq!(node.sync_digest(), sync, "node {i}: the accepted set");
        }
    }

    fn value(&self, i: usize, k: &str) -> Vec<Vec<u8>> {
        self.nodes[i].1.document().register(k.as_bytes()).siblings.into_iter().map(|s| s.value).collect()
    }

    /// The one pending change, as node `i` sees it.
    fn pending(&self, i: usize) -> cairn_protocol::ChangeId {
        let pending = self.nodes[i].1.adapter().membership().pending();
        assert_eq!(pending.len(), 1, "one pending change: {pending:?}");
        pending[0].0
    }
}

/// An event `secret` signs on everything node `on` accepted, at `seq`, with `ops`: what a
/// member that does not follow the rules could send.
fn forge(cluster: &Cluster, on: usize, secret: &SecretKey, seq: u64, ops: Vec<Op>) -> Vec<u8> {
    let node = &cluster.nodes[on].1;
    let tips = node.adapter().tips();
    let lamport = 1 + tips.iter().map(|t| node.adapter().meta(&t.id).unwrap().lamport).max().unwrap_or(0);
    let deps = tips.iter().map(|t| t.id).collect();
    Event::sign(secret, seq, lamport, deps, ops).encode()
}

/// What node `to` did with `event` from node `from`: `None` if accepted, or the reason.
fn verdict(cluster: &mut Cluster, from: usize, to: usize, event: Vec<u8>) -> Option<Reject> {
    let sender = cluster.nodes[from].0.public();
    let node = &mut cluster.nodes[to].1;
    if !node.is_connected(&sender) {
        node.handle_connected(sender, 1);
    }
    let before = node.peer_stats(&sender).map(|s| s.rejected.clone()).unwrap_or_default();
    node.handle_message(sender, &encode_message(&Message::Events { events: vec![event] }), 1);
    while node.poll_transmit().is_some() {}
    while node.poll_event().is_some() {}
    let after = &node.peer_stats(&sender).unwrap().rejected;
    after
        .iter()
        .find(|(reason, n)| before.get(*reason).copied().unwrap_or(0) < **n)
        .map(|(reason, _)| *reason)
}

#[test]
fn a_member_added_by_a_majority_writes_and_every_node_admits_it() {
    let mut c = Cluster::new(3, &[1, 2, 3]);
    let dave = c.join(key(4));
    assert_eq!(c.write(dave, put("k", "dave")).unwrap_err(), WriteError::NotMember, "not a member yet");

    c.member_op(0, MemberRequest::Propose(ChangeKind::Add { key: key(4).public(), name: "dave".into() }))
        .unwrap();
    c.gossip();
    assert_eq!(c.seats(1).len(), 3, "one vote of three is not a quorum");
    // A key no change ever named signs nothing valid, even on the pending proposal.
    let stranger = forge(&c, 1, &key(9), 1, put("k", "eve"));
    assert_eq!(verdict(&mut c, 1, 2, stranger), Some(Reject::NotMember));

    let change = c.pending(1);
    // A node never votes twice in one membership and round: not for another change (a double
    // approval), nor for the same one again.
    let other = ChangeKind::Add { key: key(8).public(), name: "other".into() };
    assert!(matches!(
        c.member_op(0, MemberRequest::Propose(other)),
        Err(WriteError::Membership(cairn_protocol::membership::ChangeError::AlreadyVoted(voted))) if voted == change
    ));
    c.member_op(1, MemberRequest::Approve(change)).unwrap();
    c.gossip();
    for i in 0..4 {
        assert_eq!(c.seats(i).len(), 4, "node {i}: dave is in force");
    }
    c.write(dave, put("k", "dave")).unwrap();
    c.gossip();
    c.assert_agree();
    for i in 0..4 {
        assert_eq!(c.value(i, "k"), vec![b"dave".to_vec()], "node {i} admits dave's write");
    }
}

#[test]
fn a_removed_member_is_cut_where_the_removal_says() {
    let mut c = Cluster::new(3, &[1, 2, 3]);
    c.write(2, put("x", "kept")).unwrap();
    c.gossip();
    let carol = key(3).public();
    c.member_op(0, MemberRequest::Propose(ChangeKind::Remove { seat: carol, key: carol, cut: 1 })).unwrap();
    c.send(0, 1);
    // Carol, not having seen her removal, writes on: valid, but past her cut.
    c.write(2, put("y", "after the cut")).unwrap();
    c.send(2, 1);
    let change = c.pending(1);
    c.member_op(1, MemberRequest::Approve(change)).unwrap();
    c.gossip();
    assert_eq!(c.seats(0).len(), 2, "carol's seat is gone");
    // The others refuse her as a peer from then on, and hold the same events and document.
    assert!(c.nodes[0].1.is_refused(&carol) && c.nodes[1].1.is_refused(&carol));
    assert!(!c.nodes[2].1.is_refused(&key(1).public()), "she still hears the others");
    let (a, b) = (c.nodes[0].1.sync_digest(), c.nodes[1].1.sync_digest());
    assert_eq!(a, b);
    assert_eq!(c.nodes[0].1.document().digest(), c.nodes[1].1.document().digest());
    assert_eq!(c.nodes[2].1.document().digest(), c.nodes[1].1.document().digest());
    for i in 0..3 {
        assert_eq!(c.value(i, "x"), vec![b"kept".to_vec()], "node {i}: what carol wrote up to her cut stays");
        assert!(c.value(i, "y").is_empty(), "node {i}: what she wrote past it is not admitted");
    }
    // Having seen her removal, she can sign nothing more: her node refuses, and an event she
    // signs anyway is invalid everywhere.
    assert_eq!(c.write(2, put("z", "no")).unwrap_err(), WriteError::NotMember);
    let late = forge(&c, 2, &key(3), 3, put("z", "no"));
    assert_eq!(verdict(&mut c, 1, 0, late), Some(Reject::NotMember), "relayed by a member, it is invalid");
}

#[test]
fn a_rotation_hands_the_seat_to_the_new_key() {
    let mut c = Cluster::new(3, &[1, 2, 3]);
    c.write(0, put("k", "old key")).unwrap();
    let successor = key(11);
    let rotation = c.member_op(0, MemberRequest::Rotate(&successor)).unwrap();
    assert_eq!(rotation.seq(), 2, "the rotation is carried by the old key's event of its cut");
    // The peers learn of the rotation from the old key, then know the new one.
    c.gossip();
    c.nodes[0].1.rekey(successor.public());
    c.nodes[0].0 = key(11);
    c.write(0, put("k", "new key")).unwrap();
    c.gossip();
    c.assert_agree();
    assert_eq!(c.value(2, "k"), vec![b"new key".to_vec()]);
    // The new key votes for the seat; the old one signs nothing valid past its rotation.
    let old = forge(&c, 1, &key(1), 3, put("k", "stale"));
    assert_eq!(verdict(&mut c, 1, 2, old), Some(Reject::NotMember));
    c.member_op(0, MemberRequest::Propose(ChangeKind::Add { key: key(4).public(), name: "dave".into() }))
        .unwrap();
    c.gossip();
    c.member_op(1, MemberRequest::Approve(c.pending(1))).unwrap();
    c.gossip();
    assert_eq!(c.seats(2).len(), 4, "the rotated seat's vote counted");
    // A rotation whose proof the successor did not sign is refused.
    let cluster = c.genesis.cluster_id();
    let mut forged = Rotation::new(&cluster, key(2).public(), 2, &key(12));
    forged.successor = key(13).public();
    let bad = forge(&c, 1, &key(2), 2, vec![Op::Rotate(forged)]);
    assert_eq!(verdict(&mut c, 1, 2, bad), Some(Reject::BadMembership));
}

#[test]
fn membership_ops_that_break_a_rule_are_invalid() {
    let mut c = Cluster::new(3, &[1, 2, 3]);
    let base = c.nodes[0].1.adapter().membership().in_force().id();
    // An approval of a change nobody proposed.
    let approve =
        forge(&c, 0, &key(1), 1, vec![Op::Approve { change: cairn_protocol::ChangeId([7; 32]), round: 0 }]);
    assert_eq!(verdict(&mut c, 0, 1, approve), Some(Reject::BadMembership));
    // A proposal of another membership than the one in force.
    let change = cairn_protocol::Change {
        base: cairn_protocol::MembershipId([1; 32]),
        kind: ChangeKind::Add { key: key(4).public(), name: "d".into() },
    };
    let wrong_base = forge(&c, 0, &key(1), 1, vec![Op::Propose { change, round: 0 }]);
    assert_eq!(verdict(&mut c, 0, 1, wrong_base), Some(Reject::BadMembership));
    // A vote in a round that is not open.
    let change =
        cairn_protocol::Change { base, kind: ChangeKind::Add { key: key(4).public(), name: "d".into() } };
    let wrong_round = forge(&c, 0, &key(1), 1, vec![Op::Propose { change: change.clone(), round: 1 }]);
    assert_eq!(verdict(&mut c, 0, 1, wrong_round), Some(Reject::BadMembership));
    // Two votes in one event.
    let two = forge(
        &c,
        0,
        &key(1),
        1,
        vec![Op::Propose { change: change.clone(), round: 0 }, Op::Approve { change: change.id(), round: 0 }],
    );
    assert_eq!(verdict(&mut c, 0, 1, two), Some(Reject::BadMembership));
    // A removal whose cut is past what its proposer had seen.
    let carol = key(3).public();
    let unseen =
        cairn_protocol::Change { base, kind: ChangeKind::Remove { seat: carol, key: carol, cut: 5 } };
    let unseen = forge(&c, 0, &key(1), 1, vec![Op::Propose { change: unseen, round: 0 }]);
    assert_eq!(verdict(&mut c, 0, 1, unseen), Some(Reject::BadMembership));
    // And the node's own path refuses them before signing.
    let err = c.member_op(0, MemberRequest::Approve(cairn_protocol::ChangeId([7; 32]))).unwrap_err();
    assert!(matches!(err, WriteError::Membership(_)), "{err:?}");
    // A valid proposal goes through.
    let ok = forge(&c, 0, &key(1), 1, vec![Op::Propose { change, round: 0 }]);
    assert_eq!(verdict(&mut c, 0, 1, ok), None);
}

#[test]
fn a_node_that_cannot_keep_membership_ops_refuses_them() {
    let g = genesis(3);
    let config = AdapterConfig { membership_changes: false, ..AdapterConfig::default() };
    let mut adapter = Adapter::new(g.clone(), config);
    let change = cairn_protocol::Change {
        base: cairn_protocol::MembershipId(g.cluster_id()),
        kind: ChangeKind::Add { key: key(4).public(), name: "d".into() },
    };
    let event = Event::sign(&key(1), 1, 1, vec![], vec![Op::Propose { change, round: 0 }]);
    let out = adapter.ingest(PublicKey([9; 32]), vec![event.encode()]);
    assert_eq!(out.rejected[0].reason, Reject::BadMembership);
}

/// The case: the honest seats split between two additions, and one seat approves
/// both (in two events of one seq: it equivocates too). Each side's nodes see their change
/// take effect and its new member write; once everything is everywhere, one change wins on
/// every node, the double approval is evidence, and what only the loser allowed (the loser's
/// new member's writes) is not in the document.
#[test]
fn two_competing_changes_pushed_over_by_a_double_approver_leave_one_winner() {
    // Seats 1..=5; nodes run by 1 and 3 watch each side; 5 double-approves.
    let mut c = Cluster::new(5, &[1, 2, 3, 4]);
    let (y, z) = (c.join(key(6)), c.join(key(7)));
    let add_y = ChangeKind::Add { key: key(6).public(), name: "y".into() };
    let add_z = ChangeKind::Add { key: key(7).public(), name: "z".into() };
    let p1 = c.member_op(0, MemberRequest::Propose(add_y)).unwrap();
    let p2 = c.member_op(2, MemberRequest::Propose(add_z)).unwrap();
    // Side one: 1 and 2; side two: 3 and 4.
    c.send(0, 1);
    let c1 = c.pending(1);
    c.member_op(1, MemberRequest::Approve(c1)).unwrap();
    c.send(2, 3);
    let c2 = c.pending(3);
    c.member_op(3, MemberRequest::Approve(c2)).unwrap();
    c.send(1, 0);
    c.send(3, 2);
    // Seat 5 approves both, at its seq 1, on each side's events.
    let x1 = forge(&c, 0, &key(5), 1, vec![Op::Approve { change: c1, round: 0 }]);
    let x2 = forge(&c, 2, &key(5), 1, vec![Op::Approve { change: c2, round: 0 }]);
    assert_eq!(verdict(&mut c, 1, 0, x1), None);
    assert_eq!(verdict(&mut c, 3, 2, x2), None);
    assert_eq!(c.seats(0).len(), 6, "side one sees its change in force");
    assert_eq!(c.seats(2).len(), 6, "side two sees its change in force");
    // Each new member writes on its side.
    c.send(0, y);
    c.write(y, put("k", "y")).unwrap();
    c.send(y, 0);
    c.send(2, z);
    c.write(z, put("k", "z")).unwrap();
    c.send(z, 2);
    assert_eq!(c.value(0, "k"), vec![b"y".to_vec()]);
    assert_eq!(c.value(2, "k"), vec![b"z".to_vec()]);
    assert_ne!(p1.id(), p2.id());
    // Everything everywhere.
    c.gossip();
    c.assert_agree();
    let winner = c.nodes[0].1.adapter().membership().applied().to_vec();
    assert_eq!(winner.len(), 1, "one change took effect");
    let (won, lost, admitted) = if winner[0] == c1 { (c1, c2, "y") } else { (c2, c1, "z") };
    assert_ne!(won, lost);
    for i in 0..c.nodes.len() {
        let m = c.nodes[i].1.adapter().membership();
        assert_eq!(m.applied(), &[won], "node {i}");
        assert_eq!(m.double_approvals().len(), 1, "node {i}: the double approval is evidence");
        assert_eq!(m.double_approvals()[0].seat, key(5).public());
        assert_eq!(
            c.value(i, "k"),
            vec![admitted.as_bytes().to_vec()],
            "node {i}: only the winner's member is admitted"
        );
    }
}

// ---- any order ----------------------------------------------------------------------------

/// Steps of one random history.
const HISTORY_STEPS: usize = 100;

/// A small deterministic generator for the scripts below.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

/// A history made by four members and a joiner acting at random on partial views: writes,
/// proposals to add the joiner or remove a seat (cut at what the proposer has seen), approvals
/// of pending changes, one rotation per member, and partial syncs between pairs. Every op is
/// made through the node's own checked path, so the history is valid. Returns every event.
fn random_history(seed: u64, steps: usize) -> (Genesis, Vec<Vec<u8>>) {
    random_history_with(seed, steps, false)
}

/// [`random_history`], where seat 4 (node 3) may also double-approve (two votes of one
/// membership and round, in consecutive events) and equivocate (two events of one seq, with
/// different votes, each to other nodes).
fn random_history_with(seed: u64, steps: usize, byzantine: bool) -> (Genesis, Vec<Vec<u8>>) {
    let mut rng = Rng(seed | 1);
    let mut c = Cluster::new(4, &[1, 2, 3, 4]);
    let joiner = c.join(key(5));
    let mut rotated = [false; 5];
    let mut n_crafted = 0u32;
    for _ in 0..steps {
        let i = rng.below(c.nodes.len());
        if byzantine && i == 3 && !rotated[3] && rng.below(3) == 0 {
            let node = &c.nodes[3].1;
            let resolution = node.adapter().membership().clone();
            let (base, round) = (resolution.in_force().id(), resolution.round());
            let seq = node.adapter().max_seq(node.adapter().roster().idx(&key(4).public()).unwrap()) + 1;
            n_crafted += 1;
            let fresh = |n: u32| {
                let change = cairn_protocol::Change {
                    base,
                    kind: ChangeKind::Add {
                        key: SecretKey::from_seed(&[
                            0x70 ^ (n as u8),
                            (n >> 8) as u8,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                            9,
                        ])
                        .public(),
                        name: format!("byz{n}"),
                    },
                };
                vec![Op::Propose { change, round }]
            };
            let first = forge(&c, 3, &key(4), seq, fresh(2 * n_crafted));
            if rng.below(2) == 0 {
                // Double approval: a second proposal on the first, in the next event.
                let rejected = c.nodes[3].1.restore(vec![first]);
                if rejected.is_empty() {
                    let second = forge(&c, 3, &key(4), seq + 1, fresh(2 * n_crafted + 1));
                    let _ = c.nodes[3].1.restore(vec![second]);
                }
            } else {
                // Equivocation: another event of the same seq, to another node only.
                let twin = forge(&c, 3, &key(4), seq, fresh(2 * n_crafted + 1));
                let _ = c.nodes[3].1.restore(vec![first]);
                let to = rng.below(3);
                let _ = c.nodes[to].1.restore(vec![twin]);
            }
            continue;
        }
        match rng.below(10) {
            0 | 1 => {
                let k = format!("k{}", rng.below(3));
                let _ = c.write(i, put(&k, &format!("{i}")));
            }
            2 => {
                let _ = c.write(i, vec![Op::Incr { key: b"c".to_vec(), delta: 1 }]);
            }
            3 => {
                let kind = if rng.below(2) == 0 {
                    ChangeKind::Add { key: key(5).public(), name: "joiner".into() }
                } else {
                    let seat = key(1 + rng.below(4) as u8).public();
                    let node = &c.nodes[i].1;
                    let resolution = node.adapter().membership();
                    let current = resolution.chains().current(&seat);
                    let seen =
                        node.adapter().roster().idx(&current).map_or(0, |idx| node.adapter().max_seq(idx));
                    ChangeKind::Remove { seat, key: current, cut: seen }
                };
                let _ = c.member_op(i, MemberRequest::Propose(kind));
            }
            4..=6 => {
                let pending = c.nodes[i].1.adapter().membership().pending();
                if !pending.is_empty() {
                    let change = pending[rng.below(pending.len())].0;
                    let _ = c.member_op(i, MemberRequest::Approve(change));
                }
            }
            7 if i != joiner && !rotated[i] && rng.below(3) == 0 => {
                let successor = key(20 + i as u8);
                // The peers hear of it from the old key first (see the rotation test).
                if c.member_op(i, MemberRequest::Rotate(&successor)).is_ok() {
                    for to in 0..c.nodes.len() {
                        if to != i {
                            c.send(i, to);
                        }
                    }
                    c.nodes[i].1.rekey(successor.public());
                    c.nodes[i].0 = key(20 + i as u8);
                    rotated[i] = true;
                }
            }
            _ => {
                let to = rng.below(c.nodes.len());
                if to != i {
                    c.send(i, to);
                }
            }
        }
    }
    let mut all: Vec<Vec<u8>> = Vec::new();
    for i in 0..c.nodes.len() {
        for event in c.events_of(i) {
            if !all.contains(&event) {
                all.push(event);
            }
        }
    }
    (c.genesis.clone(), all)
}

/// `events` in the order `seed` draws, with a fifth of them sent a second time if `twice`.
fn shuffled(events: &[Vec<u8>], seed: u64, twice: bool) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed | 1);
    let mut out = events.to_vec();
    for i in (1..out.len()).rev() {
        out.swap(i, rng.below(i + 1));
    }
    if twice {
        let n = out.len();
        for _ in 0..n / 5 {
            let again = out[rng.below(n)].clone();
            out.insert(rng.below(out.len()), again);
        }
    }
    out
}

/// What a replica that received `events` in this order, in messages of `chunk` events with
/// some sent twice, ends up with: its membership chain, accepted ids, and digests.
fn replay(
    genesis: &Genesis,
    events: &[Vec<u8>],
) -> (Vec<cairn_protocol::MembershipId>, Vec<EventId>, [u8; 32], [u8; 32]) {
    // Through `restore`, which validates like any input but from no peer: a peer's key may be
    // removed in the history, and its messages refused from then on.
    let mut node = Node::new(genesis.clone(), None, NodeConfig::default());
    for chunk in events.chunks(3) {
        let rejected = node.restore(chunk.to_vec());
        assert!(rejected.is_empty(), "a valid history is valid in any order: {rejected:?}");
    }
    let chain = node.adapter().membership().chain().to_vec();
    (chain, node.adapter().accepted_ids(), node.document().digest(), node.sync_digest())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Any order, duplication or interleaving of a valid history with membership changes
    /// (concurrent proposals, removals of each other, rotations concurrent with removals,
    /// approvals before their proposal arrives) gives the same membership, accepted set and
    /// document on every replica.
    #[test]
    fn any_order_of_a_history_with_membership_changes_gives_one_result(
        seed in proptest::prelude::any::<u64>(),
        orders in proptest::collection::vec(proptest::prelude::any::<u64>(), 3),
    ) {
        let (genesis, events) = random_history(seed, HISTORY_STEPS);
        let expected = replay(&genesis, &events);
        proptest::prop_assert_eq!(expected.1.len(), events.len(), "every event is accepted");
        for order in orders {
            proptest::prop_assert_eq!(&replay(&genesis, &shuffled(&events, order, true)), &expected);
        }
    }
}

/// The generator above makes what the property is about: changes that take effect (additions
/// and removals), rotations, and writes past a cut, across its seeds.
#[test]
fn random_histories_hold_membership_changes() {
    let (mut additions, mut removals, mut rotations, mut joiner_writes) = (0, 0, 0, 0);
    for seed in 1..=40 {
        let (genesis, events) = random_history(seed, HISTORY_STEPS);
        let mut node = Node::new(genesis.clone(), None, NodeConfig::default());
        node.handle_connected(key(1).public(), 1);
        node.handle_message(key(1).public(), &encode_message(&Message::Events { events: events.clone() }), 1);
        let mut kinds = std::collections::BTreeMap::new();
        for event in &events {
            let event = cairn_protocol::codec::decode_event(event).unwrap();
            for op in &event.ops {
                match op {
                    Op::Propose { change, .. } => {
                        kinds.insert(change.id(), matches!(change.kind, ChangeKind::Add { .. }));
                    }
                    Op::Rotate(_) => rotations += 1,
                    _ => {}
                }
            }
            joiner_writes += usize::from(event.header.author == key(5).public());
        }
        for id in node.adapter().membership().applied() {
            if kinds[id] { additions += 1 } else { removals += 1 }
        }
    }
    eprintln!(
        "additions {additions} removals {removals} rotations {rotations} joiner events {joiner_writes}"
    );
    assert!(additions >= 5 && removals >= 5 && rotations >= 20 && joiner_writes >= 5);
}

// ---- the cases point 2 names --------------------------------------------------------------

/// Two seats propose to remove each other at once, on a cluster of four: each proposal gets
/// one more vote. Every replica ends with the same membership, whatever order it learned the
/// votes in.
#[test]
fn concurrent_removals_of_each_other_settle_the_same_everywhere() {
    let mut c = Cluster::new(4, &[1, 2, 3, 4]);
    let (a, b) = (key(1).public(), key(2).public());
    c.member_op(0, MemberRequest::Propose(ChangeKind::Remove { seat: b, key: b, cut: 0 })).unwrap();
    c.member_op(1, MemberRequest::Propose(ChangeKind::Remove { seat: a, key: a, cut: 0 })).unwrap();
    c.send(0, 2);
    c.send(1, 3);
    let (remove_b, remove_a) = (c.pending(2), c.pending(3));
    c.member_op(2, MemberRequest::Approve(remove_b)).unwrap();
    c.member_op(3, MemberRequest::Approve(remove_a)).unwrap();
    c.gossip();
    // Two votes each of four seats: neither reaches three, and the round is deadlocked (every
    // seat voted), so the next round is open.
    let m = c.nodes[0].1.adapter().membership().clone();
    assert!(m.applied().is_empty(), "neither removal has a quorum");
    assert_eq!(m.round(), 1, "the deadlocked round opens the next");
    c.assert_agree();
    // In round 1 three seats remove b.
    for i in [0, 2, 3] {
        let request = if i == 0 {
            MemberRequest::Propose(ChangeKind::Remove { seat: b, key: b, cut: 0 })
        } else {
            MemberRequest::Approve(
                c.nodes[0].1.adapter().membership().ballot(&a, &m.in_force().id(), 1)[0].change,
            )
        };
        c.member_op(i, request).unwrap();
        c.gossip();
    }
    let seats = c.seats(0);
    assert!(seats.len() == 3 && !seats.contains(&b), "b is removed in round 1");
    // Node 1 (b) learned it too; the others agree and refuse b.
    for i in [0, 2, 3] {
        assert!(c.nodes[i].1.is_refused(&b));
    }
    let digest = c.nodes[0].1.document().digest();
    assert!([2, 3].iter().all(|&i| c.nodes[i].1.document().digest() == digest));
}

/// A seat rotates while a removal of it, cut at its old key, is voted: the removal cuts the
/// successor too (rule M8), so nothing the new key signs is admitted, and the new key is
/// refused as a peer.
#[test]
fn a_removal_cuts_a_rotation_made_concurrently() {
    let mut c = Cluster::new(3, &[1, 2, 3]);
    let carol = key(3).public();
    c.write(2, put("x", "carol")).unwrap();
    c.gossip();
    c.member_op(0, MemberRequest::Propose(ChangeKind::Remove { seat: carol, key: carol, cut: 1 })).unwrap();
    // Carol, unaware, rotates to a new key and writes with it.
    let successor = key(13);
    c.member_op(2, MemberRequest::Rotate(&successor)).unwrap();
    c.send(2, 1);
    c.send(2, 0);
    c.nodes[2].1.rekey(successor.public());
    c.nodes[2].0 = key(13);
    c.write(2, put("y", "carol's new key")).unwrap();
    c.send(2, 1);
    c.send(0, 1);
    let change = c.pending(1);
    c.member_op(1, MemberRequest::Approve(change)).unwrap();
    c.send(1, 0);
    c.send(2, 0);
    for i in [0, 1] {
        assert_eq!(c.value(i, "x"), vec![b"carol".to_vec()], "node {i}: up to the cut stays");
        assert!(c.value(i, "y").is_empty(), "node {i}: the successor's write is cut too");
        assert!(c.nodes[i].1.is_refused(&successor.public()), "node {i} refuses the successor");
    }
    assert_eq!(c.nodes[0].1.document().digest(), c.nodes[1].1.document().digest());
}

/// An approval that arrives before the proposal it approves waits in the causal buffer (the
/// proposal is in its causal past) and counts once the proposal is accepted.
#[test]
fn an_approval_that_arrives_before_its_proposal_counts() {
    let mut c = Cluster::new(3, &[1, 2, 3]);
    let propose = c
        .member_op(0, MemberRequest::Propose(ChangeKind::Add { key: key(4).public(), name: "dave".into() }))
        .unwrap();
    c.send(0, 1);
    let approve = c.member_op(1, MemberRequest::Approve(c.pending(1))).unwrap();
    // Node 2 hears the approval first, then the proposal.
    c.deliver(1, 2, vec![approve.bytes().to_vec()]);
    assert_eq!(c.seats(2).len(), 3, "the approval waits for its proposal");
    assert_eq!(c.nodes[2].1.adapter().buffer_use().0, 1);
    c.deliver(0, 2, vec![propose.bytes().to_vec()]);
    assert_eq!(c.seats(2).len(), 4, "then both count");
}

/// From review 3 (finding 1): a seat in force rotates onto the key of a seat removed earlier (rule M1 allows a
/// key on two chains). Rule M9 then admits every seq of that key again, including the ones past
/// its cut unless a cut binds the key on every chain (it does now): before, a node that had
/// already excluded them kept them out and a fresh replica given the same accepted set let them
/// in. No equivocation involved.
#[test]
fn a_rotation_onto_a_removed_key_brings_back_nothing_past_its_cut() {
    let mut c = Cluster::new(3, &[1, 2, 3]);
    let dave = c.join(key(4));
    let dave_key = key(4).public();
    c.member_op(0, MemberRequest::Propose(ChangeKind::Add { key: dave_key, name: "dave".into() })).unwrap();
    c.gossip();
    let change = c.pending(1);
    c.member_op(1, MemberRequest::Approve(change)).unwrap();
    c.gossip();
    assert_eq!(c.seats(1).len(), 4, "dave is in force");
    c.write(dave, put("k", "d1")).unwrap();
    c.gossip();

    // m2 proposes removing dave with his cut at seq 1; m3 and m1 approve (3 of 4). Dave has not seen it yet.
    c.member_op(1, MemberRequest::Propose(ChangeKind::Remove { seat: dave_key, key: dave_key, cut: 1 }))
        .unwrap();
    c.send(1, 2);
    let change = c.pending(2);
    c.member_op(2, MemberRequest::Approve(change)).unwrap();
    c.send(2, 0);
    c.send(1, 0);
    c.member_op(0, MemberRequest::Approve(change)).unwrap();
    // Dave writes past his cut without having seen the removal: valid, not admitted.
    let d2 = c.write(dave, put("k", "d2")).unwrap();
    let (d2_id, d2) = (d2.id(), d2.bytes().to_vec());
    // Dave is refused as a peer now; a member relays his event.
    for i in 0..3 {
        c.deliver(2, i, vec![d2.clone()]);
    }
    c.gossip();
    assert!(c.nodes.iter().all(|(_, node)| node.adapter().is_accepted(&d2_id)));
    assert_eq!(c.seats(0).len(), 3, "dave's seat is removed");
    for i in 0..4 {
        assert_eq!(c.value(i, "k"), vec![b"d1".to_vec()], "node {i}: d2 is past dave's cut");
    }

    // m1 (colluding with dave's key) rotates its seat onto dave's key.
    let rotation = c.member_op(0, MemberRequest::Rotate(&key(4)));
    assert!(rotation.is_ok(), "the rotation is valid: {rotation:?}");
    c.gossip();

    // A fresh replica gets the same accepted set in one message.
    let fresh = c.join(key(9));
    c.send(0, fresh);
    let (a, b) = (c.nodes[0].1.sync_digest(), c.nodes[fresh].1.sync_digest());
    assert_eq!(a, b, "same accepted set");
    assert_eq!(
        c.nodes[0].1.adapter().membership().chain(),
        c.nodes[fresh].1.adapter().membership().chain(),
        "same membership"
    );
    assert_eq!(
        c.value(0, "k"),
        c.value(fresh, "k"),
        "the same accepted set gives the same document (node 0 vs a fresh replica)"
    );
    assert_eq!(c.nodes[0].1.document().digest(), c.nodes[fresh].1.document().digest());
}

/// From review 3 (finding 2): one member names many successors in forked events of one seq.
/// Every node indexes every named key, whatever the order it received them in, so the
/// successor that wins rule M1 gets one verdict everywhere. (With a node-local roster limit,
/// since removed, the last keys were left out on one node and not another.)
#[test]
fn a_flood_of_named_keys_gets_one_verdict_in_any_order() {
    let key16 = |i: u16| {
        let mut seed = [0xA5u8; 32];
        seed[..2].copy_from_slice(&i.to_le_bytes());
        SecretKey::from_seed(&seed)
    };
    let genesis = genesis(3);
    let cluster = genesis.cluster_id();
    let m1 = key(1);
    let mut rotations: Vec<(PublicKey, u16, Vec<u8>, EventId)> = (0..64u16)
        .map(|i| {
            let rotation = Rotation::new(&cluster, m1.public(), 1, &key16(i));
            let event = Event::sign(&m1, 1, 1, vec![], vec![Op::Rotate(rotation)]);
            (key16(i).public(), i, event.encode(), event.id())
        })
        .collect();
    rotations.sort();
    let (s_min, i_min, _, e_min) = rotations[0].clone();
    let ascending: Vec<Vec<u8>> = rotations.iter().map(|r| r.2.clone()).collect();
    let descending: Vec<Vec<u8>> = ascending.iter().rev().cloned().collect();
    let peer = key(2).public();
    let mut a = Adapter::new(genesis.clone(), AdapterConfig::default());
    let mut b = Adapter::new(genesis, AdapterConfig::default());
    assert_eq!(a.ingest(peer, descending).accepted.len(), 64);
    assert_eq!(b.ingest(peer, ascending).accepted.len(), 64);
    assert_eq!(a.tips(), b.tips(), "same accepted set");
    assert_eq!(a.membership().chains().successor(&m1.public()), Some(&s_min), "m1 rotated to the lowest");
    let next = Event::sign(&key16(i_min), 1, 2, vec![e_min], put("k", "v")).encode();
    let ra: Vec<Reject> = a.ingest(peer, vec![next.clone()]).rejected.iter().map(|r| r.reason).collect();
    let rb: Vec<Reject> = b.ingest(peer, vec![next]).rejected.iter().map(|r| r.reason).collect();
    assert_eq!(ra, rb, "one event, one causal past: one verdict");
    assert!(ra.is_empty(), "the winning successor may author: {ra:?}");
}

/// From review 3 (finding 3): one member forks 64 rotations at its seq 1, an honest member
/// merges them and writes on. Telling which of the forked rotations each later event's causal
/// past holds walks the history; with the walks' answers kept per accepted event, an event's
/// walk stops at its deps, so the work per event stays flat as the history grows (counted
/// exactly: events the walks look at). It grew with the history before.
#[test]
fn a_fork_with_membership_ops_costs_every_later_event_the_same() {
    let key16 = |i: u16| {
        let mut seed = [0x5Au8; 32];
        seed[..2].copy_from_slice(&i.to_le_bytes());
        SecretKey::from_seed(&seed)
    };
    let genesis = genesis(3);
    let cluster = genesis.cluster_id();
    let (m1, m2) = (key(1), key(2));
    let forks: Vec<Event> = (0..64u16)
        .map(|i| {
            let rotation = Rotation::new(&cluster, m1.public(), 1, &key16(i));
            Event::sign(&m1, 1, 1, vec![], vec![Op::Rotate(rotation)])
        })
        .collect();
    let peer = key(3).public();
    let mut adapter = Adapter::new(genesis, AdapterConfig::default());
    assert_eq!(adapter.ingest(peer, forks.iter().map(Event::encode).collect()).accepted.len(), 64);
    let first = Event::sign(&m2, 1, 2, forks.iter().map(Event::id).collect(), put("k", "0"));
    let mut prev = first.id();
    assert!(adapter.ingest(peer, vec![first.encode()]).rejected.is_empty());
    let chain: Vec<Vec<u8>> = (2..=401u64)
        .map(|seq| {
            let event = Event::sign(&m2, seq, seq + 1, vec![prev], put("k", &seq.to_string()));
            prev = event.id();
            event.encode()
        })
        .collect();
    let mut per_batch = Vec::new();
    for chunk in chain.chunks(100) {
        let before = adapter.reach_visits();
        assert_eq!(adapter.ingest(peer, chunk.to_vec()).accepted.len(), chunk.len());
        per_batch.push(adapter.reach_visits() - before);
    }
    // Each event's walk, per forked rotation, looks at its one dep and stops there.
    assert!(per_batch.iter().all(|&n| n == per_batch[0]), "flat: {per_batch:?}");
    assert!(per_batch[0] <= 100 * 64, "at most one event per walk: {per_batch:?}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// The same, with a Byzantine seat that double-approves and equivocates.
    #[test]
    fn any_order_with_a_byzantine_seat_gives_one_result(
        seed in proptest::prelude::any::<u64>(),
        orders in proptest::collection::vec(proptest::prelude::any::<u64>(), 3),
    ) {
        let (genesis, events) = random_history_with(seed, HISTORY_STEPS, true);
        let expected = replay(&genesis, &events);
        for order in orders {
            proptest::prop_assert_eq!(&replay(&genesis, &shuffled(&events, order, false)), &expected);
        }
    }
}

/// The Byzantine histories hold what that property is about: double approvals the resolution
/// reports, and forks of the Byzantine seat's chain.
#[test]
fn byzantine_histories_hold_double_approvals_and_forks() {
    let (mut double, mut forked) = (0, 0);
    for seed in 1..=30 {
        let (genesis, events) = random_history_with(seed, HISTORY_STEPS, true);
        let mut node = Node::new(genesis, None, NodeConfig::default());
        assert!(node.restore(events).is_empty());
        double += usize::from(!node.adapter().membership().double_approvals().is_empty());
        forked += usize::from(node.adapter().evidence().count() > 0);
    }
    eprintln!("double approvals in {double} of 30 histories, forks in {forked}");
    assert!(double >= 5 && forked >= 5, "double approvals {double}, forks {forked}");
}

/// The genesis's policy: with a threshold of 3 of 3 seats, two votes do not add a member and
/// three do, on every replica.
#[test]
fn a_genesis_threshold_is_the_votes_a_change_needs() {
    let genesis = genesis(3).with_threshold(3).unwrap();
    let nodes = (1..=3u8)
        .map(|i| (key(i), Node::new(genesis.clone(), Some(key(i).public()), NodeConfig::default())))
        .collect();
    let mut c = Cluster { genesis, nodes };
    c.member_op(0, MemberRequest::Propose(ChangeKind::Add { key: key(4).public(), name: "dave".into() }))
        .unwrap();
    c.gossip();
    let change = c.pending(1);
    c.member_op(1, MemberRequest::Approve(change)).unwrap();
    c.gossip();
    for i in 0..3 {
        assert_eq!(c.seats(i).len(), 3, "node {i}: two votes of a threshold of three");
    }
    c.member_op(2, MemberRequest::Approve(change)).unwrap();
    c.gossip();
    for i in 0..3 {
        assert_eq!(c.seats(i).len(), 4, "node {i}: three votes");
    }
    c.assert_agree();
}

/// A threshold must be more than half of the genesis's members (two changes can never both
/// pass) and at most all of them; the codec refuses one that breaks the rule, and any other
/// bytes after the members.
#[test]
fn a_genesis_threshold_outside_its_bounds_is_refused() {
    for (n, threshold, ok) in
        [(3, 1, false), (3, 2, true), (3, 3, true), (3, 4, false), (4, 2, false), (4, 3, true)]
    {
        assert_eq!(genesis(n).with_threshold(threshold).is_ok(), ok, "{threshold} of {n}");
    }
    let mut bytes = genesis(3).encode();
    bytes.extend(1u32.to_le_bytes());
    assert!(matches!(
        cairn_protocol::codec::decode_genesis(&bytes),
        Err(cairn_protocol::codec::CodecError::InvalidValue(message)) if message.starts_with("bad_threshold")
    ));
    let mut bytes = genesis(3).encode();
    bytes.extend([2, 0]);
    assert!(matches!(
        cairn_protocol::codec::decode_genesis(&bytes),
        Err(cairn_protocol::codec::CodecError::TrailingBytes(2))
    ));
    let strict = genesis(3).with_threshold(2).unwrap();
    assert_ne!(strict.cluster_id(), genesis(3).cluster_id(), "the policy is part of the cluster id");
    assert_eq!(cairn_protocol::codec::decode_genesis(&strict.encode()).unwrap(), strict);
}
