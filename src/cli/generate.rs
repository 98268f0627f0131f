//! `tributary generate`: writes the synthetic click records of [`tributary_generator`] to a
//! Kafka topic, or, with a template ([`TemplateOptions`]), records of any shape in JSON or Avro.
//!
//! The producer keeps many records in flight, paces them with a token bucket when a rate
//! is given, and reports success only once every record has been acknowledged by the
//! brokers. Topics can be created up front with a given partition count.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;
use tributary::avro::{value_subject, AvroCodec, AvroError};
use tributary::kafka::tools::{
    create_topic, AwaitTopicError, CreateTopicError, DeliveryError, SendError, TopicProducer,
};
use tributary::kafka::ClientError;
use tributary_generator::{
    KeyDistribution, KeyTotal, RecordGenerator, Template, TemplateError, TemplateGenerator, Totals,
    DEFAULT_KEYS, DEFAULT_SEED,
};

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

/// Where the records come from, and how their values are written.
enum Records {
    /// The click records `{"user","amount","ts"}`, in JSON.
    Clicks(RecordGenerator),
    /// A template's records.
    Template {
        generator: TemplateGenerator,
        encoder: Encoder,
        origin: String,
    },
}

/// How a template's values become bytes.
enum Encoder {
    Json,
    /// Plain or registry Avro; the registry (if any) has been asked already, so encoding makes
    /// no request.
    Avro(Arc<AvroCodec>),
}

/// One record, ready to send.
struct Outgoing {
    key: Option<String>,
    payload: Vec<u8>,
    timestamp: i64,
    /// Click records: key index and amount, counted in the report once acknowledged.
    tally: Option<(u64, u64)>,
}

impl Records {
    /// The record source of `opts`. For Avro, the template's schema is compiled and its first
    /// record encoded (from a copy of the sequence) before anything is sent: a schema the
    /// records do not fit, or a registry that does not take it, fails the run up front.
    async fn new(opts: &GenerateOptions) -> Result<Self, GenerateError> {
        let Some(t) = &opts.template else {
            return RecordGenerator::new(opts.keys, &opts.distribution, opts.seed)
                .map(Records::Clicks)
                .map_err(|reason| GenerateError::InvalidOptions {
                    topic: opts.topic.clone(),
                    reason,
                });
        };
        let generator = t.template.generator(opts.seed);
        let encoder = match t.format {
            ValueFormat::Json => Encoder::Json,
            ValueFormat::Avro => {
                let (codec, schema) = avro_codec(t, &opts.topic)?;
                let codec = Arc::new(codec);
                let probe = generator
                    .clone()
                    .next_record(now_ms())
                    .value
                    .to_json_value();
                let c = Arc::clone(&codec);
                // Registering the schema is a blocking HTTP call.
                tokio::task::spawn_blocking(move || c.encode(&probe))
                    .await
                    .expect("the encoding task does not panic")
                    .map_err(|e| avro_error(t, &opts.topic, &e))?;
                if let Some(path) = &t.schema_out {
                    let text = serde_json::to_string_pretty(&schema).expect("a JSON value");
                    std::fs::write(path, text + "\n").map_err(|e| GenerateError::Avro {
                        origin: t.origin.clone(),
                        topic: opts.topic.clone(),
                        reason: format!("writing the schema to {}: {e}", path.display()),
                    })?;
                }
                Encoder::Avro(codec)
            }
        };
        Ok(Records::Template {
            generator,
            encoder,
            origin: t.origin.clone(),
        })
    }

    /// The next record, stamped `now` (epoch ms) unless its template names a timestamp field.
    fn next(&mut self, now: i64, topic: &str) -> Result<Outgoing, GenerateError> {
        match self {
            Records::Clicks(g) => {
                let sample = g.next_sample();
                Ok(Outgoing {
                    key: Some(sample.key_name()),
                    payload: sample.to_json(now).into_bytes(),
                    timestamp: now,
                    tally: Some((sample.key, sample.amount)),
                })
            }
            Records::Template {
                generator,
                encoder,
                origin,
            } => {
                let record = generator.next_record(now);
                let payload =
                    match encoder {
                        Encoder::Json => record.value.to_json_string().into_bytes(),
                        Encoder::Avro(codec) => codec
                            .encode(&record.value.to_json_value())
                            .map_err(|e| GenerateError::Avro {
                                origin: origin.clone(),
                                topic: topic.to_string(),
                                reason: avro_reason(&e),
                            })?,
                    };
                Ok(Outgoing {
                    key: record.key,
                    payload,
                    timestamp: record.timestamp.unwrap_or(now),
                    tally: None,
                })
            }
        }
    }
}

/// The codec of a template's Avro records, and its schema (given or derived): plain or
/// through the registry under `<topic>-value`.
fn avro_codec(
    t: &TemplateOptions,
    topic: &str,
) -> Result<(AvroCodec, serde_json::Value), GenerateError> {
    let schema = t
        .template
        .avro_schema()
        .map_err(|e: TemplateError| GenerateError::Template {
            origin: t.origin.clone(),
            reason: e.to_string(),
        })?;
    let text = schema.to_string();
    let label = if t.template.gives_avro_schema() {
        "avro_schema"
    } else {
        "the Avro schema derived from its fields"
    };
    let codec = match &t.schema_registry {
        None => AvroCodec::from_schema_text(&text, label),
        Some(url) => AvroCodec::with_registry_schema_text(url, value_subject(topic), &text, label),
    }
    .map_err(|e| avro_error(t, topic, &e))?;
    Ok((codec, schema))
}

fn avro_error(t: &TemplateOptions, topic: &str, e: &AvroError) -> GenerateError {
    GenerateError::Avro {
        origin: t.origin.clone(),
        topic: topic.to_string(),
        reason: avro_reason(e),
    }
}

fn avro_reason(e: &AvroError) -> String {
    match e {
        AvroError::Mismatch { .. } => format!("a record does not fit the schema: {e}"),
        other => other.to_string(),
    }
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
    let mut totals = Totals::new(match source {
        Records::Clicks(_) => opts.keys,
        Records::Template { .. } => 0,
    });
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

    /// `--template`: the example templates in JSON and Avro, read back as written and by a
    /// worker; errors found before anything is sent.
    mod template {
        use std::collections::BTreeSet;
        use std::path::PathBuf;

        use serde_json::Value;
        use tributary::kafka::embedded::EmbeddedCluster;
        use tributary::kafka::reader::for_each_record;
        use tributary::testkit::MockSchemaRegistry;
        use tributary::Worker;

        use super::*;

        fn example_path(file: &str) -> PathBuf {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("config/templates")
                .join(file)
        }

        fn example(file: &str) -> TemplateOptions {
            TemplateOptions::load(&example_path(file)).unwrap_or_else(|e| panic!("{e}"))
        }

        fn inline(text: &str, format: ValueFormat) -> TemplateOptions {
            TemplateOptions {
                template: Template::parse(text).unwrap_or_else(|e| panic!("{e}")),
                origin: "test.json".into(),
                format,
                schema_registry: None,
                schema_out: None,
            }
        }

        /// `(key, value)` of every record the template generates with `seed`, the timestamp
        /// field removed (it follows the wall clock), sorted.
        fn expected(t: &Template, seed: u64, n: u64) -> Vec<(Option<String>, Value)> {
            let mut g = t.generator(seed);
            let ts = t
                .timestamp_field()
                .expect("the examples name their timestamp");
            let mut out: Vec<_> = (0..n)
                .map(|_| {
                    let r = g.next_record(0);
                    let mut v = r.value.to_json_value();
                    v.as_object_mut().unwrap().remove(ts);
                    (r.key, v)
                })
                .collect();
            out.sort_by_key(|(k, v)| (k.clone(), v.to_string()));
            out
        }

        /// Every record of `topic` as `(key, JSON value)` with the timestamp field `ts` checked
        /// to lie in `[from, to]` and removed, sorted; `decode` turns value bytes into JSON.
        fn read_back(
            brokers: &str,
            topic: &str,
            ts: &str,
            (from, to): (i64, i64),
            decode: impl Fn(&[u8]) -> Value,
        ) -> Vec<(Option<String>, Value)> {
            let mut out = Vec::new();
            for_each_record(brokers, topic, Duration::from_millis(500), |key, value| {
                let key = key.map(|k| String::from_utf8(k.to_vec()).unwrap());
                let mut v = decode(value.expect("a value"));
                let at = v[ts].as_i64().unwrap_or_else(|| panic!("{ts} in {v}"));
                assert!((from..=to).contains(&at), "{ts} {at} not in [{from}, {to}]");
                v.as_object_mut().unwrap().remove(ts);
                out.push((key, v));
            })
            .unwrap();
            out.sort_by_key(|(k, v)| (k.clone(), v.to_string()));
            out
        }

        /// Both examples, in JSON: every record arrives, keyed by its key field, with every
        /// field of the template and the values the seed gives; timestamps are the wall clock
        /// less at most the jitter and lateness.
        #[tokio::test]
        async fn each_example_template_is_written_and_read_back() {
            let mock = EmbeddedCluster::start(1).unwrap();
            let brokers = mock.bootstrap().to_string();
            for (file, topic, key_field, oldest) in [
                ("orders.json", "gen-orders", "customer_id", 60_200),
                ("sensors.json", "gen-sensors", "sensor", 31_000),
            ] {
                mock.create_topic(topic, 3).unwrap();
                let t = example(file);
                let template = t.template.clone();
                let mut opts = GenerateOptions::new(brokers.clone(), topic, 2000);
                opts.seed = 11;
                opts.template = Some(t);
                let from = now_ms() - oldest;
                let report = generate(opts, CancellationToken::new()).await.unwrap();
                let to = now_ms();
                assert_eq!(report.records, 2000, "{file}");
                assert!(report.totals.is_empty());

                let b = brokers.clone();
                let got = tokio::task::spawn_blocking(move || {
                    read_back(&b, topic, "ts", (from, to), |bytes| {
                        serde_json::from_slice(bytes).expect("a JSON value")
                    })
                })
                .await
                .unwrap();
                for (key, value) in &got {
                    assert_eq!(
                        key.as_deref(),
                        value[key_field].as_str(),
                        "{file}: the key is the key field"
                    );
                }
                assert_eq!(got, expected(&template, 11, 2000), "{file}");
            }
        }

        /// Writes a config for one worker on the mock cluster with the given pipelines.
        fn worker(dir: &Path, brokers: &str, pipelines: &str) -> Worker {
            let state = dir.join("state");
            let toml = format!(
                "[app]\nid = \"gen-avro\"\n[kafka]\nbootstrap_servers = \"{brokers}\"\n\
                 [group]\nsession_timeout_ms = 6000\n[processing]\ncommit_interval_ms = 100\n\
                 [state]\ndir = \"{}\"\n[http]\nlisten = \"off\"\n{pipelines}",
                state.display()
            );
            let path = dir.join("worker.toml");
            std::fs::write(&path, toml).unwrap();
            let config = tributary::config::load_with_env(&[path], std::iter::empty())
                .unwrap_or_else(|issues| panic!("{issues:#?}"));
            Worker::builder(config)
                .pipelines_from_config()
                .and_then(|b| b.build())
                .unwrap_or_else(|e| panic!("{e}"))
        }

        /// Records in `topic` (every partition, to the end).
        fn count(brokers: &str, topic: &str) -> usize {
            let mut n = 0;
            for_each_record(brokers, topic, Duration::from_millis(200), |_, _| n += 1).unwrap();
            n
        }

        /// `--format avro`, plain (the template's schema, no framing) and through a schema
        /// registry (the Confluent wire format): a worker with `source.format = "avro"` reads
        /// both, with the schema file and with the registry, and its JSON output is exactly
        /// what the template generated. The registry pipeline also shows each record's Kafka
        /// timestamp (`timestamp`, with no `source.time`): the template's `ts`.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn avro_records_are_read_by_a_worker() {
            const N: u64 = 500;
            let mock = EmbeddedCluster::start(1).unwrap();
            for topic in ["avro-plain", "avro-reg", "plain-out", "reg-out"] {
                mock.create_topic(topic, 2).unwrap();
            }
            let brokers = mock.bootstrap().to_string();
            let registry = MockSchemaRegistry::start().unwrap();
            let dir = tempfile::tempdir().unwrap();

            let from = now_ms() - 60_200;
            let mut plain = example("orders.json");
            plain.format = ValueFormat::Avro;
            let template = plain.template.clone();
            let mut registered = plain.clone();
            registered.schema_registry = Some(registry.url().to_string());
            // The plain run writes the schema file the worker reads them with.
            let schema = dir.path().join("order.avsc");
            plain.schema_out = Some(schema.clone());
            for (topic, t) in [("avro-plain", plain), ("avro-reg", registered)] {
                let mut opts = GenerateOptions::new(brokers.clone(), topic, N);
                opts.seed = 3;
                opts.template = Some(t);
                let report = generate(opts, CancellationToken::new()).await.unwrap();
                assert_eq!(report.records, N);
            }
            let ids = registry.versions("avro-reg-value");
            assert_eq!(
                ids.len(),
                1,
                "the schema is registered once under <topic>-value"
            );
            let b = brokers.clone();
            let headers = tokio::task::spawn_blocking(move || {
                let mut headers = BTreeSet::new();
                for_each_record(&b, "avro-reg", Duration::from_millis(200), |_, v| {
                    headers.insert(v.unwrap()[..5].to_vec());
                })
                .unwrap();
                headers
            })
            .await
            .unwrap();
            let mut header = vec![0];
            header.extend_from_slice(&ids[0].to_be_bytes());
            assert_eq!(
                headers,
                BTreeSet::from([header]),
                "every record starts with the magic byte and the schema id"
            );

            let written: Value =
                serde_json::from_str(&std::fs::read_to_string(&schema).unwrap()).unwrap();
            assert_eq!(written, template.avro_schema().unwrap(), "--schema-out");
            let pipelines = format!(
                "[[pipeline]]\nname = \"plain\"\n\
                 source = {{ topics = [\"avro-plain\"], format = \"avro\", schema = \"{}\" }}\n\
                 sink = {{ topic = \"plain-out\" }}\n\
                 [[pipeline]]\nname = \"reg\"\n\
                 source = {{ topics = [\"avro-reg\"], format = \"avro\", registry_url = \"{}\" }}\n\
                 sink = {{ topic = \"reg-out\" }}\n\
                 steps = [ {{ map = \"{{'order': value, 'at': timestamp}}\" }} ]\n",
                schema.display(),
                registry.url()
            );
            let worker = worker(dir.path(), &brokers, &pipelines);
            let shutdown = CancellationToken::new();
            let run = tokio::spawn(worker.run(shutdown.clone()));
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let b = brokers.clone();
                let done = tokio::task::spawn_blocking(move || {
                    count(&b, "plain-out") as u64 >= N && count(&b, "reg-out") as u64 >= N
                })
                .await
                .unwrap();
                if done {
                    break;
                }
                assert!(!run.is_finished(), "the worker stopped: {:?}", run.await);
                assert!(
                    Instant::now() < deadline,
                    "the worker did not process every record"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            shutdown.cancel();
            run.await.unwrap().expect("the worker stops cleanly");
            let to = now_ms();

            let want = expected(&template, 3, N);
            let b = brokers.clone();
            let got = tokio::task::spawn_blocking(move || {
                read_back(&b, "plain-out", "ts", (from, to), |bytes| {
                    serde_json::from_slice(bytes).expect("the worker writes JSON")
                })
            })
            .await
            .unwrap();
            assert_eq!(got, want, "plain-out");
            let b = brokers.clone();
            let got = tokio::task::spawn_blocking(move || {
                read_back(&b, "reg-out", "ts", (from, to), |bytes| {
                    let out: Value = serde_json::from_slice(bytes).expect("JSON");
                    assert_eq!(out["at"], out["order"]["ts"], "record timestamp = ts");
                    out["order"].clone()
                })
            })
            .await
            .unwrap();
            assert_eq!(got, want, "reg-out");
        }

        /// Problems with a template, its Avro schema or the registry stop the run before it
        /// connects to Kafka (the brokers here do not exist), each naming the place.
        #[tokio::test]
        async fn template_problems_are_reported_before_sending() {
            let run = |t: TemplateOptions| async move {
                let mut opts = GenerateOptions::new("127.0.0.1:1", "orders", 10);
                opts.template = Some(t);
                generate(opts, CancellationToken::new())
                    .await
                    .unwrap_err()
                    .to_string()
            };
            let fields = r#"{"fields": {"zip-code": {"type": "integer", "min": 1, "max": 2}}}"#;
            let err = run(inline(fields, ValueFormat::Avro)).await;
            assert_eq!(
                err,
                "template test.json: fields.zip-code: \"zip-code\" is not a valid Avro field name \
                 (letters, digits and _, not starting with a digit): rename it, or give the \
                 schema as \"avro_schema\""
            );

            let misfit = r#"{"avro_schema": {"type": "record", "name": "R", "fields": [{"name": "qty", "type": "string"}]},
                "fields": {"qty": {"type": "integer", "min": 1, "max": 2}}}"#;
            let err = run(inline(misfit, ValueFormat::Avro)).await;
            assert!(
                err.starts_with(
                    "writing Avro records of template test.json to topic orders: a record does \
                     not fit the schema: qty: "
                ),
                "{err}"
            );

            let broken = r#"{"avro_schema": {"type": "record", "name": "R"},
                "fields": {"qty": {"type": "integer", "min": 1, "max": 2}}}"#;
            let err = run(inline(broken, ValueFormat::Avro)).await;
            assert!(
                err.starts_with(
                    "writing Avro records of template test.json to topic orders: avro_schema: "
                ),
                "{err}"
            );

            let mut t = example("orders.json");
            t.format = ValueFormat::Avro;
            t.schema_registry = Some("http://127.0.0.1:1".into());
            let err = run(t).await;
            assert!(
                err.contains("subject orders-value") && err.contains("http://127.0.0.1:1"),
                "{err}"
            );

            let mut t = example("orders.json");
            t.schema_registry = Some("http://127.0.0.1:1".into());
            let err = run(t).await;
            assert!(
                err.contains("a schema registry is only used with the avro format"),
                "{err}"
            );
            let mut t = example("orders.json");
            t.schema_out = Some("order.avsc".into());
            let err = run(t).await;
            assert!(
                err.contains("a schema file is only written with the avro format"),
                "{err}"
            );
        }

        /// The two pipelines of docs/generate.md, run on the example templates' records in the
        /// test kit (the orders pipeline on JSON instead of Avro): every record that passes the
        /// filter is counted in a window or dropped as late; the sensor readings' lateness is
        /// within the grace, the orders' is not.
        #[test]
        fn the_docs_pipelines_run_on_the_example_records() {
            use tributary::testkit::TestDriver;
            let docs = std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/generate.md"),
            )
            .unwrap();
            let blocks: Vec<&str> = docs
                .split("```toml\n")
                .skip(1)
                .map(|b| b.split("```").next().unwrap())
                .collect();
            assert_eq!(blocks.len(), 2, "the orders and the sensors pipeline");
            // (pipeline block, template, source topic, sink topic, pipeline name, filter)
            type Passes = fn(&Value) -> bool;
            let cases: [(&str, &str, &str, &str, &str, Passes); 2] = [
                (
                    blocks[0],
                    "orders.json",
                    "orders",
                    "spend-per-customer",
                    "spend",
                    |v| v["status"] != "new",
                ),
                (
                    blocks[1],
                    "sensors.json",
                    "readings",
                    "sensor-minutes",
                    "sensor-minutes",
                    |v| v["calibrated"] == true,
                ),
            ];
            for (block, file, source, sink, name, passes) in cases {
                let block = block.replace(
                    r#"format = "avro", registry_url = "http://127.0.0.1:8081""#,
                    r#"format = "json""#,
                );
                let toml = format!(
                    "[app]\nid = \"docs\"\n[kafka]\nbootstrap_servers = \"embedded\"\n{block}"
                );
                let cfg =
                    tributary::config::load_str(&toml).unwrap_or_else(|e| panic!("{file}: {e:?}"));
                let mut d = TestDriver::from_config(&cfg)
                    .unwrap_or_else(|e| panic!("{file}: {e:?}"))
                    .partitions(3);
                let mut g = example(file).template.generator(42);
                let mut passed = 0;
                for i in 0..2000 {
                    let r = g.next_record(1_767_225_600_000 + i * 50);
                    if passes(&r.value.to_json_value()) {
                        passed += 1;
                    }
                    let ts = r.timestamp.expect("the examples stamp their records");
                    d.pipe(source, r.key.as_deref(), &r.value.to_json_string(), ts)
                        .unwrap_or_else(|e| panic!("{file}: {e}"));
                }
                // The last update of each key's window has its count.
                let mut last: BTreeMap<(String, i64), Value> = BTreeMap::new();
                for out in d.read(sink) {
                    let v = out.json();
                    let start = v["window_start"].as_i64().unwrap();
                    last.insert((out.key_str().unwrap().to_string(), start), v);
                }
                let count_field = if file == "orders.json" {
                    "orders"
                } else {
                    "readings"
                };
                let counted: u64 = last
                    .values()
                    .map(|v| v[count_field].as_u64().unwrap())
                    .sum();
                let late = d.late_records(name);
                assert_eq!(
                    counted + late,
                    passed,
                    "{file}: counted {counted}, late {late}"
                );
                if file == "orders.json" {
                    assert!(late > 0, "a minute late is beyond the 5 s grace");
                } else {
                    assert_eq!(late, 0, "30 s late is within the 45 s grace");
                }
            }
        }

        /// docs/generate.md shows both example templates as they are in config/templates.
        #[test]
        fn the_docs_show_the_example_templates() {
            let docs = std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/generate.md"),
            )
            .unwrap();
            for file in ["orders.json", "sensors.json"] {
                let text = std::fs::read_to_string(example_path(file)).unwrap();
                assert!(
                    docs.contains(&format!("```json\n{text}```")),
                    "docs/generate.md does not show config/templates/{file} as it is"
                );
            }
        }
    }
}
