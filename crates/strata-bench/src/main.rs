//! `strata-bench`: a load generator for a running Strata cluster.
//!
//! Each subcommand runs one closed-loop workload (see [`load`]) over the native HTTP API with
//! `--clients` concurrent tasks, each owning its own [`strata_client::Client`] over every
//! endpoint, and prints one JSON line on stdout:
//!
//! ```text
//! strata-bench put --endpoints http://127.0.0.1:7700 --clients 64 --requests 20000
//! {"workload":"put","clients":64,"requests":20000,"errors":0,"seconds":2.1,"throughput":9523.8,
//!  "p50_ms":6.1,"p99_ms":14.2,"max_ms":30.5,"endpoints":1,"value_size":256}
//! ```
//!
//! Client `i` lists the endpoints rotated by `i`, so the load is spread over every node (which
//! forwards writes and linearizable reads to the leader), as a fleet of real clients would.
//! The cluster-level script `bench/spine.sh` starts nodes and calls this binary.

mod load;
mod stats;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use strata_client::Client;

/// Drives a running Strata cluster and prints throughput and latency as one JSON line.
#[derive(Parser, Debug)]
#[command(name = "strata-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write new keys (one unique key per request) and measure put latency.
    Put(PutArgs),
    /// Read one pre-written key over and over and measure range-read latency.
    Get(GetArgs),
}

/// Flags every workload shares.
#[derive(Args, Debug)]
struct LoadArgs {
    /// API endpoints, comma-separated (`http://` optional).
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Concurrent tasks, each with its own client and at most one request in flight.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Total requests over all clients.
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Stop issuing requests after this many seconds even if `--requests` is not reached.
    #[arg(long, default_value_t = 60.0)]
    max_seconds: f64,
    /// Give up on one request (after trying every endpoint) after this many seconds.
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

/// The JSON line printed after a run. Field order is the output order.
#[derive(Serialize, Debug)]
struct Report {
    /// `put` or `get`.
    workload: &'static str,
    /// Concurrent clients.
    clients: usize,
    /// Requests that succeeded.
    requests: u64,
    /// Requests that failed.
    errors: u64,
    /// Wall time of the timed run.
    seconds: f64,
    /// Successful requests per second.
    throughput: f64,
    /// Median latency of successful requests; null when none succeeded.
    p50_ms: Option<f64>,
    /// 99th percentile latency.
    p99_ms: Option<f64>,
    /// Slowest successful request.
    max_ms: Option<f64>,
    /// How many endpoints the clients were given.
    endpoints: usize,
    /// Bytes per value.
    value_size: usize,
    /// For `get`: whether reads were serializable.
    #[serde(skip_serializing_if = "Option::is_none")]
    serializable: Option<bool>,
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
            let key_prefix = match args.key_prefix {
                Some(prefix) => prefix,
                None => format!("bench/put/{}/", unix_millis()),
            };
            let workload = load::Workload::Put {
                key_prefix,
                value: value_of_size(args.load.value_size),
            };
            drive("put", workload, &args.load, None).await
        }
        Command::Get(args) => {
            let value = value_of_size(args.load.value_size);
            let setup = Client::new(&args.load.endpoints)
                .with_timeout(seconds(args.load.request_timeout, "--request-timeout")?);
            setup
                .put(args.key.clone(), value)
                .await
                .with_context(|| format!("write the key {:?} to read", args.key))?;
            let workload = load::Workload::Get {
                key: args.key.into_bytes(),
                serializable: args.serializable,
            };
            drive("get", workload, &args.load, Some(args.serializable)).await
        }
    }
}

/// Runs `workload`, prints the report line, and fails when no request succeeded.
async fn drive(
    name: &'static str,
    workload: load::Workload,
    args: &LoadArgs,
    serializable: Option<bool>,
) -> anyhow::Result<()> {
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if args.endpoints.is_empty() {
        bail!("--endpoints needs at least one URL");
    }
    let request_timeout = seconds(args.request_timeout, "--request-timeout")?;
    let max_duration = seconds(args.max_seconds, "--max-seconds")?;
    let mut clients = Vec::with_capacity(args.clients);
    for client_index in 0..args.clients {
        let mut endpoints = args.endpoints.clone();
        endpoints.rotate_left(client_index % args.endpoints.len());
        clients.push(Client::new(&endpoints).with_timeout(request_timeout));
    }
    let plan = load::Plan {
        clients: args.clients,
        requests: args.requests,
        max_duration,
    };
    let outcome = load::run(workload, plan, clients).await.with_context(|| {
        format!(
            "warm up {} clients against {:?}",
            args.clients, args.endpoints
        )
    })?;

    let elapsed = outcome.elapsed.as_secs_f64();
    let throughput = if elapsed > 0.0 {
        outcome.succeeded as f64 / elapsed
    } else {
        0.0
    };
    let report = Report {
        workload: name,
        clients: args.clients,
        requests: outcome.succeeded,
        errors: outcome.errors,
        seconds: round_to(elapsed, 3),
        throughput: round_to(throughput, 1),
        p50_ms: outcome.latency.map(|s| s.p50_ms),
        p99_ms: outcome.latency.map(|s| s.p99_ms),
        max_ms: outcome.latency.map(|s| s.max_ms),
        endpoints: args.endpoints.len(),
        value_size: args.value_size,
        serializable,
    };
    println!("{}", serde_json::to_string(&report)?);
    if let Some(message) = &outcome.first_error {
        eprintln!(
            "{} of {name} requests failed; first: {message}",
            outcome.errors
        );
    }
    if outcome.succeeded == 0 {
        bail!("no {name} request succeeded");
    }
    Ok(())
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
}
