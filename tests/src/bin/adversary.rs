//! `cairn-adversary`: joins a running Cairn cluster as a Byzantine peer over the real wire and
//! runs one named attack. `list` names the attacks; `run NAME --config FILE` runs one with the
//! key, genesis and peers of a `cairnd` config file (a member's, usually one added to the
//! genesis for this purpose; its key must sort below the targets' keys, since the smaller key
//! of a pair dials: `keygen` makes one). Exit code 0: the attack ran and every reaction the
//! adversary can see from the wire was right; 1: it failed or a target reacted wrongly; 2:
//! usage.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cairn_crypto::{PublicKey, SecretKey};
use cairn_daemon::config::{Config, load_genesis};
use cairn_tests::adversary::scenarios::{self, ORPHANS_DEFAULT, SCENARIOS};
use cairn_tests::adversary::{Adversary, Target};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cairn-adversary",
    version,
    about = "A Byzantine peer for testing Cairn clusters over the real wire"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Names every scenario, one line each.
    List,
    /// Runs one scenario against the peers of a cairnd config.
    Run {
        /// The scenario (see `list`).
        name: String,
        /// A cairnd config: its key file, genesis file and `[[peers]]` are used.
        #[arg(long)]
        config: PathBuf,
        /// Attack only the peers with these names (default: every peer in the config).
        #[arg(long = "target")]
        targets: Vec<String>,
        /// Orphans the orphan flood sends.
        #[arg(long, default_value_t = ORPHANS_DEFAULT)]
        orphans: u64,
    },
    /// Measures honest writes while the orphan, replay and connection floods run, against a
    /// cluster of three local `cairnd` processes it starts itself (build `cairnd` in the same
    /// profile first: `cargo build --release -p cairn-daemon --bin cairnd`).
    Bench {
        /// Orphans the orphan flood sends.
        #[arg(long, default_value_t = ORPHANS_DEFAULT)]
        orphans: u64,
        /// Also write the report (Markdown) to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Writes a new key file whose public key sorts below every key in the genesis file (so
    /// the adversary dials every node), and prints the public key for the genesis.
    Keygen {
        /// Where to write the key (mode 0600; never overwritten).
        key_file: PathBuf,
        /// The genesis whose keys it must sort below.
        #[arg(long)]
        below: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::List => {
            for s in SCENARIOS {
                println!("{:>2}  {:<22} {}", s.number, s.name, s.summary);
            }
            Ok(())
        }
        Command::Keygen { key_file, below } => keygen(&key_file, below.as_deref()),
        Command::Bench { orphans, out } => bench(orphans, out.as_deref()),
        Command::Run { name, config, targets, orphans } => run(&name, &config, &targets, orphans),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cairn-adversary: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench(orphans: u64, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut report = String::new();
    runtime.block_on(cairn_tests::adversary::bench::run(&mut report, orphans))?;
    print!("{report}");
    if let Some(path) = out {
        std::fs::write(path, &report).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn keygen(key_file: &std::path::Path, below: Option<&std::path::Path>) -> anyhow::Result<()> {
    let others: Vec<PublicKey> = match below {
        Some(path) => load_genesis(path)?.members().iter().map(|m| m.key).collect(),
        None => Vec::new(),
    };
    let key = loop {
        let key = SecretKey::generate();
        if others.iter().all(|k| key.public() < *k) {
            break key;
        }
    };
    key.write_file(key_file)?;
    println!("{}", key.public());
    Ok(())
}

fn run(name: &str, config_path: &std::path::Path, only: &[String], orphans: u64) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let genesis = load_genesis(&config.genesis_file)?;
    let key = SecretKey::read_file(&config.key_file)?;
    let peers = config.resolve_peers(&genesis, &key.public())?;
    let targets: Vec<Target> = peers
        .into_iter()
        .filter(|p| only.is_empty() || only.contains(&p.name))
        .map(|p| Target { name: p.name, key: p.key, address: p.address })
        .collect();
    if targets.is_empty() {
        anyhow::bail!(
            "no target: the config lists no peers{}",
            if only.is_empty() { "" } else { " with those names" }
        );
    }
    let member = genesis
        .member_idx(&key.public())
        .map_or("not a member".to_owned(), |i| format!("member {:?}", genesis.members()[i].name));
    println!("cairn-adversary: {name} as {} ({member}) against {}", key.public(), {
        let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        names.join(", ")
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut adversary = Adversary::new(key, genesis, targets);
    runtime
        .block_on(scenarios::run(name, &mut adversary, orphans))
        .with_context(|| format!("scenario {name}"))?;
    let expect = &adversary.expect;
    println!("done; what the honest nodes must now show:");
    for (node, reason, n) in &expect.rejected {
        println!("  {node}: {n} events from this peer rejected as {reason}");
    }
    for (node, n) in &expect.bad_messages {
        println!("  {node}: at least {n} bad messages from this peer");
    }
    if expect.orphans > 0 {
        println!(
            "  every node: none of the {} orphans accepted; the causal buffer within its bound",
            expect.orphans
        );
    }
    if !expect.forbidden.is_empty() {
        println!("  every node: none of the {} invalid events accepted", expect.forbidden.len());
    }
    if expect.equivocated {
        println!("  every node: evidence against this key, and its connections refused");
    }
    println!("  every node: equal digests, honest writes acknowledged throughout");
    Ok(())
}
