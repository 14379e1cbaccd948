//! The config center's domain logic on the in-memory KV API ([`MemoryKv`]), without processes:
//! compare-and-set publishes, history retention, rollback, gray release, delete, encryption
//! and long polls. Each "node" is a `ConfigCenter` started with its own view on one shared
//! store, as the nodes of a cluster share the replicated store.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use strata_configcenter::cipher::Cipher;
use strata_configcenter::model::{md5_hex, ClientIdentity, ConfigKey, GrayRule, Operation};
use strata_configcenter::validate::ConfigType;
use strata_configcenter::{ConfigCenter, Publish, Settings};
use strata_proto::error::{ApiError, ErrorCode};
use strata_proto::kv::{PutRequest, RangeRequest};
use strata_store::memory::MemoryKv;
use strata_store::KvApi;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest a test waits for a view to reflect a write.
const CATCH_UP: Duration = Duration::from_secs(10);

/// One node's config center; stops its tasks when dropped.
struct Node {
    center: Arc<ConfigCenter>,
    cancel: CancellationToken,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl std::ops::Deref for Node {
    type Target = ConfigCenter;
    fn deref(&self) -> &ConfigCenter {
        &self.center
    }
}

fn start_node(kv: &Arc<MemoryKv>, cipher: Option<Cipher>, settings: Settings) -> Node {
    let cancel = CancellationToken::new();
    let store: Arc<dyn KvApi> = kv.clone();
    let center = strata_configcenter::start(
        store,
        cipher,
        settings,
        &prometheus::Registry::new(),
        &TaskTracker::new(),
        cancel.clone(),
    )
    .unwrap();
    Node { center, cancel }
}

fn retention(versions: u64) -> Settings {
    Settings {
        history_retention: versions,
        ..Settings::default()
    }
}

/// A store and one node on it whose view has loaded.
async fn single(settings: Settings) -> (Arc<MemoryKv>, Node) {
    let kv = Arc::new(MemoryKv::new());
    let node = start_node(&kv, None, settings);
    caught_up(&node, &kv).await;
    (kv, node)
}

/// Waits (bounded) until `node`'s view has applied everything the store has.
async fn caught_up(node: &Node, kv: &MemoryKv) {
    let revision = kv.revision();
    assert!(
        node.view.wait_for(revision, CATCH_UP).await,
        "the view stayed at revision {} below the store's {revision}",
        node.view.revision()
    );
}

fn key(data_id: &str) -> ConfigKey {
    ConfigKey::new(None, None, data_id).unwrap()
}

fn publish(data_id: &str, content: &str) -> Publish {
    Publish {
        data_id: data_id.into(),
        content: content.into(),
        ..Publish::default()
    }
}

fn anyone() -> ClientIdentity {
    ClientIdentity::default()
}

fn at_ip(ip: &str) -> ClientIdentity {
    ClientIdentity {
        ip: Some(ip.into()),
        labels: BTreeMap::new(),
    }
}

fn labelled(pairs: &[(&str, &str)]) -> ClientIdentity {
    ClientIdentity {
        ip: Some("10.9.9.9".into()),
        labels: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn assert_code<T: std::fmt::Debug>(result: Result<T, ApiError>, code: ErrorCode) -> ApiError {
    match result {
        Err(e) if e.code == code => e,
        other => panic!("expected a {code:?} error, got {other:?}"),
    }
}

async fn history_versions(node: &Node, key: &ConfigKey) -> Vec<(u64, Operation)> {
    node.history(key, false)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.version, e.op))
        .collect()
}

// ---- publish and compare-and-set -------------------------------------------------------

#[tokio::test]
async fn a_publish_conditioned_on_the_current_version_succeeds_and_one_on_a_stale_version_is_refused(
) {
    let (kv, node) = single(Settings::default()).await;
    let k = key("app.properties");

    let created = node
        .publish(
            Publish {
                if_version: Some(0),
                ..publish("app.properties", "a=1")
            },
            "test",
        )
        .await
        .unwrap();
    assert_eq!(created.version, 1);

    let again = node
        .publish(
            Publish {
                if_version: Some(0),
                ..publish("app.properties", "a=other")
            },
            "test",
        )
        .await;
    assert_code(again, ErrorCode::FailedPrecondition);

    let second = node
        .publish(
            Publish {
                if_version: Some(1),
                ..publish("app.properties", "a=2")
            },
            "test",
        )
        .await
        .unwrap();
    assert_eq!(second.version, 2);

    let revision_before = kv.revision();
    let stale = node
        .publish(
            Publish {
                if_version: Some(1),
                ..publish("app.properties", "a=stale")
            },
            "test",
        )
        .await;
    let e = assert_code(stale, ErrorCode::FailedPrecondition);
    assert!(e.message.contains("current version is 2"), "{}", e.message);
    assert_eq!(kv.revision(), revision_before, "a refused publish wrote");

    caught_up(&node, &kv).await;
    let served = node.get(&k, &anyone()).unwrap();
    assert_eq!((served.content.as_str(), served.version), ("a=2", 2));
    assert_eq!(
        history_versions(&node, &k).await,
        vec![(1, Operation::Publish), (2, Operation::Publish)]
    );
}

#[tokio::test]
async fn a_publish_conditioned_on_a_stale_md5_is_refused_and_one_on_the_current_md5_succeeds() {
    let (kv, node) = single(Settings::default()).await;
    let k = key("db.yaml");
    node.publish(publish("db.yaml", "port: 1"), "test")
        .await
        .unwrap();
    node.publish(publish("db.yaml", "port: 2"), "test")
        .await
        .unwrap();

    let stale = node
        .publish(
            Publish {
                if_md5: Some(md5_hex("port: 1")),
                ..publish("db.yaml", "port: 3")
            },
            "test",
        )
        .await;
    assert_code(stale, ErrorCode::FailedPrecondition);

    let only_if_absent = node
        .publish(
            Publish {
                if_md5: Some(String::new()),
                ..publish("db.yaml", "port: 3")
            },
            "test",
        )
        .await;
    assert_code(only_if_absent, ErrorCode::FailedPrecondition);

    let current = node
        .publish(
            Publish {
                if_md5: Some(md5_hex("port: 2")),
                ..publish("db.yaml", "port: 3")
            },
            "test",
        )
        .await
        .unwrap();
    assert_eq!(current.version, 3);
    assert_eq!(current.md5, md5_hex("port: 3"));
    caught_up(&node, &kv).await;
    assert_eq!(node.get(&k, &anyone()).unwrap().content, "port: 3");
}

#[tokio::test]
async fn publishes_racing_from_two_nodes_get_distinct_consecutive_versions() {
    let kv = Arc::new(MemoryKv::new());
    let a = start_node(&kv, None, Settings::default());
    let b = start_node(&kv, None, Settings::default());
    caught_up(&a, &kv).await;
    caught_up(&b, &kv).await;
    let k = key("race.txt");

    // Each publish reads its node's view, which lags the other node's writes: the losers
    // must fail their compare-and-set and retry on the fresh view.
    let (r1, r2, r3, r4) = tokio::join!(
        a.publish(publish("race.txt", "from a, first"), "a"),
        b.publish(publish("race.txt", "from b, first"), "b"),
        a.publish(publish("race.txt", "from a, second"), "a"),
        b.publish(publish("race.txt", "from b, second"), "b"),
    );
    let items = [r1.unwrap(), r2.unwrap(), r3.unwrap(), r4.unwrap()];
    let mut versions: Vec<u64> = items.iter().map(|i| i.version).collect();
    versions.sort_unstable();
    assert_eq!(versions, vec![1, 2, 3, 4]);

    let history = a.history(&k, true).await.unwrap();
    assert_eq!(history.len(), 4);
    for item in &items {
        let entry = history.iter().find(|e| e.version == item.version).unwrap();
        assert_eq!(entry.content, item.content, "version {}", item.version);
    }

    caught_up(&a, &kv).await;
    caught_up(&b, &kv).await;
    let newest = items.iter().max_by_key(|i| i.version).unwrap();
    for node in [&a, &b] {
        let served = node.get(&k, &anyone()).unwrap();
        assert_eq!(served.version, 4);
        assert_eq!(served.content, newest.content);
    }
}

#[tokio::test]
async fn content_that_does_not_parse_as_its_declared_type_is_refused_and_writes_nothing() {
    let (kv, node) = single(Settings::default()).await;
    let typed: Publish = Publish {
        kind: Some(ConfigType::Json),
        ..publish("settings.json", "{\"a\": 1}")
    };
    node.publish(typed, "test").await.unwrap();
    let revision = kv.revision();
    // The type is kept from the current version when a publish names none.
    let broken = node
        .publish(publish("settings.json", "{not json"), "test")
        .await;
    assert_code(broken, ErrorCode::BadRequest);
    assert_eq!(kv.revision(), revision);
    assert_eq!(
        node.get(&key("settings.json"), &anyone()).unwrap().content,
        "{\"a\": 1}"
    );
}

// ---- history retention --------------------------------------------------------------------

#[tokio::test]
async fn history_keeps_only_the_configured_number_of_versions() {
    let (_kv, node) = single(retention(3)).await;
    let k = key("kept.txt");
    for n in 1..=5 {
        let item = node
            .publish(publish("kept.txt", &format!("v{n}")), "test")
            .await
            .unwrap();
        assert_eq!(item.version, n);
    }
    let history = node.history(&k, true).await.unwrap();
    let kept: Vec<(u64, &str)> = history
        .iter()
        .map(|e| (e.version, e.content.as_str()))
        .collect();
    assert_eq!(kept, vec![(3, "v3"), (4, "v4"), (5, "v5")]);
    assert_code(node.version(&k, 2).await, ErrorCode::NotFound);
    assert_eq!(node.version(&k, 3).await.unwrap().content, "v3");
}

#[tokio::test]
async fn lowering_the_retention_drops_every_version_outside_the_new_window_at_the_next_publish() {
    let kv = Arc::new(MemoryKv::new());
    let generous = start_node(&kv, None, retention(10));
    caught_up(&generous, &kv).await;
    for n in 1..=6 {
        generous
            .publish(publish("shrink.txt", &format!("v{n}")), "test")
            .await
            .unwrap();
    }
    drop(generous);

    // The node restarts with a smaller window.
    let strict = start_node(&kv, None, retention(2));
    caught_up(&strict, &kv).await;
    let item = strict
        .publish(publish("shrink.txt", "v7"), "test")
        .await
        .unwrap();
    assert_eq!(item.version, 7);
    assert_eq!(
        history_versions(&strict, &key("shrink.txt")).await,
        vec![(6, Operation::Publish), (7, Operation::Publish)]
    );
}

// ---- rollback -----------------------------------------------------------------------------

#[tokio::test]
async fn a_rollback_publishes_the_old_content_as_a_new_version() {
    let (kv, node) = single(Settings::default()).await;
    let k = key("app.properties");
    for content in ["a=1", "a=2", "a=3"] {
        node.publish(publish("app.properties", content), "test")
            .await
            .unwrap();
    }

    let rolled = node.rollback(&k, 1, "operator").await.unwrap();
    assert_eq!(rolled.version, 4);
    assert_eq!(rolled.content, "a=1");
    assert_eq!(rolled.md5, md5_hex("a=1"));

    caught_up(&node, &kv).await;
    let served = node.get(&k, &anyone()).unwrap();
    assert_eq!((served.content.as_str(), served.version), ("a=1", 4));
    assert_eq!(served.md5, md5_hex("a=1"));

    let history = node.history(&k, true).await.unwrap();
    let entries: Vec<(u64, Operation, &str)> = history
        .iter()
        .map(|e| (e.version, e.op, e.content.as_str()))
        .collect();
    assert_eq!(
        entries,
        vec![
            (1, Operation::Publish, "a=1"),
            (2, Operation::Publish, "a=2"),
            (3, Operation::Publish, "a=3"),
            (4, Operation::Rollback, "a=1"),
        ]
    );
    assert_eq!(history[3].source, "operator");
    let diff = node.diff(&k, 3, 4).await.unwrap();
    assert!(
        diff.contains("-a=3") && diff.contains("+a=1"),
        "unexpected diff:\n{diff}"
    );
}

#[tokio::test]
async fn a_rollback_to_a_version_outside_the_retention_window_is_not_found_and_changes_nothing() {
    let (kv, node) = single(retention(2)).await;
    let k = key("short.txt");
    for n in 1..=3 {
        node.publish(publish("short.txt", &format!("v{n}")), "test")
            .await
            .unwrap();
    }
    let revision = kv.revision();
    let e = assert_code(node.rollback(&k, 1, "test").await, ErrorCode::NotFound);
    assert!(e.message.contains("history_retention"), "{}", e.message);
    assert_eq!(kv.revision(), revision);
    assert_eq!(node.get(&k, &anyone()).unwrap().version, 3);
}

#[tokio::test]
async fn a_rollback_to_a_delete_is_refused() {
    let (kv, node) = single(Settings::default()).await;
    let k = key("gone.txt");
    node.publish(publish("gone.txt", "x"), "test")
        .await
        .unwrap();
    let deleted = node.delete(&k, "test").await.unwrap();
    assert_eq!(deleted, 2);
    let revision = kv.revision();
    assert_code(node.rollback(&k, 2, "test").await, ErrorCode::BadRequest);
    assert_eq!(kv.revision(), revision);
}

#[tokio::test]
async fn a_rollback_of_a_deleted_config_brings_it_back_under_the_next_version() {
    let (kv, node) = single(Settings::default()).await;
    let k = key("revived.txt");
    node.publish(publish("revived.txt", "first"), "test")
        .await
        .unwrap();
    node.delete(&k, "test").await.unwrap();
    caught_up(&node, &kv).await;
    assert_code(node.get(&k, &anyone()), ErrorCode::NotFound);

    let back = node.rollback(&k, 1, "test").await.unwrap();
    assert_eq!(back.version, 3);
    caught_up(&node, &kv).await;
    let served = node.get(&k, &anyone()).unwrap();
    assert_eq!((served.content.as_str(), served.version), ("first", 3));
}

// ---- gray release -------------------------------------------------------------------------

#[tokio::test]
async fn a_gray_release_is_served_only_to_clients_its_rule_matches() {
    let (kv, node) = single(Settings::default()).await;
    let k = key("feature.properties");
    node.publish(publish("feature.properties", "flag=off"), "test")
        .await
        .unwrap();

    let gray = node
        .gray(
            &k,
            "flag=on",
            GrayRule::Ips(vec!["10.0.0.7".into(), "10.0.0.8".into()]),
        )
        .await
        .unwrap();
    assert_eq!(gray.md5, md5_hex("flag=on"));
    caught_up(&node, &kv).await;

    let canary = node.get(&k, &at_ip("10.0.0.7")).unwrap();
    assert!(canary.gray);
    assert_eq!(canary.content, "flag=on");
    assert_eq!(canary.md5, md5_hex("flag=on"));
    assert_eq!(canary.version, 1, "a gray read names the main version");
    for other in [anyone(), at_ip("10.0.0.9")] {
        let served = node.get(&k, &other).unwrap();
        assert!(!served.gray, "{other:?} got the gray release");
        assert_eq!(served.content, "flag=off");
    }
    assert_eq!(node.md5_for(&k, &at_ip("10.0.0.8")), md5_hex("flag=on"));
    assert_eq!(node.md5_for(&k, &at_ip("10.0.0.9")), md5_hex("flag=off"));
    assert!(node.list("public", None, None, None)[0].gray);

    // Replacing the rule: labels, all of which a client must carry.
    node.gray(
        &k,
        "flag=labels",
        GrayRule::Labels(
            [("env", "canary"), ("zone", "a")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
    )
    .await
    .unwrap();
    caught_up(&node, &kv).await;
    let both = node
        .get(
            &k,
            &labelled(&[("env", "canary"), ("zone", "a"), ("x", "y")]),
        )
        .unwrap();
    assert!(both.gray);
    assert_eq!(both.content, "flag=labels");
    let one = node.get(&k, &labelled(&[("env", "canary")])).unwrap();
    assert!(
        !one.gray,
        "a client with only some of the labels got the gray release"
    );
    assert!(
        !node.get(&k, &at_ip("10.0.0.7")).unwrap().gray,
        "the replaced IP rule still applies"
    );
}

#[tokio::test]
async fn promoting_a_gray_release_publishes_its_content_to_everyone_as_a_new_version() {
    let (kv, node) = single(Settings::default()).await;
    let k = key("feature.properties");
    node.publish(publish("feature.properties", "flag=off"), "test")
        .await
        .unwrap();
    node.gray(&k, "flag=on", GrayRule::Ips(vec!["10.0.0.7".into()]))
        .await
        .unwrap();

    let promoted = node.gray_promote(&k, "operator").await.unwrap();
    assert_eq!(promoted.version, 2);
    assert_eq!(promoted.content, "flag=on");

    caught_up(&node, &kv).await;
    assert!(
        node.view.gray(&k).is_none(),
        "the gray release is still running"
    );
    for client in [anyone(), at_ip("10.0.0.7")] {
        let served = node.get(&k, &client).unwrap();
        assert!(!served.gray);
        assert_eq!((served.content.as_str(), served.version), ("flag=on", 2));
    }
    assert_eq!(
        history_versions(&node, &k).await,
        vec![(1, Operation::Publish), (2, Operation::GrayPromote)]
    );
    assert_code(node.gray_promote(&k, "operator").await, ErrorCode::NotFound);
}

#[tokio::test]
async fn aborting_a_gray_release_serves_the_current_version_to_everyone_without_a_new_version() {
    let (kv, node) = single(Settings::default()).await;
    let k = key("feature.properties");
    node.publish(publish("feature.properties", "flag=off"), "test")
        .await
        .unwrap();
    node.gray(&k, "flag=on", GrayRule::Ips(vec!["10.0.0.7".into()]))
        .await
        .unwrap();
    caught_up(&node, &kv).await;
    assert!(node.get(&k, &at_ip("10.0.0.7")).unwrap().gray);

    node.gray_abort(&k).await.unwrap();
    caught_up(&node, &kv).await;
    let served = node.get(&k, &at_ip("10.0.0.7")).unwrap();
    assert!(!served.gray);
    assert_eq!((served.content.as_str(), served.version), ("flag=off", 1));
    assert_eq!(
        history_versions(&node, &k).await,
        vec![(1, Operation::Publish)]
    );
    assert_code(node.gray_abort(&k).await, ErrorCode::NotFound);
    assert_code(node.gray_promote(&k, "test").await, ErrorCode::NotFound);
}

#[tokio::test]
async fn a_gray_release_needs_an_existing_config_and_a_non_empty_rule() {
    let (kv, node) = single(Settings::default()).await;
    let k = key("feature.properties");
    assert_code(
        node.gray(&k, "x", GrayRule::Ips(vec!["10.0.0.1".into()]))
            .await,
        ErrorCode::NotFound,
    );
    node.publish(publish("feature.properties", "flag=off"), "test")
        .await
        .unwrap();
    let revision = kv.revision();
    assert_code(
        node.gray(&k, "x", GrayRule::Ips(Vec::new())).await,
        ErrorCode::BadRequest,
    );
    assert_code(
        node.gray(&k, "x", GrayRule::Labels(BTreeMap::new())).await,
        ErrorCode::BadRequest,
    );
    assert_eq!(kv.revision(), revision);
}

#[tokio::test(start_paused = true)]
async fn a_promote_never_publishes_a_gray_release_that_was_replaced_meanwhile() {
    let kv = Arc::new(MemoryKv::new());
    let a = start_node(&kv, None, Settings::default());
    let b = start_node(&kv, None, Settings::default());
    let k = key("feature.properties");
    a.publish(publish("feature.properties", "flag=off"), "a")
        .await
        .unwrap();
    a.gray(&k, "candidate one", GrayRule::Ips(vec!["10.0.0.7".into()]))
        .await
        .unwrap();
    caught_up(&a, &kv).await;
    caught_up(&b, &kv).await;

    // Node b replaces the candidate while node a, whose view still shows the first one,
    // promotes: a must not publish the candidate nobody is testing any more.
    let (replaced, promoted) = tokio::join!(
        b.gray(&k, "candidate two", GrayRule::Ips(vec!["10.0.0.7".into()])),
        a.gray_promote(&k, "a"),
    );
    replaced.unwrap();
    assert!(
        promoted.is_err(),
        "promoted a replaced candidate: {promoted:?}"
    );

    caught_up(&a, &kv).await;
    let served = a.get(&k, &anyone()).unwrap();
    assert_eq!((served.content.as_str(), served.version), ("flag=off", 1));
    assert_eq!(
        a.get(&k, &at_ip("10.0.0.7")).unwrap().content,
        "candidate two"
    );
    assert_eq!(
        history_versions(&a, &k).await,
        vec![(1, Operation::Publish)]
    );
}

// ---- delete -------------------------------------------------------------------------------

#[tokio::test]
async fn a_delete_removes_the_config_and_keeps_its_history() {
    let (kv, node) = single(Settings::default()).await;
    let k = key("old.txt");
    node.publish(publish("old.txt", "one"), "test")
        .await
        .unwrap();
    node.publish(publish("old.txt", "two"), "test")
        .await
        .unwrap();

    let version = node.delete(&k, "operator").await.unwrap();
    assert_eq!(version, 3);
    caught_up(&node, &kv).await;
    assert_code(node.get(&k, &anyone()), ErrorCode::NotFound);
    assert_eq!(node.md5_for(&k, &anyone()), "");
    assert!(node.list("public", None, None, None).is_empty());

    let history = node.history(&k, true).await.unwrap();
    let entries: Vec<(u64, Operation, &str)> = history
        .iter()
        .map(|e| (e.version, e.op, e.content.as_str()))
        .collect();
    assert_eq!(
        entries,
        vec![
            (1, Operation::Publish, "one"),
            (2, Operation::Publish, "two"),
            (3, Operation::Delete, ""),
        ]
    );
    assert_code(node.delete(&k, "operator").await, ErrorCode::NotFound);
}

#[tokio::test]
async fn a_delete_keeps_the_history_within_the_retention() {
    let (kv, node) = single(Settings {
        history_retention: 3,
        ..Settings::default()
    })
    .await;
    let k = key("short.txt");
    for content in ["one", "two", "three"] {
        node.publish(publish("short.txt", content), "test")
            .await
            .unwrap();
    }
    assert_eq!(node.delete(&k, "operator").await.unwrap(), 4);
    caught_up(&node, &kv).await;
    let versions: Vec<u64> = node
        .history(&k, true)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, vec![2, 3, 4]);
}

#[tokio::test]
async fn versions_are_never_reused_after_a_delete_even_by_a_restarted_node() {
    let kv = Arc::new(MemoryKv::new());
    let k = key("phoenix.txt");
    let first = start_node(&kv, None, Settings::default());
    caught_up(&first, &kv).await;
    first
        .publish(publish("phoenix.txt", "one"), "test")
        .await
        .unwrap();
    first.delete(&k, "test").await.unwrap();
    let again = first
        .publish(publish("phoenix.txt", "two"), "test")
        .await
        .unwrap();
    assert_eq!(again.version, 3);
    first.delete(&k, "test").await.unwrap();
    drop(first);

    // A node that starts now learns the highest version from the history alone.
    let restarted = start_node(&kv, None, Settings::default());
    caught_up(&restarted, &kv).await;
    let item = restarted
        .publish(publish("phoenix.txt", "three"), "test")
        .await
        .unwrap();
    assert_eq!(item.version, 5);
}

#[tokio::test]
async fn deleting_a_config_ends_its_gray_release() {
    let (kv, node) = single(Settings::default()).await;
    let k = key("feature.properties");
    node.publish(publish("feature.properties", "flag=off"), "test")
        .await
        .unwrap();
    node.gray(&k, "flag=on", GrayRule::Ips(vec!["10.0.0.7".into()]))
        .await
        .unwrap();
    node.delete(&k, "test").await.unwrap();
    node.publish(publish("feature.properties", "flag=fresh"), "test")
        .await
        .unwrap();
    caught_up(&node, &kv).await;
    let served = node.get(&k, &at_ip("10.0.0.7")).unwrap();
    assert!(!served.gray, "a gray release survived the delete");
    assert_eq!(served.content, "flag=fresh");
}

// ---- encryption ---------------------------------------------------------------------------

#[tokio::test]
async fn a_cipher_config_is_stored_encrypted_and_served_plain() {
    let kv = Arc::new(MemoryKv::new());
    let cipher = Cipher::from_key(&"7f".repeat(32)).unwrap();
    let node = start_node(&kv, Some(cipher), Settings::default());
    caught_up(&node, &kv).await;
    let k = key("cipher-db.password");

    let item = node
        .publish(publish("cipher-db.password", "hunter2-secret"), "test")
        .await
        .unwrap();
    assert_eq!(item.md5, md5_hex("hunter2-secret"));

    let stored = kv
        .range(RangeRequest {
            key: b"/strata/config/".to_vec(),
            prefix: true,
            ..RangeRequest::default()
        })
        .await
        .unwrap();
    assert!(stored.kvs.len() >= 2, "item and history entry");
    for kv in &stored.kvs {
        let text = String::from_utf8_lossy(&kv.value);
        assert!(!text.contains("hunter2"), "plain text stored: {text}");
        assert!(!text.contains(&md5_hex("hunter2-secret")), "digest stored");
    }

    caught_up(&node, &kv).await;
    let served = node.get(&k, &anyone()).unwrap();
    assert_eq!(served.content, "hunter2-secret");
    assert_eq!(served.md5, md5_hex("hunter2-secret"));
    assert_eq!(
        node.history(&k, true).await.unwrap()[0].content,
        "hunter2-secret"
    );

    // A node without the key refuses to write a cipher- config rather than store it plain.
    let keyless = start_node(&kv, None, Settings::default());
    caught_up(&keyless, &kv).await;
    assert_code(
        keyless
            .publish(publish("cipher-other", "plain?"), "test")
            .await,
        ErrorCode::FailedPrecondition,
    );
    assert_code(keyless.get(&k, &anyone()), ErrorCode::FailedPrecondition);
}

// ---- long polls ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_long_poll_returns_the_config_a_publish_changed() {
    let (_kv, node) = single(Settings::default()).await;
    let k = key("watched.txt");
    let other = key("unrelated.txt");
    node.publish(publish("watched.txt", "v1"), "test")
        .await
        .unwrap();
    node.publish(publish("unrelated.txt", "x"), "test")
        .await
        .unwrap();
    let watched = vec![(k.clone(), md5_hex("v1"))];
    let client = anyone();

    let (changed, ()) = tokio::join!(
        node.wait_changed(&watched, &client, Duration::from_secs(30)),
        async {
            node.publish(publish("unrelated.txt", "y"), "test")
                .await
                .unwrap();
            node.publish(publish("watched.txt", "v2"), "test")
                .await
                .unwrap();
        }
    );
    assert_eq!(changed, vec![k.clone()]);

    // Up to date and nothing changes: the poll times out empty.
    let current = vec![(k, md5_hex("v2")), (other, md5_hex("y"))];
    assert!(node
        .wait_changed(&current, &anyone(), Duration::from_secs(30))
        .await
        .is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_gray_release_wakes_the_long_polls_of_matching_clients_only() {
    let (_kv, node) = single(Settings::default()).await;
    let k = key("feature.properties");
    node.publish(publish("feature.properties", "flag=off"), "test")
        .await
        .unwrap();
    let watched = vec![(k.clone(), md5_hex("flag=off"))];
    let (matching, other) = (at_ip("10.0.0.7"), at_ip("10.0.0.9"));

    let (canary, bystander, ()) = tokio::join!(
        node.wait_changed(&watched, &matching, Duration::from_secs(30)),
        node.wait_changed(&watched, &other, Duration::from_secs(30)),
        async {
            node.gray(&k, "flag=on", GrayRule::Ips(vec!["10.0.0.7".into()]))
                .await
                .unwrap();
        }
    );
    assert_eq!(canary, vec![k]);
    assert!(
        bystander.is_empty(),
        "a non-matching client was told to re-read"
    );
}

// ---- the view ----------------------------------------------------------------------------

#[tokio::test]
async fn a_node_started_on_an_existing_store_serves_what_is_there() {
    let kv = Arc::new(MemoryKv::new());
    let writer = start_node(&kv, None, Settings::default());
    caught_up(&writer, &kv).await;
    writer
        .publish(publish("existing.txt", "hello"), "test")
        .await
        .unwrap();
    writer
        .gray(
            &key("existing.txt"),
            "hello canary",
            GrayRule::Ips(vec!["10.0.0.7".into()]),
        )
        .await
        .unwrap();
    // Garbage under the prefix is skipped, not fatal.
    kv.put(PutRequest {
        key: b"/strata/config/items/public/DEFAULT_GROUP/broken".to_vec(),
        value: b"{not json".to_vec(),
        ..PutRequest::default()
    })
    .await
    .unwrap();

    let reader = start_node(&kv, None, Settings::default());
    caught_up(&reader, &kv).await;
    let k = key("existing.txt");
    assert_eq!(reader.get(&k, &anyone()).unwrap().content, "hello");
    assert_eq!(
        reader.get(&k, &at_ip("10.0.0.7")).unwrap().content,
        "hello canary"
    );
    assert_code(reader.get(&key("broken"), &anyone()), ErrorCode::NotFound);
    assert_eq!(reader.list("public", None, None, None).len(), 1);
}
