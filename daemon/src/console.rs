//! The web console: a small page built into `cairnd` (`console/`: plain HTML, CSS and JS, no
//! framework, nothing fetched from elsewhere), served on a loopback TCP port when the config
//! has a `[console]` table, over the local API's own handlers ([`crate::api::router`]) behind
//! one guard.
//!
//! # What the guard refuses
//!
//! Every request, in this order (each refusal is a JSON error, as the API's are):
//!
//! 1. A `Host` header (or an absolute request target) that is not one of the configured names
//!    (the listen address, `localhost:PORT`, `127.0.0.1:PORT`, `[::1]:PORT`, `[console] hosts`;
//!    compared whole, so `localhost.:PORT` is another name): 421 `misdirected`. A page of
//!    another site whose name was made to resolve to 127.0.0.1 (DNS rebinding) sends its own
//!    name, so it is refused before anything else. The answer does not list the names.
//! 2. An `Origin` header that is not `http://` and one of those names: 403 `cross_origin`.
//! 3. A `Sec-Fetch-Site` header other than `same-origin` or `none` (the browser says the
//!    request comes from another site or another port): 403 `cross_site`.
//! 4. No valid token: 401 `unauthorized`. The token is [`TOKEN_BYTES`] random bytes, made at
//!    the first start with a console and kept in hex in `<data_dir>/console.token` (mode 0600,
//!    owned by the daemon's user; delete it and restart to change it). It comes only as
//!    `Authorization: Bearer <hex>`, compared in constant time. There is no cookie: a cookie
//!    for `127.0.0.1` is sent to every port of that host (RFC 6265 §8.5), so it would give the
//!    token to any other local listener the browser visits, another node's console among them.
//!    Only the page's own files (`/`, `/app.js`, `/app.css`, `/favicon.svg`, for GET and HEAD:
//!    the same bytes in every `cairnd` and free of any data) answer without it; health too
//!    needs it here (monitors ask the Unix socket, or `cairnctl health`).
//! 5. A method other than GET and HEAD without the header [`CSRF_HEADER`] holding this
//!    console's CSRF token: 403 `csrf`. That token is derived from the secret token (an HMAC),
//!    and the page learns it from `GET /console/session`, under the bearer. With no ambient
//!    credential a cross-site request carries no token anyway; the CSRF header is defence in
//!    depth, for the day something in front of the console (a proxy that adds the bearer)
//!    makes a credential ambient again.
//! 6. `/v1/backup` (the whole store) is not served here, however its path is spelt (`//`,
//!    percent escapes): 404.
//! 7. A watch stream beyond [`CONSOLE_WATCH_STREAMS_MAX`] open at once: 503 `busy`.
//!
//! The route that reveals the token, `GET /v1/console`, exists only on the Unix socket
//! ([`socket_router`]): `cairnctl console-url` asks it.
//!
//! Every answer, refusals included, carries [`CONTENT_SECURITY_POLICY`] (no inline script or
//! style, nothing from elsewhere, no framing), `X-Content-Type-Options: nosniff`,
//! `Referrer-Policy: no-referrer` and `Cache-Control: no-store`.
//!
//! Connections are served with a [`CONSOLE_HEADER_READ_TIMEOUT`], at most
//! [`CONSOLE_CONNECTIONS_MAX`] at once, and drained for at most [`CONSOLE_DRAIN_TIMEOUT`] at
//! shutdown (see [`Console::serve`]).
//!
//! # How the page gets in
//!
//! `cairnctl console-url` prints `http://127.0.0.1:PORT/#token=<hex>`. A URL fragment is never
//! sent to a server, so the token lands in no log and no `Referer`. The page's script reads it,
//! removes it from the address bar, and keeps it in memory and in `sessionStorage` (which is
//! per origin, so per port, and per tab: a reload keeps it, closing the tab forgets it). It
//! sends it as `Authorization: Bearer` on every request, the watch stream included (read with
//! `fetch`, not `EventSource`, which cannot send headers).

use std::io::Read as _;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt as _;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::ConsoleConfig;
use crate::json;
use crate::service::ServiceHandle;

/// Bytes of randomness in the console's token (64 hex digits).
pub const TOKEN_BYTES: usize = 32;
/// The token's file name, in the data directory.
pub const TOKEN_FILE: &str = "console.token";
/// The most bytes read of the token file: the token in hex, a line end, and room for
/// whitespace an editor may add.
const TOKEN_FILE_BYTES_MAX: u64 = 4 * TOKEN_BYTES as u64;
/// The header that must carry the CSRF token on every request that may change state.
pub const CSRF_HEADER: &str = "x-cairn-csrf";
/// The Content-Security-Policy of every console answer.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src \
                                           'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; \
                                           frame-ancestors 'none'";
/// What the HMAC of the CSRF token signs: a fixed label, so the CSRF token is not the token.
const CSRF_LABEL: &[u8] = b"cairn/console/csrf/v1";

const INDEX_HTML: &str = include_str!("console/index.html");
const APP_JS: &str = include_str!("console/app.js");
const APP_CSS: &str = include_str!("console/app.css");
const FAVICON_SVG: &str = include_str!("console/favicon.svg");

/// The console's secret token.
pub struct Token([u8; TOKEN_BYTES]);

impl Token {
    /// Reads the token from `path`, or makes one and writes it there (mode 0600) if the file
    /// does not exist. A file that others may read, that another user owns, or that holds
    /// anything but the token, is refused with what to do.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        match std::fs::File::open(path) {
            Ok(mut file) => {
                // The mode and owner of the file opened, not of whatever the path names later.
                let metadata =
                    file.metadata().with_context(|| format!("cannot inspect {}", path.display()))?;
                let mode = metadata.permissions().mode();
                if mode & 0o077 != 0 {
                    bail!(
                        "the console token file {} may be read by others (mode {:o}); run `chmod 600` on it",
                        path.display(),
                        mode & 0o777
                    );
                }
                let uid = nix::unistd::geteuid().as_raw();
                if metadata.uid() != uid {
                    bail!(
                        "the console token file {} belongs to user {}, not to cairnd's user {uid}; delete it and \
                         restart, and a new one is made",
                        path.display(),
                        metadata.uid()
                    );
                }
                let mut text = String::new();
                (&mut file)
                    .take(TOKEN_FILE_BYTES_MAX)
                    .read_to_string(&mut text)
                    .with_context(|| format!("cannot read the console token file {}", path.display()))?;
                Self::parse(text.trim()).with_context(|| {
                    format!(
                        "the console token file {} does not hold a token ({} hex digits); delete it and \
                         restart, and a new one is made",
                        path.display(),
                        2 * TOKEN_BYTES
                    )
                })
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Self::create(path),
            Err(error) => {
                Err(error).with_context(|| format!("cannot read the console token file {}", path.display()))
            }
        }
    }

    /// Makes a token and writes it to `path` whole or not at all: to a temporary file of mode
    /// 0600 beside it, synced, then renamed, so that a crash never leaves a short token file.
    fn create(path: &Path) -> anyhow::Result<Self> {
        let mut bytes = [0u8; TOKEN_BYTES];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| anyhow::anyhow!("the system gave no randomness for the console token"))?;
        let token = Self(bytes);
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".new");
        let temporary = PathBuf::from(temporary);
        // A leftover of a start that crashed before its rename holds no token anyone uses.
        match std::fs::remove_file(&temporary) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(error).with_context(|| format!("cannot remove {}", temporary.display()));
            }
            _ => {}
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .with_context(|| format!("cannot create the console token file {}", temporary.display()))?;
        std::io::Write::write_all(&mut file, format!("{}\n", token.hex()).as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write the console token file {}", temporary.display()))?;
        std::fs::rename(&temporary, path)
            .with_context(|| format!("cannot rename {} to {}", temporary.display(), path.display()))?;
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|dir| dir.sync_all())
                .with_context(|| format!("cannot sync the directory {}", dir.display()))?;
        }
        Ok(token)
    }

    fn parse(text: &str) -> anyhow::Result<Self> {
        let mut bytes = [0u8; TOKEN_BYTES];
        hex::decode_to_slice(text, &mut bytes).context("not the token")?;
        Ok(Self(bytes))
    }

    fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Whether `candidate` (hex) is this token. The length of a token is no secret; its bytes
    /// are compared in constant time.
    fn matches(&self, candidate: &str) -> bool {
        let mut bytes = [0u8; TOKEN_BYTES];
        if hex::decode_to_slice(candidate.trim(), &mut bytes).is_err() {
            return false;
        }
        constant_time_eq(&self.0, &bytes)
    }

    /// The CSRF token: `HMAC-SHA256(token, CSRF_LABEL)` in hex.
    fn csrf(&self) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        hex::encode(ring::hmac::sign(&key, CSRF_LABEL).as_ref())
    }
}

/// Whether `a` and `b` are equal, in a time that depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What `GET /v1/console` answers on the Unix socket (`cairnctl console-url`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleUrl {
    /// The page's address with the token in its fragment.
    pub url: String,
    /// The address the console listens on.
    pub listen: String,
    /// Where the token is kept.
    pub token_file: String,
}

/// What `GET /console/session` answers: the CSRF token the page sends with each write.
#[derive(Clone, Debug, Serialize)]
struct Session {
    csrf: String,
}

/// A console bound and ready to serve.
pub struct Console {
    listener: TcpListener,
    guard: Guard,
    /// What `cairnctl console-url` prints.
    pub url: ConsoleUrl,
}

/// The guard's knowledge: the token, the names this console answers to, and the watch
/// streams' slots.
#[derive(Clone)]
struct Guard {
    token: Arc<Token>,
    csrf: Arc<str>,
    /// Allowed `Host` values, lowercase.
    hosts: Arc<[String]>,
    /// One permit per watch stream that may be open ([`CONSOLE_WATCH_STREAMS_MAX`]).
    watch_streams: Arc<Semaphore>,
}

/// Binds the console's listener and loads (or makes) its token in `data_dir`. Must be called
/// within a tokio runtime.
pub async fn bind(config: &ConsoleConfig, data_dir: &Path) -> anyhow::Result<Console> {
    let token_file: PathBuf = data_dir.join(TOKEN_FILE);
    let token = Token::load_or_create(&token_file)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} for the console", config.listen))?;
    let address = listener.local_addr().context("the console's bound address")?;
    let hosts = allowed_hosts(address, &config.hosts);
    let url = ConsoleUrl {
        url: format!("http://{}/#token={}", url_host(address), token.hex()),
        listen: address.to_string(),
        token_file: token_file.display().to_string(),
    };
    let csrf: Arc<str> = Arc::from(token.csrf());
    if !address.ip().is_loopback() {
        tracing::warn!(
            listen = %address,
            "the web console listens on an address that is not loopback (allow_non_loopback): it speaks plain \
             HTTP, so its token crosses the network in clear"
        );
    }
    let guard = Guard {
        token: Arc::new(token),
        csrf,
        hosts: hosts.into(),
        watch_streams: Arc::new(Semaphore::new(CONSOLE_WATCH_STREAMS_MAX)),
    };
    Ok(Console { listener, guard, url })
}

/// The `host:port` a browser on this host reaches `address` at: a wildcard address is
/// reached at loopback.
fn url_host(address: SocketAddr) -> String {
    match address {
        SocketAddr::V4(v4) if v4.ip().is_unspecified() => format!("127.0.0.1:{}", v4.port()),
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => format!("[::1]:{}", v6.port()),
        other => other.to_string(),
    }
}

/// The `Host` values the console answers to, lowercase: its address, the loopback names at
/// its port, and the configured extras.
fn allowed_hosts(address: SocketAddr, extra: &[String]) -> Vec<String> {
    let port = address.port();
    let mut hosts = vec![
        address.to_string(),
        url_host(address),
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ];
    hosts.extend(extra.iter().cloned());
    for host in &mut hosts {
        host.make_ascii_lowercase();
    }
    hosts.sort();
    hosts.dedup();
    hosts
}

/// The most console connections served at once. An operator's browser opens six per host at
/// most (HTTP/1.1); the rest of the room is for a few tabs and `curl`. A connection beyond it
/// waits in the kernel's listen backlog until one closes, so a client that opens many cannot
/// make the node spawn without bound.
pub const CONSOLE_CONNECTIONS_MAX: usize = 32;
/// The most watch streams (`/v1/watch`) open on the console at once: each holds a connection
/// for as long as the page shows the document, so they may not take every connection. One
/// more is refused with 503 `busy`.
pub const CONSOLE_WATCH_STREAMS_MAX: usize = 8;
const _: () = assert!(CONSOLE_WATCH_STREAMS_MAX < CONSOLE_CONNECTIONS_MAX);
/// How long a console connection may take to send a request's head (the request line and
/// headers); then it is closed. Without it, a connection that sends half a request holds its
/// place, and the shutdown, for ever.
pub const CONSOLE_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the console waits, once shutdown has started, for its connections to finish the
/// requests in flight (watch streams end with shutdown); then it closes the rest.
pub const CONSOLE_DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the console waits after an accept error (such as running out of file
/// descriptors) before it accepts again, so that it does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

impl Console {
    /// The address the console listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves the console until `shutdown` becomes true, then lets the requests in flight
    /// finish for up to [`CONSOLE_DRAIN_TIMEOUT`] (the watch streams end with shutdown) and
    /// closes the connections still open.
    ///
    /// Each connection is served by hyper's HTTP/1.1 server with a
    /// [`CONSOLE_HEADER_READ_TIMEOUT`], at most [`CONSOLE_CONNECTIONS_MAX`] at once. (Not
    /// `axum::serve`: it sets no header read timeout, so a connection that sent half a
    /// request kept its graceful shutdown waiting for ever.)
    pub async fn serve(self, handle: ServiceHandle, shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
        let app = router(self.guard, handle, shutdown.clone());
        let slots = Arc::new(Semaphore::new(CONSOLE_CONNECTIONS_MAX));
        let mut connections = JoinSet::new();
        let mut stop = shutdown.clone();
        loop {
            let slot = tokio::select! {
                biased;
                () = stopped(&mut stop) => break,
                slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
            };
            let stream = tokio::select! {
                biased;
                () = stopped(&mut stop) => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "the console cannot accept a connection");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                },
            };
            while connections.try_join_next().is_some() {}
            let service = TowerToHyperService::new(app.clone());
            let mut connection_stop = shutdown.clone();
            connections.spawn(async move {
                let _slot = slot;
                let mut builder = http1::Builder::new();
                builder.timer(TokioTimer::new()).header_read_timeout(CONSOLE_HEADER_READ_TIMEOUT);
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                let mut connection = std::pin::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => {}
                    () = stopped(&mut connection_stop) => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
            });
        }
        drop(self.listener);
        let drained = tokio::time::timeout(CONSOLE_DRAIN_TIMEOUT, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                connections = connections.len(),
                "console connections still open {CONSOLE_DRAIN_TIMEOUT:?} after shutdown began; closing them"
            );
            connections.abort_all();
            while connections.join_next().await.is_some() {}
        }
        Ok(())
    }
}

/// Resolves once shutdown has started: the flag is true, or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The console's routes: its files, the session, and the API, all behind the guard.
fn router(guard: Guard, handle: ServiceHandle, shutdown: watch::Receiver<bool>) -> Router {
    let files = Router::new()
        .route("/", get(|| async { file("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/app.js", get(|| async { file("text/javascript; charset=utf-8", APP_JS) }))
        .route("/app.css", get(|| async { file("text/css; charset=utf-8", APP_CSS) }))
        .route("/favicon.svg", get(|| async { file("image/svg+xml", FAVICON_SVG) }))
        .route("/console/session", get(session))
        .with_state(guard.clone());
    files.merge(crate::api::router(handle, shutdown)).layer(middleware::from_fn_with_state(guard, check))
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// `GET /console/session`: the CSRF token, for a page that holds the token (the guard checked
/// its bearer).
async fn session(State(guard): State<Guard>) -> Json<Session> {
    Json(Session { csrf: guard.csrf.to_string() })
}

/// A refusal: the API's error shape, with its status.
fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body =
        json::ErrorBody { error: json::ErrorDetail { code: code.to_owned(), message: message.into() } };
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"cairn console\""));
    }
    response
}

/// Why the guard refused a request: the answer's status, code and message.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
}

/// Paths that answer without the token (for GET and HEAD only): the page's own files.
const PUBLIC_PATHS: [&str; 4] = ["/", "/app.js", "/app.css", "/favicon.svg"];

/// The path of the watch stream, whose number the guard bounds.
const WATCH_PATH: &str = "/v1/watch";

/// The guard (see the module documentation), then the security headers on every answer.
async fn check(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let mut response = match guard.admit(&request) {
        Ok(None) => next.run(request).await,
        Ok(Some(slot)) => {
            // The slot is held as long as the stream's body is: until the page closes it or
            // shutdown ends it.
            let (parts, body) = next.run(request).await.into_parts();
            let body = Body::from_stream(body.into_data_stream().map(move |chunk| {
                let _held = &slot;
                chunk
            }));
            Response::from_parts(parts, body)
        }
        Err(Refusal { status, code, message }) => refuse(status, code, message),
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    headers.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    response
}

impl Guard {
    fn host_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.hosts.contains(&host)
    }

    /// Admits `request` or says why not; a watch stream's slot comes with its admission.
    fn admit(&self, request: &Request) -> Result<Option<OwnedSemaphorePermit>, Refusal> {
        let headers = request.headers();
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let target = request.uri().authority().map(|a| a.as_str());
        let named = [host, target];
        if host.is_none() || named.into_iter().flatten().any(|name| !self.host_allowed(name)) {
            return Err(Refusal::new(
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected",
                "this console does not answer to that Host; add the name to `hosts` in [console] to reach it by \
                 another (deploy/GUIDE.md, \"The web console\")",
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let same = origin
                .to_str()
                .ok()
                .and_then(|o| o.strip_prefix("http://"))
                .is_some_and(|o| self.host_allowed(o));
            if !same {
                return Err(Refusal::new(
                    StatusCode::FORBIDDEN,
                    "cross_origin",
                    "requests from other origins are refused",
                ));
            }
        }
        if let Some(site) = headers.get("sec-fetch-site") {
            // `none`: the operator typed the address or opened a bookmark.
            if !(site == "same-origin" || site == "none") {
                return Err(Refusal::new(
                    StatusCode::FORBIDDEN,
                    "cross_site",
                    "requests that a page of another site or port made are refused (Sec-Fetch-Site)",
                ));
            }
        }
        let method = request.method();
        let safe = method == Method::GET || method == Method::HEAD;
        let path = request.uri().path();
        if safe && PUBLIC_PATHS.contains(&path) {
            return Ok(None);
        }
        if !bearer(headers).is_some_and(|t| self.token.matches(t)) {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "no valid console token (it goes in `Authorization: Bearer`); open the address `cairnctl \
                 console-url` prints",
            ));
        }
        if !safe {
            let csrf = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            if !csrf.is_some_and(|c| constant_time_eq(c.as_bytes(), self.csrf.as_bytes())) {
                return Err(Refusal::new(
                    StatusCode::FORBIDDEN,
                    "csrf",
                    format!(
                        "a request that may change state needs the header {CSRF_HEADER} from /console/session"
                    ),
                ));
            }
        }
        let canonical = canonical_path(path);
        if canonical == "/v1/backup" || canonical.starts_with("/v1/backup/") {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "backups are not served on the console; run `cairnctl backup` on the host",
            ));
        }
        if canonical == WATCH_PATH {
            return match Arc::clone(&self.watch_streams).try_acquire_owned() {
                Ok(slot) => Ok(Some(slot)),
                Err(_) => Err(Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    format!(
                        "{CONSOLE_WATCH_STREAMS_MAX} watch streams are open on this console already; close a \
                         document page and try again"
                    ),
                )),
            };
        }
        Ok(None)
    }
}

/// `path` with its percent escapes decoded and runs of `/` made one, lowercase: the route a
/// lenient server might take it for, for the guard's own decisions (the router matches the
/// path as sent).
fn canonical_path(path: &str) -> String {
    let raw = path.as_bytes();
    let mut decoded = Vec::with_capacity(raw.len());
    let mut idx = 0;
    while idx < raw.len() {
        let escaped = (raw[idx] == b'%')
            .then(|| raw.get(idx + 1..idx + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        let byte = match escaped {
            Some(byte) => {
                idx += 3;
                byte
            }
            None => {
                idx += 1;
                raw[idx - 1]
            }
        };
        if !(byte == b'/' && decoded.last() == Some(&b'/')) {
            decoded.push(byte.to_ascii_lowercase());
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// The token of an `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

/// `GET /v1/console` for the Unix socket only: the console's address with its token, or 404
/// `console_off` when the config has no `[console]`.
pub fn socket_router(url: Option<ConsoleUrl>) -> Router {
    Router::new().route(
        "/v1/console",
        get(move || {
            let url = url.clone();
            async move {
                match url {
                    Some(url) => Json(url).into_response(),
                    None => refuse(
                        StatusCode::NOT_FOUND,
                        "console_off",
                        "the web console is off; add `[console]` with `listen = \"127.0.0.1:7780\"` to the config \
                         and restart cairnd (deploy/GUIDE.md, \"The web console\")",
                    ),
                }
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_made_once_kept_private_and_checked_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        let token = Token::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, [TOKEN_FILE], "the temporary file was renamed");
        let again = Token::load_or_create(&path).unwrap();
        assert_eq!(token.hex(), again.hex());
        assert_eq!(token.hex().len(), 2 * TOKEN_BYTES);
        assert!(token.matches(&token.hex()) && token.matches(&token.hex().to_uppercase()));
        let mut wrong = token.hex();
        wrong.replace_range(0..1, if wrong.starts_with('0') { "1" } else { "0" });
        for bad in [wrong.as_str(), "", "00", &token.hex()[..62], "zz"] {
            assert!(!token.matches(bad), "{bad:?}");
        }
        assert_ne!(token.csrf(), token.hex());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(format!("{:#}", Token::load_or_create(&path).err().unwrap()).contains("chmod 600"));
        std::fs::write(&path, "not a token\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(format!("{:#}", Token::load_or_create(&path).err().unwrap()).contains("delete it"));
    }

    #[test]
    fn hosts_are_the_address_the_loopback_names_and_the_extras() {
        let hosts = allowed_hosts("127.0.0.1:7780".parse().unwrap(), &["Cairn.Internal:7780".to_owned()]);
        assert_eq!(hosts, ["127.0.0.1:7780", "[::1]:7780", "cairn.internal:7780", "localhost:7780"]);
        assert_eq!(url_host("0.0.0.0:1".parse().unwrap()), "127.0.0.1:1");
        assert_eq!(url_host("[::]:1".parse().unwrap()), "[::1]:1");
    }

    #[test]
    fn bearers_are_found_and_paths_made_canonical() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer  xyz"));
        assert_eq!(bearer(&headers), Some("xyz"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic xyz"));
        assert_eq!(bearer(&headers), None);
        assert!(
            constant_time_eq(b"ab", b"ab")
                && !constant_time_eq(b"ab", b"ac")
                && !constant_time_eq(b"a", b"ab")
        );
        for (path, canonical) in [
            ("/v1/backup", "/v1/backup"),
            ("//v1//backup", "/v1/backup"),
            ("/v1/%62ackup", "/v1/backup"),
            ("/v1%2Fbackup", "/v1/backup"),
            ("/V1/Backup/", "/v1/backup/"),
            ("/v1/watch", "/v1/watch"),
            ("/%zz/%4", "/%zz/%4"),
        ] {
            assert_eq!(canonical_path(path), canonical, "{path}");
        }
    }
}
