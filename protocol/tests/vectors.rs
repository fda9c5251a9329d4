//! The test vectors of `docs/PROTOCOL.md`, recomputed from the public API and compared with
//! `docs/vectors.txt`, and the tables of `docs/PROTOCOL.md` checked against the code.
//!
//! `CAIRN_WRITE_VECTORS=1 cargo test -p cairn-protocol --test vectors` writes `docs/vectors.txt`
//! instead of comparing. Do that only for a deliberate change of the protocol: every vector
//! that changes breaks compatibility with peers built from the old document.
//!
//! Besides the comparison, the layouts are built here a second time by hand, from the text of
//! `docs/PROTOCOL.md` rather than through the codec, so the document and the code cannot drift
//! apart without a test failing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cairn_crypto::{Domain, PublicKey, SecretKey, hash, verify_strict};
use cairn_protocol::codec;
use cairn_protocol::document::{Applied, Document, MemoryHistory};
use cairn_protocol::event::ops_hash;
use cairn_protocol::limits;
use cairn_protocol::membership::{
    Approval, Change, ChangeKind, ChangeLog, MembershipId, Policy, Proposal, Rotation,
};
use cairn_protocol::node::{self, EVENTS_CHUNK_BYTES, FORK_PROBE_SEQS_PER_ROUND, WANT_PERIODIC_IDS_MAX};
use cairn_protocol::{
    Adapter, AdapterConfig, AddrRecord, Event, EventId, Evidence, Genesis, Header, Member, Message, Node,
    NodeConfig, NodeEvent, Op, Seen, SignedHeader, Tip,
};

/// Set to `1` to write `docs/vectors.txt` instead of comparing with it.
const WRITE_ENV: &str = "CAIRN_WRITE_VECTORS";

fn docs_path(name: &str) -> PathBuf {
    [env!("CARGO_MANIFEST_DIR"), "..", "docs", name].iter().collect()
}

fn read(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

// ---- the scenario ---------------------------------------------------------------------------

/// Three members and four events: alice writes, bob builds on it, alice writes again, and alice
/// also signs a second event at seq 2 (an equivocation).
struct Scenario {
    seeds: [[u8; 32]; 3],
    keys: [SecretKey; 3],
    genesis: Genesis,
    event1: Event,
    event2: Event,
    event3: Event,
    /// Alice's equivocating event 2'.
    event2b: Event,
    evidence: Evidence,
}

const NAMES: [&str; 3] = ["alice", "bob", "carol"];

fn bytes(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

/// Alice's address record of the vectors.
fn addr_record(s: &Scenario) -> AddrRecord {
    let alice = SecretKey::from_seed(&[1u8; 32]);
    let addrs =
        ["192.0.2.1:7000".parse().expect("an address"), "[2001:db8::1]:7000".parse().expect("an address")];
    AddrRecord::new(&s.genesis.cluster_id(), &alice, 7, &addrs)
}

fn scenario() -> Scenario {
    let seeds = [[1u8; 32], [2u8; 32], [3u8; 32]];
    let keys = seeds.map(|seed| SecretKey::from_seed(&seed));
    let members = keys
        .iter()
        .zip(NAMES)
        .map(|(key, name)| Member { key: key.public(), name: name.to_owned() })
        .collect();
    let genesis = Genesis::new(members).expect("the test genesis is valid");
    let [alice, bob, _] = &keys;
    let event1 = Event::sign(alice, 1, 1, vec![], vec![Op::Put { key: bytes("k"), value: bytes("v") }]);
    let event2 = Event::sign(
        bob,
        1,
        2,
        vec![event1.id()],
        vec![Op::Incr { key: bytes("c"), delta: -5 }, Op::Add { key: bytes("s"), element: bytes("x") }],
    );
    let event3 = Event::sign(
        alice,
        2,
        3,
        vec![event1.id(), event2.id()],
        vec![Op::Del { key: bytes("k") }, Op::Remove { key: bytes("s"), element: bytes("x") }],
    );
    let event2b =
        Event::sign(alice, 2, 2, vec![event1.id()], vec![Op::Put { key: bytes("k"), value: bytes("w") }]);
    let signed = |e: &Event| SignedHeader { header: e.header.clone(), sig: e.sig };
    let evidence = Evidence::new(signed(&event3), signed(&event2b));
    Scenario { seeds, keys, genesis, event1, event2, event3, event2b, evidence }
}

/// A node (an observer) that received `events` in one `Events` message from carol.
fn node_with(scenario: &Scenario, events: &[&Event]) -> Node {
    let mut node = Node::new(scenario.genesis.clone(), None, NodeConfig::default());
    let carol = scenario.keys[2].public();
    assert!(node.handle_connected(carol, 0), "carol is a member");
    let message = Message::Events { events: events.iter().map(|e| e.encode()).collect() };
    node.handle_message(carol, &codec::encode_message(&message), 0);
    let mut n_accepted = 0;
    while let Some(event) = node.poll_event() {
        match event {
            NodeEvent::Accepted { .. } => n_accepted += 1,
            NodeEvent::Rejected { id, reason, .. } => panic!("event {id:?} rejected: {reason}"),
            NodeEvent::BadMessage { misbehaviour, detail, .. } => {
                panic!("bad message: {} {detail}", misbehaviour.name())
            }
            _ => {}
        }
    }
    assert_eq!(n_accepted, events.len(), "every event is accepted");
    node
}

/// The same document built without the node: adapter, then document.
fn document_via_adapter(scenario: &Scenario, events: &[&Event]) -> Document {
    let mut adapter = Adapter::new(scenario.genesis.clone(), AdapterConfig::default());
    let ingested = adapter.ingest(scenario.keys[2].public(), events.iter().map(|e| e.encode()).collect());
    assert!(ingested.rejected.is_empty(), "{:?}", ingested.rejected);
    assert_eq!(ingested.accepted.len(), events.len());
    let mut document = Document::new(cairn_protocol::Roster::new(&scenario.genesis).keys());
    let mut history = MemoryHistory::new();
    for event in &ingested.accepted {
        history.record_event(event);
        let Applied { covered, .. } = document.apply(event);
        history.record_covered(covered);
    }
    for (author, seq) in ingested.exclusions {
        let Applied { covered, .. } = document.exclude(author, seq, &history);
        history.record_covered(covered);
    }
    document
}

// ---- the layouts, by hand from docs/PROTOCOL.md ------------------------------------------

fn u64_le(n: u64) -> [u8; 8] {
    n.to_le_bytes()
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend(u64_le(bytes.len() as u64));
    out.extend(bytes);
}

fn hand_genesis(scenario: &Scenario) -> Vec<u8> {
    let mut members: Vec<(PublicKey, &str)> =
        scenario.keys.iter().map(SecretKey::public).zip(NAMES).collect();
    members.sort();
    let mut out = u64_le(members.len() as u64).to_vec();
    for (key, name) in members {
        out.extend(key.0);
        put_bytes(&mut out, name.as_bytes());
    }
    out
}

fn hand_ops(ops: &[Op]) -> Vec<u8> {
    let mut out = u64_le(ops.len() as u64).to_vec();
    for op in ops {
        match op {
            Op::Put { key, value } => {
                out.extend(0u32.to_le_bytes());
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
            }
            Op::Del { key } => {
                out.extend(1u32.to_le_bytes());
                put_bytes(&mut out, key);
            }
            Op::Incr { key, delta } => {
                out.extend(2u32.to_le_bytes());
                put_bytes(&mut out, key);
                out.extend(delta.to_le_bytes());
            }
            Op::Add { key, element } => {
                out.extend(3u32.to_le_bytes());
                put_bytes(&mut out, key);
                put_bytes(&mut out, element);
            }
            Op::Remove { key, element } => {
                out.extend(4u32.to_le_bytes());
                put_bytes(&mut out, key);
                put_bytes(&mut out, element);
            }
            Op::Propose { change, round } => {
                out.extend(5u32.to_le_bytes());
                out.extend(hand_change(change));
                out.extend(round.to_le_bytes());
            }
            Op::Approve { change, round } => {
                out.extend(6u32.to_le_bytes());
                out.extend(change.0);
                out.extend(round.to_le_bytes());
            }
            Op::Rotate(rotation) => {
                out.extend(7u32.to_le_bytes());
                out.extend(hand_rotation(rotation));
            }
            Op::PutSeen { key, value, seen } => {
                out.extend(8u32.to_le_bytes());
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
                out.extend(hand_seen(seen));
            }
            Op::DelSeen { key, seen } => {
                out.extend(9u32.to_le_bytes());
                put_bytes(&mut out, key);
                out.extend(hand_seen(seen));
            }
            Op::AddSeen { key, element, seen } => {
                out.extend(10u32.to_le_bytes());
                put_bytes(&mut out, key);
                put_bytes(&mut out, element);
                out.extend(hand_seen(seen));
            }
            Op::RemoveSeen { key, element, seen } => {
                out.extend(11u32.to_le_bytes());
                put_bytes(&mut out, key);
                put_bytes(&mut out, element);
                out.extend(hand_seen(seen));
            }
        }
    }
    out
}

/// `seen = u64(n) ‖ n × event id (32) ‖ u64(m) ‖ m × u64(own seq)`.
fn hand_seen(seen: &Seen) -> Vec<u8> {
    let mut out = u64_le(seen.events.len() as u64).to_vec();
    for id in &seen.events {
        out.extend(id.0);
    }
    out.extend(u64_le(seen.own.len() as u64));
    for seq in &seen.own {
        out.extend(u64_le(*seq));
    }
    out
}

fn hand_header(header: &Header) -> Vec<u8> {
    let mut out = header.author.0.to_vec();
    out.extend(u64_le(header.seq));
    out.extend(u64_le(header.lamport));
    out.extend(u64_le(header.deps.len() as u64));
    for dep in &header.deps {
        out.extend(dep.0);
    }
    out.extend(header.ops_hash);
    out
}

fn hand_tips(out: &mut Vec<u8>, tips: &[Tip]) {
    out.extend(u64_le(tips.len() as u64));
    for tip in tips {
        out.extend(tip.author.0);
        out.extend(u64_le(tip.seq));
        out.extend(tip.id.0);
    }
}

/// The pre-image of the sync digest after the domain string.
fn hand_sync_input(tips: &[Tip], evidence: &[&Evidence]) -> Vec<u8> {
    let mut out = Vec::new();
    hand_tips(&mut out, tips);
    out.extend(u64_le(evidence.len() as u64));
    for e in evidence {
        for signed in [&e.first, &e.second] {
            out.extend(hand_header(&signed.header));
            out.extend(signed.sig.0);
        }
    }
    out
}

/// A register sibling, with the fields the digest layout lists.
struct HandSibling<'a> {
    id: EventId,
    op_idx: u64,
    author: PublicKey,
    lamport: u64,
    value: &'a str,
}

/// A document's visible state for the documented digest layout: registers with their siblings,
/// counters with their author totals, sets with their members; every list already in the
/// documented order.
struct HandState<'a> {
    registers: Vec<(&'a str, Vec<HandSibling<'a>>)>,
    counters: Vec<(&'a str, Vec<(PublicKey, i128)>)>,
    sets: Vec<(&'a str, Vec<&'a str>)>,
}

fn hand_document_state(state: &HandState<'_>) -> Vec<u8> {
    let mut out = u64_le(state.registers.len() as u64).to_vec();
    for (key, siblings) in &state.registers {
        put_bytes(&mut out, key.as_bytes());
        out.extend(u64_le(siblings.len() as u64));
        for sibling in siblings {
            out.extend(sibling.id.0);
            out.extend(u64_le(sibling.op_idx));
            out.extend(sibling.author.0);
            out.extend(u64_le(sibling.lamport));
            out.extend(u64_le(sibling.value.len() as u64));
            out.extend(hash(Domain::Value, sibling.value.as_bytes()));
        }
    }
    out.extend(u64_le(state.counters.len() as u64));
    for (key, totals) in &state.counters {
        put_bytes(&mut out, key.as_bytes());
        out.extend(u64_le(totals.len() as u64));
        for (author, total) in totals {
            out.extend(author.0);
            out.extend(total.to_le_bytes());
        }
    }
    out.extend(u64_le(state.sets.len() as u64));
    for (key, members) in &state.sets {
        put_bytes(&mut out, key.as_bytes());
        out.extend(u64_le(members.len() as u64));
        for member in members {
            put_bytes(&mut out, member.as_bytes());
        }
    }
    out
}

// ---- the vectors ----------------------------------------------------------------------------

/// The vectors in file order, with the comment lines that introduce each group.
#[derive(Default)]
struct Vectors {
    lines: Vec<Line>,
}

enum Line {
    Comment(String),
    Vector(String, Vec<u8>),
}

impl Vectors {
    fn comment(&mut self, text: &str) {
        if text.is_empty() {
            self.lines.push(Line::Comment(String::new()));
        }
        self.lines.extend(text.lines().map(|l| Line::Comment(l.to_owned())));
    }

    fn add(&mut self, name: &str, value: impl AsRef<[u8]>) {
        self.lines.push(Line::Vector(name.to_owned(), value.as_ref().to_vec()));
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            match line {
                Line::Comment(text) if text.is_empty() => out.push('\n'),
                Line::Comment(text) => out.push_str(&format!("# {text}\n")),
                Line::Vector(name, value) => out.push_str(&format!("{name} = {}\n", hex::encode(value))),
            }
        }
        out
    }

    fn values(&self) -> Vec<(&str, &[u8])> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                Line::Vector(name, value) => Some((name.as_str(), value.as_slice())),
                Line::Comment(_) => None,
            })
            .collect()
    }
}

const FILE_HEADER: &str = "\
Cairn protocol test vectors; the layouts are in docs/PROTOCOL.md.
Format: `name = hex` lines; `#` starts a comment line; blank lines are ignored.
Generated by protocol/tests/vectors.rs and checked by it under `cargo test`: the test recomputes
every vector from the public API, builds the layouts a second time by hand from PROTOCOL.md,
and decodes every value back. To regenerate after a deliberate protocol change:
    CAIRN_WRITE_VECTORS=1 cargo test -p cairn-protocol --test vectors
Every changed vector breaks compatibility with existing peers.";

fn event_vectors(v: &mut Vectors, name: &str, event: &Event) {
    v.add(&format!("{name}.ops"), codec::encode_ops(&event.ops));
    v.add(&format!("{name}.ops_hash"), event.header.ops_hash);
    v.add(&format!("{name}.header"), codec::encode_header(&event.header));
    v.add(&format!("{name}.id"), event.id().0);
    v.add(&format!("{name}.sig"), event.sig.0);
    v.add(name, event.encode());
}

fn compute() -> Vectors {
    let s = scenario();
    let mut v = Vectors::default();
    v.comment(FILE_HEADER);
    v.comment("");
    v.comment("Keys. seed.NAME is the RFC 8032 secret seed; public.NAME its ed25519 public key.");
    for ((seed, key), name) in s.seeds.iter().zip(&s.keys).zip(NAMES) {
        v.add(&format!("seed.{name}"), seed);
        v.add(&format!("public.{name}"), key.public().0);
    }
    v.comment("");
    v.comment("The genesis of alice (seed.alice), bob (seed.bob) and carol (seed.carol), members sorted");
    v.comment("by key, and cluster_id = SHA-256(\"cairn/cluster/v1\" || genesis).");
    v.add("genesis", s.genesis.encode());
    v.add("cluster_id", s.genesis.cluster_id());
    v.comment("The same members with a membership policy of 3 approvals per change: the member list,");
    v.comment("then u32(threshold). A genesis without a threshold ends with its members (a majority).");
    let strict = s.genesis.clone().with_threshold(3).expect("3 of 3 is a valid threshold");
    v.add("genesis_threshold", strict.encode());
    v.add("cluster_id_threshold", strict.cluster_id());
    v.comment("");
    v.comment("event1: alice, seq 1, lamport 1, no deps, ops [Put{key \"k\", value \"v\"}].");
    v.comment("NAME.ops is the op list, NAME.ops_hash = SHA-256(\"cairn/ops/v1\" || NAME.ops), NAME.header");
    v.comment("the header, NAME.id = SHA-256(\"cairn/event/v1\" || NAME.header), NAME.sig = Ed25519(seed,");
    v.comment("NAME.id), and NAME the whole event = NAME.header || NAME.ops || NAME.sig.");
    event_vectors(&mut v, "event1", &s.event1);
    v.comment("");
    v.comment("event2: bob, seq 1, lamport 2, deps [event1.id], ops [Incr{key \"c\", delta -5},");
    v.comment("Add{key \"s\", element \"x\"}].");
    event_vectors(&mut v, "event2", &s.event2);
    v.comment("");
    v.comment("event3: alice, seq 2, lamport 3, deps event1.id and event2.id (sorted bytewise, so");
    v.comment("event2.id comes first), ops [Del{key \"k\"}, Remove{key \"s\", element \"x\"}].");
    event_vectors(&mut v, "event3", &s.event3);
    v.comment("");
    v.comment("event2b (event 2' in PROTOCOL.md): alice equivocates, seq 2, lamport 2, deps [event1.id],");
    v.comment("ops [Put{key \"k\", value \"w\"}]. It is a valid event; with event3 it forks alice at seq 2.");
    event_vectors(&mut v, "event2b", &s.event2b);
    v.comment("");
    v.comment("The evidence of that fork: the signed headers of event3 and event2b, smaller id first.");
    v.add("evidence", s.evidence.encode());

    let full = [&s.event1, &s.event2, &s.event3];
    let mut node = node_with(&s, &full);
    let sync_digest = node.sync_digest();
    let tips = node.adapter().tips();
    v.comment("");
    v.comment("Reconciliation messages, one per tag. message.summary carries node.sync_digest below;");
    v.comment("message.tips carries the tips of that node (event3 for alice, event2 for bob, sorted by");
    v.comment("author) and the evidence above, with reply = true, more = false and heard = 3.");
    let messages = [
        ("summary", Message::Summary { digest: sync_digest }),
        ("in_sync", Message::InSync { digest: sync_digest }),
        (
            "tips",
            Message::Tips {
                reply: true,
                more: false,
                heard: 3,
                tips: tips.clone(),
                evidence: vec![s.evidence.clone()],
            },
        ),
        ("events", Message::Events { events: vec![s.event1.encode(), s.event2.encode()] }),
        ("want", Message::Want { ids: vec![s.event1.id(), s.event2b.id()] }),
        ("fork_probe", Message::ForkProbe { tip: s.event3.id(), seqs: vec![1] }),
        ("fork_ids", Message::ForkIds { tip: s.event3.id(), entries: vec![(1, s.event1.id())] }),
        ("want_chain", Message::WantChain { tip: s.event2b.id(), from_seq: 2 }),
        ("evidence", Message::Evidence { evidence: vec![s.evidence.clone()] }),
        ("have", Message::Have { ids: vec![s.event3.id()] }),
        ("prune", Message::Prune),
        ("graft", Message::Graft { ids: vec![s.event3.id()] }),
        ("addrs", Message::Addrs { records: vec![addr_record(&s)] }),
    ];
    for (name, message) in &messages {
        v.add(&format!("message.{name}"), codec::encode_message(message));
    }
    let record = addr_record(&s);
    v.comment("message.addrs carries alice's address record: seq 7, addresses 192.0.2.1:7000 and");
    v.comment("[2001:db8::1]:7000. addr.alice.message = SHA-256(\"cairn/address/v1\" || cluster_id ||");
    v.comment("alice || u64(7) || u64(2) || each address as u64(len) || text); addr.alice.sig signs it.");
    let message = AddrRecord::message(&s.genesis.cluster_id(), &record.key, record.seq, &record.addrs);
    // The pre-image, by hand.
    let mut pre_image = s.genesis.cluster_id().to_vec();
    pre_image.extend(record.key.0);
    pre_image.extend(7u64.to_le_bytes());
    pre_image.extend(2u64.to_le_bytes());
    for text in ["192.0.2.1:7000", "[2001:db8::1]:7000"] {
        pre_image.extend((text.len() as u64).to_le_bytes());
        pre_image.extend(text.as_bytes());
    }
    assert_eq!(message, hash(Domain::Address, &pre_image));
    assert!(verify_strict(&record.key, &message, &record.signature));
    assert!(record.verify(&s.genesis.cluster_id()).is_ok());
    v.add("addr.alice.message", message);
    v.add("addr.alice.sig", record.signature.0);

    let partial = node_with(&s, &[&s.event1, &s.event2]);
    v.comment("");
    v.comment("Document digests: NAME.document_state is the pre-image after the domain string, and");
    v.comment("NAME.document_digest = SHA-256(\"cairn/document/v3\" || NAME.document_state).");
    v.comment("partial: events 1 and 2 applied: register k = v, counter c = -5 (bob), set s = {x}.");
    let partial_state = hand_document_state(&document_state_partial(&s));
    v.add("partial.document_state", &partial_state);
    v.add("partial.document_digest", partial.document().digest());
    v.comment("node: events 1, 2 and 3 applied in that order: event3 deletes k and removes x, both of");
    v.comment("which it has seen, so only counter c = -5 (bob) is left.");
    let node_state = hand_document_state(&document_state_full(&s));
    v.add("node.document_state", &node_state);
    v.add("node.document_digest", node.document().digest());
    v.comment("The sync digest of that node: node.sync_input is the pre-image after the domain string,");
    v.comment("node.sync_digest = SHA-256(\"cairn/sync-digest/v1\" || node.sync_input).");
    v.add("node.sync_input", hand_sync_input(&tips, &[]));
    v.add("node.sync_digest", sync_digest);

    let mut forked = node_with(&s, &[&s.event1, &s.event2, &s.event3, &s.event2b]);
    let forked_tips = forked.adapter().tips();
    v.comment("");
    v.comment("forked: events 1, 2, 3 and 2b. Alice forked at seq 2, so her ops from seq 2 on (event3");
    v.comment("and event2b) are excluded: the document equals partial's. The sync digest covers three");
    v.comment("tips (alice's event3 and event2b, bob's event2) and the evidence above.");
    v.add("forked.document_digest", forked.document().digest());
    v.add("forked.sync_input", hand_sync_input(&forked_tips, &[&s.evidence]));
    v.add("forked.sync_digest", forked.sync_digest());

    let (a, b, c) = concurrent_events(&s);
    let concurrent = node_with(&s, &[&a, &b, &c]);
    v.comment("");
    v.comment("concurrent: alice (concurrent.alice) and bob (concurrent.bob) each, with no deps, put k2,");
    v.comment("incr c2 (alice +3, bob -1) and add to s2 (alice \"a\"; bob \"b\" and \"a\"); carol");
    v.comment("(concurrent.carol), having seen alice's event only, removes \"a\" from s2. State: k2 has two");
    v.comment(
        "siblings (bob's \"b\", then alice's \"a\": equal lamport, bob's member index is lower), c2 has",
    );
    v.comment(
        "two author totals, and s2 = {a, b}: bob's add of \"a\" is concurrent with the remove and wins.",
    );
    v.add("concurrent.alice", a.encode());
    v.add("concurrent.bob", b.encode());
    v.add("concurrent.carol", c.encode());
    v.add("concurrent.document_state", hand_document_state(&document_state_concurrent(&s, &a, &b)));
    v.add("concurrent.document_digest", concurrent.document().digest());

    let [x1, y1, z1, x2] = context_events(&s);
    let contexts = node_with(&s, &[&x1, &y1, &z1, &x2]);
    v.comment("");
    v.comment(
        "Causal contexts (ops 8 to 11, section 14). context.alice1: alice puts k3 = \"x\" and adds \"e\"",
    );
    v.comment(
        "to s3. context.bob1: bob, on alice1, puts k3 = \"y\" with a context naming alice1 (as a dep).",
    );
    v.comment("context.carol1: carol, with no deps, puts k3 = \"z\" and adds \"e\" to s3. context.alice2:");
    v.comment(
        "alice, seq 2, on alice1, bob1 and carol1: PutSeen k3 = \"w\" naming bob1 (a dep) and her own seq 1,",
    );
    v.comment("RemoveSeen \"e\" from s3 naming her own seq 1, DelSeen k4 with an empty context, and AddSeen");
    v.comment(
        "\"f\" to s3 naming carol1. State: k3 keeps carol's \"z\" (not named, though in the past) beside",
    );
    v.comment("alice's \"w\"; s3 = {e, f}, since carol's add of \"e\" was not named; k4 has no value.");
    v.add("context.alice1", x1.encode());
    v.add("context.bob1", y1.encode());
    v.add("context.carol1", z1.encode());
    v.add("context.alice2", x2.encode());
    v.add("context.document_state", hand_document_state(&document_state_contexts(&s, &z1, &x2)));
    v.add("context.document_digest", contexts.document().digest());

    let m = membership_scenario(&s);
    v.comment("");
    v.comment("Membership changes (section 17). dave (seed.dave) and alice2 (seed.alice2) are new keys.");
    v.add("seed.dave", DAVE_SEED);
    v.add("public.dave", SecretKey::from_seed(&DAVE_SEED).public().0);
    v.add("seed.alice2", ALICE2_SEED);
    v.add("public.alice2", SecretKey::from_seed(&ALICE2_SEED).public().0);
    v.comment("change.add_dave adds dave, named \"dave\", to the genesis membership (base = cluster_id);");
    v.comment("NAME.id = SHA-256(\"cairn/change/v1\" || NAME). With two of the three members' approvals it");
    v.comment("takes effect: membership1.id = SHA-256(\"cairn/membership/v1\" || cluster_id || change.add_dave.id).");
    v.add("change.add_dave", codec::encode_change(&m.add_dave));
    v.add("change.add_dave.id", m.add_dave.id().0);
    v.add("membership1.id", m.membership1.0);
    v.comment("rotation.alice: alice rotates to alice2 in her event of seq 3 (cut 3). No vote: rotations");
    v.comment("name no membership. rotation.alice.message = SHA-256(\"cairn/rotation/v1\" || cluster_id ||");
    v.comment(
        "alice || u64(3) || alice2), which alice2 signs (the proof, the last 64 bytes of the rotation).",
    );
    v.add("rotation.alice.message", m.rotation_message);
    v.add("rotation.alice", codec::encode_rotation(&m.rotate_alice));
    v.comment("change.remove_bob removes bob's seat from membership1 keeping his events up to seq 2.");
    v.add("change.remove_bob", codec::encode_change(&m.remove_bob));
    v.add("change.remove_bob.id", m.remove_bob.id().0);
    let [propose, approve, rotate] = membership_events(&s);
    v.comment("The same changes carried by events (ops 5 to 7, section 5): alice proposes change.add_dave");
    v.comment("(seq 1, no deps), bob approves it (seq 1, on alice's), and alice, having seen the approval,");
    v.comment("rotates to alice2 in her event of seq 2 (a rotation with cut 2). On a replica the three are");
    v.comment("valid, dave is in force (membership1.id) and alice2 holds alice's seat.");
    v.add("membership.propose", propose.encode());
    v.add("membership.approve", approve.encode());
    v.add("membership.rotate", rotate.encode());
    v
}

/// The membership scenario as events: alice's proposal of `change.add_dave`, bob's approval,
/// alice's rotation to alice2 at seq 2.
fn membership_events(s: &Scenario) -> [Event; 3] {
    let m = membership_scenario(s);
    let [alice, bob, _] = s.keys.each_ref();
    let propose =
        Event::sign(alice, 1, 1, vec![], vec![Op::Propose { change: m.add_dave.clone(), round: 0 }]);
    let approve =
        Event::sign(bob, 1, 2, vec![propose.id()], vec![Op::Approve { change: m.add_dave.id(), round: 0 }]);
    let rotation =
        Rotation::new(&s.genesis.cluster_id(), alice.public(), 2, &SecretKey::from_seed(&ALICE2_SEED));
    let rotate = Event::sign(alice, 2, 3, vec![propose.id(), approve.id()], vec![Op::Rotate(rotation)]);
    [propose, approve, rotate]
}

const DAVE_SEED: [u8; 32] = [4; 32];
const ALICE2_SEED: [u8; 32] = [5; 32];

/// Membership ops of the scenario's genesis: dave is added (alice proposes, bob approves: 2 of
/// 3), alice rotates to alice2, and a removal of bob is proposed (not approved, so not in force).
struct MembershipScenario {
    add_dave: Change,
    membership1: MembershipId,
    rotation_message: [u8; 32],
    rotate_alice: Rotation,
    remove_bob: Change,
}

fn membership_scenario(s: &Scenario) -> MembershipScenario {
    let [alice, bob, _] = s.keys.each_ref().map(SecretKey::public);
    let dave = SecretKey::from_seed(&DAVE_SEED).public();
    let alice2 = SecretKey::from_seed(&ALICE2_SEED);
    let event_of = |n: u8| EventId([n; 32]);
    let cluster = s.genesis.cluster_id();
    let mut log = ChangeLog::new(&s.genesis, Policy::Majority);
    let add_dave =
        Change { base: MembershipId(cluster), kind: ChangeKind::Add { key: dave, name: "dave".into() } };
    log.propose(&Proposal {
        change: add_dave.clone(),
        round: 0,
        author: alice,
        seq: 2,
        event: event_of(1),
        seen: 0,
    });
    log.approve(&Approval { change: add_dave.id(), round: 0, author: bob, seq: 2, event: event_of(2) });
    let membership1 = log.resolve().in_force().id();
    let rotate_alice = Rotation::new(&cluster, alice, 3, &alice2);
    log.rotate(&rotate_alice, &alice, 3).expect("alice's own rotation with alice2's proof");
    let resolution = log.resolve();
    assert_eq!(resolution.in_force().id(), membership1, "a rotation changes no membership");
    assert_eq!(resolution.chains().current(&alice), alice2.public());
    let remove_bob = Change { base: membership1, kind: ChangeKind::Remove { seat: bob, key: bob, cut: 2 } };
    MembershipScenario {
        add_dave,
        membership1,
        rotation_message: Rotation::message(&cluster, &alice, 3, &alice2.public()),
        rotate_alice,
        remove_bob,
    }
}

/// A change built by hand from section 17: base, the u32 tag, then the variant's fields.
fn hand_change(change: &Change) -> Vec<u8> {
    let mut out = change.base.0.to_vec();
    match &change.kind {
        ChangeKind::Add { key, name } => {
            out.extend(0u32.to_le_bytes());
            out.extend(key.0);
            put_bytes(&mut out, name.as_bytes());
        }
        ChangeKind::Remove { seat, key, cut } => {
            out.extend(1u32.to_le_bytes());
            out.extend(seat.0);
            out.extend(key.0);
            out.extend(u64_le(*cut));
        }
        ChangeKind::Replace { seat, key, cut, successor } => {
            out.extend(2u32.to_le_bytes());
            out.extend(seat.0);
            out.extend(key.0);
            out.extend(u64_le(*cut));
            out.extend(successor.0);
        }
    }
    out
}

/// A rotation built by hand from section 17: key, cut, successor, proof.
fn hand_rotation(rotation: &Rotation) -> Vec<u8> {
    [&rotation.key.0[..], &u64_le(rotation.cut), &rotation.successor.0, &rotation.proof.0].concat()
}

/// Three concurrent events for the document's harder cases: alice and bob each put `k2`, incr
/// `c2` and add to `s2` with no deps (so concurrently); carol, having seen only alice's, removes
/// `"a"` from `s2`. Returns (alice's, bob's, carol's).
fn concurrent_events(s: &Scenario) -> (Event, Event, Event) {
    let [alice, bob, carol] = &s.keys;
    let a = Event::sign(
        alice,
        1,
        1,
        vec![],
        vec![
            Op::Put { key: bytes("k2"), value: bytes("a") },
            Op::Incr { key: bytes("c2"), delta: 3 },
            Op::Add { key: bytes("s2"), element: bytes("a") },
        ],
    );
    let b = Event::sign(
        bob,
        1,
        1,
        vec![],
        vec![
            Op::Put { key: bytes("k2"), value: bytes("b") },
            Op::Incr { key: bytes("c2"), delta: -1 },
            Op::Add { key: bytes("s2"), element: bytes("b") },
            Op::Add { key: bytes("s2"), element: bytes("a") },
        ],
    );
    let c =
        Event::sign(carol, 1, 2, vec![a.id()], vec![Op::Remove { key: bytes("s2"), element: bytes("a") }]);
    (a, b, c)
}

/// The causal-context scenario: alice1, bob1 (on alice1, naming it), carol1 (no deps), and
/// alice2 (on alice1, bob1 and carol1) with all four context ops.
fn context_events(s: &Scenario) -> [Event; 4] {
    let [alice, bob, carol] = &s.keys;
    let x1 = Event::sign(
        alice,
        1,
        1,
        vec![],
        vec![
            Op::Put { key: bytes("k3"), value: bytes("x") },
            Op::Add { key: bytes("s3"), element: bytes("e") },
        ],
    );
    let named = |events: Vec<EventId>, own: Vec<u64>| Seen { events, own };
    let y1 = Event::sign(
        bob,
        1,
        2,
        vec![x1.id()],
        vec![Op::PutSeen { key: bytes("k3"), value: bytes("y"), seen: named(vec![x1.id()], vec![]) }],
    );
    let z1 = Event::sign(
        carol,
        1,
        1,
        vec![],
        vec![
            Op::Put { key: bytes("k3"), value: bytes("z") },
            Op::Add { key: bytes("s3"), element: bytes("e") },
        ],
    );
    let x2 = Event::sign(
        alice,
        2,
        3,
        vec![x1.id(), y1.id(), z1.id()],
        vec![
            Op::PutSeen { key: bytes("k3"), value: bytes("w"), seen: named(vec![y1.id()], vec![1]) },
            Op::RemoveSeen { key: bytes("s3"), element: bytes("e"), seen: named(vec![], vec![1]) },
            Op::DelSeen { key: bytes("k4"), seen: named(vec![], vec![]) },
            Op::AddSeen { key: bytes("s3"), element: bytes("f"), seen: named(vec![z1.id()], vec![]) },
        ],
    );
    [x1, y1, z1, x2]
}

/// After the context events: k3 has carol's "z" (lamport 1) and alice's "w" (lamport 3); s3 is
/// {e, f}.
fn document_state_contexts<'a>(s: &Scenario, z1: &Event, x2: &Event) -> HandState<'a> {
    let (alice, carol) = (author(s, 0), author(s, 2));
    HandState {
        registers: vec![(
            "k3",
            vec![
                HandSibling { id: z1.id(), op_idx: 0, author: carol, lamport: 1, value: "z" },
                HandSibling { id: x2.id(), op_idx: 0, author: alice, lamport: 3, value: "w" },
            ],
        )],
        counters: vec![],
        sets: vec![("s3", vec!["e", "f"])],
    }
}

/// After the three concurrent events: two siblings of `k2` (sorted by lamport, then author
/// key: bob's, then alice's), a counter with two authors, and a set where bob's add of `"a"`,
/// concurrent with carol's remove, wins.
fn document_state_concurrent<'a>(s: &Scenario, a: &Event, b: &Event) -> HandState<'a> {
    let (alice, bob) = (author(s, 0), author(s, 1));
    let mut siblings = vec![
        HandSibling { id: a.id(), op_idx: 0, author: alice, lamport: 1, value: "a" },
        HandSibling { id: b.id(), op_idx: 0, author: bob, lamport: 1, value: "b" },
    ];
    siblings.sort_by_key(|sibling| (sibling.lamport, sibling.author));
    let mut totals = vec![(alice, 3), (bob, -1)];
    totals.sort();
    HandState {
        registers: vec![("k2", siblings)],
        counters: vec![("c2", totals)],
        sets: vec![("s2", vec!["a", "b"])],
    }
}

fn author(s: &Scenario, seed_idx: usize) -> PublicKey {
    s.keys[seed_idx].public()
}

fn document_state_partial(s: &Scenario) -> HandState<'static> {
    let (alice, bob) = (author(s, 0), author(s, 1));
    HandState {
        registers: vec![(
            "k",
            vec![HandSibling { id: s.event1.id(), op_idx: 0, author: alice, lamport: 1, value: "v" }],
        )],
        counters: vec![("c", vec![(bob, -5)])],
        sets: vec![("s", vec!["x"])],
    }
}

fn document_state_full(s: &Scenario) -> HandState<'static> {
    HandState { registers: vec![], counters: vec![("c", vec![(author(s, 1), -5)])], sets: vec![] }
}

// ---- reading the file -----------------------------------------------------------------------

/// `name = hex` lines of `text`, in order.
fn parse_vectors(text: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for (line_idx, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) =
            line.split_once('=').unwrap_or_else(|| panic!("vectors.txt line {}: no `=`", line_idx + 1));
        let (name, value) = (name.trim(), value.trim());
        let value = hex::decode(value).unwrap_or_else(|err| panic!("vector {name}: not hex: {err}"));
        assert!(!out.iter().any(|(n, _)| n == name), "vector {name} appears twice");
        out.push((name.to_owned(), value));
    }
    out
}

fn write_mode() -> bool {
    std::env::var(WRITE_ENV).as_deref() == Ok("1")
}

/// The vectors of the file; in write mode the computed ones, as the file is being rewritten
/// by another test running at the same time.
fn file_vectors() -> BTreeMap<String, Vec<u8>> {
    if write_mode() {
        let computed = compute();
        return computed.values().into_iter().map(|(n, v)| (n.to_owned(), v.to_vec())).collect();
    }
    parse_vectors(&read(&docs_path("vectors.txt"))).into_iter().collect()
}

// ---- the tests ------------------------------------------------------------------------------

/// Every vector in `docs/vectors.txt` equals the one computed here, and the file holds no
/// other; with `CAIRN_WRITE_VECTORS=1` the file is written instead.
#[test]
fn vectors_file_matches_the_code() {
    let computed = compute();
    let path = docs_path("vectors.txt");
    if write_mode() {
        std::fs::write(&path, computed.render())
            .unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
        eprintln!("wrote {}", path.display());
        return;
    }
    let file = file_vectors();
    let mut mismatches = Vec::new();
    for (name, value) in computed.values() {
        match file.get(name) {
            None => mismatches.push(format!("{name}: missing from the file")),
            Some(found) if found != value => {
                mismatches.push(format!(
                    "{name}: file {} but code {}",
                    hex::encode(found),
                    hex::encode(value)
                ));
            }
            Some(_) => {}
        }
    }
    let names: Vec<&str> = computed.values().iter().map(|(n, _)| *n).collect();
    for name in file.keys() {
        if !names.contains(&name.as_str()) {
            mismatches.push(format!("{name}: in the file but not computed"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "docs/vectors.txt is out of step with the code (regenerate with {WRITE_ENV}=1 only for a \
         deliberate protocol change):\n{}",
        mismatches.join("\n")
    );
}

/// The layouts built by hand from the text of PROTOCOL.md equal the codec's bytes.
#[test]
fn hand_built_layouts_equal_the_codec() {
    let s = scenario();
    assert_eq!(hand_genesis(&s), s.genesis.encode(), "genesis");
    let mut strict = hand_genesis(&s);
    strict.extend(3u32.to_le_bytes());
    assert_eq!(strict, s.genesis.clone().with_threshold(3).unwrap().encode(), "genesis_threshold");
    for (name, event) in
        [("event1", &s.event1), ("event2", &s.event2), ("event3", &s.event3), ("event2b", &s.event2b)]
    {
        assert_eq!(hand_ops(&event.ops), codec::encode_ops(&event.ops), "{name}.ops");
        assert_eq!(hand_header(&event.header), codec::encode_header(&event.header), "{name}.header");
        let mut whole = hand_header(&event.header);
        whole.extend(hand_ops(&event.ops));
        whole.extend(event.sig.0);
        assert_eq!(whole, event.encode(), "{name}");
    }
    let mut evidence = Vec::new();
    for signed in [&s.evidence.first, &s.evidence.second] {
        evidence.extend(hand_header(&signed.header));
        evidence.extend(signed.sig.0);
    }
    assert_eq!(evidence, s.evidence.encode(), "evidence");
    assert!(s.evidence.first.header.id() < s.evidence.second.header.id(), "evidence: smaller id first");

    let partial = document_via_adapter(&s, &[&s.event1, &s.event2]);
    let state = hand_document_state(&document_state_partial(&s));
    assert_eq!(hash(Domain::Document, &state), partial.digest(), "partial.document_digest");
    let full = document_via_adapter(&s, &[&s.event1, &s.event2, &s.event3]);
    let state = hand_document_state(&document_state_full(&s));
    assert_eq!(hash(Domain::Document, &state), full.digest(), "node.document_digest");
    let forked = document_via_adapter(&s, &[&s.event1, &s.event2, &s.event3, &s.event2b]);
    assert_eq!(forked.digest(), partial.digest(), "forked.document_digest equals partial's");
    let (a, b, c) = concurrent_events(&s);
    let concurrent = document_via_adapter(&s, &[&a, &b, &c]);
    let state = hand_document_state(&document_state_concurrent(&s, &a, &b));
    assert_eq!(hash(Domain::Document, &state), concurrent.digest(), "concurrent.document_digest");
    let read = concurrent.register(b"k2");
    assert_eq!(read.siblings.len(), 2, "two siblings");
    let context = context_events(&s);
    for (name, event) in ["alice1", "bob1", "carol1", "alice2"].into_iter().zip(&context) {
        assert_eq!(hand_ops(&event.ops), codec::encode_ops(&event.ops), "context.{name}: the ops");
        let mut hand = hand_header(&event.header);
        hand.extend(hand_ops(&event.ops));
        hand.extend(event.sig.0);
        assert_eq!(hand, event.encode(), "context.{name}");
    }
    let [x1, y1, z1, x2] = &context;
    let with_contexts = document_via_adapter(&s, &[x1, y1, z1, x2]);
    let state = hand_document_state(&document_state_contexts(&s, z1, x2));
    assert_eq!(hash(Domain::Document, &state), with_contexts.digest(), "context.document_digest");
    assert_eq!(with_contexts.set_members(b"s3"), [b"e".to_vec(), b"f".to_vec()], "carol's add stays");
    assert_eq!(concurrent.counter(b"c2"), 2, "3 - 1 over two authors");
    assert_eq!(concurrent.set_members(b"s2"), [b"a".to_vec(), b"b".to_vec()], "the concurrent add wins");

    let mut node = node_with(&s, &[&s.event1, &s.event2, &s.event3]);
    let tips = node.adapter().tips();
    assert_eq!(tips.len(), 2);
    assert_eq!(
        hash(Domain::SyncDigest, &hand_sync_input(&tips, &[])),
        node.sync_digest(),
        "node.sync_digest"
    );
    let mut tips_message = 2u32.to_le_bytes().to_vec();
    tips_message.extend([1, 0]);
    tips_message.extend(u64_le(3));
    hand_tips(&mut tips_message, &tips);
    tips_message.extend(u64_le(1));
    tips_message.extend(s.evidence.encode());
    let message =
        Message::Tips { reply: true, more: false, heard: 3, tips, evidence: vec![s.evidence.clone()] };
    assert_eq!(tips_message, codec::encode_message(&message), "message.tips");

    let m = membership_scenario(&s);
    for (name, change) in [("add_dave", &m.add_dave), ("remove_bob", &m.remove_bob)] {
        assert_eq!(hand_change(change), codec::encode_change(change), "change.{name}");
    }
    let events = membership_events(&s);
    for (name, event) in ["propose", "approve", "rotate"].into_iter().zip(&events) {
        assert_eq!(hand_ops(&event.ops), codec::encode_ops(&event.ops), "membership.{name}: the ops");
        let mut hand = hand_header(&event.header);
        hand.extend(hand_ops(&event.ops));
        hand.extend(event.sig.0);
        assert_eq!(hand, event.encode(), "membership.{name}");
    }
    // On a replica: valid, and they do what the comments of vectors.txt say.
    let mut adapter = Adapter::new(s.genesis.clone(), AdapterConfig::default());
    let out = adapter.ingest(PublicKey([9; 32]), events.iter().map(Event::encode).collect());
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    assert_eq!(adapter.membership().in_force().id(), m.membership1, "membership.*: dave is in force");
    let alice2 = SecretKey::from_seed(&ALICE2_SEED).public();
    assert_eq!(
        adapter.membership().chains().current(&s.keys[0].public()),
        alice2,
        "alice2 holds alice's seat"
    );
    assert_eq!(hand_rotation(&m.rotate_alice), codec::encode_rotation(&m.rotate_alice), "rotation.alice");
    let chained = |base: &MembershipId, change: &Change| {
        hash(Domain::Membership, &[&base.0[..], &change.id().0[..]].concat())
    };
    assert_eq!(
        chained(&MembershipId(s.genesis.cluster_id()), &m.add_dave),
        m.membership1.0,
        "membership1.id"
    );
    let alice = s.keys[0].public();
    let mut pre_image = s.genesis.cluster_id().to_vec();
    pre_image.extend(alice.0);
    pre_image.extend(u64_le(3));
    pre_image.extend(SecretKey::from_seed(&ALICE2_SEED).public().0);
    assert_eq!(hash(Domain::Rotation, &pre_image), m.rotation_message, "rotation.alice.message");
}

/// Every value of the file decodes back into what it names and re-encodes to the same bytes;
/// ids, hashes and signatures follow from the other values as PROTOCOL.md says.
#[test]
fn vectors_decode_back() {
    let file = file_vectors();
    let get = |name: &str| file.get(name).unwrap_or_else(|| panic!("vector {name} is missing")).clone();
    let genesis = codec::decode_genesis(&get("genesis")).expect("genesis decodes");
    assert_eq!(genesis.encode(), get("genesis"), "genesis");
    assert_eq!(hash(Domain::Cluster, &get("genesis")), get("cluster_id")[..], "cluster_id");
    let strict = codec::decode_genesis(&get("genesis_threshold")).expect("genesis_threshold decodes");
    assert_eq!(strict.threshold(), Some(3));
    assert_eq!(strict.members(), genesis.members());
    assert_eq!(strict.encode(), get("genesis_threshold"), "genesis_threshold");
    assert_eq!(
        hash(Domain::Cluster, &get("genesis_threshold")),
        get("cluster_id_threshold")[..],
        "cluster_id_threshold"
    );
    for name in NAMES {
        let seed: [u8; 32] = get(&format!("seed.{name}")).try_into().expect("a seed is 32 bytes");
        let public = SecretKey::from_seed(&seed).public();
        assert_eq!(public.0[..], get(&format!("public.{name}"))[..], "public.{name}");
        let member = genesis.members().iter().find(|m| m.key == public).expect("every key is a member");
        assert_eq!(member.name, name, "genesis name of public.{name}");
    }
    let mut events = Vec::new();
    for name in ["event1", "event2", "event3", "event2b"] {
        let whole = get(name);
        let event = codec::decode_event(&whole).unwrap_or_else(|err| panic!("{name} does not decode: {err}"));
        assert_eq!(event.encode(), whole, "{name}");
        let (header, ops) = (get(&format!("{name}.header")), get(&format!("{name}.ops")));
        let sig = get(&format!("{name}.sig"));
        assert_eq!([&header[..], &ops[..], &sig[..]].concat(), whole, "{name} = header || ops || sig");
        assert_eq!(hash(Domain::Ops, &ops), get(&format!("{name}.ops_hash"))[..], "{name}.ops_hash");
        assert_eq!(ops_hash(&event.ops), event.header.ops_hash, "{name}: header's ops_hash");
        let id = hash(Domain::Event, &header);
        assert_eq!(id[..], get(&format!("{name}.id"))[..], "{name}.id");
        assert_eq!(event.id().0, id, "{name}.id");
        assert!(verify_strict(&event.header.author, &id, &event.sig), "{name}.sig verifies");
        events.push(event);
    }
    let evidence = codec::decode_evidence(&get("evidence")).expect("evidence decodes");
    assert_eq!(evidence.encode(), get("evidence"), "evidence");
    evidence.verify(&cairn_protocol::Roster::new(&genesis)).expect("the evidence verifies");
    let (a, b) = evidence.ids();
    let mut named = [a, b];
    named.sort();
    let mut expected = [events[2].id(), events[3].id()];
    expected.sort();
    assert_eq!(named, expected, "evidence names event3 and event2b");

    // The four events are valid, and the adapter finds the same evidence.
    let mut adapter = Adapter::new(genesis.clone(), AdapterConfig::default());
    let ingested = adapter.ingest(genesis.members()[0].key, events.iter().map(Event::encode).collect());
    assert!(ingested.rejected.is_empty(), "{:?}", ingested.rejected);
    assert_eq!(ingested.accepted.len(), 4);
    assert_eq!(ingested.evidence, vec![evidence.clone()], "the adapter's evidence");

    for (name, value) in &file {
        let Some(kind) = name.strip_prefix("message.") else { continue };
        let message =
            codec::decode_message(value).unwrap_or_else(|err| panic!("{name} does not decode: {err}"));
        assert_eq!(message.kind(), kind, "{name}: tag");
        assert_eq!(codec::encode_message(&message), *value, "{name}");
        if let Message::Tips { tips, evidence: list, .. } = &message {
            assert_eq!(tips.len(), 2, "{name}: two tips");
            assert_eq!(list, &vec![evidence.clone()], "{name}: the evidence");
        }
    }
    for prefix in ["partial.document", "node.document"] {
        let digest = hash(Domain::Document, &get(&format!("{prefix}_state")));
        assert_eq!(digest[..], get(&format!("{prefix}_digest"))[..], "{prefix}_digest");
    }
    for prefix in ["node", "forked"] {
        let digest = hash(Domain::SyncDigest, &get(&format!("{prefix}.sync_input")));
        assert_eq!(digest[..], get(&format!("{prefix}.sync_digest"))[..], "{prefix}.sync_digest");
    }
    assert_eq!(get("forked.document_digest"), get("partial.document_digest"), "forked.document_digest");

    // The membership changes decode, their ids and the memberships' ids follow, and alice2's
    // proof verifies over the rotation message.
    for name in ["add_dave", "remove_bob"] {
        let bytes = get(&format!("change.{name}"));
        let change = codec::decode_change(&bytes).unwrap_or_else(|err| panic!("change.{name}: {err}"));
        assert_eq!(codec::encode_change(&change), bytes, "change.{name}");
        assert_eq!(
            hash(Domain::Change, &bytes)[..],
            get(&format!("change.{name}.id"))[..],
            "change.{name}.id"
        );
    }
    let membership1 = hash(Domain::Membership, &[get("cluster_id"), get("change.add_dave.id")].concat());
    assert_eq!(membership1[..], get("membership1.id")[..], "membership1.id");
    let rotation = codec::decode_rotation(&get("rotation.alice")).expect("rotation.alice decodes");
    assert_eq!(codec::encode_rotation(&rotation), get("rotation.alice"), "rotation.alice");
    assert_eq!(rotation.successor.0[..], get("public.alice2")[..], "the successor is alice2");
    assert!(
        verify_strict(&rotation.successor, &get("rotation.alice.message"), &rotation.proof),
        "alice2's proof"
    );
    let cluster: [u8; 32] = get("cluster_id").try_into().expect("a cluster id is 32 bytes");
    assert!(rotation.verify(&cluster), "the proof is over the message section 17 names");

    // The events that carry them are valid on a replica of the genesis, in this order.
    let events: Vec<Vec<u8>> =
        ["propose", "approve", "rotate"].map(|n| get(&format!("membership.{n}"))).into();
    let mut adapter = Adapter::new(genesis, AdapterConfig::default());
    let out = adapter.ingest(PublicKey([9; 32]), events);
    assert!(out.rejected.is_empty(), "membership.*: {:?}", out.rejected);
    assert_eq!(adapter.membership().in_force().id().0[..], get("membership1.id")[..], "membership.*");
}

/// The title of a Markdown heading line without its `#`s and section number, if it is one.
fn heading_title(line: &str) -> Option<&str> {
    let title = line.trim().strip_prefix('#')?.trim_start_matches('#').trim();
    let unnumbered = title.split_once(". ").filter(|(n, _)| n.chars().all(|c| c.is_ascii_digit()));
    Some(unnumbered.map_or(title, |(_, rest)| rest))
}

/// The rows of the first table under the heading titled `title` (any level, section number
/// ignored) of PROTOCOL.md whose first cell is a backquoted name: `(name, second cell)`.
fn table_rows(title: &str) -> Vec<(String, String)> {
    let text = read(&docs_path("PROTOCOL.md"));
    let start = text
        .lines()
        .position(|l| heading_title(l) == Some(title))
        .unwrap_or_else(|| panic!("no heading `{title}` in PROTOCOL.md"));
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in text.lines().skip(start + 1) {
        let line = line.trim();
        if line.starts_with('#') && !in_table {
            break;
        }
        if !line.starts_with('|') {
            if in_table {
                break;
            }
            continue;
        }
        in_table = true;
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let Some(name) = cells.first().and_then(|c| c.strip_prefix('`')).and_then(|c| c.strip_suffix('`'))
        else {
            continue;
        };
        rows.push((name.to_owned(), cells.get(1).copied().unwrap_or_default().to_owned()));
    }
    assert!(!rows.is_empty(), "no table rows under `{title}` in PROTOCOL.md");
    rows
}

/// Checks that `rows` and `expected` list the same names with the same values, in order, and
/// names each row that differs.
fn check_table(what: &str, rows: &[(String, String)], expected: &[(&str, String)]) {
    let found: Vec<(&str, &str)> = rows.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let expected: Vec<(&str, &str)> = expected.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let mut differences = Vec::new();
    for idx in 0..found.len().max(expected.len()) {
        match (found.get(idx), expected.get(idx)) {
            (Some(f), Some(e)) if f == e => {}
            (f, e) => differences.push(format!("row {}: PROTOCOL.md has {f:?}, the code {e:?}", idx + 1)),
        }
    }
    assert!(
        differences.is_empty(),
        "the {what} table of PROTOCOL.md is out of step with the code:\n{}",
        differences.join("\n")
    );
}

/// The limits table of PROTOCOL.md lists every constant of `cairn_protocol::limits`, in source
/// order, with its value.
#[test]
fn limits_table_matches_the_constants() {
    let expected: Vec<(&str, usize)> = vec![
        ("MEMBERS_MAX", limits::MEMBERS_MAX),
        ("MEMBER_NAME_BYTES_MAX", limits::MEMBER_NAME_BYTES_MAX),
        ("GENESIS_BYTES_MAX", limits::GENESIS_BYTES_MAX),
        ("CHANGE_BYTES_MAX", limits::CHANGE_BYTES_MAX),
        ("ROTATION_BYTES", limits::ROTATION_BYTES),
        ("VOTES_PER_SEAT_ROUND_MAX", limits::VOTES_PER_SEAT_ROUND_MAX),
        ("DEPS_MAX", limits::DEPS_MAX),
        ("OPS_MAX", limits::OPS_MAX),
        ("SEEN_EVENTS_MAX", limits::SEEN_EVENTS_MAX),
        ("SEEN_OWN_MAX", limits::SEEN_OWN_MAX),
        ("KEY_BYTES_MAX", limits::KEY_BYTES_MAX),
        ("VALUE_BYTES_MAX", limits::VALUE_BYTES_MAX),
        ("EVENT_BYTES_MAX", limits::EVENT_BYTES_MAX),
        ("HEADER_BYTES_MAX", limits::HEADER_BYTES_MAX),
        ("EVIDENCE_BYTES_MAX", limits::EVIDENCE_BYTES_MAX),
        ("MESSAGE_BYTES_MAX", limits::MESSAGE_BYTES_MAX),
        ("EVENTS_PER_MESSAGE_MAX", limits::EVENTS_PER_MESSAGE_MAX),
        ("TIPS_PER_MESSAGE_MAX", limits::TIPS_PER_MESSAGE_MAX),
        ("EVIDENCE_PER_MESSAGE_MAX", limits::EVIDENCE_PER_MESSAGE_MAX),
        ("WANT_IDS_MAX", limits::WANT_IDS_MAX),
        ("ADDR_RECORDS_PER_MESSAGE_MAX", limits::ADDR_RECORDS_PER_MESSAGE_MAX),
        ("ADDRS_PER_RECORD_MAX", limits::ADDRS_PER_RECORD_MAX),
        ("ADDR_TEXT_BYTES_MAX", limits::ADDR_TEXT_BYTES_MAX),
        ("FORK_PROBE_SEQS_MAX", limits::FORK_PROBE_SEQS_MAX),
    ];
    // The list above must name every constant of the module, so a new limit cannot be missed.
    let source: PathBuf = [env!("CARGO_MANIFEST_DIR"), "src", "limits.rs"].iter().collect();
    let declared: Vec<String> = read(&source)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .map(|rest| rest.split(':').next().unwrap_or_default().trim().to_owned())
        .collect();
    let listed: Vec<String> = expected.iter().map(|(n, _)| (*n).to_owned()).collect();
    assert_eq!(declared, listed, "protocol/src/limits.rs has constants this test does not list");
    let expected: Vec<(&str, String)> = expected.into_iter().map(|(n, v)| (n, v.to_string())).collect();
    check_table("limits", &table_rows("Limits"), &expected);
}

/// The domain table of PROTOCOL.md lists `cairn_crypto::Domain::ALL` in order, each with its
/// string.
#[test]
fn domain_table_matches_the_code() {
    let expected: Vec<(String, String)> = Domain::ALL
        .iter()
        .map(|d| (format!("{d:?}"), String::from_utf8_lossy(d.prefix()).into_owned()))
        .collect();
    let rows = table_rows("Domain strings");
    let found: Vec<(String, String)> =
        rows.into_iter().map(|(name, string)| (name, string.trim_matches('`').to_owned())).collect();
    assert_eq!(
        found, expected,
        "the domain table of PROTOCOL.md is out of step with cairn_crypto::Domain::ALL"
    );
}

/// The node settings tables of PROTOCOL.md give the defaults of `NodeConfig` and
/// `AdapterConfig`, and the node's constants, as the code has them.
#[test]
fn node_settings_tables_match_the_defaults() {
    let node = NodeConfig::default();
    let adapter = AdapterConfig::default();
    let expected: Vec<(&str, String)> = vec![
        ("sync_interval_ms", node.sync_interval_ms.to_string()),
        ("session_timeout_ms", node.session_timeout_ms.to_string()),
        ("want_interval_ms", node.want_interval_ms.to_string()),
        ("peer_queue_ids_max", node.peer_queue_ids_max.to_string()),
        ("peer_queue_messages_max", node.peer_queue_messages_max.to_string()),
        ("graft_timeout_ms", node.graft_timeout_ms.to_string()),
        ("have_interval_ms", node.have_interval_ms.to_string()),
        ("peer_events_per_sec", node.peer_events_per_sec.to_string()),
        ("peer_events_burst", node.peer_events_burst.to_string()),
        ("peer_tips_max", node.peer_tips_max.to_string()),
        ("fork_searches_max", node.fork_searches_max.to_string()),
        ("own_seq_peers_needed", node.own_seq_peers_needed.to_string()),
        ("adapter.buffer_bytes_per_peer_max", adapter.buffer_bytes_per_peer_max.to_string()),
        ("adapter.buffer_bytes_total_max", adapter.buffer_bytes_total_max.to_string()),
        ("adapter.verify_threads", adapter.verify_threads.to_string()),
    ];
    check_table("node settings", &table_rows("Node settings"), &expected);
    let constants: Vec<(&str, String)> = vec![
        ("FORK_PROBE_SEQS_PER_ROUND", FORK_PROBE_SEQS_PER_ROUND.to_string()),
        ("WANT_PERIODIC_IDS_MAX", WANT_PERIODIC_IDS_MAX.to_string()),
        ("AWAITED_IDS_MAX", node::AWAITED_IDS_MAX.to_string()),
        ("AWAITED_PER_PEER_MAX", node::AWAITED_PER_PEER_MAX.to_string()),
        ("ANNOUNCERS_PER_ID_MAX", node::ANNOUNCERS_PER_ID_MAX.to_string()),
        ("LAZY_QUEUE_IDS_MAX", node::LAZY_QUEUE_IDS_MAX.to_string()),
        ("ADDR_RECORD_INTERVAL_MS", node::ADDR_RECORD_INTERVAL_MS.to_string()),
        ("EVENTS_CHUNK_BYTES", EVENTS_CHUNK_BYTES.to_string()),
        ("BUFFER_ENTRY_OVERHEAD_BYTES", cairn_protocol::buffer::BUFFER_ENTRY_OVERHEAD_BYTES.to_string()),
        ("VERIFY_THREADS_MAX", cairn_crypto::verify::VERIFY_THREADS_MAX.to_string()),
        ("VERIFY_CHUNK_MIN", cairn_crypto::verify::VERIFY_CHUNK_MIN.to_string()),
        ("PAST_RESOLUTIONS_CACHED_MAX", cairn_protocol::PAST_RESOLUTIONS_CACHED_MAX.to_string()),
        ("REACH_MEMO_MAX", cairn_protocol::adapter::REACH_MEMO_MAX.to_string()),
    ];
    check_table("node constants", &table_rows("Node constants"), &constants);
}
