//! Where standby replicas go (`state.standby_replicas`): derived by every worker from the same
//! picture of the group, so that all of them agree without talking to each other.
//!
//! librdkafka runs the group's assignor and offers no way to plug one in, so Tributary cannot
//! steer a failed worker's tasks to the workers that keep them warm, as Kafka Streams' assignor
//! does. Instead the first standby of each task goes where the assignor is likely to move the
//! task if its owner leaves: librdkafka's sticky assignor hands a departed member's partitions
//! each to the member holding the fewest at that moment, ties going to the smallest member id.
//! It takes those partitions in its own (hash) order, though, so between equally loaded
//! survivors the guess is a coin toss; only `replicas` ≥ workers − 1 makes a warm takeover
//! certain. Further standbys go to the least loaded workers. A worker never keeps a standby of
//! a task it runs.
//!
//! A worker here is a process (one HTTP address), which may run several group members
//! (`app.threads`): a standby serves whichever of them the task lands on.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::ClusterView;
use crate::processor::Topology;
use crate::types::TaskId;

/// One worker process as the group's description shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerTasks {
    /// Its advertised HTTP address: the worker's identity.
    pub address: String,
    /// Its group members' ids (at least one).
    pub member_ids: Vec<String>,
    /// The tasks its members run.
    pub active: BTreeSet<TaskId>,
}

impl WorkerTasks {
    /// The member id the assignors break ties with (their smallest).
    fn tie_break(&self) -> &str {
        self.member_ids
            .iter()
            .min()
            .map_or(self.address.as_str(), String::as_str)
    }

    /// Group members it runs (never zero, for load ratios).
    fn members(&self) -> u64 {
        self.member_ids.len().max(1) as u64
    }
}

/// The workers of `view` with the tasks of `topologies` they run (a partition of a topology's
/// source topic is its task), or `None` while some of `tasks` has no owner in it: the group is
/// rebalancing, and a placement from that moment would move standbys for nothing.
pub fn workers_of(
    view: &ClusterView,
    topologies: &[Topology],
    tasks: &BTreeSet<TaskId>,
) -> Option<Vec<WorkerTasks>> {
    let workers: Vec<WorkerTasks> = view
        .workers
        .iter()
        .map(|w| WorkerTasks {
            address: w.address.clone(),
            member_ids: w.member_ids.clone(),
            active: w
                .partitions
                .iter()
                .filter_map(|(topic, partition)| {
                    let topology = topologies
                        .iter()
                        .position(|t| t.sources.iter().any(|s| s == topic))?;
                    Some(TaskId {
                        topology,
                        partition: *partition,
                    })
                })
                .collect(),
        })
        .collect();
    let owned: BTreeSet<TaskId> = workers
        .iter()
        .flat_map(|w| w.active.iter().copied())
        .collect();
    tasks.is_subset(&owned).then_some(workers)
}

/// Load of a worker for the assignors' choice: tasks per member, compared as fractions.
#[derive(Debug, Clone, Copy)]
struct Load {
    tasks: u64,
    members: u64,
}

impl Load {
    fn less_than(self, other: Load) -> bool {
        self.tasks * other.members < other.tasks * self.members
    }

    fn equal(self, other: Load) -> bool {
        self.tasks * other.members == other.tasks * self.members
    }
}

/// The least loaded of `candidates` (indexes into `workers`), ties to the smallest member id.
fn least_loaded(
    workers: &[WorkerTasks],
    loads: &[Load],
    candidates: impl Iterator<Item = usize>,
) -> Option<usize> {
    let mut best: Option<usize> = None;
    for i in candidates {
        best = match best {
            None => Some(i),
            Some(b) => {
                let better = loads[i].less_than(loads[b])
                    || (loads[i].equal(loads[b])
                        && workers[i].tie_break() < workers[b].tie_break());
                Some(if better { i } else { b })
            }
        };
    }
    best
}

/// The standby tasks of each worker (by address) for `replicas` standbys per task of `tasks`.
/// Every worker computes the same answer from the same `workers`, in whatever order given.
/// A task gets `min(replicas, workers that do not run it)` standbys.
pub fn standbys(
    workers: &[WorkerTasks],
    tasks: &BTreeSet<TaskId>,
    replicas: usize,
) -> BTreeMap<String, BTreeSet<TaskId>> {
    let mut workers = workers.to_vec();
    workers.sort_by(|a, b| a.address.cmp(&b.address));
    workers.dedup_by(|a, b| a.address == b.address);
    let mut placed: BTreeMap<TaskId, Vec<usize>> = BTreeMap::new();
    let owners = |t: &TaskId| -> Vec<usize> {
        (0..workers.len())
            .filter(|&i| workers[i].active.contains(t))
            .collect()
    };
    let base: Vec<Load> = workers
        .iter()
        .map(|w| Load {
            tasks: w.active.len() as u64,
            members: w.members(),
        })
        .collect();
    if replicas > 0 {
        // First standbys: each owner's successor per task, as if that owner left.
        for (owner, w) in workers.iter().enumerate() {
            let mut loads = base.clone();
            for t in w.active.iter().filter(|t| tasks.contains(t)) {
                let taken = owners(t);
                let pick = least_loaded(
                    &workers,
                    &loads,
                    (0..workers.len()).filter(|i| *i != owner && !taken.contains(i)),
                );
                if let Some(i) = pick {
                    loads[i].tasks += 1;
                    placed.entry(*t).or_default().push(i);
                }
            }
        }
    }
    // The rest (and tasks no one runs now, mid-rebalance): the least loaded, counting the
    // standbys placed so far.
    let mut loads = base;
    for holders in placed.values() {
        for &i in holders {
            loads[i].tasks += 1;
        }
    }
    for t in tasks {
        let taken = owners(t);
        loop {
            let holders = placed.entry(*t).or_default();
            if holders.len() >= replicas {
                break;
            }
            let pick = least_loaded(
                &workers,
                &loads,
                (0..workers.len()).filter(|i| !taken.contains(i) && !holders.contains(i)),
            );
            let Some(i) = pick else { break };
            loads[i].tasks += 1;
            holders.push(i);
        }
    }
    let mut out: BTreeMap<String, BTreeSet<TaskId>> = workers
        .iter()
        .map(|w| (w.address.clone(), BTreeSet::new()))
        .collect();
    for (t, holders) in placed {
        for i in holders {
            out.get_mut(&workers[i].address)
                .expect("invariant: every worker has an entry")
                .insert(t);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(p: i32) -> TaskId {
        TaskId {
            topology: 0,
            partition: p,
        }
    }

    fn w(address: &str, member: &str, active: &[i32]) -> WorkerTasks {
        WorkerTasks {
            address: address.into(),
            member_ids: vec![member.into()],
            active: active.iter().map(|&p| t(p)).collect(),
        }
    }

    fn all(n: i32) -> BTreeSet<TaskId> {
        (0..n).map(t).collect()
    }

    fn of(map: &BTreeMap<String, BTreeSet<TaskId>>, address: &str) -> Vec<i32> {
        map[address].iter().map(|t| t.partition).collect()
    }

    #[test]
    fn the_first_standby_is_where_the_owner_s_tasks_would_go() {
        let workers = [
            w("a:1", "m-a", &[0, 1]),
            w("b:1", "m-b", &[2, 3]),
            w("c:1", "m-c", &[4, 5]),
        ];
        let s = standbys(&workers, &all(6), 1);
        // a's tasks 0 and 1: b (tie, smaller member id), then c (b now holds more).
        // b's: 2 → a, 3 → c. c's: 4 → a, 5 → b.
        assert_eq!(of(&s, "a:1"), [2, 4]);
        assert_eq!(of(&s, "b:1"), [0, 5]);
        assert_eq!(of(&s, "c:1"), [1, 3]);
    }

    #[test]
    fn never_on_the_owner_and_at_most_the_other_workers() {
        let workers = [w("a:1", "m-a", &[0, 1, 2]), w("b:1", "m-b", &[3])];
        let s = standbys(&workers, &all(4), 3);
        assert_eq!(of(&s, "a:1"), [3]);
        assert_eq!(of(&s, "b:1"), [0, 1, 2]);
        let s = standbys(&workers, &all(4), 0);
        assert!(s.values().all(BTreeSet::is_empty));
    }

    #[test]
    fn every_worker_computes_the_same_placement_whatever_the_order() {
        let workers = vec![
            w("c:1", "m-c", &[4, 5, 6]),
            w("a:1", "m-a", &[0, 1]),
            w("b:1", "m-b", &[2, 3]),
            w("d:1", "m-d", &[7]),
        ];
        let one = standbys(&workers, &all(8), 2);
        let mut reversed = workers.clone();
        reversed.reverse();
        assert_eq!(one, standbys(&reversed, &all(8), 2));
        for p in 0..8 {
            let holders: Vec<&String> = one
                .iter()
                .filter(|(_, s)| s.contains(&t(p)))
                .map(|(a, _)| a)
                .collect();
            assert_eq!(holders.len(), 2, "task {p}: {holders:?}");
            let owner = workers.iter().find(|w| w.active.contains(&t(p))).unwrap();
            assert!(!holders.contains(&&owner.address));
        }
        // Spread: nobody holds more than its share plus one.
        let counts: Vec<usize> = one.values().map(BTreeSet::len).collect();
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 2,
            "{counts:?}"
        );
    }

    #[test]
    fn a_view_with_unowned_tasks_places_nothing() {
        use crate::cluster::WorkerView;
        use crate::processor::Nothing;
        let topologies = [
            Topology::new("a", ["in-a"], |_| Nothing).store("sa"),
            Topology::new("b", ["in-b"], |_| Nothing).store("sb"),
        ];
        let worker = |address: &str, parts: &[(&str, i32)]| WorkerView {
            address: address.into(),
            member_ids: vec![format!("m-{address}")],
            partitions: parts.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
        };
        let view = ClusterView {
            workers: vec![
                worker("x:1", &[("in-a", 0), ("in-b", 1)]),
                worker("y:1", &[("in-a", 1)]),
            ],
            unaddressed: Vec::new(),
        };
        let b1 = TaskId {
            topology: 1,
            partition: 1,
        };
        let tasks: BTreeSet<TaskId> = [t(0), t(1), b1].into();
        let workers = workers_of(&view, &topologies, &tasks).expect("every task owned");
        assert_eq!(workers[0].active, [t(0), b1].into());
        assert_eq!(workers[1].active, [t(1)].into());
        let mut more = tasks.clone();
        more.insert(TaskId {
            topology: 1,
            partition: 0,
        });
        assert_eq!(workers_of(&view, &topologies, &more), None);
    }

    #[test]
    fn tasks_no_one_runs_still_get_standbys() {
        let workers = [w("a:1", "m-a", &[0]), w("b:1", "m-b", &[])];
        let s = standbys(&workers, &all(2), 1);
        assert_eq!(of(&s, "b:1"), [0]);
        assert_eq!(of(&s, "a:1").len() + of(&s, "b:1").len(), 2);
    }
}
