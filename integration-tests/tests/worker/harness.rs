//! The harness itself: tansu starts, topics round-trip records, Drop stops the broker.
//! Needs no tributary binary.

use std::collections::HashMap;
use std::time::Duration;

use integration_tests::{unique_name, wait_until, Broker, Workload};
use serde_json::json;

fn pid_alive(pid: u32) -> bool {
    integration_tests::sig::pid_exists(pid)
}

#[test]
fn broker_round_trip_and_drop() {
    let broker = Broker::start();
    let pid = broker.pid();
    assert!(pid_alive(pid));
    assert!(broker.bootstrap().starts_with("127.0.0.1:"));

    let topic = unique_name("harness-rt");
    broker.create_topic(&topic, 3);
    let w = Workload::new(3000, 20, 1);
    broker.produce_json(&topic, &w.records);
    // A second round, with an explicit tombstone-free update of one key.
    broker.produce_json(
        &topic,
        &[(
            "user-0".to_string(),
            json!({"user": "user-0", "amount": 7, "ts": 1}),
        )],
    );

    let recs = broker.consume_all(&topic);
    assert_eq!(
        recs.len(),
        3001,
        "every produced record read back exactly once"
    );
    let partitions: std::collections::BTreeSet<i32> = recs.iter().map(|r| r.partition).collect();
    assert!(partitions.iter().all(|p| (0..3).contains(p)));
    // Offsets per partition are dense from 0 (nothing skipped, nothing read twice).
    for p in &partitions {
        let offs: Vec<i64> = recs
            .iter()
            .filter(|r| r.partition == *p)
            .map(|r| r.offset)
            .collect();
        assert_eq!(
            offs,
            (0..offs.len() as i64).collect::<Vec<_>>(),
            "partition {p}"
        );
    }
    // Multiset of (key, value) equals what was produced.
    let mut want: HashMap<(String, String), usize> = HashMap::new();
    for (k, v) in w.records.iter().chain([&(
        "user-0".to_string(),
        json!({"user": "user-0", "amount": 7, "ts": 1}),
    )]) {
        *want.entry((k.clone(), v.to_string())).or_default() += 1;
    }
    let mut got: HashMap<(String, String), usize> = HashMap::new();
    for r in &recs {
        *got.entry((r.key_str().unwrap(), r.json().unwrap().to_string()))
            .or_default() += 1;
    }
    assert_eq!(got, want);

    let last = broker.last_value_per_key(&topic);
    assert_eq!(last.len(), 20);
    assert_eq!(
        last["user-0"],
        json!({"user": "user-0", "amount": 7, "ts": 1})
    );

    // An empty topic reads as empty (and does not hang).
    let empty = unique_name("harness-empty");
    broker.create_topic(&empty, 2);
    assert!(broker.consume_all(&empty).is_empty());

    drop(broker);
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            !pid_alive(pid)
        }),
        "broker pid {pid} still exists after drop"
    );
}

#[test]
fn brokers_run_side_by_side() {
    let a = Broker::start();
    let b = Broker::start();
    assert_ne!(a.bootstrap(), b.bootstrap());
    let t = unique_name("harness-side");
    a.create_topic(&t, 1);
    b.create_topic(&t, 1);
    a.produce_json(&t, &[("k".into(), json!({"n": 1}))]);
    assert_eq!(a.consume_all(&t).len(), 1);
    assert_eq!(b.consume_all(&t).len(), 0);
}
