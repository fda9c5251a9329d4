//! `diagnose` and `diagnose_evidence` on the test vectors of `docs/vectors.txt` and on events
//! that break one rule each: every rule's verdict, and agreement with what a node (the
//! adapter) rejects, with the same reason.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cairn_crypto::SecretKey;
use cairn_protocol::codec;
use cairn_protocol::limits::VALUE_BYTES_MAX;
use cairn_protocol::{
    Adapter, AdapterConfig, Diagnosis, Event, EventId, EventRule, Evidence, EvidenceRule, Genesis, Header,
    Member, Needs, Op, Outcome, SignedHeader, Verdict, diagnose, diagnose_evidence,
};

/// The `name = hex` lines of `docs/vectors.txt`.
fn vectors() -> BTreeMap<String, Vec<u8>> {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "docs", "vectors.txt"].iter().collect();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (name, value) = line.split_once(" = ").unwrap_or_else(|| panic!("{line:?}"));
            (name.to_owned(), hex::decode(value).unwrap_or_else(|e| panic!("{name}: {e}")))
        })
        .collect()
}

fn vector(name: &str) -> Vec<u8> {
    vectors().remove(name).unwrap_or_else(|| panic!("no vector {name}"))
}

fn genesis() -> Genesis {
    codec::decode_genesis(&vector("genesis")).unwrap()
}

fn alice() -> SecretKey {
    SecretKey::from_seed(&[1; 32])
}

/// A genesis that does not hold alice: bob and carol.
fn genesis_without_alice() -> Genesis {
    let members = [("bob", 2), ("carol", 3)]
        .map(|(name, seed)| Member { key: SecretKey::from_seed(&[seed; 32]).public(), name: name.into() });
    Genesis::new(members.to_vec()).unwrap()
}

fn verdict<T, R: Copy + PartialEq + std::fmt::Debug>(diagnosis: &Diagnosis<T, R>, rule: R) -> &Verdict {
    &diagnosis.verdicts.iter().find(|(r, _)| *r == rule).unwrap_or_else(|| panic!("no {rule:?}")).1
}

/// The reason `rule` fails with; panics if it does not fail.
fn reason<T, R: Copy + PartialEq + std::fmt::Debug>(diagnosis: &Diagnosis<T, R>, rule: R) -> &'static str {
    match verdict(diagnosis, rule) {
        Verdict::Fail(failure) => failure.reason,
        other => panic!("{rule:?}: {other:?}"),
    }
}

/// The rules and their verdicts in short form: `pass`, the reason, or what it needs.
fn summary<T, R: Copy>(diagnosis: &Diagnosis<T, R>, name: fn(R) -> &'static str) -> Vec<String> {
    diagnosis
        .verdicts
        .iter()
        .map(|(rule, verdict)| {
            let verdict = match verdict {
                Verdict::Pass => "pass",
                Verdict::Fail(failure) => failure.reason,
                Verdict::Undecided(needs) => needs.name(),
            };
            format!("{} {verdict}", name(*rule))
        })
        .collect()
}

fn event_summary(diagnosis: &Diagnosis<Event, EventRule>) -> Vec<String> {
    summary(diagnosis, EventRule::name)
}

/// What a node with the vectors' genesis says of `event`, sent on its own: accepted, buffered
/// (its deps are missing), or the reason it is rejected with.
fn node_says(event: &[u8]) -> String {
    let mut adapter = Adapter::new(genesis(), AdapterConfig::default());
    let ingested = adapter.ingest(alice().public(), vec![event.to_vec()]);
    if let Some(rejection) = ingested.rejected.first() {
        rejection.reason.name().to_owned()
    } else if !ingested.accepted.is_empty() {
        "accepted".to_owned()
    } else {
        assert_eq!(ingested.n_buffered, 1);
        "buffered".to_owned()
    }
}

/// Checks that a node agrees with the diagnosis of `bytes`: it rejects what fails, for the
/// reason of the first rule that fails, accepts what is valid, and buffers what waits for deps.
fn check_agrees(bytes: &[u8]) -> Diagnosis<Event, EventRule> {
    let diagnosis = diagnose(bytes, Some(&genesis()));
    let node = node_says(bytes);
    match diagnosis.outcome() {
        Outcome::Invalid => assert_eq!(node, diagnosis.failures().next().unwrap().1.reason),
        Outcome::Valid => assert_eq!(node, "accepted"),
        Outcome::Undecided => {
            assert_eq!(node, "buffered");
            assert!(diagnosis.undecided().all(|(_, needs)| needs == Needs::CausalPast));
        }
    }
    diagnosis
}

#[test]
fn the_vector_events() {
    let genesis = genesis();
    let event1 = vector("event1");
    let with = diagnose(&event1, Some(&genesis));
    assert_eq!(with.outcome(), Outcome::Valid, "{:?}", event_summary(&with));
    assert_eq!(with.n_bytes, 182);
    assert_eq!(with.decoded.as_ref().unwrap().id(), EventId(vector("event1.id").try_into().unwrap()));
    let without = diagnose(&event1, None);
    assert_eq!(without.outcome(), Outcome::Undecided);
    assert_eq!(
        event_summary(&without),
        [
            "decoding pass",
            "canonical pass",
            "deps_sorted pass",
            "membership needs_genesis",
            "ops pass",
            "ops_hash pass",
            "signature pass",
            "seq pass",
            "lamport pass",
        ]
    );
    assert_eq!(diagnose(&event1, Some(&genesis_without_alice())).outcome(), Outcome::Invalid);
    assert_eq!(
        reason(&diagnose(&event1, Some(&genesis_without_alice())), EventRule::Membership),
        "not_member"
    );

    // With deps, seq and lamport need the causal past, with or without the genesis.
    for name in ["event2", "event3", "event2b"] {
        let diagnosis = diagnose(&vector(name), Some(&genesis));
        assert_eq!(diagnosis.outcome(), Outcome::Undecided, "{name}");
        assert_eq!(
            diagnosis.undecided().collect::<Vec<_>>(),
            [(EventRule::Seq, Needs::CausalPast), (EventRule::Lamport, Needs::CausalPast)],
            "{name}"
        );
    }
    check_agrees(&event1);
    check_agrees(&vector("event2"));
}

/// `event` signed by alice over `header` as given: deps are not sorted for it.
fn signed(header: Header, ops: Vec<Op>) -> Vec<u8> {
    let sig = alice().sign(&header.id().0);
    Event { header, ops, sig }.encode()
}

fn header(seq: u64, lamport: u64, deps: Vec<EventId>, ops: &[Op]) -> Header {
    Header { author: alice().public(), seq, lamport, deps, ops_hash: cairn_protocol::event::ops_hash(ops) }
}

fn put() -> Vec<Op> {
    vec![Op::Put { key: b"k".to_vec(), value: b"v".to_vec() }]
}

#[test]
fn what_the_bytes_decide_of_seq_and_lamport() {
    // Seq 0, without and with deps.
    let d = check_agrees(&Event::sign(&alice(), 0, 1, vec![], put()).encode());
    assert_eq!(reason(&d, EventRule::Seq), "bad_seq");
    assert!(verdict(&d, EventRule::Lamport).is_pass());
    let d = diagnose(&Event::sign(&alice(), 0, 2, vec![EventId([1; 32])], put()).encode(), None);
    assert_eq!(reason(&d, EventRule::Seq), "bad_seq");
    assert_eq!(verdict(&d, EventRule::Lamport), &Verdict::Undecided(Needs::CausalPast));
    // Seq above 1 without deps.
    let d = check_agrees(&Event::sign(&alice(), 2, 1, vec![], put()).encode());
    assert_eq!(reason(&d, EventRule::Seq), "bad_seq");
    let Verdict::Fail(failure) = verdict(&d, EventRule::Seq) else { unreachable!() };
    assert!(failure.detail.contains("seq 2 without deps"), "{}", failure.detail);
    // A lamport other than 1 without deps.
    for lamport in [0, 2, u64::MAX] {
        let d = check_agrees(&Event::sign(&alice(), 1, lamport, vec![], put()).encode());
        assert!(verdict(&d, EventRule::Seq).is_pass());
        assert_eq!(reason(&d, EventRule::Lamport), "bad_lamport", "{lamport}");
    }
    // A lamport below 2 with deps.
    let d = diagnose(&Event::sign(&alice(), 1, 1, vec![EventId([1; 32])], put()).encode(), None);
    assert_eq!(verdict(&d, EventRule::Seq), &Verdict::Undecided(Needs::CausalPast));
    assert_eq!(reason(&d, EventRule::Lamport), "bad_lamport");
}

#[test]
fn each_stateless_rule_fails_with_its_reason() {
    let event = Event::sign(&alice(), 1, 1, vec![], put());
    let bytes = event.encode();

    // Rule 1: truncated, trailing bytes, oversize; nothing after decoding is judged.
    let d = check_agrees(&bytes[..bytes.len() - 1]);
    let Verdict::Fail(failure) = verdict(&d, EventRule::Decoding) else { panic!() };
    assert_eq!((failure.reason, failure.codec), ("malformed", Some("truncated")));
    assert!(d.decoded.is_none());
    assert!(d.verdicts[1..].iter().all(|(_, v)| *v == Verdict::Undecided(Needs::Decoding)));
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert_eq!(reason(&check_agrees(&trailing), EventRule::Decoding), "trailing_bytes");
    assert_eq!(reason(&check_agrees(&vec![0; 200_000]), EventRule::Decoding), "oversize");

    // An oversize set element is named as an element.
    let big = vec![Op::Add { key: b"s".to_vec(), element: vec![b'e'; VALUE_BYTES_MAX + 1] }];
    let d = check_agrees(&Event::sign(&alice(), 1, 1, vec![], big).encode());
    let Verdict::Fail(failure) = verdict(&d, EventRule::Decoding) else { panic!() };
    assert_eq!(failure.codec, Some("length_over_limit"));
    assert!(failure.detail.starts_with("element: length 65537"), "{}", failure.detail);
    let big = vec![Op::Put { key: b"r".to_vec(), value: vec![b'v'; VALUE_BYTES_MAX + 1] }];
    let d = diagnose(&Event::sign(&alice(), 1, 1, vec![], big).encode(), None);
    let Verdict::Fail(failure) = verdict(&d, EventRule::Decoding) else { panic!() };
    assert!(failure.detail.starts_with("value: length 65537"), "{}", failure.detail);

    // Rule 2: deps out of order, or twice.
    let deps = vec![EventId([9; 32]), EventId([3; 32])];
    let d = check_agrees(&signed(header(2, 2, deps, &put()), put()));
    assert_eq!(reason(&d, EventRule::DepsSorted), "deps_not_sorted");
    let d = diagnose(&signed(header(2, 2, vec![EventId([3; 32]); 2], &put()), put()), None);
    assert_eq!(reason(&d, EventRule::DepsSorted), "deps_not_sorted");

    // Rule 7: no op, an empty key, an ops hash that is not the ops'.
    let d = check_agrees(&Event::sign(&alice(), 1, 1, vec![], vec![]).encode());
    assert_eq!(reason(&d, EventRule::Ops), "bad_op");
    let ops = vec![Op::Del { key: b"a".to_vec() }, Op::Add { key: vec![], element: b"e".to_vec() }];
    let d = check_agrees(&Event::sign(&alice(), 1, 1, vec![], ops).encode());
    let Verdict::Fail(failure) = verdict(&d, EventRule::Ops) else { panic!() };
    assert_eq!(failure.detail, "op 1 (add) has an empty key (ops count from 0)");
    let mut sneaked = event.clone();
    sneaked.ops.push(Op::Del { key: b"x".to_vec() });
    let d = check_agrees(&sneaked.encode());
    assert_eq!(reason(&d, EventRule::OpsHash), "ops_hash_mismatch");
    assert!(verdict(&d, EventRule::Signature).is_pass(), "the signature covers the header only");

    // Rule 4: one bit of the signature.
    let mut forged = event.clone();
    forged.sig.0[10] ^= 1;
    let d = check_agrees(&forged.encode());
    assert_eq!(reason(&d, EventRule::Signature), "bad_signature");
    assert_eq!(d.failures().count(), 1);

    // Rule 3, with a genesis that does not hold the author: every other rule still judged.
    let d = diagnose(&bytes, Some(&genesis_without_alice()));
    assert_eq!(reason(&d, EventRule::Membership), "not_member");
    assert_eq!(d.failures().count(), 1);
    assert_eq!(d.undecided().count(), 0);
}

fn evidence_summary(diagnosis: &Diagnosis<Evidence, EvidenceRule>) -> Vec<String> {
    summary(diagnosis, EvidenceRule::name)
}

#[test]
fn the_vector_evidence_and_broken_evidence() {
    let genesis = genesis();
    let bytes = vector("evidence");
    let d = diagnose_evidence(&bytes, Some(&genesis));
    assert_eq!(d.outcome(), Outcome::Valid, "{:?}", evidence_summary(&d));
    assert!(d.decoded.as_ref().unwrap().verify(&cairn_protocol::Roster::new(&genesis)).is_ok());
    let d = diagnose_evidence(&bytes, None);
    assert_eq!(d.outcome(), Outcome::Undecided);
    assert_eq!(
        evidence_summary(&d),
        [
            "decoding pass",
            "same_author pass",
            "same_seq pass",
            "two_ordered pass",
            "membership needs_genesis",
            "first_signature pass",
            "second_signature pass",
        ]
    );
    let d = diagnose_evidence(&bytes, Some(&genesis_without_alice()));
    assert_eq!(reason(&d, EvidenceRule::Membership), "NotMember");

    let evidence = d.decoded.unwrap();
    // Each broken step gives the reason `Evidence::verify` gives.
    let check = |evidence: &Evidence, rule: EvidenceRule| {
        let d = diagnose_evidence(&evidence.encode(), Some(&genesis));
        let expected = evidence.verify(&cairn_protocol::Roster::new(&genesis)).unwrap_err().name();
        assert_eq!(reason(&d, rule), expected, "{:?}", evidence_summary(&d));
        assert_eq!(d.failures().next().unwrap().1.reason, expected);
    };
    let mut bad = evidence.clone();
    bad.second.sig.0[0] ^= 0x80;
    check(&bad, EvidenceRule::SecondSignature);
    let mut bad = evidence.clone();
    bad.first.sig.0[0] ^= 0x80;
    check(&bad, EvidenceRule::FirstSignature);
    let same = Evidence { first: evidence.first.clone(), second: evidence.first.clone() };
    check(&same, EvidenceRule::TwoOrdered);
    let swapped = Evidence { first: evidence.second.clone(), second: evidence.first.clone() };
    check(&swapped, EvidenceRule::TwoOrdered);
    let other_seq = Event::sign(&alice(), 3, 3, vec![], put());
    let other_seq = SignedHeader { header: other_seq.header, sig: other_seq.sig };
    check(&Evidence::new(evidence.first.clone(), other_seq), EvidenceRule::SameSeq);
    let bob = SecretKey::from_seed(&[2; 32]);
    let by_bob = Event::sign(&bob, 2, 2, vec![], put());
    let by_bob = SignedHeader { header: by_bob.header, sig: by_bob.sig };
    check(&Evidence::new(evidence.first.clone(), by_bob), EvidenceRule::SameAuthor);

    let d = diagnose_evidence(&bytes[..bytes.len() - 1], None);
    let Verdict::Fail(failure) = verdict(&d, EvidenceRule::Decoding) else { panic!() };
    assert_eq!((failure.reason, failure.codec), ("malformed", Some("truncated")));
    assert_eq!(d.outcome(), Outcome::Invalid);
    // An event is no evidence.
    assert_eq!(diagnose_evidence(&vector("event1"), None).outcome(), Outcome::Invalid);
}
