//! Reads the consumer group's description from its coordinator and keeps a [`ClusterWatch`] up
//! to date with it, about once a second.
//!
//! One call serves both group protocols: librdkafka's `rd_kafka_DescribeConsumerGroups` admin
//! call (which rust-rdkafka does not wrap) asks the group's coordinator with
//! ConsumerGroupDescribe and, for a classic group, falls back to DescribeGroups, decoding the
//! members' assignments either way. Only the coordinator is asked: the older
//! `rd_kafka_list_groups` asked every broker and waited for all of them, so one broker down
//! made every description fail. Apache Kafka's DescribeGroups does not describe a
//! consumer-protocol (KIP-848) group (`GroupMetadataManager#describeGroups` reads the group
//! with `classicGroup(..)`, which refuses any other type), hence ConsumerGroupDescribe first.
//! While a classic group rebalances the broker sends no assignments, so the view then has
//! workers without partitions (queries answer 503 until it settles).

use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_util::sync::CancellationToken;

use crate::cluster::{ClusterView, ClusterWatch, GroupMember};
use crate::config::{Config, GroupProtocol};

use super::ClientError;

/// How long one description may take.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A group as the broker describes it.
#[derive(Debug, Clone)]
pub(crate) struct Described {
    /// `Stable`, `PreparingRebalance`, `CompletingRebalance`, `Empty` or `Dead` (librdkafka's
    /// names of the broker's group states).
    pub state: String,
    /// Its members (none for a group the call does not describe).
    pub members: Vec<GroupMember>,
}

/// A client that joins no group, used only to describe the worker's group.
pub(crate) struct GroupReader {
    consumer: BaseConsumer,
    group: String,
}

impl GroupReader {
    /// A reader of group `app.id`, with the admin client's settings.
    pub(crate) fn new(cfg: &Config, bootstrap: &str) -> Result<Self, ClientError> {
        let mut c = super::client::admin(cfg, bootstrap);
        c.set("client.id", format!("{}-group-reader", cfg.app.id));
        Ok(Self {
            consumer: c.create()?,
            group: cfg.app.id.clone(),
        })
    }

    /// Serves the client's queued events (errors, logs), which nothing else polls.
    fn serve_events(&self) {
        // Never a message: the client is assigned nothing.
        let _ = self.consumer.poll(Duration::ZERO);
    }
}

/// Describes the group every `period` and publishes the view to `watch` until `stop` fires.
/// `members` is how many members this worker runs (`app.threads`): more at its address means
/// another worker advertises the same one.
pub(crate) async fn refresh(
    reader: GroupReader,
    protocol: GroupProtocol,
    members: usize,
    watch: Arc<ClusterWatch>,
    period: Duration,
    stop: CancellationToken,
) {
    let reader = Arc::new(reader);
    let mut warned = false;
    loop {
        let r = reader.clone();
        let describe = tokio::task::spawn_blocking(move || {
            r.serve_events();
            r.describe()
        });
        // Shutdown does not wait for a description under way (it ends within its timeout).
        let described = tokio::select! {
            _ = stop.cancelled() => return,
            d = describe => d,
        };
        match described {
            Ok(Ok(described)) => {
                let view = ClusterView::from_members(described.members);
                let shared = view.shared_address(watch.own_address(), members);
                // Once per spell, not every second.
                match &shared {
                    Some(p) if !warned => {
                        tracing::warn!(problem = %p, "workers cannot be told apart")
                    }
                    _ => {}
                }
                warned = shared.is_some();
                let problem = state_problem(protocol, &described.state).or(shared);
                watch.publish(view);
                if let Some(p) = problem {
                    watch.report_problem(p);
                }
            }
            Ok(Err(e)) => watch.report_problem(format!("describing the group failed: {e}")),
            Err(e) => watch.report_problem(format!("describing the group panicked: {e}")),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

impl GroupReader {
    /// The group's current description through `rd_kafka_DescribeConsumerGroups` (see the
    /// module docs): each member's client id and current assignment.
    pub(crate) fn describe(&self) -> Result<Described, String> {
        use rdkafka::bindings as rd;

        let group = CString::new(self.group.as_str()).map_err(|e| e.to_string())?;
        let rk = self.consumer.client().native_ptr();
        let timeout = c_int::try_from(DESCRIBE_TIMEOUT.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: `rk` is the live handle of `self.consumer`. Every object created here is
        // destroyed by its guard, after the description has been copied out of the event that
        // owns it; the group name outlives the call that reads it.
        unsafe {
            let queue = Guard(rd::rd_kafka_queue_new(rk), rd::rd_kafka_queue_destroy);
            let options = Guard(
                rd::rd_kafka_AdminOptions_new(
                    rk,
                    rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBECONSUMERGROUPS,
                ),
                rd::rd_kafka_AdminOptions_destroy,
            );
            let mut errstr: [c_char; 256] = [0; 256];
            rd::rd_kafka_AdminOptions_set_request_timeout(
                options.0,
                timeout,
                errstr.as_mut_ptr(),
                errstr.len(),
            );
            let mut groups = [group.as_ptr()];
            rd::rd_kafka_DescribeConsumerGroups(rk, groups.as_mut_ptr(), 1, options.0, queue.0);
            // The request times out on its own; wait a little longer for its answer.
            let event = rd::rd_kafka_queue_poll(queue.0, timeout.saturating_add(1000));
            if event.is_null() {
                return Err("describing the group timed out".into());
            }
            let event = Guard(event, rd::rd_kafka_event_destroy);
            if rd::rd_kafka_event_error(event.0)
                != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                return Err(text(rd::rd_kafka_event_error_string(event.0)));
            }
            let result = rd::rd_kafka_event_DescribeConsumerGroups_result(event.0);
            if result.is_null() {
                return Err("no DescribeConsumerGroups result".into());
            }
            let mut n = 0usize;
            let descriptions = rd::rd_kafka_DescribeConsumerGroups_result_groups(result, &mut n);
            if n == 0 || descriptions.is_null() {
                return Err("the group was not described".into());
            }
            let d = *descriptions;
            let error = rd::rd_kafka_ConsumerGroupDescription_error(d);
            if !error.is_null() {
                if rd::rd_kafka_error_code(error)
                    == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_GROUP_ID_NOT_FOUND
                {
                    return Ok(Described {
                        state: "Dead".into(),
                        members: Vec::new(),
                    });
                }
                return Err(text(rd::rd_kafka_error_string(error)));
            }
            let state = text(rd::rd_kafka_consumer_group_state_name(
                rd::rd_kafka_ConsumerGroupDescription_state(d),
            ));
            let mut members = Vec::new();
            for i in 0..rd::rd_kafka_ConsumerGroupDescription_member_count(d) {
                let m = rd::rd_kafka_ConsumerGroupDescription_member(d, i);
                if m.is_null() {
                    continue;
                }
                let mut assignment = Vec::new();
                let a = rd::rd_kafka_MemberDescription_assignment(m);
                let list = if a.is_null() {
                    std::ptr::null()
                } else {
                    rd::rd_kafka_MemberAssignment_partitions(a)
                };
                if !list.is_null() && !(*list).elems.is_null() {
                    let count = usize::try_from((*list).cnt).unwrap_or(0);
                    for tp in std::slice::from_raw_parts((*list).elems, count) {
                        assignment.push((text(tp.topic), tp.partition));
                    }
                }
                members.push(GroupMember {
                    member_id: text(rd::rd_kafka_MemberDescription_consumer_id(m)),
                    client_id: text(rd::rd_kafka_MemberDescription_client_id(m)),
                    assignment,
                });
            }
            Ok(Described { state, members })
        }
    }
}

/// Destroys a librdkafka object when dropped.
struct Guard<T>(*mut T, unsafe extern "C" fn(*mut T));

impl<T> Drop for Guard<T> {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: created by the matching librdkafka constructor, destroyed once.
            unsafe { (self.1)(self.0) }
        }
    }
}

/// A C string owned by librdkafka, copied (empty for NULL).
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that lives for the call.
unsafe fn text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    CStr::from_ptr(p).to_string_lossy().into_owned()
}

/// Why a group in `state` gives an incomplete view, if it does. A consumer-protocol group's
/// members report what they own now, even while the group reconciles; a classic group's
/// assignments are only described once it is stable.
fn state_problem(protocol: GroupProtocol, state: &str) -> Option<String> {
    if matches!(state, "Empty" | "Dead") {
        Some(format!("the group has no members (state {state})"))
    } else if protocol == GroupProtocol::Classic && state != "Stable" {
        Some(format!(
            "the group is rebalancing (state {state}); assignments are not known until it \
             settles"
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_settled_groups_give_a_complete_view() {
        use GroupProtocol::{Classic, Consumer};
        assert_eq!(state_problem(Classic, "Stable"), None);
        let p = state_problem(Classic, "PreparingRebalance").unwrap();
        assert!(p.contains("rebalancing (state PreparingRebalance)"), "{p}");
        assert!(state_problem(Classic, "CompletingRebalance").is_some());
        assert_eq!(state_problem(Consumer, "Stable"), None);
        assert_eq!(state_problem(Consumer, "Unknown"), None, "reconciling");
        for protocol in [Classic, Consumer] {
            let p = state_problem(protocol, "Dead").unwrap();
            assert!(p.contains("no members"), "{p}");
        }
    }
}
