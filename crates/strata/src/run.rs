//! `strata dev` and `strata server`: build the config, start the node, wait for a signal,
//! shut down gracefully.
//!
//! Signals (docs/ops/signals.md): SIGTERM or the first SIGINT starts a graceful shutdown
//! bounded by `shutdown_grace_period`; a second SIGINT exits at once with status 130.

use anyhow::{bail, Context};
use clap::Args;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use strata_node::Node;
use strata_settings::NodeConfig;
use tokio::signal::unix::{signal, SignalKind};

/// Arguments of `strata dev`.
#[derive(Args, Debug)]
pub struct DevArgs {
    /// Folder for all data.
    #[arg(long, default_value = "./strata-data")]
    pub data_dir: PathBuf,
    /// Client API address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub api_addr: String,
    /// Raft address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7701")]
    pub raft_addr: String,
    /// etcd v3 gRPC API address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7702")]
    pub grpc_addr: String,
    /// Consul-compatible HTTP API address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7705")]
    pub consul_addr: String,
    /// Registry DNS address, UDP and TCP (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7703")]
    pub dns_addr: String,
    /// Nacos-compatible HTTP API address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7848")]
    pub nacos_addr: String,
    /// Nacos 2.x gRPC API address (port 0 picks a free port). Nacos clients dial the Nacos
    /// port + 1000: 7848 + 1000 = 8848 is not this, so tell them (docs/config-center.md).
    #[arg(long, default_value = "127.0.0.1:7849")]
    pub nacos_grpc_addr: String,
    /// API gateway address, HTTP/1.1 and h2c (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7780")]
    pub gateway_addr: String,
    /// API gateway over TLS, certificates by SNI from the route table (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7743")]
    pub gateway_tls_addr: String,
    /// xDS control plane (ADS) for gRPC clients dialing `xds:///SERVICE` (port 0 picks a free
    /// port).
    #[arg(long, default_value = "127.0.0.1:7718")]
    pub xds_addr: String,
    /// Write the bound addresses as JSON to this file once listening.
    #[arg(long)]
    pub addrs_file: Option<PathBuf>,
    #[command(flatten)]
    pub components: ComponentFlags,
    #[command(flatten)]
    pub not_for_nodes: ClientOnlyFlags,
}

/// Which components run, and where listeners of components without a flag of their own
/// listen.
#[derive(Args, Debug, Default)]
pub struct ComponentFlags {
    /// Listen address of a component's listener, NAME=HOST:PORT (repeatable); e.g.
    /// --listen grpc=127.0.0.1:2379.
    #[arg(long, value_name = "NAME=HOST:PORT")]
    pub listen: Vec<String>,
    /// Run only these components, comma-separated (default: all): etcd, registry,
    /// config_center, nacos.
    #[arg(long, value_delimiter = ',')]
    pub roles: Option<Vec<String>>,
}

impl ComponentFlags {
    /// Applies the flags on top of `config`.
    fn apply(self, config: &mut NodeConfig) -> anyhow::Result<()> {
        for entry in self.listen {
            let Some((name, addr)) = entry.split_once('=') else {
                bail!("--listen {entry:?} is not NAME=HOST:PORT");
            };
            let name = name.trim().to_string();
            // A flag wins over the file's older spelling of the same listener.
            for (key, legacy) in [
                ("grpc", &mut config.grpc_addr),
                ("consul", &mut config.consul_addr),
                ("dns", &mut config.dns_addr),
                ("nacos", &mut config.nacos_addr),
            ] {
                if key == name {
                    *legacy = None;
                }
            }
            match name.as_str() {
                "api" => config.api_addr = addr.trim().to_string(),
                "raft" => config.raft_addr = addr.trim().to_string(),
                _ => {}
            }
            config.listen.insert(name, addr.trim().to_string());
        }
        if let Some(roles) = self.roles {
            config.roles = Some(roles);
        }
        Ok(())
    }
}

/// Sets `[section] key = value` in `config`, replacing what the file said.
fn set_section_value(config: &mut NodeConfig, section: &str, key: &str, value: toml::Value) {
    let table = config
        .sections
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(Default::default()));
    if let Some(table) = table.as_table_mut() {
        table.insert(key.to_string(), value);
    }
}

/// The client-only global flags, declared again (hidden) on the node commands so that their
/// help does not list them among the node's options. A node ignores them.
#[derive(Args, Debug, Default)]
pub struct ClientOnlyFlags {
    #[arg(long, hide = true, value_delimiter = ',')]
    endpoints: Option<Vec<String>>,
    #[arg(long, hide = true, value_enum)]
    output: Option<crate::Output>,
    #[arg(long, hide = true)]
    token: Option<String>,
}

/// Arguments of `strata server`. Flags override the config file.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// TOML config file (see --sample-config).
    #[arg(long, env = "STRATA_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id (positive, unique, never reused).
    #[arg(long)]
    pub id: Option<u64>,
    /// Folder for this node's data.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Client API listen address, HOST:PORT.
    #[arg(long)]
    pub api_addr: Option<String>,
    /// Node-to-node listen address, HOST:PORT.
    #[arg(long)]
    pub raft_addr: Option<String>,
    /// etcd v3 gRPC API listen address, HOST:PORT (disabled unless given here or in the config).
    #[arg(long)]
    pub grpc_addr: Option<String>,
    /// Consul-compatible HTTP API listen address, HOST:PORT (disabled unless given).
    #[arg(long)]
    pub consul_addr: Option<String>,
    /// Registry DNS listen address for UDP and TCP, HOST:PORT (disabled unless given).
    #[arg(long)]
    pub dns_addr: Option<String>,
    /// Nacos-compatible HTTP API listen address, HOST:PORT (disabled unless given).
    #[arg(long)]
    pub nacos_addr: Option<String>,
    /// Nacos 2.x gRPC API listen address, HOST:PORT (disabled unless given); Nacos clients
    /// expect it at the Nacos HTTP port + 1000.
    #[arg(long)]
    pub nacos_grpc_addr: Option<String>,
    /// Registry DNS domain (default "strata": NAME.service.strata).
    #[arg(long)]
    pub dns_domain: Option<String>,
    /// Address peers use to reach this node's raft listener, if not --raft-addr.
    #[arg(long)]
    pub advertise_raft_addr: Option<String>,
    /// Address clients use to reach this node's API, if not --api-addr.
    #[arg(long)]
    pub advertise_api_addr: Option<String>,
    /// Founding members as ID=RAFT_HOST:PORT,... Omit to join later via `cluster add-member`.
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// Write the bound addresses as JSON to this file once listening.
    #[arg(long)]
    pub addrs_file: Option<PathBuf>,
    /// TLS certificate chain (PEM) for the client listeners (API, etcd gRPC, Consul, Nacos).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that signs client certificates; a client certificate's name is its user.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificates: none, optional (default with --tls-ca) or require.
    #[arg(long, value_name = "MODE")]
    pub tls_client_auth: Option<String>,
    /// Mutual TLS between raft peers: this node's certificate chain (PEM), presented to peers
    /// and served on the raft listener. Needs --peer-tls-key and --peer-tls-ca.
    #[arg(long, value_name = "FILE", requires_all = ["peer_tls_key", "peer_tls_ca"])]
    pub peer_tls_cert: Option<PathBuf>,
    /// The peer certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "peer_tls_cert")]
    pub peer_tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): peers must present a certificate it signed.
    #[arg(long, value_name = "FILE", requires = "peer_tls_cert")]
    pub peer_tls_ca: Option<PathBuf>,
    /// Names a peer's certificate may carry (common name, else first DNS name),
    /// comma-separated; needed when the cluster CA also signs client certificates.
    #[arg(
        long,
        value_name = "NAME",
        value_delimiter = ',',
        requires = "peer_tls_cert"
    )]
    pub peer_tls_allowed_name: Vec<String>,
    /// Allow plain TCP on addresses other than loopback (anyone on the network can then read
    /// and forge traffic).
    #[arg(long)]
    pub insecure: bool,
    /// At the cluster's first start: create the user root with the password in this file
    /// and turn access control on. Ignored once a root user exists.
    #[arg(long, env = "STRATA_ROOT_PASSWORD_FILE", value_name = "FILE")]
    pub root_password_file: Option<PathBuf>,
    #[command(flatten)]
    pub components: ComponentFlags,
    /// Print a commented sample config and exit.
    #[arg(long)]
    pub sample_config: bool,
    /// Validate a config file and exit.
    #[arg(long, value_name = "FILE")]
    pub check_config: Option<PathBuf>,
    #[command(flatten)]
    pub not_for_nodes: ClientOnlyFlags,
}

/// Runs `strata dev`.
pub async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut config = NodeConfig {
        id: 1,
        data_dir: args.data_dir.clone(),
        api_addr: args.api_addr,
        raft_addr: args.raft_addr,
        grpc_addr: Some(args.grpc_addr),
        consul_addr: Some(args.consul_addr),
        dns_addr: Some(args.dns_addr),
        nacos_addr: Some(args.nacos_addr),
        addrs_file: args.addrs_file,
        ..Default::default()
    };
    config
        .listen
        .insert("gateway".to_string(), args.gateway_addr.clone());
    config
        .listen
        .insert("gateway_tls".to_string(), args.gateway_tls_addr.clone());
    config
        .listen
        .insert("xds".to_string(), args.xds_addr.clone());
    config
        .listen
        .insert("nacos_grpc".to_string(), args.nacos_grpc_addr.clone());
    // A one-node cluster founds itself; its raft address is filled in once bound.
    config.initial_cluster.insert(1, config.raft_addr.clone());
    // One node has no one to wait for: short timeouts make it ready at once.
    config.raft.heartbeat_interval = strata_settings::HumanDuration::from_millis(50);
    config.raft.election_timeout_min = strata_settings::HumanDuration::from_millis(150);
    config.raft.election_timeout_max = strata_settings::HumanDuration::from_millis(300);
    let key = dev_encryption_key(&args.data_dir)?;
    set_section_value(
        &mut config,
        "config_center",
        "encryption_key",
        toml::Value::String(key),
    );
    args.components.apply(&mut config)?;
    let config = config.validate().context("check the dev configuration")?;
    let grace = config.shutdown_grace_period.0;
    let node = Node::start(config).await?;
    wait_for_leader(&node, Duration::from_secs(10)).await?;
    let root_password = dev_root_password(&node, &args.data_dir)?;
    println!(
        "strata dev: node 1 ready in {} ms",
        started.elapsed().as_millis()
    );
    println!("  api     http://{}", node.addrs.api());
    println!("  raft    {}", node.addrs.raft());
    // The listeners the README shows first, in its order; any others after them.
    let order = [
        "grpc",
        "consul",
        "dns",
        "nacos",
        "nacos_grpc",
        "gateway",
        "gateway_tls",
        "xds",
    ];
    let mut listeners: Vec<_> = node.addrs.iter().collect();
    listeners.sort_by_key(|(name, _)| order.iter().position(|o| o == name).unwrap_or(order.len()));
    for (name, addr) in listeners {
        if let Some(line) = banner_line(name, addr) {
            println!("{line}");
        }
    }
    println!("  console http://{}/ui/", node.addrs.api());
    println!("  metrics http://{}/metrics", node.addrs.api());
    println!("  data    {}", args.data_dir.display());
    let on_off = if node.auth.enabled() { "on" } else { "off" };
    println!(
        "  auth    {on_off} (user root, password in {}; strata auth enable turns it on)",
        root_password.display()
    );
    println!("try: strata kv put greeting hello && strata kv get greeting");
    wait_for_signal(node, grace).await
}

/// One line of `strata dev`'s banner for a component listener, with how to use it; `None` for
/// the API and raft listeners, which have lines of their own.
fn banner_line(name: &str, addr: std::net::SocketAddr) -> Option<String> {
    let hint = match name {
        "api" | "raft" => return None,
        "grpc" => format!(
            "{addr}   (etcd v3 API: ETCDCTL_API=3 etcdctl --endpoints={addr} get --prefix '')"
        ),
        "consul" => format!("http://{addr}   (Consul-compatible API: CONSUL_HTTP_ADDR={addr})"),
        "dns" => format!(
            "{addr}   (dig @{} -p {} NAME.service.strata SRV)",
            addr.ip(),
            addr.port()
        ),
        "nacos" => format!("http://{addr}   (Nacos-compatible API: nacos.NacosClient(\"{addr}\"))"),
        "nacos_grpc" => format!(
            "{addr}   (Nacos 2.x gRPC API: tell clients the port offset, docs/config-center.md)"
        ),
        "gateway" => format!("http://{addr}   (API gateway: strata gateway routes apply FILE)"),
        "gateway_tls" => {
            format!("https://{addr}   (API gateway over TLS: [[certificates]] in the route table)")
        }
        "xds" => format!("{addr}   (xDS for gRPC clients dialing xds:///SERVICE: docs/rpc.md)"),
        _ => addr.to_string(),
    };
    Some(format!("  {name:<7} {hint}"))
}

/// The dev node's key for `cipher-` configs: made on first start, kept in the data folder
/// (readable by the owner only), so encrypted configs work out of the box and survive restarts.
fn dev_encryption_key(data_dir: &std::path::Path) -> anyhow::Result<String> {
    dev_secret(data_dir, "config-center.key", 32)
}

/// The secret in `DATA/NAME`, or a new one of `bytes` random bytes in hex, written there
/// (mode 0600) on first start.
fn dev_secret(data_dir: &std::path::Path, name: &str, bytes: usize) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(name);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok(text.trim().to_string());
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("create the data folder {}", data_dir.display()))?;
    let secret: String = (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(secret.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", path.display()))?;
    Ok(secret)
}

async fn wait_for_leader(node: &strata_node::NodeHandle, timeout: Duration) -> anyhow::Result<()> {
    let mut metrics = node.raft().metrics();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if metrics.borrow().current_leader.is_some() {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, metrics.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => bail!("raft stopped while starting"),
            Err(_) => bail!("no leader elected within {timeout:?}"),
        }
    }
}

/// Runs `strata server`.
pub async fn server(args: ServerArgs) -> anyhow::Result<()> {
    if args.sample_config {
        print!("{}", NodeConfig::sample_toml());
        for component in strata_node::components::all() {
            if let Some(sample) = component.sample_config() {
                print!("\n{sample}");
            }
        }
        return Ok(());
    }
    if let Some(path) = &args.check_config {
        let config = NodeConfig::from_file(path)?.validate()?;
        strata_node::select_components(&config, strata_node::components::all())?;
        println!("{} is valid", path.display());
        return Ok(());
    }
    let mut config = match &args.config {
        Some(path) => NodeConfig::from_file(path)?,
        None => NodeConfig::default(),
    };
    if let Some(id) = args.id {
        config.id = id;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    // The listener flags are `--listen NAME=HOST:PORT` by their older names.
    let mut listen_flags = ComponentFlags::default();
    for (name, addr) in [
        ("api", args.api_addr),
        ("raft", args.raft_addr),
        ("grpc", args.grpc_addr),
        ("consul", args.consul_addr),
        ("dns", args.dns_addr),
        ("nacos", args.nacos_addr),
        ("nacos_grpc", args.nacos_grpc_addr),
    ] {
        if let Some(addr) = addr {
            listen_flags.listen.push(format!("{name}={addr}"));
        }
    }
    listen_flags.apply(&mut config)?;
    args.components.apply(&mut config)?;
    if let Some(domain) = args.dns_domain {
        config.dns_domain = None;
        set_section_value(
            &mut config,
            "registry",
            "dns_domain",
            toml::Value::String(domain),
        );
    }
    if let Some(addr) = args.advertise_raft_addr {
        config.advertise_raft_addr = Some(addr);
    }
    if let Some(addr) = args.advertise_api_addr {
        config.advertise_api_addr = Some(addr);
    }
    if let Some(members) = args.initial_cluster {
        config.initial_cluster = NodeConfig::parse_initial_cluster(&members)?;
    }
    if let Some(path) = args.addrs_file {
        config.addrs_file = Some(path);
    }
    let root_password = match &args.root_password_file {
        Some(path) => Some(read_root_password(path)?),
        None => None,
    };
    if args.tls_cert.is_some() {
        config.tls.cert_file = args.tls_cert;
        config.tls.key_file = args.tls_key;
    }
    if args.tls_ca.is_some() {
        config.tls.ca_file = args.tls_ca;
    }
    if args.tls_client_auth.is_some() {
        config.tls.client_auth = args.tls_client_auth;
    }
    if args.peer_tls_cert.is_some() {
        config.peer_tls.cert_file = args.peer_tls_cert;
        config.peer_tls.key_file = args.peer_tls_key;
        config.peer_tls.ca_file = args.peer_tls_ca;
    }
    if !args.peer_tls_allowed_name.is_empty() {
        config.peer_tls.allowed_names = args.peer_tls_allowed_name;
    }
    // Closed from the first request until the root from the file is written.
    config.start_closed = root_password.is_some();
    let config = config.validate()?;
    if !args.insecure {
        refuse_plain_on_network(&config)?;
    }
    let grace = config.shutdown_grace_period.0;
    let node = Node::start(config).await?;
    println!(
        "strata server: node {} listening, api http://{} raft {}",
        node.service.node_id(),
        node.addrs.api(),
        node.addrs.raft()
    );
    if let Some(password) = root_password {
        tokio::spawn(bootstrap_root(node.auth.clone(), password));
    }
    wait_for_signal(node, grace).await
}

/// Refuses plain TCP on an address other than loopback: TLS (`[tls]`, `--tls-cert`) protects
/// the client listeners, mutual TLS (`[peer_tls]`, `--peer-tls-cert`) the raft listener. DNS is
/// exempt.
fn refuse_plain_on_network(config: &strata_settings::ValidatedConfig) -> anyhow::Result<()> {
    let tls = config.tls.cert_file.is_some();
    let peer_tls = config.peer_tls.cert_file.is_some();
    for (name, addr) in &config.listen {
        let protected = if name == "raft" { peer_tls } else { tls };
        if name == "dns" || protected {
            continue;
        }
        let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            let why = if name == "raft" {
                "no peer TLS is configured (--peer-tls-cert, --peer-tls-key and --peer-tls-ca, or [peer_tls])"
            } else {
                "no TLS is configured (--tls-cert and --tls-key, or [tls])"
            };
            bail!(
                "the {name} listener on {addr} is not loopback and {why}: anyone on the network could read and change its traffic; give --insecure to run it anyway"
            );
        }
    }
    Ok(())
}

/// The root password from `--root-password-file` (its first line).
fn read_root_password(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read the root password file {}", path.display()))?;
    let password = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end()
        .to_string();
    if password.is_empty() {
        bail!("the root password file {} is empty", path.display());
    }
    Ok(password)
}

/// Creates root with `password` and turns access control on, once the cluster accepts writes;
/// does nothing when a root user exists.
async fn bootstrap_root(auth: strata_auth::Auth, password: String) {
    let mut pause = Duration::from_millis(200);
    loop {
        match auth.bootstrap(&password, true).await {
            Ok(true) => {
                auth.gate.hold_closed(false);
                tracing::info!("created the user root and turned access control on");
                return;
            }
            Ok(false) => {
                auth.gate.hold_closed(false);
                tracing::info!("a root user exists; --root-password-file ignored");
                return;
            }
            Err(e)
                if e.code.is_retryable() || e.code == strata_proto::error::ErrorCode::Timeout =>
            {
                tracing::debug!(error = %e, "cluster not writable yet; will create root later");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot create the root user");
                return;
            }
        }
    }
}

/// A dev node's root password: made on first start and kept in `DATA/root-password` (mode
/// 0600). Nothing is written to the store: the user root is created with it when access
/// control is first enabled (`strata auth enable`, `etcdctl auth enable`).
fn dev_root_password(
    node: &strata_node::NodeHandle,
    data_dir: &std::path::Path,
) -> anyhow::Result<PathBuf> {
    let password = dev_secret(data_dir, "root-password", 24)?;
    node.auth.set_pending_root_password(password);
    Ok(data_dir.join("root-password"))
}

async fn wait_for_signal(node: strata_node::NodeHandle, grace: Duration) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut failed = false;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received; shutting down"),
        _ = interrupt.recv() => tracing::info!("SIGINT received; shutting down (press Ctrl-C again to abort)"),
        _ = node.failed() => failed = true,
    }
    if failed {
        node.shutdown(Duration::from_secs(1)).await;
        bail!("raft failed on this node (see the ERROR log line); check the data folder's disk, then restart");
    }
    tokio::select! {
        _ = node.shutdown(grace) => Ok(()),
        _ = interrupt.recv() => {
            eprintln!("second SIGINT: aborting");
            std::process::exit(130);
        }
        // The grace period bounds draining; a leader hand-off may add a few seconds more.
        _ = tokio::time::sleep(grace + Duration::from_secs(10)) => {
            bail!("graceful shutdown did not finish within {grace:?}")
        }
    }
}
