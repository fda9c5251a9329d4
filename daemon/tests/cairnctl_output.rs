//! End-to-end tests of the `cairnctl` binary against real `cairnd` processes: what a member
//! writes reaches no terminal raw (also through a pseudo-terminal), empty state exits 3, text
//! and bytes print differently, values come from stdin and files and are checked against the
//! limits first, pages say how to go on, `event --raw` feeds `inspect event`, counters beyond
//! 2^53 stay exact, the help texts, and the typed client against a real daemon.

mod common;

use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use cairn_daemon::api::{EVENTS_LIMIT_MAX, KEYS_LIMIT_DEFAULT, KEYS_LIMIT_MAX};
use cairn_daemon::json;
use cairn_protocol::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use common::{Cluster, DEADLINE};
use serde_json::{Value, json};

/// The key and value of the operator's report: the key turns text red, the value clears the
/// screen.
const EVIL_KEY: &str = "esc\x1b[31mRED";
const EVIL_VALUE: &str = "\x1b[2Jcleared";
/// A set key that sets the terminal's title, and an element with a C1 control sequence
/// introducer and a right-to-left override.
const EVIL_SET: &str = "set\x1b]0;owned\x07";
const EVIL_ELEMENT: &str = "\u{9b}31m\u{202e}txt.exe\r";
/// A counter key that makes text blink.
const EVIL_COUNTER: &str = "ctr\x1b[5m";

/// What a run of `cairnctl` gave.
struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn text(&self) -> String {
        String::from_utf8(self.stdout.clone()).expect("cairnctl prints UTF-8")
    }

    /// Asserts the exit code; returns stdout as text.
    fn expect(&self, code: i32, what: &str) -> String {
        assert_eq!(
            self.code,
            code,
            "{what}: stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        );
        self.text()
    }
}

/// Runs `cairnctl` with `args` (the socket first when there is one), `stdin` piped in.
fn cairnctl_os(socket: Option<&Path>, args: &[&OsStr], stdin: Option<&[u8]>) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cairnctl"));
    command.env_remove("CAIRN_SOCKET");
    if let Some(socket) = socket {
        command.arg("--socket").arg(socket);
    }
    let mut child = command
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cairnctl runs");
    if let Some(bytes) = stdin {
        // cairnctl may stop reading at its limit and exit; the rest meets a closed pipe.
        let _ = child.stdin.take().expect("a stdin pipe").write_all(bytes);
    }
    let Output { status, stdout, stderr } = child.wait_with_output().expect("cairnctl exits");
    Run {
        code: status.code().expect("cairnctl exits by itself"),
        stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn cairnctl(socket: Option<&Path>, args: &[&str]) -> Run {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    cairnctl_os(socket, &args, None)
}

/// The characters in `text` that a terminal would act on or that hide or reorder text; line
/// breaks are the only control characters human output may hold. Written independently of
/// cairnctl's own list, as the terminal sees it.
fn unprintable(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| {
            c != '\n'
                && (c.is_control()
                    || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'))
        })
        .collect()
}

/// Asserts that `text` holds nothing a terminal acts on.
fn assert_printable(what: &str, text: &str) {
    let bad = unprintable(text);
    assert!(bad.is_empty(), "{what} prints {bad:?} raw:\n{}", text.escape_debug());
}

/// Runs `cairnctl` in a pseudo-terminal through util-linux `script`, with `env` set, and
/// returns what the terminal received with its `\r\n` line ends made `\n`; `None` when
/// `script` is not installed. The command line reads its arguments from the environment,
/// so that no shell quoting is involved.
fn in_a_terminal(command_line: &str, env: &[(&str, &OsStr)]) -> Option<(i32, String)> {
    if Command::new("script").arg("--version").output().is_err() {
        return None;
    }
    let mut command = Command::new("script");
    command
        .args(["--quiet", "--return", "--command", command_line, "/dev/null"])
        .env("CAIRNCTL", env!("CARGO_BIN_EXE_cairnctl"))
        .env_remove("CAIRN_SOCKET")
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("script runs");
    let text = String::from_utf8(output.stdout).expect("cairnctl prints UTF-8");
    Some((output.status.code().unwrap_or(-1), text.replace("\r\n", "\n")))
}

#[test]
fn text_a_member_wrote_reaches_no_terminal_raw() {
    let c = Cluster::start(2);
    let (alice, bob) = (c.nodes[0].socket.as_path(), c.nodes[1].socket.as_path());

    // Alice writes; Bob's operator inspects.
    let ack = cairnctl(Some(alice), &["--json", "put", EVIL_KEY, EVIL_VALUE]).expect(0, "put");
    let ack: Value = serde_json::from_str(&ack).expect("JSON");
    let id = ack["id"].as_str().expect("an id").to_owned();
    cairnctl(Some(alice), &["sadd", EVIL_SET, EVIL_ELEMENT]).expect(0, "sadd");
    cairnctl(Some(alice), &["incr", EVIL_COUNTER, "7"]).expect(0, "incr");
    c.wait_for("bob holds alice's writes", |c| {
        c.register_value(1, EVIL_KEY).as_deref() == Some(EVIL_VALUE)
            && c.set_members(1, EVIL_SET) == [EVIL_ELEMENT]
            && c.counter(1, EVIL_COUNTER) == 7
    });

    let escaped_key = "\"esc\\u{1b}[31mRED\"";
    let escaped_value = "\"\\u{1b}[2Jcleared\"";
    let checks: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["keys"], vec![escaped_key, "\"set\\u{1b}]0;owned\\u{7}\"", "\"ctr\\u{1b}[5m\""]),
        (vec!["get", EVIL_KEY], vec![escaped_value]),
        (vec!["members", EVIL_SET], vec!["\"\\u{9b}31m\\u{202e}txt.exe\\r\""]),
        (vec!["counter", EVIL_COUNTER], vec!["7"]),
        (vec!["events"], vec![&id]),
        (vec!["event", &id], vec![escaped_key, escaped_value]),
        (vec!["status"], vec!["bob", "document digest"]),
        (vec!["peers"], vec!["alice"]),
        (vec!["evidence"], vec!["no evidence"]),
    ];
    for (args, phrases) in &checks {
        let text = cairnctl(Some(bob), args).expect(0, &args.join(" "));
        assert_printable(&args.join(" "), &text);
        for phrase in phrases {
            assert!(text.contains(phrase), "{args:?}: {phrase:?} not in\n{text}");
        }
    }
    // Machine output stays exact: the value is there, as JSON writes it.
    let json = cairnctl(Some(bob), &["--json", "get", EVIL_KEY]).expect(0, "--json get");
    let json: Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(json["value"], EVIL_VALUE);

    // An error that quotes what was asked is escaped too.
    let run = cairnctl(Some(bob), &["events", "--author", "\x1b[2Jnobody"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("unknown author"), "{}", run.stderr);
    assert_printable("an error", run.stderr.trim_end());

    // Watch: each of Alice's writes shows on Bob's watch; the watcher subscribes a moment
    // after it starts, so Alice writes until a line arrives.
    let mut watcher = Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .args([OsStr::new("--socket"), bob.as_os_str(), OsStr::new("watch")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cairnctl watch runs");
    let stdout = watcher.stdout.take().expect("a stdout pipe");
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + DEADLINE;
    let line = loop {
        c.put(0, EVIL_KEY, EVIL_VALUE);
        match lines_rx.recv_timeout(Duration::from_millis(250)) {
            Ok(line) => break line.expect("read the watch"),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                assert!(Instant::now() < deadline, "no watch line within {DEADLINE:?}");
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("cairnctl watch ended"),
        }
    };
    watcher.kill().expect("stop cairnctl watch");
    watcher.wait().expect("reap cairnctl watch");
    let line = String::from_utf8(line).expect("UTF-8");
    assert_printable("watch", &line);
    assert!(line.ends_with(&format!("register {escaped_key} = {escaped_value}")), "{line}");

    // In a terminal, where the tables get borders: still nothing raw.
    let key = OsStr::new(EVIL_KEY);
    let socket = bob.as_os_str();
    for command_line in
        [r#""$CAIRNCTL" --socket "$SOCKET" keys"#, r#""$CAIRNCTL" --socket "$SOCKET" event "$ID""#]
    {
        let env = [("SOCKET", socket), ("KEY", key), ("ID", OsStr::new(&id))];
        let Some((code, text)) = in_a_terminal(command_line, &env) else {
            common::skip("util-linux `script` is not installed: the terminal case did not run");
            break;
        };
        assert_eq!(code, 0, "{command_line}: {text}");
        assert!(text.contains('│'), "{command_line}: no table borders, so no terminal:\n{text}");
        assert!(text.contains(escaped_key), "{command_line}:\n{text}");
        assert_printable(command_line, &text);
    }
    let Some((code, text)) =
        in_a_terminal(r#""$CAIRNCTL" --socket "$SOCKET" get "$KEY""#, &[("SOCKET", socket), ("KEY", key)])
    else {
        return;
    };
    assert_eq!(code, 0, "{text}");
    assert_eq!(without_context(&text), format!("{escaped_value}\n"));
}

/// What `get` printed without its last line, the read's context (which it checks is there).
fn without_context(text: &str) -> String {
    let (value, context) = text.trim_end_matches('\n').rsplit_once('\n').expect("a value and a context line");
    assert!(context.starts_with("context: "), "{text}");
    format!("{value}\n")
}

#[test]
fn empty_state_and_unknown_events_exit_3() {
    let c = Cluster::start(1);
    let socket = Some(c.nodes[0].socket.as_path());
    let check = |args: &[&str], code: i32, stdout: &str| {
        let text = cairnctl(socket, args).expect(code, &args.join(" "));
        assert_eq!(text, stdout, "{args:?}");
    };
    check(&["get", "absent"], 3, "(no value)\n");
    check(&["members", "absent"], 3, "(no members)\n");
    check(&["counter", "absent"], 3, "0\n");
    let json = cairnctl(socket, &["--json", "counter", "absent"]).expect(3, "--json counter");
    assert_eq!(serde_json::from_str::<Value>(&json).expect("JSON"), json!({"key": "absent", "value": 0}));

    cairnctl(socket, &["put", "r", "v"]).expect(0, "put");
    assert_eq!(without_context(&cairnctl(socket, &["get", "r"]).expect(0, "get r")), "\"v\"\n");
    cairnctl(socket, &["del", "r"]).expect(0, "del");
    check(&["get", "r"], 3, "(no value)\n");
    cairnctl(socket, &["sadd", "s", "e"]).expect(0, "sadd");
    check(&["members", "s"], 0, "\"e\"\n");
    cairnctl(socket, &["incr", "n", "--", "-2"]).expect(0, "incr");
    check(&["counter", "n"], 0, "-2\n");
    cairnctl(socket, &["incr", "n", "2"]).expect(0, "incr");
    check(&["counter", "n"], 3, "0\n");

    let run = cairnctl(socket, &["event", &"0".repeat(64)]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stdout.is_empty());
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("no accepted event has id"), "{}", run.stderr);
}

#[test]
fn values_from_stdin_and_files_within_the_limits() {
    let c = Cluster::start(1);
    let socket = Some(c.nodes[0].socket.as_path());

    // A value of exactly the limit, of every byte, from stdin.
    let value: Vec<u8> = (0..VALUE_BYTES_MAX).map(|idx| (idx % 256) as u8).collect();
    cairnctl_os(socket, &[OsStr::new("put"), OsStr::new("big"), OsStr::new("-")], Some(&value))
        .expect(0, "put big -");
    let read = cairnctl(socket, &["--json", "get", "big"]).expect(0, "--json get big");
    let read: Value = serde_json::from_str(&read).expect("JSON");
    assert_eq!(read["value_base64"], BASE64.encode(&value));
    // One byte more is refused before the daemon is asked, with the limit.
    let mut over = value.clone();
    over.push(0);
    let run = cairnctl_os(socket, &[OsStr::new("put"), OsStr::new("big"), OsStr::new("-")], Some(&over));
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("stdin: the value is over the limit of 65536 bytes"), "{}", run.stderr);

    // From a file, for a register and a set.
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("element");
    std::fs::write(&file, [0xff, 0x00]).expect("write the file");
    let file = file.to_str().expect("a UTF-8 path");
    cairnctl(socket, &["put", "bytes", "--file", file]).expect(0, "put --file");
    cairnctl(socket, &["sadd", "s", "--file", file]).expect(0, "sadd --file");
    // Text that looks like bytes, and the bytes: they print differently.
    cairnctl(socket, &["put", "text", "base64:/wA="]).expect(0, "put text");
    let bytes = without_context(&cairnctl(socket, &["get", "bytes"]).expect(0, "get bytes"));
    let text = without_context(&cairnctl(socket, &["get", "text"]).expect(0, "get text"));
    assert_eq!(bytes, "base64:/wA=\n");
    assert_eq!(text, "\"base64:/wA=\"\n");
    assert_eq!(cairnctl(socket, &["members", "s"]).expect(0, "members"), "base64:/wA=\n");
    // The same bytes as base64 on the command line.
    cairnctl(socket, &["put", "--base64", "bytes2", "/wA="]).expect(0, "put --base64");
    assert_eq!(
        without_context(&cairnctl(socket, &["get", "bytes2"]).expect(0, "get bytes2")),
        "base64:/wA=\n"
    );

    // Keys over the limit: the limit, not the key, whatever the length (a 70 000-byte key
    // does not fit in a request line; a 16 000-byte key does).
    for n_bytes in [KEY_BYTES_MAX + 1, 16_000, 70_000] {
        let key = "k".repeat(n_bytes);
        let run = cairnctl(socket, &["put", &key, "v"]);
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert_eq!(
            run.stderr,
            format!("cairnctl: the key is {n_bytes} bytes, over the limit of {KEY_BYTES_MAX}\n")
        );
    }
    // Arguments that are not UTF-8.
    let not_utf8 = OsStr::from_bytes(b"\xff\xfe");
    let run = cairnctl_os(socket, &[OsStr::new("put"), OsStr::new("k"), not_utf8], None);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("not UTF-8") && run.stderr.contains("--base64"), "{}", run.stderr);
    let run = cairnctl_os(socket, &[OsStr::new("get"), not_utf8], None);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("the key is not UTF-8"), "{}", run.stderr);
    // Nothing of the refused writes reached the daemon.
    let keys = cairnctl(socket, &["--json", "keys"]).expect(0, "--json keys");
    let keys: Value = serde_json::from_str(&keys).expect("JSON");
    assert_eq!(keys["keys"].as_array().expect("keys").len(), 5, "{keys}");
}

/// Follows the pages of `args` through the last line of each (`… add --after X`): returns
/// every page's lines but that last one.
fn all_pages(socket: &Path, args: &[&str], more: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        assert!(pages.len() < 100, "the pages of {args:?} do not end");
        let mut full: Vec<&str> = args.to_vec();
        if let Some(after) = &after {
            full.extend(["--after", after]);
        }
        let text = cairnctl(Some(socket), &full).expect(0, &full.join(" "));
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        after = lines.last().and_then(|last| last.strip_prefix(more)).map(str::to_owned);
        if after.is_some() {
            lines.pop();
        }
        pages.push(lines);
        if after.is_none() {
            return pages;
        }
    }
}

#[test]
fn pages_event_bytes_counters_and_status() {
    let c = Cluster::start(1);
    let socket = c.nodes[0].socket.as_path();
    let keys: Vec<String> = (0..7).map(|idx| format!("k{idx}")).collect();
    for key in &keys {
        cairnctl(Some(socket), &["put", key, "v"]).expect(0, "put");
    }

    // Keys, three at a time: the pages hold every key once, in order.
    let pages =
        all_pages(socket, &["keys", "--limit", "3"], "more keys follow: for the next page add --after ");
    assert_eq!(pages.len(), 3, "{pages:?}");
    let listed: Vec<String> = pages
        .iter()
        .flat_map(|page| page[1..].iter().map(|line| line.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect();
    let expected: Vec<String> = keys.iter().map(|key| format!("register \"{key}\"")).collect();
    assert_eq!(listed, expected);
    // Events, three at a time.
    let pages =
        all_pages(socket, &["events", "--limit", "3"], "more events follow: for the next page add --after ");
    let n_events: usize = pages.iter().map(|page| page.len() - 1).sum();
    assert_eq!((pages.len(), n_events), (3, 7), "{pages:?}");
    let json = cairnctl(Some(socket), &["--json", "events", "--limit", "7"]).expect(0, "--json events");
    assert_eq!(serde_json::from_str::<Value>(&json).expect("JSON")["next"], Value::Null);

    // An event's bytes, from the running node into `inspect event`.
    let ack = cairnctl(Some(socket), &["--json", "put", "inspected", "v"]).expect(0, "put");
    let id = serde_json::from_str::<Value>(&ack).expect("JSON")["id"].as_str().expect("id").to_owned();
    let raw = cairnctl(Some(socket), &["event", &id, "--raw"]).expect(0, "event --raw");
    assert_eq!(raw.lines().count(), 1, "{raw}");
    // Without the genesis the bytes are not known to be valid (exit 5); with the cluster's
    // genesis, this node's first event (no deps) is.
    let verdict = cairnctl_os(
        None,
        &[OsStr::new("inspect"), OsStr::new("event"), OsStr::new("-")],
        Some(raw.as_bytes()),
    );
    let verdict = verdict.expect(5, "inspect event -");
    assert!(verdict.contains(&id), "{verdict}");
    assert!(verdict.contains("from hex text"), "{verdict}");
    assert!(
        verdict.contains("verdict: UNDECIDED: no rule fails, but membership (needs_genesis)"),
        "{verdict}"
    );
    let first = cairnctl(Some(socket), &["--json", "events", "--limit", "1"]).expect(0, "--json events");
    let first = serde_json::from_str::<Value>(&first).expect("JSON")["events"][0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let raw = cairnctl(Some(socket), &["event", &first, "--raw"]).expect(0, "event --raw");
    let genesis = c.dir().join("genesis.toml");
    let verdict = cairnctl_os(
        None,
        &[
            OsStr::new("inspect"),
            OsStr::new("event"),
            OsStr::new("-"),
            OsStr::new("--genesis"),
            genesis.as_os_str(),
        ],
        Some(raw.as_bytes()),
    );
    let verdict = verdict.expect(0, "inspect event - --genesis");
    assert!(verdict.contains("verdict: VALID: every rule holds"), "{verdict}");

    // A counter past i64::MAX: exact in text, a string in JSON.
    for _ in 0..2 {
        cairnctl(Some(socket), &["incr", "big", &i64::MAX.to_string()]).expect(0, "incr");
    }
    assert_eq!(cairnctl(Some(socket), &["counter", "big"]).expect(0, "counter"), "18446744073709551614\n");
    let json = cairnctl(Some(socket), &["--json", "counter", "big"]).expect(0, "--json counter");
    assert_eq!(
        serde_json::from_str::<Value>(&json).expect("JSON"),
        json!({"key": "big", "value": "18446744073709551614"})
    );

    // Status names its digests; metrics have no JSON form.
    let status = cairnctl(Some(socket), &["status"]).expect(0, "status");
    let digest = c.status(0)["digest"].as_str().expect("digest").to_owned();
    let row = status.lines().find(|line| line.contains("document digest")).expect("a document digest row");
    assert!(row.ends_with(&digest), "{status}");
    assert!(status.contains("Compare the document digest between nodes"), "{status}");
    let run = cairnctl(Some(socket), &["--json", "metrics"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stdout.is_empty());
    assert!(run.stderr.contains("no JSON form"), "{}", run.stderr);
    assert!(cairnctl(Some(socket), &["metrics"]).expect(0, "metrics").ends_with("# EOF\n"));
}

#[test]
fn help_texts() {
    let help = cairnctl(None, &["--help"]).expect(0, "--help");
    // clap's own env display, as `cairnd run --help` shows CAIRN_CONFIG.
    assert!(help.contains("[env: CAIRN_SOCKET=]"), "{help}");
    assert!(help.contains("[default: /run/cairn/cairnd.sock]"), "{help}");
    for phrase in [
        &format!("1 to {KEY_BYTES_MAX} bytes"),
        &format!("at most {VALUE_BYTES_MAX}"),
        "--file PATH",
        "stdin",
        "\\u{HEX}",
        "base64:",
        "3  not found",
    ] {
        assert!(help.contains(phrase), "{phrase:?} not in\n{help}");
    }
    for args in
        [&["inspect", "--help"][..], &["inspect", "event", "--help"], &["inspect", "evidence", "--help"]]
    {
        let text = cairnctl(None, args).expect(0, &args.join(" "));
        assert!(!text.contains("--socket"), "{args:?}:\n{text}");
    }
    let status = cairnctl(None, &["status", "--help"]).expect(0, "status --help");
    assert!(status.contains("--socket <PATH>"), "{status}");
    let keys = cairnctl(None, &["keys", "--help"]).expect(0, "keys --help");
    assert!(
        keys.contains(&format!("1 to {KEYS_LIMIT_MAX}; the daemon's default is {KEYS_LIMIT_DEFAULT}")),
        "{keys}"
    );
    let events = cairnctl(None, &["events", "--help"]).expect(0, "events --help");
    assert!(events.contains(&format!("1 to {EVENTS_LIMIT_MAX}; the daemon's default is")), "{events}");
    let put = cairnctl(None, &["put", "--help"]).expect(0, "put --help");
    assert!(put.contains("--file <PATH>"), "{put}");
}

/// The typed client against a real daemon: every route, read into the types of
/// `cairn_daemon::json`, and the bytes the daemon sent, which `--json` prints in their order.
#[test]
fn the_typed_client_reads_every_answer() {
    let c = Cluster::start(2);
    let client = c.client(0);
    let text = |value: &str| json::ValueBody { value: Some(value.to_owned()), ..Default::default() };
    let element = |value: &str| json::ElementBody { element: Some(value.to_owned()), ..Default::default() };

    let status = c.block_on(client.status()).expect("status").value;
    assert_eq!(status.name, "alice");
    assert_eq!(status.n_peers, 1);
    let peers = c.block_on(client.peers()).expect("peers").value;
    assert_eq!(peers.peers.len(), 1);
    assert_eq!(peers.peers[0].name, "bob");

    let ack = c.block_on(client.put("dir/k", &text("v"))).expect("put").value;
    assert_eq!(ack.id.len(), 64);
    let read = c.block_on(client.register("dir/k")).expect("register").value;
    assert_eq!((read.key.as_str(), read.state.value.as_deref()), ("dir/k", Some("v")));
    assert_eq!(read.state.siblings.len(), 1);
    assert_eq!(read.state.siblings[0].event_id, ack.id);
    let binary = json::ValueBody { value_base64: Some("/wA=".to_owned()), ..Default::default() };
    c.block_on(client.put("bin", &binary)).expect("put bytes");
    let read = c.block_on(client.register("bin")).expect("register bytes").value;
    assert_eq!((read.state.value, read.state.value_base64.as_deref()), (None, Some("/wA=")));
    c.block_on(client.delete("dir/k", None)).expect("delete");
    assert_eq!(c.block_on(client.register("dir/k")).expect("register").value.state.value_base64, None);

    for _ in 0..2 {
        c.block_on(client.incr("big", i64::MAX)).expect("incr");
    }
    let counter = c.block_on(client.counter("big")).expect("counter");
    assert_eq!(counter.value.value, json::CounterValue(2 * i128::from(i64::MAX)));
    assert_eq!(&counter.body[..], br#"{"key":"big","value":"18446744073709551614"}"#);

    c.block_on(client.set_add("s", &element("a"))).expect("sadd");
    c.block_on(client.set_add("s", &element("b"))).expect("sadd");
    c.block_on(client.set_remove("s", &element("a"))).expect("srem");
    let set = c.block_on(client.set("s")).expect("set").value;
    assert_eq!(set.members.len(), 1);
    assert_eq!((set.members[0].value.as_deref(), set.members[0].value_base64.as_str()), (Some("b"), "Yg=="));
    assert!(set.members[0].context.is_some(), "a set read gives each member's context");

    let batch = json::BatchBody {
        ops: vec![
            json::BatchOp::Put {
                key: "b1".into(),
                value: Some("x".into()),
                value_base64: None,
                context: None,
            },
            json::BatchOp::Incr { key: "c".into(), delta: -2 },
        ],
    };
    let ack = c.block_on(client.batch(&batch)).expect("batch").value;

    let page =
        c.block_on(client.keys(&json::KeysQuery { limit: Some(2), ..Default::default() })).expect("keys");
    assert_eq!(page.value.keys.len(), 2);
    let after = page.value.next.expect("a next page");
    let query = json::KeysQuery { after: Some(after), ..Default::default() };
    let rest = c.block_on(client.keys(&query)).expect("keys").value;
    assert_eq!(rest.next, None);
    let kinds: Vec<json::KeyKind> = rest.keys.iter().map(|k| k.kind).collect();
    assert!(kinds.contains(&json::KeyKind::Set), "{kinds:?}");

    let query = json::EventsQuery { author: Some("alice".into()), ..Default::default() };
    let events = c.block_on(client.events(&query)).expect("events").value;
    assert_eq!(events.events.last().expect("events").id, ack.id);
    let event = c.block_on(client.event(&ack.id)).expect("event").value;
    assert_eq!(event.ops.len(), 2);
    assert_eq!(event.ops[1], json::Op::Incr { key: Some("c".into()), key_base64: "Yw==".into(), delta: -2 });
    let bytes = hex::decode(&event.encoded_hex).expect("hex");
    assert_eq!(cairn_protocol::diagnose(&bytes, None).decoded.expect("an event").id().to_string(), ack.id);
    let error = c.block_on(client.event(&"0".repeat(64))).expect_err("no such event");
    assert_eq!(error.code(), Some("not_found"));
    let evidence = c.block_on(client.evidence()).expect("evidence").value;
    assert!(evidence.evidence.is_empty());
    assert!(c.block_on(client.metrics()).expect("metrics").ends_with("# EOF\n"));

    // What --json prints is the daemon's JSON, its fields in the daemon's order.
    let printed =
        cairnctl(Some(c.nodes[0].socket.as_path()), &["--json", "status"]).expect(0, "--json status");
    let order: Vec<&str> = ["\"key\"", "\"name\"", "\"cluster_id\"", "\"own_seq\"", "\"n_peers\""]
        .into_iter()
        .map(|field| &printed[printed.find(field).unwrap_or_else(|| panic!("{field} in {printed}"))..])
        .collect();
    assert!(order.windows(2).all(|pair| pair[0].len() > pair[1].len()), "{printed}");

    // A watch line, typed.
    let watching = async {
        let mut seen = None;
        client
            .watch_changes(|event, data| {
                seen = Some((event, data.to_owned()));
                false
            })
            .await
            .expect("watch");
        seen.expect("an event")
    };
    // The watcher subscribes a moment after it starts, so the counter is written until it
    // sees a change.
    let writing = async {
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            c.client(0).incr("watched", 3).await.expect("incr");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (event, data) = c.block_on(async {
        tokio::select! {
            seen = watching => seen,
            () = writing => panic!("no watch event within {DEADLINE:?}"),
        }
    });
    let json::WatchEvent::Change(change) = event else { panic!("{event:?}") };
    assert_eq!(change.kind, json::KeyKind::Counter);
    assert_eq!(change.key.as_deref(), Some("watched"));
    assert!(matches!(change.state, json::ChangeState::Counter { .. }), "{data}");
}
