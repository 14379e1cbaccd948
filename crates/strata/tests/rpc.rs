//! The RPC consumer's discovery (`strata-rpc`) against a real `strata server`: it follows a
//! service's passing instances as they register and deregister, and spreads calls over
//! them with the gateway's balancing policies.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use strata_resilience::balance::Balance;
use strata_rpc::{Discovery, Selector};

async fn register(node: &NodeProc, id: &str, port: u16, tags: &[&str]) {
    let response = http_client()
        .post(format!("{}/v1/registry/instances", node.url()))
        .json(
            &json!({"service": "orders", "id": id, "address": "127.0.0.1", "port": port,
                      "tags": tags}),
        )
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
}

async fn deregister(node: &NodeProc, id: &str) {
    let response = http_client()
        .delete(format!(
            "{}/v1/registry/services/orders/instances/{id}",
            node.url()
        ))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
}

fn ids(discovery: &Discovery) -> Vec<String> {
    let mut ids: Vec<String> = discovery
        .members()
        .endpoints
        .iter()
        .map(|e| e.id.clone())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_discovery_follows_registrations_within_a_second_and_balances() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(1, dir.path(), Some("1=127.0.0.1:0"), &[]).await;
    let client = node.client();
    let discovery = Discovery::follow(
        client,
        Selector {
            service: "orders".into(),
            tags: vec!["v1".into()],
            balance: Balance::RoundRobin,
            ..Default::default()
        },
    );
    assert!(discovery.ready(Duration::from_secs(20)).await);
    assert!(discovery.pick(None).is_none(), "no instance yet");
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        register(&node, id, 9000 + i as u16, &["v1"]).await;
    }
    // Another tag: not selected.
    register(&node, "other", 9100, &["v2"]).await;
    let started = Instant::now();
    wait_until(Duration::from_secs(5), "three instances", || async {
        (ids(&discovery) == ["a", "b", "c"]).then_some(())
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..300 {
        *counts
            .entry(discovery.pick(None).unwrap().id.clone())
            .or_default() += 1;
    }
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [100, 100, 100]
    );
    // A deregistered instance leaves the set within a second.
    deregister(&node, "b").await;
    let started = Instant::now();
    wait_until(Duration::from_secs(5), "b to leave", || async {
        (ids(&discovery) == ["a", "c"]).then_some(())
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    for _ in 0..50 {
        assert_ne!(discovery.pick(None).unwrap().id, "b");
    }
    node.assert_no_panic();
}
