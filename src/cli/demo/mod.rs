//! `tributary demo`: the whole system on an embedded Kafka cluster.
//!
//! Starts librdkafka's in-process mock cluster, three workers (real child processes of this
//! binary, `tributary run`, each with its own state directory and HTTP port), and the data
//! generator. Half-way through it kills one worker with SIGKILL; the others take its partitions
//! after the session timeout and restore its state from the changelog, and the progress lines
//! say so as it happens (`progress`). At the end it stops the survivors, reads the sink topic
//! and checks every key's final count and sum against what was generated (`verdict`).
//!
//! Nothing may print after the verdict: every worker is stopped and every client of this
//! process is closed before the embedded cluster goes (a client outliving it logs its lost
//! connections), and the report is printed only once the cluster is gone.

mod progress;
mod verdict;
mod worker;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;
use tributary::kafka::embedded::EmbeddedCluster;
use tributary::kafka::tools::GroupProgress;
use tributary::kafka::ClientError;
use tributary_generator::KeyDistribution;

use super::generate::{generate, GenerateError, GenerateOptions};
use progress::{Sample, Tracker, WorkerState};
use verdict::Verdict;
use worker::DemoWorker;

const INPUT: &str = "clicks";
const OUTPUT: &str = "clicks-totals";
const APP: &str = "demo";
const PARTITIONS: i32 = 6;
const WORKERS: usize = 3;
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// How long the survivors get to process every record once the generator is done.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a worker gets to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Between two reads of the group.
const TICK: Duration = Duration::from_millis(500);
/// Between two status lines when the progress bars are hidden (no terminal).
const STATUS_EVERY: Duration = Duration::from_secs(2);

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

fn config_text(bootstrap: &str) -> String {
    let session_timeout_ms = SESSION_TIMEOUT.as_millis();
    format!(
        r#"[app]
id = "{APP}"

[kafka]
bootstrap_servers = "{bootstrap}"

[group]
session_timeout_ms = {session_timeout_ms}

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
fn event(multi: &MultiProgress, line: impl Into<String>) {
    let line = line.into();
    if multi.is_hidden() {
        println!("{line}");
    } else {
        multi.println(line).ok();
    }
}

/// What the demo found, printed once the cluster is gone.
struct Outcome {
    /// The results table and the summary of the comparison.
    report: Vec<String>,
    verdict: Verdict,
    /// Workers that did not stop cleanly on SIGTERM.
    unclean: Vec<String>,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.verdict.nothing_lost() && self.unclean.is_empty()
    }
}

/// Runs the demo; `Ok(true)` when no record was lost and the survivors stopped cleanly: every
/// key's final totals are at least the generated ones (at least once: a key may be
/// over-counted, and the demo reports by how much). The verdict is the last line printed.
pub async fn run(opts: DemoOptions) -> Result<bool, DemoError> {
    let dir = std::env::temp_dir().join(format!("tributary-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(setup("creating the demo directory"))?;
    match run_in(&dir, &opts).await {
        Ok(outcome) => {
            println!();
            for line in &outcome.report {
                println!("{line}");
            }
            let ok = outcome.ok();
            if ok {
                let _ = std::fs::remove_dir_all(&dir);
            } else {
                println!("worker logs kept in {}", dir.display());
            }
            println!("{}", outcome.verdict.conclusion(&outcome.unclean));
            Ok(ok)
        }
        Err(e) => {
            eprintln!("worker logs kept in {}", dir.display());
            Err(e)
        }
    }
}

/// Starts the cluster and the workers, runs the demo, and stops everything, the cluster last.
async fn run_in(dir: &Path, opts: &DemoOptions) -> Result<Outcome, DemoError> {
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
    let outcome = drive(&bootstrap, opts, &mut workers).await;
    // Workers still running (after a failure) are killed before the cluster goes; the demo's
    // own clients were closed inside `drive`.
    drop(workers);
    drop(cluster);
    outcome
}

/// The progress display: bars on a terminal, plain lines otherwise.
struct Display {
    multi: MultiProgress,
    generated: ProgressBar,
    processed: ProgressBar,
    group: ProgressBar,
    workers: Vec<ProgressBar>,
    last_status: Option<Instant>,
}

impl Display {
    fn new(records: u64, workers: &[DemoWorker]) -> Self {
        let multi = MultiProgress::new();
        let bar = ProgressStyle::with_template("{prefix:>12} [{bar:40}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> ");
        let text = ProgressStyle::with_template("{prefix:>12} {msg}").expect("valid template");
        let add_bar = |prefix: &str| {
            multi.add(
                ProgressBar::new(records)
                    .with_style(bar.clone())
                    .with_prefix(prefix.to_string()),
            )
        };
        let generated = add_bar("generated");
        let processed = add_bar("processed");
        let add_text = |prefix: &str| {
            multi.add(
                ProgressBar::new_spinner()
                    .with_style(text.clone())
                    .with_prefix(prefix.to_string()),
            )
        };
        let group = add_text("group");
        let workers = workers.iter().map(|w| add_text(&w.name)).collect();
        Self {
            multi,
            generated,
            processed,
            group,
            workers,
            last_status: None,
        }
    }

    fn show(&mut self, generated: u64, tracker: &Tracker, names: &[String]) {
        let max = self.generated.length().unwrap_or(u64::MAX);
        self.generated.set_position(generated.min(max));
        self.processed.set_position(tracker.processed().min(max));
        self.group.set_message(tracker.group_line());
        for (bar, name) in self.workers.iter().zip(names) {
            bar.set_message(tracker.worker_line(name));
        }
        if self.multi.is_hidden() && self.last_status.is_none_or(|t| t.elapsed() >= STATUS_EVERY) {
            self.last_status = Some(Instant::now());
            let workers: Vec<String> = names
                .iter()
                .map(|n| format!("{n}: {}", tracker.worker_line(n)))
                .collect();
            println!(
                "generated {generated}, processed {} | {} | {}",
                tracker.processed(),
                tracker.group_line(),
                workers.join(" | ")
            );
        }
    }

    fn finish(&self) {
        self.generated.finish();
        self.processed.finish();
        self.group.finish();
        for w in &self.workers {
            w.finish();
        }
    }
}

/// Generates, kills a worker half-way, waits until the survivors processed everything, stops
/// them and compares the sink with what was generated. Every client it creates is closed when
/// it returns.
async fn drive(
    bootstrap: &str,
    opts: &DemoOptions,
    workers: &mut [DemoWorker],
) -> Result<Outcome, DemoError> {
    let rate = (opts.records / 20).max(1000);
    let mut gen = GenerateOptions::new(bootstrap, INPUT, opts.records);
    gen.keys = opts.keys;
    gen.rate = Some(rate);
    gen.distribution = KeyDistribution::Uniform;
    gen.progress = false;
    let cancel = CancellationToken::new();
    let mut generator = tokio::spawn(generate(gen, cancel.clone()));

    let names: Vec<String> = workers.iter().map(|w| w.name.clone()).collect();
    let mut display = Display::new(opts.records, workers);
    let offsets = OffsetReader::new(bootstrap)?;
    let mut tracker = Tracker::new(INPUT, PARTITIONS, SESSION_TIMEOUT);
    let start = Instant::now();
    let mut killed = false;
    let mut generated = None;
    let mut drain_deadline = start + Duration::from_secs(600);
    loop {
        tokio::time::sleep(TICK).await;
        let produced = offsets.input_end();
        let committed = offsets.committed();
        let committed_sum: u64 = committed.iter().flatten().sum();
        let sample = Sample {
            at: Instant::now(),
            committed,
            workers: workers
                .iter()
                .map(|w| {
                    let state = if !w.alive {
                        WorkerState::Killed
                    } else {
                        w.read(INPUT).map_or(WorkerState::Starting, WorkerState::Up)
                    };
                    (w.name.clone(), state)
                })
                .collect(),
        };
        for line in tracker.update(sample) {
            event(&display.multi, line);
        }
        display.show(produced, &tracker, &names);
        // Half-way, once the group has settled (every partition owned and running), so that
        // the victim has partitions to hand over.
        if !killed && produced >= opts.records / 2 && tracker.settled() {
            let victim = &mut workers[1];
            victim.kill();
            killed = true;
            let line = tracker.killed(&victim.name, Instant::now(), produced);
            event(&display.multi, line);
        }
        if generated.is_none() && generator.is_finished() {
            let report = (&mut generator)
                .await
                .map_err(setup("generator task"))?
                .map_err(Box::new)?;
            display.generated.finish();
            event(
                &display.multi,
                format!(
                    "all {} records generated, over {} keys; waiting until the workers have \
                     processed and committed them all",
                    report.records,
                    report.totals.len()
                ),
            );
            drain_deadline = Instant::now() + DRAIN_TIMEOUT;
            generated = Some(report);
        }
        if let Some(report) = &generated {
            if committed_sum >= report.records && tracker.takeover_complete() {
                break;
            }
            if Instant::now() >= drain_deadline {
                event(
                    &display.multi,
                    format!(
                        "the workers did not commit every record within {} s",
                        DRAIN_TIMEOUT.as_secs()
                    ),
                );
                break;
            }
        } else if start.elapsed() > Duration::from_secs(600) {
            cancel.cancel();
        }
    }
    let report = generated.expect("invariant: the loop ends after the generator");
    display.finish();

    // Stop the survivors cleanly: all at once, then wait for each.
    for w in workers.iter().filter(|w| w.alive) {
        w.terminate();
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    let mut unclean = Vec::new();
    for w in workers.iter_mut().filter(|w| w.alive) {
        match w.wait_exit(deadline) {
            Some(s) if s.success() => println!("{} stopped cleanly (SIGTERM, exit 0)", w.name),
            other => {
                println!("{} did not stop cleanly: {other:?}", w.name);
                unclean.push(w.name.clone());
            }
        }
    }
    drop(offsets);

    let values = tokio::task::spawn_blocking({
        let bootstrap = bootstrap.to_string();
        move || tributary::kafka::reader::last_values(&bootstrap, OUTPUT, Duration::from_secs(1))
    })
    .await
    .map_err(setup("reader task"))??;
    let verdict = verdict::compare(&report.totals, &values);

    let mut lines = vec![format!(
        "{:<12} {:>8} {:>12} {:>16} {:>16}",
        "key", "count", "total", "expected count", "expected total"
    )];
    for (key, want) in report.totals.iter().take(8) {
        let got: serde_json::Value = values
            .get(key.as_bytes())
            .and_then(|v| serde_json::from_slice(v).ok())
            .unwrap_or_default();
        lines.push(format!(
            "{key:<12} {:>8} {:>12} {:>16} {:>16}",
            got["count"].to_string(),
            got["total"].to_string(),
            want.count,
            want.sum
        ));
    }
    lines.push("...".to_string());
    lines.push(verdict.summary());
    for line in verdict
        .over
        .iter()
        .chain(&verdict.under)
        .chain(&verdict.missing)
        .take(10)
    {
        lines.push(format!("  {line}"));
    }
    Ok(Outcome {
        report: lines,
        verdict,
        unclean,
    })
}

/// Reads the input's end offsets and the group's committed offsets.
struct OffsetReader(GroupProgress);

impl OffsetReader {
    fn new(bootstrap: &str) -> Result<Self, DemoError> {
        let progress =
            GroupProgress::new(bootstrap, APP).map_err(setup("creating the progress consumer"))?;
        Ok(Self(progress))
    }

    /// Records written to the input.
    fn input_end(&self) -> u64 {
        self.0.end_offsets(INPUT, PARTITIONS)
    }

    /// The group's committed input offset per partition, if they can be read.
    fn committed(&self) -> Option<Vec<u64>> {
        self.0.committed_by_partition(INPUT, PARTITIONS)
    }
}
