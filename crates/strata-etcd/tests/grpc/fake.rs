//! An in-memory [`KvApi`] on `strata_kv::KvStore`: one node, no Raft, no lease clock.
//! Enough to exercise the gRPC layer; the real semantics are tested in `strata-kvservice` and through real processes.

use std::sync::{Arc, Mutex, MutexGuard};
use strata_etcd::{BoxFuture, KvApi, LockGuard};
use strata_kv::{spec_contains, KvStore};
use strata_proto::error::{ApiError, ErrorCode};
use strata_proto::kv::{
    CompactRequest, CompactResponse, DeleteRangeRequest, DeleteRangeResponse, Event, EventType,
    KeyValue, KvCommand, KvResult, LeaseGrantRequest, LeaseGrantResponse, LeaseLeasesResponse,
    LeaseRevokeResponse, LeaseTimeToLiveResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RangeSpec, ResponseHeader, TxnRequest, TxnResponse, WatchRequest, WatchResponse,
};
use strata_proto::{ClusterStatus, MemberStatus, NodeInfo};
use tokio::sync::mpsc;

/// This fake node's id.
pub const MEMBER_ID: u64 = 1;
/// The fake cluster's id.
pub const CLUSTER_ID: u64 = 0x5157;
/// The fake Raft term.
pub const TERM: u64 = 3;

/// One open watch: what it wants and where its messages go.
struct Watcher {
    request: WatchRequest,
    sender: mpsc::Sender<WatchResponse>,
}

#[derive(Default)]
struct State {
    store: KvStore,
    watchers: Vec<Watcher>,
    members: Vec<MemberStatus>,
    next_lease: i64,
    /// Keeps observe streams open.
    observers: Vec<mpsc::Sender<KeyValue>>,
}

/// The fake backend. A std mutex: no lock is held across an await.
pub struct FakeBackend {
    state: Mutex<State>,
}

impl FakeBackend {
    pub fn new() -> Arc<Self> {
        let state = State {
            store: KvStore::new(),
            members: vec![MemberStatus {
                id: MEMBER_ID,
                raft_addr: "127.0.0.1:7701".into(),
                api_addr: "127.0.0.1:7700".into(),
                grpc_addr: String::new(),
                role: "leader".into(),
            }],
            next_lease: 0x1000,
            ..Default::default()
        };
        Arc::new(FakeBackend {
            state: Mutex::new(state),
        })
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("fake backend mutex poisoned")
    }

    fn header(revision: i64) -> ResponseHeader {
        ResponseHeader {
            revision,
            raft_term: TERM,
            member_id: MEMBER_ID,
        }
    }

    /// Applies a command and fans its events out to the watchers.
    fn apply(&self, command: KvCommand) -> Result<KvResult, ApiError> {
        let mut state = self.lock_state();
        let (result, events) = state.store.apply(&command);
        let revision = state.store.revision();
        if !events.is_empty() {
            state
                .watchers
                .retain(|watcher| deliver(watcher, &events, revision));
        }
        match result {
            KvResult::Error(error) => Err(error),
            other => Ok(other),
        }
    }
}

fn matches(request: &WatchRequest, event: &Event) -> bool {
    let spec = RangeSpec {
        key: request.key.clone(),
        range_end: request.range_end.clone(),
        prefix: request.prefix,
    };
    let wanted = match event.kind {
        EventType::Put => !request.no_put,
        EventType::Delete => !request.no_delete,
    };
    wanted && spec_contains(&spec, &event.kv.key)
}

/// Sends the matching events; false when the watcher is gone.
fn deliver(watcher: &Watcher, events: &[Event], revision: i64) -> bool {
    let events: Vec<Event> = events
        .iter()
        .filter(|event| matches(&watcher.request, event))
        .cloned()
        .collect();
    if events.is_empty() {
        return !watcher.sender.is_closed();
    }
    let message = WatchResponse {
        header: FakeBackend::header(revision),
        events,
        ..Default::default()
    };
    watcher.sender.try_send(message).is_ok()
}

fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(value))
}

fn unexpected(result: KvResult) -> ApiError {
    ApiError::internal(format!("unexpected result {result:?}"))
}

impl KvApi for FakeBackend {
    fn cluster_id(&self) -> u64 {
        CLUSTER_ID
    }

    fn node_id(&self) -> u64 {
        MEMBER_ID
    }

    fn raft_term(&self) -> u64 {
        TERM
    }

    fn revision(&self) -> i64 {
        self.lock_state().store.revision()
    }

    fn compact_revision(&self) -> i64 {
        self.lock_state().store.compact_revision()
    }

    fn range(&self, req: RangeRequest) -> BoxFuture<'_, Result<RangeResponse, ApiError>> {
        let result = self.lock_state().store.range(&req).map(|mut response| {
            response.header = Self::header(response.header.revision);
            response
        });
        ready(result)
    }

    fn put(&self, req: PutRequest) -> BoxFuture<'_, Result<PutResponse, ApiError>> {
        ready(
            self.apply(KvCommand::Put(req))
                .and_then(|result| match result {
                    KvResult::Put(response) => Ok(response),
                    other => Err(unexpected(other)),
                }),
        )
    }

    fn delete_range(
        &self,
        req: DeleteRangeRequest,
    ) -> BoxFuture<'_, Result<DeleteRangeResponse, ApiError>> {
        ready(
            self.apply(KvCommand::DeleteRange(req))
                .and_then(|result| match result {
                    KvResult::DeleteRange(response) => Ok(response),
                    other => Err(unexpected(other)),
                }),
        )
    }

    fn txn(&self, req: TxnRequest) -> BoxFuture<'_, Result<TxnResponse, ApiError>> {
        ready(
            self.apply(KvCommand::Txn(req))
                .and_then(|result| match result {
                    KvResult::Txn(response) => Ok(response),
                    other => Err(unexpected(other)),
                }),
        )
    }

    fn compact(&self, req: CompactRequest) -> BoxFuture<'_, Result<CompactResponse, ApiError>> {
        ready(
            self.apply(KvCommand::Compact(req))
                .and_then(|result| match result {
                    KvResult::Compact(response) => Ok(response),
                    other => Err(unexpected(other)),
                }),
        )
    }

    fn watch(
        &self,
        req: WatchRequest,
        _cancel: tokio_util::sync::CancellationToken,
    ) -> Result<strata_store::WatchStream, ApiError> {
        let mut state = self.lock_state();
        let spec = req.spec();
        spec.resolve()?;
        let current = state.store.revision();
        let history = if req.start_revision > 0 && req.start_revision <= current {
            state.store.events_since(&spec, req.start_revision)?
        } else {
            Vec::new()
        };
        let (sender, receiver) = mpsc::channel(64);
        let created = WatchResponse {
            header: Self::header(current),
            created: true,
            ..Default::default()
        };
        sender
            .try_send(created)
            .map_err(|_| ApiError::internal("fresh channel full"))?;
        let watcher = Watcher {
            request: req,
            sender,
        };
        if !history.is_empty() {
            deliver(&watcher, &history, current);
        }
        state.watchers.push(watcher);
        Ok(futures::StreamExt::boxed(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        ))
    }

    fn lease_grant(
        &self,
        req: LeaseGrantRequest,
    ) -> BoxFuture<'_, Result<LeaseGrantResponse, ApiError>> {
        let id = if req.id != 0 {
            req.id
        } else {
            let mut state = self.lock_state();
            state.next_lease += 1;
            state.next_lease
        };
        let command = KvCommand::LeaseGrant { id, ttl: req.ttl };
        ready(self.apply(command).and_then(|result| match result {
            KvResult::LeaseGrant(response) => Ok(response),
            other => Err(unexpected(other)),
        }))
    }

    fn lease_revoke(&self, id: i64) -> BoxFuture<'_, Result<LeaseRevokeResponse, ApiError>> {
        ready(
            self.apply(KvCommand::LeaseRevoke { id })
                .and_then(|result| match result {
                    KvResult::LeaseRevoke(response) => Ok(response),
                    other => Err(unexpected(other)),
                }),
        )
    }

    fn lease_keepalive(&self, id: i64) -> BoxFuture<'_, Result<LeaseTimeToLiveResponse, ApiError>> {
        self.lease_time_to_live(id, false)
    }

    fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> BoxFuture<'_, Result<LeaseTimeToLiveResponse, ApiError>> {
        let state = self.lock_state();
        let result = match state.store.lease(id) {
            Some((ttl, attached)) => Ok(LeaseTimeToLiveResponse {
                header: Self::header(state.store.revision()),
                id,
                ttl,
                granted_ttl: ttl,
                keys: if keys {
                    attached
                        .into_iter()
                        .map(|key| String::from_utf8_lossy(&key).into_owned())
                        .collect()
                } else {
                    Vec::new()
                },
            }),
            None => Err(ApiError::not_found(format!("lease {id} not found"))),
        };
        ready(result)
    }

    fn lease_leases(&self) -> BoxFuture<'_, Result<LeaseLeasesResponse, ApiError>> {
        let state = self.lock_state();
        ready(Ok(LeaseLeasesResponse {
            header: Self::header(state.store.revision()),
            leases: state.store.leases(),
        }))
    }

    fn txn_within(
        &self,
        req: TxnRequest,
        _max_bytes: usize,
    ) -> BoxFuture<'_, Result<TxnResponse, ApiError>> {
        self.txn(req)
    }

    fn linearize(&self) -> BoxFuture<'_, Result<(), ApiError>> {
        ready(Ok(()))
    }

    fn status(&self) -> ClusterStatus {
        let state = self.lock_state();
        ClusterStatus {
            node_id: MEMBER_ID,
            leader: Some(MEMBER_ID),
            term: TERM,
            commit_index: 42,
            applied_index: 41,
            revision: state.store.revision(),
            members: state.members.clone(),
            disk_bytes: 0,
            disk_free_bytes: 0,
            read_only: false,
        }
    }

    fn add_member(&self, id: u64, info: NodeInfo) -> BoxFuture<'_, Result<u64, ApiError>> {
        let mut state = self.lock_state();
        let id = if id == 0 {
            state.members.iter().map(|m| m.id).max().unwrap_or(0) + 1
        } else {
            id
        };
        state.members.push(MemberStatus {
            id,
            raft_addr: info.raft_addr,
            api_addr: info.api_addr,
            grpc_addr: info.grpc_addr,
            role: "learner".into(),
        });
        ready(Ok(id))
    }

    fn remove_member(&self, id: u64) -> BoxFuture<'_, Result<(), ApiError>> {
        let mut state = self.lock_state();
        let before = state.members.len();
        state.members.retain(|m| m.id != id);
        let result = if state.members.len() == before {
            Err(ApiError::not_found(format!("member {id} not found")))
        } else {
            Ok(())
        };
        ready(result)
    }

    fn db_size(&self) -> u64 {
        4096
    }

    fn lock(&self, name: Vec<u8>, lease: i64) -> BoxFuture<'_, Result<LockGuard, ApiError>> {
        let mut key = name;
        key.extend_from_slice(format!("/{lease:x}").as_bytes());
        let put = PutRequest {
            key: key.clone(),
            lease,
            ..Default::default()
        };
        let result = self.apply(KvCommand::Put(put)).map(|result| {
            let revision = match result {
                KvResult::Put(response) => response.header.revision,
                _ => 0,
            };
            LockGuard { key, revision }
        });
        ready(result)
    }

    fn unlock(&self, key: Vec<u8>) -> BoxFuture<'_, Result<(), ApiError>> {
        let delete = DeleteRangeRequest {
            key,
            ..Default::default()
        };
        ready(self.apply(KvCommand::DeleteRange(delete)).map(|_| ()))
    }

    fn campaign(
        &self,
        name: Vec<u8>,
        lease: i64,
        value: Vec<u8>,
    ) -> BoxFuture<'_, Result<LockGuard, ApiError>> {
        let mut key = name;
        key.extend_from_slice(format!("/{lease:x}").as_bytes());
        let put = PutRequest {
            key: key.clone(),
            value,
            lease,
            prev_kv: false,
            ..Default::default()
        };
        let result = self.apply(KvCommand::Put(put)).map(|result| {
            let revision = match result {
                KvResult::Put(response) => response.header.revision,
                _ => 0,
            };
            LockGuard { key, revision }
        });
        ready(result)
    }

    fn proclaim(&self, leader: LockGuard, value: Vec<u8>) -> BoxFuture<'_, Result<(), ApiError>> {
        let current = self.lock_state().store.range(&RangeRequest {
            key: leader.key.clone(),
            ..Default::default()
        });
        let leads = matches!(&current, Ok(found) if found.kvs.first().is_some_and(|kv| kv.create_revision == leader.revision));
        if !leads {
            return ready(Err(ApiError::new(
                ErrorCode::FailedPrecondition,
                "not the leader",
            )));
        }
        let lease = current
            .ok()
            .and_then(|found| found.kvs.first().map(|kv| kv.lease))
            .unwrap_or(0);
        let put = PutRequest {
            key: leader.key,
            value,
            lease,
            prev_kv: false,
            ..Default::default()
        };
        ready(self.apply(KvCommand::Put(put)).map(|_| ()))
    }

    fn election_leader(&self, name: Vec<u8>) -> BoxFuture<'_, Result<Option<KeyValue>, ApiError>> {
        let mut prefix = name;
        prefix.push(b'/');
        let read = RangeRequest {
            key: prefix.clone(),
            range_end: strata_proto::kv::prefix_end(&prefix),
            ..Default::default()
        };
        let result = self
            .lock_state()
            .store
            .range(&read)
            .map(|found| found.kvs.into_iter().min_by_key(|kv| kv.create_revision));
        ready(result)
    }

    fn observe(&self, name: Vec<u8>) -> Result<mpsc::Receiver<KeyValue>, ApiError> {
        let (sender, receiver) = mpsc::channel(8);
        let mut prefix = name;
        prefix.push(b'/');
        let read = RangeRequest {
            key: prefix.clone(),
            range_end: strata_proto::kv::prefix_end(&prefix),
            ..Default::default()
        };
        let mut state = self.lock_state();
        let found = state.store.range(&read)?;
        if let Some(leader) = found.kvs.into_iter().min_by_key(|kv| kv.create_revision) {
            let _ = sender.try_send(leader);
        }
        state.observers.push(sender);
        Ok(receiver)
    }

    fn resign(&self, leader: LockGuard) -> BoxFuture<'_, Result<(), ApiError>> {
        self.unlock(leader.key)
    }
}

impl FakeBackend {
    /// Returns how many watches are registered (closed ones leave on the next delivery).
    pub fn watcher_count(&self) -> usize {
        self.lock_state().watchers.len()
    }
}
