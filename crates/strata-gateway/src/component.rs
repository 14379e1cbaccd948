//! The gateway as a node component: its `[gateway]` section, where its table comes from, and
//! its admin API on the node's client listener.
//!
//! The table is one JSON document in the config center (namespace `gateway`, group `gateway`,
//! data id `routes`), so every gateway node applies the same table atomically when it changes.
//! `[gateway] routes_file` serves a gateway without the config center: the table is read from
//! that file and re-read when it changes.

use crate::model::Table;
use crate::proxy::Gateway;
use crate::route::Compiled;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use strata_api::config::{ClientIdentity, ConfigKey, ConfigService, ConfigType, Publish};
use strata_api::registry::RegistryService;
use strata_auth::{Access, Caller, Kind, Names};
use strata_component::{
    parse_section, Component, Context, ListenerSpec, StartError, Started, Transport,
};
use strata_http::{ApiJson, ApiResult, Who};
use strata_proto::error::{ApiError, ErrorCode};
use strata_store::BoxFuture;

/// The component's name: its role and its config section.
pub const NAME: &str = "gateway";
/// The listener that serves proxied traffic.
pub const LISTENER: &str = "gateway";
/// Where the table lives in the config center.
pub const TABLE_NAMESPACE: &str = "gateway";
/// The table's group.
pub const TABLE_GROUP: &str = "gateway";
/// The table's data id.
pub const TABLE_DATA_ID: &str = "routes";
/// How often a `routes_file` is checked for changes.
const FILE_POLL: Duration = Duration::from_secs(2);
/// How long an admin change waits to be in force on this node before it answers.
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// The `[gateway]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Read the route table from this file (TOML or JSON) instead of the config center.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes_file: Option<PathBuf>,
    /// Proxies in front of the gateway (address blocks) whose `X-Forwarded-For` names the
    /// client, for `allow_ips` / `deny_ips` and ring hashing by client address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// Access log: `stdout` or a file (appended to); unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<String>,
    /// The fields of each line (default: all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_log_fields: Vec<String>,
    /// The HTTP and HTTPS listeners expect a PROXY protocol header (v1 or v2) at the start of
    /// every connection, from a load balancer in front; its source address is the client.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy_protocol: bool,
    /// Record a span of every request (continuing the client's W3C trace, or starting one)
    /// and send it to this node's monitor, when the node runs the monitor.
    #[serde(default = "default_traces")]
    pub traces: bool,
    /// At most this many traces a second start here (requests without a sampled
    /// `traceparent`); 0: every one. Requests that arrive sampled are always recorded.
    #[serde(default = "default_traces_per_second")]
    pub traces_per_second: u32,
}

fn default_traces() -> bool {
    true
}

/// Every request of someone trying things out is traced; under load, spans stay a trickle
/// (a span costs far more than proxying the request).
fn default_traces_per_second() -> u32 {
    100
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            routes_file: None,
            trusted_proxies: Vec::new(),
            access_log: None,
            access_log_fields: Vec::new(),
            proxy_protocol: false,
            traces: default_traces(),
            traces_per_second: default_traces_per_second(),
        }
    }
}

/// The API gateway, load balancer and frontend router.
pub struct GatewayComponent;

/// The listener that serves proxied traffic over TLS.
pub const TLS_LISTENER: &str = "gateway_tls";

static LISTENERS: [ListenerSpec; 2] = [
    ListenerSpec {
        name: LISTENER,
        about: "API gateway (HTTP/1.1 and h2c)",
        transport: Transport::Tcp,
    },
    ListenerSpec {
        name: TLS_LISTENER,
        about: "API gateway over TLS (HTTP/2 and HTTP/1.1 by ALPN, certificates by SNI)",
        transport: Transport::Tcp,
    },
];

impl Component for GatewayComponent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn listeners(&self) -> &'static [ListenerSpec] {
        &LISTENERS
    }

    fn check_config(&self, section: Option<&toml::Value>) -> Result<(), String> {
        let config = parse_section::<GatewayConfig>(NAME, section)?;
        crate::access_log::check_fields(&config.access_log_fields)?;
        crate::edge::parse_list("gateway.trusted_proxies", &config.trusted_proxies).map(|_| ())
    }

    fn sample_config(&self) -> Option<String> {
        Some(format!(
            "[{NAME}]\n# Serve the route table from a file instead of the config center:\n# routes_file = \"/etc/strata/routes.toml\"\n# Spans of requests to this node's monitor (when it runs one), at most\n# traces_per_second new traces a second (0: no cap):\n# traces = true\n# traces_per_second = 100\n"
        ))
    }

    fn start(&self, mut ctx: Context) -> BoxFuture<'static, Result<Started, StartError>> {
        Box::pin(async move {
            let config: GatewayConfig = ctx.settings(NAME)?;
            let registry = ctx.get::<Arc<dyn RegistryService>>().map(|r| (*r).clone());
            let configs = ctx.get::<Arc<dyn ConfigService>>().map(|c| (*c).clone());
            let gateway = build_gateway(&config, &ctx.metrics, registry, &ctx.tracker, &ctx.cancel)
                .map_err(StartError)?;
            // The monitor, when this node runs it, started earlier and offers its span store.
            if let Some(sink) = ctx
                .get::<Arc<dyn strata_trace::LocalSink>>()
                .filter(|_| config.traces)
            {
                export_spans(&gateway, &ctx, (*sink).clone(), config.traces_per_second);
            }
            let source = match (&config.routes_file, configs) {
                (Some(file), _) => {
                    install_file(&gateway, file, false, &ctx.tracker, &ctx.cancel)
                        .map_err(StartError)?;
                    Source::File(file.clone())
                }
                (None, Some(configs)) => {
                    ctx.tracker.spawn(follow_config(
                        gateway.clone(),
                        configs.clone(),
                        ctx.node_id,
                        ctx.cancel.clone(),
                    ));
                    Source::ConfigCenter(configs)
                }
                (None, None) => Source::None,
            };
            if let Some(bound) = ctx.take_listener(LISTENER) {
                tracing::info!(addr = %bound.addr, "gateway listening");
                gateway.serve(LISTENER, bound.tcp, None, config.proxy_protocol);
            }
            let proxy_protocol = config.proxy_protocol;
            if let Some(bound) = ctx.take_listener(TLS_LISTENER) {
                tracing::info!(addr = %bound.addr, "gateway listening over TLS");
                let config = crate::sni::server_config(gateway.sni.clone());
                gateway.serve(TLS_LISTENER, bound.tcp, Some(config), proxy_protocol);
            }
            ctx.tracker
                .spawn(watch_certificates(gateway.clone(), ctx.cancel.clone()));
            ctx.tracker.spawn(
                gateway
                    .keys
                    .clone()
                    .follow(ctx.kv.clone(), ctx.cancel.clone()),
            );
            ctx.tracker.spawn(crate::cluster_limits::run(
                gateway.clone(),
                ctx.kv.clone(),
                ctx.node_id,
                ctx.cancel.clone(),
            ));
            let state = AdminState {
                gateway,
                source: Arc::new(source),
                auth: ctx.auth.clone(),
                kv: ctx.kv.clone(),
            };
            Ok(Started {
                peer_routes: None,
                api_routes: Some(admin_router(state)),
            })
        })
    }
}

/// A gateway with `config`'s options and metrics in `metrics` (its table still empty).
pub(crate) fn build_gateway(
    config: &GatewayConfig,
    metrics: &prometheus::Registry,
    registry: Option<Arc<dyn RegistryService>>,
    tracker: &tokio_util::task::TaskTracker,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Arc<Gateway>, String> {
    let trusted = crate::edge::parse_list("gateway.trusted_proxies", &config.trusted_proxies)?;
    crate::access_log::check_fields(&config.access_log_fields)?;
    let metrics = crate::metrics::Metrics::new(metrics).map_err(|e| e.to_string())?;
    let gateway = Gateway::new(metrics, registry, tracker.clone(), cancel.clone(), trusted);
    if let Some(target) = &config.access_log {
        let log = crate::access_log::AccessLog::start(
            target,
            config.access_log_fields.clone(),
            gateway.metrics.access_log_dropped.clone(),
            tracker,
            cancel.clone(),
        )?;
        let _ = gateway.access_log.set(log);
    }
    Ok(gateway)
}

/// Hands the spans of requests to this node's monitor (`sink`), in process, from a task of the
/// component.
fn export_spans(
    gateway: &Gateway,
    ctx: &Context,
    sink: Arc<dyn strata_trace::LocalSink>,
    per_second: u32,
) {
    let counters = strata_trace::Counters {
        exported: gateway.metrics.spans.with_label_values(&["exported"]),
        dropped: gateway.metrics.spans.with_label_values(&["dropped"]),
    };
    let (exporter, task) =
        strata_trace::Exporter::local(sink, "strata-gateway".into(), 1.0, counters);
    let exporter = exporter.per_second(per_second);
    let cancel = ctx.cancel.clone();
    ctx.tracker.spawn(async move {
        tokio::select! {
            () = cancel.cancelled() => {}
            () = task => {}
        }
    });
    let _ = gateway.spans.set(exporter);
    tracing::info!(per_second, "gateway spans go to this node's monitor");
}

/// Installs the table of `file` and re-reads it when it changes. `standalone`: the file may
/// also hold the `[server]` section of `strata gateway --config`.
pub(crate) fn install_file(
    gateway: &Arc<Gateway>,
    file: &std::path::Path,
    standalone: bool,
    tracker: &tokio_util::task::TaskTracker,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(), String> {
    let table = read_file(file, standalone)?;
    let compiled = Compiled::new(table).map_err(|e| format!("{}: {e}", file.display()))?;
    gateway
        .install(compiled, 0)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    tracker.spawn(watch_file(
        gateway.clone(),
        file.to_path_buf(),
        standalone,
        cancel.clone(),
    ));
    Ok(())
}

/// Where this node's table comes from.
enum Source {
    ConfigCenter(Arc<dyn ConfigService>),
    File(PathBuf),
    None,
}

fn table_key() -> ConfigKey {
    ConfigKey {
        namespace: TABLE_NAMESPACE.into(),
        group: TABLE_GROUP.into(),
        data_id: TABLE_DATA_ID.into(),
    }
}

fn read_file(file: &std::path::Path, standalone: bool) -> Result<Table, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read the route table {}: {e}", file.display()))?;
    let parsed = if standalone {
        crate::standalone::split(&text).map(|(_, table)| table)
    } else {
        Table::parse(&text)
    };
    parsed.map_err(|e| format!("{}: {e}", file.display()))
}

/// Re-reads `file` when its modification time changes.
async fn watch_file(
    gateway: Arc<Gateway>,
    file: PathBuf,
    standalone: bool,
    cancel: tokio_util::sync::CancellationToken,
) {
    let modified = |f: &std::path::Path| std::fs::metadata(f).and_then(|m| m.modified()).ok();
    let mut seen: Option<SystemTime> = modified(&file);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(FILE_POLL) => {}
        }
        let now = modified(&file);
        if now == seen {
            continue;
        }
        seen = now;
        match read_file(&file, standalone).and_then(|t| Compiled::new(t).map_err(|e| e.0)) {
            Ok(compiled) => {
                if let Err(error) = gateway.install(compiled, 0) {
                    gateway.metrics.tables_refused.inc();
                    tracing::warn!(%error, "route table refused; the previous one keeps serving");
                }
            }
            Err(error) => {
                gateway.metrics.tables_refused.inc();
                tracing::warn!(%error, "route table refused; the previous one keeps serving");
            }
        }
    }
}

/// Re-reads the HTTPS certificates when their files change.
pub(crate) async fn watch_certificates(
    gateway: Arc<Gateway>,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(FILE_POLL) => {}
        }
        match gateway.sni.reload_if_changed() {
            Ok(true) => {
                tracing::info!(files = ?gateway.sni.files(), "gateway certificates reloaded")
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot reload the gateway certificates; the loaded ones keep serving")
            }
        }
    }
}

/// Applies every version of the table document as it is published.
async fn follow_config(
    gateway: Arc<Gateway>,
    configs: Arc<dyn ConfigService>,
    node_id: u64,
    cancel: tokio_util::sync::CancellationToken,
) {
    let key = table_key();
    let client = ClientIdentity {
        ip: None,
        labels: BTreeMap::from([("strata_node".to_string(), node_id.to_string())]),
    };
    let mut md5 = String::new();
    loop {
        match configs.get(&key, &client) {
            Ok(served) if served.md5 != md5 => {
                md5 = served.md5.clone();
                let installed = Table::parse(&served.content)
                    .and_then(Compiled::new)
                    .map_err(|e| e.0)
                    .and_then(|compiled| gateway.install(compiled, served.version));
                match installed {
                    Ok(()) => {}
                    Err(error) => {
                        gateway.metrics.tables_refused.inc();
                        tracing::warn!(version = served.version, %error, "route table refused; the previous one keeps serving");
                    }
                }
            }
            Ok(_) => {}
            Err(e) if e.code == ErrorCode::NotFound => {
                if !md5.is_empty() || gateway.live().version != 0 {
                    let empty = Compiled::new(Table::default()).expect("the empty table is valid");
                    let _ = gateway.install(empty, 0);
                }
                md5.clear();
            }
            Err(error) => tracing::warn!(%error, "cannot read the route table; retrying"),
        }
        let watched = [(key.clone(), md5.clone())];
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = configs.wait_changed(&watched, &client, Duration::from_secs(30)) => {}
        }
    }
}

// --- admin API ------------------------------------------------------------------------------

#[derive(Clone)]
struct AdminState {
    gateway: Arc<Gateway>,
    source: Arc<Source>,
    auth: strata_auth::Auth,
    kv: Arc<dyn strata_store::KvApi>,
}

fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/gateway/routes", get(list_routes).post(apply_routes))
        .route(
            "/v1/gateway/routes/{name}",
            get(show_route).delete(delete_route),
        )
        .route("/v1/gateway/upstreams", get(list_upstreams))
        .route("/v1/gateway/upstreams/{name}", get(show_upstream))
        .route("/v1/gateway/tcp", get(list_tcp))
        .route("/v1/gateway/keys", get(list_keys).post(create_key))
        .route("/v1/gateway/keys/{id}", axum::routing::delete(revoke_key))
        .with_state(state)
}

fn allow(s: &AdminState, who: &Caller, access: Access, names: &Names) -> Result<(), ApiError> {
    s.auth
        .gate
        .check(who, Kind::Gateway, access, names, "gateway")
}

/// The table in force on this node.
#[derive(Serialize)]
pub(crate) struct TableView {
    /// Config-center version (0: none, or a file).
    version: u64,
    /// `config_center`, `file` or `none`.
    source: String,
    routes: Vec<crate::model::RouteSpec>,
    upstreams: Vec<crate::model::UpstreamSpec>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tcp: Vec<crate::model::TcpSpec>,
}

impl TableView {
    /// The table `gateway` serves, which came from `source`.
    pub(crate) fn of(gateway: &Gateway, source: String) -> TableView {
        let live = gateway.live();
        TableView {
            version: live.version,
            source,
            routes: live.compiled.source.routes.clone(),
            upstreams: live.compiled.source.upstreams.clone(),
            tcp: live.compiled.source.tcp.clone(),
        }
    }
}

fn source_name(source: &Source) -> String {
    match source {
        Source::ConfigCenter(_) => "config_center".into(),
        Source::File(path) => format!("file {}", path.display()),
        Source::None => "none".into(),
    }
}

async fn list_routes(State(s): State<AdminState>, Who(who): Who) -> ApiResult<TableView> {
    allow(&s, &who, Access::Read, &Names::prefix(""))?;
    Ok(axum::Json(TableView::of(
        &s.gateway,
        source_name(&s.source),
    )))
}

async fn show_route(
    State(s): State<AdminState>,
    Who(who): Who,
    Path(name): Path<String>,
) -> ApiResult<crate::model::RouteSpec> {
    allow(&s, &who, Access::Read, &Names::one(name.clone()))?;
    let live = s.gateway.live();
    live.compiled
        .source
        .routes
        .iter()
        .find(|r| r.name == name)
        .cloned()
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found(format!("no route named {name:?}")).into())
}

#[derive(Deserialize)]
struct ApplyParams {
    /// Replace the whole table instead of adding to it by name.
    #[serde(default)]
    replace: bool,
}

/// The answer to a change of the table.
#[derive(Serialize)]
struct Applied {
    /// The config-center version the change was published as.
    version: u64,
    /// Routes in the table now.
    routes: usize,
    /// Upstreams in the table now.
    upstreams: usize,
    /// True when this node serves the new table already.
    in_force: bool,
}

async fn apply_routes(
    State(s): State<AdminState>,
    Who(who): Who,
    Query(params): Query<ApplyParams>,
    ApiJson(table): ApiJson<Table>,
) -> ApiResult<Applied> {
    if params.replace {
        allow(&s, &who, Access::Write, &Names::prefix(""))?;
    } else {
        for name in table
            .routes
            .iter()
            .map(|r| &r.name)
            .chain(table.upstreams.iter().map(|u| &u.name))
        {
            allow(&s, &who, Access::Write, &Names::one(name.clone()))?;
        }
    }
    change_table(&s, &who, move |current| {
        if params.replace {
            Ok(table.clone())
        } else {
            let mut merged = current;
            merged.merge(table.clone());
            Ok(merged)
        }
    })
    .await
}

async fn delete_route(
    State(s): State<AdminState>,
    Who(who): Who,
    Path(name): Path<String>,
) -> ApiResult<Applied> {
    allow(&s, &who, Access::Write, &Names::one(name.clone()))?;
    change_table(&s, &who, move |mut current| {
        let before = current.routes.len();
        current.routes.retain(|r| r.name != name);
        if current.routes.len() == before {
            return Err(ApiError::not_found(format!("no route named {name:?}")));
        }
        Ok(current)
    })
    .await
}

/// Reads the stored table, changes it, validates the result and publishes it only if nobody
/// published in between (retrying a few times), then waits for this node to serve it.
async fn change_table(
    s: &AdminState,
    who: &Caller,
    change: impl Fn(Table) -> Result<Table, ApiError>,
) -> ApiResult<Applied> {
    let configs = match s.source.as_ref() {
        Source::ConfigCenter(configs) => configs,
        Source::File(path) => {
            return Err(ApiError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "this gateway serves the route table from {}; edit that file instead",
                    path.display()
                ),
            )
            .into())
        }
        Source::None => {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "the config center does not run on this node, so the route table cannot be changed here",
            )
            .into())
        }
    };
    let key = table_key();
    for _ in 0..5 {
        let (current, md5) = match configs.get(&key, &ClientIdentity::default()) {
            Ok(served) => (
                Table::parse(&served.content).unwrap_or_default(),
                served.md5,
            ),
            Err(e) if e.code == ErrorCode::NotFound => (Table::default(), String::new()),
            Err(e) => return Err(e.into()),
        };
        let next = change(current)?;
        let compiled =
            Compiled::new(next.clone()).map_err(|e| ApiError::new(ErrorCode::BadRequest, e.0))?;
        crate::sni::check(&next.certificates)
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("certificate: {e}")))?;
        let (routes, upstreams) = (compiled.routes.len(), compiled.upstreams.len());
        let content = serde_json::to_string_pretty(&next)
            .map_err(|e| ApiError::internal(format!("encode the route table: {e}")))?;
        let publish = Publish {
            namespace: Some(TABLE_NAMESPACE.into()),
            group: Some(TABLE_GROUP.into()),
            data_id: TABLE_DATA_ID.into(),
            content,
            kind: Some(ConfigType::Json),
            desc: Some("Strata gateway route table".into()),
            tags: None,
            if_md5: Some(md5),
            if_version: None,
        };
        match configs
            .publish(publish, &format!("gateway admin ({})", who.who()))
            .await
        {
            Ok(item) => {
                let in_force = s.gateway.wait_applied(item.version, APPLY_WAIT).await;
                return Ok(axum::Json(Applied {
                    version: item.version,
                    routes,
                    upstreams,
                    in_force,
                }));
            }
            Err(e) if e.code == ErrorCode::FailedPrecondition => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(
        ErrorCode::Unavailable,
        "the route table kept changing under this update; try again",
    )
    .into())
}

/// One upstream group as it runs on this node.
#[derive(Serialize)]
pub(crate) struct UpstreamView {
    name: String,
    balance: crate::model::Balance,
    /// `static`, or `service NAME`.
    source: String,
    members: Vec<MemberView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
    /// Connections opened to members so far.
    connections_opened: u64,
    /// Connections to members open now.
    connections_open: i64,
    /// Share of requests that reused a pooled connection (1 - opened / requests).
    pool_reuse: f64,
    /// The group's circuit breaker (scope `group`).
    #[serde(skip_serializing_if = "Option::is_none")]
    breaker: Option<strata_resilience::breaker::Snapshot>,
    /// The retry budget: retries available now, spent and refused so far.
    retry_budget: BudgetView,
    /// Requests in flight and the group's limit, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency: Option<(u32, u32)>,
}

#[derive(Serialize)]
struct BudgetView {
    available: u64,
    spent: u64,
    refused: u64,
}

#[derive(Serialize)]
struct MemberView {
    id: String,
    address: String,
    weight: u32,
    /// `passing`, or `failing` while active health checks find it down.
    health: &'static str,
    /// True while skipped: it refused a connection, or outlier detection ejected it.
    ejected: bool,
    /// Ejections by outlier detection so far.
    ejections: u64,
    /// Its own breaker's state (scope `instance`).
    #[serde(skip_serializing_if = "Option::is_none")]
    breaker: Option<strata_resilience::breaker::State>,
    /// Percent of its weight it gets now (below 100 while warming up under slow start).
    warmth_percent: u32,
    in_flight: u64,
    requests: u64,
    failures: u64,
}

pub(crate) fn upstream_view(group: &crate::upstream::Group) -> UpstreamView {
    let members = group.members();
    let now = crate::balance::now_ms();
    let slow_start = group.spec.slow_start.map_or(0, |d| d.0.as_millis() as u64);
    let requests: u64 = members
        .endpoints
        .iter()
        .map(|e| e.requests.load(Ordering::Relaxed))
        .sum();
    let opened = group.metrics.opened.get();
    UpstreamView {
        breaker: group.breaker.as_ref().map(|b| b.snapshot()),
        retry_budget: BudgetView {
            available: group.retry_budget.available(),
            spent: group.retry_budget.spent(),
            refused: group.retry_budget.refused(),
        },
        concurrency: group.concurrency.as_ref().map(|c| (c.in_use(), c.max())),
        connections_opened: opened,
        connections_open: group.metrics.open.get(),
        pool_reuse: if requests == 0 {
            0.0
        } else {
            (1.0 - opened as f64 / requests as f64).max(0.0)
        },
        name: group.spec.name.clone(),
        balance: group.spec.balance,
        source: match &group.spec.service {
            Some(service) => format!("service {service}"),
            None => "static".into(),
        },
        members: members
            .endpoints
            .iter()
            .map(|e| MemberView {
                id: e.id.clone(),
                address: e.address.clone(),
                weight: e.weight,
                health: if e.is_healthy() { "passing" } else { "failing" },
                ejected: e.ejected(now) || e.outlier.is_ejected(now),
                ejections: e.outlier.ejections.load(Ordering::Relaxed),
                breaker: e.breaker.get().map(|b| b.state()),
                warmth_percent: (e.warmth(now, slow_start) * 100.0).round() as u32,
                in_flight: e.in_flight.load(Ordering::Relaxed),
                requests: e.requests.load(Ordering::Relaxed),
                failures: e.failures.load(Ordering::Relaxed),
            })
            .collect(),
        problem: group
            .problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
    }
}

#[derive(Serialize)]
pub(crate) struct UpstreamList {
    pub(crate) upstreams: Vec<UpstreamView>,
}

async fn list_upstreams(State(s): State<AdminState>, Who(who): Who) -> ApiResult<UpstreamList> {
    allow(&s, &who, Access::Read, &Names::prefix(""))?;
    let live = s.gateway.live();
    Ok(axum::Json(UpstreamList {
        upstreams: live.groups.values().map(|g| upstream_view(g)).collect(),
    }))
}

async fn show_upstream(
    State(s): State<AdminState>,
    Who(who): Who,
    Path(name): Path<String>,
) -> ApiResult<UpstreamView> {
    allow(&s, &who, Access::Read, &Names::one(name.clone()))?;
    let live = s.gateway.live();
    live.groups
        .get(&name)
        .map(|g| axum::Json(upstream_view(g)))
        .ok_or_else(|| ApiError::not_found(format!("no upstream named {name:?}")).into())
}

#[derive(Serialize)]
struct TcpList {
    tcp: Vec<crate::tcp::TcpView>,
}

async fn list_tcp(State(s): State<AdminState>, Who(who): Who) -> ApiResult<TcpList> {
    allow(&s, &who, Access::Read, &Names::prefix(""))?;
    Ok(axum::Json(TcpList {
        tcp: s.gateway.tcp.views(),
    }))
}

// --- API keys -------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    /// Who will use the key.
    consumer: String,
    /// What it may do.
    #[serde(default)]
    scopes: Vec<String>,
}

/// A key as listed: everything but its digest.
#[derive(Serialize)]
struct KeyView {
    id: String,
    consumer: String,
    scopes: Vec<String>,
    created_ms: u64,
    /// The key itself: only in the answer that made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

impl KeyView {
    fn of(record: crate::edge_auth::KeyRecord, key: Option<String>) -> KeyView {
        KeyView {
            id: record.id,
            consumer: record.consumer,
            scopes: record.scopes,
            created_ms: record.created_ms,
            key,
        }
    }
}

fn key_path(id: &str) -> Vec<u8> {
    format!("{}{id}", crate::edge_auth::KEYS_PREFIX).into_bytes()
}

async fn create_key(
    State(s): State<AdminState>,
    Who(who): Who,
    ApiJson(new): ApiJson<NewKey>,
) -> ApiResult<KeyView> {
    allow(
        &s,
        &who,
        Access::Write,
        &Names::one(format!("keys/{}", new.consumer)),
    )?;
    if new.consumer.is_empty() || new.consumer.len() > 200 {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "give a consumer name (1 to 200 bytes)",
        )
        .into());
    }
    let (text, record) = crate::edge_auth::new_key(&new.consumer, new.scopes);
    let value = serde_json::to_vec(&record)
        .map_err(|e| ApiError::internal(format!("encode the key: {e}")))?;
    s.kv.put(strata_proto::kv::PutRequest {
        key: key_path(&record.id),
        value,
        ..Default::default()
    })
    .await?;
    tracing::info!(id = %record.id, consumer = %record.consumer, by = %who.who(), "gateway API key created");
    Ok(axum::Json(KeyView::of(record, Some(text))))
}

#[derive(Serialize)]
struct KeyList {
    keys: Vec<KeyView>,
}

async fn list_keys(State(s): State<AdminState>, Who(who): Who) -> ApiResult<KeyList> {
    allow(&s, &who, Access::Read, &Names::prefix("keys/"))?;
    let answer =
        s.kv.range(strata_proto::kv::RangeRequest {
            key: crate::edge_auth::KEYS_PREFIX.as_bytes().to_vec(),
            prefix: true,
            ..Default::default()
        })
        .await?;
    Ok(axum::Json(KeyList {
        keys: answer
            .kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .map(|record| KeyView::of(record, None))
            .collect(),
    }))
}

#[derive(Serialize)]
struct Revoked {
    revoked: String,
}

async fn revoke_key(
    State(s): State<AdminState>,
    Who(who): Who,
    Path(id): Path<String>,
) -> ApiResult<Revoked> {
    allow(&s, &who, Access::Write, &Names::prefix("keys/"))?;
    let deleted =
        s.kv.delete_range(strata_proto::kv::DeleteRangeRequest {
            key: key_path(&id),
            ..Default::default()
        })
        .await?;
    if deleted.deleted == 0 {
        return Err(ApiError::not_found(format!("no API key with id {id:?}")).into());
    }
    tracing::info!(%id, by = %who.who(), "gateway API key revoked");
    Ok(axum::Json(Revoked { revoked: id }))
}
