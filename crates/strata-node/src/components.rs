//! The one list of components a node can run, in start order. Adding a component to Strata
//! is one line here (and the crate in `Cargo.toml`); everything else is in its own crate.

use std::sync::Arc;
use strata_component::Component;

/// Every component, in start order: a component may use what an earlier one provides (the
/// Nacos API serves the registry and the config center). They stop in reverse order.
pub fn all() -> Vec<Arc<dyn Component>> {
    vec![
        Arc::new(strata_etcd::EtcdComponent),
        Arc::new(strata_registry::RegistryComponent),
        Arc::new(strata_configcenter::ConfigCenterComponent),
        Arc::new(strata_nacos::NacosComponent),
        // Before the gateway, which hands the monitor its spans.
        Arc::new(strata_monitor::MonitorComponent),
        Arc::new(strata_gateway::GatewayComponent),
        Arc::new(strata_xds::XdsComponent),
        Arc::new(strata_console::ConsoleComponent),
    ]
}
