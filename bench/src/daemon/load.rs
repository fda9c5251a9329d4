//! The API load for `cairn-daemon-bench`: concurrent clients, each a tokio task with its own
//! persistent connection, each writing `PUT /v1/registers/{key}` (or reading it back with
//! `GET`, the API's own ceiling, or writing [`BATCH_OPS`] registers at once with
//! `POST /v1/batch`) one request after another.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;

use crate::cluster::Conn;

/// Bytes of each written value (text, so that the JSON body is the value plus a few bytes).
pub(crate) const VALUE_BYTES: usize = 64;

/// The register a client writes, and the value of its `i`th write (always [`VALUE_BYTES`]).
pub(crate) fn key_and_value(client: usize, i: usize) -> (String, String) {
    (format!("bench-{client:03}"), format!("{i:0width$}", width = VALUE_BYTES))
}

/// Ops in each `POST /v1/batch` of the batch load: the most one request may carry (one event).
pub(crate) const BATCH_OPS: usize = cairn_protocol::limits::OPS_MAX;

/// The body of a client's `i`th batch: [`BATCH_OPS`] puts of [`VALUE_BYTES`] text values to
/// the client's own registers `batch-CCC-OOO` (the same keys each time, so the document does
/// not grow during the run).
pub(crate) fn batch_body(client: usize, i: usize) -> String {
    use std::fmt::Write as _;
    let mut body = String::with_capacity(BATCH_OPS * (VALUE_BYTES + 48) + 16);
    body.push_str("{\"ops\":[");
    for op in 0..BATCH_OPS {
        if op > 0 {
            body.push(',');
        }
        // Infallible: writing to a String.
        let _ = write!(
            body,
            "{{\"op\":\"put\",\"key\":\"batch-{client:03}-{op:03}\",\"value\":\"{i:0width$}\"}}",
            width = VALUE_BYTES
        );
    }
    body.push_str("]}");
    body
}

/// What each client sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `PUT /v1/registers/bench-NNN`: a durable write.
    Write,
    /// `GET /v1/registers/bench-NNN`: the same HTTP, JSON and service-loop round trip without
    /// signing or fsync.
    Read,
    /// `POST /v1/batch` with [`BATCH_OPS`] puts: one durable event per request.
    Batch,
}

impl Kind {
    /// Ops (document writes) one request of this kind carries.
    pub(crate) fn ops_per_request(self) -> usize {
        match self {
            Self::Write => 1,
            Self::Read => 0,
            Self::Batch => BATCH_OPS,
        }
    }
}

/// When the load stops.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Until {
    /// After this long; writes completed in the first `warm_up` are not counted.
    Time { warm_up: Duration, measured: Duration },
    /// After this many writes in all (all counted).
    Count(usize),
}

/// What a load run saw.
#[derive(Clone, Debug)]
pub(crate) struct LoadResult {
    /// Requests answered 200 within the counted window.
    pub(crate) n_ok: usize,
    /// Answers other than 200 (e.g. 503 busy), in the whole run.
    pub(crate) n_refused: usize,
    /// Length of the counted window, seconds.
    pub(crate) secs: f64,
    /// Latency of each counted write, sorted.
    pub(crate) latencies: Vec<Duration>,
}

impl LoadResult {
    pub(crate) fn per_sec(&self) -> f64 {
        self.n_ok as f64 / self.secs
    }

    /// The `q`-quantile latency in milliseconds (nearest rank).
    pub(crate) fn latency_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[rank - 1].as_secs_f64() * 1e3
    }
}

/// Opens `clients` connections to the API socket `socket`.
pub(crate) async fn connect(socket: &Path, clients: usize) -> anyhow::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(Conn::connect(socket).await?);
    }
    Ok(conns)
}

/// Runs one writer per connection from `start` (now or a moment ago) until `until`.
pub(crate) async fn run(conns: Vec<Conn>, start: Instant, until: Until) -> anyhow::Result<LoadResult> {
    run_kind(conns, start, until, Kind::Write).await
}

/// [`run`] with reads or writes.
pub(crate) async fn run_kind(
    conns: Vec<Conn>,
    start: Instant,
    until: Until,
    kind: Kind,
) -> anyhow::Result<LoadResult> {
    let (count_from, stop_at, total) = match until {
        Until::Time { warm_up, measured } => (start + warm_up, Some(start + warm_up + measured), None),
        Until::Count(n) => (start, None, Some(n)),
    };
    let issued = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (client, mut conn) in conns.into_iter().enumerate() {
        let issued = issued.clone();
        tasks.spawn(async move {
            // (completed at, latency) of every write, and the refused count.
            let mut done: Vec<(Instant, Duration)> = Vec::new();
            let mut refused = 0usize;
            for i in 0.. {
                if stop_at.is_some_and(|t| Instant::now() >= t) {
                    break;
                }
                if total.is_some_and(|n| issued.fetch_add(1, Ordering::Relaxed) >= n) {
                    break;
                }
                let (key, value) = key_and_value(client, i);
                let path = format!("/v1/registers/{key}");
                // Built before the clock starts: only the round trip is timed.
                let body = match kind {
                    Kind::Write => Bytes::from(format!("{{\"value\":\"{value}\"}}")),
                    Kind::Read => Bytes::new(),
                    Kind::Batch => Bytes::from(batch_body(client, i)),
                };
                let sent = Instant::now();
                let status = match kind {
                    Kind::Write => conn.put(&path, body).await?,
                    Kind::Read => conn.get(&path).await?,
                    Kind::Batch => conn.post("/v1/batch", body).await?,
                };
                let now = Instant::now();
                if status.is_success() {
                    done.push((now, now - sent));
                } else {
                    refused += 1;
                    if refused > 1_000 {
                        bail!("the daemon refused over 1 000 writes (last answer {status})");
                    }
                    if total.is_some() {
                        // Count mode must reach its total: issue this one again.
                        issued.fetch_sub(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            anyhow::Ok((done, refused))
        });
    }
    let mut latencies = Vec::new();
    let mut n_refused = 0;
    let mut last = start;
    let end_window = stop_at.unwrap_or(start + Duration::from_secs(3600 * 24));
    while let Some(joined) = tasks.join_next().await {
        let (done, refused) = joined??;
        n_refused += refused;
        for (at, latency) in done {
            if at >= count_from && at <= end_window {
                latencies.push(latency);
                last = last.max(at);
            }
        }
    }
    let window_end = stop_at.unwrap_or(last);
    latencies.sort_unstable();
    Ok(LoadResult {
        n_ok: latencies.len(),
        n_refused,
        secs: (window_end - count_from).as_secs_f64(),
        latencies,
    })
}
