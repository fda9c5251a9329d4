//! `cairnctl`, the admin CLI: one subcommand per API route, tables for people and `--json` for
//! scripts, and `inspect`, which judges an event's or evidence's bytes offline. The binary
//! (`src/bin/cairnctl.rs`) only calls [`run`] and prints the error with [`error_line`]. The
//! daemon's answers are read into the types of [`crate::json`] by [`crate::client`].
//!
//! # Output
//!
//! Keys, values, set elements, names, messages and every other text that a member or the
//! daemon chose can hold bytes that drive a terminal (`\e[2J` clears it). Human output
//! therefore passes all of it through [`escape`]: control characters (C0, DEL and C1) and the
//! invisible or bidirectional format characters (U+00AD, U+061C, U+180E, U+200B to U+200F,
//! U+2028 to U+202E, U+2060 to U+206F, U+FEFF, U+FFF9 to U+FFFB, U+E0000 to U+E007F) are shown
//! as `\n`, `\r`, `\t` or `\u{HEX}` (the code point in hex), and a backslash as `\\`, so that
//! the escaped form reads back to exactly one text.
//!
//! Text and bytes never look alike: a key, value or element that is UTF-8 text is printed in
//! double quotes (`"base64:/wA="`, with `"` inside escaped as `\"`), and bytes that are not
//! UTF-8 as `base64:` and their base64 without quotes (`base64:/wA=`), which no quoted text
//! can be. `--json` prints the daemon's JSON as it is (pretty-printed, its fields in the order
//! the daemon sent them), escaped only as JSON escapes strings.
//!
//! # Input and limits
//!
//! Keys are 1 to [`KEY_BYTES_MAX`] bytes of UTF-8 text. Values and set elements are at most
//! [`VALUE_BYTES_MAX`] bytes: text, base64 with `--base64`, the bytes of a file with
//! `--file PATH`, or the bytes on stdin with `-`. One event (`batch`) carries 1 to [`OPS_MAX`]
//! ops and at most [`EVENT_BYTES_MAX`] bytes. cairnctl checks its arguments against these
//! before it asks the daemon, and names the size and the limit, never the oversized text.
//!
//! # Inspect
//!
//! `inspect event FILE` and `inspect evidence FILE` read the bytes (raw, or hex text with or
//! without a `0x` prefix, line breaks and spaces allowed) and print the verdict of every rule of
//! `docs/PROTOCOL.md` (§7 for events, §9 for evidence) from [`cairn_protocol::diagnose()`]: `ok`,
//! `FAILED` with the reason's name, or `undecided` with what it needs. The bytes cannot tell
//! whether the author is a member (give the cluster's genesis with `--genesis FILE`), nor, for
//! an event with deps, whether its seq and lamport follow them (that needs the events it
//! depends on, which only a node has). inspect says the bytes are valid only when every rule
//! holds and none is undecided; otherwise it exits 4 (a rule fails) or 5 (none fails, some are
//! undecided).
//!
//! # Pages
//!
//! `keys` and `events` print one page; when there is more they say so on a last line with the
//! `--after` that gets the next page.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (also when stdout is closed early, or `watch` is stopped with Ctrl-C) |
//! | 1 | the daemon answered with an error, or could not be reached; a file could not be read |
//! | 2 | usage error: a bad argument, also a key or value over its limit, text that is not UTF-8 where text is needed, `--json` with `metrics` |
//! | 3 | not found: `get` of a register with no value, `members` of a set with no member, `counter` of a counter whose value is 0, `event ID` of an event the daemon does not hold |
//! | 4 | `inspect`: a rule fails: the bytes are malformed, or a hash, signature, seq or other rule is broken |
//! | 5 | `inspect`: no rule fails, but one needs what the bytes do not hold: the genesis (`--genesis FILE`) or, for an event with deps, its causal past; the bytes are not known to be valid |
//! | 6 | `health`: the daemon answers but is not ready (a check fails), or its service loop did not answer in time |
//!
//! "Not found" is the empty state, since the document does not keep keys apart from their
//! state: a register that was never written reads as one whose values were deleted, and the
//! API answers 0 for a counter that no one incremented, as for one whose deltas cancel out.
//! `get`, `members` and `counter` still print what they found (`(no value)`, `(no members)`,
//! `0`, or the JSON with `--json`) before they exit 3.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use cairn_protocol::diagnose::{Diagnosis, Needs, Outcome};
use cairn_protocol::limits::{
    EVENT_BYTES_MAX, KEY_BYTES_MAX, MEMBER_NAME_BYTES_MAX, OPS_MAX, VALUE_BYTES_MAX,
};
use cairn_protocol::{Event, EventRule, Evidence, EvidenceRule, Genesis, SignedHeader};
use clap::{Parser, Subcommand, ValueEnum};
use comfy_table::{Table, presets};
use hyper::StatusCode;
use serde::Serialize;

use crate::api::{
    EVENTS_LIMIT_DEFAULT, EVENTS_LIMIT_MAX, KEYS_LIMIT_DEFAULT, KEYS_LIMIT_MAX, REQUEST_BYTES_MAX,
    parse_key_cursor,
};
use crate::client::{Answer, Client, ClientError};
use crate::json::{self, WatchEvent};

/// The socket `cairnd` listens on by default.
pub const DEFAULT_SOCKET: &str = "/run/cairn/cairnd.sock";
/// The environment variable naming the socket when `--socket` is not given.
pub const SOCKET_ENV: &str = "CAIRN_SOCKET";

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the daemon answered with an error or could not be reached.
pub const EXIT_ERROR: u8 = 1;
/// Exit code: usage error (clap's own, or an argument over a limit or not UTF-8).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: not found (an empty register, set or counter, or an unknown event).
pub const EXIT_NOT_FOUND: u8 = 3;
/// Exit code: `inspect` found a rule that the bytes break.
pub const EXIT_INSPECT_FAILED: u8 = 4;
/// Exit code: `inspect` found no rule broken, but some undecided (they need the genesis or the
/// causal past), so it cannot say that the bytes are valid.
pub const EXIT_INSPECT_UNDECIDED: u8 = 5;
/// Exit code: `health` found the daemon not ready (or its service loop not answering).
pub const EXIT_NOT_READY: u8 = 6;
/// Exit code: `put --if-context` found the register changed since the read; nothing written.
pub const EXIT_CONTEXT_CHANGED: u8 = 7;

/// The largest file `inspect` reads: hex text of the largest event, with line breaks, fits.
const INSPECT_FILE_BYTES_MAX: usize = 1024 * 1024;
const _: () = assert!(3 * EVENT_BYTES_MAX <= INSPECT_FILE_BYTES_MAX);

/// The longest `--author`: a member's key is 64 hex digits, its name at most
/// [`MEMBER_NAME_BYTES_MAX`] bytes.
const AUTHOR_BYTES_MAX: usize = if MEMBER_NAME_BYTES_MAX > 64 { MEMBER_NAME_BYTES_MAX } else { 64 };

/// What `cairnctl --help` shows after the commands: the socket, the forms of input and output,
/// the limits and the exit codes. Built from the constants, so the numbers cannot drift.
fn after_help() -> String {
    format!(
        "\
The socket is --socket PATH, else $CAIRN_SOCKET, else {DEFAULT_SOCKET}.

Input: keys are UTF-8 text of 1 to {KEY_BYTES_MAX} bytes. A value or set element is at most {VALUE_BYTES_MAX}
bytes: text, base64 with --base64, the bytes of a file with --file PATH, or the bytes on stdin
with `-`. One event (batch) holds 1 to {OPS_MAX} ops and at most {EVENT_BYTES_MAX} bytes. `events` pages
hold at most {EVENTS_LIMIT_MAX} events, `keys` pages at most {KEYS_LIMIT_MAX} keys; a last line names the next page.

Output: text a member wrote is escaped: control and invisible format characters print as
\\n, \\r, \\t or \\u{{HEX}}, a backslash as \\\\. Keys, values and elements that are UTF-8 print in
double quotes (\"a \\\"b\\\"\"); bytes that are not print unquoted as base64:..., so the two never
look alike. --json prints the daemon's JSON unchanged.

Exit codes:
  0  success (also when stdout closes early, or watch is stopped with Ctrl-C)
  1  the daemon answered with an error or could not be reached; a file could not be read
  2  usage error: also a key or value over its limit, text that is not UTF-8, --json metrics
  3  not found: get of a register with no value, members of a set with no member, counter
     of a counter that is 0, `event ID` of an event the daemon does not hold (the first
     three still print (no value), (no members), 0, or the JSON)
  4  inspect: a rule fails: the bytes are malformed, or a hash, signature, seq or other
     rule is broken
  5  inspect: no rule fails, but one is undecided: membership needs --genesis FILE, seq
     and lamport of an event with deps need its causal past; not known to be valid
  6  health: the daemon answers but is not ready (a check fails), or its service loop did
     not answer in time (1: it could not be reached at all)"
    )
}

/// cairnctl's command line.
#[derive(Debug, Parser)]
#[command(
    name = "cairnctl",
    version,
    about = "Inspect and drive a cairnd node through its local API",
    after_help = after_help()
)]
pub struct Cli {
    /// The daemon's API socket.
    #[arg(long, global = true, value_name = "PATH", env = SOCKET_ENV, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print machine output: the daemon's JSON as it is, pretty-printed (JSON lines for `watch`,
    /// the report for `inspect`).
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

/// Rejects `--socket` where it means nothing: `inspect` reads files, not the daemon.
fn offline_socket(_: &str) -> Result<PathBuf, String> {
    Err("inspect works offline and uses no socket".to_owned())
}

/// cairnctl's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The node in brief: key, cluster, own seq, digests, buffer, peers, whether writes are accepted.
    Status,
    /// Liveness and readiness for scripts and monitors: each check (service loop, store, own
    /// seq, peers). Exits 0 when ready, 6 when the daemon answers but is not ready (or its loop
    /// does not), 1 when it cannot be reached.
    Health,
    /// Every other member: address, connection state, round trip, counters.
    Peers,
    /// A register's value, its concurrent values (siblings) if there are several, and the
    /// read's causal context (`context: ...`), which `put --context` and `del --context` take
    /// back. Exits 3 if it has no value.
    Get {
        /// The register's key.
        key: OsString,
    },
    /// Writes a register; returns once the event is on disk on this node.
    Put {
        /// The register's key.
        key: OsString,
        /// The value: text, base64 with --base64, or `-` for the bytes on stdin (the text `-`
        /// itself is `--base64 LQ==`).
        #[arg(required_unless_present = "file")]
        value: Option<OsString>,
        /// VALUE is base64 of arbitrary bytes.
        #[arg(long)]
        base64: bool,
        /// Writes the bytes of this file, as they are, instead of VALUE.
        #[arg(long, value_name = "PATH", conflicts_with_all = ["value", "base64"])]
        file: Option<PathBuf>,
        /// The context a `get` printed: the write supersedes exactly what that read saw, and a
        /// value written since stays beside it as a sibling (no lost update).
        #[arg(long, value_name = "CONTEXT")]
        context: Option<String>,
        /// Read-modify-write: writes (with this context) only if the register's context on
        /// this node is still CONTEXT; otherwise exits 4 and writes nothing. Two such writes
        /// racing on one node can both pass, and are then siblings.
        #[arg(long, value_name = "CONTEXT", conflicts_with = "context")]
        if_context: Option<String>,
    },
    /// Deletes a register's values.
    Del {
        /// The register's key.
        key: OsString,
        /// The context a `get` printed: deletes exactly what that read saw.
        #[arg(long, value_name = "CONTEXT")]
        context: Option<String>,
    },
    /// Adds a signed delta to a counter (`incr hits -5`, `incr hits -- -5` or `incr hits --delta -5`).
    Incr {
        /// The counter's key.
        key: OsString,
        /// The amount to add; negative to subtract.
        #[arg(value_name = "DELTA", allow_negative_numbers = true, required_unless_present = "delta")]
        amount: Option<i64>,
        /// The amount to add, as an option.
        #[arg(long, value_name = "DELTA", allow_negative_numbers = true, conflicts_with = "amount")]
        delta: Option<i64>,
    },
    /// A counter's value. Exits 3 if it is 0.
    Counter {
        /// The counter's key.
        key: OsString,
    },
    /// Adds an element to a set.
    Sadd {
        /// The set's key.
        key: OsString,
        /// The element: text, base64 with --base64, or `-` for the bytes on stdin.
        #[arg(required_unless_present = "file")]
        element: Option<OsString>,
        /// ELEMENT is base64 of arbitrary bytes.
        #[arg(long)]
        base64: bool,
        /// Adds the bytes of this file, as they are, instead of ELEMENT.
        #[arg(long, value_name = "PATH", conflicts_with_all = ["element", "base64"])]
        file: Option<PathBuf>,
        /// The member's context a `members --context` printed (the add then supersedes the
        /// adds and removes that read saw).
        #[arg(long, value_name = "CONTEXT")]
        context: Option<String>,
    },
    /// Removes an element from a set (the adds this node has seen; a concurrent add wins).
    Srem {
        /// The set's key.
        key: OsString,
        /// The element: text, base64 with --base64, or `-` for the bytes on stdin.
        #[arg(required_unless_present = "file")]
        element: Option<OsString>,
        /// ELEMENT is base64 of arbitrary bytes.
        #[arg(long)]
        base64: bool,
        /// Removes the bytes of this file, as they are, instead of ELEMENT.
        #[arg(long, value_name = "PATH", conflicts_with_all = ["element", "base64"])]
        file: Option<PathBuf>,
        /// The member's context a `members --context` printed: removes exactly the adds that
        /// read saw, so an add made since stays.
        #[arg(long, value_name = "CONTEXT")]
        context: Option<String>,
    },
    /// A set's members. Exits 3 if it has none.
    Members {
        /// The set's key.
        key: OsString,
        /// Prints each member's causal context after it (a tab between), for `srem --context`.
        #[arg(long)]
        context: bool,
    },
    /// The keys with a value, of one kind or all, one page at a time.
    Keys {
        /// Only keys of this kind.
        #[arg(long, value_enum)]
        kind: Option<Kind>,
        /// Starts after this cursor: the one the previous page named.
        #[arg(long, value_name = "CURSOR")]
        after: Option<String>,
        // The help names the limits from their constants, which a doc comment cannot.
        #[arg(
            long,
            value_name = "N",
            value_parser = clap::value_parser!(u64).range(1..=KEYS_LIMIT_MAX as u64),
            help = format!("At most N keys: 1 to {KEYS_LIMIT_MAX}; the daemon's default is {KEYS_LIMIT_DEFAULT}")
        )]
        limit: Option<u64>,
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
    /// Accepted events, oldest first, one page at a time.
    Events {
        /// Only this member's events: its key (64 hex digits) or its name.
        #[arg(long)]
        author: Option<String>,
        /// With --author: events with a seq above N; otherwise events accepted after position N.
        #[arg(long, value_name = "N")]
        after: Option<u64>,
        // The help names the limits from their constants, which a doc comment cannot.
        #[arg(
            long,
            value_name = "N",
            value_parser = clap::value_parser!(u64).range(1..=EVENTS_LIMIT_MAX as u64),
            help = format!("At most N events: 1 to {EVENTS_LIMIT_MAX}; the daemon's default is {EVENTS_LIMIT_DEFAULT}")
        )]
        limit: Option<u64>,
    },
    /// One accepted event, with its ops. Exits 3 if the daemon does not hold it.
    Event {
        /// The event id (64 hex digits).
        id: String,
        /// Prints the event's canonical bytes as hex, for `cairnctl inspect event -`.
        #[arg(long)]
        raw: bool,
    },
    /// Equivocation evidence: members proved to have signed two events with the same seq.
    Evidence,
    /// The cluster's membership (PROTOCOL.md §17): the seats in force, or the changes pending.
    Member {
        /// What to show.
        #[command(subcommand)]
        what: Member,
    },
    /// Prints each change to the document as it is applied, until Ctrl-C.
    Watch,
    /// The daemon's metrics in OpenMetrics text (there is no JSON form: --json is refused).
    Metrics,
    /// Writes a consistent copy of the node's store to FILE while the node runs (its writes
    /// wait at most one read of 1 MiB), then checks the copy. Restore it with `cairnd restore`
    /// on a stopped node: the restored node learns its latest own seq from its peers before it
    /// signs again, so a backup can never make it sign a seq twice.
    Backup {
        /// The file to write; it must not exist. It is written next to itself as FILE.partial
        /// first, and renamed once complete and checked.
        file: PathBuf,
    },
    /// The web console's address with its token (`[console]` in the config; deploy/GUIDE.md):
    /// open it in a browser on this host, or through an SSH tunnel. Anyone who has it can
    /// read and write the node as cairnctl can.
    ConsoleUrl,
    /// Checks an event's or evidence's bytes offline, without a daemon.
    // A local `--socket`, hidden and refused, keeps the global one out of inspect's help.
    #[command(arg = clap::Arg::new("socket").long("socket").hide(true).value_parser(offline_socket))]
    Inspect {
        /// What the file holds.
        #[command(subcommand)]
        what: Inspect,
    },
}

/// What `member` shows.
#[derive(Debug, Subcommand)]
pub enum Member {
    /// The seats in force: name, founding key, the key that signs for it now; the membership's
    /// id, its open round and the votes a change needs.
    List,
    /// The changes of the membership in force with votes in its open round, most votes first,
    /// and the seats that approved two changes (evidence). Exits 3 if none is pending.
    Pending,
    /// Proposes adding a seat for KEY named NAME (this node's seat votes for it). It is in force
    /// once a majority of the seats approve it (`member approve CHANGE` on other members);
    /// then start cairnd on the new host with KEY, the genesis and at least one peer.
    Add {
        /// The new host's public key (64 hex digits; `cairnd keygen` prints it).
        key: String,
        /// The new seat's name (1 to 64 bytes, never used by a seat before).
        name: String,
    },
    /// Proposes removing a seat: its events past the cut are dropped on every node, and its key
    /// is refused. Drain and stop the host first; a removal that may cut writes it acknowledged
    /// (it is connected, or --cut is below what this node holds) needs --force.
    Remove {
        /// The seat: its name or one of its keys.
        seat: String,
        /// The last seq of the seat's key that is kept (default: the highest this node holds).
        #[arg(long)]
        cut: Option<u64>,
        /// Remove it even if that cuts writes it may have acknowledged.
        #[arg(long)]
        force: bool,
    },
    /// Votes for a pending change (see `member pending`). Approving a removal checks its cut as
    /// proposing it does, and asks for --force the same way.
    Approve {
        /// The change's id (64 hex digits).
        change: String,
        /// Approve a removal even if its cut may drop writes the seat acknowledged.
        #[arg(long)]
        force: bool,
    },
    /// Proposes replacing a seat whose key was lost or stolen: the seat is removed with a cut,
    /// and a new seat with the same name is founded by KEY. Same cut rules as `remove`.
    Replace {
        /// The seat: its name or one of its keys.
        seat: String,
        /// The replacing host's public key (64 hex digits).
        key: String,
        /// The last seq of the old key that is kept (default: the highest this node holds).
        #[arg(long)]
        cut: Option<u64>,
        /// Replace it even if that cuts writes it may have acknowledged.
        #[arg(long)]
        force: bool,
    },
}

/// What `inspect` reads.
#[derive(Debug, Subcommand)]
pub enum Inspect {
    /// An encoded event: the verdict of every validity rule (PROTOCOL.md §7). Exits 0 if every
    /// rule holds, 4 if one fails, 5 if none fails but one is undecided.
    Event {
        /// The raw canonical bytes, or hex text of them (such as `cairnctl event ID --raw`
        /// prints; a `0x` prefix and line breaks are allowed); `-` for stdin.
        file: PathBuf,
        /// The cluster's genesis file (TOML, as cairnd reads it): decides whether the author is
        /// a member. Without it, membership is undecided.
        #[arg(long, value_name = "FILE")]
        genesis: Option<PathBuf>,
    },
    /// Encoded evidence: does it prove an equivocation (PROTOCOL.md §9)? Exits 0 if every step
    /// holds, 4 if one fails, 5 if none fails but membership is undecided.
    Evidence {
        /// The raw canonical bytes, or hex text of them (such as `encoded_hex`; a `0x` prefix
        /// and line breaks are allowed); `-` for stdin.
        file: PathBuf,
        /// The cluster's genesis file (TOML, as cairnd reads it): decides whether the author is
        /// a member. Without it, membership is undecided.
        #[arg(long, value_name = "FILE")]
        genesis: Option<PathBuf>,
    },
}

/// An unknown event: exit code [`EXIT_NOT_FOUND`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(String);

/// A bad argument found after parsing (over a limit, not UTF-8, not a cursor): exit code
/// [`EXIT_USAGE`], as clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(String);

/// `put --if-context` found the register changed since the read: exit code
/// [`EXIT_CONTEXT_CHANGED`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ContextChanged(String);

/// The exit code for an error from [`run`].
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error.chain().any(|cause| cause.is::<NotFound>()) {
        EXIT_NOT_FOUND
    } else if error.chain().any(|cause| cause.is::<ContextChanged>()) {
        EXIT_CONTEXT_CHANGED
    } else if error.chain().any(|cause| cause.is::<Usage>()) {
        EXIT_USAGE
    } else {
        EXIT_ERROR
    }
}

/// Whether `error` is a write to a closed pipe (`cairnctl events | head`): not a failure.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe))
}

/// The line the binary prints for an error from [`run`]: the whole context chain, escaped,
/// since it can quote what the daemon or a file said.
pub fn error_line(error: &anyhow::Error) -> String {
    format!("cairnctl: {}", escape(&format!("{error:#}"), false))
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
            // Arguments are checked before anything is asked of the daemon.
            let request = Request::new(command, cli.json)?;
            let client = Client::new(cli.socket);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(online(&client, &mut out, request))?
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

// ---- escaping and rendering -----------------------------------------------------------------

/// Whether `c` is escaped by [`escape`] as `\u{HEX}`: a control character (C0, DEL, C1; a
/// terminal acts on them, and C1's U+009B starts a control sequence like `\e[`), or a format
/// character that is invisible or reorders text (bidirectional overrides and isolates, zero
/// widths, tags), with which one text can pass for another.
fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

/// `text` as human output shows every text it did not write itself: `\n`, `\r` and `\t` for
/// those three, `\u{HEX}` for the other control characters and the invisible or reordering
/// format characters (the module documentation lists them), `\\` for a backslash. `quoted` puts
/// the text in double quotes and escapes a `"` inside as `\"`. The escaped form reads back to
/// exactly one text and holds nothing a terminal acts on.
pub fn escape(text: &str, quoted: bool) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    if quoted {
        out.push('"');
    }
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' if quoted => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unprintable(c) => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    if quoted {
        out.push('"');
    }
    out
}

/// Text the daemon or a member chose, escaped; `-` for none.
fn text(value: Option<&str>) -> String {
    value.map_or_else(|| "-".to_owned(), |text| escape(text, false))
}

/// Bytes shown by the API as text (`None` when they are not UTF-8) and base64: the text quoted
/// and escaped, or `base64:…` without quotes (the module documentation says why the two cannot
/// be confused).
fn bytes_text(text: Option<&str>, base64: &str) -> String {
    match text {
        Some(text) => escape(text, true),
        None => format!("base64:{}", escape(base64, false)),
    }
}

/// The first 16 characters of an id or key, for a narrow column.
fn short(id: &str) -> String {
    let mut chars = id.chars();
    let head: String = chars.by_ref().take(16).collect();
    if chars.next().is_some() { format!("{head}…") } else { head }
}

/// `n` and the noun in the right number: `1 member`, `2 members`.
fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

// ---- checking arguments ---------------------------------------------------------------------

/// A key argument as the API takes it: UTF-8 text of 1 to [`KEY_BYTES_MAX`] bytes. The error
/// names the size, never the key, which may be huge.
fn key_arg(key: &OsStr) -> Result<String, Usage> {
    let Some(key) = key.to_str() else {
        return Err(Usage(
            "the key is not UTF-8: keys are UTF-8 text (values and set elements may be any bytes: \
             see --base64 and --file)"
                .to_owned(),
        ));
    };
    if key.is_empty() {
        return Err(Usage(format!("the key is empty; give 1 to {KEY_BYTES_MAX} bytes of UTF-8 text")));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(Usage(format!("the key is {} bytes, over the limit of {KEY_BYTES_MAX}", key.len())));
    }
    Ok(key.to_owned())
}

/// A value or element as the API takes it: `text` or `base64` (the field name's two forms).
#[derive(Debug, PartialEq, Eq)]
enum Payload {
    Text(String),
    Base64(String),
}

impl Payload {
    /// The body of a register write.
    fn value_body(self) -> json::ValueBody {
        match self {
            Self::Text(text) => json::ValueBody { value: Some(text), ..json::ValueBody::default() },
            Self::Base64(encoded) => {
                json::ValueBody { value_base64: Some(encoded), ..json::ValueBody::default() }
            }
        }
    }

    /// The body of a set add or remove.
    fn element_body(self) -> json::ElementBody {
        match self {
            Self::Text(text) => json::ElementBody { element: Some(text), ..json::ElementBody::default() },
            Self::Base64(encoded) => {
                json::ElementBody { element_base64: Some(encoded), ..json::ElementBody::default() }
            }
        }
    }
}

/// A value or element from its argument (`-` for stdin) or `--file`, checked against
/// [`VALUE_BYTES_MAX`]. `what` names it in errors (`value`, `element`).
fn payload_arg(
    what: &str,
    argument: Option<&OsStr>,
    base64: bool,
    file: Option<&Path>,
) -> anyhow::Result<Payload> {
    let over = |n: usize| Usage(format!("the {what} is {n} bytes, over the limit of {VALUE_BYTES_MAX}"));
    let from_file = match (argument, file) {
        (_, Some(file)) => Some(file),
        (Some(argument), None) if argument == "-" => {
            if base64 {
                return Err(Usage(format!(
                    "`-` reads the {what}'s bytes from stdin as they are; drop --base64"
                ))
                .into());
            }
            Some(Path::new("-"))
        }
        _ => None,
    };
    if let Some(file) = from_file {
        let bytes = read_limited(file, VALUE_BYTES_MAX)?.ok_or_else(|| {
            let source = if file == Path::new("-") { "stdin".to_owned() } else { file.display().to_string() };
            Usage(format!("{source}: the {what} is over the limit of {VALUE_BYTES_MAX} bytes"))
        })?;
        return Ok(Payload::Base64(BASE64.encode(bytes)));
    }
    let Some(argument) = argument else {
        // clap requires the argument unless --file is given.
        return Err(Usage(format!("give the {what}, `-` for stdin, or --file PATH")).into());
    };
    let Some(text) = argument.to_str() else {
        return Err(Usage(format!(
            "the {what} is not UTF-8 text: give bytes as base64 with --base64, from a file with \
             --file PATH, or on stdin with `-`"
        ))
        .into());
    };
    if base64 {
        let bytes = BASE64.decode(text).map_err(|e| {
            Usage(format!(
                "the {what} is not valid base64 ({e}); --base64 takes standard base64 with padding"
            ))
        })?;
        if bytes.len() > VALUE_BYTES_MAX {
            return Err(over(bytes.len()).into());
        }
        return Ok(Payload::Base64(text.to_owned()));
    }
    if text.len() > VALUE_BYTES_MAX {
        return Err(over(text.len()).into());
    }
    Ok(Payload::Text(text.to_owned()))
}

/// An event id argument: 64 hex digits.
fn event_id_arg(id: &str) -> Result<String, Usage> {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id.to_ascii_lowercase())
    } else {
        Err(Usage(format!("an event id is 64 hex digits; got {} characters", id.chars().count())))
    }
}

/// What `sadd` and `srem` do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SetAction {
    Add,
    Remove,
}

/// A command with its arguments checked: what to ask the daemon and how to show the answer.
#[derive(Debug)]
enum Request {
    Status,
    Health,
    Peers,
    Get { key: String },
    Put { key: String, value: Payload, context: Option<String>, if_context: Option<String> },
    Del { key: String, context: Option<String> },
    Incr { key: String, delta: i64 },
    Counter { key: String },
    SetWrite { key: String, action: SetAction, element: Payload, context: Option<String> },
    Members { key: String, context: bool },
    Keys { query: json::KeysQuery },
    Batch { file: PathBuf },
    Events { query: json::EventsQuery },
    Event { id: String, raw: bool },
    Evidence,
    MemberList,
    MemberPending,
    MemberPropose(json::ChangeBody),
    MemberApprove(String, bool),
    Watch,
    Metrics,
    Backup { file: PathBuf },
    ConsoleUrl,
}

impl Request {
    /// Checks `command`'s arguments; `json` is whether `--json` was given.
    fn new(command: Command, json: bool) -> anyhow::Result<Self> {
        Ok(match command {
            Command::Status => Self::Status,
            Command::Health => Self::Health,
            Command::Peers => Self::Peers,
            Command::Get { key } => Self::Get { key: key_arg(&key)? },
            Command::Put { key, value, base64, file, context, if_context } => Self::Put {
                key: key_arg(&key)?,
                value: payload_arg("value", value.as_deref(), base64, file.as_deref())?,
                context,
                if_context,
            },
            Command::Del { key, context } => Self::Del { key: key_arg(&key)?, context },
            Command::Incr { key, amount, delta } => {
                let Some(delta) = amount.or(delta) else {
                    bail!(Usage("give the amount: `incr KEY DELTA` or `--delta DELTA`".to_owned()))
                };
                Self::Incr { key: key_arg(&key)?, delta }
            }
            Command::Counter { key } => Self::Counter { key: key_arg(&key)? },
            Command::Sadd { key, element, base64, file, context } => Self::SetWrite {
                key: key_arg(&key)?,
                action: SetAction::Add,
                element: payload_arg("element", element.as_deref(), base64, file.as_deref())?,
                context,
            },
            Command::Srem { key, element, base64, file, context } => Self::SetWrite {
                key: key_arg(&key)?,
                action: SetAction::Remove,
                element: payload_arg("element", element.as_deref(), base64, file.as_deref())?,
                context,
            },
            Command::Members { key, context } => Self::Members { key: key_arg(&key)?, context },
            Command::Keys { kind, after, limit } => {
                if let Some(after) = &after {
                    parse_key_cursor(after).map_err(|e| Usage(format!("--{e}")))?;
                }
                let kind = kind.map(|kind| match kind {
                    Kind::Register => json::KeyKind::Register,
                    Kind::Counter => json::KeyKind::Counter,
                    Kind::Set => json::KeyKind::Set,
                });
                // clap bounds the limit to KEYS_LIMIT_MAX, which a usize holds.
                Self::Keys { query: json::KeysQuery { kind, after, limit: limit.map(|n| n as usize) } }
            }
            Command::Batch { file } => Self::Batch { file },
            Command::Events { author, after, limit } => {
                if let Some(author) = &author
                    && (author.is_empty() || author.len() > AUTHOR_BYTES_MAX)
                {
                    bail!(Usage(format!(
                        "--author is {} bytes: give a member's key (64 hex digits) or its name (1 to \
                         {MEMBER_NAME_BYTES_MAX} bytes)",
                        author.len()
                    )));
                }
                // clap bounds the limit to EVENTS_LIMIT_MAX, which a usize holds.
                Self::Events { query: json::EventsQuery { author, after, limit: limit.map(|n| n as usize) } }
            }
            Command::Event { id, raw } => {
                if raw && json {
                    bail!(Usage(
                        "give --raw or --json, not both: --raw prints the event's bytes as hex, \
                         --json the daemon's JSON (which holds them as encoded_hex)"
                            .to_owned()
                    ));
                }
                Self::Event { id: event_id_arg(&id)?, raw }
            }
            Command::Evidence => Self::Evidence,
            Command::Member { what: Member::List } => Self::MemberList,
            Command::Member { what: Member::Pending } => Self::MemberPending,
            Command::Member { what: Member::Add { key, name } } => Self::MemberPropose(json::ChangeBody {
                action: "add".to_owned(),
                key: Some(key_hex_arg(&key, "KEY")?),
                name: Some(name),
                ..json::ChangeBody::default()
            }),
            Command::Member { what: Member::Remove { seat, cut, force } } => {
                Self::MemberPropose(json::ChangeBody {
                    action: "remove".to_owned(),
                    seat: Some(seat),
                    cut,
                    force,
                    ..json::ChangeBody::default()
                })
            }
            Command::Member { what: Member::Replace { seat, key, cut, force } } => {
                Self::MemberPropose(json::ChangeBody {
                    action: "replace".to_owned(),
                    key: Some(key_hex_arg(&key, "KEY")?),
                    seat: Some(seat),
                    cut,
                    force,
                    ..json::ChangeBody::default()
                })
            }
            Command::Member { what: Member::Approve { change, force } } => {
                Self::MemberApprove(key_hex_arg(&change, "CHANGE")?, force)
            }
            Command::Watch => Self::Watch,
            Command::Metrics => {
                if json {
                    bail!(Usage(
                        "the metrics are OpenMetrics text and have no JSON form; run `cairnctl metrics` \
                         without --json"
                            .to_owned()
                    ));
                }
                Self::Metrics
            }
            Command::Backup { file } => {
                if file.as_os_str().is_empty() {
                    bail!(Usage("give the backup file's path".to_owned()));
                }
                Self::Backup { file }
            }
            Command::ConsoleUrl => Self::ConsoleUrl,
            Command::Inspect { .. } => {
                // `run` sends inspect down its own offline path; nothing calls this with it.
                bail!(Usage("inspect works offline; it is no request to the daemon".to_owned()))
            }
        })
    }
}

// ---- commands that talk to the daemon -------------------------------------------------------

/// The exit code for an answer that may be empty: [`EXIT_NOT_FOUND`] if it is.
fn found(empty: bool) -> u8 {
    if empty { EXIT_NOT_FOUND } else { EXIT_OK }
}

async fn online(client: &Client, out: &mut Output, request: Request) -> anyhow::Result<u8> {
    match request {
        Request::Status => out.answer(client.status().await?, status),
        Request::Health => health(client, out).await,
        Request::Peers => out.answer(client.peers().await?, peers),
        Request::Get { key } => out.answer(client.register(&key).await?, register),
        Request::Put { key, value, context, if_context } => {
            let body = json::ValueBody { context, if_context, ..value.value_body() };
            match client.put(&key, &body).await {
                Err(ClientError::Http { status: StatusCode::CONFLICT, code, message })
                    if code == "context_changed" =>
                {
                    Err(ContextChanged(message).into())
                }
                answer => out.answer(answer?, ack),
            }
        }
        Request::Del { key, context } => out.answer(client.delete(&key, context.as_deref()).await?, ack),
        Request::Incr { key, delta } => out.answer(client.incr(&key, delta).await?, ack),
        Request::Counter { key } => out.answer(client.counter(&key).await?, counter),
        Request::SetWrite { key, action, element, context } => {
            let body = json::ElementBody { context, ..element.element_body() };
            let answer = match action {
                SetAction::Add => client.set_add(&key, &body).await?,
                SetAction::Remove => client.set_remove(&key, &body).await?,
            };
            out.answer(answer, ack)
        }
        Request::Members { key, context } => {
            let answer = client.set(&key).await?;
            if context { out.answer(answer, members_with_contexts) } else { out.answer(answer, members) }
        }
        Request::Keys { query } => out.answer(client.keys(&query).await?, keys),
        Request::Batch { file } => {
            let body = batch_body(&file)?;
            out.answer(client.batch(&body).await?, ack)
        }
        Request::Events { query } => out.answer(client.events(&query).await?, events),
        Request::Event { id, raw } => match client.event(&id).await {
            Ok(answer) if raw => event_bytes(out, &answer.value),
            Ok(answer) => out.answer(answer, event),
            Err(ClientError::Http { status: StatusCode::NOT_FOUND, message, .. }) => {
                Err(NotFound(message).into())
            }
            Err(error) => Err(error.into()),
        },
        Request::Evidence => out.answer(client.evidence().await?, evidence),
        Request::MemberList => out.answer(client.membership().await?, member_list),
        Request::MemberPending => {
            let answer = client.membership().await?;
            let code = found(answer.value.pending.is_empty());
            out.answer(answer, member_pending)?;
            Ok(code)
        }
        Request::MemberPropose(body) => out.answer(client.propose_change(&body).await?, member_ack),
        Request::MemberApprove(change, force) => {
            out.answer(client.approve_change(&change, force).await?, member_ack)
        }
        Request::Watch => watch(client, out).await,
        Request::Metrics => {
            // The daemon's own text, which it built from names and numbers alone.
            let text = client.metrics().await?;
            out.writer.write_all(text.as_bytes())?;
            Ok(EXIT_OK)
        }
        Request::Backup { file } => backup(client, out, &file).await,
        Request::ConsoleUrl => {
            let console: crate::console::ConsoleUrl =
                client.request_json(hyper::Method::GET, "/v1/console", None::<&()>).await?;
            if out.json {
                out.print_json(&console)?;
            } else {
                out.line(&console.url)?;
            }
            Ok(EXIT_OK)
        }
    }
}

/// `cairnctl health`: each check, and whether the node is ready (exit 0) or not (exit 6).
async fn health(client: &Client, out: &mut Output) -> anyhow::Result<u8> {
    let (status, answer) = client.health().await?;
    let Some(health) = answer else {
        // A 503 is not ready, whatever came with it; anything else is an error.
        if status == StatusCode::SERVICE_UNAVAILABLE {
            out.line(format_args!("not ready: the daemon answered {status} without its health"))?;
            return Ok(EXIT_NOT_READY);
        }
        bail!("the daemon answered {status} to GET /v1/health, without its health");
    };
    if out.json {
        out.line(serde_json::to_string_pretty(&health)?)?;
    } else {
        let verdict = match (health.live, health.ready) {
            (true, true) => "ready",
            (true, false) => "live, not ready",
            (false, _) => "NOT LIVE: its service loop does not answer",
        };
        out.line(format_args!("{verdict}"))?;
        let mut table = out.table(&["CHECK", "RESULT"]);
        for (check, result) in &health.checks {
            table.add_row(vec![escape(check, false), escape(result, false)]);
        }
        out.print_table(&table)?;
    }
    Ok(if health.ready { EXIT_OK } else { EXIT_NOT_READY })
}

/// `cairnctl backup FILE`: streams the backup into FILE.partial, checks it whole (its end, its
/// counts, its checksum), then renames it to FILE and syncs the directory.
async fn backup(client: &Client, out: &mut Output, file: &Path) -> anyhow::Result<u8> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if file.try_exists().unwrap_or(false) {
        bail!("{} exists; give a new file name (a backup never overwrites a file)", file.display());
    }
    let mut partial_name = file.as_os_str().to_owned();
    partial_name.push(".partial");
    let partial = PathBuf::from(partial_name);
    let mut handle = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let started = std::time::Instant::now();
    let written = match client.backup_into(&mut handle).await {
        Ok(written) => written,
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(error.into());
        }
    };
    drop(handle);
    let checked = (|| -> anyhow::Result<(u64, u64)> {
        let reader = io::BufReader::new(std::fs::File::open(&partial)?);
        let mut reader = crate::backup::Reader::new(reader)?;
        let (mut n_events, mut n_evidence) = (0u64, 0u64);
        while let Some(record) = reader.next_record()? {
            match record {
                crate::backup::Record::Event(_) => n_events += 1,
                crate::backup::Record::Evidence(_) => n_evidence += 1,
            }
        }
        Ok((n_events, n_evidence))
    })();
    let (n_events, n_evidence) = match checked {
        Ok(counts) => counts,
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(
                error.context("the backup the daemon sent is incomplete or damaged; nothing was kept")
            );
        }
    };
    // A link fails if FILE appeared meanwhile: a backup never replaces a file.
    if let Err(error) = std::fs::hard_link(&partial, file) {
        let _ = std::fs::remove_file(&partial);
        return Err(anyhow::Error::new(error)
            .context(format!("cannot name the backup {} (it was checked, then removed)", file.display())));
    }
    std::fs::remove_file(&partial).with_context(|| format!("cannot remove {}", partial.display()))?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", dir.display()))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    if out.json {
        out.print_json(&serde_json::json!({
            "file": file.display().to_string(),
            "bytes": written,
            "events": n_events,
            "evidence": n_evidence,
            "seconds": seconds,
        }))?;
    } else {
        out.line(format!(
            "wrote {} ({written} bytes: {n_events} events, {n_evidence} evidence) in {seconds:.1} s; restore it with \
             `cairnd restore` on the stopped node",
            escape(&file.display().to_string(), false)
        ))?;
    }
    Ok(EXIT_OK)
}

/// The exit code of an answer: [`EXIT_NOT_FOUND`] for the empty state of a register, counter
/// or set (the module documentation says why), [`EXIT_OK`] for everything else. The same with
/// `--json` as without.
trait AnswerCode {
    fn code(&self) -> u8 {
        EXIT_OK
    }
}

impl AnswerCode for json::Status {}
impl AnswerCode for json::Peers {}
impl AnswerCode for json::Ack {}
impl AnswerCode for json::KeysPage {}
impl AnswerCode for json::EventsPage {}
impl AnswerCode for json::Event {}
impl AnswerCode for json::EvidenceList {}
impl AnswerCode for json::Membership {}
impl AnswerCode for json::MemberAck {}

impl AnswerCode for json::Register {
    fn code(&self) -> u8 {
        found(self.state.value_base64.is_none())
    }
}

impl AnswerCode for json::Counter {
    fn code(&self) -> u8 {
        found(self.value.0 == 0)
    }
}

impl AnswerCode for json::Set {
    fn code(&self) -> u8 {
        found(self.members.is_empty())
    }
}

impl Output {
    /// Prints `answer`, with `--json` the daemon's JSON as it sent it (pretty-printed), else
    /// what `human` makes of it; returns the answer's exit code.
    fn answer<T: AnswerCode>(
        &mut self,
        answer: Answer<T>,
        human: fn(&mut Self, &T) -> anyhow::Result<()>,
    ) -> anyhow::Result<u8> {
        if self.json {
            let text = json::pretty(&answer.body)
                .map_err(|e| ClientError::BadResponse(format!("not the expected JSON: {e}")))?;
            self.line(text)?;
        } else {
            human(self, &answer.value)?;
        }
        Ok(answer.value.code())
    }
}

/// The batch file as the API's body: `{"ops": [...]}`, or a bare list of ops. It is read here,
/// so that a misspelt field is named with the file before the daemon is asked.
fn batch_body(file: &Path) -> anyhow::Result<json::BatchBody> {
    let bytes = read_limited(file, REQUEST_BYTES_MAX)?.with_context(|| {
        format!("{}: over {REQUEST_BYTES_MAX} bytes, which the daemon refuses", file.display())
    })?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).with_context(|| format!("{}: not JSON", file.display()))?;
    let body = match value {
        serde_json::Value::Array(_) => serde_json::from_value(value).map(|ops| json::BatchBody { ops }),
        serde_json::Value::Object(_) => serde_json::from_value(value),
        _ => bail!("{}: expected a JSON list of ops or {{\"ops\": [...]}}", file.display()),
    };
    body.with_context(|| format!("{}: not a batch of ops", file.display()))
}

/// 64 hex digits (a key or a change id), checked before any request.
fn key_hex_arg(text: &str, what: &str) -> anyhow::Result<String> {
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(Usage(format!(
            "{what} must be 64 hex digits, not {:?}",
            text.chars().take(80).collect::<String>()
        )));
    }
    Ok(text.to_ascii_lowercase())
}

fn member_ack(out: &mut Output, ack: &json::MemberAck) -> anyhow::Result<()> {
    out.line(format_args!("change {}", escape(&ack.change, false)))?;
    out.line(format_args!(
        "voted: event {} (seq {}), on disk on this node; the change is in force once enough seats approve it \
         (see `cairnctl member pending`)",
        escape(&ack.event.id, false),
        ack.event.seq
    ))?;
    Ok(())
}

fn ack(out: &mut Output, ack: &json::Ack) -> anyhow::Result<()> {
    out.line(format_args!(
        "written: event {} (seq {}, lamport {}), on disk on this node",
        escape(&ack.id, false),
        ack.seq,
        ack.lamport
    ))?;
    Ok(())
}

/// What `status` says under its table about the two digests, which look alike.
const DIGESTS_NOTE: &str = "\
Compare the document digest between nodes: it hashes the visible data, which the accepted
events decide, so nodes that hold the same events show the same one. The sync digest hashes
each author's newest accepted events and the evidence; peers exchange it to see whether they
need to sync, and it differs while events or evidence are still on their way.";

fn status(out: &mut Output, status: &json::Status) -> anyhow::Result<()> {
    let mut table = out.table(&[]);
    let writes = match &status.writes_refused {
        Some(reason) => format!("REFUSED: {}", escape(reason, false)),
        None => "accepted".to_owned(),
    };
    let rows = [
        ("name", escape(&status.name, false)),
        ("key", escape(&status.key, false)),
        ("cluster", escape(&status.cluster_id, false)),
        ("writes", writes),
        ("own seq", status.own_seq.to_string()),
        ("events", status.n_events.to_string()),
        ("evidence", status.n_evidence.to_string()),
        (
            "causal buffer",
            format!(
                "{}, {} of {} bytes",
                plural(status.buffer_events as u64, "event", "events"),
                status.buffer_bytes,
                status.buffer_bytes_max
            ),
        ),
        ("peers", format!("{} of {} connected", status.n_peers_connected, status.n_peers)),
        (
            "membership",
            format!(
                "{}, round {}, {} pending (`cairnctl member list`)",
                plural(status.membership.n_seats as u64, "seat", "seats"),
                status.membership.round,
                status.membership.n_pending
            ),
        ),
        ("document digest", escape(&status.digest, false)),
        ("sync digest", escape(&status.sync_digest, false)),
    ];
    for (name, value) in rows {
        table.add_row(vec![name.to_owned(), value]);
    }
    for author in &status.authors {
        table.add_row(vec![
            format!("written by {}", escape(&author.name, false)),
            format!(
                "{}, {} bytes; {:.1} events/s, {:.0} bytes/s over the last 10 s",
                plural(author.events, "event", "events"),
                author.bytes,
                author.events_per_sec,
                author.bytes_per_sec
            ),
        ]);
    }
    out.print_table(&table)?;
    out.line(DIGESTS_NOTE)?;
    Ok(())
}

fn member_list(out: &mut Output, answer: &json::Membership) -> anyhow::Result<()> {
    out.line(format_args!(
        "membership {} ({} change{} since the genesis); round {} open; a change needs {} vote{}",
        short(&escape(&answer.id, false)),
        answer.n_changes,
        if answer.n_changes == 1 { "" } else { "s" },
        answer.round,
        answer.threshold,
        if answer.threshold == 1 { "" } else { "s" }
    ))?;
    let mut table = out.table(&["NAME", "FOUNDER", "KEY NOW"]);
    for seat in &answer.seats {
        let now =
            if seat.key == seat.founder { "(the founder)".to_owned() } else { escape(&seat.key, false) };
        table.add_row(vec![escape(&seat.name, false), escape(&seat.founder, false), now]);
    }
    out.print_table(&table)?;
    Ok(())
}

fn member_pending(out: &mut Output, answer: &json::Membership) -> anyhow::Result<()> {
    if answer.pending.is_empty() {
        out.line(format_args!(
            "no change pending in round {} of membership {}",
            answer.round,
            short(&escape(&answer.id, false))
        ))?;
    } else {
        let mut table = out.table(&["CHANGE", "ACTION", "SEAT OR NAME", "KEY", "CUT", "VOTES"]);
        for change in &answer.pending {
            table.add_row(vec![
                escape(&change.change, false),
                escape(&change.action, false),
                escape(&change.seat, false),
                escape(&change.key, false),
                change.cut.map_or_else(|| "-".to_owned(), |cut| cut.to_string()),
                format!("{} of {}", change.votes, answer.threshold),
            ]);
        }
        out.print_table(&table)?;
    }
    for seat in &answer.double_approvals {
        out.line(format_args!(
            "seat {} approved two changes of one membership and round",
            escape(seat, false)
        ))?;
    }
    Ok(())
}

fn peers(out: &mut Output, answer: &json::Peers) -> anyhow::Result<()> {
    if answer.peers.is_empty() {
        out.line("no peers: this cluster has one member")?;
        return Ok(());
    }
    let mut table = out.table(&[
        "NAME",
        "KEY",
        "ADDRESS",
        "STATE",
        "DIALED",
        "PUSH",
        "LAST SEEN",
        "RTT",
        "LAG",
        "EVENTS IN",
        "EVENTS OUT",
        "REJECTED",
    ]);
    for peer in &answer.peers {
        let rejected: u64 = peer.stats.rejected.values().fold(0, |sum, n| sum.saturating_add(*n));
        let last_seen = match peer.last_seen_ms_ago {
            Some(ms) => format!("{:.1} s ago", ms as f64 / 1000.0),
            None => "never".to_owned(),
        };
        let rtt = match peer.rtt_ms {
            Some(ms) => format!("{ms:.1} ms"),
            None => "-".to_owned(),
        };
        table.add_row(vec![
            escape(&peer.name, false),
            short(&escape(&peer.key, false)),
            text(peer.address.as_deref()),
            peer.state.name().to_owned(),
            // Whether the overlay chose it (this node dials it), and how events go to it.
            if peer.outbound { "yes" } else { "-" }.to_owned(),
            match (peer.state, peer.eager) {
                (json::PeerState::Connected, true) => "eager",
                (json::PeerState::Connected, false) => "lazy",
                _ => "-",
            }
            .to_owned(),
            last_seen,
            rtt,
            peer.lag_events.map_or_else(|| "-".to_owned(), |lag| lag.to_string()),
            peer.stats.events_in.to_string(),
            peer.stats.events_out.to_string(),
            rejected.to_string(),
        ]);
    }
    out.print_table(&table)?;
    for peer in &answer.peers {
        if let Some(versions) = &peer.protocol_versions {
            out.line(format_args!(
                "{} speaks protocol version {}, this node {}: they cannot connect until one is upgraded",
                escape(&peer.name, false),
                versions.theirs.as_deref().map_or_else(|| "(unknown)".to_owned(), |v| escape(v, false)),
                escape(&versions.ours, false)
            ))?;
        }
    }
    Ok(())
}

/// `get`: the value and the siblings, or `(no value)`.
fn register(out: &mut Output, read: &json::Register) -> anyhow::Result<()> {
    let state = &read.state;
    let Some(value_base64) = &state.value_base64 else {
        out.line("(no value)")?;
        return Ok(());
    };
    out.line(bytes_text(state.value.as_deref(), value_base64))?;
    if state.siblings.len() > 1 {
        out.line(format_args!(
            "\n{} concurrent values (siblings); the one above is the greatest by \
             (lamport, author, event id, op index):",
            state.siblings.len()
        ))?;
        let mut table = out.table(&["VALUE", "AUTHOR", "LAMPORT", "EVENT"]);
        for sibling in &state.siblings {
            let author = match &sibling.author_name {
                Some(name) => escape(name, false),
                None => short(&text(sibling.author.as_deref())),
            };
            table.add_row(vec![
                bytes_text(sibling.value.as_deref(), &sibling.value_base64),
                author,
                sibling.lamport.to_string(),
                format!("{} op {}", escape(&sibling.event_id, false), sibling.op_index),
            ]);
        }
        out.print_table(&table)?;
    }
    out.line(format_args!("context: {}", state.context))?;
    Ok(())
}

/// `counter`: the value.
fn counter(out: &mut Output, answer: &json::Counter) -> anyhow::Result<()> {
    out.line(answer.value)?;
    Ok(())
}

/// `members`: one per line, or `(no members)`.
fn members(out: &mut Output, set: &json::Set) -> anyhow::Result<()> {
    if set.members.is_empty() {
        out.line("(no members)")?;
    }
    for member in &set.members {
        out.line(bytes_text(member.value.as_deref(), &member.value_base64))?;
    }
    Ok(())
}

/// `members --context`: each member, a tab, and its causal context.
fn members_with_contexts(out: &mut Output, set: &json::Set) -> anyhow::Result<()> {
    if set.members.is_empty() {
        out.line("(no members)")?;
    }
    for member in &set.members {
        let context = member.context.as_deref().unwrap_or_default();
        out.line(format_args!("{}\t{context}", bytes_text(member.value.as_deref(), &member.value_base64)))?;
    }
    Ok(())
}

fn keys(out: &mut Output, page: &json::KeysPage) -> anyhow::Result<()> {
    if page.keys.is_empty() {
        out.line("(no keys)")?;
    } else {
        let mut table = out.table(&["KIND", "KEY"]);
        for key in &page.keys {
            table.add_row(vec![key.kind.name().to_owned(), bytes_text(key.key.as_deref(), &key.key_base64)]);
        }
        out.print_table(&table)?;
    }
    if let Some(next) = &page.next {
        out.line(format_args!("more keys follow: for the next page add --after {}", escape(next, false)))?;
    }
    Ok(())
}

fn events(out: &mut Output, page: &json::EventsPage) -> anyhow::Result<()> {
    if page.events.is_empty() {
        out.line("(no events)")?;
    } else {
        let mut table = out.table(&["ID", "AUTHOR", "SEQ", "LAMPORT", "DEPS", "OPS", "BYTES", "EXCLUDED"]);
        for event in &page.events {
            table.add_row(vec![
                escape(&event.id, false),
                escape(&event.author_name, false),
                event.seq.to_string(),
                event.lamport.to_string(),
                event.n_deps.to_string(),
                event.n_ops.to_string(),
                event.size.to_string(),
                if event.excluded { "yes" } else { "no" }.to_owned(),
            ]);
        }
        out.print_table(&table)?;
    }
    if let Some(next) = page.next {
        out.line(format_args!("more events follow: for the next page add --after {next}"))?;
    }
    Ok(())
}

/// One op as a table row: `[op, key, value or delta]`.
fn op_row(op: &json::Op) -> Vec<String> {
    let (key, key_base64) = op.key();
    let argument = match op {
        json::Op::Put { value, value_base64, .. } => bytes_text(value.as_deref(), value_base64),
        json::Op::Incr { delta, .. } => delta.to_string(),
        json::Op::Add { element, element_base64, .. } | json::Op::Remove { element, element_base64, .. } => {
            bytes_text(element.as_deref(), element_base64)
        }
        json::Op::Del { .. } => String::new(),
        json::Op::Propose { change, action, key, round, .. } => {
            format!("{action} {key} (change {change}, round {round})")
        }
        json::Op::Approve { change, round } => format!("change {change}, round {round}"),
        json::Op::Rotate { key, cut, successor } => format!("{key} after seq {cut} to {successor}"),
    };
    vec![op.name().to_owned(), bytes_text(key, key_base64), argument]
}

/// A list of ids, one per line, or `(none)`.
fn id_lines(ids: &[String]) -> String {
    if ids.is_empty() {
        "(none)".to_owned()
    } else {
        ids.iter().map(|id| escape(id, false)).collect::<Vec<_>>().join("\n")
    }
}

fn event(out: &mut Output, event: &json::Event) -> anyhow::Result<()> {
    let mut table = out.table(&[]);
    let excluded = if event.excluded {
        "yes: its author equivocated at or below this seq, so its ops are not in the document"
    } else {
        "no"
    };
    let rows = [
        ("id", escape(&event.id, false)),
        ("author", format!("{} ({})", escape(&event.author_name, false), escape(&event.author, false))),
        ("seq", event.seq.to_string()),
        ("lamport", event.lamport.to_string()),
        ("deps", id_lines(&event.deps)),
        ("ops hash", escape(&event.ops_hash, false)),
        ("bytes", event.size.to_string()),
        ("excluded", excluded.to_owned()),
    ];
    for (name, value) in rows {
        table.add_row(vec![name.to_owned(), value]);
    }
    out.print_table(&table)?;
    let mut ops = out.table(&["OP", "KEY", "VALUE / DELTA / ELEMENT"]);
    for op in &event.ops {
        ops.add_row(op_row(op));
    }
    out.print_table(&ops)?;
    Ok(())
}

/// `event ID --raw`: the canonical bytes as one line of hex, which `inspect event` reads.
fn event_bytes(out: &mut Output, event: &json::Event) -> anyhow::Result<u8> {
    if event.encoded_hex.is_empty() || !event.encoded_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ClientError::BadResponse("the event's encoded_hex is not hex".into()).into());
    }
    out.line(&event.encoded_hex)?;
    Ok(EXIT_OK)
}

fn evidence(out: &mut Output, list: &json::EvidenceList) -> anyhow::Result<()> {
    if !list.double_approvals.is_empty() {
        let mut table = out.table(&["SEAT", "KEY", "ROUND", "VOTE (COUNTS)", "SECOND VOTE"]);
        for item in &list.double_approvals {
            table.add_row(vec![
                text(item.name.as_deref()),
                short(&escape(&item.seat, false)),
                item.round.to_string(),
                format!(
                    "event {} for {}",
                    short(&escape(&item.first.event, false)),
                    short(&escape(&item.first.change, false))
                ),
                format!(
                    "event {} for {}",
                    short(&escape(&item.second.event, false)),
                    short(&escape(&item.second.change, false))
                ),
            ]);
        }
        out.line("double approvals: seats that voted for two changes of one membership and round")?;
        out.print_table(&table)?;
    }
    if list.evidence.is_empty() {
        out.line("no evidence: no member has been caught equivocating")?;
        return Ok(());
    }
    let mut table = out.table(&["AUTHOR", "KEY", "SEQ", "FIRST EVENT", "SECOND EVENT"]);
    for item in &list.evidence {
        table.add_row(vec![
            text(item.author_name.as_deref()),
            short(&escape(&item.author, false)),
            item.seq.to_string(),
            escape(&item.first.id, false),
            escape(&item.second.id, false),
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
fn change_line(change: &json::Change) -> String {
    let head = format!(
        "#{} {} {}",
        change.position,
        change.kind,
        bytes_text(change.key.as_deref(), &change.key_base64)
    );
    match &change.state {
        json::ChangeState::Unavailable { state_error } => {
            format!("{head} changed (state unavailable: {})", escape(state_error, false))
        }
        json::ChangeState::Register(state) => {
            let Some(value_base64) = &state.value_base64 else {
                return format!("{head} = (no value)");
            };
            let n_siblings = state.siblings.len();
            let more =
                if n_siblings > 1 { format!(" ({n_siblings} concurrent values)") } else { String::new() };
            format!("{head} = {}{more}", bytes_text(state.value.as_deref(), value_base64))
        }
        json::ChangeState::Counter { value } => format!("{head} = {value}"),
        json::ChangeState::Set { members } => {
            const SHOWN_MAX: usize = 8;
            let shown: Vec<String> = members
                .iter()
                .take(SHOWN_MAX)
                .map(|m| bytes_text(m.value.as_deref(), &m.value_base64))
                .collect();
            let more = if members.len() > SHOWN_MAX { ", …" } else { "" };
            format!(
                "{head} = {{{}{more}}} ({})",
                shown.join(", "),
                plural(members.len() as u64, "member", "members")
            )
        }
    }
}

/// The line `watch --json` prints when the stream skipped changes.
#[derive(Serialize)]
struct LaggedLine {
    lagged: u64,
}

async fn watch(client: &Client, out: &mut Output) -> anyhow::Result<u8> {
    let mut write_error: Option<anyhow::Error> = None;
    let json_lines = out.json;
    let followed = client.watch_changes(|event, data| {
        let written: anyhow::Result<()> = match &event {
            // The daemon's JSON line as it sent it.
            WatchEvent::Change(_) if json_lines => out.line(data).map_err(Into::into),
            WatchEvent::Change(change) => out.line(change_line(change)).map_err(Into::into),
            WatchEvent::Lagged(lagged) => {
                let missed = plural(lagged.missed, "change", "changes");
                let _ = writeln!(io::stderr(), "cairnctl: the watch fell behind and missed {missed}");
                if json_lines {
                    serde_json::to_string(&LaggedLine { lagged: lagged.missed })
                        .map_err(Into::into)
                        .and_then(|line| out.line(line).map_err(Into::into))
                } else {
                    Ok(())
                }
            }
        };
        match written.and_then(|()| out.writer.flush().map_err(Into::into)) {
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
        Some(error) => Err(error.context("cannot write to stdout")),
        None => Ok(EXIT_OK),
    }
}

// ---- inspect: offline verdicts --------------------------------------------------------------

fn inspect(out: &mut Output, what: Inspect) -> anyhow::Result<u8> {
    let load = |genesis: Option<PathBuf>| genesis.as_deref().map(crate::config::load_genesis).transpose();
    match what {
        Inspect::Event { file, genesis } => {
            let genesis = load(genesis)?;
            inspect_event(out, &read_input(&file)?, genesis.as_ref())
        }
        Inspect::Evidence { file, genesis } => {
            let genesis = load(genesis)?;
            inspect_evidence(out, &read_input(&file)?, genesis.as_ref())
        }
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
    /// The bytes to judge, or why they could not be read.
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

/// Raw bytes, or hex text of them: a file of nothing but hex digits and whitespace, after an
/// optional `0x` or `0X` (and whitespace before it), is hex. Raw bytes of an event or evidence
/// start with a public key, which is no such text.
fn decode_input(raw: Vec<u8>) -> Input {
    let start = raw.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(raw.len());
    let prefixed = raw[start..].starts_with(b"0x") || raw[start..].starts_with(b"0X");
    let digits_from = if prefixed { start + 2 } else { start };
    let rest = &raw[digits_from..];
    let is_hex = (prefixed || rest.iter().any(u8::is_ascii_hexdigit))
        && rest.iter().all(|b| b.is_ascii_hexdigit() || b.is_ascii_whitespace());
    if !is_hex {
        return Input { bytes: Ok(raw), hex: false };
    }
    let digits: Vec<u8> = rest.iter().copied().filter(u8::is_ascii_hexdigit).collect();
    let bytes = hex::decode(&digits).map_err(|e| format!("the hex text does not decode: {e}"));
    Input { bytes, hex: true }
}

/// The names and numbers of a kind of rule, for the report.
trait RuleInfo: Copy {
    fn name(self) -> &'static str;
    fn number(self) -> u8;
    fn requirement(self) -> &'static str;
}

impl RuleInfo for EventRule {
    fn name(self) -> &'static str {
        Self::name(self)
    }

    fn number(self) -> u8 {
        Self::number(self)
    }

    fn requirement(self) -> &'static str {
        Self::requirement(self)
    }
}

impl RuleInfo for EvidenceRule {
    fn name(self) -> &'static str {
        Self::name(self)
    }

    fn number(self) -> u8 {
        Self::number(self)
    }

    fn requirement(self) -> &'static str {
        Self::requirement(self)
    }
}

/// What an undecided rule needs, in words, with what to do about it.
fn needs_detail(needs: Needs) -> String {
    match needs {
        Needs::Genesis => format!("{}; give --genesis FILE", needs.why()),
        Needs::CausalPast => format!("{}; only a node that holds the deps can tell", needs.why()),
        _ => needs.why().to_owned(),
    }
}

/// Every verdict of `diagnosis` as the report shows it.
fn checks<T, R: RuleInfo>(diagnosis: &Diagnosis<T, R>) -> Vec<json::InspectCheck> {
    diagnosis
        .verdicts
        .iter()
        .map(|(rule, verdict)| {
            json::InspectCheck::of((rule.name(), rule.number(), rule.requirement()), verdict, needs_detail)
        })
        .collect()
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Valid => "valid",
        Outcome::Invalid => "invalid",
        Outcome::Undecided => "undecided",
    }
}

/// The report of bytes that could not be read as hex, or that do not decode; `diagnosis` is
/// `None` for the first.
fn malformed_report<T, D, R: RuleInfo>(
    kind: &str,
    input: &Input,
    diagnosis: Option<&Diagnosis<D, R>>,
) -> json::InspectReport<T> {
    let error = match (&input.bytes, diagnosis) {
        (Err(error), _) => error.clone(),
        (Ok(_), Some(diagnosis)) => {
            diagnosis.failures().next().map(|(_, failure)| failure.to_string()).unwrap_or_default()
        }
        (Ok(_), None) => String::new(),
    };
    json::InspectReport {
        kind: kind.to_owned(),
        size: input.bytes.as_ref().ok().map(Vec::len),
        hex_input: input.hex,
        well_formed: false,
        error: Some(error),
        decoded: None,
        checks: diagnosis.map(checks).unwrap_or_default(),
        outcome: outcome_name(Outcome::Invalid).to_owned(),
        valid: false,
    }
}

/// Prints a report (or its JSON) with the decoded fields and the verdict line; returns the
/// exit code.
fn finish<T: Serialize>(
    out: &mut Output,
    report: &json::InspectReport<T>,
    fields: Vec<(String, String)>,
    verdict: &str,
) -> anyhow::Result<u8> {
    let code = finish_code(report);
    if out.json {
        out.print_json(report)?;
        return Ok(code);
    }
    let source = if report.hex_input { ", from hex text" } else { "" };
    if let Some(error) = &report.error {
        // The reason can quote the input (a name, a key), so it is escaped like all of it.
        match report.size {
            Some(size) => {
                let size = plural(size as u64, "byte", "bytes");
                out.line(format_args!(
                    "{}: MALFORMED ({size}{source}): {}",
                    report.kind,
                    escape(error, false)
                ))?
            }
            None => out.line(format_args!("{}: MALFORMED: {}", report.kind, escape(error, false)))?,
        }
        out.line("verdict: INVALID: the bytes do not decode")?;
        return Ok(code);
    }
    out.line(format_args!(
        "{}: well formed ({}{source}, canonical encoding)",
        report.kind,
        plural(report.size.unwrap_or(0) as u64, "byte", "bytes")
    ))?;
    let mut table = out.table(&[]);
    for (name, value) in fields {
        table.add_row(vec![name, value]);
    }
    out.print_table(&table)?;
    let mut checks = out.table(&["RULE", "CHECK", "VERDICT", "DETAIL"]);
    for check in &report.checks {
        let verdict = match check.ok {
            Some(true) => "ok",
            Some(false) => "FAILED",
            None => "undecided",
        };
        let rule = if check.rule == 0 { String::new() } else { check.rule.to_string() };
        checks.add_row(vec![rule, check.name.clone(), verdict.to_owned(), escape(&check.detail, false)]);
    }
    out.print_table(&checks)?;
    out.line(verdict)?;
    Ok(code)
}

/// The rules that failed, as `name (reason)`, or the undecided ones, as `name`.
fn rule_list<T, R: RuleInfo>(diagnosis: &Diagnosis<T, R>) -> String {
    let failed: Vec<String> =
        diagnosis.failures().map(|(rule, failure)| format!("{} ({})", rule.name(), failure.reason)).collect();
    if !failed.is_empty() {
        return failed.join(", ");
    }
    diagnosis
        .undecided()
        .map(|(rule, needs)| format!("{} ({})", rule.name(), needs.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The author as the report shows it: the key, and its name in the genesis when it is a member.
fn author_text(author: &cairn_crypto::PublicKey, genesis: Option<&Genesis>) -> String {
    let name = genesis.and_then(|g| g.members().iter().find(|m| m.key == *author));
    match name {
        Some(member) => format!("{author} ({})", escape(&member.name, false)),
        None => author.to_string(),
    }
}

/// `inspect event`: every rule's verdict; returns the exit code.
fn inspect_event(out: &mut Output, input: &Input, genesis: Option<&Genesis>) -> anyhow::Result<u8> {
    let Ok(bytes) = &input.bytes else {
        let report = malformed_report::<json::InspectedEvent, Event, EventRule>("event", input, None);
        return finish(out, &report, vec![], "");
    };
    let diagnosis = cairn_protocol::diagnose(bytes, genesis);
    let Some(event) = &diagnosis.decoded else {
        let report = malformed_report::<json::InspectedEvent, _, _>("event", input, Some(&diagnosis));
        return finish(out, &report, vec![], "");
    };
    let outcome = diagnosis.outcome();
    let verdict = match outcome {
        Outcome::Valid => "verdict: VALID: every rule holds".to_owned(),
        Outcome::Invalid => format!("verdict: INVALID: {}", rule_list(&diagnosis)),
        Outcome::Undecided => format!(
            "verdict: UNDECIDED: no rule fails, but {} cannot be judged from the bytes alone",
            rule_list(&diagnosis)
        ),
    };
    let Event { header, ops, sig } = event;
    let id = header.id();
    let json_ops: Vec<json::Op> = ops.iter().map(json::Op::from).collect();
    let fields = vec![
        ("id".to_owned(), id.to_string()),
        ("author".to_owned(), author_text(&header.author, genesis)),
        ("seq".to_owned(), header.seq.to_string()),
        ("lamport".to_owned(), header.lamport.to_string()),
        ("deps".to_owned(), id_lines(&header.deps.iter().map(ToString::to_string).collect::<Vec<_>>())),
        ("ops hash".to_owned(), hex::encode(header.ops_hash)),
        ("signature".to_owned(), hex::encode(sig.0)),
        ("ops".to_owned(), json_ops.iter().map(|op| op_row(op).join(" ")).collect::<Vec<_>>().join("\n")),
    ];
    let report = json::InspectReport {
        kind: "event".to_owned(),
        size: Some(diagnosis.n_bytes),
        hex_input: input.hex,
        well_formed: true,
        error: None,
        decoded: Some(json::InspectedEvent {
            id: id.to_string(),
            author: header.author.to_string(),
            seq: header.seq,
            lamport: header.lamport,
            deps: header.deps.iter().map(ToString::to_string).collect(),
            ops_hash: hex::encode(header.ops_hash),
            sig: hex::encode(sig.0),
            ops: json_ops,
        }),
        checks: checks(&diagnosis),
        outcome: outcome_name(outcome).to_owned(),
        valid: outcome == Outcome::Valid,
    };
    finish(out, &report, fields, &verdict)
}

/// The exit code [`finish`] gives a report.
fn finish_code<T>(report: &json::InspectReport<T>) -> u8 {
    match report.outcome.as_str() {
        "valid" => EXIT_OK,
        "undecided" => EXIT_INSPECT_UNDECIDED,
        _ => EXIT_INSPECT_FAILED,
    }
}

/// `inspect evidence`: every step's verdict; returns the exit code.
fn inspect_evidence(out: &mut Output, input: &Input, genesis: Option<&Genesis>) -> anyhow::Result<u8> {
    let Ok(bytes) = &input.bytes else {
        let report =
            malformed_report::<json::InspectedEvidence, Evidence, EvidenceRule>("evidence", input, None);
        return finish(out, &report, vec![], "");
    };
    let diagnosis = cairn_protocol::diagnose_evidence(bytes, genesis);
    let Some(evidence) = &diagnosis.decoded else {
        let report = malformed_report::<json::InspectedEvidence, _, _>("evidence", input, Some(&diagnosis));
        return finish(out, &report, vec![], "");
    };
    let (a, b) = (&evidence.first, &evidence.second);
    let (id_a, id_b) = evidence.ids();
    let outcome = diagnosis.outcome();
    let verdict = match outcome {
        Outcome::Valid => format!(
            "verdict: PROVES that {} signed two different events with seq {}",
            author_text(&a.header.author, genesis),
            a.header.seq
        ),
        Outcome::Invalid => format!("verdict: INVALID, proves nothing: {}", rule_list(&diagnosis)),
        Outcome::Undecided => format!(
            "verdict: UNDECIDED: {} signed two different events with seq {}, but {} cannot be judged \
             from the bytes alone; it proves an equivocation only if the author is a member",
            a.header.author,
            a.header.seq,
            rule_list(&diagnosis)
        ),
    };
    let header_lines = |signed: &SignedHeader, id: cairn_protocol::EventId| {
        format!(
            "id {id}\nseq {}, lamport {}, {}\nops hash {}\nsig {}",
            signed.header.seq,
            signed.header.lamport,
            plural(signed.header.deps.len() as u64, "dep", "deps"),
            hex::encode(signed.header.ops_hash),
            hex::encode(signed.sig.0)
        )
    };
    let fields = vec![
        ("author".to_owned(), author_text(&a.header.author, genesis)),
        ("seq".to_owned(), a.header.seq.to_string()),
        ("first".to_owned(), header_lines(a, id_a)),
        ("second".to_owned(), header_lines(b, id_b)),
    ];
    let report = json::InspectReport {
        kind: "evidence".to_owned(),
        size: Some(diagnosis.n_bytes),
        hex_input: input.hex,
        well_formed: true,
        error: None,
        decoded: Some(json::InspectedEvidence {
            author: a.header.author.to_string(),
            seq: a.header.seq,
            first: json::SignedHeader::from(a),
            second: json::SignedHeader::from(b),
        }),
        checks: checks(&diagnosis),
        outcome: outcome_name(outcome).to_owned(),
        valid: outcome == Outcome::Valid,
    };
    finish(out, &report, fields, &verdict)
}

#[cfg(test)]
mod tests {
    use hyper::Method;
    use serde_json::Value;

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
        // A 0x prefix, before or after whitespace.
        check(b"0x00ff\n", Ok(&[0x00, 0xff]), true);
        check(b"\n 0XAB cd\n", Ok(&[0xab, 0xcd]), true);
        check(b"0x", Ok(b""), true);
        check(b"0x0x00", Ok(b"0x0x00"), false);
        check(b"00 0x11", Ok(b"00 0x11"), false);
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
    fn socket_comes_from_the_option_the_environment_or_the_default() {
        // Parsed with an explicit environment value through clap's `env`, which the help shows
        // as `[env: CAIRN_SOCKET=]`.
        let socket = |args: &[&str]| Cli::try_parse_from(args).map(|cli| cli.socket).map_err(|e| e.kind());
        assert_eq!(socket(&["cairnctl", "--socket", "/a", "status"]), Ok(PathBuf::from("/a")));
        assert_eq!(socket(&["cairnctl", "status", "--socket", "/b"]), Ok(PathBuf::from("/b")));
        assert!(socket(&["cairnctl", "inspect", "event", "f"]).is_ok());
        // Inspect has no socket to use, and says so rather than ignore one.
        assert_eq!(
            socket(&["cairnctl", "inspect", "event", "f", "--socket", "/c"]),
            Err(clap::error::ErrorKind::UnknownArgument)
        );
        assert_eq!(
            socket(&["cairnctl", "inspect", "--socket", "/c", "event", "f"]),
            Err(clap::error::ErrorKind::ValueValidation)
        );
        use clap::CommandFactory;
        let mut command = Cli::command();
        let help = command.render_long_help().to_string();
        assert!(help.contains("[env: CAIRN_SOCKET="), "{help}");
        assert!(!help.contains("[env: CAIRN_SOCKET]"), "{help}");
        let inspect = command.find_subcommand_mut("inspect").unwrap();
        assert!(!inspect.render_long_help().to_string().contains("--socket"));
        let event = inspect.find_subcommand_mut("event").unwrap();
        assert!(!event.render_long_help().to_string().contains("--socket"));
    }

    #[test]
    fn escape_forms() {
        let check =
            |text: &str, quoted: bool, expected: &str| assert_eq!(escape(text, quoted), expected, "{text:?}");
        check("plain text", false, "plain text");
        check("plain text", true, "\"plain text\"");
        check("esc\x1b[31mRED", true, "\"esc\\u{1b}[31mRED\"");
        check("\x1b[2Jcleared", false, "\\u{1b}[2Jcleared");
        check("a\nb\rc\td\0e\x7f", false, "a\\nb\\rc\\td\\u{0}e\\u{7f}");
        // C1: U+009B is a one-character `\e[` for some terminals.
        check("\u{9b}31m", false, "\\u{9b}31m");
        // Bidirectional overrides and invisible characters.
        check("user\u{202e}gpj.exe", false, "user\\u{202e}gpj.exe");
        check("a\u{200b}b\u{feff}", false, "a\\u{200b}b\\u{feff}");
        // A backslash and quotes, so that the escaped form reads back to one text.
        check("back\\slash", false, "back\\\\slash");
        check("say \"hi\"", true, "\"say \\\"hi\\\"\"");
        check("say \"hi\"", false, "say \"hi\"");
        check("é ✓ 日本", true, "\"é ✓ 日本\"");
        check("", true, "\"\"");
    }

    #[test]
    fn text_and_bytes_never_look_alike() {
        // The text `base64:/wA=` and the bytes ff 00, whose base64 is `/wA=`.
        let text = bytes_text(Some("base64:/wA="), "YmFzZTY0Oi93QT0=");
        let bytes = bytes_text(None, "/wA=");
        assert_eq!(text, "\"base64:/wA=\"");
        assert_eq!(bytes, "base64:/wA=");
        assert_ne!(text, bytes);
    }

    /// Every character of `text` that [`escape`] would escape, but line breaks.
    fn assert_printable(what: &str, text: &str) {
        let bad: Vec<char> =
            text.chars().filter(|&c| c != '\n' && (is_unprintable(c) || c == '\r')).collect();
        assert!(bad.is_empty(), "{what} prints {bad:?}:\n{text}");
    }

    /// A text that tries every trick: escape sequences, a C1 CSI, a bidi override, a bell, a
    /// carriage return that would overwrite the line.
    const HOSTILE: &str = "\x1b[2J\u{9b}31m\u{202e}evil\r\x07\n";

    /// What `json` reads as a `T`, for answers written in the tests as JSON.
    fn typed<T: serde::de::DeserializeOwned>(json: Value) -> T {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn human_output_escapes_every_text() {
        let h = HOSTILE;
        let member = serde_json::json!({"value": h, "value_base64": "x"});
        let sibling = |value: Value, author: Value, author_name: Value| {
            serde_json::json!({"value": value, "value_base64": h, "author": author, "author_name": author_name,
                "author_index": 0, "lamport": 1, "event_id": h, "op_index": 0})
        };
        let status_json: json::Status = typed(serde_json::json!({
            "name": h, "key": h, "cluster_id": h, "writes_refused": h, "own_seq": 1, "n_events": 2,
            "n_evidence": 0, "buffer_events": 1, "buffer_bytes": 10, "buffer_bytes_max": 100,
            "n_peers_connected": 0, "n_peers": 1, "digest": h, "sync_digest": h}));
        let peers_json = json::Peers {
            peers: vec![json::Peer {
                key: h.into(),
                name: h.into(),
                address: Some(h.into()),
                state: json::PeerState::Connected,
                outbound: true,
                eager: false,
                last_seen_ms_ago: None,
                rtt_ms: Some(0.5),
                lag_events: Some(0),
                stats: json::PeerStats {
                    rejected: [(h.to_owned(), 1)].into_iter().collect(),
                    ..json::PeerStats::default()
                },
                protocol_versions: None,
            }],
        };
        let register_json: json::Register = typed(
            serde_json::json!({"key": h, "value": h, "value_base64": "x",
            "siblings": [sibling(h.into(), Value::Null, h.into()), sibling(Value::Null, h.into(), Value::Null)]}),
        );
        let set_json: json::Set =
            typed(serde_json::json!({"key": h, "members": [member, {"value": null, "value_base64": h}]}));
        let keys_json: json::KeysPage =
            typed(serde_json::json!({"keys": [{"kind": "set", "key": h, "key_base64": "x"}], "next": h}));
        let events_json: json::EventsPage = typed(serde_json::json!({"events": [{"id": h, "author": h,
            "author_name": h, "seq": 1, "lamport": 1, "n_deps": 0, "n_ops": 1, "size": 9, "excluded": false}],
            "next": 1}));
        let event_json: json::Event =
            typed(serde_json::json!({"id": h, "author": h, "author_name": h, "seq": 1,
            "lamport": 1, "deps": [h, h], "ops_hash": h, "size": 9, "excluded": true, "encoded_hex": "00",
            "ops": [
                {"op": "put", "key": h, "key_base64": "x", "value": null, "value_base64": h},
                {"op": "incr", "key": null, "key_base64": h, "delta": 1},
                {"op": "add", "key": h, "key_base64": "x", "element": h, "element_base64": "x"},
                {"op": "del", "key": h, "key_base64": "x"},
            ]}));
        let header = serde_json::json!({"id": h, "author": h, "seq": 1, "lamport": 1, "deps": [], "ops_hash": h, "sig": h});
        let membership_json = json::Membership {
            id: h.into(),
            n_changes: 1,
            round: 0,
            threshold: 2,
            seats: vec![json::MemberSeat { name: h.into(), founder: h.into(), key: h.into() }],
            pending: vec![json::PendingChange {
                change: h.into(),
                action: h.into(),
                key: h.into(),
                seat: h.into(),
                cut: Some(1),
                votes: 1,
            }],
            double_approvals: vec![h.into()],
        };
        let evidence_json: json::EvidenceList = typed(serde_json::json!({"evidence": [{"author": h,
            "author_name": h, "seq": 1, "first": header, "second": header, "encoded_hex": h}]}));
        type Render<'a> = Box<dyn Fn(&mut Output) -> anyhow::Result<()> + 'a>;
        let cases: Vec<(&str, Render<'_>)> = vec![
            ("status", Box::new(|out| status(out, &status_json))),
            ("peers", Box::new(|out| peers(out, &peers_json))),
            ("member list", Box::new(|out| member_list(out, &membership_json))),
            ("member pending", Box::new(|out| member_pending(out, &membership_json))),
            ("get", Box::new(|out| register(out, &register_json))),
            ("members", Box::new(|out| members(out, &set_json))),
            ("keys", Box::new(|out| keys(out, &keys_json))),
            ("events", Box::new(|out| events(out, &events_json))),
            ("event", Box::new(|out| event(out, &event_json))),
            ("evidence", Box::new(|out| evidence(out, &evidence_json))),
        ];
        for tty in [false, true] {
            for (what, render) in &cases {
                let capture = Capture::default();
                let mut out = Output { tty, json: false, writer: Box::new(capture.clone()) };
                render(&mut out).unwrap();
                assert_printable(what, &capture.text());
                assert!(capture.text().contains("\\u{1b}[2J"), "{what}: {}", capture.text());
            }
        }
        for change in [
            serde_json::json!({"kind": "set", "key": h, "key_base64": "x", "position": 1, "state_error": h}),
            serde_json::json!({"kind": "register", "key": h, "key_base64": "x", "position": 1, "value": h,
                "value_base64": "x", "siblings": []}),
            serde_json::json!({"kind": "counter", "key": null, "key_base64": h, "position": 1, "value": 2}),
            serde_json::json!({"kind": "set", "key": h, "key_base64": "x", "position": 1, "members": [member]}),
        ] {
            assert_printable("watch", &change_line(&typed(change)));
        }
        let error = anyhow::Error::new(ClientError::Http {
            status: StatusCode::BAD_REQUEST,
            code: String::new(),
            message: h.to_owned(),
        });
        assert_printable("an error", &error_line(&error));
        assert!(!error_line(&error).contains('\n'));
    }

    #[test]
    fn watch_lines() {
        let check = |change: Value, expected: &str| assert_eq!(change_line(&typed(change)), expected);
        let sibling = serde_json::json!({"value": "v", "value_base64": "dg==", "author": null, "author_name": null,
            "author_index": 0, "lamport": 1, "event_id": "00", "op_index": 0});
        check(
            serde_json::json!({
                "kind": "register", "key": "k", "key_base64": "aw==", "position": 3,
                "value": "v", "value_base64": "dg==", "siblings": [sibling, sibling],
            }),
            "#3 register \"k\" = \"v\" (2 concurrent values)",
        );
        check(
            serde_json::json!({
                "kind": "register", "key": null, "key_base64": "/w==", "position": 4,
                "value": null, "value_base64": null, "siblings": [],
            }),
            "#4 register base64:/w== = (no value)",
        );
        check(
            serde_json::json!({"kind": "counter", "key": "c", "key_base64": "Yw==", "position": 5, "value": -2}),
            "#5 counter \"c\" = -2",
        );
        check(
            serde_json::json!({"kind": "counter", "key": "c", "key_base64": "Yw==", "position": 5,
                "value": "18446744073709551614"}),
            "#5 counter \"c\" = 18446744073709551614",
        );
        check(
            serde_json::json!({
                "kind": "set", "key": "s", "key_base64": "cw==", "position": 6,
                "members": [{"value": "a", "value_base64": "YQ=="}, {"value": null, "value_base64": "/w=="}],
            }),
            "#6 set \"s\" = {\"a\", base64:/w==} (2 members)",
        );
        check(
            serde_json::json!({"kind": "set", "key": "s", "key_base64": "cw==", "position": 7,
                "members": [{"value": "a", "value_base64": "YQ=="}]}),
            "#7 set \"s\" = {\"a\"} (1 member)",
        );
        check(
            serde_json::json!({"kind": "counter", "key": "c", "key_base64": "Yw==", "position": 7,
                "state_error": "busy"}),
            "#7 counter \"c\" changed (state unavailable: busy)",
        );
        check(
            serde_json::json!({"kind": "register", "key": "esc\u{1b}[31mRED", "key_base64": "x", "position": 8,
                   "value": "\u{1b}[2Jcleared", "value_base64": "x", "siblings": []}),
            "#8 register \"esc\\u{1b}[31mRED\" = \"\\u{1b}[2Jcleared\"",
        );
    }

    /// Checks arguments as `run` does before it asks the daemon: the error's exit code and
    /// message.
    fn request(args: &[&str]) -> Result<Request, (u8, String)> {
        let cli = Cli::try_parse_from(std::iter::once("cairnctl").chain(args.iter().copied())).unwrap();
        Request::new(cli.command, cli.json).map_err(|e| (exit_code(&e), format!("{e:#}")))
    }

    #[test]
    fn arguments_are_checked_against_the_limits_first() {
        let usage = |args: &[&str], phrase: &str| {
            let (code, message) = request(args).unwrap_err();
            assert_eq!(code, EXIT_USAGE, "{args:?}: {message}");
            assert!(message.contains(phrase), "{args:?}: {message}");
            // The message names sizes, never the oversized text.
            assert!(message.len() < 300, "{args:?}: {message}");
            message
        };
        let long_key = "k".repeat(70_000);
        for command in ["get", "del", "counter", "members"] {
            usage(&[command, &long_key], "the key is 70000 bytes, over the limit of 1024");
        }
        usage(&["put", &long_key, "v"], "over the limit of 1024");
        usage(
            &["sadd", &"k".repeat(KEY_BYTES_MAX + 1), "e"],
            "the key is 1025 bytes, over the limit of 1024",
        );
        assert!(request(&["get", &"k".repeat(KEY_BYTES_MAX)]).is_ok());
        usage(&["get", ""], "the key is empty");
        usage(
            &["put", "k", &"v".repeat(VALUE_BYTES_MAX + 1)],
            "the value is 65537 bytes, over the limit of 65536",
        );
        assert!(request(&["put", "k", &"v".repeat(VALUE_BYTES_MAX)]).is_ok());
        let big = BASE64.encode(vec![0u8; VALUE_BYTES_MAX + 1]);
        usage(&["put", "--base64", "k", &big], "the value is 65537 bytes");
        usage(&["sadd", "--base64", "k", "not base64!"], "the element is not valid base64");
        usage(&["put", "--base64", "k", "-"], "drop --base64");
        usage(&["event", "xyz"], "an event id is 64 hex digits; got 3 characters");
        usage(&["event", &"ab".repeat(40_000)], "got 80000 characters");
        usage(&["events", "--author", &"a".repeat(70_000)], "--author is 70000 bytes");
        usage(&["keys", "--after", "colour:AA"], "no key kind");
        usage(&["keys", "--after", &format!("register:{}", "A".repeat(70_000))], "longer than any key");
        usage(&["--json", "metrics"], "no JSON form");
        usage(&["--json", "event", &"ab".repeat(32), "--raw"], "not both");
        assert!(matches!(request(&["keys", "--after", "set:YQ", "--limit", "2"]), Ok(Request::Keys { .. })));
        assert!(Cli::try_parse_from(["cairnctl", "keys", "--limit", "5001"]).is_err());
        assert!(Cli::try_parse_from(["cairnctl", "events", "--limit", "0"]).is_err());
    }

    #[test]
    fn arguments_that_are_not_utf8_point_to_base64() {
        use std::os::unix::ffi::OsStrExt as _;
        let bytes = OsStr::from_bytes(b"\xff\x00");
        let parse = |args: Vec<&OsStr>| {
            let cli = Cli::try_parse_from(std::iter::once(OsStr::new("cairnctl")).chain(args)).unwrap();
            let error = Request::new(cli.command, cli.json).unwrap_err();
            (exit_code(&error), error.to_string())
        };
        let (code, message) = parse(vec![OsStr::new("put"), OsStr::new("k"), bytes]);
        assert_eq!(code, EXIT_USAGE);
        assert!(
            message.contains("not UTF-8") && message.contains("--base64") && message.contains("--file"),
            "{message}"
        );
        let (code, message) = parse(vec![OsStr::new("srem"), OsStr::new("k"), bytes]);
        assert_eq!(code, EXIT_USAGE);
        assert!(message.contains("the element is not UTF-8"), "{message}");
        let (code, message) = parse(vec![OsStr::new("get"), bytes]);
        assert_eq!(code, EXIT_USAGE);
        assert!(message.contains("the key is not UTF-8"), "{message}");
    }

    #[test]
    fn values_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("value");
        std::fs::write(&file, [0xff, 0x00, b'x']).unwrap();
        let file_arg = file.to_str().unwrap();
        let Ok(Request::Put { value, .. }) = request(&["put", "k", "--file", file_arg]) else { panic!() };
        assert_eq!(value, Payload::Base64("/wB4".to_owned()));
        let Ok(Request::SetWrite { element, action: SetAction::Add, .. }) =
            request(&["sadd", "s", "--file", file_arg])
        else {
            panic!()
        };
        assert_eq!(element, Payload::Base64("/wB4".to_owned()));
        std::fs::write(&file, vec![b'v'; VALUE_BYTES_MAX]).unwrap();
        assert!(request(&["put", "k", "--file", file_arg]).is_ok());
        std::fs::write(&file, vec![b'v'; VALUE_BYTES_MAX + 1]).unwrap();
        let (code, message) = request(&["put", "k", "--file", file_arg]).unwrap_err();
        assert_eq!(code, EXIT_USAGE);
        assert!(message.contains("over the limit of 65536 bytes"), "{message}");
        let (code, message) = request(&["put", "k", "--file", "/nonexistent/value"]).unwrap_err();
        assert_eq!(code, EXIT_ERROR);
        assert!(message.contains("cannot read /nonexistent/value"), "{message}");
        assert!(Cli::try_parse_from(["cairnctl", "put", "k", "v", "--file", file_arg]).is_err());
        assert!(Cli::try_parse_from(["cairnctl", "put", "k", "--base64", "--file", file_arg]).is_err());
        assert!(Cli::try_parse_from(["cairnctl", "put", "k"]).is_err());
    }

    #[test]
    fn plurals() {
        assert_eq!(plural(0, "member", "members"), "0 members");
        assert_eq!(plural(1, "member", "members"), "1 member");
        assert_eq!(plural(2, "member", "members"), "2 members");
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
        let result = match Request::new(cli.command, cli.json) {
            Ok(request) => online(&server.client, &mut out, request).await,
            Err(error) => Err(error),
        };
        (result, capture.text())
    }

    /// Runs `args`, which must exit with `code`; returns what it printed.
    async fn exits(server: &crate::api::tests::Server, code: u8, args: &[&str]) -> String {
        let (result, text) = ctl(server, args, Capture::default()).await;
        match result {
            Ok(got) => assert_eq!(got, code, "{args:?}: {text}"),
            Err(error) => panic!("{args:?}: {error:#}"),
        }
        text
    }

    async fn ok(server: &crate::api::tests::Server, args: &[&str]) -> String {
        exits(server, EXIT_OK, args).await
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

        let members = ok(&server, &["member", "list"]).await;
        assert!(
            members.contains("alpha")
                && members.contains("beta")
                && members.contains("a change needs 2 votes"),
            "{members}"
        );
        let pending = ok(&server, &["member", "pending"]).await;
        assert!(
            pending.contains("add") && pending.contains("gamma") && pending.contains("1 of 2"),
            "{pending}"
        );
        let json_members = ok(&server, &["--json", "member", "pending"]).await;
        assert!(json_members.contains("\"votes\": 1"), "{json_members}");

        let written = ok(&server, &["put", "dir/k", "some text"]).await;
        assert!(written.starts_with("written: event "), "{written}");
        let read = ok(&server, &["get", "dir/k"]).await;
        let (value, context) = read.split_once('\n').expect("two lines");
        assert_eq!(value, "\"some text\"");
        let context = context.strip_prefix("context: ").and_then(|c| c.strip_suffix('\n')).expect(&read);
        // A write with the context it read; a stale guard is refused with exit code 7.
        ok(&server, &["put", "dir/k", "second", "--context", context]).await;
        let (code, message) = fails(&server, &["put", "dir/k", "third", "--if-context", context]).await;
        assert_eq!(code, EXIT_CONTEXT_CHANGED, "{message}");
        assert!(message.contains("changed since the read"), "{message}");
        let read = ok(&server, &["get", "dir/k"]).await;
        assert!(read.starts_with("\"second\"\n"), "{read}");
        let fresh = read.lines().last().and_then(|line| line.strip_prefix("context: ")).expect(&read);
        ok(&server, &["put", "dir/k", "third", "--if-context", fresh]).await;
        assert!(ok(&server, &["get", "dir/k"]).await.starts_with("\"third\"\n"));
        ok(&server, &["put", "--base64", "bin", "/w=="]).await;
        assert!(ok(&server, &["get", "bin"]).await.starts_with("base64:/w==\ncontext: "));
        let multi = ok(&server, &["get", "multi"]).await;
        assert!(multi.starts_with("\"text\"\n\n2 concurrent values"), "{multi}");
        assert!(multi.contains("base64://4="), "{multi}");
        ok(&server, &["del", "dir/k"]).await;

        ok(&server, &["incr", "c", "-5"]).await;
        ok(&server, &["incr", "c", "--delta", "2"]).await;
        assert_eq!(ok(&server, &["counter", "c"]).await, "-3\n");
        let json: Value = serde_json::from_str(&ok(&server, &["--json", "counter", "c"]).await).unwrap();
        assert_eq!(json, serde_json::json!({"key": "c", "value": -3}));

        ok(&server, &["sadd", "s", "a"]).await;
        ok(&server, &["sadd", "s", "b"]).await;
        ok(&server, &["srem", "s", "a"]).await;
        assert_eq!(ok(&server, &["members", "s"]).await, "\"b\"\n");
        let keys = ok(&server, &["keys", "--kind", "counter"]).await;
        assert_eq!(keys.lines().map(str::trim).collect::<Vec<_>>(), ["KIND     KEY", "counter  \"c\""]);

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
        let lines: Vec<&str> = events.lines().collect();
        assert_eq!(lines.len(), 4, "{events}");
        assert_eq!(lines[3], "more events follow: for the next page add --after 2", "{events}");
        let id = server.client.get_json("/v1/events?author=alpha&limit=1").await.unwrap()["events"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let event = ok(&server, &["event", &id]).await;
        assert!(event.contains(&id) && event.contains("alpha") && event.contains("\"some text\""), "{event}");
        let (code, message) = fails(&server, &["event", &"ab".repeat(32)]).await;
        assert_eq!(code, EXIT_NOT_FOUND, "{message}");
        let (code, message) = fails(&server, &["event", "nothex"]).await;
        assert_eq!(code, EXIT_USAGE);
        assert!(message.contains("64 hex digits"), "{message}");

        let evidence = ok(&server, &["evidence"]).await;
        assert!(evidence.contains("beta"), "{evidence}");
        let json: Value = serde_json::from_str(&ok(&server, &["--json", "evidence"]).await).unwrap();
        let encoded = hex::decode(json["evidence"][0]["encoded_hex"].as_str().unwrap()).unwrap();
        assert!(cairn_protocol::codec::decode_evidence(&encoded).is_ok());

        assert!(ok(&server, &["metrics"]).await.ends_with("# EOF\n"));
        let (code, message) = fails(&server, &["--json", "metrics"]).await;
        assert_eq!(code, EXIT_USAGE);
        assert!(message.contains("OpenMetrics text"), "{message}");

        let (code, message) = fails(&server, &["put", "refuse", "x"]).await;
        assert_eq!(code, EXIT_ERROR);
        assert!(message.contains(&crate::api::tests::refused().to_string()), "{message}");
        let (code, message) = fails(&server, &["get", ""]).await;
        assert_eq!(code, EXIT_USAGE);
        assert!(message.contains("the key is empty"), "{message}");
    }

    #[tokio::test]
    async fn empty_state_exits_3_and_still_prints() {
        let server = crate::api::tests::start().await;
        assert_eq!(exits(&server, EXIT_NOT_FOUND, &["get", "absent"]).await, "(no value)\n");
        assert_eq!(exits(&server, EXIT_NOT_FOUND, &["members", "absent"]).await, "(no members)\n");
        assert_eq!(exits(&server, EXIT_NOT_FOUND, &["counter", "absent"]).await, "0\n");
        let json: Value =
            serde_json::from_str(&exits(&server, EXIT_NOT_FOUND, &["--json", "get", "absent"]).await)
                .unwrap();
        assert_eq!(json["value_base64"], Value::Null);
        let json: Value =
            serde_json::from_str(&exits(&server, EXIT_NOT_FOUND, &["--json", "members", "absent"]).await)
                .unwrap();
        assert_eq!(json, serde_json::json!({"key": "absent", "members": []}));
        let json: Value =
            serde_json::from_str(&exits(&server, EXIT_NOT_FOUND, &["--json", "counter", "absent"]).await)
                .unwrap();
        assert_eq!(json, serde_json::json!({"key": "absent", "value": 0}));

        // Deleted, emptied and cancelled out are the same empty state.
        ok(&server, &["put", "r", "v"]).await;
        assert!(ok(&server, &["get", "r"]).await.starts_with("\"v\"\ncontext: "));
        ok(&server, &["del", "r"]).await;
        exits(&server, EXIT_NOT_FOUND, &["get", "r"]).await;
        ok(&server, &["sadd", "s", "e"]).await;
        ok(&server, &["members", "s"]).await;
        ok(&server, &["srem", "s", "e"]).await;
        exits(&server, EXIT_NOT_FOUND, &["members", "s"]).await;
        ok(&server, &["incr", "c", "3"]).await;
        ok(&server, &["counter", "c"]).await;
        ok(&server, &["incr", "c", "-3"]).await;
        exits(&server, EXIT_NOT_FOUND, &["counter", "c"]).await;
    }

    #[tokio::test]
    async fn counters_beyond_2_53_print_exactly() {
        let server = crate::api::tests::start().await;
        for _ in 0..2 {
            ok(&server, &["incr", "big", &i64::MAX.to_string()]).await;
        }
        assert_eq!(ok(&server, &["counter", "big"]).await, "18446744073709551614\n");
        let json: Value = serde_json::from_str(&ok(&server, &["--json", "counter", "big"]).await).unwrap();
        assert_eq!(json, serde_json::json!({"key": "big", "value": "18446744073709551614"}));
        ok(&server, &["incr", "edge", "--", "-9007199254740991"]).await;
        let json: Value = serde_json::from_str(&ok(&server, &["--json", "counter", "edge"]).await).unwrap();
        assert_eq!(json["value"], serde_json::json!(-9_007_199_254_740_991_i64));
        ok(&server, &["incr", "edge", "--", "-1"]).await;
        let json: Value = serde_json::from_str(&ok(&server, &["--json", "counter", "edge"]).await).unwrap();
        assert_eq!(json["value"], "-9007199254740992");
        assert_eq!(ok(&server, &["counter", "edge"]).await, "-9007199254740992\n");
    }

    #[tokio::test]
    async fn keys_come_in_pages_that_say_how_to_go_on() {
        let server = crate::api::tests::start().await;
        for key in ["k1", "k2", "k3"] {
            ok(&server, &["put", key, "v"]).await;
            ok(&server, &["incr", key, "1"]).await;
        }
        ok(&server, &["sadd", "s1", "e"]).await;
        let all: Value = serde_json::from_str(&ok(&server, &["--json", "keys"]).await).unwrap();
        assert_eq!(all["next"], Value::Null);
        let page: json::KeysPage = typed(all.clone());
        let expected: Vec<String> = page
            .keys
            .iter()
            .map(|k| format!("{} {}", k.kind, bytes_text(k.key.as_deref(), &k.key_base64)))
            .collect();
        assert_eq!(expected.len(), 9, "{all}");

        // Follow the human pages as a person would, through the last line of each.
        let mut seen = Vec::new();
        let mut args = vec!["keys".to_owned(), "--limit".to_owned(), "2".to_owned()];
        for page in 0.. {
            assert!(page < 10, "the pages do not end");
            let args_str: Vec<&str> = args.iter().map(String::as_str).collect();
            let text = ok(&server, &args_str).await;
            let mut lines: Vec<&str> = text.lines().collect();
            let next =
                lines.last().and_then(|l| l.strip_prefix("more keys follow: for the next page add --after "));
            let next = next.map(str::to_owned);
            if next.is_some() {
                lines.pop();
            }
            assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["KIND", "KEY"], "{text}");
            seen.extend(lines[1..].iter().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")));
            match next {
                Some(cursor) => {
                    args = vec!["keys".into(), "--limit".into(), "2".into(), "--after".into(), cursor]
                }
                None => break,
            }
        }
        assert_eq!(seen, expected);

        // The same over one kind, through the JSON cursor.
        let page: Value = serde_json::from_str(
            &ok(&server, &["--json", "keys", "--kind", "counter", "--limit", "2"]).await,
        )
        .unwrap();
        assert_eq!(page["keys"].as_array().unwrap().len(), 2);
        let cursor = page["next"].as_str().unwrap();
        let rest: Value = serde_json::from_str(
            &ok(&server, &["--json", "keys", "--kind", "counter", "--after", cursor]).await,
        )
        .unwrap();
        assert_eq!(rest["keys"], serde_json::json!([{"kind": "counter", "key": "k3", "key_base64": "azM="}]));
        assert_eq!(rest["next"], Value::Null);
    }

    #[tokio::test]
    async fn status_names_its_digests() {
        let server = crate::api::tests::start().await;
        let status = ok(&server, &["status"]).await;
        let row = |name: &str| {
            status
                .lines()
                .find(|l| l.trim_start().starts_with(name))
                .unwrap_or_else(|| panic!("{name}: {status}"))
                .to_owned()
        };
        assert!(row("document digest").ends_with(&hex::encode([4; 32])), "{status}");
        assert!(row("sync digest").ends_with(&hex::encode([5; 32])), "{status}");
        assert!(row("causal buffer").contains("0 events, 0 of 1048576 bytes"), "{status}");
        assert!(status.contains("Compare the document digest between nodes"), "{status}");
        // Machine output is the daemon's, unchanged.
        let json: Value = serde_json::from_str(&ok(&server, &["--json", "status"]).await).unwrap();
        assert_eq!(json["digest"], hex::encode([4; 32]));
        assert_eq!(json["sync_digest"], hex::encode([5; 32]));
    }

    #[tokio::test]
    async fn event_raw_is_what_inspect_reads() {
        let server = crate::api::tests::start().await;
        let ack: Value =
            serde_json::from_str(&ok(&server, &["--json", "put", "k", "esc\u{1b}[31m"]).await).unwrap();
        let id = ack["id"].as_str().unwrap();
        let raw = ok(&server, &["event", id, "--raw"]).await;
        assert_eq!(raw.lines().count(), 1, "{raw}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("event.hex");
        std::fs::write(&file, &raw).unwrap();
        let capture = Capture::default();
        let mut out = Output { tty: false, json: false, writer: Box::new(capture.clone()) };
        let code = inspect(&mut out, Inspect::Event { file, genesis: None }).unwrap();
        let report = capture.text();
        // The event has a dep, and no genesis was given: it is not known to be valid.
        assert_eq!(code, EXIT_INSPECT_UNDECIDED, "{report}");
        assert!(report.contains(id), "{report}");
        assert!(report.contains("verdict: UNDECIDED: no rule fails, but membership (needs_genesis), seq (needs_causal_past), lamport (needs_causal_past)"), "{report}");
        assert!(report.contains("\"esc\\u{1b}[31m\""), "{report}");
        assert_printable("inspect", &report);
    }

    #[tokio::test]
    async fn watch_prints_lines_and_stops_on_a_closed_pipe() {
        let server = crate::api::tests::start().await;
        // Stdout accepts one line, then the reader goes away.
        let capture = Capture { lines_max: Some(1), ..Capture::default() };
        let watching = ctl(&server, &["watch"], capture);
        let writing = async {
            server.wait_for_watchers(1).await;
            server
                .client
                .send_json(Method::PUT, "/v1/registers/w", &serde_json::json!({"value": "one"}))
                .await
                .unwrap();
            server
                .client
                .send_json(Method::PUT, "/v1/registers/w", &serde_json::json!({"value": "two"}))
                .await
                .unwrap();
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
                    .send_json(Method::POST, "/v1/counters/n/incr", &serde_json::json!({"delta": 4}))
                    .await
                    .unwrap();
            }
        };
        let ((result, text), ()) = tokio::join!(watching, writing);
        assert!(is_broken_pipe(&result.unwrap_err()));
        let change: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(
            change,
            serde_json::json!({"kind": "counter", "key": "n", "key_base64": "bg==", "position": 1, "value": 4})
        );
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(&anyhow::Error::new(NotFound("x".into()))), EXIT_NOT_FOUND);
        assert_eq!(exit_code(&anyhow::Error::new(Usage("x".into()))), EXIT_USAGE);
        assert_eq!(exit_code(&anyhow::anyhow!("x")), EXIT_ERROR);
        let pipe = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("writing");
        assert!(is_broken_pipe(&pipe));
        assert!(!is_broken_pipe(&anyhow::anyhow!("x")));
        // The table of the help text lists every code.
        let help = after_help();
        for code in [
            EXIT_OK,
            EXIT_ERROR,
            EXIT_USAGE,
            EXIT_NOT_FOUND,
            EXIT_INSPECT_FAILED,
            EXIT_INSPECT_UNDECIDED,
            EXIT_NOT_READY,
        ] {
            assert!(help.contains(&format!("\n  {code}  ")), "{code}: {help}");
        }
    }
}
