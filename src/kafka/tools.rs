//! Plain Kafka access for the command line's tools (`tributary generate` and `tributary demo`),
//! so that they need no rdkafka types: topic creation, a producer that writes to a topic and
//! reports each record's acknowledgement, and a group's progress over a topic. The worker does
//! not use it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;

use super::ClientError;

/// `bootstrap.servers`, then `properties` in order (later ones win).
fn client_config(brokers: &str, properties: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in properties {
        config.set(k, v);
    }
    config
}

/// Why [`create_topic`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateTopicError {
    /// The admin client could not be created (a bad property, say).
    #[error("could not create an admin client: {0}")]
    Client(#[source] ClientError),
    /// The brokers do not implement CreateTopics (librdkafka's in-process mock cluster, for
    /// one): what the client said.
    #[error("{0}")]
    Unsupported(String),
    /// Creation failed for another reason: what the client or broker said.
    #[error("{0}")]
    Failed(String),
}

/// Creates `topic` with `partitions` partitions (replication 1); an existing topic is fine.
/// `properties` (security settings, say) apply to the admin client too. Waits up to
/// `metadata_timeout` for the cluster to answer.
pub async fn create_topic(
    brokers: &str,
    properties: &[(String, String)],
    topic: &str,
    partitions: i32,
    metadata_timeout: Duration,
) -> Result<(), CreateTopicError> {
    // Producer-only settings are accepted by an admin client (a producer-type client in
    // librdkafka).
    // Its metadata requests must not create the topic (librdkafka's default for a
    // producer-type client, and the mock cluster obliges, with its own partition count).
    let admin: Arc<AdminClient<DefaultClientContext>> = Arc::new(
        client_config(brokers, properties)
            .set("allow.auto.create.topics", "false")
            .create()
            .map_err(|e| CreateTopicError::Client(ClientError::from(e)))?,
    );
    let unsupported = CreateTopicError::Unsupported;
    let failed = CreateTopicError::Failed;

    // librdkafka's mock cluster answers neither CreateTopics nor "unsupported" (the request
    // just times out), so recognise it by its cluster id and say so at once.
    let cluster_id = {
        let admin = Arc::clone(&admin);
        tokio::task::spawn_blocking(move || admin.inner().fetch_cluster_id(metadata_timeout))
            .await
            .expect("cluster id task panicked")
    };
    if let Some(id) = cluster_id
        .as_deref()
        .filter(|id| id.starts_with("mockCluster"))
    {
        // An existing topic is used as it is, here too: the embedded cluster's worker creates
        // its source topics, so `--partitions` on one of them must not fail.
        let exists = {
            let admin = Arc::clone(&admin);
            let name = topic.to_string();
            tokio::task::spawn_blocking(move || {
                admin
                    .inner()
                    .fetch_metadata(Some(&name), metadata_timeout)
                    .ok()
                    .and_then(|md| {
                        md.topics()
                            .iter()
                            .find(|t| t.name() == name && t.error().is_none())
                            .map(|t| t.partitions().len())
                    })
                    .filter(|&n| n > 0)
            })
            .await
            .expect("metadata task panicked")
        };
        let _ = tokio::task::spawn_blocking(move || drop(admin)).await;
        if let Some(n) = exists {
            tracing::info!(topic, partitions = n, "topic already exists");
            return Ok(());
        }
        return Err(unsupported(format!(
            "cluster {id} is librdkafka's in-process mock cluster, which does not implement CreateTopics"
        )));
    }

    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let admin_opts = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(30)))
        .operation_timeout(Some(Duration::from_secs(30)));
    let timed_out_hint = |e: String| match cluster_id {
        None => format!("{e} (no broker answered: are the brokers reachable?)"),
        Some(_) => {
            format!("{e} (the brokers may not support CreateTopics: create the topic beforehand)")
        }
    };
    let result = admin.create_topics([&new_topic], &admin_opts).await;
    // The admin client joins its thread when dropped: do that off the executor.
    let _ = tokio::task::spawn_blocking(move || drop(admin)).await;
    match result {
        Ok(results) => {
            for result in results {
                match result {
                    Ok(_) => tracing::info!(topic, partitions, "created topic"),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                        tracing::info!(topic, "topic already exists")
                    }
                    Err((_, code)) if is_unsupported(code) => {
                        return Err(unsupported(code.to_string()))
                    }
                    Err((_, code)) => return Err(failed(code.to_string())),
                }
            }
            Ok(())
        }
        Err(KafkaError::AdminOp(code)) if is_unsupported(code) => {
            Err(unsupported(code.to_string()))
        }
        Err(e @ KafkaError::AdminOp(RDKafkaErrorCode::OperationTimedOut))
        | Err(e @ KafkaError::AdminOp(RDKafkaErrorCode::RequestTimedOut)) => {
            Err(failed(timed_out_hint(e.to_string())))
        }
        Err(e) => Err(failed(e.to_string())),
    }
}

fn is_unsupported(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnsupportedFeature
            | RDKafkaErrorCode::UnsupportedVersion
            | RDKafkaErrorCode::UnsupportedForMessageFormat
    )
}

/// Why [`TopicProducer::await_topic`] failed.
#[derive(Debug, thiserror::Error)]
pub enum AwaitTopicError {
    /// The brokers did not answer a metadata request.
    #[error("{0}")]
    Metadata(#[source] ClientError),
    /// The topic stayed unknown.
    #[error("the topic does not exist")]
    Missing,
}

/// Why [`TopicProducer::send`] did not queue a record.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The producer's queue is full: wait for acknowledgements and send the record again.
    #[error("the producer's queue is full")]
    QueueFull,
    /// Any other reason.
    #[error("{0}")]
    Failed(#[source] ClientError),
}

/// Why a record sent with [`TopicProducer::send`] was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The brokers did not acknowledge it.
    #[error("partition {partition}: {source}")]
    Failed {
        /// The partition, when one had been chosen (-1 otherwise).
        partition: i32,
        /// The producer's error.
        #[source]
        source: ClientError,
    },
    /// The producer went away before reporting the delivery.
    #[error("the producer stopped before reporting a delivery")]
    ProducerGone,
}

/// A producer for tools: records to any topic, each with a future of its acknowledgement.
pub struct TopicProducer {
    producer: FutureProducer,
}

impl std::fmt::Debug for TopicProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicProducer").finish_non_exhaustive()
    }
}

impl TopicProducer {
    /// A producer for `brokers` with librdkafka `properties` (applied in order).
    pub fn new(brokers: &str, properties: &[(String, String)]) -> Result<Self, ClientError> {
        Ok(Self {
            producer: client_config(brokers, properties).create()?,
        })
    }

    /// Waits up to `timeout` until `topic` shows up in the metadata with partitions
    /// (auto-creating it where the brokers allow that) and returns its partition count; 0 if a
    /// transient error (leader not available, ...) lasted until then, which the producer
    /// retries.
    pub async fn await_topic(
        &self,
        topic: &str,
        timeout: Duration,
    ) -> Result<usize, AwaitTopicError> {
        let deadline = Instant::now() + timeout;
        loop {
            let p = self.producer.clone();
            let name = topic.to_string();
            let remaining = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1));
            let answer = tokio::task::spawn_blocking(move || {
                p.client().fetch_metadata(Some(&name), remaining).map(|md| {
                    md.topics()
                        .iter()
                        .find(|t| t.name() == name)
                        .map(|t| (t.error().map(RDKafkaErrorCode::from), t.partitions().len()))
                })
            })
            .await
            .expect("metadata task panicked");
            let retry_reason = match answer {
                Err(e) => return Err(AwaitTopicError::Metadata(ClientError::from(e))),
                Ok(Some((None, n))) if n > 0 => return Ok(n),
                Ok(Some((Some(RDKafkaErrorCode::UnknownTopicOrPartition), _))) | Ok(None) => None,
                Ok(Some((err, _))) => Some(err),
            };
            if Instant::now() >= deadline {
                return match retry_reason {
                    Some(_) => Ok(0),
                    None => Err(AwaitTopicError::Missing),
                };
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Queues a record (with no key when `key` is `None`); the future resolves once the
    /// brokers acknowledged it (or did not).
    pub fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        timestamp_ms: i64,
    ) -> Result<impl Future<Output = Result<(), DeliveryError>> + Send + 'static, SendError> {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(payload)
            .timestamp(timestamp_ms);
        if let Some(key) = key {
            record = record.key(key);
        }
        match self.producer.send_result(record) {
            Ok(delivery) => Ok(delivery.map(|r| match r {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, message))) => Err(DeliveryError::Failed {
                    partition: message.partition(),
                    source: ClientError::from(e),
                }),
                Err(_) => Err(DeliveryError::ProducerGone),
            })),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(SendError::QueueFull)
            }
            Err((e, _)) => Err(SendError::Failed(ClientError::from(e))),
        }
    }

    /// Closes the producer: joins its thread and purges anything left (only after a failure),
    /// off the async executor.
    pub async fn close(self) {
        let _ = tokio::task::spawn_blocking(move || drop(self.producer)).await;
    }
}

/// A consumer group's progress over a topic: its end offsets and the group's committed
/// offsets (for progress reports; it never joins the group).
pub struct GroupProgress {
    consumer: BaseConsumer,
}

impl std::fmt::Debug for GroupProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupProgress").finish_non_exhaustive()
    }
}

impl GroupProgress {
    /// A reader of `group`'s offsets on `bootstrap`.
    pub fn new(bootstrap: &str, group: &str) -> Result<Self, ClientError> {
        let consumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()?;
        Ok(Self { consumer })
    }

    /// The sum of the end offsets of partitions `0..partitions` of `topic` (partitions that do
    /// not answer count 0).
    pub fn end_offsets(&self, topic: &str, partitions: i32) -> u64 {
        (0..partitions)
            .filter_map(|p| {
                self.consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(2))
                    .ok()
            })
            .map(|(_, high)| high.max(0) as u64)
            .sum()
    }

    /// The sum of the group's committed offsets on partitions `0..partitions` of `topic` (0 if
    /// they cannot be read).
    pub fn committed(&self, topic: &str, partitions: i32) -> u64 {
        self.committed_by_partition(topic, partitions)
            .map(|offsets| offsets.iter().sum())
            .unwrap_or(0)
    }

    /// The group's committed offset of each partition `0..partitions` of `topic`, in partition
    /// order (0 where none is committed); `None` if they cannot be read.
    pub fn committed_by_partition(&self, topic: &str, partitions: i32) -> Option<Vec<u64>> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, Duration::from_secs(2))
            .ok()?;
        let mut offsets = vec![0; usize::try_from(partitions.max(0)).unwrap_or(0)];
        for e in committed.elements() {
            let slot = usize::try_from(e.partition())
                .ok()
                .and_then(|p| offsets.get_mut(p));
            if let (Some(slot), Some(offset)) = (slot, e.offset().to_raw()) {
                *slot = offset.max(0) as u64;
            }
        }
        Some(offsets)
    }
}
