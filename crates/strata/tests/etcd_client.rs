//! The `etcd-client` crate (an independent etcd v3 client library) against a real 3-node
//! Strata cluster: a watch resumed across a kill -9 of the leader, and two lock contenders.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Cluster, GRPC_ON_ANY_PORT};
use etcd_client::{Client, GetOptions, LockOptions, WatchOptions};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn connect(endpoints: &[String]) -> Client {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(endpoints, None).await {
            Ok(client) => return client,
            Err(e) if Instant::now() < deadline => {
                eprintln!("connect failed, retrying: {e}");
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("cannot connect to {endpoints:?}: {e}"),
        }
    }
}

/// Reads events from `from` on `prefix` through `endpoint` until the stream breaks or every
/// revision in `wanted` has been seen; returns the mod revisions delivered, in order.
async fn watch_until(
    endpoint: &str,
    prefix: &str,
    from: i64,
    wanted: &BTreeSet<i64>,
    delivered: &mut Vec<i64>,
) -> bool {
    let Ok(mut client) = Client::connect([endpoint], None).await else {
        return false;
    };
    let options = WatchOptions::new().with_prefix().with_start_revision(from);
    let Ok(mut stream) = client.watch(prefix, Some(options)).await else {
        return false;
    };
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), stream.message()).await;
        let Ok(Ok(Some(response))) = message else {
            return false;
        };
        for event in response.events() {
            delivered.push(event.kv().unwrap().mod_revision());
        }
        let seen: BTreeSet<i64> = delivered.iter().copied().collect();
        if !wanted.is_empty() && wanted.is_subset(&seen) {
            return true;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_watch_resumed_across_leader_kill_has_no_gap_or_duplicate() {
    let mut cluster = Cluster::start(3, GRPC_ON_ANY_PORT).await;
    let grpc = cluster.grpc_endpoints();
    let mut writer = connect(&grpc).await;
    let start = writer
        .put("w/start", "0", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let leader = cluster.wait_for_leader().await;
    let leader_grpc = grpc[(leader - 1) as usize].clone();

    // Write in the background and remember every acknowledged revision.
    let acked = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let writes = {
        let acked = acked.clone();
        let grpc = grpc.clone();
        tokio::spawn(async move {
            let mut client = connect(&grpc).await;
            for n in 0..200 {
                if let Ok(response) = client.put(format!("w/{n:04}"), "x", None).await {
                    acked
                        .lock()
                        .unwrap()
                        .insert(response.header().unwrap().revision());
                }
            }
        })
    };
    // Watch through the leader until some events arrived, then kill it.
    let mut delivered = Vec::new();
    {
        let mut client = Client::connect([leader_grpc.as_str()], None).await.unwrap();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start + 1);
        let mut stream = client.watch("w/", Some(options)).await.unwrap();
        while delivered.len() < 30 {
            let response = stream.message().await.unwrap().unwrap();
            delivered.extend(
                response
                    .events()
                    .iter()
                    .map(|e| e.kv().unwrap().mod_revision()),
            );
        }
        cluster.node(leader).kill9();
        // Drain whatever the dying stream still delivers.
        while let Ok(Ok(Some(response))) =
            tokio::time::timeout(Duration::from_millis(500), stream.message()).await
        {
            delivered.extend(
                response
                    .events()
                    .iter()
                    .map(|e| e.kv().unwrap().mod_revision()),
            );
        }
    }
    writes.await.unwrap();
    let wanted = acked.lock().unwrap().clone();
    assert!(
        wanted.len() >= 100,
        "only {} writes acknowledged",
        wanted.len()
    );
    // Resume on a survivor from the revision after the last one seen.
    let survivors: Vec<String> = grpc
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as u64 + 1 != leader)
        .map(|(_, g)| g.clone())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempt = 0;
    loop {
        let from = delivered.last().copied().unwrap_or(start) + 1;
        let endpoint = &survivors[attempt % survivors.len()];
        if watch_until(endpoint, "w/", from, &wanted, &mut delivered).await {
            break;
        }
        attempt += 1;
        assert!(Instant::now() < deadline, "watch never caught up");
    }
    for pair in delivered.windows(2) {
        assert!(
            pair[0] < pair[1],
            "gap-free order broken (duplicate or reorder): {pair:?}"
        );
    }
    let seen: BTreeSet<i64> = delivered.iter().copied().collect();
    let missing: Vec<&i64> = wanted.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "acknowledged revisions never delivered: {missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_two_lock_contenders_never_overlap_and_fencing_tokens_grow() {
    let cluster = Cluster::start(3, GRPC_ON_ANY_PORT).await;
    let grpc = cluster.grpc_endpoints();
    let inside = Arc::new(AtomicBool::new(false));
    let highest_token = Arc::new(AtomicI64::new(0));
    let mut contenders = Vec::new();
    for me in 0..2 {
        let grpc = grpc.clone();
        let inside = inside.clone();
        let highest_token = highest_token.clone();
        contenders.push(tokio::spawn(async move {
            let mut client = connect(&grpc[me..]).await;
            for _ in 0..5 {
                let lease = client.lease_grant(10, None).await.unwrap().id();
                let held = client
                    .lock("fenced", Some(LockOptions::new().with_lease(lease)))
                    .await
                    .unwrap();
                let key = held.key().to_vec();
                let token = client.get(key.clone(), None).await.unwrap().kvs()[0].create_revision();
                assert!(
                    !inside.swap(true, Ordering::SeqCst),
                    "two holders inside the critical section"
                );
                let previous = highest_token.fetch_max(token, Ordering::SeqCst);
                assert!(
                    token > previous,
                    "fencing token {token} did not grow past {previous}"
                );
                // Hold the lock across a few round trips so a broken lock would overlap.
                for _ in 0..3 {
                    client
                        .get("fenced/", Some(GetOptions::new().with_prefix()))
                        .await
                        .unwrap();
                }
                inside.store(false, Ordering::SeqCst);
                client.unlock(key).await.unwrap();
                client.lease_revoke(lease).await.unwrap();
            }
        }));
    }
    for contender in contenders {
        contender.await.unwrap();
    }
    assert!(highest_token.load(Ordering::SeqCst) > 0);
}
