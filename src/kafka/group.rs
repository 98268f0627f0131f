//! Reads the consumer group's description from its coordinator (ListGroups + DescribeGroups,
//! through librdkafka's `rd_kafka_list_groups`) and keeps a [`ClusterWatch`] up to date with
//! it, about once a second.
//!
//! DescribeGroups answers for classic groups: every member with its client id and, once the
//! group is stable, its assignment in the consumer protocol's `ConsumerProtocolAssignment`
//! encoding, parsed here by hand. While the group rebalances the broker sends no assignments,
//! so the view then has workers without partitions (queries answer 503 until it settles).
//! Apache Kafka does not describe consumer-protocol (KIP-848) groups this way: DescribeGroups
//! answers that such a group is not a classic group, with no members (`GroupMetadataManager
//! #describeGroups` reads the group with `classicGroup(..)`). The watch then carries a problem
//! saying so.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_util::sync::CancellationToken;

use crate::cluster::{ClusterView, ClusterWatch, GroupMember};
use crate::config::{Config, GroupProtocol};

use super::ClientError;

/// How long one description may take.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A group as DescribeGroups shows it.
#[derive(Debug, Clone)]
pub(crate) struct Described {
    /// `Stable`, `PreparingRebalance`, `CompletingRebalance`, `Empty` or `Dead`.
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

/// Why a description without members leaves the view empty under the consumer protocol.
pub(crate) const CONSUMER_PROTOCOL_PROBLEM: &str =
    "group.protocol = \"consumer\": Apache Kafka describes the members of classic groups only \
     (ListGroups/DescribeGroups list none for a KIP-848 group), so a worker answers for the keys \
     of its own tasks only; use group.protocol = \"classic\" for queries answered by any worker";

/// Describes the group every `period` and publishes the view to `watch` until `stop` fires.
pub(crate) async fn refresh(
    reader: GroupReader,
    protocol: GroupProtocol,
    watch: Arc<ClusterWatch>,
    period: Duration,
    stop: CancellationToken,
) {
    let reader = Arc::new(reader);
    loop {
        let r = reader.clone();
        match tokio::task::spawn_blocking(move || r.describe()).await {
            Ok(Ok(described)) => {
                let empty = described.members.is_empty();
                watch.publish(ClusterView::from_members(described.members));
                if empty && protocol == GroupProtocol::Consumer {
                    watch.report_problem(CONSUMER_PROTOCOL_PROBLEM);
                } else if described.state != "Stable" {
                    watch.report_problem(format!(
                        "the group is rebalancing (state {}); assignments are not known until it settles",
                        described.state
                    ));
                }
            }
            Ok(Err(e)) => watch.report_problem(format!("describing group failed: {e}")),
            Err(e) => watch.report_problem(format!("describing group panicked: {e}")),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
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
