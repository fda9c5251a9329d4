//! The Grafana dashboard in `deploy/grafana/cairn.json` queries only metrics that cairnd exports:
//! every `cairn_*` name in its expressions must be a series of the daemon's metrics registry
//! (what `GET /v1/metrics` serves), every labelled family given one series.

use std::collections::BTreeSet;

/// The `cairn_…` metric names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("cairn_") {
        let start = i + at;
        let end = bytes[start..]
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
            .map_or(text.len(), |n| start + n);
        names.insert(text[start..end].to_owned());
        i = end;
    }
    names
}

#[test]
fn every_metric_the_dashboard_queries_exists() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/cairn.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the dashboard"))
            .expect("the dashboard is JSON");
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let targets = panel["targets"].as_array().expect("every panel has targets");
        assert!(!targets.is_empty(), "panel {} queries nothing", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().expect("every target has an expression");
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr} queries no cairn metric");
            queried.extend(names);
        }
    }

    // The daemon's registry, with one series in every labelled family (an empty family writes
    // nothing, not even its `# TYPE` line).
    use cairn_daemon::metrics::{AuthorLabel, Metrics, PeerLabel, ReasonLabel};
    let metrics = Metrics::new();
    let reason = ReasonLabel { reason: "bad_signature" };
    let peer = PeerLabel { peer: "bob".to_owned() };
    let author = AuthorLabel { author: "alice".to_owned() };
    metrics.events_rejected.get_or_create(&reason).inc();
    metrics.bad_messages.get_or_create(&reason).inc();
    metrics.version_mismatches.get_or_create(&peer).inc();
    metrics.bytes_in.get_or_create(&peer).inc();
    metrics.bytes_out.get_or_create(&peer).inc();
    metrics.author_events.get_or_create(&author).inc();
    metrics.author_bytes.get_or_create(&author).inc();
    let text = metrics.encode();
    let mut exported = BTreeSet::new();
    for line in text.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut parts = declared.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
            // A counter's series is `NAME_total`; the bare family name is no series to query.
            if kind == "counter" {
                exported.insert(format!("{name}_total"));
            } else {
                exported.insert(name.to_owned());
            }
        } else if !line.starts_with('#') {
            exported.extend(metric_names(line.split(['{', ' ']).next().unwrap_or_default()));
        }
    }
    let missing: Vec<&String> = queried.difference(&exported).collect();
    assert!(missing.is_empty(), "the dashboard queries metrics cairnd does not export: {missing:?}\n{text}");
    assert!(queried.len() >= 15, "the dashboard covers the metrics: {queried:?}");
}
