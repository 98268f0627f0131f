//! Record values inside a pipeline are CEL values ([`cel::Value`]), so expressions read them
//! without a conversion per step. This module moves them in and out of JSON: decoding builds
//! the CEL value straight from the bytes (no `serde_json::Value` in between), and encoding
//! writes map keys in sorted order, so equal values always give equal bytes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::Value;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Error as _, Serialize, SerializeMap, SerializeSeq, Serializer};

/// Parses JSON bytes into a CEL value: objects become maps, integers `int` (or `uint` above
/// `i64::MAX`), other numbers `double`.
pub fn from_json(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = CelSeed.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

/// Converts a `serde_json::Value` (from the Avro layer, say) into a CEL value.
pub fn from_json_value(value: serde_json::Value) -> Value {
    CelSeed
        .deserialize(value)
        .expect("a serde_json::Value always deserializes")
}

/// Writes a CEL value as JSON. Bytes become base64 text, timestamps RFC 3339 text, durations
/// whole seconds with an `s` suffix (as protobuf's JSON mapping does); functions and opaque
/// values are an error.
pub fn to_json(value: &Value) -> Result<Vec<u8>, String> {
    serde_json::to_vec(&AsJson(value)).map_err(|e| e.to_string())
}

/// Converts a CEL value into a `serde_json::Value` (for the Avro layer).
pub fn to_json_value(value: &Value) -> Result<serde_json::Value, String> {
    serde_json::to_value(AsJson(value)).map_err(|e| e.to_string())
}

/// The text of a value used as a record key: strings as they are, bytes as they are, anything
/// else as its JSON text (`42`, `true`, `{"a":1}`); `null` is no key.
pub fn to_key(value: &Value) -> Result<Option<Vec<u8>>, String> {
    Ok(match value {
        Value::Null => None,
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Bytes(b) => Some(b.to_vec()),
        other => Some(to_json(other)?),
    })
}

/// Looks up a field of a map value by name.
pub fn field<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    match value {
        Value::Map(m) => m.get(&cel::objects::KeyRef::String(name)),
        _ => None,
    }
}

/// A short description of a value's type, for error messages.
pub fn type_name(value: &Value) -> String {
    value.type_of().to_string()
}

/// Like [`from_json`], but an object keeps only the top-level `fields` (the others are skipped,
/// not built): for pipelines that read a few fields and then replace the value.
pub fn from_json_fields(bytes: &[u8], fields: &[String]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = de.deserialize_any(CelVisitor(Some(fields)))?;
    de.end()?;
    Ok(v)
}

struct CelSeed;

impl<'de> DeserializeSeed<'de> for CelSeed {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(CelVisitor(None))
    }
}

/// Builds a CEL value; at the top level, keeps only the given fields of an object.
struct CelVisitor<'f>(Option<&'f [String]>);

impl<'de> Visitor<'de> for CelVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::UInt(v), Value::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(Arc::new(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(Arc::new(v)))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(CelSeed)? {
            items.push(v);
        }
        Ok(Value::List(Arc::new(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map =
            HashMap::with_capacity(self.0.map_or(access.size_hint().unwrap_or(8), <[_]>::len));
        while let Some(k) = access.next_key::<String>()? {
            if self.0.is_some_and(|keep| !keep.contains(&k)) {
                access.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            let v = access.next_value_seed(CelSeed)?;
            map.insert(Key::String(Arc::new(k)), v);
        }
        Ok(Value::Map(Map { map: Arc::new(map) }))
    }
}

/// Serializes a CEL value as JSON.
struct AsJson<'a>(&'a Value);

fn key_text(k: &Key) -> Cow<'_, str> {
    match k {
        Key::String(s) => Cow::Borrowed(s.as_str()),
        Key::Int(i) => Cow::Owned(i.to_string()),
        Key::Uint(u) => Cow::Owned(u.to_string()),
        Key::Bool(b) => Cow::Owned(b.to_string()),
    }
}

impl Serialize for AsJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::UInt(u) => s.serialize_u64(*u),
            Value::Float(f) if f.is_finite() => s.serialize_f64(*f),
            Value::Float(f) => Err(S::Error::custom(format!("{f} cannot be written as JSON"))),
            Value::String(t) => s.serialize_str(t),
            Value::Bytes(b) => {
                use base64::Engine as _;
                s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b.as_slice()))
            }
            Value::List(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items.iter() {
                    seq.serialize_element(&AsJson(v))?;
                }
                seq.end()
            }
            Value::Map(m) => {
                // String keys (all of them, for JSON-born maps) are borrowed, not copied.
                let mut entries: Vec<(Cow<'_, str>, &Value)> =
                    m.map.iter().map(|(k, v)| (key_text(k), v)).collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                let mut out = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    out.serialize_entry(&k, &AsJson(v))?;
                }
                out.end()
            }
            Value::Timestamp(t) => s.serialize_str(&t.to_rfc3339()),
            Value::Duration(d) => {
                s.serialize_str(&format!("{}s", d.num_milliseconds() as f64 / 1000.0))
            }
            other => Err(S::Error::custom(format!(
                "a {} value cannot be written as JSON",
                type_name(other)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_with_sorted_keys() {
        let v = from_json(br#"{"user":"u1","amount":42,"big":18446744073709551615,"f":1.5,"ok":true,"n":null,"l":[1,"x"]}"#).unwrap();
        assert_eq!(field(&v, "amount"), Some(&Value::Int(42)));
        assert_eq!(field(&v, "big"), Some(&Value::UInt(u64::MAX)));
        assert_eq!(field(&v, "f"), Some(&Value::Float(1.5)));
        let out = String::from_utf8(to_json(&v).unwrap()).unwrap();
        assert_eq!(
            out,
            r#"{"amount":42,"big":18446744073709551615,"f":1.5,"l":[1,"x"],"n":null,"ok":true,"user":"u1"}"#
        );
    }

    #[test]
    fn field_picking_keeps_only_the_named_top_level_fields() {
        let keep = ["a".to_string(), "c".to_string()];
        let v = from_json_fields(br#"{"a":1,"b":{"x":[1,2]},"c":{"b":2}}"#, &keep).unwrap();
        assert_eq!(to_json(&v).unwrap(), br#"{"a":1,"c":{"b":2}}"#);
        assert_eq!(
            from_json_fields(b"[1]", &keep).unwrap(),
            from_json(b"[1]").unwrap()
        );
        assert!(
            from_json_fields(br#"{"a":1,"b":}"#, &keep).is_err(),
            "skipped fields are still checked"
        );
    }

    #[test]
    fn bad_json_is_an_error_naming_the_place() {
        let e = from_json(br#"{"user": }"#).unwrap_err().to_string();
        assert!(e.contains("column"), "{e}");
        assert!(from_json(b"{} trailing").is_err());
    }

    #[test]
    fn keys_are_text() {
        assert_eq!(to_key(&Value::Int(7)).unwrap(), Some(b"7".to_vec()));
        assert_eq!(
            to_key(&Value::String(Arc::new("u".into()))).unwrap(),
            Some(b"u".to_vec())
        );
        assert_eq!(to_key(&Value::Null).unwrap(), None);
    }

    #[test]
    fn bytes_are_base64_and_nan_is_refused() {
        assert_eq!(
            to_json(&Value::Bytes(Arc::new(vec![1, 2, 3]))).unwrap(),
            br#""AQID""#
        );
        assert!(to_json(&Value::Float(f64::NAN)).is_err());
    }
}
