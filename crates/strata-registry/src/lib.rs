//! The service registry: services and their instances, health checks, discovery, and the
//! native, Consul-compatible and DNS interfaces to them.
//!
//! State lives in the replicated KV store under [`model::ROOT`] (see [`strata_store::KvApi`]);
//! every node keeps a [`view::View`] of it that serves reads, DNS and change streams, and
//! runs its share of the health checks ([`checks`]). [`RegistryComponent`] plugs it into a node.
//!
//! The Consul-compatible listener also serves Consul's KV store, sessions, locks and
//! transactions, kept under [`consul_store::ROOT`]: the rules are [`consul_txn`] (pure), the
//! store side [`consul_store`], sessions [`consul_sessions`].

pub mod checks;
pub mod component;
pub mod consul;
pub mod consul_acl;
pub mod consul_kv;
pub mod consul_nodes;
pub mod consul_session;
pub mod consul_sessions;
pub mod consul_store;
pub mod consul_txn;
pub mod dns;
pub mod go_duration;
pub mod http;
pub mod metrics;
pub mod model;
pub mod probe;
pub mod registry;
pub mod view;

pub use component::{RegistryComponent, RegistryConfig};
pub use model::{Instance, InstanceRef, Registration};
pub use registry::{Query, QueryResult, Registered, Registry};
pub use strata_store::KvApi;

use rand::seq::SliceRandom;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Starts the registry on a node: its view, its check runner and its liveness key.
pub fn start(
    store: Arc<dyn KvApi>,
    prometheus: &prometheus::Registry,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> prometheus::Result<Arc<Registry>> {
    let view = Arc::new(view::View::new());
    let metrics = metrics::RegistryMetrics::new(prometheus)?;
    let registry = Arc::new(Registry::new(
        store.clone(),
        view.clone(),
        metrics,
        tracker.clone(),
    ));
    tracker.spawn(view::follow(store, view, cancel.child_token()));
    tracker.spawn(checks::keep_node_alive(
        registry.clone(),
        cancel.child_token(),
    ));
    tracker.spawn(checks::run_checks(registry.clone(), cancel.child_token()));
    tracker.spawn(refresh_gauges(registry.clone(), cancel.child_token()));
    Ok(registry)
}

async fn refresh_gauges(registry: Arc<Registry>, cancel: CancellationToken) {
    loop {
        let (services, instances) = registry.view.counts();
        registry.metrics.services.set(services as i64);
        registry.metrics.instances.set(instances as i64);
        registry.metrics.view_revision.set(registry.view.revision());
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

impl dns::Lookup for view::View {
    fn healthy(&self, service: &str, tag: Option<&str>) -> Vec<dns::Endpoint> {
        let Some((stored, _, _)) = self.service(model::DEFAULT_NAMESPACE, service) else {
            return Vec::new();
        };
        let mut endpoints: Vec<dns::Endpoint> = stored
            .iter()
            .map(|s| &s.instance)
            .filter(|i| {
                i.healthy() && tag.is_none_or(|t| i.tags.iter().any(|x| x.eq_ignore_ascii_case(t)))
            })
            .map(|i| dns::Endpoint {
                id: i.id.clone(),
                address: i.address.clone(),
                port: i.port,
                weight: i.weight.round().clamp(1.0, 65535.0) as u16,
            })
            .collect();
        endpoints.shuffle(&mut rand::thread_rng());
        endpoints
    }
}
