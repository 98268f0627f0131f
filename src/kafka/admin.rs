//! Topic metadata and creation of the topics the worker needs (changelogs, sinks, the
//! dead-letter topic).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A topic the worker wants to exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partition count (at least this many must exist).
    pub partitions: i32,
    /// Topic configs to create it with (e.g. `cleanup.policy = compact`).
    pub configs: BTreeMap<String, String>,
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
        source: KafkaError,
    },
    /// A source topic is missing.
    #[error("source topic {0:?} does not exist (create it before starting the worker)")]
    MissingSource(String),
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

/// Creates an admin client and answers metadata questions.
pub struct Admin {
    client: AdminClient<DefaultClientContext>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admin")
    }
}

impl Admin {
    /// Connects (lazily) with the given settings.
    pub fn new(config: &ClientConfig) -> Result<Self, AdminError> {
        let client = config.create().map_err(|source| AdminError::Kafka {
            what: "creating the admin client".into(),
            source,
        })?;
        Ok(Self { client })
    }

    /// Partition count of `topic`, or `None` if it does not exist.
    ///
    /// Asks for the metadata of every topic: a request naming the topic would let a broker
    /// with automatic topic creation create it, with its default partition count.
    pub fn partitions(&self, topic: &str) -> Result<Option<i32>, AdminError> {
        let md = self
            .client
            .inner()
            .fetch_metadata(None, TIMEOUT)
            .map_err(|source| AdminError::Kafka {
                what: format!("reading metadata of topic {topic:?}"),
                source,
            })?;
        Ok(md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .and_then(|t| {
                if t.error().is_some() || t.partitions().is_empty() {
                    None
                } else {
                    Some(t.partitions().len() as i32)
                }
            }))
    }

    /// Partition count of a topic that must exist.
    pub fn source_partitions(&self, topic: &str) -> Result<i32, AdminError> {
        self.partitions(topic)?
            .ok_or_else(|| AdminError::MissingSource(topic.to_string()))
    }

    /// Creates each topic that is missing; checks the partition count of those that exist.
    pub async fn ensure(&self, specs: &[TopicSpec]) -> Result<(), AdminError> {
        let mut missing = Vec::new();
        for spec in specs {
            match self.partitions(&spec.name)? {
                Some(actual) if actual < spec.partitions => {
                    return Err(AdminError::TooFewPartitions {
                        topic: spec.name.clone(),
                        actual,
                        expected: spec.partitions,
                    })
                }
                Some(_) => {}
                None => missing.push(spec),
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
                source,
            })?;
        for result in results {
            match result {
                Ok(name) => tracing::info!(topic = %name, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(AdminError::Kafka {
                        what: format!("creating topic {name:?}"),
                        source: KafkaError::AdminOp(code),
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
                        source: KafkaError::AdminOp(RDKafkaErrorCode::RequestTimedOut),
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }
}
