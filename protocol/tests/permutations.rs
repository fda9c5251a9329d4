//! Property: the accepted set, the evidence and the document are functions of the event set.
//! Any permutation, duplication and chunking of a valid event set, equivocation forks
//! included, gives the same result; delivering an event again changes nothing.

use cairn_crypto::SecretKey;
use cairn_protocol::codec::encode_message;
use cairn_protocol::{Event, EventId, Genesis, Member, Message, Node, NodeConfig, NodeEvent, Op};
use proptest::prelude::*;

const N_AUTHORS: u8 = 3;

fn key(i: u8) -> SecretKey {
    SecretKey::from_seed(&[i + 1; 32])
}

fn genesis() -> Genesis {
    // One more member than authors: it relays, and never equivocates, so it is never refused.
    Genesis::new((0..=N_AUTHORS).map(|i| Member { key: key(i).public(), name: format!("m{i}") }).collect())
        .unwrap()
}

/// One step of the generated history: which author writes, which other tips it has seen,
/// whether it forks (re-signs its previous seq on a second branch), and its ops.
#[derive(Clone, Debug)]
struct Step {
    author: u8,
    sees: [bool; N_AUTHORS as usize],
    fork: bool,
    ops: Vec<(u8, u8, i8)>,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0..N_AUTHORS,
        any::<[bool; 3]>(),
        prop::bool::weighted(0.08),
        prop::collection::vec((0u8..5, 0u8..4, any::<i8>()), 1..3),
    )
        .prop_map(|(author, sees, fork, ops)| Step { author, sees, fork, ops })
}

fn op(kind: u8, key: u8, x: i8) -> Op {
    let key = vec![b'a' + key];
    match kind {
        0 => Op::Put { key, value: vec![x as u8] },
        1 => Op::Del { key },
        2 => Op::Incr { key, delta: i64::from(x) },
        3 => Op::Add { key, element: vec![(x as u8) % 3] },
        _ => Op::Remove { key, element: vec![(x as u8) % 3] },
    }
}

/// Builds a valid event history (with forks when a step asks for one).
fn history(steps: &[Step]) -> Vec<Event> {
    // Per author: the branches' tips as (seq, lamport, id).
    let mut tips: Vec<Vec<(u64, u64, EventId)>> = vec![Vec::new(); N_AUTHORS as usize];
    let mut events = Vec::new();
    for s in steps {
        let a = s.author as usize;
        let own = tips[a].last().copied();
        // A fork re-uses the predecessor of the latest own event, so the new event has the
        // same seq as that event on another branch.
        let pred = match (s.fork, own) {
            (true, Some((seq, _, id))) if seq > 1 => {
                let event: &Event = events.iter().find(|e: &&Event| e.id() == id).unwrap();
                let pred_id = event.header.deps.iter().copied().find(|d| {
                    events.iter().any(|e: &Event| e.id() == *d && e.header.author == event.header.author)
                });
                pred_id.map(|pid| {
                    let p: &Event = events.iter().find(|e: &&Event| e.id() == pid).unwrap();
                    (p.header.seq, p.header.lamport, pid)
                })
            }
            (true, Some(_)) => None,
            _ => own,
        };
        let mut deps = Vec::new();
        let mut lamport = 0;
        if let Some((_, l, id)) = pred {
            deps.push(id);
            lamport = l;
        }
        for (other, seen) in s.sees.iter().enumerate() {
            if *seen
                && other != a
                && let Some((_, l, id)) = tips[other].last()
            {
                deps.push(*id);
                lamport = lamport.max(*l);
            }
        }
        let seq = pred.map_or(1, |p| p.0 + 1);
        let ops = s.ops.iter().map(|(k, key, x)| op(*k, *key, *x)).collect();
        let event = Event::sign(&key(s.author), seq, lamport + 1, deps, ops);
        tips[a].push((seq, lamport + 1, event.id()));
        events.push(event);
    }
    events
}

struct Outcome {
    accepted: Vec<EventId>,
    evidence: Vec<Vec<u8>>,
    sync_digest: [u8; 32],
    document: [u8; 32],
}

fn deliver(chunks: &[Vec<Vec<u8>>]) -> Outcome {
    let source = key(N_AUTHORS).public();
    let mut node = Node::new(genesis(), None, NodeConfig::default());
    assert!(node.handle_connected(source, 0));
    for chunk in chunks {
        node.handle_message(source, &encode_message(&Message::Events { events: chunk.clone() }), 0);
        while let Some(e) = node.poll_event() {
            assert!(!matches!(e, NodeEvent::Rejected { .. } | NodeEvent::BadMessage { .. }), "{e:?}");
        }
    }
    let mut accepted: Vec<EventId> = node.adapter().accepted_ids();
    accepted.sort();
    Outcome {
        accepted,
        evidence: node.adapter().evidence().map(|e| e.encode()).collect(),
        sync_digest: node.sync_digest(),
        document: node.document().digest(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_delivery_order_gives_the_same_state(
        steps in prop::collection::vec(step(), 1..40),
        shuffle_seed in any::<u64>(),
        chunk in 1usize..7,
        duplicate_every in 2usize..6,
    ) {
        let events = history(&steps);
        let in_order: Vec<Vec<u8>> = events.iter().map(Event::encode).collect();
        let reference = deliver(std::slice::from_ref(&in_order));
        // A fork step can re-sign an event identical to an earlier one: count distinct ids.
        let mut distinct: Vec<EventId> = events.iter().map(Event::id).collect();
        distinct.sort();
        distinct.dedup();
        prop_assert_eq!(&reference.accepted, &distinct);

        // A deterministic shuffle with duplicates, delivered in small chunks.
        let mut shuffled = in_order.clone();
        let mut x = shuffle_seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let duplicates: Vec<Vec<u8>> = shuffled.iter().step_by(duplicate_every).cloned().collect();
        shuffled.extend(duplicates);
        let chunks: Vec<Vec<Vec<u8>>> = shuffled.chunks(chunk).map(<[_]>::to_vec).collect();
        let other = deliver(&chunks);
        prop_assert_eq!(&other.accepted, &reference.accepted);
        prop_assert_eq!(&other.evidence, &reference.evidence);
        prop_assert_eq!(other.sync_digest, reference.sync_digest);
        prop_assert_eq!(other.document, reference.document);

        // Delivering everything once more changes nothing.
        let mut twice = chunks.clone();
        twice.push(in_order);
        let again = deliver(&twice);
        prop_assert_eq!(again.document, reference.document);
        prop_assert_eq!(again.sync_digest, reference.sync_digest);
    }
}
