//! The `etcdserverpb.Maintenance` service: Status and Alarm, which `etcdctl endpoint status`
//! and `endpoint health` use; Defragment as a no-op; Snapshot (a Strata snapshot file, for
//! `etcdctl snapshot save`); the rest unimplemented.

use crate::context::Context;
use crate::error::{self, Subject};
use crate::pb::etcdserverpb as pb;
use futures::stream::BoxStream;
use sha2::Digest;
use tonic::{Request, Response, Status};

/// The version Status reports. etcd clients parse it as semver and compare the major and
/// minor numbers to decide which API is available; Strata serves etcd 3.4's.
pub const ETCD_VERSION: &str = "3.4.0-strata";

/// Serves the Maintenance service.
pub(crate) struct MaintenanceService {
    ctx: Context,
}

impl MaintenanceService {
    /// Returns the service over the shared context.
    pub(crate) fn new(ctx: Context) -> Self {
        MaintenanceService { ctx }
    }
}

/// The length of an etcd snapshot stream around `content` bytes.
fn strata_envelope_len(content: u64) -> u64 {
    content.div_ceil(512) * 512 + 32
}

/// A backup on its way out as an etcd snapshot stream: the content, then zeros to a multiple
/// of 512 bytes, then the SHA-256 of both.
struct Envelope {
    chunks: tokio::sync::mpsc::Receiver<Result<Vec<u8>, strata_proto::error::ApiError>>,
    /// `None` once the digest is sent.
    hasher: Option<sha2::Sha256>,
    sent: u64,
    content: u64,
    total: u64,
}

impl Envelope {
    /// What follows the content: the padding and digest, once; then nothing. A stream that
    /// ended early ends without them, so etcdctl refuses it.
    fn trailer(&mut self) -> Option<Vec<u8>> {
        if self.sent < self.content {
            return None;
        }
        let mut hasher = self.hasher.take()?;
        let padding = vec![0u8; (self.total - 32 - self.sent) as usize];
        hasher.update(&padding);
        let mut blob = padding;
        blob.extend_from_slice(&hasher.finalize());
        Some(blob)
    }
}

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for MaintenanceService {
    type SnapshotStream = BoxStream<'static, Result<pb::SnapshotResponse, Status>>;

    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction;
        let action = AlarmAction::try_from(request.into_inner().action)
            .map_err(|_| Status::invalid_argument("etcdserver: unknown alarm action"))?;
        match action {
            // Strata raises no alarms, so there is never one to list or to disarm.
            AlarmAction::Get | AlarmAction::Deactivate => Ok(Response::new(pb::AlarmResponse {
                header: Some(self.ctx.current_header()),
                alarms: Vec::new(),
            })),
            AlarmAction::Activate => Err(error::unimplemented("activating alarms")),
        }
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let status = self.ctx.backend.status();
        let is_learner = status
            .members
            .iter()
            .any(|m| m.id == self.ctx.backend.node_id() && m.role == "learner");
        let db_size = i64::try_from(self.ctx.backend.db_size()).unwrap_or(i64::MAX);
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.ctx.header(status.revision)),
            version: ETCD_VERSION.to_string(),
            db_size,
            leader: status.leader.unwrap_or(0),
            raft_index: status.commit_index,
            raft_term: status.term,
            raft_applied_index: status.applied_index,
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner,
        }))
    }

    async fn defragment(
        &self,
        request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        let who = self.ctx.who(&request).await?;
        self.ctx.allow_root(&who, "defragment")?;
        // Strata's storage reclaims space on its own (log purging after snapshots), so there
        // is nothing to defragment; succeeding keeps maintenance scripts working.
        Ok(Response::new(pb::DefragmentResponse {
            header: Some(self.ctx.current_header()),
        }))
    }

    async fn hash(
        &self,
        request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        let who = self.ctx.who(&request).await?;
        self.ctx.allow_root(&who, "hash")?;
        Err(error::unimplemented("Hash"))
    }

    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let who = self.ctx.who(&request).await?;
        self.ctx.allow_root(&who, "hash_kv")?;
        Err(error::unimplemented("HashKV"))
    }

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let who = self.ctx.who(&request).await?;
        self.ctx.allow_root(&who, "snapshot")?;
        // Strata's own snapshot file (what `strata cluster snapshot restore` reads), not a
        // bbolt database: `etcdctl snapshot save` stores it as it comes.
        let backup = self
            .ctx
            .backend
            .backup()
            .await
            .map_err(|e| self.ctx.status(e, Subject::Key))?;
        // etcdctl expects the stream to end with zeros up to a multiple of 512 bytes and the
        // SHA-256 of everything before (etcd's own checksum); Strata's reader accepts that.
        let header = Some(self.ctx.current_header());
        let total = strata_envelope_len(backup.size);
        let stream = futures::stream::unfold(
            Envelope {
                chunks: backup.chunks,
                hasher: Some(sha2::Sha256::new()),
                sent: 0,
                content: backup.size,
                total,
            },
            move |mut envelope| async move {
                let blob = match envelope.chunks.recv().await {
                    Some(Ok(blob)) => blob,
                    Some(Err(e)) => return Some((Err(Status::internal(e.message)), envelope)),
                    None => envelope.trailer()?,
                };
                if let Some(hasher) = envelope.hasher.as_mut() {
                    hasher.update(&blob);
                }
                envelope.sent += blob.len() as u64;
                let response = pb::SnapshotResponse {
                    header,
                    remaining_bytes: envelope.total.saturating_sub(envelope.sent),
                    blob,
                };
                Some((Ok(response), envelope))
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let who = self.ctx.who(&request).await?;
        self.ctx.allow_root(&who, "move_leader")?;
        Err(error::unimplemented("MoveLeader"))
    }
}
