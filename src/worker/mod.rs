//! The worker: prepares topics, serves HTTP, and runs `app.threads` group members until the
//! shutdown token fires or one of them fails.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::cluster::ClusterWatch;
use crate::config::{Config, ConfigIssue, Guarantee, OnError};
use crate::kafka::admin::{Admin, AdminError, TopicSpec};
use crate::kafka::embedded::EmbeddedCluster;
use crate::kafka::group::GroupReader;
use crate::kafka::member::{Member, MemberError, MemberSetup, Pool};
use crate::kafka::properties::check_properties;
use crate::kafka::standby::{StandbySetup, Standbys};
use crate::metrics::Metrics;
use crate::processor::{changelog_topic, Topology};
use crate::state::StateMemory;
use crate::status::StatusBoard;
use crate::validate::Checks;

mod startup;

/// How often each worker reads the group's members and assignments (for `/state` routing and
/// `/cluster`).
const GROUP_REFRESH: Duration = Duration::from_secs(1);

/// Partitions of source topics the embedded cluster creates when they are missing.
pub(crate) const EMBEDDED_PARTITIONS: i32 = 6;

/// Why a worker could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The configuration or topologies are invalid.
    #[error("invalid configuration:\n{}", .0.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n"))]
    Config(Vec<ConfigIssue>),
    /// Topic checks or creation failed.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The embedded cluster failed.
    #[error("{0}")]
    Embedded(String),
    /// The HTTP listener could not be bound.
    #[error("http.listen {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The worker's identity or announcement in its state directory could not be made.
    #[error("claiming a worker id in {dir} (state.dir): {source}")]
    Identity {
        /// The application's state directory.
        dir: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The processing threads could not be started.
    #[error("starting the processing threads (processing.threads): {0}")]
    Threads(#[source] std::io::Error),
    /// The standby replicas' changelog consumer could not be created.
    #[error("creating the standby replicas' consumer (state.standby_replicas): {0}")]
    Standbys(#[source] crate::kafka::ClientError),
    /// The client that reads the group's members could not be created.
    #[error("creating the group reader: {0}")]
    GroupReader(#[source] crate::kafka::ClientError),
    /// A member failed.
    #[error(transparent)]
    Member(#[from] MemberError),
    /// What the worker waited for at start-up did not come within `kafka.startup_timeout_ms`.
    #[error("gave up after {waited_s} s (kafka.startup_timeout_ms) waiting for {waiting}")]
    StartupTimeout {
        /// How long it waited.
        waited_s: u64,
        /// What it waited for.
        waiting: String,
    },
}

/// Builds a [`Worker`] from a configuration and the topologies it runs.
#[derive(Debug)]
pub struct WorkerBuilder {
    config: Config,
    topologies: Vec<Topology>,
}

impl WorkerBuilder {
    /// Adds a topology (a processor over co-partitioned source topics).
    pub fn topology(mut self, topology: Topology) -> Self {
        self.topologies.push(topology);
        self
    }

    /// Adds the topologies of every `[[pipeline]]` of the configuration (see
    /// [`crate::pipeline`]); returns every problem at once.
    pub fn pipelines_from_config(mut self) -> Result<Self, WorkerError> {
        let cfg = &self.config;
        let dlq = (cfg.processing.on_error == OnError::Dlq)
            .then(|| cfg.processing.dlq_topic(&cfg.app.id));
        let mut topologies =
            crate::pipeline::compile_all(&cfg.app.id, dlq.as_deref(), &cfg.pipelines).map_err(
                |issues| {
                    // Every problem of the config at once: `build` is not reached.
                    let mut all = property_issues(cfg);
                    all.extend(issues);
                    WorkerError::Config(all)
                },
            )?;
        self.topologies.append(&mut topologies);
        Ok(self)
    }

    /// Checks the topologies and builds the worker.
    pub fn build(self) -> Result<Worker, WorkerError> {
        let mut issues = Vec::new();
        let issue = |path: &str, message: String| ConfigIssue {
            path: path.to_string(),
            message,
        };
        issues.extend(property_issues(&self.config));
        if self.topologies.is_empty() {
            issues.push(issue(
                "pipeline",
                "nothing to run: define a [[pipeline]] or add a topology".into(),
            ));
        }
        let mut stores = BTreeSet::new();
        let mut sources = BTreeMap::new();
        for t in &self.topologies {
            if t.sources.is_empty() {
                issues.push(issue(
                    &format!("topology {}", t.name),
                    "has no source topic".into(),
                ));
            }
            // Pipelines were checked with the config (naming the pipeline); this covers
            // topologies added in code.
            let what = format!("topology {:?}", t.name);
            issues.extend(self.config.group.co_partitioning_issue(&what, &t.sources));
            for s in &t.stores {
                if !stores.insert(s.clone()) {
                    issues.push(issue(
                        &format!("topology {}", t.name),
                        format!("store {s:?} is declared twice"),
                    ));
                }
            }
            for s in &t.sources {
                if let Some(other) = sources.insert(s.clone(), t.name.clone()) {
                    issues.push(issue(
                        &format!("topology {}", t.name),
                        format!("source topic {s:?} is also read by {other:?}; a topic feeds one topology"),
                    ));
                }
            }
        }
        if !issues.is_empty() {
            return Err(WorkerError::Config(issues));
        }
        let threads = self.config.app.threads;
        Ok(Worker {
            config: Arc::new(self.config),
            topologies: Arc::new(self.topologies),
            metrics: Metrics::new(),
            status: Arc::new(StatusBoard::new(threads)),
        })
    }
}

/// The `kafka.properties` the worker refuses. `Worker::load_config` checks them while loading;
/// `config::load` leaves them to the builder.
fn property_issues(cfg: &Config) -> Vec<ConfigIssue> {
    check_properties(&cfg.kafka.properties, cfg.group.protocol)
}

/// What the worker learnt about its cluster and topics before the members start.
struct Prepared {
    /// The bootstrap servers to use.
    bootstrap: String,
    /// Partition count of every topic the topologies use.
    partitions: BTreeMap<String, i32>,
    /// Each changelog's `delete.retention.ms`.
    tombstone_retention: BTreeMap<String, Duration>,
}

/// A worker process's engine: one or more group members sharing its topologies, state
/// directory and HTTP endpoints.
#[derive(Debug)]
pub struct Worker {
    config: Arc<Config>,
    topologies: Arc<Vec<Topology>>,
    metrics: Metrics,
    status: Arc<StatusBoard>,
}

impl Worker {
    /// Loads `files` and the `TRIBUTARY_*` environment like [`crate::config::load`], also
    /// checking every expression, partitioner and `kafka.properties` entry as the worker will
    /// use it: every problem at once, each with its key path.
    pub fn load_config(files: &[PathBuf]) -> Result<Config, Vec<ConfigIssue>> {
        crate::config::load_with_checks(files, crate::config::process_env(), &Checks)
    }

    /// Starts building a worker for `config`.
    pub fn builder(config: Config) -> WorkerBuilder {
        WorkerBuilder {
            config,
            topologies: Vec::new(),
        }
    }

    /// The worker's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The worker's status board (tasks, readiness).
    pub fn status(&self) -> Arc<StatusBoard> {
        self.status.clone()
    }

    /// The topics the worker needs besides its sources: changelogs (compacted), sinks and the
    /// dead-letter topic, each with as many partitions as the topology's input.
    fn topic_specs(&self, partitions: &[i32]) -> Vec<TopicSpec> {
        let cfg = &self.config;
        let mut specs = Vec::new();
        for (t, &n) in self.topologies.iter().zip(partitions) {
            for store in &t.stores {
                specs.push(TopicSpec {
                    name: changelog_topic(&cfg.app.id, store),
                    partitions: n,
                    configs: BTreeMap::from([(
                        "cleanup.policy".to_string(),
                        "compact".to_string(),
                    )]),
                });
            }
            for sink in &t.sinks {
                specs.push(TopicSpec {
                    name: sink.clone(),
                    partitions: n,
                    configs: BTreeMap::new(),
                });
            }
        }
        if cfg.processing.on_error == OnError::Dlq {
            let n = partitions.iter().copied().max().unwrap_or(1);
            specs.push(TopicSpec {
                name: cfg.processing.dlq_topic(&cfg.app.id),
                partitions: n,
                configs: BTreeMap::new(),
            });
        }
        specs
    }

    /// Partition counts of each topology's sources, which must agree (co-partitioning). A source
    /// that an earlier topology writes (a repartition topic) gets that topology's count.
    fn source_partitions(
        &self,
        partitions_of: impl Fn(&str) -> Result<i32, AdminError>,
    ) -> Result<Vec<i32>, WorkerError> {
        let mut out = Vec::new();
        let mut written: BTreeMap<&str, i32> = BTreeMap::new();
        for t in self.topologies.iter() {
            let mut counts = BTreeMap::new();
            for s in &t.sources {
                // A topic that exists has its own count; one that an earlier topology writes
                // and that does not exist yet will be created with that topology's count.
                let n = match (partitions_of(s), written.get(s.as_str())) {
                    (Ok(n), _) => n,
                    (Err(_), Some(&n)) => n,
                    (Err(e), None) => return Err(e.into()),
                };
                counts.insert(s.clone(), n);
            }
            let distinct: BTreeSet<i32> = counts.values().copied().collect();
            if distinct.len() > 1 {
                let found: Vec<String> = counts
                    .iter()
                    .map(|(topic, n)| format!("{topic:?} has {n}"))
                    .collect();
                return Err(WorkerError::Config(vec![ConfigIssue {
                    path: format!("topology {}", t.name),
                    message: format!(
                        "source topics must have the same partition count (task n reads \
                         partition n of each), but {}",
                        found.join(", ")
                    ),
                }]));
            }
            let n = distinct.into_iter().next().unwrap_or(1);
            for sink in &t.sinks {
                written.entry(sink).or_insert(n);
            }
            out.push(n);
        }
        Ok(out)
    }

    /// Creates or checks every topic and learns what the members need to know about them
    /// (keeps the embedded cluster, if any, alive in `embedded`).
    async fn prepare(
        &self,
        embedded: &mut Option<EmbeddedCluster>,
    ) -> Result<Prepared, WorkerError> {
        let cfg = &self.config;
        let mut counts = BTreeMap::new();
        if cfg.kafka.bootstrap_servers == "embedded" {
            let cluster = EmbeddedCluster::start(1).map_err(WorkerError::Embedded)?;
            let bootstrap = cluster.bootstrap().to_string();
            let partitions = self.source_partitions(|_| Ok(EMBEDDED_PARTITIONS))?;
            let specs = self.topic_specs(&partitions);
            let mut sources = Vec::new();
            for t in self.topologies.iter() {
                for s in &t.sources {
                    if !specs.iter().any(|spec| &spec.name == s) && !counts.contains_key(s) {
                        cluster
                            .create_topic(s, EMBEDDED_PARTITIONS)
                            .map_err(WorkerError::Embedded)?;
                        counts.insert(s.clone(), EMBEDDED_PARTITIONS);
                        sources.push(s.as_str());
                    }
                }
            }
            for spec in specs {
                if counts.insert(spec.name.clone(), spec.partitions).is_none() {
                    cluster
                        .create_topic(&spec.name, spec.partitions)
                        .map_err(WorkerError::Embedded)?;
                }
            }
            // The one line a newcomer needs to feed it (README.md, "Five-minute quickstart"):
            // the address in the message itself, where it reads and copies plainly.
            sources.sort_unstable();
            tracing::info!(
                "embedded Kafka cluster at {bootstrap}; source topics {} ({EMBEDDED_PARTITIONS} \
                 partitions each): feed them with `tributary generate --brokers {bootstrap} \
                 --topic <topic>`",
                sources.join(", ")
            );
            *embedded = Some(cluster);
            return Ok(Prepared {
                bootstrap,
                partitions: counts,
                // The embedded cluster never compacts.
                tombstone_retention: BTreeMap::new(),
            });
        }
        let bootstrap = cfg.kafka.bootstrap_servers.clone();
        let admin = Arc::new(Admin::new(&crate::kafka::client::admin(cfg, &bootstrap))?);
        // Off the async threads: with the brokers away this waits seconds, and HTTP (`/health`,
        // `/ready`) is served meanwhile, possibly by the only async thread there is.
        let existing = {
            let admin = admin.clone();
            tokio::task::spawn_blocking(move || admin.topics())
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?
        };
        let partitions = self.source_partitions(|s| {
            existing
                .get(s)
                .copied()
                .ok_or_else(|| AdminError::MissingSource(s.to_string()))
        })?;
        let specs = self.topic_specs(&partitions);
        admin.ensure(&specs).await?;
        let topics = self
            .topologies
            .iter()
            .flat_map(|t| t.sources.iter())
            .chain(specs.iter().map(|s| &s.name));
        for topic in topics {
            if !counts.contains_key(topic) {
                counts.insert(topic.clone(), admin.source_partitions(topic)?);
            }
        }
        let changelogs: Vec<&str> = specs
            .iter()
            .filter(|s| s.compacted())
            .map(|s| s.name.as_str())
            .collect();
        let tombstone_retention = admin.tombstone_retention(&changelogs).await?;
        Ok(Prepared {
            bootstrap,
            partitions: counts,
            tombstone_retention,
        })
    }

    /// Runs until `shutdown` fires (then every member finishes its record, commits and leaves
    /// the group) or a member fails (then the others stop too and the error is returned).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        for warning in &self.config.warnings {
            tracing::warn!(key = %warning.path, "{}", warning.message);
        }
        let http_stop = CancellationToken::new();
        // Bound before anything waits on the brokers (`/health` answers and `/ready` says what
        // the worker waits for), and before the members' consumers exist: their client ids
        // carry the address other workers forward queries to (see `crate::cluster`).
        let listener = match self.config.http.listen {
            Some(addr) => Some(
                crate::http::bind(addr)
                    .await
                    .map_err(|source| WorkerError::Http { addr, source })?,
            ),
            None => None,
        };
        let advertised = listener.as_ref().map(|(_, bound)| {
            crate::http::advertised(self.config.http.advertised.as_deref(), *bound)
        });
        let config = match &advertised {
            Some(a) if self.config.http.advertised.as_ref() != Some(a) => {
                let mut c = (*self.config).clone();
                c.http.advertised = Some(a.clone());
                Arc::new(c)
            }
            _ => self.config.clone(),
        };
        // Who runs what in the group, read from the broker every second: `/state` routes with
        // it and `/cluster` shows it (kept without HTTP too, for anything placing work).
        let cluster = Arc::new(crate::http::Cluster {
            watch: Arc::new(ClusterWatch::new(advertised.unwrap_or_default())),
            keys: std::sync::OnceLock::new(),
            agent: crate::http::agent(),
            group: config.app.id.clone(),
            outbound: Arc::new(tokio::sync::Semaphore::new(crate::http::MAX_OUTBOUND)),
        });
        let http = listener.map(|(listener, _)| {
            crate::http::serve(
                listener,
                self.status.clone(),
                self.metrics.clone(),
                cluster.clone(),
                http_stop.clone(),
            )
        });
        let result = self.run_serving(shutdown, config, cluster).await;
        http_stop.cancel();
        if let Some(handle) = http {
            let _ = handle.await;
        }
        result
    }

    /// [`Worker::run`] once HTTP is served: waits for the brokers and topics, then runs the
    /// members.
    async fn run_serving(
        &self,
        shutdown: CancellationToken,
        config: Arc<Config>,
        cluster: Arc<crate::http::Cluster>,
    ) -> Result<(), WorkerError> {
        crate::kafka::logging::starting(&self.config.kafka.bootstrap_servers);
        let mut embedded = None;
        let prepared = self.prepare_patiently(&mut embedded, &shutdown).await?;
        let Some(prepared) = prepared.filter(|_| !shutdown.is_cancelled()) else {
            // Stopped while waiting (or during the attempt that then succeeded).
            return Ok(());
        };
        let _ = cluster.keys.set(crate::http::KeyRouter::new(
            &self.topologies,
            &prepared.partitions,
        ));
        let watch = cluster.watch.clone();
        let partitions = Arc::new(prepared.partitions);
        let tombstone_retention = Arc::new(prepared.tombstone_retention);
        let bootstrap = prepared.bootstrap;
        // Exactly once: the worker's transactional producers are named after an id kept in
        // its state directory (or its instance id), held while it runs.
        // Announced to other workers sharing the state directory (see `state::presence`).
        let app_dir = self.config.state.dir.join(&self.config.app.id);
        let presence = Arc::new(
            crate::state::presence::announce(&app_dir).map_err(|source| WorkerError::Identity {
                dir: app_dir.clone(),
                source,
            })?,
        );
        let identity = match self.config.processing.guarantee {
            Guarantee::ExactlyOnce if self.config.app.instance_id.is_none() => {
                let app_dir = self.config.state.dir.join(&self.config.app.id);
                Some(crate::state::identity::claim(&app_dir).map_err(|source| {
                    WorkerError::Identity {
                        dir: app_dir,
                        source,
                    }
                })?)
            }
            _ => None,
        };
        let transactional_id = match self.config.processing.guarantee {
            Guarantee::AtLeastOnce => None,
            Guarantee::ExactlyOnce => {
                let worker = match (&self.config.app.instance_id, &identity) {
                    (Some(instance), _) => instance.as_str(),
                    (None, Some(identity)) => identity.id(),
                    (None, None) => unreachable!("claimed above"),
                };
                Some(format!("{}-{worker}", self.config.app.id))
            }
        };
        let group_reader =
            GroupReader::new(&self.config, &bootstrap).map_err(WorkerError::GroupReader)?;
        let pool = Pool::start(self.config.processing.threads).map_err(WorkerError::Threads)?;
        let stop = shutdown.child_token();
        // Once the worker stops (a signal, or a member failed), its connections close: that
        // is no news.
        tokio::spawn({
            let stop = stop.clone();
            async move {
                stop.cancelled().await;
                crate::kafka::logging::shutting_down();
            }
        });
        let group_stop = CancellationToken::new();
        let group_refresher = tokio::spawn(crate::kafka::group::refresh(
            group_reader,
            config.group.protocol,
            config.app.threads,
            watch.clone(),
            GROUP_REFRESH,
            group_stop.clone(),
        ));
        let cleaner_stop = CancellationToken::new();
        let cleaner = tokio::spawn(clean_state_periodically(
            self.config.state.dir.join(&self.config.app.id),
            Duration::from_millis(self.config.state.cleanup_delay_ms),
            cleaner_stop.clone(),
        ));
        // One block cache and write buffer budget for every task of every member.
        let state = &self.config.state;
        let state_memory = StateMemory::new(
            state.cache_max_entries,
            state.block_cache_mb,
            state.write_buffer_mb,
        );
        let standby_stop = CancellationToken::new();
        let standbys = match config.state.standby_replicas {
            0 => None,
            replicas => {
                let standbys = Arc::new(
                    Standbys::new(StandbySetup {
                        config: config.clone(),
                        bootstrap: bootstrap.clone(),
                        topologies: self.topologies.clone(),
                        partitions: partitions.clone(),
                        tombstone_retention: tombstone_retention.clone(),
                        metrics: self.metrics.clone(),
                        status: self.status.clone(),
                        state_memory: state_memory.clone(),
                        presence: presence.clone(),
                    })
                    .map_err(WorkerError::Standbys)?,
                );
                let placement = standby_placement(
                    watch.clone(),
                    self.topologies.clone(),
                    &partitions,
                    replicas,
                );
                let (runner, stop) = (standbys.clone(), standby_stop.clone());
                Some((
                    standbys,
                    tokio::task::spawn_blocking(move || runner.run(placement, stop)),
                ))
            }
        };
        let mut members = tokio::task::JoinSet::new();
        for index in 0..self.config.app.threads {
            let setup = MemberSetup {
                index,
                config: config.clone(),
                bootstrap: bootstrap.clone(),
                topologies: self.topologies.clone(),
                partitions: partitions.clone(),
                tombstone_retention: tombstone_retention.clone(),
                metrics: self.metrics.clone(),
                status: self.status.clone(),
                shutdown: stop.clone(),
                transactional_id: transactional_id.clone(),
                state_memory: state_memory.clone(),
                pool: pool.clone(),
                standbys: standbys.as_ref().map(|(s, _)| s.clone()),
            };
            let app = self.config.app.id.clone();
            // Built on its thread too: making the member waits on the brokers (its
            // transactional producer's registration), which no async thread should. One that
            // cannot be made fails like one that stops.
            members.spawn_blocking(move || {
                let member = Member::new(setup)?;
                tracing::info!(member = index, %app, "member starting");
                member.run()
            });
        }
        let mut first_error = None;
        while let Some(joined) = members.join_next().await {
            let result = joined
                .unwrap_or_else(|e| Err(MemberError::Task(format!("member thread panicked: {e}"))));
            if let Err(e) = result {
                tracing::error!(error = %e, "member failed; stopping the worker");
                stop.cancel();
                first_error.get_or_insert(e);
            }
        }
        stop.cancel();
        pool.stop();
        standby_stop.cancel();
        if let Some((_, thread)) = standbys {
            let _ = thread.await;
        }
        cleaner_stop.cancel();
        let _ = cleaner.await;
        group_stop.cancel();
        let _ = group_refresher.await;
        drop(embedded);
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

/// What [`Standbys::run`] asks for: this worker's standby tasks, from the latest view of the
/// group; `None` (keep the current ones) before the first view and while some task has no
/// owner in it (a rebalance).
fn standby_placement(
    watch: Arc<ClusterWatch>,
    topologies: Arc<Vec<Topology>>,
    partitions: &BTreeMap<String, i32>,
    replicas: u32,
) -> impl FnMut() -> Option<BTreeSet<crate::types::TaskId>> {
    let tasks = Standbys::stateful_tasks(&topologies, partitions);
    let mut warned = false;
    move || {
        let view = watch.current()?;
        // A member that advertises no address (a worker without HTTP, or another client in
        // the group) holds partitions no placement can account for.
        let unaddressed = !view.unaddressed.is_empty();
        if unaddressed && !warned {
            let clients: Vec<&str> = view
                .unaddressed
                .iter()
                .map(|m| m.client_id.as_str())
                .collect();
            tracing::warn!(?clients, "group members without an advertised HTTP address (client.id `<app.id>-<member>@<host:port>`) hold partitions: standby replicas are not placed until they leave or are upgraded");
        }
        warned = unaddressed;
        let workers = crate::placement::workers_of(&view, &topologies, &tasks)?;
        let mut placed = crate::placement::standbys(&workers, &tasks, replicas as usize);
        Some(placed.remove(watch.own_address()).unwrap_or_default())
    }
}

/// Deletes the state of tasks that left this worker more than `delay` ago (see
/// [`crate::state::cleaner`]), every `delay / 2` (at least 100 ms, at most a minute), until
/// `stop` fires. The first pass waits for `delay`: after a restart, state left from before
/// counts as last used at start-up, so the group has that long to give its tasks back to this
/// worker (which opens and so keeps them) before they are judged unused.
async fn clean_state_periodically(app_dir: PathBuf, delay: Duration, stop: CancellationToken) {
    let period = (delay / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut wait = delay.max(period);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = period;
        let dir = app_dir.clone();
        let pass = tokio::task::spawn_blocking(move || {
            crate::state::cleaner::clean(&dir, delay, SystemTime::now())
        });
        match pass.await {
            Ok(Ok(report)) => {
                for (task, idle) in report.removed {
                    tracing::info!(%task, idle_ms = idle.as_millis() as u64, "deleted the state of a task closed on this worker longer than state.cleanup_delay_ms ago");
                }
                for (task, error) in report.failed {
                    tracing::warn!(%task, %error, "deleting the state of a task that left this worker failed; trying again later");
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(dir = %app_dir.display(), %error, "listing the state directory failed; trying again later")
            }
            Err(e) => tracing::warn!(error = %e, "the state cleaner panicked; trying again later"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_issue, file, no_env, paths, MINIMAL};
    use crate::config::{load_with_checks, load_with_env};

    /// Loads `text` with every check, as [`Worker::load_config`] does.
    fn rejected(text: &str) -> Vec<ConfigIssue> {
        load_with_checks(&[file(text)], no_env(), &Checks).expect_err("config should be rejected")
    }

    /// A config whose only problems are the ones [`Checks`] finds.
    const UNCHECKED_PROBLEMS: &str = r#"
[app]
id = "clicks"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
[kafka.properties]
"group.id" = "mine"
"no.such.property" = "1"
[[pipeline]]
name = "p"
source = { topics = ["in"], time = "ts +" }
sink = { topic = "out", partitioner = "hash" }
steps = [
  { filter = "amount >" },
  { aggregate = { fields = { n = "median(amount)" } } },
  { dedup = { key = "", within = "1m" } },
  { dedup = { key = "id +", within = "1m" } },
]
"#;

    /// The config layer alone accepts what it cannot judge; a library user who loads with it
    /// gets the same issues, with the same key paths, when the worker is built.
    #[test]
    fn the_worker_refuses_what_plain_loading_leaves_unchecked() {
        let checked = rejected(UNCHECKED_PROBLEMS);
        assert_eq!(
            paths(&checked),
            [
                "kafka.properties.\"group.id\"",
                "kafka.properties.\"no.such.property\"",
                "pipeline[0].source.time",
                "pipeline[0].sink.partitioner",
                "pipeline[0].steps[0].filter",
                "pipeline[0].steps[1].aggregate.fields.n",
                "pipeline[0].steps[2].dedup.key",
                "pipeline[0].steps[3].dedup.key",
            ],
            "{checked:#?}"
        );

        // `dedup.key = ""` is the config layer's own rule; the others pass it.
        let plain =
            UNCHECKED_PROBLEMS.replace("{ dedup = { key = \"\", within = \"1m\" } },\n", "");
        let config = load_with_env(&[file(&plain)], no_env()).expect("plain loading accepts");
        let refused = Worker::builder(config)
            .pipelines_from_config()
            .and_then(|b| b.build());
        let Err(WorkerError::Config(mut from_worker)) = refused else {
            panic!("the worker must refuse the config: {refused:?}");
        };
        let mut expected = checked;
        expected.retain(|i| !i.path.starts_with("pipeline[0].steps[2]"));
        for issue in &mut expected {
            issue.path = issue.path.replace("steps[3]", "steps[2]");
        }
        from_worker.sort_by(|a, b| a.path.cmp(&b.path));
        expected.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(from_worker, expected);
    }

    /// With valid pipelines, `build` is where a library user's bad properties are refused.
    #[test]
    fn build_refuses_properties_that_plain_loading_accepts() {
        let text = MINIMAL.replace(
            "[[pipeline]]",
            "[kafka.properties]\n\"enable.auto.commit\" = true\n[[pipeline]]",
        );
        let config = load_with_env(&[file(&text)], no_env()).expect("plain loading accepts");
        let refused = Worker::builder(config)
            .pipelines_from_config()
            .and_then(|b| b.build());
        let Err(WorkerError::Config(issues)) = refused else {
            panic!("the worker must refuse the config: {refused:?}");
        };
        assert_eq!(issues, rejected(&text));
        assert_issue(
            &issues,
            "kafka.properties.\"enable.auto.commit\"",
            &["set by Tributary"],
        );
    }

    fn config(extra: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let text = format!(
            "[app]\nid = \"t\"\n[kafka]\nbootstrap_servers = \"embedded\"\n{extra}\n[[pipeline]]\nname = \"p\"\nsource = {{ topics = [\"in\"] }}\nsteps = [ {{ aggregate = {{ fields = {{ c = \"count()\" }} }} }} ]\n"
        );
        std::fs::write(&path, text).unwrap();
        crate::config::load_with_env(&[path], []).unwrap()
    }

    fn issues(err: WorkerError) -> Vec<String> {
        match err {
            WorkerError::Config(issues) => issues.iter().map(ToString::to_string).collect(),
            other => panic!("expected config issues, got {other}"),
        }
    }

    #[test]
    fn stores_and_sources_are_unique_across_topologies() {
        let cfg = config("");
        let dup = Topology::new("other", ["in"], |_: &crate::TaskInfo| Nothing).store("p");
        let err = Worker::builder(cfg)
            .pipelines_from_config()
            .unwrap()
            .topology(dup)
            .build()
            .unwrap_err();
        let issues = issues(err);
        assert!(
            issues
                .iter()
                .any(|i| i.contains("store \"p\" is declared twice")),
            "{issues:?}"
        );
        assert!(
            issues
                .iter()
                .any(|i| i.contains("source topic \"in\" is also read by \"p\"")),
            "{issues:?}"
        );
    }

    use crate::processor::Nothing;

    /// State left from before a restart, however old, is kept for `state.cleanup_delay_ms`
    /// after start-up (its tasks may be assigned back), and deleted after that.
    #[tokio::test]
    async fn state_from_before_a_restart_gets_the_whole_delay() {
        let app = tempfile::tempdir().unwrap();
        let dir = app.path().join("0_0");
        drop(
            crate::state::TaskDb::open(
                &dir,
                &["s".to_string()],
                &crate::state::RocksMemory::default(),
            )
            .unwrap(),
        );
        crate::state::cleaner::age(&dir, Duration::from_secs(3600));
        let delay = Duration::from_secs(1);
        let stop = CancellationToken::new();
        let cleaner = tokio::spawn(clean_state_periodically(
            app.path().to_path_buf(),
            delay,
            stop.clone(),
        ));
        // Passes are due every half second, but none before the delay has passed.
        tokio::time::sleep(delay * 9 / 10).await;
        assert!(dir.exists(), "deleted before the delay since start-up");
        let mut deleted = false;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if !dir.exists() {
                deleted = true;
                break;
            }
        }
        assert!(deleted, "kept after the delay since start-up");
        stop.cancel();
        cleaner.await.unwrap();
    }

    /// A library topology over two topics is refused unless the assignor co-partitions.
    #[test]
    fn a_topology_over_several_topics_needs_range() {
        let two = || Topology::new("both", ["a", "b"], |_: &crate::TaskInfo| Nothing);
        let err = Worker::builder(config(""))
            .topology(two())
            .build()
            .unwrap_err();
        let issues = issues(err);
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(
            issues[0].starts_with(
                "group.assignment: topology \"both\" reads 2 topics (a, b); only \"range\""
            ),
            "{issues:?}"
        );
        let range = config("[group]\nassignment = \"range\"");
        assert!(Worker::builder(range).topology(two()).build().is_ok());
    }

    /// At start-up, the source topics of one topology must have the same partition count; the
    /// error names each topic with its count.
    #[test]
    fn source_topics_of_a_topology_need_the_same_partition_count() {
        let range = config("[group]\nassignment = \"range\"");
        let worker = Worker::builder(range)
            .topology(Topology::new("both", ["a", "b"], |_: &crate::TaskInfo| {
                Nothing
            }))
            .build()
            .unwrap();
        let counts = |a: i32, b: i32| {
            move |topic: &str| match topic {
                "a" => Ok(a),
                "b" => Ok(b),
                other => Err(AdminError::MissingSource(other.to_string())),
            }
        };
        let err = worker.source_partitions(counts(2, 3)).unwrap_err();
        assert_eq!(
            issues(err),
            [
                "topology both: source topics must have the same partition count (task n reads \
              partition n of each), but \"a\" has 2, \"b\" has 3"
            ]
        );
        assert_eq!(worker.source_partitions(counts(4, 4)).unwrap(), [4]);
    }

    #[test]
    fn a_key_by_splits_a_pipeline_into_two_topologies() {
        let cfg = crate::config::load_str(
            r#"
[app]
id = "t"
[kafka]
bootstrap_servers = "embedded"
[[pipeline]]
name = "p"
source = { topics = ["in"] }
sink = { topic = "out" }
steps = [ { filter = "amount > 1" }, { key_by = "user" }, { aggregate = { window = { kind = "tumbling", size = "1m" }, fields = { c = "count()", s = "sum(a + b)" } } } ]
"#,
        )
        .unwrap();
        let b = Worker::builder(cfg).pipelines_from_config().unwrap();
        let t = &b.topologies;
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].sources.clone(), t[0].sinks.clone()),
            (vec!["in".to_string()], vec!["t-p-repartition".to_string()])
        );
        assert!(t[0].stores.is_empty());
        assert_eq!(
            (t[1].sources.clone(), t[1].sinks.clone()),
            (vec!["t-p-repartition".to_string()], vec!["out".to_string()])
        );
        assert_eq!(t[1].stores, ["p"]);
        assert!(b.build().is_ok());
    }
}
