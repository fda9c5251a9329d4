//! The deterministic figures of `cairn-bench sync`, pinned: round trips, wire bytes per byte
//! of the events moved, events sent (each missing event exactly once) and convergence within
//! the session, for every reconciliation scenario (a)–(d). They are counts on virtual time,
//! not timings, so a change that moves one fails here instead of going unnoticed until someone
//! re-runs the benchmark.
//!
//! The scenarios are the benchmark's own code (`bench/src/protocol/sync.rs`), at sizes that run
//! in seconds. What each scenario sets up is described there and in `docs/BENCHMARKS.md`.

// The benchmark's data helpers include some only the benchmark binary uses.
#[allow(dead_code)]
#[path = "../src/protocol/data.rs"]
mod data;
#[path = "../src/protocol/sync.rs"]
mod sync;

use data::Cast;
use sync::{Row, SyncSizes};

/// Most wire bytes per byte of events moved, wherever at least 100 events move.
const RATIO_MAX: f64 = 1.05;

fn rows() -> Vec<Row> {
    let sizes = SyncSizes {
        in_sync: 2_000,
        lack_base: 1_000,
        lack: 1_000,
        both: vec![10, 100, 1_000],
        both_value_bytes: 1_000,
        fork_prefix: 500,
        fork_k: vec![1, 10, 100],
    };
    sync::run(&Cast::new(), &sizes)
}

fn ratio(row: &Row) -> f64 {
    row.wire_bytes as f64 / row.moved_bytes as f64
}

fn describe(row: &Row) -> String {
    format!(
        "{}: {} flights, {} messages, {} B on the wire for {} events of {} B ({:.3}), {} events sent, \
         targets rt {:?} ratio {:?}, {}, {:?}\n  {}",
        row.scenario,
        row.flights,
        row.messages,
        row.wire_bytes,
        row.moved_events,
        row.moved_bytes,
        if row.moved_bytes > 0 { ratio(row) } else { 0.0 },
        row.events_sent,
        row.rt_target,
        row.ratio_target,
        row.check,
        row.elapsed,
        row.trace.join("\n  ")
    )
}

#[test]
fn every_reconciliation_scenario_meets_its_pinned_figures() {
    let rows = rows();
    assert_eq!(
        rows.len(),
        10,
        "scenarios: {}",
        rows.iter().map(|r| r.scenario.as_str()).collect::<Vec<_>>().join(", ")
    );
    for row in &rows {
        let what = describe(row);
        eprintln!("{what}");
        // Converged within the session, with every missing event sent exactly once (the
        // check also compares both digests and the event counts), and the next session one
        // interval later is a bare summary answered by in_sync or tips both ways.
        assert_eq!(row.check, "ok", "{what}");
        assert_eq!(row.events_sent, row.moved_events as u64, "{what}");
        assert_eq!(row.follow_up.len(), 2, "the next session is one round trip: {what}");
        if let Some(round_trips) = row.rt_target {
            assert!(row.flights as f64 / 2.0 <= round_trips, "the benchmark's own target: {what}");
        }
        let scenario = &row.scenario;
        if scenario.starts_with("(a)") {
            // One round trip, and bytes that do not grow with the events held: a summary and
            // its in_sync answer, 36 bytes each.
            assert_eq!(row.flights, 2, "{what}");
            assert_eq!(row.wire_bytes, 72, "{what}");
        } else if scenario.starts_with("(b)") {
            // The holder opening: 1.5 round trips. The lacking side opening: it sends a
            // summary (it never was in sync with this peer, and a summary is cheapest when
            // the sets are equal), so its tips reach the holder only in the third flight:
            // 2 round trips.
            let flights_max = if scenario.contains("A starts") { 3 } else { 4 };
            assert!(row.flights <= flights_max, "{what}");
            assert!(ratio(row) <= RATIO_MAX, "{what}");
        } else if scenario.starts_with("(c)") {
            // Both sides changed since their last in-sync: tips, then events and tips, then
            // events: 1.5 round trips whoever starts.
            assert!(row.flights <= 3, "{what}");
            // At n = 10 the three tips messages weigh more against 20 events; still within
            // 1.05 with 1000-byte values (1.036 as of this writing).
            assert!(ratio(row) <= RATIO_MAX, "{what}");
        } else if scenario.starts_with("(d)") {
            // A fork: summary, tips both ways, then a search by seq (logarithmic in the
            // branch length, at most 16 seqs a round), the missing branch, and ours.
            assert!(row.flights <= 9, "{what}");
            if row.moved_events >= 200 {
                assert!(ratio(row) <= 1.06, "{what}");
            }
        } else {
            panic!("unknown scenario {scenario}");
        }
    }
}
