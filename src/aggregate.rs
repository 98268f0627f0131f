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
        Ok(Self {
            store: p.name.clone(),
            fields,
            sink: p.sink.as_ref().map(|s| s.topic.clone()),
        })
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

    fn update(
        &self,
        state: &mut AggState,
        value: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), String> {
        // Read every field first so a bad record changes nothing.
        let mut inputs = Vec::with_capacity(self.fields.len());
        for (_, f) in &self.fields {
            inputs.push(match f.field() {
                None => 0.0,
                Some(name) => match value.get(name) {
                    Some(serde_json::Value::Number(n)) => n
                        .as_f64()
                        .ok_or_else(|| format!("field {name:?} is not a finite number"))?,
                    Some(other) => return Err(format!("field {name:?} is not a number: {other}")),
                    None => return Err(format!("field {name:?} is missing")),
                },
            });
        }
        if state.acc.len() != self.fields.len() {
            state.acc = vec![0.0; self.fields.len()];
        }
        let first = state.n == 0;
        state.n += 1;
        for ((_, f), (acc, x)) in self.fields.iter().zip(state.acc.iter_mut().zip(inputs)) {
            match f {
                AggFn::Count => {}
                AggFn::Sum(_) | AggFn::Avg(_) => *acc += x,
                AggFn::Min(_) => *acc = if first { x } else { acc.min(x) },
                AggFn::Max(_) => *acc = if first { x } else { acc.max(x) },
            }
        }
        Ok(())
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

impl Processor for RunningAggregate {
    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        const STEP: &str = "steps[0].aggregate";
        let key = record
            .key
            .ok_or_else(|| ProcessError::record(STEP, "record has no key to aggregate by"))?;
        let value = record
            .value
            .ok_or_else(|| ProcessError::record("source", "record has no value"))?;
        let value: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(value)
            .map_err(|e| {
                ProcessError::record("source", format!("value is not a JSON object: {e}"))
            })?;
        let mut store = ctx.store::<AggState>(&self.store)?;
        let mut state = store.get(key)?.unwrap_or_default();
        self.update(&mut state, &value)
            .map_err(|e| ProcessError::record(STEP, e))?;
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
        let agg = RunningAggregate {
            store: "s".into(),
            sink: None,
            fields: vec![
                ("count".into(), AggFn::Count),
                ("total".into(), AggFn::Sum("amount".into())),
                ("low".into(), AggFn::Min("amount".into())),
                ("high".into(), AggFn::Max("amount".into())),
                ("mean".into(), AggFn::Avg("amount".into())),
            ],
        };
        let mut st = AggState::default();
        for a in [10, 40, 25] {
            let v = serde_json::json!({ "amount": a });
            agg.update(&mut st, v.as_object().unwrap()).unwrap();
        }
        let out = serde_json::to_value(agg.render(&st)).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"count": 3, "total": 75.0, "low": 10.0, "high": 40.0, "mean": 25.0})
        );
        let bad = serde_json::json!({ "amount": "x" });
        let before = st.clone();
        assert!(agg
            .update(&mut st, bad.as_object().unwrap())
            .unwrap_err()
            .contains("not a number"));
        assert_eq!(st, before, "a bad record changes nothing");
        let missing = serde_json::json!({});
        assert!(agg
            .update(&mut st, missing.as_object().unwrap())
            .unwrap_err()
            .contains("missing"));
    }
}
