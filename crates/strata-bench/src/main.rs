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
//! - `registry-register`, `registry-heartbeat` and `registry-watch` drive the service
//!   registry's native API (`/v1/registry/`), and `dns-query` its DNS interface over UDP
//!   ([`registry`]).
//! - `config-publish`, `config-get` and `config-listen` drive the config center's native API
//!   (`/v1/config/`) ([`config`]).
//! - `http-open-loop` sends HTTP/1.1 GETs to one URL at a fixed rate over keep-alive
//!   connections, with latency measured from each request's due time when its connection was
//!   busy (no coordinated omission, as wrk2 and oha), and prints p50, p99 and p99.9
//!   ([`open_loop`]).
//! - `free-ports` prints loopback ports that were free a moment ago, for scripts.
//! - `jwt-sign` prints a JSON Web Token signed with a private key in PEM ([`jwt`]), for load
//!   runs against gateway routes that require one.
//!
//! The cluster-level scripts `bench/spine.sh`, `bench/compare-etcd.sh`, `bench/registry.sh`
//! and `bench/config.sh` start the servers and call this binary; `bench/compare-proxies.sh`
//! calls `http-open-loop`; `bench/gateway-features.sh` calls `jwt-sign`.

mod config;
mod etcd;
mod jwt;
mod load;
mod monitor;
mod native;
mod open_loop;
mod registry;
mod rpc;
mod scan;
mod stats;
mod watch;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use std::path::PathBuf;
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
    /// Reads every key under a prefix through the etcd API, in pages of `--page` keys.
    EtcdRangeAll(EtcdScanArgs),
    /// Replays a prefix's history with a watch from `--from-revision` until `--expect` events.
    EtcdWatchReplay(EtcdScanArgs),
    /// Register new service instances (one per request) and measure registration latency.
    RegistryRegister(RegistryRegisterArgs),
    /// Keep ephemeral instances alive: one heartbeat per instance per interval, spread evenly.
    RegistryHeartbeat(RegistryHeartbeatArgs),
    /// Registry watch fan-out: many SSE subscribers on one service, latency of each change.
    RegistryWatch(RegistryWatchArgs),
    /// UDP DNS queries against the registry's DNS server (closed loop).
    DnsQuery(DnsQueryArgs),
    /// Publish new versions of configs (closed loop) and measure publish latency.
    ConfigPublish(ConfigPublishArgs),
    /// Read configs from the nodes' views (closed loop) and measure read latency.
    ConfigGet(ConfigGetArgs),
    /// Config long-poll fan-out: many held long-polls on one node, latency of one change.
    ConfigListen(ConfigListenArgs),
    /// HTTP/1.1 GETs of one URL at a fixed rate (open loop, latency-corrected): p50/p99/p99.9.
    HttpOpenLoop(HttpOpenLoopArgs),
    /// Remote-write node-exporter-like series to a monitor or a Prometheus, as Prometheus sends.
    MonitorLoad(monitor::MonitorLoadArgs),
    /// Dashboard-like range queries against a monitor or a Prometheus; latency percentiles.
    MonitorQuery(monitor::MonitorQueryArgs),
    /// Unary gRPC echo calls to the example provider: bare tonic or the strata-rpc consumer.
    RpcEcho(rpc::RpcEchoArgs),
    /// Print COUNT loopback TCP ports that were free (bound together, then released).
    FreePorts {
        /// How many ports.
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
    /// Print a JSON Web Token signed with a private key (PEM); `exp` one day ahead unless given.
    JwtSign(JwtSignArgs),
}

/// Flags of `strata-bench jwt-sign`.
#[derive(Args, Debug)]
struct JwtSignArgs {
    /// The private key, PEM: EC in PKCS#8 for ES256 and ES384, RSA for RS256, RS384, RS512.
    #[arg(long)]
    key_pem: PathBuf,
    /// The signing algorithm.
    #[arg(long, default_value = "ES256")]
    alg: String,
    /// The claims, a JSON object; `exp` is set one day ahead when it has none.
    #[arg(long, default_value = "{}")]
    claims: String,
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
    /// (default: one per endpoint, at most one per client).
    #[arg(long)]
    connections: Option<usize>,
    /// Log in as NAME:PASSWORD (etcdctl's --user) and send the token on every call, for a
    /// cluster with access control on.
    #[arg(long, env = "STRATA_BENCH_USER", hide_env_values = true)]
    user: Option<String>,
    /// Connect over TLS, trusting this CA certificate (PEM), as etcd's benchmark tool does.
    #[arg(long, env = "STRATA_BENCH_CACERT")]
    cacert: Option<PathBuf>,
    /// Client certificate (PEM) to present over TLS.
    #[arg(
        long,
        env = "STRATA_BENCH_CERT",
        requires = "cert_key",
        requires = "cacert"
    )]
    cert: Option<PathBuf>,
    /// The client certificate's key (PEM); `--key` names the key an `etcd-get` reads.
    #[arg(long, env = "STRATA_BENCH_CERT_KEY", requires = "cert")]
    cert_key: Option<PathBuf>,
}

impl ConnectionArgs {
    /// The TLS settings of `--cacert`, `--cert` and `--cert-key`; `None` without `--cacert`.
    fn tls(&self) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let Some(ca) = &self.cacert else {
            return Ok(None);
        };
        let read = |path: &std::path::Path| {
            std::fs::read(path).with_context(|| format!("read {}", path.display()))
        };
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&self.cert, &self.cert_key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(Some(tls))
    }
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

/// Flags of `strata-bench etcd-range-all` and `etcd-watch-replay`.
#[derive(Args, Debug)]
struct EtcdScanArgs {
    /// `HOST:PORT` of a gRPC listener (the first is used).
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// The prefix to read.
    #[arg(long)]
    prefix: String,
    /// `etcd-range-all`: keys per page (etcd clients' `--limit`).
    #[arg(long, default_value_t = 1000)]
    page: i64,
    /// `etcd-range-all`: serializable reads.
    #[arg(long)]
    serializable: bool,
    /// `etcd-watch-replay`: the revision to watch from.
    #[arg(long, default_value_t = 1)]
    from_revision: i64,
    /// Keys (`etcd-range-all`) or events (`etcd-watch-replay`) expected; fewer is an error.
    #[arg(long)]
    expect: Option<u64>,
    /// Longest wait for one page or one watch response, in seconds.
    #[arg(long, default_value_t = 60.0)]
    request_timeout: f64,
    #[command(flatten)]
    connection: ConnectionArgs,
}

/// The report line of a scan.
#[derive(Serialize, Debug)]
struct ScanReport {
    workload: &'static str,
    /// Keys or events received.
    items: u64,
    /// Pages or watch responses with events.
    batches: u64,
    /// Bytes of keys and values received.
    bytes: u64,
    seconds: f64,
    /// Keys or events per second.
    throughput: f64,
    /// The slowest page, or the longest gap between watch responses.
    slowest_ms: f64,
}

/// Runs `etcd-range-all` or `etcd-watch-replay` and prints its report line.
async fn drive_scan(workload: &'static str, args: EtcdScanArgs) -> anyhow::Result<()> {
    let timeout = Duration::try_from_secs_f64(args.request_timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .context("--request-timeout must be a positive number of seconds")?;
    let pool = etcd::Pool::connect(
        &args.endpoints[..1],
        1,
        timeout,
        args.connection.user.as_deref(),
        args.connection.tls()?.as_ref(),
    )
    .await?;
    let prefix = args.prefix.as_bytes();
    let scan = if workload == "etcd-range-all" {
        scan::range_all(&pool, prefix, args.page, args.serializable, timeout).await?
    } else {
        let Some(expect) = args.expect else {
            bail!("etcd-watch-replay needs --expect: the events to wait for");
        };
        scan::watch_replay(&pool, prefix, args.from_revision, expect, timeout).await?
    };
    let seconds = scan.elapsed.as_secs_f64();
    let report = ScanReport {
        workload,
        items: scan.items,
        batches: scan.batches,
        bytes: scan.bytes,
        seconds: round_to(seconds, 3),
        throughput: round_to(per_second(scan.items, seconds), 1),
        slowest_ms: round_to(scan.slowest.as_secs_f64() * 1000.0, 3),
    };
    println!("{}", serde_json::to_string(&report)?);
    if let Some(expect) = args.expect {
        if scan.items < expect {
            bail!("{workload}: {} of {expect} expected", scan.items);
        }
    }
    Ok(())
}

/// Flags of `strata-bench registry-register`.
#[derive(Args, Debug)]
struct RegistryRegisterArgs {
    /// API URLs, comma-separated (`http://` optional).
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Concurrent tasks, each with at most one registration in flight.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Instances to register (one per request), over all clients.
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Stop issuing requests after this many seconds even if `--requests` is not reached.
    #[arg(long, default_value_t = 60.0)]
    max_seconds: f64,
    /// Give up on one registration (after trying every endpoint) after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    request_timeout: f64,
    /// Service `j` is named `<prefix><j>` (a DNS label once `j` is appended).
    #[arg(long, default_value = "bench-svc-")]
    service_prefix: String,
    /// Services the instances are spread over, round-robin.
    #[arg(long, default_value_t = 10)]
    services: u64,
    /// Instance `s` gets the id `<prefix><s:08>`; defaults to `r<unix millis>-`, unique per
    /// run.
    #[arg(long)]
    id_prefix: Option<String>,
    /// Make every M-th instance ephemeral (lease-backed, `--ephemeral-ttl`); 0: none.
    #[arg(long, default_value_t = 0)]
    ephemeral_every: u64,
    /// TTL of the ephemeral instances.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    ephemeral_ttl: Duration,
    /// Write `SERVICE ID` of every ephemeral instance registered to this file, one per line,
    /// for `registry-heartbeat --ids-from`.
    #[arg(long)]
    ids_out: Option<PathBuf>,
}

/// Flags of `strata-bench registry-heartbeat`.
#[derive(Args, Debug)]
struct RegistryHeartbeatArgs {
    /// API URLs, comma-separated (`http://` optional).
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// The instances: a file of `SERVICE ID` (or `ID`, of `--service`) lines, as written by
    /// `registry-register --ids-out`.
    #[arg(long, conflicts_with = "prefix", required_unless_present = "prefix")]
    ids_from: Option<PathBuf>,
    /// The service of ids without one (`--ids-from`) or of every id (`--prefix`).
    #[arg(long)]
    service: Option<String>,
    /// The instances are `<prefix><i:08>` for i in 0..count, of `--service` (what
    /// `registry-register --services 1 --ephemeral-every 1 --id-prefix P` registers).
    #[arg(long, requires_all = ["count", "service"])]
    prefix: Option<String>,
    /// How many instances `--prefix` names.
    #[arg(long)]
    count: Option<usize>,
    /// Concurrent tasks, each with at most one heartbeat in flight.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Each instance gets one heartbeat per interval; slots are spread evenly over it.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Run this long, then print the report. SIGTERM or SIGINT ends the run early (and still
    /// prints it).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Give up on one heartbeat (after trying every endpoint) after this many seconds.
    #[arg(long, default_value_t = 5.0)]
    request_timeout: f64,
    /// Count a heartbeat as late when it leaves this long after its slot.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    late_after: Duration,
}

/// Flags of `strata-bench registry-watch`.
#[derive(Args, Debug)]
struct RegistryWatchArgs {
    /// API URLs, comma-separated (`http://` optional). Subscribers spread over them; writes
    /// go through the first one that answers.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Watch streams (`GET /v1/registry/services/<service>/watch`), one connection each.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Registrations into the watched service, paced by `--change-interval`.
    #[arg(long, default_value_t = 200)]
    changes: u64,
    /// The watched service; defaults to `bench-watch-<unix millis>`, new per run.
    #[arg(long)]
    service: Option<String>,
    /// Change `k` registers `<prefix><k:06>`; defaults to `w<unix millis>-`.
    #[arg(long)]
    id_prefix: Option<String>,
    /// Time between the starts of two writes (open loop: a slow write does not delay the next).
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    change_interval: Duration,
    /// Longest wait for one write, and for every stream to open and send its snapshot.
    #[arg(long, default_value_t = 10.0)]
    request_timeout: f64,
    /// Longest wait after the last write for every subscriber to receive every change.
    #[arg(long, default_value_t = 5.0)]
    delivery_timeout: f64,
}

/// Flags of `strata-bench dns-query`.
#[derive(Args, Debug)]
struct DnsQueryArgs {
    /// The DNS server, HOST:PORT (a node's `dns` address).
    #[arg(long)]
    server: String,
    /// The name asked for.
    #[arg(long, default_value = "web.service.strata")]
    name: String,
    /// The record type asked for: A, AAAA, SRV or ANY.
    #[arg(long = "type", default_value = "A")]
    record_type: String,
    /// Concurrent UDP sockets, each with one query in flight.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Stop issuing queries after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop after this many queries if `--duration` has not passed yet.
    #[arg(long, default_value_t = 100_000_000)]
    requests: u64,
    /// A query unanswered this long counts as an error.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// EDNS payload size advertised in each query; 0 sends no EDNS record (512-byte answers).
    #[arg(long, default_value_t = 1232)]
    edns_size: u16,
}

/// Which configs the config workloads use.
#[derive(Args, Debug)]
struct ConfigSetArgs {
    /// Configs the requests are spread over: request `s` uses data id `<prefix><s mod K>`.
    #[arg(long, default_value_t = 1000)]
    configs: u64,
    /// Prefix of the data ids.
    #[arg(long, default_value = "bench-")]
    data_id_prefix: String,
    /// Namespace of the configs (default: the server's, `public`).
    #[arg(long)]
    namespace: Option<String>,
    /// Group of the configs (default: the server's, `DEFAULT_GROUP`).
    #[arg(long)]
    group: Option<String>,
}

/// Flags of `strata-bench config-publish`.
#[derive(Args, Debug)]
struct ConfigPublishArgs {
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    set: ConfigSetArgs,
    /// How each client sends requests: `hyper` (one raw HTTP/1.1 connection per client, to
    /// endpoint `i mod n`) or `client` (`strata_client::Client`, failover over every endpoint).
    #[arg(long, value_enum, default_value_t = config::HttpMode::Hyper)]
    http: config::HttpMode,
}

/// Flags of `strata-bench config-get`.
#[derive(Args, Debug)]
struct ConfigGetArgs {
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    set: ConfigSetArgs,
    /// How each client sends requests (see `config-publish --http`).
    #[arg(long, value_enum, default_value_t = config::HttpMode::Hyper)]
    http: config::HttpMode,
    /// Read for this long instead of a number of requests (`--requests` is then unlimited and
    /// `--max-seconds` ignored).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with_all = ["requests", "max_seconds"])]
    duration: Option<Duration>,
}

/// Flags of `strata-bench config-listen`.
#[derive(Args, Debug)]
struct ConfigListenArgs {
    /// The API URL of the node every long-poll goes to.
    #[arg(long)]
    endpoint: String,
    /// Where the change is published (default: `--endpoint`).
    #[arg(long)]
    publish_endpoint: Option<String>,
    /// Concurrent long-polls, one HTTP connection each.
    #[arg(long, default_value_t = 10_000)]
    listeners: usize,
    /// The config listened to; created if missing.
    #[arg(long, default_value = "bench-listen")]
    data_id: String,
    /// Namespace of the config (default: the server's).
    #[arg(long)]
    namespace: Option<String>,
    /// Group of the config (default: the server's).
    #[arg(long)]
    group: Option<String>,
    /// Bytes of the published content.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// The `timeout` each long-poll asks for (the server holds at most 120 s).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    poll_timeout: Duration,
    /// Longest wait for every long-poll to be held before publishing anyway.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    open_timeout: Duration,
    /// Long-polls on their way at once (connecting or sent, not yet counted by the node's
    /// `strata_configcenter_listeners` gauge, which is polled every 5 ms while they open). Below
    /// the node's accept backlog (128: tokio's default), so a burst of connections does not
    /// overflow it and wait for SYN retransmits.
    #[arg(long, default_value_t = 100)]
    open_window: usize,
    /// Keep every long-poll held this long before publishing (for RSS readings).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Write the number of long-polls held to this file once they are all held.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Longest wait after the publish for every answer.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    delivery_timeout: Duration,
    /// Longest wait for the publish and for each setup request, in seconds.
    #[arg(long, default_value_t = 10.0)]
    request_timeout: f64,
}

/// Flags of `strata-bench http-open-loop`.
#[derive(Args, Debug)]
struct HttpOpenLoopArgs {
    /// The URL every request GETs: `http://HOST:PORT/PATH` (no TLS).
    #[arg(long)]
    url: String,
    /// Requests per second over all connections (request `i` is due at `i / rate` s).
    #[arg(long)]
    rate: f64,
    /// How long the schedule runs; `rate × duration` requests in all (at most 20 million).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// HTTP/1.1 keep-alive connections, each with one request in flight; connection `c`
    /// sends requests `c`, `c + N`, `c + 2N`, ...
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// A request unanswered this long (with the reconnection it may need) counts as an error;
    /// nothing is sent or waited for after `duration + timeout`.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// The report line of `http-open-loop`.
#[derive(Serialize, Debug)]
struct OpenLoopReport {
    workload: &'static str,
    /// The URL requested.
    url: String,
    /// The rate asked for, requests per second.
    rate: f64,
    /// Keep-alive connections.
    connections: usize,
    /// Requests in the schedule (`rate × duration`).
    scheduled: u64,
    /// Requests sent.
    sent: u64,
    /// Requests answered with a success status.
    requests: u64,
    /// Requests failed, timed out or left unsent at the deadline.
    errors: u64,
    /// Requests sent after their due time because their connection was still busy (their
    /// latency counts from the due time).
    late: u64,
    /// From the start of the schedule to the last answer.
    seconds: f64,
    /// Successful requests per second of `seconds`.
    achieved_rate: f64,
    /// Median latency; null when nothing succeeded.
    p50_ms: Option<f64>,
    /// 99th percentile latency.
    p99_ms: Option<f64>,
    /// 99.9th percentile latency.
    p999_ms: Option<f64>,
    /// Slowest successful request.
    max_ms: Option<f64>,
    /// CPU seconds (user + system) strata-bench itself used during the run.
    client_cpu_s: Option<f64>,
}

/// Runs `http-open-loop` and prints its report line; fails when nothing succeeded.
async fn drive_http_open_loop(args: HttpOpenLoopArgs) -> anyhow::Result<()> {
    let plan = open_loop::Plan::new(
        &args.url,
        args.rate,
        args.duration,
        args.connections,
        args.timeout,
    )?;
    let cpu_before = process_cpu_seconds();
    let outcome = open_loop::run(plan).await?;
    let elapsed = outcome.elapsed.as_secs_f64();
    let answered = outcome.answered();
    let report = OpenLoopReport {
        workload: "http-open-loop",
        url: args.url.clone(),
        rate: args.rate,
        connections: args.connections,
        scheduled: outcome.scheduled,
        sent: outcome.sent,
        requests: answered,
        errors: outcome.errors,
        late: outcome.late,
        seconds: round_to(elapsed, 3),
        achieved_rate: round_to(per_second(answered, elapsed), 1),
        p50_ms: outcome.percentile_ms(0.50),
        p99_ms: outcome.percentile_ms(0.99),
        p999_ms: outcome.percentile_ms(0.999),
        max_ms: outcome.percentile_ms(1.0),
        client_cpu_s: cpu_used_since(cpu_before),
    };
    println!("{}", serde_json::to_string(&report)?);
    if let Some(message) = &outcome.first_error {
        eprintln!(
            "{} of {} http-open-loop requests failed; first: {message}",
            outcome.errors, outcome.scheduled
        );
    }
    if answered == 0 {
        bail!("no http-open-loop request succeeded");
    }
    Ok(())
}

/// The JSON line printed after a run. Field order is the output order.
#[derive(Serialize, Debug, Default)]
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
    /// The median of the per-second p99s (1-second windows by completion time, each of at
    /// least 100 requests): the steady p99.
    #[serde(skip_serializing_if = "Option::is_none")]
    window_p99_median_ms: Option<f64>,
    /// The worst per-second p99: a stall of the server shows here.
    #[serde(skip_serializing_if = "Option::is_none")]
    window_p99_worst_ms: Option<f64>,
    /// The second of the run (from its start) whose window had the worst p99.
    #[serde(skip_serializing_if = "Option::is_none")]
    window_p99_worst_at_s: Option<u32>,
    /// The p99 of the run's last second, which the run ended before it was whole (left out
    /// of the windows above), and its length in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    window_p99_tail_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    window_tail_seconds: Option<f64>,
    /// When the slowest request completed, in ms from the start of the timed run.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_at_ms: Option<f64>,
    /// Every window's p99 (ms), in time order, and the second of each.
    #[serde(skip_serializing_if = "Option::is_none")]
    window_p99s_ms: Option<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    window_seconds: Option<Vec<u32>>,
    /// When second 0 of the windows began, in ms since the Unix epoch (after the warm-ups).
    #[serde(skip_serializing_if = "Option::is_none")]
    timed_start_unix_ms: Option<u64>,
    /// How many 1-second windows the two above are over.
    #[serde(skip_serializing_if = "Option::is_none")]
    windows: Option<usize>,
    /// How many endpoints the clients were given.
    endpoints: usize,
    /// Bytes per value (the KV workloads).
    #[serde(skip_serializing_if = "Option::is_none")]
    value_size: Option<usize>,
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
    /// For `registry-register`: services the instances were spread over.
    #[serde(skip_serializing_if = "Option::is_none")]
    services: Option<u64>,
    /// For `registry-register`: prefix of the instance ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    id_prefix: Option<String>,
    /// For `registry-register`: ephemeral instances registered.
    #[serde(skip_serializing_if = "Option::is_none")]
    ephemeral: Option<u64>,
    /// For `registry-heartbeat`: instances kept alive.
    #[serde(skip_serializing_if = "Option::is_none")]
    instances: Option<usize>,
    /// For `registry-heartbeat`: time between two heartbeats of one instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    interval_ms: Option<f64>,
    /// For `registry-heartbeat`: heartbeats sent more than `--late-after` after their slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    late: Option<u64>,
    /// For `registry-heartbeat`: the largest delay between a slot and its heartbeat leaving.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_lag_ms: Option<f64>,
    /// For `registry-heartbeat`: true when SIGTERM/SIGINT ended the run before `--duration`.
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped_early: Option<bool>,
    /// For `registry-watch`: the watched service.
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    /// For `registry-watch`: registrations written into the watched service.
    #[serde(skip_serializing_if = "Option::is_none")]
    changes: Option<u64>,
    /// For `registry-watch`: (subscriber, change) deliveries that never came.
    #[serde(skip_serializing_if = "Option::is_none")]
    missed: Option<u64>,
    /// For `registry-watch`: writes that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    failed_writes: Option<u64>,
    /// For `registry-watch`: snapshots resent to subscribers that fell behind.
    #[serde(skip_serializing_if = "Option::is_none")]
    resyncs: Option<u64>,
    /// For `registry-watch`: median fan-out spread (receipt minus the change's first receipt).
    #[serde(skip_serializing_if = "Option::is_none")]
    spread_p50_ms: Option<f64>,
    /// For `registry-watch`: 99th percentile fan-out spread.
    #[serde(skip_serializing_if = "Option::is_none")]
    spread_p99_ms: Option<f64>,
    /// For `registry-watch`: median latency of the writes themselves.
    #[serde(skip_serializing_if = "Option::is_none")]
    write_p50_ms: Option<f64>,
    /// For `registry-watch`: 99th percentile latency of the writes themselves.
    #[serde(skip_serializing_if = "Option::is_none")]
    write_p99_ms: Option<f64>,
    /// For `dns-query`: the name asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// For `dns-query`: the record type asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    record_type: Option<String>,
    /// For `dns-query`: answer records per response (the smallest seen while warming up).
    #[serde(skip_serializing_if = "Option::is_none")]
    answers: Option<usize>,
    /// For `config-publish` and `config-get`: configs the requests were spread over.
    #[serde(skip_serializing_if = "Option::is_none")]
    configs: Option<u64>,
    /// For `config-publish` and `config-get`: how requests were sent (`hyper` or `client`).
    #[serde(skip_serializing_if = "Option::is_none")]
    http: Option<&'static str>,
    /// For `config-publish` and `config-get`: CPU seconds (user + system) strata-bench itself
    /// used for the warm-up and the timed run, to tell the client's share of the machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    client_cpu_s: Option<f64>,
    /// For `config-get`: configs it had to publish before reading.
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<u64>,
    /// For `config-listen`: the config listened to.
    #[serde(skip_serializing_if = "Option::is_none")]
    data_id: Option<String>,
    /// For `config-listen`: long-polls the node's gauge showed held before the publish.
    #[serde(skip_serializing_if = "Option::is_none")]
    held: Option<u64>,
    /// For `config-listen`: from the first connection to every long-poll held.
    #[serde(skip_serializing_if = "Option::is_none")]
    open_ms: Option<f64>,
    /// For `config-listen`: from the first connection to every connection open (measured at
    /// the gauge polls, every 5 ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    connect_ms: Option<f64>,
    /// For `config-listen`: listeners answered with nothing changed (the hold timed out).
    #[serde(skip_serializing_if = "Option::is_none")]
    timed_out: Option<u64>,
    /// For `config-listen`: listeners not answered within `--delivery-timeout`.
    #[serde(skip_serializing_if = "Option::is_none")]
    unanswered: Option<u64>,
    /// For `config-listen`: listeners answered with a change before the publish.
    #[serde(skip_serializing_if = "Option::is_none")]
    early: Option<u64>,
    /// For `config-listen`: listeners that failed (connect, send or a bad answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    failed: Option<u64>,
    /// For `config-listen`: the publish's own latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    publish_ms: Option<f64>,
    /// For `config-listen`: the version the publish created.
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    /// For `config-listen`: this process's resident memory while every long-poll was held.
    #[serde(skip_serializing_if = "Option::is_none")]
    client_rss_mib: Option<f64>,
    /// The first failed request's error, when any failed (also on stderr).
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
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
        Command::EtcdRangeAll(args) => drive_scan("etcd-range-all", args).await,
        Command::EtcdWatchReplay(args) => drive_scan("etcd-watch-replay", args).await,
        Command::RegistryRegister(args) => drive_registry_register(args).await,
        Command::RegistryHeartbeat(args) => drive_registry_heartbeat(args).await,
        Command::RegistryWatch(args) => drive_registry_watch(args).await,
        Command::DnsQuery(args) => drive_dns_query(args).await,
        Command::ConfigPublish(args) => drive_config_publish(args).await,
        Command::ConfigGet(args) => drive_config_get(args).await,
        Command::ConfigListen(args) => drive_config_listen(args).await,
        Command::HttpOpenLoop(args) => drive_http_open_loop(args).await,
        Command::RpcEcho(args) => rpc::rpc_echo(args).await,
        Command::MonitorLoad(args) => monitor::monitor_load(args).await,
        Command::MonitorQuery(args) => monitor::monitor_query(args).await,
        Command::FreePorts { count } => {
            for port in free_ports(count)? {
                println!("{port}");
            }
            Ok(())
        }
        Command::JwtSign(args) => {
            let pem = std::fs::read(&args.key_pem)
                .with_context(|| format!("read {}", args.key_pem.display()))?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .context("the clock is before 1970")?
                .as_secs();
            println!("{}", jwt::sign(&pem, &args.alg, &args.claims, now)?);
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
    finish(name, report, outcome.errors, outcome.first_error.as_deref())
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
    let pool = etcd::Pool::connect(
        &args.endpoints,
        connections,
        request_timeout,
        connection.user.as_deref(),
        connection.tls()?.as_ref(),
    )
    .await?;
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
    finish(name, report, outcome.errors, outcome.first_error.as_deref())
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
    let pool = etcd::Pool::connect(
        &args.endpoints,
        connections,
        request_timeout,
        args.connection.user.as_deref(),
        args.connection.tls()?.as_ref(),
    )
    .await?;
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
        p50_ms: outcome.latency.as_ref().map(|s| s.p50_ms),
        p99_ms: outcome.latency.as_ref().map(|s| s.p99_ms),
        max_ms: outcome.latency.as_ref().map(|s| s.max_ms),
        endpoints: args.endpoints.len(),
        value_size: Some(args.value_size),
        serializable: None,
        connections: Some(pool.len()),
        puts: Some(args.puts),
        put_p50_ms: outcome.put_latency.as_ref().map(|s| s.p50_ms),
        put_p99_ms: outcome.put_latency.as_ref().map(|s| s.p99_ms),
        ..Report::default()
    };
    let errors = report.errors;
    finish("etcd-watch", report, errors, outcome.first_error.as_deref())
}

/// Builds the report of a closed-loop run.
fn load_report(name: &'static str, args: &LoadArgs, outcome: &load::Outcome) -> Report {
    let elapsed = outcome.elapsed.as_secs_f64();
    let windows = outcome.latency.as_ref().and_then(|s| s.windows.clone());
    Report {
        workload: name,
        clients: args.clients,
        requests: outcome.succeeded,
        errors: outcome.errors,
        seconds: round_to(elapsed, 3),
        throughput: round_to(per_second(outcome.succeeded, elapsed), 1),
        p50_ms: outcome.latency.as_ref().map(|s| s.p50_ms),
        p99_ms: outcome.latency.as_ref().map(|s| s.p99_ms),
        max_ms: outcome.latency.as_ref().map(|s| s.max_ms),
        window_p99_median_ms: windows.as_ref().map(|w| w.median_p99_ms),
        window_p99_worst_ms: windows.as_ref().map(|w| w.worst_p99_ms),
        window_p99_worst_at_s: windows.as_ref().map(|w| w.worst_at_s),
        windows: windows.as_ref().map(|w| w.count),
        window_seconds: windows.as_ref().map(|w| w.seconds.clone()),
        window_p99_tail_ms: windows.as_ref().and_then(|w| w.tail).map(|(_, p99)| p99),
        window_tail_seconds: windows.as_ref().and_then(|w| w.tail).map(|(s, _)| s),
        max_at_ms: outcome.latency.as_ref().and_then(|s| s.max_at_ms),
        window_p99s_ms: windows.map(|w| w.p99s_ms),
        timed_start_unix_ms: Some(outcome.started_unix_ms),
        endpoints: args.endpoints.len(),
        value_size: Some(args.value_size),
        ..Report::default()
    }
}

/// Registers instances in a closed loop and prints its report line.
async fn drive_registry_register(args: RegistryRegisterArgs) -> anyhow::Result<()> {
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if args.endpoints.is_empty() {
        bail!("--endpoints needs at least one endpoint");
    }
    if args.services == 0 {
        bail!("--services must be at least 1");
    }
    let request_timeout = seconds(args.request_timeout, "--request-timeout")?;
    let max_duration = seconds(args.max_seconds, "--max-seconds")?;
    let plan = registry::RegisterPlan {
        service_prefix: args.service_prefix.clone(),
        services: args.services,
        id_prefix: args
            .id_prefix
            .clone()
            .unwrap_or_else(|| format!("r{}-", unix_millis())),
        ephemeral_every: args.ephemeral_every,
        ephemeral_ttl: args.ephemeral_ttl,
    };
    let ephemeral_registered = std::sync::Arc::default();
    let driver = registry::RegisterDriver {
        plan: plan.clone(),
        endpoints: args.endpoints.clone(),
        request_timeout,
        ephemeral_registered: std::sync::Arc::clone(&ephemeral_registered),
    };
    let load_plan = load::Plan {
        clients: args.clients,
        requests: args.requests,
        max_duration,
    };
    let outcome = load::run(driver, load_plan).await.with_context(|| {
        format!(
            "warm up {} clients against {:?}",
            args.clients, args.endpoints
        )
    })?;
    let mut ephemeral = std::mem::take(
        &mut *ephemeral_registered
            .lock()
            .expect("ephemeral list lock poisoned"),
    );
    ephemeral.sort_unstable();
    if let Some(path) = &args.ids_out {
        let mut lines = String::new();
        for sequence in &ephemeral {
            let (service, id, _) = plan.instance(*sequence);
            lines.push_str(&format!("{service} {id}\n"));
        }
        std::fs::write(path, lines).with_context(|| format!("write {}", path.display()))?;
    }
    let elapsed = outcome.elapsed.as_secs_f64();
    let report = Report {
        workload: "registry-register",
        clients: args.clients,
        requests: outcome.succeeded,
        errors: outcome.errors,
        seconds: round_to(elapsed, 3),
        throughput: round_to(per_second(outcome.succeeded, elapsed), 1),
        p50_ms: outcome.latency.as_ref().map(|s| s.p50_ms),
        p99_ms: outcome.latency.as_ref().map(|s| s.p99_ms),
        max_ms: outcome.latency.as_ref().map(|s| s.max_ms),
        endpoints: args.endpoints.len(),
        services: Some(args.services),
        id_prefix: Some(plan.id_prefix.clone()),
        ephemeral: Some(ephemeral.len() as u64),
        ..Report::default()
    };
    finish(
        "registry-register",
        report,
        outcome.errors,
        outcome.first_error.as_deref(),
    )
}

/// Heartbeats ephemeral instances until `--duration` or SIGTERM/SIGINT, then prints its
/// report line.
async fn drive_registry_heartbeat(args: RegistryHeartbeatArgs) -> anyhow::Result<()> {
    if args.endpoints.is_empty() {
        bail!("--endpoints needs at least one endpoint");
    }
    if args.interval.is_zero() || args.duration.is_zero() {
        bail!("--interval and --duration must be positive");
    }
    let instances = match (&args.ids_from, &args.prefix) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read {}", path.display()))?;
            registry::parse_ids(&text, args.service.as_deref())
                .with_context(|| format!("parse {}", path.display()))?
        }
        (None, Some(prefix)) => {
            let service = args.service.clone().context("--prefix needs --service")?;
            let count = args.count.context("--prefix needs --count")?;
            (0..count)
                .map(|i| (service.clone(), format!("{prefix}{i:08}")))
                .collect()
        }
        (None, None) => bail!("give --ids-from FILE or --prefix P --count N --service S"),
    };
    let instance_count = instances.len();
    let plan = registry::HeartbeatPlan {
        endpoints: args.endpoints.clone(),
        instances,
        clients: args.clients,
        interval: args.interval,
        duration: args.duration,
        request_timeout: seconds(args.request_timeout, "--request-timeout")?,
        late_after: args.late_after,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        stop_signal().await;
        let _ = stop_tx.send(true);
    });
    let outcome = registry::heartbeat(plan, stop_rx).await?;
    let elapsed = outcome.elapsed.as_secs_f64();
    let report = Report {
        workload: "registry-heartbeat",
        clients: args.clients,
        requests: outcome.succeeded,
        errors: outcome.errors,
        seconds: round_to(elapsed, 3),
        throughput: round_to(per_second(outcome.succeeded, elapsed), 1),
        p50_ms: outcome.latency.as_ref().map(|s| s.p50_ms),
        p99_ms: outcome.latency.as_ref().map(|s| s.p99_ms),
        max_ms: outcome.latency.as_ref().map(|s| s.max_ms),
        endpoints: args.endpoints.len(),
        instances: Some(instance_count),
        interval_ms: Some(round_to(args.interval.as_secs_f64() * 1000.0, 3)),
        late: Some(outcome.late),
        max_lag_ms: Some(round_to(outcome.max_lag.as_secs_f64() * 1000.0, 3)),
        stopped_early: Some(outcome.stopped),
        ..Report::default()
    };
    finish(
        "registry-heartbeat",
        report,
        outcome.errors,
        outcome.first_error.as_deref(),
    )
}

/// Resolves on SIGTERM or SIGINT; never, if neither can be listened for.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// Runs the registry watch fan-out and prints its report line.
async fn drive_registry_watch(args: RegistryWatchArgs) -> anyhow::Result<()> {
    let millis = unix_millis();
    let plan = registry::WatchPlan {
        endpoints: args.endpoints.clone(),
        subscribers: args.subscribers,
        changes: args.changes,
        service: args
            .service
            .clone()
            .unwrap_or_else(|| format!("bench-watch-{millis}")),
        id_prefix: args
            .id_prefix
            .clone()
            .unwrap_or_else(|| format!("w{millis}-")),
        change_interval: args.change_interval,
        request_timeout: seconds(args.request_timeout, "--request-timeout")?,
        delivery_timeout: seconds(args.delivery_timeout, "--delivery-timeout")?,
    };
    let outcome = registry::watch(&plan).await?;
    let elapsed = outcome.elapsed.as_secs_f64();
    let report = Report {
        workload: "registry-watch",
        clients: args.subscribers,
        requests: outcome.delivered,
        errors: outcome.missed + outcome.failed_writes,
        seconds: round_to(elapsed, 3),
        throughput: round_to(per_second(outcome.delivered, elapsed), 1),
        p50_ms: outcome.latency.as_ref().map(|s| s.p50_ms),
        p99_ms: outcome.latency.as_ref().map(|s| s.p99_ms),
        max_ms: outcome.latency.as_ref().map(|s| s.max_ms),
        endpoints: args.endpoints.len(),
        service: Some(plan.service.clone()),
        changes: Some(args.changes),
        missed: Some(outcome.missed),
        failed_writes: Some(outcome.failed_writes),
        resyncs: Some(outcome.resyncs),
        spread_p50_ms: outcome.spread.as_ref().map(|s| s.p50_ms),
        spread_p99_ms: outcome.spread.as_ref().map(|s| s.p99_ms),
        write_p50_ms: outcome.write_latency.as_ref().map(|s| s.p50_ms),
        write_p99_ms: outcome.write_latency.as_ref().map(|s| s.p99_ms),
        ..Report::default()
    };
    let errors = report.errors;
    finish(
        "registry-watch",
        report,
        errors,
        outcome.first_error.as_deref(),
    )
}

/// Sends DNS queries in a closed loop and prints its report line.
async fn drive_dns_query(args: DnsQueryArgs) -> anyhow::Result<()> {
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if args.duration.is_zero() || args.timeout.is_zero() {
        bail!("--duration and --timeout must be positive");
    }
    let server = tokio::net::lookup_host(&args.server)
        .await
        .with_context(|| format!("resolve --server {:?}", args.server))?
        .next()
        .with_context(|| format!("--server {:?} has no address", args.server))?;
    let record_type: hickory_proto::rr::RecordType = args
        .record_type
        .to_ascii_uppercase()
        .parse()
        .map_err(|e| anyhow::anyhow!("--type {:?}: {e}", args.record_type))?;
    let answers = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
    let driver = registry::DnsDriver {
        server,
        query: registry::encode_query(&args.name, record_type, args.edns_size)?,
        timeout: args.timeout,
        answers: std::sync::Arc::clone(&answers),
    };
    let plan = load::Plan {
        clients: args.clients,
        requests: args.requests,
        max_duration: args.duration,
    };
    let outcome = load::run(driver, plan).await.with_context(|| {
        format!(
            "warm up {} clients asking {server} for {} {record_type}",
            args.clients, args.name
        )
    })?;
    let elapsed = outcome.elapsed.as_secs_f64();
    let report = Report {
        workload: "dns-query",
        clients: args.clients,
        requests: outcome.succeeded,
        errors: outcome.errors,
        seconds: round_to(elapsed, 3),
        throughput: round_to(per_second(outcome.succeeded, elapsed), 1),
        p50_ms: outcome.latency.as_ref().map(|s| s.p50_ms),
        p99_ms: outcome.latency.as_ref().map(|s| s.p99_ms),
        max_ms: outcome.latency.as_ref().map(|s| s.max_ms),
        endpoints: 1,
        name: Some(args.name.clone()),
        record_type: Some(record_type.to_string()),
        answers: Some(answers.load(std::sync::atomic::Ordering::Relaxed)),
        ..Report::default()
    };
    finish(
        "dns-query",
        report,
        outcome.errors,
        outcome.first_error.as_deref(),
    )
}

/// Checks the config workloads' names and endpoints and returns their config set.
fn config_set(args: &ConfigSetArgs, endpoints: &[String]) -> anyhow::Result<config::ConfigSet> {
    if args.configs == 0 {
        bail!("--configs must be at least 1");
    }
    config::check_name(&format!("{}0", args.data_id_prefix), "--data-id-prefix")?;
    if let Some(namespace) = &args.namespace {
        config::check_name(namespace, "--namespace")?;
    }
    if let Some(group) = &args.group {
        config::check_name(group, "--group")?;
    }
    config::check_endpoints(endpoints)?;
    Ok(config::ConfigSet {
        namespace: args.namespace.clone(),
        group: args.group.clone(),
        prefix: args.data_id_prefix.clone(),
        configs: args.configs,
    })
}

/// Publishes configs in a closed loop and prints its report line.
async fn drive_config_publish(args: ConfigPublishArgs) -> anyhow::Result<()> {
    let (request_timeout, max_duration) = checked_limits(&args.load)?;
    let set = config_set(&args.set, &args.load.endpoints)?;
    let driver = config::PublishDriver {
        set,
        value_size: args.load.value_size,
        endpoints: args.load.endpoints.clone(),
        mode: args.http,
        request_timeout,
    };
    let plan = load::Plan {
        clients: args.load.clients,
        requests: args.load.requests,
        max_duration,
    };
    let cpu_before = process_cpu_seconds();
    let outcome = load::run(driver, plan).await.with_context(|| {
        format!(
            "warm up {} clients against {:?}",
            args.load.clients, args.load.endpoints
        )
    })?;
    let mut report = load_report("config-publish", &args.load, &outcome);
    report.client_cpu_s = cpu_used_since(cpu_before);
    report.configs = Some(args.set.configs);
    report.http = Some(args.http.name());
    finish(
        "config-publish",
        report,
        outcome.errors,
        outcome.first_error.as_deref(),
    )
}

/// Reads configs in a closed loop (publishing the missing ones first) and prints its report
/// line.
async fn drive_config_get(args: ConfigGetArgs) -> anyhow::Result<()> {
    let (request_timeout, mut max_duration) = checked_limits(&args.load)?;
    let mut requests = args.load.requests;
    if let Some(duration) = args.duration {
        if duration.is_zero() {
            bail!("--duration must be positive");
        }
        max_duration = duration;
        requests = u64::MAX;
    }
    let set = config_set(&args.set, &args.load.endpoints)?;
    let created = config::ensure_configs(
        &set,
        &args.load.endpoints,
        args.load.value_size,
        request_timeout.max(Duration::from_secs(30)),
    )
    .await
    .context("prepare the configs to read")?;
    let driver = config::GetDriver::new(
        &set,
        args.load.endpoints.clone(),
        args.http,
        request_timeout,
    )?;
    let plan = load::Plan {
        clients: args.load.clients,
        requests,
        max_duration,
    };
    let cpu_before = process_cpu_seconds();
    let outcome = load::run(driver, plan).await.with_context(|| {
        format!(
            "warm up {} clients against {:?}",
            args.load.clients, args.load.endpoints
        )
    })?;
    let mut report = load_report("config-get", &args.load, &outcome);
    report.client_cpu_s = cpu_used_since(cpu_before);
    report.configs = Some(args.set.configs);
    report.http = Some(args.http.name());
    report.created = Some(created);
    finish(
        "config-get",
        report,
        outcome.errors,
        outcome.first_error.as_deref(),
    )
}

/// Runs the long-poll fan-out and prints its report line.
async fn drive_config_listen(args: ConfigListenArgs) -> anyhow::Result<()> {
    config::check_name(&args.data_id, "--data-id")?;
    for (name, flag) in [(&args.namespace, "--namespace"), (&args.group, "--group")] {
        if let Some(name) = name {
            config::check_name(name, flag)?;
        }
    }
    if args.open_timeout.is_zero() || args.delivery_timeout.is_zero() {
        bail!("--open-timeout and --delivery-timeout must be positive");
    }
    let plan = config::ListenPlan {
        endpoint: args.endpoint.clone(),
        publish_endpoint: args
            .publish_endpoint
            .clone()
            .unwrap_or_else(|| args.endpoint.clone()),
        listeners: args.listeners,
        namespace: args.namespace.clone(),
        group: args.group.clone(),
        data_id: args.data_id.clone(),
        value_size: args.value_size,
        poll_timeout: args.poll_timeout,
        open_timeout: args.open_timeout,
        open_window: args.open_window,
        hold: args.hold,
        ready_file: args.ready_file.clone(),
        delivery_timeout: args.delivery_timeout,
        request_timeout: seconds(args.request_timeout, "--request-timeout")?,
    };
    let outcome = config::listen(&plan).await?;
    let elapsed = outcome.elapsed.as_secs_f64();
    let report = Report {
        workload: "config-listen",
        clients: args.listeners,
        requests: outcome.notified,
        errors: (args.listeners as u64).saturating_sub(outcome.notified),
        seconds: round_to(elapsed, 3),
        throughput: round_to(per_second(outcome.notified, elapsed), 1),
        p50_ms: outcome.latency.as_ref().map(|s| s.p50_ms),
        p99_ms: outcome.latency.as_ref().map(|s| s.p99_ms),
        max_ms: outcome.latency.as_ref().map(|s| s.max_ms),
        endpoints: 1,
        value_size: Some(args.value_size),
        data_id: Some(args.data_id.clone()),
        held: Some(outcome.held),
        open_ms: Some(round_to(outcome.open_elapsed.as_secs_f64() * 1000.0, 3)),
        connect_ms: outcome
            .connect_elapsed
            .map(|d| round_to(d.as_secs_f64() * 1000.0, 3)),
        timed_out: Some(outcome.timed_out),
        unanswered: Some(outcome.unanswered),
        early: Some(outcome.early),
        failed: Some(outcome.failed),
        publish_ms: Some(round_to(outcome.publish_latency.as_secs_f64() * 1000.0, 3)),
        version: Some(outcome.version),
        client_rss_mib: outcome.client_rss_mib,
        ..Report::default()
    };
    let errors = report.errors;
    finish(
        "config-listen",
        report,
        errors,
        outcome.first_error.as_deref(),
    )
}

/// CPU seconds (user + system) this process has used, from `/proc/self/stat` (Linux; clock
/// ticks of 1/100 s, the `USER_HZ` of every Linux architecture we run on).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12th and 13th after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// CPU seconds used since `before` (a [`process_cpu_seconds`] reading).
fn cpu_used_since(before: Option<f64>) -> Option<f64> {
    Some(round_to(process_cpu_seconds()? - before?, 2))
}

/// Prints the report line and the first failure; fails when nothing succeeded.
fn finish(
    name: &str,
    mut report: Report,
    errors: u64,
    first_error: Option<&str>,
) -> anyhow::Result<()> {
    report.first_error = first_error.map(str::to_string);
    println!("{}", serde_json::to_string(&report)?);
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
    fn cli_parses_the_registry_workloads() {
        let cli = Cli::try_parse_from([
            "strata-bench",
            "registry-register",
            "--endpoints",
            "http://a:1,http://b:2",
            "--clients",
            "64",
            "--requests",
            "1000",
            "--ephemeral-every",
            "10",
            "--ephemeral-ttl",
            "5s",
        ])
        .unwrap();
        let Command::RegistryRegister(args) = cli.command else {
            panic!("expected registry-register");
        };
        assert_eq!((args.clients, args.requests, args.services), (64, 1000, 10));
        assert_eq!(args.ephemeral_ttl, Duration::from_secs(5));

        let cli = Cli::try_parse_from([
            "strata-bench",
            "registry-heartbeat",
            "--endpoints",
            "http://a:1",
            "--service",
            "web",
            "--prefix",
            "r1-",
            "--count",
            "10",
            "--duration",
            "2m",
        ])
        .unwrap();
        let Command::RegistryHeartbeat(args) = cli.command else {
            panic!("expected registry-heartbeat");
        };
        assert_eq!(args.duration, Duration::from_secs(120));
        assert_eq!(args.interval, Duration::from_secs(5));
        // --prefix needs --count and --service; --ids-from and --prefix exclude each other.
        assert!(Cli::try_parse_from([
            "strata-bench",
            "registry-heartbeat",
            "--endpoints",
            "http://a:1",
            "--prefix",
            "r1-",
        ])
        .is_err());
        assert!(Cli::try_parse_from([
            "strata-bench",
            "registry-heartbeat",
            "--endpoints",
            "http://a:1",
        ])
        .is_err());

        let cli = Cli::try_parse_from([
            "strata-bench",
            "dns-query",
            "--server",
            "127.0.0.1:8600",
            "--type",
            "SRV",
        ])
        .unwrap();
        let Command::DnsQuery(args) = cli.command else {
            panic!("expected dns-query");
        };
        assert_eq!(args.record_type, "SRV");
        assert_eq!(args.timeout, Duration::from_secs(1));
    }

    #[test]
    fn cli_parses_the_config_workloads() {
        let cli = Cli::try_parse_from([
            "strata-bench",
            "config-publish",
            "--endpoints",
            "http://a:1,http://b:2",
            "--clients",
            "64",
            "--requests",
            "1000",
            "--configs",
            "10",
        ])
        .unwrap();
        let Command::ConfigPublish(args) = cli.command else {
            panic!("expected config-publish");
        };
        assert_eq!((args.load.clients, args.set.configs), (64, 10));
        assert_eq!(args.load.value_size, 256);
        assert_eq!(args.http, config::HttpMode::Hyper);

        let cli = Cli::try_parse_from([
            "strata-bench",
            "config-get",
            "--endpoints",
            "http://a:1",
            "--duration",
            "5s",
            "--http",
            "client",
        ])
        .unwrap();
        let Command::ConfigGet(args) = cli.command else {
            panic!("expected config-get");
        };
        assert_eq!(args.duration, Some(Duration::from_secs(5)));
        assert_eq!(args.set.configs, 1000);
        assert_eq!(args.http, config::HttpMode::Client);
        // --duration and --requests exclude each other.
        assert!(Cli::try_parse_from([
            "strata-bench",
            "config-get",
            "--endpoints",
            "http://a:1",
            "--duration",
            "5s",
            "--requests",
            "10",
        ])
        .is_err());

        let cli = Cli::try_parse_from([
            "strata-bench",
            "config-listen",
            "--endpoint",
            "http://a:1",
            "--listeners",
            "100",
            "--hold",
            "2s",
        ])
        .unwrap();
        let Command::ConfigListen(args) = cli.command else {
            panic!("expected config-listen");
        };
        assert_eq!(args.listeners, 100);
        assert_eq!(args.hold, Duration::from_secs(2));
        assert_eq!(args.poll_timeout, Duration::from_secs(120));
        assert_eq!(args.data_id, "bench-listen");
    }

    #[test]
    fn cli_parses_http_open_loop() {
        let cli = Cli::try_parse_from([
            "strata-bench",
            "http-open-loop",
            "--url",
            "http://127.0.0.1:8080/12",
            "--rate",
            "20000",
            "--duration",
            "8s",
        ])
        .unwrap();
        let Command::HttpOpenLoop(args) = cli.command else {
            panic!("expected http-open-loop");
        };
        assert_eq!(args.rate, 20000.0);
        assert_eq!(args.duration, Duration::from_secs(8));
        assert_eq!(args.connections, 64);
        assert_eq!(args.timeout, Duration::from_secs(2));
        // --url and --rate are required.
        assert!(Cli::try_parse_from(["strata-bench", "http-open-loop", "--rate", "1"]).is_err());
    }

    #[test]
    fn cli_parses_jwt_sign() {
        let cli = Cli::try_parse_from([
            "strata-bench",
            "jwt-sign",
            "--key-pem",
            "/tmp/key.pem",
            "--alg",
            "ES256",
            "--claims",
            r#"{"sub":"bench"}"#,
        ])
        .unwrap();
        let Command::JwtSign(args) = cli.command else {
            panic!("expected jwt-sign");
        };
        assert_eq!(args.key_pem, PathBuf::from("/tmp/key.pem"));
        assert_eq!(args.alg, "ES256");
        assert_eq!(args.claims, r#"{"sub":"bench"}"#);
        // --key-pem is required.
        assert!(Cli::try_parse_from(["strata-bench", "jwt-sign"]).is_err());
    }

    #[test]
    fn cpu_seconds_are_read() {
        let cpu = process_cpu_seconds().expect("/proc/self/stat");
        assert!(cpu >= 0.0);
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
