//! Declarative pipelines end to end on the real broker: a filter / map / key_by / windowed
//! aggregate pipeline over two workers, and malformed records going to the dead-letter topic.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use integration_tests::{
    serial, unique_name, wait_until, Broker, TotalsConfig, WorkerProcess, Workload,
};
use serde_json::{json, Value};

use crate::{state_dir, LONG, READY};

/// Window size of the windowed pipeline, ms.
const WINDOW_MS: u64 = 5_000;

const WINDOWED_STEPS: &str = r#"[[pipeline.steps]]
filter = "amount > 20"

[[pipeline.steps]]
map = "{'user': user, 'amount': amount * 2, 'ts': ts}"

[[pipeline.steps]]
key_by = "user"

[[pipeline.steps]]
[pipeline.steps.aggregate]
window = { kind = "tumbling", size = "5s", grace = "1h" }
fields = { count = "count()", total = "sum(amount)" }
"#;

/// (user, window_start) → {count, total, window_start, window_end}, computed from the input.
fn expected_windows(records: &[(String, Value)]) -> BTreeMap<(String, u64), Value> {
    let mut acc: BTreeMap<(String, u64), (u64, u64)> = BTreeMap::new();
    for (_, v) in records {
        let amount = v["amount"].as_u64().unwrap();
        if amount <= 20 {
            continue;
        }
        let ts = v["ts"].as_u64().unwrap();
        let start = ts - ts % WINDOW_MS;
        let e = acc
            .entry((v["user"].as_str().unwrap().to_string(), start))
            .or_default();
        e.0 += 1;
        e.1 += amount * 2;
    }
    acc.into_iter()
        .map(|((u, s), (count, total))| {
            let v = json!({"count": count, "total": total, "window_start": s, "window_end": s + WINDOW_MS});
            ((u, s), v)
        })
        .collect()
}

/// The last value per (key, window_start) of the output topic.
fn last_windows(broker: &Broker, topic: &str) -> BTreeMap<(String, u64), Value> {
    let mut out = BTreeMap::new();
    for r in broker.consume_all(topic) {
        if let (Some(k), Some(v)) = (r.key_str(), r.json()) {
            let start = v["window_start"].as_u64().unwrap_or(u64::MAX);
            out.insert((k, start), v);
        }
    }
    out
}

#[test]
fn windowed_pipeline_over_two_workers_matches_the_input() {
    let _serial = serial();
    let broker = Broker::start();
    let input = unique_name("pipe-in");
    let output = unique_name("pipe-out");
    broker.create_topic(&input, 4);
    broker.create_topic(&output, 4);

    // Keyed by something other than the user, so one user's records sit on every partition
    // and only the key_by brings them together.
    let w = Workload::new(20_000, 50, 0x5eed_0003);
    let records: Vec<(String, Value)> = w
        .records
        .iter()
        .enumerate()
        .map(|(i, (_, v))| (format!("k{}", i % 13), v.clone()))
        .collect();
    broker.produce_json(&input, &records);
    let expected = expected_windows(&records);

    let (s1, s2) = (state_dir(), state_dir());
    let mut cfg = TotalsConfig::new(
        &unique_name("app-pipe"),
        &broker.bootstrap(),
        &input,
        &output,
        s1.path(),
    );
    cfg.pipeline = "windows".into();
    cfg.source_extra = r#", time = "ts""#.into();
    cfg.steps = WINDOWED_STEPS.into();
    let mut w1 = WorkerProcess::spawn_named("w1", &cfg.to_toml());
    let mut w2 = WorkerProcess::spawn_named("w2", &cfg.for_another_worker(s2.path()).to_toml());
    w1.wait_ready(READY);
    w2.wait_ready(READY);

    let mut got = BTreeMap::new();
    let done = wait_until(LONG, Duration::from_secs(2), || {
        assert!(w1.try_status().is_none(), "w1 exited");
        assert!(w2.try_status().is_none(), "w2 exited");
        got = last_windows(&broker, &output);
        got == expected
    });
    if !done {
        let wrong: Vec<_> = expected
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(*v))
            .take(5)
            .map(|(k, v)| format!("{k:?}: want {v}, got {:?}", got.get(k)))
            .collect();
        let extra = got.keys().filter(|k| !expected.contains_key(*k)).count();
        panic!(
            "{} of {} windows differ ({extra} unexpected), e.g. {wrong:#?}",
            wrong.len(),
            expected.len()
        );
    }
    // Both workers did part of the work.
    for w in [&w1, &w2] {
        let consumed = w.metric(crate::CONSUMED).unwrap_or(0.0);
        assert!(consumed > 0.0, "{} consumed nothing", w.name());
    }
    // The repartition topic carries every record that passed the filter, keyed by user.
    let repartition = broker.consume_all(&format!("{}-windows-repartition", cfg.app_id));
    let passed = records
        .iter()
        .filter(|(_, v)| v["amount"].as_u64().unwrap() > 20)
        .count();
    assert!(
        repartition.len() >= passed,
        "{} of {passed} records repartitioned",
        repartition.len()
    );
    assert_eq!(w1.terminate().code(), Some(0));
    assert_eq!(w2.terminate().code(), Some(0));
}

#[test]
fn malformed_records_go_to_the_dead_letter_topic_and_good_ones_are_processed() {
    let _serial = serial();
    let broker = Broker::start();
    let input = unique_name("dlq-in");
    let output = unique_name("dlq-out");
    broker.create_topic(&input, 2);
    broker.create_topic(&output, 2);

    let bad: [&[u8]; 4] = [
        br#"{"user": "u1", "amount": "#,        // truncated JSON
        br#"{"user": "u2"}"#,                   // no amount
        br#"{"user": "u3", "amount": "many"}"#, // amount is text
        &[0xff, 0xfe, 0x00],                    // not text at all
    ];
    let mut records = Vec::new();
    for i in 0..200u32 {
        let value = match i % 50 {
            7 => bad[(i / 50) as usize].to_vec(),
            _ => serde_json::to_vec(&json!({"user": format!("u{}", i % 5), "amount": i})).unwrap(),
        };
        records.push((format!("key-{i}"), value));
    }
    broker.produce_raw(&input, &records);
    let bad_keys: Vec<String> = (0..200)
        .filter(|i| i % 50 == 7)
        .map(|i| format!("key-{i}"))
        .collect();

    let state = state_dir();
    let mut cfg = TotalsConfig::new(
        &unique_name("app-dlq"),
        &broker.bootstrap(),
        &input,
        &output,
        state.path(),
    );
    cfg.pipeline = "doubler".into();
    cfg.on_error = "dlq".into();
    cfg.steps = "steps = [ { filter = \"amount >= 0\" }, { map = \"{'user': user, 'double': amount * 2}\" } ]\n".into();
    let dlq_topic = format!("{}-dlq", cfg.app_id);
    let mut worker = WorkerProcess::spawn_named("worker", &cfg.to_toml());
    worker.wait_ready(READY);

    let (mut out, mut dlq) = (Vec::new(), Vec::new());
    let done = wait_until(LONG, Duration::from_secs(2), || {
        assert!(worker.try_status().is_none(), "worker exited");
        out = broker.consume_all(&output);
        dlq = broker.consume_all(&dlq_topic);
        out.len() >= 196 && dlq.len() >= 4
    });
    assert!(done, "{} outputs, {} dead letters", out.len(), dlq.len());
    assert_eq!(out.len(), 196, "every good record processed once");
    assert_eq!(dlq.len(), 4);

    // Each dead letter is the original record, with where it came from and why.
    let originals: HashMap<String, integration_tests::Rec> = broker
        .consume_all(&input)
        .into_iter()
        .map(|r| (r.key_str().unwrap(), r))
        .collect();
    for d in &dlq {
        let key = d.key_str().unwrap();
        assert!(bad_keys.contains(&key), "{key} is not a bad record");
        let original = &originals[&key];
        assert_eq!(d.value, original.value, "{key}: value bytes unchanged");
        assert_eq!(d.header("tributary.topic").as_deref(), Some(input.as_str()));
        assert_eq!(
            d.header("tributary.partition"),
            Some(original.partition.to_string())
        );
        assert_eq!(
            d.header("tributary.offset"),
            Some(original.offset.to_string())
        );
        assert_eq!(d.header("tributary.pipeline").as_deref(), Some("doubler"));
        let step = d.header("tributary.step").unwrap();
        let error = d.header("tributary.error").unwrap();
        let json_with_user = original.value.as_deref().unwrap().starts_with(b"{\"user");
        if json_with_user && error.contains("amount") {
            assert_eq!(step, "steps[0].filter", "{key}: {error}");
        } else {
            assert_eq!(step, "source.format", "{key}: {error}");
        }
    }
    assert_eq!(
        worker.metric("tributary_records_dead_lettered_total"),
        Some(4.0)
    );
    assert_eq!(worker.terminate().code(), Some(0));
}
