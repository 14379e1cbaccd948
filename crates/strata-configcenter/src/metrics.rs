//! Prometheus metrics of the config center, named `strata_configcenter_*`.

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

/// The config center's metrics.
#[derive(Clone)]
pub struct ConfigMetrics {
    /// Operations served, by operation.
    pub operations: IntCounterVec,
    /// Configs in the view.
    pub configs: IntGauge,
    /// Open long-polls and watch streams.
    pub listeners: IntGauge,
}

impl ConfigMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let operations = IntCounterVec::new(
            Opts::new(
                "strata_configcenter_operations_total",
                "Config-center operations served, by operation",
            ),
            &["op"],
        )?;
        let configs = IntGauge::new(
            "strata_configcenter_configs",
            "Configs in the config center",
        )?;
        let listeners = IntGauge::new(
            "strata_configcenter_listeners",
            "Open config long-polls and watch streams on this node",
        )?;
        registry.register(Box::new(operations.clone()))?;
        registry.register(Box::new(configs.clone()))?;
        registry.register(Box::new(listeners.clone()))?;
        Ok(ConfigMetrics {
            operations,
            configs,
            listeners,
        })
    }

    /// Counts one operation.
    pub fn op(&self, op: &str) {
        self.operations.with_label_values(&[op]).inc();
    }
}

/// Counts a listener for as long as it lives.
pub struct ListenerGauge(IntGauge);

impl ListenerGauge {
    /// Counts one more listener.
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        ListenerGauge(gauge.clone())
    }
}

impl Drop for ListenerGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}
