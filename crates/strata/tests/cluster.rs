//! Multi-node behaviour with real `strata server` processes on loopback: failover under load,
//! snapshot catch-up, membership changes, watches across a leader kill, lease expiry.

#![allow(clippy::unwrap_used)]

mod common;

use common::{add_member, cli_ok, wait_until, Cluster, NodeProc};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata_client::Client;
use strata_proto::error::ErrorCode;
use strata_proto::kv::{
    LeaseGrantRequest, LeaseGrantResponse, PutRequest, PutResponse, WatchRequest,
};

/// Writes `prefix{n}` keys from `writers` tasks until `stop` is set or `max` writes are done.
/// Returns the acknowledged writes: key -> (value, revision).
async fn write_load(
    client: Arc<Client>,
    prefix: &'static str,
    writers: usize,
    max_per_writer: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> BTreeMap<String, (String, i64)> {
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let client = client.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..max_per_writer {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let key = format!("{prefix}{writer:02}-{n:05}");
                let value = format!("v{writer}-{n}");
                let request = PutRequest {
                    key: key.clone().into(),
                    value: value.clone().into(),
                    ..Default::default()
                };
                if let Ok(response) = client.post::<_, PutResponse>("/v1/kv/put", &request).await {
                    acked
                        .lock()
                        .unwrap()
                        .insert(key, (value, response.header.revision));
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(acked).unwrap().into_inner().unwrap()
}

/// Returns a lease's remaining TTL in seconds, as the leader's clock says.
async fn lease_ttl(client: &Client, id: i64) -> Option<i64> {
    let reply: serde_json::Value = client
        .post("/v1/lease/timetolive", &serde_json::json!({ "id": id }))
        .await
        .ok()?;
    reply["ttl"].as_i64()
}

async fn leader_of(cluster: &Cluster) -> u64 {
    cluster.wait_for_leader().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_kill_leader_under_load_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, &[]).await;
    let client = Arc::new(cluster.client());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(write_load(client.clone(), "load/", 4, 150, stop.clone()));

    // Let some writes land, then kill the leader mid-load.
    wait_until(Duration::from_secs(20), "writes before the kill", || {
        let node = &cluster.nodes[0];
        async move {
            node.local_prefix("load/")
                .await
                .filter(|r| r.count >= 50)
                .map(|_| ())
        }
    })
    .await;
    let old_leader = leader_of(&cluster).await;
    cluster.node(old_leader).kill9();
    let killed_at = Instant::now();

    // A new leader serves writes within 3 s.
    let survivors: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.id != old_leader)
        .map(|n| n.url())
        .collect();
    let survivor_client = Client::new(&survivors).with_timeout(Duration::from_secs(10));
    survivor_client
        .put("after-kill", "ok")
        .await
        .expect("write after leader kill");
    let failover = killed_at.elapsed();
    assert!(
        failover < Duration::from_secs(3),
        "new leader took {failover:?} to serve a write"
    );

    // The writers run to completion: most of their writes land after the failover.
    let acked = load.await.unwrap();
    assert!(
        acked.len() >= 300,
        "only {} writes acknowledged",
        acked.len()
    );
    eprintln!(
        "acknowledged {} writes; failover write after {failover:?}",
        acked.len()
    );

    // The old leader comes back and catches up; every acknowledged write is on every node.
    cluster.node(old_leader).restart().await;
    let leader = cluster.wait_all_caught_up().await;
    for node in &cluster.nodes {
        let stored = node.local_prefix("load/").await.expect("read from node");
        let header = stored.header.clone();
        let stored: BTreeMap<String, (String, i64)> = stored
            .kvs
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8(kv.key).unwrap(),
                    (String::from_utf8(kv.value).unwrap(), kv.mod_revision),
                )
            })
            .collect();
        let lost: Vec<String> = acked
            .iter()
            .filter(|(key, (value, _))| stored.get(*key).map(|(v, _)| v) != Some(value))
            .map(|(key, (value, revision))| {
                format!("{key}={value} acknowledged at revision {revision}")
            })
            .collect();
        assert!(
            lost.is_empty(),
            "node {} (old leader: {old_leader}, now leader: {leader}) lost {} \
             acknowledged writes, holding {} keys at revision {}; first lost: {:?}\n{}",
            node.id,
            lost.len(),
            stored.len(),
            header.revision,
            &lost[..lost.len().min(5)],
            node.logs()
        );
        node.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_stopped_follower_catches_up_by_snapshot_install() {
    let mut cluster = Cluster::start_with_config(
        3,
        "[raft]\nsnapshot_entries = 100\nsnapshot_log_ratio = 0\nkeep_entries_after_snapshot = 10\n",
        &[],
    )
    .await;
    let leader = leader_of(&cluster).await;
    let follower = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|id| *id != leader)
        .unwrap();
    assert_eq!(cluster.node(follower).terminate().code(), Some(0));

    let client = cluster.client();
    for n in 0..400 {
        // On a loaded machine two nodes can lose a heartbeat and elect again; a put whose
        // outcome that left unknown is sent again (the same value: the count below holds).
        let mut tries = 0;
        loop {
            match client
                .put(format!("snap/{n:04}"), format!("value-{n}"))
                .await
            {
                Ok(_) => break,
                Err(e) if e.code() == Some(ErrorCode::Timeout) && tries < 5 => tries += 1,
                Err(e) => panic!("put snap/{n:04}: {e}"),
            }
        }
    }
    // The leader compacts its log past what the follower has (snapshots build in the background).
    let leader = leader_of(&cluster).await;
    let leader_node = &cluster.nodes[(leader - 1) as usize];
    wait_until(
        Duration::from_secs(20),
        "the leader to compact its log",
        || async {
            let entries = leader_node.metric("strata_raft_log_entries").await?;
            (entries < 200.0).then_some(())
        },
    )
    .await;

    cluster.node(follower).restart().await;
    let leader_node = &cluster.nodes[(leader - 1) as usize];
    let node = &cluster.nodes[(follower - 1) as usize];
    wait_until(
        Duration::from_secs(30),
        "follower to install a snapshot",
        || async {
            let installed = node.metric("strata_raft_snapshots_installed_total").await?;
            (installed >= 1.0).then_some(())
        },
    )
    .await;
    let commit = leader_node.status().await.unwrap().commit_index;
    cluster.wait_applied(follower, commit).await;
    let stored = node.local_prefix("snap/").await.unwrap();
    assert_eq!(stored.count, 400);
    assert_eq!(
        node.local_get("snap/0399").await.as_deref(),
        Some(&b"value-399"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t40_remove_member_then_add_empty_node_which_catches_up() {
    let mut cluster = Cluster::start(3, &[]).await;
    let client = cluster.client();
    for n in 0..50 {
        client.put(format!("m/{n:03}"), "x").await.unwrap();
    }
    // Remove a follower.
    let leader = leader_of(&cluster).await;
    let victim = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|id| *id != leader)
        .unwrap();
    cli_ok(
        &cluster.endpoints(),
        &["cluster", "remove-member", &victim.to_string()],
    );
    let status: strata_proto::ClusterStatus = cluster
        .client()
        .get_json("/v1/cluster/status")
        .await
        .unwrap();
    assert!(status.members.iter().all(|m| m.id != victim), "{status:?}");
    cluster.node(victim).terminate();

    // Add a brand-new node with an empty data folder.
    let fresh = NodeProc::start(4, cluster.root.path(), None, &[]).await;
    let live: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.id != victim)
        .map(|n| n.url())
        .collect();
    add_member(&live, &fresh);
    let out = cli_ok(&live, &["--output", "json", "cluster", "status"]);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: BTreeSet<u64> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{status}");
    assert!(ids.contains(&4) && !ids.contains(&victim), "{status}");

    wait_until(
        Duration::from_secs(30),
        "new member to catch up",
        || async {
            let stored = fresh.local_prefix("m/").await?;
            (stored.count == 50).then_some(())
        },
    )
    .await;
    // The new member takes part in commits: writes still succeed through it.
    Client::new(&[fresh.url()])
        .put("m/after", "y")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t50_watch_from_revision_survives_leader_kill_exactly_once_in_order() {
    let mut cluster = Cluster::start(3, &[]).await;
    let client = Arc::new(cluster.client());
    let start = client.put("w/start", "0").await.unwrap().header.revision;

    // Watch through the CLI, connected to the leader first so that its death forces a
    // reconnect to another node.
    let leader = leader_of(&cluster).await;
    let mut endpoints = vec![cluster.nodes[(leader - 1) as usize].url()];
    endpoints.extend(
        cluster
            .nodes
            .iter()
            .filter(|n| n.id != leader)
            .map(|n| n.url()),
    );
    let watch_out = cluster.root.path().join("watch.out");
    let mut watcher = common::strata_command()
        .args([
            "--endpoints",
            &endpoints.join(","),
            "--output",
            "json",
            "kv",
            "watch",
            "w/",
            "--prefix",
        ])
        .args(["--rev", &(start + 1).to_string()])
        .stdout(std::fs::File::create(&watch_out).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(write_load(client.clone(), "w/k", 2, 150, stop.clone()));
    wait_until(Duration::from_secs(20), "watch to see events", || {
        let path = watch_out.clone();
        async move { (std::fs::read_to_string(&path).ok()?.lines().count() >= 20).then_some(()) }
    })
    .await;
    cluster.node(leader).kill9();
    let acked = load.await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let last_acked = acked.values().map(|(_, rev)| *rev).max().unwrap();

    let revisions: Vec<i64> = wait_until(
        Duration::from_secs(30),
        "watch to deliver the last write",
        || {
            let path = watch_out.clone();
            async move {
                let text = std::fs::read_to_string(&path).ok()?;
                let revisions: Vec<i64> = text
                    .lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .map(|e| e["kv"]["mod_revision"].as_i64().unwrap())
                    .collect();
                revisions.contains(&last_acked).then_some(revisions)
            }
        },
    )
    .await;
    watcher.kill().unwrap();
    watcher.wait().unwrap();

    for pair in revisions.windows(2) {
        assert!(
            pair[0] < pair[1],
            "revisions out of order or duplicated: {pair:?}"
        );
    }
    assert!(
        revisions[0] > start,
        "delivered revision {} before the start",
        revisions[0]
    );
    let delivered: BTreeSet<i64> = revisions.iter().copied().collect();
    for (key, (_, revision)) in &acked {
        assert!(
            delivered.contains(revision),
            "acknowledged write {key}@{revision} missing from the watch"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t60_key_on_expired_lease_is_gone_on_every_node() {
    let cluster = Cluster::start(3, &[]).await;
    let client = cluster.client();
    let lease: LeaseGrantResponse = client
        .post("/v1/lease/grant", &LeaseGrantRequest { ttl: 2, id: 0 })
        .await
        .unwrap();
    let put = PutRequest {
        key: "ephemeral".into(),
        value: "here".into(),
        lease: lease.id,
        ..Default::default()
    };
    let _: PutResponse = client.post("/v1/kv/put", &put).await.unwrap();
    client.put("durable", "stays").await.unwrap();
    for node in &cluster.nodes {
        wait_until(Duration::from_secs(10), "key to replicate", || async {
            node.local_get("ephemeral").await.map(|_| ())
        })
        .await;
    }
    // No keep-alive: the leader revokes the lease after ~2 s; every node deletes the key.
    for node in &cluster.nodes {
        wait_until(Duration::from_secs(15), "leased key to expire", || async {
            let gone = node.local_prefix("ephemeral").await?.count == 0;
            gone.then_some(())
        })
        .await;
        assert_eq!(
            node.local_get("durable").await.as_deref(),
            Some(&b"stays"[..])
        );
    }
    let out = cli_ok(&cluster.endpoints(), &["--output", "json", "lease", "list"]);
    assert!(
        !out.contains(&format!("{}", lease.id)),
        "expired lease still listed: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t61_keepalive_holds_lease_and_follower_forwards() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = leader_of(&cluster).await;
    let follower = cluster.nodes.iter().find(|n| n.id != leader).unwrap();
    let client = Client::new(&[follower.url()]);
    let lease: LeaseGrantResponse = client
        .post("/v1/lease/grant", &LeaseGrantRequest { ttl: 2, id: 0 })
        .await
        .unwrap();
    let put = PutRequest {
        key: "held".into(),
        value: "1".into(),
        lease: lease.id,
        ..Default::default()
    };
    let _: PutResponse = client.post("/v1/kv/put", &put).await.unwrap();
    // Keep it alive through a follower for longer than its TTL, renewing each time it has run
    // down to its last second.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        wait_until(
            Duration::from_secs(5),
            "the lease to need renewing",
            || async { (lease_ttl(&client, lease.id).await? <= 1).then_some(()) },
        )
        .await;
        let _: serde_json::Value = client
            .post(
                "/v1/lease/keepalive",
                &serde_json::json!({ "id": lease.id }),
            )
            .await
            .unwrap();
    }
    assert_eq!(
        client.get("held").await.unwrap().as_deref(),
        Some(&b"1"[..])
    );
    let ttl: serde_json::Value = client
        .post(
            "/v1/lease/timetolive",
            &serde_json::json!({ "id": lease.id, "keys": true }),
        )
        .await
        .unwrap();
    assert_eq!(ttl["granted_ttl"], 2);
    assert_eq!(ttl["keys"][0], "held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t70_watch_stream_over_http_sees_every_change_in_order() {
    let cluster = Cluster::start(1, &[]).await;
    let client = cluster.client();
    let request = WatchRequest {
        key: "s/".into(),
        prefix: true,
        prev_kv: true,
        ..Default::default()
    };
    let mut stream = client.watch(&request).await.unwrap();
    let created = stream.next().await.unwrap().unwrap();
    assert!(created.created);
    for n in 0..20 {
        client
            .put(format!("s/{}", n % 3), format!("{n}"))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 20 {
        let message = stream.next().await.unwrap().expect("stream open");
        seen.extend(message.events);
    }
    for (n, event) in seen.iter().enumerate() {
        assert_eq!(event.kv.value, format!("{n}").into_bytes());
        if n >= 3 {
            assert_eq!(
                event.prev_kv.as_ref().unwrap().value,
                format!("{}", n - 3).into_bytes()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t25_graceful_stop_of_leader_hands_off_leadership() {
    let mut cluster = Cluster::start(3, &[]).await;
    let client = cluster.client();
    for n in 0..20 {
        client.put(format!("g/{n}"), "x").await.unwrap();
    }
    let leader = leader_of(&cluster).await;
    let status = cluster.node(leader).terminate();
    assert_eq!(status.code(), Some(0), "leader did not exit cleanly");
    let logs = cluster.node(leader).logs();
    assert!(
        logs.contains("handed off leadership"),
        "no hand-off in the leader's log:\n{logs}"
    );
    let survivors: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.id != leader)
        .map(|n| n.url())
        .collect();
    let survivor_client = Client::new(&survivors).with_timeout(Duration::from_secs(10));
    survivor_client.put("g/after", "y").await.unwrap();
    // Every survivor applies all 21 (a serializable read on the one that did not serve the
    // put may run before it applied it, so it is polled).
    for survivor in cluster.nodes.iter().filter(|n| n.id != leader) {
        wait_until(
            Duration::from_secs(10),
            "a survivor to hold all 21 keys",
            || async {
                let stored = survivor.local_prefix("g/").await?;
                (stored.count == 21).then_some(())
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t80_auto_compaction_by_revision_count() {
    let cluster = Cluster::start_with_config(
        1,
        "[kv]\nauto_compaction_mode = \"revision\"\nauto_compaction_retention = \"20\"\n",
        &[],
    )
    .await;
    let client = cluster.client();
    let first = client.put("c", "0").await.unwrap().header.revision;
    for n in 1..60 {
        client.put("c", format!("{n}")).await.unwrap();
    }
    let node = &cluster.nodes[0];
    // The loop compacts to 20 below the revision it sees each second, so a first compaction
    // may stop short of `first` (it saw revision 22 while the puts went on); a later one
    // passes it.
    wait_until(
        Duration::from_secs(15),
        "automatic compaction past the first put",
        || async {
            let value = node.metric("strata_kv_compact_revision").await?;
            (value as i64 > first).then_some(())
        },
    )
    .await;
    let out = common::cli(
        &cluster.endpoints(),
        &["kv", "get", "c", "--rev", &first.to_string()],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("compacted"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t35_linearizable_reads_on_followers_see_every_acknowledged_write() {
    let cluster = Cluster::start(3, &[]).await;
    let writer = Client::new(&[cluster.nodes[0].url()]);
    let readers: Vec<Arc<Client>> = cluster.nodes.iter().map(|n| Arc::new(n.client())).collect();
    for round in 0..40 {
        let value = format!("v{round}");
        writer.put("lin", value.clone()).await.unwrap();
        // Every node, concurrently, must return the acknowledged value (ReadIndex), never an
        // older one, even though reads on followers are served from local state.
        let mut reads = Vec::new();
        for reader in &readers {
            for _ in 0..3 {
                let reader = reader.clone();
                reads.push(tokio::spawn(
                    async move { reader.get("lin").await.unwrap() },
                ));
            }
        }
        for read in reads {
            assert_eq!(
                read.await.unwrap().as_deref(),
                Some(value.as_bytes()),
                "stale read in round {round}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t62_new_leader_extends_leases_instead_of_expiring_them() {
    let mut cluster = Cluster::start(3, &[]).await;
    let client = cluster.client();
    let lease: LeaseGrantResponse = client
        .post("/v1/lease/grant", &LeaseGrantRequest { ttl: 4, id: 0 })
        .await
        .unwrap();
    let put = PutRequest {
        key: "leased".into(),
        value: "1".into(),
        lease: lease.id,
        ..Default::default()
    };
    let _: PutResponse = client.post("/v1/kv/put", &put).await.unwrap();
    // Without a new leader the lease would expire 4 s after the grant.
    let original_expiry = Instant::now() + Duration::from_secs(4);
    // Let most of the TTL run down on the leader's clock, then kill the leader, whose expiry
    // clock dies with it.
    wait_until(Duration::from_secs(10), "the lease to run down", || async {
        (lease_ttl(&client, lease.id).await? <= 1).then_some(())
    })
    .await;
    let leader = leader_of(&cluster).await;
    cluster.node(leader).kill9();
    let survivors: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.id != leader)
        .map(|n| n.url())
        .collect();
    let survivor_client = Client::new(&survivors).with_timeout(Duration::from_secs(10));
    // A write through a follower whose forward was on its way to the killed leader ends as
    // "timeout: may or may not have been applied"; the probe only needs one to succeed.
    wait_until(
        Duration::from_secs(20),
        "a write through the survivors",
        || async { survivor_client.put("probe", "x").await.ok() },
    )
    .await;
    // The new leader restarts the full TTL: the key outlives the original deadline by a margin.
    let remaining = lease_ttl(&survivor_client, lease.id)
        .await
        .expect("the new leader reports the lease");
    assert!(
        Instant::now() + Duration::from_secs(remaining.max(0) as u64)
            > original_expiry + Duration::from_secs(1),
        "the new leader kept the old expiry ({remaining}s left) instead of extending the lease"
    );
    let survivor = cluster.nodes.iter().find(|n| n.id != leader).unwrap();
    assert_eq!(
        survivor.local_get("leased").await.as_deref(),
        Some(&b"1"[..]),
        "the new leader expired the lease at once instead of extending it"
    );
    // And it still expires once nobody keeps it alive.
    wait_until(
        Duration::from_secs(15),
        "lease to expire under the new leader",
        || async { (survivor.local_prefix("leased").await?.count == 0).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t71_idle_watch_gets_progress_notifications() {
    let cluster =
        Cluster::start_with_config(1, "[kv]\nwatch_progress_interval = \"200ms\"\n", &[]).await;
    let client = cluster.client();
    let revision = client.put("other", "x").await.unwrap().header.revision;
    let request = WatchRequest {
        key: "quiet/".into(),
        prefix: true,
        progress_notify: true,
        ..Default::default()
    };
    let mut stream = client.watch(&request).await.unwrap();
    assert!(stream.next().await.unwrap().unwrap().created);
    client.put("other", "y").await.unwrap();
    // No event matches the watch, but progress notifications report the revision reached.
    let deadline = Instant::now() + Duration::from_secs(10);
    let progressed = loop {
        assert!(
            Instant::now() < deadline,
            "no progress notification within 10 s"
        );
        let message = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("watch stream stalled")
            .unwrap()
            .expect("stream open");
        assert!(message.events.is_empty(), "unexpected events {message:?}");
        if message.header.revision > revision {
            break message.header.revision;
        }
    };
    assert_eq!(progressed, revision + 1);
}

/// Growing a cluster one `add-member` at a time is as quiet as founding it: no WARN or
/// ERROR line in any node's default log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t16_growing_a_cluster_with_add_member_logs_nothing_alarming() {
    let cluster = Cluster::start(3, &[]).await;
    cluster.client().put("grown", "yes").await.unwrap();
    for node in &cluster.nodes {
        node.assert_quiet("while the cluster grew");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t15_three_nodes_found_the_cluster_from_initial_cluster() {
    // The founding list needs every raft address up front: take free ports from the kernel
    // (bind port 0, read it back, release it) and hand them to the nodes.
    let ports: Vec<u16> = (0..3)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let members: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect();
    let initial = members.join(",");
    let root = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let raft = format!("127.0.0.1:{port}");
        nodes.push(NodeProc::start_on(i as u64 + 1, root.path(), Some(&initial), &raft, &[]).await);
    }
    let endpoints: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    common::ensure_token(&endpoints).await;
    let client = Client::new(&endpoints).with_timeout(Duration::from_secs(15));
    client.put("founded", "yes").await.unwrap();
    // Every founder reports all three members with their API addresses filled in.
    for node in &nodes {
        let status = wait_until(
            Duration::from_secs(20),
            "members to register their API addresses",
            || async {
                let status = node.status().await?;
                let complete = status.members.len() == 3
                    && status.members.iter().all(|m| !m.api_addr.is_empty());
                complete.then_some(status)
            },
        )
        .await;
        assert!(status.leader.is_some());
        let ids: BTreeSet<u64> = status.members.iter().map(|m| m.id).collect();
        assert_eq!(ids, BTreeSet::from([1, 2, 3]));
    }
    for node in &nodes {
        wait_until(
            Duration::from_secs(10),
            "the write to replicate",
            || async { node.local_get("founded").await.map(|_| ()) },
        )
        .await;
    }
    // A healthy start is quiet: nothing at WARN or ERROR in any node's default log, but for
    // Raft's replication backing off from a founder that this test has not started yet (the
    // founders start one after another; on a loaded machine the gap outlasts Raft's retries).
    for node in &nodes {
        node.assert_quiet_but(
            "during a healthy start",
            &["backoff mode: drain events without processing them"],
        );
    }
}
