//! [`Auth`]: changes to the auth records (users, roles, tokens, the switch), written to the
//! replicated store with compare-and-set so two admins never lose each other's change, and
//! read back through the node's [`Gate`] once it has seen them. Every interface's auth API
//! (native, etcd, Consul, Nacos) calls these; none writes the records itself.
//!
//! The errors use etcd's wording where etcd has one, since etcd's clients show it as is.

use crate::gate::{now_ms, Caller, Gate};
use crate::state::{AuthState, Owner, Token, ENABLED_KEY, ROLES, TOKENS, USERS};
use crate::{secret, Kind, Names, Permission, Role, User, ROOT_ROLE};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use strata_proto::error::{ApiError, ErrorCode};
use strata_proto::kv::{
    Compare, CompareResult, CompareTarget, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use strata_store::KvApi;

/// The user every cluster bootstraps with; it always has the role `root`.
pub const ROOT_USER: &str = "root";

/// How long a token from a password login lasts unless the interface says otherwise.
pub const LOGIN_TTL: Duration = Duration::from_secs(3600);

/// The longest a token may last (ten years); longer is what "until revoked" is for.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(10 * 365 * 86_400);

/// How long a change waits for this node's view to show it before answering anyway.
const VIEW_WAIT: Duration = Duration::from_secs(5);

/// Compare-and-set attempts before a change reports a conflict.
const ATTEMPTS: usize = 8;

/// The auth API over the replicated store.
#[derive(Clone)]
pub struct Auth {
    /// The node's view and checks.
    pub gate: Arc<Gate>,
    kv: Arc<dyn KvApi>,
    /// A root password that [`Auth::enable`] uses to create root when none exists yet
    /// (`strata dev` keeps it in its data folder and writes nothing to the store until then).
    pending_root: Arc<std::sync::OnceLock<String>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("gate", &self.gate).finish()
    }
}

/// A token as listed: a short id (the start of its digest), never its text.
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    /// The first 12 hex digits of the digest; `strata auth token revoke ID` takes it.
    pub id: String,
    /// Who it acts as.
    pub owner: Owner,
    /// When it stops working (ms since the epoch).
    pub expires_at_ms: Option<u64>,
    /// What it is for.
    pub description: String,
}

fn failed(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::FailedPrecondition, message)
}

fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > 128 || name.chars().any(|c| c == '/' || c.is_control()) {
        return Err(ApiError::bad_request(format!(
            "{what} name must be 1 to 128 characters without '/' or control characters"
        )));
    }
    Ok(())
}

impl Auth {
    /// The auth API of a node whose view is `gate`, writing through `kv`.
    pub fn new(gate: Arc<Gate>, kv: Arc<dyn KvApi>) -> Self {
        Auth {
            gate,
            kv,
            pending_root: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// Sets the password root gets if access control is enabled before a root user exists.
    pub fn set_pending_root_password(&self, password: String) {
        let _ = self.pending_root.set(password);
    }

    /// Whether access control is on.
    pub fn enabled(&self) -> bool {
        self.gate.enabled()
    }

    /// The caller behind `token`, as [`Gate::caller`] says, except that a token this node does
    /// not know yet gets a second look once the node has caught up with the cluster: a token
    /// made through another node a moment ago is then known here too.
    pub async fn caller(
        &self,
        api: &'static str,
        token: Option<&str>,
        from: Option<String>,
    ) -> Result<Caller, ApiError> {
        let first = self.gate.caller_quietly(api, token, from.clone());
        let unknown = matches!(&first, Err(e) if e.code == ErrorCode::Unauthenticated
            && !e.message.contains("expired"))
            && token.is_some_and(|t| secret::looks_like_token(t.trim()));
        if first.is_ok() || !unknown {
            return match first {
                Ok(caller) => Ok(caller),
                Err(_) => self.gate.caller(api, token, from),
            };
        }
        if self.kv.linearize().await.is_ok() {
            self.gate.wait_for(self.kv.revision(), VIEW_WAIT).await;
        }
        self.gate.caller(api, token, from)
    }

    /// Reads `key` linearizably: its decoded record and mod revision (0 when absent).
    async fn read<T: DeserializeOwned>(&self, key: &str) -> Result<(Option<T>, i64), ApiError> {
        let response = self
            .kv
            .range(RangeRequest {
                key: key.as_bytes().to_vec(),
                ..RangeRequest::default()
            })
            .await?;
        match response.kvs.into_iter().next() {
            None => Ok((None, 0)),
            Some(kv) => {
                let record = serde_json::from_slice(&kv.value).map_err(|_| {
                    ApiError::internal(format!("auth record {key} does not decode"))
                })?;
                Ok((Some(record), kv.mod_revision))
            }
        }
    }

    /// Writes `ops` when every `(key, mod_revision)` in `expect` still holds; returns whether
    /// it did, and waits for this node's view to show it.
    async fn write_if(
        &self,
        expect: &[(&str, i64)],
        ops: Vec<RequestOp>,
    ) -> Result<bool, ApiError> {
        let compare = expect
            .iter()
            .map(|(key, revision)| Compare {
                key: key.as_bytes().to_vec(),
                range_end: Vec::new(),
                prefix: false,
                result: CompareResult::Equal,
                target: CompareTarget::ModRevision(*revision),
            })
            .collect();
        let response = self
            .kv
            .txn(TxnRequest {
                compare,
                success: ops,
                failure: Vec::new(),
            })
            .await?;
        if response.succeeded {
            self.gate
                .wait_for(response.header.revision, VIEW_WAIT)
                .await;
        }
        Ok(response.succeeded)
    }

    /// Reads the record at `key`, lets `change` decide its new value (`None` deletes it), and
    /// writes it if nobody changed it meanwhile, retrying a few times.
    async fn modify<T, F>(&self, key: &str, change: F) -> Result<(), ApiError>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(Option<T>) -> Result<Option<T>, ApiError>,
    {
        for _ in 0..ATTEMPTS {
            let (current, revision) = self.read::<T>(key).await?;
            let op = match change(current)? {
                Some(record) => put_op(key, &record, 0),
                None => delete_op(key),
            };
            if self.write_if(&[(key, revision)], vec![op]).await? {
                return Ok(());
            }
        }
        Err(ApiError::unavailable(format!(
            "{key} kept changing concurrently; retry"
        )))
    }

    /// Turns access control on. Refused unless the user `root` exists with the role `root`,
    /// so nobody is locked out.
    pub async fn enable(&self) -> Result<(), ApiError> {
        let (mut root, _) = self.read::<User>(&format!("{USERS}{ROOT_USER}")).await?;
        if root.is_none() {
            if let Some(password) = self.pending_root.get() {
                self.create_root(password).await?;
                root = self.read::<User>(&format!("{USERS}{ROOT_USER}")).await?.0;
            }
        }
        match root {
            None => Err(failed("etcdserver: root user does not exist")),
            Some(user) if !user.roles.iter().any(|r| r == ROOT_ROLE) => {
                Err(failed("etcdserver: root user does not have root role"))
            }
            Some(_) => self.set_enabled(true).await,
        }
    }

    /// Turns access control off.
    pub async fn disable(&self) -> Result<(), ApiError> {
        self.set_enabled(false).await
    }

    async fn set_enabled(&self, on: bool) -> Result<(), ApiError> {
        let value = if on { "true" } else { "false" };
        let op = RequestOp::Put(PutRequest {
            key: ENABLED_KEY.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..PutRequest::default()
        });
        self.write_if(&[], vec![op]).await.map(|_| ())
    }

    /// Creates a user; `password` `None` makes one that cannot log in with a password
    /// (certificate or token only).
    pub async fn user_add(&self, name: &str, password: Option<&str>) -> Result<(), ApiError> {
        check_name("user", name)?;
        let hash = match password {
            Some(p) => Some(hash(p).await?),
            None => None,
        };
        self.modify(&user_key(name), |current: Option<User>| match current {
            Some(_) => Err(ApiError::new(
                ErrorCode::AlreadyExists,
                "etcdserver: user name already exists",
            )),
            None => Ok(Some(User {
                password_hash: hash.clone(),
                roles: Vec::new(),
            })),
        })
        .await
    }

    /// Deletes a user and every token that acts as it.
    pub async fn user_delete(&self, name: &str) -> Result<(), ApiError> {
        if name == ROOT_USER && self.enabled() {
            return Err(failed(
                "etcdserver: invalid auth management: root cannot be deleted while access control is on",
            ));
        }
        self.modify(&user_key(name), |current: Option<User>| match current {
            None => Err(user_not_found()),
            Some(_) => Ok(None),
        })
        .await?;
        self.revoke_tokens_of(name).await
    }

    /// Deletes every token that acts as `user`, found by a linearizable read of the records
    /// (never a possibly stale view), all in one transaction.
    async fn revoke_tokens_of(&self, user: &str) -> Result<(), ApiError> {
        let records = self
            .kv
            .range(RangeRequest {
                key: TOKENS.as_bytes().to_vec(),
                prefix: true,
                ..RangeRequest::default()
            })
            .await?;
        let owner = Owner::User(user.to_string());
        let ops: Vec<RequestOp> = records
            .kvs
            .iter()
            .filter(|kv| {
                serde_json::from_slice::<Token>(&kv.value).is_ok_and(|token| token.owner == owner)
            })
            .map(|kv| delete_op(&String::from_utf8_lossy(&kv.key)))
            .collect();
        if !ops.is_empty() {
            self.write_if(&[], ops).await?;
        }
        Ok(())
    }

    /// Sets a user's password and revokes the user's tokens (a stolen one dies with the old
    /// password).
    pub async fn user_passwd(&self, name: &str, password: &str) -> Result<(), ApiError> {
        let hash = hash(password).await?;
        self.modify(&user_key(name), |current: Option<User>| match current {
            None => Err(user_not_found()),
            Some(mut user) => {
                user.password_hash = Some(hash.clone());
                Ok(Some(user))
            }
        })
        .await?;
        self.revoke_tokens_of(name).await
    }

    /// Gives a user a role (which must exist, except `root`).
    pub async fn user_grant(&self, name: &str, role: &str) -> Result<(), ApiError> {
        if role != ROOT_ROLE {
            let (found, _) = self.read::<Role>(&role_key(role)).await?;
            if found.is_none() {
                return Err(role_not_found());
            }
        }
        self.modify(&user_key(name), |current: Option<User>| match current {
            None => Err(user_not_found()),
            Some(mut user) => {
                if !user.roles.iter().any(|r| r == role) {
                    user.roles.push(role.to_string());
                    user.roles.sort();
                }
                Ok(Some(user))
            }
        })
        .await
    }

    /// Takes a role from a user.
    pub async fn user_revoke(&self, name: &str, role: &str) -> Result<(), ApiError> {
        if name == ROOT_USER && role == ROOT_ROLE && self.enabled() {
            return Err(failed(
                "etcdserver: invalid auth management: root keeps the root role while access control is on",
            ));
        }
        self.modify(&user_key(name), |current: Option<User>| match current {
            None => Err(user_not_found()),
            Some(mut user) => {
                let before = user.roles.len();
                user.roles.retain(|r| r != role);
                if user.roles.len() == before {
                    return Err(failed("etcdserver: role is not granted to the user"));
                }
                Ok(Some(user))
            }
        })
        .await
    }

    /// A user's record (password hash left out).
    pub async fn user_get(&self, name: &str) -> Result<User, ApiError> {
        let (user, _) = self.read::<User>(&user_key(name)).await?;
        let mut user = user.ok_or_else(user_not_found)?;
        user.password_hash = None;
        Ok(user)
    }

    /// User names, sorted.
    pub async fn user_list(&self) -> Result<Vec<String>, ApiError> {
        self.kv.linearize().await?;
        Ok(self.gate.state().users.into_keys().collect())
    }

    /// Creates an empty role.
    pub async fn role_add(&self, name: &str) -> Result<(), ApiError> {
        check_name("role", name)?;
        self.modify(&role_key(name), |current: Option<Role>| match current {
            Some(_) => Err(ApiError::new(
                ErrorCode::AlreadyExists,
                "etcdserver: role name already exists",
            )),
            None => Ok(Some(Role::default())),
        })
        .await
    }

    /// Deletes a role and takes it from every user that has it.
    pub async fn role_delete(&self, name: &str) -> Result<(), ApiError> {
        if name == ROOT_ROLE && self.enabled() {
            return Err(failed(
                "etcdserver: invalid auth management: the root role cannot be deleted while access control is on",
            ));
        }
        self.modify(&role_key(name), |current: Option<Role>| match current {
            None => Err(role_not_found()),
            Some(_) => Ok(None),
        })
        .await?;
        let holders: Vec<String> = self
            .gate
            .state()
            .users
            .iter()
            .filter(|(_, u)| u.roles.iter().any(|r| r == name))
            .map(|(n, _)| n.clone())
            .collect();
        for user in holders {
            match self.user_revoke(&user, name).await {
                Ok(()) => {}
                // Revoked meanwhile, or the user is gone: either way it no longer has it.
                Err(e) if matches!(e.code, ErrorCode::NotFound | ErrorCode::FailedPrecondition) => {
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Adds a permission to a role (replacing one over the same kind and names).
    pub async fn role_grant(&self, name: &str, permission: Permission) -> Result<(), ApiError> {
        self.modify(&role_key(name), |current: Option<Role>| match current {
            None => Err(role_not_found()),
            Some(mut role) => {
                role.permissions
                    .retain(|p| !(p.kind == permission.kind && p.names == permission.names));
                role.permissions.push(permission.clone());
                Ok(Some(role))
            }
        })
        .await
    }

    /// Removes the permission over `kind` and `names` from a role.
    pub async fn role_revoke(&self, name: &str, kind: Kind, names: &Names) -> Result<(), ApiError> {
        self.modify(&role_key(name), |current: Option<Role>| match current {
            None => Err(role_not_found()),
            Some(mut role) => {
                let before = role.permissions.len();
                role.permissions
                    .retain(|p| !(p.kind == kind && &p.names == names));
                if role.permissions.len() == before {
                    return Err(ApiError::not_found(
                        "etcdserver: permission is not granted to the role",
                    ));
                }
                Ok(Some(role))
            }
        })
        .await
    }

    /// A role's record.
    pub async fn role_get(&self, name: &str) -> Result<Role, ApiError> {
        if name == ROOT_ROLE {
            // Built in: it allows everything whether or not a record exists.
            let (role, _) = self.read::<Role>(&role_key(name)).await?;
            return Ok(role.unwrap_or_default());
        }
        let (role, _) = self.read::<Role>(&role_key(name)).await?;
        role.ok_or_else(role_not_found)
    }

    /// Role names, sorted.
    pub async fn role_list(&self) -> Result<Vec<String>, ApiError> {
        self.kv.linearize().await?;
        Ok(self.gate.state().roles.into_keys().collect())
    }

    /// Makes a token acting as `owner`, lasting `ttl` (`None`: until revoked). Returns its
    /// text, which is shown once and never stored.
    pub async fn token_create(
        &self,
        owner: Owner,
        ttl: Option<Duration>,
        description: &str,
    ) -> Result<String, ApiError> {
        // A user token is written only if the user is unchanged since it was read, so a user
        // deleted meanwhile never gets one.
        let mut expect: Vec<(String, i64)> = Vec::new();
        match &owner {
            Owner::User(name) => {
                let (user, revision) = self.read::<User>(&user_key(name)).await?;
                user.ok_or_else(user_not_found)?;
                expect.push((user_key(name), revision));
            }
            Owner::Roles(roles) => {
                if roles.is_empty() {
                    return Err(ApiError::bad_request(
                        "a role token needs at least one role",
                    ));
                }
                for role in roles.iter().filter(|r| *r != ROOT_ROLE) {
                    let (found, _) = self.read::<Role>(&role_key(role)).await?;
                    found.ok_or_else(role_not_found)?;
                }
            }
        }
        if ttl.is_some_and(|ttl| ttl > MAX_TOKEN_TTL) {
            return Err(ApiError::bad_request(format!(
                "a token may last at most {} days",
                MAX_TOKEN_TTL.as_secs() / 86_400
            )));
        }
        let (text, digest) = secret::new_token();
        let (lease, expires_at_ms) = match ttl {
            None => (0, None),
            Some(ttl) => {
                let seconds = ttl.as_secs().max(1);
                // The lease removes the record once the token is over; the expiry is checked
                // on every use as well, so a lease that lags never extends a token.
                let lease = strata_store::grant(self.kv.as_ref(), seconds as i64 + 1).await?;
                (lease, Some(now_ms() + seconds * 1000))
            }
        };
        let record = Token {
            owner,
            expires_at_ms,
            description: description.to_string(),
        };
        let key = format!("{TOKENS}{digest}");
        let expect: Vec<(&str, i64)> = expect.iter().map(|(k, r)| (k.as_str(), *r)).collect();
        if !self
            .write_if(&expect, vec![put_op(&key, &record, lease)])
            .await?
        {
            return Err(ApiError::unavailable(
                "the user changed while the token was made; retry",
            ));
        }
        Ok(text)
    }

    /// Every token, by short id.
    pub async fn token_list(&self) -> Result<Vec<TokenInfo>, ApiError> {
        self.kv.linearize().await?;
        Ok(self
            .gate
            .state()
            .tokens
            .into_iter()
            .map(|(digest, token)| TokenInfo {
                id: digest[..12.min(digest.len())].to_string(),
                owner: token.owner,
                expires_at_ms: token.expires_at_ms,
                description: token.description,
            })
            .collect())
    }

    /// Revokes the token whose text is `id`, or whose digest starts with `id` (at least 8 hex
    /// digits, and only one token).
    pub async fn token_revoke(&self, id: &str) -> Result<(), ApiError> {
        let state = self.gate.state();
        let digest = if secret::looks_like_token(id) {
            secret::token_digest(id)
        } else {
            if id.len() < 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ApiError::bad_request(
                    "give a token, or at least 8 hex digits of its id (strata auth token list)",
                ));
            }
            let mut matching = state.tokens.keys().filter(|d| d.starts_with(id));
            match (matching.next(), matching.next()) {
                (Some(d), None) => d.clone(),
                (None, _) => return Err(ApiError::not_found("no token has that id")),
                (Some(_), Some(_)) => {
                    return Err(ApiError::bad_request(
                        "several tokens have ids starting so; give more digits",
                    ))
                }
            }
        };
        self.modify(
            &format!("{TOKENS}{digest}"),
            |current: Option<Token>| match current {
                None => Err(ApiError::not_found("no token has that id")),
                Some(_) => Ok(None),
            },
        )
        .await
    }

    /// Checks a password and returns a new token for the user, lasting `ttl`.
    pub async fn login(
        &self,
        api: &'static str,
        user: &str,
        password: &str,
        from: Option<&str>,
        ttl: Duration,
    ) -> Result<String, ApiError> {
        self.gate.login(api, user, password, from).await?;
        self.token_create(
            Owner::User(user.to_string()),
            Some(ttl),
            &format!("{api} login"),
        )
        .await
    }

    /// Creates the user `root` with the role `root` and `password` when no root user exists,
    /// and with `enable` turns access control on, in one transaction (a crash never leaves
    /// root without access control on). Returns whether it did; `false` when a root user
    /// exists, whatever its state.
    pub async fn bootstrap(&self, password: &str, enable: bool) -> Result<bool, ApiError> {
        let record = User {
            password_hash: Some(hash(password).await?),
            roles: vec![ROOT_ROLE.to_string()],
        };
        let key = user_key(ROOT_USER);
        let mut ops = vec![put_op(&key, &record, 0)];
        if enable {
            ops.push(RequestOp::Put(PutRequest {
                key: ENABLED_KEY.as_bytes().to_vec(),
                value: b"true".to_vec(),
                ..PutRequest::default()
            }));
        }
        self.write_if(&[(key.as_str(), 0)], ops).await
    }

    /// Creates the user `root` with the role `root` unless a root user exists.
    async fn create_root(&self, password: &str) -> Result<bool, ApiError> {
        self.bootstrap(password, false).await
    }

    /// Whether `caller` may manage the auth records (root, or anyone with access control
    /// off, as in etcd).
    pub fn check_admin(&self, caller: &Caller, action: &str) -> Result<(), ApiError> {
        self.gate.check_root(caller, action)
    }

    /// The records as this node sees them (for status pages).
    pub fn state(&self) -> AuthState {
        self.gate.state()
    }
}

fn user_key(name: &str) -> String {
    format!("{USERS}{name}")
}

fn role_key(name: &str) -> String {
    format!("{ROLES}{name}")
}

fn user_not_found() -> ApiError {
    ApiError::not_found("etcdserver: user name not found")
}

fn role_not_found() -> ApiError {
    ApiError::not_found("etcdserver: role name not found")
}

fn put_op<T: Serialize>(key: &str, record: &T, lease: i64) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        // Records are plain structs of strings and numbers; they always serialize.
        value: serde_json::to_vec(record).unwrap_or_default(),
        lease,
        ..PutRequest::default()
    })
}

fn delete_op(key: &str) -> RequestOp {
    RequestOp::DeleteRange(strata_proto::kv::DeleteRangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    })
}

async fn hash(password: &str) -> Result<String, ApiError> {
    if password.is_empty() {
        return Err(ApiError::bad_request("password must not be empty"));
    }
    let password = password.to_string();
    tokio::task::spawn_blocking(move || secret::hash_password(&password))
        .await
        .map_err(|e| ApiError::internal(format!("password hashing failed: {e}")))
}
