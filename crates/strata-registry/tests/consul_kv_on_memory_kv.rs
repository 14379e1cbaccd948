//! Consul's KV store, sessions and locks on the in-memory KV API ([`MemoryKv`]), without
//! processes: what each write does to `CreateIndex`, `ModifyIndex` and `LockIndex`, that a
//! transaction applies whole or not at all, that a blocking query wakes on a change, and what
//! happens to a session's locks when it is destroyed or its lease lapses (release or delete,
//! then the lock delay).
//!
//! Lease expiry follows tokio's clock (tests on a paused clock advance it and call
//! [`MemoryKv::expire_leases`]); lock delays are wall-clock deadlines, so the tests that wait
//! one out run on real time and poll with a deadline.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;
use strata_registry::consul_sessions::NewSession;
use strata_registry::consul_store::{Consistency, ConsulKv, Target};
use strata_registry::consul_txn::{Behavior, Entry, Failure, Op, Outcome, Verb};
use strata_store::memory::MemoryKv;
use strata_store::KvApi;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest a test waits for something to happen.
const DEADLINE: Duration = Duration::from_secs(10);

struct Node {
    memory: Arc<MemoryKv>,
    kv: Arc<ConsulKv>,
    cancel: CancellationToken,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn start() -> Node {
    let memory = Arc::new(MemoryKv::new());
    let store: Arc<dyn KvApi> = memory.clone();
    let cancel = CancellationToken::new();
    let metrics = prometheus::Registry::new();
    let tracker = TaskTracker::new();
    let registry = strata_registry::start(store, &metrics, &tracker, cancel.clone()).unwrap();
    let kv =
        strata_registry::consul_store::start(registry, &metrics, &tracker, cancel.clone()).unwrap();
    Node { memory, kv, cancel }
}

fn op(verb: Verb, key: &str) -> Op {
    Op::new(verb, key)
}

fn set(key: &str, value: &str) -> Op {
    let mut op = op(Verb::Set, key);
    op.value = value.as_bytes().to_vec();
    op
}

fn locking(verb: Verb, key: &str, session: &str) -> Op {
    let mut op = op(verb, key);
    op.session = session.to_string();
    op
}

impl Node {
    async fn run(&self, ops: &[Op]) -> Outcome {
        self.kv
            .transact(ops, Consistency::Linearizable)
            .await
            .unwrap()
    }

    async fn get(&self, key: &str) -> Option<Entry> {
        self.kv
            .read_entry(key, Consistency::Linearizable)
            .await
            .unwrap()
            .0
    }

    async fn session(&self, ttl: Option<&str>, behavior: Behavior, delay: Duration) -> String {
        self.kv
            .create_session(NewSession {
                ttl: ttl.map(|t| {
                    (
                        t.to_string(),
                        strata_registry::go_duration::parse(t).unwrap(),
                    )
                }),
                behavior,
                lock_delay: delay,
                ..NewSession::default()
            })
            .await
            .unwrap()
    }
}

async fn eventually(what: &str, mut probe: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !probe().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn writes_set_consul_indexes() {
    let node = start().await;
    let created = node.run(&[set("a", "1")]).await;
    let first = created.results[0].clone();
    assert_eq!(first.create_index, first.modify_index);
    assert!(first.create_index > 0);
    // The same data again changes nothing, not even ModifyIndex (Consul's rule).
    let again = node.run(&[set("a", "1")]).await;
    assert_eq!(again.results[0].modify_index, first.modify_index);
    let changed = node.run(&[set("a", "2")]).await;
    assert_eq!(changed.results[0].create_index, first.create_index);
    assert!(changed.results[0].modify_index > first.modify_index);
    let stored = node.get("a").await.unwrap();
    assert_eq!(stored.value, b"2");
    assert_eq!(stored.modify_index, changed.results[0].modify_index);
}

#[tokio::test]
async fn a_failing_transaction_changes_nothing() {
    let node = start().await;
    node.run(&[set("t/a", "1")]).await;
    let mut stale = op(Verb::Cas, "t/a");
    stale.index = 1;
    let outcome = node
        .run(&[set("t/b", "2"), op(Verb::DeleteTree, "t/"), stale])
        .await;
    assert_eq!(outcome.errors.len(), 1);
    assert_eq!(outcome.errors[0].op_index, 2);
    assert!(node.get("t/b").await.is_none());
    assert_eq!(node.get("t/a").await.unwrap().value, b"1");
    // The same without the stale compare applies whole.
    let outcome = node
        .run(&[
            op(Verb::DeleteTree, "t/"),
            set("t/b", "2"),
            op(Verb::GetTree, "t/"),
        ])
        .await;
    assert!(outcome.errors.is_empty());
    assert!(node.get("t/a").await.is_none());
    assert_eq!(node.get("t/b").await.unwrap().value, b"2");
    assert_eq!(
        outcome.results.len(),
        2,
        "the set and the one key of the tree"
    );
}

#[tokio::test]
async fn a_blocking_query_returns_when_the_key_changes() {
    let node = start().await;
    node.run(&[set("watched", "1")]).await;
    let index = node.get("watched").await.unwrap().modify_index;
    let kv = node.kv.clone();
    let blocked = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        kv.block(
            &Target::Key("watched".into()),
            index,
            Duration::from_secs(30),
        )
        .await;
        started.elapsed()
    });
    // Another key's change does not wake it.
    node.run(&[set("other", "x")]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!blocked.is_finished(), "woke on another key");
    node.run(&[set("watched", "2")]).await;
    let waited = tokio::time::timeout(DEADLINE, blocked)
        .await
        .unwrap()
        .unwrap();
    assert!(waited < Duration::from_secs(30));
    // An index the key has passed returns at once.
    let started = tokio::time::Instant::now();
    node.kv
        .block(
            &Target::Key("watched".into()),
            index,
            Duration::from_secs(30),
        )
        .await;
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn lock_index_counts_acquisitions_and_release_needs_the_holder() {
    let node = start().await;
    let one = node.session(None, Behavior::Release, Duration::ZERO).await;
    let two = node.session(None, Behavior::Release, Duration::ZERO).await;
    let acquired = node.run(&[locking(Verb::Lock, "lock", &one)]).await;
    assert!(acquired.errors.is_empty());
    assert_eq!(node.get("lock").await.unwrap().lock_index, 1);
    // The holder acquiring again is fine and counts nothing.
    assert!(node
        .run(&[locking(Verb::Lock, "lock", &one)])
        .await
        .errors
        .is_empty());
    assert_eq!(node.get("lock").await.unwrap().lock_index, 1);
    let refused = node.run(&[locking(Verb::Lock, "lock", &two)]).await;
    assert!(matches!(refused.errors[0].failure, Failure::Refused(_)));
    let not_holder = node.run(&[locking(Verb::Unlock, "lock", &two)]).await;
    assert!(matches!(not_holder.errors[0].failure, Failure::Refused(_)));
    assert!(node
        .run(&[locking(Verb::Unlock, "lock", &one)])
        .await
        .errors
        .is_empty());
    let released = node.get("lock").await.unwrap();
    assert_eq!((released.session, released.lock_index), (None, 1));
    assert!(node
        .run(&[locking(Verb::Lock, "lock", &two)])
        .await
        .errors
        .is_empty());
    let taken = node.get("lock").await.unwrap();
    assert_eq!(taken.lock_index, 2);
    assert_eq!(taken.session.as_deref(), Some(two.as_str()));
    let unknown = node
        .run(&[locking(Verb::Lock, "lock", "no-such-session")])
        .await;
    assert!(matches!(unknown.errors[0].failure, Failure::Invalid(_)));
}

#[tokio::test]
async fn destroying_a_session_releases_its_locks_and_starts_the_lock_delay() {
    let node = start().await;
    let holder = node
        .session(None, Behavior::Release, Duration::from_millis(400))
        .await;
    let waiter = node.session(None, Behavior::Release, Duration::ZERO).await;
    node.run(&[locking(Verb::Lock, "leader", &holder)]).await;
    let held = node.get("leader").await.unwrap();
    node.kv.destroy_session(&holder, "destroyed").await.unwrap();
    let released = node.get("leader").await.unwrap();
    assert_eq!(released.session, None);
    assert!(
        released.modify_index > held.modify_index,
        "a release moves ModifyIndex"
    );
    let delayed = node.run(&[locking(Verb::Lock, "leader", &waiter)]).await;
    assert!(
        matches!(&delayed.errors[0].failure, Failure::Refused(m) if m.contains("lock delay")),
        "{:?}",
        delayed.errors
    );
    eventually("the lock delay to pass", async || {
        node.run(&[locking(Verb::Lock, "leader", &waiter)])
            .await
            .errors
            .is_empty()
    })
    .await;
    assert_eq!(node.get("leader").await.unwrap().lock_index, 2);
}

#[tokio::test(start_paused = true)]
async fn a_lapsed_ttl_session_deletes_what_it_held_with_behavior_delete() {
    let node = start().await;
    let ephemeral = node
        .session(Some("10s"), Behavior::Delete, Duration::ZERO)
        .await;
    node.run(&[locking(Verb::Lock, "member/1", &ephemeral)])
        .await;
    node.run(&[set("member/2", "kept")]).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(node.kv.renew_session(&ephemeral).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(node.memory.expire_leases().is_empty(), "renewed 6 s ago");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(node.memory.expire_leases().len(), 1);
    eventually("the reaper to delete the key", async || {
        node.get("member/1").await.is_none()
    })
    .await;
    assert!(node.get("member/2").await.is_some());
    assert!(node.kv.renew_session(&ephemeral).await.unwrap().is_none());
    assert!(node.kv.sessions.orphans().is_empty());
}

#[tokio::test(start_paused = true)]
async fn sessions_bound_to_the_node_share_its_liveness_lease() {
    let node = start().await;
    let one = node.session(None, Behavior::Release, Duration::ZERO).await;
    let two = node.session(None, Behavior::Release, Duration::ZERO).await;
    let lease_of = |id: &str| node.kv.sessions.session(id).unwrap().lease;
    assert_ne!(lease_of(&one), 0);
    assert_eq!(lease_of(&one), lease_of(&two));
    // The node renews it: it outlives its TTL many times.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(node.memory.expire_leases().is_empty());
    assert!(node.kv.sessions.session(&one).is_some());
    // A session with neither TTL nor checks hangs on no lease.
    let bare = node
        .kv
        .create_session(NewSession {
            node_checks: Some(Vec::new()),
            ..NewSession::default()
        })
        .await
        .unwrap();
    assert_eq!(lease_of(&bare), 0);
}

/// A session with a TTL (a lease of its own) that is also bound to its node's `serfHealth`
/// ends when the node's liveness key goes, long before its TTL; a session on no check lives on.
#[tokio::test]
async fn a_ttl_session_on_serf_health_ends_when_its_node_liveness_key_goes() {
    let node = start().await;
    let bound = node
        .session(Some("3600s"), Behavior::Delete, Duration::ZERO)
        .await;
    let free = node
        .kv
        .create_session(NewSession {
            node_checks: Some(Vec::new()),
            ttl: Some(("3600s".into(), Duration::from_secs(3600))),
            ..NewSession::default()
        })
        .await
        .unwrap();
    node.run(&[locking(Verb::Lock, "held", &bound)]).await;
    // The liveness key exists once a session is bound to the node's serfHealth; take it away
    // as its lease's end would.
    let agent = strata_registry::consul_store::agent_key(node.memory.node_id());
    node.memory
        .delete_range(strata_proto::kv::DeleteRangeRequest {
            key: agent,
            ..Default::default()
        })
        .await
        .unwrap();
    eventually("the bound session to end", async || {
        node.kv.sessions.session(&bound).is_none()
    })
    .await;
    eventually("its key to be deleted", async || {
        node.get("held").await.is_none()
    })
    .await;
    assert!(node.kv.sessions.session(&free).is_some());
}

#[tokio::test]
async fn session_requests_consul_would_refuse() {
    let node = start().await;
    for request in [
        NewSession {
            ttl: Some(("5s".into(), Duration::from_secs(5))),
            ..NewSession::default()
        },
        NewSession {
            ttl: Some(("25h".into(), Duration::from_secs(90_000))),
            ..NewSession::default()
        },
        NewSession {
            node: Some("elsewhere".into()),
            ..NewSession::default()
        },
        NewSession {
            node_checks: Some(vec!["maintenance".into()]),
            ..NewSession::default()
        },
    ] {
        let err = node.kv.create_session(request).await.unwrap_err();
        assert_eq!(
            err.code,
            strata_proto::error::ErrorCode::BadRequest,
            "{err}"
        );
    }
}
