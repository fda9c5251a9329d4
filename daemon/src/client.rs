//! A client of the local API over its Unix socket (hyper 1, HTTP/1.1), used by `cairnctl` and
//! by tests. One connection per request: the CLI makes a few requests, and a fresh connection
//! cannot be left in a bad state by an earlier one.
//!
//! One typed method per route ([`Client::status`], [`Client::put`], …) sends the request types
//! of [`crate::json`] and reads the answer into its type, keeping the bytes the daemon sent
//! ([`Answer`]) for those who print them as they are. [`Client::get_json`] and friends read any
//! answer as a [`serde_json::Value`], for tests that look at the JSON itself.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::json::{self, WatchEvent};

/// The largest answer the client reads. The largest the daemon sends is one full event as
/// JSON (under 1 MiB) or a page of the event list; this leaves ample room.
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The longest a request may take, from connecting to the end of the answer (not for
/// [`Client::watch`]). A write waits for an fsync, which takes milliseconds; a daemon that
/// takes a minute is stuck, and the operator should hear about it rather than wait.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest line of a watch stream; one change with a full register is far below it.
const WATCH_LINE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A backup being written is synced to disk every this many bytes. The file system commits a
/// node's fsync together with whatever other writes it has started meanwhile (ext4's ordered
/// journal): left to the kernel, gigabytes of backup would be written back in bulk, and the
/// node whose store is being backed up, often on the same disk, would wait for them at its
/// next commit. Syncing as it goes bounds that wait to about this many bytes of writes.
pub const BACKUP_SYNC_BYTES: u64 = 16 * 1024 * 1024;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The socket could not be reached: the daemon is not running, or the path is wrong.
    #[error(
        "cannot connect to cairnd at {}: {error}; is the daemon running (`systemctl status cairnd`)? \
         For another socket pass --socket PATH or set CAIRN_SOCKET",
        socket.display()
    )]
    Connect {
        /// The socket path tried.
        socket: PathBuf,
        /// What connecting said.
        error: io::Error,
    },
    /// The daemon answered with an error.
    #[error("the daemon answered {status}: {message}")]
    Http {
        /// The HTTP status.
        status: StatusCode,
        /// The daemon's error code (`not_found`, `bad_value`, …); empty if it sent none.
        code: String,
        /// The daemon's message.
        message: String,
    },
    /// The connection broke during the exchange.
    #[error("the connection to cairnd broke: {0}")]
    Transport(String),
    /// The daemon did not answer in time.
    #[error("cairnd did not answer within {} s; check `systemctl status cairnd` and its log", .0.as_secs())]
    Timeout(Duration),
    /// The answer is not what the API sends.
    #[error("bad answer from cairnd: {0}")]
    BadResponse(String),
}

impl ClientError {
    /// The HTTP status, for an error answer from the daemon.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The daemon's error code, for an error answer from the daemon.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Http { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Percent-encodes `text` as one path segment: everything but RFC 3986's unreserved
/// characters, so a key with `/`, `?`, `%` or spaces reaches the daemon as it is.
pub fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A typed answer, with the bytes of JSON the daemon sent.
#[derive(Clone, Debug)]
pub struct Answer<T> {
    /// The answer, read.
    pub value: T,
    /// The answer as the daemon sent it (`cairnctl --json` prints it, with its fields in their
    /// order).
    pub body: Bytes,
}

/// The path of `route` (`registers`, `counters`, `sets`) for `key`, percent-encoded, then
/// `tail` (`""`, `/incr`, `/add`, …).
fn key_path(route: &str, key: &str, tail: &str) -> String {
    format!("/v1/{route}/{}{tail}", path_segment(key))
}

/// A client of the API socket at one path.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client of the socket at `socket`; nothing is connected until a request.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self { socket: socket.into() }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Answer<json::Status>, ClientError> {
        self.typed(Method::GET, "/v1/status", None::<&()>).await
    }

    /// `GET /v1/peers`.
    pub async fn peers(&self) -> Result<Answer<json::Peers>, ClientError> {
        self.typed(Method::GET, "/v1/peers", None::<&()>).await
    }

    /// `GET /v1/members`.
    pub async fn membership(&self) -> Result<Answer<json::Membership>, ClientError> {
        self.typed(Method::GET, "/v1/members", None::<&()>).await
    }

    /// `POST /v1/members/changes`: proposes a membership change (and votes for it).
    pub async fn propose_change(
        &self,
        body: &json::ChangeBody,
    ) -> Result<Answer<json::MemberAck>, ClientError> {
        self.typed(Method::POST, "/v1/members/changes", Some(body)).await
    }

    /// `POST /v1/members/changes/{id}/approve`: votes for a pending change (`force`: a removal
    /// even if its cut may drop acknowledged writes).
    pub async fn approve_change(
        &self,
        change: &str,
        force: bool,
    ) -> Result<Answer<json::MemberAck>, ClientError> {
        let query = if force { "?force=true" } else { "" };
        self.typed(Method::POST, &format!("/v1/members/changes/{change}/approve{query}"), None::<&()>).await
    }

    /// `POST /v1/members/rotate`: rotates the node's key.
    pub async fn rotate_key(&self) -> Result<Answer<json::KeyRotated>, ClientError> {
        self.typed(Method::POST, "/v1/members/rotate", None::<&()>).await
    }

    /// `GET /v1/keys`: one page.
    pub async fn keys(&self, query: &json::KeysQuery) -> Result<Answer<json::KeysPage>, ClientError> {
        self.typed(Method::GET, &format!("/v1/keys{}", query.to_query()), None::<&()>).await
    }

    /// `GET /v1/registers/{key}`.
    pub async fn register(&self, key: &str) -> Result<Answer<json::Register>, ClientError> {
        self.typed(Method::GET, &key_path("registers", key, ""), None::<&()>).await
    }

    /// `PUT /v1/registers/{key}`.
    pub async fn put(&self, key: &str, body: &json::ValueBody) -> Result<Answer<json::Ack>, ClientError> {
        self.typed(Method::PUT, &key_path("registers", key, ""), Some(body)).await
    }

    /// `DELETE /v1/registers/{key}`, with the causal context of a read if given.
    pub async fn delete(&self, key: &str, context: Option<&str>) -> Result<Answer<json::Ack>, ClientError> {
        let query = context.map_or_else(String::new, |context| format!("?context={}", path_segment(context)));
        self.typed(Method::DELETE, &key_path("registers", key, &query), None::<&()>).await
    }

    /// `GET /v1/counters/{key}`.
    pub async fn counter(&self, key: &str) -> Result<Answer<json::Counter>, ClientError> {
        self.typed(Method::GET, &key_path("counters", key, ""), None::<&()>).await
    }

    /// `POST /v1/counters/{key}/incr`.
    pub async fn incr(&self, key: &str, delta: i64) -> Result<Answer<json::Ack>, ClientError> {
        let body = json::IncrBody { delta };
        self.typed(Method::POST, &key_path("counters", key, "/incr"), Some(&body)).await
    }

    /// `GET /v1/sets/{key}`.
    pub async fn set(&self, key: &str) -> Result<Answer<json::Set>, ClientError> {
        self.typed(Method::GET, &key_path("sets", key, ""), None::<&()>).await
    }

    /// `POST /v1/sets/{key}/add`.
    pub async fn set_add(
        &self,
        key: &str,
        body: &json::ElementBody,
    ) -> Result<Answer<json::Ack>, ClientError> {
        self.typed(Method::POST, &key_path("sets", key, "/add"), Some(body)).await
    }

    /// `POST /v1/sets/{key}/remove`.
    pub async fn set_remove(
        &self,
        key: &str,
        body: &json::ElementBody,
    ) -> Result<Answer<json::Ack>, ClientError> {
        self.typed(Method::POST, &key_path("sets", key, "/remove"), Some(body)).await
    }

    /// `POST /v1/batch`.
    pub async fn batch(&self, body: &json::BatchBody) -> Result<Answer<json::Ack>, ClientError> {
        self.typed(Method::POST, "/v1/batch", Some(body)).await
    }

    /// `GET /v1/events`: one page.
    pub async fn events(&self, query: &json::EventsQuery) -> Result<Answer<json::EventsPage>, ClientError> {
        self.typed(Method::GET, &format!("/v1/events{}", query.to_query()), None::<&()>).await
    }

    /// `GET /v1/events/{id}`; `id` is 64 hex digits.
    pub async fn event(&self, id: &str) -> Result<Answer<json::Event>, ClientError> {
        self.typed(Method::GET, &format!("/v1/events/{}", path_segment(id)), None::<&()>).await
    }

    /// `GET /v1/evidence`.
    pub async fn evidence(&self) -> Result<Answer<json::EvidenceList>, ClientError> {
        self.typed(Method::GET, "/v1/evidence", None::<&()>).await
    }

    /// `GET /v1/metrics`: OpenMetrics text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        self.get_text("/v1/metrics").await
    }

    /// Follows `GET /v1/watch`: calls `on_event` with each event this version knows and its
    /// data as the daemon sent it, until it returns false (then `Ok`) or the daemon ends the
    /// stream (an error: the daemon is stopping). Events of other names are skipped, so that a
    /// newer daemon can add some; a known event whose data does not read is a bad answer.
    pub async fn watch_changes(
        &self,
        mut on_event: impl FnMut(WatchEvent, &str) -> bool,
    ) -> Result<(), ClientError> {
        let mut bad: Option<ClientError> = None;
        let followed = self
            .watch("/v1/watch", |name, data| match WatchEvent::parse(name, data) {
                Ok(Some(event)) => on_event(event, data),
                Ok(None) => true,
                Err(error) => {
                    bad = Some(ClientError::BadResponse(format!("a watch {name:?} event: {error}")));
                    false
                }
            })
            .await;
        match bad {
            Some(error) => Err(error),
            None => followed,
        }
    }

    /// `method path` with an optional JSON body, its answer read as `T` and kept as sent.
    async fn typed<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Answer<T>, ClientError> {
        let body = self.with_timeout(self.exchange(method, path, encode(body)?)).await?;
        let value = serde_json::from_slice(&body)
            .map_err(|e| ClientError::BadResponse(format!("not the expected JSON: {e}")))?;
        Ok(Answer { value, body })
    }

    /// `GET path`, answered with JSON.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.request_json(Method::GET, path, None::<&()>).await
    }

    /// `method path` with `body` as JSON, answered with JSON.
    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        body: &impl Serialize,
    ) -> Result<serde_json::Value, ClientError> {
        self.request_json(method, path, Some(body)).await
    }

    /// `method path` with an optional JSON body, its JSON answer parsed as `T` (for values
    /// that [`serde_json::Value`] cannot hold exactly, such as a counter beyond `i64`).
    pub async fn request_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        Ok(self.typed(method, path, body).await?.value)
    }

    /// `GET path`, answered with text (the metrics).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let bytes = self.with_timeout(self.exchange(Method::GET, path, None)).await?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| ClientError::BadResponse("the text is not UTF-8".into()))
    }

    /// `GET /v1/backup`: writes the backup stream into `file` as it comes, synced every
    /// [`BACKUP_SYNC_BYTES`] and at the end; returns its length. Gives up if no bytes come for
    /// [`REQUEST_TIMEOUT`]. The caller checks what was written (`crate::backup::Reader`): a
    /// stream the daemon ended early lacks the end.
    pub async fn backup_into(&self, file: &mut std::fs::File) -> Result<u64, ClientError> {
        use std::io::Write as _;
        let response = self.with_timeout(self.start(Method::GET, "/v1/backup", None)).await?;
        let mut body = response.into_body();
        let mut written = 0u64;
        loop {
            let frame = tokio::time::timeout(REQUEST_TIMEOUT, body.frame())
                .await
                .map_err(|_| ClientError::Timeout(REQUEST_TIMEOUT))?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| ClientError::Transport(e.to_string()))?;
            let Ok(data) = frame.into_data() else { continue };
            file.write_all(&data)
                .map_err(|e| ClientError::Transport(format!("cannot write the backup file: {e}")))?;
            let before = written;
            written += data.len() as u64;
            if before / BACKUP_SYNC_BYTES != written / BACKUP_SYNC_BYTES {
                file.sync_data()
                    .map_err(|e| ClientError::Transport(format!("cannot sync the backup file: {e}")))?;
            }
        }
        file.sync_all().map_err(|e| ClientError::Transport(format!("cannot sync the backup file: {e}")))?;
        Ok(written)
    }

    /// Follows the server-sent events at `path`: calls `on_event(name, data)` for each event
    /// (`data` with its lines joined by `\n`) until it returns false (then `Ok`) or the daemon
    /// ends the stream (an error: the daemon is stopping).
    pub async fn watch(
        &self,
        path: &str,
        mut on_event: impl FnMut(&str, &str) -> bool,
    ) -> Result<(), ClientError> {
        let response = self.with_timeout(self.start(Method::GET, path, None)).await?;
        let mut body = response.into_body();
        let mut parser = SseParser::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Transport(e.to_string()))?;
            let Ok(data) = frame.into_data() else { continue };
            for (name, data) in parser.push(&data)? {
                if !on_event(&name, &data) {
                    return Ok(());
                }
            }
        }
        Err(ClientError::Transport("the daemon ended the watch stream (is it stopping?)".into()))
    }

    async fn with_timeout<T>(
        &self,
        future: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        tokio::time::timeout(REQUEST_TIMEOUT, future)
            .await
            .map_err(|_| ClientError::Timeout(REQUEST_TIMEOUT))?
    }

    /// Sends a request and reads the whole answer.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let response = self.start(method, path, body).await?;
        read_body(response).await
    }

    /// Connects, sends a request and checks the status; error answers become [`ClientError::Http`].
    async fn start(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let response = self.send(method, path, body).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let bytes = read_body(response).await?;
        Err(http_error(status, &bytes))
    }

    /// `GET /v1/health`: the daemon's liveness and readiness, whether it answered 200 (ready)
    /// or 503 (not); `Ok(None)` with the status when it answered anything else.
    pub async fn health(&self) -> Result<(StatusCode, Option<json::Health>), ClientError> {
        self.with_timeout(async {
            let response = self.send(Method::GET, "/v1/health", None).await?;
            let status = response.status();
            let bytes = read_body(response).await?;
            Ok((status, serde_json::from_slice(&bytes).ok()))
        })
        .await
    }

    /// Connects and sends a request; the answer whatever its status.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|error| ClientError::Connect { socket: self.socket.clone(), error })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| ClientError::Transport(e.to_string()))?;
        // The connection task ends with the exchange; its errors surface through `sender`.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = Request::builder().method(method).uri(path).header(header::HOST, "cairnd");
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::BadResponse(format!("cannot build the request for {path:?}: {e}")))?;
        sender.send_request(request).await.map_err(|e| ClientError::Transport(e.to_string()))
    }
}

/// A request body as JSON.
fn encode(body: Option<&impl Serialize>) -> Result<Option<Vec<u8>>, ClientError> {
    body.map(|body| {
        serde_json::to_vec(body)
            .map_err(|e| ClientError::BadResponse(format!("cannot encode the request: {e}")))
    })
    .transpose()
}

async fn read_body(response: Response<Incoming>) -> Result<Bytes, ClientError> {
    let collected = Limited::new(response.into_body(), RESPONSE_BYTES_MAX).collect().await.map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            ClientError::BadResponse(format!("the answer is over {RESPONSE_BYTES_MAX} bytes"))
        } else {
            ClientError::Transport(e.to_string())
        }
    })?;
    Ok(collected.to_bytes())
}

/// The daemon's `{"error": {"code", "message"}}`, or the body as text if it sent something else.
fn http_error(status: StatusCode, body: &[u8]) -> ClientError {
    let (code, message) = match serde_json::from_slice::<json::ErrorBody>(body) {
        Ok(json::ErrorBody { error }) => (error.code, error.message),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            (
                String::new(),
                if text.is_empty() { "(no message)".to_owned() } else { text.chars().take(500).collect() },
            )
        }
    };
    ClientError::Http { status, code, message }
}

/// Splits a server-sent events stream into `(event name, data)` pairs.
#[derive(Default)]
struct SseParser {
    line: Vec<u8>,
    name: Option<String>,
    data: Option<String>,
}

impl SseParser {
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<(String, String)>, ClientError> {
        let mut events = Vec::new();
        for &byte in chunk {
            if byte != b'\n' {
                if self.line.len() >= WATCH_LINE_BYTES_MAX {
                    return Err(ClientError::BadResponse(format!(
                        "a watch line is over {WATCH_LINE_BYTES_MAX} bytes"
                    )));
                }
                self.line.push(byte);
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let line = String::from_utf8_lossy(&line);
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    events.push((self.name.take().unwrap_or_else(|| "message".to_owned()), data));
                }
                self.name = None;
                continue;
            }
            // A line is `field: value` (one optional space); `:` starts a comment (keep-alive).
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.name = Some(value.to_owned()),
                "data" => match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                },
                _ => {}
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segment_escapes_all_but_unreserved() {
        assert_eq!(path_segment("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(path_segment("a/b c?%"), "a%2Fb%20c%3F%25");
        assert_eq!(path_segment("é"), "%C3%A9");
    }

    #[test]
    fn sse_parser_splits_events_across_chunks() {
        let mut parser = SseParser::default();
        assert!(parser.push(b": keep-alive\n\nevent: change\nda").unwrap().is_empty());
        let events = parser.push(b"ta: {\"a\":1}\ndata: x\n\ndata:plain\r\n\r\n").unwrap();
        assert_eq!(
            events,
            vec![
                ("change".to_owned(), "{\"a\":1}\nx".to_owned()),
                ("message".to_owned(), "plain".to_owned())
            ]
        );
    }

    #[test]
    fn http_error_reads_the_daemon_error_or_the_text() {
        let error =
            http_error(StatusCode::NOT_FOUND, br#"{"error":{"code":"not_found","message":"no such"}}"#);
        assert_eq!(error.code(), Some("not_found"));
        assert_eq!(error.to_string(), "the daemon answered 404 Not Found: no such");
        let error = http_error(StatusCode::BAD_GATEWAY, b"  upstream  ");
        assert_eq!(error.to_string(), "the daemon answered 502 Bad Gateway: upstream");
    }
}
