//! The story the demo tells while it runs, from successive reads of the group: which worker
//! owns which partitions, restores, records processed, and, after the kill, the survivors
//! taking the killed worker's partitions.
//!
//! "Processed" is not the sum of the group's committed offsets: offset commits fail while the
//! group rebalances (and the killed worker's partitions commit nothing until a survivor owns
//! them), so that sum stands still for the whole takeover although the survivors go on
//! processing their own partitions. Nor is it only the tasks' positions in `/tasks`: a worker's
//! member thread publishes them, and it waits in a commit while the group rebalances. Per
//! partition the demo counts the furthest position any owner reached (or the committed offset,
//! if further), carried forward between two publications of `/tasks` by the records the
//! owner's processing threads counted since (`tributary_records_consumed_total`, which never
//! runs ahead of the true position): records up to there were processed at least once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::worker::WorkerView;

/// A worker as one read found it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum WorkerState {
    /// Not answering yet (starting, or busy).
    Starting,
    /// Answering.
    Up(WorkerView),
    /// Killed by the demo.
    Killed,
}

/// One read of the whole group.
#[derive(Debug, Clone)]
pub(super) struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// The group's committed offset per input partition, when they could be read.
    pub committed: Option<Vec<u64>>,
    /// Every worker, by name, in the demo's order.
    pub workers: Vec<(String, WorkerState)>,
}

/// The kill, and what followed it.
#[derive(Debug, Clone)]
struct Kill {
    at: Instant,
    victim: String,
    /// The partitions the victim owned when it was killed.
    partitions: BTreeSet<i32>,
    /// Every partition has a running owner again.
    done: bool,
}

/// Turns successive [`Sample`]s into events (lines printed once) and the current status.
#[derive(Debug)]
pub(super) struct Tracker {
    input: String,
    partitions: i32,
    session_timeout: Duration,
    /// Per partition, the furthest position any owner reached, or its committed offset.
    furthest: Vec<u64>,
    /// Per (worker, partition) being processed: its position in `/tasks` when last seen to
    /// change, and the records the worker had consumed from it then.
    anchors: BTreeMap<(String, i32), (u64, u64)>,
    /// The active partitions of each worker at the last read that reached it.
    owned: BTreeMap<String, BTreeSet<i32>>,
    /// Restores seen in progress: (worker, partition) -> when first seen.
    restoring: BTreeMap<(String, i32), Instant>,
    kill: Option<Kill>,
    /// The last sample, for the status lines.
    last: Option<Sample>,
}

/// `0, 1, 3`.
fn list(partitions: &BTreeSet<i32>) -> String {
    let items: Vec<String> = partitions.iter().map(i32::to_string).collect();
    items.join(", ")
}

/// `1 partition` / `3 partitions`.
fn partitions_word(n: usize) -> String {
    if n == 1 {
        "1 partition".to_string()
    } else {
        format!("{n} partitions")
    }
}

impl Tracker {
    /// A tracker of a group reading `partitions` partitions of topic `input`, whose members
    /// are declared dead after `session_timeout`.
    pub fn new(input: &str, partitions: i32, session_timeout: Duration) -> Self {
        Self {
            input: input.to_string(),
            partitions,
            session_timeout,
            furthest: vec![0; usize::try_from(partitions.max(0)).unwrap_or(0)],
            anchors: BTreeMap::new(),
            owned: BTreeMap::new(),
            restoring: BTreeMap::new(),
            kill: None,
            last: None,
        }
    }

    /// Records processed at least once: per partition, the furthest position reached.
    pub fn processed(&self) -> u64 {
        self.furthest.iter().sum()
    }

    /// True once a worker was killed and every partition has a running owner again.
    pub fn takeover_complete(&self) -> bool {
        self.kill.as_ref().is_some_and(|k| k.done)
    }

    /// True when the last read found every partition owned and none restoring.
    pub fn settled(&self) -> bool {
        let owned: BTreeSet<i32> = self.owned.values().flatten().copied().collect();
        (0..self.partitions).all(|p| owned.contains(&p)) && self.restoring.is_empty()
    }

    /// Notes that `victim` was killed at `at`; returns the line announcing it.
    pub fn killed(&mut self, victim: &str, at: Instant, after_records: u64) -> String {
        let partitions = self.owned.get(victim).cloned().unwrap_or_default();
        let secs = self.session_timeout.as_secs_f64();
        let line = format!(
            "killed {victim} with SIGKILL after {after_records} records: its {} ({}) stand still \
             until the group notices it is gone (session timeout {secs:.0} s); the survivors \
             then take them and restore their state from the changelog",
            partitions_word(partitions.len()),
            list(&partitions)
        );
        self.kill = Some(Kill {
            at,
            victim: victim.to_string(),
            partitions,
            done: false,
        });
        line
    }

    /// Takes in a read of the group; returns what changed since the last one, as lines to
    /// print once: ownership changes, finished restores, the end of the takeover.
    pub fn update(&mut self, sample: Sample) -> Vec<String> {
        let mut events = Vec::new();
        if let Some(committed) = &sample.committed {
            for (slot, &c) in self.furthest.iter_mut().zip(committed) {
                *slot = (*slot).max(c);
            }
        }
        for (name, state) in &sample.workers {
            let WorkerState::Up(view) = state else {
                continue;
            };
            self.advance(name, view);
            let now: BTreeSet<i32> = view
                .tasks
                .iter()
                .filter(|t| t.active())
                .map(|t| t.partition)
                .collect();
            let before = self.owned.get(name).cloned().unwrap_or_default();
            if now != before {
                events.push(self.ownership_event(name, &before, &now, view));
            }
            self.owned.insert(name.clone(), now);
            events.extend(self.restores_ended(name, view, sample.at));
        }
        for (name, state) in &sample.workers {
            if *state == WorkerState::Killed {
                self.owned.remove(name);
                self.restoring.retain(|(w, _), _| w != name);
                self.anchors.retain(|(w, _), _| w != name);
            }
        }
        if let Some(line) = self.takeover_event(&sample) {
            events.push(line);
        }
        self.last = Some(sample);
        events
    }

    /// Moves the furthest positions of `name`'s running tasks on: their positions in
    /// `/tasks`, carried forward by the records consumed since they last changed.
    fn advance(&mut self, name: &str, view: &WorkerView) {
        let processing: BTreeSet<i32> = view
            .tasks
            .iter()
            .filter(|t| t.active() && !t.restoring())
            .map(|t| t.partition)
            .collect();
        self.anchors
            .retain(|(w, p), _| w != name || processing.contains(p));
        for t in view
            .tasks
            .iter()
            .filter(|t| processing.contains(&t.partition))
        {
            let position = t.positions.get(&self.input).copied().unwrap_or(0).max(0) as u64;
            let consumed = view.consumed.get(&t.partition).copied().unwrap_or(0);
            let anchor = self
                .anchors
                .entry((name.to_string(), t.partition))
                .or_insert((position, consumed));
            if anchor.0 != position {
                *anchor = (position, consumed);
            }
            let live = anchor.0 + consumed.saturating_sub(anchor.1);
            if let Some(slot) = usize::try_from(t.partition)
                .ok()
                .and_then(|p| self.furthest.get_mut(p))
            {
                *slot = (*slot).max(live);
            }
        }
    }

    /// Notes `name`'s restores; returns a line for each restore of a taken-over partition
    /// that ended since the last read (one that began and ended between two reads shows in
    /// the ownership line and in the worker's restored count instead). Restores at start-up
    /// (empty changelogs) go untold: the story is the takeover's.
    fn restores_ended(&mut self, name: &str, view: &WorkerView, at: Instant) -> Vec<String> {
        let restoring_now: BTreeSet<i32> = view
            .tasks
            .iter()
            .filter(|t| t.restoring())
            .map(|t| t.partition)
            .collect();
        for p in &restoring_now {
            self.restoring.entry((name.to_string(), *p)).or_insert(at);
        }
        let ended: Vec<(i32, Instant)> = self
            .restoring
            .iter()
            .filter(|((w, p), _)| w == name && !restoring_now.contains(p))
            .map(|((_, p), since)| (*p, *since))
            .collect();
        let mut lines = Vec::new();
        for (p, since) in ended {
            self.restoring.remove(&(name.to_string(), p));
            let taken_over = self
                .kill
                .as_ref()
                .is_some_and(|k| !k.done && k.partitions.contains(&p));
            let owned = self.owned.get(name).is_some_and(|o| o.contains(&p));
            if taken_over && owned {
                lines.push(format!(
                    "restore: {name} has partition {p}'s state back from the changelog \
                     (within {:.1} s; {} changelog records restored by {name} in all); \
                     partition {p} is processed again",
                    at.saturating_duration_since(since).as_secs_f64(),
                    view.restored
                ));
            }
        }
        lines
    }

    fn ownership_event(
        &self,
        name: &str,
        before: &BTreeSet<i32>,
        now: &BTreeSet<i32>,
        view: &WorkerView,
    ) -> String {
        let mut line = format!(
            "rebalance: {name} now owns {} ({})",
            partitions_word(now.len()),
            list(now)
        );
        if !before.is_empty() {
            let _ = write!(line, ", was {}", before.len());
        }
        let gained: BTreeSet<i32> = now.difference(before).copied().collect();
        if let Some(kill) = self.kill.as_ref().filter(|k| !k.done) {
            let taken: BTreeSet<i32> = gained.intersection(&kill.partitions).copied().collect();
            if !taken.is_empty() {
                let restoring = view
                    .tasks
                    .iter()
                    .filter(|t| taken.contains(&t.partition) && t.restoring())
                    .count();
                let _ = write!(line, ": took {} from {}", list(&taken), kill.victim);
                if restoring > 0 {
                    line.push_str(", restoring its state from the changelog");
                    // The estimate is known once the restore has read its first records.
                    if view.restore_remaining > 0 {
                        let _ = write!(line, " ({} records left)", view.restore_remaining);
                    }
                } else {
                    let _ = write!(
                        line,
                        ", state already restored ({} changelog records)",
                        view.restored
                    );
                }
            }
        }
        line
    }

    /// The line that ends the takeover: once every partition has a running owner again.
    fn takeover_event(&mut self, sample: &Sample) -> Option<String> {
        let kill = self.kill.as_ref().filter(|k| !k.done)?;
        let mut owners: BTreeMap<i32, &str> = BTreeMap::new();
        for (name, state) in &sample.workers {
            let WorkerState::Up(view) = state else {
                continue;
            };
            if view.tasks.iter().any(|t| t.restoring()) {
                return None;
            }
            for t in view.tasks.iter().filter(|t| t.active()) {
                owners.insert(t.partition, name);
            }
        }
        if !(0..self.partitions).all(|p| owners.contains_key(&p)) {
            return None;
        }
        let mut shares = Vec::new();
        let mut restored = 0;
        for (name, state) in &sample.workers {
            if let WorkerState::Up(view) = state {
                let mine: BTreeSet<i32> = owners
                    .iter()
                    .filter(|(_, o)| **o == name.as_str())
                    .map(|(p, _)| *p)
                    .collect();
                shares.push(format!(
                    "{name} owns {} ({})",
                    partitions_word(mine.len()),
                    list(&mine)
                ));
                restored += view.restored;
            }
        }
        let secs = sample.at.saturating_duration_since(kill.at).as_secs_f64();
        let line = format!(
            "takeover complete {secs:.1} s after the kill: {}; {restored} changelog records \
             restored; processing goes on",
            shares.join(", ")
        );
        if let Some(k) = self.kill.as_mut() {
            k.done = true;
        }
        Some(line)
    }

    /// The group at the last read: partitions owned, and while the takeover lasts, what it
    /// waits for.
    pub fn group_line(&self) -> String {
        let Some(sample) = &self.last else {
            return "starting".to_string();
        };
        let owned: BTreeSet<i32> = self.owned.values().flatten().copied().collect();
        let restoring = self.restoring.len();
        let mut line = format!("{} of {} partitions owned", owned.len(), self.partitions);
        if restoring > 0 {
            let _ = write!(line, ", {restoring} restoring");
        }
        match self.kill.as_ref().filter(|k| !k.done) {
            Some(kill) => {
                let waiting: BTreeSet<i32> = kill.partitions.difference(&owned).copied().collect();
                let since = sample.at.saturating_duration_since(kill.at);
                line = format!("rebalancing: {line}");
                if !waiting.is_empty() {
                    if since < self.session_timeout {
                        let _ = write!(
                            line,
                            "; {} wait for {}'s session to time out ({:.0} of {:.0} s)",
                            list(&waiting),
                            kill.victim,
                            since.as_secs_f64(),
                            self.session_timeout.as_secs_f64()
                        );
                    } else {
                        let _ = write!(
                            line,
                            "; the group is handing {} to the survivors",
                            list(&waiting)
                        );
                    }
                }
                line
            }
            None if owned.len() < usize::try_from(self.partitions).unwrap_or(0) => {
                format!("joining: {line}")
            }
            None => line,
        }
    }

    /// A worker at the last read: its partitions, restores and restored records.
    pub fn worker_line(&self, name: &str) -> String {
        let state = self
            .last
            .as_ref()
            .and_then(|s| s.workers.iter().find(|(n, _)| n == name))
            .map(|(_, s)| s);
        match state {
            None | Some(WorkerState::Starting) => "starting".to_string(),
            Some(WorkerState::Killed) => "killed (SIGKILL)".to_string(),
            Some(WorkerState::Up(view)) => {
                let owned: BTreeSet<i32> = view
                    .tasks
                    .iter()
                    .filter(|t| t.active())
                    .map(|t| t.partition)
                    .collect();
                if owned.is_empty() {
                    return "no partitions yet".to_string();
                }
                let mut line = format!(
                    "{} ({}), {} records processed",
                    partitions_word(owned.len()),
                    list(&owned),
                    view.consumed.values().sum::<u64>()
                );
                let restoring: Vec<_> = view.tasks.iter().filter(|t| t.restoring()).collect();
                if !restoring.is_empty() {
                    let _ = write!(
                        line,
                        ", {} restoring: {} changelog records restored",
                        restoring.len(),
                        view.restored,
                    );
                    if view.restore_remaining > 0 {
                        let _ = write!(line, ", {} to go", view.restore_remaining);
                    }
                } else if view.restored > 0 {
                    let _ = write!(line, ", {} changelog records restored", view.restored);
                }
                line
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::worker::TaskView;
    use super::*;

    const SESSION: Duration = Duration::from_secs(6);

    fn task(partition: i32, state: &str, position: i64) -> TaskView {
        TaskView {
            partition,
            state: state.to_string(),
            positions: [("clicks".to_string(), position)].into(),
        }
    }

    /// A worker whose tasks processed their partitions from offset 0: each running task has
    /// consumed as many records as its position says.
    fn up(tasks: Vec<TaskView>, restored: u64) -> WorkerState {
        restoring(tasks, restored, 0)
    }

    /// [`up`], with `remaining` changelog records left to restore.
    fn restoring(tasks: Vec<TaskView>, restored: u64, restore_remaining: u64) -> WorkerState {
        let consumed = tasks
            .iter()
            .filter(|t| t.state == "running")
            .map(|t| (t.partition, t.positions["clicks"] as u64))
            .collect();
        WorkerState::Up(WorkerView {
            tasks,
            restored,
            restore_remaining,
            consumed,
        })
    }

    fn sample(at: Instant, committed: Option<Vec<u64>>, workers: Vec<WorkerState>) -> Sample {
        Sample {
            at,
            committed,
            workers: workers
                .into_iter()
                .enumerate()
                .map(|(i, w)| (format!("worker-{}", i + 1), w))
                .collect(),
        }
    }

    /// The story of a kill: the survivors' own partitions go on while the group waits and
    /// commits stand still, the victim's partitions move, restore, and the takeover ends.
    #[test]
    fn a_takeover_is_told_while_committed_offsets_stand_still() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut tr = Tracker::new("clicks", 4, SESSION);
        let events = tr.update(sample(
            at(0),
            Some(vec![0; 4]),
            vec![
                up(vec![task(0, "running", 100), task(1, "running", 100)], 0),
                up(vec![task(2, "running", 100), task(3, "running", 100)], 0),
            ],
        ));
        assert_eq!(
            events,
            [
                "rebalance: worker-1 now owns 2 partitions (0, 1)",
                "rebalance: worker-2 now owns 2 partitions (2, 3)"
            ]
        );
        assert_eq!(tr.processed(), 400);
        assert_eq!(tr.group_line(), "4 of 4 partitions owned");
        assert!(tr.settled());
        assert!(!tr.takeover_complete());

        let kill = tr.killed("worker-2", at(1), 400);
        assert!(
            kill.contains("its 2 partitions (2, 3) stand still"),
            "{kill}"
        );
        // Committed offsets stand still (the group rebalances); worker-1 goes on.
        let events = tr.update(sample(
            at(3),
            Some(vec![50; 4]),
            vec![
                up(vec![task(0, "running", 300), task(1, "running", 300)], 0),
                WorkerState::Killed,
            ],
        ));
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(tr.processed(), 800, "worker-1's partitions go on");
        assert_eq!(
            tr.group_line(),
            "rebalancing: 2 of 4 partitions owned; 2, 3 wait for worker-2's session to time out \
             (2 of 6 s)"
        );
        assert_eq!(tr.worker_line("worker-2"), "killed (SIGKILL)");
        assert_eq!(
            tr.worker_line("worker-1"),
            "2 partitions (0, 1), 600 records processed"
        );
        assert!(!tr.takeover_complete());
        assert!(!tr.settled());
        tr.update(sample(
            at(7),
            Some(vec![50; 4]),
            vec![
                up(vec![task(0, "running", 310), task(1, "running", 310)], 0),
                WorkerState::Killed,
            ],
        ));
        assert_eq!(
            tr.group_line(),
            "rebalancing: 2 of 4 partitions owned; the group is handing 2, 3 to the survivors"
        );

        // worker-1 takes them and restores.
        let events = tr.update(sample(
            at(8),
            Some(vec![50; 4]),
            vec![
                restoring(
                    vec![
                        task(0, "running", 400),
                        task(1, "running", 400),
                        task(2, "restoring", 50),
                        task(3, "restoring", 50),
                    ],
                    30,
                    150,
                ),
                WorkerState::Killed,
            ],
        ));
        assert_eq!(
            events,
            [
                "rebalance: worker-1 now owns 4 partitions (0, 1, 2, 3), was 2: took 2, 3 from \
              worker-2, restoring its state from the changelog (150 records left)"
            ]
        );
        assert_eq!(
            tr.processed(),
            1000,
            "a restoring task's position does not count"
        );
        assert_eq!(
            tr.worker_line("worker-1"),
            "4 partitions (0, 1, 2, 3), 800 records processed, 2 restoring: 30 changelog \
             records restored, 150 to go"
        );
        assert_eq!(
            tr.group_line(),
            "rebalancing: 4 of 4 partitions owned, 2 restoring"
        );

        let events = tr.update(sample(
            at(9),
            Some(vec![400, 400, 50, 50]),
            vec![
                up(
                    vec![
                        task(0, "running", 450),
                        task(1, "running", 450),
                        task(2, "running", 60),
                        task(3, "running", 60),
                    ],
                    180,
                ),
                WorkerState::Killed,
            ],
        ));
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(events[0].starts_with("restore: worker-1 has partition 2's state back"));
        assert!(events[1].starts_with("restore: worker-1 has partition 3's state back"));
        assert_eq!(
            events[2],
            "takeover complete 8.0 s after the kill: worker-1 owns 4 partitions (0, 1, 2, 3); \
             180 changelog records restored; processing goes on"
        );
        assert!(tr.takeover_complete());
        assert!(tr.settled());
        assert_eq!(
            tr.processed(),
            450 + 450 + 100 + 100,
            "the victim's furthest positions stay until passed"
        );
        assert_eq!(tr.group_line(), "4 of 4 partitions owned");
    }

    /// While a worker's member thread waits (a commit during a rebalance), `/tasks` keeps
    /// showing old positions; the records its processing threads count carry them forward.
    #[test]
    fn processed_moves_on_while_tasks_positions_are_stale() {
        let t0 = Instant::now();
        let mut tr = Tracker::new("clicks", 1, SESSION);
        let worker = |position: i64, consumed: u64| {
            WorkerState::Up(WorkerView {
                tasks: vec![task(0, "running", position)],
                restored: 0,
                restore_remaining: 0,
                consumed: BTreeMap::from([(0, consumed)]),
            })
        };
        // Took the partition at committed offset 1000, processed 200 since.
        tr.update(sample(t0, Some(vec![1000]), vec![worker(1200, 200)]));
        assert_eq!(tr.processed(), 1200);
        // /tasks stale, 300 more records processed.
        tr.update(sample(t0, Some(vec![1000]), vec![worker(1200, 500)]));
        assert_eq!(tr.processed(), 1500);
        // Published again (a little behind the counter, as read): never backwards.
        tr.update(sample(t0, Some(vec![1000]), vec![worker(1450, 520)]));
        assert_eq!(tr.processed(), 1500);
        tr.update(sample(t0, Some(vec![1000]), vec![worker(1450, 600)]));
        assert_eq!(tr.processed(), 1530);
    }

    /// A restore that begins and ends between two reads is still told, in the ownership line.
    #[test]
    fn a_restore_between_reads_shows_in_the_ownership_line() {
        let t0 = Instant::now();
        let mut tr = Tracker::new("clicks", 2, SESSION);
        tr.update(sample(
            t0,
            None,
            vec![
                up(vec![task(0, "running", 10)], 0),
                up(vec![task(1, "running", 10)], 0),
            ],
        ));
        tr.killed("worker-2", t0, 20);
        let events = tr.update(sample(
            t0 + Duration::from_secs(7),
            None,
            vec![
                up(vec![task(0, "running", 20), task(1, "running", 12)], 42),
                WorkerState::Killed,
            ],
        ));
        assert_eq!(
            events,
            [
                "rebalance: worker-1 now owns 2 partitions (0, 1), was 1: took 1 from worker-2, \
                 state already restored (42 changelog records)",
                "takeover complete 7.0 s after the kill: worker-1 owns 2 partitions (0, 1); 42 \
                 changelog records restored; processing goes on"
            ]
        );
    }

    /// Start-up restores (empty changelogs) are not events: the story is the takeover's.
    #[test]
    fn restores_at_start_up_go_untold() {
        let t0 = Instant::now();
        let mut tr = Tracker::new("clicks", 1, SESSION);
        let events = tr.update(sample(t0, None, vec![up(vec![task(0, "restoring", 0)], 0)]));
        assert_eq!(events, ["rebalance: worker-1 now owns 1 partition (0)"]);
        assert_eq!(
            tr.worker_line("worker-1"),
            "1 partition (0), 0 records processed, 1 restoring: 0 changelog records restored",
            "no estimate of the records left yet: none shown"
        );
        let events = tr.update(sample(t0, None, vec![up(vec![task(0, "running", 5)], 0)]));
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn workers_without_partitions_say_so() {
        let mut tr = Tracker::new("clicks", 1, SESSION);
        assert_eq!(tr.worker_line("worker-1"), "starting");
        tr.update(sample(Instant::now(), None, vec![up(vec![], 0)]));
        assert_eq!(tr.worker_line("worker-1"), "no partitions yet");
        assert_eq!(tr.group_line(), "joining: 0 of 1 partitions owned");
    }
}
