//! The gateway's Prometheus metrics.

use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
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
    /// Answers from upstream members, by upstream and status class.
    pub upstream_requests: IntCounterVec,
    /// Time from sending a request to a member to its response headers, by upstream.
    pub upstream_seconds: HistogramVec,
    /// Time to open a connection to a member, by upstream.
    pub upstream_connect_seconds: HistogramVec,
    /// Connections opened to members, by upstream (with the requests, the pool reuse ratio:
    /// 1 - opened / requests).
    pub upstream_connections_opened: IntCounterVec,
    /// Connections to members open now, by upstream.
    pub upstream_connections: IntGaugeVec,
    /// 1 while active health checks find a member up, 0 while down, by upstream and member.
    pub upstream_member_healthy: IntGaugeVec,
    /// 1 for a breaker's current state, 0 for the others, by upstream, member (empty for a
    /// group's breaker) and state.
    pub breaker_state: IntGaugeVec,
    /// Breaker transitions, by upstream, member, from and to.
    pub breaker_transitions: IntCounterVec,
    /// Requests refused by an open breaker, by upstream.
    pub breaker_rejected: IntCounterVec,
    /// Ejections by outlier detection, by upstream and reason.
    pub ejections: IntCounterVec,
    /// Requests refused by a rate limit, by route.
    pub rate_limited: IntCounterVec,
    /// Requests refused by a concurrency limit, by `route` or `upstream` and name.
    pub over_capacity: IntCounterVec,
    /// Retries the budget refused, by upstream.
    pub retries_refused: IntCounterVec,
    /// Hedged requests sent, by upstream.
    pub hedges: IntCounterVec,
    /// Requests refused at the edge, by route and kind (`unauthenticated`, `forbidden`).
    pub auth_refused: IntCounterVec,
    /// Spans of requests handed to the exporter, by outcome (`exported`, `dropped`).
    pub spans: IntCounterVec,
}

/// An upstream group's metric handles, looked up once when the group is built.
#[derive(Clone)]
pub struct UpstreamMetrics {
    by_class: [IntCounter; 5],
    seconds: prometheus::Histogram,
    /// Connect time.
    pub connect_seconds: prometheus::Histogram,
    /// Connections opened.
    pub opened: IntCounter,
    /// Connections open now.
    pub open: IntGauge,
}

impl std::fmt::Debug for UpstreamMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamMetrics")
            .field("opened", &self.opened.get())
            .field("open", &self.open.get())
            .finish_non_exhaustive()
    }
}

impl UpstreamMetrics {
    /// Counts one answer of a member.
    pub fn observe(&self, status: u16, seconds: f64) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.by_class[class].inc();
        self.seconds.observe(seconds);
    }
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

/// The five status-class counters of `name` in `vec` (labels: name, class).
fn classes(vec: &IntCounterVec, name: &str) -> [IntCounter; 5] {
    ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| vec.with_label_values(&[name, class]))
}

impl Metrics {
    /// The handles of route `name` (empty: no route matched).
    pub fn route(&self, name: &str) -> RouteMetrics {
        RouteMetrics {
            by_class: classes(&self.requests, name),
            seconds: self.seconds.with_label_values(&[name]),
        }
    }

    /// The handles of upstream group `name`.
    pub fn upstream(&self, name: &str) -> UpstreamMetrics {
        UpstreamMetrics {
            by_class: classes(&self.upstream_requests, name),
            seconds: self.upstream_seconds.with_label_values(&[name]),
            connect_seconds: self.upstream_connect_seconds.with_label_values(&[name]),
            opened: self.upstream_connections_opened.with_label_values(&[name]),
            open: self.upstream_connections.with_label_values(&[name]),
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
            upstream_requests: IntCounterVec::new(
                Opts::new(
                    "strata_gateway_upstream_requests_total",
                    "Answers from upstream members, by upstream and status class",
                ),
                &["upstream", "code"],
            )?,
            upstream_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "strata_gateway_upstream_duration_seconds",
                    "Time from sending a request to a member to its response headers, by upstream",
                )
                .buckets(exponential_buckets(0.0001, 2.0, 18)?),
                &["upstream"],
            )?,
            upstream_connect_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "strata_gateway_upstream_connect_duration_seconds",
                    "Time to open a connection to an upstream member, by upstream",
                )
                .buckets(exponential_buckets(0.00005, 2.0, 16)?),
                &["upstream"],
            )?,
            upstream_connections_opened: IntCounterVec::new(
                Opts::new(
                    "strata_gateway_upstream_connections_opened_total",
                    "Connections opened to upstream members, by upstream (pool reuse ratio: 1 - this / strata_gateway_upstream_requests_total)",
                ),
                &["upstream"],
            )?,
            upstream_connections: IntGaugeVec::new(
                Opts::new(
                    "strata_gateway_upstream_connections",
                    "Connections to upstream members open now, by upstream",
                ),
                &["upstream"],
            )?,
            upstream_member_healthy: IntGaugeVec::new(
                Opts::new(
                    "strata_gateway_upstream_member_healthy",
                    "1 while active health checks find a static member up, 0 while down",
                ),
                &["upstream", "member"],
            )?,
            breaker_state: IntGaugeVec::new(
                Opts::new(
                    "strata_gateway_breaker_state",
                    "1 for a circuit breaker's current state, by upstream, member (empty: the group's breaker) and state",
                ),
                &["upstream", "member", "state"],
            )?,
            breaker_transitions: IntCounterVec::new(
                Opts::new(
                    "strata_gateway_breaker_transitions_total",
                    "Circuit breaker state changes, by upstream, member, from and to",
                ),
                &["upstream", "member", "from", "to"],
            )?,
            breaker_rejected: IntCounterVec::new(
                Opts::new(
                    "strata_gateway_breaker_rejected_total",
                    "Requests refused by an open circuit breaker, by upstream",
                ),
                &["upstream"],
            )?,
            ejections: IntCounterVec::new(
                Opts::new(
                    "strata_gateway_outlier_ejections_total",
                    "Members ejected by outlier detection, by upstream and reason",
                ),
                &["upstream", "reason"],
            )?,
            rate_limited: IntCounterVec::new(
                Opts::new(
                    "strata_gateway_rate_limited_total",
                    "Requests refused (429) by a rate limit, by route",
                ),
                &["route"],
            )?,
            over_capacity: IntCounterVec::new(
                Opts::new(
                    "strata_gateway_concurrency_rejected_total",
                    "Requests refused (503) by a concurrency limit, by scope (route or upstream) and name",
                ),
                &["scope", "name"],
            )?,
            retries_refused: IntCounterVec::new(
                Opts::new(
                    "strata_gateway_retries_refused_total",
                    "Retries the retry budget refused, by upstream",
                ),
                &["upstream"],
            )?,
            hedges: IntCounterVec::new(
                Opts::new(
                    "strata_gateway_hedged_requests_total",
                    "Second requests sent because the first was slow, by upstream",
                ),
                &["upstream"],
            )?,
            auth_refused: IntCounterVec::new(
                Opts::new(
                    "strata_gateway_auth_refused_total",
                    "Requests refused by a route's auth, by route and kind (unauthenticated, forbidden)",
                ),
                &["route", "kind"],
            )?,
            spans: IntCounterVec::new(
                Opts::new(
                    "strata_gateway_spans_total",
                    "Spans of requests handed to the OTLP exporter, by outcome (exported, dropped)",
                ),
                &["outcome"],
            )?,
        };
        for collector in [
            Box::new(metrics.breaker_state.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.breaker_transitions.clone()),
            Box::new(metrics.breaker_rejected.clone()),
            Box::new(metrics.ejections.clone()),
            Box::new(metrics.rate_limited.clone()),
            Box::new(metrics.over_capacity.clone()),
            Box::new(metrics.retries_refused.clone()),
            Box::new(metrics.hedges.clone()),
            Box::new(metrics.auth_refused.clone()),
            Box::new(metrics.spans.clone()),
        ] {
            registry.register(collector)?;
        }
        registry.register(Box::new(metrics.upstream_requests.clone()))?;
        registry.register(Box::new(metrics.upstream_seconds.clone()))?;
        registry.register(Box::new(metrics.upstream_connect_seconds.clone()))?;
        registry.register(Box::new(metrics.upstream_connections_opened.clone()))?;
        registry.register(Box::new(metrics.upstream_connections.clone()))?;
        registry.register(Box::new(metrics.upstream_member_healthy.clone()))?;
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
