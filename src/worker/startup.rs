//! Start-up: a worker whose brokers are unreachable, or whose source topics do not exist yet,
//! waits for them with back-off instead of exiting; `kafka.startup_timeout_ms` bounds the
//! wait. Meanwhile `/ready` answers 503 with what it waits for, and one line per attempt says
//! it in the log, naming the setting to look at.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Prepared, Worker, WorkerError};
use crate::kafka::admin::Awaited;
use crate::kafka::embedded::EmbeddedCluster;

/// The first wait between attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(15);

impl Worker {
    /// [`Worker::prepare`], tried again with back-off while the brokers are unreachable or a
    /// source topic is missing. `None` when `shutdown` fired while waiting.
    pub(super) async fn prepare_patiently(
        &self,
        embedded: &mut Option<EmbeddedCluster>,
        shutdown: &CancellationToken,
    ) -> Result<Option<Prepared>, WorkerError> {
        let started = Instant::now();
        let limit = match self.config.kafka.startup_timeout_ms {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
        let mut backoff = FIRST_BACKOFF;
        self.status.set_starting(Some(format!(
            "connecting to the brokers at {} (kafka.bootstrap_servers)",
            self.config.kafka.bootstrap_servers
        )));
        loop {
            let error = match self.prepare(embedded).await {
                Ok(prepared) => {
                    self.status.set_starting(None);
                    return Ok(Some(prepared));
                }
                Err(e) => e,
            };
            let Some(waiting) = self.waiting_for(&error) else {
                return Err(error);
            };
            let waited = started.elapsed();
            if limit.is_some_and(|limit| waited >= limit) {
                return Err(WorkerError::StartupTimeout {
                    waited_s: waited.as_secs(),
                    waiting,
                });
            }
            self.status
                .set_starting(Some(format!("waiting for {waiting}")));
            // Not past the limit: the last attempt starts before it (and an attempt lasts at
            // most about 10 s).
            let pause = limit.map_or(backoff, |limit| backoff.min(limit.saturating_sub(waited)));
            tracing::warn!(
                "waiting for {waiting}; trying again in {} s",
                pause.as_secs_f64().ceil()
            );
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(pause) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// What `error` says the worker waits for, as a phrase naming the setting to look at;
    /// `None` when waiting would not help.
    fn waiting_for(&self, error: &WorkerError) -> Option<String> {
        let WorkerError::Admin(e) = error else {
            return None;
        };
        Some(match e.awaited()? {
            Awaited::Brokers(reason) => format!(
                "the brokers at {} (kafka.bootstrap_servers): {reason}",
                self.config.kafka.bootstrap_servers
            ),
            Awaited::Topic(topic) => {
                format!(
                    "source topic {topic:?} to exist ({})",
                    self.source_key(&topic)
                )
            }
        })
    }

    /// The setting that names source `topic`: `pipeline[i].source.topics`, or for a topology
    /// built in code, its name.
    fn source_key(&self, topic: &str) -> String {
        if let Some(i) = self
            .config
            .pipelines
            .iter()
            .position(|p| p.source.topics.iter().any(|t| t == topic))
        {
            return format!("pipeline[{i}].source.topics");
        }
        match self
            .topologies
            .iter()
            .find(|t| t.sources.iter().any(|s| s == topic))
        {
            Some(t) => format!("the sources of topology {:?}", t.name),
            None => "a source topic".into(),
        }
    }
}
