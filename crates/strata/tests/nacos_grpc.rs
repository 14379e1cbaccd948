//! The Nacos 2.x gRPC API (`--nacos-grpc-addr`) with the official client, nacos-sdk-python
//! 2.x, unchanged: config publish, query, remove and pushed changes; naming register, query,
//! subscribe with pushed updates, batch register and deregister; an ephemeral instance that
//! goes with its client's connection; error responses to bad payloads.
//!
//! The 2.x client lives in a folder of its own (`scripts/test.sh` installs it with
//! `pip install --target target/py-nacos2`), because its package also holds a `nacos` module
//! that would replace the 1.x client the HTTP API's tests drive. `STRATA_NACOS2_PYTHONPATH`
//! names another folder.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/nacos_grpc.py");

/// The folder that holds nacos-sdk-python 2.x.
fn client_folder() -> PathBuf {
    let folder = std::env::var_os("STRATA_NACOS2_PYTHONPATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../target/py-nacos2"
            ))
        });
    assert!(
        folder.join("v2/nacos").is_dir(),
        "nacos-sdk-python 2.x is not in {}: run scripts/test.sh, or \
         python3 -m pip install --target {} nacos-sdk-python==2.0.11",
        folder.display(),
        folder.display()
    );
    folder
}

/// `python3 nacos_grpc.py HTTP GRPC MODE ARGS..` against `node`.
fn script(node: &NodeProc, mode: &str, args: &[&str]) -> Command {
    let mut command = Command::new("python3");
    command
        .env("PYTHONPATH", client_folder())
        .arg(SCRIPT)
        .arg(node.nacos.as_deref().unwrap())
        .arg(node.nacos_grpc.as_deref().unwrap())
        .arg(mode)
        .args(args);
    command
}

/// Runs the script to the end and returns its stdout; fails the test if it failed.
fn run(node: &NodeProc, mode: &str, args: &[&str], timeout: Duration) -> String {
    let out = run_with_deadline(&mut script(node, mode, args), b"", timeout);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "nacos_grpc.py {mode} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_config_publish_query_push_and_remove() {
    let cluster = Cluster::start(1, NACOS_GRPC_ON_ANY_PORT).await;
    let node = &cluster.nodes[0];
    let stdout = run(node, "config", &[], Duration::from_secs(60));
    assert!(stdout.contains("all steps passed"), "{stdout}");
    // What the client published over gRPC is the config center's config: the native API
    // shows its history, the removal last.
    let history = cli_ok(
        &cluster.endpoints(),
        &["--output", "json", "config", "history", "grpc-app.yaml"],
    );
    assert!(history.contains("delete"), "{history}");
    assert!(
        node.metric("strata_nacos_grpc_requests_total")
            .await
            .unwrap_or(0.0)
            > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_config_changes_are_pushed_within_100ms_p99() {
    let cluster = Cluster::start(1, NACOS_GRPC_ON_ANY_PORT).await;
    let stdout = run(
        &cluster.nodes[0],
        "push-latency",
        &["1000"],
        Duration::from_secs(240),
    );
    let line = stdout.lines().last().unwrap_or_default();
    let report: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    println!("push latency over 1,000 changes (publish to listener): {report}");
    assert_eq!(report["changes"], 1000);
    let p99 = report["p99_ms"].as_f64().unwrap();
    assert!(p99 < 100.0, "p99 {p99} ms is not under 100 ms: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_naming_register_query_subscribe_batch_deregister() {
    let cluster = Cluster::start(1, NACOS_GRPC_ON_ANY_PORT).await;
    let stdout = run(&cluster.nodes[0], "naming", &[], Duration::from_secs(60));
    assert!(stdout.contains("all steps passed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t40_an_instance_goes_within_3s_of_its_client_being_killed() {
    let cluster = Cluster::start(1, NACOS_GRPC_ON_ANY_PORT).await;
    let node = &cluster.nodes[0];
    let folder = tempfile::tempdir().unwrap();
    let marker = folder.path().join("registered");
    let child = script(node, "hold", &[marker.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut holder = KillOnDrop(child);
    let list = format!(
        "http://{}/nacos/v1/ns/instance/list?serviceName=grpc-held",
        node.nacos.as_deref().unwrap()
    );
    let http = http_client();
    let hosts = |http: reqwest::Client, list: String| async move {
        let body: Value = http.get(&list).send().await.ok()?.json().await.ok()?;
        Some(body["hosts"].as_array()?.len())
    };
    wait_until(Duration::from_secs(30), "the held instance", || {
        let (http, list, marker) = (http.clone(), list.clone(), marker.clone());
        async move {
            if !marker.exists() {
                return None;
            }
            (hosts(http, list).await? == 1).then_some(())
        }
    })
    .await;
    holder.0.kill().unwrap();
    let killed = Instant::now();
    holder.0.wait().unwrap();
    wait_until(
        Duration::from_secs(3),
        "the instance gone within 3 s",
        || {
            let (http, list) = (http.clone(), list.clone());
            async move { (hosts(http, list).await? == 0).then_some(()) }
        },
    )
    .await;
    println!(
        "the instance went {} ms after its client was killed",
        killed.elapsed().as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t50_bad_payloads_get_error_responses() {
    let cluster = Cluster::start(1, NACOS_GRPC_ON_ANY_PORT).await;
    let node = &cluster.nodes[0];
    let stdout = run(node, "bad-input", &[], Duration::from_secs(60));
    assert!(stdout.contains("all steps passed"), "{stdout}");
    node.assert_no_panic();
}
