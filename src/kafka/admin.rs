//! Topic metadata and creation of the topics the worker needs (changelogs, sinks, the
//! dead-letter topic).

use std::collections::BTreeMap;
use std::time::Duration;

use super::quiet::AdminContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::ClientError;

const TIMEOUT: Duration = Duration::from_secs(30);
/// How long reading the cluster's metadata may take: the first request of a starting worker,
/// which, with the brokers away, is one attempt of its wait for them (see `worker::startup`).
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// A topic the worker wants to exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partition count (at least this many must exist).
    pub partitions: i32,
    /// Topic configs to create it with (e.g. `cleanup.policy = compact`). When they ask for
    /// compaction, an existing topic must be compacted too (see [`Admin::ensure`]).
    pub configs: BTreeMap<String, String>,
}

/// The topic config naming the cleanup policy.
const CLEANUP_POLICY: &str = "cleanup.policy";

/// The topic config naming how long compaction keeps tombstones.
const DELETE_RETENTION: &str = "delete.retention.ms";
/// Kafka's default `delete.retention.ms` (one day).
const DEFAULT_DELETE_RETENTION_MS: u64 = 86_400_000;

/// True when a `cleanup.policy` value (a list such as `compact,delete`) includes `compact`.
fn compacts(policy: &str) -> bool {
    policy.split(',').any(|p| p.trim() == "compact")
}

impl TopicSpec {
    /// True when the topic must be compacted (a changelog).
    pub fn compacted(&self) -> bool {
        self.configs
            .get(CLEANUP_POLICY)
            .is_some_and(|p| compacts(p))
    }
}

/// Errors of topic administration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The cluster could not be reached or answered with an error.
    #[error("{what}: {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// The client error.
        #[source]
        source: ClientError,
    },
    /// The brokers could not be reached (or did not answer in time): librdkafka's last word
    /// about them.
    #[error("the brokers cannot be reached: {reason}")]
    Unreachable {
        /// Why, as librdkafka said last.
        reason: String,
    },
    /// The brokers refused the client: its security settings do not match theirs.
    #[error(
        "the brokers refused the connection: {reason} (check the security settings in \
         kafka.properties: security.protocol, sasl.*, ssl.*)"
    )]
    Refused {
        /// Why, as librdkafka said.
        reason: String,
    },
    /// A source topic is missing.
    #[error("source topic {0:?} does not exist (create it before starting the worker)")]
    MissingSource(String),
    /// A topic that must be compacted (a changelog) exists with a `cleanup.policy` without
    /// `compact`.
    #[error(
        "topic {topic:?} has cleanup.policy={policy} but must be compacted: it is a changelog, \
         and a restore reads it from the beginning, so a policy that deletes old records loses \
         state; set cleanup.policy=compact on it (or delete it, and the worker creates it \
         compacted)"
    )]
    NotCompacted {
        /// The topic.
        topic: String,
        /// Its `cleanup.policy`.
        policy: String,
    },
    /// A topic config the worker reads has a value it does not understand.
    #[error("topic {topic:?} has {key}={value:?}, which is not a number of milliseconds")]
    BadConfig {
        /// The topic.
        topic: String,
        /// The config key.
        key: &'static str,
        /// Its value.
        value: String,
    },
    /// A topic exists with fewer partitions than the worker needs.
    #[error(
        "topic {topic:?} has {actual} partitions but needs {expected} (one per input partition)"
    )]
    TooFewPartitions {
        /// The topic.
        topic: String,
        /// Partitions it has.
        actual: i32,
        /// Partitions it needs.
        expected: i32,
    },
}

/// What a failed start-up step waits for, when waiting can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Awaited {
    /// The brokers, unreachable; librdkafka's reason.
    Brokers(String),
    /// A source topic that does not exist yet.
    Topic(String),
}

impl AdminError {
    /// What the worker would wait for to get past this error; `None` when waiting would not
    /// help (the brokers answered, and refused).
    pub fn awaited(&self) -> Option<Awaited> {
        match self {
            AdminError::Unreachable { reason } => Some(Awaited::Brokers(reason.clone())),
            AdminError::Kafka { source, .. } if source.is_unreachable() => {
                Some(Awaited::Brokers(source.to_string()))
            }
            AdminError::MissingSource(topic) => Some(Awaited::Topic(topic.clone())),
            _ => None,
        }
    }
}

/// Creates an admin client and answers metadata questions.
pub struct Admin {
    client: AdminClient<AdminContext>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admin")
    }
}

impl Admin {
    /// Connects (lazily) with the given settings.
    pub fn new(config: &ClientConfig) -> Result<Self, AdminError> {
        let client = config
            .create_with_context(AdminContext::default())
            .map_err(|source| AdminError::Kafka {
                what: "creating the admin client".into(),
                source: source.into(),
            })?;
        Ok(Self { client })
    }

    /// Partition count of `topic`, or `None` if it does not exist.
    pub fn partitions(&self, topic: &str) -> Result<Option<i32>, AdminError> {
        Ok(self.topics()?.get(topic).copied())
    }

    /// The partition count of every topic that exists (and that the client may see).
    ///
    /// Asks for the metadata of every topic: a request naming a topic would let a broker with
    /// automatic topic creation create it, with its default partition count.
    pub fn topics(&self) -> Result<BTreeMap<String, i32>, AdminError> {
        let md = match self.client.inner().fetch_metadata(None, METADATA_TIMEOUT) {
            Ok(md) => md,
            Err(source) => {
                let source = ClientError::from(source);
                if !source.is_unreachable() {
                    return Err(AdminError::Kafka {
                        what: "reading the cluster's metadata".into(),
                        source,
                    });
                }
                let failure = self.client.inner().context().last_failure();
                return Err(match failure {
                    Some(f) if f.refused => AdminError::Refused { reason: f.reason },
                    Some(f) => AdminError::Unreachable { reason: f.reason },
                    None => AdminError::Unreachable {
                        reason: source.to_string(),
                    },
                });
            }
        };
        Ok(md
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| (t.name().to_string(), t.partitions().len() as i32))
            .collect())
    }

    /// Partition count of a topic that must exist.
    pub fn source_partitions(&self, topic: &str) -> Result<i32, AdminError> {
        self.partitions(topic)?
            .ok_or_else(|| AdminError::MissingSource(topic.to_string()))
    }

    /// True when the cluster is librdkafka's mock cluster, which calls itself `mockCluster<n>`
    /// (a Kafka cluster id is a base64 UUID, so this can't match a real cluster).
    fn is_embedded_cluster(&self) -> bool {
        self.client
            .inner()
            .fetch_cluster_id(TIMEOUT)
            .is_some_and(|id| id.starts_with("mockCluster"))
    }

    /// The value of topic config `key` for each of `topics` (DescribeConfigs; the broker's
    /// default when the topic does not set one; `None` when the broker does not report it), in
    /// order.
    async fn topic_config(
        &self,
        topics: &[&str],
        key: &str,
    ) -> Result<Vec<Option<String>>, AdminError> {
        if topics.is_empty() {
            return Ok(Vec::new());
        }
        let resources: Vec<ResourceSpecifier<'_>> =
            topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
        let opts = AdminOptions::new().request_timeout(Some(TIMEOUT));
        let what = || format!("reading the configs of topics {topics:?}");
        let results = self
            .client
            .describe_configs(resources.iter(), &opts)
            .await
            .map_err(|source| AdminError::Kafka {
                what: what(),
                source: source.into(),
            })?;
        topics
            .iter()
            .zip(results)
            .map(|(topic, result)| {
                let resource = result.map_err(|code| AdminError::Kafka {
                    what: format!("reading the configs of topic {topic:?}"),
                    source: KafkaError::AdminOp(code).into(),
                })?;
                Ok(resource.get(key).and_then(|e| e.value.clone()))
            })
            .collect()
    }

    /// How long each changelog of `topics` keeps a tombstone after compaction first reaches
    /// it (`delete.retention.ms`; Kafka's default, one day, when the broker does not say).
    /// Empty on the embedded cluster, which keeps no topic configs and never compacts.
    pub async fn tombstone_retention(
        &self,
        topics: &[&str],
    ) -> Result<BTreeMap<String, Duration>, AdminError> {
        if topics.is_empty() || self.is_embedded_cluster() {
            return Ok(BTreeMap::new());
        }
        // A topic just created may not be known yet to the broker that answers.
        let deadline = std::time::Instant::now() + TIMEOUT;
        let values = loop {
            match self.topic_config(topics, DELETE_RETENTION).await {
                Err(AdminError::Kafka { source, .. })
                    if matches!(
                        source.kafka(),
                        KafkaError::AdminOp(RDKafkaErrorCode::UnknownTopicOrPartition)
                    ) && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                result => break result?,
            }
        };
        topics
            .iter()
            .zip(values)
            .map(|(topic, value)| {
                let ms = match value {
                    None => DEFAULT_DELETE_RETENTION_MS,
                    Some(v) => v.trim().parse::<u64>().map_err(|_| AdminError::BadConfig {
                        topic: topic.to_string(),
                        key: DELETE_RETENTION,
                        value: v.clone(),
                    })?,
                };
                Ok((topic.to_string(), Duration::from_millis(ms)))
            })
            .collect()
    }

    /// Creates each topic that is missing; checks the partition count of those that exist, and
    /// that those that must be compacted are.
    ///
    /// An existing changelog that is not compacted is refused rather than altered: changing a
    /// topic's retention is the operator's decision (the topic may be configured so on purpose,
    /// and the worker may not be allowed to alter configs), and switching it to `compact` would
    /// hide, not undo, what the old policy already deleted: a restore from it would silently
    /// miss those changes.
    pub async fn ensure(&self, specs: &[TopicSpec]) -> Result<(), AdminError> {
        let mut missing = Vec::new();
        let mut to_compact = Vec::new();
        for spec in specs {
            match self.partitions(&spec.name)? {
                Some(actual) if actual < spec.partitions => {
                    return Err(AdminError::TooFewPartitions {
                        topic: spec.name.clone(),
                        actual,
                        expected: spec.partitions,
                    })
                }
                Some(_) if spec.compacted() => to_compact.push(spec.name.as_str()),
                Some(_) => {}
                None => missing.push(spec),
            }
        }
        if !to_compact.is_empty() && self.is_embedded_cluster() {
            // librdkafka's mock cluster (the embedded cluster, in this process or, as in
            // `tributary demo`, another one) has no topic configs: it answers no DescribeConfigs
            // and neither deletes nor compacts anything.
            tracing::debug!("the embedded cluster keeps no topic configs; not checking the changelogs' cleanup.policy");
            to_compact.clear();
        }
        let policies = self.topic_config(&to_compact, CLEANUP_POLICY).await?;
        for (topic, policy) in to_compact.iter().zip(policies) {
            let policy = policy.unwrap_or_default();
            if !compacts(&policy) {
                return Err(AdminError::NotCompacted {
                    topic: topic.to_string(),
                    policy,
                });
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|s| {
                s.configs.iter().fold(
                    NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(-1)),
                    |t, (k, v)| t.set(k, v),
                )
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
        let results = self
            .client
            .create_topics(new.iter(), &opts)
            .await
            .map_err(|source| AdminError::Kafka {
                what: "creating topics".into(),
                source: source.into(),
            })?;
        for result in results {
            match result {
                Ok(name) => tracing::info!(topic = %name, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(AdminError::Kafka {
                        what: format!("creating topic {name:?}"),
                        source: KafkaError::AdminOp(code).into(),
                    })
                }
            }
        }
        // Metadata catches up with creation asynchronously; wait until every topic is visible.
        for spec in missing {
            let deadline = std::time::Instant::now() + TIMEOUT;
            while self.partitions(&spec.name)?.is_none() {
                if std::time::Instant::now() > deadline {
                    return Err(AdminError::Kafka {
                        what: format!(
                            "waiting for new topic {:?} to appear in metadata",
                            spec.name
                        ),
                        source: KafkaError::AdminOp(RDKafkaErrorCode::RequestTimedOut).into(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_compacts_when_it_lists_compact() {
        assert!(compacts("compact"));
        assert!(compacts("compact,delete"));
        assert!(compacts("delete, compact"));
        assert!(!compacts("delete"));
        assert!(!compacts(""));
        let spec = |policy: Option<&str>| TopicSpec {
            name: "t".into(),
            partitions: 1,
            configs: policy
                .map(|p| BTreeMap::from([(CLEANUP_POLICY.to_string(), p.to_string())]))
                .unwrap_or_default(),
        };
        assert!(spec(Some("compact")).compacted());
        assert!(!spec(Some("delete")).compacted());
        assert!(!spec(None).compacted());
    }
}
