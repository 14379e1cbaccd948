//! Liveness under pauses, with real `strata server` processes on loopback: a leader frozen
//! (SIGSTOP) with writes in flight must not wedge the cluster when it leads again, and the
//! healthy nodes keep serving while it is frozen.

#![allow(clippy::unwrap_used)]

mod common;

use common::{wait_until, Cluster, NodeProc};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_client::Client;

/// The leader as every listed node agrees, asked with short deadlines (some nodes may be
/// paused).
async fn agreed_leader(nodes: &[&NodeProc]) -> Option<u64> {
    let mut leader = None;
    for node in nodes {
        let seen = node.quick_status().await?.leader?;
        if leader.is_some_and(|l| l != seen) {
            return None;
        }
        leader = Some(seen);
    }
    leader
}

/// Waits until the running nodes other than `except` agree on a leader other than `except`.
async fn wait_for_other_leader(cluster: &Cluster, except: u64) -> u64 {
    let others: Vec<&NodeProc> = cluster.nodes.iter().filter(|n| n.id != except).collect();
    wait_until(
        Duration::from_secs(10),
        &format!("a leader other than {except}"),
        || async {
            agreed_leader(&others)
                .await
                .filter(|leader| *leader != except)
        },
    )
    .await
}

fn client_of(node: &NodeProc, timeout: Duration) -> Client {
    Client::new(&[node.url()]).with_timeout(timeout)
}

/// Writes to `node` from `writers` tasks until `stop` is set; counts acknowledged writes.
fn start_writers(
    node: &NodeProc,
    writers: usize,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..writers)
        .map(|writer| {
            let client = client_of(node, Duration::from_secs(3));
            let stop = stop.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    if client
                        .put(format!("{prefix}{writer}-{n}"), "x")
                        .await
                        .is_ok()
                    {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect()
}

/// The bug behind "writes stop for good after a paused leader leads again": the leader is
/// cut off while its proposer has a batch in flight; the others elect a new leader, write
/// past a snapshot, and the old leader catches up by installing that snapshot, which purges
/// the batch's entry without openraft ever answering it. When the old leader is elected
/// again, its proposer must not still be waiting for that answer. (A SIGSTOP does the same
/// when the batch's acknowledgements are lost; a partition makes it certain.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_leader_cut_off_mid_write_catches_up_by_snapshot_and_accepts_writes_when_it_leads_again(
) {
    let cluster = Cluster::start_with_config(
        3,
        "[raft]\nsnapshot_entries = 100\nsnapshot_log_ratio = 0\nkeep_entries_after_snapshot = 10\n",
        &[],
    )
    .await;
    let old = cluster.wait_for_leader().await;
    let old_node = &cluster.nodes[(old - 1) as usize];

    // Keep the old leader's proposer busy, then cut it off mid-write.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writers = start_writers(old_node, 4, "before/", stop.clone(), acked.clone());
    wait_until(Duration::from_secs(10), "writes through the leader", || {
        let acked = acked.clone();
        async move { (acked.load(Ordering::Relaxed) >= 50).then_some(()) }
    })
    .await;
    cluster.isolate(old).await;
    stop.store(true, Ordering::Relaxed);

    // The others elect a leader and write far enough that the old leader must take a snapshot.
    let new = wait_for_other_leader(&cluster, old).await;
    let new_node = &cluster.nodes[(new - 1) as usize];
    let new_client = client_of(new_node, Duration::from_secs(10));
    for n in 0..400 {
        new_client
            .put(format!("after/{n:04}"), format!("v{n}"))
            .await
            .unwrap();
    }
    wait_until(
        Duration::from_secs(20),
        "the new leader to purge its log",
        || async {
            let entries = new_node.metric("strata_raft_log_entries").await?;
            (entries < 200.0).then_some(())
        },
    )
    .await;
    cluster.heal().await;
    for writer in writers {
        writer.await.unwrap();
    }
    wait_until(
        Duration::from_secs(30),
        "the old leader to install a snapshot",
        || async {
            let installed = old_node
                .metric("strata_raft_snapshots_installed_total")
                .await?;
            (installed >= 1.0).then_some(())
        },
    )
    .await;
    let abandoned = old_node
        .metric("strata_raft_proposals_abandoned_total")
        .await
        .unwrap_or(0.0);
    assert!(
        abandoned >= 1.0,
        "the old leader had no batch in flight when it was cut off; the test did not set up the bug"
    );

    // It can only win an election once it has every entry the others have.
    let commit = new_node.status().await.unwrap().commit_index;
    cluster.wait_applied(old, commit).await;

    // Make the old leader lead again, deterministically: freeze the third node, write through
    // the old leader (committed by it and the current leader), freeze the current leader, and
    // let the third node back. The third node's log is now behind the old leader's, so only
    // the old leader can win the election the two of them hold.
    let all: Vec<&NodeProc> = cluster.nodes.iter().collect();
    let current = wait_until(Duration::from_secs(10), "the cluster to agree", || async {
        agreed_leader(&all).await
    })
    .await;
    if current != old {
        let third = cluster
            .nodes
            .iter()
            .find(|n| n.id != old && n.id != current)
            .unwrap();
        let current_node = &cluster.nodes[(current - 1) as usize];
        third.pause();
        let old_client = client_of(old_node, Duration::from_secs(10));
        for n in 0..5 {
            old_client.put(format!("ahead/{n}"), "x").await.unwrap();
        }
        current_node.pause();
        third.resume();
        let pair = [old_node, third];
        wait_until(
            Duration::from_secs(15),
            &format!("node {old} to win the election"),
            || async { agreed_leader(&pair).await.filter(|l| *l == old) },
        )
        .await;
        current_node.resume();
    }
    let leader = wait_until(Duration::from_secs(15), "the cluster to agree", || async {
        agreed_leader(&all).await
    })
    .await;
    assert_eq!(leader, old, "node {old} did not lead again");

    // The proof: a write and a linearizable read through the old leader, promptly.
    let client = client_of(old_node, Duration::from_secs(5));
    let started = Instant::now();
    client.put("again", "yes").await.unwrap();
    assert_eq!(
        client.get("again").await.unwrap().as_deref(),
        Some(&b"yes"[..])
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    for node in &cluster.nodes {
        node.assert_no_panic();
    }
}

/// While the leader is frozen, clients of each healthy node keep getting answers: the
/// follower stops waiting for the frozen leader as soon as raft elects another one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_every_healthy_node_keeps_serving_while_the_leader_is_frozen() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let frozen = &cluster.nodes[(leader - 1) as usize];
    let healthy: Vec<&NodeProc> = cluster.nodes.iter().filter(|n| n.id != leader).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let counts: Vec<Arc<AtomicU64>> = healthy
        .iter()
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let mut tasks = Vec::new();
    for (node, count) in healthy.iter().zip(&counts) {
        // A writer and a linearizable reader per healthy node, as separate clients would.
        tasks.extend(start_writers(node, 1, "w/", stop.clone(), count.clone()));
        let client = client_of(node, Duration::from_secs(3));
        let stop = stop.clone();
        let count = count.clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if client.get("w/0-1").await.is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    wait_until(Duration::from_secs(10), "load on both followers", || {
        let counts = counts.clone();
        async move {
            counts
                .iter()
                .all(|c| c.load(Ordering::Relaxed) >= 20)
                .then_some(())
        }
    })
    .await;

    frozen.pause();
    wait_for_other_leader(&cluster, leader).await;
    // Start counting once every healthy node has served something under the new leader (its
    // clients may first have had to give up on requests sent to the frozen one), then count
    // what each serves in a 3 s window (a measurement, not synchronisation).
    let elected: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    wait_until(
        Duration::from_secs(10),
        "every healthy node to serve again",
        || {
            let counts = counts.clone();
            let elected = elected.clone();
            async move {
                counts
                    .iter()
                    .zip(&elected)
                    .all(|(c, e)| c.load(Ordering::Relaxed) > *e)
                    .then_some(())
            }
        },
    )
    .await;
    let before: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during: Vec<u64> = counts
        .iter()
        .zip(&before)
        .map(|(c, b)| c.load(Ordering::Relaxed) - b)
        .collect();
    frozen.resume();
    eprintln!(
        "operations served in 3 s while leader {leader} was frozen, by node {:?}: {during:?}",
        healthy.iter().map(|n| n.id).collect::<Vec<_>>()
    );
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    for (node, ops) in healthy.iter().zip(&during) {
        assert!(
            *ops >= 20,
            "node {} served only {ops} operations in 3 s while leader {leader} was frozen ({during:?})",
            node.id
        );
    }
}
