//! What `tributary generate` writes: the click records, or a template's records encoded as
//! JSON or Avro, one [`Outgoing`] record at a time.

use std::sync::Arc;

use tributary::avro::{value_subject, AvroCodec, AvroError};
use tributary_generator::{RecordGenerator, TemplateError, TemplateGenerator};

use super::{now_ms, GenerateError, GenerateOptions, TemplateOptions, ValueFormat};

/// Where the records come from, and how their values are written.
pub(super) enum Records {
    /// The click records `{"user","amount","ts"}`, in JSON.
    Clicks(RecordGenerator),
    /// A template's records.
    Template {
        generator: TemplateGenerator,
        encoder: Encoder,
        origin: String,
    },
}

/// How a template's values become bytes.
pub(super) enum Encoder {
    Json,
    /// Plain or registry Avro; the registry (if any) has been asked already, so encoding makes
    /// no request.
    Avro(Arc<AvroCodec>),
}

/// One record, ready to send.
pub(super) struct Outgoing {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub timestamp: i64,
    /// Click records: key index and amount, counted in the report once acknowledged.
    pub tally: Option<(u64, u64)>,
}

impl Records {
    /// The record source of `opts`. For Avro, the template's schema is compiled and its first
    /// record encoded (from a copy of the sequence) before anything is sent: a schema the
    /// records do not fit, or a registry that does not take it, fails the run up front.
    pub async fn new(opts: &GenerateOptions) -> Result<Self, GenerateError> {
        let Some(t) = &opts.template else {
            return RecordGenerator::new(opts.keys, &opts.distribution, opts.seed)
                .map(Records::Clicks)
                .map_err(|reason| GenerateError::InvalidOptions {
                    topic: opts.topic.clone(),
                    reason,
                });
        };
        let generator = t.template.generator(opts.seed);
        let encoder = match t.format {
            ValueFormat::Json => Encoder::Json,
            ValueFormat::Avro => {
                let (codec, schema) = avro_codec(t, &opts.topic)?;
                let codec = Arc::new(codec);
                let probe = generator
                    .clone()
                    .next_record(now_ms())
                    .value
                    .to_json_value();
                let c = Arc::clone(&codec);
                // Registering the schema is a blocking HTTP call.
                tokio::task::spawn_blocking(move || c.encode(&probe))
                    .await
                    .expect("the encoding task does not panic")
                    .map_err(|e| avro_error(t, &opts.topic, &e))?;
                if let Some(path) = &t.schema_out {
                    let text = serde_json::to_string_pretty(&schema).expect("a JSON value");
                    std::fs::write(path, text + "\n").map_err(|e| GenerateError::Avro {
                        origin: t.origin.clone(),
                        topic: opts.topic.clone(),
                        reason: format!("writing the schema to {}: {e}", path.display()),
                    })?;
                }
                Encoder::Avro(codec)
            }
        };
        Ok(Records::Template {
            generator,
            encoder,
            origin: t.origin.clone(),
        })
    }

    /// Whether the records carry click tallies ([`Outgoing::tally`]).
    pub fn tallies(&self) -> bool {
        matches!(self, Records::Clicks(_))
    }

    /// The next record, stamped `now` (epoch ms) unless its template names a timestamp field.
    pub fn next(&mut self, now: i64, topic: &str) -> Result<Outgoing, GenerateError> {
        match self {
            Records::Clicks(g) => {
                let sample = g.next_sample();
                Ok(Outgoing {
                    key: Some(sample.key_name()),
                    payload: sample.to_json(now).into_bytes(),
                    timestamp: now,
                    tally: Some((sample.key, sample.amount)),
                })
            }
            Records::Template {
                generator,
                encoder,
                origin,
            } => {
                let record = generator.next_record(now);
                let payload =
                    match encoder {
                        Encoder::Json => record.value.to_json_string().into_bytes(),
                        Encoder::Avro(codec) => codec
                            .encode(&record.value.to_json_value())
                            .map_err(|e| GenerateError::Avro {
                                origin: origin.clone(),
                                topic: topic.to_string(),
                                reason: avro_reason(&e),
                            })?,
                    };
                Ok(Outgoing {
                    key: record.key,
                    payload,
                    timestamp: record.timestamp.unwrap_or(now),
                    tally: None,
                })
            }
        }
    }
}

/// The codec of a template's Avro records, and its schema (given or derived): plain or
/// through the registry under `<topic>-value`.
fn avro_codec(
    t: &TemplateOptions,
    topic: &str,
) -> Result<(AvroCodec, serde_json::Value), GenerateError> {
    let schema = t
        .template
        .avro_schema()
        .map_err(|e: TemplateError| GenerateError::Template {
            origin: t.origin.clone(),
            reason: e.to_string(),
        })?;
    let text = schema.to_string();
    let label = if t.template.gives_avro_schema() {
        "avro_schema"
    } else {
        "the Avro schema derived from its fields"
    };
    let codec = match &t.schema_registry {
        None => AvroCodec::from_schema_text(&text, label),
        Some(url) => AvroCodec::with_registry_schema_text(url, value_subject(topic), &text, label),
    }
    .map_err(|e| avro_error(t, topic, &e))?;
    Ok((codec, schema))
}

fn avro_error(t: &TemplateOptions, topic: &str, e: &AvroError) -> GenerateError {
    GenerateError::Avro {
        origin: t.origin.clone(),
        topic: topic.to_string(),
        reason: avro_reason(e),
    }
}

fn avro_reason(e: &AvroError) -> String {
    match e {
        AvroError::Mismatch { .. } => format!("a record does not fit the schema: {e}"),
        other => other.to_string(),
    }
}
