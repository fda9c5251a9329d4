//! The replica state machine driven in lockstep: push, reconciliation, fork search.

use cairn_crypto::{PublicKey, SecretKey};
use cairn_protocol::codec::{decode_message, encode_message};
use cairn_protocol::{
    Event, Genesis, Member, Message, Node, NodeConfig, NodeEvent, Op, Verified, WriteError,
};

fn key(i: u8) -> SecretKey {
    SecretKey::from_seed(&[i; 32])
}

fn genesis(n: u8) -> Genesis {
    Genesis::new((1..=n).map(|i| Member { key: key(i).public(), name: format!("m{i}") }).collect()).unwrap()
}

/// A local write as the daemon makes it: prepared, (stored,) committed.
fn write(node: &mut Node, key: &SecretKey, ops: Vec<Op>, now_ms: u64) -> Result<Verified, WriteError> {
    let prepared = node.prepare_writes(key, vec![ops])?;
    Ok(node.commit_writes(prepared, now_ms).remove(0))
}

fn put(k: &str, v: &str) -> Vec<Op> {
    vec![Op::Put { key: k.as_bytes().to_vec(), value: v.as_bytes().to_vec() }]
}

/// The bytes of `n` events `author` writes one after another (keys `k0`, `k1`, …).
fn chain_of(g: &Genesis, author: &SecretKey, n: usize) -> Vec<Vec<u8>> {
    let mut writer = Node::new(g.clone(), Some(author.public()), NodeConfig::default());
    (0..n)
        .map(|i| write(&mut writer, author, put(&format!("k{i}"), "v"), 1).unwrap().bytes().to_vec())
        .collect()
}

/// Nodes joined by perfect links, driven in waves: every queued message is delivered, then
/// the next wave. Counts waves (one-way flights) and bytes.
struct Net {
    nodes: Vec<(PublicKey, Node)>,
    now_ms: u64,
    flights: usize,
    bytes: usize,
    log: Vec<(usize, &'static str)>,
}

impl Net {
    fn new(n_members: u8, running: &[u8]) -> Self {
        let g = genesis(n_members);
        let nodes = running
            .iter()
            .map(|i| {
                let config = NodeConfig { sync_interval_ms: 1_000_000, ..NodeConfig::default() };
                (key(*i).public(), Node::new(g.clone(), Some(key(*i).public()), config))
            })
            .collect();
        Self { nodes, now_ms: 1, flights: 0, bytes: 0, log: Vec::new() }
    }

    fn idx(&self, k: &PublicKey) -> usize {
        self.nodes.iter().position(|(p, _)| p == k).unwrap()
    }

    fn connect(&mut self, a: usize, b: usize) {
        let (ka, kb) = (self.nodes[a].0, self.nodes[b].0);
        assert!(self.nodes[a].1.handle_connected(kb, self.now_ms));
        assert!(self.nodes[b].1.handle_connected(ka, self.now_ms));
    }

    /// Delivers waves until nothing is queued; returns the number of waves.
    fn settle(&mut self) -> usize {
        let mut waves = 0;
        loop {
            let mut wave = Vec::new();
            for i in 0..self.nodes.len() {
                let from = self.nodes[i].0;
                while let Some((to, bytes)) = self.nodes[i].1.poll_transmit() {
                    wave.push((from, to, bytes));
                }
                while self.nodes[i].1.poll_event().is_some() {}
            }
            if wave.is_empty() {
                return waves;
            }
            waves += 1;
            self.flights += 1;
            for (from, to, bytes) in wave {
                self.bytes += bytes.len();
                self.log.push((self.idx(&from), decode_message(&bytes).unwrap().kind()));
                let t = self.idx(&to);
                let now = self.now_ms;
                self.nodes[t].1.handle_message(from, &bytes, now);
            }
            assert!(waves < 1_000, "no quiescence");
        }
    }

    fn sync_from(&mut self, i: usize) {
        self.now_ms += 2_000_000;
        let now = self.now_ms;
        self.nodes[i].1.handle_timeout(now);
    }

    fn write(&mut self, i: usize, k: &str, v: &str) {
        let now = self.now_ms;
        let signer = key(*key_seed(&self.nodes[i].0));
        write(&mut self.nodes[i].1, &signer, put(k, v), now).unwrap();
    }

    fn digests(&mut self) -> Vec<([u8; 32], [u8; 32])> {
        self.nodes.iter_mut().map(|(_, n)| (n.sync_digest(), n.document().digest())).collect()
    }
}

fn key_seed(public: &PublicKey) -> &'static u8 {
    (1..=9u8).find(|i| key(*i).public() == *public).map(|i| Box::leak(Box::new(i))).unwrap()
}

#[test]
fn writes_are_pushed_to_connected_peers() {
    let mut net = Net::new(3, &[1, 2, 3]);
    net.connect(0, 1);
    net.connect(1, 2);
    net.settle();
    net.write(0, "k", "from-1");
    net.write(2, "k", "from-3");
    net.settle();
    let d = net.digests();
    assert!(d.iter().all(|x| *x == d[0]), "relayed through the middle node");
    let read = net.nodes[1].1.document().register(b"k");
    assert_eq!(read.siblings.len(), 2, "concurrent writes are siblings");
}

#[test]
fn in_sync_nodes_confirm_with_one_round_trip() {
    let mut net = Net::new(2, &[1, 2]);
    net.connect(0, 1);
    net.settle();
    for i in 0..20 {
        net.write(0, "k", &i.to_string());
    }
    net.settle();
    net.sync_from(0);
    net.settle();
    net.bytes = 0;
    net.flights = 0;
    net.sync_from(0);
    assert_eq!(net.settle(), 2, "Summary, then InSync");
    assert!(net.bytes < 100, "constant size: {} bytes", net.bytes);
}

#[test]
fn a_late_joiner_catches_up_by_reconciliation() {
    let mut net = Net::new(3, &[1, 2, 3]);
    net.connect(0, 1);
    net.settle();
    for i in 0..50 {
        net.write(i % 2, "k", &i.to_string());
    }
    net.settle();
    net.connect(1, 2);
    net.sync_from(2);
    net.settle();
    let d = net.digests();
    assert!(d.iter().all(|x| *x == d[0]));
    assert_eq!(net.nodes[2].1.adapter().n_accepted(), 50);
}

#[test]
fn both_sides_changed_costs_three_flights() {
    let mut net = Net::new(2, &[1, 2]);
    net.connect(0, 1);
    net.write(0, "a", "1");
    net.settle();
    net.sync_from(0);
    net.settle();
    net.sync_from(1);
    net.settle();
    // Partition: writes on both sides are not pushed.
    net.nodes[0].1.handle_disconnected(&key(2).public());
    net.nodes[1].1.handle_disconnected(&key(1).public());
    for i in 0..5 {
        net.write(0, "x", &i.to_string());
        net.write(1, "y", &i.to_string());
    }
    net.settle();
    // Reconnecting forgets the last in-sync digest, so open as a changed node would.
    net.connect(0, 1);
    net.flights = 0;
    net.log.clear();
    net.sync_from(0);
    let waves = net.settle();
    let d = net.digests();
    assert_eq!(d[0], d[1], "{:?}", net.log);
    assert!(waves <= 4, "waves {waves}: {:?}", net.log);
}

#[test]
fn an_equivocation_fork_is_found_and_both_branches_replicate() {
    let mut net = Net::new(3, &[1, 2]);
    net.connect(0, 1);
    net.settle();
    let liar = key(3);
    // A shared prefix of 40, then two branches of 30 each.
    let mut prefix = vec![Event::sign(&liar, 1, 1, vec![], put("p", "1"))];
    for seq in 2..=40 {
        let prev = prefix.last().unwrap();
        prefix.push(Event::sign(&liar, seq, seq, vec![prev.id()], put("p", &seq.to_string())));
    }
    let mut branches = [prefix.clone(), prefix.clone()];
    for (b, branch) in branches.iter_mut().enumerate() {
        for seq in 41..=70 {
            let prev = branch.last().unwrap().id();
            branch.push(Event::sign(&liar, seq, seq, vec![prev], put("b", &format!("{b}-{seq}"))));
        }
    }
    // Each honest node hears one branch directly from the liar, with no push between them.
    net.nodes[0].1.handle_disconnected(&key(2).public());
    net.nodes[1].1.handle_disconnected(&key(1).public());
    for (i, branch) in branches.iter().enumerate() {
        let node = &mut net.nodes[i].1;
        assert!(node.handle_connected(liar.public(), 1));
        let events = branch.iter().map(Event::encode).collect();
        node.handle_message(liar.public(), &encode_message(&Message::Events { events }), 1);
        while let Some(e) = node.poll_event() {
            assert!(!matches!(e, NodeEvent::Rejected { .. }), "{e:?}");
        }
        node.handle_disconnected(&liar.public());
        while node.poll_transmit().is_some() {}
        assert_eq!(node.adapter().n_accepted(), 70);
    }
    net.connect(0, 1);
    net.sync_from(0);
    net.settle();
    let d = net.digests();
    assert_eq!(d[0], d[1], "{:?}", net.log);
    for (_, node) in &net.nodes {
        assert_eq!(node.adapter().n_accepted(), 100);
        assert_eq!(node.adapter().evidence().count(), 1);
        assert!(node.is_refused(&liar.public()));
        assert!(node.document().register(b"b").siblings.is_empty(), "ops from the fork seq on are excluded");
        assert_eq!(node.document().register(b"p").visible.unwrap().value, b"40");
    }
}

#[test]
fn a_node_without_history_learns_its_own_seq_before_it_signs() {
    let mut net = Net::new(2, &[1, 2]);
    net.connect(0, 1);
    for i in 0..3 {
        net.write(0, "k", &i.to_string());
    }
    net.settle();
    // Node 1 loses its store but keeps its key, and comes back with own-seq safety on.
    let config = NodeConfig { sync_interval_ms: 1_000_000, own_seq_peers_needed: 1, ..NodeConfig::default() };
    net.nodes[0].1 = Node::new(genesis(2), Some(key(1).public()), config);
    net.nodes[1].1.handle_disconnected(&key(1).public());
    let refused = write(&mut net.nodes[0].1, &key(1), put("k", "too early"), 5);
    assert!(matches!(refused, Err(WriteError::OwnSeqUnknown { heard: 0, needed: 1, .. })), "{refused:?}");
    net.connect(0, 1);
    net.sync_from(0);
    net.settle();
    let event = write(&mut net.nodes[0].1, &key(1), put("k", "after"), 6).expect("learned");
    assert_eq!(event.seq(), 4, "the next seq after the three it had lost");
    net.settle();
    assert!(net.nodes.iter().all(|(_, n)| n.adapter().evidence().count() == 0), "no self-equivocation");
}

#[test]
fn restore_rebuilds_the_same_state_and_catches_altered_bytes() {
    let mut net = Net::new(2, &[1, 2]);
    net.connect(0, 1);
    let mut log = Vec::new();
    for i in 0..10 {
        let now = net.now_ms;
        let event =
            write(&mut net.nodes[i % 2].1, &key(1 + (i % 2) as u8), put("k", &i.to_string()), now).unwrap();
        log.push(event.bytes().to_vec());
        net.settle();
    }
    let g = genesis(2);
    let mut restored = Node::new(g.clone(), Some(key(1).public()), NodeConfig::default());
    assert!(restored.restore(log.clone()).is_empty());
    assert_eq!(restored.document().digest(), net.nodes[0].1.document().digest());
    assert_eq!(restored.sync_digest(), net.nodes[0].1.sync_digest());

    let mut altered = log.clone();
    let last = altered.last_mut().unwrap();
    let at = last.len() - 65;
    last[at] ^= 1; // a byte of the last op's value
    let mut tampered = Node::new(g, Some(key(1).public()), NodeConfig::default());
    let rejected = tampered.restore(altered);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].reason, cairn_protocol::Reject::OpsHashMismatch);

    // A store is data like any input: an event whose signature is not its author's is refused
    // at restore, however well formed, so no bytes on a disk become a `Verified` unchecked.
    let mut forged = log.clone();
    let last = forged.last_mut().unwrap();
    let at = last.len() - 1;
    last[at] ^= 1; // the signature's last byte
    let mut fooled = Node::new(genesis(2), Some(key(1).public()), NodeConfig::default());
    let rejected = fooled.restore(forged);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].reason, cairn_protocol::Reject::BadSignature);
    assert_eq!(fooled.adapter().n_accepted(), 9);
}

#[test]
fn prepared_writes_leave_the_node_only_once_committed() {
    let mut net = Net::new(2, &[1, 2]);
    net.connect(0, 1);
    net.settle();
    let ops: Vec<Vec<Op>> = (0..3).map(|i| put("k", &i.to_string())).collect();
    for ops in &ops {
        Node::check_ops(ops).unwrap();
    }
    assert!(Node::check_ops(&[]).is_err());
    assert!(Node::check_ops(&[Op::Del { key: vec![] }]).is_err());
    let events = net.nodes[0].1.prepare_writes(&key(1), ops).unwrap();
    assert_eq!(events.events().iter().map(|e| e.header.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(net.nodes[0].1.poll_transmit().is_none(), "nothing leaves before commit");
    assert_eq!(net.nodes[0].1.adapter().n_accepted(), 0);
    let accepted = net.nodes[0].1.commit_writes(events, 1);
    assert_eq!(accepted.len(), 3);
    net.settle();
    assert_eq!(net.nodes[1].1.adapter().n_accepted(), 3);
    assert_eq!(net.nodes[1].1.document().register(b"k").visible.unwrap().value, b"2");
}

#[test]
fn aborted_writes_give_their_seqs_back() {
    let mut net = Net::new(2, &[1, 2]);
    net.connect(0, 1);
    net.settle();
    let first = net.nodes[0].1.prepare_writes(&key(1), vec![put("k", "v1")]).unwrap();
    net.nodes[0].1.commit_writes(first, 1);
    net.settle();

    // Prepared, then not stored (a full disk): aborted, nothing leaves, the seqs come back.
    let lost = net.nodes[0].1.prepare_writes(&key(1), vec![put("k", "lost"), put("j", "lost")]).unwrap();
    assert_eq!(lost.events().iter().map(|e| e.header.seq).collect::<Vec<_>>(), [2, 3]);
    let lost_first = lost.events()[0].id();
    net.nodes[0].1.abort_writes(lost);
    assert!(net.nodes[0].1.poll_transmit().is_none(), "nothing leaves after an abort");
    let again = net.nodes[0].1.prepare_writes(&key(1), vec![put("k", "v2")]).unwrap();
    assert_eq!(again.events()[0].header.seq, 2, "the aborted seqs are handed out again");
    assert_ne!(again.events()[0].id(), lost_first);
    net.nodes[0].1.commit_writes(again, 2);
    net.settle();
    for (_, node) in &net.nodes {
        assert_eq!(node.adapter().n_accepted(), 2);
        assert_eq!(node.document().register(b"k").visible.unwrap().value, b"v2");
        assert_eq!(node.adapter().evidence().count(), 0, "no equivocation");
    }

    // The seqs handed out after a commit follow on (an abort takes the prepared writes
    // themselves, so there is nothing to abort once they are committed).
    let next = net.nodes[0].1.prepare_writes(&key(1), vec![put("k", "v3")]).unwrap();
    assert_eq!(next.events()[0].header.seq, 3);
    net.nodes[0].1.abort_writes(next);
}

#[test]
fn packed_writes_fill_events_to_the_limits_and_keep_each_write_whole() {
    use cairn_protocol::limits::OPS_MAX;
    // Op count: 300 single-op writes make one full event and the rest.
    let singles: Vec<Vec<Op>> = (0..300).map(|i| put("k", &i.to_string())).collect();
    assert_eq!(Node::pack_writes(&singles), [OPS_MAX, 300 - OPS_MAX]);
    // A batch is never split: 200 ops, then 100 ops, then 1.
    let batch = |n: usize| (0..n).map(|i| put(&format!("b{i}"), "v").remove(0)).collect::<Vec<Op>>();
    assert_eq!(Node::pack_writes(&[batch(200), batch(100), batch(1)]), [1, 2]);
    // Bytes: values of 50 000 bytes, two to an event (a third would pass EVENT_BYTES_MAX).
    let big: Vec<Vec<Op>> = (0..5).map(|i| put(&format!("big{i}"), &"x".repeat(50_000))).collect();
    assert_eq!(Node::pack_writes(&big), [2, 2, 1]);
    assert!(Node::pack_writes(&[]).is_empty());
    // Every packed event is itself a valid write, and signs to an event within the limits.
    for writes in [&singles, &big] {
        let mut rest = writes.iter();
        for n in Node::pack_writes(writes) {
            let ops: Vec<Op> = rest.by_ref().take(n).flatten().cloned().collect();
            Node::check_ops(&ops).unwrap();
        }
    }
}

#[test]
fn packed_writes_read_the_same_as_one_event_per_write() {
    let writes: Vec<Vec<Op>> = vec![
        put("k", "a"),
        vec![Op::Add { key: b"s".to_vec(), element: b"x".to_vec() }],
        put("k", "b"),
        vec![Op::Incr { key: b"c".to_vec(), delta: 5 }],
        vec![Op::Remove { key: b"s".to_vec(), element: b"x".to_vec() }],
        vec![
            Op::Add { key: b"s".to_vec(), element: b"y".to_vec() },
            Op::Incr { key: b"c".to_vec(), delta: -2 },
        ],
        vec![Op::Del { key: b"gone".to_vec() }],
        put("k", "c"),
    ];
    let run = |packed: bool| {
        let mut net = Net::new(2, &[1, 2]);
        net.connect(0, 1);
        net.settle();
        let ops: Vec<Vec<Op>> = if packed {
            let groups = Node::pack_writes(&writes);
            assert_eq!(groups, [writes.len()], "small writes share one event");
            vec![writes.iter().flatten().cloned().collect()]
        } else {
            writes.clone()
        };
        let events = net.nodes[0].1.prepare_writes(&key(1), ops).unwrap();
        let n_events = events.len();
        net.nodes[0].1.commit_writes(events, 1);
        net.settle();
        let reads: Vec<_> = net
            .nodes
            .iter()
            .map(|(_, node)| {
                let d = node.document();
                (d.register(b"k"), d.counter(b"c"), d.set_members(b"s"), d.register(b"gone"))
            })
            .collect();
        assert_eq!(reads[0], reads[1]);
        (n_events, reads[0].clone())
    };
    let (one_each, unpacked) = run(false);
    let (shared, packed) = run(true);
    assert_eq!((one_each, shared), (writes.len(), 1));
    // Visible values, counters and set members agree; only event ids and seqs differ.
    let visible =
        |r: &(
            cairn_protocol::document::RegisterRead,
            i128,
            Vec<Vec<u8>>,
            cairn_protocol::document::RegisterRead,
        )| { (r.0.visible.as_ref().map(|s| s.value.clone()), r.0.siblings.len(), r.1, r.2.clone()) };
    assert_eq!(visible(&unpacked), visible(&packed));
    assert_eq!(visible(&packed), (Some(b"c".to_vec()), 1, 3, vec![b"y".to_vec()]));
}

#[test]
fn events_in_flight_are_sent_again_only_once_heard_or_timed_out() {
    // No graft timeout: sessions answer with events accepted a millisecond before, which a
    // node otherwise leaves to the tree for that long (`Node::drop_recent`).
    let config = NodeConfig { sync_interval_ms: 1_000_000, graft_timeout_ms: 0, ..NodeConfig::default() };
    let timeout = config.session_timeout_ms;
    let mut a = Node::new(genesis(2), Some(key(1).public()), config);
    let b = key(2).public();
    let writes: Vec<Vec<Op>> = (0..20).map(|i| put("k", &i.to_string())).collect();
    let events = a.prepare_writes(&key(1), writes).unwrap();
    a.commit_writes(events, 1);
    assert!(a.handle_connected(b, 1));
    // The tips of a peer that holds nothing, written after reading `heard` of a's messages.
    let tips = |heard: u64| {
        encode_message(&Message::Tips { reply: false, more: false, heard, tips: vec![], evidence: vec![] })
    };
    // Everything a sends b: (events in `Events` messages, messages).
    let mut sent = 0u64;
    let mut drain = |a: &mut Node| {
        let mut n_events = 0;
        while let Some((to, bytes)) = a.poll_transmit() {
            assert_eq!(to, b);
            sent += 1;
            if let Message::Events { events } = decode_message(&bytes).unwrap() {
                n_events += events.len();
            }
        }
        (n_events, sent)
    };
    a.handle_message(b, &tips(0), 2);
    let (first, sent_so_far) = drain(&mut a);
    assert_eq!(first, 20, "the peer lacks all 20");
    // Tips written before the peer read those events: they are on their way, not sent again.
    a.handle_message(b, &tips(0), 3);
    assert_eq!(drain(&mut a).0, 0);
    // Tips written after the peer read them, still lacking them (dropped unread): sent again.
    a.handle_message(b, &tips(sent_so_far), 4);
    assert_eq!(drain(&mut a).0, 20);
    // Unheard, but sent a session timeout ago: sent again too, so nothing waits for ever.
    a.handle_message(b, &tips(0), 4 + timeout);
    assert_eq!(drain(&mut a).0, 20);
    // A peer claiming to have heard more than was sent gets everything again; nothing breaks.
    a.handle_message(b, &tips(u64::MAX), 5 + timeout);
    assert_eq!(drain(&mut a).0, 20);
}

/// A follower that reads its connection more slowly than a session timeout's worth of the
/// holder's sending (a long catch-up onto a slow disk) still gets every event exactly once:
/// the events on their way are not sent again while the follower's `heard` advances.
#[test]
fn a_follower_slower_than_the_session_timeout_gets_each_event_once() {
    // An answer holds at most 1 000 ids, so the catch-up takes several sessions, as a large
    // one does with the default bound.
    let config = NodeConfig { sync_interval_ms: 1_000, peer_queue_ids_max: 1_000, ..NodeConfig::default() };
    let timeout = config.session_timeout_ms;
    let mut a = Node::new(genesis(2), Some(key(1).public()), config.clone());
    let mut b = Node::new(genesis(2), Some(key(2).public()), config);
    let (ka, kb) = (key(1).public(), key(2).public());
    // 8 KiB values: about 30 events to an `Events` message.
    let value = "v".repeat(8 * 1024);
    let n_events = 3_000usize;
    for batch in 0..n_events / 100 {
        let writes = (0..100).map(|i| put(&format!("k{}", batch * 100 + i), &value)).collect();
        let events = a.prepare_writes(&key(1), writes).unwrap();
        a.commit_writes(events, 1);
    }
    assert!(a.handle_connected(kb, 1));
    assert!(b.handle_connected(ka, 1));
    // The connection a -> b holds at most PIPE messages (the transport's queue and QUIC's
    // window), and b reads one every READ_MS: a message waits PIPE * READ_MS, well past the
    // session timeout. b -> a is quick.
    const PIPE: usize = 16;
    const READ_MS: u64 = 1_000;
    assert!(PIPE as u64 * READ_MS > timeout);
    let mut pipe: std::collections::VecDeque<Vec<u8>> = std::collections::VecDeque::new();
    let mut now = 1u64;
    let mut next_read = now + READ_MS;
    let deadline = 1_000_000u64;
    while b.adapter().n_accepted() < n_events {
        assert!(
            now < deadline,
            "b holds {} of {n_events} events; a sent {}",
            b.adapter().n_accepted(),
            a.peer_stats(&kb).unwrap().events_out
        );
        now += 100;
        a.handle_timeout(now);
        b.handle_timeout(now);
        while let Some(bytes) = b.poll_transmit_to(&ka) {
            a.handle_message(kb, &bytes, now);
        }
        while pipe.len() < PIPE {
            let Some(bytes) = a.poll_transmit_to(&kb) else { break };
            pipe.push_back(bytes);
        }
        if now >= next_read {
            next_read = now + READ_MS;
            if let Some(bytes) = pipe.pop_front() {
                b.handle_message(ka, &bytes, now);
            }
        }
        while a.poll_event().is_some() {}
        while b.poll_event().is_some() {}
    }
    let sent = a.peer_stats(&kb).unwrap().events_out;
    assert_eq!(sent, n_events as u64, "every event sent once, none again ({} s)", now / 1000);
}

#[test]
fn write_refusal_names_every_reason_prepare_writes_would_give() {
    // A member in good standing may write.
    let mut net = Net::new(2, &[1]);
    let me = key(1).public();
    assert!(net.nodes[0].1.write_refusal(&me).is_none());
    // A key outside the genesis may not.
    assert!(matches!(net.nodes[0].1.write_refusal(&key(9).public()), Some(WriteError::NotMember)));
    // Once the node holds two events of its own key with one seq (as after an old store was
    // copied back and it signed again), it says so, and prepare_writes agrees.
    let twins = [put("k", "a"), put("k", "b")].map(|ops| Event::sign(&key(1), 1, 1, vec![], ops).encode());
    let node = &mut net.nodes[0].1;
    assert!(node.handle_connected(key(2).public(), 1));
    node.handle_message(key(2).public(), &encode_message(&Message::Events { events: twins.to_vec() }), 1);
    assert_eq!(node.adapter().evidence().count(), 1);
    let refusal = node.write_refusal(&me);
    assert!(matches!(refusal, Some(WriteError::Equivocator)), "{refusal:?}");
    let write = write(node, &key(1), put("k", "c"), 2);
    assert!(matches!(write, Err(WriteError::Equivocator)), "{write:?}");
    assert_eq!(refusal.unwrap().to_string(), write.unwrap_err().to_string());
}

#[test]
fn the_own_seq_refusal_names_the_setting_for_a_new_cluster_only() {
    let error = WriteError::OwnSeqUnknown { heard: 0, needed: 1, held: 0, reported: 0 }.to_string();
    assert!(error.contains("`new_cluster = true` is only for the first start"), "{error}");
    assert!(!error.contains("flag"), "the setting is `new_cluster` in the config, not a flag: {error}");
}

/// An archive shared by two replicas, as a store on disk is shared by a node's lives.
#[derive(Clone, Default)]
struct SharedArchive(std::sync::Arc<std::sync::Mutex<cairn_protocol::MemoryArchive>>);

impl cairn_protocol::Archive for SharedArchive {
    fn meta(&self, id: &cairn_protocol::EventId) -> Option<cairn_protocol::EventMeta> {
        self.0.lock().unwrap().meta(id)
    }
    fn event(&self, id: &cairn_protocol::EventId) -> Option<cairn_protocol::StoredEvent> {
        self.0.lock().unwrap().event(id)
    }
    fn at_seq(&self, author: usize, seq: u64) -> Vec<cairn_protocol::EventId> {
        self.0.lock().unwrap().at_seq(author, seq)
    }
    fn insert(&mut self, event: &Verified, meta: cairn_protocol::EventMeta) {
        self.0.lock().unwrap().insert(event, meta);
    }
    fn len(&self) -> u64 {
        self.0.lock().unwrap().len()
    }
    fn n_bytes(&self) -> u64 {
        self.0.lock().unwrap().n_bytes()
    }
    fn ids(&self) -> Vec<cairn_protocol::EventId> {
        self.0.lock().unwrap().ids()
    }
    fn record_covered(&mut self, covered: &[cairn_protocol::document::Covered]) {
        self.0.lock().unwrap().record_covered(covered);
    }
    fn covered(&self, op: &cairn_protocol::document::OpId) -> Vec<cairn_protocol::document::OpId> {
        self.0.lock().unwrap().covered(op)
    }
}

/// A node that resumes over the archive of its previous life, with the chain states it kept,
/// and rebuilds its document from the archive without validating again, is the same node:
/// equal document and reconciliation digests, equal tips, and the equivocator's fork excluded.
#[test]
fn a_resumed_node_over_its_archive_is_the_same_node() {
    use cairn_protocol::Archive as _;
    let g = genesis(3);
    let archive = SharedArchive::default();
    let chains = vec![cairn_protocol::ChainState::default(); 3];
    let mut first = Node::resume(
        g.clone(),
        Some(key(1).public()),
        NodeConfig::default(),
        Box::new(archive.clone()),
        cairn_protocol::Roster::new(&g),
        chains,
        None,
    );
    first.track_document();
    let liar = key(3);
    let mut events = Vec::new();
    for seq in 1..=5 {
        let deps = events.last().map(|e: &Event| vec![e.id()]).unwrap_or_default();
        events.push(Event::sign(&liar, seq, seq, deps, put("p", &seq.to_string())));
    }
    // A second event at seq 4: a fork, so the liar's ops from seq 4 on are excluded.
    events.push(Event::sign(&liar, 4, 4, vec![events[2].id()], put("q", "fork")));
    assert!(first.handle_connected(liar.public(), 0));
    let message = encode_message(&Message::Events { events: events.iter().map(Event::encode).collect() });
    first.handle_message(liar.public(), &message, 0);
    let mut order = Vec::new();
    while let Some(e) = first.poll_event() {
        if let NodeEvent::Accepted { event, .. } = e {
            order.push(event.id());
        }
    }
    order.push(write(&mut first, &key(1), put("mine", "1"), 1).unwrap().id());
    assert_eq!(first.adapter().evidence().count(), 1);
    assert_eq!(archive.len(), order.len() as u64);

    let mut second = Node::resume(
        g,
        Some(key(1).public()),
        NodeConfig::default(),
        Box::new(archive.clone()),
        first.adapter().roster().clone(),
        first.adapter().chain_states().to_vec(),
        None,
    );
    let stored: Vec<_> = order.iter().map(|id| archive.event(id).unwrap()).collect();
    assert!(second.replay_document(&stored).is_empty());
    for evidence in first.adapter().evidence().cloned().collect::<Vec<_>>() {
        second.restore_evidence(evidence).unwrap();
    }
    assert_eq!(second.document().digest(), first.document().digest());
    assert_eq!(second.sync_digest(), first.sync_digest());
    assert_eq!(second.adapter().tips(), first.adapter().tips());
    assert!(second.document().register(b"q").siblings.is_empty(), "the fork stays excluded");
    assert_eq!(second.document().register(b"p").visible.unwrap().value, b"3");
    // It goes on from there: its next own event takes the next seq.
    assert_eq!(write(&mut second, &key(1), put("mine", "2"), 2).unwrap().seq(), 2);

    // A third life opens the document the first persisted instead of replaying the archive.
    let delta = first.take_document_delta().expect("tracking is on");
    let mut document = cairn_protocol::document::Document::new(first.adapter().roster().keys());
    document.restore_exclusions(&delta.exclusions.expect("the fork changed the exclusions")).unwrap();
    for (kind, key, state) in &delta.keys {
        if let Some(state) = state {
            document.restore_key(*kind, key, state).unwrap();
        }
    }
    let third = Node::resume(
        genesis(3),
        Some(key(1).public()),
        NodeConfig::default(),
        Box::new(archive.clone()),
        first.adapter().roster().clone(),
        first.adapter().chain_states().to_vec(),
        Some(document),
    );
    assert_eq!(third.document().digest(), first.document().digest());
}

/// A large value is not held by the document: `Node::register` reads it from its event in the
/// archive, and a small one comes from the document itself.
#[test]
fn a_large_value_is_read_back_from_its_event() {
    let me = key(1);
    let mut node = Node::new(genesis(1), Some(me.public()), NodeConfig::default());
    let large = "y".repeat(50_000);
    write(&mut node, &me, put("big", &large), 1).unwrap();
    write(&mut node, &me, put("small", "v"), 2).unwrap();
    let held = node.document().register(b"big").visible.unwrap();
    assert!(!held.value_held && held.value.is_empty(), "the document holds the value's hash only");
    let read = node.register(b"big").visible.unwrap();
    assert!(read.value_held);
    assert_eq!(read.value, large.as_bytes());
    assert_eq!(node.register(b"small").visible.unwrap().value, b"v");
    assert!(node.register(b"none").visible.is_none());
}

/// A register op with a client's causal context: the events it read, by id.
fn put_seen(k: &str, v: &str, read: Vec<cairn_protocol::EventId>) -> Vec<Op> {
    let seen = cairn_protocol::Seen { events: read, own: Vec::new() };
    vec![Op::PutSeen { key: k.as_bytes().to_vec(), value: v.as_bytes().to_vec(), seen }]
}

#[test]
fn two_clients_read_modify_write_on_one_node_and_keep_both_writes() {
    let mut net = Net::new(2, &[1, 2]);
    net.connect(0, 1);
    net.settle();
    // Node 2 writes the value both clients read on node 1.
    net.write(1, "k", "v0");
    net.settle();
    let node = &mut net.nodes[0].1;
    let read = node.document().register(b"k").context();
    assert_eq!(read.len(), 1);
    // Node 1 writes something else in between, so its own chain has moved on.
    write(node, &key(1), put("other", "x"), 1).unwrap();
    // Both clients write with the context they read: the second keeps the first.
    let first = write(node, &key(1), put_seen("k", "client 1", read.clone()), 2).unwrap();
    let second = write(node, &key(1), put_seen("k", "client 2", read.clone()), 3).unwrap();
    // The named event of the other author became a dep of each; the own chain stays rule 5's.
    assert!(first.event().header.deps.contains(&read[0]));
    assert!(second.event().header.deps.contains(&read[0]));
    let values = |node: &Node| -> Vec<Vec<u8>> {
        node.document().register(b"k").siblings.iter().map(|s| s.value.clone()).collect()
    };
    assert_eq!(values(node), [b"client 1".to_vec(), b"client 2".to_vec()]);

    // A client that reads both and writes with that context resolves them; its own events are
    // named by seq on the wire.
    let both = node.document().register(b"k").context();
    let merged = write(node, &key(1), put_seen("k", "merged", both), 4).unwrap();
    let Op::PutSeen { seen, .. } = &merged.event().ops[0] else { panic!("a context op") };
    assert!(seen.events.is_empty(), "both named events are node 1's own: {seen:?}");
    assert_eq!(seen.own, [first.seq(), second.seq()]);
    assert_eq!(values(node), [b"merged".to_vec()]);

    // Every node converges on the same document.
    net.settle();
    let d = net.digests();
    assert!(d.iter().all(|x| *x == d[0]));
    assert_eq!(values(&net.nodes[1].1), [b"merged".to_vec()]);
}

#[test]
fn a_context_naming_an_event_the_node_lacks_is_refused_before_signing() {
    let mut net = Net::new(2, &[1, 2]);
    net.write(1, "k", "not sent");
    let unknown = net.nodes[1].1.document().register(b"k").context();
    let node = &mut net.nodes[0].1;
    let ops = put_seen("k", "v", unknown.clone());
    assert_eq!(node.check_seen(&ops), Err(WriteError::UnknownSeen(unknown[0])));
    assert_eq!(Node::check_ops(&ops), Ok(()));
    // A context the client wrote itself with own seqs is not for clients to give.
    let own = vec![Op::PutSeen {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        seen: cairn_protocol::Seen { events: Vec::new(), own: vec![1] },
    }];
    assert!(Node::check_ops(&own).is_err());
}

#[test]
fn a_context_of_many_siblings_is_reduced_to_what_adds_to_it_and_large_values_read_back() {
    let mut net = Net::new(2, &[1, 2]);
    let node = &mut net.nodes[0].1;
    // 70 blind writes (each with a context that names nothing) leave 70 siblings: more events
    // than one op may name.
    for n in 0..70 {
        write(node, &key(1), put_seen("k", &format!("v{n}"), Vec::new()), n).unwrap();
    }
    let read = node.document().register(b"k");
    assert_eq!(read.siblings.len(), 70);
    let mut ops = put_seen("k", &"x".repeat(100), read.context());
    assert_eq!(read.context().len(), 70);
    assert!(Node::check_ops(&ops).is_err(), "70 named events are over SEEN_EVENTS_MAX");
    // All are this node's own, each in the causal past of the last: one is left.
    node.check_seen(&ops).unwrap();
    node.reduce_seen(&mut ops);
    assert_eq!(ops[0].seen().map(|seen| seen.events.len()), Some(1));
    Node::check_ops(&ops).unwrap();
    write(node, &key(1), ops, 99).unwrap();
    let read = node.register(b"k");
    assert_eq!(read.siblings.len(), 1, "the reduced context supersedes every sibling read");
    // A value over the document's inline size, written with a context, reads back whole.
    assert_eq!(read.siblings[0].value, "x".repeat(100).into_bytes());
    assert!(read.siblings[0].value_held);
}

#[test]
fn writes_with_a_context_on_one_key_never_share_an_event() {
    let plain = |k: &str| put(k, "v");
    let seen = |k: &str| put_seen(k, "v", Vec::new());
    // Two writes with contexts on one key, or one with and one without: two events.
    assert_eq!(Node::pack_writes(&[seen("a"), seen("a")]), [1, 1]);
    assert_eq!(Node::pack_writes(&[plain("a"), seen("a")]), [1, 1]);
    assert_eq!(Node::pack_writes(&[seen("a"), plain("a")]), [1, 1]);
    // Other keys, or no context at all: one event, as before.
    assert_eq!(Node::pack_writes(&[seen("a"), seen("b"), plain("c")]), [3]);
    assert_eq!(Node::pack_writes(&[plain("a"), plain("a")]), [2]);
    // One write holding both is refused.
    let mut both = plain("a");
    both.extend(seen("a"));
    assert!(Node::check_ops(&both).is_err());
}

#[test]
fn a_peers_lag_is_what_this_node_held_past_its_last_session() {
    let mut net = Net::new(2, &[1, 2]);
    let (a, b) = (net.nodes[0].0, net.nodes[1].0);
    assert_eq!(net.nodes[0].1.peer_lag(&b), None, "no session yet");
    net.connect(0, 1);
    net.settle();
    net.sync_from(0);
    net.settle();
    assert_eq!(net.nodes[0].1.peer_lag(&b), Some(0), "the session found both sets equal");
    // Three writes on node 1 that node 2 has not been sent yet (nothing is delivered).
    for n in 0..3 {
        let now = net.now_ms;
        write(&mut net.nodes[0].1, &key(1), put("k", &n.to_string()), now).unwrap();
    }
    assert_eq!(net.nodes[0].1.peer_lag(&b), Some(3));
    assert_eq!(net.nodes[1].1.peer_lag(&a), Some(0), "node 2 knows of nothing it lacks");
    // Delivered, and a session after it: no lag either way.
    net.settle();
    net.sync_from(1);
    net.settle();
    assert_eq!(net.nodes[0].1.peer_lag(&b), Some(0));
    assert_eq!(net.nodes[1].1.peer_lag(&a), Some(0));
}

/// The `heard` a node reports in its tips to `peer`, after `peer` sends it a summary that
/// differs (which it answers with its tips).
fn heard_reported(node: &mut Node, peer: PublicKey, now_ms: u64) -> u64 {
    node.handle_message(peer, &encode_message(&Message::Summary { digest: [0; 32] }), now_ms);
    let mut heard = None;
    while let Some((to, bytes)) = node.poll_transmit() {
        if to == peer
            && let Message::Tips { heard: h, .. } = decode_message(&bytes).unwrap()
        {
            heard = Some(h);
        }
    }
    heard.expect("the node answered with its tips")
}

/// `Events` messages whose signatures are checked while the node goes on (`begin_message`, then
/// `finish_events` with the verdicts): an event in flight is not checked twice when a later
/// batch brings it again, a batch waiting for its signatures does not count in the `heard` the
/// node reports (so the peer does not take its events for missing), and the node ends where
/// `handle_message` one message at a time leaves it.
#[test]
fn overlapping_event_batches_end_where_one_message_at_a_time_does() {
    let g = genesis(2);
    let (ka, kb) = (key(1), key(2));
    let events = chain_of(&g, &ka, 40);
    let first = encode_message(&Message::Events { events: events[..20].to_vec() });
    let second = encode_message(&Message::Events { events: events[10..].to_vec() });
    let fresh = || {
        let mut node = Node::new(g.clone(), Some(kb.public()), NodeConfig::default());
        assert!(node.handle_connected(ka.public(), 1));
        node
    };

    let mut pipelined = fresh();
    let (pending_first, checks_first) =
        pipelined.begin_message(ka.public(), &first, 2).expect("an Events message");
    assert_eq!(checks_first.len(), 20);
    let (pending_second, checks_second) =
        pipelined.begin_message(ka.public(), &second, 2).expect("an Events message");
    assert_eq!(checks_second.len(), 20, "the 10 events of the first batch are in flight: checked once");
    assert_eq!(pipelined.adapter().n_in_flight(), 40);
    // Messages 1 and 2 wait for their signatures; the summary is message 3.
    assert_eq!(heard_reported(&mut pipelined, ka.public(), 3), 0);
    pipelined.finish_events(pending_first, checks_first.run(1), 4);
    assert_eq!(pipelined.adapter().n_accepted(), 20);
    assert_eq!(heard_reported(&mut pipelined, ka.public(), 5), 1, "message 2 still waits");
    pipelined.finish_events(pending_second, checks_second.run(2), 6);
    assert_eq!(pipelined.adapter().n_in_flight(), 0);
    assert_eq!(heard_reported(&mut pipelined, ka.public(), 7), 5);

    let mut serial = fresh();
    serial.handle_message(ka.public(), &first, 2);
    serial.handle_message(ka.public(), &second, 2);
    assert_eq!(serial.adapter().n_accepted(), 40);
    assert_eq!(pipelined.adapter().n_accepted(), 40);
    assert_eq!(pipelined.sync_digest(), serial.sync_digest());
    assert_eq!(pipelined.document().digest(), serial.document().digest());
}

/// A batch finishes only with the verdicts of its own signature checks.
#[test]
#[should_panic(expected = "signature verdicts of another batch")]
fn a_batch_takes_only_its_own_verdicts() {
    let g = genesis(2);
    let (ka, kb) = (key(1), key(2));
    let events = chain_of(&g, &ka, 4);
    let mut node = Node::new(g, Some(kb.public()), NodeConfig::default());
    assert!(node.handle_connected(ka.public(), 1));
    let message =
        |range: std::ops::Range<usize>| encode_message(&Message::Events { events: events[range].to_vec() });
    let (first, _) = node.begin_message(ka.public(), &message(0..2), 2).unwrap();
    let (_, second_checks) = node.begin_message(ka.public(), &message(2..4), 2).unwrap();
    node.finish_events(first, second_checks.run(1), 3);
}

/// Address records by exchange: a record of a member in force is taken, reported and relayed;
/// one that does not verify counts against its sender as `bad_address`; one of a key not in
/// force here is ignored without blame (an honest relay's membership may be ahead or behind).
#[test]
fn address_records_of_keys_not_in_force_are_ignored_without_blame() {
    use cairn_protocol::AddrRecord;
    let g = genesis(3);
    let cluster = g.cluster_id();
    let (ka, kb, kc) = (key(1), key(2), key(3));
    let mut node = Node::new(g, Some(ka.public()), NodeConfig::default());
    assert!(node.handle_connected(kb.public(), 1));
    assert!(node.handle_connected(kc.public(), 1));
    while node.poll_transmit().is_some() {}
    let addr: std::net::SocketAddr = "192.0.2.7:7000".parse().unwrap();
    let stranger = AddrRecord::new(&cluster, &key(9), 1, &[addr]);
    let mut forged = AddrRecord::new(&cluster, &kc, 1, &[addr]);
    forged.seq = 2;
    let good = AddrRecord::new(&cluster, &kc, 3, &[addr]);
    let message = Message::Addrs { records: vec![stranger, forged, good] };
    node.handle_message(kb.public(), &encode_message(&message), 2);
    let mut bad = Vec::new();
    let mut learned = Vec::new();
    while let Some(event) = node.poll_event() {
        match event {
            NodeEvent::BadMessage { peer, misbehaviour, .. } => bad.push((peer, misbehaviour.name())),
            NodeEvent::Addresses { key, addrs } => learned.push((key, addrs)),
            _ => {}
        }
    }
    assert_eq!(bad, vec![(kb.public(), "bad_address")], "only the forged record counts");
    assert_eq!(learned, vec![(kc.public(), vec![addr])]);
    let relayed: Vec<Message> = std::iter::from_fn(|| node.poll_transmit())
        .filter(|(to, _)| *to == kc.public())
        .map(|(_, bytes)| decode_message(&bytes).unwrap())
        .collect();
    assert!(
        relayed
            .iter()
            .any(|m| matches!(m, Message::Addrs { records } if records.len() == 1 && records[0].seq == 3)),
        "the good record is relayed to the other peer: {relayed:?}"
    );
}

/// A peer can have this node await at most `AWAITED_PER_PEER_MAX` announced ids it never sends,
/// however often it reconnects: the ids it announced on an earlier connection stay charged to
/// it until they arrive or are given up.
#[test]
fn a_peer_reconnecting_cannot_lift_its_bound_on_awaited_ids() {
    use cairn_protocol::EventId;
    use cairn_protocol::node::AWAITED_PER_PEER_MAX;
    let g = genesis(2);
    let (ka, kb) = (key(1), key(2));
    let config = NodeConfig::default();
    let graft_timeout_ms = config.graft_timeout_ms;
    let mut node = Node::new(g, Some(ka.public()), config);
    let announce = |node: &mut Node, from: u32, now_ms: u64| {
        let ids = (from..from + AWAITED_PER_PEER_MAX as u32)
            .map(|i| {
                let mut id = [0u8; 32];
                id[..4].copy_from_slice(&i.to_le_bytes());
                EventId(id)
            })
            .collect();
        node.handle_message(kb.public(), &encode_message(&Message::Have { ids }), now_ms);
    };
    assert!(node.handle_connected(kb.public(), 1));
    announce(&mut node, 0, 2);
    node.handle_disconnected(&kb.public());
    assert!(node.handle_connected(kb.public(), 3));
    announce(&mut node, AWAITED_PER_PEER_MAX as u32, 4);
    while node.poll_transmit().is_some() {}
    node.handle_timeout(4 + graft_timeout_ms);
    let mut grafted = 0;
    while let Some((to, bytes)) = node.poll_transmit() {
        if to == kb.public()
            && let Message::Graft { ids } = decode_message(&bytes).unwrap()
        {
            grafted += ids.len();
        }
    }
    assert_eq!(grafted, AWAITED_PER_PEER_MAX, "the ids of both connections count against one bound");
    assert_eq!(node.peer_stats(&kb.public()).unwrap().grafts_out, AWAITED_PER_PEER_MAX as u64);
}

/// A session's answer leaves out events accepted within the graft timeout (they are on their
/// way along the tree), and what it sends stays causally closed: an event accepted after one
/// left out is left out too, even when it arrived while no other peer was connected to push
/// it to. Once the timeout has passed, the next session brings both.
#[test]
fn a_session_answer_leaving_out_recent_events_stays_causally_closed() {
    let g = genesis(3);
    let (kn, kx, ky) = (key(1), key(2), key(3));
    let mut writer = Node::new(g.clone(), Some(kx.public()), NodeConfig::default());
    let e1 = write(&mut writer, &kx, put("a", "1"), 1).unwrap().bytes().to_vec();
    let e2 = write(&mut writer, &kx, put("b", "2"), 1).unwrap().bytes().to_vec();
    let graft_timeout_ms = NodeConfig::default().graft_timeout_ms;
    let mut n = Node::new(g.clone(), Some(kn.public()), NodeConfig::default());
    assert!(n.handle_connected(kx.public(), 1));
    assert!(n.handle_connected(ky.public(), 1));
    n.handle_message(kx.public(), &encode_message(&Message::Events { events: vec![e1] }), 10);
    n.handle_disconnected(&ky.public());
    // E2 (after E1 in X's chain) arrives while X, its source, is the only peer connected.
    n.handle_message(kx.public(), &encode_message(&Message::Events { events: vec![e2] }), 11);
    assert_eq!(n.adapter().n_accepted(), 2);
    while n.poll_transmit().is_some() {}

    let mut y = Node::new(g, Some(ky.public()), NodeConfig::default());
    // Y reconnects and opens a session, within the graft timeout, and then again after it.
    let session = |n: &mut Node, y: &mut Node, now_ms: u64, connect: bool| {
        if connect {
            assert!(n.handle_connected(ky.public(), now_ms));
            assert!(y.handle_connected(kn.public(), now_ms));
        }
        y.handle_timeout(now_ms);
        let mut events_sent = 0;
        for _ in 0..100 {
            let to_n: Vec<_> = std::iter::from_fn(|| y.poll_transmit()).collect();
            let to_y: Vec<_> =
                std::iter::from_fn(|| n.poll_transmit()).filter(|(to, _)| *to == ky.public()).collect();
            if to_n.is_empty() && to_y.is_empty() {
                break;
            }
            for (_, bytes) in to_n {
                n.handle_message(ky.public(), &bytes, now_ms);
            }
            for (_, bytes) in to_y {
                if let Message::Events { events } = decode_message(&bytes).unwrap() {
                    events_sent += events.len();
                }
                y.handle_message(kn.public(), &bytes, now_ms);
            }
        }
        events_sent
    };
    let sent = session(&mut n, &mut y, 12, true);
    assert_eq!(
        sent, 0,
        "both events are recent: neither is sent (E2 alone would wait in Y's buffer for a Want of E1)"
    );
    assert_eq!(y.adapter().buffer_use().0, 0, "nothing waits in Y's buffer");
    let later = 12 + graft_timeout_ms.max(NodeConfig::default().sync_interval_ms) + 1;
    session(&mut n, &mut y, later, false);
    assert_eq!(y.adapter().n_accepted(), 2, "the next session brings both");
    assert_eq!(y.sync_digest(), n.sync_digest());
}

/// What part of an `Events` message is waste is known before its signatures are checked
/// (`PendingEvents::wasted_share`): old events sent again (`OLD_DUPLICATE_SEQS` or more below
/// their author's highest seq) count; new events, and duplicates of recent or in-flight ones
/// (pushes and sessions that crossed), do not.
#[test]
fn the_wasted_share_of_a_message_counts_old_events_sent_again() {
    use cairn_protocol::adapter::OLD_DUPLICATE_SEQS;
    let g = genesis(2);
    let (ka, kb) = (key(1), key(2));
    let n = OLD_DUPLICATE_SEQS as usize + 4;
    let events = chain_of(&g, &ka, n);
    let message = |ids: &[usize]| {
        encode_message(&Message::Events { events: ids.iter().map(|i| events[*i].clone()).collect() })
    };
    let mut node = Node::new(g, Some(kb.public()), NodeConfig::default());
    assert!(node.handle_connected(ka.public(), 1));
    for chunk in (0..n - 2).collect::<Vec<_>>().chunks(1024) {
        node.handle_message(ka.public(), &message(chunk), 2);
    }
    assert_eq!(node.adapter().n_accepted(), n - 2);
    // Events 0 and 1 are old now; n - 4 and n - 3 are recent; n - 2 and n - 1 are new.
    let (mixed, mixed_checks) =
        node.begin_message(ka.public(), &message(&[0, 1, n - 4, n - 3, n - 2, n - 1]), 3).unwrap();
    assert_eq!(mixed.wasted_share(), 2.0 / 6.0, "only the two old events are waste");
    let (again, again_checks) = node.begin_message(ka.public(), &message(&[n - 2, n - 1]), 3).unwrap();
    assert_eq!(again.wasted_share(), 0.0, "events in flight sent again are not waste");
    node.finish_events(mixed, mixed_checks.run(1), 4);
    node.finish_events(again, again_checks.run(1), 4);
    assert_eq!(node.adapter().n_accepted(), n);
}
