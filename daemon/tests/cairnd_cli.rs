//! `cairnd` as an operator meets it, with real processes: the demo stops its nodes on SIGTERM
//! and keeps a dead node's log, `keygen` makes the key's directory private, and the help and
//! version texts say what they should.
//!
//! Every wait polls a condition with a deadline.

mod common;

use std::io::{BufRead as _, BufReader, Read as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use cairn_daemon::demo::LOCAL_NODES_MAX;
use common::{DEADLINE, cairnd, signal_pid, wait_exit, wait_until};
use nix::sys::signal::Signal;

/// A demo started with its output piped; its stdout lines arrive on `lines`.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    dir: PathBuf,
}

impl Demo {
    /// Starts `cairnd demo --nodes n` and waits until it says how to try it (every node up).
    fn start(n: u8) -> Self {
        let mut child = Command::new(cairnd())
            .args(["demo", "--nodes", &n.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cairnd demo");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + DEADLINE;
        let mut dir = None;
        loop {
            let line = lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the demo did not say its nodes are up before the deadline");
            if let Some((_, path)) = line.split_once(", data in ") {
                dir = Some(PathBuf::from(path.trim()));
            }
            if line.starts_with("Try:") {
                break;
            }
        }
        Self { child, lines, dir: dir.expect("the demo names its directory") }
    }

    /// The `cairnd run` processes whose config lives in the demo's directory.
    fn nodes(&self) -> Vec<u32> {
        processes_mentioning(&self.dir)
    }

    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut text);
        }
        text
    }
}

/// Pids of the processes whose command line mentions `dir` (the demo's nodes: `cairnd run
/// --config DIR/...`).
fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) && cmdline.contains(" run ") {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn the_demo_stops_its_nodes_and_removes_its_directory_on_sigterm() {
    let mut demo = Demo::start(2);
    let nodes = demo.nodes();
    assert_eq!(nodes.len(), 2, "two node processes: {nodes:?}");
    signal_pid(demo.child.id(), Signal::SIGTERM);
    let status = wait_exit(&mut demo.child, DEADLINE).expect("the demo exits after SIGTERM");
    assert!(status.success(), "SIGTERM is a normal stop: {status}; stderr: {}", demo.stderr());
    let gone = wait_until(Instant::now() + DEADLINE, || demo.nodes().is_empty());
    assert!(gone, "nodes left running after the demo stopped: {:?}", demo.nodes());
    assert!(!demo.dir.exists(), "the demo left {} behind", demo.dir.display());
    drop(demo.lines);
}

#[test]
fn a_demo_node_that_dies_is_reported_with_its_log_kept() {
    let mut demo = Demo::start(2);
    let nodes = demo.nodes();
    assert_eq!(nodes.len(), 2, "two node processes: {nodes:?}");
    signal_pid(nodes[0], Signal::SIGKILL);
    let status = wait_exit(&mut demo.child, DEADLINE).expect("the demo exits when a node dies");
    assert!(!status.success(), "a dead node is a failure: {status}");
    let stderr = demo.stderr();
    assert!(stderr.contains("exited unexpectedly"), "{stderr}");
    assert!(stderr.contains("the last lines of"), "the log's tail is printed: {stderr}");
    let log = stderr
        .split("its whole log is ")
        .nth(1)
        .and_then(|rest| rest.split(" (the demo directory was kept)").next())
        .unwrap_or_else(|| panic!("no log path in: {stderr}"));
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| panic!("the log {log} is gone: {e}"));
    assert!(text.contains("transport listening"), "the node's own log: {text}");
    let gone = wait_until(Instant::now() + DEADLINE, || demo.nodes().is_empty());
    assert!(gone, "nodes left running after the demo stopped: {:?}", demo.nodes());
    std::fs::remove_dir_all(&demo.dir).expect("remove the kept demo directory");
}

#[test]
fn keygen_makes_the_directories_it_creates_private_and_leaves_others_alone() {
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let key = base.path().join("cairn/keys/node.key");
    let run = Command::new(cairnd()).args(["keygen", "--out"]).arg(&key).output().expect("run keygen");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&base.path().join("cairn")), 0o700);
    assert_eq!(mode(&base.path().join("cairn/keys")), 0o700);
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(base.path()), 0o755, "an existing directory keeps its mode");
}

#[test]
fn help_and_version_texts_say_what_they_should() {
    let text = |args: &[&str]| {
        let run = Command::new(cairnd()).args(args).output().expect("run cairnd");
        assert!(run.status.success(), "{args:?}: {}", String::from_utf8_lossy(&run.stderr));
        String::from_utf8(run.stdout).unwrap()
    };
    assert_eq!(text(&["--version"]).trim(), format!("cairnd {}", env!("CARGO_PKG_VERSION")));
    let demo = text(&["demo", "--help"]);
    assert!(demo.contains(&format!("1 to {LOCAL_NODES_MAX}")) && demo.contains("SIGTERM"), "{demo}");
    let run = text(&["run", "--help"]);
    assert!(run.contains("[env: CAIRN_CONFIG="), "{run}");
    // The bound the help names is taken (clap checks the value before it answers `--help`,
    // which spares starting a demo), and just past it is a usage error.
    let max = LOCAL_NODES_MAX.to_string();
    let taken = Command::new(cairnd()).args(["demo", "--nodes", &max, "--help"]).output().unwrap();
    assert!(taken.status.success(), "{max} nodes: {}", String::from_utf8_lossy(&taken.stderr));
    let past = (LOCAL_NODES_MAX + 1).to_string();
    let refused = Command::new(cairnd()).args(["demo", "--nodes", &past]).output().unwrap();
    assert_eq!(refused.status.code(), Some(2), "{past} nodes is a usage error");
}

#[test]
fn a_key_outside_the_genesis_is_told_that_a_new_genesis_is_a_new_cluster() {
    let c = common::Cluster::write(2, common::TIMING);
    let stranger = c.dir().join("stranger.key");
    let made = Command::new(cairnd()).args(["keygen", "--out"]).arg(&stranger).output().unwrap();
    assert!(made.status.success());
    let config = std::fs::read_to_string(&c.nodes[0].config).unwrap();
    let key_line = config.lines().find(|l| l.starts_with("key_file")).unwrap().to_owned();
    std::fs::write(&c.nodes[0].config, config.replace(&key_line, &format!("key_file = {stranger:?}")))
        .unwrap();
    let run =
        Command::new(cairnd()).arg("check-config").arg("--config").arg(&c.nodes[0].config).output().unwrap();
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    for phrase in ["is not a member of the genesis", "new cluster", "refused"] {
        assert!(stderr.contains(phrase), "{phrase:?} not in {stderr}");
    }
}
