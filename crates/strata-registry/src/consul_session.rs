//! Consul's session endpoints: `PUT /v1/session/create`, `/destroy/ID`, `/renew/ID`, and
//! `GET /v1/session/info/ID`, `/list`, `/node/NODE` (the reads with blocking queries).
//! Sessions themselves are [`crate::consul_sessions`].

use crate::consul::{bad, field, index_headers, ConsulError};
use crate::consul_kv::read_options;
use crate::consul_sessions::{NewSession, ServiceCheck, StoredSession};
use crate::consul_store::{Consistency, ConsulKv};
use crate::consul_txn::Behavior;
use crate::http::query_pairs;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

type ConsulResult = Result<Response, ConsulError>;

/// Consul reads a lock delay below this many nanoseconds as seconds: clients often send 15
/// meaning 15 s.
const LOCK_DELAY_SECONDS_BELOW: u64 = 1000;

/// The session routes.
pub fn router(kv: Arc<ConsulKv>) -> Router {
    Router::new()
        .route("/v1/session/create", put(create))
        .route("/v1/session/destroy/{id}", put(destroy))
        .route("/v1/session/renew/{id}", put(renew))
        .route("/v1/session/info/{id}", get(info))
        .route("/v1/session/list", get(list))
        .route("/v1/session/node/{node}", get(for_node))
        .with_state(kv)
}

fn decode_failed(what: impl std::fmt::Display) -> ConsulError {
    bad(format!("Request decode failed: {what}"))
}

fn strings(object: &Map<String, Value>, name: &str) -> Result<Option<Vec<String>>, ConsulError> {
    match field(object, name) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| decode_failed(format!("{name} must be a list of strings")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(decode_failed(format!("{name} must be a list of strings"))),
    }
}

fn text(object: &Map<String, Value>, name: &str) -> Result<Option<String>, ConsulError> {
    match field(object, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(decode_failed(format!(
            "{name} must be a string, not {other}"
        ))),
    }
}

/// Consul's reading of `LockDelay`: a duration string or a number of nanoseconds, and in
/// either form a value under 1000 ns is taken as seconds.
fn lock_delay(value: &Value) -> Result<Duration, ConsulError> {
    let nanos = match value {
        Value::String(text) => {
            let parsed = crate::go_duration::parse(text).map_err(decode_failed)?;
            u64::try_from(parsed.as_nanos()).unwrap_or(u64::MAX)
        }
        Value::Number(number) => match number.as_u64() {
            Some(n) => n,
            None => match number.as_f64() {
                Some(f) if f >= 0.0 && f.is_finite() => f as u64,
                _ => return Err(decode_failed("LockDelay must not be negative")),
            },
        },
        other => {
            return Err(decode_failed(format!(
                "LockDelay must be a duration, not {other}"
            )))
        }
    };
    if nanos < LOCK_DELAY_SECONDS_BELOW {
        return Ok(Duration::from_secs(nanos));
    }
    Ok(Duration::from_nanos(nanos))
}

/// Parses a session create body (keys case-insensitive, as Consul decodes them; an empty
/// body takes every default).
pub fn parse_new_session(body: &[u8]) -> Result<NewSession, ConsulError> {
    let mut request = NewSession::default();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(request);
    }
    let value: Value = serde_json::from_slice(body).map_err(decode_failed)?;
    let Value::Object(object) = value else {
        return Err(decode_failed("expected a JSON object"));
    };
    request.name = text(&object, "Name")?.unwrap_or_default();
    request.node = text(&object, "Node")?.filter(|n| !n.is_empty());
    if let Some(delay) = field(&object, "LockDelay") {
        request.lock_delay = lock_delay(delay)?;
    }
    match text(&object, "Behavior")?.as_deref() {
        None | Some("") | Some("release") => request.behavior = Behavior::Release,
        Some("delete") => request.behavior = Behavior::Delete,
        Some(other) => {
            return Err(bad(format!(
                "invalid Behavior {other:?}: use \"release\" or \"delete\""
            )))
        }
    }
    if let Some(ttl) = text(&object, "TTL")?.filter(|t| !t.is_empty()) {
        let parsed = crate::go_duration::parse(&ttl)
            .map_err(|e| bad(format!("invalid session TTL {ttl:?}: {e}")))?;
        request.ttl = Some((ttl, parsed));
    }
    // `Checks` (before Consul 1.7) lists node checks and service check ids together; giving
    // it, or `NodeChecks`, replaces the default `serfHealth` (an empty list: no check).
    let legacy = strings(&object, "Checks")?;
    let node_checks = strings(&object, "NodeChecks")?;
    if legacy.is_some() || node_checks.is_some() {
        let mut nodes = node_checks.unwrap_or_default();
        for check in legacy.unwrap_or_default() {
            if check.starts_with("service:") {
                request.service_checks.push(ServiceCheck {
                    id: check,
                    namespace: String::new(),
                });
            } else if !nodes.contains(&check) {
                nodes.push(check);
            }
        }
        request.node_checks = Some(nodes);
    }
    match field(&object, "ServiceChecks") {
        None => {}
        Some(Value::Array(items)) => {
            for item in items {
                let Some(check) = item.as_object() else {
                    return Err(decode_failed("ServiceChecks must be a list of objects"));
                };
                let id = text(check, "ID")?
                    .filter(|id| !id.is_empty())
                    .ok_or_else(|| decode_failed("each of ServiceChecks needs an ID"))?;
                let namespace = text(check, "Namespace")?.unwrap_or_default();
                request.service_checks.push(ServiceCheck { id, namespace });
            }
        }
        Some(_) => return Err(decode_failed("ServiceChecks must be a list of objects")),
    }
    Ok(request)
}

#[derive(Serialize)]
struct ServiceCheckJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    #[serde(rename = "Namespace")]
    namespace: &'a str,
}

/// A session as Consul's JSON shows it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SessionJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    name: &'a str,
    node: &'a str,
    lock_delay: u64,
    behavior: &'a str,
    #[serde(rename = "TTL")]
    ttl: &'a str,
    node_checks: Option<&'a [String]>,
    service_checks: Option<Vec<ServiceCheckJson<'a>>>,
    create_index: i64,
    modify_index: i64,
}

impl<'a> SessionJson<'a> {
    fn new(stored: &'a StoredSession) -> Self {
        let session = &stored.session;
        SessionJson {
            id: &session.id,
            name: &session.name,
            node: &session.node,
            lock_delay: session.lock_delay_ns,
            behavior: session.behavior.name(),
            ttl: &session.ttl,
            node_checks: (!session.node_checks.is_empty()).then_some(&session.node_checks[..]),
            service_checks: (!session.service_checks.is_empty()).then(|| {
                session
                    .service_checks
                    .iter()
                    .map(|c| ServiceCheckJson {
                        id: &c.id,
                        namespace: &c.namespace,
                    })
                    .collect()
            }),
            create_index: stored.create_index,
            modify_index: stored.modify_index,
        }
    }
}

fn sessions_answer(index: i64, sessions: &[StoredSession]) -> Response {
    let body: Vec<SessionJson> = sessions.iter().map(SessionJson::new).collect();
    (index_headers(index), Json(body)).into_response()
}

async fn create(State(kv): State<Arc<ConsulKv>>, body: Bytes) -> ConsulResult {
    let request = parse_new_session(&body)?;
    let id = kv.create_session(request).await?;
    Ok(Json(serde_json::json!({ "ID": id })).into_response())
}

async fn destroy(State(kv): State<Arc<ConsulKv>>, Path(id): Path<String>) -> ConsulResult {
    kv.metrics.session_ops.with_label_values(&["destroy"]).inc();
    if id.is_empty() {
        return Err(bad("Missing session"));
    }
    kv.destroy_session(&id, "destroyed").await?;
    Ok(Json(true).into_response())
}

async fn renew(State(kv): State<Arc<ConsulKv>>, Path(id): Path<String>) -> ConsulResult {
    kv.metrics.session_ops.with_label_values(&["renew"]).inc();
    match kv.renew_session(&id).await? {
        Some(stored) => Ok(sessions_answer(kv.sessions.index(), &[stored])),
        None => Err(ConsulError(
            StatusCode::NOT_FOUND,
            format!("Session id '{id}' not found"),
        )),
    }
}

/// Blocks as asked, then answers with the sessions `pick` chooses from this node's view.
async fn read_sessions(
    kv: &ConsulKv,
    raw: Option<&str>,
    pick: impl Fn(&StoredSession) -> bool,
) -> ConsulResult {
    kv.metrics.session_ops.with_label_values(&["read"]).inc();
    let options = read_options(&query_pairs(raw))?;
    if options.index > 0 {
        kv.metrics.blocking.inc();
        kv.sessions.wait_index(options.index, options.wait).await;
        kv.metrics.blocking.dec();
    }
    // This node's view trails the store by a watch hop, so only a stale read is served
    // from it; the others read the store.
    let (all, index) = match options.consistency {
        Consistency::Stale => (kv.sessions.list(), kv.sessions.index()),
        Consistency::Linearizable => kv.read_sessions().await?,
    };
    let sessions: Vec<StoredSession> = all.into_iter().filter(pick).collect();
    Ok(sessions_answer(index, &sessions))
}

async fn info(
    State(kv): State<Arc<ConsulKv>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ConsulResult {
    read_sessions(&kv, raw.as_deref(), |s| s.session.id == id).await
}

async fn list(State(kv): State<Arc<ConsulKv>>, RawQuery(raw): RawQuery) -> ConsulResult {
    read_sessions(&kv, raw.as_deref(), |_| true).await
}

async fn for_node(
    State(kv): State<Arc<ConsulKv>>,
    Path(node): Path<String>,
    RawQuery(raw): RawQuery,
) -> ConsulResult {
    read_sessions(&kv, raw.as_deref(), |s| s.session.node == node).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::consul_sessions::SERF_CHECK;

    #[test]
    fn py_consul_bodies_parse() {
        let request = parse_new_session(b"").unwrap();
        assert_eq!(request.lock_delay, Duration::from_secs(15));
        assert_eq!(request.behavior, Behavior::Release);
        assert!(request.node_checks.is_none(), "serfHealth by default");
        let request = parse_new_session(
            br#"{"name":"n","lockdelay":"0.001s","behavior":"delete","ttl":"10s","checks":[]}"#,
        )
        .unwrap();
        assert_eq!(request.lock_delay, Duration::from_millis(1));
        assert_eq!(request.behavior, Behavior::Delete);
        assert_eq!(request.ttl.unwrap().1, Duration::from_secs(10));
        assert_eq!(request.node_checks, Some(vec![]));
    }

    #[test]
    fn lock_delay_numbers_below_a_microsecond_are_seconds() {
        assert_eq!(
            parse_new_session(br#"{"LockDelay":5}"#).unwrap().lock_delay,
            Duration::from_secs(5)
        );
        assert_eq!(
            parse_new_session(br#"{"LockDelay":2000000000}"#)
                .unwrap()
                .lock_delay,
            Duration::from_secs(2)
        );
    }

    #[test]
    fn legacy_checks_split_into_node_and_service_checks() {
        let request = parse_new_session(br#"{"Checks":["serfHealth","service:web-1"]}"#).unwrap();
        assert_eq!(request.node_checks, Some(vec![SERF_CHECK.to_string()]));
        assert_eq!(request.service_checks[0].id, "service:web-1");
    }

    #[test]
    fn bad_bodies_are_400s() {
        for body in [
            &b"{"[..],
            b"[]",
            br#"{"TTL":10}"#,
            br#"{"TTL":"ten"}"#,
            br#"{"Behavior":"keep"}"#,
            br#"{"LockDelay":-1}"#,
            br#"{"LockDelay":"soon"}"#,
            br#"{"Checks":"serfHealth"}"#,
            br#"{"ServiceChecks":[{"Namespace":"x"}]}"#,
        ] {
            let err = parse_new_session(body).unwrap_err();
            assert_eq!(
                err.0,
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
