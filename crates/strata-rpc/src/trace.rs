//! Spans of calls, exported over OTLP/HTTP (JSON encoding) through one
//! [`strata_trace::Exporter`] per process.
//!
//! Where spans go is decided once, when the process makes or serves its first call:
//!
//! 1. what [`init_tracing`] was given, if the process called it before;
//! 2. nowhere with `OTEL_TRACES_EXPORTER=none` (or `OTEL_SDK_DISABLED=true`);
//! 3. `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or `OTEL_EXPORTER_OTLP_ENDPOINT` with `/v1/traces`
//!    appended;
//! 4. otherwise the Strata node the process's [`Provider`](crate::Provider) (or, without
//!    one, its first [`Consumer`](crate::Consumer)) was built with: `/v1/traces` on the
//!    client's endpoints (the monitor's receiver), with the client's token and TLS settings.
//!    A node without the monitor answers 404: the spans are dropped with one warning.
//!
//! `service.name` is `OTEL_SERVICE_NAME`, else (in case 4) the provider's registry service,
//! else the executable's file name. `OTEL_TRACES_SAMPLER_ARG` is the share of new traces
//! recorded (default 1); a caller's decision is followed. Without an exporter nothing is
//! recorded, but `traceparent` is still read and passed on, so a traced caller's trace
//! continues through a process that does not export.
//!
//! Spans go through a bounded queue to one background task that posts them in batches; a
//! full queue drops spans (counted in `strata_rpc_spans_total{outcome="dropped"}`) rather
//! than slow a call down.

use crate::metrics::METRICS;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};
pub use strata_trace::{export_body, AttributeValue, Span, SpanKind};
use strata_trace::{Collector, Counters, Exporter, TraceParent};

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

/// A variable of the environment, unless unset or blank.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true`.
fn disabled_by_env() -> bool {
    env("OTEL_TRACES_EXPORTER").is_some_and(|e| e.trim().eq_ignore_ascii_case("none"))
        || env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

impl TraceConfig {
    /// The configuration the OpenTelemetry environment variables describe (no endpoint when
    /// they name none or turn tracing off).
    pub fn from_env() -> TraceConfig {
        let endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| {
            env("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|e| format!("{}/v1/traces", e.trim_end_matches('/')))
        });
        TraceConfig {
            endpoint: endpoint.filter(|_| !disabled_by_env()),
            service_name: env("OTEL_SERVICE_NAME").unwrap_or_else(|| "unknown_service".into()),
            sample_ratio: env("OTEL_TRACES_SAMPLER_ARG")
                .and_then(|r| r.parse().ok())
                .unwrap_or(1.0),
        }
    }
}

/// The process's exporter, once decided (`None`: spans are not recorded).
static TRACER: OnceLock<Option<Exporter>> = OnceLock::new();

/// The Strata node spans go to when nothing else is configured (case 4 of the module docs).
#[derive(Debug, Clone)]
struct NodeDefault {
    collector: Collector,
    /// The provider's service; `None` for a consumer's node.
    service: Option<String>,
}

static NODE: Mutex<Option<NodeDefault>> = Mutex::new(None);

/// Sets how this process exports spans. Call once, inside a tokio runtime, before the first
/// call; later calls (and calls after the first call was made or served) change nothing and
/// return false.
pub fn init_tracing(config: TraceConfig) -> bool {
    let mut fresh = false;
    TRACER.get_or_init(|| {
        fresh = true;
        let collector = config.endpoint.map(|url| Collector {
            urls: vec![url],
            token: None,
            http: plain_client(),
        });
        start(collector, config.service_name, config.sample_ratio)
    });
    fresh
}

/// Offers the Strata node `client` talks to as where spans go by default (case 4 of the
/// module docs); `service` is a provider's registry service. A provider's offer replaces a
/// consumer's; nothing changes once the exporter is decided.
pub(crate) fn default_to_node(client: &strata_client::Client, service: Option<&str>) {
    if TRACER.get().is_some() || client.endpoints().is_empty() {
        return;
    }
    let mut node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    if node
        .as_ref()
        .is_some_and(|n| n.service.is_some() || service.is_none())
    {
        return;
    }
    *node = Some(NodeDefault {
        collector: Collector {
            urls: client
                .endpoints()
                .iter()
                .map(|e| format!("{e}/v1/traces"))
                .collect(),
            token: client.token().map(str::to_string),
            http: client.http().clone(),
        },
        service: service.map(str::to_string),
    });
}

fn plain_client() -> reqwest::Client {
    strata_tls::http_client_builder()
        .build()
        .unwrap_or_default()
}

/// The executable's file name, the service name of last resort.
fn executable_name() -> Option<String> {
    let path = std::env::current_exe().ok()?;
    Some(path.file_name()?.to_string_lossy().into_owned())
}

/// Where spans go and as which service, for a process that did not call [`init_tracing`]:
/// the environment's `config` unless it names no endpoint and does not turn tracing off
/// (`disabled`), then the node default.
fn choose(
    config: TraceConfig,
    disabled: bool,
    node: Option<NodeDefault>,
    env_service: Option<String>,
) -> (Option<Collector>, String) {
    if let Some(url) = config.endpoint {
        let collector = Collector {
            urls: vec![url],
            token: None,
            http: plain_client(),
        };
        return (Some(collector), config.service_name);
    }
    match node.filter(|_| !disabled) {
        None => (None, config.service_name),
        Some(node) => {
            let service = env_service
                .or(node.service)
                .or_else(executable_name)
                .unwrap_or(config.service_name);
            (Some(node.collector), service)
        }
    }
}

fn tracer() -> Option<&'static Exporter> {
    TRACER
        .get_or_init(|| {
            let config = TraceConfig::from_env();
            let ratio = config.sample_ratio;
            let node = NODE.lock().unwrap_or_else(|e| e.into_inner()).take();
            let (collector, service) =
                choose(config, disabled_by_env(), node, env("OTEL_SERVICE_NAME"));
            start(collector, service, ratio)
        })
        .as_ref()
}

fn start(collector: Option<Collector>, service: String, ratio: f64) -> Option<Exporter> {
    let collector = collector?;
    let endpoint = collector.urls.join(",");
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(%endpoint, "tracing configured outside a tokio runtime; spans are not exported");
        return None;
    };
    tracing::info!(%endpoint, %service, ratio, "exporting spans over OTLP");
    let counters = Counters {
        exported: METRICS.spans_exported.clone(),
        dropped: METRICS.spans_dropped.clone(),
    };
    let (exporter, task) = Exporter::new(collector, service, ratio, counters);
    runtime.spawn(task);
    Some(exporter)
}

/// Whether spans are exported at all.
pub fn enabled() -> bool {
    tracer().is_some()
}

/// The sampling decision for a new trace.
pub fn sample_new() -> bool {
    tracer().is_some_and(Exporter::sample_new)
}

/// Queues a finished span for export (when its trace is sampled and export is on).
pub fn record(span: Span) {
    if let Some(exporter) = tracer() {
        exporter.record(span);
    }
}

/// A finished call, as a consumer or a provider saw it.
pub(crate) struct CallSpan {
    /// Its trace and span.
    pub context: TraceParent,
    /// The span it is a child of.
    pub parent: Option<[u8; 8]>,
    /// `package.Service/Method`.
    pub method: String,
    /// Served or made.
    pub kind: SpanKind,
    /// When it started.
    pub start: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// The gRPC status code it ended with.
    pub code: tonic::Code,
    /// The status message, for failures.
    pub message: String,
    /// The other side (`HOST:PORT`), when known.
    pub peer: Option<String>,
    /// The registry instance called, for calls made.
    pub instance: Option<String>,
    /// Attempts after the first, for calls made.
    pub retries: u32,
}

impl CallSpan {
    /// The span, with the attributes of OpenTelemetry's gRPC conventions.
    fn into_span(self) -> Span {
        let (service, method) = self.method.split_once('/').unwrap_or((&self.method, ""));
        let mut span = Span {
            context: self.context,
            parent: self.parent,
            name: String::new(),
            kind: self.kind,
            start: self.start,
            duration: self.duration,
            error: (self.code != tonic::Code::Ok).then_some(self.message),
            attributes: Vec::with_capacity(7),
        };
        span.set("rpc.system", "grpc");
        span.set("rpc.service", service);
        span.set("rpc.method", method);
        span.set("rpc.grpc.status_code", self.code as i64);
        if let Some(peer) = self.peer {
            span.set("net.peer.name", peer);
        }
        if let Some(instance) = self.instance {
            span.set("strata.instance", instance);
        }
        if self.kind == SpanKind::Client {
            span.set("strata.retries", self.retries);
        }
        span.name = self.method;
        span
    }
}

/// Queues a finished call's span (see [`record`]).
pub(crate) fn record_call(call: CallSpan) {
    if let Some(exporter) = tracer() {
        exporter.record(call.into_span());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_becomes_a_span_with_grpc_attributes() {
        let parent = TraceParent::root(true);
        let span = CallSpan {
            context: parent.child(),
            parent: Some(parent.span_id),
            method: "orders.v1.Orders/Create".into(),
            kind: SpanKind::Client,
            start: SystemTime::UNIX_EPOCH,
            duration: Duration::from_millis(2),
            code: tonic::Code::Unavailable,
            message: "no instance".into(),
            peer: Some("127.0.0.1:5000".into()),
            instance: Some("o-1".into()),
            retries: 1,
        }
        .into_span();
        assert_eq!(span.name, "orders.v1.Orders/Create");
        assert_eq!(span.error.as_deref(), Some("no instance"));
        let attribute = |key: &str| {
            span.attributes
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(attribute("rpc.service"), Some("orders.v1.Orders".into()));
        assert_eq!(attribute("rpc.method"), Some("Create".into()));
        assert_eq!(attribute("rpc.grpc.status_code"), Some(14i64.into()));
        assert_eq!(attribute("strata.instance"), Some("o-1".into()));
        assert_eq!(attribute("strata.retries"), Some(1u32.into()));
    }

    fn config(endpoint: Option<&str>) -> TraceConfig {
        TraceConfig {
            endpoint: endpoint.map(str::to_string),
            service_name: "from-env".into(),
            sample_ratio: 1.0,
        }
    }

    fn node(service: Option<&str>) -> NodeDefault {
        NodeDefault {
            collector: Collector {
                urls: vec!["http://127.0.0.1:7700/v1/traces".into()],
                token: Some("t".into()),
                http: plain_client(),
            },
            service: service.map(str::to_string),
        }
    }

    #[test]
    fn the_environment_wins_then_the_node_then_nothing() {
        // An endpoint in the environment: the node is not used.
        let (collector, service) = choose(
            config(Some("http://collector:4318/v1/traces")),
            false,
            Some(node(Some("orders"))),
            None,
        );
        let collector = collector.unwrap();
        assert_eq!(collector.urls, ["http://collector:4318/v1/traces"]);
        assert_eq!(collector.token, None);
        assert_eq!(service, "from-env");
        // None: the node, named by the provider, or by OTEL_SERVICE_NAME when set.
        let (collector, service) = choose(config(None), false, Some(node(Some("orders"))), None);
        let collector = collector.unwrap();
        assert_eq!(collector.urls, ["http://127.0.0.1:7700/v1/traces"]);
        assert_eq!(collector.token.as_deref(), Some("t"));
        assert_eq!(service, "orders");
        let (_, service) = choose(
            config(None),
            false,
            Some(node(Some("orders"))),
            Some("mine".into()),
        );
        assert_eq!(service, "mine");
        // A consumer's node: named after the executable.
        let (_, service) = choose(config(None), false, Some(node(None)), None);
        assert_eq!(service, executable_name().unwrap());
        // Turned off, or no node: nothing.
        assert!(choose(config(None), true, Some(node(None)), None)
            .0
            .is_none());
        assert!(choose(config(None), false, None, None).0.is_none());
    }
}
