//! Faults across hosts that need network namespaces: five `cairnd` hosts on a bridge,
//! partitioned 2 | 3 by moving the bridge ports of two hosts to a second bridge (so those two
//! still reach each other and nobody else), writes on both sides, then the heal. The time from
//! the heal to convergence is printed for the notes; the assertion is a generous deadline.
//!
//! Where namespaces are not permitted the test prints `SKIPPED: ...` and returns (see
//! `common/netns.rs`). Other fault tests, which run on loopback too, are in `faults.rs`.

mod common;

use std::time::Instant;

use common::DEADLINE;
use common::netns::connected_cluster;

/// The hosts on each side of the partition.
const MINORITY: [usize; 2] = [0, 1];
const MAJORITY: [usize; 3] = [2, 3, 4];
/// Writes per node while partitioned.
const WRITES_PER_NODE: usize = 10;

#[test]
fn partition_2_3_with_writes_on_both_sides_heals_or_reports_skipped() {
    // The cluster is dropped (its processes killed) before the network's namespaces go.
    let Some((network, mut c)) = connected_cluster("part", 5, "before", "the partition") else { return };

    let cut = Instant::now();
    network.partition(&MINORITY);
    c.wait_for("each side sees only its own side", |c| {
        MINORITY.iter().all(|&i| c.status(i)["n_peers_connected"] == 1)
            && MAJORITY.iter().all(|&i| c.status(i)["n_peers_connected"] == 2)
    });
    eprintln!("the partition was noticed by every node within {:?}", cut.elapsed());

    // Both sides write: keys of their own, one register both write (siblings), one counter,
    // one set.
    let mut keys = Vec::new();
    for i in 0..5 {
        let side = if MINORITY.contains(&i) { "minority" } else { "majority" };
        for n in 0..WRITES_PER_NODE {
            let key = format!("{side}-{i}-{n}");
            c.put(i, &key, &key);
            keys.push(key);
        }
        c.incr(i, "total", i as i64 + 1);
        c.set_op(i, "add", "members", &format!("node-{i}"));
    }
    c.put(0, "shared", "from the minority");
    c.put(2, "shared", "from the majority");
    c.wait_for("each side converges on its own", |c| c.converged(&MINORITY) && c.converged(&MAJORITY));
    assert_eq!(c.register_value(0, "majority-2-0"), None, "a majority write crossed the partition");
    assert_eq!(c.register_value(2, "minority-0-0"), None, "a minority write crossed the partition");
    assert_eq!(c.counter(0, "total"), 1 + 2);
    assert_eq!(c.counter(2, "total"), 3 + 4 + 5);

    // Heal, and time how long until every node holds everything.
    let healed = Instant::now();
    network.heal();
    c.wait_all_connected();
    let reconnected = healed.elapsed();
    c.wait_converged();
    let converged = healed.elapsed();
    eprintln!(
        "5-node partition 2 | 3: after the heal, every node was reconnected in {reconnected:?} and converged \
         in {converged:?} (deadline {DEADLINE:?} per condition)"
    );

    c.assert_everywhere(&keys);
    for i in 0..5 {
        assert_eq!(c.counter(i, "total"), 15, "node {i}");
        let members: Vec<String> = (0..5).map(|j| format!("node-{j}")).collect();
        assert_eq!(c.set_members(i, "members"), members, "node {i}");
        let shared = c.register(i, "shared");
        assert_eq!(shared["siblings"].as_array().unwrap().len(), 2, "node {i}: {shared}");
        assert!(c.evidence(i).is_empty(), "node {i} holds evidence");
    }
    let visible: Vec<_> = (0..5).map(|i| c.register_value(i, "shared")).collect();
    assert!(visible.iter().all(|v| *v == visible[0]), "{visible:?}");
}
