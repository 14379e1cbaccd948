//! etcd's JSON gateway, response by response against a real etcd 3.4 (Debian's `etcd-server`):
//! the same calls go to both, and the answers must agree on the HTTP status, the content type
//! and the body, after the values that differ by nature are replaced: cluster and member ids,
//! raft terms, lease ids (random), and revisions (counted from each store's own first
//! revision in the test).
#![allow(clippy::unwrap_used)]

mod common;

use common::{http_client, Cluster, EtcdProc, GRPC_ON_ANY_PORT};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn unb64(text: &str) -> String {
    use base64::Engine;
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap(),
    )
    .unwrap()
}

/// One side of the comparison: its address, its first revision, and the lease ids it gave.
struct Side {
    addr: String,
    base: i64,
    leases: HashMap<String, String>,
}

impl Side {
    /// Replaces what differs by nature with stable names, recursively.
    fn normalize(&mut self, value: &mut Value) {
        match value {
            Value::Object(object) => {
                for (key, field) in object.iter_mut() {
                    match (key.as_str(), &*field) {
                        ("cluster_id" | "member_id" | "raft_term", _) => *field = json!("N"),
                        (
                            "revision" | "create_revision" | "mod_revision" | "compact_revision"
                            | "rev",
                            Value::String(n),
                        ) => {
                            let n: i64 = n.parse().unwrap();
                            *field = json!(format!("r{}", n - self.base));
                        }
                        ("ID" | "lease", Value::String(id)) => {
                            let id = id.clone();
                            *field = json!(self.lease_name(&id));
                        }
                        // Lock and election keys end in the lease id in hex.
                        ("key", Value::String(k)) => {
                            let text = unb64(k);
                            if let Some((name, hex)) = text.rsplit_once('/') {
                                let id = i64::from_str_radix(hex, 16).map(|id| id.to_string());
                                if let Ok(id) = id {
                                    if self.leases.contains_key(&id) {
                                        *field = json!(format!("{name}/{}", self.leases[&id]));
                                    }
                                }
                            }
                        }
                        _ => self.normalize(field),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.normalize(v)),
            _ => {}
        }
    }

    fn lease_name(&mut self, id: &str) -> String {
        let next = format!("lease{}", self.leases.len() + 1);
        self.leases.entry(id.to_string()).or_insert(next).clone()
    }
}

/// A call's answer: status, content type, and the body (JSON, or JSON lines for streams).
async fn call(addr: &str, path: &str, body: &Value) -> (u16, String, Vec<Value>) {
    let response = http_client()
        .post(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(10))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let kind = content_type(&response);
    let text = response.text().await.unwrap();
    (status, kind, lines(path, &text))
}

fn content_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

fn lines(path: &str, text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("{path}: not JSON: {text}")))
        .collect()
}

/// Opens a stream, reads its first `count` lines, and drops the connection.
async fn stream_lines(addr: &str, path: &str, body: &Value, count: usize) -> (u16, Vec<Value>) {
    let mut response = http_client()
        .post(format!("http://{addr}{path}"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while text.lines().count() < count {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("{path}: {count} lines did not come; got {text}"))
            .unwrap()
            .unwrap_or_else(|| panic!("{path}: ended after {text}"));
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    (status, lines(path, &text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_every_gateway_call_answers_as_etcd_3_4_does() {
    let cluster = Cluster::start(1, GRPC_ON_ANY_PORT).await;
    let etcd = EtcdProc::start(cluster.root.path(), &[]).await;
    let mut sides = Vec::new();
    for addr in [
        etcd.client.clone(),
        cluster.nodes[0].grpc_addr().to_string(),
    ] {
        // Each side's revision before the test's first write is its base.
        let (_, _, reply) = call(&addr, "/v3/kv/range", &json!({"key": b64("x")})).await;
        let base = reply[0]["header"]["revision"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        sides.push(Side {
            addr,
            base,
            leases: HashMap::new(),
        });
    }
    // Unary calls, in order; `{lease}` in a body is replaced by the side's first lease.
    let calls: Vec<(&str, Value)> = vec![
        ("/v3/kv/put", json!({"key": b64("a"), "value": b64("1")})),
        (
            "/v3/kv/put",
            json!({"key": b64("a"), "value": b64("2"), "prev_kv": true}),
        ),
        (
            "/v3beta/kv/put",
            json!({"key": b64("b"), "value": b64("3")}),
        ),
        ("/v3/kv/range", json!({"key": b64("a")})),
        (
            "/v3/kv/range",
            json!({"key": b64("a"), "range_end": b64("c"), "limit": 1}),
        ),
        (
            "/v3/kv/range",
            json!({"key": b64("a"), "range_end": b64("c"), "count_only": true}),
        ),
        (
            "/v3/kv/range",
            json!({"key": b64("a"), "range_end": b64("c"), "keys_only": true, "sort_order": "DESCEND"}),
        ),
        ("/v3/kv/range", json!({"key": b64("a"), "revision": "2"})),
        (
            "/v3/kv/txn",
            json!({"compare": [{"key": b64("a"), "target": "VALUE", "result": "EQUAL", "value": b64("2")}],
                   "success": [{"request_put": {"key": b64("a"), "value": b64("4")}},
                               {"request_range": {"key": b64("b")}}],
                   "failure": [{"request_delete_range": {"key": b64("a")}}]}),
        ),
        (
            "/v3/kv/txn",
            json!({"compare": [{"key": b64("a"), "target": "MOD", "result": "LESS", "mod_revision": "1"}],
                   "success": [{"request_put": {"key": b64("a"), "value": b64("5")}}],
                   "failure": [{"request_range": {"key": b64("a")}}]}),
        ),
        (
            "/v3/kv/deleterange",
            json!({"key": b64("b"), "prev_kv": true}),
        ),
        ("/v3/kv/deleterange", json!({"key": b64("nothing")})),
        ("/v3/lease/grant", json!({"TTL": "60"})),
        (
            "/v3/lease/timetolive",
            json!({"ID": "{lease}", "keys": true}),
        ),
        (
            "/v3/kv/put",
            json!({"key": b64("leased"), "value": b64("v"), "lease": "{lease}"}),
        ),
        (
            "/v3/lease/timetolive",
            json!({"ID": "{lease}", "keys": true}),
        ),
        ("/v3/kv/lease/timetolive", json!({"ID": "{lease}"})),
        ("/v3/lease/leases", json!({})),
        ("/v3/lease/timetolive", json!({"ID": "12345"})),
        ("/v3/lease/revoke", json!({"ID": "12345"})),
        (
            "/v3/lock/lock",
            json!({"name": b64("mylock"), "lease": "{lease}"}),
        ),
        ("/v3/lock/unlock", json!({})),
        (
            "/v3/election/campaign",
            json!({"name": b64("el"), "lease": "{lease}", "value": b64("v1")}),
        ),
        ("/v3/election/leader", json!({"name": b64("el")})),
        ("/v3/election/leader", json!({"name": b64("none")})),
        ("/v3/election/resign", json!({})),
        ("/v3/kv/compaction", json!({"revision": "1000"})),
        (
            "/v3/kv/range",
            json!({"key": b64("a"), "range_end": b64("c")}),
        ),
    ];
    for (path, body) in &calls {
        let mut answers = Vec::new();
        for side in sides.iter_mut() {
            let first = side
                .leases
                .iter()
                .find(|(_, name)| *name == "lease1")
                .map(|(id, _)| id.clone());
            let text = body.to_string();
            let text = match &first {
                Some(id) => text.replace("{lease}", id),
                None => text,
            };
            let (status, kind, mut replies) =
                call(&side.addr, path, &serde_json::from_str(&text).unwrap()).await;
            replies.iter_mut().for_each(|r| side.normalize(r));
            answers.push((status, kind, replies));
        }
        assert_eq!(
            answers[1], answers[0],
            "{path} {body}: Strata (left) and etcd 3.4 (right) differ"
        );
    }

    // The lock and election keys, and the streams, with the same lease.
    for side in sides.iter_mut() {
        let lease = side
            .leases
            .iter()
            .find(|(_, name)| *name == "lease1")
            .map(|(id, _)| id.clone())
            .unwrap();
        let (status, _, replies) =
            call(&side.addr, "/v3/lease/keepalive", &json!({"ID": lease})).await;
        assert_eq!(status, 200);
        let mut keepalive = replies;
        keepalive.iter_mut().for_each(|r| side.normalize(r));
        // Keep-alive: one request, one `{"result": ...}` line, then the end.
        assert_eq!(keepalive.len(), 1, "{keepalive:?}");
        assert_eq!(keepalive[0]["result"]["ID"], "lease1");
        assert_eq!(keepalive[0]["result"]["TTL"], "60");
    }
    let mut streams = Vec::new();
    for side in sides.iter_mut() {
        let addr = side.addr.clone();
        // A watch from revision base+1 replays every change of `a`, then follows.
        let watch = json!({"create_request": {"key": b64("a"), "start_revision": (side.base + 1).to_string()}});
        let (status, mut watched) = stream_lines(&addr, "/v3/watch", &watch, 2).await;
        watched.iter_mut().for_each(|r| side.normalize(r));
        let (_, mut observed) = stream_lines(
            &addr,
            "/v3/election/observe",
            &json!({"name": b64("el")}),
            1,
        )
        .await;
        observed.iter_mut().for_each(|r| side.normalize(r));
        let (_, _, mut unknown) = call(&addr, "/v3/lease/keepalive", &json!({"ID": "12345"})).await;
        unknown.iter_mut().for_each(|r| side.normalize(r));
        streams.push((status, watched, observed, unknown));
    }
    assert_eq!(
        streams[1], streams[0],
        "streams: Strata (left), etcd (right)"
    );

    // GET /version and /health.
    let mut gets = Vec::new();
    for side in &sides {
        let version: Value = http_client()
            .get(format!("http://{}/version", side.addr))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let keys: Vec<&String> = version.as_object().unwrap().keys().collect();
        assert!(
            version["etcdserver"].as_str().unwrap().starts_with("3.4."),
            "{version}"
        );
        let health = http_client()
            .get(format!("http://{}/health", side.addr))
            .send()
            .await
            .unwrap();
        let status = health.status().as_u16();
        let health: Value = health.json().await.unwrap();
        gets.push((
            keys.into_iter().cloned().collect::<Vec<_>>(),
            version["etcdcluster"].clone(),
            status,
            health,
        ));
    }
    assert_eq!(gets[1], gets[0]);

    // Answers that differ in detail but not in shape: the member list and the status.
    for path in ["/v3/cluster/member/list", "/v3/maintenance/status"] {
        let mut shapes = Vec::new();
        for side in &sides {
            let (status, kind, replies) = call(&side.addr, path, &json!({})).await;
            shapes.push((status, kind, shape(&replies[0])));
        }
        assert_eq!(shapes[1], shapes[0], "{path}");
    }

    // A body that is not JSON: the same status and gRPC code (the message is each parser's).
    let mut bad = Vec::new();
    for side in &sides {
        let response = http_client()
            .post(format!("http://{}/v3/kv/range", side.addr))
            .body("{bad")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        bad.push((
            status,
            body["code"].clone(),
            body["error"] == body["message"],
        ));
    }
    assert_eq!(bad[1], bad[0]);

    // No such call: etcd's plain-text 404s.
    let mut missing = Vec::new();
    for side in &sides {
        for path in ["/v3/kv/nope", "/nothing/here"] {
            let response = http_client()
                .post(format!("http://{}{path}", side.addr))
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let kind = content_type(&response);
            missing.push((path, status, kind, response.text().await.unwrap()));
        }
    }
    assert_eq!(missing[2..], missing[..2]);
    drop(etcd);
}

/// The keys of an answer, recursively, with each scalar replaced by its JSON type.
fn shape(value: &Value) -> Value {
    match value {
        Value::Object(object) => Value::Object(
            object
                .iter()
                .filter(|(k, _)| {
                    !["dbSizeInUse", "raftAppliedIndex", "errors"].contains(&k.as_str())
                })
                .map(|(k, v)| (k.clone(), shape(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().take(1).map(shape).collect()),
        Value::String(_) => json!("string"),
        Value::Number(_) => json!("number"),
        Value::Bool(_) => json!("bool"),
        Value::Null => Value::Null,
    }
}
