//! Membership changes: graceful joins and leaves are exact; a kill -9 is at least once.

use std::collections::BTreeSet;
use std::time::Duration;

use integration_tests::{
    check_at_least, check_exact, committed_offsets, duplicates, serial, unique_name, wait_until,
    watermarks, Broker, KeyedView, TotalsConfig, WorkerProcess, Workload,
};

use crate::{
    describe, let_records_flow, settle, state_dir, wait_all_running, wait_for_totals, Protocol,
    Settled, UnderLoad, CONSUMED, LONG, READY, REBALANCES, RESTORED,
};

const PARTITIONS: i32 = 6;
#[test]
fn rebalance_join_and_leave() {
    let _serial = serial();
    let UnderLoad {
        broker,
        input,
        output,
        app,
        producer,
    } = UnderLoad::start("rebal", PARTITIONS, 0x5eed_0002);

    let (s1, s2, s3) = (state_dir(), state_dir(), state_dir());
    let c1 = TotalsConfig::new(&app, &broker.bootstrap(), &input, &output, s1.path());
    let c2 = c1.for_another_worker(s2.path());
    let c3 = c1.for_another_worker(s3.path());

    let mut w1 = WorkerProcess::spawn_named("w1", &c1.to_toml());
    let mut w2 = WorkerProcess::spawn_named("w2", &c2.to_toml());
    w1.wait_ready(READY);
    w2.wait_ready(READY);
    wait_all_running(&[&w1, &w2], PARTITIONS, "two workers");
    let_records_flow(&producer, 2_000);

    // A third member joins while records keep arriving.
    let rebalances = |ws: &[&WorkerProcess]| {
        ws.iter()
            .map(|w| w.metric(REBALANCES).unwrap_or(0.0))
            .sum::<f64>()
    };
    let before = rebalances(&[&w1, &w2]);
    let mut w3 = WorkerProcess::spawn_named("w3", &c3.to_toml());
    w3.wait_ready(READY);
    wait_all_running(&[&w1, &w2, &w3], PARTITIONS, "three workers");
    // w1 and w2 each gave up partitions to w3.
    assert!(
        rebalances(&[&w1, &w2]) > before,
        "rebalances counted by w1 and w2: {before} before w3 joined"
    );
    let_records_flow(&producer, 2_000);

    // One member leaves gracefully.
    let status = w1.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "w1 clean exit after SIGTERM: {status}"
    );
    wait_all_running(&[&w2, &w3], PARTITIONS, "after w1 left");
    let_records_flow(&producer, 2_000);

    settle(
        producer,
        &broker,
        (&app, &input, &output),
        PARTITIONS,
        &mut [&mut w2, &mut w3],
    )
    .assert_exact("after graceful rebalances");

    for w in [&mut w2, &mut w3] {
        let status = w.terminate();
        assert_eq!(
            status.code(),
            Some(0),
            "{} clean exit after SIGTERM: {status}",
            w.name()
        );
    }
}

#[test]
fn kill9_under_load() {
    kill9_under_load_with(Protocol::Classic);
}

/// Three workers under load, one killed with SIGKILL: the survivors take its partitions
/// once the group notices (the session timeout), restore its state, and the sink's totals
/// are at least the input's, over-counted by no more than the victim processed after its
/// last commit.
pub fn kill9_under_load_with(protocol: Protocol) {
    let _serial = serial();
    let UnderLoad {
        broker,
        input,
        output,
        app,
        producer,
    } = UnderLoad::start("kill", PARTITIONS, 0x5eed_0003);

    let dirs = [state_dir(), state_dir(), state_dir()];
    let c1 = protocol.apply(TotalsConfig::new(
        &app,
        &broker.bootstrap(),
        &input,
        &output,
        dirs[0].path(),
    ));
    let mut w1 = WorkerProcess::spawn_named("w1", &c1.to_toml());
    let mut w2 = WorkerProcess::spawn_named("w2", &c1.for_another_worker(dirs[1].path()).to_toml());
    let mut w3 = WorkerProcess::spawn_named("w3", &c1.for_another_worker(dirs[2].path()).to_toml());
    for w in [&mut w1, &mut w2, &mut w3] {
        w.wait_ready(READY);
    }
    wait_all_running(&[&w1, &w2, &w3], PARTITIONS, "three workers");
    protocol.assert_group(&broker, &app);

    // The victim has processed (and so has state and changelog records) before it dies.
    assert!(
        wait_until(LONG, Duration::from_millis(500), || w2
            .metric(CONSUMED)
            .unwrap_or(0.0)
            >= 1_000.0),
        "w2 did not consume: {}",
        describe(&[&w1, &w2, &w3])
    );
    let_records_flow(&producer, 1_000);
    let (_, tasks) = w2.get("/tasks").expect("victim's /tasks");
    let victim: Vec<i32> = serde_json::from_str::<serde_json::Value>(&tasks)
        .expect("/tasks is JSON")
        .as_array()
        .expect("/tasks is a list")
        .iter()
        .filter_map(|t| t["partition"].as_i64().map(|p| p as i32))
        .collect();
    assert!(!victim.is_empty(), "the victim owns partitions: {tasks}");
    w2.kill9();
    // Records counted twice can only be the victim's, between its last commit and its death:
    // at most, per partition it owned, the end offset now minus the offset it committed.
    let committed = committed_offsets(&broker.bootstrap(), &app, &input).unwrap();
    let bound: i64 = victim
        .iter()
        .map(|&p| {
            let (low, high) = watermarks(&broker.bootstrap(), &input, p).unwrap();
            high - committed.get(&p).copied().unwrap_or(low)
        })
        .sum();

    // Survivors notice through the session timeout, take over and restore.
    let_records_flow(&producer, 2_000);
    wait_all_running(&[&w1, &w3], PARTITIONS, "after w2 was killed");
    let_records_flow(&producer, 2_000);

    let Settled {
        records,
        expected,
        view,
    } = settle(
        producer,
        &broker,
        (&app, &input, &output),
        PARTITIONS,
        &mut [&mut w1, &mut w3],
    );
    if let Err(e) = check_at_least(&expected, &view.map) {
        panic!(
            "after {} records and a kill -9 (at least once): {e}",
            records.len()
        );
    }
    let dups = duplicates(&expected, &view.map);
    eprintln!(
        "kill -9 under load ({protocol:?} protocol): {} records, {dups} counted twice (bound {bound}: the victim's \
         partitions {victim:?} between its last commit and its death)",
        records.len()
    );
    assert!(
        dups as i64 <= bound,
        "{dups} records counted twice, but only {bound} were processed by the victim after its \
         last commit (partitions {victim:?})"
    );

    let restored = w1.metric(RESTORED).unwrap_or(0.0) + w3.metric(RESTORED).unwrap_or(0.0);
    assert!(
        restored > 0.0,
        "survivors restored the victim's state from its changelog: {restored}"
    );

    for w in [&mut w1, &mut w3] {
        let status = w.terminate();
        assert_eq!(
            status.code(),
            Some(0),
            "{} clean exit after SIGTERM: {status}",
            w.name()
        );
    }
}

/// The task ids a worker reports on `/tasks` (empty when it does not answer), and the source
/// topics each task has processed records of.
fn tasks(w: &WorkerProcess) -> Vec<(String, BTreeSet<String>)> {
    let Ok((200, body)) = w.get("/tasks") else {
        return Vec::new();
    };
    let list: serde_json::Value = serde_json::from_str(&body).expect("/tasks is JSON");
    list.as_array()
        .expect("/tasks is a list")
        .iter()
        .map(|t| {
            let id = t["id"].as_str().expect("a task has an id").to_string();
            let topics = t["positions"]
                .as_object()
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            (id, topics)
        })
        .collect()
}

/// A pipeline over two co-partitioned topics, shared by two workers with `range`: partition n of
/// both topics goes to the same worker, so no task runs on both workers, every task reads both
/// topics, and each key's totals over both topics are exact.
#[test]
fn two_topics_two_workers_with_range() {
    // An odd count: the sticky and round-robin assignors, dealing the 2 x 3 partitions out one
    // by one, put partition n of the two topics on different workers (with cooperative-sticky
    // this test fails: every task runs on both workers).
    const P: i32 = 3;
    let _serial = serial();
    let broker = Broker::start();
    let (a, b) = (unique_name("copart-a"), unique_name("copart-b"));
    let output = unique_name("copart-out");
    for t in [&a, &b, &output] {
        broker.create_topic(t, P);
    }
    // Every key's records are spread over both topics; the producer puts a key in the same
    // partition number of each (same partitioner, same count).
    let w = Workload::new(6_000, 60, 0x5eed_0201);
    let (to_a, to_b): (Vec<_>, Vec<_>) = w
        .records
        .iter()
        .cloned()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    let strip = |v: Vec<(usize, (String, serde_json::Value))>| -> Vec<_> {
        v.into_iter().map(|(_, r)| r).collect()
    };
    broker.produce_json(&a, &strip(to_a));
    broker.produce_json(&b, &strip(to_b));

    let (s1, s2) = (state_dir(), state_dir());
    let mut c1 = TotalsConfig::new(
        &unique_name("app-copart"),
        &broker.bootstrap(),
        &a,
        &output,
        s1.path(),
    );
    c1.more_inputs = vec![b.clone()];
    c1.assignment = Some("range".into());
    let c2 = c1.for_another_worker(s2.path());
    let mut w1 = WorkerProcess::spawn_named("w1", &c1.to_toml());
    let mut w2 = WorkerProcess::spawn_named("w2", &c2.to_toml());
    w1.wait_ready(READY);
    w2.wait_ready(READY);

    let mut view = KeyedView::open(&broker.bootstrap(), &output).unwrap();
    wait_for_totals(&mut view, &w.expected(), LONG, &mut [&mut w1, &mut w2]);
    // Settled: both workers run tasks, together one per partition number, each reading both.
    let mut last = String::new();
    let settled = wait_until(READY, Duration::from_millis(500), || {
        let (t1, t2) = (tasks(&w1), tasks(&w2));
        last = format!("w1 {t1:?}, w2 {t2:?}");
        !t1.is_empty() && !t2.is_empty() && t1.len() + t2.len() == P as usize
    });
    assert!(
        settled,
        "the two workers did not settle on {P} tasks: {last}"
    );
    let (t1, t2) = (tasks(&w1), tasks(&w2));
    let ids1: BTreeSet<&String> = t1.iter().map(|(id, _)| id).collect();
    let ids2: BTreeSet<&String> = t2.iter().map(|(id, _)| id).collect();
    assert!(
        ids1.is_disjoint(&ids2),
        "a task runs on both workers: w1 {ids1:?}, w2 {ids2:?}"
    );
    assert_eq!(
        ids1.len() + ids2.len(),
        P as usize,
        "w1 {ids1:?}, w2 {ids2:?}"
    );
    // A task that processed records since the last rebalance shows both topics' positions (one
    // reopened after all input was consumed shows none; the member's warning below covers it).
    for (_, topics) in t1.iter().chain(&t2).filter(|(_, t)| !t.is_empty()) {
        assert_eq!(topics, &BTreeSet::from([a.clone(), b.clone()]));
    }
    view.refresh().unwrap();
    if let Err(e) = check_exact(&w.expected(), &view.map) {
        panic!("two topics over two workers: {e}");
    }
    for w in [&mut w1, &mut w2] {
        let status = w.terminate();
        assert_eq!(
            status.code(),
            Some(0),
            "{} clean exit after SIGTERM: {status}",
            w.name()
        );
        assert!(
            !w.logs().contains("holds only some of task"),
            "{}: no task was split between members",
            w.name()
        );
    }
}

/// Names in a worker's state directory for its app: task directories and their lock files.
fn state_entries(state: &std::path::Path, app: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    // Task entries only: `<topology>_<partition>`, not the worker's own files beside them
    // (its presence lock, an exactly-once identity).
    let is_task = |name: &str| {
        name.split_once('_')
            .is_some_and(|(t, p)| t.parse::<u32>().is_ok() && p.parse::<u32>().is_ok())
    };
    let mut dirs = BTreeSet::new();
    let mut locks = BTreeSet::new();
    for entry in std::fs::read_dir(state.join(app)).into_iter().flatten() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        match name.strip_suffix(".lock") {
            Some(task) if is_task(task) => locks.insert(task.to_string()),
            Some(_) => false,
            None if is_task(&name) => dirs.insert(name),
            None => false,
        };
    }
    (dirs, locks)
}

/// When tasks move to a worker that joins, the worker they left deletes their state directories
/// (and lock files) once `state.cleanup_delay_ms` has passed, and keeps those of its own tasks.
#[test]
fn state_of_tasks_that_moved_away_is_deleted_after_the_delay() {
    const P: i32 = 4;
    let _serial = serial();
    let broker = Broker::start();
    let input = unique_name("cleanup-in");
    let output = unique_name("cleanup-out");
    broker.create_topic(&input, P);
    broker.create_topic(&output, P);
    let app = unique_name("app-cleanup");
    let w = Workload::new(4_000, 40, 0x5eed_0202);
    broker.produce_json(&input, &w.records[..2_000]);

    let (s1, s2) = (state_dir(), state_dir());
    let mut c1 = TotalsConfig::new(&app, &broker.bootstrap(), &input, &output, s1.path());
    c1.cleanup_delay_ms = Some(2_000);
    let c2 = c1.for_another_worker(s2.path());
    let mut view = KeyedView::open(&broker.bootstrap(), &output).unwrap();

    // w1 alone runs every task, and has a directory for each.
    let mut w1 = WorkerProcess::spawn_named("w1", &c1.to_toml());
    w1.wait_ready(READY);
    wait_for_totals(&mut view, &w.expected_prefix(2_000), LONG, &mut [&mut w1]);
    let all: BTreeSet<String> = (0..P).map(|p| format!("0_{p}")).collect();
    assert_eq!(state_entries(s1.path(), &app).0, all);

    // w2 joins and takes some of them.
    let mut w2 = WorkerProcess::spawn_named("w2", &c2.to_toml());
    w2.wait_ready(READY);
    let ids = |w: &WorkerProcess| -> BTreeSet<String> {
        tasks(w).into_iter().map(|(id, _)| id).collect()
    };
    let shared = wait_until(READY, Duration::from_millis(500), || {
        let (t1, t2) = (ids(&w1), ids(&w2));
        !t1.is_empty() && !t2.is_empty() && t1.len() + t2.len() == P as usize
    });
    assert!(
        shared,
        "w2 did not take tasks: w1 {:?}, w2 {:?}",
        ids(&w1),
        ids(&w2)
    );
    broker.produce_json(&input, &w.records[2_000..]);
    wait_for_totals(&mut view, &w.expected(), LONG, &mut [&mut w1, &mut w2]);

    // After the delay, w1's state directory holds exactly its own tasks: the moved ones' are
    // deleted, lock files included; its own stay.
    let mine = ids(&w1);
    let moved: BTreeSet<String> = all.difference(&mine).cloned().collect();
    assert!(!moved.is_empty(), "some tasks moved to w2: w1 has {mine:?}");
    let mut last = (BTreeSet::new(), BTreeSet::new());
    let cleaned = wait_until(LONG, Duration::from_millis(250), || {
        last = state_entries(s1.path(), &app);
        last.0 == mine && last.1 == mine
    });
    assert!(
        cleaned,
        "w1 should keep only its tasks {mine:?} (moved: {moved:?}); it has directories {:?} and locks {:?}",
        last.0, last.1
    );
    assert!(
        w1.logs().contains("deleted the state of a task"),
        "deletions are logged"
    );
    assert_eq!(ids(&w1), mine, "w1 kept its tasks meanwhile");
    // w2 deleted nothing of its own.
    let theirs = ids(&w2);
    assert_eq!(state_entries(s2.path(), &app).0, theirs);
    view.refresh().unwrap();
    if let Err(e) = check_exact(&w.expected(), &view.map) {
        panic!("{e}");
    }
    for w in [&mut w1, &mut w2] {
        let status = w.terminate();
        assert_eq!(
            status.code(),
            Some(0),
            "{} clean exit after SIGTERM: {status}",
            w.name()
        );
    }
}
