//! Rebalance benchmark (not a test; `harness = false`): how long partitions stand still when
//! a member joins or dies, with the classic group protocol and with the KIP-848 consumer
//! protocol, on Apache Kafka 4.x.
//!
//! ```sh
//! BENCH=rebalance scripts/bench     # installs Kafka, builds target/release/tributary, runs this
//! cargo bench -p integration-tests --bench rebalance   # TRIBUTARY_BIN or the release binary
//! ```
//!
//! One broker (the test harness's: `group.consumer.session.timeout.ms` 10 s,
//! `group.consumer.heartbeat.interval.ms` 1 s, no initial rebalance delay), one 6-partition
//! input topic preloaded with `BENCH_RECORDS` records (default 100,000) over 10,000 keys, and a
//! trickle of 1,000 records/s during each repetition. Each repetition, per protocol, uses a new
//! app id (so a new group, changelogs and output topic):
//!
//! 1. two workers (`tributary run`, the running count and sum per key of the tests, commits
//!    every 500 ms) start, share the 6 partitions and process the preload;
//! 2. **join**: a third worker is spawned; timed from the spawn until every worker answers
//!    `/ready`, `tributary_tasks{state="running"}` sums to 6 over the three and the new one runs
//!    some. "assigned" is when the new worker first reports a task (restoring or running);
//! 3. **kill -9**: after a delay of 3 s × rep / reps (so that the kills of the repetitions fall
//!    at different points of the heartbeat cycle, which the join has just aligned), the first
//!    worker is killed with SIGKILL; timed from the kill until the two survivors' running tasks
//!    sum to 6. "assigned" is when their active tasks (restoring or running) first sum to 6 (the group has handed
//!    out the victim's partitions; the rest is restore, whose size is printed).
//!
//! Classic: `assignment = "cooperative-sticky"`, `session_timeout_ms = 10000` (the broker's
//! consumer-protocol session timeout), so heartbeats every 3 s (the worker's default, a third
//! of the session timeout capped at 3 s). `classic-hb1s`: the same with
//! `kafka.properties."heartbeat.interval.ms" = 1000`, the consumer protocol's heartbeat interval
//! on the test broker. Consumer: `protocol = "consumer"`, remote assignor `uniform`. "up" is
//! when the joining worker first answers `/health`. Metrics are polled every 50 ms and tasks
//! published every 250 ms, so a time is late by up to about 0.3 s.
//!
//! Standby replicas (`BENCH_STANDBYS`, e.g. `0,1`): each repetition runs once per count, with
//! `state.standby_replicas` set to it; with standbys, the kill waits until every task has its
//! standbys, caught up, so that the takeover time shows what they save ("restored" then counts
//! only the changelog tail the new owners read).
//!
//! Knobs: `BENCH_REPS` (default 3), `BENCH_PROTOCOLS` (default
//! `classic,classic-hb1s,consumer`), `BENCH_RECORDS` (default 100000), `BENCH_KEYS` (default
//! 10000), `BENCH_STANDBYS` (default `0`).

use std::time::{Duration, Instant};

use integration_tests::{
    committed_offsets, produce_json, tributary_bin, unique_name, wait_until, watermarks, Broker,
    BrokerKind, ContinuousProducer, TotalsConfig, WorkerProcess, Workload,
};

const PARTITIONS: i32 = 6;
const SEED: u64 = 0x5eed_848b;
const INPUT: &str = "rebalance-in";
const POLL: Duration = Duration::from_millis(50);
/// Bound for anything that should take seconds.
const LONG: Duration = Duration::from_secs(300);
const RUNNING: &str = "tributary_tasks{state=\"running\"}";
const RESTORING: &str = "tributary_tasks{state=\"restoring\"}";
const RESTORED: &str = "tributary_restored_records_total";
const STANDBY_TASKS: &str = "tributary_tasks{state=\"standby\"}";
const STANDBY_LAG: &str = "tributary_standby_lag_records";

/// What one repetition runs.
#[derive(Debug, Clone, Copy)]
struct Setup {
    protocol: Protocol,
    standbys: u32,
    keys: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Classic,
    /// The classic protocol with heartbeats every second, as the consumer protocol's on the
    /// test broker: separates what the heartbeat interval costs from what the protocol does.
    ClassicHeartbeat1s,
    Consumer,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Classic => "classic",
            Protocol::ClassicHeartbeat1s => "classic-hb1s",
            Protocol::Consumer => "consumer",
        }
    }

    /// The group type the broker reports.
    fn kind(self) -> &'static str {
        match self {
            Protocol::Classic | Protocol::ClassicHeartbeat1s => "Classic",
            Protocol::Consumer => "Consumer",
        }
    }

    fn config(self, c: TotalsConfig) -> TotalsConfig {
        let classic = "protocol = \"classic\"\nassignment = \"cooperative-sticky\"\n\
                       session_timeout_ms = 10000\n";
        match self {
            Protocol::Classic => TotalsConfig {
                group: Some(classic.to_string()),
                ..c
            },
            Protocol::ClassicHeartbeat1s => TotalsConfig {
                group: Some(classic.to_string()),
                extra: "[kafka.properties]\n\"heartbeat.interval.ms\" = 1000\n".to_string(),
                ..c
            },
            Protocol::Consumer => TotalsConfig {
                group: Some("protocol = \"consumer\"\nremote_assignor = \"uniform\"\n".to_string()),
                ..c
            },
        }
    }
}

/// One measurement: seconds from the event until the new worker's HTTP endpoint answered
/// (`up`, joins only), until the partitions were handed out (`assigned`) and until they were
/// all running again (`running`).
#[derive(Debug, Clone, Copy)]
struct Sample {
    up: f64,
    assigned: f64,
    running: f64,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn metric(w: &WorkerProcess, q: &str) -> f64 {
    w.metric(q).unwrap_or(0.0)
}

fn sum(ws: &[&WorkerProcess], q: &str) -> f64 {
    ws.iter().map(|w| metric(w, q)).sum()
}

/// Active tasks (restoring or running, not standbys) of `ws`.
fn active(ws: &[&WorkerProcess]) -> f64 {
    sum(ws, RESTORING) + sum(ws, RUNNING)
}

/// Polls every [`POLL`] until `cond`, panicking after [`LONG`]; returns the seconds since
/// `since` at the first poll that saw it.
fn time_until(since: Instant, what: &str, mut cond: impl FnMut() -> bool) -> f64 {
    let deadline = Instant::now() + LONG;
    loop {
        if cond() {
            return since.elapsed().as_secs_f64();
        }
        assert!(Instant::now() < deadline, "{what}: not within {LONG:?}");
        std::thread::sleep(POLL);
    }
}

/// Waits until `ws` share all partitions, each running some.
fn wait_shared(ws: &[&WorkerProcess], what: &str) {
    let ok = wait_until(LONG, POLL, || {
        let r: Vec<f64> = ws.iter().map(|w| metric(w, RUNNING)).collect();
        r.iter().all(|&n| n > 0.0) && r.iter().sum::<f64>() == PARTITIONS as f64
    });
    assert!(ok, "{what}: the workers did not share the partitions");
}

/// One repetition: two workers, a third joins (timed), the first is killed (timed).
/// `preloaded`: the end offset of each input partition after the preload.
fn repetition(
    broker: &Broker,
    setup: Setup,
    rep: u64,
    reps: u64,
    preloaded: &[i64],
) -> (Sample, Sample) {
    let Setup {
        protocol,
        standbys,
        keys,
    } = setup;
    let app = unique_name(&format!("bench-{}", protocol.name()));
    let output = format!("{app}-out");
    broker.create_topic(&output, PARTITIONS);
    let trickle = ContinuousProducer::start(
        &broker.bootstrap(),
        INPUT,
        keys,
        SEED + 1 + rep,
        100,
        Duration::from_millis(100),
        usize::MAX,
    );
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut base = protocol.config(TotalsConfig::new(
        &app,
        &broker.bootstrap(),
        INPUT,
        &output,
        dirs[0].path(),
    ));
    base.standby_replicas = Some(standbys);
    let configs = [
        base.clone(),
        base.for_another_worker(dirs[1].path()),
        base.for_another_worker(dirs[2].path()),
    ];

    let mut w1 = WorkerProcess::spawn_named("w1", &configs[0].to_toml());
    let mut w2 = WorkerProcess::spawn_named("w2", &configs[1].to_toml());
    w1.wait_ready(LONG);
    w2.wait_ready(LONG);
    wait_shared(&[&w1, &w2], "two workers");
    // State for every key exists (and is in the changelogs) before anything moves.
    let ok = wait_until(LONG, POLL, || {
        committed_offsets(&broker.bootstrap(), &app, INPUT).is_ok_and(|committed| {
            preloaded
                .iter()
                .enumerate()
                .all(|(p, end)| committed.get(&(p as i32)).is_some_and(|c| c >= end))
        })
    });
    assert!(ok, "the two workers did not process and commit the preload");
    let group = broker.describe_group(&app);
    assert_eq!(
        group.kind,
        protocol.kind(),
        "the broker runs the group with the intended protocol: {group:?}"
    );

    // Join.
    let start = Instant::now();
    let mut w3 = WorkerProcess::spawn_named("w3", &configs[2].to_toml());
    let up = time_until(start, "w3 answers /health", || {
        matches!(w3.get("/health"), Ok((200, _)))
    });
    let assigned = time_until(start, "w3 gets tasks", || active(&[&w3]) > 0.0);
    let running = time_until(start, "three workers share the partitions", || {
        let r = [
            metric(&w1, RUNNING),
            metric(&w2, RUNNING),
            metric(&w3, RUNNING),
        ];
        r[2] > 0.0
            && r.iter().sum::<f64>() == PARTITIONS as f64
            && w1.is_ready()
            && w2.is_ready()
            && w3.is_ready()
    });
    let join = Sample {
        up,
        assigned,
        running,
    };

    // Kill -9 of the first member. Right after the join every member's heartbeats are in step
    // (they all just rejoined), so killing at once would always hit the same point of the
    // heartbeat cycle; the delay spreads the repetitions over one classic interval (3 s).
    if standbys > 0 {
        let workers = [&w1, &w2, &w3];
        let want = PARTITIONS as f64 * standbys.min(2) as f64;
        time_until(Instant::now(), "every task has caught-up standbys", || {
            sum(&workers, STANDBY_TASKS) == want && sum(&workers, STANDBY_LAG) == 0.0
        });
    }
    std::thread::sleep(Duration::from_secs_f64(3.0 * rep as f64 / reps as f64));
    let victim = metric(&w1, RUNNING);
    let restored_before = sum(&[&w2, &w3], RESTORED);
    let start = Instant::now();
    w1.kill9();
    let assigned = time_until(start, "the survivors get every partition", || {
        active(&[&w2, &w3]) == PARTITIONS as f64
    });
    let running = time_until(start, "the survivors run every partition", || {
        sum(&[&w2, &w3], RUNNING) == PARTITIONS as f64
    });
    let kill = Sample {
        up: 0.0,
        assigned,
        running,
    };
    let restored = sum(&[&w2, &w3], RESTORED) - restored_before;
    println!(
        "  {:<12} {standbys} standby, rep {}: join {:>5.2} s (up {:>4.2} s, assigned {:>5.2} s); \
         kill -9 of a member with {victim} of {PARTITIONS} partitions {:>5.2} s (assigned \
         {:>5.2} s, {restored} changelog records restored); group {} / {}",
        protocol.name(),
        rep + 1,
        join.running,
        join.up,
        join.assigned,
        kill.running,
        kill.assigned,
        group.kind,
        group.assignor,
    );

    for w in [&mut w2, &mut w3] {
        let status = w.terminate();
        assert_eq!(status.code(), Some(0), "{} exits cleanly", w.name());
    }
    drop(trickle);
    (join, kill)
}

/// Median, min and max.
fn stats(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    let median = if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    };
    (median, xs[0], xs[n - 1])
}

fn row(setup: Setup, event: &str, samples: &[Sample]) {
    let (m, lo, hi) = stats(samples.iter().map(|s| s.running).collect());
    let (am, alo, ahi) = stats(samples.iter().map(|s| s.assigned).collect());
    let (um, _, _) = stats(samples.iter().map(|s| s.up).collect());
    let up = if um > 0.0 {
        format!("{um:.2} s")
    } else {
        "–".to_string()
    };
    println!(
        "| {} | {} | {event} | **{m:.2} s** | {lo:.2}–{hi:.2} s | {am:.2} s ({alo:.2}–{ahi:.2}) | {up} | {} |",
        setup.protocol.name(),
        setup.standbys,
        samples.len()
    );
}

fn main() {
    let reps = env_u64("BENCH_REPS", 3).max(1);
    let preload = env_u64("BENCH_RECORDS", 100_000);
    let protocols: Vec<Protocol> = std::env::var("BENCH_PROTOCOLS")
        .unwrap_or_else(|_| "classic,classic-hb1s,consumer".into())
        .split(',')
        .map(|p| match p.trim() {
            "classic" => Protocol::Classic,
            "classic-hb1s" => Protocol::ClassicHeartbeat1s,
            "consumer" => Protocol::Consumer,
            other => panic!("BENCH_PROTOCOLS: unknown protocol {other:?}"),
        })
        .collect();
    let keys = env_u64("BENCH_KEYS", 10_000).max(1) as usize;
    let standby_counts: Vec<u32> = std::env::var("BENCH_STANDBYS")
        .unwrap_or_else(|_| "0".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .unwrap_or_else(|_| panic!("BENCH_STANDBYS: not a count: {n:?}"))
        })
        .collect();

    println!("tributary rebalance bench");
    println!(
        "  nproc {}, worker binary {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        tributary_bin().display()
    );
    let broker = Broker::start();
    assert_eq!(
        broker.kind(),
        BrokerKind::Kafka,
        "the consumer protocol needs Apache Kafka 4.x (unset TRIBUTARY_TEST_BROKER)"
    );
    println!("  broker: Apache Kafka on {}", broker.bootstrap());
    broker.create_topic(INPUT, PARTITIONS);
    let workload = Workload::new(preload as usize, keys, SEED);
    produce_json(&broker.bootstrap(), INPUT, &workload.records).expect("preload");
    let preloaded: Vec<i64> = (0..PARTITIONS)
        .map(|p| {
            watermarks(&broker.bootstrap(), INPUT, p)
                .expect("watermarks")
                .1
        })
        .collect();
    println!("  preloaded {preload} records over {keys} keys into {PARTITIONS} partitions");

    let mut results = Vec::new();
    for &protocol in &protocols {
        for &standbys in &standby_counts {
            let setup = Setup {
                protocol,
                standbys,
                keys,
            };
            let mut joins = Vec::new();
            let mut kills = Vec::new();
            for rep in 0..reps {
                let (join, kill) = repetition(&broker, setup, rep, reps, &preloaded);
                joins.push(join);
                kills.push(kill);
            }
            results.push((setup, joins, kills));
        }
    }

    println!();
    println!(
        "| protocol | standbys | event | all partitions running again (median) | min–max | \
         partitions handed out (median, min–max) | new worker up (median) | runs |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|");
    for (setup, joins, kills) in &results {
        row(*setup, "a third member joins", joins);
        row(*setup, "kill -9 of a member", kills);
    }
}
