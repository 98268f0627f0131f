//! librdkafka settings for the worker's clients: what the worker owns, what it defaults, and the
//! user's `[kafka.properties]` on top.
//!
//! [`consumer`] and [`producer`] are public, rdkafka's `ClientConfig` and all, for one user
//! outside the crate: the throughput bench builds its raw consumer and raw pipe with exactly the
//! worker's settings, so that the limit it measures is the worker's own.

use rdkafka::ClientConfig;

use crate::config::{Config, GroupProtocol, TRANSACTION_TIMEOUT_PROPERTY};

/// How long librdkafka waits before fetching a partition again once `queued.min.messages` of
/// its records are queued. One fetch response can exceed that limit; its default (1 s) then
/// idles the partition for a second at a time (measured: 420k records/s instead of 1.6-2.1M,
/// see BENCHMARKS.md).
const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// Settings common to every client: brokers, then the user's passthrough properties.
fn base(bootstrap: &str, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c.set("client.id", client_id);
    c
}

/// Properties librdkafka knows by two names, each name setting the same value. The last one set
/// wins, and rdkafka hands librdkafka its settings in no particular order: so when the user sets
/// one name, the worker's default under the other must go, or the user's value would hold in
/// some processes only.
const ALIASES: &[[&str; 2]] = &[
    ["max.partition.fetch.bytes", "fetch.message.max.bytes"],
    ["linger.ms", "queue.buffering.max.ms"],
    ["compression.type", "compression.codec"],
];

fn with_user_properties(
    mut c: ClientConfig,
    cfg: &Config,
    allowed: impl Fn(&str) -> bool,
) -> ClientConfig {
    for (k, v) in &cfg.kafka.properties {
        if allowed(k) {
            for [a, b] in ALIASES {
                if k == a {
                    c.remove(b);
                } else if k == b {
                    c.remove(a);
                }
            }
            c.set(k, v);
        }
    }
    c
}

/// Consumer-only properties, so the producer and admin clients are not handed them (librdkafka
/// would warn on every start).
fn is_consumer_property(key: &str) -> bool {
    key.starts_with("fetch.")
        || key.starts_with("queued.")
        || key.starts_with("auto.offset")
        || matches!(
            key,
            "max.poll.interval.ms"
                | "heartbeat.interval.ms"
                | "check.crcs"
                | "max.partition.fetch.bytes"
        )
}

/// Producer-only properties.
fn is_producer_property(key: &str) -> bool {
    key.starts_with("linger")
        || key.starts_with("queue.buffering")
        || key.starts_with("batch.")
        || key.starts_with("compression")
        || key.starts_with("message.timeout")
        || matches!(
            key,
            "acks"
                | "request.required.acks"
                | "retries"
                | "partitioner"
                | "max.in.flight"
                | "delivery.timeout.ms"
        )
}

/// The group member's consumer. The worker owns group id, commits, offset storage and the
/// group protocol settings; fetch settings default to values that keep throughput high
/// (BENCHMARKS.md measured them) and can be overridden.
///
/// Each source partition has its own queue (split off for the processing threads), and
/// `processing.max_buffered_records` bounds it: librdkafka fetches a partition only while fewer
/// of its records wait (`queued.min.messages`, per partition queue).
///
/// Its `client.id` names the worker's HTTP address (`<app.id>-<member>@<http.advertised>`, see
/// [`crate::cluster::client_id`]; a user's `client.id` replaces the app id) so that the other
/// workers, reading the group's description, can forward queries to it.
pub fn consumer(cfg: &Config, bootstrap: &str, member: usize) -> ClientConfig {
    let prefix = cfg.kafka.properties.get("client.id").unwrap_or(&cfg.app.id);
    let client_id = crate::cluster::client_id(prefix, member, cfg.http.advertised.as_deref());
    let mut c = base(bootstrap, &client_id);
    c.set("fetch.wait.max.ms", "10")
        .set(
            "queued.min.messages",
            cfg.processing.max_buffered_records.to_string(),
        )
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000");
    small_fetches(&mut c, cfg);
    let mut c = with_user_properties(c, cfg, |k| !is_producer_property(k));
    c.set("client.id", client_id)
        .set("group.id", &cfg.app.id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // Inputs written in transactions (a repartition topic under exactly once, or any
        // transactional producer) count only once committed.
        .set("isolation.level", "read_committed");
    set_group_protocol(&mut c, cfg);
    if let Some(instance) = &cfg.app.instance_id {
        c.set("group.instance.id", format!("{instance}-{member}"));
    }
    c
}

/// The `[group]` settings. librdkafka refuses to create a consumer-protocol consumer with any
/// of the classic settings set (`partition.assignment.strategy`, `session.timeout.ms`,
/// `heartbeat.interval.ms`), even to their defaults, so they are only set for the classic one.
fn set_group_protocol(c: &mut ClientConfig, cfg: &Config) {
    let group = &cfg.group;
    c.set("group.protocol", group.protocol.librdkafka_name());
    match group.protocol {
        GroupProtocol::Classic => {
            c.set(
                "partition.assignment.strategy",
                group.assignment.librdkafka_name(),
            )
            .set("session.timeout.ms", group.session_timeout_ms.to_string());
            // librdkafka requires heartbeat.interval.ms < session.timeout.ms; its default
            // (3 s) breaks short session timeouts.
            if !cfg.kafka.properties.contains_key("heartbeat.interval.ms") {
                let hb = (group.session_timeout_ms / 3).clamp(100, 3000);
                c.set("heartbeat.interval.ms", hb.to_string());
            }
        }
        GroupProtocol::Consumer => {
            c.set(
                "group.remote.assignor",
                group.remote_assignor.librdkafka_name(),
            );
        }
    }
}

/// Bytes one fetch asks for, over all its partitions (at least `message.max.bytes`, which
/// librdkafka requires).
const FETCH_MAX_BYTES: u64 = 1 << 20;
/// Bytes one fetch asks for per partition.
const PARTITION_FETCH_MAX_BYTES: &str = "262144";
/// Records the restore consumer keeps queued before it stops fetching.
const RESTORE_QUEUED_MIN_MESSAGES: &str = "50000";

/// Small fetches (1 MiB, 256 KiB per partition): `queued.min.messages` is only checked between
/// fetches, and with librdkafka's defaults one fetch may bring 50 MB of compressed records
/// (1 MB per partition). With small records that is hundreds of thousands of records at once,
/// each with librdkafka's per-message overhead: 110 MB for a restore (measured with heaptrack),
/// and 88 MB of a worker processing 1M keys (BENCHMARKS.md). 1 MiB per fetch still keeps
/// ahead of processing and restoring (see `integration-tests/benches/`).
fn small_fetches(c: &mut ClientConfig, cfg: &Config) {
    let message_max = cfg
        .kafka
        .properties
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    c.set(
        "fetch.max.bytes",
        FETCH_MAX_BYTES.max(message_max).to_string(),
    )
    .set("max.partition.fetch.bytes", PARTITION_FETCH_MAX_BYTES);
}

/// The changelog restore consumer: no group, reads assigned partitions only. A restore reads
/// faster than RocksDB takes the records, so librdkafka's queue fills to its limits: small
/// fetches keep it bounded.
pub(crate) fn restore_consumer(cfg: &Config, bootstrap: &str, member: usize) -> ClientConfig {
    changelog_reader(cfg, bootstrap, &format!("{}-{member}-restore", cfg.app.id))
}

/// The consumer that keeps the worker's standby replicas: a restore consumer that never stops.
pub(crate) fn standby_consumer(cfg: &Config, bootstrap: &str) -> ClientConfig {
    changelog_reader(cfg, bootstrap, &format!("{}-standby", cfg.app.id))
}

fn changelog_reader(cfg: &Config, bootstrap: &str, client_id: &str) -> ClientConfig {
    let mut c = base(bootstrap, client_id);
    c.set("fetch.wait.max.ms", "10")
        .set("queued.min.messages", RESTORE_QUEUED_MIN_MESSAGES)
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
    small_fetches(&mut c, cfg);
    let mut c = with_user_properties(c, cfg, |k| !is_producer_property(k));
    // librdkafka only assigns partitions with a group id; this consumer never subscribes or
    // commits, so it never joins that group.
    c.set("group.id", format!("{}.restore", cfg.app.id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // A restore position that no longer exists (records deleted under it) must be an error:
        // librdkafka's default would jump to the end and skip, silently, the records still
        // there. The member then stops; on restart the checkpoint is found stale (before the
        // log start) and the store is rebuilt from the beginning.
        .set("auto.offset.reset", "error")
        // Records of aborted transactions (exactly once) are not state.
        .set("isolation.level", "read_committed");
    c
}

/// The member's producer for sinks, changelogs and dead letters. Idempotent, so retries never
/// reorder or duplicate within a partition; `murmur2_random` is the Java client's partitioner,
/// so keyed records land where Kafka Streams and Java producers put them. With a
/// `transactional_id` (exactly once) it is transactional; its transactions time out after
/// `transaction.timeout.ms`, by default ten seconds (as in Kafka Streams) or two commit
/// intervals if longer: a transaction spans one commit interval, and one left open by a
/// crashed member holds back every `read_committed` reader of its partitions until then.
pub fn producer(
    cfg: &Config,
    bootstrap: &str,
    member: usize,
    transactional_id: Option<&str>,
) -> ClientConfig {
    let mut c = base(bootstrap, &format!("{}-{member}-producer", cfg.app.id));
    c.set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("partitioner", "murmur2_random");
    if transactional_id.is_some() {
        let timeout = (2 * cfg.processing.commit_interval_ms).max(10_000);
        c.set(TRANSACTION_TIMEOUT_PROPERTY, timeout.to_string());
    }
    let mut c = with_user_properties(c, cfg, |k| !is_consumer_property(k));
    c.set("enable.idempotence", "true");
    if let Some(id) = transactional_id {
        c.set("transactional.id", id);
    }
    c
}

/// An admin client for metadata and topic creation.
pub(crate) fn admin(cfg: &Config, bootstrap: &str) -> ClientConfig {
    let c = base(bootstrap, &format!("{}-admin", cfg.app.id));
    with_user_properties(c, cfg, |k| {
        !is_consumer_property(k) && !is_producer_property(k)
    })
}

#[cfg(test)]
mod tests {
    use rdkafka::consumer::BaseConsumer;

    use super::*;

    /// Nothing listens on port 9 (discard); creating a consumer does not need a broker.
    const NO_BROKER: &str = "127.0.0.1:9";

    fn config(group: &str) -> Config {
        crate::config::load_str(&format!(
            "[app]\nid = \"app\"\n[kafka]\nbootstrap_servers = \"{NO_BROKER}\"\n\
             [group]\n{group}\n[[pipeline]]\nname = \"p\"\nsource = {{ topics = [\"in\"] }}\n"
        ))
        .expect("valid config")
    }

    /// The classic protocol's settings, each with a value valid there.
    const CLASSIC_ONLY: [(&str, &str); 3] = [
        ("partition.assignment.strategy", "range"),
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "2000"),
    ];

    /// The consumer's client id names the app, the member and the worker's HTTP address,
    /// which the other workers read from the group's description; a user's `client.id`
    /// replaces the app id only.
    #[test]
    fn the_consumer_client_id_carries_the_advertised_address() {
        let mut cfg = config("");
        assert_eq!(consumer(&cfg, NO_BROKER, 1).get("client.id"), Some("app-1"));
        cfg.http.advertised = Some("worker-7:9464".into());
        assert_eq!(
            consumer(&cfg, NO_BROKER, 1).get("client.id"),
            Some("app-1@worker-7:9464")
        );
        cfg.kafka
            .properties
            .insert("client.id".into(), "billing".into());
        assert_eq!(
            consumer(&cfg, NO_BROKER, 0).get("client.id"),
            Some("billing-0@worker-7:9464")
        );
    }

    #[test]
    fn max_buffered_records_bounds_each_partition_queue() {
        let cfg = crate::config::load_str(&format!(
            "[app]\nid = \"app\"\n[kafka]\nbootstrap_servers = \"{NO_BROKER}\"\n\
             [processing]\nmax_buffered_records = 1234\n[[pipeline]]\nname = \"p\"\n\
             source = {{ topics = [\"in\"] }}\n"
        ))
        .expect("valid config");
        assert_eq!(
            consumer(&cfg, NO_BROKER, 0).get("queued.min.messages"),
            Some("1234")
        );
    }

    /// Both consumers fetch 1 MiB at a time (256 KiB per partition) unless the user says
    /// otherwise, and never less than `message.max.bytes`.
    #[test]
    fn fetches_are_small_unless_the_user_sets_them() {
        let load = |properties: &str| {
            crate::config::load_str(&format!(
                "[app]\nid = \"app\"\n[kafka]\nbootstrap_servers = \"{NO_BROKER}\"\n\
                 [kafka.properties]\n{properties}\n[[pipeline]]\nname = \"p\"\n\
                 source = {{ topics = [\"in\"] }}\n"
            ))
            .expect("valid config")
        };
        let fetch = |c: &ClientConfig| {
            (
                c.get("fetch.max.bytes").map(str::to_owned),
                c.get("max.partition.fetch.bytes").map(str::to_owned),
            )
        };
        let small = (Some("1048576".to_owned()), Some("262144".to_owned()));
        let cfg = load("");
        assert_eq!(fetch(&consumer(&cfg, NO_BROKER, 0)), small);
        assert_eq!(fetch(&restore_consumer(&cfg, NO_BROKER, 0)), small);

        let cfg = load(
            "\"max.partition.fetch.bytes\" = \"1048576\"\n\"message.max.bytes\" = \"2000000\"",
        );
        let expected = (Some("2000000".to_owned()), Some("1048576".to_owned()));
        assert_eq!(fetch(&consumer(&cfg, NO_BROKER, 0)), expected);
        assert_eq!(fetch(&restore_consumer(&cfg, NO_BROKER, 0)), expected);
    }

    /// A property set under librdkafka's other name for it replaces the worker's default
    /// instead of racing it (both names set one value; the last one set wins).
    #[test]
    fn a_property_set_under_its_alias_replaces_the_default() {
        let cfg = crate::config::load_str(&format!(
            "[app]\nid = \"app\"\n[kafka]\nbootstrap_servers = \"{NO_BROKER}\"\n\
             [kafka.properties]\n\"fetch.message.max.bytes\" = \"4194304\"\n\
             \"queue.buffering.max.ms\" = \"50\"\n\"compression.codec\" = \"zstd\"\n\
             [[pipeline]]\nname = \"p\"\nsource = {{ topics = [\"in\"] }}\n"
        ))
        .expect("valid config");
        for c in [
            consumer(&cfg, NO_BROKER, 0),
            restore_consumer(&cfg, NO_BROKER, 0),
        ] {
            assert_eq!(c.get("max.partition.fetch.bytes"), None);
            assert_eq!(c.get("fetch.message.max.bytes"), Some("4194304"));
        }
        let p = producer(&cfg, NO_BROKER, 0, None);
        assert_eq!(p.get("linger.ms"), None);
        assert_eq!(p.get("queue.buffering.max.ms"), Some("50"));
        assert_eq!(p.get("compression.type"), None);
        assert_eq!(p.get("compression.codec"), Some("zstd"));
    }

    #[test]
    fn classic_protocol_sets_assignor_and_session_timeout() {
        let c = consumer(
            &config("assignment = \"range\"\nsession_timeout_ms = 6000"),
            NO_BROKER,
            0,
        );
        assert_eq!(c.get("group.protocol"), Some("classic"));
        assert_eq!(c.get("partition.assignment.strategy"), Some("range"));
        assert_eq!(c.get("session.timeout.ms"), Some("6000"));
        assert_eq!(c.get("heartbeat.interval.ms"), Some("2000"));
        assert_eq!(c.get("group.remote.assignor"), None);
        c.create::<BaseConsumer>().expect("librdkafka accepts it");
    }

    /// The consumer protocol gets its assignor and none of the classic settings, which
    /// librdkafka refuses there.
    #[test]
    fn consumer_protocol_leaves_out_the_classic_settings() {
        let c = consumer(
            &config("protocol = \"consumer\"\nremote_assignor = \"range\""),
            NO_BROKER,
            0,
        );
        assert_eq!(c.get("group.protocol"), Some("consumer"));
        assert_eq!(c.get("group.remote.assignor"), Some("range"));
        for (key, _) in CLASSIC_ONLY {
            assert_eq!(c.get(key), None, "{key} is not set");
        }
        c.create::<BaseConsumer>().expect("librdkafka accepts it");

        // What the check guards against: any one of them makes librdkafka refuse the consumer.
        for (key, value) in CLASSIC_ONLY {
            let mut bad = c.clone();
            bad.set(key, value);
            let err = bad
                .create::<BaseConsumer>()
                .err()
                .unwrap_or_else(|| panic!("{key} with the consumer protocol is refused"));
            assert!(
                err.to_string()
                    .contains("not supported for `group.protocol=consumer`"),
                "{key}: {err}"
            );
        }
    }

    /// Exactly once: a transactional producer with a transaction timeout longer than a commit
    /// interval; at least once: an idempotent one without.
    #[test]
    fn the_producer_is_transactional_only_under_exactly_once() {
        let cfg = config("");
        let c = producer(&cfg, NO_BROKER, 1, Some("app-abc-1"));
        assert_eq!(c.get("transactional.id"), Some("app-abc-1"));
        assert_eq!(c.get("transaction.timeout.ms"), Some("10000"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        let c = producer(&cfg, NO_BROKER, 1, None);
        assert_eq!(c.get("transactional.id"), None);
        assert_eq!(c.get("transaction.timeout.ms"), None);
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        for c in [
            consumer(&cfg, NO_BROKER, 0),
            restore_consumer(&cfg, NO_BROKER, 0),
        ] {
            assert_eq!(c.get("isolation.level"), Some("read_committed"));
        }
    }

    /// The restore consumer fetches 1 MiB at a time (so its queue stays small), or a user's
    /// `message.max.bytes` if larger (librdkafka refuses less); the user's own fetch settings
    /// win.
    #[test]
    fn the_restore_consumer_fetches_little_at_a_time() {
        let props = |p: &str| {
            crate::config::load_str(&format!(
                "[app]\nid = \"app\"\n[kafka]\nbootstrap_servers = \"{NO_BROKER}\"\n\
                 [kafka.properties]\n{p}\n\
                 [[pipeline]]\nname = \"p\"\nsource = {{ topics = [\"in\"] }}\n"
            ))
            .expect("valid config")
        };
        let c = restore_consumer(&config(""), NO_BROKER, 0);
        assert_eq!(c.get("fetch.max.bytes"), Some("1048576"));
        assert_eq!(c.get("max.partition.fetch.bytes"), Some("262144"));
        assert_eq!(c.get("queued.min.messages"), Some("50000"));
        c.create::<BaseConsumer>()
            .expect("librdkafka takes the settings");
        let big = restore_consumer(&props("\"message.max.bytes\" = \"5000000\""), NO_BROKER, 0);
        assert_eq!(big.get("fetch.max.bytes"), Some("5000000"));
        big.create::<BaseConsumer>()
            .expect("fetch.max.bytes is at least message.max.bytes");
        let own = restore_consumer(&props("\"fetch.max.bytes\" = \"8000000\""), NO_BROKER, 0);
        assert_eq!(own.get("fetch.max.bytes"), Some("8000000"));
    }
}
