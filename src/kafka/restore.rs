//! The changelog reader that rebuilds task state (Kafka Streams' `StoreChangelogReader`).
//!
//! One restore consumer per member, outside the group, is assigned the changelog partition of
//! every store being restored and reads it from the offset the task's RocksDB says it reflects.
//!
//! When is a changelog read to its end? When the consumer's fetch position reaches the end
//! offset (the high watermark; the last stable offset for a `read_committed` reader). The
//! position is librdkafka's own, not "last record seen + 1": a changelog may end in records an
//! application never sees (transaction markers, aborted records) or have offsets that
//! compaction removed, and only the fetch position moves over those.
//!
//! Two more checks keep it exact elsewhere: the end is queried again before a partition is
//! declared finished (a writer may have appended meanwhile), and the position must have stayed
//! at the end for a short quiet period, because some Kafka-compatible brokers (tansu) report the
//! base offset of the last batch + 1 as the end, and only a further fetch shows the last batch.
//!
//! Where restore starts comes from the task's checkpoint, checked against the changelog: a
//! checkpoint outside `[log start, end]` means the local store cannot be trusted (the topic was
//! recreated or truncated, or records it never applied were deleted) and must be emptied and
//! rebuilt from the beginning ([`RestoreStart::stale`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::logging::LoggedContext;
use crate::state::{now_ms, Checkpoint};
use crate::task::Task;

/// How long a partition's position must stay at the reported end before it counts as
/// restored (see the module docs: harmless on Apache Kafka, needed on tansu).
const QUIET: Duration = Duration::from_millis(100);
/// Timeout of end-offset queries.
pub(crate) const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);

/// One changelog record.
#[derive(Debug, Clone, Copy)]
pub struct ChangelogRecord<'a> {
    /// Changelog topic.
    pub topic: &'a str,
    /// Changelog partition (= the task's input partition).
    pub partition: i32,
    /// Offset in the changelog.
    pub offset: i64,
    /// Store key.
    pub key: &'a [u8],
    /// Store value; `None` is a deletion.
    pub value: Option<&'a [u8]>,
}

#[derive(Debug)]
struct Progress {
    /// Next offset to read.
    position: i64,
    /// Latest known end offset.
    end: i64,
    /// When the position was last seen to move (or reading started).
    last_activity: Instant,
    /// A record of it was read in the current [`RestoreConsumer::poll`] (whose end then counts
    /// as its last activity: one clock read per poll, not per record).
    read: bool,
    /// An end offset not reached yet when it was asked for, with when (ms since the Unix
    /// epoch): once the position reaches it, everything the changelog held then was read
    /// ([`RestoreConsumer::refresh_ends`]).
    target: Option<(i64, i64)>,
}

/// Where a changelog partition's restore starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreStart {
    /// The first offset read.
    pub from: i64,
    /// Records between it and the end.
    pub remaining: i64,
    /// Why the local checkpoint cannot be trusted, if it cannot: the store must be emptied
    /// before the first changelog record is applied.
    pub stale: Option<String>,
}

impl RestoreStart {
    /// Decides where to start from the task's checkpoint (`None`: nothing applied yet), the
    /// changelog's log start and end offsets, and its tombstone retention (`None`: unknown, the
    /// cluster never compacts) at `now_ms`.
    pub fn decide(
        checkpoint: Option<Checkpoint>,
        low: i64,
        high: i64,
        retention: Option<Duration>,
        now_ms: i64,
    ) -> RestoreStart {
        let stale = match checkpoint {
            Some(c) if c.next > high => Some(format!(
                "the local checkpoint ({}) is beyond the changelog's end ({high}): the topic was \
                 recreated or truncated",
                c.next
            )),
            Some(c) if c.next < low => Some(format!(
                "the local checkpoint ({}) is before the changelog's first offset ({low}): \
                 changes it never applied were deleted",
                c.next
            )),
            // A tail to read may lack deletions compaction removed meanwhile; an empty one
            // lacks nothing, however old the store.
            Some(c) if c.next < high => retention.and_then(|r| c.stale_after(r, now_ms)),
            _ => None,
        };
        let from = match (&stale, checkpoint) {
            (None, Some(c)) => c.next,
            _ => low,
        };
        RestoreStart {
            from,
            remaining: (high - from).max(0),
            stale,
        }
    }
}

/// True for a fetch error that reading again will not cure: the restore position is gone
/// (records deleted under it; see the restore consumer's `auto.offset.reset = error`) or the
/// changelog may not be read.
fn restore_cannot_go_on(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageConsumption(
            RDKafkaErrorCode::AutoOffsetReset
                | RDKafkaErrorCode::OffsetOutOfRange
                | RDKafkaErrorCode::TopicAuthorizationFailed
        )
    )
}

/// Starts reading every changelog of `task` after its store's checkpoint, emptying first a
/// store whose checkpoint cannot be trusted (see [`RestoreStart::decide`]). `retention`: each
/// changelog's tombstone retention, where known.
pub(crate) fn start_task_restore(
    restore: &mut RestoreConsumer,
    task: &mut Task,
    retention: &BTreeMap<String, Duration>,
) -> Result<(), String> {
    let id = task.id();
    for (changelog, checkpoint) in task.restore_points().map_err(|e| e.to_string())? {
        let retention = retention.get(&*changelog).copied();
        let start = restore
            .start(&changelog, id.partition, checkpoint, retention)
            .map_err(|e| format!("starting restore of {changelog}/{}: {e}", id.partition))?;
        if let Some(why) = &start.stale {
            tracing::warn!(task = %id, changelog = %changelog, reason = %why, "local state is stale; emptying it for a full restore");
            task.clear_store(&changelog).map_err(|e| e.to_string())?;
        }
        task.restore_started(&changelog, start.remaining);
        tracing::info!(task = %id, changelog = %changelog, from = start.from, remaining = start.remaining, state = task.state().as_str(), "reading changelog");
    }
    Ok(())
}

/// The member's restore consumer.
pub struct RestoreConsumer {
    consumer: BaseConsumer<LoggedContext>,
    /// Asks for end offsets as a `read_uncommitted` client: a `read_committed` one (as
    /// `consumer` is) is told the last stable offset, which stops short of the records of any
    /// transaction still open on the changelog. A restore ends at the true end, once those
    /// transactions have ended, and a checkpoint is "beyond the end" only beyond that.
    watermarks: BaseConsumer<LoggedContext>,
    parts: HashMap<(Arc<str>, i32), Progress>,
}

impl std::fmt::Debug for RestoreConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreConsumer")
            .field("parts", &self.parts)
            .finish()
    }
}

impl RestoreConsumer {
    /// Creates the consumer (no group membership).
    pub fn new(config: &ClientConfig) -> Result<Self, KafkaError> {
        let mut uncommitted = config.clone();
        uncommitted.set("isolation.level", "read_uncommitted");
        Ok(Self {
            consumer: config.create_with_context(LoggedContext)?,
            watermarks: uncommitted.create_with_context(LoggedContext)?,
            parts: HashMap::new(),
        })
    }

    /// Starts reading `topic`/`partition` after the task's `checkpoint` (`None`: from the
    /// beginning), or from the beginning when the checkpoint is stale (see
    /// [`RestoreStart::decide`]; the caller then empties the store). `retention`: the
    /// changelog's `delete.retention.ms`, if known.
    pub fn start(
        &mut self,
        topic: &Arc<str>,
        partition: i32,
        checkpoint: Option<Checkpoint>,
        retention: Option<Duration>,
    ) -> Result<RestoreStart, KafkaError> {
        let (low, high) = self
            .watermarks
            .fetch_watermarks(topic, partition, WATERMARK_TIMEOUT)?;
        let start = RestoreStart::decide(checkpoint, low, high, retention, now_ms());
        self.stop(topic, partition);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(start.from))?;
        // Incremental: only this partition starts. Re-assigning the whole set on every change
        // stops and restarts every partition being restored, and librdkafka 2.12 aborts when a
        // partition is removed again while its previous stop is still in flight (an assertion
        // in rd_kafka_assignment_partition_stopped, librdkafka issue 5573, fixed after 2.15):
        // several restores starting within milliseconds of each other made that happen.
        self.consumer.incremental_assign(&tpl)?;
        self.parts.insert(
            (topic.clone(), partition),
            Progress {
                position: start.from,
                end: high,
                last_activity: Instant::now(),
                read: false,
                target: None,
            },
        );
        Ok(start)
    }

    /// Stops reading a partition (its task closed or finished).
    pub fn stop(&mut self, topic: &Arc<str>, partition: i32) {
        if self.parts.remove(&(topic.clone(), partition)).is_some() {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(topic, partition);
            if let Err(e) = self.consumer.incremental_unassign(&tpl) {
                tracing::warn!(topic = %topic, partition, error = %e, "unassigning a changelog partition failed");
            }
        }
    }

    /// True when nothing is being restored.
    pub fn is_idle(&self) -> bool {
        self.parts.is_empty()
    }

    /// Reads up to `max` records, waiting at most `timeout` for the first, and hands each to
    /// `apply`. Returns how many were read.
    pub fn poll(
        &mut self,
        max: usize,
        timeout: Duration,
        mut apply: impl FnMut(ChangelogRecord<'_>),
    ) -> Result<usize, KafkaError> {
        let mut n = 0;
        let mut wait = timeout;
        while n < max {
            let Some(msg) = self.consumer.poll(wait) else {
                break;
            };
            wait = Duration::ZERO;
            let msg = match msg {
                Ok(msg) => msg,
                Err(e) if restore_cannot_go_on(&e) => return Err(e),
                Err(e) => {
                    // The brokers are away (a restart, a network blip): librdkafka reconnects
                    // and fetching goes on from the same positions.
                    tracing::warn!(error = %e, "reading changelogs: will go on when the brokers answer");
                    break;
                }
            };
            // Linear: only the few partitions being restored are here, and this avoids an
            // allocation per record for the lookup key.
            let found = self
                .parts
                .iter_mut()
                .find(|((t, p), _)| *p == msg.partition() && **t == *msg.topic());
            let Some((_, progress)) = found else {
                continue; // a partition stopped after this record was fetched
            };
            progress.position = progress.position.max(msg.offset() + 1);
            progress.read = true;
            n += 1;
            if let Some(key) = msg.key() {
                apply(ChangelogRecord {
                    topic: msg.topic(),
                    partition: msg.partition(),
                    offset: msg.offset(),
                    key,
                    value: msg.payload(),
                });
            }
        }
        let now = Instant::now();
        for progress in self.parts.values_mut() {
            if std::mem::take(&mut progress.read) {
                progress.last_activity = now;
            }
        }
        self.advance_positions()?;
        Ok(n)
    }

    /// Moves each partition's position to librdkafka's fetch position, which also passes over
    /// offsets no record is delivered for (transaction markers, aborted or compacted records).
    fn advance_positions(&mut self) -> Result<(), KafkaError> {
        if self.parts.is_empty() {
            return Ok(());
        }
        let positions = self.consumer.position()?;
        for e in positions.elements() {
            let Offset::Offset(fetch) = e.offset() else {
                continue;
            };
            let found = self
                .parts
                .iter_mut()
                .find(|((t, p), _)| *p == e.partition() && **t == *e.topic());
            if let Some((_, progress)) = found {
                if fetch > progress.position {
                    progress.position = fetch;
                    progress.last_activity = Instant::now();
                }
            }
        }
        Ok(())
    }

    /// Asks for the end offset of every partition being read (a standby's never finish): the
    /// partitions read to an end are returned, each with when that end was asked for. Under
    /// steady writes the end has moved on whenever it is asked for, so an end not reached yet
    /// is remembered, and reaching it later counts: everything written before it was asked for
    /// has then been read.
    pub fn refresh_ends(&mut self) -> Vec<(Arc<str>, i32, i64)> {
        let mut caught_up = Vec::new();
        for ((topic, partition), p) in self.parts.iter_mut() {
            let asked_at = now_ms();
            match self
                .watermarks
                .fetch_watermarks(topic, *partition, WATERMARK_TIMEOUT)
            {
                Ok((_, high)) => {
                    p.end = high;
                    let synced_at = if p.position >= high {
                        p.target = None;
                        Some(asked_at)
                    } else {
                        let reached = p
                            .target
                            .filter(|(end, _)| p.position >= *end)
                            .map(|(_, at)| at);
                        if reached.is_some() || p.target.is_none() {
                            p.target = Some((high, asked_at));
                        }
                        reached
                    };
                    if let Some(at) = synced_at {
                        caught_up.push((topic.clone(), *partition, at));
                    }
                }
                Err(e) => {
                    // The brokers are away: asking for the others would only wait as long
                    // again, each (with the standbys' lock held).
                    tracing::debug!(topic = %topic, partition, error = %e, "end offset query failed; will retry");
                    break;
                }
            }
        }
        caught_up
    }

    /// Records left to read in a partition, by the latest known end offset.
    pub fn remaining(&self, topic: &Arc<str>, partition: i32) -> i64 {
        self.parts
            .get(&(topic.clone(), partition))
            .map_or(0, |p| (p.end - p.position).max(0))
    }

    /// The partitions that are now read to their end; they are stopped and returned.
    pub fn take_finished(&mut self) -> Vec<(Arc<str>, i32)> {
        let candidates: Vec<_> = self
            .parts
            .iter()
            .filter(|(_, p)| p.position >= p.end && p.last_activity.elapsed() >= QUIET)
            .map(|(k, _)| k.clone())
            .collect();
        let mut done = Vec::new();
        for (topic, partition) in candidates {
            match self
                .watermarks
                .fetch_watermarks(&topic, partition, WATERMARK_TIMEOUT)
            {
                Ok((_, high)) => {
                    let p = self
                        .parts
                        .get_mut(&(topic.clone(), partition))
                        .expect("invariant: candidate is tracked");
                    if high > p.position {
                        p.end = high;
                        p.last_activity = Instant::now();
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(topic = %topic, partition, error = %e, "end offset query failed; will retry");
                    continue;
                }
            }
            self.stop(&topic, partition);
            done.push((topic, partition));
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::RestoreStart;
    use crate::state::Checkpoint;
    use std::time::Duration;

    const DAY: Duration = Duration::from_secs(86_400);
    const NOW: i64 = 10 * 86_400_000;

    /// A checkpoint last in sync `age_ms` before [`NOW`].
    fn at(next: i64, age_ms: i64) -> Option<Checkpoint> {
        Some(Checkpoint {
            next,
            synced_at_ms: Some(NOW - age_ms),
        })
    }

    fn decide(checkpoint: Option<Checkpoint>, low: i64, high: i64) -> RestoreStart {
        RestoreStart::decide(checkpoint, low, high, Some(DAY), NOW)
    }

    #[test]
    fn restore_starts_at_a_checkpoint_inside_the_changelog() {
        let s = decide(at(40, 1_000), 0, 100);
        assert_eq!((s.from, s.remaining, s.stale), (40, 60, None));
        let s = decide(at(100, 1_000), 0, 100);
        assert_eq!((s.from, s.remaining, s.stale), (100, 0, None));
        let s = decide(None, 5, 100);
        assert_eq!((s.from, s.remaining, s.stale), (5, 95, None));
    }

    #[test]
    fn a_checkpoint_outside_the_changelog_is_stale_and_restore_starts_over() {
        // The topic was recreated: the local store is ahead of everything the changelog has.
        let s = decide(at(500, 1_000), 0, 20);
        assert_eq!((s.from, s.remaining), (0, 20));
        assert!(s.stale.unwrap().contains("beyond the changelog's end (20)"));
        // Records the store never applied were deleted (log start moved past the checkpoint).
        let s = decide(at(3, 1_000), 10, 20);
        assert_eq!((s.from, s.remaining), (10, 10));
        assert!(s
            .stale
            .unwrap()
            .contains("before the changelog's first offset (10)"));
    }

    /// A store older than the tombstone retention is rebuilt when there is a tail to read; at
    /// the changelog's end it is kept, however old (nothing was written since), as is a
    /// checkpoint of an earlier version that did not record its sync time.
    #[test]
    fn an_old_checkpoint_is_stale_only_with_a_tail_to_read() {
        let two_days = 2 * 86_400_000;
        let s = decide(at(40, two_days), 0, 100);
        assert_eq!((s.from, s.remaining), (0, 100));
        assert!(s.stale.unwrap().contains("delete.retention.ms"));
        let s = decide(at(100, two_days), 0, 100);
        assert_eq!((s.from, s.remaining, s.stale), (100, 0, None));
        let legacy = Some(Checkpoint {
            next: 100,
            synced_at_ms: None,
        });
        assert_eq!(decide(legacy, 0, 100).stale, None);
        let legacy = Some(Checkpoint {
            next: 99,
            synced_at_ms: None,
        });
        assert!(decide(legacy, 0, 100).stale.is_some());
        // Where the retention is unknown (a cluster that never compacts), age does not matter.
        let s = RestoreStart::decide(at(40, two_days), 0, 100, None, NOW);
        assert_eq!((s.from, s.stale), (40, None));
    }
}
