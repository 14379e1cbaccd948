//! `strata-bench`: a load generator for a running Strata cluster, or any etcd v3 endpoint.
//!
//! Each subcommand runs one closed-loop workload (see [`load`]) with `--clients` concurrent
//! tasks and prints one JSON line on stdout:
//!
//! ```text
//! strata-bench put --endpoints http://127.0.0.1:7700 --clients 64 --requests 20000
//! {"workload":"put","clients":64,"requests":20000,"errors":0,"seconds":2.1,"throughput":9523.8,
//!  "p50_ms":6.1,"p99_ms":14.2,"max_ms":30.5,"endpoints":1,"value_size":256}
//! ```
//!
//! - `put` and `get` use the native HTTP API ([`native`]); client `i` owns its own
//!   `strata_client::Client` with the endpoints rotated by `i`, so the load spreads over every
//!   node (which forwards writes and linearizable reads to the leader).
//! - `etcd-put`, `etcd-get` and `etcd-watch` use the etcd v3 gRPC API ([`etcd`], [`watch`]),
//!   with the same code against real etcd and against Strata's `--grpc-addr`. Clients share a
//!   few HTTP/2 connections spread over the endpoints, as etcd's `benchmark` tool does.
//! - `free-ports` prints loopback ports that were free a moment ago, for scripts.
//!
//! The cluster-level scripts `bench/spine.sh` and `bench/compare-etcd.sh` start the servers
//! and call this binary.

mod etcd;
mod load;
mod native;
mod stats;
mod watch;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use strata_client::Client;

/// Drives a running Strata or etcd cluster and prints throughput and latency as one JSON line.
#[derive(Parser, Debug)]
#[command(name = "strata-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write new keys (one unique key per request) and measure put latency (native API).
    Put(PutArgs),
    /// Read one pre-written key over and over and measure range-read latency (native API).
    Get(GetArgs),
    /// etcd v3 gRPC Put of new keys (one unique key per request), to etcd or Strata.
    EtcdPut(EtcdPutArgs),
    /// etcd v3 gRPC Range of one pre-written key, to etcd or Strata.
    EtcdGet(EtcdGetArgs),
    /// etcd v3 watch fan-out: many watchers on one prefix, latency of each put's delivery.
    EtcdWatch(EtcdWatchArgs),
    /// Print COUNT loopback TCP ports that were free (bound together, then released).
    FreePorts {
        /// How many ports.
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
}

/// Flags every workload shares.
#[derive(Args, Debug)]
struct LoadArgs {
    /// Endpoints, comma-separated: API URLs (`http://` optional) for the native API,
    /// `HOST:PORT` of gRPC listeners for the etcd workloads.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Concurrent tasks, each with at most one request in flight.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Total requests over all clients.
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Stop issuing requests after this many seconds even if `--requests` is not reached.
    #[arg(long, default_value_t = 60.0)]
    max_seconds: f64,
    /// Give up on one request (for the native API: after trying every endpoint) after this
    /// many seconds.
    #[arg(long, default_value_t = 10.0)]
    request_timeout: f64,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
}

/// Flags of `strata-bench put`.
#[derive(Args, Debug)]
struct PutArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Prefix of every written key; defaults to `bench/put/<unix millis>/`, unique per run.
    #[arg(long)]
    key_prefix: Option<String>,
}

/// Flags of `strata-bench get`.
#[derive(Args, Debug)]
struct GetArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// The key to write once and then read.
    #[arg(long, default_value = "bench/get/key")]
    key: String,
    /// Serve reads from the contacted replica (stale reads allowed) instead of linearizable.
    #[arg(long)]
    serializable: bool,
}

/// How the etcd workloads connect.
#[derive(Args, Debug)]
struct ConnectionArgs {
    /// HTTP/2 connections shared by all clients, round-robin over the endpoints
    /// (default: two per endpoint, at most one per client).
    #[arg(long)]
    connections: Option<usize>,
}

/// Flags of `strata-bench etcd-put`.
#[derive(Args, Debug)]
struct EtcdPutArgs {
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Prefix of every written key; defaults to `bench/put/<unix millis>/`, unique per run.
    #[arg(long)]
    key_prefix: Option<String>,
}

/// Flags of `strata-bench etcd-get`.
#[derive(Args, Debug)]
struct EtcdGetArgs {
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    connection: ConnectionArgs,
    /// The key to write once and then read.
    #[arg(long, default_value = "bench/get/key")]
    key: String,
    /// etcd's serializable read: served by the contacted member without a read index.
    #[arg(long)]
    serializable: bool,
}

/// Flags of `strata-bench etcd-watch`.
#[derive(Args, Debug)]
struct EtcdWatchArgs {
    /// `HOST:PORT` of the gRPC listeners, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Watchers on the prefix, each with its own Watch stream.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Puts of the watched key, sent one after the other once the previous one reached every
    /// watcher.
    #[arg(long, default_value_t = 20)]
    puts: u64,
    #[command(flatten)]
    connection: ConnectionArgs,
    /// The watched prefix; defaults to `bench/watch/<unix millis>/`, unique per run.
    #[arg(long)]
    prefix: Option<String>,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Longest wait for one put, or for every watch to be created, in seconds.
    #[arg(long, default_value_t = 10.0)]
    request_timeout: f64,
    /// Longest wait after a put for every watcher to receive it, in seconds.
    #[arg(long, default_value_t = 5.0)]
    delivery_timeout: f64,
}

/// The JSON line printed after a run. Field order is the output order.
#[derive(Serialize, Debug)]
struct Report {
    /// `put`, `get`, `etcd-put`, `etcd-get` or `etcd-watch`.
    workload: &'static str,
    /// Concurrent clients (for `etcd-watch`: watchers).
    clients: usize,
    /// Requests that succeeded (for `etcd-watch`: events delivered).
    requests: u64,
    /// Requests that failed (for `etcd-watch`: deliveries missed plus puts failed).
    errors: u64,
    /// Wall time of the timed run.
    seconds: f64,
    /// Successful requests (deliveries) per second.
    throughput: f64,
    /// Median latency of successful requests (deliveries); null when none succeeded.
    p50_ms: Option<f64>,
    /// 99th percentile latency.
    p99_ms: Option<f64>,
    /// Slowest successful request (delivery).
    max_ms: Option<f64>,
    /// How many endpoints the clients were given.
    endpoints: usize,
    /// Bytes per value.
    value_size: usize,
    /// For gets: whether reads were serializable.
    #[serde(skip_serializing_if = "Option::is_none")]
    serializable: Option<bool>,
    /// For the etcd workloads: HTTP/2 connections shared by the clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    connections: Option<usize>,
    /// For `etcd-watch`: puts sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    puts: Option<u64>,
    /// For `etcd-watch`: median latency of the puts themselves.
    #[serde(skip_serializing_if = "Option::is_none")]
    put_p50_ms: Option<f64>,
    /// For `etcd-watch`: 99th percentile latency of the puts themselves.
    #[serde(skip_serializing_if = "Option::is_none")]
    put_p99_ms: Option<f64>,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(cli.command).await {
        eprintln!("✘ {error:#}");
        std::process::exit(1);
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Put(args) => {
            let key_prefix = args
                .key_prefix
                .unwrap_or_else(|| format!("bench/put/{}/", unix_millis()));
            let workload = native::Workload::Put {
                key_prefix,
                value: value_of_size(args.load.value_size),
            };
            drive_native("put", workload, &args.load, None).await
        }
        Command::Get(args) => {
            let value = value_of_size(args.load.value_size);
            let setup = Client::new(&args.load.endpoints)
                .with_timeout(seconds(args.load.request_timeout, "--request-timeout")?);
            setup
                .put(args.key.clone(), value)
                .await
                .with_context(|| format!("write the key {:?} to read", args.key))?;
            let workload = native::Workload::Get {
                key: args.key.into_bytes(),
                serializable: args.serializable,
            };
            drive_native("get", workload, &args.load, Some(args.serializable)).await
        }
        Command::EtcdPut(args) => {
            let key_prefix = args
                .key_prefix
                .unwrap_or_else(|| format!("bench/put/{}/", unix_millis()));
            let op = etcd::EtcdOp::Put {
                key_prefix,
                value: value_of_size(args.load.value_size),
            };
            drive_etcd("etcd-put", op, &args.load, &args.connection, None).await
        }
        Command::EtcdGet(args) => {
            let op = etcd::EtcdOp::Get {
                key: args.key.into_bytes(),
                serializable: args.serializable,
            };
            let serializable = Some(args.serializable);
            drive_etcd("etcd-get", op, &args.load, &args.connection, serializable).await
        }
        Command::EtcdWatch(args) => drive_watch(args).await,
        Command::FreePorts { count } => {
            for port in free_ports(count)? {
                println!("{port}");
            }
            Ok(())
        }
    }
}

/// Checks the flags every load shares and returns (request timeout, run cap).
fn checked_limits(args: &LoadArgs) -> anyhow::Result<(Duration, Duration)> {
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if args.endpoints.is_empty() {
        bail!("--endpoints needs at least one endpoint");
    }
    let request_timeout = seconds(args.request_timeout, "--request-timeout")?;
    let max_duration = seconds(args.max_seconds, "--max-seconds")?;
    Ok((request_timeout, max_duration))
}

/// Runs a native-API workload and prints its report line.
async fn drive_native(
    name: &'static str,
    workload: native::Workload,
    args: &LoadArgs,
    serializable: Option<bool>,
) -> anyhow::Result<()> {
    let (request_timeout, max_duration) = checked_limits(args)?;
    let driver = native::NativeDriver {
        workload,
        endpoints: args.endpoints.clone(),
        request_timeout,
    };
    let plan = load::Plan {
        clients: args.clients,
        requests: args.requests,
        max_duration,
    };
    let outcome = load::run(driver, plan).await.with_context(|| {
        format!(
            "warm up {} clients against {:?}",
            args.clients, args.endpoints
        )
    })?;
    let mut report = load_report(name, args, &outcome);
    report.serializable = serializable;
    finish(
        name,
        &report,
        outcome.errors,
        outcome.first_error.as_deref(),
    )
}

/// Runs an etcd-API workload over a shared connection pool and prints its report line.
async fn drive_etcd(
    name: &'static str,
    op: etcd::EtcdOp,
    args: &LoadArgs,
    connection: &ConnectionArgs,
    serializable: Option<bool>,
) -> anyhow::Result<()> {
    let (request_timeout, max_duration) = checked_limits(args)?;
    let connections = connection
        .connections
        .unwrap_or_else(|| etcd::default_connections(args.endpoints.len(), args.clients));
    let pool = etcd::Pool::connect(&args.endpoints, connections, request_timeout).await?;
    if let etcd::EtcdOp::Get { key, .. } = &op {
        let value = value_of_size(args.value_size);
        etcd::write_key(&pool, key, value, request_timeout)
            .await
            .with_context(|| format!("write the key {:?} to read", String::from_utf8_lossy(key)))?;
    }
    let driver = etcd::EtcdDriver {
        op,
        pool: pool.clone(),
        request_timeout,
    };
    let plan = load::Plan {
        clients: args.clients,
        requests: args.requests,
        max_duration,
    };
    let outcome = load::run(driver, plan).await.with_context(|| {
        format!(
            "warm up {} clients against {:?}",
            args.clients, args.endpoints
        )
    })?;
    let mut report = load_report(name, args, &outcome);
    report.serializable = serializable;
    report.connections = Some(pool.len());
    finish(
        name,
        &report,
        outcome.errors,
        outcome.first_error.as_deref(),
    )
}

/// Runs the watch fan-out and prints its report line.
async fn drive_watch(args: EtcdWatchArgs) -> anyhow::Result<()> {
    if args.endpoints.is_empty() {
        bail!("--endpoints needs at least one HOST:PORT");
    }
    let request_timeout = seconds(args.request_timeout, "--request-timeout")?;
    let delivery_timeout = seconds(args.delivery_timeout, "--delivery-timeout")?;
    let connections = args
        .connection
        .connections
        .unwrap_or_else(|| etcd::default_connections(args.endpoints.len(), args.watchers));
    let pool = etcd::Pool::connect(&args.endpoints, connections, request_timeout).await?;
    let plan = watch::WatchPlan {
        watchers: args.watchers,
        puts: args.puts,
        prefix: args
            .prefix
            .unwrap_or_else(|| format!("bench/watch/{}/", unix_millis())),
        value_size: args.value_size,
        request_timeout,
        delivery_timeout,
    };
    let outcome = watch::run(&pool, &plan).await?;
    let elapsed = outcome.elapsed.as_secs_f64();
    let report = Report {
        workload: "etcd-watch",
        clients: args.watchers,
        requests: outcome.delivered,
        errors: outcome.missed + outcome.failed_puts,
        seconds: round_to(elapsed, 3),
        throughput: round_to(per_second(outcome.delivered, elapsed), 1),
        p50_ms: outcome.latency.map(|s| s.p50_ms),
        p99_ms: outcome.latency.map(|s| s.p99_ms),
        max_ms: outcome.latency.map(|s| s.max_ms),
        endpoints: args.endpoints.len(),
        value_size: args.value_size,
        serializable: None,
        connections: Some(pool.len()),
        puts: Some(args.puts),
        put_p50_ms: outcome.put_latency.map(|s| s.p50_ms),
        put_p99_ms: outcome.put_latency.map(|s| s.p99_ms),
    };
    let errors = report.errors;
    finish(
        "etcd-watch",
        &report,
        errors,
        outcome.first_error.as_deref(),
    )
}

/// Builds the report of a closed-loop run.
fn load_report(name: &'static str, args: &LoadArgs, outcome: &load::Outcome) -> Report {
    let elapsed = outcome.elapsed.as_secs_f64();
    Report {
        workload: name,
        clients: args.clients,
        requests: outcome.succeeded,
        errors: outcome.errors,
        seconds: round_to(elapsed, 3),
        throughput: round_to(per_second(outcome.succeeded, elapsed), 1),
        p50_ms: outcome.latency.map(|s| s.p50_ms),
        p99_ms: outcome.latency.map(|s| s.p99_ms),
        max_ms: outcome.latency.map(|s| s.max_ms),
        endpoints: args.endpoints.len(),
        value_size: args.value_size,
        serializable: None,
        connections: None,
        puts: None,
        put_p50_ms: None,
        put_p99_ms: None,
    }
}

/// Prints the report line and the first failure; fails when nothing succeeded.
fn finish(
    name: &str,
    report: &Report,
    errors: u64,
    first_error: Option<&str>,
) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(report)?);
    if let Some(message) = first_error {
        eprintln!("{errors} of {name} requests failed; first: {message}");
    }
    if report.requests == 0 {
        bail!("no {name} request succeeded");
    }
    Ok(())
}

fn per_second(count: u64, elapsed_seconds: f64) -> f64 {
    if elapsed_seconds > 0.0 {
        count as f64 / elapsed_seconds
    } else {
        0.0
    }
}

/// Binds `count` listeners on `127.0.0.1:0` at once (so the ports differ), then releases
/// them and returns their ports.
fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        listeners.push(std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?);
    }
    let mut ports = Vec::with_capacity(count);
    for listener in &listeners {
        ports.push(
            listener
                .local_addr()
                .context("read a bound address")?
                .port(),
        );
    }
    Ok(ports)
}

/// Returns `value_size` printable bytes, so values stay plain strings in the JSON API.
fn value_of_size(value_size: usize) -> Vec<u8> {
    (0..value_size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Parses a positive number of seconds given on the command line.
fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    if !(value.is_finite() && value > 0.0) {
        bail!("{flag} must be a positive number of seconds, got {value}");
    }
    Ok(Duration::from_secs_f64(value))
}

fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

fn unix_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_have_the_requested_size_and_are_printable() {
        let value = value_of_size(300);
        assert_eq!(value.len(), 300);
        assert!(value.iter().all(u8::is_ascii_lowercase));
    }

    #[test]
    fn seconds_rejects_zero_and_nan() {
        assert!(seconds(0.0, "--x").is_err());
        assert!(seconds(f64::NAN, "--x").is_err());
        assert_eq!(seconds(1.5, "--x").unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn cli_parses_put() {
        let cli = Cli::try_parse_from([
            "strata-bench",
            "put",
            "--endpoints",
            "http://a:1,http://b:2",
            "--clients",
            "4",
            "--requests",
            "100",
            "--key-prefix",
            "p/",
        ])
        .unwrap();
        let Command::Put(args) = cli.command else {
            panic!("expected put");
        };
        assert_eq!(args.load.endpoints.len(), 2);
        assert_eq!(args.load.clients, 4);
        assert_eq!(args.load.value_size, 256);
        assert_eq!(args.key_prefix.as_deref(), Some("p/"));
    }

    #[test]
    fn cli_parses_the_etcd_workloads() {
        let cli = Cli::try_parse_from([
            "strata-bench",
            "etcd-get",
            "--endpoints",
            "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3",
            "--clients",
            "128",
            "--serializable",
            "--connections",
            "3",
        ])
        .unwrap();
        let Command::EtcdGet(args) = cli.command else {
            panic!("expected etcd-get");
        };
        assert_eq!(args.load.endpoints.len(), 3);
        assert!(args.serializable);
        assert_eq!(args.connection.connections, Some(3));

        let cli = Cli::try_parse_from([
            "strata-bench",
            "etcd-watch",
            "--endpoints",
            "127.0.0.1:1",
            "--watchers",
            "100",
            "--puts",
            "5",
        ])
        .unwrap();
        let Command::EtcdWatch(args) = cli.command else {
            panic!("expected etcd-watch");
        };
        assert_eq!((args.watchers, args.puts), (100, 5));
        assert_eq!(args.connection.connections, None);
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(4).unwrap();
        assert_eq!(ports.len(), 4);
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 4);
    }
}
