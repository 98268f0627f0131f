//! Where a `/state/<store>/<key>` query is answered: the key's task, and whether this worker
//! answers it, forwards it to the worker that owns the task, or answers 503.
//!
//! A store belongs to one topology; its key lives in the task of the partition its records
//! with that key went to: the partition the source's producers chose (Kafka's default
//! partitioner, murmur2 of the key modulo the source's partition count, unless
//! `source.partitioner` says librdkafka's crc32), or the one a `key_by` wrote them to in the
//! repartition topic (always murmur2). A library topology is routed the same way, so its store
//! keys must be its records' keys (`Topology::keys_partitioned_by` names the partitioner; Kafka
//! Streams' `queryMetadataForKey` likewise assumes the default one unless given another).

use std::collections::BTreeMap;

use crate::cluster::ClusterView;
use crate::pipeline::partitioner::key_partition;
#[cfg(test)]
use crate::pipeline::partitioner::partition_for_key;
use crate::processor::KeyPartitioner;
use crate::processor::Topology;
use crate::status::TaskState;
use crate::types::TaskId;

/// The topology and source of one store.
#[derive(Debug, Clone)]
struct Home {
    topology: usize,
    topic: String,
    partitions: i32,
    partitioner: KeyPartitioner,
}

/// Maps store keys to tasks and source partitions to tasks.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyRouter {
    stores: BTreeMap<String, Home>,
    /// Source topic -> topology index.
    sources: BTreeMap<String, usize>,
    /// Stores whose keys are not the records' keys (`Topology::unkeyed_stores`).
    unkeyed: std::collections::BTreeSet<String>,
}

/// The task of a key, and the source partition whose owner runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Located {
    pub task: TaskId,
    pub topic: String,
    pub partition: i32,
}

impl KeyRouter {
    /// Routes the stores of `topologies`, whose sources have the partition counts in
    /// `partitions` (a topic missing there counts as one partition).
    pub(crate) fn new(topologies: &[Topology], partitions: &BTreeMap<String, i32>) -> Self {
        let mut router = Self::default();
        for (index, t) in topologies.iter().enumerate() {
            for s in &t.sources {
                router.sources.insert(s.clone(), index);
            }
            router.unkeyed.extend(t.unkeyed_stores.iter().cloned());
            let Some(topic) = t.sources.first() else {
                continue;
            };
            for store in &t.stores {
                router.stores.insert(
                    store.clone(),
                    Home {
                        topology: index,
                        topic: topic.clone(),
                        partitions: partitions.get(topic).copied().unwrap_or(1),
                        partitioner: t.key_partitioner,
                    },
                );
            }
        }
        router
    }

    /// True for a store whose keys are not the records' keys, so that no key can be routed to
    /// the task holding it (a `dedup` step's marks).
    pub(crate) fn unkeyed(&self, store: &str) -> bool {
        self.unkeyed.contains(store)
    }

    /// The task holding `key` of `store`; `None` for an unknown store.
    pub(crate) fn locate(&self, store: &str, key: &[u8]) -> Option<Located> {
        let home = self.stores.get(store)?;
        let partition = key_partition(home.partitioner, key, home.partitions);
        Some(Located {
            task: TaskId {
                topology: home.topology,
                partition,
            },
            topic: home.topic.clone(),
            partition,
        })
    }

    /// The task that reads `partition` of source `topic`, if it is a source.
    pub(crate) fn task_of(&self, topic: &str, partition: i32) -> Option<TaskId> {
        let topology = *self.sources.get(topic)?;
        Some(TaskId {
            topology,
            partition,
        })
    }
}

/// What this worker knows of the key's task locally.
#[derive(Debug)]
pub(crate) enum Local<D> {
    /// One of its members runs the task, with this database.
    Running(D),
    /// One of its members has the task, still restoring (or not open yet).
    Restoring,
    /// None of its members has the task active.
    Absent,
}

impl<D> Local<D> {
    /// From the status board's answer for the task.
    pub(crate) fn from_status(task: Option<(TaskState, Option<D>)>) -> Self {
        match task {
            Some((TaskState::Running, Some(db))) => Self::Running(db),
            Some((TaskState::Running | TaskState::Restoring, _)) => Self::Restoring,
            _ => Self::Absent,
        }
    }
}

/// How to answer a query.
#[derive(Debug)]
pub(crate) enum Route<D> {
    /// From this database.
    Here(D),
    /// Forward to the worker at this address.
    Forward(String),
    /// 503, for this reason.
    Unavailable(String),
}

/// Decides how this worker (advertised at `own`) answers a query for a key in `at`.
/// `forwarded` is true when another worker forwarded the query here: it is then never
/// forwarded again, so two workers with different views cannot bounce it between them.
/// `problem` is the latest trouble reading the group, if any, added to the reasons.
pub(crate) fn route<D>(
    at: &Located,
    local: Local<D>,
    view: Option<&ClusterView>,
    own: &str,
    forwarded: bool,
    problem: Option<&str>,
) -> Route<D> {
    let task = at.task;
    let unknown = |reason: String| {
        Route::Unavailable(match problem {
            Some(p) => {
                format!("this worker does not run task {task} and cannot tell who does: {p}")
            }
            None => reason,
        })
    };
    match local {
        Local::Running(db) => return Route::Here(db),
        Local::Restoring => {
            return Route::Unavailable(format!(
                "task {task} is restoring its state on this worker; try again once it runs"
            ))
        }
        Local::Absent => {}
    }
    let Some(view) = view else {
        return unknown(format!(
            "this worker does not run task {task} and has not learnt the group's members yet"
        ));
    };
    match view.owner(&at.topic, at.partition) {
        Some(w) if w.address == own => Route::Unavailable(format!(
            "task {task} is assigned to this worker, which has not opened it yet"
        )),
        Some(w) if forwarded => Route::Unavailable(format!(
            "this worker is not the owner of task {task} (forwarded here; {} owns it as of this \
             worker's view): ownership is moving, try again",
            w.address
        )),
        Some(w) => Route::Forward(w.address.clone()),
        None => unknown(format!(
            "no worker owns partition {} of {} (task {task}) right now: the group is \
             rebalancing or its members are not known yet",
            at.partition, at.topic
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::GroupMember;
    use crate::processor::Nothing;

    fn t(name: &str, sources: &[&str]) -> Topology {
        Topology::new(name, sources.to_vec(), |_: &crate::TaskInfo| Nothing)
    }

    fn router() -> KeyRouter {
        KeyRouter::new(
            &[
                t("first", &["in"]),
                t("second", &["rep", "other"])
                    .store("totals")
                    .unkeyed_store("marks"),
            ],
            &BTreeMap::from([
                ("in".to_string(), 3),
                ("rep".to_string(), 6),
                ("other".to_string(), 6),
            ]),
        )
    }

    #[test]
    fn a_source_partitioned_by_crc32_is_routed_by_crc32() {
        let partitions = BTreeMap::from([("in".to_string(), 6)]);
        let crc = KeyRouter::new(
            &[t("first", &["in"])
                .store("s")
                .keys_partitioned_by(KeyPartitioner::Crc32)],
            &partitions,
        );
        let murmur = KeyRouter::new(&[t("first", &["in"]).store("s")], &partitions);
        let mut differ = 0;
        for i in 0..50 {
            let key = format!("user-{i}");
            let c = crc.locate("s", key.as_bytes()).unwrap().partition;
            assert_eq!(
                c,
                crate::pipeline::partitioner::crc32_partition_for_key(key.as_bytes(), 6)
            );
            if c != murmur.locate("s", key.as_bytes()).unwrap().partition {
                differ += 1;
            }
        }
        assert!(differ > 0);
    }

    #[test]
    fn keys_go_to_the_partition_the_default_partitioner_gives_them() {
        let r = router();
        assert_eq!(r.locate("nope", b"k"), None);
        for key in ["user-1", "user-2", "", "ünïcode"] {
            let at = r.locate("totals", key.as_bytes()).unwrap();
            let p = partition_for_key(key.as_bytes(), 6);
            assert_eq!(
                at,
                Located {
                    task: TaskId {
                        topology: 1,
                        partition: p
                    },
                    topic: "rep".into(),
                    partition: p
                }
            );
            assert_eq!(at.task.to_string(), format!("1_{p}"));
        }
        assert_eq!(
            r.task_of("other", 4),
            Some(TaskId {
                topology: 1,
                partition: 4
            })
        );
        assert_eq!(
            r.task_of("in", 0),
            Some(TaskId {
                topology: 0,
                partition: 0
            })
        );
        assert_eq!(r.task_of("sink", 0), None);
        assert!(r.unkeyed("marks") && !r.unkeyed("totals") && !r.unkeyed("nope"));
    }

    fn view() -> ClusterView {
        let m = |id: &str, client: &str, parts: &[i32]| GroupMember {
            member_id: id.into(),
            client_id: client.into(),
            assignment: parts.iter().map(|p| ("rep".to_string(), *p)).collect(),
        };
        ClusterView::from_members([m("a", "x-0@me:1", &[0, 1]), m("b", "x-0@them:2", &[2])])
    }

    fn at(partition: i32) -> Located {
        Located {
            task: TaskId {
                topology: 1,
                partition,
            },
            topic: "rep".into(),
            partition,
        }
    }

    fn reason<D: std::fmt::Debug>(r: Route<D>) -> String {
        match r {
            Route::Unavailable(reason) => reason,
            other => panic!("expected 503, got {other:?}"),
        }
    }

    #[test]
    fn local_running_tasks_answer_and_restoring_ones_refuse() {
        let v = view();
        assert!(matches!(
            route(&at(2), Local::Running("db"), Some(&v), "me:1", true, None),
            Route::Here("db")
        ));
        let r = reason(route::<()>(
            &at(0),
            Local::Restoring,
            Some(&v),
            "me:1",
            false,
            None,
        ));
        assert!(r.contains("task 1_0 is restoring"), "{r}");
        assert!(matches!(
            Local::from_status(Some((TaskState::Running, None::<()>))),
            Local::Restoring
        ));
        assert!(matches!(
            Local::<()>::from_status(Some((TaskState::Standby, None))),
            Local::Absent
        ));
    }

    #[test]
    fn other_owners_get_the_query_once() {
        let v = view();
        assert!(matches!(
            route::<()>(&at(2), Local::Absent, Some(&v), "me:1", false, None),
            Route::Forward(a) if a == "them:2"
        ));
        let r = reason(route::<()>(
            &at(2),
            Local::Absent,
            Some(&v),
            "me:1",
            true,
            None,
        ));
        assert!(r.contains("not the owner of task 1_2"), "{r}");
        let r = reason(route::<()>(
            &at(1),
            Local::Absent,
            Some(&v),
            "me:1",
            false,
            None,
        ));
        assert!(r.contains("assigned to this worker"), "{r}");
    }

    #[test]
    fn unowned_partitions_and_unknown_groups_answer_503_with_the_reason() {
        let v = view();
        let r = reason(route::<()>(
            &at(5),
            Local::Absent,
            Some(&v),
            "me:1",
            false,
            Some("rebalancing"),
        ));
        assert_eq!(
            r,
            "this worker does not run task 1_5 and cannot tell who does: rebalancing"
        );
        let r = reason(route::<()>(
            &at(5),
            Local::Absent,
            Some(&v),
            "me:1",
            false,
            None,
        ));
        assert!(r.contains("no worker owns partition 5 of rep"), "{r}");
        let r = reason(route::<()>(
            &at(5),
            Local::Absent,
            None,
            "me:1",
            false,
            None,
        ));
        assert!(r.contains("not learnt the group's members"), "{r}");
    }
}
