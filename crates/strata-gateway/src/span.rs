//! The span of each request the gateway answers, when it records spans (`[gateway] traces`
//! on a node that runs the monitor): a server span that continues the client's W3C trace, or
//! starts a sampled one, and that the upstream sees as its parent in `traceparent`.

use crate::balance::Endpoint;
use crate::route::Route;
use crate::upstream::Group;
use axum::body::Body;
use hyper::{Method, Request, Response};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use strata_trace::{Exporter, Span, SpanKind, TraceParent};

/// What forwarding did, for the request's span; each attempt fills it in.
#[derive(Default)]
pub(crate) struct Forwarded {
    /// The answer's header lines, when they stayed raw: set with the answer that carries them
    /// and taken with it by the caller of [`crate::proxy::Gateway::handle`].
    pub raw: Option<Box<crate::h1::RawHeaders>>,
    /// The upstream group the request went to (the fallback's, after an open breaker).
    pub upstream: Option<Arc<Group>>,
    /// The member that answered, or the last one tried.
    pub member: Option<Arc<Endpoint>>,
    /// Attempts sent to members (a hedge is not one).
    pub attempts: u32,
    /// Why the exchange failed, when it did: `connect`, `reset` or `timeout`.
    pub failure: Option<&'static str>,
    /// When the answer's head arrived from a member (the clock read once for the member's
    /// latency and the request's).
    pub answered: Option<std::time::Instant>,
}

/// A request's span, from its arrival to its answer's headers.
pub(crate) struct RequestSpan {
    parent: Option<TraceParent>,
    context: TraceParent,
    start: SystemTime,
    method: Method,
    path: String,
}

impl RequestSpan {
    /// The span of `request`, arrived at `now`, when the gateway records spans (`exporter`).
    pub fn begin<B>(
        exporter: Option<&Exporter>,
        request: &Request<B>,
        now: std::time::Instant,
    ) -> Option<Self> {
        let exporter = exporter?;
        let parent = TraceParent::from_headers(request.headers());
        let context = match parent {
            Some(parent) => parent.child(),
            None => TraceParent::root(exporter.sample_new_at(now)),
        };
        // What only a recorded span needs is taken only for one (most traces are not).
        let sampled = context.sampled;
        Some(RequestSpan {
            parent,
            context,
            start: if sampled {
                SystemTime::now()
            } else {
                SystemTime::UNIX_EPOCH
            },
            method: request.method().clone(),
            path: if sampled {
                request.uri().path().to_string()
            } else {
                String::new()
            },
        })
    }

    /// The `traceparent` the upstream gets (this span is its parent) and the trace's id in
    /// hex, as text sharing one allocation (see [`TraceParent::texts`]).
    pub fn texts(&self) -> (bytes::Bytes, bytes::Bytes) {
        self.context.texts()
    }

    /// The finished span of the request `route` matched (`None`: no route did), answered
    /// with `response` after `duration`; `None` when its trace is not recorded.
    pub fn finish(
        self,
        route: Option<&Route>,
        response: &Response<Body>,
        forwarded: &Forwarded,
        client: IpAddr,
        duration: Duration,
    ) -> Option<Span> {
        if !self.context.sampled {
            return None;
        }
        let status = response.status();
        let template = route.and_then(Route::template);
        let name = match (route, &template) {
            (None, _) => self.method.to_string(),
            (Some(_), Some(template)) => format!("{} {template}", self.method),
            (Some(_), None) => format!("{} {}", self.method, self.path),
        };
        // A gRPC call that failed before its first message has its status in the headers.
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
        let grpc = header("grpc-status").and_then(|v| v.parse::<i64>().ok());
        let error = if status.is_server_error() {
            Some(match forwarded.failure {
                Some(kind) => format!("{status}: the exchange with the upstream failed ({kind})"),
                None => status.to_string(),
            })
        } else {
            grpc.filter(|code| *code != 0).map(|code| {
                let message = header("grpc-message").unwrap_or_default();
                format!("grpc-status {code}: {message}")
            })
        };
        let mut span = Span {
            context: self.context,
            parent: self.parent.map(|p| p.span_id),
            name,
            kind: SpanKind::Server,
            start: self.start,
            duration,
            error,
            attributes: Vec::with_capacity(11),
        };
        span.set("http.method", self.method.as_str());
        span.set("http.target", self.path);
        if let Some(template) = template {
            span.set("http.route", template);
        }
        span.set("http.status_code", status.as_u16());
        span.set("http.client_ip", client.to_string());
        if let Some(route) = route {
            span.set("strata.route", route.name.as_str());
        }
        if let Some(group) = &forwarded.upstream {
            span.set("strata.upstream", group.spec.name.as_str());
        }
        if let Some(member) = &forwarded.member {
            span.set("net.peer.name", member.address.as_str());
            span.set("strata.instance", member.id.as_str());
        }
        if forwarded.attempts > 0 {
            span.set("strata.retries", forwarded.attempts - 1);
        }
        if let Some(code) = grpc {
            span.set("rpc.grpc.status_code", code);
        }
        Some(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{Compiled, RequestView};
    use crate::Table;
    use hyper::header::HeaderValue;
    use hyper::StatusCode;
    use strata_trace::{AttributeValue, Collector, Counters};

    fn exporter() -> Exporter {
        let counters = Counters {
            exported: prometheus::IntCounter::new("e", "e").unwrap(),
            dropped: prometheus::IntCounter::new("d", "d").unwrap(),
        };
        let collector = Collector {
            urls: Vec::new(),
            token: None,
            http: strata_tls::http_client_builder().build().unwrap(),
        };
        Exporter::new(collector, "strata-gateway".into(), 1.0, counters).0
    }

    fn request(traceparent: Option<&TraceParent>) -> Request<()> {
        let mut request = Request::post("/users/7?secret=x").body(()).unwrap();
        if let Some(parent) = traceparent {
            request
                .headers_mut()
                .insert(strata_trace::TRACEPARENT, parent.header_value());
        }
        request
    }

    fn answer(status: StatusCode, headers: &[(&'static str, &'static str)]) -> Response<Body> {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = status;
        for (name, value) in headers {
            response
                .headers_mut()
                .insert(*name, HeaderValue::from_static(value));
        }
        response
    }

    fn attribute(span: &Span, key: &str) -> Option<AttributeValue> {
        span.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn a_request_continues_its_callers_trace_and_is_named_by_its_route() {
        let table = Table::parse(
            r#"
            [[routes]]
            name = "users"
            path = { template = "/users/{id}" }
            upstream = "u"
            [[upstreams]]
            name = "u"
            addresses = ["127.0.0.1:1"]
            "#,
        )
        .unwrap();
        let compiled = Compiled::new(table).unwrap();
        let headers = hyper::HeaderMap::new();
        let (_, route, _) = compiled
            .find(&RequestView {
                method: &Method::POST,
                host: "h",
                path: "/users/7",
                query: None,
                headers: &headers,
            })
            .unwrap();
        let exporter = exporter();
        let caller = TraceParent::root(true);
        let span = RequestSpan::begin(
            Some(&exporter),
            &request(Some(&caller)),
            std::time::Instant::now(),
        )
        .unwrap();
        // The upstream's parent is the gateway's span, in the caller's trace.
        let sent = TraceParent::parse(std::str::from_utf8(&span.texts().0).unwrap()).unwrap();
        assert_eq!(sent.trace_id, caller.trace_id);
        assert_ne!(sent.span_id, caller.span_id);
        assert_eq!(
            std::str::from_utf8(&span.texts().1).unwrap(),
            caller.trace_hex()
        );
        let forwarded = Forwarded {
            attempts: 2,
            ..Default::default()
        };
        let response = answer(StatusCode::OK, &[]);
        let span = span
            .finish(Some(route), &response, &forwarded, CLIENT, Duration::ZERO)
            .unwrap();
        assert_eq!(span.name, "POST /users/{id}");
        assert_eq!(span.parent, Some(caller.span_id));
        assert_eq!(span.context, sent);
        assert_eq!(span.error, None);
        assert_eq!(attribute(&span, "http.route"), Some("/users/{id}".into()));
        assert_eq!(attribute(&span, "http.target"), Some("/users/7".into()));
        assert_eq!(attribute(&span, "http.status_code"), Some(200u16.into()));
        assert_eq!(attribute(&span, "strata.route"), Some("users".into()));
        assert_eq!(attribute(&span, "strata.retries"), Some(1u32.into()));
    }

    #[test]
    fn failures_are_errors_and_unsampled_traces_are_not_recorded() {
        let exporter = exporter();
        let failed = Forwarded {
            attempts: 1,
            failure: Some("connect"),
            ..Default::default()
        };
        let span =
            RequestSpan::begin(Some(&exporter), &request(None), std::time::Instant::now()).unwrap();
        let response = answer(StatusCode::BAD_GATEWAY, &[]);
        let span = span
            .finish(None, &response, &failed, CLIENT, Duration::ZERO)
            .unwrap();
        assert_eq!(span.name, "POST", "no route: the method alone");
        assert_eq!(span.parent, None, "a trace of its own");
        assert_eq!(
            span.error.as_deref(),
            Some("502 Bad Gateway: the exchange with the upstream failed (connect)")
        );
        // A gRPC failure in the headers (trailers-only answer) is an error too.
        let span =
            RequestSpan::begin(Some(&exporter), &request(None), std::time::Instant::now()).unwrap();
        let response = answer(
            StatusCode::OK,
            &[("grpc-status", "14"), ("grpc-message", "down")],
        );
        let span = span
            .finish(
                None,
                &response,
                &Forwarded::default(),
                CLIENT,
                Duration::ZERO,
            )
            .unwrap();
        assert_eq!(span.error.as_deref(), Some("grpc-status 14: down"));
        assert_eq!(attribute(&span, "rpc.grpc.status_code"), Some(14i64.into()));
        // A caller that does not record its trace: neither does the gateway, which still
        // passes the decision on.
        let unsampled = TraceParent::root(false);
        let span = RequestSpan::begin(
            Some(&exporter),
            &request(Some(&unsampled)),
            std::time::Instant::now(),
        )
        .unwrap();
        assert!(span.texts().0.ends_with(b"-00"));
        let response = answer(StatusCode::OK, &[]);
        assert!(span
            .finish(None, &response, &failed, CLIENT, Duration::ZERO)
            .is_none());
        // Without an exporter there is no span (and `traceparent` passes through as it came).
        let caller = TraceParent::root(true);
        assert!(
            RequestSpan::begin(None, &request(Some(&caller)), std::time::Instant::now()).is_none()
        );
    }
}
