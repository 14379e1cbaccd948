//! Prometheus metrics of providers and consumers, in the process's default registry (a
//! provider serves them at `/metrics` on its own port, and registers `metrics_port` and
//! `metrics_path` so that the monitoring center finds them).

use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts};
use std::sync::LazyLock;

pub(crate) struct Metrics {
    pub client_calls: IntCounterVec,
    pub client_attempts: IntCounterVec,
    pub client_duration: HistogramVec,
    pub client_fallbacks: IntCounterVec,
    pub breaker_transitions: IntCounterVec,
    pub server_calls: IntCounterVec,
    pub server_duration: HistogramVec,
    pub server_in_flight: IntGaugeVec,
    pub heartbeats: IntCounterVec,
    pub spans_exported: IntCounter,
    pub spans_dropped: IntCounter,
}

const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    // A second registration (two copies of the crate) keeps the first; ours still counts.
    let _ = prometheus::default_registry().register(Box::new(metric.clone()));
    metric
}

fn histogram(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let metric = HistogramVec::new(
        prometheus::HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = prometheus::default_registry().register(Box::new(metric.clone()));
    metric
}

pub(crate) static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let spans = counter(
        "strata_rpc_spans_total",
        "Spans handed to the OTLP exporter, by outcome",
        &["outcome"],
    );
    let in_flight = IntGaugeVec::new(
        Opts::new(
            "strata_rpc_server_in_flight",
            "Calls being served now, by service",
        ),
        &["service"],
    )
    .unwrap_or_else(|e| panic!("metric: {e}"));
    let _ = prometheus::default_registry().register(Box::new(in_flight.clone()));
    Metrics {
        client_calls: counter(
            "strata_rpc_client_calls_total",
            "Calls made through a consumer, by service, method and final gRPC code",
            &["service", "method", "code"],
        ),
        client_attempts: counter(
            "strata_rpc_client_attempts_total",
            "Attempts sent (first tries, retries and hedges), by service and kind",
            &["service", "kind"],
        ),
        client_duration: histogram(
            "strata_rpc_client_duration_seconds",
            "Time from a call to its response headers, all attempts included",
            &["service", "method"],
        ),
        client_fallbacks: counter(
            "strata_rpc_client_fallbacks_total",
            "Calls answered by a fallback because breakers were open, by service",
            &["service"],
        ),
        breaker_transitions: counter(
            "strata_rpc_breaker_transitions_total",
            "Circuit breaker state changes, by service and new state",
            &["service", "state"],
        ),
        server_calls: counter(
            "strata_rpc_server_calls_total",
            "Calls served by a provider, by method and gRPC code",
            &["method", "code"],
        ),
        server_duration: histogram(
            "strata_rpc_server_duration_seconds",
            "Time to serve a call, to its response headers",
            &["method"],
        ),
        server_in_flight: in_flight,
        heartbeats: counter(
            "strata_rpc_heartbeats_total",
            "Registry heartbeats of providers, by outcome",
            &["outcome"],
        ),
        spans_exported: spans.with_label_values(&["exported"]),
        spans_dropped: spans.with_label_values(&["dropped"]),
    }
});
