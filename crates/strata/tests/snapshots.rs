//! Snapshots at size, with real `strata server` processes on loopback: snapshots built while
//! writes go on stop no write and lose none, and a new member catches up from a snapshot
//! streamed in many chunks.
//!
//! The bound stated for a write during a snapshot: apply waits at most
//! [`APPLY_PAUSE_BOUND`] for a snapshot to freeze the state (the node's own measure,
//! `strata_raft_snapshot_apply_pause_max_seconds`), whatever the store's size, and no put
//! acknowledged during the run took longer than [`PUT_BOUND`] end to end.

#![allow(clippy::unwrap_used)]

mod common;

use common::{add_member, cli_ok, wait_until, Cluster, NodeProc};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata_client::Client;

/// The longest apply may wait for a snapshot to freeze the state (measured by the node).
const APPLY_PAUSE_BOUND: Duration = Duration::from_millis(50);
/// The longest any single put may take while snapshots are built (measured by the client).
const PUT_BOUND: Duration = Duration::from_secs(2);
/// Value size of the bulk keys: with `BULK_KEYS` of them the store is about 16 MiB, so a
/// snapshot is 16 chunks on the wire and takes a while to serialise on a debug build.
const VALUE_BYTES: usize = 1024;
const BULK_KEYS: usize = 16_000;

/// Writes `count` keys `{prefix}{n}` of `VALUE_BYTES` from `writers` tasks.
async fn bulk_load(client: Arc<Client>, prefix: &'static str, count: usize, writers: usize) {
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for n in (writer..count).step_by(writers) {
                let value = vec![b'a' + (n % 26) as u8; VALUE_BYTES];
                client.put(format!("{prefix}{n:06}"), value).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Every put of a timed load: key -> value, and the slowest put.
struct Load {
    acked: BTreeMap<String, String>,
    slowest: Duration,
    puts: usize,
}

/// Puts `load/{writer}-{n}` from `writers` tasks until `stop` is set.
async fn timed_load(client: Arc<Client>, writers: usize, stop: Arc<AtomicBool>) -> Load {
    let load = Arc::new(Mutex::new(Load {
        acked: BTreeMap::new(),
        slowest: Duration::ZERO,
        puts: 0,
    }));
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let (client, load, stop) = (client.clone(), load.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("load/{writer:02}-{n:06}");
                let value = format!("v{writer}-{n}");
                let started = Instant::now();
                client.put(key.clone(), value.clone()).await.unwrap();
                let took = started.elapsed();
                let mut load = load.lock().unwrap();
                load.slowest = load.slowest.max(took);
                load.puts += 1;
                load.acked.insert(key, value);
                n += 1;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(load).ok().unwrap().into_inner().unwrap()
}

async fn metric(node: &NodeProc, name: &str) -> f64 {
    node.metric(name).await.unwrap_or(0.0)
}

/// How many keys under `prefix` the node holds (its local state, counted only).
async fn local_count(node: &NodeProc, prefix: &str) -> Option<i64> {
    let request = strata_proto::kv::RangeRequest {
        key: prefix.into(),
        prefix: true,
        serializable: true,
        count_only: true,
        ..Default::default()
    };
    let response: strata_proto::kv::RangeResponse =
        node.client().post("/v1/kv/range", &request).await.ok()?;
    Some(response.count)
}

/// What `POST /v1/kv/range/stream` returned.
struct Streamed {
    keys: Vec<String>,
    pages: usize,
}

/// Streams every key under `prefix` from `node`; once the first page is in, writes
/// `write_midway` (if given) through the cluster.
async fn stream_range(node: &NodeProc, prefix: &str, write_midway: Option<&str>) -> Streamed {
    let mut request = common::http_client()
        .post(format!("{}/v1/kv/range/stream", node.url()))
        .json(&strata_proto::kv::RangeRequest {
            key: prefix.into(),
            prefix: true,
            keys_only: true,
            ..Default::default()
        });
    if let Some(token) = common::root_token() {
        request = request.bearer_auth(token);
    }
    let mut response = request.send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let mut buffer = Vec::new();
    let mut lines: Vec<serde_json::Value> = Vec::new();
    let mut wrote = write_midway.is_none();
    while let Some(chunk) = response.chunk().await.unwrap() {
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            lines.push(serde_json::from_slice(&line).unwrap());
        }
        if !wrote && lines.iter().any(|l| l.get("kvs").is_some()) {
            node.client()
                .put(write_midway.unwrap_or_default(), "late")
                .await
                .unwrap();
            wrote = true;
        }
    }
    assert!(
        lines[0]["header"]["revision"].as_i64().unwrap() > 0,
        "{}",
        lines[0]
    );
    let done = lines.last().unwrap();
    let mut keys = Vec::new();
    let mut pages = 0;
    for line in &lines {
        if let Some(kvs) = line["kvs"].as_array() {
            pages += 1;
            keys.extend(kvs.iter().map(|kv| {
                let kv: strata_proto::kv::KeyValue = serde_json::from_value(kv.clone()).unwrap();
                String::from_utf8(kv.key).unwrap()
            }));
        }
    }
    assert_eq!(
        done["done"]["count"].as_u64(),
        Some(keys.len() as u64),
        "{done}"
    );
    Streamed { keys, pages }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_under_write_load_stop_no_write_and_a_new_member_catches_up_from_a_streamed_one()
{
    // Snapshots every 300 entries: several per node during the timed load below.
    let cluster = Cluster::start_with_config(
        3,
        "[raft]\nsnapshot_entries = 300\nsnapshot_log_ratio = 0\nkeep_entries_after_snapshot = 50\n",
        &[],
    )
    .await;
    let client = Arc::new(cluster.client());
    bulk_load(client.clone(), "bulk/", BULK_KEYS, 32).await;

    let mut built_before = Vec::new();
    for node in &cluster.nodes {
        built_before.push(metric(node, "strata_raft_snapshots_built_total").await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(timed_load(client.clone(), 16, stop.clone()));
    // Run until every node has built at least two snapshots of the full store under load.
    wait_until(
        Duration::from_secs(120),
        "every node to build two snapshots under load",
        || async {
            for (node, before) in cluster.nodes.iter().zip(&built_before) {
                let built = metric(node, "strata_raft_snapshots_built_total").await;
                if built < before + 2.0 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let load = load.await.unwrap();
    assert!(load.puts > 100, "only {} puts went through", load.puts);

    for node in &cluster.nodes {
        let pause = metric(node, "strata_raft_snapshot_apply_pause_max_seconds").await;
        let bytes = metric(node, "strata_raft_snapshot_bytes").await;
        let write = metric(node, "strata_raft_snapshot_write_seconds").await;
        eprintln!(
            "node {}: snapshot {bytes} bytes, written in {write} s, apply paused at most {pause} s",
            node.id
        );
        assert!(
            bytes > (BULK_KEYS * VALUE_BYTES) as f64,
            "node {}: snapshot of {bytes} bytes is smaller than the bulk data",
            node.id
        );
        assert!(
            pause < APPLY_PAUSE_BOUND.as_secs_f64(),
            "node {}: apply waited {pause} s for a snapshot of {bytes} bytes (written in {write} s)",
            node.id
        );
    }
    let (mut streamed, mut posted) = (0.0, 0.0);
    for node in &cluster.nodes {
        streamed += metric(node, "strata_raft_appends_streamed_total").await;
        posted += metric(node, "strata_raft_appends_posted_total").await;
    }
    assert!(
        streamed > 0.0 && posted == 0.0,
        "appends go over the peers' streams: {streamed} streamed, {posted} posted"
    );
    eprintln!("{} puts, the slowest {:?}", load.puts, load.slowest);
    assert!(
        load.slowest < PUT_BOUND,
        "a put took {:?} while snapshots were built ({} puts)",
        load.slowest,
        load.puts
    );

    // Every acknowledged write is on every node.
    cluster.wait_all_caught_up().await;
    for node in &cluster.nodes {
        let stored = node.local_prefix("load/").await.unwrap();
        let stored: BTreeMap<String, String> = stored
            .kvs
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                )
            })
            .collect();
        let lost: Vec<_> = load
            .acked
            .iter()
            .filter(|(key, value)| stored.get(*key) != Some(*value))
            .take(5)
            .collect();
        assert!(lost.is_empty(), "node {} lost {lost:?}", node.id);
        node.assert_no_panic();
    }

    // The whole bulk prefix streamed back, a page per line, all at one revision: a key written
    // while the stream is read is not in it.
    let stream = stream_range(&cluster.nodes[0], "bulk/", Some("bulk/000100x")).await;
    assert_eq!(stream.keys.len(), BULK_KEYS);
    assert_eq!(stream.pages, BULK_KEYS.div_ceil(1000));
    assert!(
        stream.keys.windows(2).all(|w| w[0] < w[1]),
        "keys out of order"
    );
    assert!(!stream.keys.iter().any(|k| k == "bulk/000100x"));
    assert_eq!(
        local_count(&cluster.nodes[0], "bulk/").await,
        Some(BULK_KEYS as i64 + 1)
    );

    // A new, empty member: the leader's log starts long after index 1, so it must take a
    // snapshot, streamed in 1 MiB chunks: the leader's state as of the moment it sends it, not
    // its last stored snapshot (which would leave the member every entry since to catch up
    // on). A few writes first put the leader's applied index past its stored snapshot.
    for i in 0..5 {
        client.put(format!("after/{i}"), "x").await.unwrap();
    }
    cluster.wait_all_caught_up().await;
    let mut applied_before = 0.0f64;
    let mut stored_before = 0.0f64;
    for node in &cluster.nodes {
        applied_before = applied_before.max(metric(node, "strata_raft_applied_index").await);
        stored_before = stored_before.max(metric(node, "strata_raft_snapshot_index").await);
    }
    eprintln!("before the join: applied {applied_before}, latest stored snapshot {stored_before}");
    let fresh = NodeProc::start(4, cluster.root.path(), None, &[]).await;
    add_member(&cluster.endpoints(), &fresh);
    wait_until(
        Duration::from_secs(60),
        "the new member to install a snapshot and catch up",
        || async {
            let installed = metric(&fresh, "strata_raft_snapshots_installed_total").await;
            let bulk = local_count(&fresh, "bulk/").await?;
            // The bulk keys and the one written while streaming.
            (installed >= 1.0 && bulk == BULK_KEYS as i64 + 1).then_some(())
        },
    )
    .await;
    let installed_at = metric(&fresh, "strata_raft_snapshot_index").await;
    assert!(
        installed_at >= applied_before,
        "the new member installed a snapshot at index {installed_at}, older than the \
         {applied_before} every member had applied when it joined (stored: {stored_before})"
    );
    let value = fresh.local_get("bulk/000027").await.unwrap();
    assert_eq!(value, vec![b'b'; VALUE_BYTES]);
    let load_keys = local_count(&fresh, "load/").await.unwrap();
    assert_eq!(load_keys as usize, load.acked.len());
    // No receiving file is left behind once installed.
    let leftovers: Vec<_> = std::fs::read_dir(fresh.data_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("snapshot.recv"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    fresh.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_snapshot_restores_into_a_new_cluster_that_serves_and_takes_writes() {
    let cluster = Cluster::start(3, common::GRPC_ON_ANY_PORT).await;
    let client = cluster.client();
    for n in 0..300 {
        client
            .put(format!("backup/{n:03}"), format!("value-{n}"))
            .await
            .unwrap();
    }
    let _: serde_json::Value = client
        .post(
            "/v1/kv/delete",
            &strata_proto::kv::DeleteRangeRequest {
                key: b"backup/007".to_vec(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let saved = cluster.root.path().join("backup.snap");
    let saved_arg = saved.to_str().unwrap();
    let out = cli_ok(
        &cluster.endpoints(),
        &["cluster", "snapshot", "save", saved_arg],
    );
    assert!(out.contains("state up to log index"), "{out}");
    // Written after the save: not in the backup.
    client.put("backup/late", "x").await.unwrap();

    // etcdctl's `snapshot save` gets the same kind of file through the etcd API.
    let by_etcdctl = cluster.root.path().join("etcdctl.snap");
    let status = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", cluster.nodes[0].grpc_addr()))
        .args(["snapshot", "save", by_etcdctl.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let out = cli_ok(
        &cluster.endpoints(),
        &[
            "cluster",
            "snapshot",
            "status",
            by_etcdctl.to_str().unwrap(),
        ],
    );
    assert!(out.contains("members [1, 2, 3]"), "{out}");

    // A damaged file is refused with the reason, and nothing is restored from it.
    let damaged = cluster.root.path().join("damaged.snap");
    let mut bytes = std::fs::read(&saved).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&damaged, &bytes).unwrap();
    let restored_root = tempfile::tempdir().unwrap();
    let data_dir = restored_root.path().join("n1").join("data");
    let out = common::cli(
        &cluster.endpoints(),
        &[
            "cluster",
            "snapshot",
            "restore",
            damaged.to_str().unwrap(),
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("checksum"),
        "{out:?}"
    );

    let out = cli_ok(
        &cluster.endpoints(),
        &[
            "cluster",
            "snapshot",
            "restore",
            saved_arg,
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
    );
    assert!(out.contains("members [1]"), "{out}");
    drop(cluster);

    // A node on the restored folder leads a cluster of one with the saved state.
    let node = NodeProc::start(1, restored_root.path(), None, &[]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.status().await.and_then(|s| s.leader) != Some(1) {
        assert!(
            Instant::now() < deadline,
            "the restored node does not lead: {:?}\n{}",
            node.status().await,
            node.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let restored = Client::new(&[node.url()]);
    assert_eq!(
        restored.get("backup/123").await.unwrap().as_deref(),
        Some(&b"value-123"[..])
    );
    assert_eq!(restored.get("backup/007").await.unwrap(), None);
    assert_eq!(restored.get("backup/late").await.unwrap(), None);
    assert_eq!(local_count(&node, "backup/").await, Some(299));
    restored.put("backup/after", "y").await.unwrap();
    assert_eq!(
        restored.get("backup/after").await.unwrap().as_deref(),
        Some(&b"y"[..])
    );
    // Its raft address, unknown to the backup, is filled in; a second member joins.
    wait_until(
        Duration::from_secs(10),
        "the raft address filled in",
        || async {
            let status = node.status().await?;
            let me = status.members.iter().find(|m| m.id == 1)?;
            (!me.raft_addr.is_empty()).then_some(())
        },
    )
    .await;
    let second = NodeProc::start(2, restored_root.path(), None, &[]).await;
    add_member(&[node.url()], &second);
    wait_until(
        Duration::from_secs(30),
        "the second member to catch up",
        || async { (local_count(&second, "backup/").await? == 300).then_some(()) },
    )
    .await;
    node.assert_no_panic();
    second.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_that_drops_most_history_gives_the_disk_back_without_a_manual_step() {
    let cluster = Cluster::start(3, &[]).await;
    let client = Arc::new(cluster.client());
    // 3,000 versions of 30 keys, 1 KiB each: far fewer entries than a scheduled snapshot needs.
    let mut tasks = Vec::new();
    for writer in 0..15 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..200 {
                let key = format!("hist/{:02}", (writer * 2 + n % 2));
                client.put(key, vec![b'h'; VALUE_BYTES]).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for node in &cluster.nodes {
        assert_eq!(metric(node, "strata_raft_snapshots_built_total").await, 0.0);
    }
    let status = cluster.nodes[0].status().await.unwrap();
    assert!(status.disk_bytes > 0, "{status:?}");
    let revision = status.revision;
    let _: serde_json::Value = client
        .post(
            "/v1/kv/compact",
            &strata_proto::kv::CompactRequest { revision },
        )
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "every node to snapshot the compacted state",
        || async {
            for node in &cluster.nodes {
                let built = metric(node, "strata_raft_snapshots_built_total").await;
                let bytes = metric(node, "strata_raft_snapshot_bytes").await;
                // 30 keys of 1 KiB left, not 3,000 versions.
                if built < 1.0 || bytes > (100 * VALUE_BYTES) as f64 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    assert_eq!(local_count(&cluster.nodes[2], "hist/").await, Some(30));
}
