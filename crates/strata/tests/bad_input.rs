//! Bad input, end to end, against real `strata` processes: every wrong request gets the right
//! HTTP status and a `{"code", "message"}` body and leaves the node serving; the CLI fails with
//! one clear line; a locked, garbled or too-new data folder and a bad config file are refused
//! with a message that says what is wrong, never a panic.

#![allow(clippy::unwrap_used)]

mod common;

use common::{
    cli, cli_with_stdin, curl_h2c_upload, run_with_deadline, strata_bin, Cluster, KillOnDrop,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The request limit the HTTP test configures (`kv.max_request_bytes = "4KiB"`).
const LIMIT: usize = 4096;

/// How long a command that must fail may take before the test calls it a hang.
const EXIT_DEADLINE: Duration = Duration::from_secs(20);

/// Sends one request and returns the status and the body parsed as JSON.
async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("node answers");
    let status = response.status();
    let bytes = response.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "status {status}: body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, body)
}

/// Checks that an error has the expected status, code and a non-empty, house-style message;
/// returns the message.
#[track_caller]
fn assert_error(what: &str, got: &(StatusCode, Value), status: u16, code: &str) -> String {
    let (got_status, body) = got;
    assert_eq!(
        got_status.as_u16(),
        status,
        "{what}: wrong status, body {body}"
    );
    assert_eq!(body["code"], code, "{what}: wrong code in {body}");
    let message = body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no message in {body}"));
    assert!(!message.is_empty(), "{what}: empty message");
    assert!(
        !message.ends_with('.'),
        "{what}: message ends with a period: {message:?}"
    );
    assert_eq!(
        body.as_object().unwrap().len(),
        2,
        "{what}: error body has more than code and message: {body}"
    );
    message.to_string()
}

/// Returns the lines of `output`'s stderr.
fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Returns the single `✘` line of a failed command, checking there is exactly one.
#[track_caller]
fn failure_line(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "command succeeded; stdout {:?}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "exit status {:?}",
        output.status
    );
    let all = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!all.contains("panicked"), "command panicked:\n{all}");
    let failures: Vec<String> = stderr_lines(output)
        .into_iter()
        .filter(|l| l.starts_with('✘'))
        .collect();
    assert_eq!(failures.len(), 1, "want exactly one ✘ line in:\n{all}");
    failures.into_iter().next().unwrap()
}

/// Runs `strata server` on an existing data folder with fresh ports; it is expected to exit.
fn server_on(data_dir: &Path) -> Output {
    let mut command = Command::new(strata_bin());
    command
        .args(["server", "--id", "1"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--api-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0"])
        .env("STRATA_LOG", "info,openraft=warn");
    run_with_deadline(&mut command, b"", EXIT_DEADLINE)
}

/// Returns an endpoint on which nothing listens: a port the kernel just handed out and that
/// was closed again.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_every_bad_request_gets_its_status_and_code_and_the_node_keeps_serving() {
    let cluster = Cluster::start_with_config(1, "[kv]\nmax_request_bytes = \"4KiB\"\n", &[]).await;
    let node = &cluster.nodes[0];
    let url = |path: &str| format!("{}{path}", node.url());
    let http = strata_tls::http_client_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let before = cluster.client().put("before", "intact").await.unwrap();

    // Size limit: key + value over kv.max_request_bytes is refused by the service...
    let five_kib = "x".repeat(5 * 1024);
    let got = send(
        http.post(url("/v1/kv/put"))
            .json(&json!({"key": "big", "value": five_kib})),
    )
    .await;
    let message = assert_error("5 KiB value", &got, 413, "payload_too_large");
    assert!(
        message.contains("kv.max_request_bytes"),
        "message does not name the setting: {message}"
    );
    // ...one byte over the limit too...
    let over = "x".repeat(LIMIT - "big".len() + 1);
    let got = send(
        http.post(url("/v1/kv/put"))
            .json(&json!({"key": "big", "value": over})),
    )
    .await;
    assert_error("limit + 1 byte", &got, 413, "payload_too_large");
    // ...a body far over the limit is cut off by the HTTP layer with the same answer...
    // The node answers before reading the whole body and then closes the connection; if the
    // close overtakes the answer on the client's socket (a kernel race every HTTP/1.1 server
    // that refuses early has), the client sees a reset instead. Such a try is repeated on a new
    // connection; the answer must come within three.
    let huge = "x".repeat(256 * 1024);
    let mut got = None;
    for _ in 0..3 {
        let request = http
            .post(url("/v1/kv/put"))
            .json(&json!({"key": "big", "value": huge}));
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
                got = Some((status, body));
                break;
            }
            Err(e) if e.is_request() => continue,
            Err(e) => panic!("256 KiB body: {e}"),
        }
    }
    let got = got.expect("an answer to the 256 KiB body within three tries");
    assert_error("256 KiB body", &got, 413, "payload_too_large");
    // Over HTTP/2 (h2c) the same early answers reach the client: the rest of the body is read
    // and dropped after the answer rather than the stream reset, which curl reports as an
    // error in place of the answer. Over the limit, and to a path that does not exist.
    let scratch = tempfile::tempdir().unwrap();
    let upload = scratch.path().join("upload.json");
    std::fs::write(&upload, json!({"key": "big", "value": huge}).to_string()).unwrap();
    for (path, expected) in [("/v1/kv/put", "413"), ("/v1/no-such-path", "404")] {
        for _ in 0..10 {
            let json = ["content-type: application/json"];
            let status = curl_h2c_upload(&url(path), &upload, &json).await;
            assert_eq!(status, expected, "{path}");
        }
    }
    // The node closed that connection after its early answer; a new client does not pick a
    // closed connection from its pool for the next request (seen once in CI as an incomplete
    // message on the next put).
    let http = strata_tls::http_client_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // ...and a key + value of exactly the limit is accepted.
    let at_limit = "y".repeat(LIMIT - "big".len());
    let got = send(
        http.post(url("/v1/kv/put"))
            .json(&json!({"key": "big", "value": at_limit})),
    )
    .await;
    assert_eq!(got.0, StatusCode::OK, "put at the limit: {}", got.1);
    let got = send(http.post(url("/v1/kv/range")).json(&json!({"key": "big"}))).await;
    assert_eq!(got.1["kvs"][0]["value"], at_limit.as_str());

    // Empty keys.
    for path in ["/v1/kv/put", "/v1/kv/range", "/v1/kv/delete"] {
        let got = send(http.post(url(path)).json(&json!({"key": "", "value": "v"}))).await;
        let message = assert_error(&format!("empty key on {path}"), &got, 400, "bad_request");
        assert!(message.contains("key"), "{path}: {message}");
    }
    let got = send(http.post(url("/v1/kv/watch")).json(&json!({"key": ""}))).await;
    assert_error("watch of an empty key", &got, 400, "bad_request");

    // Invalid ranges: range_end at or before key, or both range_end and prefix.
    for (key, range_end) in [("b", "a"), ("b", "b")] {
        let body = json!({"key": key, "range_end": range_end});
        let got = send(http.post(url("/v1/kv/range")).json(&body)).await;
        let message = assert_error(
            &format!("range {key}..{range_end}"),
            &got,
            400,
            "bad_request",
        );
        assert!(message.contains("range_end"), "{message}");
        let got = send(http.post(url("/v1/kv/delete")).json(&body)).await;
        assert_error(
            &format!("delete {key}..{range_end}"),
            &got,
            400,
            "bad_request",
        );
    }
    let body = json!({"key": "a", "range_end": "b", "prefix": true});
    let got = send(http.post(url("/v1/kv/range")).json(&body)).await;
    assert_error("prefix with range_end", &got, 400, "bad_request");

    // Unknown leases.
    let unknown_lease = 0x0bad_1ea5e_i64;
    let body = json!({"key": "leased", "value": "v", "lease": unknown_lease});
    let got = send(http.post(url("/v1/kv/put")).json(&body)).await;
    let message = assert_error("put on an unknown lease", &got, 404, "not_found");
    assert!(message.contains(&format!("{unknown_lease:x}")), "{message}");
    for path in [
        "/v1/lease/keepalive",
        "/v1/lease/timetolive",
        "/v1/lease/revoke",
    ] {
        let got = send(http.post(url(path)).json(&json!({"id": unknown_lease}))).await;
        assert_error(
            &format!("{path} of an unknown lease"),
            &got,
            404,
            "not_found",
        );
    }
    let got = send(http.post(url("/v1/lease/grant")).json(&json!({"ttl": 0}))).await;
    assert_error("lease with ttl 0", &got, 400, "bad_request");

    // Malformed bodies.
    let malformed = [
        ("truncated JSON", "{\"key\": "),
        ("not JSON", "key=a&value=b"),
        ("wrong type", "{\"key\": 5}"),
        ("missing key", "{\"value\": \"v\"}"),
        ("bad base64", "{\"key\": {\"b64\": \"!!\"}}"),
        ("empty body", ""),
    ];
    for (what, body) in malformed {
        let request = http
            .post(url("/v1/kv/put"))
            .header("content-type", "application/json")
            .body(body);
        let message = assert_error(what, &send(request).await, 400, "bad_request");
        assert!(message.contains("JSON"), "{what}: {message}");
    }
    let request = http
        .post(url("/v1/kv/put"))
        .body("{\"key\":\"a\",\"value\":\"b\"}");
    let message = assert_error("no content-type", &send(request).await, 400, "bad_request");
    assert!(message.contains("application/json"), "{message}");
    let request = http
        .post(url("/v1/kv/put"))
        .header("content-type", "text/plain")
        .body("{\"key\":\"a\",\"value\":\"b\"}");
    assert_error("text/plain body", &send(request).await, 400, "bad_request");
    let got = send(http.get(url("/v1/kv/watch?key=a&start_revision=minus-one"))).await;
    assert_error("bad watch query", &got, 400, "bad_request");

    // Routes and methods.
    let got = send(http.get(url("/v1/kv/put"))).await;
    assert_error("GET /v1/kv/put", &got, 405, "method_not_allowed");
    let got = send(http.delete(url("/v1/kv/range"))).await;
    assert_error("DELETE /v1/kv/range", &got, 405, "method_not_allowed");
    let got = send(http.get(url("/v1/kv/nope"))).await;
    assert_error("unknown route", &got, 404, "not_found");
    let got = send(http.post(url("/v2/kv/put")).json(&json!({"key": "a"}))).await;
    assert_error("unknown version", &got, 404, "not_found");
    let got = send(http.delete(url("/v1/cluster/members/abc"))).await;
    assert_error("member id that is not a number", &got, 400, "bad_request");

    // Revisions: the future, and the compacted past.
    let mut last = before.header.revision;
    for n in 0..5 {
        last = cluster
            .client()
            .put("history", format!("v{n}"))
            .await
            .unwrap()
            .header
            .revision;
    }
    let body = json!({"key": "history", "revision": last + 100});
    let got = send(http.post(url("/v1/kv/range")).json(&body)).await;
    let message = assert_error("read at a future revision", &got, 400, "future_revision");
    assert!(message.contains(&(last + 100).to_string()), "{message}");
    let compact_at = last - 2;
    let got = send(
        http.post(url("/v1/kv/compact"))
            .json(&json!({"revision": compact_at})),
    )
    .await;
    assert_eq!(got.0, StatusCode::OK, "compact: {}", got.1);
    let got = send(
        http.post(url("/v1/kv/compact"))
            .json(&json!({"revision": compact_at})),
    )
    .await;
    assert_error("compacting twice", &got, 410, "compacted");
    let got = send(
        http.post(url("/v1/kv/compact"))
            .json(&json!({"revision": last + 100})),
    )
    .await;
    assert_error("compacting the future", &got, 400, "future_revision");
    let body = json!({"key": "history", "revision": compact_at - 1});
    let got = send(http.post(url("/v1/kv/range")).json(&body)).await;
    let message = assert_error("read below the compaction", &got, 410, "compacted");
    assert!(message.contains(&compact_at.to_string()), "{message}");
    let body = json!({"key": "history", "revision": compact_at});
    let got = send(http.post(url("/v1/kv/range")).json(&body)).await;
    assert_eq!(got.0, StatusCode::OK, "read at the compaction: {}", got.1);
    let body = json!({"key": "history", "start_revision": compact_at - 1});
    let got = send(http.post(url("/v1/kv/watch")).json(&body)).await;
    assert_error("watch from a compacted revision", &got, 410, "compacted");
    let got = send(http.get(url(&format!(
        "/v1/kv/watch?key=history&start_revision={}",
        compact_at - 1
    ))))
    .await;
    assert_error(
        "GET watch from a compacted revision",
        &got,
        410,
        "compacted",
    );

    // Nothing above broke the node: the key written first reads back, writes still work,
    // and the log shows no panic and no ERROR line.
    let client = cluster.client();
    assert_eq!(
        client.get("before").await.unwrap().as_deref(),
        Some(&b"intact"[..])
    );
    client.put("after", "fine").await.unwrap();
    assert_eq!(
        client.get("after").await.unwrap().as_deref(),
        Some(&b"fine"[..])
    );
    node.assert_no_panic();
    let logs = node.logs();
    assert!(!logs.contains(" ERROR "), "unexpected ERROR lines:\n{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_cli_against_a_dead_endpoint_fails_with_one_line_naming_it() {
    let endpoint = dead_endpoint();
    let started = std::time::Instant::now();
    let output = cli(std::slice::from_ref(&endpoint), &["kv", "get", "k"]);
    let elapsed = started.elapsed();
    let line = failure_line(&output);
    let host_port = endpoint.trim_start_matches("http://");
    assert!(
        line.contains(host_port),
        "does not name {host_port}: {line}"
    );
    assert_eq!(
        stderr_lines(&output).len(),
        1,
        "more than the ✘ line on stderr: {:?}",
        stderr_lines(&output)
    );
    assert!(output.stdout.is_empty(), "stdout: {:?}", output.stdout);
    // A wrong port is reported after the CLI's connect timeout, not the whole request timeout.
    assert!(
        elapsed < Duration::from_secs(10),
        "took {elapsed:?} to report that nothing listens"
    );
}

/// Endpoints that are not the native API: each gets one line saying what is wrong with it or
/// which Strata listener answered, promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t22_cli_pointed_at_the_wrong_address_says_what_it_reached() {
    let extra: Vec<&str> = common::GRPC_ON_ANY_PORT
        .iter()
        .chain(common::REGISTRY_ON_ANY_PORT)
        .chain(common::NACOS_ON_ANY_PORT)
        .copied()
        .collect();
    let cluster = Cluster::start(1, &extra).await;
    let node = &cluster.nodes[0];
    let cases = [
        ("htp://127.0.0.1:7700".to_string(), "scheme \"htp\""),
        (format!("{}/v1", node.url()), "has a path"),
        (
            format!("http://{}", node.consul.as_ref().unwrap()),
            "Consul-compatible API",
        ),
        (
            format!("http://{}", node.nacos.as_ref().unwrap()),
            "Nacos-compatible API",
        ),
        (format!("http://{}", node.raft), "raft listener"),
        (
            format!("http://{}", node.grpc_addr()),
            "etcd v3 gRPC listener",
        ),
    ];
    for (endpoint, expected) in cases {
        let started = std::time::Instant::now();
        let output = cli(std::slice::from_ref(&endpoint), &["kv", "get", "k"]);
        let line = failure_line(&output);
        assert!(line.contains(expected), "{endpoint}: {line}");
        assert_eq!(
            stderr_lines(&output).len(),
            1,
            "{endpoint}: {:?}",
            stderr_lines(&output)
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{endpoint} took {:?}",
            started.elapsed()
        );
    }
}

/// `strata ... | head -1`: a reader that goes away ends the command quietly, as it ends any
/// Unix tool, with no panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t23_cli_exits_quietly_when_its_reader_goes_away() {
    let cluster = Cluster::start(1, &[]).await;
    let mut child = Command::new(strata_bin())
        .args([
            "--endpoints",
            &cluster.nodes[0].url(),
            "--output",
            "json",
            "cluster",
            "status",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before the command writes anything.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.trim().is_empty(), "stderr: {stderr}");
    assert_eq!(output.status.code(), Some(141), "{:?}", output.status);
}

/// Lease ids are accepted as `lease grant` prints them (hex) and as `--output json` shows
/// them (decimal); a bad TTL or id says how to write one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t24_lease_ids_and_durations_are_read_in_every_printed_form() {
    let cluster = Cluster::start(1, &[]).await;
    let endpoints = cluster.endpoints();
    let granted = common::cli_ok(&endpoints, &["--output", "json", "lease", "grant", "60"]);
    let id = serde_json::from_str::<Value>(&granted).unwrap()["id"]
        .as_i64()
        .unwrap();
    for form in [format!("{id:x}"), format!("0x{id:x}"), id.to_string()] {
        let shown = common::cli_ok(&endpoints, &["lease", "timetolive", &form]);
        assert!(shown.contains(&format!("{id:x}")), "{form}: {shown}");
    }
    let output = cli(&endpoints, &["lease", "grant", "ten"]);
    let line = failure_line(&output);
    assert!(line.contains("TTL \"ten\" is not a duration"), "{line}");
    let output = cli(&endpoints, &["lease", "revoke", "nothex"]);
    let line = failure_line(&output);
    assert!(line.contains("is not a lease id"), "{line}");
    // A bare number of seconds is a TTL everywhere, also where a unit used to be required.
    let registered = cli(
        &endpoints,
        &[
            "svc",
            "register",
            "web",
            "--id",
            "w1",
            "--address",
            "127.0.0.1",
            "--port",
            "80",
            "--ttl",
            "10",
        ],
    );
    assert!(
        registered.status.success(),
        "{}",
        String::from_utf8_lossy(&registered.stderr)
    );
}

/// `svc show` of a service nobody registered is an error, not an empty table; `lock` passes on
/// its command's exit status, as flock(1) does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t25_cli_reports_a_missing_service_and_passes_on_a_locked_commands_status() {
    let cluster = Cluster::start(1, &[]).await;
    let endpoints = cluster.endpoints();
    let output = cli(&endpoints, &["svc", "show", "nosuchsvc"]);
    let line = failure_line(&output);
    assert!(line.contains("no service \"nosuchsvc\""), "{line}");
    let output = cli(&endpoints, &["lock", "jobs", "--", "sh", "-c", "exit 3"]);
    assert_eq!(output.status.code(), Some(3), "{:?}", output);
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A port already in use is reported once, with the flag that changes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t26_a_busy_port_is_named_with_its_flag_once() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = vec!["dev".into(), "--data-dir".into()];
    args.push(dir.path().join("data").to_string_lossy().into_owned());
    args.extend(common::DEV_ON_ANY_PORT.iter().map(|s| s.to_string()));
    let flag = args.iter().position(|a| a == "--grpc-addr").unwrap();
    args[flag + 1] = port.clone();
    let output = run_with_deadline(Command::new(strata_bin()).args(&args), b"", EXIT_DEADLINE);
    let line = failure_line(&output);
    assert!(
        line.contains(&port) && line.contains("--grpc-addr"),
        "{line}"
    );
    assert_eq!(line.matches("in use").count(), 1, "{line}");
    assert!(!line.contains("os error"), "{line}");
    drop(busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t21_cli_txn_with_garbage_on_stdin_fails_with_one_line() {
    // The transaction is parsed before any node is contacted, so no node is needed.
    let output = cli_with_stdin(
        &[dead_endpoint()],
        &["kv", "txn"],
        b"this is { not a transaction",
    );
    let line = failure_line(&output);
    assert!(line.contains("transaction"), "{line}");
    assert_eq!(
        stderr_lines(&output).len(),
        1,
        "{:?}",
        stderr_lines(&output)
    );

    // Valid JSON of the wrong shape is refused the same way.
    let output = cli_with_stdin(&[dead_endpoint()], &["kv", "txn"], b"{\"compare\": 7}");
    let line = failure_line(&output);
    assert!(line.contains("transaction"), "{line}");
    assert_eq!(
        stderr_lines(&output).len(),
        1,
        "{:?}",
        stderr_lines(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_second_server_on_a_data_folder_in_use_is_refused() {
    let cluster = Cluster::start(1, &[]).await;
    let node = &cluster.nodes[0];
    cluster.client().put("k", "v1").await.unwrap();

    let output = server_on(&node.data_dir());
    let line = failure_line(&output);
    assert!(
        line.contains("is in use by another strata process"),
        "{line}"
    );
    assert!(
        line.contains(&node.data_dir().display().to_string()),
        "does not name the folder: {line}"
    );

    // The running node was not disturbed.
    let client = cluster.client();
    client.put("k", "v2").await.unwrap();
    assert_eq!(client.get("k").await.unwrap().as_deref(), Some(&b"v2"[..]));
    node.assert_no_panic();
}

/// Overwrites every database file in a data folder (all files but the lock and the version
/// file, whichever storage engine wrote them) with bytes that are no valid database.
/// Returns the files it overwrote.
fn garble_database(data_dir: &Path) -> Vec<PathBuf> {
    garble_database_files(data_dir, |name| name != "LOCK" && name != "VERSION")
}

/// Overwrites the files under `data_dir` whose name passes `select` with garbage; returns them.
fn garble_database_files(data_dir: &Path, select: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut garbled = Vec::new();
    let mut folders = vec![data_dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                folders.push(path);
                continue;
            }
            if !select(&entry.file_name().to_string_lossy()) {
                continue;
            }
            let garbage: Vec<u8> = (0..64 * 1024u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            std::fs::write(&path, garbage).unwrap();
            garbled.push(path);
        }
    }
    garbled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t40_garbled_database_is_refused_with_one_clear_line() {
    let mut cluster = Cluster::start(1, &[]).await;
    cluster.client().put("k", "v").await.unwrap();
    let node = cluster.node(1);
    assert_eq!(node.terminate().code(), Some(0));
    let data_dir = node.data_dir();
    let garbled = garble_database(&data_dir);
    assert!(!garbled.is_empty(), "no database file in {data_dir:?}");

    let output = server_on(&data_dir);
    let line = failure_line(&output);
    assert!(
        line.contains("damaged") || line.contains("corrupt"),
        "does not say the database is damaged: {line}"
    );
    assert!(
        line.contains(&data_dir.display().to_string()),
        "does not name the folder: {line}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("panicked"), "{stdout}");
    assert!(!stdout.contains("listening"), "server started: {stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t41_data_folder_of_another_format_version_is_refused() {
    let mut cluster = Cluster::start(1, &[]).await;
    let node = cluster.node(1);
    assert_eq!(node.terminate().code(), Some(0));
    let data_dir = node.data_dir();
    let version_file = data_dir.join("VERSION");
    assert!(version_file.exists(), "no VERSION file in {data_dir:?}");
    std::fs::write(&version_file, "99\n").unwrap();

    let output = server_on(&data_dir);
    let line = failure_line(&output);
    assert!(line.contains("format version 99"), "{line}");

    // The refusal left the folder alone: the version file still says 99.
    assert_eq!(std::fs::read_to_string(&version_file).unwrap(), "99\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t42_garbled_journal_is_refused_not_silently_dropped() {
    let mut cluster = Cluster::start(1, &[]).await;
    cluster.client().put("k", "v").await.unwrap();
    let node = cluster.node(1);
    assert_eq!(node.terminate().code(), Some(0));
    let data_dir = node.data_dir();
    let journals: Vec<PathBuf> = garble_database_files(&data_dir, |name| name.ends_with(".jnl"));
    assert!(!journals.is_empty(), "no journal file in {data_dir:?}");

    // Either the node refuses the folder, or it starts with every acknowledged write; it
    // must never come up as a blank node (that forgets its vote and its log).
    let addrs_file = data_dir.with_file_name("addrs.garbled.json");
    let log = std::fs::File::create(data_dir.with_file_name("log.garbled")).unwrap();
    let mut child = KillOnDrop(
        Command::new(strata_bin())
            .args(["server", "--id", "1"])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--api-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0"])
            .arg("--addrs-file")
            .arg(&addrs_file)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    enum Outcome {
        Exited(std::process::ExitStatus),
        Serving(String),
    }
    let outcome = common::wait_until(EXIT_DEADLINE, "node to exit or serve", || {
        let exited = child.0.try_wait().unwrap();
        let addrs = std::fs::read(&addrs_file).ok();
        async move {
            if let Some(status) = exited {
                return Some(Outcome::Exited(status));
            }
            let addrs: Value = serde_json::from_slice(&addrs?).ok()?;
            Some(Outcome::Serving(addrs["api"].as_str()?.to_string()))
        }
    })
    .await;
    match outcome {
        Outcome::Exited(status) => assert!(!status.success(), "exited 0 on a garbled journal"),
        Outcome::Serving(api) => {
            let request = json!({"key": "k", "serializable": true});
            let got = send(
                common::http_client()
                    .post(format!("http://{api}/v1/kv/range"))
                    .json(&request),
            )
            .await;
            assert_eq!(
                got.1["kvs"][0]["value"], "v",
                "acknowledged write lost: {}",
                got.1
            );
        }
    }
}

fn check_config(path: &Path) -> Output {
    let mut command = Command::new(strata_bin());
    command.arg("server").arg("--check-config").arg(path);
    run_with_deadline(&mut command, b"", EXIT_DEADLINE)
}

#[test]
fn t50_check_config_names_the_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    for (file, text, key) in [
        (
            "nested.toml",
            "[kv]\nmax_request_bytez = \"4KiB\"\n",
            "max_request_bytez",
        ),
        ("top.toml", "id = 1\ndata_folder = \"x\"\n", "data_folder"),
        ("section.toml", "[kvv]\nmax_txn_ops = 3\n", "kvv"),
    ] {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        let line = failure_line(&check_config(&path));
        assert!(line.contains(key), "{file}: does not name {key}: {line}");
    }

    // A known key with a value out of range names the key too.
    let path = dir.path().join("tiny.toml");
    std::fs::write(&path, "[kv]\nmax_request_bytes = \"10B\"\n").unwrap();
    let line = failure_line(&check_config(&path));
    assert!(line.contains("max_request_bytes"), "{line}");

    let line = failure_line(&check_config(&dir.path().join("missing.toml")));
    assert!(line.contains("missing.toml"), "{line}");
}

#[test]
fn t51_check_config_accepts_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("valid.toml");
    std::fs::write(
        &path,
        "id = 3\n[kv]\nmax_request_bytes = \"4KiB\"\n[raft]\nheartbeat_interval = \"100ms\"\n",
    )
    .unwrap();
    let output = check_config(&path);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("is valid"));
}

#[test]
fn t52_sample_config_passes_check_config() {
    let mut command = Command::new(strata_bin());
    command.args(["server", "--sample-config"]);
    let sample = run_with_deadline(&mut command, b"", EXIT_DEADLINE);
    assert!(sample.status.success());
    let text = String::from_utf8(sample.stdout).unwrap();
    assert!(text.contains("max_request_bytes"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sample.toml");
    std::fs::write(&path, &text).unwrap();
    let output = check_config(&path);
    assert!(
        output.status.success(),
        "sample config does not pass --check-config: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
