//! The gateway on a real `strata server`: routes and actions, balancing over static and
//! registry-backed groups, table changes (valid, invalid, under load), failing upstreams and
//! bad input, WebSocket-style upgrades and gRPC over h2c. Backends run in the test process on
//! ports chosen at run time.
#![allow(clippy::unwrap_used)]

mod common;

use axum::extract::Request;
use axum::routing::any;
use axum::Router;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A backend that answers every request with its name and what it received.
struct Backend {
    addr: String,
    stop: CancellationToken,
}

impl Backend {
    async fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = CancellationToken::new();
        let router = Router::new().fallback(any(move |request: Request| async move {
            if request.uri().path() == "/slow" {
                // An upstream that hangs: it never answers.
                std::future::pending::<()>().await;
            }
            // A header that came twice shows both values, joined with " | ".
            let mut headers: BTreeMap<String, String> = BTreeMap::new();
            for (k, v) in request.headers() {
                let v = v.to_str().unwrap_or("");
                headers
                    .entry(k.to_string())
                    .and_modify(|all| *all = format!("{all} | {v}"))
                    .or_insert_with(|| v.to_string());
            }
            let (method, path) = (request.method().clone(), request.uri().path().to_string());
            let query = request.uri().query().map(str::to_string);
            // The whole upload is read before answering, as a real service would (an answer
            // sent early would race the gateway's body limit).
            let body = axum::body::to_bytes(request.into_body(), usize::MAX)
                .await
                .map_or(0, |b| b.len());
            axum::Json(json!({
                "name": name,
                "method": method.as_str(),
                "path": path,
                "query": query,
                "headers": headers,
                "body_bytes": body,
            }))
        }));
        let token = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
                .unwrap();
        });
        Backend { addr, stop }
    }

    fn port(&self) -> u16 {
        self.addr.rsplit_once(':').unwrap().1.parse().unwrap()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start_node(root: &std::path::Path) -> NodeProc {
    let node = NodeProc::start(
        1,
        root,
        Some("1=127.0.0.1:0"),
        &[
            "--listen",
            "gateway=127.0.0.1:0",
            "--listen",
            "gateway_tls=127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ],
    )
    .await;
    let url = node.url();
    wait_until(Duration::from_secs(20), "the node to be ready", || {
        let url = url.clone();
        async move {
            let ok = http_client()
                .get(format!("{url}/readyz"))
                .send()
                .await
                .ok()?
                .status()
                .is_success();
            ok.then_some(())
        }
    })
    .await;
    node
}

/// Applies `table` through the admin API (merging by name, or replacing it); returns the
/// status and the answer.
async fn apply(node: &NodeProc, table: &Value, replace: bool) -> (u16, Value) {
    let response = http_client()
        .post(format!(
            "{}/v1/gateway/routes{}",
            node.url(),
            if replace { "?replace=true" } else { "" }
        ))
        .json(table)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A node with the config file `config` and a gateway listener.
async fn start_configured(root: &std::path::Path, config: &std::path::Path) -> NodeProc {
    NodeProc::start(
        1,
        root,
        Some("1=127.0.0.1:0"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "gateway=127.0.0.1:0",
        ],
    )
    .await
}

/// Applies `table` (replacing) as soon as the node accepts it.
async fn apply_when_ready(node: &NodeProc, table: &Value) {
    wait_until(
        Duration::from_secs(20),
        "the route table to apply",
        || async {
            let (status, _) = apply(node, table, true).await;
            (status == 200).then_some(())
        },
    )
    .await;
}

async fn apply_ok(node: &NodeProc, table: &Value) -> u64 {
    let (status, reply) = apply(node, table, true).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["in_force"], true, "{reply}");
    reply["version"].as_u64().unwrap()
}

fn gateway_client() -> reqwest::Client {
    strata_tls::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// GET through the gateway: status, headers and body as JSON when it is JSON.
async fn get(
    client: &reqwest::Client,
    node: &NodeProc,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = client.get(format!("http://{}{path}", node.gateway.as_ref().unwrap()));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_routes_match_act_and_balance_over_static_members() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    apply_ok(
        &node,
        &json!({
            "routes": [
                {"name": "api", "path": {"prefix": "/api/"}, "strip_prefix": true, "upstream": "pair",
                 "request_headers": {"set": {"x-route": "api"}},
                 "response_headers": {"set": {"x-served-by": "strata"}, "remove": ["content-type"]}},
                {"name": "user", "path": {"template": "/users/{id}/profile"},
                 "rewrite": "/profiles/{id}", "upstream": "pair"},
                {"name": "v2", "priority": 5, "headers": [{"name": "accept-version", "value": "v2"}],
                 "respond": {"status": 200, "body": "version two"}},
                {"name": "post-only", "path": {"prefix": "/api/"}, "methods": ["POST"],
                 "respond": {"status": 201, "body": "posted"}},
                {"name": "old", "path": {"prefix": "/old"}, "redirect": {"to": "/new{path}{query}", "status": 301}},
                {"name": "example", "hosts": ["*.example.com"], "respond": {"body": "wildcard"}}
            ],
            "upstreams": [
                {"name": "pair", "addresses": [a.addr, b.addr]}
            ]
        }),
    )
    .await;
    let client = gateway_client();
    let mut names = Vec::new();
    for _ in 0..6 {
        let (status, headers, body) = get(
            &client,
            &node,
            "/api/orders/7?x=1",
            &[("x-request-id", "req-1")],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["path"], "/orders/7");
        assert_eq!(body["query"], "x=1");
        assert_eq!(body["headers"]["x-route"], "api");
        assert_eq!(body["headers"]["x-request-id"], "req-1");
        assert_eq!(body["headers"]["x-forwarded-for"], "127.0.0.1");
        assert_eq!(headers["x-served-by"], "strata");
        assert_eq!(headers["x-request-id"], "req-1");
        assert!(!headers.contains_key("content-type"), "{headers:?}");
        names.push(body["name"].as_str().unwrap().to_string());
    }
    assert_eq!(
        names,
        ["a", "b", "a", "b", "a", "b"],
        "round robin takes turns"
    );
    // A client's forwarding headers: its X-Forwarded-For is extended, its X-Request-Id kept,
    // the rest replaced by the gateway's own, each sent once (a route without header edits,
    // whose forwarding headers are written as lines of their own).
    let sent_trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (_, _, body) = get(
        &client,
        &node,
        "/users/42/profile",
        &[
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-host", "spoofed.example"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "req-2"),
            ("traceparent", sent_trace),
        ],
    )
    .await;
    assert_eq!(body["path"], "/profiles/42");
    let seen = &body["headers"];
    assert_eq!(seen["x-forwarded-for"], "192.0.2.1, 127.0.0.1", "{seen}");
    assert_eq!(seen["x-forwarded-host"], "127.0.0.1", "{seen}");
    assert_eq!(seen["x-forwarded-proto"], "http", "{seen}");
    assert_eq!(seen["x-request-id"], "req-2", "{seen}");
    let trace = seen["traceparent"].as_str().unwrap_or_default();
    assert!(
        trace.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && trace != sent_trace,
        "the member's parent is the gateway's span in the client's trace: {seen}"
    );
    let (status, _, body) = get(&client, &node, "/api/x", &[("accept-version", "v2")]).await;
    assert_eq!((status, body), (200, json!("version two")), "priority wins");
    let response = client
        .post(format!("http://{}/api/x", node.gateway.as_ref().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let (status, headers, _) = get(&client, &node, "/old/page?q=1", &[]).await;
    assert_eq!(status, 301);
    assert_eq!(headers["location"], "/new/old/page?q=1");
    let (status, _, body) = get(&client, &node, "/", &[("host", "www.example.com")]).await;
    assert_eq!((status, body), (200, json!("wildcard")));
    let (status, headers, _) = get(&client, &node, "/nothing", &[]).await;
    assert_eq!(status, 404);
    assert_eq!(
        headers["x-request-id"].len(),
        32,
        "a request id is made when none came"
    );
    // The admin views and the CLI.
    let listed = cli_ok(&[node.url()], &["gateway", "routes", "list"]);
    assert!(
        listed.contains("upstream pair") && listed.contains("redirect /new"),
        "{listed}"
    );
    let shown: Value = serde_json::from_str(&cli_ok(
        &[node.url()],
        &["--output", "json", "gateway", "upstreams", "show", "pair"],
    ))
    .unwrap();
    let requests: u64 = shown["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(requests, 7, "{shown}");
    let metrics = http_client()
        .get(format!("{}/metrics", node.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"strata_gateway_requests_total{code="2xx",route="api",node_id="1"} 6"#,
        r#"strata_gateway_requests_total{code="3xx",route="old",node_id="1"} 1"#,
        r#"strata_gateway_requests_total{code="4xx",route="",node_id="1"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t02_a_registry_group_follows_registrations_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let backends = [
        Backend::start("r1").await,
        Backend::start("r2").await,
        Backend::start("r3").await,
    ];
    apply_ok(
        &node,
        &json!({
            "routes": [{"name": "svc", "upstream": "web"}],
            "upstreams": [{"name": "web", "service": "web", "balance": "least_request"}]
        }),
    )
    .await;
    let client = gateway_client();
    let (status, headers, _) = get(&client, &node, "/", &[]).await;
    assert_eq!(status, 503, "no instances yet");
    assert_eq!(headers["retry-after"], "1");
    let http = http_client();
    for (i, backend) in backends.iter().enumerate() {
        let response = http
            .post(format!("{}/v1/registry/instances", node.url()))
            .json(&json!({"service": "web", "id": format!("r{}", i + 1),
                "address": "127.0.0.1", "port": backend.port()}))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{}",
            response.text().await.unwrap()
        );
    }
    let seen = wait_until(
        Duration::from_secs(5),
        "all three instances to serve",
        || {
            let client = client.clone();
            let node = &node;
            async move {
                let mut names = std::collections::BTreeSet::new();
                for _ in 0..30 {
                    let (status, _, body) = get(&client, node, "/", &[]).await;
                    if status == 200 {
                        names.insert(body["name"].as_str().unwrap().to_string());
                    }
                }
                (names.len() == 3).then_some(names)
            }
        },
    )
    .await;
    assert_eq!(seen.len(), 3);
    // Deregister r1 and stop r2 while requests flow: within a second only r3 answers, and
    // every GET succeeds (a refused connection is retried on another member).
    let changed = Instant::now();
    let response = http
        .delete(format!(
            "{}/v1/registry/services/web/instances/r1",
            node.url()
        ))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    backends[1].stop.cancel();
    let mut failures = 0;
    let mut last_other = changed;
    while changed.elapsed() < Duration::from_secs(3) {
        let (status, _, body) = get(&client, &node, "/", &[]).await;
        if status != 200 {
            failures += 1;
        } else if body["name"] != "r3" {
            last_other = Instant::now();
        }
    }
    assert!(
        last_other.duration_since(changed) < Duration::from_secs(1),
        "r1 or r2 still served {:?} after the change",
        last_other.duration_since(changed)
    );
    // r2 is still registered (nothing checks it): its refused connections are retried.
    assert_eq!(failures, 0, "requests failed while the set changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t03_an_invalid_table_is_refused_and_the_old_one_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let version = apply_ok(
        &node,
        &json!({"routes": [{"name": "hello", "respond": {"body": "hello"}}]}),
    )
    .await;
    let cases = [
        (
            json!({"routes": [{"name": "a", "upstream": "missing"}]}),
            "unknown upstream \"missing\"",
        ),
        (
            json!({"routes": [{"name": "a", "path": {"regex": "(["}, "respond": {}}]}),
            "bad regex",
        ),
        (
            json!({"routes": [{"name": "a", "path": {"exact": "/x"}, "respond": {}},
                              {"name": "b", "path": {"exact": "/x"}, "respond": {}}]}),
            "route \"b\" can never match",
        ),
        (
            json!({"routes": [{"name": "a", "respond": {}, "bogus": 1}]}),
            "bogus",
        ),
    ];
    for (table, want) in cases {
        let (status, reply) = apply(&node, &table, true).await;
        assert_eq!(status, 400, "{table}: {reply}");
        assert!(reply["message"].as_str().unwrap().contains(want), "{reply}");
    }
    let client = gateway_client();
    let (status, _, body) = get(&client, &node, "/", &[]).await;
    assert_eq!((status, body), (200, json!("hello")));
    let listed: Value = http_client()
        .get(format!("{}/v1/gateway/routes", node.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["version"], version);
    // The CLI refuses a bad file before sending it, and names the file.
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[[routes]]\nname = \"x\"\nupstrem = \"u\"\n").unwrap();
    let output = cli(
        &[node.url()],
        &["gateway", "routes", "apply", file.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("upstrem") && stderr.contains("bad.toml"),
        "{stderr}"
    );
    // A good file merges by name; delete removes one route.
    let file = dir.path().join("more.toml");
    std::fs::write(
        &file,
        "[[routes]]\nname = \"bye\"\npath = { exact = \"/bye\" }\nrespond = { body = \"bye\" }\n",
    )
    .unwrap();
    let applied = cli_ok(
        &[node.url()],
        &["gateway", "routes", "apply", file.to_str().unwrap()],
    );
    assert!(applied.contains("2 routes"), "{applied}");
    let (_, _, body) = get(&client, &node, "/bye", &[]).await;
    assert_eq!(body, json!("bye"));
    cli_ok(&[node.url()], &["gateway", "routes", "delete", "bye"]);
    let (_, _, body) = get(&client, &node, "/bye", &[]).await;
    assert_eq!(body, json!("hello"));
    let output = cli(&[node.url()], &["gateway", "routes", "delete", "bye"]);
    assert!(!output.status.success());
}

/// An address that refuses connections while the returned socket lives: bound, so no process
/// started beside this test can take the port (as one could once a listener that found it was
/// closed), but not listening.
fn refusing_address() -> (tokio::net::TcpSocket, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    (socket, addr)
}

/// Accepts connections, reads a request and closes without answering.
async fn resetting_backend() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            drop(stream);
        }
    });
    addr
}

/// Sends raw bytes to the gateway and returns what came back before the connection closed
/// (or `deadline` passed).
async fn raw(addr: &str, request: &[u8], deadline: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(deadline, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t04_failing_upstreams_and_bad_input_get_the_right_status() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let slow = Backend::start("slow").await;
    let reset = resetting_backend().await;
    let (_refusing, refused) = refusing_address();
    apply_ok(
        &node,
        &json!({
            "routes": [
                {"name": "slow", "path": {"prefix": "/slow"}, "upstream": "slow", "timeout": "300ms"},
                {"name": "reset", "path": {"prefix": "/reset"}, "upstream": "reset"},
                {"name": "refused", "path": {"prefix": "/refused"}, "upstream": "refused"},
                {"name": "small", "path": {"prefix": "/small"}, "upstream": "slow", "max_body": "1KiB"}
            ],
            "upstreams": [
                {"name": "slow", "addresses": [slow.addr]},
                {"name": "reset", "addresses": [reset]},
                {"name": "refused", "addresses": [refused]}
            ]
        }),
    )
    .await;
    let client = gateway_client();
    let started = Instant::now();
    let (status, _, _) = get(&client, &node, "/slow", &[]).await;
    assert_eq!(status, 504);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(get(&client, &node, "/reset", &[]).await.0, 502);
    assert_eq!(get(&client, &node, "/refused", &[]).await.0, 502);
    let gateway = node.gateway.clone().unwrap();
    let big = client
        .post(format!("http://{gateway}/small"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status().as_u16(), 413);
    let fits = client
        .post(format!("http://{gateway}/small"))
        .body(vec![b'x'; 512])
        .send()
        .await
        .unwrap();
    assert_eq!(fits.status().as_u16(), 200);
    // A chunked body over the limit is cut off too.
    let chunks = futures::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 512])));
    let chunked = client
        .post(format!("http://{gateway}/small"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(chunked.status().as_u16(), 413);
    // Over HTTP/2 a refusal sent while the client still uploads reaches it: the rest of the
    // body is read and dropped rather than the stream reset, which curl (Debian 12's) reports
    // as an error in place of the answer. Over the limit, and with no route at all.
    let upload = dir.path().join("upload.bin");
    std::fs::write(&upload, vec![b'z'; 300_000]).unwrap();
    for (path, expected) in [("/small", "413"), ("/no-route", "404")] {
        for _ in 0..10 {
            let status = curl_h2c_upload(&format!("http://{gateway}{path}"), &upload, &[]).await;
            assert_eq!(status, expected, "{path}");
        }
    }
    // Oversized headers, a malformed request, and a client that never finishes its headers.
    let huge = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let answer = raw(&gateway, huge.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
    let answer = raw(&gateway, b"NOT HTTP AT ALL\r\n\r\n", Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:.200}");
    let started = Instant::now();
    let answer = raw(
        &gateway,
        b"GET / HTTP/1.1\r\nhost: x\r\n",
        Duration::from_secs(30),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a slow client was not cut off: {:?} {answer:.200}",
        started.elapsed()
    );
    // Nothing above broke the gateway.
    assert_eq!(get(&client, &node, "/small", &[]).await.0, 200);
    node.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t05_route_tables_change_under_load_without_failing_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let table = |i: usize| {
        json!({
            "routes": [{"name": "all", "upstream": if i.is_multiple_of(2) { "even" } else { "odd" },
                        "response_headers": {"set": {"x-table": i.to_string()}}}],
            "upstreams": [
                {"name": "even", "addresses": [a.addr]},
                {"name": "odd", "addresses": [b.addr], "balance": "random"}
            ]
        })
    };
    apply_ok(&node, &table(0)).await;
    let stop = CancellationToken::new();
    let gateway = node.gateway.clone().unwrap();
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, gateway) = (stop.clone(), gateway.clone());
        workers.push(tokio::spawn(async move {
            let client = gateway_client();
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.is_cancelled() && ok < 200_000 {
                match client.get(format!("http://{gateway}/x")).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }
    for i in 1..=20 {
        apply_ok(&node, &table(i)).await;
    }
    stop.cancel();
    let mut total = 0;
    for worker in workers {
        let (ok, failed) = worker.await.unwrap();
        assert!(
            failed.is_empty(),
            "failed requests during reloads: {failed:?}"
        );
        total += ok;
    }
    assert!(
        total > 100,
        "too few requests ran during the reloads: {total}"
    );
    let (_, headers, body) = get(&gateway_client(), &node, "/x", &[]).await;
    assert_eq!(headers["x-table"], "20");
    assert_eq!(body["name"], "a");
}

/// A backend that switches protocols and then echoes bytes, as a WebSocket server would.
async fn upgrading_backend() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                assert!(head.contains("upgrade: echo"), "{head}");
                stream
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n")
                    .await
                    .unwrap();
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t06_upgrades_and_grpc_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let echo = upgrading_backend().await;
    apply_ok(
        &node,
        &json!({
            "routes": [
                {"name": "ws", "path": {"prefix": "/ws"}, "upstream": "echo"},
                {"name": "grpc", "path": {"prefix": "/etcdserverpb.KV/"}, "upstream": "etcd"}
            ],
            "upstreams": [
                {"name": "echo", "addresses": [echo]},
                {"name": "etcd", "addresses": [node.grpc_addr()], "protocol": "h2c"}
            ]
        }),
    )
    .await;
    let gateway = node.gateway.clone().unwrap();
    let mut stream = TcpStream::connect(&gateway).await.unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for message in [&b"ping"[..], b"and again"] {
        stream.write_all(message).await.unwrap();
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, message);
    }
    // gRPC (HTTP/2 with trailers) through the gateway to the node's own etcd API.
    use strata_etcd::pb::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};
    let mut kv = KvClient::connect(format!("http://{gateway}"))
        .await
        .unwrap();
    kv.put(PutRequest {
        key: b"through/gateway".to_vec(),
        value: b"yes".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    let range = kv
        .range(RangeRequest {
            key: b"through/gateway".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(range.kvs[0].value, b"yes");
    // A gRPC error status travels in the trailers.
    let status = kv
        .range(RangeRequest {
            key: Vec::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t07_a_canary_takes_its_share_the_forcing_header_wins_and_cookies_stick() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let (v1, v2) = (Backend::start("v1").await, Backend::start("v2").await);
    let http = http_client();
    for (id, backend, version) in [("a", &v1, "v1"), ("b", &v2, "v2")] {
        let response = http
            .post(format!("{}/v1/registry/instances", node.url()))
            .json(&json!({"service": "shop", "id": id, "address": "127.0.0.1",
                "port": backend.port(), "meta": {"version": version}}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }
    apply_ok(
        &node,
        &json!({
            "routes": [
                {"name": "shop", "upstream": "shop-v1",
                 "canary": {"upstream": "shop-v2", "weight": 10, "force_header": "x-canary"}},
                {"name": "sticky", "path": {"prefix": "/sticky"}, "upstream": "shop-v1",
                 "canary": {"upstream": "shop-v2", "weight": 50, "sticky": "cookie:side"}}
            ],
            "upstreams": [
                {"name": "shop-v1", "service": "shop", "meta": {"version": "v1"}},
                {"name": "shop-v2", "service": "shop", "meta": {"version": "v2"}}
            ]
        }),
    )
    .await;
    let client = gateway_client();
    wait_until(Duration::from_secs(5), "both versions to be live", || {
        let (client, node) = (client.clone(), &node);
        async move {
            let stable = get(&client, node, "/", &[("x-canary", "stable")]).await;
            let canary = get(&client, node, "/", &[("x-canary", "canary")]).await;
            (stable.2["name"] == "v1" && canary.2["name"] == "v2").then_some(())
        }
    })
    .await;
    let gateway = node.gateway.clone().unwrap();
    let mut workers = Vec::new();
    for _ in 0..8 {
        let gateway = gateway.clone();
        workers.push(tokio::spawn(async move {
            let client = gateway_client();
            let mut v2 = 0;
            for _ in 0..1250 {
                let body: Value = client
                    .get(format!("http://{gateway}/"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                v2 += usize::from(body["name"] == "v2");
            }
            v2
        }));
    }
    let mut v2 = 0;
    for worker in workers {
        v2 += worker.await.unwrap();
    }
    let percent = v2 as f64 / 100.0;
    assert!(
        (8.5..=11.5).contains(&percent),
        "{percent}% of 10,000 went to the canary"
    );
    for _ in 0..20 {
        assert_eq!(
            get(&client, &node, "/", &[("x-canary", "canary")]).await.2["name"],
            "v2"
        );
        assert_eq!(
            get(&client, &node, "/", &[("x-canary", "stable")]).await.2["name"],
            "v1"
        );
    }
    // Sticky by cookie: the first answer assigns a side, the cookie keeps it.
    for _ in 0..10 {
        let (_, headers, body) = get(&client, &node, "/sticky", &[]).await;
        let cookie = headers["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let side = body["name"].as_str().unwrap().to_string();
        assert_eq!(cookie == "side=canary", side == "v2", "{cookie} {side}");
        for _ in 0..10 {
            let (_, headers, body) = get(&client, &node, "/sticky", &[("cookie", &cookie)]).await;
            assert_eq!(body["name"], side.as_str());
            assert!(!headers.contains_key("set-cookie"));
        }
    }
}

/// A TCP server that answers each line with its name and the line.
async fn echo_server(name: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let (read, mut write) = stream.into_split();
                let mut lines = tokio::io::BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if write
                        .write_all(format!("{name} {line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn tcp_listeners(node: &NodeProc) -> Value {
    http_client()
        .get(format!("{}/v1/gateway/tcp", node.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Sends `line` on `stream` and reads the answer line.
async fn ask(stream: &mut TcpStream, line: &str) -> String {
    stream
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "the connection closed");
        answer.push(byte[0]);
    }
    String::from_utf8(answer).unwrap().trim_end().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t08_a_tcp_listener_balances_raw_connections_and_survives_table_changes() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let (one, two) = (echo_server("one").await, echo_server("two").await);
    let (_refusing, refused) = refusing_address();
    let table = |extra_route: bool| {
        let mut routes = vec![json!({"name": "hello", "respond": {"body": "hi"}})];
        if extra_route {
            routes.push(
                json!({"name": "bye", "path": {"exact": "/bye"}, "respond": {"body": "bye"}}),
            );
        }
        json!({
            "routes": routes,
            "upstreams": [{"name": "echo", "addresses": [one, two, refused]}],
            "tcp": [{"name": "echo", "listen": "127.0.0.1:0", "upstream": "echo"}]
        })
    };
    apply_ok(&node, &table(false)).await;
    let listeners = tcp_listeners(&node).await;
    let bound = listeners["tcp"][0]["bound"].as_str().unwrap().to_string();
    let mut names = std::collections::BTreeSet::new();
    let mut kept = TcpStream::connect(&bound).await.unwrap();
    let first = ask(&mut kept, "hello").await;
    for i in 0..6 {
        let mut stream = TcpStream::connect(&bound).await.unwrap();
        let answer = ask(&mut stream, &format!("line {i}")).await;
        let (name, rest) = answer.split_once(' ').unwrap();
        assert_eq!(rest, format!("line {i}"));
        names.insert(name.to_string());
    }
    assert_eq!(names.len(), 2, "both members served: {names:?}");
    // A table change that keeps the listener keeps its port and its open connections.
    apply_ok(&node, &table(true)).await;
    let listeners = tcp_listeners(&node).await;
    assert_eq!(listeners["tcp"][0]["bound"], bound.as_str());
    let again = ask(&mut kept, "still there").await;
    assert_eq!(
        again.split_once(' ').unwrap().0,
        first.split_once(' ').unwrap().0
    );
    assert_eq!(again.split_once(' ').unwrap().1, "still there");
    // Removing it closes the port.
    apply_ok(
        &node,
        &json!({"routes": [{"name": "hello", "respond": {"body": "hi"}}]}),
    )
    .await;
    wait_until(Duration::from_secs(5), "the TCP listener to close", || {
        let bound = bound.clone();
        async move { TcpStream::connect(&bound).await.is_err().then_some(()) }
    })
    .await;
}

fn strata_cert(dir: &std::path::Path, args: &[&str]) {
    let output = run_with_deadline(
        std::process::Command::new(strata_bin())
            .arg("cert")
            .args(args)
            .arg("--dir")
            .arg(dir),
        b"",
        Duration::from_secs(30),
    );
    assert!(output.status.success(), "strata cert {args:?}: {output:?}");
}

/// Connects over TLS to `addr` naming `sni`, offering `alpn`; returns the stream, the
/// certificate served and the protocol agreed.
async fn tls_connect(
    ca: &std::path::Path,
    addr: &str,
    sni: &str,
    alpn: &[&[u8]],
) -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    Vec<u8>,
    Option<Vec<u8>>,
) {
    let config = strata_tls::client_config(Some(&ca.join("ca.pem")), None, alpn).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    let served = stream.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec();
    let agreed = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    (stream, served, agreed)
}

fn pem_der(path: &std::path::Path) -> Vec<u8> {
    strata_tls::read_certs(path).unwrap()[0].as_ref().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t09_tls_serves_a_certificate_per_sni_name_over_h2_and_http1_and_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    strata_cert(&pki, &["init"]);
    strata_cert(&pki, &["issue", "site-a", "--host", "a.test"]);
    strata_cert(&pki, &["issue", "site-b", "--host", "www.b.test"]);
    let backend = Backend::start("tls-backend").await;
    let file = |name: &str| pki.join(name).to_string_lossy().into_owned();
    apply_ok(
        &node,
        &json!({
            "routes": [{"name": "all", "upstream": "b"}],
            "upstreams": [{"name": "b", "addresses": [backend.addr]}],
            "certificates": [
                {"hosts": ["a.test"], "cert_file": file("site-a.pem"), "key_file": file("site-a-key.pem")},
                {"hosts": ["*.b.test"], "cert_file": file("site-b.pem"), "key_file": file("site-b-key.pem")}
            ]
        }),
    )
    .await;
    let tls_addr = node.gateway_tls.clone().unwrap();
    let (_, served, agreed) = tls_connect(
        &pki,
        &tls_addr,
        "a.test",
        &[b"h2".as_slice(), b"http/1.1".as_slice()],
    )
    .await;
    assert_eq!(served, pem_der(&pki.join("site-a.pem")));
    assert_eq!(agreed.as_deref(), Some(&b"h2"[..]));
    let (_, served, _) = tls_connect(&pki, &tls_addr, "www.b.test", &[b"h2".as_slice()]).await;
    assert_eq!(served, pem_der(&pki.join("site-b.pem")));

    // HTTP/2 over TLS, then HTTP/1.1 over TLS; the backend hears that the client used https.
    let (stream, _, _) = tls_connect(&pki, &tls_addr, "a.test", &[b"h2".as_slice()]).await;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get("https://a.test/over/h2")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    use http_body_util::BodyExt;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["path"], "/over/h2");
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");
    let (mut stream, _, agreed) =
        tls_connect(&pki, &tls_addr, "www.b.test", &[b"http/1.1".as_slice()]).await;
    assert_eq!(agreed.as_deref(), Some(&b"http/1.1"[..]));
    stream
        .write_all(b"GET /over/h1 HTTP/1.1\r\nhost: www.b.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("/over/h1") && answer.contains("https"),
        "{answer}"
    );

    // Rotation: new files under the same names are served without a restart.
    let before = pem_der(&pki.join("site-a.pem"));
    std::fs::remove_file(pki.join("site-a.pem")).unwrap();
    std::fs::remove_file(pki.join("site-a-key.pem")).unwrap();
    strata_cert(&pki, &["issue", "site-a", "--host", "a.test"]);
    let after = pem_der(&pki.join("site-a.pem"));
    assert_ne!(before, after);
    wait_until(
        Duration::from_secs(10),
        "the rotated certificate to be served",
        || {
            let (pki, tls_addr, after) = (pki.clone(), tls_addr.clone(), after.clone());
            async move {
                let (_, served, _) =
                    tls_connect(&pki, &tls_addr, "a.test", &[b"h2".as_slice()]).await;
                (served == after).then_some(())
            }
        },
    )
    .await;

    // A table naming a certificate that cannot be loaded is refused.
    let (status, reply) = apply(
        &node,
        &json!({"routes": [{"name": "all", "respond": {}}],
                "certificates": [{"hosts": ["c.test"], "cert_file": file("missing.pem"),
                                  "key_file": file("site-a-key.pem")}]}),
        false,
    )
    .await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("missing.pem"),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_static_files_with_range_etag_and_precompressed_variants() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let site = dir.path().join("site");
    std::fs::create_dir_all(site.join("docs")).unwrap();
    let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(site.join("app.js"), &text).unwrap();
    std::fs::write(site.join("app.js.gz"), b"pretend-gzip").unwrap();
    std::fs::write(site.join("docs/index.html"), "<h1>docs</h1>").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "secret").unwrap();
    apply_ok(
        &node,
        &json!({"routes": [
            {"name": "static", "path": {"prefix": "/static/"}, "strip_prefix": true,
             "files": {"dir": site}},
            {"name": "docs", "path": {"prefix": "/docs"}, "files": {"dir": site, "index": "index.html"}}
        ]}),
    )
    .await;
    let client = gateway_client();
    let gateway = node.gateway.clone().unwrap();
    let url = |path: &str| format!("http://{gateway}{path}");
    let full = client.get(url("/static/app.js")).send().await.unwrap();
    assert_eq!(full.status(), 200);
    assert_eq!(
        full.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(full.headers()["accept-ranges"], "bytes");
    let etag = full.headers()["etag"].to_str().unwrap().to_string();
    let modified = full.headers()["last-modified"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(full.text().await.unwrap(), text);
    // Conditional requests.
    let again = client
        .get(url("/static/app.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let again = client
        .get(url("/static/app.js"))
        .header("if-modified-since", &modified)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    // Ranges.
    let part = client
        .get(url("/static/app.js"))
        .header("range", "bytes=7-13")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 7-13/{}", text.len()).as_str()
    );
    assert_eq!(part.text().await.unwrap(), &text[7..14]);
    let tail = client
        .get(url("/static/app.js"))
        .header("range", "bytes=-8")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.text().await.unwrap(), &text[text.len() - 8..]);
    let beyond = client
        .get(url("/static/app.js"))
        .header("range", "bytes=999999-")
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), 416);
    // A precompressed variant for a client that takes gzip (reqwest here decodes nothing).
    let gz = client
        .get(url("/static/app.js"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    assert_eq!(gz.headers()["vary"], "Accept-Encoding");
    assert_ne!(gz.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(gz.text().await.unwrap(), "pretend-gzip");
    // Directories only with an index; nothing outside the folder; read-only methods.
    assert_eq!(
        client
            .get(url("/static/docs/"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let index = client.get(url("/docs/")).send().await.unwrap();
    assert_eq!(index.text().await.unwrap(), "<h1>docs</h1>");
    for escape in [
        "/static/../secret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/..%2fsecret.txt",
    ] {
        let answer = raw(
            &gateway,
            format!("GET {escape} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 404"),
            "{escape}: {answer:.100}"
        );
        assert!(!answer.contains("secret"), "{escape}: {answer}");
    }
    let post = client.post(url("/static/app.js")).send().await.unwrap();
    assert_eq!(post.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t11_cors_preflights_and_client_address_lists() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let backend = Backend::start("api").await;
    apply_ok(
        &node,
        &json!({
            "routes": [
                {"name": "api", "path": {"prefix": "/api"}, "methods": ["PUT"], "upstream": "b",
                 "cors": {"allow_origins": ["https://app.example"], "allow_methods": ["GET", "PUT"],
                          "expose_headers": ["x-total"], "allow_credentials": true, "max_age": "1h"}},
                {"name": "open", "path": {"prefix": "/open"}, "upstream": "b",
                 "cors": {"allow_origins": ["*"]}},
                {"name": "internal", "path": {"prefix": "/internal"}, "upstream": "b",
                 "allow_ips": ["10.0.0.0/8"]},
                {"name": "no-local", "path": {"prefix": "/public"}, "upstream": "b",
                 "deny_ips": ["127.0.0.0/8"]}
            ],
            "upstreams": [{"name": "b", "addresses": [backend.addr]}]
        }),
    )
    .await;
    let client = gateway_client();
    let gateway = node.gateway.clone().unwrap();
    let url = |path: &str| format!("http://{gateway}{path}");
    // A preflight for PUT is answered by the gateway, not forwarded.
    let preflight = client
        .request(reqwest::Method::OPTIONS, url("/api/items"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-methods"], "GET, PUT");
    assert_eq!(h["access-control-allow-headers"], "content-type");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "3600");
    let refused = client
        .request(reqwest::Method::OPTIONS, url("/api/items"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "PUT")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    // The actual request is forwarded and decorated.
    let put = client
        .put(url("/api/items"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    assert_eq!(
        put.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(put.headers()["access-control-expose-headers"], "x-total");
    assert_eq!(put.headers()["vary"], "Origin");
    let open = client
        .get(url("/open"))
        .header("origin", "https://anyone.example")
        .send()
        .await
        .unwrap();
    assert_eq!(open.headers()["access-control-allow-origin"], "*");
    // Address lists: the test connects from 127.0.0.1.
    assert_eq!(get(&client, &node, "/internal", &[]).await.0, 403);
    assert_eq!(get(&client, &node, "/public", &[]).await.0, 403);
    assert_eq!(get(&client, &node, "/open", &[]).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t12_the_access_log_writes_one_json_line_per_request_and_trusts_configured_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\naccess_log = {:?}\naccess_log_fields = [\"client\", \"method\", \"path\", \"status\", \"route\", \"member\", \"request_id\"]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
            log.to_string_lossy()
        ),
    )
    .unwrap();
    let node = start_configured(dir.path(), &config).await;
    let backend = Backend::start("logged").await;
    apply_when_ready(
        &node,
        &json!({"routes": [
            {"name": "api", "path": {"prefix": "/api"}, "upstream": "b"},
            {"name": "office", "path": {"prefix": "/office"}, "allow_ips": ["192.0.2.0/24"],
             "respond": {"body": "office"}}],
            "upstreams": [{"name": "b", "addresses": [backend.addr]}]}),
    )
    .await;
    let client = gateway_client();
    for i in 0..5 {
        let id = format!("req-{i}");
        assert_eq!(
            get(
                &client,
                &node,
                &format!("/api/{i}"),
                &[("x-request-id", &id)]
            )
            .await
            .0,
            200
        );
    }
    assert_eq!(get(&client, &node, "/nowhere", &[]).await.0, 404);
    // Behind a trusted proxy (127.0.0.1), the client is the address the proxy names.
    assert_eq!(
        get(
            &client,
            &node,
            "/office",
            &[("x-forwarded-for", "192.0.2.7")]
        )
        .await
        .0,
        200
    );
    assert_eq!(get(&client, &node, "/office", &[]).await.0, 403);
    let lines: Vec<Value> = wait_until(Duration::from_secs(10), "8 access log lines", || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).ok()?;
            let lines: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            (lines.len() >= 8).then_some(lines)
        }
    })
    .await;
    assert_eq!(lines.len(), 8, "{lines:?}");
    for (i, line) in lines[..5].iter().enumerate() {
        assert_eq!(line["path"], format!("/api/{i}"));
        assert_eq!(line["status"], 200);
        assert_eq!(line["route"], "api");
        assert_eq!(line["member"], backend.addr.as_str());
        assert_eq!(line["request_id"], format!("req-{i}"));
        assert_eq!(line["client"], "127.0.0.1");
        assert_eq!(
            line.as_object().unwrap().len(),
            7,
            "only the configured fields: {line}"
        );
    }
    assert_eq!(
        (lines[5]["status"].clone(), lines[5]["route"].clone()),
        (json!(404), json!(""))
    );
    assert_eq!(lines[6]["client"], "192.0.2.7");
    assert_eq!(lines[7]["status"], 403);
}

/// A backend that answers every request with `status` (keeping the connection open).
async fn status_backend(status: u16) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let reply =
                            format!("HTTP/1.1 {status} Oops\r\ncontent-length: 4\r\n\r\noops");
                        if stream.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t13_idempotent_requests_retry_a_502_to_504_answer_on_another_member() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let good = Backend::start("good").await;
    let bad = status_backend(503).await;
    apply_ok(
        &node,
        &json!({
            "routes": [{"name": "all", "upstream": "pair"},
                       {"name": "no-retry", "path": {"prefix": "/once"}, "upstream": "pair", "retries": 0}],
            "upstreams": [{"name": "pair", "addresses": [bad, good.addr]}]
        }),
    )
    .await;
    let client = gateway_client();
    for _ in 0..10 {
        let (status, _, body) = get(&client, &node, "/x", &[]).await;
        assert_eq!((status, body["name"].clone()), (200, json!("good")));
    }
    // Not retried: a POST, and a route with retries = 0.
    let gateway = node.gateway.clone().unwrap();
    let mut statuses = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let post = client
            .post(format!("http://{gateway}/x"))
            .send()
            .await
            .unwrap();
        statuses.insert(post.status().as_u16());
        statuses.insert(get(&client, &node, "/once", &[]).await.0);
    }
    assert_eq!(statuses, [200, 503].into_iter().collect());
}

/// A PROXY protocol v2 header for a TCP/IPv4 connection from `source`.
fn proxy_v2(source: [u8; 4], port: u16) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12]);
    header.extend_from_slice(&source);
    header.extend_from_slice(&[10, 0, 0, 1]);
    header.extend_from_slice(&port.to_be_bytes());
    header.extend_from_slice(&80u16.to_be_bytes());
    header
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t14_proxy_protocol_names_the_client_and_hosts_have_address_lists() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[gateway]\nproxy_protocol = true\n").unwrap();
    let node = start_configured(dir.path(), &config).await;
    let backend = Backend::start("behind").await;
    let echo = echo_server("echo").await;
    apply_when_ready(
        &node,
        &json!({
            "routes": [{"name": "all", "upstream": "b"}],
            "upstreams": [{"name": "b", "addresses": [backend.addr]},
                          {"name": "e", "addresses": [echo]}],
            "hosts": [{"hosts": ["locked.test"], "allow_ips": ["203.0.113.0/24"]},
                      {"hosts": ["*.test"], "deny_ips": ["192.0.2.0/24"]}],
            "tcp": [{"name": "proxied", "listen": "127.0.0.1:0", "upstream": "e",
                     "proxy_protocol": true}]
        }),
    )
    .await;
    let gateway = node.gateway.clone().unwrap();
    let request = |host: &str| {
        format!("GET /who HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
    };
    // v1: the header's source is the client: allowed on locked.test, and it is what the
    // backend hears in X-Forwarded-For.
    let mut v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\n".to_vec();
    v1.extend(request("locked.test"));
    let answer = raw(&gateway, &v1, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("\"x-forwarded-for\":\"203.0.113.7\""),
        "{answer}"
    );
    // v2 from another address: locked.test refuses it, another host serves it.
    let mut v2 = proxy_v2([198, 51, 100, 9], 4000);
    v2.extend(request("locked.test"));
    let answer = raw(&gateway, &v2, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let mut v2 = proxy_v2([198, 51, 100, 9], 4001);
    v2.extend(request("open.test"));
    let answer = raw(&gateway, &v2, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The wildcard rule denies its block; the exact rule is more specific for its host.
    let mut v2 = proxy_v2([192, 0, 2, 1], 4002);
    v2.extend(request("open.test"));
    let answer = raw(&gateway, &v2, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // Without a header the connection is closed unanswered; the listener keeps serving.
    let answer = raw(&gateway, &request("open.test"), Duration::from_secs(15)).await;
    assert_eq!(answer, "", "a request without a PROXY header is not served");
    let mut v1 = b"PROXY UNKNOWN\r\n".to_vec();
    v1.extend(request("open.test"));
    let answer = raw(&gateway, &v1, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A TCP listener that asks for the header relays after it, and closes without one.
    let listeners = wait_until(Duration::from_secs(10), "the tcp listener", || {
        let node = &node;
        async move {
            let list = tcp_listeners(node).await;
            list["tcp"][0]["bound"].as_str().map(str::to_string)
        }
    })
    .await;
    let mut stream = TcpStream::connect(&listeners).await.unwrap();
    stream
        .write_all(b"PROXY TCP4 203.0.113.8 10.0.0.1 5556 9000\r\n")
        .await
        .unwrap();
    assert_eq!(ask(&mut stream, "hello").await, "echo hello");
    let answer = raw(&listeners, b"hello\n", Duration::from_secs(15)).await;
    assert_eq!(answer, "");
    node.assert_no_panic();
}

/// A backend whose `/health` answers with the status in `health`; other paths answer 200
/// with its name.
async fn checked_backend(
    name: &'static str,
    health: std::sync::Arc<std::sync::atomic::AtomicU16>,
) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let router = Router::new()
        .route(
            "/health",
            any(move || {
                let health = health.clone();
                async move {
                    axum::http::StatusCode::from_u16(
                        health.load(std::sync::atomic::Ordering::Relaxed),
                    )
                    .unwrap()
                }
            }),
        )
        .fallback(any(
            move || async move { axum::Json(json!({"name": name})) },
        ));
    let token = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
            .unwrap();
    });
    (addr, stop)
}

async fn upstream_view(node: &NodeProc, name: &str) -> Value {
    http_client()
        .get(format!("{}/v1/gateway/upstreams/{name}", node.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Sends `n` GETs through the gateway, 8 at a time; counts the answers by backend name.
async fn spread(gateway: &str, n: usize) -> BTreeMap<String, usize> {
    let client = gateway_client();
    let url = format!("http://{gateway}/spread");
    let names = futures::future::join_all((0..8).map(|worker| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let mut names = Vec::new();
            for _ in (worker..n).step_by(8) {
                let response = client.get(&url).send().await.unwrap();
                assert_eq!(response.status(), 200);
                let body: Value = response.json().await.unwrap();
                names.push(body["name"].as_str().unwrap().to_string());
            }
            names
        }
    }))
    .await;
    let mut counts = BTreeMap::new();
    for name in names.into_iter().flatten() {
        *counts.entry(name).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t15_health_checks_take_members_out_and_back_and_joiners_warm_up() {
    use std::sync::atomic::{AtomicU16, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let (health_a, health_b) = (
        std::sync::Arc::new(AtomicU16::new(200)),
        std::sync::Arc::new(AtomicU16::new(200)),
    );
    let (a, _stop_a) = checked_backend("a", health_a.clone()).await;
    let (b, _stop_b) = checked_backend("b", health_b.clone()).await;
    let (c, _stop_c) = checked_backend("c", std::sync::Arc::new(AtomicU16::new(200))).await;
    apply_ok(
        &node,
        &json!({
            "routes": [{"name": "all", "upstream": "u"}],
            "upstreams": [{"name": "u", "addresses": [a, b],
                           "health_check": {"path": "/health", "interval": "100ms",
                                            "timeout": "1s", "healthy": 2, "unhealthy": 2}}]
        }),
    )
    .await;
    let gateway = node.gateway.clone().unwrap();
    // Waits until the checks find member `addr` of `u` in state `want`.
    let verdict = |addr: String, want: &'static str| {
        let node = &node;
        async move {
            wait_until(
                Duration::from_secs(10),
                &format!("{addr} {want}"),
                || async {
                    let view = upstream_view(node, "u").await;
                    let member = view["members"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|m| m["address"] == addr.as_str())
                        .cloned()
                        .unwrap();
                    (member["health"] == want).then_some(())
                },
            )
            .await
        }
    };
    // b fails its checks: it is taken out, and every request goes to a.
    health_b.store(503, Ordering::Relaxed);
    verdict(b.clone(), "failing").await;
    let counts = spread(&gateway, 200).await;
    assert_eq!(counts.get("a"), Some(&200), "{counts:?}");
    // Both failing: requests go to both again rather than nowhere.
    health_a.store(500, Ordering::Relaxed);
    verdict(a.clone(), "failing").await;
    let counts = spread(&gateway, 100).await;
    assert_eq!(counts.values().sum::<usize>(), 100, "{counts:?}");
    // b passes again: back in, and a stays out.
    health_b.store(200, Ordering::Relaxed);
    verdict(b.clone(), "passing").await;
    let counts = spread(&gateway, 100).await;
    assert_eq!(counts.get("b"), Some(&100), "{counts:?}");
    let metrics = http_client()
        .get(format!("{}/metrics", node.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let a_health = format!("strata_gateway_upstream_member_healthy{{member=\"{a}\",upstream=\"u\"");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(&a_health) && l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(
        metrics.contains("strata_gateway_upstream_connect_duration_seconds_count{upstream=\"u\"")
    );

    // Slow start: c joins a weighted group of one and starts at a tenth of a's share; a keeps
    // its pooled connections across the change.
    apply_ok(
        &node,
        &json!({
            "routes": [{"name": "all", "upstream": "w"}],
            "upstreams": [{"name": "w", "endpoints": [{"address": a, "weight": 1}],
                           "balance": "weighted", "slow_start": "1h"}]
        }),
    )
    .await;
    let counts = spread(&gateway, 100).await;
    assert_eq!(counts.get("a"), Some(&100), "{counts:?}");
    apply_ok(
        &node,
        &json!({
            "routes": [{"name": "all", "upstream": "w"}],
            "upstreams": [{"name": "w", "endpoints": [{"address": a, "weight": 1},
                                                      {"address": c, "weight": 1}],
                           "balance": "weighted", "slow_start": "1h"}]
        }),
    )
    .await;
    let view = upstream_view(&node, "w").await;
    let warmth: BTreeMap<String, u64> = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["address"].as_str().unwrap().to_string(),
                m["warmth_percent"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(warmth[&a], 100, "{view}");
    assert_eq!(warmth[&c], 10, "{view}");
    let counts = spread(&gateway, 1100).await;
    let to_c = counts.get("c").copied().unwrap_or(0);
    assert!(
        (50..=160).contains(&to_c),
        "c got {to_c} of 1100: {counts:?}"
    );
    let view = upstream_view(&node, "w").await;
    assert!(view["pool_reuse"].as_f64().unwrap() > 0.9, "{view}");
    assert!(
        view["members"][0]["requests"].as_u64().unwrap() >= 1000,
        "{view}"
    );
    node.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t16_a_standalone_gateway_runs_from_one_file_and_follows_its_changes() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("alone").await;
    let file = dir.path().join("gateway.toml");
    let table = |extra: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n[[routes]]\nname = \"api\"\npath = {{ prefix = \"/api\" }}\nupstream = \"b\"\n{extra}\n[[upstreams]]\nname = \"b\"\naddresses = [\"{}\"]\n",
            backend.addr
        )
    };
    std::fs::write(&file, table("")).unwrap();
    let addrs_file = dir.path().join("addrs.json");
    let log = dir.path().join("gateway.log");
    let mut child = KillOnDrop(
        strata_command()
            .args(["gateway", "--config"])
            .arg(&file)
            .arg("--addrs-file")
            .arg(&addrs_file)
            .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let addrs: BTreeMap<String, String> =
        wait_for_addrs(&mut child.0, &addrs_file, &[&log], Duration::from_secs(20)).await;
    let (gateway, admin) = (addrs["gateway"].clone(), addrs["admin"].clone());
    let client = gateway_client();
    let body: Value = client
        .get(format!("http://{gateway}/api/x"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["name"], "alone");
    let metrics = client
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("strata_gateway_requests_total{code=\"2xx\",route=\"api\"} 1"),
        "{metrics}"
    );
    let upstreams: Value = client
        .get(format!("http://{admin}/v1/gateway/upstreams"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        upstreams["upstreams"][0]["members"][0]["address"],
        backend.addr.as_str()
    );
    // The file changes: the new route serves within the poll interval; the old one still does.
    std::fs::write(
        &file,
        table("\n[[routes]]\nname = \"hello\"\npath = { exact = \"/hello\" }\nrespond = { body = \"hi\" }\n"),
    )
    .unwrap();
    wait_until(Duration::from_secs(15), "the changed file to apply", || {
        let (client, gateway) = (&client, &gateway);
        async move {
            let response = client
                .get(format!("http://{gateway}/hello"))
                .send()
                .await
                .ok()?;
            (response.status() == 200).then_some(())
        }
    })
    .await;
    assert_eq!(
        client
            .get(format!("http://{gateway}/api/y"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    send_sigterm(&child.0);
    let status = wait_exit(&mut child.0, Duration::from_secs(20)).expect("it exits on SIGTERM");
    assert!(status.success(), "{status:?}");

    // A registry group needs a node: refused at start with the reason.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[routes]]\nname = \"r\"\nupstream = \"s\"\n[[upstreams]]\nname = \"s\"\nservice = \"orders\"\n",
    )
    .unwrap();
    let output = run_with_deadline(
        strata_command().args(["gateway", "--config"]).arg(&bad),
        b"",
        Duration::from_secs(20),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("registry service"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t17_certificates_kept_in_the_config_center_serve_tls() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    strata_cert(&pki, &["init"]);
    strata_cert(&pki, &["issue", "inline", "--host", "inline.test"]);
    let backend = Backend::start("tls-inline").await;
    let read = |name: &str| std::fs::read_to_string(pki.join(name)).unwrap();
    apply_ok(
        &node,
        &json!({
            "routes": [{"name": "all", "upstream": "b"}],
            "upstreams": [{"name": "b", "addresses": [backend.addr]}],
            "certificates": [{"hosts": ["inline.test"], "cert_pem": read("inline.pem"),
                              "key_pem": read("inline-key.pem")}]
        }),
    )
    .await;
    let tls_addr = node.gateway_tls.clone().unwrap();
    let (_, served, _) = tls_connect(&pki, &tls_addr, "inline.test", &[b"h2".as_slice()]).await;
    assert_eq!(served, pem_der(&pki.join("inline.pem")));
    // A key that is not the certificate's is refused at publish, naming the problem.
    strata_cert(&pki, &["issue", "other", "--host", "other.test"]);
    let (status, reply) = apply(
        &node,
        &json!({
            "certificates": [{"hosts": ["inline.test"], "cert_pem": read("inline.pem"),
                              "key_pem": read("other-key.pem")}]
        }),
        false,
    )
    .await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply.to_string().contains("not the certificate's"),
        "{reply}"
    );
    let (_, served, _) = tls_connect(&pki, &tls_addr, "inline.test", &[b"h2".as_slice()]).await;
    assert_eq!(served, pem_der(&pki.join("inline.pem")));
}

/// The value of the first series of `/metrics` whose line starts with `prefix`.
async fn metric_value(node: &NodeProc, prefix: &str) -> Option<f64> {
    let text = http_client()
        .get(format!("{}/metrics", node.url()))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Sends `n` GETs of `path` through the gateway, 8 at a time; returns the statuses.
async fn statuses(gateway: &str, path: &str, n: usize) -> Vec<u16> {
    let client = gateway_client();
    let url = format!("http://{gateway}{path}");
    futures::future::join_all((0..8).map(|worker| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let mut seen = Vec::new();
            for _ in (worker..n).step_by(8) {
                seen.push(client.get(&url).send().await.unwrap().status().as_u16());
            }
            seen
        }
    }))
    .await
    .into_iter()
    .flatten()
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t18_a_failing_member_is_ejected_its_breaker_opens_and_closes_after_recovery() {
    use std::sync::atomic::{AtomicU16, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let status_c = std::sync::Arc::new(AtomicU16::new(200));
    let (a, _sa) = checked_backend("a", std::sync::Arc::new(AtomicU16::new(200))).await;
    let (b, _sb) = checked_backend("b", std::sync::Arc::new(AtomicU16::new(200))).await;
    let (c, _sc) = checked_backend("c", status_c.clone()).await;
    apply_ok(
        &node,
        &json!({
            "routes": [{"name": "all", "upstream": "u", "retries": 2}],
            "upstreams": [{"name": "u", "addresses": [a, b, c],
                "outlier_detection": {"consecutive_5xx": 3, "interval": "1s",
                                      "base_ejection_time": "2s", "max_ejection_percent": 50},
                "circuit_breaker": {"window_size": 10, "minimum_calls": 3, "wait_in_open": "1s",
                                    "half_open_calls": 2},
                "breaker_scope": "instance"}]
        }),
    )
    .await;
    let gateway = node.gateway.clone().unwrap();
    // c answers 503 under load: the client barely notices (retries on a and b, then c is
    // ejected and its breaker opens).
    status_c.store(503, Ordering::Relaxed);
    let seen = statuses(&gateway, "/health", 600).await;
    let failed = seen.iter().filter(|s| **s != 200).count();
    assert!(failed <= 30, "{failed} of 600 failed");
    let ejected = metric_value(
        &node,
        "strata_gateway_outlier_ejections_total{reason=\"consecutive_5xx\",upstream=\"u\"",
    )
    .await;
    assert!(ejected.is_some_and(|n| n >= 1.0), "{ejected:?}");
    let opened = format!(
        "strata_gateway_breaker_transitions_total{{from=\"closed\",member=\"{c}\",to=\"open\""
    );
    assert!(metric_value(&node, &opened).await.is_some_and(|n| n >= 1.0));
    let view = upstream_view(&node, "u").await;
    let member_c = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["address"] == c.as_str())
        .unwrap()
        .clone();
    assert_eq!(member_c["breaker"], "open", "{view}");
    assert!(
        view["retry_budget"]["spent"].as_u64().unwrap() >= 1,
        "{view}"
    );
    // c recovers: after its ejection and the breaker's wait, trial calls close the breaker.
    status_c.store(200, Ordering::Relaxed);
    let closed = format!(
        "strata_gateway_breaker_transitions_total{{from=\"half_open\",member=\"{c}\",to=\"closed\""
    );
    wait_until(Duration::from_secs(20), "c's breaker to close", || {
        let (node, gateway, closed) = (&node, &gateway, &closed);
        async move {
            let seen = statuses(gateway, "/health", 24).await;
            assert!(seen.iter().all(|s| *s == 200), "{seen:?}");
            metric_value(node, closed).await.filter(|n| *n >= 1.0)
        }
    })
    .await;
    let state =
        format!("strata_gateway_breaker_state{{member=\"{c}\",state=\"closed\",upstream=\"u\"");
    assert_eq!(metric_value(&node, &state).await, Some(1.0));
    node.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t19_slow_calls_open_a_group_breaker_and_the_fallback_answers() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let backend = Backend::start("slowpoke").await;
    apply_ok(
        &node,
        &json!({
            "routes": [{"name": "all", "upstream": "u", "timeout": "300ms", "retries": 0,
                        "fallback": {"respond": {"status": 200, "body": "from the fallback"}}}],
            "upstreams": [{"name": "u", "addresses": [backend.addr],
                "circuit_breaker": {"window_size": 4, "minimum_calls": 4,
                                    "slow_call_duration": "100ms", "slow_call_rate_threshold": 50,
                                    "wait_in_open": "1h"},
                "failure_on": ["connect"]}]
        }),
    )
    .await;
    let gateway = node.gateway.clone().unwrap();
    let client = gateway_client();
    let url = |path: &str| format!("http://{gateway}{path}");
    // Two fast calls and two that hang until the route's timeout: half are slow.
    for path in ["/fast", "/fast", "/slow", "/slow"] {
        let response = client.get(url(path)).send().await.unwrap();
        assert_ne!(response.text().await.unwrap(), "from the fallback");
    }
    let response = client.get(url("/fast")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "from the fallback");
    let view = upstream_view(&node, "u").await;
    assert_eq!(view["breaker"]["state"], "open", "{view}");
    assert_eq!(view["breaker"]["slow_call_rate"], 50.0, "{view}");
    let rejected = metric_value(
        &node,
        "strata_gateway_breaker_rejected_total{upstream=\"u\"",
    )
    .await;
    assert_eq!(rejected, Some(1.0));
    // Without a fallback the route answers 503 with Retry-After.
    apply_ok(
        &node,
        &json!({
            "routes": [{"name": "all", "upstream": "u", "timeout": "300ms", "retries": 0}],
            "upstreams": [{"name": "u", "addresses": [backend.addr],
                "circuit_breaker": {"window_size": 4, "minimum_calls": 4,
                                    "slow_call_duration": "100ms", "slow_call_rate_threshold": 50,
                                    "wait_in_open": "1h"},
                "failure_on": ["connect"], "max_concurrent": 1}]
        }),
    )
    .await;
    for path in ["/slow", "/slow", "/slow", "/slow"] {
        client.get(url(path)).send().await.unwrap();
    }
    let response = client.get(url("/fast")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(
        response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 3000
    );
    // A route may count failures its own way: here timeouts, which the upstream ignores.
    apply_ok(
        &node,
        &json!({
            "routes": [{"name": "all", "upstream": "u", "timeout": "200ms", "retries": 0,
                        "failure_on": ["timeout"]}],
            "upstreams": [{"name": "u", "addresses": [backend.addr],
                "circuit_breaker": {"window_size": 2, "minimum_calls": 2, "wait_in_open": "1h"},
                "failure_on": ["connect"]}]
        }),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(client.get(url("/slow")).send().await.unwrap().status(), 504);
    }
    assert_eq!(client.get(url("/fast")).send().await.unwrap().status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_rate_limits_per_key_answer_429_and_concurrency_limits_503() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let backend = Backend::start("limited").await;
    apply_ok(
        &node,
        &json!({
            "routes": [
                {"name": "keyed", "path": {"prefix": "/api"}, "upstream": "u",
                 "rate_limits": [{"requests": 5, "per": "2s", "key": "header:x-api-key"}]},
                {"name": "narrow", "path": {"prefix": "/slow"}, "upstream": "u",
                 "max_concurrent": 1, "timeout": "2s"}
            ],
            "upstreams": [{"name": "u", "addresses": [backend.addr]}]
        }),
    )
    .await;
    let gateway = node.gateway.clone().unwrap();
    let client = gateway_client();
    let send = |key: &'static str| {
        let (client, gateway) = (client.clone(), gateway.clone());
        async move {
            client
                .get(format!("http://{gateway}/api/x"))
                .header("x-api-key", key)
                .send()
                .await
                .unwrap()
        }
    };
    for remaining in (0..5).rev() {
        let response = send("alice").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["ratelimit-limit"], "5");
        assert_eq!(
            response.headers()["ratelimit-remaining"],
            remaining.to_string().as_str()
        );
    }
    let refused = send("alice").await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(refused.headers()["ratelimit-remaining"], "0");
    // Another key has its own allowance.
    assert_eq!(send("bob").await.status(), 200);
    // Alice's allowance comes back with time.
    wait_until(Duration::from_secs(5), "alice's next request", || async {
        (send("alice").await.status() == 200).then_some(())
    })
    .await;
    assert!(
        metric_value(&node, "strata_gateway_rate_limited_total{route=\"keyed\"")
            .await
            .is_some_and(|n| n >= 1.0)
    );
    // One request of /slow at a time: a second one in the meantime gets 503 at once.
    let first = tokio::spawn({
        let (client, gateway) = (client.clone(), gateway.clone());
        async move {
            client
                .get(format!("http://{gateway}/slow"))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    wait_until(
        Duration::from_secs(5),
        "the first request to be in flight",
        || async {
            let view = upstream_view(&node, "u").await;
            (view["members"][0]["in_flight"] == 1).then_some(())
        },
    )
    .await;
    let second = client
        .get(format!("http://{gateway}/slow"))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 503);
    assert_eq!(first.await.unwrap(), 504);
}

/// A backend that answers every request with its name after `delay`.
async fn delayed_backend(name: &'static str, delay: Duration) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let router = Router::new().fallback(any(move || async move {
        tokio::time::sleep(delay).await;
        axum::Json(json!({"name": name}))
    }));
    let token = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
            .unwrap();
    });
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t21_a_hedged_request_takes_the_first_answer() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let (slow, _s) = delayed_backend("slow", Duration::from_secs(3)).await;
    let (fast, _f) = delayed_backend("fast", Duration::ZERO).await;
    apply_ok(
        &node,
        &json!({
            "routes": [{"name": "all", "upstream": "u", "hedge_after": "50ms", "timeout": "10s"}],
            "upstreams": [{"name": "u", "addresses": [slow, fast]}]
        }),
    )
    .await;
    let gateway = node.gateway.clone().unwrap();
    let client = gateway_client();
    for _ in 0..6 {
        let started = Instant::now();
        let body: Value = client
            .get(format!("http://{gateway}/x"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["name"], "fast");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    let hedged = metric_value(&node, "strata_gateway_hedged_requests_total{upstream=\"u\"").await;
    // At least every other first attempt lands on the slow member (the hedge takes the next
    // turn of round robin, so it may be every one).
    assert!(
        hedged.is_some_and(|n| (3.0..=6.0).contains(&n)),
        "{hedged:?}"
    );
    // A POST is not hedged: it waits for the slow member when it lands there.
    let answers = futures::future::join_all(
        (0..2).map(|_| client.post(format!("http://{gateway}/x")).send()),
    )
    .await;
    let mut names = Vec::new();
    for answer in answers {
        let body: Value = answer.unwrap().json().await.unwrap();
        names.push(body["name"].as_str().unwrap().to_string());
    }
    names.sort();
    assert_eq!(names, ["fast", "slow"]);
}

/// Sends GETs to `gateways` in turn from 12 workers for `period`; counts the 200s and 429s.
async fn load_for(gateways: &[String], period: Duration) -> (usize, usize) {
    let client = gateway_client();
    let deadline = Instant::now() + period;
    let results = futures::future::join_all((0..12).map(|worker| {
        let client = client.clone();
        let gateways = gateways.to_vec();
        async move {
            let (mut ok, mut limited) = (0, 0);
            let mut turn = worker;
            while Instant::now() < deadline {
                let gateway = &gateways[turn % gateways.len()];
                turn += 1;
                match client.get(format!("http://{gateway}/x")).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) if r.status() == 429 => limited += 1,
                    _ => {}
                }
            }
            (ok, limited)
        }
    }))
    .await;
    results
        .into_iter()
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t22_a_cluster_wide_limit_holds_while_a_gateway_node_leaves_and_rejoins() {
    let mut cluster = Cluster::start(3, &["--listen", "gateway=127.0.0.1:0"]).await;
    let backend = Backend::start("shared").await;
    let (status, reply) = apply(
        &cluster.nodes[0],
        &json!({
            "routes": [{"name": "all", "upstream": "u",
                        "rate_limits": [{"requests": 60, "per": "1s", "cluster": true}]}],
            "upstreams": [{"name": "u", "addresses": [backend.addr]}]
        }),
        true,
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let gateways: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.gateway.clone().unwrap())
        .collect();
    for gateway in &gateways {
        wait_until(
            Duration::from_secs(20),
            "every gateway to serve the route",
            || async {
                let response = gateway_client()
                    .get(format!("http://{gateway}/x"))
                    .send()
                    .await
                    .ok()?;
                matches!(response.status().as_u16(), 200 | 429).then_some(())
            },
        )
        .await;
    }
    // Overload from three nodes: bursts are spent and shares settle, then 4 s are counted.
    load_for(&gateways, Duration::from_secs(3)).await;
    let (ok, limited) = load_for(&gateways, Duration::from_secs(4)).await;
    eprintln!("three nodes: {ok} allowed, {limited} refused in 4 s");
    assert!(limited > 0, "the load must exceed the limit");
    assert!(
        (216..=264).contains(&ok),
        "{ok} allowed in 4 s by three nodes (limit 60/s)"
    );
    // Node 3 leaves; the clients keep using the two others.
    cluster.node(3).kill9();
    let two = &gateways[..2];
    load_for(two, Duration::from_secs(3)).await;
    let (ok, limited) = load_for(two, Duration::from_secs(4)).await;
    eprintln!("two nodes: {ok} allowed, {limited} refused in 4 s");
    assert!(
        (216..=264).contains(&ok),
        "{ok} allowed in 4 s by two nodes (limit 60/s)"
    );
    // Node 3 comes back and takes its share again.
    cluster.node(3).restart().await;
    let third = cluster.nodes[2].gateway.clone().unwrap();
    wait_until(
        Duration::from_secs(20),
        "node 3's gateway to serve again",
        || async {
            let response = gateway_client()
                .get(format!("http://{third}/x"))
                .send()
                .await
                .ok()?;
            matches!(response.status().as_u16(), 200 | 429).then_some(())
        },
    )
    .await;
    let three = vec![gateways[0].clone(), gateways[1].clone(), third];
    load_for(&three, Duration::from_secs(3)).await;
    let (ok, limited) = load_for(&three, Duration::from_secs(4)).await;
    eprintln!("three nodes again: {ok} allowed, {limited} refused in 4 s");
    assert!(
        (216..=264).contains(&ok),
        "{ok} allowed in 4 s after node 3 rejoined"
    );
}

/// A P-256 signing key: its `kid`, the JWK of its public half, and a way to sign.
struct EcKey {
    kid: String,
    jwk: Value,
    pkcs8: Vec<u8>,
}

impl EcKey {
    fn new(kid: &str) -> EcKey {
        use base64::Engine;
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng)
            .unwrap()
            .as_ref()
            .to_vec();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, &pkcs8, &rng).unwrap();
        // Uncompressed point: 0x04, X (32 bytes), Y (32 bytes).
        let point = pair.public_key().as_ref();
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        EcKey {
            kid: kid.to_string(),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                        "x": b64(&point[1..33]), "y": b64(&point[33..65])}),
            pkcs8,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(
            &header,
            claims,
            &jsonwebtoken::EncodingKey::from_ec_der(&self.pkcs8),
        )
        .unwrap()
    }
}

/// Serves `keys` as a JWKS document; returns its URL and the shared key list.
async fn jwks_server(keys: Vec<Value>) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    let shared = std::sync::Arc::new(std::sync::Mutex::new(keys));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let served = shared.clone();
    let router = Router::new().route(
        "/jwks.json",
        any(move || {
            let served = served.clone();
            async move { axum::Json(json!({"keys": *served.lock().unwrap()})) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, shared)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t23_jwt_from_a_jwks_url_is_checked_and_follows_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let backend = Backend::start("secured").await;
    let first = EcKey::new("k1");
    let (jwks_url, served) = jwks_server(vec![first.jwk.clone()]).await;
    apply_ok(
        &node,
        &json!({
            "jwt_providers": [{"name": "idp", "jwks_url": jwks_url, "issuer": "https://idp.test",
                               "audiences": ["orders"]}],
            "routes": [
                {"name": "orders", "path": {"prefix": "/orders"}, "upstream": "u",
                 "auth": {"methods": ["jwt"], "jwt_provider": "idp", "scopes": ["orders:read"],
                          "claims_to_headers": {"x-tenant": "tenant"}}},
                {"name": "admin", "path": {"prefix": "/admin"}, "upstream": "u",
                 "auth": {"methods": ["jwt"], "jwt_provider": "idp", "roles": ["admin"]}}
            ],
            "upstreams": [{"name": "u", "addresses": [backend.addr]}]
        }),
    )
    .await;
    let gateway = node.gateway.clone().unwrap();
    let client = gateway_client();
    let claims = |exp: u64, aud: &str| {
        json!({"sub": "ann", "iss": "https://idp.test", "aud": aud, "exp": exp,
               "scope": "orders:read profile", "tenant": "acme", "roles": ["user"]})
    };
    let call = |path: &'static str, token: Option<String>| {
        let (client, gateway) = (client.clone(), gateway.clone());
        async move {
            let mut request = client
                .get(format!("http://{gateway}{path}"))
                .header("x-consumer", "forged");
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request.send().await.unwrap()
        }
    };
    let good = first.sign(&claims(unix_now() + 600, "orders"));
    // The JWKS is fetched in the background: the first requests may find no key yet.
    let response = wait_until(Duration::from_secs(10), "the JWKS to load", || async {
        let response = call("/orders/1", Some(good.clone())).await;
        (response.status() == 200).then_some(response)
    })
    .await;
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["headers"]["x-consumer"], "ann", "{seen}");
    assert_eq!(seen["headers"]["x-tenant"], "acme", "{seen}");
    assert!(seen["headers"].get("authorization").is_some());
    // No token, expired, wrong audience: 401 with a challenge.
    let none = call("/orders/1", None).await;
    assert_eq!(none.status(), 401);
    assert!(none.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let expired = call(
        "/orders/1",
        Some(first.sign(&claims(unix_now() - 3600, "orders"))),
    )
    .await;
    assert_eq!(expired.status(), 401);
    assert!(expired.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("token expired"));
    let audience = call(
        "/orders/1",
        Some(first.sign(&claims(unix_now() + 600, "billing"))),
    )
    .await;
    assert_eq!(audience.status(), 401);
    // Valid, but without the role the admin route asks for: 403.
    assert_eq!(call("/admin/x", Some(good.clone())).await.status(), 403);
    // A key the JWKS does not have: 401.
    let stranger = EcKey::new("k2");
    let rotated = stranger.sign(&claims(unix_now() + 600, "orders"));
    assert_eq!(call("/orders/1", Some(rotated.clone())).await.status(), 401);
    // The issuer rotates to k2: the unknown key id makes the gateway fetch the JWKS again.
    served.lock().unwrap().push(stranger.jwk.clone());
    wait_until(
        Duration::from_secs(10),
        "the rotated key to be accepted",
        || async { (call("/orders/1", Some(rotated.clone())).await.status() == 200).then_some(()) },
    )
    .await;
    assert_eq!(call("/orders/1", Some(good)).await.status(), 200);
    let refused = metric_value(
        &node,
        "strata_gateway_auth_refused_total{kind=\"unauthenticated\",route=\"orders\"",
    )
    .await;
    assert!(refused.is_some_and(|n| n >= 4.0), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t24_api_keys_take_effect_and_are_revoked_on_every_node_within_a_second() {
    let cluster = Cluster::start(3, &["--listen", "gateway=127.0.0.1:0"]).await;
    let backend = Backend::start("keyed").await;
    let (status, reply) = apply(
        &cluster.nodes[0],
        &json!({
            "routes": [{"name": "api", "upstream": "u",
                        "auth": {"methods": ["api_key"], "scopes": ["read"]},
                        "rate_limits": [{"requests": 2, "per": "1m", "key": "consumer"}]}],
            "upstreams": [{"name": "u", "addresses": [backend.addr]}]
        }),
        true,
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let endpoints = cluster.endpoints();
    let create = |consumer: &str, scope: &str| {
        let output = cli(
            &endpoints,
            &[
                "gateway",
                "keys",
                "create",
                "--consumer",
                consumer,
                "--scope",
                scope,
            ],
        );
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    let key = create("shop", "read");
    let weak = create("intern", "write");
    assert!(key.starts_with("sgk_"), "{key}");
    let client = gateway_client();
    let call = |gateway: String, key: String| {
        let client = client.clone();
        async move {
            client
                .get(format!("http://{gateway}/x"))
                .header("x-api-key", key)
                .send()
                .await
                .unwrap()
        }
    };
    // Every node accepts the new key within a second of its creation.
    let created = Instant::now();
    for node in &cluster.nodes {
        let gateway = node.gateway.clone().unwrap();
        wait_until(Duration::from_secs(5), "the key on every node", || {
            let (gateway, key) = (gateway.clone(), key.clone());
            let call = &call;
            async move { (call(gateway, key).await.status() == 200).then_some(()) }
        })
        .await;
    }
    assert!(
        created.elapsed() < Duration::from_secs(2),
        "{:?}",
        created.elapsed()
    );
    let gateway = cluster.nodes[1].gateway.clone().unwrap();
    let answer: Value = call(gateway.clone(), key.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["headers"]["x-consumer"], "shop");
    // The rate limit counts per consumer: two a minute on this node.
    assert_eq!(call(gateway.clone(), key.clone()).await.status(), 429);
    // A key without the scope: 403; a made-up key: 401.
    wait_until(Duration::from_secs(5), "the second key", || async {
        (call(gateway.clone(), weak.clone()).await.status() == 403).then_some(())
    })
    .await;
    let forged = format!("sgk_{}_{}", "0".repeat(16), "0".repeat(64));
    assert_eq!(call(gateway.clone(), forged).await.status(), 401);
    // The list shows both keys, without secrets; revoking one takes it away everywhere.
    let list = cli(&endpoints, &["--output", "json", "gateway", "keys", "list"]);
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list["keys"].as_array().unwrap().len(), 2, "{list}");
    assert!(
        !list.to_string().contains(&key[20..]),
        "no secret in the list"
    );
    let id = &key[4..20];
    let revoked = cli(&endpoints, &["gateway", "keys", "revoke", id]);
    assert!(revoked.status.success(), "{revoked:?}");
    let revoked_at = Instant::now();
    for node in &cluster.nodes {
        let gateway = node.gateway.clone().unwrap();
        wait_until(
            Duration::from_secs(5),
            "the key refused on every node",
            || {
                let (gateway, key) = (gateway.clone(), key.clone());
                let call = &call;
                async move { (call(gateway, key).await.status() == 401).then_some(()) }
            },
        )
        .await;
    }
    assert!(
        revoked_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        revoked_at.elapsed()
    );
}

/// What the test issuer remembers of a code: the PKCE challenge, the nonce, the redirect URI.
type Grant = (String, String, String);

/// A small OpenID Connect issuer: discovery, an authorize endpoint that logs "ann" in at once,
/// a token endpoint that checks the PKCE verifier, and its JWKS.
async fn oidc_issuer() -> String {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let key = Arc::new(EcKey::new("issuer-key"));
    let codes: Arc<Mutex<HashMap<String, Grant>>> = Default::default();
    let discovery = json!({
        "issuer": base, "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"), "jwks_uri": format!("{base}/jwks"),
        "end_session_endpoint": format!("{base}/logout")
    });
    let params = |query: &str| -> HashMap<String, String> {
        query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| {
                let v = v.replace('+', " ");
                let mut out = Vec::new();
                let b = v.as_bytes();
                let mut i = 0;
                while i < b.len() {
                    if b[i] == b'%' && i + 2 < b.len() {
                        out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap());
                        i += 3;
                    } else {
                        out.push(b[i]);
                        i += 1;
                    }
                }
                (k.to_string(), String::from_utf8(out).unwrap())
            })
            .collect()
    };
    let router = Router::new()
        .route(
            "/.well-known/openid-configuration",
            any(move || {
                let d = discovery.clone();
                async move { axum::Json(d) }
            }),
        )
        .route(
            "/jwks",
            any({
                let key = key.clone();
                move || {
                    let jwk = key.jwk.clone();
                    async move { axum::Json(json!({"keys": [jwk]})) }
                }
            }),
        )
        .route(
            "/authorize",
            any({
                let codes = codes.clone();
                move |request: Request| {
                    let codes = codes.clone();
                    async move {
                        let p = params(request.uri().query().unwrap_or_default());
                        assert_eq!(p["response_type"], "code");
                        assert_eq!(p["code_challenge_method"], "S256");
                        let code = format!("code-{}", codes.lock().unwrap().len());
                        codes.lock().unwrap().insert(
                            code.clone(),
                            (
                                p["code_challenge"].clone(),
                                p["nonce"].clone(),
                                p["redirect_uri"].clone(),
                            ),
                        );
                        let location =
                            format!("{}?code={code}&state={}", p["redirect_uri"], p["state"]);
                        (
                            axum::http::StatusCode::FOUND,
                            [(axum::http::header::LOCATION, location)],
                        )
                    }
                }
            }),
        )
        .route(
            "/token",
            any({
                let (codes, key, base) = (codes.clone(), key.clone(), base.clone());
                move |body: String| {
                    let (codes, key, base) = (codes.clone(), key.clone(), base.clone());
                    async move {
                        use base64::Engine;
                        let p = params(&body);
                        let Some((challenge, nonce, redirect_uri)) =
                            codes.lock().unwrap().remove(&p["code"])
                        else {
                            return (
                                axum::http::StatusCode::BAD_REQUEST,
                                axum::Json(json!({"error": "invalid_grant"})),
                            );
                        };
                        let digest = ring::digest::digest(
                            &ring::digest::SHA256,
                            p["code_verifier"].as_bytes(),
                        );
                        let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD
                            .encode(digest.as_ref());
                        if expected != challenge
                            || redirect_uri != p["redirect_uri"]
                            || p["client_id"] != "shop-ui"
                        {
                            return (
                                axum::http::StatusCode::BAD_REQUEST,
                                axum::Json(json!({"error": "invalid_grant"})),
                            );
                        }
                        let id_token = key
                            .sign(&json!({"iss": base, "aud": "shop-ui", "sub": "ann",
                            "nonce": nonce, "exp": unix_now() + 600, "roles": ["buyer"]}));
                        (
                            axum::http::StatusCode::OK,
                            axum::Json(json!({"id_token": id_token, "token_type": "Bearer"})),
                        )
                    }
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    base
}

/// The `name=value` of a response's `Set-Cookie` for `name`.
fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().to_string())
        .find(|c| c.starts_with(&format!("{name}=")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t25_single_sign_on_logs_a_browser_in_with_pkce_and_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let backend = Backend::start("app").await;
    let issuer = oidc_issuer().await;
    apply_ok(
        &node,
        &json!({
            "oidc_providers": [{"name": "sso", "issuer": issuer, "client_id": "shop-ui",
                                "cookie_secret": "0123456789abcdef0123456789abcdef-secret",
                                "scopes": ["openid", "profile"]}],
            "routes": [
                {"name": "app", "path": {"prefix": "/app"}, "upstream": "u",
                 "auth": {"methods": ["oidc"], "oidc_provider": "sso", "roles": ["buyer"]}},
                {"name": "basic", "path": {"prefix": "/basic"}, "upstream": "u",
                 "auth": {"methods": ["basic"]}}
            ],
            "upstreams": [{"name": "u", "addresses": [backend.addr]}]
        }),
    )
    .await;
    let gateway = node.gateway.clone().unwrap();
    let browser = gateway_client();
    let get = |url: String, cookie: Option<String>| {
        let browser = browser.clone();
        async move {
            let mut request = browser.get(url);
            if let Some(cookie) = cookie {
                request = request.header("cookie", cookie);
            }
            request.send().await.unwrap()
        }
    };
    // No session: sent to the issuer's login page, with a login cookie.
    let first = wait_until(Duration::from_secs(10), "discovery to load", || async {
        let response = get(format!("http://{gateway}/app/orders?page=2"), None).await;
        (response.status() == 302).then_some(response)
    })
    .await;
    let login_cookie = set_cookie(&first, "strata_oidc_login").expect("a login cookie");
    let to_issuer = first.headers()["location"].to_str().unwrap().to_string();
    assert!(
        to_issuer.starts_with(&format!("{issuer}/authorize?")),
        "{to_issuer}"
    );
    assert!(
        to_issuer.contains("code_challenge_method=S256"),
        "{to_issuer}"
    );
    // The issuer logs the user in and sends the browser back with a code.
    let back = get(to_issuer, None).await;
    assert_eq!(back.status(), 302);
    let callback = back.headers()["location"].to_str().unwrap().to_string();
    assert!(
        callback.starts_with(&format!("http://{gateway}/_strata/oidc/callback?")),
        "{callback}"
    );
    // Without the login cookie the callback is refused; with it, a session starts.
    assert_eq!(get(callback.clone(), None).await.status(), 401);
    let done = get(callback.clone(), Some(login_cookie.clone())).await;
    assert_eq!(done.status(), 302, "{:?}", done.text().await);
    let session = set_cookie(&done, "strata_session").expect("a session cookie");
    assert_eq!(done.headers()["location"], "/app/orders?page=2");
    // The code cannot be used twice.
    assert_eq!(get(callback, Some(login_cookie)).await.status(), 401);
    // With the session the app answers, and the upstream learns who it is.
    let app = get(
        format!("http://{gateway}/app/orders"),
        Some(session.clone()),
    )
    .await;
    assert_eq!(app.status(), 200);
    let seen: Value = app.json().await.unwrap();
    assert_eq!(seen["headers"]["x-consumer"], "ann");
    // A tampered session is no session.
    let tampered = format!("{}x", session);
    assert_eq!(
        get(format!("http://{gateway}/app/orders"), Some(tampered))
            .await
            .status(),
        302
    );
    // Logout clears the cookie and goes to the issuer's end-session page.
    let out = get(
        format!("http://{gateway}/_strata/oidc/logout"),
        Some(session),
    )
    .await;
    assert_eq!(out.status(), 302);
    assert!(out.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with(&format!("{issuer}/logout")));
    assert_eq!(
        set_cookie(&out, "strata_session").as_deref(),
        Some("strata_session=")
    );

    // HTTP basic: the user is a consumer, the password one of its API keys.
    let created = http_client()
        .post(format!("{}/v1/gateway/keys", node.url()))
        .json(&json!({"consumer": "robot"}))
        .send()
        .await
        .unwrap();
    let key: Value = created.json().await.unwrap();
    let key = key["key"].as_str().unwrap().to_string();
    let basic = |user: &str, password: &str| {
        browser
            .get(format!("http://{gateway}/basic/x"))
            .basic_auth(user, Some(password))
            .send()
    };
    wait_until(
        Duration::from_secs(5),
        "basic credentials to work",
        || async { (basic("robot", &key).await.unwrap().status() == 200).then_some(()) },
    )
    .await;
    let wrong_user = basic("someone", &key).await.unwrap();
    assert_eq!(wrong_user.status(), 401);
    assert!(wrong_user.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t26_an_answer_whose_bytes_stop_is_cut_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    // A backend that sends its headers and three of the hundred bytes it announces, then waits.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stalling = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc")
                    .await;
                std::future::pending::<()>().await;
            });
        }
    });
    apply_ok(
        &node,
        &json!({
            "routes": [{"name": "all", "upstream": "u", "idle_timeout": "300ms"}],
            "upstreams": [{"name": "u", "addresses": [stalling]}]
        }),
    )
    .await;
    let gateway = node.gateway.clone().unwrap();
    let started = Instant::now();
    let response = gateway_client()
        .get(format!("http://{gateway}/download"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.bytes().await.is_err(),
        "the body must not complete"
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "cut after {took:?}");
}

/// Reads an answer's head, a byte at a time (nothing after it is consumed); at most 10 s.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut byte))
            .await
            .expect("an answer within 10 s")
            .expect("the connection stays open until the answer");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads one HTTP/1.1 answer (head and a `content-length` body) from `stream`: its status
/// line, its head and its body.
async fn read_answer(stream: &mut TcpStream) -> (String, String, Vec<u8>) {
    let head = read_head(stream).await;
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, head, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t27_one_connection_carries_pipelined_requests_bodies_head_and_http_1_0() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let backend = Backend::start("b").await;
    apply_ok(
        &node,
        &json!({
            "routes": [{"name": "all", "path": {"prefix": "/"}, "upstream": "b"}],
            "upstreams": [{"name": "b", "addresses": [backend.addr]}]
        }),
    )
    .await;
    let gateway = node.gateway.clone().unwrap();
    let mut stream = TcpStream::connect(&gateway).await.unwrap();
    // Three requests in one write: each is answered, in order, on the same connection.
    stream
        .write_all(
            b"GET /one HTTP/1.1\r\nhost: x\r\n\r\n\
              POST /two HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
              HEAD /three HTTP/1.1\r\nhost: x\r\n\r\n",
        )
        .await
        .unwrap();
    let (status, _, body) = read_answer(&mut stream).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (body["path"].as_str(), body["body_bytes"].as_u64()),
        (Some("/one"), Some(0))
    );
    let (status, _, body) = read_answer(&mut stream).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (body["path"].as_str(), body["body_bytes"].as_u64()),
        (Some("/two"), Some(5))
    );
    // HEAD: the head says how long the body would be, and no body follows.
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-request-id:"),
        "{head}"
    );
    // A body the client holds back until told to go on.
    stream
        .write_all(
            b"PUT /four HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let (status, _, _) = read_answer(&mut stream).await;
    assert_eq!(status, "HTTP/1.1 100 Continue");
    stream.write_all(b"abc").await.unwrap();
    let (status, _, body) = read_answer(&mut stream).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["body_bytes"], 3, "{body}");
    // A later head that stops halfway is cut off like a first one (the idle allowance between
    // requests does not stretch a head once it has started).
    let mut stalled = TcpStream::connect(&gateway).await.unwrap();
    stalled
        .write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, _, _) = read_answer(&mut stalled).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    stalled.write_all(b"GET /b HTTP/1.1\r\nho").await.unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(30), stalled.read_to_end(&mut rest)).await;
    assert!(
        cut.is_ok() && started.elapsed() < Duration::from_secs(20),
        "a stalled second head was not cut off: {:?}",
        started.elapsed()
    );
    // `Connection: close`: answered, then closed.
    stream
        .write_all(b"GET /five HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (status, head, _) = read_answer(&mut stream).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the gateway closes the connection");
    assert_eq!((read.unwrap(), rest.len()), (0, 0));
    // HTTP/1.0 with keep-alive: the answer says the connection stays, and it does.
    let mut old = TcpStream::connect(&gateway).await.unwrap();
    for path in ["/k1", "/k2"] {
        old.write_all(
            format!("GET {path} HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let (status, head, body) = read_answer(&mut old).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            head.to_ascii_lowercase().contains("connection: keep-alive"),
            "{head}"
        );
        assert!(String::from_utf8_lossy(&body).contains(path), "{head}");
    }
    // HTTP/1.0 without keep-alive: answered and closed too.
    let answer = raw(
        &gateway,
        b"GET /six HTTP/1.0\r\nhost: x\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:.200}");
    assert!(answer.contains("\"/six\""), "{answer:.400}");
    node.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t28_an_answer_framed_two_ways_reaches_the_client_framed_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    // A member that frames its answers both ways: in chunks, and with a wrong Content-Length.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let member = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = vec![0u8; 4096];
                loop {
                    let n = match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let body = "x".repeat(100);
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                            body.len()
                        );
                        if socket.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    apply_ok(
        &node,
        &json!({
            "routes": [{"name": "all", "path": {"prefix": "/"}, "upstream": "m"}],
            "upstreams": [{"name": "m", "addresses": [member]}]
        }),
    )
    .await;
    let gateway = node.gateway.clone().unwrap();
    let client = gateway_client();
    // Twice on the client's one connection: a length passed on beside the chunks would leave
    // 97 bytes to be read as the second answer.
    for _ in 0..2 {
        let answer = client
            .get(format!("http://{gateway}/twice"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 200);
        assert!(answer
            .headers()
            .get("content-length")
            .is_none_or(|v| v == "100"));
        assert_eq!(answer.text().await.unwrap(), "x".repeat(100));
    }
    node.assert_no_panic();
}

/// A member for t29: `/early` answers 413 after reading only the head and then holds the
/// connection without reading the body; `/hang` never answers, and reports `asked` when its
/// request arrived and `gone` when the gateway closed the connection it came on.
async fn early_and_hanging_member() -> (String, tokio::sync::mpsc::UnboundedReceiver<&'static str>)
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let member = listener.local_addr().unwrap().to_string();
    let (gone, gone_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let gone = gone.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = vec![0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => head.push(buf[0]),
                    }
                }
                if head.starts_with(b"POST /early") {
                    let answer =
                        "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\n\r\ntoo large";
                    let _ = socket.write_all(answer.as_bytes()).await;
                    // Holds the connection, reading nothing more, until the test ends.
                    std::future::pending::<()>().await;
                } else {
                    let _ = gone.send("asked");
                    let mut rest = vec![0u8; 4096];
                    while matches!(socket.read(&mut rest).await, Ok(n) if n > 0) {}
                    let _ = gone.send("gone");
                }
            });
        }
    });
    (member, gone_rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t29_an_early_answer_a_client_that_leaves_and_head_on_a_made_answer() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let (member, mut gone) = early_and_hanging_member().await;
    apply_ok(
        &node,
        &json!({
            "routes": [
                {"name": "made", "path": {"exact": "/made"}, "respond": {"status": 200, "body": "twelve bytes"}},
                {"name": "all", "path": {"prefix": "/"}, "upstream": "m", "max_body": "1GiB"}
            ],
            "upstreams": [{"name": "m", "addresses": [member]}]
        }),
    )
    .await;
    let gateway = node.gateway.clone().unwrap();

    // A member that answers before it has read the body (and then reads no more): its answer
    // reaches the client at once, not a 502, nor a 504 after the timeout.
    let stream = TcpStream::connect(&gateway).await.unwrap();
    let (mut from, mut to) = stream.into_split();
    // Far more than the sockets between client, gateway and member buffer.
    let size = 256 << 20;
    let head = format!("POST /early HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n\r\n");
    to.write_all(head.as_bytes()).await.unwrap();
    let upload = tokio::spawn(async move {
        let chunk = vec![b'u'; 64 << 10];
        for _ in 0..size / chunk.len() {
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).contains("too large") {
        let n = tokio::time::timeout(Duration::from_secs(10), from.read(&mut buf))
            .await
            .expect("the member's early answer within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    upload.abort();

    // A client that closes its connection while its request waits: the gateway drops the
    // request and closes the member's connection, long before the 30 s header timeout.
    let mut stream = TcpStream::connect(&gateway).await.unwrap();
    stream
        .write_all(b"GET /hang HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let asked = tokio::time::timeout(Duration::from_secs(10), gone.recv()).await;
    assert_eq!(asked.ok().flatten(), Some("asked"));
    drop(stream);
    let closed = tokio::time::timeout(Duration::from_secs(5), gone.recv()).await;
    assert_eq!(
        closed.ok().flatten(),
        Some("gone"),
        "the member's connection closed within 5 s of the client leaving"
    );

    // HEAD on an answer the gateway makes itself tells the length GET's body has.
    let mut stream = TcpStream::connect(&gateway).await.unwrap();
    stream
        .write_all(b"HEAD /made HTTP/1.1\r\nhost: x\r\n\r\nGET /made HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await.to_lowercase();
    assert!(head.contains("content-length: 12\r\n"), "{head}");
    // No body followed the HEAD answer: the next bytes are the GET's answer.
    let (status, _, body) = read_answer(&mut stream).await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, b"twelve bytes");
    node.assert_no_panic();
}
