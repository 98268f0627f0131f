//! Throughput benchmark (not a test; `harness = false`): how close one worker gets to what a
//! raw rdkafka consumer reads from the same broker.
//!
//! ```sh
//! scripts/bench          # installs Kafka, builds target/release/tributary, runs this
//! cargo bench -p integration-tests --bench throughput    # the release binary must exist
//! ```
//!
//! On one fresh broker (Apache Kafka 4.1 in KRaft mode, from `scripts/install-kafka`; tansu with
//! `TRIBUTARY_TEST_BROKER=tansu`), in one run:
//!
//! 1. load: `tributary generate` writes N records (`BENCH_RECORDS`, default 1,000,000) of
//!    `{"user","amount","ts"}` over 10,000 keys (seed 42) into a 6-partition topic;
//! 2. `raw`: a `BaseConsumer` built from the worker's own consumer settings
//!    (`tributary::kafka::client::consumer`, so `fetch.wait.max.ms`, `queued.min.messages`,
//!    assignor, ... are the worker's by construction) subscribes in a fresh group and reads
//!    every record, timed from the first record to the last;
//! 3. `agg`: `tributary run` with one thread, one pipeline with one `aggregate` step
//!    (count and sum of amount per key), no sink, commits every 1000 ms; timed by polling
//!    `/metrics` (`tributary_records_consumed_total`) every 50 ms, from the first poll that
//!    sees > 0 to the first that sees N (so the resolution is the poll interval);
//! 4. `agg+sink`: the same with `sink = { topic = "bench-out", format = "json" }`;
//! 5. `stateless`: a declarative pipeline `filter = "amount > 50"`,
//!    `map = "{'user': user, 'amount': amount * 2}"`, sink `bench-stateless` (timed to the last
//!    input record; then every output record, as many as the seed's amounts > 50, must be
//!    acknowledged);
//! 6. `window`: a 10-second tumbling window, count and sum of amount per user (the record
//!    key), `emit = "final"`, sink `bench-windows`.
//!
//! Each scenario has its own group / app id. After each worker run the bench checks
//! `consumed == N` and a few keys' state (`/state/totals/<key>`) against the totals the
//! generator's seed implies, and reads the worker's peak RSS (`VmHWM`) before SIGTERM.
//! It also prints the CPU time of the measured process, its busiest threads and the broker
//! over the measured interval: on a 2-core machine that says who the bottleneck is.
//!
//! Knobs (environment):
//! - `BENCH_RECORDS` (default 1000000);
//! - `BENCH_SCENARIOS`: comma list of `raw,agg,sink,sink100,eos,eos100,stateless,window`
//!   (default all; `eos` and `eos100` run the `sink` job under exactly once);
//! - `BENCH_KAFKA_PROPERTIES="k=v,k=v"`: extra `[kafka.properties]` for the worker and the raw
//!   consumer alike (experiments, e.g. `fetch.queue.backoff.ms=10`; empty by default);
//! - `BENCH_PERF_DIR`: `perf record` samples each worker over the measured interval into
//!   `<dir>/<scenario>.perf.data`; `BENCH_PERF_ARGS` replaces its sampling options;
//! - `BENCH_RDKAFKA_DEBUG`: librdkafka `debug` contexts for the raw consumer (log on stderr);
//! - `TRIBUTARY_BIN`, `KAFKA_HOME`, `TANSU_BIN`: the binaries (see the harness).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{
    free_port, http_get, kafka_home, parse_metric, run_cli_timeout, tansu_bin, tributary_bin,
    unique_name, Broker, BrokerKind, WorkerProcess,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use tributary::generate::{KeyDistribution, KeyTotal, RecordGenerator};

const KEYS: u64 = 10_000;
const PARTITIONS: i32 = 6;
/// `tributary generate`'s default seed, passed explicitly so the expected totals match.
const SEED: u64 = 42;
const INPUT: &str = "bench-in";
const SINK: &str = "bench-out";
/// The pipeline, and so the store, name.
const PIPELINE: &str = "totals";
const POLL: Duration = Duration::from_millis(50);
const COMMIT_INTERVAL_MS: u64 = 1000;
/// Keys whose state is checked after each worker run.
const CHECK_KEYS: &[u64] = &[0, 1, 4242, 9999];

extern "C" {
    fn sysconf(name: i32) -> i64;
}
/// `_SC_CLK_TCK` on Linux.
const SC_CLK_TCK: i32 = 2;

fn clk_tck() -> f64 {
    // SAFETY: sysconf takes and returns plain integers.
    let t = unsafe { sysconf(SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime (seconds) from a `/proc/.../stat` file.
fn stat_cpu(path: &Path) -> Option<f64> {
    let s = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clk_tck())
}

fn proc_cpu(pid: u32) -> f64 {
    stat_cpu(Path::new(&format!("/proc/{pid}/stat"))).unwrap_or(f64::NAN)
}

/// CPU seconds per thread of `pid`: tid -> (name, seconds).
fn thread_cpu(pid: u32) -> BTreeMap<u32, (String, f64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        if let Some(cpu) = stat_cpu(&e.path().join("stat")) {
            out.insert(tid, (comm, cpu));
        }
    }
    out
}

/// A `/proc/<pid>/status` field in KiB (`VmHWM`, `VmRSS`).
fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// CPU usage snapshot of the measured process (by thread) and the broker.
struct CpuSnap {
    at: Instant,
    process: f64,
    threads: BTreeMap<u32, (String, f64)>,
    broker: f64,
    /// Busy CPU seconds of the whole machine (all processes), from /proc/stat.
    machine: f64,
}

/// Non-idle CPU seconds of the whole machine since boot.
fn machine_busy() -> f64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else {
        return f64::NAN;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: f64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    busy / clk_tck()
}

impl CpuSnap {
    fn take(pid: u32, broker: u32) -> CpuSnap {
        CpuSnap {
            at: Instant::now(),
            process: proc_cpu(pid),
            threads: thread_cpu(pid),
            broker: proc_cpu(broker),
            machine: machine_busy(),
        }
    }

    /// "process X cpu-s (Y % of one core), broker ...; busiest threads: ...".
    fn report(a: &CpuSnap, b: &CpuSnap, who: &str) -> String {
        let wall = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
        let pct = |s: f64| 100.0 * s / wall;
        let proc_s = b.process - a.process;
        let broker_s = b.broker - a.broker;
        let other_s = (b.machine - a.machine - proc_s - broker_s).max(0.0);
        let mut threads: Vec<(u32, String, f64)> = b
            .threads
            .iter()
            .map(|(tid, (name, cpu))| {
                let before = a.threads.get(tid).map(|t| t.1).unwrap_or(0.0);
                (*tid, name.clone(), cpu - before)
            })
            .filter(|t| t.2 > 0.0)
            .collect();
        threads.sort_by(|x, y| y.2.total_cmp(&x.2));
        let top: Vec<String> = threads
            .iter()
            .take(6)
            .map(|(tid, name, s)| format!("{name}[{tid}] {:.0}%", pct(*s)))
            .collect();
        format!(
            "    cpu over {wall:.2} s: {who} {proc_s:.2} s ({:.0}% of one core), broker {broker_s:.2} s ({:.0}%), \
             together {:.0}% of 2 cores; everything else on the machine (this bench included when it is not the measured process) {:.0}% of one core\n    busiest {who} threads: {}",
            pct(proc_s),
            pct(broker_s),
            pct(proc_s + broker_s) / 2.0,
            pct(other_s),
            top.join(", ")
        )
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// A worker scenario: its pipeline steps, sink, and what to check afterwards.
struct Scenario {
    /// Short name (`BENCH_SCENARIOS`, app id, logs).
    name: &'static str,
    /// The result row's label.
    title: &'static str,
    /// The pipeline's steps, as TOML.
    steps: &'static str,
    /// The sink topic, if any.
    sink: Option<&'static str>,
    /// Output records to wait for (all acknowledged) after the input is consumed.
    outputs: Option<u64>,
    /// Check `/state/totals/<key>` of a few keys against the generator's totals.
    check_state: bool,
    /// How the worker commits.
    commits: Commits,
}

/// `processing.guarantee` and `processing.commit_interval_ms` of a worker run.
#[derive(Clone, Copy)]
struct Commits {
    guarantee: &'static str,
    interval_ms: u64,
}

/// At least once, every [`COMMIT_INTERVAL_MS`].
const AT_LEAST_ONCE: Commits = Commits {
    guarantee: "at_least_once",
    interval_ms: COMMIT_INTERVAL_MS,
};

const AGGREGATE_STEPS: &str = "[[pipeline.steps]]\n[pipeline.steps.aggregate]\nfields = { count = \"count()\", total = \"sum(amount)\" }\n";
const STATELESS_STEPS: &str = "steps = [ { filter = \"amount > 50\" }, { map = \"{'user': user, 'amount': amount * 2}\" } ]\n";
const WINDOW_STEPS: &str = "[[pipeline.steps]]\n[pipeline.steps.aggregate]\nwindow = { kind = \"tumbling\", size = \"10s\" }\nfields = { count = \"count()\", total = \"sum(amount)\" }\nemit = \"final\"\n";

/// One result row.
struct Row {
    scenario: String,
    records: u64,
    seconds: f64,
    rss_mib: f64,
    rss_note: &'static str,
}

impl Row {
    fn rate(&self) -> f64 {
        self.records as f64 / self.seconds
    }
}

fn worker_toml(
    app_id: &str,
    bootstrap: &str,
    state_dir: &Path,
    http: &str,
    sink: Option<&str>,
    steps: &str,
    commits: Commits,
) -> String {
    let sink = match sink {
        Some(t) => format!("sink = {{ topic = \"{t}\", format = \"json\" }}\n"),
        None => String::new(),
    };
    // BENCH_KAFKA_PROPERTIES="k=v,k=v": extra [kafka.properties] for the worker and the raw
    // consumer alike (for experiments; empty by default).
    let mut properties = String::new();
    if let Ok(list) = std::env::var("BENCH_KAFKA_PROPERTIES") {
        for kv in list.split(',').filter(|kv| !kv.trim().is_empty()) {
            let (k, v) = kv.split_once('=').expect("BENCH_KAFKA_PROPERTIES: k=v,k=v");
            properties.push_str(&format!("\"{}\" = \"{}\"\n", k.trim(), v.trim()));
        }
    }
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
         guarantee = \"{guarantee}\"\n\
         commit_interval_ms = {interval}\n\
         \n\
         [state]\n\
         dir = \"{state}\"\n\
         \n\
         [http]\n\
         listen = \"{http}\"\n\
         \n\
         [[pipeline]]\n\
         name = \"{PIPELINE}\"\n\
         source = {{ topics = [\"{INPUT}\"], format = \"json\" }}\n\
         {sink}\
         {steps}",
        state = state_dir.display(),
        guarantee = commits.guarantee,
        interval = commits.interval_ms,
    )
}

/// (a) The limit: a BaseConsumer with the worker's consumer settings reads every record.
fn raw_consumer(broker: &Broker, records: u64) -> Row {
    let dir = tempfile::tempdir().expect("tempdir");
    // The worker's own settings, from the worker's own code, for a config that differs from
    // the worker runs only in the app id (= group id).
    let cfg_path = dir.path().join("raw.toml");
    let toml = worker_toml(
        &unique_name("bench-raw"),
        &broker.bootstrap(),
        &dir.path().join("state"),
        &format!("127.0.0.1:{}", free_port()),
        None,
        AGGREGATE_STEPS,
        AT_LEAST_ONCE,
    );
    std::fs::write(&cfg_path, toml).expect("write config");
    let cfg = tributary::config::load(&[cfg_path]).unwrap_or_else(|issues| {
        panic!(
            "raw consumer config: {}",
            issues
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )
    });
    let client_config = tributary::kafka::client::consumer(&cfg, &broker.bootstrap(), 0);
    let mut settings: Vec<String> = client_config
        .config_map()
        .iter()
        .filter(|(k, _)| **k != "bootstrap.servers")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    settings.sort();
    println!(
        "  raw consumer settings (tributary::kafka::client::consumer): {}",
        settings.join(" ")
    );

    // Peak RSS of this process from here on: reset the high-water mark (clear_refs 5).
    let rss_before = status_kib("self", "VmRSS").unwrap_or(0);
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();

    let mut client_config = client_config;
    if let Ok(debug) = std::env::var("BENCH_RDKAFKA_DEBUG") {
        client_config
            .set("debug", debug)
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
    }
    let consumer: BaseConsumer<LogContext> = client_config
        .create_with_context(LogContext(Instant::now()))
        .expect("create consumer");
    consumer.subscribe(&[INPUT]).expect("subscribe");
    let me = std::process::id();
    let broker_pid = broker.pid();
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut first: Option<(Instant, CpuSnap)> = None;
    // Where the time goes: a poll that blocks for over 1 ms waited for the fetcher (the local
    // queue was empty); the records between two such waits arrived in one go.
    let (mut waits, mut waited, mut burst) = (0u64, Duration::ZERO, 0u64);
    let mut bursts: Vec<u64> = Vec::new();
    while n < records {
        let before = Instant::now();
        let polled = consumer.poll(Duration::from_millis(100));
        if first.is_some() {
            let took = before.elapsed();
            if took > Duration::from_millis(1) {
                waits += 1;
                waited += took;
                if burst > 0 {
                    bursts.push(burst);
                }
                burst = 0;
            }
        }
        match polled {
            Some(Ok(m)) => {
                if first.is_none() {
                    first = Some((Instant::now(), CpuSnap::take(me, broker_pid)));
                }
                n += 1;
                burst += 1;
                bytes += m.key().map_or(0, |k| k.len()) as u64
                    + m.payload().map_or(0, |p| p.len()) as u64;
            }
            Some(Err(e)) => eprintln!("  raw consumer: {e}"),
            None => {}
        }
        if Instant::now() >= deadline {
            panic!("raw consumer read only {n} of {records} records in 600 s");
        }
    }
    bursts.push(burst);
    let last = Instant::now();
    let cpu_end = CpuSnap::take(me, broker_pid);
    let hwm = status_kib("self", "VmHWM").unwrap_or(0);
    let (t0, cpu0) = first.expect("at least one record");
    let secs = last.duration_since(t0).as_secs_f64();
    println!(
        "  raw: {n} records ({} key+payload bytes) in {secs:.3} s = {:.0} records/s",
        std::hint::black_box(bytes),
        n as f64 / secs
    );
    println!("{}", CpuSnap::report(&cpu0, &cpu_end, "bench"));
    bursts.sort_unstable();
    println!(
        "    waited for the fetcher {waits} times, {:.3} s in total ({:.0}% of the interval); records between waits: median {}, max {}",
        waited.as_secs_f64(),
        100.0 * waited.as_secs_f64() / secs,
        bursts[bursts.len() / 2],
        bursts[bursts.len() - 1]
    );
    println!(
        "    bench process VmHWM {:.1} MiB (high-water mark {} before creating the consumer; RSS then {:.1} MiB)",
        mib(hwm),
        if reset { "reset" } else { "NOT reset" },
        mib(rss_before)
    );
    // Stop fetching before the next scenario.
    consumer.unsubscribe();
    drop(consumer);
    Row {
        scenario: "raw BaseConsumer".into(),
        records: n,
        seconds: secs,
        rss_mib: mib(hwm),
        rss_note: "bench process VmHWM",
    }
}

/// (count, sum in seconds) of the commit latency histogram.
fn commit_stats(metrics: &str) -> (f64, f64) {
    (
        parse_metric(metrics, "tributary_commit_latency_seconds_count").unwrap_or(0.0),
        parse_metric(metrics, "tributary_commit_latency_seconds_sum").unwrap_or(0.0),
    )
}

/// The raw consumer's context: librdkafka's log lines (`BENCH_RDKAFKA_DEBUG=fetch,...` turns
/// its debug contexts on) go to stderr with the time since the consumer was created; otherwise
/// rdkafka's defaults.
struct LogContext(Instant);

impl rdkafka::ClientContext for LogContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        eprintln!(
            "{:10.6} {level:?} {fac} {message}",
            self.0.elapsed().as_secs_f64()
        );
    }
}

impl rdkafka::consumer::ConsumerContext for LogContext {}

fn metrics_of(addr: &str) -> Option<String> {
    match http_get(addr, "/metrics", Duration::from_secs(5)) {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

/// `perf record` on `pid` until dropped (SIGINT, so perf writes its file).
struct Perf(Option<Child>);

impl Perf {
    fn start(pid: u32, scenario: &str) -> Perf {
        let Some(dir) = std::env::var_os("BENCH_PERF_DIR") else {
            return Perf(None);
        };
        let dir = PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        let out = dir.join(format!("{scenario}.perf.data"));
        // BENCH_PERF_ARGS replaces the sampling options (default: 999 Hz, DWARF call graphs,
        // which work without frame pointers).
        let opts = std::env::var("BENCH_PERF_ARGS")
            .unwrap_or_else(|_| "-F 999 --call-graph dwarf,16384".to_string());
        let child = Command::new("perf")
            .arg("record")
            .args(opts.split_whitespace())
            .arg("-o")
            .arg(&out)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(c) => {
                println!("    perf recording the worker into {}", out.display());
                Perf(Some(c))
            }
            Err(e) => {
                println!("    perf not started: {e}");
                Perf(None)
            }
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            integration_tests::sig::send(c.id(), 2);
            let _ = c.wait();
        }
    }
}

impl Drop for Perf {
    fn drop(&mut self) {
        self.stop();
    }
}

/// (b) One worker process; `sink` adds an output topic.
fn worker_run(
    broker: &Broker,
    sc: &Scenario,
    records: u64,
    expected: &BTreeMap<String, KeyTotal>,
) -> Row {
    let scenario = sc.name;
    let sink = sc.sink;
    let state = tempfile::Builder::new()
        .prefix("bench-state-")
        .tempdir()
        .expect("tempdir");
    let http = format!("127.0.0.1:{}", free_port());
    let app_id = unique_name(&format!("bench-{scenario}"));
    let toml = worker_toml(
        &app_id,
        &broker.bootstrap(),
        state.path(),
        &http,
        sink,
        sc.steps,
        sc.commits,
    );
    let mut w = WorkerProcess::spawn_named(scenario, &toml);
    let pid = w.pid();
    let broker_pid = broker.pid();
    let spawned = Instant::now();

    let deadline = Instant::now() + Duration::from_secs(900);
    let mut first: Option<(Instant, f64, CpuSnap, (f64, f64))> = None;
    let mut perf = Perf(None);
    let mut next = Instant::now();
    let (t_last, cpu_end, commits_end) = loop {
        next += POLL;
        if let Some(s) = w.try_status() {
            panic!(
                "{scenario}: worker exited ({s}); log tail:\n{}",
                tail(&w.logs(), 60)
            );
        }
        if Instant::now() >= deadline {
            panic!(
                "{scenario}: worker did not consume {records} records within 900 s; log tail:\n{}",
                tail(&w.logs(), 60)
            );
        }
        if let Some(body) = metrics_of(&http) {
            let now = Instant::now();
            let consumed = parse_metric(&body, "tributary_records_consumed_total").unwrap_or(0.0);
            if first.is_none() && consumed > 0.0 {
                first = Some((
                    now,
                    consumed,
                    CpuSnap::take(pid, broker_pid),
                    commit_stats(&body),
                ));
                perf = Perf::start(pid, scenario);
                println!(
                    "  {scenario}: first records seen {:.2} s after spawn ({consumed} at the first poll)",
                    now.duration_since(spawned).as_secs_f64()
                );
            }
            if consumed >= records as f64 {
                let snap = CpuSnap::take(pid, broker_pid);
                perf.stop();
                break (now, snap, commit_stats(&body));
            }
        }
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    };
    let (t0, at_first, cpu0, commits0) = first.expect("first poll");
    let secs = t_last.duration_since(t0).as_secs_f64();
    println!(
        "  {scenario}: {records} records in {secs:.3} s = {:.0} records/s (first poll > 0 to first poll = {records}; resolution {} ms)",
        records as f64 / secs,
        POLL.as_millis()
    );
    println!(
        "    ({at_first} records were already counted at the first poll: ({records} - {at_first}) / {secs:.3} s = {:.0} records/s)",
        (records as f64 - at_first) / secs
    );
    println!("{}", CpuSnap::report(&cpu0, &cpu_end, "worker"));
    let (commits, commit_s) = (commits_end.0 - commits0.0, commits_end.1 - commits0.1);
    println!(
        "    {commits} commits in the measured interval took {commit_s:.3} s together ({:.0} ms each; the poll loop waits for a commit)",
        1000.0 * commit_s / commits.max(1.0)
    );

    // Sink: time until every output record is acknowledged too.
    if let (Some(topic), Some(outputs)) = (sink, sc.outputs) {
        let q = format!("tributary_records_produced_total{{topic=\"{topic}\"}}");
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            let produced = metrics_of(&http)
                .and_then(|b| parse_metric(&b, &q))
                .unwrap_or(0.0);
            if produced >= outputs as f64 {
                println!(
                    "  {scenario}: all {produced} output records acknowledged {:.3} s after the first input record",
                    t0.elapsed().as_secs_f64()
                );
                break;
            }
            if Instant::now() >= until {
                panic!("{scenario}: only {produced} of {outputs} records produced to {topic}");
            }
            std::thread::sleep(POLL);
        }
    }

    // Correctness: the state of a few keys (visible once committed) and the exact count.
    let until = Instant::now() + Duration::from_secs(60);
    for k in CHECK_KEYS.iter().filter(|_| sc.check_state) {
        let key = format!("user-{k}");
        let want = expected.get(&key).copied().unwrap_or_default();
        loop {
            let got = http_get(
                &http,
                &format!("/state/{PIPELINE}/{key}"),
                Duration::from_secs(5),
            )
            .ok()
            .filter(|(code, _)| *code == 200)
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok());
            let n = got.as_ref().and_then(|v| v["count"].as_u64());
            if n == Some(want.count) {
                let total = got.as_ref().and_then(|v| v["total"].as_f64());
                assert!(
                    total == Some(want.sum),
                    "{scenario}: {key}: state {got:?}, expected sum {}",
                    want.sum
                );
                break;
            }
            if Instant::now() >= until {
                panic!(
                    "{scenario}: {key}: state {got:?}, expected count {} sum {}",
                    want.count, want.sum
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let body = metrics_of(&http).expect("final /metrics");
    let consumed = parse_metric(&body, "tributary_records_consumed_total").unwrap_or(0.0);
    assert_eq!(consumed, records as f64, "{scenario}: records consumed");
    let changelog = parse_metric(
        &body,
        &format!("tributary_records_produced_total{{topic=\"{app_id}-{PIPELINE}-changelog\"}}"),
    )
    .unwrap_or(0.0);
    let produced_all = parse_metric(&body, "tributary_records_produced_total").unwrap_or(0.0);
    let state = if sc.check_state {
        format!(
            ", state of {:?} = expected",
            CHECK_KEYS
                .iter()
                .map(|k| format!("user-{k}"))
                .collect::<Vec<_>>()
        )
    } else {
        String::new()
    };
    println!(
        "  {scenario}: verified: consumed = {consumed}{state}; produced {produced_all} records ({changelog} to the changelog)"
    );

    let hwm = status_kib(&pid.to_string(), "VmHWM").unwrap_or(0);
    let status = w.terminate();
    assert!(status.success(), "{scenario}: worker exit status {status}");
    Row {
        scenario: sc.title.into(),
        records,
        seconds: secs,
        rss_mib: mib(hwm),
        rss_note: "worker VmHWM",
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let records = env_u64("BENCH_RECORDS", 1_000_000);
    let scenarios = std::env::var("BENCH_SCENARIOS")
        .unwrap_or_else(|_| "raw,agg,sink,sink100,eos,eos100,stateless,window".into());
    let wants = |s: &str| scenarios.split(',').any(|x| x.trim() == s);

    let broker_desc = match BrokerKind::from_env() {
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
    };
    let bin = tributary_bin();
    println!("tributary throughput bench");
    println!(
        "  nproc {}, load average {} (1/5/15 min) at start",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    println!("  broker: {broker_desc}");
    println!("  worker binary: {}", bin.display());

    let broker = Broker::start();
    println!(
        "  broker up on {} (pid {})",
        broker.bootstrap(),
        broker.pid()
    );

    // 1. Load.
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
        Duration::from_secs(900),
    );
    assert!(
        out.status.success(),
        "tributary generate failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let load = t.elapsed().as_secs_f64();
    println!(
        "  load: {records} records over {KEYS} keys into {INPUT} ({PARTITIONS} partitions) with `tributary generate` in {load:.2} s ({:.0} records/s; not part of any measurement)",
        records as f64 / load
    );
    let expected = RecordGenerator::new(KEYS, &KeyDistribution::Uniform, SEED)
        .expect("generator")
        .expected_totals(records);
    // The stateless pipeline's output: records with amount > 50.
    let mut gen = RecordGenerator::new(KEYS, &KeyDistribution::Uniform, SEED).expect("generator");
    let big = (0..records)
        .filter(|_| gen.next_sample().amount > 50)
        .count() as u64;
    let worker_scenarios = [
        Scenario {
            name: "agg",
            title: "worker: running aggregate, no sink",
            steps: AGGREGATE_STEPS,
            sink: None,
            outputs: None,
            check_state: true,
            commits: AT_LEAST_ONCE,
        },
        Scenario {
            name: "sink",
            title: "worker: running aggregate + sink",
            steps: AGGREGATE_STEPS,
            sink: Some(SINK),
            outputs: Some(records),
            check_state: true,
            commits: AT_LEAST_ONCE,
        },
        Scenario {
            name: "sink100",
            title: "worker: running aggregate + sink, commits every 100 ms",
            steps: AGGREGATE_STEPS,
            sink: Some("bench-sink100"),
            outputs: Some(records),
            check_state: true,
            commits: Commits {
                guarantee: "at_least_once",
                interval_ms: 100,
            },
        },
        Scenario {
            name: "eos",
            title: "worker: running aggregate + sink, exactly once",
            steps: AGGREGATE_STEPS,
            sink: Some("bench-eos"),
            outputs: Some(records),
            check_state: true,
            commits: Commits {
                guarantee: "exactly_once",
                interval_ms: COMMIT_INTERVAL_MS,
            },
        },
        Scenario {
            name: "eos100",
            title: "worker: running aggregate + sink, exactly once, commits every 100 ms",
            steps: AGGREGATE_STEPS,
            sink: Some("bench-eos100"),
            outputs: Some(records),
            check_state: true,
            commits: Commits {
                guarantee: "exactly_once",
                interval_ms: 100,
            },
        },
        Scenario {
            name: "stateless",
            title: "pipeline: filter amount > 50, map {user, amount * 2}, sink",
            steps: STATELESS_STEPS,
            sink: Some("bench-stateless"),
            outputs: Some(big),
            check_state: false,
            commits: AT_LEAST_ONCE,
        },
        Scenario {
            name: "window",
            title: "pipeline: 10 s tumbling count + sum per user, emit final, sink",
            steps: WINDOW_STEPS,
            sink: Some("bench-windows"),
            outputs: None,
            check_state: false,
            commits: AT_LEAST_ONCE,
        },
    ];
    for sc in worker_scenarios.iter().filter(|sc| wants(sc.name)) {
        if let Some(topic) = sc.sink {
            broker.create_topic(topic, PARTITIONS);
        }
    }

    let mut rows = Vec::new();
    if wants("raw") {
        println!("\n(a) raw consumer");
        rows.push(raw_consumer(&broker, records));
    }
    for sc in worker_scenarios.iter().filter(|sc| wants(sc.name)) {
        println!("\n({}) {}", sc.name, sc.title);
        rows.push(worker_run(&broker, sc, records, &expected));
    }

    let raw = rows
        .iter()
        .find(|r| r.scenario.starts_with("raw"))
        .map(|r| r.rate());
    println!();
    println!(
        "| scenario | records | seconds | records/s | % of raw-consumer limit | peak RSS MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        let pct = raw.map_or("-".to_string(), |raw| {
            format!("{:.0} %", 100.0 * r.rate() / raw)
        });
        println!(
            "| {} | {} | {:.3} | {:.0} | {} | {:.1} ({}) |",
            r.scenario,
            r.records,
            r.seconds,
            r.rate(),
            pct,
            r.rss_mib,
            r.rss_note
        );
    }
    println!(
        "\nworker times: first /metrics poll with consumed > 0 to the first with consumed = {records}, polled every {} ms (resolution +-{} ms); raw: first record to last.",
        POLL.as_millis(),
        POLL.as_millis()
    );
    println!("load average at end: {}", loadavg());
    drop(broker);
}
