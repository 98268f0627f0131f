//! A task: one partition number of one topology, with its stores and processor (Kafka Streams'
//! `StreamTask`).
//!
//! States: `Restoring` (state being rebuilt from the changelog; input waits in Kafka) →
//! `Running` → closed. Everything of the partition lives here; the member drives restores and
//! commits, a processing thread hands it records and, after each slice of them, a tick of the
//! wall clock ([`Task::tick`]): timers fire and idle stream time advances on that thread,
//! under the cell's lock, so what they write and send goes into the same commits as records.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::IntCounter;

use crate::config::OnError;
use crate::kafka::collector::{Collector, CollectorError, Outgoing, SendKind, Tagged};
use crate::kafka::restore::ChangelogRecord;
use crate::metrics::Metrics;
use crate::processor::{Context, ProcessError, Processor, Punctuation, TaskInfo};
use crate::state::{
    now_ms, stale_since, Batch, ChangelogSink, Checkpoint, StateError, StateMemory, TaskDb,
    TaskStores,
};
use crate::timers::TaskClock;
use crate::types::{OutputRecord, Record, TaskId};

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Rebuilding its state from the changelog; input waits.
    Restoring,
    /// Processing input.
    Running,
    /// A warm copy of another worker's task: its changelogs are tailed into the local store,
    /// and nothing is processed (see `state.standby_replicas`).
    Standby,
}

impl TaskState {
    /// The label used in metrics and `/tasks`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restoring => "restoring",
            Self::Running => "running",
            Self::Standby => "standby",
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
    /// A timer's punctuation (or the processor's `init`) failed under `on_error = "fail"`.
    #[error("task {task} failed in pipeline {pipeline} at {what}, {reason}")]
    Timer {
        /// The task.
        task: TaskId,
        /// Topology name.
        pipeline: String,
        /// What ran: `init`, or which punctuation at what time.
        what: String,
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

impl RecordSink for Tagged<'_> {
    fn send(&self, out: Outgoing<'_>, kind: SendKind) -> Result<(), CollectorError> {
        Tagged::send(self, out, kind)
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

/// A store's changelog topic and its checkpoint (`None`: restore from the beginning).
pub type RestorePoint = (Arc<str>, Option<Checkpoint>);

/// Per-store restore bookkeeping.
#[derive(Debug)]
struct StoreRestore {
    changelog: Arc<str>,
    done: bool,
    /// The sync time the store's checkpoints carry while it restores (see
    /// [`Checkpoint::synced_at_ms`]): its checkpoint's if it had one, else when its restore
    /// began (the task opened, or the store was emptied), before it read anything.
    synced_at_ms: Option<i64>,
    /// True while the store restores the tail after its checkpoint (not from empty).
    resumed: bool,
    /// True when the changelog held records past where the restore started.
    tail: bool,
    /// True when records were applied since the store was last known in sync (a standby's:
    /// see [`Task::standby_outlived`]).
    applied_since_sync: bool,
    /// When the store's current restore began (ms since the Unix epoch): the task opened, or
    /// the store was emptied.
    began_ms: i64,
}

/// A restore that took longer than its changelog keeps tombstones (see
/// [`Task::restore_outlived`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outlived {
    /// A tail restore: rebuilding from empty needs only the time the rebuild takes.
    Rebuild(String),
    /// A restore from empty: a rebuild would take as long again; go on, and say so.
    Accept(String),
}

/// One task.
pub struct Task {
    info: TaskInfo,
    state: TaskState,
    stores: TaskStores,
    processor: Box<dyn Processor>,
    /// The commit generation the task's sends belong to (see [`Collector::tagged`]); the next
    /// commit's flush moves it on.
    generation: u64,
    /// Progress per source topic (a task reads one partition of a few co-partitioned topics,
    /// so a short list beats hashing the topic name for every record).
    inputs: Vec<InputProgress>,
    changelogs: Vec<StoreRestore>,
    /// `tributary_restored_records_total` of each store (looked up once, not per record).
    restored: Vec<IntCounter>,
    outputs: Vec<OutputRecord>,
    metrics: Metrics,
    /// Stream time, timers and idle advance.
    clock: TaskClock,
    /// True once the processor's `init` ran.
    started: bool,
    /// Punctuations failed in a row (and dropped, under `skip` or `dlq`).
    failed_hooks: u64,
}

/// What a task asks of its processor besides records.
#[derive(Debug, Clone, Copy)]
enum Hook {
    Init,
    Punctuate(Punctuation, i64),
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Init => f.write_str("init"),
            Self::Punctuate(Punctuation::StreamTime, t) => {
                write!(f, "the stream-time punctuation at {t}")
            }
            Self::Punctuate(Punctuation::WallClock, t) => {
                write!(f, "the wall-clock punctuation at {t}")
            }
        }
    }
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

/// How often a confirmed commit rewrites the sync time of a store it wrote nothing to.
const IDLE_SYNC_REFRESH_MS: i64 = 60_000;

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
        memory: &StateMemory,
        metrics: Metrics,
    ) -> Result<Self, StateError> {
        let opened_ms = now_ms();
        let (db, wiped) = TaskDb::open_or_rebuild(dir, stores, &memory.rocks)?;
        if let Some(reason) = wiped {
            tracing::warn!(task = %info.id, path = %dir.display(), %reason, "state unreadable; wiped it for a full restore");
        }
        let changelogs = stores
            .iter()
            .zip(changelogs)
            .map(|(store, changelog)| {
                let checkpoint = db.checkpoint(store)?;
                Ok(StoreRestore {
                    changelog,
                    done: false,
                    synced_at_ms: match checkpoint {
                        Some(c) => c.synced_at_ms,
                        None => Some(opened_ms),
                    },
                    resumed: checkpoint.is_some(),
                    tail: false,
                    applied_since_sync: false,
                    began_ms: opened_ms,
                })
            })
            .collect::<Result<_, StateError>>()?;
        let restored = stores
            .iter()
            .map(|s| metrics.restored_records.with_label_values(&[s]))
            .collect();
        Ok(Self {
            info,
            state: TaskState::Restoring,
            stores: TaskStores::new(Arc::new(db), memory.cache_max_entries),
            processor,
            generation: 0,
            inputs: Vec::new(),
            changelogs,
            restored,
            outputs: Vec::new(),
            metrics,
            clock: TaskClock::default(),
            started: false,
            failed_hooks: 0,
        })
    }

    /// Opens task `id` of `topology` in its directory under `state_dir` (see [`Task::open`]).
    pub fn open_for(
        topology: &crate::processor::Topology,
        id: TaskId,
        app_id: &str,
        partitions: &Arc<std::collections::BTreeMap<String, i32>>,
        state_dir: &std::path::Path,
        memory: &StateMemory,
        metrics: &Metrics,
    ) -> Result<Self, StateError> {
        let info = TaskInfo {
            id,
            topology: topology.name.clone(),
            app_id: app_id.to_string(),
            partitions: partitions.clone(),
        };
        let changelogs = topology
            .stores
            .iter()
            .map(|s| Arc::from(crate::processor::changelog_topic(app_id, s)))
            .collect();
        let processor = (topology.factory)(&info);
        Self::open(
            info,
            &state_dir.join(id.to_string()),
            &topology.stores,
            changelogs,
            processor,
            memory,
            metrics.clone(),
        )
    }

    /// Advances the task's stream time with the wall clock once it has received no record for
    /// `ms` (`processing.idle_advance_ms`; 0, the default, never).
    pub fn set_idle_advance(&mut self, ms: u64) {
        self.clock.set_idle_advance(ms);
    }

    /// The task's stream time (see [`crate::processor`]).
    pub fn stream_time(&self) -> Option<i64> {
        self.clock.stream_time()
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

    /// The changelog topic of each store, with the store's checkpoint.
    pub fn restore_points(&self) -> Result<Vec<RestorePoint>, StateError> {
        self.stores
            .db()
            .stores()
            .iter()
            .zip(&self.changelogs)
            .map(|(store, c)| Ok((c.changelog.clone(), self.stores.db().checkpoint(store)?)))
            .collect()
    }

    /// Empties the store whose changelog is `changelog` (its checkpoint cannot be trusted); its
    /// restore then starts from the changelog's beginning.
    pub fn clear_store(&mut self, changelog: &str) -> Result<(), StateError> {
        // The batch holds what the other stores restored too.
        self.write_restore_batch()?;
        match self
            .changelogs
            .iter_mut()
            .enumerate()
            .find(|(_, c)| *c.changelog == *changelog)
        {
            Some((store, c)) => {
                let now = now_ms();
                c.synced_at_ms = Some(now);
                c.began_ms = now;
                c.resumed = false;
                c.tail = false;
                c.applied_since_sync = false;
                self.stores.db().clear_store(store)
            }
            None => Ok(()),
        }
    }

    /// Applies one changelog record during restore.
    pub fn apply_changelog(&mut self, rec: ChangelogRecord<'_>) -> Result<(), StateError> {
        let Some((store, c)) = self
            .changelogs
            .iter_mut()
            .enumerate()
            .find(|(_, c)| *c.changelog == *rec.topic)
        else {
            return Ok(());
        };
        c.applied_since_sync = true;
        let checkpoint = Checkpoint {
            next: rec.offset + 1,
            synced_at_ms: c.synced_at_ms,
        };
        self.stores.restore(store, rec.key, rec.value, checkpoint)?;
        self.restored[store].inc();
        Ok(())
    }

    /// Writes what restore has applied so far.
    pub fn write_restore_batch(&mut self) -> Result<(), StateError> {
        self.stores.write_restored()
    }

    /// Notes whether the restore of the store with changelog `changelog` has a tail to read:
    /// `remaining` records between where it starts and the changelog's end.
    pub fn restore_started(&mut self, changelog: &str, remaining: i64) {
        for c in self
            .changelogs
            .iter_mut()
            .filter(|c| *c.changelog == *changelog)
        {
            c.tail = remaining > 0;
        }
    }

    /// The changelog topics of the task's stores, in store order.
    pub fn changelogs(&self) -> impl Iterator<Item = &Arc<str>> {
        self.changelogs.iter().map(|c| &c.changelog)
    }

    /// Whether the restore of the store with changelog `changelog`, now read to its end, ran
    /// past the changelog's tombstone `retention`: a deletion in what it read may have been
    /// compacted away before it got there. Checked before [`Task::changelog_restored`].
    pub fn restore_outlived(
        &self,
        changelog: &str,
        retention: std::time::Duration,
        now_ms: i64,
    ) -> Option<Outlived> {
        self.outlived(changelog, retention, now_ms, |c| c.tail)
    }

    /// Whether the standby store with changelog `changelog`, which has just read its changelog
    /// to an end, read records after its last sync for longer than the changelog's tombstone
    /// `retention` allows ([`stale_since`]): a deletion among them may have been compacted away
    /// before it got there (a stall: its worker paused, its brokers away). As for a restore
    /// ([`Task::restore_outlived`]): rebuild a store that had been in sync (or resumed from a
    /// checkpoint); one still reading from empty would take as long again.
    pub fn standby_outlived(
        &self,
        changelog: &str,
        retention: std::time::Duration,
        now_ms: i64,
    ) -> Option<Outlived> {
        self.outlived(changelog, retention, now_ms, |c| c.applied_since_sync)
    }

    /// Whether the store with changelog `changelog`, if `read` says it read records since its
    /// last sync, read them later than `retention` allows: rebuild it if it had been in sync
    /// (or resumed from a checkpoint), accept it if it was reading from empty.
    fn outlived(
        &self,
        changelog: &str,
        retention: std::time::Duration,
        now_ms: i64,
        read: impl Fn(&StoreRestore) -> bool,
    ) -> Option<Outlived> {
        let c = self
            .changelogs
            .iter()
            .find(|c| *c.changelog == *changelog && read(c))?;
        let why = stale_since(c.synced_at_ms, retention, now_ms)?;
        Some(if c.resumed {
            Outlived::Rebuild(why)
        } else {
            Outlived::Accept(why)
        })
    }

    /// Why the standby store with changelog `changelog`, in sync with it before, would read
    /// its changelog's tail too late to trust it from now on, if it would: it was last in sync
    /// longer ago than the changelog's tombstone `retention` allows ([`stale_since`]; its
    /// worker was paused, its brokers away). Checked before reading on, so that no record read
    /// that late is ever written with the store's checkpoint.
    pub fn standby_stale(
        &self,
        changelog: &str,
        retention: std::time::Duration,
        now_ms: i64,
    ) -> Option<String> {
        let c = self
            .changelogs
            .iter()
            .find(|c| *c.changelog == *changelog && c.resumed)?;
        stale_since(c.synced_at_ms, retention, now_ms)
    }

    /// Marks the store with changelog `topic` restored; returns true when every store is, and the
    /// task is now running.
    pub fn changelog_restored(&mut self, topic: &str) -> Result<bool, StateError> {
        // Read to an end measured after the task opened: whatever follows was appended, or
        // reached by the broker's cleaner, after that.
        let began = self
            .changelogs
            .iter()
            .find(|c| *c.changelog == *topic)
            .map(|c| c.began_ms);
        if let Some(began) = began {
            self.mark_synced(topic, began)?;
        }
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

    /// Notes that the store with changelog `topic` holds every change the changelog had at
    /// `at_ms` (its end then was read): writes what was applied, and the checkpoint with that
    /// sync time, which decides whether a later restore of the tail can be trusted (see
    /// [`Checkpoint::stale_after`]).
    pub fn mark_synced(&mut self, topic: &str, at_ms: i64) -> Result<(), StateError> {
        self.write_restore_batch()?;
        let db = self.stores.db().clone();
        for (store, c) in self
            .changelogs
            .iter_mut()
            .enumerate()
            .filter(|(_, c)| *c.changelog == *topic)
        {
            c.synced_at_ms = Some(at_ms);
            // In sync: whatever is applied next is a tail, as after a checkpoint.
            c.resumed = true;
            c.applied_since_sync = false;
            if let Some(checkpoint) = db.checkpoint(&db.stores()[store])? {
                let mut batch = db.batch();
                let synced = Checkpoint {
                    synced_at_ms: c.synced_at_ms,
                    ..checkpoint
                };
                db.batch_checkpoint(&mut batch, store, synced);
                db.write(batch)?;
            }
        }
        Ok(())
    }

    /// Makes the task a standby replica: it only ever applies changelog records (counted as
    /// `tributary_standby_records_total`), and is never run.
    pub fn become_standby(&mut self) {
        self.state = TaskState::Standby;
        self.restored = self
            .stores
            .db()
            .stores()
            .iter()
            .map(|s| self.metrics.standby_records.with_label_values(&[s]))
            .collect();
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

    /// Drops the records of `topic` below `offset` from now on: the partition is being read
    /// again from there (exactly once, after an abort), and anything older still on its way
    /// from before the seek must not be processed.
    pub fn skip_below(&mut self, topic: &str, offset: i64) {
        let input = self.input_mut(topic);
        input.taken = offset;
    }

    /// The commit generation the task's sends belong to now.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Starts the task in its member's current commit generation.
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// Processes one record: runs the processor, sends its output, applies the error policy;
    /// then fires the stream-time timer if the record moved stream time past its point.
    pub fn process(
        &mut self,
        rec: &Record<'_>,
        collector: &dyn RecordSink,
        policy: &ErrorPolicy,
    ) -> Result<(), TaskError> {
        self.start(collector, policy)?;
        self.outputs.clear();
        self.stores.begin_record();
        let (result, late, (advanced, scheduled)) = {
            let mut ctx = Context::new(&self.info, &mut self.stores, &mut self.outputs)
                .with_stream_time(self.clock.stream_time());
            let result = self.processor.process(rec, &mut ctx);
            (result, ctx.late_records(), ctx.into_time())
        };
        match result {
            Ok(()) => {
                self.count_late(late);
                self.send_outputs(collector)?;
                self.clock.input();
                if let Some(t) = advanced.or(rec.timestamp) {
                    self.clock.observe(t);
                }
                for (kind, interval) in scheduled {
                    self.clock.schedule(kind, interval);
                }
            }
            Err(ProcessError::Fatal(reason)) => {
                self.stores.rollback();
                self.processor.rolled_back();
                return Err(TaskError::Fatal {
                    task: self.info.id,
                    reason,
                });
            }
            Err(ProcessError::Record { step, reason }) => {
                // Nothing of a failed record stays: not its output, not its state writes.
                self.stores.rollback();
                self.processor.rolled_back();
                self.clock.input();
                self.bad_record(rec, &step, &reason, collector, policy)?
            }
        }
        self.advance(rec);
        self.fire_stream_timer(collector, policy)
    }

    /// A tick of the wall clock at `now_ms` (epoch ms), between records: fires the wall-clock
    /// timer if due, advances an idle task's stream time (`processing.idle_advance_ms`), and
    /// fires the stream-time timer if stream time passed its point.
    pub fn tick(
        &mut self,
        now_ms: i64,
        collector: &dyn RecordSink,
        policy: &ErrorPolicy,
    ) -> Result<(), TaskError> {
        self.start(collector, policy)?;
        if self.clock.wall_due(now_ms) {
            self.run_hook(
                Hook::Punctuate(Punctuation::WallClock, now_ms),
                collector,
                policy,
            )?;
        }
        self.clock.tick(now_ms);
        self.fire_stream_timer(collector, policy)
    }

    /// Runs the processor's `init` once, before its first record or timer.
    fn start(&mut self, collector: &dyn RecordSink, policy: &ErrorPolicy) -> Result<(), TaskError> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        self.run_hook(Hook::Init, collector, policy)
    }

    fn fire_stream_timer(
        &mut self,
        collector: &dyn RecordSink,
        policy: &ErrorPolicy,
    ) -> Result<(), TaskError> {
        match self.clock.stream_due() {
            Some(now) => self.run_hook(
                Hook::Punctuate(Punctuation::StreamTime, now),
                collector,
                policy,
            ),
            None => Ok(()),
        }
    }

    /// Runs `init` or a punctuation like a record: its state writes and sent records take
    /// effect when it returns `Ok` and are undone on an error. A bad-record error of a
    /// punctuation stops the task under `on_error = "fail"` and is logged otherwise (there is
    /// no record to skip or dead-letter); one of `init` always stops it.
    fn run_hook(
        &mut self,
        hook: Hook,
        collector: &dyn RecordSink,
        policy: &ErrorPolicy,
    ) -> Result<(), TaskError> {
        self.outputs.clear();
        self.stores.begin_record();
        let (result, late, (advanced, scheduled)) = {
            let mut ctx = Context::new(&self.info, &mut self.stores, &mut self.outputs)
                .with_stream_time(self.clock.stream_time());
            let result = match hook {
                Hook::Init => self.processor.init(&mut ctx),
                Hook::Punctuate(kind, now) => self.processor.punctuate(kind, now, &mut ctx),
            };
            (result, ctx.late_records(), ctx.into_time())
        };
        match result {
            Ok(()) => {
                self.count_late(late);
                self.send_outputs(collector)?;
                if let Some(t) = advanced {
                    self.clock.observe(t);
                }
                for (kind, interval) in scheduled {
                    self.clock.schedule(kind, interval);
                }
                self.failed_hooks = 0;
                Ok(())
            }
            Err(ProcessError::Fatal(reason)) => {
                self.stores.rollback();
                self.processor.rolled_back();
                Err(TaskError::Fatal {
                    task: self.info.id,
                    reason: format!("{hook}: {reason}"),
                })
            }
            Err(ProcessError::Record { step, reason }) => {
                self.stores.rollback();
                self.processor.rolled_back();
                // An init is not called again: a task whose init failed would run without the
                // timers (and stream time) its processor sets up there.
                if policy.on_error == OnError::Fail || matches!(hook, Hook::Init) {
                    return Err(TaskError::Timer {
                        task: self.info.id,
                        pipeline: self.info.topology.clone(),
                        what: hook.to_string(),
                        reason: format!("step {step}: {reason}"),
                    });
                }
                // Undone, the punctuation's work comes back at its timer's next point and may
                // fail again as often as the timer fires: logged at the 1st, 2nd, 4th, ...
                // failure in a row.
                self.failed_hooks += 1;
                if self.failed_hooks.is_power_of_two() {
                    tracing::warn!(task = %self.info.id, %hook, step, reason, failed_in_a_row = self.failed_hooks, "punctuation failed; its writes and output were dropped (on_error = {})", policy.on_error.as_str());
                }
                Ok(())
            }
        }
    }

    fn count_late(&self, late: u64) {
        if late > 0 {
            self.metrics
                .late_records
                .with_label_values(&[&self.info.topology])
                .inc_by(late);
        }
    }

    /// Sends what the processor produced for a record or a punctuation that succeeded.
    fn send_outputs(&mut self, collector: &dyn RecordSink) -> Result<(), TaskError> {
        for out in &self.outputs {
            let o = Outgoing {
                topic: &out.topic,
                partition: out.partition,
                key: out.key.as_deref(),
                value: out.value.as_deref(),
                headers: &out.headers,
                timestamp: out.timestamp,
            };
            if let Err(e) = collector.send(o, SendKind::Output) {
                // Not done: a commit must not take its state writes (the outputs already
                // sent go with their transaction's abort under exactly once, and are
                // duplicates allowed under at least once).
                self.stores.rollback();
                self.processor.rolled_back();
                return Err(e.into());
            }
        }
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

    /// First half of a commit, the commit point: sends every dirty entry to the changelog
    /// (through `collector`, in the task's current generation), notes the input offsets the
    /// commit covers, and moves the task to the next generation: what it processes from now on
    /// belongs to the next commit. The point holds the state batch that is written once the
    /// generation's records are acknowledged and the input offsets committed
    /// ([`Task::finish_commit`]). If the offset commit fails, the caller drops the point: the
    /// local checkpoint stays at the last commit known to have succeeded, and the changes wait
    /// in the cache for the next commit (or are dropped with the task, dirty, if its partition
    /// turns out to be lost).
    pub fn prepare_commit(&mut self, collector: &dyn RecordSink) -> Result<CommitPoint, TaskError> {
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
        let offsets = self
            .inputs
            .iter()
            .filter_map(|i| {
                // Only what moved since the last commit that went through.
                i.position
                    .filter(|p| i.committed != Some(*p))
                    .map(|p| (i.topic.clone(), p))
            })
            .collect();
        let point = CommitPoint {
            task: self.info.id,
            batch,
            offsets,
        };
        self.generation += 1;
        Ok(point)
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

    /// Notes that every effect of the records before `point` is acknowledged: its offsets are
    /// about to be offered to the group.
    pub fn offsets_durable(&mut self, point: &CommitPoint) {
        for (topic, offset) in &point.offsets {
            self.input_mut(topic).durable = Some(*offset);
        }
    }

    /// Every input position (topic, next offset), committed or not.
    pub fn positions(&self) -> impl Iterator<Item = (&Arc<str>, i64)> {
        self.inputs
            .iter()
            .filter_map(|i| i.position.map(|p| (&i.topic, p)))
    }

    /// Notes that the input offsets of `point` were committed.
    pub fn offsets_committed(&mut self, point: &CommitPoint) {
        for (topic, offset) in &point.offsets {
            self.input_mut(topic).committed = Some(*offset);
        }
    }

    /// Second half of a commit: writes the state batch together with the checkpoints of the
    /// acknowledged changelog offsets (`acks`: changelog topic and partition → highest
    /// acknowledged offset).
    ///
    /// `owned_since_ms`: set when the group coordinator confirmed during this commit that the
    /// member still owns its partitions, to a time before the commit sent anything. Every store
    /// is then in sync with its changelog as of that time (nobody else writes a partition's
    /// changelog while its owner holds it), and its checkpoint says so, written or not.
    pub fn finish_commit(
        &mut self,
        point: CommitPoint,
        acks: &HashMap<(String, i32), i64>,
        owned_since_ms: Option<i64>,
    ) -> Result<(), TaskError> {
        let mut batch = point.batch;
        let db = self.stores.db().clone();
        let err = |source| TaskError::State {
            task: self.info.id,
            source,
        };
        for (store, c) in self.changelogs.iter_mut().enumerate() {
            let acked = acks.get(&(c.changelog.to_string(), self.info.id.partition));
            let next = match (acked, owned_since_ms) {
                (Some(offset), _) => Some(offset + 1),
                // Nothing new in this store: its time is refreshed now and then, not with
                // every commit.
                (None, Some(owned))
                    if c.synced_at_ms
                        .is_some_and(|at| (0..IDLE_SYNC_REFRESH_MS).contains(&(owned - at))) =>
                {
                    None
                }
                (None, Some(_)) => db
                    .checkpoint(&db.stores()[store])
                    .map_err(err)?
                    .map(|c| c.next),
                (None, None) => None,
            };
            if let Some(next) = next {
                // Unconfirmed, the time stays: every later write still came after it.
                c.synced_at_ms = owned_since_ms.or(c.synced_at_ms);
                let checkpoint = Checkpoint {
                    next,
                    synced_at_ms: c.synced_at_ms,
                };
                db.batch_checkpoint(&mut batch, store, checkpoint);
            }
        }
        db.write(batch).map_err(err)?;
        self.stores.commit_succeeded();
        Ok(())
    }

    /// Drops everything not committed (dirty cache entries): used when the partition was lost
    /// and another member may already own it.
    pub fn discard(&mut self) {
        self.stores.discard();
    }
}

/// A task's commit point ([`Task::prepare_commit`]): the input offsets a commit covers and the
/// state batch it writes, once the generation before it is acknowledged.
#[derive(Debug)]
pub struct CommitPoint {
    task: TaskId,
    batch: Batch,
    /// (topic, next offset) of every source partition whose position moved since the last
    /// commit that went through.
    offsets: Vec<(Arc<str>, i64)>,
}

impl CommitPoint {
    /// The task it belongs to.
    pub fn task(&self) -> TaskId {
        self.task
    }

    /// The input offsets to commit: (topic, partition, next offset).
    pub fn offsets(&self) -> impl Iterator<Item = (&Arc<str>, i32, i64)> {
        self.offsets
            .iter()
            .map(|(topic, offset)| (topic, self.task.partition, *offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::Nothing;
    use std::collections::BTreeMap;

    fn open(dir: &std::path::Path) -> Task {
        let info = TaskInfo {
            id: TaskId {
                topology: 0,
                partition: 3,
            },
            topology: "t".into(),
            app_id: "app".into(),
            partitions: Arc::new(BTreeMap::new()),
        };
        Task::open(
            info,
            dir,
            &["a".to_string(), "b".to_string()],
            vec![Arc::from("cl-a"), Arc::from("cl-b")],
            Box::new(Nothing),
            &StateMemory::new(100, 8, 16),
            Metrics::new(),
        )
        .unwrap()
    }

    fn checkpoint(task: &Task, store: &str) -> Option<Checkpoint> {
        task.db().checkpoint(store).unwrap()
    }

    fn restore(task: &mut Task, topic: &str, offset: i64) {
        let rec = ChangelogRecord {
            topic,
            partition: 3,
            offset,
            key: b"k",
            value: Some(b"1"),
        };
        task.apply_changelog(rec).unwrap();
        task.write_restore_batch().unwrap();
    }

    fn acked(topic: &str, offset: i64) -> HashMap<(String, i32), i64> {
        HashMap::from([((topic.to_string(), 3), offset)])
    }

    /// The sync time a checkpoint carries (see `Checkpoint`) is never later than the truth: a
    /// restore keeps the time the store had, a finished restore or a commit whose ownership the
    /// coordinator confirmed moves it, an unconfirmed commit does not.
    #[test]
    fn checkpoints_carry_when_their_store_was_last_in_sync() {
        let dir = tempfile::tempdir().unwrap();
        let before = now_ms();
        let mut task = open(dir.path());
        let after = now_ms();
        let opened = |c: Option<Checkpoint>| {
            let at = c.unwrap().synced_at_ms.unwrap();
            assert!(
                (before..=after).contains(&at),
                "{at} not in {before}..={after}"
            );
            at
        };

        // A store restored from nothing is in sync as of the open.
        restore(&mut task, "cl-a", 4);
        let opened_at = opened(checkpoint(&task, "a"));
        assert_eq!(checkpoint(&task, "a").unwrap().next, 5);
        task.changelog_restored("cl-a").unwrap();
        assert!(task.changelog_restored("cl-b").unwrap(), "running");
        assert_eq!(
            checkpoint(&task, "b"),
            None,
            "an empty store has no checkpoint"
        );

        // Unconfirmed: the acknowledged store moves on, with the time it had.
        let batch = task.prepare_commit(&Discard).unwrap();
        task.finish_commit(batch, &acked("cl-b", 9), None).unwrap();
        let b = checkpoint(&task, "b").unwrap();
        assert_eq!((b.next, b.synced_at_ms), (10, Some(opened_at)));

        // Confirmed: every store with a checkpoint is in sync as of the commit's start (one
        // without news only once its time is a minute old).
        let batch = task.prepare_commit(&Discard).unwrap();
        task.finish_commit(batch, &HashMap::new(), Some(opened_at + 59_000))
            .unwrap();
        assert_eq!(
            checkpoint(&task, "a").unwrap().synced_at_ms,
            Some(opened_at)
        );
        let later = after + 120_000;
        let batch = task.prepare_commit(&Discard).unwrap();
        task.finish_commit(batch, &HashMap::new(), Some(later))
            .unwrap();
        for (store, next) in [("a", 5), ("b", 10)] {
            assert_eq!(
                checkpoint(&task, store),
                Some(Checkpoint {
                    next,
                    synced_at_ms: Some(later)
                }),
                "store {store}"
            );
        }
        drop(task);

        // Reopened: restoring the tail keeps the old time until the restore is done.
        let mut task = open(dir.path());
        restore(&mut task, "cl-a", 7);
        assert_eq!(
            checkpoint(&task, "a"),
            Some(Checkpoint {
                next: 8,
                synced_at_ms: Some(later)
            })
        );
        // A store emptied for a rebuild is in sync as of when it was emptied.
        task.clear_store("cl-b").unwrap();
        restore(&mut task, "cl-b", 0);
        assert!(checkpoint(&task, "b").unwrap().synced_at_ms.unwrap() >= after);
        task.changelog_restored("cl-a").unwrap();
        let a = checkpoint(&task, "a").unwrap();
        assert_eq!(a.next, 8);
        assert!(a.synced_at_ms.unwrap() >= after && a.synced_at_ms.unwrap() < later);
    }

    /// A tail restore that ran past the tombstone retention is redone from empty; a restore from
    /// empty that did is accepted (a rebuild would take as long), and one that read nothing
    /// missed nothing.
    #[test]
    fn a_restore_that_outlived_the_tombstone_retention_is_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let mut task = open(dir.path());
        restore(&mut task, "cl-a", 0);
        let batch = task.prepare_commit(&Discard).unwrap();
        task.changelog_restored("cl-a").unwrap();
        task.changelog_restored("cl-b").unwrap();
        task.finish_commit(batch, &acked("cl-b", 0), Some(now_ms()))
            .unwrap();
        drop(task);

        let retention = std::time::Duration::from_secs(100);
        let mut task = open(dir.path());
        let now = now_ms();
        task.restore_started("cl-a", 0);
        assert_eq!(
            task.restore_outlived("cl-a", retention, now + 200_000),
            None,
            "nothing to read, nothing missed"
        );
        task.restore_started("cl-a", 1);
        restore(&mut task, "cl-a", 1);
        restore(&mut task, "cl-b", 1);
        assert_eq!(
            task.restore_outlived("cl-a", retention, now),
            None,
            "in time"
        );
        assert!(matches!(
            task.restore_outlived("cl-a", retention, now + 200_000),
            Some(Outlived::Rebuild(_))
        ));
        task.clear_store("cl-a").unwrap();
        task.restore_started("cl-a", 2);
        restore(&mut task, "cl-a", 0);
        assert!(matches!(
            task.restore_outlived("cl-a", retention, now + 200_000),
            Some(Outlived::Accept(_))
        ));
    }

    /// Emptying one store while others restore keeps what they restored so far.
    #[test]
    fn emptying_a_store_keeps_what_the_others_restored() {
        let dir = tempfile::tempdir().unwrap();
        let mut task = open(dir.path());
        let rec = |topic, offset| ChangelogRecord {
            topic,
            partition: 3,
            offset,
            key: b"k",
            value: Some(b"1"),
        };
        task.apply_changelog(rec("cl-a", 0)).unwrap();
        task.apply_changelog(rec("cl-b", 6)).unwrap();
        task.clear_store("cl-a").unwrap();
        assert_eq!(checkpoint(&task, "a"), None);
        assert_eq!(task.db().get(0, b"k").unwrap(), None);
        assert_eq!(checkpoint(&task, "b").unwrap().next, 7);
        assert_eq!(task.db().get(1, b"k").unwrap().as_deref(), Some(&b"1"[..]));
    }

    /// Writes the record's value under its key and sends two outputs.
    struct WriteAndSendTwo;
    impl Processor for WriteAndSendTwo {
        fn process(
            &mut self,
            rec: &Record<'_>,
            ctx: &mut crate::processor::Context<'_>,
        ) -> Result<(), ProcessError> {
            let key = rec.key.unwrap_or_default();
            ctx.store::<u64>("a")?.put(key, &7)?;
            for _ in 0..2 {
                ctx.send(OutputRecord::new("out", Some(key.to_vec()), None));
            }
            Ok(())
        }
    }

    /// Takes `ok` records, then refuses every one.
    struct Refusing {
        ok: std::cell::Cell<usize>,
    }
    impl RecordSink for Refusing {
        fn send(&self, out: Outgoing<'_>, _: SendKind) -> Result<(), CollectorError> {
            match self.ok.get() {
                0 => Err(CollectorError::Send {
                    topic: out.topic.to_string(),
                    reason: "refused".into(),
                }),
                n => {
                    self.ok.set(n - 1);
                    Ok(())
                }
            }
        }
    }

    /// A record whose output the producer refuses half-way leaves no state behind: a commit
    /// taken before the task's failure is dealt with must not carry part of it.
    #[test]
    fn a_record_whose_output_is_refused_leaves_no_state() {
        let dir = tempfile::tempdir().unwrap();
        let info = TaskInfo {
            id: TaskId {
                topology: 0,
                partition: 0,
            },
            topology: "t".into(),
            app_id: "app".into(),
            partitions: Arc::new(BTreeMap::new()),
        };
        let mut task = Task::open(
            info,
            dir.path(),
            &["a".to_string()],
            vec![Arc::from("cl-a")],
            Box::new(WriteAndSendTwo),
            &StateMemory::new(100, 8, 16),
            Metrics::new(),
        )
        .unwrap();
        task.changelog_restored("cl-a").unwrap();
        let policy = ErrorPolicy {
            on_error: OnError::Dlq,
            dlq_topic: "dlq".into(),
        };
        let rec = |offset, key: &'static [u8]| Record {
            topic: "in",
            partition: 0,
            offset,
            timestamp: None,
            key: Some(key),
            value: None,
            headers: crate::types::Headers::none(),
        };
        let sink = Refusing {
            ok: std::cell::Cell::new(3),
        };
        task.process(&rec(0, b"k1"), &sink, &policy).unwrap();
        assert!(task.process(&rec(1, b"k2"), &sink, &policy).is_err());
        assert_eq!(
            task.store_mut()
                .store::<u64>("a")
                .unwrap()
                .get(b"k1")
                .unwrap(),
            Some(7)
        );
        assert_eq!(
            task.store_mut()
                .store::<u64>("a")
                .unwrap()
                .get(b"k2")
                .unwrap(),
            None,
            "the refused record's write is undone"
        );
        assert_eq!(
            task.positions().map(|(_, p)| p).collect::<Vec<_>>(),
            [1],
            "the refused record is not done"
        );
    }

    /// Drops everything sent.
    struct Discard;
    impl RecordSink for Discard {
        fn send(&self, _: Outgoing<'_>, _: SendKind) -> Result<(), CollectorError> {
            Ok(())
        }
    }
}
