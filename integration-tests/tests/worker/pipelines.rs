//! Declarative pipelines end to end on the real broker: a filter / map / key_by / windowed
//! aggregate pipeline over two workers, and malformed records going to the dead-letter topic.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use integration_tests::{
    serial, unique_name, wait_until, Broker, TotalsConfig, WorkerProcess, Workload,
};
use serde_json::{json, Value};
use tributary::pipeline::partitioner::partition_for_key;

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
    cfg.source_keys = r#", format = "json", time = "ts""#.into();
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
    // The repartition topic carries every record that passed the filter, keyed by user, each
    // in the partition the Java client's murmur2 gives its key: the producer (librdkafka's
    // murmur2 partitioner) and our implementation agree.
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
    for r in &repartition {
        let key = r
            .key
            .as_deref()
            .expect("repartitioned records have the user as key");
        assert_eq!(r.partition, partition_for_key(key, 4), "{:?}", r.key_str());
    }
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

const CLICK_SCHEMA: &str = r#"{"type":"record","name":"Click","fields":[{"name":"user","type":"string"},{"name":"amount","type":"double"}]}"#;
const DOUBLED_SCHEMA: &str = r#"{"type":"record","name":"Doubled","fields":[{"name":"user","type":"string"},{"name":"doubled","type":"double"}]}"#;

/// The Confluent wire format of a record `{user, <double>}` under schema `id`, written out by
/// hand: magic 0, the id (big endian), the string's zigzag length and bytes, the double (little
/// endian).
fn avro_wire(id: u32, user: &str, x: f64) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.push((user.len() as u8) << 1);
    out.extend_from_slice(user.as_bytes());
    out.extend_from_slice(&x.to_le_bytes());
    out
}

/// Avro in and out through the broker and a worker process, with schemas from a registry.
/// No real schema registry can run here (Confluent's and Karapace are not in the package
/// registries this machine reaches), so the registry is the test kit's in-process one, reached
/// by the worker over loopback HTTP; the bytes are checked against the wire format written out
/// by hand.
#[test]
fn avro_with_a_schema_registry_end_to_end() {
    let _serial = serial();
    let registry = tributary::testkit::MockSchemaRegistry::start().expect("registry");
    let broker = Broker::start();
    let input = unique_name("avro-in");
    let output = unique_name("avro-out");
    broker.create_topic(&input, 2);
    broker.create_topic(&output, 2);
    let in_id = registry.register(&format!("{input}-value"), CLICK_SCHEMA);

    let records: Vec<(String, Vec<u8>)> = (0..100)
        .map(|i| {
            (
                format!("u{}", i % 7),
                avro_wire(in_id, &format!("u{}", i % 7), f64::from(i) + 0.5),
            )
        })
        .chain([("bad".to_string(), b"{\"not\": \"avro\"}".to_vec())])
        .collect();
    broker.produce_raw(&input, &records);

    let dir = state_dir();
    let schema = dir.path().join("doubled.avsc");
    std::fs::write(&schema, DOUBLED_SCHEMA).unwrap();
    let mut cfg = TotalsConfig::new(
        &unique_name("app-avro"),
        &broker.bootstrap(),
        &input,
        &output,
        dir.path(),
    );
    cfg.pipeline = "avro".into();
    cfg.on_error = "dlq".into();
    cfg.source_keys = format!(r#", format = "avro", registry_url = "{}""#, registry.url());
    cfg.sink_keys = format!(
        r#", format = "avro", registry_url = "{}", schema = "{}""#,
        registry.url(),
        schema.display()
    );
    cfg.steps = "steps = [ { filter = \"amount >= 50.0\" }, { map = \"{'user': user, 'doubled': amount * 2.0}\" } ]\n".into();
    let toml = cfg.to_toml();
    let mut worker = WorkerProcess::spawn_named("worker", &toml);
    worker.wait_ready(READY);

    let dlq_topic = format!("{}-dlq", cfg.app_id);
    let (mut out, mut dlq) = (Vec::new(), Vec::new());
    let done = wait_until(LONG, Duration::from_secs(2), || {
        assert!(worker.try_status().is_none(), "worker exited");
        out = broker.consume_all(&output);
        dlq = broker.consume_all(&dlq_topic);
        out.len() >= 50 && !dlq.is_empty()
    });
    assert!(done, "{} outputs, {} dead letters", out.len(), dlq.len());
    let out_ids = registry.versions(&format!("{output}-value"));
    assert_eq!(out_ids.len(), 1, "the sink registered its schema");
    let mut got: Vec<Vec<u8>> = out.iter().map(|r| r.value.clone().unwrap()).collect();
    let mut want: Vec<Vec<u8>> = (50..100)
        .map(|i| {
            avro_wire(
                out_ids[0],
                &format!("u{}", i % 7),
                (f64::from(i) + 0.5) * 2.0,
            )
        })
        .collect();
    got.sort();
    want.sort();
    assert_eq!(
        got, want,
        "every record with amount >= 50, doubled, in the wire format"
    );
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        dlq[0].header("tributary.step").as_deref(),
        Some("source.format")
    );
    assert_eq!(worker.terminate().code(), Some(0));
}
