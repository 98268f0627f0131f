//! Records of any shape: `tributary generate --template FILE`.
//!
//! A template is a JSON object describing one record value as typed random fields:
//!
//! ```json
//! {
//!   "name": "Order",
//!   "key": "customer_id",
//!   "timestamp": "ts",
//!   "fields": {
//!     "order_id": {"type": "sequence", "start": 1},
//!     "customer_id": {"type": "string", "pattern": "customer-{}", "keys": 1000, "distribution": "zipf:1.1"},
//!     "amount": {"type": "float", "min": 1.0, "max": 500.0, "decimals": 2},
//!     "status": {"type": "choice", "values": ["new", "paid", "shipped"], "weights": [5, 3, 2]},
//!     "ts": {"type": "timestamp", "jitter_ms": 200, "late_ms": 60000, "late_fraction": 0.01}
//!   }
//! }
//! ```
//!
//! Top level: `fields` (required; field name to field spec, generated in this order), `key`
//! (a top-level field whose value, as text, is the record key; none: records have no key),
//! `timestamp` (a top-level `timestamp` field that is also the Kafka record timestamp; none:
//! the time of sending), `name` (the Avro record name of the derived schema, default
//! `Record`) and `avro_schema` (an Avro schema to write with instead of the derived one).
//!
//! Field types (`type`, and the keys each takes):
//!
//! | type | keys | value |
//! | --- | --- | --- |
//! | `sequence` | `start` (1), `step` (1) | `start`, `start + step`, ... (integer) |
//! | `uuid` | | a random version-4 UUID (text) |
//! | `string` | `pattern` (`"<field>-{}"`), `keys` (1000), `distribution` (`uniform`) | the pattern with each `{}` replaced by a key number in `0..keys`, drawn uniformly or with a Zipf skew (`zipf`, `zipf:<exponent>`; `0` most frequent), as `tributary generate --distribution` |
//! | `integer` | `min`, `max` (required) | uniform in `[min, max]` |
//! | `float` | `min`, `max` (required, `min < max`), `decimals` | uniform in `[min, max]`, rounded to `decimals` places if given |
//! | `choice` | `values` (required), `weights` | one of the values (strings, numbers or booleans, all of one kind), with probability proportional to its weight (default: equal) |
//! | `timestamp` | `jitter_ms` (0), `late_ms` (0), `late_fraction` (0) | epoch ms: the wall clock minus a random `0..=jitter_ms`, and for a `late_fraction` of the records minus `late_ms` more |
//! | `object` | `fields` (required) | a nested object of field specs |
//!
//! Everything but the wall clock under `timestamp` fields is drawn from one seeded generator,
//! field by field in template order: the same template and seed give the same records.
//!
//! A template that is not valid fails to parse with one [`TemplateError`] naming the JSON path
//! of the problem (`fields.amount.min: must be below max (500)`).

use std::fmt;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::json::Json;
use crate::{KeyDistribution, KeySampler, DEFAULT_KEYS};

/// Zipf string fields keep a table of 8 bytes per key; more keys than this is a typo.
const MAX_ZIPF_KEYS: u64 = 10_000_000;

/// Most decimal places a `float` field may be rounded to (an `f64` holds about 15 digits).
const MAX_DECIMALS: u64 = 15;

/// The Avro record name of the derived schema when the template gives no `name`.
const DEFAULT_NAME: &str = "Record";

/// What is wrong with a template, and where: `path` is the JSON path of the offending value
/// (`fields.amount.min`, `fields.status.weights[1]`), empty for the template's text as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// JSON path of the problem; empty when the text is not JSON at all.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for TemplateError {}

fn error(path: &str, message: impl Into<String>) -> TemplateError {
    TemplateError {
        path: path.to_string(),
        message: message.into(),
    }
}

/// A generated value: what a template's fields produce, objects in template order.
#[derive(Debug, Clone, PartialEq)]
pub enum Datum {
    /// An integer (`sequence`, `integer`, `timestamp`, integer choices).
    Int(i64),
    /// A finite floating-point number (`float`, fractional choices).
    Float(f64),
    /// Text (`string`, `uuid`, string choices).
    Str(String),
    /// A boolean choice.
    Bool(bool),
    /// An `object`, or the record value itself: fields in template order.
    Object(Vec<(String, Datum)>),
}

impl Datum {
    /// The value of field `name` of an object (`None` for other values or a missing field).
    pub fn get(&self, name: &str) -> Option<&Datum> {
        match self {
            Datum::Object(fields) => fields.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// As JSON text, object fields in template order.
    pub fn to_json_string(&self) -> String {
        serde_json::to_string(self).expect("generated values are finite")
    }

    /// As a `serde_json::Value` (whose objects sort their keys).
    pub fn to_json_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("generated values are finite")
    }

    /// The record key made from this value: text as is, numbers and booleans as their JSON
    /// text. Objects never are keys (the template refuses them).
    fn key_text(&self) -> String {
        match self {
            Datum::Str(s) => s.clone(),
            other => other.to_json_string(),
        }
    }
}

impl Serialize for Datum {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Datum::Int(n) => s.serialize_i64(*n),
            Datum::Float(x) => s.serialize_f64(*x),
            Datum::Str(t) => s.serialize_str(t),
            Datum::Bool(b) => s.serialize_bool(*b),
            Datum::Object(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// One field's spec, parsed and checked.
#[derive(Debug, Clone)]
enum Field {
    Sequence {
        start: i64,
        step: i64,
    },
    Uuid,
    String {
        pattern: String,
        sampler: KeySampler,
    },
    Integer {
        min: i64,
        max: i64,
    },
    Float {
        min: f64,
        max: f64,
        /// `10^decimals` and the range in those units, when rounding.
        rounding: Option<Rounding>,
    },
    Choice {
        values: Vec<Datum>,
        kind: ChoiceKind,
        /// Cumulative weights; `None` when every value is equally likely.
        cumulative: Option<Vec<f64>>,
    },
    Timestamp {
        jitter_ms: u64,
        late_ms: u64,
        late_fraction: f64,
    },
    Object(Vec<(String, Field)>),
}

#[derive(Debug, Clone, Copy)]
struct Rounding {
    scale: f64,
    /// The smallest and largest multiples of `1 / scale` in `[min, max]`, in those units.
    low: f64,
    high: f64,
}

/// The one kind of value a `choice` field's values have (decides its Avro type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChoiceKind {
    String,
    Integer,
    /// Numbers, some of them fractional.
    Number,
    Boolean,
}

/// The field types, as named in templates.
const TYPES: &str = "sequence, uuid, string, integer, float, choice, timestamp or object";

/// A parsed, checked template. Cheap to clone (a Zipf `string` field's table aside).
#[derive(Debug, Clone)]
pub struct Template {
    name: String,
    key: Option<String>,
    timestamp: Option<String>,
    fields: Vec<(String, Field)>,
    avro_schema: Option<serde_json::Value>,
}

impl Template {
    /// Parses and checks a template (JSON text).
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let json = Json::parse(text).map_err(|e| error("", format!("not valid JSON: {e}")))?;
        let mut top = Obj::new("", &json, "the template")?;
        let name = match top.take("name") {
            None => DEFAULT_NAME.to_string(),
            Some(v) => {
                let name = string(&top.path("name"), v)?;
                check_avro_full_name(&top.path("name"), &name)?;
                name
            }
        };
        let key = top
            .take("key")
            .map(|v| string(&top.path("key"), v))
            .transpose()?;
        let timestamp = top
            .take("timestamp")
            .map(|v| string(&top.path("timestamp"), v))
            .transpose()?;
        let avro_schema = match top.take("avro_schema") {
            None => None,
            Some(v @ Json::Object(_)) => Some(v.to_value()),
            Some(v) => {
                return Err(error(
                    &top.path("avro_schema"),
                    format!(
                        "expected an Avro schema (a JSON object), found {}",
                        v.describe()
                    ),
                ))
            }
        };
        let fields_path = top.path("fields");
        let fields = match top.take("fields") {
            Some(v) => fields(&fields_path, v)?,
            None => return Err(error("fields", "missing: a template needs `fields`")),
        };
        top.finish(&["fields", "key", "timestamp", "name", "avro_schema"])?;

        let top_field = |path: &str, name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, f)| f)
                .ok_or_else(|| {
                    let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
                    error(
                        path,
                        format!(
                            "no top-level field {name:?} (the fields are {})",
                            names.join(", ")
                        ),
                    )
                })
        };
        if let Some(key) = &key {
            if let Field::Object(_) = top_field("key", key)? {
                return Err(error(
                    "key",
                    format!("field {key:?} is an object; the key must be a field of another type"),
                ));
            }
        }
        if let Some(ts) = &timestamp {
            if !matches!(top_field("timestamp", ts)?, Field::Timestamp { .. }) {
                return Err(error(
                    "timestamp",
                    format!("field {ts:?} is not of type timestamp"),
                ));
            }
        }
        Ok(Template {
            name,
            key,
            timestamp,
            fields,
            avro_schema,
        })
    }

    /// The field the record key is taken from, if any.
    pub fn key_field(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The field the record timestamp is taken from, if any.
    pub fn timestamp_field(&self) -> Option<&str> {
        self.timestamp.as_deref()
    }

    /// The Avro schema records are written with: the template's `avro_schema`, or one derived
    /// from the fields (a record named `name`; `sequence` and `integer` are `long`, `float`
    /// `double`, `string` `string`, `uuid` a `string` of logical type `uuid`, `timestamp` a
    /// `long` of logical type `timestamp-millis`, `choice` the type of its values, `object` a
    /// nested record named `<name>_<path>`). Deriving fails, naming the field, when a field
    /// name is not a valid Avro name.
    pub fn avro_schema(&self) -> Result<serde_json::Value, TemplateError> {
        match &self.avro_schema {
            Some(schema) => Ok(schema.clone()),
            None => avro_record(&self.name, "fields", &self.fields),
        }
    }

    /// Whether the template gives its own `avro_schema` (rather than having one derived).
    pub fn gives_avro_schema(&self) -> bool {
        self.avro_schema.is_some()
    }

    /// The deterministic record sequence of this template with `seed`.
    pub fn generator(&self, seed: u64) -> TemplateGenerator {
        TemplateGenerator {
            template: self.clone(),
            rng: StdRng::seed_from_u64(seed),
            index: 0,
        }
    }
}

/// One generated record.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateRecord {
    /// The key field's value as text; `None` when the template names no key.
    pub key: Option<String>,
    /// The timestamp field's value; `None` when the template names no timestamp field.
    pub timestamp: Option<i64>,
    /// The record value (an object).
    pub value: Datum,
}

/// The records of a template, from a seed ([`Template::generator`]).
#[derive(Debug, Clone)]
pub struct TemplateGenerator {
    template: Template,
    rng: StdRng,
    /// Records generated so far (the position of `sequence` fields).
    index: u64,
}

impl TemplateGenerator {
    /// The next record, with `now_ms` (epoch ms) as the wall clock of `timestamp` fields.
    pub fn next_record(&mut self, now_ms: i64) -> TemplateRecord {
        let index = self.index;
        self.index += 1;
        let value = object(&self.template.fields, &mut self.rng, index, now_ms);
        let key = self
            .template
            .key
            .as_ref()
            .map(|k| value.get(k).expect("the key field exists").key_text());
        let timestamp = self
            .template
            .timestamp
            .as_ref()
            .map(|t| match value.get(t) {
                Some(Datum::Int(ms)) => *ms,
                other => unreachable!("timestamp field {t} holds {other:?}"),
            });
        TemplateRecord {
            key,
            timestamp,
            value,
        }
    }
}

fn object(fields: &[(String, Field)], rng: &mut StdRng, index: u64, now_ms: i64) -> Datum {
    Datum::Object(
        fields
            .iter()
            .map(|(name, f)| (name.clone(), generate(f, rng, index, now_ms)))
            .collect(),
    )
}

fn generate(field: &Field, rng: &mut StdRng, index: u64, now_ms: i64) -> Datum {
    match field {
        Field::Sequence { start, step } => {
            Datum::Int(start.wrapping_add(step.wrapping_mul(index as i64)))
        }
        Field::Uuid => Datum::Str(uuid_v4(rng.random())),
        Field::String { pattern, sampler } => {
            Datum::Str(pattern.replace("{}", &sampler.sample(rng).to_string()))
        }
        Field::Integer { min, max } => Datum::Int(rng.random_range(*min..=*max)),
        Field::Float { min, max, rounding } => {
            let x = rng.random_range(*min..=*max);
            Datum::Float(match rounding {
                None => x,
                Some(r) => (x * r.scale).round().clamp(r.low, r.high) / r.scale,
            })
        }
        Field::Choice {
            values, cumulative, ..
        } => {
            let i = match cumulative {
                None => rng.random_range(0..values.len()),
                Some(c) => {
                    let u = rng.random::<f64>() * c.last().expect("at least one value");
                    c.partition_point(|&w| w <= u).min(values.len() - 1)
                }
            };
            values[i].clone()
        }
        Field::Timestamp {
            jitter_ms,
            late_ms,
            late_fraction,
        } => {
            let jitter = if *jitter_ms > 0 {
                rng.random_range(0..=*jitter_ms)
            } else {
                0
            };
            let late = *late_fraction > 0.0 && rng.random::<f64>() < *late_fraction;
            let back = jitter.saturating_add(if late { *late_ms } else { 0 });
            Datum::Int(now_ms.saturating_sub(i64::try_from(back).unwrap_or(i64::MAX)))
        }
        Field::Object(fields) => object(fields, rng, index, now_ms),
    }
}

/// A version-4 (random) UUID in its text form, from 16 random bytes.
fn uuid_v4(mut b: [u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from(HEX[usize::from(x >> 4)]));
        out.push(char::from(HEX[usize::from(x & 0x0f)]));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// An object being read: keys are taken one by one, and whatever is left is an unknown key.
struct Obj<'a> {
    path: String,
    entries: Vec<(&'a str, &'a Json)>,
}

impl<'a> Obj<'a> {
    /// `value` as an object at `path`; `what` names it in the error ("field `amount`").
    fn new(path: &str, value: &'a Json, what: &str) -> Result<Self, TemplateError> {
        let Json::Object(entries) = value else {
            return Err(error(
                path,
                format!("{what} must be a JSON object, found {}", value.describe()),
            ));
        };
        let mut seen: Vec<&str> = Vec::with_capacity(entries.len());
        for (k, _) in entries {
            if seen.contains(&k.as_str()) {
                return Err(error(&join(path, k), "given twice"));
            }
            seen.push(k);
        }
        Ok(Obj {
            path: path.to_string(),
            entries: entries.iter().map(|(k, v)| (k.as_str(), v)).collect(),
        })
    }

    fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    fn take(&mut self, key: &str) -> Option<&'a Json> {
        let i = self.entries.iter().position(|(k, _)| *k == key)?;
        Some(self.entries.remove(i).1)
    }

    fn require(&mut self, key: &str, why: &str) -> Result<&'a Json, TemplateError> {
        self.take(key)
            .ok_or_else(|| error(&self.path(key), format!("missing: {why}")))
    }

    /// Fails on the first key not taken, listing the ones that were expected.
    fn finish(self, expected: &[&str]) -> Result<(), TemplateError> {
        match self.entries.first() {
            None => Ok(()),
            Some((k, _)) => Err(error(
                &join(&self.path, k),
                format!("unknown key (expected {})", expected.join(", ")),
            )),
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn string(path: &str, v: &Json) -> Result<String, TemplateError> {
    match v {
        Json::String(s) => Ok(s.clone()),
        other => Err(error(
            path,
            format!("expected a string, found {}", other.describe()),
        )),
    }
}

fn integer(path: &str, v: &Json) -> Result<i64, TemplateError> {
    match v {
        Json::Number(n) => n.as_i64().ok_or_else(|| {
            error(
                path,
                format!("expected an integer (64-bit), found the number {n}"),
            )
        }),
        other => Err(error(
            path,
            format!("expected an integer, found {}", other.describe()),
        )),
    }
}

fn non_negative(path: &str, v: &Json) -> Result<u64, TemplateError> {
    let n = integer(path, v)?;
    u64::try_from(n).map_err(|_| error(path, format!("must not be negative, found {n}")))
}

fn number(path: &str, v: &Json) -> Result<f64, TemplateError> {
    match v {
        Json::Number(n) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| error(path, format!("{n} is not a finite number"))),
        other => Err(error(
            path,
            format!("expected a number, found {}", other.describe()),
        )),
    }
}

/// A `fields` object: field name to spec, in order.
fn fields(path: &str, v: &Json) -> Result<Vec<(String, Field)>, TemplateError> {
    let obj = Obj::new(path, v, "`fields`")?;
    if obj.entries.is_empty() {
        return Err(error(path, "must have at least one field"));
    }
    obj.entries
        .iter()
        .map(|(name, spec)| {
            let field_path = join(path, name);
            if name.is_empty() {
                return Err(error(&field_path, "a field name must not be empty"));
            }
            Ok((name.to_string(), field(&field_path, name, spec)?))
        })
        .collect()
}

fn field(path: &str, name: &str, v: &Json) -> Result<Field, TemplateError> {
    let mut o = Obj::new(path, v, &format!("field {name:?}"))?;
    let type_path = o.path("type");
    let ty = string(
        &type_path,
        o.require("type", &format!("a field needs a type ({TYPES})"))?,
    )?;
    let field = match ty.as_str() {
        "sequence" => {
            let start = opt(&mut o, "start", integer)?.unwrap_or(1);
            let step = opt(&mut o, "step", integer)?.unwrap_or(1);
            o.finish(&["type", "start", "step"])?;
            Field::Sequence { start, step }
        }
        "uuid" => {
            o.finish(&["type"])?;
            Field::Uuid
        }
        "string" => {
            let pattern_path = o.path("pattern");
            let pattern = opt(&mut o, "pattern", string)?.unwrap_or_else(|| format!("{name}-{{}}"));
            if !pattern.contains("{}") {
                return Err(error(
                    &pattern_path,
                    format!("{pattern:?} has no {{}} (where the key number goes)"),
                ));
            }
            let keys_path = o.path("keys");
            let keys = opt(&mut o, "keys", non_negative)?.unwrap_or(DEFAULT_KEYS);
            if keys == 0 {
                return Err(error(&keys_path, "must be at least 1"));
            }
            let dist_path = o.path("distribution");
            let distribution = match opt(&mut o, "distribution", string)? {
                None => KeyDistribution::Uniform,
                Some(d) => d
                    .parse::<KeyDistribution>()
                    .map_err(|e| error(&dist_path, e))?,
            };
            if matches!(distribution, KeyDistribution::Zipf { .. }) && keys > MAX_ZIPF_KEYS {
                return Err(error(
                    &keys_path,
                    format!("at most {MAX_ZIPF_KEYS} with a zipf distribution, found {keys}"),
                ));
            }
            o.finish(&["type", "pattern", "keys", "distribution"])?;
            let sampler = KeySampler::new(keys, &distribution).map_err(|e| error(path, e))?;
            Field::String { pattern, sampler }
        }
        "integer" => {
            let why = "an integer field needs min and max";
            let min = integer(&o.path("min"), o.require("min", why)?)?;
            let max = integer(&o.path("max"), o.require("max", why)?)?;
            if min > max {
                return Err(error(
                    &o.path("min"),
                    format!("must not be above max ({max})"),
                ));
            }
            o.finish(&["type", "min", "max"])?;
            Field::Integer { min, max }
        }
        "float" => {
            let why = "a float field needs min and max";
            let min = number(&o.path("min"), o.require("min", why)?)?;
            let max = number(&o.path("max"), o.require("max", why)?)?;
            if min >= max {
                return Err(error(&o.path("min"), format!("must be below max ({max})")));
            }
            let decimals_path = o.path("decimals");
            let rounding = match opt(&mut o, "decimals", non_negative)? {
                None => None,
                Some(d) if d > MAX_DECIMALS => {
                    return Err(error(
                        &decimals_path,
                        format!("at most {MAX_DECIMALS}, found {d}"),
                    ))
                }
                Some(d) => {
                    let scale = 10f64.powi(d as i32);
                    let (low, high) = ((min * scale).ceil(), (max * scale).floor());
                    if low > high || !low.is_finite() || !high.is_finite() {
                        return Err(error(
                            &decimals_path,
                            format!("no number with {d} decimals lies between min and max"),
                        ));
                    }
                    Some(Rounding { scale, low, high })
                }
            };
            o.finish(&["type", "min", "max", "decimals"])?;
            Field::Float { min, max, rounding }
        }
        "choice" => {
            let values_path = o.path("values");
            let values_json = o.require("values", "a choice field needs values")?;
            let (values, kind) = choice_values(&values_path, values_json)?;
            let weights_path = o.path("weights");
            let cumulative = match o.take("weights") {
                None => None,
                Some(w) => Some(weights(&weights_path, w, values.len())?),
            };
            o.finish(&["type", "values", "weights"])?;
            Field::Choice {
                values,
                kind,
                cumulative,
            }
        }
        "timestamp" => {
            let jitter_ms = opt(&mut o, "jitter_ms", non_negative)?.unwrap_or(0);
            let late_path = o.path("late_ms");
            let late_ms = opt(&mut o, "late_ms", non_negative)?;
            let fraction_path = o.path("late_fraction");
            let late_fraction = opt(&mut o, "late_fraction", number)?.unwrap_or(0.0);
            if !(0.0..=1.0).contains(&late_fraction) {
                return Err(error(
                    &fraction_path,
                    format!("must be between 0 and 1, found {late_fraction}"),
                ));
            }
            if late_fraction > 0.0 && late_ms.unwrap_or(0) == 0 {
                return Err(error(
                    &late_path,
                    "must be above 0 when late_fraction is (how much older late records are)",
                ));
            }
            o.finish(&["type", "jitter_ms", "late_ms", "late_fraction"])?;
            Field::Timestamp {
                jitter_ms,
                late_ms: late_ms.unwrap_or(0),
                late_fraction,
            }
        }
        "object" => {
            let fields_path = o.path("fields");
            let nested = fields(
                &fields_path,
                o.require("fields", "an object field needs fields")?,
            )?;
            o.finish(&["type", "fields"])?;
            Field::Object(nested)
        }
        other => {
            return Err(error(
                &type_path,
                format!("unknown type {other:?} (expected {TYPES})"),
            ))
        }
    };
    Ok(field)
}

fn opt<T>(
    o: &mut Obj<'_>,
    key: &str,
    read: impl Fn(&str, &Json) -> Result<T, TemplateError>,
) -> Result<Option<T>, TemplateError> {
    let path = o.path(key);
    o.take(key).map(|v| read(&path, v)).transpose()
}

fn choice_values(path: &str, v: &Json) -> Result<(Vec<Datum>, ChoiceKind), TemplateError> {
    let Json::Array(items) = v else {
        return Err(error(
            path,
            format!("expected an array of values, found {}", v.describe()),
        ));
    };
    if items.is_empty() {
        return Err(error(path, "must have at least one value"));
    }
    let mut kind: Option<ChoiceKind> = None;
    let mut values = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        let (datum, this) = match item {
            Json::String(s) => (Datum::Str(s.clone()), ChoiceKind::String),
            Json::Bool(b) => (Datum::Bool(*b), ChoiceKind::Boolean),
            Json::Number(n) => match n.as_i64() {
                Some(i) => (Datum::Int(i), ChoiceKind::Integer),
                None => (Datum::Float(number(&item_path, item)?), ChoiceKind::Number),
            },
            other => {
                return Err(error(
                    &item_path,
                    format!(
                        "expected a string, a number or a boolean, found {}",
                        other.describe()
                    ),
                ))
            }
        };
        kind = Some(match (kind, this) {
            (None, k) => k,
            (Some(a), b) if a == b => a,
            (
                Some(ChoiceKind::Integer | ChoiceKind::Number),
                ChoiceKind::Integer | ChoiceKind::Number,
            ) => ChoiceKind::Number,
            (Some(a), _) => {
                return Err(error(
                    &item_path,
                    format!(
                        "{} among {} values: the values of a choice are all of one kind",
                        item.describe(),
                        match a {
                            ChoiceKind::String => "string",
                            ChoiceKind::Integer | ChoiceKind::Number => "number",
                            ChoiceKind::Boolean => "boolean",
                        }
                    ),
                ))
            }
        });
        values.push(datum);
    }
    Ok((values, kind.expect("at least one value")))
}

/// Cumulative weights, one weight per value.
fn weights(path: &str, v: &Json, values: usize) -> Result<Vec<f64>, TemplateError> {
    let Json::Array(items) = v else {
        return Err(error(
            path,
            format!("expected an array of numbers, found {}", v.describe()),
        ));
    };
    if items.len() != values {
        return Err(error(
            path,
            format!(
                "{} weights for {values} values: give one per value",
                items.len()
            ),
        ));
    }
    let mut acc = 0.0;
    let mut cumulative = Vec::with_capacity(items.len());
    for (i, w) in items.iter().enumerate() {
        let w_path = format!("{path}[{i}]");
        let w = number(&w_path, w)?;
        if w < 0.0 {
            return Err(error(&w_path, format!("must not be negative, found {w}")));
        }
        acc += w;
        cumulative.push(acc);
    }
    if acc <= 0.0 {
        return Err(error(path, "at least one weight must be above 0"));
    }
    Ok(cumulative)
}

// ---------------------------------------------------------------------------------------------
// Avro schema derivation
// ---------------------------------------------------------------------------------------------

/// Whether `s` is an Avro name: a letter or `_`, then letters, digits or `_`.
fn is_avro_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A full name: Avro names separated by dots (`com.example.Order`).
fn check_avro_full_name(path: &str, name: &str) -> Result<(), TemplateError> {
    if name.split('.').all(is_avro_name) {
        Ok(())
    } else {
        Err(error(
            path,
            format!(
                "{name:?} is not a valid Avro name (letters, digits and _, not starting with a digit; dots between namespace parts)"
            ),
        ))
    }
}

fn avro_record(
    name: &str,
    path: &str,
    fields: &[(String, Field)],
) -> Result<serde_json::Value, TemplateError> {
    let mut out = Vec::with_capacity(fields.len());
    for (field_name, field) in fields {
        let field_path = join(path, field_name);
        if !is_avro_name(field_name) {
            return Err(error(
                &field_path,
                format!(
                    "{field_name:?} is not a valid Avro field name (letters, digits and _, not starting with a digit): rename it, or give the schema as \"avro_schema\""
                ),
            ));
        }
        let ty = match field {
            Field::Sequence { .. } | Field::Integer { .. } => serde_json::json!("long"),
            Field::Float { .. } => serde_json::json!("double"),
            Field::String { .. } => serde_json::json!("string"),
            Field::Uuid => serde_json::json!({"type": "string", "logicalType": "uuid"}),
            Field::Timestamp { .. } => {
                serde_json::json!({"type": "long", "logicalType": "timestamp-millis"})
            }
            Field::Choice { kind, .. } => serde_json::json!(match kind {
                ChoiceKind::String => "string",
                ChoiceKind::Integer => "long",
                ChoiceKind::Number => "double",
                ChoiceKind::Boolean => "boolean",
            }),
            Field::Object(nested) => avro_record(
                &format!("{name}_{field_name}"),
                &join(&field_path, "fields"),
                nested,
            )?,
        };
        out.push(serde_json::json!({"name": field_name, "type": ty}));
    }
    Ok(serde_json::json!({"type": "record", "name": name, "fields": out}))
}

#[cfg(test)]
mod tests;
