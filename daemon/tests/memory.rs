//! Memory bounded whatever a member writes: one member of a 3-node cluster writes large values
//! under distinct keys as fast as its API takes them, and no node's resident memory follows the
//! bytes written. The check writes 1 GiB under a 512 MiB bound (`cairn-daemon-bench`
//! can run that size); this one writes [`WRITTEN_BYTES`], more than the bound it asserts, so a
//! node that held the values (as every node did before: about three times their bytes) fails it.
//! Values, events and covered records are on disk; the document holds each large value as its
//! length and hash; what stays in memory is bounded by named caches (the archive's
//! `RECENT_BYTES_MAX`, 32 MiB, and redb's page cache, 64 MiB) and the process itself.

mod common;

use std::time::Instant;

use common::{Cluster, say};
use hyper::Method;
use serde_json::json;

/// Bytes of each value: about the 60 KB values of the report.
const VALUE_BYTES: usize = 60_000;
/// Bytes written in all, unless `CAIRN_MEMORY_TEST_MIB` says how many MiB (1024 for the
/// issue's full check: it needs about 4 GB of disk for the three stores).
const WRITTEN_BYTES: usize = 256 << 20;
/// Writers at once (each waits for its acknowledgement), so that commits pack several writes.
const WRITERS: usize = 8;
/// The bound every node's peak resident memory (VmHWM) must stay under: less than the bytes
/// written here, and less than half the 512 MiB at 1 GiB. Measured on 2026-12-04: the
/// writing node 176 MiB and the others 130 MiB at 256 MiB written; 225 and 140 MiB at 1 GiB.
const RSS_MAX_MIB: f64 = 240.0;

fn vm_hwm_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    let kib: f64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmHWM in kB");
    kib / 1024.0
}

#[test]
fn a_member_writing_large_values_does_not_grow_any_nodes_memory() {
    let mut cluster = Cluster::start(3);
    cluster.wait_all_connected();
    let written_bytes = std::env::var("CAIRN_MEMORY_TEST_MIB")
        .ok()
        .and_then(|mib| mib.parse::<usize>().ok())
        .map_or(WRITTEN_BYTES, |mib| mib << 20);
    let n_writes = written_bytes / VALUE_BYTES;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for w in 0..WRITERS {
            let client = cluster.client(0);
            scope.spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                for k in (w..n_writes).step_by(WRITERS) {
                    // Distinct keys and values: nothing is overwritten, every byte stays live.
                    let value = format!("{k:08}").repeat(VALUE_BYTES / 8);
                    let path = format!("/v1/registers/big-{k}");
                    runtime
                        .block_on(client.send_json(Method::PUT, &path, &json!({ "value": value })))
                        .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
                }
            });
        }
    });
    let written = started.elapsed();
    cluster.wait_converged();
    let peaks: Vec<f64> = (0..3).map(|i| vm_hwm_mib(cluster.pid(i))).collect();
    say(&format!(
        "wrote {n_writes} values of {VALUE_BYTES} bytes ({} MiB) in {:.1} s; peak RSS per node (MiB): {peaks:.0?}",
        written_bytes >> 20,
        written.as_secs_f64()
    ));
    for (i, peak) in peaks.iter().enumerate() {
        assert!(*peak < RSS_MAX_MIB, "node {i} peaked at {peak:.0} MiB, over {RSS_MAX_MIB} MiB");
    }
    // The values are all there, read back from the events on disk.
    let k = n_writes - 1;
    let expected = format!("{k:08}").repeat(VALUE_BYTES / 8);
    for i in 0..3 {
        assert_eq!(
            cluster.register_value(i, &format!("big-{k}")).as_deref(),
            Some(expected.as_str()),
            "node {i}"
        );
    }
}
