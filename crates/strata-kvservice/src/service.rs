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
use crate::metrics::Metrics;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata_proto::error::{ApiError, ErrorCode};
use strata_proto::kv::{
    Command, CommandResult, CompactRequest, CompactResponse, DeleteRangeRequest,
    DeleteRangeResponse, KvCommand, KvResult, LeaseGrantRequest, LeaseGrantResponse,
    LeaseLeasesResponse, LeaseRevokeResponse, LeaseTimeToLiveResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};
use strata_proto::{ClusterStatus, MemberStatus, NodeInfo};
use strata_raft::network::{post_postcard, TransportError};
use strata_raft::{LogStore, Raft, StateMachineStore};
use strata_settings::ValidatedConfig;

/// A request only the leader can serve.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderRequest {
    /// Propose a command.
    Write(Command),
    /// Confirm leadership and return the index reads must wait for.
    ReadIndex,
    /// Refresh a lease's expiry.
    LeaseKeepAlive(i64),
    /// Report a lease's remaining time.
    LeaseTimeToLive(i64),
    /// Add a member: learner first, then voter once caught up.
    AddMember(u64, NodeInfo),
    /// Remove a voter.
    RemoveMember(u64),
    /// Update a member's addresses.
    SetNode(u64, NodeInfo),
    /// Propose several commands (writes a follower gathered while its previous forward was
    /// in flight); each gets its own result.
    WriteBatch(Vec<Command>),
}

impl LeaderRequest {
    /// Returns true when sending it twice is harmless, so a failed send may be retried.
    fn idempotent(&self) -> bool {
        !matches!(self, LeaderRequest::Write(_) | LeaderRequest::WriteBatch(_))
    }
}

/// What the leader answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderReply {
    /// Result of a write.
    Written(CommandResult),
    /// The read index.
    ReadIndex(u64),
    /// Remaining or renewed TTL in seconds, with the granted TTL.
    Lease { ttl: i64, granted_ttl: i64 },
    /// A membership change was committed.
    Done,
    /// Results of a [`LeaderRequest::WriteBatch`], in order.
    WrittenBatch(Vec<Result<CommandResult, ApiError>>),
}

fn not_leader() -> ApiError {
    ApiError::unavailable("this node is not the leader")
}

/// Leader-side lease expiry clock. Only the leader's copy matters; it is rebuilt with fresh
/// TTLs whenever a node becomes leader, so a new leader extends leases instead of expiring them.
#[derive(Default)]
struct Lessor {
    /// Term in which this node last acted as leader; a change resets every expiry.
    term: u64,
    /// Lease id -> when it expires.
    expiry: HashMap<i64, Instant>,
}

/// The service layer. Shared by every interface through an `Arc`.
pub struct KvService {
    /// This node's id.
    pub id: u64,
    /// The Raft handle.
    pub raft: Raft,
    pub(crate) machine: Arc<KvMachine>,
    pub(crate) log: LogStore,
    pub(crate) sm: StateMachineStore<KvMachine>,
    pub(crate) client: reqwest::Client,
    pub(crate) config: Arc<ValidatedConfig>,
    /// The KV and Raft metrics (and the registry components register theirs in).
    pub metrics: Arc<Metrics>,
    lessor: Mutex<Lessor>,
    /// Set while a graceful shutdown hands leadership to another node: leader-only requests
    /// are refused as `unavailable`, so callers retry on the next leader.
    stepping_down: AtomicBool,
    /// Batches writes into log entries; set once by the node after construction.
    proposer: std::sync::OnceLock<crate::proposer::Proposer>,
    /// Batches a follower's writes on their way to the leader; set once at start.
    forwarder: std::sync::OnceLock<crate::proposer::Forwarder>,
    /// Tasks the service spawns itself (election observers); closed and awaited at shutdown.
    pub tasks: tokio_util::task::TaskTracker,
    /// Shares leadership confirmations between concurrent reads; set once at start.
    read_index: std::sync::OnceLock<crate::read_index::ReadIndexBatcher>,
    /// Serialises membership changes on the leader: openraft refuses a change while another
    /// is uncommitted. An async mutex, because it is held across the change's commit.
    membership_changes: tokio::sync::Mutex<()>,
}

impl KvService {
    /// Wires the service together.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        raft: Raft,
        machine: Arc<KvMachine>,
        log: LogStore,
        sm: StateMachineStore<KvMachine>,
        client: reqwest::Client,
        config: Arc<ValidatedConfig>,
        metrics: Arc<Metrics>,
    ) -> Self {
        KvService {
            id,
            raft,
            machine,
            log,
            sm,
            client,
            config,
            metrics,
            lessor: Mutex::default(),
            stepping_down: AtomicBool::new(false),
            proposer: std::sync::OnceLock::new(),
            read_index: std::sync::OnceLock::new(),
            forwarder: std::sync::OnceLock::new(),
            tasks: tokio_util::task::TaskTracker::new(),
            membership_changes: tokio::sync::Mutex::new(()),
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

    /// Installs the write batcher (once, at start).
    pub fn set_proposer(&self, proposer: crate::proposer::Proposer) {
        let _ = self.proposer.set(proposer);
    }

    /// Installs the follower-side write batcher (once, at start).
    pub fn set_forwarder(&self, forwarder: crate::proposer::Forwarder) {
        let _ = self.forwarder.set(forwarder);
    }

    /// Installs the read-index batcher (once, at start).
    pub fn set_read_index(&self, batcher: crate::read_index::ReadIndexBatcher) {
        let _ = self.read_index.set(batcher);
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
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    fn request_timeout(&self) -> Duration {
        self.config.kv.request_timeout.0
    }

    fn max_request(&self) -> usize {
        usize::try_from(self.config.kv.max_request_bytes.0).unwrap_or(usize::MAX)
    }

    /// Serves a leader-only request here if this node leads, else on the leader.
    pub async fn leader_call(&self, request: LeaderRequest) -> Result<LeaderReply, ApiError> {
        let timeout = match request {
            LeaderRequest::AddMember(..) => self.request_timeout().max(Duration::from_secs(60)),
            _ => self.request_timeout(),
        };
        let deadline = Instant::now() + timeout;
        loop {
            let leader = self.raft.metrics().borrow().current_leader;
            let outcome = match leader {
                Some(id) if id == self.id => self.serve_as_leader(request.clone()).await,
                Some(id) => self.forward(id, &request, deadline).await,
                None => Err(ApiError::unavailable("no leader is elected")),
            };
            match outcome {
                Err(e) if e.code == ErrorCode::Unavailable && Instant::now() < deadline => {
                    // An election or a leader change is in progress; wait for it to settle.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) if e.code == ErrorCode::Unavailable => {
                    return Err(ApiError::unavailable(format!(
                        "{} after waiting {:?}; check that a majority of members is running (`strata cluster status`)",
                        e.message, timeout
                    )))
                }
                other => return other,
            }
        }
    }

    async fn forward(
        &self,
        leader: u64,
        request: &LeaderRequest,
        deadline: Instant,
    ) -> Result<LeaderReply, ApiError> {
        let node = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            m.membership_config.membership().get_node(&leader).cloned()
        };
        let Some(node) = node else {
            return Err(ApiError::unavailable(format!(
                "leader {leader} is not in the membership"
            )));
        };
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(50));
        let term = self.raft.metrics().borrow().current_term;
        let call = post_postcard(
            &self.client,
            &node.raft_addr,
            "/internal/leader",
            request,
            remaining,
        );
        // A leader that stops answering (paused, partitioned) is replaced by an election; the
        // raft metrics show it, and the request must not wait for the old leader's deadline.
        let reply: Result<Result<LeaderReply, ApiError>, TransportError> = tokio::select! {
            reply = call => reply,
            _ = leader_replaced(&self.raft, leader, term) => {
                self.metrics.forwards_abandoned.inc();
                tracing::debug!(leader, term, "leader replaced while a request to it was in flight");
                return Err(if request.idempotent() {
                    ApiError::unavailable(format!("leader {leader} was replaced while answering"))
                } else {
                    ApiError::new(
                        ErrorCode::Timeout,
                        format!("leader {leader} was replaced before it answered; the write may or may not have been applied"),
                    )
                });
            }
        };
        match reply {
            Ok(result) => result,
            Err(TransportError::Unreachable { .. }) => {
                Err(ApiError::unavailable(format!("leader {leader} is unreachable")))
            }
            Err(e) if request.idempotent() => Err(ApiError::unavailable(e.to_string())),
            Err(e) => Err(ApiError::new(
                ErrorCode::Timeout,
                format!("forwarding to leader {leader} failed ({e}); the write may or may not have been applied"),
            )),
        }
    }

    /// Serves a leader-only request on this node, or fails with `unavailable` if it does not
    /// lead (any more).
    pub async fn serve_as_leader(&self, request: LeaderRequest) -> Result<LeaderReply, ApiError> {
        if self.stepping_down.load(Ordering::Relaxed) {
            return Err(ApiError::unavailable(
                "the leader is handing off leadership",
            ));
        }
        match request {
            LeaderRequest::Write(command) => self
                .proposer
                .get()
                .ok_or_else(not_leader)?
                .propose(command)
                .await
                .map(LeaderReply::Written),
            LeaderRequest::WriteBatch(commands) => {
                let proposer = self.proposer.get().ok_or_else(not_leader)?;
                if !self.is_leader() {
                    return Err(not_leader());
                }
                // Submitted together, so the proposer packs them into as few entries as it can.
                let results =
                    futures::future::join_all(commands.into_iter().map(|c| proposer.propose(c)))
                        .await;
                Ok(LeaderReply::WrittenBatch(results))
            }
            LeaderRequest::ReadIndex => {
                let batcher = self.read_index.get().ok_or_else(not_leader)?;
                batcher.read_index().await.map(LeaderReply::ReadIndex)
            }
            LeaderRequest::LeaseKeepAlive(id) => self.lease_refresh(id, true),
            LeaderRequest::LeaseTimeToLive(id) => self.lease_refresh(id, false),
            LeaderRequest::AddMember(id, info) => {
                let _change = self.begin_membership_change().await?;
                tracing::info!(member = id, %info, "adding member as learner");
                self.raft
                    .add_learner(id, info, true)
                    .await
                    .map_err(write_error)?;
                tracing::info!(member = id, "learner caught up; promoting to voter");
                let voters: BTreeSet<u64> = [id].into();
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(voters), false)
                    .await
                    .map_err(write_error)?;
                Ok(LeaderReply::Done)
            }
            LeaderRequest::RemoveMember(id) => {
                let _change = self.begin_membership_change().await?;
                let known = {
                    let metrics = self.raft.metrics();
                    let m = metrics.borrow();
                    m.membership_config.membership().get_node(&id).is_some()
                };
                if !known {
                    return Err(ApiError::not_found(format!("node {id} is not a member")));
                }
                tracing::info!(member = id, "removing member");
                let voters: BTreeSet<u64> = [id].into();
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters(voters), false)
                    .await
                    .map_err(write_error)?;
                let nodes: BTreeSet<u64> = [id].into();
                // Removing the node entry too; a learner left behind would still be replicated to.
                match self
                    .raft
                    .change_membership(ChangeMembers::RemoveNodes(nodes), false)
                    .await
                {
                    Ok(_) => {}
                    Err(e) => tracing::debug!(member = id, error = %e, "node entry already gone"),
                }
                Ok(LeaderReply::Done)
            }
            LeaderRequest::SetNode(id, info) => {
                let _change = self.begin_membership_change().await?;
                let nodes: BTreeMap<u64, NodeInfo> = [(id, info)].into();
                self.raft
                    .change_membership(ChangeMembers::SetNodes(nodes), false)
                    .await
                    .map_err(write_error)?;
                Ok(LeaderReply::Done)
            }
        }
    }

    /// Takes the leader's membership-change turn: waits for changes queued before it and for
    /// the current membership to be committed, so openraft never sees two changes at once.
    async fn begin_membership_change(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, ApiError> {
        let turn = tokio::time::timeout(self.request_timeout(), self.membership_changes.lock())
            .await
            .map_err(|_| ApiError::unavailable("another membership change is still running"))?;
        if !self.is_leader() {
            return Err(not_leader());
        }
        self.raft
            .wait(Some(self.request_timeout()))
            .metrics(
                |m| {
                    let membership = &m.membership_config;
                    membership.membership().get_joint_config().len() == 1
                        && membership.log_id() <= &m.last_applied
                },
                "membership committed",
            )
            .await
            .map_err(|e| ApiError::unavailable(format!("membership not settled: {e}")))?;
        Ok(turn)
    }

    /// Proposes a KV command through the leader and returns its result.
    pub async fn propose(&self, command: KvCommand) -> Result<KvResult, ApiError> {
        let command = Command::Kv(command);
        let result = match self.forwarder.get() {
            // A follower gathers its writes and forwards them to the leader in batches.
            Some(forwarder) if !self.is_leader() => forwarder.forward(command).await?,
            _ => match self.leader_call(LeaderRequest::Write(command)).await? {
                LeaderReply::Written(result) => result,
                other => {
                    return Err(ApiError::internal(format!(
                        "unexpected reply to a write: {other:?}"
                    )))
                }
            },
        };
        match result {
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
        let LeaderReply::ReadIndex(index) = self.leader_call(LeaderRequest::ReadIndex).await?
        else {
            return Err(ApiError::internal(
                "unexpected reply to a read-index request",
            ));
        };
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
        req.spec().resolve()?;
        if !req.serializable {
            self.linearize().await?;
        }
        let mut response = self.machine.read().range(&req)?;
        self.stamp(&mut response.header);
        Ok(response)
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
        let Some((granted_ttl, _)) = self.machine.read().lease(id) else {
            return Err(ApiError::not_found(format!(
                "lease {id:x} not found; it expired or was revoked"
            )));
        };
        let now = Instant::now();
        let full = Duration::from_secs(granted_ttl.unsigned_abs());
        let mut lessor = self.lessor.lock().unwrap_or_else(|e| e.into_inner());
        let expiry = lessor.expiry.entry(id).or_insert(now + full);
        if renew {
            *expiry = now + full;
            return Ok(LeaderReply::Lease {
                ttl: granted_ttl,
                granted_ttl,
            });
        }
        let remaining = expiry.saturating_duration_since(now);
        Ok(LeaderReply::Lease {
            ttl: remaining.as_secs() as i64,
            granted_ttl,
        })
    }

    /// One pass of the leader's lease clock: returns the leases that expired. Called
    /// periodically by the node; a no-op on followers.
    pub fn expired_leases(&self) -> Vec<i64> {
        let (state, term) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (m.state, m.current_term)
        };
        let mut lessor = self.lessor.lock().unwrap_or_else(|e| e.into_inner());
        if state != ServerState::Leader {
            lessor.expiry.clear();
            lessor.term = 0;
            return Vec::new();
        }
        if lessor.term != term {
            // Newly elected: every lease gets its full TTL again (never expire at once).
            lessor.expiry.clear();
            lessor.term = term;
        }
        let now = Instant::now();
        let leases = self.machine.read().leases();
        let live: BTreeSet<i64> = leases.iter().map(|l| l.id).collect();
        lessor.expiry.retain(|id, _| live.contains(id));
        let mut expired = Vec::new();
        for lease in leases {
            let full = Duration::from_secs(lease.granted_ttl.unsigned_abs());
            let expiry = *lessor.expiry.entry(lease.id).or_insert(now + full);
            if expiry <= now {
                expired.push(lease.id);
            }
        }
        expired
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
        }
    }

    /// Adds a member (learner, then voter once it caught up).
    pub async fn add_member(&self, id: u64, info: NodeInfo) -> Result<(), ApiError> {
        if id == 0 {
            return Err(ApiError::bad_request("member id must be positive"));
        }
        if info.raft_addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(ApiError::bad_request(format!(
                "raft address {:?} is not HOST:PORT with a numeric IP",
                info.raft_addr
            )));
        }
        self.leader_call(LeaderRequest::AddMember(id, info))
            .await
            .map(|_| ())
    }

    /// Removes a member.
    pub async fn remove_member(&self, id: u64) -> Result<(), ApiError> {
        self.leader_call(LeaderRequest::RemoveMember(id))
            .await
            .map(|_| ())
    }
}

impl KvService {
    /// Hands leadership to the most up-to-date voter before this node stops, so the cluster
    /// does not wait for an election timeout and never elects a lagging node.
    ///
    /// openraft 0.9 has no transfer primitive, and followers reject votes while their leader
    /// lease (`election_timeout_max`) runs. So the leader stops taking requests, waits until
    /// the target has every entry, stops heartbeating, waits one lease, and asks the target to
    /// campaign (`POST /internal/campaign`). Returns the new leader's id when the hand-off
    /// was observed.
    pub async fn hand_off_leadership(&self) -> Option<u64> {
        if !self.is_leader() {
            return None;
        }
        let (target, last_log_index) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
            let replication = m.replication.clone().unwrap_or_default();
            let best = replication
                .iter()
                .filter(|(id, _)| **id != self.id && voters.contains(id))
                .max_by_key(|(_, matched)| matched.map(|l| l.index))
                .map(|(id, _)| *id);
            (best, m.last_log_index)
        };
        let target = target?;
        let node = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&target)
            .cloned()?;
        tracing::info!(node_id = self.id, target, "handing off leadership");
        self.stepping_down.store(true, Ordering::Relaxed);
        let caught_up = self
            .raft
            .wait(Some(Duration::from_secs(2)))
            .metrics(
                |m| {
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&target).copied().flatten());
                    matched.map(|l| l.index) >= last_log_index
                },
                "hand-off target caught up",
            )
            .await;
        if caught_up.is_err() {
            tracing::warn!(
                target,
                "hand-off target did not catch up in time; stopping anyway"
            );
            return None;
        }
        self.raft.runtime_config().heartbeat(false);
        tokio::time::sleep(self.config.raft.election_timeout_max.0 + Duration::from_millis(50))
            .await;
        let campaign: Result<Result<(), ApiError>, TransportError> = post_postcard(
            &self.client,
            &node.raft_addr,
            "/internal/campaign",
            &(),
            Duration::from_secs(1),
        )
        .await;
        if let Err(e) = campaign {
            tracing::warn!(target, error = %e, "asking the hand-off target to campaign failed");
            return None;
        }
        let elected = self
            .raft
            .wait(Some(Duration::from_secs(3)))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != self.id),
                "new leader elected",
            )
            .await;
        match elected {
            Ok(m) => m.current_leader,
            Err(_) => None,
        }
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
async fn leader_replaced(raft: &Raft, leader: u64, term: u64) {
    let _ = raft
        .wait(None)
        .metrics(
            |m| m.current_leader != Some(leader) || m.current_term != term,
            "leader replaced",
        )
        .await;
}

fn unexpected(result: KvResult) -> ApiError {
    ApiError::internal(format!("unexpected result {result:?}"))
}

pub(crate) fn write_error(error: RaftError<u64, ClientWriteError<u64, NodeInfo>>) -> ApiError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => not_leader(),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => ApiError::new(
            ErrorCode::FailedPrecondition,
            format!("membership change refused: {e}"),
        ),
        RaftError::Fatal(e) => ApiError::unavailable(format!("raft stopped on this node: {e}")),
    }
}
