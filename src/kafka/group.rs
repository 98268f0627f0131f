//! Reads the consumer group's description from its coordinator and keeps a [`ClusterWatch`] up
//! to date with it, about once a second.
//!
//! Classic groups (`group.protocol = "classic"`): ListGroups + DescribeGroups, through
//! librdkafka's `rd_kafka_list_groups`, give every member with its client id and, once the
//! group is stable, its assignment in the consumer protocol's `ConsumerProtocolAssignment`
//! encoding, parsed here by hand. While the group rebalances the broker sends no assignments,
//! so the view then has workers without partitions (queries answer 503 until it settles).
//!
//! Consumer-protocol groups (KIP-848): Apache Kafka's DescribeGroups does not describe them
//! (`GroupMetadataManager#describeGroups` reads the group with `classicGroup(..)`, which
//! refuses any other type), so they are read with the ConsumerGroupDescribe RPC instead,
//! through librdkafka's `rd_kafka_DescribeConsumerGroups` admin call (which rust-rdkafka does
//! not wrap): each member's current assignment, already decoded.

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

    /// The group's current description.
    pub(crate) fn describe(&self) -> Result<Described, ClientError> {
        let list = self
            .consumer
            .fetch_group_list(Some(&self.group), DESCRIBE_TIMEOUT)?;
        let Some(group) = list.groups().iter().find(|g| g.name() == self.group) else {
            // The group has no coordinator record yet (no member joined).
            return Ok(Described {
                state: "Dead".into(),
                members: Vec::new(),
            });
        };
        let mut members = Vec::new();
        for m in group.members() {
            let assignment = match m.assignment() {
                Some(bytes) => parse_assignment(bytes).unwrap_or_else(|e| {
                    tracing::warn!(member = m.id(), error = %e, "unreadable assignment in the group description");
                    Vec::new()
                }),
                None => Vec::new(),
            };
            members.push(GroupMember {
                member_id: m.id().to_string(),
                client_id: m.client_id().to_string(),
                assignment,
            });
        }
        Ok(Described {
            state: group.state().to_string(),
            members,
        })
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
            match protocol {
                GroupProtocol::Classic => r.describe().map_err(|e| e.to_string()),
                GroupProtocol::Consumer => r.describe_consumer_group(),
            }
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
    /// The group's current description through `rd_kafka_DescribeConsumerGroups`
    /// (ConsumerGroupDescribe for a consumer-protocol group): each member's current assignment.
    pub(crate) fn describe_consumer_group(&self) -> Result<Described, String> {
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

/// Parses the consumer protocol's `ConsumerProtocolAssignment` (any version 0-3, which share
/// the prefix read here): `int16 version`, then `[ string topic, [int32 partition] ]`; the
/// user data after it is ignored. Empty bytes are an empty assignment.
pub(crate) fn parse_assignment(bytes: &[u8]) -> Result<Vec<(String, i32)>, String> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut r = Reader { bytes, at: 0 };
    let version = r.i16()?;
    if version < 0 {
        return Err(format!("assignment version {version}"));
    }
    let mut out = Vec::new();
    let topics = r.len("topic count")?;
    for _ in 0..topics {
        let name_len = usize::try_from(r.i16()?).map_err(|_| "null topic name".to_string())?;
        let name = std::str::from_utf8(r.take(name_len)?)
            .map_err(|_| "topic name is not UTF-8".to_string())?
            .to_string();
        let partitions = r.len("partition count")?;
        for _ in 0..partitions {
            out.push((name.clone(), r.i32()?));
        }
    }
    Ok(out)
}

/// Big-endian reads over a byte slice.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("truncated at byte {}", self.at))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().expect("two bytes"),
        ))
    }

    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().expect("four bytes"),
        ))
    }

    /// An array length; a null array (-1) is empty.
    fn len(&mut self, what: &str) -> Result<usize, String> {
        let n = self.i32()?;
        if n < -1 {
            return Err(format!("{what} {n}"));
        }
        Ok(n.max(0) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes an assignment as the Java client and librdkafka do.
    fn encode(version: i16, topics: &[(&str, &[i32])], user_data: Option<&[u8]>) -> Vec<u8> {
        let mut b = version.to_be_bytes().to_vec();
        b.extend((topics.len() as i32).to_be_bytes());
        for (t, ps) in topics {
            b.extend((t.len() as i16).to_be_bytes());
            b.extend(t.as_bytes());
            b.extend((ps.len() as i32).to_be_bytes());
            for p in *ps {
                b.extend(p.to_be_bytes());
            }
        }
        match user_data {
            Some(d) => {
                b.extend((d.len() as i32).to_be_bytes());
                b.extend(d);
            }
            None => b.extend((-1i32).to_be_bytes()),
        }
        b
    }

    #[test]
    fn parses_assignments_of_every_version() {
        for version in 0..=3 {
            let bytes = encode(
                version,
                &[("clicks", &[0, 3]), ("app-p-repartition", &[5])],
                Some(b"sticky"),
            );
            assert_eq!(
                parse_assignment(&bytes).unwrap(),
                [
                    ("clicks".to_string(), 0),
                    ("clicks".to_string(), 3),
                    ("app-p-repartition".to_string(), 5)
                ]
            );
        }
        assert_eq!(parse_assignment(&encode(0, &[], None)).unwrap(), []);
        assert_eq!(parse_assignment(&[]).unwrap(), []);
    }

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

    #[test]
    fn refuses_damaged_assignments() {
        let bytes = encode(1, &[("clicks", &[0, 3])], None);
        // Cut inside the partitions.
        let err = parse_assignment(&bytes[..bytes.len() - 6]).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        assert!(parse_assignment(&[0]).is_err());
        let mut negative = encode(0, &[], None);
        negative[2..6].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(parse_assignment(&negative).is_err());
        assert!(parse_assignment(&(-1i16).to_be_bytes()).is_err());
    }
}
