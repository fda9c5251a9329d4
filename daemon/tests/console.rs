//! The web console on real processes: every refusal of its guard, over plain HTTP/1.1 on its
//! TCP port; then the pages in a real headless Chromium driven through WebDriver
//! (`chromedriver`), against a 3-node cluster: a write on another node appears on the page
//! without a reload, a write from the page's form reaches the other nodes, and a screenshot of
//! each page is saved (the test prints where). The browser test says `SKIPPED` only when
//! `chromium` or `chromedriver` is not installed (`.ci/run` installs them where it can).

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Cluster, DEADLINE, TIMING, skip, wait_until};
use serde_json::{Value, json};

/// The console's policy, as every answer must carry it: written out here, so that a change of
/// the policy in the code is a change of this test too.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                   base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The most bytes one answer of the console or of chromedriver may take here (a screenshot
/// is the largest: a few hundred KiB of base64).
const ANSWER_BYTES_MAX: u64 = 32 * 1024 * 1024;

/// How long one HTTP exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);

// ---- a tiny HTTP/1.1 client -----------------------------------------------------------------

/// One answer: status, headers (names lowercase) and body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Asserts the security headers every console answer carries.
    fn assert_hardened(&self, what: &str) {
        assert_eq!(self.header("content-security-policy"), Some(CSP), "{what}: {:?}", self.headers);
        assert_eq!(self.header("x-content-type-options"), Some("nosniff"), "{what}");
        assert_eq!(self.header("referrer-policy"), Some("no-referrer"), "{what}");
        assert_eq!(self.header("cache-control"), Some("no-store"), "{what}");
        assert_eq!(self.header("set-cookie"), None, "{what}: the console sets no cookie");
    }

    /// Asserts the status and the error code of a refusal, and its security headers.
    fn assert_refused(&self, status: u16, code: &str, what: &str) {
        assert_eq!(self.status, status, "{what}: {}", self.body);
        assert_eq!(self.json()["error"]["code"], code, "{what}: {}", self.body);
        self.assert_hardened(what);
    }
}

/// Sends one request as written (`head` is the request line and headers, without the blank
/// line) and reads the whole answer; the connection is closed after it.
fn exchange(address: SocketAddr, head: &str, body: &[u8]) -> Answer {
    let head_only = head.starts_with("HEAD ");
    let mut stream = TcpStream::connect(address).unwrap_or_else(|e| panic!("connect {address}: {e}"));
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT)).expect("a read timeout");
    let mut request = format!("{head}\r\nConnection: close\r\n");
    if !body.is_empty() {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send the request");
    stream.write_all(body).expect("send the body");
    // Read until the head is complete, then the body by its length (chromedriver keeps the
    // connection open whatever `Connection: close` says), by its chunks, or to the end.
    let mut raw = Vec::new();
    let mut buffer = [0u8; 64 * 1024];
    let split = loop {
        if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break split;
        }
        let n = stream.read(&mut buffer).expect("read the answer's head");
        assert!(n > 0 && (raw.len() as u64) < ANSWER_BYTES_MAX, "the answer ended before its head");
        raw.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let status: u16 = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let length =
        headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse::<usize>().ok());
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    if head_only {
        // A HEAD answer has the head only, whatever its Content-Length says.
        body.clear();
    } else if let Some(length) = length {
        while body.len() < length {
            let n = stream.read(&mut buffer).expect("read the answer's body");
            assert!(n > 0, "the answer ended before its body");
            body.extend_from_slice(&buffer[..n]);
        }
        body.truncate(length);
    } else {
        stream.take(ANSWER_BYTES_MAX).read_to_end(&mut body).expect("read the answer's body");
    }
    if chunked {
        body = dechunk(&body);
    }
    Answer { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
}

/// The body of a chunked answer.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = raw.windows(2).position(|w| w == b"\r\n") else { return out };
        let size =
            std::str::from_utf8(&raw[..end]).ok().and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let Some(size) = size.filter(|&n| n > 0 && raw.len() >= end + 2 + n) else { return out };
        out.extend_from_slice(&raw[end + 2..end + 2 + size]);
        raw = raw.get(end + 4 + size..).unwrap_or_default();
    }
}

// ---- a node with its console ----------------------------------------------------------------

/// A running cluster whose node 0 serves the console, and how to reach it.
struct Console {
    cluster: Cluster,
    address: SocketAddr,
    url: String,
    token: String,
}

impl Console {
    /// A cluster of `n` nodes, node 0 with `[console] listen = "127.0.0.1:0"`, all connected.
    fn start(n: usize) -> Self {
        let mut cluster = Cluster::write(n, TIMING);
        cluster.edit_config(0, |text| format!("{text}\n[console]\nlisten = \"127.0.0.1:0\"\n"));
        cluster.spawn_all();
        cluster.wait_all_connected();
        let output = cluster.cairnctl(0, &["--json", "console-url"]);
        assert!(output.status.success(), "console-url: {}", common::output_text(&output));
        let answer: Value = serde_json::from_slice(&output.stdout).expect("console-url --json");
        let url = answer["url"].as_str().expect("a url").to_owned();
        let address: SocketAddr = answer["listen"].as_str().expect("listen").parse().expect("an address");
        let token = url.split_once("#token=").expect("the token in the fragment").1.to_owned();
        assert_eq!(url, format!("http://{address}/#token={token}"));
        assert_eq!(token.len(), 2 * cairn_daemon::console::TOKEN_BYTES);
        // The token file is private to the daemon's user.
        let file = answer["token_file"].as_str().expect("token_file");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(file).expect("the token file").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{file}");
        Self { cluster, address, url, token }
    }

    /// `METHOD path` with `Host` set to the console's address and `headers` added.
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}", self.address);
        for (name, value) in headers {
            head.push_str(&format!("\r\n{name}: {value}"));
        }
        exchange(self.address, &head, body.as_bytes())
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// The CSRF token, from an authenticated `GET /console/session`.
    fn csrf(&self) -> String {
        let answer = self.request("GET", "/console/session", &[("Authorization", &self.bearer())], "");
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()["csrf"].as_str().expect("csrf").to_owned()
    }
}

fn wrong_token(token: &str) -> String {
    let flipped = if token.starts_with('0') { "1" } else { "0" };
    format!("{flipped}{}", &token[1..])
}

// ---- the refusals ---------------------------------------------------------------------------

/// Every route of the console but the page's files, with a method it answers.
const ROUTES: [(&str, &str); 22] = [
    ("GET", "/v1/status"),
    ("GET", "/v1/health"),
    ("GET", "/v1/health/live"),
    ("GET", "/v1/peers"),
    ("GET", "/v1/members"),
    ("POST", "/v1/members/changes"),
    ("POST", "/v1/members/rotate"),
    ("GET", "/v1/keys"),
    ("GET", "/v1/registers/k"),
    ("PUT", "/v1/registers/k"),
    ("DELETE", "/v1/registers/k"),
    ("GET", "/v1/counters/k"),
    ("POST", "/v1/counters/k/incr"),
    ("GET", "/v1/sets/k"),
    ("POST", "/v1/sets/k/add"),
    ("POST", "/v1/batch"),
    ("GET", "/v1/events"),
    ("GET", "/v1/evidence"),
    ("GET", "/v1/metrics"),
    ("GET", "/v1/backup"),
    ("GET", "/v1/watch"),
    ("GET", "/console/session"),
];

#[test]
fn a_request_without_a_valid_token_is_refused_401() {
    let c = Console::start(1);
    let wrong = wrong_token(&c.token);
    let right_cookie = format!("cairn_console={}", c.token);
    let cases: [(&str, Vec<(&str, String)>); 6] = [
        ("no token", vec![]),
        ("a wrong bearer token", vec![("Authorization", format!("Bearer {wrong}"))]),
        ("a malformed bearer token", vec![("Authorization", "Bearer nonsense".to_owned())]),
        // A cookie is no credential here, whatever it holds.
        ("the token as a cookie", vec![("Cookie", right_cookie.clone())]),
        ("the token as a bare cookie", vec![("Cookie", c.token.clone())]),
        ("the token in another scheme", vec![("Authorization", format!("Basic {}", c.token))]),
    ];
    for (method, path) in ROUTES {
        for (what, headers) in &cases {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let answer = c.request(method, path, &headers, "");
            answer.assert_refused(401, "unauthorized", &format!("{method} {path} with {what}"));
            assert!(answer.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")));
        }
    }
    // HEAD and OPTIONS, a doubled slash and an escaped path: refused too.
    for (method, path) in [
        ("HEAD", "/v1/status"),
        ("OPTIONS", "/v1/status"),
        ("OPTIONS", "/"),
        ("OPTIONS", "*"),
        ("GET", "//v1/status"),
        ("GET", "/v1/%62ackup"),
        ("GET", "/v1/st%61tus"),
        ("GET", "//app.js/../v1/status"),
    ] {
        let answer = c.request(method, path, &[("Cookie", right_cookie.as_str())], "");
        assert_eq!(answer.status, 401, "{method} {path}: {}", answer.body);
        answer.assert_hardened(&format!("{method} {path}"));
    }
    // The token is accepted as a bearer.
    let answer = c.request("GET", "/v1/status", &[("Authorization", &c.bearer())], "");
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.assert_hardened("GET /v1/status");
    assert_eq!(answer.json()["name"], "alice");
    let health = c.request("GET", "/v1/health", &[("Authorization", &c.bearer())], "");
    assert!(health.status == 200 || health.status == 503, "{}", health.body);
    health.assert_hardened("GET /v1/health");
}

#[test]
fn the_session_gives_the_csrf_token_under_the_bearer_and_no_cookie() {
    let c = Console::start(1);
    let answer = c.request("GET", "/console/session", &[("Authorization", &c.bearer())], "");
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.assert_hardened("GET /console/session");
    let csrf = answer.json()["csrf"].as_str().expect("csrf").to_owned();
    assert_eq!(csrf.len(), 64);
    assert_ne!(csrf, c.token, "the CSRF token is not the token");
    // There is no exchange of the token for a cookie any more.
    let csrf_header = [("Authorization", c.bearer()), ("X-Cairn-CSRF", csrf.clone())];
    let headers: Vec<(&str, &str)> = csrf_header.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let answer = c.request("POST", "/console/session", &headers, "");
    assert_eq!(answer.status, 405, "{}", answer.body);
    answer.assert_hardened("POST /console/session");
}

#[test]
fn a_foreign_host_is_refused_421() {
    let c = Console::start(1);
    let port = c.address.port();
    let auth = c.bearer();
    for host in [
        format!("evil.example:{port}"),
        "127.0.0.1".to_owned(),
        format!("127.0.0.1:{}", port + 1),
        format!("localhost.evil.example:{port}"),
        format!("localhost.:{port}"),
        format!("127.0.0.1.:{port}"),
    ] {
        for path in ["/", "/app.js", "/v1/health", "/v1/status"] {
            let head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}");
            let answer = exchange(c.address, &head, b"");
            answer.assert_refused(421, "misdirected", &format!("Host {host} {path}"));
            // The answer does not tell a stranger which names would work.
            assert!(!answer.body.contains(&format!("localhost:{port}")), "{}", answer.body);
            assert!(!answer.body.contains(&c.address.to_string()), "{}", answer.body);
        }
    }
    // An absolute request target naming another host, and a request without a Host.
    let head = format!(
        "GET http://evil.example:{port}/v1/status HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}",
        c.address
    );
    exchange(c.address, &head, b"").assert_refused(421, "misdirected", "an absolute target");
    let head = format!("GET /v1/status HTTP/1.0\r\nAuthorization: {auth}");
    exchange(c.address, &head, b"").assert_refused(421, "misdirected", "no Host");
    // The loopback names at the console's port are all accepted.
    for host in [
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        format!("[::1]:{port}"),
        format!("127.0.0.1:{port}"),
    ] {
        let head = format!("GET /v1/status HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}");
        assert_eq!(exchange(c.address, &head, b"").status, 200, "Host {host}");
    }
}

/// A request refused: what it is, the refusal's code, and its headers.
type Refused<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);

#[test]
fn a_write_without_the_csrf_token_or_from_another_origin_or_site_is_refused_403() {
    let c = Console::start(1);
    let auth = c.bearer();
    let csrf = c.csrf();
    let json = ("Content-Type", "application/json");
    let body = r#"{"value":"from the console"}"#;
    let own_origin = format!("http://{}", c.address);
    let wrong_csrf = wrong_token(&csrf);
    let https_origin = format!("https://{}", c.address);
    let bearer = ("Authorization", auth.as_str());
    let with_csrf = ("X-Cairn-CSRF", csrf.as_str());
    let refused: [Refused<'_>; 9] = [
        ("a bearer, no CSRF header", "csrf", vec![bearer, json]),
        ("a wrong CSRF header", "csrf", vec![bearer, json, ("X-Cairn-CSRF", wrong_csrf.as_str())]),
        ("the token as the CSRF header", "csrf", vec![bearer, json, ("X-Cairn-CSRF", c.token.as_str())]),
        (
            "the CSRF header from another origin",
            "cross_origin",
            vec![bearer, json, with_csrf, ("Origin", "http://evil.example")],
        ),
        ("an opaque origin", "cross_origin", vec![bearer, json, with_csrf, ("Origin", "null")]),
        (
            "the console's origin over https",
            "cross_origin",
            vec![bearer, json, with_csrf, ("Origin", https_origin.as_str())],
        ),
        (
            "Sec-Fetch-Site: cross-site",
            "cross_site",
            vec![bearer, json, with_csrf, ("Sec-Fetch-Site", "cross-site")],
        ),
        (
            "Sec-Fetch-Site: same-site",
            "cross_site",
            vec![bearer, json, with_csrf, ("Sec-Fetch-Site", "same-site")],
        ),
        (
            "Sec-Fetch-Site: nonsense",
            "cross_site",
            vec![bearer, json, with_csrf, ("Sec-Fetch-Site", "nonsense")],
        ),
    ];
    for (what, code, headers) in &refused {
        for (method, path) in [
            ("PUT", "/v1/registers/csrf"),
            ("POST", "/v1/counters/csrf/incr"),
            ("DELETE", "/v1/registers/csrf"),
            ("POST", "/v1/members/rotate"),
        ] {
            let answer = c.request(method, path, headers, body);
            answer.assert_refused(403, code, &format!("{method} {path} with {what}"));
        }
    }
    // A read from another origin or another site (another port of this host is same-site)
    // is refused too, the bearer notwithstanding; so are the page's files.
    let answer = c.request("GET", "/v1/status", &[bearer, ("Origin", "http://evil.example")], "");
    answer.assert_refused(403, "cross_origin", "a read from another origin");
    for site in ["cross-site", "same-site"] {
        for path in ["/v1/status", "/", "/app.js"] {
            let answer = c.request("GET", path, &[bearer, ("Sec-Fetch-Site", site)], "");
            answer.assert_refused(403, "cross_site", &format!("GET {path} with Sec-Fetch-Site: {site}"));
        }
    }
    for site in ["same-origin", "none"] {
        let answer = c.request("GET", "/v1/status", &[bearer, ("Sec-Fetch-Site", site)], "");
        assert_eq!(answer.status, 200, "Sec-Fetch-Site: {site}: {}", answer.body);
    }
    // Nothing was written.
    assert_eq!(c.cluster.register_value(0, "csrf"), None);
    // With the CSRF header, from the console's own origin: written.
    let headers =
        [bearer, json, with_csrf, ("Origin", own_origin.as_str()), ("Sec-Fetch-Site", "same-origin")];
    let answer = c.request("PUT", "/v1/registers/csrf", &headers, body);
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.assert_hardened("PUT");
    assert_eq!(c.cluster.register_value(0, "csrf").as_deref(), Some("from the console"));
}

#[test]
fn the_token_and_the_backup_are_not_served_on_the_console() {
    let c = Console::start(1);
    let auth = c.bearer();
    for path in ["/v1/console", "/v1/backup", "/v1/%62ackup", "//v1/backup", "/v1//backup", "/V1/BACKUP"] {
        let answer = c.request("GET", path, &[("Authorization", &auth)], "");
        answer.assert_refused(404, "not_found", path);
        assert!(!answer.body.contains(&c.token), "{path} gave the token away");
        c.request("GET", path, &[], "").assert_refused(
            401,
            "unauthorized",
            &format!("{path} without a token"),
        );
    }
    // On the socket, `/v1/console` answers (that is how console-url got the URL above).
    let answer = c.cluster.get(0, "/v1/console");
    assert_eq!(answer["url"], c.url.as_str());
}

#[test]
fn watch_streams_beyond_the_cap_are_refused_503() {
    let c = Console::start(1);
    let max = cairn_daemon::console::CONSOLE_WATCH_STREAMS_MAX;
    let open = |_| {
        let mut stream = TcpStream::connect(c.address).expect("connect");
        stream.set_read_timeout(Some(EXCHANGE_TIMEOUT)).expect("a read timeout");
        let request =
            format!("GET /v1/watch HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n\r\n", c.address, c.bearer());
        stream.write_all(request.as_bytes()).expect("send");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(stream.read(&mut byte).expect("read the head"), 1, "the stream ended");
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
        stream
    };
    let streams: Vec<TcpStream> = (0..max).map(open).collect();
    let answer = c.request("GET", "/v1/watch", &[("Authorization", &c.bearer())], "");
    answer.assert_refused(503, "busy", "one watch stream too many");
    // Other requests are still served, and a closed stream frees its slot.
    assert_eq!(c.request("GET", "/v1/status", &[("Authorization", &c.bearer())], "").status, 200);
    drop(streams);
    let freed = wait_until(Instant::now() + DEADLINE, || {
        let mut stream = TcpStream::connect(c.address).expect("connect");
        stream.set_read_timeout(Some(EXCHANGE_TIMEOUT)).expect("a read timeout");
        let request =
            format!("GET /v1/watch HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n\r\n", c.address, c.bearer());
        stream.write_all(request.as_bytes()).expect("send");
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
    });
    assert!(freed, "no watch stream could be opened after the others closed");
}

/// Every `//` in `text` that begins a scheme-relative or absolute address (after a quote, a
/// parenthesis, `=` or `:`), with some context.
fn addresses_elsewhere(text: &str) -> Vec<String> {
    text.match_indices("//")
        .filter(|(idx, _)| {
            text[..*idx].chars().next_back().is_some_and(|c| matches!(c, '"' | '\'' | '`' | '(' | '=' | ':'))
        })
        .map(|(idx, _)| text[idx.saturating_sub(20)..(idx + 30).min(text.len())].to_owned())
        .collect()
}

#[test]
fn the_page_is_strict_and_self_contained() {
    let c = Console::start(1);
    for (path, content_type) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/app.css", "text/css"),
        ("/favicon.svg", "image/svg+xml"),
    ] {
        let answer = c.request("GET", path, &[], "");
        assert_eq!(answer.status, 200, "{path}");
        assert!(answer.header("content-type").is_some_and(|t| t.starts_with(content_type)), "{path}");
        answer.assert_hardened(path);
        assert_eq!(answer.header("x-frame-options"), Some("DENY"));
        // Nothing comes from elsewhere: no absolute or scheme-relative address, no CSS
        // `url(` or `@import` (the SVG names its XML namespace, which loads nothing).
        let body = if path == "/favicon.svg" {
            answer.body.replace("xmlns=\"http://www.w3.org/2000/svg\"", "")
        } else {
            answer.body.clone()
        };
        let elsewhere = addresses_elsewhere(&body);
        assert!(elsewhere.is_empty(), "{path} names addresses elsewhere: {elsewhere:?}");
        for word in ["http:", "https:", "url(", "@import"] {
            assert!(!body.contains(word), "{path} holds {word:?}");
        }
        // A HEAD of the page's files answers too.
        assert_eq!(c.request("HEAD", path, &[], "").status, 200, "HEAD {path}");
    }
    assert_eq!(addresses_elsewhere("a = '//evil.example/x'"), ["a = '//evil.example/x'"]);
    assert_eq!(addresses_elsewhere("x(); // a comment"), Vec::<String>::new());
    let page = c.request("GET", "/", &[], "").body;
    // No inline script or style: the policy would block them, and they are not there.
    assert!(!page.contains("<script>") && !page.contains("style=") && !page.contains("<style"), "{page}");
    assert!(page.contains(r#"<script src="/app.js" defer></script>"#));
    let script = c.request("GET", "/app.js", &[], "").body;
    assert!(
        !script.contains("innerHTML") && !script.contains("eval("),
        "the page builds no markup from text"
    );
    // The page keeps the token out of cookies and sends it as a bearer.
    assert!(
        !script.contains("document.cookie") && !script.contains("new EventSource"),
        "no cookie, no EventSource"
    );
    assert!(script.contains("credentials: 'omit'") && script.contains("'Bearer '"));
}

// ---- connections ----------------------------------------------------------------------------

/// Opens a connection and sends the first line of a request, and no more.
fn half_request(address: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(address).unwrap_or_else(|e| panic!("connect {address}: {e}"));
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT)).expect("a read timeout");
    stream.write_all(b"GET / HTTP/1.1\r\n").expect("send half a request");
    stream
}

#[test]
fn a_half_sent_request_does_not_hold_the_shutdown() {
    let mut c = Console::start(1);
    let half = half_request(c.address);
    // A whole request on a later connection is answered: the half one was accepted before it.
    assert_eq!(c.request("GET", "/", &[], "").status, 200);
    // SIGTERM: the node exits with status 0 within the stop deadline, the half request
    // notwithstanding.
    c.cluster.stop(0);
    drop(half);
}

#[test]
fn connections_beyond_the_cap_wait_and_half_requests_time_out() {
    let c = Console::start(1);
    let started = Instant::now();
    let mut halves: Vec<TcpStream> =
        (0..cairn_daemon::console::CONSOLE_CONNECTIONS_MAX).map(|_| half_request(c.address)).collect();
    // One connection more waits in the backlog until a slot frees: the half requests hold
    // every slot until their header read timeout closes them.
    let answer = c.request("GET", "/", &[], "");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let waited = started.elapsed();
    assert!(
        waited >= cairn_daemon::console::CONSOLE_HEADER_READ_TIMEOUT,
        "a connection beyond the cap was served after {waited:?}, before any half request timed out"
    );
    // Every half request was closed by the console (perhaps with a 408), not left open.
    for (i, half) in halves.iter_mut().enumerate() {
        let mut rest = Vec::new();
        let read = half.read_to_end(&mut rest);
        assert!(read.is_ok(), "half request {i} was not closed: {read:?}");
        assert!(rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"), "half request {i}: {rest:?}");
    }
}

// ---- the browser ----------------------------------------------------------------------------

/// Where the screenshots go: `console-screenshots/` in the target directory.
fn screenshot_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("console-screenshots")
}

/// The first of `names` on the PATH.
fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file()))
}

/// The browser window's width, in CSS pixels.
const WINDOW_WIDTH: u64 = 1360;
/// The tallest screenshot taken.
const SCREENSHOT_HEIGHT_MAX: u64 = 4000;

/// A chromedriver process and one browser session; both end on drop.
struct Browser {
    driver: Child,
    address: SocketAddr,
    session: String,
}

impl Browser {
    fn start(chromedriver: &Path, chromium: &Path, profile: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let mut browser = Self { driver, address, session: String::new() };
        let ready = wait_until(Instant::now() + DEADLINE, || {
            TcpStream::connect(address).is_ok()
                && browser.call("GET", "/status", None)["value"]["ready"] == true
        });
        assert!(ready, "chromedriver did not get ready within {DEADLINE:?}");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_str().expect("a UTF-8 path"),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1360,1000", "--hide-scrollbars",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let answer = browser.call("POST", "/session", Some(&capabilities));
        browser.session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {answer}"))
            .to_owned();
        browser
    }

    /// One WebDriver command; its JSON answer.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}", self.address);
        if !body.is_empty() {
            head.push_str("\r\nContent-Type: application/json");
        }
        exchange(self.address, &head, body.as_bytes()).json()
    }

    fn session_call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let answer = self.call(method, &format!("/session/{}{path}", self.session), body);
        assert!(answer["value"]["error"].is_null(), "WebDriver {method} {path}: {answer}");
        answer["value"].clone()
    }

    fn open(&self, url: &str) {
        self.session_call("POST", "/url", Some(&json!({ "url": url })));
    }

    /// Runs `script` (a function body) in the page; what it returns.
    fn script(&self, script: &str) -> Value {
        self.session_call("POST", "/execute/sync", Some(&json!({ "script": script, "args": [] })))
    }

    /// Waits until `script` returns `true`; panics naming `what` (and the page's text) at the
    /// deadline.
    fn wait_for(&self, what: &str, script: &str) {
        if !wait_until(Instant::now() + DEADLINE, || self.script(script) == true) {
            let text = self.script("return document.body.innerText");
            panic!(
                "timed out after {DEADLINE:?} waiting until {what}; the page shows:\n{}",
                text.as_str().unwrap_or_default()
            );
        }
    }

    /// Saves a screenshot of the whole page as `<dir>/<name>.png` (the window made as tall
    /// as the page, up to [`SCREENSHOT_HEIGHT_MAX`]); returns its path.
    fn screenshot(&self, dir: &Path, name: &str) -> PathBuf {
        let height =
            self.script("return Math.ceil(document.documentElement.scrollHeight)").as_u64().unwrap_or(1000);
        let rect = json!({ "width": WINDOW_WIDTH, "height": height.clamp(600, SCREENSHOT_HEIGHT_MAX) });
        self.session_call("POST", "/window/rect", Some(&rect));
        let encoded = self.session_call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("base64"))
            .expect("a base64 screenshot");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        common::say(&format!("console screenshot: {}", path.display()));
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.call("DELETE", &format!("/session/{}", self.session), None)
            }));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A JS string literal of `text`.
fn js(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

#[test]
fn the_console_in_chromium_shows_a_live_cluster() {
    let (Some(chromedriver), Some(chromium)) =
        (which(&["chromedriver"]), which(&["chromium", "chromium-browser", "google-chrome"]))
    else {
        skip(
            "the_console_in_chromium_shows_a_live_cluster: no chromium and chromedriver on the PATH (Debian: apt-get install chromium chromium-driver; .ci/run installs them as root)",
        );
        return;
    };
    let c = Console::start(3);
    // A node without `[console]` says so to `cairnctl console-url`.
    let off = c.cluster.cairnctl(1, &["console-url"]);
    assert!(
        !off.status.success() && common::output_text(&off).contains("console is off"),
        "{}",
        common::output_text(&off)
    );

    let profile = tempfile::Builder::new().prefix("cairn-chromium-").tempdir().expect("a profile dir");
    let shots = screenshot_dir();
    std::fs::create_dir_all(&shots).expect("the screenshot directory");
    let browser = Browser::start(&chromedriver, &chromium, profile.path());

    // The cluster at a glance: the two other nodes as connected peers, all three as authors
    // and seats.
    browser.open(&c.url);
    browser.wait_for(
        "the cluster page lists two connected peers",
        "return document.querySelectorAll('#peers tr.peer').length === 2 && \
         [...document.querySelectorAll('#peers tr.peer')].every(r => r.innerText.includes('connected'))",
    );
    // Each peer's lag, once a sync session with it has ended (0 in a quiet cluster).
    browser.wait_for(
        "the cluster page shows each peer's lag",
        "return [...document.querySelectorAll('#peers th')].some(th => th.innerText.trim() === 'Lag') && \
         [...document.querySelectorAll('#peers tr.peer')].every(r => /^[0-9]+$/.test(r.children[4].innerText.trim()))",
    );
    let text = browser.script("return document.getElementById('main').innerText");
    let text = text.as_str().expect("text");
    for name in ["alice", "bob", "carol"] {
        assert!(text.contains(name), "{name} is not on the cluster page:\n{text}");
    }
    // The token left the address bar at once, and lives in no cookie: the browser holds none
    // for the console, and the page's sessionStorage (per origin, per tab) keeps it.
    let href = browser.script("return location.href");
    assert!(!href.as_str().expect("href").contains("token"), "{href}");
    assert_eq!(browser.session_call("GET", "/cookie", None), json!([]), "the console set a cookie");
    assert_eq!(browser.script("return document.cookie"), "");
    assert_eq!(browser.script("return sessionStorage.getItem('cairn-console-token')"), c.token.as_str());
    // A reload keeps the session without the token in the address.
    browser.session_call("POST", "/refresh", Some(&json!({})));
    browser.wait_for(
        "the cluster page is back after a reload",
        "return document.querySelectorAll('#peers tr.peer').length === 2",
    );

    // The live document: a write on another node appears without a reload.
    browser.script("location.hash = '#/document'; window.cairnNoReload = true; return true");
    browser
        .wait_for("the watch stream is open", "return document.querySelector('#main .badge.live') !== null");
    c.cluster.put(2, "greeting", "hello from carol");
    browser.wait_for(
        "the page shows carol's write",
        "const row = document.querySelector('#document tbody tr[data-key=\"register:Z3JlZXRpbmc=\"]'); \
         return row !== null && row.innerText.includes('hello from carol')",
    );
    c.cluster.incr(1, "visits", 3);
    browser.wait_for(
        "the page shows bob's counter",
        "const row = document.querySelector('#document tbody tr[data-key=\"counter:dmlzaXRz\"]'); \
         return row !== null && row.innerText.includes('3')",
    );
    assert_eq!(browser.script("return window.cairnNoReload === true"), true, "the page was reloaded");
    // A write from the page's form (the CSRF path) reaches the other nodes.
    browser.script(&format!(
        "document.getElementById('write-key').value = {}; document.getElementById('write-value').value = {}; \
         document.querySelector('#write button').click(); return true",
        js("from-the-browser"),
        js("written in Chromium")
    ));
    c.cluster.wait_for("the page's write reached carol", |cluster| {
        cluster.register_value(2, "from-the-browser").as_deref() == Some("written in Chromium")
    });
    browser.wait_for(
        "the page shows its own write",
        "return document.getElementById('main').innerText.includes('written in Chromium')",
    );
    browser.screenshot(&shots, "document");

    // Carol's chain, three events long, each after the one before.
    c.cluster.put(2, "greeting", "hello again from carol");
    let ack = c.cluster.put(2, "weather", "sunny");
    c.cluster.wait_for("alice holds carol's third event", |cluster| {
        cluster.register_value(0, "weather").as_deref() == Some("sunny")
    });
    let carol = c.cluster.status(2)["key"].as_str().expect("carol's key").to_owned();
    browser.script(&format!("location.hash = '#/author/' + {}; return true", js(&carol)));
    browser.wait_for(
        "carol's chain is shown, unbroken",
        "const check = document.getElementById('chain-check'); \
         return check !== null && check.innerText.includes('Unbroken') && document.querySelectorAll('#chain tr.chain').length === 3",
    );
    browser.screenshot(&shots, "author");

    // Carol's last event, verified again by alice: its seq and lamport against the deps alice
    // holds (carol's seq 2 among them).
    let id = ack["id"].as_str().expect("the event id");
    browser.script(&format!("location.hash = '#/event/' + {}; return true", js(id)));
    browser.wait_for(
        "the event page shows every rule verified",
        "const verdict = document.getElementById('verdict'); \
         return verdict !== null && verdict.innerText.includes('Verified') && \
         [...document.querySelectorAll('#checks tr.check')].every(r => r.innerText.includes('pass'))",
    );
    let n_checks = browser.script("return document.querySelectorAll('#checks tr.check').length");
    assert_eq!(n_checks, json!(cairn_protocol::EventRule::ALL.len()));
    assert_eq!(browser.script("return window.cairnNoReload === true"), true, "the page was reloaded");
    browser.screenshot(&shots, "event");

    // Back to the cluster, now with events from every node.
    browser.script("location.hash = '#/cluster'; return true");
    browser.wait_for(
        "the cluster page counts alice's own write",
        "const own = [...document.querySelectorAll('.card')].find(c => c.innerText.includes('OWN SEQ') || c.innerText.includes('Own seq')); \
         return own !== undefined && own.innerText.includes('1') && document.querySelectorAll('#peers tr.peer').length === 2",
    );
    browser.screenshot(&shots, "cluster");

    // With a watch stream open on the console, the node still stops cleanly and in time on
    // SIGTERM: the stream ends with the shutdown.
    browser.script("location.hash = '#/document'; return true");
    browser.wait_for(
        "the watch stream is open again",
        "return document.querySelector('#main .badge.live') !== null",
    );
    let mut c = c;
    c.cluster.stop(0);
}
