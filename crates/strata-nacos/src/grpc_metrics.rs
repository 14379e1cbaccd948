//! Prometheus metrics of the Nacos gRPC listener, named `strata_nacos_grpc_*`.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

/// The Nacos gRPC listener's metrics.
#[derive(Clone)]
pub struct GrpcMetrics {
    /// Requests answered, by request type and result (`ok`, `error`).
    pub requests: IntCounterVec,
    /// Time to answer a unary request.
    pub request_seconds: Histogram,
    /// Connections set up (a bi-stream with its `ConnectionSetupRequest`) and not yet gone.
    pub connections: IntGauge,
    /// Server pushes, by push type and outcome (`sent`, `dropped`, `acked`).
    pub pushes: IntCounterVec,
    /// Connections that went, by why: `client` (its stream ended), `shutdown` (this node
    /// stopped), `unresponsive` (no answer to `ClientDetectionRequest`), `refused` (set up
    /// while this node was stopping: told to reconnect elsewhere).
    pub closed: IntCounterVec,
}

impl GrpcMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "strata_nacos_grpc_requests_total",
                "Nacos gRPC requests answered, by request type and result",
            ),
            &["type", "result"],
        )?;
        let request_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "strata_nacos_grpc_request_duration_seconds",
                "Time to answer a Nacos gRPC unary request",
            )
            .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
        )?;
        let connections = IntGauge::new(
            "strata_nacos_grpc_connections",
            "Nacos gRPC connections set up on this node",
        )?;
        let pushes = IntCounterVec::new(
            Opts::new(
                "strata_nacos_grpc_pushes_total",
                "Nacos gRPC server pushes, by push type and outcome",
            ),
            &["type", "outcome"],
        )?;
        let closed = IntCounterVec::new(
            Opts::new(
                "strata_nacos_grpc_connections_closed_total",
                "Nacos gRPC connections that went, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_seconds.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(pushes.clone()))?;
        registry.register(Box::new(closed.clone()))?;
        Ok(GrpcMetrics {
            requests,
            request_seconds,
            connections,
            pushes,
            closed,
        })
    }

    /// Metrics registered nowhere, for unit tests.
    #[cfg(test)]
    pub fn unregistered() -> Self {
        GrpcMetrics::new(&Registry::new()).expect("a fresh registry has no clashing names")
    }
}
