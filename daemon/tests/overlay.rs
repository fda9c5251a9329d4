//! The overlay on real `cairnd` processes: nodes that each know one seed learn every member's
//! address from the signed address records, dial only their bounded outbound choice, refuse
//! inbound connections past their cap (close code 11, which the dialer counts), and rotate
//! their choice while the cluster keeps converging. Every wait is a poll with a deadline.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Cluster, TIMING};
use serde_json::Value;

/// `/v1/peers` of node `i`, by peer name.
fn peers(c: &Cluster, i: usize) -> BTreeMap<String, Value> {
    let answer = c.get(i, "/v1/peers");
    answer["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|peer| (peer["name"].as_str().expect("a name").to_owned(), peer.clone()))
        .collect()
}

/// The peers node `i` reports connected.
fn n_connected(c: &Cluster, i: usize) -> usize {
    peers(c, i).values().filter(|p| p["state"] == "connected").count()
}

/// Node `i`'s outbound choice, by name.
fn outbound(c: &Cluster, i: usize) -> BTreeSet<String> {
    peers(c, i).into_iter().filter(|(_, p)| p["outbound"] == true).map(|(name, _)| name).collect()
}

/// A counter of node `i`'s metrics (0 if absent).
fn metric(c: &Cluster, i: usize, name: &str) -> u64 {
    let text = c.block_on(c.client(i).metrics()).expect("metrics");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

/// Writes one register on every node and waits until every node reads all of them.
fn write_on_every_node_and_wait(c: &Cluster, prefix: &str) {
    for i in 0..c.len() {
        c.put(i, &format!("{prefix}-{i}"), &c.nodes[i].name);
    }
    c.wait_for(&format!("every node reads the {} writes {prefix}-*", c.len()), |c| {
        (0..c.len()).all(|i| {
            (0..c.len())
                .all(|j| c.register_value(i, &format!("{prefix}-{j}")).as_deref() == Some(&c.nodes[j].name))
        })
    });
    c.wait_converged();
}

/// Twelve nodes, each configured with one seed (the next node), outbound 3 and inbound cap 6:
/// every node learns all eleven addresses from the records, holds at most 3 + 6 connections,
/// keeps every outbound choice connected, and a write on any node reaches all.
#[test]
fn twelve_nodes_with_one_seed_each_learn_every_address_and_converge() {
    const N: usize = 12;
    const OUTBOUND: usize = 3;
    const INBOUND_MAX: usize = 6;
    let extra = format!("{TIMING}[overlay]\noutbound = {OUTBOUND}\ninbound_max = {INBOUND_MAX}\n");
    let mut c = Cluster::write_seeded(N, &extra, |i| vec![(i + 1) % N]);
    for i in 0..N {
        let config = std::fs::read_to_string(&c.nodes[i].config).expect("config");
        assert_eq!(config.matches("[[peers]]").count(), 1, "node {i} has one seed:\n{config}");
    }
    c.spawn_all();
    for i in 0..N {
        c.wait_ready(i);
    }
    let addresses: BTreeMap<String, String> =
        c.nodes.iter().map(|node| (node.name.clone(), node.address.to_string())).collect();
    c.wait_for("every node knows every other node's address", |c| {
        (0..N).all(|i| {
            let peers = peers(c, i);
            peers.len() == N - 1
                && peers.iter().all(|(name, p)| p["address"].as_str() == Some(&addresses[name]))
        })
    });
    let mut most = 0;
    c.wait_for("every node's outbound choices are connected", |c| {
        (0..N).all(|i| {
            let peers = peers(c, i);
            let connected = peers.values().filter(|p| p["state"] == "connected").count();
            most = most.max(connected);
            assert!(
                connected <= OUTBOUND + INBOUND_MAX,
                "node {i} holds {connected} connections, over {OUTBOUND} + {INBOUND_MAX}"
            );
            let chosen: Vec<&Value> = peers.values().filter(|p| p["outbound"] == true).collect();
            chosen.len() == OUTBOUND && chosen.iter().all(|p| p["state"] == "connected")
        })
    });
    write_on_every_node_and_wait(&c, "seeded");
    for i in 0..N {
        let connected = n_connected(&c, i);
        assert!(connected <= OUTBOUND + INBOUND_MAX, "node {i} holds {connected} connections");
        assert!(connected >= OUTBOUND, "node {i} holds {connected} connections, fewer than its choice");
        // Each connected peer is either eager or lazy; `eager` is reported for connected peers only.
        for (name, p) in peers(&c, i) {
            if p["state"] != "connected" {
                assert_eq!(p["eager"], false, "node {i}: {name} is not connected yet eager");
            }
        }
    }
    eprintln!("most connections held by one node: {most} (cap {})", OUTBOUND + INBOUND_MAX);
}

/// A node whose inbound cap is 1 and which dials one peer itself accepts at most one more
/// connection: the other members' dials get close code 11 (`Busy`), which they count as failed
/// dials, and the cluster still converges through them.
#[test]
fn inbound_connections_past_the_cap_are_refused_as_busy() {
    const N: usize = 4;
    let mut c = Cluster::write(N, TIMING);
    c.edit_config(0, |text| {
        // The `[overlay]` table goes before the first `[[peers]]` table.
        text.replacen("\n[[peers]]", "\n[overlay]\noutbound = 1\ninbound_max = 1\n\n[[peers]]", 1)
    });
    c.spawn_all();
    for i in 0..N {
        c.wait_ready(i);
    }
    // The other three choose every member (a full mesh for them), and dial node 0.
    c.wait_for("node 0 refused a dial as busy, and a dialer saw code 11", |c| {
        metric(c, 0, "cairn_inbound_busy_total") >= 1
            && (1..N).any(|i| metric(c, i, "cairn_dials_busy_total") >= 1)
    });
    c.wait_for("node 0 holds its chosen peer and one inbound connection", |c| n_connected(c, 0) == 2);
    assert_eq!(outbound(&c, 0).len(), 1, "node 0 dials one peer");
    // One of the three others is refused by node 0 and reaches the cluster through the rest.
    c.wait_for("nodes 1 to 3 are connected with each other", |c| {
        (1..N).all(|i| {
            (1..N).filter(|j| *j != i).all(|j| peers(c, i)[&c.nodes[j].name]["state"] == "connected")
        })
    });
    write_on_every_node_and_wait(&c, "busy");
    assert!(n_connected(&c, 0) <= 2, "node 0 holds more than 1 + 1 connections");
}

/// With a one-second rotation every node's outbound choice changes (a connection it dialed to a
/// dropped peer closes, code 10, unless the peer chose it too), and writes still reach every
/// node.
#[test]
fn rotation_changes_the_outbound_choice_and_the_cluster_converges() {
    const N: usize = 8;
    let extra = format!("{TIMING}[overlay]\noutbound = 2\ninbound_max = 5\nrotate_secs = 1\n");
    let mut c = Cluster::write(N, &extra);
    c.spawn_all();
    for i in 0..N {
        c.wait_ready(i);
    }
    c.wait_for("every node chose two peers", |c| (0..N).all(|i| outbound(c, i).len() == 2));
    let first: Vec<BTreeSet<String>> = (0..N).map(|i| outbound(&c, i)).collect();
    write_on_every_node_and_wait(&c, "before");
    c.wait_for("every node's outbound choice changed", |c| (0..N).all(|i| outbound(c, i) != first[i]));
    write_on_every_node_and_wait(&c, "after");
    for i in 0..N {
        c.wait_for(&format!("node {i}'s outbound peers are connected"), |c| {
            peers(c, i).values().filter(|p| p["outbound"] == true).all(|p| p["state"] == "connected")
        });
    }
}
