//! Declarative pipelines end to end on the real broker: a filter / map / key_by / windowed
//! aggregate pipeline over two workers, malformed records going to the dead-letter topic, Avro
//! through a schema registry (written by hand and by `tributary generate --template`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use integration_tests::{
    committed_offsets, repo_root, run_cli, serial, unique_name, wait_until, Broker, Rec,
    SchemaRegistry, TotalsConfig, WorkerProcess, Workload,
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

/// Avro in and out through the broker and a worker process, with schemas from the test kit's
/// in-process registry (`MockSchemaRegistry`, what users get for their own tests), reached by
/// the worker over loopback HTTP; the bytes are checked against the wire format written out
/// by hand. `avro_through_a_real_schema_registry` does the same against a real registry.
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

/// `Click` with a field added (with a default): a second version of the input's subject.
const CLICK_V2_SCHEMA: &str = r#"{"type":"record","name":"Click","fields":[{"name":"user","type":"string"},{"name":"amount","type":"double"},{"name":"country","type":"string","default":"-"}]}"#;

/// The Confluent wire format of `value` under schema `id`, the datum written by apache-avro
/// (not by tributary's codec).
fn wire(id: u32, schema: &apache_avro::Schema, value: apache_avro::types::Value) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend(apache_avro::to_avro_datum(schema, value).expect("encode test input"));
    out
}

/// Decodes an output record as a reader of the topic would: the schema id from the wire
/// format, the writer schema fetched from the registry by that id, the datum decoded with it
/// (and nothing left over). Returns (schema id, key, user, doubled).
fn decode_doubled(registry: &SchemaRegistry, rec: &Rec) -> (u32, String, String, f64) {
    use apache_avro::types::Value as Avro;
    let bytes = rec.value.as_deref().expect("a value");
    assert!(
        bytes.len() > 5 && bytes[0] == 0,
        "not the wire format: {bytes:?}"
    );
    let id = u32::from_be_bytes(bytes[1..5].try_into().unwrap());
    let text = registry
        .schema(id)
        .unwrap_or_else(|| panic!("output schema id {id} is not in the registry"));
    let schema = apache_avro::Schema::parse_str(&text).expect("the registry's schema parses");
    let mut datum = &bytes[5..];
    let value = apache_avro::from_avro_datum(&schema, &mut datum, None).expect("decodes");
    assert!(datum.is_empty(), "{} bytes after the datum", datum.len());
    let Avro::Record(fields) = value else {
        panic!("not a record: {value:?}")
    };
    match fields.as_slice() {
        [(u, Avro::String(user)), (d, Avro::Double(doubled))] if u == "user" && d == "doubled" => {
            (id, rec.key_str().expect("a key"), user.clone(), *doubled)
        }
        other => panic!("not a Doubled record: {other:?}"),
    }
}

/// Avro in and out through a real schema registry (Apicurio Registry's Confluent API, see
/// `SchemaRegistry`): input written under two versions of its subject, registered in the
/// registry, and one record with an id the registry does not know; the worker fetches each
/// writer schema by id, registers its sink's schema, and writes the wire format. The output
/// is decoded through the registry (id from the record, schema from the registry) and checked
/// exactly; the unknown id is dead-lettered with the registry's answer.
#[test]
fn avro_through_a_real_schema_registry() {
    use apache_avro::types::Value as Avro;
    let _serial = serial();
    let registry = SchemaRegistry::start();
    let broker = Broker::start();
    let input = unique_name("avro-real-in");
    let output = unique_name("avro-real-out");
    broker.create_topic(&input, 2);
    broker.create_topic(&output, 2);

    let v1 = apache_avro::Schema::parse_str(CLICK_SCHEMA).unwrap();
    let v2 = apache_avro::Schema::parse_str(CLICK_V2_SCHEMA).unwrap();
    let subject = format!("{input}-value");
    let v1_id = registry.register(&subject, CLICK_SCHEMA);
    let v2_id = registry.register(&subject, CLICK_V2_SCHEMA);
    assert_eq!(registry.versions(&subject), vec![v1_id, v2_id]);
    let unknown_id = v1_id.max(v2_id) + 1000;
    assert_eq!(registry.schema(unknown_id), None);

    // Even i under version 1, odd i under version 2.
    let click = |i: u32| {
        let user = Avro::String(format!("u{}", i % 7));
        let amount = Avro::Double(f64::from(i) + 0.5);
        if i.is_multiple_of(2) {
            let v = Avro::Record(vec![("user".into(), user), ("amount".into(), amount)]);
            wire(v1_id, &v1, v)
        } else {
            let country = Avro::String(format!("c{i}"));
            let fields = vec![
                ("user".into(), user),
                ("amount".into(), amount),
                ("country".into(), country),
            ];
            wire(v2_id, &v2, Avro::Record(fields))
        }
    };
    let orphan = {
        let mut bytes = click(60);
        bytes[1..5].copy_from_slice(&unknown_id.to_be_bytes());
        bytes
    };
    let records: Vec<(String, Vec<u8>)> = (0..100)
        .map(|i| (format!("u{}", i % 7), click(i)))
        .chain([("orphan".to_string(), orphan.clone())])
        .collect();
    broker.produce_raw(&input, &records);

    let dir = state_dir();
    let schema = dir.path().join("doubled.avsc");
    std::fs::write(&schema, DOUBLED_SCHEMA).unwrap();
    let mut cfg = TotalsConfig::new(
        &unique_name("app-avro-real"),
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
    let mut worker = WorkerProcess::spawn_named("worker", &cfg.to_toml());
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
    assert_eq!(out_ids.len(), 1, "the sink registered its schema once");
    let registered = registry.schema(out_ids[0]).unwrap();
    assert_eq!(
        apache_avro::Schema::parse_str(&registered).unwrap(),
        apache_avro::Schema::parse_str(DOUBLED_SCHEMA).unwrap(),
        "the sink registered its schema file"
    );
    let mut got: Vec<(u32, String, String, f64)> =
        out.iter().map(|r| decode_doubled(&registry, r)).collect();
    let mut want: Vec<(u32, String, String, f64)> = (50..100)
        .map(|i| {
            let user = format!("u{}", i % 7);
            (out_ids[0], user.clone(), user, (f64::from(i) + 0.5) * 2.0)
        })
        .collect();
    let order = |a: &(u32, String, String, f64), b: &(u32, String, String, f64)| {
        (&a.1, &a.2, a.3.to_bits()).cmp(&(&b.1, &b.2, b.3.to_bits()))
    };
    got.sort_by(order);
    want.sort_by(order);
    assert_eq!(
        got, want,
        "every record with amount >= 50 (of both input versions), doubled, under the sink's id"
    );

    assert_eq!(dlq.len(), 1, "only the record with the unknown id failed");
    assert_eq!(dlq[0].value.as_deref(), Some(orphan.as_slice()));
    assert_eq!(
        dlq[0].header("tributary.step").as_deref(),
        Some("source.format")
    );
    let reason = dlq[0].header("tributary.error").unwrap_or_default();
    assert!(
        reason.contains(&format!("schema id {unknown_id}")) && reason.contains("404"),
        "the reason names the id and the registry's answer: {reason}"
    );
    assert_eq!(worker.terminate().code(), Some(0));
}

/// `tributary generate --template config/templates/orders.json --format avro
/// --schema-registry URL` against Apache Kafka and a real registry: the template's schema is
/// registered once under `<topic>-value`, every record is in the wire format with its id and
/// keyed by its customer, and a worker with `source.format = "avro"` and the registry reads
/// them back as exactly the records the template gives with that seed.
#[test]
fn generated_avro_orders_are_read_through_a_real_schema_registry() {
    const N: usize = 300;
    let _serial = serial();
    let registry = SchemaRegistry::start();
    let broker = Broker::start();
    let input = unique_name("gen-orders");
    let output = unique_name("gen-orders-out");
    broker.create_topic(&input, 3);
    broker.create_topic(&output, 3);

    let template_path = repo_root().join("config/templates/orders.json");
    let out = run_cli(&[
        "generate",
        "--brokers",
        &broker.bootstrap(),
        "--topic",
        &input,
        "--records",
        &N.to_string(),
        "--seed",
        "9",
        "--quiet",
        "--template",
        template_path.to_str().unwrap(),
        "--format",
        "avro",
        "--schema-registry",
        &registry.url(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "generate failed: {stderr}");
    assert!(stderr.contains(&format!("wrote {N} records")), "{stderr}");

    let template =
        tributary_generator::Template::parse(&std::fs::read_to_string(&template_path).unwrap())
            .unwrap();
    let ids = registry.versions(&format!("{input}-value"));
    assert_eq!(ids.len(), 1, "registered once under <topic>-value");
    assert_eq!(
        apache_avro::Schema::parse_str(&registry.schema(ids[0]).unwrap()).unwrap(),
        apache_avro::Schema::parse_str(&template.avro_schema().unwrap().to_string()).unwrap(),
        "the registered schema is the template's"
    );
    let written = broker.consume_all(&input);
    assert_eq!(written.len(), N);
    for r in &written {
        let v = r.value.as_deref().unwrap();
        assert_eq!(v[0], 0, "magic byte");
        assert_eq!(u32::from_be_bytes(v[1..5].try_into().unwrap()), ids[0]);
        assert!(r.key_str().unwrap().starts_with("customer-"));
    }

    let dir = state_dir();
    let mut cfg = TotalsConfig::new(
        &unique_name("app-gen-orders"),
        &broker.bootstrap(),
        &input,
        &output,
        dir.path(),
    );
    cfg.pipeline = "orders".into();
    cfg.source_keys = format!(r#", format = "avro", registry_url = "{}""#, registry.url());
    cfg.steps = String::new();
    let mut worker = WorkerProcess::spawn_named("worker", &cfg.to_toml());
    worker.wait_ready(READY);
    let mut got = Vec::new();
    let done = wait_until(LONG, Duration::from_secs(1), || {
        assert!(worker.try_status().is_none(), "worker exited");
        got = broker.consume_all(&output);
        got.len() >= N
    });
    assert!(done, "{} of {N} records out", got.len());
    assert_eq!(worker.terminate().code(), Some(0));

    // The worker's JSON output, the wall-clock `ts` aside, is the template's sequence.
    let without_ts = |mut v: Value| {
        let ts = v.as_object_mut().unwrap().remove("ts");
        assert!(ts
            .and_then(|t| t.as_i64())
            .is_some_and(|t| t > 1_600_000_000_000));
        v
    };
    let mut read: Vec<(String, Value)> = got
        .iter()
        .map(|r| {
            (
                r.key_str().unwrap(),
                without_ts(r.json().expect("JSON out")),
            )
        })
        .collect();
    let mut g = template.generator(9);
    let mut want: Vec<(String, Value)> = (0..N)
        .map(|_| {
            let r = g.next_record(1_700_000_000_000);
            (r.key.unwrap(), without_ts(r.value.to_json_value()))
        })
        .collect();
    let order = |a: &(String, Value), b: &(String, Value)| {
        (&a.0, a.1.to_string()).cmp(&(&b.0, b.1.to_string()))
    };
    read.sort_by(order);
    want.sort_by(order);
    assert_eq!(read, want);
}

/// A record too late for its window, under `on_error = "fail"`: the worker drops it, counts it
/// in `tributary_late_records_total{pipeline}` and keeps running; every window result is exact
/// (without the late record), and the input offsets are committed past it.
#[test]
fn a_late_record_is_dropped_and_counted_not_an_error() {
    let _serial = serial();
    let broker = Broker::start();
    let input = unique_name("late-in");
    let output = unique_name("late-out");
    // One partition: one task, one stream time for all records, in this order.
    broker.create_topic(&input, 1);
    broker.create_topic(&output, 1);
    let rec =
        |key: &str, ts: u64, amount: u64| (key.to_string(), json!({"ts": ts, "amount": amount}));
    let records = [
        rec("a", 1_000, 1),
        rec("a", 2_000, 2),
        rec("b", 3_000, 4),
        rec("a", 15_000, 8), // stream time 15 s: [0, 10 s) has closed (no grace)
        rec("a", 4_000, 16), // late: its only window has closed
        rec("b", 16_000, 32),
    ];
    broker.produce_json(&input, &records);
    let window = |count: u64, total: u64, start: u64| json!({"count": count, "total": total, "window_start": start, "window_end": start + 10_000});
    let expected = BTreeMap::from([
        (("a".to_string(), 0), window(2, 3, 0)),
        (("b".to_string(), 0), window(1, 4, 0)),
        (("a".to_string(), 10_000), window(1, 8, 10_000)),
        (("b".to_string(), 10_000), window(1, 32, 10_000)),
    ]);

    let state = state_dir();
    let mut cfg = TotalsConfig::new(
        &unique_name("app-late"),
        &broker.bootstrap(),
        &input,
        &output,
        state.path(),
    );
    assert_eq!(cfg.on_error, "fail");
    cfg.pipeline = "late".into();
    cfg.source_keys = r#", format = "json", time = "ts""#.into();
    cfg.steps = r#"[[pipeline.steps]]
[pipeline.steps.aggregate]
window = { kind = "tumbling", size = "10s" }
fields = { count = "count()", total = "sum(amount)" }
"#
    .into();
    let mut w = WorkerProcess::spawn_named("w", &cfg.to_toml());
    w.wait_ready(READY);

    let late = "tributary_late_records_total{pipeline=\"late\"}";
    let mut got = BTreeMap::new();
    let mut committed = None;
    let done = wait_until(LONG, Duration::from_millis(500), || {
        assert!(
            w.try_status().is_none(),
            "the worker exited on a late record"
        );
        got = last_windows(&broker, &output);
        committed = committed_offsets(&broker.bootstrap(), &cfg.app_id, &input)
            .ok()
            .and_then(|c| c.get(&0).copied());
        got == expected && committed == Some(records.len() as i64) && w.metric(late) == Some(1.0)
    });
    assert!(
        done,
        "want windows {expected:?}, got {got:?}; committed {committed:?}; late {:?}",
        w.metric(late)
    );
    assert!(w.is_alive(), "still running");
    let status = w.terminate();
    assert_eq!(status.code(), Some(0), "clean exit after SIGTERM: {status}");
}
