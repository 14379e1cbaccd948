//! `rpc-echo`: unary gRPC calls to the example provider (`orders.v1.Orders/Get`, which echoes
//! the id it is given), either over a bare tonic channel to one address or through the
//! `strata-rpc` consumer stack (discovery, balancing, breakers, outlier detection, retry
//! budget, trace propagation with sampling off), from `--clients` concurrent callers.

use crate::stats::Latencies;
use anyhow::Context;
use clap::{Args, ValueEnum};
use std::time::{Duration, Instant};
use strata_examples::orders::orders_client::OrdersClient;
use strata_examples::orders::GetRequest;

/// Which client.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Mode {
    /// tonic's own `Channel` to `--address`.
    Bare,
    /// `strata_rpc::Consumer` for service `orders`, found through `--endpoints`.
    Stack,
}

/// Arguments of `rpc-echo`.
#[derive(Args, Debug)]
pub struct RpcEchoArgs {
    /// Which client.
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// The provider's address (bare mode).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub address: String,
    /// Strata nodes (stack mode).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:7700")]
    pub endpoints: Vec<String>,
    /// Concurrent callers.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// How long to run after a one-second warm-up.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
}

async fn drive<T>(
    client: OrdersClient<T>,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<serde_json::Value>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let request = GetRequest {
        id: "bench:0123456789abcdef".into(),
    };
    // The first call must work: a failing setup is an error, not a benchmark.
    client
        .clone()
        .get(request.clone())
        .await
        .context("the first call failed")?;
    let run = |length: Duration, record: bool| {
        let mut tasks = Vec::new();
        let end = Instant::now() + length;
        for _ in 0..clients {
            let mut client = client.clone();
            let request = request.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Latencies::default();
                let mut errors = 0u64;
                while Instant::now() < end {
                    let started = Instant::now();
                    match client.get(request.clone()).await {
                        Ok(_) if record => latencies.record(started.elapsed()),
                        Ok(_) => {}
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            }));
        }
        tasks
    };
    for task in run(Duration::from_secs(1), false) {
        task.await?;
    }
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let mut all = Latencies::default();
    let mut errors = 0;
    for task in run(duration, true) {
        let (latencies, e) = task.await?;
        all.merge(latencies);
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu_before;
    let calls = all.len();
    let summary = all.summary().context("no call succeeded")?;
    Ok(serde_json::json!({
        "calls": calls,
        "errors": errors,
        "seconds": seconds,
        "calls_per_sec": calls as f64 / seconds,
        "p50_us": summary.p50_ms * 1000.0,
        "p99_us": summary.p99_ms * 1000.0,
        "clients": clients,
        // The client process's CPU (user + system) per successful call, over the run.
        "cpu_us_per_call": cpu * 1e6 / calls.max(1) as f64,
    }))
}

/// User plus system CPU time of this process so far, from `/proc/self/stat` (clock ticks of
/// 10 ms; 0 where there is no procfs).
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces, so split after its last ')').
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs the benchmark and prints one JSON line.
pub async fn rpc_echo(args: RpcEchoArgs) -> anyhow::Result<()> {
    let report = match args.mode {
        Mode::Bare => {
            let channel =
                tonic::transport::Endpoint::from_shared(format!("http://{}", args.address))?
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .with_context(|| format!("connect to {}", args.address))?;
            drive(OrdersClient::new(channel), args.clients, args.duration).await?
        }
        Mode::Stack => {
            // Measured as before spans went to the node by default: the same stack, without
            // tracing unless the OpenTelemetry variables ask for it.
            strata_rpc::init_tracing(strata_rpc::TraceConfig::from_env());
            let consumer = strata_rpc::Consumer::builder(
                strata_client::Client::new(&args.endpoints),
                "orders",
            )
            .build();
            drive(OrdersClient::new(consumer), args.clients, args.duration).await?
        }
    };
    println!("{report}");
    Ok(())
}
