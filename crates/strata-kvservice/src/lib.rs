//! The KV service: the replicated KV store as every interface uses it.
//!
//! [`start`] builds it on a running Raft: the state machine glue ([`kv_machine`]), the service
//! layer with validation, forwarding and consistency ([`service`]) on the consensus handle of
//! [`strata_raft::consensus`], the leader's
//! lease clock ([`lease_clock`]) and its expiry and automatic compaction loops ([`loops`]), watches ([`watch`]), locks and elections
//! ([`coord`]). [`kv_api::NodeKv`] is the service as the [`strata_store::KvApi`] components
//! hold; [`http`] is the native `/v1/kv`, `/v1/lease`, `/v1/lock`, `/v1/election` and
//! `/v1/cluster` API, plus the internal leader route peers call.

pub mod auth_http;
pub mod coord;
pub mod http;
pub mod kv_api;
pub mod kv_machine;
pub mod lease_clock;
pub mod loops;
pub mod metrics;
pub mod service;
pub mod watch;

pub use kv_machine::KvMachine;
pub use loops::refresh_metrics;
pub use service::KvService;

use std::sync::Arc;
use strata_raft::consensus::{Consensus, Timing};
use strata_raft::{LogStore, Raft, StateMachineStore};
use strata_settings::ValidatedConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the KV service is built from: this node's Raft and its storage.
pub struct Parts {
    /// This node's id.
    pub id: u64,
    /// The running Raft.
    pub raft: Raft,
    /// The state machine Raft applies to.
    pub machine: Arc<KvMachine>,
    /// The log.
    pub log: LogStore,
    /// The state machine store (snapshots).
    pub sm: StateMachineStore<KvMachine>,
    /// The HTTP client peers are called with.
    pub client: strata_raft::network::PeerClient,
    /// The node's configuration.
    pub config: Arc<ValidatedConfig>,
    /// The data folder's free space (read-only below `kv.disk_reserve`).
    pub space: Arc<strata_raft::DiskSpace>,
}

/// Starts the KV service: its batchers, its forwarder and its leader loops run as tasks on
/// `tracker` until `cancel`.
pub fn start(parts: Parts, tracker: &TaskTracker, cancel: &CancellationToken) -> Arc<KvService> {
    let metrics = Arc::new(metrics::Metrics::new(parts.id));
    if let Err(error) = metrics
        .registry()
        .register(Box::new(parts.log.commit_seconds()))
    {
        tracing::warn!(%error, "the raft log's commit histogram is not exported");
    }
    let consensus = Consensus::start(
        parts.id,
        parts.raft.clone(),
        parts.client.clone(),
        metrics.consensus(),
        Timing {
            request_timeout: parts.config.kv.request_timeout.0,
            election_timeout_max: parts.config.raft.election_timeout_max.0,
        },
        parts.space.clone(),
        tracker,
        cancel,
    );
    let auto_compaction = parts.config.auto_compaction;
    let service = Arc::new(KvService::new(parts, metrics, consensus));
    tracker.spawn(loops::lease_expiry_loop(
        service.clone(),
        cancel.child_token(),
    ));
    tracker.spawn(loops::compaction_loop(
        service.clone(),
        auto_compaction,
        cancel.child_token(),
    ));
    tracker.spawn(loops::snapshot_after_compaction_loop(
        service.clone(),
        cancel.child_token(),
    ));
    service
}
