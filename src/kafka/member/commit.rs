//! Commits under at least once: commit points, acknowledgements, offset commits and the
//! ownership checks that keep a fenced member from writing stale state.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use super::{Core, MemberConsumer};
use crate::state::now_ms;
use crate::task::{CommitPoint, Task, TaskError, TaskState};

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

impl Core {
    pub(super) fn commit_due(&self) -> bool {
        let interval = Duration::from_millis(self.setup.config.processing.commit_interval_ms);
        if self.last_commit.elapsed() >= interval {
            return true;
        }
        // A full cache asks for a commit at once, unless the last one failed: retrying on
        // every loop turn would use up the failures allowed in a row within moments.
        self.failed_commits == 0 && self.tasks.values().any(|cell| cell.wants_commit())
    }

    /// Commits every running task: commit points → wait for their acks → commit offsets →
    /// write state. The tasks go on processing meanwhile, into the next commit.
    pub(super) fn commit(&mut self) -> Result<(), TaskError> {
        // A task that failed on its processing thread is dealt with first (under exactly once
        // its transaction aborts rather than commits).
        self.take_failures();
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
        let (points, point_hold) = self.commit_points()?;
        self.collector
            .flush_generation(self.generation - 1, self.commit_timeout())?;
        let mut acks = std::mem::take(&mut self.pending_acks);
        for (partition, offset) in self.collector.take_changelog_acks() {
            let slot = acks.entry(partition).or_insert(offset);
            *slot = (*slot).max(offset);
        }
        let mut tpl = TopicPartitionList::new();
        for point in &points {
            if let Some(task) = self.tasks.get(&point.task()) {
                if let Some(task) = task.lock().task.as_mut() {
                    task.offsets_durable(point);
                }
            }
            for (topic, partition, offset) in point.offsets() {
                tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
                    .expect("invariant: offsets are valid");
            }
        }
        if tpl.count() > 0 {
            match commit_offsets(&self.group_consumer, &tpl, self.commit_timeout()) {
                Ok(()) => {
                    confirmed = true;
                    self.failed_commits = 0;
                    self.failing_since = None;
                    for point in &points {
                        if let Some(cell) = self.tasks.get(&point.task()) {
                            if let Some(task) = cell.lock().task.as_mut() {
                                task.offsets_committed(point);
                            }
                        }
                    }
                }
                Err(e) => {
                    // The state batches must not reach RocksDB: their checkpoint would claim
                    // input the group never recorded as processed, and a fenced member's
                    // checkpoint would skip changes the partition's new owner wrote to the
                    // changelog meanwhile.
                    drop(points);
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
        let write_hold = self.finish_commits(points, &acks, confirmed.then_some(started_ms))?;
        self.observe_commit(start, point_hold.max(write_hold));
        Ok(())
    }

    /// Records a commit that went through: how long it took since `start`, and the longest
    /// time it held up a task.
    pub(super) fn observe_commit(&self, start: Instant, stall: Duration) {
        let member = self.member().to_string();
        let metrics = &self.setup.metrics;
        metrics
            .commit_latency
            .with_label_values(&[&member])
            .observe(start.elapsed().as_secs_f64());
        metrics
            .commit_stall
            .with_label_values(&[&member])
            .observe(stall.as_secs_f64());
    }

    /// Takes the commit point of every running task, each under its lock, and moves the member
    /// to the next generation: `self.generation - 1` is the one the points wait for. Also
    /// returns the longest time one task was held.
    fn commit_points(&mut self) -> Result<(Vec<CommitPoint>, Duration), TaskError> {
        let sink = self.collector.tagged(self.generation);
        let mut points = Vec::new();
        let mut longest = Duration::ZERO;
        for cell in self.tasks.values() {
            let mut state = cell.lock();
            let held = Instant::now();
            let Some(task) = state
                .task
                .as_mut()
                .filter(|t| t.state() == TaskState::Running)
            else {
                continue;
            };
            debug_assert_eq!(task.generation(), self.generation);
            points.push(task.prepare_commit(&sink)?);
            longest = longest.max(held.elapsed());
        }
        self.generation += 1;
        Ok((points, longest))
    }

    /// Writes each commit point's state batch with the acknowledged changelog offsets; returns
    /// the longest time one task was held.
    pub(super) fn finish_commits(
        &self,
        points: Vec<CommitPoint>,
        acks: &HashMap<(String, i32), i64>,
        owned_since_ms: Option<i64>,
    ) -> Result<Duration, TaskError> {
        let mut longest = Duration::ZERO;
        for point in points {
            if let Some(cell) = self.tasks.get(&point.task()) {
                let mut state = cell.lock();
                let held = Instant::now();
                if let Some(task) = state.task.as_mut() {
                    task.finish_commit(point, acks, owned_since_ms)?;
                }
                longest = longest.max(held.elapsed());
            }
        }
        Ok(longest)
    }

    /// A quiet member (no commit confirmed its ownership lately) asks the group coordinator
    /// anyway, once a minute whatever the answer (a failure costs nothing but the refresh of
    /// its stores' sync times); true when it was confirmed now.
    pub(super) fn confirm_quiet_ownership(&mut self, now: Instant) -> bool {
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
    pub(super) fn check_ownership(
        &self,
        include: impl Fn(&Task) -> bool,
        timeout: Duration,
    ) -> Result<bool, String> {
        let mut tpl = TopicPartitionList::new();
        for (id, cell) in &self.tasks {
            // Only topics still assigned: the coordinator checks the member, not which
            // partitions it holds, and must not get a stale offset for someone else's.
            let Some(assigned) = self.assigned.get(id) else {
                continue;
            };
            let state = cell.lock();
            let Some(task) = state
                .task
                .as_ref()
                .filter(|t| t.state() == TaskState::Running && include(t))
            else {
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
