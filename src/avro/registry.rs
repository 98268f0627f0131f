//! A minimal blocking client of the Confluent Schema Registry REST API: the three calls the
//! codec needs.

use std::time::Duration;

use apache_avro::Schema;
use serde_json::Value as Json;

use super::convert::Compiled;
use super::AvroError;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
const ACCEPT: &str =
    "application/vnd.schemaregistry.v1+json, application/vnd.schemaregistry+json, application/json";
/// For each request as a whole: connect, send, and read the answer.
const TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Registry {
    /// The base URL without a trailing slash.
    base: String,
    agent: ureq::Agent,
}

impl Registry {
    pub(crate) fn new(url: &str) -> Result<Self, AvroError> {
        let base = url.trim().trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(AvroError::RegistryUrl {
                url: url.to_string(),
                reason: "expected http://host:port or https://host:port".into(),
            });
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            // Error answers carry the registry's JSON message: read it ourselves.
            .http_status_as_error(false)
            .build()
            .new_agent();
        Ok(Registry { base, agent })
    }

    /// `GET /schemas/ids/{id}`: the schema text.
    pub(crate) fn schema_by_id(&self, id: u32, what: &str) -> Result<String, AvroError> {
        let body = self.call(what, "GET", &format!("/schemas/ids/{id}"), None)?;
        self.schema_text(&body, what)
    }

    /// `POST /subjects/{subject}/versions`: registers the schema (or finds it already there)
    /// and returns its id.
    pub(crate) fn register(
        &self,
        subject: &str,
        schema: &str,
        what: &str,
    ) -> Result<u32, AvroError> {
        let path = format!("/subjects/{}/versions", encode_segment(subject));
        let body = self.call(
            what,
            "POST",
            &path,
            Some(serde_json::json!({ "schema": schema })),
        )?;
        self.id(&body, what)
    }

    /// `GET /subjects/{subject}/versions/latest`: the id and text of the latest schema.
    pub(crate) fn latest(&self, subject: &str, what: &str) -> Result<(u32, String), AvroError> {
        let path = format!("/subjects/{}/versions/latest", encode_segment(subject));
        let body = self.call(what, "GET", &path, None)?;
        Ok((self.id(&body, what)?, self.schema_text(&body, what)?))
    }

    /// Parses a schema text the registry gave.
    pub(crate) fn parse_schema(&self, text: &str, what: &str) -> Result<Compiled, AvroError> {
        Schema::parse_str(text)
            .map_err(|e| e.to_string())
            .and_then(Compiled::new)
            .map_err(|e| self.err(what, format!("not a valid Avro schema: {e}")))
    }

    fn err(&self, what: &str, reason: String) -> AvroError {
        AvroError::Registry {
            what: what.to_string(),
            url: self.base.clone(),
            reason,
        }
    }

    /// One request; a non-2xx answer becomes an error with the registry's own message.
    fn call(
        &self,
        what: &str,
        method: &str,
        path: &str,
        body: Option<Json>,
    ) -> Result<Json, AvroError> {
        let url = format!("{}{path}", self.base);
        let result = match body {
            None => self.agent.get(&url).header("Accept", ACCEPT).call(),
            Some(body) => self
                .agent
                .post(&url)
                .header("Accept", ACCEPT)
                .header("Content-Type", CONTENT_TYPE)
                .send(body.to_string()),
        };
        let mut response = result.map_err(|e| self.err(what, format!("{method} {path}: {e}")))?;
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| self.err(what, format!("{method} {path}: reading the answer: {e}")))?;
        let json: Option<Json> = serde_json::from_str(&text).ok();
        if !status.is_success() {
            // {"error_code": 40403, "message": "Schema not found"}
            let detail = match &json {
                Some(j) if j.get("message").is_some() => {
                    let message = j["message"]
                        .as_str()
                        .map_or_else(|| j["message"].to_string(), str::to_string);
                    match j.get("error_code") {
                        Some(code) => format!("{message} (error code {code})"),
                        None => message,
                    }
                }
                _ => snippet(&text),
            };
            return Err(self.err(
                what,
                format!("{method} {path}: {} {detail}", status.as_u16()),
            ));
        }
        json.ok_or_else(|| {
            self.err(
                what,
                format!("{method} {path}: answer is not JSON: {}", snippet(&text)),
            )
        })
    }

    fn id(&self, body: &Json, what: &str) -> Result<u32, AvroError> {
        body.get("id")
            .and_then(Json::as_u64)
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| {
                self.err(
                    what,
                    format!("answer has no schema id: {}", snippet(&body.to_string())),
                )
            })
    }

    fn schema_text(&self, body: &Json, what: &str) -> Result<String, AvroError> {
        match body.get("schemaType").and_then(Json::as_str) {
            None | Some("AVRO") => {}
            Some(other) => return Err(self.err(what, format!("schema type {other}, not AVRO"))),
        }
        if body
            .get("references")
            .and_then(Json::as_array)
            .is_some_and(|r| !r.is_empty())
        {
            return Err(self.err(what, "schema references are not supported".into()));
        }
        body.get("schema")
            .and_then(Json::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                self.err(
                    what,
                    format!("answer has no schema: {}", snippet(&body.to_string())),
                )
            })
    }
}

/// Percent-encodes a path segment (subjects may hold characters such as `/` or spaces).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// At most 200 characters of an answer, for error messages.
fn snippet(text: &str) -> String {
    let t = text.trim();
    if t.chars().count() > 200 {
        format!("{}...", t.chars().take(200).collect::<String>())
    } else if t.is_empty() {
        "(empty answer)".into()
    } else {
        t.to_string()
    }
}
