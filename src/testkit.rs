//! Run a pipeline (or any [`Topology`]) without a broker, the way Kafka Streams'
//! `TopologyTestDriver` does: pipe records in with keys, values and timestamps, read what comes
//! out of each topic, and look into the stores.
//!
//! The driver runs the worker's own task code (the same processors, RocksDB stores in a
//! temporary directory, error policy and dead-letter headers); only Kafka is replaced. Records
//! written to a topic that a topology reads (a `key_by` repartition topic, or another
//! pipeline's source) are processed in turn, in the order they were written, partitioned by
//! murmur2 of their key as a producer would.
//!
//! Time: the driver has its own wall clock, which starts at 0 and moves only with
//! [`TestDriver::advance_wall_clock`]. After each record, and on each advance of the clock, every
//! open task gets a tick, as on a worker's processing thread: wall-clock timers fire, and under
//! `processing.idle_advance_ms` ([`TestDriver::idle_advance`]) an idle task's stream time moves
//! with the clock, so a window closes and is emitted without another record.
//!
//! ```
//! use tributary::config;
//! use tributary::testkit::TestDriver;
//!
//! let cfg = config::load_str(r#"
//!     [app]
//!     id = "demo"
//!     [kafka]
//!     bootstrap_servers = "embedded"
//!     [[pipeline]]
//!     name = "big"
//!     source = { topics = ["in"] }
//!     sink = { topic = "out" }
//!     steps = [ { filter = "amount > 50" }, { map = "{'user': user, 'double': amount * 2}" } ]
//! "#).unwrap();
//! let mut driver = TestDriver::from_config(&cfg).unwrap();
//! driver.pipe("in", Some("u1"), r#"{"user": "u1", "amount": 70}"#, 1_000).unwrap();
//! driver.pipe("in", Some("u2"), r#"{"user": "u2", "amount": 10}"#, 2_000).unwrap();
//! let out = driver.read("out");
//! assert_eq!(out.len(), 1);
//! assert_eq!(out[0].value_str(), Some(r#"{"double":140,"user":"u1"}"#));
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::config::{Config, ConfigIssue, OnError};
use crate::kafka::collector::{CollectorError, Outgoing, SendKind};
use crate::metrics::Metrics;
use crate::pipeline::partitioner::partition_for_key;
use crate::processor::{changelog_topic, TaskInfo, Topology};
use crate::state::{RocksMemory, StateError, StateMemory};
pub use crate::task::TaskError;
use crate::task::{ErrorPolicy, RecordSink, Task};
use crate::types::{Headers, Record, TaskId};

/// A record read from (or piped into) a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes (`None`: tombstone).
    pub value: Option<Vec<u8>>,
    /// Timestamp, epoch ms.
    pub timestamp: Option<i64>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl TestRecord {
    /// The key as UTF-8 text.
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The value as UTF-8 text.
    pub fn value_str(&self) -> Option<&str> {
        self.value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The value parsed as JSON (`Null` for a tombstone or a value that is not JSON).
    pub fn json(&self) -> serde_json::Value {
        self.value
            .as_deref()
            .and_then(|v| serde_json::from_slice(v).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// Captures what tasks send.
#[derive(Default)]
struct Captured {
    records: RefCell<Vec<(SendKind, TestRecord)>>,
}

impl RecordSink for Captured {
    fn send(&self, out: Outgoing<'_>, kind: SendKind) -> Result<(), CollectorError> {
        self.records.borrow_mut().push((
            kind,
            TestRecord {
                topic: out.topic.to_string(),
                partition: out.partition.unwrap_or(-1),
                key: out.key.map(<[u8]>::to_vec),
                value: out.value.map(<[u8]>::to_vec),
                timestamp: out.timestamp,
                headers: out.headers.to_vec(),
            },
        ));
        Ok(())
    }
}

/// Drives topologies without Kafka. See the [module documentation](self).
pub struct TestDriver {
    app_id: String,
    topologies: Vec<Topology>,
    partitions: i32,
    policy: ErrorPolicy,
    dir: tempfile::TempDir,
    tasks: BTreeMap<TaskId, Task>,
    sink: Captured,
    next_offset: HashMap<(String, i32), i64>,
    outputs: HashMap<String, VecDeque<TestRecord>>,
    metrics: Metrics,
    /// Shared by the driver's tasks, as a worker's tasks share it.
    memory: StateMemory,
    /// `processing.idle_advance_ms` of every task.
    idle_advance_ms: u64,
    /// The driver's wall clock (epoch ms).
    wall_clock: i64,
}

impl std::fmt::Debug for TestDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDriver")
            .field("app_id", &self.app_id)
            .field("topologies", &self.topologies)
            .field("partitions", &self.partitions)
            .finish()
    }
}

impl TestDriver {
    /// A driver for `topologies` of application `app_id`, one partition per topic, failing on
    /// bad records (`on_error = "fail"`).
    pub fn new(app_id: &str, topologies: Vec<Topology>) -> Self {
        Self {
            app_id: app_id.to_string(),
            topologies,
            partitions: 1,
            policy: ErrorPolicy {
                on_error: OnError::Fail,
                dlq_topic: format!("{app_id}-dlq"),
            },
            dir: tempfile::tempdir().expect("creating a temporary state directory"),
            tasks: BTreeMap::new(),
            sink: Captured::default(),
            next_offset: HashMap::new(),
            outputs: HashMap::new(),
            metrics: Metrics::new(),
            memory: StateMemory {
                cache_max_entries: 10_000,
                rocks: RocksMemory::default(),
            },
            idle_advance_ms: 0,
            wall_clock: 0,
        }
    }

    /// A driver for the `[[pipeline]]`s of a configuration, with its `processing.on_error` and
    /// dead-letter topic.
    pub fn from_config(cfg: &Config) -> Result<Self, Vec<ConfigIssue>> {
        let p = &cfg.processing;
        let dlq = p.dlq_topic(&cfg.app.id);
        let dlq_used = (p.on_error == OnError::Dlq).then_some(dlq.as_str());
        let topologies = crate::pipeline::compile_all(&cfg.app.id, dlq_used, &cfg.pipelines)?;
        Ok(Self::new(&cfg.app.id, topologies)
            .on_error(p.on_error, &dlq)
            .idle_advance(p.idle_advance_ms))
    }

    /// Sets `processing.idle_advance_ms` (default 0: off) for the tasks opened from now on.
    pub fn idle_advance(mut self, ms: u64) -> Self {
        self.idle_advance_ms = ms;
        self
    }

    /// The driver's wall clock, epoch ms (starts at 0).
    pub fn wall_clock(&self) -> i64 {
        self.wall_clock
    }

    /// Moves the driver's wall clock forward by `by` and ticks every open task at the new time
    /// (wall-clock timers, idle advance, and the stream-time timer that follows it); what they
    /// send is routed like any output. To see a task idle for a while, advance in steps, as a
    /// worker's thread ticks every few milliseconds:
    /// an advance of more than a second is a worker that stalled (or whose clock stepped), and
    /// does not count as idle time.
    pub fn advance_wall_clock(&mut self, by: std::time::Duration) -> Result<(), TaskError> {
        self.wall_clock = self
            .wall_clock
            .saturating_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX));
        let mut pending = VecDeque::new();
        let ids: Vec<TaskId> = self.tasks.keys().copied().collect();
        for id in ids {
            let task = self.tasks.get_mut(&id).expect("invariant: listed above");
            task.tick(self.wall_clock, &self.sink, &self.policy)?;
            self.route(&mut pending);
        }
        self.run_pending(pending)
    }

    /// The stream time of the task of `pipeline` (topology) and `partition`, if it is open.
    pub fn stream_time(&self, pipeline: &str, partition: i32) -> Option<i64> {
        let topology = self.topologies.iter().position(|t| t.name == pipeline)?;
        self.tasks
            .get(&TaskId {
                topology,
                partition,
            })?
            .stream_time()
    }

    /// Sets the error policy.
    pub fn on_error(mut self, on_error: OnError, dlq_topic: &str) -> Self {
        self.policy = ErrorPolicy {
            on_error,
            dlq_topic: dlq_topic.to_string(),
        };
        self
    }

    /// Gives every topic `n` partitions (default 1), so that tests can check that records
    /// meet by key.
    pub fn partitions(mut self, n: i32) -> Self {
        self.partitions = n.max(1);
        self
    }

    /// Pipes a record with a text key and value into `topic` at `timestamp` (partitioned by
    /// murmur2 of its key).
    pub fn pipe(
        &mut self,
        topic: &str,
        key: Option<&str>,
        value: &str,
        timestamp: i64,
    ) -> Result<(), TaskError> {
        self.pipe_record(TestRecord {
            topic: topic.to_string(),
            partition: -1,
            key: key.map(|k| k.as_bytes().to_vec()),
            value: Some(value.as_bytes().to_vec()),
            timestamp: Some(timestamp),
            headers: Vec::new(),
        })
    }

    /// Pipes a record (`partition` -1: by murmur2 of its key) and processes it, and everything
    /// it makes that a topology reads, to the end. A record failing under
    /// `on_error = "fail"` is the error.
    pub fn pipe_record(&mut self, record: TestRecord) -> Result<(), TaskError> {
        self.run_pending(VecDeque::from([record]))
    }

    /// Processes `pending` and everything it makes that a topology reads, to the end.
    fn run_pending(&mut self, mut pending: VecDeque<TestRecord>) -> Result<(), TaskError> {
        while let Some(rec) = pending.pop_front() {
            self.process(rec)?;
            self.route(&mut pending);
        }
        Ok(())
    }

    /// Takes what the tasks sent: outputs go to their topics (and to `pending` when a topology
    /// reads them), changelog records are dropped.
    fn route(&mut self, pending: &mut VecDeque<TestRecord>) {
        for (kind, out) in self.sink.records.borrow_mut().drain(..) {
            match kind {
                SendKind::Changelog => {}
                SendKind::Output | SendKind::DeadLetter => {
                    let mut out = out;
                    if out.partition < 0 {
                        // What the producer's murmur2 partitioner does (0 without a key).
                        out.partition = out
                            .key
                            .as_deref()
                            .map_or(0, |k| partition_for_key(k, self.partitions));
                    }
                    if self
                        .topologies
                        .iter()
                        .any(|t| t.sources.contains(&out.topic))
                    {
                        pending.push_back(out.clone());
                    }
                    self.outputs
                        .entry(out.topic.clone())
                        .or_default()
                        .push_back(out);
                }
            }
        }
    }

    fn process(&mut self, mut rec: TestRecord) -> Result<(), TaskError> {
        let Some(topology) = self
            .topologies
            .iter()
            .position(|t| t.sources.contains(&rec.topic))
        else {
            return Ok(());
        };
        if rec.partition < 0 {
            rec.partition = rec
                .key
                .as_deref()
                .map_or(0, |k| partition_for_key(k, self.partitions));
        }
        let offset = self
            .next_offset
            .entry((rec.topic.clone(), rec.partition))
            .or_insert(0);
        let record = Record {
            topic: &rec.topic,
            partition: rec.partition,
            offset: *offset,
            timestamp: rec.timestamp,
            key: rec.key.as_deref(),
            value: rec.value.as_deref(),
            headers: Headers::from_pairs(&rec.headers),
        };
        *offset += 1;
        let id = TaskId {
            topology,
            partition: record.partition,
        };
        self.task(id)
            .map_err(|source| TaskError::State { task: id, source })?;
        let task = self.tasks.get_mut(&id).expect("invariant: opened above");
        if task.take(record.topic, record.offset) {
            task.process(&record, &self.sink, &self.policy)?;
        }
        // A worker's processing thread ticks a task after each slice of records.
        task.tick(self.wall_clock, &self.sink, &self.policy)
    }

    fn task(&mut self, id: TaskId) -> Result<&mut Task, StateError> {
        if !self.tasks.contains_key(&id) {
            let t = &self.topologies[id.topology];
            let topics: BTreeMap<String, i32> = self
                .topologies
                .iter()
                .flat_map(|t| t.sources.iter().chain(&t.sinks))
                .map(|s| (s.clone(), self.partitions))
                .collect();
            let info = TaskInfo {
                id,
                topology: t.name.clone(),
                app_id: self.app_id.clone(),
                partitions: Arc::new(topics),
            };
            let changelogs: Vec<Arc<str>> = t
                .stores
                .iter()
                .map(|s| Arc::from(changelog_topic(&self.app_id, s)))
                .collect();
            let processor = (t.factory)(&info);
            let mut task = Task::open(
                info,
                &self.dir.path().join(id.to_string()),
                &t.stores,
                changelogs.clone(),
                processor,
                &self.memory,
                self.metrics.clone(),
            )?;
            for c in &changelogs {
                task.changelog_restored(c)?;
            }
            task.start_if_stateless();
            task.set_idle_advance(self.idle_advance_ms);
            self.tasks.insert(id, task);
        }
        Ok(self.tasks.get_mut(&id).expect("invariant: inserted above"))
    }

    /// Records of pipeline (topology) `pipeline` dropped as late so far, as the worker counts
    /// them in `tributary_late_records_total`.
    pub fn late_records(&self, pipeline: &str) -> u64 {
        self.metrics
            .late_records
            .get_metric_with_label_values(&[pipeline])
            .map_or(0, |c| c.get())
    }

    /// Takes the records written to `topic` so far (sinks, repartition and dead-letter topics).
    pub fn read(&mut self, topic: &str) -> Vec<TestRecord> {
        self.outputs
            .get_mut(topic)
            .map(|q| q.drain(..).collect())
            .unwrap_or_default()
    }

    /// Commits every task: writes the caches to RocksDB, as a worker's commit does.
    pub fn commit(&mut self) -> Result<(), TaskError> {
        for task in self.tasks.values_mut() {
            let batch = task.prepare_commit(&self.sink)?;
            task.finish_commit(batch, &HashMap::new(), None)?;
        }
        self.sink
            .records
            .borrow_mut()
            .retain(|(k, _)| *k != SendKind::Changelog);
        Ok(())
    }

    /// Commits and closes every task, then reopens them from their stores, as after a worker
    /// restart: task-local memory is gone (stream time included), state is not. The tasks
    /// start (their processors' `init` runs) on their next record or tick.
    pub fn restart(&mut self) -> Result<(), TaskError> {
        self.commit()?;
        let ids: Vec<TaskId> = self.tasks.keys().copied().collect();
        self.tasks.clear();
        for id in ids {
            self.task(id)
                .map_err(|source| TaskError::State { task: id, source })?;
        }
        Ok(())
    }

    /// The value under `key` in store `store` of the task of `partition`, decoded as `T`.
    pub fn store_get<T>(&mut self, store: &str, partition: i32, key: &[u8]) -> Option<T>
    where
        T: serde::Serialize + DeserializeOwned + Clone + Send + 'static,
    {
        let topology = self
            .topologies
            .iter()
            .position(|t| t.stores.iter().any(|s| s == store))?;
        let task = self
            .task(TaskId {
                topology,
                partition,
            })
            .ok()?;
        task.store_mut()
            .store::<T>(store)
            .ok()?
            .get(key)
            .ok()
            .flatten()
    }

    /// Every entry of store `store` in every task, as JSON, in key order per task.
    pub fn store_entries(&mut self, store: &str) -> Vec<(Vec<u8>, serde_json::Value)> {
        let Some(topology) = self
            .topologies
            .iter()
            .position(|t| t.stores.iter().any(|s| s == store))
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (id, task) in self.tasks.iter_mut() {
            if id.topology != topology {
                continue;
            }
            if let Ok(mut s) = task.store_mut().store::<serde_json::Value>(store) {
                out.extend(s.range([], None).unwrap_or_default());
            }
        }
        out
    }
}

/// An in-process stand-in for the Confluent Schema Registry, for testing Avro pipelines that
/// use `registry_url` without running a registry: it serves `GET /schemas/ids/{id}`,
/// `POST /subjects/{subject}/versions` (registering, or returning the id of a schema already
/// there) and `GET /subjects/{subject}/versions/latest` on a loopback port, keeping schemas in
/// memory for as long as the value lives.
#[derive(Debug)]
pub struct MockSchemaRegistry {
    url: String,
    state: Arc<std::sync::Mutex<RegistryState>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug, Default)]
struct RegistryState {
    /// Schemas by id (ids start at 1).
    schemas: Vec<String>,
    /// Subject → ids of its versions, oldest first.
    subjects: BTreeMap<String, Vec<u32>>,
}

impl RegistryState {
    fn register(&mut self, subject: &str, schema: &str) -> u32 {
        let id = match self.schemas.iter().position(|s| s == schema) {
            Some(i) => i as u32 + 1,
            None => {
                self.schemas.push(schema.to_string());
                self.schemas.len() as u32
            }
        };
        let versions = self.subjects.entry(subject.to_string()).or_default();
        if !versions.contains(&id) {
            versions.push(id);
        }
        id
    }

    /// Answers one request: (status, JSON body).
    fn answer(&mut self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let not_found = |code: u32, what: String| {
            (
                404,
                serde_json::json!({"error_code": code, "message": what}),
            )
        };
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, parts.as_slice()) {
            ("GET", ["schemas", "ids", id]) => {
                match id
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| self.schemas.get(i.wrapping_sub(1)))
                {
                    Some(s) => (200, serde_json::json!({ "schema": s })),
                    None => not_found(40403, "Schema not found".into()),
                }
            }
            ("POST", ["subjects", subject, "versions"]) => {
                let schema = serde_json::from_str::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v["schema"].as_str().map(str::to_string));
                match schema {
                    Some(s) => (200, serde_json::json!({ "id": self.register(subject, &s) })),
                    None => (
                        422,
                        serde_json::json!({"error_code": 42201, "message": "Invalid schema"}),
                    ),
                }
            }
            ("GET", ["subjects", subject, "versions", "latest"]) => {
                match self.subjects.get(*subject).and_then(|v| v.last()) {
                    Some(&id) => {
                        let version = self.subjects[*subject].len();
                        let schema = &self.schemas[id as usize - 1];
                        (
                            200,
                            serde_json::json!({ "subject": subject, "version": version, "id": id, "schema": schema }),
                        )
                    }
                    None => not_found(40401, format!("Subject '{subject}' not found.")),
                }
            }
            ("GET", ["subjects"]) => (
                200,
                serde_json::json!(self.subjects.keys().collect::<Vec<_>>()),
            ),
            _ => not_found(404, format!("no route for {method} {path}")),
        }
    }
}

impl MockSchemaRegistry {
    /// Starts serving on a free loopback port.
    pub fn start() -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(std::sync::Mutex::new(RegistryState::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        std::thread::Builder::new()
            .name("mock-schema-registry".into())
            .spawn(move || serve_registry(listener, s, st))?;
        Ok(Self { url, state, stop })
    }

    /// The registry's URL, for `registry_url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Registers `schema` (Avro schema JSON) under `subject`; returns its id.
    pub fn register(&self, subject: &str, schema: &str) -> u32 {
        self.state
            .lock()
            .expect("registry state")
            .register(subject, schema)
    }

    /// The ids registered under `subject`, oldest first.
    pub fn versions(&self, subject: &str) -> Vec<u32> {
        self.state
            .lock()
            .expect("registry state")
            .subjects
            .get(subject)
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for MockSchemaRegistry {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn serve_registry(
    listener: std::net::TcpListener,
    state: Arc<std::sync::Mutex<RegistryState>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::io::{BufRead, BufReader, Read, Write};
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(5));
                continue;
            }
            Err(_) => continue,
        };
        let _ = stream.set_nonblocking(false);
        let Ok(read_half) = stream.try_clone() else {
            continue;
        };
        let mut reader = BufReader::new(read_half);
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            continue;
        }
        let mut words = line.split_whitespace();
        let (method, path) = (
            words.next().unwrap_or("").to_string(),
            words.next().unwrap_or("").to_string(),
        );
        let mut length = 0;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            continue;
        }
        let (status, answer) = state.lock().expect("registry state").answer(
            &method,
            &path,
            &String::from_utf8_lossy(&body),
        );
        let answer = answer.to_string();
        let mut stream = stream;
        let _ = write!(
            stream,
            "HTTP/1.1 {status} {}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            if status == 200 { "OK" } else { "Error" },
            answer.len()
        );
    }
}
