//! The `aggregate` step: per-key `count()`, `sum(x)`, `min(x)`, `max(x)` and `avg(x)`, over no
//! window, or tumbling, hopping or session windows.
//!
//! State lives in the step's store. Without a window the store key is the grouping key itself,
//! so `/state/<store>/<key>` answers with the key's accumulators; windowed entries use the
//! layout of [`super::window::keys`]. Every accumulator is mergeable, so a record is folded in
//! as a one-record aggregate, and session windows merge the same way.

use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::Value;
use serde::{Deserialize, Serialize};
use serde_json::Number;

use super::expr::{Expr, Scope};
use super::window::{keys, Expiry, Timeline, Windows};
use super::Rec;
use crate::config::Emit;
use crate::processor::{Context, ProcessError, Store};

/// An aggregate function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    /// `count()`.
    Count,
    /// `sum(x)`.
    Sum,
    /// `min(x)`.
    Min,
    /// `max(x)`.
    Max,
    /// `avg(x)`.
    Avg,
}

/// One output field: `name = "func(arg)"`.
#[derive(Debug)]
pub struct Field {
    name: Arc<str>,
    func: Func,
    arg: Option<Expr>,
}

/// A clone has its own copy of the name: every record's state holds the name's `Arc`, and
/// tasks (clones of one compiled step) run on different threads, where sharing one `Arc`
/// would make each record bump a reference count that the other threads bump too.
impl Clone for Field {
    fn clone(&self) -> Self {
        Self {
            name: Arc::from(&*self.name),
            func: self.func,
            arg: self.arg.clone(),
        }
    }
}

impl Field {
    /// Parses `count()` or `sum(<CEL>)` etc.; the argument is any CEL expression.
    pub fn parse(env: &Arc<cel::Env>, name: &str, text: &str) -> Result<Self, String> {
        let t = text.trim();
        let (func, rest) = t.split_once('(').ok_or_else(|| {
            format!("expected count(), sum(x), min(x), max(x) or avg(x), found {t:?}")
        })?;
        let arg = rest
            .strip_suffix(')')
            .ok_or_else(|| format!("missing closing parenthesis in {t:?}"))?
            .trim();
        let func = match func.trim() {
            "count" => Func::Count,
            "sum" => Func::Sum,
            "min" => Func::Min,
            "max" => Func::Max,
            "avg" => Func::Avg,
            other => {
                return Err(format!(
                    "unknown aggregate function {other:?} (use count, sum, min, max or avg)"
                ))
            }
        };
        let arg = match (func, arg.is_empty()) {
            (Func::Count, true) => None,
            (Func::Count, false) => {
                return Err(format!("count() takes no argument, found {arg:?}"))
            }
            (_, true) => {
                return Err(format!(
                    "{}() needs an argument, such as {}(amount)",
                    func_name(func),
                    func_name(func)
                ))
            }
            (_, false) => Some(Expr::compile(env, arg)?),
        };
        Ok(Self {
            name: name.into(),
            func,
            arg,
        })
    }
}

fn func_name(f: Func) -> &'static str {
    match f {
        Func::Count => "count",
        Func::Sum => "sum",
        Func::Min => "min",
        Func::Max => "max",
        Func::Avg => "avg",
    }
}

/// One accumulator as stored: a number, or the running sum and count of an average.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Acc {
    /// `avg`: sum and count.
    Avg {
        /// Sum of the inputs.
        sum: f64,
        /// Number of inputs.
        n: u64,
    },
    /// `count`, `sum`, `min`, `max`: integers stay integers until a fraction is added.
    Num(Number),
}

/// The stored aggregate of one key (and window), written as one JSON object: the window bounds
/// (windowed only) and one entry per output field, in field order, e.g.
/// `{"count": 3, "total": 60, "mean": {"sum": 60.0, "n": 3}}`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AggState {
    /// Window start (windowed only).
    pub window_start: Option<i64>,
    /// Window end, exclusive (windowed only).
    pub window_end: Option<i64>,
    /// One accumulator per output field, in the step's field order. Names are shared with the
    /// task's step, so a clone (the cache hands out copies) allocates once.
    pub fields: Vec<(Arc<str>, Acc)>,
}

impl Serialize for AggState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let bounds = [
            ("window_start", self.window_start),
            ("window_end", self.window_end),
        ];
        let mut map = s.serialize_map(None)?;
        for (name, v) in bounds {
            if let Some(v) = v {
                map.serialize_entry(name, &v)?;
            }
        }
        for (name, acc) in &self.fields {
            map.serialize_entry(&**name, acc)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for AggState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AggState;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an aggregate state object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<AggState, A::Error> {
                let mut state = AggState::default();
                while let Some(k) = m.next_key::<String>()? {
                    match k.as_str() {
                        "window_start" => state.window_start = Some(m.next_value()?),
                        "window_end" => state.window_end = Some(m.next_value()?),
                        _ => state.fields.push((k.into(), m.next_value()?)),
                    }
                }
                Ok(state)
            }
        }
        d.deserialize_map(V)
    }
}

fn add(a: &Number, b: &Number) -> Number {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) if x.checked_add(y).is_some() => Number::from(x + y),
        _ => float(a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0)),
    }
}

fn float(f: f64) -> Number {
    Number::from_f64(f).unwrap_or_else(|| Number::from(0))
}

fn less(a: &Number, b: &Number) -> bool {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) => x < y,
        _ => a.as_f64().unwrap_or(0.0) < b.as_f64().unwrap_or(0.0),
    }
}

fn merge_acc(func: Func, a: &Acc, b: &Acc) -> Acc {
    match (func, a, b) {
        (Func::Avg, Acc::Avg { sum: s1, n: n1 }, Acc::Avg { sum: s2, n: n2 }) => Acc::Avg {
            sum: s1 + s2,
            n: n1 + n2,
        },
        (Func::Min, Acc::Num(x), Acc::Num(y)) => {
            Acc::Num(if less(y, x) { y.clone() } else { x.clone() })
        }
        (Func::Max, Acc::Num(x), Acc::Num(y)) => {
            Acc::Num(if less(x, y) { y.clone() } else { x.clone() })
        }
        (_, Acc::Num(x), Acc::Num(y)) => Acc::Num(add(x, y)),
        // Shapes only disagree if the store was written by a different definition.
        (_, _, other) => other.clone(),
    }
}

fn number(v: &Value) -> Option<Number> {
    match v {
        Value::Int(i) => Some(Number::from(*i)),
        Value::UInt(u) => Some(Number::from(*u)),
        Value::Float(f) => Number::from_f64(*f),
        _ => None,
    }
}

fn value_of(acc: &Acc) -> Value {
    match acc {
        Acc::Avg { sum, n } => Value::Float(if *n == 0 { 0.0 } else { sum / *n as f64 }),
        Acc::Num(x) => match (x.as_i64(), x.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(x.as_f64().unwrap_or(0.0)),
        },
    }
}

/// The compiled `aggregate` step (task-local state included: clone one per task).
#[derive(Debug, Clone)]
pub struct Aggregate {
    label: String,
    store: String,
    /// Not shared between clones (see [`Field`]'s `Clone`).
    fields: Box<[Field]>,
    window: Option<Windows>,
    emit: Emit,
    /// False when nothing reads the step's output (it is the last step and there is no sink):
    /// results then live in the store only, and no output record is built.
    emits: bool,
    timeline: Timeline,
}

impl Aggregate {
    /// A step with its `label` (key path), store name, fields, window and emit mode.
    pub fn new(
        label: String,
        store: String,
        fields: Vec<Field>,
        window: Option<Windows>,
        emit: Emit,
    ) -> Self {
        Self {
            label,
            store,
            fields: fields.into(),
            window,
            emit,
            emits: true,
            timeline: Timeline::default(),
        }
    }

    /// Drops the in-memory stream time and expiry index; they are reread from the store on the
    /// next record.
    pub fn forget_timeline(&mut self) {
        self.timeline = Timeline::default();
    }

    /// True for a windowed step (it keeps time).
    pub fn windowed(&self) -> bool {
        self.window.is_some()
    }

    /// Tells the step that nothing reads its output.
    pub fn without_output(&mut self) {
        self.emits = false;
    }

    /// The expressions the step evaluates on each record.
    pub fn inputs(&self) -> impl Iterator<Item = &Expr> {
        self.fields.iter().filter_map(|f| f.arg.as_ref())
    }

    fn fail(&self, reason: impl Into<String>) -> ProcessError {
        ProcessError::record(self.label.clone(), reason)
    }

    /// The one-record aggregate of `rec` (validates every input before anything is written).
    fn single(&self, scope: &Scope<'_>) -> Result<Vec<(Arc<str>, Acc)>, ProcessError> {
        let mut out = Vec::with_capacity(self.fields.len());
        for f in self.fields.iter() {
            let acc = match (&f.arg, f.func) {
                (None, _) => Acc::Num(Number::from(1)),
                (Some(arg), func) => {
                    let v = arg
                        .eval(scope)
                        .map_err(|e| self.fail(format!("{}: {e}", f.name)))?;
                    let n = number(&v).ok_or_else(|| {
                        self.fail(format!(
                            "{}: {}({}) needs a number, found {} {}",
                            f.name,
                            func_name(func),
                            arg.text(),
                            super::value::type_name(&v),
                            String::from_utf8_lossy(&super::value::to_json(&v).unwrap_or_default())
                        ))
                    })?;
                    if func == Func::Avg {
                        Acc::Avg {
                            sum: n.as_f64().unwrap_or(0.0),
                            n: 1,
                        }
                    } else {
                        Acc::Num(n)
                    }
                }
            };
            out.push((f.name.clone(), acc));
        }
        Ok(out)
    }

    /// Folds `other` into `into` field by field (both in the step's field order when written by
    /// this step; matched by name otherwise).
    fn merge(&self, into: &mut Vec<(Arc<str>, Acc)>, other: &[(Arc<str>, Acc)]) {
        for (i, f) in self.fields.iter().enumerate() {
            let find = |v: &[(Arc<str>, Acc)]| match v.get(i) {
                Some((n, _)) if *n == f.name => Some(i),
                _ => v.iter().position(|(n, _)| *n == f.name),
            };
            let Some(b) = find(other).map(|j| &other[j].1) else {
                continue;
            };
            match find(into) {
                Some(j) => {
                    let (name, acc) = &mut into[j];
                    *acc = merge_acc(f.func, acc, b);
                    // A decoded state has its own copies of the names: share the step's, so
                    // later lookups compare pointers and clones touch one hot reference count.
                    if !Arc::ptr_eq(name, &f.name) {
                        *name = f.name.clone();
                    }
                }
                None => into.push((f.name.clone(), b.clone())),
            }
        }
    }

    /// The output value of a state: the fields, plus the window bounds when windowed.
    fn output(&self, key: &Value, state: &AggState, time: i64) -> Rec {
        let mut map = std::collections::HashMap::with_capacity(state.fields.len() + 2);
        for (name, acc) in &state.fields {
            map.insert(Key::String(Arc::new(name.to_string())), value_of(acc));
        }
        if let (Some(s), Some(e)) = (state.window_start, state.window_end) {
            map.insert(Key::String(Arc::new("window_start".into())), Value::Int(s));
            map.insert(Key::String(Arc::new("window_end".into())), Value::Int(e));
        }
        Rec {
            key: key.clone(),
            value: Value::Map(Map { map: Arc::new(map) }),
            time,
        }
    }

    /// Folds `rec` in; pushes what the step emits to `out`.
    pub fn apply(
        &mut self,
        rec: &Rec,
        scope: &Scope<'_>,
        ctx: &mut Context<'_>,
        out: &mut Vec<Rec>,
    ) -> Result<(), ProcessError> {
        let key = super::value::to_key(&rec.key)
            .map_err(|e| self.fail(e))?
            .ok_or_else(|| self.fail("the record has no key to aggregate by (add a key_by step before the aggregate)"))?;
        let single = self.single(scope)?;
        match self.window {
            None => {
                let mut store = ctx.store::<AggState>(&self.store)?;
                let state = store.update(&key, |state| {
                    let mut state = state.unwrap_or_default();
                    self.merge(&mut state.fields, &single);
                    state
                })?;
                if self.emits && self.emit == Emit::Update {
                    out.push(self.output(&rec.key, state, rec.time));
                }
                Ok(())
            }
            Some(w) => self.apply_windowed(w, rec, &key, single, ctx, out),
        }
    }

    fn apply_windowed(
        &mut self,
        w: Windows,
        rec: &Rec,
        key: &[u8],
        single: Vec<(Arc<str>, Acc)>,
        ctx: &mut Context<'_>,
        out: &mut Vec<Rec>,
    ) -> Result<(), ProcessError> {
        let t = rec.time;
        let close = move |s: &AggState| w.close_at(s.window_end.unwrap_or(i64::MIN));
        let mut timeline = std::mem::take(&mut self.timeline);
        let result = (|| {
            let (now, expiry) = timeline.advance(ctx, &self.store, t, close)?;
            let windows: Vec<(i64, i64)> = match w {
                Windows::Session { .. } => vec![(t, t + 1)],
                _ => w.fixed_windows(t),
            };
            let open: Vec<(i64, i64)> = match w {
                // On its own, a record whose session [t, t + 1) would already be closed is
                // late, unless it falls into a session of its key that is still open (closed
                // sessions have left the store: `advance` expired them): as in Kafka
                // Streams, lateness is decided after merging.
                Windows::Session { gap, grace }
                    if t.saturating_add(1).saturating_add(grace) <= now =>
                {
                    let mut store = ctx.store::<AggState>(&self.store)?;
                    let touches_open = store.prefix(keys::prefix(key))?.iter().any(|(_, s)| {
                        let (ss, se) = (s.window_start.unwrap_or(0), s.window_end.unwrap_or(0));
                        ss - gap < t && t < se - 1 + gap
                    });
                    if touches_open {
                        windows
                    } else {
                        Vec::new()
                    }
                }
                _ => windows
                    .into_iter()
                    .filter(|&(_, e)| w.close_at(e) > now)
                    .collect(),
            };
            if open.is_empty() {
                // Late: dropped and counted, as Kafka Streams does. Late data is normal in a
                // stream and says nothing wrong about the record, so it must not stop the
                // worker under `on_error = "fail"` (nor fill the dead-letter topic).
                tracing::debug!(step = %self.label, event_time = t, stream_time = now, "late record dropped: every window it falls in has closed");
                ctx.drop_late();
                return Ok(());
            }
            let mut store = ctx.store::<AggState>(&self.store)?;
            for (start, end) in open {
                let mut state = AggState {
                    window_start: Some(start),
                    window_end: Some(end),
                    fields: single.clone(),
                };
                if let Windows::Session { gap, .. } = w {
                    // Merge every session of this key that the record touches.
                    for (entry, s) in store.prefix(keys::prefix(key))? {
                        let (ss, se) = (s.window_start.unwrap_or(0), s.window_end.unwrap_or(0));
                        // Less than `gap` apart: the same session.
                        if ss - gap < t && t < se - 1 + gap {
                            state.window_start = Some(ss.min(state.window_start.unwrap_or(ss)));
                            state.window_end = Some(se.max(state.window_end.unwrap_or(se)));
                            self.merge(&mut state.fields, &s.fields);
                            store.delete(&entry);
                            expiry.remove(close(&s), &entry);
                        }
                    }
                } else {
                    let entry = keys::entry(key, start);
                    match store.get(&entry)? {
                        Some(mut old) => {
                            self.merge(&mut old.fields, &single);
                            state = old;
                        }
                        None => expiry.insert(close(&state), entry),
                    }
                }
                let entry = keys::entry(key, state.window_start.unwrap_or(start));
                if matches!(w, Windows::Session { .. }) {
                    expiry.insert(close(&state), entry.clone());
                }
                if self.emits && self.emit == Emit::Update {
                    out.push(self.output(&rec.key, &state, t));
                }
                store.put_owned(&entry, state)?;
            }
            self.expire(now, expiry, &mut store, out)
        })();
        self.timeline = timeline;
        result
    }

    /// Emits (final) and purges the windows closed at stream time `now`.
    fn expire(
        &self,
        now: i64,
        expiry: &mut Expiry,
        store: &mut Store<'_, AggState>,
        out: &mut Vec<Rec>,
    ) -> Result<(), ProcessError> {
        for (_, entry) in expiry.expired(now) {
            if let Some(state) = store.get(&entry)? {
                if self.emits && self.emit == Emit::Final {
                    let gkey = keys::split(&entry)
                        .map(|(k, _)| k.to_vec())
                        .unwrap_or_default();
                    let gkey = match String::from_utf8(gkey) {
                        Ok(s) => Value::String(Arc::new(s)),
                        Err(e) => Value::Bytes(Arc::new(e.into_bytes())),
                    };
                    let end = state.window_end.unwrap_or(now);
                    out.push(self.output(&gkey, &state, end - 1));
                }
            }
            store.delete(&entry);
        }
        Ok(())
    }

    /// The step's stream time, for a windowed step that has seen a record (`None` otherwise:
    /// time means nothing to it, or nothing is open).
    pub fn stream_time(&mut self, ctx: &mut Context<'_>) -> Result<Option<i64>, ProcessError> {
        let Some(w) = self.window else {
            return Ok(None);
        };
        let close = move |s: &AggState| w.close_at(s.window_end.unwrap_or(i64::MIN));
        self.timeline.now(ctx, &self.store, close)
    }

    /// Advances the step's stream time to `t` without a record (a timer): closes, emits
    /// (final) and purges the windows it closes, exactly as a record of time `t` would.
    pub fn advance_to(
        &mut self,
        t: i64,
        ctx: &mut Context<'_>,
        out: &mut Vec<Rec>,
    ) -> Result<(), ProcessError> {
        let Some(w) = self.window else {
            return Ok(());
        };
        let close = move |s: &AggState| w.close_at(s.window_end.unwrap_or(i64::MIN));
        let mut timeline = std::mem::take(&mut self.timeline);
        let result = (|| {
            let (now, expiry) = timeline.advance(ctx, &self.store, t, close)?;
            let mut store = ctx.store::<AggState>(&self.store)?;
            self.expire(now, expiry, &mut store, out)
        })();
        self.timeline = timeline;
        result
    }
}
