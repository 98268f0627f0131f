//! `processing.guarantee = "exactly_once"` on Apache Kafka, which filters aborted transactions
//! for `read_committed` readers (tansu and the mock cluster do not, so neither can prove it;
//! these tests return early there). Every sink read here is `read_committed`.

use std::time::Duration;

use integration_tests::{check_exact, serial, wait_until, TotalsConfig, WorkerProcess};
use rand::{Rng, SeedableRng};

use crate::{
    on_kafka, settle, state_dir, wait_all_running, Settled, UnderLoad, CONSUMED, LONG, READY,
    RESTORED,
};

const PARTITIONS: i32 = 6;

/// Three workers under load; ten times, a random one is killed with SIGKILL and started again
/// on its state directory. Read with `read_committed`, every key's count and total in the
/// sink EQUAL the input's: nothing lost, nothing twice.
#[test]
fn exactly_once_through_ten_kills_and_restarts() {
    if !on_kafka() {
        return;
    }
    let _serial = serial();
    let UnderLoad {
        broker,
        input,
        output,
        app,
        producer,
    } = UnderLoad::start("eos-kill", PARTITIONS, 0x5eed_0801);
    let dirs = [state_dir(), state_dir(), state_dir()];
    let configs: Vec<TotalsConfig> = dirs
        .iter()
        .map(|d| {
            TotalsConfig::new(&app, &broker.bootstrap(), &input, &output, d.path()).exactly_once()
        })
        .collect();
    let mut workers: Vec<WorkerProcess> = configs
        .iter()
        .enumerate()
        .map(|(i, c)| WorkerProcess::spawn_named(&format!("w{i}"), &c.to_toml()))
        .collect();
    for w in &mut workers {
        w.wait_ready(READY);
    }
    wait_all_running(
        &workers.iter().collect::<Vec<_>>(),
        PARTITIONS,
        "three workers",
    );

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0802);
    for kill in 0..10 {
        let victim = rng.random_range(0..workers.len());
        // Let the victim get somewhere since it (re)started: it has open transactions to lose.
        let consumed = workers[victim].metric(CONSUMED).unwrap_or(0.0);
        let moved = wait_until(LONG, Duration::from_millis(100), || {
            workers[victim].metric(CONSUMED).unwrap_or(0.0) > consumed || producer.is_finished()
        });
        assert!(moved, "w{victim} processes nothing before kill {kill}");
        workers[victim].kill9();
        let restarted = configs[victim].restarted();
        workers[victim] = WorkerProcess::spawn_named(
            &format!("w{victim}-after-kill{kill}"),
            &restarted.to_toml(),
        );
        workers[victim].wait_ready(READY);
    }

    let mut running: Vec<&mut WorkerProcess> = workers.iter_mut().collect();
    let Settled {
        records,
        expected,
        view,
    } = settle(
        producer,
        &broker,
        (&app, &input, &output),
        PARTITIONS,
        &mut running,
    );
    if let Err(e) = check_exact(&expected, &view.map) {
        panic!(
            "exactly once after {} records and ten kills: {e}",
            records.len()
        );
    }
}

/// A worker killed with SIGKILL and started again on its state directory restores only the
/// changelog tail after its last committed transaction, not the whole changelog (its local
/// store only ever holds committed state, so nothing needs wiping), and its totals are exact.
#[test]
fn a_restarted_worker_restores_only_the_tail() {
    if !on_kafka() {
        return;
    }
    let _serial = serial();
    let UnderLoad {
        broker,
        input,
        output,
        app,
        producer,
    } = UnderLoad::start("eos-tail", PARTITIONS, 0x5eed_0803);
    let dir = state_dir();
    let config =
        TotalsConfig::new(&app, &broker.bootstrap(), &input, &output, dir.path()).exactly_once();
    let mut w = WorkerProcess::spawn_named("w", &config.to_toml());
    w.wait_ready(READY);
    assert!(
        wait_until(LONG, Duration::from_millis(200), || w
            .metric(CONSUMED)
            .unwrap_or(0.0)
            >= 5_000.0),
        "the worker did not get going"
    );
    w.kill9();
    let changelog = config.changelog_topic();
    let changelog_records = broker.consume_all(&changelog).len() as f64;
    let mut w = WorkerProcess::spawn_named("w-restarted", &config.restarted().to_toml());
    w.wait_ready(READY);
    let restored = w.metric_or_zero(RESTORED);
    assert!(
        restored < changelog_records / 2.0,
        "restored {restored} of the {changelog_records} committed changelog records: a restart \
         after a crash restores the tail, not everything"
    );
    let Settled {
        records,
        expected,
        view,
    } = settle(
        producer,
        &broker,
        (&app, &input, &output),
        PARTITIONS,
        &mut [&mut w],
    );
    if let Err(e) = check_exact(&expected, &view.map) {
        panic!(
            "after a crash and a tail restore ({} records): {e}",
            records.len()
        );
    }
}
