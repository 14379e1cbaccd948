//! The `v3lockpb.Lock` service: Lock and Unlock, straight onto the backend.

use crate::context::Context;
use crate::error::{self, Subject};
use crate::pb::v3lockpb as pb;
use strata_auth::{Access, Names};
use tonic::{Request, Response, Status};

/// Serves the Lock service.
pub(crate) struct LockService {
    ctx: Context,
}

impl LockService {
    /// Returns the service over the shared context.
    pub(crate) fn new(ctx: Context) -> Self {
        LockService { ctx }
    }
}

#[tonic::async_trait]
impl pb::lock_server::Lock for LockService {
    async fn lock(
        &self,
        request: Request<pb::LockRequest>,
    ) -> Result<Response<pb::LockResponse>, Status> {
        let who = self.ctx.who(&request).await?;
        let request = request.into_inner();
        let names = Names::prefix(request.name.clone());
        self.ctx.allow(&who, &[(Access::Write, names)], "lock")?;
        // Waiting for a lock can take forever; shutdown must not wait for it.
        let held = tokio::select! {
            held = self.ctx.backend.lock(request.name, request.lease) => held,
            _ = self.ctx.stop.cancelled() => return Err(error::stopped()),
        };
        let held = held.map_err(|e| self.ctx.status(e, Subject::Lock))?;
        // The header's revision is at least the lock key's create revision (the fencing
        // token), as in etcd, where it is the revision at which the lock was acquired.
        let revision = self.ctx.backend.revision().max(held.revision);
        Ok(Response::new(pb::LockResponse {
            header: Some(self.ctx.header(revision)),
            key: held.key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        let who = self.ctx.who(&request).await?;
        let key = request.into_inner().key;
        if key.is_empty() {
            // etcd's delete of an empty key fails in its KV layer, and the lock service
            // passes that error on as it is (code Unknown).
            return Err(Status::unknown("etcdserver: key is not provided"));
        }
        self.ctx
            .allow(&who, &[(Access::Write, Names::one(key.clone()))], "unlock")?;
        self.ctx
            .backend
            .unlock(key)
            .await
            .map_err(|e| self.ctx.status(e, Subject::Lock))?;
        Ok(Response::new(pb::UnlockResponse {
            header: Some(self.ctx.current_header()),
        }))
    }
}
