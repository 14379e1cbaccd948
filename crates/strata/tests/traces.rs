//! Spans by default in `strata dev`, with no OpenTelemetry variable set: a gRPC call through
//! the gateway to the example `checkout` provider, whose handler calls `orders` through a
//! consumer, leaves one trace in the node's monitor. The gateway's server span is the parent
//! of checkout's server span, whose client span is the parent of orders' server span; a
//! caller's `traceparent` is continued, and without one the gateway starts the trace.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use strata_examples::checkout::checkout_client::CheckoutClient;
use strata_examples::checkout::PlaceOrderRequest;
use strata_rpc::TraceParent;

/// The route to checkout's gRPC methods, over h2c to the registered instances.
const OPERATION: &str = "POST /checkout.v1.Checkout/PlaceOrder";

#[derive(Deserialize)]
struct Addrs {
    api: String,
    gateway: String,
}

/// A `strata dev` process.
struct Dev {
    _child: KillOnDrop,
    api: String,
    gateway: String,
    stderr: PathBuf,
}

async fn start_dev(root: &Path) -> Dev {
    let (addrs_file, stdout, stderr) = (
        root.join("addrs.json"),
        root.join("dev.out"),
        root.join("dev.err"),
    );
    let mut child = Command::new(strata_bin())
        .arg("dev")
        .arg("--data-dir")
        .arg(root.join("data"))
        .args(DEV_ON_ANY_PORT)
        .arg("--addrs-file")
        .arg(&addrs_file)
        .env_remove("STRATA_LOG")
        .env_remove("STRATA_LOG_FORMAT")
        .env_remove("STRATA_CONFIG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let addrs: Addrs =
        wait_for_addrs(&mut child, &addrs_file, &[&stderr], Duration::from_secs(20)).await;
    let api = format!("http://{}", addrs.api);
    let readyz = format!("{api}/readyz");
    wait_until(
        Duration::from_secs(20),
        "strata dev to be ready",
        || async {
            let response = http_client().get(&readyz).send().await.ok()?;
            response.status().is_success().then_some(())
        },
    )
    .await;
    Dev {
        _child: KillOnDrop(child),
        api,
        gateway: addrs.gateway,
        stderr,
    }
}

async fn get_json(url: &str) -> Option<Value> {
    let response = http_client().get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// The spans of trace `id` once there are `count` of them.
async fn spans_of(dev: &Dev, id: &str, count: usize) -> Vec<Value> {
    let url = format!("{}/v1/monitor/traces/{id}", dev.api);
    wait_until(
        Duration::from_secs(10),
        &format!("{count} spans of trace {id}"),
        || async {
            let trace = get_json(&url).await?;
            let spans = trace["spans"].as_array()?.clone();
            (spans.len() >= count).then_some(spans)
        },
    )
    .await
}

/// The span of `service` and `kind` named `name`.
fn find<'a>(spans: &'a [Value], service: &str, kind: &str, name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["service"] == service && s["kind"] == kind && s["name"] == name)
        .unwrap_or_else(|| {
            let shown = Value::from(spans.to_vec());
            panic!("no {kind} span {name:?} of {service} in {shown:#}")
        })
}

/// Checks the four spans of one call: gateway → checkout (server, then client) → orders,
/// each the child of the one before; returns the gateway's.
fn check_chain(spans: &[Value]) -> Value {
    let gateway = find(spans, "strata-gateway", "server", OPERATION);
    let checkout = find(
        spans,
        "checkout",
        "server",
        "checkout.v1.Checkout/PlaceOrder",
    );
    let call = find(spans, "checkout", "client", "orders.v1.Orders/Create");
    let orders = find(spans, "orders", "server", "orders.v1.Orders/Create");
    let shown = Value::from(spans.to_vec());
    assert_eq!(checkout["parent_span_id"], gateway["span_id"], "{shown:#}");
    assert_eq!(call["parent_span_id"], checkout["span_id"], "{shown:#}");
    assert_eq!(orders["parent_span_id"], call["span_id"], "{shown:#}");
    for span in [gateway, checkout, call, orders] {
        assert_eq!(span["status_code"], 1, "{span:#}");
    }
    let attributes = &gateway["attributes"];
    assert_eq!(attributes["http.method"], "POST");
    assert_eq!(
        attributes["http.target"],
        "/checkout.v1.Checkout/PlaceOrder"
    );
    assert_eq!(attributes["http.status_code"], "200");
    assert_eq!(attributes["strata.route"], "checkout");
    assert_eq!(attributes["strata.upstream"], "checkout");
    assert_eq!(attributes["strata.instance"], "c-1");
    assert_eq!(attributes["strata.retries"], "0");
    gateway.clone()
}

/// Places an order through the gateway, with `traceparent` when given; the answer's
/// `x-request-id`.
async fn place_order(
    gateway: &str,
    traceparent: Option<&TraceParent>,
) -> Result<Option<String>, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{gateway}"))
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(PlaceOrderRequest {
        item: "book".into(),
        quantity: 1,
        work_ms: 0,
    });
    if let Some(parent) = traceparent {
        request
            .metadata_mut()
            .insert("traceparent", parent.to_string().parse().unwrap());
    }
    let response = CheckoutClient::new(channel).place_order(request).await?;
    Ok(response
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_a_call_through_the_gateway_and_two_providers_is_one_trace_in_strata_dev() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev(dir.path()).await;
    let routes = json!({
        "routes": [{"name": "checkout", "path": {"prefix": "/checkout.v1.Checkout/"},
                    "upstream": "checkout"}],
        "upstreams": [{"name": "checkout", "service": "checkout", "protocol": "h2c"}]
    });
    let apply = format!("{}/v1/gateway/routes?replace=true", dev.api);
    wait_until(
        Duration::from_secs(10),
        "the route table to apply",
        || async {
            let response = http_client().post(&apply).json(&routes).send().await.ok()?;
            response.status().is_success().then_some(())
        },
    )
    .await;
    let endpoints = ["--endpoints", dev.api.as_str()];
    let _orders = Example::start(
        "orders",
        &[&endpoints[..], &["--id", "o-1"]].concat(),
        &[],
        "orders serving on",
    )
    .await;
    let _checkout = Example::start(
        "checkout",
        &[&endpoints[..], &["serve", "--id", "c-1"]].concat(),
        &[],
        "checkout serving on",
    )
    .await;

    // A caller's trace is continued: the gateway's span is the child of the caller's. Calls
    // before the gateway sees checkout's instance fail (503), each in a trace of its own.
    let (caller, request_id) = wait_until(
        Duration::from_secs(10),
        "a call through the gateway",
        || {
            let caller = TraceParent::root(true);
            let gateway = dev.gateway.clone();
            async move {
                let request_id = place_order(&gateway, Some(&caller)).await.ok()?;
                Some((caller, request_id))
            }
        },
    )
    .await;
    // The request id the gateway made is the trace's id.
    assert_eq!(request_id, Some(caller.trace_hex()));
    let spans = spans_of(&dev, &caller.trace_hex(), 4).await;
    let gateway = check_chain(&spans);
    assert_eq!(gateway["parent_span_id"], caller.span_hex());

    // Without one, the gateway starts a sampled trace; the search finds it by its root.
    let request_id = place_order(&dev.gateway, None).await.unwrap();
    let search = format!(
        "{}/v1/monitor/traces?service=strata-gateway&operation={}&status=ok",
        dev.api,
        OPERATION.replace(' ', "%20")
    );
    let found = wait_until(
        Duration::from_secs(10),
        "a trace the gateway began",
        || async {
            let found = get_json(&search).await?;
            found["traces"]
                .as_array()?
                .iter()
                .find(|t| t["trace_id"] != caller.trace_hex().as_str() && t["spans"] == 4)
                .cloned()
        },
    )
    .await;
    assert_eq!(found["root_service"], "strata-gateway", "{found:#}");
    assert_eq!(
        found["trace_id"].as_str(),
        request_id.as_deref(),
        "{found:#}"
    );
    assert_eq!(found["root_operation"], OPERATION, "{found:#}");
    assert_eq!(
        found["services"],
        json!(["checkout", "orders", "strata-gateway"])
    );
    let spans = spans_of(&dev, found["trace_id"].as_str().unwrap(), 4).await;
    let gateway = check_chain(&spans);
    assert_eq!(gateway["parent_span_id"], Value::Null, "{gateway:#}");

    let log = std::fs::read_to_string(&dev.stderr).unwrap();
    assert!(!log.contains("exporting spans failed"), "{log}");
    assert!(!log.contains(" ERROR "), "{log}");
}
