//! The configuration center: versioned configs by namespace, group and data id, with
//! history, diff, rollback, gray release, push to listeners, encryption, export and import.
//!
//! State lives in the replicated KV store under [`model::ROOT`] (through
//! [`strata_store::KvApi`]); every node keeps a [`view::View`] of it that serves reads,
//! long-polls and watch streams. [`ConfigCenterComponent`] plugs it into a node.

pub mod center;
pub mod cipher;
pub mod component;
pub mod diff;
pub mod http;
pub mod metrics;
pub mod model;
pub mod transfer;
pub mod validate;
pub mod view;

pub use center::{ConfigCenter, Publish, Served, Settings};
pub use component::{ConfigCenterComponent, ConfigCenterConfig};

use std::sync::Arc;
use std::time::Duration;
use strata_store::KvApi;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Starts the config center on a node: its view and its gauges.
pub fn start(
    store: Arc<dyn KvApi>,
    cipher: Option<cipher::Cipher>,
    settings: Settings,
    prometheus: &prometheus::Registry,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> prometheus::Result<Arc<ConfigCenter>> {
    let view = Arc::new(view::View::new(cipher.clone()));
    let metrics = metrics::ConfigMetrics::new(prometheus)?;
    let center = Arc::new(ConfigCenter::new(
        store.clone(),
        view.clone(),
        metrics,
        cipher,
        settings,
        tracker.clone(),
    ));
    tracker.spawn(view::follow(store, view, cancel.child_token()));
    let gauges = center.clone();
    tracker.spawn(async move {
        loop {
            gauges.metrics.configs.set(gauges.view.len() as i64);
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
    Ok(center)
}
