//! Everything that speaks to Kafka through rdkafka. No rdkafka type leaves this module: the
//! rest of the worker sees [`crate::types`] and the small traits it defines. (The one
//! exception is [`client`], whose settings the throughput bench uses to build a raw consumer
//! and producer configured exactly as the worker's.)
//!
//! - [`client`]: librdkafka settings for the consumer, producer and admin clients.
//! - `properties`: checks of the `[kafka.properties]` passthrough.
//! - `collector`: the producer every task of a member sends through, with acknowledgement
//!   tracking for commits.
//! - `restore`: the changelog reader that rebuilds task state; `standby`: the standby
//!   replicas, which tail changelogs into warm copies of other workers' tasks.
//! - `admin`: topic metadata and creation of internal topics; `quiet`: the context of clients
//!   whose failures reach the caller as return values.
//! - `group`: reads the consumer group's members and assignments for [`crate::cluster`].
//! - `member`: one consumer-group member's poll loop and rebalance handling.
//! - [`embedded`], [`reader`], [`tools`]: the embedded cluster, reading a topic to its end, and
//!   the plain producer and offset reader of the command line's `generate` and `demo`.

pub(crate) mod admin;
pub mod client;
pub(crate) mod collector;
pub mod embedded;
pub(crate) mod group;
pub(crate) mod logging;
pub(crate) mod member;
pub(crate) mod properties;
pub(crate) mod quiet;
pub mod reader;
pub(crate) mod restore;
pub(crate) mod standby;
pub mod tools;

pub use self::admin::AdminError;
pub use self::collector::{CollectorError, TxnError};
pub use self::member::MemberError;

use rdkafka::message::{BorrowedHeaders, Headers};

use crate::types::HeaderList;

/// The headers of a consumer message, read in place (see [`crate::types::Headers`]).
pub(crate) struct MessageHeaders<'a>(pub &'a BorrowedHeaders);

impl HeaderList for MessageHeaders<'_> {
    fn count(&self) -> usize {
        self.0.count()
    }

    fn header(&self, index: usize) -> (&str, &[u8]) {
        let h = self.0.get(index);
        (h.key, h.value.unwrap_or_default())
    }
}

/// An error of a Kafka client (librdkafka's own message). Boxed: rdkafka's error is large, and
/// this one travels inside other errors.
#[derive(Debug)]
pub struct ClientError(Box<rdkafka::error::KafkaError>);

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl ClientError {
    /// rdkafka's error, for the decisions this module makes on it.
    pub(crate) fn kafka(&self) -> &rdkafka::error::KafkaError {
        &self.0
    }

    /// True when the error says the brokers could not be reached (or did not answer in time),
    /// which waiting may cure, rather than that they refused the request.
    pub fn is_unreachable(&self) -> bool {
        use rdkafka::error::KafkaError as K;
        use rdkafka::types::RDKafkaErrorCode as C;
        let code = match &*self.0 {
            K::MetadataFetch(c) | K::AdminOp(c) | K::Global(c) => *c,
            K::AdminOpCreation(_) | K::ClientCreation(_) => return false,
            other => match other.rdkafka_error_code() {
                Some(c) => c,
                None => return false,
            },
        };
        matches!(
            code,
            C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::OperationTimedOut
                | C::RequestTimedOut
                | C::Resolve
                | C::NetworkException
                | C::BrokerNotAvailable
                | C::LeaderNotAvailable
                | C::NotCoordinator
                | C::CoordinatorNotAvailable
        )
    }
}

impl From<rdkafka::error::KafkaError> for ClientError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        Self(Box::new(e))
    }
}
