//! `strata dev` as a user runs it: one process that prints "ready", serves the CLI, reports
//! itself healthy, stops cleanly on SIGTERM and keeps its data across a restart.

#![allow(clippy::unwrap_used)]

mod common;

use common::{
    cli_ok, send_sigterm, strata_bin, wait_exit, wait_for_addrs, wait_until, DEV_ON_ANY_PORT,
};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[derive(Debug, Deserialize)]
struct Addrs {
    api: std::net::SocketAddr,
}

/// One `strata dev` process with its output in files.
struct Dev {
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
    /// `http://127.0.0.1:port` of the API.
    url: String,
}

impl Dev {
    /// Starts `strata dev` on `data_dir` and waits until it says it is ready.
    async fn start(root: &Path, data_dir: &Path, run: u32) -> Dev {
        let addrs_file = root.join(format!("addrs.{run}.json"));
        let stdout = root.join(format!("stdout.{run}"));
        let stderr = root.join(format!("stderr.{run}"));
        let mut child = Command::new(strata_bin())
            .arg("dev")
            .arg("--data-dir")
            .arg(data_dir)
            .args(DEV_ON_ANY_PORT)
            .arg("--addrs-file")
            .arg(&addrs_file)
            .env_remove("STRATA_LOG")
            .env_remove("STRATA_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn strata dev");
        let addrs: Addrs = wait_for_addrs(
            &mut child,
            &addrs_file,
            &[&stdout, &stderr],
            Duration::from_secs(20),
        )
        .await;
        let mut dev = Dev {
            child: Some(child),
            stdout,
            stderr,
            url: String::new(),
        };
        dev.url = format!("http://{}", addrs.api);
        let stdout_path = dev.stdout.clone();
        let ready_line = wait_until(Duration::from_secs(20), "strata dev to print ready", || {
            let path = stdout_path.clone();
            async move {
                let text = std::fs::read_to_string(&path).ok()?;
                text.lines()
                    .find(|l| l.contains("ready"))
                    .map(str::to_string)
            }
        })
        .await;
        assert!(ready_line.contains("node 1"), "{ready_line}");
        let stdout = dev.stdout();
        assert!(
            stdout.contains(&format!("api     {}", dev.url)),
            "stdout does not show the bound API address {}:\n{stdout}",
            dev.url
        );
        dev
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap()
    }

    /// Runs a client command against this node.
    fn cli(&self, args: &[&str]) -> String {
        cli_ok(std::slice::from_ref(&self.url), args)
    }

    /// Sends SIGTERM and checks a clean, prompt exit with a clean log.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("dev is running");
        send_sigterm(&child);
        let Some(status) = wait_exit(&mut child, Duration::from_secs(10)) else {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "strata dev did not exit within 10s of SIGTERM:\n{}",
                self.stderr()
            );
        };
        let stderr = self.stderr();
        assert_eq!(status.code(), Some(0), "exit status {status:?}:\n{stderr}");
        assert!(stderr.contains("node stopped"), "{stderr}");
        assert!(!stderr.contains(" ERROR "), "ERROR lines:\n{stderr}");
        assert!(!stderr.contains("panicked"), "panic:\n{stderr}");
        assert!(!self.stdout().contains("panicked"));
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn get_status(url: &str) -> (u16, String) {
    let response = common::http_client().get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Every listener `strata dev` binds has a flag in the harness's [`DEV_ON_ANY_PORT`], so no
/// test ever binds a default port.
#[test]
fn t00_the_harness_covers_every_dev_listener() {
    let help = Command::new(strata_bin())
        .args(["dev", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let flags = regex::Regex::new(r"--[a-z-]+-addr\b").unwrap();
    let listed: Vec<&str> = flags
        .find_iter(&help)
        .map(|m| m.as_str())
        .filter(|flag| *flag != "--advertise-addr")
        .collect();
    assert!(listed.len() >= 6, "dev --help lists {listed:?}");
    for flag in listed {
        assert!(
            DEV_ON_ANY_PORT.contains(&flag),
            "strata dev has {flag}, which tests/common DEV_ON_ANY_PORT does not set to port 0"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_dev_serves_the_cli_reports_health_stops_cleanly_and_keeps_data() {
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("data");
    let mut dev = Dev::start(root.path(), &data_dir, 1).await;

    assert_eq!(dev.cli(&["kv", "put", "k", "v"]), "OK\n");
    assert_eq!(dev.cli(&["kv", "get", "k"]), "v\n");
    assert_eq!(dev.cli(&["kv", "get", "missing"]), "");

    let status: serde_json::Value =
        serde_json::from_str(&dev.cli(&["--output", "json", "cluster", "status"])).unwrap();
    assert_eq!(status["leader"], 1, "{status}");
    let members = status["members"].as_array().expect("members array");
    assert_eq!(members.len(), 1, "{status}");
    let member = &members[0];
    assert_eq!(member["id"], 1, "{status}");
    assert_eq!(member["role"], "leader", "{status}");
    assert!(
        member["raft_addr"].as_str().is_some_and(|a| !a.is_empty()),
        "{status}"
    );
    assert_eq!(
        member["api_addr"].as_str().map(|a| format!("http://{a}")),
        Some(dev.url.clone()),
        "{status}"
    );

    let (code, metrics) = get_status(&format!("{}/metrics", dev.url)).await;
    assert_eq!(code, 200);
    for name in ["strata_raft_term", "strata_kv_revision"] {
        assert!(
            metrics.lines().any(|l| l.starts_with(name)),
            "/metrics has no {name}:\n{metrics}"
        );
    }
    assert_eq!(get_status(&format!("{}/livez", dev.url)).await.0, 200);
    let (code, body) = get_status(&format!("{}/readyz", dev.url)).await;
    assert_eq!(code, 200, "{body}");

    // A node turns transparent huge pages off for itself (the kernel says so in its status;
    // the line exists since Linux 5.0).
    let pid = dev.child.as_ref().expect("running").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }

    dev.stop();

    // Same data folder, new ports: the key is still there.
    let dev = Dev::start(root.path(), &data_dir, 2).await;
    assert_eq!(dev.cli(&["kv", "get", "k"]), "v\n");
    let status: serde_json::Value =
        serde_json::from_str(&dev.cli(&["--output", "json", "cluster", "status"])).unwrap();
    assert_eq!(status["leader"], 1, "{status}");
    let mut dev = dev;
    dev.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_the_cli_sorts_filters_and_keeps_values_and_leases_across_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("data");
    let mut dev = Dev::start(root.path(), &data_dir, 1).await;
    let revision = |dev: &Dev| -> i64 {
        let status: serde_json::Value =
            serde_json::from_str(&dev.cli(&["--output", "json", "cluster", "status"])).unwrap();
        status["revision"].as_i64().expect("revision")
    };
    let first = revision(&dev) + 1;
    // Created at first, first+1, first+2; s/a written again at first+3.
    for (key, value) in [("s/a", "3"), ("s/b", "1"), ("s/c", "2"), ("s/a", "3")] {
        assert_eq!(dev.cli(&["kv", "put", key, value]), "OK\n");
    }
    let keys = |dev: &Dev, extra: &[&str]| {
        let mut args = vec!["kv", "get", "s/", "--prefix", "--keys-only"];
        args.extend_from_slice(extra);
        dev.cli(&args)
    };
    let by_mod = keys(&dev, &["--sort-by", "modify", "--order", "descend"]);
    assert_eq!(by_mod, "s/a\ns/c\ns/b\n");
    let by_value = keys(&dev, &["--sort-by", "value", "--limit", "2"]);
    assert_eq!(by_value, "s/b\ns/c\n");
    let created_early = (first + 1).to_string();
    assert_eq!(
        keys(&dev, &["--max-create-rev", &created_early]),
        "s/a\ns/b\n"
    );
    let modified_last = (first + 3).to_string();
    assert_eq!(keys(&dev, &["--min-mod-rev", &modified_last]), "s/a\n");

    // Keep the value, then the lease: both decided by the store when the write applies.
    assert_eq!(dev.cli(&["kv", "put", "s/b", "--ignore-value"]), "OK\n");
    let lease = dev.cli(&["lease", "grant", "300"]);
    let lease = lease
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    assert_eq!(
        dev.cli(&["kv", "put", "s/c", "x", "--lease", &lease]),
        "OK\n"
    );
    assert_eq!(
        dev.cli(&["kv", "put", "s/c", "y", "--ignore-lease"]),
        "OK\n"
    );
    let refused = common::cli(
        std::slice::from_ref(&dev.url),
        &["kv", "put", "s/none", "--ignore-value"],
    );
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("key not found"), "{message}");

    let check = |dev: &Dev| {
        assert_eq!(dev.cli(&["kv", "get", "s/b"]), "1\n");
        let json: serde_json::Value =
            serde_json::from_str(&dev.cli(&["--output", "json", "kv", "get", "s/c"])).unwrap();
        let kv = &json["kvs"][0];
        assert_eq!(kv["value"], "y", "{json}");
        assert_eq!(
            format!("{:x}", kv["lease"].as_i64().expect("lease")),
            lease,
            "{json}"
        );
        assert_eq!(dev.cli(&["kv", "get", "s/none"]), "");
    };
    check(&dev);
    dev.stop();
    // The log (with format-3 entries) replays to the same state.
    let dev = Dev::start(root.path(), &data_dir, 2).await;
    check(&dev);
    let mut dev = dev;
    dev.stop();
}
