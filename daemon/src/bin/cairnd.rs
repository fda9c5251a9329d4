//! `cairnd`: the Cairn replication daemon. The work is in the `cairn_daemon` library.

use std::path::PathBuf;
use std::process::ExitCode;

use std::os::unix::fs::DirBuilderExt as _;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// The Cairn replication daemon.
#[derive(Parser)]
#[command(
    name = "cairnd",
    version,
    about,
    after_help = "Exit codes: 0 ok; 1 error (the message says what to do); 2 usage error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (under systemd: Type=notify).
    Run {
        /// The config file.
        #[arg(long, short, default_value = "/etc/cairn/cairnd.toml", env = "CAIRN_CONFIG")]
        config: PathBuf,
    },
    /// Make a new node key (mode 0600) and print its public key.
    Keygen {
        /// Where to write the key; an existing file is never overwritten.
        #[arg(long, short, default_value = "/var/lib/cairn/node.key")]
        out: PathBuf,
    },
    /// Check the config, the key file and the genesis without starting.
    CheckConfig {
        /// The config file.
        #[arg(long, short, default_value = "/etc/cairn/cairnd.toml", env = "CAIRN_CONFIG")]
        config: PathBuf,
    },
    /// Run a local demo cluster of separate cairnd processes until Ctrl-C (or SIGTERM).
    Demo {
        /// How many nodes, 1 to 16.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=16))]
        nodes: u8,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("cairnd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => {
            let checked = cairn_daemon::daemon::check(&config)?;
            cairn_daemon::logging::init(&checked.config.log_level);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(cairn_daemon::daemon::run(checked))?;
        }
        Command::Keygen { out } => {
            let key = cairn_crypto::SecretKey::generate();
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                // Only the directories made here get 0700: the key's directory should let no one
                // else list it, as deploy/GUIDE.md says; an existing one is left as it is.
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .with_context(|| format!("cannot create the key directory {}", dir.display()))?;
            }
            key.write_file(&out)?;
            println!("{}", key.public());
            eprintln!(
                "cairnd: wrote {} (mode 0600); put the public key above into the genesis",
                out.display()
            );
        }
        Command::CheckConfig { config } => {
            let checked = cairn_daemon::daemon::check(&config)?;
            println!(
                "ok: node {} in a cluster of {} (cluster id {}), {} peer(s) to dial, store {}",
                checked.key.public(),
                checked.genesis.members().len(),
                hex::encode(checked.genesis.cluster_id()),
                checked.peers.len(),
                checked.config.store_path().display()
            );
        }
        Command::Demo { nodes } => {
            cairn_daemon::logging::init("warn");
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(cairn_daemon::demo::run(usize::from(nodes)))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
