//! The monitoring center against real processes: targets found without configuration and
//! moved when their scraper dies, samples acknowledged before a kill -9 still there after,
//! PromQL answers equal to a real Prometheus 2.42's on the same samples, and every Strata
//! `/metrics` accepted by `promtool check metrics`.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use strata_monitor::model::Labels;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A node's config with a fast scrape interval.
fn monitor_config(dir: &Path, interval: &str) -> String {
    let path = dir.join(format!("monitor-{interval}.toml"));
    std::fs::write(
        &path,
        format!("[monitor]\nscrape_interval = \"{interval}\"\nscrape_timeout = \"{interval}\"\n"),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// A tiny `/metrics` server that records when it was scraped.
struct MetricsServer {
    port: u16,
    hits: Arc<Mutex<Vec<(Instant, u64)>>>,
}

async fn metrics_server() -> MetricsServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let record = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let n = {
                    let mut hits = record.lock().unwrap();
                    let n = hits.len() as u64 + 1;
                    hits.push((Instant::now(), n));
                    n
                };
                let body = format!(
                    "# HELP demo_requests_total Requests served.\n# TYPE demo_requests_total counter\ndemo_requests_total{{path=\"/\"}} {}\n# TYPE demo_temperature gauge\ndemo_temperature 21.5\n",
                    n * 10
                );
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    MetricsServer { port, hits }
}

async fn get_json(url: &str) -> Value {
    let response = http_client().get(url).send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{url}: {status} {body}");
    body
}

async fn targets(node: &NodeProc) -> Vec<Value> {
    get_json(&format!("{}/api/v1/targets", node.url())).await["data"]["activeTargets"]
        .as_array()
        .unwrap()
        .clone()
}

async fn register_metrics_instance(node: &NodeProc, port: u16) {
    let body = json!({"service": "demo", "id": "demo-1", "address": "127.0.0.1", "port": port,
                      "meta": {"metrics_port": port.to_string(), "metrics_path": "/metrics"}});
    let response = http_client()
        .post(format!("{}/v1/registry/instances", node.url()))
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

#[tokio::test]
async fn t01_nodes_and_registered_instances_are_scraped_without_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let config = monitor_config(dir.path(), "1s");
    let node = NodeProc::start(1, dir.path(), Some("1=127.0.0.1:0"), &["--config", &config]).await;
    let server = metrics_server().await;
    register_metrics_instance(&node, server.port).await;
    let instance = format!("127.0.0.1:{}", server.port);
    let found = wait_until(Duration::from_secs(20), "both targets up", || async {
        let all = targets(&node).await;
        let up = |job: &str| {
            all.iter()
                .find(|t| t["labels"]["job"] == job && t["health"] == "up")
                .cloned()
        };
        Some((up("strata")?, up("demo")?))
    })
    .await;
    assert_eq!(found.0["labels"]["instance"], node.api.as_str());
    assert_eq!(found.1["labels"]["instance"], instance.as_str());
    assert_eq!(found.1["scrapeUrl"], format!("http://{instance}/metrics"));
    // The scraped samples are queryable with the target's labels.
    let series = get_json(&format!(
        "{}/api/v1/series?match[]=demo_requests_total&match[]=up",
        node.url()
    ))
    .await;
    let series = series["data"].as_array().unwrap();
    assert!(
        series.iter().any(|s| s["__name__"] == "demo_requests_total"
            && s["job"] == "demo"
            && s["instance"] == instance.as_str()
            && s["path"] == "/"),
        "{series:?}"
    );
    assert!(series
        .iter()
        .any(|s| s["__name__"] == "up" && s["job"] == "strata"));
    let metadata = get_json(&format!(
        "{}/api/v1/metadata?metric=demo_requests_total",
        node.url()
    ))
    .await;
    assert_eq!(
        metadata["data"]["demo_requests_total"][0]["type"],
        "counter"
    );
    // The scrape interval holds: about one hit per second, never two in one slot.
    let hits = wait_until(Duration::from_secs(10), "five scrapes", || async {
        let hits = server.hits.lock().unwrap().clone();
        (hits.len() >= 5).then_some(hits)
    })
    .await;
    for pair in hits.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap > Duration::from_millis(500),
            "two scrapes {gap:?} apart"
        );
    }
}

#[tokio::test]
async fn t02_every_strata_metrics_page_passes_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let config = monitor_config(dir.path(), "1s");
    let mut args = vec!["--config", config.as_str()];
    // Every optional listener on, so every component's metrics are on the page.
    args.extend_from_slice(REGISTRY_ON_ANY_PORT);
    args.extend_from_slice(NACOS_ON_ANY_PORT);
    args.extend_from_slice(&[
        "--grpc-addr",
        "127.0.0.1:0",
        "--listen",
        "gateway=127.0.0.1:0",
        "--listen",
        "xds=127.0.0.1:0",
    ]);
    let node = NodeProc::start(1, dir.path(), Some("1=127.0.0.1:0"), &args).await;
    // Let every component publish something (a scrape or two of itself by the monitor).
    wait_until(Duration::from_secs(20), "a first self-scrape", || async {
        let all = targets(&node).await;
        all.iter().any(|t| t["health"] == "up").then_some(())
    })
    .await;
    let body = http_client()
        .get(format!("{}/metrics", node.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}"
    );
    assert!(
        body.contains("strata_monitor_head_series"),
        "the monitor's own metrics are served"
    );
}

/// Remote-writes `batch` to `url`; true when acknowledged.
async fn remote_write(url: &str, batch: &[(Labels, i64, f64)]) -> bool {
    let body = strata_monitor::remote::encode(batch);
    match http_client()
        .post(url)
        .header("content-encoding", "snappy")
        .header("content-type", "application/x-protobuf")
        .header("x-prometheus-remote-write-version", "0.1.0")
        .body(body)
        .timeout(Duration::from_secs(5))
        .send()
        .await
    {
        Ok(r) => r.status().is_success(),
        Err(_) => false,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn t03_samples_acknowledged_before_a_kill_9_are_there_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProc::start(1, dir.path(), Some("1=127.0.0.1:0"), &[]).await;
    let url = format!("{}/api/v1/write", node.url());
    let start = now_ms() - 600_000;
    let acked = Arc::new(Mutex::new(0i64));
    let writer = {
        let acked = acked.clone();
        tokio::spawn(async move {
            // Bounded: at most 5000 batches of 20 series.
            for step in 0..5000i64 {
                let batch: Vec<_> = (0..20)
                    .map(|s| {
                        (
                            Labels::from_pairs(&[
                                ("__name__", "ingest_test"),
                                ("series", &s.to_string()),
                            ]),
                            start + step * 100,
                            (step * 20 + s) as f64,
                        )
                    })
                    .collect();
                if !remote_write(&url, &batch).await {
                    return;
                }
                *acked.lock().unwrap() = step + 1;
            }
        })
    };
    wait_until(
        Duration::from_secs(30),
        "200 acknowledged batches",
        || async { (*acked.lock().unwrap() >= 200).then_some(()) },
    )
    .await;
    node.kill9();
    let _ = writer.await;
    let acked = *acked.lock().unwrap();
    node.restart().await;
    let query = format!(
        "{}/api/v1/query?query=count_over_time(ingest_test[20m])&time={}",
        node.url(),
        (start + 600_000) as f64 / 1000.0
    );
    let counts = wait_until(
        Duration::from_secs(20),
        "the query after restart",
        || async {
            let body = get_json(&query).await;
            let result = body["data"]["result"].as_array()?.clone();
            (!result.is_empty()).then_some(result)
        },
    )
    .await;
    assert_eq!(counts.len(), 20);
    for c in counts {
        let n: i64 = c["value"][1].as_str().unwrap().parse().unwrap();
        assert!(
            n >= acked,
            "series {} has {n} samples, {acked} were acknowledged",
            c["metric"]["series"]
        );
    }
}

#[tokio::test]
async fn t04_a_target_moves_when_its_scraper_is_killed_and_no_slot_is_scraped_twice() {
    let mut cluster = Cluster::start_with_config(
        3,
        "[monitor]\nscrape_interval = \"1s\"\nscrape_timeout = \"1s\"\n",
        &[],
    )
    .await;
    let nodes = &mut cluster.nodes;
    let server = metrics_server().await;
    register_metrics_instance(&nodes[0], server.port).await;
    let owner = wait_until(Duration::from_secs(30), "the target scraped", || async {
        let all = targets(&nodes[0]).await;
        let t = all.iter().find(|t| t["labels"]["job"] == "demo")?;
        let owner = t["scrapedBy"].as_u64()?;
        let hits = server.hits.lock().unwrap().len();
        (hits >= 3).then_some(owner)
    })
    .await;
    let victim = nodes.iter().position(|n| n.id == owner).unwrap();
    let survivor = (victim + 1) % nodes.len();
    nodes[victim].kill9();
    let killed_at = Instant::now();
    let before = server.hits.lock().unwrap().len();
    let new_owner = wait_until(
        Duration::from_secs(30),
        "another node scraping the target",
        || async {
            let all = targets(&nodes[survivor]).await;
            let t = all.iter().find(|t| t["labels"]["job"] == "demo")?;
            let by = t["scrapedBy"].as_u64()?;
            (by != owner && server.hits.lock().unwrap().len() >= before + 3).then_some(by)
        },
    )
    .await;
    assert_ne!(new_owner, owner);
    assert!(killed_at.elapsed() < Duration::from_secs(30));
    let hits = server.hits.lock().unwrap().clone();
    for pair in hits.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap > Duration::from_millis(500),
            "scrapes {} and {} only {gap:?} apart",
            pair[0].1,
            pair[1].1
        );
    }
}

/// A free loopback port for a program that cannot report the port it bound.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A program the tests start beside Strata (Prometheus, Alertmanager), killed on drop.
struct External {
    child: Child,
    url: String,
}

impl Drop for External {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program` with `args` and `--web.listen-address` on a free port, until its
/// `/-/ready` answers; retried on another port if the port was taken meanwhile.
async fn start_external(dir: &Path, program: &str, args: &[String]) -> External {
    let log_path = dir.join(format!("{program}.log"));
    for _attempt in 0..5 {
        let port = free_port();
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(program)
            .args(args)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program} (a Debian package scripts/test.sh installs): {e}")
            });
        let mut external = External {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = external.child.try_wait() {
                break;
            }
            if let Ok(r) = http_client()
                .get(format!("{}/-/ready", external.url))
                .send()
                .await
            {
                if r.status().is_success() {
                    return external;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = external.child.kill();
    }
    panic!(
        "{program} did not start: {}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
}

async fn start_prometheus(dir: &Path, config: &str) -> External {
    let cfg = dir.join("prometheus.yml");
    std::fs::write(&cfg, config).unwrap();
    let args = [
        format!("--config.file={}", cfg.display()),
        format!("--storage.tsdb.path={}", dir.join("prom-data").display()),
        "--web.enable-remote-write-receiver".to_string(),
    ];
    start_external(dir, "prometheus", &args).await
}

/// Node-exporter-like samples: CPU counters (one resets), memory and filesystem gauges, a
/// request-duration histogram, an info series, and a series that stops halfway.
fn dataset(end_ms: i64) -> Vec<(Labels, i64, f64)> {
    let steps = 240i64;
    let start = end_ms - (steps - 1) * 15_000;
    let mut out = Vec::new();
    for i in 0..steps {
        let t = start + i * 15_000;
        let x = i as f64;
        for cpu in 0..2 {
            for (m, mode) in ["idle", "user", "system"].iter().enumerate() {
                let rate = 0.3 + 0.2 * m as f64 + 0.1 * cpu as f64;
                let mut v = 1000.0 + rate * 15.0 * x + (x * 0.37 + m as f64).sin().abs() * 3.0;
                if cpu == 1 && *mode == "user" && i >= 150 {
                    v -= 1000.0 + rate * 15.0 * 150.0;
                }
                out.push((
                    Labels::from_pairs(&[
                        ("__name__", "node_cpu_seconds_total"),
                        ("instance", "host:9100"),
                        ("job", "node"),
                        ("cpu", &cpu.to_string()),
                        ("mode", mode),
                    ]),
                    t,
                    (v * 1000.0).round() / 1000.0,
                ));
            }
            out.push((
                Labels::from_pairs(&[
                    ("__name__", "cpu_info"),
                    ("cpu", &cpu.to_string()),
                    ("core", &format!("core{cpu}")),
                ]),
                t,
                1.0,
            ));
        }
        out.push((
            Labels::from_pairs(&[
                ("__name__", "node_memory_MemFree_bytes"),
                ("instance", "host:9100"),
                ("job", "node"),
            ]),
            t,
            (6e8 + 2e8 * (x / 20.0).sin()).round(),
        ));
        for (k, mount) in ["/", "/home"].iter().enumerate() {
            out.push((
                Labels::from_pairs(&[
                    ("__name__", "node_filesystem_avail_bytes"),
                    ("mountpoint", mount),
                    ("job", "node"),
                ]),
                t,
                (1e10 - 1e6 * x * (k + 1) as f64).round(),
            ));
        }
        for handler in ["a", "b"] {
            let scale = if handler == "a" { 1.0 } else { 2.5 };
            let mut cumulative = 0.0;
            for (b, le) in ["0.1", "0.5", "1", "+Inf"].iter().enumerate() {
                cumulative += scale * (b as f64 + 1.0) * x * (1.0 + 0.1 * (x * 0.1).cos());
                out.push((
                    Labels::from_pairs(&[
                        ("__name__", "http_request_duration_seconds_bucket"),
                        ("handler", handler),
                        ("le", le),
                    ]),
                    t,
                    cumulative.round(),
                ));
            }
            out.push((
                Labels::from_pairs(&[
                    ("__name__", "http_request_duration_seconds_count"),
                    ("handler", handler),
                ]),
                t,
                cumulative.round(),
            ));
            out.push((
                Labels::from_pairs(&[
                    ("__name__", "http_request_duration_seconds_sum"),
                    ("handler", handler),
                ]),
                t,
                (cumulative * 0.37 * 100.0).round() / 100.0,
            ));
        }
        if i < steps / 2 {
            out.push((
                Labels::from_pairs(&[("__name__", "short_lived"), ("job", "batch")]),
                t,
                x,
            ));
        }
    }
    out
}

/// The expressions both must answer alike.
const EXPRESSIONS: &[&str] = &[
    "node_memory_MemFree_bytes",
    "node_cpu_seconds_total{mode=~\"u.*|idle\", cpu!=\"1\"}",
    "short_lived",
    "rate(node_cpu_seconds_total[5m])",
    "irate(node_cpu_seconds_total[5m])",
    "increase(node_cpu_seconds_total[10m])",
    "delta(node_memory_MemFree_bytes[10m])",
    "idelta(node_memory_MemFree_bytes[10m])",
    "deriv(node_memory_MemFree_bytes[10m])",
    "predict_linear(node_filesystem_avail_bytes[30m], 3600)",
    "resets(node_cpu_seconds_total[1h])",
    "changes(node_memory_MemFree_bytes[30m])",
    "sum by (mode) (rate(node_cpu_seconds_total[5m]))",
    "avg without (cpu) (rate(node_cpu_seconds_total[5m]))",
    "max(node_memory_MemFree_bytes)",
    "min by (mountpoint) (node_filesystem_avail_bytes)",
    "count by (mode) (node_cpu_seconds_total)",
    "group by (cpu) (node_cpu_seconds_total)",
    "stddev(rate(node_cpu_seconds_total[5m]))",
    "stdvar by (cpu) (rate(node_cpu_seconds_total[5m]))",
    "quantile(0.9, rate(node_cpu_seconds_total[5m]))",
    "topk(2, rate(node_cpu_seconds_total[5m]))",
    "bottomk(2, node_filesystem_avail_bytes)",
    "count_values(\"mode_count\", count by (mode) (node_cpu_seconds_total))",
    "histogram_quantile(0.9, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))",
    "histogram_quantile(0.5, rate(http_request_duration_seconds_bucket[5m]))",
    "rate(http_request_duration_seconds_sum[5m]) / rate(http_request_duration_seconds_count[5m])",
    "node_cpu_seconds_total * on (cpu) group_left (core) cpu_info",
    "rate(node_cpu_seconds_total[5m]) > 0.45",
    "rate(node_cpu_seconds_total[5m]) > bool 0.45",
    "node_filesystem_avail_bytes - ignoring (mountpoint) group_left node_memory_MemFree_bytes",
    "node_cpu_seconds_total{mode=\"idle\"} and on (cpu) cpu_info{core=\"core0\"}",
    "node_cpu_seconds_total{mode=\"idle\"} or node_memory_MemFree_bytes",
    "node_cpu_seconds_total unless on (cpu) cpu_info{core=\"core1\"}",
    "node_memory_MemFree_bytes offset 10m",
    "max_over_time(node_memory_MemFree_bytes[10m])",
    "min_over_time(node_memory_MemFree_bytes[10m])",
    "avg_over_time(node_memory_MemFree_bytes[10m])",
    "sum_over_time(node_memory_MemFree_bytes[10m])",
    "count_over_time(node_memory_MemFree_bytes[10m])",
    "last_over_time(node_memory_MemFree_bytes[10m])",
    "present_over_time(short_lived[10m])",
    "quantile_over_time(0.75, node_memory_MemFree_bytes[10m])",
    "stddev_over_time(node_memory_MemFree_bytes[10m])",
    "stdvar_over_time(node_memory_MemFree_bytes[10m])",
    "holt_winters(node_memory_MemFree_bytes[10m], 0.5, 0.5)",
    "max_over_time(rate(node_cpu_seconds_total[1m])[10m:1m])",
    "avg_over_time(node_memory_MemFree_bytes[15m:2m] offset 5m)",
    "abs(-node_memory_MemFree_bytes)",
    "ceil(rate(node_cpu_seconds_total[5m]) * 10)",
    "floor(rate(node_cpu_seconds_total[5m]) * 10)",
    "round(node_memory_MemFree_bytes, 1000)",
    "sqrt(node_memory_MemFree_bytes)",
    "ln(node_memory_MemFree_bytes)",
    "log2(node_memory_MemFree_bytes)",
    "log10(node_memory_MemFree_bytes)",
    "exp(rate(node_cpu_seconds_total[5m]))",
    "sgn(delta(node_memory_MemFree_bytes[5m]))",
    "clamp(node_memory_MemFree_bytes, 5e8, 7e8)",
    "clamp_min(node_memory_MemFree_bytes, 6e8)",
    "clamp_max(node_memory_MemFree_bytes, 6e8)",
    "absent(nonexistent_metric{job=\"x\"})",
    "absent(node_memory_MemFree_bytes)",
    "absent_over_time(short_lived[5m])",
    "scalar(sum(node_memory_MemFree_bytes))",
    "vector(1) + 2",
    "time()",
    "timestamp(node_memory_MemFree_bytes)",
    "label_replace(node_memory_MemFree_bytes, \"host\", \"$1\", \"instance\", \"(.*):.*\")",
    "label_join(node_filesystem_avail_bytes, \"id\", \"-\", \"job\", \"mountpoint\")",
    "sort(node_filesystem_avail_bytes)",
    "sort_desc(rate(node_cpu_seconds_total[5m]))",
    "hour(timestamp(node_memory_MemFree_bytes))",
    "minute(timestamp(node_memory_MemFree_bytes))",
    "day_of_week(timestamp(node_memory_MemFree_bytes))",
    "day_of_month(timestamp(node_memory_MemFree_bytes))",
    "days_in_month(timestamp(node_memory_MemFree_bytes))",
    "month(timestamp(node_memory_MemFree_bytes))",
    "year(timestamp(node_memory_MemFree_bytes))",
    "sin(rate(node_cpu_seconds_total[5m])) + cos(rate(node_cpu_seconds_total[5m]))",
    "atan2(rate(node_cpu_seconds_total[5m]), 1)",
    "deg(rad(node_memory_MemFree_bytes))",
    "node_memory_MemFree_bytes % 7 ^ 2",
    "-node_memory_MemFree_bytes / 0",
    "sum(rate(node_cpu_seconds_total[5m])) by (cpu) * 100 / on (cpu) group_left count by (cpu) (node_cpu_seconds_total)",
];

fn canonical(result: &Value) -> BTreeMap<String, Vec<(f64, String)>> {
    let mut out = BTreeMap::new();
    let rows = match result["resultType"].as_str() {
        Some("scalar") | Some("string") => {
            let p = &result["result"];
            out.insert(
                "{}".to_string(),
                vec![(p[0].as_f64().unwrap(), p[1].as_str().unwrap().to_string())],
            );
            return out;
        }
        _ => result["result"].as_array().unwrap(),
    };
    for row in rows {
        let key = row["metric"].to_string();
        let points: Vec<(f64, String)> = match row.get("value") {
            Some(p) => vec![(p[0].as_f64().unwrap(), p[1].as_str().unwrap().to_string())],
            None => row["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_f64().unwrap(), p[1].as_str().unwrap().to_string()))
                .collect(),
        };
        assert!(
            out.insert(key.clone(), points).is_none(),
            "duplicate series {key}"
        );
    }
    out
}

fn same_value(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => {
            (x.is_nan() && y.is_nan()) || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1e-300)
        }
        _ => false,
    }
}

fn compare(what: &str, ours: &Value, theirs: &Value) -> Option<String> {
    if ours["status"] != theirs["status"] {
        return Some(format!(
            "{what}: status differs\n  strata:     {ours}\n  prometheus: {theirs}"
        ));
    }
    if ours["status"] != "success" {
        return None;
    }
    let (a, b) = (&ours["data"], &theirs["data"]);
    if a["resultType"] != b["resultType"] {
        return Some(format!(
            "{what}: result type {} vs {}",
            a["resultType"], b["resultType"]
        ));
    }
    let (a, b) = (canonical(a), canonical(b));
    if a.keys().collect::<Vec<_>>() != b.keys().collect::<Vec<_>>() {
        return Some(format!(
            "{what}: series differ\n  strata:     {:?}\n  prometheus: {:?}",
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>()
        ));
    }
    for (key, pa) in &a {
        let pb = &b[key];
        let same = pa.len() == pb.len()
            && pa
                .iter()
                .zip(pb)
                .all(|(x, y)| (x.0 - y.0).abs() < 1e-6 && same_value(&x.1, &y.1));
        if !same {
            return Some(format!(
                "{what}: {key} differs\n  strata:     {pa:?}\n  prometheus: {pb:?}"
            ));
        }
    }
    None
}

#[tokio::test]
async fn t05_promql_answers_equal_prometheus_2_42s_on_the_same_samples() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(1, dir.path(), Some("1=127.0.0.1:0"), &[]).await;
    let prom = start_prometheus(dir.path(), "global:\n  scrape_interval: 1h\n").await;
    // Aligned to the step so that instant and range queries land on samples and between them.
    let end = (now_ms() - 120_000) / 15_000 * 15_000;
    let data = dataset(end);
    let mut by_time: BTreeMap<i64, Vec<(Labels, i64, f64)>> = BTreeMap::new();
    for s in data {
        by_time.entry(s.1).or_default().push(s);
    }
    let times: Vec<i64> = by_time.keys().copied().collect();
    for chunk in times.chunks(20) {
        let batch: Vec<_> = chunk.iter().flat_map(|t| by_time[t].clone()).collect();
        assert!(remote_write(&format!("{}/api/v1/write", node.url()), &batch).await);
        assert!(remote_write(&format!("{}/api/v1/write", prom.url), &batch).await);
    }
    let mut failures = Vec::new();
    // Comparisons where Prometheus returned data: equal empty answers prove little.
    let mut nonempty = 0;
    let instants = [end, end - 600_000 + 7_000, end - 3_000_000];
    for expr in EXPRESSIONS {
        for t in instants {
            let q = format!(
                "/api/v1/query?query={}&time={}",
                strata_monitor::model::url_encode(expr),
                t as f64 / 1000.0
            );
            let ours = get_raw(&format!("{}{q}", node.url())).await;
            let theirs = get_raw(&format!("{}{q}", prom.url)).await;
            if answered(&theirs) {
                nonempty += 1;
            }
            if let Some(f) = compare(&format!("{expr} @ {t}"), &ours, &theirs) {
                failures.push(f);
            }
        }
        let q = format!(
            "/api/v1/query_range?query={}&start={}&end={}&step=60",
            strata_monitor::model::url_encode(expr),
            (end - 3_000_000) as f64 / 1000.0,
            end as f64 / 1000.0
        );
        let ours = get_raw(&format!("{}{q}", node.url())).await;
        let theirs = get_raw(&format!("{}{q}", prom.url)).await;
        if answered(&theirs) {
            nonempty += 1;
        }
        if let Some(f) = compare(&format!("{expr} (range)"), &ours, &theirs) {
            failures.push(f);
        }
    }
    // absent() of a present series, a series that stopped half an hour ago, filters that
    // keep nothing at some instants: 18 of the 340 answers are empty on both sides.
    assert!(
        nonempty >= EXPRESSIONS.len() * 4 - 20,
        "only {nonempty} of {} answers had data",
        EXPRESSIONS.len() * 4
    );
    assert!(
        failures.is_empty(),
        "{} of {} comparisons differ:\n{}",
        failures.len(),
        EXPRESSIONS.len() * 4,
        failures.join("\n")
    );
}

/// True when a query answer carries data (a scalar, or at least one series).
fn answered(body: &Value) -> bool {
    match body["data"]["resultType"].as_str() {
        Some("scalar") | Some("string") => true,
        _ => body["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
    }
}

async fn get_raw(url: &str) -> Value {
    let response = http_client().get(url).send().await.unwrap();
    response.json().await.unwrap()
}

#[tokio::test]
async fn t06_prometheus_discovers_registered_services_through_http_sd() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(1, dir.path(), Some("1=127.0.0.1:0"), &[]).await;
    let server = metrics_server().await;
    register_metrics_instance(&node, server.port).await;
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: strata-services\n    http_sd_configs:\n      - url: {}/v1/monitor/sd\n        refresh_interval: 1s\n",
        node.url()
    );
    let prom = start_prometheus(dir.path(), &config).await;
    let target = wait_until(
        Duration::from_secs(30),
        "Prometheus scraping the registered instance",
        || async {
            let body = get_raw(&format!("{}/api/v1/targets", prom.url)).await;
            body["data"]["activeTargets"]
                .as_array()?
                .iter()
                .find(|t| t["health"] == "up")
                .cloned()
        },
    )
    .await;
    assert_eq!(target["labels"]["job"], "demo");
    assert_eq!(
        target["labels"]["instance"],
        format!("127.0.0.1:{}", server.port)
    );
    assert_eq!(target["discoveredLabels"]["__meta_strata_service"], "demo");
    assert_eq!(
        target["discoveredLabels"]["__meta_strata_namespace"],
        "public"
    );
    assert!(!server.hits.lock().unwrap().is_empty());
}

/// A webhook receiver that keeps every body it is sent.
async fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::Json<Value>| {
            let keep = keep.clone();
            async move {
                keep.lock().unwrap().push(body.0);
                "ok"
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, got)
}

async fn start_alertmanager(dir: &Path) -> External {
    let cfg = dir.join("alertmanager.yml");
    std::fs::write(
        &cfg,
        "route:\n  receiver: nowhere\n  group_wait: 1s\n  group_interval: 1s\nreceivers:\n  - name: nowhere\n",
    )
    .unwrap();
    let args = [
        format!("--config.file={}", cfg.display()),
        format!("--storage.path={}", dir.join("am-data").display()),
        "--cluster.listen-address=".to_string(),
    ];
    start_external(dir, "prometheus-alertmanager", &args).await
}

#[tokio::test]
async fn t07_an_alert_fires_reaches_alertmanager_and_a_webhook_then_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let am = start_alertmanager(dir.path()).await;
    let (hook, received) = webhook().await;
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[monitor]\nscrape_interval = \"1s\"\nscrape_timeout = \"1s\"\nevaluation_interval = \"1s\"\nalertmanagers = [\"{}\"]\nwebhooks = [\"{hook}\"]\n",
            am.url
        ),
    )
    .unwrap();
    let node = NodeProc::start(
        1,
        dir.path(),
        Some("1=127.0.0.1:0"),
        &["--config", config.to_str().unwrap()],
    )
    .await;
    let server = metrics_server().await;
    register_metrics_instance(&node, server.port).await;
    let rules = "groups:\n  - name: demo\n    rules:\n      - alert: DemoHot\n        expr: demo_temperature > 20\n        for: 2s\n        labels:\n          severity: page\n        annotations:\n          summary: \"{{ $labels.instance }} is at {{ $value }} degrees\"\n      - record: demo:temperature:max\n        expr: max(demo_temperature)\n";
    let response = http_client()
        .post(format!("{}/v1/config/publish", node.url()))
        .json(&json!({"namespace": "public", "group": "monitor-rules", "data_id": "demo.yml", "content": rules}))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
    let instance = format!("127.0.0.1:{}", server.port);
    // Pending first, then firing at Alertmanager.
    let fired = wait_until(
        Duration::from_secs(30),
        "the alert active in Alertmanager",
        || async {
            let alerts = get_raw(&format!("{}/api/v2/alerts", am.url)).await;
            alerts
                .as_array()?
                .iter()
                .find(|a| a["labels"]["alertname"] == "DemoHot")
                .cloned()
        },
    )
    .await;
    assert_eq!(fired["labels"]["severity"], "page");
    assert_eq!(fired["labels"]["instance"], instance.as_str());
    assert_eq!(
        fired["annotations"]["summary"],
        format!("{instance} is at 21.5 degrees")
    );
    assert_eq!(fired["status"]["state"], "active");
    let ours = get_json(&format!("{}/api/v1/alerts", node.url())).await;
    let ours = ours["data"]["alerts"].as_array().unwrap().clone();
    assert!(
        ours.iter()
            .any(|a| a["labels"]["alertname"] == "DemoHot" && a["state"] == "firing"),
        "{ours:?}"
    );
    let rules_view = get_json(&format!("{}/api/v1/rules", node.url())).await;
    assert!(rules_view.to_string().contains("demo:temperature:max"));
    let recorded = get_json(&format!(
        "{}/api/v1/query?query=demo:temperature:max",
        node.url()
    ))
    .await;
    assert_eq!(recorded["data"]["result"][0]["value"][1], "21.5");
    // The webhook got the same payload.
    assert!(received.lock().unwrap().iter().any(|body| body
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x["labels"]["alertname"] == "DemoHot"))));
    // The instance goes away: its series go stale and the alert resolves everywhere.
    let response = http_client()
        .delete(format!(
            "{}/v1/registry/services/demo/instances/demo-1",
            node.url()
        ))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    wait_until(
        Duration::from_secs(30),
        "the alert resolved in Alertmanager",
        || async {
            let alerts = get_raw(&format!("{}/api/v2/alerts?active=true", am.url)).await;
            (!alerts
                .as_array()?
                .iter()
                .any(|a| a["labels"]["alertname"] == "DemoHot"))
            .then_some(())
        },
    )
    .await;
    // The webhook is notified on its own, not after Alertmanager: polled too.
    wait_until(
        Duration::from_secs(30),
        "the webhook to receive the resolution",
        || async {
            let resolved_sent = received.lock().unwrap().iter().any(|body| {
                body.as_array().is_some_and(|a| {
                    a.iter().any(|x| {
                        x["labels"]["alertname"] == "DemoHot"
                            && humantime::parse_rfc3339(x["endsAt"].as_str().unwrap_or(""))
                                .is_ok_and(|t| t <= SystemTime::now())
                    })
                })
            });
            resolved_sent.then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn t08_every_acknowledged_remote_write_survives_a_kill_9_of_the_node_that_took_it() {
    let mut cluster =
        Cluster::start_with_config(3, "[monitor]\nscrape_interval = \"1s\"\n", &[]).await;
    // Remote writes are acknowledged once a peer has them: wait until the first node
    // replicates to both others.
    let first = cluster.nodes[0].url();
    wait_until(Duration::from_secs(30), "two peers", || async {
        let stats = get_json(&format!("{first}/v1/monitor/stats")).await;
        (stats["data"]["peers"] == 2).then_some(())
    })
    .await;
    let url = format!("{first}/api/v1/write");
    let start = now_ms() - 600_000;
    let mut acked = 0i64;
    for step in 0..300i64 {
        let batch: Vec<_> = (0..10)
            .map(|s| {
                (
                    Labels::from_pairs(&[("__name__", "replicated"), ("series", &s.to_string())]),
                    start + step * 1000,
                    (step * 10 + s) as f64,
                )
            })
            .collect();
        // As a remote-write client does: a refused batch (503 while no peer has it yet) is
        // sent again; only an acknowledged one counts.
        wait_until(
            Duration::from_secs(10),
            "the batch acknowledged",
            || async { remote_write(&url, &batch).await.then_some(()) },
        )
        .await;
        acked = step + 1;
    }
    cluster.nodes[0].kill9();
    let at = (start + 300_000) as f64 / 1000.0;
    for node in &cluster.nodes[1..] {
        let body = get_json(&format!(
            "{}/api/v1/query?query=count_over_time(replicated[10m])&time={at}",
            node.url()
        ))
        .await;
        let result = body["data"]["result"].as_array().unwrap().clone();
        assert_eq!(result.len(), 10, "node {}: {body}", node.id);
        for r in result {
            let n: i64 = r["value"][1].as_str().unwrap().parse().unwrap();
            assert_eq!(
                n, acked,
                "node {} has {n} of {acked} acknowledged samples",
                node.id
            );
        }
    }
}

#[tokio::test]
async fn t09_an_opentelemetry_sdk_sends_metrics_and_traces_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(1, dir.path(), Some("1=127.0.0.1:0"), &[]).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/otel_export.py");
    let mut command = Command::new("python3");
    command.arg(script).arg(node.url());
    if let Some(token) = root_token() {
        command.env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            format!("authorization=Bearer {token}"),
        );
    }
    let out = command
        .output()
        .expect("python3 with opentelemetry-sdk (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "otel_export.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trace_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let q = |expr: &str| {
        format!(
            "{}/api/v1/query?query={}",
            node.url(),
            strata_monitor::model::url_encode(expr)
        )
    };
    let counter = get_json(&q("orders_placed_total")).await;
    let row = &counter["data"]["result"][0];
    assert_eq!(row["value"][1], "10", "{counter}");
    assert_eq!(row["metric"]["job"], "otel-demo");
    assert_eq!(row["metric"]["instance"], "demo-1");
    assert_eq!(row["metric"]["region"], "eu");
    let count = get_json(&q("checkout_latency_count")).await;
    assert_eq!(count["data"]["result"][0]["value"][1], "5", "{count}");
    let le = get_json(&q("checkout_latency_bucket{le=\"+Inf\"}")).await;
    assert_eq!(le["data"]["result"][0]["value"][1], "5", "{le}");
    let found = get_json(&format!(
        "{}/v1/monitor/traces?service=otel-demo",
        node.url()
    ))
    .await;
    let traces = found["traces"].as_array().unwrap();
    assert!(
        traces.iter().any(|t| t["trace_id"] == trace_id.as_str()),
        "{found}"
    );
    let trace = get_json(&format!("{}/v1/monitor/traces/{trace_id}", node.url())).await;
    let spans = trace["spans"].as_array().unwrap();
    let names: Vec<&str> = spans.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["checkout", "charge-card"], "{trace}");
    // The terminal waterfall draws both spans, the child under its parent.
    let waterfall = strata_command()
        .args(["--endpoints", &node.url(), "monitor", "trace", &trace_id])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&waterfall.stdout);
    assert!(
        waterfall.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&waterfall.stderr)
    );
    let checkout = text.lines().position(|l| l.contains("checkout")).unwrap();
    let charge = text
        .lines()
        .position(|l| l.contains("charge-card"))
        .unwrap();
    assert!(charge > checkout, "{text}");
}
