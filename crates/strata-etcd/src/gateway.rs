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
//! Streaming calls (`/v3/watch`, `/v3/lease/keepalive`, `/v3/maintenance/snapshot`) are not
//! served here.

use crate::auth::AuthService;
use crate::cluster::ClusterService;
use crate::context::Context;
use crate::kv::KvService;
use crate::lease::LeaseService;
use crate::maintenance::MaintenanceService;
use crate::pb::etcdserverpb::auth_server::Auth;
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etcdserverpb::lease_server::Lease;
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
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

/// The path prefixes etcd's gateway answers on.
const PREFIXES: [&str; 2] = ["/v3/", "/v3beta/"];

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
/// otherwise a 404 naming this listener.
pub(crate) async fn fallback(request: Request) -> Response {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return Status::unimplemented("")
            .into_http::<axum::body::Body>()
            .into_response();
    }
    let mut response = error(&Status::not_found(format!(
        "no such etcd gateway call: {}",
        request.uri().path()
    )));
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
    let (parts, body) = request.into_parts();
    // A browser page must not drive this port (etcd's gateway takes any body type, so a
    // cross-site form post would reach it): requests a browser marks as cross-site are
    // refused. curl, scripts and HTTP libraries send neither header.
    let cross_site = parts.headers.contains_key(header::ORIGIN)
        || parts
            .headers
            .get("sec-fetch-site")
            .is_some_and(|v| v != "none" && v != "same-origin");
    if cross_site {
        return error(&Status::permission_denied(
            "etcdserver: the JSON gateway refuses requests from web pages (Origin or Sec-Fetch-Site)",
        ));
    }
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return error(&Status::invalid_argument(
            "etcdserver: request is too large",
        ));
    };
    // An empty body is the empty message, as grpc-gateway reads it.
    let message = if bytes.iter().all(u8::is_ascii_whitespace) {
        Req::default()
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(message) => message,
            Err(e) => return error(&Status::invalid_argument(format!("invalid JSON body: {e}"))),
        }
    };
    let request = tonic::Request::from_http(axum::http::Request::from_parts(parts, message));
    match handler(request).await {
        Ok(response) => match serde_json::to_vec(response.get_ref()) {
            Ok(json) => json_response(StatusCode::OK, json),
            Err(e) => error(&Status::internal(format!("encode the response: {e}"))),
        },
        Err(status) => error(&status),
    }
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
