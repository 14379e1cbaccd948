//! A Consul-compatible HTTP API: the subset Consul's client libraries and Prometheus's Consul
//! service discovery use. It serves the default namespace, as one datacenter (`dc1`) whose
//! "agent" is the whole cluster: any node answers for every service.
//!
//! Differences from Consul, on purpose: a service has at most one check; registration
//! replaces an instance with the same id (as Consul's agent does) and keeps its status when
//! the check is unchanged; errors are plain text, as Consul's are.

use crate::http::{parse_wait, query_pairs};
use crate::model::{Check, CheckKind, Instance, Registration, DEFAULT_NAMESPACE};
use crate::probe::{Health, Probe};
use crate::registry::{Query, Registry};
use axum::body::Bytes;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put, MethodRouter};
use axum::Router;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use strata_api::units::HumanDuration;
use strata_auth::{Access, Auth, Caller, Kind, Names};
use strata_http::Who;
use strata_proto::error::{ApiError, ErrorCode};

/// The one datacenter the cluster is to Consul clients.
pub(crate) const DATACENTER: &str = "dc1";

/// The Consul-compatible router, served on its own listener, behind the access gate with
/// Consul's token conventions: the agent, catalog and health endpoints here, the ACL
/// endpoints ([`crate::consul_acl`]), KV and transactions ([`crate::consul_kv`]), sessions
/// ([`crate::consul_session`]) and the cluster's nodes ([`crate::consul_nodes`]).
pub fn router(
    registry: Arc<Registry>,
    kv: Arc<crate::consul_store::ConsulKv>,
    auth: Auth,
) -> Router {
    let gate = strata_http::GateLayer {
        auth: auth.clone(),
        api: "consul",
        token_of: consul_token,
        open: |path| {
            path.starts_with("/v1/status/")
                || path == "/v1/acl/bootstrap"
                || path == "/v1/acl/token/self"
        },
        reject: |e| {
            let message = if e.message.contains("required") {
                DENIED_ANONYMOUS.to_string()
            } else {
                "ACL not found".to_string()
            };
            (StatusCode::FORBIDDEN, message).into_response()
        },
    };
    Router::new()
        .route("/v1/agent/service/register", put(register))
        .route("/v1/agent/service/deregister/{id}", put(deregister))
        .route("/v1/agent/check/pass/{id}", report_route(Health::Passing))
        .route("/v1/agent/check/warn/{id}", report_route(Health::Warning))
        .route("/v1/agent/check/fail/{id}", report_route(Health::Critical))
        .route("/v1/agent/check/update/{id}", put(update))
        .route("/v1/agent/services", get(agent_services))
        .route("/v1/agent/self", get(agent_self))
        .route("/v1/catalog/services", get(catalog_services))
        .route("/v1/catalog/service/{name}", get(catalog_service))
        .route("/v1/health/service/{name}", get(health_service))
        .route("/v1/status/leader", get(status_leader))
        .route("/v1/status/peers", get(status_peers))
        .with_state(registry.clone())
        .merge(crate::consul_acl::router(auth.clone()))
        .merge(crate::consul_kv::router(kv.clone()))
        .merge(crate::consul_session::router(kv))
        .merge(crate::consul_nodes::router(registry))
        .layer(Extension(auth))
        .layer(axum::middleware::from_fn_with_state(
            gate,
            strata_http::authenticate,
        ))
}

/// Consul's answer to a request without a token, when access control is on.
const DENIED_ANONYMOUS: &str = "Permission denied: anonymous token lacks permission. The anonymous token is used implicitly when a request does not specify a token.";

/// The token of a request, in Consul's order: `?token=`, `X-Consul-Token`, then
/// `Authorization: Bearer`.
pub fn consul_token(parts: &http::request::Parts) -> Option<String> {
    let from_query = query_pairs(parts.uri.query())
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v);
    from_query
        .or_else(|| {
            parts
                .headers
                .get("x-consul-token")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_string())
        })
        .or_else(|| strata_http::bearer_token(parts))
        .filter(|t| !t.is_empty())
}

/// Registry names as permissions see them: `NAMESPACE/SERVICE`.
fn service_names(service: &str) -> Names {
    Names::one(format!("{DEFAULT_NAMESPACE}/{service}"))
}

/// Allows `who` to read or write the service `service`, or answers as Consul does.
fn allow(auth: &Auth, who: &Caller, access: Access, service: &str) -> Result<(), ConsulError> {
    let action = match access {
        Access::Read => "service:read",
        _ => "service:write",
    };
    auth.gate
        .check(who, Kind::Registry, access, &service_names(service), action)
        .map_err(|_| {
            ConsulError(
                StatusCode::FORBIDDEN,
                format!(
                    "Permission denied: {} lacks permission '{action}' on {service:?}",
                    who.who()
                ),
            )
        })
}

/// True when `who` may read the service (listings leave out the others, as Consul filters).
fn may_read(auth: &Auth, who: &Caller, service: &str) -> bool {
    !who.enforced()
        || auth
            .gate
            .check(
                who,
                Kind::Registry,
                Access::Read,
                &service_names(service),
                "service:read",
            )
            .is_ok()
}

/// A Consul-style error: a status and a plain-text message.
#[derive(Debug)]
pub struct ConsulError(pub StatusCode, pub String);

impl From<ApiError> for ConsulError {
    fn from(e: ApiError) -> Self {
        let status = match e.code {
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::BadRequest | ErrorCode::AlreadyExists | ErrorCode::FailedPrecondition => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PermissionDenied | ErrorCode::Unauthenticated => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ConsulError(status, e.message)
    }
}

impl IntoResponse for ConsulError {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

pub(crate) fn bad(message: impl Into<String>) -> ConsulError {
    ConsulError(StatusCode::BAD_REQUEST, message.into())
}

type ConsulResult = Result<Response, ConsulError>;

/// Looks a key up case-insensitively, as Consul decodes its JSON.
pub(crate) fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

fn string(object: &Map<String, Value>, name: &str) -> Result<Option<String>, ConsulError> {
    match field(object, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(bad(format!("{name} must be a string, got {other}"))),
    }
}

fn duration(object: &Map<String, Value>, name: &str) -> Result<Option<HumanDuration>, ConsulError> {
    match string(object, name)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => parse_wait(&s).map(|d| Some(HumanDuration(d))).map_err(|_| {
            bad(format!(
                "invalid {name} {s:?}: use a duration such as \"10s\""
            ))
        }),
    }
}

fn count(object: &Map<String, Value>, name: &str) -> Result<u32, ConsulError> {
    match field(object, name) {
        None => Ok(0),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad(format!("{name} must be a non-negative integer"))),
    }
}

fn parse_check(check: &Map<String, Value>) -> Result<(Check, Option<Health>), ConsulError> {
    let kind = if let Some(ttl) = duration(check, "TTL")? {
        CheckKind::Ttl { ttl }
    } else if let Some(url) = string(check, "HTTP")? {
        let method = string(check, "Method")?.unwrap_or_else(|| "GET".into());
        let mut headers = BTreeMap::new();
        if let Some(Value::Object(h)) = field(check, "Header") {
            for (k, v) in h {
                let value = match v {
                    Value::Array(values) => values.first().and_then(Value::as_str),
                    Value::String(s) => Some(s.as_str()),
                    _ => None,
                };
                if let Some(value) = value {
                    headers.insert(k.clone(), value.to_string());
                }
            }
        }
        CheckKind::Probe {
            probe: Probe::Http {
                url,
                method,
                headers,
            },
        }
    } else if let Some(addr) = string(check, "TCP")? {
        CheckKind::Probe {
            probe: Probe::Tcp { addr },
        }
    } else if let Some(target) = string(check, "GRPC")? {
        let (addr, service) = match target.split_once('/') {
            Some((addr, service)) => (addr.to_string(), service.to_string()),
            None => (target, String::new()),
        };
        CheckKind::Probe {
            probe: Probe::Grpc { addr, service },
        }
    } else {
        return Err(bad(
            "unsupported check: give one of TTL, HTTP, TCP or GRPC (script and docker checks are not supported)",
        ));
    };
    let status = match string(check, "Status")?.as_deref() {
        None | Some("") => None,
        Some("passing") => Some(Health::Passing),
        Some("warning") => Some(Health::Warning),
        Some("critical") => Some(Health::Critical),
        Some(other) => return Err(bad(format!("invalid check status {other:?}"))),
    };
    let mut parsed = Check {
        kind,
        interval: HumanDuration::from_millis(10_000),
        timeout: HumanDuration::from_millis(10_000),
        success_before_passing: count(check, "SuccessBeforePassing")?,
        failures_before_critical: count(check, "FailuresBeforeCritical")?,
        deregister_critical_after: duration(check, "DeregisterCriticalServiceAfter")?,
    };
    if let Some(interval) = duration(check, "Interval")? {
        parsed.interval = interval;
    }
    if let Some(timeout) = duration(check, "Timeout")? {
        parsed.timeout = timeout;
    }
    Ok((parsed, status))
}

/// Turns a Consul service definition into a registration.
pub fn parse_registration(body: &[u8]) -> Result<Registration, ConsulError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("request decode failed: {e}")))?;
    let Value::Object(service) = value else {
        return Err(bad("request decode failed: expected a JSON object"));
    };
    let name = string(&service, "Name")?.ok_or_else(|| bad("Missing service name"))?;
    let id = string(&service, "ID")?
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| name.clone());
    let address = string(&service, "Address")?
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "127.0.0.1".to_string());
    let port = match field(&service, "Port") {
        None => 0,
        Some(v) => v
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| bad("Port must be an integer"))?,
    };
    let tags = match field(&service, "Tags") {
        None => Vec::new(),
        Some(Value::Array(tags)) => tags
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad("Tags must be strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("Tags must be a list of strings")),
    };
    let meta = match field(&service, "Meta") {
        None => BTreeMap::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|v| (k.clone(), v.to_string()))
                    .ok_or_else(|| bad("Meta values must be strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("Meta must be an object of strings")),
    };
    let weight = field(&service, "Weights")
        .and_then(Value::as_object)
        .and_then(|w| field(w, "Passing"))
        .and_then(Value::as_f64);
    let mut checks: Vec<&Map<String, Value>> = Vec::new();
    if let Some(Value::Object(c)) = field(&service, "Check") {
        checks.push(c);
    }
    if let Some(Value::Array(list)) = field(&service, "Checks") {
        for c in list {
            checks.push(c.as_object().ok_or_else(|| bad("Checks must be objects"))?);
        }
    }
    if checks.len() > 1 {
        return Err(bad("Strata supports one check per service instance"));
    }
    let (check, status) = match checks.first() {
        Some(c) => {
            let (check, status) = parse_check(c)?;
            (Some(check), status)
        }
        None => (None, None),
    };
    Ok(Registration {
        namespace: None,
        service: name,
        id,
        address,
        port,
        tags,
        meta,
        weight,
        enabled: None,
        ttl: None,
        check,
        status,
    })
}

fn ok() -> Response {
    StatusCode::OK.into_response()
}

async fn register(
    State(r): State<Arc<Registry>>,
    Who(who): Who,
    Extension(auth): Extension<Auth>,
    body: Bytes,
) -> ConsulResult {
    let registration = parse_registration(&body)?;
    allow(&auth, &who, Access::Write, &registration.service)?;
    r.register(registration, true).await?;
    Ok(ok())
}

fn find(r: &Registry, id: &str) -> Result<Vec<crate::view::Stored>, ConsulError> {
    let found = r.view.find_by_id(DEFAULT_NAMESPACE, id);
    if found.is_empty() {
        return Err(ConsulError(
            StatusCode::NOT_FOUND,
            format!("Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."),
        ));
    }
    Ok(found)
}

async fn deregister(
    State(r): State<Arc<Registry>>,
    Who(who): Who,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> ConsulResult {
    let found = find(&r, &id)?;
    for stored in &found {
        allow(&auth, &who, Access::Write, &stored.instance.service)?;
    }
    for stored in found {
        r.deregister(&stored.instance.reference()).await?;
    }
    Ok(ok())
}

async fn report(
    r: &Registry,
    (who, auth): (&Caller, &Auth),
    check_id: &str,
    health: Health,
    output: String,
) -> ConsulResult {
    let id = check_id.strip_prefix("service:").unwrap_or(check_id);
    let found = find(r, id).map_err(|_| {
        ConsulError(
            StatusCode::NOT_FOUND,
            format!("Unknown check ID {check_id:?}"),
        )
    })?;
    for stored in &found {
        allow(auth, who, Access::Write, &stored.instance.service)?;
    }
    for stored in found {
        r.report(&stored.instance.reference(), health, output.clone())
            .await?;
    }
    Ok(ok())
}

fn note(raw: Option<&str>) -> String {
    query_pairs(raw)
        .into_iter()
        .find(|(k, _)| k == "note")
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// `PUT /v1/agent/check/{pass,warn,fail}/{id}?note=...`: reports `health`, with the note as
/// the check's output.
fn report_route(health: Health) -> MethodRouter<Arc<Registry>> {
    put(move |registry, who, auth, id, query| {
        report_with_note(registry, who, auth, id, query, health)
    })
}

async fn report_with_note(
    State(r): State<Arc<Registry>>,
    Who(who): Who,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    health: Health,
) -> ConsulResult {
    report(&r, (&who, &auth), &id, health, note(q.as_deref())).await
}

async fn update(
    State(r): State<Arc<Registry>>,
    Who(who): Who,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    body: Bytes,
) -> ConsulResult {
    let value: Value =
        serde_json::from_slice(&body).map_err(|e| bad(format!("request decode failed: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| bad("request decode failed: expected an object"))?;
    let health = match string(object, "Status")?.as_deref() {
        Some("passing") => Health::Passing,
        Some("warning") => Health::Warning,
        Some("critical") => Health::Critical,
        other => return Err(bad(format!("invalid Status {other:?}"))),
    };
    let output = string(object, "Output")?.unwrap_or_default();
    report(&r, (&who, &auth), &id, health, output).await
}

/// Query parameters shared by the catalog and health endpoints.
struct Params {
    index: i64,
    wait: Duration,
    passing: bool,
    tags: Vec<String>,
}

fn params(raw: Option<&str>) -> Result<Params, ConsulError> {
    let mut p = Params {
        index: 0,
        wait: Duration::from_secs(300),
        passing: false,
        tags: Vec::new(),
    };
    for (k, v) in query_pairs(raw) {
        match k.as_str() {
            "index" => p.index = v.parse().map_err(|_| bad(format!("invalid index {v:?}")))?,
            "wait" => p.wait = parse_wait(&v)?.min(crate::registry::MAX_WAIT),
            "passing" => p.passing = !matches!(v.as_str(), "false" | "0"),
            "tag" => p.tags.push(v),
            // Accepted and ignored: consistency modes, datacenter, filters we do not implement.
            _ => {}
        }
    }
    Ok(p)
}

/// Consul's headers of a read: `X-Consul-Index` (never 0, which clients take for "no
/// index"), `X-Consul-KnownLeader` and `X-Consul-LastContact`.
pub(crate) fn index_headers(index: i64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("X-Consul-Index", HeaderValue::from(index.max(1)));
    headers.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
    headers.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
    headers
}

fn with_index(index: i64, body: Value) -> Response {
    (index_headers(index), axum::Json(body)).into_response()
}

fn node_name(r: &Registry) -> String {
    crate::consul_store::node_name(r.store.node_id())
}

fn weights(i: &Instance) -> Value {
    let w = i.weight.round().max(1.0) as u64;
    json!({"Passing": w, "Warning": 1})
}

fn check_json(r: &Registry, i: &Instance) -> Value {
    let kind = match i.check.as_ref().map(|c| &c.kind) {
        Some(CheckKind::Ttl { .. }) => "ttl",
        Some(CheckKind::Probe {
            probe: Probe::Http { .. },
        }) => "http",
        Some(CheckKind::Probe {
            probe: Probe::Tcp { .. },
        }) => "tcp",
        Some(CheckKind::Probe {
            probe: Probe::Grpc { .. },
        }) => "grpc",
        None if i.ephemeral => "ttl",
        None => "",
    };
    json!({
        "Node": node_name(r),
        "CheckID": format!("service:{}", i.id),
        "Name": format!("Service '{}' check", i.service),
        "Status": i.status,
        "Notes": "",
        "Output": i.output,
        "ServiceID": i.id,
        "ServiceName": i.service,
        "ServiceTags": i.tags,
        "Type": kind,
        "CreateIndex": 1,
        "ModifyIndex": 1,
    })
}

fn service_json(i: &Instance) -> Value {
    json!({
        "ID": i.id,
        "Service": i.service,
        "Tags": i.tags,
        "Address": i.address,
        "Meta": i.meta,
        "Port": i.port,
        "Weights": weights(i),
        "EnableTagOverride": false,
        "Datacenter": DATACENTER,
    })
}

async fn query(
    r: &Registry,
    name: &str,
    p: &Params,
) -> Result<(i64, Vec<Arc<Instance>>), ConsulError> {
    let result = r
        .query(
            name,
            &Query {
                namespace: None,
                passing: p.passing,
                tags: p.tags.clone(),
                index: p.index,
                wait: Some(p.wait),
                ..Query::default()
            },
        )
        .await;
    match result {
        Ok(result) => Ok((result.index, result.instances)),
        // Consul answers an empty list for names it cannot have.
        Err(e) if e.code == ErrorCode::BadRequest => Ok((r.view.catalog_index(), Vec::new())),
        Err(e) => Err(e.into()),
    }
}

/// Answers a catalog or health query for the service `name`: each instance as `entry` shows
/// it on this node, under the query's index.
async fn instance_entries(
    r: &Registry,
    name: &str,
    p: &Params,
    entry: impl Fn(&str, &Instance) -> Value,
) -> ConsulResult {
    let (index, instances) = query(r, name, p).await?;
    let node = node_name(r);
    let entries: Vec<Value> = instances.iter().map(|i| entry(&node, i)).collect();
    Ok(with_index(index, Value::Array(entries)))
}

async fn health_service(
    State(r): State<Arc<Registry>>,
    Who(who): Who,
    Extension(auth): Extension<Auth>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ConsulResult {
    allow(&auth, &who, Access::Read, &name)?;
    let p = params(raw.as_deref())?;
    instance_entries(&r, &name, &p, |node, i| {
        json!({
            "Node": {"ID": "", "Node": node, "Address": i.address, "Datacenter": DATACENTER,
                     "TaggedAddresses": {}, "Meta": {}},
            "Service": service_json(i),
            "Checks": [check_json(&r, i)],
        })
    })
    .await
}

async fn catalog_service(
    State(r): State<Arc<Registry>>,
    Who(who): Who,
    Extension(auth): Extension<Auth>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ConsulResult {
    allow(&auth, &who, Access::Read, &name)?;
    let mut p = params(raw.as_deref())?;
    p.passing = false;
    instance_entries(&r, &name, &p, |node, i| {
        json!({
            "ID": "", "Node": node, "Address": i.address, "Datacenter": DATACENTER,
            "TaggedAddresses": {}, "NodeMeta": {},
            "ServiceID": i.id, "ServiceName": i.service, "ServiceAddress": i.address,
            "ServicePort": i.port, "ServiceTags": i.tags, "ServiceMeta": i.meta,
            "ServiceWeights": weights(i), "ServiceEnableTagOverride": false,
            "CreateIndex": 1, "ModifyIndex": 1,
        })
    })
    .await
}

async fn catalog_services(
    State(r): State<Arc<Registry>>,
    Who(who): Who,
    Extension(auth): Extension<Auth>,
    RawQuery(raw): RawQuery,
) -> ConsulResult {
    let p = params(raw.as_deref())?;
    if p.index > 0 {
        r.view.wait_for(p.index.saturating_add(1), p.wait).await;
    }
    let services: Map<String, Value> = r
        .view
        .services(Some(DEFAULT_NAMESPACE))
        .into_iter()
        .filter(|s| may_read(&auth, &who, &s.name))
        .map(|s| (s.name, json!(s.tags)))
        .collect();
    Ok(with_index(r.view.catalog_index(), Value::Object(services)))
}

async fn agent_services(
    State(r): State<Arc<Registry>>,
    Who(who): Who,
    Extension(auth): Extension<Auth>,
) -> ConsulResult {
    let mut out = Map::new();
    for summary in r.view.services(Some(DEFAULT_NAMESPACE)) {
        if !may_read(&auth, &who, &summary.name) {
            continue;
        }
        if let Some((stored, _, _)) = r.view.service(DEFAULT_NAMESPACE, &summary.name) {
            for s in stored {
                out.insert(s.instance.id.clone(), service_json(&s.instance));
            }
        }
    }
    Ok(axum::Json(Value::Object(out)).into_response())
}

async fn agent_self(State(r): State<Arc<Registry>>) -> ConsulResult {
    let status = r.store.status();
    let me = status.members.iter().find(|m| m.id == status.node_id);
    let addr = me.map(|m| m.raft_addr.clone()).unwrap_or_default();
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr.as_str(), "0"));
    Ok(axum::Json(json!({
        "Config": {
            "Datacenter": DATACENTER,
            "PrimaryDatacenter": DATACENTER,
            "NodeName": node_name(&r),
            "NodeID": crate::consul_store::node_uuid(status.node_id),
            "Server": true,
            "Version": env!("CARGO_PKG_VERSION"),
            "Revision": "strata",
        },
        "Member": {
            "Name": node_name(&r),
            "Addr": host,
            "Port": port.parse::<u16>().unwrap_or(0),
            "Tags": {"role": "consul", "dc": DATACENTER},
            "Status": 1,
        },
        "Meta": {},
    }))
    .into_response())
}

async fn status_leader(State(r): State<Arc<Registry>>) -> ConsulResult {
    let status = r.store.status();
    let leader = status
        .leader
        .and_then(|id| status.members.iter().find(|m| m.id == id))
        .map(|m| m.raft_addr.clone())
        .unwrap_or_default();
    Ok(axum::Json(Value::String(leader)).into_response())
}

async fn status_peers(State(r): State<Arc<Registry>>) -> ConsulResult {
    let peers: Vec<String> = r
        .store
        .status()
        .members
        .into_iter()
        .filter(|m| m.role != "learner")
        .map(|m| m.raft_addr)
        .collect();
    Ok(axum::Json(json!(peers)).into_response())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lower_case_registration_as_py_consul_sends_it() {
        let body = br#"{"name":"web","id":"web-1","address":"127.0.0.1","port":8080,
            "tags":["v1"],"meta":{"Ver":"1"},"checks":[{"ttl":"10s"}]}"#;
        let reg = parse_registration(body).unwrap();
        assert_eq!(reg.service, "web");
        assert_eq!(reg.meta.get("Ver").map(String::as_str), Some("1"));
        assert!(matches!(reg.check.unwrap().kind, CheckKind::Ttl { .. }));
    }

    #[test]
    fn http_check_with_interval() {
        let body = br#"{"Name":"api","Port":1,"Check":{"HTTP":"http://127.0.0.1:9/h","Interval":"1s","Timeout":"500ms","DeregisterCriticalServiceAfter":"1m"}}"#;
        let reg = parse_registration(body).unwrap();
        assert_eq!(reg.id, "api");
        let check = reg.check.unwrap();
        assert_eq!(check.interval.0, Duration::from_secs(1));
        assert_eq!(
            check.deregister_critical_after.unwrap().0,
            Duration::from_secs(60)
        );
    }

    #[test]
    fn bad_bodies_are_400s() {
        for body in [
            &b"[]"[..],
            b"{",
            br#"{"Port":1}"#,
            br#"{"Name":"a","Check":{"Script":"x"}}"#,
        ] {
            let err = parse_registration(body).err().unwrap();
            assert_eq!(err.0, StatusCode::BAD_REQUEST);
        }
    }
}
