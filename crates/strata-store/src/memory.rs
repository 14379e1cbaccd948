//! [`MemoryKv`]: the [`KvApi`] in memory, for unit tests of domain logic without processes.
//!
//! It runs the same deterministic state machine as the node ([`strata_kv::KvStore`]), so
//! revisions, compare-and-set, transactions, leases and watch events behave as they do in a
//! cluster; what it leaves out is consensus. Lease expiry follows tokio's clock: a test with
//! `#[tokio::test(start_paused = true)]` advances time and calls [`MemoryKv::expire_leases`].
//!
//! Locks and elections are not implemented here (they answer `unavailable`): they are
//! exercised through real processes.

use crate::{BoxFuture, KvApi, LockGuard};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use strata_kv::{spec_contains, KvStore};
use strata_proto::cluster::{ClusterStatus, MemberStatus};
use strata_proto::error::{ApiError, ErrorCode};
use strata_proto::kv::{
    CompactRequest, CompactResponse, DeleteRangeRequest, DeleteRangeResponse, Event, KeyValue,
    KvCommand, KvResult, LeaseGrantRequest, LeaseGrantResponse, LeaseLeasesResponse,
    LeaseRevokeResponse, LeaseTimeToLiveResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RangeSpec, ResponseHeader, TxnRequest, TxnResponse, WatchRequest, WatchResponse,
};
use strata_proto::NodeInfo;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The node id a [`MemoryKv`] reports.
pub const MEMORY_NODE_ID: u64 = 1;

struct State {
    store: KvStore,
    /// Lease id -> when it expires unless renewed.
    deadlines: BTreeMap<i64, Instant>,
    next_lease: i64,
}

/// The KV API on one in-memory state machine. Cheap to share behind an `Arc`.
pub struct MemoryKv {
    state: Mutex<State>,
    /// Every applied revision's events, in order.
    feed: broadcast::Sender<(i64, Arc<Vec<Event>>)>,
}

impl Default for MemoryKv {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryKv {
    /// An empty store, as a fresh cluster has it: no keys, no leases.
    pub fn new() -> Self {
        let (feed, _) = broadcast::channel(4096);
        MemoryKv {
            state: Mutex::new(State {
                store: KvStore::new(),
                deadlines: BTreeMap::new(),
                next_lease: 1,
            }),
            feed,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            revision,
            raft_term: 1,
            member_id: MEMORY_NODE_ID,
        }
    }

    /// Applies one command as the log would, publishing its events.
    fn apply(&self, command: KvCommand) -> Result<KvResult, ApiError> {
        let mut state = self.state();
        let (result, events) = state.store.apply(&command);
        if !events.is_empty() {
            let _ = self.feed.send((state.store.revision(), Arc::new(events)));
        }
        match result {
            KvResult::Error(e) => Err(e),
            other => Ok(other),
        }
    }

    /// Revokes every lease whose TTL passed without a keep-alive (what the leader's lease
    /// clock does); returns their ids.
    pub fn expire_leases(&self) -> Vec<i64> {
        let now = Instant::now();
        let expired: Vec<i64> = self
            .state()
            .deadlines
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.state().deadlines.remove(id);
            let _ = self.apply(KvCommand::LeaseRevoke { id: *id });
        }
        expired
    }
}

fn unexpected(result: KvResult) -> ApiError {
    ApiError::internal(format!("unexpected result {result:?}"))
}

fn not_here(what: &str) -> ApiError {
    ApiError::unavailable(format!(
        "{what} is not implemented by MemoryKv; test it through a real node"
    ))
}

fn ttl_left(deadline: Instant) -> i64 {
    deadline
        .saturating_duration_since(Instant::now())
        .as_secs_f64()
        .ceil() as i64
}

impl KvApi for MemoryKv {
    fn node_id(&self) -> u64 {
        MEMORY_NODE_ID
    }

    fn cluster_id(&self) -> u64 {
        MEMORY_NODE_ID
    }

    fn raft_term(&self) -> u64 {
        1
    }

    fn revision(&self) -> i64 {
        self.state().store.revision()
    }

    fn compact_revision(&self) -> i64 {
        self.state().store.compact_revision()
    }

    fn range(&self, req: RangeRequest) -> BoxFuture<'_, Result<RangeResponse, ApiError>> {
        Box::pin(async move { self.state().store.range(&req) })
    }

    fn put(&self, req: PutRequest) -> BoxFuture<'_, Result<PutResponse, ApiError>> {
        Box::pin(async move {
            match self.apply(KvCommand::Put(req))? {
                KvResult::Put(r) => Ok(r),
                other => Err(unexpected(other)),
            }
        })
    }

    fn delete_range(
        &self,
        req: DeleteRangeRequest,
    ) -> BoxFuture<'_, Result<DeleteRangeResponse, ApiError>> {
        Box::pin(async move {
            match self.apply(KvCommand::DeleteRange(req))? {
                KvResult::DeleteRange(r) => Ok(r),
                other => Err(unexpected(other)),
            }
        })
    }

    fn txn(&self, req: TxnRequest) -> BoxFuture<'_, Result<TxnResponse, ApiError>> {
        Box::pin(async move {
            match self.apply(KvCommand::Txn(req))? {
                KvResult::Txn(r) => Ok(r),
                other => Err(unexpected(other)),
            }
        })
    }

    fn txn_within(
        &self,
        req: TxnRequest,
        _max_bytes: usize,
    ) -> BoxFuture<'_, Result<TxnResponse, ApiError>> {
        self.txn(req)
    }

    fn compact(&self, req: CompactRequest) -> BoxFuture<'_, Result<CompactResponse, ApiError>> {
        Box::pin(async move {
            match self.apply(KvCommand::Compact(req))? {
                KvResult::Compact(r) => Ok(r),
                other => Err(unexpected(other)),
            }
        })
    }

    fn linearize(&self) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async { Ok(()) })
    }

    fn watch(
        &self,
        req: WatchRequest,
        cancel: CancellationToken,
    ) -> Result<crate::WatchStream, ApiError> {
        let spec = RangeSpec {
            key: req.key.clone(),
            range_end: req.range_end.clone(),
            prefix: req.prefix,
        };
        // Subscribe before reading history, under the same lock as apply, so nothing is
        // missed or repeated.
        let (mut feed, history, revision) = {
            let state = self.state();
            let feed = self.feed.subscribe();
            let revision = state.store.revision();
            let history = if req.start_revision > 0 && req.start_revision <= revision {
                Some(state.store.events_since(&spec, req.start_revision))
            } else {
                None
            };
            (feed, history, revision)
        };
        let (tx, rx) = mpsc::channel(64);
        let header = self.header(revision);
        let wanted = move |events: &[Event]| -> Vec<Event> {
            events
                .iter()
                .filter(|e| spec_contains(&spec, &e.kv.key))
                .filter(|e| match e.kind {
                    strata_proto::kv::EventType::Put => !req.no_put,
                    strata_proto::kv::EventType::Delete => !req.no_delete,
                })
                .cloned()
                .map(|mut e| {
                    if !req.prev_kv {
                        e.prev_kv = None;
                    }
                    e
                })
                .collect()
        };
        tokio::spawn(async move {
            let created = WatchResponse {
                header: header.clone(),
                created: true,
                ..WatchResponse::default()
            };
            if tx.send(created).await.is_err() {
                return;
            }
            let mut seen = revision;
            match history {
                Some(Err(e)) if e.code == ErrorCode::Compacted => {
                    let compacted = WatchResponse {
                        header,
                        compact_revision: req.start_revision.max(1),
                        ..WatchResponse::default()
                    };
                    let _ = tx.send(compacted).await;
                    return;
                }
                Some(Err(_)) => return,
                Some(Ok(events)) => {
                    let events = wanted(&events);
                    if !events.is_empty() {
                        let last = events.last().map(|e| e.kv.mod_revision).unwrap_or(seen);
                        let response = WatchResponse {
                            header: ResponseHeader {
                                revision: last,
                                ..header.clone()
                            },
                            events,
                            ..WatchResponse::default()
                        };
                        if tx.send(response).await.is_err() {
                            return;
                        }
                    }
                }
                None => {}
            }
            loop {
                let (revision, events) = tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tx.closed() => return,
                    next = feed.recv() => match next {
                        Ok(next) => next,
                        // A test that outruns the feed by 4096 revisions gets a closed watch.
                        Err(_) => return,
                    },
                };
                if revision <= seen || revision < req.start_revision {
                    continue;
                }
                seen = revision;
                let events = wanted(&events);
                if events.is_empty() {
                    continue;
                }
                let response = WatchResponse {
                    header: ResponseHeader {
                        revision,
                        ..header.clone()
                    },
                    events,
                    ..WatchResponse::default()
                };
                if tx.send(response).await.is_err() {
                    return;
                }
            }
        });
        Ok(futures::StreamExt::boxed(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }

    fn lease_grant(
        &self,
        req: LeaseGrantRequest,
    ) -> BoxFuture<'_, Result<LeaseGrantResponse, ApiError>> {
        Box::pin(async move {
            if req.ttl <= 0 {
                return Err(ApiError::bad_request("lease ttl must be at least 1 second"));
            }
            let id = if req.id == 0 {
                let mut state = self.state();
                state.next_lease += 1;
                state.next_lease
            } else {
                req.id
            };
            let granted = match self.apply(KvCommand::LeaseGrant { id, ttl: req.ttl })? {
                KvResult::LeaseGrant(r) => r,
                other => return Err(unexpected(other)),
            };
            let ttl = Duration::from_secs(req.ttl.unsigned_abs());
            self.state().deadlines.insert(id, Instant::now() + ttl);
            Ok(granted)
        })
    }

    fn lease_revoke(&self, id: i64) -> BoxFuture<'_, Result<LeaseRevokeResponse, ApiError>> {
        Box::pin(async move {
            self.state().deadlines.remove(&id);
            match self.apply(KvCommand::LeaseRevoke { id })? {
                KvResult::LeaseRevoke(r) => Ok(r),
                other => Err(unexpected(other)),
            }
        })
    }

    fn lease_keepalive(&self, id: i64) -> BoxFuture<'_, Result<LeaseTimeToLiveResponse, ApiError>> {
        Box::pin(async move {
            let mut state = self.state();
            let Some((ttl, _)) = state.store.lease(id) else {
                return Err(ApiError::not_found(format!("lease {id:x} not found")));
            };
            let revision = state.store.revision();
            let deadline = Instant::now() + Duration::from_secs(ttl.unsigned_abs());
            state.deadlines.insert(id, deadline);
            Ok(LeaseTimeToLiveResponse {
                header: self.header(revision),
                id,
                ttl,
                granted_ttl: ttl,
                keys: Vec::new(),
            })
        })
    }

    fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> BoxFuture<'_, Result<LeaseTimeToLiveResponse, ApiError>> {
        Box::pin(async move {
            let state = self.state();
            let Some((granted, attached)) = state.store.lease(id) else {
                return Err(ApiError::not_found(format!("lease {id:x} not found")));
            };
            let left = state.deadlines.get(&id).copied().map(ttl_left).unwrap_or(0);
            Ok(LeaseTimeToLiveResponse {
                header: self.header(state.store.revision()),
                id,
                ttl: left,
                granted_ttl: granted,
                keys: if keys {
                    attached
                        .iter()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .collect()
                } else {
                    Vec::new()
                },
            })
        })
    }

    fn lease_leases(&self) -> BoxFuture<'_, Result<LeaseLeasesResponse, ApiError>> {
        Box::pin(async move {
            let state = self.state();
            Ok(LeaseLeasesResponse {
                header: self.header(state.store.revision()),
                leases: state.store.leases(),
            })
        })
    }

    fn lock(&self, _name: Vec<u8>, _lease: i64) -> BoxFuture<'_, Result<LockGuard, ApiError>> {
        Box::pin(async { Err(not_here("lock")) })
    }

    fn unlock(&self, _key: Vec<u8>) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async { Err(not_here("unlock")) })
    }

    fn campaign(
        &self,
        _name: Vec<u8>,
        _lease: i64,
        _value: Vec<u8>,
    ) -> BoxFuture<'_, Result<LockGuard, ApiError>> {
        Box::pin(async { Err(not_here("campaign")) })
    }

    fn proclaim(&self, _leader: LockGuard, _value: Vec<u8>) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async { Err(not_here("proclaim")) })
    }

    fn election_leader(&self, _name: Vec<u8>) -> BoxFuture<'_, Result<Option<KeyValue>, ApiError>> {
        Box::pin(async { Err(not_here("election leader")) })
    }

    fn observe(&self, _name: Vec<u8>) -> Result<mpsc::Receiver<KeyValue>, ApiError> {
        Err(not_here("observe"))
    }

    fn resign(&self, _leader: LockGuard) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async { Err(not_here("resign")) })
    }

    fn status(&self) -> ClusterStatus {
        ClusterStatus {
            node_id: MEMORY_NODE_ID,
            leader: Some(MEMORY_NODE_ID),
            term: 1,
            commit_index: 0,
            applied_index: 0,
            revision: self.revision(),
            members: vec![MemberStatus {
                id: MEMORY_NODE_ID,
                raft_addr: String::new(),
                api_addr: String::new(),
                grpc_addr: String::new(),
                role: "leader".into(),
            }],
            disk_bytes: 0,
            disk_free_bytes: 0,
            read_only: false,
        }
    }

    fn add_member(&self, _id: u64, _info: NodeInfo) -> BoxFuture<'_, Result<u64, ApiError>> {
        Box::pin(async { Err(not_here("membership")) })
    }

    fn remove_member(&self, _id: u64) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async { Err(not_here("membership")) })
    }

    fn db_size(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures::StreamExt;

    fn put(key: &str, value: &str) -> PutRequest {
        PutRequest {
            key: key.into(),
            value: value.into(),
            ..PutRequest::default()
        }
    }

    #[tokio::test]
    async fn a_watch_sees_history_then_live_changes_in_revision_order() {
        let kv = MemoryKv::new();
        let first = kv.put(put("a/1", "x")).await.unwrap().header.revision;
        kv.put(put("b/1", "ignored")).await.unwrap();
        let mut rx = kv
            .watch(
                WatchRequest {
                    key: b"a/".to_vec(),
                    prefix: true,
                    start_revision: first,
                    ..WatchRequest::default()
                },
                CancellationToken::new(),
            )
            .unwrap();
        assert!(rx.next().await.unwrap().created);
        let history = rx.next().await.unwrap();
        assert_eq!(history.events.len(), 1);
        assert_eq!(history.events[0].kv.key, b"a/1");
        kv.put(put("a/2", "y")).await.unwrap();
        let live = rx.next().await.unwrap();
        assert_eq!(live.events[0].kv.key, b"a/2");
        assert_eq!(live.header.revision, kv.revision());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_that_is_not_renewed_expires_and_takes_its_keys() {
        let kv = MemoryKv::new();
        let lease = crate::grant(&kv, 10).await.unwrap();
        kv.put(PutRequest {
            lease,
            ..put("held", "v")
        })
        .await
        .unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        kv.lease_keepalive(lease).await.unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(kv.expire_leases().is_empty(), "renewed 6 s ago");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(kv.expire_leases(), vec![lease]);
        let left = kv
            .range(RangeRequest {
                key: b"held".to_vec(),
                ..RangeRequest::default()
            })
            .await
            .unwrap();
        assert!(left.kvs.is_empty());
        assert_eq!(
            kv.lease_keepalive(lease).await.unwrap_err().code,
            ErrorCode::NotFound
        );
    }
}
