//! Service providers and consumers (`strata-rpc`) against a real `strata server`, with the
//! example provider (`orders`) and consumer (`checkout`) as real processes: discovery,
//! failover under kill -9 and graceful stop, breakers with fallbacks, deadlines and traces
//! across two hops, and `strata rpc`.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata_examples::checkout::checkout_client::CheckoutClient;
use strata_examples::checkout::PlaceOrderRequest;
use strata_examples::orders::orders_client::OrdersClient;
use strata_examples::orders::{CreateRequest, Order};
use strata_resilience::balance::Balance;
use strata_resilience::breaker::{BreakerConfig, State};
use strata_rpc::{BreakerScope, Consumer, Discovery, Selector, ServiceConfig};

/// POSTs `body` to the node's `path`; the call must succeed.
async fn post_ok(node: &NodeProc, path: &str, body: serde_json::Value) {
    let response = http_client()
        .post(format!("{}{path}", node.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
}

async fn register(node: &NodeProc, id: &str, port: u16, tags: &[&str]) {
    let body = json!({"service": "orders", "id": id, "address": "127.0.0.1", "port": port,
                      "tags": tags});
    post_ok(node, "/v1/registry/instances", body).await;
}

async fn deregister(node: &NodeProc, id: &str) {
    let response = http_client()
        .delete(format!(
            "{}/v1/registry/services/orders/instances/{id}",
            node.url()
        ))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
}

fn ids(discovery: &Discovery) -> Vec<String> {
    let mut ids: Vec<String> = discovery
        .members()
        .endpoints
        .iter()
        .map(|e| e.id.clone())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_discovery_follows_registrations_within_a_second_and_balances() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(1, dir.path(), Some("1=127.0.0.1:0"), &[]).await;
    let client = node.client();
    let discovery = Discovery::follow(
        client,
        Selector {
            service: "orders".into(),
            tags: vec!["v1".into()],
            balance: Balance::RoundRobin,
            ..Default::default()
        },
    );
    assert!(discovery.ready(Duration::from_secs(20)).await);
    assert!(discovery.pick(None).is_none(), "no instance yet");
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        register(&node, id, 9000 + i as u16, &["v1"]).await;
    }
    // Another tag: not selected.
    register(&node, "other", 9100, &["v2"]).await;
    let started = Instant::now();
    wait_until(Duration::from_secs(5), "three instances", || async {
        (ids(&discovery) == ["a", "b", "c"]).then_some(())
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..300 {
        *counts
            .entry(discovery.pick(None).unwrap().id.clone())
            .or_default() += 1;
    }
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [100, 100, 100]
    );
    // A deregistered instance leaves the set within a second.
    deregister(&node, "b").await;
    let started = Instant::now();
    wait_until(Duration::from_secs(5), "b to leave", || async {
        (ids(&discovery) == ["a", "c"]).then_some(())
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    for _ in 0..50 {
        assert_ne!(discovery.pick(None).unwrap().id, "b");
    }
    node.assert_no_panic();
}

impl Example {
    async fn orders(node: &NodeProc, id: &str, extra: &[&str]) -> Example {
        let url = node.url();
        let mut args = vec!["--endpoints", &url, "--id", id];
        args.extend_from_slice(extra);
        Example::start("orders", &args, &[], "orders serving on").await
    }
}

/// Retries of UNAVAILABLE for the orders service, as the checkout example configures them.
fn retrying() -> ServiceConfig {
    ServiceConfig::from_json(
        r#"{"methodConfig": [{"name": [{"service": "orders.v1.Orders"}], "timeout": "2s",
             "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.1s",
                             "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#,
    )
    .unwrap()
}

fn create(item: &str, work_ms: u32) -> CreateRequest {
    CreateRequest {
        item: item.into(),
        quantity: 1,
        work_ms,
    }
}

/// Calls made under load: when each ended and which instance served it (or the error).
type Calls = Arc<Mutex<Vec<(Instant, Result<String, tonic::Status>)>>>;

fn load(client: OrdersClient<Consumer>, callers: usize, stop: Arc<AtomicBool>) -> Calls {
    let calls: Calls = Arc::default();
    for _ in 0..callers {
        let mut client = client.clone();
        let (calls, stop) = (calls.clone(), stop.clone());
        tokio::spawn(async move {
            // Bounded: the test stops it long before this count.
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let result = client
                    .create(create("book", 0))
                    .await
                    .map(|r| r.into_inner().served_by);
                calls.lock().unwrap().push((Instant::now(), result));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }
    calls
}

fn failures(calls: &Calls) -> Vec<String> {
    calls
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, r)| r.as_ref().err().map(|s| s.to_string()))
        .collect()
}

/// Attempts the consumer has sent to instance `id` so far.
fn requests_to(consumer: &Consumer, id: &str) -> Option<u64> {
    consumer
        .discovery()
        .members()
        .endpoints
        .iter()
        .find(|e| e.id == id)
        .map(|e| e.requests.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t02_three_providers_survive_kill9_and_graceful_stop_without_failed_calls() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(1, dir.path(), Some("1=127.0.0.1:0"), &[]).await;
    let _a = Example::orders(&node, "o-a", &[]).await;
    let mut b = Example::orders(&node, "o-b", &[]).await;
    let mut c = Example::orders(&node, "o-c", &[]).await;
    let consumer = Consumer::builder(node.client(), "orders")
        .service_config(retrying())
        .build();
    wait_until(Duration::from_secs(10), "three instances", || async {
        (consumer.discovery().members().endpoints.len() == 3).then_some(())
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let calls = load(OrdersClient::new(consumer.clone()), 6, stop.clone());
    wait_until(
        Duration::from_secs(10),
        "calls to every instance",
        || async {
            let calls = calls.lock().unwrap();
            let served: std::collections::BTreeSet<_> =
                calls.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
            (served.len() == 3 && calls.len() > 100).then_some(())
        },
    )
    .await;

    // kill -9: in-flight calls fail over, and while the registry still lists the dead
    // instance (its lease runs 10 s) it gets a probe per ejection period (1 s, then 2 s, ...),
    // not its third of the calls.
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let killed = Instant::now();
    let at_kill = requests_to(&consumer, "o-b").unwrap();
    let before = calls.lock().unwrap().len();
    wait_until(Duration::from_secs(20), "calls after the kill", || async {
        (calls.lock().unwrap().len() > before + 1200 && killed.elapsed() > Duration::from_secs(2))
            .then_some(())
    })
    .await;
    let later = requests_to(&consumer, "o-b");
    // Six callers may each pick it once per period before the first refusal ejects it; an
    // instance left in the balance would have had about 400 of these 1,200 calls.
    assert!(
        later.is_none_or(|n| n - at_kill <= 24),
        "o-b got {:?} attempts in the 1,200 calls after its kill",
        later.map(|n| n - at_kill)
    );
    // A call whose response headers arrived before the kill is committed to that attempt
    // (gRPC's retry rule, gRFC A6): the kill cutting its body off fails it instead of failing
    // it over. Each of the six callers has one call in flight, so at most six; every other
    // call fails over.
    let (cut_off, others): (Vec<String>, Vec<String>) = failures(&calls)
        .into_iter()
        .partition(|f| f.contains("error reading a body from connection"));
    assert!(
        cut_off.len() <= 6,
        "{} calls cut off after their headers: {cut_off:?}",
        cut_off.len()
    );
    assert_eq!(others, Vec::<String>::new(), "failed calls around the kill");
    let failed_by_kill = cut_off.len();

    // A graceful stop: deregistered first, then drained; not one call fails.
    send_sigterm(&c.child);
    let status = tokio::task::spawn_blocking(move || {
        let status = c.child.wait().unwrap();
        (c, status)
    });
    let (c, status) = tokio::time::timeout(Duration::from_secs(20), status)
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "o-c exited with {status}");
    assert!(c
        .lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l == "orders o-c stopped"));
    let stopped = Instant::now();
    let before = calls.lock().unwrap().len();
    wait_until(Duration::from_secs(10), "calls after the stop", || async {
        (calls.lock().unwrap().len() > before + 200).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    // Calls are recorded in the order they end: the kill's are first.
    assert_eq!(
        failures(&calls).split_off(failed_by_kill),
        Vec::<String>::new(),
        "failed calls around the stop"
    );
    let after: Vec<String> = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t > stopped)
        .filter_map(|(_, r)| r.as_ref().ok().cloned())
        .collect();
    assert!(after.iter().all(|id| id == "o-a"), "{after:?}");
    node.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t03_a_slow_provider_trips_the_breaker_the_fallback_answers_and_it_closes_after_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(1, dir.path(), Some("1=127.0.0.1:0"), &[]).await;
    let slow = Example::orders(&node, "o-slow", &["--delay", "3s"]).await;
    let breaker: BreakerConfig = serde_json::from_value(json!({
        "window_size": 4, "minimum_calls": 4, "failure_rate_threshold": 50,
        "wait_in_open": "1s", "half_open_calls": 2
    }))
    .unwrap();
    let fallback = Order {
        id: String::new(),
        item: "fallback".into(),
        quantity: 0,
        served_by: "fallback".into(),
    };
    let consumer = Consumer::builder(node.client(), "orders")
        .timeout(Duration::from_millis(200))
        .breaker(breaker, BreakerScope::Service)
        .fallback("/orders.v1.Orders/Create", &fallback)
        .build();
    let mut client = OrdersClient::new(consumer.clone());
    for i in 0..4 {
        let status = client.create(create("book", 0)).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::DeadlineExceeded,
            "call {i}: {status}"
        );
        assert!(status.message().contains("o-slow"), "{status}");
    }
    assert_eq!(consumer.breaker_state(), Some(State::Open));
    let started = Instant::now();
    let answer = client.create(create("book", 0)).await.unwrap().into_inner();
    assert_eq!(answer.served_by, "fallback");
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );

    // Recovery: the slow instance goes, a healthy one comes; trial calls close the breaker.
    send_sigterm(&slow.child);
    let _fast = Example::orders(&node, "o-fast", &[]).await;
    wait_until(
        Duration::from_secs(10),
        "o-fast alone in the set",
        || async {
            let members = consumer.discovery().members();
            (members.endpoints.len() == 1 && members.endpoints[0].id == "o-fast").then_some(())
        },
    )
    .await;
    let served: Arc<Mutex<Vec<String>>> = Arc::default();
    wait_until(Duration::from_secs(10), "the breaker to close", || {
        let mut client = client.clone();
        let (served, consumer) = (served.clone(), consumer.clone());
        async move {
            if let Ok(order) = client.create(create("book", 0)).await {
                served.lock().unwrap().push(order.into_inner().served_by);
            }
            (consumer.breaker_state() == Some(State::Closed)).then_some(())
        }
    })
    .await;
    let served = served.lock().unwrap().clone();
    assert!(served.iter().any(|s| s == "o-fast"), "{served:?}");
    let answer = client.create(create("book", 0)).await.unwrap().into_inner();
    assert_eq!(answer.served_by, "o-fast");
    node.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t04_a_deadline_crosses_two_hops_and_cancels_the_second_hops_work() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(1, dir.path(), Some("1=127.0.0.1:0"), &[]).await;
    let orders = Example::orders(&node, "o-b", &[]).await;
    let url = node.url();
    let _checkout = Example::start(
        "checkout",
        &["--endpoints", &url, "serve", "--id", "c-a"],
        &[],
        "checkout serving on",
    )
    .await;
    let consumer = Consumer::builder(node.client(), "checkout").build();
    let mut client = CheckoutClient::new(consumer);
    let mut request = tonic::Request::new(PlaceOrderRequest {
        item: "book".into(),
        quantity: 1,
        work_ms: 10_000,
    });
    request.set_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let status = client.place_order(request).await.unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    // The orders instance (second hop) stopped working when the first deadline passed.
    let line = orders
        .wait_line("cancelled Create after", Duration::from_secs(3))
        .await;
    let ms: u64 = line
        .trim_start_matches("cancelled Create after ")
        .trim_end_matches(" ms")
        .parse()
        .unwrap();
    assert!(
        ms < 1000,
        "the second hop worked {ms} ms past a 500 ms deadline"
    );
    // A call within its deadline still works end to end.
    let receipt = client
        .place_order(PlaceOrderRequest {
            item: "book".into(),
            quantity: 1,
            work_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            receipt.orders_instance.as_str(),
            receipt.checkout_instance.as_str()
        ),
        ("o-b", "c-a")
    );
    node.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t05_a_traced_call_across_two_hops_reaches_the_collector_with_one_trace_and_parent_links() {
    // A collector: OTLP/HTTP JSON posts, kept as they come.
    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::Json<serde_json::Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body.0);
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    assert!(strata_rpc::init_tracing(strata_rpc::TraceConfig {
        endpoint: Some(format!("{collector}/v1/traces")),
        service_name: "test".into(),
        sample_ratio: 1.0,
    }));

    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(1, dir.path(), Some("1=127.0.0.1:0"), &[]).await;
    let url = node.url();
    let otel = |name: &'static str| {
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.clone()),
            ("OTEL_SERVICE_NAME", name.to_string()),
        ]
    };
    let env_b = otel("orders");
    let env_b: Vec<(&str, &str)> = env_b.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _orders = Example::start(
        "orders",
        &["--endpoints", &url, "--id", "o-b"],
        &env_b,
        "orders serving on",
    )
    .await;
    let env_a = otel("checkout");
    let env_a: Vec<(&str, &str)> = env_a.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _checkout = Example::start(
        "checkout",
        &["--endpoints", &url, "serve", "--id", "c-a"],
        &env_a,
        "checkout serving on",
    )
    .await;
    let mut client = CheckoutClient::new(Consumer::builder(node.client(), "checkout").build());
    client
        .place_order(PlaceOrderRequest {
            item: "book".into(),
            quantity: 1,
            work_ms: 0,
        })
        .await
        .unwrap();

    // (service, kind, name, trace, span, parent) of every span received.
    type Row = (String, u64, String, String, String, String);
    let spans: Vec<Row> = wait_until(Duration::from_secs(15), "four spans", || async {
        let mut rows = Vec::new();
        for post in received.lock().unwrap().iter() {
            for resource in post["resourceSpans"].as_array().unwrap() {
                let service = resource["resource"]["attributes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|a| a["key"] == "service.name")
                    .map(|a| a["value"]["stringValue"].as_str().unwrap().to_string())
                    .unwrap();
                for scope in resource["scopeSpans"].as_array().unwrap() {
                    for span in scope["spans"].as_array().unwrap() {
                        let text = |k: &str| span[k].as_str().unwrap_or("").to_string();
                        rows.push((
                            service.clone(),
                            span["kind"].as_u64().unwrap(),
                            text("name"),
                            text("traceId"),
                            text("spanId"),
                            text("parentSpanId"),
                        ));
                    }
                }
            }
        }
        (rows.len() >= 4).then_some(rows)
    })
    .await;
    let find = |service: &str, kind: u64, name: &str| -> Row {
        spans
            .iter()
            .find(|r| r.0 == service && r.1 == kind && r.2 == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {service} span {name} of kind {kind} in {spans:#?}"))
    };
    const SERVER: u64 = 2;
    const CLIENT: u64 = 3;
    let root = find("test", CLIENT, "checkout.v1.Checkout/PlaceOrder");
    let a_server = find("checkout", SERVER, "checkout.v1.Checkout/PlaceOrder");
    let a_client = find("checkout", CLIENT, "orders.v1.Orders/Create");
    let b_server = find("orders", SERVER, "orders.v1.Orders/Create");
    for span in [&a_server, &a_client, &b_server] {
        assert_eq!(span.3, root.3, "one trace id: {spans:#?}");
    }
    assert_eq!(root.5, "", "the first span is the root");
    assert_eq!(a_server.5, root.4);
    assert_eq!(a_client.5, a_server.4);
    assert_eq!(b_server.5, a_client.4);
    node.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t06_strata_rpc_lists_and_calls_through_reflection_and_errors_name_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(1, dir.path(), Some("1=127.0.0.1:0"), &[]).await;
    let _orders = Example::orders(&node, "o-1", &[]).await;
    let rpc = |args: &[&str]| {
        let output = strata_command()
            .args(["--endpoints", &node.url(), "rpc"])
            .args(args)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let (ok, out, err) = rpc(&["list", "orders"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(
            "orders.v1.Orders\n  Create(orders.v1.CreateRequest) returns (orders.v1.Order)"
        ),
        "{out}"
    );
    let (ok, out, err) = rpc(&[
        "call",
        "orders/Create",
        "--data",
        r#"{"item":"pen","quantity":2}"#,
    ]);
    assert!(ok, "{err}");
    let order: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(order["item"], "pen");
    assert_eq!(order["quantity"], 2);
    assert_eq!(order["servedBy"], "o-1");
    // The full name works too; errors say what went wrong.
    let (ok, _, err) = rpc(&[
        "call",
        "orders/orders.v1.Orders/Create",
        "--data",
        r#"{"item":""}"#,
    ]);
    assert!(!ok);
    assert!(
        err.contains("INVALID_ARGUMENT")
            && err.contains("item must not be empty")
            && err.contains("o-1"),
        "{err}"
    );
    let (ok, _, err) = rpc(&["call", "orders/Nope"]);
    assert!(!ok);
    assert!(
        err.contains("no method \"Nope\"") && err.contains("orders.v1.Orders.Create"),
        "{err}"
    );
    let (ok, _, err) = rpc(&["call", "orders/Create", "--data", r#"{"itm":1}"#]);
    assert!(!ok);
    assert!(err.contains("not a valid orders.v1.CreateRequest"), "{err}");
    let (ok, out, err) = rpc(&[
        "bench",
        "orders/Create",
        "--data",
        r#"{"item":"pen"}"#,
        "--clients",
        "2",
        "--duration",
        "1s",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("calls=") && out.contains(" errors=0 "),
        "{out}"
    );

    // No instance: UNAVAILABLE, naming the service and its filters.
    let consumer = Consumer::builder(node.client(), "orders")
        .tag("v9")
        .timeout(Duration::from_secs(2))
        .build();
    let status = OrdersClient::new(consumer)
        .create(create("book", 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status
            .message()
            .contains("no passing instance of service \"orders\"")
            && status.message().contains("tags v9")
            && status.message().contains("orders.v1.Orders/Create"),
        "{status}"
    );
    node.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t07_python_grpcio_over_xds_reaches_registered_providers_and_follows_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (node, xds) = node_with_xds(dir.path()).await;
    let _one = Example::orders(&node, "o-1", &["--meta", "zone=a"]).await;
    let mut two = Example::orders(&node, "o-2", &["--meta", "zone=b"]).await;

    let mut client = XdsClient::start(&xds).await;
    let mut expect = async |ids: &str| client.expect(ids).await;
    expect("o-1,o-2").await;

    // A new instance joins the set the client balances over.
    let _three = Example::orders(&node, "o-3", &[]).await;
    expect("o-1,o-2,o-3").await;

    // One leaves (graceful stop: deregistered first); the client stops calling it.
    send_sigterm(&two.child);
    let _ = tokio::task::spawn_blocking(move || two.child.wait()).await;
    expect("o-1,o-3").await;
    let metrics = node.metric("strata_xds_responses_total").await;
    assert!(metrics.is_some(), "the node counts xDS responses");
    node.assert_no_panic();
}

/// A node with its xds listener on, and that listener's address.
async fn node_with_xds(dir: &std::path::Path) -> (NodeProc, String) {
    let node = NodeProc::start(
        1,
        dir,
        Some("1=127.0.0.1:0"),
        &["--listen", "xds=127.0.0.1:0"],
    )
    .await;
    let addrs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.dir.join("addrs.json")).unwrap()).unwrap();
    let xds = addrs["xds"].as_str().unwrap().to_string();
    (node, xds)
}

/// Python's grpcio dialing `xds:///orders` through a node's xds listener
/// (`tests/py/xds_client.py`), driven line by line.
struct XdsClient {
    python: Child,
    stdin: std::process::ChildStdin,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl XdsClient {
    async fn start(xds: &str) -> XdsClient {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/xds_client.py");
        let mut python = std::process::Command::new("python3")
            .args([script, xds, "orders"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = python.stdin.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let stdout = python.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut client = XdsClient {
            python,
            stdin,
            lines,
        };
        assert_eq!(client.next().await, "ready");
        client
    }

    async fn next(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(40), self.lines.recv())
            .await
            .expect("the Python client answers within 40 s")
            .expect("the Python client is running")
    }

    /// Calls until exactly the instances `ids` answer (see the script); `args` may add
    /// request metadata (`KEY=VALUE`).
    async fn expect(&mut self, args: &str) {
        use std::io::Write;
        writeln!(self.stdin, "expect {args}").unwrap();
        self.stdin.flush().unwrap();
        let line = self.next().await;
        assert!(line.starts_with("ok "), "expect {args}: {line}");
        eprintln!("xds client, expect {args}: {line}");
    }
}

impl Drop for XdsClient {
    fn drop(&mut self) {
        let _ = self.python.kill();
        let _ = self.python.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t08_xds_routing_rules_from_the_config_center_route_by_header_and_weight() {
    let dir = tempfile::tempdir().unwrap();
    let (node, xds) = node_with_xds(dir.path()).await;
    let _v1 = Example::orders(&node, "o-1", &["--meta", "version=v1"]).await;
    let _v2 = Example::orders(&node, "o-2", &["--meta", "version=v2"]).await;
    let publish = async |content: &str| {
        let body = json!({"namespace": "public", "group": "xds", "data_id": "routes",
                          "content": content, "type": "toml"});
        post_ok(&node, "/v1/config/publish", body).await;
    };
    // Canary by header: x-version: v2 goes to version=v2; everything else to version=v1.
    publish(
        r#"[[services]]
name = "orders"
routes = [{ header = "x-version", value = "v2", subset = { version = "v2" } }]
split = [{ subset = { version = "v1" }, weight = 1 }]
"#,
    )
    .await;
    let mut client = XdsClient::start(&xds).await;
    client.expect("o-1").await;
    client.expect("o-2 x-version=v2").await;
    // A new version of the rules moves the traffic: all of it to version=v2 now.
    publish(
        r#"[[services]]
name = "orders"
split = [{ subset = { version = "v2" }, weight = 1 }]
"#,
    )
    .await;
    client.expect("o-2").await;
    // An invalid version is refused; the rules in force stay.
    publish("[[services]]\nname = \"orders\"\nsplit = [{ subset = {}, weight = 0 }]\n").await;
    client.expect("o-2").await;
    // Without rules, every instance again.
    let key = json!({"namespace": "public", "group": "xds", "data_id": "routes"});
    post_ok(&node, "/v1/config/delete", key).await;
    client.expect("o-1,o-2").await;
    node.assert_no_panic();
}
