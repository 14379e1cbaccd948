//! Spans of calls, exported over OTLP/HTTP (JSON encoding) to a collector.
//!
//! Configured by [`init_tracing`] or, when a process never calls it, by the OpenTelemetry
//! environment variables every SDK reads: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (then `/v1/traces` is appended), `OTEL_SERVICE_NAME`, and
//! `OTEL_TRACES_SAMPLER_ARG` (the ratio of new traces to record, default 1). Without an
//! endpoint nothing is recorded, but `traceparent` is still read and passed on, so a traced
//! caller's trace continues through a process that does not export.
//!
//! Spans go through a bounded queue to one background task that posts them in batches; a
//! full queue drops spans (counted in `strata_rpc_spans_total{outcome="dropped"}`) rather than slow a
//! call down.

use crate::context::{hex, TraceParent};
use crate::metrics::METRICS;
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Where and how spans are exported.
#[derive(Debug, Clone)]
pub struct TraceConfig {
    /// The collector's OTLP/HTTP traces URL (`http://HOST:4318/v1/traces`); `None`: export
    /// nothing.
    pub endpoint: Option<String>,
    /// `service.name` of this process's spans.
    pub service_name: String,
    /// The share of new traces recorded (0 to 1); a caller's sampling decision is followed.
    pub sample_ratio: f64,
}

impl TraceConfig {
    /// The configuration the OpenTelemetry environment variables describe.
    pub fn from_env() -> TraceConfig {
        let endpoint = std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
            .or_else(|| {
                std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .ok()
                    .filter(|e| !e.is_empty())
                    .map(|e| format!("{}/v1/traces", e.trim_end_matches('/')))
            });
        TraceConfig {
            endpoint,
            service_name: std::env::var("OTEL_SERVICE_NAME")
                .unwrap_or_else(|_| "unknown_service".into()),
            sample_ratio: std::env::var("OTEL_TRACES_SAMPLER_ARG")
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or(1.0),
        }
    }
}

/// Whether a span is the server or the client side of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// A call served.
    Server,
    /// A call made.
    Client,
}

/// One finished span.
#[derive(Debug, Clone)]
pub struct Span {
    /// Its trace and id.
    pub context: TraceParent,
    /// The span it is a child of.
    pub parent: Option<[u8; 8]>,
    /// `package.Service/Method`.
    pub name: String,
    /// Server or client.
    pub kind: SpanKind,
    /// When it started.
    pub start: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// The gRPC status code it ended with.
    pub code: i32,
    /// The status message, for failures.
    pub message: String,
    /// The other side (`HOST:PORT`), when known.
    pub peer: Option<String>,
    /// The registry instance called, for client spans.
    pub instance: Option<String>,
    /// Attempts after the first, for client spans.
    pub retries: u32,
}

struct Tracer {
    ratio: f64,
    queue: Option<mpsc::Sender<Span>>,
}

static TRACER: OnceLock<Tracer> = OnceLock::new();

/// Sets how this process exports spans. Call once, inside a tokio runtime, before the first
/// call; later calls (and calls after the first span) change nothing and return false.
pub fn init_tracing(config: TraceConfig) -> bool {
    let mut fresh = false;
    TRACER.get_or_init(|| {
        fresh = true;
        start(config)
    });
    fresh
}

fn tracer() -> &'static Tracer {
    TRACER.get_or_init(|| start(TraceConfig::from_env()))
}

fn start(config: TraceConfig) -> Tracer {
    let queue = match (&config.endpoint, tokio::runtime::Handle::try_current()) {
        (Some(endpoint), Ok(runtime)) => {
            let (tx, rx) = mpsc::channel(QUEUE);
            runtime.spawn(export(endpoint.clone(), config.service_name.clone(), rx));
            tracing::info!(%endpoint, service = %config.service_name, ratio = config.sample_ratio, "exporting spans over OTLP");
            Some(tx)
        }
        (Some(endpoint), Err(_)) => {
            tracing::warn!(%endpoint, "tracing configured outside a tokio runtime; spans are not exported");
            None
        }
        (None, _) => None,
    };
    Tracer {
        ratio: config.sample_ratio.clamp(0.0, 1.0),
        queue,
    }
}

/// Spans waiting for export at most.
const QUEUE: usize = 8192;
/// Spans per request to the collector at most.
const BATCH: usize = 512;
/// How long a span waits for its batch to fill.
const LINGER: Duration = Duration::from_millis(500);

/// Whether spans are exported at all.
pub fn enabled() -> bool {
    tracer().queue.is_some()
}

/// The sampling decision for a new trace.
pub fn sample_new() -> bool {
    let t = tracer();
    t.queue.is_some() && (t.ratio >= 1.0 || rand::random::<f64>() < t.ratio)
}

/// Queues a finished span for export (when its trace is sampled and export is on).
pub fn record(span: Span) {
    if !span.context.sampled {
        return;
    }
    let Some(queue) = &tracer().queue else {
        return;
    };
    if queue.try_send(span).is_err() {
        METRICS.spans_dropped.inc();
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
    let (service, method) = span.name.split_once('/').unwrap_or((&span.name, ""));
    let mut attributes = vec![
        json!({"key": "rpc.system", "value": {"stringValue": "grpc"}}),
        json!({"key": "rpc.service", "value": {"stringValue": service}}),
        json!({"key": "rpc.method", "value": {"stringValue": method}}),
        json!({"key": "rpc.grpc.status_code", "value": {"intValue": span.code.to_string()}}),
    ];
    if let Some(peer) = &span.peer {
        attributes.push(json!({"key": "net.peer.name", "value": {"stringValue": peer}}));
    }
    if let Some(instance) = &span.instance {
        attributes.push(json!({"key": "strata.instance", "value": {"stringValue": instance}}));
    }
    if span.kind == SpanKind::Client {
        attributes.push(
            json!({"key": "strata.retries", "value": {"intValue": span.retries.to_string()}}),
        );
    }
    let mut value = json!({
        "traceId": span.context.trace_hex(),
        "spanId": span.context.span_hex(),
        "name": span.name,
        "kind": match span.kind { SpanKind::Server => 2, SpanKind::Client => 3 },
        "startTimeUnixNano": nanos(span.start),
        "endTimeUnixNano": nanos(span.start + span.duration),
        "attributes": attributes,
        "status": if span.code == 0 {
            json!({"code": 1})
        } else {
            json!({"code": 2, "message": span.message})
        },
    });
    if let Some(parent) = span.parent {
        value["parentSpanId"] = json!(hex(&parent));
    }
    value
}

/// An OTLP `ExportTraceServiceRequest` holding `spans`.
pub fn export_body(service: &str, spans: &[Span]) -> Value {
    json!({"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": service}},
            {"key": "telemetry.sdk.name", "value": {"stringValue": "strata-rpc"}},
        ]},
        "scopeSpans": [{
            "scope": {"name": "strata-rpc", "version": env!("CARGO_PKG_VERSION")},
            "spans": spans.iter().map(span_json).collect::<Vec<_>>(),
        }],
    }]})
}

async fn export(endpoint: String, service: String, mut rx: mpsc::Receiver<Span>) {
    let client = strata_tls::http_client_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while batch.len() < BATCH {
            tokio::select! {
                span = rx.recv() => match span {
                    Some(span) => batch.push(span),
                    None => break,
                },
                () = &mut linger => break,
            }
        }
        let body = export_body(&service, &batch);
        let sent = client.post(&endpoint).json(&body).send().await;
        match sent.map(|r| r.status()) {
            Ok(status) if status.is_success() => {
                METRICS.spans_exported.inc_by(batch.len() as u64);
                if failing {
                    tracing::info!(%endpoint, "the trace collector accepts spans again");
                    failing = false;
                }
            }
            outcome => {
                METRICS.spans_dropped.inc_by(batch.len() as u64);
                if !failing {
                    let error = match outcome {
                        Ok(status) => format!("answered {status}"),
                        Err(e) => e.to_string(),
                    };
                    tracing::warn!(%endpoint, %error, spans = batch.len(), "exporting spans failed; dropping them");
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_encode_as_otlp_json() {
        let parent = TraceParent::root(true);
        let child = parent.child();
        let span = Span {
            context: child,
            parent: Some(parent.span_id),
            name: "orders.v1.Orders/Create".into(),
            kind: SpanKind::Client,
            start: UNIX_EPOCH + Duration::from_secs(1),
            duration: Duration::from_millis(2),
            code: 14,
            message: "no instance".into(),
            peer: Some("127.0.0.1:5000".into()),
            instance: Some("o-1".into()),
            retries: 1,
        };
        let body = export_body("checkout", &[span]);
        let span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], parent.trace_hex());
        assert_eq!(span["parentSpanId"], parent.span_hex());
        assert_eq!(span["spanId"], child.span_hex());
        assert_eq!(span["kind"], 3);
        assert_eq!(span["startTimeUnixNano"], "1000000000");
        assert_eq!(span["endTimeUnixNano"], "1002000000");
        assert_eq!(span["status"]["code"], 2);
        assert_eq!(
            body["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "checkout"
        );
    }
}
