//! The data generator behind `tributary generate`.
//!
//! It writes synthetic click records to a Kafka topic:
//!
//! - key: `user-<n>` with `n` in `0..keys`, chosen uniformly or with a Zipf skew
//!   (`user-0` is then the most frequent key);
//! - value: JSON `{"user":"user-<n>","amount":<integer 1..=100>,"ts":<epoch ms>}`.
//!
//! Keys and amounts are a pure function of the seed ([`RecordGenerator`]), so a run can
//! be reproduced and its expected aggregates computed without Kafka; only `ts` is the
//! wall clock. Amounts are integers, so the `f64` sums in a [`GenerateReport`] are exact.
//!
//! The producer keeps many records in flight, paces them with a token bucket when a rate
//! is given, and reports success only once every record has been acknowledged by the
//! brokers. Topics can be created up front with a given partition count.

// Errors carry rdkafka's (large) KafkaError and the topic and brokers by value; they are
// the cold path of a run, so their size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

/// Number of distinct keys when none is given (`--keys`).
pub const DEFAULT_KEYS: u64 = 1000;

/// Seed used when none is given.
pub const DEFAULT_SEED: u64 = 42;

/// How long to wait for metadata (and for a freshly created topic to appear).
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// After cancellation, how long in-flight records may take to be acknowledged.
const CANCEL_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How the generator chooses the key of each record.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum KeyDistribution {
    /// Every key equally likely.
    #[default]
    Uniform,
    /// Key rank `k` (1-based; rank 1 is `user-0`) has weight `1 / k^exponent`.
    Zipf {
        /// The skew; 0 is uniform, around 1 is the classic Zipf law, larger is more skewed.
        exponent: f64,
    },
}

impl fmt::Display for KeyDistribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyDistribution::Uniform => f.write_str("uniform"),
            KeyDistribution::Zipf { exponent } => write!(f, "zipf:{exponent}"),
        }
    }
}

impl FromStr for KeyDistribution {
    type Err = String;

    /// Parses `uniform`, `zipf` (exponent 1.0) or `zipf:<exponent>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("uniform") {
            return Ok(KeyDistribution::Uniform);
        }
        if s.eq_ignore_ascii_case("zipf") {
            return Ok(KeyDistribution::Zipf { exponent: 1.0 });
        }
        if let Some(exp) = s
            .strip_prefix("zipf:")
            .or_else(|| s.strip_prefix("ZIPF:"))
            .or_else(|| s.strip_prefix("zipf="))
        {
            let exponent: f64 = exp
                .trim()
                .parse()
                .map_err(|_| format!("invalid zipf exponent {exp:?}: expected a number"))?;
            let d = KeyDistribution::Zipf { exponent };
            d.check()?;
            return Ok(d);
        }
        Err(format!(
            "unknown key distribution {s:?}: expected \"uniform\", \"zipf\" or \"zipf:<exponent>\""
        ))
    }
}

impl KeyDistribution {
    fn check(&self) -> Result<(), String> {
        match self {
            KeyDistribution::Uniform => Ok(()),
            KeyDistribution::Zipf { exponent } if exponent.is_finite() && *exponent >= 0.0 => {
                Ok(())
            }
            KeyDistribution::Zipf { exponent } => Err(format!(
                "zipf exponent must be a finite number >= 0, got {exponent}"
            )),
        }
    }
}

/// What to generate and where to send it.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Kafka `bootstrap.servers`.
    pub brokers: String,
    /// Topic to write to.
    pub topic: String,
    /// Number of records to write.
    pub records: u64,
    /// Upper bound on records per second; `None` = as fast as the brokers take them.
    pub rate: Option<u64>,
    /// Number of distinct keys (`user-0` .. `user-<keys-1>`); default [`DEFAULT_KEYS`].
    pub keys: u64,
    /// When set, create the topic with this many partitions (replication factor 1) if it
    /// does not exist yet. An existing topic is used as it is.
    pub partitions: Option<i32>,
    /// How keys are chosen.
    pub distribution: KeyDistribution,
    /// Seed of the key/amount sequence: the same seed gives the same records.
    pub seed: u64,
    /// Show a progress bar (records acknowledged / total, rate) on stderr.
    pub progress: bool,
    /// Extra librdkafka producer properties, applied after (and so overriding) the defaults.
    pub producer_properties: Vec<(String, String)>,
}

impl GenerateOptions {
    /// Options with the defaults: no rate limit, [`DEFAULT_KEYS`] uniform keys, no topic
    /// creation, seed [`DEFAULT_SEED`], no progress bar, no extra properties.
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>, records: u64) -> Self {
        GenerateOptions {
            brokers: brokers.into(),
            topic: topic.into(),
            records,
            rate: None,
            keys: DEFAULT_KEYS,
            partitions: None,
            distribution: KeyDistribution::Uniform,
            seed: DEFAULT_SEED,
            progress: false,
            producer_properties: Vec::new(),
        }
    }

    fn validate(&self) -> Result<(), GenerateError> {
        let invalid = |reason: String| GenerateError::InvalidOptions {
            topic: self.topic.clone(),
            reason,
        };
        if self.brokers.trim().is_empty() {
            return Err(invalid("brokers must not be empty".into()));
        }
        if self.topic.trim().is_empty() {
            return Err(invalid("topic must not be empty".into()));
        }
        if self.keys == 0 {
            return Err(invalid("keys must be at least 1".into()));
        }
        if self.rate == Some(0) {
            return Err(invalid("rate must be at least 1 record/s".into()));
        }
        if let Some(p) = self.partitions {
            if p < 1 {
                return Err(invalid(format!("partitions must be at least 1, got {p}")));
            }
        }
        self.distribution.check().map_err(invalid)
    }
}

/// Per-key bookkeeping of what was written (and acknowledged).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KeyTotal {
    /// Records with this key.
    pub count: u64,
    /// Sum of their `amount` fields (exact: amounts are small integers).
    pub sum: f64,
}

/// The outcome of a generator run.
#[derive(Debug, Clone, Default)]
pub struct GenerateReport {
    /// Records written and acknowledged. Less than the requested number only when the
    /// run was cancelled; every counted record is acknowledged and in `totals`.
    pub records: u64,
    /// Time from the first send to the last acknowledgement.
    pub elapsed: Duration,
    /// Per key (`user-<n>`): count and sum of amounts of the acknowledged records.
    /// Keys that got no record are absent.
    pub totals: BTreeMap<String, KeyTotal>,
}

impl GenerateReport {
    /// Acknowledged records per second over `elapsed`.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.records as f64 / secs
        } else {
            0.0
        }
    }
}

/// Why a generator run failed. Every message names the topic and the brokers involved.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The options do not make sense.
    #[error("invalid generator options for topic {topic}: {reason}")]
    InvalidOptions {
        /// Topic the run was for.
        topic: String,
        /// What is wrong.
        reason: String,
    },
    /// The producer or admin client could not be created (bad property, ...).
    #[error("could not create a Kafka {what} for brokers {brokers}: {source}")]
    Client {
        /// "producer" or "admin client".
        what: &'static str,
        /// The bootstrap servers.
        brokers: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// The brokers did not answer a metadata request for the topic.
    #[error("could not fetch metadata for topic {topic} from brokers {brokers}: {source}")]
    Metadata {
        /// The topic.
        topic: String,
        /// The bootstrap servers.
        brokers: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// The topic does not exist and the brokers did not create it.
    #[error("topic {topic} does not exist on brokers {brokers} (give a partition count, --partitions, to create it)")]
    TopicMissing {
        /// The topic.
        topic: String,
        /// The bootstrap servers.
        brokers: String,
    },
    /// The brokers do not support CreateTopics (librdkafka's in-process mock cluster, for one).
    #[error("brokers {brokers} do not support creating topics (CreateTopics), so topic {topic} could not be created: {reason}; create it beforehand (on the embedded mock cluster with MockCluster::create_topic) and run without a partition count")]
    CreateTopicUnsupported {
        /// The topic.
        topic: String,
        /// The bootstrap servers.
        brokers: String,
        /// What the client said.
        reason: String,
    },
    /// Topic creation failed for another reason.
    #[error("could not create topic {topic} with {partitions} partitions on brokers {brokers}: {reason}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The requested partition count.
        partitions: i32,
        /// The bootstrap servers.
        brokers: String,
        /// What the client or broker said.
        reason: String,
    },
    /// A record could not even be queued in the producer.
    #[error("could not queue a record for topic {topic} (brokers {brokers}): {source}")]
    Enqueue {
        /// The topic.
        topic: String,
        /// The bootstrap servers.
        brokers: String,
        /// The producer's error.
        #[source]
        source: KafkaError,
    },
    /// The brokers did not acknowledge a record.
    #[error("delivery to topic {topic} partition {} failed (brokers {brokers}): {source}", partition_label(*.partition))]
    Delivery {
        /// The topic.
        topic: String,
        /// The partition, when one had been chosen (-1 otherwise).
        partition: i32,
        /// The bootstrap servers.
        brokers: String,
        /// The producer's error.
        #[source]
        source: KafkaError,
    },
    /// The producer went away before reporting a delivery.
    #[error(
        "the producer for topic {topic} (brokers {brokers}) stopped before reporting a delivery"
    )]
    ProducerGone {
        /// The topic.
        topic: String,
        /// The bootstrap servers.
        brokers: String,
    },
    /// Cancelled, and the records already sent were not acknowledged in time.
    #[error("cancelled; {unacknowledged} records sent to topic {topic} (brokers {brokers}) were not acknowledged within {}s", CANCEL_DRAIN_TIMEOUT.as_secs())]
    CancelledUnacknowledged {
        /// The topic.
        topic: String,
        /// The bootstrap servers.
        brokers: String,
        /// Records still in flight.
        unacknowledged: usize,
    },
}

fn partition_label(p: i32) -> String {
    if p < 0 {
        "(not yet assigned)".to_string()
    } else {
        p.to_string()
    }
}

/// The key name of key index `n`: `user-<n>`.
pub fn key_name(n: u64) -> String {
    format!("user-{n}")
}

/// Chooses key indexes in `0..keys` according to a [`KeyDistribution`].
#[derive(Debug, Clone)]
pub struct KeySampler {
    keys: u64,
    /// Zipf only: cumulative weights, `cumulative[i]` = sum of 1/k^s for k in 1..=i+1.
    cumulative: Option<Vec<f64>>,
}

impl KeySampler {
    /// A sampler over `keys` keys (at least 1).
    ///
    /// Zipf precomputes the cumulative weights (8 bytes per key) and samples by inverse
    /// CDF with a binary search.
    pub fn new(keys: u64, distribution: &KeyDistribution) -> Result<Self, String> {
        if keys == 0 {
            return Err("keys must be at least 1".into());
        }
        distribution.check()?;
        let cumulative = match distribution {
            KeyDistribution::Uniform => None,
            KeyDistribution::Zipf { exponent } => {
                let n = usize::try_from(keys).map_err(|_| format!("too many keys: {keys}"))?;
                let mut acc = 0.0f64;
                let mut cumulative = Vec::with_capacity(n);
                for k in 1..=n {
                    acc += (k as f64).powf(-exponent);
                    cumulative.push(acc);
                }
                Some(cumulative)
            }
        };
        Ok(KeySampler { keys, cumulative })
    }

    /// Number of keys.
    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// The next key index, in `0..keys`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match &self.cumulative {
            None => rng.random_range(0..self.keys),
            Some(cumulative) => {
                let total = *cumulative.last().expect("at least one key");
                let u = rng.random::<f64>() * total;
                let i = cumulative.partition_point(|&c| c <= u);
                i.min(cumulative.len() - 1) as u64
            }
        }
    }
}

/// One generated record, before encoding: key index and amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Key index: the key is [`key_name`]`(key)`.
    pub key: u64,
    /// The amount, in 1..=100.
    pub amount: u64,
}

impl Sample {
    /// The record key, `user-<n>`.
    pub fn key_name(&self) -> String {
        key_name(self.key)
    }

    /// The record value as JSON, with the given timestamp (epoch ms).
    pub fn to_json(&self, ts_ms: i64) -> String {
        format!(
            r#"{{"user":"user-{}","amount":{},"ts":{}}}"#,
            self.key, self.amount, ts_ms
        )
    }
}

/// The deterministic sequence of (key, amount) pairs of a run: the same keys, distribution
/// and seed give the same sequence, which is what [`generate`] writes.
#[derive(Debug, Clone)]
pub struct RecordGenerator {
    sampler: KeySampler,
    rng: StdRng,
}

impl RecordGenerator {
    /// A generator over `keys` keys with the given distribution and seed.
    pub fn new(keys: u64, distribution: &KeyDistribution, seed: u64) -> Result<Self, String> {
        Ok(RecordGenerator {
            sampler: KeySampler::new(keys, distribution)?,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// The next record.
    pub fn next_sample(&mut self) -> Sample {
        let key = self.sampler.sample(&mut self.rng);
        let amount = self.rng.random_range(1..=100u64);
        Sample { key, amount }
    }

    /// The per-key totals of the first `records` records of this sequence (what a
    /// successful [`generate`] with the same options reports), without Kafka.
    pub fn expected_totals(mut self, records: u64) -> BTreeMap<String, KeyTotal> {
        let mut totals = Totals::new(self.sampler.keys());
        for _ in 0..records {
            let s = self.next_sample();
            totals.add(s.key, s.amount);
        }
        totals.into_map()
    }
}

impl Iterator for RecordGenerator {
    type Item = Sample;

    fn next(&mut self) -> Option<Sample> {
        Some(self.next_sample())
    }
}

/// Dense per-key totals, turned into the report's map at the end.
struct Totals {
    by_key: Vec<(u64, u64)>,
}

impl Totals {
    fn new(keys: u64) -> Self {
        // Key indexes are dense; very large key spaces fall back to growing on demand.
        let cap = usize::try_from(keys.min(1 << 24)).unwrap_or(1 << 24);
        Totals {
            by_key: vec![(0, 0); cap],
        }
    }

    fn add(&mut self, key: u64, amount: u64) {
        let i = key as usize;
        if i >= self.by_key.len() {
            self.by_key.resize(i + 1, (0, 0));
        }
        let t = &mut self.by_key[i];
        t.0 += 1;
        t.1 += amount;
    }

    fn into_map(self) -> BTreeMap<String, KeyTotal> {
        self.by_key
            .into_iter()
            .enumerate()
            .filter(|(_, (count, _))| *count > 0)
            .map(|(i, (count, sum))| {
                (
                    key_name(i as u64),
                    KeyTotal {
                        count,
                        sum: sum as f64,
                    },
                )
            })
            .collect()
    }
}

/// Token bucket: `rate` tokens per second, at most `capacity` (50 ms worth) saved up.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u64, now: Instant) -> Self {
        let rate = rate as f64;
        TokenBucket {
            rate,
            capacity: (rate * 0.05).max(1.0),
            tokens: 1.0,
            last: now,
        }
    }

    /// Takes one token, or tells how long until one is available.
    fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The producer configuration: the generator's defaults, then `opts.producer_properties`.
fn producer_config(opts: &GenerateOptions) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &opts.brokers)
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true");
    for (k, v) in &opts.producer_properties {
        config.set(k, v);
    }
    config
}

/// Creates `opts.topic` with `partitions` partitions (replication 1); an existing topic is fine.
async fn create_topic(opts: &GenerateOptions, partitions: i32) -> Result<(), GenerateError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &opts.brokers);
    // Security and similar settings apply to the admin client too; producer-only settings
    // are accepted by it (it is a producer-type client in librdkafka).
    for (k, v) in &opts.producer_properties {
        config.set(k, v);
    }
    let admin: Arc<AdminClient<DefaultClientContext>> =
        Arc::new(config.create().map_err(|source| GenerateError::Client {
            what: "admin client",
            brokers: opts.brokers.clone(),
            source,
        })?);
    let unsupported = |reason: String| GenerateError::CreateTopicUnsupported {
        topic: opts.topic.clone(),
        brokers: opts.brokers.clone(),
        reason,
    };
    let failed = |reason: String| GenerateError::CreateTopic {
        topic: opts.topic.clone(),
        partitions,
        brokers: opts.brokers.clone(),
        reason,
    };

    // librdkafka's mock cluster answers neither CreateTopics nor "unsupported" (the request
    // just times out), so recognise it by its cluster id and say so at once.
    let cluster_id = {
        let admin = Arc::clone(&admin);
        tokio::task::spawn_blocking(move || admin.inner().fetch_cluster_id(METADATA_TIMEOUT))
            .await
            .expect("cluster id task panicked")
    };
    if let Some(id) = cluster_id
        .as_deref()
        .filter(|id| id.starts_with("mockCluster"))
    {
        return Err(unsupported(format!(
            "cluster {id} is librdkafka's in-process mock cluster, which does not implement CreateTopics"
        )));
    }

    let topic = NewTopic::new(&opts.topic, partitions, TopicReplication::Fixed(1));
    let admin_opts = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(30)))
        .operation_timeout(Some(Duration::from_secs(30)));
    let timed_out_hint = |e: String| match cluster_id {
        None => format!("{e} (no broker answered: are the brokers reachable?)"),
        Some(_) => {
            format!("{e} (the brokers may not support CreateTopics: create the topic beforehand)")
        }
    };
    let result = admin.create_topics([&topic], &admin_opts).await;
    // The admin client joins its thread when dropped: do that off the executor.
    let _ = tokio::task::spawn_blocking(move || drop(admin)).await;
    match result {
        Ok(results) => {
            for result in results {
                match result {
                    Ok(_) => tracing::info!(topic = %opts.topic, partitions, "created topic"),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                        tracing::info!(topic = %opts.topic, "topic already exists")
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

/// Waits until the topic shows up in the metadata with partitions (auto-creating it where
/// the brokers allow that). Fails when the brokers cannot be reached or the topic stays unknown.
async fn await_topic(
    producer: &FutureProducer,
    opts: &GenerateOptions,
) -> Result<usize, GenerateError> {
    let deadline = Instant::now() + METADATA_TIMEOUT;
    loop {
        let p = producer.clone();
        let topic = opts.topic.clone();
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let answer = tokio::task::spawn_blocking(move || {
            p.client()
                .fetch_metadata(Some(&topic), remaining)
                .map(|md| {
                    md.topics()
                        .iter()
                        .find(|t| t.name() == topic)
                        .map(|t| (t.error().map(RDKafkaErrorCode::from), t.partitions().len()))
                })
        })
        .await
        .expect("metadata task panicked");
        let retry_reason = match answer {
            Err(source) => {
                return Err(GenerateError::Metadata {
                    topic: opts.topic.clone(),
                    brokers: opts.brokers.clone(),
                    source,
                })
            }
            Ok(Some((None, n))) if n > 0 => return Ok(n),
            Ok(Some((Some(RDKafkaErrorCode::UnknownTopicOrPartition), _))) | Ok(None) => None,
            Ok(Some((err, _))) => Some(err),
        };
        if Instant::now() >= deadline {
            return match retry_reason {
                // A transient error (leader not available, ...): let the producer retry.
                Some(_) => Ok(0),
                None => Err(GenerateError::TopicMissing {
                    topic: opts.topic.clone(),
                    brokers: opts.brokers.clone(),
                }),
            };
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn progress_bar(opts: &GenerateOptions) -> ProgressBar {
    if !opts.progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(opts.records), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{msg} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} acked ({per_sec}, eta {eta})",
    )
    .expect("valid progress template")
    .progress_chars("=> ");
    pb.set_style(style);
    pb.set_message(opts.topic.clone());
    pb
}

/// Writes `opts.records` synthetic records to `opts.topic` and waits until all are
/// acknowledged.
///
/// With `opts.partitions` set, the topic is created first if missing (brokers that do not
/// support CreateTopics, such as librdkafka's mock cluster, give
/// [`GenerateError::CreateTopicUnsupported`]). A failed delivery fails the run.
///
/// Cancelling `cancel` stops sending new records; the records already sent are waited for
/// and the report then covers exactly those (`report.records < opts.records`).
pub async fn generate(
    opts: GenerateOptions,
    cancel: CancellationToken,
) -> Result<GenerateReport, GenerateError> {
    opts.validate()?;
    let mut source =
        RecordGenerator::new(opts.keys, &opts.distribution, opts.seed).map_err(|reason| {
            GenerateError::InvalidOptions {
                topic: opts.topic.clone(),
                reason,
            }
        })?;

    if let Some(partitions) = opts.partitions {
        create_topic(&opts, partitions).await?;
    }

    let producer: FutureProducer =
        producer_config(&opts)
            .create()
            .map_err(|source| GenerateError::Client {
                what: "producer",
                brokers: opts.brokers.clone(),
                source,
            })?;
    let partitions = await_topic(&producer, &opts).await?;
    tracing::debug!(
        topic = %opts.topic,
        partitions,
        records = opts.records,
        keys = opts.keys,
        distribution = %opts.distribution,
        "generating"
    );

    let pb = progress_bar(&opts);
    let result = produce_all(&producer, &opts, &mut source, &cancel, &pb).await;
    match &result {
        Ok(report) if report.records == opts.records => pb.finish(),
        _ => pb.abandon(),
    }
    // Dropping the producer joins its polling thread and purges anything left (only on
    // failure): do it off the async executor.
    let _ = tokio::task::spawn_blocking(move || drop(producer)).await;
    result
}

/// Outcome of one delivery: key index, amount and what the producer said.
type Ack = (
    u64,
    u64,
    Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
);

async fn produce_all(
    producer: &FutureProducer,
    opts: &GenerateOptions,
    source: &mut RecordGenerator,
    cancel: &CancellationToken,
    pb: &ProgressBar,
) -> Result<GenerateReport, GenerateError> {
    let start = Instant::now();
    let mut totals = Totals::new(opts.keys);
    let mut acked: u64 = 0;
    let mut bucket = opts.rate.map(|r| TokenBucket::new(r, start));
    let mut inflight = FuturesUnordered::new();
    let mut sent: u64 = 0;
    let mut cancelled = false;

    let on_ack = |ack: Ack, totals: &mut Totals, acked: &mut u64| -> Result<(), GenerateError> {
        let (key, amount, result) = ack;
        match result {
            Ok(Ok(_delivery)) => {
                totals.add(key, amount);
                *acked += 1;
                pb.inc(1);
                Ok(())
            }
            Ok(Err((source, message))) => {
                use rdkafka::message::Message;
                Err(GenerateError::Delivery {
                    topic: opts.topic.clone(),
                    partition: message.partition(),
                    brokers: opts.brokers.clone(),
                    source,
                })
            }
            Err(_) => Err(GenerateError::ProducerGone {
                topic: opts.topic.clone(),
                brokers: opts.brokers.clone(),
            }),
        }
    };

    'produce: while sent < opts.records {
        // Collect whatever acknowledgements are ready, without waiting.
        while let Some(Some(ack)) = inflight.next().now_or_never() {
            on_ack(ack, &mut totals, &mut acked)?;
        }
        if cancel.is_cancelled() {
            cancelled = true;
            break;
        }
        if let Some(bucket) = bucket.as_mut() {
            if let Err(wait) = bucket.try_take(Instant::now()) {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(wait) => {}
                    Some(ack) = inflight.next() => on_ack(ack, &mut totals, &mut acked)?,
                }
                continue;
            }
        }

        let sample = source.next_sample();
        let key = sample.key_name();
        let ts = now_ms();
        let payload = sample.to_json(ts);
        loop {
            let record = FutureRecord::to(&opts.topic)
                .key(&key)
                .payload(&payload)
                .timestamp(ts);
            match producer.send_result(record) {
                Ok(delivery) => {
                    let (k, a) = (sample.key, sample.amount);
                    inflight.push(delivery.map(move |r| (k, a, r)));
                    sent += 1;
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // The producer's queue is full: wait for an acknowledgement (or a
                    // moment, if none is outstanding) and try the same record again.
                    tokio::select! {
                        _ = cancel.cancelled() => {
                            cancelled = true;
                            break 'produce;
                        }
                        Some(ack) = inflight.next(), if !inflight.is_empty() => {
                            on_ack(ack, &mut totals, &mut acked)?
                        }
                        _ = tokio::time::sleep(Duration::from_millis(10)), if inflight.is_empty() => {}
                    }
                }
                Err((source, _)) => {
                    return Err(GenerateError::Enqueue {
                        topic: opts.topic.clone(),
                        brokers: opts.brokers.clone(),
                        source,
                    })
                }
            }
        }
        if sent & 1023 == 0 {
            // Long unpaced runs never wait otherwise: let other tasks run.
            tokio::task::yield_now().await;
        }
    }

    // Every record sent must be acknowledged before the run counts as done.
    let drain = async {
        while let Some(ack) = inflight.next().await {
            on_ack(ack, &mut totals, &mut acked)?;
        }
        Ok::<(), GenerateError>(())
    };
    if cancelled {
        tracing::info!(topic = %opts.topic, sent, "generator cancelled; waiting for in-flight records");
        match tokio::time::timeout(CANCEL_DRAIN_TIMEOUT, drain).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(GenerateError::CancelledUnacknowledged {
                    topic: opts.topic.clone(),
                    brokers: opts.brokers.clone(),
                    unacknowledged: (sent - acked) as usize,
                })
            }
        }
    } else {
        drain.await?;
    }

    Ok(GenerateReport {
        records: acked,
        elapsed: start.elapsed(),
        totals: totals.into_map(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(keys: u64, dist: &KeyDistribution, seed: u64, n: usize) -> Vec<u64> {
        let mut g = RecordGenerator::new(keys, dist, seed).unwrap();
        let mut c = vec![0u64; keys as usize];
        for _ in 0..n {
            let s = g.next_sample();
            assert!(s.key < keys);
            assert!((1..=100).contains(&s.amount));
            c[s.key as usize] += 1;
        }
        c
    }

    #[test]
    fn uniform_covers_every_key_evenly() {
        let c = counts(100, &KeyDistribution::Uniform, 7, 100_000);
        assert!(c.iter().all(|&n| n > 0), "every key is drawn");
        let (min, max) = (*c.iter().min().unwrap(), *c.iter().max().unwrap());
        // Expected 1000 each; binomial sd ~31.
        assert!(min > 850 && max < 1150, "min {min} max {max}");
    }

    #[test]
    fn zipf_is_skewed_towards_low_ranks() {
        let c = counts(1000, &KeyDistribution::Zipf { exponent: 1.0 }, 7, 200_000);
        // P(rank 1) = 1/H(1000) ~ 0.1336; P(rank 2) ~ 0.0668.
        let p0 = c[0] as f64 / 200_000.0;
        let p1 = c[1] as f64 / 200_000.0;
        assert!((p0 - 0.1336).abs() < 0.005, "p0 = {p0}");
        assert!((p1 - 0.0668).abs() < 0.004, "p1 = {p1}");
        assert!(c[0] > c[9] && c[9] > c[99] && c[99] > c[999]);
        // The top 10 keys take ~39 % of the records.
        let top10: u64 = c[..10].iter().sum();
        let share = top10 as f64 / 200_000.0;
        assert!((share - 0.391).abs() < 0.01, "top-10 share {share}");
    }

    #[test]
    fn zipf_exponent_zero_is_uniform_and_one_key_works() {
        let c = counts(10, &KeyDistribution::Zipf { exponent: 0.0 }, 1, 50_000);
        assert!(c.iter().all(|&n| (4500..5500).contains(&n)), "{c:?}");
        let c = counts(1, &KeyDistribution::Zipf { exponent: 2.0 }, 1, 100);
        assert_eq!(c, vec![100]);
        let c = counts(1, &KeyDistribution::Uniform, 1, 100);
        assert_eq!(c, vec![100]);
    }

    #[test]
    fn same_seed_same_records_other_seed_other_records() {
        let z = KeyDistribution::Zipf { exponent: 1.2 };
        let a: Vec<Sample> = RecordGenerator::new(500, &z, 99)
            .unwrap()
            .take(1000)
            .collect();
        let b: Vec<Sample> = RecordGenerator::new(500, &z, 99)
            .unwrap()
            .take(1000)
            .collect();
        let c: Vec<Sample> = RecordGenerator::new(500, &z, 100)
            .unwrap()
            .take(1000)
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn expected_totals_add_up() {
        let g = RecordGenerator::new(50, &KeyDistribution::Uniform, 3).unwrap();
        let samples: Vec<Sample> = g.clone().take(10_000).collect();
        let totals = g.expected_totals(10_000);
        assert_eq!(totals.values().map(|t| t.count).sum::<u64>(), 10_000);
        let sum: f64 = totals.values().map(|t| t.sum).sum();
        assert_eq!(sum, samples.iter().map(|s| s.amount).sum::<u64>() as f64);
        let k7: Vec<&Sample> = samples.iter().filter(|s| s.key == 7).collect();
        assert_eq!(
            totals["user-7"],
            KeyTotal {
                count: k7.len() as u64,
                sum: k7.iter().map(|s| s.amount).sum::<u64>() as f64
            }
        );
        // Keys without records are absent.
        let few = RecordGenerator::new(1000, &KeyDistribution::Uniform, 3)
            .unwrap()
            .expected_totals(5);
        assert!(few.len() <= 5);
        assert!(few.values().all(|t| t.count >= 1));
    }

    #[test]
    fn totals_grow_past_their_initial_capacity() {
        let mut t = Totals::new(2);
        t.add(0, 5);
        t.add(10, 7);
        t.add(10, 1);
        let m = t.into_map();
        assert_eq!(m.len(), 2);
        assert_eq!(m["user-10"], KeyTotal { count: 2, sum: 8.0 });
    }

    #[test]
    fn record_encoding() {
        let s = Sample {
            key: 12,
            amount: 34,
        };
        assert_eq!(s.key_name(), "user-12");
        let v: serde_json::Value = serde_json::from_str(&s.to_json(1_700_000_000_000)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"user": "user-12", "amount": 34, "ts": 1_700_000_000_000i64})
        );
    }

    #[test]
    fn distribution_parsing() {
        assert_eq!(
            "uniform".parse::<KeyDistribution>().unwrap(),
            KeyDistribution::Uniform
        );
        assert_eq!(
            "zipf".parse::<KeyDistribution>().unwrap(),
            KeyDistribution::Zipf { exponent: 1.0 }
        );
        assert_eq!(
            "zipf:1.5".parse::<KeyDistribution>().unwrap(),
            KeyDistribution::Zipf { exponent: 1.5 }
        );
        assert!("zipf:-1".parse::<KeyDistribution>().is_err());
        assert!("zipf:x".parse::<KeyDistribution>().is_err());
        assert!("normal".parse::<KeyDistribution>().is_err());
        let d = KeyDistribution::Zipf { exponent: 1.5 };
        assert_eq!(d.to_string().parse::<KeyDistribution>().unwrap(), d);
    }

    #[test]
    fn token_bucket_paces() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        assert!(b.try_take(t0).is_ok());
        let wait = b.try_take(t0).unwrap_err();
        assert!(
            wait <= Duration::from_millis(1) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // After 10 ms, 10 more tokens.
        let t1 = t0 + Duration::from_millis(10);
        let taken = (0..100).take_while(|_| b.try_take(t1).is_ok()).count();
        assert_eq!(taken, 10);
        // Saving up is capped at 50 ms worth.
        let t2 = t1 + Duration::from_secs(10);
        let taken = (0..1000).take_while(|_| b.try_take(t2).is_ok()).count();
        assert_eq!(taken, 50);
    }

    #[test]
    fn invalid_options_are_rejected() {
        let base = GenerateOptions::new("127.0.0.1:1", "t", 10);
        let mut o = base.clone();
        o.keys = 0;
        assert!(matches!(
            o.validate(),
            Err(GenerateError::InvalidOptions { .. })
        ));
        let mut o = base.clone();
        o.rate = Some(0);
        assert!(o.validate().is_err());
        let mut o = base.clone();
        o.partitions = Some(0);
        assert!(o.validate().is_err());
        let mut o = base.clone();
        o.distribution = KeyDistribution::Zipf { exponent: f64::NAN };
        assert!(o.validate().is_err());
        assert!(base.validate().is_ok());
        let msg = GenerateError::Delivery {
            topic: "clicks".into(),
            partition: 3,
            brokers: "b:9092".into(),
            source: KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
        }
        .to_string();
        assert!(
            msg.contains("clicks") && msg.contains("partition 3") && msg.contains("b:9092"),
            "{msg}"
        );
    }

    #[test]
    fn generate_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let f = generate(
            GenerateOptions::new("x:1", "t", 1),
            CancellationToken::new(),
        );
        assert_send(&f);
    }

    mod mock {
        use super::*;
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::mocking::MockCluster;
        use rdkafka::{Message, Offset, TopicPartitionList};

        /// Reads `expected` records from `partitions` partitions of `topic`.
        fn consume_totals(
            brokers: &str,
            topic: &str,
            partitions: i32,
            expected: u64,
        ) -> (u64, BTreeMap<String, KeyTotal>) {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("group.id", "generate-test")
                .set("enable.auto.commit", "false")
                .create()
                .unwrap();
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition_offset(topic, p, Offset::Beginning)
                    .unwrap();
            }
            consumer.assign(&tpl).unwrap();
            let mut totals: BTreeMap<String, KeyTotal> = BTreeMap::new();
            let mut n = 0u64;
            let deadline = Instant::now() + Duration::from_secs(60);
            while n < expected && Instant::now() < deadline {
                let Some(m) = consumer.poll(Duration::from_millis(200)) else {
                    continue;
                };
                let m = m.unwrap();
                let key = std::str::from_utf8(m.key().unwrap()).unwrap().to_string();
                let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                assert_eq!(v["user"].as_str().unwrap(), key);
                assert!(v["ts"].as_i64().unwrap() > 1_600_000_000_000);
                let amount = v["amount"].as_u64().unwrap();
                assert!((1..=100).contains(&amount));
                let t = totals.entry(key).or_default();
                t.count += 1;
                t.sum += amount as f64;
                n += 1;
            }
            // Nothing beyond the expected records.
            if n == expected {
                let extra = consumer.poll(Duration::from_millis(500));
                assert!(extra.is_none(), "more records than generated");
            }
            (n, totals)
        }

        #[tokio::test]
        async fn generates_to_mock_cluster_and_reads_back() {
            let mock = MockCluster::new(1).unwrap();
            mock.create_topic("gen-clicks", 3, 1).unwrap();
            let brokers = mock.bootstrap_servers();

            let mut opts = GenerateOptions::new(brokers.clone(), "gen-clicks", 5000);
            opts.keys = 200;
            opts.distribution = KeyDistribution::Zipf { exponent: 1.1 };
            opts.seed = 5;
            let report = generate(opts.clone(), CancellationToken::new())
                .await
                .unwrap();
            assert_eq!(report.records, 5000);
            assert_eq!(report.totals.values().map(|t| t.count).sum::<u64>(), 5000);
            assert_eq!(
                report.totals,
                RecordGenerator::new(200, &opts.distribution, 5)
                    .unwrap()
                    .expected_totals(5000)
            );

            let (n, totals) = tokio::task::spawn_blocking(move || {
                consume_totals(&brokers, "gen-clicks", 3, 5000)
            })
            .await
            .unwrap();
            assert_eq!(n, 5000);
            assert_eq!(totals, report.totals);
        }

        #[tokio::test]
        async fn rate_limit_paces_the_run() {
            let mock = MockCluster::new(1).unwrap();
            mock.create_topic("gen-paced", 1, 1).unwrap();
            let mut opts = GenerateOptions::new(mock.bootstrap_servers(), "gen-paced", 300);
            opts.rate = Some(1000);
            let t0 = Instant::now();
            let report = generate(opts, CancellationToken::new()).await.unwrap();
            assert_eq!(report.records, 300);
            // 300 records at 1000/s with a 50-record burst: at least ~0.25 s.
            assert!(
                t0.elapsed() >= Duration::from_millis(240),
                "{:?}",
                t0.elapsed()
            );
        }

        #[tokio::test]
        async fn cancel_stops_early_with_consistent_report() {
            let mock = MockCluster::new(1).unwrap();
            mock.create_topic("gen-cancel", 2, 1).unwrap();
            let brokers = mock.bootstrap_servers();
            let mut opts = GenerateOptions::new(brokers.clone(), "gen-cancel", 1_000_000);
            opts.rate = Some(2000);
            let cancel = CancellationToken::new();
            let c2 = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                c2.cancel();
            });
            let report = generate(opts, cancel).await.unwrap();
            assert!(
                report.records > 0 && report.records < 1_000_000,
                "{}",
                report.records
            );
            let expected = report.records;
            let (n, totals) = tokio::task::spawn_blocking(move || {
                consume_totals(&brokers, "gen-cancel", 2, expected)
            })
            .await
            .unwrap();
            assert_eq!(n, report.records);
            assert_eq!(totals, report.totals);
        }

        #[tokio::test]
        async fn create_topic_on_mock_cluster_is_reported_unsupported() {
            let mock = MockCluster::new(1).unwrap();
            let mut opts = GenerateOptions::new(mock.bootstrap_servers(), "gen-created", 10);
            opts.partitions = Some(4);
            let err = generate(opts, CancellationToken::new()).await.unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, GenerateError::CreateTopicUnsupported { .. }),
                "unexpected error: {msg}"
            );
            assert!(
                msg.contains("gen-created") && msg.contains("CreateTopics"),
                "{msg}"
            );
        }

        #[tokio::test]
        async fn unreachable_brokers_name_the_brokers() {
            let mut opts = GenerateOptions::new("127.0.0.1:1", "nowhere", 10);
            opts.producer_properties =
                vec![("socket.connection.setup.timeout.ms".into(), "1000".into())];
            let err = generate(opts, CancellationToken::new()).await.unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("127.0.0.1:1") && msg.contains("nowhere"),
                "{msg}"
            );
        }
    }
}
