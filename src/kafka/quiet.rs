//! Client contexts for clients whose failures reach the caller as return values (the admin
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

/// The admin client's context: quiet as [`QuietContext`], but it remembers the last failure
/// librdkafka reported about the brokers (the metadata call that fails says only "broker
/// transport failure"), and whether the brokers refused the client (authentication, TLS, a
/// wrong `security.protocol`), which waiting will not cure.
#[derive(Debug, Default)]
pub(crate) struct AdminContext {
    last: std::sync::Mutex<Option<BrokerFailure>>,
}

/// Why the brokers could not be used, as librdkafka said last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BrokerFailure {
    /// librdkafka's reason.
    pub reason: String,
    /// The brokers refused the client (its security settings): waiting will not help.
    pub refused: bool,
}

impl AdminContext {
    /// The last failure reported about the brokers.
    pub(crate) fn last_failure(&self) -> Option<BrokerFailure> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ClientContext for AdminContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        QuietContext.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode as C;
        let refused = matches!(
            error.rdkafka_error_code(),
            Some(C::Authentication | C::SaslAuthenticationFailed | C::SSL)
        ) || reason.contains("security.protocol");
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(BrokerFailure {
            reason: super::logging::plain(reason),
            refused,
        });
        QuietContext.error(error, reason);
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::types::RDKafkaErrorCode as C;

    use super::*;

    /// Security mismatches are refusals (the worker fails at once); a broker away is not.
    #[test]
    fn the_admin_context_tells_refusals_from_absence() {
        let ctx = AdminContext::default();
        ctx.error(
            KafkaError::Global(C::BrokerTransportFailure),
            "kafka:9092/bootstrap: Connect to ipv4#10.0.0.1:9092 failed: Connection refused \
             (after 0ms in state CONNECT)",
        );
        assert_eq!(
            ctx.last_failure(),
            Some(BrokerFailure {
                reason: "cannot connect to broker kafka:9092: Connection refused".into(),
                refused: false,
            })
        );
        ctx.error(
            KafkaError::Global(C::Authentication),
            "sasl_ssl://kafka:9093/bootstrap: SASL authentication error: Authentication failed",
        );
        assert!(ctx.last_failure().unwrap().refused);
        ctx.error(
            KafkaError::Global(C::BrokerTransportFailure),
            "kafka:9093/bootstrap: Disconnected: verify that security.protocol is correctly \
             configured, broker might require SASL authentication",
        );
        assert!(ctx.last_failure().unwrap().refused);
    }
}
