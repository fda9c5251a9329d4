//! End-to-end tests of the `cairnctl` binary without a daemon: `inspect event` and
//! `inspect evidence` on files written here, and the error for a socket that is not there.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cairn_crypto::SecretKey;
use cairn_protocol::{Event, EventId, Evidence, Op, SignedHeader};

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

#[test]
fn inspect_valid_event() {
    let event = sample_event();
    let run = check_inspect(
        "event",
        &event.encode(),
        0,
        &[
            "event: well formed",
            &event.id().to_string(),
            &key(1).public().to_string(),
            "valid: verify_strict(author, id, sig) holds",
            "matches the ops",
            "verdict: the hash and the signature hold",
            "membership",
            "not checked",
        ],
    );
    assert!(!run.stdout.contains("FAILED"), "{}", run.stdout);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
}

#[test]
fn inspect_event_with_a_flipped_signature_bit() {
    let mut event = sample_event();
    event.sig.0[10] ^= 0x01;
    check_inspect(
        "event",
        &event.encode(),
        4,
        &["well formed", "INVALID: verify_strict(author, id, sig) fails", "verdict: INVALID: signature"],
    );
}

#[test]
fn inspect_event_whose_ops_do_not_match_the_hash() {
    let mut event = sample_event();
    event.ops.push(Op::Del { key: b"sneaked in".to_vec() });
    check_inspect("event", &event.encode(), 4, &["does not match the ops", "verdict: INVALID: ops hash"]);
}

#[test]
fn inspect_truncated_event_is_malformed() {
    let bytes = sample_event().encode();
    check_inspect("event", &bytes[..bytes.len() - 10], 4, &["event: MALFORMED"]);
    check_inspect("event", b"", 4, &["event: MALFORMED"]);
    let mut trailing = bytes.clone();
    trailing.push(0);
    check_inspect("event", &trailing, 4, &["event: MALFORMED", "1 bytes after the end of the object"]);
}

#[test]
fn inspect_event_from_hex_text_and_stdin() {
    let event = sample_event();
    let mut text = String::new();
    for chunk in hex::encode(event.encode()).as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(chunk).unwrap());
        text.push('\n');
    }
    check_inspect("event", text.as_bytes(), 0, &["well formed", "from hex text", "valid: verify_strict"]);
    check_inspect("event", b"abc\n", 4, &["MALFORMED", "hex"]);

    let run = cairnctl(&["inspect", "event", "-"], Some(text.as_bytes()));
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains(&event.id().to_string()), "{}", run.stdout);
}

#[test]
fn inspect_event_as_json() {
    let event = sample_event();
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "event.bin", &event.encode());
    let run = cairnctl(&["--json", "inspect", "event", file.to_str().unwrap()], None);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["well_formed"], true);
    assert_eq!(report["valid"], true);
    assert_eq!(report["decoded"]["id"], event.id().to_string());
    assert_eq!(
        report["decoded"]["ops"][1],
        serde_json::json!({"op": "incr", "key": "hits", "key_base64": "aGl0cw==", "delta": -5})
    );
    let signature = report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "signature").unwrap();
    assert_eq!(signature["ok"], true);
}

#[test]
fn inspect_valid_evidence() {
    let evidence = sample_evidence();
    let (first, second) = evidence.ids();
    check_inspect(
        "evidence",
        &evidence.encode(),
        0,
        &[
            "evidence: well formed",
            &first.to_string(),
            &second.to_string(),
            &format!("verdict: proves that {} signed two different events with seq 3", key(2).public()),
            "membership not checked",
        ],
    );
    // As `GET /v1/evidence` shows it: hex text.
    check_inspect(
        "evidence",
        hex::encode(evidence.encode()).as_bytes(),
        0,
        &["from hex text", "proves that"],
    );
}

#[test]
fn inspect_evidence_with_a_bad_signature() {
    let mut evidence = sample_evidence();
    evidence.second.sig.0[0] ^= 0x80;
    check_inspect(
        "evidence",
        &evidence.encode(),
        4,
        &["second signature", "INVALID: verify_strict", "verdict: INVALID, proves nothing: second signature"],
    );
}

#[test]
fn inspect_evidence_that_proves_nothing() {
    let author = key(2);
    let a = Event::sign(&author, 3, 3, vec![], vec![Op::Del { key: b"a".to_vec() }]);
    let b = Event::sign(&author, 4, 4, vec![], vec![Op::Del { key: b"b".to_vec() }]);
    let (a, b) =
        (SignedHeader { header: a.header, sig: a.sig }, SignedHeader { header: b.header, sig: b.sig });
    let evidence = Evidence::new(a.clone(), b);
    check_inspect("evidence", &evidence.encode(), 4, &["same seq", "FAILED", "proves nothing: same seq"]);
    // One header twice is not two events.
    let same = Evidence { first: a.clone(), second: a };
    check_inspect("evidence", &same.encode(), 4, &["proves nothing: two events in id order"]);
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
}
