//! Checks the librdkafka properties passed through `[kafka.properties]`.
//!
//! Three kinds of key are rejected:
//!
//! - keys the worker sets itself, because its commit protocol, group membership or delivery
//!   guarantee depends on them; the message names the Tributary key to use instead;
//! - keys that do not apply under the configured `group.protocol` (librdkafka refuses to create
//!   a consumer-protocol consumer with `heartbeat.interval.ms`, for instance: it is a broker
//!   setting there), named with what sets them instead;
//! - keys or values that librdkafka itself rejects. Each property is set on a fresh native
//!   librdkafka configuration object, which validates it locally: no client is created and
//!   nothing touches the network.

use std::collections::BTreeMap;

use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;

use crate::config::{property_path, ConfigIssue, GroupProtocol};

/// librdkafka properties that Tributary sets itself, and what to configure instead.
pub const RESERVED: &[(&str, &str)] = &[
    ("group.id", "it is set from `app.id`"),
    ("group.instance.id", "it is set from `app.instance_id`"),
    ("bootstrap.servers", "set `kafka.bootstrap_servers` instead"),
    // librdkafka's older name for bootstrap.servers.
    (
        "metadata.broker.list",
        "set `kafka.bootstrap_servers` instead",
    ),
    (
        "enable.auto.commit",
        "Tributary commits offsets itself; see `processing.commit_interval_ms`",
    ),
    // librdkafka's deprecated topic-level alias of enable.auto.commit.
    (
        "auto.commit.enable",
        "Tributary commits offsets itself; see `processing.commit_interval_ms`",
    ),
    (
        "enable.auto.offset.store",
        "Tributary stores offsets itself once output and state are durable",
    ),
    (
        "auto.commit.interval.ms",
        "set `processing.commit_interval_ms` instead",
    ),
    (
        "partition.assignment.strategy",
        "set `group.assignment` instead (`group.remote_assignor` with group.protocol = \"consumer\")",
    ),
    (
        "session.timeout.ms",
        "set `group.session_timeout_ms` instead (with group.protocol = \"consumer\" the broker's \
         group.consumer.session.timeout.ms sets it)",
    ),
    ("group.protocol", "set `group.protocol` instead"),
    (
        "group.remote.assignor",
        "set `group.remote_assignor` instead",
    ),
    ("isolation.level", "it follows `processing.guarantee`"),
    ("transactional.id", "it follows `processing.guarantee`"),
    ("enable.idempotence", "it follows `processing.guarantee`"),
    ("enable.partition.eof", "Tributary manages it itself"),
];

/// librdkafka properties that the consumer protocol (KIP-848) does not accept, and what sets
/// them there. librdkafka only checks this when it creates the consumer, so `validate` would
/// not see it otherwise. (`session.timeout.ms` and `partition.assignment.strategy` are
/// [`RESERVED`] under either protocol.)
pub const NOT_WITH_CONSUMER_PROTOCOL: &[(&str, &str)] = &[
    (
        "heartbeat.interval.ms",
        "the broker's group.consumer.heartbeat.interval.ms sets it",
    ),
    (
        "group.protocol.type",
        "the consumer protocol has no protocol type",
    ),
];

/// Checks every property, returning one issue per rejected key (path
/// `kafka.properties."<key>"`): keys that Tributary sets itself (see [`RESERVED`]), keys that
/// `protocol` does not accept (see [`NOT_WITH_CONSUMER_PROTOCOL`]), and keys or values that
/// librdkafka rejects, with librdkafka's own message.
pub fn check_properties(
    props: &BTreeMap<String, String>,
    protocol: GroupProtocol,
) -> Vec<ConfigIssue> {
    let not_applicable: &[(&str, &str)] = match protocol {
        GroupProtocol::Classic => &[],
        GroupProtocol::Consumer => NOT_WITH_CONSUMER_PROTOCOL,
    };
    props
        .iter()
        .filter_map(|(key, value)| {
            let reserved = RESERVED.iter().find(|(reserved, _)| reserved == key);
            let inapplicable = not_applicable.iter().find(|(k, _)| k == key);
            let message = match (reserved, inapplicable) {
                (Some((_, instead)), _) => format!("set by Tributary, not allowed here: {instead}"),
                (None, Some((_, why))) => {
                    format!("does not apply with group.protocol = \"{protocol}\": {why}")
                }
                (None, None) => librdkafka_check(key, value).err()?,
            };
            Some(ConfigIssue::new(property_path(key), message))
        })
        .collect()
}

/// Asks librdkafka to accept `key = value` on an empty configuration.
fn librdkafka_check(key: &str, value: &str) -> Result<(), String> {
    let mut config = ClientConfig::new();
    config.set(key, value);
    match config.create_native_config() {
        Ok(_) => Ok(()),
        // librdkafka's own error text; it names the key but not always the value.
        Err(KafkaError::ClientConfig(_, description, _, _)) if description.contains(value) => {
            Err(description)
        }
        Err(KafkaError::ClientConfig(_, description, _, _)) => {
            Err(format!("{description} (value {value:?})"))
        }
        Err(other) => Err(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pairs: &[(&str, &str)]) -> Vec<ConfigIssue> {
        let props = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        check_properties(&props, GroupProtocol::Classic)
    }

    #[test]
    fn accepts_known_properties_and_values() {
        let issues = check(&[
            ("acks", "all"),
            ("client.id", "tributary-test"),
            ("fetch.min.bytes", "1"),
            ("auto.offset.reset", "earliest"),
            ("statistics.interval.ms", "0"),
        ]);
        assert!(issues.is_empty(), "{issues:?}");
    }

    #[test]
    fn rejects_reserved_keys_with_the_tributary_key() {
        let issues = check(&[("group.id", "x"), ("session.timeout.ms", "6000")]);
        assert_eq!(issues.len(), 2, "{issues:?}");
        assert_eq!(issues[0].path, "kafka.properties.\"group.id\"");
        assert!(issues[0].message.contains("`app.id`"), "{}", issues[0]);
        assert_eq!(issues[1].path, "kafka.properties.\"session.timeout.ms\"");
        assert!(
            issues[1].message.contains("`group.session_timeout_ms`"),
            "{}",
            issues[1]
        );
    }

    #[test]
    fn reports_librdkafka_errors_for_unknown_keys_and_bad_values() {
        let issues = check(&[("no.such.property", "1"), ("acks", "sometimes")]);
        assert_eq!(issues.len(), 2, "{issues:?}");
        assert_eq!(issues[0].path, "kafka.properties.\"acks\"");
        assert!(issues[0].message.contains("acks"), "{}", issues[0]);
        assert_eq!(issues[1].path, "kafka.properties.\"no.such.property\"");
        assert!(
            issues[1].message.contains("No such configuration property"),
            "{}",
            issues[1]
        );
    }
}
