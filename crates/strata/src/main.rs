//! `strata`: the one binary. `strata dev` and `strata server` run a node; every other
//! subcommand is a client of the native HTTP API.
//!
//! `main` only parses the command line, loads and validates the config, initialises logging,
//! runs the command, and maps the outcome to an exit code (`✘ message` and exit 1 on error).

mod client_cmds;
mod config_cmds;
mod coord_cmds;
mod log_limit;
mod run;
mod svc_cmds;

use clap::{Parser, Subcommand, ValueEnum};

/// Strata runs the whole architecture of a distributed system from one binary.
///
/// Start a development node with `strata dev`, then talk to it:
///   strata kv put greeting hello
///   strata kv get greeting
///   strata cluster status
#[derive(Parser, Debug)]
#[command(name = "strata", version, about, long_about, propagate_version = true)]
pub struct Cli {
    /// Nodes to talk to, comma-separated (client commands).
    #[arg(
        long,
        global = true,
        env = "STRATA_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7700"
    )]
    pub endpoints: Vec<String>,
    /// Output format of client commands.
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
    /// Publish, read, roll back and follow configs (the configuration center).
    #[command(subcommand)]
    Config(config_cmds::ConfigCommand),
}

fn main() {
    let cli = Cli::parse();
    let is_node = matches!(cli.command, Command::Dev(_) | Command::Server(_));
    init_logging(is_node);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => fail(&format!("cannot start the async runtime: {e}")),
    };
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
            Command::Config(cmd) => config_cmds::config(&cli.endpoints, cli.output, cmd).await,
        }
    });
    // Do not wait for lingering blocking tasks (e.g. a stdin reader) at exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    if let Err(e) = result {
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
        "warn"
    };
    let filter = EnvFilter::try_from_env("STRATA_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let limit = log_limit::RepeatLimit::default();
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
