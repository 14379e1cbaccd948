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
