//! The files in `deploy/`: the systemd unit passes `systemd-analyze verify` and keeps its
//! hardening (`systemd-analyze security`), it agrees with the daemon's defaults, and the example
//! cluster's genesis and configs parse, resolve and pass `cairnd check-config`.
//!
//! The systemd tests need `systemd-analyze` (systemd need not be running). Where it is not
//! installed they print `SKIPPED: systemd-analyze not installed` to stderr and return.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cairn_crypto::SecretKey;
use cairn_daemon::config::{self, Config, Limits, OverlaySettings, Timing};

/// The exposure level `systemd-analyze security --offline=true` gave the unit with systemd 252.
/// What is left: the service needs the host's network (PrivateNetwork=, AF_INET/AF_INET6), its
/// peers are arbitrary addresses (IPAddressDeny=), it needs AF_UNIX (its API, sd_notify), it
/// runs in the host's root directory, and ProtectClock= implies a read-only rtc device rule.
const EXPOSURE_MAX: f64 = 1.1;

/// The binary path the shipped unit runs.
const UNIT_EXEC: &str = "/usr/local/bin/cairnd";

const EXAMPLE_HOSTS: [(&str, &str); 3] =
    [("alice", "10.0.0.1:7710"), ("bob", "10.0.0.2:7710"), ("carol", "10.0.0.3:7710")];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn unit_text() -> String {
    read(&deploy_dir().join("cairnd.service"))
}

/// The shipped unit, byte for byte, except that ExecStart runs the cairnd this test was built
/// with (`verify` checks that the binary exists), written as `cairnd.service` in `dir`.
fn unit_with_built_binary(dir: &Path) -> PathBuf {
    let text = unit_text();
    let exec_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("ExecStart=")).collect();
    let prefix = format!("ExecStart={UNIT_EXEC} ");
    assert!(
        exec_lines.len() == 1 && exec_lines[0].starts_with(&prefix),
        "the unit must have one ExecStart= line starting with {prefix:?}: {exec_lines:?}"
    );
    let built = env!("CARGO_BIN_EXE_cairnd");
    assert!(!built.contains(char::is_whitespace), "the built binary's path has white space: {built}");
    let patched = text.replacen(&prefix, &format!("ExecStart={built} "), 1);
    let path = dir.join("cairnd.service");
    std::fs::write(&path, patched).unwrap();
    path
}

/// Runs `systemd-analyze ARGS`; `None` (after saying so on stderr) if it is not installed.
fn systemd_analyze(args: &[&std::ffi::OsStr]) -> Option<Output> {
    match Command::new("systemd-analyze").args(args).env("SYSTEMD_COLORS", "0").output() {
        Ok(output) => Some(output),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED: systemd-analyze not installed");
            None
        }
        Err(e) => panic!("cannot run systemd-analyze: {e}"),
    }
}

fn printed(output: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_with_built_binary(dir.path());
    let Some(output) = systemd_analyze(&["verify".as_ref(), unit.as_os_str()]) else { return };
    // verify prints its warnings and still exits 0: any output at all is a failure.
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "systemd-analyze verify {}:\n{}",
        unit.display(),
        printed(&output)
    );
}

#[test]
fn unit_security_exposure_stays_at_most_the_pinned_level() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_with_built_binary(dir.path());
    let Some(output) = systemd_analyze(&["security".as_ref(), "--offline=true".as_ref(), unit.as_os_str()])
    else {
        return;
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let level = text
        .lines()
        .find_map(|line| line.split_once("Overall exposure level for cairnd.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|number| number.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{}", printed(&output)));
    assert!(
        level <= EXPOSURE_MAX,
        "the unit's exposure rose to {level} (pinned at {EXPOSURE_MAX}); lines marked ✗:\n{}",
        text.lines().filter(|l| l.contains('✗')).collect::<Vec<_>>().join("\n")
    );
}

/// The `[Service]` settings of the unit: each key with its values in order.
fn service_settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut section = "";
    let mut settings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]"
            && !line.starts_with('#')
            && let Some((key, value)) = line.split_once('=')
        {
            settings.entry(key.to_owned()).or_default().push(value.to_owned());
        }
    }
    settings
}

fn seconds(value: &str) -> Duration {
    let number = value.strip_suffix('s').unwrap_or_else(|| panic!("{value:?} is not in seconds (`30s`)"));
    Duration::from_secs(number.parse().unwrap_or_else(|_| panic!("{value:?} is not in seconds (`30s`)")))
}

#[test]
fn unit_agrees_with_the_daemon_defaults() {
    let settings = service_settings(&unit_text());
    let one = |key: &str| -> &str {
        match settings.get(key).map(Vec::as_slice) {
            Some([value]) => value,
            other => panic!("the unit must set {key}= once, not {other:?}"),
        }
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert_eq!(one("ExecStart"), format!("{UNIT_EXEC} run --config /etc/cairn/cairnd.toml"));
    assert_eq!(one("KillSignal"), "SIGTERM");

    // The unit's directories are where the daemon's defaults and the examples point.
    let defaults = Config::parse("key_file = \"/var/lib/cairn/node.key\"\ngenesis_file = \"/g\"\n").unwrap();
    assert_eq!(Path::new("/var/lib").join(one("StateDirectory")), defaults.data_dir);
    assert_eq!(one("StateDirectoryMode"), "0700");
    assert_eq!(Path::new("/run").join(one("RuntimeDirectory")), defaults.socket.parent().unwrap());
    assert_eq!(defaults.socket, Path::new(config::DEFAULT_SOCKET));
    assert_eq!(one("RuntimeDirectoryMode"), "0750");
    assert_eq!(one("ConfigurationDirectory"), "cairn");
    assert!(defaults.key_file.starts_with(&defaults.data_dir));

    // SIGTERM drains for up to shutdown_grace; systemd must wait longer than that.
    assert!(seconds(one("TimeoutStopSec")) >= 3 * Timing::default().shutdown_grace);
    // The watchdog is pinged at half its period from the service loop, which wakes at least
    // once per sync interval.
    assert!(seconds(one("WatchdogSec")) >= 10 * Timing::default().sync_interval);
}

fn example(name: &str) -> String {
    read(&deploy_dir().join("examples").join(name))
}

#[test]
fn example_configs_parse_and_resolve_against_the_example_genesis() {
    let genesis = config::parse_genesis(&example("genesis.toml")).expect("examples/genesis.toml");
    let mut names: Vec<&str> = genesis.members().iter().map(|m| m.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["alice", "bob", "carol"]);
    // The example keys are the ones the genesis comment says: alice, bob and carol from the
    // seeds 0x01.., 0x02.. and 0x03...
    for (seed, (name, _)) in (1u8..).zip(EXAMPLE_HOSTS) {
        let member = genesis.members().iter().find(|m| m.name == name).unwrap();
        assert_eq!(member.key, SecretKey::from_seed(&[seed; 32]).public(), "{name}");
    }
    for (name, _) in EXAMPLE_HOSTS {
        let file = format!("{name}.toml");
        let config = Config::parse(&example(&file)).unwrap_or_else(|e| panic!("examples/{file}: {e:#}"));
        assert_eq!(config.key_file, Path::new("/var/lib/cairn/node.key"), "{file}");
        assert_eq!(config.genesis_file, Path::new("/etc/cairn/genesis.toml"), "{file}");
        assert_eq!(config.listen.to_string(), "0.0.0.0:7710", "{file}");
        let own_address = EXAMPLE_HOSTS.iter().find(|(host, _)| *host == name).unwrap().1;
        assert_eq!(
            config.advertise.map(|a| a.to_string()).as_deref(),
            Some(own_address),
            "{file}: advertise"
        );
        assert_eq!(config.data_dir, Path::new("/var/lib/cairn"), "{file}");
        assert_eq!(config.socket, Path::new(config::DEFAULT_SOCKET), "{file}");
        assert!(!config.new_cluster, "{file}: the examples leave new_cluster off");

        let me = genesis.members().iter().find(|m| m.name == name).unwrap().key;
        let peers = config.resolve_peers(&genesis, &me).unwrap_or_else(|e| panic!("examples/{file}: {e:#}"));
        let got: Vec<(String, String)> =
            peers.iter().map(|p| (p.name.clone(), p.address.to_string())).collect();
        let want: Vec<(String, String)> = EXAMPLE_HOSTS
            .iter()
            .filter(|(other, _)| *other != name)
            .map(|(other, address)| ((*other).to_owned(), (*address).to_owned()))
            .collect();
        assert_eq!(got, want, "{file}");
        // Each config belongs to its own host: resolving it as another member must fail.
        let other = genesis.members().iter().find(|m| m.name != name).unwrap();
        assert!(config.resolve_peers(&genesis, &other.key).is_err(), "{file} as {}", other.name);
    }
}

/// The names of the top-level fields in a `{:?}` rendering of a struct.
fn debug_field_names(debug: &str) -> BTreeSet<String> {
    let body = &debug[debug.find('{').expect("a struct") + 1..];
    let mut names = BTreeSet::new();
    let mut depth = 0usize;
    let mut in_string = false;
    let mut field_start = Some(0);
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => in_string = !in_string,
            '\\' if in_string => {
                chars.next();
            }
            _ if in_string => {}
            '{' | '[' | '(' => depth += 1,
            '}' | ']' | ')' if depth == 0 => break,
            '}' | ']' | ')' => depth -= 1,
            ':' if depth == 0 => {
                if let Some(start) = field_start.take() {
                    names.insert(body[start..i].trim().to_owned());
                }
            }
            ',' if depth == 0 => field_start = Some(i + 1),
            _ => {}
        }
    }
    names
}

/// `text` with its commented-out `[limits]` and `[timing]` sections turned on.
fn uncomment_tuning(text: &str) -> String {
    let start = text.find("# [limits]").expect("a commented [limits] section");
    let mut out = text[..start].to_owned();
    for line in text[start..].lines() {
        let line = if line == "#" { "" } else { line.strip_prefix("# ").unwrap_or(line) };
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[test]
fn example_configs_list_every_setting_with_its_default() {
    let limits_fields = debug_field_names(&format!("{:?}", Limits::default()));
    let timing_fields = debug_field_names(&format!("{:?}", Timing::default()));
    assert!(limits_fields.contains("verify_threads") && timing_fields.contains("shutdown_grace"));
    for (name, _) in EXAMPLE_HOSTS {
        let file = format!("{name}.toml");
        let text = uncomment_tuning(&example(&file));
        let config = Config::parse(&text).unwrap_or_else(|e| panic!("{file} uncommented: {e:#}\n{text}"));
        assert_eq!(format!("{:?}", config.limits), format!("{:?}", Limits::default()), "{file}");
        assert_eq!(format!("{:?}", config.timing), format!("{:?}", Timing::default()), "{file}");

        let table: toml::Table = toml::from_str(&text).unwrap();
        let keys = |section: &str| -> BTreeSet<String> {
            table[section]
                .as_table()
                .unwrap_or_else(|| panic!("{file}: [{section}]"))
                .keys()
                .cloned()
                .collect()
        };
        assert_eq!(keys("limits"), limits_fields, "{file}: [limits] must list every setting");
        assert_eq!(keys("timing"), timing_fields, "{file}: [timing] must list every setting");
        assert_eq!(config.overlay, OverlaySettings::default(), "{file}");
        let overlay_fields = debug_field_names(&format!("{:?}", OverlaySettings::default()));
        assert_eq!(keys("overlay"), overlay_fields, "{file}: [overlay] must list every setting");
        let top: BTreeSet<String> = table.keys().cloned().collect();
        assert_eq!(top, debug_field_names(&format!("{config:?}")), "{file}: every top-level setting");
    }
}

#[test]
fn cairnd_check_config_accepts_an_example_config() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("node.key");
    SecretKey::from_seed(&[1; 32]).write_file(&key_file).unwrap();
    let genesis_file = dir.path().join("genesis.toml");
    std::fs::write(&genesis_file, example("genesis.toml")).unwrap();
    let text = example("alice.toml")
        .replace("\"/var/lib/cairn/node.key\"", &format!("{key_file:?}"))
        .replace("\"/etc/cairn/genesis.toml\"", &format!("{genesis_file:?}"));
    let config_file = dir.path().join("cairnd.toml");
    std::fs::write(&config_file, text).unwrap();

    let output = Command::new(env!("CARGO_BIN_EXE_cairnd"))
        .arg("check-config")
        .arg("--config")
        .arg(&config_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", printed(&output));
    let alice = SecretKey::from_seed(&[1; 32]).public().to_string();
    assert!(stdout.starts_with(&format!("ok: node {alice} in a cluster of 3")), "{stdout}");
    assert!(stdout.contains("2 peer(s) to dial"), "{stdout}");
}
