//! The component seam as an operator meets it: `roles` choose which components a node runs,
//! `[listen]` / `--listen NAME=HOST:PORT` place any component's listener, component sections
//! are checked by their component, and the crate graph keeps components independent.

#![allow(clippy::unwrap_used)]

mod common;

use common::{run_with_deadline, strata_bin, NodeProc};
use std::process::Command;
use std::time::Duration;

async fn status_of(url: &str) -> u16 {
    common::http_client()
        .get(url)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_node_runs_only_the_components_its_roles_name() {
    let root = tempfile::tempdir().unwrap();
    let node = NodeProc::start(
        1,
        root.path(),
        Some("1=127.0.0.1:0"),
        &[
            "--roles",
            "registry",
            "--grpc-addr",
            "127.0.0.1:0",
            "--listen",
            "consul=127.0.0.1:0",
        ],
    )
    .await;
    // The registry runs, with its Consul listener placed by the generic flag.
    let consul = node.consul.clone().expect("consul listener bound");
    assert_eq!(
        status_of(&format!("http://{consul}/v1/catalog/services")).await,
        200
    );
    assert_eq!(
        status_of(&format!("{}/v1/registry/services", node.url())).await,
        200
    );
    // The etcd API and the config center do not: no gRPC listener, no config routes.
    assert!(node.grpc.is_none(), "etcd is not among the roles");
    assert_eq!(
        status_of(&format!("{}/v1/config/list", node.url())).await,
        404
    );
    // The KV API is the node's own and always there.
    assert_eq!(status_of(&format!("{}/readyz", node.url())).await, 200);
}

fn check_config(toml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, toml).unwrap();
    let mut command = Command::new(strata_bin());
    command.arg("server").arg("--check-config").arg(&path);
    let output = run_with_deadline(&mut command, b"", Duration::from_secs(20));
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn component_sections_roles_and_listeners_are_checked_by_name() {
    let (ok, text) = check_config("[initial_cluster]\n1 = \"127.0.0.1:7701\"\n[registry]\ndns_domain = \"sd.example.com\"\n[listen]\ngrpc = \"127.0.0.1:2379\"\n");
    assert!(ok, "{text}");
    let (ok, text) = check_config("[cache]\nsize = 1\n");
    assert!(!ok && text.contains("unknown section `cache`"), "{text}");
    let (ok, text) = check_config("[gateway]\nroutes = 1\n");
    assert!(!ok && text.contains("unknown field `routes`"), "{text}");
    let (ok, text) = check_config("roles = [\"registry\", \"cache\"]\n");
    assert!(!ok && text.contains("unknown role `cache`"), "{text}");
    let (ok, text) = check_config("[listen]\nsmtp = \"127.0.0.1:25\"\n");
    assert!(!ok && text.contains("unknown listener `smtp`"), "{text}");
    let (ok, text) = check_config("[registry]\ndns_domain = \"not a domain\"\n");
    assert!(!ok && text.contains("dns_domain"), "{text}");
    let (ok, text) = check_config("[config_center]\nhistory_retention = 0\n");
    assert!(!ok && text.contains("history_retention"), "{text}");
    let (ok, text) =
        check_config("grpc_addr = \"127.0.0.1:1\"\n[listen]\ngrpc = \"127.0.0.1:2\"\n");
    assert!(!ok && text.contains("disagree"), "{text}");
}

#[test]
fn nacos_without_the_components_it_serves_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(strata_bin());
    command
        .arg("server")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--api-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0"])
        .args(["--initial-cluster", "1=127.0.0.1:0"])
        .args(["--roles", "nacos", "--nacos-addr", "127.0.0.1:0"])
        .env_remove("STRATA_CONFIG");
    let output = run_with_deadline(&mut command, b"", Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("cannot start nacos") && stderr.contains("registry and config_center"),
        "{stderr}"
    );
}

/// The crate graph: a component crate depends on neither the node nor another component, and
/// only the node (and the binary above it) depends on every component.
#[test]
fn components_depend_on_the_seam_not_on_the_node_or_each_other() {
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let deps_of = |name: &str| -> Vec<String> {
        let package = packages.iter().find(|p| p["name"] == name).unwrap();
        package["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].is_null())
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect()
    };
    // Every crate that implements `strata_component::Component`.
    let components = [
        "strata-etcd",
        "strata-registry",
        "strata-configcenter",
        "strata-nacos",
        "strata-gateway",
        "strata-xds",
        "strata-monitor",
        "strata-console",
    ];
    for component in components {
        let deps = deps_of(component);
        assert!(
            deps.contains(&"strata-component".to_string()),
            "{component} is not on the seam"
        );
        assert!(
            !deps.contains(&"strata-node".to_string()),
            "{component} depends on the node"
        );
        for other in components {
            assert!(
                other == component || !deps.contains(&other.to_string()),
                "{component} depends on {other}; call it through a service trait of strata-api"
            );
        }
    }
    // The API types crate links no server and does no I/O, so clients can use it alone.
    let api_deps = deps_of("strata-api");
    for dep in &api_deps {
        assert!(
            !dep.starts_with("strata-") || dep == "strata-proto",
            "strata-api depends on {dep}"
        );
        assert!(
            !["tokio", "hyper", "axum", "reqwest", "tonic"].contains(&dep.as_str()),
            "strata-api depends on {dep}"
        );
    }
    for package in packages {
        let name = package["name"].as_str().unwrap();
        if ["strata-node", "strata"].contains(&name) {
            continue;
        }
        let deps = deps_of(name);
        let all = components.iter().all(|c| deps.contains(&c.to_string()));
        assert!(!all, "{name} depends on every component; only the node may");
    }
}
