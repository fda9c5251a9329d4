//! The bodies of Cairn's fuzz targets: one function per decoder or parser of untrusted input,
//! each asserting what must hold for every input. The cargo-fuzz project in `fuzz/` calls them
//! under libFuzzer for the long runs; `tests/tests/fuzz.rs` replays the seed corpus, the
//! regression files and a bounded, seeded run of [`mutate`] under `cargo test`.
//! `docs/FUZZING.md` lists the targets and how to run them.
//!
//! Every target must not panic. Beyond that:
//!
//! - [`event`], [`evidence`], [`message`], and the binary half of [`genesis`]: a successful
//!   decode came from at most the object's byte limit, every count and length in it is within
//!   `cairn_protocol::limits`, and it re-encodes to exactly the input (one encoding per
//!   object). Events also go through an adapter, whose verdict must agree with the codec;
//!   evidence is verified against a genesis.
//! - [`genesis`]: the TOML parser and the renderer agree with each other and with the codec.
//! - [`config`]: the node config parser returns a config that passes its own checks, or an
//!   error that says where (a TOML line, or a field name).
//! - [`api_body`]: the API's write bodies become ops within the protocol limits, or a 400
//!   answer with a code and a message.

use std::sync::OnceLock;

use cairn_crypto::SecretKey;
use cairn_daemon::api::{WriteRoute, write_body_ops};
use cairn_daemon::config::{Config, parse_genesis, render_genesis};
use cairn_protocol::codec::{
    decode_event, decode_evidence, decode_genesis, decode_message, encode_event, encode_evidence,
    encode_genesis, encode_header, encode_message, message_len,
};
use cairn_protocol::limits::{
    DEPS_MAX, EVENT_BYTES_MAX, EVENTS_PER_MESSAGE_MAX, EVIDENCE_BYTES_MAX, EVIDENCE_PER_MESSAGE_MAX,
    FORK_PROBE_SEQS_MAX, GENESIS_BYTES_MAX, KEY_BYTES_MAX, MEMBER_NAME_BYTES_MAX, MEMBERS_MAX,
    MESSAGE_BYTES_MAX, OPS_MAX, TIPS_PER_MESSAGE_MAX, VALUE_BYTES_MAX,
};
use cairn_protocol::{
    Adapter, AdapterConfig, Evidence, Genesis, Header, Member, Message, Node, Op, PeerId, Reject,
};

use crate::sim::Rng;

/// A fuzz target: takes any bytes, panics if a property fails.
pub type Target = fn(&[u8]);

/// Every target by name; the names are those of `fuzz/fuzz_targets/*.rs` and of the corpus and
/// regression directories.
pub const TARGETS: [(&str, Target); 6] = [
    ("event", event),
    ("evidence", evidence),
    ("message", message),
    ("genesis", genesis),
    ("config", config),
    ("api_body", api_body),
];

/// The genesis of `docs/vectors.txt`: alice, bob and carol with the seeds 0x01…, 0x02…, 0x03….
fn vectors_genesis() -> &'static Genesis {
    static GENESIS: OnceLock<Genesis> = OnceLock::new();
    GENESIS.get_or_init(|| {
        let members = ["alice", "bob", "carol"]
            .iter()
            .zip(1u8..)
            .map(|(name, seed)| Member {
                key: SecretKey::from_seed(&[seed; 32]).public(),
                name: (*name).into(),
            })
            .collect();
        Genesis::new(members).expect("the vectors' genesis is valid")
    })
}

fn check_header(header: &Header) {
    assert!(header.deps.len() <= DEPS_MAX, "{} deps", header.deps.len());
}

fn check_op(op: &Op) {
    assert!(op.key().len() <= KEY_BYTES_MAX, "a key of {} bytes", op.key().len());
    let value = match op {
        Op::Propose { change, .. } => cairn_protocol::codec::encode_change(change).len(),
        op => op.payload().map_or(0, <[u8]>::len),
    };
    assert!(value <= VALUE_BYTES_MAX, "a value of {value} bytes");
    if let Some(seen) = op.seen() {
        assert!(
            seen.events.len() <= cairn_protocol::limits::SEEN_EVENTS_MAX,
            "{} named events",
            seen.events.len()
        );
        assert!(seen.own.len() <= cairn_protocol::limits::SEEN_OWN_MAX, "{} named own seqs", seen.own.len());
    }
}

fn check_evidence(evidence: &Evidence) {
    check_header(&evidence.first.header);
    check_header(&evidence.second.header);
    let encoded = encode_evidence(evidence);
    assert!(encoded.len() <= EVIDENCE_BYTES_MAX, "evidence of {} bytes", encoded.len());
    assert_eq!(decode_evidence(&encoded).as_ref(), Ok(evidence), "evidence in a message is canonical");
    let verdict = evidence.verify(&cairn_protocol::Roster::new(vectors_genesis()));
    if verdict.is_ok() {
        let (a, b) = evidence.ids();
        assert!(a < b);
        assert_eq!(evidence.first.header.author, evidence.second.header.author);
        assert_eq!(evidence.first.header.seq, evidence.second.header.seq);
    }
    // The adapter verifies what it keeps exactly as `verify` does.
    let mut adapter = Adapter::new(vectors_genesis().clone(), AdapterConfig::default());
    assert_eq!(adapter.add_evidence(evidence.clone()).is_ok(), verdict.is_ok());
}

/// Event bytes from a peer: `decode_event`, then an adapter's `ingest`, whose verdict must agree.
pub fn event(data: &[u8]) {
    let decoded = decode_event(data);
    if let Ok(event) = &decoded {
        assert!(data.len() <= EVENT_BYTES_MAX);
        assert_eq!(encode_event(event), data, "a decoded event re-encodes to its input");
        assert!(data.starts_with(&encode_header(&event.header)), "the header leads the event");
        check_header(&event.header);
        assert!(event.ops.len() <= OPS_MAX, "{} ops", event.ops.len());
        event.ops.iter().for_each(check_op);
    }
    let mut adapter = Adapter::new(vectors_genesis().clone(), AdapterConfig::default());
    let from: PeerId = SecretKey::from_seed(&[9; 32]).public();
    let ingested = adapter.ingest(from, vec![data.to_vec()]);
    let outcomes = ingested.accepted.len() + ingested.rejected.len() + ingested.n_buffered;
    assert_eq!(outcomes, 1, "one event, one outcome: {ingested:?}");
    match (&decoded, ingested.rejected.first()) {
        (Err(_), Some(rejection)) => {
            assert_eq!(rejection.id, None);
            assert!(matches!(
                rejection.reason,
                Reject::Oversize | Reject::Malformed | Reject::TrailingBytes | Reject::NonCanonical
            ));
        }
        (Err(e), None) => panic!("the adapter took bytes the codec refuses ({e})"),
        (Ok(event), Some(rejection)) => assert_eq!(rejection.id, Some(event.id())),
        (Ok(event), None) => {
            if let Some(accepted) = ingested.accepted.first() {
                assert_eq!(accepted.id(), event.id());
            }
        }
    }
}

/// Evidence bytes: `decode_evidence`, then `Evidence::verify` and an adapter's `add_evidence`.
pub fn evidence(data: &[u8]) {
    let Ok(evidence) = decode_evidence(data) else { return };
    assert!(data.len() <= EVIDENCE_BYTES_MAX);
    assert_eq!(encode_evidence(&evidence), data, "decoded evidence re-encodes to its input");
    check_evidence(&evidence);
}

/// A reconciliation message: `decode_message`, then every event entry through `decode_event`.
pub fn message(data: &[u8]) {
    let Ok(message) = decode_message(data) else { return };
    assert!(data.len() <= MESSAGE_BYTES_MAX);
    assert_eq!(encode_message(&message), data, "a decoded message re-encodes to its input");
    assert_eq!(message_len(&message), data.len());
    assert!(!message.kind().is_empty());
    match &message {
        Message::Summary { .. } | Message::InSync { .. } | Message::WantChain { .. } | Message::Prune => {}
        Message::Have { ids } | Message::Graft { ids } => {
            assert!(ids.len() <= cairn_protocol::limits::WANT_IDS_MAX);
        }
        Message::Addrs { records } => {
            assert!(records.len() <= cairn_protocol::limits::ADDR_RECORDS_PER_MESSAGE_MAX);
            for record in records {
                assert!(record.addrs.len() <= cairn_protocol::limits::ADDRS_PER_RECORD_MAX);
                // Whatever it holds, checking it answers without panicking.
                let _ = record.verify(&[0; 32]);
            }
        }
        Message::Tips { tips, evidence, .. } => {
            assert!(tips.len() <= TIPS_PER_MESSAGE_MAX);
            assert!(evidence.len() <= EVIDENCE_PER_MESSAGE_MAX);
            evidence.iter().for_each(check_evidence);
        }
        Message::Events { events } => {
            assert!(events.len() <= EVENTS_PER_MESSAGE_MAX);
            for bytes in events {
                assert!(bytes.len() <= EVENT_BYTES_MAX);
                if let Ok(event) = decode_event(bytes) {
                    assert_eq!(&encode_event(&event), bytes);
                }
            }
        }
        Message::Want { ids } => assert!(ids.len() <= cairn_protocol::limits::WANT_IDS_MAX),
        Message::ForkProbe { seqs, .. } => assert!(seqs.len() <= FORK_PROBE_SEQS_MAX),
        Message::ForkIds { entries, .. } => assert!(entries.len() <= FORK_PROBE_SEQS_MAX),
        Message::Evidence { evidence } => {
            assert!(evidence.len() <= EVIDENCE_PER_MESSAGE_MAX);
            evidence.iter().for_each(check_evidence);
        }
    }
}

fn check_genesis(genesis: &Genesis) {
    let members = genesis.members();
    assert!((1..=MEMBERS_MAX).contains(&members.len()));
    assert!(members.windows(2).all(|pair| pair[0].key < pair[1].key), "members sorted by unique key");
    for member in members {
        let name = &member.name;
        assert!((1..=MEMBER_NAME_BYTES_MAX).contains(&name.len()) && !name.chars().any(char::is_control));
    }
    let encoded = encode_genesis(genesis);
    assert!(encoded.len() <= GENESIS_BYTES_MAX);
    assert_eq!(decode_genesis(&encoded).as_ref(), Ok(genesis), "a genesis decodes from its encoding");
    let rendered = render_genesis(genesis);
    match parse_genesis(&rendered) {
        Ok(parsed) => assert_eq!(&parsed, genesis, "a rendered genesis parses back to itself"),
        Err(e) => panic!("a rendered genesis does not parse: {e:#}\n{rendered}"),
    }
}

/// Genesis bytes through `decode_genesis`, and the same input as genesis TOML through
/// `parse_genesis`; what either accepts must survive rendering to TOML and encoding.
pub fn genesis(data: &[u8]) {
    if let Ok(genesis) = decode_genesis(data) {
        assert!(data.len() <= GENESIS_BYTES_MAX);
        assert_eq!(encode_genesis(&genesis), data, "a decoded genesis re-encodes to its input");
        check_genesis(&genesis);
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_genesis(text) {
        Ok(genesis) => check_genesis(&genesis),
        Err(e) => assert!(!format!("{e:#}").is_empty()),
    }
}

/// The config's top-level fields and sections: an error from the checks names one of them.
const CONFIG_FIELDS: [&str; 11] = [
    "key_file",
    "genesis_file",
    "listen",
    "data_dir",
    "socket",
    "log_level",
    "new_cluster",
    "peers",
    "limits",
    "timing",
    "unknown field",
];

/// The node's config TOML through `Config::parse`: a config that passes its checks, or an error
/// that names a TOML line or a field.
pub fn config(data: &[u8]) {
    // `Config::load` reads the file as UTF-8 text and names the file when it is not.
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text) {
        Ok(config) => {
            for own_history in
                [cairn_daemon::store::OwnHistory::Unknown, config.new_store_own_history(vectors_genesis())]
            {
                let node = config.node_config(vectors_genesis(), own_history);
                assert!(node.adapter.verify_threads >= 1);
                assert!(node.adapter.buffer_bytes_per_peer_max <= node.adapter.buffer_bytes_total_max);
                assert!(
                    node.sync_interval_ms > 0 && node.session_timeout_ms > 0 && node.want_interval_ms > 0
                );
            }
            assert!(config.timing.reconnect_backoff_min <= config.timing.reconnect_backoff_max);
            assert!(config.peers.iter().all(|p| p.name.is_some() != p.key.is_some()));
            let _ = config.store_path();
        }
        Err(e) => {
            let message = format!("{e:#}");
            assert!(
                message.contains("at line ") || CONFIG_FIELDS.iter().any(|field| message.contains(field)),
                "a config error names neither a line nor a field: {message}"
            );
        }
    }
}

/// The write routes in the order of the first input byte of [`api_body`].
const WRITE_ROUTES: [WriteRoute; 5] = [
    WriteRoute::PutRegister,
    WriteRoute::IncrCounter,
    WriteRoute::AddToSet,
    WriteRoute::RemoveFromSet,
    WriteRoute::Batch,
];

/// The key in the path of [`api_body`]'s single-op routes.
const API_KEY: &str = "k";

/// A write request's JSON body through the API's parsing and checks (`write_body_ops`). The
/// first byte picks the route, `(byte - b'0') % 5`: `0` put, `1` incr, `2` add, `3` remove,
/// `4` batch; the rest is the body. The key in the path is `k`.
pub fn api_body(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else { return };
    let route = WRITE_ROUTES[usize::from(selector.wrapping_sub(b'0')) % WRITE_ROUTES.len()];
    match write_body_ops(route, API_KEY.to_owned(), body) {
        Ok(ops) => {
            assert!((1..=OPS_MAX).contains(&ops.len()), "{} ops", ops.len());
            for op in &ops {
                assert!(!op.key().is_empty());
                check_op(op);
            }
            if route != WriteRoute::Batch {
                assert_eq!(ops.len(), 1);
                assert_eq!(ops[0].key(), API_KEY.as_bytes());
                let kind_fits = matches!(
                    (route, &ops[0]),
                    (WriteRoute::PutRegister, Op::Put { .. })
                        | (WriteRoute::IncrCounter, Op::Incr { .. })
                        | (WriteRoute::AddToSet, Op::Add { .. })
                        | (WriteRoute::RemoveFromSet, Op::Remove { .. })
                );
                assert!(kind_fits, "{route:?} made {:?}", ops[0]);
            }
            // The service checks the size of the whole event; it may refuse, never panic.
            let _ = Node::check_ops(&ops);
        }
        Err((status, code, message)) => {
            assert_eq!(status, 400, "{code}: {message}");
            assert!(!code.is_empty() && !message.is_empty());
        }
    }
}

/// Tokens the mutator inserts into text inputs (TOML and JSON), separated by spaces.
const TOKENS: &str = r#"" ' { } [ ] [[ = : , \u \ null -1 18446744073709551616 """ é"#;

/// Lengths worth writing into a length field: around 0, around the protocol's limits, and huge.
const LENGTHS: [u64; 12] = [
    0,
    1,
    2,
    32,
    MEMBERS_MAX as u64,
    DEPS_MAX as u64 + 1,
    OPS_MAX as u64 + 1,
    KEY_BYTES_MAX as u64 + 1,
    VALUE_BYTES_MAX as u64 + 1,
    EVENT_BYTES_MAX as u64 + 1,
    u32::MAX as u64,
    u64::MAX,
];

/// One to four random edits of `input`: bit flips, byte overwrites, truncation, deletion,
/// duplication, insertion of random bytes or text tokens, splices with `other`, and length-field
/// edits (a little-endian u64 overwritten with a length near a limit, or one more or less).
/// The output is a function of the rng's state and the inputs, so a seed replays.
pub fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.range(1, 5) {
        let len = out.len();
        let at = |rng: &mut Rng| rng.index(len + 1);
        match rng.below(10) {
            0 if len > 0 => {
                let i = rng.index(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.index(len);
                let random = rng.next_u64() as u8;
                out[i] = *rng.pick(&[0, 1, 0x7f, 0x80, 0xff, b'0', b'a', random]);
            }
            2 => out.truncate(at(rng)),
            3 if len > 0 => {
                let start = rng.index(len);
                let end = (start + 1 + rng.index(16)).min(len);
                out.drain(start..end);
            }
            4 if len > 0 => {
                let start = rng.index(len);
                let end = (start + 1 + rng.index(64)).min(len);
                let copy = out[start..end].to_vec();
                let to = at(rng);
                out.splice(to..to, copy);
            }
            5 => {
                let n = 1 + rng.index(8);
                let bytes = rng.bytes(n);
                let to = at(rng);
                out.splice(to..to, bytes);
            }
            6 => {
                let tokens: Vec<&str> = TOKENS.split(' ').chain(["\n"]).collect();
                let token = rng.pick(&tokens).as_bytes();
                let to = at(rng);
                out.splice(to..to, token.iter().copied());
            }
            7 if !other.is_empty() => {
                let cut = at(rng);
                let from = rng.index(other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            8 | 9 if len >= 8 => {
                let i = rng.index(len - 7);
                let old = u64::from_le_bytes(out[i..i + 8].try_into().expect("8 bytes"));
                let new = match rng.below(3) {
                    0 => *rng.pick(&LENGTHS),
                    1 => old.wrapping_add(1),
                    _ => old.wrapping_sub(1),
                };
                out[i..i + 8].copy_from_slice(&new.to_le_bytes());
            }
            _ => {
                let i = at(rng);
                out.insert(i, rng.next_u64() as u8);
            }
        }
    }
    out
}
