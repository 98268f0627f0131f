//! One consumer-group member: its consumer, its tasks, and the thread that coordinates them
//! (Kafka Streams' `StreamThread`, with the processing moved to a pool).
//!
//! Records never pass through the member thread. The queue of every source partition is split
//! off the consumer when the member starts ([`pool`]): a task that runs is handed, with its
//! partitions' queues, to a processing thread of the worker's pool, which takes its records
//! straight from librdkafka. The member thread, each turn of its loop:
//!
//! 1. polls its consumer, which serves the rebalance callbacks ([`rebalance`]) on this thread;
//! 2. takes note of tasks that failed on their processing thread;
//! 3. advances restores ([`restoring`]): changelog records go into the restoring tasks'
//!    RocksDB; a task whose changelogs are all read to their end starts running;
//! 4. commits ([`commit`]) when `processing.commit_interval_ms` has passed or a cache is full.
//!
//! A commit (also on revoke and on shutdown) is: each task's commit point (its cache flushed
//! into its changelog, its input positions noted, under its lock) → wait for the records the
//! tasks sent up to their points to be acknowledged → commit the input offsets → write each
//! task's state batch with its acknowledged changelog offset. The tasks go on processing while
//! the commit waits; what they do after their point belongs to the next commit. A crash
//! between any two steps only causes reprocessing. Under exactly once ([`exactly_once`]) a
//! commit is a transaction, and the tasks wait for it.
//!
//! The consumer context shares the member's state ([`Core`]) through a mutex that the loop
//! releases while it polls, so the rebalance callbacks can commit and close revoked tasks
//! before their partitions are given up, and open newly assigned ones.

mod commit;
mod exactly_once;
mod pool;
mod rebalance;
mod restoring;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, TopicPartitionList};
use tokio_util::sync::CancellationToken;

pub use self::pool::Pool;
use self::pool::{SourceQueue, TaskCell};
use super::collector::{Collector, CollectorError, TxnError};
use super::restore::RestoreConsumer;
use super::ClientError;
use crate::config::{Config, Guarantee};
use crate::metrics::Metrics;
use crate::processor::{changelog_topic, Topology};
use crate::state::StateMemory;
use crate::status::{MemberStatus, StatusBoard, TaskStatus};
use crate::task::{ErrorPolicy, Task, TaskError};
use crate::types::TaskId;

/// How long the loop waits for consumer events when there is nothing else to do.
const IDLE_POLL: Duration = Duration::from_millis(50);
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
        source: ClientError,
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
    /// Stops the member: its tasks finish the record at hand, it commits and leaves the group.
    pub shutdown: CancellationToken,
    /// Under exactly once, what the worker's `transactional.id`s start with (the member adds
    /// its index); see [`crate::state::identity`].
    pub transactional_id: Option<String>,
    /// The worker's processing threads.
    pub pool: Arc<Pool>,
    /// The memory the worker's task state shares (see [`StateMemory`]).
    pub state_memory: StateMemory,
    /// The worker's standby replicas (`state.standby_replicas` > 0): a task is claimed from
    /// them before it opens.
    pub standbys: Option<Arc<super::standby::Standbys>>,
}

/// Where a source topic's records go.
#[derive(Debug, Clone)]
struct SourceRoute {
    topology: usize,
    topic: Arc<str>,
}

/// A source partition.
type SourcePartition = (Arc<str>, i32);

/// The member's state, shared between its loop and its consumer context.
struct Core {
    setup: MemberSetup,
    state_dir: PathBuf,
    routes: HashMap<String, SourceRoute>,
    changelog_routes: HashMap<String, usize>,
    tasks: BTreeMap<TaskId, Arc<TaskCell>>,
    /// Source topics of each task that are currently assigned to this member.
    assigned: BTreeMap<TaskId, BTreeSet<Arc<str>>>,
    /// Tasks assigned whose directory is still locked by another member of this process.
    pending_open: BTreeSet<TaskId>,
    /// Open tasks still restoring.
    restoring: BTreeSet<TaskId>,
    /// The queue of every source partition, split off the consumer (see [`pool`]).
    queues: HashMap<SourcePartition, Arc<SourceQueue>>,
    /// Partitions to read again from an offset before their task runs (exactly once, after an
    /// abort): sought there when the task starts.
    rewind: HashMap<SourcePartition, i64>,
    collector: Arc<Collector>,
    restore: RestoreConsumer,
    /// Partitions paused because their task is not running (restoring, or not open yet).
    paused: HashSet<SourcePartition>,
    policy: Arc<ErrorPolicy>,
    /// Where processing threads report the failures of this member's tasks.
    failures_tx: Sender<(TaskId, TaskError)>,
    failures: Receiver<(TaskId, TaskError)>,
    failed: Option<String>,
    joined: bool,
    last_commit: Instant,
    last_status: Instant,
    /// The commit generation the running tasks are in (see [`Collector::tagged`]).
    generation: u64,
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
    /// Per source partition, from librdkafka's last statistics.
    fetched: Arc<Mutex<HashMap<(String, i32), PartitionStats>>>,
    /// The producer's settings, to replace it (exactly once, after a fatal error).
    producer_config: ClientConfig,
    /// Where the member's transactions stand (exactly once).
    txn: exactly_once::Transactions,
    /// Set by an aborted transaction until every input partition is marked for a rewind to
    /// its committed offset.
    rewind_pending: bool,
    /// Where the aborted transaction's tasks started in each input partition, for partitions
    /// the group has no committed offset for.
    rewind_fallback: HashMap<SourcePartition, i64>,
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
    fetched: Arc<Mutex<HashMap<(String, i32), PartitionStats>>>,
}

/// What librdkafka's statistics say about a source partition.
#[derive(Debug, Clone, Copy, Default)]
struct PartitionStats {
    /// Records fetched and waiting.
    queued: i64,
    /// Consumer lag (`-1`: unknown yet).
    lag: i64,
}

type MemberConsumer = BaseConsumer<MemberContext>;

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    // A panic under this lock is a bug in the member; its thread is gone, and so is the worker.
    core.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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

    /// Takes the failures the processing threads reported. Under exactly once, a record the
    /// producer would not take (its transaction already failed, or the record is refused)
    /// aborts the transaction: the member goes back to its last commit and goes on. Any other
    /// failure stops the member.
    fn take_failures(&mut self) {
        if self.exactly_once() {
            if let Some(Some(cause)) = self.failures_now() {
                if self.txn == exactly_once::Transactions::Open {
                    self.abort_and_rewind(cause);
                }
            }
            return;
        }
        while let Ok((_, error)) = self.failures.try_recv() {
            self.fail(error.to_string());
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

    /// `processing.commit_timeout_ms`: how long a commit may wait for acknowledgements, and
    /// for the offset commit.
    fn commit_timeout(&self) -> Duration {
        Duration::from_millis(self.setup.config.processing.commit_timeout_ms)
    }

    /// Runs `f` on every open task, each under its cell's lock, in id order.
    fn for_each_task(&self, mut f: impl FnMut(&mut Task)) {
        for cell in self.tasks.values() {
            if let Some(task) = cell.lock().task.as_mut() {
                f(task);
            }
        }
    }

    fn publish_status(&mut self) {
        self.last_status = Instant::now();
        let member = self.member();
        let guarantee = self.setup.config.processing.guarantee;
        let fetched = self
            .fetched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut tasks = Vec::new();
        for cell in self.tasks.values() {
            let state = cell.lock();
            let Some(t) = state.task.as_ref() else {
                continue;
            };
            let points = t.restore_points().unwrap_or_default();
            let positions: BTreeMap<String, i64> = t
                .positions()
                .map(|(topic, p)| (topic.to_string(), p))
                .collect();
            let stats: Vec<PartitionStats> = self
                .task_partitions(t.id())
                .iter()
                .filter_map(|topic| fetched.get(&(topic.to_string(), t.id().partition)).copied())
                .collect();
            let queued = stats.iter().map(|s| s.queued).sum::<i64>();
            let restore_remaining: i64 = points
                .iter()
                .map(|(c, _)| self.restore.remaining(c, t.id().partition))
                .sum();
            let lag = match t.state() {
                crate::task::TaskState::Running => stats.iter().map(|s| s.lag.max(0)).sum(),
                _ => restore_remaining,
            };
            tasks.push(TaskStatus {
                id: t.id().to_string(),
                topology: t.info().topology.clone(),
                partition: t.id().partition,
                state: t.state(),
                positions,
                queued: queued.max(0) as usize,
                restore_remaining,
                lag,
                checkpoints: points
                    .iter()
                    .map(|(c, checkpoint)| (c.to_string(), checkpoint.map(|c| c.next)))
                    .collect(),
                member,
                guarantee,
            });
        }
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

    /// Stops every task from processing and lets go of the partition queues (each holds the
    /// consumer), so that dropping the consumer closes it.
    fn release_queues(&mut self) {
        for cell in self.tasks.values() {
            let mut state = cell.lock();
            state.active = false;
            state.queues.clear();
        }
        self.queues.clear();
    }
}

/// A running member: the consumer and the state it shares with its callbacks.
pub struct Member {
    consumer: Arc<MemberConsumer>,
    core: Arc<Mutex<Core>>,
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
    /// Creates the member's clients, splits off the queue of every source partition and
    /// subscribes to every source topic.
    pub fn new(setup: MemberSetup) -> Result<Self, MemberError> {
        let index = setup.index;
        let cfg = setup.config.clone();
        let kafka = |what: &str| {
            let what = what.to_string();
            move |source: rdkafka::error::KafkaError| MemberError::Kafka {
                member: index,
                what,
                source: source.into(),
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
        // A registration that runs out of time (the transaction coordinator away) goes on in
        // the member's loop; no task opens before it is done.
        let mut txn = exactly_once::Transactions::Open;
        if let Some(id) = &transactional_id {
            match collector.init_transactions(commit_timeout) {
                Ok(()) => {
                    tracing::info!(member = index, transactional_id = %id, "transactional producer ready")
                }
                Err(TxnError::TimedOut(e)) => {
                    tracing::warn!(member = index, transactional_id = %id, error = %e, "the transactional producer is not registered yet; asking again");
                    txn = exactly_once::Transactions::Initialising {
                        next_attempt: Instant::now(),
                    };
                }
                Err(source) => {
                    return Err(MemberError::Transactions {
                        member: index,
                        source,
                    })
                }
            }
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
        let (failures_tx, failures) = std::sync::mpsc::channel();
        let fetched = Arc::new(Mutex::new(HashMap::new()));
        let core = Arc::new(Mutex::new(Core {
            state_dir: cfg.state.dir.join(&cfg.app.id),
            routes,
            changelog_routes,
            tasks: BTreeMap::new(),
            assigned: BTreeMap::new(),
            pending_open: BTreeSet::new(),
            restoring: BTreeSet::new(),
            queues: HashMap::new(),
            rewind: HashMap::new(),
            collector: Arc::new(collector),
            restore,
            paused: HashSet::new(),
            policy: Arc::new(ErrorPolicy {
                on_error: cfg.processing.on_error,
                dlq_topic: cfg.processing.dlq_topic(&cfg.app.id),
            }),
            failures_tx,
            failures,
            failed: None,
            joined: false,
            last_commit: Instant::now(),
            last_confirmed: Instant::now(),
            last_status: Instant::now(),
            generation: 0,
            pending_acks: HashMap::new(),
            failed_commits: 0,
            failing_since: None,
            group_consumer: Weak::new(),
            fetched: fetched.clone(),
            producer_config,
            txn,
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
            fetched,
        };
        let consumer: Arc<MemberConsumer> = Arc::new(
            super::client::consumer(&cfg, &setup.bootstrap, index)
                .create_with_context(ctx)
                .map_err(kafka("creating the consumer"))?,
        );
        let topics: Vec<&str> = setup
            .topologies
            .iter()
            .flat_map(|t| t.sources.iter().map(String::as_str))
            .collect();
        {
            let mut core = lock(&core);
            core.group_consumer = Arc::downgrade(&consumer);
            // Split before the first assignment, so that no record of them reaches the
            // consumer's own queue (librdkafka keeps an application's split for good).
            for topic in &topics {
                let count = setup.partitions.get(*topic).copied().unwrap_or(0);
                for partition in 0..count {
                    core.split_queue(&consumer, topic, partition);
                }
            }
        }
        if let Err(e) = consumer.subscribe(&topics) {
            lock(&core).release_queues();
            return Err(kafka("subscribing")(e));
        }
        Ok(Self {
            consumer,
            core,
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
            // Nothing more is processed: the last commit covers everything that was.
            core.hold_all();
            if result.is_ok() && core.failed.is_none() {
                if let Err(e) = core.commit() {
                    core.fail(e.to_string());
                }
            }
            core.release_queues();
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
        while !self.shutdown.is_cancelled() {
            let wait = {
                let core = lock(&self.core);
                if let Some(reason) = &core.failed {
                    return Err(MemberError::Task(reason.clone()));
                }
                // While a restore is under way the loop waits in the restore consumer's poll
                // instead (see `Core::turn`), which returns as soon as changelog records
                // arrive: waiting here would leave them unread for up to IDLE_POLL each time
                // the restore consumer's queue runs dry between two fetches.
                if core.restore.is_idle() {
                    IDLE_POLL
                } else {
                    Duration::ZERO
                }
            };
            // Only events come here (rebalances, statistics, errors): records go to the
            // partition queues.
            match self.consumer.poll(wait) {
                None => {}
                Some(Ok(m)) => {
                    let reason = format!(
                        "a record of {}/{} (offset {}) reached the member's own queue: its \
                         partition was not split off for the processing threads",
                        m.topic(),
                        m.partition(),
                        m.offset()
                    );
                    lock(&self.core).fail(reason.clone());
                    return Err(MemberError::Task(reason));
                }
                Some(Err(e)) => tracing::warn!(member = self.index, error = %e, "consumer error"),
            }
            let mut core = lock(&self.core);
            if let Err(e) = core.turn(&self.consumer) {
                core.fail(e.clone());
                return Err(MemberError::Task(e));
            }
        }
        Ok(())
    }
}

impl Core {
    /// One loop turn after polling: failures, recovery, restore, open, commit, publish.
    fn turn(&mut self, consumer: &MemberConsumer) -> Result<(), String> {
        self.take_failures();
        if self.exactly_once() {
            self.recover(consumer);
        }
        let restore_wait = if self.restore_busy {
            Duration::ZERO
        } else {
            Duration::from_millis(10)
        };
        self.restore_step(consumer, restore_wait)?;
        if !self.pending_open.is_empty() {
            self.open_pending(consumer);
        }
        if self.commit_due() {
            self.commit().map_err(|e| e.to_string())?;
        }
        if self.last_status.elapsed() >= STATUS_INTERVAL {
            self.publish_status();
        }
        Ok(())
    }

    /// Splits the queue of a source partition off the consumer (once), so that its records go
    /// to the processing threads; librdkafka wakes them when it stops being empty.
    fn split_queue(&mut self, consumer: &Arc<MemberConsumer>, topic: &str, partition: i32) {
        let Some(route) = self.routes.get(topic) else {
            return;
        };
        let key = (route.topic.clone(), partition);
        if self.queues.contains_key(&key) {
            return;
        }
        match consumer.split_partition_queue(topic, partition) {
            Some(mut queue) => {
                let signal = self.setup.pool.signal();
                queue.set_nonempty_callback(move || signal.notify());
                self.queues.insert(key, Arc::new(queue));
            }
            None => tracing::warn!(topic, partition, "could not split the partition's queue"),
        }
    }

    /// Stops every task from processing (each finishes the slice at hand first).
    fn hold_all(&self) {
        for cell in self.tasks.values() {
            cell.lock().active = false;
        }
    }
}
