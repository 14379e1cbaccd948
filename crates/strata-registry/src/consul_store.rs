//! Consul's KV store on the replicated store: where entries, sessions and locks live, how a
//! Consul transaction becomes one compare-and-set transaction of the store, and how blocking
//! queries wait.
//!
//! # Key layout
//! Everything is under [`ROOT`]:
//! - `kv/KEY`: an entry (flags, `LockIndex`, holder session, value; [`encode_entry`]). Its
//!   create and mod revisions are Consul's `CreateIndex` and `ModifyIndex`.
//! - `meta/session/ID`: a session record, attached to the session's lease (see
//!   [`crate::consul_sessions`]).
//! - `meta/held/ID/KEY`: "session ID holds KEY's lock", with what to do to KEY when the session
//!   is invalidated; written in the same transaction as the lock, so the entries a dead
//!   session held are found without scanning the store.
//! - `meta/agent/NODE`: a node's liveness key, on the lease that sessions bound to the node's
//!   `serfHealth` hang on.
//! - `delay/KEY`: the lock-delay deadline of a key whose holder was invalidated, on a lease
//!   that outlives the delay.
//!
//! Every node follows `meta/` ([`crate::consul_sessions::SessionView`]); entries are read from
//! the store when asked for, so the KV space may be large.
//!
//! # Writes
//! [`ConsulKv::transact`] reads what the operations touch at one revision, runs them with
//! [`consul_txn::run`], and writes the resulting entries in one store transaction whose
//! compares say that nothing read has changed: each key's mod revision is what was read (0
//! for an absent one), no key of a tree read was written after the read, each session locked
//! for is the one read. A lost race reads and runs again. Consul's indexes are store
//! revisions, so `X-Consul-Index`, `CreateIndex` and `ModifyIndex` all speak one clock.

use crate::consul_sessions::{self, SessionView};
use crate::consul_txn::{self, Entry, LockTerms, Op, Outcome, ReadPlan, Reads, PENDING};
use crate::metrics::ConsulKvMetrics;
use crate::registry::Registry;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use strata_proto::error::{ApiError, ErrorCode};
use strata_proto::kv::{
    prefix_end, Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue, PutRequest,
    RangeRequest, RequestOp, ResponseOp, TxnRequest, TxnResponse, WatchRequest,
};
use strata_store::KvApi;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// Root of everything Consul's KV API keeps in the store.
pub const ROOT: &str = "/strata/consul/";
/// Prefix of the entries.
pub const KV_PREFIX: &str = "/strata/consul/kv/";
/// Prefix of sessions, held locks and node liveness keys: what every node follows.
pub const META_PREFIX: &str = "/strata/consul/meta/";
/// Prefix of lock-delay deadlines.
pub const DELAY_PREFIX: &str = "/strata/consul/delay/";

/// Largest value Consul accepts (its `kv_max_value_size` default, 512 KiB).
pub const MAX_VALUE_BYTES: usize = 512 * 1024;
/// Longest lock delay Consul applies, however long the session's is.
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
/// How many times a transaction whose keys changed under it is read and run again.
const MAX_ATTEMPTS: usize = 10;
/// Most compares or operations one level of a store transaction gets; more nest (the store's
/// `kv.max_txn_ops` defaults to 128 and counts each level on its own).
const TXN_CHUNK: usize = 64;

/// The store key of entry `key`.
pub fn kv_key(key: &str) -> Vec<u8> {
    format!("{KV_PREFIX}{key}").into_bytes()
}

/// The store key of session `id`.
pub fn session_key(id: &str) -> Vec<u8> {
    format!("{META_PREFIX}session/{id}").into_bytes()
}

/// The prefix of the locks session `id` holds.
pub fn held_prefix(id: &str) -> Vec<u8> {
    format!("{META_PREFIX}held/{id}/").into_bytes()
}

/// The store key saying session `id` holds `key`'s lock.
pub fn held_key(id: &str, key: &str) -> Vec<u8> {
    format!("{META_PREFIX}held/{id}/{key}").into_bytes()
}

/// The liveness key of node `node_id`.
pub fn agent_key(node_id: u64) -> Vec<u8> {
    format!("{META_PREFIX}agent/{node_id}").into_bytes()
}

/// The store key of `key`'s lock-delay deadline.
pub fn delay_key(key: &str) -> Vec<u8> {
    format!("{DELAY_PREFIX}{key}").into_bytes()
}

/// An entry as the store keeps it; the enum's variant is the format's version.
#[derive(Serialize, Deserialize)]
enum StoredEntry {
    V1 {
        flags: u64,
        lock_index: u64,
        session: Option<String>,
        value: Vec<u8>,
    },
}

/// Encodes an entry's data (its indexes are the store's revisions).
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    let stored = StoredEntry::V1 {
        flags: entry.flags,
        lock_index: entry.lock_index,
        session: entry.session.clone(),
        value: entry.value.clone(),
    };
    postcard::to_allocvec(&stored).expect("postcard encodes plain data into a vector")
}

/// Decodes the entry stored at `kv` (a key under [`KV_PREFIX`]).
pub fn decode_entry(kv: &KeyValue) -> Result<Entry, ApiError> {
    let key = kv
        .key
        .strip_prefix(KV_PREFIX.as_bytes())
        .ok_or_else(|| ApiError::internal("a Consul entry outside the KV prefix"))?;
    let key = String::from_utf8(key.to_vec())
        .map_err(|_| ApiError::internal("a Consul entry's key is not UTF-8"))?;
    let StoredEntry::V1 {
        flags,
        lock_index,
        session,
        value,
    } = postcard::from_bytes(&kv.value)
        .map_err(|e| ApiError::internal(format!("Consul entry {key:?} is undecodable: {e}")))?;
    Ok(Entry {
        key,
        flags,
        lock_index,
        session,
        value,
        create_index: kv.create_revision,
        modify_index: kv.mod_revision,
    })
}

/// How fresh a read must be: Consul's `?consistent` and `?stale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable (Consul's default and `consistent` modes both map here).
    Linearizable,
    /// This node's state, however far behind (`stale`).
    Stale,
}

/// What a blocking query waits on.
#[derive(Debug, Clone)]
pub enum Target {
    /// One key.
    Key(String),
    /// Every key with a prefix.
    Prefix(String),
}

/// What [`ConsulKv::read_plan`] read, with what the commit compares need.
struct Snapshot {
    reads: Reads,
    /// The store revision every read was made at.
    revision: i64,
    /// Mod revision of each session read (absent ones are left out).
    session_revisions: BTreeMap<String, i64>,
}

/// Consul's KV store, sessions and locks on one node.
pub struct ConsulKv {
    /// The replicated store.
    pub store: Arc<dyn KvApi>,
    /// The registry (node names, and service checks sessions may be bound to).
    pub registry: Arc<Registry>,
    /// This node's view of sessions, held locks and node liveness keys.
    pub sessions: Arc<SessionView>,
    /// Metrics.
    pub metrics: ConsulKvMetrics,
    /// Stops the watches of blocking queries at shutdown.
    pub cancel: CancellationToken,
    /// The node's task tracker (lease revocations in the background).
    pub tracker: TaskTracker,
}

/// Starts Consul's KV machinery on a node: the session view, the loop that cleans up after
/// invalidated sessions, and the one that keeps this node's liveness key alive.
pub fn start(
    registry: Arc<Registry>,
    prometheus: &prometheus::Registry,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> prometheus::Result<Arc<ConsulKv>> {
    let store = registry.store.clone();
    let sessions = Arc::new(SessionView::new());
    let kv = Arc::new(ConsulKv {
        store: store.clone(),
        registry,
        sessions: sessions.clone(),
        metrics: ConsulKvMetrics::new(prometheus)?,
        cancel: cancel.clone(),
        tracker: tracker.clone(),
    });
    tracker.spawn(strata_store::follow(
        store,
        META_PREFIX,
        sessions,
        cancel.child_token(),
    ));
    tracker.spawn(consul_sessions::reap_invalidated(
        kv.clone(),
        cancel.child_token(),
    ));
    tracker.spawn(consul_sessions::keep_agent_alive(
        kv.clone(),
        cancel.child_token(),
    ));
    Ok(kv)
}

fn range_at(key: Vec<u8>, prefix: bool, revision: i64, keys_only: bool) -> RangeRequest {
    RangeRequest {
        key,
        prefix,
        revision,
        keys_only,
        serializable: true,
        ..RangeRequest::default()
    }
}

/// A compare that `key`'s mod revision is `revision` (0: it does not exist).
pub(crate) fn mod_is(key: Vec<u8>, revision: i64) -> Compare {
    Compare {
        key,
        range_end: Vec::new(),
        prefix: false,
        result: CompareResult::Equal,
        target: CompareTarget::ModRevision(revision),
    }
}

/// A compare that `key` does not exist.
pub(crate) fn absent(key: Vec<u8>) -> Compare {
    Compare {
        key,
        range_end: Vec::new(),
        prefix: false,
        result: CompareResult::Equal,
        target: CompareTarget::CreateRevision(0),
    }
}

/// A put of `value` at `key` on `lease` (0: none).
pub(crate) fn put(key: Vec<u8>, value: Vec<u8>, lease: i64) -> RequestOp {
    RequestOp::Put(PutRequest {
        key,
        value,
        lease,
        ..PutRequest::default()
    })
}

/// A delete of the one key `key`.
pub(crate) fn delete(key: Vec<u8>) -> RequestOp {
    RequestOp::DeleteRange(DeleteRangeRequest {
        key,
        ..DeleteRangeRequest::default()
    })
}

fn delete_range(key: Vec<u8>, range_end: Vec<u8>) -> RequestOp {
    RequestOp::DeleteRange(DeleteRangeRequest {
        key,
        range_end,
        ..DeleteRangeRequest::default()
    })
}

/// A store transaction of `compares` and `ops` that respects the per-level limit: compares
/// beyond 64 (`TXN_CHUNK`) go into a nested transaction that holds the rest, and operations into
/// nested transactions of their own. Every write sits under every compare, so the whole
/// applies or nothing does; [`all_succeeded`] tells which.
pub fn nested_txn(mut compares: Vec<Compare>, ops: Vec<RequestOp>) -> TxnRequest {
    let rest = if compares.len() > TXN_CHUNK {
        compares.split_off(TXN_CHUNK)
    } else {
        Vec::new()
    };
    let success = if !rest.is_empty() {
        vec![RequestOp::Txn(nested_txn(rest, ops))]
    } else if ops.len() > TXN_CHUNK {
        let mut groups = Vec::new();
        let mut ops = ops;
        while !ops.is_empty() {
            let tail = ops.split_off(ops.len().min(TXN_CHUNK));
            groups.push(ops);
            ops = tail;
        }
        let inner: Vec<RequestOp> = groups
            .into_iter()
            .map(|group| RequestOp::Txn(nested_txn(Vec::new(), group)))
            .collect();
        if inner.len() > TXN_CHUNK {
            vec![RequestOp::Txn(nested_txn(Vec::new(), inner))]
        } else {
            inner
        }
    } else {
        ops
    };
    TxnRequest {
        compare: compares,
        success,
        failure: Vec::new(),
    }
}

/// True when a transaction built by [`nested_txn`] took its success branch at every level.
pub fn all_succeeded(response: &TxnResponse) -> bool {
    response.succeeded
        && response.responses.iter().all(|op| match op {
            ResponseOp::Txn(inner) => all_succeeded(inner),
            _ => true,
        })
}

/// The delete operations that clear `trees` (entry prefixes) except the keys in `kept`: each
/// tree becomes ranges between the kept keys inside it, so no put of the same transaction
/// falls in a deleted range (the store refuses that).
fn tree_deletes(trees: &BTreeSet<String>, kept: &BTreeSet<&String>) -> Vec<RequestOp> {
    let mut ops = Vec::new();
    for tree in trees {
        // A tree inside another cleared tree is covered by it.
        let covered = trees
            .iter()
            .any(|other| other != tree && tree.starts_with(other.as_str()));
        if covered {
            continue;
        }
        let mut start = kv_key(tree);
        let end = prefix_end(&kv_key(tree));
        for key in kept.iter().filter(|k| k.starts_with(tree.as_str())) {
            let kept_key = kv_key(key);
            if start < kept_key {
                ops.push(delete_range(start, kept_key.clone()));
            }
            start = kept_key;
            start.push(0);
        }
        if end.is_empty() || start < end {
            ops.push(delete_range(start, end));
        }
    }
    ops
}

/// True when `key` falls in one of `trees`.
fn in_trees(trees: &BTreeSet<String>, key: &str) -> bool {
    trees.iter().any(|tree| key.starts_with(tree.as_str()))
}

/// A random backoff between attempts that lost a race, so they do not collide again.
async fn pause(attempt: usize) {
    let base = 5u64 << attempt.min(5);
    let jitter = rand::random::<u64>() % base.max(1);
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}

impl ConsulKv {
    /// This node's name as Consul clients see it.
    pub fn node_name(&self) -> String {
        node_name(self.store.node_id())
    }

    /// The revision to read at: after making sure this node has everything committed, unless
    /// `stale` reads are fine.
    async fn read_revision(&self, consistency: Consistency) -> Result<i64, ApiError> {
        if consistency == Consistency::Linearizable {
            self.store.linearize().await?;
        }
        Ok(self.store.revision())
    }

    /// Reads one entry; with the store revision it was read at.
    pub async fn read_entry(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> Result<(Option<Entry>, i64), ApiError> {
        let revision = self.read_revision(consistency).await?;
        let response = self
            .store
            .range(range_at(kv_key(key), false, revision, false))
            .await?;
        let entry = match response.kvs.first() {
            Some(kv) => Some(decode_entry(kv)?),
            None => None,
        };
        Ok((entry, revision))
    }

    /// Reads every entry with `prefix` (without values when `keys_only`); with the store
    /// revision they were read at.
    pub async fn read_tree(
        &self,
        prefix: &str,
        keys_only: bool,
        consistency: Consistency,
    ) -> Result<(Vec<Entry>, i64), ApiError> {
        let revision = self.read_revision(consistency).await?;
        let response = self
            .store
            .range(range_at(kv_key(prefix), true, revision, keys_only))
            .await?;
        let mut entries = Vec::with_capacity(response.kvs.len());
        for kv in &response.kvs {
            if keys_only {
                entries.push(Entry {
                    key: String::from_utf8_lossy(&kv.key[KV_PREFIX.len()..]).into_owned(),
                    flags: 0,
                    lock_index: 0,
                    session: None,
                    value: Vec::new(),
                    create_index: kv.create_revision,
                    modify_index: kv.mod_revision,
                });
            } else {
                entries.push(decode_entry(kv)?);
            }
        }
        Ok((entries, revision))
    }

    /// The key-value at `key` as of `revision`, if there is one.
    async fn read_at(&self, key: Vec<u8>, revision: i64) -> Result<Option<KeyValue>, ApiError> {
        let response = self
            .store
            .range(range_at(key, false, revision, false))
            .await?;
        Ok(response.kvs.into_iter().next())
    }

    /// Reads what `plan` asks for, all at one revision.
    async fn read_plan(
        &self,
        plan: &ReadPlan,
        consistency: Consistency,
    ) -> Result<Snapshot, ApiError> {
        let revision = self.read_revision(consistency).await?;
        let mut reads = Reads {
            now_ms: crate::model::now_ms(),
            ..Reads::default()
        };
        for tree in &plan.trees {
            let response = self
                .store
                .range(range_at(kv_key(tree), true, revision, false))
                .await?;
            for kv in &response.kvs {
                let entry = decode_entry(kv)?;
                reads.entries.insert(entry.key.clone(), entry);
            }
        }
        for key in &plan.keys {
            if reads.entries.contains_key(key) || in_trees(&plan.trees, key) {
                continue;
            }
            if let Some(kv) = self.read_at(kv_key(key), revision).await? {
                reads.entries.insert(key.clone(), decode_entry(&kv)?);
            }
        }
        let mut session_revisions = BTreeMap::new();
        for id in &plan.sessions {
            if let Some(kv) = self.read_at(session_key(id), revision).await? {
                let session = consul_sessions::decode_session(&kv.value)?;
                reads.sessions.insert(id.clone(), session.terms());
                session_revisions.insert(id.clone(), kv.mod_revision);
            }
        }
        for key in &plan.lock_delays {
            if let Some(kv) = self.read_at(delay_key(key), revision).await? {
                let deadline = std::str::from_utf8(&kv.value)
                    .ok()
                    .and_then(|text| text.parse::<u64>().ok())
                    .unwrap_or(0);
                reads.lock_delays.insert(key.clone(), deadline);
            }
        }
        Ok(Snapshot {
            reads,
            revision,
            session_revisions,
        })
    }

    /// The store transaction that writes `outcome`, conditioned on `snapshot` still holding.
    fn commit_request(plan: &ReadPlan, snapshot: &Snapshot, outcome: &Outcome) -> TxnRequest {
        let reads = &snapshot.reads;
        let mut compares = Vec::new();
        for key in &plan.keys {
            let read = reads.entries.get(key).map_or(0, |e| e.modify_index);
            compares.push(mod_is(kv_key(key), read));
        }
        for tree in &plan.trees {
            compares.push(Compare {
                key: kv_key(tree),
                range_end: Vec::new(),
                prefix: true,
                result: CompareResult::Less,
                target: CompareTarget::ModRevision(snapshot.revision + 1),
            });
        }
        for (id, revision) in &snapshot.session_revisions {
            compares.push(mod_is(session_key(id), *revision));
        }
        let kept: BTreeSet<&String> = outcome
            .changes
            .iter()
            .filter(|(_, after)| after.is_some())
            .map(|(key, _)| key)
            .collect();
        let mut ops = tree_deletes(&outcome.cleared_trees, &kept);
        for (key, after) in &outcome.changes {
            let before = reads.entries.get(key);
            match after {
                Some(entry) => ops.push(put(kv_key(key), encode_entry(entry), 0)),
                None if in_trees(&outcome.cleared_trees, key) => {}
                None => ops.push(delete(kv_key(key))),
            }
            let held_before = before.and_then(|e| e.session.as_deref());
            let held_after = after.as_ref().and_then(|e| e.session.as_deref());
            if held_before == held_after {
                continue;
            }
            if let Some(session) = held_before {
                ops.push(delete(held_key(session, key)));
            }
            if let Some(session) = held_after {
                let terms = reads.sessions.get(session).copied();
                let value = serde_json::to_vec(&terms)
                    .expect("lock terms are plain data that always encodes");
                ops.push(put(held_key(session, key), value, 0));
            }
        }
        nested_txn(compares, ops)
    }

    /// Runs Consul transaction `ops` atomically: Consul's results and errors, with every index
    /// it gave set to the commit revision. Reads (a transaction without writes) follow
    /// `consistency`; writes always read linearizably.
    pub async fn transact(
        &self,
        ops: &[Op],
        consistency: Consistency,
    ) -> Result<Outcome, ApiError> {
        let plan = consul_txn::plan(ops);
        let writes = ops.iter().any(|op| op.verb.writes());
        let consistency = if writes {
            Consistency::Linearizable
        } else {
            consistency
        };
        for attempt in 0..MAX_ATTEMPTS {
            let snapshot = self.read_plan(&plan, consistency).await?;
            let mut outcome = consul_txn::run(ops, &snapshot.reads);
            if !outcome.errors.is_empty() || outcome.changes.is_empty() {
                self.count_acquires(ops, &outcome);
                return Ok(outcome);
            }
            let request = Self::commit_request(&plan, &snapshot, &outcome);
            let response = self.store.txn(request).await?;
            if all_succeeded(&response) {
                let revision = response.header.revision;
                for entry in &mut outcome.results {
                    fill_pending(entry, revision);
                }
                for entry in outcome.changes.values_mut().flatten() {
                    fill_pending(entry, revision);
                }
                debug!(
                    ops = ops.len(),
                    changed = outcome.changes.len(),
                    revision,
                    "Consul KV transaction committed"
                );
                self.count_acquires(ops, &outcome);
                return Ok(outcome);
            }
            self.metrics.conflicts.inc();
            debug!(
                attempt,
                "Consul KV transaction lost a race; running it again"
            );
            pause(attempt).await;
        }
        Err(ApiError::unavailable(
            "the keys kept changing under the transaction; retry",
        ))
    }

    fn count_acquires(&self, ops: &[Op], outcome: &Outcome) {
        for (index, op) in ops.iter().enumerate() {
            if op.verb != consul_txn::Verb::Lock {
                continue;
            }
            let result = match outcome.errors.iter().find(|e| e.op_index == index) {
                None if outcome.errors.is_empty() => "acquired",
                None => continue,
                Some(error) => match &error.failure {
                    consul_txn::Failure::Invalid(_) => "invalid",
                    consul_txn::Failure::Refused(m) if m.contains("lock delay") => "delayed",
                    consul_txn::Failure::Refused(_) => "held",
                },
            };
            self.metrics.acquires.with_label_values(&[result]).inc();
        }
    }

    /// Waits, at most `wait`, until `target` changes after `index` (Consul's blocking query).
    /// Returns at once when it already has; any doubt (a compacted history, a failed watch)
    /// returns early, which Consul's clients handle as a spurious wake-up.
    ///
    /// Cancel safety: cancel-safe; it holds nothing but a watch, dropped with it.
    pub async fn block(&self, target: &Target, index: i64, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        let (watch_key, prefix, from) = match target {
            Target::Key(key) => {
                // An entry that still has a ModifyIndex at or below `index` has not changed
                // since (a delete and re-create gives it a new one), so the watch starts now
                // rather than replaying history from an old index.
                match self.read_entry(key, Consistency::Stale).await {
                    Ok((Some(entry), _)) if entry.modify_index > index => return,
                    Ok((Some(_), revision)) => (kv_key(key), false, revision + 1),
                    Ok((None, _)) => (kv_key(key), false, index + 1),
                    Err(_) => return,
                }
            }
            Target::Prefix(prefix) => (kv_key(prefix), true, index + 1),
        };
        let cancel = self.cancel.child_token();
        let _stop_watch = cancel.clone().drop_guard();
        let request = WatchRequest {
            key: watch_key,
            prefix,
            start_revision: from.max(1),
            ..WatchRequest::default()
        };
        let mut messages = match self.store.watch(request, cancel) {
            Ok(messages) => messages,
            Err(e) => {
                if e.code != ErrorCode::Compacted {
                    debug!(error = %e, "blocking query watch failed; answering now");
                }
                return;
            }
        };
        self.metrics.blocking.inc();
        loop {
            match tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut messages)).await {
                Ok(Some(message)) if message.compact_revision == 0 && message.events.is_empty() => {
                    continue
                }
                Ok(_) | Err(_) => break,
            }
        }
        self.metrics.blocking.dec();
    }

    /// Cleans up after session `id`, which no longer exists: each key it still holds is
    /// released (behavior `release`: the session is cleared, `ModifyIndex` moves) or deleted
    /// (`delete`), its lock delay starts, and its held-lock records go. Returns how many keys
    /// it held; does nothing, and returns 0, if the session exists or another node has
    /// cleaned up already (a node that destroys a session and the reapers may race: each
    /// write is conditioned on what it read, so one wins and the others find nothing left).
    pub async fn invalidate(&self, id: &str, cause: &'static str) -> Result<usize, ApiError> {
        for attempt in 0..MAX_ATTEMPTS {
            if let Some(keys) = self.invalidate_once(id, cause).await? {
                return Ok(keys);
            }
            self.metrics.conflicts.inc();
            pause(attempt).await;
        }
        Err(ApiError::unavailable(format!(
            "the keys of session {id} kept changing during its clean-up; will retry"
        )))
    }

    /// One attempt of [`ConsulKv::invalidate`]; `None` when a key changed under it.
    async fn invalidate_once(
        &self,
        id: &str,
        cause: &'static str,
    ) -> Result<Option<usize>, ApiError> {
        self.store.linearize().await?;
        let revision = self.store.revision();
        if self.read_at(session_key(id), revision).await?.is_some() {
            return Ok(Some(0));
        }
        let held = self
            .store
            .range(range_at(held_prefix(id), true, revision, false))
            .await?;
        if held.kvs.is_empty() {
            return Ok(Some(0));
        }
        let prefix_len = held_prefix(id).len();
        let mut compares = vec![absent(session_key(id))];
        let mut ops = vec![RequestOp::DeleteRange(DeleteRangeRequest {
            key: held_prefix(id),
            prefix: true,
            ..DeleteRangeRequest::default()
        })];
        let mut lost: Vec<(String, LockTerms)> = Vec::new();
        for kv in &held.kvs {
            let key = String::from_utf8_lossy(&kv.key[prefix_len..]).into_owned();
            let terms: Option<LockTerms> = serde_json::from_slice(&kv.value).unwrap_or(None);
            let terms = terms.unwrap_or(LockTerms {
                behavior: consul_txn::Behavior::Release,
                lock_delay_ms: 0,
            });
            let Some(stored) = self.read_at(kv_key(&key), revision).await? else {
                continue;
            };
            let mut entry = decode_entry(&stored)?;
            if entry.session.as_deref() != Some(id) {
                continue;
            }
            compares.push(mod_is(kv_key(&key), entry.modify_index));
            match terms.behavior {
                consul_txn::Behavior::Release => {
                    entry.session = None;
                    ops.push(put(kv_key(&key), encode_entry(&entry), 0));
                }
                consul_txn::Behavior::Delete => ops.push(delete(kv_key(&key))),
            }
            lost.push((key, terms));
        }
        let now = crate::model::now_ms();
        let longest_delay = lost.iter().map(|(_, t)| t.lock_delay_ms).max().unwrap_or(0);
        let longest_delay = longest_delay.min(MAX_LOCK_DELAY.as_millis() as u64);
        let mut delay_lease = 0;
        if longest_delay > 0 {
            // The deadlines hang on a lease that outlives them, so they clean themselves up.
            let ttl = crate::model::lease_seconds(Duration::from_millis(longest_delay)) + 1;
            let lease = strata_store::grant(&*self.store, ttl).await?;
            delay_lease = lease;
            for (key, terms) in &lost {
                let delay = terms.lock_delay_ms.min(MAX_LOCK_DELAY.as_millis() as u64);
                if delay > 0 {
                    let deadline = (now + delay).to_string().into_bytes();
                    ops.push(put(delay_key(key), deadline, lease));
                }
            }
        }
        let response = self.store.txn(nested_txn(compares, ops)).await?;
        if !all_succeeded(&response) {
            debug!(
                session = id,
                "a Consul session's keys changed during its clean-up"
            );
            if delay_lease != 0 {
                self.revoke_later(delay_lease);
            }
            return Ok(None);
        }
        self.metrics.invalidated.with_label_values(&[cause]).inc();
        for (key, terms) in &lost {
            self.metrics
                .locks_lost
                .with_label_values(&[terms.behavior.name()])
                .inc();
            tracing::info!(
                session = id,
                key = key.as_str(),
                behavior = terms.behavior.name(),
                lock_delay_ms = terms.lock_delay_ms,
                cause,
                "Consul lock lost with its session"
            );
        }
        Ok(Some(lost.len()))
    }
}

/// A node's name as Consul clients see it.
pub fn node_name(node_id: u64) -> String {
    format!("strata-{node_id}")
}

/// A node's id as Consul clients see it: a UUID made of the node id.
pub fn node_uuid(node_id: u64) -> String {
    crate::consul_acl::uuid(&format!("{:032x}", u128::from(node_id)))
}

fn fill_pending(entry: &mut Entry, revision: i64) {
    if entry.create_index == PENDING {
        entry.create_index = revision;
    }
    if entry.modify_index == PENDING {
        entry.modify_index = revision;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let entry = Entry {
            key: "a/b".into(),
            flags: 42,
            lock_index: 3,
            session: Some("s".into()),
            value: b"v".to_vec(),
            create_index: 7,
            modify_index: 9,
        };
        let kv = KeyValue {
            key: kv_key("a/b"),
            create_revision: 7,
            mod_revision: 9,
            version: 1,
            value: encode_entry(&entry),
            lease: 0,
        };
        assert_eq!(decode_entry(&kv).unwrap(), entry);
        let broken = KeyValue {
            value: vec![9, 9, 9],
            ..kv
        };
        assert!(decode_entry(&broken).is_err());
    }

    #[test]
    fn big_transactions_nest_within_the_per_level_limit() {
        fn check(txn: &TxnRequest) {
            assert!(txn.compare.len() <= TXN_CHUNK);
            assert!(txn.success.len() <= TXN_CHUNK);
            for op in &txn.success {
                if let RequestOp::Txn(inner) = op {
                    check(inner);
                }
            }
        }
        fn count_puts(txn: &TxnRequest) -> usize {
            txn.success
                .iter()
                .map(|op| match op {
                    RequestOp::Txn(inner) => count_puts(inner),
                    RequestOp::Put(_) => 1,
                    _ => 0,
                })
                .sum()
        }
        let compares: Vec<Compare> = (0..200)
            .map(|i| mod_is(kv_key(&i.to_string()), 0))
            .collect();
        let ops: Vec<RequestOp> = (0..5000)
            .map(|i| put(kv_key(&i.to_string()), Vec::new(), 0))
            .collect();
        let txn = nested_txn(compares, ops);
        check(&txn);
        assert_eq!(count_puts(&txn), 5000);
    }

    #[test]
    fn cleared_trees_skip_the_keys_the_transaction_keeps() {
        let trees = BTreeSet::from(["t/".to_string(), "t/x/".to_string()]);
        let kept_key = "t/m".to_string();
        let kept = BTreeSet::from([&kept_key]);
        let ops = tree_deletes(&trees, &kept);
        let ranges: Vec<(Vec<u8>, Vec<u8>)> = ops
            .into_iter()
            .map(|op| match op {
                RequestOp::DeleteRange(d) => (d.key, d.range_end),
                _ => unreachable!(),
            })
            .collect();
        let mut after = kv_key("t/m");
        after.push(0);
        assert_eq!(
            ranges,
            vec![
                (kv_key("t/"), kv_key("t/m")),
                (after, prefix_end(&kv_key("t/")))
            ]
        );
    }
}
