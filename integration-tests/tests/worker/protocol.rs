//! The KIP-848 consumer group protocol (`group.protocol = "consumer"`) on Apache Kafka 4.x:
//! the broker assigns partitions and hands them out through heartbeats, rebalances are
//! incremental, and a dead member is noticed through the broker's
//! `group.consumer.session.timeout.ms` (10 s on the test broker).
//!
//! Graceful joins and leaves are exact; a kill -9 is at least once (the classic protocol's
//! equivalents are in `rebalance`). Apache Kafka only: skipped on tansu, which does not speak
//! the consumer protocol.

use std::time::Duration;

use integration_tests::{
    check_at_least, check_exact, duplicates, serial, wait_until, Broker, BrokerKind, TotalsConfig,
    WorkerProcess,
};

use crate::rebalance::kill9_under_load_with;
use crate::{
    describe, let_records_flow, settle, state_dir, wait_all_running, Protocol, Settled, UnderLoad,
    READY, REBALANCES,
};

const PARTITIONS: i32 = 6;
const COMMIT_FAILURES: &str = "tributary_commit_failures_total";

/// Rebalances (revokes, losses, assignments) counted by a worker.
fn rebalances(w: &WorkerProcess) -> f64 {
    w.metric(REBALANCES).unwrap_or(0.0)
}

/// Waits until the broker counts `n` members in group `app`.
fn wait_members(broker: &Broker, app: &str, n: usize) {
    let mut last = None;
    let ok = wait_until(READY, Duration::from_millis(500), || {
        let group = broker.describe_group(app);
        let done = group.members == n;
        last = Some(group);
        done
    });
    assert!(ok, "group {app} did not get to {n} members: {last:?}");
}

/// One worker runs alone; a second and a third join it one at a time, each taking a share
/// of the partitions from those already there; then the first leaves on SIGTERM. Records keep
/// arriving throughout, and the sink's totals match the input exactly.
#[test]
fn consumer_protocol_join_and_leave() {
    if BrokerKind::from_env() != BrokerKind::Kafka {
        return;
    }
    let _serial = serial();
    let UnderLoad {
        broker,
        input,
        output,
        app,
        producer,
    } = UnderLoad::start("kip848", PARTITIONS, 0x5eed_0848);

    let (s1, s2, s3) = (state_dir(), state_dir(), state_dir());
    let c1 = TotalsConfig::new(&app, &broker.bootstrap(), &input, &output, s1.path())
        .consumer_protocol();
    let c2 = c1.for_another_worker(s2.path());
    let c3 = c1.for_another_worker(s3.path());

    let mut w1 = WorkerProcess::spawn_named("w1", &c1.to_toml());
    w1.wait_ready(READY);
    wait_all_running(&[&w1], PARTITIONS, "one worker");
    // The worker joined as a consumer-protocol member: the broker runs the group, with the
    // default remote assignor.
    Protocol::Consumer.assert_group(&broker, &app);
    let_records_flow(&producer, 2_000);

    // A second member joins: the broker moves some of w1's partitions to it.
    let before = rebalances(&w1);
    let mut w2 = WorkerProcess::spawn_named("w2", &c2.to_toml());
    w2.wait_ready(READY);
    wait_all_running(&[&w1, &w2], PARTITIONS, "after w2 joined");
    assert!(
        rebalances(&w1) > before,
        "w1 gave up partitions to w2: rebalances {before} before, {} after",
        rebalances(&w1)
    );
    let_records_flow(&producer, 2_000);

    // A third joins while records keep arriving.
    let before = rebalances(&w1) + rebalances(&w2);
    let mut w3 = WorkerProcess::spawn_named("w3", &c3.to_toml());
    w3.wait_ready(READY);
    wait_all_running(&[&w1, &w2, &w3], PARTITIONS, "after w3 joined");
    assert!(
        rebalances(&w1) + rebalances(&w2) > before,
        "w1 and w2 gave up partitions to w3: {}",
        describe(&[&w1, &w2, &w3])
    );
    wait_members(&broker, &app, 3);
    let_records_flow(&producer, 2_000);

    let no_failed_commits = |w: &WorkerProcess| {
        assert_eq!(
            w.metric(COMMIT_FAILURES),
            Some(0.0),
            "{}: graceful rebalances fail no offset commit",
            w.name()
        )
    };
    no_failed_commits(&w1);
    // The first leaves gracefully: it commits, gives its partitions up and leaves the group
    // at once (no session timeout to wait for).
    let status = w1.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "w1 clean exit after SIGTERM: {status}"
    );
    wait_members(&broker, &app, 2);
    wait_all_running(&[&w2, &w3], PARTITIONS, "after w1 left");
    let_records_flow(&producer, 2_000);

    settle(
        producer,
        &broker,
        (&app, &input, &output),
        PARTITIONS,
        &mut [&mut w2, &mut w3],
    )
    .assert_exact("after joins and a leave with the consumer protocol");

    no_failed_commits(&w2);
    no_failed_commits(&w3);
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

/// kill -9 of one of three consumer-protocol workers under load: the broker expels it after
/// its session timeout, the survivors take its partitions and restore its state; totals are
/// at least the input's, with duplicates reported and bounded (see `rebalance`).
#[test]
fn consumer_protocol_kill9_under_load() {
    if BrokerKind::from_env() != BrokerKind::Kafka {
        return;
    }
    kill9_under_load_with(Protocol::Consumer);
}

/// A member that stops answering (SIGSTOP) past the broker's session timeout is expelled and
/// its partitions move; when it runs again (SIGCONT) the broker fences it: its tasks are
/// dropped as lost (`tributary_rebalances_total{kind="lost"}`), it rejoins as a new member and
/// gets a share again. At least once: the totals are at least the input's.
///
/// What this guards: resumed, the expelled member's next commit must not flush its caches into
/// the changelogs (its values are older than what the new owner wrote since). If it did, those
/// stale entries would land last, and whoever restores the partition next (the member itself,
/// when the uniform assignor gives its partitions back) would take them and undercount. The
/// consumer protocol makes this likely: librdkafka keeps fetching until the coordinator
/// answers, while the classic client stops when its own session timer expires.
#[test]
fn consumer_protocol_paused_member_is_fenced_and_rejoins() {
    if BrokerKind::from_env() != BrokerKind::Kafka {
        return;
    }
    paused_member_with(Protocol::Consumer, "at_least_once");
}

/// The same with the classic protocol.
#[test]
fn classic_protocol_paused_member_is_fenced_and_rejoins() {
    if BrokerKind::from_env() != BrokerKind::Kafka {
        return;
    }
    paused_member_with(Protocol::Classic, "at_least_once");
}

/// Two workers under load; the first is stopped until the second runs everything, then
/// continued until it has rejoined; totals at least the input's.
/// The paused-member scenario under `protocol` and `guarantee`: at least once, totals at least
/// the input's (duplicates reported); exactly once, totals equal to it, and the paused member's
/// transaction aborted.
pub fn paused_member_with(protocol: Protocol, guarantee: &str) {
    let _serial = serial();
    let UnderLoad {
        broker,
        input,
        output,
        app,
        producer,
    } = UnderLoad::start("kip848-pause", PARTITIONS, 0x5eed_0849);
    let (s1, s2) = (state_dir(), state_dir());
    let mut c1 = protocol.apply(TotalsConfig::new(
        &app,
        &broker.bootstrap(),
        &input,
        &output,
        s1.path(),
    ));
    c1.guarantee = guarantee.to_string();
    let c2 = c1.for_another_worker(s2.path());
    let mut w1 = WorkerProcess::spawn_named("w1", &c1.to_toml());
    let mut w2 = WorkerProcess::spawn_named("w2", &c2.to_toml());
    w1.wait_ready(READY);
    w2.wait_ready(READY);
    wait_all_running(&[&w1, &w2], PARTITIONS, "two workers");
    let_records_flow(&producer, 2_000);

    // While stopped, w1 answers nothing (not even /metrics): only w2 is asked.
    w1.signal(integration_tests::sig::SIGSTOP);
    wait_all_running(&[&w2], PARTITIONS, "w2 alone after w1 was expelled");
    wait_members(&broker, &app, 1);
    let_records_flow(&producer, 2_000);
    w1.signal(integration_tests::sig::SIGCONT);

    const LOST: &str = "tributary_rebalances_total{kind=\"lost\"}";
    assert!(
        wait_until(READY, Duration::from_millis(500), || w1
            .metric(LOST)
            .unwrap_or(0.0)
            > 0.0),
        "w1 dropped its partitions as lost once fenced: {:?}",
        w1.metric(REBALANCES)
    );
    wait_all_running(&[&w1, &w2], PARTITIONS, "after w1 rejoined");
    wait_members(&broker, &app, 2);
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
        &mut [&mut w1, &mut w2],
    );
    let exactly_once = guarantee == "exactly_once";
    let checked = if exactly_once {
        check_exact(&expected, &view.map)
    } else {
        check_at_least(&expected, &view.map)
    };
    if let Err(e) = checked {
        panic!(
            "after {} records and a member paused past its session ({guarantee}): {e}",
            records.len()
        );
    }
    if exactly_once {
        const ABORTED: &str = "tributary_transactions_total{outcome=\"aborted\"}";
        assert!(
            w1.metric(ABORTED).unwrap_or(0.0) >= 1.0,
            "the fenced member aborted its transaction: {:?}",
            w1.metric(ABORTED)
        );
    }
    eprintln!(
        "paused member ({protocol:?}): {} records, {} counted twice, commit failures {:?} / {:?}",
        records.len(),
        duplicates(&expected, &view.map),
        w1.metric(COMMIT_FAILURES),
        w2.metric(COMMIT_FAILURES)
    );
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
