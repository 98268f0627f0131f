//! A task: one partition number of one topology, with its stores, processor and queue (Kafka
//! Streams' `StreamTask`).
//!
//! States: `Restoring` (state being rebuilt from the changelog; input paused and queued) →
//! `Running` → closed. Everything of the partition lives here; the member only routes records,
//! drives restores and runs commits.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use prometheus::IntCounter;

use crate::config::OnError;
use crate::kafka::collector::{Collector, CollectorError, Outgoing, SendKind};
use crate::kafka::restore::ChangelogRecord;
use crate::metrics::Metrics;
use crate::processor::{Context, ProcessError, Processor, TaskInfo};
use crate::state::{Batch, ChangelogSink, StateError, TaskDb, TaskStores};
use crate::types::{OutputRecord, OwnedRecord, Record, TaskId};

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Rebuilding its state from the changelog; input waits.
    Restoring,
    /// Processing input.
    Running,
}

impl TaskState {
    /// The label used in metrics and `/tasks`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restoring => "restoring",
            Self::Running => "running",
        }
    }
}

/// Failures that stop the member.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// A bad record under `on_error = "fail"`.
    #[error("record {topic}/{partition}@{offset} failed in pipeline {pipeline}, {reason}")]
    Failed {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// Source offset.
        offset: i64,
        /// Topology name.
        pipeline: String,
        /// Step and reason.
        reason: String,
    },
    /// The processor reported a fatal error.
    #[error("task {task}: {reason}")]
    Fatal {
        /// The task.
        task: TaskId,
        /// What happened.
        reason: String,
    },
    /// The state store failed.
    #[error("task {task}: {source}")]
    State {
        /// The task.
        task: TaskId,
        /// The store error.
        #[source]
        source: StateError,
    },
    /// Records could not be produced.
    #[error(transparent)]
    Collector(#[from] CollectorError),
    /// Input offsets could not be committed, time after time.
    #[error(
        "offset commits failed {attempts} times in a row over {failing_ms} ms (the limits are \
         30 times and processing.commit_timeout_ms), the last with: {reason}"
    )]
    OffsetCommits {
        /// Failures in a row.
        attempts: u32,
        /// Time from the first of them to the last.
        failing_ms: u64,
        /// The last error.
        reason: String,
    },
}

/// Where a task's records go: the Kafka producer in a worker ([`Collector`]), memory in the
/// test kit.
pub trait RecordSink {
    /// Sends one record; `kind` says what its acknowledgement means.
    fn send(&self, out: Outgoing<'_>, kind: SendKind) -> Result<(), CollectorError>;
}

impl RecordSink for Collector {
    fn send(&self, out: Outgoing<'_>, kind: SendKind) -> Result<(), CollectorError> {
        Collector::send(self, out, kind)
    }
}

/// How a task handles bad records, shared by all tasks of a worker.
#[derive(Debug, Clone)]
pub struct ErrorPolicy {
    /// `processing.on_error`.
    pub on_error: OnError,
    /// The dead-letter topic.
    pub dlq_topic: String,
}

/// A store's changelog topic and the offset its restore starts from (`None`: the beginning).
pub type RestorePoint = (Arc<str>, Option<i64>);

/// Per-store restore bookkeeping.
#[derive(Debug)]
struct StoreRestore {
    changelog: Arc<str>,
    done: bool,
}

/// One task.
pub struct Task {
    info: TaskInfo,
    state: TaskState,
    stores: TaskStores,
    processor: Box<dyn Processor>,
    queue: VecDeque<OwnedRecord>,
    /// Progress per source topic (a task reads one partition of a few co-partitioned topics,
    /// so a short list beats hashing the topic name for every record).
    inputs: Vec<InputProgress>,
    changelogs: Vec<StoreRestore>,
    restore_batch: Option<Batch>,
    restore_batch_len: usize,
    outputs: Vec<OutputRecord>,
    metrics: Metrics,
}

/// Where a task is in one of its source partitions.
#[derive(Debug)]
struct InputProgress {
    topic: Arc<str>,
    /// Next offset expected. A record below it was already taken (processed or queued):
    /// librdkafka delivers it again when it re-fetches after a pause, resume or seek, and
    /// processing it twice would count it twice.
    taken: i64,
    /// Next offset to commit (last processed + 1), once a record was processed.
    position: Option<i64>,
    /// Offset last committed, to commit only what moved.
    committed: Option<i64>,
    /// Offset last offered to the group after every effect of the records before it was
    /// acknowledged by the brokers; it may have been committed even if the commit reported
    /// failure (a timeout after the broker applied it).
    durable: Option<i64>,
    /// Offset of the first record this task took: the group's committed offset when it
    /// started (or where the reset policy put it).
    first: Option<i64>,
    consumed: IntCounter,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("info", &self.info)
            .field("state", &self.state)
            .finish()
    }
}

/// Sends a task's flushed state changes to its changelog partitions.
struct ChangelogWriter<'a> {
    collector: &'a dyn RecordSink,
    topics: &'a [StoreRestore],
    partition: i32,
}

impl ChangelogSink for ChangelogWriter<'_> {
    fn send(&mut self, store: usize, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let out = Outgoing {
            topic: &self.topics[store].changelog,
            partition: Some(self.partition),
            key: Some(key),
            value,
            headers: &[],
            timestamp: None,
        };
        self.collector
            .send(out, SendKind::Changelog)
            .map_err(|e| e.to_string())
    }
}

/// Rows written per restore batch.
const RESTORE_BATCH: usize = 1000;

impl Task {
    /// Opens the task's database under `dir` (wiping it if unreadable; [`StateError::Locked`]
    /// while another handle holds it) and creates its processor.
    /// The task starts `Restoring`.
    pub fn open(
        info: TaskInfo,
        dir: &std::path::Path,
        stores: &[String],
        changelogs: Vec<Arc<str>>,
        processor: Box<dyn Processor>,
        cache_max_entries: usize,
        metrics: Metrics,
    ) -> Result<Self, StateError> {
        let (db, wiped) = TaskDb::open_or_rebuild(dir, stores)?;
        if let Some(reason) = wiped {
            tracing::warn!(task = %info.id, path = %dir.display(), %reason, "state unreadable; wiped it for a full restore");
        }
        Ok(Self {
            info,
            state: TaskState::Restoring,
            stores: TaskStores::new(Arc::new(db), cache_max_entries),
            processor,
            queue: VecDeque::new(),
            inputs: Vec::new(),
            changelogs: changelogs
                .into_iter()
                .map(|changelog| StoreRestore {
                    changelog,
                    done: false,
                })
                .collect(),
            restore_batch: None,
            restore_batch_len: 0,
            outputs: Vec::new(),
            metrics,
        })
    }

    /// The task id.
    pub fn id(&self) -> TaskId {
        self.info.id
    }

    /// The task's description.
    pub fn info(&self) -> &TaskInfo {
        &self.info
    }

    /// The task's stores (the test kit reads them).
    pub fn store_mut(&mut self) -> &mut TaskStores {
        &mut self.stores
    }

    /// Current state.
    pub fn state(&self) -> TaskState {
        self.state
    }

    /// The task's database (for `/state` reads).
    pub fn db(&self) -> &Arc<TaskDb> {
        self.stores.db()
    }

    /// Store names with their changelog topics, and where restore starts for each.
    pub fn restore_points(&self) -> Result<Vec<RestorePoint>, StateError> {
        self.stores
            .db()
            .stores()
            .iter()
            .zip(&self.changelogs)
            .map(|(store, c)| {
                Ok((
                    c.changelog.clone(),
                    self.stores.db().changelog_offset(store)?,
                ))
            })
            .collect()
    }

    /// Empties the store whose changelog is `changelog` (its checkpoint cannot be trusted); its
    /// restore then starts from the changelog's beginning.
    pub fn clear_store(&mut self, changelog: &str) -> Result<(), StateError> {
        self.restore_batch = None;
        self.restore_batch_len = 0;
        match self
            .changelogs
            .iter()
            .position(|c| *c.changelog == *changelog)
        {
            Some(store) => self.stores.db().clear_store(store),
            None => Ok(()),
        }
    }

    /// Applies one changelog record during restore.
    pub fn apply_changelog(&mut self, rec: ChangelogRecord<'_>) -> Result<(), StateError> {
        let Some(store) = self
            .changelogs
            .iter()
            .position(|c| *c.changelog == *rec.topic)
        else {
            return Ok(());
        };
        let db = self.stores.db().clone();
        let batch = self.restore_batch.get_or_insert_with(|| db.batch());
        match rec.value {
            Some(v) => db.batch_put(batch, store, rec.key, v),
            None => db.batch_delete(batch, store, rec.key),
        }
        db.batch_changelog_offset(batch, store, rec.offset + 1);
        self.restore_batch_len += 1;
        self.metrics
            .restored_records
            .with_label_values(&[&db.stores()[store]])
            .inc();
        if self.restore_batch_len >= RESTORE_BATCH {
            self.write_restore_batch()?;
        }
        Ok(())
    }

    /// Writes what restore has applied so far.
    pub fn write_restore_batch(&mut self) -> Result<(), StateError> {
        self.restore_batch_len = 0;
        match self.restore_batch.take() {
            Some(batch) => self.stores.db().write(batch),
            None => Ok(()),
        }
    }

    /// Marks the store with changelog `topic` restored; returns true when every store is, and the
    /// task is now running.
    pub fn changelog_restored(&mut self, topic: &str) -> Result<bool, StateError> {
        self.write_restore_batch()?;
        for c in self
            .changelogs
            .iter_mut()
            .filter(|c| *c.changelog == *topic)
        {
            c.done = true;
        }
        if self.changelogs.iter().all(|c| c.done) {
            self.state = TaskState::Running;
        }
        Ok(self.state == TaskState::Running)
    }

    /// Marks a task without stores running.
    pub fn start_if_stateless(&mut self) -> bool {
        if self.changelogs.is_empty() {
            self.state = TaskState::Running;
        }
        self.state == TaskState::Running
    }

    /// Takes the record at `offset` of `topic` unless it was taken before (a re-delivery):
    /// returns false for a record to drop.
    pub fn take(&mut self, topic: &str, offset: i64) -> bool {
        let input = self.input_mut(topic);
        if offset < input.taken {
            return false;
        }
        input.taken = offset + 1;
        input.first.get_or_insert(offset);
        true
    }

    /// The progress of `topic`, created on its first record.
    fn input_mut(&mut self, topic: &str) -> &mut InputProgress {
        match self.inputs.iter().position(|i| *i.topic == *topic) {
            Some(i) => &mut self.inputs[i],
            None => {
                let partition = self.info.id.partition.to_string();
                let consumed = self
                    .metrics
                    .records_consumed
                    .with_label_values(&[topic, &partition]);
                self.inputs.push(InputProgress {
                    topic: Arc::from(topic),
                    taken: i64::MIN,
                    position: None,
                    committed: None,
                    durable: None,
                    first: None,
                    consumed,
                });
                self.inputs.last_mut().expect("invariant: just pushed")
            }
        }
    }

    /// Records waiting in the queue.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// True when a record arriving now may be processed at once (nothing waits before it).
    pub fn can_process_now(&self) -> bool {
        self.state == TaskState::Running && self.queue.is_empty()
    }

    /// Queues a record for later.
    pub(crate) fn enqueue(&mut self, rec: OwnedRecord) {
        self.queue.push_back(rec);
    }

    /// Processes up to `max` queued records; returns how many.
    pub fn drain(
        &mut self,
        max: usize,
        collector: &dyn RecordSink,
        policy: &ErrorPolicy,
    ) -> Result<usize, TaskError> {
        if self.state != TaskState::Running {
            return Ok(0);
        }
        let mut n = 0;
        while n < max {
            let Some(rec) = self.queue.pop_front() else {
                break;
            };
            self.process(&rec.as_record(), collector, policy)?;
            n += 1;
        }
        Ok(n)
    }

    /// Processes one record: runs the processor, sends its output, applies the error policy.
    pub fn process(
        &mut self,
        rec: &Record<'_>,
        collector: &dyn RecordSink,
        policy: &ErrorPolicy,
    ) -> Result<(), TaskError> {
        self.outputs.clear();
        self.stores.begin_record();
        let (result, late) = {
            let mut ctx = Context::new(&self.info, &mut self.stores, &mut self.outputs);
            let result = self.processor.process(rec, &mut ctx);
            (result, ctx.late_records())
        };
        match result {
            Ok(()) => {
                if late > 0 {
                    self.metrics
                        .late_records
                        .with_label_values(&[&self.info.topology])
                        .inc_by(late);
                }
                for out in &self.outputs {
                    let o = Outgoing {
                        topic: &out.topic,
                        partition: out.partition,
                        key: out.key.as_deref(),
                        value: out.value.as_deref(),
                        headers: &out.headers,
                        timestamp: out.timestamp,
                    };
                    collector.send(o, SendKind::Output)?;
                }
            }
            Err(ProcessError::Fatal(reason)) => {
                return Err(TaskError::Fatal {
                    task: self.info.id,
                    reason,
                })
            }
            Err(ProcessError::Record { step, reason }) => {
                // Nothing of a failed record stays: not its output, not its state writes.
                self.stores.rollback();
                self.processor.rolled_back();
                self.bad_record(rec, &step, &reason, collector, policy)?
            }
        }
        self.advance(rec);
        Ok(())
    }

    fn advance(&mut self, rec: &Record<'_>) {
        let input = self.input_mut(rec.topic);
        input.taken = input.taken.max(rec.offset + 1);
        input.position = Some(rec.offset + 1);
        input.consumed.inc();
    }

    fn bad_record(
        &mut self,
        rec: &Record<'_>,
        step: &str,
        reason: &str,
        collector: &dyn RecordSink,
        policy: &ErrorPolicy,
    ) -> Result<(), TaskError> {
        let (topic, partition, offset) = (rec.topic, rec.partition, rec.offset);
        match policy.on_error {
            OnError::Fail => Err(TaskError::Failed {
                topic: topic.to_string(),
                partition,
                offset,
                pipeline: self.info.topology.clone(),
                reason: format!("step {step}: {reason}"),
            }),
            OnError::Skip => {
                tracing::warn!(
                    topic,
                    partition,
                    offset,
                    step,
                    reason,
                    "skipping bad record (on_error = skip)"
                );
                self.metrics
                    .records_skipped
                    .with_label_values(&[topic])
                    .inc();
                Ok(())
            }
            OnError::Dlq => {
                tracing::warn!(topic, partition, offset, step, reason, dlq = %policy.dlq_topic, "bad record sent to the dead-letter topic");
                let mut headers = rec.headers.to_vec();
                headers.extend([
                    ("tributary.error".to_string(), reason.as_bytes().to_vec()),
                    ("tributary.topic".to_string(), topic.as_bytes().to_vec()),
                    (
                        "tributary.partition".to_string(),
                        partition.to_string().into_bytes(),
                    ),
                    (
                        "tributary.offset".to_string(),
                        offset.to_string().into_bytes(),
                    ),
                    (
                        "tributary.pipeline".to_string(),
                        self.info.topology.as_bytes().to_vec(),
                    ),
                    ("tributary.step".to_string(), step.as_bytes().to_vec()),
                ]);
                let out = Outgoing {
                    topic: &policy.dlq_topic,
                    partition: None,
                    key: rec.key,
                    value: rec.value,
                    headers: &headers,
                    timestamp: rec.timestamp,
                };
                collector.send(out, SendKind::DeadLetter)?;
                self.metrics
                    .records_dead_lettered
                    .with_label_values(&[topic])
                    .inc();
                Ok(())
            }
        }
    }

    /// True when the cache wants a commit before it grows further.
    pub fn wants_commit(&self) -> bool {
        self.stores.wants_flush()
    }

    /// First half of a commit: sends every dirty entry to the changelog and returns the state
    /// batch that is written once the changelog is acknowledged and the input offsets are
    /// committed ([`Task::finish_commit`]). If the offset commit fails, the caller drops the
    /// batch: the local checkpoint stays at the last commit known to have succeeded, and the
    /// changes wait in the cache for the next commit (or are dropped with the task, dirty, if
    /// its partition turns out to be lost).
    pub fn prepare_commit(&mut self, collector: &dyn RecordSink) -> Result<Batch, TaskError> {
        let mut writer = ChangelogWriter {
            collector,
            topics: &self.changelogs,
            partition: self.info.id.partition,
        };
        let (batch, _) = self
            .stores
            .flush(&mut writer)
            .map_err(|source| TaskError::State {
                task: self.info.id,
                source,
            })?;
        Ok(batch)
    }

    /// Input offsets that moved since the last commit: (topic, partition, next offset).
    pub fn offsets_to_commit(&self) -> Vec<(Arc<str>, i32, i64)> {
        self.inputs
            .iter()
            .filter_map(|i| {
                i.position
                    .filter(|p| i.committed != Some(*p))
                    .map(|p| (i, p))
            })
            .map(|(i, p)| (i.topic.clone(), self.info.id.partition, p))
            .collect()
    }

    /// Input offsets the group may hold for this task without losing anything: the last
    /// offered after its effects were acknowledged (committed, or perhaps committed by a
    /// commit that reported failure), else where the task started. Committing them again
    /// moves nothing forward past unfinished work, nor back behind a commit that went
    /// through, and makes the coordinator check that this member still owns the partitions.
    /// (topic, partition, offset).
    pub fn settled_offsets(&self) -> Vec<(Arc<str>, i32, i64)> {
        self.inputs
            .iter()
            .filter_map(|i| i.durable.or(i.first).map(|p| (i, p)))
            .map(|(i, p)| (i.topic.clone(), self.info.id.partition, p))
            .collect()
    }

    /// True when the task's caches hold changes not yet in RocksDB (dirty, or flushed to the
    /// changelog by a commit that failed).
    pub fn has_uncommitted_state(&self) -> bool {
        self.stores.dirty() + self.stores.flushed() > 0
    }

    /// Notes that every effect of the records before the current positions is acknowledged:
    /// they are about to be offered to the group.
    pub fn offsets_durable(&mut self) {
        for i in &mut self.inputs {
            i.durable = i.position.or(i.durable);
        }
    }

    /// Every input position (topic, next offset), committed or not.
    pub fn positions(&self) -> impl Iterator<Item = (&Arc<str>, i64)> {
        self.inputs
            .iter()
            .filter_map(|i| i.position.map(|p| (&i.topic, p)))
    }

    /// Notes that the input offsets were committed.
    pub fn offsets_committed(&mut self) {
        for i in &mut self.inputs {
            i.committed = i.position;
        }
    }

    /// Second half of a commit: writes the state batch together with the acknowledged changelog
    /// offsets (`acks`: changelog topic and partition → highest acknowledged offset).
    pub fn finish_commit(
        &mut self,
        mut batch: Batch,
        acks: &HashMap<(String, i32), i64>,
    ) -> Result<(), TaskError> {
        let db = self.stores.db().clone();
        for (store, c) in self.changelogs.iter().enumerate() {
            if let Some(offset) = acks.get(&(c.changelog.to_string(), self.info.id.partition)) {
                db.batch_changelog_offset(&mut batch, store, offset + 1);
            }
        }
        db.write(batch).map_err(|source| TaskError::State {
            task: self.info.id,
            source,
        })?;
        self.stores.commit_succeeded();
        Ok(())
    }

    /// Drops everything not committed (queued records, dirty cache entries): used when the
    /// partition was lost and another member may already own it.
    pub fn discard(&mut self) {
        self.queue.clear();
        self.stores.discard();
    }
}
