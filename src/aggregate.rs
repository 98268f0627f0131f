//! The built-in processor: a running aggregate per record key over JSON values — the
//! `aggregate` step of CONTRACT.md without a window (`count()`, `sum(f)`, `min(f)`, `max(f)`,
//! `avg(f)` over a top-level numeric field `f`).
//!
//! Each record updates its key's accumulators in the pipeline's store (named after the
//! pipeline) and, when the pipeline has a sink, sends the key's new totals there:
//! key = the record key, value = `{"<field>": <value>, ...}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigIssue, Format, PipelineConfig, StepConfig};
use crate::processor::{Context, ProcessError, Processor, TaskInfo, Topology};
use crate::types::{OutputRecord, Record};

/// One aggregate function.
#[derive(Debug, Clone, PartialEq)]
pub enum AggFn {
    /// Number of records.
    Count,
    /// Sum of a field.
    Sum(String),
    /// Smallest value of a field.
    Min(String),
    /// Largest value of a field.
    Max(String),
    /// Mean of a field.
    Avg(String),
}

impl AggFn {
    /// Parses `count()`, `sum(amount)`, ... (the argument is a top-level field name).
    pub fn parse(expr: &str) -> Result<Self, String> {
        let expr = expr.trim();
        let (name, rest) = expr.split_once('(').ok_or_else(|| {
            format!("expected count(), sum(f), min(f), max(f) or avg(f), found {expr:?}")
        })?;
        let arg = rest
            .strip_suffix(')')
            .ok_or_else(|| format!("missing closing parenthesis in {expr:?}"))?
            .trim();
        let field = || {
            let ok = !arg.is_empty()
                && arg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !arg.starts_with(|c: char| c.is_ascii_digit());
            if ok {
                Ok(arg.to_string())
            } else {
                Err(format!(
                    "{}() takes one field name, found {arg:?}",
                    name.trim()
                ))
            }
        };
        match name.trim() {
            "count" if arg.is_empty() => Ok(Self::Count),
            "count" => Err(format!("count() takes no argument, found {arg:?}")),
            "sum" => Ok(Self::Sum(field()?)),
            "min" => Ok(Self::Min(field()?)),
            "max" => Ok(Self::Max(field()?)),
            "avg" => Ok(Self::Avg(field()?)),
            other => Err(format!(
                "unknown aggregate function {other:?} (use count, sum, min, max or avg)"
            )),
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            Self::Count => None,
            Self::Sum(f) | Self::Min(f) | Self::Max(f) | Self::Avg(f) => Some(f),
        }
    }
}

/// The stored accumulators of one key: the record count and one number per output field
/// (the running sum for `sum` and `avg`, the extreme for `min` and `max`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AggState {
    /// Records aggregated.
    pub n: u64,
    /// One accumulator per output field, in field order.
    pub acc: Vec<f64>,
}

/// The compiled aggregate of one pipeline.
#[derive(Debug, Clone)]
pub struct RunningAggregate {
    store: String,
    fields: Vec<(String, AggFn)>,
    sink: Option<String>,
    /// The input field of each field that has one, in field order.
    names: Vec<String>,
    /// Per-record scratch space, kept to avoid allocating for every record.
    found: Vec<Option<f64>>,
    inputs: Vec<f64>,
}

impl RunningAggregate {
    /// Compiles a pipeline that consists of one aggregate step without a window; returns every
    /// problem with its key path otherwise.
    pub fn compile(index: usize, p: &PipelineConfig) -> Result<Self, Vec<ConfigIssue>> {
        let at = |path: String, message: String| ConfigIssue {
            path: format!("pipeline[{index}].{path}"),
            message,
        };
        let mut issues = Vec::new();
        if p.source.format != Format::Json {
            issues.push(at(
                "source.format".into(),
                "this version aggregates JSON input only".into(),
            ));
        }
        let mut fields = Vec::new();
        let mut seen_aggregate = false;
        for (j, step) in p.steps.iter().enumerate() {
            match step {
                StepConfig::Aggregate(agg) if !seen_aggregate => {
                    seen_aggregate = true;
                    if agg.window.is_some() {
                        issues.push(at(
                            format!("steps[{j}].aggregate.window"),
                            "windowed aggregates are not available in this version; remove `window` for a running aggregate".into(),
                        ));
                    }
                    for (name, expr) in &agg.fields {
                        match AggFn::parse(expr) {
                            Ok(f) => fields.push((name.clone(), f)),
                            Err(e) => issues.push(at(format!("steps[{j}].aggregate.fields.{name}"), e)),
                        }
                    }
                }
                _ => issues.push(at(
                    format!("steps[{j}]"),
                    "this version runs pipelines made of a single `aggregate` step; filter, map, key_by and dedup come with declarative pipelines".into(),
                )),
            }
        }
        if !seen_aggregate && p.steps.is_empty() {
            issues.push(at(
                "steps".into(),
                "a pipeline needs an `aggregate` step".into(),
            ));
        }
        if let Some(sink) = &p.sink {
            if sink.format != Format::Json {
                issues.push(at(
                    "sink.format".into(),
                    "this version writes JSON output only".into(),
                ));
            }
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(Self::new(
            p.name.clone(),
            fields,
            p.sink.as_ref().map(|s| s.topic.clone()),
        ))
    }

    fn new(store: String, fields: Vec<(String, AggFn)>, sink: Option<String>) -> Self {
        let names = fields
            .iter()
            .filter_map(|(_, f)| f.field().map(str::to_string))
            .collect();
        Self {
            store,
            fields,
            sink,
            names,
            found: Vec::new(),
            inputs: Vec::new(),
        }
    }

    /// The topology that runs this aggregate over the pipeline's source topics.
    pub fn topology(self, p: &PipelineConfig) -> Topology {
        let mut t = Topology::new(
            p.name.clone(),
            p.source.topics.clone(),
            move |_: &TaskInfo| self.clone(),
        )
        .store(p.name.clone());
        if let Some(sink) = &p.sink {
            t = t.sink(sink.topic.clone());
        }
        t
    }

    /// Reads the numeric input of every field from a JSON object, parsing only the fields it
    /// needs: the rest of the value is skipped, not built.
    fn inputs(&mut self, value: &[u8]) -> Result<(), String> {
        self.found.clear();
        self.found.resize(self.names.len(), None);
        let mut de = serde_json::Deserializer::from_slice(value);
        let pick = Pick {
            names: &self.names,
            found: &mut self.found,
        };
        serde::de::DeserializeSeed::deserialize(pick, &mut de)
            .and_then(|()| de.end())
            .map_err(|e| format!("value is not a JSON object with numeric fields: {e}"))?;
        self.inputs.clear();
        let mut found = self.found.iter();
        for (_, f) in &self.fields {
            match f.field() {
                None => self.inputs.push(0.0),
                Some(name) => {
                    let x = found.next().copied().flatten();
                    self.inputs
                        .push(x.ok_or_else(|| format!("field {name:?} is missing"))?);
                }
            }
        }
        Ok(())
    }

    fn update(&self, state: &mut AggState, inputs: &[f64]) {
        if state.acc.len() != self.fields.len() {
            state.acc = vec![0.0; self.fields.len()];
        }
        let first = state.n == 0;
        state.n += 1;
        for ((_, f), (acc, &x)) in self.fields.iter().zip(state.acc.iter_mut().zip(inputs)) {
            match f {
                AggFn::Count => {}
                AggFn::Sum(_) | AggFn::Avg(_) => *acc += x,
                AggFn::Min(_) => *acc = if first { x } else { acc.min(x) },
                AggFn::Max(_) => *acc = if first { x } else { acc.max(x) },
            }
        }
    }

    /// The output object of a key's state.
    pub fn render(&self, state: &AggState) -> BTreeMap<String, serde_json::Value> {
        self.fields
            .iter()
            .zip(&state.acc)
            .map(|((name, f), acc)| {
                let v = match f {
                    AggFn::Count => serde_json::Value::from(state.n),
                    AggFn::Sum(_) | AggFn::Min(_) | AggFn::Max(_) => serde_json::Value::from(*acc),
                    AggFn::Avg(_) => serde_json::Value::from(*acc / state.n as f64),
                };
                (name.clone(), v)
            })
            .collect()
    }
}

/// A serde visitor that takes the numbers of the named top-level fields of a JSON object and
/// skips everything else without building it.
struct Pick<'a> {
    names: &'a [String],
    found: &'a mut [Option<f64>],
}

impl<'de> serde::de::DeserializeSeed<'de> for Pick<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Pick<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if !self.names.iter().any(|n| *n == key) {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            let v: serde_json::Value = map.next_value()?;
            let x = v
                .as_f64()
                .ok_or_else(|| A::Error::custom(format!("field {key:?} is not a number: {v}")))?;
            // A field named by several aggregates fills each of their slots.
            for (slot, name) in self.found.iter_mut().zip(self.names) {
                if *name == key {
                    *slot = Some(x);
                }
            }
        }
        Ok(())
    }
}

impl Processor for RunningAggregate {
    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        const STEP: &str = "steps[0].aggregate";
        let key = record
            .key
            .ok_or_else(|| ProcessError::record(STEP, "record has no key to aggregate by"))?;
        let value = record
            .value
            .ok_or_else(|| ProcessError::record("source", "record has no value"))?;
        // Read every input first, so a bad record changes nothing.
        self.inputs(value)
            .map_err(|e| ProcessError::record(STEP, e))?;
        let mut store = ctx.store::<AggState>(&self.store)?;
        let mut state = store.get(key)?.unwrap_or_default();
        self.update(&mut state, &self.inputs);
        store.put(key, &state)?;
        if let Some(sink) = &self.sink {
            let out = serde_json::to_vec(&self.render(&state))
                .map_err(|e| ProcessError::Fatal(e.to_string()))?;
            ctx.send(OutputRecord::new(
                sink.clone(),
                Some(key.to_vec()),
                Some(out),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_functions() {
        assert_eq!(AggFn::parse("count()"), Ok(AggFn::Count));
        assert_eq!(
            AggFn::parse(" sum( amount ) "),
            Ok(AggFn::Sum("amount".into()))
        );
        assert_eq!(AggFn::parse("avg(x_1)"), Ok(AggFn::Avg("x_1".into())));
        assert!(AggFn::parse("count(x)")
            .unwrap_err()
            .contains("no argument"));
        assert!(AggFn::parse("median(x)")
            .unwrap_err()
            .contains("unknown aggregate function"));
        assert!(AggFn::parse("sum(a + b)")
            .unwrap_err()
            .contains("one field name"));
        assert!(AggFn::parse("sum").is_err());
    }

    #[test]
    fn accumulates_and_renders() {
        let mut agg = RunningAggregate::new(
            "s".into(),
            vec![
                ("count".into(), AggFn::Count),
                ("total".into(), AggFn::Sum("amount".into())),
                ("low".into(), AggFn::Min("amount".into())),
                ("high".into(), AggFn::Max("amount".into())),
                ("mean".into(), AggFn::Avg("amount".into())),
            ],
            None,
        );
        let mut st = AggState::default();
        for a in [10, 40, 25] {
            let value = format!(r#"{{"user":"u","amount":{a},"ts":1}}"#);
            agg.inputs(value.as_bytes()).unwrap();
            agg.update(&mut st, &agg.inputs);
        }
        let out = serde_json::to_value(agg.render(&st)).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"count": 3, "total": 75.0, "low": 10.0, "high": 40.0, "mean": 25.0})
        );
        assert!(agg
            .inputs(br#"{"amount":"x"}"#)
            .unwrap_err()
            .contains("not a number"));
        assert!(agg
            .inputs(br#"{"other":1}"#)
            .unwrap_err()
            .contains("\"amount\" is missing"));
        assert!(agg.inputs(b"[1,2]").unwrap_err().contains("JSON object"));
        assert!(agg.inputs(b"not json").is_err());
        assert!(agg.inputs(br#"{"amount":1} trailing"#).is_err());
        agg.inputs(br#"{"a\u006dount":7,"x":{"y":[1,2]}}"#).unwrap();
        assert_eq!(
            agg.inputs[1], 7.0,
            "escaped keys read, nested values skipped"
        );
    }
}
