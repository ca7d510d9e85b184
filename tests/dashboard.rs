//! The Grafana dashboard in `examples/` is valid JSON and names only
//! metrics the library records (no server needed: it reads a file).

use std::collections::BTreeSet;

use ractor_jetstream::telemetry::names;

#[test]
fn the_dashboard_uses_only_the_librarys_metric_names() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/grafana-dashboard.json"
    ))
    .expect("read the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let known: BTreeSet<&str> = [
        names::DELIVERED,
        names::REDELIVERED,
        names::ACKED,
        names::NAKED,
        names::TERMED,
        names::ABANDONED,
        names::TIMED_OUT,
        names::DEAD_LETTERED,
        names::ACKS_CONFIRMED,
        names::ACKS_UNCONFIRMED,
        names::LATE_DECISIONS,
        names::IN_FLIGHT,
        names::DECISION_SECONDS,
        names::FETCH_SECONDS,
        names::RESTARTS,
        names::GIVE_UPS,
        names::NUM_PENDING,
        names::NUM_ACK_PENDING,
        names::NUM_REDELIVERED,
        names::ACK_FLOOR,
        names::ADVISORIES,
        names::KEYED_WORKER_DELIVERIES,
    ]
    .into();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let mut used = BTreeSet::new();
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("an expression");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("jetstream_") {
                    assert!(known.contains(word), "{word} in {expr:?} is not recorded");
                    used.insert(word.to_string());
                }
            }
        }
    }
    // The questions operators ask: lag, failures, latency.
    for needed in [
        names::NUM_PENDING,
        names::REDELIVERED,
        names::DECISION_SECONDS,
    ] {
        assert!(used.contains(needed), "the dashboard lacks {needed}");
    }
}
