//! Restarts: local RocksDB state is reused (only the changelog tail is restored); without
//! it the whole changelog is restored.

use integration_tests::{
    check_exact, serial, unique_name, Broker, KeyedView, TotalsConfig, WorkerProcess, Workload,
};

use crate::{wait_all_committed, wait_for_totals, LONG, READY, RESTORED};

#[test]
fn restart_restores_only_tail() {
    let _serial = serial();
    let broker = Broker::start();
    let input = unique_name("restart-in");
    let output = unique_name("restart-out");
    broker.create_topic(&input, 6);
    broker.create_topic(&output, 6);

    // Three phases of input over the same keys.
    let w = Workload::new(15_000, 100, 0x5eed_0004);
    let (p1, p2) = (5_000, 10_000);

    // The state dir outlives the workers (it is what a restart reuses).
    let state = tempfile::Builder::new()
        .prefix("tributary-state-")
        .tempdir()
        .unwrap();
    let cfg = TotalsConfig::new(
        &unique_name("app-restart"),
        &broker.bootstrap(),
        &input,
        &output,
        state.path(),
    );
    let changelog = cfg.changelog_topic();
    let mut view = KeyedView::open(&broker.bootstrap(), &output).unwrap();

    // Once the input is committed to its end, every output is acknowledged: a stray duplicate
    // would be in the topic.
    let settle_and_check = |view: &mut KeyedView, n: usize, when: &str| {
        wait_all_committed(&broker.bootstrap(), &cfg.app_id, &input, 6);
        view.refresh().unwrap();
        if let Err(e) = check_exact(&w.expected_prefix(n), &view.map) {
            panic!("{when}: {e}");
        }
    };

    // Run 1: fresh state, phase 1.
    broker.produce_json(&input, &w.records[..p1]);
    let mut run1 = WorkerProcess::spawn_named("run1", &cfg.to_toml());
    run1.wait_ready(READY);
    wait_for_totals(&mut view, &w.expected_prefix(p1), LONG, &mut [&mut run1]);
    settle_and_check(&mut view, p1, "run 1");
    let status = run1.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "run 1 clean exit after SIGTERM: {status}"
    );
    drop(run1);

    // Run 2: same state dir; the local state is current, so nothing is restored.
    let mut run2 = WorkerProcess::spawn_named("run2", &cfg.to_toml());
    run2.wait_ready(READY);
    assert_eq!(
        run2.metric_or_zero(RESTORED),
        0.0,
        "restart with current local state restores nothing"
    );
    broker.produce_json(&input, &w.records[p1..p2]);
    wait_for_totals(&mut view, &w.expected_prefix(p2), LONG, &mut [&mut run2]);
    settle_and_check(&mut view, p2, "run 2 (same state dir)");
    let status = run2.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "run 2 clean exit after SIGTERM: {status}"
    );
    drop(run2);

    // Run 3: state dir deleted; everything comes back from the changelog.
    let changelog_records = broker.consume_all(&changelog).len();
    assert!(
        changelog_records > 0,
        "changelog topic {changelog} has records"
    );
    std::fs::remove_dir_all(state.path()).unwrap();
    std::fs::create_dir_all(state.path()).unwrap();
    let mut run3 = WorkerProcess::spawn_named("run3", &cfg.to_toml());
    run3.wait_ready(READY);
    assert_eq!(
        run3.metric_or_zero(RESTORED),
        changelog_records as f64,
        "restore without local state applies every changelog record ({changelog})"
    );
    settle_and_check(&mut view, p2, "run 3 after full restore, before new input");
    // The restored state is the one that keeps counting.
    broker.produce_json(&input, &w.records[p2..]);
    wait_for_totals(&mut view, &w.expected(), LONG, &mut [&mut run3]);
    settle_and_check(
        &mut view,
        w.records.len(),
        "run 3 (restored from changelog)",
    );
    let status = run3.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "run 3 clean exit after SIGTERM: {status}"
    );
}
