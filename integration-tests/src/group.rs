//! What the broker says about a consumer group: its protocol and assignor.
//!
//! rust-rdkafka has no binding for librdkafka's `DescribeConsumerGroups` admin call (which
//! reports the group type since librdkafka 2.10), so this calls it through `rdkafka::bindings`.

use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rdkafka::admin::AdminClient;
use rdkafka::bindings as rd;
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

/// A consumer group as the broker's group coordinator describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// `"Consumer"` (KIP-848 protocol), `"Classic"` or `"Unknown"`.
    pub kind: String,
    /// The assignor: the broker-side one of a consumer-protocol group (`"uniform"`,
    /// `"range"`), the members' agreed strategy of a classic group (`"cooperative-sticky"`).
    pub assignor: String,
    /// `"Stable"`, `"Empty"`, `"PreparingRebalance"`, ...
    pub state: String,
    /// Members currently in the group.
    pub members: usize,
}

/// Owns a librdkafka object and destroys it on drop.
struct Owned<T>(*mut T, unsafe extern "C" fn(*mut T));

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from the matching librdkafka constructor and is
            // destroyed once.
            unsafe { (self.1)(self.0) }
        }
    }
}

fn text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: librdkafka returns NUL-terminated strings that live as long as their object.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Describes `group` (librdkafka `DescribeConsumerGroups`: ConsumerGroupDescribe, or
/// DescribeGroups for a classic group).
pub fn describe_group(bootstrap: &str, group: &str) -> Result<GroupDescription> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let rk = admin.inner().native_ptr();
    let name = CString::new(group).context("group name has a NUL byte")?;
    let timeout = Duration::from_secs(30);
    // SAFETY: every pointer below is checked for null and owned by `Owned` (destroyed in
    // reverse order of creation); `rk` outlives them all (`admin` is dropped last); strings
    // read from the result are copied before the event is destroyed.
    unsafe {
        let queue = Owned(rd::rd_kafka_queue_new(rk), rd::rd_kafka_queue_destroy);
        let options = Owned(
            rd::rd_kafka_AdminOptions_new(
                rk,
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBECONSUMERGROUPS,
            ),
            rd::rd_kafka_AdminOptions_destroy,
        );
        let mut errstr = [0 as c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options.0,
            timeout.as_millis() as i32,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        let mut names = [name.as_ptr()];
        rd::rd_kafka_DescribeConsumerGroups(rk, names.as_mut_ptr(), 1, options.0, queue.0);
        let event = Owned(
            rd::rd_kafka_queue_poll(queue.0, timeout.as_millis() as i32 + 5_000),
            rd::rd_kafka_event_destroy,
        );
        if event.0.is_null() {
            bail!("DescribeConsumerGroups {group}: no answer within {timeout:?}");
        }
        if rd::rd_kafka_event_error(event.0) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            bail!(
                "DescribeConsumerGroups {group}: {}",
                text(rd::rd_kafka_event_error_string(event.0))
            );
        }
        let result = rd::rd_kafka_event_DescribeConsumerGroups_result(event.0);
        if result.is_null() {
            bail!("DescribeConsumerGroups {group}: unexpected event type");
        }
        let mut count = 0;
        let groups = rd::rd_kafka_DescribeConsumerGroups_result_groups(result, &mut count);
        if count != 1 || groups.is_null() {
            bail!("DescribeConsumerGroups {group}: {count} groups in the answer");
        }
        let g = *groups;
        let error = rd::rd_kafka_ConsumerGroupDescription_error(g);
        if !error.is_null() {
            bail!(
                "DescribeConsumerGroups {group}: {}",
                text(rd::rd_kafka_error_string(error))
            );
        }
        Ok(GroupDescription {
            kind: text(rd::rd_kafka_consumer_group_type_name(
                rd::rd_kafka_ConsumerGroupDescription_type(g),
            )),
            assignor: text(rd::rd_kafka_ConsumerGroupDescription_partition_assignor(g)),
            state: text(rd::rd_kafka_consumer_group_state_name(
                rd::rd_kafka_ConsumerGroupDescription_state(g),
            )),
            members: rd::rd_kafka_ConsumerGroupDescription_member_count(g),
        })
    }
}
