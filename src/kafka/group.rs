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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

use crate::cluster::{ClusterView, ClusterWatch, GroupMember};
use crate::config::{Config, GroupProtocol};

use super::quiet::QuietContext;
use super::ClientError;

/// How long librdkafka may work on one description: its longest. An admin request that times
/// out while it still waits for the group's coordinator (a broker away) stays queued, and when
/// the coordinator comes back librdkafka uses memory it already freed and aborts the process
/// (librdkafka issue 4605, open in the 2.12 we build). So a description is never let time out:
/// at most one is under way, later refreshes wait on it, and the client is replaced
/// ([`REPLACE_AFTER`]) before this runs out: destroying a client whose request is still alive
/// is safe.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a description may wait for its coordinator before the client is replaced.
const REPLACE_AFTER: Duration = Duration::from_secs(45 * 60);
/// How long one refresh waits for the description under way.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

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
    config: ClientConfig,
    group: CString,
    timeouts: Timeouts,
    client: Mutex<ReaderClient>,
}

/// See [`REQUEST_TIMEOUT`], [`REPLACE_AFTER`] and [`ANSWER_WAIT`] (shorter in tests).
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    request: Duration,
    replace_after: Duration,
    answer_wait: Duration,
}

const TIMEOUTS: Timeouts = Timeouts {
    request: REQUEST_TIMEOUT,
    replace_after: REPLACE_AFTER,
    answer_wait: ANSWER_WAIT,
};

/// The reader's librdkafka client, and the description it has under way.
struct ReaderClient {
    /// Declared first: dropped before the client it belongs to.
    under_way: Option<UnderWay>,
    consumer: BaseConsumer<QuietContext>,
}

/// A description librdkafka is working on: the queue its answer comes to.
struct UnderWay {
    queue: Guard<rd::rd_kafka_queue_t>,
    since: Instant,
}

// SAFETY: librdkafka queues may be used and destroyed from any thread; the reader's mutex
// serialises every use of this one.
unsafe impl Send for UnderWay {}

impl GroupReader {
    /// A reader of group `app.id`, with the admin client's settings.
    pub(crate) fn new(cfg: &Config, bootstrap: &str) -> Result<Self, ClientError> {
        let mut c = super::client::admin(cfg, bootstrap);
        c.set("client.id", format!("{}-group-reader", cfg.app.id));
        Self::with(c, &cfg.app.id, TIMEOUTS)
    }

    fn with(config: ClientConfig, group: &str, timeouts: Timeouts) -> Result<Self, ClientError> {
        let group = CString::new(group).map_err(|e| {
            ClientError::from(rdkafka::error::KafkaError::ClientCreation(e.to_string()))
        })?;
        let consumer = config.create_with_context(QuietContext)?;
        Ok(Self {
            config,
            group,
            timeouts,
            client: Mutex::new(ReaderClient {
                under_way: None,
                consumer,
            }),
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
        let describe = tokio::task::spawn_blocking(move || r.describe());
        // Shutdown does not wait for a refresh under way (it ends within ANSWER_WAIT).
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
    /// module docs): each member's client id and current assignment. Waits a few seconds for
    /// the description under way, or for a new one (see [`REQUEST_TIMEOUT`]).
    pub(crate) fn describe(&self) -> Result<Described, String> {
        let mut client = self
            .client
            .lock()
            .expect("invariant: no panics under this lock");
        // Errors and logs of the client are queued for a poll that nothing else makes (never a
        // message: the client is assigned nothing).
        let _ = client.consumer.poll(Duration::ZERO);
        if let Some(u) = &client.under_way {
            if u.since.elapsed() >= self.timeouts.replace_after {
                // The new client first: if it cannot be made, the old one keeps its request
                // (and its age, so the next refresh tries again) and gets no other.
                let consumer = self.config.create_with_context(QuietContext).map_err(|e| {
                    format!("replacing the group reader's client, whose coordinator has not answered: {e}")
                })?;
                tracing::warn!(
                    waited_s = u.since.elapsed().as_secs(),
                    "the group's coordinator has not answered; replaced the group reader's client"
                );
                *client = ReaderClient {
                    under_way: None,
                    consumer,
                };
            }
        }
        if client.under_way.is_none() {
            client.under_way = Some(self.request(&client.consumer)?);
        }
        let under_way = client
            .under_way
            .as_ref()
            .expect("invariant: just made sure");
        let wait = c_int::try_from(self.timeouts.answer_wait.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: the queue is alive (owned by `under_way`, under the lock).
        let event = unsafe { rd::rd_kafka_queue_poll(under_way.queue.0, wait) };
        if event.is_null() {
            return Err(format!(
                "the group's coordinator has not answered for {} s",
                under_way.since.elapsed().as_secs()
            ));
        }
        let event = Guard(event, rd::rd_kafka_event_destroy);
        client.under_way = None;
        // SAFETY: `event` is a live DescribeConsumerGroups result event.
        unsafe { parse(event.0) }
    }

    /// Starts a description of the group, answered on the returned queue.
    fn request(&self, consumer: &BaseConsumer<QuietContext>) -> Result<UnderWay, String> {
        let rk = consumer.client().native_ptr();
        let timeout = c_int::try_from(self.timeouts.request.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: `rk` is the live handle of `consumer`. The options are destroyed after the
        // call, which copies them; the group name outlives the call that reads it.
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
            // Refused, the request would get librdkafka's default timeout: the crash again.
            if rd::rd_kafka_AdminOptions_set_request_timeout(
                options.0,
                timeout,
                errstr.as_mut_ptr(),
                errstr.len(),
            ) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                return Err(format!(
                    "setting the description's timeout: {}",
                    text(errstr.as_ptr())
                ));
            }
            let mut groups = [self.group.as_ptr()];
            rd::rd_kafka_DescribeConsumerGroups(rk, groups.as_mut_ptr(), 1, options.0, queue.0);
            Ok(UnderWay {
                queue,
                since: Instant::now(),
            })
        }
    }
}

/// The description in a DescribeConsumerGroups result event.
///
/// # Safety
/// `event` is a live event; what is read from it is copied out before it is destroyed.
unsafe fn parse(event: *mut rd::rd_kafka_event_t) -> Result<Described, String> {
    if rd::rd_kafka_event_error(event) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return Err(text(rd::rd_kafka_event_error_string(event)));
    }
    let result = rd::rd_kafka_event_DescribeConsumerGroups_result(event);
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
    use rdkafka::mocking::MockCluster;

    use super::*;

    /// A reader of group `g` on `bootstrap` that waits `answer_wait` per refresh and replaces
    /// its client after `replace_after`.
    fn reader(bootstrap: &str, answer_wait: Duration, replace_after: Duration) -> GroupReader {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap);
        let timeouts = Timeouts {
            request: REQUEST_TIMEOUT,
            replace_after,
            answer_wait,
        };
        GroupReader::with(config, "g", timeouts).expect("creating the reader")
    }

    /// The shape of librdkafka issue 4605: the coordinator is away for longer than a refresh
    /// waits, then comes back. A description that librdkafka had timed out would now abort
    /// the process; the reader's stays under way and is answered.
    #[test]
    fn a_coordinator_away_for_many_refreshes_answers_when_it_is_back() {
        let mock = MockCluster::new(1).expect("mock cluster");
        let reader = reader(
            &mock.bootstrap_servers(),
            Duration::from_millis(300),
            REPLACE_AFTER,
        );
        mock.broker_down(1).expect("broker down");
        for _ in 0..5 {
            let e = reader
                .describe()
                .expect_err("no coordinator, no description");
            assert!(e.contains("has not answered"), "{e}");
        }
        mock.broker_up(1).expect("broker up");
        let deadline = Instant::now() + Duration::from_secs(30);
        let answer = loop {
            match reader.describe() {
                Err(e) if e.contains("has not answered") && Instant::now() < deadline => {}
                other => break other,
            }
        };
        // The mock cluster knows no group "g": an answer, whatever it says.
        if let Err(e) = &answer {
            assert!(!e.contains("has not answered"), "{e}");
        }
    }

    /// A description that waits past `replace_after` gets a new client, whose description is
    /// answered once the coordinator is back.
    #[test]
    fn a_reader_waiting_too_long_replaces_its_client() {
        let mock = MockCluster::new(1).expect("mock cluster");
        let reader = reader(
            &mock.bootstrap_servers(),
            Duration::from_millis(300),
            Duration::from_secs(1),
        );
        mock.broker_down(1).expect("broker down");
        let first = reader.describe().expect_err("no coordinator");
        assert!(first.contains("has not answered"), "{first}");
        let old = reader.client.lock().unwrap().consumer.client().native_ptr() as usize;
        std::thread::sleep(Duration::from_millis(1200));
        let _ = reader.describe();
        let new = reader.client.lock().unwrap().consumer.client().native_ptr() as usize;
        assert_ne!(old, new, "the client was replaced");
        mock.broker_up(1).expect("broker up");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match reader.describe() {
                Err(e) if e.contains("has not answered") => {
                    assert!(Instant::now() < deadline, "still no answer: {e}")
                }
                _ => break,
            }
        }
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
}
