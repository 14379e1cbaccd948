//! The `v3electionpb.Election` service: Campaign, Proclaim, Leader, Observe, Resign,
//! straight onto the backend.

use crate::context::Context;
use crate::convert;
use crate::error::{self, Subject};
use crate::pb::v3electionpb as pb;
use futures::stream::{BoxStream, StreamExt};
use strata_auth::{Access, Names};
use strata_store::LockGuard;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Serves the Election service.
pub(crate) struct ElectionService {
    ctx: Context,
}

impl ElectionService {
    /// Returns the service over the shared context.
    pub(crate) fn new(ctx: Context) -> Self {
        ElectionService { ctx }
    }
}

/// Reads the leadership a request names; etcd refuses requests without one (with a plain
/// error, so its code is Unknown).
fn leader_guard(leader: Option<pb::LeaderKey>) -> Result<LockGuard, Status> {
    let leader = leader.ok_or_else(|| Status::unknown("\"leader\" field must be provided"))?;
    Ok(LockGuard {
        key: leader.key,
        revision: leader.rev,
    })
}

#[tonic::async_trait]
impl pb::election_server::Election for ElectionService {
    type ObserveStream = BoxStream<'static, Result<pb::LeaderResponse, Status>>;

    async fn campaign(
        &self,
        request: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        let who = self.ctx.who(&request).await?;
        let request = request.into_inner();
        let names = Names::prefix(request.name.clone());
        self.ctx
            .allow(&who, &[(Access::Write, names)], "campaign")?;
        let name = request.name.clone();
        // A campaign waits like a lock (shutdown must not wait for it), and like a lock
        // fails only for its lease.
        let campaign = self
            .ctx
            .backend
            .campaign(request.name, request.lease, request.value);
        let won = tokio::select! {
            won = campaign => won,
            _ = self.ctx.stop.cancelled() => return Err(error::stopped()),
        };
        let won = won.map_err(|e| self.ctx.status(e, Subject::Lock))?;
        let revision = self.ctx.backend.revision().max(won.revision);
        Ok(Response::new(pb::CampaignResponse {
            header: Some(self.ctx.header(revision)),
            leader: Some(pb::LeaderKey {
                name,
                key: won.key,
                rev: won.revision,
                lease: request.lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<pb::ProclaimRequest>,
    ) -> Result<Response<pb::ProclaimResponse>, Status> {
        let who = self.ctx.who(&request).await?;
        let request = request.into_inner();
        let leader = leader_guard(request.leader)?;
        let names = Names::one(leader.key.clone());
        self.ctx
            .allow(&who, &[(Access::Write, names)], "proclaim")?;
        self.ctx
            .backend
            .proclaim(leader, request.value)
            .await
            .map_err(|e| self.ctx.status(e, Subject::Election))?;
        Ok(Response::new(pb::ProclaimResponse {
            header: Some(self.ctx.current_header()),
        }))
    }

    async fn leader(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<pb::LeaderResponse>, Status> {
        let who = self.ctx.who(&request).await?;
        let name = request.into_inner().name;
        let names = Names::prefix(name.clone());
        self.ctx.allow(&who, &[(Access::Read, names)], "leader")?;
        let found = self
            .ctx
            .backend
            .election_leader(name)
            .await
            .map_err(|e| self.ctx.status(e, Subject::Election))?;
        let kv = found.ok_or_else(error::election_no_leader)?;
        Ok(Response::new(pb::LeaderResponse {
            header: Some(self.ctx.current_header()),
            kv: Some(convert::key_value(kv)),
        }))
    }

    async fn observe(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        self.ctx.check_require_leader(request.metadata())?;
        let who = self.ctx.who(&request).await?;
        let name = request.into_inner().name;
        let wanted = vec![(Access::Read, Names::prefix(name.clone()))];
        self.ctx.allow(&who, &wanted, "observe")?;
        let receiver = self
            .ctx
            .backend
            .observe(name)
            .map_err(|e| self.ctx.status(e, Subject::Election))?;
        let ctx = self.ctx.clone();
        let stop = self.ctx.stop.clone();
        let leaders = ReceiverStream::new(receiver)
            .map(move |kv| {
                Ok(pb::LeaderResponse {
                    header: Some(ctx.header(ctx.backend.revision().max(kv.mod_revision))),
                    kv: Some(convert::key_value(kv)),
                })
            })
            .take_until(async move { stop.cancelled_owned().await });
        // The stream ends with the permission error once its caller may no longer read it.
        let Some(auth) = &self.ctx.auth else {
            return Ok(Response::new(leaders.boxed()));
        };
        let status_of = self.ctx.clone();
        let leaders = strata_auth::guard::guard(
            leaders,
            auth.gate.clone(),
            who,
            move |gate, who| gate.check_kv(who, &wanted, "observe"),
            move |e| Err(status_of.status(e, Subject::Election)),
        );
        Ok(Response::new(leaders.boxed()))
    }

    async fn resign(
        &self,
        request: Request<pb::ResignRequest>,
    ) -> Result<Response<pb::ResignResponse>, Status> {
        let who = self.ctx.who(&request).await?;
        let leader = leader_guard(request.into_inner().leader)?;
        let names = Names::one(leader.key.clone());
        self.ctx.allow(&who, &[(Access::Write, names)], "resign")?;
        self.ctx
            .backend
            .resign(leader)
            .await
            .map_err(|e| self.ctx.status(e, Subject::Election))?;
        Ok(Response::new(pb::ResignResponse {
            header: Some(self.ctx.current_header()),
        }))
    }
}
