//! Reads a whole topic from the beginning to its end, for the demo and benchmarks that check
//! what the workers wrote. "The end" follows the same rule as restore (see `src/kafka/restore.rs`):
//! a reported end offset is not trusted alone, reading stops once fetches stay empty.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::ClientError;

/// The last value of every key in `topic` (keys and values as bytes; tombstones remove keys).
///
/// Stops once every partition has reached its reported end and nothing more arrived for
/// `quiet`.
pub fn last_values(
    bootstrap: &str,
    topic: &str,
    quiet: Duration,
) -> Result<HashMap<Vec<u8>, Vec<u8>>, ClientError> {
    let mut values = HashMap::new();
    for_each_record(bootstrap, topic, quiet, |key, value| {
        if let Some(k) = key {
            match value {
                Some(v) => values.insert(k.to_vec(), v.to_vec()),
                None => values.remove(k),
            };
        }
    })?;
    Ok(values)
}

/// Calls `f` with the key and value of every record of `topic`, partition by partition in
/// offset order (partitions interleaved), until the end as [`last_values`] finds it.
pub fn for_each_record(
    bootstrap: &str,
    topic: &str,
    quiet: Duration,
    mut f: impl FnMut(Option<&[u8]>, Option<&[u8]>),
) -> Result<(), ClientError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // librdkafka assigns partitions only with a group id; this reader never joins or commits.
        .set("group.id", "tributary-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        ends.insert(p, high);
    }
    consumer.assign(&tpl)?;
    let mut positions: HashMap<i32, i64> = partitions.iter().map(|p| (*p, 0)).collect();
    let mut last_record = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                last_record = Instant::now();
                positions.insert(m.partition(), m.offset() + 1);
                f(m.key(), m.payload());
            }
            Some(Err(e)) => return Err(e.into()),
            None => {
                let at_end = ends
                    .iter()
                    .all(|(p, end)| positions.get(p).copied().unwrap_or(0) >= *end);
                if at_end && last_record.elapsed() >= quiet {
                    return Ok(());
                }
            }
        }
    }
}
