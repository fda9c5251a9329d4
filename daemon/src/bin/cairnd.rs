//! `cairnd`: the Cairn replication daemon. The work is in the `cairn_daemon` library.

use std::path::PathBuf;
use std::process::ExitCode;

use std::os::unix::fs::DirBuilderExt as _;

use anyhow::Context as _;
use cairn_daemon::demo::LOCAL_NODES_MAX;
use clap::{Parser, Subcommand};

// The help of `demo --nodes` names the bound in words (a doc comment cannot name a constant),
// and its parser takes a u8.
const _: () = assert!(LOCAL_NODES_MAX == 64, "the help of `cairnd demo --nodes` says 1 to 64");

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
    /// Install a backup made by `cairnctl backup` as this node's store; cairnd must be stopped.
    /// Every event of the backup is validated first; a store already there is moved aside
    /// (with --replace), never deleted. The restored node learns its latest own seq from its
    /// peers before it signs anything, so it can never sign a seq twice.
    Restore {
        /// The config file.
        #[arg(long, short, default_value = "/etc/cairn/cairnd.toml", env = "CAIRN_CONFIG")]
        config: PathBuf,
        /// The backup file.
        file: PathBuf,
        /// Move the existing store aside (renamed with `.before-restore-<unix time>`).
        #[arg(long)]
        replace: bool,
    },
    /// After the node's disk was rolled back by other means (a VM or file system snapshot, a
    /// store file copied back): marks the store so that at its next start the node learns its
    /// latest own seq from its peers before it signs anything. cairnd must be stopped.
    RelearnOwnSeq {
        /// The config file.
        #[arg(long, short, default_value = "/etc/cairn/cairnd.toml", env = "CAIRN_CONFIG")]
        config: PathBuf,
    },
    /// Check a stopped node's store offline: every page checksum, every event's id, signature,
    /// seq chain and causal closure against the genesis, and the evidence. Exits 1 and lists
    /// each problem by event id if the store is damaged.
    CheckStore {
        /// The config file.
        #[arg(long, short, default_value = "/etc/cairn/cairnd.toml", env = "CAIRN_CONFIG")]
        config: PathBuf,
    },
    /// Rotate the running node's key (PROTOCOL.md §17): the daemon makes a new key, the old key
    /// signs the rotation, and once that is stored the new key replaces the key file (the old
    /// one is gone) and signs from then on; nothing acknowledged is lost. The other members
    /// follow when the rotation reaches them: no vote is needed. Needs a connected peer.
    RotateKey {
        /// The config file.
        #[arg(long, short, default_value = "/etc/cairn/cairnd.toml", env = "CAIRN_CONFIG")]
        config: PathBuf,
    },
    /// Run a local demo cluster of separate cairnd processes until Ctrl-C (or SIGTERM).
    Demo {
        /// How many nodes, 1 to 64.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=LOCAL_NODES_MAX as i64))]
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
            let loaded = cairn_daemon::config::Config::load(&config)?;
            cairn_daemon::logging::init(&loaded.log_level);
            cairn_daemon::daemon::finish_key_rotation(&loaded)?;
            let checked = cairn_daemon::daemon::check(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(cairn_daemon::daemon::run(checked))?;
        }
        Command::RotateKey { config } => {
            let loaded = cairn_daemon::config::Config::load(&config)?;
            let client = cairn_daemon::client::Client::new(&loaded.socket);
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let rotated = runtime
                .block_on(client.rotate_key())
                .with_context(|| {
                    format!("cannot rotate the key of the cairnd at {}", loaded.socket.display())
                })?
                .value;
            println!("{}", rotated.key);
            eprintln!(
                "rotated: the new key {} replaced {} (the rotation is event {}, seq {}); the other members follow \
                 as it reaches them",
                rotated.key,
                loaded.key_file.display(),
                rotated.event.id,
                rotated.event.seq
            );
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
        Command::Restore { config, file, replace } => {
            // A key rotation a stop interrupted is finished (or undone) first.
            cairn_daemon::daemon::finish_key_rotation(&cairn_daemon::config::Config::load(&config)?)?;
            let checked = cairn_daemon::daemon::check(&config)?;
            let store_path = checked.config.store_path();
            let restored = cairn_daemon::backup::restore(
                &file,
                &checked.genesis,
                checked.key.public(),
                &store_path,
                replace,
            )?;
            if let Some(aside) = &restored.moved_aside {
                eprintln!("cairnd: moved the previous store aside to {}", aside.display());
            }
            println!(
                "restored {} events and {} evidence from {} into {}; at its next start the node learns its latest \
                 own seq from its peers before it signs anything (files changed by root may need `chown` to the \
                 service's user, see deploy/GUIDE.md)",
                restored.n_events,
                restored.n_evidence,
                file.display(),
                store_path.display()
            );
        }
        Command::RelearnOwnSeq { config } => {
            // A key rotation a stop interrupted is finished (or undone) first.
            cairn_daemon::daemon::finish_key_rotation(&cairn_daemon::config::Config::load(&config)?)?;
            let checked = cairn_daemon::daemon::check(&config)?;
            let store_path = checked.config.store_path();
            if !store_path.try_exists().unwrap_or(false) {
                anyhow::bail!(
                    "there is no store at {}; a node without a store learns its own seq at start, unless its config \
                     still says `new_cluster = true` (remove it)",
                    store_path.display()
                );
            }
            cairn_daemon::backup::ensure_stopped(&store_path)?;
            let me = checked.key.public();
            let (mut store, _) = cairn_daemon::store::Store::open_indexed(
                &store_path,
                checked.genesis.cluster_id(),
                me.0,
                cairn_daemon::store::OwnHistory::Unknown,
                &cairn_daemon::store::member_keys(&checked.genesis),
            )?;
            store.set_own_history(cairn_daemon::store::OwnHistory::RolledBack)?;
            println!(
                "marked {}: at its next start the node learns its latest own seq from its peers before it signs \
                 anything",
                store_path.display()
            );
        }
        Command::CheckStore { config } => {
            // A key rotation a stop interrupted is finished (or undone) first.
            cairn_daemon::daemon::finish_key_rotation(&cairn_daemon::config::Config::load(&config)?)?;
            let checked = cairn_daemon::daemon::check(&config)?;
            let store_path = checked.config.store_path();
            let report =
                cairn_daemon::fsck::check_store(&store_path, &checked.genesis, checked.key.public())?;
            if let Some(from) = report.upgraded_from {
                eprintln!("cairnd: the store was upgraded in place from format {from}");
            }
            let listed = report.problems.len().min(cairn_daemon::fsck::PROBLEMS_LISTED_MAX);
            for problem in &report.problems[..listed] {
                println!("problem: {problem}");
            }
            if report.problems.len() > listed {
                println!("problem: ... and {} more", report.problems.len() - listed);
            }
            if report.problems.is_empty() {
                println!(
                    "ok: {} holds {} events and {} evidence, all valid; own history: {:?}",
                    store_path.display(),
                    report.n_events,
                    report.n_evidence,
                    report.own_history
                );
            } else {
                println!(
                    "damaged: {} has {} problem(s); move it away and let the node catch up from its peers \
                     (deploy/GUIDE.md, \"When cairnd refuses its store\")",
                    store_path.display(),
                    report.problems.len()
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Demo { nodes } => {
            cairn_daemon::logging::init("warn");
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(cairn_daemon::demo::run(usize::from(nodes)))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
