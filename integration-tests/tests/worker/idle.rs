//! Windows that close with nothing more to read (`processing.idle_advance_ms`) on real workers:
//! records go to the input, then nothing; with idle advance the `emit = "final"` windows
//! reach the sink, also after a restart on an empty state directory (stream time comes back
//! from the changelog) under exactly once; without it, nothing closes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use integration_tests::{serial, unique_name, wait_until, Broker, TotalsConfig, WorkerProcess};
use serde_json::{json, Value};
use tributary::pipeline::partitioner::partition_for_key;

use crate::{on_kafka, state_dir, wait_all_committed, LONG, READY};

/// Window size and grace, ms (the steps below must agree).
const SIZE_MS: u64 = 2_000;
const GRACE_MS: u64 = 500;
const FINAL_STEPS: &str = r#"[[pipeline.steps]]
[pipeline.steps.aggregate]
window = { kind = "tumbling", size = "2s", grace = "500ms" }
fields = { count = "count()", total = "sum(amount)" }
emit = "final"
"#;

/// Three users, keys of both partitions of a two-partition topic (so that each task has
/// windows of its own to close, and every partition gets committed offsets).
fn users() -> Vec<String> {
    let mut users: Vec<String> = Vec::new();
    for name in (0..).map(|i| format!("u{i}")) {
        let partition = partition_for_key(name.as_bytes(), 2);
        let covered = users
            .iter()
            .any(|u| partition_for_key(u.as_bytes(), 2) == partition);
        if !covered || users.len() == 2 {
            users.push(name);
        }
        if users.len() == 3 {
            return users;
        }
    }
    unreachable!("the loop returns")
}

/// Where the input's event times start: the start of a window an hour before now. Behind the
/// wall clock (a replay, say: idle advance counts from the last record's event time, not from
/// the clock), but recent enough for the topics' time-based retention (the broker deletes
/// records older than a week, and their timestamps are the event times).
fn base() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let hour_ago = now - 3_600_000;
    hour_ago - hour_ago % SIZE_MS
}

/// Input records: three users over two windows from `base`, event time in `ts`: the first
/// windows close with records (each partition reads one past their end and grace), the second
/// ones only with idle time (the last record is 200 ms before their end).
fn input_records() -> Vec<(String, Value)> {
    let (users, base) = (users(), base());
    (0..20u64)
        .map(|i| {
            let user = users[i as usize % 3].clone();
            let v = json!({"user": user, "amount": i, "ts": base + i * 200});
            (user, v)
        })
        .collect()
}

/// (user, window_start) → the final window every record's window should produce.
fn expected(records: &[(String, Value)]) -> BTreeMap<(String, u64), Value> {
    let mut acc: BTreeMap<(String, u64), (u64, u64)> = BTreeMap::new();
    for (user, v) in records {
        let ts = v["ts"].as_u64().unwrap();
        let e = acc.entry((user.clone(), ts - ts % SIZE_MS)).or_default();
        e.0 += 1;
        e.1 += v["amount"].as_u64().unwrap();
    }
    acc.into_iter()
        .map(|((user, start), (count, total))| {
            let v = json!({"count": count, "total": total, "window_start": start, "window_end": start + SIZE_MS});
            ((user, start), v)
        })
        .collect()
}

/// Every window on the sink, keyed by (user, window_start); panics on a window written twice.
fn windows(broker: &Broker, topic: &str) -> BTreeMap<(String, u64), Value> {
    let mut out = BTreeMap::new();
    for r in broker.consume_all(topic) {
        let (Some(k), Some(v)) = (r.key_str(), r.json()) else {
            panic!("a sink record that is not a keyed JSON value: {r:?}");
        };
        let start = v["window_start"].as_u64().unwrap();
        if let Some(old) = out.insert((k.clone(), start), v.clone()) {
            panic!("window ({k}, {start}) emitted twice: {old} and {v}");
        }
    }
    out
}

/// Polls the sink until it holds exactly `want`, while `worker` stays up.
fn wait_for_windows(
    broker: &Broker,
    topic: &str,
    want: &BTreeMap<(String, u64), Value>,
    worker: &mut WorkerProcess,
) {
    let mut got = BTreeMap::new();
    let done = wait_until(LONG, Duration::from_millis(500), || {
        assert!(worker.try_status().is_none(), "{} exited", worker.name());
        got = windows(broker, topic);
        got == *want
    });
    assert!(done, "the sink holds {got:#?}, expected {want:#?}");
}

fn config(broker: &Broker, prefix: &str, topics: (&str, &str), state: &Path) -> TotalsConfig {
    let mut cfg = TotalsConfig::new(
        &unique_name(prefix),
        &broker.bootstrap(),
        topics.0,
        topics.1,
        state,
    );
    cfg.pipeline = "idle".into();
    cfg.source_keys = r#", format = "json", time = "ts""#.into();
    cfg.steps = FINAL_STEPS.into();
    cfg
}

/// At least once: the input's last windows close on the wall clock. The windows that a later
/// record closed come first; those whose partition received nothing after them come once the
/// partition has been quiet for `idle_advance_ms` plus the rest of the window and its grace.
#[test]
fn idle_partitions_close_their_final_windows() {
    let _serial = serial();
    let broker = Broker::start();
    let input = unique_name("idle-in");
    let output = unique_name("idle-out");
    broker.create_topic(&input, 2);
    broker.create_topic(&output, 2);
    let records = input_records();
    broker.produce_json(&input, &records);
    let want = expected(&records);
    assert_eq!(want.len(), 6, "three users, two windows each");

    let state = state_dir();
    let mut cfg = config(&broker, "app-idle", (&input, &output), state.path());
    cfg.idle_advance_ms = Some(300);
    let mut worker = WorkerProcess::spawn_named("idle", &cfg.to_toml());
    worker.wait_ready(READY);
    wait_for_windows(&broker, &output, &want, &mut worker);
    // Each window once (`windows` checks), and nothing after the input's last window.
    wait_all_committed(&broker.bootstrap(), &cfg.app_id, &input, 2);
    assert_eq!(windows(&broker, &output), want);
    assert_eq!(worker.terminate().code(), Some(0));
}

/// Exactly once, across a restart: a worker without idle advance processes and commits every
/// record and closes nothing it has no record for; killed, and replaced by a worker with idle
/// advance on an empty state directory, it restores the windows and their stream time from
/// the changelog, and the final windows reach the sink (read_committed), each once.
#[test]
fn exactly_once_idle_windows_close_after_a_restart_from_the_changelog() {
    if !on_kafka() {
        // read_committed filtering of aborted records is Apache Kafka's.
        return;
    }
    let _serial = serial();
    let broker = Broker::start();
    let input = unique_name("idle-eos-in");
    let output = unique_name("idle-eos-out");
    broker.create_topic(&input, 2);
    broker.create_topic(&output, 2);
    let records = input_records();
    broker.produce_json(&input, &records);
    let want = expected(&records);

    let state = state_dir();
    let cfg = config(&broker, "app-idle-eos", (&input, &output), state.path()).exactly_once();
    let mut first = WorkerProcess::spawn_named("no-idle", &cfg.to_toml());
    first.wait_ready(READY);
    wait_all_committed(&broker.bootstrap(), &cfg.app_id, &input, 2);
    // Every record is in and committed. Each partition read a record past the first windows'
    // end + grace, which closed them; nothing read closes the second ones (they need stream
    // time base + 4.5 s, the last record is at base + 3.8 s): they wait, however long.
    let last_ts = records
        .iter()
        .map(|(_, v)| v["ts"].as_u64().unwrap())
        .max()
        .unwrap();
    let by_records: BTreeMap<_, _> = want
        .iter()
        .filter(|((_, start), _)| *start + SIZE_MS + GRACE_MS <= last_ts)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(by_records.len(), 3);
    assert_eq!(windows(&broker, &output), by_records);
    first.kill9();

    let fresh = state_dir();
    let mut cfg = cfg.for_another_worker(fresh.path());
    cfg.idle_advance_ms = Some(300);
    let mut second = WorkerProcess::spawn_named("idle", &cfg.to_toml());
    second.wait_ready(READY);
    wait_for_windows(&broker, &output, &want, &mut second);
    assert_eq!(second.terminate().code(), Some(0));
}

/// A window whose emission by idle time fails (its sink partitioner needs a field the
/// aggregate does not write) stops the worker under `on_error = "fail"`: it exits with an
/// error naming the task, the pipeline, the punctuation and the step, and writes nothing.
#[test]
fn a_failing_idle_emission_stops_the_worker_with_a_clear_error() {
    let _serial = serial();
    let broker = Broker::start();
    let input = unique_name("idle-fail-in");
    let output = unique_name("idle-fail-out");
    broker.create_topic(&input, 1);
    broker.create_topic(&output, 1);
    let base = base();
    let records: Vec<(String, Value)> = (0..3u64)
        .map(|i| ("u".to_string(), json!({"amount": i, "ts": base + i * 100})))
        .collect();
    broker.produce_json(&input, &records);

    let state = state_dir();
    let mut cfg = config(&broker, "app-idle-fail", (&input, &output), state.path());
    cfg.idle_advance_ms = Some(300);
    cfg.sink_keys = r#", format = "json", partitioner = "field:region""#.into();
    let mut worker = WorkerProcess::spawn_named("idle", &cfg.to_toml());
    let status = worker.wait_exit(LONG).expect("the worker stops");
    let logs = worker.logs();
    assert!(!status.success(), "an error exit: {status}\n{logs}");
    let error = logs
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line on stderr:\n{logs}"));
    let close = base + SIZE_MS + GRACE_MS;
    for part in [
        "task 0_0 failed in pipeline idle at the stream-time punctuation at ".to_string(),
        "step sink.partitioner: partitioner field:region: the value has no field `region`"
            .to_string(),
    ] {
        assert!(error.contains(&part), "{error:?} lacks {part:?}");
    }
    // At the first tick that reached the window's close (ticks come every few ms).
    let at: u64 = error
        .split("punctuation at ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no time in {error:?}"));
    assert!(at >= close, "closed at {at}, before {close}");
    assert!(
        broker.consume_all(&output).is_empty(),
        "nothing reached the sink"
    );
}

/// A worker stopped for a while (SIGSTOP here; a frozen VM or a long pause of the process
/// alike) does not take the stop for quiet input: its fetcher stopped too, and a record
/// produced meanwhile is still in Kafka when it runs again. Its window must count that
/// record, not close at the first tick after the stop (stream time jumping by the stop) and
/// drop it as late.
#[test]
fn a_stopped_worker_does_not_close_windows_for_the_time_it_was_stopped() {
    let _serial = serial();
    let broker = Broker::start();
    let input = unique_name("idle-stop-in");
    let output = unique_name("idle-stop-out");
    broker.create_topic(&input, 1);
    broker.create_topic(&output, 1);
    let base = base();
    let record = |i: u64| ("u".to_string(), json!({"amount": i, "ts": base + i * 100}));
    let before = vec![record(0), record(1)];
    broker.produce_json(&input, &before);

    let state = state_dir();
    let mut cfg = config(&broker, "app-idle-stop", (&input, &output), state.path());
    cfg.idle_advance_ms = Some(1_000);
    cfg.session_timeout_ms = cfg.session_timeout_ms.max(30_000);
    let mut worker = WorkerProcess::spawn_named("idle", &cfg.to_toml());
    worker.wait_ready(READY);
    wait_all_committed(&broker.bootstrap(), &cfg.app_id, &input, 1);
    assert!(windows(&broker, &output).is_empty(), "the window is open");

    worker.signal(integration_tests::sig::SIGSTOP);
    // The stop lasts longer than the window's rest and grace plus idle_advance_ms (stream time
    // would be past the window's close at the first tick after it); the record is produced
    // at its end, after the worker's last fetch request has been answered.
    std::thread::sleep(Duration::from_millis(SIZE_MS + GRACE_MS + 1_500));
    let during = vec![record(2)];
    broker.produce_json(&input, &during);
    worker.signal(integration_tests::sig::SIGCONT);

    let all: Vec<_> = before.into_iter().chain(during).collect();
    wait_for_windows(&broker, &output, &expected(&all), &mut worker);
    assert_eq!(worker.terminate().code(), Some(0));
}
