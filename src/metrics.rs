//! The worker's Prometheus metrics, one registry per worker (so several workers in one process,
//! as in the demo, keep separate numbers). Names start with `tributary_`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the worker exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Input records read, by topic and partition.
    pub records_consumed: IntCounterVec,
    /// Records acknowledged by the broker, by topic (sinks, changelogs, dead letters).
    pub records_produced: IntCounterVec,
    /// Records written to the dead-letter topic, by source topic.
    pub records_dead_lettered: IntCounterVec,
    /// Records skipped under `on_error = "skip"`, by source topic.
    pub records_skipped: IntCounterVec,
    /// Records dropped for arriving after their windows closed, by pipeline (topology).
    pub late_records: IntCounterVec,
    /// Consumer lag per assigned partition, from librdkafka's statistics.
    pub consumer_lag: IntGaugeVec,
    /// Rebalance callbacks, by member and kind (assign / revoke / lost).
    pub rebalances: IntCounterVec,
    /// Time from the start of a commit (cache flush) to the state batch written, in seconds.
    pub commit_latency: HistogramVec,
    /// How long a commit held up a task's processing, in seconds: the longest hold of one
    /// commit (its commit point and state write under at least once; the whole transaction
    /// under exactly once).
    pub commit_stall: HistogramVec,
    /// Commits that failed to commit input offsets (they are retried at the next commit).
    pub commit_failures: IntCounter,
    /// Transactions ended (exactly once), by outcome (committed / aborted).
    pub transactions: IntCounterVec,
    /// Changelog records applied while restoring, by store.
    pub restored_records: IntCounterVec,
    /// Changelog records still to restore, by task and store (an estimate from the end offset).
    pub restore_remaining: IntGaugeVec,
    /// Changelog records copied into standby replicas, by store.
    pub standby_records: IntCounterVec,
    /// Changelog records a standby replica has yet to copy, by task and store (changelog).
    pub standby_lag: IntGaugeVec,
    /// Tasks of this worker by state (restoring, running, standby).
    pub tasks: IntGaugeVec,
    /// Partitions paused because their task is not running yet (restoring, or not open).
    pub paused_partitions: IntGauge,
    /// Records fetched and waiting for their tasks (librdkafka statistics).
    pub buffered_records: IntGauge,
    /// Time one record takes through its processor, in seconds (sampled: 1 in 64).
    pub process_latency: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry
        .register(Box::new(metric.clone()))
        .expect("invariant: metric names are unique");
    metric
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Self {
        let r = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        Self {
            records_consumed: counter(
                "tributary_records_consumed_total",
                "Input records read",
                &["topic", "partition"],
            ),
            records_produced: counter(
                "tributary_records_produced_total",
                "Records acknowledged by the broker",
                &["topic"],
            ),
            records_dead_lettered: counter(
                "tributary_records_dead_lettered_total",
                "Records written to the dead-letter topic",
                &["topic"],
            ),
            records_skipped: counter(
                "tributary_records_skipped_total",
                "Bad records skipped (on_error = skip)",
                &["topic"],
            ),
            late_records: counter(
                "tributary_late_records_total",
                "Records dropped because every window they fall in had closed",
                &["pipeline"],
            ),
            consumer_lag: gauge(
                "tributary_consumer_lag",
                "Consumer lag per assigned partition",
                &["topic", "partition"],
            ),
            rebalances: counter(
                "tributary_rebalances_total",
                "Rebalance callbacks",
                &["member", "kind"],
            ),
            commit_latency: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "tributary_commit_latency_seconds",
                        "Commit duration: flush, acks, offsets, state",
                    )
                    .buckets(vec![
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0,
                    ]),
                    &["member"],
                )
                .expect("valid metric"),
            ),
            commit_stall: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "tributary_commit_stall_seconds",
                        "Longest time one commit held up a task's processing",
                    )
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0, 2.5, 5.0,
                    ]),
                    &["member"],
                )
                .expect("valid metric"),
            ),
            commit_failures: register(
                &r,
                IntCounter::new(
                    "tributary_commit_failures_total",
                    "Input offset commits that failed",
                )
                .expect("valid metric"),
            ),
            transactions: counter(
                "tributary_transactions_total",
                "Transactions ended under exactly_once, by outcome",
                &["outcome"],
            ),
            restored_records: counter(
                "tributary_restored_records_total",
                "Changelog records applied while restoring",
                &["store"],
            ),
            restore_remaining: gauge(
                "tributary_restore_remaining_records",
                "Changelog records still to restore (estimate)",
                &["task", "store"],
            ),
            standby_records: counter(
                "tributary_standby_records_total",
                "Changelog records copied into standby replicas",
                &["store"],
            ),
            standby_lag: gauge(
                "tributary_standby_lag_records",
                "Changelog records a standby replica has yet to copy",
                &["task", "store"],
            ),
            tasks: gauge("tributary_tasks", "Tasks by state", &["state"]),
            paused_partitions: register(
                &r,
                IntGauge::new(
                    "tributary_paused_partitions",
                    "Partitions paused until their task runs",
                )
                .expect("valid metric"),
            ),
            buffered_records: register(
                &r,
                IntGauge::new(
                    "tributary_buffered_records",
                    "Records fetched and waiting for their tasks",
                )
                .expect("valid metric"),
            ),
            process_latency: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "tributary_process_latency_seconds",
                        "Per-record processing time (sampled)",
                    )
                    .buckets(
                        prometheus::exponential_buckets(1e-6, 4.0, 10).expect("valid buckets"),
                    ),
                )
                .expect("valid metric"),
            ),
            registry: r,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("invariant: encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("invariant: the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
