//! etcd's JSON gateway: every unary call as `POST /v3/<service>/<method>` (and `/v3beta/...`,
//! as etcd 3.4 also answers) with a JSON body, on the gRPC port, the way etcd serves it to curl,
//! shell scripts and HTTP-only clients.
//!
//! Bodies use protobuf's JSON mapping as etcd's gateway writes it: the proto field names
//! (`range_end`, `create_revision`), 64-bit integers as strings, bytes as base64, enums by name
//! (numbers accepted), default values left out; either field spelling is accepted in requests.
//! The token goes in the `Authorization` header (bare, as etcd's docs show, or `Bearer`). An
//! error is `{"error": ..., "code": N, "message": ...}` with the gRPC code and the HTTP status
//! grpc-gateway gives it. Each request is handed to the same service the gRPC route calls, so
//! the answers and the checks are the same.
//!
//! The streaming calls are served as grpc-gateway serves them: `/v3/watch` and
//! `/v3/lease/keepalive` read the request body as a sequence of JSON messages (a client may
//! keep it open and send more, or close it after one), `/v3/election/observe` reads one; the
//! answer is a stream of lines, each `{"result": MESSAGE}`, ended by an error line
//! `{"error": {"grpc_code", "http_code", "message", "http_status"}}` when the call fails
//! midway. `/v3/maintenance/snapshot` is not served here. `GET /version` and `GET /health`
//! answer as etcd's client port does.

use crate::auth::AuthService;
use crate::cluster::ClusterService;
use crate::context::Context;
use crate::election::ElectionService;
use crate::kv::KvService;
use crate::lease::LeaseService;
use crate::lock::LockService;
use crate::maintenance::MaintenanceService;
use crate::pb::etcdserverpb::auth_server::Auth;
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etcdserverpb::lease_server::Lease;
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::pb::etcdserverpb::{LeaseKeepAliveRequest, WatchRequest};
use crate::pb::v3electionpb::election_server::Election;
use crate::pb::v3lockpb::lock_server::Lock;
use crate::watch::WatchSession;
use axum::body::Body;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::stream::{self, BoxStream, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use tonic::{Code, Status};

/// Adds `POST PREFIX+path` for each prefix and each `method => path` of the service `svc`.
macro_rules! unary {
    ($router:expr, $limit:expr, $svc:expr, { $($method:path => $path:literal,)+ }) => {{
        let mut router = $router;
        $(
            for prefix in PREFIXES {
                let svc = $svc.clone();
                let limit = $limit;
                router = router.route(
                    &format!("{prefix}{}", $path),
                    post(move |request: Request| {
                        let svc = svc.clone();
                        async move {
                            call(request, limit, |r| async move { $method(&*svc, r).await }).await
                        }
                    }),
                );
            }
        )+
        router
    }};
}

/// The path prefixes served: etcd 3.4's (`/v3/`, and `/v3beta/` it keeps for 3.3 clients)
/// and 3.3's `/v3alpha/`, which older clients still call.
const PREFIXES: [&str; 3] = ["/v3/", "/v3beta/", "/v3alpha/"];

/// The gateway's routes over the services of `ctx` (the auth routes only with access control).
/// The paths are etcd 3.4's.
pub(crate) fn router(ctx: &Context) -> Router {
    let limit = body_limit(ctx.max_request_bytes);
    let kv = Arc::new(KvService::new(ctx.clone()));
    let router = unary!(Router::new(), limit, kv, {
        Kv::range => "kv/range",
        Kv::put => "kv/put",
        Kv::delete_range => "kv/deleterange",
        Kv::txn => "kv/txn",
        Kv::compact => "kv/compaction",
    });
    let lease = Arc::new(LeaseService::new(ctx.clone()));
    let router = unary!(router, limit, lease, {
        Lease::lease_grant => "lease/grant",
        Lease::lease_revoke => "lease/revoke",
        Lease::lease_revoke => "kv/lease/revoke",
        Lease::lease_time_to_live => "lease/timetolive",
        Lease::lease_time_to_live => "kv/lease/timetolive",
        Lease::lease_leases => "lease/leases",
        Lease::lease_leases => "kv/lease/leases",
    });
    let cluster = Arc::new(ClusterService::new(ctx.clone()));
    let router = unary!(router, limit, cluster, {
        Cluster::member_list => "cluster/member/list",
        Cluster::member_add => "cluster/member/add",
        Cluster::member_remove => "cluster/member/remove",
        Cluster::member_update => "cluster/member/update",
        Cluster::member_promote => "cluster/member/promote",
    });
    let maintenance = Arc::new(MaintenanceService::new(ctx.clone()));
    let router = unary!(router, limit, maintenance, {
        Maintenance::status => "maintenance/status",
        Maintenance::alarm => "maintenance/alarm",
        Maintenance::hash => "maintenance/hash",
        Maintenance::defragment => "maintenance/defragment",
        Maintenance::move_leader => "maintenance/transfer-leadership",
    });
    let lock = Arc::new(LockService::new(ctx.clone()));
    let router = unary!(router, limit, lock, {
        Lock::lock => "lock/lock",
        Lock::unlock => "lock/unlock",
    });
    let election = Arc::new(ElectionService::new(ctx.clone()));
    let router = unary!(router, limit, election, {
        Election::campaign => "election/campaign",
        Election::proclaim => "election/proclaim",
        Election::leader => "election/leader",
        Election::resign => "election/resign",
    });
    let router = streams(router, ctx, limit, &election);
    let router = router
        .route("/version", get(version))
        .route("/health", get(health).with_state(ctx.clone()));
    let Some(auth) = ctx.auth.clone() else {
        return router;
    };
    let auth = Arc::new(AuthService::new(ctx.clone(), auth));
    unary!(router, limit, auth, {
        Auth::auth_enable => "auth/enable",
        Auth::auth_disable => "auth/disable",
        Auth::auth_status => "auth/status",
        Auth::authenticate => "auth/authenticate",
        Auth::user_add => "auth/user/add",
        Auth::user_get => "auth/user/get",
        Auth::user_list => "auth/user/list",
        Auth::user_delete => "auth/user/delete",
        Auth::user_change_password => "auth/user/changepw",
        Auth::user_grant_role => "auth/user/grant",
        Auth::user_revoke_role => "auth/user/revoke",
        Auth::role_add => "auth/role/add",
        Auth::role_get => "auth/role/get",
        Auth::role_list => "auth/role/list",
        Auth::role_delete => "auth/role/delete",
        Auth::role_grant_permission => "auth/role/grant",
        Auth::role_revoke_permission => "auth/role/revoke",
    })
}

/// What a request for no route gets: gRPC's "unimplemented" for gRPC (as tonic answers), and
/// otherwise etcd's plain-text 404 (the `strata-listener` header still names this listener).
pub(crate) async fn fallback(request: Request) -> Response {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return Status::unimplemented("")
            .into_http::<Body>()
            .into_response();
    }
    // As etcd answers: its gateway's own "Not Found" under the gateway's prefixes, Go's
    // "404 page not found" elsewhere; both plain text.
    let path = request.uri().path();
    let text = if ["/v3/", "/v3beta/"].iter().any(|p| path.starts_with(p)) {
        "Not Found\n"
    } else {
        "404 page not found\n"
    };
    let mut response = (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response();
    response
        .headers_mut()
        .insert("strata-listener", HeaderValue::from_static("grpc"));
    response
}

/// How large a JSON body may be: base64 makes bytes a third larger, and field names and
/// quoting add more, so twice the request limit plus a margin.
fn body_limit(max_request_bytes: usize) -> usize {
    max_request_bytes
        .saturating_mul(2)
        .saturating_add(64 * 1024)
}

/// Decodes the JSON body, calls the service with the HTTP request's headers (the token) and
/// connection details (client address, certificate), and encodes its answer.
async fn call<Req, Resp, F, Fut>(request: Request, limit: usize, handler: F) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let request = match one_request(request, limit).await {
        Ok(request) => request,
        Err(refused) => return refused,
    };
    match handler(request).await {
        Ok(response) => match serde_json::to_vec(response.get_ref()) {
            Ok(json) => json_response(StatusCode::OK, json),
            Err(e) => error(&Status::internal(format!("encode the response: {e}"))),
        },
        Err(status) => error(&status),
    }
}

/// The HTTP request as a tonic request of one message (with its headers and connection
/// details, for the token and the client's address), or the answer refusing it.
async fn one_request<Req: DeserializeOwned + Default>(
    request: Request,
    limit: usize,
) -> Result<tonic::Request<Req>, Response> {
    let (parts, body) = request.into_parts();
    if let Some(refused) = refuse_cross_site(&parts) {
        return Err(refused);
    }
    let message = one_message(body, limit).await.map_err(|s| error(&s))?;
    Ok(tonic::Request::from_http(axum::http::Request::from_parts(
        parts, message,
    )))
}

/// A browser page must not drive this port (etcd's gateway takes any body type, so a
/// cross-site form post would reach it): requests a browser marks as cross-site are refused.
/// curl, scripts and HTTP libraries send neither header.
fn refuse_cross_site(parts: &Parts) -> Option<Response> {
    let cross_site = parts.headers.contains_key(header::ORIGIN)
        || parts
            .headers
            .get("sec-fetch-site")
            .is_some_and(|v| v != "none" && v != "same-origin");
    cross_site.then(|| {
        error(&Status::permission_denied(
            "etcdserver: the JSON gateway refuses requests from web pages (Origin or Sec-Fetch-Site)",
        ))
    })
}

fn too_large() -> Status {
    Status::invalid_argument("etcdserver: request is too large")
}

fn invalid_json(e: &serde_json::Error) -> Status {
    Status::invalid_argument(format!("invalid JSON body: {e}"))
}

/// The body as one message; an empty body is the empty message, as grpc-gateway reads it.
async fn one_message<Req: DeserializeOwned + Default>(
    body: Body,
    limit: usize,
) -> Result<Req, Status> {
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Req::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| invalid_json(&e))
}

/// The body as a stream of JSON messages, each read as soon as it is complete; a message
/// larger than `limit` or bytes that are not JSON end the stream with an error.
fn messages<Req: DeserializeOwned + Send + 'static>(
    body: Body,
    limit: usize,
) -> BoxStream<'static, Result<Req, Status>> {
    struct State {
        chunks: BoxStream<'static, Result<axum::body::Bytes, axum::Error>>,
        buffer: Vec<u8>,
        done: bool,
    }
    let state = State {
        chunks: body.into_data_stream().boxed(),
        buffer: Vec::new(),
        done: false,
    };
    stream::unfold(state, move |mut state| async move {
        loop {
            if state.done {
                return None;
            }
            let mut parsed = serde_json::Deserializer::from_slice(&state.buffer).into_iter::<Req>();
            match parsed.next() {
                Some(Ok(message)) => {
                    let used = parsed.byte_offset();
                    state.buffer.drain(..used);
                    return Some((Ok(message), state));
                }
                Some(Err(e)) if !e.is_eof() => {
                    state.done = true;
                    return Some((Err(invalid_json(&e)), state));
                }
                // Only whitespace, or a message not complete yet: read on.
                _ => {}
            }
            if state.buffer.len() > limit {
                state.done = true;
                return Some((Err(too_large()), state));
            }
            match state.chunks.next().await {
                Some(Ok(chunk)) => state.buffer.extend_from_slice(&chunk),
                // The client closed its side (or the connection broke): no more requests.
                _ => return None,
            }
        }
    })
    .boxed()
}

/// A streaming answer: a line `{"result": MESSAGE}` per message, and an error line ending
/// the stream when the call fails midway; an error before the first message is a plain
/// error answer.
fn stream_response<Resp: Serialize + Send + 'static>(
    replies: impl Stream<Item = Result<Resp, Status>> + Send + 'static,
) -> Response {
    #[derive(Serialize)]
    struct Line<'a, T> {
        result: &'a T,
    }
    #[derive(Serialize)]
    struct StreamError<'a> {
        grpc_code: i32,
        http_code: u16,
        message: &'a str,
        http_status: &'a str,
    }
    #[derive(Serialize)]
    struct ErrorLine<'a> {
        error: StreamError<'a>,
    }
    let mut failed = false;
    let lines = replies
        .take_while(move |reply| {
            let go_on = !failed;
            failed |= reply.is_err();
            std::future::ready(go_on)
        })
        .map(|reply| {
            let mut line = match &reply {
                Ok(message) => serde_json::to_vec(&Line { result: message }),
                Err(status) => {
                    let http = http_status(status.code());
                    serde_json::to_vec(&ErrorLine {
                        error: StreamError {
                            grpc_code: status.code() as i32,
                            http_code: http.as_u16(),
                            message: status.message(),
                            http_status: http.canonical_reason().unwrap_or(""),
                        },
                    })
                }
            }
            .unwrap_or_default();
            line.push(b'\n');
            Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(line))
        });
    let mut response = Response::new(Body::from_stream(lines));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Serves a streaming call: the request (a stream of messages, or one) goes to `handler`
/// with the HTTP request's headers and connection details, as [`call`] does.
async fn call_stream<In, Resp, S, F, Fut>(request: Request, input: In, handler: F) -> Response
where
    In: FnOnce(Body) -> BoxStream<'static, Result<S, Status>>,
    Resp: Serialize + Send + 'static,
    F: FnOnce(tonic::Request<BoxStream<'static, Result<S, Status>>>) -> Fut,
    Fut: Future<Output = Result<BoxStream<'static, Result<Resp, Status>>, Status>>,
{
    let (parts, body) = request.into_parts();
    if let Some(refused) = refuse_cross_site(&parts) {
        return refused;
    }
    let request = tonic::Request::from_http(axum::http::Request::from_parts(parts, input(body)));
    match handler(request).await {
        Ok(replies) => stream_response(replies),
        Err(status) => error(&status),
    }
}

/// The streaming routes: watch and lease keep-alive (many requests, many replies) and
/// election observe (one request, many replies).
fn streams(
    mut router: Router,
    ctx: &Context,
    limit: usize,
    election: &Arc<ElectionService>,
) -> Router {
    for prefix in PREFIXES {
        let watch_ctx = ctx.clone();
        router = router.route(
            &format!("{prefix}watch"),
            post(move |request: Request| {
                let ctx = watch_ctx.clone();
                call_stream(
                    request,
                    move |b| messages::<WatchRequest>(b, limit),
                    |r| async move {
                        ctx.check_require_leader(r.metadata())?;
                        let who = ctx.who(&r).await?;
                        Ok(WatchSession::new(ctx, who, r.into_inner()).into_stream())
                    },
                )
            }),
        );
        let lease_ctx = ctx.clone();
        router = router.route(
            &format!("{prefix}lease/keepalive"),
            post(move |request: Request| {
                let ctx = lease_ctx.clone();
                call_stream(
                    request,
                    move |b| messages::<LeaseKeepAliveRequest>(b, limit),
                    |r| async move {
                        ctx.who(&r).await?;
                        ctx.check_require_leader(r.metadata())?;
                        Ok(crate::lease::keep_alive(ctx, r.into_inner()))
                    },
                )
            }),
        );
        let election = election.clone();
        router = router.route(
            &format!("{prefix}election/observe"),
            post(move |request: Request| {
                let election = election.clone();
                async move {
                    let request = match one_request(request, limit).await {
                        Ok(request) => request,
                        Err(refused) => return refused,
                    };
                    match Election::observe(&*election, request).await {
                        Ok(replies) => stream_response(replies.into_inner()),
                        Err(status) => error(&status),
                    }
                }
            }),
        );
    }
    router
}

/// `GET /version`: the etcd version this port speaks, as etcd's client port answers it.
async fn version() -> Response {
    let body = serde_json::json!({
        "etcdserver": crate::maintenance::ETCD_VERSION,
        "etcdcluster": "3.4.0",
    });
    json_response(StatusCode::OK, body.to_string().into_bytes())
}

/// `GET /health`: `{"health":"true"}` while a leader is known, else `"false"` with 503, as
/// etcd 3.4 answers.
async fn health(axum::extract::State(ctx): axum::extract::State<Context>) -> Response {
    let healthy = ctx.backend.status().leader.is_some();
    let body = serde_json::json!({ "health": if healthy { "true" } else { "false" } });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, body.to_string().into_bytes())
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The error body grpc-gateway writes, with its HTTP status for the gRPC code.
fn error(status: &Status) -> Response {
    #[derive(Serialize)]
    struct Body<'a> {
        error: &'a str,
        code: i32,
        message: &'a str,
    }
    let body = Body {
        error: status.message(),
        code: status.code() as i32,
        message: status.message(),
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    json_response(http_status(status.code()), json)
}

/// grpc-gateway's mapping of gRPC codes to HTTP statuses (the one etcd 3.4 ships).
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}
