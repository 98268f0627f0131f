//! The changelog reader that rebuilds task state (Kafka Streams' `StoreChangelogReader`).
//!
//! One restore consumer per member, outside the group, is assigned the changelog partition of
//! every store being restored and reads it from the offset the task's RocksDB says it reflects.
//!
//! When is a changelog read to its end? Apache Kafka's end offset would do, but the test broker
//! (tansu) reports the base offset of the last batch + 1, which can be short of the true end. So
//! a partition is finished only once its position has reached the reported end, *and* no record
//! of it has arrived for a quiet period while fetches kept running, *and* a fresh end offset query
//! still says nothing is left. That is right for both brokers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// How long a partition at its reported end must stay silent before it counts as restored.
const QUIET: Duration = Duration::from_millis(300);
/// Timeout of end-offset queries.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// When the last record of this partition arrived (or reading started).
    last_activity: Instant,
}

/// The member's restore consumer.
pub struct RestoreConsumer {
    consumer: BaseConsumer,
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
        Ok(Self {
            consumer: config.create()?,
            parts: HashMap::new(),
        })
    }

    /// Starts reading `topic`/`partition` at `from` (`None`: the beginning). Returns the
    /// estimated number of records to restore.
    pub fn start(
        &mut self,
        topic: &Arc<str>,
        partition: i32,
        from: Option<i64>,
    ) -> Result<i64, KafkaError> {
        let (low, high) = self
            .consumer
            .fetch_watermarks(topic, partition, WATERMARK_TIMEOUT)?;
        let position = from.unwrap_or(low).max(low);
        self.parts.insert(
            (topic.clone(), partition),
            Progress {
                position,
                end: high,
                last_activity: Instant::now(),
            },
        );
        self.reassign()?;
        Ok((high - position).max(0))
    }

    /// Assigns every tracked partition at its position. A consumer outside a group cannot use
    /// incremental assignment, so each change re-assigns the whole set.
    fn reassign(&mut self) -> Result<(), KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), p) in &self.parts {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(p.position))?;
        }
        self.consumer.assign(&tpl)
    }

    /// Stops reading a partition (its task closed or finished).
    pub fn stop(&mut self, topic: &Arc<str>, partition: i32) {
        if self.parts.remove(&(topic.clone(), partition)).is_some() {
            if let Err(e) = self.reassign() {
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
            let msg = msg?;
            // Linear: only the few partitions being restored are here, and this avoids an
            // allocation per record for the lookup key.
            let found = self
                .parts
                .iter_mut()
                .find(|((t, p), _)| *p == msg.partition() && **t == *msg.topic());
            let Some((_, progress)) = found else {
                continue; // a partition stopped after this record was fetched
            };
            progress.position = msg.offset() + 1;
            progress.last_activity = Instant::now();
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
        Ok(n)
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
                .consumer
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
