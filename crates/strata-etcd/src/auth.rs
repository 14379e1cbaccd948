//! The `etcdserverpb.Auth` service: etcdctl's `auth`, `user` and `role` commands and clientv3's
//! `--user` login, over the one access-control model (`strata_auth`). Every change goes through
//! `strata_auth::Auth`; this file only translates etcd's messages and words.

use crate::context::Context;
use crate::error::{self, Subject};
use crate::pb::authpb;
use crate::pb::etcdserverpb as pb;
use strata_auth::admin::LOGIN_TTL;
use strata_auth::{Access, Auth, Caller, Kind, Names, Permission};
use strata_proto::error::{ApiError, ErrorCode};
use tonic::{Request, Response, Status};

/// Serves the Auth service.
pub(crate) struct AuthService {
    ctx: Context,
    auth: Auth,
}

impl AuthService {
    /// Returns the service over the shared context and the node's auth records.
    pub(crate) fn new(ctx: Context, auth: Auth) -> Self {
        AuthService { ctx, auth }
    }

    fn fail(&self, e: ApiError) -> Status {
        self.ctx.status(e, Subject::Key)
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(self.ctx.current_header())
    }

    /// The caller, who must be root (or anyone while access control is off).
    async fn admin<T>(&self, request: &Request<T>, action: &str) -> Result<Caller, Status> {
        let who = self.ctx.who(request).await?;
        self.ctx.allow_root(&who, action)?;
        Ok(who)
    }
}

/// An etcd permission as a KV grant: etcd's range conventions are `Names::range`'s.
fn permission(perm: &authpb::Permission) -> Permission {
    use authpb::permission::Type;
    let access = match Type::try_from(perm.perm_type) {
        Ok(Type::Read) => Access::Read,
        Ok(Type::Write) => Access::Write,
        _ => Access::ReadWrite,
    };
    Permission {
        kind: Kind::Kv,
        names: Names::range(perm.key.clone(), perm.range_end.clone()),
        access,
    }
}

fn etcd_permission(permission: &Permission) -> authpb::Permission {
    use authpb::permission::Type;
    let perm_type = match permission.access {
        Access::Read => Type::Read,
        Access::Write => Type::Write,
        Access::ReadWrite => Type::Readwrite,
    };
    let range_end = match &permission.names.end {
        None => Vec::new(),
        Some(end) if end.is_empty() => vec![0],
        Some(end) => end.clone(),
    };
    authpb::Permission {
        perm_type: perm_type as i32,
        key: permission.names.start.clone(),
        range_end,
    }
}

#[tonic::async_trait]
impl pb::auth_server::Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        self.admin(&request, "auth_enable").await?;
        self.auth.enable().await.map_err(|e| self.fail(e))?;
        Ok(Response::new(pb::AuthEnableResponse {
            header: self.header(),
        }))
    }

    async fn auth_disable(
        &self,
        request: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        self.admin(&request, "auth_disable").await?;
        self.auth.disable().await.map_err(|e| self.fail(e))?;
        Ok(Response::new(pb::AuthDisableResponse {
            header: self.header(),
        }))
    }

    async fn auth_status(
        &self,
        _request: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        Ok(Response::new(pb::AuthStatusResponse {
            header: self.header(),
            enabled: self.auth.enabled(),
            auth_revision: u64::try_from(self.auth.gate.revision()).unwrap_or(0),
        }))
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        // As etcd: a login while access control is off is refused, and clientv3 (etcdctl
        // --user) then goes on without a token.
        if !self.auth.enabled() {
            return Err(error::auth_not_enabled());
        }
        let from = self.ctx.from(&request);
        let request = request.into_inner();
        let token = self
            .auth
            .login(
                "etcd",
                &request.name,
                &request.password,
                from.as_deref(),
                LOGIN_TTL,
            )
            .await
            .map_err(|e| match e.code {
                ErrorCode::Unauthenticated if e.message.starts_with("too many") => {
                    Status::resource_exhausted(format!("etcdserver: {}", e.message))
                }
                ErrorCode::Unauthenticated => error::auth_failed(),
                _ => self.fail(e),
            })?;
        Ok(Response::new(pb::AuthenticateResponse {
            header: self.header(),
            token,
        }))
    }

    async fn user_add(
        &self,
        request: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        self.admin(&request, "user_add").await?;
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(error::user_empty());
        }
        let no_password = request.options.is_some_and(|o| o.no_password);
        let password = (!no_password).then_some(request.password.as_str());
        self.auth
            .user_add(&request.name, password)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(Response::new(pb::AuthUserAddResponse {
            header: self.header(),
        }))
    }

    async fn user_get(
        &self,
        request: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let who = self.ctx.who(&request).await?;
        let name = request.into_inner().name;
        if who.user.as_deref() != Some(name.as_str()) {
            self.ctx.allow_root(&who, "user_get")?;
        }
        let user = self.auth.user_get(&name).await.map_err(|e| self.fail(e))?;
        Ok(Response::new(pb::AuthUserGetResponse {
            header: self.header(),
            roles: user.roles,
        }))
    }

    async fn user_list(
        &self,
        request: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        self.admin(&request, "user_list").await?;
        let users = self.auth.user_list().await.map_err(|e| self.fail(e))?;
        Ok(Response::new(pb::AuthUserListResponse {
            header: self.header(),
            users,
        }))
    }

    async fn user_delete(
        &self,
        request: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        self.admin(&request, "user_delete").await?;
        let name = request.into_inner().name;
        self.auth
            .user_delete(&name)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(Response::new(pb::AuthUserDeleteResponse {
            header: self.header(),
        }))
    }

    async fn user_change_password(
        &self,
        request: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        let who = self.ctx.who(&request).await?;
        let request = request.into_inner();
        if who.user.as_deref() != Some(request.name.as_str()) {
            self.ctx.allow_root(&who, "user_passwd")?;
        }
        self.auth
            .user_passwd(&request.name, &request.password)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse {
            header: self.header(),
        }))
    }

    async fn user_grant_role(
        &self,
        request: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        self.admin(&request, "user_grant").await?;
        let request = request.into_inner();
        self.auth
            .user_grant(&request.user, &request.role)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse {
            header: self.header(),
        }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        self.admin(&request, "user_revoke").await?;
        let request = request.into_inner();
        self.auth
            .user_revoke(&request.name, &request.role)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse {
            header: self.header(),
        }))
    }

    async fn role_add(
        &self,
        request: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        self.admin(&request, "role_add").await?;
        let name = request.into_inner().name;
        if name.is_empty() {
            return Err(Status::invalid_argument("etcdserver: role name is empty"));
        }
        self.auth.role_add(&name).await.map_err(|e| self.fail(e))?;
        Ok(Response::new(pb::AuthRoleAddResponse {
            header: self.header(),
        }))
    }

    async fn role_get(
        &self,
        request: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        self.admin(&request, "role_get").await?;
        let name = request.into_inner().role;
        let perm = if name == strata_auth::ROOT_ROLE {
            // As etcd shows it: everything, read and write.
            vec![etcd_permission(&Permission {
                kind: Kind::Kv,
                names: Names::range(Vec::new(), vec![0]),
                access: Access::ReadWrite,
            })]
        } else {
            let role = self.auth.role_get(&name).await.map_err(|e| self.fail(e))?;
            role.permissions
                .iter()
                .filter(|p| p.kind == Kind::Kv)
                .map(etcd_permission)
                .collect()
        };
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: self.header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        request: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        self.admin(&request, "role_list").await?;
        let roles = self.auth.role_list().await.map_err(|e| self.fail(e))?;
        Ok(Response::new(pb::AuthRoleListResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        request: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        self.admin(&request, "role_delete").await?;
        let name = request.into_inner().role;
        self.auth
            .role_delete(&name)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(Response::new(pb::AuthRoleDeleteResponse {
            header: self.header(),
        }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        self.admin(&request, "role_grant").await?;
        let request = request.into_inner();
        let Some(perm) = &request.perm else {
            return Err(Status::invalid_argument("etcdserver: permission not given"));
        };
        self.auth
            .role_grant(&request.name, permission(perm))
            .await
            .map_err(|e| self.fail(e))?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse {
            header: self.header(),
        }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        self.admin(&request, "role_revoke").await?;
        let request = request.into_inner();
        let names = Names::range(request.key, request.range_end);
        self.auth
            .role_revoke(&request.role, Kind::Kv, &names)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse {
            header: self.header(),
        }))
    }
}
