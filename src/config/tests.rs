use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;

/// The full configuration example (every section and key), as in README.md's configuration
/// walkthrough.
const FULL_EXAMPLE: &str = r#"
[app]
id = "clicks"                 # consumer group id and prefix of internal topics (required)
threads = 1                   # group members in this process; a worker with 2 gets ~2x the partitions
# instance_id = "worker-a"    # static membership (group.instance.id); members get "-<n>" appended

[kafka]
bootstrap_servers = "127.0.0.1:9092"   # "embedded" = in-process cluster, for trying things out
[kafka.properties]                     # any librdkafka property, passed through verbatim
# "security.protocol" = "sasl_ssl"

[group]
protocol = "classic"                   # or "consumer" (KIP-848, Kafka 4.0+: the broker assigns)
assignment = "cooperative-sticky"      # classic: or "range", "roundrobin"
session_timeout_ms = 10000             # classic only (consumer: a broker setting)

[processing]
guarantee = "at_least_once"            # or "exactly_once"
commit_interval_ms = 1000
idle_advance_ms = 0                    # >0: stream time of idle tasks advances with the wall clock
on_error = "dlq"                       # "fail" | "skip" | "dlq": bad records and failing steps
dlq_topic = "clicks-dlq"               # default "<app.id>-dlq"

[state]
dir = "/var/lib/tributary"             # RocksDB stores and checkpoint files live under here
standby_replicas = 0

[http]
listen = "127.0.0.1:9464"              # /health /ready /metrics /state

[[pipeline]]
name = "clicks-per-user"
source = { topics = ["clicks"], format = "json" }       # format: json | avro | string | bytes
sink = { topic = "clicks-per-user", format = "json" }   # partitioner: murmur2 (default) | round_robin | random | field:<name> | range:<bounds>

[[pipeline.steps]]
filter = "amount > 50"                                  # CEL expression over the record

[[pipeline.steps]]
map = "{'user': user, 'amount': amount * 2}"            # CEL expression producing the new value

[[pipeline.steps]]
key_by = "user"                                         # re-key; repartitions through an internal topic

[[pipeline.steps]]
[pipeline.steps.aggregate]
window = { kind = "tumbling", size = "1m", grace = "10s" }
fields = { count = "count()", total = "sum(amount)", top = "max(amount)", mean = "avg(amount)" }
emit = "update"                                         # "update" every change, "final" once the window closes
"#;

/// A minimal valid config.
pub(crate) const MINIMAL: &str = r#"
[app]
id = "clicks"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
[[pipeline]]
name = "p"
source = { topics = ["in"] }
"#;

/// Writes `text` to a fresh file in the temp dir.
pub(crate) fn file(text: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(
        "tributary-config-test-{}-{n}.toml",
        std::process::id()
    ));
    std::fs::write(&path, text).expect("write temp config");
    path
}

fn load_str(text: &str) -> Result<Config, Vec<ConfigIssue>> {
    load_with_env(&[file(text)], no_env())
}

pub(crate) fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn rejected(text: &str) -> Vec<ConfigIssue> {
    load_str(text).expect_err("config should be rejected")
}

/// Asserts that exactly one issue has `path` and that its message contains every `part`.
#[track_caller]
pub(crate) fn assert_issue(issues: &[ConfigIssue], path: &str, parts: &[&str]) {
    let at: Vec<&ConfigIssue> = issues.iter().filter(|i| i.path == path).collect();
    assert_eq!(at.len(), 1, "expected one issue at {path}, got {issues:#?}");
    for part in parts {
        assert!(
            at[0].message.contains(part),
            "{:?} lacks {part:?}",
            at[0].message
        );
    }
}

pub(crate) fn paths(issues: &[ConfigIssue]) -> Vec<&str> {
    issues.iter().map(|i| i.path.as_str()).collect()
}

/// The steps of the full example, as both spellings must read them.
fn example_steps() -> Vec<StepConfig> {
    let fields = [
        ("count", "count()"),
        ("total", "sum(amount)"),
        ("top", "max(amount)"),
        ("mean", "avg(amount)"),
    ];
    vec![
        StepConfig::Filter("amount > 50".into()),
        StepConfig::Map("{'user': user, 'amount': amount * 2}".into()),
        StepConfig::KeyBy("user".into()),
        StepConfig::Aggregate(AggregateConfig {
            window: Some(WindowConfig {
                kind: WindowKind::Tumbling,
                size: Some(Duration::from_secs(60)),
                advance: None,
                gap: None,
                grace: Duration::from_secs(10),
            }),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            emit: Emit::Update,
        }),
    ]
}

/// The full example loads, with every value as written.
#[test]
fn full_example_loads() {
    let config = load_str(FULL_EXAMPLE).expect("example is valid");
    assert_eq!(config.app.id, "clicks");
    assert_eq!(config.app.threads, 1);
    assert_eq!(config.app.instance_id, None);
    assert_eq!(config.kafka.bootstrap_servers, "127.0.0.1:9092");
    assert!(config.kafka.properties.is_empty());
    assert_eq!(config.group.protocol, GroupProtocol::Classic);
    assert_eq!(config.group.assignment, Assignment::CooperativeSticky);
    assert_eq!(
        config.group.assignment.librdkafka_name(),
        "cooperative-sticky"
    );
    assert_eq!(config.group.session_timeout_ms, 10_000);
    assert_eq!(config.processing.guarantee, Guarantee::AtLeastOnce);
    assert_eq!(config.processing.commit_interval_ms, 1000);
    assert_eq!(config.processing.on_error, OnError::Dlq);
    assert_eq!(config.processing.dlq_topic("clicks"), "clicks-dlq");
    assert_eq!(config.processing.idle_advance_ms, 0);
    assert_eq!(config.state.dir, PathBuf::from("/var/lib/tributary"));
    assert_eq!(config.state.standby_replicas, 0);
    assert_eq!(
        config.http.listen,
        Some("127.0.0.1:9464".parse().expect("addr"))
    );

    assert_eq!(config.pipelines.len(), 1);
    let p = &config.pipelines[0];
    assert_eq!(p.name, "clicks-per-user");
    assert_eq!(p.source.topics, vec!["clicks".to_string()]);
    assert_eq!(p.source.format, Format::Json);
    let sink = p.sink.as_ref().expect("sink");
    assert_eq!(sink.topic, "clicks-per-user");
    assert_eq!(sink.format, Format::Json);
    assert_eq!(sink.partitioner, "murmur2");
    assert_eq!(p.steps, example_steps());
}

/// Steps written as one-line inline tables read the same as `[[pipeline.steps]]` tables.
#[test]
fn one_line_steps_read_like_step_tables() {
    let text = format!(
        "{MINIMAL}{}",
        r#"steps = [
  { filter = "amount > 50" },
  { map = "{'user': user, 'amount': amount * 2}" },
  { key_by = "user" },
  { aggregate = { window = { kind = "tumbling", size = "1m", grace = "10s" }, fields = { count = "count()", total = "sum(amount)", top = "max(amount)", mean = "avg(amount)" }, emit = "update" } },
]
"#
    );
    let config = load_str(&text).expect("valid");
    assert_eq!(config.pipelines[0].steps, example_steps());
}

/// Everything optional takes its documented default.
#[test]
fn defaults() {
    let config = load_str(MINIMAL).expect("valid");
    assert_eq!(config.app.threads, 1);
    assert_eq!(config.app.instance_id, None);
    assert!(config.kafka.properties.is_empty());
    assert_eq!(config.group, GroupConfig::default());
    assert_eq!(config.group.protocol, GroupProtocol::Classic);
    assert_eq!(config.group.assignment, Assignment::CooperativeSticky);
    assert_eq!(config.group.remote_assignor, RemoteAssignor::Uniform);
    assert_eq!(config.group.session_timeout_ms, 10_000);
    assert_eq!(config.processing.guarantee, Guarantee::AtLeastOnce);
    assert_eq!(config.processing.commit_interval_ms, 1000);
    assert_eq!(config.processing.on_error, OnError::Fail);
    assert_eq!(config.processing.dlq_topic, None);
    assert_eq!(config.processing.dlq_topic("clicks"), "clicks-dlq");
    assert_eq!(config.processing.max_buffered_records, 1000);
    assert_eq!(config.processing.idle_advance_ms, 0, "off by default");
    assert_eq!(config.state.dir, PathBuf::from("./tributary-state"));
    assert_eq!(config.state.standby_replicas, 0);
    assert_eq!(config.state.cache_max_entries, 20_000);
    assert_eq!(config.state.cleanup_delay_ms, 600_000);
    assert_eq!(
        config.http.listen,
        Some("127.0.0.1:9464".parse().expect("addr"))
    );
    let p = &config.pipelines[0];
    assert_eq!(p.source.format, Format::Json);
    assert_eq!(p.source.time, None);
    assert_eq!(p.sink, None);
    assert!(p.steps.is_empty());
}

/// Environment variables override files, for strings and numbers alike; variables that name
/// no key are ignored.
#[test]
fn env_overrides_strings_and_numbers() {
    let vars = env(&[
        ("TRIBUTARY_KAFKA__BOOTSTRAP_SERVERS", "broker:9092"),
        ("TRIBUTARY_APP__THREADS", "2"),
        ("TRIBUTARY_PROCESSING__ON_ERROR", "skip"),
        ("TRIBUTARY_LOG", "debug"),
        ("PATH", "/usr/bin"),
    ]);
    let config = load_with_env(&[file(MINIMAL)], vars).expect("valid");
    assert_eq!(config.kafka.bootstrap_servers, "broker:9092");
    assert_eq!(config.app.threads, 2);
    assert_eq!(config.processing.on_error, OnError::Skip);
    assert_eq!(config.app.id, "clicks");
}

/// A bad environment value is reported with the variable that set it.
#[test]
fn env_errors_name_the_variable() {
    let vars = env(&[
        ("TRIBUTARY_APP__THREADS", "two"),
        ("TRIBUTARY_APP__THRAEDS", "2"),
    ]);
    let issues = load_with_env(&[file(MINIMAL)], vars).expect_err("invalid");
    assert_issue(
        &issues,
        "app.threads",
        &[
            "expected a positive integer, found string \"two\"",
            "TRIBUTARY_APP__THREADS",
        ],
    );
    assert_issue(
        &issues,
        "app.thraeds",
        &["unknown key", "`threads`", "TRIBUTARY_APP__THRAEDS"],
    );
    assert_eq!(issues.len(), 2, "{issues:#?}");
}

/// In files, a number written as a string is a type error.
#[test]
fn file_numbers_are_not_strings() {
    let issues =
        rejected(&MINIMAL.replace("id = \"clicks\"", "id = \"clicks\"\nthreads = \"two\""));
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert_eq!(
        issues[0].to_string(),
        "app.threads: expected a positive integer, found string \"two\""
    );
}

/// A later file overrides an earlier one key by key.
#[test]
fn later_file_overrides_earlier() {
    let base = file(MINIMAL);
    let over = file("[app]\nthreads = 4\n[kafka]\nbootstrap_servers = \"other:9092\"\n");
    let config = load_with_env(&[base.clone(), over.clone()], no_env()).expect("valid");
    assert_eq!(config.app.id, "clicks", "kept from the first file");
    assert_eq!(config.app.threads, 4);
    assert_eq!(config.kafka.bootstrap_servers, "other:9092");

    let config = load_with_env(&[over, base], no_env()).expect("valid");
    assert_eq!(config.app.threads, 4, "not set by the later file");
    assert_eq!(config.kafka.bootstrap_servers, "127.0.0.1:9092");
}

/// Property values of any scalar type become strings; bare dotted keys read as one name.
#[test]
fn properties_are_stringified_and_flattened() {
    let text = MINIMAL.replace(
        "[[pipeline]]",
        "[kafka.properties]\n\"fetch.min.bytes\" = 1\nsocket.keepalive.enable = true\n\
         \"client.id\" = \"me\"\n[[pipeline]]",
    );
    let config = load_str(&text).expect("valid");
    let props: Vec<(&str, &str)> = config
        .kafka
        .properties
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        props,
        [
            ("client.id", "me"),
            ("fetch.min.bytes", "1"),
            ("socket.keepalive.enable", "true")
        ]
    );
}

#[test]
fn parses_durations() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
    assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
    assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    for bad in ["", "10", "s", "1.5s", "10x", "-1s", "1m30s"] {
        let err = parse_duration(bad).expect_err(bad);
        assert!(err.contains("ms, s, m, h, d"), "{err}");
    }
    assert!(parse_duration("99999999999999999d").is_err());
}

/// A missing file and a syntax error are both reported, by file name; the keys they would
/// have held are not reported missing.
#[test]
fn file_problems() {
    let missing = std::env::temp_dir().join("tributary-config-test-does-not-exist.toml");
    let broken = file("[app]\nid = \"clicks\"\nthreads = = 2\n");
    let issues = load_with_env(&[missing.clone(), broken.clone()], no_env()).expect_err("bad");
    assert_eq!(issues.len(), 2, "{issues:#?}");
    assert_eq!(
        issues[0],
        ConfigIssue::new(missing.display().to_string(), "file not found")
    );
    assert_eq!(issues[1].path, broken.display().to_string());
    assert!(
        issues[1].message.contains("line 3"),
        "{}",
        issues[1].message
    );
    assert!(!issues[1].message.contains('\n'), "{}", issues[1].message);
}

/// Without any file, the required keys are reported. (`pipeline` is optional for library
/// users; the worker refuses a config with nothing to run.)
#[test]
fn required_keys() {
    let issues = load_with_env(&[], no_env()).expect_err("empty");
    assert_eq!(paths(&issues), ["app.id", "kafka.bootstrap_servers"]);
    assert!(issues
        .iter()
        .all(|i| i.message.starts_with("required key is missing")));
}

#[test]
fn window_rules() {
    let text = format!(
        "{MINIMAL}{}",
        r#"steps = [
  { aggregate = { window = { kind = "hopping", size = "1m", advance = "2m" }, fields = { n = "count()" } } },
  { aggregate = { window = { kind = "session", gap = "0s", size = "1m" }, fields = { n = "count()" } } },
  { aggregate = { window = { kind = "hopping", size = "1m", grace = "soon" }, fields = { n = "count()" } } },
  { aggregate = { window = { kind = "sliding", size = "1m" }, fields = { n = "count()" } } },
  { aggregate = { window = { kind = "session", gap = "5m", grace = "0s" }, fields = { n = "count()" } } },
]
"#
    );
    let issues = rejected(&text);
    let w = |i: usize, key: &str| format!("pipeline[0].steps[{i}].aggregate.window.{key}");
    assert_issue(&issues, &w(0, "advance"), &["must not exceed size"]);
    assert_issue(&issues, &w(1, "gap"), &["must be greater than 0"]);
    assert_issue(&issues, &w(1, "size"), &["not used by a session window"]);
    assert_issue(
        &issues,
        &w(2, "advance"),
        &["required key is missing", "hopping"],
    );
    assert_issue(&issues, &w(2, "grace"), &["invalid duration \"soon\""]);
    assert_issue(
        &issues,
        &w(3, "kind"),
        &["expected one of \"tumbling\", \"hopping\", \"session\""],
    );
    assert_eq!(issues.len(), 6, "{issues:#?}");
}

#[test]
fn step_tables_need_exactly_one_kind() {
    let text = format!(
        "{MINIMAL}{}",
        r#"steps = [
  { filter = "a", map = "b" },
  { fliter = "a" },
  { dedup = { key = "id", within = "10m" } },
  { dedup = { key = "id" } },
  { aggregate = { fields = {} } },
]
"#
    );
    let issues = rejected(&text);
    assert_issue(
        &issues,
        "pipeline[0].steps[0]",
        &["exactly one of", "found `filter` and `map`"],
    );
    assert_issue(&issues, "pipeline[0].steps[1]", &["found none"]);
    assert_issue(
        &issues,
        "pipeline[0].steps[1].fliter",
        &["did you mean `filter`?"],
    );
    assert_issue(
        &issues,
        "pipeline[0].steps[3].dedup.within",
        &["required key is missing"],
    );
    assert_issue(
        &issues,
        "pipeline[0].steps[4].aggregate.fields",
        &["at least one field"],
    );
    assert_eq!(issues.len(), 5, "{issues:#?}");

    let ok = format!("{MINIMAL}steps = [ {{ dedup = {{ key = \"id\", within = \"10m\" }} }} ]\n");
    let config = load_str(&ok).expect("valid");
    let expected = DedupConfig {
        key: "id".into(),
        within: Duration::from_secs(600),
    };
    assert_eq!(config.pipelines[0].steps, [StepConfig::Dedup(expected)]);
}

#[test]
fn topic_rules_across_keys() {
    let text = r#"
[app]
id = "app"
[kafka]
bootstrap_servers = "k:9092"
[group]
assignment = "range"
[processing]
on_error = "dlq"
[[pipeline]]
name = "a"
source = { topics = ["app-dlq"] }
[[pipeline]]
name = "b"
source = { topics = ["x", "y"] }
sink = { topic = "y" }
[[pipeline]]
name = "a"
source = { topics = "z" }
"#;
    let issues = rejected(text);
    assert_issue(
        &issues,
        "pipeline[1].sink.topic",
        &["\"y\" is also this pipeline's source"],
    );
    assert_issue(
        &issues,
        "pipeline[2].source.topics",
        &["expected an array", "topics = [\"z\"]"],
    );
    assert_issue(
        &issues,
        "processing.dlq_topic",
        &["\"app-dlq\"", "pipeline[0]"],
    );
    assert_eq!(issues.len(), 3, "{issues:#?}");

    let dup = format!("{MINIMAL}\n[[pipeline]]\nname = \"p\"\nsource = {{ topics = [\"in2\"] }}\n");
    let issues = rejected(&dup);
    assert_issue(
        &issues,
        "pipeline[1].name",
        &["duplicate pipeline name \"p\"", "pipeline[0]"],
    );
    assert_eq!(issues.len(), 1, "{issues:#?}");
}

/// `state.cleanup_delay_ms`: a positive number of milliseconds, from a file or the environment.
#[test]
fn state_cleanup_delay() {
    let with = |v: &str| format!("{MINIMAL}\n[state]\ncleanup_delay_ms = {v}\n");
    assert_eq!(
        load_str(&with("2000")).unwrap().state.cleanup_delay_ms,
        2_000
    );
    let from_env = load_with_env(
        &[file(MINIMAL)],
        env(&[("TRIBUTARY_STATE__CLEANUP_DELAY_MS", "1500")]),
    )
    .unwrap();
    assert_eq!(from_env.state.cleanup_delay_ms, 1_500);
    for (bad, found) in [
        ("0", "found integer 0"),
        ("\"10m\"", "found string \"10m\""),
    ] {
        let issues = rejected(&with(bad));
        assert_issue(
            &issues,
            "state.cleanup_delay_ms",
            &["expected a positive integer", found],
        );
        assert_eq!(issues.len(), 1, "{issues:#?}");
    }
}

/// `state.block_cache_mb` and `state.write_buffer_mb`: MiB from 1 to 1 TiB, from a file or the
/// environment.
#[test]
fn state_memory_sizes() {
    let defaults = load_str(MINIMAL).unwrap().state;
    assert_eq!(
        (defaults.block_cache_mb, defaults.write_buffer_mb),
        (32, 32)
    );
    let with = |k: &str, v: &str| format!("{MINIMAL}\n[state]\n{k} = {v}\n");
    let state = load_str(&format!(
        "{MINIMAL}\n[state]\nblock_cache_mb = 8\nwrite_buffer_mb = 16\n"
    ))
    .unwrap()
    .state;
    assert_eq!((state.block_cache_mb, state.write_buffer_mb), (8, 16));
    let from_env = load_with_env(
        &[file(MINIMAL)],
        env(&[
            ("TRIBUTARY_STATE__BLOCK_CACHE_MB", "4"),
            ("TRIBUTARY_STATE__WRITE_BUFFER_MB", "12"),
        ]),
    )
    .unwrap();
    assert_eq!(
        (
            from_env.state.block_cache_mb,
            from_env.state.write_buffer_mb
        ),
        (4, 12)
    );
    for key in ["block_cache_mb", "write_buffer_mb"] {
        for (bad, expected) in [
            ("0", "expected a positive integer, found integer 0"),
            (
                "\"64MB\"",
                "expected a positive integer, found string \"64MB\"",
            ),
            (
                "1048577",
                "expected at most 1048576 (MiB, 1 TiB), found integer 1048577",
            ),
        ] {
            let issues = rejected(&with(key, bad));
            assert_issue(&issues, &format!("state.{key}"), &[expected]);
            assert_eq!(issues.len(), 1, "{issues:#?}");
        }
    }
}

/// A pipeline reading several topics runs one task per partition number over all of them: only
/// an assignor that keeps partition n of every topic on one member may run it.
#[test]
fn several_source_topics_need_a_co_partitioning_assignor() {
    let two_topics = |group: &str| {
        format!(
            "[app]\nid = \"app\"\n[kafka]\nbootstrap_servers = \"k:9092\"\n{group}\n\
             [[pipeline]]\nname = \"x\"\nsource = {{ topics = [\"a\", \"b\"] }}\n\
             [[pipeline]]\nname = \"one\"\nsource = {{ topics = [\"c\"] }}\n"
        )
    };
    // The default (cooperative-sticky) and roundrobin deal partitions out one by one.
    for (group, name) in [
        ("", "cooperative-sticky"),
        (
            "[group]\nassignment = \"cooperative-sticky\"",
            "cooperative-sticky",
        ),
        ("[group]\nassignment = \"roundrobin\"", "roundrobin"),
    ] {
        let issues = rejected(&two_topics(group));
        assert_issue(
            &issues,
            "group.assignment",
            &[
                "pipeline \"x\" reads 2 topics (a, b)",
                "only \"range\" keeps partition n of every source topic on one member",
                &format!("with {name:?} two members could run the same task"),
            ],
        );
        assert_eq!(issues.len(), 1, "only the two-topic pipeline: {issues:#?}");
    }
    // Range co-partitions.
    let config = load_str(&two_topics("[group]\nassignment = \"range\"")).unwrap();
    assert_eq!(config.group.assignment, Assignment::Range);
    // One source topic needs nothing of the assignor.
    assert!(load_str(MINIMAL).is_ok());
    // A bad assignment value is one problem, not two.
    let issues = rejected(&two_topics("[group]\nassignment = \"sticky\""));
    assert_eq!(paths(&issues), ["group.assignment"], "{issues:#?}");
    assert!(issues[0].message.contains("\"sticky\""), "{issues:#?}");
}

#[test]
fn the_assignor_names_its_key() {
    let group = |assignment| GroupConfig {
        assignment,
        ..GroupConfig::default()
    };
    assert_eq!(
        group(Assignment::Range).assignor(),
        Assignor::new("group.assignment", "range", true)
    );
    for a in [Assignment::CooperativeSticky, Assignment::RoundRobin] {
        assert_eq!(
            group(a).assignor(),
            Assignor::new("group.assignment", a.as_str(), false)
        );
        // The same topic twice is one topic (reported elsewhere as read twice).
        let same = ["t".to_string(), "t".to_string()];
        assert_eq!(
            group(a).co_partitioning_issue("pipeline \"p\"", &same),
            None
        );
    }
}

#[test]
fn http_listen() {
    let with = |v: &str| format!("{MINIMAL}[http]\nlisten = {v:?}\n");
    assert_eq!(load_str(&with("off")).expect("valid").http.listen, None);
    assert_eq!(load_str(&with("")).expect("valid").http.listen, None);
    assert_eq!(
        load_str(&with("0.0.0.0:8080")).expect("valid").http.listen,
        Some("0.0.0.0:8080".parse().expect("addr"))
    );
    let issues = rejected(&with("localhost"));
    assert_issue(
        &issues,
        "http.listen",
        &["expected an address", "found string \"localhost\""],
    );
}

/// `http.advertised` is `host:port`; it needs a listener to advertise.
#[test]
fn http_advertised() {
    let with = |v: &str| format!("{MINIMAL}[http]\nadvertised = {v:?}\n");
    assert_eq!(load_str(MINIMAL).expect("valid").http.advertised, None);
    assert_eq!(
        load_str(&with("worker-1:9464"))
            .expect("valid")
            .http
            .advertised,
        Some("worker-1:9464".to_string())
    );
    let issues = rejected(&with("worker-1"));
    assert_issue(
        &issues,
        "http.advertised",
        &["expected host:port", "\"worker-1\""],
    );
    let issues = rejected(&format!(
        "{MINIMAL}[http]\nlisten = \"off\"\nadvertised = \"w:1\"\n"
    ));
    assert_issue(&issues, "http.advertised", &["http.listen is off"]);
}

#[test]
fn types_enums_and_unknown_sections() {
    let text = r#"
[app]
id = "has space"
threads = 0
[kafka]
bootstrap_servers = 9092
[group]
assignment = "rnage"
[state]
standby_replicas = -1
[http]
listen = 9464
[metrics]
port = 1
[[pipeline]]
name = "p"
source = { topics = ["in"], format = "xml" }
sink = { topic = "out", format = "avro" }
"#;
    let issues = rejected(text);
    assert_issue(
        &issues,
        "app.id",
        &["letters, digits", "found string \"has space\""],
    );
    assert_issue(
        &issues,
        "app.threads",
        &["expected a positive integer, found integer 0"],
    );
    assert_issue(
        &issues,
        "kafka.bootstrap_servers",
        &["expected a string, found integer 9092"],
    );
    assert_issue(&issues, "group.assignment", &["did you mean \"range\"?"]);
    assert_issue(
        &issues,
        "state.standby_replicas",
        &["non-negative integer, found integer -1"],
    );
    assert_issue(&issues, "http.listen", &["found integer 9464"]);
    assert_issue(
        &issues,
        "metrics",
        &["unknown key (known keys: `app`, `kafka`"],
    );
    assert_issue(
        &issues,
        "pipeline[0].source.format",
        &["\"json\", \"avro\""],
    );
    assert_issue(
        &issues,
        "pipeline[0].sink.format",
        &["`schema`", "`registry_url`"],
    );
    assert_eq!(issues.len(), 9, "{issues:#?}");
}

/// `MINIMAL` with `group` as the body of a `[group]` table and `properties` (may be empty) as
/// the body of `[kafka.properties]`.
pub(crate) fn with_group(group: &str, properties: &str) -> String {
    MINIMAL.replace(
        "[[pipeline]]",
        &format!("[kafka.properties]\n{properties}\n[group]\n{group}\n[[pipeline]]"),
    )
}

/// The consumer protocol and its broker-side assignor are read as written.
#[test]
fn consumer_protocol_and_remote_assignor() {
    let config = load_str(&with_group(
        "protocol = \"consumer\"\nremote_assignor = \"range\"",
        "",
    ))
    .expect("valid");
    assert_eq!(config.group.protocol, GroupProtocol::Consumer);
    assert_eq!(config.group.protocol.librdkafka_name(), "consumer");
    assert_eq!(config.group.remote_assignor, RemoteAssignor::Range);
    assert_eq!(config.group.remote_assignor.librdkafka_name(), "range");

    let config = load_str(&with_group("protocol = \"consumer\"", "")).expect("valid");
    assert_eq!(config.group.remote_assignor, RemoteAssignor::Uniform);

    let issues = rejected(&with_group(
        "protocol = \"kip848\"\nremote_assignor = \"sticky\"",
        "",
    ));
    assert_issue(
        &issues,
        "group.protocol",
        &["expected one of \"classic\", \"consumer\", found string \"kip848\""],
    );
    // With the protocol unreadable, no key is called inapplicable; each is read as usual.
    assert_issue(
        &issues,
        "group.remote_assignor",
        &["expected one of \"uniform\", \"range\""],
    );
    assert_eq!(issues.len(), 2, "{issues:#?}");
}

/// The classic protocol's keys set with the consumer protocol are accepted with a warning
/// naming the key and what sets it there (one file can serve both protocols); their values
/// must still be valid.
#[test]
fn classic_keys_do_not_apply_with_the_consumer_protocol() {
    let config = load_str(&with_group(
        "protocol = \"consumer\"\nassignment = \"range\"\nsession_timeout_ms = 6000",
        "",
    ))
    .expect("valid, with warnings");
    let lines: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "group.assignment: ignored: does not apply with group.protocol = \"consumer\": the \
             broker assigns partitions; choose its assignor with `group.remote_assignor`",
            "group.session_timeout_ms: ignored: does not apply with group.protocol = \
             \"consumer\": the broker's group.consumer.session.timeout.ms sets it",
        ]
    );
    let issues = rejected(&with_group(
        "protocol = \"consumer\"\nsession_timeout_ms = \"ten\"",
        "",
    ));
    assert_issue(&issues, "group.session_timeout_ms", &["expected"]);

    // The same keys are fine with the classic protocol, written or defaulted.
    for group in [
        "protocol = \"classic\"\nassignment = \"range\"\nsession_timeout_ms = 6000",
        "assignment = \"range\"\nsession_timeout_ms = 6000",
    ] {
        let config = load_str(&with_group(group, "")).expect("valid");
        assert_eq!(config.group.assignment, Assignment::Range);
        assert_eq!(config.group.session_timeout_ms, 6000);
        assert!(config.warnings.is_empty(), "{:#?}", config.warnings);
    }
}

/// `remote_assignor` with the classic protocol (written or the default) is accepted with a
/// warning, as in the `[group]` example of README.md's configuration walkthrough, which sets
/// every key.
#[test]
fn remote_assignor_does_not_apply_with_the_classic_protocol() {
    let config = load_str(&with_group("remote_assignor = \"uniform\"", "")).expect("valid");
    assert_eq!(config.warnings.len(), 1, "{:#?}", config.warnings);
    assert_eq!(config.warnings[0].path, "group.remote_assignor");
    let message = &config.warnings[0].message;
    assert!(
        message.contains("does not apply with group.protocol = \"classic\" (the default): ")
            && message.contains("`group.assignment`"),
        "{message}"
    );

    let config = load_str(&with_group(
        "protocol = \"classic\"\nassignment = \"cooperative-sticky\"\n\
         remote_assignor = \"uniform\"\nsession_timeout_ms = 10000",
        "",
    ))
    .expect("README.md's [group] example is valid");
    assert_eq!(config.warnings.len(), 1, "{:#?}", config.warnings);
    assert!(!config.warnings[0].message.contains("(the default)"));
    let issues = rejected(&with_group("remote_assignor = \"sticky\"", ""));
    assert_issue(&issues, "group.remote_assignor", &["expected one of"]);
}

/// The protocol can come from the environment; the file's classic keys then only warn.
#[test]
fn protocol_from_the_environment() {
    let path = file(&with_group("", ""));
    let config = load_with_env(
        std::slice::from_ref(&path),
        env(&[("TRIBUTARY_GROUP__PROTOCOL", "consumer")]),
    )
    .expect("valid");
    assert_eq!(config.group.protocol, GroupProtocol::Consumer);

    let path = file(&with_group("session_timeout_ms = 6000", ""));
    let config = load_with_env(&[path], env(&[("TRIBUTARY_GROUP__PROTOCOL", "consumer")]))
        .expect("valid, with a warning");
    assert_eq!(config.group.protocol, GroupProtocol::Consumer);
    assert_eq!(config.warnings.len(), 1, "{:#?}", config.warnings);
    assert_eq!(config.warnings[0].path, "group.session_timeout_ms");
}

/// `.` and `..` are refused as names: Kafka refuses them as topic names, and `app.id` names
/// a directory under `state.dir` (the state cleaner would work one level up).
#[test]
fn dot_names_are_refused() {
    for id in [".", ".."] {
        let issues = rejected(&MINIMAL.replace("id = \"clicks\"", &format!("id = \"{id}\"")));
        assert_issue(&issues, "app.id", &["is not a usable name"]);
    }
    let config = load_str(&MINIMAL.replace("id = \"clicks\"", "id = \"a.b\"")).expect("valid");
    assert_eq!(config.app.id, "a.b");
}

/// What exactly once needs is checked with the config, naming the key.
#[test]
fn exactly_once_needs_a_cluster_and_a_transaction_timeout_longer_than_a_commit() {
    let with = |bootstrap: &str, extra: &str| {
        format!(
            "[app]\nid = \"a\"\n[kafka]\nbootstrap_servers = \"{bootstrap}\"\n{extra}\n\
             [processing]\nguarantee = \"exactly_once\"\ncommit_interval_ms = 2000\n\
             [[pipeline]]\nname = \"p\"\nsource = {{ topics = [\"in\"] }}\n"
        )
    };
    let issues = rejected(&with("embedded", ""));
    assert_issue(
        &issues,
        "processing.guarantee",
        &["exactly_once needs a Kafka cluster", "embedded"],
    );
    let issues = rejected(&with(
        "localhost:9092",
        "[kafka.properties]\n\"transaction.timeout.ms\" = \"2000\"",
    ));
    assert_issue(
        &issues,
        "kafka.properties.\"transaction.timeout.ms\"",
        &["2000 ms is not longer than processing.commit_interval_ms (2000 ms)"],
    );
    let ok = load_str(&with(
        "localhost:9092",
        "[kafka.properties]\n\"transaction.timeout.ms\" = \"30000\"",
    ))
    .expect("a longer timeout is fine");
    assert_eq!(ok.processing.guarantee, Guarantee::ExactlyOnce);
}

#[test]
fn standby_replicas_need_an_http_address() {
    let with = |listen: &str| {
        format!("{MINIMAL}[state]\nstandby_replicas = 1\n[http]\nlisten = {listen:?}\n")
    };
    let config = load_str(&with("127.0.0.1:0")).expect("valid");
    assert_eq!(config.state.standby_replicas, 1);
    let issues = rejected(&with("off"));
    assert_issue(
        &issues,
        "state.standby_replicas",
        &["need http.listen", "HTTP address"],
    );
}

#[test]
fn source_partitioner() {
    let with = |v: &str| {
        format!(
            "[app]\nid = \"a\"\n[kafka]\nbootstrap_servers = \"b:9092\"\n[[pipeline]]\nname = \"p\"\nsource = {{ topics = [\"in\"], partitioner = {v:?} }}\n"
        )
    };
    let c = load_str(&with("crc32")).expect("valid");
    assert_eq!(c.pipelines[0].source.partitioner, KeyPartitioner::Crc32);
    let c = load_str(&with("murmur2")).expect("valid");
    assert_eq!(c.pipelines[0].source.partitioner, KeyPartitioner::Murmur2);
    let issues = rejected(&with("consistent"));
    assert_issue(
        &issues,
        "pipeline[0].source.partitioner",
        &["\"murmur2\", \"crc32\"", "found string \"consistent\""],
    );
}

/// `processing.idle_advance_ms` is a number of milliseconds, 0 (off) or more; anything else is
/// an issue naming the key.
#[test]
fn idle_advance_ms_is_read_and_checked() {
    let with = |value: &str| {
        load_str(&format!(
            "{MINIMAL}\n[processing]\nidle_advance_ms = {value}\n"
        ))
    };
    assert_eq!(
        with("5000").expect("valid").processing.idle_advance_ms,
        5_000
    );
    assert_eq!(with("0").expect("valid").processing.idle_advance_ms, 0);
    for (bad, says) in [
        ("-1", "expected a non-negative integer, found integer -1"),
        (
            "\"soon\"",
            "expected a non-negative integer, found string \"soon\"",
        ),
        ("1.5", "expected a non-negative integer"),
    ] {
        let issues = with(bad).expect_err(bad);
        assert_issue(&issues, "processing.idle_advance_ms", &[says]);
    }
}
