//! The limits, in this process: the raw consumer (reads every record) and the raw pipe (reads
//! every record and produces the stateless job's share of them to a topic), with the worker's
//! own consumer and producer settings (`tributary::kafka::client`), so that fetch and produce
//! settings are the worker's by construction. Timed exactly, from the first record received to
//! the last.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::{free_port, unique_name, Broker};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, DeliveryResult};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message};

use crate::table::{Row, System};
use crate::verify::StatelessExpect;
use crate::worker::{worker_toml, AGGREGATE_STEPS, AT_LEAST_ONCE};
use crate::INPUT;
use integration_tests::procstat::{peak_rss_mib, status_kib, CpuSnap};

/// The worker's consumer and producer settings for a config that differs from the worker
/// runs' only in the app id (= group id).
fn client_configs(broker: &Broker) -> (ClientConfig, ClientConfig) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_path = dir.path().join("raw.toml");
    let toml = worker_toml(
        &unique_name("bench-raw"),
        &broker.bootstrap(),
        &dir.path().join("state"),
        &format!("127.0.0.1:{}", free_port()),
        None,
        AGGREGATE_STEPS,
        AT_LEAST_ONCE,
    );
    std::fs::write(&cfg_path, toml).expect("write config");
    let cfg = tributary::config::load(&[cfg_path]).unwrap_or_else(|issues| {
        let issues: Vec<String> = issues.iter().map(|i| i.to_string()).collect();
        panic!("raw consumer config: {}", issues.join("; "))
    });
    let mut consumer = tributary::kafka::client::consumer(&cfg, &broker.bootstrap(), 0);
    if let Ok(debug) = std::env::var("BENCH_RDKAFKA_DEBUG") {
        consumer
            .set("debug", debug)
            .set_log_level(RDKafkaLogLevel::Debug);
    }
    let producer = tributary::kafka::client::producer(&cfg, &broker.bootstrap(), 0, None);
    (consumer, producer)
}

/// `k=v` settings of a client, sorted, without the bootstrap servers.
pub fn settings(c: &ClientConfig) -> String {
    let mut s: Vec<String> = c
        .config_map()
        .iter()
        .filter(|(k, _)| **k != "bootstrap.servers")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    s.sort();
    s.join(" ")
}

/// Prints the raw consumer's and the raw pipe's producer settings.
pub fn print_settings(broker: &Broker) {
    let (consumer, producer) = client_configs(broker);
    println!(
        "  raw consumer settings (tributary::kafka::client::consumer): {}",
        settings(&consumer)
    );
    println!(
        "  raw pipe producer settings (tributary::kafka::client::producer): {}",
        settings(&producer)
    );
}

/// librdkafka's log lines (`BENCH_RDKAFKA_DEBUG=fetch,...` turns its debug contexts on) on
/// stderr, with the time since the client was created.
struct LogContext(Instant);

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        eprintln!(
            "{:10.6} {level:?} {fac} {message}",
            self.0.elapsed().as_secs_f64()
        );
    }
}

impl rdkafka::consumer::ConsumerContext for LogContext {}

/// Counts the raw pipe's delivery reports.
#[derive(Default)]
struct Acks {
    ok: AtomicU64,
    failed: AtomicU64,
}

struct AckContext(Arc<Acks>);

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.0.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// What reading the whole topic took.
struct Read {
    seconds: f64,
    cpu: String,
    /// Times `poll` blocked over 1 ms (the local queue was empty) and for how long in total.
    waits: u64,
    waited: Duration,
    /// Records between two such waits: median and max.
    burst_median: u64,
    burst_max: u64,
}

/// Subscribes `consumer` to the input in a fresh group and polls until `records` records came,
/// calling `each` on each.
fn read_all(
    consumer: &BaseConsumer<LogContext>,
    records: u64,
    broker_pid: u32,
    mut each: impl FnMut(&BorrowedMessage) -> Result<(), String>,
) -> Result<Read, String> {
    consumer.subscribe(&[INPUT]).map_err(|e| e.to_string())?;
    let me = std::process::id();
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut n = 0u64;
    let mut first: Option<(Instant, CpuSnap)> = None;
    let (mut waits, mut waited, mut burst) = (0u64, Duration::ZERO, 0u64);
    let mut bursts: Vec<u64> = Vec::new();
    while n < records {
        let before = Instant::now();
        let polled = consumer.poll(Duration::from_millis(100));
        if first.is_some() {
            let took = before.elapsed();
            if took > Duration::from_millis(1) {
                waits += 1;
                waited += took;
                if burst > 0 {
                    bursts.push(burst);
                }
                burst = 0;
            }
        }
        match polled {
            Some(Ok(m)) => {
                if first.is_none() {
                    first = Some((Instant::now(), CpuSnap::take(me, broker_pid)));
                }
                n += 1;
                burst += 1;
                each(&m)?;
            }
            Some(Err(e)) => eprintln!("  raw consumer: {e}"),
            None => {}
        }
        if Instant::now() >= deadline {
            return Err(format!("read only {n} of {records} records in 900 s"));
        }
    }
    let last = Instant::now();
    let cpu_end = CpuSnap::take(me, broker_pid);
    bursts.push(burst);
    bursts.sort_unstable();
    let (t0, cpu0) = first.expect("records > 0");
    consumer.unsubscribe();
    Ok(Read {
        seconds: last.duration_since(t0).as_secs_f64(),
        cpu: CpuSnap::report(&cpu0, &cpu_end, "bench"),
        waits,
        waited,
        burst_median: bursts[bursts.len() / 2],
        burst_max: bursts[bursts.len() - 1],
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" {
    fn malloc_trim(pad: usize) -> i32;
}

/// Resets this process's peak RSS (`clear_refs` 5) so that `VmHWM` afterwards is the
/// clients' (plus what the bench holds); returns whether that worked and the RSS before. Memory
/// the bench freed (reading topics for the expected results) goes back to the system first.
fn reset_peak_rss() -> (bool, f64) {
    // SAFETY: malloc_trim only releases free heap memory; it takes and returns integers.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        malloc_trim(0);
    }
    let before = status_kib("self", "VmRSS").unwrap_or(0) as f64 / 1024.0;
    (std::fs::write("/proc/self/clear_refs", "5").is_ok(), before)
}

fn print_read(label: &str, records: u64, r: &Read, rss: f64, reset: (bool, f64)) {
    println!(
        "  {label}: {records} records in {:.3} s = {:.0} records/s; peak RSS {rss:.0} MiB (bench process, {} before the clients; {:.0} MiB then)",
        r.seconds,
        records as f64 / r.seconds,
        if reset.0 { "reset" } else { "NOT reset" },
        reset.1
    );
    println!("    {}", r.cpu);
    println!(
        "    poll waited for the fetcher {} times, {:.3} s ({:.0} % of the interval); records between waits: median {}, max {}",
        r.waits,
        r.waited.as_secs_f64(),
        100.0 * r.waited.as_secs_f64() / r.seconds,
        r.burst_median,
        r.burst_max
    );
}

/// The limit: a consumer with the worker's settings reads every record, in a fresh group.
pub fn raw_consumer(broker: &Broker, records: u64, run: usize) -> Row {
    let label = format!("raw consumer #{run}");
    let (config, _) = client_configs(broker);
    let reset = reset_peak_rss();
    let consumer: BaseConsumer<LogContext> = config
        .create_with_context(LogContext(Instant::now()))
        .expect("create consumer");
    let mut bytes = 0u64;
    let read = read_all(&consumer, records, broker.pid(), |m| {
        bytes += (m.key().map_or(0, |k| k.len()) + m.payload().map_or(0, |p| p.len())) as u64;
        Ok(())
    });
    drop(consumer);
    std::hint::black_box(bytes);
    let rss = peak_rss_mib("self");
    match read {
        Ok(r) => {
            print_read(&label, records, &r, rss, reset);
            Row {
                job: "the limit",
                system: System::Raw,
                label,
                vs_pipe: false,
                records,
                seconds: r.seconds,
                rss_mib: rss,
                failure: None,
            }
        }
        Err(e) => Row::failed("the limit", System::Raw, label, e),
    }
}

/// The amount of a generated record (`{"user":..,"amount":N,"ts":..}`), found without decoding
/// the JSON: the raw pipe forwards the records the stateless job passes, and no more work.
fn amount_of(payload: &[u8]) -> Option<u64> {
    const FIELD: &[u8] = b"\"amount\":";
    let at = payload.windows(FIELD.len()).position(|w| w == FIELD)? + FIELD.len();
    let digits = payload[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(None, |acc: Option<u64>, b| {
            Some(acc.unwrap_or(0) * 10 + u64::from(b - b'0'))
        });
    digits
}

/// The limit of the stateless job: a consumer with the worker's settings reads every record
/// and a producer with the worker's settings copies those with amount > 50 (found by a byte
/// scan, no JSON decoding) to `out`, as many records as the job produces. Timed from the first
/// record received to the last, as the jobs are; then every copy must be acknowledged.
pub fn raw_pipe(broker: &Broker, records: u64, out: &'static str, expect: &StatelessExpect) -> Row {
    let label = format!(
        "raw pipe: consume {records}, produce the {} with amount > 50 unchanged",
        expect.records
    );
    let fail = |e: String| {
        Row::failed(
            "the limit of the stateless job",
            System::Pipe,
            label.clone(),
            e,
        )
    };
    let (consumer_config, producer_config) = client_configs(broker);
    let reset = reset_peak_rss();
    let consumer: BaseConsumer<LogContext> = consumer_config
        .create_with_context(LogContext(Instant::now()))
        .expect("create consumer");
    let acks = Arc::new(Acks::default());
    let producer: ThreadedProducer<AckContext> = producer_config
        .create_with_context(AckContext(acks.clone()))
        .expect("create producer");
    let mut sent = 0u64;
    let read = read_all(&consumer, records, broker.pid(), |m| {
        let payload = m.payload().unwrap_or_default();
        if amount_of(payload).unwrap_or(0) <= 50 {
            return Ok(());
        }
        let mut record = BaseRecord::to(out).payload(payload);
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err((e, _)) => return Err(format!("produce to {out}: {e}")),
            }
        }
        sent += 1;
        Ok(())
    });
    let read = match read {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let acked_at = Instant::now();
    if let Err(e) = producer.flush(Duration::from_secs(120)) {
        return fail(format!("flush: {e}"));
    }
    let flush_s = acked_at.elapsed().as_secs_f64();
    drop(consumer);
    drop(producer);
    let rss = peak_rss_mib("self");
    print_read(&label, records, &read, rss, reset);
    let (ok, failed) = (
        acks.ok.load(Ordering::Relaxed),
        acks.failed.load(Ordering::Relaxed),
    );
    println!("    {sent} records produced, {ok} acknowledged ({failed} failed), the last {flush_s:.3} s after the last input record");
    if sent != expect.records || ok != sent {
        return fail(format!(
            "produced {sent}, acknowledged {ok}, expected {}",
            expect.records
        ));
    }
    match expect.check(&broker.bootstrap(), out, 1) {
        Ok(s) => println!("    verified: {s}"),
        Err(e) => return fail(e),
    }
    Row {
        job: "the limit of the stateless job",
        system: System::Pipe,
        label,
        vs_pipe: true,
        records,
        seconds: read.seconds,
        rss_mib: rss,
        failure: None,
    }
}
