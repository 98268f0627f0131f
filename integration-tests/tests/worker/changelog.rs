//! What only a real broker shows about changelogs and offsets (Apache Kafka; skipped on tansu,
//! which neither compacts nor reports exact end offsets): compaction, tombstones, transaction
//! markers, a recreated changelog, and consumer lag.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use integration_tests::{
    check_exact, committed_offsets, delete_topic, produce_transaction, serial, unique_name,
    wait_until, watermarks, Broker, BrokerKind, KeyedView, TotalsConfig, WorkerProcess, Workload,
};
use serde_json::json;

use crate::{state_dir, wait_for_totals, LONG, READY, RESTORED};

fn on_kafka() -> bool {
    BrokerKind::from_env() == BrokerKind::Kafka
}

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
    cfg.pipeline = "windows".into();
    cfg.source_keys = r#", format = "json", time = "ts""#.into();
    cfg.steps = "[[pipeline.steps]]\n[pipeline.steps.aggregate]\n\
                 window = { kind = \"tumbling\", size = \"10s\" }\n\
                 fields = { count = \"count()\" }\nemit = \"final\"\n"
        .into();
    let changelog = cfg.changelog_topic();
    // Three users in windows starting at 0, 10 s, 20 s, ... ; each phase ends with a record that
    // moves stream time past the phase's windows, closing them.
    let phase = |from_s: u64, to_s: u64| -> Vec<(String, serde_json::Value)> {
        let mut recs = Vec::new();
        for s in from_s..to_s {
            for u in 0..3 {
                recs.push((
                    format!("u{u}"),
                    json!({"user": format!("u{u}"), "amount": 1, "ts": s * 1000}),
                ));
            }
        }
        recs
    };
    // (user, window start) → the counts emitted for it.
    let finals = |broker: &Broker| -> BTreeMap<(String, u64), Vec<u64>> {
        let mut n: BTreeMap<_, Vec<u64>> = BTreeMap::new();
        for r in broker.consume_all(&cfg.output) {
            if let (Some(k), Some(v)) = (r.key_str(), r.json()) {
                n.entry((k, v["window_start"].as_u64().unwrap()))
                    .or_default()
                    .push(v["count"].as_u64().unwrap());
            }
        }
        n
    };
    let wait_finals = |broker: &Broker, w: &mut WorkerProcess, want: usize| {
        let ok = wait_until(LONG, Duration::from_millis(500), || {
            assert!(w.try_status().is_none(), "{} exited", w.name());
            finals(broker).len() >= want
        });
        assert!(
            ok,
            "{want} final window results did not arrive: {:?}",
            finals(broker)
        );
    };

    // Phase 1: windows [0,10), [10,20), [20,30) for 3 users; a record at 30 s closes them.
    broker.produce_json(&cfg.input, &phase(0, 31));
    let mut w1 = WorkerProcess::spawn_named("w1", &cfg.to_toml());
    w1.wait_ready(READY);
    wait_finals(&broker, &mut w1, 9);
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
    broker.produce_json(&cfg.input, &phase(31, 61));
    let mut w2 = WorkerProcess::spawn_named("w2", &cfg.to_toml());
    w2.wait_ready(READY);
    assert!(w2.metric_or_zero(RESTORED) > 0.0, "the state was restored");
    wait_finals(&broker, &mut w2, 18);
    assert_eq!(w2.terminate().code(), Some(0));
    let got = finals(&broker);
    // One record per user and second: every window's single final result counts 10 (the
    // window [30 s, 40 s) began before the restore and was finished after it).
    let wrong: Vec<_> = got.iter().filter(|(_, n)| **n != [10]).collect();
    assert!(
        wrong.is_empty(),
        "windows emitted twice or miscounted: {wrong:?}"
    );
    assert_eq!(got.len(), 18, "windows 0..60 s for 3 users: {got:?}");
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
