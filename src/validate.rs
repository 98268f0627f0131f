//! The checks the config layer leaves to the modules that use the values: CEL expressions,
//! aggregate functions and partitioners ([`crate::pipeline`]) and librdkafka properties
//! ([`crate::kafka::properties`]). Loading runs them where it reads each value
//! ([`crate::config::load_with_checks`]), so that `tributary validate` reports them with the
//! other problems, at once, in file order.

use std::collections::BTreeMap;

use crate::config::{ConfigIssue, GroupProtocol, ValueChecks};
use crate::pipeline::aggregate::Field;
use crate::pipeline::expr::{self, Expr};
use crate::pipeline::partitioner::Partitioner;

/// The crate's [`ValueChecks`]: each compiles or checks the value as the worker will use it.
pub(crate) struct Checks;

impl ValueChecks for Checks {
    fn expression(&self, text: &str) -> Result<(), String> {
        Expr::compile(&expr::environment(), text).map(drop)
    }

    fn aggregate_field(&self, text: &str) -> Result<(), String> {
        Field::parse(&expr::environment(), "", text).map(drop)
    }

    fn partitioner(&self, text: &str) -> Result<(), String> {
        Partitioner::parse(text).map(drop)
    }

    fn properties(
        &self,
        properties: &BTreeMap<String, String>,
        protocol: GroupProtocol,
    ) -> Vec<ConfigIssue> {
        crate::kafka::properties::check_properties(properties, protocol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_issue, file, no_env, paths, with_group, MINIMAL};
    use crate::config::{load_with_checks, Config};

    fn load_str(text: &str) -> Result<Config, Vec<ConfigIssue>> {
        load_with_checks(&[file(text)], no_env(), &Checks)
    }

    fn rejected(text: &str) -> Vec<ConfigIssue> {
        load_str(text).expect_err("config should be rejected")
    }

    /// One load reports a typo, a wrong type, a key librdkafka rejects and a bad window together.
    #[test]
    fn reports_every_problem_at_once() {
        let text = r#"
    [app]
    id = "clicks"
    thraeds = 2

    [kafka]
    bootstrap_servers = "127.0.0.1:9092"
    [kafka.properties]
    "no.such.property" = "1"

    [processing]
    commit_interval_ms = "soon"

    [[pipeline]]
    name = "p"
    source = { topics = ["in"] }
    steps = [
      { filter = "amount > 50" },
      { key_by = "user" },
      { aggregate = { window = { kind = "tumbling" }, fields = { n = "count()" } } },
    ]
    "#;
        let issues = rejected(text);
        assert_eq!(
            paths(&issues),
            [
                "app.thraeds",
                "kafka.properties.\"no.such.property\"",
                "processing.commit_interval_ms",
                "pipeline[0].steps[2].aggregate.window.size",
            ],
            "{issues:#?}"
        );
        assert_issue(
            &issues,
            "app.thraeds",
            &["unknown key (did you mean `threads`?)"],
        );
        assert_issue(
            &issues,
            "kafka.properties.\"no.such.property\"",
            &["No such configuration property"],
        );
        assert_issue(
            &issues,
            "processing.commit_interval_ms",
            &["expected a positive integer, found string \"soon\""],
        );
        assert_issue(
            &issues,
            "pipeline[0].steps[2].aggregate.window.size",
            &["required key is missing", "tumbling"],
        );
    }

    /// Properties the worker owns are rejected with the key to use instead.
    #[test]
    fn reserved_property_names_the_tributary_key() {
        let text = MINIMAL.replace(
            "[[pipeline]]",
            "[kafka.properties]\n\"enable.auto.commit\" = true\n\"group.id\" = \"x\"\n[[pipeline]]",
        );
        let issues = rejected(&text);
        assert_eq!(issues.len(), 2, "{issues:#?}");
        assert_issue(&issues, "kafka.properties.\"group.id\"", &["`app.id`"]);
        assert_issue(
            &issues,
            "kafka.properties.\"enable.auto.commit\"",
            &["`processing.commit_interval_ms`"],
        );
    }

    #[test]
    fn partitioners() {
        let with =
            |p: &str| format!("{MINIMAL}sink = {{ topic = \"out\", partitioner = {p:?} }}\n");
        for good in [
            "murmur2",
            "round_robin",
            "random",
            "field:user",
            "range:a,m,t",
            "range:b",
        ] {
            let config = load_str(&with(good)).unwrap_or_else(|e| panic!("{good}: {e:?}"));
            assert_eq!(
                config.pipelines[0].sink.as_ref().expect("sink").partitioner,
                good
            );
        }
        for (bad, part) in [
            (
                "hash",
                "unknown partitioner \"hash\": use murmur2, round_robin, random, field:<name> or range:<b1,b2,...>",
            ),
            ("random:x", "unknown partitioner \"random:x\""),
            ("field:", "unknown partitioner \"field:\""),
            ("range:", "must not be empty"),
            ("range:a,,b", "must not be empty"),
            ("range:b,a", "strictly increasing"),
            ("range:a,a", "strictly increasing"),
        ] {
            let issues = rejected(&with(bad));
            assert_issue(&issues, "pipeline[0].sink.partitioner", &[part]);
            assert_eq!(issues.len(), 1, "{bad}: {issues:#?}");
        }
    }

    /// Passthrough properties: librdkafka's group protocol keys are Tributary's; the classic-only
    /// heartbeat interval is refused with the consumer protocol only.
    #[test]
    fn group_protocol_properties() {
        let issues = rejected(&with_group(
            "protocol = \"consumer\"",
            "\"group.protocol\" = \"consumer\"\n\"group.remote.assignor\" = \"range\"\n\
             \"heartbeat.interval.ms\" = 500\n\"group.protocol.type\" = \"consumer\"\n\
             \"session.timeout.ms\" = 6000",
        ));
        assert_issue(
            &issues,
            "kafka.properties.\"group.protocol\"",
            &["set by Tributary", "set `group.protocol` instead"],
        );
        assert_issue(
            &issues,
            "kafka.properties.\"group.remote.assignor\"",
            &["set `group.remote_assignor` instead"],
        );
        assert_issue(
            &issues,
            "kafka.properties.\"heartbeat.interval.ms\"",
            &[
                "does not apply with group.protocol = \"consumer\"",
                "group.consumer.heartbeat.interval.ms",
            ],
        );
        assert_issue(
            &issues,
            "kafka.properties.\"group.protocol.type\"",
            &["does not apply with group.protocol = \"consumer\""],
        );
        assert_issue(
            &issues,
            "kafka.properties.\"session.timeout.ms\"",
            &["group.consumer.session.timeout.ms"],
        );
        assert_eq!(issues.len(), 5, "{issues:#?}");

        // With the classic protocol the heartbeat interval passes through.
        let config = load_str(&with_group("", "\"heartbeat.interval.ms\" = 500")).expect("valid");
        assert_eq!(config.kafka.properties["heartbeat.interval.ms"], "500");
    }
}
