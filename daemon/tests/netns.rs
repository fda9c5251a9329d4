//! Three `cairnd` hosts in network namespaces made by this test, on a bridge in a fourth: the
//! cluster converges, a cut link partitions one host, both sides write, and after the link is
//! restored every node holds every write with equal digests.
//!
//! Namespaces need privileges (root or CAP_SYS_ADMIN and CAP_NET_ADMIN) and the `ip` binary.
//! Without them the test prints `SKIPPED: ...` to stdout and stderr and returns: the harness
//! has no way to report a skip, so the name says it (`..._or_reports_skipped`).

mod common;

use std::process::Command;

use common::{Cluster, TIMING};

/// The namespaces of one test run; deleted on drop, which also removes their links.
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn add(&mut self, name: String) -> Result<(), String> {
        ip(&["netns", "add", &name])?;
        self.names.push(name);
        Ok(())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.names.iter().rev() {
            if let Err(error) = ip(&["netns", "del", name]) {
                eprintln!("cannot delete the network namespace {name}: {error}");
            }
        }
    }
}

/// Runs `ip ARGS`; the error carries the command and what it printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip").args(args).output().map_err(|e| format!("cannot run `ip`: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Says loudly that the test did not run. Written to the streams themselves rather than with
/// `println!`, which the test harness captures and shows only for a failure.
fn skip(error: &str) {
    use std::io::Write as _;
    let message = format!("SKIPPED: network namespaces are not permitted here: {error}\n");
    let _ = std::io::stdout().write_all(message.as_bytes());
    let _ = std::io::stderr().write_all(message.as_bytes());
}

/// The namespace names: `[host 0, host 1, host 2, bridge]`.
fn namespace_names() -> [String; 4] {
    let pid = std::process::id();
    ["a", "b", "c", "br"].map(|suffix| format!("cairn-{pid}-{suffix}"))
}

/// Host `i`'s address: 10.123.(pid % 250).(i + 1).
fn host_address(i: usize) -> String {
    format!("10.123.{}.{}", std::process::id() % 250, i + 1)
}

/// Builds the network: every host namespace has `eth0`, a veth whose other end (`v<i>`) is on
/// the bridge `br0` in the bridge namespace. Nothing is created outside these namespaces.
fn build_network(namespaces: &mut Namespaces, names: &[String; 4]) -> Result<(), String> {
    for name in names {
        namespaces.add(name.clone())?;
    }
    let bridge = names[3].as_str();
    ip(&["-n", bridge, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", bridge, "link", "set", "br0", "up"])?;
    for (i, host) in names[..3].iter().enumerate() {
        let port = format!("v{i}");
        ip(&["-n", host, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", bridge])?;
        ip(&["-n", bridge, "link", "set", &port, "master", "br0"])?;
        ip(&["-n", bridge, "link", "set", &port, "up"])?;
        ip(&["-n", host, "addr", "add", &format!("{}/24", host_address(i)), "dev", "eth0"])?;
        ip(&["-n", host, "link", "set", "eth0", "up"])?;
        ip(&["-n", host, "link", "set", "lo", "up"])?;
    }
    Ok(())
}

#[test]
fn netns_partition_heals_or_reports_skipped() {
    if let Err(error) = ip(&["-V"]) {
        skip(&format!("the `ip` binary is missing: {error}"));
        return;
    }
    let names = namespace_names();
    let mut namespaces = Namespaces { names: Vec::new() };
    if let Err(error) = build_network(&mut namespaces, &names) {
        skip(&error);
        return;
    }

    // A short idle timeout, so that the cut is noticed within seconds. The cluster is declared
    // after the namespaces, so it is dropped (its processes killed) before they are deleted.
    let timing = TIMING.replace("idle_timeout = \"6s\"", "idle_timeout = \"2s\"");
    assert_ne!(timing, TIMING);
    let mut c = Cluster::write(3, &timing);
    // Move every node from its loopback address to its host's address on the bridge.
    let port = 7710;
    let loopback: Vec<String> = c.nodes.iter().map(|n| format!("\"{}\"", n.address)).collect();
    for (i, namespace) in names[..3].iter().enumerate() {
        c.edit_config(i, |mut text| {
            for (j, old) in loopback.iter().enumerate() {
                text = text.replace(old, &format!("\"{}:{port}\"", host_address(j)));
            }
            text
        });
        c.set_prefix(i, vec!["ip".into(), "netns".into(), "exec".into(), namespace.clone()]);
    }
    c.spawn_all();
    c.wait_all_connected();
    c.put(0, "before", "cut");
    c.wait_for("every node reads the first write", |c| {
        (0..3).all(|i| c.register_value(i, "before").as_deref() == Some("cut"))
    });
    c.wait_converged();

    // Cut host 2's link and wait until both sides notice.
    ip(&["-n", &names[2], "link", "set", "eth0", "down"]).unwrap();
    c.wait_for("host 2 has lost both peers and the others have lost it", |c| {
        c.status(2)["n_peers_connected"] == 0 && (0..2).all(|i| c.status(i)["n_peers_connected"] == 1)
    });

    // Both sides write: distinct keys, the same register, the same counter.
    c.put(0, "side-a", "written on host 0");
    c.put(1, "shared", "from the majority");
    c.incr(1, "total", 5);
    c.put(2, "side-b", "written on host 2");
    c.put(2, "shared", "from the minority");
    c.incr(2, "total", 7);
    c.wait_for("hosts 0 and 1 converge", |c| c.converged(&[0, 1]));
    assert_eq!(c.register_value(0, "side-b"), None, "host 2's write crossed the cut");
    assert_eq!(c.register_value(2, "side-a"), None, "host 0's write crossed the cut");

    // Restore the link: everything reaches everyone.
    ip(&["-n", &names[2], "link", "set", "eth0", "up"]).unwrap();
    c.wait_all_connected();
    c.wait_converged();
    for i in 0..3 {
        assert_eq!(c.register_value(i, "before").as_deref(), Some("cut"));
        assert_eq!(c.register_value(i, "side-a").as_deref(), Some("written on host 0"));
        assert_eq!(c.register_value(i, "side-b").as_deref(), Some("written on host 2"));
        let shared = c.register(i, "shared");
        assert_eq!(shared["siblings"].as_array().unwrap().len(), 2, "host {i}: {shared}");
        assert_eq!(c.counter(i, "total"), 12, "host {i}");
        assert!(c.evidence(i).is_empty(), "host {i} holds evidence");
    }
    let visible: Vec<_> = (0..3).map(|i| c.register_value(i, "shared")).collect();
    assert!(visible.iter().all(|v| *v == visible[0]), "{visible:?}");
}
