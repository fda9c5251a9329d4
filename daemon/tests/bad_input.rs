//! Bad input against real `cairnd` processes: every API route with broken requests answers a
//! JSON error with the right status and the daemon keeps serving; `cairnd check-config` names
//! the broken field or file; `cairnd run` refuses a store of another cluster.

mod common;

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};

use cairn_protocol::limits::{KEY_BYTES_MAX, OPS_MAX, VALUE_BYTES_MAX};
use common::{Cluster, DEADLINE, cairnd, wait_exit};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

/// Sends one raw HTTP/1.1 request to the socket (any method, path, content type and body) and
/// returns the status and the body of the answer. Plain blocking I/O rather than an HTTP
/// client: the daemon may answer an oversized body with 413 and close before it has read it
/// all, and then the rest of the body meets a broken pipe, which is no error here; the answer
/// is still there to read.
fn raw_request(
    socket: &Path,
    method: &Method,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> (StatusCode, Vec<u8>) {
    let mut stream = UnixStream::connect(socket).expect("connect to the API socket");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: cairnd\r\nconnection: close\r\n");
    if let Some(content_type) = content_type {
        head.push_str(&format!("content-type: {content_type}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let sent = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body));
    if let Err(error) = sent {
        assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe, "sending {method} {path}: {error}");
    }
    let mut answer = Vec::new();
    if let Err(error) = stream.read_to_end(&mut answer) {
        // A reset after the answer arrived loses nothing that is needed.
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "reading the answer: {error}");
    }
    let text = String::from_utf8_lossy(&answer);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no complete answer: {text:?}"));
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse::<u16>().ok()).expect("a status");
    let head = head.to_ascii_lowercase();
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(rest.as_bytes())
    } else {
        rest.as_bytes().to_vec()
    };
    (StatusCode::from_u16(status).unwrap(), body)
}

/// Decodes a chunked body.
fn dechunk(mut bytes: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = bytes.windows(2).position(|w| w == b"\r\n").expect("a chunk size line");
        let size =
            usize::from_str_radix(std::str::from_utf8(&bytes[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&bytes[line_end + 2..line_end + 2 + size]);
        bytes = &bytes[line_end + 2 + size + 2..];
    }
}

const JSON: Option<&str> = Some("application/json");

/// One bad request and the answer it must get.
struct Case {
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: StatusCode,
    code: &'static str,
    /// A phrase the message must contain.
    phrase: &'static str,
}

fn case(method: Method, path: impl Into<String>, body: impl Into<Vec<u8>>) -> Case {
    Case {
        method,
        path: path.into(),
        content_type: JSON,
        body: body.into(),
        status: StatusCode::BAD_REQUEST,
        code: "",
        phrase: "",
    }
}

impl Case {
    fn expect(mut self, status: StatusCode, code: &'static str, phrase: &'static str) -> Self {
        self.status = status;
        self.code = code;
        self.phrase = phrase;
        self
    }

    fn content_type(mut self, content_type: Option<&'static str>) -> Self {
        self.content_type = content_type;
        self
    }
}

fn check(c: &Cluster, case: Case) {
    let what = format!("{} {}", case.method, truncated(&case.path));
    let (status, body) =
        raw_request(&c.nodes[0].socket, &case.method, &case.path, case.content_type, &case.body);
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, case.status, "{what}: {text}");
    let json: Value =
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
    assert_eq!(json["error"]["code"], case.code, "{what}: {json}");
    let message = json["error"]["message"].as_str().unwrap_or_else(|| panic!("{what}: no message: {json}"));
    assert!(message.contains(case.phrase), "{what}: {:?} not in {message:?}", case.phrase);
}

fn truncated(text: &str) -> String {
    text.chars().take(100).collect()
}

#[test]
fn every_endpoint_answers_bad_input_with_a_json_error_and_keeps_serving() {
    let c = Cluster::start(1);
    c.put(0, "before", "kept");

    use Method as M;
    use StatusCode as S;
    let bad = S::BAD_REQUEST;
    let long_key = "k".repeat(KEY_BYTES_MAX + 1);
    let big_value = json!({ "value": "v".repeat(VALUE_BYTES_MAX + 1) }).to_string();
    let huge = format!("{{\"value\": \"{}\"}}", "v".repeat(2 * 1024 * 1024));
    let too_many_ops =
        json!({ "ops": vec![json!({"op": "incr", "key": "n", "delta": 1}); OPS_MAX + 1] }).to_string();
    let cases = vec![
        // Registers.
        case(M::PUT, "/v1/registers/k", "{not json").expect(bad, "bad_json", ""),
        case(M::PUT, "/v1/registers/k", "").expect(bad, "bad_json", ""),
        case(M::PUT, "/v1/registers/k", r#"{"value": 5}"#).expect(bad, "bad_request", "value"),
        case(M::PUT, "/v1/registers/k", r#"["value"]"#).expect(bad, "bad_request", ""),
        case(M::PUT, "/v1/registers/k", r#"{"valeu": "x"}"#).expect(bad, "bad_request", "valeu"),
        case(M::PUT, "/v1/registers/k", "{}").expect(bad, "bad_value", "missing value"),
        case(M::PUT, "/v1/registers/k", r#"{"value": "a", "value_base64": "YQ=="}"#).expect(
            bad,
            "bad_value",
            "not both",
        ),
        case(M::PUT, "/v1/registers/k", r#"{"value_base64": "*not base64*"}"#).expect(
            bad,
            "bad_value",
            "base64",
        ),
        case(M::PUT, "/v1/registers/k", big_value.clone()).expect(bad, "bad_value", "over the limit"),
        case(M::PUT, "/v1/registers/", r#"{"value": "x"}"#).expect(bad, "bad_key", "empty"),
        case(M::GET, "/v1/registers/", "").expect(bad, "bad_key", "empty"),
        case(M::PUT, format!("/v1/registers/{long_key}"), r#"{"value": "x"}"#).expect(
            bad,
            "bad_key",
            "over the limit",
        ),
        case(M::GET, format!("/v1/registers/{long_key}"), "").expect(bad, "bad_key", "over the limit"),
        case(M::GET, "/v1/registers/%FF%FE", "").expect(bad, "bad_path", ""),
        case(M::PUT, "/v1/registers/k", huge.clone()).expect(
            S::PAYLOAD_TOO_LARGE,
            "too_large",
            "over the limit",
        ),
        case(M::PUT, "/v1/registers/k", r#"{"value": "x"}"#).content_type(None).expect(
            S::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "application/json",
        ),
        case(M::PUT, "/v1/registers/k", r#"{"value": "x"}"#).content_type(Some("text/plain")).expect(
            S::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "application/json",
        ),
        case(M::POST, "/v1/registers/k", r#"{"value": "x"}"#).expect(
            S::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "POST",
        ),
        // Counters.
        case(M::POST, "/v1/counters/n/incr", r#"{"delta": "five"}"#).expect(bad, "bad_request", "delta"),
        case(M::POST, "/v1/counters/n/incr", r#"{"delta": 1.5}"#).expect(bad, "bad_request", "delta"),
        case(M::POST, "/v1/counters/n/incr", r#"{"delta": 9223372036854775808}"#).expect(
            bad,
            "bad_request",
            "delta",
        ),
        case(M::POST, "/v1/counters/n/incr", "{}").expect(bad, "bad_request", "delta"),
        case(M::POST, "/v1/counters/n/incr", "[1,").expect(bad, "bad_json", ""),
        case(M::POST, "/v1/counters//incr", r#"{"delta": 1}"#).expect(bad, "bad_key", "empty"),
        case(M::PUT, "/v1/counters/n", r#"{"delta": 1}"#).expect(
            S::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "PUT",
        ),
        // Sets.
        case(M::POST, "/v1/sets/s/add", "{}").expect(bad, "bad_value", "missing element"),
        case(M::POST, "/v1/sets/s/add", r#"{"element": ["a"]}"#).expect(bad, "bad_request", "element"),
        case(M::POST, "/v1/sets/s/remove", r#"{"element_base64": "%%%"}"#).expect(bad, "bad_value", "base64"),
        case(M::POST, "/v1/sets/s/frob", r#"{"element": "a"}"#).expect(
            S::NOT_FOUND,
            "not_found",
            "/v1/sets/s/frob",
        ),
        // Batches.
        case(M::POST, "/v1/batch", r#"{"ops": []}"#).expect(bad, "bad_batch", "no ops"),
        case(M::POST, "/v1/batch", too_many_ops).expect(bad, "bad_batch", "over the limit"),
        case(M::POST, "/v1/batch", r#"{"ops": [{"op": "frob", "key": "a"}]}"#).expect(
            bad,
            "bad_request",
            "frob",
        ),
        case(M::POST, "/v1/batch", r#"{"ops": [{"op": "put", "key": "", "value": "x"}]}"#)
            .expect(bad, "bad_key", "ops[0]"),
        case(
            M::POST,
            "/v1/batch",
            r#"{"ops": [{"op": "incr", "key": "a", "delta": 1}, {"op": "add", "key": "s"}]}"#,
        )
        .expect(bad, "bad_value", "ops[1]"),
        case(M::POST, "/v1/batch", r#"{"ops": "put"}"#).expect(bad, "bad_request", "ops"),
        // Events and queries.
        case(M::GET, "/v1/events/xyz", "").expect(bad, "bad_id", "64 hex digits"),
        case(M::GET, format!("/v1/events/{}", "0".repeat(63)), "").expect(bad, "bad_id", "64 hex digits"),
        case(M::GET, format!("/v1/events/{}", "0".repeat(64)), "").expect(
            S::NOT_FOUND,
            "not_found",
            "no accepted event",
        ),
        case(M::GET, "/v1/events?limit=0", "").expect(bad, "bad_query", "limit"),
        case(M::GET, "/v1/events?limit=100000", "").expect(bad, "bad_query", "limit"),
        case(M::GET, "/v1/events?limit=abc", "").expect(bad, "bad_query", ""),
        case(M::GET, "/v1/events?after=-1", "").expect(bad, "bad_query", ""),
        case(M::GET, "/v1/events?colour=red", "").expect(bad, "bad_query", "colour"),
        case(M::GET, "/v1/events?author=nobody", "").expect(bad, "bad_query", "unknown author"),
        case(M::GET, "/v1/keys?kind=tree", "").expect(bad, "bad_query", ""),
        case(M::GET, "/v1/keys?limit=0", "").expect(bad, "bad_query", "limit must be 1 to"),
        case(M::GET, "/v1/keys?limit=5001", "").expect(bad, "bad_query", "limit must be 1 to"),
        case(M::GET, "/v1/keys?after=nocolon", "").expect(bad, "bad_query", "KIND:BASE64URL"),
        case(M::GET, "/v1/keys?after=tree:AA", "").expect(bad, "bad_query", "no key kind"),
        case(M::GET, "/v1/keys?after=register:%25%25", "").expect(bad, "bad_query", "not base64"),
        case(M::GET, format!("/v1/keys?after=register:{}", "A".repeat(4000)), "").expect(
            bad,
            "bad_query",
            "longer than any key",
        ),
        // Routes and methods.
        case(M::GET, "/v1/nope", "").expect(S::NOT_FOUND, "not_found", "/v1/nope"),
        case(M::GET, "/", "").expect(S::NOT_FOUND, "not_found", "no such route"),
        case(M::GET, "/v2/status", "").expect(S::NOT_FOUND, "not_found", "/v2/status"),
        case(M::DELETE, "/v1/status", "").expect(S::METHOD_NOT_ALLOWED, "method_not_allowed", "DELETE"),
        case(M::POST, "/v1/evidence", "{}").expect(S::METHOD_NOT_ALLOWED, "method_not_allowed", "POST"),
    ];
    for case in cases {
        check(&c, case);
    }

    // Nothing was written, nothing was lost, and the daemon still works.
    let status = c.status(0);
    assert_eq!(status["n_events"], 1, "{status}");
    assert_eq!(status["own_seq"], 1, "{status}");
    assert_eq!(c.register_value(0, "before").as_deref(), Some("kept"));
    assert_eq!(c.put(0, "after", "works")["seq"], 2);
    assert_eq!(c.register_value(0, "after").as_deref(), Some("works"));
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn cairnd_with(args: &[&str], config: &Path) -> Run {
    let mut child = Command::new(cairnd())
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("CAIRN_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cairnd starts");
    // Read the pipes on threads, so that a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    });
    let status = wait_exit(&mut child, DEADLINE);
    Run { code: status.and_then(|s| s.code()), stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

#[test]
fn check_config_names_what_is_broken() {
    let c = Cluster::write(2, common::TIMING);
    let node = &c.nodes[0];
    let original = std::fs::read_to_string(&node.config).unwrap();
    let run = cairnd_with(&["check-config"], &node.config);
    assert_eq!(run.code, Some(0), "a good config: {}", run.stderr);
    assert!(run.stdout.starts_with("ok: node"), "{}", run.stdout);

    let dir = c.dir();
    let other_key = dir.join("other.key");
    cairn_crypto::SecretKey::generate().write_file(&other_key).unwrap();
    let open_key = dir.join("open.key");
    std::fs::copy(&node.key_file, &open_key).unwrap();
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let missing_key = dir.join("missing.key");
    let foreign_genesis = dir.join("foreign-genesis.toml");
    std::fs::write(
        &foreign_genesis,
        format!("[[member]]\nname = \"zed\"\nkey = \"{}\"\n", cairn_crypto::SecretKey::generate().public()),
    )
    .unwrap();
    let broken_genesis = dir.join("broken-genesis.toml");
    std::fs::write(&broken_genesis, "[[member]]\nname = \"zed\"\nkey = \"not hex\"\n").unwrap();
    let key_line = format!("key_file = {:?}\n", node.key_file);
    let genesis_line = format!("genesis_file = {:?}\n", dir.join("genesis.toml"));
    let listen_line = format!("listen = \"{}\"\n", node.address);
    let peer_name = format!("name = {:?}\n", c.nodes[1].name);
    let peer_address = format!("address = \"{}\"\n", c.nodes[1].address);
    assert!(
        [&key_line, &genesis_line, &listen_line, &peer_name, &peer_address]
            .iter()
            .all(|l| original.contains(*l))
    );

    // (what, the edited config, phrases the error must contain)
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        ("an unknown field", format!("colour = \"blue\"\n{original}"), vec!["colour".into()]),
        (
            "an unknown timing",
            original.replace("[timing]\n", "[timing]\nsync_every = \"1s\"\n"),
            vec!["sync_every".into()],
        ),
        (
            "a bad duration",
            original.replace("sync_interval = \"200ms\"", "sync_interval = \"soon\""),
            vec!["sync_interval".into()],
        ),
        (
            "a bad listen address",
            original.replace(&listen_line, "listen = \"nowhere\"\n"),
            vec!["listen".into()],
        ),
        (
            "a wrong type",
            original.replace("new_cluster = true", "new_cluster = \"yes\""),
            vec!["new_cluster".into()],
        ),
        (
            "a zero limit",
            format!("{original}\n[limits]\npeer_events_per_sec = 0\n"),
            vec!["limits.peer_events_per_sec".into()],
        ),
        (
            "a missing key file",
            original.replace(&key_line, &format!("key_file = {missing_key:?}\n")),
            vec!["key_file".into(), missing_key.display().to_string()],
        ),
        (
            "a key file of mode 0644",
            original.replace(&key_line, &format!("key_file = {open_key:?}\n")),
            vec![open_key.display().to_string(), "0644".into(), "chmod 600".into()],
        ),
        (
            "a genesis without this key",
            original.replace(&genesis_line, &format!("genesis_file = {foreign_genesis:?}\n")),
            vec!["not a member of the genesis".into(), foreign_genesis.display().to_string()],
        ),
        (
            "a key that is not in the genesis",
            original.replace(&key_line, &format!("key_file = {other_key:?}\n")),
            vec!["not a member of the genesis".into(), other_key.display().to_string()],
        ),
        (
            "a malformed genesis",
            original.replace(&genesis_line, &format!("genesis_file = {broken_genesis:?}\n")),
            vec![broken_genesis.display().to_string(), "member[0]".into()],
        ),
        (
            "a missing genesis",
            original.replace(&genesis_line, "genesis_file = \"/nonexistent/genesis.toml\"\n"),
            vec!["/nonexistent/genesis.toml".into()],
        ),
        (
            "a peer name not in the genesis",
            original.replace(&peer_name, "name = \"mallory\"\n"),
            vec!["peers[0].name".into(), "mallory".into(), "not a member of the genesis".into()],
        ),
        (
            "a bad peer address",
            original.replace(&peer_address, "address = \"nowhere\"\n"),
            vec!["peers[0].address".into()],
        ),
        (
            "a peer that is this node",
            original.replace(&peer_name, &format!("name = {:?}\n", node.name)),
            vec!["peers[0]".into(), "this node itself".into()],
        ),
        ("not TOML", "key_file = \n".to_owned(), vec![node.config.display().to_string()]),
        (
            "a log level that is not a level",
            original.replace("log_level = \"info\"", "log_level = \"loud\""),
            vec![
                node.config.display().to_string(),
                "log_level".into(),
                "\"loud\"".into(),
                "off, error, warn, info, debug, trace".into(),
            ],
        ),
    ];
    for (what, text, phrases) in cases {
        assert_ne!(text, original, "{what}: the edit did not apply");
        std::fs::write(&node.config, &text).unwrap();
        let run = cairnd_with(&["check-config"], &node.config);
        assert_eq!(run.code, Some(1), "{what}: stdout {:?} stderr {:?}", run.stdout, run.stderr);
        assert!(run.stdout.is_empty(), "{what}: {}", run.stdout);
        assert!(run.stderr.starts_with("cairnd: "), "{what}: {}", run.stderr);
        for phrase in phrases {
            assert!(run.stderr.contains(&phrase), "{what}: {phrase:?} not in {}", run.stderr);
        }
    }
    let missing_config = dir.join("missing.toml");
    let run = cairnd_with(&["check-config"], &missing_config);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains(&missing_config.display().to_string()), "{}", run.stderr);

    // `run` checks the same way before it opens anything.
    std::fs::write(&node.config, original.replace(&peer_name, "name = \"mallory\"\n")).unwrap();
    let run = cairnd_with(&["run"], &node.config);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("peers[0].name"), "{}", run.stderr);
    assert!(!node.socket.exists());
}

#[test]
fn run_refuses_a_store_of_another_cluster() {
    // A one-node cluster leaves its store behind.
    let mut first = Cluster::start(1);
    first.put(0, "k", "v");
    first.stop(0);

    // A node of another cluster pointed at that store refuses to start, and leaves it alone.
    let second = Cluster::write(1, common::TIMING);
    let store_dir = first.nodes[0].data_dir.clone();
    second.edit_config(0, |text| {
        let line = format!("data_dir = {:?}\n", second.nodes[0].data_dir);
        assert!(text.contains(&line), "{text}");
        text.replace(&line, &format!("data_dir = {store_dir:?}\n"))
    });
    let run = cairnd_with(&["run"], &second.nodes[0].config);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    for phrase in ["cannot use the store", "belongs to cluster", &store_dir.display().to_string()] {
        assert!(run.stderr.contains(phrase), "{phrase:?} not in {}", run.stderr);
    }
    assert!(!second.nodes[0].socket.exists());

    // The store is untouched: its own node starts on it and has its write.
    first.restart(0);
    assert_eq!(first.register_value(0, "k").as_deref(), Some("v"));
}
