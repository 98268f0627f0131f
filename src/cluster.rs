//! Who runs what in the consumer group, as every worker sees it: the workers (one per process,
//! named by its advertised HTTP address), their members and the partitions assigned to them.
//!
//! librdkafka has no pluggable assignor, so the workers cannot exchange anything through the
//! assignment itself. Instead each worker names its members' consumers after its HTTP address
//! (`client.id = <prefix>-<member>@<advertised>`, see [`client_id`]) and reads the group's
//! description from the broker every second (`kafka::group`), which lists every member with
//! its client id and assignment. The view this module builds from it is published through a
//! [`ClusterWatch`]; `/state` routes queries with it and `/cluster` shows it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// A group member as the broker describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// The member id the coordinator gave it.
    pub member_id: String,
    /// Its `client.id`; a worker's consumers carry the worker's address in it.
    pub client_id: String,
    /// The partitions assigned to it: (topic, partition).
    pub assignment: Vec<(String, i32)>,
}

/// One worker: a process with `app.threads` members, reached at one HTTP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerView {
    /// Its advertised HTTP address (`http.advertised`), `host:port`.
    pub address: String,
    /// The member ids of its consumers, sorted.
    pub member_ids: Vec<String>,
    /// Every partition assigned to one of its members.
    pub partitions: BTreeSet<(String, i32)>,
}

/// The group's workers, sorted by address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Workers, sorted by address.
    pub workers: Vec<WorkerView>,
    /// Members whose client id carries no HTTP address (a worker with `http.listen = "off"`,
    /// or another client in the group): their partitions have no worker to ask.
    pub unaddressed: Vec<GroupMember>,
}

impl ClusterView {
    /// Groups `members` by the address in their client id.
    pub fn from_members(members: impl IntoIterator<Item = GroupMember>) -> Self {
        let mut view = ClusterView::default();
        for m in members {
            let Some(address) = advertised_of(&m.client_id) else {
                view.unaddressed.push(m);
                continue;
            };
            let i = match view
                .workers
                .binary_search_by(|w| w.address.as_str().cmp(address))
            {
                Ok(i) => i,
                Err(i) => {
                    view.workers.insert(
                        i,
                        WorkerView {
                            address: address.to_string(),
                            member_ids: Vec::new(),
                            partitions: BTreeSet::new(),
                        },
                    );
                    i
                }
            };
            let w = &mut view.workers[i];
            w.member_ids.push(m.member_id);
            w.member_ids.sort();
            w.partitions.extend(m.assignment);
        }
        view
    }

    /// The worker whose assignment holds `topic`/`partition`, if any.
    pub fn owner(&self, topic: &str, partition: i32) -> Option<&WorkerView> {
        self.workers
            .iter()
            .find(|w| w.partitions.contains(&(topic.to_string(), partition)))
    }

    /// The worker at `address`.
    pub fn worker(&self, address: &str) -> Option<&WorkerView> {
        self.workers.iter().find(|w| w.address == address)
    }

    /// Why this view cannot tell the worker at `own`, which runs `members` members, from
    /// others: more members advertise its address than it runs. Another process then
    /// advertises the same address (the default `http.listen = "127.0.0.1:9464"` on several
    /// hosts, or a copied `http.advertised`), and its tasks look like this worker's: its keys
    /// are never forwarded to it and standbys are not placed apart from it.
    pub fn shared_address(&self, own: &str, members: usize) -> Option<String> {
        let found = self.worker(own)?.member_ids.len();
        (found > members).then(|| {
            format!(
                "{found} members of the group advertise this worker's address {own}, which runs \
                 {members}: another worker advertises the same address (set a distinct \
                 http.advertised on each), or this worker restarted and its old members have \
                 not timed out yet"
            )
        })
    }
}

/// The separator between a consumer's name and its worker's address in its client id. It may
/// not appear in an address (`http.advertised` refuses it); the name may contain it, so the id
/// is split at its last occurrence.
const ADDRESS_SEPARATOR: char = '@';

/// The `client.id` of member `member`'s consumer: `<prefix>-<member>`, followed by
/// `@<advertised>` when the worker serves HTTP. `prefix` is the app id (or the user's own
/// `client.id`), so brokers' logs and quotas still name the application and member.
pub fn client_id(prefix: &str, member: usize, advertised: Option<&str>) -> String {
    match advertised {
        Some(addr) => format!("{prefix}-{member}{ADDRESS_SEPARATOR}{addr}"),
        None => format!("{prefix}-{member}"),
    }
}

/// The worker address in a client id written by [`client_id`], if any. What follows the last
/// separator must be a `host:port` as [`check_advertised`] accepts: a user's `client.id` may
/// contain the separator too (a worker without HTTP, or another client of the group), and its
/// tail is then no address to forward queries to.
pub fn advertised_of(client_id: &str) -> Option<&str> {
    let (_, addr) = client_id.rsplit_once(ADDRESS_SEPARATOR)?;
    check_advertised(addr).is_ok().then_some(addr)
}

/// Checks an `http.advertised` value: `host:port`, as other workers will connect to it.
pub fn check_advertised(s: &str) -> Result<(), String> {
    let found = || format!("expected host:port such as \"worker-1:9464\", found {s:?}");
    if s.contains(ADDRESS_SEPARATOR) || s.contains('/') || s.chars().any(char::is_whitespace) {
        return Err(found());
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(found)?;
    let host_ok =
        !host.is_empty() && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')));
    match port.parse::<u16>() {
        Ok(p) if p > 0 && host_ok => Ok(()),
        _ => Err(found()),
    }
}

/// The latest [`ClusterView`], shared by the refresher that reads the group and the HTTP
/// handlers (and anything else that places work by who runs what).
#[derive(Debug)]
pub struct ClusterWatch {
    own: String,
    latest: Mutex<Latest>,
}

#[derive(Debug, Default)]
struct Latest {
    view: Option<Arc<ClusterView>>,
    problem: Option<String>,
}

impl ClusterWatch {
    /// A watch for the worker advertised at `own`, with no view yet.
    pub fn new(own: impl Into<String>) -> Self {
        Self {
            own: own.into(),
            latest: Mutex::default(),
        }
    }

    /// The latest view, or `None` before the group was first read.
    pub fn current(&self) -> Option<Arc<ClusterView>> {
        self.lock().view.clone()
    }

    /// This worker's advertised address (`http.advertised`).
    pub fn own_address(&self) -> &str {
        &self.own
    }

    /// Replaces the view and clears any problem.
    pub fn publish(&self, view: ClusterView) {
        let mut latest = self.lock();
        latest.view = Some(Arc::new(view));
        latest.problem = None;
    }

    /// Records why the group could not be read (or why its view is incomplete); the last view,
    /// if any, stays current.
    pub fn report_problem(&self, problem: impl Into<String>) {
        self.lock().problem = Some(problem.into());
    }

    /// Why the view may be missing or stale, if the last refresh had a problem.
    pub fn problem(&self) -> Option<String> {
        self.lock().problem.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Latest> {
        self.latest
            .lock()
            .expect("invariant: no panics under this lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, client: &str, parts: &[(&str, i32)]) -> GroupMember {
        GroupMember {
            member_id: id.into(),
            client_id: client.into(),
            assignment: parts.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
        }
    }

    #[test]
    fn client_ids_carry_the_address_and_stay_readable() {
        let id = client_id("clicks", 1, Some("10.0.0.7:9464"));
        assert_eq!(id, "clicks-1@10.0.0.7:9464");
        assert_eq!(advertised_of(&id), Some("10.0.0.7:9464"));
        // An app id may contain the separator; the address is after the last one.
        let id = client_id("a@b", 0, Some("[::1]:80"));
        assert_eq!(advertised_of(&id), Some("[::1]:80"));
        assert_eq!(client_id("clicks", 2, None), "clicks-2");
        assert_eq!(advertised_of("clicks-2"), None);
        assert_eq!(advertised_of("clicks-2@"), None);
    }

    /// A member whose client id has an '@' but no address after it (a worker with
    /// `http.listen = "off"` and a user `client.id` such as "team@billing", or another client
    /// in the group) is no worker: nothing is forwarded to "billing-0".
    #[test]
    fn an_at_sign_without_an_address_is_not_a_worker() {
        let id = client_id("team@billing", 0, None);
        assert_eq!(advertised_of(&id), None, "{id}");
        assert_eq!(advertised_of("consumer@host/path:1"), None);
        let view = ClusterView::from_members([
            member("m-a", &id, &[("in", 0)]),
            member("m-b", "app-0@h1:1", &[("in", 1)]),
        ]);
        let addrs: Vec<&str> = view.workers.iter().map(|w| w.address.as_str()).collect();
        assert_eq!(addrs, ["h1:1"]);
        assert_eq!(view.unaddressed.len(), 1);
        assert_eq!(view.owner("in", 0), None);
    }

    #[test]
    fn members_of_one_process_make_one_worker() {
        let view = ClusterView::from_members([
            member("m-b", "app-1@h2:1", &[("in", 2)]),
            member("m-c", "app-0@h1:1", &[("in", 0), ("in", 1)]),
            member("m-a", "app-0@h2:1", &[("in", 3)]),
            member("m-x", "other-client", &[("in", 4)]),
        ]);
        let addrs: Vec<&str> = view.workers.iter().map(|w| w.address.as_str()).collect();
        assert_eq!(addrs, ["h1:1", "h2:1"]);
        let h2 = view.worker("h2:1").unwrap();
        assert_eq!(h2.member_ids, ["m-a", "m-b"]);
        assert_eq!(
            h2.partitions,
            BTreeSet::from([("in".to_string(), 2), ("in".to_string(), 3)])
        );
        assert_eq!(
            view.owner("in", 1).map(|w| w.address.as_str()),
            Some("h1:1")
        );
        assert_eq!(
            view.owner("in", 4),
            None,
            "held by a member without address"
        );
        assert_eq!(view.unaddressed.len(), 1);
        assert_eq!(view.owner("other", 0), None);
    }

    #[test]
    fn an_address_advertised_by_more_members_than_its_worker_runs_is_reported() {
        let view = ClusterView::from_members([
            member("m-a", "app-0@h1:1", &[("in", 0)]),
            member("m-b", "app-0@h1:1", &[("in", 1)]),
            member("m-c", "app-0@h2:1", &[("in", 2)]),
        ]);
        let p = view.shared_address("h1:1", 1).expect("two members at h1:1");
        assert!(p.contains("2 members") && p.contains("h1:1"), "{p}");
        assert_eq!(view.shared_address("h1:1", 2), None, "two threads");
        assert_eq!(view.shared_address("h2:1", 1), None);
        assert_eq!(view.shared_address("h3:1", 1), None, "not in the group yet");
    }

    #[test]
    fn advertised_addresses_are_checked() {
        for ok in ["worker-1:9464", "10.0.0.1:1", "[::1]:9464", "a.b.c:65535"] {
            assert_eq!(check_advertised(ok), Ok(()), "{ok}");
        }
        for bad in [
            "worker-1",
            ":9464",
            "h:0",
            "h:99999",
            "h:port",
            "http://h:1",
            "h 1:2",
            "a@b:1",
            "::1:9464",
            "",
        ] {
            let err = check_advertised(bad).expect_err(bad);
            assert!(err.contains("host:port"), "{err}");
        }
    }

    #[test]
    fn the_watch_keeps_the_last_view_through_problems() {
        let watch = ClusterWatch::new("me:1");
        assert_eq!(watch.own_address(), "me:1");
        assert!(watch.current().is_none());
        watch.report_problem("broker down");
        assert_eq!(watch.problem().as_deref(), Some("broker down"));
        watch.publish(ClusterView::from_members([member("m", "a-0@me:1", &[])]));
        assert_eq!(watch.problem(), None);
        watch.report_problem("again");
        assert_eq!(watch.current().unwrap().workers[0].address, "me:1");
    }
}
