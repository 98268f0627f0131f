//! A worker started before its broker, or before its source topic exists, waits for them.

use std::time::{Duration, Instant};

use integration_tests::{
    check_exact, free_port, serial, unique_name, wait_until, Broker, KeyedView, TotalsConfig,
    WorkerProcess, Workload,
};

use crate::{state_dir, wait_for_totals, LONG, READY};

/// Asserts that `log` has no error line (`what` says why there should be none).
fn assert_no_errors(log: &str, what: &str) {
    assert!(!log.lines().any(|l| l.contains("ERROR")), "{what}:\n{log}");
}

/// A worker whose brokers never answer (nothing listens at its bootstrap address), with
/// `kafka_keys` added to its `[kafka]` table; its state directory, and that address.
fn worker_without_brokers(kafka_keys: &str) -> (WorkerProcess, tempfile::TempDir, String) {
    let state = state_dir();
    let nobody = format!("127.0.0.1:{}", free_port());
    let cfg = TotalsConfig::new(
        &unique_name("app-nobody"),
        &nobody,
        "in",
        "out",
        state.path(),
    );
    let toml = cfg
        .to_toml()
        .replace("[kafka]\n", &format!("[kafka]\n{kafka_keys}"));
    (WorkerProcess::spawn_named("worker", &toml), state, nobody)
}

/// What `/ready` answers, as (status, body).
fn ready(w: &WorkerProcess) -> Option<(u16, String)> {
    w.get("/ready").ok()
}

/// The broker is down when the worker starts and comes back 20 s later: meanwhile the worker
/// stays up, `/health` answers 200 and `/ready` 503 naming what it waits for and the key that
/// sets it, and its log says so once per attempt, with no error lines; then it processes every
/// record, exactly.
#[test]
fn a_worker_started_before_its_broker_waits_and_processes_everything() {
    let _serial = serial();
    let mut broker = Broker::start();
    let input = unique_name("late-in");
    let output = unique_name("late-out");
    broker.create_topic(&input, 4);
    broker.create_topic(&output, 4);
    let w = Workload::new(5_000, 100, 0x5eed_1101);
    broker.produce_json(&input, &w.records);
    broker.stop();

    let state = state_dir();
    let cfg = TotalsConfig::new(
        &unique_name("app-late"),
        &broker.bootstrap(),
        &input,
        &output,
        state.path(),
    );
    let started = Instant::now();
    let mut worker = WorkerProcess::spawn_named("worker", &cfg.to_toml());
    let waiting = wait_until(
        LONG,
        Duration::from_millis(250),
        || matches!(ready(&worker), Some((503, body)) if body.contains("kafka.bootstrap_servers")),
    );
    assert!(
        waiting,
        "/ready does not say the worker waits for its brokers: {:?}\n{}",
        ready(&worker),
        worker.logs()
    );
    assert_eq!(
        worker.get("/health").map(|(code, _)| code).ok(),
        Some(200),
        "/health while waiting"
    );
    let (_, body) = ready(&worker).unwrap();
    assert!(
        body.contains(&broker.bootstrap()),
        "the reason names the address: {body}"
    );
    // The broker comes back 20 s after the worker started, once the worker has tried more
    // than once.
    let attempts = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains("waiting for the brokers at") && l.contains("kafka.bootstrap_servers")
            })
            .count()
    };
    let waited = wait_until(LONG, Duration::from_millis(500), || {
        !worker.is_alive()
            || (started.elapsed() >= Duration::from_secs(20) && attempts(&worker.logs()) >= 2)
    });
    assert!(
        waited && worker.is_alive(),
        "the worker gave up, or said nothing:\n{}",
        worker.logs()
    );
    let log = worker.logs();
    assert_no_errors(&log, "waiting for the brokers is not an error");
    broker.restart();
    worker.wait_ready(READY);
    let mut view = KeyedView::open(&broker.bootstrap(), &output).unwrap();
    wait_for_totals(&mut view, &w.expected(), LONG, &mut [&mut worker]);
    view.refresh().unwrap();
    if let Err(e) = check_exact(&w.expected(), &view.map) {
        panic!("{e}");
    }
    assert_eq!(worker.terminate().code(), Some(0), "clean exit");
    // Neither the wait, nor the broker's return, nor the shutdown's closed connections are
    // errors.
    let log = worker.logs();
    assert_no_errors(&log, "error lines in a run without errors");
}

/// A source topic that does not exist yet is waited for, naming the pipeline key that asks
/// for it; once it is created and written, the worker processes it.
#[test]
fn a_missing_source_topic_is_waited_for() {
    let _serial = serial();
    let broker = Broker::start();
    let input = unique_name("missing-in");
    let output = unique_name("missing-out");
    broker.create_topic(&output, 2);
    let state = state_dir();
    let cfg = TotalsConfig::new(
        &unique_name("app-missing"),
        &broker.bootstrap(),
        &input,
        &output,
        state.path(),
    );
    let mut worker = WorkerProcess::spawn_named("worker", &cfg.to_toml());
    let expected_reason = format!("source topic {input:?} to exist (pipeline[0].source.topics)");
    let waiting = wait_until(
        LONG,
        Duration::from_millis(250),
        || matches!(ready(&worker), Some((503, body)) if body.contains(&expected_reason.replace('"', "\\\""))),
    );
    assert!(
        waiting,
        "/ready does not name the missing topic: {:?}\n{}",
        ready(&worker),
        worker.logs()
    );
    assert!(
        worker.logs().contains(&expected_reason),
        "{}",
        worker.logs()
    );
    broker.create_topic(&input, 2);
    let w = Workload::new(2_000, 50, 0x5eed_1102);
    broker.produce_json(&input, &w.records);
    worker.wait_ready(LONG);
    let mut view = KeyedView::open(&broker.bootstrap(), &output).unwrap();
    wait_for_totals(&mut view, &w.expected(), LONG, &mut [&mut worker]);
    view.refresh().unwrap();
    if let Err(e) = check_exact(&w.expected(), &view.map) {
        panic!("{e}");
    }
    assert_eq!(worker.terminate().code(), Some(0), "clean exit");
}

/// With `kafka.startup_timeout_ms`, a worker whose brokers never answer gives up: exit 1 and
/// one line saying what it waited for, with the cause once.
#[test]
fn a_worker_gives_up_after_the_startup_timeout_with_one_line() {
    let (mut worker, _state, nobody) = worker_without_brokers("startup_timeout_ms = 3000\n");
    let status = worker
        .wait_exit(LONG)
        .unwrap_or_else(|| panic!("still waiting:\n{}", worker.logs()));
    assert_eq!(status.code(), Some(1), "{}", worker.logs());
    let log = worker.logs();
    let last = log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(
        last.starts_with("error: gave up after")
            && last.contains("(kafka.startup_timeout_ms)")
            && last.contains(&format!(
                "the brokers at {nobody} (kafka.bootstrap_servers)"
            )),
        "the last line says why it gave up: {last}"
    );
    // The cause, once (librdkafka's chains repeat it).
    let cause = last.rsplit("(kafka.bootstrap_servers): ").next().unwrap();
    assert_eq!(last.matches(cause).count(), 1, "{last}");
    assert_no_errors(&log, "no librdkafka error lines");
}

/// A worker waiting for its brokers stops on SIGTERM, exit 0.
#[test]
fn a_waiting_worker_stops_on_sigterm() {
    let (mut worker, _state, _) = worker_without_brokers("");
    let waiting = wait_until(LONG, Duration::from_millis(250), || {
        worker.logs().contains("waiting for the brokers at")
    });
    assert!(waiting, "{}", worker.logs());
    assert_eq!(worker.terminate().code(), Some(0), "{}", worker.logs());
}
