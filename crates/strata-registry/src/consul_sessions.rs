//! Consul sessions on leases: what a session is, every node's view of them, and the loops
//! that end them.
//!
//! A session is a record under `meta/session/ID` ([`crate::consul_store`]) attached to a
//! lease, so the store deletes it when the lease ends:
//! - with a `TTL`, a lease of its own of that TTL (rounded up to a second), renewed by
//!   `/v1/session/renew`. Consul invalidates a session at most twice its TTL after the last
//!   renewal; a lease ends one TTL after it, which is within that bound;
//! - without one, bound to its node's `serfHealth`: the lease of the node's liveness key
//!   (`meta/agent/NODE`), which that node renews every [`AGENT_KEEPALIVE`] while it serves
//!   the Consul API, so the session ends [`AGENT_TTL_SECS`] after its node stops;
//! - with neither (`"Checks": []` and no TTL), on no lease: it lives until destroyed.
//!
//! A session with a TTL *and* `serfHealth`, or bound to service checks, is also ended by
//! [`reap_invalidated`] when its node's liveness key is gone or one of its checks is
//! critical or deregistered.
//!
//! When a session ends, the keys it locked are cleaned up by [`ConsulKv::invalidate`]: the
//! node that destroys it does so at once; for a session whose lease lapsed, the raft leader's
//! reaper does (or, if the leader serves no Consul API, any node's after [`REAPER_GRACE`]),
//! each write conditioned on the session still being gone and the keys unchanged, so racing
//! reapers do the work once.

use crate::consul_store::{
    absent, agent_key, delete, mod_is, node_name, put, session_key, ConsulKv, META_PREFIX,
};
use crate::consul_txn::{Behavior, LockTerms};
use crate::model::DEFAULT_NAMESPACE;
use crate::probe::Health;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use strata_proto::error::{ApiError, ErrorCode};
use strata_proto::kv::{
    Event, EventType, KeyValue, RangeRequest, RequestOp, ResponseOp, TxnRequest,
};
use strata_store::{AppliedRevision, Follower};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// The node health check every session is bound to unless it names its checks.
pub const SERF_CHECK: &str = "serfHealth";
/// TTL of a node's liveness key, which sessions bound to its `serfHealth` share.
pub const AGENT_TTL_SECS: i64 = 10;
/// How often a node renews its liveness key.
pub const AGENT_KEEPALIVE: Duration = Duration::from_secs(2);
/// Shortest and longest session TTL Consul accepts.
pub const TTL_BOUNDS: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(86_400));
/// How long a node other than the leader waits before it cleans up after a lapsed session.
pub const REAPER_GRACE: Duration = Duration::from_secs(3);
/// How often the reaper looks for lapsed sessions even when nothing changed in the view.
const REAPER_TICK: Duration = Duration::from_secs(1);
/// Consul's default lock delay.
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);

/// A service check a session is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCheck {
    /// The check's id (`service:INSTANCE`).
    pub id: String,
    /// The namespace (Consul Enterprise); kept as given.
    #[serde(default)]
    pub namespace: String,
}

/// A session as stored (JSON under `meta/session/ID`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The session's UUID.
    pub id: String,
    /// Its human-readable name.
    #[serde(default)]
    pub name: String,
    /// The node it belongs to (`strata-ID`).
    pub node: String,
    /// Node checks it is bound to (only `serfHealth` exists here).
    #[serde(default)]
    pub node_checks: Vec<String>,
    /// Service checks it is bound to.
    #[serde(default)]
    pub service_checks: Vec<ServiceCheck>,
    /// Lock delay in nanoseconds, as Consul shows it.
    pub lock_delay_ns: u64,
    /// What happens to its locks when it ends.
    pub behavior: Behavior,
    /// Its TTL as given ("" for none).
    #[serde(default)]
    pub ttl: String,
}

impl Session {
    /// What a lock taken by this session carries: its behavior and lock delay (at most
    /// Consul's 60 s, rounded up to a millisecond).
    pub fn terms(&self) -> LockTerms {
        let ms = self.lock_delay_ns.div_ceil(1_000_000);
        LockTerms {
            behavior: self.behavior,
            lock_delay_ms: ms.min(crate::consul_store::MAX_LOCK_DELAY.as_millis() as u64),
        }
    }

    /// True when bound to its node's `serfHealth`.
    pub fn on_node_health(&self) -> bool {
        self.node_checks.iter().any(|c| c == SERF_CHECK)
    }
}

/// Decodes a stored session record.
pub fn decode_session(bytes: &[u8]) -> Result<Session, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::internal(format!("a stored Consul session is undecodable: {e}")))
}

/// A session with its store metadata.
#[derive(Debug, Clone)]
pub struct StoredSession {
    /// The record.
    pub session: Arc<Session>,
    /// Consul's `CreateIndex`.
    pub create_index: i64,
    /// Consul's `ModifyIndex`.
    pub modify_index: i64,
    /// The lease it hangs on (0: none).
    pub lease: i64,
}

/// The session stored at `kv`, with its metadata.
fn stored_session(kv: &KeyValue) -> Result<StoredSession, ApiError> {
    Ok(StoredSession {
        session: Arc::new(decode_session(&kv.value)?),
        create_index: kv.create_revision,
        modify_index: kv.mod_revision,
        lease: kv.lease,
    })
}

/// A key of the followed prefix.
enum MetaKey {
    Session(String),
    Held { session: String, key: String },
    Agent(u64),
}

fn parse_meta_key(key: &[u8]) -> Option<MetaKey> {
    let rest = std::str::from_utf8(key.strip_prefix(META_PREFIX.as_bytes())?).ok()?;
    if let Some(id) = rest.strip_prefix("session/") {
        return Some(MetaKey::Session(id.to_string()));
    }
    if let Some(held) = rest.strip_prefix("held/") {
        let (session, key) = held.split_once('/')?;
        return Some(MetaKey::Held {
            session: session.to_string(),
            key: key.to_string(),
        });
    }
    if let Some(node) = rest.strip_prefix("agent/") {
        return node.parse().ok().map(MetaKey::Agent);
    }
    None
}

#[derive(Default)]
struct State {
    revision: i64,
    /// Consul's sessions-table index: the revision of the last change to a session.
    index: i64,
    sessions: BTreeMap<String, StoredSession>,
    /// Session id -> keys it holds.
    held: BTreeMap<String, BTreeMap<String, Option<LockTerms>>>,
    /// Node id -> the lease of its liveness key.
    agents: BTreeMap<u64, i64>,
    /// Sessions that hold keys but no longer exist (kept as they change, so the reaper reads
    /// them without walking every holder).
    orphans: BTreeSet<String>,
    /// Node id -> the sessions bound to its `serfHealth`: looked at again when the node's
    /// liveness key goes.
    by_node: BTreeMap<u64, BTreeSet<String>>,
    /// Sessions bound to service checks, whose health lives in the registry's view (not
    /// followed here): looked at on every pass.
    on_service_checks: BTreeSet<String>,
    /// Sessions whose checks may have failed since the reaper last looked.
    to_check: BTreeSet<String>,
}

/// The node id of a session's `node` (`strata-ID`), when it names one.
fn session_node(session: &Session) -> Option<u64> {
    session.node.strip_prefix("strata-")?.parse().ok()
}

impl State {
    /// Notes session `id`'s bindings (`stored`: its new record; `None`: it was deleted).
    fn bind(&mut self, id: &str, stored: Option<&StoredSession>) {
        if let Some(old) = self.sessions.get(id) {
            if let Some(node) = session_node(&old.session) {
                if let Some(ids) = self.by_node.get_mut(&node) {
                    ids.remove(id);
                    if ids.is_empty() {
                        self.by_node.remove(&node);
                    }
                }
            }
        }
        self.on_service_checks.remove(id);
        self.to_check.remove(id);
        let Some(stored) = stored else {
            if self.held.contains_key(id) {
                self.orphans.insert(id.to_string());
            }
            return;
        };
        self.orphans.remove(id);
        let session = &stored.session;
        if session.on_node_health() {
            if let Some(node) = session_node(session) {
                self.by_node.entry(node).or_default().insert(id.to_string());
            }
        }
        if !session.service_checks.is_empty() {
            self.on_service_checks.insert(id.to_string());
        }
        if session.on_node_health() || !session.service_checks.is_empty() {
            self.to_check.insert(id.to_string());
        }
    }
}

/// Every node's view of sessions, held locks and node liveness keys, kept current by
/// [`strata_store::follow`] on [`META_PREFIX`].
pub struct SessionView {
    state: RwLock<State>,
    applied: AppliedRevision,
    /// The sessions index, for blocking session queries.
    index: watch::Sender<i64>,
    /// Woken on every change, for the reaper.
    changed: Notify,
}

impl Default for SessionView {
    fn default() -> Self {
        SessionView::new()
    }
}

impl SessionView {
    /// An empty view, not yet loaded.
    pub fn new() -> Self {
        SessionView {
            state: RwLock::new(State::default()),
            applied: AppliedRevision::new(),
            index: watch::channel(0).0,
            changed: Notify::new(),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the view has applied `revision` (or `timeout` passes); true if it has.
    pub async fn wait_for(&self, revision: i64, timeout: Duration) -> bool {
        self.applied.wait_for(revision, timeout).await
    }

    /// Consul's sessions index: the revision of the last change to any session (at least 1).
    pub fn index(&self) -> i64 {
        self.read().index.max(1)
    }

    /// Waits, at most `wait`, until the sessions index passes `index`.
    ///
    /// Cancel safety: cancel-safe; it only reads a channel.
    pub async fn wait_index(&self, index: i64, wait: Duration) {
        let mut rx = self.index.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|now| *now > index)).await;
    }

    /// One session.
    pub fn session(&self, id: &str) -> Option<StoredSession> {
        self.read().sessions.get(id).cloned()
    }

    /// Every session, by id.
    pub fn list(&self) -> Vec<StoredSession> {
        self.read().sessions.values().cloned().collect()
    }

    /// How many sessions live.
    pub fn count(&self) -> usize {
        self.read().sessions.len()
    }

    /// The lease of node `node_id`'s liveness key, if it has one.
    pub fn agent(&self, node_id: u64) -> Option<i64> {
        self.read().agents.get(&node_id).copied()
    }

    /// Sessions that hold locks but no longer exist: their keys await clean-up.
    pub fn orphans(&self) -> Vec<String> {
        self.read().orphans.iter().cloned().collect()
    }

    /// The sessions whose checks the reaper must look at now: those put or whose node's
    /// liveness key went since the last call (taken), every one bound to service checks, and
    /// those of `also` that still exist.
    fn to_check<'a>(&self, also: impl Iterator<Item = &'a String>) -> Vec<StoredSession> {
        let mut state = self.write();
        let mut ids = std::mem::take(&mut state.to_check);
        ids.extend(state.on_service_checks.iter().cloned());
        ids.extend(also.cloned());
        ids.iter()
            .filter_map(|id| state.sessions.get(id).cloned())
            .collect()
    }

    fn bump(&self, state: &State) {
        self.index.send_replace(state.index.max(1));
        self.changed.notify_waiters();
    }
}

fn apply_put(state: &mut State, kv: &KeyValue) -> bool {
    match parse_meta_key(&kv.key) {
        Some(MetaKey::Session(id)) => match stored_session(kv) {
            Ok(stored) => {
                state.bind(&id, Some(&stored));
                state.sessions.insert(id, stored);
                true
            }
            Err(e) => {
                tracing::warn!(session = id, error = %e, "skipping an undecodable Consul session");
                false
            }
        },
        Some(MetaKey::Held { session, key }) => {
            let terms = serde_json::from_slice(&kv.value).unwrap_or(None);
            if !state.sessions.contains_key(&session) {
                state.orphans.insert(session.clone());
            }
            state.held.entry(session).or_default().insert(key, terms);
            false
        }
        Some(MetaKey::Agent(node)) => {
            state.agents.insert(node, kv.lease);
            false
        }
        None => false,
    }
}

fn apply_delete(state: &mut State, key: &[u8]) -> bool {
    match parse_meta_key(key) {
        Some(MetaKey::Session(id)) => {
            state.bind(&id, None);
            state.sessions.remove(&id).is_some()
        }
        Some(MetaKey::Held { session, key }) => {
            if let Some(keys) = state.held.get_mut(&session) {
                keys.remove(&key);
                if keys.is_empty() {
                    state.held.remove(&session);
                    state.orphans.remove(&session);
                }
            }
            false
        }
        Some(MetaKey::Agent(node)) => {
            state.agents.remove(&node);
            if let Some(ids) = state.by_node.get(&node) {
                state.to_check.extend(ids.iter().cloned());
            }
            false
        }
        None => false,
    }
}

impl Follower for SessionView {
    fn load(&self, kvs: &[KeyValue], revision: i64) {
        let mut fresh = State {
            revision,
            index: revision,
            ..State::default()
        };
        for kv in kvs {
            apply_put(&mut fresh, kv);
        }
        {
            let mut state = self.write();
            *state = fresh;
            self.bump(&state);
        }
        self.applied.loaded(revision);
    }

    fn apply(&self, events: &[Event]) {
        let Some(last) = events.last() else { return };
        let revision = last.kv.mod_revision;
        {
            let mut state = self.write();
            let mut sessions_changed = false;
            for event in events {
                let changed = match event.kind {
                    EventType::Put => apply_put(&mut state, &event.kv),
                    EventType::Delete => apply_delete(&mut state, &event.kv.key),
                };
                if changed {
                    sessions_changed = true;
                    state.index = state.index.max(event.kv.mod_revision);
                }
            }
            state.revision = state.revision.max(revision);
            if sessions_changed {
                self.bump(&state);
            } else {
                self.changed.notify_waiters();
            }
        }
        self.applied.advance(revision);
    }
}

/// A session create request, parsed.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// `Name`.
    pub name: String,
    /// `Node`; this node when `None`.
    pub node: Option<String>,
    /// `NodeChecks` (or the node checks of the older `Checks`); `None`: Consul's default,
    /// `serfHealth`.
    pub node_checks: Option<Vec<String>>,
    /// `ServiceChecks` (and the `service:` ids of `Checks`).
    pub service_checks: Vec<ServiceCheck>,
    /// `LockDelay`.
    pub lock_delay: Duration,
    /// `Behavior`.
    pub behavior: Behavior,
    /// `TTL` as given, and parsed.
    pub ttl: Option<(String, Duration)>,
}

impl Default for NewSession {
    fn default() -> Self {
        NewSession {
            name: String::new(),
            node: None,
            node_checks: None,
            service_checks: Vec::new(),
            lock_delay: DEFAULT_LOCK_DELAY,
            behavior: Behavior::Release,
            ttl: None,
        }
    }
}

/// A session id: 128 random bits written as a UUID, as Consul's are.
fn new_session_id() -> String {
    let bits: u128 = rand::random();
    crate::consul_acl::uuid(&format!("{bits:032x}"))
}

/// How long a write waits for this node's view to show it before answering anyway.
const VIEW_CATCH_UP: Duration = Duration::from_secs(5);

impl ConsulKv {
    /// The id of the member Consul calls `node` (`strata-ID`), if it is one.
    pub fn member_id(&self, node: &str) -> Option<u64> {
        let id: u64 = node.strip_prefix("strata-")?.parse().ok()?;
        self.store
            .status()
            .members
            .iter()
            .any(|m| m.id == id)
            .then_some(id)
    }

    /// The health of service check `id` (`service:INSTANCE` or `INSTANCE`), `None` when no
    /// such instance is registered.
    fn service_check_health(&self, id: &str) -> Option<Health> {
        let instance = id.strip_prefix("service:").unwrap_or(id);
        let found = self.registry.view.find_by_id(DEFAULT_NAMESPACE, instance);
        if found.is_empty() {
            return None;
        }
        let critical = found.iter().any(|s| s.instance.status == Health::Critical);
        Some(if critical {
            Health::Critical
        } else {
            Health::Passing
        })
    }

    /// The lease of node `node_id`'s liveness key, created when the node has none.
    async fn agent_lease(&self, node_id: u64) -> Result<i64, ApiError> {
        if let Some(lease) = self.sessions.agent(node_id) {
            return Ok(lease);
        }
        let lease = strata_store::grant(&*self.store, AGENT_TTL_SECS).await?;
        let response = self
            .store
            .txn(TxnRequest {
                compare: vec![absent(agent_key(node_id))],
                success: vec![put(
                    agent_key(node_id),
                    node_name(node_id).into_bytes(),
                    lease,
                )],
                failure: vec![RequestOp::Range(RangeRequest {
                    key: agent_key(node_id),
                    ..RangeRequest::default()
                })],
            })
            .await?;
        if response.succeeded {
            info!(node = node_id, lease, "Consul node liveness key created");
            return Ok(lease);
        }
        self.revoke_later(lease);
        response
            .responses
            .iter()
            .find_map(|op| match op {
                ResponseOp::Range(range) => range.kvs.first().map(|kv| kv.lease),
                _ => None,
            })
            .ok_or_else(|| ApiError::unavailable("node liveness key changed; retry"))
    }

    /// Revokes a lease nobody uses, in the background (bounded: at shutdown it may expire
    /// instead).
    pub(crate) fn revoke_later(&self, lease: i64) {
        let store = self.store.clone();
        self.tracker.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), store.lease_revoke(lease)).await;
        });
    }

    /// Creates a session and returns its id. Errors are [`ErrorCode::BadRequest`] when the
    /// request names a node, check or TTL Consul would refuse.
    pub async fn create_session(&self, request: NewSession) -> Result<String, ApiError> {
        self.metrics
            .session_ops
            .with_label_values(&["create"])
            .inc();
        let node = request.node.clone().unwrap_or_else(|| self.node_name());
        let node_id = self.member_id(&node).ok_or_else(|| {
            ApiError::bad_request(format!(
                "missing node registration: no node {node:?} in the cluster (nodes are named strata-ID)"
            ))
        })?;
        let node_checks = request
            .node_checks
            .clone()
            .unwrap_or_else(|| vec![SERF_CHECK.to_string()]);
        for check in &node_checks {
            if check != SERF_CHECK {
                return Err(ApiError::bad_request(format!(
                    "missing check {check:?} registration: the only node check is {SERF_CHECK:?}"
                )));
            }
        }
        for check in &request.service_checks {
            match self.service_check_health(&check.id) {
                None => {
                    return Err(ApiError::bad_request(format!(
                        "missing check {:?} registration",
                        check.id
                    )))
                }
                Some(Health::Critical) => {
                    return Err(ApiError::bad_request(format!(
                        "check {:?} is in critical state",
                        check.id
                    )))
                }
                Some(_) => {}
            }
        }
        if let Some((text, ttl)) = &request.ttl {
            if !ttl.is_zero() && (*ttl < TTL_BOUNDS.0 || *ttl > TTL_BOUNDS.1) {
                return Err(ApiError::bad_request(format!(
                    "invalid session TTL {text:?}: it must be between 10s and 86400s"
                )));
            }
        }
        let ttl = request.ttl.clone().filter(|(_, ttl)| !ttl.is_zero());
        let session = Session {
            id: new_session_id(),
            name: request.name.clone(),
            node,
            node_checks,
            service_checks: request.service_checks.clone(),
            lock_delay_ns: u64::try_from(request.lock_delay.as_nanos()).unwrap_or(u64::MAX),
            behavior: request.behavior,
            ttl: ttl
                .as_ref()
                .map(|(text, _)| text.clone())
                .unwrap_or_default(),
        };
        let value = serde_json::to_vec(&session)
            .map_err(|e| ApiError::internal(format!("encode session: {e}")))?;
        // A node's liveness lease may lapse between being looked up and used: then the put
        // fails (no such lease) and it is looked up, or made, again.
        let mut last_error = None;
        for _ in 0..3 {
            let lease = match &ttl {
                Some((_, ttl)) => {
                    strata_store::grant(&*self.store, crate::model::lease_seconds(*ttl)).await?
                }
                None if session.on_node_health() => self.agent_lease(node_id).await?,
                None => 0,
            };
            if ttl.is_some() && session.on_node_health() {
                // Bound to both: the reaper ends it when the node's liveness key goes.
                self.agent_lease(node_id).await?;
            }
            let written = self
                .store
                .txn(TxnRequest {
                    compare: vec![absent(session_key(&session.id))],
                    success: vec![put(session_key(&session.id), value.clone(), lease)],
                    failure: vec![],
                })
                .await;
            match written {
                Ok(response) if response.succeeded => {
                    let revision = response.header.revision;
                    if !self.sessions.wait_for(revision, VIEW_CATCH_UP).await {
                        debug!(revision, "Consul session view is slow to catch up");
                    }
                    info!(
                        session = session.id.as_str(),
                        node = session.node.as_str(),
                        ttl = session.ttl.as_str(),
                        behavior = session.behavior.name(),
                        lease,
                        "Consul session created"
                    );
                    return Ok(session.id);
                }
                Ok(_) => return Err(ApiError::internal("session id collision; retry")),
                Err(e) if e.code == ErrorCode::NotFound && ttl.is_none() => {
                    debug!(error = %e, "the node's liveness lease lapsed; making another");
                    last_error = Some(e);
                }
                Err(e) => {
                    if ttl.is_some() {
                        self.revoke_later(lease);
                    }
                    return Err(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| ApiError::unavailable("could not create the session")))
    }

    /// Reads session `id` from the store (linearizably): the record and its metadata.
    pub async fn read_session(&self, id: &str) -> Result<Option<StoredSession>, ApiError> {
        let response = self
            .store
            .range(RangeRequest {
                key: session_key(id),
                ..RangeRequest::default()
            })
            .await?;
        response.kvs.first().map(stored_session).transpose()
    }

    /// Reads every session from the store (linearizably), with Consul's sessions index: the
    /// later of the newest session's revision and the last change this node's view saw
    /// (which counts deletions too).
    pub async fn read_sessions(&self) -> Result<(Vec<StoredSession>, i64), ApiError> {
        let response = self
            .store
            .range(RangeRequest {
                key: format!("{META_PREFIX}session/").into_bytes(),
                prefix: true,
                ..RangeRequest::default()
            })
            .await?;
        let mut sessions = Vec::with_capacity(response.kvs.len());
        let mut index = self.sessions.index();
        for kv in &response.kvs {
            index = index.max(kv.mod_revision);
            sessions.push(stored_session(kv)?);
        }
        Ok((sessions, index))
    }

    /// Ends session `id` and cleans up its locks. Ending one that does not exist succeeds.
    pub async fn destroy_session(&self, id: &str, cause: &'static str) -> Result<(), ApiError> {
        let Some(stored) = self.read_session(id).await? else {
            // Its locks may still await clean-up (a lapsed session): do it now.
            self.invalidate(id, cause).await?;
            return Ok(());
        };
        if !stored.session.ttl.is_empty() && stored.lease != 0 {
            match self.store.lease_revoke(stored.lease).await {
                Ok(_) => {}
                Err(e) if e.code == ErrorCode::NotFound => {}
                Err(e) => return Err(e),
            }
        } else {
            self.store
                .txn(TxnRequest {
                    compare: vec![mod_is(session_key(id), stored.modify_index)],
                    success: vec![delete(session_key(id))],
                    failure: vec![],
                })
                .await?;
        }
        let keys = self.invalidate(id, cause).await?;
        info!(session = id, keys, cause, "Consul session ended");
        Ok(())
    }

    /// Renews session `id`; `None` when there is no such session (any more).
    pub async fn renew_session(&self, id: &str) -> Result<Option<StoredSession>, ApiError> {
        let stored = match self.sessions.session(id) {
            Some(stored) => stored,
            None => match self.read_session(id).await? {
                Some(stored) => stored,
                None => return Ok(None),
            },
        };
        if stored.session.ttl.is_empty() || stored.lease == 0 {
            return Ok(Some(stored));
        }
        match self.store.lease_keepalive(stored.lease).await {
            Ok(_) => Ok(Some(stored)),
            Err(e) if e.code == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Why live session `stored` must end now, if it must: its node's liveness key is gone
    /// (a session with a TTL and `serfHealth`), or a service check it is bound to is critical
    /// or deregistered.
    fn lapsed_checks(&self, stored: &StoredSession) -> Option<String> {
        let session = &stored.session;
        if session.on_node_health() {
            let node = session
                .node
                .strip_prefix("strata-")
                .and_then(|n| n.parse().ok());
            let node_alive = node.is_some_and(|n| self.sessions.agent(n).is_some());
            if !node_alive {
                return Some(format!("node {} is gone", session.node));
            }
        }
        for check in &session.service_checks {
            match self.service_check_health(&check.id) {
                None => return Some(format!("check {} was deregistered", check.id)),
                Some(Health::Critical) => return Some(format!("check {} is critical", check.id)),
                Some(_) => {}
            }
        }
        None
    }
}

/// Ends sessions whose lease lapsed or whose checks failed, and cleans up after them, until
/// `cancel`. The raft leader acts at once; other nodes after [`REAPER_GRACE`] (the leader
/// may serve no Consul API).
pub async fn reap_invalidated(kv: Arc<ConsulKv>, cancel: CancellationToken) {
    let me = kv.store.node_id();
    let mut first_seen: HashMap<String, Instant> = HashMap::new();
    loop {
        let changed = kv.sessions.changed.notified();
        kv.metrics.sessions.set(kv.sessions.count() as i64);
        let leader = kv.store.status().leader == Some(me);
        let now = Instant::now();
        let mut due = Vec::new();
        let mut seen_now = HashMap::new();
        for id in kv.sessions.orphans() {
            let since = first_seen.get(&id).copied().unwrap_or(now);
            if leader || now.duration_since(since) >= REAPER_GRACE {
                due.push((id.clone(), None));
            }
            seen_now.insert(id, since);
        }
        // Only the sessions whose checks may have failed: new ones, those of a node whose
        // liveness key went, those bound to service checks, and those found failed before
        // (still waiting out the grace, or whose clean-up failed).
        for stored in kv.sessions.to_check(first_seen.keys()) {
            let Some(reason) = kv.lapsed_checks(&stored) else {
                continue;
            };
            let id = stored.session.id.clone();
            let since = first_seen.get(&id).copied().unwrap_or(now);
            if leader || now.duration_since(since) >= REAPER_GRACE {
                due.push((id.clone(), Some(reason)));
            }
            seen_now.insert(id, since);
        }
        first_seen = seen_now;
        for (id, reason) in due {
            let result = match &reason {
                None => kv.invalidate(&id, "lapsed").await.map(|_| ()),
                Some(reason) => {
                    info!(
                        session = id.as_str(),
                        reason = reason.as_str(),
                        "ending a Consul session bound to a failed check"
                    );
                    kv.destroy_session(&id, "lapsed").await
                }
            };
            if let Err(e) = result {
                debug!(session = id.as_str(), error = %e, "cleaning up after a Consul session failed; will retry");
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = changed => {}
            () = tokio::time::sleep(REAPER_TICK) => {}
        }
    }
}

/// Renews this node's liveness key, when it has one, until `cancel`. The key is made by the
/// first session bound to this node's `serfHealth`; it is left to expire at shutdown, so a
/// node restarted within [`AGENT_TTL_SECS`] keeps its sessions.
pub async fn keep_agent_alive(kv: Arc<ConsulKv>, cancel: CancellationToken) {
    let me = kv.store.node_id();
    loop {
        if let Some(lease) = kv.sessions.agent(me) {
            match kv.store.lease_keepalive(lease).await {
                Ok(_) => {}
                Err(e) if e.code == ErrorCode::NotFound => {
                    info!(lease, "this node's Consul liveness key lapsed");
                }
                Err(e) => debug!(lease, error = %e, "renewing the Consul liveness key failed"),
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(AGENT_KEEPALIVE) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn session(id: &str) -> Session {
        Session {
            id: id.into(),
            name: String::new(),
            node: "strata-1".into(),
            node_checks: vec![SERF_CHECK.into()],
            service_checks: vec![],
            lock_delay_ns: 1_000_000,
            behavior: Behavior::Release,
            ttl: String::new(),
        }
    }

    fn kv(key: Vec<u8>, value: Vec<u8>, revision: i64) -> KeyValue {
        KeyValue {
            key,
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            value,
            lease: 0,
        }
    }

    #[test]
    fn session_ids_look_like_uuids() {
        let id = new_session_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
        assert_ne!(id, new_session_id());
    }

    #[test]
    fn lock_terms_cap_the_delay_at_a_minute() {
        let mut s = session("a");
        assert_eq!(s.terms().lock_delay_ms, 1);
        s.lock_delay_ns = 3_600_000_000_000;
        assert_eq!(s.terms().lock_delay_ms, 60_000);
    }

    #[test]
    fn the_view_finds_sessions_whose_locks_await_clean_up() {
        let view = SessionView::new();
        let held = crate::consul_store::held_key("a", "k");
        let terms = serde_json::to_vec(&Some(session("a").terms())).unwrap();
        view.load(
            &[
                kv(
                    session_key("a"),
                    serde_json::to_vec(&session("a")).unwrap(),
                    3,
                ),
                kv(held.clone(), terms, 4),
            ],
            4,
        );
        assert!(view.orphans().is_empty());
        assert_eq!(view.index(), 4);
        view.apply(&[Event {
            kind: EventType::Delete,
            kv: kv(session_key("a"), Vec::new(), 5),
            prev_kv: None,
        }]);
        assert_eq!(view.orphans(), vec!["a".to_string()]);
        assert_eq!(view.index(), 5);
        view.apply(&[Event {
            kind: EventType::Delete,
            kv: kv(held, Vec::new(), 6),
            prev_kv: None,
        }]);
        assert!(view.orphans().is_empty());
        assert_eq!(view.index(), 5, "held locks are not sessions");
    }

    fn ids(sessions: Vec<StoredSession>) -> Vec<String> {
        sessions.into_iter().map(|s| s.session.id.clone()).collect()
    }

    fn put(key: Vec<u8>, value: Vec<u8>, revision: i64) -> Event {
        Event {
            kind: EventType::Put,
            kv: kv(key, value, revision),
            prev_kv: None,
        }
    }

    #[test]
    fn the_reaper_is_told_only_the_sessions_whose_checks_may_have_failed() {
        let on_node = session("node-bound");
        let mut on_check = session("check-bound");
        on_check.node_checks.clear();
        on_check.service_checks.push(ServiceCheck {
            id: "service:web-1".into(),
            namespace: String::new(),
        });
        let mut free = session("free");
        free.node_checks.clear();
        let mut elsewhere = session("other-node");
        elsewhere.node = "strata-2".into();
        let record = |s: &Session| serde_json::to_vec(s).unwrap();
        let view = SessionView::new();
        view.load(
            &[
                kv(agent_key(1), Vec::new(), 1),
                kv(agent_key(2), Vec::new(), 1),
                kv(session_key("node-bound"), record(&on_node), 2),
                kv(session_key("check-bound"), record(&on_check), 3),
                kv(session_key("free"), record(&free), 4),
                kv(session_key("other-node"), record(&elsewhere), 5),
            ],
            5,
        );
        let none: [String; 0] = [];
        // After a load, every session bound to a check; then only those on service checks
        // (their health is not in this view), and what the caller asks for again.
        assert_eq!(
            ids(view.to_check(none.iter())),
            ["check-bound", "node-bound", "other-node"]
        );
        assert_eq!(ids(view.to_check(none.iter())), ["check-bound"]);
        let again = ["node-bound".to_string(), "gone".to_string()];
        assert_eq!(
            ids(view.to_check(again.iter())),
            ["check-bound", "node-bound"]
        );
        // A node's liveness key going brings back its sessions, and only them.
        view.apply(&[Event {
            kind: EventType::Delete,
            kv: kv(agent_key(1), Vec::new(), 6),
            prev_kv: None,
        }]);
        assert_eq!(
            ids(view.to_check(none.iter())),
            ["check-bound", "node-bound"]
        );
        // A new or changed session is looked at once; a deleted one no more.
        let mut late = session("late");
        late.node = "strata-2".into();
        view.apply(&[put(session_key("late"), record(&late), 7)]);
        view.apply(&[Event {
            kind: EventType::Delete,
            kv: kv(session_key("check-bound"), Vec::new(), 8),
            prev_kv: None,
        }]);
        assert_eq!(ids(view.to_check(none.iter())), ["late"]);
        assert!(view.to_check(none.iter()).is_empty());
    }

    #[test]
    fn orphans_are_kept_as_holders_and_sessions_change() {
        let view = SessionView::new();
        let terms = serde_json::to_vec(&Some(session("a").terms())).unwrap();
        let record = serde_json::to_vec(&session("a")).unwrap();
        // A held key whose session is not (yet) there: an orphan until the session comes.
        view.apply(&[put(
            crate::consul_store::held_key("a", "k1"),
            terms.clone(),
            1,
        )]);
        assert_eq!(view.orphans(), ["a"]);
        view.apply(&[put(session_key("a"), record, 2)]);
        assert!(view.orphans().is_empty());
        view.apply(&[put(crate::consul_store::held_key("a", "k2"), terms, 3)]);
        view.apply(&[Event {
            kind: EventType::Delete,
            kv: kv(session_key("a"), Vec::new(), 4),
            prev_kv: None,
        }]);
        assert_eq!(view.orphans(), ["a"]);
        // Still an orphan while it holds any key.
        for (key, revision) in [("k1", 5), ("k2", 6)] {
            assert_eq!(view.orphans(), ["a"]);
            view.apply(&[Event {
                kind: EventType::Delete,
                kv: kv(
                    crate::consul_store::held_key("a", key),
                    Vec::new(),
                    revision,
                ),
                prev_kv: None,
            }]);
        }
        assert!(view.orphans().is_empty());
    }
}
