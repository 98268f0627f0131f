//! The library API for processing: a [`Processor`] is called once per record with a
//! [`Context`] that gives the task's stores and a way to send records, and on the timers it
//! asks for ([`Processor::punctuate`], Kafka Streams' punctuators).
//!
//! ## Time and timers
//!
//! A task's *stream time* is the largest event time of the records it processed: the time a
//! processor gives with [`Context::advance_stream_time`] while it processes a record, else the
//! record's timestamp. It only moves forward. With `processing.idle_advance_ms = N > 0` it also
//! moves with the wall clock once the task has received no record for N ms: it becomes its
//! value at the last record plus the wall-clock time since that record (see
//! [`Punctuation::StreamTime`]).
//!
//! A processor asks for timers with [`Context::schedule`] (usually in [`Processor::init`]); the
//! task calls [`Processor::punctuate`] on the processing thread that runs it, under the same
//! lock and commit machinery as its records: state written and records sent in a punctuation
//! are committed like a record's (changelog and output, at least once or in the member's
//! transaction).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use crate::config::KeyPartitioner;
use crate::state::TaskStores;
pub use crate::state::{StateError, Store};
use crate::types::{OutputRecord, Record, TaskId};

/// What a task tells its processor about itself.
#[derive(Debug, Clone)]
pub struct TaskInfo {
    /// The task id (`<topology>_<partition>`).
    pub id: TaskId,
    /// The topology's name.
    pub topology: String,
    /// The application id (`app.id`).
    pub app_id: String,
    /// Partition counts of the topics the worker knows (sources, sinks, internal topics), for
    /// partitioners that need them.
    pub partitions: Arc<BTreeMap<String, i32>>,
}

/// Why a record could not be processed.
///
/// A [`ProcessError::Record`] is the record's fault (it does not decode, a field is missing):
/// the worker applies `processing.on_error` to it (fail, skip or dead-letter). A
/// [`ProcessError::Fatal`] is not (the state store failed): the worker stops without committing,
/// whatever `on_error` says.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProcessError {
    /// The record is bad.
    Record {
        /// Which step of the processor failed (goes to the `tributary.step` DLQ header).
        step: String,
        /// What was wrong.
        reason: String,
    },
    /// Processing cannot go on.
    Fatal(String),
}

impl ProcessError {
    /// A bad-record error raised by `step`.
    pub fn record(step: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Record {
            step: step.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Record { step, reason } => write!(f, "{step}: {reason}"),
            Self::Fatal(reason) => write!(f, "fatal: {reason}"),
        }
    }
}

impl std::error::Error for ProcessError {}

impl From<StateError> for ProcessError {
    fn from(e: StateError) -> Self {
        match e {
            // A value that does not decode is bad data; anything else is the store failing.
            StateError::Codec { .. } => Self::record("state", e.to_string()),
            other => Self::Fatal(other.to_string()),
        }
    }
}

/// Which clock a timer follows (Kafka Streams' `PunctuationType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Punctuation {
    /// The task's stream time (see the [module docs](self)). A timer of interval `i` fires when
    /// stream time first becomes known, then each time it reaches the next multiple of `i`
    /// (epoch aligned); one call covers any number of points passed at once, with `now_ms` the
    /// new stream time. Stream time moves with records, and with the wall clock only under
    /// `processing.idle_advance_ms`: without records and without that setting, it stands still
    /// and so do these timers.
    StreamTime,
    /// The system clock: a timer of interval `i` fires `i` after it was scheduled and then
    /// every `i` (skipping points missed while the task was busy or held), whether records
    /// arrive or not, with `now_ms` the wall-clock time (epoch ms).
    WallClock,
}

/// Processes records of one task. One instance per task, created by the topology's factory, so
/// it may keep task-local fields; durable state belongs in the stores.
///
/// Called on the processing thread that runs the task, one record (or punctuation) at a time,
/// in offset order per partition.
pub trait Processor: Send {
    /// Handles one record. State changes and sent records take effect when this returns `Ok`;
    /// on a [`ProcessError::Record`] the sent records are dropped and the state writes made
    /// while handling the record are undone (then [`Processor::rolled_back`] is called).
    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError>;

    /// Called once when the task starts running (its stores restored), before its first record
    /// or timer: schedule timers here ([`Context::schedule`]) and, for a processor that keeps
    /// its stream time in a store, carry it on with [`Context::advance_stream_time`] (the
    /// task's own stream time is not kept across restarts). An error stops the task whatever
    /// `processing.on_error` says: `init` is not called again, and the processor must not run
    /// without what it sets up here.
    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let _ = ctx;
        Ok(())
    }

    /// Called when a timer scheduled with [`Context::schedule`] is due; `now_ms` is the stream
    /// time or the wall-clock time, by `kind`. Works like [`Processor::process`]: state writes
    /// and sent records take effect when it returns `Ok`, and are undone on an error. A
    /// [`ProcessError::Fatal`] stops the member; a [`ProcessError::Record`] stops it under
    /// `processing.on_error = "fail"`, and is logged and dropped otherwise (there is no record
    /// to skip or dead-letter: the timer fires again at its next point).
    fn punctuate(
        &mut self,
        kind: Punctuation,
        now_ms: i64,
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        let _ = (kind, now_ms, ctx);
        Ok(())
    }

    /// Called after a failed record's state writes were undone: a processor that keeps
    /// task-local copies of its state (indexes, counters) drops them here and rereads the
    /// stores.
    fn rolled_back(&mut self) {}
}

/// Builds a processor for each task.
pub type ProcessorFactory = Arc<dyn Fn(&TaskInfo) -> Box<dyn Processor> + Send + Sync>;

/// What a processor can reach while handling a record.
pub struct Context<'a> {
    pub(crate) task: &'a TaskInfo,
    pub(crate) stores: &'a mut TaskStores,
    pub(crate) outputs: &'a mut Vec<OutputRecord>,
    /// Records dropped as late while handling this record (see [`Context::drop_late`]).
    late: u64,
    /// The task's stream time before this call.
    stream_time: Option<i64>,
    /// The largest time given to [`Context::advance_stream_time`] during this call.
    advanced: Option<i64>,
    /// Timers (re)scheduled during this call, in call order.
    scheduled: Vec<(Punctuation, Duration)>,
}

impl<'a> Context<'a> {
    /// Builds a context (used by the task, and by test kits driving a processor directly).
    pub(crate) fn new(
        task: &'a TaskInfo,
        stores: &'a mut TaskStores,
        outputs: &'a mut Vec<OutputRecord>,
    ) -> Self {
        Self {
            task,
            stores,
            outputs,
            late: 0,
            stream_time: None,
            advanced: None,
            scheduled: Vec::new(),
        }
    }

    /// Sets the stream time the processor sees (the task's, before this call).
    pub(crate) fn with_stream_time(mut self, stream_time: Option<i64>) -> Self {
        self.stream_time = stream_time;
        self
    }

    /// What this call asked of the task's clocks: the largest time given to
    /// [`Context::advance_stream_time`], and the timers scheduled.
    pub(crate) fn into_time(self) -> (Option<i64>, Vec<(Punctuation, Duration)>) {
        (self.advanced, self.scheduled)
    }

    /// The task's stream time as of the start of this call (`None` until the task has seen a
    /// record with a time, or a processor carried one on in [`Processor::init`]).
    pub fn stream_time(&self) -> Option<i64> {
        self.stream_time
    }

    /// Moves the task's stream time forward to `t` (never back) once this call returns `Ok`.
    /// While a record is processed, this gives the record's event time (taken instead of its
    /// timestamp; the largest if called more than once); in [`Processor::init`], the stream
    /// time the processor kept in its stores.
    pub fn advance_stream_time(&mut self, t: i64) {
        self.advanced = Some(self.advanced.map_or(t, |a| a.max(t)));
    }

    /// Asks for [`Processor::punctuate`] of `kind` every `interval` (see [`Punctuation`]),
    /// replacing the task's earlier timer of that kind; a zero interval cancels it. Takes
    /// effect when this call returns `Ok`.
    pub fn schedule(&mut self, kind: Punctuation, interval: Duration) {
        self.scheduled.push((kind, interval));
    }

    /// Notes that the record being processed was dropped for being late (too old for every
    /// window it falls in). The task counts it in `tributary_late_records_total{pipeline}` once
    /// `process` returns `Ok`: a late record is not an error, so it is neither failed,
    /// skipped nor dead-lettered.
    pub fn drop_late(&mut self) {
        self.late += 1;
    }

    /// How many times [`Context::drop_late`] was called while processing this record.
    pub fn late_records(&self) -> u64 {
        self.late
    }

    /// The task being processed.
    pub fn task(&self) -> &TaskInfo {
        self.task
    }

    /// The partition count of `topic`, if the worker knows it (every source and sink topic).
    pub fn partitions(&self, topic: &str) -> Option<i32> {
        self.task.partitions.get(topic).copied()
    }

    /// The store called `name`, with values of type `T` (JSON-encoded).
    pub fn store<T>(&mut self, name: &str) -> Result<Store<'_, T>, ProcessError> {
        self.stores
            .store(name)
            .map_err(|e| ProcessError::Fatal(e.to_string()))
    }

    /// Sends a record; it is produced once `process` returns `Ok`.
    pub fn send(&mut self, record: OutputRecord) {
        self.outputs.push(record);
    }
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context").field("task", &self.task).finish()
    }
}

/// A unit of processing: co-partitioned source topics, the stores each task gets, and the
/// processor factory (Kafka Streams calls this a sub-topology).
#[derive(Clone)]
pub struct Topology {
    /// Name; used in logs and the `tributary.pipeline` DLQ header.
    pub name: String,
    /// Source topics; they must have the same partition count (co-partitioned): task `n` reads
    /// partition `n` of each. More than one needs an assignor that keeps partition `n` of
    /// every topic on one member (`group.assignment = "range"`; see
    /// [`crate::config::GroupConfig::co_partitioning_issue`]).
    pub sources: Vec<String>,
    /// Store names; each gets a column family and the changelog `<app.id>-<store>-changelog`.
    pub stores: Vec<String>,
    /// Those of `stores` whose keys are not the records' keys (a pipeline's `dedup` marks,
    /// keyed by the step's `key` expression): a store key says nothing of the task holding
    /// it, so `/state` cannot route them and refuses.
    pub unkeyed_stores: Vec<String>,
    /// Topics the processor writes to, created by the worker if missing.
    pub sinks: Vec<String>,
    /// How the sources' producers partitioned records by key: where `/state` looks for a
    /// store key (default: Kafka's murmur2; see [`Topology::keys_partitioned_by`]).
    pub key_partitioner: KeyPartitioner,
    /// Creates the processor of each task.
    pub factory: ProcessorFactory,
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topology")
            .field("name", &self.name)
            .field("sources", &self.sources)
            .field("stores", &self.stores)
            .field("sinks", &self.sinks)
            .finish()
    }
}

impl Topology {
    /// A topology called `name` reading `sources` with `processor`, created per task.
    pub fn new<P, F>(
        name: impl Into<String>,
        sources: impl IntoIterator<Item = impl Into<String>>,
        processor: F,
    ) -> Self
    where
        P: Processor + 'static,
        F: Fn(&TaskInfo) -> P + Send + Sync + 'static,
    {
        Self {
            name: name.into(),
            sources: sources.into_iter().map(Into::into).collect(),
            stores: Vec::new(),
            unkeyed_stores: Vec::new(),
            sinks: Vec::new(),
            key_partitioner: KeyPartitioner::default(),
            factory: Arc::new(move |info: &TaskInfo| {
                Box::new(processor(info)) as Box<dyn Processor>
            }),
        }
    }

    /// Declares a store.
    pub fn store(mut self, name: impl Into<String>) -> Self {
        self.stores.push(name.into());
        self
    }

    /// Declares a store whose keys are not the records' keys (see
    /// [`Topology::unkeyed_stores`]).
    pub fn unkeyed_store(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.unkeyed_stores.push(name.clone());
        self.stores.push(name);
        self
    }

    /// Declares an output topic (created if missing, with as many partitions as the input).
    pub fn sink(mut self, topic: impl Into<String>) -> Self {
        self.sinks.push(topic.into());
        self
    }

    /// Declares how the producers of the source topics chose a record's partition from its
    /// key, so that `/state/<store>/<key>` on any worker finds the task holding the key: the
    /// store keys must be the records' keys. Murmur2 (the Java client's default) unless set.
    pub fn keys_partitioned_by(mut self, partitioner: KeyPartitioner) -> Self {
        self.key_partitioner = partitioner;
        self
    }

    /// The source topics missing from `held`, the topics of which a member holds one task's
    /// partition: when some are missing (but not all), the task's input is split between
    /// members, and another member may be running the same task.
    pub(crate) fn missing_sources<'a>(&'a self, held: &BTreeSet<Arc<str>>) -> Vec<&'a str> {
        self.sources
            .iter()
            .map(String::as_str)
            .filter(|s| !held.iter().any(|h| **h == **s))
            .collect()
    }
}

/// The changelog topic of a store.
pub fn changelog_topic(app_id: &str, store: &str) -> String {
    format!("{app_id}-{store}-changelog")
}

/// A processor that does nothing, for tests of the machinery around processors.
#[cfg(test)]
pub(crate) struct Nothing;

#[cfg(test)]
impl Processor for Nothing {
    fn process(&mut self, _: &Record<'_>, _: &mut Context<'_>) -> Result<(), ProcessError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_sources_are_the_topics_a_member_does_not_hold() {
        let t = Topology::new("t", ["a", "b", "c"], |_: &TaskInfo| Nothing);
        let held = |topics: &[&str]| topics.iter().map(|t| Arc::from(*t)).collect();
        assert_eq!(
            t.missing_sources(&held(&["a", "b", "c"])),
            Vec::<&str>::new()
        );
        assert_eq!(t.missing_sources(&held(&["b"])), ["a", "c"]);
        assert_eq!(t.missing_sources(&held(&[])), ["a", "b", "c"]);
    }
}
