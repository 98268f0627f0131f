//! Declarative pipelines: each `[[pipeline]]` of the configuration compiled into topologies that
//! the worker runs like any other (same tasks, stores, changelogs and commit rules).
//!
//! A pipeline is cut into *stages* at each `key_by`: the stage before it ends by re-keying its
//! records and writing them to the internal repartition topic
//! `<app.id>-<pipeline>-repartition` (`-repartition-2`, ... for later ones), whose partitions
//! are chosen by the new key (murmur2); the next stage reads that topic, so all records of a
//! key meet in one task whichever worker read them. Each stage is one [`crate::Topology`] (Kafka
//! Streams calls it a sub-topology).
//!
//! Inside a stage, records are CEL values ([`cel::Value`]) flowing one way: decode → steps →
//! sink or repartition. A step failing for a record (bad input, an expression that fails) fails
//! the record with the step's key path, and the worker's `processing.on_error` decides what
//! happens to it. A record too late for its windows is not a failure: the aggregate drops it
//! and counts it ([`crate::processor::Context::drop_late`]).

pub(crate) mod aggregate;
pub(crate) mod dedup;
pub(crate) mod expr;
pub(crate) mod format;
pub mod partitioner;
pub(crate) mod value;
pub(crate) mod window;

mod compile;

pub(crate) use compile::compile_all;

use std::sync::Arc;

use cel::Value;

use crate::processor::{Context, ProcessError, Processor};
use crate::types::{OutputRecord, Record};
use aggregate::Aggregate;
use dedup::Dedup;
use expr::{Expr, Scope};
use format::Codec;
use partitioner::Partitioner;

/// A record between steps.
#[derive(Debug, Clone)]
pub(crate) struct Rec {
    /// The key (text, bytes or null).
    pub key: Value,
    /// The value.
    pub value: Value,
    /// Event time, epoch ms.
    pub time: i64,
}

/// One compiled step of a stage.
#[derive(Debug, Clone)]
enum Step {
    Filter { label: String, expr: Expr },
    Map { label: String, expr: Expr },
    Aggregate(Aggregate),
    Dedup(Dedup),
}

/// Where a stage's records go.
#[derive(Debug, Clone)]
enum End {
    /// The pipeline's sink.
    Sink {
        topic: String,
        codec: Codec,
        partitioner: Partitioner,
        /// Round-robin position of this task.
        counter: u64,
        /// The partitioner was checked against the topic's partition count.
        checked: bool,
    },
    /// A `key_by`: re-key and write to the repartition topic.
    Repartition {
        label: String,
        expr: Expr,
        topic: String,
    },
    /// No sink: the pipeline's output is its state.
    Nothing,
}

/// The processor of one stage in one task.
#[derive(Debug, Clone)]
pub(crate) struct StageProcessor {
    codec: Codec,
    /// The only top-level value fields the stage reads before it replaces the value (`None`:
    /// it needs the whole value).
    fields: Option<Arc<[String]>>,
    time: Option<Expr>,
    steps: Vec<Step>,
    end: End,
}

fn key_value(key: Option<&[u8]>) -> Value {
    match key {
        None => Value::Null,
        Some(k) => match std::str::from_utf8(k) {
            Ok(s) => Value::String(Arc::new(s.to_string())),
            Err(_) => Value::Bytes(Arc::new(k.to_vec())),
        },
    }
}

/// Event times beyond ±10^15 ms (about 31,000 years) are refused: they would overflow window
/// arithmetic and, saved as stream time, make every later record late.
const MAX_EVENT_TIME: i64 = 1_000_000_000_000_000;

fn event_time(v: &Value) -> Option<i64> {
    let t = match v {
        Value::Int(i) => *i,
        Value::UInt(u) => i64::try_from(*u).ok()?,
        Value::Float(f) if f.is_finite() && f.abs() < MAX_EVENT_TIME as f64 => *f as i64,
        Value::Timestamp(t) => t.timestamp_millis(),
        _ => return None,
    };
    (t.abs() <= MAX_EVENT_TIME).then_some(t)
}

impl Processor for StageProcessor {
    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let value = self
            .codec
            .decode(record.value, self.fields.as_deref())
            .map_err(|e| ProcessError::record("source.format", e))?;
        let key = key_value(record.key);
        let mut rec = Rec {
            key,
            value,
            time: record.timestamp.unwrap_or_else(now_ms),
        };
        if let Some(time) = &self.time {
            let scope = scope(&rec, record);
            let t = time
                .eval(&scope)
                .map_err(|e| ProcessError::record("source.time", e))?;
            rec.time = event_time(&t).ok_or_else(|| {
                ProcessError::record(
                    "source.time",
                    format!(
                        "`{}` gave {} {}, expected epoch milliseconds (within ±10^15) or a timestamp",
                        time.text(),
                        value::type_name(&t),
                        String::from_utf8_lossy(&value::to_json(&t).unwrap_or_default())
                    ),
                )
            })?;
        }
        self.run(0, rec, record, ctx)
    }

    fn rolled_back(&mut self) {
        // The stream time and expiry indexes may have moved with the undone writes.
        for step in &mut self.steps {
            match step {
                Step::Aggregate(a) => a.forget_timeline(),
                Step::Dedup(d) => d.forget_timeline(),
                Step::Filter { .. } | Step::Map { .. } => {}
            }
        }
    }
}

impl StageProcessor {
    /// A stage: decodes with `codec`, takes event time from `time` (or the record timestamp),
    /// runs `steps`, ends at `end`.
    fn new(codec: Codec, time: Option<Expr>, mut steps: Vec<Step>, end: End) -> Self {
        let fields = needed_fields(time.as_ref(), &steps).map(Into::into);
        if let (End::Nothing, Some(Step::Aggregate(a))) = (&end, steps.last_mut()) {
            a.without_output();
        }
        Self {
            codec,
            fields,
            time,
            steps,
            end,
        }
    }

    /// Runs `rec` through the steps from `from` on, then to the stage's end. Filters and maps
    /// work in place; a step that emits records (aggregate, dedup) runs the rest once per record.
    fn run(
        &mut self,
        from: usize,
        mut rec: Rec,
        record: &Record<'_>,
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        for i in from..self.steps.len() {
            let scope = scope(&rec, record);
            let mut emitted = Vec::new();
            match &mut self.steps[i] {
                Step::Filter { label, expr } => {
                    let keep = expr
                        .eval_bool(&scope)
                        .map_err(|e| ProcessError::record(label.clone(), e))?;
                    if !keep {
                        return Ok(());
                    }
                    continue;
                }
                Step::Map { label, expr } => {
                    rec.value = expr
                        .eval(&scope)
                        .map_err(|e| ProcessError::record(label.clone(), e))?;
                    continue;
                }
                Step::Aggregate(a) => a.apply(&rec, &scope, ctx, &mut emitted)?,
                Step::Dedup(d) => d.apply(&rec, &scope, ctx, &mut emitted)?,
            }
            for out in emitted {
                self.run(i + 1, out, record, ctx)?;
            }
            return Ok(());
        }
        self.send(rec, record, ctx)
    }
}

/// The top-level fields a stage reads before a `map` or an `aggregate` replaces the value, or
/// `None` when the original value is needed whole (an expression reads `value`, or the value
/// reaches the stage's end unreplaced).
fn needed_fields(time: Option<&Expr>, steps: &[Step]) -> Option<Vec<String>> {
    let mut fields: Vec<String> = Vec::new();
    let mut add = |e: &Expr| -> Option<()> {
        for f in e.fields()? {
            if !fields.iter().any(|g| g == f) {
                fields.push(f.to_string());
            }
        }
        Some(())
    };
    if let Some(t) = time {
        add(t)?;
    }
    for step in steps {
        match step {
            Step::Filter { expr, .. } => add(expr)?,
            Step::Dedup(d) => add(d.key())?,
            Step::Map { expr, .. } => {
                add(expr)?;
                return Some(fields);
            }
            Step::Aggregate(a) => {
                for e in a.inputs() {
                    add(e)?;
                }
                return Some(fields);
            }
        }
    }
    None
}

fn scope<'a>(rec: &'a Rec, record: &'a Record<'_>) -> Scope<'a> {
    Scope {
        key: &rec.key,
        value: &rec.value,
        partition: record.partition,
        offset: record.offset,
        timestamp: rec.time,
        headers: record.headers,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl StageProcessor {
    fn send(
        &mut self,
        rec: Rec,
        record: &Record<'_>,
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        match &mut self.end {
            End::Nothing => Ok(()),
            End::Repartition { label, expr, topic } => {
                let k = expr
                    .eval(&scope(&rec, record))
                    .map_err(|e| ProcessError::record(label.clone(), e))?;
                let key = value::to_key(&k).map_err(|e| ProcessError::record(label.clone(), e))?;
                let bytes = value::to_json(&rec.value)
                    .map_err(|e| ProcessError::record(label.clone(), e))?;
                let mut out = OutputRecord::new(topic.clone(), key, Some(bytes));
                out.timestamp = Some(rec.time);
                // The input's headers travel on, so `headers` means the same after a key_by.
                out.headers = record.headers.to_vec();
                ctx.send(out);
                Ok(())
            }
            End::Sink {
                topic,
                codec,
                partitioner,
                counter,
                checked,
            } => {
                let key = value::to_key(&rec.key).map_err(|e| ProcessError::record("sink", e))?;
                let bytes = codec
                    .encode(&rec.value)
                    .map_err(|e| ProcessError::record("sink.format", e))?;
                let partition = if *partitioner == Partitioner::Murmur2 {
                    // The producer's partitioner is the same murmur2, and knows the count.
                    None
                } else {
                    let n = ctx.partitions(topic).ok_or_else(|| {
                        ProcessError::Fatal(format!(
                            "sink topic {topic:?}: partition count unknown"
                        ))
                    })?;
                    if !*checked {
                        partitioner
                            .check(topic, n)
                            .map_err(|e| ProcessError::Fatal(e.to_string()))?;
                        *checked = true;
                        *counter = ctx.task().id.partition as u64;
                    }
                    let field = match partitioner {
                        Partitioner::Field(name) => value::field(&rec.value, name)
                            .map(value::to_key)
                            .transpose()
                            .map_err(|e| ProcessError::record("sink.partitioner", e))?
                            .flatten(),
                        _ => None,
                    };
                    partitioner
                        .partition(key.as_deref(), field.as_deref(), counter, n)
                        .map_err(|e| ProcessError::record("sink.partitioner", e))?
                };
                let mut out = OutputRecord::new(topic.clone(), key, bytes);
                out.partition = partition;
                out.timestamp = Some(rec.time);
                ctx.send(out);
                Ok(())
            }
        }
    }
}
