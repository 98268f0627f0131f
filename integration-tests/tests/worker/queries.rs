//! Queries answered by any worker: `/state/<store>/<key>` on every worker gives the owner's
//! answer (forwarded, and saying who served it), windowed stores list their windows, and
//! `/cluster` shows every worker with its tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use integration_tests::{
    check_exact, open_transaction, serial, unique_name, wait_until, Broker, HttpAnswer, KeyedView,
    TotalsConfig, WorkerProcess, Workload,
};
use serde_json::{json, Value};
use tributary::pipeline::partitioner::{crc32_partition_for_key, partition_for_key};

use crate::{state_dir, wait_all_committed, wait_all_running, wait_for_totals, LONG, READY};

const PARTITIONS: i32 = 6;
/// Window size of the windowed pipeline, ms.
const WINDOW_MS: u64 = 1_000;

/// A second pipeline, `windows`, before the totals one (so its two topologies, split by the
/// `key_by`, are 0 and 1, and `totals` is 2): tumbling windows of the users' amounts, re-keyed
/// by user through the repartition topic. The grace keeps every window in the store.
fn windows_pipeline(input: &str, output: &str) -> String {
    format!(
        r#"[[pipeline]]
name = "windows"
source = {{ topics = ["{input}"], format = "json", time = "ts" }}
sink = {{ topic = "{output}", format = "json" }}

[[pipeline.steps]]
key_by = "user"

[[pipeline.steps]]
[pipeline.steps.aggregate]
window = {{ kind = "tumbling", size = "1s", grace = "1h" }}
fields = {{ count = "count()", total = "sum(amount)" }}

"#
    )
}

/// The task (`<topology>_<partition>`) holding `key` of the `totals` and `windows` stores.
fn totals_task(key: &str) -> String {
    format!("2_{}", partition_for_key(key.as_bytes(), PARTITIONS))
}
fn windows_task(key: &str) -> String {
    format!("1_{}", partition_for_key(key.as_bytes(), PARTITIONS))
}

/// Task id -> the address of the worker whose `/cluster` entry lists it as active.
type Owners = BTreeMap<String, String>;

/// Parses a `/cluster` answer: the owners of every task, once the workers at `addresses` are
/// listed with disjoint active tasks covering all tasks of `topologies` topologies, and the
/// group is settled; else why not.
fn owners(
    cluster: &Value,
    addresses: &BTreeSet<String>,
    topologies: usize,
) -> Result<Owners, String> {
    if !cluster["problem"].is_null() {
        return Err(format!("problem: {}", cluster["problem"]));
    }
    let workers = cluster["workers"].as_array().ok_or("no workers array")?;
    let listed: BTreeSet<String> = workers
        .iter()
        .filter_map(|w| w["address"].as_str().map(str::to_string))
        .collect();
    if &listed != addresses {
        return Err(format!("workers {listed:?}, expected {addresses:?}"));
    }
    let mut owners = Owners::new();
    for w in workers {
        let addr = w["address"].as_str().unwrap_or_default();
        if !w["error"].is_null() || w["tasks"].is_null() {
            return Err(format!("{addr}: /tasks unreadable: {}", w["error"]));
        }
        if !w["restoring"].as_array().is_some_and(Vec::is_empty) {
            return Err(format!("{addr} is restoring {}", w["restoring"]));
        }
        for t in w["active"].as_array().into_iter().flatten() {
            let t = t.as_str().unwrap_or_default().to_string();
            if let Some(other) = owners.insert(t.clone(), addr.to_string()) {
                return Err(format!("task {t} is active on {other} and {addr}"));
            }
        }
        // Its own /tasks agrees with the group: every active task runs there.
        let running: BTreeSet<&str> = w["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["state"] == "running")
            .filter_map(|t| t["id"].as_str())
            .collect();
        let active: BTreeSet<&str> = w["active"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if running != active {
            return Err(format!("{addr}: running {running:?}, active {active:?}"));
        }
        let lag = w["lag"].as_i64().ok_or(format!("{addr}: no lag"))?;
        if lag < 0 {
            return Err(format!("{addr}: lag {lag}"));
        }
    }
    let all: BTreeSet<String> = (0..topologies)
        .flat_map(|t| (0..PARTITIONS).map(move |p| format!("{t}_{p}")))
        .collect();
    let covered: BTreeSet<String> = owners.keys().cloned().collect();
    if covered != all {
        return Err(format!("active tasks {covered:?}, expected {all:?}"));
    }
    if owners.values().collect::<BTreeSet<_>>().len() != addresses.len() {
        return Err(format!("not every worker has a task: {owners:?}"));
    }
    Ok(owners)
}

/// GET `path` on `w`, polled while it answers 503 (a rebalance in progress).
fn query(w: &WorkerProcess, path: &str) -> HttpAnswer {
    let mut last = None;
    wait_until(LONG, Duration::from_millis(200), || {
        let a = w
            .get_with_headers(path)
            .unwrap_or_else(|e| panic!("{} GET {path}: {e:#}", w.name()));
        let done = a.status != 503;
        last = Some(a);
        done
    });
    let a = last.expect("queried at least once");
    assert_ne!(
        a.status,
        503,
        "{} GET {path} stayed 503: {}",
        w.name(),
        a.body
    );
    a
}

/// Polls `/cluster` on every worker until each lists all of them with disjoint active tasks
/// covering the `topologies` topologies' tasks (see [`owners`]); they must agree on the owners.
fn settled_owners(workers: &[&WorkerProcess], app: &str, topologies: usize) -> Owners {
    let addresses: BTreeSet<String> = workers.iter().map(|w| w.http_addr().to_string()).collect();
    let mut owners_seen = Vec::new();
    for w in workers {
        let mut last = String::new();
        let mut found = None;
        let ok = wait_until(LONG, Duration::from_millis(500), || {
            let (status, body) = w.get("/cluster").expect("GET /cluster");
            let cluster: Value = serde_json::from_str(&body).expect("/cluster is JSON");
            assert_eq!(status, 200, "{body}");
            assert_eq!(cluster["group"], app);
            assert_eq!(cluster["served_by"], w.http_addr());
            match owners(&cluster, &addresses, topologies) {
                Ok(o) => {
                    found = Some(o);
                    true
                }
                Err(e) => {
                    last = format!("{e}\n{body}");
                    false
                }
            }
        });
        assert!(ok, "{}: /cluster never settled: {last}", w.name());
        owners_seen.push(found.expect("settled"));
    }
    assert!(
        owners_seen.windows(2).all(|p| p[0] == p[1]),
        "workers disagree on ownership: {owners_seen:#?}"
    );
    owners_seen.swap_remove(0)
}

/// Every key of `sink` (the totals pipeline's output) queried on every worker: the sink's
/// final value, served by the owner of the key's task (`task_of`). Returns how many answers
/// each worker forwarded.
fn check_every_key(
    workers: &[&WorkerProcess],
    owners: &Owners,
    sink: &std::collections::HashMap<String, Value>,
    task_of: impl Fn(&str) -> String,
) -> BTreeMap<String, usize> {
    let mut forwarded = BTreeMap::new();
    for (key, sink_value) in sink {
        let task = task_of(key);
        let owner = &owners[&task];
        for w in workers {
            let a = query(w, &format!("/state/totals/{key}"));
            assert_eq!(
                a.status,
                200,
                "{} /state/totals/{key}: {}",
                w.name(),
                a.body
            );
            let value: Value = serde_json::from_str(&a.body).expect("a JSON value");
            assert_eq!(&value, sink_value, "{} /state/totals/{key}", w.name());
            assert_eq!(
                a.header("tributary-served-by"),
                Some(owner.as_str()),
                "{} /state/totals/{key} (task {task})",
                w.name(),
            );
            if owner != w.http_addr() {
                *forwarded.entry(w.name().to_string()).or_insert(0) += 1;
            }
        }
    }
    forwarded
}

#[test]
fn any_worker_answers_for_any_key() {
    let _serial = serial();
    let broker = Broker::start();
    let input = unique_name("query-in");
    let output = unique_name("query-out");
    let win_input = unique_name("query-win-in");
    let win_output = unique_name("query-win-out");
    for t in [&input, &output, &win_input, &win_output] {
        broker.create_topic(t, PARTITIONS);
    }

    let (s1, s2, s3) = (state_dir(), state_dir(), state_dir());
    let mut c1 = TotalsConfig::new(
        &unique_name("app-query"),
        &broker.bootstrap(),
        &input,
        &output,
        s1.path(),
    );
    c1.extra = windows_pipeline(&win_input, &win_output);
    let c2 = c1.for_another_worker(s2.path());
    let c3 = c1.for_another_worker(s3.path());
    let mut w1 = WorkerProcess::spawn_named("w1", &c1.to_toml());
    let mut w2 = WorkerProcess::spawn_named("w2", &c2.to_toml());
    let mut w3 = WorkerProcess::spawn_named("w3", &c3.to_toml());
    for w in [&mut w1, &mut w2, &mut w3] {
        w.wait_ready(READY);
    }
    wait_all_running(&[&w1, &w2, &w3], 3 * PARTITIONS, "three workers");

    // Partitioned as the Java client does: where the worker looks for a source key. (The
    // windowed pipeline's keys are placed by its key_by, which always does so.)
    let totals = Workload::new(3_000, 60, 0x5eed_0a01);
    broker.produce_json_murmur2(&input, &totals.records);
    // Keyed by something other than the user: only the key_by brings a user's records together.
    let windowed: Vec<(String, Value)> = Workload::new(3_000, 30, 0x5eed_0a02)
        .records
        .into_iter()
        .enumerate()
        .map(|(i, (_, v))| (format!("k{}", i % 7), v))
        .collect();
    broker.produce_json(&win_input, &windowed);

    let expected = totals.expected();
    let mut view = KeyedView::open(&broker.bootstrap(), &output).unwrap();
    wait_for_totals(&mut view, &expected, LONG, &mut [&mut w1, &mut w2, &mut w3]);
    // Committed to the end: every task's store holds its final state (written with commits).
    let app = c1.app_id.clone();
    wait_all_committed(&broker.bootstrap(), &app, &input, PARTITIONS);
    wait_all_committed(&broker.bootstrap(), &app, &win_input, PARTITIONS);
    let repartition = format!("{app}-windows-repartition");
    wait_all_committed(&broker.bootstrap(), &app, &repartition, PARTITIONS);
    view.refresh().unwrap();
    if let Err(e) = check_exact(&expected, &view.map) {
        panic!("sink: {e}");
    }
    // The windows as the sink last wrote them: user -> start -> value.
    let mut sink_windows: BTreeMap<String, BTreeMap<u64, Value>> = BTreeMap::new();
    for r in broker.consume_all(&win_output) {
        if let (Some(k), Some(v)) = (r.key_str(), r.json()) {
            let start = v["window_start"].as_u64().expect("window_start");
            sink_windows.entry(k).or_default().insert(start, v);
        }
    }
    let users_in_input: BTreeSet<&str> = windowed
        .iter()
        .filter_map(|(_, v)| v["user"].as_str())
        .collect();
    assert_eq!(
        sink_windows.len(),
        users_in_input.len(),
        "users with windows"
    );

    // /cluster on every worker: the same three workers, tasks disjoint and covering all.
    let workers = [&w1, &w2, &w3];
    let owners = &settled_owners(&workers, &app, 3);

    // Every key on every worker: the sink's final value, served by the key's owner.
    let forwarded = check_every_key(&workers, owners, &view.map, totals_task);
    assert_eq!(
        forwarded.len(),
        3,
        "each worker forwarded some: {forwarded:?}"
    );

    // Windows of every user, on every worker, as the sink last wrote them.
    for (user, windows) in &sink_windows {
        let expected: Vec<Value> = windows
            .iter()
            .map(|(start, v)| json!({ "start": start, "end": start + WINDOW_MS, "value": v }))
            .collect();
        let owner = &owners[&windows_task(user)];
        let first = *windows.keys().next().expect("a window");
        for w in workers {
            let path = format!("/state/windows/{user}?from=0&to={}", u64::MAX >> 2);
            let a = query(w, &path);
            assert_eq!(a.status, 200, "{} {path}: {}", w.name(), a.body);
            let got: Value = serde_json::from_str(&a.body).expect("a JSON list");
            assert_eq!(got, Value::Array(expected.clone()), "{} {path}", w.name());
            assert_eq!(a.header("tributary-served-by"), Some(owner.as_str()));
            // A range holding only the first window.
            let path = format!("/state/windows/{user}?from={first}&to={first}");
            let got: Value = serde_json::from_str(&query(w, &path).body).unwrap();
            assert_eq!(
                got,
                Value::Array(expected[..1].to_vec()),
                "{} {path}",
                w.name()
            );
        }
    }

    // Absent keys answer 404 from their owner; unknown stores 404 everywhere.
    for w in workers {
        let a = query(w, "/state/totals/nobody");
        assert_eq!(a.status, 404, "{}: {}", w.name(), a.body);
        assert_eq!(
            a.header("tributary-served-by"),
            Some(owners[&totals_task("nobody")].as_str())
        );
        let a = query(w, "/state/nosuchstore/user-1");
        assert_eq!(a.status, 404, "{}: {}", w.name(), a.body);
        assert!(a.body.contains("nosuchstore"), "{}", a.body);
    }

    for w in [&mut w1, &mut w2, &mut w3] {
        assert_eq!(w.terminate().code(), Some(0), "{} clean exit", w.name());
    }
}

/// The same under the consumer protocol (KIP-848), whose groups Apache Kafka describes only
/// through ConsumerGroupDescribe; the input is written by a librdkafka producer with its default
/// partitioner (crc32 of the key), which `source.partitioner = "crc32"` declares.
#[test]
fn any_worker_answers_for_any_key_under_the_consumer_protocol() {
    let _serial = serial();
    let broker = Broker::start();
    let input = unique_name("qc-in");
    let output = unique_name("qc-out");
    for t in [&input, &output] {
        broker.create_topic(t, PARTITIONS);
    }
    let (s1, s2) = (state_dir(), state_dir());
    let c1 = TotalsConfig::new(
        &unique_name("app-qc"),
        &broker.bootstrap(),
        &input,
        &output,
        s1.path(),
    )
    .consumer_protocol();
    let c1 = TotalsConfig {
        source_keys: ", format = \"json\", partitioner = \"crc32\"".to_string(),
        ..c1
    };
    let c2 = c1.for_another_worker(s2.path());
    let mut w1 = WorkerProcess::spawn_named("w1", &c1.to_toml());
    let mut w2 = WorkerProcess::spawn_named("w2", &c2.to_toml());
    w1.wait_ready(READY);
    w2.wait_ready(READY);
    wait_all_running(&[&w1, &w2], PARTITIONS, "two workers");

    let totals = Workload::new(1_000, 40, 0x5eed_0a03);
    broker.produce_json(&input, &totals.records);
    let expected = totals.expected();
    let mut view = KeyedView::open(&broker.bootstrap(), &output).unwrap();
    wait_for_totals(&mut view, &expected, LONG, &mut [&mut w1, &mut w2]);
    wait_all_committed(&broker.bootstrap(), &c1.app_id, &input, PARTITIONS);
    view.refresh().unwrap();

    let workers = [&w1, &w2];
    let owners = settled_owners(&workers, &c1.app_id, 1);
    let task_of = |key: &str| format!("0_{}", crc32_partition_for_key(key.as_bytes(), PARTITIONS));
    let forwarded = check_every_key(&workers, &owners, &view.map, task_of);
    assert_eq!(
        forwarded.len(),
        2,
        "each worker forwarded some: {forwarded:?}"
    );

    for w in [&mut w1, &mut w2] {
        assert_eq!(w.terminate().code(), Some(0), "{} clean exit", w.name());
    }
}

/// While a task restores, its keys answer 503 with the reason, never the partly restored
/// value; once it runs they answer the final value. The restore is held deterministically: an
/// open transaction on the changelog partition keeps the restore consumer (read_committed)
/// short of the partition's end until it is aborted.
#[test]
fn keys_of_a_restoring_task_answer_503_until_it_runs() {
    let _serial = serial();
    let broker = Broker::start();
    let input = unique_name("qr-in");
    let output = unique_name("qr-out");
    for t in [&input, &output] {
        broker.create_topic(t, 2);
    }
    let (s1, s2) = (state_dir(), state_dir());
    let c1 = TotalsConfig::new(
        &unique_name("app-qr"),
        &broker.bootstrap(),
        &input,
        &output,
        s1.path(),
    );
    let totals = Workload::new(2_000, 40, 0x5eed_0a04);
    broker.produce_json_murmur2(&input, &totals.records);
    let expected = totals.expected();
    let mut w1 = WorkerProcess::spawn_named("w1", &c1.to_toml());
    w1.wait_ready(READY);
    let mut view = KeyedView::open(&broker.bootstrap(), &output).unwrap();
    wait_for_totals(&mut view, &expected, LONG, &mut [&mut w1]);
    wait_all_committed(&broker.bootstrap(), &c1.app_id, &input, 2);
    view.refresh().unwrap();
    assert_eq!(w1.terminate().code(), Some(0), "w1 clean exit");

    // A key of each partition.
    let key_in = |p: i32| {
        expected
            .keys()
            .find(|k| partition_for_key(k.as_bytes(), 2) == p)
            .expect("a key in each partition")
            .clone()
    };
    let (held, free) = (key_in(0), key_in(1));
    let txn = open_transaction(
        &broker.bootstrap(),
        &c1.changelog_topic(),
        0,
        &[(b"not-a-user".to_vec(), Some(b"{}".to_vec()))],
        Duration::from_secs(600),
    )
    .expect("open a transaction on the changelog");

    // A worker with an empty state directory restores both tasks from the changelogs.
    let c2 = c1.for_another_worker(s2.path());
    let mut w2 = WorkerProcess::spawn_named("w2", &c2.to_toml());
    let restoring = wait_until(LONG, Duration::from_millis(200), || {
        assert!(w2.try_status().is_none(), "w2 exited");
        let tasks: Value = w2
            .get("/tasks")
            .ok()
            .and_then(|(_, body)| serde_json::from_str(&body).ok())
            .unwrap_or_default();
        let state = |id: &str| {
            tasks
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["id"] == id)
                .map(|t| t["state"].clone())
        };
        state("0_0") == Some(json!("restoring")) && state("0_1") == Some(json!("running"))
    });
    assert!(
        restoring,
        "task 0_0 restoring and 0_1 running: {:?}",
        w2.get("/tasks")
    );

    let a = w2
        .get_with_headers(&format!("/state/totals/{held}"))
        .unwrap();
    assert_eq!(a.status, 503, "{held} while its task restores: {}", a.body);
    assert!(a.body.contains("task 0_0 is restoring"), "{}", a.body);
    assert_eq!(a.header("tributary-served-by"), Some(w2.http_addr()));
    let a = query(&w2, &format!("/state/totals/{free}"));
    assert_eq!(a.status, 200, "{free}: {}", a.body);
    assert_eq!(
        serde_json::from_str::<Value>(&a.body).unwrap(),
        view.map[&free]
    );
    // /cluster shows the restoring task.
    let shown = wait_until(LONG, Duration::from_millis(200), || {
        let (_, body) = w2.get("/cluster").expect("GET /cluster");
        let c: Value = serde_json::from_str(&body).expect("JSON");
        c["workers"][0]["restoring"] == json!(["0_0"])
            && c["workers"][0]["active"] == json!(["0_0", "0_1"])
    });
    assert!(shown, "/cluster: {:?}", w2.get("/cluster"));

    txn.end(false).expect("abort the transaction");
    let a = query(&w2, &format!("/state/totals/{held}"));
    assert_eq!(a.status, 200, "{held} once restored: {}", a.body);
    assert_eq!(
        serde_json::from_str::<Value>(&a.body).unwrap(),
        view.map[&held]
    );
    assert_eq!(w2.terminate().code(), Some(0), "w2 clean exit");
}

/// A `dedup` store is keyed by the step's `key` expression, not by the record key: its marks
/// live in the task of the record's partition. `/state/<store>/<id>?from=0&to=0` for an id
/// seen must find its mark (or say that the store cannot be queried by key), never answer an
/// empty list from the task that murmur2 of the id names.
#[test]
fn a_dedup_mark_is_found_where_the_record_was_processed() {
    let _serial = serial();
    let broker = Broker::start();
    let input = unique_name("qd-in");
    let output = unique_name("qd-out");
    for t in [&input, &output] {
        broker.create_topic(t, 4);
    }
    let state = state_dir();
    let mut cfg = TotalsConfig::new(
        &unique_name("app-qd"),
        &broker.bootstrap(),
        &input,
        &output,
        state.path(),
    );
    cfg.pipeline = "marks".into();
    cfg.steps = "[[pipeline.steps]]\ndedup = { key = \"id\", within = \"1h\" }\n".into();
    // Records in every partition (so that each has a commit to wait for), each with its own
    // dedup id, some of which fall in another partition than their record's key.
    let records: Vec<(String, Value)> = (0..16)
        .map(|i| (format!("user-{i}"), json!({ "id": format!("order-{i}") })))
        .collect();
    let elsewhere = records
        .iter()
        .filter(|(key, v)| {
            let id = v["id"].as_str().unwrap();
            partition_for_key(id.as_bytes(), 4) != partition_for_key(key.as_bytes(), 4)
        })
        .count();
    assert!(elsewhere > 0, "some ids fall in another partition");
    broker.produce_json_murmur2(&input, &records);
    let mut w = WorkerProcess::spawn_named("w", &cfg.to_toml());
    w.wait_ready(READY);
    wait_all_committed(&broker.bootstrap(), &cfg.app_id, &input, 4);

    // Each id's mark is in the store (named `<pipeline>-<step index>`, as the first stateful
    // step that is not an aggregate).
    let mut missing = Vec::new();
    for (key, v) in &records {
        let id = v["id"].as_str().unwrap();
        let a = query(&w, &format!("/state/marks-0/{id}?from=0&to=0"));
        let marks: Option<Value> = serde_json::from_str(&a.body).ok();
        let found =
            a.status == 200 && marks.as_ref().and_then(Value::as_array).map(Vec::len) == Some(1);
        let refused = a.status == 400 && a.body.contains("cannot be routed");
        if !found && !refused {
            missing.push(format!(
                "{id} (record key {key}, task 0_{}; asked task 0_{}): {} {}",
                partition_for_key(key.as_bytes(), 4),
                partition_for_key(id.as_bytes(), 4),
                a.status,
                a.body
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "marks neither found nor refused:\n{}",
        missing.join("\n")
    );
    assert_eq!(w.terminate().code(), Some(0), "clean exit");
}

/// Two workers advertising one address (the default `http.listen = "127.0.0.1:9464"` on two
/// hosts, or a copied `http.advertised`) look like one worker to the group's readers: keys
/// of the other one answer "assigned to this worker, which has not opened it yet" and
/// standbys are never placed. `/cluster` must say so.
#[test]
fn workers_sharing_an_advertised_address_are_reported() {
    let _serial = serial();
    let broker = Broker::start();
    let input = unique_name("qa-in");
    let output = unique_name("qa-out");
    for t in [&input, &output] {
        broker.create_topic(t, 2);
    }
    let (s1, s2) = (state_dir(), state_dir());
    let c1 = TotalsConfig::new(
        &unique_name("app-qa"),
        &broker.bootstrap(),
        &input,
        &output,
        s1.path(),
    );
    let mut w1 = WorkerProcess::spawn_named("w1", &c1.to_toml());
    w1.wait_ready(READY);
    // w2 advertises w1's address.
    let c2 = c1.for_another_worker(s2.path());
    let listen = format!("listen = \"{}\"\n", c2.http_listen);
    let toml = c2.to_toml().replacen(
        &listen,
        &format!("{listen}advertised = \"{}\"\n", w1.http_addr()),
        1,
    );
    assert!(toml.contains("advertised"), "{toml}");
    let mut w2 = WorkerProcess::spawn_named("w2", &toml);
    w2.wait_ready(READY);

    let mut last = Value::Null;
    let reported = wait_until(LONG, Duration::from_millis(200), || {
        let (_, body) = w1.get("/cluster").expect("GET /cluster");
        last = serde_json::from_str(&body).expect("JSON");
        let members = last["workers"][0]["member_ids"]
            .as_array()
            .map_or(0, Vec::len);
        members == 2
            && last["problem"]
                .as_str()
                .is_some_and(|p| p.contains(w1.http_addr()))
    });
    assert!(
        reported,
        "/cluster names the shared address as a problem: {last}"
    );
    assert_eq!(w2.terminate().code(), Some(0), "w2 clean exit");
    assert_eq!(w1.terminate().code(), Some(0), "w1 clean exit");
}
