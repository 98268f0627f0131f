//! `GET /state/<store>/<key>`: answered from the key's task on this worker, forwarded to the
//! worker that owns it, or 503 with a reason (see [`super::route`]). Every answer names the
//! worker that served it in the `tributary-served-by` header; the body stays the bare value.
//!
//! With `?from=<ms>&to=<ms>` (either may be left out) the store is read as a windowed store
//! (the layout of `pipeline::window::keys`): the answer lists the key's windows starting in
//! `[from, to]`, oldest first, as `[{"start": .., "end": .., "value": ..}]`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::route::{route, Local, Route};
use super::AppState;
use crate::pipeline::window::keys;
use crate::state::TaskDb;

/// The response header naming the worker (its advertised address) that answered.
pub(crate) const SERVED_BY: &str = "tributary-served-by";
/// The request header marking a query forwarded by another worker (its address): such a
/// query is answered here or refused, never forwarded again.
pub(crate) const FORWARDED_BY: &str = "tributary-forwarded-by";
/// How long a forwarded query may take.
pub(crate) const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// `?from=<ms>&to=<ms>`, read as text so that a bad value gets its own message.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Window {
    from: Option<String>,
    to: Option<String>,
}

fn json_error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

fn served_by(mut r: Response, addr: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(addr) {
        r.headers_mut().insert(SERVED_BY, v);
    }
    r
}

/// The `[from, to]` bounds of a windowed query, or `None` for a plain one.
fn bounds(w: &Window) -> Result<Option<(i64, i64)>, String> {
    let parse = |name: &str, v: &Option<String>, default: i64| match v {
        None => Ok(default),
        Some(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("{name}: expected epoch milliseconds (an integer), found {s:?}")),
    };
    if w.from.is_none() && w.to.is_none() {
        return Ok(None);
    }
    let from = parse("from", &w.from, i64::MIN)?;
    let to = parse("to", &w.to, i64::MAX)?;
    if from > to {
        return Err(format!("from ({from}) is after to ({to})"));
    }
    Ok(Some((from, to)))
}

/// `GET /state/<store>/<key>[?from=<ms>&to=<ms>]`.
pub(crate) async fn state_value(
    State(s): State<AppState>,
    Path((store, key)): Path<(String, String)>,
    Query(window): Query<Window>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let own = s.cluster.watch.own_address().to_string();
    let bounds = match bounds(&window) {
        Ok(b) => b,
        Err(e) => return served_by(json_error(StatusCode::BAD_REQUEST, e), &own),
    };
    let Some(keys) = s.cluster.keys.get() else {
        let reason = s
            .status
            .not_ready()
            .map_or_else(|| "the worker is starting".to_string(), |n| n.reason);
        return served_by(json_error(StatusCode::SERVICE_UNAVAILABLE, reason), &own);
    };
    if keys.unkeyed(&store) {
        // Its keys (a dedup step's ids) are not the records' keys: the task holding one is
        // the task of a record key nobody asked about, so any task's answer may be wrong.
        return served_by(
            json_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "store {store:?} is keyed by a dedup step's key expression, not by the \
                     records' keys, so a key cannot be routed to the task holding it"
                ),
            ),
            &own,
        );
    }
    let Some(at) = keys.locate(&store, key.as_bytes()) else {
        return served_by(
            json_error(
                StatusCode::NOT_FOUND,
                format!("no topology has a store named {store:?}"),
            ),
            &own,
        );
    };
    let local = Local::from_status(s.status.active_task(at.task));
    let view = s.cluster.watch.current();
    let problem = s.cluster.watch.problem();
    let forwarded = headers.contains_key(FORWARDED_BY);
    match route(
        &at,
        local,
        view.as_deref(),
        &own,
        forwarded,
        problem.as_deref(),
    ) {
        Route::Here(db) => {
            let answer =
                tokio::task::spawn_blocking(move || answer(&db, &store, key.as_bytes(), bounds))
                    .await
                    .unwrap_or_else(|e| {
                        json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                    });
            served_by(answer, &own)
        }
        Route::Unavailable(reason) => served_by(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "error": reason, "task": at.task.to_string() })),
            )
                .into_response(),
            &own,
        ),
        Route::Forward(addr) => {
            let path = uri
                .path_and_query()
                .map_or_else(|| uri.path().to_string(), |pq| pq.as_str().to_string());
            forward(&s, addr, path, own).await
        }
    }
}

/// Reads the answer from a task's database.
fn answer(db: &TaskDb, store: &str, key: &[u8], bounds: Option<(i64, i64)>) -> Response {
    let Some(index) = db.store_index(store) else {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("the task has no store named {store:?}"),
        );
    };
    let internal =
        |e: crate::state::StateError| json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let Some((from, to)) = bounds else {
        return match db.get(index, key) {
            Ok(Some(bytes)) => {
                ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
            }
            Ok(None) => {
                let windowed = db
                    .scan(index, &keys::prefix(key), Some(&after_windows(key)))
                    .is_ok_and(|e| !e.is_empty());
                let hint = if windowed {
                    " (it has windows: add ?from=<ms>&to=<ms>)"
                } else {
                    ""
                };
                json_error(
                    StatusCode::NOT_FOUND,
                    format!(
                        "key {:?} not found in store {store:?}{hint}",
                        String::from_utf8_lossy(key)
                    ),
                )
            }
            Err(e) => internal(e),
        };
    };
    // `to` is inclusive: scan up to the next start after it.
    let end = match to.checked_add(1) {
        Some(next) => keys::entry(key, next),
        None => after_windows(key),
    };
    match db.scan(index, &keys::entry(key, from), Some(&end)) {
        Ok(entries) => Json(windows(key, entries)).into_response(),
        Err(e) => internal(e),
    }
}

/// A store key after every window entry of `key`.
fn after_windows(key: &[u8]) -> Vec<u8> {
    let mut after = keys::prefix(key);
    after.extend([0xff; 9]);
    after
}

/// The windows of `key` among `entries`, as JSON.
fn windows(key: &[u8], entries: crate::state::Entries) -> Vec<serde_json::Value> {
    entries
        .into_iter()
        .filter_map(|(k, v)| {
            let (entry_key, start) = keys::split(&k)?;
            if entry_key != key {
                return None;
            }
            let value: serde_json::Value = serde_json::from_slice(&v)
                .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&v).into()));
            let end = value.get("window_end").cloned().unwrap_or_default();
            Some(serde_json::json!({ "start": start, "end": end, "value": value }))
        })
        .collect()
}

/// Requests to other workers (forwarded queries, `/cluster`'s fetches) under way at most at
/// once. Each holds a blocking thread for up to [`FORWARD_TIMEOUT`]: without a bound, queries
/// for the keys of a hung worker would take every thread of the pool that local reads and the
/// group reader also need.
pub(crate) const MAX_OUTBOUND: usize = 64;

impl Cluster {
    /// A permit to call another worker, or `None` when [`MAX_OUTBOUND`] calls are under way
    /// ([`busy`] is the answer then).
    pub(crate) fn outbound(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.outbound.clone().try_acquire_owned().ok()
    }
}

/// The 503 answered when [`MAX_OUTBOUND`] calls to other workers are under way.
fn busy() -> Response {
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{MAX_OUTBOUND} requests to other workers are under way (one may not answer); try again"),
    )
}

/// Forwards the query (`path`, with its query string) to the worker at `addr`, passing its
/// status, body and `tributary-served-by` through.
async fn forward(s: &AppState, addr: String, path: String, own: String) -> Response {
    let Some(permit) = s.cluster.outbound() else {
        return served_by(busy(), &own);
    };
    let agent = s.cluster.agent.clone();
    let url = format!("http://{addr}{path}");
    let from = own.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut resp = agent.get(&url).header(FORWARDED_BY, &from).call()?;
        let status = resp.status();
        let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
        let by = resp.headers().get(SERVED_BY).cloned();
        let body = resp.body_mut().read_to_vec()?;
        drop(permit);
        Ok::<_, ureq::Error>((status, content_type, by, body))
    })
    .await;
    match result {
        Ok(Ok((status, content_type, by, body))) => {
            let mut r = (status, body).into_response();
            if let Some(ct) = content_type {
                r.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            let by = by.unwrap_or_else(|| {
                HeaderValue::from_str(&addr).unwrap_or(HeaderValue::from_static("unknown"))
            });
            r.headers_mut().insert(SERVED_BY, by);
            r
        }
        Ok(Err(e)) => served_by(
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("forwarding to {addr}, which owns the key, failed: {e}"),
            ),
            &own,
        ),
        Err(e) => served_by(
            json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            &own,
        ),
    }
}

/// The HTTP client forwarding queries and fetching other workers' `/tasks`: statuses are
/// answers to pass on, not errors.
pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(FORWARD_TIMEOUT))
            .build(),
    )
}

/// The shared handle the handlers need for routing, built by the worker.
#[derive(Debug)]
pub(crate) struct Cluster {
    /// The group's view and this worker's address.
    pub watch: Arc<crate::cluster::ClusterWatch>,
    /// Store keys to tasks; set once the worker knows its topics' partition counts (until
    /// then, queries answer 503).
    pub keys: std::sync::OnceLock<super::route::KeyRouter>,
    /// Forwards queries.
    pub agent: ureq::Agent,
    /// The group (`app.id`).
    pub group: String,
    /// Bounds the requests to other workers under way (see [`MAX_OUTBOUND`]).
    pub outbound: Arc<tokio::sync::Semaphore>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls to other workers are bounded: past [`MAX_OUTBOUND`] under way, a query answers
    /// 503 at once instead of taking another blocking thread.
    #[test]
    fn calls_to_other_workers_are_bounded() {
        let cluster = Cluster {
            watch: Arc::new(crate::cluster::ClusterWatch::new("a:1")),
            keys: Default::default(),
            agent: agent(),
            group: "g".into(),
            outbound: Arc::new(tokio::sync::Semaphore::new(MAX_OUTBOUND)),
        };
        let held: Vec<_> = (0..MAX_OUTBOUND)
            .map(|_| cluster.outbound().expect("a permit"))
            .collect();
        assert!(cluster.outbound().is_none(), "all taken");
        assert_eq!(busy().status(), StatusCode::SERVICE_UNAVAILABLE);
        drop(held);
        assert!(cluster.outbound().is_some());
    }

    async fn body(r: Response) -> (StatusCode, serde_json::Value) {
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    /// A windowed store lists a key's windows starting in `[from, to]`; a plain read of a
    /// windowed key says how to ask; a plain store answers the bare value.
    #[tokio::test]
    async fn windows_of_a_key_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let db = TaskDb::open(
            dir.path(),
            &["w".to_string(), "plain".to_string()],
            &crate::state::RocksMemory::default(),
        )
        .unwrap();
        let mut batch = db.batch();
        let agg = |start: i64, count: i64| {
            serde_json::json!({ "window_start": start, "window_end": start + 60_000, "count": count })
                .to_string()
        };
        for (key, start, count) in [
            ("user-1", -60_000, 1),
            ("user-1", 0, 2),
            ("user-1", 60_000, 3),
            ("user-1", 120_000, 4),
            ("user-10", 60_000, 9),
        ] {
            db.batch_put(
                &mut batch,
                0,
                &keys::entry(key.as_bytes(), start),
                agg(start, count).as_bytes(),
            );
        }
        db.batch_put(&mut batch, 1, b"user-1", br#"{"count":7}"#);
        db.write(batch).unwrap();

        let (status, list) = body(answer(&db, "w", b"user-1", Some((0, 60_000)))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            list,
            serde_json::json!([
                { "start": 0, "end": 60_000, "value": { "window_start": 0, "window_end": 60_000, "count": 2 } },
                { "start": 60_000, "end": 120_000, "value": { "window_start": 60_000, "window_end": 120_000, "count": 3 } },
            ])
        );
        let (_, all) = body(answer(&db, "w", b"user-1", Some((i64::MIN, i64::MAX)))).await;
        let starts: Vec<i64> = all
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["start"].as_i64().unwrap())
            .collect();
        assert_eq!(starts, [-60_000, 0, 60_000, 120_000]);
        let (_, none) = body(answer(&db, "w", b"user-2", Some((0, 1)))).await;
        assert_eq!(none, serde_json::json!([]));

        let (status, err) = body(answer(&db, "w", b"user-1", None)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            err["error"]
                .as_str()
                .unwrap()
                .contains("?from=<ms>&to=<ms>"),
            "{err}"
        );
        let (status, value) = body(answer(&db, "plain", b"user-1", None)).await;
        assert_eq!(
            (status, value),
            (StatusCode::OK, serde_json::json!({ "count": 7 }))
        );
        let (status, err) = body(answer(&db, "plain", b"user-2", None)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(!err["error"].as_str().unwrap().contains("from"), "{err}");
    }

    #[test]
    fn window_bounds_are_checked() {
        let w = |from: Option<&str>, to: Option<&str>| Window {
            from: from.map(Into::into),
            to: to.map(Into::into),
        };
        assert_eq!(bounds(&w(None, None)), Ok(None));
        assert_eq!(bounds(&w(Some("5"), Some("9"))), Ok(Some((5, 9))));
        assert_eq!(bounds(&w(Some("5"), None)), Ok(Some((5, i64::MAX))));
        assert_eq!(bounds(&w(None, Some("-3"))), Ok(Some((i64::MIN, -3))));
        let e = bounds(&w(Some("x"), None)).unwrap_err();
        assert!(e.starts_with("from: expected epoch milliseconds"), "{e}");
        let e = bounds(&w(Some("9"), Some("5"))).unwrap_err();
        assert!(e.contains("after"), "{e}");
    }
}
