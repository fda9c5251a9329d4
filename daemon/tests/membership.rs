//! The operator's membership procedures (`deploy/GUIDE.md`, "Changing the membership") on
//! real `cairnd` processes, driven through `cairnctl` as an operator would: add a fourth host,
//! decommission a host, replace a host whose key was lost, and the refusals on the way (a
//! removal that would cut acknowledged writes, a change without enough approvals). Every wait
//! is for a condition with a deadline.

mod common;

use std::process::{Command, Output};

use common::Cluster;
use serde_json::Value;

/// Runs `cairnctl --socket <node i's socket> args…`.
fn ctl(cluster: &Cluster, i: usize, args: &[&str]) -> Output {
    cluster.cairnctl(i, args)
}

fn text(output: &Output) -> String {
    common::output_text(output)
}

/// Runs `cairnctl` and expects success; returns its output.
fn ctl_ok(cluster: &Cluster, i: usize, args: &[&str]) -> String {
    let output = ctl(cluster, i, args);
    assert!(output.status.success(), "cairnctl {args:?} on node {i} failed: {}", text(&output));
    text(&output)
}

/// The change id `cairnctl member add|remove|replace` printed.
fn change_id(output: &str) -> String {
    output
        .lines()
        .find_map(|line| line.strip_prefix("change "))
        .unwrap_or_else(|| panic!("no change id in {output:?}"))
        .trim()
        .to_owned()
}

/// Node `i`'s `GET /v1/members`.
fn members(cluster: &Cluster, i: usize) -> Value {
    cluster.get(i, "/v1/members")
}

/// The seat names in force on node `i`, sorted.
fn seat_names(cluster: &Cluster, i: usize) -> Vec<String> {
    let mut names: Vec<String> = members(cluster, i)["seats"]
        .as_array()
        .expect("seats")
        .iter()
        .map(|seat| seat["name"].as_str().expect("name").to_owned())
        .collect();
    names.sort();
    names
}

/// Whether node `i` holds `change` as pending.
fn is_pending(cluster: &Cluster, i: usize, change: &str) -> bool {
    members(cluster, i)["pending"]
        .as_array()
        .is_some_and(|pending| pending.iter().any(|p| p["change"].as_str() == Some(change)))
}

/// Runs `cairnctl` on node `i` until it succeeds (a removal is refused without `--force` until
/// the seat has been quiet for `timing.removal_quiet`); returns its output. Each refused try
/// signs nothing.
fn ctl_ok_once_quiet(cluster: &Cluster, i: usize, args: &[&str]) -> String {
    let mut output = None;
    cluster.wait_for(&format!("cairnctl {args:?} succeeds on node {i}"), |c| {
        let run = ctl(c, i, args);
        let ok = run.status.success();
        if !ok {
            assert!(text(&run).contains("has been quiet"), "refused for another reason: {}", text(&run));
        }
        output = Some(text(&run));
        ok
    });
    output.expect("ran at least once")
}

/// Waits until node `i` accepts writes (its own seq learned), then writes `key`.
fn put_when_ready(cluster: &Cluster, i: usize, key: &str, value: &str) {
    cluster.wait_for(&format!("node {i} accepts writes"), |c| {
        c.try_status(i).is_some_and(|s| s["writes_refused"].is_null())
    });
    cluster.put(i, key, value);
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|name| (*name).to_owned()).collect()
}

/// "Add a fourth host": a member proposes the new key, a second approves (2 of 3), every node
/// follows; the new host starts with the genesis and its peers' addresses, catches up, writes,
/// and its writes reach everyone. The members keep the new membership across a restart.
#[test]
fn a_fourth_host_is_added_catches_up_and_writes() {
    let mut c = Cluster::start(3);
    for k in 0..20 {
        c.put(k % 3, &format!("before-{k}"), "v");
    }
    let (dave, key) = c.add_host("dave");
    let key_hex = key.to_string();

    // A proposal alone is not enough: one vote of the two needed.
    let proposed = ctl_ok(&c, 0, &["member", "add", &key_hex, "dave"]);
    let change = change_id(&proposed);
    c.wait_for("every member holds the proposal", |c| (0..3).all(|i| is_pending(c, i, &change)));
    assert_eq!(seat_names(&c, 1), names(&["alice", "bob", "carol"]));
    let pending = ctl_ok(&c, 2, &["member", "pending"]);
    assert!(pending.contains(&change) && pending.contains("add"), "{pending}");

    // The new host can start now: it is refused until the change is in force.
    c.spawn(dave);
    c.wait_ready(dave);
    let refused = c.status(dave)["writes_refused"].as_str().unwrap_or_default().to_owned();
    assert!(!refused.is_empty(), "a host not yet added accepts writes");

    ctl_ok(&c, 1, &["member", "approve", &change]);
    c.wait_for("every member has four seats", |c| {
        (0..3).all(|i| seat_names(c, i) == names(&["alice", "bob", "carol", "dave"]))
    });
    // The new host connects (it dials the others, who admit its key now), catches up and
    // writes.
    c.wait_connected(dave, 3);
    c.wait_for("the new host holds every earlier write", |c| {
        c.register_value(dave, "before-19").as_deref() == Some("v")
    });
    put_when_ready(&c, dave, "from-dave", "hello");
    c.wait_for("every node reads the new host's write", |c| {
        (0..4).all(|i| c.register_value(i, "from-dave").as_deref() == Some("hello"))
    });
    // Its author is named on every node, though the API had named the genesis members before
    // the new key was indexed (its author index comes after theirs).
    for i in 0..4 {
        let register = c.register(i, "from-dave");
        assert_eq!(register["siblings"][0]["author_name"], "dave", "node {i}: {register}");
        assert_eq!(register["siblings"][0]["author"], key_hex.as_str(), "node {i}: {register}");
    }
    c.wait_for("the four nodes converge", |c| c.converged(&[0, 1, 2, 3]));
    let list = ctl_ok(&c, dave, &["member", "list"]);
    assert!(list.contains("dave") && list.contains(&key_hex), "{list}");

    // A restarted member keeps the membership (its store keeps the roster and the membership
    // events) and admits the new host again; so does the new host.
    c.stop(0);
    c.stop(dave);
    c.add_peer(0, dave, &key);
    c.restart(0);
    c.restart(dave);
    c.wait_connected(0, 3);
    c.wait_connected(dave, 3);
    assert_eq!(seat_names(&c, 0), names(&["alice", "bob", "carol", "dave"]));
    c.put(0, "after-restart", "x");
    c.wait_for("the write after the restarts reaches everyone", |c| {
        (0..4).all(|i| c.register_value(i, "after-restart").as_deref() == Some("x"))
    });
    c.wait_for("the four nodes converge", |c| c.converged(&[0, 1, 2, 3]));
}

/// "Decommission a host": drain it and stop it, then remove it by threshold. Nothing it
/// acknowledged is lost (the cut is the last seq the others hold, which is all it wrote), and
/// the removal is refused while it is connected unless forced. Once removed, its key is
/// refused at the TLS layer, saying so.
#[test]
fn a_drained_host_is_removed_without_losing_a_write() {
    let mut c = Cluster::start(3);
    for k in 0..10 {
        c.put(2, &format!("carol-{k}"), "kept");
    }
    c.wait_converged();

    // While carol is connected, a removal could cut writes it acknowledged but not sent yet.
    let refused = ctl(&c, 0, &["member", "remove", "carol"]);
    assert!(!refused.status.success());
    let message = text(&refused);
    assert!(message.contains("is connected") && message.contains("--force"), "{message}");
    // A cut below what this node holds drops writes it holds: also refused without --force.
    let refused = ctl(&c, 0, &["member", "remove", "carol", "--cut", "3"]);
    assert!(text(&refused).contains("drops 7 event(s)"), "{}", text(&refused));

    // Drained (no more clients) and stopped: the removal keeps all it wrote.
    c.stop(2);
    c.wait_connected(0, 1);
    let proposed = ctl_ok_once_quiet(&c, 0, &["member", "remove", "carol"]);
    let change = change_id(&proposed);
    c.wait_for("bob holds the proposal", |c| is_pending(c, 1, &change));
    ctl_ok(&c, 1, &["member", "approve", &change]);
    c.wait_for("both members hold two seats", |c| {
        (0..2).all(|i| seat_names(c, i) == names(&["alice", "bob"]))
    });
    for k in 0..10 {
        assert_eq!(c.register_value(1, &format!("carol-{k}")).as_deref(), Some("kept"));
    }

    // The removed host comes back: it is refused, and both sides say why.
    c.spawn(2);
    c.wait_ready(2);
    c.wait_for("the removed host is told it is no longer a member", |c| {
        c.log(2).contains("no longer a member")
    });
    assert_eq!(c.status(2)["n_peers_connected"].as_u64(), Some(0), "{}", c.status(2));
    // The cluster of two goes on: a majority of two is both.
    c.put(0, "after", "v");
    c.wait_for("bob reads the write", |c| c.register_value(1, "after").as_deref() == Some("v"));
}

/// "Replace a host whose key was lost or stolen": the seat is removed with a cut and refounded
/// by a new key under the same name; the new host starts with an empty store, catches up and
/// writes; the old key is refused.
#[test]
fn a_host_whose_key_was_lost_is_replaced() {
    let mut c = Cluster::start(3);
    for k in 0..5 {
        c.put(2, &format!("old-carol-{k}"), "v");
    }
    c.wait_converged();
    c.stop(2);
    c.wait_connected(0, 1);
    let (new_carol, key) = c.add_host("carol-new");
    let proposed = ctl_ok_once_quiet(&c, 0, &["member", "replace", "carol", &key.to_string()]);
    let change = change_id(&proposed);
    c.wait_for("bob holds the proposal", |c| is_pending(c, 1, &change));
    ctl_ok(&c, 1, &["member", "approve", &change]);
    c.wait_for("the seat is carol's, founded by the new key", |c| {
        (0..2).all(|i| {
            members(c, i)["seats"].as_array().is_some_and(|seats| {
                seats.iter().any(|s| s["name"] == "carol" && s["founder"].as_str() == Some(&key.to_string()))
            })
        })
    });
    c.spawn(new_carol);
    c.wait_connected(new_carol, 2);
    c.wait_for("the replacement holds the old key's writes up to the cut", |c| {
        c.register_value(new_carol, "old-carol-4").as_deref() == Some("v")
    });
    put_when_ready(&c, new_carol, "from-new-carol", "v");
    c.wait_for("every member reads the replacement's write", |c| {
        [0, 1, new_carol].iter().all(|&i| c.register_value(i, "from-new-carol").as_deref() == Some("v"))
    });
    // The old host, if it comes back with the old key, is refused.
    c.spawn(2);
    c.wait_ready(2);
    c.wait_for("the old key is told it is no longer a member", |c| c.log(2).contains("no longer a member"));
}

/// "Rotate a key": `cairnd rotate-key` on a running node. The old key signs the rotation, the
/// new key replaces the key file, and every member follows without a vote; the node goes on
/// writing under the new key, across restarts (its own and a peer's), and the old key is
/// refused from then on.
#[test]
fn a_running_nodes_key_is_rotated() {
    // Only bob knows the others' addresses: after the rotation, its own dials must present the
    // key each peer admits (the old one until the peer holds the rotation, then the new one).
    let mut c = Cluster::write(3, common::TIMING);
    c.remove_peer(0, 1);
    c.remove_peer(2, 1);
    c.spawn_all();
    c.wait_all_connected();
    let before = c.put(1, "before-rotation", "v");
    let old = cairn_crypto::SecretKey::read_file(&c.nodes[1].key_file).expect("bob's key");
    // Alice verifies an event of bob's before the rotation (the console's event page), and
    // again after it, against her roster as it is then.
    c.wait_for("alice holds bob's first write", |c| c.register_value(0, "before-rotation").is_some());
    let verified = verify(&c, 0, before["id"].as_str().expect("an id"));
    assert_eq!(verified["outcome"], "valid", "{verified}");
    let rotate = Command::new(common::cairnd())
        .args(["rotate-key", "--config"])
        .arg(&c.nodes[1].config)
        .output()
        .expect("cairnd rotate-key");
    assert!(rotate.status.success(), "{}", text(&rotate));
    let new_key = String::from_utf8_lossy(&rotate.stdout).trim().to_owned();
    assert_eq!(new_key.len(), 64, "{}", text(&rotate));
    let on_disk = cairn_crypto::SecretKey::read_file(&c.nodes[1].key_file).expect("the new key file");
    assert_eq!(on_disk.public().to_string(), new_key, "the key file holds the new key");
    assert!(!common::next_key_file_exists(&c.nodes[1].key_file), "the new key's staging file is gone");

    c.wait_for("every member signs bob's seat with the new key", |c| {
        (0..3).all(|i| {
            members(c, i)["seats"].as_array().is_some_and(|seats| {
                seats.iter().any(|s| s["name"] == "bob" && s["key"].as_str() == Some(new_key.as_str()))
            })
        })
    });
    c.wait_connected(1, 2);
    c.put(1, "after-rotation", "w");
    c.wait_for("every node reads bob's write under the new key", |c| {
        (0..3).all(|i| c.register_value(i, "after-rotation").as_deref() == Some("w"))
    });
    let by_new = c.get(0, &format!("/v1/events?author={new_key}"));
    assert!(by_new["events"].as_array().is_some_and(|e| !e.is_empty()), "{by_new}");
    // The new key is on alice's roster now: an event it signed verifies, and the rotation
    // (a membership op) says that rules V2 to V5 are not checked again.
    let new_event = by_new["events"][0]["id"].as_str().expect("an id").to_owned();
    let verified = verify(&c, 0, &new_event);
    assert_eq!(verified["outcome"], "valid", "{verified}");
    let membership = membership_check(&verified);
    assert!(
        membership["detail"].as_str().is_some_and(|d| d.contains("a key of this node's roster")),
        "{membership}"
    );
    let by_old = c.get(0, &format!("/v1/events?author={}", old.public()));
    let rotation = by_old["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["id"].as_str())
        .find(|id| {
            let event = c.get(0, &format!("/v1/events/{id}"));
            event["ops"].as_array().is_some_and(|ops| ops.iter().any(|op| op["op"] == "rotate"))
        })
        .unwrap_or_else(|| panic!("no rotation event of the old key: {by_old}"))
        .to_owned();
    let verified = verify(&c, 0, &rotation);
    let membership = membership_check(&verified);
    assert!(membership["detail"].as_str().is_some_and(|d| d.contains("V2 to V5")), "{verified}");

    // Restarts: bob's store names the new key, and it dials the others with it.
    c.stop(1);
    c.restart(1);
    c.stop(0);
    c.restart(0);
    c.wait_connected(0, 2);
    c.wait_connected(1, 2);
    c.put(1, "after-restarts", "x");
    c.wait_for("bob's write after the restarts reaches everyone", |c| {
        (0..3).all(|i| c.register_value(i, "after-restarts").as_deref() == Some("x"))
    });
    c.wait_for("the three nodes converge", |c| c.converged(&[0, 1, 2]));

    // The old key is refused, saying why.
    let status = c.status(2);
    let server: cairn_crypto::PublicKey = status["key"].as_str().unwrap().parse().unwrap();
    let refused = c.block_on(common::raw_tls_refusal(&old, &server, c.nodes[2].address));
    assert!(refused.contains("no longer a member"), "{refused}");
}

/// A stop in the middle of a key rotation: the new key waits beside the key file until the
/// store names it. A start that finds the store naming it finishes the rotation (the new key
/// replaces the key file); one that finds the store naming the old key throws the new key away.
#[test]
fn a_start_finishes_or_undoes_an_interrupted_key_rotation() {
    let c = Cluster::write(2, common::TIMING);
    let config = cairn_daemon::config::Config::load(&c.nodes[0].config).expect("the config");
    let old = cairn_crypto::SecretKey::read_file(&config.key_file).expect("the key");
    let next_file = cairn_daemon::driver::next_key_file(&config.key_file);
    let genesis = cairn_daemon::config::load_genesis(&config.genesis_file).expect("the genesis");
    let members = cairn_daemon::store::member_keys(&genesis);
    let open = |key: [u8; 32]| {
        cairn_daemon::store::Store::open(
            &config.store_path(),
            genesis.cluster_id(),
            key,
            cairn_daemon::store::OwnHistory::Complete,
            &members,
        )
    };

    // No store: cairnd cannot tell whether the rotation was stored, and keeps both keys.
    cairn_crypto::SecretKey::generate().write_file(&next_file).unwrap();
    let error = cairn_daemon::daemon::finish_key_rotation(&config).unwrap_err();
    assert!(format!("{error:#}").contains("is missing"), "{error:#}");
    assert!(next_file.exists(), "the new key is kept");
    std::fs::remove_file(&next_file).unwrap();

    // Not stored: the store names the old key.
    drop(open(old.public().0).expect("a store of the old key"));
    cairn_crypto::SecretKey::generate().write_file(&next_file).unwrap();
    cairn_daemon::daemon::finish_key_rotation(&config).unwrap();
    assert!(!next_file.exists(), "the unstored new key is thrown away");
    assert_eq!(cairn_crypto::SecretKey::read_file(&config.key_file).unwrap().public(), old.public());

    // Stored: the store names the new key (written with the rotation's commit).
    let next = cairn_crypto::SecretKey::generate();
    next.write_file(&next_file).unwrap();
    {
        let (mut store, _) = open(old.public().0).unwrap();
        store.rotate_node_key(next.public().0);
        let event = cairn_protocol::Event::sign(
            &old,
            1,
            1,
            vec![],
            vec![cairn_protocol::Op::Put { key: b"k".to_vec(), value: b"v".to_vec() }],
        );
        store.append(&[(event.id().0, event.encode().as_slice())], &[], true).unwrap();
    }
    assert!(open(old.public().0).is_err(), "the store refuses the old key once it names the new one");
    cairn_daemon::daemon::finish_key_rotation(&config).unwrap();
    assert!(!next_file.exists());
    assert_eq!(cairn_crypto::SecretKey::read_file(&config.key_file).unwrap().public(), next.public());
    drop(open(next.public().0).expect("the store opens with the new key"));
}

/// `GET /v1/events/{id}/verify` on node `i`.
fn verify(c: &Cluster, i: usize, id: &str) -> Value {
    c.get(i, &format!("/v1/events/{id}/verify"))
}

/// The membership check of a verify report.
fn membership_check(report: &Value) -> Value {
    report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == "membership"))
        .cloned()
        .unwrap_or_else(|| panic!("no membership check: {report}"))
}
