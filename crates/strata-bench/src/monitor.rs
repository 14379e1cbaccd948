//! The monitoring workloads, against Strata's monitor or a Prometheus alike (both take remote
//! write and answer Prometheus's HTTP API):
//!
//! - `monitor-load`: node-exporter-like series (CPU, network and disk counters, memory and
//!   filesystem gauges, load averages) at a 15 s interval, written with remote write as a
//!   Prometheus server sends it: `--shards` concurrent senders, each owning a share of the
//!   series and sending them in time order, at most `--samples-per-request` samples (2000,
//!   Prometheus 2.42's `max_samples_per_send`) per request. With `--pid`, the server's CPU
//!   time and RSS are read from `/proc`.
//! - `monitor-query`: a fixed set of dashboard-like range queries over the loaded data,
//!   repeated; per-request latency percentiles.

use crate::stats::Latencies;
use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_monitor::model::Labels;

/// Arguments of `monitor-load`.
#[derive(Args, Debug)]
pub struct MonitorLoadArgs {
    /// Base URL of the server (`http://127.0.0.1:7700`, `http://127.0.0.1:9090`).
    #[arg(long)]
    pub url: String,
    /// Hosts simulated; each has [`SERIES_PER_HOST`] series.
    #[arg(long, default_value_t = 100)]
    pub hosts: usize,
    /// Scrapes per series (15 s apart).
    #[arg(long, default_value_t = 960)]
    pub steps: usize,
    /// The generator's first step: values are simulated from step 0 (not sent) so that a
    /// later run continues an earlier one's series.
    #[arg(long, default_value_t = 0)]
    pub first_step: usize,
    /// Timestamp of the last scrape, ms since the epoch (default: now, aligned to 15 s).
    #[arg(long)]
    pub end_ms: Option<i64>,
    /// Concurrent senders.
    #[arg(long, default_value_t = 4)]
    pub shards: usize,
    /// Most samples in one request.
    #[arg(long, default_value_t = 2000)]
    pub samples_per_request: usize,
    /// The server's process id, to read its CPU time and RSS.
    #[arg(long)]
    pub pid: Option<u32>,
}

/// Series per simulated host.
pub const SERIES_PER_HOST: usize = 200;

/// One series of a simulated host: its labels and how its value moves.
struct SeriesSpec {
    labels: Labels,
    kind: Kind,
    seed: u64,
}

#[derive(Clone, Copy)]
enum Kind {
    /// Seconds counter: grows by about `rate` per second, at 10 ms resolution.
    Seconds(f64),
    /// Bytes counter: integer steps around `rate` per second.
    Bytes(f64),
    /// Memory-like gauge: a multiple of 4096 that changes now and then.
    Memory(f64),
    /// Load-like gauge with two decimals.
    Load,
    /// Constant 1 (info series).
    Info,
}

fn host_series(host: usize) -> Vec<SeriesSpec> {
    let instance = format!("host-{host:04}:9100");
    let mut out = Vec::with_capacity(SERIES_PER_HOST);
    let mut push = |pairs: Vec<(&str, String)>, kind: Kind| {
        let mut all: Vec<(String, String)> =
            pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        all.push(("instance".into(), instance.clone()));
        all.push(("job".into(), "node".into()));
        let seed = (host as u64) << 16 | out.len() as u64;
        out.push(SeriesSpec {
            labels: Labels::new(all),
            kind,
            seed,
        });
    };
    for cpu in 0..8 {
        for (mode, rate) in [
            ("idle", 0.7),
            ("user", 0.15),
            ("system", 0.08),
            ("iowait", 0.02),
            ("irq", 0.001),
            ("softirq", 0.004),
            ("steal", 0.0),
            ("nice", 0.001),
        ] {
            push(
                vec![
                    ("__name__", "node_cpu_seconds_total".into()),
                    ("cpu", cpu.to_string()),
                    ("mode", mode.into()),
                ],
                Kind::Seconds(rate),
            );
        }
    }
    for device in ["eth0", "eth1", "lo", "docker0"] {
        for (name, rate) in [
            ("node_network_receive_bytes_total", 120_000.0),
            ("node_network_transmit_bytes_total", 80_000.0),
            ("node_network_receive_packets_total", 300.0),
            ("node_network_transmit_packets_total", 200.0),
            ("node_network_receive_errs_total", 0.0),
            ("node_network_transmit_drop_total", 0.0),
        ] {
            push(
                vec![("__name__", name.into()), ("device", device.into())],
                Kind::Bytes(rate),
            );
        }
    }
    for device in ["sda", "sdb", "nvme0n1", "nvme1n1"] {
        for (name, kind) in [
            ("node_disk_read_bytes_total", Kind::Bytes(500_000.0)),
            ("node_disk_written_bytes_total", Kind::Bytes(900_000.0)),
            ("node_disk_reads_completed_total", Kind::Bytes(40.0)),
            ("node_disk_writes_completed_total", Kind::Bytes(90.0)),
            ("node_disk_io_time_seconds_total", Kind::Seconds(0.05)),
            ("node_disk_read_time_seconds_total", Kind::Seconds(0.02)),
            ("node_disk_write_time_seconds_total", Kind::Seconds(0.04)),
        ] {
            push(
                vec![("__name__", name.into()), ("device", device.into())],
                kind,
            );
        }
    }
    for (mount, device) in [
        ("/", "sda1"),
        ("/home", "sda2"),
        ("/var", "sdb1"),
        ("/data", "nvme0n1p1"),
    ] {
        for name in [
            "node_filesystem_avail_bytes",
            "node_filesystem_free_bytes",
            "node_filesystem_size_bytes",
            "node_filesystem_files_free",
        ] {
            push(
                vec![
                    ("__name__", name.into()),
                    ("mountpoint", mount.into()),
                    ("device", device.into()),
                    ("fstype", "ext4".into()),
                ],
                Kind::Memory(5e10),
            );
        }
    }
    for name in ["node_load1", "node_load5", "node_load15"] {
        push(vec![("__name__", name.into())], Kind::Load);
    }
    // 8*8 + 4*6 + 4*7 + 4*4 + 3 = 135 so far; memory fields fill up to the info series.
    for m in 0..(SERIES_PER_HOST - 136) {
        push(
            vec![("__name__", format!("node_memory_field{m:02}_bytes"))],
            Kind::Memory(8e9),
        );
    }
    push(
        vec![
            ("__name__", "node_uname_info".into()),
            ("release", "6.1.0".into()),
        ],
        Kind::Info,
    );
    out
}

/// A small deterministic generator (SplitMix64).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn unit(seed: u64, step: usize) -> f64 {
    (mix(seed ^ (step as u64).wrapping_mul(0x2545_f491_4f6c_dd1d)) >> 11) as f64
        / (1u64 << 53) as f64
}

/// The value of a series at `step`, given its value at the step before.
fn next_value(spec: &SeriesSpec, step: usize, previous: f64) -> f64 {
    let r = unit(spec.seed, step);
    match spec.kind {
        Kind::Seconds(rate) => {
            let add = (rate * 15.0 * (0.5 + r) * 100.0).round() / 100.0;
            ((previous + add) * 100.0).round() / 100.0
        }
        Kind::Bytes(rate) => previous + (rate * 15.0 * (0.5 + r)).round(),
        Kind::Memory(size) => {
            if step == 0 {
                (size * (0.3 + 0.4 * unit(spec.seed, 0)) / 4096.0).round() * 4096.0
            } else if r < 0.2 {
                previous + ((r - 0.1) * 1e5).round() * 4096.0
            } else {
                previous
            }
        }
        Kind::Load => {
            ((1.0 + (step as f64 / 40.0 + spec.seed as f64).sin() + r * 0.3) * 100.0).round()
                / 100.0
        }
        Kind::Info => 1.0,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn proc_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based); after the ")" they are 12 and 13.
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    Ok(ticks / 100.0)
}

fn proc_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    Ok(kb * 1024)
}

/// Runs `monitor-load`.
pub async fn monitor_load(args: MonitorLoadArgs) -> anyhow::Result<()> {
    let end = args.end_ms.unwrap_or_else(|| now_ms() / 15_000 * 15_000);
    let start = end - (args.steps as i64 - 1) * 15_000;
    let specs: Vec<SeriesSpec> = (0..args.hosts).flat_map(host_series).collect();
    let total_series = specs.len();
    let shards = args.shards.max(1);
    let mut owned: Vec<Vec<SeriesSpec>> = (0..shards).map(|_| Vec::new()).collect();
    for (i, spec) in specs.into_iter().enumerate() {
        owned[i % shards].push(spec);
    }
    let http = strata_tls::http_client_builder()
        .pool_max_idle_per_host(shards)
        .build()?;
    let url = format!("{}/api/v1/write", args.url.trim_end_matches('/'));
    let cpu_before = args.pid.map(proc_cpu_seconds).transpose()?;
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for series in owned {
        let (http, url, sent) = (http.clone(), url.clone(), sent.clone());
        let per_request = args.samples_per_request.max(1);
        let steps = args.steps;
        let first_step = args.first_step;
        tasks.push(tokio::spawn(async move {
            let mut values = vec![0.0f64; series.len()];
            for step in 0..first_step {
                for (i, spec) in series.iter().enumerate() {
                    values[i] = next_value(spec, step, values[i]);
                }
            }
            let mut batch: Vec<(Labels, i64, f64)> = Vec::with_capacity(per_request);
            for step in first_step..first_step + steps {
                let t = start + (step - first_step) as i64 * 15_000;
                for (i, spec) in series.iter().enumerate() {
                    values[i] = next_value(spec, step, values[i]);
                    batch.push((spec.labels.clone(), t, values[i]));
                    if batch.len() >= per_request {
                        send(&http, &url, &batch).await?;
                        sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        batch.clear();
                    }
                }
            }
            if !batch.is_empty() {
                send(&http, &url, &batch).await?;
                sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("a sender panicked")??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let samples = sent.load(Ordering::Relaxed);
    let mut report = json!({
        "series": total_series,
        "samples": samples,
        "seconds": seconds,
        "samples_per_second": samples as f64 / seconds,
        "start_ms": start,
        "end_ms": end,
    });
    if let (Some(pid), Some(before)) = (args.pid, cpu_before) {
        let cpu = proc_cpu_seconds(pid)? - before;
        let rss = proc_rss_bytes(pid)?;
        report["server_cpu_seconds"] = json!(cpu);
        report["samples_per_cpu_second"] = json!(samples as f64 / cpu.max(1e-9));
        report["rss_bytes"] = json!(rss);
        report["rss_bytes_per_million_series"] = json!(rss as f64 / total_series as f64 * 1e6);
    }
    println!("{report}");
    Ok(())
}

async fn send(
    http: &reqwest::Client,
    url: &str,
    batch: &[(Labels, i64, f64)],
) -> anyhow::Result<()> {
    let body = strata_monitor::remote::encode(batch);
    let mut backoff = Duration::from_millis(50);
    for _attempt in 0..10 {
        let response = http
            .post(url)
            .header("content-encoding", "snappy")
            .header("content-type", "application/x-protobuf")
            .header("x-prometheus-remote-write-version", "0.1.0")
            .body(body.clone())
            .send()
            .await;
        match response {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) if r.status().is_client_error() => {
                bail!(
                    "{url}: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )
            }
            _ => {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
    }
    bail!("{url}: gave up after 10 attempts")
}

/// Arguments of `monitor-query`.
#[derive(Args, Debug)]
pub struct MonitorQueryArgs {
    /// Base URL of the server.
    #[arg(long)]
    pub url: String,
    /// Start of the range, ms.
    #[arg(long)]
    pub start_ms: i64,
    /// End of the range, ms.
    #[arg(long)]
    pub end_ms: i64,
    /// Step, seconds.
    #[arg(long, default_value_t = 60)]
    pub step: u64,
    /// Times each query is run.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
}

/// Dashboard-like range queries over `monitor-load`'s data.
pub const QUERIES: &[&str] = &[
    "sum by (instance) (rate(node_cpu_seconds_total{mode!=\"idle\"}[5m]))",
    "avg by (mode) (rate(node_cpu_seconds_total[5m]))",
    "rate(node_network_receive_bytes_total{instance=\"host-0001:9100\"}[5m])",
    "topk(5, sum by (instance) (rate(node_disk_written_bytes_total[5m])))",
    "node_filesystem_avail_bytes{mountpoint=\"/\"} / node_filesystem_size_bytes{mountpoint=\"/\"}",
    "max_over_time(node_load1[10m])",
    "quantile_over_time(0.9, node_load1[10m])",
    "sum(node_memory_field00_bytes) by (job)",
];

/// Runs `monitor-query`.
pub async fn monitor_query(args: MonitorQueryArgs) -> anyhow::Result<()> {
    let http = strata_tls::http_client_builder().build()?;
    let mut all = Latencies::default();
    let mut points = 0usize;
    for _ in 0..args.repeat {
        for q in QUERIES {
            let started = Instant::now();
            let url = format!(
                "{}/api/v1/query_range?query={}&start={}&end={}&step={}",
                args.url.trim_end_matches('/'),
                strata_monitor::model::url_encode(q),
                args.start_ms as f64 / 1000.0,
                args.end_ms as f64 / 1000.0,
                args.step
            );
            let response = http.get(url).send().await?;
            let status = response.status();
            let body: serde_json::Value = response.json().await?;
            all.record(started.elapsed());
            if !status.is_success() {
                bail!("{q}: {status} {body}");
            }
            points += body["data"]["result"].as_array().map_or(0, |r| {
                r.iter()
                    .map(|s| s["values"].as_array().map_or(0, Vec::len))
                    .sum()
            });
        }
    }
    let summary = all.summary().context("no queries ran")?;
    println!(
        "{}",
        json!({"queries": all.len(), "points": points, "p50_ms": summary.p50_ms, "p99_ms": summary.p99_ms, "max_ms": summary.max_ms})
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_have_their_series_and_counters_only_grow() {
        let specs = host_series(3);
        assert_eq!(specs.len(), SERIES_PER_HOST);
        let mut names: Vec<&Labels> = specs.iter().map(|s| &s.labels).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), SERIES_PER_HOST, "label sets are unique");
        let cpu = &specs[0];
        let mut v = 0.0;
        for step in 0..100 {
            let next = next_value(cpu, step, v);
            assert!(next >= v);
            v = next;
        }
    }
}
