//! Every step, window kind, format, partitioner and error policy of declarative pipelines,
//! driven through the test kit (no broker): exact outputs, out-of-order and late records.

use serde_json::json;
use tributary::config;
use tributary::pipeline::partitioner::partition_for_key;
use tributary::testkit::{TestDriver, TestRecord};

/// The `[app]`, `[kafka]` and `[processing]` tables every test config starts with.
const HEADER: &str =
    "[app]\nid = \"t\"\n[kafka]\nbootstrap_servers = \"embedded\"\n[processing]\non_error = \"dlq\"\n";

/// A driver for one pipeline `p` of app `t` (on_error = dlq unless `extra` says otherwise).
fn driver(extra: &str, pipeline: &str) -> TestDriver {
    let toml = format!(
        "{HEADER}{extra}\n[[pipeline]]\nname = \"p\"\nsource = {{ topics = [\"in\"] }}\n{pipeline}"
    );
    let cfg = config::load_str(&toml).unwrap_or_else(|e| panic!("{e:?}"));
    TestDriver::from_config(&cfg).unwrap_or_else(|e| panic!("{e:?}"))
}

/// A driver for pipeline `p` with the given steps (the inside of `steps = [ ... ]`) and sink
/// topic `out`.
fn sink_driver(steps: &str) -> TestDriver {
    driver(
        "",
        &format!("sink = {{ topic = \"out\" }}\nsteps = [ {steps} ]"),
    )
}

/// Pipes `(key, value, event time)` records into `in`; returns the values that reached `out`.
fn run(d: &mut TestDriver, input: &[(&str, &str, i64)]) -> Vec<serde_json::Value> {
    for (key, value, time) in input {
        d.pipe("in", Some(key), value, *time).unwrap();
    }
    values(&d.read("out"))
}

fn values(records: &[TestRecord]) -> Vec<serde_json::Value> {
    records.iter().map(TestRecord::json).collect()
}

fn keyed(records: &[TestRecord]) -> Vec<(String, serde_json::Value)> {
    records
        .iter()
        .map(|r| (r.key_str().unwrap_or_default().to_string(), r.json()))
        .collect()
}

#[test]
fn filter_and_map_build_new_values() {
    let mut d = sink_driver(
        r#"{ filter = "amount > 50" }, { map = "{'user': user, 'amount': amount * 2}" }"#,
    );
    d.pipe(
        "in",
        Some("u1"),
        r#"{"user":"u1","amount":70,"ts":1}"#,
        1_000,
    )
    .unwrap();
    d.pipe(
        "in",
        Some("u2"),
        r#"{"user":"u2","amount":50,"ts":2}"#,
        2_000,
    )
    .unwrap();
    d.pipe("in", Some("u3"), r#"{"user":"u3","amount":60}"#, 3_000)
        .unwrap();
    let out = d.read("out");
    assert_eq!(
        values(&out),
        [
            json!({"user":"u1","amount":140}),
            json!({"user":"u3","amount":120})
        ]
    );
    // Keys and timestamps pass through.
    assert_eq!(out[0].key_str(), Some("u1"));
    assert_eq!(out[1].timestamp, Some(3_000));
    assert!(d.read("t-dlq").is_empty());
    // CEL does not mix int and double: a fractional amount fails the map, with a hint.
    d.pipe("in", Some("u4"), r#"{"user":"u4","amount":50.5}"#, 4_000)
        .unwrap();
    let dlq = d.read("t-dlq");
    assert!(
        dlq[0]
            .header("tributary.error")
            .unwrap()
            .contains("does not mix int and double"),
        "{:?}",
        dlq[0].header("tributary.error")
    );
}

#[test]
fn record_variables_are_bound() {
    let mut d = sink_driver(
        r#"{ map = "{'k': key, 'p': partition, 'o': offset, 't': timestamp, 'h': headers['trace'], 'v': value.n}" }"#,
    );
    d.pipe_record(TestRecord {
        topic: "in".into(),
        partition: 0,
        key: Some(b"k1".to_vec()),
        value: Some(br#"{"n":5}"#.to_vec()),
        timestamp: Some(42),
        headers: vec![("trace".into(), b"abc".to_vec())],
    })
    .unwrap();
    assert_eq!(
        values(&d.read("out")),
        [json!({"k":"k1","p":0,"o":0,"t":42,"h":"abc","v":5})]
    );
}

#[test]
fn bad_records_go_to_the_dead_letter_topic_with_their_reason_and_origin() {
    let mut d = sink_driver(r#"{ filter = "amount > 50" }"#);
    d.pipe("in", Some("a"), r#"{"user":"a"}"#, 1).unwrap(); // missing field
    d.pipe("in", Some("b"), r#"{"user":"b","amount":"lots"}"#, 2)
        .unwrap(); // type error
    d.pipe("in", Some("c"), r#"{"user": oops"#, 3).unwrap(); // not JSON
    d.pipe("in", Some("d"), r#"{"user":"d","amount":99}"#, 4)
        .unwrap(); // good
    assert_eq!(values(&d.read("out")), [json!({"user":"d","amount":99})]);
    let dlq = d.read("t-dlq");
    assert_eq!(dlq.len(), 3);
    let original = [
        r#"{"user":"a"}"#,
        r#"{"user":"b","amount":"lots"}"#,
        r#"{"user": oops"#,
    ];
    for (i, r) in dlq.iter().enumerate() {
        assert_eq!(
            r.value_str(),
            Some(original[i]),
            "original bytes, unchanged"
        );
        assert_eq!(r.header("tributary.topic"), Some("in"));
        assert_eq!(r.header("tributary.partition"), Some("0"));
        assert_eq!(r.header("tributary.offset"), Some(i.to_string().as_str()));
        assert_eq!(r.header("tributary.pipeline"), Some("p"));
    }
    assert_eq!(dlq[0].header("tributary.step"), Some("steps[0].filter"));
    assert!(dlq[0]
        .header("tributary.error")
        .unwrap()
        .contains("no field `amount`"));
    assert_eq!(dlq[1].header("tributary.step"), Some("steps[0].filter"));
    assert_eq!(dlq[2].header("tributary.step"), Some("source.format"));
    assert!(dlq[2]
        .header("tributary.error")
        .unwrap()
        .starts_with("not valid JSON"));
}

#[test]
fn on_error_fail_stops_with_the_records_position_and_skip_drops_it() {
    let mut d = sink_driver(r#"{ map = "amount + 1" }"#).on_error(config::OnError::Fail, "t-dlq");
    d.pipe("in", Some("a"), r#"{"amount":1}"#, 1).unwrap();
    let e = d
        .pipe("in", Some("a"), r#"{"amount":"x"}"#, 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("in/0@1") && e.contains("steps[0].map"), "{e}");

    let mut d = sink_driver(r#"{ map = "amount + 1" }"#).on_error(config::OnError::Skip, "t-dlq");
    d.pipe("in", Some("a"), r#"{"amount":"x"}"#, 1).unwrap();
    d.pipe("in", Some("a"), r#"{"amount":1}"#, 2).unwrap();
    assert_eq!(values(&d.read("out")), [json!(2)]);
    assert!(d.read("t-dlq").is_empty());
}

#[test]
fn running_aggregate_updates_every_function() {
    let mut d = driver(
        "",
        r#"sink = { topic = "out" }
[[pipeline.steps]]
aggregate = { fields = { n = "count()", total = "sum(amount)", low = "min(amount)", high = "max(amount)", mean = "avg(amount)" } }"#,
    );
    for (k, a) in [("a", 10), ("b", 1), ("a", 30), ("a", 20)] {
        d.pipe("in", Some(k), &format!(r#"{{"amount":{a}}}"#), 1)
            .unwrap();
    }
    assert_eq!(
        keyed(&d.read("out")),
        [
            (
                "a".into(),
                json!({"n":1,"total":10,"low":10,"high":10,"mean":10.0})
            ),
            (
                "b".into(),
                json!({"n":1,"total":1,"low":1,"high":1,"mean":1.0})
            ),
            (
                "a".into(),
                json!({"n":2,"total":40,"low":10,"high":30,"mean":20.0})
            ),
            (
                "a".into(),
                json!({"n":3,"total":60,"low":10,"high":30,"mean":20.0})
            ),
        ]
    );
    // The store holds the accumulators under the plain key (what /state/<store>/<key> shows).
    let state: serde_json::Value = d.store_get("p", 0, b"a").unwrap();
    assert_eq!(
        state,
        json!({"n":3,"total":60,"low":10,"high":30,"mean":{"sum":60.0,"n":3}})
    );
}

#[test]
fn aggregate_arguments_are_expressions_and_must_be_numbers() {
    let mut d = sink_driver(
        r#"{ aggregate = { fields = { cents = "sum(double(amount) * 100.0)", top = "max(amount)" } } }"#,
    );
    d.pipe("in", Some("a"), r#"{"amount":1.5}"#, 1).unwrap();
    d.pipe("in", Some("a"), r#"{"amount":"2"}"#, 2).unwrap(); // double("2") is fine, max("2") is not
    d.pipe("in", Some("a"), r#"{"amount":true}"#, 3).unwrap();
    assert_eq!(values(&d.read("out")), [json!({"cents":150.0,"top":1.5})]);
    let dlq = d.read("t-dlq");
    assert_eq!(dlq.len(), 2);
    assert_eq!(dlq[0].header("tributary.step"), Some("steps[0].aggregate"));
    assert_eq!(
        dlq[0].header("tributary.error"),
        Some(r#"top: max(amount) needs a number, found string "2""#)
    );
    assert!(dlq[1]
        .header("tributary.error")
        .unwrap()
        .starts_with("cents: `double(amount) * 100.0`: "));
    // Nothing of a failed record is counted.
    let state: serde_json::Value = d.store_get("p", 0, b"a").unwrap();
    assert_eq!(state, json!({"cents":150.0,"top":1.5}));
}

#[test]
fn tumbling_update_emits_every_change_with_window_bounds() {
    let mut d = sink_driver(
        r#"{ aggregate = { window = { kind = "tumbling", size = "10s" }, fields = { n = "count()", total = "sum(amount)" } } }"#,
    );
    d.pipe("in", Some("a"), r#"{"amount":1}"#, 1_000).unwrap();
    d.pipe("in", Some("a"), r#"{"amount":2}"#, 9_999).unwrap();
    d.pipe("in", Some("a"), r#"{"amount":4}"#, 10_000).unwrap();
    assert_eq!(
        values(&d.read("out")),
        [
            json!({"n":1,"total":1,"window_start":0,"window_end":10000}),
            json!({"n":2,"total":3,"window_start":0,"window_end":10000}),
            json!({"n":1,"total":4,"window_start":10000,"window_end":20000}),
        ]
    );
}

#[test]
fn tumbling_final_emits_once_after_grace_takes_out_of_order_and_drops_late() {
    let mut d = sink_driver(
        r#"{ aggregate = { window = { kind = "tumbling", size = "10s", grace = "2s" }, fields = { n = "count()" }, emit = "final" } }"#,
    );
    d.pipe("in", Some("a"), "{}", 1_000).unwrap();
    d.pipe("in", Some("a"), "{}", 3_000).unwrap();
    d.pipe("in", Some("a"), "{}", 11_000).unwrap(); // stream time 11s: [0,10s) open until 12s
    d.pipe("in", Some("a"), "{}", 9_000).unwrap(); // out of order, within grace
    assert!(d.read("out").is_empty(), "nothing is final yet");
    d.pipe("in", Some("b"), "{}", 12_500).unwrap(); // stream time passes 10s + 2s
    let out = d.read("out");
    assert_eq!(
        keyed(&out),
        [(
            "a".into(),
            json!({"n":3,"window_start":0,"window_end":10000})
        )]
    );
    assert_eq!(out[0].timestamp, Some(9_999));
    // Too late for [0,10s): dropped and counted, not an error (so not dead-lettered), and the
    // window is not emitted again.
    assert_eq!(d.late_records("p"), 0);
    d.pipe("in", Some("a"), "{}", 8_000).unwrap();
    assert!(d.read("t-dlq").is_empty(), "a late record is not an error");
    assert_eq!(d.late_records("p"), 1);
    d.pipe("in", Some("c"), "{}", 30_000).unwrap();
    assert_eq!(
        keyed(&d.read("out")),
        [
            (
                "a".into(),
                json!({"n":1,"window_start":10000,"window_end":20000})
            ),
            (
                "b".into(),
                json!({"n":1,"window_start":10000,"window_end":20000})
            ),
        ]
    );
    // Closed windows are purged: only c's open window and the stream time remain.
    assert_eq!(d.store_entries("p").len(), 2);
}

#[test]
fn hopping_windows_count_a_record_in_every_window_holding_it() {
    let mut d = sink_driver(
        r#"{ aggregate = { window = { kind = "hopping", size = "10s", advance = "5s" }, fields = { n = "count()" } } }"#,
    );
    assert_eq!(
        run(&mut d, &[("a", "{}", 7_000), ("a", "{}", 12_000),]),
        [
            json!({"n":1,"window_start":0,"window_end":10000}),
            json!({"n":1,"window_start":5000,"window_end":15000}),
            json!({"n":2,"window_start":5000,"window_end":15000}),
            json!({"n":1,"window_start":10000,"window_end":20000}),
        ]
    );
}

#[test]
fn hopping_final_emits_each_window_once() {
    let mut d = sink_driver(
        r#"{ aggregate = { window = { kind = "hopping", size = "10s", advance = "5s" }, fields = { n = "count()" }, emit = "final" } }"#,
    );
    assert_eq!(
        run(
            &mut d,
            &[("a", "{}", 7_000), ("a", "{}", 12_000), ("a", "{}", 40_000)]
        ),
        [
            json!({"n":1,"window_start":0,"window_end":10000}),
            json!({"n":2,"window_start":5000,"window_end":15000}),
            json!({"n":1,"window_start":10000,"window_end":20000}),
        ]
    );
}

#[test]
fn session_windows_merge_when_a_record_bridges_them() {
    let mut d = sink_driver(
        r#"{ aggregate = { window = { kind = "session", gap = "5s", grace = "10s" }, fields = { n = "count()", total = "sum(amount)" } } }"#,
    );
    d.pipe("in", Some("a"), r#"{"amount":1}"#, 1_000).unwrap();
    d.pipe("in", Some("a"), r#"{"amount":2}"#, 9_000).unwrap(); // 8s later: a new session
    d.pipe("in", Some("a"), r#"{"amount":4}"#, 5_000).unwrap(); // within 5s of both: merges them
    d.pipe("in", Some("b"), r#"{"amount":8}"#, 5_000).unwrap(); // other key, own session
    assert_eq!(
        keyed(&d.read("out")),
        [
            (
                "a".into(),
                json!({"n":1,"total":1,"window_start":1000,"window_end":1001})
            ),
            (
                "a".into(),
                json!({"n":1,"total":2,"window_start":9000,"window_end":9001})
            ),
            (
                "a".into(),
                json!({"n":3,"total":7,"window_start":1000,"window_end":9001})
            ),
            (
                "b".into(),
                json!({"n":1,"total":8,"window_start":5000,"window_end":5001})
            ),
        ]
    );
    // One session per key is left in the store (plus the stream time).
    assert_eq!(d.store_entries("p").len(), 3);
}

#[test]
fn session_final_emits_after_gap_and_grace() {
    let mut d = sink_driver(
        r#"{ aggregate = { window = { kind = "session", gap = "5s", grace = "1s" }, fields = { n = "count()" }, emit = "final" } }"#,
    );
    d.pipe("in", Some("a"), "{}", 1_000).unwrap();
    d.pipe("in", Some("a"), "{}", 4_000).unwrap();
    d.pipe("in", Some("b"), "{}", 10_000).unwrap(); // session a ends 4001; closes at 4001+5s+1s
    assert!(d.read("out").is_empty());
    d.pipe("in", Some("b"), "{}", 10_001).unwrap();
    assert_eq!(
        keyed(&d.read("out")),
        [(
            "a".into(),
            json!({"n":2,"window_start":1000,"window_end":4001})
        )]
    );
    d.pipe("in", Some("a"), "{}", 3_000).unwrap(); // its session is closed: late
    assert!(d.read("t-dlq").is_empty(), "a late record is not an error");
    assert!(d.read("out").is_empty(), "nor does it change a result");
    assert_eq!(d.late_records("p"), 1);
}

/// A record older than stream time minus grace still counts when it falls into a session of
/// its key that is open: lateness is decided after merging (as in Kafka Streams).
#[test]
fn an_old_record_inside_an_open_session_is_not_late() {
    let mut d = sink_driver(
        r#"{ aggregate = { window = { kind = "session", gap = "10s", grace = "0s" }, fields = { n = "count()" } } }"#,
    );
    d.pipe("in", Some("a"), "{}", 100_000).unwrap();
    d.pipe("in", Some("a"), "{}", 105_000).unwrap();
    // [103000, 103001) alone would be closed (stream time 105000, no grace), but it falls
    // into the open session [100000, 105001).
    d.pipe("in", Some("a"), "{}", 103_000).unwrap();
    assert_eq!(d.late_records("p"), 0);
    assert_eq!(
        keyed(&d.read("out")).last().unwrap(),
        &(
            "a".into(),
            json!({"n":3,"window_start":100000,"window_end":105001})
        )
    );
    // Outside every open session it is late.
    d.pipe("in", Some("b"), "{}", 200_000).unwrap();
    d.pipe("in", Some("a"), "{}", 50_000).unwrap();
    assert_eq!(d.late_records("p"), 1);
}

/// Under `on_error = "fail"` a late record does not stop anything: it is dropped and counted,
/// and the results around it are exact. A record with one window still open is not late.
#[test]
fn late_records_are_dropped_and_counted_even_under_fail() {
    let mut d = sink_driver(
        r#"{ aggregate = { window = { kind = "hopping", size = "10s", advance = "5s" }, fields = { n = "count()" } } }"#,
    )
    .on_error(config::OnError::Fail, "t-dlq");
    d.pipe("in", Some("a"), "{}", 1_000).unwrap(); // [-5s,5s) and [0,10s)
    d.pipe("in", Some("a"), "{}", 12_000).unwrap(); // closes [-5s,5s) and [0,10s)
    d.pipe("in", Some("a"), "{}", 4_000).unwrap(); // late: both its windows are closed
    d.pipe("in", Some("a"), "{}", 7_000).unwrap(); // [5s,15s) is open: counted there only
    assert_eq!(d.late_records("p"), 1);
    assert_eq!(
        values(&d.read("out")),
        [
            json!({"n":1,"window_start":-5000,"window_end":5000}),
            json!({"n":1,"window_start":0,"window_end":10000}),
            json!({"n":1,"window_start":5000,"window_end":15000}),
            json!({"n":1,"window_start":10000,"window_end":20000}),
            json!({"n":2,"window_start":5000,"window_end":15000}),
        ]
    );
    assert!(d.read("t-dlq").is_empty());
}

#[test]
fn windowed_state_survives_a_restart() {
    let mut d = sink_driver(
        r#"{ aggregate = { window = { kind = "tumbling", size = "10s" }, fields = { n = "count()" }, emit = "final" } }"#,
    );
    d.pipe("in", Some("a"), "{}", 1_000).unwrap();
    d.pipe("in", Some("a"), "{}", 2_000).unwrap();
    d.restart().unwrap();
    // The stream time was kept: a record at 500 is in the still-open window.
    d.pipe("in", Some("a"), "{}", 500).unwrap();
    d.pipe("in", Some("b"), "{}", 10_000).unwrap();
    assert_eq!(
        keyed(&d.read("out")),
        [(
            "a".into(),
            json!({"n":3,"window_start":0,"window_end":10000})
        )]
    );
}

#[test]
fn dedup_drops_repeats_within_the_horizon_either_side() {
    let mut d = sink_driver(r#"{ dedup = { key = "id", within = "10s" } }"#);
    for (id, t) in [
        ("x", 1_000),
        ("x", 5_000),
        ("y", 6_000),
        ("x", 12_000),
        ("x", 3_000),
        ("y", 30_000),
    ] {
        d.pipe("in", Some("k"), &format!(r#"{{"id":"{id}","t":{t}}}"#), t)
            .unwrap();
    }
    assert_eq!(
        values(&d.read("out")),
        [
            json!({"id":"x","t":1000}),
            json!({"id":"y","t":6000}),
            json!({"id":"x","t":12000}),
            json!({"id":"y","t":30000})
        ]
    );
}

#[test]
fn key_by_repartitions_so_each_key_meets_in_one_task() {
    let mut d = driver(
        "",
        r#"sink = { topic = "out" }
steps = [ { key_by = "user" }, { aggregate = { fields = { n = "count()" } } } ]"#,
    )
    .partitions(4);
    // Input keys are unrelated to the user: records of one user arrive on several partitions.
    for (i, user) in ["a", "b", "a", "c", "a", "b"].iter().enumerate() {
        d.pipe(
            "in",
            Some(&format!("k{i}")),
            &format!(r#"{{"user":"{user}"}}"#),
            i as i64,
        )
        .unwrap();
    }
    let repartitioned = d.read("t-p-repartition");
    assert_eq!(repartitioned.len(), 6);
    for r in &repartitioned {
        assert_eq!(r.partition, partition_for_key(r.key.as_deref().unwrap(), 4));
    }
    let out = d.read("out");
    let last = |u: &str| out.iter().rfind(|r| r.key_str() == Some(u)).unwrap().json();
    assert_eq!(last("a"), json!({"n":3}));
    assert_eq!(last("b"), json!({"n":2}));
    assert_eq!(last("c"), json!({"n":1}));
}

#[test]
fn event_times_out_of_range_fail_the_record() {
    let toml = [HEADER, r#"[[pipeline]]
name = "p"
source = { topics = ["in"], time = "ts * 1000000" }
sink = { topic = "out" }
steps = [ { aggregate = { window = { kind = "tumbling", size = "1m" }, fields = { n = "count()" } } } ]"#].concat();
    let mut d = TestDriver::from_config(&config::load_str(&toml).unwrap()).unwrap();
    d.pipe("in", Some("a"), r#"{"ts":1700000000000}"#, 1)
        .unwrap();
    d.pipe("in", Some("a"), r#"{"ts":5}"#, 1).unwrap(); // 5,000,000 ms
    assert_eq!(
        values(&d.read("out")),
        [json!({"n":1,"window_start":4980000,"window_end":5040000})]
    );
    let dlq = d.read("t-dlq");
    assert_eq!(dlq[0].header("tributary.step"), Some("source.time"));
}

#[test]
fn event_time_can_come_from_the_value() {
    let toml = [HEADER, r#"[[pipeline]]
name = "p"
source = { topics = ["in"], time = "ts" }
sink = { topic = "out" }
steps = [ { aggregate = { window = { kind = "tumbling", size = "1m" }, fields = { n = "count()" } } } ]"#].concat();
    let mut d = TestDriver::from_config(&config::load_str(&toml).unwrap()).unwrap();
    d.pipe("in", Some("a"), r#"{"ts":125000}"#, 1).unwrap();
    let out = d.read("out");
    assert_eq!(
        values(&out),
        [json!({"n":1,"window_start":120000,"window_end":180000})]
    );
    assert_eq!(out[0].timestamp, Some(125_000));
}

#[test]
fn string_and_bytes_formats() {
    let toml = [HEADER, r#"[[pipeline]]
name = "p"
source = { topics = ["in"], format = "string" }
sink = { topic = "out", format = "string" }
steps = [ { filter = "value.startsWith('ok') && !['bot', 'spam'].exists(w, value.contains(w))" }, { map = "value.upperAscii() + '!'" } ]
[[pipeline]]
name = "q"
source = { topics = ["raw"], format = "bytes" }
sink = { topic = "raw-out", format = "bytes" }
steps = [ { filter = "size(value) > 1" } ]"#].concat();
    let mut d = TestDriver::from_config(&config::load_str(&toml).unwrap()).unwrap();
    d.pipe("in", None, "ok then", 1).unwrap();
    d.pipe("in", None, "not ok", 2).unwrap();
    d.pipe("in", None, "ok bot", 3).unwrap();
    let out = d.read("out");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].value_str(), Some("OK THEN!"));
    d.pipe_record(TestRecord {
        topic: "raw".into(),
        partition: 0,
        key: None,
        value: Some(vec![0xff, 0, 7]),
        timestamp: Some(1),
        headers: vec![],
    })
    .unwrap();
    d.pipe_record(TestRecord {
        topic: "raw".into(),
        partition: 0,
        key: None,
        value: Some(vec![1]),
        timestamp: Some(2),
        headers: vec![],
    })
    .unwrap();
    let out = d.read("raw-out");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].value.as_deref(), Some(&[0xff, 0, 7][..]));
}

#[test]
fn sink_partitioners_place_records() {
    let pipeline = |partitioner: &str| {
        driver(
            "",
            &format!("sink = {{ topic = \"out\", partitioner = \"{partitioner}\" }}"),
        )
        .partitions(3)
    };
    let send = |d: &mut TestDriver, key: &str, user: &str| {
        d.pipe("in", Some(key), &format!(r#"{{"user":"{user}"}}"#), 1)
            .unwrap();
    };
    let mut d = pipeline("murmur2");
    send(&mut d, "21", "x");
    assert_eq!(d.read("out")[0].partition, partition_for_key(b"21", 3));

    let mut d = pipeline("field:user");
    send(&mut d, "k", "foobar");
    assert_eq!(d.read("out")[0].partition, partition_for_key(b"foobar", 3));

    let mut d = pipeline("range:g,p");
    for k in ["alice", "mallory", "zed", "g"] {
        send(&mut d, k, "x");
    }
    let parts: Vec<i32> = d.read("out").iter().map(|r| r.partition).collect();
    assert_eq!(parts, [0, 1, 2, 1]);

    let mut d = pipeline("round_robin");
    for _ in 0..4 {
        send(&mut d, "same-key", "x");
    }
    let parts: Vec<i32> = d.read("out").iter().map(|r| r.partition).collect();
    let first = parts[0];
    assert_eq!(parts, [first, (first + 1) % 3, (first + 2) % 3, first]);

    // One key, 300 records: all three partitions get some (100 expected on each).
    let mut d = pipeline("random");
    for _ in 0..300 {
        send(&mut d, "same-key", "x");
    }
    let mut per_partition = [0; 3];
    for r in d.read("out") {
        per_partition[usize::try_from(r.partition).unwrap()] += 1;
    }
    assert!(per_partition.iter().all(|&n| n > 0), "{per_partition:?}");
}

#[test]
fn validation_reports_every_problem_with_its_key_path() {
    let toml = [HEADER, r#"[[pipeline]]
name = "p"
source = { topics = ["in"], time = "ts +" }
sink = { topic = "out", partitioner = "hash" }
steps = [
  { filter = "amount >" },
  { map = "" },
  { aggregate = { window = { kind = "tumbling" }, fields = { a = "sum()", b = "median(x)", c = "count(x)" } } },
  { dedup = { key = "id", within = "0s" } },
  { aggregate = { fields = { window_end = "count()" } } },
]"#].concat();
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), toml).expect("write config");
    let issues: Vec<String> = tributary::Worker::load_config(&[file.path().to_path_buf()])
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    let has = |prefix: &str| issues.iter().any(|i| i.starts_with(prefix));
    for prefix in [
        "pipeline[0].source.time: does not compile",
        "pipeline[0].sink.partitioner: ",
        "pipeline[0].steps[0].filter: does not compile",
        "pipeline[0].steps[1].map: ",
        "pipeline[0].steps[2].aggregate.window.size: ",
        "pipeline[0].steps[2].aggregate.fields.a: sum() needs an argument",
        "pipeline[0].steps[2].aggregate.fields.b: unknown aggregate function",
        "pipeline[0].steps[2].aggregate.fields.c: count() takes no argument",
        "pipeline[0].steps[3].dedup.within: ",
        "pipeline[0].steps[4].aggregate.fields.window_end: reserved",
    ] {
        assert!(has(prefix), "no issue starting {prefix:?} in {issues:#?}");
    }
}

#[test]
fn validation_catches_topics_named_twice_and_final_without_window() {
    let toml = [
        HEADER,
        r#"[group]
assignment = "range"
[[pipeline]]
name = "p"
source = { topics = ["in", "in"] }
sink = { topic = "out" }
steps = [ { aggregate = { fields = { n = "count()" }, emit = "final" } } ]
[[pipeline]]
name = "q"
source = { topics = ["in", "t-p-changelog"] }
sink = { topic = "t-dlq" }
"#,
    ]
    .concat();
    let cfg = config::load_str(&toml).unwrap();
    let issues: Vec<String> = TestDriver::from_config(&{
        let mut c = cfg;
        c.processing.on_error = config::OnError::Dlq;
        c
    })
    .unwrap_err()
    .iter()
    .map(ToString::to_string)
    .collect();
    let has = |prefix: &str| issues.iter().any(|i| i.starts_with(prefix));
    for prefix in [
        "pipeline[0].steps[0].aggregate.emit: ",
        "pipeline[0].source.topics[1]: topic \"in\" is already read",
        "pipeline[1].source.topics[0]: topic \"in\" is already read",
        "pipeline[1].source.topics[1]: topic \"t-p-changelog\" is the changelog",
        "pipeline[1].sink.topic: topic \"t-dlq\" is the dead-letter topic",
    ] {
        assert!(has(prefix), "no issue starting {prefix:?} in {issues:#?}");
    }
}

#[test]
fn the_worked_example_runs_as_written() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pipelines.toml");
    let cfg = config::load(&[path]).unwrap_or_else(|e| panic!("{e:?}"));
    let mut d = TestDriver::from_config(&cfg).unwrap().partitions(6);

    // docs/pipelines.md's pipeline: filter, map, key_by, per-minute window of doubled amounts.
    let click = |user: &str, amount: u32, ts: i64| {
        format!(r#"{{"user":"{user}","amount":{amount},"ts":{ts}}}"#)
    };
    d.pipe("clicks", Some("x"), &click("user-1", 60, 1_000), 0)
        .unwrap();
    d.pipe("clicks", Some("y"), &click("user-1", 40, 2_000), 0)
        .unwrap(); // filtered out
    d.pipe("clicks", Some("z"), &click("user-1", 90, 3_000), 0)
        .unwrap();
    let out = d.read("clicks-per-user");
    assert_eq!(
        keyed(&out).last().unwrap(),
        &(
            "user-1".to_string(),
            json!({"count":2,"total":300,"top":180,"mean":150.0,"window_start":0,"window_end":60000})
        )
    );

    // Orders: the repeated order id is dropped, spend is price * quantity.
    let order = |id: u32, user: &str, price: u32, q: u32| {
        format!(r#"{{"order_id":{id},"user":"{user}","price":{price},"quantity":{q}}}"#)
    };
    d.pipe("orders", None, &order(1, "user-7", 10, 2), 1_000)
        .unwrap();
    d.pipe("orders", None, &order(1, "user-7", 10, 2), 2_000)
        .unwrap();
    d.pipe("orders", None, &order(2, "user-7", 5, 1), 3_000)
        .unwrap();
    let spend = d.read("spend-by-user");
    assert_eq!(
        spend.last().unwrap().json(),
        json!({"orders":2,"spent":25,"biggest":20})
    );
    assert_eq!(
        spend.last().unwrap().partition,
        2,
        "range:user-3,user-6 puts user-7 last"
    );

    // Text logs.
    d.pipe("app-logs", None, "ERROR disk full", 1).unwrap();
    d.pipe("app-logs", None, "INFO fine", 2).unwrap();
    let errors = d.read("app-errors");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].value_str(), Some("ERROR DISK FULL"));
}

const CLICK_SCHEMA: &str = r#"{"type":"record","name":"Click","fields":[{"name":"user","type":"string"},{"name":"amount","type":"double"}]}"#;
const DOUBLED_SCHEMA: &str = r#"{"type":"record","name":"Doubled","fields":[{"name":"user","type":"string"},{"name":"doubled","type":"double"}]}"#;

/// The Avro datum of a record `{user, <double>}`: the string's zigzag length, its bytes, then
/// the double, little endian (written out by hand to pin the encoding).
fn avro_datum(user: &str, x: f64) -> Vec<u8> {
    let mut out = vec![(user.len() as u8) << 1];
    out.extend_from_slice(user.as_bytes());
    out.extend_from_slice(&x.to_le_bytes());
    out
}

/// The Confluent wire format: magic 0, the schema id (big endian), the datum.
fn wire(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

fn avro_in(d: &mut TestDriver, value: Vec<u8>) {
    d.pipe_record(TestRecord {
        topic: "in".into(),
        partition: 0,
        key: Some(b"u1".to_vec()),
        value: Some(value),
        timestamp: Some(1),
        headers: vec![],
    })
    .unwrap();
}

#[test]
fn avro_in_and_out_with_schema_files() {
    let dir = tempfile::tempdir().unwrap();
    let (in_schema, out_schema) = (
        dir.path().join("click.avsc"),
        dir.path().join("doubled.avsc"),
    );
    std::fs::write(&in_schema, CLICK_SCHEMA).unwrap();
    std::fs::write(&out_schema, DOUBLED_SCHEMA).unwrap();
    let toml = format!(
        r#"{HEADER}[[pipeline]]
name = "p"
source = {{ topics = ["in"], format = "avro", schema = "{}" }}
sink = {{ topic = "out", format = "avro", schema = "{}" }}
steps = [ {{ map = "{{'user': user, 'doubled': amount * 2.0}}" }} ]"#,
        in_schema.display(),
        out_schema.display()
    );
    let mut d = TestDriver::from_config(&config::load_str(&toml).unwrap()).unwrap();
    avro_in(&mut d, avro_datum("u1", 42.5));
    avro_in(&mut d, vec![0x04, b'u']); // truncated
    let out = d.read("out");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].value.as_deref(), Some(&avro_datum("u1", 85.0)[..]));
    let dlq = d.read("t-dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].header("tributary.step"), Some("source.format"));
    assert_eq!(dlq[0].value.as_deref(), Some(&[0x04, b'u'][..]));
}

#[test]
fn avro_with_a_schema_registry_reads_by_id_and_registers_the_sink_schema() {
    use tributary::testkit::MockSchemaRegistry;
    let registry = MockSchemaRegistry::start().unwrap();
    let in_id = registry.register("in-value", CLICK_SCHEMA);
    let dir = tempfile::tempdir().unwrap();
    let out_schema = dir.path().join("doubled.avsc");
    std::fs::write(&out_schema, DOUBLED_SCHEMA).unwrap();
    let toml = format!(
        r#"{HEADER}[[pipeline]]
name = "p"
source = {{ topics = ["in"], format = "avro", registry_url = "{url}" }}
sink = {{ topic = "out", format = "avro", registry_url = "{url}", schema = "{}" }}
steps = [ {{ filter = "amount > 1.0" }}, {{ map = "{{'user': user, 'doubled': amount * 2.0}}" }} ]"#,
        out_schema.display(),
        url = registry.url()
    );
    let mut d = TestDriver::from_config(&config::load_str(&toml).unwrap()).unwrap();
    avro_in(&mut d, wire(in_id, &avro_datum("u1", 42.5)));
    avro_in(&mut d, wire(in_id, &avro_datum("u2", 0.5))); // filtered out
    avro_in(&mut d, avro_datum("u3", 1.0)); // not in the wire format
    avro_in(&mut d, wire(in_id + 100, &avro_datum("u4", 2.0))); // unknown schema id
    let out_ids = registry.versions("out-value");
    assert_eq!(
        out_ids.len(),
        1,
        "the sink registered its schema under <topic>-value"
    );
    let out = d.read("out");
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].value.as_deref(),
        Some(&wire(out_ids[0], &avro_datum("u1", 85.0))[..])
    );
    let dlq = d.read("t-dlq");
    assert_eq!(dlq.len(), 2);
    for r in &dlq {
        assert_eq!(r.header("tributary.step"), Some("source.format"));
    }
    assert!(
        dlq[0]
            .header("tributary.error")
            .unwrap()
            .contains("wire format"),
        "{:?}",
        dlq[0].header("tributary.error")
    );
    assert!(
        dlq[1]
            .header("tributary.error")
            .unwrap()
            .contains(&format!("schema id {}", in_id + 100)),
        "{:?}",
        dlq[1].header("tributary.error")
    );
}

#[test]
fn a_record_failing_after_a_stateful_step_leaves_no_state_behind() {
    // The aggregate's output (a map) cannot be written as bytes: the sink fails every record.
    let toml = [HEADER, r#"[[pipeline]]
name = "p"
source = { topics = ["in"] }
sink = { topic = "out", format = "bytes" }
steps = [ { dedup = { key = "id", within = "1m" } }, { aggregate = { fields = { n = "count()" } } } ]"#].concat();
    let mut d = TestDriver::from_config(&config::load_str(&toml).unwrap()).unwrap();
    d.pipe("in", Some("a"), r#"{"id": 1}"#, 1_000).unwrap();
    d.pipe("in", Some("a"), r#"{"id": 2}"#, 2_000).unwrap();
    assert!(d.read("out").is_empty());
    let dlq = d.read("t-dlq");
    assert_eq!(dlq.len(), 2);
    assert_eq!(dlq[0].header("tributary.step"), Some("sink.format"));
    // Neither the count nor the dedup marks of the failed records were kept.
    assert_eq!(d.store_get::<serde_json::Value>("p", 0, b"a"), None);
    assert!(
        d.store_entries("p-0").is_empty(),
        "{:?}",
        d.store_entries("p-0")
    );
    d.commit().unwrap();
    assert!(d.store_entries("p-0").is_empty());
}
