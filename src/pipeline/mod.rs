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
//!
//! Time: a stage gives each record's event time to its task as stream time
//! ([`Context::advance_stream_time`]). Each windowed `aggregate` and each `dedup` keeps its own
//! stream time in its store (the largest event time of the records it saw), and records move
//! it. When the task's stream time moves without a record (`processing.idle_advance_ms`), the
//! stage's stream-time timer moves every such step forward by as much, and the step closes,
//! emits and purges exactly as if a record had moved it; what it emits runs through the rest
//! of the stage like any output, with `partition` the task's, `offset` -1 and no headers.

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

use crate::processor::{Context, ProcessError, Processor, Punctuation};
use crate::types::{Headers, OutputRecord, Record};
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
    /// True when a step keeps time (a windowed aggregate, a dedup).
    keeps_time: bool,
    /// The task stream time the steps' own stream times are in step with: a record sets it,
    /// and stream time that moved past it without a record moves the steps by the difference.
    seen: Option<i64>,
    /// `seen` before the record or punctuation being handled, put back if it is rolled back
    /// (the steps' stream times go back with their undone writes).
    seen_before: Option<i64>,
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
        self.seen_before = self.seen;
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
        ctx.advance_stream_time(rec.time);
        if self.keeps_time {
            self.seen = Some(ctx.stream_time().map_or(rec.time, |s| s.max(rec.time)));
        }
        self.run(0, rec, record, ctx)
    }

    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        self.seen_before = self.seen;
        if !self.keeps_time {
            return Ok(());
        }
        // Every advance of stream time, so a window closes exactly when it should.
        ctx.schedule(Punctuation::StreamTime, std::time::Duration::from_millis(1));
        // Stream time goes on from what the steps kept in their stores.
        let mut latest = None;
        for step in &mut self.steps {
            let now = match step {
                Step::Aggregate(a) => a.stream_time(ctx)?,
                Step::Dedup(d) => d.stream_time(ctx)?,
                Step::Filter { .. } | Step::Map { .. } => None,
            };
            latest = latest.max(now);
        }
        if let Some(t) = latest {
            ctx.advance_stream_time(t);
        }
        self.seen = latest;
        Ok(())
    }

    fn punctuate(
        &mut self,
        kind: Punctuation,
        now: i64,
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        self.seen_before = self.seen;
        if kind != Punctuation::StreamTime || !self.keeps_time {
            return Ok(());
        }
        let Some(seen) = self.seen.replace(now) else {
            return Ok(());
        };
        let moved = now.saturating_sub(seen);
        if moved <= 0 {
            // A record moved it, and the steps with it.
            return Ok(());
        }
        // Each step moves from where it was before anything runs, so a step is not moved
        // further because an earlier step's output reached it first.
        let mut targets = Vec::with_capacity(self.steps.len());
        for step in &mut self.steps {
            let now = match step {
                Step::Aggregate(a) => a.stream_time(ctx)?,
                Step::Dedup(d) => d.stream_time(ctx)?,
                Step::Filter { .. } | Step::Map { .. } => None,
            };
            targets.push(now.map(|t| t.saturating_add(moved)));
        }
        // No record caused this: what the steps emit sees the task's partition, no offset and
        // no headers.
        let record = Record {
            topic: "",
            partition: ctx.task().id.partition,
            offset: -1,
            timestamp: None,
            key: None,
            value: None,
            headers: Headers::none(),
        };
        for (i, target) in targets.into_iter().enumerate() {
            let Some(target) = target else {
                continue;
            };
            let mut emitted = Vec::new();
            match &mut self.steps[i] {
                Step::Aggregate(a) => a.advance_to(target, ctx, &mut emitted)?,
                Step::Dedup(d) => d.advance_to(target, ctx)?,
                Step::Filter { .. } | Step::Map { .. } => {}
            }
            for out in emitted {
                self.run(i + 1, out, &record, ctx)?;
            }
        }
        Ok(())
    }

    fn rolled_back(&mut self) {
        // The stream time and expiry indexes may have moved with the undone writes; the task's
        // stream time did not move (a failed record or punctuation leaves it as it was).
        self.seen = self.seen_before;
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
        let keeps_time = steps.iter().any(|s| match s {
            Step::Aggregate(a) => a.windowed(),
            Step::Dedup(_) => true,
            Step::Filter { .. } | Step::Map { .. } => false,
        });
        Self {
            codec,
            fields,
            time,
            steps,
            end,
            keeps_time,
            seen: None,
            seen_before: None,
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
                    // `random` draws from the processing thread's generator: tasks share
                    // no state, and cloned processors do not repeat each other's choices.
                    partitioner
                        .partition(
                            key.as_deref(),
                            field.as_deref(),
                            counter,
                            &mut rand::rng(),
                            n,
                        )
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
