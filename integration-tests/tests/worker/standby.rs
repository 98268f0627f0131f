//! Standby replicas (`state.standby_replicas`): warm copies of each task's state on other
//! workers, so that a takeover after a crash restores only the changelog's tail.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use integration_tests::{
    check_at_least, serial, wait_until, watermarks, ContinuousProducer, KeyedView, TotalsConfig,
    WorkerProcess,
};
use serde_json::{json, Value};

use crate::{
    describe, let_records_flow, state_dir, wait_all_committed, wait_all_running, wait_for_totals,
    UnderLoad, LONG, READY, RESTORED,
};

const PARTITIONS: i32 = 6;
const STATE_KEYS: usize = 100_000;
const STANDBY_RECORDS: &str = "tributary_standby_records_total";
const STANDBY_TASKS: &str = "tributary_tasks{state=\"standby\"}";

/// One record for each of `STATE_KEYS` keys of their own (`state-<i>`), apart from the
/// continuous producer's `user-<k>`.
fn state_records() -> Vec<(String, Value)> {
    (0..STATE_KEYS)
        .map(|i| {
            let key = format!("state-{i}");
            let value = json!({ "user": key, "amount": (i % 7 + 1) as u64, "ts": 1_700_000_000_000u64 + i as u64 });
            (key, value)
        })
        .collect()
}

/// A worker's tasks from `/tasks`: (partition, state, lag).
fn tasks(w: &WorkerProcess) -> Vec<(i32, String, i64)> {
    let Ok((200, body)) = w.get("/tasks") else {
        return Vec::new();
    };
    let Ok(Value::Array(list)) = serde_json::from_str::<Value>(&body) else {
        return Vec::new();
    };
    list.iter()
        .map(|t| {
            (
                t["partition"].as_i64().unwrap_or(-1) as i32,
                t["state"].as_str().unwrap_or("").to_string(),
                t["lag"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

/// True when every partition runs on one worker and has a standby, caught up (lag 0), on every
/// other.
fn standbys_caught_up(ws: &[&WorkerProcess]) -> bool {
    let mut running: BTreeMap<i32, usize> = BTreeMap::new();
    let mut warm: BTreeMap<i32, BTreeSet<usize>> = BTreeMap::new();
    for (i, w) in ws.iter().enumerate() {
        for (partition, state, lag) in tasks(w) {
            match state.as_str() {
                "running" => {
                    running.insert(partition, i);
                }
                "standby" if lag == 0 => {
                    warm.entry(partition).or_default().insert(i);
                }
                _ => {}
            }
        }
    }
    (0..PARTITIONS).all(|p| {
        let owner = running.get(&p);
        owner.is_some()
            && warm
                .get(&p)
                .is_some_and(|s| !s.contains(owner.unwrap()) && s.len() == ws.len() - 1)
    })
}

/// Three workers with two standbys of each task (so whichever survivor the assignor picks holds
/// one); the owner of two tasks is killed with SIGKILL under load. The survivors take its tasks
/// over from their standbys: they restore only the changelog's tail (far less than the victim's
/// state), and the totals hold (at least once).
#[test]
fn a_takeover_after_kill9_restores_only_the_tail() {
    let _serial = serial();
    let UnderLoad {
        broker,
        input,
        output,
        app,
        producer,
    } = UnderLoad::start("standby", PARTITIONS, 0x5eed_5b01);
    let bootstrap = broker.bootstrap();
    let state = state_records();
    integration_tests::produce_json(&bootstrap, &input, &state).unwrap();

    let dirs = [state_dir(), state_dir(), state_dir()];
    let mut c = TotalsConfig::new(&app, &bootstrap, &input, &output, dirs[0].path());
    c.standby_replicas = Some(2);
    let mut w1 = WorkerProcess::spawn_named("w1", &c.to_toml());
    let mut w2 = WorkerProcess::spawn_named("w2", &c.for_another_worker(dirs[1].path()).to_toml());
    let mut w3 = WorkerProcess::spawn_named("w3", &c.for_another_worker(dirs[2].path()).to_toml());
    for w in [&mut w1, &mut w2, &mut w3] {
        w.wait_ready(READY);
    }
    wait_all_running(&[&w1, &w2, &w3], PARTITIONS, "three workers");

    // The state is built and every task has a warm standby elsewhere.
    let mut view = KeyedView::open(&bootstrap, &output).unwrap();
    let state_expected = integration_tests::expected_totals(&state);
    wait_for_totals(
        &mut view,
        &state_expected,
        LONG,
        &mut [&mut w1, &mut w2, &mut w3],
    );
    assert!(
        wait_until(LONG, Duration::from_millis(500), || standbys_caught_up(&[
            &w1, &w2, &w3
        ])),
        "standbys did not catch up: w1 {:?}; w2 {:?}; w3 {:?}",
        tasks(&w1),
        tasks(&w2),
        tasks(&w3)
    );
    let standby_tasks: f64 = [&w1, &w2, &w3]
        .iter()
        .map(|w| w.metric_or_zero(STANDBY_TASKS))
        .sum();
    assert_eq!(
        standby_tasks,
        2.0 * PARTITIONS as f64,
        "two standbys per task"
    );

    let victim: Vec<i32> = tasks(&w2)
        .into_iter()
        .filter(|(_, state, _)| state == "running")
        .map(|(p, _, _)| p)
        .collect();
    assert!(!victim.is_empty(), "w2 runs tasks");
    let changelog = c.changelog_topic();
    let victim_state: i64 = victim
        .iter()
        .map(|&p| watermarks(&bootstrap, &changelog, p).unwrap().1)
        .sum();
    let restored_before = w1.metric_or_zero(RESTORED) + w3.metric_or_zero(RESTORED);
    let_records_flow(&producer, 1_000);

    let killed = Instant::now();
    w2.kill9();
    let_records_flow(&producer, 2_000);
    wait_all_running(&[&w1, &w3], PARTITIONS, "after w2 was killed");
    let takeover = killed.elapsed();
    let restored = w1.metric_or_zero(RESTORED) + w3.metric_or_zero(RESTORED) - restored_before;
    eprintln!(
        "standby takeover: {:.1} s from kill -9 to running; restored {restored} changelog records \
         of the victim's {victim_state} (partitions {victim:?})",
        takeover.as_secs_f64()
    );
    assert!(
        restored * 10.0 < victim_state as f64,
        "the takeover restored {restored} records: not the tail of the victim's {victim_state} \
         (partitions {victim:?}); {}",
        describe(&[&w1, &w3])
    );
    assert!(
        w1.metric_or_zero(STANDBY_RECORDS) + w3.metric_or_zero(STANDBY_RECORDS) > 0.0,
        "the survivors kept standbys"
    );
    let_records_flow(&producer, 2_000);

    settle_exact_enough(
        producer,
        &state,
        (&bootstrap, &app, &input),
        &mut view,
        &mut [&mut w1, &mut w3],
    );
    for w in [&mut w1, &mut w3] {
        let status = w.terminate();
        assert_eq!(status.code(), Some(0), "{} clean exit: {status}", w.name());
    }
}

/// Stops the producer and waits until the sink reflects the state records and everything
/// produced, at least once, with the input committed to its end.
fn settle_exact_enough(
    producer: ContinuousProducer,
    state: &[(String, Value)],
    (bootstrap, app, input): (&str, &str, &str),
    view: &mut KeyedView,
    workers: &mut [&mut WorkerProcess],
) {
    let mut all = state.to_vec();
    all.extend(producer.stop());
    let expected = integration_tests::expected_totals(&all);
    wait_for_totals(view, &expected, LONG, workers);
    wait_all_committed(bootstrap, app, input, PARTITIONS);
    view.refresh().unwrap();
    if let Err(e) = check_at_least(&expected, &view.map) {
        panic!(
            "after a takeover from standbys ({} records): {e}",
            all.len()
        );
    }
}

/// Exactly once, two workers of two members each, one standby per task (so each survivor holds
/// every task warm), the state cleaner running often: the owner of half the tasks is killed
/// with SIGKILL under load and the survivor takes its tasks over from its standbys (reading
/// `read_committed`, over the victim's open transaction); the victim comes back on its state
/// directory, where its former tasks become standbys, catches up, and then the other worker is
/// killed. Every takeover restores only a tail, and the totals are exact.
#[test]
fn exactly_once_takeovers_from_standbys_keep_totals_exact() {
    let _serial = serial();
    let UnderLoad {
        broker,
        input,
        output,
        app,
        producer,
    } = UnderLoad::start("standby-eos", PARTITIONS, 0x5eed_5b02);
    let bootstrap = broker.bootstrap();
    let state: Vec<(String, Value)> = state_records().into_iter().take(20_000).collect();
    integration_tests::produce_json(&bootstrap, &input, &state).unwrap();

    let dirs = [state_dir(), state_dir()];
    let mut c = TotalsConfig::new(&app, &bootstrap, &input, &output, dirs[0].path()).exactly_once();
    c.standby_replicas = Some(1);
    c.threads = 2;
    c.cleanup_delay_ms = Some(1_000);
    let c2 = c.for_another_worker(dirs[1].path());
    let mut w1 = WorkerProcess::spawn_named("w1", &c.to_toml());
    let mut w2 = WorkerProcess::spawn_named("w2", &c2.to_toml());
    for w in [&mut w1, &mut w2] {
        w.wait_ready(READY);
    }
    wait_all_running(&[&w1, &w2], PARTITIONS, "two workers");
    let warm = |ws: &[&WorkerProcess], what: &str| {
        assert!(
            wait_until(LONG, Duration::from_millis(500), || standbys_caught_up(ws)),
            "{what}: standbys did not catch up: {}",
            describe(ws)
        );
    };
    warm(&[&w1, &w2], "two workers");
    let changelog = c.changelog_topic();
    let changelog_size = || -> i64 {
        (0..PARTITIONS)
            .map(|p| watermarks(&bootstrap, &changelog, p).unwrap().1)
            .sum()
    };

    // w2 dies; w1 takes its tasks over from its standbys.
    let_records_flow(&producer, 1_000);
    let restored_before = w1.metric_or_zero(RESTORED);
    w2.kill9();
    let_records_flow(&producer, 1_000);
    wait_all_running(&[&w1], PARTITIONS, "after w2 was killed");
    let restored = w1.metric_or_zero(RESTORED) - restored_before;
    let size = changelog_size();
    assert!(
        restored * 10.0 < size as f64,
        "w1's takeover restored {restored} of the changelog's {size} records: not a tail; {}",
        describe(&[&w1])
    );

    // w2 comes back on its directory, gets tasks and standbys, and catches up; then w1 dies.
    let mut w2 = WorkerProcess::spawn_named("w2-again", &c2.restarted().to_toml());
    w2.wait_ready(READY);
    wait_all_running(&[&w1, &w2], PARTITIONS, "w2 back");
    warm(&[&w1, &w2], "w2 back");
    let_records_flow(&producer, 1_000);
    let restored_before = w2.metric_or_zero(RESTORED);
    w1.kill9();
    let_records_flow(&producer, 1_000);
    wait_all_running(&[&w2], PARTITIONS, "after w1 was killed");
    let restored = w2.metric_or_zero(RESTORED) - restored_before;
    let size = changelog_size();
    assert!(
        restored * 10.0 < size as f64,
        "w2's takeover restored {restored} of the changelog's {size} records: not a tail; {}",
        describe(&[&w2])
    );
    let_records_flow(&producer, 1_000);

    let mut all = state.clone();
    all.extend(producer.stop());
    let expected = integration_tests::expected_totals(&all);
    let mut view = KeyedView::open(&bootstrap, &output).unwrap();
    wait_for_totals(&mut view, &expected, LONG, &mut [&mut w2]);
    wait_all_committed(&bootstrap, &app, &input, PARTITIONS);
    view.refresh().unwrap();
    if let Err(e) = integration_tests::check_exact(&expected, &view.map) {
        panic!(
            "exactly once, after two takeovers from standbys ({} records): {e}",
            all.len()
        );
    }
    let status = w2.terminate();
    assert_eq!(status.code(), Some(0), "w2 clean exit: {status}");
}
