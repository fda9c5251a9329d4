//! Logs through tracing: to stderr (journald captures it under systemd), filtered by the
//! config's `log_level` unless `RUST_LOG` is set.

use tracing_subscriber::EnvFilter;

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
