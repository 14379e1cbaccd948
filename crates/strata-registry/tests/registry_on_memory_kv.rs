//! The registry's domain logic on the in-memory KV API ([`MemoryKv`]), without processes:
//! compare-and-set registration and deregistration, replacement, ephemeral instances that
//! expire with their lease, TTL checks, check placement over the live nodes, the protection
//! threshold and blocking queries.
//!
//! Lease expiry follows tokio's clock: tests on a paused clock advance it and call
//! [`MemoryKv::expire_leases`]. TTL checks measure the time since a status change on the wall
//! clock (`now_ms`), so the tests of their lapse run on real time and poll with a deadline.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use strata_proto::error::{ApiError, ErrorCode};
use strata_proto::kv::{PutRequest, RangeRequest};
use strata_registry::checks::owner;
use strata_registry::model::{node_key, ServiceSettings};
use strata_registry::probe::Health;
use strata_registry::view::Change;
use strata_registry::{InstanceRef, Query, Registration, Registry};
use strata_store::memory::{MemoryKv, MEMORY_NODE_ID};
use strata_store::KvApi;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest a test waits for something to happen (on a paused clock: virtual time).
const DEADLINE: Duration = Duration::from_secs(10);

/// A registry on a store; stops its tasks when dropped.
struct Node {
    kv: Arc<MemoryKv>,
    registry: Arc<Registry>,
    cancel: CancellationToken,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl std::ops::Deref for Node {
    type Target = Registry;
    fn deref(&self) -> &Registry {
        &self.registry
    }
}

async fn start() -> Node {
    let kv = Arc::new(MemoryKv::new());
    let cancel = CancellationToken::new();
    let store: Arc<dyn KvApi> = kv.clone();
    let registry = strata_registry::start(
        store,
        &prometheus::Registry::new(),
        &TaskTracker::new(),
        cancel.clone(),
    )
    .unwrap();
    assert!(
        registry.view.wait_ready(DEADLINE).await,
        "the view never loaded"
    );
    Node {
        kv,
        registry,
        cancel,
    }
}

impl Node {
    /// Waits (bounded) until the view has applied everything the store has.
    async fn caught_up(&self) {
        let revision = self.kv.revision();
        assert!(
            self.view.wait_for(revision, DEADLINE).await,
            "the view stayed at revision {} below the store's {revision}",
            self.view.revision()
        );
    }

    /// Live lease ids in the store.
    async fn leases(&self) -> BTreeSet<i64> {
        self.kv
            .lease_leases()
            .await
            .unwrap()
            .leases
            .iter()
            .map(|l| l.id)
            .collect()
    }

    /// Ids of the instances a plain query returns.
    async fn ids(&self, service: &str) -> Vec<String> {
        self.query(service, &Query::default())
            .await
            .unwrap()
            .instances
            .iter()
            .map(|i| i.id.clone())
            .collect()
    }

    /// Instances whose checks this node runs now.
    fn local_checks(&self) -> BTreeSet<InstanceRef> {
        self.local_checks
            .list()
            .into_iter()
            .map(|c| c.instance)
            .collect()
    }
}

/// Polls `probe` until it holds; fails after [`DEADLINE`] (tokio time, so virtual on a paused
/// clock, where waiting lets the registry's timers run).
async fn eventually(what: &str, mut probe: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !probe().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Advances a paused clock by `by` in small steps, letting due timers run in between (the
/// node's own liveness keep-alive must keep up).
async fn advance(by: Duration) {
    let step = Duration::from_millis(100);
    let mut left = by;
    while !left.is_zero() {
        let now = left.min(step);
        tokio::time::advance(now).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        left -= now;
    }
}

fn registration(extra: serde_json::Value) -> Registration {
    let mut value = serde_json::json!({
        "service": "web", "id": "web-1", "address": "10.0.0.1", "port": 8080
    });
    for (k, v) in extra.as_object().unwrap() {
        value[k] = v.clone();
    }
    serde_json::from_value(value).unwrap()
}

fn web(id: &str) -> InstanceRef {
    InstanceRef::new("public", "web", id)
}

fn assert_code<T: std::fmt::Debug>(result: Result<T, ApiError>, code: ErrorCode) -> ApiError {
    match result {
        Err(e) if e.code == code => e,
        other => panic!("expected a {code:?} error, got {other:?}"),
    }
}

// ---- registration -------------------------------------------------------------------------

#[tokio::test]
async fn a_registration_creates_the_instance_and_a_different_one_under_the_same_id_is_refused() {
    let node = start().await;
    let first = node
        .register(registration(serde_json::json!({})), false)
        .await
        .unwrap();
    assert!(first.created);
    assert_eq!(first.lease, 0, "a persistent instance has no lease");
    assert_eq!(first.instance.status, Health::Passing);
    assert_eq!(node.ids("web").await, vec!["web-1"]);

    let revision = node.kv.revision();
    let conflict = node
        .register(registration(serde_json::json!({"port": 9090})), false)
        .await;
    let e = assert_code(conflict, ErrorCode::AlreadyExists);
    assert!(
        e.message.contains("port: stored 8080, asked for 9090"),
        "{}",
        e.message
    );
    assert_eq!(node.kv.revision(), revision, "a refused registration wrote");
    assert_eq!(node.view.get(&web("web-1")).unwrap().instance.port, 8080);
}

#[tokio::test]
async fn an_identical_registration_is_idempotent() {
    let node = start().await;
    let first = node
        .register(registration(serde_json::json!({"tags": ["a"]})), false)
        .await
        .unwrap();
    let revision = node.kv.revision();
    let again = node
        .register(registration(serde_json::json!({"tags": ["a"]})), false)
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.revision, first.revision);
    assert_eq!(
        node.kv.revision(),
        revision,
        "a repeated registration wrote"
    );
    assert_eq!(node.ids("web").await, vec!["web-1"]);
}

#[tokio::test]
async fn an_identical_ephemeral_registration_keeps_the_original_lease_and_releases_its_own() {
    let node = start().await;
    let ephemeral = || registration(serde_json::json!({"ttl": "10s"}));
    let first = node.register(ephemeral(), false).await.unwrap();
    assert!(first.lease != 0);
    assert!(first.instance.ephemeral);

    let again = node.register(ephemeral(), false).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.lease, first.lease);
    // The lease the repeated registration took is revoked in the background.
    eventually("only the instance's lease is left", async || {
        node.leases().await == BTreeSet::from([first.lease])
    })
    .await;
    assert_eq!(node.view.get(&web("web-1")).unwrap().lease, first.lease);
}

#[tokio::test]
async fn a_replacing_registration_overwrites_the_instance() {
    let node = start().await;
    node.register(registration(serde_json::json!({})), false)
        .await
        .unwrap();
    let replaced = node
        .register(
            registration(serde_json::json!({"port": 9090, "tags": ["v2"]})),
            true,
        )
        .await
        .unwrap();
    assert!(replaced.created);

    let found = node.query("web", &Query::default()).await.unwrap();
    assert_eq!(found.instances.len(), 1);
    assert_eq!(found.instances[0].port, 9090);
    assert_eq!(found.instances[0].tags, vec!["v2"]);
    assert_eq!(found.index, replaced.revision);
}

#[tokio::test]
async fn a_replacing_registration_keeps_the_status_only_when_the_check_is_unchanged() {
    let node = start().await;
    let r = web("web-1");
    let checked = |port: u32, ttl: &str| {
        registration(serde_json::json!({"port": port, "check": {"ttl": ttl}}))
    };
    let first = node.register(checked(8080, "1h"), false).await.unwrap();
    assert_eq!(
        first.instance.status,
        Health::Critical,
        "a checked instance starts critical"
    );
    node.report(&r, Health::Passing, "all good".into())
        .await
        .unwrap();
    node.caught_up().await;
    assert_eq!(node.view.get(&r).unwrap().instance.status, Health::Passing);

    let same_check = node.register(checked(9090, "1h"), true).await.unwrap();
    assert_eq!(same_check.instance.port, 9090);
    assert_eq!(same_check.instance.status, Health::Passing);
    assert_eq!(same_check.instance.output, "all good");

    let new_check = node.register(checked(9090, "2h"), true).await.unwrap();
    assert_eq!(new_check.instance.status, Health::Critical);
    node.caught_up().await;
    assert_eq!(node.view.get(&r).unwrap().instance.status, Health::Critical);
}

#[tokio::test]
async fn a_registration_that_fails_validation_writes_nothing() {
    let node = start().await;
    let revision = node.kv.revision();
    let both = node
        .register(
            registration(serde_json::json!({"ttl": "10s", "check": {"ttl": "10s"}})),
            false,
        )
        .await;
    assert_code(both, ErrorCode::BadRequest);
    assert_eq!(node.kv.revision(), revision);
    assert!(node.leases().await.is_empty(), "a lease was granted");
}

// ---- deregistration -----------------------------------------------------------------------

#[tokio::test]
async fn deregistering_removes_the_instance_and_a_second_deregister_is_not_found() {
    let node = start().await;
    node.register(registration(serde_json::json!({})), false)
        .await
        .unwrap();
    node.register(registration(serde_json::json!({"id": "web-2"})), false)
        .await
        .unwrap();
    let mut changes = node.view.subscribe();

    let revision = node.deregister(&web("web-1")).await.unwrap();
    assert_eq!(node.ids("web").await, vec!["web-2"]);
    let notice = changes.recv().await.unwrap();
    match &notice.change {
        Change::Delete {
            revision: at,
            instance,
        } => {
            assert_eq!(*at, revision);
            assert_eq!(instance, &web("web-1"));
        }
        other => panic!("expected a delete, got {other:?}"),
    }

    let store_revision = node.kv.revision();
    assert_code(node.deregister(&web("web-1")).await, ErrorCode::NotFound);
    assert_eq!(node.kv.revision(), store_revision);
    // A later registration under the same id is a fresh one.
    let back = node
        .register(registration(serde_json::json!({"port": 1})), false)
        .await
        .unwrap();
    assert!(back.created);
}

#[tokio::test]
async fn deregistering_an_ephemeral_instance_revokes_its_lease() {
    let node = start().await;
    let registered = node
        .register(registration(serde_json::json!({"ttl": "30s"})), false)
        .await
        .unwrap();
    assert!(node.leases().await.contains(&registered.lease));
    node.deregister(&web("web-1")).await.unwrap();
    eventually("the instance's lease is revoked", async || {
        !node.leases().await.contains(&registered.lease)
    })
    .await;
    assert_code(node.heartbeat(&web("web-1")).await, ErrorCode::NotFound);
}

// ---- ephemeral instances ------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_ephemeral_instance_lives_while_it_heartbeats_and_is_removed_when_its_lease_expires() {
    let node = start().await;
    let r = web("web-1");
    let registered = node
        .register(registration(serde_json::json!({"ttl": "10s"})), false)
        .await
        .unwrap();
    let lease = registered.lease;
    let mut changes = node.view.subscribe();

    advance(Duration::from_secs(6)).await;
    assert_eq!(node.heartbeat(&r).await.unwrap(), 10);
    advance(Duration::from_secs(6)).await;
    assert!(
        node.kv.expire_leases().is_empty(),
        "a lease renewed 6 s ago expired"
    );
    assert_eq!(node.ids("web").await, vec!["web-1"]);

    // Heartbeats stop.
    advance(Duration::from_secs(5)).await;
    assert_eq!(node.kv.expire_leases(), vec![lease]);
    node.caught_up().await;
    assert!(
        node.ids("web").await.is_empty(),
        "the expired instance is still listed"
    );
    assert!(node.view.get(&r).is_none());
    let notice = changes.recv().await.unwrap();
    assert!(
        matches!(&notice.change, Change::Delete { instance, .. } if instance == &r),
        "expected the instance's delete, got {:?}",
        notice.change
    );
    let e = assert_code(node.heartbeat(&r).await, ErrorCode::NotFound);
    assert!(e.message.contains("not registered"), "{}", e.message);
}

#[tokio::test]
async fn a_heartbeat_for_a_persistent_instance_is_refused() {
    let node = start().await;
    node.register(registration(serde_json::json!({})), false)
        .await
        .unwrap();
    assert_code(
        node.heartbeat(&web("web-1")).await,
        ErrorCode::FailedPrecondition,
    );
    assert_code(node.heartbeat(&web("nobody")).await, ErrorCode::NotFound);
}

// ---- check placement ----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_checked_instance_makes_the_node_a_check_runner_that_runs_its_check() {
    let node = start().await;
    let r = web("web-1");
    // No checked instance: the node stays out of the runner set and writes nothing.
    node.register(registration(serde_json::json!({"id": "plain"})), false)
        .await
        .unwrap();
    advance(Duration::from_secs(1)).await;
    assert!(node.view.live_nodes().is_empty());

    node.register(
        registration(serde_json::json!({"check": {"ttl": "1h"}})),
        false,
    )
    .await
    .unwrap();
    eventually("the node runs the check", async || {
        node.local_checks() == BTreeSet::from([r.clone()])
    })
    .await;
    assert_eq!(node.view.live_nodes(), vec![MEMORY_NODE_ID]);
    let check = node.local_checks.list().remove(0);
    assert_eq!(check.kind, "ttl");

    // Its liveness key outlives its lease's TTL: the node keeps the lease alive.
    let liveness = node
        .kv
        .range(RangeRequest {
            key: node_key(MEMORY_NODE_ID).into_bytes(),
            ..RangeRequest::default()
        })
        .await
        .unwrap()
        .kvs
        .remove(0)
        .lease;
    assert!(liveness != 0, "the liveness key has no lease");
    advance(Duration::from_secs(10)).await;
    assert!(
        !node.kv.expire_leases().contains(&liveness),
        "the node's liveness lease expired while it ran"
    );
    node.caught_up().await;
    assert_eq!(node.view.live_nodes(), vec![MEMORY_NODE_ID]);

    node.deregister(&r).await.unwrap();
    eventually("the node stops running the check", async || {
        node.local_checks().is_empty()
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn checks_are_split_over_the_live_nodes_and_taken_over_when_a_node_expires() {
    let node = start().await;
    // Another node's liveness key, on a lease that nobody renews.
    let other = 2;
    let other_lease = strata_store::grant(&*node.kv, 2).await.unwrap();
    node.kv
        .put(PutRequest {
            key: node_key(other).into_bytes(),
            value: other.to_string().into_bytes(),
            lease: other_lease,
            prev_kv: false,
            ..Default::default()
        })
        .await
        .unwrap();

    let refs: Vec<InstanceRef> = (0..24).map(|i| web(&format!("web-{i}"))).collect();
    for r in &refs {
        node.register(
            registration(serde_json::json!({"id": r.id, "check": {"ttl": "1h"}})),
            false,
        )
        .await
        .unwrap();
    }
    let both = [MEMORY_NODE_ID, other];
    let mine: BTreeSet<InstanceRef> = refs
        .iter()
        .filter(|r| owner(r, &both) == Some(MEMORY_NODE_ID))
        .cloned()
        .collect();
    assert!(
        !mine.is_empty() && mine.len() < refs.len(),
        "rendezvous hashing put all 24 checks on one node"
    );
    eventually("the node runs exactly its share", async || {
        node.view.live_nodes() == both.to_vec() && node.local_checks() == mine
    })
    .await;

    // The other node dies: its key expires with its lease and its checks move here.
    advance(Duration::from_secs(3)).await;
    assert!(node.kv.expire_leases().contains(&other_lease));
    let all: BTreeSet<InstanceRef> = refs.iter().cloned().collect();
    eventually("the node runs every check", async || {
        node.local_checks() == all
    })
    .await;
    assert_eq!(node.view.live_nodes(), vec![MEMORY_NODE_ID]);
}

// ---- TTL checks (wall clock) --------------------------------------------------------------

/// Polls on real time, expiring leases as the leader's lease clock would.
async fn eventually_expiring(node: &Node, what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        node.kv.expire_leases();
        if probe() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_ttl_check_that_stops_reporting_turns_critical_and_a_report_makes_it_passing_again() {
    let node = start().await;
    let r = web("web-1");
    node.register(
        registration(serde_json::json!({"check": {"ttl": "1s"}})),
        false,
    )
    .await
    .unwrap();
    node.report(&r, Health::Passing, "ok".into()).await.unwrap();
    node.caught_up().await;
    assert_eq!(node.view.get(&r).unwrap().instance.status, Health::Passing);
    assert!(node.view.ttl_marker(&r).is_some());
    let healthy = Query {
        passing: true,
        ..Query::default()
    };
    assert_eq!(
        node.query("web", &healthy).await.unwrap().instances.len(),
        1
    );

    eventually_expiring(&node, "the silent check turns critical", || {
        node.view
            .get(&r)
            .is_some_and(|s| s.instance.status == Health::Critical)
    })
    .await;
    let stored = node.view.get(&r).unwrap();
    assert!(
        stored.instance.output.contains("TTL expired"),
        "{}",
        stored.instance.output
    );
    assert!(node
        .query("web", &healthy)
        .await
        .unwrap()
        .instances
        .is_empty());

    node.report(&r, Health::Passing, "back".into())
        .await
        .unwrap();
    node.caught_up().await;
    let stored = node.view.get(&r).unwrap();
    assert_eq!(stored.instance.status, Health::Passing);
    assert_eq!(stored.instance.output, "back");
}

#[tokio::test]
async fn an_instance_critical_for_longer_than_deregister_critical_after_is_removed() {
    let node = start().await;
    let r = web("web-1");
    node.register(
        registration(serde_json::json!({
            "check": {"ttl": "1s", "deregister_critical_after": "1s"}
        })),
        false,
    )
    .await
    .unwrap();
    node.register(registration(serde_json::json!({"id": "web-2"})), false)
        .await
        .unwrap();
    assert_eq!(node.view.get(&r).unwrap().instance.status, Health::Critical);
    eventually_expiring(&node, "the critical instance is reaped", || {
        node.view.get(&r).is_none()
    })
    .await;
    assert_eq!(node.ids("web").await, vec!["web-2"]);
    let left = node
        .kv
        .range(RangeRequest {
            key: r.key().into_bytes(),
            ..RangeRequest::default()
        })
        .await
        .unwrap();
    assert!(
        left.kvs.is_empty(),
        "the store still holds the reaped instance"
    );
}

#[tokio::test]
async fn a_report_to_an_instance_without_a_ttl_check_is_refused() {
    let node = start().await;
    node.register(registration(serde_json::json!({})), false)
        .await
        .unwrap();
    assert_code(
        node.report(&web("web-1"), Health::Passing, String::new())
            .await,
        ErrorCode::FailedPrecondition,
    );
    assert_code(
        node.report(&web("nobody"), Health::Passing, String::new())
            .await,
        ErrorCode::NotFound,
    );
}

// ---- queries ------------------------------------------------------------------------------

#[tokio::test]
async fn a_healthy_only_query_returns_every_enabled_instance_below_the_protection_threshold() {
    let node = start().await;
    node.register(registration(serde_json::json!({"id": "up"})), false)
        .await
        .unwrap();
    for id in ["down-1", "down-2"] {
        node.register(
            registration(serde_json::json!({"id": id, "status": "critical"})),
            false,
        )
        .await
        .unwrap();
    }
    node.register(
        registration(serde_json::json!({"id": "off", "status": "critical", "enabled": false})),
        false,
    )
    .await
    .unwrap();
    let healthy = Query {
        passing: true,
        ..Query::default()
    };
    let ids = |result: &strata_registry::QueryResult| -> BTreeSet<String> {
        result.instances.iter().map(|i| i.id.clone()).collect()
    };

    let plain = node.query("web", &healthy).await.unwrap();
    assert!(!plain.protected);
    assert_eq!(ids(&plain), BTreeSet::from(["up".to_string()]));

    node.set_settings(
        None,
        "web",
        ServiceSettings {
            protect_threshold: 0.5,
        },
    )
    .await
    .unwrap();
    let protected = node.query("web", &healthy).await.unwrap();
    assert!(protected.protected);
    assert_eq!(
        ids(&protected),
        ["up", "down-1", "down-2"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );

    assert_code(
        node.set_settings(
            None,
            "web",
            ServiceSettings {
                protect_threshold: 1.5,
            },
        )
        .await,
        ErrorCode::BadRequest,
    );
}

#[tokio::test(start_paused = true)]
async fn a_blocking_query_returns_when_its_service_changes_and_times_out_otherwise() {
    let node = start().await;
    let first = node
        .register(registration(serde_json::json!({})), false)
        .await
        .unwrap();
    let index = node.query("web", &Query::default()).await.unwrap().index;
    assert_eq!(index, first.revision);
    let blocking = Query {
        index,
        wait: Some(Duration::from_secs(60)),
        ..Query::default()
    };

    let (woken, other_service, second) = tokio::join!(
        node.query("web", &blocking),
        node.register(
            registration(serde_json::json!({"service": "api", "id": "api-1"})),
            false,
        ),
        async {
            node.register(registration(serde_json::json!({"id": "web-2"})), false)
                .await
        },
    );
    other_service.unwrap();
    let second = second.unwrap();
    let woken = woken.unwrap();
    assert_eq!(woken.index, second.revision);
    assert_eq!(woken.instances.len(), 2);

    // Nothing changes: the query waits its full time and returns the same index.
    let started = tokio::time::Instant::now();
    let idle = node
        .query(
            "web",
            &Query {
                index: woken.index,
                ..blocking
            },
        )
        .await
        .unwrap();
    assert_eq!(idle.index, woken.index);
    assert!(started.elapsed() >= Duration::from_secs(60));
}
