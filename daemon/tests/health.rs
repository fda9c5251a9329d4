//! `GET /v1/health` and `cairnctl health` on real processes: a node whose peer is not up is live
//! but not ready (503, exit 6, the failing check named); once the peer connects it is ready
//! (200, exit 0); a stopped daemon cannot be reached (exit 1).

mod common;

use std::process::Output;

use common::{Cluster, TIMING};

fn cairnctl(cluster: &Cluster, i: usize, args: &[&str]) -> Output {
    cluster.cairnctl(i, args)
}

fn text(output: &Output) -> String {
    common::output_text(output)
}

#[test]
fn health_says_live_ready_and_why_not() {
    let mut c = Cluster::write(2, TIMING);
    c.spawn(0);
    c.wait_ready(0);

    // Live, not ready: its one peer is not connected.
    let health = cairnctl(&c, 0, &["health"]);
    assert_eq!(health.status.code(), Some(i32::from(cairn_daemon::ctl::EXIT_NOT_READY)), "{}", text(&health));
    let out = text(&health);
    assert!(out.contains("live, not ready") && out.contains("none of 1 connected"), "{out}");
    let json = cairnctl(&c, 0, &["--json", "health"]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!((value["live"].as_bool(), value["ready"].as_bool()), (Some(true), Some(false)), "{value}");
    assert_eq!(value["checks"]["store"], "ok");
    assert_eq!(value["checks"]["own_seq"], "ok");
    let (status, _) = c.block_on(c.client(0).health()).expect("GET /v1/health");
    assert_eq!(status.as_u16(), 503);
    let live = c.get(0, "/v1/health/live");
    assert_eq!(live["live"], true, "{live}");

    // Ready once the peer is connected.
    c.spawn(1);
    c.wait_connected(0, 1);
    let health = cairnctl(&c, 0, &["health"]);
    assert_eq!(health.status.code(), Some(0), "{}", text(&health));
    assert!(text(&health).starts_with("ready"), "{}", text(&health));
    let (status, body) = c.block_on(c.client(0).health()).expect("GET /v1/health");
    assert_eq!(status.as_u16(), 200);
    assert_eq!(body.expect("the health").checks["peers"], "ok (1 of 1 connected)");

    // Not reachable at all: exit 1, not 6.
    c.stop(0);
    let health = cairnctl(&c, 0, &["health"]);
    assert_eq!(health.status.code(), Some(1), "{}", text(&health));
}
