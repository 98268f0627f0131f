//! Conversions between Avro values and JSON, guided by the schema (see the module docs of
//! [`crate::avro`] for the representation).

use std::collections::HashMap;
use std::fmt;

use apache_avro::schema::{
    DecimalSchema, EnumSchema, FixedSchema, Name, Namespace, RecordSchema, ResolvedSchema,
    UnionSchema,
};
use apache_avro::types::Value as Avro;
use apache_avro::{Days, Decimal, Duration, Millis, Months, Schema};
use serde_json::{Map, Number, Value as Json};

use super::AvroError;

/// A parsed schema with its named types, so that references (`"type": "Address"` after the
/// first definition) can be followed.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) schema: Schema,
    names: HashMap<Name, Schema>,
}

impl Compiled {
    pub(crate) fn new(schema: Schema) -> Result<Self, String> {
        let names = ResolvedSchema::try_from(&schema)
            .map_err(|e| e.to_string())?
            .get_names()
            .iter()
            .map(|(name, s)| (name.clone(), (*s).clone()))
            .collect();
        Ok(Compiled { schema, names })
    }

    /// Converts JSON into an Avro value that fits the schema, or says where it does not.
    pub(crate) fn to_avro(&self, json: &Json) -> Result<Avro, AvroError> {
        self.json_to_avro(json, &self.schema, &None, &Path::Root)
    }

    /// Converts a decoded Avro value (in this schema's shape) into JSON.
    pub(crate) fn to_json(&self, value: &Avro) -> Result<Json, String> {
        self.avro_to_json(value, &self.schema, &None)
    }

    /// Follows a reference, and gives the namespace that names inside `schema` are relative to.
    fn deref<'a>(
        &'a self,
        schema: &'a Schema,
        ns: &'a Namespace,
    ) -> Result<(&'a Schema, &'a Namespace), String> {
        match schema {
            Schema::Ref { name } => {
                let full = name.fully_qualified_name(ns);
                match self.names.get_key_value(&full) {
                    Some((name, schema)) => Ok((schema, &name.namespace)),
                    None => Err(format!("schema references unknown type {full}")),
                }
            }
            Schema::Record(RecordSchema { name, .. })
            | Schema::Enum(EnumSchema { name, .. })
            | Schema::Fixed(FixedSchema { name, .. }) => Ok((schema, &name.namespace)),
            _ => Ok((schema, ns)),
        }
    }

    fn json_to_avro(
        &self,
        json: &Json,
        schema: &Schema,
        ns: &Namespace,
        path: &Path<'_>,
    ) -> Result<Avro, AvroError> {
        let (schema, ns) = self.deref(schema, ns).map_err(|r| path.err(r))?;
        let mismatch = || {
            path.err(format!(
                "expected {}, found {}",
                expected(schema),
                found(json)
            ))
        };
        let v = match (schema, json) {
            (Schema::Null, Json::Null) => Avro::Null,
            (Schema::Boolean, Json::Bool(b)) => Avro::Boolean(*b),
            (Schema::Int, Json::Number(n)) => Avro::Int(int(n, path)?),
            (Schema::Long, Json::Number(n)) => Avro::Long(long(n, path, "long")?),
            (Schema::Float, Json::Number(n)) => Avro::Float(float(n) as f32),
            (Schema::Double, Json::Number(n)) => Avro::Double(float(n)),
            (Schema::String, Json::String(s)) => Avro::String(s.clone()),
            (Schema::Bytes, _) => Avro::Bytes(bytes(json, path).ok_or_else(mismatch)??),
            (Schema::Fixed(f), _) => {
                let b = bytes(json, path).ok_or_else(mismatch)??;
                if b.len() != f.size {
                    return Err(path.err(format!(
                        "expected {} bytes for fixed {}, found {}",
                        f.size,
                        f.name,
                        b.len()
                    )));
                }
                Avro::Fixed(f.size, b)
            }
            (Schema::Enum(e), Json::String(s)) => match e.symbols.iter().position(|x| x == s) {
                Some(i) => Avro::Enum(i as u32, s.clone()),
                None => {
                    return Err(path.err(format!(
                        "{s:?} is not a symbol of enum {} ({})",
                        e.name,
                        e.symbols.join(", ")
                    )))
                }
            },
            (Schema::Array(a), Json::Array(items)) => Avro::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.json_to_avro(item, &a.items, ns, &Path::Index(path, i)))
                    .collect::<Result<_, _>>()?,
            ),
            (Schema::Map(m), Json::Object(obj)) => Avro::Map(
                obj.iter()
                    .map(|(k, v)| {
                        let v = self.json_to_avro(v, &m.types, ns, &Path::Field(path, k))?;
                        Ok((k.clone(), v))
                    })
                    .collect::<Result<_, AvroError>>()?,
            ),
            (Schema::Record(r), Json::Object(obj)) => self.record(r, obj, ns, path)?,
            (Schema::Union(u), _) => self.union(u, json, ns, path)?,
            (Schema::Decimal(d), Json::String(_) | Json::Number(_)) => {
                decimal_to_avro(d, json, path)?
            }
            (Schema::BigDecimal, Json::String(_) | Json::Number(_)) => {
                let text = number_text(json);
                match text.parse::<apache_avro::BigDecimal>() {
                    Ok(d) => Avro::BigDecimal(d),
                    Err(_) => {
                        return Err(path.err(format!("{} is not a decimal number", found(json))))
                    }
                }
            }
            (Schema::Uuid, Json::String(s)) => match apache_avro::Uuid::parse_str(s) {
                Ok(u) => Avro::Uuid(u),
                Err(e) => return Err(path.err(format!("{s:?} is not a UUID: {e}"))),
            },
            (Schema::Date, Json::Number(n)) => Avro::Date(int(n, path)?),
            (Schema::TimeMillis, Json::Number(n)) => Avro::TimeMillis(int(n, path)?),
            (Schema::TimeMicros, Json::Number(n)) => Avro::TimeMicros(long(n, path, "long")?),
            (Schema::TimestampMillis, Json::Number(n)) => {
                Avro::TimestampMillis(long(n, path, "long")?)
            }
            (Schema::TimestampMicros, Json::Number(n)) => {
                Avro::TimestampMicros(long(n, path, "long")?)
            }
            (Schema::TimestampNanos, Json::Number(n)) => {
                Avro::TimestampNanos(long(n, path, "long")?)
            }
            (Schema::LocalTimestampMillis, Json::Number(n)) => {
                Avro::LocalTimestampMillis(long(n, path, "long")?)
            }
            (Schema::LocalTimestampMicros, Json::Number(n)) => {
                Avro::LocalTimestampMicros(long(n, path, "long")?)
            }
            (Schema::LocalTimestampNanos, Json::Number(n)) => {
                Avro::LocalTimestampNanos(long(n, path, "long")?)
            }
            (Schema::Duration, Json::Object(obj)) => duration_to_avro(obj, path)?,
            _ => return Err(mismatch()),
        };
        Ok(v)
    }

    fn record(
        &self,
        r: &RecordSchema,
        obj: &Map<String, Json>,
        ns: &Namespace,
        path: &Path<'_>,
    ) -> Result<Avro, AvroError> {
        if let Some(unknown) = obj.keys().find(|k| !r.lookup.contains_key(*k)) {
            return Err(Path::Field(path, unknown).err(format!(
                "not a field of record {} (fields: {})",
                r.name,
                r.fields
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let mut fields = Vec::with_capacity(r.fields.len());
        for field in &r.fields {
            let fpath = Path::Field(path, &field.name);
            let value = match (obj.get(&field.name), &field.default) {
                (Some(v), _) => self.json_to_avro(v, &field.schema, ns, &fpath)?,
                // Defaults are JSON in the schema, so they convert like any value.
                (None, Some(default)) => self.json_to_avro(default, &field.schema, ns, &fpath)?,
                (None, None) if self.nullable(&field.schema, ns) => {
                    self.json_to_avro(&Json::Null, &field.schema, ns, &fpath)?
                }
                (None, None) => {
                    return Err(fpath.err(format!(
                        "missing required field (type {}, no default)",
                        expected(self.deref(&field.schema, ns).map_or(&field.schema, |d| d.0))
                    )))
                }
            };
            fields.push((field.name.clone(), value));
        }
        Ok(Avro::Record(fields))
    }

    fn nullable(&self, schema: &Schema, ns: &Namespace) -> bool {
        match self.deref(schema, ns) {
            Ok((Schema::Union(u), _)) => u.variants().iter().any(|s| matches!(s, Schema::Null)),
            Ok((Schema::Null, _)) => true,
            _ => false,
        }
    }

    /// Picks a union branch: the first whose type is the JSON value's natural one, else the
    /// first that accepts it.
    fn union(
        &self,
        u: &UnionSchema,
        json: &Json,
        ns: &Namespace,
        path: &Path<'_>,
    ) -> Result<Avro, AvroError> {
        let variants = u.variants();
        let resolved: Vec<&Schema> = variants
            .iter()
            .map(|s| self.deref(s, ns).map_or(s, |d| d.0))
            .collect();
        let natural: Vec<usize> = (0..variants.len())
            .filter(|&i| natural(resolved[i], json))
            .collect();
        let others = (0..variants.len()).filter(|i| !natural.contains(i));
        let mut first_err = None;
        for i in natural.iter().copied().chain(others) {
            match self.json_to_avro(json, &variants[i], ns, path) {
                Ok(v) => return Ok(Avro::Union(i as u32, Box::new(v))),
                // The error of a natural branch says most (a record branch's bad field).
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        let branches = resolved
            .iter()
            .map(|s| expected(s))
            .collect::<Vec<_>>()
            .join(", ");
        match first_err {
            Some(e) if !natural.is_empty() => Err(e),
            _ => Err(path.err(format!(
                "expected one of [{branches}], found {}",
                found(json)
            ))),
        }
    }

    fn avro_to_json(&self, value: &Avro, schema: &Schema, ns: &Namespace) -> Result<Json, String> {
        let (schema, ns) = self.deref(schema, ns)?;
        let json = match (value, schema) {
            (Avro::Union(i, inner), Schema::Union(u)) => {
                let branch = u
                    .variants()
                    .get(*i as usize)
                    .ok_or_else(|| format!("union branch {i} out of range"))?;
                self.avro_to_json(inner, branch, ns)?
            }
            (Avro::Record(fields), Schema::Record(r)) => {
                let mut obj = Map::with_capacity(fields.len());
                for (name, v) in fields {
                    let fschema = r
                        .lookup
                        .get(name)
                        .map(|&i| &r.fields[i].schema)
                        .ok_or_else(|| format!("record {} has no field {name}", r.name))?;
                    obj.insert(name.clone(), self.avro_to_json(v, fschema, ns)?);
                }
                Json::Object(obj)
            }
            (Avro::Array(items), Schema::Array(a)) => Json::Array(
                items
                    .iter()
                    .map(|v| self.avro_to_json(v, &a.items, ns))
                    .collect::<Result<_, _>>()?,
            ),
            (Avro::Map(entries), Schema::Map(m)) => Json::Object(
                entries
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), self.avro_to_json(v, &m.types, ns)?)))
                    .collect::<Result<_, String>>()?,
            ),
            (Avro::Decimal(d), Schema::Decimal(DecimalSchema { scale, .. })) => {
                let bytes = <Vec<u8>>::try_from(d).map_err(|e| e.to_string())?;
                Json::String(decimal_string(&bytes, *scale))
            }
            // Values whose JSON form does not depend on the schema.
            (v, _) => plain_json(v)?,
        };
        Ok(json)
    }
}

/// JSON for a value that carries everything needed in itself.
fn plain_json(value: &Avro) -> Result<Json, String> {
    Ok(match value {
        Avro::Null => Json::Null,
        Avro::Boolean(b) => Json::Bool(*b),
        Avro::Int(i) | Avro::Date(i) | Avro::TimeMillis(i) => Json::from(*i),
        Avro::Long(i)
        | Avro::TimeMicros(i)
        | Avro::TimestampMillis(i)
        | Avro::TimestampMicros(i)
        | Avro::TimestampNanos(i)
        | Avro::LocalTimestampMillis(i)
        | Avro::LocalTimestampMicros(i)
        | Avro::LocalTimestampNanos(i) => Json::from(*i),
        // Through the shortest decimal text of the f32, so 0.1f32 reads 0.1, not 0.100000001.
        Avro::Float(f) => f
            .to_string()
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map_or(Json::Null, Json::Number),
        Avro::Double(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Avro::Bytes(b) | Avro::Fixed(_, b) => Json::String(base64_encode(b)),
        Avro::String(s) | Avro::Enum(_, s) => Json::String(s.clone()),
        Avro::Uuid(u) => Json::String(u.to_string()),
        Avro::BigDecimal(d) => Json::String(d.to_string()),
        Avro::Decimal(d) => {
            // Only without its schema (never after a successful decode): scale 0.
            let bytes = <Vec<u8>>::try_from(d).map_err(|e| e.to_string())?;
            Json::String(decimal_string(&bytes, 0))
        }
        Avro::Duration(d) => serde_json::json!({
            "months": u32::from(d.months()),
            "days": u32::from(d.days()),
            "millis": u32::from(d.millis()),
        }),
        Avro::Union(_, inner) => plain_json(inner)?,
        Avro::Array(items) => Json::Array(items.iter().map(plain_json).collect::<Result<_, _>>()?),
        Avro::Map(m) => Json::Object(
            m.iter()
                .map(|(k, v)| Ok((k.clone(), plain_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
        Avro::Record(fields) => Json::Object(
            fields
                .iter()
                .map(|(k, v)| Ok((k.clone(), plain_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// Whether a JSON value's own type is this schema's (for choosing a union branch).
fn natural(schema: &Schema, json: &Json) -> bool {
    match json {
        Json::Null => matches!(schema, Schema::Null),
        Json::Bool(_) => matches!(schema, Schema::Boolean),
        Json::Number(n) if n.is_f64() => matches!(schema, Schema::Float | Schema::Double),
        Json::Number(_) => matches!(schema, Schema::Int | Schema::Long),
        Json::String(_) => matches!(schema, Schema::String | Schema::Enum(_)),
        Json::Array(_) => matches!(schema, Schema::Array(_)),
        Json::Object(_) => matches!(schema, Schema::Record(_) | Schema::Map(_)),
    }
}

/// The field path of a value being converted, built on the stack: `items[2].amount`.
pub(crate) enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    fn err(&self, reason: String) -> AvroError {
        AvroError::Mismatch {
            path: self.to_string(),
            reason,
        }
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => f.write_str("value"),
            Path::Field(Path::Root, name) => f.write_str(name),
            Path::Field(parent, name) => write!(f, "{parent}.{name}"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// The schema's type as an error message names it.
fn expected(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => format!("record {}", r.name),
        Schema::Enum(e) => format!("enum {}", e.name),
        Schema::Fixed(f) => format!("fixed {} ({} bytes, base64)", f.name, f.size),
        Schema::Bytes => "bytes (base64 string)".into(),
        Schema::Array(_) => "array".into(),
        Schema::Map(_) => "map (object)".into(),
        Schema::Union(u) => format!(
            "union [{}]",
            u.variants()
                .iter()
                .map(expected)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Schema::Decimal(_) | Schema::BigDecimal => "decimal (string or number)".into(),
        Schema::Duration => "duration ({\"months\", \"days\", \"millis\"})".into(),
        Schema::Ref { name } => name.to_string(),
        other => {
            // The primitive and logical type names: "double", "timestamp-millis"...
            let kind = apache_avro::schema::SchemaKind::from(other);
            let name = format!("{kind:?}");
            kebab(&name)
        }
    }
}

/// `TimestampMillis` -> `timestamp-millis`.
fn kebab(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A JSON value as an error message shows it: short values in full, containers by kind.
fn found(json: &Json) -> String {
    match json {
        Json::String(s) if s.chars().count() > 40 => {
            format!("{:?}...", s.chars().take(40).collect::<String>())
        }
        Json::String(s) => format!("{s:?}"),
        Json::Array(_) => "an array".into(),
        Json::Object(_) => "an object".into(),
        other => other.to_string(),
    }
}

fn long(n: &Number, path: &Path<'_>, kind: &str) -> Result<i64, AvroError> {
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    match n.as_f64() {
        // Integral floats (42.0) are integers; 2^63 itself is out of range.
        Some(f) if f.fract() == 0.0 && f >= -(2f64.powi(63)) && f < 2f64.powi(63) => Ok(f as i64),
        Some(f) if f.fract() != 0.0 => Err(path.err(format!("expected {kind}, found {n}"))),
        _ => Err(path.err(format!("{n} is out of range for {kind}"))),
    }
}

fn int(n: &Number, path: &Path<'_>) -> Result<i32, AvroError> {
    let i = long(n, path, "int")?;
    i32::try_from(i).map_err(|_| path.err(format!("{n} is out of range for int (32-bit)")))
}

fn float(n: &Number) -> f64 {
    n.as_f64().expect("serde_json numbers convert to f64")
}

/// Bytes from a base64 string or an array of byte numbers; `None` if the JSON is neither.
fn bytes(json: &Json, path: &Path<'_>) -> Option<Result<Vec<u8>, AvroError>> {
    match json {
        Json::String(s) => {
            Some(base64_decode(s).map_err(|r| path.err(format!("bytes must be base64: {r}"))))
        }
        Json::Array(items) => Some(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_u64()
                        .and_then(|b| u8::try_from(b).ok())
                        .ok_or_else(|| {
                            Path::Index(path, i)
                                .err(format!("expected a byte (0-255), found {}", found(v)))
                        })
                })
                .collect(),
        ),
        _ => None,
    }
}

fn duration_to_avro(obj: &Map<String, Json>, path: &Path<'_>) -> Result<Avro, AvroError> {
    let part = |name: &str| -> Result<u32, AvroError> {
        let p = Path::Field(path, name);
        match obj.get(name) {
            None => Ok(0),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    p.err(format!(
                        "expected an unsigned 32-bit integer, found {}",
                        found(v)
                    ))
                }),
        }
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !["months", "days", "millis"].contains(&k.as_str()))
    {
        return Err(
            Path::Field(path, k).err("not a part of a duration (months, days, millis)".into())
        );
    }
    Ok(Avro::Duration(Duration::new(
        Months::new(part("months")?),
        Days::new(part("days")?),
        Millis::new(part("millis")?),
    )))
}

/// The text of a JSON string or number.
fn number_text(json: &Json) -> String {
    match json {
        Json::String(s) => s.trim().to_string(),
        other => other.to_string(),
    }
}

fn decimal_to_avro(d: &DecimalSchema, json: &Json, path: &Path<'_>) -> Result<Avro, AvroError> {
    let text = number_text(json);
    let bytes = decimal_bytes(&text, d.scale, d.precision)
        .map_err(|r| path.err(format!("{}: {r}", found(json))))?;
    if let Schema::Fixed(f) = &*d.inner {
        if bytes.len() > f.size {
            return Err(path.err(format!(
                "{} does not fit in fixed {} of {} bytes",
                found(json),
                f.name,
                f.size
            )));
        }
    }
    Ok(Avro::Decimal(Decimal::from(bytes)))
}

/// The unscaled value of a decimal text (`-12.5`, `1e3`) at `scale`, as minimal big-endian
/// two's-complement bytes. Refuses more fractional digits than the scale (no rounding) and
/// more digits than the precision.
pub(crate) fn decimal_bytes(text: &str, scale: usize, precision: usize) -> Result<Vec<u8>, String> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (
            &unsigned[..i],
            unsigned[i + 1..]
                .parse::<i64>()
                .map_err(|_| "not a decimal number".to_string())?,
        ),
        None => (unsigned, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int_part.is_empty() && frac_part.is_empty())
        || !all_digits(int_part)
        || !all_digits(frac_part)
    {
        return Err("not a decimal number".into());
    }
    // digits * 10^(exponent - frac_len) = unscaled * 10^-scale
    let mut digits: Vec<u8> = int_part
        .bytes()
        .chain(frac_part.bytes())
        .map(|b| b - b'0')
        .collect();
    let shift = exponent - frac_part.len() as i64 + scale as i64;
    if shift >= 0 {
        if shift > 1000 {
            return Err("exponent out of range".into());
        }
        digits.extend(std::iter::repeat_n(0, shift as usize));
    } else {
        let drop = (-shift) as usize;
        let cut = digits.len().saturating_sub(drop);
        if digits[cut..].iter().any(|&d| d != 0) {
            return Err(format!(
                "more decimal places than the schema's scale {scale}"
            ));
        }
        digits.truncate(cut);
    }
    let significant = digits.iter().skip_while(|&&d| d == 0).count();
    if significant > precision {
        return Err(format!(
            "{significant} digits at scale {scale}, more than the schema's precision {precision}"
        ));
    }
    // Base 10 -> base 256 magnitude, big-endian.
    let mut mag: Vec<u8> = vec![0];
    for d in digits {
        let mut carry = u32::from(d);
        for byte in mag.iter_mut().rev() {
            let v = u32::from(*byte) * 10 + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
        while carry > 0 {
            mag.insert(0, (carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    while mag.len() > 1 && mag[0] == 0 {
        mag.remove(0);
    }
    let is_zero = mag == [0];
    if !negative || is_zero {
        if mag[0] & 0x80 != 0 {
            mag.insert(0, 0);
        }
        return Ok(mag);
    }
    // Two's complement: invert and add one.
    for b in mag.iter_mut() {
        *b = !*b;
    }
    for b in mag.iter_mut().rev() {
        let (v, overflow) = b.overflowing_add(1);
        *b = v;
        if !overflow {
            break;
        }
    }
    if mag[0] & 0x80 == 0 {
        mag.insert(0, 0xff);
    }
    Ok(mag)
}

/// The decimal text of big-endian two's-complement `bytes` scaled by 10^-scale.
pub(crate) fn decimal_string(bytes: &[u8], scale: usize) -> String {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut mag = bytes.to_vec();
    if negative {
        for b in mag.iter_mut() {
            *b = !*b;
        }
        for b in mag.iter_mut().rev() {
            let (v, overflow) = b.overflowing_add(1);
            *b = v;
            if !overflow {
                break;
            }
        }
    }
    // Base 256 -> base 10 by repeated division.
    let mut digits = Vec::new();
    while mag.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in mag.iter_mut() {
            let v = (rem << 8) | u32::from(*b);
            *b = (v / 10) as u8;
            rem = v % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    while digits.len() <= scale {
        digits.push(b'0');
    }
    digits.reverse();
    let (int_part, frac_part) = digits.split_at(digits.len() - scale);
    let mut out = String::with_capacity(digits.len() + 2);
    if negative {
        out.push('-');
    }
    out.push_str(std::str::from_utf8(int_part).expect("ascii digits"));
    if scale > 0 {
        out.push('.');
        out.push_str(std::str::from_utf8(frac_part).expect("ascii digits"));
    }
    out
}

/// Standard base64 that takes padding or leaves it out when decoding.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Standard base64 with padding (RFC 4648 §4).
pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    BASE64.encode(bytes)
}

/// Decodes standard base64; padding is optional, whitespace and other alphabets are not
/// accepted.
pub(crate) fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    BASE64.decode(text).map_err(|e| e.to_string())
}
