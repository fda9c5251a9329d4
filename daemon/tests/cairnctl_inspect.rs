//! End-to-end tests of the `cairnctl` binary without a daemon: `inspect event` and
//! `inspect evidence` on files written here, with and without a genesis (every rule's verdict,
//! exit 0 only when every rule holds, 4 when one fails, 5 when one is undecided), and the error
//! for a socket that is not there.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cairn_crypto::SecretKey;
use cairn_protocol::limits::VALUE_BYTES_MAX;
use cairn_protocol::{Event, EventId, Evidence, Header, Op, SignedHeader};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn cairnctl(args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .args(args)
        .env_remove("CAIRN_SOCKET")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cairnctl runs");
    if let Some(bytes) = stdin {
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    let Output { status, stdout, stderr } = child.wait_with_output().unwrap();
    Run {
        code: status.code().expect("cairnctl exits"),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn key(seed: u8) -> SecretKey {
    SecretKey::from_seed(&[seed; 32])
}

fn sample_event() -> Event {
    let deps = vec![EventId([9; 32]), EventId([3; 32])];
    let ops = vec![
        Op::Put { key: b"greeting".to_vec(), value: b"hello".to_vec() },
        Op::Incr { key: b"hits".to_vec(), delta: -5 },
    ];
    Event::sign(&key(1), 2, 4, deps, ops)
}

fn sample_evidence() -> Evidence {
    let author = key(2);
    let a = Event::sign(&author, 3, 3, vec![], vec![Op::Del { key: b"a".to_vec() }]);
    let b = Event::sign(&author, 3, 3, vec![], vec![Op::Del { key: b"b".to_vec() }]);
    Evidence::new(
        SignedHeader { header: a.header, sig: a.sig },
        SignedHeader { header: b.header, sig: b.sig },
    )
}

/// Runs `cairnctl inspect <what> FILE` and checks the exit code and phrases in stdout.
fn check_inspect(what: &str, bytes: &[u8], code: i32, phrases: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "input", bytes);
    let run = cairnctl(&["inspect", what, file.to_str().unwrap()], None);
    assert_eq!(run.code, code, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    for phrase in phrases {
        assert!(run.stdout.contains(phrase), "{phrase:?} not in stdout:\n{}", run.stdout);
    }
    run
}

/// The genesis TOML of members with these seeds, as `cairnd` reads it.
fn genesis_toml(seeds: &[u8]) -> String {
    let mut text = String::new();
    for &seed in seeds {
        text.push_str(&format!("[[member]]\nname = \"m{seed}\"\nkey = \"{}\"\n\n", key(seed).public()));
    }
    text
}

/// Runs `cairnctl inspect <what> FILE --genesis GENESIS` with a genesis of `seeds`.
fn check_with_genesis(what: &str, bytes: &[u8], seeds: &[u8], code: i32, phrases: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "input", bytes);
    let genesis = write(dir.path(), "genesis.toml", genesis_toml(seeds).as_bytes());
    let run =
        cairnctl(&["inspect", what, file.to_str().unwrap(), "--genesis", genesis.to_str().unwrap()], None);
    assert_eq!(run.code, code, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    for phrase in phrases {
        assert!(run.stdout.contains(phrase), "{phrase:?} not in stdout:\n{}", run.stdout);
    }
    run
}

/// The line of the rules table for `rule`, its words joined by single spaces.
fn rule_line(run: &Run, rule: &str) -> String {
    run.stdout
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .find(|line| line.split(' ').nth(1) == Some(rule))
        .unwrap_or_else(|| panic!("no line for {rule} in\n{}", run.stdout))
}

/// A valid first event of the author with seed 1.
fn first_event() -> Event {
    Event::sign(&key(1), 1, 1, vec![], vec![Op::Put { key: b"greeting".to_vec(), value: b"hello".to_vec() }])
}

#[test]
fn inspect_valid_event_needs_the_genesis_to_say_valid() {
    let event = first_event();
    // Without the genesis: nothing fails, membership is undecided, exit 5, never "valid".
    let run = check_inspect(
        "event",
        &event.encode(),
        5,
        &[
            "event: well formed",
            &event.id().to_string(),
            &key(1).public().to_string(),
            "verdict: UNDECIDED: no rule fails, but membership (needs_genesis)",
            "give --genesis FILE",
        ],
    );
    assert!(!run.stdout.contains("FAILED"), "{}", run.stdout);
    assert!(!run.stdout.contains("VALID:"), "{}", run.stdout);
    assert_eq!(rule_line(&run, "membership").split(' ').nth(2), Some("undecided"));
    for rule in ["decoding", "canonical", "deps_sorted", "ops", "ops_hash", "signature", "seq", "lamport"] {
        assert_eq!(rule_line(&run, rule).split(' ').nth(2), Some("ok"), "{rule}:\n{}", run.stdout);
    }
    assert!(run.stderr.is_empty(), "{}", run.stderr);

    // With the cluster's genesis: every rule holds.
    let run = check_with_genesis(
        "event",
        &event.encode(),
        &[1, 2],
        0,
        &["verdict: VALID: every rule holds", "(m1)"],
    );
    assert_eq!(rule_line(&run, "membership").split(' ').nth(2), Some("ok"));
    // With a genesis the author is not in: a failure that names the rule.
    check_with_genesis(
        "event",
        &event.encode(),
        &[2, 3],
        4,
        &[
            "FAILED",
            "not_member",
            "is not one of the genesis's 2 members",
            "verdict: INVALID: membership (not_member)",
        ],
    );
    // A genesis that does not read is an error of its own, exit 1.
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "event", &event.encode());
    let genesis = write(dir.path(), "genesis.toml", b"[[member]]\nname = \"x\"\nkey = \"nothex\"\n");
    let run =
        cairnctl(&["inspect", "event", file.to_str().unwrap(), "--genesis", genesis.to_str().unwrap()], None);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("genesis.toml"), "{}", run.stderr);
}

#[test]
fn inspect_event_with_deps_leaves_seq_and_lamport_undecided() {
    let event = sample_event();
    let run = check_with_genesis(
        "event",
        &event.encode(),
        &[1],
        5,
        &[
            "needs the causal past",
            "verdict: UNDECIDED: no rule fails, but seq (needs_causal_past), lamport (needs_causal_past)",
        ],
    );
    assert!(!run.stdout.contains("VALID:"), "{}", run.stdout);
    assert_eq!(rule_line(&run, "seq").split(' ').nth(2), Some("undecided"));
    assert_eq!(rule_line(&run, "lamport").split(' ').nth(2), Some("undecided"));
}

#[test]
fn inspect_judges_seq_and_lamport_from_the_bytes() {
    let ops = || vec![Op::Del { key: b"k".to_vec() }];
    // Seq 0.
    let event = Event::sign(&key(1), 0, 1, vec![], ops());
    let run = check_inspect(
        "event",
        &event.encode(),
        4,
        &["seq 0: seqs start at 1", "verdict: INVALID: seq (bad_seq)"],
    );
    assert!(rule_line(&run, "seq").starts_with("5 seq FAILED bad_seq"), "{}", run.stdout);
    // Seq above 1 without deps.
    let event = Event::sign(&key(1), 3, 1, vec![], ops());
    check_inspect(
        "event",
        &event.encode(),
        4,
        &["seq 3 without deps: it needs its author's event at seq 2", "verdict: INVALID: seq (bad_seq)"],
    );
    // A lamport other than 1 without deps, even with the genesis.
    let event = Event::sign(&key(1), 1, 7, vec![], ops());
    let run = check_with_genesis(
        "event",
        &event.encode(),
        &[1],
        4,
        &["lamport 7 without deps: it must be 1", "verdict: INVALID: lamport (bad_lamport)"],
    );
    assert!(rule_line(&run, "lamport").starts_with("6 lamport FAILED bad_lamport"), "{}", run.stdout);
    assert_eq!(rule_line(&run, "seq").split(' ').nth(2), Some("ok"));
}

#[test]
fn inspect_event_with_a_flipped_signature_bit() {
    let mut event = sample_event();
    event.sig.0[10] ^= 0x01;
    let run = check_inspect(
        "event",
        &event.encode(),
        4,
        &[
            "well formed",
            "bad_signature: verify_strict(author, id, sig) fails",
            "verdict: INVALID: signature (bad_signature)",
        ],
    );
    // Still every rule's verdict, those that need more than the bytes undecided.
    assert_eq!(rule_line(&run, "membership").split(' ').nth(2), Some("undecided"));
}

#[test]
fn inspect_event_whose_ops_do_not_match_the_hash() {
    let mut event = sample_event();
    event.ops.push(Op::Del { key: b"sneaked in".to_vec() });
    check_inspect(
        "event",
        &event.encode(),
        4,
        &["ops_hash_mismatch: the header names", "verdict: INVALID: ops_hash (ops_hash_mismatch)"],
    );
}

#[test]
fn inspect_event_with_an_empty_key_or_unsorted_deps() {
    let event = Event::sign(&key(1), 1, 1, vec![], vec![Op::Add { key: vec![], element: b"e".to_vec() }]);
    check_inspect(
        "event",
        &event.encode(),
        4,
        &["bad_op: op 0 (add) has an empty key", "verdict: INVALID: ops (bad_op)"],
    );
    // Event::sign sorts the deps; a header signed as it is keeps them in its order.
    let ops = vec![Op::Del { key: b"k".to_vec() }];
    let header = Header {
        author: key(1).public(),
        seq: 2,
        lamport: 2,
        deps: vec![EventId([9; 32]), EventId([3; 32])],
        ops_hash: cairn_protocol::event::ops_hash(&ops),
    };
    let sig = key(1).sign(&header.id().0);
    let event = Event { header, ops, sig };
    check_inspect(
        "event",
        &event.encode(),
        4,
        &["deps_not_sorted: dep 1 is not above dep 0", "deps_sorted (deps_not_sorted)"],
    );
}

#[test]
fn inspect_truncated_event_is_malformed() {
    let bytes = sample_event().encode();
    check_inspect(
        "event",
        &bytes[..bytes.len() - 10],
        4,
        &["event: MALFORMED", "malformed (truncated): the input ends in the middle", "verdict: INVALID"],
    );
    check_inspect("event", b"", 4, &["event: MALFORMED"]);
    let mut trailing = bytes.clone();
    trailing.push(0);
    let run = check_inspect(
        "event",
        &trailing,
        4,
        &["event: MALFORMED", "trailing_bytes: 1 bytes after the end of the object"],
    );
    // The reasons by their names, not Rust's debug forms.
    for debug in ["OtherString", "UnexpectedEnd", "TrailingBytes(", "LengthOverLimit("] {
        assert!(!run.stdout.contains(debug), "{debug}: {}", run.stdout);
    }
}

#[test]
fn inspect_names_an_oversize_set_element_as_an_element() {
    let ops = vec![Op::Add { key: b"s".to_vec(), element: vec![b'e'; VALUE_BYTES_MAX + 1] }];
    let event = Event::sign(&key(1), 1, 1, vec![], ops);
    let run = check_inspect(
        "event",
        &event.encode(),
        4,
        &["malformed (length_over_limit): element: length 65537 is over the limit of 65536"],
    );
    assert!(!run.stdout.contains("value"), "{}", run.stdout);
}

#[test]
fn inspect_event_from_hex_text_and_stdin() {
    let event = first_event();
    let mut text = String::new();
    for chunk in hex::encode(event.encode()).as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(chunk).unwrap());
        text.push('\n');
    }
    check_with_genesis(
        "event",
        text.as_bytes(),
        &[1],
        0,
        &["well formed", "from hex text", "verdict: VALID"],
    );
    check_inspect("event", b"abc\n", 4, &["MALFORMED", "hex"]);
    // With a 0x prefix, as hex dumps write it: hex, not raw bytes.
    let prefixed = format!("0x{text}");
    check_with_genesis("event", prefixed.as_bytes(), &[1], 0, &["from hex text", &event.id().to_string()]);
    check_inspect("event", format!("  0X{}", hex::encode(event.encode())).as_bytes(), 5, &["from hex text"]);

    let run = cairnctl(&["inspect", "event", "-"], Some(text.as_bytes()));
    assert_eq!(run.code, 5, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains(&event.id().to_string()), "{}", run.stdout);
}

#[test]
fn inspect_event_as_json() {
    let event = sample_event();
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "event.bin", &event.encode());
    let run = cairnctl(&["--json", "inspect", "event", file.to_str().unwrap()], None);
    assert_eq!(run.code, 5, "{}{}", run.stdout, run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["well_formed"], true);
    assert_eq!(report["valid"], false);
    assert_eq!(report["outcome"], "undecided");
    assert_eq!(report["decoded"]["id"], event.id().to_string());
    assert_eq!(
        report["decoded"]["ops"][1],
        serde_json::json!({"op": "incr", "key": "hits", "key_base64": "aGl0cw==", "delta": -5})
    );
    let check =
        |name: &str| report["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone();
    assert_eq!(check("signature")["ok"], true);
    assert_eq!(check("signature")["verdict"], "pass");
    assert_eq!(check("membership")["ok"], serde_json::Value::Null);
    assert_eq!(check("membership")["needs"], "needs_genesis");
    assert_eq!(check("seq")["needs"], "needs_causal_past");
    assert_eq!(check("seq")["rule"], 5);

    let mut broken = event.encode();
    broken.truncate(100);
    let file = write(dir.path(), "broken.bin", &broken);
    let run = cairnctl(&["--json", "inspect", "event", file.to_str().unwrap()], None);
    assert_eq!(run.code, 4, "{}{}", run.stdout, run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["outcome"], "invalid");
    assert_eq!(report["checks"][0]["reason"], "malformed");
    assert_eq!(report["checks"][0]["codec"], "truncated");
    assert_eq!(report["checks"][1]["needs"], "not_decoded");
}

#[test]
fn inspect_valid_evidence() {
    let evidence = sample_evidence();
    let (first, second) = evidence.ids();
    check_inspect(
        "evidence",
        &evidence.encode(),
        5,
        &[
            "evidence: well formed",
            &first.to_string(),
            &second.to_string(),
            &format!("verdict: UNDECIDED: {} signed two different events with seq 3", key(2).public()),
            "membership (needs_genesis)",
        ],
    );
    check_with_genesis(
        "evidence",
        &evidence.encode(),
        &[1, 2],
        0,
        &[&format!("verdict: PROVES that {} (m2) signed two different events with seq 3", key(2).public())],
    );
    check_with_genesis(
        "evidence",
        &evidence.encode(),
        &[1],
        4,
        &["NotMember", "proves nothing: membership (NotMember)"],
    );
    // As `GET /v1/evidence` shows it: hex text.
    check_with_genesis(
        "evidence",
        hex::encode(evidence.encode()).as_bytes(),
        &[2],
        0,
        &["from hex text", "PROVES that"],
    );
}

#[test]
fn inspect_evidence_with_a_bad_signature() {
    let mut evidence = sample_evidence();
    evidence.second.sig.0[0] ^= 0x80;
    let run = check_inspect(
        "evidence",
        &evidence.encode(),
        4,
        &[
            "BadSignature: verify_strict(author, id, sig) fails",
            "verdict: INVALID, proves nothing: second_signature (BadSignature)",
        ],
    );
    assert!(rule_line(&run, "first_signature").contains(" ok "), "{}", run.stdout);
}

#[test]
fn inspect_evidence_that_proves_nothing() {
    let author = key(2);
    let a = Event::sign(&author, 3, 3, vec![], vec![Op::Del { key: b"a".to_vec() }]);
    let b = Event::sign(&author, 4, 4, vec![], vec![Op::Del { key: b"b".to_vec() }]);
    let (a, b) =
        (SignedHeader { header: a.header, sig: a.sig }, SignedHeader { header: b.header, sig: b.sig });
    let evidence = Evidence::new(a.clone(), b);
    check_inspect(
        "evidence",
        &evidence.encode(),
        4,
        &["DifferentSeqs: the first header has seq", "proves nothing: same_seq (DifferentSeqs)"],
    );
    // One header twice is not two events.
    let same = Evidence { first: a.clone(), second: a };
    check_inspect("evidence", &same.encode(), 4, &["proves nothing: two_ordered (NotTwoOrdered)"]);
    check_inspect("evidence", &sample_event().encode(), 4, &["evidence: MALFORMED"]);
}

#[test]
fn inspect_missing_file_is_an_error() {
    let run = cairnctl(&["inspect", "event", "/nonexistent/event.bin"], None);
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.starts_with("cairnctl: cannot read /nonexistent/event.bin"), "{}", run.stderr);
}

#[test]
fn unreachable_daemon_is_one_clear_line() {
    let run = cairnctl(&["--socket", "/nonexistent", "status"], None);
    assert_eq!(run.code, 1);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.starts_with("cairnctl: cannot connect to cairnd at /nonexistent: "), "{}", run.stderr);
    assert!(run.stderr.contains("systemctl status cairnd"), "{}", run.stderr);
}

#[test]
fn socket_from_the_environment() {
    let output = Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .args(["peers"])
        .env("CAIRN_SOCKET", "/nonexistent/from-env.sock")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("/nonexistent/from-env.sock"), "{stderr}");
}

#[test]
fn usage_errors_exit_2_and_help_lists_exit_codes() {
    assert_eq!(cairnctl(&["frobnicate"], None).code, 2);
    assert_eq!(cairnctl(&["incr", "k"], None).code, 2);
    let help = cairnctl(&["--help"], None);
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("Exit codes:"), "{}", help.stdout);
    assert!(help.stdout.contains("4  inspect"), "{}", help.stdout);
    assert!(help.stdout.contains("5  inspect: no rule fails, but one is undecided"), "{}", help.stdout);
    let help = cairnctl(&["inspect", "event", "--help"], None);
    assert!(help.stdout.contains("--genesis <FILE>"), "{}", help.stdout);
}
