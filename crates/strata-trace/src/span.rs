//! A finished span and its OTLP/HTTP JSON encoding.

use crate::traceparent::{hex, TraceParent};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Whether a span is the server or the client side of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// A call served.
    Server,
    /// A call made.
    Client,
}

/// The value of a span attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeValue {
    /// Text.
    Str(String),
    /// A whole number.
    Int(i64),
}

impl From<String> for AttributeValue {
    fn from(text: String) -> Self {
        AttributeValue::Str(text)
    }
}

impl From<&str> for AttributeValue {
    fn from(text: &str) -> Self {
        AttributeValue::Str(text.to_string())
    }
}

impl From<i64> for AttributeValue {
    fn from(n: i64) -> Self {
        AttributeValue::Int(n)
    }
}

impl From<u32> for AttributeValue {
    fn from(n: u32) -> Self {
        AttributeValue::Int(i64::from(n))
    }
}

impl From<u16> for AttributeValue {
    fn from(n: u16) -> Self {
        AttributeValue::Int(i64::from(n))
    }
}

/// One finished span.
#[derive(Debug, Clone)]
pub struct Span {
    /// Its trace and id.
    pub context: TraceParent,
    /// The span it is a child of.
    pub parent: Option<[u8; 8]>,
    /// The operation: `package.Service/Method`, `GET /users/{id}`.
    pub name: String,
    /// Server or client.
    pub kind: SpanKind,
    /// When it started.
    pub start: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// Why it failed (OTLP status error); `None`: it succeeded (status ok).
    pub error: Option<String>,
    /// Its attributes, named as OpenTelemetry's semantic conventions name them
    /// (`rpc.method`, `http.status_code`) or `strata.*`.
    pub attributes: Vec<(&'static str, AttributeValue)>,
}

impl Span {
    /// Adds attribute `key`.
    pub fn set(&mut self, key: &'static str, value: impl Into<AttributeValue>) {
        self.attributes.push((key, value.into()));
    }
}

fn nanos(time: SystemTime) -> String {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        .to_string()
}

/// One span in OTLP's JSON encoding (ids in hex, 64-bit integers as strings).
fn span_json(span: &Span) -> Value {
    let attributes: Vec<Value> = span
        .attributes
        .iter()
        .map(|(key, value)| match value {
            AttributeValue::Str(text) => json!({"key": key, "value": {"stringValue": text}}),
            AttributeValue::Int(n) => json!({"key": key, "value": {"intValue": n.to_string()}}),
        })
        .collect();
    let mut value = json!({
        "traceId": span.context.trace_hex(),
        "spanId": span.context.span_hex(),
        "name": span.name,
        "kind": match span.kind { SpanKind::Server => 2, SpanKind::Client => 3 },
        "startTimeUnixNano": nanos(span.start),
        "endTimeUnixNano": nanos(span.start + span.duration),
        "attributes": attributes,
        "status": match &span.error {
            None => json!({"code": 1}),
            Some(message) => json!({"code": 2, "message": message}),
        },
    });
    if let Some(parent) = span.parent {
        value["parentSpanId"] = json!(hex(&parent));
    }
    value
}

/// An OTLP `ExportTraceServiceRequest` holding `spans` of service `service`.
pub fn export_body(service: &str, spans: &[Span]) -> Value {
    json!({"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": service}},
            {"key": "telemetry.sdk.name", "value": {"stringValue": "strata"}},
        ]},
        "scopeSpans": [{
            "scope": {"name": "strata", "version": env!("CARGO_PKG_VERSION")},
            "spans": spans.iter().map(span_json).collect::<Vec<_>>(),
        }],
    }]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_encode_as_otlp_json() {
        let parent = TraceParent::root(true);
        let child = parent.child();
        let mut span = Span {
            context: child,
            parent: Some(parent.span_id),
            name: "orders.v1.Orders/Create".into(),
            kind: SpanKind::Client,
            start: UNIX_EPOCH + Duration::from_secs(1),
            duration: Duration::from_millis(2),
            error: Some("no instance".into()),
            attributes: Vec::new(),
        };
        span.set("net.peer.name", "127.0.0.1:5000");
        span.set("strata.retries", 1u32);
        let body = export_body("checkout", &[span]);
        let span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], parent.trace_hex());
        assert_eq!(span["parentSpanId"], parent.span_hex());
        assert_eq!(span["spanId"], child.span_hex());
        assert_eq!(span["kind"], 3);
        assert_eq!(span["startTimeUnixNano"], "1000000000");
        assert_eq!(span["endTimeUnixNano"], "1002000000");
        assert_eq!(span["status"], json!({"code": 2, "message": "no instance"}));
        assert_eq!(
            span["attributes"],
            json!([
                {"key": "net.peer.name", "value": {"stringValue": "127.0.0.1:5000"}},
                {"key": "strata.retries", "value": {"intValue": "1"}},
            ])
        );
        assert_eq!(
            body["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "checkout"
        );
    }

    #[test]
    fn a_root_span_has_no_parent_and_a_success_is_ok() {
        let span = Span {
            context: TraceParent::root(true),
            parent: None,
            name: "GET /".into(),
            kind: SpanKind::Server,
            start: UNIX_EPOCH,
            duration: Duration::ZERO,
            error: None,
            attributes: Vec::new(),
        };
        let body = export_body("strata-gateway", &[span]);
        let span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert!(span.get("parentSpanId").is_none());
        assert_eq!(span["kind"], 2);
        assert_eq!(span["status"], json!({"code": 1}));
    }
}
