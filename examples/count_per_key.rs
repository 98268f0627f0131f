//! A user-written processor run with the library API: counts records per key, keeps the counts
//! in a state store (RocksDB, backed by a changelog topic) and writes every new count to an
//! output topic.
//!
//! ```text
//! cargo run --example count_per_key -- config/example.toml
//! ```
//!
//! The config file is the worker's usual TOML (see README.md, "Configuration walkthrough");
//! several files may be given, later ones overriding earlier ones, and
//! `TRIBUTARY_<SECTION>__<KEY>` variables override both. The processor reads `[[pipeline]]` number 0 for its topics: the source topics
//! (`source.topics`) and the output topic (`sink.topic`, default `<app.id>-counts`). With
//! `bootstrap_servers = "embedded"` the worker starts an in-process cluster and creates the
//! topics, so the example runs without a broker; the log line "embedded Kafka cluster at
//! <address>" gives its address, to feed it with
//! `tributary generate --brokers <address> --topic <source topic> --records 1000`.
//!
//! SIGINT (Ctrl-C) or SIGTERM finishes the record at hand, commits and leaves the group; the
//! example then exits 0.

use std::path::PathBuf;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use tributary::types::OutputRecord;
use tributary::{Context, ProcessError, Processor, Record, Topology, Worker};

/// The store holding the count of each key.
const STORE: &str = "counts";

/// Counts records per key and sends `key → count` (the count as decimal text) to `output`.
struct CountPerKey {
    output: String,
}

impl Processor for CountPerKey {
    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        // A record without a key is the record's fault: `processing.on_error` decides what
        // happens to it (fail, skip or dead-letter).
        let key = record
            .key
            .ok_or_else(|| ProcessError::record("count", "record has no key"))?;
        let mut store = ctx.store::<u64>(STORE)?;
        let count = store.get(key)?.unwrap_or(0) + 1;
        store.put(key, &count)?;
        ctx.send(OutputRecord::new(
            self.output.clone(),
            Some(key.to_vec()),
            Some(count.to_string().into_bytes()),
        ));
        Ok(())
    }
}

/// A token cancelled on the first SIGINT or SIGTERM.
fn cancel_on_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        }
        t.cancel();
    });
    Ok(token)
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,librdkafka=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let files: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if files.is_empty() {
        eprintln!("usage: count_per_key CONFIG.toml [MORE.toml ...]");
        return ExitCode::from(2);
    }
    let config = match Worker::load_config(&files) {
        Ok(config) => config,
        Err(issues) => {
            for issue in issues {
                eprintln!("{issue}");
            }
            return ExitCode::from(2);
        }
    };

    // The topics come from the first [[pipeline]] table; its steps, if any, are not used.
    let Some(pipeline) = config.pipelines.first() else {
        eprintln!("pipeline: add a [[pipeline]] table naming the source topics");
        return ExitCode::from(2);
    };
    let sources = pipeline.source.topics.clone();
    let output = pipeline
        .sink
        .as_ref()
        .map(|s| s.topic.clone())
        .unwrap_or_else(|| format!("{}-counts", config.app.id));

    let topology = {
        let output = output.clone();
        Topology::new("count", sources, move |_task| CountPerKey {
            output: output.clone(),
        })
    }
    .store(STORE)
    .sink(output);
    let worker = match Worker::builder(config).topology(topology).build() {
        Ok(worker) => worker,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = match cancel_on_signals() {
        Ok(token) => token,
        Err(e) => {
            eprintln!("installing signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    match worker.run(shutdown).await {
        Ok(()) => {
            tracing::info!("stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
