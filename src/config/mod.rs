//! Loading and validating the TOML configuration.
//!
//! This module is the configuration reference: every public type below is one table of the
//! file, every field one key, with its unit and default.
//!
//! # Layers
//!
//! [`load`] merges, from lowest to highest priority:
//!
//! 1. each `-c FILE` in the order given: a later file overrides an earlier one key by key
//!    (tables merge, but an array such as the `[[pipeline]]` list is replaced as a whole);
//! 2. environment variables `TRIBUTARY_<SECTION>__<KEY>`, with a double underscore between
//!    levels, e.g. `TRIBUTARY_KAFKA__BOOTSTRAP_SERVERS=broker:9092` sets
//!    `kafka.bootstrap_servers` and `TRIBUTARY_APP__THREADS=2` sets `app.threads`. Names are
//!    lowercased to find the key. Numeric keys parse the variable's text as a number. Variables
//!    with the prefix but no `__` (such as `TRIBUTARY_LOG`) name no key and are ignored. Array
//!    entries (pipelines) can't be set this way, nor can `kafka.properties` whose names have
//!    dots (most shells don't allow dots in variable names); put those in a file.
//!
//! # Problems are reported together
//!
//! Loading never stops at the first problem: it returns every [`ConfigIssue`] it finds, each
//! naming its key path, such as `app.threads`, `kafka.properties."acks"` or
//! `pipeline[0].steps[2].aggregate.window.size`. It reports:
//!
//! - missing or unreadable files and TOML syntax errors (the path is the file name and the
//!   message gives the line);
//! - values of the wrong type or out of range, with what was expected and what was found;
//! - unknown keys, with the closest known key as a suggestion;
//! - required keys that are missing (not reported when a file failed to load, since the key
//!   may well be in that file);
//! - rules that span keys: window shapes, duplicate pipeline names, a sink or dead-letter topic
//!   that is also a source topic, a pipeline with several source topics under an assignor
//!   that does not co-partition them, `[group]` keys of the other group protocol (see
//!   [`GroupConfig`]);
//! - with [`load_with_checks`], the values this module holds as text in another module's
//!   language ([`ValueChecks`]): CEL expressions, aggregate functions and sink partitioners
//!   that do not compile, and `kafka.properties` that librdkafka rejects, that Tributary sets
//!   itself or that the group protocol does not accept. [`load`] leaves those to the worker,
//!   which refuses them when it is built, with the same key paths; [`crate::Worker::load_config`] loads
//!   with every check.
//!
//! # Example
//!
//! ```toml
//! [app]
//! id = "clicks"
//!
//! [kafka]
//! bootstrap_servers = "127.0.0.1:9092"
//!
//! [[pipeline]]
//! name = "clicks-per-user"
//! source = { topics = ["clicks"] }
//! sink = { topic = "clicks-per-user" }
//! steps = [
//!   { filter = "amount > 50" },
//!   { aggregate = { window = { kind = "tumbling", size = "1m" }, fields = { total = "sum(amount)" } } },
//! ]
//! ```

mod read;
mod sections;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ::config::{ConfigError, Environment, File, FileFormat};

use self::read::Named;

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "TRIBUTARY_";

/// One problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Where: a key path such as `pipeline[0].sink.partitioner`, or a file name for a file
    /// that could not be read or parsed.
    pub path: String,
    /// What is wrong, on one line.
    pub message: String,
}

impl ConfigIssue {
    /// An issue at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for ConfigIssue {}

/// The config path of librdkafka property `key`: `kafka.properties."<key>"`.
pub fn property_path(key: &str) -> String {
    format!("kafka.properties.{key:?}")
}

/// The producer's transaction timeout (exactly-once): a `kafka.properties` key that may be
/// set, and must be longer than `processing.commit_interval_ms`.
pub const TRANSACTION_TIMEOUT_PROPERTY: &str = "transaction.timeout.ms";

/// Checks of the values the configuration holds as text in another module's language. Loading
/// with [`load_with_checks`] runs each where it reads the value, so that these problems are
/// reported together with the others, in file order, at the value's key path. An error is the
/// message, on one line.
pub trait ValueChecks {
    /// A CEL expression: `source.time`, `filter`, `map`, `key_by`, `dedup.key`.
    fn expression(&self, text: &str) -> Result<(), String>;
    /// An `aggregate.fields` entry, such as `sum(amount)`.
    fn aggregate_field(&self, text: &str) -> Result<(), String>;
    /// A `sink.partitioner`, such as `field:user`.
    fn partitioner(&self, text: &str) -> Result<(), String>;
    /// The `kafka.properties` under `protocol`: one issue per rejected property, at
    /// [`property_path`].
    fn properties(
        &self,
        properties: &BTreeMap<String, String>,
        protocol: GroupProtocol,
    ) -> Vec<ConfigIssue>;
}

/// Accepts every expression, partitioner and property: what [`load`] checks without the rest
/// of the crate.
struct Unchecked;

impl ValueChecks for Unchecked {
    fn expression(&self, _: &str) -> Result<(), String> {
        Ok(())
    }
    fn aggregate_field(&self, _: &str) -> Result<(), String> {
        Ok(())
    }
    fn partitioner(&self, _: &str) -> Result<(), String> {
        Ok(())
    }
    fn properties(&self, _: &BTreeMap<String, String>, _: GroupProtocol) -> Vec<ConfigIssue> {
        Vec::new()
    }
}

/// Loads `files` (later ones override earlier ones), then the `TRIBUTARY_*` variables of this
/// process's environment, and validates the result, except for the values in other modules'
/// languages ([`ValueChecks`]), which the worker checks when it is built. See the
/// [module docs](self).
pub fn load(files: &[PathBuf]) -> Result<Config, Vec<ConfigIssue>> {
    load_with_env(files, process_env())
}

/// `(name, value)` pairs of this process's environment.
pub(crate) fn process_env() -> impl Iterator<Item = (String, String)> {
    // `std::env::vars` panics on a non-Unicode variable; such a variable can't be ours anyway.
    std::env::vars_os()
        .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)))
}

/// Like [`load`], with the environment given as `(name, value)` pairs instead of read from the
/// process (for tests and embedding). Pairs not starting with [`ENV_PREFIX`] are ignored.
pub fn load_with_env(
    files: &[PathBuf],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, Vec<ConfigIssue>> {
    load_with_checks(files, env, &Unchecked)
}

/// Like [`load_with_env`], also running `checks` on every expression, partitioner and the
/// `kafka.properties` where they are read: every problem at once.
pub fn load_with_checks(
    files: &[PathBuf],
    env: impl IntoIterator<Item = (String, String)>,
    checks: &dyn ValueChecks,
) -> Result<Config, Vec<ConfigIssue>> {
    let mut issues = Vec::new();
    let mut builder = ::config::Config::builder();
    for file in files {
        match read_file(file) {
            Ok(layer) => builder = builder.add_source(layer),
            Err(issue) => issues.push(issue),
        }
    }

    let env: ::config::Map<String, String> = env
        .into_iter()
        .filter(|(name, _)| {
            name.strip_prefix(ENV_PREFIX)
                .is_some_and(|rest| rest.contains("__"))
        })
        .collect();
    let prefix = ENV_PREFIX.trim_end_matches('_');
    builder = builder.add_source(
        Environment::with_prefix(prefix)
            .prefix_separator("_")
            .separator("__")
            .source(Some(env)),
    );

    let tree = match builder.build() {
        Ok(merged) => merged.cache,
        Err(e) => {
            issues.push(ConfigIssue::new("environment", e.to_string()));
            return Err(issues);
        }
    };
    let files_ok = issues.is_empty();
    match sections::read(&tree, checks) {
        Ok(config) if files_ok => Ok(config),
        Ok(_) => Err(issues),
        Err(found) => {
            // With a file missing, its keys are missing too: don't bury the real problem.
            issues.extend(
                found
                    .into_iter()
                    .filter(|i| files_ok || !read::is_missing(i)),
            );
            Err(issues)
        }
    }
}

/// Loads a configuration from TOML text alone (no files, no environment): for tests, the test
/// kit and embedding. Like [`load`], it leaves expressions, partitioners and properties to the
/// worker (or the test kit).
pub fn load_str(toml: &str) -> Result<Config, Vec<ConfigIssue>> {
    let tree = ::config::Config::builder()
        .add_source(File::from_str(toml, FileFormat::Toml))
        .build()
        .map_err(|e| {
            let message = match e {
                ConfigError::FileParse { cause, .. } => one_line_toml_error(&cause.to_string()),
                other => other.to_string(),
            };
            vec![ConfigIssue::new("config", message)]
        })?
        .cache;
    sections::read(&tree, &Unchecked)
}

/// Reads and parses one TOML file into a layer of its own, so that every bad file is reported.
fn read_file(path: &Path) -> Result<::config::Config, ConfigIssue> {
    let name = path.display().to_string();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ConfigIssue::new(name, "file not found"))
        }
        Err(e) => return Err(ConfigIssue::new(name, format!("cannot read file: {e}"))),
        Ok(meta) if !meta.is_file() => return Err(ConfigIssue::new(name, "not a regular file")),
        Ok(_) => {}
    }
    ::config::Config::builder()
        .add_source(File::from(path).format(FileFormat::Toml))
        .build()
        .map_err(|e| {
            let message = match e {
                ConfigError::FileParse { cause, .. } => one_line_toml_error(&cause.to_string()),
                other => other.to_string(),
            };
            ConfigIssue::new(name, message)
        })
}

/// Folds the toml crate's multi-line error (position, source excerpt with a caret, reason) into
/// `TOML parse error at line 3, column 7: <reason>`.
fn one_line_toml_error(text: &str) -> String {
    let mut lines = text.lines();
    let head = lines.next().unwrap_or_default().trim().to_string();
    let is_excerpt = |line: &str| {
        let line = line.trim_start();
        line.starts_with('|')
            || line
                .split_once(" |")
                .is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()))
    };
    let reason: Vec<&str> = lines
        .filter(|l| !l.trim().is_empty() && !is_excerpt(l))
        .map(str::trim)
        .collect();
    if reason.is_empty() {
        head
    } else {
        format!("{head}: {}", reason.join("; "))
    }
}

/// Parses a duration written as a whole number and a unit: `500ms`, `10s`, `1m`, `2h`, `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "invalid duration {s:?}: expected a whole number followed by a unit, one of ms, s, m, \
             h, d (e.g. \"500ms\", \"10s\", \"1m\")"
        )
    };
    let text = s.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let unit_ms: u64 = match unit.trim_start() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(invalid()),
    };
    let number: u64 = number.parse().map_err(|_| invalid())?;
    number
        .checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {s:?} is too large"))
}

/// Implements `as_str`, `Display` and the config spelling table for a plain enum.
macro_rules! spelled {
    ($ty:ty { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The spelling used in the config file.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name),+
                }
            }
        }

        impl Named for $ty {
            const NAMES: &'static [(&'static str, Self)] = &[$(($name, Self::$variant)),+];
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `[app]`: identity of the application.
    pub app: AppConfig,
    /// `[kafka]`: how to reach the cluster.
    pub kafka: KafkaConfig,
    /// `[group]`: consumer-group membership.
    pub group: GroupConfig,
    /// `[processing]`: delivery guarantee, commits and error handling.
    pub processing: ProcessingConfig,
    /// `[state]`: local state stores.
    pub state: StateConfig,
    /// `[http]`: the health, metrics and query endpoint.
    pub http: HttpConfig,
    /// `[[pipeline]]` (TOML key `pipeline`, at least one): the processing pipelines.
    pub pipelines: Vec<PipelineConfig>,
    /// Keys that are valid but have no effect here, such as the other group protocol's
    /// `[group]` keys (one file can serve both protocols, switched by the environment):
    /// `tributary validate` prints them and a worker logs them when it starts.
    pub warnings: Vec<ConfigIssue>,
}

/// `[app]`: identity of the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppConfig {
    /// `id` (required): the consumer group id and the prefix of internal topics
    /// (`<id>-<store>-changelog`, `<id>-<pipeline>-repartition`, `<id>-dlq`). Letters, digits,
    /// `.`, `_` and `-` only, as in Kafka topic names.
    pub id: String,
    /// `threads` (default 1, at least 1): group members run by this process; a worker with 2
    /// gets about twice the partitions.
    pub threads: usize,
    /// `instance_id` (optional): static membership (`group.instance.id`); each member gets
    /// `-<n>` appended.
    pub instance_id: Option<String>,
}

impl AppConfig {
    /// Default of `threads`.
    pub const DEFAULT_THREADS: usize = 1;
}

/// `[kafka]`: how to reach the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `bootstrap_servers` (required): `host:port[,host:port...]`, or `embedded` for an
    /// in-process cluster to try things out.
    pub bootstrap_servers: String,
    /// `startup_timeout_ms` (default 0 = wait as long as it takes): how long a starting worker
    /// waits for its brokers to answer and its source topics to exist before it gives up.
    pub startup_timeout_ms: u64,
    /// `[kafka.properties]` (default empty): librdkafka properties passed to every client
    /// verbatim. Values may be written as strings, integers, floats or booleans. Dotted keys may
    /// be quoted (`"security.protocol" = "ssl"`) or bare (`security.protocol = "ssl"`). Keys that
    /// Tributary sets itself, that the group protocol does not accept or that librdkafka
    /// rejects are refused when the worker is built ([`ValueChecks::properties`]).
    pub properties: BTreeMap<String, String>,
}

/// `[group]`: consumer-group membership.
///
/// Two group protocols exist, and some keys belong to one of them only: `assignment` and
/// `session_timeout_ms` to the classic protocol (the members assign partitions; the client sets
/// the session timeout), `remote_assignor` to the consumer protocol (KIP-848: the broker
/// assigns, and the session and heartbeat intervals are the broker's `group.consumer.*`
/// settings). A key set under the protocol it does not belong to is read (its value must be
/// valid) and has no effect; it is reported in [`Config::warnings`], so that a session timeout
/// the group never uses does not mislead whoever reads the file, while one file can still
/// serve both protocols (switched with `TRIBUTARY_GROUP__PROTOCOL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// `protocol` (default `"classic"`): the group membership protocol.
    pub protocol: GroupProtocol,
    /// `assignment` (classic protocol only; default `"cooperative-sticky"`): the partition
    /// assignment strategy. A pipeline (or topology) reading several topics needs `"range"`,
    /// the only one that keeps partition `n` of every topic on one member
    /// ([`GroupConfig::co_partitioning_issue`]).
    pub assignment: Assignment,
    /// `remote_assignor` (consumer protocol only; default `"uniform"`): the broker-side
    /// assignor.
    pub remote_assignor: RemoteAssignor,
    /// `session_timeout_ms` (classic protocol only; milliseconds, default 10000, at least 1):
    /// how long the group waits for a silent member before reassigning its partitions.
    pub session_timeout_ms: u64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            protocol: GroupProtocol::default(),
            assignment: Assignment::default(),
            remote_assignor: RemoteAssignor::default(),
            session_timeout_ms: 10_000,
        }
    }
}

/// `group.protocol`: how members join the group and get their partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupProtocol {
    /// `"classic"` (default): JoinGroup/SyncGroup; one member computes the assignment with
    /// `group.assignment`; the session timeout is `group.session_timeout_ms`.
    #[default]
    Classic,
    /// `"consumer"`: KIP-848 (Apache Kafka 4.0 or later). The broker computes the assignment
    /// with `group.remote_assignor` and hands it out through heartbeats; rebalances are always
    /// incremental; the session timeout and heartbeat interval are the broker's
    /// `group.consumer.session.timeout.ms` and `group.consumer.heartbeat.interval.ms`.
    Consumer,
}

spelled!(GroupProtocol { Classic => "classic", Consumer => "consumer" });

impl GroupProtocol {
    /// The value for librdkafka's `group.protocol`.
    pub fn librdkafka_name(&self) -> &'static str {
        self.as_str()
    }

    /// The `[group]` keys that do not apply under this protocol, each with the reason (what
    /// governs that setting instead).
    pub fn inapplicable_keys(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Classic => &[(
                "remote_assignor",
                "the classic protocol's members assign partitions themselves, with \
                 `group.assignment`",
            )],
            Self::Consumer => &[
                (
                    "assignment",
                    "the broker assigns partitions; choose its assignor with \
                     `group.remote_assignor`",
                ),
                (
                    "session_timeout_ms",
                    "the broker's group.consumer.session.timeout.ms sets it",
                ),
            ],
        }
    }
}

/// `group.assignment`: how partitions are spread over group members (classic protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Assignment {
    /// `"cooperative-sticky"` (default): incremental rebalancing; only moved partitions are
    /// revoked.
    #[default]
    CooperativeSticky,
    /// `"range"`: eager; co-partitioned topics get the same partition numbers on a member
    /// (needed by pipelines with several source topics).
    Range,
    /// `"roundrobin"`: eager; partitions dealt out one by one.
    RoundRobin,
}

spelled!(Assignment {
    CooperativeSticky => "cooperative-sticky",
    Range => "range",
    RoundRobin => "roundrobin",
});

impl Assignment {
    /// The value for librdkafka's `partition.assignment.strategy`.
    pub fn librdkafka_name(&self) -> &'static str {
        self.as_str()
    }

    /// True when the assignor gives partition `n` of every subscribed topic to one member
    /// (given the same partition count and the same subscription on every member, which all
    /// members of one app have): only `range`, which deals out each topic's partitions over the
    /// members in the same order. The sticky and round-robin assignors balance partitions one
    /// by one across topics, so partition 3 of `a` and partition 3 of `b` may land apart.
    pub fn co_partitions(self) -> bool {
        self == Self::Range
    }
}

/// The partition assignor a configuration chooses, and whether it co-partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignor {
    /// The key choosing it, e.g. `group.assignment`.
    pub key: &'static str,
    /// Its name as configured, e.g. `"cooperative-sticky"`.
    pub name: &'static str,
    /// Whether it keeps partition `n` of every source topic on one member.
    pub co_partitions: bool,
}

impl Assignor {
    /// An assignor chosen by `key`, named `name`.
    pub const fn new(key: &'static str, name: &'static str, co_partitions: bool) -> Self {
        Self {
            key,
            name,
            co_partitions,
        }
    }
}

impl GroupConfig {
    /// The assignor in effect.
    pub fn assignor(&self) -> Assignor {
        match self.protocol {
            GroupProtocol::Classic => Assignor::new(
                "group.assignment",
                self.assignment.as_str(),
                self.assignment.co_partitions(),
            ),
            // KIP-848: the broker assigns. Its "range" assignor gives each member the same
            // partition numbers of topics with equal partition counts; "uniform" spreads them.
            GroupProtocol::Consumer => Assignor::new(
                "group.remote_assignor",
                self.remote_assignor.as_str(),
                self.remote_assignor == RemoteAssignor::Range,
            ),
        }
    }

    /// Why `what` (`pipeline "x"`, `topology "x"`), reading `sources`, cannot run under this
    /// group's assignor, if it cannot. A topology keeps one task per partition number: partition
    /// `n` of all its sources is processed by one task, with one store and one changelog
    /// partition. Unless the assignor keeps those partitions on one member, two members would
    /// each open that task and write the same changelog partition at once.
    pub fn co_partitioning_issue(&self, what: &str, sources: &[String]) -> Option<ConfigIssue> {
        let topics: std::collections::BTreeSet<&str> = sources.iter().map(String::as_str).collect();
        let assignor = self.assignor();
        if topics.len() < 2 || assignor.co_partitions {
            return None;
        }
        let list: Vec<&str> = topics.into_iter().collect();
        Some(ConfigIssue::new(
            assignor.key,
            format!(
                "{what} reads {} topics ({}); only \"range\" keeps partition n of every source \
                 topic on one member, and with {:?} two members could run the same task (one \
                 store, one changelog partition) at once: set {} = \"range\", or give the \
                 pipeline one source topic",
                list.len(),
                list.join(", "),
                assignor.name,
                assignor.key,
            ),
        ))
    }
}

/// `group.remote_assignor`: the broker-side assignor (consumer protocol). Both are sticky:
/// a rebalance moves only the partitions it has to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RemoteAssignor {
    /// `"uniform"` (default): spreads partitions evenly over the members.
    #[default]
    Uniform,
    /// `"range"`: co-partitioned topics get the same partition numbers on a member.
    Range,
}

spelled!(RemoteAssignor { Uniform => "uniform", Range => "range" });

impl RemoteAssignor {
    /// The value for librdkafka's `group.remote.assignor`.
    pub fn librdkafka_name(&self) -> &'static str {
        self.as_str()
    }
}

/// `[processing]`: delivery guarantee, commits and error handling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessingConfig {
    /// `guarantee` (default `"at_least_once"`).
    pub guarantee: Guarantee,
    /// `commit_interval_ms` (milliseconds, default 1000, at least 1): how often input offsets
    /// are committed (once the state and output they imply are durable).
    pub commit_interval_ms: u64,
    /// `on_error` (default `"fail"`): what to do with a record that can't be decoded or that
    /// makes a step fail.
    pub on_error: OnError,
    /// `dlq_topic` (optional, default `"<app.id>-dlq"`): the dead-letter topic used with
    /// `on_error = "dlq"`; read it through [`ProcessingConfig::dlq_topic`].
    pub dlq_topic: Option<String>,
    /// `max_buffered_records` (default 1000, at least 1): records librdkafka keeps fetched
    /// ahead per partition (its `queued.min.messages`); a partition whose queue holds that many
    /// is not fetched until its task has taken some.
    pub max_buffered_records: usize,
    /// `threads` (default: the machine's cores, at least 1): processing threads shared by every
    /// group member of the worker. Tasks are spread over them; each task runs on one at a time.
    pub threads: usize,
    /// `commit_timeout_ms` (milliseconds, default 60000, at least 1): how long a commit waits
    /// for the broker to acknowledge every record produced since the last one. A commit that
    /// waits longer fails (and with it the worker, committing nothing), rather than hang.
    pub commit_timeout_ms: u64,
    /// `idle_advance_ms` (milliseconds, default 0: off): a running task that has received no
    /// record for this long has its stream time advanced with the wall clock (to its stream
    /// time at the last record plus the wall-clock time since), so that windows close and
    /// dedup marks expire without further input. See [`crate::processor`].
    pub idle_advance_ms: u64,
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        Self {
            guarantee: Guarantee::default(),
            commit_interval_ms: 1_000,
            on_error: OnError::default(),
            dlq_topic: None,
            max_buffered_records: 1_000,
            threads: default_threads(),
            commit_timeout_ms: 60_000,
            idle_advance_ms: 0,
        }
    }
}

/// The default of `processing.threads`: the cores this process may use.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

impl ProcessingConfig {
    /// The dead-letter topic: `dlq_topic` when set, else `<app_id>-dlq`.
    pub fn dlq_topic(&self, app_id: &str) -> String {
        self.dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{app_id}-dlq"))
    }
}

/// `processing.guarantee`: the delivery guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Guarantee {
    /// `"at_least_once"` (default): after a crash, every input record is reflected in state and
    /// output at least once.
    #[default]
    AtLeastOnce,
    /// `"exactly_once"`: committed output and state reflect every input record exactly once
    /// (Kafka transactions; read the output with `isolation.level=read_committed`).
    ExactlyOnce,
}

spelled!(Guarantee { AtLeastOnce => "at_least_once", ExactlyOnce => "exactly_once" });

/// `processing.on_error`: what happens to a bad record or a failing step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// `"fail"` (default): stop the worker with an error.
    #[default]
    Fail,
    /// `"skip"`: log, count and drop the record.
    Skip,
    /// `"dlq"`: write the original record to the dead-letter topic, with the reason in headers.
    Dlq,
}

spelled!(OnError { Fail => "fail", Skip => "skip", Dlq => "dlq" });

/// `[state]`: local state stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    /// `dir` (default `"./tributary-state"`): RocksDB stores and checkpoint files live under
    /// here.
    pub dir: PathBuf,
    /// `standby_replicas` (default 0): warm copies of each store kept on other members.
    pub standby_replicas: u32,
    /// `cache_max_entries` (default 20000, at least 1): entries cached in memory per store
    /// before they are written to RocksDB. A cache full of changes asks for a commit, so a
    /// larger cache means fewer commits when many distinct keys change, for more memory.
    pub cache_max_entries: usize,
    /// `block_cache_mb` (MiB, default 32, at least 1): RocksDB's block cache, one for every
    /// store of the worker: data, index and bloom filter blocks read from disk.
    pub block_cache_mb: usize,
    /// `write_buffer_mb` (MiB, default 32, at least 1): RocksDB's write buffers (memtables) of
    /// every store of the worker together; when they near it, the largest is flushed to disk.
    pub write_buffer_mb: usize,
    /// `cleanup_delay_ms` (milliseconds, default 600000 = 10 minutes, at least 1): the state
    /// directory of a task that is no longer open on this worker (its partition moved away) is
    /// deleted once it has been closed this long, so that it is not reused, stale, if the
    /// partition ever comes back (see `src/state/cleaner.rs`).
    pub cleanup_delay_ms: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./tributary-state"),
            standby_replicas: 0,
            cache_max_entries: 20_000,
            block_cache_mb: 32,
            write_buffer_mb: 32,
            cleanup_delay_ms: 600_000,
        }
    }
}

/// `[http]`: the endpoint serving `/health`, `/ready`, `/metrics`, `/state`, `/tasks` and
/// `/cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// `listen` (default `"127.0.0.1:9464"`): an IP address and port; `"off"` or `""` turns
    /// the endpoint off (`None`).
    pub listen: Option<SocketAddr>,
    /// `advertised` (optional): `host:port` at which other workers reach this one, to forward
    /// `/state` queries for keys it owns. Default: the bound `listen` address, with the host
    /// name for an unspecified IP (`0.0.0.0`, `::`). The worker fills it in once bound.
    pub advertised: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9464))),
            advertised: None,
        }
    }
}

/// `[[pipeline]]`: source topics, a chain of steps and an optional sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineConfig {
    /// `name` (required, unique): letters, digits, `.`, `_` and `-`; part of internal topic
    /// names (`<app.id>-<name>-repartition`).
    pub name: String,
    /// `source` (required): where records come from.
    pub source: SourceConfig,
    /// `sink` (optional): where the pipeline's output goes.
    pub sink: Option<SinkConfig>,
    /// `steps` (default none): applied in order, written either as `[[pipeline.steps]]` tables
    /// or as an array of inline tables, `steps = [ { filter = "..." }, ... ]`.
    pub steps: Vec<StepConfig>,
}

/// `pipeline.source`: the input topics and how to decode them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    /// `topics` (required, at least one): topic names, an array even for one topic.
    pub topics: Vec<String>,
    /// `format` (default `"json"`): how record values are decoded.
    pub format: Format,
    /// `time` (optional): CEL expression giving the record's event time in epoch
    /// milliseconds, used by windows; default the Kafka record timestamp.
    pub time: Option<String>,
    /// `schema` (optional): path to an Avro schema file (`.avsc`); Avro needs this or
    /// `registry_url`.
    pub schema: Option<PathBuf>,
    /// `registry_url` (optional): `http(s)://` URL of a schema registry, for Avro values in
    /// the registry's wire format.
    pub registry_url: Option<String>,
    /// `partitioner` (default `"murmur2"`): how the producers of the source topics chose a
    /// record's partition from its key, so that `/state` finds the task holding a key.
    pub partitioner: KeyPartitioner,
}

/// How a topic's producers chose a record's partition from its key (`source.partitioner`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyPartitioner {
    /// `"murmur2"` (default): the Java client's (and Kafka Streams', and `tributary
    /// generate`'s) default partitioner.
    #[default]
    Murmur2,
    /// `"crc32"`: librdkafka's default (`consistent_random`, and `consistent`), used by the
    /// clients built on it (Python, Go, .NET, C/C++) unless told otherwise.
    Crc32,
}

spelled!(KeyPartitioner { Murmur2 => "murmur2", Crc32 => "crc32" });

/// `pipeline.sink`: the output topic and how to encode and partition it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// `topic` (required).
    pub topic: String,
    /// `format` (default `"json"`): how record values are encoded.
    pub format: Format,
    /// `partitioner` (default `"murmur2"`): `murmur2` (hash of the key, as the Java client),
    /// `round_robin`, `random` (a uniformly random partition per record), `field:<name>` (hash
    /// of a value field) or `range:<b1,b2,...>` (by key, with bounds in strictly increasing
    /// string order).
    pub partitioner: String,
    /// `schema` (optional): path to an Avro schema file; Avro needs this or `registry_url`.
    pub schema: Option<PathBuf>,
    /// `registry_url` (optional): `http(s)://` URL of a schema registry.
    pub registry_url: Option<String>,
}

impl SinkConfig {
    /// Default of `partitioner`.
    pub const DEFAULT_PARTITIONER: &'static str = "murmur2";
}

/// Record value encoding (`source.format`, `sink.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `"json"` (default).
    #[default]
    Json,
    /// `"avro"`: needs `schema` or `registry_url`.
    Avro,
    /// `"string"`: UTF-8 text.
    String,
    /// `"bytes"`: raw bytes.
    Bytes,
}

spelled!(Format { Json => "json", Avro => "avro", String => "string", Bytes => "bytes" });

/// One entry of `pipeline.steps`: a table with exactly one of the keys below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepConfig {
    /// `filter = "<CEL>"`: keep records for which the expression is true.
    Filter(String),
    /// `map = "<CEL>"`: replace the value with the expression's result.
    Map(String),
    /// `key_by = "<CEL>"`: re-key; repartitions through `<app.id>-<pipeline>-repartition`.
    KeyBy(String),
    /// `aggregate = { ... }`: a keyed, optionally windowed aggregate.
    Aggregate(AggregateConfig),
    /// `dedup = { key = "<CEL>", within = "10m" }`: drop repeats.
    Dedup(DedupConfig),
}

impl StepConfig {
    /// The step's key in the config (`"filter"`, `"aggregate"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Filter(_) => "filter",
            Self::Map(_) => "map",
            Self::KeyBy(_) => "key_by",
            Self::Aggregate(_) => "aggregate",
            Self::Dedup(_) => "dedup",
        }
    }
}

/// `aggregate`: a per-key aggregate, emitted as a JSON object of its `fields` (plus
/// `window_start`/`window_end` when windowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateConfig {
    /// `window` (optional): without it the aggregate runs forever per key.
    pub window: Option<WindowConfig>,
    /// `fields` (required, at least one): output field name → aggregate expression such as
    /// `count()`, `sum(amount)`, `max(amount)`, `avg(amount)`.
    pub fields: BTreeMap<String, String>,
    /// `emit` (default `"update"`).
    pub emit: Emit,
}

/// `aggregate.emit`: when results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Emit {
    /// `"update"` (default): on every change.
    #[default]
    Update,
    /// `"final"`: once per window, when it closes (after `grace`).
    Final,
}

spelled!(Emit { Update => "update", Final => "final" });

/// `aggregate.window`. Durations are strings such as `"500ms"`, `"10s"`, `"1m"`, `"2h"`, `"1d"`.
///
/// - `tumbling`: `size` required; no `advance` or `gap`.
/// - `hopping`: `size` and `advance` required, `advance` at most `size`; no `gap`.
/// - `session`: `gap` required; no `size` or `advance`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowConfig {
    /// `kind` (required).
    pub kind: WindowKind,
    /// `size` (> 0): window length, for tumbling and hopping windows.
    pub size: Option<Duration>,
    /// `advance` (> 0, at most `size`): distance between window starts, for hopping windows.
    pub advance: Option<Duration>,
    /// `gap` (> 0): inactivity that closes a session window.
    pub gap: Option<Duration>,
    /// `grace` (default 0): how long after its end a window still accepts late records.
    pub grace: Duration,
}

/// `window.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// `"tumbling"`: fixed-size, non-overlapping windows.
    Tumbling,
    /// `"hopping"`: fixed-size windows starting every `advance`.
    Hopping,
    /// `"session"`: per-key activity periods separated by `gap`.
    Session,
}

spelled!(WindowKind { Tumbling => "tumbling", Hopping => "hopping", Session => "session" });

/// `dedup`: drops a record whose `key` was already seen within `within`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupConfig {
    /// `key` (required): CEL expression identifying a record, such as `"id"`.
    pub key: String,
    /// `within` (required, > 0): how long a key is remembered, such as `"10m"`.
    pub within: Duration,
}
