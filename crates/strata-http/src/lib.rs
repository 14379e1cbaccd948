//! HTTP plumbing every JSON API of Strata shares: an [`ApiError`] as a response, a JSON body
//! whose rejections are API errors, the caller's address, and JSON server-sent events. The
//! node's API, the registry and the config center use these, so all of them answer bad input
//! (and encode stream messages) the same way.

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::convert::Infallible;
use std::net::SocketAddr;
pub use strata_auth::{Caller, Gate};
use strata_proto::error::{ApiError, ErrorCode};

/// An [`ApiError`] as an HTTP response: the code's status and `{"code","message"}`.
pub struct ErrorResponse(pub ApiError);

impl From<ApiError> for ErrorResponse {
    fn from(e: ApiError) -> Self {
        ErrorResponse(e)
    }
}

impl IntoResponse for ErrorResponse {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.0)).into_response()
    }
}

/// What a JSON handler returns.
pub type ApiResult<T> = Result<axum::Json<T>, ErrorResponse>;

/// A JSON body whose rejections are API errors.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ErrorResponse;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(ErrorResponse(json_rejection(rejection))),
        }
    }
}

/// Turns axum's JSON rejection into the API's error.
pub fn json_rejection(rejection: JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            ErrorCode::PayloadTooLarge,
            "request body is over the limit (kv.max_request_bytes)",
        );
    }
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::bad_request("request body must be JSON with content-type: application/json")
        }
        other => ApiError::bad_request(format!("malformed JSON body: {}", other.body_text())),
    }
}

/// The caller's address, when the server was started with connect info.
pub struct Peer(pub Option<SocketAddr>);

impl Peer {
    /// The caller's IP address as text.
    pub fn ip(&self) -> Option<String> {
        self.0.map(|a| a.ip().to_string())
    }

    /// The caller's address as text ("" when unknown), for audit fields.
    pub fn source(&self) -> String {
        self.0.map(|a| a.to_string()).unwrap_or_default()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

/// A server-sent event carrying `message` as JSON, or an `error` event that says why it could
/// not be encoded.
pub fn json_event<T: Serialize>(message: &T) -> SseEvent {
    SseEvent::default().json_data(message).unwrap_or_else(|e| {
        SseEvent::default()
            .event("error")
            .data(format!("encode: {e}"))
    })
}

/// Ends a stream of server-sent events once its caller may no longer read what it shows
/// ([`strata_auth::guard::guard`]): a refusal is one `error` event with the reason, then the end.
pub fn guard_events<S, F>(
    events: S,
    gate: std::sync::Arc<Gate>,
    caller: Caller,
    check: F,
) -> impl futures::Stream<Item = Result<SseEvent, Infallible>> + Send + 'static
where
    S: futures::Stream<Item = Result<SseEvent, Infallible>> + Send + 'static,
    F: Fn(&Gate, &Caller) -> Result<(), ApiError> + Send + 'static,
{
    strata_auth::guard::guard(events, gate, caller, check, |e| {
        Ok(json_event(&e).event("error"))
    })
}

/// Who made a request: the [`Caller`] the access gate ([`authenticate`]) resolved and left in
/// the request's extensions. A handler on a router without the gate is refused (fails closed).
pub struct Who(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Who {
    type Rejection = ErrorResponse;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .map(Who)
            .ok_or_else(|| {
                ErrorResponse(ApiError::internal(
                    "request did not pass the access gate (a route is mounted without it)",
                ))
            })
    }
}

/// How one interface finds credentials and says no, for [`authenticate`].
#[derive(Clone)]
pub struct GateLayer {
    /// The node's access control.
    pub auth: strata_auth::Auth,
    /// The interface's name in the audit log and metrics.
    pub api: &'static str,
    /// The token a request carries, in the interface's dialect.
    pub token_of: fn(&Parts) -> Option<String>,
    /// Paths served without a credential (health, metrics, login).
    pub open: fn(&str) -> bool,
    /// The interface's answer to a refused credential.
    pub reject: fn(ApiError) -> Response,
}

/// The token of `Authorization: Bearer TOKEN` (the native API's dialect, and Consul's second).
pub fn bearer_token(parts: &Parts) -> Option<String> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// Middleware: resolves the request's [`Caller`] through the gate and leaves it in the
/// request's extensions, or answers with the interface's refusal. Open paths pass with the
/// caller they have (an open caller when they carry nothing).
pub async fn authenticate(
    axum::extract::State(layer): axum::extract::State<GateLayer>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let from = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string());
    let token = (layer.token_of)(&parts);
    let certified = parts
        .extensions
        .get::<strata_auth::CertificateName>()
        .and_then(|c| c.0.clone());
    let resolved = match (&token, certified) {
        // A token wins over a certificate, as in etcd.
        (None, Some(name)) => layer
            .auth
            .gate
            .caller_by_certificate(layer.api, &name, from.clone()),
        _ => {
            layer
                .auth
                .caller(layer.api, token.as_deref(), from.clone())
                .await
        }
    };
    let caller = match resolved {
        Ok(caller) => caller,
        Err(_) if (layer.open)(parts.uri.path()) => Caller::anonymous(layer.api, from),
        // The refusal goes out at once; a body the client is still sending is read and dropped
        // after it by the listener (`strata_component::drain`), so over HTTP/2 the refusal is
        // not cut off by a stream reset.
        Err(e) => return (layer.reject)(e),
    };
    parts.extensions.insert(caller);
    next.run(Request::from_parts(parts, body)).await
}
