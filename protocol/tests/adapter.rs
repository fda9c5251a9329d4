//! The adapter at its boundary: every validity rule and rejection reason, the causal buffer's
//! bounds, and equivocation detection whether or not an event waited in the buffer.

use cairn_crypto::{PublicKey, SecretKey, Signature};
use cairn_protocol::codec::encode_event;
use cairn_protocol::event::ops_hash;
use cairn_protocol::evidence::EvidenceError;
use cairn_protocol::limits::{DEPS_MAX, EVENT_BYTES_MAX, KEY_BYTES_MAX, OPS_MAX};
use cairn_protocol::{
    Adapter, AdapterConfig, Event, EventId, Evidence, Genesis, Header, Ingested, Member, Op, Reject,
    SignedHeader,
};

fn key(i: u8) -> SecretKey {
    SecretKey::from_seed(&[i; 32])
}

fn genesis(n: u8) -> Genesis {
    Genesis::new((1..=n).map(|i| Member { key: key(i).public(), name: format!("m{i}") }).collect()).unwrap()
}

fn adapter() -> Adapter {
    Adapter::new(genesis(3), AdapterConfig::default())
}

fn put(k: &str, v: &str) -> Vec<Op> {
    vec![Op::Put { key: k.as_bytes().to_vec(), value: v.as_bytes().to_vec() }]
}

const PEER: PublicKey = PublicKey([9; 32]);

fn ingest(adapter: &mut Adapter, events: &[&Event]) -> Ingested {
    adapter.ingest(PEER, events.iter().map(|e| e.encode()).collect())
}

/// Signs an arbitrary header (even one `Event::sign` would not build) with `signer`.
fn sign_header(signer: &SecretKey, header: Header, ops: Vec<Op>) -> Event {
    let sig = signer.sign(&header.id().0);
    Event { header, ops, sig }
}

fn header(author: &SecretKey, seq: u64, lamport: u64, deps: Vec<EventId>, ops: &[Op]) -> Header {
    Header { author: author.public(), seq, lamport, deps, ops_hash: ops_hash(ops) }
}

/// Ingests `bytes` after accepting `context`, and expects exactly one rejection with `reason`.
fn check_rejected(context: &[&Event], bytes: Vec<u8>, reason: Reject) {
    let mut a = adapter();
    let out = ingest(&mut a, context);
    assert_eq!(out.accepted.len(), context.len(), "context must be accepted: {:?}", out.rejected);
    let out = a.ingest(PEER, vec![bytes]);
    assert!(out.accepted.is_empty(), "expected {reason:?}, but it was accepted");
    assert_eq!(out.rejected.len(), 1, "expected one rejection, got {:?}", out.rejected);
    assert_eq!(out.rejected[0].reason, reason);
    assert_eq!(a.n_accepted(), context.len());
}

#[test]
fn a_valid_chain_is_accepted_in_causal_order() {
    let (a1, b1) = (key(1), key(2));
    let e1 = Event::sign(&a1, 1, 1, vec![], put("k", "1"));
    let e2 = Event::sign(&b1, 1, 2, vec![e1.id()], put("k", "2"));
    let e3 = Event::sign(&a1, 2, 3, vec![e1.id(), e2.id()], put("k", "3"));
    let mut a = adapter();
    // Delivered backwards: the later ones wait in the buffer, then all leave in causal order.
    let out = ingest(&mut a, &[&e3, &e2, &e1]);
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    let ids: Vec<EventId> = out.accepted.iter().map(|v| v.id()).collect();
    assert_eq!(ids, vec![e1.id(), e2.id(), e3.id()]);
    assert_eq!(a.buffer_use(), (0, 0));
    let e3v = a.event(&e3.id()).unwrap();
    let mut expected = [0u64; 3];
    expected[a.genesis().member_idx(&a1.public()).unwrap()] = 2;
    expected[a.genesis().member_idx(&b1.public()).unwrap()] = 1;
    assert_eq!(&e3v.meta.clock[..], &expected[..]);
}

#[test]
fn rule_1_size_and_decoding() {
    let e = Event::sign(&key(1), 1, 1, vec![], put("k", "v"));
    let bytes = e.encode();
    check_rejected(&[], vec![0; EVENT_BYTES_MAX + 1], Reject::Oversize);
    check_rejected(&[], bytes[..bytes.len() - 1].to_vec(), Reject::Malformed);
    check_rejected(&[], vec![], Reject::Malformed);
    let mut trailing = bytes.clone();
    trailing.push(0);
    check_rejected(&[], trailing, Reject::TrailingBytes);
    // An unknown op tag: the first op's tag sits right after the header and the op count.
    let header_len = 32 + 8 + 8 + 8 + 32;
    let mut bad_tag = bytes.clone();
    bad_tag[header_len + 8] = 9;
    check_rejected(&[], bad_tag, Reject::Malformed);
    // A length prefix that lies about the number of deps is caught before any allocation.
    let mut many_deps = bytes;
    many_deps[48..56].copy_from_slice(&((DEPS_MAX as u64) + 1).to_le_bytes());
    check_rejected(&[], many_deps, Reject::Malformed);
}

#[test]
fn rule_1_key_too_long_is_malformed() {
    let ops = vec![Op::Del { key: vec![b'k'; KEY_BYTES_MAX + 1] }];
    let e = Event::sign(&key(1), 1, 1, vec![], ops);
    check_rejected(&[], e.encode(), Reject::Malformed);
}

#[test]
fn rule_2_deps_must_be_sorted_and_unique() {
    let e1 = Event::sign(&key(1), 1, 1, vec![], put("a", "1"));
    let e2 = Event::sign(&key(2), 1, 1, vec![], put("b", "1"));
    let mut deps = vec![e1.id(), e2.id()];
    deps.sort();
    deps.reverse();
    let ops = put("c", "1");
    let unsorted = sign_header(&key(3), header(&key(3), 1, 2, deps, &ops), ops.clone());
    check_rejected(&[&e1, &e2], encode_event(&unsorted), Reject::DepsNotSorted);
    let twice = sign_header(&key(3), header(&key(3), 1, 2, vec![e1.id(), e1.id()], &ops), ops);
    check_rejected(&[&e1], encode_event(&twice), Reject::DepsNotSorted);
}

#[test]
fn rule_3_author_must_be_a_member() {
    let outsider = Event::sign(&key(7), 1, 1, vec![], put("k", "v"));
    check_rejected(&[], outsider.encode(), Reject::NotMember);
}

#[test]
fn rule_4_signature_must_verify_under_the_author() {
    let e = Event::sign(&key(1), 1, 1, vec![], put("k", "v"));
    let mut forged = e.clone();
    forged.sig.0[5] ^= 1;
    check_rejected(&[], forged.encode(), Reject::BadSignature);
    // Signed by member 2 but claiming member 1 as author.
    let ops = put("k", "v");
    let swapped = sign_header(&key(2), header(&key(1), 1, 1, vec![], &ops), ops);
    check_rejected(&[], swapped.encode(), Reject::BadSignature);
    // A zero signature and a small-order R are rejected by verify_strict.
    let mut zero = e.clone();
    zero.sig = Signature([0; 64]);
    check_rejected(&[], zero.encode(), Reject::BadSignature);
    // A mutated header byte (lamport) changes the id, so the signature no longer matches.
    let mut bytes = e.encode();
    bytes[40] ^= 1;
    check_rejected(&[], bytes, Reject::BadSignature);
}

#[test]
fn rule_5_seq_follows_the_own_predecessor() {
    let (m1, m2) = (key(1), key(2));
    let a1 = Event::sign(&m1, 1, 1, vec![], put("k", "1"));
    let a2 = Event::sign(&m1, 2, 2, vec![a1.id()], put("k", "2"));
    let b1 = Event::sign(&m2, 1, 1, vec![], put("k", "b"));
    // seq 2 without an own dep.
    check_rejected(&[&b1], Event::sign(&m1, 2, 2, vec![b1.id()], put("k", "x")).encode(), Reject::BadSeq);
    // seq 1 with an own dep.
    check_rejected(&[&a1], Event::sign(&m1, 1, 2, vec![a1.id()], put("k", "x")).encode(), Reject::BadSeq);
    // seq 3 whose own dep is seq 1.
    check_rejected(&[&a1], Event::sign(&m1, 3, 2, vec![a1.id()], put("k", "x")).encode(), Reject::BadSeq);
    // Two own deps.
    check_rejected(
        &[&a1, &a2],
        Event::sign(&m1, 3, 3, vec![a1.id(), a2.id()], put("k", "x")).encode(),
        Reject::BadSeq,
    );
    // seq 0 never exists.
    check_rejected(&[], Event::sign(&m1, 0, 1, vec![], put("k", "x")).encode(), Reject::BadSeq);
}

#[test]
fn rule_6_lamport_is_one_more_than_the_deps() {
    let (m1, m2) = (key(1), key(2));
    let a1 = Event::sign(&m1, 1, 1, vec![], put("k", "1"));
    check_rejected(&[], Event::sign(&m1, 1, 2, vec![], put("k", "x")).encode(), Reject::BadLamport);
    check_rejected(&[], Event::sign(&m1, 1, 0, vec![], put("k", "x")).encode(), Reject::BadLamport);
    check_rejected(&[&a1], Event::sign(&m2, 1, 1, vec![a1.id()], put("k", "x")).encode(), Reject::BadLamport);
    check_rejected(&[&a1], Event::sign(&m2, 1, 3, vec![a1.id()], put("k", "x")).encode(), Reject::BadLamport);
}

#[test]
fn rule_7_ops_hash_and_well_formed_ops() {
    let m1 = key(1);
    let e = Event::sign(&m1, 1, 1, vec![], put("k", "v"));
    let mut swapped_ops = e.clone();
    swapped_ops.ops = put("k", "w");
    check_rejected(&[], swapped_ops.encode(), Reject::OpsHashMismatch);
    let no_ops = sign_header(&m1, header(&m1, 1, 1, vec![], &[]), vec![]);
    check_rejected(&[], no_ops.encode(), Reject::BadOp);
    let empty_key = vec![Op::Incr { key: vec![], delta: 1 }];
    check_rejected(&[], Event::sign(&m1, 1, 1, vec![], empty_key).encode(), Reject::BadOp);
    let too_many: Vec<Op> = (0..=OPS_MAX).map(|_| Op::Incr { key: b"c".to_vec(), delta: 1 }).collect();
    check_rejected(&[], Event::sign(&m1, 1, 1, vec![], too_many).encode(), Reject::Malformed);
}

#[test]
fn every_reason_has_a_distinct_name() {
    let mut names: Vec<&str> = Reject::ALL.iter().map(|r| r.name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), Reject::ALL.len());
}

#[test]
fn duplicates_are_counted_not_rejected() {
    let e = Event::sign(&key(1), 1, 1, vec![], put("k", "v"));
    let orphan = Event::sign(&key(2), 1, 2, vec![EventId([7; 32])], put("k", "v"));
    let mut a = adapter();
    let out = ingest(&mut a, &[&e, &e, &orphan, &orphan]);
    assert_eq!((out.accepted.len(), out.n_buffered, out.n_duplicate), (1, 1, 2));
    let out = ingest(&mut a, &[&e, &orphan]);
    assert_eq!((out.accepted.len(), out.n_buffered, out.n_duplicate), (0, 0, 2));
    assert!(out.rejected.is_empty());
}

#[test]
fn orphans_report_their_missing_deps_and_wait() {
    let m1 = key(1);
    let a1 = Event::sign(&m1, 1, 1, vec![], put("k", "1"));
    let a2 = Event::sign(&m1, 2, 2, vec![a1.id()], put("k", "2"));
    let mut a = adapter();
    let out = ingest(&mut a, &[&a2]);
    assert_eq!(out.missing, vec![a1.id()]);
    assert_eq!(a.missing(10), vec![a1.id()]);
    assert!(a.is_known(&a2.id()) && !a.is_accepted(&a2.id()));
    let out = ingest(&mut a, &[&a1]);
    assert_eq!(out.accepted.len(), 2);
    assert!(a.missing(10).is_empty());
}

#[test]
fn a_buffered_event_that_breaks_a_causal_rule_is_rejected_when_its_deps_arrive() {
    let m1 = key(1);
    let a1 = Event::sign(&m1, 1, 1, vec![], put("k", "1"));
    let bad = Event::sign(&m1, 2, 7, vec![a1.id()], put("k", "2"));
    let mut a = adapter();
    assert_eq!(ingest(&mut a, &[&bad]).n_buffered, 1);
    let out = ingest(&mut a, &[&a1]);
    assert_eq!(out.accepted.len(), 1);
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].reason, Reject::BadLamport);
}

fn orphan(signer: &SecretKey, i: u32, value_len: usize) -> Event {
    let mut dep = [0u8; 32];
    dep[..4].copy_from_slice(&i.to_le_bytes());
    Event::sign(signer, 2, 9, vec![EventId(dep)], put("k", &"x".repeat(value_len)))
}

#[test]
fn the_buffer_stays_within_its_bounds_and_a_flood_costs_only_the_flooder() {
    let config = AdapterConfig {
        buffer_bytes_per_peer_max: 40_000,
        buffer_bytes_total_max: 60_000,
        verify_threads: 2,
        membership_changes: true,
    };
    let mut a = Adapter::new(genesis(3), config.clone());
    let honest = PublicKey([1; 32]);
    let flooder = PublicKey([2; 32]);
    let honest_orphans: Vec<Event> = (0..5).map(|i| orphan(&key(1), i, 500)).collect();
    let out = a.ingest(honest, honest_orphans.iter().map(Event::encode).collect());
    assert_eq!(out.n_buffered, 5);
    let flood: Vec<Vec<u8>> = (100..2_000).map(|i| orphan(&key(2), i, 500).encode()).collect();
    let mut dropped = 0;
    for chunk in flood.chunks(100) {
        let out = a.ingest(flooder, chunk.to_vec());
        assert!(out.accepted.is_empty());
        dropped += out.n_orphans_dropped;
        assert!(a.buffer_use().1 <= config.buffer_bytes_total_max);
        assert!(a.buffer_peer_bytes(&flooder) <= config.buffer_bytes_per_peer_max);
    }
    // Once its share was full, the flood was dropped before any signature check.
    assert!(dropped > 1_800, "only {dropped} dropped");
    assert_eq!(a.orphans_dropped(), dropped as u64);
    // The honest peer's orphans are all still there: the flood only cost the flooder.
    for e in &honest_orphans {
        assert!(a.is_known(&e.id()), "an honest orphan was evicted");
    }
    // The first of the flood fill the flooder's share; the rest never got in.
    assert!(a.is_known(&orphan(&key(2), 100, 500).id()));
    assert!(!a.is_known(&orphan(&key(2), 1_999, 500).id()));
    // Proof that they are not verified: orphans with broken signatures are dropped, not
    // rejected. An event whose deps are all accepted is still checked, and accepted.
    let mut broken = orphan(&key(2), 5_000, 500);
    broken.sig.0[0] ^= 1;
    let root = Event::sign(&key(2), 1, 1, vec![], put("k", "v"));
    let out = a.ingest(flooder, vec![broken.encode(), root.encode()]);
    assert_eq!((out.n_orphans_dropped, out.rejected.len(), out.accepted.len()), (1, 0, 1));
    // A child of an event that is merely buffered needs the buffer too: no chain of orphans
    // slips past the check.
    let buffered = orphan(&key(2), 100, 500);
    let child = Event::sign(&key(2), 3, 10, vec![buffered.id()], put("k", &"y".repeat(500)));
    assert_eq!(a.ingest(flooder, vec![child.encode()]).n_orphans_dropped, 1);
}

#[test]
fn equivocation_is_detected_on_acceptance_and_in_the_buffer() {
    let m1 = key(1);
    let a1 = Event::sign(&m1, 1, 1, vec![], put("k", "1"));
    let a2 = Event::sign(&m1, 2, 2, vec![a1.id()], put("k", "2"));
    let a2_fork = Event::sign(&m1, 2, 2, vec![a1.id()], put("k", "fork"));
    for order in [[&a1, &a2, &a2_fork], [&a2, &a2_fork, &a1], [&a2_fork, &a1, &a2]] {
        let mut a = adapter();
        let mut evidence = Vec::new();
        let mut exclusions = Vec::new();
        for e in order {
            let out = ingest(&mut a, &[e]);
            evidence.extend(out.evidence);
            exclusions.extend(out.exclusions);
        }
        assert_eq!(a.n_accepted(), 3, "both branches are kept");
        assert_eq!(evidence.len(), 1, "one evidence, whatever the order");
        assert_eq!(evidence[0].verify(a.roster()), Ok(()));
        let idx = a.genesis().member_idx(&m1.public()).unwrap();
        assert_eq!(exclusions, vec![(idx, 2)]);
        assert!(a.is_equivocator(idx));
        assert_eq!(a.fork_seq(idx), Some(2));
        let held: Vec<&Evidence> = a.evidence().collect();
        assert_eq!(held, vec![&evidence[0]]);
    }
}

#[test]
fn the_least_evidence_per_author_is_kept() {
    let m1 = key(1);
    let a1 = Event::sign(&m1, 1, 1, vec![], put("k", "1"));
    let a1b = Event::sign(&m1, 1, 1, vec![], put("k", "1b"));
    let a2 = Event::sign(&m1, 2, 2, vec![a1.id()], put("k", "2"));
    let a2b = Event::sign(&m1, 2, 2, vec![a1.id()], put("k", "2b"));
    let sh = |e: &Event| SignedHeader { header: e.header.clone(), sig: e.sig };
    let high = Evidence::new(sh(&a2), sh(&a2b));
    let low = Evidence::new(sh(&a1), sh(&a1b));
    let mut a = adapter();
    assert_eq!(a.add_evidence(high.clone()), Ok(true));
    assert_eq!(a.add_evidence(high.clone()), Ok(false));
    assert_eq!(a.add_evidence(low.clone()), Ok(true));
    assert_eq!(a.add_evidence(high), Ok(false));
    assert_eq!(a.evidence().collect::<Vec<_>>(), vec![&low]);
}

#[test]
fn forged_evidence_is_refused() {
    let (m1, m2) = (key(1), key(2));
    let a1 = Event::sign(&m1, 1, 1, vec![], put("k", "1"));
    let a1b = Event::sign(&m1, 1, 1, vec![], put("k", "1b"));
    let b1 = Event::sign(&m2, 1, 1, vec![], put("k", "b"));
    let a2 = Event::sign(&m1, 2, 2, vec![a1.id()], put("k", "2"));
    let sh = |e: &Event| SignedHeader { header: e.header.clone(), sig: e.sig };
    let g = genesis(3);
    let check = |e: Evidence, expected: EvidenceError| {
        assert_eq!(e.verify(&cairn_protocol::Roster::new(&g)), Err(expected))
    };
    check(Evidence::new(sh(&a1), sh(&a1)), EvidenceError::NotTwoOrdered);
    check(Evidence::new(sh(&a1), sh(&b1)), EvidenceError::DifferentAuthors);
    check(Evidence::new(sh(&a1), sh(&a2)), EvidenceError::DifferentSeqs);
    let mut unsigned = sh(&a1b);
    unsigned.sig = Signature([0; 64]);
    check(Evidence::new(sh(&a1), unsigned), EvidenceError::BadSignature);
    let mut swapped = Evidence::new(sh(&a1), sh(&a1b));
    std::mem::swap(&mut swapped.first, &mut swapped.second);
    check(swapped, EvidenceError::NotTwoOrdered);
    let outsider = (key(8), key(8));
    let o1 = Event::sign(&outsider.0, 1, 1, vec![], put("k", "1"));
    let o1b = Event::sign(&outsider.1, 1, 1, vec![], put("k", "2"));
    check(Evidence::new(sh(&o1), sh(&o1b)), EvidenceError::NotMember);
    assert_eq!(Evidence::new(sh(&a1), sh(&a1b)).verify(&cairn_protocol::Roster::new(&g)), Ok(()));
}

#[test]
fn evidence_round_trips_through_its_encoding() {
    let m1 = key(1);
    let a1 = Event::sign(&m1, 1, 1, vec![], put("k", "1"));
    let a1b = Event::sign(&m1, 1, 1, vec![], put("k", "1b"));
    let sh = |e: &Event| SignedHeader { header: e.header.clone(), sig: e.sig };
    let evidence = Evidence::new(sh(&a1), sh(&a1b));
    let bytes = evidence.encode();
    assert_eq!(cairn_protocol::codec::decode_evidence(&bytes), Ok(evidence));
    let mut trailing = bytes;
    trailing.push(1);
    assert!(cairn_protocol::codec::decode_evidence(&trailing).is_err());
}

/// Batches in flight (`begin_ingest` … `finish_ingest`): the id does not cover the signature,
/// so a copy of an event with a forged signature, in flight, must not make the genuine copy of
/// a later batch a duplicate. The forged copy is rejected and the genuine one accepted,
/// whichever batch finishes first; two copies with the same bytes are checked once.
#[test]
fn a_forged_copy_in_flight_does_not_shadow_the_genuine_one() {
    let e = Event::sign(&key(1), 1, 1, vec![], put("k", "v"));
    let mut forged = e.clone();
    forged.sig.0[5] ^= 1;
    let liar = PublicKey([8; 32]);
    for forged_finishes_first in [true, false] {
        let mut a = adapter();
        let (pending_forged, checks_forged) = a.begin_ingest(liar, vec![forged.encode()]);
        let (pending_real, checks_real) = a.begin_ingest(PEER, vec![e.encode()]);
        assert_eq!(checks_real.len(), 1, "the genuine copy is a candidate, not a duplicate");
        let (out_forged, out_real) = if forged_finishes_first {
            let f = a.finish_ingest(pending_forged, checks_forged.run(1));
            (f, a.finish_ingest(pending_real, checks_real.run(1)))
        } else {
            let r = a.finish_ingest(pending_real, checks_real.run(1));
            (a.finish_ingest(pending_forged, checks_forged.run(1)), r)
        };
        assert_eq!(out_forged.rejected.len(), 1);
        assert_eq!(out_forged.rejected[0].reason, Reject::BadSignature);
        assert_eq!(out_forged.rejected[0].from, liar);
        assert_eq!(out_real.accepted.len(), 1, "forged copy finished first: {forged_finishes_first}");
        assert_eq!(a.n_accepted(), 1);
        assert_eq!(a.n_in_flight(), 0);
    }
    // The genuine copy first, then the forged one: the forged one is checked, and rejected.
    let mut a = adapter();
    let (pending_real, checks_real) = a.begin_ingest(PEER, vec![e.encode()]);
    let (pending_forged, checks_forged) = a.begin_ingest(liar, vec![forged.encode()]);
    assert_eq!(checks_forged.len(), 1);
    assert_eq!(a.finish_ingest(pending_real, checks_real.run(1)).accepted.len(), 1);
    let out = a.finish_ingest(pending_forged, checks_forged.run(1));
    assert_eq!(out.rejected[0].reason, Reject::BadSignature);
    assert_eq!(a.n_accepted(), 1);
    // Two copies with the same bytes: one signature check, one acceptance.
    let mut a = adapter();
    let (first, first_checks) = a.begin_ingest(PEER, vec![e.encode()]);
    let (second, second_checks) = a.begin_ingest(liar, vec![e.encode()]);
    assert_eq!(second_checks.len(), 0);
    assert_eq!(a.finish_ingest(first, first_checks.run(1)).accepted.len(), 1);
    assert_eq!(a.finish_ingest(second, second_checks.run(1)).n_duplicate, 1);
    assert_eq!(a.n_accepted(), 1);
}
