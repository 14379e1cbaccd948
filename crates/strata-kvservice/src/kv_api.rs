//! [`NodeKv`]: this node's [`KvApi`], the one KV API every component holds (the etcd v3 API,
//! the registry, the config center), on the same [`KvService`] as the native HTTP API.

use crate::coord::Ownership;
use crate::service::KvService;
use std::sync::Arc;
use strata_proto::error::ApiError;
use strata_proto::kv::{
    CompactRequest, CompactResponse, DeleteRangeRequest, DeleteRangeResponse, KeyValue,
    LeaseGrantRequest, LeaseGrantResponse, LeaseLeasesResponse, LeaseRevokeResponse,
    LeaseTimeToLiveResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest,
    TxnResponse, WatchRequest,
};
use strata_proto::{ClusterStatus, NodeInfo};
use strata_store::{BoxFuture, KvApi, LockGuard};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Adapts [`KvService`] to [`KvApi`].
pub struct NodeKv {
    service: Arc<KvService>,
}

impl NodeKv {
    /// Wraps the service.
    pub fn new(service: Arc<KvService>) -> Self {
        NodeKv { service }
    }
}

fn guard(owned: Ownership) -> LockGuard {
    LockGuard {
        key: owned.key,
        revision: owned.revision,
    }
}

/// Recovers the lease from an owner key `NAME/LEASE_HEX`.
fn lease_of(key: &[u8]) -> i64 {
    key.rsplit(|b| *b == b'/')
        .next()
        .and_then(|hex| std::str::from_utf8(hex).ok())
        .and_then(|hex| i64::from_str_radix(hex, 16).ok())
        .unwrap_or(0)
}

impl KvApi for NodeKv {
    fn cluster_id(&self) -> u64 {
        // One fixed id per Strata deployment family; etcd clients only compare it for equality.
        0x5354_5241_5441_0001
    }

    fn node_id(&self) -> u64 {
        self.service.node_id()
    }

    fn raft_term(&self) -> u64 {
        self.service.raft.metrics().borrow().current_term
    }

    fn revision(&self) -> i64 {
        self.service.machine.read().revision()
    }

    fn compact_revision(&self) -> i64 {
        self.service.machine.read().compact_revision()
    }

    fn range(&self, req: RangeRequest) -> BoxFuture<'_, Result<RangeResponse, ApiError>> {
        Box::pin(self.service.range(req))
    }

    fn put(&self, req: PutRequest) -> BoxFuture<'_, Result<PutResponse, ApiError>> {
        Box::pin(self.service.put(req))
    }

    fn delete_range(
        &self,
        req: DeleteRangeRequest,
    ) -> BoxFuture<'_, Result<DeleteRangeResponse, ApiError>> {
        Box::pin(self.service.delete(req))
    }

    fn txn(&self, req: TxnRequest) -> BoxFuture<'_, Result<TxnResponse, ApiError>> {
        Box::pin(self.service.txn(req))
    }

    fn txn_within(
        &self,
        req: TxnRequest,
        max_bytes: usize,
    ) -> BoxFuture<'_, Result<TxnResponse, ApiError>> {
        Box::pin(self.service.txn_within(req, max_bytes))
    }

    fn linearize(&self) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(self.service.linearize())
    }

    fn compact(&self, req: CompactRequest) -> BoxFuture<'_, Result<CompactResponse, ApiError>> {
        Box::pin(self.service.compact(req))
    }

    fn watch(
        &self,
        req: WatchRequest,
        cancel: CancellationToken,
    ) -> Result<strata_store::WatchStream, ApiError> {
        self.service.metrics.op("watch");
        crate::watch::open(self.service.clone(), req, cancel)
    }

    fn lease_grant(
        &self,
        req: LeaseGrantRequest,
    ) -> BoxFuture<'_, Result<LeaseGrantResponse, ApiError>> {
        Box::pin(self.service.lease_grant(req))
    }

    fn lease_revoke(&self, id: i64) -> BoxFuture<'_, Result<LeaseRevokeResponse, ApiError>> {
        Box::pin(self.service.lease_revoke(id))
    }

    fn lease_keepalive(&self, id: i64) -> BoxFuture<'_, Result<LeaseTimeToLiveResponse, ApiError>> {
        Box::pin(self.service.lease_keepalive(id))
    }

    fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> BoxFuture<'_, Result<LeaseTimeToLiveResponse, ApiError>> {
        Box::pin(self.service.lease_time_to_live(id, keys))
    }

    fn lease_leases(&self) -> BoxFuture<'_, Result<LeaseLeasesResponse, ApiError>> {
        Box::pin(self.service.lease_list())
    }

    fn status(&self) -> ClusterStatus {
        self.service.status()
    }

    fn add_member(&self, id: u64, info: NodeInfo) -> BoxFuture<'_, Result<u64, ApiError>> {
        Box::pin(async move {
            let id = if id == 0 {
                self.service
                    .status()
                    .members
                    .iter()
                    .map(|m| m.id)
                    .max()
                    .unwrap_or(0)
                    + 1
            } else {
                id
            };
            // etcd's MemberAdd: a voter at once, so the node may be started afterwards.
            self.service.add_member(id, info, false).await.map(|()| id)
        })
    }

    fn remove_member(&self, id: u64) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(self.service.remove_member(id))
    }

    fn db_size(&self) -> u64 {
        self.service.folder.get()
    }

    fn backup(&self) -> BoxFuture<'_, Result<strata_store::Backup, ApiError>> {
        Box::pin(async move { self.service.backup().await })
    }

    fn lock(&self, name: Vec<u8>, lease: i64) -> BoxFuture<'_, Result<LockGuard, ApiError>> {
        Box::pin(async move { self.service.lock(name, lease).await.map(guard) })
    }

    fn unlock(&self, key: Vec<u8>) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(self.service.unlock(key, 0))
    }

    fn campaign(
        &self,
        name: Vec<u8>,
        lease: i64,
        value: Vec<u8>,
    ) -> BoxFuture<'_, Result<LockGuard, ApiError>> {
        Box::pin(async move { self.service.campaign(name, lease, value).await.map(guard) })
    }

    fn proclaim(&self, leader: LockGuard, value: Vec<u8>) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async move {
            let lease = lease_of(&leader.key);
            let owned = Ownership {
                key: leader.key,
                revision: leader.revision,
                lease,
            };
            self.service.proclaim(&owned, value).await
        })
    }

    fn election_leader(&self, name: Vec<u8>) -> BoxFuture<'_, Result<Option<KeyValue>, ApiError>> {
        Box::pin(self.service.election_leader(name, false))
    }

    fn observe(&self, name: Vec<u8>) -> Result<mpsc::Receiver<KeyValue>, ApiError> {
        self.service.observe(name)
    }

    fn resign(&self, leader: LockGuard) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(self.service.unlock(leader.key, leader.revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_is_read_back_from_owner_key() {
        assert_eq!(lease_of(b"election/1f"), 0x1f);
        assert_eq!(lease_of(b"a/b/ff"), 0xff);
        assert_eq!(lease_of(b"nolease"), 0);
    }
}
