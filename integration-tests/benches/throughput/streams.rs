//! The Kafka Streams runs: the app in `benches/kafka-streams` (built by `scripts/bench`), one
//! JVM per job, timed by [`crate::measure`] exactly as the Tributary runs are.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use integration_tests::{free_port, http_get, parse_metric, repo_root, unique_name, Broker};

use crate::measure::{measure, metrics_of, Polled};
use crate::table::{Row, System};
use crate::verify::{committed_to_end, Check, Expected};
use crate::{CHECK_KEYS, COMMIT_INTERVAL_MS, INPUT};
use integration_tests::procstat::peak_rss_mib;

/// The JVM's options: the heap limit that Kafka's own launcher (`bin/kafka-run-class.sh`)
/// gives an application by default (`KAFKA_HEAP_OPTS`); otherwise the JVM's defaults (G1 on
/// this machine). The heap is not what limits it: with the JVM's default limit (a quarter of
/// the memory) the jobs ran as fast, with up to 3x the peak RSS.
pub const DEFAULT_JAVA_OPTS: &str = "-Xmx256m";

/// A Kafka Streams job.
pub struct StreamsJob {
    /// Its name in `BENCH_SCENARIOS` (also the application id's prefix).
    pub name: &'static str,
    /// The table's job column (shared with the Tributary run of the same job).
    pub job: &'static str,
    /// The app's JOB argument: `count-sum`, `stateless` or `window`.
    pub app_job: &'static str,
    /// `processing.guarantee`.
    pub guarantee: &'static str,
    pub sink: Option<&'static str>,
    pub check: Check,
}

/// The built app and how it is run.
pub struct StreamsApp {
    jar: PathBuf,
    /// The Kafka Streams version on its class path (from the jar's file name).
    pub version: String,
    /// `num.stream.threads`: `BENCH_KS_THREADS`, default the available cores.
    pub threads: usize,
    /// `BENCH_KS_JAVA_OPTS`, split on whitespace (default [`DEFAULT_JAVA_OPTS`]).
    java_opts: Vec<String>,
}

impl StreamsApp {
    /// `BENCH_KS_JAR`, default `benches/kafka-streams/target/kafka-streams-bench.jar`.
    pub fn locate() -> Result<StreamsApp, String> {
        let jar = std::env::var_os("BENCH_KS_JAR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                repo_root().join("benches/kafka-streams/target/kafka-streams-bench.jar")
            });
        if !jar.is_file() {
            return Err(format!(
                "{} is missing: scripts/bench builds it (or mvn -q -f benches/kafka-streams/pom.xml package)",
                jar.display()
            ));
        }
        let lib = jar.parent().expect("jar in a directory").join("lib");
        let version = std::fs::read_dir(&lib)
            .map_err(|e| format!("{}: {e}", lib.display()))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .find_map(|n| {
                n.strip_prefix("kafka-streams-")
                    .and_then(|v| v.strip_suffix(".jar"))
                    .map(str::to_string)
            })
            .ok_or_else(|| format!("no kafka-streams-*.jar in {}", lib.display()))?;
        let threads = std::env::var("BENCH_KS_THREADS")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let java_opts = std::env::var("BENCH_KS_JAVA_OPTS")
            .unwrap_or_else(|_| DEFAULT_JAVA_OPTS.to_string())
            .split_whitespace()
            .map(str::to_string)
            .collect();
        Ok(StreamsApp {
            jar,
            version,
            threads,
            java_opts,
        })
    }

    pub fn label(&self) -> String {
        format!("Kafka Streams {}, {} threads", self.version, self.threads)
    }

    pub fn describe(&self) -> String {
        format!(
            "{} ({}), java options: {}",
            self.label(),
            self.jar.display(),
            if self.java_opts.is_empty() {
                "none".to_string()
            } else {
                self.java_opts.join(" ")
            }
        )
    }
}

/// The app's JVM; killed if dropped while alive.
struct Jvm {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Jvm {
    /// The app's settings line (the first run prints it) and its warnings and errors.
    fn report_log(&self, first: bool) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        if first {
            if let Some(line) = text.lines().find(|l| l.contains("settings {")) {
                println!("    {line}");
            }
        }
        let warnings: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        if !warnings.is_empty() {
            println!(
                "    the app logged {} warnings or errors, the first: {}",
                warnings.len(),
                warnings[0]
            );
        }
    }

    fn logs(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Jvm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `/state/<key>` of [`CHECK_KEYS`] and the whole store's sums (`/state`) equal the
/// generator's totals.
fn check_state(http: &str, expected: &Expected, records: u64) -> Result<String, String> {
    let get = |path: &str| {
        http_get(http, path, Duration::from_secs(30))
            .ok()
            .filter(|(code, _)| *code == 200)
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
    };
    crate::verify::await_check_keys(get, |key| format!("/state/{key}"), &expected.totals)?;
    let all = get("/state").ok_or("/state did not answer")?;
    let sum: f64 = expected.totals.values().map(|t| t.sum).sum();
    let (keys, count, total) = (
        all["keys"].as_u64(),
        all["count"].as_u64(),
        all["total"].as_f64(),
    );
    if keys != Some(expected.totals.len() as u64) || count != Some(records) || total != Some(sum) {
        return Err(format!(
            "whole store {all}, expected {} keys, count {records}, total {sum}",
            expected.totals.len()
        ));
    }
    Ok(format!(
        "state of user-{CHECK_KEYS:?} = expected, whole store: {} keys, count {records}, total {sum}",
        expected.totals.len()
    ))
}

/// One JVM running `job` over the whole input.
pub fn run(
    app: &StreamsApp,
    broker: &Broker,
    job: &StreamsJob,
    records: u64,
    expected: &Expected,
    input_ends: &HashMap<i32, i64>,
) -> Row {
    let label = app.label();
    let fail = |e: String| Row::failed(job.job, System::KafkaStreams, label.clone(), e);
    let dir = tempfile::Builder::new()
        .prefix("bench-kafka-streams-")
        .tempdir()
        .expect("tempdir");
    let log = dir.path().join("app.log");
    let http = format!("127.0.0.1:{}", free_port());
    let app_id = unique_name(&format!("bench-{}", job.name));
    let out = File::create(&log).expect("log file");
    let child = Command::new("java")
        .args(&app.java_opts)
        .arg("-jar")
        .arg(&app.jar)
        .args([
            job.app_job,
            &broker.bootstrap(),
            INPUT,
            job.sink.unwrap_or("-"),
            &app_id,
            &records.to_string(),
            job.guarantee,
        ])
        .arg("--http")
        .arg(&http)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--threads", &app.threads.to_string()])
        .args(["--commit-interval-ms", &COMMIT_INTERVAL_MS.to_string()])
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .spawn();
    let mut jvm = match child {
        Ok(child) => Jvm {
            child,
            log,
            _dir: dir,
        },
        Err(e) => return fail(format!("spawning java: {e}")),
    };
    let pid = jvm.child.id();
    let measured = measure(
        &Polled {
            label: "jvm",
            pid,
            broker_pid: broker.pid(),
            http: &http,
            counter: "ks_records_consumed_total",
            spawned: Instant::now(),
        },
        records,
        || jvm.child.try_wait().ok().flatten().map(|s| s.to_string()),
        || {},
    );
    let m = match measured {
        Ok(m) => m,
        Err(e) => return fail(format!("{e}; log tail:\n{}", jvm.logs())),
    };
    println!(
        "  {}: Kafka Streams: {records} records in {:.3} s = {:.0} records/s (first records {:.2} s after the spawn, {} at the first poll)",
        job.name,
        m.seconds,
        records as f64 / m.seconds,
        m.first_after_spawn,
        m.at_first
    );
    println!("    {}", m.cpu);
    let own = metrics_of(&http)
        .and_then(|b| parse_metric(&b, "ks_first_to_last_seconds"))
        .filter(|s| *s > 0.0);
    if let Some(own) = own {
        println!(
            "    the app's own clock, first record to the last: {own:.3} s = {:.0} records/s",
            records as f64 / own
        );
    }

    static FIRST: AtomicBool = AtomicBool::new(true);
    jvm.report_log(FIRST.swap(false, Ordering::Relaxed));

    let mut verified = Vec::new();
    if matches!(job.check, Check::State | Check::StateAndOutputs) {
        match check_state(&http, expected, records) {
            Ok(s) => verified.push(s),
            Err(e) => return fail(e),
        }
    }
    let consumed = metrics_of(&http)
        .and_then(|b| parse_metric(&b, "ks_records_consumed_total"))
        .unwrap_or(0.0);
    if consumed != records as f64 {
        return fail(format!("processed {consumed} records, expected {records}"));
    }
    let rss = peak_rss_mib(&pid.to_string());
    let _ = http_get(&http, "/shutdown", Duration::from_secs(5));
    match jvm.wait(Duration::from_secs(120)) {
        Some(s) if s.success() => {}
        Some(s) => return fail(format!("exit status {s}; log tail:\n{}", jvm.logs())),
        None => {
            return fail(format!(
                "did not exit within 120 s of /shutdown; log tail:\n{}",
                jvm.logs()
            ))
        }
    }
    if let Err(e) = committed_to_end(&broker.bootstrap(), &app_id, INPUT, input_ends) {
        return fail(e);
    }
    match expected.check_sink(&broker.bootstrap(), job.check, job.sink) {
        Some(Ok(s)) => verified.push(s),
        Some(Err(e)) => return fail(e),
        None => {}
    }
    println!(
        "    verified: processed = {consumed}, committed offsets = end offsets, {}; peak RSS {rss:.0} MiB (the JVM)",
        verified.join(", ")
    );
    Row {
        job: job.job,
        system: System::KafkaStreams,
        label,
        vs_pipe: matches!(job.check, Check::Stateless),
        records,
        seconds: m.seconds,
        rss_mib: rss,
        failure: None,
    }
}
