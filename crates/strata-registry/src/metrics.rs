//! Prometheus metrics of the registry, named `strata_registry_*`.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The registry's metrics.
#[derive(Clone)]
pub struct RegistryMetrics {
    /// Operations served, by operation.
    pub operations: IntCounterVec,
    /// Heartbeats of ephemeral instances received by this node.
    pub heartbeats: IntCounter,
    /// Health transitions written by this node.
    pub status_changes: IntCounter,
    /// Probe runs on this node, by result.
    pub check_runs: IntCounterVec,
    /// Checks this node runs now.
    pub checks_running: IntGauge,
    /// Services in the view.
    pub services: IntGauge,
    /// Instances in the view.
    pub instances: IntGauge,
    /// Open change subscriptions (watches and blocking queries excluded).
    pub subscribers: IntGauge,
    /// Revision the view has applied.
    pub view_revision: IntGauge,
}

impl RegistryMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let operations = IntCounterVec::new(
            Opts::new(
                "strata_registry_operations_total",
                "Registry operations served, by operation",
            ),
            &["op"],
        )?;
        let heartbeats = IntCounter::new(
            "strata_registry_heartbeats_total",
            "Heartbeats of ephemeral instances received",
        )?;
        let status_changes = IntCounter::new(
            "strata_registry_status_changes_total",
            "Health transitions written by this node",
        )?;
        let check_runs = IntCounterVec::new(
            Opts::new(
                "strata_registry_check_runs_total",
                "Health probes run on this node, by result",
            ),
            &["result"],
        )?;
        let checks_running = IntGauge::new(
            "strata_registry_checks_running",
            "Health checks this node runs",
        )?;
        let services = IntGauge::new("strata_registry_services", "Services in the registry")?;
        let instances = IntGauge::new("strata_registry_instances", "Instances in the registry")?;
        let subscribers =
            IntGauge::new("strata_registry_subscribers", "Open registry watch streams")?;
        let view_revision = IntGauge::new(
            "strata_registry_view_revision",
            "Store revision the registry view has applied",
        )?;
        registry.register(Box::new(operations.clone()))?;
        registry.register(Box::new(heartbeats.clone()))?;
        registry.register(Box::new(status_changes.clone()))?;
        registry.register(Box::new(check_runs.clone()))?;
        registry.register(Box::new(checks_running.clone()))?;
        registry.register(Box::new(services.clone()))?;
        registry.register(Box::new(instances.clone()))?;
        registry.register(Box::new(subscribers.clone()))?;
        registry.register(Box::new(view_revision.clone()))?;
        Ok(RegistryMetrics {
            operations,
            heartbeats,
            status_changes,
            check_runs,
            checks_running,
            services,
            instances,
            subscribers,
            view_revision,
        })
    }

    /// Counts one operation.
    pub fn op(&self, op: &str) {
        self.operations.with_label_values(&[op]).inc();
    }
}

/// Metrics of the Consul KV store, sessions and transactions, named
/// `strata_registry_consul_*`.
#[derive(Clone)]
pub struct ConsulKvMetrics {
    /// KV and transaction requests served, by operation.
    pub requests: IntCounterVec,
    /// Transactions whose commit found a key changed since it was read, and ran again.
    pub conflicts: IntCounter,
    /// Lock acquisitions, by result: `acquired`, `held` (by another session), `delayed`
    /// (lock delay), `invalid` (no such session).
    pub acquires: IntCounterVec,
    /// Blocking queries waiting now.
    pub blocking: IntGauge,
    /// Live sessions in this node's view.
    pub sessions: IntGauge,
    /// Session operations served, by operation.
    pub session_ops: IntCounterVec,
    /// Sessions whose locks this node cleaned up, by how they ended: `destroyed` (by a
    /// client) or `lapsed` (TTL, node, or health check).
    pub invalidated: IntCounterVec,
    /// Keys whose lock an invalidated session lost, by its behavior (`release`, `delete`).
    pub locks_lost: IntCounterVec,
}

impl ConsulKvMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "strata_registry_consul_kv_requests_total",
                "Consul KV and transaction requests served, by operation",
            ),
            &["op"],
        )?;
        let conflicts = IntCounter::new(
            "strata_registry_consul_txn_conflicts_total",
            "Consul KV writes that found a key changed since it was read and ran again",
        )?;
        let acquires = IntCounterVec::new(
            Opts::new(
                "strata_registry_consul_lock_acquires_total",
                "Consul lock acquisitions, by result",
            ),
            &["result"],
        )?;
        let blocking = IntGauge::new(
            "strata_registry_consul_blocking_queries",
            "Consul KV and session blocking queries waiting",
        )?;
        let sessions = IntGauge::new(
            "strata_registry_consul_sessions",
            "Live Consul sessions in this node's view",
        )?;
        let session_ops = IntCounterVec::new(
            Opts::new(
                "strata_registry_consul_session_ops_total",
                "Consul session operations served, by operation",
            ),
            &["op"],
        )?;
        let invalidated = IntCounterVec::new(
            Opts::new(
                "strata_registry_consul_sessions_invalidated_total",
                "Invalidated Consul sessions whose locks this node cleaned up, by cause",
            ),
            &["cause"],
        )?;
        let locks_lost = IntCounterVec::new(
            Opts::new(
                "strata_registry_consul_locks_lost_total",
                "Keys whose lock an invalidated Consul session lost, by its behavior",
            ),
            &["behavior"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(conflicts.clone()))?;
        registry.register(Box::new(acquires.clone()))?;
        registry.register(Box::new(blocking.clone()))?;
        registry.register(Box::new(sessions.clone()))?;
        registry.register(Box::new(session_ops.clone()))?;
        registry.register(Box::new(invalidated.clone()))?;
        registry.register(Box::new(locks_lost.clone()))?;
        Ok(ConsulKvMetrics {
            requests,
            conflicts,
            acquires,
            blocking,
            sessions,
            session_ops,
            invalidated,
            locks_lost,
        })
    }

    /// Counts one KV request.
    pub fn request(&self, op: &str) {
        self.requests.with_label_values(&[op]).inc();
    }
}
