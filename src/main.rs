//! The `tributary` command line: `run`, `validate`, `generate`, `demo`, `top`.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tributary::config::{self, ConfigIssue};
use tributary::{Worker, WorkerError};
use tributary_generator::KeyDistribution;

use crate::cli::demo::{self, DemoOptions};
use crate::cli::generate::{self, GenerateOptions, TemplateOptions, ValueFormat};
use crate::cli::top::{self, TopOptions};

/// The worker allocates and frees small values per record on several processing threads;
/// jemalloc's per-thread caches make that markedly cheaper than the system allocator (see
/// BENCHMARKS.md). It also serves librdkafka and RocksDB (Cargo.toml says why). The library
/// leaves the choice of allocator to the application.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts: freed pages go back to the system after a second
/// instead of ten, without the intermediate "muzzy" stage, so that a worker's resident memory
/// follows what it holds rather than its busiest moment (a worker processing 1M new keys peaked
/// at 147-160 MiB instead of 165-232; BENCHMARKS.md). `MALLOC_CONF` in the environment still
/// overrides them.
#[cfg(not(target_env = "msvc"))]
#[export_name = "malloc_conf"]
static MALLOC_CONF: &[u8; 37] = b"dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Exit code for configuration problems (README.md, "Configuration walkthrough").
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "tributary",
    version,
    about = "A stateful stream processor for Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a worker until SIGINT/SIGTERM.
    Run {
        /// Config file; repeat to layer files (later ones override earlier ones).
        #[arg(short = 'c', long = "config", required = true)]
        config: Vec<PathBuf>,
    },
    /// Check a config without touching Kafka.
    Validate {
        /// Config file; repeat to layer files.
        #[arg(short = 'c', long = "config", required = true)]
        config: Vec<PathBuf>,
    },
    /// Write synthetic JSON records {"user","amount","ts"} keyed by user, or records of a
    /// template's shape (--template, docs/generate.md).
    Generate {
        /// Bootstrap servers.
        #[arg(long)]
        brokers: String,
        /// Topic to write to.
        #[arg(long)]
        topic: String,
        /// Number of records.
        #[arg(long)]
        records: u64,
        /// Records per second (default: as fast as the broker takes them).
        #[arg(long)]
        rate: Option<u64>,
        /// Number of distinct keys.
        #[arg(long, default_value_t = 1000, conflicts_with = "template")]
        keys: u64,
        /// Create the topic with this many partitions if it is missing.
        #[arg(long)]
        partitions: Option<i32>,
        /// Key choice: `uniform` or `zipf:<exponent>` (e.g. zipf:1.1).
        #[arg(long, default_value = "uniform", conflicts_with = "template")]
        distribution: String,
        /// Random seed (same seed, same records).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// A JSON template of typed random fields: each record is one of its values, keyed
        /// by its `key` field (docs/generate.md). Keys and distributions are set per field.
        #[arg(long, value_name = "FILE")]
        template: Option<PathBuf>,
        /// How template records are written: `json` or `avro` (the template's schema).
        #[arg(long, value_enum, default_value_t = FormatArg::Json, requires = "template")]
        format: FormatArg,
        /// With --format avro: register the schema under `<topic>-value` in this schema
        /// registry and write the Confluent wire format (magic byte, schema id, datum).
        #[arg(long, value_name = "URL", requires = "template")]
        schema_registry: Option<String>,
        /// With --format avro: also write the Avro schema the records are written with to
        /// FILE (for a pipeline's `source.schema`).
        #[arg(long, value_name = "FILE", requires = "template")]
        schema_out: Option<PathBuf>,
    },
    /// Run the whole system on an embedded Kafka cluster, kill a member mid-way, check totals.
    Demo {
        /// Records to generate.
        #[arg(long, default_value_t = 200_000)]
        records: u64,
        /// Distinct keys.
        #[arg(long, default_value_t = 1000)]
        keys: u64,
    },
    /// A live view of a whole group from any worker's HTTP address: workers, their tasks,
    /// records/s, lag, restores, dead letters. `q` quits.
    Top {
        /// A worker's HTTP address (its `http.listen`, or `http.advertised`).
        #[arg(long, default_value = "127.0.0.1:9464")]
        http: String,
        /// Time between refreshes, in milliseconds.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..))]
        interval_ms: u64,
    },
}

/// `generate --format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum FormatArg {
    Json,
    Avro,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,librdkafka=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Loads and fully checks a config: every problem, with its key path.
fn load_checked(files: &[PathBuf]) -> Result<config::Config, Vec<ConfigIssue>> {
    let cfg = Worker::load_config(files)?;
    match Worker::builder(cfg.clone())
        .pipelines_from_config()
        .and_then(|b| b.build())
    {
        Ok(_) => Ok(cfg),
        Err(WorkerError::Config(issues)) => Err(issues),
        Err(other) => Err(vec![ConfigIssue {
            path: "pipeline".into(),
            message: other.to_string(),
        }]),
    }
}

fn report_issues(issues: &[ConfigIssue]) -> ExitCode {
    for issue in issues {
        eprintln!("{issue}");
    }
    ExitCode::from(EXIT_CONFIG)
}

/// A token cancelled on SIGINT or SIGTERM.
fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        }
        t.cancel();
    });
    Ok(token)
}

async fn run(files: Vec<PathBuf>) -> anyhow::Result<ExitCode> {
    let cfg = match load_checked(&files) {
        Ok(cfg) => cfg,
        Err(issues) => return Ok(report_issues(&issues)),
    };
    let worker = match Worker::builder(cfg)
        .pipelines_from_config()
        .and_then(|b| b.build())
    {
        Ok(w) => w,
        Err(WorkerError::Config(issues)) => return Ok(report_issues(&issues)),
        Err(e) => return Err(e.into()),
    };
    let shutdown = shutdown_on_signals()?;
    match worker.run(shutdown).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(WorkerError::Config(issues)) => Ok(report_issues(&issues)),
        Err(e) => Err(e.into()),
    }
}

fn parse_distribution(s: &str) -> anyhow::Result<KeyDistribution> {
    s.parse::<KeyDistribution>()
        .map_err(|e| anyhow::anyhow!("--distribution: {e}"))
}

async fn main_async(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => run(config).await,
        Command::Validate { config } => match load_checked(&config) {
            Ok(cfg) => {
                for warning in &cfg.warnings {
                    eprintln!("warning: {warning}");
                }
                println!("ok");
                Ok(ExitCode::SUCCESS)
            }
            Err(issues) => Ok(report_issues(&issues)),
        },
        Command::Generate {
            brokers,
            topic,
            records,
            rate,
            keys,
            partitions,
            distribution,
            seed,
            quiet,
            template,
            format,
            schema_registry,
            schema_out,
        } => {
            let template = match template {
                None => None,
                Some(path) => Some(TemplateOptions {
                    format: match format {
                        FormatArg::Json => ValueFormat::Json,
                        FormatArg::Avro => ValueFormat::Avro,
                    },
                    schema_registry,
                    schema_out,
                    ..TemplateOptions::load(&path)?
                }),
            };
            let opts = GenerateOptions {
                brokers,
                topic,
                records,
                rate,
                keys,
                partitions,
                distribution: parse_distribution(&distribution)?,
                seed,
                progress: !quiet,
                producer_properties: Vec::new(),
                template,
            };
            let shutdown = shutdown_on_signals()?;
            let wanted = opts.records;
            let report = generate::generate(opts, shutdown).await?;
            eprintln!(
                "wrote {} records in {:.1}s ({:.0} records/s)",
                report.records,
                report.elapsed.as_secs_f64(),
                report.rate()
            );
            if report.records < wanted {
                eprintln!(
                    "interrupted: {} of {wanted} records acknowledged",
                    report.records
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Top { http, interval_ms } => {
            let opts = TopOptions {
                http,
                interval: std::time::Duration::from_millis(interval_ms),
            };
            // The terminal loop blocks: it runs off the runtime's worker threads.
            tokio::task::spawn_blocking(move || top::run(opts))
                .await
                .context("the top view panicked")??;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { records, keys } => {
            let ok = demo::run(DemoOptions { records, keys }).await?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main_async(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// `e` and its causes on one line, each cause once: many errors here (and librdkafka's) already
/// say their cause in their own message, which the chain would repeat.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[derive(Debug, thiserror::Error)]
    #[error("reading metadata of topic \"nope\": {0}")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("Meta data fetch error: BrokerTransportFailure")]
    struct Inner;

    /// A cause that the message already says is not said again; one it does not is.
    #[test]
    fn each_cause_is_said_once() {
        let e = anyhow::Error::new(Outer(Inner));
        assert_eq!(
            one_line(&e),
            "reading metadata of topic \"nope\": Meta data fetch error: BrokerTransportFailure"
        );
        let e = anyhow::Error::new(Inner).context("starting");
        assert_eq!(
            one_line(&e),
            "starting: Meta data fetch error: BrokerTransportFailure"
        );
    }
}
