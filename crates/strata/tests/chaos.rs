//! Fault injection with a linearizability check, on real `strata server` processes.
//!
//! Clients (one per node, each pinned to its node) read, write and compare-and-set a few keys
//! and record every operation with its invocation and completion time and its outcome (ok,
//! definitely failed, or unknown). Meanwhile a nemesis hurts the cluster: kill -9 and restart,
//! SIGSTOP/SIGCONT, or a partition (the fault-injecting transport), aimed at the leader or at
//! a random node. When the faults end, every node must accept a write and a linearizable read
//! within 5 s, and the history must be linearizable (`common::linearizability`, a
//! Wing–Gong–Lowe search per key). The checker is also shown to fail on a mutated copy of the
//! same history, so a pass means something.
//!
//! The suite runs a short run per nemesis. `bench/chaos.sh` runs long ones through the same
//! tests with `STRATA_CHAOS_SECS` (fault period, default 12), `STRATA_CHAOS_SEED` (default:
//! random, printed), `STRATA_CHAOS_TARGET` (`leader` or `random`; each test has a default),
//! `STRATA_CHAOS_HOLD_MS` (how long a fault lasts; default random 1–3 s) and
//! `STRATA_CHAOS_GAP_MS` (quiet time between faults; default random 0.5–2 s).
//! Each run prints one `CHAOS {...}` JSON line with its figures.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/linearizability.rs"]
mod linearizability;

use common::Cluster;
use linearizability::{History, Op, Outcome};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata_client::{Client, ClientError};
use strata_proto::error::ErrorCode;
use strata_proto::kv::{
    Compare, CompareResult, CompareTarget, PutRequest, RangeRequest, RangeResponse, RequestOp,
    TxnRequest, TxnResponse,
};

const KEYS: &[&str] = &["chaos/a", "chaos/b", "chaos/c"];
const CLIENTS: usize = 5;
/// A client gives up on one operation after this long (its outcome is then unknown).
const OP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Nemesis {
    /// kill -9, then restart.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Pause,
    /// Cut off from the others both ways, then healed.
    Partition,
    /// One follower killed for the whole period (the error-log flood scenario).
    DeadFollower,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Leader,
    Random,
}

struct Settings {
    fault_period: Duration,
    seed: u64,
    target: Option<Target>,
    /// How long each fault lasts; random in 1–3 s unless set.
    hold: Option<Duration>,
    /// Quiet time between faults; random in 0.5–2 s unless set.
    gap: Option<Duration>,
}

fn env_millis(name: &str) -> Option<Duration> {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_millis)
}

impl Settings {
    fn from_env() -> Settings {
        let secs = std::env::var("STRATA_CHAOS_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(12);
        let seed = std::env::var("STRATA_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        let target = match std::env::var("STRATA_CHAOS_TARGET").as_deref() {
            Ok("leader") => Some(Target::Leader),
            Ok("random") => Some(Target::Random),
            _ => None,
        };
        Settings {
            fault_period: Duration::from_secs(secs),
            seed,
            target,
            hold: env_millis("STRATA_CHAOS_HOLD_MS"),
            gap: env_millis("STRATA_CHAOS_GAP_MS"),
        }
    }
}

/// One client's loop: random operations on random keys against its own node, recorded.
async fn client_loop(
    id: usize,
    node_url: String,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let client = Client::new(&[node_url]).with_timeout(OP_TIMEOUT);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut last_seen: Vec<Option<String>> = vec![None; KEYS.len()];
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let k = rng.gen_range(0..KEYS.len());
        let key = KEYS[k];
        let value = format!("c{id}-{n}");
        let choice = rng.gen_range(0..10);
        let op = if choice < 4 {
            Op::Read
        } else if choice < 7 {
            Op::write(value.clone())
        } else {
            Op::cas(last_seen[k].as_deref(), value.clone())
        };
        let invoked = history.lock().unwrap().invoke(id, key, op.clone());
        let outcome = match op {
            Op::Read => match read(&client, key).await {
                Ok(seen) => {
                    last_seen[k] = seen.clone();
                    Outcome::read(seen.as_deref())
                }
                Err(_) => Outcome::Unknown,
            },
            Op::Write(value) => match write(&client, key, &value).await {
                Ok(()) => Outcome::written(),
                Err(e) => failure(&e),
            },
            Op::Cas { expect, new } => match cas(&client, key, expect.as_deref(), &new).await {
                Ok(succeeded) => Outcome::cas(succeeded),
                Err(e) => failure(&e),
            },
        };
        history.lock().unwrap().complete(invoked, outcome);
    }
}

/// A write that answered `unavailable` was never proposed (the client retried every such
/// answer until its deadline); anything else that failed may have been applied.
fn failure(error: &ClientError) -> Outcome {
    match error.code() {
        Some(ErrorCode::Unavailable) => Outcome::Fail,
        _ => Outcome::Unknown,
    }
}

async fn read(client: &Client, key: &str) -> Result<Option<String>, ClientError> {
    let request = RangeRequest {
        key: key.into(),
        ..Default::default()
    };
    let response: RangeResponse = client.post("/v1/kv/range", &request).await?;
    Ok(response
        .kvs
        .into_iter()
        .next()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

async fn write(client: &Client, key: &str, value: &str) -> Result<(), ClientError> {
    client.put(key, value).await.map(|_| ())
}

async fn cas(
    client: &Client,
    key: &str,
    expect: Option<&str>,
    new: &str,
) -> Result<bool, ClientError> {
    let target = match expect {
        Some(value) => CompareTarget::Value(value.into()),
        None => CompareTarget::Version(0),
    };
    let request = TxnRequest {
        compare: vec![Compare {
            key: key.into(),
            range_end: Vec::new(),
            prefix: false,
            result: CompareResult::Equal,
            target,
        }],
        success: vec![RequestOp::Put(PutRequest {
            key: key.into(),
            value: new.into(),
            ..Default::default()
        })],
        failure: Vec::new(),
    };
    let response: TxnResponse = client.post("/v1/kv/txn", &request).await?;
    Ok(response.succeeded)
}

/// The leader as some node that answers quickly sees it.
async fn current_leader(cluster: &Cluster) -> Option<u64> {
    for node in &cluster.nodes {
        if !node.is_running() {
            continue;
        }
        if let Some(leader) = node.quick_status().await.and_then(|s| s.leader) {
            return Some(leader);
        }
    }
    None
}

/// Hurts the cluster for `period`, one fault at a time; leaves it whole at the end. The
/// sleeps here are the faults' lengths and the quiet gaps between them (the nemesis's
/// schedule), not waits for a condition: every wait for the cluster polls with a deadline.
async fn run_nemesis(
    cluster: &mut Cluster,
    nemesis: Nemesis,
    target: Target,
    settings: &Settings,
    rng: &mut StdRng,
) -> usize {
    let end = Instant::now() + settings.fault_period;
    if nemesis == Nemesis::DeadFollower {
        let leader = current_leader(cluster).await.unwrap_or(1);
        let victim = if leader == 1 { 2 } else { 1 };
        cluster.node(victim).kill9();
        tokio::time::sleep(settings.fault_period).await;
        cluster.node(victim).restart().await;
        return 1;
    }
    let mut faults = 0;
    while Instant::now() < end {
        let victim = match target {
            Target::Leader => current_leader(cluster).await,
            Target::Random => None,
        }
        .unwrap_or_else(|| rng.gen_range(1..=cluster.nodes.len() as u64));
        faults += 1;
        let hold = settings
            .hold
            .unwrap_or_else(|| Duration::from_millis(rng.gen_range(1_000..3_000)));
        match nemesis {
            Nemesis::Kill => {
                cluster.node(victim).kill9();
                tokio::time::sleep(hold).await;
                cluster.node(victim).restart().await;
            }
            Nemesis::Pause => {
                cluster.node(victim).pause();
                tokio::time::sleep(hold).await;
                cluster.node(victim).resume();
            }
            Nemesis::Partition => {
                cluster.isolate(victim).await;
                tokio::time::sleep(hold).await;
                cluster.heal().await;
            }
            Nemesis::DeadFollower => unreachable!("handled above"),
        }
        let gap = settings
            .gap
            .unwrap_or_else(|| Duration::from_millis(rng.gen_range(500..2_000)));
        tokio::time::sleep(gap).await;
    }
    faults
}

/// Every node accepts a write and a linearizable read, each within `deadline`.
async fn assert_every_node_serves(cluster: &Cluster, deadline: Duration) -> Duration {
    let mut slowest = Duration::ZERO;
    for node in &cluster.nodes {
        let began = Instant::now();
        let key = format!("chaos/after-{}", node.id);
        let client = Client::new(&[node.url()]).with_timeout(deadline);
        if let Err(e) = client.put(key.as_str(), "ok").await {
            panic!(
                "node {} refused a write after the faults healed: {e}",
                node.id
            );
        }
        match client.get(key.as_str()).await {
            Ok(Some(value)) => assert_eq!(value, b"ok"),
            other => panic!(
                "node {} failed a linearizable read after the faults healed: {other:?}",
                node.id
            ),
        }
        let took = began.elapsed();
        assert!(
            took <= deadline,
            "node {} took {took:?} to serve a write and a read",
            node.id
        );
        slowest = slowest.max(took);
    }
    slowest
}

/// Adds a read after everything else that returns the value an acknowledged write replaced:
/// a stale read, equivalently a lost acknowledged write. Returns `None` when the history has
/// no key with two acknowledged, non-overlapping writes.
fn with_stale_read(ops: &[linearizability::Operation]) -> Option<Vec<linearizability::Operation>> {
    let end = ops.iter().map(|o| o.complete.max(o.invoke)).max()? + 1;
    for key in KEYS {
        let writes: Vec<&linearizability::Operation> = ops
            .iter()
            .filter(|o| o.key == *key && o.outcome == Outcome::written())
            .collect();
        // An acknowledged write that completed before some later acknowledged write began.
        for older in &writes {
            let replaced = writes.iter().any(|newer| newer.invoke > older.complete);
            let Op::Write(old_value) = &older.op else {
                continue;
            };
            if !replaced {
                continue;
            }
            // Every operation on the key after the newer writes must not restore the old value;
            // values are unique, so only `older` ever wrote it.
            let mut mutated = ops.to_vec();
            mutated.push(linearizability::Operation {
                client: usize::MAX,
                key: key.to_string(),
                op: Op::Read,
                invoke: end,
                complete: end + 1,
                outcome: Outcome::read(Some(old_value)),
            });
            return Some(mutated);
        }
    }
    None
}

async fn chaos(nemesis: Nemesis, default_target: Target) {
    let settings = Settings::from_env();
    let target = settings.target.unwrap_or(default_target);
    eprintln!(
        "chaos: nemesis {nemesis:?}, target {target:?}, {:?}, seed {} (STRATA_CHAOS_SEED)",
        settings.fault_period, settings.seed
    );
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let mut cluster = Cluster::start(3, &[]).await;
    let history = Arc::new(Mutex::new(History::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        let url = cluster.nodes[id % cluster.nodes.len()].url();
        clients.push(tokio::spawn(client_loop(
            id,
            url,
            history.clone(),
            stop.clone(),
            settings.seed.wrapping_add(id as u64 + 1),
        )));
    }
    let faults = run_nemesis(&mut cluster, nemesis, target, &settings, &mut rng).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let slowest = assert_every_node_serves(&cluster, Duration::from_secs(5)).await;

    let ops = history.lock().unwrap().ops().to_vec();
    let summary = linearizability::summary(&ops);
    let checked = Instant::now();
    let verdict = linearizability::check(&ops);
    let check_time = checked.elapsed();
    let error_lines: usize = cluster
        .nodes
        .iter()
        .map(|n| n.logs().lines().filter(|l| l.contains(" ERROR ")).count())
        .sum();
    println!(
        "CHAOS {{\"nemesis\":\"{nemesis:?}\",\"target\":\"{target:?}\",\"secs\":{},\"seed\":{},\"faults\":{faults},\"ops\":{},\"ok\":{},\"fail\":{},\"unknown\":{},\"linearizable\":{},\"heal_ms\":{},\"check_ms\":{},\"error_lines\":{error_lines}}}",
        settings.fault_period.as_secs(),
        settings.seed,
        summary.all.total(),
        summary.all.ok,
        summary.all.fail,
        summary.all.unknown,
        verdict.is_linearizable(),
        slowest.as_millis(),
        check_time.as_millis(),
    );
    assert!(
        verdict.is_linearizable(),
        "seed {}: {verdict}\n{summary}",
        settings.seed
    );
    assert!(
        summary.all.ok >= 100,
        "too few operations succeeded for the check to mean much: {summary}"
    );
    // The checker sees a stale read (a lost acknowledged write) in this very history.
    let mutated = with_stale_read(&ops).expect("the history has a replaced acknowledged write");
    assert!(
        linearizability::check(&mutated).violation().is_some(),
        "the checker accepted a stale read"
    );
    for node in &cluster.nodes {
        node.assert_no_panic();
    }
    if nemesis == Nemesis::DeadFollower {
        assert!(
            error_lines < 50,
            "{error_lines} ERROR lines with one follower dead"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_kill_and_restart_nodes_keeps_history_linearizable_and_cluster_live() {
    chaos(Nemesis::Kill, Target::Leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_pausing_nodes_keeps_history_linearizable_and_cluster_live() {
    chaos(Nemesis::Pause, Target::Leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t40_a_dead_follower_does_not_flood_the_logs() {
    chaos(Nemesis::DeadFollower, Target::Random).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_partitioning_nodes_keeps_history_linearizable_and_cluster_live() {
    chaos(Nemesis::Partition, Target::Random).await;
}
