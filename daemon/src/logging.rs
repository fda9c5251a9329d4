//! Logs through tracing: to stderr (journald captures it under systemd), filtered by the
//! config's `log_level` unless `RUST_LOG` is set.

use tracing_subscriber::EnvFilter;

/// The level names a `log_level` may use, alone or after `target=`.
pub const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a `log_level` value: a comma-separated list of directives, each a level name
/// ([`LEVELS`]) or `target=level` (tracing's `EnvFilter` syntax, which it must also parse). A
/// bare word that is not a level is refused: tracing would read it as a target name and
/// silence everything else, which is how `log_level = "loud"` used to log nothing at all.
pub fn check_filter(filter: &str) -> Result<(), String> {
    let accepted = || {
        format!(
            "use one of {} (e.g. \"info\"), or directives like \"info,cairn_daemon::transport=debug\"",
            LEVELS.join(", ")
        )
    };
    if filter.trim().is_empty() {
        return Err(format!("is empty; {}", accepted()));
    }
    for directive in filter.split(',').map(str::trim) {
        let level = directive.rsplit_once('=').map_or(directive, |(_, level)| level);
        if !LEVELS.iter().any(|known| known.eq_ignore_ascii_case(level)) {
            return Err(format!("{directive:?} does not name a level; {}", accepted()));
        }
    }
    EnvFilter::try_new(filter)
        .map(drop)
        .map_err(|error| format!("{filter:?} is not a log filter ({error}); {}", accepted()))
}

/// Installs the global subscriber once; later calls do nothing.
pub fn init(level: &str) {
    let filter =
        EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(level)).unwrap_or_else(|_| {
            eprintln!("cairnd: log_level {level:?} is not a valid filter; using \"info\"");
            EnvFilter::new("info")
        });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}
