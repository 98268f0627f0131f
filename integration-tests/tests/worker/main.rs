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
mod harness;
mod outage;
mod pipelines;
mod rebalance;
mod recovery;
mod totals;

use std::collections::HashMap;
use std::time::Duration;

use integration_tests::{reached, KeyedView, Totals, WorkerProcess};

/// Generous bound for anything that should take seconds (machines here are noisy).
pub const LONG: Duration = Duration::from_secs(300);
/// Bound for a worker to join and become ready.
pub const READY: Duration = Duration::from_secs(180);

pub const RUNNING: &str = "tributary_tasks{state=\"running\"}";
pub const CONSUMED: &str = "tributary_records_consumed_total";
pub const RESTORED: &str = "tributary_restored_records_total";

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
                    .map_or(true, |c| c < e.count as f64)
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
