//! Harness for Tributary's black-box integration tests.
//!
//! * [`Broker`]: a real broker on free loopback ports, one per test, stopped on drop: Apache
//!   Kafka 4.x in KRaft mode (installed from Maven Central by `scripts/install-kafka`) by
//!   default, tansu (`scripts/install-tansu`) with `TRIBUTARY_TEST_BROKER=tansu`. A Kafka
//!   broker can be stopped, restarted on its log directory, and paused.
//! * Kafka helpers ([`create_topic`], [`produce_json`], [`consume_all`],
//!   [`last_value_per_key`], [`TopicReader`], [`KeyedView`], [`ContinuousProducer`]) built on
//!   rdkafka; exact on Kafka, tolerant of tansu's deviations (see [`TopicReader::read_to_end`]).
//! * [`SchemaRegistry`]: a real Confluent-compatible schema registry (Apicurio Registry, in
//!   memory, built from Maven Central by `scripts/install-registry`) on a free loopback port,
//!   one per test, stopped on drop.
//! * [`describe_group`]: a consumer group's protocol, assignor, state and size as the broker
//!   reports them.
//! * [`Workload`]: deterministic input records and their expected per-key totals.
//! * [`WorkerProcess`]: the built `tributary` binary run as a child process (`run -c FILE`),
//!   with kill -9, SIGTERM, `/ready` and `/metrics` helpers; [`run_cli`] for one-shot commands.
//! * [`TerminalProcess`]: the binary in a pseudo-terminal (`tributary top`), its screen read
//!   through a terminal emulator and keys typed into it.
//! * [`procstat`]: peak RSS and CPU time per thread of a process, for the benches.
//!
//! Only loopback addresses (127.0.0.1) are ever used.

mod broker;
mod group;
mod kafka;
pub mod procstat;
mod pty;
mod registry;
pub mod sig;
mod worker;
mod workload;

pub use broker::{kafka_home, tansu_bin, Broker, BrokerKind};
pub use group::{describe_group, GroupDescription};
pub use kafka::{
    committed_offsets, consume_all, create_compacted_topic, create_configured_topic, create_topic,
    delete_topic, describe_topic_config, last_value_per_key, open_transaction, open_transaction_as,
    produce_json, produce_json_murmur2, produce_transaction, watermarks, ContinuousProducer,
    KeyedView, Rec, TopicReader,
};
pub use pty::TerminalProcess;
pub use registry::{registry_home, SchemaRegistry};
pub use worker::{
    http_get, http_get_with_headers, parse_metric, run_cli, run_cli_timeout, tributary_bin,
    HttpAnswer, TotalsConfig, WorkerProcess,
};
pub use workload::{
    check_at_least, check_exact, duplicates, expected_totals, reached, RecordGen, Totals, Workload,
};

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The repository root (the parent of this crate's directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration-tests has a parent directory")
        .to_path_buf()
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound, read, released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Polls `cond` every `poll_interval` until it returns true (then true) or `timeout` has
/// passed (then false, after one last try).
pub fn wait_until(
    timeout: Duration,
    poll_interval: Duration,
    mut cond: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(poll_interval);
    }
}

/// A name that is unique across tests and test runs: `<prefix>-<pid>-<n>-<nanos>`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// Serialises the heavy tests (broker + several workers) inside one test binary: on a 2-core
/// machine running them side by side only makes each slower. Light tests skip it.
/// A test that panicked while holding it does not poison it for the others.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harness_unique_names_differ() {
        assert_ne!(unique_name("a"), unique_name("a"));
    }

    #[test]
    fn harness_wait_until_times_out_and_succeeds() {
        assert!(!wait_until(
            Duration::from_millis(50),
            Duration::from_millis(10),
            || false
        ));
        let mut n = 0;
        assert!(wait_until(
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                n += 1;
                n == 3
            }
        ));
    }

    #[test]
    fn harness_tail() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
