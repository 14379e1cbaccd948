//! [`EtcdBackend`]: what the gRPC services need from the node.

use strata_proto::error::ApiError;
use strata_proto::kv::{
    CompactRequest, CompactResponse, DeleteRangeRequest, DeleteRangeResponse, KeyValue,
    LeaseGrantRequest, LeaseGrantResponse, LeaseLeasesResponse, LeaseRevokeResponse,
    LeaseTimeToLiveResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest,
    TxnResponse, WatchRequest, WatchResponse,
};
use strata_proto::{ClusterStatus, NodeInfo};
use tokio::sync::mpsc;

/// A boxed, sendable future (the trait is object safe).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A held lock: the key that owns it and the fencing revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockGuard {
    /// The lock key (`NAME/LEASE_HEX`); pass it to `unlock`.
    pub key: Vec<u8>,
    /// The key's create revision: a fencing token that grows with each new holder.
    pub revision: i64,
}

/// The node-side operations behind the etcd API. Errors are [`ApiError`]s; the gRPC layer
/// maps their codes to etcd's status codes and messages.
pub trait EtcdBackend: Send + Sync + 'static {
    /// A stable id of the cluster (for response headers).
    fn cluster_id(&self) -> u64;
    /// This node's id (member id in headers).
    fn member_id(&self) -> u64;
    /// The current Raft term.
    fn raft_term(&self) -> u64;
    /// The current KV revision on this node.
    fn revision(&self) -> i64;
    /// The compaction revision on this node: reads and watches below it fail. The gRPC layer
    /// reports it in `compact_revision` when [`watch`](Self::watch) refuses a start revision
    /// with a `compacted` error, so clients know where history resumes. The default (the
    /// current revision) is safe but makes resuming clients skip history they could still
    /// read; implementations should return the real value.
    fn compact_revision(&self) -> i64 {
        self.revision()
    }

    /// Reads keys (linearizable unless `serializable`).
    fn range(&self, req: RangeRequest) -> BoxFuture<'_, Result<RangeResponse, ApiError>>;
    /// Writes a key.
    fn put(&self, req: PutRequest) -> BoxFuture<'_, Result<PutResponse, ApiError>>;
    /// Deletes keys.
    fn delete_range(
        &self,
        req: DeleteRangeRequest,
    ) -> BoxFuture<'_, Result<DeleteRangeResponse, ApiError>>;
    /// Runs a transaction.
    fn txn(&self, req: TxnRequest) -> BoxFuture<'_, Result<TxnResponse, ApiError>>;
    /// Compacts history.
    fn compact(&self, req: CompactRequest) -> BoxFuture<'_, Result<CompactResponse, ApiError>>;

    /// Opens a watch. The first message has `created`; dropping the receiver cancels it.
    /// A message with `compact_revision > 0` means the watch was cancelled for compaction.
    fn watch(&self, req: WatchRequest) -> Result<mpsc::Receiver<WatchResponse>, ApiError>;

    /// Grants a lease.
    fn lease_grant(
        &self,
        req: LeaseGrantRequest,
    ) -> BoxFuture<'_, Result<LeaseGrantResponse, ApiError>>;
    /// Revokes a lease.
    fn lease_revoke(&self, id: i64) -> BoxFuture<'_, Result<LeaseRevokeResponse, ApiError>>;
    /// Renews a lease; `ttl` in the reply is the renewed TTL.
    fn lease_keepalive(&self, id: i64) -> BoxFuture<'_, Result<LeaseTimeToLiveResponse, ApiError>>;
    /// Remaining TTL, optionally with keys.
    fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> BoxFuture<'_, Result<LeaseTimeToLiveResponse, ApiError>>;
    /// Every live lease.
    fn lease_leases(&self) -> BoxFuture<'_, Result<LeaseLeasesResponse, ApiError>>;

    /// Members, leader, term and indexes.
    fn cluster_status(&self) -> ClusterStatus;
    /// Adds a member (learner first, then voter). The new member's id is chosen by the node
    /// when `id` is 0.
    fn add_member(&self, id: u64, info: NodeInfo) -> BoxFuture<'_, Result<u64, ApiError>>;
    /// Removes a member.
    fn remove_member(&self, id: u64) -> BoxFuture<'_, Result<(), ApiError>>;
    /// Approximate size of this node's data folder in bytes (Maintenance.Status db_size).
    fn db_size(&self) -> u64;

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
}
