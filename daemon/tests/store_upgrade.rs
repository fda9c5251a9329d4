//! A store written by the cairnd of format 1 (`tests/fixtures/store-v1`, see its README) is
//! upgraded in place by today's cairnd: same events, same document, same reconciliation
//! digest. Format 1 could not say whether it held the node's whole own chain, so the node
//! learns its seq from its peers once before it writes: with no peer running, it refuses.

mod common;

use std::path::Path;

use cairn_daemon::config::STORE_FILE;
use common::{Cluster, TIMING, cairnd};

/// Runs `cairnd check-store` on node 0, which must pass; returns what it printed.
fn check_store(cluster: &Cluster) -> String {
    let check = std::process::Command::new(cairnd())
        .args(["check-store", "--config"])
        .arg(&cluster.nodes[0].config)
        .output()
        .expect("cairnd check-store");
    let out = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    assert!(check.status.success(), "{out}");
    out
}

/// A 2-node layout whose node 0 gets the key, genesis and store of `fixture`; node 1 never
/// runs. Not a brand-new cluster: only the store's own history decides whether it may write.
fn cluster_with(fixture: &Path) -> Cluster {
    let cluster = Cluster::write(2, TIMING);
    std::fs::copy(fixture.join("node.key"), &cluster.nodes[0].key_file).expect("the key");
    // git keeps no file mode but the executable bit: a clone has the key readable by others,
    // which cairnd refuses.
    std::fs::set_permissions(&cluster.nodes[0].key_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod 600 the key");
    std::fs::copy(fixture.join("genesis.toml"), cluster.dir().join("genesis.toml")).expect("the genesis");
    let data_dir = &cluster.nodes[0].data_dir;
    std::fs::create_dir_all(data_dir).expect("the data directory");
    std::fs::copy(fixture.join("store.redb"), data_dir.join(STORE_FILE)).expect("the store");
    cluster.edit_config(0, |text| text.replace("new_cluster = true\n", ""));
    cluster
}

#[test]
fn a_format_1_store_is_upgraded_in_place_and_keeps_its_document() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1");
    let digests = std::fs::read_to_string(fixture.join("digests")).expect("the fixture's digests");
    let mut digests = digests.lines();
    // The first line is the digest format 1's cairnd reported (layout `cairn/document/v1`); the
    // fourth is the same document's under today's layout (see the fixture's README).
    let (_, sync) = (digests.next().expect("document digest"), digests.next().expect("sync digest"));
    let _v2 = digests.next().expect("document digest, layout v2");
    let document = digests.next().expect("document digest, layout v3");

    let mut cluster = cluster_with(&fixture);

    let out = check_store(&cluster);
    assert!(out.contains("upgraded in place from format 1"), "{out}");
    assert!(out.contains("own history: Unknown"), "{out}");

    cluster.spawn(0);
    cluster.wait_ready(0);
    let status = cluster.status(0);
    assert_eq!(status["digest"].as_str(), Some(document), "{status}");
    assert_eq!(status["sync_digest"].as_str(), Some(sync), "{status}");
    let refused = status["writes_refused"].as_str().unwrap_or_default();
    assert!(refused.contains("learning its latest seq from peers"), "{status}");
    assert_eq!(cluster.register_value(0, "shared").as_deref(), Some("one"));
    assert_eq!(cluster.counter(0, "hits"), 3);
    assert_eq!(cluster.set_members(0, "tags"), vec!["y".to_owned()]);
}

/// A store written by the cairnd of format 4 (`tests/fixtures/store-v4`, see its README) is
/// upgraded by its meta alone: the start adds the two tables for membership changes and opens
/// the persisted document as it was, replaying nothing; the document, the reconciliation digest
/// and the events are the same, the node writes at once (its store held its whole own chain),
/// and the offline check finds nothing wrong.
#[test]
fn a_format_4_store_is_upgraded_without_a_replay_and_keeps_its_document() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v4");
    let digests = std::fs::read_to_string(fixture.join("digests")).expect("the fixture's digests");
    let mut digests = digests.lines();
    let (document, sync) = (digests.next().expect("document digest"), digests.next().expect("sync digest"));
    let n_events: u64 = digests.next().expect("events").parse().expect("a count");

    let mut cluster = cluster_with(&fixture);

    cluster.spawn(0);
    cluster.wait_ready(0);
    let status = cluster.status(0);
    assert_eq!(status["digest"].as_str(), Some(document), "{status}");
    assert_eq!(status["sync_digest"].as_str(), Some(sync), "{status}");
    assert_eq!(status["n_events"].as_u64(), Some(n_events), "{status}");
    assert_eq!(status["writes_refused"], serde_json::Value::Null, "{status}");
    assert_eq!(cluster.register_value(0, "a1").as_deref(), Some("v1"));
    assert_eq!(cluster.register_value(0, "a0"), None, "bob deleted a0");
    assert_eq!(cluster.counter(0, "hits"), 3);
    assert_eq!(cluster.set_members(0, "tags"), vec!["y".to_owned()]);
    cluster.put(0, "after-upgrade", "v");
    let log = cluster.log(0);
    assert!(log.contains("two empty tables for membership changes") && log.contains("from=4"), "{log}");
    assert!(
        !log.contains("replayed the log's tail"),
        "an upgrade from format 4 replayed the document:\n{log}"
    );

    cluster.stop(0);
    check_store(&cluster);
}
