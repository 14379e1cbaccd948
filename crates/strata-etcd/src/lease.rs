//! The `etcdserverpb.Lease` service: grant, revoke, the keep-alive stream, time-to-live and
//! the lease list.

use crate::context::Context;
use crate::error::{self, Subject};
use crate::pb::etcdserverpb as pb;
use futures::stream::{self, BoxStream, StreamExt};
use strata_auth::Access;
use strata_proto::error::ErrorCode;
use strata_proto::kv::LeaseGrantRequest;
use tonic::{Request, Response, Status, Streaming};

/// Longest lease etcd grants, in seconds; longer requests fail with "too large lease TTL".
const MAX_LEASE_TTL_SECONDS: i64 = 9_000_000_000;

/// Serves the Lease service.
pub(crate) struct LeaseService {
    ctx: Context,
}

impl LeaseService {
    /// Returns the service over the shared context.
    pub(crate) fn new(ctx: Context) -> Self {
        LeaseService { ctx }
    }
}

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    type LeaseKeepAliveStream = BoxStream<'static, Result<pb::LeaseKeepAliveResponse, Status>>;

    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        self.ctx.who(&request).await?;
        let request = request.into_inner();
        if request.ttl > MAX_LEASE_TTL_SECONDS {
            return Err(error::lease_ttl_too_large());
        }
        let grant = LeaseGrantRequest {
            ttl: request.ttl,
            id: request.id,
        };
        let granted = self
            .ctx
            .backend
            .lease_grant(grant)
            .await
            .map_err(|e| self.ctx.status(e, Subject::Lease))?;
        Ok(Response::new(pb::LeaseGrantResponse {
            header: Some(self.ctx.header_from(&granted.header)),
            id: granted.id,
            ttl: granted.ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let who = self.ctx.who(&request).await?;
        let id = request.into_inner().id;
        self.ctx
            .allow_lease_keys(&who, id, Access::Write, "lease_revoke")
            .await?;
        let revoked = self
            .ctx
            .backend
            .lease_revoke(id)
            .await
            .map_err(|e| self.ctx.status(e, Subject::Lease))?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: Some(self.ctx.header_from(&revoked.header)),
        }))
    }

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.ctx.who(&request).await?;
        self.ctx.check_require_leader(request.metadata())?;
        Ok(Response::new(keep_alive(
            self.ctx.clone(),
            request.into_inner().boxed(),
        )))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let who = self.ctx.who(&request).await?;
        let request = request.into_inner();
        if request.keys {
            self.ctx
                .allow_lease_keys(&who, request.id, Access::Read, "lease_keys")
                .await?;
        }
        let result = self
            .ctx
            .backend
            .lease_time_to_live(request.id, request.keys)
            .await;
        let response = match result {
            Ok(lease) => pb::LeaseTimeToLiveResponse {
                header: Some(self.ctx.header_from(&lease.header)),
                id: lease.id,
                ttl: lease.ttl,
                granted_ttl: lease.granted_ttl,
                keys: lease.keys.into_iter().map(String::into_bytes).collect(),
            },
            // etcd answers an unknown (or expired) lease with TTL -1 rather than an error;
            // etcdctl prints "lease ... already expired" from it.
            Err(e) if e.code == ErrorCode::NotFound => pb::LeaseTimeToLiveResponse {
                header: Some(self.ctx.current_header()),
                id: request.id,
                ttl: -1,
                ..Default::default()
            },
            Err(e) => return Err(self.ctx.status(e, Subject::Lease)),
        };
        Ok(Response::new(response))
    }

    async fn lease_leases(
        &self,
        request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        self.ctx.who(&request).await?;
        let listed = self
            .ctx
            .backend
            .lease_leases()
            .await
            .map_err(|e| self.ctx.status(e, Subject::Lease))?;
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(self.ctx.header_from(&listed.header)),
            leases: listed
                .leases
                .into_iter()
                .map(|lease| pb::LeaseStatus { id: lease.id })
                .collect(),
        }))
    }
}

/// One keep-alive stream: each request renews a lease and gets one reply, in order.
struct KeepAlive {
    /// Shared server state.
    ctx: Context,
    /// The client's requests.
    requests: BoxStream<'static, Result<pb::LeaseKeepAliveRequest, Status>>,
    /// Set once the stream ended with an error.
    finished: bool,
}

/// The replies of a keep-alive stream to `requests`: one renewal per request, in order, until
/// the client stops sending (the gRPC service and the JSON gateway both serve it).
pub(crate) fn keep_alive(
    ctx: Context,
    requests: BoxStream<'static, Result<pb::LeaseKeepAliveRequest, Status>>,
) -> BoxStream<'static, Result<pb::LeaseKeepAliveResponse, Status>> {
    let state = KeepAlive {
        ctx,
        requests,
        finished: false,
    };
    stream::unfold(state, |mut state| async move {
        let reply = state.next().await?;
        Some((reply, state))
    })
    .boxed()
}

impl KeepAlive {
    /// Returns the next reply, or `None` when the client stopped sending.
    async fn next(&mut self) -> Option<Result<pb::LeaseKeepAliveResponse, Status>> {
        if self.finished {
            return None;
        }
        let stop = self.ctx.stop.clone();
        let request = tokio::select! {
            _ = stop.cancelled() => Err(error::stopped()),
            request = self.requests.next() => request?,
        };
        let reply = match request {
            Ok(request) => renew(&self.ctx, request.id).await,
            Err(status) => Err(error::oversized_message(&status).unwrap_or(status)),
        };
        if reply.is_err() {
            self.finished = true;
        }
        Some(reply)
    }
}

/// Renews one lease for the keep-alive stream.
async fn renew(ctx: &Context, id: i64) -> Result<pb::LeaseKeepAliveResponse, Status> {
    match ctx.backend.lease_keepalive(id).await {
        Ok(renewed) => Ok(pb::LeaseKeepAliveResponse {
            header: Some(ctx.header_from(&renewed.header)),
            id,
            ttl: renewed.ttl,
        }),
        // On the stream etcd reports an unknown lease as TTL 0 and keeps going.
        Err(e) if e.code == ErrorCode::NotFound => Ok(pb::LeaseKeepAliveResponse {
            header: Some(ctx.current_header()),
            id,
            ttl: 0,
        }),
        Err(e) => Err(ctx.status(e, Subject::Lease)),
    }
}
