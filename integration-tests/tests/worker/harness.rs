//! The harness itself: the broker starts, topics round-trip records, Drop stops the broker;
//! on Kafka also restart on the same log directory, pause, and compaction within a test; the
//! real schema registry starts, keeps schemas and versions, and stops on drop.
//! Needs no tributary binary.

use std::collections::HashMap;
use std::time::Duration;

use integration_tests::{unique_name, wait_until, Broker, BrokerKind, SchemaRegistry, Workload};
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

/// Kafka only: a SIGTERM'd broker restarted on its log directory still has every record, and
/// a paused one answers again once resumed.
#[test]
fn kafka_broker_restarts_on_its_log_dir_and_pauses() {
    if BrokerKind::from_env() != BrokerKind::Kafka {
        return;
    }
    let mut broker = Broker::start();
    let topic = unique_name("harness-restart");
    broker.create_topic(&topic, 2);
    let w = Workload::new(500, 10, 2);
    broker.produce_json(&topic, &w.records);
    let first_pid = broker.pid();
    broker.stop();
    assert!(
        !pid_alive(first_pid),
        "stop() waits for the process to exit"
    );
    broker.restart();
    assert_ne!(broker.pid(), first_pid);
    assert_eq!(
        broker.consume_all(&topic).len(),
        500,
        "records survive a restart"
    );

    broker.pause();
    broker.resume();
    broker.produce_json(&topic, &w.records[..10]);
    assert_eq!(broker.consume_all(&topic).len(), 510);
}

/// Kafka only: the test settings make the log cleaner compact a compacted topic within seconds
/// (what the changelog tests rely on), and a tombstoned key disappears from it.
#[test]
fn kafka_compacts_within_a_test() {
    if BrokerKind::from_env() != BrokerKind::Kafka {
        return;
    }
    let broker = Broker::start();
    let topic = unique_name("harness-compact");
    broker.create_compacted_topic(&topic, 1);
    assert_eq!(
        broker
            .topic_config(&topic)
            .get("cleanup.policy")
            .map(String::as_str),
        Some("compact")
    );
    // Rounds of updates to 5 keys, spread over time so that segments roll between them.
    for round in 0..4 {
        let recs: Vec<(String, serde_json::Value)> = (0..200)
            .map(|i| (format!("k{}", i % 5), json!({"round": round, "i": i})))
            .collect();
        broker.produce_json(&topic, &recs);
        std::thread::sleep(Duration::from_millis(1100));
    }
    let compacted = wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
        broker.consume_all(&topic).len() < 400
    });
    assert!(
        compacted,
        "800 updates of 5 keys were not compacted within 60 s"
    );
    let last = broker.last_value_per_key(&topic);
    assert_eq!(last.len(), 5);
    assert_eq!(last["k4"], json!({"round": 3, "i": 199}));
}

/// docker/compose.yaml runs the Apache Kafka version the tests run against.
#[test]
fn compose_uses_the_tested_kafka_version() {
    let root = integration_tests::repo_root();
    let script = std::fs::read_to_string(root.join("scripts/install-kafka")).unwrap();
    let pinned = script
        .lines()
        .find_map(|l| l.trim().strip_prefix("VERSIONS=(\"${KAFKA_VERSION:-"))
        .and_then(|rest| rest.split('}').next())
        .expect("scripts/install-kafka pins a version")
        .to_string();
    let compose = std::fs::read_to_string(root.join("docker/compose.yaml")).unwrap();
    let images: Vec<&str> = compose
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: apache/kafka:"))
        .collect();
    assert!(!images.is_empty(), "compose.yaml runs apache/kafka");
    for image in images {
        assert_eq!(
            image, pinned,
            "compose.yaml's Kafka vs scripts/install-kafka's"
        );
    }
}

/// The real registry (Apicurio, in memory) through its Confluent API: registering returns an
/// id, the same schema again the same id and no new version, another schema a new id and
/// version; schemas come back by id; unknown ids and subjects are absent; Drop stops it.
#[test]
fn schema_registry_keeps_schemas_and_stops_on_drop() {
    const V1: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}"#;
    const V2: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"b","type":"string","default":""}]}"#;
    let registry = SchemaRegistry::start();
    let pid = registry.pid();
    assert!(pid_alive(pid));
    assert!(
        registry.url().starts_with("http://127.0.0.1:")
            && registry.url().ends_with("/apis/ccompat/v7"),
        "{}",
        registry.url()
    );

    let subject = format!("{}-value", unique_name("harness-registry"));
    assert!(registry.versions(&subject).is_empty());
    let id1 = registry.register(&subject, V1);
    assert_eq!(registry.register(&subject, V1), id1, "same schema, same id");
    assert_eq!(registry.versions(&subject), vec![id1]);
    let id2 = registry.register(&subject, V2);
    assert_ne!(id2, id1);
    assert_eq!(registry.versions(&subject), vec![id1, id2]);

    let as_json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
    assert_eq!(registry.schema(id1).map(|s| as_json(&s)), Some(as_json(V1)));
    assert_eq!(registry.schema(id2).map(|s| as_json(&s)), Some(as_json(V2)));
    assert_eq!(registry.schema(id1.max(id2) + 1000), None);

    drop(registry);
    assert!(!pid_alive(pid), "the registry process is gone after drop");
}
