//! One consumer-group member: its consumer, its tasks and the loop that drives them (Kafka
//! Streams' `StreamThread`).
//!
//! The member runs on a thread of its own. Each turn of its loop:
//!
//! 1. polls a batch of records (rebalance callbacks run inside `poll`, on this thread);
//! 2. routes each record to its task: processed at once when the task is running and has
//!    nothing queued, queued otherwise; a queue at `processing.max_buffered_records` pauses its
//!    partition, which resumes once the queue has drained to half;
//! 3. drains queues, within a time budget so the loop keeps polling;
//! 4. advances restores: changelog records go into the restoring tasks' RocksDB; a task whose
//!    changelogs are all read to the end starts running and its partition resumes;
//! 5. commits when `processing.commit_interval_ms` has passed or a cache is full.
//!
//! A commit (also on revoke and on shutdown) is: flush every task's cache into its changelog →
//! wait for every produced record's acknowledgement → commit the input offsets → write each
//! task's state batch with its acknowledged changelog offset. A crash between any two steps
//! only causes reprocessing.
//!
//! The consumer context shares the member's state ([`Core`]) through a mutex that the loop
//! releases while it polls, so the rebalance callbacks can commit and close revoked tasks
//! before their partitions are given up, and open and pause newly assigned ones.

mod exactly_once;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::collector::{Collector, CollectorError, TxnError};
use super::restore::RestoreConsumer;
use super::{message_headers, own_message};
use crate::config::{Config, Guarantee};
use crate::metrics::Metrics;
use crate::processor::{changelog_topic, TaskInfo, Topology};
use crate::state::{now_ms, StateMemory};
use crate::status::{MemberStatus, StatusBoard, TaskStatus};
use crate::task::{ErrorPolicy, Outlived, Task, TaskError, TaskState};
use crate::types::{Record, TaskId};

/// Records taken from the consumer per loop turn.
const POLL_BATCH: usize = 2000;
/// Time a loop turn may spend processing before it goes back to polling.
const PROCESS_BUDGET: Duration = Duration::from_millis(100);
/// Changelog records applied per loop turn.
const RESTORE_BATCH: usize = 10_000;
/// Offset commits that may fail in a row before the member gives up (it also gives up when
/// they have kept failing for longer than `processing.commit_timeout_ms`).
const MAX_FAILED_COMMITS: u32 = 30;
/// Failures in a row before their duration counts: with a commit interval longer than the
/// commit timeout, two failures would otherwise be enough.
const MIN_FAILED_COMMITS_TIMED: u32 = 3;
/// How long a member with no input moving goes without asking the group coordinator whether it
/// still owns its partitions: the answer refreshes its stores' sync times (see
/// [`crate::state::Checkpoint`]), so that a restart after a quiet spell restores the tail
/// rather than rebuilding every store.
const OWNERSHIP_REFRESH: Duration = Duration::from_secs(60);
/// How long the ownership check of a quiet member may hold up its loop.
const QUIET_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the member republishes its status.
const STATUS_INTERVAL: Duration = Duration::from_millis(250);

/// Errors that stop a member (and with it the worker).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemberError {
    /// A client could not be created or subscribed.
    #[error("member {member}: {what}: {source}")]
    Kafka {
        /// Member index.
        member: usize,
        /// What was being done.
        what: String,
        /// The client error.
        #[source]
        source: KafkaError,
    },
    /// The producer could not be created.
    #[error("member {member}: {source}")]
    Collector {
        /// Member index.
        member: usize,
        /// The error.
        #[source]
        source: CollectorError,
    },
    /// The transactional producer could not be initialised (exactly once).
    #[error("member {member}: {source}")]
    Transactions {
        /// Member index.
        member: usize,
        /// The error.
        #[source]
        source: TxnError,
    },
    /// A task failed; nothing after the last commit was committed.
    #[error("{0}")]
    Task(String),
}

/// Everything a member needs to start.
#[derive(Debug, Clone)]
pub struct MemberSetup {
    /// Member index within the worker (0..app.threads).
    pub index: usize,
    /// The worker's configuration.
    pub config: Arc<Config>,
    /// Resolved bootstrap servers.
    pub bootstrap: String,
    /// The topologies every task is built from.
    pub topologies: Arc<Vec<Topology>>,
    /// Partition counts of every topic the topologies read or write.
    pub partitions: Arc<BTreeMap<String, i32>>,
    /// Each changelog's tombstone retention (`delete.retention.ms`); empty where the cluster
    /// keeps no topic configs (the embedded cluster, which never compacts).
    pub tombstone_retention: Arc<BTreeMap<String, Duration>>,
    /// Metrics.
    pub metrics: Metrics,
    /// Where status is published.
    pub status: Arc<StatusBoard>,
    /// Stops the member: it finishes the record at hand, commits and leaves the group.
    pub shutdown: CancellationToken,
    /// Under exactly once, what the worker's `transactional.id`s start with (the member adds
    /// its index); see [`crate::state::identity`].
    pub transactional_id: Option<String>,
    /// The memory the worker's task state shares (see [`StateMemory`]).
    pub state_memory: StateMemory,
}

/// Where a source topic's records go.
#[derive(Debug, Clone)]
struct SourceRoute {
    topology: usize,
    topic: Arc<str>,
}

/// A partition whose records were left in Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rewind {
    /// Paused; the first record left behind is at this offset.
    Left(i64),
    /// Resumed after a seek back to `offset`, done in member epoch `epoch`. Records of the
    /// partition polled before the seek (in an earlier epoch; the loop polls a batch before it
    /// routes it) are dropped: they come again. The first record polled after the seek is where
    /// the partition resumes: normally `offset` itself, or a later one when retention or
    /// compaction removed `offset` meanwhile (librdkafka then resets to the log start).
    Seeking { offset: i64, epoch: u64 },
}

/// What to do with a polled record of a partition that is being re-read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RewindVerdict {
    /// Left in Kafka (still paused) or stale (polled before the seek): drop it.
    Drop,
    /// The first record after the seek: the rewind is over; route it normally.
    Resumed,
}

impl Rewind {
    fn verdict(self, offset: i64, polled_epoch: u64) -> RewindVerdict {
        match self {
            Rewind::Left(_) => RewindVerdict::Drop,
            Rewind::Seeking { epoch, .. } if polled_epoch < epoch => RewindVerdict::Drop,
            // After the seek librdkafka delivers from the target or, if that is gone, the
            // first offset that still exists; an earlier offset cannot come.
            Rewind::Seeking { offset: target, .. } if offset < target => RewindVerdict::Drop,
            Rewind::Seeking { .. } => RewindVerdict::Resumed,
        }
    }
}

/// The member's state, shared between its loop and its consumer context.
struct Core {
    setup: MemberSetup,
    state_dir: PathBuf,
    routes: HashMap<String, SourceRoute>,
    changelog_routes: HashMap<String, usize>,
    tasks: BTreeMap<TaskId, Task>,
    /// Source topics of each task that are currently assigned to this member.
    assigned: BTreeMap<TaskId, BTreeSet<Arc<str>>>,
    /// Tasks assigned whose directory is still locked by another member of this process.
    pending_open: BTreeSet<TaskId>,
    /// Task creation order, compared with the epoch a record was polled in.
    task_epoch: HashMap<TaskId, u64>,
    /// Partitions with records left in Kafka because their task could not open yet (its state
    /// directory was locked): paused, and re-read from the first such record on resume.
    rewind: HashMap<(Arc<str>, i32), Rewind>,
    collector: Collector,
    restore: RestoreConsumer,
    paused: HashSet<(Arc<str>, i32)>,
    policy: ErrorPolicy,
    failed: Option<String>,
    joined: bool,
    last_commit: Instant,
    last_status: Instant,
    /// Changelog offsets acknowledged for commits that failed: the next successful commit's
    /// checkpoints cover them too.
    pending_acks: HashMap<(String, i32), i64>,
    /// Offset commits failed in a row.
    failed_commits: u32,
    /// When the first of the commits failed in a row gave up.
    failing_since: Option<Instant>,
    /// When a commit last had the group coordinator confirm this member's ownership, or asked
    /// for it because the member was quiet.
    last_confirmed: Instant,
    /// The member's consumer, for offset commits from a helper thread (weak: the consumer's
    /// context holds this core).
    group_consumer: Weak<MemberConsumer>,
    /// Incremented by every rebalance callback.
    epoch: Arc<AtomicU64>,
    /// The producer's settings, to replace it (exactly once, after a fatal error).
    producer_config: ClientConfig,
    /// Where the member's transactions stand (exactly once).
    txn: exactly_once::Transactions,
    /// Set by an aborted transaction until every input partition is marked for a rewind to
    /// its committed offset.
    rewind_pending: bool,
    /// Where the aborted transaction's tasks started in each input partition, for partitions
    /// the group has no committed offset for.
    rewind_fallback: HashMap<(Arc<str>, i32), i64>,
    /// Transactions failed since the last committed one.
    failed_in_a_row: u32,
    /// True when the last restore poll applied records: the loop then polls without waiting.
    restore_busy: bool,
}

/// The consumer context: rebalance callbacks act on the member's [`Core`].
struct MemberContext {
    core: Arc<Mutex<Core>>,
    metrics: Metrics,
    member: usize,
    epoch: Arc<AtomicU64>,
}

type MemberConsumer = BaseConsumer<MemberContext>;

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    // A panic under this lock is a bug in the member; its thread is gone, and so is the worker.
    core.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ClientContext for MemberContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[topic, &partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, consumer: &MemberConsumer, rebalance: &Rebalance<'_>) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let lost = consumer.assignment_lost();
                let kind = if lost { "lost" } else { "revoke" };
                self.metrics
                    .rebalances
                    .with_label_values(&[&self.member.to_string(), kind])
                    .inc();
                let tps = list(tpl);
                tracing::info!(member = self.member, partitions = ?tps, lost, "partitions revoked");
                lock(&self.core).on_revoke(&tps, lost);
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                tracing::error!(member = self.member, error = %e, "rebalance failed")
            }
        }
    }

    fn post_rebalance(&self, consumer: &MemberConsumer, rebalance: &Rebalance<'_>) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if let Rebalance::Assign(tpl) = rebalance {
            self.metrics
                .rebalances
                .with_label_values(&[&self.member.to_string(), "assign"])
                .inc();
            let tps = list(tpl);
            tracing::info!(member = self.member, partitions = ?tps, "partitions assigned");
            lock(&self.core).on_assign(consumer, &tps);
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            tracing::warn!(member = self.member, error = %e, "offset commit failed");
        }
    }
}

/// Commits offsets, retrying a few times when the coordinator is only busy (a rebalance is
/// completing, the coordinator is moving or loading), all within `budget`
/// (`processing.commit_timeout_ms`): a failed commit leaves the checkpoints behind, and the
/// work since the last one is redone if the partitions move before the next.
fn commit_offsets(
    consumer: &Weak<MemberConsumer>,
    tpl: &TopicPartitionList,
    budget: Duration,
) -> Result<(), String> {
    const RETRIES: u32 = 5;
    const BACKOFF: Duration = Duration::from_millis(200);
    let start = Instant::now();
    let mut attempt = 0;
    loop {
        match commit_within(consumer, tpl, budget.saturating_sub(start.elapsed())) {
            Err(CommitFailure::Refused(KafkaError::ConsumerCommit(code)))
                if attempt < RETRIES
                    && commit_retriable(code)
                    && start.elapsed() + BACKOFF < budget =>
            {
                attempt += 1;
                tracing::debug!(error = %code, attempt, "offset commit refused for now; retrying");
                std::thread::sleep(BACKOFF);
            }
            Err(failure) => return Err(failure.to_string()),
            Ok(()) => return Ok(()),
        }
    }
}

/// Why an offset commit attempt failed.
#[derive(Debug, thiserror::Error)]
enum CommitFailure {
    #[error("{0}")]
    Refused(KafkaError),
    #[error(
        "the offset commit got no answer within processing.commit_timeout_ms ({0} ms); is the \
         group coordinator reachable?"
    )]
    TimedOut(u128),
    #[error("the member's consumer is gone")]
    Gone,
    #[error("starting the offset-commit thread: {0}")]
    Spawn(std::io::Error),
}

/// One synchronous offset commit, waited for at most `timeout`. librdkafka's synchronous
/// commit has no timeout of its own: while the group coordinator cannot be reached it waits
/// for one indefinitely (a frozen broker held it for minutes). So it runs on a helper thread;
/// if the wait runs out the attempt counts as failed, and whatever it does later is ignored
/// (the next commit's ownership check offers the durable offsets again).
fn commit_within(
    consumer: &Weak<MemberConsumer>,
    tpl: &TopicPartitionList,
    timeout: Duration,
) -> Result<(), CommitFailure> {
    let consumer = consumer.upgrade().ok_or(CommitFailure::Gone)?;
    let tpl = tpl.clone();
    let (done, result) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("offset-commit".into())
        .spawn(move || {
            let _ = done.send(consumer.commit(&tpl, CommitMode::Sync));
        })
        .map_err(CommitFailure::Spawn)?;
    match result.recv_timeout(timeout) {
        Ok(outcome) => outcome.map_err(CommitFailure::Refused),
        Err(_) => Err(CommitFailure::TimedOut(timeout.as_millis())),
    }
}

/// Commit errors that say "not now" rather than "not yours". `StaleMemberEpoch` (consumer
/// protocol): the broker moved the member to a new epoch in a heartbeat whose answer had not
/// arrived yet; librdkafka sends the next heartbeat at once on this error but does not retry
/// a manual commit itself.
fn commit_retriable(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::RebalanceInProgress
            | RDKafkaErrorCode::StaleMemberEpoch
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::CoordinatorLoadInProgress
            | RDKafkaErrorCode::CoordinatorNotAvailable
            | RDKafkaErrorCode::NotCoordinator
    )
}

fn list(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

fn single(topic: &str, partition: i32) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    tpl
}

impl Core {
    fn member(&self) -> usize {
        self.setup.index
    }

    /// Passes on a task error, except that under exactly once a record the producer would not
    /// take (its transaction already failed, or the record is refused) aborts the transaction
    /// instead: the member goes back to its last commit and goes on.
    fn absorb(&mut self, result: Result<(), TaskError>) -> Result<(), String> {
        match result {
            Err(TaskError::Collector(e)) if self.exactly_once() => {
                if self.txn == exactly_once::Transactions::Open {
                    self.abort_and_rewind(TxnError::Abort(format!("sending: {e}")));
                }
                Ok(())
            }
            other => other.map_err(|e| e.to_string()),
        }
    }

    /// True under `processing.guarantee = "exactly_once"`.
    fn exactly_once(&self) -> bool {
        self.setup.config.processing.guarantee == Guarantee::ExactlyOnce
    }

    fn fail(&mut self, reason: String) {
        tracing::error!(member = self.member(), %reason, "member failed; nothing more will be committed");
        if self.failed.is_none() {
            self.failed = Some(reason);
        }
    }

    fn task_for(&self, topic: &str, partition: i32) -> Option<TaskId> {
        self.routes.get(topic).map(|r| TaskId {
            topology: r.topology,
            partition,
        })
    }

    /// Source partitions of a task that are assigned to this member.
    fn task_partitions(&self, id: TaskId) -> Vec<Arc<str>> {
        self.assigned
            .get(&id)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Warns when this member holds only some of a task's source partitions. The config
    /// allows several source topics only with an assignor that co-partitions them, so this
    /// should never happen; if it does, another member may be running the same task.
    fn warn_if_split(&self, id: TaskId) {
        let Some(held) = self.assigned.get(&id) else {
            return;
        };
        let missing = self.setup.topologies[id.topology].missing_sources(held);
        if !missing.is_empty() {
            tracing::warn!(member = self.member(), task = %id, partition = id.partition, ?missing, "this member holds only some of task {id}'s source partitions: another member may run the same task and write its changelog partition (the assignor does not co-partition the source topics)");
        }
    }

    fn on_assign(&mut self, consumer: &MemberConsumer, tps: &[(String, i32)]) {
        self.joined = true;
        let mut new_tasks = BTreeSet::new();
        let mut touched = BTreeSet::new();
        for (topic, partition) in tps {
            let Some(route) = self.routes.get(topic).cloned() else {
                tracing::warn!(topic, "assigned a topic no topology reads; ignoring it");
                continue;
            };
            let id = TaskId {
                topology: route.topology,
                partition: *partition,
            };
            self.assigned
                .entry(id)
                .or_default()
                .insert(route.topic.clone());
            touched.insert(id);
            if !self.tasks.contains_key(&id) {
                new_tasks.insert(id);
            }
        }
        for &id in &touched {
            self.warn_if_split(id);
        }
        for id in new_tasks {
            self.pending_open.insert(id);
        }
        self.open_pending(consumer);
        // Input of tasks that cannot run yet waits, paused, until they do.
        for (topic, partition) in tps {
            if let Some(id) = self.task_for(topic, *partition) {
                let running = self
                    .tasks
                    .get(&id)
                    .is_some_and(|t| t.state() == TaskState::Running);
                if !running {
                    self.pause(consumer, topic, *partition);
                }
            }
        }
        self.publish_status();
    }

    /// Opens the tasks waiting in `pending_open`; leaves those whose directory is still locked,
    /// and all of them while an aborted transaction is being recovered from.
    fn open_pending(&mut self, consumer: &MemberConsumer) {
        if !self.ready_for_tasks() {
            return;
        }
        let pending: Vec<TaskId> = self.pending_open.iter().copied().collect();
        for id in pending {
            match self.open_task(id) {
                Ok(true) => {
                    self.pending_open.remove(&id);
                    if self
                        .tasks
                        .get(&id)
                        .is_some_and(|t| t.state() == TaskState::Running)
                    {
                        self.resume_task(consumer, id);
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    self.pending_open.remove(&id);
                    self.fail(format!("opening task {id}: {e}"));
                }
            }
        }
    }

    /// Opens a task and starts its restore. `Ok(false)`: its directory is locked, try again later.
    fn open_task(&mut self, id: TaskId) -> Result<bool, String> {
        let topology = &self.setup.topologies[id.topology];
        let app_id = self.setup.config.app.id.clone();
        let info = TaskInfo {
            id,
            topology: topology.name.clone(),
            app_id: app_id.clone(),
            partitions: self.setup.partitions.clone(),
        };
        let changelogs: Vec<Arc<str>> = topology
            .stores
            .iter()
            .map(|s| Arc::from(changelog_topic(&app_id, s)))
            .collect();
        let dir = self.state_dir.join(id.to_string());
        let processor = (topology.factory)(&info);
        let task = match Task::open(
            info,
            &dir,
            &topology.stores,
            changelogs,
            processor,
            &self.setup.state_memory,
            self.setup.metrics.clone(),
        ) {
            Ok(task) => task,
            Err(crate::state::StateError::Locked { .. }) => {
                tracing::debug!(task = %id, "state directory still locked; will retry");
                return Ok(false);
            }
            Err(e) => return Err(e.to_string()),
        };
        let mut task = task;
        self.setup.status.register_db(id, task.db().clone());
        if !task.start_if_stateless() {
            for (changelog, checkpoint) in task.restore_points().map_err(|e| e.to_string())? {
                let retention = self.setup.tombstone_retention.get(&*changelog).copied();
                let start = self
                    .restore
                    .start(&changelog, id.partition, checkpoint, retention)
                    .map_err(|e| {
                        format!("starting restore of {changelog}/{}: {e}", id.partition)
                    })?;
                if let Some(why) = &start.stale {
                    tracing::warn!(task = %id, changelog = %changelog, reason = %why, "local state is stale; emptying it for a full restore");
                    task.clear_store(&changelog).map_err(|e| e.to_string())?;
                }
                task.restore_started(&changelog, start.remaining);
                tracing::info!(task = %id, changelog = %changelog, from = start.from, remaining = start.remaining, "restoring");
            }
        }
        self.task_epoch
            .insert(id, self.epoch.load(Ordering::SeqCst));
        self.tasks.insert(id, task);
        Ok(true)
    }

    fn on_revoke(&mut self, tps: &[(String, i32)], lost: bool) {
        if !lost && self.failed.is_none() {
            if let Err(e) = self.commit() {
                self.fail(e.to_string());
            }
        }
        if lost && self.exactly_once() && self.txn == exactly_once::Transactions::Open {
            // The open transaction holds records of the lost partitions, which their new
            // owner processes again; it must not commit (the coordinator would refuse its
            // offsets anyway). The tasks kept are rewound with it.
            self.abort_and_rewind(TxnError::Abort("partitions were lost".into()));
        }
        if lost {
            // The failures so far are explained (the member was fenced); its tasks and their
            // uncommitted changes go now, and its next commits start afresh.
            self.failed_commits = 0;
            self.failing_since = None;
        }
        // Tasks that keep some of their source partitions.
        let mut kept = BTreeSet::new();
        for (topic, partition) in tps {
            self.setup
                .metrics
                .consumer_lag
                .remove_label_values(&[topic, &partition.to_string()])
                .ok();
            let Some(id) = self.task_for(topic, *partition) else {
                continue;
            };
            self.paused
                .retain(|(t, p)| !(**t == **topic && *p == *partition));
            let now_empty = match self.assigned.get_mut(&id) {
                Some(set) => {
                    set.retain(|t| **t != **topic);
                    set.is_empty()
                }
                None => false,
            };
            if now_empty {
                self.assigned.remove(&id);
                self.close_task(id, lost || self.failed.is_some());
            } else {
                kept.insert(id);
            }
        }
        for id in kept {
            self.warn_if_split(id);
        }
        self.publish_status();
    }

    /// Closes a task; `dirty`: drop its uncommitted work (the partition was lost or the member
    /// failed), otherwise it was just committed.
    fn close_task(&mut self, id: TaskId, dirty: bool) {
        self.pending_open.remove(&id);
        let sources = &self.setup.topologies[id.topology].sources;
        self.rewind
            .retain(|(t, p), _| *p != id.partition || !sources.iter().any(|s| **s == **t));
        self.task_epoch.remove(&id);
        let Some(mut task) = self.tasks.remove(&id) else {
            return;
        };
        for changelog in task.changelogs() {
            self.restore.stop(changelog, id.partition);
            // Acknowledgements of a failed commit belong to this incarnation of the task; a
            // later one starts from its own checkpoint.
            self.pending_acks
                .remove(&(changelog.to_string(), id.partition));
        }
        if dirty {
            task.discard();
        } else if let Err(e) = task.write_restore_batch() {
            tracing::warn!(task = %id, error = %e, "writing the last restore batch failed");
        }
        self.setup.status.unregister_db(id);
        tracing::info!(task = %id, dirty, "task closed");
    }

    fn pause(&mut self, consumer: &MemberConsumer, topic: &str, partition: i32) {
        let Some(route) = self.routes.get(topic) else {
            return;
        };
        if self.paused.insert((route.topic.clone(), partition)) {
            if let Err(e) = consumer.pause(&single(topic, partition)) {
                tracing::warn!(topic, partition, error = %e, "pausing failed");
            }
        }
    }

    /// Notes that the record at `offset` was not taken: the partition must be re-read from the
    /// earliest such offset before it resumes.
    fn leave_in_kafka(&mut self, topic: &Arc<str>, partition: i32, offset: i64) {
        let entry = self
            .rewind
            .entry((topic.clone(), partition))
            .or_insert(Rewind::Left(offset));
        if let Rewind::Left(first) = entry {
            *first = (*first).min(offset);
        }
    }

    /// Resumes a paused partition, first seeking back to any record left in Kafka.
    fn resume(&mut self, consumer: &MemberConsumer, topic: &Arc<str>, partition: i32) {
        let key = (topic.clone(), partition);
        if let Some(&Rewind::Left(offset)) = self.rewind.get(&key) {
            let to = Offset::Offset(offset);
            if let Err(e) = consumer.seek(topic, partition, to, Duration::from_secs(10)) {
                self.fail(format!("seeking {topic}/{partition} back to {offset}: {e}"));
                return;
            }
            // Records polled from now on are in a later epoch than any polled before the seek.
            let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
            self.rewind.insert(key, Rewind::Seeking { offset, epoch });
        }
        if self.paused.remove(&(topic.clone(), partition)) {
            if let Err(e) = consumer.resume(&single(topic, partition)) {
                tracing::warn!(topic = %topic, partition, error = %e, "resuming failed");
            }
        }
    }

    fn resume_task(&mut self, consumer: &MemberConsumer, id: TaskId) {
        for topic in self.task_partitions(id) {
            self.resume(consumer, &topic, id.partition);
        }
    }

    /// Routes one polled record; `deadline` passed: queue instead of processing.
    fn route(
        &mut self,
        consumer: &MemberConsumer,
        msg: &BorrowedMessage<'_>,
        polled_epoch: u64,
        over_budget: bool,
    ) -> Result<(), TaskError> {
        let Some(route) = self.routes.get(msg.topic()) else {
            return Ok(());
        };
        let id = TaskId {
            topology: route.topology,
            partition: msg.partition(),
        };
        if !self.rewind.is_empty() {
            let key = (route.topic.clone(), id.partition);
            if let Some(rewind) = self.rewind.get(&key).copied() {
                match rewind.verdict(msg.offset(), polled_epoch) {
                    RewindVerdict::Resumed => {
                        self.rewind.remove(&key);
                    }
                    RewindVerdict::Drop => {
                        if let Rewind::Left(_) = rewind {
                            self.leave_in_kafka(&key.0, id.partition, msg.offset());
                        }
                        return Ok(());
                    }
                }
            }
        }
        if self.pending_open.contains(&id) {
            // Assigned, but the task cannot open yet (its partition is paused): leave the record
            // in Kafka and read it again once the task runs.
            let topic = route.topic.clone();
            self.leave_in_kafka(&topic, id.partition, msg.offset());
            return Ok(());
        }
        // A record polled before its task was (re)created belongs to an earlier assignment; the
        // new one re-reads it from the committed offset.
        if self.task_epoch.get(&id).is_none_or(|e| *e > polled_epoch) {
            return Ok(());
        }
        let max_buffered = self.setup.config.processing.max_buffered_records;
        let Some(task) = self.tasks.get_mut(&id) else {
            return Ok(());
        };
        if !task.take(msg.topic(), msg.offset()) {
            tracing::trace!(task = %id, offset = msg.offset(), "dropping a record delivered again");
            return Ok(());
        }
        if task.can_process_now() && !over_budget {
            let headers = message_headers(msg);
            let record = Record {
                topic: msg.topic(),
                partition: msg.partition(),
                offset: msg.offset(),
                timestamp: msg.timestamp().to_millis(),
                key: msg.key(),
                value: msg.payload(),
                headers: &headers,
            };
            return task.process(&record, &self.collector, &self.policy);
        }
        // Records already polled are queued even past the bound; the pause stops more from
        // coming, so a queue holds at most max_buffered_records - 1 + POLL_BATCH records.
        task.enqueue(own_message(&route.topic, msg));
        if task.queued() >= max_buffered {
            let topic = route.topic.clone();
            self.pause(consumer, &topic, id.partition);
        }
        Ok(())
    }

    /// Processes queued records of running tasks until `deadline`; resumes drained partitions.
    fn drain_queues(
        &mut self,
        consumer: &MemberConsumer,
        deadline: Instant,
    ) -> Result<(), TaskError> {
        let max_buffered = self.setup.config.processing.max_buffered_records;
        let ids: Vec<TaskId> = self.tasks.keys().copied().collect();
        for id in ids {
            let task = self
                .tasks
                .get_mut(&id)
                .expect("invariant: id taken from the map");
            while task.queued() > 0
                && task.state() == TaskState::Running
                && Instant::now() < deadline
            {
                task.drain(256, &self.collector, &self.policy)?;
            }
            let drained = task.state() == TaskState::Running && task.queued() <= max_buffered / 2;
            if drained {
                for topic in self.task_partitions(id) {
                    if self.paused.contains(&(topic.clone(), id.partition)) {
                        self.resume(consumer, &topic, id.partition);
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies changelog records to restoring tasks; starts the tasks whose restore finished.
    fn restore_step(&mut self, consumer: &MemberConsumer, wait: Duration) -> Result<(), String> {
        if self.restore.is_idle() {
            return Ok(());
        }
        let Core {
            restore,
            tasks,
            changelog_routes,
            ..
        } = self;
        let mut apply_err = None;
        let read = restore
            .poll(RESTORE_BATCH, wait, |rec| {
                let Some(topology) = changelog_routes.get(rec.topic) else {
                    return;
                };
                let id = TaskId {
                    topology: *topology,
                    partition: rec.partition,
                };
                if let Some(task) = tasks.get_mut(&id) {
                    if let Err(e) = task.apply_changelog(rec) {
                        apply_err.get_or_insert(format!("task {id}: restoring: {e}"));
                    }
                }
            })
            .map_err(|e| format!("reading changelogs: {e}"))?;
        self.restore_busy = read > 0;
        if let Some(e) = apply_err {
            return Err(e);
        }
        for (changelog, partition) in self.restore.take_finished() {
            let Some(topology) = self.changelog_routes.get(&*changelog).copied() else {
                continue;
            };
            let id = TaskId {
                topology,
                partition,
            };
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            let retention = self.setup.tombstone_retention.get(&*changelog).copied();
            match retention.and_then(|r| task.restore_outlived(&changelog, r, now_ms())) {
                Some(Outlived::Rebuild(why)) => {
                    tracing::warn!(task = %id, changelog = %changelog, reason = %why, "restoring the tail took too long to trust; emptying the store for a full restore");
                    task.clear_store(&changelog)
                        .map_err(|e| format!("task {id}: {e}"))?;
                    let start = self
                        .restore
                        .start(&changelog, partition, None, retention)
                        .map_err(|e| {
                            format!("restarting restore of {changelog}/{partition}: {e}")
                        })?;
                    task.restore_started(&changelog, start.remaining);
                    continue;
                }
                Some(Outlived::Accept(why)) => {
                    tracing::error!(task = %id, changelog = %changelog, reason = %why, "a full restore took longer than the changelog keeps tombstones: keys deleted meanwhile may be back; raise the changelog's delete.retention.ms");
                }
                None => {}
            }
            let running = task
                .changelog_restored(&changelog)
                .map_err(|e| format!("task {id}: {e}"))?;
            self.setup
                .metrics
                .restore_remaining
                .remove_label_values(&[id.to_string().as_str(), &*changelog])
                .ok();
            if running {
                tracing::info!(task = %id, "restored; running");
                self.resume_task(consumer, id);
            }
        }
        for task in self
            .tasks
            .values()
            .filter(|t| t.state() == TaskState::Restoring)
        {
            for (changelog, _) in task.restore_points().unwrap_or_default() {
                let remaining = self.restore.remaining(&changelog, task.id().partition);
                self.setup
                    .metrics
                    .restore_remaining
                    .with_label_values(&[task.id().to_string().as_str(), &*changelog])
                    .set(remaining);
            }
        }
        Ok(())
    }

    /// `processing.commit_timeout_ms`: how long a commit may wait for acknowledgements, and
    /// for the offset commit.
    fn commit_timeout(&self) -> Duration {
        Duration::from_millis(self.setup.config.processing.commit_timeout_ms)
    }

    fn commit_due(&self) -> bool {
        let interval = Duration::from_millis(self.setup.config.processing.commit_interval_ms);
        // A full cache asks for a commit at once, unless the last one failed: retrying on
        // every loop turn would use up the failures allowed in a row within moments.
        self.last_commit.elapsed() >= interval
            || (self.failed_commits == 0 && self.tasks.values().any(Task::wants_commit))
    }

    /// Commits every running task: flush caches → wait for acks → commit offsets → write state.
    fn commit(&mut self) -> Result<(), TaskError> {
        if self.exactly_once() {
            return self.commit_transaction();
        }
        let start = Instant::now();
        // Before anything is sent: what this commit writes (and what other writers append
        // to the changelogs later) comes after it.
        let started_ms = now_ms();
        self.last_commit = start;
        if self.failed.is_some() {
            return Ok(());
        }
        let mut confirmed =
            match self.check_ownership(Task::has_uncommitted_state, self.commit_timeout()) {
                Ok(confirmed) => confirmed,
                // Fenced (or the coordinator cannot tell): nothing goes to the changelogs.
                Err(e) => return self.commit_failed(e, HashMap::new()),
            };
        let mut batches = Vec::new();
        for task in self
            .tasks
            .values_mut()
            .filter(|t| t.state() == TaskState::Running)
        {
            batches.push((task.id(), task.prepare_commit(&self.collector)?));
        }
        self.collector.flush(self.commit_timeout())?;
        let mut acks = std::mem::take(&mut self.pending_acks);
        for (partition, offset) in self.collector.take_changelog_acks() {
            let slot = acks.entry(partition).or_insert(offset);
            *slot = (*slot).max(offset);
        }
        let mut tpl = TopicPartitionList::new();
        for task in self.tasks.values_mut() {
            task.offsets_durable();
            for (topic, partition, offset) in task.offsets_to_commit() {
                tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))
                    .expect("invariant: offsets are valid");
            }
        }
        if tpl.count() > 0 {
            match commit_offsets(&self.group_consumer, &tpl, self.commit_timeout()) {
                Ok(()) => {
                    confirmed = true;
                    self.failed_commits = 0;
                    self.failing_since = None;
                    self.tasks.values_mut().for_each(Task::offsets_committed);
                }
                Err(e) => {
                    // The state batches must not reach RocksDB: their checkpoint would claim
                    // input the group never recorded as processed, and a fenced member's
                    // checkpoint would skip changes the partition's new owner wrote to the
                    // changelog meanwhile.
                    drop(batches);
                    return self.commit_failed(e, acks);
                }
            }
        }
        if !confirmed {
            confirmed = self.confirm_quiet_ownership(start);
        }
        if confirmed {
            self.last_confirmed = start;
        }
        for (id, batch) in batches {
            if let Some(task) = self.tasks.get_mut(&id) {
                task.finish_commit(batch, &acks, confirmed.then_some(started_ms))?;
            }
        }
        self.setup
            .metrics
            .commit_latency
            .with_label_values(&[&self.member().to_string()])
            .observe(start.elapsed().as_secs_f64());
        Ok(())
    }

    /// A quiet member (no commit confirmed its ownership lately) asks the group coordinator
    /// anyway, once a minute whatever the answer (a failure costs nothing but the refresh of
    /// its stores' sync times); true when it was confirmed now.
    fn confirm_quiet_ownership(&mut self, now: Instant) -> bool {
        if self.last_confirmed.elapsed() < OWNERSHIP_REFRESH {
            return false;
        }
        self.last_confirmed = now;
        let timeout = self.commit_timeout().min(QUIET_CHECK_TIMEOUT);
        match self.check_ownership(|_| true, timeout) {
            Ok(asked) => asked,
            Err(e) => {
                tracing::debug!(member = self.member(), error = %e, "ownership check of a quiet member failed");
                false
            }
        }
    }

    /// Asks the group coordinator whether this member still owns its partitions, by committing
    /// again the offsets the group already holds for the running tasks that `include` selects;
    /// true when there were any to ask with.
    ///
    /// Before a commit sends cached changes to the changelogs, this is done for the tasks that
    /// have any. A member that was stopped (SIGSTOP, a long GC-like pause, a frozen VM) past
    /// its session may run again without knowing it was expelled: its caches hold values older
    /// than what the partitions' new owners have written since, and flushing them would put
    /// stale entries last in the changelogs, where every later restore would take them. Under
    /// at least once a member fenced while its flush is in flight can still do this; exactly
    /// once (transactions) closes that window.
    fn check_ownership(
        &self,
        include: impl Fn(&Task) -> bool,
        timeout: Duration,
    ) -> Result<bool, String> {
        let mut tpl = TopicPartitionList::new();
        for task in self
            .tasks
            .values()
            .filter(|t| t.state() == TaskState::Running && include(t))
        {
            // Only topics still assigned: the coordinator checks the member, not which
            // partitions it holds, and must not get a stale offset for someone else's.
            let Some(assigned) = self.assigned.get(&task.id()) else {
                continue;
            };
            for (topic, partition, offset) in task.settled_offsets() {
                if assigned.contains(&topic) {
                    tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))
                        .expect("invariant: offsets are valid");
                }
            }
        }
        if tpl.count() == 0 {
            return Ok(false);
        }
        commit_offsets(&self.group_consumer, &tpl, timeout)?;
        Ok(true)
    }

    /// A commit failed at its offset commit (or at the ownership check before the flush): the
    /// tasks keep their last checkpoint, and their changes stay in the cache and go out again
    /// with the next commit. A partition that was lost is closed dirty by the rebalance that
    /// follows. `acks`: changelog offsets acknowledged by this attempt, kept for the next.
    fn commit_failed(
        &mut self,
        e: String,
        acks: HashMap<(String, i32), i64>,
    ) -> Result<(), TaskError> {
        self.setup.metrics.commit_failures.inc();
        self.failed_commits += 1;
        tracing::warn!(member = self.member(), error = %e, failed_in_a_row = self.failed_commits, "committing input offsets failed; the local checkpoints stay at the last successful commit");
        self.pending_acks.extend(acks);
        // Measured from the end of the first failure: a member that was frozen mid-commit
        // fails once when it runs again, loses its partitions and goes on, however long the
        // pause.
        let failing_for = self
            .failing_since
            .get_or_insert_with(Instant::now)
            .elapsed();
        let for_too_long =
            self.failed_commits >= MIN_FAILED_COMMITS_TIMED && failing_for >= self.commit_timeout();
        if self.failed_commits >= MAX_FAILED_COMMITS || for_too_long {
            // Changes wait in memory for a commit that keeps failing: stop rather than grow
            // without bound (nothing is lost; a restart re-reads from the last commit).
            return Err(TaskError::OffsetCommits {
                attempts: self.failed_commits,
                failing_ms: failing_for.as_millis() as u64,
                reason: e,
            });
        }
        Ok(())
    }

    fn publish_status(&mut self) {
        self.last_status = Instant::now();
        let member = self.member();
        let tasks: Vec<TaskStatus> = self
            .tasks
            .values()
            .map(|t| (t, t.restore_points().unwrap_or_default()))
            .map(|(t, points)| TaskStatus {
                id: t.id().to_string(),
                topology: t.info().topology.clone(),
                partition: t.id().partition,
                state: t.state(),
                positions: t
                    .positions()
                    .map(|(topic, p)| (topic.to_string(), p))
                    .collect(),
                queued: t.queued(),
                restore_remaining: points
                    .iter()
                    .map(|(c, _)| self.restore.remaining(c, t.id().partition))
                    .sum(),
                checkpoints: points
                    .iter()
                    .map(|(c, checkpoint)| (c.to_string(), checkpoint.map(|c| c.next)))
                    .collect(),
                member,
                guarantee: self.setup.config.processing.guarantee,
            })
            .collect();
        self.setup.status.publish(
            member,
            MemberStatus {
                joined: self.joined,
                tasks,
                pending: self.pending_open.len(),
                paused: self.paused.len(),
            },
        );
    }

    fn queued(&self) -> usize {
        self.tasks.values().map(Task::queued).sum()
    }
}

/// A running member: the consumer and the state it shares with its callbacks.
pub struct Member {
    consumer: Arc<MemberConsumer>,
    core: Arc<Mutex<Core>>,
    epoch: Arc<AtomicU64>,
    shutdown: CancellationToken,
    index: usize,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("index", &self.index)
            .finish()
    }
}

impl Member {
    /// Creates the member's clients and subscribes to every source topic.
    pub fn new(setup: MemberSetup) -> Result<Self, MemberError> {
        let index = setup.index;
        let cfg = setup.config.clone();
        let kafka = |what: &str| {
            let what = what.to_string();
            move |source| MemberError::Kafka {
                member: index,
                what,
                source,
            }
        };
        let transactional_id = setup
            .transactional_id
            .as_ref()
            .map(|base| format!("{base}-{index}"));
        let producer_config =
            super::client::producer(&cfg, &setup.bootstrap, index, transactional_id.as_deref());
        let commit_timeout = Duration::from_millis(cfg.processing.commit_timeout_ms);
        let collector = Collector::new(&producer_config, setup.metrics.clone(), commit_timeout)
            .map_err(|source| MemberError::Collector {
                member: index,
                source,
            })?;
        if let Some(id) = &transactional_id {
            collector
                .init_transactions(commit_timeout)
                .map_err(|source| MemberError::Transactions {
                    member: index,
                    source,
                })?;
            tracing::info!(member = index, transactional_id = %id, "transactional producer ready");
        }
        let restore = RestoreConsumer::new(&super::client::restore_consumer(
            &cfg,
            &setup.bootstrap,
            index,
        ))
        .map_err(kafka("creating the restore consumer"))?;
        let mut routes = HashMap::new();
        let mut changelog_routes = HashMap::new();
        for (i, t) in setup.topologies.iter().enumerate() {
            for s in &t.sources {
                routes.insert(
                    s.clone(),
                    SourceRoute {
                        topology: i,
                        topic: Arc::from(s.as_str()),
                    },
                );
            }
            for store in &t.stores {
                changelog_routes.insert(changelog_topic(&cfg.app.id, store), i);
            }
        }
        let epoch = Arc::new(AtomicU64::new(0));
        let core = Arc::new(Mutex::new(Core {
            state_dir: cfg.state.dir.join(&cfg.app.id),
            routes,
            changelog_routes,
            tasks: BTreeMap::new(),
            assigned: BTreeMap::new(),
            pending_open: BTreeSet::new(),
            task_epoch: HashMap::new(),
            rewind: HashMap::new(),
            collector,
            restore,
            paused: HashSet::new(),
            policy: ErrorPolicy {
                on_error: cfg.processing.on_error,
                dlq_topic: cfg.processing.dlq_topic(&cfg.app.id),
            },
            failed: None,
            joined: false,
            last_commit: Instant::now(),
            last_confirmed: Instant::now(),
            last_status: Instant::now(),
            pending_acks: HashMap::new(),
            failed_commits: 0,
            failing_since: None,
            group_consumer: Weak::new(),
            epoch: epoch.clone(),
            producer_config,
            txn: exactly_once::Transactions::Open,
            rewind_pending: false,
            rewind_fallback: HashMap::new(),
            failed_in_a_row: 0,
            restore_busy: false,
            setup: setup.clone(),
        }));
        let ctx = MemberContext {
            core: core.clone(),
            metrics: setup.metrics.clone(),
            member: index,
            epoch: epoch.clone(),
        };
        let consumer: Arc<MemberConsumer> = Arc::new(
            super::client::consumer(&cfg, &setup.bootstrap, index)
                .create_with_context(ctx)
                .map_err(kafka("creating the consumer"))?,
        );
        lock(&core).group_consumer = Arc::downgrade(&consumer);
        let topics: Vec<&str> = setup
            .topologies
            .iter()
            .flat_map(|t| t.sources.iter().map(String::as_str))
            .collect();
        consumer.subscribe(&topics).map_err(kafka("subscribing"))?;
        Ok(Self {
            consumer,
            core,
            epoch,
            shutdown: setup.shutdown,
            index,
        })
    }

    /// Runs the member's loop on the calling thread until shutdown or a fatal error; then
    /// commits (unless failed), leaves the group and closes every task.
    pub fn run(self) -> Result<(), MemberError> {
        let result = self.run_loop();
        let failure = {
            let mut core = lock(&self.core);
            if result.is_ok() && core.failed.is_none() {
                if let Err(e) = core.commit() {
                    core.fail(e.to_string());
                }
            }
            core.failed.clone()
        };
        // Dropping the consumer leaves the group; the final revoke callback closes the tasks
        // (committing nothing new, or nothing at all if the member failed).
        let Member { consumer, core, .. } = self;
        drop(consumer);
        let mut core = lock(&core);
        let ids: Vec<TaskId> = core.tasks.keys().copied().collect();
        let dirty = core.failed.is_some();
        for id in ids {
            core.close_task(id, dirty);
        }
        core.publish_status();
        tracing::info!(member = core.member(), "member stopped");
        match (result, failure) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(reason)) => Err(MemberError::Task(reason)),
            (Ok(()), None) => Ok(()),
        }
    }

    fn run_loop(&self) -> Result<(), MemberError> {
        let mut batch: Vec<(BorrowedMessage<'_>, u64)> = Vec::with_capacity(POLL_BATCH);
        while !self.shutdown.is_cancelled() {
            let busy = {
                let core = lock(&self.core);
                if let Some(reason) = &core.failed {
                    return Err(MemberError::Task(reason.clone()));
                }
                // A restore waiting for its changelog's end (e.g. for a transaction to end)
                // is not work: the loop waits as it does when idle.
                core.queued() > 0 || (!core.restore.is_idle() && core.restore_busy)
            };
            // Block briefly only when there is nothing else to do.
            let first_wait = if busy {
                Duration::ZERO
            } else {
                Duration::from_millis(50)
            };
            while batch.len() < POLL_BATCH {
                let wait = if batch.is_empty() {
                    first_wait
                } else {
                    Duration::ZERO
                };
                match self.consumer.poll(wait) {
                    None => break,
                    Some(Ok(m)) => batch.push((m, self.epoch.load(Ordering::SeqCst))),
                    Some(Err(e)) => {
                        tracing::warn!(member = self.index, error = %e, "consumer error");
                        break;
                    }
                }
            }
            let polled = batch.len();
            let mut core = lock(&self.core);
            if let Err(e) = self.turn(&mut core, &mut batch, busy || polled > 0) {
                core.fail(e.clone());
                return Err(MemberError::Task(e));
            }
        }
        Ok(())
    }

    /// One loop turn after polling: route, drain, restore, open, commit, publish.
    fn turn<'c>(
        &'c self,
        core: &mut Core,
        batch: &mut Vec<(BorrowedMessage<'c>, u64)>,
        busy: bool,
    ) -> Result<(), String> {
        if core.exactly_once() {
            core.recover(&self.consumer);
        }
        let deadline = Instant::now() + PROCESS_BUDGET;
        let mut over_budget = false;
        for (i, (m, epoch)) in batch.drain(..).enumerate() {
            // Checking the clock every record would cost more than a cheap record does.
            if !over_budget && i % 64 == 63 {
                over_budget = Instant::now() >= deadline;
            }
            let routed = core.route(&self.consumer, &m, epoch, over_budget);
            core.absorb(routed)?;
        }
        let drained = core.drain_queues(&self.consumer, deadline);
        core.absorb(drained)?;
        let restore_wait = if busy {
            Duration::ZERO
        } else {
            Duration::from_millis(10)
        };
        core.restore_step(&self.consumer, restore_wait)?;
        if !core.pending_open.is_empty() {
            core.open_pending(&self.consumer);
        }
        if core.commit_due() {
            core.commit().map_err(|e| e.to_string())?;
        }
        if core.last_status.elapsed() >= STATUS_INTERVAL {
            core.publish_status();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Rewind, RewindVerdict};

    #[test]
    fn records_left_in_kafka_are_dropped_until_the_seek() {
        assert_eq!(Rewind::Left(10).verdict(12, 5), RewindVerdict::Drop);
    }

    #[test]
    fn after_a_seek_only_records_polled_later_count_and_the_first_at_or_after_the_target_resumes() {
        let seek = Rewind::Seeking {
            offset: 10,
            epoch: 7,
        };
        // Polled before the seek (an earlier epoch): comes again, dropped now.
        assert_eq!(seek.verdict(10, 6), RewindVerdict::Drop);
        assert_eq!(seek.verdict(15, 6), RewindVerdict::Drop);
        // The target itself.
        assert_eq!(seek.verdict(10, 7), RewindVerdict::Resumed);
        // Retention removed the target: the first offset after it resumes the partition.
        assert_eq!(seek.verdict(14, 8), RewindVerdict::Resumed);
    }
}
