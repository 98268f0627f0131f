//! Record value formats (`source.format`, `sink.format`): bytes in and out of the CEL values
//! the steps work on.

use std::sync::Arc;

use cel::Value;

use super::value;
use crate::avro::AvroCodec;
use crate::config::Format;

/// A value codec.
#[derive(Debug, Clone)]
pub enum Codec {
    /// JSON text.
    Json,
    /// UTF-8 text, as a CEL string.
    Text,
    /// Raw bytes, as CEL bytes.
    Bytes,
    /// Avro, plain or in the schema registry's wire format.
    Avro(Arc<AvroCodec>),
}

impl Codec {
    /// The codec of a non-Avro format.
    pub fn plain(format: Format) -> Option<Self> {
        match format {
            Format::Json => Some(Self::Json),
            Format::String => Some(Self::Text),
            Format::Bytes => Some(Self::Bytes),
            Format::Avro => None,
        }
    }

    /// Decodes a record value (`None`, a tombstone, is `null`). With `fields`, a JSON object
    /// keeps only those top-level fields (the pipeline reads no others).
    pub fn decode(&self, bytes: Option<&[u8]>, fields: Option<&[String]>) -> Result<Value, String> {
        let Some(bytes) = bytes else {
            return Ok(Value::Null);
        };
        match self {
            Self::Json => match fields {
                Some(f) => value::from_json_fields(bytes, f),
                None => value::from_json(bytes),
            }
            .map_err(|e| format!("not valid JSON: {e}")),
            Self::Text => std::str::from_utf8(bytes)
                .map(|s| Value::String(Arc::new(s.to_string())))
                .map_err(|e| format!("not valid UTF-8 text: {e}")),
            Self::Bytes => Ok(Value::Bytes(Arc::new(bytes.to_vec()))),
            Self::Avro(codec) => codec
                .decode(bytes)
                .map(value::from_json_value)
                .map_err(|e| e.to_string()),
        }
    }

    /// Encodes a value (`null` becomes a tombstone).
    pub fn encode(&self, v: &Value) -> Result<Option<Vec<u8>>, String> {
        if matches!(v, Value::Null) {
            return Ok(None);
        }
        Ok(Some(match (self, v) {
            (Self::Json, v) => value::to_json(v)?,
            (Self::Avro(codec), v) => codec
                .encode(&value::to_json_value(v)?)
                .map_err(|e| e.to_string())?,
            (Self::Text | Self::Bytes, Value::String(s)) => s.as_bytes().to_vec(),
            (Self::Text | Self::Bytes, Value::Bytes(b)) => b.to_vec(),
            // Anything else is written as its JSON text, so `map = "amount * 2"` works for text.
            (Self::Text, v) => value::to_json(v)?,
            (Self::Bytes, v) => {
                return Err(format!(
                    "a {} value cannot be written in the bytes format (give bytes or a string)",
                    value::type_name(v)
                ))
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Codec {
        fn decode_all(&self, bytes: Option<&[u8]>) -> Result<Value, String> {
            self.decode(bytes, None)
        }
    }

    #[test]
    fn each_format_round_trips_and_bad_input_is_an_error() {
        let j = Codec::Json.decode_all(Some(br#"{"a":1}"#)).unwrap();
        assert_eq!(Codec::Json.encode(&j).unwrap().unwrap(), br#"{"a":1}"#);
        assert!(Codec::Json
            .decode_all(Some(b"{oops"))
            .unwrap_err()
            .starts_with("not valid JSON"));
        let t = Codec::Text.decode_all(Some(b"hello")).unwrap();
        assert_eq!(Codec::Text.encode(&t).unwrap().unwrap(), b"hello");
        assert!(Codec::Text.decode_all(Some(&[0xff, 0xfe])).is_err());
        assert_eq!(Codec::Text.encode(&Value::Int(5)).unwrap().unwrap(), b"5");
        let b = Codec::Bytes.decode_all(Some(&[0, 159])).unwrap();
        assert_eq!(Codec::Bytes.encode(&b).unwrap().unwrap(), [0, 159]);
        assert!(Codec::Bytes.encode(&Value::Int(1)).is_err());
        assert_eq!(Codec::Json.decode_all(None).unwrap(), Value::Null);
        assert_eq!(Codec::Json.encode(&Value::Null).unwrap(), None);
    }
}
