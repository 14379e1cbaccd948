//! Consul's KV store, sessions, locks and transactions on a real 3-node cluster, driven by the
//! official Python client (`py-consul`, scripts in `tests/py/`): KV CRUD with flags, cas,
//! recurse, keys, separator and raw; blocking queries; transactions that apply whole or not
//! at all; a lock that moves to a client on another node when its holder is killed; a session
//! bound to a service check that ends when the check fails; and bad input, which gets Consul's
//! 4xx answers and never a panic.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn script(name: &str) -> String {
    format!("{}/tests/py/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A Python process whose stdout lines are collected as they come.
struct PyProc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl PyProc {
    fn start(args: &[&str]) -> PyProc {
        let mut child = Command::new("python3")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python3");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        PyProc { child, lines }
    }

    /// Waits for a line starting with `prefix`; fails at once on a `FAIL` line.
    async fn line(&self, prefix: &str, timeout: Duration) -> String {
        wait_until(timeout, &format!("a line starting {prefix:?}"), || async {
            let lines = self.lines.lock().unwrap();
            if let Some(failed) = lines.iter().find(|l| l.starts_with("FAIL")) {
                panic!("the script failed: {failed}\n{}", lines.join("\n"));
            }
            lines.iter().find(|l| l.starts_with(prefix)).cloned()
        })
        .await
    }
}

impl Drop for PyProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn consul_addr(node: &NodeProc) -> String {
    node.consul.clone().expect("node serves the Consul API")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_consul_kv_sessions_and_transactions() {
    let cluster = Cluster::start(3, REGISTRY_ON_ANY_PORT).await;
    let first = consul_addr(&cluster.nodes[0]);
    let other = consul_addr(&cluster.nodes[2]);
    let out = run_with_deadline(
        Command::new("python3")
            .arg(script("consul_kv.py"))
            .arg(&first)
            .arg(&other),
        b"",
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "py-consul KV script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all steps passed"), "{stdout}");
    for node in &cluster.nodes {
        node.assert_no_panic();
    }
}

/// Session TTL and lock delay of the hand-over, in seconds (Consul's smallest TTL).
const TTL: u64 = 10;
const LOCK_DELAY: u64 = 5;

fn epoch_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A Consul lock held by one client is released when that client's session TTL expires (its
/// process killed) and acquired by a waiting client on another node. Consul's bound: "The
/// contract of a TTL is that it represents a lower bound for invalidation; that is, Consul
/// will not expire the session before the TTL is reached, but it is allowed to delay the
/// expiration past the TTL" and "sessions may not be reaped for up to double this TTL"
/// (session API); then "Consul prevents any of the previously held locks from being
/// re-acquired for the lock-delay interval". So the waiter has the lock within
/// 2 × TTL + lock delay of the kill, and not before the lock delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consul_lock_moves_to_a_waiter_on_another_node_when_its_holder_is_killed() {
    let cluster = Cluster::start(3, REGISTRY_ON_ANY_PORT).await;
    let (ttl, delay) = (TTL.to_string(), LOCK_DELAY.to_string());
    let key = "service/leader";
    let holder_addr = consul_addr(&cluster.nodes[0]);
    let waiter_addr = consul_addr(&cluster.nodes[1]);
    let lock = script("consul_lock.py");
    let mut holder = PyProc::start(&[&lock, "hold", &holder_addr, key, &ttl, &delay]);
    let held = holder.line("acquired ", Duration::from_secs(30)).await;
    let holder_session = held.split_whitespace().nth(1).unwrap().to_string();
    let waiter = PyProc::start(&[&lock, "wait", &waiter_addr, key, &ttl, &delay]);
    waiter.line("waiting ", Duration::from_secs(30)).await;

    holder.child.kill().unwrap(); // SIGKILL: the session is no longer renewed
    holder.child.wait().unwrap();
    let killed_at = epoch_seconds();

    let bound = (2 * TTL + LOCK_DELAY) as f64;
    let acquired = waiter
        .line("acquired ", Duration::from_secs(2 * TTL + LOCK_DELAY + 30))
        .await;
    let fields: Vec<&str> = acquired.split_whitespace().collect();
    let acquired_at: f64 = fields[1].parse().unwrap();
    let waiter_session = fields[2].to_string();
    let lock_index: u64 = fields[3].parse().unwrap();
    let handover = acquired_at - killed_at;
    eprintln!(
        "lock hand-over: {handover:.2} s after kill -9 (TTL {TTL} s, lock delay {LOCK_DELAY} s; \
         Consul's bound 2 x TTL + lock delay = {bound} s, TTL + lock delay = {} s)",
        TTL + LOCK_DELAY
    );
    assert!(
        handover <= bound,
        "the waiter got the lock {handover:.2} s after the holder was killed, over Consul's {bound} s"
    );
    // The holder renewed every TTL/2, so its session lapsed at least TTL/2 after the kill,
    // and the lock delay ran after that.
    assert!(
        handover >= (TTL / 2 + LOCK_DELAY) as f64 - 0.5,
        "the lock moved after {handover:.2} s: before the TTL and the lock delay ran out"
    );
    // kv: "LockIndex is the number of times this key has successfully been acquired in a
    // lock."
    assert_eq!(lock_index, 2, "LockIndex after the second holder's acquire");

    // Every node agrees: the key is the waiter's, the holder's session is gone.
    for node in &cluster.nodes {
        let base = format!("http://{}", consul_addr(node));
        let entry = get_json(&base, &format!("/v1/kv/{key}")).await;
        assert_eq!(
            entry[0]["Session"],
            waiter_session.as_str(),
            "node {}",
            node.id
        );
        assert_eq!(entry[0]["LockIndex"], 2);
        let info = get_json(&base, &format!("/v1/session/info/{holder_session}")).await;
        assert_eq!(
            info,
            serde_json::json!([]),
            "the holder's session on node {}",
            node.id
        );
        node.assert_no_panic();
    }
}

/// What a request sent with `method` to `path` answered: status and body text.
async fn send(base: &str, method: reqwest::Method, path: &str, body: Vec<u8>) -> (u16, String) {
    let response = http_client()
        .request(method, format!("{base}{path}"))
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// The JSON a GET of `path` answered.
async fn get_json(base: &str, path: &str) -> Value {
    let (status, text) = send(base, reqwest::Method::GET, path, Vec::new()).await;
    assert_eq!(status, 200, "GET {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_consul_kv_input_gets_consul_errors_and_never_a_panic() {
    let cluster = Cluster::start(1, REGISTRY_ON_ANY_PORT).await;
    let base = format!("http://{}", consul_addr(&cluster.nodes[0]));
    let put = reqwest::Method::PUT;
    let get = reqwest::Method::GET;
    let big_value = vec![b'x'; 512 * 1024 + 1];
    let many_ops = format!(
        "[{}]",
        vec![r#"{"KV":{"Verb":"get","Key":"a"}}"#; 129].join(",")
    );
    // (method, path, body, status, a piece of the answer)
    let cases: Vec<(reqwest::Method, &str, Vec<u8>, u16, &str)> = vec![
        // txn: "Failed to parse body" for what is not a list of operations.
        (
            put.clone(),
            "/v1/txn",
            b"{".to_vec(),
            400,
            "Failed to parse body",
        ),
        (
            put.clone(),
            "/v1/txn",
            b"{}".to_vec(),
            400,
            "Failed to parse body",
        ),
        (
            put.clone(),
            "/v1/txn",
            vec![0xff, 0xfe],
            400,
            "Failed to parse body",
        ),
        (
            put.clone(),
            "/v1/txn",
            br#"[{"KV":{"Verb":"set","Key":"a","Value":"***"}}]"#.to_vec(),
            400,
            "decode value",
        ),
        (
            put.clone(),
            "/v1/txn",
            br#"[{"KV":{"Verb":"set","Key":"a","Flags":"x"}}]"#.to_vec(),
            400,
            "Flags",
        ),
        (
            put.clone(),
            "/v1/txn",
            br#"[{"Node":{"Verb":"get"}}]"#.to_vec(),
            400,
            "KV operations only",
        ),
        // txn: an unknown verb is the transaction's error, as in Consul.
        (
            put.clone(),
            "/v1/txn",
            br#"[{"KV":{"Verb":"fly","Key":"a"}}]"#.to_vec(),
            409,
            "unknown KV verb",
        ),
        // txn: "Up to 128 operations may be present in a single transaction."
        (
            put.clone(),
            "/v1/txn",
            many_ops.into_bytes(),
            413,
            "too many operations",
        ),
        // kv: "Values in the KV store cannot be larger than 512kb."
        (put.clone(), "/v1/kv/big", big_value, 413, "too large"),
        (
            put.clone(),
            "/v1/kv/a?cas=1&acquire=x",
            Vec::new(),
            400,
            "Conflicting flags",
        ),
        (put.clone(), "/v1/kv/a?flags=abc", Vec::new(), 400, "flags"),
        (put.clone(), "/v1/kv/", Vec::new(), 400, "Missing key name"),
        (
            reqwest::Method::DELETE,
            "/v1/kv/",
            Vec::new(),
            400,
            "Missing key name",
        ),
        (
            reqwest::Method::DELETE,
            "/v1/kv/a?recurse&cas=1",
            Vec::new(),
            400,
            "Conflicting flags",
        ),
        (get.clone(), "/v1/kv/", Vec::new(), 400, "Missing key name"),
        (
            get.clone(),
            "/v1/kv/a?index=abc",
            Vec::new(),
            400,
            "Invalid index",
        ),
        (
            get.clone(),
            "/v1/kv/a?index=1&wait=forever",
            Vec::new(),
            400,
            "Invalid wait time",
        ),
        (
            get.clone(),
            "/v1/kv/a?stale&consistent",
            Vec::new(),
            400,
            "conflicting semantics",
        ),
        // Consul answers an acquire with a session that does not exist with its 500.
        (
            put.clone(),
            "/v1/kv/a?acquire=no-such-session",
            Vec::new(),
            500,
            "invalid session",
        ),
        (
            put.clone(),
            "/v1/session/create",
            b"{".to_vec(),
            400,
            "Request decode failed",
        ),
        (
            put.clone(),
            "/v1/session/create",
            b"[1,2]".to_vec(),
            400,
            "Request decode failed",
        ),
        (
            put.clone(),
            "/v1/session/create",
            br#"{"TTL":"5s"}"#.to_vec(),
            400,
            "between 10s and 86400s",
        ),
        (
            put.clone(),
            "/v1/session/create",
            br#"{"TTL":"90000s"}"#.to_vec(),
            400,
            "between 10s and 86400s",
        ),
        (
            put.clone(),
            "/v1/session/create",
            br#"{"TTL":15}"#.to_vec(),
            400,
            "Request decode failed",
        ),
        (
            put.clone(),
            "/v1/session/create",
            br#"{"Behavior":"keep"}"#.to_vec(),
            400,
            "Behavior",
        ),
        (
            put.clone(),
            "/v1/session/create",
            br#"{"LockDelay":"soon"}"#.to_vec(),
            400,
            "Request decode failed",
        ),
        (
            put.clone(),
            "/v1/session/create",
            br#"{"Node":"elsewhere"}"#.to_vec(),
            400,
            "node",
        ),
        (
            put.clone(),
            "/v1/session/create",
            br#"{"Checks":["maintenance"]}"#.to_vec(),
            400,
            "check",
        ),
        (
            put.clone(),
            "/v1/session/renew/no-such-session",
            Vec::new(),
            404,
            "not found",
        ),
    ];
    for (method, path, body, status, piece) in cases {
        let (got, text) = send(&base, method.clone(), path, body).await;
        assert_eq!(got, status, "{method} {path}: {text}");
        assert!(
            text.contains(piece),
            "{method} {path}: {text:?} lacks {piece:?}"
        );
    }
    // Every cut of a valid transaction body is answered, never with a server error.
    let valid = br#"[{"KV":{"Verb":"set","Key":"cut","Value":"eA==","Flags":1}},{"KV":{"Verb":"get-tree","Key":"c"}}]"#;
    for cut in 0..valid.len() {
        let (status, text) = send(&base, put.clone(), "/v1/txn", valid[..cut].to_vec()).await;
        assert!(status < 500, "a body cut at {cut} got {status}: {text}");
    }
    // The node still serves.
    let (status, text) = send(&base, put.clone(), "/v1/kv/after", b"fine".to_vec()).await;
    assert_eq!((status, text.as_str()), (200, "true"));
    let node = &cluster.nodes[0];
    node.assert_no_panic();
}

/// A session bound to a service check ends, and deletes what it locked (behavior `delete`),
/// when that check turns critical: Consul's "the session is invalidated if any of its checks
/// go critical". The reaper learns it from the registry, not from a lease, so this also
/// checks that it looks at sessions on service checks on every pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_on_a_service_check_ends_when_the_check_fails() {
    let cluster = Cluster::start(1, REGISTRY_ON_ANY_PORT).await;
    let base = format!("http://{}", consul_addr(&cluster.nodes[0]));
    let put = reqwest::Method::PUT;
    let register = br#"{"ID": "web-1", "Name": "web", "Port": 80, "Check": {"TTL": "60s"}}"#;
    put_ok(&base, "/v1/agent/service/register", register).await;
    let create =
        br#"{"NodeChecks": [], "ServiceChecks": [{"ID": "service:web-1"}], "Behavior": "delete"}"#;
    // A TTL check starts critical, and a session cannot bind to a critical check.
    let (status, text) = send(&base, put.clone(), "/v1/session/create", create.to_vec()).await;
    assert_eq!(status, 400, "{text}");
    put_ok(&base, "/v1/agent/check/pass/service:web-1", b"").await;
    let session = wait_until(
        DEADLINE_SESSION,
        "a session on the passing check",
        || async {
            let (status, text) =
                send(&base, put.clone(), "/v1/session/create", create.to_vec()).await;
            let created: Value = serde_json::from_str(&text).ok()?;
            (status == 200).then(|| created["ID"].as_str().map(str::to_string))?
        },
    )
    .await;
    let (status, text) = send(
        &base,
        put.clone(),
        &format!("/v1/kv/leader?acquire={session}"),
        b"me".to_vec(),
    )
    .await;
    assert_eq!((status, text.trim()), (200, "true"));
    let info = format!("/v1/session/info/{session}");
    let gone = |value: &Value| value.is_null() || value.as_array().is_some_and(Vec::is_empty);
    assert!(
        !gone(&get_json(&base, &info).await),
        "the session lives while its check passes"
    );

    put_ok(&base, "/v1/agent/check/fail/service:web-1", b"").await;
    wait_until(
        DEADLINE_SESSION,
        "the session to end with its check",
        || async { gone(&get_json(&base, &info).await).then_some(()) },
    )
    .await;
    wait_until(DEADLINE_SESSION, "its lock's key to be deleted", || async {
        let (status, _) = send(&base, reqwest::Method::GET, "/v1/kv/leader", Vec::new()).await;
        (status == 404).then_some(())
    })
    .await;
    cluster.nodes[0].assert_no_panic();
}

/// PUTs `body` to `path` and checks that it was taken (200).
async fn put_ok(base: &str, path: &str, body: &[u8]) {
    let (status, text) = send(base, reqwest::Method::PUT, path, body.to_vec()).await;
    assert_eq!(status, 200, "PUT {path}: {text}");
}

/// How long a session test waits for the reaper (it looks at least once a second).
const DEADLINE_SESSION: Duration = Duration::from_secs(10);
