//! Restores: changelog records go into the restoring tasks' stores, on the member thread; a
//! task whose changelogs are all read to their end starts running.

use std::time::Duration;

use super::{Core, MemberConsumer};
use crate::state::now_ms;
use crate::task::{Outlived, TaskState};
use crate::types::TaskId;

/// Changelog records applied per loop turn.
const RESTORE_BATCH: usize = 10_000;

impl Core {
    /// Applies changelog records to restoring tasks; starts the tasks whose restore finished.
    pub(super) fn restore_step(
        &mut self,
        consumer: &MemberConsumer,
        wait: Duration,
    ) -> Result<(), String> {
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
                let Some(cell) = tasks.get(&id) else {
                    return;
                };
                if let Some(task) = cell.lock().task.as_mut() {
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
            let Some(cell) = self.tasks.get(&id).cloned() else {
                continue;
            };
            let mut state = cell.lock();
            let Some(task) = state.task.as_mut() else {
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
            drop(state);
            self.setup
                .metrics
                .restore_remaining
                .remove_label_values(&[id.to_string().as_str(), &*changelog])
                .ok();
            if running {
                self.restoring.remove(&id);
                tracing::info!(task = %id, "restored; running");
                self.activate(consumer, id);
            }
        }
        for (id, cell) in self
            .restoring
            .iter()
            .filter_map(|id| Some((id, self.tasks.get(id)?)))
        {
            let state = cell.lock();
            let Some(task) = state
                .task
                .as_ref()
                .filter(|t| t.state() == TaskState::Restoring)
            else {
                continue;
            };
            for (changelog, _) in task.restore_points().unwrap_or_default() {
                let remaining = self.restore.remaining(&changelog, id.partition);
                self.setup
                    .metrics
                    .restore_remaining
                    .with_label_values(&[id.to_string().as_str(), &*changelog])
                    .set(remaining);
            }
        }
        Ok(())
    }
}
