//! The native auth API under `/v1/auth/`: log in, turn access control on and off, and manage
//! users, roles and tokens (docs/auth.md). Everything but login, status and who-am-I is for
//! root (or anyone while access control is off, as in etcd).

use axum::extract::{Path, State};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use strata_auth::admin::{TokenInfo, LOGIN_TTL};
use strata_auth::state::Owner;
use strata_auth::{Access, Auth, Kind, Names, Permission};
use strata_http::{ApiJson, ApiResult, ErrorResponse, Peer, Who};
use strata_proto::error::ApiError;

/// The routes, with their own state.
pub fn routes(auth: Auth) -> Router {
    Router::new()
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/status", get(status))
        .route("/v1/auth/whoami", get(whoami))
        .route("/v1/auth/enable", post(enable))
        .route("/v1/auth/disable", post(disable))
        .route("/v1/auth/users", get(user_list).post(user_add))
        .route("/v1/auth/users/{name}", get(user_get).delete(user_delete))
        .route("/v1/auth/users/{name}/password", post(user_passwd))
        .route("/v1/auth/users/{name}/roles", post(user_grant))
        .route("/v1/auth/users/{name}/roles/{role}", delete(user_revoke))
        .route("/v1/auth/roles", get(role_list).post(role_add))
        .route("/v1/auth/roles/{name}", get(role_get).delete(role_delete))
        .route("/v1/auth/roles/{name}/grant", post(role_grant))
        .route("/v1/auth/roles/{name}/revoke", post(role_revoke))
        .route("/v1/auth/tokens", get(token_list).post(token_create))
        .route("/v1/auth/tokens/{id}", delete(token_revoke))
        .with_state(auth)
}

#[derive(Serialize)]
struct Done {
    ok: bool,
}

const DONE: Done = Done { ok: true };

fn admin(auth: &Auth, who: &strata_auth::Caller, action: &str) -> Result<(), ErrorResponse> {
    auth.check_admin(who, action).map_err(ErrorResponse)
}

#[derive(Deserialize)]
struct LoginRequest {
    user: String,
    password: String,
    /// How long the token lasts, in seconds (default one hour).
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

#[derive(Serialize)]
struct TokenReply {
    token: String,
    user: Option<String>,
    expires_in_seconds: Option<u64>,
}

async fn login(
    State(auth): State<Auth>,
    peer: Peer,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<TokenReply> {
    let ttl = req
        .ttl_seconds
        .map(Duration::from_secs)
        .unwrap_or(LOGIN_TTL);
    let from = peer.0.map(|a| a.to_string());
    let token = auth
        .login("native", &req.user, &req.password, from.as_deref(), ttl)
        .await?;
    Ok(axum::Json(TokenReply {
        token,
        user: Some(req.user),
        expires_in_seconds: Some(ttl.as_secs()),
    }))
}

#[derive(Serialize)]
struct StatusReply {
    enabled: bool,
    revision: i64,
}

async fn status(State(auth): State<Auth>) -> ApiResult<StatusReply> {
    Ok(axum::Json(StatusReply {
        enabled: auth.enabled(),
        revision: auth.gate.revision(),
    }))
}

#[derive(Serialize)]
struct WhoReply {
    enabled: bool,
    user: Option<String>,
    root: bool,
}

async fn whoami(State(auth): State<Auth>, Who(who): Who) -> ApiResult<WhoReply> {
    Ok(axum::Json(WhoReply {
        enabled: auth.enabled(),
        user: who.user.clone(),
        root: who.enforced() && who.is_root(),
    }))
}

async fn enable(State(auth): State<Auth>, Who(who): Who) -> ApiResult<Done> {
    admin(&auth, &who, "auth_enable")?;
    auth.enable().await?;
    Ok(axum::Json(DONE))
}

async fn disable(State(auth): State<Auth>, Who(who): Who) -> ApiResult<Done> {
    admin(&auth, &who, "auth_disable")?;
    auth.disable().await?;
    Ok(axum::Json(DONE))
}

#[derive(Deserialize)]
struct UserAdd {
    name: String,
    #[serde(default)]
    password: Option<String>,
}

async fn user_add(
    State(auth): State<Auth>,
    Who(who): Who,
    ApiJson(req): ApiJson<UserAdd>,
) -> ApiResult<Done> {
    admin(&auth, &who, "user_add")?;
    auth.user_add(&req.name, req.password.as_deref()).await?;
    Ok(axum::Json(DONE))
}

#[derive(Serialize)]
struct NameList {
    names: Vec<String>,
}

async fn user_list(State(auth): State<Auth>, Who(who): Who) -> ApiResult<NameList> {
    admin(&auth, &who, "user_list")?;
    Ok(axum::Json(NameList {
        names: auth.user_list().await?,
    }))
}

#[derive(Serialize)]
struct UserReply {
    name: String,
    roles: Vec<String>,
}

async fn user_get(
    State(auth): State<Auth>,
    Who(who): Who,
    Path(name): Path<String>,
) -> ApiResult<UserReply> {
    if who.user.as_deref() != Some(name.as_str()) {
        admin(&auth, &who, "user_get")?;
    }
    let user = auth.user_get(&name).await?;
    Ok(axum::Json(UserReply {
        name,
        roles: user.roles,
    }))
}

async fn user_delete(
    State(auth): State<Auth>,
    Who(who): Who,
    Path(name): Path<String>,
) -> ApiResult<Done> {
    admin(&auth, &who, "user_delete")?;
    auth.user_delete(&name).await?;
    Ok(axum::Json(DONE))
}

#[derive(Deserialize)]
struct Password {
    password: String,
}

async fn user_passwd(
    State(auth): State<Auth>,
    Who(who): Who,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<Password>,
) -> ApiResult<Done> {
    // Users may change their own password.
    if who.user.as_deref() != Some(name.as_str()) {
        admin(&auth, &who, "user_passwd")?;
    }
    auth.user_passwd(&name, &req.password).await?;
    Ok(axum::Json(DONE))
}

#[derive(Deserialize)]
struct RoleName {
    role: String,
}

async fn user_grant(
    State(auth): State<Auth>,
    Who(who): Who,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<RoleName>,
) -> ApiResult<Done> {
    admin(&auth, &who, "user_grant")?;
    auth.user_grant(&name, &req.role).await?;
    Ok(axum::Json(DONE))
}

async fn user_revoke(
    State(auth): State<Auth>,
    Who(who): Who,
    Path((name, role)): Path<(String, String)>,
) -> ApiResult<Done> {
    admin(&auth, &who, "user_revoke")?;
    auth.user_revoke(&name, &role).await?;
    Ok(axum::Json(DONE))
}

#[derive(Deserialize)]
struct RoleAdd {
    name: String,
}

async fn role_add(
    State(auth): State<Auth>,
    Who(who): Who,
    ApiJson(req): ApiJson<RoleAdd>,
) -> ApiResult<Done> {
    admin(&auth, &who, "role_add")?;
    auth.role_add(&req.name).await?;
    Ok(axum::Json(DONE))
}

async fn role_list(State(auth): State<Auth>, Who(who): Who) -> ApiResult<NameList> {
    admin(&auth, &who, "role_list")?;
    Ok(axum::Json(NameList {
        names: auth.role_list().await?,
    }))
}

/// A permission as the API shows and takes it: names as text, etcd's range conventions.
#[derive(Debug, Serialize, Deserialize)]
pub struct PermissionSpec {
    /// `kv`, `registry`, `config`, `gateway` or `monitor`.
    pub kind: Kind,
    /// The name, or the first name of the range, or the prefix.
    pub key: String,
    /// End of the range (exclusive; `"\u0000"` means every name from `key` on).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub range_end: String,
    /// Every name that starts with `key`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prefix: bool,
    /// `read`, `write` or `read_write`.
    #[serde(default = "read_write")]
    pub access: Access,
}

fn read_write() -> Access {
    Access::ReadWrite
}

impl PermissionSpec {
    fn names(&self) -> Result<Names, ApiError> {
        if self.prefix {
            if !self.range_end.is_empty() {
                return Err(ApiError::bad_request(
                    "give either prefix or range_end, not both",
                ));
            }
            return Ok(Names::prefix(self.key.clone()));
        }
        Ok(Names::range(self.key.clone(), self.range_end.clone()))
    }

    fn of(permission: &Permission) -> Self {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let key = text(&permission.names.start);
        let (range_end, prefix) = match &permission.names.end {
            None => (String::new(), false),
            Some(end) if end.is_empty() => ("\0".to_string(), false),
            Some(end) if *end == strata_proto::kv::prefix_end(&permission.names.start) => {
                (String::new(), true)
            }
            Some(end) => (text(end), false),
        };
        PermissionSpec {
            kind: permission.kind,
            key,
            range_end,
            prefix,
            access: permission.access,
        }
    }
}

#[derive(Serialize)]
struct RoleReply {
    name: String,
    permissions: Vec<PermissionSpec>,
}

async fn role_get(
    State(auth): State<Auth>,
    Who(who): Who,
    Path(name): Path<String>,
) -> ApiResult<RoleReply> {
    admin(&auth, &who, "role_get")?;
    let role = auth.role_get(&name).await?;
    Ok(axum::Json(RoleReply {
        name,
        permissions: role.permissions.iter().map(PermissionSpec::of).collect(),
    }))
}

async fn role_delete(
    State(auth): State<Auth>,
    Who(who): Who,
    Path(name): Path<String>,
) -> ApiResult<Done> {
    admin(&auth, &who, "role_delete")?;
    auth.role_delete(&name).await?;
    Ok(axum::Json(DONE))
}

async fn role_grant(
    State(auth): State<Auth>,
    Who(who): Who,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<PermissionSpec>,
) -> ApiResult<Done> {
    admin(&auth, &who, "role_grant")?;
    let permission = Permission {
        kind: req.kind,
        names: req.names()?,
        access: req.access,
    };
    auth.role_grant(&name, permission).await?;
    Ok(axum::Json(DONE))
}

async fn role_revoke(
    State(auth): State<Auth>,
    Who(who): Who,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<PermissionSpec>,
) -> ApiResult<Done> {
    admin(&auth, &who, "role_revoke")?;
    auth.role_revoke(&name, req.kind, &req.names()?).await?;
    Ok(axum::Json(DONE))
}

/// The longest token a user may make for itself (root's tokens may last longer, or forever).
const SELF_TOKEN_SECONDS: u64 = 24 * 3600;

#[derive(Deserialize)]
struct TokenCreate {
    /// Acts as this user (default: the caller).
    #[serde(default)]
    user: Option<String>,
    /// Or as these roles, with no user behind it.
    #[serde(default)]
    roles: Vec<String>,
    /// Lifetime in seconds; absent: until revoked.
    #[serde(default)]
    ttl_seconds: Option<u64>,
    #[serde(default)]
    description: String,
}

async fn token_create(
    State(auth): State<Auth>,
    Who(who): Who,
    ApiJson(req): ApiJson<TokenCreate>,
) -> ApiResult<TokenReply> {
    let owner = match (req.user, req.roles.is_empty()) {
        (Some(_), false) => {
            return Err(ErrorResponse(ApiError::bad_request(
                "give a user or roles, not both",
            )))
        }
        (None, false) => Owner::Roles(req.roles),
        (Some(user), true) => Owner::User(user),
        (None, true) => match &who.user {
            Some(user) => Owner::User(user.clone()),
            None => {
                return Err(ErrorResponse(ApiError::bad_request(
                    "give the user or the roles the token acts as",
                )))
            }
        },
    };
    // Anyone may make tokens for themselves, lasting at most a day; anything else is root's.
    let own = who.user.is_some() && owner == Owner::User(who.user.clone().unwrap_or_default());
    if !own || req.ttl_seconds.is_none_or(|t| t > SELF_TOKEN_SECONDS) {
        admin(&auth, &who, "token_create")?;
    }
    let user = match &owner {
        Owner::User(u) => Some(u.clone()),
        Owner::Roles(_) => None,
    };
    let ttl = req.ttl_seconds.map(Duration::from_secs);
    let token = auth.token_create(owner, ttl, &req.description).await?;
    Ok(axum::Json(TokenReply {
        token,
        user,
        expires_in_seconds: req.ttl_seconds,
    }))
}

#[derive(Serialize)]
struct TokenList {
    tokens: Vec<TokenInfo>,
}

async fn token_list(State(auth): State<Auth>, Who(who): Who) -> ApiResult<TokenList> {
    admin(&auth, &who, "token_list")?;
    Ok(axum::Json(TokenList {
        tokens: auth.token_list().await?,
    }))
}

async fn token_revoke(
    State(auth): State<Auth>,
    Who(who): Who,
    Path(id): Path<String>,
) -> ApiResult<Done> {
    admin(&auth, &who, "token_revoke")?;
    auth.token_revoke(&id).await?;
    Ok(axum::Json(DONE))
}
