//! Timers and idle time, driven through the test kit's wall clock (no broker): windows that
//! close and dedup marks that expire when a task receives nothing more
//! (`processing.idle_advance_ms`), and the `Processor` timer hook of the library API.

use std::time::Duration;

use serde_json::json;
use tributary::config::OnError;
use tributary::testkit::{TaskError, TestDriver, TestRecord};
use tributary::types::OutputRecord;
use tributary::{config, Context, ProcessError, Processor, Punctuation, Record, Topology};

const SECOND: Duration = Duration::from_secs(1);

/// A driver for pipeline `p` reading `in` and writing `out` with `steps`, with
/// `processing.idle_advance_ms = idle_ms`.
fn driver(idle_ms: u64, steps: &str) -> TestDriver {
    let toml = format!(
        "[app]\nid = \"t\"\n[kafka]\nbootstrap_servers = \"embedded\"\n\
         [processing]\nidle_advance_ms = {idle_ms}\n\
         [[pipeline]]\nname = \"p\"\nsource = {{ topics = [\"in\"] }}\n\
         sink = {{ topic = \"out\" }}\nsteps = [ {steps} ]\n"
    );
    let cfg = config::load_str(&toml).unwrap_or_else(|e| panic!("{e:?}"));
    TestDriver::from_config(&cfg).unwrap_or_else(|e| panic!("{e:?}"))
}

const FINAL_WINDOWS: &str = r#"{ aggregate = { window = { kind = "tumbling", size = "10s", grace = "2s" }, fields = { n = "count()" }, emit = "final" } }"#;

fn keyed(records: &[TestRecord]) -> Vec<(String, serde_json::Value)> {
    records
        .iter()
        .map(|r| (r.key_str().unwrap_or_default().to_string(), r.json()))
        .collect()
}

/// Advances the driver's wall clock by `total`, a second at a time (as a worker ticks its
/// tasks every few milliseconds).
fn idle_for(d: &mut TestDriver, total: Duration) {
    let mut left = total;
    while !left.is_zero() {
        let step = left.min(SECOND);
        d.advance_wall_clock(step).unwrap();
        left -= step;
    }
}

/// With `idle_advance_ms`, a final window is emitted once the partition has been quiet long
/// enough for stream time, moving with the wall clock from the last record, to pass the
/// window's end plus grace; without it, the window waits for a record however long it takes.
#[test]
fn an_idle_task_closes_and_emits_its_final_window_with_the_wall_clock() {
    let mut d = driver(5_000, FINAL_WINDOWS);
    d.pipe("in", Some("a"), "{}", 1_000).unwrap();
    d.pipe("in", Some("a"), "{}", 3_000).unwrap();
    d.pipe("in", Some("b"), "{}", 4_000).unwrap();
    // Quiet for less than the threshold: stream time stays at the last record's time.
    idle_for(&mut d, Duration::from_millis(4_999));
    assert_eq!(d.stream_time("p", 0), Some(4_000));
    // Quiet for 5 s: stream time is 4 s + 5 s, short of the window's close (10 s + 2 s).
    d.advance_wall_clock(Duration::from_millis(1)).unwrap();
    assert_eq!(d.stream_time("p", 0), Some(9_000));
    assert!(d.read("out").is_empty(), "[0,10s) closes at 12 s");
    idle_for(&mut d, Duration::from_millis(2_999));
    assert_eq!(d.stream_time("p", 0), Some(11_999));
    assert!(d.read("out").is_empty());
    d.advance_wall_clock(Duration::from_millis(1)).unwrap();
    let out = d.read("out");
    assert_eq!(
        keyed(&out),
        [
            (
                "a".into(),
                json!({"n":2,"window_start":0,"window_end":10000})
            ),
            (
                "b".into(),
                json!({"n":1,"window_start":0,"window_end":10000})
            ),
        ]
    );
    assert_eq!(out[0].timestamp, Some(9_999));
    // Exactly as if a record had closed it: purged (only the stream time is left), emitted
    // once, and a record for it now is late.
    assert_eq!(d.store_entries("p").len(), 1);
    idle_for(&mut d, Duration::from_secs(30));
    assert!(d.read("out").is_empty(), "emitted once");
    d.pipe("in", Some("a"), "{}", 9_000).unwrap();
    assert_eq!(d.late_records("p"), 1);

    // The same input without idle_advance_ms: nothing closes, however long the wait.
    let mut d = driver(0, FINAL_WINDOWS);
    d.pipe("in", Some("a"), "{}", 1_000).unwrap();
    d.advance_wall_clock(Duration::from_secs(3_600)).unwrap();
    d.advance_wall_clock(Duration::from_secs(3_600)).unwrap();
    assert!(d.read("out").is_empty());
    assert_eq!(d.stream_time("p", 0), Some(1_000));
}

/// A record re-starts the quiet spell, and idle time counts from its stream time; a record
/// older than the idle-advanced stream time does not move it back.
#[test]
fn idle_time_counts_from_the_last_record() {
    let mut d = driver(1_000, FINAL_WINDOWS);
    d.pipe("in", Some("a"), "{}", 1_000).unwrap();
    idle_for(&mut d, Duration::from_secs(3));
    assert_eq!(d.stream_time("p", 0), Some(4_000));
    d.pipe("in", Some("a"), "{}", 2_000).unwrap();
    assert_eq!(d.stream_time("p", 0), Some(4_000), "never back");
    d.advance_wall_clock(Duration::from_millis(999)).unwrap();
    assert_eq!(d.stream_time("p", 0), Some(4_000), "quiet again for < 1 s");
    d.advance_wall_clock(Duration::from_millis(1)).unwrap();
    assert_eq!(d.stream_time("p", 0), Some(5_000));
    idle_for(&mut d, Duration::from_secs(7));
    assert_eq!(
        keyed(&d.read("out")),
        [(
            "a".into(),
            json!({"n":2,"window_start":0,"window_end":10000})
        )]
    );
}

/// A window left open when the worker stopped closes after the restart without any new
/// record: the stream time kept in the step's store carries on, and idle time moves it.
#[test]
fn a_window_open_at_a_restart_closes_while_idle() {
    let mut d = driver(1_000, FINAL_WINDOWS);
    d.pipe("in", Some("a"), "{}", 8_000).unwrap();
    d.restart().unwrap();
    assert_eq!(d.stream_time("p", 0), None, "nothing in memory yet");
    d.advance_wall_clock(Duration::from_millis(10)).unwrap();
    assert_eq!(
        d.stream_time("p", 0),
        Some(8_000),
        "carried on from the store"
    );
    idle_for(&mut d, Duration::from_secs(3));
    assert_eq!(d.stream_time("p", 0), Some(11_000));
    assert!(d.read("out").is_empty());
    idle_for(&mut d, SECOND);
    assert_eq!(
        keyed(&d.read("out")),
        [(
            "a".into(),
            json!({"n":1,"window_start":0,"window_end":10000})
        )]
    );
}

/// Idle time purges dedup marks as records would: a value seen 10 s ago (in idle-advanced
/// stream time) passes again; without idle advance the same repeat is dropped.
#[test]
fn dedup_marks_expire_while_idle() {
    let dedup = r#"{ dedup = { key = "id", within = "10s" } }"#;
    for (idle_ms, passes) in [(1_000, true), (0, false)] {
        let mut d = driver(idle_ms, dedup);
        d.pipe("in", Some("k"), r#"{"id":"x","t":1}"#, 1_000)
            .unwrap();
        assert_eq!(
            d.store_entries("p-0").len(),
            2,
            "the mark and the stream time"
        );
        idle_for(&mut d, Duration::from_secs(10));
        let marks = d.store_entries("p-0").len() - 1;
        assert_eq!(marks, usize::from(!passes), "idle_advance_ms = {idle_ms}");
        d.pipe("in", Some("k"), r#"{"id":"x","t":2}"#, 1_500)
            .unwrap();
        let out: Vec<_> = d.read("out").iter().map(TestRecord::json).collect();
        let mut want = vec![json!({"id":"x","t":1})];
        if passes {
            want.push(json!({"id":"x","t":2}));
        }
        assert_eq!(out, want, "idle_advance_ms = {idle_ms}");
    }
}

/// A filter before the window: the records it drops still move the task's stream time, but
/// the window's own stream time moves only with the records it sees, and with idle time.
#[test]
fn steps_keep_their_own_stream_time_and_move_together_when_idle() {
    let mut d = driver(1_000, &format!(r#"{{ filter = "keep" }}, {FINAL_WINDOWS}"#));
    d.pipe("in", Some("a"), r#"{"keep":true}"#, 1_000).unwrap();
    d.pipe("in", Some("a"), r#"{"keep":false}"#, 50_000)
        .unwrap();
    assert_eq!(d.stream_time("p", 0), Some(50_000));
    assert!(
        d.read("out").is_empty(),
        "a filtered-out record does not close the window"
    );
    // Idle for 11 s: the window's stream time moves from 1 s to 12 s.
    idle_for(&mut d, Duration::from_secs(10));
    assert!(d.read("out").is_empty());
    idle_for(&mut d, SECOND);
    assert_eq!(
        keyed(&d.read("out")),
        [(
            "a".into(),
            json!({"n":1,"window_start":0,"window_end":10000})
        )]
    );
}

/// A library processor with both kinds of timer: it counts records in a store, and each
/// punctuation sends the count with the clock's time.
struct Ticker;

impl Processor for Ticker {
    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        ctx.schedule(Punctuation::WallClock, Duration::from_millis(100));
        ctx.schedule(Punctuation::StreamTime, Duration::from_secs(1));
        Ok(())
    }

    fn process(&mut self, _: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let mut store = ctx.store::<u64>("count")?;
        let n = store.get("n")?.unwrap_or(0);
        store.put("n", &(n + 1))?;
        Ok(())
    }

    fn punctuate(
        &mut self,
        kind: Punctuation,
        now: i64,
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        let n = ctx.store::<u64>("count")?.get("n")?.unwrap_or(0);
        let kind = match kind {
            Punctuation::WallClock => "wall",
            Punctuation::StreamTime => "stream",
        };
        ctx.send(OutputRecord::new(
            "ticks",
            Some(kind.as_bytes().to_vec()),
            Some(format!("{now}:{n}").into_bytes()),
        ));
        Ok(())
    }
}

fn ticks(d: &mut TestDriver) -> Vec<String> {
    d.read("ticks")
        .iter()
        .map(|r| format!("{} {}", r.key_str().unwrap(), r.value_str().unwrap()))
        .collect()
}

/// Wall-clock timers fire by the driver's clock whether records arrive or not; stream-time
/// timers fire when stream time first becomes known and then at each multiple of their
/// interval that it reaches, and see the state of the records before them.
#[test]
fn processors_get_wall_clock_and_stream_time_punctuations() {
    let topology = Topology::new("ticker", ["in"], |_| Ticker)
        .store("count")
        .sink("ticks");
    let mut d = TestDriver::new("app", vec![topology]);
    d.pipe("in", None, "x", 500).unwrap();
    assert_eq!(ticks(&mut d), ["stream 500:1"]);
    d.pipe("in", None, "x", 900).unwrap();
    d.pipe("in", None, "x", 1_000).unwrap();
    d.pipe("in", None, "x", 3_700).unwrap();
    assert_eq!(ticks(&mut d), ["stream 1000:3", "stream 3700:4"]);
    // The first wall-clock point is an interval after the task's first tick (at 0).
    d.advance_wall_clock(Duration::from_millis(99)).unwrap();
    assert!(ticks(&mut d).is_empty());
    d.advance_wall_clock(Duration::from_millis(1)).unwrap();
    d.advance_wall_clock(Duration::from_millis(150)).unwrap();
    assert_eq!(ticks(&mut d), ["wall 100:4", "wall 250:4"]);
    // Missed points are skipped: one punctuation after a long pause.
    d.advance_wall_clock(Duration::from_secs(10)).unwrap();
    assert_eq!(ticks(&mut d), ["wall 10250:4"]);
    // Stream time does not move with the wall clock unless idle_advance_ms says so.
    assert_eq!(d.stream_time("ticker", 0), Some(3_700));
}

/// Fails every punctuation after writing to its store.
struct FailingTimer(ProcessError);

impl Processor for FailingTimer {
    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        ctx.schedule(Punctuation::WallClock, Duration::from_millis(100));
        Ok(())
    }

    fn process(&mut self, _: &Record<'_>, _: &mut Context<'_>) -> Result<(), ProcessError> {
        Ok(())
    }

    fn punctuate(
        &mut self,
        _: Punctuation,
        _: i64,
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        ctx.store::<u64>("s")?.put("written", &1)?;
        ctx.send(OutputRecord::new("out", None, Some(b"sent".to_vec())));
        Err(self.0.clone())
    }
}

fn failing(error: ProcessError, on_error: OnError) -> TestDriver {
    let topology = Topology::new("failing", ["in"], move |_| FailingTimer(error.clone()))
        .store("s")
        .sink("out");
    let mut d = TestDriver::new("app", vec![topology]).on_error(on_error, "app-dlq");
    d.pipe("in", None, "x", 1).unwrap();
    d
}

/// A failing punctuation leaves nothing behind (no state, no output). A fatal error stops the
/// task whatever on_error says; a bad-record error stops it under "fail" with an error that
/// names the task, the pipeline and the punctuation, and is dropped under "skip" and "dlq"
/// (there is no record to dead-letter).
#[test]
fn a_failing_punctuation_follows_the_error_policy() {
    let fatal = ProcessError::Fatal("the disk is gone".into());
    let bad = ProcessError::record("timer", "no good");

    let mut d = failing(fatal, OnError::Skip);
    let err = d.advance_wall_clock(SECOND).unwrap_err();
    assert!(matches!(err, TaskError::Fatal { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "task 0_0: the wall-clock punctuation at 1000: the disk is gone"
    );

    let mut d = failing(bad.clone(), OnError::Fail);
    let err = d.advance_wall_clock(SECOND).unwrap_err();
    assert_eq!(
        err.to_string(),
        "task 0_0 failed in pipeline failing at the wall-clock punctuation at 1000, step \
         timer: no good"
    );

    for policy in [OnError::Skip, OnError::Dlq] {
        let mut d = failing(bad.clone(), policy);
        d.advance_wall_clock(SECOND).unwrap();
        d.advance_wall_clock(SECOND).unwrap();
        assert!(d.read("out").is_empty(), "{policy:?}: output dropped");
        assert!(
            d.read("app-dlq").is_empty(),
            "{policy:?}: nothing to dead-letter"
        );
        assert_eq!(d.store_get::<u64>("s", 0, b"written"), None, "{policy:?}");
    }
}

/// A final window whose output fails when an idle punctuation emits it (here its sink
/// partitioner needs a field the aggregate does not produce) stops the task under
/// on_error = "fail", naming the punctuation and the step; under "skip" it is dropped, and the
/// window stays in the store (its purge is undone with the failed output).
#[test]
fn a_pipeline_whose_idle_emission_fails_follows_the_error_policy() {
    let toml = |on_error: &str| {
        format!(
            "[app]\nid = \"t\"\n[kafka]\nbootstrap_servers = \"embedded\"\n\
             [processing]\nidle_advance_ms = 1000\non_error = \"{on_error}\"\n\
             [[pipeline]]\nname = \"p\"\nsource = {{ topics = [\"in\"] }}\n\
             sink = {{ topic = \"out\", partitioner = \"field:region\" }}\nsteps = [ {FINAL_WINDOWS} ]\n"
        )
    };
    let cfg = config::load_str(&toml("fail")).unwrap_or_else(|e| panic!("{e:?}"));
    let mut d = TestDriver::from_config(&cfg).unwrap();
    d.pipe("in", Some("a"), "{}", 1_000).unwrap();
    let mut err = None;
    for _ in 0..20 {
        if let Err(e) = d.advance_wall_clock(SECOND) {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("the window's emission fails").to_string();
    assert_eq!(
        err,
        "task 0_0 failed in pipeline p at the stream-time punctuation at 12000, step \
         sink.partitioner: partitioner field:region: the value has no field `region` (or it is \
         null)"
    );

    let cfg = config::load_str(&toml("skip")).unwrap_or_else(|e| panic!("{e:?}"));
    let mut d = TestDriver::from_config(&cfg).unwrap();
    d.pipe("in", Some("a"), "{}", 1_000).unwrap();
    idle_for(&mut d, Duration::from_secs(20));
    assert!(d.read("out").is_empty());
    assert_eq!(
        d.store_entries("p").len(),
        2,
        "the window and the stream time"
    );
}

/// A worker that stops running for a while (SIGSTOP, a frozen VM, a long pause of the whole
/// process) or whose system clock steps forward did not see its input as quiet meanwhile: its
/// fetcher stopped too, and the records produced during the gap are still in Kafka. A single
/// tick that comes long after the previous one (here 10 minutes; a worker ticks every few tens
/// of milliseconds) must not count the gap as idle time, or the windows close before those
/// records are fetched, and they are dropped as late.
#[test]
fn a_stalled_worker_does_not_count_the_stall_as_idle_time() {
    let mut d = driver(1_000, FINAL_WINDOWS);
    d.pipe("in", Some("a"), "{}", 1_000).unwrap();
    d.advance_wall_clock(Duration::from_millis(500)).unwrap();
    // The worker is stopped for 10 minutes; the first tick after it runs again.
    d.advance_wall_clock(Duration::from_secs(600)).unwrap();
    assert_eq!(
        d.stream_time("p", 0),
        Some(1_000),
        "the stall is not quiet input"
    );
    assert!(d.read("out").is_empty(), "[0,10s) must not close yet");
    // A record produced during the stall arrives with the next fetch.
    d.pipe("in", Some("a"), "{}", 5_000).unwrap();
    idle_for(&mut d, Duration::from_secs(12));
    assert_eq!(
        keyed(&d.read("out")),
        [(
            "a".into(),
            json!({"n":2,"window_start":0,"window_end":10000})
        )],
        "the record produced during the stall counts"
    );
}

/// A record that fails after it gave its event time (here the filter in front of the window
/// fails on it) leaves nothing behind under on_error = "skip", stream time included: the
/// window still closes after `end + grace - t` = 11 s of quiet from the last good record at
/// `t` = 1 s, not later by the idle threshold.
#[test]
fn a_skipped_record_does_not_hold_back_idle_time() {
    let toml = format!(
        "[app]\nid = \"t\"\n[kafka]\nbootstrap_servers = \"embedded\"\n\
         [processing]\nidle_advance_ms = 1000\non_error = \"skip\"\n\
         [[pipeline]]\nname = \"p\"\nsource = {{ topics = [\"in\"] }}\n\
         sink = {{ topic = \"out\" }}\nsteps = [ {{ filter = \"x > 0\" }}, {FINAL_WINDOWS} ]\n"
    );
    let cfg = config::load_str(&toml).unwrap_or_else(|e| panic!("{e:?}"));
    let mut d = TestDriver::from_config(&cfg).unwrap();
    d.pipe("in", Some("a"), r#"{"x":1}"#, 1_000).unwrap();
    // Fails in the filter (`x` is not a number), skipped.
    d.pipe("in", Some("a"), r#"{"x":"no"}"#, 5_000).unwrap();
    assert_eq!(d.stream_time("p", 0), Some(1_000));
    idle_for(&mut d, Duration::from_secs(11));
    assert_eq!(d.stream_time("p", 0), Some(12_000));
    assert_eq!(
        keyed(&d.read("out")),
        [(
            "a".into(),
            json!({"n":1,"window_start":0,"window_end":10000})
        )],
        "stream time is past the window's end plus grace"
    );
}

/// Its `init` fails with a bad-record error; otherwise it schedules a wall-clock timer.
struct FailingInit;

impl Processor for FailingInit {
    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        ctx.schedule(Punctuation::WallClock, Duration::from_millis(100));
        Err(ProcessError::record("init", "not ready"))
    }

    fn process(&mut self, _: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        ctx.send(OutputRecord::new("out", None, Some(b"processed".to_vec())));
        Ok(())
    }
}

/// A failing `init` has no record to skip or dead-letter, and is never called again: under
/// every on_error the task stops with an error naming it, rather than process records without
/// the timers (and the stream time) its processor set up there.
#[test]
fn a_failing_init_stops_the_task_whatever_on_error_says() {
    for policy in [OnError::Fail, OnError::Skip, OnError::Dlq] {
        let topology = Topology::new("init", ["in"], |_| FailingInit).sink("out");
        let mut d = TestDriver::new("app", vec![topology]).on_error(policy, "app-dlq");
        let err = d.pipe("in", None, "x", 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "task 0_0 failed in pipeline init at init, step init: not ready",
            "{policy:?}"
        );
        assert!(d.read("out").is_empty(), "{policy:?}: no record processed");
    }
}
