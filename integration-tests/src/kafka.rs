//! Kafka helpers on rdkafka: topics, producing JSON, reading whole topics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use serde_json::Value;

use crate::workload::RecordGen;

/// See [`TopicReader::read_to_end`].
const STALL: Duration = Duration::from_secs(10);

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// Creates a topic (replication 1) and waits until its metadata shows every partition.
pub fn create_topic(bootstrap: &str, name: &str, partitions: i32) -> Result<()> {
    create_topic_with(
        bootstrap,
        NewTopic::new(name, partitions, TopicReplication::Fixed(1)),
    )
}

/// Like [`create_topic`], with `cleanup.policy=compact` and the topic configs `extra`.
pub fn create_compacted_topic(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    extra: &[(&str, &str)],
) -> Result<()> {
    let mut configs = vec![("cleanup.policy", "compact")];
    configs.extend_from_slice(extra);
    create_configured_topic(bootstrap, name, partitions, &configs)
}

/// Like [`create_topic`], with the topic configs `configs`.
pub fn create_configured_topic(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> Result<()> {
    let topic = configs.iter().fold(
        NewTopic::new(name, partitions, TopicReplication::Fixed(1)),
        |t, (k, v)| t.set(k, v),
    );
    create_topic_with(bootstrap, topic)
}

fn create_topic_with(bootstrap: &str, topic: NewTopic<'_>) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)));
    let results = block_on(admin.create_topics([&topic], &opts))?;
    for r in results {
        if let Err((name, code)) = r {
            bail!("CreateTopics {name}: {code:?}");
        }
    }
    let want = topic.num_partitions as usize;
    let name = topic.name;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(parts) = partitions_of(bootstrap, name, Duration::from_secs(5)) {
            if parts.len() == want {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("topic {name}: metadata does not show {want} partitions");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The partition ids of `topic` from metadata (error if the topic is unknown).
fn partitions_of(bootstrap: &str, topic: &str, timeout: Duration) -> Result<Vec<i32>> {
    let c: BaseConsumer = base_consumer_config(bootstrap).create()?;
    partitions_with(&c, topic, timeout)
}

fn partitions_with(c: &BaseConsumer, topic: &str, timeout: Duration) -> Result<Vec<i32>> {
    let md = c.fetch_metadata(Some(topic), timeout)?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| anyhow!("no metadata for {topic}"))?;
    if let Some(err) = t.error() {
        bail!("topic {topic}: {:?}", RDKafkaErrorCode::from(err));
    }
    let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    if ids.is_empty() {
        bail!("topic {topic} has no partitions");
    }
    Ok(ids)
}

fn base_consumer_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("group.id", crate::unique_name("tributary-harness-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "10")
        .set("auto.offset.reset", "earliest")
        // What exactly once promises is what a read_committed reader sees.
        .set("isolation.level", "read_committed");
    c
}

#[derive(Default)]
struct CountingContext {
    acked: AtomicUsize,
    errors: Mutex<Vec<String>>,
}

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => self.errors.lock().unwrap().push(e.to_string()),
        }
    }
}

fn producer(bootstrap: &str) -> Result<BaseProducer<CountingContext>> {
    producer_with(bootstrap, "consistent_random")
}

/// A producer with librdkafka's `partitioner` (its default: `consistent_random`, CRC32 of the
/// key; the Java client's default: `murmur2_random`).
fn producer_with(bootstrap: &str, partitioner: &str) -> Result<BaseProducer<CountingContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("partitioner", partitioner)
        // Idempotent: a send retried across a broker restart (its first attempt written, the
        // acknowledgement lost) must not put a record into the input twice, where the expected
        // totals count it once.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "120000")
        .create_with_context(CountingContext::default())?)
}

/// Sends every record and waits for all acknowledgements; error if any delivery failed.
fn send_all(
    p: &BaseProducer<CountingContext>,
    topic: &str,
    records: &[(String, Value)],
) -> Result<()> {
    let raw = records
        .iter()
        .map(|(k, v)| Ok((k.clone(), serde_json::to_vec(v)?)))
        .collect::<Result<Vec<_>>>()?;
    send_raw(p, topic, &raw)
}

/// Sends records with raw value bytes and waits for all acknowledgements.
fn send_raw(
    p: &BaseProducer<CountingContext>,
    topic: &str,
    records: &[(String, Vec<u8>)],
) -> Result<()> {
    let before = p.context().acked.load(Ordering::Relaxed);
    for (key, payload) in records {
        let mut record = BaseRecord::to(topic).key(key.as_bytes()).payload(&payload);
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    p.poll(Duration::from_millis(50));
                }
                Err((e, _)) => bail!("produce to {topic}: {e}"),
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(180)).context("flush")?;
    let errors = std::mem::take(&mut *p.context().errors.lock().unwrap());
    if !errors.is_empty() {
        bail!(
            "{} of {} deliveries to {topic} failed, first: {}",
            errors.len(),
            records.len(),
            errors[0]
        );
    }
    let acked = p.context().acked.load(Ordering::Relaxed) - before;
    if acked != records.len() {
        bail!(
            "{acked} of {} records to {topic} acknowledged",
            records.len()
        );
    }
    Ok(())
}

/// Produces JSON records (key, value) to `topic` and waits until all are acknowledged.
pub fn produce_json(bootstrap: &str, topic: &str, records: &[(String, Value)]) -> Result<()> {
    let p = producer(bootstrap)?;
    send_all(&p, topic, records)
}

/// [`produce_json`], partitioned as the Java client does by default (murmur2 of the key), which
/// is where Tributary looks for a key of a source topic (`/state` routing).
pub fn produce_json_murmur2(
    bootstrap: &str,
    topic: &str,
    records: &[(String, Value)],
) -> Result<()> {
    let p = producer_with(bootstrap, "murmur2_random")?;
    send_all(&p, topic, records)
}

/// Produces records with raw value bytes (malformed ones, Avro) and waits for every ack.
pub fn produce_raw(bootstrap: &str, topic: &str, records: &[(String, Vec<u8>)]) -> Result<()> {
    let p = producer(bootstrap)?;
    send_raw(&p, topic, records)
}

/// Deletes a topic and waits until metadata no longer shows it.
pub fn delete_topic(bootstrap: &str, name: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in block_on(admin.delete_topics(&[name], &opts))? {
        if let Err((name, code)) = r {
            bail!("DeleteTopics {name}: {code:?}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while partitions_of(bootstrap, name, Duration::from_secs(5)).is_ok() {
        if Instant::now() >= deadline {
            bail!("topic {name} still in metadata 30 s after its deletion");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Writes `records` (key, value; `None` is a tombstone) to one partition in a single
/// transaction, then commits it or, with `commit = false`, aborts it. Either way the partition
/// ends in a transaction marker, an offset no application ever receives.
pub fn produce_transaction(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    records: &[(Vec<u8>, Option<Vec<u8>>)],
    commit: bool,
) -> Result<()> {
    open_transaction(
        bootstrap,
        topic,
        partition,
        records,
        Duration::from_secs(60),
    )?
    .end(commit)
}

/// A transaction left open on purpose (a writer that crashed, or hangs): its records, and
/// everything after them, stay hidden from `read_committed` readers until it ends, at the
/// latest when the broker aborts it after its `timeout`.
pub struct OpenTransaction {
    producer: BaseProducer<CountingContext>,
    topic: String,
}

impl OpenTransaction {
    /// Commits or aborts it.
    pub fn end(self, commit: bool) -> Result<()> {
        use rdkafka::producer::Producer as _;
        let t = Duration::from_secs(30);
        if commit {
            self.producer.commit_transaction(t)?;
        } else {
            self.producer.abort_transaction(t)?;
        }
        let errors = std::mem::take(&mut *self.producer.context().errors.lock().unwrap());
        if !errors.is_empty() && commit {
            bail!("transactional sends to {} failed: {errors:?}", self.topic);
        }
        Ok(())
    }
}

/// Writes `records` to one partition in a transaction that it leaves open (see
/// [`OpenTransaction`]); every record is acknowledged when this returns.
pub fn open_transaction(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    records: &[(Vec<u8>, Option<Vec<u8>>)],
    timeout: Duration,
) -> Result<OpenTransaction> {
    let id = crate::unique_name("harness-txn");
    open_transaction_as(bootstrap, &id, topic, partition, records, timeout)
}

/// Like [`open_transaction`], as the producer with `transactional_id` (which fences any other
/// producer with that id).
pub fn open_transaction_as(
    bootstrap: &str,
    transactional_id: &str,
    topic: &str,
    partition: i32,
    records: &[(Vec<u8>, Option<Vec<u8>>)],
    timeout: Duration,
) -> Result<OpenTransaction> {
    use rdkafka::producer::Producer as _;
    let p: BaseProducer<CountingContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", transactional_id)
        .set("transaction.timeout.ms", timeout.as_millis().to_string())
        .create_with_context(CountingContext::default())?;
    let t = Duration::from_secs(30);
    p.init_transactions(t)?;
    p.begin_transaction()?;
    for (key, value) in records {
        let mut r = BaseRecord::to(topic).partition(partition).key(key);
        if let Some(v) = value {
            r = r.payload(v);
        }
        p.send(r).map_err(|(e, _)| e)?;
    }
    p.flush(t)?;
    Ok(OpenTransaction {
        producer: p,
        topic: topic.to_string(),
    })
}

/// Log start and end (high watermark) offsets of one partition.
pub fn watermarks(bootstrap: &str, topic: &str, partition: i32) -> Result<(i64, i64)> {
    // read_committed would be told the last stable offset instead of the end.
    let c: BaseConsumer = base_consumer_config(bootstrap)
        .set("isolation.level", "read_uncommitted")
        .create()?;
    Ok(c.fetch_watermarks(topic, partition, Duration::from_secs(10))?)
}

/// The offsets group `group` has committed for each partition of `topic` (partitions without a
/// commit are left out).
pub fn committed_offsets(bootstrap: &str, group: &str, topic: &str) -> Result<HashMap<i32, i64>> {
    let c: BaseConsumer = base_consumer_config(bootstrap)
        .set("group.id", group)
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in partitions_with(&c, topic, Duration::from_secs(10))? {
        tpl.add_partition(topic, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

/// One record read from a topic.
#[derive(Clone, Debug)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Rec {
    /// The key as UTF-8 (lossy).
    pub fn key_str(&self) -> Option<String> {
        self.key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
    }

    /// The value parsed as JSON (None for a tombstone or a value that is not JSON).
    pub fn json(&self) -> Option<Value> {
        self.value
            .as_ref()
            .and_then(|v| serde_json::from_slice(v).ok())
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_ref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// Reads every partition of a topic from the beginning with an assign-mode consumer, and
/// can be called again to read what was appended since.
pub struct TopicReader {
    consumer: BaseConsumer,
    topic: String,
    partitions: Vec<i32>,
    /// Next offset to read per partition, as far as we know.
    positions: HashMap<i32, i64>,
    /// How long fetches must return nothing, after the reported end was reached, before the
    /// partition set counts as read to the end: zero on Apache Kafka, whose end offsets are
    /// exact; a second on tansu (see [`TopicReader::read_to_end`]).
    pub quiet: Duration,
    /// Whether a long silence short of the reported end counts as the end (tansu only).
    stall_is_end: bool,
    /// Upper bound for one `read_to_end`.
    pub timeout: Duration,
}

impl TopicReader {
    pub fn open(bootstrap: &str, topic: &str) -> Result<TopicReader> {
        let consumer: BaseConsumer = base_consumer_config(bootstrap)
            .set("queued.min.messages", "200000")
            .create()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let partitions = loop {
            match partitions_with(&consumer, topic, Duration::from_secs(5)) {
                Ok(p) => break p,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let tansu = crate::BrokerKind::from_env() == crate::BrokerKind::Tansu;
        Ok(TopicReader {
            consumer,
            topic: topic.to_string(),
            partitions,
            positions: HashMap::new(),
            quiet: if tansu {
                Duration::from_secs(1)
            } else {
                Duration::ZERO
            },
            stall_is_end: tansu,
            timeout: Duration::from_secs(180),
        })
    }

    pub fn partitions(&self) -> &[i32] {
        &self.partitions
    }

    /// Reads until every partition is read to its end and returns the records read by this
    /// call, ordered by (partition, offset).
    ///
    /// On Apache Kafka the end is the high watermark each partition had when the call began
    /// (positions count transaction markers, which the application never sees).
    ///
    /// tansu deviation: the end offset it reports (high watermark) is the base offset of the
    /// last record batch + 1, which can be lower than the true end. So there "the end" is:
    /// every partition's position has reached the reported end, and then fetches have
    /// returned nothing more for `self.quiet`.
    pub fn read_to_end(&mut self) -> Result<Vec<Rec>> {
        let (records, at_end) = self.read_for(self.timeout)?;
        if !at_end {
            bail!(
                "reading {} to the end took over {:?}: positions {:?}",
                self.topic,
                self.timeout,
                self.positions
            );
        }
        Ok(records)
    }

    /// Like [`TopicReader::read_to_end`], but stops after `limit` even if the end was not
    /// reached (a topic still being written to) and then returns what it read, with false.
    pub fn read_for(&mut self, limit: Duration) -> Result<(Vec<Rec>, bool)> {
        let start = Instant::now();
        let mut highs = HashMap::new();
        for &p in &self.partitions {
            let (low, high) = self
                .consumer
                .fetch_watermarks(&self.topic, p, Duration::from_secs(10))
                .with_context(|| format!("watermarks of {}[{p}]", self.topic))?;
            self.positions.entry(p).or_insert(low);
            highs.insert(p, high);
        }
        let mut out = Vec::new();
        let mut last_activity = Instant::now();
        loop {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.map(|v| v.to_vec())))
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(Rec {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(|k| k.to_vec()),
                        value: m.payload().map(|v| v.to_vec()),
                        headers,
                    });
                    self.positions.insert(m.partition(), m.offset() + 1);
                    last_activity = Instant::now();
                }
                Some(Err(_)) => {} // transient (e.g. leader not yet known): keep polling
                None => {}
            }
            // Positions also advance over records the application never sees (transaction
            // markers): take librdkafka's own fetch position into account.
            if let Ok(tpl) = self.consumer.position() {
                for e in tpl.elements_for_topic(&self.topic) {
                    if let Offset::Offset(o) = e.offset() {
                        let pos = self.positions.entry(e.partition()).or_insert(o);
                        *pos = (*pos).max(o);
                    }
                }
            }
            let reached = self
                .partitions
                .iter()
                .all(|p| self.positions.get(p).copied().unwrap_or(0) >= highs[p]);
            // Once the reported ends are reached, the end is where fetches stay empty for
            // `quiet`. On tansu, nothing at all for a long while although a reported end was
            // not reached is taken as the end too, rather than hang.
            let at_end = (reached && last_activity.elapsed() >= self.quiet)
                || (self.stall_is_end && last_activity.elapsed() >= self.quiet.max(STALL));
            if at_end || start.elapsed() >= limit {
                out.sort_by_key(|r| (r.partition, r.offset));
                return Ok((out, at_end));
            }
        }
    }
}

/// Topic-level configs as the broker describes them (DescribeConfigs), name → value.
pub fn describe_topic_config(bootstrap: &str, topic: &str) -> Result<HashMap<String, String>> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let results = block_on(admin.describe_configs([&ResourceSpecifier::Topic(topic)], &opts))?;
    let resource = results
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no DescribeConfigs result for {topic}"))?
        .map_err(|code| anyhow!("DescribeConfigs {topic}: {code:?}"))?;
    Ok(resource
        .entries
        .into_iter()
        .filter_map(|e| e.value.map(|v| (e.name, v)))
        .collect())
}

/// Every record of `topic`, all partitions, from the beginning to the (true) end.
pub fn consume_all(bootstrap: &str, topic: &str) -> Result<Vec<Rec>> {
    TopicReader::open(bootstrap, topic)?.read_to_end()
}

/// The last JSON value per (UTF-8) key in `topic`; a tombstone removes the key.
pub fn last_value_per_key(bootstrap: &str, topic: &str) -> Result<HashMap<String, Value>> {
    let mut view = KeyedView::open(bootstrap, topic)?;
    view.refresh()?;
    Ok(view.map)
}

/// A continuously updatable "last value per key" view of a topic (for polling a sink topic
/// until it holds the expected totals, without re-reading it from the start every time).
pub struct KeyedView {
    reader: TopicReader,
    pub map: HashMap<String, Value>,
    /// Records read so far, including superseded ones.
    pub records_read: usize,
    /// Records whose value was not JSON.
    pub not_json: usize,
}

impl KeyedView {
    pub fn open(bootstrap: &str, topic: &str) -> Result<KeyedView> {
        Ok(KeyedView {
            reader: TopicReader::open(bootstrap, topic)?,
            map: HashMap::new(),
            records_read: 0,
            not_json: 0,
        })
    }

    /// Reads what was appended since the last call, to the end, and returns the updated map.
    /// (On error, what was read is still applied.)
    pub fn refresh(&mut self) -> Result<&HashMap<String, Value>> {
        let limit = self.reader.timeout;
        if !self.refresh_for(limit)? {
            bail!(
                "{}: not read to the end within {limit:?}",
                self.reader.topic
            );
        }
        Ok(&self.map)
    }

    /// Reads for at most `limit` (less if the end comes first), applies what was read, and
    /// says whether the end was reached. For polling a topic that is still being written.
    pub fn refresh_for(&mut self, limit: Duration) -> Result<bool> {
        let (records, at_end) = self.reader.read_for(limit)?;
        self.apply(records);
        Ok(at_end)
    }

    fn apply(&mut self, records: Vec<Rec>) {
        for rec in records {
            self.records_read += 1;
            let Some(key) = rec.key_str() else { continue };
            match &rec.value {
                None => {
                    self.map.remove(&key);
                }
                Some(_) => match rec.json() {
                    Some(v) => {
                        self.map.insert(key, v);
                    }
                    None => self.not_json += 1,
                },
            }
        }
    }

    pub fn reader_mut(&mut self) -> &mut TopicReader {
        &mut self.reader
    }
}

/// Produces workload records to a topic from a background thread, batch after batch, until
/// stopped (or `max_records` is reached), and remembers exactly which records were
/// acknowledged, so a test can compute the expected totals of what really went in.
pub struct ContinuousProducer {
    stop: Arc<AtomicBool>,
    produced: Arc<AtomicUsize>,
    handle: Option<JoinHandle<Result<Acknowledged>>>,
}

/// The records a producer thread had acknowledged: (key, value) in order.
type Acknowledged = Vec<(String, Value)>;

impl ContinuousProducer {
    /// `keys` distinct users, a fixed `seed`; `batch` records, then a `pause`, repeated.
    pub fn start(
        bootstrap: &str,
        topic: &str,
        keys: usize,
        seed: u64,
        batch: usize,
        pause: Duration,
        max_records: usize,
    ) -> ContinuousProducer {
        let stop = Arc::new(AtomicBool::new(false));
        let produced = Arc::new(AtomicUsize::new(0));
        let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
        let (stop2, produced2) = (stop.clone(), produced.clone());
        let handle = std::thread::Builder::new()
            .name("continuous-producer".into())
            .spawn(move || -> Result<Vec<(String, Value)>> {
                let p = producer(&bootstrap)?;
                let mut gen = RecordGen::new(keys, seed);
                let mut all = Vec::new();
                while !stop2.load(Ordering::Relaxed) && all.len() < max_records {
                    let n = batch.min(max_records - all.len());
                    let records: Vec<_> = (0..n).map(|_| gen.next_record()).collect();
                    send_all(&p, &topic, &records)?;
                    all.extend(records);
                    produced2.store(all.len(), Ordering::Relaxed);
                    std::thread::sleep(pause);
                }
                Ok(all)
            })
            .expect("spawn producer thread");
        ContinuousProducer {
            stop,
            produced,
            handle: Some(handle),
        }
    }

    /// Records acknowledged so far.
    pub fn produced(&self) -> usize {
        self.produced.load(Ordering::Relaxed)
    }

    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Stops after the current batch; returns every acknowledged record. Panics if producing failed.
    pub fn stop(mut self) -> Vec<(String, Value)> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().unwrap().join() {
            Ok(Ok(records)) => records,
            Ok(Err(e)) => panic!("continuous producer failed: {e:#}"),
            Err(_) => panic!("continuous producer thread panicked"),
        }
    }
}

impl Drop for ContinuousProducer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
