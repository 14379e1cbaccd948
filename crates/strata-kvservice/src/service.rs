//! [`KvService`]: the one service layer behind every KV interface.
//!
//! The native HTTP API (and later gRPC and compatibility protocols) call these methods, so
//! validation, limits, forwarding and consistency rules are the same everywhere.
//!
//! Writes and linearizable reads need the leader. When this node is not the leader, the
//! request goes to the leader's raft listener (`POST /internal/leader`); while no leader is
//! known (an election), the request waits up to `kv.request_timeout`. A client that lists
//! every node therefore never sees "not leader".

use crate::kv_machine::KvMachine;
use crate::lease_clock::LeaseClock;
use crate::metrics::Metrics;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strata_proto::error::{ApiError, ErrorCode};
use strata_proto::kv::{
    Command, CommandResult, CompactRequest, CompactResponse, DeleteRangeRequest,
    DeleteRangeResponse, KeyValue, KvCommand, KvResult, LeaseGrantRequest, LeaseGrantResponse,
    LeaseLeasesResponse, LeaseRevokeResponse, LeaseTimeToLiveResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};
use strata_proto::{ClusterStatus, MemberStatus, NodeInfo};
use strata_raft::consensus::{not_leader, Consensus};
pub use strata_raft::consensus::{LeaderReply, LeaderRequest};
use strata_raft::{LogStore, Raft, StateMachineStore};
use strata_settings::ValidatedConfig;

/// The service layer. Shared by every interface through an `Arc`.
pub struct KvService {
    /// This node's id.
    pub id: u64,
    /// The Raft handle.
    pub raft: Raft,
    pub(crate) machine: Arc<KvMachine>,
    pub(crate) log: LogStore,
    pub(crate) sm: StateMachineStore<KvMachine>,
    pub(crate) config: Arc<ValidatedConfig>,
    /// The data folder's free space (read-only below `kv.disk_reserve`).
    pub(crate) space: Arc<strata_raft::DiskSpace>,
    /// The disk the data folder takes, walked at most every few seconds.
    pub(crate) folder: crate::loops::FolderSize,
    /// The KV and Raft metrics (and the registry components register theirs in).
    pub metrics: Arc<Metrics>,
    /// The leader's lease expiry clock.
    lessor: Mutex<LeaseClock>,
    /// Writes, read indexes, forwarding, membership and hand-off.
    pub(crate) consensus: Consensus,
    /// Tasks the service spawns itself (election observers); closed and awaited at shutdown.
    pub tasks: tokio_util::task::TaskTracker,
}

impl KvService {
    /// Builds the service on running consensus plumbing (see [`crate::start`]).
    pub(crate) fn new(parts: crate::Parts, metrics: Arc<Metrics>, consensus: Consensus) -> Self {
        KvService {
            id: parts.id,
            raft: parts.raft,
            machine: parts.machine,
            log: parts.log,
            sm: parts.sm,
            folder: crate::loops::FolderSize::new(parts.config.data_dir.clone()),
            config: parts.config,
            space: parts.space,
            metrics,
            lessor: Mutex::default(),
            consensus,
            tasks: tokio_util::task::TaskTracker::new(),
        }
    }

    fn header(&self) -> ResponseHeader {
        let metrics = self.raft.metrics();
        let term = metrics.borrow().current_term;
        ResponseHeader {
            revision: self.machine.read().revision(),
            raft_term: term,
            member_id: self.id,
        }
    }

    fn stamp(&self, header: &mut ResponseHeader) {
        header.member_id = self.id;
        header.raft_term = self.raft.metrics().borrow().current_term;
    }

    /// Spawns a task tracked by the service.
    pub(crate) fn spawn_task(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Returns this node's id.
    pub fn node_id(&self) -> u64 {
        self.id
    }

    /// Returns true when this node currently believes it is the leader.
    pub fn is_leader(&self) -> bool {
        self.consensus.is_leader()
    }

    fn request_timeout(&self) -> Duration {
        self.config.kv.request_timeout.0
    }

    fn max_request(&self) -> usize {
        usize::try_from(self.config.kv.max_request_bytes.0).unwrap_or(usize::MAX)
    }

    /// Serves a leader-only request here if this node leads, else on the leader.
    pub async fn leader_call(&self, request: LeaderRequest) -> Result<LeaderReply, ApiError> {
        self.consensus
            .call_leader(request, |r| self.serve_as_leader(r))
            .await
    }

    /// Serves a leader-only request on this node (the leader's end of a forward): lease
    /// requests from the lease clock here, everything else by the consensus plumbing.
    pub async fn serve_as_leader(&self, request: LeaderRequest) -> Result<LeaderReply, ApiError> {
        match request {
            LeaderRequest::LeaseKeepAlive(id) if !self.consensus.stepping_down() => {
                self.lease_refresh(id, true)
            }
            LeaderRequest::LeaseTimeToLive(id) if !self.consensus.stepping_down() => {
                self.lease_refresh(id, false)
            }
            LeaderRequest::LeaseKeepAlive(_) | LeaderRequest::LeaseTimeToLive(_) => Err(
                ApiError::unavailable("the leader is handing off leadership"),
            ),
            other => self.consensus.serve(other).await,
        }
    }

    /// Proposes a KV command through the leader and returns its result.
    pub async fn propose(&self, command: KvCommand) -> Result<KvResult, ApiError> {
        match self.consensus.write(Command::Kv(command)).await? {
            CommandResult::Kv(KvResult::Error(e)) => Err(e),
            CommandResult::Kv(result) => Ok(result),
            other => Err(ApiError::internal(format!(
                "unexpected result of a write: {other:?}"
            ))),
        }
    }

    /// Waits until this node's state machine reflects every write acknowledged before the
    /// call began (ReadIndex: the leader confirms its leadership with a quorum and returns
    /// its commit index; this node waits until it has applied that far).
    pub async fn linearize(&self) -> Result<(), ApiError> {
        let index = self.consensus.read_index().await?;
        self.wait_applied(index).await
    }

    async fn wait_applied(&self, index: u64) -> Result<(), ApiError> {
        let applied = self
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        if applied >= index {
            return Ok(());
        }
        self.raft
            .wait(Some(self.request_timeout()))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|e| {
                ApiError::new(
                    ErrorCode::Timeout,
                    format!("waiting to apply index {index}: {e}"),
                )
            })
    }

    fn check_put(&self, req: &PutRequest) -> Result<(), ApiError> {
        self.check_put_within(req, self.max_request())
    }

    fn check_put_within(&self, req: &PutRequest, max: usize) -> Result<(), ApiError> {
        if req.key.is_empty() {
            return Err(ApiError::bad_request("key must not be empty"));
        }
        let size = req.key.len() + req.value.len();
        if size > max {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "key and value are {size} bytes, over the limit of {max} bytes (kv.max_request_bytes)"
                ),
            ));
        }
        Ok(())
    }

    fn check_txn(&self, req: &TxnRequest, max: usize) -> Result<(), ApiError> {
        let limit = self.config.kv.max_txn_ops;
        if req.success.len() > limit || req.failure.len() > limit || req.compare.len() > limit {
            return Err(ApiError::bad_request(format!(
                "too many operations in txn request (limit {limit}, kv.max_txn_ops)"
            )));
        }
        let mut size = 0;
        for op in req.success.iter().chain(&req.failure) {
            match op {
                RequestOp::Put(put) => {
                    self.check_put_within(put, max)?;
                    size += put.key.len() + put.value.len();
                }
                RequestOp::Txn(nested) => self.check_txn(nested, max)?,
                RequestOp::Range(range) => {
                    range.spec().resolve()?;
                }
                RequestOp::DeleteRange(delete) => {
                    delete.spec().resolve()?;
                }
            }
        }
        if size > max {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("txn request is {size} bytes, over the limit of {max} bytes"),
            ));
        }
        Ok(())
    }

    /// Reads keys; linearizable unless `serializable` is set.
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, ApiError> {
        self.metrics.op("range");
        let spec = req.spec();
        spec.resolve()?;
        if !req.serializable {
            self.linearize().await?;
        }
        // Read from a view (constant time to take), so a large range never holds the lock
        // apply needs; a range over more than one key runs off the async runtime.
        let view = self.machine.read().view();
        let mut response = if spec.range_end.is_empty() && !spec.prefix {
            view.range(&req)?
        } else {
            tokio::task::spawn_blocking(move || view.range(&req))
                .await
                .map_err(|e| ApiError::internal(format!("range task failed: {e}")))??
        };
        self.stamp(&mut response.header);
        Ok(response)
    }

    /// Opens a read of a whole range, streamed a page at a time from one view of the store,
    /// so every page reads the same revision and memory holds one page (see
    /// [`RangeStream`]). Sorting, revision filters and `count_only` are not streamed.
    pub async fn range_stream(&self, req: RangeRequest) -> Result<RangeStream, ApiError> {
        self.metrics.op("range");
        let spec = req.spec();
        spec.resolve()?;
        if req.sorts() || req.filters() || req.count_only {
            return Err(ApiError::bad_request(
                "a streamed range takes no sort, revision filter or count_only; use /v1/kv/range",
            ));
        }
        if req.limit < 0 {
            return Err(ApiError::bad_request("limit must not be negative"));
        }
        if !req.serializable {
            self.linearize().await?;
        }
        let view = self.machine.read().view();
        let revision = if req.revision > 0 {
            req.revision
        } else {
            view.revision()
        };
        // Checks the revision now, so a compacted one fails before anything is streamed.
        view.page(&spec, revision, None, 0, true)?;
        let mut header = ResponseHeader {
            revision,
            ..Default::default()
        };
        self.stamp(&mut header);
        Ok(RangeStream {
            header,
            view: Arc::new(view),
            spec,
            revision,
            after: None,
            keys_only: req.keys_only,
            left: usize::try_from(req.limit)
                .ok()
                .filter(|l| *l > 0)
                .unwrap_or(usize::MAX),
            done: false,
        })
    }

    /// Writes one key.
    pub async fn put(&self, req: PutRequest) -> Result<PutResponse, ApiError> {
        self.metrics.op("put");
        self.check_put(&req)?;
        match self.propose(KvCommand::Put(req)).await? {
            KvResult::Put(mut r) => {
                self.stamp(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Deletes a key or range.
    pub async fn delete(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse, ApiError> {
        self.metrics.op("delete");
        req.spec().resolve()?;
        match self.propose(KvCommand::DeleteRange(req)).await? {
            KvResult::DeleteRange(mut r) => {
                self.stamp(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Runs a transaction.
    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, ApiError> {
        self.txn_within(req, self.max_request()).await
    }

    /// A transaction from one of the node's own domains, which bound what they write by their
    /// own limits: a config is stored twice (current version and history), so its write may
    /// exceed a client request's `kv.max_request_bytes`.
    pub async fn txn_within(&self, req: TxnRequest, max: usize) -> Result<TxnResponse, ApiError> {
        self.metrics.op("txn");
        self.check_txn(&req, max)?;
        for compare in &req.compare {
            compare.spec().resolve()?;
        }
        match self.propose(KvCommand::Txn(req)).await? {
            KvResult::Txn(mut r) => {
                self.stamp(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Compacts history up to `revision`.
    pub async fn compact(&self, req: CompactRequest) -> Result<CompactResponse, ApiError> {
        self.metrics.op("compact");
        match self.propose(KvCommand::Compact(req)).await? {
            KvResult::Compact(mut r) => {
                self.stamp(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Grants a lease.
    pub async fn lease_grant(
        &self,
        req: LeaseGrantRequest,
    ) -> Result<LeaseGrantResponse, ApiError> {
        self.metrics.op("lease_grant");
        if req.ttl <= 0 {
            return Err(ApiError::bad_request("lease ttl must be at least 1 second"));
        }
        if req.id < 0 {
            return Err(ApiError::bad_request("lease id must not be negative"));
        }
        let id = if req.id == 0 {
            rand::random::<i64>() & i64::MAX
        } else {
            req.id
        };
        let id = if id == 0 { 1 } else { id };
        match self
            .propose(KvCommand::LeaseGrant { id, ttl: req.ttl })
            .await?
        {
            KvResult::LeaseGrant(mut r) => {
                // The lease's time starts now, as etcd's does, not when the leader's clock
                // first looks at it (a grant forwarded from a follower still starts there).
                if self.is_leader() {
                    let mut clock = self.lessor.lock().unwrap_or_else(|e| e.into_inner());
                    clock.renew(id, req.ttl);
                }
                self.stamp(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Revokes a lease, deleting its keys.
    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, ApiError> {
        self.metrics.op("lease_revoke");
        match self.propose(KvCommand::LeaseRevoke { id }).await? {
            KvResult::LeaseRevoke(mut r) => {
                self.stamp(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Renews a lease (on the leader; never through the log).
    pub async fn lease_keepalive(&self, id: i64) -> Result<LeaseTimeToLiveResponse, ApiError> {
        self.metrics.op("lease_keepalive");
        let LeaderReply::Lease { ttl, granted_ttl } =
            self.leader_call(LeaderRequest::LeaseKeepAlive(id)).await?
        else {
            return Err(ApiError::internal("unexpected reply to keep-alive"));
        };
        Ok(LeaseTimeToLiveResponse {
            header: self.header(),
            id,
            ttl,
            granted_ttl,
            keys: vec![],
        })
    }

    /// Reports a lease's remaining TTL and, optionally, its keys.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveResponse, ApiError> {
        self.metrics.op("lease_timetolive");
        let LeaderReply::Lease { ttl, granted_ttl } =
            self.leader_call(LeaderRequest::LeaseTimeToLive(id)).await?
        else {
            return Err(ApiError::internal("unexpected reply to time-to-live"));
        };
        let keys = if keys {
            self.linearize().await?;
            let store = self.machine.read();
            store
                .lease(id)
                .map(|(_, keys)| {
                    keys.iter()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .collect()
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(LeaseTimeToLiveResponse {
            header: self.header(),
            id,
            ttl,
            granted_ttl,
            keys,
        })
    }

    /// Lists live leases.
    pub async fn lease_list(&self) -> Result<LeaseLeasesResponse, ApiError> {
        self.metrics.op("lease_list");
        self.linearize().await?;
        let leases = self.machine.read().leases();
        Ok(LeaseLeasesResponse {
            header: self.header(),
            leases,
        })
    }

    /// Leader side of keep-alive and time-to-live.
    fn lease_refresh(&self, id: i64, renew: bool) -> Result<LeaderReply, ApiError> {
        if !self.is_leader() {
            return Err(not_leader());
        }
        let Some(granted_ttl) = self.machine.read().lease_ttl(id) else {
            return Err(ApiError::not_found(format!(
                "lease {id:x} not found; it expired or was revoked"
            )));
        };
        let mut clock = self.lessor.lock().unwrap_or_else(|e| e.into_inner());
        let ttl = if renew {
            clock.renew(id, granted_ttl);
            granted_ttl
        } else {
            clock.remaining(id, granted_ttl)
        };
        Ok(LeaderReply::Lease { ttl, granted_ttl })
    }

    /// One pass of the leader's lease clock: returns the leases that expired. Called
    /// periodically by the node; a no-op on followers.
    pub fn expired_leases(&self) -> Vec<i64> {
        let (state, term) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (m.state, m.current_term)
        };
        let leading = (state == openraft::ServerState::Leader).then_some(term);
        let mut clock = self.lessor.lock().unwrap_or_else(|e| e.into_inner());
        // Read on followers too, so the changes do not pile up while nobody needs them.
        let changes = self.machine.lease_changes(clock.wants_all(leading));
        let due = clock.expired(leading, changes);
        if due.is_empty() {
            return due;
        }
        // A keep-alive that raced a revoke can leave a lease in the clock that the store no
        // longer has; it is dropped here rather than revoked again on every pass.
        let store = self.machine.read();
        due.into_iter()
            .filter(|id| {
                let live = store.lease_ttl(*id).is_some();
                if !live {
                    clock.forget(*id);
                }
                live
            })
            .collect()
    }

    /// Returns the cluster as this node sees it.
    pub fn status(&self) -> ClusterStatus {
        let metrics = self.raft.metrics();
        let m = metrics.borrow().clone();
        let membership = m.membership_config.membership();
        let leader = m.current_leader;
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let mut members = Vec::new();
        for (id, node) in membership.nodes() {
            let role = if Some(*id) == leader {
                "leader"
            } else if voters.contains(id) {
                "follower"
            } else {
                "learner"
            };
            members.push(MemberStatus {
                id: *id,
                raft_addr: node.raft_addr.clone(),
                api_addr: node.api_addr.clone(),
                grpc_addr: node.grpc_addr.clone(),
                role: role.to_string(),
            });
        }
        let applied_index = m.last_applied.map(|l| l.index).unwrap_or(0);
        ClusterStatus {
            node_id: self.id,
            leader,
            term: m.current_term,
            commit_index: self.log.committed_index().max(applied_index),
            applied_index,
            revision: self.machine.read().revision(),
            members,
            disk_bytes: self.folder.get(),
            disk_free_bytes: self.space.refresh(),
            read_only: self.space.is_full(),
        }
    }

    /// Adds a member: a learner, then a voter; with `when_caught_up` only once it holds the
    /// log (else at once, as etcd's `MemberAdd`).
    pub async fn add_member(
        &self,
        id: u64,
        info: NodeInfo,
        when_caught_up: bool,
    ) -> Result<(), ApiError> {
        if id == 0 {
            return Err(ApiError::bad_request("member id must be positive"));
        }
        if info.raft_addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(ApiError::bad_request(format!(
                "raft address {:?} is not HOST:PORT with a numeric IP",
                info.raft_addr
            )));
        }
        let request = if when_caught_up {
            LeaderRequest::AddMemberWhenCaughtUp(id, info)
        } else {
            LeaderRequest::AddMember(id, info)
        };
        self.leader_call(request).await.map(|_| ())
    }

    /// Removes a member.
    pub async fn remove_member(&self, id: u64) -> Result<(), ApiError> {
        self.leader_call(LeaderRequest::RemoveMember(id))
            .await
            .map(|_| ())
    }
}

impl KvService {
    /// Hands leadership to the most up-to-date voter before this node stops.
    pub async fn hand_off_leadership(&self) -> Option<u64> {
        self.consensus.hand_off_leadership().await
    }

    /// Starts an election on this node (the hand-off target's side).
    pub async fn start_election(&self) -> Result<(), ApiError> {
        tracing::info!(
            node_id = self.id,
            "campaigning on request of the outgoing leader"
        );
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| ApiError::unavailable(format!("raft stopped: {e}")))
    }
}

/// Resolves once this node sees a leader other than `leader`, or a term after `term` (also
/// while an election is still running: the old leader is gone either way).
///
/// Cancel safety: cancel-safe; it only reads the metrics channel.
fn unexpected(result: KvResult) -> ApiError {
    ApiError::internal(format!("unexpected result {result:?}"))
}

impl KvService {
    /// Writes a backup of the whole state (frozen now, written while apply goes on) and
    /// streams it a 1 MiB chunk at a time; the file is removed once sent or dropped.
    pub async fn backup(&self) -> Result<strata_store::Backup, ApiError> {
        let data = self
            .sm
            .export()
            .await
            .map_err(|e| ApiError::internal(format!("write the backup: {e}")))?;
        let size = data.len();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        self.spawn_task(async move {
            use futures::StreamExt;
            let mut chunks = std::pin::pin!(data.into_chunks(1 << 20));
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk
                    .map(|bytes| bytes.to_vec())
                    .map_err(|e| ApiError::internal(format!("read the backup: {e}")));
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
            }
        });
        tracing::info!(bytes = size, "sending a backup");
        Ok(strata_store::Backup { size, chunks: rx })
    }
}

/// Keys per page of a [`RangeStream`].
pub const RANGE_STREAM_PAGE: usize = 1000;

/// A range read page by page from one view of the store: see [`KvService::range_stream`].
pub struct RangeStream {
    /// The revision every page reads, and who answered.
    pub header: ResponseHeader,
    view: Arc<strata_kv::KvStore>,
    spec: strata_proto::kv::RangeSpec,
    revision: i64,
    after: Option<Vec<u8>>,
    keys_only: bool,
    /// Keys still to return under the request's limit.
    left: usize,
    done: bool,
}

impl RangeStream {
    /// The next page of at most [`RANGE_STREAM_PAGE`] keys, read off the async runtime;
    /// `None` once the range (or the request's limit) is done.
    pub async fn next_page(&mut self) -> Result<Option<Vec<KeyValue>>, ApiError> {
        while !self.done {
            let (view, spec, after) = (self.view.clone(), self.spec.clone(), self.after.take());
            let (revision, keys_only) = (self.revision, self.keys_only);
            let limit = RANGE_STREAM_PAGE.min(self.left);
            let (kvs, next) = tokio::task::spawn_blocking(move || {
                view.page(&spec, revision, after.as_deref(), limit, keys_only)
            })
            .await
            .map_err(|e| ApiError::internal(format!("range task failed: {e}")))??;
            self.left -= kvs.len();
            self.done = next.is_none() || self.left == 0;
            self.after = next;
            if !kvs.is_empty() {
                return Ok(Some(kvs));
            }
        }
        Ok(None)
    }
}
