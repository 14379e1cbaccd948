//! A Nacos-compatible open-API subset (v1 HTTP), so `nacos-sdk-python` and other Nacos v1
//! clients work unchanged: config get, publish, delete and the listener long-poll on the
//! config center; naming instance register, deregister, list and beat on the registry's
//! instances (ephemeral ones on a 15 s TTL, as Nacos's heartbeat timeout).
//!
//! Nacos reads parameters from the query string and from a form body alike; so does this.
//! A Nacos tenant (namespace id) maps to a Strata namespace, the empty one to `public`. A
//! naming instance's id is `IP:PORT`; its Nacos group and cluster are kept in its metadata.
//!
//! The Nacos 2.x gRPC protocol (what Nacos 2.x clients speak, on the Nacos port + 1000) is
//! served on a listener of its own, `nacos_grpc`: see [`grpc`]. A node serving it keeps a
//! record of its Nacos addresses in the store ([`servers`]), so that when it stops it can
//! send its gRPC clients to another node.

pub mod grpc;
pub mod grpc_metrics;
pub mod grpc_wire;
pub mod servers;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use strata_api::config::{ClientIdentity, ConfigKey, ConfigService, ConfigType, Publish};
use strata_api::registry::{InstanceRef, Query, Registration, RegistryService};
use strata_auth::{Access, Auth, Caller, Kind, Names};
use strata_http::{Peer, Who};
use strata_proto::error::{ApiError, ErrorCode};
use tokio_util::sync::CancellationToken;

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The `lastRefTime` of a service answer or push: the time in milliseconds, but always later
/// than any this process gave before. Nacos clients keep a service's newest answer and drop one
/// whose `lastRefTime` is not newer (the Python SDK drops an equal one too), so two changes
/// pushed in the same millisecond (a batch register that replaces two instances) would leave a
/// subscriber on the first one until the next change.
fn ref_time() -> u64 {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = now_ms();
    let previous = LAST
        .fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |last| Some(now.max(last + 1)),
        )
        .unwrap_or_else(|last| last);
    now.max(previous + 1)
}

/// Heartbeat timeout of an ephemeral Nacos instance.
const EPHEMERAL_TTL: Duration = Duration::from_secs(15);
/// Longest long-poll hold.
const MAX_HOLD: Duration = Duration::from_secs(120);

/// What the Nacos handlers share.
#[derive(Clone)]
pub struct NacosState {
    /// The config center.
    pub configs: Arc<dyn ConfigService>,
    /// The registry.
    pub registry: Arc<dyn RegistryService>,
    /// Cancelled at shutdown; ends held long-polls.
    pub cancel: CancellationToken,
    /// Access control.
    pub auth: Auth,
}

/// How long a Nacos login token lasts (Nacos's default `token.expire.seconds`).
const TOKEN_TTL: Duration = Duration::from_secs(18_000);

/// The token of a request, as Nacos clients send it: the `accessToken` query parameter (what
/// nacos-sdk-python and the Java client send), an `accessToken` header, or
/// `Authorization: Bearer`. (A token in a form body is not read: the gate runs before the body.)
pub fn nacos_token(parts: &axum::http::request::Parts) -> Option<String> {
    form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "accessToken")
        .map(|(_, v)| v.into_owned())
        .or_else(|| {
            parts
                .headers
                .get("accessToken")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .or_else(|| strata_http::bearer_token(parts))
        .filter(|t| !t.is_empty())
}

/// Nacos's words for a refused credential: 403 with a plain-text reason.
fn refused(e: ApiError) -> Response {
    let text = if e.message.contains("required") {
        "user not found!"
    } else if e.message.contains("expired") {
        "token expired!"
    } else {
        "token invalid!"
    };
    (StatusCode::FORBIDDEN, text).into_response()
}

/// Allows `who` `access` on `name` of `kind`, or answers as Nacos does.
fn allow(
    s: &NacosState,
    who: &Caller,
    kind: Kind,
    access: Access,
    name: String,
) -> Result<(), NacosError> {
    s.auth
        .gate
        .check(who, kind, access, &Names::one(name), "nacos")
        .map_err(|_| NacosError(StatusCode::FORBIDDEN, "authorization failed!".into()))
}

fn config_name(key: &ConfigKey) -> String {
    format!("{}/{}/{}", key.namespace, key.group, key.data_id)
}

/// The Nacos-compatible router, served on its own listener (`--nacos-addr`).
pub fn router(state: NacosState) -> Router {
    let gate = strata_http::GateLayer {
        auth: state.auth.clone(),
        api: "nacos",
        token_of: nacos_token,
        open: |path| path == "/nacos/v1/auth/login" || path == "/nacos/v1/auth/users/login",
        reject: refused,
    };
    Router::new()
        .route("/nacos/v1/auth/login", post(login))
        .route("/nacos/v1/auth/users/login", post(login))
        .route(
            "/nacos/v1/cs/configs",
            get(config_get).post(config_publish).delete(config_delete),
        )
        .route("/nacos/v1/cs/configs/listener", post(config_listen))
        .route(
            "/nacos/v1/ns/instance",
            post(instance_register)
                .put(instance_register)
                .delete(instance_deregister),
        )
        .route("/nacos/v1/ns/instance/list", get(instance_list))
        .route(
            "/nacos/v1/ns/instance/beat",
            axum::routing::put(instance_beat),
        )
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            gate,
            strata_http::authenticate,
        ))
}

/// `POST /nacos/v1/auth/login?username=..&password=..` (or a form): a token for later calls'
/// `accessToken` parameter. As Nacos, it checks the password whether or not access control is
/// on, and says `user not found!` for any refusal.
async fn login(State(s): State<NacosState>, peer: Peer, p: Params) -> NacosResult {
    let user = p.get("username").unwrap_or_default().to_string();
    let password = p.get("password").unwrap_or_default().to_string();
    let from = peer.0.map(|a| a.to_string());
    let token = s
        .auth
        .login("nacos", &user, &password, from.as_deref(), TOKEN_TTL)
        .await
        .map_err(|e| match e.code {
            ErrorCode::Unauthenticated if e.message.starts_with("too many") => {
                NacosError(StatusCode::FORBIDDEN, e.message)
            }
            ErrorCode::Unauthenticated => {
                NacosError(StatusCode::FORBIDDEN, "user not found!".into())
            }
            _ => e.into(),
        })?;
    let admin = s
        .auth
        .state()
        .users
        .get(&user)
        .is_some_and(|u| u.roles.iter().any(|r| r == strata_auth::ROOT_ROLE));
    Ok(axum::Json(json!({
        "accessToken": token,
        "tokenTtl": TOKEN_TTL.as_secs(),
        "globalAdmin": admin,
        "username": user,
    }))
    .into_response())
}

/// The Nacos-compatible API as a node component. It serves the registry and the config
/// center that started before it on this node, so it needs both roles.
pub struct NacosComponent;

const LISTENERS: &[strata_component::ListenerSpec] = &[
    strata_component::ListenerSpec {
        name: "nacos",
        about: "the Nacos-compatible API",
        transport: strata_component::Transport::Tcp,
    },
    strata_component::ListenerSpec {
        name: "nacos_grpc",
        about: "the Nacos 2.x gRPC API (Nacos clients dial the Nacos port + 1000)",
        transport: strata_component::Transport::Tcp,
    },
];

impl strata_component::Component for NacosComponent {
    fn name(&self) -> &'static str {
        "nacos"
    }

    fn listeners(&self) -> &'static [strata_component::ListenerSpec] {
        LISTENERS
    }

    fn start(
        &self,
        mut ctx: strata_component::Context,
    ) -> strata_store::BoxFuture<
        'static,
        Result<strata_component::Started, strata_component::StartError>,
    > {
        Box::pin(async move {
            let http = ctx.take_listener("nacos");
            let grpc = ctx.take_listener("nacos_grpc");
            if http.is_none() && grpc.is_none() {
                return Ok(strata_component::Started::default());
            }
            let (Some(configs), Some(registry)) = (
                ctx.get::<Arc<dyn ConfigService>>(),
                ctx.get::<Arc<dyn RegistryService>>(),
            ) else {
                return Err(strata_component::StartError(
                    "the Nacos API needs the registry and config_center roles on the same node"
                        .into(),
                ));
            };
            let state = NacosState {
                configs: Arc::clone(&configs),
                registry: Arc::clone(&registry),
                cancel: ctx.cancel.child_token(),
                auth: ctx.auth.clone(),
            };
            if let Some(bound) = grpc {
                tracing::info!(node_id = ctx.node_id, addr = %bound.addr, "serving the Nacos 2.x gRPC API");
                let metrics = grpc_metrics::GrpcMetrics::new(&ctx.metrics)
                    .map_err(|e| strata_component::StartError(format!("nacos metrics: {e}")))?;
                let record = servers::ServerRecord {
                    grpc: servers::advertised(bound.addr, &ctx.api_url),
                    http: http
                        .as_ref()
                        .map(|h| servers::advertised(h.addr, &ctx.api_url)),
                };
                let directory = servers::Servers::new(ctx.kv.clone(), ctx.node_id, record);
                ctx.tracker
                    .spawn(Arc::clone(&directory).advertise(state.cancel.clone()));
                let api = grpc::GrpcApi::new(
                    state.clone(),
                    ctx.kv.clone(),
                    directory,
                    metrics,
                    ctx.tracker.clone(),
                );
                ctx.tracker.spawn(api.clone().drain_at_shutdown());
                let max = ctx.max_request_bytes;
                ctx.tracker.spawn(async move {
                    if let Err(e) = api.serve(bound.tcp, max).await {
                        tracing::warn!(error = %e, "the Nacos gRPC listener stopped with an error");
                    }
                });
            }
            if let Some(bound) = http {
                tracing::info!(node_id = ctx.node_id, addr = %bound.addr, "serving the Nacos-compatible API");
                ctx.serve_http("nacos", bound.tcp, router(state));
            }
            Ok(strata_component::Started::default())
        })
    }
}

/// Query and form parameters, merged (the form wins). As an extractor it reads the query
/// string and the whole body.
struct Params(BTreeMap<String, String>);

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = BytesRejection;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let query = request.uri().query().map(str::to_owned);
        let body = Bytes::from_request(request, state).await?;
        Ok(Params::new(query.as_deref(), &body))
    }
}

impl Params {
    fn new(query: Option<&str>, body: &[u8]) -> Params {
        let mut map = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            map.insert(k.into_owned(), v.into_owned());
        }
        for (k, v) in form_urlencoded::parse(body) {
            map.insert(k.into_owned(), v.into_owned());
        }
        Params(map)
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn required(&self, k: &str) -> Result<&str, NacosError> {
        self.get(k).ok_or_else(|| missing(k))
    }

    /// Like [`Params::required`], but an empty value counts as given.
    fn given(&self, k: &str) -> Result<&str, NacosError> {
        self.0.get(k).map(String::as_str).ok_or_else(|| missing(k))
    }

    fn flag(&self, k: &str, default: bool) -> bool {
        match self.get(k) {
            Some(v) => v.eq_ignore_ascii_case("true"),
            None => default,
        }
    }

    fn namespace(&self) -> Option<&str> {
        self.get("tenant").or_else(|| self.get("namespaceId"))
    }

    fn config_key(&self) -> Result<ConfigKey, NacosError> {
        let data_id = self.required("dataId")?;
        Ok(ConfigKey::new(
            self.namespace(),
            self.get("group"),
            data_id,
        )?)
    }
}

/// The error for a parameter that is not in the query or the form.
fn missing(k: &str) -> NacosError {
    NacosError(
        StatusCode::BAD_REQUEST,
        format!("Required parameter '{k}' is not present"),
    )
}

/// A Nacos-style error: a status and a plain-text body.
#[derive(Debug)]
pub struct NacosError(pub StatusCode, pub String);

impl From<ApiError> for NacosError {
    fn from(e: ApiError) -> Self {
        let status = match e.code {
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::BadRequest | ErrorCode::FailedPrecondition | ErrorCode::AlreadyExists => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PermissionDenied | ErrorCode::Unauthenticated => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        NacosError(status, e.message)
    }
}

impl IntoResponse for NacosError {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

type NacosResult = Result<Response, NacosError>;

/// A success whether or not the thing existed: Nacos answers a delete of something that does
/// not exist as if it did.
fn ignore_not_found<T>(result: Result<T, ApiError>) -> Result<(), NacosError> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.code == ErrorCode::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A Nacos client: its address, and no labels (Nacos clients send none).
fn client_of(peer: &Peer) -> ClientIdentity {
    ClientIdentity {
        ip: peer.ip(),
        labels: BTreeMap::new(),
    }
}

async fn config_get(
    State(s): State<NacosState>,
    Who(who): Who,
    peer: Peer,
    p: Params,
) -> NacosResult {
    let key = p.config_key()?;
    allow(&s, &who, Kind::Config, Access::Read, config_name(&key))?;
    match s.configs.get(&key, &client_of(&peer)) {
        Ok(served) => Ok((
            [("content-type", "text/plain;charset=UTF-8")],
            served.content,
        )
            .into_response()),
        Err(e) if e.code == ErrorCode::NotFound => Err(NacosError(
            StatusCode::NOT_FOUND,
            "config data not exist".into(),
        )),
        Err(e) => Err(e.into()),
    }
}

async fn config_publish(
    State(s): State<NacosState>,
    Who(who): Who,
    peer: Peer,
    p: Params,
) -> NacosResult {
    let key = p.config_key()?;
    allow(&s, &who, Kind::Config, Access::Write, config_name(&key))?;
    let content = p.given("content")?.to_string();
    // Nacos knows types Strata does not check (html, text); they are stored as text.
    let kind = p
        .get("type")
        .and_then(|t| t.parse::<ConfigType>().ok())
        .unwrap_or_default();
    let source = peer.source();
    s.configs
        .publish(
            Publish {
                namespace: Some(key.namespace),
                group: Some(key.group),
                data_id: key.data_id,
                content,
                kind: Some(kind),
                desc: p.get("desc").map(str::to_string),
                ..Publish::default()
            },
            &source,
        )
        .await?;
    Ok((StatusCode::OK, "true").into_response())
}

async fn config_delete(
    State(s): State<NacosState>,
    Who(who): Who,
    peer: Peer,
    p: Params,
) -> NacosResult {
    let key = p.config_key()?;
    allow(&s, &who, Kind::Config, Access::Write, config_name(&key))?;
    let source = peer.source();
    // Nacos answers true for a config that does not exist.
    ignore_not_found(s.configs.delete(&key, &source).await)?;
    Ok((StatusCode::OK, "true").into_response())
}

/// Parses `dataId \x02 group \x02 md5 [\x02 tenant] \x01 ...`.
pub fn parse_probe(probe: &str) -> Result<Vec<(ConfigKey, String, String)>, NacosError> {
    let mut out = Vec::new();
    for entry in probe.split('\u{1}').filter(|e| !e.is_empty()) {
        let fields: Vec<&str> = entry.split('\u{2}').collect();
        let (data_id, group, md5, tenant) = match fields.as_slice() {
            [d, g, m] => (*d, *g, *m, ""),
            [d, g, m, t] => (*d, *g, *m, *t),
            _ => {
                return Err(NacosError(
                    StatusCode::BAD_REQUEST,
                    "invalid Listening-Configs: expected dataId, group, md5 and tenant".into(),
                ))
            }
        };
        let ns = (!tenant.is_empty()).then_some(tenant);
        let key = ConfigKey::new(ns, Some(group), data_id)?;
        out.push((key, md5.to_string(), tenant.to_string()));
    }
    Ok(out)
}

async fn config_listen(
    State(s): State<NacosState>,
    Who(who): Who,
    peer: Peer,
    headers: HeaderMap,
    p: Params,
) -> NacosResult {
    let entries = parse_probe(p.given("Listening-Configs")?)?;
    for (key, _, _) in &entries {
        allow(&s, &who, Kind::Config, Access::Read, config_name(key))?;
    }
    let hold = headers
        .get("Long-Pulling-Timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms.saturating_sub(500)))
        .unwrap_or(Duration::ZERO)
        .min(MAX_HOLD);
    let watched: Vec<(ConfigKey, String)> = entries
        .iter()
        .map(|(k, m, _)| (k.clone(), m.clone()))
        .collect();
    let client = client_of(&peer);
    let _listening = s.configs.listening("nacos_listen");
    let changed = tokio::select! {
        changed = s.configs.wait_changed(&watched, &client, hold) => changed,
        () = s.cancel.cancelled() => Vec::new(),
    };
    let mut text = String::new();
    for key in changed {
        if let Some((k, _, tenant)) = entries.iter().find(|(k, _, _)| *k == key) {
            text.push_str(&k.data_id);
            text.push('\u{2}');
            text.push_str(&k.group);
            if !tenant.is_empty() {
                text.push('\u{2}');
                text.push_str(tenant);
            }
            text.push('\u{1}');
        }
    }
    let encoded: String = form_urlencoded::byte_serialize(text.as_bytes()).collect();
    Ok((StatusCode::OK, encoded).into_response())
}

/// Splits Nacos's `GROUP@@service` form.
fn service_name(p: &Params) -> Result<(String, String), NacosError> {
    let raw = p.required("serviceName")?;
    let (group, name) = match raw.split_once("@@") {
        Some((g, n)) => (g.to_string(), n.to_string()),
        None => (
            p.get("groupName").unwrap_or("DEFAULT_GROUP").to_string(),
            raw.to_string(),
        ),
    };
    Ok((group, name))
}

/// `IP:PORT`, with `@GROUP` for groups other than the default, so one service name in two
/// Nacos groups stays two instances.
fn instance_id(ip: &str, port: &str, group: &str) -> String {
    if group == "DEFAULT_GROUP" {
        format!("{ip}:{port}")
    } else {
        format!("{ip}:{port}@{group}")
    }
}

/// The Nacos group of an instance id made by [`instance_id`].
fn instance_group(id: &str) -> &str {
    id.split_once('@')
        .map_or("DEFAULT_GROUP", |(_, group)| group)
}

fn namespace_of(p: &Params) -> String {
    p.get("namespaceId")
        .unwrap_or(strata_api::registry::DEFAULT_NAMESPACE)
        .to_string()
}

/// Registry names as permissions see them: `NAMESPACE/SERVICE`.
/// Allows `who` `access` on the service `name` of the request's namespace
/// (`NAMESPACE/SERVICE`).
fn allow_service(
    s: &NacosState,
    who: &Caller,
    p: &Params,
    name: &str,
    access: Access,
) -> Result<(), NacosError> {
    let full = format!("{}/{name}", namespace_of(p));
    allow(s, who, Kind::Registry, access, full)
}

async fn instance_register(State(s): State<NacosState>, Who(who): Who, p: Params) -> NacosResult {
    let (group, name) = service_name(&p)?;
    allow_service(&s, &who, &p, &name, Access::Write)?;
    let ip = p.required("ip")?.to_string();
    let port_text = p.required("port")?;
    let id = instance_id(&ip, port_text, &group);
    let port: u32 = port_text.parse().map_err(|_| {
        NacosError(
            StatusCode::BAD_REQUEST,
            format!("invalid port {port_text:?}"),
        )
    })?;
    let mut meta: BTreeMap<String, String> = match p.get("metadata") {
        Some(text) => {
            let value: Value = serde_json::from_str(text).map_err(|e| {
                NacosError(StatusCode::BAD_REQUEST, format!("invalid metadata: {e}"))
            })?;
            value
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| {
                            let v = v
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string());
                            (k.clone(), v)
                        })
                        .collect()
                })
                .unwrap_or_default()
        }
        None => BTreeMap::new(),
    };
    let cluster = p
        .get("clusterName")
        .filter(|c| *c != "None")
        .unwrap_or("DEFAULT");
    meta.insert("nacos.group".into(), group);
    meta.insert("nacos.cluster".into(), cluster.to_string());
    let registration = registration_of(
        namespace_of(&p),
        name,
        id,
        ip,
        port,
        meta,
        p.get("weight").and_then(|w| w.parse::<f64>().ok()),
        p.flag("enable", true),
        p.flag("ephemeral", true),
    );
    s.registry.register(registration, true).await?;
    Ok((StatusCode::OK, "ok").into_response())
}

async fn instance_deregister(State(s): State<NacosState>, Who(who): Who, p: Params) -> NacosResult {
    let (group, name) = service_name(&p)?;
    allow_service(&s, &who, &p, &name, Access::Write)?;
    let r = InstanceRef::new(
        &namespace_of(&p),
        &name,
        &instance_id(p.required("ip")?, p.required("port")?, &group),
    );
    ignore_not_found(s.registry.deregister(&r).await)?;
    Ok((StatusCode::OK, "ok").into_response())
}

async fn instance_list(State(s): State<NacosState>, Who(who): Who, p: Params) -> NacosResult {
    let (group, name) = service_name(&p)?;
    allow_service(&s, &who, &p, &name, Access::Read)?;
    let healthy_only = p.flag("healthyOnly", false);
    let result = s
        .registry
        .query(
            &name,
            &Query {
                namespace: Some(namespace_of(&p)),
                passing: healthy_only,
                ..Query::default()
            },
        )
        .await;
    let (instances, protected) = match result {
        Ok(r) => (r.instances, r.protected),
        Err(e) if e.code == ErrorCode::BadRequest => (Vec::new(), false),
        Err(e) => return Err(e.into()),
    };
    let full = format!("{group}@@{name}");
    let hosts = hosts_json(&instances, &group, &full);
    let body = json!({
        "name": full, "groupName": group, "clusters": "", "cacheMillis": 10000,
        "lastRefTime": ref_time(), "checksum": "",
        "allIPs": false, "reachProtectionThreshold": protected, "valid": true,
        "hosts": hosts,
    });
    Ok(axum::Json(body).into_response())
}

/// A registry registration from a Nacos instance's fields: the instance id is `IP:PORT`
/// (see [`instance_id`]), the Nacos group and cluster go in `meta` (the caller puts them
/// there), and an ephemeral instance lives on a [`EPHEMERAL_TTL`] lease.
#[allow(clippy::too_many_arguments)]
fn registration_of(
    namespace: String,
    service: String,
    id: String,
    ip: String,
    port: u32,
    meta: BTreeMap<String, String>,
    weight: Option<f64>,
    enabled: bool,
    ephemeral: bool,
) -> Registration {
    Registration {
        namespace: Some(namespace),
        service,
        id,
        address: ip,
        port,
        tags: Vec::new(),
        meta,
        weight,
        enabled: Some(enabled),
        ttl: ephemeral.then_some(strata_api::units::HumanDuration(EPHEMERAL_TTL)),
        check: None,
        status: None,
    }
}

/// The Nacos `hosts` of a service: the instances of Nacos group `group`, each as a Nacos
/// instance object; `full` is the `GROUP@@NAME` service name.
fn hosts_json(
    instances: &[Arc<strata_api::registry::Instance>],
    group: &str,
    full: &str,
) -> Vec<Value> {
    instances
        .iter()
        .filter(|i| i.meta.get("nacos.group").is_none_or(|g| g == group))
        .map(|i| {
            let cluster = i
                .meta
                .get("nacos.cluster")
                .cloned()
                .unwrap_or_else(|| "DEFAULT".into());
            let metadata: serde_json::Map<String, Value> = i
                .meta
                .iter()
                .filter(|(k, _)| !k.starts_with("nacos."))
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            json!({
                "instanceId": format!("{}#{}#{cluster}#{full}", i.address, i.port),
                "ip": i.address, "port": i.port, "weight": i.weight,
                "healthy": i.healthy(), "enabled": i.enabled, "ephemeral": i.ephemeral,
                "clusterName": cluster, "serviceName": full, "metadata": metadata,
                "instanceHeartBeatInterval": 5000, "instanceHeartBeatTimeOut": 15000,
                "ipDeleteTimeout": 30000,
            })
        })
        .collect()
}

async fn instance_beat(State(s): State<NacosState>, Who(who): Who, p: Params) -> NacosResult {
    let (group, name) = service_name(&p)?;
    allow_service(&s, &who, &p, &name, Access::Write)?;
    let beat: Value = match p.get("beat") {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| NacosError(StatusCode::BAD_REQUEST, format!("invalid beat: {e}")))?,
        None => json!({}),
    };
    let ip = beat["ip"]
        .as_str()
        .map(str::to_string)
        .or_else(|| p.get("ip").map(str::to_string))
        .ok_or_else(|| NacosError(StatusCode::BAD_REQUEST, "beat has no ip".into()))?;
    let port = beat["port"]
        .as_u64()
        .map(|v| v.to_string())
        .or_else(|| p.get("port").map(str::to_string))
        .ok_or_else(|| NacosError(StatusCode::BAD_REQUEST, "beat has no port".into()))?;
    let r = InstanceRef::new(&namespace_of(&p), &name, &instance_id(&ip, &port, &group));
    let code = match s.registry.heartbeat(&r).await {
        Ok(_) => 10200,
        Err(e) if e.code == ErrorCode::NotFound || e.code == ErrorCode::BadRequest => 20404,
        Err(e) => return Err(e.into()),
    };
    Ok(
        axum::Json(json!({"clientBeatInterval": 5000, "code": code, "lightBeatEnabled": false}))
            .into_response(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ref_times_only_go_forward_even_within_a_millisecond() {
        let start = now_ms();
        let times: Vec<u64> = (0..10_000).map(|_| ref_time()).collect();
        assert!(
            times.windows(2).all(|w| w[0] < w[1]),
            "not strictly increasing"
        );
        assert!(times[0] >= start);
        // Ten thousand answers run ahead of the clock by at most ten seconds.
        assert!(*times.last().unwrap() <= now_ms() + 10_000);
    }

    #[test]
    fn probes_parse_with_and_without_tenant() {
        let entries =
            parse_probe("app.yaml\u{2}DEFAULT_GROUP\u{2}abc\u{2}\u{1}b\u{2}G\u{2}\u{2}ns1\u{1}")
                .unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].0.namespace, "public");
        assert_eq!(entries[0].1, "abc");
        assert_eq!(entries[1].0.namespace, "ns1");
        assert!(parse_probe("only-one-field\u{1}").is_err());
        assert!(parse_probe("").unwrap().is_empty());
    }

    #[test]
    fn params_merge_query_and_form() {
        let p = Params::new(Some("dataId=a&group=q"), b"group=f&content=x%3D1");
        assert_eq!(p.get("dataId"), Some("a"));
        assert_eq!(p.get("group"), Some("f"));
        assert_eq!(p.get("content"), Some("x=1"));
    }
}
