//! The service registry on a real 3-node cluster: health checks, failover of checks,
//! ephemeral instances, blocking queries, watches, DNS through `dig`, the Consul-compatible
//! API through `py-consul`, and bad input through the CLI.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use strata_api::registry::{Instance, QueryResult, WatchMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

/// A tiny HTTP backend answering 200 on every path; it can stop and come back on its port.
struct Backend {
    port: u16,
    stop: Option<CancellationToken>,
}

impl Backend {
    async fn start() -> Backend {
        let mut backend = Backend {
            port: 0,
            stop: None,
        };
        backend.listen().await;
        backend
    }

    async fn listen(&mut self) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket
            .bind(format!("127.0.0.1:{}", self.port).parse().unwrap())
            .unwrap();
        let listener = socket.listen(128).unwrap();
        self.port = listener.local_addr().unwrap().port();
        let stop = CancellationToken::new();
        self.stop = Some(stop.clone());
        tokio::spawn(serve_ok(listener, stop));
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.cancel();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve_ok(listener: TcpListener, stop: CancellationToken) {
    loop {
        let (mut stream, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
        };
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            tokio::select! {
                () = stop.cancelled() => {}
                _ = stream.read(&mut buf) => {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                        .await;
                }
            }
        });
    }
}

fn http() -> reqwest::Client {
    strata_tls::http_client_builder()
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap()
}

async fn register(node: &NodeProc, body: Value) -> Value {
    let response = http()
        .post(format!("{}/v1/registry/instances", node.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let reply: Value = response.json().await.unwrap();
    assert!(status.is_success(), "register {body} failed: {reply}");
    reply
}

/// A node's answer to a discovery query (its own view).
async fn query(node: &NodeProc, service: &str, params: &str) -> Option<QueryResult> {
    let response = http()
        .get(format!(
            "{}/v1/registry/services/{service}?{params}",
            node.url()
        ))
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

async fn status_of(node: &NodeProc, service: &str, id: &str) -> Option<String> {
    let result = query(node, service, "").await?;
    let instance = result.instances.iter().find(|i| i.id == id)?;
    Some(
        serde_json::to_value(instance.status)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string(),
    )
}

async fn wait_status(nodes: &[&NodeProc], service: &str, id: &str, want: &str, timeout: Duration) {
    for node in nodes {
        wait_until(
            timeout,
            &format!("{service}/{id} {want} on node {}", node.id),
            || async {
                (status_of(node, service, id).await.as_deref() == Some(want)).then_some(())
            },
        )
        .await;
    }
}

async fn local_checks(node: &NodeProc) -> Option<Vec<Value>> {
    let response = http()
        .get(format!("{}/v1/registry/checks/local", node.url()))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

fn check_id(check: &Value) -> String {
    check["instance"]["id"].as_str().unwrap().to_string()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_goes_critical_when_backend_stops_and_passing_when_it_returns() {
    let cluster = Cluster::start(3, &[]).await;
    let mut backend = Backend::start().await;
    let interval = Duration::from_millis(300);
    let threshold = 2;
    register(
        &cluster.nodes[0],
        json!({
            "service": "api", "id": "api-1", "address": "127.0.0.1", "port": backend.port,
            "check": {
                "probe": {"kind": "http", "url": format!("http://127.0.0.1:{}/health", backend.port)},
                "interval": "300ms", "timeout": "200ms", "failures_before_critical": threshold
            }
        }),
    )
    .await;
    let nodes: Vec<&NodeProc> = cluster.nodes.iter().collect();
    wait_status(&nodes, "api", "api-1", "passing", Duration::from_secs(10)).await;

    backend.stop();
    // interval × threshold, plus a margin for one probe timeout, the log round and the watch.
    let margin = Duration::from_secs(3);
    wait_status(
        &nodes,
        "api",
        "api-1",
        "critical",
        interval * threshold + margin,
    )
    .await;

    backend.listen().await;
    wait_status(&nodes, "api", "api-1", "passing", interval + margin).await;
    for node in &cluster.nodes {
        node.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_instance_survives_leader_kill_and_expires_when_heartbeats_stop() {
    let mut cluster = Cluster::start(3, &[]).await;
    let endpoints = cluster.endpoints().join(",");
    let ttl = Duration::from_secs(3);
    let mut keepalive = KillOnDrop(
        Command::new(strata_bin())
            .args(["--endpoints", &endpoints, "svc", "register", "eph"])
            .args(["--id", "e1", "--address", "127.0.0.1", "--port", "9000"])
            .args(["--ttl", "3s", "--keepalive"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for node in &cluster.nodes {
        wait_until(
            Duration::from_secs(10),
            "ephemeral instance visible",
            || async {
                let r = query(node, "eph", "").await?;
                (r.instances.len() == 1).then_some(())
            },
        )
        .await;
    }

    // Follow the service on the two nodes that will survive; each stream starts with a
    // snapshot holding the instance, then carries every change.
    let leader = cluster.wait_for_leader().await;
    let mut streams = Vec::new();
    for node in cluster.nodes.iter().filter(|n| n.id != leader) {
        let mut stream = strata_client::Client::new(&[node.url()])
            .stream_get::<WatchMessage>("/v1/registry/services/eph/watch")
            .await
            .unwrap();
        match stream.next().await.unwrap() {
            Some(WatchMessage::Snapshot { instances, .. }) => {
                assert_eq!(instances.len(), 1, "node {}: {instances:?}", node.id)
            }
            other => panic!("node {}: expected a snapshot, got {other:?}", node.id),
        }
        streams.push((node.id, stream));
    }
    cluster.node(leader).kill9();
    // Heartbeats keep going through the survivors: for twice the TTL, no survivor reports the
    // instance gone (the streams stay quiet or carry puts, never a delete).
    let window_end = tokio::time::Instant::now() + ttl * 2;
    for (id, stream) in &mut streams {
        while let Ok(message) = tokio::time::timeout_at(window_end, stream.next()).await {
            match message.unwrap() {
                Some(WatchMessage::Delete { id: gone, .. }) => {
                    panic!("ephemeral instance {gone} vanished on node {id}")
                }
                Some(WatchMessage::Snapshot { instances, .. }) => {
                    assert_eq!(instances.len(), 1, "node {id} lost the instance")
                }
                Some(WatchMessage::Put { .. }) => {}
                None => panic!("node {id} closed the watch"),
            }
        }
    }

    let _ = keepalive.0.kill();
    let _ = keepalive.0.wait();
    // Gone within the TTL plus the documented margin (docs/registry.md): one lease-expiry
    // tick, the log round and the watch to each node.
    let expired_by = tokio::time::Instant::now() + ttl + Duration::from_secs(2);
    for (id, stream) in &mut streams {
        loop {
            let message = tokio::time::timeout_at(expired_by, stream.next())
                .await
                .unwrap_or_else(|_| panic!("node {id}: the instance outlived its TTL"))
                .unwrap();
            match message {
                Some(WatchMessage::Delete { id: gone, .. }) if gone == "e1" => break,
                Some(WatchMessage::Snapshot { instances, .. }) if instances.is_empty() => break,
                Some(_) => {}
                None => panic!("node {id} closed the watch"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_of_a_killed_node_run_elsewhere_within_5s() {
    let mut cluster = Cluster::start(3, &[]).await;
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            if let Ok((stream, _)) = target.accept().await {
                drop(stream);
            }
        }
    });
    let count = 12;
    for i in 0..count {
        register(
            &cluster.nodes[i % 3],
            json!({
                "service": "chk", "id": format!("c{i}"), "address": "127.0.0.1", "port": 1000 + i,
                "check": {"probe": {"kind": "tcp", "addr": target_addr}, "interval": "200ms"}
            }),
        )
        .await;
    }
    // Every check runs on exactly one node.
    let placement: BTreeMap<u64, BTreeSet<String>> = wait_until(
        Duration::from_secs(15),
        "every check running once",
        || async {
            let mut placement = BTreeMap::new();
            let mut total = 0;
            for node in &cluster.nodes {
                let ids: BTreeSet<String> =
                    local_checks(node).await?.iter().map(check_id).collect();
                total += ids.len();
                placement.insert(node.id, ids);
            }
            let distinct: BTreeSet<&String> = placement.values().flatten().collect();
            (distinct.len() == count && total == count).then_some(placement)
        },
    )
    .await;
    let (victim, moved) = placement
        .iter()
        .max_by_key(|(_, ids)| ids.len())
        .map(|(id, ids)| (*id, ids.clone()))
        .unwrap();
    assert!(!moved.is_empty());

    let killed_at = Instant::now();
    let killed_ms = now_ms();
    cluster.node(victim).kill9();
    let survivors: Vec<&NodeProc> = cluster.nodes.iter().filter(|n| n.id != victim).collect();
    wait_until(
        Duration::from_secs(5),
        "the dead node's checks to run elsewhere",
        || async {
            let mut running = BTreeSet::new();
            for node in &survivors {
                for check in local_checks(node).await? {
                    if check["last_run_ms"].as_u64().unwrap_or(0) > killed_ms {
                        running.insert(check_id(&check));
                    }
                }
            }
            moved.is_subset(&running).then_some(())
        },
    )
    .await;
    eprintln!(
        "{} checks of node {victim} ran again on the survivors after {:?}",
        moved.len(),
        killed_at.elapsed()
    );
    // And still exactly once across the survivors.
    let mut seen = Vec::new();
    for node in &survivors {
        seen.extend(local_checks(node).await.unwrap().iter().map(check_id));
    }
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(
        distinct.len(),
        seen.len(),
        "a check runs on two nodes: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_query_returns_on_change_and_watch_sees_every_change_in_order() {
    let cluster = Cluster::start(3, &[]).await;
    let endpoints = cluster.endpoints();
    register(
        &cluster.nodes[0],
        json!({"service": "bq", "id": "b0", "address": "10.0.0.1", "port": 80}),
    )
    .await;
    let before = wait_until(Duration::from_secs(10), "b0 on node 3", || async {
        let r = query(&cluster.nodes[2], "bq", "").await?;
        (r.instances.len() == 1).then_some(r.index)
    })
    .await;

    // A blocking query waiting up to 60 s returns as soon as b1 is registered.
    let url = format!(
        "{}/v1/registry/services/bq?index={before}&wait=60s",
        cluster.nodes[2].url()
    );
    let blocked = tokio::spawn(async move {
        let started = Instant::now();
        let r: QueryResult = http().get(url).send().await.unwrap().json().await.unwrap();
        (r, started.elapsed())
    });
    // The query must be parked before the change; it is, once an identical one times out.
    let probe: QueryResult = http()
        .get(format!(
            "{}/v1/registry/services/bq?index={before}&wait=300ms",
            cluster.nodes[2].url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(probe.index, before, "nothing changed yet");
    register(
        &cluster.nodes[1],
        json!({"service": "bq", "id": "b1", "address": "10.0.0.2", "port": 80}),
    )
    .await;
    let (woken, took) = tokio::time::timeout(Duration::from_secs(20), blocked)
        .await
        .expect("blocking query never returned")
        .unwrap();
    assert!(woken.index > before);
    assert!(woken.instances.iter().any(|i| i.id == "b1"));
    assert!(
        took < Duration::from_secs(30),
        "returned by timeout, not by the change"
    );

    // `strata svc watch` prints every change, in order, as it happens.
    let mut watcher = KillOnDrop(
        Command::new(strata_bin())
            .args(["--endpoints", &endpoints[2], "svc", "watch", "wt"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let stdout = watcher.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let first = lines_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(first.starts_with("watching wt: 0 instances"), "{first}");
    let ttl_check = json!({"ttl": "60s"});
    let mut expected = Vec::new();
    for i in 0..5 {
        let node = &cluster.nodes[i % 3];
        let id = format!("w{i}");
        register(
            node,
            json!({"service": "wt", "id": id, "address": "10.1.0.1", "port": 80 + i, "check": ttl_check}),
        )
        .await;
        expected.push(format!("put {id} 10.1.0.1:{} critical", 80 + i));
    }
    let client = cluster.client();
    let _: Value = client
        .call(
            strata_client::Method::PUT,
            "/v1/registry/services/wt/instances/w2/status",
            Some(&json!({"status": "passing"})),
        )
        .await
        .unwrap();
    expected.push("put w2 10.1.0.1:82 passing".into());
    let _: Value = client
        .call::<(), _>(
            strata_client::Method::DELETE,
            "/v1/registry/services/wt/instances/w1",
            None,
        )
        .await
        .unwrap();
    expected.push("delete w1".into());

    let mut indexes = Vec::new();
    for want in &expected {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("watch stopped before {want:?}"));
        let (change, index) = line.rsplit_once(" index=").unwrap();
        assert_eq!(change, want, "watch lines out of order or wrong");
        indexes.push(index.parse::<i64>().unwrap());
    }
    assert!(
        indexes.windows(2).all(|w| w[0] < w[1]),
        "indexes not increasing: {indexes:?}"
    );
}

fn dig(server: &str, args: &[&str]) -> String {
    let (host, port) = server.rsplit_once(':').unwrap();
    let out = Command::new("dig")
        .arg(format!("@{host}"))
        .args(["-p", port, "+time=2", "+tries=2"])
        .args(args)
        .output()
        .expect("dig (Debian package dnsutils) runs");
    assert!(
        out.status.success(),
        "dig {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn short_set(output: &str) -> BTreeSet<String> {
    output
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_gets_a_and_srv_for_healthy_instances_only() {
    let cluster = Cluster::start(3, REGISTRY_ON_ANY_PORT).await;
    let n1 = &cluster.nodes[0];
    register(
        n1,
        json!({"service": "db", "id": "db-1", "address": "127.0.0.11", "port": 5432}),
    )
    .await;
    register(
        n1,
        json!({"service": "db", "id": "db-2", "address": "127.0.0.12", "port": 5433, "tags": ["primary"], "weight": 5}),
    )
    .await;
    // A TTL check starts critical: not served by DNS.
    register(
        n1,
        json!({"service": "db", "id": "db-3", "address": "127.0.0.13", "port": 5434, "check": {"ttl": "60s"}}),
    )
    .await;
    let n2 = &cluster.nodes[1];
    wait_until(
        Duration::from_secs(10),
        "db instances on node 2",
        || async { (query(n2, "db", "").await?.instances.len() == 3).then_some(()) },
    )
    .await;
    let dns = n2.dns.clone().unwrap();

    let a = short_set(&dig(&dns, &["db.service.strata", "A", "+short"]));
    assert_eq!(a, ["127.0.0.11", "127.0.0.12"].map(String::from).into());
    let srv = short_set(&dig(&dns, &["db.service.strata", "SRV", "+short"]));
    assert_eq!(
        srv,
        [
            "1 1 5432 7f00000b.addr.strata.",
            "1 5 5433 7f00000c.addr.strata."
        ]
        .map(String::from)
        .into()
    );
    let srv_full = dig(&dns, &["db.service.strata", "SRV"]);
    assert!(
        srv_full.contains("7f00000b.addr.strata.\t0\tIN\tA\t127.0.0.11"),
        "{srv_full}"
    );
    let tagged = short_set(&dig(
        &dns,
        &["primary.db.service.strata", "A", "+short", "+tcp"],
    ));
    assert_eq!(tagged, ["127.0.0.12"].map(String::from).into());
    assert!(dig(&dns, &["nosuch.service.strata", "A"]).contains("status: NXDOMAIN"));

    // The TTL check passes: db-3 is now served, by every node.
    let _: Value = cluster
        .client()
        .call(
            strata_client::Method::PUT,
            "/v1/registry/services/db/instances/db-3/status",
            Some(&json!({"status": "passing"})),
        )
        .await
        .unwrap();
    for node in &cluster.nodes {
        let dns = node.dns.clone().unwrap();
        wait_until(Duration::from_secs(10), "db-3 in DNS", || {
            let dns = dns.clone();
            async move {
                let a = short_set(&dig(&dns, &["db.service.strata", "A", "+short"]));
                a.contains("127.0.0.13").then_some(())
            }
        })
        .await;
    }

    // Many instances: UDP answers are truncated (TC), and dig's TCP retry gets them all.
    for i in 0..60 {
        register(
            n1,
            json!({"service": "big", "id": format!("b{i}"), "address": format!("127.0.1.{i}"), "port": 80}),
        )
        .await;
    }
    wait_until(Duration::from_secs(10), "big on node 2", || async {
        (query(n2, "big", "").await?.instances.len() == 60).then_some(())
    })
    .await;
    let udp_only = dig(&dns, &["big.service.strata", "A", "+ignore", "+noedns"]);
    assert!(udp_only.contains(" tc"), "no TC flag: {udp_only}");
    let all = short_set(&dig(&dns, &["big.service.strata", "A", "+short"]));
    assert_eq!(all.len(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_consul_registers_queries_and_deregisters() {
    let cluster = Cluster::start(3, REGISTRY_ON_ANY_PORT).await;
    let backend = Backend::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/consul_compat.py");
    let consul = cluster.nodes[1].consul.clone().unwrap();
    let out = run_with_deadline(
        Command::new("python3")
            .arg(script)
            .arg(&consul)
            .arg(backend.port.to_string()),
        b"",
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "py-consul script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all steps passed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_get_precise_errors_and_disturb_nothing() {
    let cluster = Cluster::start(3, &[]).await;
    let endpoints = cluster.endpoints();
    let ok = [
        "svc",
        "register",
        "web",
        "--id",
        "web-1",
        "--address",
        "127.0.0.1",
        "--port",
        "8080",
        "--tag",
        "v1",
    ];
    cli_ok(&endpoints, &ok);
    let show = || cli_ok(&endpoints, &["--output", "json", "svc", "show", "web"]);
    let before: Vec<Instance> = serde_json::from_str(&show()).unwrap();
    assert_eq!(before.len(), 1);

    // `strata svc register NAME --id ID --address 127.0.0.1 --port 1 EXTRA...` as one string.
    let reg = |name: &str, id: &str, extra: &str| -> Vec<String> {
        format!("svc register {name} --id {id} --address 127.0.0.1 --port 1 {extra}")
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let words = |s: &str| -> Vec<String> { s.split_whitespace().map(String::from).collect() };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            reg("Bad_Name", "x", ""),
            "invalid service name \"Bad_Name\"",
        ),
        (
            words("svc register web --id web-1 --address 127.0.0.1 --port 70000"),
            "invalid port 70000",
        ),
        (
            reg("web", "web-2", "--ttl soon"),
            "--ttl \"soon\" is not a duration",
        ),
        (reg("web", "web-2", "--ttl 0s"), "invalid ttl"),
        (
            words("svc register web --id web-1 --address 127.0.0.1 --port 9090"),
            "already registered with different content",
        ),
        (
            reg("web", "web-3", "--http-check not-a-url"),
            "invalid health check",
        ),
        (
            reg("web", "web-3", "--tcp-check nohost"),
            "invalid health check",
        ),
        (words("svc deregister web nope"), "is not registered"),
    ];
    for (args, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = cli(&endpoints, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.starts_with('✘') && stderr.contains(want),
            "{args:?}: {stderr} (wanted {want:?})"
        );
    }
    // Re-registering the same content is idempotent.
    let again = cli_ok(&endpoints, &ok);
    assert!(again.contains("already registered"), "{again}");
    let after: Vec<Instance> = serde_json::from_str(&show()).unwrap();
    assert_eq!(
        before, after,
        "a refused registration changed what was stored"
    );
    let listed = cli_ok(&endpoints, &["--output", "json", "svc", "list"]);
    let listed: Vec<Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protection_threshold_and_deregister_critical_after() {
    let cluster = Cluster::start(3, &[]).await;
    let n1 = &cluster.nodes[0];
    register(
        n1,
        json!({"service": "pt", "id": "ok", "address": "10.0.0.1", "port": 80}),
    )
    .await;
    for id in ["sick-1", "sick-2"] {
        register(
            n1,
            json!({"service": "pt", "id": id, "address": "10.0.0.2", "port": 80, "check": {"ttl": "60s"}}),
        )
        .await;
    }
    let healthy = query(n1, "pt", "passing=true").await.unwrap();
    assert_eq!(healthy.instances.len(), 1);
    assert!(!healthy.protected);

    // 1 of 3 healthy is below 0.5: a healthy-only query returns everyone, flagged.
    let response = http()
        .put(format!("{}/v1/registry/services/pt/settings", n1.url()))
        .json(&json!({"protect_threshold": 0.5}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let protected = query(n1, "pt", "passing=true").await.unwrap();
    assert!(protected.protected);
    assert_eq!(protected.instances.len(), 3);
    let bad = http()
        .put(format!("{}/v1/registry/services/pt/settings", n1.url()))
        .json(&json!({"protect_threshold": 2.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // A dead TCP target turns critical and is reaped after deregister_critical_after.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    register(
        n1,
        json!({"service": "reap", "id": "r1", "address": "127.0.0.1", "port": 1,
               "check": {"probe": {"kind": "tcp", "addr": dead_addr}, "interval": "200ms",
                         "deregister_critical_after": "1s"}}),
    )
    .await;
    for node in &cluster.nodes {
        wait_until(
            Duration::from_secs(10),
            "critical instance to be reaped",
            || async {
                query(node, "reap", "")
                    .await?
                    .instances
                    .is_empty()
                    .then_some(())
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_check_lapses_when_reports_stop_and_a_never_reported_one_is_reaped() {
    let cluster = Cluster::start(3, &[]).await;
    let nodes: Vec<&NodeProc> = cluster.nodes.iter().collect();
    let n1 = &cluster.nodes[0];
    register(
        n1,
        json!({"service": "tl", "id": "t1", "address": "10.0.0.1", "port": 80, "check": {"ttl": "2s"}}),
    )
    .await;
    let report_url = format!(
        "{}/v1/registry/services/tl/instances/t1/status",
        cluster.nodes[1].url()
    );
    let report = |status: &'static str| {
        let url = report_url.clone();
        async move {
            let response = http()
                .put(url)
                .json(&json!({"status": status}))
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success(), "report {status}");
        }
    };
    report("passing").await;
    wait_status(&nodes, "tl", "t1", "passing", Duration::from_secs(10)).await;
    // No more reports: the check's runner (asleep until then) turns it critical after the TTL.
    let reported = Instant::now();
    wait_status(&nodes, "tl", "t1", "critical", Duration::from_secs(15)).await;
    assert!(
        reported.elapsed() >= Duration::from_millis(1500),
        "lapsed {:?} after a report with a 2 s TTL",
        reported.elapsed()
    );
    // A report brings it back, and the runner sees the TTL lapse again.
    report("passing").await;
    wait_status(&nodes, "tl", "t1", "passing", Duration::from_secs(10)).await;
    wait_status(&nodes, "tl", "t1", "critical", Duration::from_secs(15)).await;

    // Never reported: critical from the start, and reaped after deregister_critical_after.
    register(
        n1,
        json!({"service": "tl", "id": "t2", "address": "10.0.0.2", "port": 80,
               "check": {"ttl": "2s", "deregister_critical_after": "1s"}}),
    )
    .await;
    for node in &nodes {
        wait_until(Duration::from_secs(15), "t2 to be reaped", || async {
            let result = query(node, "tl", "").await?;
            (!result.instances.iter().any(|i| i.id == "t2")).then_some(())
        })
        .await;
    }
    assert_eq!(status_of(n1, "tl", "t1").await.as_deref(), Some("critical"));
}
