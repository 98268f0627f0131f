//! A broker that stops answering in the middle of a run.

use std::time::Duration;

use integration_tests::{
    check_at_least, committed_offsets, expected_totals, serial, unique_name, Broker,
    ContinuousProducer, KeyedView, TotalsConfig, WorkerProcess,
};

use crate::{state_dir, wait_for_totals, CONSUMED, LONG, READY};

/// A commit whose produced records are never acknowledged (the broker froze with them in
/// flight) fails after `processing.commit_timeout_ms` instead of hanging until librdkafka's
/// own delivery timeout (here 10 minutes): the worker exits non-zero, saying why and naming
/// the key (or, when the freeze caught an offset commit instead, fails it and gives up its
/// partitions), with nothing committed beyond what was durable. Once the broker is back,
/// nothing is lost.
#[test]
fn a_commit_that_cannot_complete_times_out() {
    // Output waits in the producer until a commit flushes it (linger), so a commit always has
    // records to wait for.
    // (Usually the freeze lands in a flush, which lasts the linger; if it lands between
    // commits, the next commit's ownership check is what times out, repeatedly.)
    frozen_broker_fails_the_worker(
        "\"linger.ms\" = \"1000\"\n",
        200,
        &["were not acknowledged", "offset commits failed"],
    );
}

/// The same when the producer's queue fills up first (a small queue, a frozen broker): a send
/// waits for room at most `processing.commit_timeout_ms`, then the worker fails, saying so.
#[test]
fn a_send_into_a_full_queue_times_out() {
    frozen_broker_fails_the_worker(
        "\"queue.buffering.max.messages\" = \"5\"\n",
        // No commit in the way: the freeze lands while records are being processed.
        600_000,
        &["the producer's queue stayed full"],
    );
}

/// Runs a worker under load, freezes the broker, expects the worker to fail with one of
/// `messages` (and the commit timeout key) in its log, and then a new worker to lose nothing.
/// `properties`: librdkafka properties beside a 10-minute delivery timeout; commits every
/// `commit_interval_ms`.
fn frozen_broker_fails_the_worker(properties: &str, commit_interval_ms: u64, messages: &[&str]) {
    let _serial = serial();
    let broker = Broker::start();
    let input = unique_name("frozen-in");
    let output = unique_name("frozen-out");
    broker.create_topic(&input, 2);
    broker.create_topic(&output, 2);
    let state = state_dir();
    let mut cfg = TotalsConfig::new(
        &unique_name("app-frozen"),
        &broker.bootstrap(),
        &input,
        &output,
        state.path(),
    );
    // librdkafka would fail undelivered records only after 10 minutes.
    cfg.extra = format!("[kafka.properties]\n\"message.timeout.ms\" = \"600000\"\n{properties}");
    let toml = cfg.to_toml().replace(
        "commit_interval_ms = 500",
        &format!("commit_interval_ms = {commit_interval_ms}\ncommit_timeout_ms = 3000"),
    );
    let producer = ContinuousProducer::start(
        &broker.bootstrap(),
        &input,
        50,
        0x5eed_0201,
        100,
        Duration::from_millis(20),
        1_000_000,
    );
    let mut w1 = WorkerProcess::spawn_named("w1", &toml);
    w1.wait_ready(READY);
    assert!(
        integration_tests::wait_until(LONG, Duration::from_millis(200), || {
            w1.metric(CONSUMED).unwrap_or(0.0) >= 2_000.0
        }),
        "w1 did not get going"
    );

    // Freeze the broker while records flow: the worker's next commit waits for acknowledgements
    // that cannot come.
    let before_pause = w1.logs().len();
    broker.pause();
    // Two ways not to hang, depending on the step the freeze lands in: a flush or a send that
    // times out fails the worker; or the session expires first (an offset commit that timed
    // out fails only that commit), the member drops its partitions and waits to rejoin, with
    // nothing left to commit.
    let mut exited = None;
    let gave_up =
        integration_tests::wait_until(Duration::from_secs(120), Duration::from_millis(500), || {
            exited = w1.try_status();
            exited.is_some() || gave_up_its_partitions(since(&w1.logs(), before_pause))
        });
    broker.resume();
    let logs = since(&w1.logs(), before_pause).to_string();
    let tail = || logs.lines().rev().take(30).collect::<Vec<_>>().join("\n");
    assert!(gave_up, "the worker hangs in its commit:\n{}", tail());
    if let Some(status) = exited {
        assert!(
            !status.success(),
            "a failed commit is an error exit: {status}"
        );
        assert!(
            logs.contains("processing.commit_timeout_ms")
                && messages.iter().any(|m| logs.contains(m)),
            "the error says one of {messages:?} and names the key that bounds the wait:\n{}",
            tail()
        );
    }

    // Nothing was lost: a new worker picks up from the last commit. (Resumed, the broker first
    // fences itself, re-elects its partition leaders and reloads its group coordinator; wait
    // until it answers for the group again.)
    let records = producer.stop();
    assert!(
        integration_tests::wait_until(LONG, Duration::from_millis(500), || {
            committed_offsets(&broker.bootstrap(), &cfg.app_id, &input).is_ok()
        }),
        "the broker does not answer for the group after SIGCONT"
    );
    let expected = expected_totals(&records);
    if exited.is_none() {
        // Whatever it does next (rejoin, or fail while the broker reloads), w2 is the check.
        w1.kill9();
    }
    let mut w2 = WorkerProcess::spawn_named("w2", &cfg.to_toml());
    w2.wait_ready(READY);
    let mut view = KeyedView::open(&broker.bootstrap(), &output).unwrap();
    wait_for_totals(&mut view, &expected, LONG, &mut [&mut w2]);
    if let Err(e) = check_at_least(&expected, &view.map) {
        panic!("after a commit timed out: {e}");
    }
    assert_eq!(w2.terminate().code(), Some(0));
}

/// True when `logs` show the member dropping its partitions as lost: rebalance callbacks run
/// only in the member loop's poll, so a member stuck in a commit could not have logged this.
fn gave_up_its_partitions(logs: &str) -> bool {
    logs.lines()
        .any(|l| l.contains("partitions revoked") && l.contains("lost") && l.contains("true"))
}

/// What `logs` hold after their first `at` bytes (all of them if `at` is not a character
/// boundary any more).
fn since(logs: &str, at: usize) -> &str {
    logs.get(at..).unwrap_or(logs)
}
