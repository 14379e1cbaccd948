//! A full disk, with a real `strata server` whose data folder is a small tmpfs: the node turns
//! read-only with a clear error, loses no acknowledged write, serves reads, accepts writes
//! again by itself once space is freed, and restarts with everything.
//!
//! The tmpfs lives in a mount namespace held by a `sleep` process (`unshare`), and the node
//! is started (and restarted) inside it with `nsenter`; the test reaches the folder through
//! `/proc/HOLDER/root`. Needs root, or unprivileged user namespaces for anyone else.

#![allow(clippy::unwrap_used)]

mod common;

use common::{http_client, wait_until, NodeProc};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use strata_proto::error::ErrorCode;

/// Size of the file system the node's data folder is on.
const DISK: &str = "96m";
/// A file of this size is freed to give the node room again.
const FILLER_BYTES: usize = 24 << 20;
/// The value size of the writes that fill the disk.
const VALUE_BYTES: usize = 64 << 10;

/// A process holding a mount namespace with a tmpfs at `dir`; killed (and the tmpfs gone)
/// when dropped. As root the namespace is a plain mount namespace; otherwise (or if that is
/// refused) it is inside a user namespace of this user, as unprivileged containers do.
struct Holder {
    child: Child,
    dir: PathBuf,
    user_namespace: bool,
}

impl Holder {
    fn mount(dir: &Path) -> Holder {
        std::fs::create_dir_all(dir).unwrap();
        let root = current_uid() == 0;
        let mut refusals = Vec::new();
        for user_namespace in [!root, true] {
            match Holder::try_mount(dir, user_namespace) {
                Ok(holder) => return holder,
                Err(why) => refusals.push(why),
            }
        }
        panic!(
            "could not mount a tmpfs in a new mount namespace (this test needs root or user namespaces): {refusals:?}"
        );
    }

    fn try_mount(dir: &Path, user_namespace: bool) -> Result<Holder, String> {
        let script = format!(
            "mount -t tmpfs -o size={DISK} tmpfs '{}' && echo mounted && exec sleep 3600",
            dir.display()
        );
        let mut command = Command::new("unshare");
        if user_namespace {
            command.args(["--user", "--map-root-user"]);
        }
        let mut child = command
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("unshare (util-linux): {e}"))?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.trim() != "mounted" {
            let mut why = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut why).unwrap();
            let _ = child.kill();
            let _ = child.wait();
            return Err(why);
        }
        Ok(Holder {
            child,
            dir: dir.to_path_buf(),
            user_namespace,
        })
    }

    /// The namespace's view of `dir`'s file `name`, from outside it.
    fn path(&self, name: &str) -> PathBuf {
        let inside = self.dir.strip_prefix("/").unwrap();
        Path::new(&format!("/proc/{}/root", self.child.id()))
            .join(inside)
            .join(name)
    }

    /// The command that runs a program inside the namespace (exec'd in place).
    fn nsenter(&self) -> Vec<String> {
        let mut command = vec!["nsenter".into(), "-t".into(), self.child.id().to_string()];
        if self.user_namespace {
            command.extend(["-U".into(), "--preserve-credentials".into()]);
        }
        command.extend(["-m".into(), "--".into()]);
        command
    }
}

/// This process's user id, from `/proc/self/status`.
fn current_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn value(n: usize) -> Vec<u8> {
    vec![b'a' + (n % 26) as u8; VALUE_BYTES]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_turns_the_node_read_only_and_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let holder = Holder::mount(&root.path().join("n1").join("data"));
    std::fs::write(holder.path("filler"), vec![0u8; FILLER_BYTES]).unwrap();
    let config = root.path().join("strata.toml");
    std::fs::write(
        &config,
        "[kv]\ndisk_reserve = \"24MiB\"\nrequest_timeout = \"3s\"\n",
    )
    .unwrap();
    let wrapper = holder.nsenter();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut node = NodeProc::start_wrapped(
        1,
        root.path(),
        Some("1=127.0.0.1:0"),
        &["--config", config.to_str().unwrap()],
        &wrapper,
    )
    .await;
    let client = node.client();

    // Write until the node refuses: every put is acknowledged, refused with no_space, or
    // (the one caught in the log writer as space ran out) times out with its outcome unknown.
    let mut acknowledged = Vec::new();
    let mut refusal = None;
    let started = Instant::now();
    for n in 0..2_000 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the disk did not fill in 120 s"
        );
        match client.put(format!("k/{n:05}"), value(n)).await {
            Ok(_) => acknowledged.push(n),
            Err(e) if e.code() == Some(ErrorCode::NoSpace) => {
                refusal = Some(e.to_string());
                break;
            }
            Err(e) if e.code() == Some(ErrorCode::Timeout) => {}
            Err(e) => panic!("put {n} failed with neither no_space nor a timeout: {e}"),
        }
    }
    let refusal = refusal.expect("the disk filled without a refusal");
    assert!(refusal.contains("read-only"), "{refusal}");
    assert!(refusal.contains("kv.disk_reserve"), "{refusal}");
    assert!(
        acknowledged.len() > 100,
        "only {} puts fit in the tmpfs",
        acknowledged.len()
    );

    // It says so on the wire (507), in its status and in its metrics, and keeps serving.
    let url = format!("http://{}/v1/kv/put", node.api);
    let raw = http_client()
        .post(&url)
        .json(&serde_json::json!({"key": "a2V5", "value": "dmFsdWU="}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 507);
    let body: serde_json::Value = raw.json().await.unwrap();
    assert_eq!(body["code"], "no_space", "{body}");
    let status = node.status().await.unwrap();
    assert!(status.read_only, "{status:?}");
    assert_eq!(node.metric("strata_disk_read_only").await, Some(1.0));
    for &n in &acknowledged {
        let got = match client.get(format!("k/{n:05}")).await {
            Ok(got) => got,
            Err(e) => panic!("{e}\n{}", node.logs()),
        };
        assert_eq!(got, Some(value(n)), "acknowledged key {n} reads back whole");
    }
    assert!(node.is_running());
    assert!(
        node.logs().contains("disk space is low"),
        "the node says why it is read-only"
    );

    // Space freed: writes resume without a restart.
    std::fs::remove_file(holder.path("filler")).unwrap();
    wait_until(Duration::from_secs(30), "writes to resume", || {
        let client = node.client();
        async move { client.put("k/after", value(7)).await.ok() }
    })
    .await;
    assert!(!node.status().await.unwrap().read_only);
    assert!(node
        .logs()
        .contains("disk space is back above kv.disk_reserve"));

    // A kill -9 and a restart in the same folder lose nothing.
    node.kill9();
    node.restart().await;
    let client = node.client();
    wait_until(
        Duration::from_secs(30),
        "the restarted node to serve",
        || {
            let client = node.client();
            async move { client.get("k/after").await.ok().flatten() }
        },
    )
    .await;
    for &n in &acknowledged {
        let got = client.get(format!("k/{n:05}")).await.unwrap();
        assert_eq!(got, Some(value(n)), "key {n} after the restart");
    }
    node.assert_no_panic();
}
