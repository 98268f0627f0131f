//! The operations material names only metrics the worker exports: every `tributary_*` name in
//! docs/operations.md, the Prometheus alert rules (docker/prometheus/alerts.yml) and the Grafana
//! dashboard (docker/grafana/tributary.json) must be a metric family or sample of
//! [`Metrics::render`], and every label a query selects on must be one of that metric's labels.
//! A metric renamed in src/metrics.rs fails this test until the docs follow.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tributary::metrics::Metrics;

/// Labels Prometheus adds to every series it scrapes, or that histograms carry.
const SCRAPE_LABELS: [&str; 3] = ["job", "instance", "le"];

/// The worker's metrics with one series of each labelled metric, as `/metrics` renders them
/// once the worker has recorded something: sample (and family) name -> label names.
fn exported() -> BTreeMap<String, BTreeSet<String>> {
    let m = Metrics::new();
    m.records_consumed.with_label_values(&["clicks", "0"]).inc();
    m.records_produced
        .with_label_values(&["clicks-totals"])
        .inc();
    m.records_dead_lettered.with_label_values(&["clicks"]).inc();
    m.records_skipped.with_label_values(&["clicks"]).inc();
    m.late_records.with_label_values(&["totals"]).inc();
    m.consumer_lag.with_label_values(&["clicks", "0"]).set(1);
    m.rebalances.with_label_values(&["0", "assign"]).inc();
    m.commit_latency.with_label_values(&["0"]).observe(0.01);
    m.commit_stall.with_label_values(&["0"]).observe(0.001);
    m.commit_failures.inc();
    m.transactions.with_label_values(&["committed"]).inc();
    m.restored_records.with_label_values(&["totals"]).inc();
    m.standby_records.with_label_values(&["totals"]).inc();
    m.standby_lag
        .with_label_values(&["0_0", "app-totals-changelog"])
        .set(1);
    m.restore_remaining
        .with_label_values(&["totals_0", "app-totals-changelog"])
        .set(1);
    m.tasks.with_label_values(&["running"]).set(1);
    m.paused_partitions.set(1);
    m.buffered_records.set(1);
    m.process_latency.observe(0.0001);

    let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in m.render().lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let family = rest
                .split_whitespace()
                .next()
                .expect("a TYPE line names it");
            names.entry(family.to_string()).or_default();
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let (name, rest) = line.split_at(end);
        let labels: BTreeSet<String> = rest
            .strip_prefix('{')
            .and_then(|r| r.split_once('}'))
            .map(|(inside, _)| {
                inside
                    .split(',')
                    .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.trim().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        names.entry(name.to_string()).or_default().extend(labels);
    }
    // A histogram's family carries the labels of its samples.
    let families: Vec<String> = names.keys().cloned().collect();
    for family in families {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(labels) = names.get(&format!("{family}{suffix}")).cloned() {
                names.entry(family.clone()).or_default().extend(labels);
            }
        }
    }
    names
}

/// Every `tributary_<name>` in `text`, with the label names of a `{...}` selector right after
/// it (`tributary_tasks{state="running"}` -> `state`).
fn used(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("tributary_") {
        let start = &rest[at..];
        let len = start
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(start.len());
        let name = &start[..len];
        let mut labels = Vec::new();
        if let Some(selector) = start[len..].strip_prefix('{') {
            if let Some((inside, _)) = selector.split_once('}') {
                for matcher in inside.split(',') {
                    let key: String = matcher
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    // `{topic,partition}` in prose names labels too.
                    if !key.is_empty() {
                        labels.push(key);
                    }
                }
            }
        }
        // `tributary_*` (any metric) and names preceded by a word character are not names.
        let preceded = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if name.len() > "tributary_".len() && !preceded {
            out.push((name.to_string(), labels));
        }
        rest = &start[len..];
    }
    out
}

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Panics with every unknown metric or label that `path` names; returns how many it named.
fn check(path: &str, exported: &BTreeMap<String, BTreeSet<String>>) -> usize {
    let uses = used(&read(path));
    let mut problems = Vec::new();
    for (name, labels) in &uses {
        let Some(known) = exported.get(name) else {
            problems.push(format!("{path}: {name} is not a metric the worker exports"));
            continue;
        };
        for label in labels {
            if !known.contains(label) && !SCRAPE_LABELS.contains(&label.as_str()) {
                problems.push(format!(
                    "{path}: {name} has no label {label:?} (it has {known:?})"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    uses.len()
}

#[test]
fn the_alert_rules_dashboard_and_operations_doc_name_only_real_metrics() {
    let exported = exported();
    assert!(
        exported.contains_key("tributary_commit_latency_seconds_bucket"),
        "the rendering includes histogram samples: {:?}",
        exported.keys().collect::<Vec<_>>()
    );
    for path in [
        "docs/operations.md",
        "docker/prometheus/alerts.yml",
        "docker/grafana/tributary.json",
    ] {
        assert!(check(path, &exported) > 5, "{path} names the metrics");
    }
}

#[test]
fn the_checker_catches_a_misspelt_metric_or_label() {
    let exported = exported();
    let uses = used(r#"rate(tributary_records_consumd_total[5m]) tributary_tasks{stat="running"}"#);
    assert_eq!(
        uses,
        [
            ("tributary_records_consumd_total".to_string(), vec![]),
            ("tributary_tasks".to_string(), vec!["stat".to_string()]),
        ]
    );
    assert!(!exported.contains_key("tributary_records_consumd_total"));
    assert!(!exported["tributary_tasks"].contains("stat"));
    assert!(exported["tributary_tasks"].contains("state"));
}

#[test]
fn every_alert_rule_has_an_expression_and_the_dashboard_is_json() {
    let rules = read("docker/prometheus/alerts.yml");
    let alerts = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    let exprs = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
        .count();
    assert!(alerts >= 8, "{alerts} alert rules");
    assert_eq!(alerts, exprs, "one expr per alert");

    let dashboard: serde_json::Value =
        serde_json::from_str(&read("docker/grafana/tributary.json")).expect("dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let queries: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(queries.len() >= 15, "{} queries", queries.len());
    assert!(queries.iter().all(|q| q.contains("tributary_")));
}
