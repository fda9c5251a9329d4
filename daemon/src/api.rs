//! The local API: HTTP/JSON on a Unix socket (axum 0.8), the only way clients reach `cairnd`.
//! It validates every request, turns it into a call on [`ServiceHandle`], and renders the answer
//! as JSON. `cairnctl` covers every route; `docs/` shows each with an example.
//!
//! # Routes
//!
//! All routes live under `/v1`. Keys are UTF-8 text in one path segment, percent-encoded by the
//! client (`/` as `%2F`). Bytes that may not be UTF-8 (values, set elements, keys in listings)
//! are shown twice: as text when they are valid UTF-8 (else `null`) and always as base64.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /v1/status` | the node in brief |
//! | `GET /v1/health` | liveness and readiness with each check: 200 when ready, 503 when not, or when the service loop did not answer within [`HEALTH_DEADLINE`] |
//! | `GET /v1/health/live` | liveness alone (`ready` is not judged there): 200 when the service loop answers or is too busy to (its command queue is full), 503 when it is stopping or silent |
//! | `GET /v1/peers` | every other key this node indexes (the genesis members, then keys membership changes named), its state (`connected`, `connecting`, `refused`, `out_of_force`, `version_mismatch` with `protocol_versions`), the address it is dialed at (from its signed record, else configured), `outbound` (this node's overlay chose it: it dials it) and `eager` (connected, and sent whole events rather than ids), connection, counters and `lag_events` (what this node held past what the peer held at their last sync session) |
//! | `GET /v1/members` | the membership in force (seats, current keys), the open round and its pending changes, double approvals (`docs/PROTOCOL.md` §17) |
//! | `POST /v1/members/changes` | propose a change, which is this seat's vote: `{"action": "add", "key": K, "name": N}`, `{"action": "remove", "seat": S}` or `{"action": "replace", "seat": S, "key": K}` (optional `cut`, `force`); 409 `needs_force` when a removal may cut acknowledged writes, 409 `membership_refused` when the membership refuses it |
//! | `POST /v1/members/changes/{id}/approve` | vote for a pending change |
//! | `POST /v1/members/rotate` | rotate this node's key (`cairnd rotate-key`) |
//! | `GET /v1/keys?kind=register\|counter\|set&after=&limit=` | keys with a non-empty state (all kinds without `kind`), one page |
//! | `GET /v1/registers/{key}` | the visible value, every sibling and the read's `context` |
//! | `PUT /v1/registers/{key}` | `{"value": "text"}` or `{"value_base64": "..."}`, optional `context` or `if_context` (below) |
//! | `DELETE /v1/registers/{key}?context=` | deletes the register's values (with `context`, those that read saw) |
//! | `GET /v1/counters/{key}` | the counter's value |
//! | `POST /v1/counters/{key}/incr` | `{"delta": -5}` |
//! | `GET /v1/sets/{key}` | the set's members, each with its `context` |
//! | `POST /v1/sets/{key}/add`, `/remove` | `{"element": "text"}` or `{"element_base64": "..."}`, optional `context` |
//! | `POST /v1/batch` | `{"ops": [...]}`: several ops in one event, atomically (put, del, add and remove take an optional `context`) |
//! | `GET /v1/events?author=&after=&limit=` | accepted events, one page |
//! | `GET /v1/events/{id}` | one event, with its ops and its canonical bytes (`encoded_hex`) |
//! | `GET /v1/events/{id}/verify` | every validity rule's verdict on that event's bytes, checked again now (the report of `cairnctl --json inspect event`): membership against this node's live roster (rules V2 to V5 of membership ops are not checked again; the check says so), seq and lamport against the deps it holds |
//! | `GET /v1/evidence` | equivocation evidence, with its canonical bytes, and double approvals (the two voting events of each) |
//! | `GET /v1/metrics` | OpenMetrics text |
//! | `GET /v1/backup` | a consistent copy of the store, streamed (`application/octet-stream`, format in [`crate::backup`]); 409 while another is being taken (unless it sent nothing for a minute) |
//! | `GET /v1/watch` | server-sent events: `change` per changed key, `lagged` when some were missed |
//!
//! # Pages
//!
//! The two listings answer one page at a time, with `next`: the cursor of the next page, or
//! `null` when this page is the last. Pass it back unchanged as `after`.
//!
//! - `GET /v1/keys` lists registers, then counters, then sets, each in bytewise key order:
//!   `{"keys": [{"kind", "key", "key_base64"}, ...], "next": "register:ZGly" | null}`. `limit` is
//!   1 to [`KEYS_LIMIT_MAX`], [`KEYS_LIMIT_DEFAULT`] if not given. A cursor is the kind of the
//!   last key, a colon and the key in unpadded URL-safe base64; it needs no percent-encoding.
//! - `GET /v1/events` lists events in the order this node stored them (its store's log), then
//!   those accepted and not stored yet (at most a group commit's delay), in the order it
//!   accepted them: `after=N` starts after the N-th (`next` is a number, the position of the
//!   page's last event). With `author`,
//!   `after` is that author's seq instead (`next` is the page's last seq). Only an equivocating
//!   author has several events with one seq; a page ends before such a seq rather than inside
//!   it, unless more than `limit` events share that seq, and then the rest of it is skipped:
//!   ask again with a larger `limit`. `limit` is 1 to [`EVENTS_LIMIT_MAX`],
//!   [`EVENTS_LIMIT_DEFAULT`] if not given.
//!
//! # Causal contexts
//!
//! A register read gives `context`, and a set read gives each member's: opaque base64 (version
//! byte 1, then the ids of the siblings' events, or of the member's live adds). A write, delete,
//! add or remove that carries one supersedes exactly what that read saw (`docs/PROTOCOL.md`
//! §14): a value written since, on this node or elsewhere, stays beside the new one as a
//! sibling, and a remove leaves an add made since. Without a context a write supersedes what
//! this node holds, as before. A context that does not decode is 400 `bad_context`; one that
//! names an event this node has not received (read on another node that is ahead) is 409
//! `unknown_context`, and nothing is written. `if_context` (register writes) also asks that the
//! register's context here still be the one given, else 409 `context_changed`: a
//! read-modify-write guard, advisory only, since two guarded writes racing on one node both
//! pass and become siblings, never a lost update.
//!
//! # Counters
//!
//! A counter's value is the exact sum of its deltas (an `i128` in the document, so it can pass
//! `i64`; `docs/PROTOCOL.md`, section 14). JSON readers such as JavaScript and jq hold only the
//! integers within ±(2^53 − 1) exactly, so `value` is a JSON number within that range
//! ([`JSON_SAFE_INTEGER_MAX`]) and a string of its decimal digits beyond it (`"-"` first if
//! negative): `{"key": "c", "value": 5}`, `{"key": "c", "value": "18446744073709551614"}`. The
//! same holds for the counters of the watch stream.
//!
//! Every write answers `{"id", "seq", "lamport"}` once the event is on disk on this node.
//! Concurrent writes may share one event (one signature, one commit): each write is whole
//! inside the event its answer names, and its ops apply after those of the writes packed
//! before it.
//!
//! # Errors
//!
//! Every error is `{"error": {"code": "...", "message": "..."}}` with a fitting status: 400 for
//! bad JSON, fields, keys, values or ids; 404 for an unknown route or event; 405; 413 for a body
//! over [`REQUEST_BYTES_MAX`]; 415 without `content-type: application/json`; 503 when the
//! service refuses writes, is busy or is stopping (its message says why); 500 when the store
//! failed. No input makes a handler panic.
//!
//! # Types
//!
//! Every body and answer is a type of [`crate::json`], which the client reads back and
//! `cairnctl` prints; its documentation gives each field.

use std::convert::Infallible;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD as BASE64_URL};
use cairn_crypto::PublicKey;
use cairn_protocol::document::{KeyKind, RegisterRead, Sibling, decode_context, encode_context};
use cairn_protocol::event::ops_hash;
use cairn_protocol::limits::{EVENT_BYTES_MAX, KEY_BYTES_MAX, OPS_MAX, VALUE_BYTES_MAX};
use cairn_protocol::{
    DepHeader, Event, EventId, EventRule, Evidence, Header, Member, Op, Outcome, Seen, Verdict, WriteError,
};
use futures_util::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixListener;
use tokio::sync::{broadcast, watch};

pub use crate::json::JSON_SAFE_INTEGER_MAX;
use crate::json::{self, BatchBody, BatchOp, ElementBody, IncrBody, ValueBody, text_of};
use crate::service::{
    ChangeNotice, EventInfo, EventQuery, KeyQuery, PeerInfo, PeerState, ServiceError, ServiceHandle, Status,
    WriteAck,
};

#[cfg(test)]
pub(crate) mod tests;

/// Bytes of JSON one op may need beyond its key and value: the braces, the field names, the
/// quotes and the comma of the longest op, `{"op":"remove","key":"","element_base64":""},`,
/// with room to spare for whitespace.
const OP_JSON_OVERHEAD_BYTES_MAX: usize = 128;

/// The largest request body the API reads. A valid event carries at most
/// [`EVENT_BYTES_MAX`] bytes of keys and values; JSON escaping makes one byte at most six
/// (`\u001f`; base64 makes it 4/3), and each op adds its field names. Anything larger cannot
/// become a valid event and is refused with 413 before it is parsed.
pub const REQUEST_BYTES_MAX: usize = 1024 * 1024;
const _: () = assert!(6 * EVENT_BYTES_MAX + OPS_MAX * OP_JSON_OVERHEAD_BYTES_MAX + 64 <= REQUEST_BYTES_MAX);

/// The default number of events `GET /v1/events` returns.
pub const EVENTS_LIMIT_DEFAULT: usize = 100;
/// The most events `GET /v1/events` returns in one answer; page with `after`.
pub const EVENTS_LIMIT_MAX: usize = 1000;

/// The default number of keys `GET /v1/keys` returns: well under a megabyte of JSON for keys
/// of common length (tens of bytes), where 100 000 keys in one answer made 6.5 MB.
pub const KEYS_LIMIT_DEFAULT: usize = 1000;
/// The most keys `GET /v1/keys` returns in one answer; page with `after`. A page of the longest
/// keys still fits in what the client reads (asserted below).
pub const KEYS_LIMIT_MAX: usize = 5000;

/// The most bytes one entry of `GET /v1/keys` takes as JSON: the key as text with every byte
/// escaped (`\u001f`, 6 bytes), the key in base64 twice (once in the entry, once as room for
/// the page's cursor) and the field names.
const KEY_JSON_BYTES_MAX: usize = 6 * KEY_BYTES_MAX + 2 * (KEY_BYTES_MAX.div_ceil(3) * 4) + 64;
// A full page of the longest keys fits in what the client reads.
const _: () = assert!(KEYS_LIMIT_MAX * KEY_JSON_BYTES_MAX <= crate::client::RESPONSE_BYTES_MAX);

/// How often an idle watch stream sends a comment, so that a dead client is noticed and
/// proxies keep the stream open.
const WATCH_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The content type of `GET /v1/metrics`.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds the API socket at `path` with mode 0660. A stale socket left by a daemon that died is
/// removed first; a live one (something accepts connections on it) or a file that is not a
/// socket is left alone and reported. Must be called within a tokio runtime.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    let with_path =
        |e: io::Error, what: &str| io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()));
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another process serves the API socket {}; is cairnd already running?",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path).map_err(|e| with_path(e, "cannot remove the stale socket"))?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket; refusing to replace it", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(with_path(e, "cannot inspect")),
    }
    let listener = UnixListener::bind(path).map_err(|e| with_path(e, "cannot bind the API socket"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| with_path(e, "cannot set mode 0660 on"))?;
    Ok(listener)
}

/// Serves the API on `listener` until `shutdown` becomes true (or its sender is dropped), then
/// ends the watch streams, lets the requests in flight finish and removes the socket file.
pub async fn serve(
    listener: UnixListener,
    handle: ServiceHandle,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let app = router(handle, shutdown.clone());
    serve_app(listener, app, shutdown).await
}

/// Serves `app` (the API's [`router`], perhaps with routes merged in) on `listener` as
/// [`serve`] does.
pub async fn serve_app(
    listener: UnixListener,
    app: Router,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let socket_path = listener.local_addr().ok().and_then(|addr| addr.as_pathname().map(Path::to_path_buf));
    let mut stop = shutdown;
    axum::serve(listener, app).with_graceful_shutdown(async move { stopped(&mut stop).await }).await?;
    if let Some(path) = socket_path {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove the API socket");
            }
            _ => {}
        }
    }
    Ok(())
}

/// Resolves once shutdown has started: the flag is true, or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The API's routes over `handle`. Watch streams end when `shutdown` becomes true.
pub fn router(handle: ServiceHandle, shutdown: watch::Receiver<bool>) -> Router {
    let state = AppState { handle, shutdown, members: Arc::default() };
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/health", get(health))
        .route("/v1/health/live", get(health_live))
        .route("/v1/peers", get(peers))
        .route("/v1/members", get(membership))
        .route("/v1/members/changes", post(propose_change))
        .route("/v1/members/changes/{id}/approve", post(approve_change))
        .route("/v1/members/rotate", post(rotate_key))
        .route("/v1/keys", get(keys))
        .route("/v1/registers/", any(empty_key))
        .route("/v1/registers/{key}", get(register).put(put_register).delete(delete_register))
        .route("/v1/counters/", any(empty_key))
        .route("/v1/counters/{key}", get(counter))
        .route("/v1/counters/{key}/incr", post(incr_counter))
        .route("/v1/sets/", any(empty_key))
        .route("/v1/sets/{key}", get(set))
        .route("/v1/sets/{key}/add", post(add_to_set))
        .route("/v1/sets/{key}/remove", post(remove_from_set))
        .route("/v1/batch", post(batch))
        .route("/v1/events", get(events))
        .route("/v1/events/{id}", get(event))
        .route("/v1/events/{id}/verify", get(verify_event))
        .route("/v1/evidence", get(evidence))
        .route("/v1/metrics", get(metrics))
        .route("/v1/backup", get(backup))
        .route("/v1/watch", get(watch_changes))
        // After every route: it applies to the routes that exist when it is called.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(REQUEST_BYTES_MAX))
        .with_state(state)
}

#[derive(Clone)]
struct AppState {
    handle: ServiceHandle,
    shutdown: watch::Receiver<bool>,
    /// The keys this node indexes with their names, by author index
    /// ([`AppState::members_covering`]).
    members: Arc<std::sync::Mutex<Arc<[Member]>>>,
}

impl AppState {
    /// The keys this node indexes with their display names, by author index (the roster's
    /// order, which only grows: an index never changes its key). Cached, and read again from
    /// the service when the cache is empty or `covers` says it lacks what the caller needs (a
    /// key added by a membership change since).
    async fn members_covering(&self, covers: impl Fn(&[Member]) -> bool) -> Result<Arc<[Member]>, ApiError> {
        let cached = Arc::clone(&self.members.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        if !cached.is_empty() && covers(&cached) {
            return Ok(cached);
        }
        let status = self.handle.status().await?;
        let fresh: Arc<[Member]> = status
            .authors
            .iter()
            .map(|author| Member { key: author.key, name: author.name.clone() })
            .collect();
        *self.members.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::clone(&fresh);
        Ok(fresh)
    }

    /// The members, covering every author index of `read`'s siblings.
    async fn members_for(&self, read: &RegisterRead) -> Result<Arc<[Member]>, ApiError> {
        if read.siblings.is_empty() {
            return Ok(Arc::from([]));
        }
        self.members_covering(|members| read.siblings.iter().all(|s| s.author < members.len())).await
    }
}

// ---- errors ---------------------------------------------------------------------------------

/// An error answer: `{"error": {"code": "...", "message": "..."}}` with `status`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json::ErrorBody {
            error: json::ErrorDetail { code: self.code.to_owned(), message: self.message },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        let (status, code) = match &error {
            ServiceError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ServiceError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ServiceError::WritesQueued { .. } => (StatusCode::SERVICE_UNAVAILABLE, "writes_queued"),
            ServiceError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ServiceError::BackupRunning => (StatusCode::CONFLICT, "backup_running"),
            ServiceError::Invalid(WriteError::UnknownSeen(_)) => (StatusCode::CONFLICT, "unknown_context"),
            ServiceError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            ServiceError::Storage { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
            ServiceError::NoSpace { .. } => (StatusCode::INSUFFICIENT_STORAGE, "no_space"),
            ServiceError::Membership(_) => (StatusCode::CONFLICT, "membership_refused"),
            ServiceError::NeedsForce(_) => (StatusCode::CONFLICT, "needs_force"),
        };
        Self::new(status, code, error.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the request body is over the limit of {REQUEST_BYTES_MAX} bytes"),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the request body must be JSON, sent with `content-type: application/json`",
            ),
            // A body that parses but has the wrong fields is as much the client's fault as one
            // that does not parse: 400 for both, with serde's exact reason.
            StatusCode::UNPROCESSABLE_ENTITY => Self::bad_request("bad_request", rejection.body_text()),
            _ => Self::bad_request("bad_json", rejection.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(rejection.status(), "bad_path", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(rejection.status(), "bad_query", rejection.body_text())
    }
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no such route: {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn empty_key() -> ApiError {
    ApiError::bad_request("bad_key", "the key is empty; give a key of 1 to 1024 bytes")
}

// ---- extractors that answer in JSON ---------------------------------------------------------

/// [`Json`], with its rejections as JSON errors.
struct ApiJson<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<T>::from_request(request, state).await?;
        Ok(Self(value))
    }
}

/// [`axum::extract::Path`], with its rejections as JSON errors.
struct ApiPath<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(value) = axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// [`Query`], with its rejections as JSON errors.
struct ApiQuery<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

// ---- checking input -------------------------------------------------------------------------

fn check_key(key: String, what: impl std::fmt::Display) -> Result<Vec<u8>, ApiError> {
    if key.is_empty() {
        return Err(ApiError::bad_request("bad_key", format!("{what}: the key is empty")));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(ApiError::bad_request(
            "bad_key",
            format!("{what}: the key is {} bytes, over the limit of {KEY_BYTES_MAX}", key.len()),
        ));
    }
    Ok(key.into_bytes())
}

/// The bytes of a value given as text or as base64: exactly one of the two.
fn value_bytes(
    text: Option<String>,
    base64: Option<String>,
    field: &str,
    context: impl std::fmt::Display,
) -> Result<Vec<u8>, ApiError> {
    let bytes = match (text, base64) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(encoded)) => BASE64.decode(encoded.as_bytes()).map_err(|e| {
            ApiError::bad_request("bad_value", format!("{context}{field}_base64 is not valid base64: {e}"))
        })?,
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "bad_value",
                format!("{context}give either {field} or {field}_base64, not both"),
            ));
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "bad_value",
                format!("{context}missing {field} (text) or {field}_base64 (bytes)"),
            ));
        }
    };
    if bytes.len() > VALUE_BYTES_MAX {
        return Err(ApiError::bad_request(
            "bad_value",
            format!("{context}the {field} is {} bytes, over the limit of {VALUE_BYTES_MAX}", bytes.len()),
        ));
    }
    Ok(bytes)
}

fn parse_event_id(text: &str) -> Result<EventId, ApiError> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes).map_err(|_| {
        ApiError::bad_request("bad_id", format!("an event id is 64 hex digits, got {:?}", truncate(text, 80)))
    })?;
    Ok(EventId(bytes))
}

fn truncate(text: &str, n_chars: usize) -> String {
    text.chars().take(n_chars).collect()
}

// ---- JSON shapes ----------------------------------------------------------------------------

fn ack_json(ack: WriteAck) -> json::Ack {
    json::Ack { id: ack.id.to_string(), seq: ack.seq, lamport: ack.lamport }
}

fn status_json(s: Status) -> json::Status {
    json::Status {
        key: s.key.to_string(),
        name: s.name,
        cluster_id: hex::encode(s.cluster_id),
        own_seq: s.own_seq,
        digest: hex::encode(s.digest),
        sync_digest: hex::encode(s.sync_digest),
        n_events: s.n_events,
        n_evidence: s.n_evidence,
        buffer_events: s.buffer_events,
        buffer_bytes: s.buffer_bytes,
        buffer_bytes_max: s.buffer_bytes_max,
        writes_refused: s.writes_refused,
        n_peers_connected: s.n_peers_connected,
        n_peers: s.n_peers,
        authors: s
            .authors
            .into_iter()
            .map(|a| json::Author {
                name: a.name,
                key: a.key.to_string(),
                events: a.events,
                bytes: a.bytes,
                events_per_sec: a.events_per_sec,
                bytes_per_sec: a.bytes_per_sec,
            })
            .collect(),
        membership: json::MembershipSummary {
            id: hex::encode(s.membership.id),
            n_seats: s.membership.n_seats,
            round: s.membership.round,
            n_pending: s.membership.n_pending,
        },
    }
}

fn peer_json(p: PeerInfo) -> json::Peer {
    let s = p.stats;
    json::Peer {
        key: p.key.to_string(),
        name: p.name,
        address: p.address.map(|a| a.to_string()),
        state: match p.state {
            PeerState::Connected => json::PeerState::Connected,
            PeerState::Connecting => json::PeerState::Connecting,
            PeerState::Refused => json::PeerState::Refused,
            PeerState::OutOfForce => json::PeerState::OutOfForce,
            PeerState::VersionMismatch => json::PeerState::VersionMismatch,
        },
        outbound: p.outbound,
        eager: p.eager,
        last_seen_ms_ago: p.last_seen_ms_ago,
        rtt_ms: p.rtt_ms,
        lag_events: p.lag_events,
        stats: json::PeerStats {
            messages_in: s.messages_in,
            messages_out: s.messages_out,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            events_in: s.events_in,
            events_out: s.events_out,
            events_rate_limited: s.events_rate_limited,
            rejected: s.rejected.iter().map(|(reason, n)| (reason.name().to_owned(), *n)).collect(),
            bad_messages: s.bad_messages,
            sessions_in_sync: s.sessions_in_sync,
            sessions_tips: s.sessions_tips,
        },
        protocol_versions: p.version_mismatch.map(|(ours, theirs)| json::ProtocolVersions {
            ours: crate::transport::version_name(ours),
            theirs: theirs.map(crate::transport::version_name),
        }),
    }
}

fn sibling_json(sibling: &Sibling, members: &[Member]) -> json::Sibling {
    let member = members.get(sibling.author);
    json::Sibling {
        value: text_of(&sibling.value),
        value_base64: BASE64.encode(&sibling.value),
        author: member.map(|m| m.key.to_string()),
        author_name: member.map(|m| m.name.clone()),
        author_index: sibling.author,
        lamport: sibling.lamport,
        event_id: sibling.event_id.to_string(),
        op_index: sibling.op_idx,
    }
}

fn register_state_json(read: &RegisterRead, members: &[Member]) -> json::RegisterState {
    json::RegisterState {
        value: read.visible.as_ref().and_then(|s| text_of(&s.value)),
        value_base64: read.visible.as_ref().map(|s| BASE64.encode(&s.value)),
        siblings: read.siblings.iter().map(|s| sibling_json(s, members)).collect(),
        context: BASE64.encode(encode_context(&read.context())),
    }
}

/// A set's members as a read gives them, each with its causal context.
fn members_json(members: &[(Vec<u8>, Vec<EventId>)]) -> Vec<json::SetMember> {
    members
        .iter()
        .map(|(element, adds)| json::SetMember {
            context: Some(BASE64.encode(encode_context(adds))),
            ..json::SetMember::of(element)
        })
        .collect()
}

/// The events a client's causal context names (base64 of [`encode_context`]'s bytes); `at`
/// names the field in errors.
fn context_events(context: &str, at: impl std::fmt::Display) -> Result<Vec<EventId>, ApiError> {
    let bytes = BASE64.decode(context).map_err(|_| {
        ApiError::bad_request("bad_context", format!("{at}: a context is base64, as a read gave it"))
    })?;
    decode_context(&bytes).map_err(|e| ApiError::bad_request("bad_context", format!("{at}: {e}")))
}

/// A register or set op with the causal context `context` (base64), or without one.
fn with_context(op: Op, context: Option<String>, at: impl std::fmt::Display) -> Result<Op, ApiError> {
    let Some(context) = context else { return Ok(op) };
    // Counters and membership ops take no context; the callers never pass one.
    Ok(op.with_seen(Seen { events: context_events(&context, at)?, own: Vec::new() }))
}

fn event_summary_json(e: &EventInfo) -> json::EventSummary {
    json::EventSummary {
        id: e.id.to_string(),
        author: e.author.to_string(),
        author_name: e.author_name.clone(),
        seq: e.seq,
        lamport: e.lamport,
        n_deps: e.deps.len(),
        n_ops: e.ops.len(),
        size: e.n_bytes,
        excluded: e.excluded,
    }
}

/// An event as `GET /v1/events/{id}` shows it. Its canonical bytes are re-encoded from its
/// parts: the encoding is canonical, so they are the bytes the author signed and peers sent.
fn event_json(e: &EventInfo) -> Result<json::Event, ApiError> {
    let event = rebuilt_event(e)?;
    let ops_hash = event.header.ops_hash;
    Ok(json::Event {
        id: e.id.to_string(),
        author: e.author.to_string(),
        author_name: e.author_name.clone(),
        seq: e.seq,
        lamport: e.lamport,
        deps: e.deps.iter().map(ToString::to_string).collect(),
        ops_hash: hex::encode(ops_hash),
        ops: e.ops.iter().map(json::Op::from).collect(),
        size: e.n_bytes,
        excluded: e.excluded,
        encoded_hex: hex::encode(event.encode()),
    })
}

/// The event the service's parts make up, checked to have the id the service named.
fn rebuilt_event(e: &EventInfo) -> Result<Event, ApiError> {
    let ops_hash = ops_hash(&e.ops);
    let header = Header { author: e.author, seq: e.seq, lamport: e.lamport, deps: e.deps.clone(), ops_hash };
    let event = Event { header, ops: e.ops.clone(), sig: e.sig };
    if event.id() != e.id {
        // The service's parts do not make up the event it named: a bug, but one that must not
        // hand out bytes that are not the event's.
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("event {} re-encodes to another id, {}; please report this bug", e.id, event.id()),
        ));
    }
    Ok(event)
}

/// One rule's verdict as `cairnctl --json inspect event` shows it.
fn inspect_check(rule: EventRule, verdict: &Verdict) -> json::InspectCheck {
    json::InspectCheck::of((rule.name(), rule.number(), rule.requirement()), verdict, |needs| {
        needs.why().to_owned()
    })
}

fn evidence_json(evidence: &Evidence, members: &[Member]) -> json::Evidence {
    let author = evidence.author();
    json::Evidence {
        author: author.to_string(),
        author_name: members.iter().find(|m| m.key == author).map(|m| m.name.clone()),
        seq: evidence.seq(),
        first: json::SignedHeader::from(&evidence.first),
        second: json::SignedHeader::from(&evidence.second),
        encoded_hex: hex::encode(evidence.encode()),
    }
}

// ---- handlers -------------------------------------------------------------------------------

async fn status(State(st): State<AppState>) -> Result<Json<json::Status>, ApiError> {
    Ok(Json(status_json(st.handle.status().await?)))
}

async fn peers(State(st): State<AppState>) -> Result<Json<json::Peers>, ApiError> {
    let peers = st.handle.peers().await?;
    Ok(Json(json::Peers { peers: peers.into_iter().map(peer_json).collect() }))
}

async fn membership(State(st): State<AppState>) -> Result<Json<json::Membership>, ApiError> {
    Ok(Json(membership_json(&st.handle.membership().await?)))
}

/// How long the health endpoints wait for the service loop before they call it not live.
pub const HEALTH_DEADLINE: Duration = Duration::from_secs(2);

/// The service loop's health; else whether the loop is alive (its command queue full: it is
/// working; stopping; or silent past [`HEALTH_DEADLINE`]) and why it did not answer.
async fn ask_health(st: &AppState) -> Result<crate::service::Health, (bool, String)> {
    match tokio::time::timeout(HEALTH_DEADLINE, st.handle.health()).await {
        Ok(Ok(health)) => Ok(health),
        Ok(Err(ServiceError::Busy)) => Err((true, ServiceError::Busy.to_string())),
        Ok(Err(error)) => Err((false, error.to_string())),
        Err(_) => Err((false, format!("did not answer within {} s", HEALTH_DEADLINE.as_secs()))),
    }
}

async fn health(State(st): State<AppState>) -> (StatusCode, Json<json::Health>) {
    let health = match ask_health(&st).await {
        Ok(health) => health,
        Err((live, why)) => {
            let checks = [("service_loop".to_owned(), why)];
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json::Health { live, ready: false, checks: checks.into_iter().collect() }),
            );
        }
    };
    let ok = |pass: bool, why: String| if pass { "ok".to_owned() } else { why };
    let checks = [
        ("service_loop".to_owned(), "ok".to_owned()),
        ("store".to_owned(), ok(health.store_ok, health.store_problem.clone().unwrap_or_default())),
        ("own_seq".to_owned(), health.own_seq_learning.clone().unwrap_or_else(|| "ok".to_owned())),
        (
            "peers".to_owned(),
            if health.peers == 0 {
                "ok (none in force)".to_owned()
            } else if health.peers_connected > 0 {
                format!("ok ({} of {} connected)", health.peers_connected, health.peers)
            } else {
                format!("none of {} connected", health.peers)
            },
        ),
    ];
    let ready = health.ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json::Health { live: true, ready, checks: checks.into_iter().collect() }))
}

/// Liveness alone: the loop answered, or is too busy to (its queue is full: it is working).
/// `ready` is not judged here and is always `false`; ask `/v1/health` for it.
async fn health_live(State(st): State<AppState>) -> (StatusCode, Json<json::Health>) {
    let (live, checks) = match ask_health(&st).await {
        Ok(_) => (true, [("service_loop".to_owned(), "ok".to_owned())]),
        Err((live, why)) => (live, [("service_loop".to_owned(), why)]),
    };
    let status = if live { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json::Health { live, ready: false, checks: checks.into_iter().collect() }))
}

async fn propose_change(
    State(st): State<AppState>,
    ApiJson(body): ApiJson<json::ChangeBody>,
) -> Result<Json<json::MemberAck>, ApiError> {
    let request = change_request(body)?;
    member_ack(st.handle.member_change(request).await?)
}

/// `?force=true` on an approval: approve a removal even if its cut may drop acknowledged writes.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveQuery {
    #[serde(default)]
    force: bool,
}

async fn approve_change(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ApproveQuery>,
) -> Result<Json<json::MemberAck>, ApiError> {
    let change = parse_hex32(&id).map(cairn_protocol::ChangeId).ok_or_else(|| {
        ApiError::bad_request("bad_change", format!("{id:?} is not a change id (64 hex digits)"))
    })?;
    member_ack(
        st.handle.member_change(crate::service::MemberChange::Approve { change, force: query.force }).await?,
    )
}

async fn rotate_key(State(st): State<AppState>) -> Result<Json<json::KeyRotated>, ApiError> {
    let rotated = st.handle.rotate_key().await?;
    let write = rotated.write;
    Ok(Json(json::KeyRotated {
        key: rotated.key.to_string(),
        event: json::Ack { id: write.id.to_string(), seq: write.seq, lamport: write.lamport },
    }))
}

fn member_ack(ack: crate::service::MemberAck) -> Result<Json<json::MemberAck>, ApiError> {
    let write = ack.write;
    Ok(Json(json::MemberAck {
        change: ack.change.to_string(),
        event: json::Ack { id: write.id.to_string(), seq: write.seq, lamport: write.lamport },
    }))
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// The request a `POST /v1/members/changes` body makes, its fields checked.
fn change_request(body: json::ChangeBody) -> Result<crate::service::MemberChange, ApiError> {
    use crate::service::MemberChange;
    let bad = |message: String| ApiError::bad_request("bad_change", message);
    let key = |field: Option<String>, what: &str| -> Result<PublicKey, ApiError> {
        let text = field.ok_or_else(|| bad(format!("`{}` needs `key`: {what}", body.action)))?;
        text.parse().map_err(|e| bad(format!("`key` {text:?} is not a public key (64 hex digits): {e}")))
    };
    let unused = |field: &Option<String>, name: &str| match field {
        Some(_) => Err(bad(format!("`{}` takes no `{name}`", body.action))),
        None => Ok(()),
    };
    match body.action.as_str() {
        "add" => {
            unused(&body.seat, "seat")?;
            if body.cut.is_some() || body.force {
                return Err(bad("`add` takes no `cut` or `force`".to_owned()));
            }
            let name =
                body.name.clone().ok_or_else(|| bad("`add` needs `name`: the new seat's name".to_owned()))?;
            Ok(MemberChange::Add { key: key(body.key.clone(), "the new seat's key")?, name })
        }
        "remove" => {
            unused(&body.key, "key")?;
            unused(&body.name, "name")?;
            let seat = body.seat.ok_or_else(|| bad("`remove` needs `seat`: its name or a key".to_owned()))?;
            Ok(MemberChange::Remove { seat, cut: body.cut, force: body.force })
        }
        "replace" => {
            unused(&body.name, "name")?;
            let successor = key(body.key.clone(), "the successor's key")?;
            let seat =
                body.seat.ok_or_else(|| bad("`replace` needs `seat`: its name or a key".to_owned()))?;
            Ok(MemberChange::Replace { seat, successor, cut: body.cut, force: body.force })
        }
        other => Err(bad(format!("unknown action {other:?}: give `add`, `remove` or `replace`"))),
    }
}

/// The membership as `GET /v1/members` shows it.
pub(crate) fn membership_json(info: &crate::service::MembershipInfo) -> json::Membership {
    use cairn_protocol::ChangeKind;
    let resolution = &info.resolution;
    let in_force = resolution.in_force();
    let seats = in_force
        .seats()
        .iter()
        .map(|seat| json::MemberSeat {
            name: seat.name.clone(),
            founder: seat.founder.to_string(),
            key: resolution.chains().current(&seat.founder).to_string(),
        })
        .collect();
    let mut pending: Vec<json::PendingChange> = info
        .pending
        .iter()
        .filter_map(|(id, votes, change)| {
            let (action, key, seat, cut) = match &change.as_ref()?.kind {
                ChangeKind::Add { key, name } => ("add", key, name.clone(), None),
                ChangeKind::Remove { seat, key, cut } => ("remove", key, seat.to_string(), Some(*cut)),
                ChangeKind::Replace { seat, successor, cut, .. } => {
                    ("replace", successor, seat.to_string(), Some(*cut))
                }
            };
            Some(json::PendingChange {
                change: id.to_string(),
                action: action.to_owned(),
                key: key.to_string(),
                seat,
                cut,
                votes: *votes,
            })
        })
        .collect();
    pending.sort_by(|a, b| b.votes.cmp(&a.votes).then_with(|| a.change.cmp(&b.change)));
    json::Membership {
        id: in_force.id().to_string(),
        n_changes: resolution.applied().len(),
        round: resolution.round(),
        threshold: in_force.threshold(info.policy),
        seats,
        pending,
        double_approvals: resolution.double_approvals().iter().map(|d| d.seat.to_string()).collect(),
    }
}

/// The key spaces in the order `GET /v1/keys` lists them.
const KINDS: [KeyKind; 3] = [KeyKind::Register, KeyKind::Counter, KeyKind::Set];

/// The cursor of a listing that ends at `key` of `kind`: `kind:` and the key in unpadded
/// URL-safe base64, so that it goes into a query string as it is.
pub(crate) fn key_cursor(kind: KeyKind, key: &[u8]) -> String {
    format!("{}:{}", json::KeyKind::from(kind), BASE64_URL.encode(key))
}

/// A cursor made by [`key_cursor`]; the error says what is wrong with it.
pub(crate) fn parse_key_cursor(cursor: &str) -> Result<(KeyKind, Vec<u8>), String> {
    let expected = "expected the `next` of an earlier page (KIND:BASE64URL)";
    let (kind, encoded) = cursor.split_once(':').ok_or_else(|| format!("after: {expected}"))?;
    let kind = KINDS
        .into_iter()
        .find(|&k| json::KeyKind::from(k).name() == kind)
        .ok_or_else(|| format!("after: no key kind {:?}; {expected}", truncate(kind, 20)))?;
    if encoded.len() > KEY_BYTES_MAX.div_ceil(3) * 4 {
        return Err(format!("after: the key is longer than any key ({KEY_BYTES_MAX} bytes); {expected}"));
    }
    let key =
        BASE64_URL.decode(encoded).map_err(|e| format!("after: the key is not base64: {e}; {expected}"))?;
    Ok((kind, key))
}

async fn keys(
    State(st): State<AppState>,
    ApiQuery(query): ApiQuery<json::KeysQuery>,
) -> Result<Json<json::KeysPage>, ApiError> {
    let limit = query.limit.unwrap_or(KEYS_LIMIT_DEFAULT);
    if !(1..=KEYS_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("limit must be 1 to {KEYS_LIMIT_MAX}, got {limit}; page with `after`"),
        ));
    }
    let after = match &query.after {
        None => None,
        Some(cursor) => Some(parse_key_cursor(cursor).map_err(|e| ApiError::bad_request("bad_query", e))?),
    };
    let kinds: &[KeyKind] = match query.kind {
        None => &KINDS,
        Some(json::KeyKind::Register) => &[KeyKind::Register],
        Some(json::KeyKind::Counter) => &[KeyKind::Counter],
        Some(json::KeyKind::Set) => &[KeyKind::Set],
    };
    let rank = |kind: KeyKind| KINDS.iter().position(|&k| k == kind);
    // One key more than the page holds says whether there is a next page.
    let wanted = limit + 1;
    let mut found: Vec<(KeyKind, Vec<u8>)> = Vec::new();
    for &kind in kinds {
        let after_key = match &after {
            None => None,
            Some((after_kind, _)) if rank(kind) < rank(*after_kind) => continue,
            Some((after_kind, key)) if *after_kind == kind => Some(key.clone()),
            Some(_) => None,
        };
        let page = st.handle.keys(KeyQuery { kind, after: after_key, limit: wanted - found.len() }).await?;
        found.extend(page.into_iter().map(|key| (kind, key)));
        if found.len() >= wanted {
            break;
        }
    }
    let next = if found.len() > limit {
        found.truncate(limit);
        found.last().map(|(kind, key)| key_cursor(*kind, key))
    } else {
        None
    };
    let keys = found
        .iter()
        .map(|(kind, key)| json::KeyEntry {
            kind: json::KeyKind::from(*kind),
            key: text_of(key),
            key_base64: BASE64.encode(key),
        })
        .collect();
    Ok(Json(json::KeysPage { keys, next }))
}

async fn register(
    State(st): State<AppState>,
    ApiPath(key): ApiPath<String>,
) -> Result<Json<json::Register>, ApiError> {
    let key_bytes = check_key(key.clone(), "path")?;
    let read = st.handle.register(key_bytes).await?;
    let members = st.members_for(&read).await?;
    Ok(Json(json::Register { key, state: register_state_json(&read, &members) }))
}

async fn write(st: &AppState, ops: Vec<Op>) -> Result<Json<json::Ack>, ApiError> {
    Ok(Json(ack_json(st.handle.write(ops).await?)))
}

async fn put_register(
    State(st): State<AppState>,
    ApiPath(key): ApiPath<String>,
    ApiJson(body): ApiJson<ValueBody>,
) -> Result<Json<json::Ack>, ApiError> {
    if let Some(expected) = &body.if_context {
        // Checked on what this node holds now; the write then carries the context, so a write
        // that slipped in between stays as a sibling.
        let read = st.handle.register(check_key(key.clone(), "path")?).await?;
        let now = read.context();
        if context_events(expected, "if_context")? != now {
            let now = BASE64.encode(encode_context(&now));
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "context_changed",
                format!(
                    "the register changed since the read that gave if_context; nothing was written. \
                     Its context now is {now}: read it again and retry"
                ),
            ));
        }
    }
    write(&st, put_ops(key, body)?).await
}

fn put_ops(key: String, body: ValueBody) -> Result<Vec<Op>, ApiError> {
    let key = check_key(key, "path")?;
    let value = value_bytes(body.value, body.value_base64, "value", "")?;
    let (context, at) = match (body.context, body.if_context) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("bad_context", "give context or if_context, not both"));
        }
        (Some(context), None) => (Some(context), "context"),
        (None, if_context) => (if_context, "if_context"),
    };
    Ok(vec![with_context(Op::Put { key, value }, context, at)?])
}

async fn delete_register(
    State(st): State<AppState>,
    ApiPath(key): ApiPath<String>,
    ApiQuery(query): ApiQuery<json::DeleteQuery>,
) -> Result<Json<json::Ack>, ApiError> {
    let key = check_key(key, "path")?;
    write(&st, vec![with_context(Op::Del { key }, query.context, "context")?]).await
}

async fn counter(
    State(st): State<AppState>,
    ApiPath(key): ApiPath<String>,
) -> Result<Json<json::Counter>, ApiError> {
    let value = st.handle.counter(check_key(key.clone(), "path")?).await?;
    Ok(Json(json::Counter { key, value: json::CounterValue(value) }))
}

async fn incr_counter(
    State(st): State<AppState>,
    ApiPath(key): ApiPath<String>,
    ApiJson(body): ApiJson<IncrBody>,
) -> Result<Json<json::Ack>, ApiError> {
    write(&st, incr_ops(key, body)?).await
}

fn incr_ops(key: String, body: IncrBody) -> Result<Vec<Op>, ApiError> {
    Ok(vec![Op::Incr { key: check_key(key, "path")?, delta: body.delta }])
}

async fn set(State(st): State<AppState>, ApiPath(key): ApiPath<String>) -> Result<Json<json::Set>, ApiError> {
    let members = st.handle.set_members(check_key(key.clone(), "path")?).await?;
    Ok(Json(json::Set { key, members: members_json(&members) }))
}

async fn add_to_set(
    State(st): State<AppState>,
    ApiPath(key): ApiPath<String>,
    ApiJson(body): ApiJson<ElementBody>,
) -> Result<Json<json::Ack>, ApiError> {
    write(&st, element_ops(key, body, true)?).await
}

async fn remove_from_set(
    State(st): State<AppState>,
    ApiPath(key): ApiPath<String>,
    ApiJson(body): ApiJson<ElementBody>,
) -> Result<Json<json::Ack>, ApiError> {
    write(&st, element_ops(key, body, false)?).await
}

fn element_ops(key: String, body: ElementBody, add: bool) -> Result<Vec<Op>, ApiError> {
    let key = check_key(key, "path")?;
    let element = value_bytes(body.element, body.element_base64, "element", "")?;
    let op = if add { Op::Add { key, element } } else { Op::Remove { key, element } };
    Ok(vec![with_context(op, body.context, "context")?])
}

/// Where in a batch an error is: the op (`ops[3]`), the prefix of a message about one of its
/// fields (`ops[3]: `), or its context (`ops[3].context`). Written only into an error's
/// message, so that a valid batch makes no string per op.
#[derive(Clone, Copy)]
enum OpPlace {
    Op(usize),
    Prefix(usize),
    Context(usize),
}

impl std::fmt::Display for OpPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Op(idx) => write!(f, "ops[{idx}]"),
            Self::Prefix(idx) => write!(f, "ops[{idx}]: "),
            Self::Context(idx) => write!(f, "ops[{idx}].context"),
        }
    }
}

/// The op of one op of a batch; `op_idx` places it in errors.
fn batch_op(op: BatchOp, op_idx: usize) -> Result<Op, ApiError> {
    let (at, context_of, context_at) =
        (OpPlace::Op(op_idx), OpPlace::Prefix(op_idx), OpPlace::Context(op_idx));
    let op = match op {
        BatchOp::Put { key, value, value_base64, context } => with_context(
            Op::Put {
                key: check_key(key, at)?,
                value: value_bytes(value, value_base64, "value", context_of)?,
            },
            context,
            context_at,
        )?,
        BatchOp::Del { key, context } => {
            with_context(Op::Del { key: check_key(key, at)? }, context, context_at)?
        }
        BatchOp::Incr { key, delta } => Op::Incr { key: check_key(key, at)?, delta },
        BatchOp::Add { key, element, element_base64, context } => with_context(
            Op::Add {
                key: check_key(key, at)?,
                element: value_bytes(element, element_base64, "element", context_of)?,
            },
            context,
            context_at,
        )?,
        BatchOp::Remove { key, element, element_base64, context } => with_context(
            Op::Remove {
                key: check_key(key, at)?,
                element: value_bytes(element, element_base64, "element", context_of)?,
            },
            context,
            context_at,
        )?,
    };
    Ok(op)
}

async fn batch(
    State(st): State<AppState>,
    ApiJson(body): ApiJson<BatchBody>,
) -> Result<Json<json::Ack>, ApiError> {
    write(&st, batch_ops(body)?).await
}

fn batch_ops(body: BatchBody) -> Result<Vec<Op>, ApiError> {
    if body.ops.is_empty() {
        return Err(ApiError::bad_request("bad_batch", "the batch has no ops; give 1 to 256"));
    }
    if body.ops.len() > OPS_MAX {
        return Err(ApiError::bad_request(
            "bad_batch",
            format!("the batch has {} ops, over the limit of {OPS_MAX}; split it", body.ops.len()),
        ));
    }
    body.ops.into_iter().enumerate().map(|(idx, op)| batch_op(op, idx)).collect()
}

/// A write route whose JSON body [`write_body_ops`] parses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteRoute {
    /// `PUT /v1/registers/{key}`.
    PutRegister,
    /// `POST /v1/counters/{key}/incr`.
    IncrCounter,
    /// `POST /v1/sets/{key}/add`.
    AddToSet,
    /// `POST /v1/sets/{key}/remove`.
    RemoveFromSet,
    /// `POST /v1/batch` (no path key).
    Batch,
}

/// The ops a write request makes of its (decoded) path key and its JSON body, parsed and
/// checked by the code the handlers run once the body is read ([`Json::from_bytes`], as the
/// extractor does, then the same checks). An error is the answer's status, code and message.
/// Public for the fuzz targets in `cairn-tests`; the handlers do not call it.
pub fn write_body_ops(
    route: WriteRoute,
    key: String,
    body: &[u8],
) -> Result<Vec<Op>, (u16, &'static str, String)> {
    fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
        Ok(Json::<T>::from_bytes(body)?.0)
    }
    let ops = match route {
        WriteRoute::PutRegister => parse(body).and_then(|body| put_ops(key, body)),
        WriteRoute::IncrCounter => parse(body).and_then(|body| incr_ops(key, body)),
        WriteRoute::AddToSet => parse(body).and_then(|body| element_ops(key, body, true)),
        WriteRoute::RemoveFromSet => parse(body).and_then(|body| element_ops(key, body, false)),
        WriteRoute::Batch => parse(body).and_then(batch_ops),
    };
    ops.map_err(|e| (e.status.as_u16(), e.code, e.message))
}

async fn events(
    State(st): State<AppState>,
    ApiQuery(params): ApiQuery<json::EventsQuery>,
) -> Result<Json<json::EventsPage>, ApiError> {
    let limit = params.limit.unwrap_or(EVENTS_LIMIT_DEFAULT);
    if !(1..=EVENTS_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("limit must be 1 to {EVENTS_LIMIT_MAX}, got {limit}; page with `after`"),
        ));
    }
    let author = match params.author {
        None => None,
        Some(text) => Some(resolve_author(&st, &text).await?),
    };
    // One event more than the page holds says whether there is a next page.
    let mut events = st.handle.events(EventQuery { author, after: params.after, limit: limit + 1 }).await?;
    let next = if events.len() > limit {
        let first_left = events[limit].seq;
        events.truncate(limit);
        match author {
            Some(_) => {
                // A seq cursor cannot resume inside a seq, which only an equivocator's events
                // share: end the page before the seq that the limit cuts, unless that seq fills
                // the whole page (the module documentation says so).
                if events.first().is_some_and(|e| e.seq != first_left) {
                    events.retain(|e| e.seq < first_left);
                }
                events.last().map(|e| e.seq)
            }
            None => Some(params.after.unwrap_or(0).saturating_add(events.len() as u64)),
        }
    } else {
        None
    };
    Ok(Json(json::EventsPage { events: events.iter().map(event_summary_json).collect(), next }))
}

/// A member named by its key (64 hex digits) or its display name.
async fn resolve_author(st: &AppState, text: &str) -> Result<PublicKey, ApiError> {
    if let Ok(key) = PublicKey::from_str(&text.to_ascii_lowercase()) {
        return Ok(key);
    }
    let members = st.members_covering(|members| members.iter().any(|m| m.name == text)).await?;
    members.iter().find(|m| m.name == text).map(|m| m.key).ok_or_else(|| {
        ApiError::bad_request(
            "bad_query",
            format!(
                "unknown author {:?}: give a member's key (64 hex digits) or its name",
                truncate(text, 80)
            ),
        )
    })
}

async fn event(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<json::Event>, ApiError> {
    let id = parse_event_id(&id)?;
    match st.handle.event(id).await? {
        Some(info) => Ok(Json(event_json(&info)?)),
        None => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no accepted event has id {id}")))
        }
    }
}

/// Every validity rule checked again on an accepted event's canonical bytes, as `cairnctl
/// inspect event` checks a file, and more: membership is decided against this node's live
/// roster (the keys on the chains of the seats ever in force; the membership ops an event
/// carries, rules V2 to V5, are not checked again, and the check says so), and seq and
/// lamport against the deps it holds (at most `DEPS_MAX` reads).
async fn verify_event(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<json::InspectReport<json::InspectedEvent>>, ApiError> {
    let id = parse_event_id(&id)?;
    let Some(info) = st.handle.event(id).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no accepted event has id {id}"),
        ));
    };
    let bytes = rebuilt_event(&info)?.encode();
    let mut diagnosis = cairn_protocol::diagnose(&bytes, None);
    // Membership is judged against the node's live roster (asked now, not cached: adds,
    // replacements and rotations change it): the keys on the chain of a seat ever in force.
    let membership = st.handle.membership().await?;
    let seats = membership.resolution.seats_of(&info.author);
    if !seats.is_empty() {
        for (rule, verdict) in &mut diagnosis.verdicts {
            if *rule == EventRule::Membership {
                *verdict = Verdict::Pass;
            }
        }
    }
    let carries_membership =
        diagnosis.decoded.as_ref().is_some_and(|event| event.ops.iter().any(Op::is_membership));
    let mut deps = Vec::with_capacity(info.deps.len());
    for dep in &info.deps {
        match st.handle.event(*dep).await? {
            Some(dep) => deps.push(DepHeader { author: dep.author, seq: dep.seq, lamport: dep.lamport }),
            // Not held (it cannot be: an event is accepted after its deps); left undecided.
            None => break,
        }
    }
    diagnosis.decide_causal(&deps);
    let outcome = diagnosis.outcome();
    let mut checks: Vec<json::InspectCheck> =
        diagnosis.verdicts.iter().map(|(rule, verdict)| inspect_check(*rule, verdict)).collect();
    for check in checks.iter_mut().filter(|c| c.name == EventRule::Membership.name()) {
        check.detail = roster_detail(seats.len(), carries_membership, check.ok);
    }
    let decoded = diagnosis.decoded.as_ref().map(|event| {
        let header = &event.header;
        json::InspectedEvent {
            id: header.id().to_string(),
            author: header.author.to_string(),
            seq: header.seq,
            lamport: header.lamport,
            deps: header.deps.iter().map(ToString::to_string).collect(),
            ops_hash: hex::encode(header.ops_hash),
            sig: hex::encode(event.sig.0),
            ops: event.ops.iter().map(json::Op::from).collect(),
        }
    });
    Ok(Json(json::InspectReport {
        kind: "event".to_owned(),
        size: Some(diagnosis.n_bytes),
        hex_input: false,
        well_formed: decoded.is_some(),
        error: None,
        decoded,
        checks,
        outcome: match outcome {
            Outcome::Valid => "valid",
            Outcome::Invalid => "invalid",
            Outcome::Undecided => "undecided",
        }
        .to_owned(),
        valid: outcome == Outcome::Valid,
    }))
}

/// The words of the membership check of `GET /v1/events/{id}/verify`: what was judged
/// against what, and what was not (`ok`: the check's verdict).
fn roster_detail(n_seats: usize, carries_membership: bool, ok: Option<bool>) -> String {
    let mut detail = match ok {
        Some(true) => format!(
            "the author is a key of this node's roster (on the key chain of {} ever in force)",
            if n_seats == 1 { "a seat".to_owned() } else { format!("{n_seats} seats") }
        ),
        _ => "the author is not a key of this node's roster (no seat ever in force has it on its key chain)"
            .to_owned(),
    };
    if carries_membership {
        detail.push_str(
            "; its membership ops are not checked again by this page: rules V2 to V5 (docs/PROTOCOL.md §17) were \
             judged when this node accepted the event",
        );
    }
    detail
}

async fn evidence(State(st): State<AppState>) -> Result<Json<json::EvidenceList>, ApiError> {
    let list = st.handle.evidence().await?;
    let members = if list.is_empty() {
        Arc::from([])
    } else {
        st.members_covering(|members| list.iter().all(|e| members.iter().any(|m| m.key == e.author())))
            .await?
    };
    let membership = st.handle.membership().await?;
    let resolution = &membership.resolution;
    let vote = |v: &cairn_protocol::membership::Vote| json::VoteRef {
        event: v.event.to_string(),
        key: v.key.to_string(),
        seq: v.seq,
        change: v.change.to_string(),
    };
    let double_approvals = resolution
        .double_approvals()
        .iter()
        .map(|d| json::DoubleApproval {
            seat: d.seat.to_string(),
            name: resolution.in_force().seat(&d.seat).map(|s| s.name.clone()),
            base: hex::encode(d.base.0),
            round: d.round,
            first: vote(&d.first),
            second: vote(&d.second),
        })
        .collect();
    Ok(Json(json::EvidenceList {
        evidence: list.iter().map(|e| evidence_json(e, &members)).collect(),
        double_approvals,
    }))
}

async fn metrics(State(st): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], st.handle.metrics_text()).into_response()
}

/// Streams a backup of the store (see [`crate::backup`]). A failure or a shutdown in the
/// middle ends the body early, without the backup's end, which every reader refuses.
async fn backup(State(st): State<AppState>) -> Result<Response, ApiError> {
    let stream = st.handle.backup()?;
    let shutdown = st.shutdown.clone();
    let body = futures_util::stream::unfold(Some((stream, shutdown)), |state| async move {
        let (mut stream, mut shutdown) = state?;
        let chunk = tokio::select! {
            biased;
            () = stopped(&mut shutdown) => Some(Err("the daemon is shutting down".to_owned())),
            chunk = stream.next_chunk() => chunk,
        }?;
        match chunk {
            Ok(bytes) => Some((Ok(bytes::Bytes::from(bytes)), Some((stream, shutdown)))),
            // The error is the last item: the body ends without the backup's end.
            Err(error) => Some((Err(io::Error::other(error)), None)),
        }
    });
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], axum::body::Body::from_stream(body))
        .into_response())
}

// ---- the watch stream -----------------------------------------------------------------------

async fn change_state(st: &AppState, notice: &ChangeNotice) -> Result<json::ChangeState, ApiError> {
    let key = notice.key.clone();
    Ok(match notice.kind {
        KeyKind::Register => {
            let read = st.handle.register(key).await?;
            json::ChangeState::Register(register_state_json(&read, &st.members_for(&read).await?))
        }
        KeyKind::Counter => {
            json::ChangeState::Counter { value: json::CounterValue(st.handle.counter(key).await?) }
        }
        KeyKind::Set => json::ChangeState::Set { members: members_json(&st.handle.set_members(key).await?) },
    })
}

async fn change_event(st: &AppState, notice: ChangeNotice) -> SseEvent {
    let state = change_state(st, &notice)
        .await
        .unwrap_or_else(|error| json::ChangeState::Unavailable { state_error: error.message });
    let change = json::Change {
        kind: json::KeyKind::from(notice.kind),
        key: text_of(&notice.key),
        key_base64: BASE64.encode(&notice.key),
        position: notice.position,
        state,
    };
    sse_json("change", &change)
}

fn sse_json(name: &'static str, data: &impl Serialize) -> SseEvent {
    let event = SseEvent::default().event(name);
    // Serializing these plain structs into a Vec cannot fail; if it ever did, the client still
    // learns that something happened.
    event.json_data(data).unwrap_or_else(|e| SseEvent::default().event("error").data(e.to_string()))
}

struct WatchState {
    st: AppState,
    changes: broadcast::Receiver<ChangeNotice>,
    shutdown: watch::Receiver<bool>,
}

async fn watch_changes(State(st): State<AppState>) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    // Subscribe before answering, so every change after the response starts is delivered.
    let changes = st.handle.subscribe();
    let shutdown = st.shutdown.clone();
    let stream = futures_util::stream::unfold(WatchState { st, changes, shutdown }, |mut w| async move {
        let event = tokio::select! {
            biased;
            () = stopped(&mut w.shutdown) => return None,
            received = w.changes.recv() => match received {
                Ok(notice) => change_event(&w.st, notice).await,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    sse_json("lagged", &json::Lagged { missed })
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            },
        };
        Some((Ok(event), w))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(WATCH_KEEP_ALIVE))
}
