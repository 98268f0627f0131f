//! The Avro record format: plain Avro binary with a schema file, or the Confluent Schema
//! Registry wire format.
//!
//! [`AvroCodec`] turns record bytes into a [`serde_json::Value`] (what the pipeline steps work
//! on) and back. It has two modes:
//!
//! - **Plain** ([`AvroCodec::from_schema_file`], [`AvroCodec::from_schema_text`]): the record
//!   value is the Avro binary datum of the schema, with no framing.
//! - **Registry** ([`AvroCodec::with_registry`], [`AvroCodec::with_registry_schema_text`]): the
//!   Confluent wire format. Byte 0 is the magic
//!   byte 0, bytes 1..5 the schema id (big-endian u32), then the Avro binary datum. Decoding
//!   fetches the writer schema by id (`GET /schemas/ids/{id}`) once per id and caches it; when a
//!   reader schema file is given, the datum is resolved from the writer's schema to the reader's
//!   (Avro schema resolution), so every record comes out in the reader's shape whatever version
//!   wrote it. Encoding registers the file's schema under the subject on first use
//!   (`POST /subjects/{subject}/versions`, which returns the existing id for a schema already
//!   there), or, with no schema file, uses the subject's latest version
//!   (`GET /subjects/{subject}/versions/latest`); the id and schema are cached after that.
//!
//! ## JSON representation
//!
//! | Avro | JSON |
//! | --- | --- |
//! | `null`, `boolean`, `string` | the same |
//! | `int`, `long`, `float`, `double` | a number (`NaN` and infinities come out as `null`) |
//! | `bytes`, `fixed` | a string, standard base64 with padding (an array of byte numbers is also accepted when encoding) |
//! | `enum` | the symbol, a string |
//! | `array`, `map`, `record` | an array, an object, an object |
//! | `union` | the branch's value alone, no `{"type": value}` wrapping; encoding picks the branch (see below) |
//! | `decimal` (bytes or fixed), `big-decimal` | a string such as `"-12.50"` (exact; numbers are accepted when encoding) |
//! | `date`, `time-*`, `timestamp-*`, `local-timestamp-*` | the underlying number (days, ms, µs or ns) |
//! | `uuid` | a string |
//! | `duration` | an object `{"months", "days", "millis"}` |
//!
//! Encoding is strict where a silent change would lose data: a string is never parsed as a
//! number, an integer must fit its field (`int` is 32-bit), a fractional number is not put into
//! an integer field (an integral one such as `42.0` is), a decimal with more places than the
//! schema's scale is refused rather than rounded, and a key that is not a field of the record is
//! an error. Integers are accepted in `float` and `double` fields. A missing field takes the
//! field's default, or `null` when its type is a union with `null`; otherwise it is an error.
//! A union takes JSON `null` in its `null` branch; any other value goes into the first branch
//! whose type is the value's natural one (a JSON integer into `int`/`long`, a string into
//! `string`, an object into a record or map...), and failing that into the first branch that
//! accepts it.
//!
//! ## Errors
//!
//! Every [`AvroError`] says what went wrong and where: the field path for a value that does
//! not fit the schema (`items[2].amount: expected double, found "x"`), the schema id and the
//! registry's address for a registry failure, the first byte for a record that is not in the
//! wire format, the file for a bad schema file.

mod convert;
mod registry;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use apache_avro::Schema;
use serde_json::Value as Json;

use convert::Compiled;
use registry::Registry;

/// The Confluent wire format's first byte.
const MAGIC: u8 = 0;
/// Magic byte plus the 4-byte schema id.
const HEADER_LEN: usize = 5;

/// What went wrong in the Avro format layer; each message names the place (field path, schema
/// id and registry, schema file).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AvroError {
    /// The schema file could not be read or is not a valid Avro schema.
    #[error("schema file {}: {reason}", .path.display())]
    SchemaFile { path: PathBuf, reason: String },
    /// A schema given as text is not a valid Avro schema; `origin` says where it came from.
    #[error("{origin}: {reason}")]
    SchemaText { origin: String, reason: String },
    /// A request to the schema registry failed, or its answer is unusable. `what` names the
    /// request (`schema id 7`, `registering subject clicks-value`).
    #[error("{what}: registry {url}: {reason}")]
    Registry {
        what: String,
        url: String,
        reason: String,
    },
    /// The registry URL given to [`AvroCodec::with_registry`] is unusable.
    #[error("schema registry url {url:?}: {reason}")]
    RegistryUrl { url: String, reason: String },
    /// A record that should be in the Confluent wire format is not.
    #[error("not Confluent wire format: {0}")]
    WireFormat(String),
    /// The bytes are not a datum of the schema (truncated, trailing bytes, bad values), or the
    /// writer's schema cannot be resolved to the reader's. `what` names the schema.
    #[error("decoding with {what}: {reason}")]
    Decode { what: String, reason: String },
    /// A JSON value does not fit the schema; `path` is the field path (`value` for the root).
    #[error("{path}: {reason}")]
    Mismatch { path: String, reason: String },
    /// Writing the Avro datum failed after the value was converted (a bug or a schema the
    /// writer does not support).
    #[error("encoding with {what}: {reason}")]
    Encode { what: String, reason: String },
}

/// Encodes and decodes record values as Avro. `Send + Sync`; share it behind an `Arc`.
/// Registry lookups are blocking HTTP calls (10 s timeout) made at most once per schema id and
/// once for the encoding schema; call from a blocking-capable thread.
pub struct AvroCodec {
    mode: Mode,
}

impl std::fmt::Debug for AvroCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.mode {
            Mode::Plain { .. } => f.write_str("AvroCodec(plain)"),
            Mode::Registry(r) => write!(f, "AvroCodec(registry, subject {:?})", r.subject),
        }
    }
}

enum Mode {
    Plain { schema: Arc<Compiled> },
    Registry(Box<RegistryMode>),
}

struct RegistryMode {
    registry: Registry,
    subject: String,
    /// The schema file (or text), if given: the reader schema for decoding and the schema
    /// registered for encoding.
    file: Option<OwnSchema>,
    /// Writer schemas by id, fetched on first sight. A failed fetch is not remembered: the
    /// next record with that id asks again.
    writers: Mutex<HashMap<u32, Arc<Writer>>>,
    /// The id and schema used for encoding, once registered or looked up.
    encoding: Mutex<Option<(u32, Arc<Compiled>)>>,
}

/// A writer schema from the registry, with the reader schema its data is resolved to: none
/// when there is no schema file or it is the same schema (decided once, not per record).
struct Writer {
    schema: Arc<Compiled>,
    resolve_to: Option<Arc<Compiled>>,
}

/// A schema of our own: from a file, or given as text.
struct OwnSchema {
    /// Where it came from, for messages: `schema file <path>`, or the text's origin.
    origin: String,
    /// The schema's text, sent to the registry as is (canonical form would drop logical types).
    text: String,
    compiled: Arc<Compiled>,
}

/// The subject of a topic's record values under the TopicNameStrategy: `<topic>-value`.
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

impl AvroCodec {
    /// Plain Avro binary: each record value is a datum of the schema in `path` (an `.avsc`
    /// file), without framing.
    pub fn from_schema_file(path: &Path) -> Result<Self, AvroError> {
        let file = read_schema_file(path)?;
        Ok(AvroCodec {
            mode: Mode::Plain {
                schema: file.compiled,
            },
        })
    }

    /// Plain Avro binary with the schema in `text` (Avro schema JSON); `origin` names it in
    /// errors (`the template's schema`).
    pub fn from_schema_text(text: &str, origin: &str) -> Result<Self, AvroError> {
        let own = parse_schema_text(text, origin)?;
        Ok(AvroCodec {
            mode: Mode::Plain {
                schema: own.compiled,
            },
        })
    }

    /// The Confluent wire format against the schema registry at `url` (`http://host:port`,
    /// optionally with a path prefix). `subject` is where the encoding schema is registered or
    /// looked up (see [`value_subject`]). `schema`, if given, is the reader schema for decoding
    /// and the schema registered for encoding; without it decoding yields each writer's shape
    /// and encoding uses the subject's latest version. Makes no request yet.
    pub fn with_registry(
        url: &str,
        subject: String,
        schema: Option<&Path>,
    ) -> Result<Self, AvroError> {
        let file = schema.map(read_schema_file).transpose()?;
        Self::registry_mode(url, subject, file)
    }

    /// Like [`AvroCodec::with_registry`] with the schema given as `text` (Avro schema JSON)
    /// instead of a file: it is registered under `subject` on the first encode. `origin` names
    /// it in errors (`the template's schema`).
    pub fn with_registry_schema_text(
        url: &str,
        subject: String,
        text: &str,
        origin: &str,
    ) -> Result<Self, AvroError> {
        let own = parse_schema_text(text, origin)?;
        Self::registry_mode(url, subject, Some(own))
    }

    fn registry_mode(
        url: &str,
        subject: String,
        file: Option<OwnSchema>,
    ) -> Result<Self, AvroError> {
        let registry = Registry::new(url)?;
        Ok(AvroCodec {
            mode: Mode::Registry(Box::new(RegistryMode {
                registry,
                subject,
                file,
                writers: Mutex::new(HashMap::new()),
                encoding: Mutex::new(None),
            })),
        })
    }

    /// Decodes one record value into JSON (see the module docs for the representation).
    pub fn decode(&self, bytes: &[u8]) -> Result<Json, AvroError> {
        match &self.mode {
            Mode::Plain { schema } => decode_datum(schema, None, bytes, || "the schema file"),
            Mode::Registry(r) => r.decode(bytes),
        }
    }

    /// Encodes a JSON value as one record value: the bare datum in plain mode, the framed
    /// datum in registry mode (registering or looking up the schema on first use).
    pub fn encode(&self, value: &Json) -> Result<Vec<u8>, AvroError> {
        match &self.mode {
            Mode::Plain { schema } => {
                let avro = schema.to_avro(value)?;
                write_datum(schema, avro, Vec::new(), || "the schema file".to_string())
            }
            Mode::Registry(r) => r.encode(value),
        }
    }
}

impl RegistryMode {
    fn decode(&self, bytes: &[u8]) -> Result<Json, AvroError> {
        let (id, datum) = split_header(bytes)?;
        let writer = self.writer_schema(id)?;
        let resolve_to = writer.resolve_to.as_deref();
        decode_datum(&writer.schema, resolve_to, datum, || {
            format!("schema id {id}")
        })
    }

    fn encode(&self, value: &Json) -> Result<Vec<u8>, AvroError> {
        let (id, schema) = self.encoding_schema()?;
        let avro = schema.to_avro(value)?;
        let mut out = Vec::with_capacity(64);
        out.push(MAGIC);
        out.extend_from_slice(&id.to_be_bytes());
        write_datum(&schema, avro, out, || format!("schema id {id}"))
    }

    /// The writer schema with this id, from the cache or fetched (outside the lock, so that
    /// decodes of known ids never wait for a fetch).
    fn writer_schema(&self, id: u32) -> Result<Arc<Writer>, AvroError> {
        if let Some(w) = lock(&self.writers).get(&id) {
            return Ok(Arc::clone(w));
        }
        let what = format!("schema id {id}");
        let text = self.registry.schema_by_id(id, &what)?;
        let writer = self.writer(Arc::new(self.registry.parse_schema(&text, &what)?));
        let mut cache = lock(&self.writers);
        Ok(Arc::clone(cache.entry(id).or_insert(writer)))
    }

    fn writer(&self, schema: Arc<Compiled>) -> Arc<Writer> {
        let resolve_to = self
            .file
            .as_ref()
            .filter(|f| f.compiled.schema != schema.schema)
            .map(|f| Arc::clone(&f.compiled));
        Arc::new(Writer { schema, resolve_to })
    }

    /// The id and schema used for encoding: the schema file registered under the subject, or
    /// the subject's latest version. Cached after the first success; a failure is retried on
    /// the next call.
    fn encoding_schema(&self) -> Result<(u32, Arc<Compiled>), AvroError> {
        let mut encoding = lock(&self.encoding);
        if let Some((id, schema)) = &*encoding {
            return Ok((*id, Arc::clone(schema)));
        }
        let (id, schema) = match &self.file {
            Some(file) => {
                let what = format!("registering {} under subject {}", file.origin, self.subject);
                let id = self.registry.register(&self.subject, &file.text, &what)?;
                (id, Arc::clone(&file.compiled))
            }
            None => {
                let what = format!("latest schema of subject {}", self.subject);
                let (id, text) = self.registry.latest(&self.subject, &what)?;
                let what = format!("{what} (schema id {id})");
                (id, Arc::new(self.registry.parse_schema(&text, &what)?))
            }
        };
        // A writer schema we registered ourselves need not be fetched again to decode.
        lock(&self.writers)
            .entry(id)
            .or_insert_with(|| self.writer(Arc::clone(&schema)));
        *encoding = Some((id, Arc::clone(&schema)));
        Ok((id, schema))
    }
}

/// Reads the magic byte and the schema id; returns the id and the datum after them.
fn split_header(bytes: &[u8]) -> Result<(u32, &[u8]), AvroError> {
    match bytes {
        [] => Err(AvroError::WireFormat("empty value".into())),
        [first, ..] if *first != MAGIC => Err(AvroError::WireFormat(format!(
            "first byte {first:#04x}, expected 0"
        ))),
        _ if bytes.len() < HEADER_LEN => Err(AvroError::WireFormat(format!(
            "{} bytes, shorter than the 5-byte header (magic byte and schema id)",
            bytes.len()
        ))),
        _ => {
            let id = u32::from_be_bytes(bytes[1..HEADER_LEN].try_into().expect("4 bytes"));
            Ok((id, &bytes[HEADER_LEN..]))
        }
    }
}

/// Decodes a bare datum written with `writer`, resolved to `resolve_to` when given, and
/// converts it to JSON in the shape of the schema it ends up in.
fn decode_datum<W: std::fmt::Display>(
    writer: &Compiled,
    resolve_to: Option<&Compiled>,
    datum: &[u8],
    what: impl Fn() -> W,
) -> Result<Json, AvroError> {
    let err = |reason: String| AvroError::Decode {
        what: what().to_string(),
        reason,
    };
    let mut rest = datum;
    let value = apache_avro::from_avro_datum(&writer.schema, &mut rest, None)
        .map_err(|e| err(format!("{e} (datum of {} bytes)", datum.len())))?;
    if !rest.is_empty() {
        return Err(err(format!(
            "{} trailing bytes after the datum ({} bytes read): the record was written with another schema",
            rest.len(),
            datum.len() - rest.len()
        )));
    }
    let (value, shape) = match resolve_to {
        Some(reader) => {
            let resolved = value
                .resolve(&reader.schema)
                .map_err(|e| err(format!("resolving to the reader schema: {e}")))?;
            (resolved, reader)
        }
        None => (value, writer),
    };
    shape.to_json(&value).map_err(err)
}

/// Writes `value` (already converted to fit `schema`) after `out`'s current contents.
fn write_datum(
    schema: &Compiled,
    value: apache_avro::types::Value,
    out: Vec<u8>,
    what: impl Fn() -> String,
) -> Result<Vec<u8>, AvroError> {
    let datum =
        apache_avro::to_avro_datum(&schema.schema, value).map_err(|e| AvroError::Encode {
            what: what(),
            reason: e.to_string(),
        })?;
    let mut out = out;
    out.extend_from_slice(&datum);
    Ok(out)
}

fn read_schema_file(path: &Path) -> Result<OwnSchema, AvroError> {
    let err = |reason: String| AvroError::SchemaFile {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let compiled = compile(&text).map_err(err)?;
    Ok(OwnSchema {
        origin: format!("schema file {}", path.display()),
        text,
        compiled,
    })
}

fn parse_schema_text(text: &str, origin: &str) -> Result<OwnSchema, AvroError> {
    let compiled = compile(text).map_err(|reason| AvroError::SchemaText {
        origin: origin.to_string(),
        reason,
    })?;
    Ok(OwnSchema {
        origin: origin.to_string(),
        text: text.to_string(),
        compiled,
    })
}

fn compile(text: &str) -> Result<Arc<Compiled>, String> {
    let schema = Schema::parse_str(text).map_err(|e| e.to_string())?;
    Compiled::new(schema).map(Arc::new)
}

/// Locks a cache; a panic elsewhere while it was held leaves it usable (its contents are
/// always consistent: entries are inserted whole).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
