//! The one timing method of the Tributary and Kafka Streams runs: poll the process's count of
//! input records processed every [`POLL`] over HTTP, and time from the first poll that sees
//! more than 0 to the first that sees all of them.

use std::time::{Duration, Instant};

use integration_tests::{http_get, parse_metric};

use integration_tests::procstat::CpuSnap;

/// The poll interval, and so the resolution of the Tributary and Kafka Streams times.
pub const POLL: Duration = Duration::from_millis(50);

/// How long a run may take to process every record.
const DEADLINE: Duration = Duration::from_secs(1800);

/// A process polled by [`measure`].
pub struct Polled<'a> {
    /// Its label in the log.
    pub label: &'a str,
    pub pid: u32,
    pub broker_pid: u32,
    /// Its HTTP address (`/metrics`).
    pub http: &'a str,
    /// The metric that counts input records processed.
    pub counter: &'a str,
    pub spawned: Instant,
}

/// What [`measure`] saw.
pub struct Measured {
    /// Seconds from the first poll with records to the first with all of them.
    pub seconds: f64,
    /// Records already counted at the first poll.
    pub at_first: f64,
    /// When the first poll with records came, after the spawn.
    pub first_after_spawn: f64,
    /// `/metrics` at the first and the last poll.
    pub first_body: String,
    pub last_body: String,
    /// [`CpuSnap::report`] over the measured interval.
    pub cpu: String,
}

/// `GET /metrics` of `http`, if it answers 200.
pub fn metrics_of(http: &str) -> Option<String> {
    match http_get(http, "/metrics", Duration::from_secs(5)) {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

/// Polls `p`'s `/metrics` every [`POLL`] until its counter reaches `records`. `exited` says
/// whether (and how) the process ended, which fails the run; `on_first` runs right after the
/// first poll that sees records (e.g. to start `perf`).
pub fn measure(
    p: &Polled,
    records: u64,
    mut exited: impl FnMut() -> Option<String>,
    mut on_first: impl FnMut(),
) -> Result<Measured, String> {
    let deadline = Instant::now() + DEADLINE;
    let mut first: Option<(Instant, f64, String, CpuSnap)> = None;
    let mut next = Instant::now();
    loop {
        next += POLL;
        if let Some(status) = exited() {
            return Err(format!("{}: the process exited ({status})", p.label));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{}: not all {records} records processed within {} s",
                p.label,
                DEADLINE.as_secs()
            ));
        }
        if let Some(body) = metrics_of(p.http) {
            let now = Instant::now();
            let n = parse_metric(&body, p.counter).unwrap_or(0.0);
            if first.is_none() && n > 0.0 {
                first = Some((now, n, body.clone(), CpuSnap::take(p.pid, p.broker_pid)));
                on_first();
            }
            if n >= records as f64 {
                if first.as_ref().is_some_and(|f| f.0 == now) {
                    return Err(format!(
                        "{}: all {records} records were processed before the first poll saw any: too few to time (BENCH_RECORDS)",
                        p.label
                    ));
                }
                let cpu_end = CpuSnap::take(p.pid, p.broker_pid);
                let (t0, at_first, first_body, cpu0) = first.expect("set at n > 0");
                return Ok(Measured {
                    seconds: now.duration_since(t0).as_secs_f64(),
                    at_first,
                    first_after_spawn: t0.duration_since(p.spawned).as_secs_f64(),
                    first_body,
                    last_body: body,
                    cpu: CpuSnap::report(&cpu0, &cpu_end, p.label),
                });
            }
        }
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}
