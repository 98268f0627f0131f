//! A client context for clients whose failures reach the caller as return values (the admin
//! client, the group reader): librdkafka's own log and error lines about them would only say
//! the same thing again, usually several times, so they go to the debug level.

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct QuietContext;

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(target: "librdkafka", ?level, fac, "{log_message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", %error, "{reason}");
    }
}

impl rdkafka::consumer::ConsumerContext for QuietContext {}
