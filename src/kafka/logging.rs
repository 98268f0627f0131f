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
            // Stopping closes every connection; a broker that cannot be reached is still news.
            Some((Problem::Disconnected, line)) if SHUTTING_DOWN.load(Ordering::Relaxed) => {
                tracing::debug!(target: "librdkafka", "{line}")
            }
            // A hint of librdkafka's about the setting to fix stays an error.
            Some((_, line)) if !message.contains("security.protocol") => {
                tracing::warn!(target: "librdkafka", "{line}")
            }
            _ => tracing::error!(target: "librdkafka", "{fac}: {message}"),
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

/// What went wrong with a broker connection, in librdkafka's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    /// `<broker>: Connect to ipv4#<ip:port> failed: <cause>`.
    Connect,
    /// `<broker>: Failed to resolve '<host:port>': <cause>`.
    Resolve,
    /// `<broker>: Disconnected: <cause>` (or without a cause): expected while the worker
    /// stops.
    Disconnected,
}

/// A connection failure or loss (`<name>: Connect to ipv4#<addr> failed: <cause> (after 0ms
/// in state CONNECT)`, `<name>: Disconnected: <cause> (after ...)`, `<name>: Failed to
/// resolve '<host:port>': <cause>`), said once, plainly: which broker (as configured, not the
/// address it resolved to), why, and the setting that leads to it.
fn connection_problem(message: &str) -> Option<(Problem, String)> {
    let (problem, what, broker, cause) = parse(message)?;
    let bootstrap = BOOTSTRAP.lock().unwrap_or_else(|p| p.into_inner());
    let source = if broker.from_bootstrap
        || bootstrap
            .split(',')
            .map(|s| s.trim().rsplit("://").next().unwrap_or(s))
            .any(|s| s == broker.address)
    {
        "kafka.bootstrap_servers"
    } else {
        "advertised by the cluster: its advertised.listeners"
    };
    Some((
        problem,
        format!("{what} {} ({source}): {cause}", broker.address),
    ))
}

/// `message` in plain words when it is about a broker connection (`cannot connect to broker
/// kafka:9092: Connection refused`), else as it is.
pub(crate) fn plain(message: &str) -> String {
    match parse(message) {
        Some((_, what, broker, cause)) => format!("{what} {}: {cause}", broker.address),
        None => message.to_string(),
    }
}

/// A broker as librdkafka names it in a message.
struct Broker<'a> {
    /// `host:port` as configured or advertised (not the address it resolved to).
    address: &'a str,
    /// Named `<host:port>/bootstrap`: it came from `kafka.bootstrap_servers`.
    from_bootstrap: bool,
}

/// The parts of a connection message: the problem, what it means, the broker, the cause.
fn parse(message: &str) -> Option<(Problem, &'static str, Broker<'_>, &str)> {
    let (problem, marker, what) = [
        (
            Problem::Connect,
            ": Connect to ",
            "cannot connect to broker",
        ),
        (
            Problem::Resolve,
            ": Failed to resolve ",
            "cannot resolve broker",
        ),
        (
            Problem::Disconnected,
            ": Disconnected",
            "lost the connection to broker",
        ),
    ]
    .into_iter()
    .find(|(_, marker, _)| message.contains(marker))?;
    let at = message.find(marker)?;
    // `GroupCoordinator: 127.0.0.1:9092`, `kafka:9092/bootstrap`, `sasl_ssl://kafka:9093/1`.
    let name = message[..at].rsplit(": ").next()?.trim();
    let name = name.rsplit("://").next().unwrap_or(name);
    let from_bootstrap = name.ends_with("/bootstrap");
    let address = name.split('/').next().unwrap_or(name);
    if !address.contains(':') {
        return None;
    }
    let rest = &message[at + marker.len()..];
    let cause = match problem {
        Problem::Connect => rest.split_once(" failed: ").map_or("", |(_, c)| c),
        Problem::Resolve => rest.split_once("': ").map_or(rest, |(_, c)| c),
        Problem::Disconnected => rest.trim_start_matches([':', ' ']),
    };
    // librdkafka's own bookkeeping ("(after 0ms in state CONNECT, 2 identical error(s)
    // suppressed)") says nothing a reader can act on.
    let cause = cause.split("(after ").next().unwrap_or(cause).trim();
    let cause = if cause.is_empty() { "closed" } else { cause };
    Some((
        problem,
        what,
        Broker {
            address,
            from_bootstrap,
        },
        cause,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_read_as_one_plain_line() {
        starting("kafka:9092,SSL://other:9093");
        let line = |m: &str| connection_problem(m).map(|(_, l)| l);
        assert_eq!(
            line(
                "kafka:9092/bootstrap: Connect to ipv4#172.18.0.3:9092 failed: Connection \
                 refused (after 0ms in state CONNECT, 1 identical error(s) suppressed)"
            )
            .as_deref(),
            Some(
                "cannot connect to broker kafka:9092 (kafka.bootstrap_servers): Connection refused"
            )
        );
        assert_eq!(
            line(
                "GroupCoordinator: broker-3:9092: Disconnected: connection closed by peer: \
                 receive 0 after POLLIN (after 3005ms in state UP)"
            )
            .as_deref(),
            Some(
                "lost the connection to broker broker-3:9092 (advertised by the cluster: its \
                 advertised.listeners): connection closed by peer: receive 0 after POLLIN"
            )
        );
        assert_eq!(
            line("sasl_ssl://other:9093/1: Disconnected (after 600000ms in state UP)").as_deref(),
            Some("lost the connection to broker other:9093 (kafka.bootstrap_servers): closed")
        );
        assert_eq!(
            line(
                "kafka:9092/bootstrap: Failed to resolve 'kafka:9092': Name or service not \
                 known (after 1ms in state CONNECT)"
            )
            .as_deref(),
            Some("cannot resolve broker kafka:9092 (kafka.bootstrap_servers): Name or service not known")
        );
        assert_eq!(
            connection_problem("kafka:9092/1: Disconnected").map(|(p, _)| p),
            Some(Problem::Disconnected)
        );
        assert_eq!(line("Topic foo partition count changed"), None);
    }
}
