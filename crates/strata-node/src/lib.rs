//! The composition root: [`Node::start`] opens storage, starts Raft, the service layer and
//! the listeners in dependency order; [`NodeHandle::shutdown`] stops them in reverse.
//!
//! # Layout
//! - [`kv_machine`]: the KV store as a replicated state machine, and the applied-events feed.
//! - [`service`]: the one service layer every interface calls (forwarding, consistency, limits).
//! - [`watch`]: watch streams.
//! - [`http`]: the native HTTP/JSON API and the internal leader route.
//! - [`metrics`]: Prometheus metrics.
//!
//! No clap, no signals, no process exit here: that is the `strata` binary's job. Tests start
//! several nodes in one process with [`NodeConfig::for_test`](strata_config::NodeConfig::for_test).

pub mod coord;
pub mod http;
pub mod kv_api;
pub mod kv_machine;
pub mod metrics;
pub mod proposer;
pub mod read_index;
pub mod service;
pub mod watch;

use kv_machine::KvMachine;
use metrics::Metrics;
use serde::Serialize;
use service::{KvService, LeaderRequest};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_config::{AutoCompaction, ValidatedConfig};
use strata_proto::kv::CompactRequest;
use strata_proto::NodeInfo;
use strata_raft::network::HttpNetwork;
use strata_raft::{LogStore, Raft, StateMachineStore};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data folder could not be opened.
    #[error(transparent)]
    Storage(#[from] strata_raft::StorageError),
    /// The log or state machine could not be loaded.
    #[error("cannot load raft state ({0}); restore the folder from a backup, or remove it and re-join the cluster as a new member")]
    RaftStorage(String),
    /// A listener could not bind.
    #[error("{}", bind_message(what, addr, cause))]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: String,
        /// The cause (not `source`: the message already says it, and a source would be
        /// printed a second time by `{:#}`).
        cause: std::io::Error,
    },
    /// Raft refused its configuration or failed to start.
    #[error("cannot start raft: {0}")]
    Raft(String),
}

/// The addresses a started node listens on.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct NodeAddrs {
    /// Client HTTP API.
    pub api: SocketAddr,
    /// Node-to-node traffic.
    pub raft: SocketAddr,
    /// etcd v3 gRPC API, when enabled.
    pub grpc: Option<SocketAddr>,
    /// Consul-compatible HTTP API, when enabled.
    #[serde(default)]
    pub consul: Option<SocketAddr>,
    /// Registry DNS (UDP and TCP on the same port), when enabled.
    #[serde(default)]
    pub dns: Option<SocketAddr>,
    /// Nacos-compatible HTTP API, when enabled.
    #[serde(default)]
    pub nacos: Option<SocketAddr>,
}

/// Starts nodes.
pub struct Node;

/// A running node. Dropping it without [`NodeHandle::shutdown`] aborts its tasks.
pub struct NodeHandle {
    /// Where the node listens.
    pub addrs: NodeAddrs,
    /// The service layer, for in-process callers.
    pub service: Arc<KvService>,
    raft: Raft,
    /// Cancels listeners and background loops.
    cancel: CancellationToken,
    /// Every task the node spawned.
    tracker: TaskTracker,
    /// Cancelled when Raft fails fatally; the binary then exits non-zero.
    fatal: CancellationToken,
    /// Holds the data folder's lock until the node is gone.
    _data: strata_raft::DataDir,
}

impl Node {
    /// Starts a node: storage, raft, service, background loops, listeners.
    pub async fn start(config: ValidatedConfig) -> Result<NodeHandle, NodeError> {
        let id = config.id;
        info!(node_id = id, data_dir = %config.data_dir.display(), "opening data folder");
        let data = strata_raft::open_storage(&config.data_dir)?;
        let load_err = |e: openraft::StorageError<u64>| {
            NodeError::RaftStorage(format!("data folder {}: {e}", data.path.display()))
        };
        let log = LogStore::open(data.log_db.clone(), &data.path).map_err(load_err)?;
        let machine = Arc::new(KvMachine::new());
        let sm = StateMachineStore::open(machine.clone(), data.path.clone()).map_err(load_err)?;

        let api_listener = bind("api", &config.api_addr).await?;
        let raft_listener = bind("raft", &config.raft_addr).await?;
        let addrs = NodeAddrs {
            api: api_listener
                .local_addr()
                .map_err(|e| bind_err("api", &config.api_addr, e))?,
            raft: raft_listener
                .local_addr()
                .map_err(|e| bind_err("raft", &config.raft_addr, e))?,
            grpc: None,
            consul: None,
            dns: None,
            nacos: None,
        };
        let grpc_listener = match &config.grpc_addr {
            Some(addr) => Some(bind("grpc", addr).await?),
            None => None,
        };
        let mut addrs = addrs;
        let consul_listener = match &config.consul_addr {
            Some(addr) => {
                let listener = bind("consul", addr).await?;
                addrs.consul = Some(
                    listener
                        .local_addr()
                        .map_err(|e| bind_err("consul", addr, e))?,
                );
                Some(listener)
            }
            None => None,
        };
        let nacos_listener = match &config.nacos_addr {
            Some(addr) => {
                let listener = bind("nacos", addr).await?;
                addrs.nacos = Some(
                    listener
                        .local_addr()
                        .map_err(|e| bind_err("nacos", addr, e))?,
                );
                Some(listener)
            }
            None => None,
        };
        let dns_sockets = match &config.dns_addr {
            Some(addr) => {
                let (udp, tcp) = bind_dns(addr).await?;
                addrs.dns = Some(tcp.local_addr().map_err(|e| bind_err("dns", addr, e))?);
                Some((udp, tcp))
            }
            None => None,
        };
        if let (Some(listener), Some(configured)) = (&grpc_listener, &config.grpc_addr) {
            addrs.grpc = Some(
                listener
                    .local_addr()
                    .map_err(|e| bind_err("grpc", configured, e))?,
            );
        }
        let me = NodeInfo {
            raft_addr: config
                .advertise_raft_addr
                .clone()
                .unwrap_or_else(|| addrs.raft.to_string()),
            api_addr: config
                .advertise_api_addr
                .clone()
                .unwrap_or_else(|| addrs.api.to_string()),
            grpc_addr: addrs.grpc.map(|a| a.to_string()).unwrap_or_default(),
        };

        info!(node_id = id, "starting raft");
        let raft_config = openraft::Config {
            cluster_name: "strata".into(),
            heartbeat_interval: config.raft.heartbeat_interval.0.as_millis() as u64,
            election_timeout_min: config.raft.election_timeout_min.0.as_millis() as u64,
            election_timeout_max: config.raft.election_timeout_max.0.as_millis() as u64,
            install_snapshot_timeout: 120_000,
            // Snapshots are triggered by `run_snapshot_schedule`, staggered across members.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: config.raft.keep_entries_after_snapshot,
            purge_batch_size: 256,
            max_payload_entries: 1024,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        let network = HttpNetwork::new();
        let client = network.client().clone();
        let raft = Raft::new(id, Arc::new(raft_config), network, log.clone(), sm.clone())
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;

        let metrics = Arc::new(Metrics::new(id));
        let config = Arc::new(config);
        let service = Arc::new(KvService::new(
            id,
            raft.clone(),
            machine,
            log,
            sm,
            client,
            config.clone(),
            metrics,
        ));
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        service.set_read_index(read_index::ReadIndexBatcher::start(
            raft.clone(),
            &tracker,
            cancel.child_token(),
        ));
        service.set_forwarder(proposer::Forwarder::start(
            Arc::downgrade(&service),
            &tracker,
            cancel.child_token(),
        ));
        service.set_proposer(proposer::Proposer::start(
            raft.clone(),
            service.metrics.clone(),
            service::write_error,
            config.kv.request_timeout.0,
            &tracker,
            cancel.child_token(),
        ));

        info!(node_id = id, addr = %addrs.raft, "serving raft");
        let raft_router = strata_raft::network::raft_router(raft.clone())
            .merge(http::internal_router(service.clone()))
            // Appends and snapshots can be far larger than a client request; peers are trusted.
            .layer(axum::extract::DefaultBodyLimit::disable());
        spawn_server(&tracker, &cancel, "raft", raft_listener, raft_router);

        bootstrap(&raft, &config, &me).await?;

        info!(node_id = id, "starting background workers");
        tracker.spawn(register_self(
            service.clone(),
            me.clone(),
            cancel.child_token(),
        ));
        tracker.spawn(lease_expiry_loop(service.clone(), cancel.child_token()));
        let snapshots_cancel = cancel.child_token();
        tracker.spawn(strata_raft::run_snapshot_schedule(
            raft.clone(),
            id,
            config.raft.snapshot_entries,
            async move { snapshots_cancel.cancelled().await },
        ));
        tracker.spawn(compaction_loop(
            service.clone(),
            config.auto_compaction,
            cancel.child_token(),
        ));
        let fatal = CancellationToken::new();
        tracker.spawn(leader_change_loop(
            service.clone(),
            fatal.clone(),
            cancel.child_token(),
        ));

        info!(node_id = id, "starting the service registry");
        let kv: Arc<dyn strata_store::KvApi> =
            Arc::new(kv_api::NodeKv::new(service.clone(), tracker.clone()));
        let registry = strata_registry::start(
            kv.clone(),
            service.metrics.registry(),
            &tracker,
            cancel.child_token(),
        )
        .map_err(|e| NodeError::Raft(format!("registry metrics: {e}")))?;
        info!(node_id = id, "starting the config center");
        let cipher = match &config.config_center.encryption_key {
            Some(key) => Some(
                strata_configcenter::cipher::Cipher::from_key(key)
                    .map_err(|e| NodeError::Raft(format!("config_center.encryption_key: {e}")))?,
            ),
            None => None,
        };
        let config_center = strata_configcenter::start(
            kv.clone(),
            cipher,
            strata_configcenter::Settings {
                max_content_bytes: usize::try_from(config.config_center.max_content_bytes.0)
                    .unwrap_or(usize::MAX),
                history_retention: config.config_center.history_retention,
            },
            service.metrics.registry(),
            &tracker,
            cancel.child_token(),
        )
        .map_err(|e| NodeError::Raft(format!("config center metrics: {e}")))?;
        let config_routes =
            strata_configcenter::http::router(strata_configcenter::http::ConfigState {
                center: config_center.clone(),
                cancel: cancel.child_token(),
            });
        let registry_routes = strata_registry::http::router(strata_registry::http::RegistryState {
            registry: registry.clone(),
            cancel: cancel.child_token(),
        });
        if let (Some(listener), Some(addr)) = (consul_listener, addrs.consul) {
            info!(node_id = id, %addr, "serving the Consul-compatible API");
            spawn_server(
                &tracker,
                &cancel,
                "consul",
                listener,
                strata_registry::consul::router(registry.clone()),
            );
        }
        if let (Some(listener), Some(addr)) = (nacos_listener, addrs.nacos) {
            info!(node_id = id, %addr, "serving the Nacos-compatible API");
            spawn_server(
                &tracker,
                &cancel,
                "nacos",
                listener,
                strata_nacos::router(strata_nacos::NacosState {
                    configs: config_center.clone(),
                    registry: registry.clone(),
                    cancel: cancel.child_token(),
                }),
            );
        }
        if let (Some((udp, tcp)), Some(addr)) = (dns_sockets, addrs.dns) {
            info!(node_id = id, %addr, domain = %config.dns_domain, "serving registry DNS");
            let metrics = strata_registry::dns::DnsMetrics::new(service.metrics.registry())
                .map_err(|e| NodeError::Raft(format!("dns metrics: {e}")))?;
            tracker.spawn(strata_registry::dns::serve(
                udp,
                tcp,
                config.dns_domain.clone(),
                registry.view.clone(),
                metrics,
                cancel.child_token(),
            ));
        }

        info!(node_id = id, addr = %addrs.api, "serving client API");
        let state = http::ApiState {
            service: service.clone(),
            cancel: cancel.child_token(),
            tracker: tracker.clone(),
        };
        let body_limit =
            usize::try_from(config.kv.max_request_bytes.0).unwrap_or(usize::MAX) + 64 * 1024;
        spawn_server(
            &tracker,
            &cancel,
            "api",
            api_listener,
            http::api_router(state, body_limit, registry_routes.merge(config_routes)),
        );

        if let (Some(listener), Some(addr)) = (grpc_listener, addrs.grpc) {
            info!(node_id = id, %addr, "serving the etcd v3 gRPC API");
            let max_message = usize::try_from(config.kv.max_request_bytes.0).unwrap_or(usize::MAX);
            let token = cancel.clone();
            tracker.spawn(async move {
                let shutdown = async move { token.cancelled().await };
                if let Err(e) = strata_etcd::serve(listener, kv, max_message, shutdown).await {
                    warn!(error = %e, "gRPC listener stopped with an error");
                }
            });
        }

        if let Some(path) = &config.addrs_file {
            let json = serde_json::to_vec_pretty(&addrs).expect("addresses serialize");
            let tmp = path.with_extension("tmp");
            if let Err(e) = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, path)) {
                warn!(error = %e, path = %path.display(), "cannot write addresses file");
            }
        }
        info!(node_id = id, api = %addrs.api, raft = %addrs.raft, "node started");
        Ok(NodeHandle {
            addrs,
            service,
            raft,
            cancel,
            tracker,
            fatal,
            _data: data,
        })
    }
}

fn bind_err(what: &'static str, addr: &str, cause: std::io::Error) -> NodeError {
    NodeError::Bind {
        what,
        addr: addr.to_string(),
        cause,
    }
}

/// The message of [`NodeError::Bind`]: what happened and the flag that fixes it.
fn bind_message(what: &str, addr: &str, cause: &std::io::Error) -> String {
    let flag = format!("--{what}-addr");
    match cause.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "cannot listen on {addr} for {what}: the port is in use (another strata?); stop that process, or pass {flag} with another port (port 0 picks a free one)"
        ),
        _ => format!("cannot listen on {addr} for {what}: {cause}; check {flag}"),
    }
}

/// Pending connections a listener queues before the kernel drops new ones (tokio's default
/// is 128, which a reconnect storm of long-polls or watches overflows).
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(what: &'static str, addr: &str) -> Result<TcpListener, NodeError> {
    let parsed: SocketAddr = addr.parse().map_err(|_| {
        bind_err(
            what,
            addr,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not IP:PORT"),
        )
    })?;
    let socket = if parsed.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| bind_err(what, addr, e))?;
    socket
        .set_reuseaddr(true)
        .and_then(|()| socket.bind(parsed))
        .map_err(|e| bind_err(what, addr, e))?;
    socket
        .listen(LISTEN_BACKLOG)
        .map_err(|e| bind_err(what, addr, e))
}

/// Binds DNS's TCP listener and a UDP socket on the same port (retrying when port 0 picked a
/// TCP port whose UDP twin is taken).
async fn bind_dns(addr: &str) -> Result<(tokio::net::UdpSocket, TcpListener), NodeError> {
    let mut last = None;
    for _ in 0..16 {
        let tcp = bind("dns", addr).await?;
        let local = tcp.local_addr().map_err(|e| bind_err("dns", addr, e))?;
        match tokio::net::UdpSocket::bind(local).await {
            Ok(udp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(bind_err(
        "dns",
        addr,
        last.unwrap_or_else(|| std::io::Error::other("no free port")),
    ))
}

/// Serves `router` on `listener` until `cancel`. Every response carries a `strata-listener`
/// header naming the listener (`api`, `raft`, `consul`, `nacos`), so a client pointed at the
/// wrong port can say which one it reached.
fn spawn_server(
    tracker: &TaskTracker,
    cancel: &CancellationToken,
    kind: &'static str,
    listener: TcpListener,
    router: axum::Router,
) {
    let router = router.layer(axum::middleware::map_response(
        move |mut response: axum::response::Response| async move {
            response.headers_mut().insert(
                "strata-listener",
                axum::http::HeaderValue::from_static(kind),
            );
            response
        },
    ));
    let token = cancel.clone();
    tracker.spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        let result = axum::serve(listener, service)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await;
        if let Err(e) = result {
            warn!(error = %e, "listener stopped with an error");
        }
    });
}

/// Founds the cluster if this node is the lowest id of `initial_cluster` and has no state.
async fn bootstrap(raft: &Raft, config: &ValidatedConfig, me: &NodeInfo) -> Result<(), NodeError> {
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
    let founder = config.initial_cluster.keys().next().copied();
    if initialized || founder != Some(config.id) {
        if !initialized && config.initial_cluster.is_empty() {
            info!(
                node_id = config.id,
                "no cluster state; waiting to be added with `strata cluster add-member`"
            );
        }
        return Ok(());
    }
    let members: BTreeMap<u64, NodeInfo> = config
        .initial_cluster
        .iter()
        .map(|(id, addr)| {
            let info = if *id == config.id {
                me.clone()
            } else {
                NodeInfo {
                    raft_addr: addr.clone(),
                    api_addr: String::new(),
                    grpc_addr: String::new(),
                }
            };
            (*id, info)
        })
        .collect();
    info!(
        node_id = config.id,
        members = members.len(),
        "founding the cluster"
    );
    raft.initialize(members)
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))
}

/// Keeps this node's addresses in the membership current (founding members start with only a
/// raft address; a restart may change the API port).
async fn register_self(service: Arc<KvService>, me: NodeInfo, cancel: CancellationToken) {
    loop {
        let known = {
            let metrics = service.raft.metrics();
            let m = metrics.borrow();
            let node = m
                .membership_config
                .membership()
                .get_node(&service.id)
                .cloned();
            (node, m.current_leader)
        };
        match known {
            (Some(node), Some(_))
                if node.api_addr != me.api_addr || node.grpc_addr != me.grpc_addr =>
            {
                let info = NodeInfo {
                    raft_addr: node.raft_addr,
                    api_addr: me.api_addr.clone(),
                    grpc_addr: me.grpc_addr.clone(),
                };
                match service
                    .leader_call(LeaderRequest::SetNode(service.id, info))
                    .await
                {
                    Ok(_) => {
                        info!(node_id = service.id, api = %me.api_addr, "registered API address")
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "registering API address failed; will retry")
                    }
                }
            }
            _ => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// On the leader: revokes leases whose TTL passed without a keep-alive.
async fn lease_expiry_loop(service: Arc<KvService>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        for id in service.expired_leases() {
            info!(lease = id, "lease expired; revoking");
            if let Err(e) = service
                .serve_as_leader(LeaderRequest::Write(strata_proto::kv::Command::Kv(
                    strata_proto::kv::KvCommand::LeaseRevoke { id },
                )))
                .await
            {
                tracing::debug!(lease = id, error = %e, "revoking expired lease failed; will retry");
            }
        }
    }
}

/// On the leader: compacts history automatically by revision count or by age.
async fn compaction_loop(service: Arc<KvService>, mode: AutoCompaction, cancel: CancellationToken) {
    let mut samples: std::collections::VecDeque<(Instant, i64)> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !service.is_leader() {
            samples.clear();
            continue;
        }
        let (revision, compacted) = {
            let store = service.machine.read();
            (store.revision(), store.compact_revision())
        };
        let target = match mode {
            AutoCompaction::Off => continue,
            AutoCompaction::Revisions(keep) => {
                let target = revision - keep;
                // Compact in steps of at least a tenth of the retention, not every second.
                if target - compacted >= (keep / 10).max(1) {
                    Some(target)
                } else {
                    None
                }
            }
            AutoCompaction::Period(keep) => {
                let now = Instant::now();
                samples.push_back((now, revision));
                let mut target = None;
                while let Some((at, rev)) = samples.front().copied() {
                    if now.duration_since(at) < keep {
                        break;
                    }
                    target = Some(rev);
                    samples.pop_front();
                }
                target.filter(|t| *t > compacted)
            }
        };
        if let Some(target) = target {
            info!(revision = target, "auto-compacting");
            if let Err(e) = service.compact(CompactRequest { revision: target }).await {
                tracing::debug!(error = %e, "auto-compaction failed; will retry");
            }
        }
    }
}

/// Counts leader changes for metrics.
/// Counts leader changes, and cancels `fatal` if Raft stops on its own (a storage failure):
/// a node whose consensus is dead must exit rather than keep answering `unavailable`.
async fn leader_change_loop(
    service: Arc<KvService>,
    fatal: CancellationToken,
    cancel: CancellationToken,
) {
    let mut metrics = service.raft.metrics();
    let mut last_leader = metrics.borrow().current_leader;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() {
                if !cancel.is_cancelled() {
                    tracing::error!(node_id = service.id, "raft stopped unexpectedly; the node will exit");
                    fatal.cancel();
                }
                return;
            },
        }
        if let Err(e) = &metrics.borrow().running_state {
            tracing::error!(node_id = service.id, error = %e, "raft failed; the node will exit");
            fatal.cancel();
            return;
        }
        let leader = metrics.borrow().current_leader;
        if leader != last_leader {
            if leader.is_some() {
                service.metrics.raft_leader_changes.inc();
                info!(node_id = service.id, leader = ?leader, "leader changed");
            }
            last_leader = leader;
        }
    }
}

/// Copies current values into the gauges (called when /metrics is scraped).
pub fn refresh_metrics(service: &KvService) {
    let m = service.raft.metrics().borrow().clone();
    let metrics = &service.metrics;
    metrics.raft_term.set(m.current_term as i64);
    metrics
        .raft_applied_index
        .set(m.last_applied.map(|l| l.index).unwrap_or(0) as i64);
    metrics
        .raft_commit_index
        .set(service.log.committed_index() as i64);
    metrics
        .raft_last_log_index
        .set(m.last_log_index.unwrap_or(0) as i64);
    metrics
        .raft_is_leader
        .set(i64::from(m.current_leader == Some(service.id)));
    metrics::advance(&metrics.raft_log_fsyncs, service.log.fsync_count());
    metrics.raft_log_entries.set(service.log.len() as i64);
    metrics
        .raft_snapshot_bytes
        .set(service.sm.snapshot_bytes() as i64);
    metrics::advance(
        &metrics.raft_snapshots_installed,
        service.sm.snapshots_installed(),
    );
    let (stats, revision, compacted) = {
        let store = service.machine.read();
        (store.stats(), store.revision(), store.compact_revision())
    };
    metrics.kv_revision.set(revision);
    metrics.kv_compact_revision.set(compacted);
    metrics.kv_keys.set(stats.keys as i64);
    metrics.kv_leases.set(stats.leases as i64);
    metrics
        .storage_db_bytes
        .set(folder_size(&service.config.data_dir) as i64);
}

/// Returns the total size of the files under `path` (bounded depth; errors count as 0).
pub(crate) fn folder_size(path: &std::path::Path) -> u64 {
    fn walk(path: &std::path::Path, depth: u32) -> u64 {
        let Ok(entries) = std::fs::read_dir(path) else {
            return 0;
        };
        entries
            .flatten()
            .map(|entry| match entry.metadata() {
                Ok(meta) if meta.is_dir() && depth < 4 => walk(&entry.path(), depth + 1),
                Ok(meta) => meta.len(),
                Err(_) => 0,
            })
            .sum()
    }
    walk(path, 0)
}

impl NodeHandle {
    /// Resolves when Raft has failed fatally (e.g. the log cannot be written); the node can no
    /// longer serve and should be stopped.
    ///
    /// Cancel safety: only waits on a token; safe in `select!`.
    pub async fn failed(&self) {
        self.fatal.cancelled().await
    }

    /// Returns the Raft handle (for tests and status).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Stops the node: listeners and background loops first, then Raft, waiting at most
    /// `grace` for tasks to finish.
    pub async fn shutdown(self, grace: Duration) {
        let id = self.service.id;
        if let Some(leader) = self.service.hand_off_leadership().await {
            info!(node_id = id, new_leader = leader, "handed off leadership");
        }
        info!(node_id = id, "stopping listeners and background workers");
        self.cancel.cancel();
        self.tracker.close();
        self.service.tasks.close();
        let all_tasks = async {
            self.tracker.wait().await;
            self.service.tasks.wait().await;
        };
        if tokio::time::timeout(grace, all_tasks).await.is_err() {
            warn!(node_id = id, "tasks did not stop within the grace period");
        }
        info!(node_id = id, "stopping raft");
        if let Err(e) = self.raft.shutdown().await {
            warn!(node_id = id, error = %e, "raft did not stop cleanly");
        }
        info!(node_id = id, "node stopped");
    }
}
