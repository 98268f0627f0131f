//! `tributary demo`: the whole system on an embedded Kafka cluster.
//!
//! Starts librdkafka's in-process mock cluster, three workers (real child processes of this
//! binary, `tributary run`, each with its own state directory and HTTP port), and the data
//! generator. Half-way through it kills one worker with SIGKILL; the others take its partitions
//! after the session timeout and restore its state from the changelog. At the end it reads the
//! sink topic and checks every key's final count and sum against what was generated.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;
use tributary::kafka::embedded::EmbeddedCluster;
use tributary::kafka::tools::GroupProgress;
use tributary::kafka::ClientError;
use tributary_generator::{KeyDistribution, KeyTotal};

use super::generate::{generate, GenerateError, GenerateOptions};

const INPUT: &str = "clicks";
const OUTPUT: &str = "clicks-totals";
const APP: &str = "demo";
const PARTITIONS: i32 = 6;
const WORKERS: usize = 3;
const SESSION_TIMEOUT_MS: u64 = 6000;

/// Demo options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Records to generate.
    pub records: u64,
    /// Distinct keys.
    pub keys: u64,
}

/// Why the demo could not run (a mismatch of totals is not an error: `run` returns false).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// Setting up the cluster, files or processes failed.
    #[error("demo setup: {0}")]
    Setup(String),
    /// The generator failed.
    #[error(transparent)]
    Generate(#[from] Box<GenerateError>),
    /// Reading the results failed.
    #[error("reading {OUTPUT}: {0}")]
    Read(#[from] ClientError),
}

fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> DemoError + '_ {
    move |e| DemoError::Setup(format!("{what}: {e}"))
}

/// One worker child process.
struct DemoWorker {
    name: String,
    child: Child,
    http: SocketAddr,
    alive: bool,
    last_tasks: Option<usize>,
}

impl DemoWorker {
    fn spawn(index: usize, config: &Path, dir: &Path) -> Result<Self, DemoError> {
        let name = format!("worker-{}", index + 1);
        let http = free_port()?;
        let exe = std::env::current_exe().map_err(setup("locating this binary"))?;
        let log = std::fs::File::create(dir.join(format!("{name}.log")))
            .map_err(setup("creating a log file"))?;
        let child = Command::new(exe)
            .args(["run", "-c"])
            .arg(config)
            .env("TRIBUTARY_STATE__DIR", dir.join(&name))
            .env("TRIBUTARY_HTTP__LISTEN", http.to_string())
            .env("RUST_LOG", "info,librdkafka=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(setup("cloning a log file"))?)
            .stderr(log)
            .spawn()
            .map_err(setup("starting a worker"))?;
        Ok(Self {
            name,
            child,
            http,
            alive: true,
            last_tasks: None,
        })
    }

    /// (running, restoring) task counts from `/tasks`, if the worker answers.
    fn tasks(&self) -> Option<(usize, usize)> {
        let body = http_get(self.http, "/tasks")?;
        let tasks: Vec<serde_json::Value> = serde_json::from_str(&body).ok()?;
        let running = tasks.iter().filter(|t| t["state"] == "running").count();
        Some((running, tasks.len() - running))
    }

    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) with a pid we spawned and have not reaped; no memory is touched.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.alive = false;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        None
    }
}

impl Drop for DemoWorker {
    fn drop(&mut self) {
        if self.alive {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> Result<SocketAddr, DemoError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(setup("finding a free port"))?;
    l.local_addr().map_err(setup("finding a free port"))
}

/// A minimal HTTP/1.0 GET against a worker on loopback; `None` when it does not answer 200.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_string())
}

fn config_text(bootstrap: &str) -> String {
    format!(
        r#"[app]
id = "{APP}"

[kafka]
bootstrap_servers = "{bootstrap}"

[group]
session_timeout_ms = {SESSION_TIMEOUT_MS}

[processing]
commit_interval_ms = 1000

[[pipeline]]
name = "totals"
source = {{ topics = ["{INPUT}"], format = "json" }}
sink = {{ topic = "{OUTPUT}", format = "json" }}
steps = [ {{ aggregate = {{ fields = {{ count = "count()", total = "sum(amount)" }} }} }} ]
"#
    )
}

/// Prints an event above the progress bars, or as a plain line when they are hidden (no
/// terminal).
fn event(multi: &MultiProgress, line: String) {
    if multi.is_hidden() {
        println!("{line}");
    } else {
        multi.println(line).ok();
    }
}

/// The outcome of comparing the sink's final totals with the generated ones.
#[derive(Debug, Default)]
struct Verdict {
    exact: usize,
    /// Records counted more than once, over every over-counted key.
    duplicates: u64,
    over: Vec<String>,
    under: Vec<String>,
    missing: Vec<String>,
}

fn compare(
    expected: &BTreeMap<String, KeyTotal>,
    actual: &std::collections::HashMap<Vec<u8>, Vec<u8>>,
) -> Verdict {
    let mut v = Verdict::default();
    for (key, want) in expected {
        let Some(raw) = actual.get(key.as_bytes()) else {
            v.missing.push(key.clone());
            continue;
        };
        let got: serde_json::Value = serde_json::from_slice(raw).unwrap_or_default();
        let count = got["count"].as_u64().unwrap_or(0);
        let total = got["total"].as_f64().unwrap_or(f64::NAN);
        if count == want.count && total == want.sum {
            v.exact += 1;
        } else if count >= want.count && total >= want.sum {
            v.duplicates += count - want.count;
            v.over.push(format!(
                "{key}: count {count} (expected {}), total {total} (expected {})",
                want.count, want.sum
            ));
        } else {
            v.under.push(format!(
                "{key}: count {count} (expected {}), total {total} (expected {})",
                want.count, want.sum
            ));
        }
    }
    v
}

/// Runs the demo; `Ok(true)` when no record was lost: every key's final totals are at least the
/// generated ones (at least once: a key may be over-counted, and the demo reports by how much).
pub async fn run(opts: DemoOptions) -> Result<bool, DemoError> {
    let dir = std::env::temp_dir().join(format!("tributary-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(setup("creating the demo directory"))?;
    let result = run_in(&dir, &opts).await;
    if matches!(result, Ok(true)) {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("worker logs kept in {}", dir.display());
    }
    result
}

async fn run_in(dir: &Path, opts: &DemoOptions) -> Result<bool, DemoError> {
    let cluster = EmbeddedCluster::start(1).map_err(DemoError::Setup)?;
    let bootstrap = cluster.bootstrap().to_string();
    for topic in [
        INPUT.to_string(),
        OUTPUT.to_string(),
        tributary::processor::changelog_topic(APP, "totals"),
    ] {
        cluster
            .create_topic(&topic, PARTITIONS)
            .map_err(DemoError::Setup)?;
    }
    println!("embedded Kafka cluster at {bootstrap}; topic {INPUT} with {PARTITIONS} partitions");
    let config: PathBuf = dir.join("demo.toml");
    std::fs::write(&config, config_text(&bootstrap)).map_err(setup("writing the config"))?;

    let mut workers = Vec::new();
    for i in 0..WORKERS {
        workers.push(DemoWorker::spawn(i, &config, dir)?);
    }
    println!(
        "started {WORKERS} workers (tributary run), logs in {}",
        dir.display()
    );

    let rate = (opts.records / 20).max(1000);
    let mut gen = GenerateOptions::new(bootstrap.clone(), INPUT, opts.records);
    gen.keys = opts.keys;
    gen.rate = Some(rate);
    gen.distribution = KeyDistribution::Uniform;
    gen.progress = false;
    let cancel = CancellationToken::new();
    let generator = tokio::spawn(generate(gen, cancel.clone()));

    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>12} [{bar:40}] {pos}/{len} {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    let produced_bar = multi.add(
        ProgressBar::new(opts.records)
            .with_style(style.clone())
            .with_prefix("generated"),
    );
    let processed_bar = multi.add(
        ProgressBar::new(opts.records)
            .with_style(style)
            .with_prefix("processed"),
    );
    let lines: Vec<ProgressBar> = workers
        .iter()
        .map(|w| multi.add(ProgressBar::new_spinner().with_prefix(w.name.clone())))
        .collect();
    for l in &lines {
        l.set_style(ProgressStyle::with_template("{prefix:>12} {msg}").expect("valid template"));
    }

    let watermarks = WatermarkReader::new(&bootstrap)?;
    let start = Instant::now();
    let mut killed = false;
    let mut last_line = Instant::now();
    let generator_done = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let produced = watermarks.input_end();
        produced_bar.set_position(produced.min(opts.records));
        let processed = watermarks.processed();
        processed_bar.set_position(processed.min(opts.records));
        for (w, line) in workers.iter_mut().zip(&lines) {
            if !w.alive {
                line.set_message("killed (SIGKILL)");
                continue;
            }
            match w.tasks() {
                Some((running, restoring)) => {
                    let total = running + restoring;
                    if w.last_tasks.is_some_and(|n| n != total) {
                        event(
                            &multi,
                            format!(
                                "rebalance: {} now owns {total} partition(s) (was {})",
                                w.name,
                                w.last_tasks.unwrap_or(0)
                            ),
                        );
                    }
                    w.last_tasks = Some(total);
                    line.set_message(format!("{running} task(s) running, {restoring} restoring"));
                }
                None => line.set_message("starting"),
            }
        }
        if multi.is_hidden() && last_line.elapsed() >= Duration::from_secs(2) {
            last_line = Instant::now();
            let workers_line: Vec<String> = workers
                .iter()
                .zip(&lines)
                .map(|(w, l)| format!("{}: {}", w.name, l.message()))
                .collect();
            println!(
                "generated {produced}, processed {processed} | {}",
                workers_line.join(" | ")
            );
        }
        if !killed && produced >= opts.records / 2 {
            let victim = &mut workers[1];
            let _ = victim.child.kill();
            let _ = victim.child.wait();
            victim.alive = false;
            killed = true;
            event(
                &multi,
                format!(
                    "killed {} with SIGKILL after {produced} records; the others take over after the {} s session timeout",
                    victim.name,
                    SESSION_TIMEOUT_MS / 1000
                ),
            );
        }
        if generator.is_finished() {
            break generator.await.map_err(setup("generator task"))?;
        }
        if start.elapsed() > Duration::from_secs(600) {
            cancel.cancel();
        }
    };
    let report = generator_done.map_err(Box::new)?;
    produced_bar.finish();
    event(
        &multi,
        format!(
            "generated {} records over {} keys",
            report.records,
            report.totals.len()
        ),
    );

    // Wait until the survivors have processed everything (their committed offsets reach the end
    // of the input), then stop them cleanly.
    let deadline = Instant::now() + Duration::from_secs(120);
    while watermarks.processed() < report.records && Instant::now() < deadline {
        processed_bar.set_position(watermarks.processed().min(opts.records));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    processed_bar.finish();
    for l in &lines {
        l.finish();
    }
    let mut clean = true;
    for w in workers.iter_mut().filter(|w| w.alive) {
        match w.terminate() {
            Some(s) if s.success() => println!("{} stopped cleanly (SIGTERM, exit 0)", w.name),
            other => {
                clean = false;
                println!("{} did not stop cleanly: {other:?}", w.name);
            }
        }
    }

    let values = tokio::task::spawn_blocking(move || {
        tributary::kafka::reader::last_values(&bootstrap, OUTPUT, Duration::from_secs(1))
    })
    .await
    .map_err(setup("reader task"))??;
    let verdict = compare(&report.totals, &values);
    println!();
    println!(
        "{:<12} {:>8} {:>12} {:>16} {:>16}",
        "key", "count", "total", "expected count", "expected total"
    );
    for (key, want) in report.totals.iter().take(8) {
        let got: serde_json::Value = values
            .get(key.as_bytes())
            .and_then(|v| serde_json::from_slice(v).ok())
            .unwrap_or_default();
        println!(
            "{key:<12} {:>8} {:>12} {:>16} {:>16}",
            got["count"].to_string(),
            got["total"].to_string(),
            want.count,
            want.sum
        );
    }
    println!("...");
    println!(
        "{} keys: {} exact, {} over-counted, {} under-counted, {} missing",
        report.totals.len(),
        verdict.exact,
        verdict.over.len(),
        verdict.under.len(),
        verdict.missing.len()
    );
    for line in verdict.over.iter().chain(&verdict.under).take(10) {
        println!("  {line}");
    }
    // The demo runs at least once: records the killed worker processed after its last commit
    // are processed again by their new owner, so keys may be over-counted by that much. Lost
    // records (under-counted or missing keys) are the failure.
    let ok = clean && verdict.under.is_empty() && verdict.missing.is_empty();
    let outcome = match (ok, verdict.duplicates) {
        (false, _) => "TOTALS DO NOT MATCH: records were lost".to_string(),
        (true, 0) => "totals match: nothing lost, nothing counted twice".to_string(),
        (true, n) => format!(
            "nothing lost; {n} records counted twice, allowed under at_least_once (the killed \
             worker's records after its last commit were processed again by their new owner)"
        ),
    };
    println!("{outcome}");
    drop(cluster);
    Ok(ok)
}

/// Reads input end offsets and the group's committed offsets, for progress.
struct WatermarkReader(GroupProgress);

impl WatermarkReader {
    fn new(bootstrap: &str) -> Result<Self, DemoError> {
        let progress =
            GroupProgress::new(bootstrap, APP).map_err(setup("creating the progress consumer"))?;
        Ok(Self(progress))
    }

    /// Records written to the input.
    fn input_end(&self) -> u64 {
        self.0.end_offsets(INPUT, PARTITIONS)
    }

    /// Sum of the group's committed input offsets.
    fn processed(&self) -> u64 {
        self.0.committed(INPUT, PARTITIONS)
    }
}
