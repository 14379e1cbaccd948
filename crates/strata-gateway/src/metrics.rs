//! The gateway's Prometheus metrics.

use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry,
};

/// Every metric of the gateway.
#[derive(Clone)]
pub struct Metrics {
    /// Requests answered, by route and status class (`route` is empty when none matched).
    pub requests: IntCounterVec,
    /// Time from the request's arrival to its response headers, by route.
    pub seconds: HistogramVec,
    /// Exchanges with upstream members that failed, by upstream and kind (`connect`,
    /// `timeout`, `reset`).
    pub upstream_failures: IntCounterVec,
    /// Retries on another member, by upstream.
    pub retries: IntCounterVec,
    /// Client connections open now.
    pub connections: IntGauge,
    /// Route tables applied.
    pub tables_applied: IntCounter,
    /// Route tables refused (invalid); the previous one keeps serving.
    pub tables_refused: IntCounter,
    /// The config-center version of the table in use (0: none).
    pub table_version: IntGauge,
    /// Access log lines dropped because the writer was behind.
    pub access_log_dropped: IntCounter,
}

/// A route's request counters (by status class) and latency histogram, looked up once per
/// table instead of once per request.
#[derive(Clone)]
pub struct RouteMetrics {
    by_class: [IntCounter; 5],
    seconds: prometheus::Histogram,
}

impl RouteMetrics {
    /// Counts one answered request.
    pub fn observe(&self, status: u16, seconds: f64) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.by_class[class].inc();
        self.seconds.observe(seconds);
    }
}

impl Metrics {
    /// The handles of route `name` (empty: no route matched).
    pub fn route(&self, name: &str) -> RouteMetrics {
        let class = |c: &str| self.requests.with_label_values(&[name, c]);
        RouteMetrics {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            seconds: self.seconds.with_label_values(&[name]),
        }
    }

    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let metrics = Metrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "strata_gateway_requests_total",
                    "Requests answered by the gateway, by route and status class",
                ),
                &["route", "code"],
            )?,
            seconds: HistogramVec::new(
                HistogramOpts::new(
                    "strata_gateway_request_duration_seconds",
                    "Time from a request's arrival to its response headers, by route",
                )
                .buckets(exponential_buckets(0.0001, 2.0, 18)?),
                &["route"],
            )?,
            upstream_failures: IntCounterVec::new(
                Opts::new(
                    "strata_gateway_upstream_failures_total",
                    "Failed exchanges with upstream members, by upstream and kind",
                ),
                &["upstream", "kind"],
            )?,
            retries: IntCounterVec::new(
                Opts::new(
                    "strata_gateway_retries_total",
                    "Requests retried on another member, by upstream",
                ),
                &["upstream"],
            )?,
            connections: IntGauge::new(
                "strata_gateway_connections",
                "Client connections open on the gateway listeners",
            )?,
            tables_applied: IntCounter::new(
                "strata_gateway_tables_applied_total",
                "Route tables applied",
            )?,
            tables_refused: IntCounter::new(
                "strata_gateway_tables_refused_total",
                "Route tables refused as invalid (the previous one keeps serving)",
            )?,
            table_version: IntGauge::new(
                "strata_gateway_table_version",
                "Config-center version of the route table in use (0: none)",
            )?,
            access_log_dropped: IntCounter::new(
                "strata_gateway_access_log_dropped_total",
                "Access log lines dropped because the writer was behind",
            )?,
        };
        registry.register(Box::new(metrics.access_log_dropped.clone()))?;
        registry.register(Box::new(metrics.requests.clone()))?;
        registry.register(Box::new(metrics.seconds.clone()))?;
        registry.register(Box::new(metrics.upstream_failures.clone()))?;
        registry.register(Box::new(metrics.retries.clone()))?;
        registry.register(Box::new(metrics.connections.clone()))?;
        registry.register(Box::new(metrics.tables_applied.clone()))?;
        registry.register(Box::new(metrics.tables_refused.clone()))?;
        registry.register(Box::new(metrics.table_version.clone()))?;
        Ok(metrics)
    }
}
