//! The REST consumer: plain HTTP/1.1 calls to a registered service, with the gRPC consumer's
//! discovery, balancing, breakers, outlier detection, retry budget, deadline and trace
//! propagation.
//!
//! A request goes to a picked instance with its path and query unchanged. Idempotent methods
//! (GET, HEAD, PUT, DELETE, OPTIONS) are retried on another instance after a refused
//! connection, a reset, or 502/503/504, up to three attempts within the retry budget; any
//! method is retried when the connection was refused (the request never left). A 5xx answer
//! counts as a failure for breakers and outlier detection.

use crate::consumer::{error_chain, refused, Call, Inner};
use crate::context::{CallContext, TraceParent};
use crate::trace;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;

/// Attempts per call at most.
const MAX_ATTEMPTS: u32 = 3;

/// Why a REST call failed without an answer to pass on.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RestError {
    /// The gRPC-style code of the failure (`UNAVAILABLE`, `DEADLINE_EXCEEDED`).
    pub code: Code,
    /// Says which service, method, path and instance, the attempts, and why.
    pub message: String,
}

/// A consumer of an HTTP service. Cheap to clone.
#[derive(Clone)]
pub struct RestConsumer {
    inner: Arc<Inner>,
    http: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
}

impl RestConsumer {
    pub(crate) fn new(inner: Arc<Inner>) -> RestConsumer {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(inner.connect_timeout));
        RestConsumer {
            http: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .build(connector),
            inner,
        }
    }

    /// Sends `request` (its URI is a path and query) to an instance; the whole answer is read.
    pub async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, RestError> {
        let inner = &self.inner;
        let (parts, body) = request.into_parts();
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.to_string());
        let context = CallContext::current().unwrap_or_default();
        let started = Instant::now();
        let mut deadline = context.deadline;
        if let Some(own) = inner.timeout.and_then(|own| started.checked_add(own)) {
            deadline = Some(deadline.map_or(own, |d| d.min(own)));
        }
        let parent = TraceParent::from_headers(&parts.headers).or(context.trace);
        let span = parent.map_or_else(|| TraceParent::root(trace::sample_new()), |p| p.child());
        let mut call = Call {
            uri: parts.uri.clone(),
            rest_method: Some(parts.method.clone()),
            started,
            deadline,
            span,
            parent: parent.map(|p| p.span_id),
            trace_state: context.trace_state,
            key: inner
                .hash_key
                .as_ref()
                .and_then(|k| parts.headers.get(k))
                .map(|v| v.as_bytes().to_vec()),
            headers: parts.headers,
            attempts: 0,
            last: None,
        };
        let idempotent = matches!(
            parts.method,
            http::Method::GET
                | http::Method::HEAD
                | http::Method::PUT
                | http::Method::DELETE
                | http::Method::OPTIONS
        );
        inner.budget.deposit();
        inner
            .discovery
            .ready(call.deadline.map_or(Duration::from_secs(5), |d| {
                d.saturating_duration_since(Instant::now())
            }))
            .await;
        let mut tried = crate::consumer::Tried::default();
        loop {
            let mut attempt = inner.pick(&call, tried.as_slice()).map_err(|why| {
                let status = inner.no_pick(&call, why);
                RestError {
                    code: status.code(),
                    message: status.message().to_string(),
                }
            })?;
            call.attempts += 1;
            call.last = Some(attempt.endpoint.clone());
            tried.push(attempt.index);
            let uri = format!("http://{}{}", attempt.endpoint.address, path_and_query);
            let mut request = http::Request::new(Full::new(body.clone()));
            *request.method_mut() = parts.method.clone();
            *request.headers_mut() = call.headers.clone();
            *request.uri_mut() = uri.parse().map_err(|e| RestError {
                code: Code::Internal,
                message: format!("{}: bad URI {uri}: {e}", inner.where_(&call)),
            })?;
            request
                .headers_mut()
                .insert(crate::context::TRACEPARENT, call.span.header_value());
            let exchange = async {
                let response = self.http.request(request).await?;
                let (parts, body) = response.into_parts();
                let body = body.collect().await?.to_bytes();
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http::Response::from_parts(
                    parts, body,
                ))
            };
            let remaining = call
                .deadline
                .map(|d| d.saturating_duration_since(Instant::now()));
            let result = match remaining {
                Some(remaining) => tokio::time::timeout(remaining, exchange)
                    .await
                    .unwrap_or_else(|_| Err("deadline exceeded".into())),
                None => exchange.await,
            };
            if result.is_ok() {
                attempt.endpoint.connected();
            }
            let (code, message, unsent, retryable) = match result {
                Ok(response) if response.status().is_server_error() => {
                    let status = response.status().as_u16();
                    attempt.finish(Code::Unavailable, false);
                    let again = idempotent
                        && matches!(status, 502..=504)
                        && inner.may_retry(&call, MAX_ATTEMPTS, false);
                    if !again {
                        return Ok(response);
                    }
                    continue;
                }
                Ok(response) => {
                    attempt.finish(Code::Ok, false);
                    return Ok(response);
                }
                Err(error) if error.to_string() == "deadline exceeded" => {
                    attempt.finish(Code::DeadlineExceeded, true);
                    (
                        Code::DeadlineExceeded,
                        "deadline exceeded".to_string(),
                        false,
                        false,
                    )
                }
                Err(error) => {
                    let unsent = refused(error.as_ref());
                    if unsent {
                        attempt.endpoint.eject();
                    }
                    attempt.finish(Code::Unavailable, true);
                    (
                        Code::Unavailable,
                        error_chain(error.as_ref()),
                        unsent,
                        idempotent,
                    )
                }
            };
            if !(unsent || retryable) || !inner.may_retry(&call, MAX_ATTEMPTS, unsent) {
                return Err(RestError {
                    code,
                    message: format!("{}: {message}", inner.where_(&call)),
                });
            }
        }
    }

    /// GETs `path` (with its query).
    pub async fn get(&self, path: &str) -> Result<http::Response<Bytes>, RestError> {
        let request = http::Request::get(path)
            .body(Bytes::new())
            .map_err(|e| RestError {
                code: Code::InvalidArgument,
                message: format!("{path:?}: {e}"),
            })?;
        self.send(request).await
    }
}
