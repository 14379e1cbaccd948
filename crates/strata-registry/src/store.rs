//! What the registry needs from the replicated KV store. The node implements it on its KV
//! service; the registry never depends on the node (layering: typed domains sit on the KV).

use std::future::Future;
use strata_proto::cluster::ClusterStatus;
use strata_proto::error::ApiError;
use strata_proto::kv::{
    RangeRequest, RangeResponse, TxnRequest, TxnResponse, WatchRequest, WatchResponse,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The replicated KV store, as the registry uses it.
pub trait Store: Send + Sync + 'static {
    /// This node's id.
    fn node_id(&self) -> u64;

    /// Reads keys.
    fn range(
        &self,
        request: RangeRequest,
    ) -> impl Future<Output = Result<RangeResponse, ApiError>> + Send;

    /// Runs a transaction through the log.
    fn txn(
        &self,
        request: TxnRequest,
    ) -> impl Future<Output = Result<TxnResponse, ApiError>> + Send;

    /// Grants a lease of `ttl` seconds and returns its id.
    fn lease_grant(&self, ttl: i64) -> impl Future<Output = Result<i64, ApiError>> + Send;

    /// Renews a lease and returns its TTL; `not_found` when it expired.
    fn lease_keepalive(&self, id: i64) -> impl Future<Output = Result<i64, ApiError>> + Send;

    /// Revokes a lease, deleting its keys.
    fn lease_revoke(&self, id: i64) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Opens a watch; it ends when `cancel` fires or the node stops.
    fn watch(
        &self,
        request: WatchRequest,
        cancel: CancellationToken,
    ) -> Result<mpsc::Receiver<WatchResponse>, ApiError>;

    /// Waits until this node has applied everything committed before the call.
    fn linearize(&self) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// The cluster as this node sees it.
    fn status(&self) -> ClusterStatus;
}
