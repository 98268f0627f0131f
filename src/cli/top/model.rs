//! What `tributary top` shows, as plain data: the documents the workers serve (`/cluster`,
//! `/tasks`, `/metrics`) as read, and the screen derived from two successive reads (records/s
//! needs the change since the last refresh, restore progress the amount first seen).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde::Deserialize;

/// `GET /cluster`: every worker of the group, as the worker at `served_by` sees it.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterDoc {
    /// The group (`app.id`).
    pub group: String,
    /// The address of the worker that answered.
    pub served_by: String,
    /// Every worker of the group.
    pub workers: Vec<ClusterWorker>,
}

/// One worker in `/cluster`. Fields a worker may leave out are defaulted, so that `top` keeps
/// working across small changes of the document.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterWorker {
    /// Its HTTP address (`http.advertised`, or `http.listen`).
    pub address: String,
    /// Its group members' ids (one per `app.threads`).
    #[serde(default)]
    pub member_ids: Vec<serde_json::Value>,
    /// The input partitions assigned to it.
    #[serde(default)]
    pub partitions: Vec<serde_json::Value>,
    /// Ids of its active tasks.
    #[serde(default)]
    pub active: Vec<String>,
    /// Ids of its standby tasks.
    #[serde(default)]
    pub standby: Vec<String>,
    /// Ids of its tasks still restoring.
    #[serde(default)]
    pub restoring: Vec<String>,
    /// Its total lag, in records.
    #[serde(default)]
    pub lag: Option<i64>,
    /// Its `/tasks`, or `None` when it could not be reached.
    #[serde(default)]
    pub tasks: Option<Vec<TaskDoc>>,
    /// Why it could not be reached.
    #[serde(default)]
    pub error: Option<String>,
}

/// One entry of a worker's `/tasks` (`tributary::status::TaskStatus`), the fields `top` uses.
#[derive(Debug, Clone, Deserialize)]
pub struct TaskDoc {
    /// `<topology>_<partition>`.
    pub id: String,
    /// `restoring`, `running` or `standby`.
    pub state: String,
    /// Next offset to process, per source topic.
    #[serde(default)]
    pub positions: BTreeMap<String, i64>,
    /// Records fetched and waiting for the task.
    #[serde(default)]
    pub queued: u64,
    /// Changelog records left to restore.
    #[serde(default)]
    pub restore_remaining: i64,
    /// Records behind (input lag, or changelog records left).
    #[serde(default)]
    pub lag: i64,
    /// The member (thread) that owns it.
    #[serde(default)]
    pub member: usize,
}

/// The counters `top` reads from a worker's `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WorkerMetrics {
    /// `tributary_records_dead_lettered_total`, all topics.
    pub dead_letters: u64,
    /// `tributary_restored_records_total`, all stores.
    pub restored: u64,
}

/// One worker as read in one refresh.
#[derive(Debug, Clone)]
pub struct WorkerRead {
    /// The worker's `/cluster` entry (in the one-worker view, one built from its `/tasks`).
    pub worker: ClusterWorker,
    /// Its `/metrics` counters, or why they could not be read.
    pub metrics: Result<WorkerMetrics, String>,
}

/// Where the view came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `/cluster`: the whole group.
    Cluster,
    /// The worker does not serve `/cluster` (an older version): that worker alone, from its
    /// `/tasks` and `/metrics`.
    OneWorker,
}

/// One refresh: the group as read, or why the address asked could not be read.
#[derive(Debug, Clone)]
pub struct Read {
    /// When it was read.
    pub at: Instant,
    /// The address asked (`--http`).
    pub address: String,
    /// What was read.
    pub result: Result<GroupRead, String>,
}

/// The group as read in one refresh.
#[derive(Debug, Clone)]
pub struct GroupRead {
    /// `/cluster` or one worker.
    pub source: Source,
    /// The group (`app.id`), when known.
    pub group: Option<String>,
    /// The worker that answered.
    pub served_by: String,
    /// Every worker.
    pub workers: Vec<WorkerRead>,
}

/// A worker's line on the screen.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    /// HTTP address.
    pub address: String,
    /// Group members (threads).
    pub members: usize,
    /// Assigned input partitions.
    pub partitions: usize,
    /// Active tasks.
    pub active: usize,
    /// Standby tasks.
    pub standby: usize,
    /// Tasks restoring.
    pub restoring: usize,
    /// Records processed per second by its tasks, when known (from the second refresh on).
    pub rate: Option<f64>,
    /// Its lag, in records.
    pub lag: Option<i64>,
    /// Records dead-lettered since it started.
    pub dead_letters: Option<u64>,
    /// Changelog records it restored since it started.
    pub restored: Option<u64>,
    /// `None` when reachable; otherwise why not.
    pub error: Option<String>,
}

/// A task's line on the screen.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    /// The worker that holds it.
    pub worker: String,
    /// Task id.
    pub id: String,
    /// `restoring`, `running` or `standby`.
    pub state: String,
    /// Records processed per second (input offsets advanced), when known.
    pub rate: Option<f64>,
    /// Records behind.
    pub lag: i64,
    /// While restoring: the records left and the share done since `top` first saw it restore.
    pub restore: Option<(i64, Option<u8>)>,
    /// Records fetched and waiting.
    pub queued: u64,
    /// Member (thread) that owns it.
    pub member: usize,
}

/// Everything on the screen.
#[derive(Debug, Clone, PartialEq)]
pub struct Screen {
    /// The worker that answered (its advertised address), or the address asked when none did.
    pub address: String,
    /// The group, when known.
    pub group: Option<String>,
    /// How the view was built (`None` before the first successful read).
    pub source: Option<Source>,
    /// The error of the last refresh, if it failed.
    pub error: Option<String>,
    /// One row per worker.
    pub workers: Vec<WorkerRow>,
    /// One row per task, by worker then task id.
    pub tasks: Vec<TaskRow>,
}

impl Screen {
    /// Records per second over every worker, when known for any.
    pub fn total_rate(&self) -> Option<f64> {
        self.workers
            .iter()
            .filter_map(|w| w.rate)
            .fold(None, |acc, r| Some(acc.unwrap_or(0.0) + r))
    }

    /// Lag over every worker.
    pub fn total_lag(&self) -> i64 {
        self.workers.iter().filter_map(|w| w.lag).sum()
    }

    /// Dead letters over every worker.
    pub fn total_dead_letters(&self) -> u64 {
        self.workers.iter().filter_map(|w| w.dead_letters).sum()
    }
}

/// A task's identity across refreshes: worker, task id and state (a standby promoted to
/// active starts a new rate rather than comparing changelog positions with input ones).
type TaskKey = (String, String, String);

/// Turns successive reads into screens: remembers what the last read saw, for rates and
/// restore progress.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Sum of each task's positions, and when it was read.
    positions: HashMap<TaskKey, (i64, Instant)>,
    /// The most records left that `top` saw each restoring task have, for its progress.
    restore_start: HashMap<(String, String), i64>,
}

impl Tracker {
    /// The screen for `read`, given the reads before it.
    pub fn update(&mut self, read: &Read) -> Screen {
        let group = match &read.result {
            Ok(g) => g,
            Err(e) => {
                return Screen {
                    address: read.address.clone(),
                    group: None,
                    source: None,
                    error: Some(e.clone()),
                    workers: Vec::new(),
                    tasks: Vec::new(),
                }
            }
        };
        let mut positions = HashMap::new();
        let mut restore_start = HashMap::new();
        let mut workers = Vec::new();
        let mut tasks = Vec::new();
        for w in &group.workers {
            let doc = &w.worker;
            let mut worker_rate: Option<f64> = None;
            for t in doc.tasks.iter().flatten() {
                let key = (doc.address.clone(), t.id.clone(), t.state.clone());
                let sum: i64 = t.positions.values().sum();
                let rate = self.positions.get(&key).and_then(|&(before, then)| {
                    let secs = read.at.checked_duration_since(then)?.as_secs_f64();
                    // A position that went back (a task reset to its committed offset) has
                    // no meaningful rate this time.
                    (secs > 0.0 && sum >= before).then(|| (sum - before) as f64 / secs)
                });
                positions.insert(key, (sum, read.at));
                if t.state != "standby" {
                    if let Some(r) = rate {
                        worker_rate = Some(worker_rate.unwrap_or(0.0) + r);
                    }
                }
                let restore = (t.state == "restoring").then(|| {
                    let id = (doc.address.clone(), t.id.clone());
                    let start = self
                        .restore_start
                        .get(&id)
                        .copied()
                        .unwrap_or(0)
                        .max(t.restore_remaining);
                    restore_start.insert(id, start);
                    let done = (start > 0).then(|| {
                        let share = (start - t.restore_remaining.max(0)) * 100 / start;
                        u8::try_from(share.clamp(0, 100)).expect("clamped to 0..=100")
                    });
                    (t.restore_remaining, done)
                });
                tasks.push(TaskRow {
                    worker: doc.address.clone(),
                    id: t.id.clone(),
                    state: t.state.clone(),
                    rate: if t.state == "standby" { None } else { rate },
                    lag: t.lag,
                    restore,
                    queued: t.queued,
                    member: t.member,
                });
            }
            let reachable = doc.tasks.is_some();
            workers.push(WorkerRow {
                address: doc.address.clone(),
                members: doc.member_ids.len(),
                partitions: doc.partitions.len(),
                active: doc.active.len(),
                standby: doc.standby.len(),
                restoring: doc.restoring.len(),
                rate: if reachable { worker_rate } else { None },
                lag: doc.lag,
                dead_letters: w.metrics.as_ref().ok().map(|m| m.dead_letters),
                restored: w.metrics.as_ref().ok().map(|m| m.restored),
                error: if reachable {
                    None
                } else {
                    Some(doc.error.clone().unwrap_or_else(|| "unreachable".into()))
                },
            });
        }
        self.positions = positions;
        self.restore_start = restore_start;
        tasks.sort_by(|a, b| (&a.worker, &a.id, &a.state).cmp(&(&b.worker, &b.id, &b.state)));
        Screen {
            address: group.served_by.clone(),
            group: group.group.clone(),
            source: Some(group.source),
            error: None,
            workers,
            tasks,
        }
    }
}

/// A worker's `/cluster` entry built from its own `/tasks`, for workers without `/cluster`.
pub fn worker_from_tasks(address: &str, tasks: Vec<TaskDoc>) -> ClusterWorker {
    let ids = |state: &str| -> Vec<String> {
        tasks
            .iter()
            .filter(|t| t.state == state)
            .map(|t| t.id.clone())
            .collect()
    };
    let restoring = ids("restoring");
    let standby = ids("standby");
    let active: Vec<String> = tasks
        .iter()
        .filter(|t| t.state != "standby")
        .map(|t| t.id.clone())
        .collect();
    let mut members: Vec<usize> = tasks.iter().map(|t| t.member).collect();
    members.sort_unstable();
    members.dedup();
    ClusterWorker {
        address: address.to_string(),
        member_ids: members.into_iter().map(serde_json::Value::from).collect(),
        // One input partition per active task (a task reads partition n of each source).
        partitions: active
            .iter()
            .map(|id| serde_json::Value::from(id.as_str()))
            .collect(),
        lag: Some(
            tasks
                .iter()
                .filter(|t| t.state != "standby")
                .map(|t| t.lag)
                .sum(),
        ),
        active,
        standby,
        restoring,
        tasks: Some(tasks),
        error: None,
    }
}

/// The sum of every sample of metric `name` in Prometheus text (any labels); `None` when the
/// text has no such series.
pub fn sum_metric(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // The name must end here: `name 3` or `name{...} 3`, not `name_bucket ...`.
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// The counters `top` shows, from a worker's `/metrics` text.
pub fn worker_metrics(text: &str) -> WorkerMetrics {
    let count = |name| sum_metric(text, name).unwrap_or(0.0).max(0.0) as u64;
    WorkerMetrics {
        dead_letters: count("tributary_records_dead_lettered_total"),
        restored: count("tributary_restored_records_total"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn task(id: &str, state: &str, position: i64, remaining: i64) -> TaskDoc {
        TaskDoc {
            id: id.into(),
            state: state.into(),
            positions: BTreeMap::from([("clicks".to_string(), position)]),
            queued: 0,
            restore_remaining: remaining,
            lag: remaining,
            member: 0,
        }
    }

    fn read(at: Instant, tasks: Vec<TaskDoc>) -> Read {
        Read {
            at,
            address: "127.0.0.1:9464".into(),
            result: Ok(GroupRead {
                source: Source::OneWorker,
                group: None,
                served_by: "127.0.0.1:9464".into(),
                workers: vec![WorkerRead {
                    worker: worker_from_tasks("127.0.0.1:9464", tasks),
                    metrics: Ok(WorkerMetrics::default()),
                }],
            }),
        }
    }

    #[test]
    fn rates_come_from_the_change_of_positions_between_refreshes() {
        let mut tracker = Tracker::default();
        let t0 = Instant::now();
        let first = tracker.update(&read(t0, vec![task("totals_0", "running", 100, 0)]));
        assert_eq!(first.tasks[0].rate, None, "no rate from one read");
        assert_eq!(first.workers[0].rate, None);
        let second = tracker.update(&read(
            t0 + Duration::from_secs(2),
            vec![
                task("totals_0", "running", 700, 0),
                task("totals_1", "running", 5, 0),
            ],
        ));
        assert_eq!(second.tasks[0].rate, Some(300.0));
        assert_eq!(second.tasks[1].rate, None, "new task: no rate yet");
        assert_eq!(second.workers[0].rate, Some(300.0));
        // A task reset to its committed offset: no negative rate.
        let third = tracker.update(&read(
            t0 + Duration::from_secs(3),
            vec![task("totals_0", "running", 600, 0)],
        ));
        assert_eq!(third.tasks[0].rate, None);
    }

    #[test]
    fn restore_progress_counts_from_the_most_records_left_seen() {
        let mut tracker = Tracker::default();
        let t0 = Instant::now();
        let s = tracker.update(&read(t0, vec![task("totals_0", "restoring", 0, 1000)]));
        assert_eq!(s.tasks[0].restore, Some((1000, Some(0))));
        assert_eq!(s.workers[0].restoring, 1);
        let s = tracker.update(&read(
            t0 + Duration::from_secs(1),
            vec![task("totals_0", "restoring", 0, 250)],
        ));
        assert_eq!(s.tasks[0].restore, Some((250, Some(75))));
        let s = tracker.update(&read(
            t0 + Duration::from_secs(2),
            vec![task("totals_0", "running", 0, 0)],
        ));
        assert_eq!(s.tasks[0].restore, None);
    }

    #[test]
    fn metrics_are_summed_over_labels_and_never_confused_with_longer_names() {
        let text = "# HELP tributary_records_dead_lettered_total x\n\
                    tributary_records_dead_lettered_total{topic=\"a\"} 3\n\
                    tributary_records_dead_lettered_total{topic=\"b\"} 4\n\
                    tributary_restored_records_total{store=\"totals\"} 12\n\
                    tributary_restored_records_total_other 99\n";
        assert_eq!(
            worker_metrics(text),
            WorkerMetrics {
                dead_letters: 7,
                restored: 12
            }
        );
        assert_eq!(sum_metric(text, "tributary_nothing"), None);
    }

    #[test]
    fn cluster_document_parses_with_an_unreachable_worker() {
        let doc: ClusterDoc = serde_json::from_str(
            r#"{"group": "clicks", "served_by": "127.0.0.1:9464", "workers": [
                {"address": "127.0.0.1:9464", "member_ids": ["m-1"],
                 "partitions": [{"topic": "clicks", "partition": 0}],
                 "active": ["totals_0"], "standby": [], "restoring": [], "lag": 5,
                 "tasks": [{"id": "totals_0", "topology": "totals", "partition": 0,
                            "state": "running", "positions": {"clicks": 10}, "queued": 2,
                            "restore_remaining": 0, "lag": 5, "checkpoints": {},
                            "member": 0, "guarantee": "at_least_once"}],
                 "error": null},
                {"address": "127.0.0.1:9465", "member_ids": [], "partitions": [],
                 "active": [], "standby": [], "restoring": [], "lag": 0,
                 "tasks": null, "error": "connection refused"}]}"#,
        )
        .expect("parses");
        assert_eq!(doc.workers.len(), 2);
        assert_eq!(doc.workers[0].tasks.as_ref().map(Vec::len), Some(1));
        assert!(doc.workers[1].tasks.is_none());
        assert_eq!(doc.workers[1].error.as_deref(), Some("connection refused"));
    }
}
