//! Prometheus's HTTP API on the node's API listener, so Grafana's Prometheus data source,
//! `promtool` and existing scripts work unchanged (`http://NODE:7700` is the server URL), and
//! remote write at `/api/v1/write`.
//!
//! Answers use Prometheus's envelope: `{"status":"success","data":...}`, or
//! `{"status":"error","errorType":"bad_data","error":"..."}` with 400 (422 for a query that
//! parsed but could not run, 503 for a timeout).

use crate::exposition::Metadata;
use crate::ingest::{Ingest, PEER_WRITE_PATH};
use crate::model::{matcher, Labels, Queryable, Series};
use crate::promql::{Engine, QueryError, Value};
use crate::remote;
use crate::scrape::Targets;
use crate::store::Store;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use promql_parser::label::Matcher;
use serde_json::{json, Map, Value as Json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use strata_auth::{Access, Caller, Kind, Names};
use strata_http::Who;

/// Most points a range query may return per series (as Prometheus).
const MAX_POINTS: i64 = 11_000;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The store.
    pub store: Arc<Store>,
    /// The ingest path (remote write).
    pub ingest: Arc<Ingest>,
    /// Scrape targets.
    pub targets: Arc<Targets>,
    /// The query engine.
    pub engine: Arc<Engine>,
    /// Access control.
    pub auth: strata_auth::Auth,
    /// The scrape interval, for `/api/v1/targets`.
    pub scrape_interval: Duration,
    /// The scrape timeout.
    pub scrape_timeout: Duration,
    /// Largest remote-write body, decompressed.
    pub max_request_bytes: usize,
    /// Alerting and recording rules, as `/api/v1/rules` and `/api/v1/alerts` show them.
    pub rules: Arc<dyn RulesView>,
    /// The KV store (registry instances for `http_sd`).
    pub kv: Arc<dyn strata_store::KvApi>,
    /// The live monitor nodes.
    pub membership: Arc<crate::scrape::Membership>,
}

/// What the rule evaluator shows the API.
pub trait RulesView: Send + Sync {
    /// `data` of `/api/v1/rules`.
    fn rules(&self) -> Json;
    /// `data` of `/api/v1/alerts`.
    fn alerts(&self) -> Json;
}

/// A rules view with no rules.
pub struct NoRules;

impl RulesView for NoRules {
    fn rules(&self) -> Json {
        json!({"groups": []})
    }
    fn alerts(&self) -> Json {
        json!({"alerts": []})
    }
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/query", get(query).post(query))
        .route("/api/v1/query_range", get(query_range).post(query_range))
        .route("/api/v1/series", get(series).post(series))
        .route("/api/v1/labels", get(labels).post(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/metadata", get(metadata))
        .route("/api/v1/targets", get(targets))
        .route("/api/v1/rules", get(rules))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .route("/api/v1/write", post(write))
        .route("/v1/monitor/sd", get(http_sd))
        .route("/v1/monitor/flush", post(flush))
        .route("/v1/monitor/stats", get(stats))
        .route("/v1/monitor/ping", get(|| async { "monitor\n" }))
        .with_state(state)
}

/// The routes other monitor nodes call on this node's peer listener.
pub fn peer_router(state: ApiState) -> Router {
    Router::new()
        .route(PEER_WRITE_PATH, post(replica_write))
        .with_state(state)
}

/// An API failure in Prometheus's shape.
pub struct ApiFailure {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiFailure {
    fn internal(message: impl Into<String>) -> ApiFailure {
        ApiFailure {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "internal",
            message: message.into(),
        }
    }

    fn bad_data(message: impl Into<String>) -> ApiFailure {
        ApiFailure {
            status: StatusCode::BAD_REQUEST,
            kind: "bad_data",
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"status": "error", "errorType": self.kind, "error": self.message})),
        )
            .into_response()
    }
}

impl From<strata_proto::error::ApiError> for ApiFailure {
    fn from(e: strata_proto::error::ApiError) -> Self {
        let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::FORBIDDEN);
        ApiFailure {
            status,
            kind: "unauthorized",
            message: e.message,
        }
    }
}

impl From<QueryError> for ApiFailure {
    fn from(e: QueryError) -> Self {
        let (status, kind) = match &e {
            QueryError::Parse(_) => (StatusCode::BAD_REQUEST, "bad_data"),
            QueryError::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            _ => (StatusCode::UNPROCESSABLE_ENTITY, "execution"),
        };
        ApiFailure {
            status,
            kind,
            message: e.to_string(),
        }
    }
}

type ApiResult = Result<axum::Json<Json>, ApiFailure>;

fn success(data: Json) -> ApiResult {
    Ok(axum::Json(json!({"status": "success", "data": data})))
}

fn allow(s: &ApiState, who: &Caller, access: Access) -> Result<(), ApiFailure> {
    s.auth
        .gate
        .check(
            who,
            Kind::Monitor,
            access,
            &Names::prefix(Vec::new()),
            "monitor",
        )
        .map_err(ApiFailure::from)
}

/// Form or query-string parameters, repeated keys kept.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Params {
        let mut pairs: Vec<(String, String)> = Vec::new();
        if let Some(q) = query {
            pairs.extend(form_urlencoded::parse(q.as_bytes()).into_owned());
        }
        let form = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if form {
            pairs.extend(form_urlencoded::parse(body).into_owned());
        }
        Params(pairs)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn time(&self, name: &str) -> Result<Option<i64>, ApiFailure> {
        self.get(name)
            .map(|v| {
                parse_time(v)
                    .map_err(|e| ApiFailure::bad_data(format!("invalid parameter \"{name}\": {e}")))
            })
            .transpose()
    }
}

/// A required parameter's absence.
fn missing(name: &str) -> ApiFailure {
    ApiFailure::bad_data(format!("invalid parameter \"{name}\": missing"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A time as the API takes it: Unix seconds (fractions allowed) or RFC 3339.
pub fn parse_time(v: &str) -> Result<i64, String> {
    if let Ok(secs) = v.parse::<f64>() {
        if !secs.is_finite() {
            return Err(format!("cannot parse {v:?} to a valid timestamp"));
        }
        return Ok((secs * 1000.0).round() as i64);
    }
    humantime::parse_rfc3339_weak(v.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(v))
        .map(|t| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        })
        .map_err(|_| format!("cannot parse {v:?} to a valid timestamp"))
}

/// A duration as the API takes it: seconds (fractions allowed) or a PromQL duration.
pub fn parse_step(v: &str) -> Result<i64, String> {
    if let Ok(secs) = v.parse::<f64>() {
        if !secs.is_finite() || secs <= 0.0 {
            return Err(format!("cannot parse {v:?} to a valid duration"));
        }
        return Ok((secs * 1000.0).round() as i64);
    }
    promql_parser::util::parse_duration(v)
        .map(|d| d.as_millis() as i64)
        .map_err(|_| format!("cannot parse {v:?} to a valid duration"))
}

pub use crate::model::format_value;

fn point(t: i64, v: f64) -> Json {
    json!([t as f64 / 1000.0, format_value(v)])
}

fn metric(labels: &Labels) -> Json {
    let mut map = Map::new();
    for (k, v) in labels.iter() {
        map.insert(k.to_string(), Json::String(v.to_string()));
    }
    Json::Object(map)
}

fn matrix(series: &[Series]) -> Json {
    Json::Array(
        series
            .iter()
            .map(|s| {
                json!({
                    "metric": metric(&s.labels),
                    "values": s.samples.iter().map(|(t, v)| point(*t, *v)).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// A query's result as `data`.
pub fn value_json(value: &Value) -> Json {
    match value {
        Value::Scalar(t, v) => json!({"resultType": "scalar", "result": point(*t, *v)}),
        Value::String(t, s) => json!({"resultType": "string", "result": [*t as f64 / 1000.0, s]}),
        Value::Vector(samples) => json!({
            "resultType": "vector",
            "result": samples.iter().map(|s| json!({"metric": metric(&s.labels), "value": point(s.t, s.v)})).collect::<Vec<_>>(),
        }),
        Value::Matrix(series) => json!({"resultType": "matrix", "result": matrix(series)}),
    }
}

async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, QueryError> + Send + 'static,
) -> Result<T, ApiFailure> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(ApiFailure::from),
        Err(e) => Err(ApiFailure::internal(e.to_string())),
    }
}

async fn query(
    State(s): State<ApiState>,
    Who(who): Who,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    allow(&s, &who, Access::Read)?;
    let p = Params::parse(raw.as_deref(), &headers, &body);
    let q = p.get("query").ok_or_else(|| missing("query"))?.to_string();
    let t = p.time("time")?.unwrap_or_else(now_ms);
    let engine = s.engine.clone();
    let store = s.store.clone();
    let value = run_blocking(move || engine.instant(&*store, &q, t)).await?;
    success(value_json(&value))
}

async fn query_range(
    State(s): State<ApiState>,
    Who(who): Who,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    allow(&s, &who, Access::Read)?;
    let p = Params::parse(raw.as_deref(), &headers, &body);
    let q = p.get("query").ok_or_else(|| missing("query"))?.to_string();
    let start = p.time("start")?.ok_or_else(|| missing("start"))?;
    let end = p.time("end")?.ok_or_else(|| missing("end"))?;
    let step = p.get("step").ok_or_else(|| missing("step")).and_then(|v| {
        parse_step(v).map_err(|e| ApiFailure::bad_data(format!("invalid parameter \"step\": {e}")))
    })?;
    if end < start {
        return Err(ApiFailure::bad_data(
            "end timestamp must not be before start time",
        ));
    }
    if (end - start) / step > MAX_POINTS {
        return Err(ApiFailure::bad_data(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        ));
    }
    let engine = s.engine.clone();
    let store = s.store.clone();
    let series = run_blocking(move || engine.range(&*store, &q, start, end, step)).await?;
    success(json!({"resultType": "matrix", "result": matrix(&series)}))
}

fn selectors(p: &Params) -> Result<Vec<Vec<Matcher>>, ApiFailure> {
    p.all("match[]")
        .into_iter()
        .map(|m| {
            parse_selector(m)
                .map_err(|e| ApiFailure::bad_data(format!("invalid parameter \"match[]\": {e}")))
        })
        .collect()
}

/// The matchers of a series selector (`up{job="x"}`).
pub fn parse_selector(text: &str) -> Result<Vec<Matcher>, String> {
    match crate::promql::parse_expr(text)? {
        promql_parser::parser::Expr::VectorSelector(vs) => {
            let mut matchers = vs.matchers.matchers.clone();
            if let Some(name) = &vs.name {
                matchers.push(matcher("__name__", "=", name)?);
            }
            Ok(matchers)
        }
        _ => Err(format!("{text:?} is not a series selector")),
    }
}

fn range_of(p: &Params) -> Result<(i64, i64), ApiFailure> {
    Ok((
        p.time("start")?.unwrap_or(i64::MIN / 2),
        p.time("end")?.unwrap_or(i64::MAX / 2),
    ))
}

async fn series(
    State(s): State<ApiState>,
    Who(who): Who,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    allow(&s, &who, Access::Read)?;
    let p = Params::parse(raw.as_deref(), &headers, &body);
    let sets = selectors(&p)?;
    if sets.is_empty() {
        return Err(ApiFailure::bad_data("no match[] parameter provided"));
    }
    let (start, end) = range_of(&p)?;
    let store = s.store.clone();
    let found = run_blocking(move || {
        let mut found = BTreeSet::new();
        for m in &sets {
            for series in store.select(m, start, end) {
                found.insert(series.labels);
            }
        }
        Ok(found)
    })
    .await?;
    success(Json::Array(found.iter().map(metric).collect()))
}

async fn labels(
    State(s): State<ApiState>,
    Who(who): Who,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    allow(&s, &who, Access::Read)?;
    let p = Params::parse(raw.as_deref(), &headers, &body);
    let sets = selectors(&p)?;
    if sets.is_empty() && p.get("start").is_none() {
        return success(json!(s.store.label_names()));
    }
    let (start, end) = range_of(&p)?;
    let store = s.store.clone();
    let names = run_blocking(move || {
        let sets = if sets.is_empty() {
            vec![Vec::new()]
        } else {
            sets
        };
        let mut names = BTreeSet::new();
        for m in &sets {
            for series in store.select(m, start, end) {
                names.extend(series.labels.iter().map(|(k, _)| k.to_string()));
            }
        }
        Ok(names)
    })
    .await?;
    success(json!(names))
}

async fn label_values(
    State(s): State<ApiState>,
    Who(who): Who,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    allow(&s, &who, Access::Read)?;
    let p = Params::parse(raw.as_deref(), &HeaderMap::new(), &[]);
    let mut sets = selectors(&p)?;
    if sets.is_empty() {
        sets.push(vec![matcher(&name, "!=", "").map_err(ApiFailure::bad_data)?]);
    }
    let (start, end) = range_of(&p)?;
    let store = s.store.clone();
    let values = run_blocking(move || {
        let mut values = BTreeSet::new();
        for m in &sets {
            for series in store.select(m, start, end) {
                if let Some(v) = series.labels.get(&name) {
                    values.insert(v.to_string());
                }
            }
        }
        Ok(values)
    })
    .await?;
    success(json!(values))
}

async fn metadata(State(s): State<ApiState>, Who(who): Who, RawQuery(raw): RawQuery) -> ApiResult {
    allow(&s, &who, Access::Read)?;
    let p = Params::parse(raw.as_deref(), &HeaderMap::new(), &[]);
    let wanted = p.get("metric");
    let all: BTreeMap<String, Metadata> = s.targets.metadata();
    let mut out = Map::new();
    for (name, m) in all {
        if wanted.is_some_and(|w| w != name) {
            continue;
        }
        out.insert(name, json!([m]));
    }
    success(Json::Object(out))
}

fn rfc3339(ms: i64) -> String {
    if ms <= 0 {
        return "0001-01-01T00:00:00Z".into();
    }
    let t = UNIX_EPOCH + Duration::from_millis(ms as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

async fn targets(State(s): State<ApiState>, Who(who): Who) -> ApiResult {
    allow(&s, &who, Access::Read)?;
    let active: Vec<Json> = s
        .targets
        .list()
        .into_iter()
        .map(|t| {
            json!({
                "discoveredLabels": t.discovered,
                "labels": t.labels,
                "scrapePool": t.labels.get("job").cloned().unwrap_or_default(),
                "scrapeUrl": t.url,
                "globalUrl": t.url,
                "lastError": t.last_error,
                "lastScrape": rfc3339(t.last_scrape_ms),
                "lastScrapeDuration": t.last_duration,
                "health": t.health,
                "scrapeInterval": humantime::format_duration(s.scrape_interval).to_string(),
                "scrapeTimeout": humantime::format_duration(s.scrape_timeout).to_string(),
                "scrapedBy": t.owner,
                "scrapes": t.scrapes,
            })
        })
        .collect();
    success(json!({"activeTargets": active, "droppedTargets": []}))
}

async fn rules(State(s): State<ApiState>, Who(who): Who) -> ApiResult {
    allow(&s, &who, Access::Read)?;
    success(s.rules.rules())
}

async fn alerts(State(s): State<ApiState>, Who(who): Who) -> ApiResult {
    allow(&s, &who, Access::Read)?;
    success(s.rules.alerts())
}

async fn buildinfo() -> ApiResult {
    success(json!({
        "version": "2.42.0",
        "revision": concat!("strata-", env!("CARGO_PKG_VERSION")),
        "branch": "strata",
        "buildUser": "strata",
        "buildDate": "",
        "goVersion": "none",
    }))
}

/// Writes everything in the head out as blocks now (benchmarks: the size on disk of all the
/// data, as after compaction), then answers the store's counts.
async fn flush(State(s): State<ApiState>, Who(who): Who) -> ApiResult {
    allow(&s, &who, Access::Write)?;
    let store = s.store.clone();
    let flushed = tokio::task::spawn_blocking(move || store.flush_head()).await;
    match flushed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(ApiFailure::internal(format!("flush failed: {e}"))),
        Err(e) => return Err(ApiFailure::internal(e.to_string())),
    }
    stats(State(s), Who(who)).await
}

/// The store's counts: head series and samples, blocks, their bytes and samples, WAL bytes.
async fn stats(State(s): State<ApiState>, Who(who): Who) -> ApiResult {
    allow(&s, &who, Access::Read)?;
    let st = s.store.stats();
    let nodes = s.membership.live();
    success(json!({
        "monitor_nodes": nodes,
        "peers": s.ingest.peer_count(),
        "head_series": st.head_series,
        "head_samples": st.head_samples,
        "head_chunk_bytes": st.head_bytes,
        "blocks": st.blocks,
        "downsampled_blocks": st.downsampled_blocks,
        "block_bytes": st.block_bytes,
        "block_samples": st.block_samples,
        "wal_bytes": st.wal_bytes,
        "min_time_ms": st.min_time,
        "bytes_per_sample": if st.block_samples > 0 { st.block_bytes as f64 / st.block_samples as f64 } else { 0.0 },
    }))
}

/// Prometheus's `http_sd_configs` format: one group per registered instance, its address
/// (the metrics port when the instance names one) and `__meta_strata_*` labels for
/// relabelling. `?service=` and `?namespace=` narrow it.
async fn http_sd(
    State(s): State<ApiState>,
    Who(who): Who,
    RawQuery(raw): RawQuery,
) -> Result<axum::Json<Json>, ApiFailure> {
    let p = Params::parse(raw.as_deref(), &HeaderMap::new(), &[]);
    let namespace = p.get("namespace");
    let service = p.get("service");
    let names = match (namespace, service) {
        (Some(ns), Some(svc)) => Names::one(format!("{ns}/{svc}")),
        (Some(ns), None) => Names::prefix(format!("{ns}/")),
        _ => Names::prefix(Vec::new()),
    };
    s.auth
        .gate
        .check(
            &who,
            Kind::Registry,
            Access::Read,
            &names,
            "monitor http_sd",
        )
        .map_err(ApiFailure::from)?;
    let request = strata_proto::kv::RangeRequest {
        key: strata_api::registry::instances_prefix(
            namespace,
            service.filter(|_| namespace.is_some()),
        )
        .into_bytes(),
        prefix: true,
        serializable: true,
        ..Default::default()
    };
    let found = s.kv.range(request).await.map_err(ApiFailure::from)?;
    let mut groups = Vec::new();
    for kv in found.kvs {
        let Ok(i) = serde_json::from_slice::<strata_api::registry::Instance>(&kv.value) else {
            continue;
        };
        if service.is_some_and(|svc| svc != i.service) {
            continue;
        }
        let port = i
            .meta
            .get("metrics_port")
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or(i.port);
        let host = if i.address.contains(':') {
            format!("[{}]", i.address)
        } else {
            i.address.clone()
        };
        let mut labels = Map::new();
        let mut put = |k: String, v: String| {
            labels.insert(k, Json::String(v));
        };
        put("__meta_strata_namespace".into(), i.namespace.clone());
        put("__meta_strata_service".into(), i.service.clone());
        put("__meta_strata_instance_id".into(), i.id.clone());
        put("__meta_strata_address".into(), i.address.clone());
        put("__meta_strata_port".into(), i.port.to_string());
        put(
            "__meta_strata_tags".into(),
            format!(",{},", i.tags.join(",")),
        );
        put(
            "__meta_strata_health".into(),
            if i.healthy() {
                "passing".into()
            } else {
                "critical".into()
            },
        );
        for (k, v) in i.meta.iter() {
            let key: String = k
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            put(format!("__meta_strata_meta_{key}"), v.clone());
        }
        if let Some(path) = i.meta.get("metrics_path").filter(|p| p.starts_with('/')) {
            put("__metrics_path__".into(), path.clone());
        }
        put("job".into(), i.service.clone());
        groups.push(json!({"targets": [format!("{host}:{port}")], "labels": labels}));
    }
    Ok(axum::Json(Json::Array(groups)))
}

async fn write(
    State(s): State<ApiState>,
    Who(who): Who,
    body: Bytes,
) -> Result<StatusCode, ApiFailure> {
    allow(&s, &who, Access::Write)?;
    let batch = decode_write(&s, &body)?;
    match s.ingest.write_durable("remote_write", batch).await {
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        // 503: remote-write clients retry it; a retry never doubles a sample.
        Err(message) => Err(ApiFailure {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "unavailable",
            message,
        }),
    }
}

/// A batch another monitor node ingested: stored here, not sent on.
async fn replica_write(State(s): State<ApiState>, body: Bytes) -> Result<StatusCode, ApiFailure> {
    let batch = decode_write(&s, &body)?;
    let ingest = s.ingest.clone();
    match tokio::task::spawn_blocking(move || ingest.write("replica", &batch)).await {
        Ok(Ok(_)) => Ok(StatusCode::NO_CONTENT),
        Ok(Err(e)) => Err(ApiFailure::internal(format!(
            "cannot store the samples: {e}"
        ))),
        Err(e) => Err(ApiFailure::internal(e.to_string())),
    }
}

/// Decodes a remote write body and records the metric metadata it carries.
fn decode_write(s: &ApiState, body: &[u8]) -> Result<Vec<(Labels, i64, f64)>, ApiFailure> {
    let (batch, metadata) =
        remote::decode(body, s.max_request_bytes.max(32 << 20)).map_err(ApiFailure::bad_data)?;
    s.targets.add_metadata(metadata.into_iter().map(|m| {
        (
            m.metric_family_name.clone(),
            Metadata {
                kind: remote::kind_name(m.kind).to_string(),
                help: m.help,
                unit: m.unit,
            },
        )
    }));
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_steps_and_values_read_and_print_as_prometheus_does() {
        assert_eq!(parse_time("1435781451.781").unwrap(), 1_435_781_451_781);
        assert_eq!(
            parse_time("2015-07-01T20:10:51.781Z").unwrap(),
            1_435_781_451_781
        );
        assert!(parse_time("yesterday").is_err());
        assert_eq!(parse_step("15").unwrap(), 15_000);
        assert_eq!(parse_step("1m30s").unwrap(), 90_000);
        assert!(parse_step("-1").is_err());
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(0.1), "0.1");
        assert_eq!(format_value(1e21), "1000000000000000000000");
        assert_eq!(format_value(3.0), "3");
    }
}
