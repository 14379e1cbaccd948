//! What Strata's typed domains (the registry, the config center) need from the replicated KV
//! store. The node implements [`Store`] on its KV service; the domains never depend on the node
//! (layering: typed domains sit on the KV and meet the node through this trait).

use std::future::Future;
use strata_proto::cluster::ClusterStatus;
use strata_proto::error::ApiError;
use strata_proto::kv::{
    RangeRequest, RangeResponse, TxnRequest, TxnResponse, WatchRequest, WatchResponse,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The replicated KV store, as the domains use it.
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

/// A materialised view of one key prefix, kept current by [`follow`].
pub trait Follower: Send + Sync + 'static {
    /// Replaces the view with a range read of the prefix at `revision`.
    fn load(&self, kvs: &[strata_proto::kv::KeyValue], revision: i64);
    /// Applies watched events, in revision order.
    fn apply(&self, events: &[strata_proto::kv::Event]);
}

/// Keeps `view` current until `cancel`: loads the prefix, then follows it with one watch from
/// the next revision; reloads when the watch ends (compaction, or the store's own restart).
pub async fn follow<S: Store, F: Follower>(
    store: std::sync::Arc<S>,
    prefix: &str,
    view: std::sync::Arc<F>,
    cancel: CancellationToken,
) {
    use std::time::Duration;
    let mut backoff = Duration::from_millis(50);
    while !cancel.is_cancelled() {
        let loaded = store
            .range(RangeRequest {
                key: prefix.as_bytes().to_vec(),
                prefix: true,
                serializable: true,
                ..RangeRequest::default()
            })
            .await;
        let response = match loaded {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(prefix, error = %e, "view load failed; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let revision = response.header.revision;
        tracing::debug!(prefix, revision, keys = response.kvs.len(), "view loaded");
        view.load(&response.kvs, revision);
        drop(response);
        let watch = store.watch(
            WatchRequest {
                key: prefix.as_bytes().to_vec(),
                prefix: true,
                start_revision: revision + 1,
                ..WatchRequest::default()
            },
            cancel.child_token(),
        );
        let mut rx = match watch {
            Ok(rx) => rx,
            Err(e) => {
                tracing::warn!(prefix, error = %e, "view watch failed; reloading");
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        while let Some(message) = rx.recv().await {
            if message.compact_revision != 0 {
                tracing::info!(prefix, "view fell behind compaction; reloading");
                break;
            }
            view.apply(&message.events);
        }
    }
}
