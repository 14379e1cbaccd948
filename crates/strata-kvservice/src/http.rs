//! The native HTTP/JSON API under `/v1/`, plus `/metrics`, `/livez`, `/readyz`, and the
//! node-to-node `/internal/leader` route (and its stream, `/internal/leader/stream`) on the
//! raft listener.
//!
//! Every error is `{"code": "...", "message": "..."}` with the matching status, including
//! malformed JSON, oversized bodies, unknown routes and wrong methods.

use crate::service::{KvService, LeaderRequest};
use crate::watch;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::sync::Arc;
use strata_proto::error::{ApiError, ErrorCode};
use strata_proto::kv::{
    CompactRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseIdRequest, PutRequest,
    RangeRequest, TxnRequest, WatchRequest,
};
use strata_proto::NodeInfo;
use strata_raft::network::Postcard;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The service layer.
    pub service: Arc<KvService>,
    /// Access control.
    pub auth: strata_auth::Auth,
    /// Cancelled at shutdown; ends open watches.
    pub cancel: CancellationToken,
    /// Tracks watch tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
}

use strata_auth::kv as needs;
use strata_auth::{Access, Caller, Names};
use strata_http::{json_event, ApiResult, Who};
pub use strata_http::{ApiJson, ErrorResponse};

/// Query parameters whose rejections are API errors.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ErrorResponse;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ErrorResponse(query_rejection(rejection))),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::bad_request(format!("invalid query string: {}", rejection.body_text()))
}

/// Builds the client API router.
pub fn api_router(state: ApiState, body_limit: usize, extra: Router) -> Router {
    let gate = strata_http::GateLayer {
        auth: state.auth.clone(),
        api: "native",
        token_of: strata_http::bearer_token,
        open: open_path,
        reject: |e| ErrorResponse(e).into_response(),
    };
    let auth_routes = crate::auth_http::routes(state.auth.clone());
    Router::new()
        .route("/v1/kv/range", post(range))
        .route("/v1/kv/range/stream", post(range_stream))
        .route("/v1/kv/put", post(put))
        .route("/v1/kv/delete", post(delete_range))
        .route("/v1/kv/txn", post(txn))
        .route("/v1/kv/compact", post(compact))
        .route("/v1/kv/watch", get(watch_get).post(watch_post))
        .route("/v1/lease/grant", post(lease_grant))
        .route("/v1/lease/revoke", post(lease_revoke))
        .route("/v1/lease/keepalive", post(lease_keepalive))
        .route("/v1/lease/timetolive", post(lease_time_to_live))
        .route("/v1/lease/list", get(lease_list).post(lease_list))
        .route("/v1/lock/acquire", post(lock_acquire))
        .route("/v1/lock/release", post(lock_release))
        .route("/v1/election/campaign", post(election_campaign))
        .route("/v1/election/proclaim", post(election_proclaim))
        .route("/v1/election/leader", post(election_leader))
        .route("/v1/election/resign", post(lock_release))
        .route(
            "/v1/election/observe",
            get(election_observe_get).post(election_observe_post),
        )
        .route("/v1/cluster/status", get(status))
        .route("/v1/cluster/members", post(add_member))
        .route("/v1/cluster/snapshot", get(backup))
        .route("/v1/cluster/members/{id}", delete(remove_member))
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(state)
        .merge(auth_routes)
        .merge(extra)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            gate,
            strata_http::authenticate,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
}

/// Paths served without a credential when access control is on: health, metrics, cluster
/// status (as etcd serves them), logging in, the monitor's liveness probe (which says only
/// that the monitor runs), and the console's files (its data comes through the API, with the
/// user's token).
fn open_path(path: &str) -> bool {
    path == "/ui"
        || path.starts_with("/ui/")
        || matches!(
            path,
            "/livez"
                | "/readyz"
                | "/metrics"
                | "/v1/cluster/status"
                | "/v1/auth/login"
                | "/v1/auth/status"
                | "/v1/monitor/ping"
        )
}

/// etcd's largest lease TTL, in seconds; longer would overflow the lease clock.
const MAX_LEASE_TTL_SECONDS: i64 = 9_000_000_000;

/// Allows `who` `access` on every key attached to lease `id` (an unknown lease passes: the
/// call itself answers it).
async fn allow_lease_keys(
    s: &ApiState,
    who: &Caller,
    id: i64,
    access: Access,
    action: &str,
) -> Result<(), ErrorResponse> {
    if !who.enforced() || who.is_root() {
        return Ok(());
    }
    match s.service.lease_time_to_live(id, true).await {
        Ok(lease) => count_error(
            s,
            s.auth
                .gate
                .check_lease_keys(who, &lease.keys, access, action),
        )
        .map(|_| ()),
        Err(_) => Ok(()),
    }
}

/// Allows only root (or anyone with access control off).
fn allow_root(s: &ApiState, who: &Caller, action: &str) -> Result<(), ErrorResponse> {
    count_error(s, s.auth.gate.check_root(who, action)).map(|_| ())
}

/// Checks `needs` of a KV request for `who`, counting a refusal like any other error.
fn allow(
    s: &ApiState,
    who: &Caller,
    needs: &[needs::Need],
    action: &str,
) -> Result<(), ErrorResponse> {
    let checked = s.auth.gate.check_kv(who, needs, action);
    count_error(s, checked).map(|_| ())
}

async fn not_found() -> ErrorResponse {
    ErrorResponse(ApiError::not_found(
        "no such route; the API lives under /v1/ (see docs/api.md)",
    ))
}

async fn method_not_allowed() -> ErrorResponse {
    ErrorResponse(ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed for this route",
    ))
}

fn count_error<T>(
    state: &ApiState,
    result: Result<T, ApiError>,
) -> Result<axum::Json<T>, ErrorResponse> {
    match result {
        Ok(value) => Ok(axum::Json(value)),
        Err(e) => {
            state
                .service
                .metrics
                .api_errors
                .with_label_values(&[e.code.as_str()])
                .inc();
            Err(ErrorResponse(e))
        }
    }
}

async fn range(
    State(s): State<ApiState>,
    Who(who): Who,
    ApiJson(req): ApiJson<RangeRequest>,
) -> ApiResult<impl Serialize> {
    allow(&s, &who, &needs::range(&req), "range")?;
    count_error(&s, s.service.range(req).await)
}

/// A range streamed as JSON lines: `{"header": ...}`, then one `{"kvs": [...]}` per page of up
/// to 1,000 keys, all read at the header's revision, then `{"done": {"count": N}}`. A stream
/// that ends without the `done` line was cut short (an `{"error": ...}` line says why when it
/// can).
async fn range_stream(
    State(s): State<ApiState>,
    Who(who): Who,
    ApiJson(req): ApiJson<RangeRequest>,
) -> Result<Response, ErrorResponse> {
    allow(&s, &who, &needs::range(&req), "range")?;
    let stream = count_error(&s, s.service.range_stream(req).await)?.0;
    /// The lines of the stream, in the API's own field order.
    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum Line {
        Header(strata_proto::kv::ResponseHeader),
        Kvs(Vec<strata_proto::kv::KeyValue>),
        Done { count: usize },
        Error(ApiError),
    }
    let first = Line::Header(stream.header.clone());
    let lines = futures::stream::unfold(
        (Some(stream), Some(first), 0usize),
        |(stream, first, count)| async move {
            if let Some(first) = first {
                return Some((line(&first), (stream, None, count)));
            }
            let mut stream = stream?;
            match stream.next_page().await {
                Ok(Some(kvs)) => {
                    let count = count + kvs.len();
                    Some((line(&Line::Kvs(kvs)), (Some(stream), None, count)))
                }
                Ok(None) => Some((line(&Line::Done { count }), (None, None, count))),
                Err(e) => Some((line(&Line::Error(e)), (None, None, count))),
            }
        },
    );
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines.map(Ok::<_, Infallible>)),
    )
        .into_response())
}

/// One JSON line.
fn line(value: &impl Serialize) -> Bytes {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

async fn put(
    State(s): State<ApiState>,
    Who(who): Who,
    ApiJson(req): ApiJson<PutRequest>,
) -> ApiResult<impl Serialize> {
    allow(&s, &who, &needs::put(&req), "put")?;
    count_error(&s, s.service.put(req).await)
}

async fn delete_range(
    State(s): State<ApiState>,
    Who(who): Who,
    ApiJson(req): ApiJson<DeleteRangeRequest>,
) -> ApiResult<impl Serialize> {
    allow(&s, &who, &needs::delete(&req), "delete")?;
    count_error(&s, s.service.delete(req).await)
}

async fn txn(
    State(s): State<ApiState>,
    Who(who): Who,
    ApiJson(req): ApiJson<TxnRequest>,
) -> ApiResult<impl Serialize> {
    allow(&s, &who, &needs::txn(&req), "txn")?;
    count_error(&s, s.service.txn(req).await)
}

async fn compact(
    State(s): State<ApiState>,
    Who(who): Who,
    ApiJson(req): ApiJson<CompactRequest>,
) -> ApiResult<impl Serialize> {
    allow_root(&s, &who, "compact")?;
    count_error(&s, s.service.compact(req).await)
}

async fn lease_grant(
    State(s): State<ApiState>,
    ApiJson(req): ApiJson<LeaseGrantRequest>,
) -> ApiResult<impl Serialize> {
    if req.ttl > MAX_LEASE_TTL_SECONDS {
        return Err(ErrorResponse(ApiError::bad_request(format!(
            "lease TTL {} s is over the limit of {MAX_LEASE_TTL_SECONDS} s",
            req.ttl
        ))));
    }
    count_error(&s, s.service.lease_grant(req).await)
}

async fn lease_revoke(
    State(s): State<ApiState>,
    Who(who): Who,
    ApiJson(req): ApiJson<LeaseIdRequest>,
) -> ApiResult<impl Serialize> {
    allow_lease_keys(&s, &who, req.id, Access::Write, "lease_revoke").await?;
    count_error(&s, s.service.lease_revoke(req.id).await)
}

async fn lease_keepalive(
    State(s): State<ApiState>,
    ApiJson(req): ApiJson<LeaseIdRequest>,
) -> ApiResult<impl Serialize> {
    count_error(&s, s.service.lease_keepalive(req.id).await)
}

async fn lease_time_to_live(
    State(s): State<ApiState>,
    Who(who): Who,
    ApiJson(req): ApiJson<LeaseIdRequest>,
) -> ApiResult<impl Serialize> {
    if req.keys {
        allow_lease_keys(&s, &who, req.id, Access::Read, "lease_keys").await?;
    }
    count_error(&s, s.service.lease_time_to_live(req.id, req.keys).await)
}

async fn lease_list(State(s): State<ApiState>) -> ApiResult<impl Serialize> {
    count_error(&s, s.service.lease_list().await)
}

/// Body of `POST /v1/lock/acquire` and `POST /v1/election/campaign`.
#[derive(Debug, Deserialize)]
struct Contend {
    #[serde(with = "strata_proto::bytes_serde")]
    name: Vec<u8>,
    lease: i64,
    #[serde(with = "strata_proto::bytes_serde", default)]
    value: Vec<u8>,
}

/// Body of `POST /v1/lock/release`, `/v1/election/resign` and `/v1/election/proclaim`.
#[derive(Debug, Deserialize)]
struct Owned {
    #[serde(with = "strata_proto::bytes_serde")]
    key: Vec<u8>,
    /// The owner key's create revision (the fencing token); 0 releases unconditionally.
    #[serde(default)]
    revision: i64,
    #[serde(default)]
    lease: i64,
    #[serde(with = "strata_proto::bytes_serde", default)]
    value: Vec<u8>,
}

/// Body (or query) naming an election.
#[derive(Debug, Deserialize)]
struct ElectionName {
    #[serde(with = "strata_proto::bytes_serde")]
    name: Vec<u8>,
    #[serde(default)]
    serializable: bool,
}

#[derive(Serialize)]
struct LeaderReply {
    leader: Option<strata_proto::kv::KeyValue>,
}

async fn lock_acquire(
    State(s): State<ApiState>,
    Who(who): Who,
    ApiJson(req): ApiJson<Contend>,
) -> ApiResult<impl Serialize> {
    allow(
        &s,
        &who,
        &[(Access::Write, Names::prefix(req.name.clone()))],
        "lock",
    )?;
    count_error(&s, s.service.lock(req.name, req.lease).await)
}

async fn lock_release(
    State(s): State<ApiState>,
    Who(who): Who,
    ApiJson(req): ApiJson<Owned>,
) -> ApiResult<impl Serialize> {
    allow(
        &s,
        &who,
        &[(Access::Write, Names::one(req.key.clone()))],
        "unlock",
    )?;
    count_error(
        &s,
        s.service
            .unlock(req.key, req.revision)
            .await
            .map(|()| Done { ok: true }),
    )
}

async fn election_campaign(
    State(s): State<ApiState>,
    Who(who): Who,
    ApiJson(req): ApiJson<Contend>,
) -> ApiResult<impl Serialize> {
    allow(
        &s,
        &who,
        &[(Access::Write, Names::prefix(req.name.clone()))],
        "campaign",
    )?;
    count_error(&s, s.service.campaign(req.name, req.lease, req.value).await)
}

async fn election_proclaim(
    State(s): State<ApiState>,
    Who(who): Who,
    ApiJson(req): ApiJson<Owned>,
) -> ApiResult<impl Serialize> {
    allow(
        &s,
        &who,
        &[(Access::Write, Names::one(req.key.clone()))],
        "proclaim",
    )?;
    let leader = crate::coord::Ownership {
        key: req.key,
        revision: req.revision,
        lease: req.lease,
    };
    count_error(
        &s,
        s.service
            .proclaim(&leader, req.value)
            .await
            .map(|()| Done { ok: true }),
    )
}

async fn election_leader(
    State(s): State<ApiState>,
    Who(who): Who,
    ApiJson(req): ApiJson<ElectionName>,
) -> ApiResult<impl Serialize> {
    allow(
        &s,
        &who,
        &[(Access::Read, Names::prefix(req.name.clone()))],
        "leader",
    )?;
    let leader = s.service.election_leader(req.name, req.serializable).await;
    count_error(&s, leader.map(|leader| LeaderReply { leader }))
}

async fn election_observe_get(
    State(s): State<ApiState>,
    Who(who): Who,
    ApiQuery(req): ApiQuery<ElectionName>,
) -> Response {
    election_observe(s, who, req.name)
}

async fn election_observe_post(
    State(s): State<ApiState>,
    Who(who): Who,
    ApiJson(req): ApiJson<ElectionName>,
) -> Response {
    election_observe(s, who, req.name)
}

fn election_observe(s: ApiState, who: Caller, name: Vec<u8>) -> Response {
    let wanted = vec![(Access::Read, Names::prefix(name.clone()))];
    if let Err(e) = allow(&s, &who, &wanted, "observe") {
        return e.into_response();
    }
    match s.service.observe(name) {
        Ok(receiver) => event_stream(&s, who, wanted, "observe", ReceiverStream::new(receiver)),
        Err(e) => ErrorResponse(e).into_response(),
    }
}

/// Streams each message `receiver` yields as a JSON server-sent event, with keep-alives, for
/// as long as `who` may still do what `wanted` says.
fn event_stream<T: Serialize + Send + 'static>(
    s: &ApiState,
    who: Caller,
    wanted: Vec<needs::Need>,
    action: &'static str,
    messages: impl futures::Stream<Item = T> + Send + 'static,
) -> Response {
    let stream = messages.map(|message| Ok::<_, Infallible>(json_event(&message)));
    let stream = strata_http::guard_events(stream, s.auth.gate.clone(), who, move |gate, who| {
        gate.check_kv(who, &wanted, action)
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn status(State(s): State<ApiState>) -> ApiResult<impl Serialize> {
    Ok(axum::Json(s.service.status()))
}

/// Body of `POST /v1/cluster/members`.
#[derive(Debug, Deserialize)]
struct AddMember {
    id: u64,
    raft_addr: String,
    #[serde(default)]
    api_addr: String,
}

#[derive(Serialize)]
struct Done {
    ok: bool,
}

/// A backup of the whole state (`strata cluster snapshot save`): a snapshot file, streamed.
async fn backup(State(s): State<ApiState>, Who(who): Who) -> Result<Response, ErrorResponse> {
    allow_root(&s, &who, "snapshot")?;
    let backup = count_error(&s, s.service.backup().await)?.0;
    let chunks = ReceiverStream::new(backup.chunks).map(|chunk| {
        chunk
            .map(Bytes::from)
            .map_err(|e| std::io::Error::other(e.message))
    });
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_string(),
            ),
            (axum::http::header::CONTENT_LENGTH, backup.size.to_string()),
        ],
        axum::body::Body::from_stream(chunks),
    )
        .into_response())
}

async fn add_member(
    State(s): State<ApiState>,
    Who(who): Who,
    ApiJson(req): ApiJson<AddMember>,
) -> ApiResult<impl Serialize> {
    allow_root(&s, &who, "add_member")?;
    let info = NodeInfo {
        raft_addr: req.raft_addr,
        api_addr: req.api_addr,
        grpc_addr: String::new(),
    };
    count_error(
        &s,
        s.service
            .add_member(req.id, info, true)
            .await
            .map(|()| Done { ok: true }),
    )
}

async fn remove_member(
    State(s): State<ApiState>,
    Who(who): Who,
    Path(id): Path<String>,
) -> ApiResult<impl Serialize> {
    allow_root(&s, &who, "remove_member")?;
    let id: u64 = id.parse().map_err(|_| {
        ErrorResponse(ApiError::bad_request(format!(
            "member id {id:?} is not a number"
        )))
    })?;
    count_error(
        &s,
        s.service
            .remove_member(id)
            .await
            .map(|()| Done { ok: true }),
    )
}

async fn watch_get(
    State(s): State<ApiState>,
    Who(who): Who,
    ApiQuery(req): ApiQuery<WatchRequest>,
) -> Response {
    open_watch(s, who, req)
}

async fn watch_post(
    State(s): State<ApiState>,
    Who(who): Who,
    ApiJson(req): ApiJson<WatchRequest>,
) -> Response {
    open_watch(s, who, req)
}

fn open_watch(s: ApiState, who: Caller, req: WatchRequest) -> Response {
    let wanted = needs::watch(&req);
    if let Err(e) = allow(&s, &who, &wanted, "watch") {
        return e.into_response();
    }
    s.service.metrics.op("watch");
    match watch::open(s.service.clone(), req, s.cancel.child_token()) {
        Ok(receiver) => event_stream(&s, who, wanted, "watch", receiver),
        Err(e) => ErrorResponse(e).into_response(),
    }
}

async fn metrics(State(s): State<ApiState>) -> Response {
    crate::refresh_metrics(&s.service);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.service.metrics.render(),
    )
        .into_response()
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<ApiState>) -> Response {
    let status = s.service.status();
    let caught_up = status.commit_index.saturating_sub(status.applied_index) < 1000;
    if status.leader.is_some() && caught_up {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let reason = if status.leader.is_none() {
            "no leader"
        } else {
            "applying the log"
        };
        ErrorResponse(ApiError::unavailable(format!("not ready: {reason}"))).into_response()
    }
}

/// The raft-listener route where followers send leader-only requests.
pub fn internal_router(service: Arc<KvService>) -> Router {
    let router = Router::new()
        .route("/internal/leader", post(leader))
        .route(
            strata_raft::network::LEADER_STREAM_PATH,
            post(leader_stream),
        )
        .route("/internal/campaign", post(campaign));
    let router = if std::env::var("STRATA_FAULT_INJECTION").as_deref() == Ok("1") {
        tracing::info!("fault injection is enabled (STRATA_FAULT_INJECTION=1): for tests only");
        router.route("/internal/fault/partition", post(partition))
    } else {
        router
    };
    router.with_state(service)
}

/// Test-only: cuts this node off from the raft addresses in the JSON body (`[]` heals).
async fn partition(body: Bytes) -> Response {
    match serde_json::from_slice::<Vec<String>>(&body) {
        Ok(peers) => {
            tracing::warn!(?peers, "fault injection: cut off from peers");
            strata_raft::network::set_cut_off_peers(peers);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn leader(
    State(service): State<Arc<KvService>>,
    Postcard(request): Postcard<LeaderRequest>,
) -> Response {
    let reply = service.serve_as_leader(request).await;
    strata_raft::network::postcard_reply(&reply)
}

/// `POST /internal/leader/stream` with `Upgrade: strata-leader`: a follower's stream for its
/// forwarded write batches, served one request at a time by a task of its own.
async fn leader_stream(
    State(service): State<Arc<KvService>>,
    request: axum::extract::Request,
) -> Response {
    use strata_raft::consensus::LeaderStreamReply;
    use strata_raft::network::{accept_stream, serve_frames, LEADER_STREAM_PROTOCOL};
    accept_stream(request, LEADER_STREAM_PROTOCOL, move |io| {
        serve_frames(io, move |request: Result<LeaderRequest, String>| {
            let service = service.clone();
            async move {
                let reply: LeaderStreamReply = match request {
                    Err(message) => Err(format!("malformed node-to-node request: {message}")),
                    Ok(request) => Ok(service.serve_as_leader(request).await),
                };
                reply
            }
        })
    })
}

async fn campaign(State(service): State<Arc<KvService>>) -> Response {
    strata_raft::network::postcard_reply(&service.start_election().await)
}
