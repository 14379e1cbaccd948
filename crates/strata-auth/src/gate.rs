//! [`Gate`]: a node's live view of the auth records, and the one place every API asks "who is
//! this" ([`Gate::caller`]) and "may they" ([`Gate::check`]).
//!
//! The view follows the records under [`ROOT`](crate::state::ROOT) in the replicated store
//! (the node runs [`strata_store::follow`] on it), so a change made through any node reaches
//! every node without a restart. Each user's grants are compiled once per change, so a check
//! costs a digest and a lookup.

use crate::audit::{self, Audit, Record};
use crate::state::{AuthState, LoginThrottle, Owner, Refusal, ROOT};
use crate::{kv, secret, Access, Grants, Kind, Names};
use prometheus::{IntCounterVec, Opts};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use strata_proto::error::{ApiError, ErrorCode};
use strata_proto::kv::{Event, EventType, KeyValue};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Who is asking, as an API resolved it from the request's credential.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user's name, when the credential names one.
    pub user: Option<String>,
    /// What it may do; `None` when access control is off (everything is allowed).
    grants: Option<Arc<Grants>>,
    /// The client's address, for the audit log and the login throttle.
    pub from: Option<String>,
    /// Which interface it came through (`native`, `etcd`, `consul`, `nacos`).
    pub api: &'static str,
    /// What it was resolved from, so a long-lived stream can resolve it again
    /// ([`Gate::recheck`]).
    credential: Credential,
}

/// The credential a [`Caller`] was resolved from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Credential {
    /// None: access control was off, or the caller is anonymous.
    None,
    /// A token, by its digest.
    Token(String),
    /// A verified client certificate naming this user.
    Certificate(String),
}

impl Caller {
    /// A caller with no limits: access control is off, or the request is the node's own.
    pub fn open(api: &'static str, from: Option<String>) -> Self {
        Caller {
            user: None,
            grants: None,
            from,
            api,
            credential: Credential::None,
        }
    }

    /// A caller without a valid credential on a path open to everyone: checked, and allowed
    /// nothing (open paths need no grant).
    pub fn anonymous(api: &'static str, from: Option<String>) -> Self {
        Caller {
            user: None,
            grants: Some(Arc::new(Grants::default())),
            from,
            api,
            credential: Credential::None,
        }
    }

    /// True when access control applied to this caller (it was off otherwise).
    pub fn enforced(&self) -> bool {
        self.grants.is_some()
    }

    /// True when this caller may do everything (root, or access control is off).
    pub fn is_root(&self) -> bool {
        self.grants.as_ref().is_none_or(|g| g.is_root())
    }

    /// A name for messages and the audit log.
    pub fn who(&self) -> String {
        match (&self.user, &self.grants) {
            (Some(user), _) => format!("user {user}"),
            (None, Some(_)) => "a role token".to_string(),
            (None, None) => "anonymous".to_string(),
        }
    }
}

/// The name in a client's verified TLS certificate, left in a request's extensions by the
/// listener that accepted it (`None`: no certificate). Access control maps it to the user of
/// that name when the request carries no token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateName(pub Option<String>);

#[derive(Default)]
struct View {
    state: AuthState,
    /// Grants by user name, compiled from the user's roles.
    users: HashMap<String, Arc<Grants>>,
}

impl View {
    fn compile(state: AuthState) -> View {
        let users = state
            .users
            .iter()
            .map(|(name, user)| {
                (
                    name.clone(),
                    Arc::new(Grants::of(&user.roles, &state.roles)),
                )
            })
            .collect();
        View { state, users }
    }
}

/// Per-decision counters.
#[derive(Clone)]
struct Metrics {
    decisions: IntCounterVec,
    logins: IntCounterVec,
}

/// The node's access-control gate.
pub struct Gate {
    view: RwLock<Arc<View>>,
    /// Enforce even before the records say so: a server given a root password starts closed
    /// until that root is written (see [`Gate::hold_closed`]).
    held_closed: std::sync::atomic::AtomicBool,
    /// The store revision the view reflects.
    revision: tokio::sync::watch::Sender<i64>,
    throttle: Mutex<LoginThrottle>,
    /// Password checks running at once (each takes tens of ms and 19 MiB by design).
    verifying: tokio::sync::Semaphore,
    audit: Audit,
    metrics: Metrics,
}

/// Password checks a node runs at once; more wait their turn.
const CONCURRENT_LOGINS: usize = 4;

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("enabled", &self.enabled())
            .finish()
    }
}

/// Failed logins free of delay per user and per address, then waits from 1 s doubling to 60 s.
const FREE_FAILURES: u32 = 3;

impl Gate {
    /// A gate with access control off until the records say otherwise, auditing to `audit`.
    pub fn new(audit: Audit) -> Arc<Self> {
        let metrics = Metrics {
            decisions: IntCounterVec::new(
                Opts::new(
                    "strata_auth_decisions_total",
                    "Access decisions with access control on, by interface and outcome",
                ),
                &["api", "outcome"],
            )
            .expect("valid metric"),
            logins: IntCounterVec::new(
                Opts::new(
                    "strata_auth_logins_total",
                    "Password logins, by interface and outcome (ok, refused, throttled)",
                ),
                &["api", "outcome"],
            )
            .expect("valid metric"),
        };
        Arc::new(Gate {
            view: RwLock::new(Arc::new(View::default())),
            held_closed: std::sync::atomic::AtomicBool::new(false),
            revision: tokio::sync::watch::Sender::new(0),
            throttle: Mutex::new(LoginThrottle::new(FREE_FAILURES, 1_000, 60_000)),
            verifying: tokio::sync::Semaphore::new(CONCURRENT_LOGINS),
            audit,
            metrics,
        })
    }

    /// A gate that is off and audits nothing, for tests and tools.
    pub fn off() -> Arc<Self> {
        Gate::new(Audit::off())
    }

    /// Registers the gate's metrics.
    pub fn register(&self, registry: &prometheus::Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.metrics.decisions.clone()))?;
        registry.register(Box::new(self.metrics.logins.clone()))
    }

    fn view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether access control is on.
    pub fn enabled(&self) -> bool {
        self.view().state.enabled || self.is_held_closed()
    }

    /// Keeps access control on whatever the records say (`true`), until released (`false`).
    /// A node that bootstraps root from a password holds itself closed until root is written,
    /// so nobody can claim the cluster first.
    pub fn hold_closed(&self, closed: bool) {
        self.held_closed
            .store(closed, std::sync::atomic::Ordering::SeqCst);
    }

    fn is_held_closed(&self) -> bool {
        self.held_closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A copy of the records (for the admin API's reads).
    pub fn state(&self) -> AuthState {
        self.view().state.clone()
    }

    /// The store revision the view reflects.
    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// Waits until the view reflects `revision` (a write the caller just made), up to
    /// `timeout`. Returns false on timeout.
    pub async fn wait_for(&self, revision: i64, timeout: Duration) -> bool {
        let mut rx = self.revision.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|seen| *seen >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The caller behind `token` (`None`: the request carried none) through `api` from `from`.
    /// With access control off every request is an open caller, whatever it carries.
    pub fn caller(
        &self,
        api: &'static str,
        token: Option<&str>,
        from: Option<String>,
    ) -> Result<Caller, ApiError> {
        self.resolve(api, token, from, true)
    }

    /// [`Gate::caller`] without counting or auditing a refusal (for a first try that may be
    /// repeated once this node has caught up).
    pub fn caller_quietly(
        &self,
        api: &'static str,
        token: Option<&str>,
        from: Option<String>,
    ) -> Result<Caller, ApiError> {
        self.resolve(api, token, from, false)
    }

    fn resolve(
        &self,
        api: &'static str,
        token: Option<&str>,
        from: Option<String>,
        record: bool,
    ) -> Result<Caller, ApiError> {
        let view = self.view();
        if !view.state.enabled && !self.is_held_closed() {
            return Ok(Caller::open(api, from));
        }
        let refused = |refusal: Refusal, from: Option<String>| {
            if !record {
                return unauthenticated(refusal);
            }
            self.metrics
                .decisions
                .with_label_values(&[api, "unauthenticated"])
                .inc();
            self.audit.record(Record {
                time: audit::now(),
                user: None,
                from,
                api,
                action: "authenticate".into(),
                resource: String::new(),
                allowed: false,
            });
            unauthenticated(refusal)
        };
        let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
            return Err(refused(Refusal::Missing, from));
        };
        if !secret::looks_like_token(token) {
            return Err(refused(Refusal::BadCredentials, from));
        }
        let digest = secret::token_digest(token);
        match by_digest(&view, api, digest, from.clone()) {
            Ok(caller) => Ok(caller),
            Err(refusal) => Err(refused(refusal, from)),
        }
    }

    /// Resolves `caller` again from the credential it came with, against the records as they
    /// are now: a stream opened long ago loses what its token, user or roles no longer grant
    /// (expired, revoked, deleted), and access control switched on since applies to it.
    pub fn recheck(&self, caller: &Caller) -> Result<Caller, ApiError> {
        let view = self.view();
        if !view.state.enabled && !self.is_held_closed() {
            return Ok(Caller::open(caller.api, caller.from.clone()));
        }
        let (api, from) = (caller.api, caller.from.clone());
        match &caller.credential {
            Credential::None if caller.grants.is_none() => Err(unauthenticated(Refusal::Missing)),
            Credential::None => Ok(Caller::anonymous(api, from)),
            Credential::Token(digest) => {
                by_digest(&view, api, digest.clone(), from).map_err(unauthenticated)
            }
            Credential::Certificate(user) => match view.users.get(user) {
                Some(grants) => Ok(Caller {
                    user: Some(user.clone()),
                    grants: Some(grants.clone()),
                    from,
                    api,
                    credential: caller.credential.clone(),
                }),
                None => Err(unauthenticated(Refusal::BadCredentials)),
            },
        }
    }

    /// Follows the auth records' revision: it moves whenever a user, role, token or the switch
    /// changes, which is when a long-lived stream should [`recheck`](Gate::recheck) its caller.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<i64> {
        self.revision.subscribe()
    }

    /// The caller behind a verified client certificate naming `user`: that user, if it
    /// exists (a certificate is a credential like a token, checked by the TLS handshake).
    pub fn caller_by_certificate(
        &self,
        api: &'static str,
        user: &str,
        from: Option<String>,
    ) -> Result<Caller, ApiError> {
        let view = self.view();
        if !view.state.enabled && !self.is_held_closed() {
            return Ok(Caller::open(api, from));
        }
        match view.users.get(user) {
            Some(grants) => Ok(Caller {
                user: Some(user.to_string()),
                grants: Some(grants.clone()),
                from,
                api,
                credential: Credential::Certificate(user.to_string()),
            }),
            None => {
                self.metrics
                    .decisions
                    .with_label_values(&[api, "unauthenticated"])
                    .inc();
                Err(ApiError::new(
                    ErrorCode::Unauthenticated,
                    "authentication failed: the client certificate names no user",
                ))
            }
        }
    }

    /// Allows `caller` to `action` (`wanted`: read or write) the names `names` of `kind`, or
    /// says why not. Writes, and every refusal, go to the audit log when access control is on.
    pub fn check(
        &self,
        caller: &Caller,
        kind: Kind,
        wanted: Access,
        names: &Names,
        action: &str,
    ) -> Result<(), ApiError> {
        let Some(grants) = &caller.grants else {
            return self.guard_reserved(kind, wanted, names);
        };
        let reserved = kind == Kind::Kv && kv::touches(names, ROOT.as_bytes());
        let allowed = grants.allows(kind, wanted, names) && (!reserved || grants.is_root());
        self.decide(caller, wanted, || resource(kind, names), action, allowed)
    }

    /// [`check`](Gate::check) for each of `needs` over KV keys.
    pub fn check_kv(
        &self,
        caller: &Caller,
        needs: &[kv::Need],
        action: &str,
    ) -> Result<(), ApiError> {
        for (access, names) in needs {
            self.check(caller, Kind::Kv, *access, names, action)?;
        }
        Ok(())
    }

    /// Allows `caller` `wanted` on every key attached to a lease: etcd's rule for revoking a
    /// lease (write: it deletes them) and for listing its keys (read).
    pub fn check_lease_keys(
        &self,
        caller: &Caller,
        keys: &[String],
        wanted: Access,
        action: &str,
    ) -> Result<(), ApiError> {
        let needs: Vec<kv::Need> = keys
            .iter()
            .map(|key| (wanted, Names::one(key.as_bytes().to_vec())))
            .collect();
        self.check_kv(caller, &needs, action)
    }

    /// Allows only root (or anyone, with access control off): cluster membership, compaction,
    /// and the auth records themselves.
    pub fn check_root(&self, caller: &Caller, action: &str) -> Result<(), ApiError> {
        if caller.grants.is_none() {
            return Ok(());
        }
        let allowed = caller.is_root();
        self.decide(caller, Access::Write, || "cluster".into(), action, allowed)
    }

    /// Allows any authenticated caller (leases, status): the request touches nothing a role
    /// grants.
    pub fn check_authenticated(&self, _caller: &Caller) -> Result<(), ApiError> {
        Ok(())
    }

    fn decide(
        &self,
        caller: &Caller,
        wanted: Access,
        resource: impl FnOnce() -> String,
        action: &str,
        allowed: bool,
    ) -> Result<(), ApiError> {
        let outcome = if allowed { "allowed" } else { "denied" };
        self.metrics
            .decisions
            .with_label_values(&[caller.api, outcome])
            .inc();
        if allowed && wanted == Access::Read {
            // A permitted read is neither audited nor explained: nothing to format.
            return Ok(());
        }
        let resource = resource();
        self.audit.record(Record {
            time: audit::now(),
            user: caller.user.clone(),
            from: caller.from.clone(),
            api: caller.api,
            action: action.to_string(),
            resource: resource.clone(),
            allowed,
        });
        if allowed {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::PermissionDenied,
                format!("{} may not {action} {resource}", caller.who()),
            ))
        }
    }

    /// With access control off nothing is checked, except that the auth records are changed
    /// only through the auth API: a KV write there could switch access control on with no
    /// root to turn it off.
    fn guard_reserved(&self, kind: Kind, wanted: Access, names: &Names) -> Result<(), ApiError> {
        if kind == Kind::Kv && wanted != Access::Read && kv::touches(names, ROOT.as_bytes()) {
            return Err(ApiError::new(
                ErrorCode::PermissionDenied,
                format!("keys under {ROOT} change only through the auth API (strata auth ...)"),
            ));
        }
        Ok(())
    }

    /// Checks a password login for `user` from `from` through `api`, throttled per user and
    /// per address. The hash is verified on a blocking thread (it takes tens of ms by design).
    pub async fn login(
        &self,
        api: &'static str,
        user: &str,
        password: &str,
        from: Option<&str>,
    ) -> Result<(), ApiError> {
        // Bounded verification: at most a few hashes at once, and the throttle is checked
        // again once it is this attempt's turn, so parallel guesses queue behind it.
        let _turn = self
            .verifying
            .acquire()
            .await
            .map_err(|_| ApiError::unavailable("the node is stopping"))?;
        let now = now_ms();
        let user_key = format!("user:{user}");
        let addr_key = format!("addr:{}", from.map(host_of).unwrap_or_default());
        let keys = [user_key.as_str(), addr_key.as_str()];
        let throttled = self
            .throttle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(&keys, now);
        let record = |allowed: bool| {
            self.audit.record(Record {
                time: audit::now(),
                user: Some(user.to_string()),
                from: from.map(str::to_string),
                api,
                action: "login".into(),
                resource: String::new(),
                allowed,
            })
        };
        if let Err(refusal) = throttled {
            self.metrics
                .logins
                .with_label_values(&[api, "throttled"])
                .inc();
            record(false);
            return Err(unauthenticated(refusal));
        }
        let view = self.view();
        let (name, password) = (user.to_string(), password.to_string());
        let outcome = tokio::task::spawn_blocking(move || view.state.login(&name, &password))
            .await
            .map_err(|e| ApiError::internal(format!("login check failed: {e}")))?;
        self.throttle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(&keys, outcome.is_ok(), now_ms());
        let label = if outcome.is_ok() { "ok" } else { "refused" };
        self.metrics.logins.with_label_values(&[api, label]).inc();
        record(outcome.is_ok());
        outcome.map(|_| ()).map_err(unauthenticated)
    }

    fn replace(&self, state: AuthState, revision: i64) {
        let was = self.enabled();
        let view = View::compile(state);
        if view.state.enabled != was {
            tracing::info!(
                enabled = view.state.enabled,
                revision,
                "access control switched"
            );
        }
        *self.view.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(view);
        self.revision.send_if_modified(|seen| {
            let moved = revision > *seen;
            *seen = (*seen).max(revision);
            moved
        });
    }
}

/// The caller a token (by its digest) stands for, in `view`.
fn by_digest(
    view: &View,
    api: &'static str,
    digest: String,
    from: Option<String>,
) -> Result<Caller, Refusal> {
    let Some(record) = view.state.tokens.get(&digest) else {
        return Err(Refusal::BadCredentials);
    };
    if record.expires_at_ms.is_some_and(|at| now_ms() >= at) {
        return Err(Refusal::Expired);
    }
    let (user, grants) = match &record.owner {
        Owner::User(name) => match view.users.get(name) {
            Some(grants) => (Some(name.clone()), grants.clone()),
            None => return Err(Refusal::BadCredentials),
        },
        Owner::Roles(roles) => (None, Arc::new(Grants::of(roles, &view.state.roles))),
    };
    Ok(Caller {
        user,
        grants: Some(grants),
        from,
        api,
        credential: Credential::Token(digest),
    })
}

/// The host part of `addr` (`IP:PORT`), so the throttle counts per client machine.
fn host_of(addr: &str) -> String {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(sock) => sock.ip().to_string(),
        Err(_) => addr.to_string(),
    }
}

fn resource(kind: Kind, names: &Names) -> String {
    let kind = match kind {
        Kind::Kv => "kv",
        Kind::Registry => "registry",
        Kind::Config => "config",
        Kind::Gateway => "gateway",
        Kind::Monitor => "monitor",
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    match &names.end {
        None => format!("{kind}:{}", text(&names.start)),
        Some(end) if end.is_empty() => format!("{kind}:{}..", text(&names.start)),
        Some(end) if *end == strata_proto::kv::prefix_end(&names.start) => {
            format!("{kind}:{}*", text(&names.start))
        }
        Some(end) => format!("{kind}:{}..{}", text(&names.start), text(end)),
    }
}

/// The API error for a refused credential.
pub fn unauthenticated(refusal: Refusal) -> ApiError {
    ApiError::new(ErrorCode::Unauthenticated, refusal.to_string())
}

impl strata_store::Follower for Gate {
    fn load(&self, kvs: &[KeyValue], revision: i64) {
        let (state, skipped) = AuthState::load(
            kvs.iter()
                .map(|kv| (kv.key.as_slice(), kv.value.as_slice())),
        );
        for why in skipped {
            tracing::warn!(reason = %why, "auth record skipped");
        }
        self.replace(state, revision);
    }

    fn apply(&self, events: &[Event]) {
        let Some(last) = events.last() else {
            return;
        };
        let mut state = self.state();
        for event in events {
            let value = match event.kind {
                EventType::Put => Some(event.kv.value.as_slice()),
                EventType::Delete => None,
            };
            if let Err(why) = state.apply(&event.kv.key, value) {
                tracing::warn!(reason = %why, "auth record skipped");
            }
        }
        self.replace(state, last.kv.mod_revision);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use strata_store::Follower;

    fn gate_on() -> Arc<Gate> {
        let gate = Gate::off();
        let on = KeyValue {
            key: crate::state::ENABLED_KEY.as_bytes().to_vec(),
            value: b"true".to_vec(),
            ..KeyValue::default()
        };
        gate.load(&[on], 1);
        gate
    }

    #[test]
    fn with_access_control_off_everyone_is_open_but_auth_records_stay_unwritable() {
        let gate = Gate::off();
        let caller = gate.caller("test", Some("garbage"), None).unwrap();
        assert!(!caller.enforced());
        let reserved = Names::one(format!("{ROOT}enabled"));
        assert!(gate
            .check(&caller, Kind::Kv, Access::Write, &reserved, "put")
            .is_err());
        assert!(gate
            .check(&caller, Kind::Kv, Access::Read, &reserved, "range")
            .is_ok());
    }

    proptest! {
        /// The `credentials` fuzz target's gate half, on stable: no text is a credential when
        /// no token exists, and a missing token is refused.
        #[test]
        fn garbage_never_authenticates(text in ".{0,100}") {
            let gate = gate_on();
            prop_assert!(gate.caller("test", Some(&text), None).is_err());
            prop_assert!(gate.caller("test", None, None).is_err());
        }
    }
}
