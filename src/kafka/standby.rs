//! Standby replicas (`state.standby_replicas`): warm copies of other workers' task state
//! (Kafka Streams' standby tasks).
//!
//! A worker keeps the standbys that [`crate::placement`] gives it: for each, the task's
//! RocksDB under the same directory an active task would use, fed by tailing the task's
//! changelogs with a restore consumer that never stops, on a thread of its own. State and
//! checkpoint go into RocksDB together in batches (as in a restore), and a standby that has
//! read its changelogs to their end also records when, so a takeover can trust the tail it
//! reads. When a task is assigned to a member of this process, the member [claims](Standbys::claim)
//! it first: the standby writes what it applied and closes (at once, or at the standby thread's
//! next turn if it is busy; the member retries the directory meanwhile), and the member opens
//! the same directory, whose checkpoint lets its restore read only the changelog records
//! written since. A standby that fell behind for longer than the changelog keeps tombstones
//! does not vouch for what it reads next: it empties its store (see
//! [`Task::standby_stale`]). While another worker runs on the same state directory, no
//! standby is kept ([`crate::state::presence`]).
//!
//! A standby reads the changelogs as the restore does (`read_committed` under exactly once),
//! so it holds only committed state. It never writes a changelog and never commits offsets.
//! Its failures (a changelog it cannot read) close it and leave the worker running; it is
//! opened again, from its checkpoint, a while later.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::restore::{start_task_restore, RestoreConsumer};
use super::ClientError;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::processor::{changelog_topic, Topology};
use crate::state::presence::Presence;
use crate::state::{now_ms, StateError, StateMemory};
use crate::status::{StatusBoard, TaskStatus};
use crate::task::{Outlived, Task};
use crate::types::TaskId;

/// Changelog records applied per poll.
const BATCH: usize = 10_000;
/// How long a poll waits for changelog records (with the lock held: a claim waits this long
/// at most).
const POLL_WAIT: Duration = Duration::from_millis(10);
/// How long the thread sleeps when it keeps no standby.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How often the placement is computed again.
const PLACE_INTERVAL: Duration = Duration::from_secs(1);
/// How often applied records are written with their checkpoints: a takeover reads at most
/// what arrived since.
const WRITE_INTERVAL: Duration = Duration::from_secs(1);
/// How often the changelogs' end offsets are asked for (lag, and the sync time).
const ENDS_INTERVAL: Duration = Duration::from_secs(2);
/// How often `/tasks` is told about the standbys.
const STATUS_INTERVAL: Duration = Duration::from_millis(500);
/// How long a standby that failed waits before it is opened again.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// What the standbys need from the worker.
#[derive(Debug, Clone)]
pub struct StandbySetup {
    /// The worker's configuration.
    pub config: Arc<Config>,
    /// Resolved bootstrap servers.
    pub bootstrap: String,
    /// The topologies tasks are built from.
    pub topologies: Arc<Vec<Topology>>,
    /// Partition counts of the topics the topologies read and write.
    pub partitions: Arc<BTreeMap<String, i32>>,
    /// Each changelog's tombstone retention, where known.
    pub tombstone_retention: Arc<BTreeMap<String, Duration>>,
    /// Metrics.
    pub metrics: Metrics,
    /// Where the standbys are published for `/tasks`.
    pub status: Arc<StatusBoard>,
    /// The memory task state shares.
    pub state_memory: StateMemory,
    /// This worker's announcement in its state directory: while another worker shares the
    /// directory, no standby is kept (it would keep a directory the other may need).
    pub presence: Arc<Presence>,
}

/// The worker's standby replicas, shared between their thread and the members, which claim a
/// task before they open it.
pub struct Standbys {
    /// The standbys, held by their thread while it works on them, which includes waiting for
    /// the brokers: a claim never waits for it.
    inner: Mutex<Inner>,
    /// Tasks members of this process run or are opening, by member: never a standby here.
    /// (Two members may hold a claim on one task for a moment, while one hands it to the
    /// other.) Apart from `inner`, so that a claim never waits for the standbys' thread, which
    /// holds `inner` while it reads from the brokers.
    claimed: Mutex<BTreeSet<(TaskId, usize)>>,
}

impl std::fmt::Debug for Standbys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standbys").finish_non_exhaustive()
    }
}

struct Inner {
    setup: StandbySetup,
    state_dir: PathBuf,
    restore: RestoreConsumer,
    /// Changelog topic → topology.
    changelog_routes: HashMap<String, usize>,
    /// Open standbys.
    tasks: BTreeMap<TaskId, Task>,
    /// The standbys the placement gives this worker.
    wanted: BTreeSet<TaskId>,
    /// Standbys that failed, and when they may be opened again.
    retry_at: HashMap<TaskId, Instant>,
}

impl Standbys {
    /// Creates the standbys' changelog consumer; nothing is kept until [`Standbys::run`] is
    /// given a placement.
    pub fn new(setup: StandbySetup) -> Result<Self, ClientError> {
        let cfg = &setup.config;
        let restore =
            RestoreConsumer::new(&super::client::standby_consumer(cfg, &setup.bootstrap))?;
        let mut changelog_routes = HashMap::new();
        for (i, t) in setup.topologies.iter().enumerate() {
            for store in &t.stores {
                changelog_routes.insert(changelog_topic(&cfg.app.id, store), i);
            }
        }
        Ok(Self {
            inner: Mutex::new(Inner {
                state_dir: cfg.state.dir.join(&cfg.app.id),
                restore,
                changelog_routes,
                tasks: BTreeMap::new(),
                wanted: BTreeSet::new(),
                retry_at: HashMap::new(),
                setup,
            }),
            claimed: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under this lock is a bug; the standbys are only an optimisation, so go on.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every task of a topology with stores: what standbys are placed for.
    pub fn stateful_tasks(
        topologies: &[Topology],
        partitions: &BTreeMap<String, i32>,
    ) -> BTreeSet<TaskId> {
        let mut tasks = BTreeSet::new();
        for (i, t) in topologies.iter().enumerate() {
            if t.stores.is_empty() {
                continue;
            }
            let count = t
                .sources
                .iter()
                .filter_map(|s| partitions.get(s))
                .copied()
                .max()
                .unwrap_or(0);
            tasks.extend((0..count).map(|partition| TaskId {
                topology: i,
                partition,
            }));
        }
        tasks
    }

    /// The tasks members of this process hold.
    fn claimed(&self) -> BTreeSet<TaskId> {
        self.claimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, _)| *id)
            .collect()
    }

    /// Member `member` of this process is about to open task `id`: its standby, if any,
    /// writes what it applied and closes, so the member finds the directory free and its
    /// checkpoint current. Never waits: while the standbys' thread is busy, the standby closes
    /// on that thread's next turn, and the member's open finds the directory locked and tries
    /// again.
    pub fn claim(&self, id: TaskId, member: usize) {
        self.claimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((id, member));
        let inner = match self.inner.try_lock() {
            Ok(inner) => Some(inner),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        if let Some(mut inner) = inner {
            inner.release(&[id].into());
        }
    }

    /// Member `member` closed task `id`: unless another member holds it, it may be a standby
    /// here again.
    pub fn unclaim(&self, id: TaskId, member: usize) {
        self.claimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(id, member));
    }

    /// Keeps the standbys `placement` gives this worker (asked again every second; `None`:
    /// not known right now, keep the current ones) until `shutdown` fires, then closes them.
    pub fn run(
        &self,
        mut placement: impl FnMut() -> Option<BTreeSet<TaskId>>,
        shutdown: CancellationToken,
    ) {
        let mut next_place = Instant::now();
        let mut next_write = Instant::now() + WRITE_INTERVAL;
        let mut next_ends = Instant::now();
        let mut next_status = Instant::now();
        let presence = self.lock().setup.presence.clone();
        let mut shared = false;
        while !shutdown.is_cancelled() {
            let now = Instant::now();
            if now >= next_place {
                next_place = now + PLACE_INTERVAL;
                let sharing = presence.others().unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot tell whether another worker shares the state directory; keeping no standbys");
                    true
                });
                if sharing != shared {
                    shared = sharing;
                    if shared {
                        tracing::warn!("another worker runs on this state directory (state.dir): keeping no standbys, which would hold task directories it may need; give each worker a state.dir of its own");
                    }
                }
                let wanted = placement()
                    .filter(|_| !shared)
                    .or(shared.then(BTreeSet::new));
                if let Some(wanted) = wanted {
                    let mut inner = self.lock();
                    if wanted != inner.wanted {
                        tracing::info!(standbys = ?wanted.iter().map(ToString::to_string).collect::<Vec<_>>(), "standby placement");
                        inner.wanted = wanted;
                    }
                }
                let claimed = self.claimed();
                self.lock().reconcile(&claimed);
            }
            let idle = {
                let claimed = self.claimed();
                let mut inner = self.lock();
                inner.release(&claimed);
                if inner.tasks.is_empty() {
                    true
                } else {
                    inner.rebuild_stale();
                    inner.poll();
                    if now >= next_write {
                        next_write = now + WRITE_INTERVAL;
                        inner.write_all();
                    }
                    if now >= next_ends {
                        next_ends = now + ENDS_INTERVAL;
                        inner.refresh_ends();
                    }
                    false
                }
            };
            if now >= next_status {
                next_status = now + STATUS_INTERVAL;
                self.lock().publish();
            }
            if idle {
                std::thread::sleep(IDLE_WAIT);
            }
        }
        let mut inner = self.lock();
        let ids: Vec<TaskId> = inner.tasks.keys().copied().collect();
        for id in ids {
            inner.close(id);
        }
        inner.publish();
    }
}

impl Inner {
    /// Closes the standbys of tasks a member claimed.
    fn release(&mut self, claimed: &BTreeSet<TaskId>) {
        for &id in claimed {
            if self.tasks.contains_key(&id) {
                tracing::info!(task = %id, "standby becomes active");
                self.close(id);
            }
        }
    }

    /// Opens the wanted standbys of tasks no member here holds (`claimed`), and closes the
    /// others.
    fn reconcile(&mut self, claimed: &BTreeSet<TaskId>) {
        let keep: BTreeSet<TaskId> = self.wanted.difference(claimed).copied().collect();
        let open: Vec<TaskId> = self.tasks.keys().copied().collect();
        for id in open {
            if !keep.contains(&id) {
                self.close(id);
            }
        }
        let now = Instant::now();
        self.retry_at.retain(|_, at| *at > now);
        for id in keep {
            if self.tasks.contains_key(&id) || self.retry_at.contains_key(&id) {
                continue;
            }
            match self.open(id) {
                Ok(Some(task)) => {
                    self.tasks.insert(id, task);
                    self.set_lag(id);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(task = %id, error = %e, "opening a standby failed; will retry");
                    self.retry_at.insert(id, now + RETRY_AFTER);
                }
            }
        }
    }

    /// Opens the standby of `id` and starts tailing its changelogs; `None` while its directory
    /// is locked (a member of this process is closing the task).
    fn open(&mut self, id: TaskId) -> Result<Option<Task>, String> {
        let s = &self.setup;
        let mut task = match Task::open_for(
            &s.topologies[id.topology],
            id,
            &s.config.app.id,
            &s.partitions,
            &self.state_dir,
            &s.state_memory,
            &s.metrics,
        ) {
            Ok(task) => task,
            Err(StateError::Locked { .. }) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        task.become_standby();
        let asked_at = now_ms();
        let started = start_task_restore(&mut self.restore, &mut task, &s.tombstone_retention)
            .and_then(|()| {
                // A store at its changelog's end holds everything the changelog had when the
                // end was asked for, however long ago it was last written: what follows is a
                // fresh tail.
                let synced: Vec<_> = task
                    .changelogs()
                    .filter(|c| self.restore.remaining(c, id.partition) == 0)
                    .cloned()
                    .collect();
                synced
                    .iter()
                    .try_for_each(|c| task.mark_synced(c, asked_at))
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = started {
            for changelog in task.changelogs() {
                self.restore.stop(changelog, id.partition);
            }
            return Err(e);
        }
        Ok(Some(task))
    }

    /// Writes what the standby of `id` applied and closes it.
    fn close(&mut self, id: TaskId) {
        let Some(mut task) = self.tasks.remove(&id) else {
            return;
        };
        for changelog in task.changelogs() {
            self.restore.stop(changelog, id.partition);
            self.setup
                .metrics
                .standby_lag
                .remove_label_values(&[id.to_string().as_str(), &**changelog])
                .ok();
        }
        if let Err(e) = task.write_restore_batch() {
            tracing::warn!(task = %id, error = %e, "writing a standby's last batch failed");
        }
        tracing::info!(task = %id, "standby closed");
    }

    /// Empties, to read their changelogs again from the start, the standbys last in sync too
    /// long ago to trust what they would read next (see [`Task::standby_stale`]).
    fn rebuild_stale(&mut self) {
        let Inner {
            setup,
            restore,
            tasks,
            ..
        } = self;
        let now = now_ms();
        let mut failed = Vec::new();
        for (id, task) in tasks.iter_mut() {
            let changelogs: Vec<Arc<str>> = task.changelogs().cloned().collect();
            for changelog in changelogs {
                let Some(&retention) = setup.tombstone_retention.get(&*changelog) else {
                    continue;
                };
                let Some(why) = task.standby_stale(&changelog, retention, now) else {
                    continue;
                };
                tracing::warn!(task = %id, changelog = %changelog, reason = %why, "a standby fell behind for too long to trust what it reads next; emptying it to read the changelog again");
                let restarted = task
                    .clear_store(&changelog)
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        restore
                            .start(&changelog, id.partition, None, Some(retention))
                            .map_err(|e| e.to_string())
                    });
                match restarted {
                    Ok(start) => task.restore_started(&changelog, start.remaining),
                    Err(e) => {
                        tracing::warn!(task = %id, error = %e, "rebuilding a standby failed; closing it");
                        failed.push(*id);
                    }
                }
            }
        }
        for id in failed {
            self.close(id);
            self.retry_at.insert(id, Instant::now() + RETRY_AFTER);
        }
    }

    /// Applies the changelog records at hand.
    fn poll(&mut self) {
        let Inner {
            restore,
            tasks,
            changelog_routes,
            ..
        } = self;
        let mut failed: BTreeMap<TaskId, String> = BTreeMap::new();
        let result = restore.poll(BATCH, POLL_WAIT, |rec| {
            let Some(&topology) = changelog_routes.get(rec.topic) else {
                return;
            };
            let id = TaskId {
                topology,
                partition: rec.partition,
            };
            if let Some(task) = tasks.get_mut(&id) {
                if let Err(e) = task.apply_changelog(rec) {
                    failed.entry(id).or_insert_with(|| e.to_string());
                }
            }
        });
        if let Err(e) = result {
            // Records deleted under a standby's position, or the changelog may not be read:
            // which partition is not said, so every standby starts again from its checkpoint
            // (one whose checkpoint is now before the log start is rebuilt).
            tracing::warn!(error = %e, "standbys: reading changelogs failed; reopening them in a while");
            let ids: Vec<TaskId> = self.tasks.keys().copied().collect();
            let retry = Instant::now() + RETRY_AFTER;
            for id in ids {
                self.close(id);
                self.retry_at.insert(id, retry);
            }
            return;
        }
        for (id, e) in failed {
            tracing::warn!(task = %id, error = %e, "standby failed; closing it");
            self.close(id);
            self.retry_at.insert(id, Instant::now() + RETRY_AFTER);
        }
    }

    /// Writes every standby's applied records with their checkpoints.
    fn write_all(&mut self) {
        let mut failed = Vec::new();
        for (id, task) in &mut self.tasks {
            if let Err(e) = task.write_restore_batch() {
                tracing::warn!(task = %id, error = %e, "writing a standby's batch failed");
                failed.push(*id);
            }
        }
        for id in failed {
            self.close(id);
            self.retry_at.insert(id, Instant::now() + RETRY_AFTER);
        }
    }

    /// Refreshes the changelogs' end offsets: the lag metrics, and the sync time of the
    /// standbys that have read to an end (this one, or one asked for earlier).
    fn refresh_ends(&mut self) {
        let mut failed = Vec::new();
        for (changelog, partition, asked_at) in self.restore.refresh_ends() {
            let Some(&topology) = self.changelog_routes.get(&*changelog) else {
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
            match retention.and_then(|r| task.standby_outlived(&changelog, r, now_ms())) {
                Some(Outlived::Rebuild(why)) => {
                    tracing::warn!(task = %id, changelog = %changelog, reason = %why, "a standby read its changelog's tail too late to trust it; emptying it to read the changelog again");
                    let restart = task
                        .clear_store(&changelog)
                        .map_err(|e| e.to_string())
                        .and_then(|()| {
                            self.restore
                                .start(&changelog, partition, None, retention)
                                .map_err(|e| e.to_string())
                        });
                    match restart {
                        Ok(start) => task.restore_started(&changelog, start.remaining),
                        Err(e) => {
                            tracing::warn!(task = %id, error = %e, "rebuilding a standby failed; closing it");
                            failed.push(id);
                        }
                    }
                    continue;
                }
                Some(Outlived::Accept(why)) => {
                    tracing::error!(task = %id, changelog = %changelog, reason = %why, "a standby's first read of its changelog took longer than the changelog keeps tombstones: keys deleted meanwhile may be back; raise the changelog's delete.retention.ms");
                }
                None => {}
            }
            if let Err(e) = task.mark_synced(&changelog, asked_at) {
                tracing::warn!(task = %id, error = %e, "writing a standby's checkpoint failed");
            }
        }
        for id in failed {
            self.close(id);
            self.retry_at.insert(id, Instant::now() + RETRY_AFTER);
        }
        let ids: Vec<TaskId> = self.tasks.keys().copied().collect();
        for id in ids {
            self.set_lag(id);
        }
    }

    /// Sets the lag metric of the standby of `id` from the latest known end offsets.
    fn set_lag(&self, id: TaskId) {
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        for changelog in task.changelogs() {
            self.setup
                .metrics
                .standby_lag
                .with_label_values(&[id.to_string().as_str(), &**changelog])
                .set(self.restore.remaining(changelog, id.partition));
        }
    }

    /// Tells `/tasks` about the standbys.
    fn publish(&self) {
        let guarantee = self.setup.config.processing.guarantee;
        let tasks = self
            .tasks
            .values()
            .map(|t| {
                let id = t.id();
                let points = t.restore_points().unwrap_or_default();
                let lag = points
                    .iter()
                    .map(|(c, _)| self.restore.remaining(c, id.partition))
                    .sum();
                TaskStatus {
                    id: id.to_string(),
                    topology: t.info().topology.clone(),
                    partition: id.partition,
                    state: t.state(),
                    positions: BTreeMap::new(),
                    queued: 0,
                    restore_remaining: 0,
                    lag,
                    checkpoints: points
                        .iter()
                        .map(|(c, checkpoint)| (c.to_string(), checkpoint.map(|c| c.next)))
                        .collect(),
                    member: 0,
                    guarantee,
                }
            })
            .collect();
        self.setup.status.publish_standbys(tasks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::embedded::EmbeddedCluster;
    use crate::processor::Nothing;
    use crate::state::Checkpoint;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::ClientConfig;

    const CHANGELOG: &str = "sb-counts-changelog";

    fn produce(bootstrap: &str, partition: i32, from: usize, to: usize) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .unwrap();
        for i in from..to {
            let key = format!("k{i}");
            let value = format!("{i}");
            producer
                .send(
                    BaseRecord::to(CHANGELOG)
                        .partition(partition)
                        .key(&key)
                        .payload(&value),
                )
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
    }

    fn wait(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cond() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The standbys' setup for app `sb` (one topology, `counts` over `in`, 2 partitions) on
    /// `bootstrap`, with state under `dir` and `retention` as the changelog's tombstone
    /// retention.
    fn setup_for(
        bootstrap: &str,
        dir: &std::path::Path,
        retention: Option<Duration>,
    ) -> StandbySetup {
        let config = crate::config::load_str(&format!(
            "[app]\nid = \"sb\"\n[kafka]\nbootstrap_servers = {bootstrap:?}\n[state]\ndir = {dir:?}\nstandby_replicas = 1\n[http]\nlisten = \"127.0.0.1:0\"\n",
        ))
        .unwrap();
        let topologies = Arc::new(vec![
            Topology::new("counts", ["in"], |_| Nothing).store("counts")
        ]);
        StandbySetup {
            config: Arc::new(config),
            bootstrap: bootstrap.to_string(),
            topologies,
            partitions: Arc::new([("in".to_string(), 2)].into_iter().collect()),
            tombstone_retention: Arc::new(
                retention
                    .map(|r| (CHANGELOG.to_string(), r))
                    .into_iter()
                    .collect(),
            ),
            metrics: Metrics::new(),
            status: Arc::new(StatusBoard::new(1)),
            state_memory: StateMemory::new(100, 8, 8),
            presence: Arc::new(crate::state::presence::announce(&dir.join("sb")).unwrap()),
        }
    }

    const TASK: TaskId = TaskId {
        topology: 0,
        partition: 1,
    };

    /// The standby of [`TASK`]'s checkpoint as written (after writing what it applied).
    fn written_checkpoint(inner: &mut Inner) -> Option<Checkpoint> {
        inner.write_all();
        inner.tasks.get(&TASK)?.restore_points().unwrap()[0].1
    }

    /// An embedded cluster with the standbys' topics, [`TASK`]'s changelog partition holding
    /// `records` changes.
    fn cluster_with(records: usize) -> EmbeddedCluster {
        let cluster = EmbeddedCluster::start(1).unwrap();
        cluster.create_topic("in", 2).unwrap();
        cluster.create_topic(CHANGELOG, 2).unwrap();
        produce(cluster.bootstrap(), 1, 0, records);
        cluster
    }

    /// Makes the standbys keep [`TASK`] and drives them until its changelog is applied to
    /// `next`.
    fn keep_task(inner: &mut Inner, next: i64) {
        inner.wanted = [TASK].into();
        inner.reconcile(&BTreeSet::new());
        apply_until(inner, next);
    }

    /// Drives the standby (as its thread does) until it has applied the changelog to `next`.
    fn apply_until(inner: &mut Inner, next: i64) {
        wait("the standby applies the changelog", || {
            inner.rebuild_stale();
            inner.poll();
            written_checkpoint(inner).is_some_and(|c| c.next >= next)
        });
    }

    /// A member's claim (made from its rebalance callback, which the member's whole loop waits
    /// for) does not wait for the brokers: while the standby thread is stuck asking an
    /// unresponsive broker where a changelog ends, the claim returns at once, and the member
    /// (which retries a task whose directory is still locked) gets the directory once the
    /// standby lets go of it.
    #[test]
    fn a_claim_does_not_wait_for_an_unresponsive_broker() {
        // A "broker" that accepts connections and never answers.
        let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let bootstrap = hole.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in hole.incoming() {
                held.extend(conn.ok());
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let setup = setup_for(&bootstrap, dir.path(), None);
        let standbys = Arc::new(Standbys::new(setup.clone()).unwrap());
        let stop = CancellationToken::new();
        let thread = {
            let (standbys, stop) = (standbys.clone(), stop.clone());
            std::thread::spawn(move || standbys.run(|| Some([TASK].into()), stop))
        };
        // The standby opens the task's RocksDB, then asks the broker for the changelog's
        // watermarks: the directory existing means the thread is (about to be) waiting on it.
        let task_dir = dir.path().join("sb").join(TASK.to_string());
        wait("the standby opens its directory", || {
            task_dir.join("CURRENT").exists()
        });
        let (done_tx, done) = std::sync::mpsc::channel();
        {
            let standbys = standbys.clone();
            std::thread::spawn(move || {
                standbys.claim(TASK, 0);
                let _ = done_tx.send(());
            });
        }
        // The broker never answers; the standby's own wait for it ends after
        // WATERMARK_TIMEOUT. A claim that returns within half of that did not wait for it.
        let claimed = done.recv_timeout(crate::kafka::restore::WATERMARK_TIMEOUT / 2);
        stop.cancel();
        assert!(
            claimed.is_ok(),
            "the claim waited for the standby thread's broker request"
        );
        thread.join().unwrap();
    }

    /// Under steady writes the changelog's end has always moved on by the time it is asked for
    /// again, yet a standby that has applied everything up to an end it saw earlier holds every
    /// change the changelog had then: its checkpoint says so. (Were its sync time left where it
    /// opened, a takeover more than `delete.retention.ms` later would not trust the standby and
    /// would restore in full.)
    #[test]
    fn a_standby_under_steady_writes_records_when_it_was_last_in_sync() {
        let cluster = cluster_with(500);
        let dir = tempfile::tempdir().unwrap();
        let standbys = Standbys::new(setup_for(cluster.bootstrap(), dir.path(), None)).unwrap();
        let mut inner = standbys.lock();
        keep_task(&mut inner, 500);
        let opened = written_checkpoint(&mut inner)
            .unwrap()
            .synced_at_ms
            .unwrap();

        // Records arrive between every two looks at the end.
        produce(cluster.bootstrap(), 1, 500, 600);
        let first_look = now_ms();
        assert!(first_look > opened);
        inner.refresh_ends(); // end 600, applied to 500
        apply_until(&mut inner, 600);
        produce(cluster.bootstrap(), 1, 600, 700);
        inner.refresh_ends(); // end 700, applied to 600: all the changelog had at the first look
        let synced = written_checkpoint(&mut inner)
            .unwrap()
            .synced_at_ms
            .unwrap();
        assert!(
            synced >= first_look,
            "the standby holds everything written before {first_look}, but its checkpoint \
             says it was last in sync at {synced} (when it opened: {opened})"
        );
    }

    /// The same stall, and the standby's worker is killed (SIGKILL) once the standby wrote the
    /// tail it read, before it looked at the end again: what it left on disk must not be
    /// trusted at the changelog's end unless it read the changelog again from the start.
    #[test]
    fn a_standby_killed_after_reading_a_late_tail_leaves_nothing_trusted() {
        let cluster = cluster_with(500);
        let dir = tempfile::tempdir().unwrap();
        let retention = Duration::from_secs(1);
        let setup = setup_for(cluster.bootstrap(), dir.path(), Some(retention));
        let standbys = Standbys::new(setup.clone()).unwrap();
        let mut inner = standbys.lock();
        keep_task(&mut inner, 500);
        inner.refresh_ends();
        let synced = written_checkpoint(&mut inner)
            .unwrap()
            .synced_at_ms
            .unwrap();
        produce(cluster.bootstrap(), 1, 500, 700);
        wait("the tombstone retention passes", || {
            now_ms() > synced + retention.as_millis() as i64
        });
        apply_until(&mut inner, 700);
        // Killed here: the checkpoint as written is what a restart or a takeover finds.
        let on_disk = written_checkpoint(&mut inner);
        let read = setup
            .metrics
            .standby_records
            .with_label_values(&["counts"])
            .get();
        let start =
            crate::kafka::restore::RestoreStart::decide(on_disk, 0, 700, Some(retention), now_ms());
        assert!(
            start.from < 700 || read >= 500 + 700,
            "{on_disk:?} is trusted at the end, but the standby read only the late tail \
             ({read} records in all)"
        );
    }

    /// A standby that stalls (its worker paused, its broker away) for longer than the
    /// changelog keeps tombstones may find, when it reads on, that compaction removed deletions
    /// it never applied: it would keep the deleted keys. So, as a restore of a tail that took
    /// that long, it does not trust what it would read: it empties its store and reads the
    /// changelog again from the start, and only then says it is in sync.
    #[test]
    fn a_standby_that_outlived_the_tombstone_retention_rebuilds() {
        let cluster = cluster_with(500);
        let dir = tempfile::tempdir().unwrap();
        let retention = Duration::from_secs(1);
        let setup = setup_for(cluster.bootstrap(), dir.path(), Some(retention));
        let standbys = Standbys::new(setup.clone()).unwrap();
        let mut inner = standbys.lock();
        keep_task(&mut inner, 500);
        inner.refresh_ends();
        let synced = written_checkpoint(&mut inner)
            .unwrap()
            .synced_at_ms
            .unwrap();

        // The standby reads nothing for longer than the retention while the owner writes.
        produce(cluster.bootstrap(), 1, 500, 700);
        wait("the tombstone retention passes", || {
            now_ms() > synced + retention.as_millis() as i64
        });
        let records = || {
            setup
                .metrics
                .standby_records
                .with_label_values(&["counts"])
                .get()
        };
        apply_until(&mut inner, 700);
        assert_eq!(
            records(),
            500 + 700,
            "the standby read the changelog again from the start, not the late tail"
        );
        inner.refresh_ends();
        let rebuilt = written_checkpoint(&mut inner).unwrap();
        assert_eq!(rebuilt.next, 700);
        assert!(rebuilt.synced_at_ms.unwrap() > synced + retention.as_millis() as i64);
        let db = inner.tasks[&TASK].db().clone();
        assert_eq!(db.get(0, b"k699").unwrap(), Some(b"699".to_vec()));
    }

    /// Two workers may share one state directory (each task directory's lock keeps them from
    /// using one at once). A standby of a task that the other worker runs must then not keep
    /// the task's directory: the other worker's member, given the task back after a rebalance
    /// that took it away for a moment, would wait for it for as long as the placement stands.
    #[test]
    fn a_standby_does_not_keep_a_task_from_a_worker_sharing_the_state_directory() {
        let cluster = cluster_with(100);
        let dir = tempfile::tempdir().unwrap();
        // Worker A runs the task; worker B, on the same state directory, is to keep its standby.
        let a = setup_for(cluster.bootstrap(), dir.path(), None);
        let a_standbys = Arc::new(Standbys::new(a.clone()).unwrap());
        let b = setup_for(cluster.bootstrap(), dir.path(), None);
        let b_standbys = Arc::new(Standbys::new(b.clone()).unwrap());
        let open = || {
            Task::open_for(
                &a.topologies[0],
                TASK,
                "sb",
                &a.partitions,
                &dir.path().join("sb"),
                &a.state_memory,
                &a.metrics,
            )
        };
        let b_has_standby = || {
            b.status.tasks().iter().any(|t| {
                t.partition == TASK.partition && t.state == crate::task::TaskState::Standby
            })
        };
        // A's member runs the task; a rebalance takes it away and, a moment later, gives it
        // back (as an eager assignor does with every partition).
        a_standbys.claim(TASK, 0);
        let running = open().unwrap();
        let stop = CancellationToken::new();
        let b_placements = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = [
            (a_standbys.clone(), None, None),
            (b_standbys.clone(), Some(TASK), Some(b_placements.clone())),
        ]
        .into_iter()
        .map(|(standbys, wanted, count)| {
            let stop = stop.clone();
            let placement = move || {
                if let Some(c) = &count {
                    c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                Some(wanted.into_iter().collect())
            };
            std::thread::spawn(move || standbys.run(placement, stop))
        })
        .collect();
        drop(running);
        a_standbys.unclaim(TASK, 0);
        // B opens the standbys of a placement before it asks for the next one.
        let asked = b_placements.load(std::sync::atomic::Ordering::SeqCst);
        wait("B places its standbys twice more", || {
            b_placements.load(std::sync::atomic::Ordering::SeqCst) >= asked + 2
        });
        let b_took_it = b_has_standby();
        a_standbys.claim(TASK, 0);
        let mut reopened = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while reopened.is_none() && Instant::now() < deadline {
            match open() {
                Ok(task) => reopened = Some(task),
                Err(StateError::Locked { .. }) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => panic!("{e}"),
            }
        }
        stop.cancel();
        for t in threads {
            t.join().unwrap();
        }
        assert!(
            reopened.is_some() && !b_took_it,
            "A's member could not open its task: B's standby kept the shared directory"
        );
    }

    /// A store that was at its changelog's end when its standby opened holds everything the
    /// changelog had then, however long ago it was last written: the records that follow are
    /// a fresh tail, not one read too late.
    #[test]
    fn a_standby_opened_at_the_end_of_its_changelog_is_in_sync_then() {
        let cluster = cluster_with(500);
        let dir = tempfile::tempdir().unwrap();
        let retention = Duration::from_secs(1);
        let setup = setup_for(cluster.bootstrap(), dir.path(), Some(retention));
        let standbys = Standbys::new(setup.clone()).unwrap();
        let mut inner = standbys.lock();
        keep_task(&mut inner, 500);
        inner.close(TASK);
        // The store was last known in sync long ago (its task idle, or its worker away).
        let mut task = Task::open_for(
            &setup.topologies[0],
            TASK,
            "sb",
            &setup.partitions,
            &dir.path().join("sb"),
            &setup.state_memory,
            &setup.metrics,
        )
        .unwrap();
        task.mark_synced(CHANGELOG, now_ms() - 10 * retention.as_millis() as i64)
            .unwrap();
        drop(task);

        inner.reconcile(&BTreeSet::new());
        produce(cluster.bootstrap(), 1, 500, 501);
        apply_until(&mut inner, 501);
        inner.refresh_ends();
        let checkpoint = written_checkpoint(&mut inner);
        assert_eq!(
            checkpoint.map(|c| c.next),
            Some(501),
            "the standby emptied a store that was in sync when it opened"
        );
    }

    /// A standby copies its task's changelog with its checkpoint; when a member claims the task,
    /// it closes, and the task opens on the same directory with nothing left to restore.
    #[test]
    fn a_standby_tails_its_changelog_and_hands_its_state_over() {
        let cluster = cluster_with(500);
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::load_str(&format!(
            "[app]\nid = \"sb\"\n[kafka]\nbootstrap_servers = {:?}\n[state]\ndir = {:?}\nstandby_replicas = 1\n",
            cluster.bootstrap(),
            dir.path()
        ))
        .unwrap();
        let topologies = Arc::new(vec![
            Topology::new("counts", ["in"], |_| Nothing).store("counts")
        ]);
        let partitions: Arc<BTreeMap<String, i32>> =
            Arc::new([("in".to_string(), 2)].into_iter().collect());
        let status = Arc::new(StatusBoard::new(1));
        let metrics = Metrics::new();
        let setup = StandbySetup {
            config: Arc::new(config),
            bootstrap: cluster.bootstrap().to_string(),
            topologies: topologies.clone(),
            partitions: partitions.clone(),
            tombstone_retention: Arc::default(),
            metrics: metrics.clone(),
            status: status.clone(),
            state_memory: StateMemory::new(100, 8, 8),
            presence: Arc::new(crate::state::presence::announce(&dir.path().join("sb")).unwrap()),
        };
        let standbys = Arc::new(Standbys::new(setup.clone()).unwrap());
        let task = TaskId {
            topology: 0,
            partition: 1,
        };
        assert_eq!(
            Standbys::stateful_tasks(&topologies, &partitions),
            [0, 1]
                .into_iter()
                .map(|partition| TaskId {
                    topology: 0,
                    partition
                })
                .collect()
        );
        let stop = CancellationToken::new();
        let thread = {
            let (standbys, stop) = (standbys.clone(), stop.clone());
            std::thread::spawn(move || standbys.run(|| Some([task].into()), stop))
        };
        let standby_status = || {
            status
                .tasks()
                .into_iter()
                .find(|t| t.partition == 1 && t.state == crate::task::TaskState::Standby)
        };
        wait("the standby copies the changelog", || {
            standby_status().is_some_and(|t| t.lag == 0 && t.checkpoints[CHANGELOG] == Some(500))
        });
        produce(cluster.bootstrap(), 1, 500, 700);
        wait("the standby follows the changelog", || {
            standby_status().is_some_and(|t| t.checkpoints[CHANGELOG] == Some(700))
        });
        assert_eq!(
            metrics.standby_records.with_label_values(&["counts"]).get(),
            700
        );
        assert_eq!(
            metrics
                .restored_records
                .with_label_values(&["counts"])
                .get(),
            0
        );

        // A member takes the task over. Its claim does not wait while the standbys' thread is
        // busy (here: holds the lock); the thread lets go of the task on its next turn.
        {
            let _busy = standbys.lock();
            standbys.claim(task, 0);
        }
        let open = || {
            Task::open_for(
                &topologies[0],
                task,
                "sb",
                &partitions,
                &dir.path().join("sb"),
                &setup.state_memory,
                &metrics,
            )
        };
        let mut opened = None;
        wait("the standby lets go of the directory", || match open() {
            Ok(t) => {
                opened = Some(t);
                true
            }
            Err(StateError::Locked { .. }) => false,
            Err(e) => panic!("opening the task: {e}"),
        });
        let opened = opened.unwrap();
        let points = opened.restore_points().unwrap();
        assert_eq!(points.len(), 1);
        let checkpoint: Checkpoint = points[0].1.expect("a checkpoint");
        assert_eq!(checkpoint.next, 700);
        assert!(checkpoint.synced_at_ms.is_some());
        assert_eq!(opened.db().get(0, b"k699").unwrap(), Some(b"699".to_vec()));
        wait("the claimed task is no standby any more", || {
            standby_status().is_none()
        });
        // Released again, it becomes a standby again once the member closed it.
        drop(opened);
        standbys.unclaim(task, 0);
        wait("the standby comes back", || standby_status().is_some());
        stop.cancel();
        thread.join().unwrap();
        assert!(standby_status().is_none(), "closed on shutdown");
    }
}
