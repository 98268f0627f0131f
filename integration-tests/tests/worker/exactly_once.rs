//! `processing.guarantee = "exactly_once"` on Apache Kafka, which filters aborted transactions
//! for `read_committed` readers (tansu and the mock cluster do not, so neither can prove it;
//! these tests return early there). Every sink read here is `read_committed`.

use std::collections::BTreeMap;
use std::time::Duration;

use integration_tests::{
    check_at_least, duplicates, open_transaction, open_transaction_as, serial, wait_until,
    TotalsConfig, WorkerProcess,
};
use rand::{Rng, SeedableRng};

use crate::{
    describe, let_records_flow, on_kafka, settle, state_dir, wait_all_running, Settled, UnderLoad,
    CONSUMED, LONG, READY, RESTORED,
};

const PARTITIONS: i32 = 6;

/// Three workers under load; ten times, a random one is killed with SIGKILL and started again
/// on its state directory. Read with `read_committed`, every key's count and total in the
/// sink EQUAL the input's, and every malformed record is in the dead-letter topic once:
/// nothing lost, nothing twice.
#[test]
fn exactly_once_through_ten_kills_and_restarts() {
    let Some(chaos) = kills_and_restarts("exactly_once", 0x5eed_0801) else {
        return;
    };
    chaos.settled.assert_exact("after ten kills");
    assert_eq!(
        chaos.dead_letters, chaos.malformed,
        "every malformed record is a dead letter exactly once"
    );
}

/// The same under at least once: nothing is lost, and the duplicates each kill causes (the
/// victim's work since its last commit, done again) are reported.
#[test]
fn at_least_once_through_ten_kills_and_restarts_reports_duplicates() {
    let Some(chaos) = kills_and_restarts("at_least_once", 0x5eed_0804) else {
        return;
    };
    let Settled {
        records,
        expected,
        view,
    } = &chaos.settled;
    if let Err(e) = check_at_least(expected, &view.map) {
        panic!(
            "at least once after {} records and ten kills: {e}",
            records.len()
        );
    }
    assert!(
        chaos.dead_letters.iter().all(|(_, n)| *n >= 1)
            && chaos.dead_letters.len() == chaos.malformed.len(),
        "every malformed record is a dead letter at least once: {:?}",
        chaos.dead_letters
    );
    eprintln!(
        "at least once, ten kills: {} records, {} counted twice; {} malformed, {} dead letters",
        records.len(),
        duplicates(expected, &view.map),
        chaos.malformed.len(),
        chaos.dead_letters.values().sum::<usize>()
    );
}

/// One exactly-once worker (`w`) under load, ready.
struct OneWorker {
    load: UnderLoad,
    dir: tempfile::TempDir,
    config: TotalsConfig,
    w: WorkerProcess,
}

impl OneWorker {
    /// See [`UnderLoad::start`].
    fn start(prefix: &str, partitions: i32, seed: u64) -> OneWorker {
        let load = UnderLoad::start(prefix, partitions, seed);
        let dir = state_dir();
        let config = TotalsConfig::new(
            &load.app,
            &load.broker.bootstrap(),
            &load.input,
            &load.output,
            dir.path(),
        )
        .exactly_once();
        let mut w = WorkerProcess::spawn_named("w", &config.to_toml());
        w.wait_ready(READY);
        OneWorker {
            load,
            dir,
            config,
            w,
        }
    }
}

/// How [`kills_and_restarts`] ended.
struct Chaos {
    settled: Settled,
    /// The malformed records' keys, each once.
    malformed: BTreeMap<String, usize>,
    /// The dead letters' keys, with how often each was written.
    dead_letters: BTreeMap<String, usize>,
}

/// Three workers with `guarantee` under load, with a malformed record now and then (to the
/// dead-letter topic); ten times a random worker is killed with SIGKILL and started again on
/// its state directory. None on tansu.
fn kills_and_restarts(guarantee: &str, seed: u64) -> Option<Chaos> {
    if !on_kafka() {
        return None;
    }
    let _serial = serial();
    let UnderLoad {
        broker,
        input,
        output,
        app,
        producer,
    } = UnderLoad::start("chaos", PARTITIONS, seed);
    let dirs = [state_dir(), state_dir(), state_dir()];
    let configs: Vec<TotalsConfig> = dirs
        .iter()
        .map(|d| {
            let mut c = TotalsConfig::new(&app, &broker.bootstrap(), &input, &output, d.path());
            c.guarantee = guarantee.to_string();
            c.on_error = "dlq".to_string();
            c
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

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut malformed = BTreeMap::new();
    for kill in 0..10 {
        let key = format!("malformed-{kill}");
        broker.produce_raw(&input, &[(key.clone(), b"{not json".to_vec())]);
        malformed.insert(key, 1);
        let victim = rng.random_range(0..workers.len());
        // Let the victim get somewhere since it (re)started: it has open work to lose.
        let consumed = workers[victim].metric(CONSUMED).unwrap_or(0.0);
        let moved = wait_until(LONG, Duration::from_millis(100), || {
            workers[victim].metric(CONSUMED).unwrap_or(0.0) > consumed || producer.is_finished()
        });
        assert!(moved, "w{victim} processes nothing before kill {kill}");
        workers[victim].kill9();
        workers[victim] = WorkerProcess::spawn_named(
            &format!("w{victim}-after-kill{kill}"),
            &configs[victim].restarted().to_toml(),
        );
        workers[victim].wait_ready(READY);
    }

    let mut running: Vec<&mut WorkerProcess> = workers.iter_mut().collect();
    let settled = settle(
        producer,
        &broker,
        (&app, &input, &output),
        PARTITIONS,
        &mut running,
    );
    let mut dead_letters = BTreeMap::new();
    for r in broker.consume_all(&format!("{app}-dlq")) {
        *dead_letters
            .entry(r.key_str().unwrap_or_default())
            .or_insert(0) += 1;
    }
    Some(Chaos {
        settled,
        malformed,
        dead_letters,
    })
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
    let OneWorker {
        load:
            UnderLoad {
                broker,
                input,
                output,
                app,
                producer,
            },
        dir: _dir,
        config,
        mut w,
    } = OneWorker::start("eos-tail", PARTITIONS, 0x5eed_0803);
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
    let settled = settle(
        producer,
        &broker,
        (&app, &input, &output),
        PARTITIONS,
        &mut [&mut w],
    );
    settled.assert_exact("after a crash and a tail restore");
}

/// A member stopped (SIGSTOP) past its session timeout and then continued is a zombie: the
/// group coordinator refuses its transaction's offsets (or it learns first that its partitions
/// were lost), it aborts, drops its tasks without writing local state and rejoins. Nothing it
/// produced becomes visible: the totals are exact. (The consumer protocol keeps the zombie
/// fetching until the coordinator answers, the likelier case of the two.)
#[test]
fn a_paused_member_is_fenced_and_nothing_it_wrote_shows() {
    if !on_kafka() {
        return;
    }
    crate::protocol::paused_member_with(crate::Protocol::Consumer, "exactly_once");
}

/// The broker is stopped (SIGTERM) in the middle of the run and started again on the same log
/// directory: the open transactions fail and are aborted (or their producers replaced), the
/// workers keep running and go on once the broker is back, and the totals are exact.
#[test]
fn a_broker_restart_mid_run_is_exact() {
    if !on_kafka() {
        return;
    }
    let _serial = serial();
    let UnderLoad {
        mut broker,
        input,
        output,
        app,
        producer,
    } = UnderLoad::start("eos-restart", PARTITIONS, 0x5eed_0805);
    let (s1, s2) = (state_dir(), state_dir());
    let c1 =
        TotalsConfig::new(&app, &broker.bootstrap(), &input, &output, s1.path()).exactly_once();
    let c2 = c1.for_another_worker(s2.path());
    let mut w1 = WorkerProcess::spawn_named("w1", &c1.to_toml());
    let mut w2 = WorkerProcess::spawn_named("w2", &c2.to_toml());
    w1.wait_ready(READY);
    w2.wait_ready(READY);
    wait_all_running(&[&w1, &w2], PARTITIONS, "two workers");
    let_records_flow(&producer, 2_000);

    broker.stop();
    // Down until the outage has failed a transaction: one that was open when the broker
    // stopped. Not necessarily on both workers: one that had just committed when the broker
    // stopped has none open (records arrive every 100 ms, commits every 500 ms) and nothing
    // to lose.
    const ABORTED: &str = "tributary_transactions_total{outcome=\"aborted\"}";
    let noticed = wait_until(LONG, Duration::from_millis(200), || {
        [&w1, &w2]
            .iter()
            .any(|w| w.metric(ABORTED).unwrap_or(0.0) >= 1.0)
    });
    assert!(
        noticed,
        "no transaction failed while the broker was down: {}",
        describe(&[&w1, &w2])
    );
    broker.restart();
    assert!(
        w1.is_alive() && w2.is_alive(),
        "the workers go on through the outage"
    );
    let_records_flow(&producer, 2_000);

    let settled = settle(
        producer,
        &broker,
        (&app, &input, &output),
        PARTITIONS,
        &mut [&mut w1, &mut w2],
    );
    settled.assert_exact("after a broker restart");
    for w in [&mut w1, &mut w2] {
        assert_eq!(
            w.terminate().code(),
            Some(0),
            "{} exits 0 on SIGTERM",
            w.name()
        );
    }
}

/// A transaction another writer left open on a changelog (a previous owner that crashed and
/// did not come back) hides everything after it from `read_committed` readers until the
/// broker aborts it. A worker that restores meanwhile waits for it to end rather than take the
/// last stable offset for the changelog's end: its own later checkpoint is not "beyond the
/// end", its store is not wiped, and the totals stay exact.
#[test]
fn a_transaction_left_open_on_a_changelog_is_waited_for() {
    if !on_kafka() {
        return;
    }
    let _serial = serial();
    let OneWorker {
        load:
            UnderLoad {
                broker,
                input,
                output,
                app,
                producer,
            },
        dir: _dir,
        config,
        mut w,
    } = OneWorker::start("eos-open", 1, 0x5eed_0806);
    let_records_flow(&producer, 2_000);
    let foreign = open_transaction(
        &broker.bootstrap(),
        &config.changelog_topic(),
        0,
        &[(b"foreign".to_vec(), Some(br#"{"count":1}"#.to_vec()))],
        Duration::from_secs(20),
    )
    .expect("open a transaction on the changelog");
    // The worker commits more state after the open transaction's record, then crashes.
    let consumed = w.metric(CONSUMED).unwrap_or(0.0);
    let_records_flow(&producer, 2_000);
    assert!(
        wait_until(LONG, Duration::from_millis(200), || w
            .metric(CONSUMED)
            .unwrap_or(0.0)
            > consumed + 1_000.0),
        "the worker goes on while the foreign transaction is open"
    );
    w.kill9();
    let mut w = WorkerProcess::spawn_named("w-restarted", &config.restarted().to_toml());
    w.wait_ready(READY);
    let logs = w.logs();
    assert!(
        !logs.contains("beyond the changelog's end"),
        "the restore took the last stable offset for the end:\n{logs}"
    );
    let settled = settle(producer, &broker, (&app, &input, &output), 1, &mut [&mut w]);
    settled.assert_exact("with a transaction left open on the changelog");
    drop(foreign);
}

/// Another producer takes the worker's `transactional.id` (here a test's; in real life a copy
/// of its state directory, or a slow predecessor): it fences the worker's producer, whose
/// next transaction fails for good. The worker replaces its producer (fencing the intruder in
/// turn), goes back to its last commit and goes on; the totals are exact.
#[test]
fn a_fenced_producer_is_replaced() {
    if !on_kafka() {
        return;
    }
    let _serial = serial();
    let OneWorker {
        load:
            UnderLoad {
                broker,
                input,
                output,
                app,
                producer,
            },
        dir,
        config: _,
        mut w,
    } = OneWorker::start("eos-fenced", PARTITIONS, 0x5eed_0807);
    let_records_flow(&producer, 2_000);
    let worker_id = std::fs::read_to_string(dir.path().join(&app).join("worker-0.id"))
        .expect("the worker keeps its id in its state directory");
    let transactional_id = format!("{app}-{}-0", worker_id.trim());
    let intruder = open_transaction_as(
        &broker.bootstrap(),
        &transactional_id,
        &output,
        0,
        &[(b"intruder".to_vec(), Some(br#"{"count":1}"#.to_vec()))],
        Duration::from_secs(20),
    )
    .expect("a producer with the worker's transactional.id");
    const ABORTED: &str = "tributary_transactions_total{outcome=\"aborted\"}";
    assert!(
        wait_until(LONG, Duration::from_millis(200), || w
            .metric(ABORTED)
            .unwrap_or(0.0)
            >= 1.0),
        "the worker's fenced transaction was not aborted"
    );
    let_records_flow(&producer, 2_000);
    let settled = settle(
        producer,
        &broker,
        (&app, &input, &output),
        PARTITIONS,
        &mut [&mut w],
    );
    settled.assert_exact("after the producer was fenced");
    assert!(
        w.logs().contains("replacing the transactional producer"),
        "the worker replaced its producer"
    );
    assert!(
        !settled.view.map.contains_key("intruder"),
        "the intruder's transaction, fenced in turn, never became visible"
    );
    assert_eq!(w.terminate().code(), Some(0));
    drop(intruder);
}

/// A record the producer refuses every time (here: an output with a long key, larger than the
/// sink topic takes; the topic still takes transaction markers) fails every replay of its
/// transaction. After ten in a row the worker stops, saying why, instead of replaying for
/// ever; nothing of it was committed.
#[test]
fn a_record_refused_every_time_stops_the_worker_after_ten_transactions() {
    if !on_kafka() {
        return;
    }
    let _serial = serial();
    let broker = integration_tests::Broker::start();
    let input = integration_tests::unique_name("eos-refused-in");
    let output = integration_tests::unique_name("eos-refused-out");
    broker.create_topic(&input, 1);
    integration_tests::create_configured_topic(
        &broker.bootstrap(),
        &output,
        1,
        &[("max.message.bytes", "200")],
    )
    .expect("create the sink topic");
    let dir = state_dir();
    let app = integration_tests::unique_name("app-eos-refused");
    let config =
        TotalsConfig::new(&app, &broker.bootstrap(), &input, &output, dir.path()).exactly_once();
    // 1,000 hexadecimal digits that do not repeat, so compression does not shrink them below
    // the limit.
    let mut x: u64 = 0x5eed_0808;
    let user: String = (0..1_000)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            char::from_digit(((x >> 60) & 0xf) as u32, 16).unwrap()
        })
        .collect();
    broker.produce_json(
        &input,
        &[(user.clone(), serde_json::json!({"user": user, "amount": 1}))],
    );
    let mut w = WorkerProcess::spawn_named("w", &config.to_toml());
    let status = w.wait_exit(LONG).expect("the worker stops");
    assert!(!status.success(), "an error exit: {status}");
    let logs = w.logs();
    assert!(
        logs.contains("10 transactions in a row failed without a commit"),
        "the worker says why it stopped:\n{logs}"
    );
    assert!(
        broker.consume_all(&output).is_empty(),
        "nothing reached the sink"
    );
}
