//! Turns `[[pipeline]]` configurations into topologies, reporting every problem at once with
//! its key path (`pipeline[0].steps[2].aggregate.window.size: ...`).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::aggregate::{Aggregate, Field};
use super::dedup::Dedup;
use super::expr::{self, Expr};
use super::format::Codec;
use super::partitioner::Partitioner;
use super::window::Windows;
use super::{End, StageProcessor, Step};
use crate::avro::AvroCodec;
use crate::config::{ConfigIssue, Emit, Format, PipelineConfig, StepConfig};
use crate::processor::{changelog_topic, TaskInfo, Topology};

/// The repartition topic of a pipeline's `n`th `key_by` (counting from 0).
pub fn repartition_topic(app_id: &str, pipeline: &str, n: usize) -> String {
    match n {
        0 => format!("{app_id}-{pipeline}-repartition"),
        n => format!("{app_id}-{pipeline}-repartition-{}", n + 1),
    }
}

/// A store of a stage, and whether its keys are the records' keys (false for a dedup step's
/// marks, keyed by the step's `key` expression).
type StageStore = (String, bool);

/// The store of each stateful step of a pipeline, by step index: the first `aggregate` gets the
/// pipeline's name (so `/state/<pipeline>/<key>` reads a running aggregate), any other stateful
/// step `<pipeline>-<step index>`.
pub fn store_names(p: &PipelineConfig) -> BTreeMap<usize, String> {
    let mut first_aggregate = true;
    p.steps
        .iter()
        .enumerate()
        .filter_map(|(j, step)| match step {
            StepConfig::Aggregate(_) if std::mem::take(&mut first_aggregate) => {
                Some((j, p.name.clone()))
            }
            StepConfig::Aggregate(_) | StepConfig::Dedup(_) => Some((j, format!("{}-{j}", p.name))),
            _ => None,
        })
        .collect()
}

/// The internal topics of a pipeline, each with what it is: changelogs and repartition topics.
fn internal_topics(app_id: &str, p: &PipelineConfig) -> Vec<(String, String)> {
    let changelogs = store_names(p).into_values().map(|s| {
        (
            changelog_topic(app_id, &s),
            format!("the changelog of store {s:?}"),
        )
    });
    let key_bys = p
        .steps
        .iter()
        .filter(|s| matches!(s, StepConfig::KeyBy(_)))
        .count();
    let repartitions = (0..key_bys).map(|n| {
        (
            repartition_topic(app_id, &p.name, n),
            format!("a repartition topic of pipeline {:?}", p.name),
        )
    });
    changelogs.chain(repartitions).collect()
}

/// Compiles every pipeline; checks topics across pipelines too.
pub fn compile_all(
    app_id: &str,
    dlq_topic: Option<&str>,
    pipelines: &[PipelineConfig],
) -> Result<Vec<Topology>, Vec<ConfigIssue>> {
    let mut issues = Vec::new();
    let mut topologies = Vec::new();
    for (i, p) in pipelines.iter().enumerate() {
        match compile(app_id, i, p) {
            Ok(mut t) => topologies.append(&mut t),
            Err(mut e) => issues.append(&mut e),
        }
    }
    check_topics(app_id, dlq_topic, pipelines, &mut issues);
    if issues.is_empty() {
        Ok(topologies)
    } else {
        Err(issues)
    }
}

/// Topics named twice: a topic read by two pipelines (or twice by one), and user topics that
/// collide with internal ones or a sink writing to the dead-letter topic. (A sink that is its own
/// pipeline's source, and a dead-letter topic that is a source, are the config layer's checks.)
fn check_topics(
    app_id: &str,
    dlq_topic: Option<&str>,
    pipelines: &[PipelineConfig],
    issues: &mut Vec<ConfigIssue>,
) {
    let internal: BTreeMap<String, String> = pipelines
        .iter()
        .flat_map(|p| internal_topics(app_id, p))
        .collect();
    let mut readers: BTreeMap<&str, String> = BTreeMap::new();
    for (i, p) in pipelines.iter().enumerate() {
        for (j, topic) in p.source.topics.iter().enumerate() {
            let path = format!("pipeline[{i}].source.topics[{j}]");
            if let Some(first) = readers.insert(topic, path.clone()) {
                issues.push(ConfigIssue::new(
                    &path,
                    format!(
                        "topic {topic:?} is already read at {first}; a topic feeds one pipeline"
                    ),
                ));
            }
            if let Some(what) = internal.get(topic) {
                issues.push(ConfigIssue::new(
                    &path,
                    format!("topic {topic:?} is {what}"),
                ));
            }
        }
        if let Some(sink) = &p.sink {
            let path = format!("pipeline[{i}].sink.topic");
            if dlq_topic == Some(sink.topic.as_str()) {
                issues.push(ConfigIssue::new(
                    &path,
                    format!("topic {:?} is the dead-letter topic", sink.topic),
                ));
            }
            if let Some(what) = internal.get(&sink.topic) {
                issues.push(ConfigIssue::new(
                    &path,
                    format!("topic {:?} is {what}", sink.topic),
                ));
            }
        }
    }
}

/// Compiles one pipeline into one topology per stage.
pub fn compile(
    app_id: &str,
    index: usize,
    p: &PipelineConfig,
) -> Result<Vec<Topology>, Vec<ConfigIssue>> {
    let at = |path: &str| format!("pipeline[{index}].{path}");
    let mut issues = Vec::new();
    let env = expr::environment();
    let source_codec = codec(
        p.source.format,
        Avro {
            schema: p.source.schema.as_deref(),
            registry_url: p.source.registry_url.as_deref(),
            topic: p.source.topics.first().map_or("", String::as_str),
        },
        &at("source"),
        &mut issues,
    );
    let time = p.source.time.as_deref().and_then(|t| {
        Expr::compile(&env, t)
            .map_err(|e| issues.push(ConfigIssue::new(at("source.time"), e)))
            .ok()
    });
    let sink = p.sink.as_ref().and_then(|s| {
        let avro = Avro {
            schema: s.schema.as_deref(),
            registry_url: s.registry_url.as_deref(),
            topic: &s.topic,
        };
        let codec = codec(s.format, avro, &at("sink"), &mut issues)?;
        let partitioner = Partitioner::parse(&s.partitioner)
            .map_err(|e| issues.push(ConfigIssue::new(at("sink.partitioner"), e)))
            .ok()?;
        Some(End::Sink {
            topic: s.topic.clone(),
            codec,
            partitioner,
            counter: 0,
            checked: false,
        })
    });

    // Stages, cut at each key_by.
    let mut stages: Vec<(Vec<Step>, Vec<StageStore>)> = vec![(Vec::new(), Vec::new())];
    let mut ends: Vec<End> = Vec::new();
    let store_of = store_names(p);
    for (j, step) in p.steps.iter().enumerate() {
        let label = format!("steps[{j}].{}", step.kind());
        let path = at(&label);
        let compiled = |text: &str, issues: &mut Vec<ConfigIssue>| {
            Expr::compile(&env, text)
                .map_err(|e| issues.push(ConfigIssue::new(&path, e)))
                .ok()
        };
        let (steps, stores) = stages.last_mut().expect("invariant: at least one stage");
        match step {
            StepConfig::Filter(text) => {
                if let Some(expr) = compiled(text, &mut issues) {
                    steps.push(Step::Filter { label, expr });
                }
            }
            StepConfig::Map(text) => {
                if let Some(expr) = compiled(text, &mut issues) {
                    steps.push(Step::Map { label, expr });
                }
            }
            StepConfig::KeyBy(text) => {
                if let Some(expr) = compiled(text, &mut issues) {
                    ends.push(End::Repartition {
                        label,
                        expr,
                        topic: repartition_topic(app_id, &p.name, ends.len()),
                    });
                }
                stages.push((Vec::new(), Vec::new()));
            }
            StepConfig::Aggregate(agg) => {
                let store = store_of[&j].clone();
                let mut fields = Vec::new();
                for (name, text) in &agg.fields {
                    match Field::parse(&env, name, text) {
                        Ok(f) => fields.push(f),
                        Err(e) => issues.push(ConfigIssue::new(format!("{path}.fields.{name}"), e)),
                    }
                }
                if agg.window.is_none() && agg.emit == Emit::Final {
                    issues.push(ConfigIssue::new(format!("{path}.emit"), "\"final\" needs a window (a running aggregate never closes); use \"update\" or add a window"));
                }
                stores.push((store.clone(), true));
                steps.push(Step::Aggregate(Aggregate::new(
                    label,
                    store,
                    fields,
                    agg.window.as_ref().map(Windows::from_config),
                    agg.emit,
                )));
            }
            StepConfig::Dedup(d) => {
                let store = store_of[&j].clone();
                let key = Expr::compile(&env, &d.key)
                    .map_err(|e| issues.push(ConfigIssue::new(format!("{path}.key"), e)))
                    .ok();
                if let Some(key) = key {
                    let within = i64::try_from(d.within.as_millis()).unwrap_or(i64::MAX);
                    // Keyed by the dedup id, not the record key.
                    stores.push((store.clone(), false));
                    steps.push(Step::Dedup(Dedup::new(label, store, key, within)));
                }
            }
        }
    }
    if !issues.is_empty() {
        return Err(issues);
    }
    let source_codec = source_codec.expect("invariant: no issues means the codec compiled");
    ends.push(sink.unwrap_or(End::Nothing));
    let mut topologies = Vec::new();
    let mut sources = p.source.topics.clone();
    for (k, ((steps, stores), end)) in stages.into_iter().zip(ends).enumerate() {
        let next_source = match &end {
            End::Repartition { topic, .. } => Some(topic.clone()),
            _ => None,
        };
        // Later stages read the repartition topic, which holds JSON.
        let (codec, time) = match k {
            0 => (source_codec.clone(), time.clone()),
            _ => (Codec::Json, None),
        };
        let processor = StageProcessor::new(codec, time, steps, end.clone());
        let mut t = Topology::new(p.name.clone(), sources.clone(), move |_: &TaskInfo| {
            processor.clone()
        });
        for (s, keyed) in stores {
            t = if keyed {
                t.store(s)
            } else {
                t.unkeyed_store(s)
            };
        }
        if k == 0 {
            // Later stages read the repartition topic, which the workers write with murmur2.
            t = t.keys_partitioned_by(p.source.partitioner);
        }
        match &end {
            End::Sink { topic, .. } | End::Repartition { topic, .. } => t = t.sink(topic.clone()),
            End::Nothing => {}
        }
        topologies.push(t);
        if let Some(next) = next_source {
            sources = vec![next];
        }
    }
    Ok(topologies)
}

/// Where an Avro source or sink gets its schema.
struct Avro<'a> {
    schema: Option<&'a std::path::Path>,
    registry_url: Option<&'a str>,
    /// The topic whose `<topic>-value` subject a registry sink registers under.
    topic: &'a str,
}

/// The codec of a source or sink at `path` (`pipeline[i].source` / `.sink`).
fn codec(
    format: Format,
    avro: Avro<'_>,
    path: &str,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Codec> {
    if let Some(c) = Codec::plain(format) {
        return Some(c);
    }
    let built = match (avro.registry_url, avro.schema) {
        (Some(url), schema) => {
            AvroCodec::with_registry(url, crate::avro::value_subject(avro.topic), schema)
                .map_err(|e| (format!("{path}.registry_url"), e.to_string()))
        }
        (None, Some(schema)) => AvroCodec::from_schema_file(schema)
            .map_err(|e| (format!("{path}.schema"), e.to_string())),
        (None, None) => Err((
            format!("{path}.format"),
            "\"avro\" needs `schema` (a file) or `registry_url`".to_string(),
        )),
    };
    match built {
        Ok(c) => Some(Codec::Avro(Arc::new(c))),
        Err((at, message)) => {
            issues.push(ConfigIssue::new(at, message));
            None
        }
    }
}
