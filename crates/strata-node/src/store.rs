//! The domains' view of the KV service: [`strata_store::Store`] on [`KvService`].

use crate::service::KvService;
use std::sync::Arc;
use strata_proto::cluster::ClusterStatus;
use strata_proto::error::ApiError;
use strata_proto::kv::{
    LeaseGrantRequest, RangeRequest, RangeResponse, TxnRequest, TxnResponse, WatchRequest,
    WatchResponse,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The node's KV service as the registry's store.
pub struct NodeStore {
    /// The KV service.
    pub service: Arc<KvService>,
    /// Tracks watch tasks so shutdown waits for them.
    pub tracker: TaskTracker,
    /// Largest transaction the domains may write (a config is stored twice, as its current
    /// version and in its history, so this is above a client request's limit).
    pub max_txn_bytes: usize,
}

impl strata_store::Store for NodeStore {
    fn node_id(&self) -> u64 {
        self.service.node_id()
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse, ApiError> {
        self.service.range(request).await
    }

    async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, ApiError> {
        self.service.txn_within(request, self.max_txn_bytes).await
    }

    async fn lease_grant(&self, ttl: i64) -> Result<i64, ApiError> {
        Ok(self
            .service
            .lease_grant(LeaseGrantRequest { ttl, id: 0 })
            .await?
            .id)
    }

    async fn lease_keepalive(&self, id: i64) -> Result<i64, ApiError> {
        Ok(self.service.lease_keepalive(id).await?.ttl)
    }

    async fn lease_revoke(&self, id: i64) -> Result<(), ApiError> {
        self.service.lease_revoke(id).await.map(|_| ())
    }

    fn watch(
        &self,
        request: WatchRequest,
        cancel: CancellationToken,
    ) -> Result<mpsc::Receiver<WatchResponse>, ApiError> {
        crate::watch::open(self.service.clone(), request, cancel, &self.tracker)
    }

    async fn linearize(&self) -> Result<(), ApiError> {
        self.service.linearize().await
    }

    fn status(&self) -> ClusterStatus {
        self.service.status()
    }
}
