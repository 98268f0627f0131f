//! # Tributary
//!
//! A stateful stream processor for Kafka. Workers join a consumer group, so topic partitions
//! are the unit of distribution; each assigned partition becomes a *task* that processes its
//! records with a local RocksDB state store backed by a changelog topic; input offsets are
//! committed as checkpoints only once the state and output they imply are durable in Kafka;
//! and when members join, leave or die, the group rebalances and tasks move, restoring their
//! state from the changelog.
//!
//! ## Using it as a library
//!
//! Write a [`Processor`], declare its stores on a [`Topology`], and run a [`Worker`] until a
//! shutdown token fires:
//!
//! ```no_run
//! use tributary::{Context, ProcessError, Processor, Record, Topology, Worker};
//! use tributary::types::OutputRecord;
//! use tokio_util::sync::CancellationToken;
//!
//! /// Counts records per key and writes the running count to `counts`.
//! struct CountPerKey;
//!
//! impl Processor for CountPerKey {
//!     fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
//!         let key = record.key.ok_or_else(|| ProcessError::record("count", "record has no key"))?;
//!         let mut store = ctx.store::<u64>("counts")?;
//!         let count = store.get(key)?.unwrap_or(0) + 1;
//!         store.put(key, &count)?;
//!         ctx.send(OutputRecord::new("counts", Some(key.to_vec()), Some(count.to_string().into_bytes())));
//!         Ok(())
//!     }
//! }
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! // Every problem at once, each with its key path (what `tributary validate` prints).
//! let config = Worker::load_config(&["app.toml".into()]).map_err(|issues| format!("{issues:?}"))?;
//! let worker = Worker::builder(config)
//!     .topology(Topology::new("count", ["clicks"], |_task| CountPerKey).store("counts").sink("counts"))
//!     .build()?;
//! let shutdown = CancellationToken::new();
//! // Cancel `shutdown` (on SIGTERM, say) to finish in-flight records, commit and leave the group.
//! worker.run(shutdown).await?;
//! # Ok(())
//! # }
//! ```
//!
//! `examples/count_per_key.rs` is a runnable version.
//!
//! A processor that needs time to pass without records (to close windows, expire entries,
//! flush buffers) asks for timers in [`Processor::init`] with [`Context::schedule`], by the
//! wall clock or by stream time ([`Punctuation`]), and gets [`Processor::punctuate`] calls on
//! its task's processing thread; see [`processor`] for stream time and
//! `processing.idle_advance_ms`.
//!
//! ## Layout
//!
//! Data flows one way: member → task → processor → collector → commit.
//!
//! The public modules are the library's API:
//!
//! - [`config`]: the TOML configuration, loaded in layers and validated with key paths.
//! - [`worker`]: [`Worker`] prepares topics, serves HTTP, runs `app.threads` members.
//! - [`processor`]: what a topology is made of ([`Processor`], [`Context`], [`Topology`], the
//!   typed [`processor::Store`]); [`types`]: the records in and out.
//! - [`pipeline`]: `[[pipeline]]` configs compiled into topologies: CEL steps, windows,
//!   formats, partitioners ([`pipeline::partitioner::partition_for_key`] is Kafka's default).
//! - [`testkit`]: runs topologies without a broker, for tests (like Kafka Streams'
//!   `TopologyTestDriver`).
//! - [`metrics`], [`status`]: what a running worker reports (`/metrics`, `/tasks`, `/ready`);
//!   [`cluster`]: who runs what in the group, as every worker sees it.
//! - [`kafka`]: the errors of the Kafka layer, and plain Kafka access for tools and tests (the
//!   embedded cluster, reading a topic, the worker's client settings).
//! - [`avro`]: the Avro record format, plain or in the Confluent Schema Registry wire format:
//!   the codec of `format = "avro"`, which `tributary generate --format avro` writes with.
//!
//! The rest is internal (each module's docs are in the source):
//!
//! - `kafka::member` (`src/kafka/member/`): a group member's loop, rebalance handling, commits
//!   and restores; `kafka::collector` the producer with acknowledgement tracking;
//!   `kafka::restore` the changelog reader; `kafka::standby` the standby replicas, which tail
//!   changelogs into warm copies of other workers' tasks, where `placement` puts them;
//!   `kafka::admin` topic creation; `kafka::properties` the checks of `[kafka.properties]`. No
//!   rdkafka type leaves `kafka`.
//! - `task`: one partition's processor, stores, queue and offsets; `timers` its stream time,
//!   timers and idle advance.
//! - `state`: RocksDB per task, the write-back cache and typed stores; no Kafka types.
//! - `http`: `/health`, `/ready`, `/metrics`, `/tasks`, `/state` (any worker answers for any
//!   key, forwarding to the owner) and `/cluster`; `kafka::group` reads the group's members
//!   and assignments for it.
//! - `validate`: the checks of expressions, partitioners and properties that loading a config
//!   borrows from `pipeline` and `kafka` (the config module imports neither).
//!
//! The command line (`src/main.rs`, with `generate`, `demo` and `top` in `src/cli/`) is built
//! on this library; the records `generate` writes are the `tributary-generator` crate (`generator/`),
//! which the benchmarks share.
//!
//! ## Guarantees (at least once)
//!
//! A commit runs every `processing.commit_interval_ms`, when a cache is full, on revoke and
//! on shutdown: flush the caches into the changelogs, wait until every produced record (output
//! and changelog) is acknowledged, commit the input offsets, then write the state batch with
//! the acknowledged changelog offsets into RocksDB. A crash at any point loses nothing; records
//! after the last commit are processed again.

pub mod avro;
pub mod cluster;
pub mod config;
pub(crate) mod http;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub(crate) mod placement;
pub mod processor;
pub(crate) mod state;
pub mod status;
pub(crate) mod task;
pub mod testkit;
pub(crate) mod timers;
pub mod types;
mod validate;
pub mod worker;

pub use processor::{Context, ProcessError, Processor, Punctuation, TaskInfo, Topology};
pub use types::Record;
pub use worker::{Worker, WorkerBuilder, WorkerError};

/// The pipeline reference (docs/pipelines.md), compiled here so that its Rust example is
/// tested with the crate's doctests.
#[doc = include_str!("../docs/pipelines.md")]
#[cfg(doctest)]
pub struct PipelineReference;
