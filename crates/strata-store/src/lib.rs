//! The KV API every component sees: [`KvApi`], one object-safe trait over the replicated KV
//! store, its leases, watches, locks, elections and cluster status. The node implements it;
//! components (the etcd API, the registry, the config center, ...) hold an `Arc<dyn KvApi>` and
//! never depend on the node. [`memory::MemoryKv`] implements it in memory for unit tests of
//! domain logic.
//!
//! [`follow`] keeps a materialised view of a key prefix current, for domains that serve reads
//! from memory; [`AppliedRevision`] says how far such a view has got.

mod applied;
pub mod memory;

pub use applied::AppliedRevision;

use futures::StreamExt;
use strata_proto::cluster::ClusterStatus;
use strata_proto::error::ApiError;
use strata_proto::kv::{
    CompactRequest, CompactResponse, DeleteRangeRequest, DeleteRangeResponse, KeyValue,
    LeaseGrantRequest, LeaseGrantResponse, LeaseLeasesResponse, LeaseRevokeResponse,
    LeaseTimeToLiveResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest,
    TxnResponse, WatchRequest, WatchResponse,
};
use strata_proto::NodeInfo;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A watch's messages, produced as its consumer polls them.
pub type WatchStream = futures::stream::BoxStream<'static, WatchResponse>;

/// A boxed, sendable future (keeps [`KvApi`] object safe).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A held lock or a won election: the key that owns it and the fencing revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockGuard {
    /// The owner key (`NAME/LEASE_HEX`); pass it to `unlock` or `resign`.
    pub key: Vec<u8>,
    /// The key's create revision: a fencing token that grows with each new holder.
    pub revision: i64,
}

/// The replicated KV store as components use it. Errors are [`ApiError`]s, which every
/// interface maps to its own dialect. Reads are linearizable unless the request says
/// `serializable`; writes go through the Raft log.
pub trait KvApi: Send + Sync + 'static {
    /// This node's id (the member id in etcd headers).
    fn node_id(&self) -> u64;
    /// A stable id of the cluster (for etcd response headers).
    fn cluster_id(&self) -> u64;
    /// The current Raft term.
    fn raft_term(&self) -> u64;
    /// The current KV revision on this node.
    fn revision(&self) -> i64;
    /// The compaction revision on this node: reads and watches below it fail.
    fn compact_revision(&self) -> i64;

    /// Reads keys.
    fn range(&self, req: RangeRequest) -> BoxFuture<'_, Result<RangeResponse, ApiError>>;
    /// Writes a key.
    fn put(&self, req: PutRequest) -> BoxFuture<'_, Result<PutResponse, ApiError>>;
    /// Deletes keys.
    fn delete_range(
        &self,
        req: DeleteRangeRequest,
    ) -> BoxFuture<'_, Result<DeleteRangeResponse, ApiError>>;
    /// Runs a transaction within the client request size limit (`kv.max_request_bytes`).
    fn txn(&self, req: TxnRequest) -> BoxFuture<'_, Result<TxnResponse, ApiError>>;
    /// Runs a transaction of at most `max_bytes`: for domains whose documents are stored more
    /// than once (a config and its history entry) and so exceed a client request's limit.
    fn txn_within(
        &self,
        req: TxnRequest,
        max_bytes: usize,
    ) -> BoxFuture<'_, Result<TxnResponse, ApiError>>;
    /// Compacts history.
    fn compact(&self, req: CompactRequest) -> BoxFuture<'_, Result<CompactResponse, ApiError>>;
    /// Waits until this node has applied everything committed before the call.
    fn linearize(&self) -> BoxFuture<'_, Result<(), ApiError>>;

    /// Opens a watch. The first message has `created`; a message with
    /// `compact_revision > 0` means it was cancelled for compaction. It ends when `cancel`
    /// fires or the node stops; dropping it closes the watch.
    fn watch(&self, req: WatchRequest, cancel: CancellationToken) -> Result<WatchStream, ApiError>;

    /// Grants a lease (`id` 0: the store picks one).
    fn lease_grant(
        &self,
        req: LeaseGrantRequest,
    ) -> BoxFuture<'_, Result<LeaseGrantResponse, ApiError>>;
    /// Revokes a lease, deleting its keys.
    fn lease_revoke(&self, id: i64) -> BoxFuture<'_, Result<LeaseRevokeResponse, ApiError>>;
    /// Renews a lease; `ttl` in the reply is the renewed TTL; `not_found` once it expired.
    fn lease_keepalive(&self, id: i64) -> BoxFuture<'_, Result<LeaseTimeToLiveResponse, ApiError>>;
    /// Remaining TTL, optionally with the lease's keys.
    fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> BoxFuture<'_, Result<LeaseTimeToLiveResponse, ApiError>>;
    /// Every live lease.
    fn lease_leases(&self) -> BoxFuture<'_, Result<LeaseLeasesResponse, ApiError>>;

    /// Acquires the lock `name`, owned by `lease`: waits until every earlier waiter is gone.
    fn lock(&self, name: Vec<u8>, lease: i64) -> BoxFuture<'_, Result<LockGuard, ApiError>>;
    /// Releases a lock by deleting its key.
    fn unlock(&self, key: Vec<u8>) -> BoxFuture<'_, Result<(), ApiError>>;
    /// Campaigns in election `name` with `value`, owned by `lease`; resolves once leader.
    fn campaign(
        &self,
        name: Vec<u8>,
        lease: i64,
        value: Vec<u8>,
    ) -> BoxFuture<'_, Result<LockGuard, ApiError>>;
    /// Updates the leader's value; fails if `leader` no longer leads.
    fn proclaim(&self, leader: LockGuard, value: Vec<u8>) -> BoxFuture<'_, Result<(), ApiError>>;
    /// The current leader's key-value of election `name`, if any.
    fn election_leader(&self, name: Vec<u8>) -> BoxFuture<'_, Result<Option<KeyValue>, ApiError>>;
    /// Streams the leader's key-value each time leadership or the value changes.
    fn observe(&self, name: Vec<u8>) -> Result<mpsc::Receiver<KeyValue>, ApiError>;
    /// Gives up leadership (deletes the leader key).
    fn resign(&self, leader: LockGuard) -> BoxFuture<'_, Result<(), ApiError>>;

    /// Members, leader, term and indexes, as this node sees them.
    fn status(&self) -> ClusterStatus;
    /// Adds a member (learner first, then voter); `id` 0 picks the next free id.
    fn add_member(&self, id: u64, info: NodeInfo) -> BoxFuture<'_, Result<u64, ApiError>>;
    /// Removes a member.
    fn remove_member(&self, id: u64) -> BoxFuture<'_, Result<(), ApiError>>;
    /// Approximate size of this node's data folder in bytes.
    fn db_size(&self) -> u64;
    /// Writes a backup of the whole state as it is now (a snapshot file, see `strata cluster
    /// snapshot save`) and streams it. Stores without snapshots cannot.
    fn backup(&self) -> BoxFuture<'_, Result<Backup, ApiError>> {
        Box::pin(async {
            Err(ApiError::new(
                strata_proto::error::ErrorCode::FailedPrecondition,
                "this store keeps no snapshots to back up",
            ))
        })
    }
}

/// A backup being sent: its size, and its bytes a chunk at a time.
pub struct Backup {
    /// Bytes in all.
    pub size: u64,
    /// The chunks, in order; an error ends the stream.
    pub chunks: mpsc::Receiver<Result<Vec<u8>, ApiError>>,
}

/// Grants a lease of `ttl` seconds and returns its id.
pub async fn grant(kv: &dyn KvApi, ttl: i64) -> Result<i64, ApiError> {
    Ok(kv.lease_grant(LeaseGrantRequest { ttl, id: 0 }).await?.id)
}

/// A materialised view of one key prefix, kept current by [`follow`].
pub trait Follower: Send + Sync + 'static {
    /// Replaces the view with a range read of the prefix at `revision`.
    fn load(&self, kvs: &[KeyValue], revision: i64);
    /// Applies watched events, in revision order.
    fn apply(&self, events: &[strata_proto::kv::Event]);
}

/// Keeps `view` current until `cancel`: loads the prefix, then follows it with one watch from
/// the next revision; reloads when the watch ends (compaction, or the store's own restart).
pub async fn follow<F: Follower>(
    store: std::sync::Arc<dyn KvApi>,
    prefix: &str,
    view: std::sync::Arc<F>,
    cancel: CancellationToken,
) {
    use std::time::Duration;
    let mut backoff =
        strata_api::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
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
                    () = tokio::time::sleep(backoff.next_pause()) => {}
                }
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
        backoff.reset();
        while let Some(message) = rx.next().await {
            if message.compact_revision != 0 {
                tracing::info!(prefix, "view fell behind compaction; reloading");
                break;
            }
            view.apply(&message.events);
        }
    }
}
