//! Rebalance events: partitions assigned to the member become tasks (opened, restored, handed
//! to the pool), partitions revoked are committed and closed before they are given up.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::pool::TaskCell;
use super::{list, lock, single, Core, MemberConsumer, MemberContext};
use crate::kafka::collector::TxnError;
use crate::kafka::restore::start_task_restore;
use crate::task::{Task, TaskState};
use crate::types::TaskId;

impl ClientContext for MemberContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::kafka::logging::log(level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        crate::kafka::logging::error(&error, reason);
    }

    fn stats(&self, stats: Statistics) {
        let mut fetched = self.fetched.lock().unwrap_or_else(|p| p.into_inner());
        fetched.clear();
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 {
                    continue;
                }
                fetched.insert(
                    (topic.clone(), *partition),
                    super::PartitionStats {
                        queued: p.fetchq_cnt,
                        lag: p.consumer_lag,
                    },
                );
                if p.consumer_lag >= 0 {
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
            Rebalance::Assign(tpl) => {
                // A partition the member did not know at start-up (the topic grew) gets its
                // queue split off before it is assigned, so that none of its records reach
                // the consumer's own queue.
                let mut core = lock(&self.core);
                if let Some(consumer) = core.group_consumer.upgrade() {
                    for (topic, partition) in list(tpl) {
                        core.split_queue(&consumer, &topic, partition);
                    }
                }
            }
            Rebalance::Error(e) => {
                tracing::error!(member = self.member, error = %e, "rebalance failed")
            }
        }
    }

    fn post_rebalance(&self, consumer: &MemberConsumer, rebalance: &Rebalance<'_>) {
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

impl Core {
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

    pub(super) fn on_assign(&mut self, consumer: &MemberConsumer, tps: &[(String, i32)]) {
        self.joined = true;
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
            match self.tasks.get(&id) {
                // Another source partition of an open task.
                Some(cell) => {
                    if let Some(queue) = self.queues.get(&(route.topic.clone(), *partition)) {
                        cell.lock().queues.push(queue.clone());
                    }
                }
                None => {
                    self.pending_open.insert(id);
                }
            }
        }
        for &id in &touched {
            self.warn_if_split(id);
        }
        // Input of tasks that cannot run yet waits in Kafka, paused, until they do.
        for (topic, partition) in tps {
            if self.task_for(topic, *partition).is_some() {
                self.pause(consumer, topic, *partition);
            }
        }
        self.open_pending(consumer);
        for id in touched {
            if self.tasks.contains_key(&id) && self.task_state(id) == Some(TaskState::Running) {
                self.activate(consumer, id);
            }
        }
        self.publish_status();
    }

    fn task_state(&self, id: TaskId) -> Option<TaskState> {
        let cell = self.tasks.get(&id)?;
        let state = cell.lock();
        state.task.as_ref().map(Task::state)
    }

    /// Opens the tasks waiting in `pending_open`; leaves those whose directory is still locked,
    /// and all of them while an aborted transaction is being recovered from.
    pub(super) fn open_pending(&mut self, consumer: &MemberConsumer) {
        if !self.ready_for_tasks() {
            return;
        }
        let pending: Vec<TaskId> = self.pending_open.iter().copied().collect();
        for id in pending {
            match self.open_task(id) {
                Ok(true) => {
                    self.pending_open.remove(&id);
                    if self.task_state(id) == Some(TaskState::Running) {
                        self.activate(consumer, id);
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
        if let Some(standbys) = &self.setup.standbys {
            // A standby of the task in this process closes first, leaving its state here (at
            // once, or soon: until then the directory is locked, and the open is retried).
            standbys.claim(id, self.setup.index);
        }
        let mut task = match Task::open_for(
            &self.setup.topologies[id.topology],
            id,
            &self.setup.config.app.id,
            &self.setup.partitions,
            &self.state_dir,
            &self.setup.state_memory,
            &self.setup.metrics,
        ) {
            Ok(task) => task,
            Err(crate::state::StateError::Locked { .. }) => {
                tracing::debug!(task = %id, "state directory still locked; will retry");
                return Ok(false);
            }
            Err(e) => return Err(e.to_string()),
        };
        task.set_idle_advance(self.setup.config.processing.idle_advance_ms);
        self.setup.status.register_db(id, task.db().clone());
        if !task.start_if_stateless() {
            start_task_restore(
                &mut self.restore,
                &mut task,
                &self.setup.tombstone_retention,
            )?;
        }
        let running = task.state() == TaskState::Running;
        let cell = Arc::new(TaskCell::new(
            task,
            self.collector.clone(),
            self.policy.clone(),
            self.failures_tx.clone(),
        ));
        {
            let mut state = cell.lock();
            for topic in self.task_partitions(id) {
                if let Some(queue) = self.queues.get(&(topic, id.partition)) {
                    state.queues.push(queue.clone());
                }
            }
        }
        if !running {
            self.restoring.insert(id);
        }
        self.setup.pool.add(cell.clone());
        self.tasks.insert(id, cell);
        Ok(true)
    }

    /// Lets a running task process: seeks its partitions to where an abort left them, then
    /// hands it to its lane and resumes its partitions.
    pub(super) fn activate(&mut self, consumer: &MemberConsumer, id: TaskId) {
        let Some(cell) = self.tasks.get(&id).cloned() else {
            return;
        };
        for topic in self.task_partitions(id) {
            let key = (topic.clone(), id.partition);
            if let Some(offset) = self.rewind.remove(&key) {
                // The seek puts a barrier in the partition's queue: nothing fetched before it
                // comes out after it.
                if let Err(e) = consumer.seek(
                    &topic,
                    id.partition,
                    Offset::Offset(offset),
                    Duration::from_secs(10),
                ) {
                    self.fail(format!(
                        "seeking {topic}/{} back to {offset}: {e}",
                        id.partition
                    ));
                    return;
                }
                if let Some(task) = cell.lock().task.as_mut() {
                    task.skip_below(&topic, offset);
                }
            }
        }
        {
            let mut state = cell.lock();
            if let Some(task) = state.task.as_mut() {
                task.set_generation(self.generation);
            }
            state.active = true;
        }
        for topic in self.task_partitions(id) {
            self.resume(consumer, &topic, id.partition);
        }
        self.setup.pool.wake();
    }

    pub(super) fn on_revoke(&mut self, tps: &[(String, i32)], lost: bool) {
        self.take_failures();
        // Tasks losing a partition stop before the commit, so that it covers all they did.
        let revoked: BTreeSet<TaskId> = tps
            .iter()
            .filter_map(|(topic, partition)| self.task_for(topic, *partition))
            .collect();
        for id in &revoked {
            if let Some(cell) = self.tasks.get(id) {
                cell.lock().active = false;
            }
        }
        if !lost && self.failed.is_none() {
            if let Err(e) = self.commit() {
                self.fail(e.to_string());
            }
        }
        if lost && self.exactly_once() && self.txn == super::exactly_once::Transactions::Open {
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
                if let Some(cell) = self.tasks.get(&id) {
                    let queue = self.queues.get(&(Arc::from(topic.as_str()), *partition));
                    cell.lock()
                        .queues
                        .retain(|q| queue.is_none_or(|gone| !Arc::ptr_eq(q, gone)));
                }
                kept.insert(id);
            }
        }
        for id in kept {
            self.warn_if_split(id);
            let running = self.task_state(id) == Some(TaskState::Running);
            if let (true, Some(cell)) = (running && self.failed.is_none(), self.tasks.get(&id)) {
                cell.lock().active = true;
                self.setup.pool.wake();
            }
        }
        self.publish_status();
    }

    /// Closes a task; `dirty`: drop its uncommitted work (the partition was lost or the member
    /// failed), otherwise it was just committed.
    pub(super) fn close_task(&mut self, id: TaskId, dirty: bool) {
        self.close_task_state(id, dirty);
        if let Some(standbys) = &self.setup.standbys {
            standbys.unclaim(id, self.setup.index);
        }
    }

    fn close_task_state(&mut self, id: TaskId, dirty: bool) {
        self.pending_open.remove(&id);
        self.restoring.remove(&id);
        let sources = &self.setup.topologies[id.topology].sources;
        self.rewind
            .retain(|(t, p), _| *p != id.partition || !sources.iter().any(|s| **s == **t));
        let Some(cell) = self.tasks.remove(&id) else {
            return;
        };
        self.setup.pool.remove(&cell);
        let task = {
            let mut state = cell.lock();
            state.active = false;
            state.queues.clear();
            state.task.take()
        };
        let Some(mut task) = task else {
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

    pub(super) fn pause(&mut self, consumer: &MemberConsumer, topic: &str, partition: i32) {
        let Some(route) = self.routes.get(topic) else {
            return;
        };
        if self.paused.insert((route.topic.clone(), partition)) {
            if let Err(e) = consumer.pause(&single(topic, partition)) {
                tracing::warn!(topic, partition, error = %e, "pausing failed");
            }
        }
    }

    fn resume(&mut self, consumer: &MemberConsumer, topic: &Arc<str>, partition: i32) {
        if self.paused.remove(&(topic.clone(), partition)) {
            if let Err(e) = consumer.resume(&single(topic, partition)) {
                tracing::warn!(topic = %topic, partition, error = %e, "resuming failed");
            }
        }
    }
}
