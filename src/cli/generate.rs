//! `tributary generate`: writes the synthetic click records of [`tributary_generator`] to a
//! Kafka topic, or, with a template ([`TemplateOptions`]), records of any shape in JSON or Avro.
//!
//! The producer keeps many records in flight, paces them with a token bucket when a rate
//! is given, and reports success only once every record has been acknowledged by the
//! brokers. Topics can be created up front with a given partition count.

mod records;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;
use tributary::kafka::tools::{
    create_topic, AwaitTopicError, CreateTopicError, DeliveryError, SendError, TopicProducer,
};
use tributary::kafka::ClientError;
use tributary_generator::{
    KeyDistribution, KeyTotal, Template, Totals, DEFAULT_KEYS, DEFAULT_SEED,
};

use records::Records;

/// How long to wait for metadata (and for a freshly created topic to appear).
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// After cancellation, how long in-flight records may take to be acknowledged.
const CANCEL_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Records of a template's shape instead of the click records; `keys` and `distribution`
    /// are then the template's business (per field).
    pub template: Option<TemplateOptions>,
}

/// How record values are written (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValueFormat {
    /// JSON text, fields in template order.
    #[default]
    Json,
    /// Avro binary with the template's schema: plain, or in the Confluent wire format when a
    /// schema registry is given.
    Avro,
}

/// A template run (`--template FILE`): what the records look like and how they are written.
#[derive(Debug, Clone)]
pub struct TemplateOptions {
    /// The parsed template.
    pub template: Template,
    /// Where it came from (the file), for messages.
    pub origin: String,
    /// How values are written.
    pub format: ValueFormat,
    /// `--schema-registry URL` (Avro only): register the template's schema under
    /// `<topic>-value` and write the Confluent wire format (magic byte, schema id, datum).
    pub schema_registry: Option<String>,
    /// `--schema-out FILE` (Avro only): also write the Avro schema the records are written
    /// with to this file, for a pipeline's `source.schema`.
    pub schema_out: Option<PathBuf>,
}

impl TemplateOptions {
    /// Reads and checks the template in `path`; JSON values, no registry.
    pub fn load(path: &Path) -> Result<Self, GenerateError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| GenerateError::Template {
            origin: origin.clone(),
            reason: format!("cannot be read: {e}"),
        })?;
        let template = Template::parse(&text).map_err(|e| GenerateError::Template {
            origin: origin.clone(),
            reason: e.to_string(),
        })?;
        Ok(TemplateOptions {
            template,
            origin,
            format: ValueFormat::Json,
            schema_registry: None,
            schema_out: None,
        })
    }
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
            template: None,
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
        if let Some(t) = &self.template {
            if t.schema_registry.is_some() && t.format != ValueFormat::Avro {
                return Err(invalid(
                    "a schema registry is only used with the avro format".into(),
                ));
            }
            if t.schema_out.is_some() && t.format != ValueFormat::Avro {
                return Err(invalid(
                    "a schema file is only written with the avro format".into(),
                ));
            }
        }
        self.distribution.check().map_err(invalid)
    }
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
    /// Keys that got no record are absent; empty for a template run (its records have no
    /// amounts of their own).
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
    /// The template cannot be read, or is not valid (the reason names the JSON path).
    #[error("template {origin}: {reason}")]
    Template {
        /// The template file.
        origin: String,
        /// What is wrong, starting with the JSON path (`fields.amount.min: must be below max`).
        reason: String,
    },
    /// Records cannot be written in Avro: no usable schema, the records do not fit it, or the
    /// schema registry failed.
    #[error("writing Avro records of template {origin} to topic {topic}: {reason}")]
    Avro {
        /// The template file.
        origin: String,
        /// The topic.
        topic: String,
        /// What went wrong (the field path, the registry and subject...).
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
        source: ClientError,
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
        source: ClientError,
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
    #[error("brokers {brokers} do not support creating topics (CreateTopics), so topic {topic} could not be created: {reason}; create it beforehand and run without a partition count (on the embedded cluster, `bootstrap_servers = \"embedded\"`, the worker creates its source topics when it starts)")]
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
        source: ClientError,
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
        source: ClientError,
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

/// The producer's properties: the generator's defaults, then `opts.producer_properties`.
fn producer_properties(opts: &GenerateOptions) -> Vec<(String, String)> {
    let defaults = [
        ("linger.ms", "5"),
        ("compression.type", "lz4"),
        ("partitioner", "murmur2_random"),
        ("enable.idempotence", "true"),
    ];
    defaults
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(opts.producer_properties.iter().cloned())
        .collect()
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
    let mut source = Records::new(&opts).await?;

    if let Some(partitions) = opts.partitions {
        create_topic(
            &opts.brokers,
            &opts.producer_properties,
            &opts.topic,
            partitions,
            METADATA_TIMEOUT,
        )
        .await
        .map_err(|e| match e {
            CreateTopicError::Client(source) => GenerateError::Client {
                what: "admin client",
                brokers: opts.brokers.clone(),
                source,
            },
            CreateTopicError::Unsupported(reason) => GenerateError::CreateTopicUnsupported {
                topic: opts.topic.clone(),
                brokers: opts.brokers.clone(),
                reason,
            },
            CreateTopicError::Failed(reason) => GenerateError::CreateTopic {
                topic: opts.topic.clone(),
                partitions,
                brokers: opts.brokers.clone(),
                reason,
            },
        })?;
    }

    let producer =
        TopicProducer::new(&opts.brokers, &producer_properties(&opts)).map_err(|source| {
            GenerateError::Client {
                what: "producer",
                brokers: opts.brokers.clone(),
                source,
            }
        })?;
    let partitions = producer
        .await_topic(&opts.topic, METADATA_TIMEOUT)
        .await
        .map_err(|e| match e {
            AwaitTopicError::Metadata(source) => GenerateError::Metadata {
                topic: opts.topic.clone(),
                brokers: opts.brokers.clone(),
                source,
            },
            AwaitTopicError::Missing => GenerateError::TopicMissing {
                topic: opts.topic.clone(),
                brokers: opts.brokers.clone(),
            },
        })?;
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
    producer.close().await;
    result
}

/// Outcome of one delivery: the click record's key index and amount, and what the producer
/// said.
type Ack = (Option<(u64, u64)>, Result<(), DeliveryError>);

async fn produce_all(
    producer: &TopicProducer,
    opts: &GenerateOptions,
    source: &mut Records,
    cancel: &CancellationToken,
    pb: &ProgressBar,
) -> Result<GenerateReport, GenerateError> {
    let start = Instant::now();
    let mut totals = Totals::new(if source.tallies() { opts.keys } else { 0 });
    let mut acked: u64 = 0;
    let mut bucket = opts.rate.map(|r| TokenBucket::new(r, start));
    let mut inflight = FuturesUnordered::new();
    let mut sent: u64 = 0;
    let mut cancelled = false;

    let on_ack = |ack: Ack, totals: &mut Totals, acked: &mut u64| -> Result<(), GenerateError> {
        let (tally, result) = ack;
        match result {
            Ok(()) => {
                if let Some((key, amount)) = tally {
                    totals.add(key, amount);
                }
                *acked += 1;
                pb.inc(1);
                Ok(())
            }
            Err(DeliveryError::Failed { partition, source }) => Err(GenerateError::Delivery {
                topic: opts.topic.clone(),
                partition,
                brokers: opts.brokers.clone(),
                source,
            }),
            Err(DeliveryError::ProducerGone) => Err(GenerateError::ProducerGone {
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

        let record = source.next(now_ms(), &opts.topic)?;
        loop {
            match producer.send(
                &opts.topic,
                record.key.as_deref().map(str::as_bytes),
                &record.payload,
                record.timestamp,
            ) {
                Ok(delivery) => {
                    let tally = record.tally;
                    inflight.push(delivery.map(move |r| (tally, r)));
                    sent += 1;
                    break;
                }
                Err(SendError::QueueFull) => {
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
                Err(SendError::Failed(source)) => {
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
    use tributary_generator::RecordGenerator;

    use super::*;

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
        let msg = GenerateError::CreateTopic {
            topic: "clicks".into(),
            partitions: 3,
            brokers: "b:9092".into(),
            reason: "timed out".into(),
        }
        .to_string();
        assert!(
            msg.contains("clicks") && msg.contains("3 partitions") && msg.contains("b:9092"),
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
        use tributary::kafka::embedded::EmbeddedCluster;
        use tributary::kafka::reader::for_each_record;

        /// Every record of `topic`: how many, and the totals per key. Checks each record's
        /// shape on the way.
        fn consume_totals(brokers: &str, topic: &str) -> (u64, BTreeMap<String, KeyTotal>) {
            let mut totals: BTreeMap<String, KeyTotal> = BTreeMap::new();
            let mut n = 0u64;
            for_each_record(brokers, topic, Duration::from_millis(500), |key, value| {
                let key = std::str::from_utf8(key.unwrap()).unwrap().to_string();
                let v: serde_json::Value = serde_json::from_slice(value.unwrap()).unwrap();
                assert_eq!(v["user"].as_str().unwrap(), key);
                assert!(v["ts"].as_i64().unwrap() > 1_600_000_000_000);
                let amount = v["amount"].as_u64().unwrap();
                assert!((1..=100).contains(&amount));
                let t = totals.entry(key).or_default();
                t.count += 1;
                t.sum += amount as f64;
                n += 1;
            })
            .unwrap();
            (n, totals)
        }

        #[tokio::test]
        async fn generates_to_mock_cluster_and_reads_back() {
            let mock = EmbeddedCluster::start(1).unwrap();
            mock.create_topic("gen-clicks", 3).unwrap();
            let brokers = mock.bootstrap().to_string();

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

            let (n, totals) =
                tokio::task::spawn_blocking(move || consume_totals(&brokers, "gen-clicks"))
                    .await
                    .unwrap();
            assert_eq!(n, 5000);
            assert_eq!(totals, report.totals);
        }

        #[tokio::test]
        async fn rate_limit_paces_the_run() {
            let mock = EmbeddedCluster::start(1).unwrap();
            mock.create_topic("gen-paced", 1).unwrap();
            let mut opts = GenerateOptions::new(mock.bootstrap(), "gen-paced", 300);
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
            let mock = EmbeddedCluster::start(1).unwrap();
            mock.create_topic("gen-cancel", 2).unwrap();
            let brokers = mock.bootstrap().to_string();
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
            let (n, totals) =
                tokio::task::spawn_blocking(move || consume_totals(&brokers, "gen-cancel"))
                    .await
                    .unwrap();
            assert_eq!(n, report.records);
            assert_eq!(totals, report.totals);
        }

        #[tokio::test]
        async fn create_topic_on_mock_cluster_is_reported_unsupported() {
            let mock = EmbeddedCluster::start(1).unwrap();
            let mut opts = GenerateOptions::new(mock.bootstrap(), "gen-created", 10);
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

        /// The embedded cluster's worker creates its source topics; `--partitions` on one of
        /// them uses it as it is, as on any cluster, instead of failing on CreateTopics.
        #[tokio::test]
        async fn a_partition_count_for_an_existing_topic_on_mock_cluster_is_fine() {
            let mock = EmbeddedCluster::start(1).unwrap();
            mock.create_topic("gen-existing", 3).unwrap();
            let brokers = mock.bootstrap().to_string();
            let mut opts = GenerateOptions::new(brokers.clone(), "gen-existing", 30);
            opts.partitions = Some(6);
            let report = generate(opts, CancellationToken::new()).await.unwrap();
            assert_eq!(report.records, 30);
            let (count, _) =
                tokio::task::spawn_blocking(move || consume_totals(&brokers, "gen-existing"))
                    .await
                    .unwrap();
            assert_eq!(count, 30);
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

    /// `--template` (in `generate/tests/template.rs`).
    mod template;
}
