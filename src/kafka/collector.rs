//! The record collector: the one producer a member's tasks send through (sinks, changelogs,
//! dead letters), and the acknowledgement bookkeeping a commit needs (Kafka Streams'
//! `RecordCollector`).
//!
//! Sends are asynchronous; [`Collector::flush`] waits until every record sent so far is
//! acknowledged and reports the first delivery failure, and [`Collector::take_changelog_acks`]
//! hands out the highest acknowledged offset of every changelog partition, which becomes the
//! restore point written into RocksDB.

use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};

use super::ClientError;
use crate::metrics::Metrics;

/// What a sent record is for; decides what its acknowledgement updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum SendKind {
    /// A sink or user output record.
    Output = 0,
    /// A state change: its acknowledged offset is the store's restore point.
    Changelog = 1,
    /// A record that failed and goes to the dead-letter topic.
    DeadLetter = 2,
}

/// A record to send, borrowing its parts from the caller.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// Destination topic.
    pub topic: &'a str,
    /// Explicit partition, or `None` for the key's murmur2 partition.
    pub partition: Option<i32>,
    /// Key bytes.
    pub key: Option<&'a [u8]>,
    /// Value bytes; `None` is a tombstone.
    pub value: Option<&'a [u8]>,
    /// Headers.
    pub headers: &'a [(String, Vec<u8>)],
    /// Timestamp, epoch ms.
    pub timestamp: Option<i64>,
}

/// Failures of the collector. Any of them means records may not have reached Kafka, so the
/// member must not commit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectorError {
    /// The producer could not be created.
    #[error("creating the producer: {0}")]
    Create(#[source] ClientError),
    /// The producer refused a record outright.
    #[error("sending to topic {topic}: {reason}")]
    Send {
        /// Destination topic.
        topic: String,
        /// librdkafka's reason.
        reason: String,
    },
    /// Records were still unacknowledged when the commit's wait ran out.
    #[error(
        "{pending} produced records were not acknowledged within processing.commit_timeout_ms \
         ({timeout_ms} ms); is the broker reachable?"
    )]
    FlushTimeout {
        /// Records still waiting.
        pending: i32,
        /// The wait, in milliseconds.
        timeout_ms: u64,
    },
    /// The producer's queue stayed full (nothing acknowledged) for the whole send timeout.
    #[error(
        "sending to topic {topic}: the producer's queue stayed full for \
         processing.commit_timeout_ms ({timeout_ms} ms) because nothing was acknowledged; is the \
         broker reachable?"
    )]
    QueueFull {
        /// Destination topic.
        topic: String,
        /// The wait, in milliseconds.
        timeout_ms: u64,
    },
    /// A record was not acknowledged (after librdkafka's own retries).
    #[error("delivery to {topic}/{partition} failed: {reason}")]
    Delivery {
        /// Destination topic.
        topic: String,
        /// Destination partition.
        partition: i32,
        /// librdkafka's reason.
        reason: String,
    },
}

/// Why a step of a transaction (exactly once) failed, and what it takes to go on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TxnError {
    /// The transaction must be aborted; the producer can go on with the next one.
    #[error("{0}")]
    Abort(String),
    /// The call ran out of time while librdkafka carries it on in the background (a broker
    /// away, a coordinator moving): the same producer must be asked again, and it answers for
    /// the call already under way ([`Collector::abort_transaction`] resumes it).
    #[error("{0}")]
    TimedOut(String),
    /// The producer cannot go on (fenced by a newer producer with its `transactional.id`, or a
    /// fatal error): it must be replaced.
    #[error("{0}")]
    Fatal(String),
}

impl TxnError {
    /// Classifies a failed call: librdkafka says whether its error is fatal.
    fn from_kafka(what: &str, e: &KafkaError) -> TxnError {
        match e {
            KafkaError::Transaction(err) if err.is_fatal() => {
                TxnError::Fatal(format!("{what}: {err}"))
            }
            _ => TxnError::Abort(format!("{what}: {e}")),
        }
    }
}

/// How [`Collector::abort_transaction`] ended the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Aborted: none of its records is visible to `read_committed` readers.
    Aborted,
    /// Its commit had timed out and went through when resumed: all of it is visible.
    Committed,
}

/// A transactional call librdkafka can resume. One that ran out of time goes on in the
/// background, and until the same call is made again librdkafka refuses every other
/// transactional call; destroying the producer meanwhile can crash the process (a failed
/// assertion in librdkafka's queue code). The collector remembers it
/// ([`Collector::abort_transaction`] resumes it, and dropping the collector settles it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resumable {
    Init,
    Commit,
    Abort,
}

/// Bits of a record's delivery opaque that hold its [`SendKind`]; the bit above them holds the
/// parity of the commit generation it was sent in.
const KIND_BITS: usize = 2;

/// The delivery opaque of a record: what it is for, and which of two commit generations it
/// belongs to.
fn opaque(kind: SendKind, generation: u64) -> usize {
    kind as usize | ((generation & 1) as usize) << KIND_BITS
}

struct CollectorContext {
    metrics: Metrics,
    /// Records not yet acknowledged (or failed), per parity of the commit generation they were
    /// sent in. A commit waits for its own generation only, while the tasks, already in the
    /// next one, go on sending.
    in_flight: [AtomicI64; 2],
    changelog_acks: Mutex<HashMap<(String, i32), i64>>,
    first_error: Mutex<Option<CollectorError>>,
    /// `tributary_records_produced_total` of each topic acknowledged so far: looked up by
    /// label once per topic instead of once per record (the lookup hashes and locks).
    produced: Mutex<HashMap<String, IntCounter>>,
}

impl CollectorContext {
    /// Counts one acknowledged record of `topic`.
    fn count_produced(&self, topic: &str) {
        let mut produced = self
            .produced
            .lock()
            .expect("invariant: no panics under this lock");
        if let Some(counter) = produced.get(topic) {
            counter.inc();
            return;
        }
        let counter = self.metrics.records_produced.with_label_values(&[topic]);
        counter.inc();
        produced.insert(topic.to_string(), counter);
    }
}

impl ClientContext for CollectorContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        super::logging::log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        super::logging::error(&error, reason);
    }
}

impl ProducerContext for CollectorContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let kind = opaque & ((1 << KIND_BITS) - 1);
        // Counted down after the bookkeeping below: a commit that sees zero finds every ack.
        let generation = opaque >> KIND_BITS;
        match result {
            Ok(m) => {
                self.count_produced(m.topic());
                if kind == SendKind::Changelog as usize {
                    let mut acks = self
                        .changelog_acks
                        .lock()
                        .expect("invariant: no panics under this lock");
                    let slot = acks
                        .entry((m.topic().to_string(), m.partition()))
                        .or_insert(m.offset());
                    *slot = (*slot).max(m.offset());
                }
            }
            Err((e, m)) => {
                let mut first = self
                    .first_error
                    .lock()
                    .expect("invariant: no panics under this lock");
                // One line for the first failure; the rest (a purge on shutdown fails every
                // queued record) only at debug level. The commit reports the failure.
                if first.is_some() {
                    tracing::debug!(topic = m.topic(), partition = m.partition(), error = %e, "record not delivered");
                } else {
                    tracing::error!(topic = m.topic(), partition = m.partition(), error = %e, "record not delivered");
                    *first = Some(CollectorError::Delivery {
                        topic: m.topic().to_string(),
                        partition: m.partition(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        self.in_flight[generation].fetch_sub(1, Ordering::Release);
    }
}

/// The member's producer.
pub struct Collector {
    /// Dropped by hand ([`Collector`]'s `Drop`): never while a transactional call is under way.
    producer: ManuallyDrop<ThreadedProducer<CollectorContext>>,
    /// The transactional call that ran out of time and goes on in the background.
    pending: Mutex<Option<Resumable>>,
    /// True once a record was sent since the last transaction began (exactly once).
    sent: AtomicBool,
    /// Set when a send gave up on a queue that stayed full: the producer acknowledges nothing,
    /// and every other send fails at once rather than wait as long again (each would hold a
    /// task). Cleared when a transaction begins (an abort empties the queue).
    stuck: AtomicBool,
    /// How long a send may wait for room in librdkafka's queue (`processing.commit_timeout_ms`).
    send_timeout: Duration,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Collector")
    }
}

impl Collector {
    /// Creates the producer from its librdkafka settings; a send waits at most `send_timeout`
    /// for room in the producer's queue.
    pub fn new(
        config: &ClientConfig,
        metrics: Metrics,
        send_timeout: Duration,
    ) -> Result<Self, CollectorError> {
        let ctx = CollectorContext {
            metrics,
            in_flight: Default::default(),
            changelog_acks: Mutex::default(),
            first_error: Mutex::default(),
            produced: Mutex::default(),
        };
        let producer = config
            .create_with_context(ctx)
            .map_err(|e| CollectorError::Create(e.into()))?;
        Ok(Self {
            producer: ManuallyDrop::new(producer),
            pending: Mutex::new(None),
            sent: AtomicBool::new(false),
            stuck: AtomicBool::new(false),
            send_timeout,
        })
    }

    /// Queues one record in commit generation 0 (see [`Collector::tagged`]).
    pub fn send(&self, out: Outgoing<'_>, kind: SendKind) -> Result<(), CollectorError> {
        self.send_in(out, kind, 0)
    }

    /// A sink whose records belong to commit `generation`: a commit that covers a task's input
    /// up to some point waits, with [`Collector::flush_generation`], for what the task sent up
    /// to that point only.
    pub fn tagged(&self, generation: u64) -> Tagged<'_> {
        Tagged {
            collector: self,
            generation,
        }
    }

    /// Queues one record; waits while librdkafka's queue is full, at most the send timeout
    /// (a broker that acknowledges nothing must fail the member, not hang it).
    fn send_in(
        &self,
        out: Outgoing<'_>,
        kind: SendKind,
        generation: u64,
    ) -> Result<(), CollectorError> {
        let mut record = BaseRecord::with_opaque_to(out.topic, opaque(kind, generation));
        if let Some(k) = out.key {
            record = record.key(k);
        }
        if let Some(v) = out.value {
            record = record.payload(v);
        }
        if let Some(p) = out.partition {
            record = record.partition(p);
        }
        if let Some(ts) = out.timestamp {
            record = record.timestamp(ts);
        }
        if !out.headers.is_empty() {
            let mut headers = OwnedHeaders::new_with_capacity(out.headers.len());
            for (k, v) in out.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            record = record.headers(headers);
        }
        let mut full_since = None;
        let queue_full = || CollectorError::QueueFull {
            topic: out.topic.to_string(),
            timeout_ms: self.send_timeout.as_millis() as u64,
        };
        if self.stuck.load(Ordering::Relaxed) {
            return Err(queue_full());
        }
        let in_flight = &self.producer.context().in_flight[(generation & 1) as usize];
        // Counted before the send: its delivery may come before `send` returns.
        in_flight.fetch_add(1, Ordering::AcqRel);
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    // Read first: a store on every send would bounce the flag's cache line
                    // between the processing threads.
                    if !self.sent.load(Ordering::Relaxed) {
                        self.sent.store(true, Ordering::Relaxed);
                    }
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // Backpressure from librdkafka: wait for acknowledgements to make room.
                    let since = *full_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.send_timeout || self.stuck.load(Ordering::Relaxed) {
                        in_flight.fetch_sub(1, Ordering::AcqRel);
                        self.stuck.store(true, Ordering::Relaxed);
                        return Err(queue_full());
                    }
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                    return Err(CollectorError::Send {
                        topic: out.topic.to_string(),
                        reason: e.to_string(),
                    });
                }
            }
        }
    }

    /// Waits until every record sent so far is acknowledged, at most `timeout`; fails if any
    /// record sent since the producer started was not, or if some are still waiting.
    pub fn flush(&self, timeout: Duration) -> Result<(), CollectorError> {
        // librdkafka fails undeliverable records after message.timeout.ms (5 minutes by
        // default), but a commit must not stall the member that long: bounded by our own wait.
        // In steps of a millisecond: rust-rdkafka's flush waits for events in slices of up to
        // 100 ms, and with the producer's own thread serving them, it sleeps the whole slice
        // (measured: every commit took 100-200 ms). A step costs a call that finds records
        // still pending; records lingering in a batch still wait out `linger.ms`.
        let deadline = Instant::now() + timeout;
        let flushed = loop {
            match self.producer.flush(Duration::ZERO) {
                Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                other => break other,
            }
        };
        if let Some(e) = self.take_first_error() {
            return Err(e);
        }
        flushed.map_err(|e| match e {
            KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut) => {
                CollectorError::FlushTimeout {
                    pending: self.in_flight(),
                    timeout_ms: timeout.as_millis() as u64,
                }
            }
            e => CollectorError::Send {
                topic: "*".into(),
                reason: format!("flush: {e}"),
            },
        })
    }

    /// Waits until every record sent in commit `generation` is acknowledged, at most `timeout`,
    /// while records of the next generation go on being sent; fails if any record sent since
    /// the producer started was not acknowledged, or if some of the generation's are still
    /// waiting. Two generations are told apart by parity: a commit waits only while no other
    /// commit does, so records of the generation before are done (or failed, which fails this
    /// wait too) unless an earlier wait gave up on them, and then waiting for them as well is
    /// only slower.
    pub fn flush_generation(
        &self,
        generation: u64,
        timeout: Duration,
    ) -> Result<(), CollectorError> {
        let in_flight = &self.producer.context().in_flight[(generation & 1) as usize];
        let deadline = Instant::now() + timeout;
        // Polled every millisecond, as in `flush`.
        while in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Some(e) = self.take_first_error() {
            return Err(e);
        }
        match in_flight.load(Ordering::Acquire) {
            0 => Ok(()),
            pending => Err(CollectorError::FlushTimeout {
                pending: pending.try_into().unwrap_or(i32::MAX),
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }

    fn take_first_error(&self) -> Option<CollectorError> {
        self.producer
            .context()
            .first_error
            .lock()
            .expect("invariant: no panics under this lock")
            .take()
    }

    /// The highest acknowledged offset of every changelog partition written since the last call.
    pub fn take_changelog_acks(&self) -> HashMap<(String, i32), i64> {
        std::mem::take(
            &mut *self
                .producer
                .context()
                .changelog_acks
                .lock()
                .expect("invariant: no panics under this lock"),
        )
    }

    /// Records still waiting for acknowledgement.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Registers the producer's `transactional.id` with its transaction coordinator (aborting
    /// what an earlier producer with the same id left open, and fencing that producer) and
    /// begins the first transaction. After [`TxnError::TimedOut`], call it again.
    pub fn init_transactions(&self, timeout: Duration) -> Result<(), TxnError> {
        self.retrying(
            Some(Resumable::Init),
            "initialising transactions",
            timeout,
            |left| self.producer.init_transactions(left),
        )?;
        self.begin_transaction()
    }

    /// Commits the open transaction with the input `offsets` of `group`'s member (the group
    /// coordinator refuses them from a member fenced out of the group), then begins the next.
    /// Every record sent must have been acknowledged ([`Collector::flush`]). After any error
    /// the transaction must be ended with [`Collector::abort_transaction`] (a commit that timed
    /// out may still succeed there).
    pub fn commit_transaction(
        &self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
        timeout: Duration,
    ) -> Result<(), TxnError> {
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        if offsets.count() > 0 {
            self.retrying(
                None,
                "sending the input offsets to the transaction",
                left(),
                |t| self.producer.send_offsets_to_transaction(offsets, group, t),
            )?;
        }
        self.resume_commit(left())?;
        self.begin_transaction()
    }

    /// Ends the open transaction without committing more than may already be committing, and
    /// begins the next: a commit that timed out is resumed first (it may still commit: what it
    /// held is then visible, and is read back as such), else the transaction is aborted and its
    /// records are never visible to `read_committed` readers. Forgets the acknowledgements and
    /// delivery failures of its records. After [`TxnError::TimedOut`], call it again.
    pub fn abort_transaction(&self, timeout: Duration) -> Result<Ended, TxnError> {
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        match self.pending() {
            Some(Resumable::Init) => {
                return self.init_transactions(left()).map(|()| Ended::Aborted)
            }
            Some(Resumable::Commit) => match self.resume_commit(left()) {
                Ok(()) => return self.next_transaction().map(|()| Ended::Committed),
                // The commit failed for good: the transaction aborts below.
                Err(TxnError::Abort(_)) => {}
                Err(e) => return Err(e),
            },
            Some(Resumable::Abort) | None => {}
        }
        self.retrying(
            Some(Resumable::Abort),
            "aborting the transaction",
            left(),
            |t| self.producer.abort_transaction(t),
        )?;
        self.next_transaction().map(|()| Ended::Aborted)
    }

    /// Commits the open transaction, or resumes the commit that timed out.
    fn resume_commit(&self, timeout: Duration) -> Result<(), TxnError> {
        self.retrying(
            Some(Resumable::Commit),
            "committing the transaction",
            timeout,
            |t| self.producer.commit_transaction(t),
        )
    }

    /// Forgets what the ended transaction's records reported, and begins the next.
    fn next_transaction(&self) -> Result<(), TxnError> {
        self.take_changelog_acks();
        self.take_first_error();
        self.begin_transaction()
    }

    /// The transactional call under way in the background, if one ran out of time.
    fn pending(&self) -> Option<Resumable> {
        *self
            .pending
            .lock()
            .expect("invariant: no panics under this lock")
    }

    /// Runs a transactional call until it succeeds, fails for good, or `timeout` has passed;
    /// librdkafka marks errors worth retrying (a coordinator that is moving, a request that
    /// timed out) as retriable. A `resumable` call that runs out of time is remembered.
    fn retrying(
        &self,
        resumable: Option<Resumable>,
        what: &str,
        timeout: Duration,
        mut call: impl FnMut(Duration) -> Result<(), KafkaError>,
    ) -> Result<(), TxnError> {
        let deadline = Instant::now() + timeout;
        let outcome = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match call(left) {
                Ok(()) => break Ok(()),
                Err(KafkaError::Transaction(e)) if e.is_retriable() => {
                    if left.is_zero() {
                        break Err(TxnError::TimedOut(format!("{what}: {e}")));
                    }
                    tracing::debug!(what, error = %e, "retrying");
                    std::thread::sleep(Duration::from_millis(100).min(left));
                }
                Err(e) => break Err(TxnError::from_kafka(what, &e)),
            }
        };
        if resumable.is_some() {
            *self
                .pending
                .lock()
                .expect("invariant: no panics under this lock") = match outcome {
                Err(TxnError::TimedOut(_)) => resumable,
                _ => None,
            };
        }
        outcome
    }

    fn begin_transaction(&self) -> Result<(), TxnError> {
        self.producer
            .begin_transaction()
            .map_err(|e| TxnError::from_kafka("beginning a transaction", &e))?;
        self.sent.store(false, Ordering::Relaxed);
        self.stuck.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// True when a record was sent in the open transaction.
    pub fn sent_in_transaction(&self) -> bool {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Collector {
    /// Settles a transactional call still under way before the producer goes (librdkafka can
    /// crash destroying a producer in the middle of one). One that does not settle in time
    /// leaves the producer undestroyed: its threads outlive it, the process does not abort.
    fn drop(&mut self) {
        if let Some(call) = self.pending() {
            let timeout = Duration::from_secs(5);
            let outcome = match call {
                Resumable::Init => self.init_transactions(timeout),
                Resumable::Commit | Resumable::Abort => self.abort_transaction(timeout).map(drop),
            };
            if let Err(e) = outcome {
                tracing::debug!(error = %e, "settling the last transactional call");
            }
        }
        if self.pending().is_none() {
            // SAFETY: `producer` is not used again: `self` is being dropped.
            unsafe { ManuallyDrop::drop(&mut self.producer) };
        } else {
            tracing::warn!(
                "a transactional call is still under way; the producer is left undestroyed"
            );
        }
    }
}

/// A [`Collector`] whose records belong to one commit generation ([`Collector::tagged`]).
#[derive(Debug, Clone, Copy)]
pub struct Tagged<'a> {
    collector: &'a Collector,
    generation: u64,
}

impl Tagged<'_> {
    /// Queues one record in this generation.
    pub fn send(&self, out: Outgoing<'_>, kind: SendKind) -> Result<(), CollectorError> {
        self.collector.send_in(out, kind, self.generation)
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;

    use super::*;

    const TOPIC: &str = "txn-out";

    fn transactional(
        mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    ) -> Collector {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("transactional.id", "collector-test")
            .set("transaction.timeout.ms", "60000")
            .set("enable.idempotence", "true");
        let collector = Collector::new(&config, Metrics::new(), Duration::from_secs(10))
            .expect("creating the producer");
        collector
            .init_transactions(Duration::from_secs(10))
            .expect("initialising transactions");
        collector
    }

    /// A mock cluster with the test topic.
    fn cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
        let mock = MockCluster::new(1).expect("mock cluster");
        mock.create_topic(TOPIC, 1, 1).expect("topic");
        mock
    }

    /// A transactional collector whose open transaction holds `value`, acknowledged, and whose
    /// only broker is then taken down.
    fn sent_then_broker_down(
        mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        value: &str,
    ) -> Collector {
        let collector = transactional(mock);
        send(&collector, value);
        collector.flush(Duration::from_secs(10)).expect("flushing");
        mock.broker_down(1).expect("broker down");
        collector
    }

    /// Sends `value` in the open transaction and commits it (no input offsets).
    fn commit(collector: &Collector, value: &str, timeout: Duration) -> Result<(), TxnError> {
        send(collector, value);
        collector.flush(Duration::from_secs(10)).expect("flushing");
        collector.commit_transaction(&no_offsets(), &no_group(), timeout)
    }

    fn no_offsets() -> TopicPartitionList {
        TopicPartitionList::new()
    }

    fn send(collector: &Collector, value: &str) {
        let out = Outgoing {
            topic: TOPIC,
            partition: Some(0),
            key: Some(b"k"),
            value: Some(value.as_bytes()),
            headers: &[],
            timestamp: None,
        };
        collector.send(out, SendKind::Output).expect("sending");
    }

    /// The values a `read_committed` reader sees on the topic. The mock cluster does not hide
    /// aborted records (Apache Kafka does: the worker tests check that), so the tests look
    /// for what must be visible only.
    fn visible_values(
        mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    ) -> Vec<String> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("group.id", "collector-test-reader")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("creating the reader");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(TOPIC, 0, rdkafka::Offset::Beginning)
            .expect("valid offset");
        consumer.assign(&tpl).expect("assigning");
        let mut values = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                values.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
            }
        }
        values
    }

    /// A broker that goes away while a transaction aborts leaves the abort running in
    /// librdkafka: it times out, is resumed once the broker is back, and the next transaction
    /// commits.
    #[test]
    fn an_abort_that_times_out_is_resumed() {
        let mock = cluster();
        let collector = sent_then_broker_down(&mock, "aborted");
        let first = collector.abort_transaction(Duration::from_millis(500));
        assert!(
            matches!(first, Err(TxnError::TimedOut(_))),
            "an abort with its broker away times out, resumable: {first:?}"
        );
        assert_eq!(collector.pending(), Some(Resumable::Abort));
        mock.broker_up(1).expect("broker up");
        let ended = collector
            .abort_transaction(Duration::from_secs(30))
            .expect("the resumed abort completes");
        assert_eq!(ended, Ended::Aborted);
        assert_eq!(collector.pending(), None);
        commit(&collector, "committed", Duration::from_secs(30))
            .expect("committing the next transaction");
        assert!(visible_values(&mock).contains(&"committed".to_string()));
    }

    /// A commit that times out goes on in the background; ending the transaction afterwards
    /// resumes it rather than abort over it (librdkafka refuses an abort then), and what it
    /// held becomes visible.
    #[test]
    fn an_abort_after_a_commit_that_timed_out_resumes_the_commit() {
        let mock = cluster();
        let collector = sent_then_broker_down(&mock, "held");
        let commit =
            collector.commit_transaction(&no_offsets(), &no_group(), Duration::from_millis(500));
        assert!(
            matches!(commit, Err(TxnError::TimedOut(_))),
            "a commit with its broker away times out, resumable: {commit:?}"
        );
        assert_eq!(collector.pending(), Some(Resumable::Commit));
        mock.broker_up(1).expect("broker up");
        let ended = collector
            .abort_transaction(Duration::from_secs(30))
            .expect("ending the transaction resumes its commit");
        assert_eq!(ended, Ended::Committed);
        assert_eq!(collector.pending(), None);
        assert!(visible_values(&mock).contains(&"held".to_string()));
    }

    /// A collector dropped while its abort is still under way settles it first, or leaves the
    /// producer undestroyed: either way the process goes on.
    #[test]
    fn dropping_a_collector_with_an_abort_under_way_does_not_crash() {
        let mock = cluster();
        let collector = sent_then_broker_down(&mock, "aborted");
        let abort = collector.abort_transaction(Duration::from_millis(500));
        assert!(matches!(abort, Err(TxnError::TimedOut(_))), "{abort:?}");
        drop(collector);
        mock.broker_up(1).expect("broker up");
        // A producer with the same transactional.id fences whatever is left of the old one.
        let next = transactional(&mock);
        commit(&next, "after", Duration::from_secs(30)).expect("committing");
        assert!(visible_values(&mock).contains(&"after".to_string()));
    }

    /// Group metadata for a commit without input offsets (none are sent).
    fn no_group() -> ConsumerGroupMetadata {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("group.id", "collector-test-group")
            .create()
            .expect("creating a consumer");
        consumer.group_metadata().expect("group metadata")
    }
}
