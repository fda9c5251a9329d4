//! Hosts in network namespaces made by the test itself: one namespace per host with an `eth0`,
//! whose other end (`v<i>`) is a port of the bridge `br0` in a namespace of its own. Nothing is
//! created outside these namespaces, and they are deleted on drop (which removes their links),
//! also when a test fails.
//!
//! Namespaces need privileges (root, or CAP_SYS_ADMIN and CAP_NET_ADMIN) and the `ip` binary.
//! Where they are missing, [`Network::build`] says why, and a test that needs them reports
//! itself with [`super::skip`] (`SKIPPED: ...`): the test harness has no way to report a skip, so the
//! test's name says it (`..._or_reports_skipped`).

use std::process::Command;

use super::Cluster;

/// The UDP port every node listens on, each at its own host's address.
pub(crate) const PORT: u16 = 7710;

/// Runs `ip ARGS`; the error carries the command and what it printed.
pub(crate) fn ip(args: &[&str]) -> Result<(), String> {
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

/// The namespaces of one network; deleted on drop, which also removes their links.
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

/// `n` hosts on one bridge. Declare it before the [`Cluster`] that runs in it, so that the
/// cluster's processes are killed before the namespaces go.
pub(crate) struct Network {
    namespaces: Namespaces,
    n_hosts: usize,
}

impl Network {
    /// Builds `n_hosts` hosts on a bridge, in namespaces named `cairn-<pid>-<tag>-...` (`tag`
    /// tells the tests of one process apart). Fails, saying why, where namespaces are not
    /// permitted.
    pub(crate) fn build(tag: &str, n_hosts: usize) -> Result<Self, String> {
        ip(&["-V"]).map_err(|e| format!("the `ip` binary is missing: {e}"))?;
        let pid = std::process::id();
        let mut network = Self { namespaces: Namespaces { names: Vec::new() }, n_hosts };
        let bridge = format!("cairn-{pid}-{tag}-br");
        network
            .namespaces
            .add(bridge.clone())
            .map_err(|e| format!("network namespaces are not permitted here: {e}"))?;
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
        for i in 0..n_hosts {
            let host = format!("cairn-{pid}-{tag}-{i}");
            network.namespaces.add(host.clone())?;
            let port = format!("v{i}");
            ip(&[
                "-n", &host, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &bridge,
            ])?;
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &bridge, "link", "set", &port, "up"])?;
            ip(&["-n", &host, "addr", "add", &format!("{}/24", host_address(i)), "dev", "eth0"])?;
            ip(&["-n", &host, "link", "set", "eth0", "up"])?;
            ip(&["-n", &host, "link", "set", "lo", "up"])?;
        }
        Ok(network)
    }

    /// The namespace of the bridge.
    fn bridge(&self) -> &str {
        &self.namespaces.names[0]
    }

    /// Host `i`'s namespace.
    pub(crate) fn host(&self, i: usize) -> &str {
        &self.namespaces.names[i + 1]
    }

    /// Moves every node of `cluster` (written, not started) onto its host: its config names the
    /// hosts' addresses instead of loopback, and it starts through `ip netns exec`.
    pub(crate) fn place(&self, cluster: &mut Cluster) {
        assert_eq!(cluster.len(), self.n_hosts, "one node per host");
        let loopback: Vec<String> = cluster.nodes.iter().map(|n| format!("\"{}\"", n.address)).collect();
        for i in 0..self.n_hosts {
            cluster.edit_config(i, |mut text| {
                for (j, old) in loopback.iter().enumerate() {
                    assert!(text.contains(old.as_str()), "node {i}'s config lacks {old}:\n{text}");
                    text = text.replace(old.as_str(), &format!("\"{}:{PORT}\"", host_address(j)));
                }
                text
            });
            cluster.set_prefix(i, vec!["ip".into(), "netns".into(), "exec".into(), self.host(i).to_owned()]);
        }
    }

    /// Cuts host `i`'s only link (`ip link set eth0 down`).
    pub(crate) fn cut(&self, i: usize) {
        ip(&["-n", self.host(i), "link", "set", "eth0", "down"]).unwrap();
    }

    /// Restores host `i`'s link.
    pub(crate) fn restore(&self, i: usize) {
        ip(&["-n", self.host(i), "link", "set", "eth0", "up"]).unwrap();
    }

    /// Partitions the network: the bridge ports of `hosts` move to a second bridge, `br1`, so
    /// that they reach each other and nobody else. [`Network::heal`] moves them back.
    pub(crate) fn partition(&self, hosts: &[usize]) {
        let bridge = self.bridge();
        if ip(&["-n", bridge, "link", "show", "br1"]).is_err() {
            ip(&["-n", bridge, "link", "add", "br1", "type", "bridge"]).unwrap();
            ip(&["-n", bridge, "link", "set", "br1", "up"]).unwrap();
        }
        for i in hosts {
            ip(&["-n", bridge, "link", "set", &format!("v{i}"), "master", "br1"]).unwrap();
        }
    }

    /// Puts every host back on `br0`.
    pub(crate) fn heal(&self) {
        for i in 0..self.n_hosts {
            ip(&["-n", self.bridge(), "link", "set", &format!("v{i}"), "master", "br0"]).unwrap();
        }
    }
}

/// Host `i`'s address: 10.123.(pid % 250).(i + 1). Each network has its own bridge, so the
/// networks of concurrent tests may use the same addresses.
pub(crate) fn host_address(i: usize) -> String {
    format!("10.123.{}.{}", std::process::id() % 250, i + 1)
}

/// `n` hosts in namespaces, each running a `cairnd` with a short idle timeout (so that a cut is
/// noticed within seconds), every node connected and the first write `key = value` everywhere.
/// `None` where namespaces are not permitted, after reporting the skip. Keep the network
/// declared before the cluster, so the processes are killed before the namespaces go.
pub(crate) fn connected_cluster(tag: &str, n: usize, key: &str, value: &str) -> Option<(Network, Cluster)> {
    let network = match Network::build(tag, n) {
        Ok(network) => network,
        Err(error) => {
            super::skip(&error);
            return None;
        }
    };
    let timing = super::TIMING.replace("idle_timeout = \"6s\"", "idle_timeout = \"2s\"");
    assert_ne!(timing, super::TIMING);
    let mut c = Cluster::write(n, &timing);
    network.place(&mut c);
    c.spawn_all();
    c.wait_all_connected();
    c.put(0, key, value);
    c.wait_for("every node reads the first write", |c| {
        (0..n).all(|i| c.register_value(i, key).as_deref() == Some(value))
    });
    c.wait_converged();
    Some((network, c))
}
