//! One worker computes exact running totals.

use integration_tests::{
    check_exact, serial, unique_name, Broker, KeyedView, TotalsConfig, WorkerProcess, Workload,
};

use crate::{state_dir, wait_all_committed, wait_for_totals, CONSUMED, LONG, READY};

#[test]
fn one_worker_totals() {
    let _serial = serial();
    let broker = Broker::start();
    let input = unique_name("totals-in");
    let output = unique_name("totals-out");
    broker.create_topic(&input, 6);
    broker.create_topic(&output, 6);

    // Input first: a new group starts from the earliest offset.
    let w = Workload::new(20_000, 200, 0x5eed_0001);
    broker.produce_json(&input, &w.records);
    let expected = w.expected();
    assert_eq!(expected.len(), 200);

    let state = state_dir();
    let cfg = TotalsConfig::new(
        &unique_name("app-totals"),
        &broker.bootstrap(),
        &input,
        &output,
        state.path(),
    );
    let mut worker = WorkerProcess::spawn_named("worker", &cfg.to_toml());
    worker.wait_ready(READY);

    let mut view = KeyedView::open(&broker.bootstrap(), &output).unwrap();
    wait_for_totals(&mut view, &expected, LONG, &mut [&mut worker]);
    // Caught up; once the input is committed to its end every output is acknowledged, so a
    // stray duplicate (there must be none) would be in the topic by now.
    wait_all_committed(&broker.bootstrap(), &cfg.app_id, &input, 6);
    view.refresh().unwrap();
    if let Err(e) = check_exact(&expected, &view.map) {
        panic!("{e}");
    }
    assert_eq!(worker.metric(CONSUMED), Some(20_000.0), "records consumed");

    let status = worker.terminate();
    assert_eq!(status.code(), Some(0), "clean exit after SIGTERM: {status}");
    // The shutdown closes every connection: no news, so no error lines.
    let log = worker.logs();
    assert!(
        !log.lines().any(|l| l.contains("ERROR")),
        "error lines in a clean run:\n{log}"
    );

    // Output unchanged after shutdown.
    view.refresh().unwrap();
    if let Err(e) = check_exact(&expected, &view.map) {
        panic!("after shutdown: {e}");
    }
}
