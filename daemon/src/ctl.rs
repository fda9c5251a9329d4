//! `cairnctl`, the admin CLI: one subcommand per API route, tables for people and `--json` for
//! scripts, and `inspect`, which checks an event's or evidence's bytes offline. The binary
//! (`src/bin/cairnctl.rs`) only calls [`run`] and prints the error.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (also when stdout is closed early, or `watch` is stopped with Ctrl-C) |
//! | 1 | the daemon answered with an error, or could not be reached; a file could not be read |
//! | 2 | usage error (clap) |
//! | 3 | not found: `event ID` of an event the daemon does not hold |
//! | 4 | `inspect`: the bytes are malformed, or a hash, signature or other check fails |
//!
//! `get` of a register with no value prints `(no value)` and exits 0.

use std::ffi::OsString;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use cairn_crypto::verify_strict;
use cairn_protocol::codec::{self, CodecError};
use cairn_protocol::event::ops_hash;
use cairn_protocol::limits::OPS_MAX;
use cairn_protocol::{Event, Evidence, Op, SignedHeader};
use clap::{Parser, Subcommand, ValueEnum};
use comfy_table::{Table, presets};
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::{OpJson, REQUEST_BYTES_MAX, signed_header_json};
use crate::client::{Client, ClientError, path_segment};

/// The socket `cairnd` listens on by default.
pub const DEFAULT_SOCKET: &str = "/run/cairn/cairnd.sock";
/// The environment variable naming the socket when `--socket` is not given.
pub const SOCKET_ENV: &str = "CAIRN_SOCKET";

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the daemon answered with an error or could not be reached.
pub const EXIT_ERROR: u8 = 1;
/// Exit code: usage error (clap's own).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the event asked for is unknown.
pub const EXIT_NOT_FOUND: u8 = 3;
/// Exit code: `inspect` found the bytes malformed or a check failing.
pub const EXIT_INSPECT_FAILED: u8 = 4;

/// The largest file `inspect` reads: hex text of the largest event, with line breaks, fits.
const INSPECT_FILE_BYTES_MAX: usize = 1024 * 1024;

const AFTER_HELP: &str = "\
The socket is --socket PATH, else $CAIRN_SOCKET, else /run/cairn/cairnd.sock.
Keys are UTF-8 text. Values and elements are text, or base64 with --base64.

Exit codes:
  0  success (also when stdout closes early, or watch is stopped with Ctrl-C)
  1  the daemon answered with an error or could not be reached; a file could not be read
  2  usage error
  3  not found: `event ID` of an event the daemon does not hold
  4  inspect: the bytes are malformed, or a hash, signature or other check fails";

/// cairnctl's command line.
#[derive(Debug, Parser)]
#[command(
    name = "cairnctl",
    version,
    about = "Inspect and drive a cairnd node through its local API",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// The daemon's API socket [env: CAIRN_SOCKET] [default: /run/cairn/cairnd.sock].
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print machine output: the daemon's JSON as it is, pretty-printed (JSON lines for `watch`).
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A key space, for `keys --kind`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Kind {
    /// Registers (`get`, `put`, `del`).
    Register,
    /// Counters (`counter`, `incr`).
    Counter,
    /// Sets (`members`, `sadd`, `srem`).
    Set,
}

/// cairnctl's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The node in brief: key, cluster, own seq, digests, buffer, peers, whether writes are accepted.
    Status,
    /// Every other member: address, connection state, round trip, counters.
    Peers,
    /// A register's value, and its concurrent values (siblings) if there are several.
    Get {
        /// The register's key.
        key: String,
    },
    /// Writes a register; returns once the event is on disk on this node.
    Put {
        /// The register's key.
        key: String,
        /// The value (text, or base64 with --base64).
        value: String,
        /// VALUE is base64 of arbitrary bytes.
        #[arg(long)]
        base64: bool,
    },
    /// Deletes a register's values.
    Del {
        /// The register's key.
        key: String,
    },
    /// Adds a signed delta to a counter (`incr hits -5`, `incr hits -- -5` or `incr hits --delta -5`).
    Incr {
        /// The counter's key.
        key: String,
        /// The amount to add; negative to subtract.
        #[arg(value_name = "DELTA", allow_negative_numbers = true, required_unless_present = "delta")]
        amount: Option<i64>,
        /// The amount to add, as an option.
        #[arg(long, value_name = "DELTA", allow_negative_numbers = true, conflicts_with = "amount")]
        delta: Option<i64>,
    },
    /// A counter's value.
    Counter {
        /// The counter's key.
        key: String,
    },
    /// Adds an element to a set.
    Sadd {
        /// The set's key.
        key: String,
        /// The element (text, or base64 with --base64).
        element: String,
        /// ELEMENT is base64 of arbitrary bytes.
        #[arg(long)]
        base64: bool,
    },
    /// Removes an element from a set (the adds this node has seen; a concurrent add wins).
    Srem {
        /// The set's key.
        key: String,
        /// The element (text, or base64 with --base64).
        element: String,
        /// ELEMENT is base64 of arbitrary bytes.
        #[arg(long)]
        base64: bool,
    },
    /// A set's members.
    Members {
        /// The set's key.
        key: String,
    },
    /// The keys with a value, of one kind or all.
    Keys {
        /// Only keys of this kind.
        #[arg(long, value_enum)]
        kind: Option<Kind>,
    },
    /// Writes several ops as one event, atomically, from a JSON file (`-` for stdin).
    ///
    /// The file holds `{"ops": [...]}` or just the list, each op one of
    /// `{"op":"put","key":"k","value":"v"}` (or `"value_base64"`), `{"op":"del","key":"k"}`,
    /// `{"op":"incr","key":"k","delta":-5}`, `{"op":"add","key":"k","element":"e"}` and
    /// `{"op":"remove","key":"k","element":"e"}` (or `"element_base64"`).
    Batch {
        /// The JSON file, or `-` for stdin.
        file: PathBuf,
    },
    /// Accepted events, oldest first.
    Events {
        /// Only this member's events: its key (64 hex digits) or its name.
        #[arg(long)]
        author: Option<String>,
        /// With --author: events with a seq above N; otherwise events accepted after position N.
        #[arg(long, value_name = "N")]
        after: Option<u64>,
        /// At most N events (1 to 1000; the daemon's default is 100).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// One accepted event, with its ops.
    Event {
        /// The event id (64 hex digits).
        id: String,
    },
    /// Equivocation evidence: members proved to have signed two events with the same seq.
    Evidence,
    /// Prints each change to the document as it is applied, until Ctrl-C.
    Watch,
    /// The daemon's metrics in OpenMetrics text.
    Metrics,
    /// Checks an event's or evidence's bytes offline, without a daemon.
    Inspect {
        /// What the file holds.
        #[command(subcommand)]
        what: Inspect,
    },
}

/// What `inspect` reads.
#[derive(Debug, Subcommand)]
pub enum Inspect {
    /// An encoded event: is it well formed, does its ops hash match, does its signature hold?
    Event {
        /// The raw canonical bytes, or hex text of them; `-` for stdin.
        file: PathBuf,
    },
    /// Encoded evidence: is it well formed, and does it prove an equivocation?
    Evidence {
        /// The raw canonical bytes, or hex text of them (such as `encoded_hex`); `-` for stdin.
        file: PathBuf,
    },
}

/// An unknown event: exit code [`EXIT_NOT_FOUND`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(String);

/// The exit code for an error from [`run`].
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error.chain().any(|cause| cause.is::<NotFound>()) { EXIT_NOT_FOUND } else { EXIT_ERROR }
}

/// Whether `error` is a write to a closed pipe (`cairnctl events | head`): not a failure.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe))
}

/// Runs cairnctl with `args` (the program name first). Usage errors print clap's message and
/// exit 2 from inside; every other error is returned for the caller to print.
pub fn run<I, T>(args: I) -> anyhow::Result<ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    let stdout = io::stdout();
    let mut out = Output { tty: stdout.is_terminal(), json: cli.json, writer: Box::new(stdout.lock()) };
    let code = match cli.command {
        // Offline: no socket, no runtime.
        Command::Inspect { what } => inspect(&mut out, what)?,
        command => {
            let socket = cli
                .socket
                .or_else(|| std::env::var_os(SOCKET_ENV).filter(|s| !s.is_empty()).map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
            let client = Client::new(socket);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(online(&client, &mut out, command))?
        }
    };
    out.writer.flush()?;
    Ok(ExitCode::from(code))
}

/// Where results go, and how.
struct Output {
    /// Whether stdout is a terminal: tables get borders only there.
    tty: bool,
    json: bool,
    writer: Box<dyn Write>,
}

impl Output {
    fn line(&mut self, text: impl std::fmt::Display) -> io::Result<()> {
        writeln!(self.writer, "{text}")
    }

    fn print_json(&mut self, value: &impl Serialize) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(value)?;
        self.line(text)?;
        Ok(())
    }

    /// Prints a table; without a terminal, without the padding at the ends of lines.
    fn print_table(&mut self, table: &Table) -> io::Result<()> {
        if self.tty {
            return self.line(table);
        }
        for line in table.lines() {
            self.line(line.trim_end())?;
        }
        Ok(())
    }

    fn table(&self, header: &[&str]) -> Table {
        let mut table = Table::new();
        table.load_style(if self.tty { presets::UTF8_FULL } else { presets::NOTHING });
        if !header.is_empty() {
            table.set_header(header.to_vec());
        }
        table
    }
}

// ---- rendering JSON values ------------------------------------------------------------------

/// A field as text: strings as they are, `null` or missing as `-`, anything else as JSON.
fn field(value: &Value, name: &str) -> String {
    match value.get(name) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    }
}

/// Bytes shown by the API as `name` (text or null) and `name_base64`: the text, or `base64:…`.
fn bytes_field(value: &Value, name: &str) -> String {
    match (
        value.get(name).and_then(Value::as_str),
        value.get(format!("{name}_base64")).and_then(Value::as_str),
    ) {
        (Some(text), _) => text.to_owned(),
        (None, Some(encoded)) => format!("base64:{encoded}"),
        (None, None) => "-".to_owned(),
    }
}

/// Like [`bytes_field`], quoted for a line of `watch` (so that spaces and empty text show).
fn quoted_bytes(value: &Value, name: &str) -> String {
    match value.get(name).and_then(Value::as_str) {
        Some(text) => format!("{text:?}"),
        None => bytes_field(value, name),
    }
}

fn short(id: &str) -> String {
    if id.len() > 16 { format!("{}…", &id[..16]) } else { id.to_owned() }
}

fn array<'a>(value: &'a Value, name: &str) -> &'a [Value] {
    value.get(name).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

// ---- commands that talk to the daemon -------------------------------------------------------

#[derive(Serialize)]
struct ValueBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
}

#[derive(Serialize)]
struct ElementBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    element: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    element_base64: Option<String>,
}

/// A counter as the API sends it; parsed directly so that an i128 beyond `i64` stays exact.
#[derive(Deserialize, Serialize)]
struct CounterAnswer {
    key: String,
    value: i128,
}

async fn online(client: &Client, out: &mut Output, command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Status => status(out, &client.get_json("/v1/status").await?)?,
        Command::Peers => peers(out, &client.get_json("/v1/peers").await?)?,
        Command::Get { key } => {
            register(out, &client.get_json(&format!("/v1/registers/{}", path_segment(&key))).await?)?
        }
        Command::Put { key, value, base64 } => {
            let body = if base64 {
                ValueBody { value: None, value_base64: Some(value) }
            } else {
                ValueBody { value: Some(value), value_base64: None }
            };
            let path = format!("/v1/registers/{}", path_segment(&key));
            ack(out, &client.send_json(Method::PUT, &path, &body).await?)?;
        }
        Command::Del { key } => {
            let path = format!("/v1/registers/{}", path_segment(&key));
            ack(out, &client.request_json(Method::DELETE, &path, None::<&()>).await?)?;
        }
        Command::Incr { key, amount, delta } => {
            let Some(delta) = amount.or(delta) else {
                bail!("give the amount: `incr KEY DELTA` or `--delta DELTA`")
            };
            let path = format!("/v1/counters/{}/incr", path_segment(&key));
            ack(out, &client.send_json(Method::POST, &path, &json!({ "delta": delta })).await?)?;
        }
        Command::Counter { key } => {
            let path = format!("/v1/counters/{}", path_segment(&key));
            let counter: CounterAnswer = client.request_json(Method::GET, &path, None::<&()>).await?;
            if out.json {
                out.print_json(&counter)?;
            } else {
                out.line(counter.value)?;
            }
        }
        Command::Sadd { key, element, base64 } => {
            ack(out, &set_write(client, &key, "add", element, base64).await?)?;
        }
        Command::Srem { key, element, base64 } => {
            ack(out, &set_write(client, &key, "remove", element, base64).await?)?;
        }
        Command::Members { key } => {
            members(out, &client.get_json(&format!("/v1/sets/{}", path_segment(&key))).await?)?;
        }
        Command::Keys { kind } => {
            let query = match kind {
                None => "",
                Some(Kind::Register) => "?kind=register",
                Some(Kind::Counter) => "?kind=counter",
                Some(Kind::Set) => "?kind=set",
            };
            keys(out, &client.get_json(&format!("/v1/keys{query}")).await?)?;
        }
        Command::Batch { file } => {
            let body = batch_body(&file)?;
            ack(out, &client.send_json(Method::POST, "/v1/batch", &body).await?)?;
        }
        Command::Events { author, after, limit } => {
            let mut query = Vec::new();
            if let Some(author) = author {
                query.push(format!("author={}", path_segment(&author)));
            }
            if let Some(after) = after {
                query.push(format!("after={after}"));
            }
            if let Some(limit) = limit {
                query.push(format!("limit={limit}"));
            }
            let query = if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) };
            events(out, &client.get_json(&format!("/v1/events{query}")).await?)?;
        }
        Command::Event { id } => {
            let answer = client.get_json(&format!("/v1/events/{}", path_segment(&id))).await;
            match answer {
                Ok(value) => event(out, &value)?,
                Err(ClientError::Http { status: StatusCode::NOT_FOUND, message, .. }) => {
                    return Err(NotFound(message).into());
                }
                Err(error) => return Err(error.into()),
            }
        }
        Command::Evidence => evidence(out, &client.get_json("/v1/evidence").await?)?,
        Command::Watch => return watch(client, out).await,
        Command::Metrics => {
            let text = client.get_text("/v1/metrics").await?;
            out.writer.write_all(text.as_bytes())?;
        }
        Command::Inspect { what } => return inspect(out, what),
    }
    Ok(EXIT_OK)
}

async fn set_write(
    client: &Client,
    key: &str,
    action: &str,
    element: String,
    base64: bool,
) -> Result<Value, ClientError> {
    let body = if base64 {
        ElementBody { element: None, element_base64: Some(element) }
    } else {
        ElementBody { element: Some(element), element_base64: None }
    };
    client.send_json(Method::POST, &format!("/v1/sets/{}/{action}", path_segment(key)), &body).await
}

/// The batch file as the API's body: `{"ops": [...]}`, or a bare list wrapped in one.
fn batch_body(file: &Path) -> anyhow::Result<Value> {
    let bytes = read_limited(file, REQUEST_BYTES_MAX)?.with_context(|| {
        format!("{}: over {REQUEST_BYTES_MAX} bytes, which the daemon refuses", file.display())
    })?;
    let value: Value =
        serde_json::from_slice(&bytes).with_context(|| format!("{}: not JSON", file.display()))?;
    Ok(match value {
        Value::Array(_) => json!({ "ops": value }),
        Value::Object(_) => value,
        _ => bail!("{}: expected a JSON list of ops or {{\"ops\": [...]}}", file.display()),
    })
}

fn ack(out: &mut Output, ack: &Value) -> anyhow::Result<()> {
    if out.json {
        return out.print_json(ack);
    }
    out.line(format_args!(
        "written: event {} (seq {}, lamport {}), on disk on this node",
        field(ack, "id"),
        field(ack, "seq"),
        field(ack, "lamport")
    ))?;
    Ok(())
}

fn status(out: &mut Output, status: &Value) -> anyhow::Result<()> {
    if out.json {
        return out.print_json(status);
    }
    let mut table = out.table(&[]);
    let writes = match status.get("writes_refused").and_then(Value::as_str) {
        Some(reason) => format!("REFUSED: {reason}"),
        None => "accepted".to_owned(),
    };
    table.add_row(vec!["name".to_owned(), field(status, "name")]);
    table.add_row(vec!["key".to_owned(), field(status, "key")]);
    table.add_row(vec!["cluster".to_owned(), field(status, "cluster_id")]);
    table.add_row(vec!["writes".to_owned(), writes]);
    table.add_row(vec!["own seq".to_owned(), field(status, "own_seq")]);
    table.add_row(vec!["events".to_owned(), field(status, "n_events")]);
    table.add_row(vec!["evidence".to_owned(), field(status, "n_evidence")]);
    table.add_row(vec![
        "causal buffer".to_owned(),
        format!(
            "{} events, {} of {} bytes",
            field(status, "buffer_events"),
            field(status, "buffer_bytes"),
            field(status, "buffer_bytes_max")
        ),
    ]);
    table.add_row(vec![
        "peers".to_owned(),
        format!("{} of {} connected", field(status, "n_peers_connected"), field(status, "n_peers")),
    ]);
    table.add_row(vec!["digest".to_owned(), field(status, "digest")]);
    table.add_row(vec!["sync digest".to_owned(), field(status, "sync_digest")]);
    out.print_table(&table)?;
    Ok(())
}

fn peers(out: &mut Output, answer: &Value) -> anyhow::Result<()> {
    if out.json {
        return out.print_json(answer);
    }
    let list = array(answer, "peers");
    if list.is_empty() {
        out.line("no peers: this cluster has one member")?;
        return Ok(());
    }
    let mut table = out.table(&[
        "NAME",
        "KEY",
        "ADDRESS",
        "STATE",
        "LAST SEEN",
        "RTT",
        "EVENTS IN",
        "EVENTS OUT",
        "REJECTED",
    ]);
    for peer in list {
        let stats = peer.get("stats").unwrap_or(&Value::Null);
        let rejected: u64 = stats
            .get("rejected")
            .and_then(Value::as_object)
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        let last_seen = match peer.get("last_seen_ms_ago").and_then(Value::as_u64) {
            Some(ms) => format!("{:.1} s ago", ms as f64 / 1000.0),
            None => "never".to_owned(),
        };
        let rtt = match peer.get("rtt_ms").and_then(Value::as_f64) {
            Some(ms) => format!("{ms:.1} ms"),
            None => "-".to_owned(),
        };
        table.add_row(vec![
            field(peer, "name"),
            short(&field(peer, "key")),
            field(peer, "address"),
            field(peer, "state"),
            last_seen,
            rtt,
            field(stats, "events_in"),
            field(stats, "events_out"),
            rejected.to_string(),
        ]);
    }
    out.print_table(&table)?;
    Ok(())
}

fn register(out: &mut Output, read: &Value) -> anyhow::Result<()> {
    if out.json {
        return out.print_json(read);
    }
    if read.get("value_base64").is_none_or(Value::is_null) {
        out.line("(no value)")?;
        return Ok(());
    }
    out.line(bytes_field(read, "value"))?;
    let siblings = array(read, "siblings");
    if siblings.len() > 1 {
        out.line(format_args!(
            "\n{} concurrent values (siblings); the one above is the greatest by \
             (lamport, author, event id, op index):",
            siblings.len()
        ))?;
        let mut table = out.table(&["VALUE", "AUTHOR", "LAMPORT", "EVENT"]);
        for sibling in siblings {
            let author = match sibling.get("author_name").and_then(Value::as_str) {
                Some(name) => name.to_owned(),
                None => short(&field(sibling, "author")),
            };
            table.add_row(vec![
                bytes_field(sibling, "value"),
                author,
                field(sibling, "lamport"),
                format!("{} op {}", field(sibling, "event_id"), field(sibling, "op_index")),
            ]);
        }
        out.print_table(&table)?;
    }
    Ok(())
}

fn members(out: &mut Output, set: &Value) -> anyhow::Result<()> {
    if out.json {
        return out.print_json(set);
    }
    let members = array(set, "members");
    if members.is_empty() {
        out.line("(no members)")?;
    }
    for member in members {
        out.line(bytes_field(member, "value"))?;
    }
    Ok(())
}

fn keys(out: &mut Output, answer: &Value) -> anyhow::Result<()> {
    if out.json {
        return out.print_json(answer);
    }
    let keys = array(answer, "keys");
    if keys.is_empty() {
        out.line("(no keys)")?;
        return Ok(());
    }
    let mut table = out.table(&["KIND", "KEY"]);
    for key in keys {
        table.add_row(vec![field(key, "kind"), bytes_field(key, "key")]);
    }
    out.print_table(&table)?;
    Ok(())
}

fn events(out: &mut Output, answer: &Value) -> anyhow::Result<()> {
    if out.json {
        return out.print_json(answer);
    }
    let events = array(answer, "events");
    if events.is_empty() {
        out.line("(no events)")?;
        return Ok(());
    }
    let mut table = out.table(&["ID", "AUTHOR", "SEQ", "LAMPORT", "DEPS", "OPS", "BYTES", "EXCLUDED"]);
    for event in events {
        table.add_row(vec![
            field(event, "id"),
            field(event, "author_name"),
            field(event, "seq"),
            field(event, "lamport"),
            field(event, "n_deps"),
            field(event, "n_ops"),
            field(event, "size"),
            if event.get("excluded").and_then(Value::as_bool) == Some(true) { "yes" } else { "no" }
                .to_owned(),
        ]);
    }
    out.print_table(&table)?;
    Ok(())
}

/// One op as a table row: `[op, key, value or delta]`.
fn op_row(op: &Value) -> Vec<String> {
    let kind = field(op, "op");
    let argument = match kind.as_str() {
        "put" => bytes_field(op, "value"),
        "incr" => field(op, "delta"),
        "add" | "remove" => bytes_field(op, "element"),
        _ => String::new(),
    };
    vec![kind, bytes_field(op, "key"), argument]
}

fn event(out: &mut Output, event: &Value) -> anyhow::Result<()> {
    if out.json {
        return out.print_json(event);
    }
    let mut table = out.table(&[]);
    let deps = array(event, "deps").iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n");
    table.add_row(vec!["id".to_owned(), field(event, "id")]);
    table.add_row(vec![
        "author".to_owned(),
        format!("{} ({})", field(event, "author_name"), field(event, "author")),
    ]);
    table.add_row(vec!["seq".to_owned(), field(event, "seq")]);
    table.add_row(vec!["lamport".to_owned(), field(event, "lamport")]);
    table.add_row(vec!["deps".to_owned(), if deps.is_empty() { "(none)".to_owned() } else { deps }]);
    table.add_row(vec!["ops hash".to_owned(), field(event, "ops_hash")]);
    table.add_row(vec!["bytes".to_owned(), field(event, "size")]);
    let excluded = if event.get("excluded").and_then(Value::as_bool) == Some(true) {
        "yes: its author equivocated at or below this seq, so its ops are not in the document"
    } else {
        "no"
    };
    table.add_row(vec!["excluded".to_owned(), excluded.to_owned()]);
    out.print_table(&table)?;
    let mut ops = out.table(&["OP", "KEY", "VALUE / DELTA / ELEMENT"]);
    for op in array(event, "ops") {
        ops.add_row(op_row(op));
    }
    out.print_table(&ops)?;
    Ok(())
}

fn evidence(out: &mut Output, answer: &Value) -> anyhow::Result<()> {
    if out.json {
        return out.print_json(answer);
    }
    let list = array(answer, "evidence");
    if list.is_empty() {
        out.line("no evidence: no member has been caught equivocating")?;
        return Ok(());
    }
    let mut table = out.table(&["AUTHOR", "KEY", "SEQ", "FIRST EVENT", "SECOND EVENT"]);
    for item in list {
        let id = |which: &str| item.get(which).map(|h| field(h, "id")).unwrap_or_else(|| "-".to_owned());
        table.add_row(vec![
            field(item, "author_name"),
            short(&field(item, "author")),
            field(item, "seq"),
            id("first"),
            id("second"),
        ]);
    }
    out.print_table(&table)?;
    out.line(
        "Check one offline: \
         cairnctl evidence --json | jq -r '.evidence[0].encoded_hex' | cairnctl inspect evidence -",
    )?;
    Ok(())
}

/// One line of `watch` for a change.
fn change_line(change: &Value) -> String {
    let kind = field(change, "kind");
    let head = format!("#{} {kind} {}", field(change, "position"), quoted_bytes(change, "key"));
    if let Some(error) = change.get("state_error").and_then(Value::as_str) {
        return format!("{head} changed (state unavailable: {error})");
    }
    match kind.as_str() {
        "register" => {
            if change.get("value_base64").is_none_or(Value::is_null) {
                return format!("{head} = (no value)");
            }
            let n_siblings = array(change, "siblings").len();
            let more =
                if n_siblings > 1 { format!(" ({n_siblings} concurrent values)") } else { String::new() };
            format!("{head} = {}{more}", quoted_bytes(change, "value"))
        }
        "counter" => format!("{head} = {}", field(change, "value")),
        "set" => {
            const SHOWN_MAX: usize = 8;
            let members = array(change, "members");
            let shown: Vec<String> =
                members.iter().take(SHOWN_MAX).map(|m| quoted_bytes(m, "value")).collect();
            let more = if members.len() > SHOWN_MAX { ", …" } else { "" };
            format!("{head} = {{{}{more}}} ({} members)", shown.join(", "), members.len())
        }
        _ => format!("{head} changed"),
    }
}

async fn watch(client: &Client, out: &mut Output) -> anyhow::Result<u8> {
    let mut write_error: Option<io::Error> = None;
    let json_lines = out.json;
    let followed = client.watch("/v1/watch", |name, data| {
        let written = match (name, serde_json::from_str::<Value>(data)) {
            ("change", Ok(change)) if json_lines => out.line(data).map(|()| change),
            ("change", Ok(change)) => out.line(change_line(&change)).map(|()| change),
            ("lagged", Ok(lagged)) => {
                let missed = field(&lagged, "missed");
                let _ = writeln!(io::stderr(), "cairnctl: the watch fell behind and missed {missed} changes");
                if json_lines {
                    out.line(json!({ "lagged": lagged.get("missed") })).map(|()| lagged)
                } else {
                    Ok(lagged)
                }
            }
            // Events this version does not know are skipped, so a newer daemon can add some.
            _ => Ok(Value::Null),
        };
        match written.and_then(|_| out.writer.flush()) {
            Ok(()) => true,
            Err(error) => {
                write_error = Some(error);
                false
            }
        }
    });
    tokio::select! {
        followed = followed => followed?,
        interrupted = tokio::signal::ctrl_c() => {
            interrupted.context("cannot listen for Ctrl-C")?;
            return Ok(EXIT_OK);
        }
    }
    match write_error {
        Some(error) => Err(anyhow::Error::new(error).context("cannot write to stdout")),
        None => Ok(EXIT_OK),
    }
}

// ---- inspect: offline checks ----------------------------------------------------------------

fn inspect(out: &mut Output, what: Inspect) -> anyhow::Result<u8> {
    match what {
        Inspect::Event { file } => inspect_event(out, &read_input(&file)?),
        Inspect::Evidence { file } => inspect_evidence(out, &read_input(&file)?),
    }
}

/// Reads `file` (`-` for stdin), at most `max` bytes; `None` if it holds more.
fn read_limited(file: &Path, max: usize) -> anyhow::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    let limit = max as u64 + 1;
    if file == Path::new("-") {
        io::stdin().lock().take(limit).read_to_end(&mut bytes).context("cannot read stdin")?;
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(limit).read_to_end(&mut bytes))
            .with_context(|| format!("cannot read {}", file.display()))?;
    }
    Ok((bytes.len() <= max).then_some(bytes))
}

/// What `inspect` was given: the bytes, or why there are none.
struct Input {
    /// The canonical bytes, or why they could not be read.
    bytes: Result<Vec<u8>, String>,
    /// Whether the file held hex text.
    hex: bool,
}

fn read_input(file: &Path) -> anyhow::Result<Input> {
    let Some(raw) = read_limited(file, INSPECT_FILE_BYTES_MAX)? else {
        return Ok(Input {
            bytes: Err(format!(
                "the file is over {INSPECT_FILE_BYTES_MAX} bytes; no event or evidence is that large"
            )),
            hex: false,
        });
    };
    Ok(decode_input(raw))
}

/// Raw bytes, or hex text of them: a file of nothing but hex digits and whitespace is hex.
fn decode_input(raw: Vec<u8>) -> Input {
    let is_hex = raw.iter().any(u8::is_ascii_hexdigit)
        && raw.iter().all(|b| b.is_ascii_hexdigit() || b.is_ascii_whitespace());
    if !is_hex {
        return Input { bytes: Ok(raw), hex: false };
    }
    let digits: Vec<u8> = raw.into_iter().filter(u8::is_ascii_hexdigit).collect();
    let bytes = hex::decode(&digits).map_err(|e| format!("the hex text does not decode: {e}"));
    Input { bytes, hex: true }
}

/// The outcome of one check: passed, failed, or not checked (with why).
#[derive(Serialize)]
struct Check {
    name: &'static str,
    /// `true` passed, `false` failed, `null` not checked.
    ok: Option<bool>,
    detail: String,
}

impl Check {
    fn new(name: &'static str, ok: bool, detail: impl Into<String>) -> Self {
        Self { name, ok: Some(ok), detail: detail.into() }
    }

    fn skipped(name: &'static str, detail: impl Into<String>) -> Self {
        Self { name, ok: None, detail: detail.into() }
    }
}

#[derive(Serialize)]
struct Report<T: Serialize> {
    kind: &'static str,
    /// Input bytes after hex decoding.
    size: Option<usize>,
    hex_input: bool,
    well_formed: bool,
    /// Why the bytes are not well formed.
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decoded: Option<T>,
    checks: Vec<Check>,
    /// Every check that ran passed.
    valid: bool,
}

/// The decoding rule broken, by its name in PROTOCOL.md, with the details.
fn codec_reason(error: &CodecError) -> String {
    format!("{}: {error}", error.name())
}

/// Prints a report (or its JSON) and returns the exit code.
fn finish<T: Serialize>(
    out: &mut Output,
    report: &Report<T>,
    fields: Vec<(String, String)>,
    verdict: &str,
) -> anyhow::Result<u8> {
    let code = if report.valid { EXIT_OK } else { EXIT_INSPECT_FAILED };
    if out.json {
        out.print_json(report)?;
        return Ok(code);
    }
    let source = if report.hex_input { ", from hex text" } else { "" };
    match (&report.error, report.size) {
        (Some(error), Some(size)) => {
            out.line(format_args!("{}: MALFORMED ({size} bytes{source}): {error}", report.kind))?;
            return Ok(code);
        }
        (Some(error), None) => {
            out.line(format_args!("{}: MALFORMED: {error}", report.kind))?;
            return Ok(code);
        }
        (None, size) => out.line(format_args!(
            "{}: well formed ({} bytes{source}, canonical encoding)",
            report.kind,
            size.unwrap_or(0)
        ))?,
    }
    let mut table = out.table(&[]);
    for (name, value) in fields {
        table.add_row(vec![name, value]);
    }
    out.print_table(&table)?;
    let mut checks = out.table(&["CHECK", "RESULT", "DETAIL"]);
    for check in &report.checks {
        let result = match check.ok {
            Some(true) => "ok",
            Some(false) => "FAILED",
            None => "not checked",
        };
        checks.add_row(vec![check.name.to_owned(), result.to_owned(), check.detail.clone()]);
    }
    out.print_table(&checks)?;
    out.line(verdict)?;
    Ok(code)
}

#[derive(Serialize)]
struct EventJson {
    id: String,
    author: String,
    seq: u64,
    lamport: u64,
    deps: Vec<String>,
    ops_hash: String,
    sig: String,
    ops: Vec<OpJson>,
}

/// Whether `ops` are well formed as rule 7 wants: 1 to OPS_MAX ops, no empty key.
fn ops_check(ops: &[Op]) -> Check {
    if ops.is_empty() {
        Check::new("ops well formed", false, "no ops; an event carries at least one")
    } else if ops.len() > OPS_MAX {
        Check::new("ops well formed", false, format!("{} ops, over the limit of {OPS_MAX}", ops.len()))
    } else if let Some(idx) = ops.iter().position(|op| op.key().is_empty()) {
        Check::new("ops well formed", false, format!("op {idx} has an empty key"))
    } else {
        Check::new("ops well formed", true, format!("{} ops", ops.len()))
    }
}

fn deps_check(deps: &[cairn_protocol::EventId]) -> Check {
    match deps.windows(2).position(|pair| pair[0] >= pair[1]) {
        None => Check::new("deps sorted", true, format!("{} deps, ascending and unique", deps.len())),
        Some(idx) => Check::new("deps sorted", false, format!("dep {} is not above dep {idx}", idx + 1)),
    }
}

fn signature_check(name: &'static str, signed: &SignedHeader) -> Check {
    let id = signed.header.id();
    if verify_strict(&signed.header.author, &id.0, &signed.sig) {
        Check::new(name, true, "valid: verify_strict(author, id, sig) holds")
    } else {
        Check::new(name, false, "INVALID: verify_strict(author, id, sig) fails")
    }
}

/// `inspect event`: decodes, checks, prints; returns the exit code.
fn inspect_event(out: &mut Output, input: &Input) -> anyhow::Result<u8> {
    let decoded = input.bytes.clone().and_then(|bytes| {
        codec::decode_event(&bytes).map(|event| (event, bytes.len())).map_err(|e| codec_reason(&e))
    });
    let (event, size) = match decoded {
        Ok(decoded) => decoded,
        Err(error) => {
            let report = Report::<EventJson> {
                kind: "event",
                size: input.bytes.as_ref().ok().map(Vec::len),
                hex_input: input.hex,
                well_formed: false,
                error: Some(error),
                decoded: None,
                checks: vec![],
                valid: false,
            };
            return finish(out, &report, vec![], "");
        }
    };
    let Event { header, ops, sig } = &event;
    let id = header.id();
    let computed_hash = ops_hash(ops);
    let mut checks = vec![deps_check(&header.deps), ops_check(ops)];
    checks.push(if computed_hash == header.ops_hash {
        Check::new("ops hash", true, "matches the ops")
    } else {
        Check::new(
            "ops hash",
            false,
            format!("does not match the ops, which hash to {}", hex::encode(computed_hash)),
        )
    });
    checks.push(signature_check("signature", &SignedHeader { header: header.clone(), sig: *sig }));
    checks.push(Check::skipped("membership", "needs the cluster's genesis: is the author a member?"));
    checks.push(Check::skipped("seq and lamport", "need the event's deps (rules 5 and 6)"));
    let valid = checks.iter().all(|c| c.ok != Some(false));
    let failed: Vec<&str> = checks.iter().filter(|c| c.ok == Some(false)).map(|c| c.name).collect();
    let verdict = if valid {
        "verdict: the hash and the signature hold (membership and causal rules not checked)".to_owned()
    } else {
        format!("verdict: INVALID: {}", failed.join(", "))
    };
    let fields = vec![
        ("id".to_owned(), id.to_string()),
        ("author".to_owned(), header.author.to_string()),
        ("seq".to_owned(), header.seq.to_string()),
        ("lamport".to_owned(), header.lamport.to_string()),
        (
            "deps".to_owned(),
            if header.deps.is_empty() {
                "(none)".to_owned()
            } else {
                header.deps.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
            },
        ),
        ("ops hash".to_owned(), hex::encode(header.ops_hash)),
        ("signature".to_owned(), hex::encode(sig.0)),
        (
            "ops".to_owned(),
            ops.iter()
                .map(|op| op_row(&serde_json::to_value(OpJson::from(op)).unwrap_or(Value::Null)).join(" "))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    ];
    let report = Report {
        kind: "event",
        size: Some(size),
        hex_input: input.hex,
        well_formed: true,
        error: None,
        decoded: Some(EventJson {
            id: id.to_string(),
            author: header.author.to_string(),
            seq: header.seq,
            lamport: header.lamport,
            deps: header.deps.iter().map(ToString::to_string).collect(),
            ops_hash: hex::encode(header.ops_hash),
            sig: hex::encode(sig.0),
            ops: ops.iter().map(OpJson::from).collect(),
        }),
        checks,
        valid,
    };
    finish(out, &report, fields, &verdict)
}

#[derive(Serialize)]
struct EvidenceDecoded {
    author: String,
    seq: u64,
    first: crate::api::SignedHeaderJson,
    second: crate::api::SignedHeaderJson,
}

/// `inspect evidence`: decodes, checks, prints; returns the exit code. Without the genesis it
/// runs every check of [`Evidence::verify`] but membership.
fn inspect_evidence(out: &mut Output, input: &Input) -> anyhow::Result<u8> {
    let decoded = input.bytes.clone().and_then(|bytes| {
        codec::decode_evidence(&bytes).map(|evidence| (evidence, bytes.len())).map_err(|e| codec_reason(&e))
    });
    let (evidence, size): (Evidence, usize) = match decoded {
        Ok(decoded) => decoded,
        Err(error) => {
            let report = Report::<EvidenceDecoded> {
                kind: "evidence",
                size: input.bytes.as_ref().ok().map(Vec::len),
                hex_input: input.hex,
                well_formed: false,
                error: Some(error),
                decoded: None,
                checks: vec![],
                valid: false,
            };
            return finish(out, &report, vec![], "");
        }
    };
    let (a, b) = (&evidence.first, &evidence.second);
    let (id_a, id_b) = evidence.ids();
    let mut checks = vec![
        Check::new("same author", a.header.author == b.header.author, "both headers name one author"),
        Check::new(
            "same seq",
            a.header.seq == b.header.seq,
            format!("seqs {} and {}", a.header.seq, b.header.seq),
        ),
        Check::new("two events in id order", id_a < id_b, "two different ids, the smaller first"),
        signature_check("first signature", a),
        signature_check("second signature", b),
    ];
    checks.push(Check::skipped("membership", "needs the cluster's genesis: is the author a member?"));
    let valid = checks.iter().all(|c| c.ok != Some(false));
    let verdict = if valid {
        format!(
            "verdict: proves that {} signed two different events with seq {} (membership not checked)",
            a.header.author, a.header.seq
        )
    } else {
        let failed: Vec<&str> = checks.iter().filter(|c| c.ok == Some(false)).map(|c| c.name).collect();
        format!("verdict: INVALID, proves nothing: {}", failed.join(", "))
    };
    let header_lines = |signed: &SignedHeader, id: cairn_protocol::EventId| {
        format!(
            "id {id}\nseq {}, lamport {}, {} deps\nops hash {}\nsig {}",
            signed.header.seq,
            signed.header.lamport,
            signed.header.deps.len(),
            hex::encode(signed.header.ops_hash),
            hex::encode(signed.sig.0)
        )
    };
    let fields = vec![
        ("author".to_owned(), a.header.author.to_string()),
        ("seq".to_owned(), a.header.seq.to_string()),
        ("first".to_owned(), header_lines(a, id_a)),
        ("second".to_owned(), header_lines(b, id_b)),
    ];
    let report = Report {
        kind: "evidence",
        size: Some(size),
        hex_input: input.hex,
        well_formed: true,
        error: None,
        decoded: Some(EvidenceDecoded {
            author: a.header.author.to_string(),
            seq: a.header.seq,
            first: signed_header_json(a),
            second: signed_header_json(b),
        }),
        checks,
        valid,
    };
    finish(out, &report, fields, &verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_input_is_detected() {
        let check = |raw: &[u8], bytes: Result<&[u8], ()>, hex: bool| {
            let input = decode_input(raw.to_vec());
            assert_eq!(input.hex, hex, "{raw:?}");
            assert_eq!(input.bytes.as_deref().map_err(|_| ()), bytes, "{raw:?}");
        };
        check(b"00ff\n10 20\n", Ok(&[0x00, 0xff, 0x10, 0x20]), true);
        check(b"ABcd", Ok(&[0xab, 0xcd]), true);
        check(b"abc", Err(()), true);
        check(b"\x00\x01", Ok(&[0, 1]), false);
        check(b"00zz", Ok(b"00zz"), false);
        check(b"", Ok(b""), false);
        check(b"  \n", Ok(b"  \n"), false);
    }

    #[test]
    fn incr_takes_negative_deltas() {
        let parse = |args: &[&str]| match Cli::try_parse_from(args).map(|cli| cli.command) {
            Ok(Command::Incr { amount, delta, .. }) => Ok(amount.or(delta)),
            Ok(other) => panic!("{other:?}"),
            Err(error) => Err(error.kind()),
        };
        assert_eq!(parse(&["cairnctl", "incr", "k", "-5"]), Ok(Some(-5)));
        assert_eq!(parse(&["cairnctl", "incr", "k", "--", "-5"]), Ok(Some(-5)));
        assert_eq!(parse(&["cairnctl", "incr", "k", "--delta", "-5"]), Ok(Some(-5)));
        assert_eq!(parse(&["cairnctl", "incr", "k", "7"]), Ok(Some(7)));
        assert!(parse(&["cairnctl", "incr", "k"]).is_err());
        assert!(parse(&["cairnctl", "incr", "k", "1", "--delta", "2"]).is_err());
        assert!(parse(&["cairnctl", "incr", "k", "x"]).is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn watch_lines() {
        let check = |change: Value, expected: &str| assert_eq!(change_line(&change), expected);
        check(
            json!({
                "kind": "register", "key": "k", "position": 3,
                "value": "v", "value_base64": "dg==", "siblings": [{}, {}],
            }),
            "#3 register \"k\" = \"v\" (2 concurrent values)",
        );
        check(
            json!({
                "kind": "register", "key": null, "key_base64": "/w==", "position": 4,
                "value": null, "value_base64": null, "siblings": [],
            }),
            "#4 register base64:/w== = (no value)",
        );
        check(json!({"kind": "counter", "key": "c", "position": 5, "value": -2}), "#5 counter \"c\" = -2");
        check(
            json!({
                "kind": "set", "key": "s", "position": 6,
                "members": [{"value": "a"}, {"value": null, "value_base64": "/w=="}],
            }),
            "#6 set \"s\" = {\"a\", base64:/w==} (2 members)",
        );
        check(
            json!({"kind": "counter", "key": "c", "position": 7, "state_error": "busy"}),
            "#7 counter \"c\" changed (state unavailable: busy)",
        );
    }

    /// Collects what a command prints; after `lines_max` lines, writes fail as a closed pipe.
    #[derive(Clone, Default)]
    struct Capture {
        bytes: std::rc::Rc<std::cell::RefCell<Vec<u8>>>,
        lines_max: Option<usize>,
    }

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut bytes = self.bytes.borrow_mut();
            if self.lines_max.is_some_and(|max| bytes.iter().filter(|&&b| b == b'\n').count() >= max) {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            bytes.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Capture {
        fn text(&self) -> String {
            String::from_utf8(self.bytes.borrow().clone()).unwrap()
        }
    }

    /// Runs the online command in `args` against `server`, as `run` would.
    async fn ctl(
        server: &crate::api::tests::Server,
        args: &[&str],
        capture: Capture,
    ) -> (anyhow::Result<u8>, String) {
        let cli = Cli::try_parse_from(std::iter::once("cairnctl").chain(args.iter().copied())).unwrap();
        let mut out = Output { tty: false, json: cli.json, writer: Box::new(capture.clone()) };
        let result = online(&server.client, &mut out, cli.command).await;
        (result, capture.text())
    }

    async fn ok(server: &crate::api::tests::Server, args: &[&str]) -> String {
        let (result, text) = ctl(server, args, Capture::default()).await;
        match result {
            Ok(code) => assert_eq!(code, EXIT_OK, "{args:?}"),
            Err(error) => panic!("{args:?}: {error:#}"),
        }
        text
    }

    async fn fails(server: &crate::api::tests::Server, args: &[&str]) -> (u8, String) {
        match ctl(server, args, Capture::default()).await.0 {
            Ok(code) => panic!("{args:?} succeeded with {code}"),
            Err(error) => (exit_code(&error), format!("{error:#}")),
        }
    }

    #[tokio::test]
    async fn commands_against_the_api() {
        let server = crate::api::tests::start().await;
        let status = ok(&server, &["status"]).await;
        assert!(status.contains("alpha") && status.contains("accepted"), "{status}");
        let peers = ok(&server, &["peers"]).await;
        assert!(
            peers.contains("beta") && peers.contains("connected") && peers.contains("192.0.2.7:7000"),
            "{peers}"
        );

        let written = ok(&server, &["put", "dir/k", "some text"]).await;
        assert!(written.starts_with("written: event "), "{written}");
        assert_eq!(ok(&server, &["get", "dir/k"]).await, "some text\n");
        assert_eq!(ok(&server, &["get", "absent"]).await, "(no value)\n");
        ok(&server, &["put", "--base64", "bin", "/w=="]).await;
        assert_eq!(ok(&server, &["get", "bin"]).await, "base64:/w==\n");
        let multi = ok(&server, &["get", "multi"]).await;
        assert!(multi.starts_with("text\n\n2 concurrent values"), "{multi}");
        ok(&server, &["del", "dir/k"]).await;
        assert_eq!(ok(&server, &["get", "dir/k"]).await, "(no value)\n");

        ok(&server, &["incr", "c", "-5"]).await;
        ok(&server, &["incr", "c", "--delta", "2"]).await;
        assert_eq!(ok(&server, &["counter", "c"]).await, "-3\n");
        let json: Value = serde_json::from_str(&ok(&server, &["--json", "counter", "c"]).await).unwrap();
        assert_eq!(json, json!({"key": "c", "value": -3}));

        ok(&server, &["sadd", "s", "a"]).await;
        ok(&server, &["sadd", "s", "b"]).await;
        ok(&server, &["srem", "s", "a"]).await;
        assert_eq!(ok(&server, &["members", "s"]).await, "b\n");
        assert_eq!(ok(&server, &["members", "empty"]).await, "(no members)\n");
        let keys = ok(&server, &["keys", "--kind", "counter"]).await;
        assert_eq!(keys.lines().map(str::trim).collect::<Vec<_>>(), ["KIND     KEY", "counter  c"]);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ops.json");
        std::fs::write(&file, r#"[{"op":"put","key":"b1","value":"x"},{"op":"incr","key":"c","delta":10}]"#)
            .unwrap();
        ok(&server, &["batch", file.to_str().unwrap()]).await;
        assert_eq!(ok(&server, &["counter", "c"]).await, "7\n");
        std::fs::write(&file, "not json").unwrap();
        let (code, message) = fails(&server, &["batch", file.to_str().unwrap()]).await;
        assert_eq!(code, EXIT_ERROR);
        assert!(message.contains("not JSON"), "{message}");

        let events = ok(&server, &["events", "--author", "alpha", "--limit", "2"]).await;
        assert_eq!(events.lines().count(), 3, "{events}");
        let id = hex::encode([0x11; 32]);
        let event = ok(&server, &["event", &id]).await;
        assert!(event.contains(&id) && event.contains("alpha") && event.contains("some text"), "{event}");
        let (code, message) = fails(&server, &["event", &"ab".repeat(32)]).await;
        assert_eq!(code, EXIT_NOT_FOUND, "{message}");
        let (code, message) = fails(&server, &["event", "nothex"]).await;
        assert_eq!(code, EXIT_ERROR);
        assert!(message.contains("64 hex digits"), "{message}");

        let evidence = ok(&server, &["evidence"]).await;
        assert!(evidence.contains("beta"), "{evidence}");
        let json: Value = serde_json::from_str(&ok(&server, &["--json", "evidence"]).await).unwrap();
        let encoded = hex::decode(json["evidence"][0]["encoded_hex"].as_str().unwrap()).unwrap();
        assert!(codec::decode_evidence(&encoded).is_ok());

        assert!(ok(&server, &["metrics"]).await.ends_with("# EOF\n"));

        let (code, message) = fails(&server, &["put", "refuse", "x"]).await;
        assert_eq!(code, EXIT_ERROR);
        assert!(message.contains(crate::api::tests::REFUSED_MESSAGE), "{message}");
        let (_, message) = fails(&server, &["get", ""]).await;
        assert!(message.contains("the key is empty"), "{message}");
    }

    #[tokio::test]
    async fn watch_prints_lines_and_stops_on_a_closed_pipe() {
        let server = crate::api::tests::start().await;
        // Stdout accepts one line, then the reader goes away.
        let capture = Capture { lines_max: Some(1), ..Capture::default() };
        let watching = ctl(&server, &["watch"], capture);
        let writing = async {
            server.wait_for_watchers(1).await;
            server.client.send_json(Method::PUT, "/v1/registers/w", &json!({"value": "one"})).await.unwrap();
            server.client.send_json(Method::PUT, "/v1/registers/w", &json!({"value": "two"})).await.unwrap();
        };
        let ((result, text), ()) = tokio::join!(watching, writing);
        let error = result.unwrap_err();
        assert!(is_broken_pipe(&error), "{error:#}");
        assert_eq!(text, "#1 register \"w\" = \"one\"\n");
    }

    #[tokio::test]
    async fn watch_json_lines() {
        let server = crate::api::tests::start().await;
        let capture = Capture { lines_max: Some(1), ..Capture::default() };
        let watching = ctl(&server, &["--json", "watch"], capture);
        let writing = async {
            server.wait_for_watchers(1).await;
            for _ in 0..2 {
                server
                    .client
                    .send_json(Method::POST, "/v1/counters/n/incr", &json!({"delta": 4}))
                    .await
                    .unwrap();
            }
        };
        let ((result, text), ()) = tokio::join!(watching, writing);
        assert!(is_broken_pipe(&result.unwrap_err()));
        let change: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(
            change,
            json!({"kind": "counter", "key": "n", "key_base64": "bg==", "position": 1, "value": 4})
        );
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(&anyhow::Error::new(NotFound("x".into()))), EXIT_NOT_FOUND);
        assert_eq!(exit_code(&anyhow::anyhow!("x")), EXIT_ERROR);
        let pipe = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("writing");
        assert!(is_broken_pipe(&pipe));
        assert!(!is_broken_pipe(&anyhow::anyhow!("x")));
    }
}
