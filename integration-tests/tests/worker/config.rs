//! `tributary validate` and `run` on bad configs: exit 2, one line per problem naming its key.
//! Needs no broker (validation must not touch Kafka).

use std::path::Path;
use std::time::Duration;

use integration_tests::{run_cli, run_cli_timeout, TotalsConfig};

fn good_config(dir: &Path) -> TotalsConfig {
    // Nothing listens on port 9 (discard); validate must not need a broker anyway.
    TotalsConfig::new(
        "app-config-test",
        "127.0.0.1:9",
        "config-in",
        "config-out",
        &dir.join("state"),
    )
}

fn replace_once(s: &str, from: &str, to: &str) -> String {
    assert_eq!(
        s.matches(from).count(),
        1,
        "config template has exactly one {from:?}"
    );
    s.replace(from, to)
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn config_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let good = good_config(dir.path()).to_toml();

    let good_path = dir.path().join("good.toml");
    std::fs::write(&good_path, &good).unwrap();
    let out = run_cli(&["validate", "-c", good_path.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "good config validates:\n{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == "ok"),
        "validate prints ok:\n{}",
        text(&out)
    );

    // Three problems at once: an unknown key, a wrong type, an unknown librdkafka property.
    let bad = replace_once(&good, "threads = 1\n", "thraeds = 1\n");
    let bad = replace_once(
        &bad,
        "session_timeout_ms = 6000\n",
        "session_timeout_ms = \"ten\"\n",
    );
    let bad = replace_once(
        &bad,
        "bootstrap_servers = \"127.0.0.1:9\"\n",
        "bootstrap_servers = \"127.0.0.1:9\"\n\n[kafka.properties]\n\"no.such.property\" = \"1\"\n",
    );
    let bad_path = dir.path().join("bad.toml");
    std::fs::write(&bad_path, &bad).unwrap();

    let out = run_cli(&["validate", "-c", bad_path.to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "validate of a bad config exits 2:\n{all}\nconfig:\n{bad}"
    );
    for key in [
        "app.thraeds",
        "group.session_timeout_ms",
        "no.such.property",
    ] {
        assert!(all.contains(key), "validate names {key}:\n{all}");
    }
    let property_line = all
        .lines()
        .find(|l| l.contains("no.such.property"))
        .unwrap();
    assert!(
        property_line.contains("kafka.properties"),
        "the property's key path starts kafka.properties: {property_line}"
    );
    // One line per problem: no line names two of them.
    let keys = [
        "app.thraeds",
        "group.session_timeout_ms",
        "no.such.property",
    ];
    for line in all.lines() {
        assert!(
            keys.iter().filter(|k| line.contains(*k)).count() <= 1,
            "one problem per line: {line}"
        );
    }
    assert!(
        !String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == "ok"),
        "no ok on failure:\n{all}"
    );

    // `run` refuses the same config, before touching Kafka, with the same exit code.
    let out = run_cli_timeout(
        &["run", "-c", bad_path.to_str().unwrap()],
        Duration::from_secs(60),
    );
    let all = text(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "run with a bad config exits 2:\n{all}"
    );
    for key in [
        "app.thraeds",
        "group.session_timeout_ms",
        "no.such.property",
    ] {
        assert!(all.contains(key), "run names {key}:\n{all}");
    }
}

/// With `group.protocol = "consumer"`, `validate` accepts the consumer protocol's keys; the
/// classic `[group]` keys are accepted with one warning line each naming what governs that
/// setting instead (one file may serve both protocols); a librdkafka property the consumer
/// protocol forbids is refused (exit 2) by `validate` and `run` alike.
#[test]
fn group_keys_of_the_other_protocol_warn_and_forbidden_properties_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let good = good_config(dir.path());

    let mut consumer = good.clone().consumer_protocol();
    consumer.group = Some("protocol = \"consumer\"\nremote_assignor = \"range\"\n".to_string());
    let path = dir.path().join("consumer.toml");
    std::fs::write(&path, consumer.to_toml()).unwrap();
    let out = run_cli(&["validate", "-c", path.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a consumer-protocol config validates:\n{}",
        text(&out)
    );
    assert!(!text(&out).contains("warning"), "{}", text(&out));

    let mut both = good.clone();
    both.group = Some(
        "protocol = \"consumer\"\nassignment = \"cooperative-sticky\"\nsession_timeout_ms = 6000\n"
            .to_string(),
    );
    let both_path = dir.path().join("both-protocols.toml");
    std::fs::write(&both_path, both.to_toml()).unwrap();
    let out = run_cli(&["validate", "-c", both_path.to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    for line in [
        "warning: group.assignment: ignored: does not apply with group.protocol = \"consumer\": \
         the broker assigns partitions; choose its assignor with `group.remote_assignor`",
        "warning: group.session_timeout_ms: ignored: does not apply with group.protocol = \
         \"consumer\": the broker's group.consumer.session.timeout.ms sets it",
    ] {
        assert!(
            all.lines().any(|l| l.trim() == line),
            "validate prints the line {line:?}:\n{all}"
        );
    }

    let mut bad = good.clone().consumer_protocol();
    bad.extra = "[kafka.properties]\n\"heartbeat.interval.ms\" = 1000\n".to_string();
    let bad_path = dir.path().join("bad-consumer.toml");
    std::fs::write(&bad_path, bad.to_toml()).unwrap();
    let expected = "kafka.properties.\"heartbeat.interval.ms\": does not apply with \
                    group.protocol = \"consumer\": the broker's \
                    group.consumer.heartbeat.interval.ms sets it";
    for command in ["validate", "run"] {
        let out = run_cli_timeout(
            &[command, "-c", bad_path.to_str().unwrap()],
            Duration::from_secs(60),
        );
        let all = text(&out);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{command} of a consumer-protocol config with a classic property exits 2:\n{all}"
        );
        assert!(
            all.lines().any(|l| l.trim() == expected),
            "{command} prints the line {expected:?}:\n{all}"
        );
    }

    // `remote_assignor` with the (default) classic protocol warns too.
    let mut classic = good;
    classic.group = Some("remote_assignor = \"uniform\"\n".to_string());
    let classic_path = dir.path().join("classic.toml");
    std::fs::write(&classic_path, classic.to_toml()).unwrap();
    let out = run_cli(&["validate", "-c", classic_path.to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.lines().any(|l| l.starts_with(
            "warning: group.remote_assignor: ignored: does not apply with group.protocol = \
             \"classic\" (the default)"
        )),
        "{all}"
    );
}

/// A pipeline over two topics is refused by `validate` and `run` (exit 2, one line naming
/// `group.assignment`) under the default assignor, which does not keep partition n of both
/// topics on one member; with `range` it validates.
#[test]
fn several_source_topics_need_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = good_config(dir.path());
    cfg.more_inputs = vec!["config-in-2".into()];
    let path = dir.path().join("two-topics.toml");
    std::fs::write(&path, cfg.to_toml()).unwrap();

    for command in ["validate", "run"] {
        let out = run_cli_timeout(
            &[command, "-c", path.to_str().unwrap()],
            Duration::from_secs(60),
        );
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{command} exits 2:\n{all}");
        let lines: Vec<&str> = all
            .lines()
            .filter(|l| l.starts_with("group.assignment: "))
            .collect();
        assert_eq!(lines.len(), 1, "{command}: one line names the key:\n{all}");
        for part in [
            "pipeline \"totals\" reads 2 topics (config-in, config-in-2)",
            "only \"range\" keeps partition n of every source topic on one member",
            "\"cooperative-sticky\"",
        ] {
            assert!(
                lines[0].contains(part),
                "{command}: {part:?} in {:?}",
                lines[0]
            );
        }
    }

    cfg.assignment = Some("range".into());
    std::fs::write(&path, cfg.to_toml()).unwrap();
    let out = run_cli(&["validate", "-c", path.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "range validates:\n{}",
        text(&out)
    );
}
