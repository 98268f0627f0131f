//! `--template`: the example templates in JSON and Avro, read back as written and by a
//! worker; errors found before anything is sent.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;
use tributary::kafka::embedded::EmbeddedCluster;
use tributary::kafka::reader::for_each_record;
use tributary::testkit::MockSchemaRegistry;
use tributary::Worker;

use super::*;

fn example_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/templates")
        .join(file)
}

fn example(file: &str) -> TemplateOptions {
    TemplateOptions::load(&example_path(file)).unwrap_or_else(|e| panic!("{e}"))
}

fn inline(text: &str, format: ValueFormat) -> TemplateOptions {
    TemplateOptions {
        template: Template::parse(text).unwrap_or_else(|e| panic!("{e}")),
        origin: "test.json".into(),
        format,
        schema_registry: None,
        schema_out: None,
    }
}

/// `(key, value)` of every record the template generates with `seed`, the timestamp
/// field removed (it follows the wall clock), sorted.
fn expected(t: &Template, seed: u64, n: u64) -> Vec<(Option<String>, Value)> {
    let mut g = t.generator(seed);
    let ts = t
        .timestamp_field()
        .expect("the examples name their timestamp");
    let mut out: Vec<_> = (0..n)
        .map(|_| {
            let r = g.next_record(0);
            let mut v = r.value.to_json_value();
            v.as_object_mut().unwrap().remove(ts);
            (r.key, v)
        })
        .collect();
    out.sort_by_key(|(k, v)| (k.clone(), v.to_string()));
    out
}

/// Every record of `topic` as `(key, JSON value)` with the timestamp field `ts` checked
/// to lie in `[from, to]` and removed, sorted; `decode` turns value bytes into JSON.
fn read_back(
    brokers: &str,
    topic: &str,
    ts: &str,
    (from, to): (i64, i64),
    decode: impl Fn(&[u8]) -> Value,
) -> Vec<(Option<String>, Value)> {
    let mut out = Vec::new();
    for_each_record(brokers, topic, Duration::from_millis(500), |key, value| {
        let key = key.map(|k| String::from_utf8(k.to_vec()).unwrap());
        let mut v = decode(value.expect("a value"));
        let at = v[ts].as_i64().unwrap_or_else(|| panic!("{ts} in {v}"));
        assert!((from..=to).contains(&at), "{ts} {at} not in [{from}, {to}]");
        v.as_object_mut().unwrap().remove(ts);
        out.push((key, v));
    })
    .unwrap();
    out.sort_by_key(|(k, v)| (k.clone(), v.to_string()));
    out
}

/// Both examples, in JSON: every record arrives, keyed by its key field, with every
/// field of the template and the values the seed gives; timestamps are the wall clock
/// less at most the jitter and lateness.
#[tokio::test]
async fn each_example_template_is_written_and_read_back() {
    let mock = EmbeddedCluster::start(1).unwrap();
    let brokers = mock.bootstrap().to_string();
    for (file, topic, key_field, oldest) in [
        ("orders.json", "gen-orders", "customer_id", 60_200),
        ("sensors.json", "gen-sensors", "sensor", 31_000),
    ] {
        mock.create_topic(topic, 3).unwrap();
        let t = example(file);
        let template = t.template.clone();
        let mut opts = GenerateOptions::new(brokers.clone(), topic, 2000);
        opts.seed = 11;
        opts.template = Some(t);
        let from = now_ms() - oldest;
        let report = generate(opts, CancellationToken::new()).await.unwrap();
        let to = now_ms();
        assert_eq!(report.records, 2000, "{file}");
        assert!(report.totals.is_empty());

        let b = brokers.clone();
        let got = tokio::task::spawn_blocking(move || {
            read_back(&b, topic, "ts", (from, to), |bytes| {
                serde_json::from_slice(bytes).expect("a JSON value")
            })
        })
        .await
        .unwrap();
        for (key, value) in &got {
            assert_eq!(
                key.as_deref(),
                value[key_field].as_str(),
                "{file}: the key is the key field"
            );
        }
        assert_eq!(got, expected(&template, 11, 2000), "{file}");
    }
}

/// Writes a config for one worker on the mock cluster with the given pipelines.
fn worker(dir: &Path, brokers: &str, pipelines: &str) -> Worker {
    let state = dir.join("state");
    let toml = format!(
        "[app]\nid = \"gen-avro\"\n[kafka]\nbootstrap_servers = \"{brokers}\"\n\
         [group]\nsession_timeout_ms = 6000\n[processing]\ncommit_interval_ms = 100\n\
         [state]\ndir = \"{}\"\n[http]\nlisten = \"off\"\n{pipelines}",
        state.display()
    );
    let path = dir.join("worker.toml");
    std::fs::write(&path, toml).unwrap();
    let config = tributary::config::load_with_env(&[path], std::iter::empty())
        .unwrap_or_else(|issues| panic!("{issues:#?}"));
    Worker::builder(config)
        .pipelines_from_config()
        .and_then(|b| b.build())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Records in `topic` (every partition, to the end).
fn count(brokers: &str, topic: &str) -> usize {
    let mut n = 0;
    for_each_record(brokers, topic, Duration::from_millis(200), |_, _| n += 1).unwrap();
    n
}

/// `--format avro`, plain (the template's schema, no framing) and through a schema
/// registry (the Confluent wire format): a worker with `source.format = "avro"` reads
/// both, with the schema file and with the registry, and its JSON output is exactly
/// what the template generated. The registry pipeline also shows each record's Kafka
/// timestamp (`timestamp`, with no `source.time`): the template's `ts`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_records_are_read_by_a_worker() {
    const N: u64 = 500;
    let mock = EmbeddedCluster::start(1).unwrap();
    for topic in ["avro-plain", "avro-reg", "plain-out", "reg-out"] {
        mock.create_topic(topic, 2).unwrap();
    }
    let brokers = mock.bootstrap().to_string();
    let registry = MockSchemaRegistry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();

    let from = now_ms() - 60_200;
    let mut plain = example("orders.json");
    plain.format = ValueFormat::Avro;
    let template = plain.template.clone();
    let mut registered = plain.clone();
    registered.schema_registry = Some(registry.url().to_string());
    // The plain run writes the schema file the worker reads them with.
    let schema = dir.path().join("order.avsc");
    plain.schema_out = Some(schema.clone());
    for (topic, t) in [("avro-plain", plain), ("avro-reg", registered)] {
        let mut opts = GenerateOptions::new(brokers.clone(), topic, N);
        opts.seed = 3;
        opts.template = Some(t);
        let report = generate(opts, CancellationToken::new()).await.unwrap();
        assert_eq!(report.records, N);
    }
    let ids = registry.versions("avro-reg-value");
    assert_eq!(
        ids.len(),
        1,
        "the schema is registered once under <topic>-value"
    );
    let b = brokers.clone();
    let headers = tokio::task::spawn_blocking(move || {
        let mut headers = BTreeSet::new();
        for_each_record(&b, "avro-reg", Duration::from_millis(200), |_, v| {
            headers.insert(v.unwrap()[..5].to_vec());
        })
        .unwrap();
        headers
    })
    .await
    .unwrap();
    let mut header = vec![0];
    header.extend_from_slice(&ids[0].to_be_bytes());
    assert_eq!(
        headers,
        BTreeSet::from([header]),
        "every record starts with the magic byte and the schema id"
    );

    let written: Value = serde_json::from_str(&std::fs::read_to_string(&schema).unwrap()).unwrap();
    assert_eq!(written, template.avro_schema().unwrap(), "--schema-out");
    let pipelines = format!(
        "[[pipeline]]\nname = \"plain\"\n\
         source = {{ topics = [\"avro-plain\"], format = \"avro\", schema = \"{}\" }}\n\
         sink = {{ topic = \"plain-out\" }}\n\
         [[pipeline]]\nname = \"reg\"\n\
         source = {{ topics = [\"avro-reg\"], format = \"avro\", registry_url = \"{}\" }}\n\
         sink = {{ topic = \"reg-out\" }}\n\
         steps = [ {{ map = \"{{'order': value, 'at': timestamp}}\" }} ]\n",
        schema.display(),
        registry.url()
    );
    let worker = worker(dir.path(), &brokers, &pipelines);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(worker.run(shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let b = brokers.clone();
        let done = tokio::task::spawn_blocking(move || {
            count(&b, "plain-out") as u64 >= N && count(&b, "reg-out") as u64 >= N
        })
        .await
        .unwrap();
        if done {
            break;
        }
        assert!(!run.is_finished(), "the worker stopped: {:?}", run.await);
        assert!(
            Instant::now() < deadline,
            "the worker did not process every record"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shutdown.cancel();
    run.await.unwrap().expect("the worker stops cleanly");
    let to = now_ms();

    let want = expected(&template, 3, N);
    let b = brokers.clone();
    let got = tokio::task::spawn_blocking(move || {
        read_back(&b, "plain-out", "ts", (from, to), |bytes| {
            serde_json::from_slice(bytes).expect("the worker writes JSON")
        })
    })
    .await
    .unwrap();
    assert_eq!(got, want, "plain-out");
    let b = brokers.clone();
    let got = tokio::task::spawn_blocking(move || {
        read_back(&b, "reg-out", "ts", (from, to), |bytes| {
            let out: Value = serde_json::from_slice(bytes).expect("JSON");
            assert_eq!(out["at"], out["order"]["ts"], "record timestamp = ts");
            out["order"].clone()
        })
    })
    .await
    .unwrap();
    assert_eq!(got, want, "reg-out");
}

/// Problems with a template, its Avro schema or the registry stop the run before it
/// connects to Kafka (the brokers here do not exist), each naming the place.
#[tokio::test]
async fn template_problems_are_reported_before_sending() {
    let run = |t: TemplateOptions| async move {
        let mut opts = GenerateOptions::new("127.0.0.1:1", "orders", 10);
        opts.template = Some(t);
        generate(opts, CancellationToken::new())
            .await
            .unwrap_err()
            .to_string()
    };
    let fields = r#"{"fields": {"zip-code": {"type": "integer", "min": 1, "max": 2}}}"#;
    let err = run(inline(fields, ValueFormat::Avro)).await;
    assert_eq!(
        err,
        "template test.json: fields.zip-code: \"zip-code\" is not a valid Avro field name \
         (letters, digits and _, not starting with a digit): rename it, or give the \
         schema as \"avro_schema\""
    );

    let misfit = r#"{"avro_schema": {"type": "record", "name": "R", "fields": [{"name": "qty", "type": "string"}]},
        "fields": {"qty": {"type": "integer", "min": 1, "max": 2}}}"#;
    let err = run(inline(misfit, ValueFormat::Avro)).await;
    assert!(
        err.starts_with(
            "writing Avro records of template test.json to topic orders: a record does \
             not fit the schema: qty: "
        ),
        "{err}"
    );

    let broken = r#"{"avro_schema": {"type": "record", "name": "R"},
        "fields": {"qty": {"type": "integer", "min": 1, "max": 2}}}"#;
    let err = run(inline(broken, ValueFormat::Avro)).await;
    assert!(
        err.starts_with(
            "writing Avro records of template test.json to topic orders: avro_schema: "
        ),
        "{err}"
    );

    let mut t = example("orders.json");
    t.format = ValueFormat::Avro;
    t.schema_registry = Some("http://127.0.0.1:1".into());
    let err = run(t).await;
    assert!(
        err.contains("subject orders-value") && err.contains("http://127.0.0.1:1"),
        "{err}"
    );

    let mut t = example("orders.json");
    t.schema_registry = Some("http://127.0.0.1:1".into());
    let err = run(t).await;
    assert!(
        err.contains("a schema registry is only used with the avro format"),
        "{err}"
    );
    let mut t = example("orders.json");
    t.schema_out = Some("order.avsc".into());
    let err = run(t).await;
    assert!(
        err.contains("a schema file is only written with the avro format"),
        "{err}"
    );
}

/// The two pipelines of docs/generate.md, run on the example templates' records in the
/// test kit (the orders pipeline on JSON instead of Avro): every record that passes the
/// filter is counted in a window or dropped as late; the sensor readings' lateness is
/// within the grace, the orders' is not.
#[test]
fn the_docs_pipelines_run_on_the_example_records() {
    use tributary::testkit::TestDriver;
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/generate.md"))
            .unwrap();
    let blocks: Vec<&str> = docs
        .split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert_eq!(blocks.len(), 2, "the orders and the sensors pipeline");
    // (pipeline block, template, source topic, sink topic, pipeline name, filter)
    type Passes = fn(&Value) -> bool;
    let cases: [(&str, &str, &str, &str, &str, Passes); 2] = [
        (
            blocks[0],
            "orders.json",
            "orders",
            "spend-per-customer",
            "spend",
            |v| v["status"] != "new",
        ),
        (
            blocks[1],
            "sensors.json",
            "readings",
            "sensor-minutes",
            "sensor-minutes",
            |v| v["calibrated"] == true,
        ),
    ];
    for (block, file, source, sink, name, passes) in cases {
        let block = block.replace(
            r#"format = "avro", registry_url = "http://127.0.0.1:8081""#,
            r#"format = "json""#,
        );
        let toml =
            format!("[app]\nid = \"docs\"\n[kafka]\nbootstrap_servers = \"embedded\"\n{block}");
        let cfg = tributary::config::load_str(&toml).unwrap_or_else(|e| panic!("{file}: {e:?}"));
        let mut d = TestDriver::from_config(&cfg)
            .unwrap_or_else(|e| panic!("{file}: {e:?}"))
            .partitions(3);
        let mut g = example(file).template.generator(42);
        let mut passed = 0;
        for i in 0..2000 {
            let r = g.next_record(1_767_225_600_000 + i * 50);
            if passes(&r.value.to_json_value()) {
                passed += 1;
            }
            let ts = r.timestamp.expect("the examples stamp their records");
            d.pipe(source, r.key.as_deref(), &r.value.to_json_string(), ts)
                .unwrap_or_else(|e| panic!("{file}: {e}"));
        }
        // The last update of each key's window has its count.
        let mut last: BTreeMap<(String, i64), Value> = BTreeMap::new();
        for out in d.read(sink) {
            let v = out.json();
            let start = v["window_start"].as_i64().unwrap();
            last.insert((out.key_str().unwrap().to_string(), start), v);
        }
        let count_field = if file == "orders.json" {
            "orders"
        } else {
            "readings"
        };
        let counted: u64 = last
            .values()
            .map(|v| v[count_field].as_u64().unwrap())
            .sum();
        let late = d.late_records(name);
        assert_eq!(
            counted + late,
            passed,
            "{file}: counted {counted}, late {late}"
        );
        if file == "orders.json" {
            assert!(late > 0, "a minute late is beyond the 5 s grace");
        } else {
            assert_eq!(late, 0, "30 s late is within the 45 s grace");
        }
    }
}

/// docs/generate.md shows both example templates as they are in config/templates.
#[test]
fn the_docs_show_the_example_templates() {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/generate.md"))
            .unwrap();
    for file in ["orders.json", "sensors.json"] {
        let text = std::fs::read_to_string(example_path(file)).unwrap();
        assert!(
            docs.contains(&format!("```json\n{text}```")),
            "docs/generate.md does not show config/templates/{file} as it is"
        );
    }
}
