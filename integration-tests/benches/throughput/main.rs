//! Throughput benchmark (not a test; `harness = false`): Tributary and Kafka Streams on the
//! same jobs, against the raw-consumer limit, on one broker, in one run, in one table.
//!
//! ```sh
//! scripts/bench          # installs Kafka, builds the release worker and the Kafka Streams app
//! cargo bench -p integration-tests --bench throughput    # both must be built already
//! ```
//!
//! # What runs
//!
//! On one fresh broker (Apache Kafka 4.1.1 in KRaft mode from `scripts/install-kafka`, the test
//! harness's; tansu with `TRIBUTARY_TEST_BROKER=tansu`):
//!
//! 1. load, once: `tributary generate` writes N records (`BENCH_RECORDS`, default 5,000,000) of
//!    `{"user","amount","ts"}` keyed by user over 10,000 keys (seed 42) into `bench-in`
//!    (6 partitions); the record timestamp is `ts`. Not measured.
//! 2. the jobs, in four groups, each job by Tributary and then by Kafka Streams:
//!    - count + sum of `amount` per key, no sink, at least once (`agg`, `ks-agg`);
//!    - the same, exactly once (`eos`, `ks-eos`; Kafka Streams: `exactly_once_v2`);
//!    - stateless: `filter amount > 50`, `map {'user': user, 'amount': amount * 2}`, JSON sink
//!      (`stateless`, `ks-stateless`), preceded by the raw pipe (`pipe`);
//!    - 10 s tumbling window, count + sum per key, final results only, grace 0, JSON sink
//!      (`window`, `ks-window`).
//! 3. the raw consumer (`raw`) before the first group, between groups and after the last
//!    (5 times with all groups); every ratio is against the median of those runs (the
//!    stateless job's against the raw pipe's).
//!
//! Every run has its own group (application id), state directory and sink topic.
//!
//! # The systems
//!
//! - **raw consumer**, in this process: a `BaseConsumer` with the worker's own consumer
//!   settings (`tributary::kafka::client::consumer`: `fetch.wait.max.ms`, `queued.min.messages`,
//!   `fetch.queue.backoff.ms`, ...) reads every record in a fresh group.
//! - **raw pipe**, in this process: the same consumer, plus a producer with the worker's
//!   producer settings (`tributary::kafka::client::producer`: lz4, linger 5 ms, idempotent)
//!   that copies the records with amount > 50 (found by a byte scan, no JSON decoding) to a
//!   topic: as many records as the stateless job produces, with no other work.
//! - **Tributary**: `tributary run` (release build), `app.threads = 1` (one group member),
//!   `processing.threads` at its default (the machine's cores), commits every 1000 ms.
//! - **Kafka Streams** (`benches/kafka-streams`, one JVM per job): `num.stream.threads` = the
//!   available cores (2 here; `BENCH_KS_THREADS`), `commit.interval.ms = 1000` (its default is
//!   30 s at least once, 100 ms exactly once), `processing.guarantee`, a state directory;
//!   everything else is Kafka Streams' default: RocksDB stores with changelogs, the 10 MiB
//!   record cache, its consumer and producer defaults. Values are JSON through Jackson (input,
//!   store and output), as in Tributary. The window job reads event time from `ts` with a
//!   `TimestampExtractor` and uses `suppress(untilWindowCloses)`; Tributary's event time is
//!   the record timestamp, which the generator sets to `ts`, so both see the same times. The
//!   JVM runs with `-Xmx256m`, the heap that Kafka's own launcher (`kafka-run-class.sh`) gives
//!   by default, and the JVM's other defaults (G1); `BENCH_KS_JAVA_OPTS` replaces that. With
//!   the JVM's default heap limit (6 GiB here) the jobs ran no faster and peaked at up to 3x
//!   the RSS.
//!
//! # Timing
//!
//! The raw consumer and pipe are timed exactly, from the first record received to the last.
//! Tributary and Kafka Streams are timed the same way as each other: the bench polls the
//! process's count of input records processed over HTTP every 50 ms
//! (`tributary_records_consumed_total` on `/metrics`; the app's `ks_records_consumed_total`,
//! counted as each record enters its topology) and times from the first poll that sees more
//! than 0 to the first that sees N. The resolution is the poll interval; start-up and the
//! group join are outside the interval. The app also prints its own first-to-last time at
//! record resolution, as a cross-check. Sinks are acknowledged after the interval (checked,
//! not timed).
//!
//! Peak RSS is `VmHWM` from `/proc`: of the worker, of the JVM (heap, RocksDB and all), and
//! for the raw runs of this bench process, its high-water mark reset just before the clients
//! are created.
//!
//! # Checks (a failed one marks the row failed and the bench exits 1)
//!
//! Every run: N records counted, and after a clean shutdown (exit 0) the group's committed
//! offsets equal the input's end offsets. Count + sum: the state of `user-0`, `-1`, `-4242`,
//! `-9999` equals the generator's totals (Tributary: `/state/totals/<key>`; Kafka Streams: an
//! interactive query), and for Kafka Streams the sums over the whole store too. Stateless and
//! the raw pipe: the sink holds, per key, as many records as the seed implies, with the right
//! sum of `amount`. Window: the sink holds exactly the closed windows that the input implies
//! (computed here from the input topic: per partition, stream time is the largest `ts` seen,
//! a window is final once stream time reaches its end), each once, with the right count and sum.
//! The older sink scenarios: every output acknowledged.
//!
//! Per run the bench also prints the CPU used by the measured process (busiest threads), the
//! broker and the rest of the machine over the measured interval; on 2 cores that says who
//! the bottleneck was.
//!
//! # Knobs (environment)
//!
//! - `BENCH_RECORDS` (default 5000000). A full run with the default took 10-13 minutes on
//!   the shared 2-core machine, more than half of it in the Kafka Streams jobs; 300000 records,
//!   about 3 minutes.
//! - `BENCH_SCENARIOS`: a comma list of `raw,pipe,agg,ks-agg,eos,ks-eos,stateless,ks-stateless,
//!   window,ks-window` (the default: all of them), `ks` (all four Kafka Streams jobs),
//!   `tributary` (all four Tributary jobs), and the older Tributary-only scenarios `sink`,
//!   `sink100`, `eos-sink`, `eos100` (count + sum with a sink, at least / exactly once,
//!   commits every 1 s / 100 ms).
//! - `BENCH_KS_JAR`, `BENCH_KS_THREADS`, `BENCH_KS_JAVA_OPTS`: the Kafka Streams app.
//! - `BENCH_KAFKA_PROPERTIES="k=v,k=v"`: extra `[kafka.properties]` for the worker and the raw
//!   clients alike (experiments; empty by default).
//! - `BENCH_PERF_DIR`: `perf record` each worker over the measured interval into
//!   `<dir>/<scenario>.perf.data`; `BENCH_PERF_ARGS` replaces its sampling options.
//! - `BENCH_RDKAFKA_DEBUG`: librdkafka `debug` contexts for the raw clients (on stderr).
//! - `TRIBUTARY_BIN`, `KAFKA_HOME`, `TANSU_BIN`: the binaries (see the harness).

mod measure;
mod raw;
mod streams;
mod table;
mod verify;
mod worker;

use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::{
    kafka_home, repo_root, run_cli_timeout, tansu_bin, tributary_bin, Broker, BrokerKind,
};
use tributary_generator::{KeyDistribution, RecordGenerator};

use crate::streams::{StreamsApp, StreamsJob};
use crate::table::Row;
use crate::verify::{end_offsets, Check, Expected, StatelessExpect, WindowExpect};
use crate::worker::{
    Commits, Scenario, AGGREGATE_STEPS, AT_LEAST_ONCE, EXACTLY_ONCE, STATELESS_STEPS, WINDOW_STEPS,
};
use integration_tests::procstat::loadavg;

const KEYS: u64 = 10_000;
const PARTITIONS: i32 = 6;
/// `tributary generate`'s default seed, passed explicitly so the expected totals match.
const SEED: u64 = 42;
pub const INPUT: &str = "bench-in";
/// The commit interval of every Tributary and Kafka Streams run (but `sink100`, `eos100`).
pub const COMMIT_INTERVAL_MS: u64 = 1000;
/// Keys whose state is checked after each count + sum run.
pub const CHECK_KEYS: &[u64] = &[0, 1, 4242, 9999];
/// The window job's window.
pub const WINDOW_MS: i64 = 10_000;

const COUNT_SUM: &str = "count + sum per key, no sink, at least once";
const COUNT_SUM_EOS: &str = "count + sum per key, no sink, exactly once";
const STATELESS: &str = "filter amount > 50, map {user, amount * 2}, sink";
const WINDOW: &str = "10 s tumbling window, count + sum per key, emit final, sink";

/// The default `BENCH_SCENARIOS`.
const DEFAULT_SCENARIOS: &str =
    "raw,pipe,agg,ks-agg,eos,ks-eos,stateless,ks-stateless,window,ks-window";

/// One run of a group.
enum Run {
    Pipe(&'static str),
    Tributary(Scenario),
    Streams(StreamsJob),
}

impl Run {
    fn name(&self) -> &'static str {
        match self {
            Run::Pipe(_) => "pipe",
            Run::Tributary(sc) => sc.name,
            Run::Streams(j) => j.name,
        }
    }

    fn sink(&self) -> Option<&'static str> {
        match self {
            Run::Pipe(topic) => Some(topic),
            Run::Tributary(sc) => sc.sink,
            Run::Streams(j) => j.sink,
        }
    }
}

fn tributary(
    name: &'static str,
    job: &'static str,
    steps: &'static str,
    sink: Option<&'static str>,
    commits: Commits,
    check: Check,
) -> Run {
    Run::Tributary(Scenario {
        name,
        job,
        steps,
        sink,
        commits,
        check,
    })
}

fn streams(
    name: &'static str,
    job: &'static str,
    app_job: &'static str,
    guarantee: &'static str,
    sink: Option<&'static str>,
    check: Check,
) -> Run {
    Run::Streams(StreamsJob {
        name,
        job,
        app_job,
        guarantee,
        sink,
        check,
    })
}

/// Every run, in groups: the raw consumer runs between groups.
fn groups() -> Vec<Vec<Run>> {
    let every_100ms = |guarantee| Commits {
        guarantee,
        interval_ms: 100,
    };
    vec![
        vec![
            tributary(
                "agg",
                COUNT_SUM,
                AGGREGATE_STEPS,
                None,
                AT_LEAST_ONCE,
                Check::State,
            ),
            streams(
                "ks-agg",
                COUNT_SUM,
                "count-sum",
                "at_least_once",
                None,
                Check::State,
            ),
            tributary(
                "sink",
                "count + sum per key + sink, at least once",
                AGGREGATE_STEPS,
                Some("bench-out"),
                AT_LEAST_ONCE,
                Check::StateAndOutputs,
            ),
            tributary(
                "sink100",
                "count + sum per key + sink, at least once, commits every 100 ms",
                AGGREGATE_STEPS,
                Some("bench-sink100"),
                every_100ms("at_least_once"),
                Check::StateAndOutputs,
            ),
        ],
        vec![
            tributary(
                "eos",
                COUNT_SUM_EOS,
                AGGREGATE_STEPS,
                None,
                EXACTLY_ONCE,
                Check::State,
            ),
            streams(
                "ks-eos",
                COUNT_SUM_EOS,
                "count-sum",
                "exactly_once_v2",
                None,
                Check::State,
            ),
            tributary(
                "eos-sink",
                "count + sum per key + sink, exactly once",
                AGGREGATE_STEPS,
                Some("bench-eos"),
                EXACTLY_ONCE,
                Check::StateAndOutputs,
            ),
            tributary(
                "eos100",
                "count + sum per key + sink, exactly once, commits every 100 ms",
                AGGREGATE_STEPS,
                Some("bench-eos100"),
                every_100ms("exactly_once"),
                Check::StateAndOutputs,
            ),
        ],
        vec![
            Run::Pipe("bench-pipe"),
            tributary(
                "stateless",
                STATELESS,
                STATELESS_STEPS,
                Some("bench-stateless"),
                AT_LEAST_ONCE,
                Check::Stateless,
            ),
            streams(
                "ks-stateless",
                STATELESS,
                "stateless",
                "at_least_once",
                Some("bench-ks-stateless"),
                Check::Stateless,
            ),
        ],
        vec![
            tributary(
                "window",
                WINDOW,
                WINDOW_STEPS,
                Some("bench-windows"),
                AT_LEAST_ONCE,
                Check::Window,
            ),
            streams(
                "ks-window",
                WINDOW,
                "window",
                "at_least_once",
                Some("bench-ks-windows"),
                Check::Window,
            ),
        ],
    ]
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// `BENCH_SCENARIOS`, with `ks` and `tributary` expanded; exits 2 on an unknown name.
fn selected(groups: &[Vec<Run>]) -> Vec<String> {
    let list = std::env::var("BENCH_SCENARIOS").unwrap_or_else(|_| DEFAULT_SCENARIOS.into());
    let known: Vec<&str> = groups
        .iter()
        .flatten()
        .map(Run::name)
        .chain(["raw"])
        .collect();
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match name {
            "ks" => out.extend(["ks-agg", "ks-eos", "ks-stateless", "ks-window"].map(String::from)),
            "tributary" => out.extend(["agg", "eos", "stateless", "window"].map(String::from)),
            n if known.contains(&n) => out.push(n.to_string()),
            n => {
                eprintln!(
                    "BENCH_SCENARIOS: unknown scenario '{n}'; known: {}, ks, tributary",
                    known.join(", ")
                );
                std::process::exit(2);
            }
        }
    }
    out
}

fn broker_description() -> String {
    match BrokerKind::from_env() {
        BrokerKind::Kafka => {
            let home = kafka_home().expect("Apache Kafka (scripts/install-kafka)");
            format!(
                "Apache Kafka {} ({}), KRaft, one node, log directory on local disk",
                home.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .trim_start_matches("kafka-"),
                home.display()
            )
        }
        BrokerKind::Tansu => {
            let tansu = tansu_bin().expect("tansu");
            let version = Command::new(&tansu)
                .arg("--version")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            format!("{version} ({}), storage memory://", tansu.display())
        }
    }
}

/// The repository's commit (with `+changes` if the work tree differs from it).
fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(repo_root())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    format!("{head}{}", if dirty { "+changes" } else { "" })
}

fn load(broker: &Broker, records: u64) {
    let t = Instant::now();
    let out = run_cli_timeout(
        &[
            "generate",
            "--brokers",
            &broker.bootstrap(),
            "--topic",
            INPUT,
            "--records",
            &records.to_string(),
            "--keys",
            &KEYS.to_string(),
            "--partitions",
            &PARTITIONS.to_string(),
            "--seed",
            &SEED.to_string(),
            "--quiet",
        ],
        Duration::from_secs(1800),
    );
    assert!(
        out.status.success(),
        "tributary generate failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let secs = t.elapsed().as_secs_f64();
    println!(
        "  load: {records} records over {KEYS} keys into {INPUT} ({PARTITIONS} partitions) with `tributary generate` in {secs:.1} s ({:.0} records/s; not measured)",
        records as f64 / secs
    );
}

fn main() {
    let started = Instant::now();
    let records = env_u64("BENCH_RECORDS", 5_000_000);
    let mut groups = groups();
    let wanted = selected(&groups);
    let wants = |s: &str| wanted.iter().any(|w| w == s);
    for g in &mut groups {
        g.retain(|r| wants(r.name()));
    }
    groups.retain(|g| !g.is_empty());
    let runs = || groups.iter().flatten();

    let app = if runs().any(|r| matches!(r, Run::Streams(_))) {
        Some(StreamsApp::locate().unwrap_or_else(|e| panic!("the Kafka Streams app: {e}")))
    } else {
        None
    };

    println!("tributary throughput bench, {records} records");
    println!(
        "  nproc {}, load average {} (1/5/15 min) at start",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    println!("  broker: {}", broker_description());
    println!(
        "  worker: {} at commit {}",
        tributary_bin().display(),
        commit()
    );
    if let Some(app) = &app {
        println!("  kafka streams: {}", app.describe());
    }

    let broker = Broker::start();
    println!(
        "  broker up on {} (pid {})",
        broker.bootstrap(),
        broker.pid()
    );
    load(&broker, records);
    let input_ends = end_offsets(&broker.bootstrap(), INPUT, PARTITIONS);
    let in_topic: i64 = input_ends.values().sum();
    assert_eq!(in_topic, records as i64, "records in {INPUT}");

    let t = Instant::now();
    let windows = if runs().any(|r| matches!(r.name(), "window" | "ks-window")) {
        let w = WindowExpect::from_input(&broker.bootstrap(), INPUT, WINDOW_MS)
            .unwrap_or_else(|e| panic!("expected windows: {e}"));
        println!(
            "  expected final windows, from reading {INPUT}: {} ({} late records)",
            w.len(),
            w.late
        );
        if w.len() == 0 {
            println!(
                "  (no window closed: the load took under 10 s of event time, so the window \
                 checks only that nothing was emitted; more records make them meaningful)"
            );
        }
        Some(w)
    } else {
        None
    };
    let expected = Expected {
        totals: RecordGenerator::new(KEYS, &KeyDistribution::Uniform, SEED)
            .expect("generator")
            .expected_totals(records),
        stateless: StatelessExpect::new(KEYS, SEED, records),
        windows,
    };
    println!(
        "  expected results computed in {:.1} s (not measured)",
        t.elapsed().as_secs_f64()
    );
    for topic in runs().filter_map(Run::sink) {
        broker.create_topic(topic, PARTITIONS);
    }
    if wants("raw") || wants("pipe") {
        raw::print_settings(&broker);
    }

    let mut rows: Vec<Row> = Vec::new();
    let mut raw_runs = 0;
    let mut raw = |rows: &mut Vec<Row>| {
        if wants("raw") {
            raw_runs += 1;
            println!("\n(raw #{raw_runs})");
            rows.push(raw::raw_consumer(&broker, records, raw_runs));
        }
    };
    for group in &groups {
        raw(&mut rows);
        for run in group {
            println!("\n({})", run.name());
            rows.push(match run {
                Run::Pipe(topic) => raw::raw_pipe(&broker, records, topic, &expected.stateless),
                Run::Tributary(sc) => worker::run(&broker, sc, records, &expected, &input_ends),
                Run::Streams(job) => streams::run(
                    app.as_ref().expect("located above"),
                    &broker,
                    job,
                    records,
                    &expected,
                    &input_ends,
                ),
            });
        }
    }
    raw(&mut rows);

    println!("\n{}", table::render(&rows));
    println!(
        "\n{records} records of `tributary generate` (10,000 keys, 6 partitions) on one fresh broker; ratios against the median raw consumer (the stateless job: against the raw pipe); \
         Tributary and Kafka Streams timed from the first to the last input record by polling their processed-record counters every {} ms; raw runs timed exactly; peak RSS = VmHWM.",
        measure::POLL.as_millis()
    );
    println!(
        "whole run {:.0} s; load average at the end {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    drop(broker);
    if rows.iter().any(|r| r.failure.is_some()) {
        std::process::exit(1);
    }
}
