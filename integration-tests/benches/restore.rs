//! Restore benchmark (not a test; `harness = false`): how fast a worker rebuilds its state from
//! the changelog, and how much memory a worker holding 1M keys uses.
//!
//! ```sh
//! BENCH=restore scripts/bench     # installs Kafka, builds target/release/tributary, runs this
//! cargo bench -p integration-tests --bench restore   # TRIBUTARY_BIN or the release binary
//! ```
//!
//! On one fresh broker (the test harness's Apache Kafka; tansu with
//! `TRIBUTARY_TEST_BROKER=tansu`):
//!
//! 1. load: N records (`BENCH_KEYS`, default 1,000,000) with N distinct keys `key-0000000` ..,
//!    value `{"amount": i % 100 + 1}`, into a topic of `BENCH_PARTITIONS` (default 6)
//!    partitions;
//! 2. `process`: a worker (`tributary run`, one member, commits every second) counts and sums
//!    per key (`aggregate`, store `totals`) until every record is consumed and its offsets are
//!    committed; its changelog then holds one record per key. Reported: records/s (first
//!    `/metrics` poll with consumed > 0 to the first with consumed = N) and the worker's peak
//!    RSS (`VmHWM`), holding N keys in its RocksDB stores and write-back caches;
//! 3. `restore`: the first worker is stopped (SIGTERM) and a second one starts with the same app
//!    id and an empty state directory, so it restores every store from the changelog. Timed
//!    from the first `/metrics` poll that shows a restore under way
//!    (`tributary_restore_remaining_records`: the tasks are assigned and their restores
//!    started) to the first that shows none left and every changelog record restored
//!    (`tributary_restored_records_total`); the gauge of a store goes away when its task starts
//!    running. Polled every 20 ms. Reported: records/s, the worker's peak RSS after the
//!    restore, and a few keys' state read back through `/state`.
//!
//! Both worker rows print the CPU time of the worker, its busiest threads and the broker over
//! the measured interval (on a 2-core machine that says who the bottleneck is).
//!
//! Knobs (environment):
//! - `BENCH_KEYS` (default 1000000), `BENCH_PARTITIONS` (default 6);
//! - `BENCH_STATE="k=v,k=v"`: extra `[state]` keys for both workers (e.g.
//!   `cache_max_entries=10000`; values are TOML);
//! - `BENCH_KAFKA_PROPERTIES="k=v,k=v"`: extra `[kafka.properties]` for both workers;
//! - `BENCH_PERF_DIR`: `perf record` each worker over its measured interval into
//!   `<dir>/process.perf.data` and `<dir>/restore.perf.data` (`BENCH_PERF_ARGS` replaces the
//!   sampling options);
//! - `TRIBUTARY_BIN`, `KAFKA_HOME`, `TANSU_BIN`: the binaries (see the harness).

use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::procstat::{mib, status_kib, CpuSnap, Perf};
use integration_tests::{
    committed_offsets, free_port, http_get, parse_metric, tributary_bin, unique_name, watermarks,
    Broker, WorkerProcess,
};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const INPUT: &str = "restore-in";
/// The pipeline, and so the store, name.
const PIPELINE: &str = "totals";
const POLL: Duration = Duration::from_millis(20);
const COMMIT_INTERVAL_MS: u64 = 1000;
/// Bound for each phase.
const LONG: Duration = Duration::from_secs(900);
const STEPS: &str = "[[pipeline.steps]]\n[pipeline.steps.aggregate]\nfields = { count = \"count()\", total = \"sum(amount)\" }\n";
const CONSUMED: &str = "tributary_records_consumed_total";
const RESTORED: &str = "tributary_restored_records_total";
const REMAINING: &str = "tributary_restore_remaining_records";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn key(i: u64) -> String {
    format!("key-{i:07}")
}

fn amount(i: u64) -> u64 {
    i % 100 + 1
}

/// `k=v,k=v` from an environment variable as TOML lines (`k = v`; `quote`: values quoted).
fn extra_lines(var: &str, quote: bool) -> String {
    let mut out = String::new();
    for kv in std::env::var(var)
        .unwrap_or_default()
        .split(',')
        .filter(|kv| !kv.trim().is_empty())
    {
        let (k, v) = kv
            .split_once('=')
            .unwrap_or_else(|| panic!("{var}: expected k=v,k=v, found {kv:?}"));
        let (k, v) = (k.trim(), v.trim());
        if quote {
            out.push_str(&format!("\"{k}\" = \"{v}\"\n"));
        } else {
            out.push_str(&format!("{k} = {v}\n"));
        }
    }
    out
}

fn worker_toml(app_id: &str, bootstrap: &str, state_dir: &Path, http: &str) -> String {
    let mut properties = extra_lines("BENCH_KAFKA_PROPERTIES", true);
    if !properties.is_empty() {
        properties = format!("\n[kafka.properties]\n{properties}");
    }
    format!(
        "[app]\n\
         id = \"{app_id}\"\n\
         threads = 1\n\
         \n\
         [kafka]\n\
         bootstrap_servers = \"{bootstrap}\"\n\
         {properties}\
         \n\
         [processing]\n\
         commit_interval_ms = {COMMIT_INTERVAL_MS}\n\
         \n\
         [state]\n\
         dir = \"{state}\"\n\
         {extra}\
         \n\
         [http]\n\
         listen = \"{http}\"\n\
         \n\
         [[pipeline]]\n\
         name = \"{PIPELINE}\"\n\
         source = {{ topics = [\"{INPUT}\"], format = \"json\" }}\n\
         {STEPS}",
        state = state_dir.display(),
        extra = extra_lines("BENCH_STATE", false),
    )
}

/// Writes `keys` records, one per key, into [`INPUT`].
fn load(bootstrap: &str, keys: u64) {
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("create producer");
    for i in 0..keys {
        let k = key(i);
        let v = format!("{{\"amount\":{}}}", amount(i));
        let mut record = BaseRecord::to(INPUT).key(&k).payload(&v);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, back)) => {
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ),
                        "producing to {INPUT}: {e}"
                    );
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(120))
        .expect("flush the input");
}

/// Records in `topic` (end minus start offset, over its partitions).
fn records_in(bootstrap: &str, topic: &str, partitions: i32) -> i64 {
    (0..partitions)
        .map(|p| {
            let (low, high) = watermarks(bootstrap, topic, p).expect("watermarks");
            high - low
        })
        .sum()
}

fn metrics_of(w: &WorkerProcess) -> Option<String> {
    match http_get(w.http_addr(), "/metrics", Duration::from_secs(5)) {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `/metrics` every [`POLL`] until `done` says so; panics if the worker exits or
/// [`LONG`] passes. `done` gets the body and the time of the poll.
fn poll_metrics(w: &mut WorkerProcess, what: &str, mut done: impl FnMut(&str, Instant) -> bool) {
    let deadline = Instant::now() + LONG;
    let mut next = Instant::now();
    loop {
        if let Some(s) = w.try_status() {
            panic!(
                "{}: worker exited ({s}) while {what}; log tail:\n{}",
                w.name(),
                tail(&w.logs(), 60)
            );
        }
        assert!(
            Instant::now() < deadline,
            "{}: not done {what} within {LONG:?}; log tail:\n{}",
            w.name(),
            tail(&w.logs(), 60)
        );
        if let Some(body) = metrics_of(w) {
            if done(&body, Instant::now()) {
                return;
            }
        }
        next += POLL;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

/// One result row.
struct Row {
    phase: &'static str,
    records: u64,
    seconds: f64,
    /// CPU seconds the worker used over `seconds`.
    cpu_seconds: f64,
    rss_mib: f64,
}

/// Phase 2: processes every input record; returns its row once its offsets are committed.
fn process(broker: &Broker, app_id: &str, keys: u64) -> Row {
    let state = tempfile::Builder::new()
        .prefix("bench-restore-process-")
        .tempdir()
        .expect("tempdir");
    let http = format!("127.0.0.1:{}", free_port());
    let toml = worker_toml(app_id, &broker.bootstrap(), state.path(), &http);
    let mut w = WorkerProcess::spawn_named("process", &toml);
    let (pid, broker_pid) = (w.pid(), broker.pid());
    let mut first: Option<(Instant, CpuSnap, Perf)> = None;
    let mut last = None;
    poll_metrics(&mut w, "consuming the input", |body, now| {
        let consumed = parse_metric(body, CONSUMED).unwrap_or(0.0);
        if first.is_none() && consumed > 0.0 {
            first = Some((
                now,
                CpuSnap::take(pid, broker_pid),
                Perf::start(pid, "process"),
            ));
        }
        if consumed >= keys as f64 {
            last = Some((now, CpuSnap::take(pid, broker_pid)));
            return true;
        }
        false
    });
    let (t0, cpu0, mut perf) = first.expect("first records");
    let (t1, cpu1) = last.expect("last record");
    perf.stop();
    let secs = t1.duration_since(t0).as_secs_f64();
    println!(
        "  process: {keys} records in {secs:.3} s = {:.0} records/s",
        keys as f64 / secs
    );
    println!("    {}", CpuSnap::report(&cpu0, &cpu1, "worker"));
    // Every change is in the changelog once the input offsets are committed.
    let committed = integration_tests::wait_until(LONG, Duration::from_millis(200), || {
        committed_offsets(&broker.bootstrap(), app_id, INPUT)
            .map(|c| c.values().sum::<i64>() == keys as i64)
            .unwrap_or(false)
    });
    assert!(committed, "process: input offsets not committed in time");
    let hwm = status_kib(&pid.to_string(), "VmHWM").unwrap_or(0);
    println!("  process: peak RSS {:.1} MiB (VmHWM)", mib(hwm));
    let status = w.terminate();
    assert!(status.success(), "process: worker exit status {status}");
    Row {
        phase: "process: count + sum per key, 1 record per key",
        records: keys,
        seconds: secs,
        cpu_seconds: CpuSnap::process_seconds(&cpu0, &cpu1),
        rss_mib: mib(hwm),
    }
}

/// Phase 3: a fresh worker restores every store; returns its row after checking a few keys.
fn restore(broker: &Broker, app_id: &str, keys: u64, changelog_records: u64) -> Row {
    let state = tempfile::Builder::new()
        .prefix("bench-restore-restore-")
        .tempdir()
        .expect("tempdir");
    let http = format!("127.0.0.1:{}", free_port());
    let toml = worker_toml(app_id, &broker.bootstrap(), state.path(), &http);
    let spawned = Instant::now();
    let mut w = WorkerProcess::spawn_named("restore", &toml);
    let (pid, broker_pid) = (w.pid(), broker.pid());
    let mut first: Option<(Instant, f64, CpuSnap, Perf)> = None;
    let mut last = None;
    // The largest resident set seen at a poll, with the records restored then.
    let mut rss_max = (0u64, 0.0);
    poll_metrics(&mut w, "restoring", |body, now| {
        let remaining = parse_metric(body, REMAINING);
        let restored = parse_metric(body, RESTORED).unwrap_or(0.0);
        let rss = status_kib(&pid.to_string(), "VmRSS").unwrap_or(0);
        if rss > rss_max.0 {
            rss_max = (rss, restored);
        }
        if first.is_none() && (remaining.is_some() || restored > 0.0) {
            println!(
                "  restore: under way {:.2} s after spawn ({restored} records restored at the first poll)",
                now.duration_since(spawned).as_secs_f64()
            );
            first = Some((
                now,
                restored,
                CpuSnap::take(pid, broker_pid),
                Perf::start(pid, "restore"),
            ));
        }
        if first.is_some() && remaining.is_none() && restored >= changelog_records as f64 {
            last = Some((now, restored, CpuSnap::take(pid, broker_pid)));
            return true;
        }
        false
    });
    let (t0, at_first, cpu0, mut perf) = first.expect("restore start");
    let (t1, restored, cpu1) = last.expect("restore end");
    perf.stop();
    let secs = t1.duration_since(t0).as_secs_f64();
    // Records restored before the first poll that saw the restore took time before `t0`.
    let timed = restored - at_first;
    println!(
        "  restore: {timed} changelog records in {secs:.3} s = {:.0} records/s ({at_first} of the {restored} were already restored at the first poll, and are not counted)",
        timed / secs
    );
    println!("    {}", CpuSnap::report(&cpu0, &cpu1, "worker"));
    assert_eq!(
        restored, changelog_records as f64,
        "restore: records restored vs in the changelog"
    );
    let hwm = status_kib(&pid.to_string(), "VmHWM").unwrap_or(0);
    println!(
        "  restore: peak RSS {:.1} MiB (VmHWM) holding {keys} keys; the largest RSS a poll saw was {:.1} MiB, with {} records restored",
        mib(hwm),
        mib(rss_max.0),
        rss_max.1
    );
    w.wait_ready(Duration::from_secs(60));
    for i in [0, 1, keys / 2, keys - 1] {
        let k = key(i);
        let (code, body) = w
            .get(&format!("/state/{PIPELINE}/{k}"))
            .unwrap_or_else(|e| panic!("restore: /state/{PIPELINE}/{k}: {e:#}"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert!(
            code == 200 && v["count"] == 1 && v["total"].as_f64() == Some(amount(i) as f64),
            "restore: /state/{PIPELINE}/{k} answered {code} {body}, expected count 1, total {}",
            amount(i)
        );
    }
    println!("  restore: verified the state of 4 keys through /state");
    let status = w.terminate();
    assert!(status.success(), "restore: worker exit status {status}");
    Row {
        phase: "restore: full restore from the changelog, empty state directory",
        records: timed as u64,
        seconds: secs,
        cpu_seconds: CpuSnap::process_seconds(&cpu0, &cpu1),
        rss_mib: mib(hwm),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let keys = env_u64("BENCH_KEYS", 1_000_000);
    let partitions = env_u64("BENCH_PARTITIONS", 6) as i32;
    println!("tributary restore bench");
    println!(
        "  nproc {}, load average {} (1/5/15 min) at start",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    println!("  worker binary: {}", tributary_bin().display());
    let state_extra = std::env::var("BENCH_STATE").unwrap_or_default();
    if !state_extra.is_empty() {
        println!("  extra [state] keys: {state_extra}");
    }
    let broker = Broker::start();
    println!(
        "  broker up on {} (pid {})",
        broker.bootstrap(),
        broker.pid()
    );
    broker.create_topic(INPUT, partitions);
    let t = Instant::now();
    load(&broker.bootstrap(), keys);
    println!(
        "  load: {keys} records, one per key, into {INPUT} ({partitions} partitions) in {:.2} s",
        t.elapsed().as_secs_f64()
    );

    let app_id = unique_name("bench-restore");
    println!("\n(a) process");
    let processed = process(&broker, &app_id, keys);
    let changelog = format!("{app_id}-{PIPELINE}-changelog");
    let changelog_records = records_in(&broker.bootstrap(), &changelog, partitions) as u64;
    println!("  changelog {changelog}: {changelog_records} records");
    assert!(
        changelog_records >= keys,
        "the changelog holds {changelog_records} records for {keys} keys"
    );
    println!("\n(b) restore");
    let restored = restore(&broker, &app_id, keys, changelog_records);

    println!();
    println!(
        "| phase | records | seconds | records/s | worker CPU µs/record | peak RSS MiB (worker VmHWM) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for r in [&processed, &restored] {
        println!(
            "| {} | {} | {:.3} | {:.0} | {:.2} | {:.1} |",
            r.phase,
            r.records,
            r.seconds,
            r.records as f64 / r.seconds,
            1e6 * r.cpu_seconds / r.records as f64,
            r.rss_mib
        );
    }
    println!(
        "\nTimes from /metrics polled every {} ms (resolution +-{} ms); {keys} keys over {partitions} partitions, one worker member. \
         CPU per record is the worker's user + system time over the timed interval (all its threads): steadier than records/s on a shared machine.",
        POLL.as_millis(),
        POLL.as_millis()
    );
    println!("load average at end: {}", loadavg());
    drop(broker);
}
