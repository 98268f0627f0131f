//! Everything that speaks to Kafka through rdkafka. No rdkafka type leaves this module: the
//! rest of the worker sees [`crate::types`] and the small traits it defines.
//!
//! - [`client`]: librdkafka settings for the consumer, producer and admin clients.
//! - [`properties`]: checks of the `[kafka.properties]` passthrough.
//! - [`collector`]: the producer every task of a member sends through, with acknowledgement
//!   tracking for commits.
//! - [`restore`]: the changelog reader that rebuilds task state.
//! - [`admin`]: topic metadata and creation of internal topics.
//! - [`member`]: one consumer-group member's poll loop and rebalance handling.

pub mod admin;
pub mod client;
pub mod collector;
pub mod embedded;
pub mod member;
pub mod properties;
pub mod reader;
pub mod restore;

use rdkafka::message::{BorrowedMessage, Headers, Message};

/// The headers of a message, in order; values of null headers are empty.
pub(crate) fn message_headers(m: &BorrowedMessage<'_>) -> Vec<(String, Vec<u8>)> {
    match m.headers() {
        None => Vec::new(),
        Some(h) => h
            .iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                )
            })
            .collect(),
    }
}
