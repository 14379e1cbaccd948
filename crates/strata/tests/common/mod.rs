//! Real-process test harness: starts `strata` binaries on loopback ports chosen at run time,
//! kills and restarts them, and talks to them through the CLI and the client crate.
//!
//! Nodes bind port 0 and write their addresses to `addrs.json`; a restarted node reuses the
//! ports it had, because the cluster knows it by its raft address. Readiness and convergence
//! are polled with deadlines, never slept for.
//!
//! [`EtcdProc`] runs a real single-node etcd 3.4 (Debian package etcd-server) next to Strata,
//! for tests that compare the two through the etcd v3 API.

#![allow(dead_code, clippy::unwrap_used)]

use serde::Deserialize;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use strata_client::Client;
use strata_proto::kv::{RangeRequest, RangeResponse};
use strata_proto::ClusterStatus;

/// The root password every node gets in the harness's access-control mode.
const TEST_ROOT_PASSWORD: &str = "harness-root-password";

/// A plain HTTP client; reqwest's TLS needs the crypto provider installed before any client
/// is built, which `strata_tls::http_client_builder` does. In access-control mode, once
/// [`ensure_token`] has run, it sends the root token with every request.
pub fn http_client() -> reqwest::Client {
    let mut builder = strata_tls::http_client_builder();
    if let Some(token) = root_token() {
        let mut headers = reqwest::header::HeaderMap::new();
        let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        headers.insert(reqwest::header::AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    builder.build().unwrap()
}

/// True when the suite runs with access control on (`STRATA_TEST_AUTH=1`): every node starts
/// with `--root-password-file`, so a cluster comes up closed, and the harness logs in as root
/// and hands the token to every client and CLI call it makes.
pub fn auth_mode() -> bool {
    std::env::var("STRATA_TEST_AUTH").is_ok_and(|v| v == "1")
}

static ROOT_TOKEN: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// The root token of this test's cluster, once [`ensure_token`] got one.
pub fn root_token() -> Option<String> {
    ROOT_TOKEN.lock().unwrap().clone()
}

/// In access-control mode: waits until `endpoints` have access control on, logs in as root,
/// and makes every client made afterwards send the token. Does nothing otherwise, or when a
/// token is already held.
pub async fn ensure_token(endpoints: &[String]) {
    if !auth_mode() || root_token().is_some() {
        return;
    }
    let token = wait_until(Duration::from_secs(30), "a root login", || {
        let endpoints = endpoints.to_vec();
        async move {
            let client = Client::new(&endpoints)
                .with_timeout(Duration::from_secs(2))
                .with_token(None);
            let status: serde_json::Value = client.get_json("/v1/auth/status").await.ok()?;
            if status["enabled"] != true {
                return None;
            }
            let body = serde_json::json!({"user": "root", "password": TEST_ROOT_PASSWORD});
            let reply: serde_json::Value = client
                .call(strata_client::Method::POST, "/v1/auth/login", Some(&body))
                .await
                .ok()?;
            reply["token"].as_str().map(str::to_string)
        }
    })
    .await;
    // The mode must be real: a request without the token is refused.
    let anonymous = Client::new(endpoints)
        .with_timeout(Duration::from_secs(5))
        .with_token(None);
    let refused = anonymous.put("harness/anonymous", "x").await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(strata_proto::error::ErrorCode::Unauthenticated),
        "access-control mode, but an anonymous put was not refused: {refused}"
    );
    strata_client::set_default_token(Some(token.clone()));
    *ROOT_TOKEN.lock().unwrap() = Some(token);
}

/// A `strata` command with the harness's root token in `STRATA_TOKEN` (access-control mode).
pub fn strata_command() -> Command {
    let mut command = Command::new(strata_bin());
    if let Some(token) = root_token() {
        command.env("STRATA_TOKEN", token);
    }
    command
}

/// Path of the binary under test.
pub fn strata_bin() -> &'static str {
    env!("CARGO_BIN_EXE_strata")
}

/// A binary of the examples package, built next to `strata` by the workspace build.
pub fn example_bin(name: &str) -> PathBuf {
    let path = Path::new(strata_bin()).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build the examples first (cargo build -p strata-examples --bins; \
         scripts/test.sh does)",
        path.display()
    );
    path
}

/// An example process with its stdout collected line by line.
pub struct Example {
    /// The process.
    pub child: Child,
    /// Its stdout so far.
    pub lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Example {
    /// Starts `bin` with `args` and waits for the line starting with `ready`.
    pub async fn start(bin: &str, args: &[&str], env: &[(&str, &str)], ready: &str) -> Example {
        let mut child = Command::new(example_bin(bin))
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let example = Example { child, lines };
        example.wait_line(ready, Duration::from_secs(30)).await;
        example
    }

    /// Waits for a line starting with `prefix` and returns it.
    pub async fn wait_line(&self, prefix: &str, timeout: Duration) -> String {
        wait_until(timeout, &format!("a line starting {prefix:?}"), || async {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.starts_with(prefix))
                .cloned()
        })
        .await
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Debug, Deserialize, Clone, Copy)]
struct Addrs {
    api: std::net::SocketAddr,
    raft: std::net::SocketAddr,
    /// The etcd v3 gRPC listener; `None` unless started with `--grpc-addr`.
    #[serde(default)]
    grpc: Option<std::net::SocketAddr>,
    /// The Consul-compatible listener; `None` unless started with `--consul-addr`.
    #[serde(default)]
    consul: Option<std::net::SocketAddr>,
    /// The registry DNS listener; `None` unless started with `--dns-addr`.
    #[serde(default)]
    dns: Option<std::net::SocketAddr>,
    /// The Nacos-compatible listener; `None` unless started with `--nacos-addr`.
    #[serde(default)]
    nacos: Option<std::net::SocketAddr>,
    /// The Nacos 2.x gRPC listener; `None` unless started with `--nacos-grpc-addr`.
    #[serde(default)]
    nacos_grpc: Option<std::net::SocketAddr>,
    /// The gateway listener; `None` unless started with `--listen gateway=...`.
    #[serde(default)]
    gateway: Option<std::net::SocketAddr>,
    /// The gateway's TLS listener; `None` unless started with `--listen gateway_tls=...`.
    #[serde(default)]
    gateway_tls: Option<std::net::SocketAddr>,
}

/// `strata dev` flags that put every listener on a port chosen at run time, so that no test
/// collides with a `strata dev` kept running on the default ports (the README's quick start).
/// `t00_the_harness_covers_every_dev_listener` in `dev.rs` fails when a listener is added to
/// `strata dev` without being listed here.
pub const DEV_ON_ANY_PORT: &[&str] = &[
    "--api-addr",
    "127.0.0.1:0",
    "--raft-addr",
    "127.0.0.1:0",
    "--grpc-addr",
    "127.0.0.1:0",
    "--consul-addr",
    "127.0.0.1:0",
    "--dns-addr",
    "127.0.0.1:0",
    "--nacos-addr",
    "127.0.0.1:0",
    "--nacos-grpc-addr",
    "127.0.0.1:0",
    "--gateway-addr",
    "127.0.0.1:0",
    "--gateway-tls-addr",
    "127.0.0.1:0",
    "--xds-addr",
    "127.0.0.1:0",
];

/// Waits for a starting process to write its addresses file; if the process exits first,
/// fails at once with its exit status and the output in `logs`, instead of waiting out the
/// deadline.
pub async fn wait_for_addrs<T: serde::de::DeserializeOwned>(
    child: &mut Child,
    addrs_file: &Path,
    logs: &[&Path],
    timeout: Duration,
) -> T {
    match try_wait_for_addrs(child, addrs_file, logs, timeout).await {
        Ok(addrs) => addrs,
        Err(exited) => panic!("{exited}"),
    }
}

/// [`wait_for_addrs`], with a process that exits before listening reported as `Err` (its exit
/// status and output) rather than as a panic.
pub async fn try_wait_for_addrs<T: serde::de::DeserializeOwned>(
    child: &mut Child,
    addrs_file: &Path,
    logs: &[&Path],
    timeout: Duration,
) -> Result<T, String> {
    let output = || {
        logs.iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(addrs) = std::fs::read(addrs_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            return Ok(addrs);
        }
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!(
                "strata exited with {status} before listening; its output:\n{}",
                output()
            ));
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {}; output so far:\n{}",
            addrs_file.display(),
            output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The address a node that exited before listening names as in use (`cannot listen on ADDR
/// for ...: the port is in use`), if that is why it exited.
fn busy_port(output: &str) -> Option<std::net::SocketAddr> {
    let line = output.lines().find(|l| l.contains("the port is in use"))?;
    let (_, rest) = line.split_once("cannot listen on ")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// `Some` once `addr` can be bound as the node binds it (TCP with `SO_REUSEADDR`, and UDP for
/// the DNS listener).
async fn port_free(addr: std::net::SocketAddr) -> Option<()> {
    let tcp = tokio::net::TcpListener::bind(addr).await.is_ok();
    let udp = tokio::net::UdpSocket::bind(addr).await.is_ok();
    (tcp && udp).then_some(())
}

/// Extra `strata server` arguments that enable the etcd v3 gRPC API on a port chosen at run
/// time; [`NodeProc::grpc`] then holds the bound address.
pub const GRPC_ON_ANY_PORT: &[&str] = &["--grpc-addr", "127.0.0.1:0"];

/// Extra `strata server` arguments that enable the Consul-compatible API and registry DNS on
/// ports chosen at run time ([`NodeProc::consul`], [`NodeProc::dns`]).
pub const REGISTRY_ON_ANY_PORT: &[&str] =
    &["--consul-addr", "127.0.0.1:0", "--dns-addr", "127.0.0.1:0"];

/// Extra `strata server` arguments that enable the Nacos-compatible API on a port chosen at
/// run time ([`NodeProc::nacos`]).
pub const NACOS_ON_ANY_PORT: &[&str] = &["--nacos-addr", "127.0.0.1:0"];

/// Extra `strata server` arguments that enable the Nacos-compatible API and the Nacos 2.x
/// gRPC API on ports chosen at run time ([`NodeProc::nacos`], [`NodeProc::nacos_grpc`]).
pub const NACOS_GRPC_ON_ANY_PORT: &[&str] = &[
    "--nacos-addr",
    "127.0.0.1:0",
    "--nacos-grpc-addr",
    "127.0.0.1:0",
];

/// One `strata server` process.
pub struct NodeProc {
    /// Node id.
    pub id: u64,
    /// Folder with data, logs and addrs.json.
    pub dir: PathBuf,
    /// `127.0.0.1:port` of the API.
    pub api: String,
    /// `127.0.0.1:port` of the raft listener.
    pub raft: String,
    /// `127.0.0.1:port` of the etcd v3 gRPC listener, when started with `--grpc-addr`. A
    /// restarted node listens on the same port again.
    pub grpc: Option<String>,
    /// `127.0.0.1:port` of the Consul-compatible API, when started with `--consul-addr`.
    pub consul: Option<String>,
    /// `127.0.0.1:port` of registry DNS (UDP and TCP), when started with `--dns-addr`.
    pub dns: Option<String>,
    /// `127.0.0.1:port` of the Nacos-compatible API, when started with `--nacos-addr`.
    pub nacos: Option<String>,
    /// `127.0.0.1:port` of the Nacos 2.x gRPC API, when started with `--nacos-grpc-addr`.
    pub nacos_grpc: Option<String>,
    /// `127.0.0.1:port` of the gateway, when started with `--listen gateway=HOST:PORT`.
    pub gateway: Option<String>,
    /// `127.0.0.1:port` of the gateway's TLS listener (`--listen gateway_tls=HOST:PORT`).
    pub gateway_tls: Option<String>,
    child: Option<Child>,
    /// How many times this node was started (log files are numbered by it).
    starts: u32,
    extra: Vec<String>,
    /// ERROR lines containing one of these are expected by the test (see
    /// [`NodeProc::expect_errors`]); any other fails the test when the node is dropped.
    expected_errors: Vec<String>,
    /// A command the node is started through (e.g. `nsenter` into a mount namespace), which
    /// must exec `strata` in place so that the child is the node.
    wrapper: Vec<String>,
}

impl NodeProc {
    /// Starts a node. `initial_cluster` is passed as-is (e.g. `1=127.0.0.1:0` to found).
    pub async fn start(
        id: u64,
        root: &Path,
        initial_cluster: Option<&str>,
        extra: &[&str],
    ) -> NodeProc {
        Self::start_on(id, root, initial_cluster, "127.0.0.1:0", extra).await
    }

    /// [`NodeProc::start`] with a given raft address (for founding lists known in advance).
    pub async fn start_on(
        id: u64,
        root: &Path,
        initial_cluster: Option<&str>,
        raft_addr: &str,
        extra: &[&str],
    ) -> NodeProc {
        Self::launch(id, root, initial_cluster, raft_addr, extra, &[]).await
    }

    /// [`NodeProc::start`] through `wrapper`, a command that execs the rest of its arguments
    /// in place (e.g. `nsenter` into a mount namespace); restarts go through it too.
    pub async fn start_wrapped(
        id: u64,
        root: &Path,
        initial_cluster: Option<&str>,
        extra: &[&str],
        wrapper: &[&str],
    ) -> NodeProc {
        Self::launch(id, root, initial_cluster, "127.0.0.1:0", extra, wrapper).await
    }

    async fn launch(
        id: u64,
        root: &Path,
        initial_cluster: Option<&str>,
        raft_addr: &str,
        extra: &[&str],
        wrapper: &[&str],
    ) -> NodeProc {
        let dir = root.join(format!("n{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if let Some(members) = initial_cluster {
            extra.push("--initial-cluster".into());
            extra.push(members.into());
        }
        let mut node = NodeProc {
            id,
            dir,
            api: "127.0.0.1:0".into(),
            raft: raft_addr.into(),
            grpc: None,
            consul: None,
            dns: None,
            nacos: None,
            nacos_grpc: None,
            gateway: None,
            gateway_tls: None,
            child: None,
            starts: 0,
            extra,
            expected_errors: Vec::new(),
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
        };
        node.spawn().await;
        node
    }

    /// Starts the node's process with its current ports and flags, logging to `log_path`.
    fn command(&self, addrs_file: &Path, log_path: &Path) -> Child {
        let log = std::fs::File::create(log_path).unwrap();
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(strata_bin());
                command
            }
            None => Command::new(strata_bin()),
        };
        if auth_mode() {
            let file = self.dir.join("root-password");
            std::fs::write(&file, TEST_ROOT_PASSWORD).unwrap();
            command.arg("server").arg("--root-password-file").arg(file);
        } else {
            command.arg("server");
        }
        command
            .args(["--id", &self.id.to_string()])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--api-addr", &self.api, "--raft-addr", &self.raft])
            .arg("--addrs-file")
            .arg(addrs_file)
            .args(&self.extra)
            // The default log filter, as an operator sees it.
            .env_remove("STRATA_LOG")
            .env_remove("STRATA_CONFIG")
            .env_remove("STRATA_LOG_FORMAT")
            // Lets tests cut nodes off from each other (`POST /internal/fault/partition`).
            .env("STRATA_FAULT_INJECTION", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        command.spawn().expect("spawn strata")
    }

    async fn spawn(&mut self) {
        let addrs_file = self.dir.join("addrs.json");
        let _ = std::fs::remove_file(&addrs_file);
        self.starts += 1;
        // Keep the gRPC port across restarts, as the API and raft ports are kept.
        if let Some(bound) = &self.grpc {
            if let Some(flag) = self.extra.iter().position(|arg| arg == "--grpc-addr") {
                self.extra[flag + 1] = bound.clone();
            }
        }
        // A restart takes the node's ports again (its peers know its raft address), and in the
        // moment between the kill and the restart another test's process on this machine may
        // have been given one of them for its own port 0 or an outgoing connection. Such a
        // port is usually free again soon: a restart refused for a port in use waits until
        // the port can be bound and tries again, for up to 30 s in all.
        let retry_until = Instant::now() + Duration::from_secs(30);
        let (child, addrs) = loop {
            let log_path = self.dir.join(format!("log.{}", self.starts));
            let mut child = self.command(&addrs_file, &log_path);
            match try_wait_for_addrs::<Addrs>(
                &mut child,
                &addrs_file,
                &[&log_path],
                Duration::from_secs(20),
            )
            .await
            {
                Ok(addrs) => break (child, addrs),
                Err(exited) => {
                    let busy = busy_port(&exited).filter(|_| self.starts > 1);
                    let left = retry_until.saturating_duration_since(Instant::now());
                    let Some(addr) = busy.filter(|_| !left.is_zero()) else {
                        panic!("{exited}");
                    };
                    eprintln!("node {}: {addr}, which it restarts on, is in use", self.id);
                    let what = format!("{addr} to be free for node {}", self.id);
                    wait_until(left, &what, || port_free(addr)).await;
                }
            }
        };
        self.child = Some(child);
        self.api = addrs.api.to_string();
        self.raft = addrs.raft.to_string();
        self.grpc = addrs.grpc.map(|addr| addr.to_string());
        self.consul = addrs.consul.map(|addr| addr.to_string());
        self.dns = addrs.dns.map(|addr| addr.to_string());
        self.nacos = addrs.nacos.map(|addr| addr.to_string());
        self.nacos_grpc = addrs.nacos_grpc.map(|addr| addr.to_string());
        self.gateway = addrs.gateway.map(|addr| addr.to_string());
        self.gateway_tls = addrs.gateway_tls.map(|addr| addr.to_string());
    }

    /// `127.0.0.1:port` of the etcd v3 gRPC API; panics if the node serves none.
    pub fn grpc_addr(&self) -> &str {
        self.grpc
            .as_deref()
            .expect("node started without --grpc-addr")
    }

    /// `http://` URL of the API.
    pub fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// Kills the process with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Freezes the process with SIGSTOP (as a long GC pause or a stalled VM would).
    pub fn pause(&self) {
        send_signal(self.child.as_ref().expect("node is running"), "STOP");
    }

    /// Lets a process frozen by [`NodeProc::pause`] run again (SIGCONT).
    pub fn resume(&self) {
        send_signal(self.child.as_ref().expect("node is running"), "CONT");
    }

    /// Cuts this node off from the raft addresses `peers` (node-to-node calls to them fail
    /// as unreachable); an empty list heals. Returns false if the node did not answer.
    pub async fn cut_off(&self, peers: &[String]) -> bool {
        http_client()
            .post(format!("http://{}/internal/fault/partition", self.raft))
            .timeout(Duration::from_secs(2))
            .json(&peers)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// True while the process runs (it may be paused).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// This node's view of the cluster, asked with a short deadline (for nodes that may be
    /// paused or partitioned).
    pub async fn quick_status(&self) -> Option<ClusterStatus> {
        Client::new(&[self.url()])
            .with_timeout(Duration::from_millis(500))
            .get_json("/v1/cluster/status")
            .await
            .ok()
    }

    /// Stops the process with SIGTERM and returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("node is running");
        send_sigterm(&child);
        match wait_exit(&mut child, Duration::from_secs(15)) {
            Some(status) => status,
            None => {
                child.kill().unwrap();
                panic!("node {} did not stop within 15s of SIGTERM", self.id);
            }
        }
    }

    /// Folder the node keeps its data in.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Restarts the node on the same ports and data folder.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the node before restarting it");
        // A founding flag is harmless on restart: the node already has state.
        self.spawn().await;
    }

    /// Returns the node's logs so far.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for start in 1..=self.starts {
            all.push_str(
                &std::fs::read_to_string(self.dir.join(format!("log.{start}"))).unwrap_or_default(),
            );
        }
        all
    }

    /// A client that talks to this node only.
    pub fn client(&self) -> Client {
        Client::new(&[self.url()]).with_timeout(Duration::from_secs(10))
    }

    /// This node's view of the cluster.
    pub async fn status(&self) -> Option<ClusterStatus> {
        self.client().get_json("/v1/cluster/status").await.ok()
    }

    /// Reads one key from this node's local state (serializable).
    pub async fn local_get(&self, key: &str) -> Option<Vec<u8>> {
        let request = RangeRequest {
            key: key.into(),
            serializable: true,
            ..Default::default()
        };
        let response: RangeResponse = self.client().post("/v1/kv/range", &request).await.ok()?;
        response.kvs.into_iter().next().map(|kv| kv.value)
    }

    /// Reads a prefix from this node's local state (serializable).
    pub async fn local_prefix(&self, prefix: &str) -> Option<RangeResponse> {
        let request = RangeRequest {
            key: prefix.into(),
            prefix: true,
            serializable: true,
            ..Default::default()
        };
        self.client().post("/v1/kv/range", &request).await.ok()
    }

    /// Fetches /metrics and returns the value of the first sample named `name`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        self.metric_with(name, &[]).await
    }

    /// Fetches /metrics and returns the value of the first sample named `name` that has every
    /// label of `labels` (`key="value"`).
    pub async fn metric_with(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let text = http_client()
            .get(format!("{}/metrics", self.url()))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .find(|l| labels.iter().all(|label| l.contains(label)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Panics if the logs have any WARN or ERROR line; `when` says what was going on.
    pub fn assert_quiet(&self, when: &str) {
        self.assert_quiet_but(when, &[]);
    }

    /// [`NodeProc::assert_quiet`], except for WARN lines containing one of `expected`. The
    /// slow-step watchdog's WARN lines never count: they report the machine's latency (a
    /// Raft log commit over 50 ms when the shared disk stalls every fsync at once), not
    /// something the node did wrong.
    pub fn assert_quiet_but(&self, when: &str, expected: &[&str]) {
        let logs = self.logs();
        let loud: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .filter(|l| !(l.contains(" WARN ") && l.contains(" slow step: ")))
            .filter(|l| !(l.contains(" WARN ") && expected.iter().any(|e| l.contains(e))))
            .collect();
        assert!(
            loud.is_empty(),
            "node {} logged {when}:\n{}",
            self.id,
            loud.join("\n")
        );
    }

    /// Declares that ERROR lines containing `pattern` are what this test provokes; others
    /// still fail it.
    pub fn expect_errors(&mut self, pattern: &str) {
        self.expected_errors.push(pattern.to_string());
    }

    /// The ERROR lines in the logs that no [`NodeProc::expect_errors`] pattern covers.
    pub fn unexpected_errors(&self) -> Vec<String> {
        self.logs()
            .lines()
            .filter(|l| l.contains(" ERROR "))
            .filter(|l| !self.expected_errors.iter().any(|p| l.contains(p.as_str())))
            .map(str::to_string)
            .collect()
    }

    /// Panics if the logs show a panic.
    pub fn assert_no_panic(&self) {
        let logs = self.logs();
        assert!(
            !logs.contains("panicked"),
            "node {} panicked:\n{logs}",
            self.id
        );
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let mut exited = None;
        if let Some(mut child) = self.child.take() {
            exited = child.try_wait().ok().flatten();
            let _ = child.kill();
            let _ = child.wait();
        }
        // A failing test shows what each node said, so a failure in CI can be understood
        // without a rerun: whether the node had already exited, and its last WARN and ERROR
        // lines.
        if std::thread::panicking() {
            let logs = self.logs();
            let loud: Vec<&str> = logs
                .lines()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
                .collect();
            let tail = &loud[loud.len().saturating_sub(30)..];
            eprintln!(
                "--- node {} ({}), its last {} WARN/ERROR lines:\n{}",
                self.id,
                match exited {
                    Some(status) => format!("had exited: {status}"),
                    None => "running until the test ended".to_string(),
                },
                tail.len(),
                tail.join("\n")
            );
        }
        // A node that logged an ERROR the test did not provoke fails the test (unless it is
        // already failing: a second panic while unwinding would abort).
        if !std::thread::panicking() {
            let unexpected = self.unexpected_errors();
            assert!(
                unexpected.is_empty(),
                "node {} logged ERROR lines the test did not expect:\n{}",
                self.id,
                unexpected.join("\n")
            );
        }
    }
}

/// Sends SIGTERM to a child process (through the `Child` handle's pid, never by name).
pub fn send_sigterm(child: &Child) {
    send_signal(child, "TERM");
}

/// Sends signal `name` (`TERM`, `INT`, ...) to a child process through its pid.
pub fn send_signal(child: &Child, name: &str) {
    let pid = child.id().to_string();
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Waits for `child` to exit; returns `None` if it is still running after `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// A child process that is killed when dropped, so a failing test leaves no process behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `command` to completion with `stdin` as its input and captures stdout and stderr.
/// Panics (after killing it) if it runs longer than `timeout`: a command that should fail
/// must fail, not hang.
pub fn run_with_deadline(command: &mut Command, stdin: &[u8], timeout: Duration) -> Output {
    use std::io::{Read, Write};
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn command");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    // A child that exits without reading its input closes the pipe; that is not our error.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let mut stdout_pipe = child.stdout.take().unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stdout_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout_pipe.read_to_end(&mut bytes);
        bytes
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr_pipe.read_to_end(&mut bytes);
        bytes
    });
    let Some(status) = wait_exit(&mut child, timeout) else {
        child.kill().unwrap();
        child.wait().unwrap();
        let stderr = stderr_reader.join().unwrap();
        panic!(
            "{command:?} still running after {timeout:?}; stderr so far:\n{}",
            String::from_utf8_lossy(&stderr)
        );
    };
    writer.join().unwrap();
    Output {
        status,
        stdout: stdout_reader.join().unwrap(),
        stderr: stderr_reader.join().unwrap(),
    }
}

/// Runs the CLI with `--endpoints`, feeding it `stdin`, and returns its output (at most 30 s).
pub fn cli_with_stdin(endpoints: &[String], args: &[&str], stdin: &[u8]) -> Output {
    let mut command = strata_command();
    command
        .arg("--endpoints")
        .arg(endpoints.join(","))
        .args(args);
    run_with_deadline(&mut command, stdin, Duration::from_secs(30))
}

/// Runs the CLI with `--endpoints` and returns its output.
pub fn cli(endpoints: &[String], args: &[&str]) -> Output {
    strata_command()
        .arg("--endpoints")
        .arg(endpoints.join(","))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run strata CLI")
}

/// Runs the CLI and returns stdout, panicking with stderr on failure.
pub fn cli_ok(endpoints: &[String], args: &[&str]) -> String {
    let out = cli(endpoints, args);
    assert!(
        out.status.success(),
        "strata {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A cluster of real processes.
pub struct Cluster {
    /// Scratch folder (deleted on drop).
    pub root: tempfile::TempDir,
    /// The nodes, index = id - 1.
    pub nodes: Vec<NodeProc>,
}

impl Cluster {
    /// Starts node 1 as founder, then adds nodes 2..=n through the operator CLI.
    pub async fn start(n: u64, extra: &[&str]) -> Cluster {
        Self::start_in(tempfile::tempdir().unwrap(), n, extra).await
    }

    /// [`Cluster::start`] with every node reading the config file `toml` (`--config`).
    pub async fn start_with_config(n: u64, toml: &str, extra: &[&str]) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let config = root.path().join("node.toml");
        std::fs::write(&config, toml).unwrap();
        let config = config.to_str().unwrap().to_string();
        let mut args = vec!["--config", config.as_str()];
        args.extend_from_slice(extra);
        Self::start_in(root, n, &args).await
    }

    async fn start_in(root: tempfile::TempDir, n: u64, extra: &[&str]) -> Cluster {
        let first = NodeProc::start(1, root.path(), Some("1=127.0.0.1:0"), extra).await;
        let mut cluster = Cluster {
            root,
            nodes: vec![first],
        };
        cluster.wait_for_leader().await;
        for id in 2..=n {
            let node = NodeProc::start(id, cluster.root.path(), None, extra).await;
            add_member(&cluster.endpoints(), &node);
            cluster.nodes.push(node);
        }
        cluster.wait_for_members(n as usize).await;
        cluster
    }

    /// Every API URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }

    /// Every node's etcd v3 gRPC address (`127.0.0.1:port`), for nodes started with
    /// [`GRPC_ON_ANY_PORT`].
    pub fn grpc_endpoints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| n.grpc_addr().to_string())
            .collect()
    }

    /// A client over every node.
    pub fn client(&self) -> Client {
        Client::new(&self.endpoints()).with_timeout(Duration::from_secs(15))
    }

    /// Node by id.
    pub fn node(&mut self, id: u64) -> &mut NodeProc {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Waits until some running node reports a leader; returns its id.
    pub async fn wait_for_leader(&self) -> u64 {
        let endpoints = self.endpoints();
        let leader = wait_until(Duration::from_secs(20), "a leader", || {
            let client = Client::new(&endpoints).with_timeout(Duration::from_secs(2));
            async move {
                let status: ClusterStatus = client.get_json("/v1/cluster/status").await.ok()?;
                status.leader
            }
        })
        .await;
        ensure_token(&endpoints).await;
        leader
    }

    /// Waits until the leader lists `count` voters with API addresses.
    pub async fn wait_for_members(&self, count: usize) {
        let endpoints = self.endpoints();
        wait_until(Duration::from_secs(30), "members to register", || {
            let client = Client::new(&endpoints).with_timeout(Duration::from_secs(2));
            async move {
                let status: ClusterStatus = client.get_json("/v1/cluster/status").await.ok()?;
                let ready = status
                    .members
                    .iter()
                    .filter(|m| m.role != "learner" && !m.api_addr.is_empty())
                    .count();
                (ready == count).then_some(())
            }
        })
        .await
    }

    /// Cuts node `id` off from every other node, both ways.
    pub async fn isolate(&self, id: u64) {
        let others: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.id != id)
            .map(|n| n.raft.clone())
            .collect();
        let node = &self.nodes[(id - 1) as usize];
        assert!(
            node.cut_off(&others).await,
            "node {id} refused the partition"
        );
        for other in self.nodes.iter().filter(|n| n.id != id) {
            assert!(
                other.cut_off(std::slice::from_ref(&node.raft)).await,
                "node {} refused the partition",
                other.id
            );
        }
    }

    /// Heals every partition made by [`Cluster::isolate`] (on the nodes that answer).
    pub async fn heal(&self) {
        for node in &self.nodes {
            node.cut_off(&[]).await;
        }
    }

    /// Waits until every node has applied what the leader had committed when this was
    /// called, and returns the leader's id.
    pub async fn wait_all_caught_up(&self) -> u64 {
        let leader = self.wait_for_leader().await;
        let commit = self.nodes[(leader - 1) as usize]
            .status()
            .await
            .expect("the leader answers")
            .commit_index;
        for node in &self.nodes {
            self.wait_applied(node.id, commit).await;
        }
        leader
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64) {
        let node = &self.nodes[(id - 1) as usize];
        wait_until(
            Duration::from_secs(30),
            &format!("node {id} to apply index {index}"),
            || async {
                let status = node.status().await?;
                (status.applied_index >= index).then_some(())
            },
        )
        .await
    }
}

/// Adds `node` to the cluster behind `endpoints` with `strata cluster add-member`.
pub fn add_member(endpoints: &[String], node: &NodeProc) {
    cli_ok(
        endpoints,
        &[
            "cluster",
            "add-member",
            &node.id.to_string(),
            "--raft-addr",
            &node.raft,
            "--api-addr",
            &node.api,
        ],
    );
}

/// Returns two distinct free loopback ports. Both are bound at once (so they differ) and
/// released; a process started right after can take them, and [`EtcdProc::start`] retries
/// with new ports in the rare case that another process took one first.
fn two_free_ports() -> (u16, u16) {
    let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let second = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (
        first.local_addr().unwrap().port(),
        second.local_addr().unwrap().port(),
    )
}

/// Asks the etcd v3 Maintenance service at `addr` for its status; `Some` once it answers and
/// knows a leader.
pub async fn etcd_status(addr: &str) -> Option<strata_etcd::pb::etcdserverpb::StatusResponse> {
    use strata_etcd::pb::etcdserverpb::maintenance_client::MaintenanceClient;
    use strata_etcd::pb::etcdserverpb::StatusRequest;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .ok()?;
    let mut client = MaintenanceClient::new(channel);
    let status = tokio::time::timeout(Duration::from_secs(2), client.status(StatusRequest {}))
        .await
        .ok()?
        .ok()?
        .into_inner();
    (status.leader != 0).then_some(status)
}

/// A real single-node etcd 3.4 (`etcd` from the Debian package etcd-server; scripts/test.sh
/// installs it) on loopback ports chosen at run time, with its data and log under the test's
/// folder. Killed when dropped, so a failing test leaves no etcd behind.
pub struct EtcdProc {
    /// `127.0.0.1:port` of the client listener (the etcd v3 gRPC API).
    pub client: String,
    /// Folder with etcd's data and logs.
    pub dir: PathBuf,
    child: KillOnDrop,
}

impl EtcdProc {
    /// Starts etcd under `root/etcd` with `extra` flags and waits until it has a leader.
    pub async fn start(root: &Path, extra: &[&str]) -> EtcdProc {
        let dir = root.join("etcd");
        std::fs::create_dir_all(&dir).unwrap();
        for attempt in 1..=3 {
            let (client_port, peer_port) = two_free_ports();
            let client_url = format!("http://127.0.0.1:{client_port}");
            let peer_url = format!("http://127.0.0.1:{peer_port}");
            let log = std::fs::File::create(dir.join(format!("log.{attempt}"))).unwrap();
            let child = Command::new("etcd")
                .arg("--data-dir")
                .arg(dir.join(format!("data.{attempt}")))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("default={peer_url}")])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("run etcd (Debian package etcd-server; scripts/test.sh installs it)");
            let mut child = KillOnDrop(child);
            let client = format!("127.0.0.1:{client_port}");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if child.0.try_wait().unwrap().is_some() {
                    // Most likely a port was taken between choosing and binding it.
                    break;
                }
                if etcd_status(&client).await.is_some() {
                    return EtcdProc { client, dir, child };
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd did not become ready within 20s; see {}",
                    dir.display()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("etcd exited at start three times; see {}", dir.display());
    }

    /// Returns etcd's logs so far.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for attempt in 1..=3 {
            all.push_str(
                &std::fs::read_to_string(self.dir.join(format!("log.{attempt}")))
                    .unwrap_or_default(),
            );
        }
        all
    }

    /// Returns true while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.0.try_wait().unwrap().is_none()
    }
}

/// Uploads `file` to `url` with curl over h2c (HTTP/2 with prior knowledge) and returns the
/// status it printed; fails the test when curl itself fails (as it did with "Stream error in
/// the HTTP/2 framing layer" when a server reset the stream under its answer).
pub async fn curl_h2c_upload(url: &str, file: &Path, headers: &[&str]) -> String {
    let mut command = tokio::process::Command::new("curl");
    command
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg("--http2-prior-knowledge");
    for header in headers {
        command.args(["-H", header]);
    }
    let out = command
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(url)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "curl to {url}: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
