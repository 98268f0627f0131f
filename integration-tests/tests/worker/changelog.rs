//! What only a real broker shows about changelogs and offsets (Apache Kafka; skipped on tansu,
//! which neither compacts nor reports exact end offsets): compaction, tombstones, transaction
//! markers, a recreated changelog, and consumer lag.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use integration_tests::{
    check_exact, committed_offsets, delete_topic, produce_transaction, serial, unique_name,
    wait_until, watermarks, Broker, KeyedView, TotalsConfig, WorkerProcess, Workload,
};
use serde_json::json;

use crate::{on_kafka, state_dir, wait_all_committed, wait_for_totals, LONG, READY, RESTORED};

/// A broker, an input and an output topic with `partitions` each, and a totals config.
fn setup(prefix: &str, partitions: i32, state: &std::path::Path) -> (Broker, TotalsConfig) {
    let broker = Broker::start();
    let input = unique_name(&format!("{prefix}-in"));
    let output = unique_name(&format!("{prefix}-out"));
    broker.create_topic(&input, partitions);
    broker.create_topic(&output, partitions);
    let cfg = TotalsConfig::new(
        &unique_name(&format!("app-{prefix}")),
        &broker.bootstrap(),
        &input,
        &output,
        state,
    );
    (broker, cfg)
}

/// Runs a worker until the sink shows `expected`, then stops it with SIGTERM (exit 0).
fn run_until(
    cfg: &TotalsConfig,
    name: &str,
    view: &mut KeyedView,
    expected: &HashMap<String, integration_tests::Totals>,
) -> f64 {
    let mut w = WorkerProcess::spawn_named(name, &cfg.to_toml());
    w.wait_ready(READY);
    let restored = w.metric_or_zero(RESTORED);
    wait_for_totals(view, expected, LONG, &mut [&mut w]);
    view.refresh().unwrap();
    if let Err(e) = check_exact(expected, &view.map) {
        panic!("{name}: {e}");
    }
    assert_eq!(w.terminate().code(), Some(0), "{name} exits 0 on SIGTERM");
    restored
}

/// The changelog is compacted by the broker while the worker runs (many updates of few keys
/// shrink to about one record per key), and a worker without local state restores exactly the
/// compacted changelog and goes on counting from the right totals.
#[test]
fn compacted_changelog_restores_exactly() {
    if !on_kafka() {
        return;
    }
    let _serial = serial();
    let state = state_dir();
    let (broker, cfg) = setup("compact", 2, state.path());
    let changelog = cfg.changelog_topic();
    let mut view = KeyedView::open(&broker.bootstrap(), &cfg.output).unwrap();
    // 8 keys, updated thousands of times, in waves a second apart so that the changelog's
    // segments roll (only closed segments are compacted).
    let w = Workload::new(12_000, 8, 0x5eed_0101);
    let mut w1 = WorkerProcess::spawn_named("w1", &cfg.to_toml());
    w1.wait_ready(READY);
    for wave in w.records[..10_000].chunks(1_000) {
        broker.produce_json(&cfg.input, wave);
        std::thread::sleep(Duration::from_millis(1_100));
    }
    wait_for_totals(&mut view, &w.expected_prefix(10_000), LONG, &mut [&mut w1]);
    assert_eq!(w1.terminate().code(), Some(0));
    assert_eq!(
        broker
            .topic_config(&changelog)
            .get("cleanup.policy")
            .map(String::as_str),
        Some("compact"),
        "the worker creates its changelog compacted"
    );
    // Every commit wrote each of the 8 keys at most once; compaction must bring that down.
    let written: i64 = (0..2)
        .map(|p| watermarks(&broker.bootstrap(), &changelog, p).unwrap().1)
        .sum();
    let compacted = wait_until(Duration::from_secs(90), Duration::from_millis(500), || {
        (broker.consume_all(&changelog).len() as i64) < written / 2
    });
    assert!(
        compacted,
        "changelog {changelog} ({written} records written) was not compacted within 90 s"
    );
    let left = broker.consume_all(&changelog).len() as f64;

    // A worker with an empty state directory restores the compacted changelog.
    std::fs::remove_dir_all(state.path()).unwrap();
    broker.produce_json(&cfg.input, &w.records[10_000..]);
    let restored = run_until(&cfg, "w2", &mut view, &w.expected());
    assert!(
        restored > 0.0 && restored <= left,
        "restored {restored} records; the compacted changelog has {left} (of {written} written)"
    );
}

/// A changelog that ends in transaction markers (a committed and an aborted transaction
/// appended to it) is still restored to its end: the restore finishes, the committed records
/// are applied, the aborted one is not.
#[test]
fn restore_passes_transaction_markers_and_skips_aborted_records() {
    if !on_kafka() {
        return;
    }
    let _serial = serial();
    let state = state_dir();
    let (broker, cfg) = setup("markers", 1, state.path());
    let changelog = cfg.changelog_topic();
    let mut view = KeyedView::open(&broker.bootstrap(), &cfg.output).unwrap();
    let w = Workload::new(2_000, 10, 0x5eed_0102);
    broker.produce_json(&cfg.input, &w.records[..1_000]);
    run_until(&cfg, "w1", &mut view, &w.expected_prefix(1_000));

    // Re-append every key's current value in a committed transaction (state unchanged), then
    // a wrong value for one key in an aborted transaction. The partition now ends in markers.
    let current: BTreeMap<Vec<u8>, Option<Vec<u8>>> = broker
        .consume_all(&changelog)
        .into_iter()
        .filter_map(|r| r.key.map(|k| (k, r.value)))
        .collect();
    let current: Vec<_> = current.into_iter().collect();
    produce_transaction(&broker.bootstrap(), &changelog, 0, &current, true).unwrap();
    let bogus = vec![(current[0].0.clone(), Some(br#"{"count":999999}"#.to_vec()))];
    produce_transaction(&broker.bootstrap(), &changelog, 0, &bogus, false).unwrap();

    // Without local state: restore everything, through both markers.
    std::fs::remove_dir_all(state.path()).unwrap();
    broker.produce_json(&cfg.input, &w.records[1_000..]);
    let restored = run_until(&cfg, "w2", &mut view, &w.expected());
    assert!(restored > 0.0, "the changelog was restored");
}

/// A changelog recreated behind the worker's back (deleted, then created again, now shorter
/// than the local checkpoint) is not trusted to match the local store: the store is emptied and
/// rebuilt from what the changelog holds now.
#[test]
fn local_state_ahead_of_a_recreated_changelog_is_rebuilt() {
    if !on_kafka() {
        return;
    }
    let _serial = serial();
    let state = state_dir();
    let (broker, cfg) = setup("recreated", 1, state.path());
    let changelog = cfg.changelog_topic();
    let mut view = KeyedView::open(&broker.bootstrap(), &cfg.output).unwrap();
    let w = Workload::new(3_000, 10, 0x5eed_0103);
    broker.produce_json(&cfg.input, &w.records[..2_000]);
    run_until(&cfg, "w1", &mut view, &w.expected_prefix(2_000));

    // The changelog is recreated with one record: key user-0 at count 1 from its first
    // record. The local store (checkpoint far beyond offset 1) must not be trusted.
    delete_topic(&broker.bootstrap(), &changelog).unwrap();
    broker.create_compacted_topic(&changelog, 1);
    let (k0, v0) = w
        .records
        .iter()
        .find(|(k, _)| k == "user-0")
        .unwrap()
        .clone();
    let seed = json!({"count": 1, "total": v0["amount"]});
    produce_transaction(
        &broker.bootstrap(),
        &changelog,
        0,
        &[(k0.clone().into_bytes(), Some(seed.to_string().into_bytes()))],
        true,
    )
    .unwrap();

    // From here on the totals are those of the new changelog plus the new input.
    broker.produce_json(&cfg.input, &w.records[2_000..]);
    let mut expected = integration_tests::expected_totals(&w.records[2_000..]);
    let e = expected.entry(k0.clone()).or_default();
    e.count += 1;
    e.total += v0["amount"].as_u64().unwrap();
    let mut view2 = KeyedView::open(&broker.bootstrap(), &cfg.output).unwrap();
    view2.refresh().unwrap();
    view2.map.clear();
    let mut w2 = WorkerProcess::spawn_named("w2", &cfg.to_toml());
    w2.wait_ready(READY);
    wait_for_totals(&mut view2, &expected, LONG, &mut [&mut w2]);
    if let Err(e) = check_exact(&expected, &view2.map) {
        panic!("after the changelog was recreated: {e}");
    }
    assert!(
        w2.logs().contains("local state is stale"),
        "the wipe is logged"
    );
    assert_eq!(w2.terminate().code(), Some(0));
}

/// Once the input is consumed and committed, `/metrics` reports for every partition the lag
/// the broker sees: its end offset minus the group's committed offset.
#[test]
fn metrics_lag_matches_the_brokers_view() {
    if !on_kafka() {
        return;
    }
    let _serial = serial();
    let state = state_dir();
    let (broker, cfg) = setup("lag", 3, state.path());
    let mut view = KeyedView::open(&broker.bootstrap(), &cfg.output).unwrap();
    let w = Workload::new(3_000, 30, 0x5eed_0104);
    broker.produce_json(&cfg.input, &w.records);
    let mut w1 = WorkerProcess::spawn_named("w1", &cfg.to_toml());
    w1.wait_ready(READY);
    wait_for_totals(&mut view, &w.expected(), LONG, &mut [&mut w1]);
    let broker_lag = |p: i32| {
        let committed = committed_offsets(&broker.bootstrap(), &cfg.app_id, &cfg.input).unwrap();
        let (_, high) = watermarks(&broker.bootstrap(), &cfg.input, p).unwrap();
        committed.get(&p).map(|c| high - c)
    };
    // librdkafka publishes its statistics every 5 s; wait until they show the final commit.
    let mut last = String::new();
    let agree = wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
        (0..3).all(|p| {
            let query = format!(
                "tributary_consumer_lag{{topic=\"{}\",partition=\"{p}\"}}",
                cfg.input
            );
            let ours = w1.metric(&query);
            let theirs = broker_lag(p);
            last = format!("partition {p}: /metrics {ours:?}, broker {theirs:?}");
            theirs == Some(0) && ours == Some(0.0)
        })
    });
    assert!(agree, "lag disagrees: {last}");
    assert_eq!(w1.terminate().code(), Some(0));
}

/// Makes `cfg` count records per user in 10 s tumbling windows of event time (`ts`), emitting
/// each window once, when it closes.
fn windows_pipeline(cfg: &mut TotalsConfig) {
    cfg.pipeline = "windows".into();
    cfg.source_keys = r#", format = "json", time = "ts""#.into();
    cfg.steps = "[[pipeline.steps]]\n[pipeline.steps.aggregate]\n\
                 window = { kind = \"tumbling\", size = \"10s\" }\n\
                 fields = { count = \"count()\" }\nemit = \"final\"\n"
        .into();
}

/// One record per second of event time in `[from_s, to_s)` for each of `users`.
fn phase(from_s: u64, to_s: u64, users: std::ops::Range<u32>) -> Vec<(String, serde_json::Value)> {
    let mut recs = Vec::new();
    for s in from_s..to_s {
        for u in users.clone() {
            recs.push((
                format!("u{u}"),
                json!({"user": format!("u{u}"), "amount": 1, "ts": s * 1000}),
            ));
        }
    }
    recs
}

/// (user, window start) → the counts emitted for it to `output`.
fn finals(broker: &Broker, output: &str) -> BTreeMap<(String, u64), Vec<u64>> {
    let mut n: BTreeMap<_, Vec<u64>> = BTreeMap::new();
    for r in broker.consume_all(output) {
        if let (Some(k), Some(v)) = (r.key_str(), r.json()) {
            n.entry((k, v["window_start"].as_u64().unwrap()))
                .or_default()
                .push(v["count"].as_u64().unwrap());
        }
    }
    n
}

/// Waits until `output` holds results for `want` windows (while `w` runs).
fn wait_finals(broker: &Broker, output: &str, w: &mut WorkerProcess, want: usize) {
    let ok = wait_until(LONG, Duration::from_millis(500), || {
        assert!(w.try_status().is_none(), "{} exited", w.name());
        finals(broker, output).len() >= want
    });
    assert!(
        ok,
        "{want} final window results did not arrive: {:?}",
        finals(broker, output)
    );
}

/// Closed windows are deleted from the store with tombstones in the changelog, and stay
/// deleted after a full restore: a worker that rebuilt its state from the changelog does not
/// resurrect them, so each window's final result is emitted exactly once.
#[test]
fn closed_windows_stay_deleted_after_a_restore() {
    if !on_kafka() {
        return;
    }
    let _serial = serial();
    let state = state_dir();
    let (broker, mut cfg) = setup("tombstones", 1, state.path());
    windows_pipeline(&mut cfg);
    let changelog = cfg.changelog_topic();
    // Phase 1: windows [0,10), [10,20), [20,30) for 3 users; a record at 30 s closes them.
    broker.produce_json(&cfg.input, &phase(0, 31, 0..3));
    let mut w1 = WorkerProcess::spawn_named("w1", &cfg.to_toml());
    w1.wait_ready(READY);
    wait_finals(&broker, &cfg.output, &mut w1, 9);
    assert_eq!(w1.terminate().code(), Some(0));
    let tombstones = broker
        .consume_all(&changelog)
        .iter()
        .filter(|r| r.value.is_none())
        .count();
    assert!(
        tombstones >= 9,
        "closed windows are tombstoned in {changelog}: {tombstones}"
    );

    // Phase 2, from an empty state directory: everything comes back from the changelog; the
    // closed windows must not.
    std::fs::remove_dir_all(state.path()).unwrap();
    broker.produce_json(&cfg.input, &phase(31, 61, 0..3));
    let mut w2 = WorkerProcess::spawn_named("w2", &cfg.to_toml());
    w2.wait_ready(READY);
    assert!(w2.metric_or_zero(RESTORED) > 0.0, "the state was restored");
    wait_finals(&broker, &cfg.output, &mut w2, 18);
    assert_eq!(w2.terminate().code(), Some(0));
    let got = finals(&broker, &cfg.output);
    // One record per user and second: every window's single final result counts 10 (the
    // window [30 s, 40 s) began before the restore and was finished after it).
    let wrong: Vec<_> = got.iter().filter(|(_, n)| **n != [10]).collect();
    assert!(
        wrong.is_empty(),
        "windows emitted twice or miscounted: {wrong:?}"
    );
    assert_eq!(got.len(), 18, "windows 0..60 s for 3 users: {got:?}");
}

/// A worker that comes back later than its changelog's `delete.retention.ms` does not trust
/// the tail of the changelog to bring its old local state up to date: the tombstones written
/// meanwhile (here, of the windows another worker closed) may have been compacted away, and
/// the store would keep what they deleted. It rebuilds the store from the whole changelog
/// instead, so no closed window comes back to be emitted a second time.
#[test]
fn state_older_than_the_tombstone_retention_is_rebuilt() {
    let Some(back) = worker_comes_back(Some("1000")) else {
        return;
    };
    assert!(
        back.logs.contains("delete.retention.ms"),
        "the worker says why it rebuilt its state:\n{}",
        back.logs
    );
    assert_eq!(
        back.restored, back.changelog_records as f64,
        "the whole changelog was restored"
    );
}

/// The same within the retention: only the tail written meanwhile is restored.
#[test]
fn state_within_the_tombstone_retention_restores_the_tail() {
    let Some(back) = worker_comes_back(None) else {
        return;
    };
    assert!(
        !back.logs.contains("delete.retention.ms"),
        "nothing to rebuild:\n{}",
        back.logs
    );
    assert!(
        back.restored > 0.0 && back.restored <= back.tail as f64,
        "restored {} records; the tail written while the worker was away has {}",
        back.restored,
        back.tail
    );
}

/// What [`worker_comes_back`] saw of the returning worker.
struct Back {
    logs: String,
    restored: f64,
    /// Changelog records written after the worker first stopped.
    tail: i64,
    /// Records in the changelog when it came back.
    changelog_records: usize,
}

/// Worker A sees windows open and stops; worker B (a state directory of its own) closes them
/// (their store entries are tombstoned) and goes on; A comes back with its old state and
/// closes what is still open. Every window must be emitted once. With `delete_retention_ms`
/// the changelog gets that retention and B runs until compaction removed the tombstones.
/// None on tansu (no compaction).
fn worker_comes_back(delete_retention_ms: Option<&str>) -> Option<Back> {
    if !on_kafka() {
        return None;
    }
    let _serial = serial();
    let state_a = state_dir();
    let state_b = state_dir();
    let (broker, mut cfg) = setup("back", 1, state_a.path());
    windows_pipeline(&mut cfg);
    let changelog = cfg.changelog_topic();
    if let Some(ms) = delete_retention_ms {
        broker.create_compacted_topic_with(&changelog, 1, &[("delete.retention.ms", ms)]);
    }
    let cfg_b = cfg.for_another_worker(state_b.path());

    // A sees windows [0 s, 10 s) of users u0..u2 open, and stops.
    broker.produce_json(&cfg.input, &phase(0, 10, 0..3));
    let mut a = WorkerProcess::spawn_named("a", &cfg.to_toml());
    a.wait_ready(READY);
    wait_all_committed(&broker.bootstrap(), &cfg.app_id, &cfg.input, 1);
    assert_eq!(a.terminate().code(), Some(0));
    assert!(
        finals(&broker, &cfg.output).is_empty(),
        "no window closed yet"
    );
    let (_, a_stopped) = watermarks(&broker.bootstrap(), &changelog, 0).unwrap();

    // B restores them and closes them: their final results go out and their store entries
    // are tombstoned.
    let mut b = WorkerProcess::spawn_named("b", &cfg_b.to_toml());
    b.wait_ready(READY);
    broker.produce_json(&cfg.input, &phase(10, 31, 0..3));
    wait_finals(&broker, &cfg.output, &mut b, 9);
    // Committed: the changelog holds everything the commit flushed.
    wait_all_committed(&broker.bootstrap(), &cfg.app_id, &cfg.input, 1);
    let (_, mark) = watermarks(&broker.bootstrap(), &changelog, 0).unwrap();
    let tombstones_before_mark = || {
        broker
            .consume_all(&changelog)
            .iter()
            .filter(|r| r.offset < mark && r.value.is_none())
            .count()
    };
    assert!(
        tombstones_before_mark() >= 9,
        "closed windows are tombstoned"
    );
    // Other users' records keep B writing, so segments roll and the cleaner passes again.
    let mut second = 31;
    let mut more = || {
        broker.produce_json(&cfg.input, &phase(second, second + 1, 3..6));
        second += 1;
    };
    if delete_retention_ms.is_some() {
        // Until compaction has removed those tombstones (and the values they deleted).
        let gone = wait_until(Duration::from_secs(120), Duration::from_millis(500), || {
            more();
            tombstones_before_mark() == 0
        });
        assert!(
            gone,
            "compaction did not remove the tombstones of {changelog} within 120 s"
        );
    } else {
        for _ in 0..5 {
            more();
        }
    }
    wait_all_committed(&broker.bootstrap(), &cfg.app_id, &cfg.input, 1);
    assert_eq!(b.terminate().code(), Some(0));
    let before = finals(&broker, &cfg.output);
    let (_, b_stopped) = watermarks(&broker.bootstrap(), &changelog, 0).unwrap();
    let changelog_records = broker.consume_all(&changelog).len();

    // A comes back with its old state. A record far ahead in event time closes every window
    // still open: those of u3..u5 (once each), and must not close u0..u2's [0 s, 10 s) again.
    let mut a = WorkerProcess::spawn_named("a2", &cfg.to_toml());
    a.wait_ready(READY);
    let restored = a.metric_or_zero(RESTORED);
    broker.produce_json(&cfg.input, &phase(second + 100, second + 101, 6..7));
    wait_all_committed(&broker.bootstrap(), &cfg.app_id, &cfg.input, 1);
    let logs = a.logs();
    assert_eq!(a.terminate().code(), Some(0));
    let after = finals(&broker, &cfg.output);
    let twice: Vec<_> = after.iter().filter(|(_, n)| n.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "windows emitted twice (state resurrected after compaction): {twice:?}"
    );
    assert!(after.len() > before.len(), "the last windows were closed");
    Some(Back {
        logs,
        restored,
        tail: b_stopped - a_stopped,
        changelog_records,
    })
}

/// An existing changelog whose `cleanup.policy` does not compact (here Kafka's default,
/// `delete`, which would drop old state changes that a restore needs) stops the worker at
/// start-up with an error naming the topic and its policy; the topic is left as it was.
#[test]
fn a_changelog_that_is_not_compacted_is_refused() {
    if !on_kafka() {
        return;
    }
    let _serial = serial();
    let state = state_dir();
    let (broker, cfg) = setup("not-compacted", 2, state.path());
    let changelog = cfg.changelog_topic();
    broker.create_topic(&changelog, 2);
    let policy = |broker: &Broker| {
        broker
            .topic_config(&changelog)
            .get("cleanup.policy")
            .cloned()
    };
    assert_eq!(policy(&broker).as_deref(), Some("delete"));

    let mut w = WorkerProcess::spawn_named("w", &cfg.to_toml());
    let status = w.wait_exit(READY).expect("the worker exits by itself");
    let logs = w.logs();
    assert!(
        !status.success(),
        "the worker refuses to run: {status}\n{logs}"
    );
    let error = logs
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line on stderr:\n{logs}"));
    assert!(
        error.contains(&format!(
            "topic {changelog:?} has cleanup.policy=delete but must be compacted"
        )),
        "the error names the topic and its policy: {error}"
    );
    assert_eq!(
        policy(&broker).as_deref(),
        Some("delete"),
        "the topic is left alone"
    );
}
