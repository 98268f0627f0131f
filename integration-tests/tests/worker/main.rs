//! End-to-end tests: real brokers (Apache Kafka; tansu with `TRIBUTARY_TEST_BROKER=tansu`), the
//! built `tributary` binary as child processes.
//!
//! One test binary (to limit link time), one module per theme. Each test starts its own
//! broker and uses its own topics and app id, so tests may run in parallel; the heavy ones
//! take `serial()` so that, on a small machine, they do not compete with each other.
//!
//! Run: `cargo build --release --bin tributary && cargo test -p integration-tests --release`
//! (`-- harness` runs only the tests of the harness itself, which need no tributary binary).

mod changelog;
mod config;
mod exactly_once;
mod harness;
mod idle;
mod outage;
mod pipelines;
mod protocol;
mod queries;
mod rebalance;
mod recovery;
mod standby;
mod startup;
mod top;
mod totals;

use std::collections::HashMap;
use std::time::Duration;

use integration_tests::{
    committed_offsets, reached, wait_until, watermarks, Broker, BrokerKind, ContinuousProducer,
    KeyedView, Totals, TotalsConfig, WorkerProcess,
};

/// Generous bound for anything that should take seconds (machines here are noisy).
pub const LONG: Duration = Duration::from_secs(300);
/// Bound for a worker to join and become ready.
pub const READY: Duration = Duration::from_secs(180);

pub const RUNNING: &str = "tributary_tasks{state=\"running\"}";
pub const CONSUMED: &str = "tributary_records_consumed_total";
pub const RESTORED: &str = "tributary_restored_records_total";
pub const REBALANCES: &str = "tributary_rebalances_total";

/// A fresh broker with an input and an output topic, an app id, and a producer that keeps
/// adding records to the input (batches of 200 over 150 keys every 100 ms, at most 400,000):
/// the load every membership scenario runs under.
pub struct UnderLoad {
    pub broker: Broker,
    pub input: String,
    pub output: String,
    pub app: String,
    pub producer: ContinuousProducer,
}

impl UnderLoad {
    /// Topics `<prefix>-in-*` and `<prefix>-out-*` with `partitions` each, app `app-<prefix>-*`,
    /// records from `seed`.
    pub fn start(prefix: &str, partitions: i32, seed: u64) -> Self {
        let broker = Broker::start();
        let input = integration_tests::unique_name(&format!("{prefix}-in"));
        let output = integration_tests::unique_name(&format!("{prefix}-out"));
        broker.create_topic(&input, partitions);
        broker.create_topic(&output, partitions);
        let app = integration_tests::unique_name(&format!("app-{prefix}"));
        let producer = ContinuousProducer::start(
            &broker.bootstrap(),
            &input,
            150,
            seed,
            200,
            Duration::from_millis(100),
            400_000,
        );
        Self {
            broker,
            input,
            output,
            app,
            producer,
        }
    }
}

/// How a scenario under load ends: the records produced, their expected totals, and the sink
/// once the workers reached those totals and committed the input to its end (so every output
/// record is acknowledged and in the view).
pub struct Settled {
    pub records: Vec<(String, serde_json::Value)>,
    pub expected: HashMap<String, Totals>,
    pub view: KeyedView,
}

impl Settled {
    /// Panics unless every key's count and total in the sink EQUAL the input's (exactly
    /// once); `when` says after what.
    #[track_caller]
    pub fn assert_exact(&self, when: &str) {
        if let Err(e) = integration_tests::check_exact(&self.expected, &self.view.map) {
            panic!("{when} ({} records): {e}", self.records.len());
        }
    }
}

/// Stops `producer` (writing to `input` of `broker`) and waits for `workers` of group `app`,
/// which write to `output`, to settle (see [`Settled`]).
pub fn settle(
    producer: ContinuousProducer,
    broker: &Broker,
    (app, input, output): (&str, &str, &str),
    partitions: i32,
    workers: &mut [&mut WorkerProcess],
) -> Settled {
    let records = producer.stop();
    let expected = integration_tests::expected_totals(&records);
    let bootstrap = broker.bootstrap();
    let mut view = KeyedView::open(&bootstrap, output).unwrap();
    wait_for_totals(&mut view, &expected, LONG, workers);
    wait_all_committed(&bootstrap, app, input, partitions);
    view.refresh().unwrap();
    Settled {
        records,
        expected,
        view,
    }
}

/// The consumer-group protocol a scenario's workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `group.protocol = "classic"` (the default) with its default assignor.
    Classic,
    /// `group.protocol = "consumer"` (KIP-848) with its default remote assignor.
    Consumer,
}

impl Protocol {
    /// `config` with this protocol.
    pub fn apply(self, config: TotalsConfig) -> TotalsConfig {
        match self {
            Protocol::Classic => config,
            Protocol::Consumer => config.consumer_protocol(),
        }
    }

    /// Asserts that the broker runs group `app` under this protocol, with its default assignor
    /// (on Apache Kafka; tansu has no group type to describe).
    pub fn assert_group(self, broker: &Broker, app: &str) {
        if broker.kind() != BrokerKind::Kafka {
            return;
        }
        let (kind, assignor) = match self {
            Protocol::Classic => ("Classic", "cooperative-sticky"),
            Protocol::Consumer => ("Consumer", "uniform"),
        };
        let group = broker.describe_group(app);
        assert_eq!(
            (group.kind.as_str(), group.assignor.as_str()),
            (kind, assignor),
            "group {app} as the broker describes it: {group:?}"
        );
    }
}

/// True when the tests run on Apache Kafka (the reference broker), not tansu.
pub fn on_kafka() -> bool {
    BrokerKind::from_env() == BrokerKind::Kafka
}

/// A fresh state directory for one worker.
pub fn state_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tributary-state-")
        .tempdir()
        .expect("tempdir")
}

/// Running tasks reported by a worker (0 when it does not answer or reports none).
pub fn running(w: &WorkerProcess) -> f64 {
    w.metric(RUNNING).unwrap_or(0.0)
}

/// Polls the sink view until every expected key has reached its expected count (the workers
/// have caught up), while checking that the given workers stay alive. Panics with a summary
/// (and, through the workers' Drop, their log tails) on timeout.
pub fn wait_for_totals(
    view: &mut KeyedView,
    expected: &HashMap<String, Totals>,
    timeout: Duration,
    workers: &mut [&mut WorkerProcess],
) {
    let mut died = None;
    let ok = integration_tests::wait_until(timeout, Duration::from_secs(2), || {
        for w in workers.iter_mut() {
            if let Some(s) = w.try_status() {
                died = Some(format!("{} exited early: {s}", w.name()));
                return true;
            }
        }
        // Partial reads count too: the output may still be growing.
        let _ = view.refresh_for(Duration::from_secs(30));
        reached(expected, &view.map)
    });
    if let Some(d) = died {
        panic!("{d}");
    }
    if !ok {
        let map = &view.map;
        let behind = expected
            .iter()
            .filter(|(k, e)| {
                map.get(*k)
                    .and_then(|v| v["count"].as_f64())
                    .is_none_or(|c| c < e.count as f64)
            })
            .count();
        let want: u64 = expected.values().map(|t| t.count).sum();
        let got: f64 = map.values().filter_map(|v| v["count"].as_f64()).sum();
        let metrics: Vec<String> = workers
            .iter()
            .map(|w| {
                format!(
                    "{}: consumed {:?} running {:?}",
                    w.name(),
                    w.metric(CONSUMED),
                    w.metric(RUNNING)
                )
            })
            .collect();
        panic!(
            "sink did not catch up within {timeout:?}: {behind} of {} keys behind; sum of counts {got} of {want}; \
             {} output records read ({} not JSON); {}",
            expected.len(),
            view.records_read,
            view.not_json,
            metrics.join("; ")
        );
    }
}

/// Running tasks and records consumed of each worker, for failure messages.
pub fn describe(ws: &[&WorkerProcess]) -> String {
    ws.iter()
        .map(|w| {
            format!(
                "{}: running {:?} consumed {:?}",
                w.name(),
                w.metric(RUNNING),
                w.metric(CONSUMED)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Waits until each worker reports running tasks > 0 and, together, all `partitions`.
pub fn wait_all_running(ws: &[&WorkerProcess], partitions: i32, what: &str) {
    let ok = wait_until(READY, Duration::from_millis(500), || {
        let r: Vec<f64> = ws.iter().map(|w| running(w)).collect();
        r.iter().all(|&n| n > 0.0) && r.iter().sum::<f64>() == partitions as f64
    });
    assert!(
        ok,
        "{what}: workers did not share the {partitions} partitions: {}",
        describe(ws)
    );
}

/// Waits until the producer has acknowledged `more` records beyond what it had now.
pub fn let_records_flow(p: &ContinuousProducer, more: usize) {
    let target = p.produced() + more;
    assert!(
        wait_until(LONG, Duration::from_millis(100), || p.produced() >= target
            || p.is_finished()),
        "producer stalled at {}",
        p.produced()
    );
}

/// Waits until group `app` has committed every partition of `input` up to its end: every
/// input record is processed and its output acknowledged (offsets are committed only after
/// that), so the sink holds everything the workers will write without another rebalance.
pub fn wait_all_committed(bootstrap: &str, app: &str, input: &str, partitions: i32) {
    let mut last = String::new();
    let ok = wait_until(LONG, Duration::from_millis(500), || {
        let Ok(committed) = committed_offsets(bootstrap, app, input) else {
            return false;
        };
        let behind: Vec<String> = (0..partitions)
            .filter_map(|p| match watermarks(bootstrap, input, p) {
                Ok((_, high)) => {
                    let at = committed.get(&p).copied().unwrap_or(-1);
                    (at < high).then(|| format!("{input}/{p} committed {at} of {high}"))
                }
                Err(e) => Some(format!("{input}/{p}: {e:#}")),
            })
            .collect();
        last = behind.join(", ");
        behind.is_empty()
    });
    assert!(ok, "{app} did not commit its input to the end: {last}");
}
