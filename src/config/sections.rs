//! Reads each section of the merged tree into the typed [`Config`], then checks the rules
//! that span several keys.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ::config::{Value, ValueKind};

use super::read::{self, Cx, Table};
use super::*;

/// Reads and validates the whole tree, returning every issue found; `checks` judges the values
/// written in other modules' languages where they are read.
pub(super) fn read(root: &Value, checks: &dyn ValueChecks) -> Result<Config, Vec<ConfigIssue>> {
    let mut cx = Cx::new(checks);
    let mut top = cx.table("", root).unwrap_or_else(|| Table::empty(""));

    let app = app(&mut cx, &mut top);
    let kafka = kafka(&mut cx, &mut top);
    let group = group(&mut cx, &mut top);
    // After `[group]`: which properties the worker cannot pass on depends on the protocol.
    cx.issues
        .extend(checks.properties(&kafka.properties, group.protocol));
    let processing = processing(&mut cx, &mut top);
    let state = state(&mut cx, &mut top);
    let http = http(&mut cx, &mut top);
    let pipelines = match top.get("pipeline") {
        Some((path, value)) => pipelines(&mut cx, &path, value),
        // Optional here: a library user brings topologies of their own. `tributary run` and
        // `validate` refuse a config with nothing to run (WorkerBuilder::build).
        None => Vec::new(),
    };
    top.finish(&mut cx);

    check_dlq_topic(&mut cx, &app, &processing, &pipelines);
    check_co_partitioning(&mut cx, &group, &pipelines);
    check_exactly_once(&mut cx, &kafka, &processing);
    check_standbys(&mut cx, &state, &http);
    let config = Config {
        app,
        kafka,
        group,
        processing,
        state,
        http,
        pipelines: pipelines.into_iter().map(|(_, p)| p).collect(),
        warnings: std::mem::take(&mut cx.warnings),
    };
    if cx.issues.is_empty() {
        Ok(config)
    } else {
        Err(cx.issues)
    }
}

fn app(cx: &mut Cx, top: &mut Table<'_>) -> AppConfig {
    let mut t = top.section(cx, "app");
    let app = AppConfig {
        id: t.req(cx, "id", read::name).unwrap_or_default(),
        threads: t
            .opt(cx, "threads", read::positive)
            .unwrap_or(AppConfig::DEFAULT_THREADS),
        instance_id: t.opt(cx, "instance_id", read::non_empty),
    };
    t.finish(cx);
    app
}

fn kafka(cx: &mut Cx, top: &mut Table<'_>) -> KafkaConfig {
    let mut t = top.section(cx, "kafka");
    let bootstrap_servers = t
        .req(cx, "bootstrap_servers", read::non_empty)
        .unwrap_or_default();
    let startup_timeout_ms = t
        .opt(cx, "startup_timeout_ms", read::non_negative)
        .unwrap_or(0);
    let properties = t.opt_with(cx, "properties", properties).unwrap_or_default();
    t.finish(cx);
    KafkaConfig {
        bootstrap_servers,
        startup_timeout_ms,
        properties,
    }
}

/// `kafka.properties`: nested tables (from bare dotted keys or environment variables) are
/// flattened back into dotted librdkafka names.
fn properties(cx: &mut Cx, path: &str, value: &Value) -> Option<BTreeMap<String, String>> {
    let entries = cx.table(path, value)?.into_entries();
    let mut out = BTreeMap::new();
    flatten_properties(cx, "", entries, &mut out);
    Some(out)
}

fn flatten_properties(
    cx: &mut Cx,
    prefix: &str,
    entries: BTreeMap<&str, &Value>,
    out: &mut BTreeMap<String, String>,
) {
    for (key, value) in entries {
        let name = if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        };
        match &value.kind {
            ValueKind::Table(inner) => {
                let inner = inner.iter().map(|(k, v)| (k.as_str(), v)).collect();
                flatten_properties(cx, &name, inner, out);
            }
            _ => {
                if let Some(text) = cx.scalar(&property_path(&name), value, read::text) {
                    out.insert(name, text);
                }
            }
        }
    }
}

fn group(cx: &mut Cx, top: &mut Table<'_>) -> GroupConfig {
    let mut t = top.section(cx, "group");
    let d = GroupConfig::default();
    let explicit = t.has("protocol");
    let protocol = t.opt(cx, "protocol", read::choice::<GroupProtocol>);
    // The other protocol's keys are read (their values must still be valid) and reported as
    // having no effect: a file may set both, with the protocol chosen per environment.
    // With an unreadable `protocol` (reported already) it is unknown which keys apply.
    if let Some(p) = protocol.or((!explicit).then_some(d.protocol)) {
        let default = if explicit { "" } else { " (the default)" };
        for &(key, why) in p.inapplicable_keys() {
            if t.has(key) {
                cx.warn(
                    t.key_path(key),
                    format!(
                        "ignored: does not apply with group.protocol = \"{p}\"{default}: {why}"
                    ),
                );
            }
        }
    }
    let group = GroupConfig {
        protocol: protocol.unwrap_or(d.protocol),
        assignment: t
            .opt(cx, "assignment", read::choice)
            .unwrap_or(d.assignment),
        remote_assignor: t
            .opt(cx, "remote_assignor", read::choice)
            .unwrap_or(d.remote_assignor),
        session_timeout_ms: t
            .opt(cx, "session_timeout_ms", read::positive)
            .unwrap_or(d.session_timeout_ms),
    };
    t.finish(cx);
    group
}

fn processing(cx: &mut Cx, top: &mut Table<'_>) -> ProcessingConfig {
    let mut t = top.section(cx, "processing");
    let d = ProcessingConfig::default();
    let processing = ProcessingConfig {
        guarantee: t.opt(cx, "guarantee", read::choice).unwrap_or(d.guarantee),
        commit_interval_ms: t
            .opt(cx, "commit_interval_ms", read::positive)
            .unwrap_or(d.commit_interval_ms),
        on_error: t.opt(cx, "on_error", read::choice).unwrap_or(d.on_error),
        dlq_topic: t.opt(cx, "dlq_topic", read::name),
        max_buffered_records: t
            .opt(cx, "max_buffered_records", read::positive)
            .unwrap_or(d.max_buffered_records),
        threads: t.opt(cx, "threads", read::positive).unwrap_or(d.threads),
        commit_timeout_ms: t
            .opt(cx, "commit_timeout_ms", read::positive)
            .unwrap_or(d.commit_timeout_ms),
        idle_advance_ms: t
            .opt(cx, "idle_advance_ms", read::non_negative)
            .unwrap_or(d.idle_advance_ms),
    };
    t.finish(cx);
    processing
}

fn state(cx: &mut Cx, top: &mut Table<'_>) -> StateConfig {
    let mut t = top.section(cx, "state");
    let d = StateConfig::default();
    let state = StateConfig {
        dir: t.opt(cx, "dir", path).unwrap_or(d.dir),
        standby_replicas: t
            .opt(cx, "standby_replicas", read::non_negative)
            .unwrap_or(d.standby_replicas),
        cache_max_entries: t
            .opt(cx, "cache_max_entries", read::positive)
            .unwrap_or(d.cache_max_entries),
        block_cache_mb: t
            .opt(cx, "block_cache_mb", mebibytes)
            .unwrap_or(d.block_cache_mb),
        write_buffer_mb: t
            .opt(cx, "write_buffer_mb", mebibytes)
            .unwrap_or(d.write_buffer_mb),
        cleanup_delay_ms: t
            .opt(cx, "cleanup_delay_ms", read::positive)
            .unwrap_or(d.cleanup_delay_ms),
    };
    t.finish(cx);
    state
}

fn http(cx: &mut Cx, top: &mut Table<'_>) -> HttpConfig {
    let mut t = top.section(cx, "http");
    let listen = t
        .opt(cx, "listen", listen)
        .unwrap_or(HttpConfig::default().listen);
    let advertised = t.opt(cx, "advertised", advertised);
    if advertised.is_some() && listen.is_none() {
        cx.issue(
            "http.advertised",
            "is set, but http.listen is off: other workers could not reach this one",
        );
    }
    t.finish(cx);
    HttpConfig { listen, advertised }
}

/// `http.advertised`: `host:port`.
fn advertised(value: &Value) -> Result<String, String> {
    let s = read::string(value)?;
    crate::cluster::check_advertised(s.trim())?;
    Ok(s.trim().to_string())
}

/// `http.listen`: an IP address and port, or `"off"`/`""` for none.
fn listen(value: &Value) -> Result<Option<std::net::SocketAddr>, String> {
    let expected = "expected an address such as \"127.0.0.1:9464\", or \"off\"";
    let s =
        read::string(value).map_err(|_| format!("{expected}, found {}", read::describe(value)))?;
    match s.trim() {
        "" | "off" => Ok(None),
        addr => addr
            .parse()
            .map(Some)
            .map_err(|_| format!("{expected}, found {}", read::describe(value))),
    }
}

/// Largest memory size a `*_mb` key takes: 1 TiB.
const MAX_MEBIBYTES: usize = 1 << 20;

/// A memory size in MiB (`state.block_cache_mb`, `state.write_buffer_mb`): 1 to 1 TiB.
fn mebibytes(value: &Value) -> Result<usize, String> {
    let n: usize = read::positive(value)?;
    if n > MAX_MEBIBYTES {
        return Err(format!(
            "expected at most {MAX_MEBIBYTES} (MiB, 1 TiB), found {}",
            read::describe(value)
        ));
    }
    Ok(n)
}

/// A file system path.
fn path(value: &Value) -> Result<PathBuf, String> {
    read::non_empty(value).map(PathBuf::from)
}

/// A schema registry URL.
fn url(value: &Value) -> Result<String, String> {
    let s = read::non_empty(value)?;
    if !(s.starts_with("http://") || s.starts_with("https://")) {
        return Err(format!(
            "expected an http:// or https:// URL, found {}",
            read::describe(value)
        ));
    }
    Ok(s)
}

/// The `[[pipeline]]` array, each pipeline with its index. Checks that names are unique.
fn pipelines(cx: &mut Cx, path: &str, value: &Value) -> Vec<(usize, PipelineConfig)> {
    let Some(items) = cx.array(path, value, "an array of tables ([[pipeline]])") else {
        return Vec::new();
    };
    if items.is_empty() {
        cx.issue(path, "add at least one [[pipeline]] table");
    }
    let pipelines: Vec<(usize, PipelineConfig)> = items
        .iter()
        .enumerate()
        .filter_map(|(i, v)| Some((i, pipeline(cx, &format!("{path}[{i}]"), v)?)))
        .collect();

    let mut first_with_name: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, p) in &pipelines {
        if let Some(first) = first_with_name.insert(&p.name, *i) {
            cx.issue(
                format!("{path}[{i}].name"),
                format!(
                    "duplicate pipeline name {:?} (also used by {path}[{first}])",
                    p.name
                ),
            );
            first_with_name.insert(&p.name, first);
        }
    }
    pipelines
}

fn pipeline(cx: &mut Cx, path: &str, value: &Value) -> Option<PipelineConfig> {
    let mut t = cx.table(path, value)?;
    let name = t.req(cx, "name", read::name);
    let source = t.req_with(cx, "source", source);
    let sink = t.opt_with(cx, "sink", sink);
    let steps = t.opt_with(cx, "steps", steps).unwrap_or_default();
    t.finish(cx);

    if let (Some(source), Some(sink)) = (&source, &sink) {
        if source.topics.contains(&sink.topic) {
            cx.issue(
                format!("{path}.sink.topic"),
                format!(
                    "{:?} is also this pipeline's source topic; the pipeline would read its own \
                     output",
                    sink.topic
                ),
            );
        }
    }
    Some(PipelineConfig {
        name: name?,
        source: source?,
        sink,
        steps,
    })
}

fn source(cx: &mut Cx, path: &str, value: &Value) -> Option<SourceConfig> {
    let mut t = cx.table(path, value)?;
    let topics = t.req_with(cx, "topics", topics);
    let format = t.opt(cx, "format", read::choice).unwrap_or_default();
    let checks = cx.checks;
    let time = t.opt(cx, "time", |v| cel_expr(checks, v));
    let schema = t.opt(cx, "schema", self::path);
    let registry_url = t.opt(cx, "registry_url", url);
    let partitioner = t.opt(cx, "partitioner", read::choice).unwrap_or_default();
    check_avro(cx, &t, format, schema.is_some() || registry_url.is_some());
    t.finish(cx);
    Some(SourceConfig {
        topics: topics?,
        format,
        time,
        schema,
        registry_url,
        partitioner,
    })
}

fn topics(cx: &mut Cx, path: &str, value: &Value) -> Option<Vec<String>> {
    if let ValueKind::String(s) = &value.kind {
        let message = format!("expected an array of topic names, found string {s:?}");
        cx.issue(path, format!("{message} (write topics = [{s:?}])"));
        return None;
    }
    let items = cx.array(path, value, "an array of topic names")?;
    if items.is_empty() {
        cx.issue(path, "must list at least one topic");
        return None;
    }
    let topics: Vec<Option<String>> = items
        .iter()
        .enumerate()
        .map(|(i, v)| cx.scalar(&format!("{path}[{i}]"), v, read::name))
        .collect();
    topics.into_iter().collect()
}

fn sink(cx: &mut Cx, path: &str, value: &Value) -> Option<SinkConfig> {
    let mut t = cx.table(path, value)?;
    let topic = t.req(cx, "topic", read::name);
    let format = t.opt(cx, "format", read::choice).unwrap_or_default();
    let checks = cx.checks;
    let partitioner = t
        .opt(cx, "partitioner", |v| partitioner(checks, v))
        .unwrap_or_else(|| SinkConfig::DEFAULT_PARTITIONER.to_string());
    let schema = t.opt(cx, "schema", self::path);
    let registry_url = t.opt(cx, "registry_url", url);
    check_avro(cx, &t, format, schema.is_some() || registry_url.is_some());
    t.finish(cx);
    Some(SinkConfig {
        topic: topic?,
        format,
        partitioner,
        schema,
        registry_url,
    })
}

/// Avro needs a schema from a file or a registry.
fn check_avro(cx: &mut Cx, t: &Table<'_>, format: Format, has_schema: bool) {
    // A `schema` or `registry_url` that is present but invalid was reported already.
    let has_schema = has_schema || t.has("schema") || t.has("registry_url");
    if format == Format::Avro && !has_schema {
        cx.issue(
            t.key_path("format"),
            "\"avro\" needs `schema` (a file) or `registry_url`",
        );
    }
}

/// `sink.partitioner`: `murmur2`, `round_robin`, `random`, `field:<name>` or
/// `range:<b1,b2,...>`.
fn partitioner(checks: &dyn ValueChecks, value: &Value) -> Result<String, String> {
    let s = read::string(value)?;
    checks.partitioner(&s).map(|()| s)
}

/// A CEL expression: it must compile (run-time problems, such as a missing field, are the
/// record's and go to `processing.on_error`).
fn cel_expr(checks: &dyn ValueChecks, value: &Value) -> Result<String, String> {
    let s = read::non_empty(value)?;
    checks.expression(&s).map(|()| s)
}

/// An `aggregate.fields` entry: `count()`, `sum(<CEL>)`, `min(..)`, `max(..)` or `avg(..)`.
fn aggregate_field(checks: &dyn ValueChecks, value: &Value) -> Result<String, String> {
    let s = read::non_empty(value)?;
    checks.aggregate_field(&s).map(|()| s)
}

fn steps(cx: &mut Cx, path: &str, value: &Value) -> Option<Vec<StepConfig>> {
    let items = cx.array(path, value, "an array of step tables")?;
    let steps: Vec<Option<StepConfig>> = items
        .iter()
        .enumerate()
        .map(|(j, v)| step(cx, &format!("{path}[{j}]"), v))
        .collect();
    steps.into_iter().collect()
}

/// The keys that name a step; each step table has exactly one.
const STEP_KINDS: [&str; 5] = ["filter", "map", "key_by", "aggregate", "dedup"];

fn step(cx: &mut Cx, path: &str, value: &Value) -> Option<StepConfig> {
    let mut t = cx.table(path, value)?;
    let present: Vec<String> = STEP_KINDS
        .iter()
        .filter(|k| t.has(k))
        .map(|k| format!("`{k}`"))
        .collect();
    if present.len() != 1 {
        let kinds: Vec<String> = STEP_KINDS.iter().map(|k| format!("`{k}`")).collect();
        let found = if present.is_empty() {
            "none".to_string()
        } else {
            present.join(" and ")
        };
        cx.issue(
            path,
            format!(
                "expected exactly one of {}, found {found}",
                kinds.join(", ")
            ),
        );
    }
    // Read every kind present so that problems inside each are reported too.
    let checks = cx.checks;
    let cel_expr = |v: &Value| cel_expr(checks, v);
    let steps = [
        t.opt(cx, "filter", cel_expr).map(StepConfig::Filter),
        t.opt(cx, "map", cel_expr).map(StepConfig::Map),
        t.opt(cx, "key_by", cel_expr).map(StepConfig::KeyBy),
        t.opt_with(cx, "aggregate", aggregate)
            .map(StepConfig::Aggregate),
        t.opt_with(cx, "dedup", dedup).map(StepConfig::Dedup),
    ];
    t.finish(cx);
    steps.into_iter().flatten().next()
}

fn aggregate(cx: &mut Cx, path: &str, value: &Value) -> Option<AggregateConfig> {
    let mut t = cx.table(path, value)?;
    let window = t.opt_with(cx, "window", window);
    let fields = t.req_with(cx, "fields", fields);
    let emit = t.opt(cx, "emit", read::choice).unwrap_or_default();
    t.finish(cx);
    Some(AggregateConfig {
        window,
        fields: fields?,
        emit,
    })
}

/// `aggregate.fields`: output name → aggregate expression, at least one.
fn fields(cx: &mut Cx, path: &str, value: &Value) -> Option<BTreeMap<String, String>> {
    let entries = cx.table(path, value)?.into_entries();
    if entries.is_empty() {
        cx.issue(
            path,
            "must define at least one field, such as `count = \"count()\"`",
        );
        return None;
    }
    let mut fields = BTreeMap::new();
    for (name, v) in entries {
        let field_path = read::join(path, name);
        if name == "window_start" || name == "window_end" {
            cx.issue(
                &field_path,
                "reserved for the window bounds of windowed results (and of the stored state)",
            );
        }
        let checks = cx.checks;
        if let Some(expr) = cx.scalar(&field_path, v, |v| aggregate_field(checks, v)) {
            fields.insert(name.to_string(), expr);
        }
    }
    Some(fields)
}

fn window(cx: &mut Cx, path: &str, value: &Value) -> Option<WindowConfig> {
    let mut t = cx.table(path, value)?;
    let kind = t.req(cx, "kind", read::choice::<WindowKind>);
    let size = t.opt(cx, "size", read::positive_duration);
    let advance = t.opt(cx, "advance", read::positive_duration);
    let gap = t.opt(cx, "gap", read::positive_duration);
    let grace = t.opt(cx, "grace", read::duration);

    if let Some(kind) = kind {
        let (needed, unused): (&[&str], &[&str]) = match kind {
            WindowKind::Tumbling => (&["size"], &["advance", "gap"]),
            WindowKind::Hopping => (&["size", "advance"], &["gap"]),
            WindowKind::Session => (&["gap"], &["size", "advance"]),
        };
        for key in needed.iter().filter(|k| !t.has(k)) {
            cx.missing(t.key_path(key), &format!("a {kind} window needs `{key}`"));
        }
        for key in unused.iter().filter(|k| t.has(k)) {
            cx.issue(
                t.key_path(key),
                format!("not used by a {kind} window; remove it"),
            );
        }
        if let (WindowKind::Hopping, Some(size), Some(advance)) = (kind, size, advance) {
            if advance > size {
                cx.issue(
                    t.key_path("advance"),
                    format!("must not exceed size ({advance:?} > {size:?})"),
                );
            }
        }
    }
    t.finish(cx);
    Some(WindowConfig {
        kind: kind?,
        size,
        advance,
        gap,
        grace: grace.unwrap_or_default(),
    })
}

fn dedup(cx: &mut Cx, path: &str, value: &Value) -> Option<DedupConfig> {
    let mut t = cx.table(path, value)?;
    let checks = cx.checks;
    let key = t.req(cx, "key", |v| cel_expr(checks, v));
    let within = t.req(cx, "within", read::positive_duration);
    t.finish(cx);
    Some(DedupConfig {
        key: key?,
        within: within?,
    })
}

/// With `on_error = "dlq"`, the dead-letter topic must not be one of the source topics.
fn check_dlq_topic(
    cx: &mut Cx,
    app: &AppConfig,
    processing: &ProcessingConfig,
    pipelines: &[(usize, PipelineConfig)],
) {
    if processing.on_error != OnError::Dlq || app.id.is_empty() {
        return;
    }
    let dlq = processing.dlq_topic(&app.id);
    let source = pipelines
        .iter()
        .find(|(_, p)| p.source.topics.contains(&dlq));
    if let Some((i, p)) = source {
        let what = if processing.dlq_topic.is_some() {
            ""
        } else {
            " (the default, <app.id>-dlq)"
        };
        cx.issue(
            "processing.dlq_topic",
            format!(
                "dead-letter topic {dlq:?}{what} is also a source topic of pipeline[{i}] ({:?})",
                p.name
            ),
        );
    }
}

/// What `exactly_once` needs: a cluster that stores offsets sent to a transaction, and a
/// transaction timeout longer than a commit interval (a transaction spans one).
fn check_exactly_once(cx: &mut Cx, kafka: &KafkaConfig, processing: &ProcessingConfig) {
    if processing.guarantee != Guarantee::ExactlyOnce {
        return;
    }
    if kafka.bootstrap_servers == "embedded" {
        cx.issue(
            "processing.guarantee",
            "exactly_once needs a Kafka cluster: the embedded cluster accepts transactions but \
             does not keep the offsets sent to them"
                .to_string(),
        );
    }
    let key = TRANSACTION_TIMEOUT_PROPERTY;
    if let Some(value) = kafka.properties.get(key) {
        match value.trim().parse::<u64>() {
            Ok(ms) if ms > processing.commit_interval_ms => {}
            Ok(ms) => cx.issue(
                property_path(key),
                format!(
                    "{ms} ms is not longer than processing.commit_interval_ms ({} ms): under \
                     exactly_once a transaction stays open for a whole commit interval, and the \
                     broker aborts one that outlives this timeout",
                    processing.commit_interval_ms
                ),
            ),
            // librdkafka's own check of the value names it already.
            Err(_) => {}
        }
    }
}

/// Standby replicas are placed by worker, and a worker is known to the others by its HTTP
/// address (advertised in its group membership).
fn check_standbys(cx: &mut Cx, state: &StateConfig, http: &HttpConfig) {
    if state.standby_replicas > 0 && http.listen.is_none() {
        cx.issue(
            "state.standby_replicas",
            "standby replicas need http.listen: workers are told apart by the HTTP address              they advertise"
                .to_string(),
        );
    }
}

/// A pipeline reading several topics needs an assignor that co-partitions them
/// ([`GroupConfig::co_partitioning_issue`]).
fn check_co_partitioning(cx: &mut Cx, group: &GroupConfig, pipelines: &[(usize, PipelineConfig)]) {
    // A bad value of the assignor's own key was reported already (and replaced by the default).
    let key = group.assignor().key;
    if cx.issues.iter().any(|i| i.path == key) {
        return;
    }
    for (_, p) in pipelines {
        let what = format!("pipeline {:?}", p.name);
        cx.issues
            .extend(group.co_partitioning_issue(&what, &p.source.topics));
    }
}
