//! Fast end-to-end tests of the library on librdkafka's in-process mock cluster.
//!
//! Each test starts its own [`EmbeddedCluster`], creates every topic the worker needs (input,
//! sink, changelog `<app.id>-<store>-changelog`, dead-letter topic): the mock cluster does not
//! implement CreateTopics, and a worker given a real bootstrap address only checks that topics
//! exist. It then runs a [`Worker`] in-process, produces input with an rdkafka producer, reads
//! the output with an assign-mode consumer and asserts exact results.
//!
//! The mock cluster keeps only a few MiB per partition, so the data sets are small.
//!
//! Logs: `RUST_LOG=tributary=debug cargo test -p tributary --test mock_cluster -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tributary::config::Config;
use tributary::kafka::embedded::EmbeddedCluster;
use tributary::metrics::Metrics;
use tributary::status::StatusBoard;
use tributary::types::OutputRecord;
use tributary::{Context, ProcessError, Processor, Record, Topology, Worker, WorkerError};

/// How long any one wait for the worker may take before the test fails.
const WAIT: Duration = Duration::from_secs(60);

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Runs blocking client calls (consumers, `thread::sleep`) without stalling the runtime.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

// ---------------------------------------------------------------------------------------------
// Cluster, configuration, worker
// ---------------------------------------------------------------------------------------------

/// Starts a one-broker mock cluster with `topics` (name, partitions). Bind it first in a test,
/// so it is dropped last, after the clients that talk to it.
fn cluster(topics: &[(&str, i32)]) -> EmbeddedCluster {
    let cluster = EmbeddedCluster::start(1).expect("mock cluster starts");
    for (name, partitions) in topics {
        cluster
            .create_topic(name, *partitions)
            .unwrap_or_else(|e| panic!("creating {name}: {e}"));
    }
    cluster
}

/// The parts of a worker configuration that differ between tests.
struct Settings<'a> {
    app: &'a str,
    threads: usize,
    /// Extra lines of `[processing]` (besides `commit_interval_ms`).
    processing: &'a str,
    /// The `[[pipeline]]` table(s). A config needs one even when the worker runs a library
    /// topology only (which ignores it).
    pipeline: &'a str,
}

/// Writes the TOML of `s` to a file in `dir` and loads it as a user would.
fn load_config(dir: &Path, bootstrap: &str, state_dir: &Path, s: &Settings<'_>) -> Config {
    let toml = format!(
        r#"
[app]
id = "{app}"
threads = {threads}

[kafka]
bootstrap_servers = "{bootstrap}"

[group]
session_timeout_ms = 6000

[processing]
commit_interval_ms = 100
{processing}

[state]
dir = {state}

[http]
listen = "off"

{pipeline}
"#,
        app = s.app,
        threads = s.threads,
        processing = s.processing,
        state = toml_string(&state_dir.display().to_string()),
        pipeline = s.pipeline,
    );
    let path: PathBuf = dir.join(format!("{}.toml", s.app));
    std::fs::write(&path, toml).expect("writing the config");
    tributary::config::load_with_env(&[path], std::iter::empty())
        .unwrap_or_else(|issues| panic!("config does not load: {issues:#?}"))
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A worker running on the test's runtime.
struct Running {
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), WorkerError>>,
    status: Arc<StatusBoard>,
    metrics: Metrics,
}

impl Running {
    fn start(worker: Worker) -> Self {
        let status = worker.status();
        let metrics = worker.metrics().clone();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(worker.run(shutdown.clone()));
        Self {
            shutdown,
            handle,
            status,
            metrics,
        }
    }

    /// Panics with the worker's result if it stopped although nobody asked it to.
    async fn check_alive(&mut self) {
        if self.handle.is_finished() {
            let result = (&mut self.handle).await.expect("worker task panicked");
            panic!("the worker stopped on its own: {result:?}");
        }
    }

    /// Waits until `done` holds (checked every 100 ms), failing if the worker stops first.
    async fn wait_until(&mut self, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            self.check_alive().await;
            if blocking(|| done(self)) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Cancels the token and returns what `run` returned.
    async fn stop(self) -> Result<(), WorkerError> {
        self.shutdown.cancel();
        self.join().await
    }

    /// Waits for `run` to return by itself.
    async fn join(self) -> Result<(), WorkerError> {
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("the worker stops in time")
            .expect("worker task panicked")
    }
}

/// Sum of every sample of a metric (all label sets) in Prometheus text; 0 when absent.
fn metric_sum(metrics: &Metrics, name: &str) -> f64 {
    metrics
        .render()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let base = series.split('{').next()?;
            if base == name {
                value.parse::<f64>().ok()
            } else {
                None
            }
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Producing and reading
// ---------------------------------------------------------------------------------------------

/// One input record.
#[derive(Debug, Clone, Default)]
struct In {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    partition: Option<i32>,
    headers: Vec<(String, Vec<u8>)>,
}

impl In {
    fn new(key: &str, value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: Some(key.as_bytes().to_vec()),
            value: Some(value.into()),
            ..Self::default()
        }
    }

    fn to(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }
}

/// Produces `records` to `topic` in order; returns where each landed (partition, offset).
async fn produce(bootstrap: &str, topic: &str, records: &[In]) -> Vec<(i32, i64)> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
        .expect("test producer");
    // `send_result` enqueues synchronously, so the records are queued (and, with idempotence,
    // written per partition) in the order given.
    let mut pending = Vec::with_capacity(records.len());
    for r in records {
        let mut rec = FutureRecord::<[u8], [u8]>::to(topic);
        if let Some(k) = &r.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = &r.value {
            rec = rec.payload(v.as_slice());
        }
        if let Some(p) = r.partition {
            rec = rec.partition(p);
        }
        if !r.headers.is_empty() {
            let mut h = OwnedHeaders::new();
            for (k, v) in &r.headers {
                h = h.insert(Header {
                    key: k,
                    value: Some(v.as_slice()),
                });
            }
            rec = rec.headers(h);
        }
        let fut = producer
            .send_result(rec)
            .unwrap_or_else(|(e, _)| panic!("enqueueing a record to {topic}: {e}"));
        pending.push(fut);
    }
    let mut out = Vec::with_capacity(pending.len());
    for fut in pending {
        let delivery = fut
            .await
            .expect("delivery future")
            .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
        out.push((delivery.partition, delivery.offset));
    }
    out
}

/// A record read back.
#[derive(Debug, Clone)]
struct Out {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
}

impl Out {
    fn key_str(&self) -> String {
        String::from_utf8_lossy(self.key.as_deref().unwrap_or_default()).into_owned()
    }

    fn value_str(&self) -> String {
        String::from_utf8_lossy(self.value.as_deref().unwrap_or_default()).into_owned()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Reads every partition of a topic from the beginning, incrementally.
struct Reader {
    consumer: BaseConsumer,
    topic: String,
    partitions: i32,
    /// Everything read so far, per partition in offset order.
    records: Vec<Out>,
    next: HashMap<i32, i64>,
}

impl Reader {
    fn open(bootstrap: &str, topic: &str, partitions: i32) -> Self {
        // librdkafka wants a group id even for assign-mode consumers; this one never commits.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("test-reader-{topic}"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .expect("test consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("valid offset");
        }
        consumer.assign(&tpl).expect("assign");
        Self {
            consumer,
            topic: topic.to_string(),
            partitions,
            records: Vec::new(),
            next: HashMap::new(),
        }
    }

    /// Polls for `d`, keeping what arrives; returns how many records arrived.
    fn poll_for(&mut self, d: Duration) -> usize {
        let end = Instant::now() + d;
        let mut n = 0;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return n;
            }
            match self.consumer.poll(left.min(Duration::from_millis(50))) {
                Some(Ok(m)) => {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default();
                    self.next.insert(m.partition(), m.offset() + 1);
                    self.records.push(Out {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                        headers,
                    });
                    n += 1;
                }
                Some(Err(e)) => panic!("reading {}: {e}", self.topic),
                None => {}
            }
        }
    }

    /// Reads until every partition reaches its current end and nothing more arrives for a
    /// quiet period; returns everything read so far.
    fn read_to_end(&mut self) -> &[Out] {
        let deadline = Instant::now() + WAIT;
        let mut ends = HashMap::new();
        for p in 0..self.partitions {
            let (_, high) = self
                .consumer
                .fetch_watermarks(&self.topic, p, Duration::from_secs(10))
                .expect("watermarks");
            ends.insert(p, high);
        }
        loop {
            let reached = ends
                .iter()
                .all(|(p, high)| self.next.get(p).copied().unwrap_or(0) >= *high);
            if reached && self.poll_for(Duration::from_millis(300)) == 0 {
                return &self.records;
            }
            assert!(
                Instant::now() < deadline,
                "reading {} to its end {ends:?} timed out at {:?}",
                self.topic,
                self.next
            );
            self.poll_for(Duration::from_millis(100));
        }
    }

    /// The values of each key in the order they were written (keys are co-located in one
    /// partition, so partition order is write order).
    fn values_per_key(&self) -> BTreeMap<String, Vec<String>> {
        let mut records: Vec<&Out> = self.records.iter().collect();
        records.sort_by_key(|r| (r.partition, r.offset));
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in records {
            out.entry(r.key_str()).or_default().push(r.value_str());
        }
        out
    }

    /// The last value of each key.
    fn last_per_key(&self) -> BTreeMap<String, String> {
        self.values_per_key()
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.last()?.clone())))
            .collect()
    }
}

/// The committed offsets of `group` for `topic`'s partitions (None: nothing committed).
fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("test consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(|p| {
            match got
                .find_partition(topic, p)
                .expect("asked for this partition")
                .offset()
            {
                Offset::Offset(o) => Some(o),
                _ => None,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Processors
// ---------------------------------------------------------------------------------------------

/// The processor of the crate docs: counts records per key in store `counts` and sends the
/// running count (decimal text) to `output`; optionally slow.
struct CountPerKey {
    output: String,
    delay: Duration,
}

impl Processor for CountPerKey {
    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        let key = record
            .key
            .ok_or_else(|| ProcessError::record("count", "record has no key"))?;
        let mut store = ctx.store::<u64>("counts")?;
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

fn count_topology(source: &str, output: &str, delay: Duration) -> Topology {
    let out = output.to_string();
    Topology::new("count", [source], move |_task| CountPerKey {
        output: out.clone(),
        delay,
    })
    .store("counts")
    .sink(output)
}

/// A `[[pipeline]]` table naming the library topology's topics (a config needs one).
fn placeholder_pipeline(source: &str, sink: &str) -> String {
    format!(
        "[[pipeline]]\nname = \"count\"\nsource = {{ topics = [\"{source}\"] }}\nsink = {{ topic = \"{sink}\" }}\n"
    )
}

/// `n` records over `keys` keys (`key-00`, `key-01`, ...), round robin; values are the index.
fn keyed_records(n: usize, keys: usize) -> Vec<In> {
    (0..n)
        .map(|i| In::new(&format!("key-{:02}", i % keys), i.to_string()))
        .collect()
}

/// Checks that every key's outputs are exactly 1, 2, ..., expected (each record counted once,
/// in order, and nothing emitted twice).
fn assert_count_sequences(
    outputs: &BTreeMap<String, Vec<String>>,
    expected: &BTreeMap<String, u64>,
) {
    assert_eq!(
        outputs.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "keys in the output"
    );
    for (key, values) in outputs {
        let want: Vec<String> = (1..=expected[key]).map(|c| c.to_string()).collect();
        assert_eq!(values, &want, "outputs of key {key}");
    }
}

// ---------------------------------------------------------------------------------------------
// a. the library API
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn library_processor_counts_per_key() {
    init_tracing();
    const APP: &str = "lib-counts";
    const INPUT: &str = "clicks";
    const SINK: &str = "click-counts";
    const KEYS: usize = 30;
    let cluster = cluster(&[(INPUT, 3), (SINK, 3), ("lib-counts-counts-changelog", 3)]);
    let bootstrap = cluster.bootstrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let pipeline = placeholder_pipeline(INPUT, SINK);
    let settings = Settings {
        app: APP,
        threads: 1,
        processing: "",
        pipeline: &pipeline,
    };
    let new_worker = |state_dir: &Path| {
        let config = load_config(dir.path(), &bootstrap, state_dir, &settings);
        Worker::builder(config)
            .topology(count_topology(INPUT, SINK, Duration::ZERO))
            .build()
            .expect("worker builds")
    };
    let mut sink = blocking(|| Reader::open(&bootstrap, SINK, 3));
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();

    // Run 1: 3000 records over 30 keys.
    let input = keyed_records(3000, KEYS);
    for r in &input {
        *expected
            .entry(String::from_utf8(r.key.clone().unwrap()).unwrap())
            .or_default() += 1;
    }
    produce(&bootstrap, INPUT, &input).await;
    let mut run = Running::start(new_worker(state.path()));
    let want: BTreeMap<String, String> = expected
        .iter()
        .map(|(k, c)| (k.clone(), c.to_string()))
        .collect();
    run.wait_until("every key is counted (run 1)", |_| {
        sink.poll_for(Duration::from_millis(200));
        sink.last_per_key() == want
    })
    .await;
    run.stop().await.expect("run 1 stops cleanly");
    blocking(|| sink.read_to_end());
    assert_eq!(sink.records.len(), 3000, "one output per input record");
    assert_count_sequences(&sink.values_per_key(), &expected);

    // Run 2: a new worker on the same state directory continues from the stored counts (and
    // from the committed offsets: nothing of run 1 is processed again).
    let mut run = Running::start(new_worker(state.path()));
    let more = keyed_records(KEYS, KEYS);
    produce(&bootstrap, INPUT, &more).await;
    expected.values_mut().for_each(|c| *c += 1);
    let want: BTreeMap<String, String> = expected
        .iter()
        .map(|(k, c)| (k.clone(), c.to_string()))
        .collect();
    run.wait_until("every key is counted (run 2)", |_| {
        sink.poll_for(Duration::from_millis(200));
        sink.last_per_key() == want
    })
    .await;
    let restored_locally = metric_sum(&run.metrics, "tributary_restored_records_total");
    run.stop().await.expect("run 2 stops cleanly");
    blocking(|| sink.read_to_end());
    assert_eq!(
        sink.records.len(),
        3000 + KEYS,
        "run 2 processed only the new records"
    );
    assert_count_sequences(&sink.values_per_key(), &expected);
    assert_eq!(
        restored_locally, 0.0,
        "with the state directory intact and checkpointed, nothing is re-read from the changelog"
    );

    // Run 3: an empty state directory; the counts come back from the changelog.
    let fresh = tempfile::tempdir().unwrap();
    let mut run = Running::start(new_worker(fresh.path()));
    produce(&bootstrap, INPUT, &more).await;
    expected.values_mut().for_each(|c| *c += 1);
    let want: BTreeMap<String, String> = expected
        .iter()
        .map(|(k, c)| (k.clone(), c.to_string()))
        .collect();
    run.wait_until("every key is counted (run 3)", |_| {
        sink.poll_for(Duration::from_millis(200));
        sink.last_per_key() == want
    })
    .await;
    let restored = metric_sum(&run.metrics, "tributary_restored_records_total");
    run.stop().await.expect("run 3 stops cleanly");
    blocking(|| sink.read_to_end());
    assert_eq!(sink.records.len(), 3000 + 2 * KEYS);
    assert_count_sequences(&sink.values_per_key(), &expected);
    assert!(
        restored >= KEYS as f64,
        "run 3 restored its stores from the changelog ({restored} records)"
    );
}

/// A failed offset commit must not write the local checkpoint: the state batch of that commit
/// stays out of RocksDB (its changes are already in the changelog, and go out again), and the
/// task keeps processing from its cache. Once commits succeed again, the checkpoint moves, the
/// offsets are committed, and every record was counted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_offset_commits_leave_the_checkpoint_alone() {
    init_tracing();
    const APP: &str = "commit-fails";
    const INPUT: &str = "events";
    const SINK: &str = "event-counts";
    const CHANGELOG: &str = "commit-fails-counts-changelog";
    let cluster = cluster(&[(INPUT, 2), (SINK, 2), (CHANGELOG, 2)]);
    let bootstrap = cluster.bootstrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let pipeline = placeholder_pipeline(INPUT, SINK);
    let settings = Settings {
        app: APP,
        threads: 1,
        processing: "",
        pipeline: &pipeline,
    };
    let config = load_config(dir.path(), &bootstrap, state.path(), &settings);
    let worker = Worker::builder(config)
        .topology(count_topology(INPUT, SINK, Duration::ZERO))
        .build()
        .expect("worker builds");
    let mut run = Running::start(worker);
    run.wait_until("both tasks run", |r| {
        r.status
            .tasks()
            .iter()
            .filter(|t| t.state == tributary::status::TaskState::Running)
            .count()
            == 2
    })
    .await;

    // Every commit fails for a while, after its ownership check passed and its changes went to
    // the changelog (commits run every 100 ms; the member gives up after 30 failures in a row).
    cluster.fail_offset_commits_after_checks(25).unwrap();
    let input = keyed_records(200, 10);
    let landed = produce(&bootstrap, INPUT, &input).await;
    let mut sink = blocking(|| Reader::open(&bootstrap, SINK, 2));
    let mut changelog = blocking(|| Reader::open(&bootstrap, CHANGELOG, 2));
    run.wait_until(
        "all 200 records are processed and flushed to the changelog",
        |_| {
            sink.poll_for(Duration::from_millis(100));
            changelog.poll_for(Duration::from_millis(100));
            sink.records.len() == 200 && changelog.last_per_key().len() == 10
        },
    )
    .await;
    let failures = metric_sum(&run.metrics, "tributary_commit_failures_total");
    assert!(failures > 0.0, "commits failed meanwhile");
    for t in run.status.tasks() {
        assert_eq!(
            t.checkpoints.get(CHANGELOG),
            Some(&None),
            "task {}: no checkpoint is written while its commits fail: {:?}",
            t.id,
            t.checkpoints
        );
    }
    // The group's offsets may have moved meanwhile: an ownership check re-commits the
    // positions whose effects were all acknowledged (here, in the changelog already), which
    // a failed commit may or may not have recorded.
    let sent = changelog.records.len();

    // Once commits go through, the checkpoints and the offsets move.
    run.wait_until("the checkpoints are written", |r| {
        r.status
            .tasks()
            .iter()
            .all(|t| matches!(t.checkpoints.get(CHANGELOG), Some(Some(_))))
    })
    .await;
    run.stop().await.expect("the worker stops cleanly");
    blocking(|| sink.read_to_end());
    blocking(|| changelog.read_to_end());
    assert_eq!(
        changelog.records.len(),
        sent,
        "changes already in the changelog are not sent again by later commits"
    );
    let ends: Vec<Option<i64>> = (0..2)
        .map(|p| {
            landed
                .iter()
                .filter(|(lp, _)| *lp == p)
                .map(|(_, o)| o + 1)
                .max()
        })
        .collect();
    assert_eq!(
        committed(&bootstrap, APP, INPUT, 2),
        ends,
        "every record is committed"
    );
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for r in &input {
        *expected
            .entry(String::from_utf8(r.key.clone().unwrap()).unwrap())
            .or_default() += 1;
    }
    assert_count_sequences(&sink.values_per_key(), &expected);
}

/// Offset commits that keep failing stop the member (and the worker) with an error saying so,
/// instead of keeping ever more uncommitted changes in memory. A commit whose ownership check
/// fails (the coordinator refuses even the offsets the group already holds) writes nothing to
/// the changelog: a member that may have been replaced must not put its cached values after
/// the new owner's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offset_commits_failing_for_good_stop_the_worker() {
    init_tracing();
    const APP: &str = "commit-fails-for-good";
    const INPUT: &str = "events";
    const SINK: &str = "event-counts";
    let cluster = cluster(&[
        (INPUT, 1),
        (SINK, 1),
        ("commit-fails-for-good-counts-changelog", 1),
    ]);
    let bootstrap = cluster.bootstrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let pipeline = placeholder_pipeline(INPUT, SINK);
    let settings = Settings {
        app: APP,
        threads: 1,
        processing: "",
        pipeline: &pipeline,
    };
    let config = load_config(dir.path(), &bootstrap, state.path(), &settings);
    let worker = Worker::builder(config)
        .topology(count_topology(INPUT, SINK, Duration::ZERO))
        .build()
        .expect("worker builds");
    cluster.fail_offset_commits(1_000).unwrap();
    let run = Running::start(worker);
    produce(&bootstrap, INPUT, &keyed_records(10, 10)).await;
    let err = run
        .join()
        .await
        .expect_err("the worker stops with an error");
    assert!(
        err.to_string()
            .contains("offset commits failed 30 times in a row"),
        "{err}"
    );
    let mut changelog =
        blocking(|| Reader::open(&bootstrap, "commit-fails-for-good-counts-changelog", 1));
    blocking(|| changelog.read_to_end());
    assert!(
        changelog.records.is_empty(),
        "no commit passed its ownership check, so nothing reached the changelog: {:?}",
        changelog.records
    );
}

// ---------------------------------------------------------------------------------------------
// b, c, d. the built-in aggregate and bad records
// ---------------------------------------------------------------------------------------------

const AGG_INPUT: &str = "payments";
const AGG_SINK: &str = "payment-totals";
const AGG_PIPELINE: &str = "totals";

fn aggregate_pipeline() -> String {
    format!(
        r#"[[pipeline]]
name = "{AGG_PIPELINE}"
source = {{ topics = ["{AGG_INPUT}"], format = "json" }}
sink = {{ topic = "{AGG_SINK}", format = "json" }}

[[pipeline.steps]]
[pipeline.steps.aggregate]
fields = {{ count = "count()", total = "sum(amount)" }}
"#
    )
}

/// Topics of an aggregate test with app id `app`: input, sink, changelog, DLQ (2 partitions).
/// A built-in aggregate worker for the `on_error` tests, on its own cluster and directories
/// (kept alive by the returned guards).
struct AggregateSetup {
    cluster: EmbeddedCluster,
    bootstrap: String,
    worker: Worker,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

fn aggregate_setup(app: &str, on_error: &str) -> AggregateSetup {
    let cluster = aggregate_cluster(app);
    let bootstrap = cluster.bootstrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let pipeline = aggregate_pipeline();
    let processing = format!("on_error = \"{on_error}\"");
    let config = load_config(
        dir.path(),
        &bootstrap,
        state.path(),
        &Settings {
            app,
            threads: 1,
            processing: &processing,
            pipeline: &pipeline,
        },
    );
    let worker = Worker::builder(config)
        .pipelines_from_config()
        .and_then(|b| b.build())
        .expect("worker builds");
    AggregateSetup {
        cluster,
        bootstrap,
        worker,
        _dirs: (dir, state),
    }
}

fn aggregate_cluster(app: &str) -> EmbeddedCluster {
    cluster(&[
        (AGG_INPUT, 2),
        (AGG_SINK, 2),
        (&format!("{app}-{AGG_PIPELINE}-changelog"), 2),
        (&format!("{app}-dlq"), 2),
    ])
}

/// What a bad record is, to check its dead letter.
#[derive(Debug, Clone)]
struct Bad {
    record: In,
    /// Text the `tributary.error` header must contain.
    error_mentions: &'static str,
}

/// Good JSON records over 10 users (even users on partition 0, odd ones on 1), interleaved
/// with bad ones. Returns the records in produce order and, per index, the bad ones.
fn mixed_input() -> (Vec<In>, BTreeMap<usize, Bad>) {
    let user = |u: usize| format!("user-{u}");
    let mut records: Vec<In> = (0..300usize)
        .map(|i| {
            let u = i % 10;
            In::new(
                &user(u),
                json!({ "user": user(u), "amount": (i * 7) % 100 }).to_string(),
            )
            .to((u % 2) as i32)
        })
        .collect();
    let bads = [
        (
            20,
            Bad {
                record: In::new(&user(1), "not json {").to(1),
                error_mentions: "JSON",
            },
        ),
        (
            75,
            Bad {
                record: In::new(&user(2), json!({ "user": user(2) }).to_string()).to(0),
                error_mentions: "amount",
            },
        ),
        (
            130,
            Bad {
                record: In::new(
                    &user(3),
                    json!({ "user": user(3), "amount": "12" }).to_string(),
                )
                .to(1),
                error_mentions: "amount",
            },
        ),
        (
            180,
            Bad {
                record: In {
                    key: None,
                    value: Some(json!({ "amount": 5 }).to_string().into_bytes()),
                    partition: Some(0),
                    headers: Vec::new(),
                },
                error_mentions: "key",
            },
        ),
        (
            240,
            Bad {
                record: In {
                    headers: vec![("trace-id".into(), b"abc-123".to_vec())],
                    ..In::new(&user(4), vec![0u8, 159, 146, 150, b'{']).to(0)
                },
                error_mentions: "JSON",
            },
        ),
        (
            290,
            Bad {
                record: In::new(&user(5), "[1, 2, 3]").to(1),
                error_mentions: "JSON",
            },
        ),
    ];
    let mut bad = BTreeMap::new();
    for (at, b) in bads {
        records.insert(at, b.record.clone());
        bad.insert(at, b);
    }
    (records, bad)
}

/// Expected aggregate output per key: `{"count": n, "total": sum}` over the good records.
fn expected_totals(records: &[In], bad: &BTreeMap<usize, Bad>) -> BTreeMap<String, Value> {
    // Amounts are integers, and a sum of integers stays an integer.
    let mut acc: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        if bad.contains_key(&i) {
            continue;
        }
        let v: Value = serde_json::from_slice(r.value.as_ref().unwrap()).unwrap();
        let e = acc
            .entry(String::from_utf8(r.key.clone().unwrap()).unwrap())
            .or_default();
        e.0 += 1;
        e.1 += v["amount"].as_i64().unwrap();
    }
    acc.into_iter()
        .map(|(k, (n, s))| (k, json!({ "count": n, "total": s })))
        .collect()
}

/// The last output per key, parsed.
fn last_json_per_key(sink: &Reader) -> BTreeMap<String, Value> {
    sink.last_per_key()
        .into_iter()
        .map(|(k, v)| (k, serde_json::from_str(&v).unwrap_or(Value::Null)))
        .collect()
}

/// Checks the aggregate output: the last value per key is exact, and each key's `count`
/// goes 1, 2, ..., n (no record counted twice).
fn assert_aggregate_output(sink: &Reader, expected: &BTreeMap<String, Value>) {
    assert_eq!(&last_json_per_key(sink), expected, "final totals per key");
    for (key, values) in sink.values_per_key() {
        let counts: Vec<u64> = values
            .iter()
            .map(|v| {
                serde_json::from_str::<Value>(v).unwrap()["count"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        let n = expected[&key]["count"].as_u64().unwrap();
        assert_eq!(
            counts,
            (1..=n).collect::<Vec<_>>(),
            "counts emitted for {key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn built_in_aggregate_with_dead_letters() {
    init_tracing();
    const APP: &str = "agg-dlq";
    let AggregateSetup {
        cluster: _cluster,
        bootstrap,
        worker,
        _dirs,
    } = aggregate_setup(APP, "dlq");
    let metrics = worker.metrics().clone();
    let dead_before = metric_sum(&metrics, "tributary_records_dead_lettered_total");
    assert_eq!(dead_before, 0.0);

    let (records, bad) = mixed_input();
    let expected = expected_totals(&records, &bad);
    let positions = produce(&bootstrap, AGG_INPUT, &records).await;

    let mut run = Running::start(worker);
    let mut sink = blocking(|| Reader::open(&bootstrap, AGG_SINK, 2));
    let mut dlq = blocking(|| Reader::open(&bootstrap, &format!("{APP}-dlq"), 2));
    run.wait_until(
        "all good records are aggregated and bad ones dead-lettered",
        |_| {
            sink.poll_for(Duration::from_millis(100));
            dlq.poll_for(Duration::from_millis(100));
            last_json_per_key(&sink) == expected && dlq.records.len() >= bad.len()
        },
    )
    .await;
    run.stop().await.expect("the worker stops cleanly");

    blocking(|| {
        sink.read_to_end();
        dlq.read_to_end();
    });
    assert_aggregate_output(&sink, &expected);
    assert_eq!(
        sink.records.len(),
        records.len() - bad.len(),
        "one output per good record"
    );

    // Every bad record is in the DLQ exactly once, as it was, with the reason and its origin.
    assert_eq!(
        dlq.records.len(),
        bad.len(),
        "dead letters: {:#?}",
        dlq.records
    );
    let mut seen = BTreeSet::new();
    for letter in &dlq.records {
        let partition: i32 = letter
            .header("tributary.partition")
            .expect("partition header")
            .parse()
            .unwrap();
        let offset: i64 = letter
            .header("tributary.offset")
            .expect("offset header")
            .parse()
            .unwrap();
        let index = positions
            .iter()
            .position(|p| *p == (partition, offset))
            .unwrap_or_else(|| {
                panic!("dead letter points at {partition}@{offset}, which was not produced")
            });
        let b = bad.get(&index).unwrap_or_else(|| {
            panic!("good record #{index} ({partition}@{offset}) was dead-lettered: {letter:?}")
        });
        assert!(seen.insert(index), "record #{index} dead-lettered twice");
        assert_eq!(letter.key, b.record.key, "key of #{index}");
        assert_eq!(letter.value, b.record.value, "value of #{index}");
        assert_eq!(letter.header("tributary.topic").as_deref(), Some(AGG_INPUT));
        assert_eq!(
            letter.header("tributary.pipeline").as_deref(),
            Some(AGG_PIPELINE)
        );
        // The step names are the aggregate's own business (they change with it): just present.
        let step = letter.header("tributary.step").expect("step header");
        assert!(!step.is_empty(), "step of #{index} is empty");
        let error = letter.header("tributary.error").expect("error header");
        assert!(
            error
                .to_lowercase()
                .contains(&b.error_mentions.to_lowercase()),
            "error of #{index}: {error:?} should mention {:?}",
            b.error_mentions
        );
        for (k, v) in &b.record.headers {
            assert_eq!(
                letter.header(k).as_deref().map(str::as_bytes),
                Some(v.as_slice()),
                "original header {k} of #{index}"
            );
        }
    }
    assert_eq!(seen.len(), bad.len());

    let dead_after = metric_sum(&metrics, "tributary_records_dead_lettered_total");
    assert_eq!(
        dead_after - dead_before,
        bad.len() as f64,
        "dead-lettered metric"
    );
    assert_eq!(metric_sum(&metrics, "tributary_records_skipped_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_error_fail_stops_with_topic_partition_offset() {
    init_tracing();
    const APP: &str = "agg-fail";
    let AggregateSetup {
        cluster: _cluster,
        bootstrap,
        worker,
        _dirs,
    } = aggregate_setup(APP, "fail");

    // Good records on both partitions (even users on 0, odd ones on 1); bad ones only on
    // partition 1, so the first bad record the worker meets is unambiguous.
    let good = |i: usize| {
        let u = i % 10;
        In::new(&format!("user-{u}"), json!({ "amount": i }).to_string()).to((u % 2) as i32)
    };
    let first: Vec<In> = (0..100).map(good).collect();
    produce(&bootstrap, AGG_INPUT, &first).await;

    // Let the worker process and commit the good records first, so that the committed offset
    // checked at the end is a real one (50 good records per partition).
    let mut run = Running::start(worker);
    run.wait_until("the good records are committed", |_| {
        committed(&bootstrap, APP, AGG_INPUT, 2) == [Some(50), Some(50)]
    })
    .await;

    let mut rest = vec![In::new("user-1", "not json").to(1)];
    rest.extend((100..150).map(good));
    rest.push(In::new("user-3", json!({ "amount": "x" }).to_string()).to(1));
    let positions = produce(&bootstrap, AGG_INPUT, &rest).await;
    let (bad_partition, bad_offset) = positions[0];
    assert_eq!((bad_partition, bad_offset), (1, 50));

    let err = run
        .join()
        .await
        .expect_err("the worker fails on the bad record");
    let message = err.to_string();
    let numbers: BTreeSet<i64> = message
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        message.contains(AGG_INPUT),
        "error names the topic: {message}"
    );
    assert!(
        numbers.contains(&i64::from(bad_partition)) && numbers.contains(&bad_offset),
        "error names partition {bad_partition} and offset {bad_offset}: {message}"
    );
    assert!(
        message.contains(&format!("{AGG_INPUT}/{bad_partition}@{bad_offset}")),
        "error names the record as topic/partition@offset: {message}"
    );

    // Nothing at or after the bad record was committed: partition 1 stays committed exactly
    // up to it, so a restarted worker meets the same record again.
    let committed = blocking(|| committed(&bootstrap, APP, AGG_INPUT, 2));
    assert!(
        committed[1].is_some_and(|c| c <= bad_offset),
        "committed offset of partition 1 is {:?}, past the bad record at {bad_offset}",
        committed[1]
    );
    assert_eq!(
        committed[1],
        Some(bad_offset),
        "partition 1 was committed up to the bad record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_error_skip_counts() {
    init_tracing();
    const APP: &str = "agg-skip";
    let AggregateSetup {
        cluster: _cluster,
        bootstrap,
        worker,
        _dirs,
    } = aggregate_setup(APP, "skip");
    let metrics = worker.metrics().clone();

    let (records, bad) = mixed_input();
    let expected = expected_totals(&records, &bad);
    produce(&bootstrap, AGG_INPUT, &records).await;

    let mut run = Running::start(worker);
    let mut sink = blocking(|| Reader::open(&bootstrap, AGG_SINK, 2));
    run.wait_until(
        "all good records are aggregated and the bad ones skipped",
        |r| {
            sink.poll_for(Duration::from_millis(200));
            last_json_per_key(&sink) == expected
                && metric_sum(&r.metrics, "tributary_records_skipped_total") >= bad.len() as f64
        },
    )
    .await;
    run.stop().await.expect("the worker stops cleanly");

    blocking(|| sink.read_to_end());
    assert_aggregate_output(&sink, &expected);
    assert_eq!(sink.records.len(), records.len() - bad.len());
    assert_eq!(
        metric_sum(&metrics, "tributary_records_skipped_total"),
        bad.len() as f64,
        "skipped metric"
    );
    assert_eq!(
        metric_sum(&metrics, "tributary_records_dead_lettered_total"),
        0.0
    );
    let dlq_len = blocking(|| {
        Reader::open(&bootstrap, &format!("{APP}-dlq"), 2)
            .read_to_end()
            .len()
    });
    assert_eq!(dlq_len, 0, "nothing is dead-lettered with on_error = skip");
}

// ---------------------------------------------------------------------------------------------
// e. back-pressure
// ---------------------------------------------------------------------------------------------

/// A slow task leaves its input in Kafka: librdkafka fetches a partition only while fewer than
/// `max_buffered_records` of its records wait (`queued.min.messages`), and nothing is lost or
/// read twice however long the records wait, including those produced while they do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_task_leaves_its_input_in_kafka() {
    init_tracing();
    const APP: &str = "slow";
    const INPUT: &str = "slow-in";
    const SINK: &str = "slow-out";
    const MAX_BUFFERED: usize = 50;
    /// Records produced before the worker starts.
    const N: usize = 2000;
    /// Records produced while the first ones wait.
    const MORE: usize = 1500;
    let cluster = cluster(&[(INPUT, 1), (SINK, 1), ("slow-counts-changelog", 1)]);
    let bootstrap = cluster.bootstrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    // librdkafka's statistics say how many records wait; every 100 ms here.
    let pipeline = format!(
        "[kafka.properties]\n\"statistics.interval.ms\" = \"100\"\n\n{}",
        placeholder_pipeline(INPUT, SINK)
    );
    let processing = format!("max_buffered_records = {MAX_BUFFERED}");
    let config = load_config(
        dir.path(),
        &bootstrap,
        state.path(),
        &Settings {
            app: APP,
            threads: 1,
            processing: &processing,
            pipeline: &pipeline,
        },
    );
    let worker = Worker::builder(config)
        .topology(count_topology(INPUT, SINK, Duration::from_millis(2)))
        .build()
        .expect("worker builds");
    let status = worker.status();

    let input = keyed_records(N + MORE, 10);
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for r in &input {
        *expected
            .entry(String::from_utf8(r.key.clone().unwrap()).unwrap())
            .or_default() += 1;
    }
    produce(&bootstrap, INPUT, &input[..N]).await;

    let mut run = Running::start(worker);
    run.wait_until("records wait for the running, slow task", |_| {
        status
            .tasks()
            .iter()
            .any(|t| t.state == tributary::status::TaskState::Running && t.queued > 0)
    })
    .await;
    produce(&bootstrap, INPUT, &input[N..]).await;

    let mut sink = blocking(|| Reader::open(&bootstrap, SINK, 1));
    let want: BTreeMap<String, String> = expected
        .iter()
        .map(|(k, c)| (k.clone(), c.to_string()))
        .collect();
    run.wait_until("all records are processed", |_| {
        sink.poll_for(Duration::from_millis(200));
        sink.last_per_key() == want
    })
    .await;
    run.stop().await.expect("the worker stops cleanly");

    blocking(|| sink.read_to_end());
    assert_eq!(sink.records.len(), N + MORE, "every record processed once");
    assert_count_sequences(&sink.values_per_key(), &expected);
}

/// Expressions read the headers of records as the consumer delivered them (read in place,
/// not copied).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expressions_read_the_consumed_headers() {
    init_tracing();
    const INPUT: &str = "hdr-in";
    const SINK: &str = "hdr-out";
    let cluster = cluster(&[(INPUT, 1), (SINK, 1)]);
    let bootstrap = cluster.bootstrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let pipeline = format!(
        "[[pipeline]]\nname = \"hdr\"\nsource = {{ topics = [\"{INPUT}\"] }}\n\
         sink = {{ topic = \"{SINK}\" }}\n\
         steps = [ {{ map = \"{{'trace': 'trace' in headers ? headers['trace'] : '', 'n': size(headers)}}\" }} ]\n"
    );
    let config = load_config(
        dir.path(),
        &bootstrap,
        state.path(),
        &Settings {
            app: "hdr",
            threads: 1,
            processing: "",
            pipeline: &pipeline,
        },
    );
    let worker = Worker::builder(config)
        .pipelines_from_config()
        .expect("the pipeline compiles")
        .build()
        .expect("worker builds");
    let with_headers = In {
        headers: vec![
            ("trace".into(), b"abc".to_vec()),
            ("other".into(), b"x".to_vec()),
        ],
        ..In::new("k", "{}")
    };
    produce(&bootstrap, INPUT, &[with_headers, In::new("k", "{}")]).await;
    let mut run = Running::start(worker);
    let mut sink = blocking(|| Reader::open(&bootstrap, SINK, 1));
    run.wait_until("both records are out", |_| {
        sink.poll_for(Duration::from_millis(100));
        sink.records.len() >= 2
    })
    .await;
    run.stop().await.expect("the worker stops cleanly");
    let values: Vec<Value> = sink
        .records
        .iter()
        .map(|r| serde_json::from_str(&r.value_str()).unwrap())
        .collect();
    assert_eq!(
        values,
        [
            json!({"trace": "abc", "n": 2}),
            json!({"trace": "", "n": 0})
        ]
    );
}

/// Counts the records being processed at the same moment, across tasks.
#[derive(Debug, Default)]
struct Concurrency {
    now: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

/// Records nothing; notes how many records are in its processors at once.
struct Probe {
    seen: Arc<Concurrency>,
}

impl Processor for Probe {
    fn process(&mut self, _: &Record<'_>, _: &mut Context<'_>) -> Result<(), ProcessError> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.seen.now.fetch_add(1, SeqCst) + 1;
        self.seen.most.fetch_max(now, SeqCst);
        std::thread::sleep(Duration::from_millis(1));
        self.seen.now.fetch_sub(1, SeqCst);
        Ok(())
    }
}

/// Runs a 2-partition topic through a worker with `threads` processing threads; returns the
/// most records that were in processors at once.
async fn most_at_once(threads: usize) -> usize {
    let app = format!("parallel-{threads}");
    let input = format!("parallel-{threads}-in");
    const N: usize = 600;
    let cluster = cluster(&[(&input, 2)]);
    let bootstrap = cluster.bootstrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let pipeline =
        format!("[[pipeline]]\nname = \"probe\"\nsource = {{ topics = [\"{input}\"] }}\n");
    let processing = format!("threads = {threads}");
    let config = load_config(
        dir.path(),
        &bootstrap,
        state.path(),
        &Settings {
            app: &app,
            threads: 1,
            processing: &processing,
            pipeline: &pipeline,
        },
    );
    let seen = Arc::new(Concurrency::default());
    let probe = seen.clone();
    let worker = Worker::builder(config)
        .topology(Topology::new("probe", [input.as_str()], move |_| Probe {
            seen: probe.clone(),
        }))
        .build()
        .expect("worker builds");
    // Both partitions hold records before the worker starts, so both tasks have work at once.
    produce(&bootstrap, &input, &keyed_records(N, 20)).await;
    let mut run = Running::start(worker);
    run.wait_until("every record is processed", |r| {
        consumed(&r.metrics, &input) == N as f64
    })
    .await;
    run.stop().await.expect("the worker stops cleanly");
    seen.most.load(std::sync::atomic::Ordering::SeqCst)
}

/// `tributary_records_consumed_total` of `topic`, over its partitions.
fn consumed(metrics: &Metrics, topic: &str) -> f64 {
    let series = format!("topic=\"{topic}\"");
    metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("tributary_records_consumed_total{") && l.contains(&series))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Tasks run in parallel on `processing.threads`, and one thread runs them one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_run_in_parallel_on_the_processing_threads() {
    init_tracing();
    assert_eq!(most_at_once(1).await, 1, "one processing thread");
    assert_eq!(
        most_at_once(2).await,
        2,
        "two processing threads, two busy tasks"
    );
}

// ---------------------------------------------------------------------------------------------
// f. two members in one worker
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_members_share_partitions() {
    init_tracing();
    const APP: &str = "pair";
    const INPUT: &str = "pair-in";
    const SINK: &str = "pair-out";
    let cluster = cluster(&[(INPUT, 4), (SINK, 4), ("pair-counts-changelog", 4)]);
    let bootstrap = cluster.bootstrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let pipeline = placeholder_pipeline(INPUT, SINK);
    let config = load_config(
        dir.path(),
        &bootstrap,
        state.path(),
        &Settings {
            app: APP,
            threads: 2,
            processing: "",
            pipeline: &pipeline,
        },
    );
    let worker = Worker::builder(config)
        .topology(count_topology(INPUT, SINK, Duration::ZERO))
        .build()
        .expect("worker builds");

    let mut run = Running::start(worker);
    run.wait_until("both members own tasks and every task runs", |r| {
        let members: BTreeSet<usize> = r.status.tasks().iter().map(|t| t.member).collect();
        r.status.not_ready().is_none()
            && members == BTreeSet::from([0, 1])
            && r.status.tasks().len() == 4
    })
    .await;
    let tasks = run.status.tasks();
    let partitions: BTreeSet<i32> = tasks.iter().map(|t| t.partition).collect();
    assert_eq!(
        partitions,
        BTreeSet::from([0, 1, 2, 3]),
        "each partition has one task: {tasks:?}"
    );

    let input = keyed_records(2000, 40);
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for r in &input {
        *expected
            .entry(String::from_utf8(r.key.clone().unwrap()).unwrap())
            .or_default() += 1;
    }
    let positions = produce(&bootstrap, INPUT, &input).await;
    let used: BTreeSet<i32> = positions.iter().map(|p| p.0).collect();
    assert_eq!(
        used.len(),
        4,
        "the keys spread over every partition: {used:?}"
    );

    let mut sink = blocking(|| Reader::open(&bootstrap, SINK, 4));
    let want: BTreeMap<String, String> = expected
        .iter()
        .map(|(k, c)| (k.clone(), c.to_string()))
        .collect();
    run.wait_until("every key is counted", |_| {
        sink.poll_for(Duration::from_millis(200));
        sink.last_per_key() == want
    })
    .await;
    // Both members processed records: every task has a position.
    let tasks = run.status.tasks();
    for member in [0, 1] {
        assert!(
            tasks
                .iter()
                .filter(|t| t.member == member)
                .any(|t| t.positions.get(INPUT).is_some_and(|p| *p > 0)),
            "member {member} processed records: {tasks:?}"
        );
    }
    let consumed_by_partition: BTreeMap<String, f64> = run
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("tributary_records_consumed_total{"))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            Some((series.to_string(), v.parse().ok()?))
        })
        .collect();
    run.stop().await.expect("the worker stops cleanly");

    blocking(|| sink.read_to_end());
    assert_eq!(
        sink.records.len(),
        input.len(),
        "every record processed once"
    );
    assert_count_sequences(&sink.values_per_key(), &expected);
    assert_eq!(
        consumed_by_partition.values().sum::<f64>(),
        input.len() as f64,
        "records consumed: {consumed_by_partition:?}"
    );
}

/// `source.partitioner = "crc32"` routes `/state` queries the way librdkafka's default
/// partitioner placed the records: where a librdkafka producer (Python, Go, .NET clients) with
/// default settings puts each key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crc32_is_where_librdkafka_s_default_partitioner_puts_a_key() {
    use tributary::pipeline::partitioner::{crc32_partition_for_key, partition_for_key};
    let cluster = cluster(&[("keys", 7)]);
    let records: Vec<In> = (0..200)
        .map(|i| In::new(&format!("key-{i}"), "v"))
        .collect();
    let landed = produce(cluster.bootstrap(), "keys", &records).await;
    let mut murmur2_differs = 0;
    for (r, (partition, _)) in records.iter().zip(landed) {
        let key = r.key.as_deref().unwrap();
        assert_eq!(
            crc32_partition_for_key(key, 7),
            partition,
            "key {:?}",
            String::from_utf8_lossy(key)
        );
        if partition_for_key(key, 7) != partition {
            murmur2_differs += 1;
        }
    }
    assert!(murmur2_differs > 0, "the two partitioners differ");
}

/// `sink.partitioner = "random"` in a running worker: every record of one key arrives once, and
/// they are spread over all six partitions of the sink (100 expected on each; all six get some
/// unless the choice is not random: a partition stays empty with probability below 1e-46).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_partitioner_spreads_one_key_over_every_partition() {
    init_tracing();
    const INPUT: &str = "random-in";
    const SINK: &str = "random-out";
    const N: usize = 600;
    let cluster = cluster(&[(INPUT, 1), (SINK, 6)]);
    let bootstrap = cluster.bootstrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let pipeline = format!(
        "[[pipeline]]\nname = \"spread\"\nsource = {{ topics = [\"{INPUT}\"] }}\n\
         sink = {{ topic = \"{SINK}\", partitioner = \"random\" }}\n"
    );
    let config = load_config(
        dir.path(),
        &bootstrap,
        state.path(),
        &Settings {
            app: "random",
            threads: 1,
            processing: "",
            pipeline: &pipeline,
        },
    );
    let worker = Worker::builder(config)
        .pipelines_from_config()
        .expect("the pipeline compiles")
        .build()
        .expect("worker builds");
    let input: Vec<In> = (0..N)
        .map(|i| In::new("one-key", format!(r#"{{"n":{i}}}"#)))
        .collect();
    produce(&bootstrap, INPUT, &input).await;
    let mut run = Running::start(worker);
    let mut sink = blocking(|| Reader::open(&bootstrap, SINK, 6));
    run.wait_until("every record is out", |_| {
        sink.poll_for(Duration::from_millis(100));
        sink.records.len() >= N
    })
    .await;
    run.stop().await.expect("the worker stops cleanly");
    blocking(|| sink.read_to_end());

    let mut seen: Vec<u64> = sink
        .records
        .iter()
        .map(|r| {
            assert_eq!(r.key_str(), "one-key");
            let v: Value = serde_json::from_str(&r.value_str()).unwrap();
            v["n"].as_u64().unwrap()
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..N as u64).collect::<Vec<_>>(), "every record once");
    let mut per_partition = [0usize; 6];
    for r in &sink.records {
        per_partition[usize::try_from(r.partition).unwrap()] += 1;
    }
    assert!(
        per_partition.iter().all(|&n| n > 0),
        "records per partition: {per_partition:?}"
    );
}
