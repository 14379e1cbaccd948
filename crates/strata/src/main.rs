//! `strata`: the one binary. `strata dev` and `strata server` run a node; every other
//! subcommand is a client of the native HTTP API.
//!
//! `main` only parses the command line, loads and validates the config, initialises logging,
//! runs the command, and maps the outcome to an exit code (`✘ message` and exit 1 on error).

mod auth_cmds;
mod cert_cmds;
mod client_cmds;
mod config_cmds;
mod coord_cmds;
mod duration;
mod gateway_cmds;
mod link;
mod log_limit;
mod monitor_cmds;
mod monitor_trace_cmds;
mod rpc_cmds;
mod run;
mod svc_cmds;
mod table;

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc instead of glibc's malloc: under write load glibc's allocator (`_int_malloc`,
/// `malloc_consolidate`, and the kernel zeroing the pages it trims and takes back) was a
/// fifth of every node's CPU. See ARCHITECTURE.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Examples printed under `strata --help`.
const EXAMPLES: &str = "\
Examples:
  strata dev                          run every component on this machine (keep it running)
  strata kv put greeting hello        write a key
  strata kv get greeting              read it back
  strata kv watch greeting            print every change to it (Ctrl-C to stop)
  strata svc list                     services in the registry
  strata config get app.yaml          a config from the configuration center
  strata cluster status               leader, term, indexes and members
  strata auth login --password-stdin  log in (when access control is on)

Client commands talk to http://127.0.0.1:7700 unless given --endpoints (or STRATA_ENDPOINTS).
`strata COMMAND --help` explains each command.";

/// Strata runs the whole architecture of a distributed system from one binary.
#[derive(Parser, Debug)]
#[command(
    name = "strata",
    version = env!("STRATA_VERSION"),
    about,
    after_help = EXAMPLES
)]
pub struct Cli {
    /// Nodes to talk to, comma-separated: http://HOST:PORT of each node's API.
    #[arg(
        long,
        global = true,
        env = "STRATA_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7700"
    )]
    pub endpoints: Vec<String>,
    /// Token sent to the API when access control is on (default: the one `strata auth login`
    /// stored).
    #[arg(long, global = true, env = "STRATA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to trust for https:// endpoints (default: the system's roots).
    #[arg(long, global = true, env = "STRATA_CACERT", value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for https:// endpoints; its name is the user it logs in as.
    #[arg(
        long = "cert",
        global = true,
        env = "STRATA_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long = "key",
        global = true,
        env = "STRATA_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<std::path::PathBuf>,
    /// Output format: table (for people) or json (for scripts).
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

/// How client commands print results.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable.
    Table,
    /// One JSON document (or one per line for streams).
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one node with every component on 127.0.0.1, data in ./strata-data.
    Dev(run::DevArgs),
    /// Run a cluster node.
    Server(Box<run::ServerArgs>),
    /// Read and write keys (etcd semantics: revisions, txn, watch).
    #[command(subcommand)]
    Kv(client_cmds::KvCommand),
    /// Grant, renew and revoke leases; keys attached to a lease die with it.
    #[command(subcommand)]
    Lease(client_cmds::LeaseCommand),
    /// Run a command while holding a distributed lock (fencing token in STRATA_FENCING_TOKEN).
    Lock(coord_cmds::LockArgs),
    /// Campaign in a leader election, or observe it with --listen.
    Elect(coord_cmds::ElectArgs),
    /// Inspect and change cluster membership.
    #[command(subcommand)]
    Cluster(client_cmds::ClusterCommand),
    /// Register, find and watch service instances (the service registry).
    #[command(subcommand)]
    Svc(svc_cmds::SvcCommand),
    /// List, call and benchmark the gRPC methods of a registered service (by reflection).
    #[command(subcommand)]
    Rpc(rpc_cmds::RpcCommand),
    /// Query metrics with PromQL, list scrape targets and alerts, apply rule files, find
    /// traces (the monitoring center).
    #[command(subcommand)]
    Monitor(monitor_cmds::MonitorCommand),
    /// Publish, read, roll back and follow configs (the configuration center).
    #[command(subcommand)]
    Config(config_cmds::ConfigCommand),
    /// Manage the gateway's routes and see its upstream groups, or run a gateway alone
    /// (`--config FILE`).
    Gateway(gateway_cmds::GatewayArgs),
    /// Log in, turn access control on and off, manage users, roles and tokens.
    #[command(subcommand)]
    Auth(auth_cmds::AuthCommand),
    /// Make a CA and certificates for TLS (for people without a PKI).
    #[command(subcommand)]
    Cert(cert_cmds::CertCommand),
}

/// The error of a command whose exit status `strata` passes on (`strata lock NAME -- CMD`
/// exits as CMD did), without printing anything.
#[derive(Debug)]
pub(crate) struct PassExit(pub i32);

impl std::fmt::Display for PassExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the command exited with status {}", self.0)
    }
}

impl std::error::Error for PassExit {}

/// Exit status when stdout's reader went away (a shell reports SIGPIPE deaths as 128 + 13).
const EXIT_BROKEN_PIPE: i32 = 141;

/// Makes a closed stdout (`strata ... | head -1`) end the process quietly, as it ends Unix
/// tools, instead of with a panic and a backtrace. Rust ignores SIGPIPE, so `println!` panics
/// with "failed printing to stdout: Broken pipe"; this hook recognises that one panic and
/// exits with [`EXIT_BROKEN_PIPE`]. Every other panic is reported as usual.
fn exit_quietly_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(EXIT_BROKEN_PIPE);
        }
        default(info);
    }));
}

/// Turns transparent huge pages off for this process, as Redis does, unless
/// `MIMALLOC_ALLOW_THP` says otherwise. The allocator asks the kernel for huge pages on its
/// large regions; a fault in one then zeroes (and, on a fragmented machine, first compacts)
/// 2 MiB at once while a request waits. Measured on `strata dev` under 300,000 puts: p99 11.6-14.8
/// ms with them, 8.8-11.5 without, and RSS 248 MiB against 222 (docs/benchmarks.md).
fn without_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    if let Err(error) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("strata: cannot turn transparent huge pages off ({error}); running with them");
    }
}

fn main() {
    exit_quietly_on_broken_pipe();
    let cli = Cli::parse();
    let is_node = matches!(cli.command, Command::Dev(_) | Command::Server(_))
        || matches!(&cli.command, Command::Gateway(args) if args.config.is_some());
    if is_node {
        without_transparent_huge_pages();
    }
    if let Command::Cert(cmd) = cli.command {
        if let Err(e) = cert_cmds::cert(cmd) {
            fail(&format!("{e:#}"));
        }
        return;
    }
    init_logging(is_node);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => fail(&format!("cannot start the async runtime: {e}")),
    };
    let mut cli = cli;
    if !is_node {
        cli.endpoints = strata_client::parse_endpoints(&cli.endpoints).unwrap_or_else(|e| fail(&e));
        strata_client::set_default_token(auth_cmds::resolve_token(cli.token.take()));
        let identity = cli.client_cert.as_deref().zip(cli.client_key.as_deref());
        if cli.cacert.is_some() || identity.is_some() {
            strata_client::set_default_tls(cli.cacert.as_deref(), identity)
                .unwrap_or_else(|e| fail(&format!("TLS: {e}")));
        }
    }
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => run::dev(args).await,
            Command::Server(args) => run::server(*args).await,
            Command::Kv(cmd) => client_cmds::kv(&cli.endpoints, cli.output, cmd).await,
            Command::Lease(cmd) => client_cmds::lease(&cli.endpoints, cli.output, cmd).await,
            Command::Cluster(cmd) => client_cmds::cluster(&cli.endpoints, cli.output, cmd).await,
            Command::Lock(args) => coord_cmds::lock(&cli.endpoints, cli.output, args).await,
            Command::Elect(args) => coord_cmds::elect(&cli.endpoints, cli.output, args).await,
            Command::Svc(cmd) => svc_cmds::svc(&cli.endpoints, cli.output, cmd).await,
            Command::Rpc(cmd) => rpc_cmds::rpc(&cli.endpoints, cli.output, cmd).await,
            Command::Monitor(cmd) => monitor_cmds::monitor(&cli.endpoints, cli.output, cmd).await,
            Command::Config(cmd) => config_cmds::config(&cli.endpoints, cli.output, cmd).await,
            Command::Gateway(cmd) => gateway_cmds::gateway(&cli.endpoints, cli.output, cmd).await,
            Command::Auth(cmd) => auth_cmds::auth(&cli.endpoints, cli.output, cmd).await,
            Command::Cert(_) => Ok(()),
        }
    });
    // Do not wait for lingering blocking tasks (e.g. a stdin reader) at exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    if let Err(e) = result {
        if let Some(PassExit(code)) = e.downcast_ref::<PassExit>() {
            std::process::exit(*code);
        }
        fail(&format!("{e:#}"));
    }
}

fn fail(message: &str) -> ! {
    let one_line = message.replace('\n', " ");
    eprintln!("✘ {one_line}");
    std::process::exit(1);
}

/// Logs go to stderr. Nodes log at info, clients at warn; `STRATA_LOG` overrides
/// (e.g. `STRATA_LOG=debug`), and `STRATA_LOG_FORMAT=json` gives structured JSON lines.
/// Repeated warnings and errors are limited per call site ([`log_limit`]).
fn init_logging(is_node: bool) {
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let default = if is_node {
        "info,openraft=warn,fjall=warn,lsm_tree=warn"
    } else {
        // The CLI reports a failed call itself; the consumer's own log line would repeat it.
        "warn,strata_rpc::consumer=error"
    };
    let (filter, limit) = match EnvFilter::try_from_env("STRATA_LOG") {
        Ok(filter) => (filter, log_limit::RepeatLimit::default()),
        Err(_) => (
            EnvFilter::new(default),
            log_limit::RepeatLimit::quiet_openraft_network(),
        ),
    };
    let layer = if std::env::var("STRATA_LOG_FORMAT").as_deref() == Ok("json") {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed()
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter.and(limit.clone())))
        .init();
    if is_node {
        limit.spawn_reporter();
    }
}
