//! The Tributary runs: one `tributary run` process per job, timed by [`crate::measure`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::{free_port, http_get, parse_metric, unique_name, Broker, WorkerProcess};
use tributary_generator::KeyTotal;

use crate::measure::{measure, metrics_of, Polled};
use crate::table::{Row, System};
use crate::verify::{committed_to_end, Check, Expected};
use crate::{CHECK_KEYS, COMMIT_INTERVAL_MS, INPUT};
use integration_tests::procstat::{peak_rss_mib, Perf};

/// The pipeline, and so the store, name.
const PIPELINE: &str = "totals";

/// `processing.guarantee` and `processing.commit_interval_ms` of a worker run.
#[derive(Clone, Copy)]
pub struct Commits {
    pub guarantee: &'static str,
    pub interval_ms: u64,
}

/// At least once, every [`COMMIT_INTERVAL_MS`].
pub const AT_LEAST_ONCE: Commits = Commits {
    guarantee: "at_least_once",
    interval_ms: COMMIT_INTERVAL_MS,
};

/// Exactly once, every [`COMMIT_INTERVAL_MS`].
pub const EXACTLY_ONCE: Commits = Commits {
    guarantee: "exactly_once",
    interval_ms: COMMIT_INTERVAL_MS,
};

pub const AGGREGATE_STEPS: &str = "[[pipeline.steps]]\n[pipeline.steps.aggregate]\nfields = { count = \"count()\", total = \"sum(amount)\" }\n";
pub const STATELESS_STEPS: &str = "steps = [ { filter = \"amount > 50\" }, { map = \"{'user': user, 'amount': amount * 2}\" } ]\n";
pub const WINDOW_STEPS: &str = "[[pipeline.steps]]\n[pipeline.steps.aggregate]\nwindow = { kind = \"tumbling\", size = \"10s\" }\nfields = { count = \"count()\", total = \"sum(amount)\" }\nemit = \"final\"\n";

/// A Tributary job.
pub struct Scenario {
    /// Its name in `BENCH_SCENARIOS` (also the app id's prefix).
    pub name: &'static str,
    /// The table's job column (shared with the Kafka Streams run of the same job).
    pub job: &'static str,
    pub steps: &'static str,
    pub sink: Option<&'static str>,
    pub commits: Commits,
    pub check: Check,
}

/// The worker config of a run. `BENCH_KAFKA_PROPERTIES="k=v,k=v"` adds `[kafka.properties]`
/// (for experiments; empty by default). `app.threads = 1`: one group member; its processing
/// threads are `processing.threads`, left at its default (the machine's cores).
pub fn worker_toml(
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

/// (count, sum in seconds) of the commit latency histogram.
fn commit_stats(metrics: &str) -> (f64, f64) {
    (
        parse_metric(metrics, "tributary_commit_latency_seconds_count").unwrap_or(0.0),
        parse_metric(metrics, "tributary_commit_latency_seconds_sum").unwrap_or(0.0),
    )
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `/state/totals/<key>` of each of [`CHECK_KEYS`] equals the generator's totals (polled:
/// the state is visible once committed).
fn check_state(http: &str, expected: &BTreeMap<String, KeyTotal>) -> Result<(), String> {
    let get = |path: &str| {
        http_get(http, path, Duration::from_secs(5))
            .ok()
            .filter(|(code, _)| *code == 200)
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
    };
    crate::verify::await_check_keys(get, |key| format!("/state/{PIPELINE}/{key}"), expected)
}

/// Every one of `outputs` records produced to `topic` acknowledged (polled).
fn check_produced(http: &str, topic: &str, outputs: u64) -> Result<(), String> {
    let q = format!("tributary_records_produced_total{{topic=\"{topic}\"}}");
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let produced = metrics_of(http)
            .and_then(|b| parse_metric(&b, &q))
            .unwrap_or(0.0);
        if produced >= outputs as f64 {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(format!(
                "only {produced} of {outputs} records produced to {topic}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One worker process running `sc` over the whole input.
pub fn run(
    broker: &Broker,
    sc: &Scenario,
    records: u64,
    expected: &Expected,
    input_ends: &HashMap<i32, i64>,
) -> Row {
    let label = "Tributary".to_string();
    let fail = |e: String| Row::failed(sc.job, System::Tributary, label.clone(), e);
    let state = tempfile::Builder::new()
        .prefix("bench-state-")
        .tempdir()
        .expect("tempdir");
    let http = format!("127.0.0.1:{}", free_port());
    let app_id = unique_name(&format!("bench-{}", sc.name));
    let toml = worker_toml(
        &app_id,
        &broker.bootstrap(),
        state.path(),
        &http,
        sc.sink,
        sc.steps,
        sc.commits,
    );
    let mut w = WorkerProcess::spawn_named(sc.name, &toml);
    let pid = w.pid();
    let mut perf = Perf::idle();
    let measured = measure(
        &Polled {
            label: "worker",
            pid,
            broker_pid: broker.pid(),
            http: &http,
            counter: "tributary_records_consumed_total",
            spawned: Instant::now(),
        },
        records,
        || w.try_status().map(|s| s.to_string()),
        || perf = Perf::start(pid, sc.name),
    );
    perf.stop();
    let m = match measured {
        Ok(m) => m,
        Err(e) => return fail(format!("{e}; log tail:\n{}", tail(&w.logs(), 40))),
    };
    let (c0, s0) = commit_stats(&m.first_body);
    let (c1, s1) = commit_stats(&m.last_body);
    let commits = c1 - c0;
    println!(
        "  {}: Tributary: {records} records in {:.3} s = {:.0} records/s (first records {:.2} s after the spawn, {} at the first poll)",
        sc.name,
        m.seconds,
        records as f64 / m.seconds,
        m.first_after_spawn,
        m.at_first
    );
    println!("    {}", m.cpu);
    println!(
        "    {commits} commits in the interval, {:.0} ms each on average",
        1000.0 * (s1 - s0) / commits.max(1.0)
    );

    let mut verified = Vec::new();
    if matches!(sc.check, Check::State | Check::StateAndOutputs) {
        if let Err(e) = check_state(&http, &expected.totals) {
            return fail(e);
        }
        verified.push(format!("state of user-{CHECK_KEYS:?} = expected"));
    }
    if let (Check::StateAndOutputs, Some(topic)) = (sc.check, sc.sink) {
        if let Err(e) = check_produced(&http, topic, records) {
            return fail(e);
        }
        verified.push(format!("{records} outputs acknowledged"));
    }
    let body = metrics_of(&http).unwrap_or_default();
    let consumed = parse_metric(&body, "tributary_records_consumed_total").unwrap_or(0.0);
    if consumed != records as f64 {
        return fail(format!("consumed {consumed} records, expected {records}"));
    }
    let rss = peak_rss_mib(&pid.to_string());
    let status = w.terminate();
    if !status.success() {
        return fail(format!(
            "exit status {status}; log tail:\n{}",
            tail(&w.logs(), 40)
        ));
    }
    if let Err(e) = committed_to_end(&broker.bootstrap(), &app_id, INPUT, input_ends) {
        return fail(e);
    }
    match expected.check_sink(&broker.bootstrap(), sc.check, sc.sink) {
        Some(Ok(s)) => verified.push(s),
        Some(Err(e)) => return fail(e),
        None => {}
    }
    println!(
        "    verified: consumed = {consumed}, committed offsets = end offsets{}{}; peak RSS {rss:.0} MiB",
        if verified.is_empty() { "" } else { ", " },
        verified.join(", ")
    );
    Row {
        job: sc.job,
        system: System::Tributary,
        label,
        vs_pipe: matches!(sc.check, Check::Stateless),
        records,
        seconds: m.seconds,
        rss_mib: rss,
        failure: None,
    }
}
