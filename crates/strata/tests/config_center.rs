//! The config center on real clusters: publish/history/diff/rollback/delete through the CLI,
//! listeners across a leader kill, gray releases, the client crate's local snapshot,
//! encryption at rest, and bad input.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn publish(endpoints: &[String], data_id: &str, content: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "--output", "json", "config", "publish", data_id, "--file", "-",
    ];
    args.extend_from_slice(extra);
    let out = cli_with_stdin(endpoints, &args, content.as_bytes());
    assert!(
        out.status.success(),
        "publish {data_id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn fails(endpoints: &[String], args: &[&str], stdin: &str, want: &str) {
    let out = cli_with_stdin(endpoints, args, stdin.as_bytes());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(
        stderr.starts_with('✘') && stderr.contains(want),
        "{args:?}: {stderr} (wanted {want:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_get_history_diff_rollback_delete() {
    let cluster = Cluster::start(3, &[]).await;
    let ep = cluster.endpoints();
    let v1 = publish(
        &ep,
        "app.yaml",
        "port: 80\nname: web\n",
        &["--type", "yaml", "--tag", "web"],
    );
    assert_eq!(v1["version"], 1);
    publish(&ep, "app.yaml", "port: 81\nname: web\n", &[]);
    // Every node serves the latest version.
    for node in &cluster.nodes {
        wait_until(
            Duration::from_secs(10),
            "version 2 on every node",
            || async {
                let out = cli(&[node.url()], &["config", "get", "app.yaml"]);
                (String::from_utf8_lossy(&out.stdout) == "port: 81\nname: web\n").then_some(())
            },
        )
        .await;
    }
    let history: Vec<Value> = serde_json::from_str(&cli_ok(
        &ep,
        &["--output", "json", "config", "history", "app.yaml"],
    ))
    .unwrap();
    assert_eq!(history.len(), 2);
    for (entry, version) in history.iter().zip([1, 2]) {
        assert_eq!(entry["version"], version);
        assert_eq!(entry["md5"].as_str().unwrap().len(), 32);
        assert!(entry["modified_at"].as_u64().unwrap() > 0);
    }
    let diff = cli_ok(
        &ep,
        &["config", "diff", "app.yaml", "--from", "1", "--to", "2"],
    );
    assert!(diff.contains("-port: 80\n+port: 81\n"), "{diff}");
    assert_eq!(
        cli_ok(&ep, &["config", "get", "app.yaml", "--version", "1"]),
        "port: 80\nname: web\n"
    );
    cli_ok(
        &ep,
        &["config", "rollback", "app.yaml", "--to-version", "1"],
    );
    let now: Value = serde_json::from_str(&cli_ok(
        &ep,
        &["--output", "json", "config", "get", "app.yaml"],
    ))
    .unwrap();
    assert_eq!(now["content"], "port: 80\nname: web\n");
    assert_eq!(now["version"], 3);
    assert_eq!(now["type"], "yaml", "a rollback keeps the type");
    let listed = cli_ok(&ep, &["--output", "json", "config", "list", "--tag", "web"]);
    assert!(listed.contains("app.yaml"), "{listed}");

    cli_ok(&ep, &["config", "delete", "app.yaml"]);
    fails(&ep, &["config", "get", "app.yaml"], "", "does not exist");
    // The history survives the delete, and versions keep rising.
    let again = publish(&ep, "app.yaml", "port: 82\n", &[]);
    assert_eq!(again["version"], 5, "version 4 was the delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_sees_every_change_once_in_order_across_leader_kill() {
    let mut cluster = Cluster::start(3, &[]).await;
    let ep = cluster.endpoints();
    publish(&ep, "feature-flags", "v=0\n", &[]);
    let mut listener = KillOnDrop(
        Command::new(strata_bin())
            .args(["--endpoints", &ep.join(","), "--output", "json"])
            .args(["config", "listen", "feature-flags"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let stdout = listener.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    // The listener is connected once a first change reaches it.
    let client = cluster.client();
    let mut next = 1;
    let first = loop {
        publish(&ep, "feature-flags", &format!("v={next}\n"), &[]);
        next += 1;
        if let Ok(v) = rx.recv_timeout(Duration::from_millis(500)) {
            break v;
        }
        assert!(next < 20, "the listener never connected");
    };
    let mut seen = vec![first["version"].as_u64().unwrap()];
    for _ in 0..5 {
        publish(&ep, "feature-flags", &format!("v={next}\n"), &[]);
        next += 1;
    }
    let leader = cluster.wait_for_leader().await;
    cluster.node(leader).kill9();
    let survivors: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.id != leader)
        .map(|n| n.url())
        .collect();
    for _ in 0..5 {
        publish(&survivors, "feature-flags", &format!("v={next}\n"), &[]);
        next += 1;
    }
    drop(client);
    let last = next as u64; // version = content number + 1 (version 1 was v=0)
    while *seen.last().unwrap() < last {
        let v = rx
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| panic!("listener stalled after {seen:?}"));
        assert_eq!(
            v["content"].as_str().unwrap(),
            format!("v={}\n", v["version"].as_u64().unwrap() - 1)
        );
        seen.push(v["version"].as_u64().unwrap());
    }
    let want: Vec<u64> = (seen[0]..=last).collect();
    assert_eq!(seen, want, "every version exactly once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gray_release_reaches_matching_labels_only() {
    let cluster = Cluster::start(3, &[]).await;
    let ep = cluster.endpoints();
    publish(&ep, "limits.json", "{\"qps\": 100}", &["--type", "json"]);
    let gray = |args: &[&str], content: &str| {
        let mut all = vec!["config", "gray", "limits.json", "--file", "-"];
        all.extend_from_slice(args);
        let out = cli_with_stdin(&ep, &all, content.as_bytes());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let get = |labels: &[&str]| {
        let mut args = vec!["config", "get", "limits.json"];
        for l in labels {
            args.extend(["--label", l]);
        }
        cli_ok(&ep, &args).trim().to_string()
    };
    gray(&["--labels", "env=canary,zone=a"], "{\"qps\": 500}");
    // Gray content must still parse as the config's type.
    fails(
        &ep,
        &[
            "config",
            "gray",
            "limits.json",
            "--file",
            "-",
            "--labels",
            "env=canary",
        ],
        "{\"qps\": ",
        "invalid json at line 1",
    );
    assert_eq!(get(&["env=canary", "zone=a"]), "{\"qps\": 500}");
    assert_eq!(
        get(&["env=canary"]),
        "{\"qps\": 100}",
        "a partial match sees main"
    );
    assert_eq!(get(&[]), "{\"qps\": 100}");
    cli_ok(&ep, &["config", "gray-abort", "limits.json"]);
    assert_eq!(get(&["env=canary", "zone=a"]), "{\"qps\": 100}");
    fails(
        &ep,
        &["config", "gray-abort", "limits.json"],
        "",
        "no gray release",
    );

    gray(&["--labels", "env=canary"], "{\"qps\": 700}");
    // A canary listener keeps seeing the gray content while main versions are published, and
    // hears about the promotion.
    let mut canary = KillOnDrop(
        Command::new(strata_bin())
            .args(["--endpoints", &ep.join(","), "--output", "json"])
            .args(["config", "listen", "limits.json", "--label", "env=canary"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let stdout = canary.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    // Connected once the node counts it.
    wait_until(Duration::from_secs(10), "the canary listener", || {
        let node = cluster.nodes[0].metric("strata_configcenter_listeners");
        async move { (node.await? >= 1.0).then_some(()) }
    })
    .await;
    publish(&ep, "limits.json", "{\"qps\": 150}", &[]);
    cli_ok(&ep, &["config", "gray-promote", "limits.json"]);
    let heard = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        heard["event"], "gray-promote",
        "the main publish reached a canary: {heard}"
    );
    assert_eq!(heard["content"], "{\"qps\": 700}");
    drop(canary);
    assert_eq!(get(&[]), "{\"qps\": 700}");
    assert_eq!(get(&["env=canary"]), "{\"qps\": 700}");
    let history = cli_ok(
        &ep,
        &["--output", "json", "config", "history", "limits.json"],
    );
    assert!(history.contains("gray-promote"), "{history}");
    fails(
        &ep,
        &[
            "config", "gray", "missing", "--file", "-", "--ips", "10.0.0.1",
        ],
        "x",
        "publish it before starting a gray release",
    );
}

/// Collects log output written through `tracing`.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn client_starts_from_its_local_snapshot_while_every_node_is_down() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut cluster = Cluster::start(3, &[]).await;
    let ep = cluster.endpoints();
    publish(
        &ep,
        "db.properties",
        "url=jdbc:pg://db/1\n",
        &["--type", "properties"],
    );
    let snapshots = tempfile::tempdir().unwrap();
    let client = strata_client::config::ConfigClient::new(
        strata_client::Client::new(&ep).with_timeout(Duration::from_secs(5)),
        snapshots.path(),
    );
    let live = client
        .get("public", "DEFAULT_GROUP", "db.properties")
        .await
        .unwrap();
    assert!(!live.from_snapshot);
    assert_eq!(live.content, "url=jdbc:pg://db/1\n");

    for id in 1..=3 {
        cluster.node(id).kill9();
    }
    // A fresh application (a new client) on the same snapshot folder.
    let app = strata_client::config::ConfigClient::new(
        strata_client::Client::new(&ep)
            .with_timeout(Duration::from_secs(2))
            .with_connect_timeout(Duration::from_millis(500)),
        snapshots.path(),
    );
    let offline = app
        .get("public", "DEFAULT_GROUP", "db.properties")
        .await
        .unwrap();
    assert!(offline.from_snapshot);
    assert_eq!(offline.content, "url=jdbc:pg://db/1\n");
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("starting from the local snapshot"),
        "the fallback is not in the logs: {text}"
    );
    // Without a snapshot there is nothing to fall back on.
    assert!(app
        .get("public", "DEFAULT_GROUP", "never-read")
        .await
        .is_err());
}

fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if files_contain(&path, needle) {
                return true;
            }
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                return true;
            }
        }
    }
    false
}

const KEY_A: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const KEY_B: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

fn key_config(key: &str) -> String {
    format!("[config_center]\nencryption_key = \"{key}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_config_is_unreadable_on_disk_and_plain_when_read() {
    let mut cluster = Cluster::start_with_config(3, &key_config(KEY_A), &[]).await;
    let ep = cluster.endpoints();
    let secret = "password=SECRET-MARKER-4f1c\n";
    let plain = "greeting=PLAIN-MARKER-9b2e\n";
    publish(
        &ep,
        "cipher-db.properties",
        secret,
        &["--type", "properties"],
    );
    publish(&ep, "public.properties", plain, &[]);
    for node in &cluster.nodes {
        wait_until(
            Duration::from_secs(10),
            "the secret on every node",
            || async {
                let out = cli(&[node.url()], &["config", "get", "cipher-db.properties"]);
                (String::from_utf8_lossy(&out.stdout) == secret).then_some(())
            },
        )
        .await;
    }
    // The plain content's MD5 is served to clients but never stored: for a short secret it
    // would give the secret away.
    let md5_of = |data_id: &str| -> String {
        let served: Value = serde_json::from_str(&cli_ok(
            &ep,
            &["--output", "json", "config", "get", data_id],
        ))
        .unwrap();
        served["md5"].as_str().unwrap().to_string()
    };
    let secret_md5 = md5_of("cipher-db.properties");
    let plain_md5 = md5_of("public.properties");
    assert_eq!(secret_md5.len(), 32);
    let history = cli_ok(
        &ep,
        &[
            "--output",
            "json",
            "config",
            "history",
            "cipher-db.properties",
        ],
    );
    assert!(
        history.contains(&secret_md5),
        "history shows the plain md5: {history}"
    );
    // Stop the nodes so everything is on disk, then look at every byte of every data folder.
    for id in 1..=3 {
        assert_eq!(cluster.node(id).terminate().code(), Some(0));
    }
    for node in &cluster.nodes {
        let dir = node.data_dir();
        assert!(
            files_contain(&dir, b"PLAIN-MARKER-9b2e"),
            "control: plain configs are visible in {}",
            dir.display()
        );
        assert!(
            !files_contain(&dir, b"SECRET-MARKER-4f1c"),
            "the secret is readable in {}",
            dir.display()
        );
        assert!(
            files_contain(&dir, plain_md5.as_bytes()),
            "control: plain configs' md5s are stored"
        );
        assert!(
            !files_contain(&dir, secret_md5.as_bytes()),
            "the secret's md5 is stored in {}",
            dir.display()
        );
    }

    // The same data with the wrong key: a precise error, and nothing changes.
    std::fs::write(cluster.root.path().join("node.toml"), key_config(KEY_B)).unwrap();
    for id in 1..=3 {
        cluster.node(id).restart().await;
    }
    cluster.wait_for_leader().await;
    let ep = cluster.endpoints();
    wait_until(
        Duration::from_secs(10),
        "the wrong key to be refused",
        || async {
            let out = cli(&ep, &["config", "get", "cipher-db.properties"]);
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            (!out.status.success() && stderr.contains("cannot decrypt")).then_some(())
        },
    )
    .await;
    for id in 1..=3 {
        assert_eq!(cluster.node(id).terminate().code(), Some(0));
    }
    std::fs::write(cluster.root.path().join("node.toml"), key_config(KEY_A)).unwrap();
    for id in 1..=3 {
        cluster.node(id).restart().await;
    }
    cluster.wait_for_leader().await;
    wait_until(
        Duration::from_secs(10),
        "the right key to read again",
        || async {
            let out = cli(&ep, &["config", "get", "cipher-db.properties"]);
            (String::from_utf8_lossy(&out.stdout) == secret).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_precise_errors_and_keeps_the_stored_version() {
    let cluster = Cluster::start(3, &[]).await;
    let ep = cluster.endpoints();
    publish(&ep, "svc.json", "{\"a\": 1}\n", &["--type", "json"]);
    let stored = || cli_ok(&ep, &["--output", "json", "config", "get", "svc.json"]);
    let before = stored();

    let publish_args = ["config", "publish", "svc.json", "--file", "-"];
    fails(
        &ep,
        &publish_args,
        "{\"a\": 1,\n  \"b\" 2}\n",
        "invalid json at line 2, column 7",
    );
    let mut cas = publish_args.to_vec();
    cas.extend(["--if-version", "7"]);
    fails(
        &ep,
        &cas,
        "{\"a\": 2}",
        "compare-and-set failed: the current version is 1, not 7",
    );
    let mut toml = publish_args.to_vec();
    toml.extend(["--type", "toml"]);
    fails(&ep, &toml, "a = [1,\n", "invalid toml at line");
    fails(
        &ep,
        &["config", "rollback", "svc.json", "--to-version", "9"],
        "",
        "version 9",
    );
    fails(
        &ep,
        &["config", "diff", "svc.json", "--from", "1", "--to", "5"],
        "",
        "version 5",
    );
    fails(
        &ep,
        &[
            "config",
            "gray",
            "nope.json",
            "--file",
            "-",
            "--labels",
            "a=b",
        ],
        "{}",
        "does not exist",
    );
    fails(
        &ep,
        &["config", "import", "-", "--namespace", "x"],
        "{\"format\": 1}",
        "corrupt import file",
    );
    fails(
        &ep,
        &["config", "publish", "cipher-x", "--file", "-"],
        "k=v",
        "no encryption key",
    );
    fails(
        &ep,
        &["config", "publish", "bad/id", "--file", "-"],
        "x",
        "invalid data id",
    );
    assert_eq!(
        stored(),
        before,
        "a refused write changed the stored config"
    );

    // The size limit is the config center's (1 MiB by default), although a config is
    // written twice (current version and history) in one transaction.
    let big = "x".repeat(1_000_000);
    publish(&ep, "big.txt", &big, &[]);
    assert_eq!(cli_ok(&ep, &["config", "get", "big.txt"]).len(), 1_000_001);
    fails(
        &ep,
        &["config", "publish", "big.txt", "--file", "-"],
        &"y".repeat(1_100_000),
        "the limit is 1048576 (config_center.max_content_bytes)",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacos_sdk_python_publishes_reads_and_is_notified() {
    let cluster = Cluster::start(3, NACOS_ON_ANY_PORT).await;
    let nacos = cluster.nodes[1].nacos.clone().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/nacos_compat.py");
    let out = run_with_deadline(
        Command::new("python3").arg(script).arg(&nacos),
        b"",
        Duration::from_secs(90),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nacos-sdk-python script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all steps passed"), "{stdout}");
    // What the SDK published is the config center's config, seen through the native API.
    let history = cli_ok(
        &cluster.endpoints(),
        &["--output", "json", "config", "history", "app.yaml"],
    );
    assert!(history.contains("delete"), "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keeps_the_configured_number_of_versions() {
    let cluster =
        Cluster::start_with_config(1, "[config_center]\nhistory_retention = 3\n", &[]).await;
    let ep = cluster.endpoints();
    for n in 1..=5 {
        publish(&ep, "kept", &format!("v={n}\n"), &[]);
    }
    let history: Vec<Value> = serde_json::from_str(&cli_ok(
        &ep,
        &["--output", "json", "config", "history", "kept"],
    ))
    .unwrap();
    let versions: Vec<u64> = history
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![3, 4, 5]);
    fails(
        &ep,
        &["config", "rollback", "kept", "--to-version", "2"],
        "",
        "version 2 of config",
    );
    cli_ok(&ep, &["config", "rollback", "kept", "--to-version", "3"]);
    assert_eq!(cli_ok(&ep, &["config", "get", "kept"]), "v=3\n");
}
