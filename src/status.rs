//! What the worker's members publish about themselves for the HTTP endpoints: membership,
//! tasks and their states, and handles to task databases for `/state` reads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::config::Guarantee;

use crate::state::TaskDb;
pub use crate::task::TaskState;
use crate::types::TaskId;

/// A task as `/tasks` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskStatus {
    /// Task id, `<topology>_<partition>`.
    pub id: String,
    /// Topology (pipeline) name.
    pub topology: String,
    /// Input partition.
    pub partition: i32,
    /// `restoring`, `running` or `standby`.
    pub state: TaskState,
    /// Next offset to process, per source topic.
    pub positions: BTreeMap<String, i64>,
    /// Records fetched and waiting for the task, as of librdkafka's last statistics
    /// (`statistics.interval.ms`).
    pub queued: usize,
    /// Changelog records left to restore (estimate; 0 once running).
    pub restore_remaining: i64,
    /// How far behind the task is, in records: for a running task its input's consumer lag
    /// (as of librdkafka's last statistics), for a restoring one the changelog records left to
    /// restore, for a standby the changelog records it has yet to copy.
    pub lag: i64,
    /// Per changelog topic, the offset up to which the local store holds it (its checkpoint,
    /// written with each successful commit); `None` before the first.
    pub checkpoints: BTreeMap<String, Option<i64>>,
    /// Member (thread) that owns it.
    pub member: usize,
    /// The delivery guarantee its commits keep (`at_least_once` or `exactly_once`).
    pub guarantee: Guarantee,
}

/// One member's published state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemberStatus {
    /// True once the member has received its first assignment.
    pub joined: bool,
    /// Its tasks.
    pub tasks: Vec<TaskStatus>,
    /// Tasks assigned but not yet opened (their state directory is still locked).
    pub pending: usize,
    /// Partitions paused because their task is not running yet.
    pub paused: usize,
}

/// The status of every member of this worker, plus open task databases.
#[derive(Debug, Default)]
pub struct StatusBoard {
    members: Mutex<Vec<MemberStatus>>,
    /// The standby tasks this worker keeps (see `state.standby_replicas`).
    standbys: Mutex<Vec<TaskStatus>>,
    dbs: Mutex<BTreeMap<TaskId, Arc<TaskDb>>>,
    /// What the worker waits for before its members start (brokers, source topics).
    starting: Mutex<Option<String>>,
}

/// Why the worker is not ready, or `None` when it is.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NotReady {
    /// Human-readable reason, e.g. "member 0 has not joined the group yet".
    pub reason: String,
}

impl StatusBoard {
    /// A board for `members` members.
    pub fn new(members: usize) -> Self {
        Self {
            members: Mutex::new(vec![MemberStatus::default(); members]),
            standbys: Mutex::default(),
            dbs: Mutex::default(),
            starting: Mutex::default(),
        }
    }

    /// Sets (or, with `None`, clears) what the starting worker waits for.
    pub(crate) fn set_starting(&self, waiting_for: Option<String>) {
        *self
            .starting
            .lock()
            .expect("invariant: no panics under this lock") = waiting_for;
    }

    /// Replaces member `index`'s status.
    pub(crate) fn publish(&self, index: usize, status: MemberStatus) {
        let mut members = self
            .members
            .lock()
            .expect("invariant: no panics under this lock");
        if let Some(slot) = members.get_mut(index) {
            *slot = status;
        }
    }

    /// Replaces the list of standby tasks.
    #[allow(dead_code)] // published by the standby replicas, which come next
    pub(crate) fn publish_standbys(&self, tasks: Vec<TaskStatus>) {
        *self
            .standbys
            .lock()
            .expect("invariant: no panics under this lock") = tasks;
    }

    /// Every task of every member, then the standby tasks.
    pub fn tasks(&self) -> Vec<TaskStatus> {
        let members = self
            .members
            .lock()
            .expect("invariant: no panics under this lock");
        let standbys = self
            .standbys
            .lock()
            .expect("invariant: no panics under this lock");
        members
            .iter()
            .flat_map(|m| m.tasks.iter().cloned())
            .chain(standbys.iter().cloned())
            .collect()
    }

    /// Partitions paused across all members.
    pub fn paused(&self) -> usize {
        self.members
            .lock()
            .expect("invariant: no panics under this lock")
            .iter()
            .map(|m| m.paused)
            .sum()
    }

    /// `None` when every member has joined and every task runs; the reason otherwise.
    pub fn not_ready(&self) -> Option<NotReady> {
        if let Some(waiting) = self
            .starting
            .lock()
            .expect("invariant: no panics under this lock")
            .clone()
        {
            return Some(NotReady { reason: waiting });
        }
        let members = self
            .members
            .lock()
            .expect("invariant: no panics under this lock");
        for (i, m) in members.iter().enumerate() {
            if !m.joined {
                return Some(NotReady {
                    reason: format!("member {i} has not joined the group yet"),
                });
            }
            if m.pending > 0 {
                return Some(NotReady {
                    reason: format!("member {i} is opening {} task(s)", m.pending),
                });
            }
            let restoring: Vec<&str> = m
                .tasks
                .iter()
                .filter(|t| t.state == TaskState::Restoring)
                .map(|t| t.id.as_str())
                .collect();
            if !restoring.is_empty() {
                return Some(NotReady {
                    reason: format!("restoring task(s) {}", restoring.join(", ")),
                });
            }
        }
        None
    }

    /// Registers an open task database for `/state` reads.
    pub(crate) fn register_db(&self, id: TaskId, db: Arc<TaskDb>) {
        self.dbs
            .lock()
            .expect("invariant: no panics under this lock")
            .insert(id, db);
    }

    /// Forgets a closed task's database.
    pub(crate) fn unregister_db(&self, id: TaskId) {
        self.dbs
            .lock()
            .expect("invariant: no panics under this lock")
            .remove(&id);
    }

    /// Active task `id` of this worker, if one of its members has it: its state, and its
    /// database once open. A standby's database is never returned: queries read active tasks
    /// only.
    pub(crate) fn active_task(&self, id: TaskId) -> Option<(TaskState, Option<Arc<TaskDb>>)> {
        let name = id.to_string();
        let state = self
            .members
            .lock()
            .expect("invariant: no panics under this lock")
            .iter()
            .flat_map(|m| m.tasks.iter())
            .find(|t| t.id == name && t.state != TaskState::Standby)?
            .state;
        let db = self
            .dbs
            .lock()
            .expect("invariant: no panics under this lock")
            .get(&id)
            .cloned();
        Some((state, db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(topology: usize, partition: i32, state: TaskState) -> TaskStatus {
        TaskStatus {
            id: TaskId {
                topology,
                partition,
            }
            .to_string(),
            topology: format!("t{topology}"),
            partition,
            state,
            positions: BTreeMap::new(),
            queued: 0,
            restore_remaining: 0,
            lag: 0,
            checkpoints: BTreeMap::new(),
            member: 0,
            guarantee: Guarantee::default(),
        }
    }

    /// Queries read active tasks only: a running one with its database, a restoring one
    /// without an answer, and never a standby's copy.
    #[test]
    fn active_tasks_are_found_with_their_state_and_database() {
        let board = StatusBoard::new(2);
        let id = |p| TaskId {
            topology: 1,
            partition: p,
        };
        board.publish(
            0,
            MemberStatus {
                joined: true,
                tasks: vec![task(1, 0, TaskState::Running)],
                ..MemberStatus::default()
            },
        );
        board.publish(
            1,
            MemberStatus {
                joined: true,
                tasks: vec![task(1, 1, TaskState::Restoring)],
                ..MemberStatus::default()
            },
        );
        board.publish_standbys(vec![task(1, 2, TaskState::Standby)]);
        let dir = tempfile::tempdir().unwrap();
        for p in 0..3 {
            let db = TaskDb::open(
                &dir.path().join(p.to_string()),
                &["s".to_string()],
                &crate::state::RocksMemory::default(),
            )
            .unwrap();
            board.register_db(id(p), Arc::new(db));
        }
        let (state, db) = board.active_task(id(0)).expect("running task");
        assert_eq!((state, db.is_some()), (TaskState::Running, true));
        assert_eq!(
            board.active_task(id(1)).map(|(s, _)| s),
            Some(TaskState::Restoring)
        );
        assert!(
            board.active_task(id(2)).is_none(),
            "a standby is not active"
        );
        assert!(board.active_task(id(3)).is_none());
        assert!(board
            .active_task(TaskId {
                topology: 0,
                partition: 0
            })
            .is_none());
    }
}
