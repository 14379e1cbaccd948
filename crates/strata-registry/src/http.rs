//! The native HTTP/JSON API under `/v1/registry/`. docs/registry.md documents every route.

use crate::model::{InstanceRef, Registration, ServiceSettings};
use crate::probe::Health;
use crate::registry::{namespace, Query, Registry};
use crate::view::Change;
use axum::extract::{Path, RawQuery, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use futures::Stream;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use strata_proto::error::ApiError;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use strata_auth::{Access, Caller, Kind, Names};
use strata_http::{json_event, ApiResult, Who};
pub use strata_http::{ApiJson as Body, ErrorResponse};

/// What the registry's handlers share.
#[derive(Clone)]
pub struct RegistryState {
    /// The registry.
    pub registry: Arc<Registry>,
    /// Cancelled at shutdown; ends open watches.
    pub cancel: CancellationToken,
    /// Access control.
    pub auth: strata_auth::Auth,
}

/// Allows `who` `access` on the service `service` of namespace `ns` (`NAMESPACE/SERVICE`).
fn allow(
    s: &RegistryState,
    who: &Caller,
    access: Access,
    ns: &str,
    service: &str,
    action: &str,
) -> Result<(), ApiError> {
    let name = Names::one(format!("{ns}/{service}"));
    s.auth
        .gate
        .check(who, Kind::Registry, access, &name, action)
}

/// The native registry routes, to merge into the node's API router.
pub fn router(state: RegistryState) -> Router {
    Router::new()
        .route("/v1/registry/instances", post(register))
        .route("/v1/registry/services", get(list))
        .route("/v1/registry/services/{service}", get(query))
        .route("/v1/registry/services/{service}/settings", put(settings))
        .route("/v1/registry/services/{service}/watch", get(watch))
        .route(
            "/v1/registry/services/{service}/instances/{id}",
            axum::routing::delete(deregister),
        )
        .route(
            "/v1/registry/services/{service}/instances/{id}/heartbeat",
            put(heartbeat),
        )
        .route(
            "/v1/registry/services/{service}/instances/{id}/status",
            put(report),
        )
        .route("/v1/registry/checks/local", get(local_checks))
        .with_state(state)
}

/// Parses a query string into pairs, percent-decoded; repeated keys are kept.
pub fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn flag(value: &str) -> Result<bool, ApiError> {
    match value {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(ApiError::bad_request(format!(
            "invalid boolean {other:?}: use true or false"
        ))),
    }
}

/// Parses a duration written as Consul and Strata do ("5s", "100ms", "1m").
pub fn parse_wait(value: &str) -> Result<Duration, ApiError> {
    humantime::parse_duration(value)
        .map_err(|e| ApiError::bad_request(format!("invalid wait {value:?}: {e}")))
}

/// Parses the native query string of a discovery query.
pub fn parse_query(raw: Option<&str>) -> Result<Query, ApiError> {
    let mut q = Query::default();
    for (k, v) in query_pairs(raw) {
        match k.as_str() {
            "namespace" => q.namespace = Some(v),
            "passing" => q.passing = flag(&v)?,
            "status" => {
                q.status = Some(
                    serde_json::from_value(serde_json::Value::String(v.clone())).map_err(|_| {
                        ApiError::bad_request(format!(
                            "invalid status {v:?}: use passing, warning or critical"
                        ))
                    })?,
                )
            }
            "tag" => q.tags.push(v),
            "meta" => {
                let (mk, mv) = v.split_once(':').ok_or_else(|| {
                    ApiError::bad_request(format!("invalid meta filter {v:?}: use KEY:VALUE"))
                })?;
                q.meta.insert(mk.to_string(), mv.to_string());
            }
            "index" => {
                q.index = v
                    .parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid index {v:?}")))?
            }
            "wait" => q.wait = Some(parse_wait(&v)?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}"
                )))
            }
        }
    }
    Ok(q)
}

fn namespace_param(raw: Option<&str>) -> Result<String, ApiError> {
    let pairs = query_pairs(raw);
    let ns = pairs
        .iter()
        .find(|(k, _)| k == "namespace")
        .map(|(_, v)| v.as_str());
    namespace(ns)
}

async fn register(
    State(s): State<RegistryState>,
    Who(who): Who,
    Body(reg): Body<Registration>,
) -> ApiResult<crate::registry::Registered> {
    let ns = namespace(reg.namespace.as_deref())?;
    allow(&s, &who, Access::Write, &ns, &reg.service, "register")?;
    Ok(axum::Json(s.registry.register(reg, false).await?))
}

#[derive(Serialize)]
struct Revision {
    revision: i64,
}

async fn deregister(
    State(s): State<RegistryState>,
    Who(who): Who,
    Path((service, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Revision> {
    let ns = namespace_param(raw.as_deref())?;
    allow(&s, &who, Access::Write, &ns, &service, "deregister")?;
    let revision = s
        .registry
        .deregister(&InstanceRef::new(&ns, &service, &id))
        .await?;
    Ok(axum::Json(Revision { revision }))
}

#[derive(Serialize)]
struct Ttl {
    ttl: i64,
}

async fn heartbeat(
    State(s): State<RegistryState>,
    Who(who): Who,
    Path((service, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Ttl> {
    let ns = namespace_param(raw.as_deref())?;
    allow(&s, &who, Access::Write, &ns, &service, "heartbeat")?;
    let ttl = s
        .registry
        .heartbeat(&InstanceRef::new(&ns, &service, &id))
        .await?;
    Ok(axum::Json(Ttl { ttl }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    status: Health,
    #[serde(default)]
    output: String,
}

#[derive(Serialize)]
struct Done {
    ok: bool,
}

async fn report(
    State(s): State<RegistryState>,
    Who(who): Who,
    Path((service, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    Body(report): Body<Report>,
) -> ApiResult<Done> {
    let ns = namespace_param(raw.as_deref())?;
    allow(&s, &who, Access::Write, &ns, &service, "report")?;
    s.registry
        .report(
            &InstanceRef::new(&ns, &service, &id),
            report.status,
            report.output,
        )
        .await?;
    Ok(axum::Json(Done { ok: true }))
}

#[derive(Serialize)]
struct Services {
    index: i64,
    services: Vec<crate::view::ServiceSummary>,
}

async fn list(
    State(s): State<RegistryState>,
    Who(who): Who,
    RawQuery(raw): RawQuery,
) -> ApiResult<Services> {
    let pairs = query_pairs(raw.as_deref());
    let ns = pairs
        .iter()
        .find(|(k, _)| k == "namespace")
        .map(|(_, v)| v.clone());
    if let Some(ns) = &ns {
        crate::model::validate_namespace(ns)?;
    }
    s.registry.metrics.op("list");
    Ok(axum::Json(Services {
        index: s.registry.view.catalog_index(),
        // Services the caller may not read are left out, as Consul filters its catalog.
        services: s
            .registry
            .view
            .services(ns.as_deref())
            .into_iter()
            .filter(|summary| {
                !who.enforced()
                    || allow(
                        &s,
                        &who,
                        Access::Read,
                        &summary.namespace,
                        &summary.name,
                        "list",
                    )
                    .is_ok()
            })
            .collect(),
    }))
}

async fn query(
    State(s): State<RegistryState>,
    Who(who): Who,
    Path(service): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<crate::registry::QueryResult> {
    let q = parse_query(raw.as_deref())?;
    let ns = namespace(q.namespace.as_deref())?;
    allow(&s, &who, Access::Read, &ns, &service, "query")?;
    Ok(axum::Json(s.registry.query(&service, &q).await?))
}

async fn settings(
    State(s): State<RegistryState>,
    Who(who): Who,
    Path(service): Path<String>,
    RawQuery(raw): RawQuery,
    Body(settings): Body<ServiceSettings>,
) -> ApiResult<Revision> {
    let ns = namespace_param(raw.as_deref())?;
    allow(&s, &who, Access::Write, &ns, &service, "settings")?;
    let revision = s
        .registry
        .set_settings(Some(&ns), &service, settings)
        .await?;
    Ok(axum::Json(Revision { revision }))
}

async fn local_checks(
    State(s): State<RegistryState>,
    Who(who): Who,
) -> ApiResult<Vec<crate::checks::LocalCheck>> {
    // Every service's instances and probe output: an operator's view.
    s.auth.gate.check_root(&who, "local_checks")?;
    Ok(axum::Json(s.registry.local_checks.list()))
}

pub use strata_api::registry::WatchMessage;

async fn watch(
    State(s): State<RegistryState>,
    Who(who): Who,
    Path(service): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let ns = match namespace_param(raw.as_deref())
        .and_then(|ns| crate::model::validate_service_name(&service).map(|()| ns))
        .and_then(|ns| allow(&s, &who, Access::Read, &ns, &service, "watch").map(|()| ns))
    {
        Ok(ns) => ns,
        Err(e) => return ErrorResponse(e).into_response(),
    };
    s.registry.metrics.op("watch");
    let gate = s.auth.gate.clone();
    let name = Names::one(format!("{ns}/{service}"));
    let events = watch_stream(s, ns, service);
    let events = strata_http::guard_events(events, gate, who, move |gate, who| {
        gate.check(who, Kind::Registry, Access::Read, &name, "watch")
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Counts an open watch stream for as long as it lives.
struct SubscriberGauge(prometheus::IntGauge);

impl Drop for SubscriberGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn snapshot(s: &RegistryState, ns: &str, service: &str) -> WatchMessage {
    let (stored, index, _) = s.registry.view.service_now(ns, service);
    let instances = stored
        .into_iter()
        .map(|st| (*st.instance).clone())
        .collect();
    WatchMessage::Snapshot { index, instances }
}

fn sse(message: &WatchMessage) -> Result<SseEvent, Infallible> {
    Ok(json_event(message))
}

fn watch_stream(
    s: RegistryState,
    ns: String,
    service: String,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let mut changes = s.registry.view.subscribe();
    s.registry.metrics.subscribers.inc();
    let gauge = SubscriberGauge(s.registry.metrics.subscribers.clone());
    let tracker = s.registry.tracker.clone();
    async_stream(&tracker, move |tx| async move {
        let _gauge = gauge;
        let first = snapshot(&s, &ns, &service);
        // Changes up to the snapshot's index are in it; the feed may repeat them.
        let mut delivered = match &first {
            WatchMessage::Snapshot { index, .. } => *index,
            _ => 0,
        };
        if tx.send(sse(&first)).await.is_err() {
            return;
        }
        loop {
            let change = tokio::select! {
                () = s.cancel.cancelled() => return,
                () = tx.closed() => return,
                change = changes.recv() => change,
            };
            let event = match change {
                Ok(notice) => match &notice.change {
                    Change::Reset { .. } => {
                        let message = snapshot(&s, &ns, &service);
                        delivered = delivered.max(message_index(&message));
                        sse(&message)
                    }
                    c if c.service() != Some((ns.as_str(), service.as_str())) => continue,
                    c if change_revision(c) <= delivered => continue,
                    c => {
                        delivered = change_revision(c);
                        let data = notice.encoded.get_or_init(|| encode_change(c));
                        Ok(SseEvent::default().data(data.as_str()))
                    }
                },
                Err(RecvError::Lagged(_)) => {
                    let message = snapshot(&s, &ns, &service);
                    delivered = delivered.max(message_index(&message));
                    sse(&message)
                }
                Err(RecvError::Closed) => return,
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    })
}

fn message_index(message: &WatchMessage) -> i64 {
    match message {
        WatchMessage::Snapshot { index, .. }
        | WatchMessage::Put { index, .. }
        | WatchMessage::Delete { index, .. } => *index,
    }
}

/// A put or delete as [`WatchMessage`] JSON, without cloning the instance.
fn encode_change(change: &Change) -> String {
    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "lowercase")]
    enum Borrowed<'a> {
        Put {
            index: i64,
            instance: &'a crate::model::Instance,
        },
        Delete {
            index: i64,
            id: &'a str,
        },
    }
    let borrowed = match change {
        Change::Put { revision, instance } => Borrowed::Put {
            index: *revision,
            instance,
        },
        Change::Delete { revision, instance } => Borrowed::Delete {
            index: *revision,
            id: &instance.id,
        },
        Change::Reset { revision } => {
            return format!("{{\"type\":\"reset\",\"index\":{revision}}}")
        }
    };
    serde_json::to_string(&borrowed).unwrap_or_else(|e| format!("{{\"error\":\"encode: {e}\"}}"))
}

fn change_revision(change: &Change) -> i64 {
    match change {
        Change::Put { revision, .. }
        | Change::Delete { revision, .. }
        | Change::Reset { revision } => *revision,
    }
}

/// A stream fed by a task through a small channel.
fn async_stream<T, F, Fut>(
    tracker: &tokio_util::task::TaskTracker,
    body: F,
) -> impl Stream<Item = T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tracker.spawn(body(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
