//! [`Consensus`]: the consensus plumbing behind one handle, built in one step: the proposer
//! that batches writes into log entries, the forwarder that batches a follower's writes on
//! their way to the leader, the read-index batcher, forwarding of leader-only requests,
//! membership changes and the leadership hand-off at shutdown.
//!
//! Nothing here knows KV semantics: commands are opaque [`Command`]s. The forwarder holds the
//! shared [`Inner`] part, never the KV service, so there is no back-reference to break.

use crate::network::{post_postcard, TransportError};
use crate::proposer::{Forwarder, Proposer};
use crate::read_index::ReadIndexBatcher;
use crate::Raft;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_proto::error::{ApiError, ErrorCode};
use strata_proto::kv::{Command, CommandResult};
use strata_proto::NodeInfo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
    /// Add a member as etcd's `MemberAdd` does: a voter at once (as a learner, promoted
    /// without waiting), so the node may be started afterwards.
    AddMember(u64, NodeInfo),
    /// Remove a voter.
    RemoveMember(u64),
    /// Update a member's addresses.
    SetNode(u64, NodeInfo),
    /// Propose several commands (writes a follower gathered while its previous forward was
    /// in flight); each gets its own result.
    WriteBatch(Vec<Command>),
    /// Add a member as a learner and promote it only once it holds the log (`strata cluster
    /// add-member`): a node the leader cannot reach never becomes a voter.
    AddMemberWhenCaughtUp(u64, NodeInfo),
}

impl LeaderRequest {
    /// Returns true when sending it twice is harmless, so a failed send may be retried.
    pub(crate) fn idempotent(&self) -> bool {
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

/// The error of a leader-only request on a node that does not lead.
pub fn not_leader() -> ApiError {
    ApiError::unavailable("this node is not the leader")
}

/// The metrics the consensus plumbing updates; the caller registers them.
#[derive(Clone)]
pub struct ConsensusMetrics {
    /// Writes per proposed log entry (proposal batching).
    pub proposal_batch_size: prometheus::Histogram,
    /// Proposal batches given up on because leadership changed or the deadline passed.
    pub proposals_abandoned: prometheus::IntCounter,
    /// Forwards to a leader given up on because raft elected another leader meanwhile.
    pub forwards_abandoned: prometheus::IntCounter,
    /// Time from proposal to apply, on the leader.
    pub proposal_seconds: prometheus::Histogram,
}

/// Timing the consensus plumbing needs from the node's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a request waits for a leader (`kv.request_timeout`).
    pub request_timeout: Duration,
    /// The upper election timeout (the leader lease), waited out during a hand-off.
    pub election_timeout_max: Duration,
}

/// What answers one request on the leader stream: the leader's answer, or why the request
/// was refused before it was served (malformed).
pub type LeaderStreamReply = Result<Result<LeaderReply, ApiError>, String>;

/// The handle. Built once by [`Consensus::start`]; cheap to share by reference.
pub struct Consensus {
    inner: Arc<Inner>,
    forwarder: Forwarder,
}

/// What both the handle and the forwarding loop use.
pub(crate) struct Inner {
    id: u64,
    raft: Raft,
    client: crate::network::PeerClient,
    proposer: Proposer,
    read_index: ReadIndexBatcher,
    metrics: ConsensusMetrics,
    request_timeout: Duration,
    election_timeout_max: Duration,
    /// Set while a graceful shutdown hands leadership to another node: leader-only requests
    /// are refused as `unavailable`, so callers retry on the next leader.
    stepping_down: AtomicBool,
    /// Serialises membership changes on the leader: openraft refuses a change while another
    /// is uncommitted. An async mutex, because it is held across the change's commit.
    membership_changes: tokio::sync::Mutex<()>,
    /// The data folder's free space: below the reserve, writes are refused here and, when
    /// this node leads, for every node that forwards to it.
    space: Arc<crate::DiskSpace>,
    /// The stream forwarded write batches go to the leader over ([`LeaderStream`]).
    leader_stream: std::sync::Mutex<LeaderStream>,
}

/// The follower's stream to the leader's `POST /internal/leader/stream`, which carries the
/// [`Forwarder`]'s write batches (one in flight, so one stream suffices) without the pooled
/// HTTP client's two task hand-offs per request. Other leader requests (read index, leases,
/// membership) are POSTed: they are concurrent, and a stream carries one request at a time.
#[derive(Default)]
struct LeaderStream {
    /// The open stream and the leader address it goes to; taken out for an exchange.
    open: Option<(String, crate::network::FrameStream)>,
    /// A leader address that had no stream route (an older build) and when: batches are
    /// POSTed to it until [`STREAM_RETRY_AFTER`] has passed, then the stream is tried again
    /// (the leader may have been upgraded meanwhile).
    refused: Option<(String, Instant)>,
}

/// How long a leader that refused the stream route gets POSTs before the stream is tried again.
const STREAM_RETRY_AFTER: Duration = Duration::from_secs(60);

impl LeaderStream {
    /// True while `addr` refused the stream less than [`STREAM_RETRY_AFTER`] before `now`.
    fn refuses(&self, addr: &str, now: Instant) -> bool {
        self.refused.as_ref().is_some_and(|(refusing, since)| {
            refusing == addr && now.saturating_duration_since(*since) < STREAM_RETRY_AFTER
        })
    }
}

impl Consensus {
    /// Starts the batching loops on `tracker`; they stop when `cancel` fires.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        id: u64,
        raft: Raft,
        client: crate::network::PeerClient,
        metrics: ConsensusMetrics,
        timing: Timing,
        space: Arc<crate::DiskSpace>,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Consensus {
        let proposer = Proposer::start(
            raft.clone(),
            metrics.clone(),
            write_error,
            timing.request_timeout,
            tracker,
            cancel.child_token(),
        );
        let read_index = ReadIndexBatcher::start(
            raft.clone(),
            timing.request_timeout,
            tracker,
            cancel.child_token(),
        );
        let inner = Arc::new(Inner {
            id,
            raft,
            client,
            proposer,
            read_index,
            metrics,
            request_timeout: timing.request_timeout,
            election_timeout_max: timing.election_timeout_max,
            stepping_down: AtomicBool::new(false),
            membership_changes: tokio::sync::Mutex::new(()),
            space,
            leader_stream: std::sync::Mutex::default(),
        });
        let forwarder = Forwarder::start(inner.clone(), tracker, cancel.child_token());
        Consensus { inner, forwarder }
    }

    /// Returns true when this node currently believes it is the leader.
    pub fn is_leader(&self) -> bool {
        self.inner.is_leader()
    }

    /// Proposes `command` through the leader (a follower batches its forwards) and returns
    /// its result once applied.
    pub async fn write(&self, command: Command) -> Result<CommandResult, ApiError> {
        self.inner.space.check_writable()?;
        if !self.is_leader() {
            return self.forwarder.forward(command).await;
        }
        match self.leader_call(LeaderRequest::Write(command)).await? {
            LeaderReply::Written(result) => Ok(result),
            other => Err(ApiError::internal(format!(
                "unexpected reply to a write: {other:?}"
            ))),
        }
    }

    /// The leader's commit index, after it confirmed its leadership with a quorum.
    pub async fn read_index(&self) -> Result<u64, ApiError> {
        match self.leader_call(LeaderRequest::ReadIndex).await? {
            LeaderReply::ReadIndex(index) => Ok(index),
            other => Err(ApiError::internal(format!(
                "unexpected reply to a read-index request: {other:?}"
            ))),
        }
    }

    /// Serves a consensus request here if this node leads, else on the leader.
    pub async fn leader_call(&self, request: LeaderRequest) -> Result<LeaderReply, ApiError> {
        self.call_leader(request, |r| self.inner.serve(r)).await
    }

    /// Serves `request` with `local` if this node leads, else sends it to the leader; waits
    /// out elections up to the request timeout.
    pub async fn call_leader<F, Fut>(
        &self,
        request: LeaderRequest,
        local: F,
    ) -> Result<LeaderReply, ApiError>
    where
        F: Fn(LeaderRequest) -> Fut,
        Fut: Future<Output = Result<LeaderReply, ApiError>>,
    {
        self.inner.call_leader(request, local).await
    }

    /// Serves a consensus request on this node (the leader's end of a forward).
    pub async fn serve(&self, request: LeaderRequest) -> Result<LeaderReply, ApiError> {
        self.inner.serve(request).await
    }

    /// True while a graceful shutdown hands leadership away.
    pub fn stepping_down(&self) -> bool {
        self.inner.stepping_down.load(Ordering::Relaxed)
    }

    /// Hands leadership to the most up-to-date voter before this node stops, so the cluster
    /// does not wait for an election timeout and never elects a lagging node. Returns the new
    /// leader, if the hand-off happened.
    pub async fn hand_off_leadership(&self) -> Option<u64> {
        self.inner.hand_off_leadership().await
    }
}

impl Inner {
    fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    pub(crate) async fn call_leader<F, Fut>(
        &self,
        request: LeaderRequest,
        local: F,
    ) -> Result<LeaderReply, ApiError>
    where
        F: Fn(LeaderRequest) -> Fut,
        Fut: Future<Output = Result<LeaderReply, ApiError>>,
    {
        let timeout = match request {
            LeaderRequest::AddMember(..) | LeaderRequest::AddMemberWhenCaughtUp(..) => {
                self.request_timeout.max(Duration::from_secs(60))
            }
            _ => self.request_timeout,
        };
        let deadline = Instant::now() + timeout;
        loop {
            let leader = self.raft.metrics().borrow().current_leader;
            let outcome = match leader {
                Some(id) if id == self.id => local(request.clone()).await,
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

    pub(crate) async fn forward(
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
        let call = async {
            if matches!(request, LeaderRequest::WriteBatch(_)) {
                if let Some(reply) = self
                    .forward_over_stream(&node.raft_addr, request, remaining)
                    .await?
                {
                    return Ok(reply);
                }
            }
            post_postcard(
                &self.client,
                &node.raft_addr,
                "/internal/leader",
                request,
                remaining,
            )
            .await
        };
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

    /// Sends `request` to the leader at `addr` over the leader stream (opened when there is
    /// none, or it goes to another address); `Ok(None)` when that leader has no stream route.
    async fn forward_over_stream(
        &self,
        addr: &str,
        request: &LeaderRequest,
        timeout: Duration,
    ) -> Result<Option<Result<LeaderReply, ApiError>>, TransportError> {
        let mut held = {
            let mut slot = self
                .leader_stream
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if slot.refuses(addr, Instant::now()) {
                return Ok(None);
            }
            slot.open
                .take()
                .and_then(|(to, stream)| (to == addr).then_some(stream))
        };
        let route = (
            crate::network::LEADER_STREAM_PATH,
            crate::network::LEADER_STREAM_PROTOCOL,
        );
        let exchanged = crate::network::exchange_over_stream::<_, LeaderStreamReply>(
            &self.client,
            addr,
            route,
            &mut held,
            request,
            timeout,
        )
        .await;
        let mut slot = self
            .leader_stream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Kept after a timeout too: the stream is still in step (see `FrameStream`).
        if let Some(stream) = held {
            slot.open = Some((addr.to_string(), stream));
        }
        match exchanged? {
            Some(Ok(reply)) => {
                crate::network::count_streamed_forward();
                Ok(Some(reply))
            }
            Some(Err(refused)) => Err(TransportError::Failed {
                addr: addr.to_string(),
                message: format!("leader request refused: {refused}"),
            }),
            None => {
                tracing::info!(
                    leader = addr,
                    "leader takes forwarded writes as one request each (older build)"
                );
                slot.refused = Some((addr.to_string(), Instant::now()));
                Ok(None)
            }
        }
    }

    /// Serves a consensus request on this node, or fails with `unavailable` if it does not
    /// lead (any more). Lease requests are the KV service's ([`crate::KvService`]).
    pub(crate) async fn serve(&self, request: LeaderRequest) -> Result<LeaderReply, ApiError> {
        if self.stepping_down.load(Ordering::Relaxed) {
            return Err(ApiError::unavailable(
                "the leader is handing off leadership",
            ));
        }
        let wait = matches!(request, LeaderRequest::AddMemberWhenCaughtUp(..));
        if matches!(
            request,
            LeaderRequest::Write(_) | LeaderRequest::WriteBatch(_)
        ) {
            self.space.check_writable()?;
        }
        match request {
            LeaderRequest::Write(command) => self
                .proposer
                .propose(command)
                .await
                .map(LeaderReply::Written),
            LeaderRequest::WriteBatch(commands) => {
                if !self.is_leader() {
                    return Err(not_leader());
                }
                // Submitted together, so the proposer packs them into as few entries as it can.
                let results = self.proposer.propose_all(commands).await;
                Ok(LeaderReply::WrittenBatch(results))
            }
            LeaderRequest::ReadIndex => self
                .read_index
                .read_index()
                .await
                .map(LeaderReply::ReadIndex),
            LeaderRequest::LeaseKeepAlive(_) | LeaderRequest::LeaseTimeToLive(_) => Err(
                ApiError::internal("lease requests are served by the KV service"),
            ),
            LeaderRequest::AddMember(id, info) | LeaderRequest::AddMemberWhenCaughtUp(id, info) => {
                let _change = self.begin_membership_change().await?;
                tracing::info!(member = id, %info, "adding member as learner");
                let raft_addr = info.raft_addr.clone();
                // openraft's own blocking wait counts a learner within 5000 entries as caught
                // up, even one never reached: wait until it holds the entry that added it.
                let added = self
                    .raft
                    .add_learner(id, info, false)
                    .await
                    .map_err(write_error)?;
                let needed = added.log_id.index;
                let matched = |m: &openraft::RaftMetrics<u64, NodeInfo>| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id).cloned().flatten())
                        .map(|matched| matched.index)
                };
                let caught_up = !wait
                    || self
                        .raft
                        .wait(Some(self.request_timeout))
                        .metrics(
                            |m| matched(m).is_some_and(|index| index >= needed),
                            "learner caught up",
                        )
                        .await
                        .is_ok();
                if !caught_up {
                    let (held, leading) = {
                        let metrics = self.raft.metrics();
                        let m = metrics.borrow();
                        (matched(&m), m.replication.is_some())
                    };
                    tracing::warn!(
                        member = id,
                        raft_addr,
                        ?held,
                        "learner has not caught up; left a learner"
                    );
                    let why = match (leading, held) {
                        (false, _) => "this node stopped leading meanwhile".to_string(),
                        (true, None) => format!("it received nothing: check that {raft_addr} is reachable from the leader and, with peer TLS, that its certificate is one the cluster accepts"),
                        (true, Some(index)) => format!("it holds the log up to {index} of {needed} so far (a large snapshot takes a while)"),
                    };
                    return Err(ApiError::new(
                        ErrorCode::Timeout,
                        format!(
                            "member {id} was added as a learner but has not caught up within {:?}: {why}. It stays a learner: run add-member again to promote it once it has caught up, or remove-member {id}",
                            self.request_timeout
                        ),
                    ));
                }
                tracing::info!(member = id, "promoting the learner to voter");
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
        let turn = tokio::time::timeout(self.request_timeout, self.membership_changes.lock())
            .await
            .map_err(|_| ApiError::unavailable("another membership change is still running"))?;
        if !self.is_leader() {
            return Err(not_leader());
        }
        self.raft
            .wait(Some(self.request_timeout))
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
        tokio::time::sleep(self.election_timeout_max + Duration::from_millis(50)).await;
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
}

async fn leader_replaced(raft: &Raft, leader: u64, term: u64) {
    let _ = raft
        .wait(None)
        .metrics(
            |m| m.current_leader != Some(leader) || m.current_term != term,
            "leader replaced",
        )
        .await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_that_refused_the_stream_is_asked_again_after_a_while() {
        let then = Instant::now();
        let slot = LeaderStream {
            open: None,
            refused: Some(("10.0.0.1:7001".to_string(), then)),
        };
        assert!(slot.refuses("10.0.0.1:7001", then));
        assert!(slot.refuses("10.0.0.1:7001", then + STREAM_RETRY_AFTER / 2));
        assert!(!slot.refuses("10.0.0.1:7001", then + STREAM_RETRY_AFTER));
        // Another leader, or none refused: the stream is tried.
        assert!(!slot.refuses("10.0.0.2:7001", then));
        assert!(!LeaderStream::default().refuses("10.0.0.1:7001", then));
    }
}
