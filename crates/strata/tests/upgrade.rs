//! A data folder written by an older binary opens under this one: the log and snapshot formats
//! are versioned, and what an old binary wrote stays readable (see ARCHITECTURE.md, "Changing
//! the log format").
//!
//! Each `fixtures/data-vN` was written by the last binary of log format N with
//! `fixtures/make-data.sh` (v1: commit ed1e904; v2: commit 28264f7): a snapshot plus log
//! entries past it, holding KV keys with history, a key on a lease, registry instances and a
//! config with two versions. `data-vN.facts` records the lease id the folder holds.

#![allow(clippy::unwrap_used)]

mod common;

use common::{cli_ok, wait_until, NodeProc};
use std::path::Path;
use std::time::Duration;

/// The lease the fixture's `fixture/leased` key is attached to, from `data-NAME.facts`.
fn fixture_lease(name: &str) -> i64 {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/data-{name}.facts"));
    let facts = std::fs::read_to_string(path).unwrap();
    let line = facts.lines().next().unwrap();
    line.strip_prefix("lease ").unwrap().parse().unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Everything the fixture holds, read through the CLI as a user would.
async fn assert_fixture_served(node: &NodeProc, lease: i64) {
    let ep = [node.url()];
    // Reads are linearizable, so this also waits for the node to lead and apply its log.
    let history = wait_until(Duration::from_secs(20), "the fixture served", || {
        let ep = ep.clone();
        async move {
            let out = common::cli(&ep, &["--output", "json", "kv", "get", "fixture/history"]);
            out.status
                .success()
                .then(|| String::from_utf8(out.stdout).unwrap())
        }
    })
    .await;
    let history: serde_json::Value = serde_json::from_str(&history).unwrap();
    let kv = &history["kvs"][0];
    assert_eq!(kv["value"], "three", "{history}");
    assert_eq!(kv["create_revision"], 43, "{history}");
    assert_eq!(kv["mod_revision"], 89, "{history}");
    assert_eq!(kv["version"], 3, "{history}");
    assert!(history["header"]["revision"].as_i64().unwrap() >= 91);

    for i in (1..=70).filter(|i| *i != 40) {
        assert_eq!(
            cli_ok(&ep, &["kv", "get", &format!("fixture/snap/{i}")]).trim(),
            format!("value-{i}")
        );
    }
    assert_eq!(cli_ok(&ep, &["kv", "get", "fixture/snap/40"]).trim(), "");
    for i in 1..=10 {
        assert_eq!(
            cli_ok(&ep, &["kv", "get", &format!("fixture/log/{i}")]).trim(),
            format!("value-{i}")
        );
    }
    let leased = cli_ok(&ep, &["--output", "json", "kv", "get", "fixture/leased"]);
    let leased: serde_json::Value = serde_json::from_str(&leased).unwrap();
    assert_eq!(leased["kvs"][0]["value"], "on-lease", "{leased}");
    assert_eq!(leased["kvs"][0]["lease"], lease, "{leased}");
    let leases = cli_ok(&ep, &["--output", "json", "lease", "list"]);
    assert!(leases.contains(&lease.to_string()), "{leases}");

    let web = cli_ok(&ep, &["svc", "show", "web"]);
    assert!(web.contains("web-1") && web.contains("10.0.0.1"), "{web}");
    assert!(web.contains("web-2") && web.contains("10.0.0.2"), "{web}");

    let config = cli_ok(&ep, &["config", "get", "app.yaml"]);
    assert!(config.starts_with("greeting: hello again"), "{config:?}");
    let first = cli_ok(&ep, &["config", "get", "app.yaml", "--version", "1"]);
    assert_eq!(first, "greeting: hello\n");
}

#[tokio::test]
async fn a_data_folder_from_format_version_1_opens_serves_and_extends() {
    // Format 1 entries carry no tag: the log is rewritten once, in one batch.
    open_serve_and_extend("v1", true).await;
}

#[tokio::test]
async fn a_data_folder_from_format_version_2_opens_serves_and_extends() {
    // Format 2 entries carry their tag and decode under format 3: nothing is rewritten.
    open_serve_and_extend("v2", false).await;
}

async fn open_serve_and_extend(name: &str, log_rewritten: bool) {
    let root = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/data-{name}"));
    copy_dir(&fixture, &root.path().join("n1/data"));

    let mut node = NodeProc::start(1, root.path(), None, &[]).await;
    assert_fixture_served(&node, fixture_lease(name)).await;
    // The folder says this build's format now.
    let version = std::fs::read_to_string(node.data_dir().join("VERSION")).unwrap();
    assert_eq!(version.trim(), strata_proto::log::FORMAT.to_string());
    assert_eq!(
        node.logs().contains("upgraded the raft log format"),
        log_rewritten,
        "{}",
        node.logs()
    );

    // Extend it: new writes land after the old ones, and survive a restart.
    let ep = [node.url()];
    cli_ok(&ep, &["kv", "put", "fixture/history", "four"]);
    cli_ok(&ep, &["kv", "put", "fixture/new", "written-by-this-binary"]);
    cli_ok(&ep, &["kv", "del", "fixture/snap/1"]);
    // A write only format 3 can carry.
    cli_ok(&ep, &["kv", "put", "fixture/snap/3", "--ignore-value"]);
    let out = common::cli_with_stdin(
        &ep,
        &["config", "publish", "--file", "-", "app.yaml"],
        b"greeting: third\n",
    );
    assert!(out.status.success(), "{out:?}");
    node.terminate();
    node.restart().await;
    let ep = [node.url()];
    wait_until(
        Duration::from_secs(20),
        "the extended folder served",
        || {
            let ep = ep.clone();
            async move {
                let out = common::cli(&ep, &["kv", "get", "fixture/new"]);
                (out.status.success() && out.stdout == b"written-by-this-binary\n").then_some(())
            }
        },
    )
    .await;
    let history = cli_ok(&ep, &["--output", "json", "kv", "get", "fixture/history"]);
    let history: serde_json::Value = serde_json::from_str(&history).unwrap();
    assert_eq!(history["kvs"][0]["value"], "four", "{history}");
    assert_eq!(history["kvs"][0]["create_revision"], 43, "{history}");
    assert_eq!(history["kvs"][0]["version"], 4, "{history}");
    assert_eq!(cli_ok(&ep, &["kv", "get", "fixture/snap/1"]).trim(), "");
    assert_eq!(
        cli_ok(&ep, &["kv", "get", "fixture/snap/2"]).trim(),
        "value-2"
    );
    let kept = cli_ok(&ep, &["--output", "json", "kv", "get", "fixture/snap/3"]);
    let kept: serde_json::Value = serde_json::from_str(&kept).unwrap();
    assert_eq!(kept["kvs"][0]["value"], "value-3", "{kept}");
    assert_eq!(kept["kvs"][0]["version"], 2, "{kept}");
    assert_eq!(
        cli_ok(&ep, &["config", "get", "app.yaml"]),
        "greeting: third\n"
    );
    assert_eq!(
        cli_ok(&ep, &["config", "get", "app.yaml", "--version", "2"]),
        "greeting: hello again\n"
    );
    node.assert_no_panic();
    node.assert_quiet("opening and extending an older format's fixture");
}
