//! Commits under `processing.guarantee = "exactly_once"` (KIP-447, Kafka Streams' "EOS v2").
//!
//! One transaction per member and commit interval holds everything the member's tasks sent
//! since the last commit (sink, changelog and dead-letter records) and, sent to it with the
//! consumer's group metadata, the input offsets they reached. The group coordinator refuses
//! those offsets from a member fenced out of the group (a zombie that was paused past its
//! session), so a zombie's transaction can only abort; a restarted worker's producer, with the
//! same `transactional.id`, aborts what its crashed predecessor left open.
//!
//! RocksDB gets a commit's state changes, with the changelog offsets they reached, only after
//! the transaction committed. A crash therefore leaves the local store at the last committed
//! transaction, and the task restores only the changelog tail after it (the `read_committed`
//! restore skips aborted records): no wipe after a crash.
//!
//! When a transaction fails, everything the member derived from its records since the last
//! commit is thrown away: the transaction is aborted (or, if the producer cannot go on, a new
//! producer fences the old one, which aborts it), every task is closed without writing
//! anything and opened again from its committed state, and every input partition is read
//! again from the group's committed offset. Re-delivery marks, caches and whatever a processor
//! keeps in memory (stream time, window timers) go with the closed tasks.

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use super::pool::{CellState, TaskCell};
use super::{Core, MemberConsumer};
use crate::kafka::collector::{Collector, Ended, TxnError};
use crate::state::now_ms;
use crate::task::TaskError;
use crate::types::TaskId;

/// How long a member that lost its producer waits between attempts at a new one, and how long
/// fetching the committed offsets after an abort may hold up the loop.
const RECOVERY_STEP: Duration = Duration::from_secs(5);
/// Transactions that may fail in a row, without a commit between, before the member gives up:
/// a record the producer always refuses (too large for the topic, a value that does not
/// encode) fails every replay of its interval, and two workers with one `transactional.id`
/// fence each other without end.
const FAILED_IN_A_ROW: u32 = 10;

/// Where a member's transactions stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Transactions {
    /// A transaction is open (possibly still empty).
    Open,
    /// The failed transaction's end (its abort, or its commit that timed out) is still under
    /// way in the background: the producer is asked again until it answers.
    Aborting {
        /// Why the transaction failed.
        reason: String,
        /// When to ask next.
        next_attempt: Instant,
    },
    /// The producer cannot go on; a new one is needed before anything is processed again.
    NeedProducer {
        /// Why.
        reason: String,
        /// When to try next.
        next_attempt: Instant,
    },
    /// A new producer is registering its `transactional.id` (which fences the old one and
    /// settles its transaction); the registration ran out of time and is asked again.
    Initialising {
        /// When to ask next.
        next_attempt: Instant,
    },
}

impl Transactions {
    /// When the member should next try to bring its transactions back to [`Transactions::Open`].
    fn next_attempt(&self) -> Option<Instant> {
        match self {
            Transactions::Open => None,
            Transactions::Aborting { next_attempt, .. }
            | Transactions::NeedProducer { next_attempt, .. }
            | Transactions::Initialising { next_attempt } => Some(*next_attempt),
        }
    }
}

impl Core {
    /// Commits the open transaction: flushes the caches into it, waits for every record it
    /// holds to be acknowledged, sends the input offsets, commits, and writes the state
    /// batches into RocksDB. A failure aborts it ([`Core::abort_and_rewind`]); the member goes on.
    ///
    /// The tasks wait meanwhile (the commit holds every cell's lock): a record sent while the
    /// transaction commits would be committed with it, without the input offset it came from.
    pub(super) fn commit_transaction(&mut self) -> Result<(), TaskError> {
        let start = Instant::now();
        let started_ms = now_ms();
        self.last_commit = start;
        if self.failed.is_some() || self.txn != Transactions::Open {
            return Ok(());
        }
        let cells: Vec<Arc<TaskCell>> = self.tasks.values().cloned().collect();
        let mut held: Vec<MutexGuard<'_, CellState>> = cells.iter().map(|c| c.lock()).collect();
        let held_since = Instant::now();
        // A task that failed while the locks were being taken may have sent part of a record's
        // output into this transaction, whose offsets stop before that record: it must abort.
        if let Some(cause) = self.failures_now() {
            stop_all(held);
            if let Some(cause) = cause {
                self.abort_and_rewind(cause);
            }
            return Ok(());
        }
        let collector = self.collector.clone();
        let sink = collector.tagged(self.generation);
        let mut points = Vec::new();
        for state in &mut held {
            let Some(task) = state.running() else {
                continue;
            };
            match task.prepare_commit(&sink) {
                Ok(point) => points.push(point),
                // The flush only sends (the changelog records of the cached changes): a
                // failure is the transaction's.
                Err(e) => {
                    stop_all(held);
                    self.abort_and_rewind(TxnError::Abort(format!("flushing caches: {e}")));
                    return Ok(());
                }
            }
        }
        self.generation += 1;
        let mut offsets = TopicPartitionList::new();
        for point in &points {
            for (topic, partition, offset) in point.offsets() {
                offsets
                    .add_partition_offset(topic, partition, Offset::Offset(offset))
                    .expect("invariant: offsets are valid");
            }
        }
        if offsets.count() == 0 && !self.collector.sent_in_transaction() {
            // Nothing happened since the last commit: the transaction stays open, and empty.
            // The stores' sync times are refreshed as under at least once (a changelog ends in
            // a transaction marker, so a restore always sees a tail to read).
            drop(held);
            if self.confirm_quiet_ownership(start) {
                self.finish_commits(points, &HashMap::new(), Some(started_ms))?;
            }
            return Ok(());
        }
        let timeout = self.commit_timeout();
        let result = self
            .collector
            .flush(timeout)
            .map_err(|e| TxnError::Abort(e.to_string()))
            .and_then(|()| {
                let consumer = self.group_consumer.upgrade().ok_or_else(|| {
                    TxnError::Abort("the member's consumer is gone (shutting down)".into())
                })?;
                let group = consumer.group_metadata().ok_or_else(|| {
                    TxnError::Abort("the consumer has no group metadata yet".into())
                })?;
                self.collector.commit_transaction(&offsets, &group, timeout)
            });
        if let Err(e) = result {
            stop_all(held);
            drop(points);
            self.abort_and_rewind(e);
            return Ok(());
        }
        self.failed_in_a_row = 0;
        let acks = self.collector.take_changelog_acks();
        for point in points {
            let task = held
                .iter_mut()
                .filter_map(|state| state.task.as_mut())
                .find(|t| t.id() == point.task());
            if let Some(task) = task {
                task.offsets_durable(&point);
                task.offsets_committed(&point);
                // The coordinator took the offsets: the member owned its partitions.
                task.finish_commit(point, &acks, Some(started_ms))?;
            }
        }
        drop(held);
        self.last_confirmed = start;
        self.setup
            .metrics
            .transactions
            .with_label_values(&["committed"])
            .inc();
        self.observe_commit(start, held_since.elapsed());
        Ok(())
    }

    /// Aborts the open transaction after `cause` and throws away everything derived from its
    /// records: closes every task without writing anything, to open it again from its committed
    /// state, and marks every input partition for a rewind to the group's committed offset
    /// ([`Core::recover`] finishes the job on the next loop turn).
    pub(super) fn abort_and_rewind(&mut self, cause: TxnError) {
        tracing::warn!(member = self.member(), error = %cause, "transaction failed; aborting it and going back to the last commit");
        // Counted now, whatever its end: it did not commit when it should have.
        self.setup
            .metrics
            .transactions
            .with_label_values(&["aborted"])
            .inc();
        // Nothing more is sent for the aborted transaction's tasks: what they would send now
        // would go into the next one.
        self.hold_all();
        // Every task that failed sending failed with this transaction: one abort answers them
        // all (a failure of another kind still stops the member).
        let _ = self.failures_now();
        self.txn = match cause {
            TxnError::Fatal(reason) => {
                self.count_failed(&reason);
                Transactions::NeedProducer {
                    reason,
                    next_attempt: Instant::now(),
                }
            }
            // Bounded short: an abort that cannot complete now (a commit whose outcome is
            // still being settled, a broker away) is asked again on the next loop turns.
            TxnError::Abort(reason) | TxnError::TimedOut(reason) => {
                let timeout = self.commit_timeout().min(RECOVERY_STEP);
                let outcome = self.collector.abort_transaction(timeout);
                self.after_abort(reason, outcome)
            }
        };
        // No more input until the rewind (fetching it now would only drop it).
        if let Some(consumer) = self.group_consumer.upgrade() {
            let assigned: Vec<(Arc<str>, i32)> = self
                .assigned
                .iter()
                .flat_map(|(id, topics)| topics.iter().map(|t| (t.clone(), id.partition)))
                .collect();
            for (topic, partition) in assigned {
                self.pause(&consumer, &topic, partition);
            }
        }
        // Where each input partition started, for those the group has no offset for yet.
        let mut fallback = Vec::new();
        self.for_each_task(|task| fallback.extend(task.settled_offsets()));
        for (topic, partition, offset) in fallback {
            self.rewind_fallback.insert((topic, partition), offset);
        }
        let ids: Vec<TaskId> = self.tasks.keys().copied().collect();
        for id in ids {
            self.close_task(id, true);
            if self.assigned.contains_key(&id) {
                self.pending_open.insert(id);
            }
        }
        self.rewind_pending = true;
        self.publish_status();
    }

    /// Finishes what an abort started, a step per loop turn: the abort itself if it ran out of
    /// time, a new producer if the old one cannot go on, then the rewind of every input
    /// partition to the group's committed offset (read only once the failed transaction is
    /// settled: a commit that timed out may still have committed). Until all are done no task
    /// opens ([`Core::ready_for_tasks`]).
    pub(super) fn recover(&mut self, consumer: &MemberConsumer) {
        // One attempt per turn (each may wait up to RECOVERY_STEP): the loop goes on polling
        // the group meanwhile.
        if let Some(next_attempt) = self.txn.next_attempt() {
            if Instant::now() < next_attempt {
                return;
            }
            self.txn = match std::mem::replace(&mut self.txn, Transactions::Open) {
                Transactions::Open => Transactions::Open,
                Transactions::Aborting { reason, .. } => {
                    let outcome = self.collector.abort_transaction(RECOVERY_STEP);
                    self.after_abort(reason, outcome)
                }
                Transactions::NeedProducer { reason, .. } => self.new_producer(reason),
                Transactions::Initialising { .. } => self.init_producer(),
            };
            if self.txn != Transactions::Open {
                return;
            }
        }
        if self.rewind_pending {
            self.rewind_to_committed(consumer);
        }
    }

    /// Counts a transaction that ended without committing, and stops the member after
    /// [`FAILED_IN_A_ROW`] of them without a commit between.
    fn count_failed(&mut self, cause: &str) {
        self.failed_in_a_row += 1;
        if self.failed_in_a_row >= FAILED_IN_A_ROW {
            let id = self
                .producer_config
                .get("transactional.id")
                .unwrap_or_default()
                .to_string();
            self.fail(format!(
                "{FAILED_IN_A_ROW} transactions in a row failed without a commit (the last: \
                 {cause}); a record the producer refuses every time, or another worker using \
                 transactional.id {id:?} (a copy of this state.dir? give each worker its own \
                 state.dir or app.instance_id)"
            ));
        }
    }

    /// Where an abort's `outcome` leaves the transactions (open again, the abort to be asked
    /// again, or a new producer needed), counting the failures in a row once the
    /// transaction's fate is known.
    fn after_abort(&mut self, reason: String, outcome: Result<Ended, TxnError>) -> Transactions {
        match outcome {
            Ok(Ended::Aborted) => {
                self.count_failed(&reason);
                Transactions::Open
            }
            Ok(Ended::Committed) => {
                // A commit after all (its records and offsets are visible: the rewind and the
                // restore read them), though what it held in memory is gone with the tasks.
                tracing::info!(
                    member = self.member(),
                    "the failed transaction's commit went through after all"
                );
                self.failed_in_a_row = 0;
                Transactions::Open
            }
            Err(TxnError::TimedOut(e)) => {
                tracing::warn!(member = self.member(), error = %e, "the aborted transaction is not settled yet; asking again");
                Transactions::Aborting {
                    reason,
                    next_attempt: Instant::now(),
                }
            }
            // The new producer's registration aborts it.
            Err(TxnError::Abort(e) | TxnError::Fatal(e)) => {
                self.count_failed(&reason);
                Transactions::NeedProducer {
                    reason: format!("aborting failed: {e}"),
                    next_attempt: Instant::now(),
                }
            }
        }
    }

    /// Replaces the producer that cannot go on (nothing of its is under way any more: the
    /// old collector settles what is before it goes) and registers the new one.
    fn new_producer(&mut self, reason: String) -> Transactions {
        tracing::info!(member = self.member(), %reason, "replacing the transactional producer");
        match Collector::new(
            &self.producer_config,
            self.setup.metrics.clone(),
            self.commit_timeout(),
        ) {
            Ok(collector) => {
                self.collector = Arc::new(collector);
                self.init_producer()
            }
            Err(e) => {
                tracing::warn!(member = self.member(), error = %e, "no transactional producer yet; trying again");
                Transactions::NeedProducer {
                    reason: e.to_string(),
                    next_attempt: Instant::now() + RECOVERY_STEP,
                }
            }
        }
    }

    /// Registers the new producer's `transactional.id`, or resumes the registration.
    fn init_producer(&self) -> Transactions {
        match self.collector.init_transactions(RECOVERY_STEP) {
            Ok(()) => Transactions::Open,
            Err(TxnError::TimedOut(e)) => {
                tracing::warn!(member = self.member(), error = %e, "the new transactional producer is not registered yet; asking again");
                Transactions::Initialising {
                    next_attempt: Instant::now(),
                }
            }
            Err(e) => {
                tracing::warn!(member = self.member(), error = %e, "no transactional producer yet; trying again");
                Transactions::NeedProducer {
                    reason: e.to_string(),
                    next_attempt: Instant::now() + RECOVERY_STEP,
                }
            }
        }
    }

    /// Takes the failures reported so far: `None` if there were none; `Some(None)` if one
    /// stopped the member; `Some(Some(cause))` if tasks failed sending into the transaction.
    pub(super) fn failures_now(&mut self) -> Option<Option<TxnError>> {
        let mut outcome = None;
        while let Ok((id, error)) = self.failures.try_recv() {
            match error {
                TaskError::Collector(e) => {
                    if outcome.is_none() {
                        outcome = Some(Some(TxnError::Abort(format!("task {id}: sending: {e}"))));
                    }
                }
                other => {
                    self.fail(other.to_string());
                    outcome = Some(None);
                }
            }
        }
        if self.failed.is_some() {
            return Some(None);
        }
        outcome
    }

    /// True when tasks may open: no abort is half done.
    pub(super) fn ready_for_tasks(&self) -> bool {
        !self.exactly_once() || (self.txn == Transactions::Open && !self.rewind_pending)
    }

    /// Pauses every assigned input partition and marks it to be read again, once its task
    /// runs, from the offset the group committed (the last committed transaction's): see
    /// [`Core::activate`].
    fn rewind_to_committed(&mut self, consumer: &MemberConsumer) {
        let mut tpl = TopicPartitionList::new();
        for (id, topics) in &self.assigned {
            for topic in topics {
                tpl.add_partition(topic, id.partition);
            }
        }
        let committed = match consumer.committed_offsets(tpl, RECOVERY_STEP) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(member = self.member(), error = %e, "reading the committed offsets failed; trying again");
                return;
            }
        };
        if let Some(e) = committed.elements().iter().find_map(|e| e.error().err()) {
            tracing::warn!(member = self.member(), error = %e, "reading the committed offsets failed; trying again");
            return;
        }
        for elem in committed.elements() {
            let Some(route) = self.routes.get(elem.topic()) else {
                continue;
            };
            let key = (route.topic.clone(), elem.partition());
            // No commit yet: where the task started (what the reset policy chose). A task
            // that took nothing has nothing to do again.
            let offset = match elem.offset() {
                Offset::Offset(o) => Some(o),
                _ => self.rewind_fallback.get(&key).copied(),
            };
            if let Some(offset) = offset {
                self.rewind.insert(key.clone(), offset);
            }
            self.pause(consumer, &key.0, key.1);
        }
        self.rewind_fallback.clear();
        self.rewind_pending = false;
    }
}

/// Stops the held tasks from processing, then lets go of them.
fn stop_all(held: Vec<MutexGuard<'_, CellState>>) {
    for mut state in held {
        state.active = false;
    }
}
