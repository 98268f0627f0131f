//! librdkafka's log and error lines, as a worker logs them. librdkafka reports one broker
//! connection failure twice (a log line, then the same as a "global error"), with its
//! internal thread and state names, at error level, again and again while a broker is away.
//! Here a connection failure is one warning naming the broker and the setting that leads to
//! it; the duplicate goes to debug; and disconnects while the worker shuts down (which close
//! every connection) are not reported at all above debug.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Set once the worker shuts down: connections closing are expected then.
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);
/// `kafka.bootstrap_servers`, to tell a bootstrap broker from one the cluster advertised.
static BOOTSTRAP: Mutex<String> = Mutex::new(String::new());

/// A worker starts with `kafka.bootstrap_servers` = `servers`: lost connections are news
/// again.
pub(crate) fn starting(servers: &str) {
    *BOOTSTRAP.lock().unwrap_or_else(|p| p.into_inner()) = servers.to_string();
    SHUTTING_DOWN.store(false, Ordering::Relaxed);
}

/// From now on, lost connections are expected (the worker is shutting down).
pub(crate) fn shutting_down() {
    SHUTTING_DOWN.store(true, Ordering::Relaxed);
}

/// The context of the worker's own long-lived clients that need nothing else from one (the
/// restore and standby consumers): librdkafka's lines logged as this module says.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LoggedContext;

impl rdkafka::client::ClientContext for LoggedContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self::error(&error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for LoggedContext {}

/// A librdkafka log line.
pub(crate) fn log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    use RDKafkaLogLevel as L;
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error => match connection_problem(message) {
            Some(line) if SHUTTING_DOWN.load(Ordering::Relaxed) => {
                tracing::debug!(target: "librdkafka", "{line}")
            }
            Some(line) => tracing::warn!(target: "librdkafka", "{line}"),
            None => tracing::error!(target: "librdkafka", "{fac}: {message}"),
        },
        L::Warning => tracing::warn!(target: "librdkafka", "{fac}: {message}"),
        L::Notice | L::Info => tracing::info!(target: "librdkafka", "{fac}: {message}"),
        L::Debug => tracing::debug!(target: "librdkafka", "{fac}: {message}"),
    }
}

/// A librdkafka error callback: a connection failure was already logged (see [`log`]); other
/// errors are logged once, with their reason.
pub(crate) fn error(error: &KafkaError, reason: &str) {
    let code = match error {
        KafkaError::Global(c) => Some(*c),
        other => other.rdkafka_error_code(),
    };
    if matches!(
        code,
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve
        )
    ) {
        tracing::debug!(target: "librdkafka", %error, "{reason}");
        return;
    }
    let text = error.to_string();
    if reason.contains(&text) {
        tracing::error!(target: "librdkafka", "{reason}");
    } else {
        tracing::error!(target: "librdkafka", "{text}: {reason}");
    }
}

/// A connection failure or loss in librdkafka's words (`<name>: Connect to ipv4#<addr>
/// failed: <cause> (after 0ms in state CONNECT)`, `<name>: <addr>/<id>: Disconnected: <cause>
/// (after ...)`), said once, plainly: which broker, why, and the setting that leads to it.
fn connection_problem(message: &str) -> Option<String> {
    let (what, rest) = if let Some(at) = message.find("Connect to ") {
        (
            "cannot connect to broker",
            &message[at + "Connect to ".len()..],
        )
    } else if let Some(at) = message.find(": Disconnected") {
        ("lost the connection to broker", &message[..at])
    } else {
        return None;
    };
    let address = broker_address(rest)?;
    let cause = if let Some(at) = message.find(" failed: ") {
        &message[at + " failed: ".len()..]
    } else if let Some(at) = message.find(": Disconnected") {
        message[at + ": Disconnected".len()..].trim_start_matches([':', ' '])
    } else {
        ""
    };
    // librdkafka's own bookkeeping ("(after 0ms in state CONNECT, 2 identical error(s)
    // suppressed)") says nothing a reader can act on.
    let cause = cause.split("(after ").next().unwrap_or(cause).trim();
    let cause = if cause.is_empty() { "closed" } else { cause };
    let bootstrap = BOOTSTRAP.lock().unwrap_or_else(|p| p.into_inner());
    let source = if bootstrap.split(',').any(|s| s.trim() == address) {
        "kafka.bootstrap_servers"
    } else {
        "advertised by the cluster: its advertised.listeners"
    };
    Some(format!("{what} {address} ({source}): {cause}"))
}

/// The `host:port` in a librdkafka broker reference: `ipv4#127.0.0.1:9092 failed: ...`,
/// `GroupCoordinator: 127.0.0.1:9092`, `127.0.0.1:9092/1`, `sasl_ssl://host:9093/bootstrap`.
fn broker_address(text: &str) -> Option<String> {
    let text = text.split(" failed").next().unwrap_or(text);
    let last = text.rsplit([' ', '#']).find(|s| !s.is_empty())?;
    let last = last.rsplit("://").next().unwrap_or(last);
    let address = last.split('/').next().unwrap_or(last).trim_end_matches(':');
    address.contains(':').then(|| address.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_read_as_one_plain_line() {
        starting("127.0.0.1:33121");
        assert_eq!(
            connection_problem(
                "127.0.0.1:33121/bootstrap: Connect to ipv4#127.0.0.1:33121 failed: Connection \
                 refused (after 0ms in state CONNECT, 1 identical error(s) suppressed)"
            )
            .as_deref(),
            Some("cannot connect to broker 127.0.0.1:33121 (kafka.bootstrap_servers): Connection refused")
        );
        assert_eq!(
            connection_problem(
                "GroupCoordinator: 127.0.0.1:34963: Disconnected: connection closed by peer: \
                 receive 0 after POLLIN (after 3005ms in state UP)"
            )
            .as_deref(),
            Some(
                "lost the connection to broker 127.0.0.1:34963 (advertised by the cluster: its \
                 advertised.listeners): connection closed by peer: receive 0 after POLLIN"
            )
        );
        assert_eq!(
            connection_problem("broker-2:9092/2: Disconnected (after 600000ms in state UP)")
                .as_deref(),
            Some(
                "lost the connection to broker broker-2:9092 (advertised by the cluster: its \
                 advertised.listeners): closed"
            )
        );
        assert_eq!(
            connection_problem("Topic foo partition count changed"),
            None
        );
    }
}
