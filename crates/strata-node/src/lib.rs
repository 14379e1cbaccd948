//! The composition root: [`Node::start`] opens storage, binds every listener, starts Raft and
//! the KV service, then the components in the order [`components::all`] lists them;
//! [`NodeHandle::shutdown`] stops them in reverse.
//!
//! # Layout
//! - [`components`]: the one list of components.
//! - `listeners`: binding every listener the same way.
//! - [`background`]: founding the cluster, self-registration, leader changes.
//!
//! The KV service itself (state machine glue, forwarding, leases, watches, the native API) is
//! `strata-kvservice`; Raft storage and transport are `strata-raft`.
//!
//! No clap, no signals, no process exit here: that is the `strata` binary's job. Tests start
//! several nodes in one process with [`NodeConfig::for_test`](strata_settings::NodeConfig::for_test).

/// Backups of the replicated state: inspect a saved snapshot file, restore one into a new
/// data folder (`strata cluster snapshot`).
pub use strata_raft::backup;
pub mod background;
pub mod components;
mod listeners;

use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use strata_component::{Bound, Component, Context, Provided, Transport};
use strata_kvservice::{http, kv_api, KvMachine, KvService};
use strata_proto::NodeInfo;
use strata_raft::network::HttpNetwork;
use strata_raft::{LogStore, Raft, StateMachineStore};
use strata_settings::ValidatedConfig;
use strata_store::KvApi;
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
    #[error("{}", listeners::bind_message(what, addr, cause))]
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
    /// The configuration names something no component knows, or a component refused its
    /// section.
    #[error("invalid config: {0}")]
    Config(String),
    /// A component failed to start.
    #[error("cannot start {name}: {message}")]
    Component {
        /// The component.
        name: &'static str,
        /// What it said.
        message: String,
    },
}

/// The addresses a started node listens on, by listener name (`api`, `raft`, `grpc`, ...).
/// Serialized as one JSON object: the `addrs.json` that tests and scripts read.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct NodeAddrs(BTreeMap<&'static str, SocketAddr>);

impl NodeAddrs {
    /// The client HTTP API.
    pub fn api(&self) -> SocketAddr {
        self.0["api"]
    }

    /// Node-to-node traffic.
    pub fn raft(&self) -> SocketAddr {
        self.0["raft"]
    }

    /// Listener `name`, when it is enabled.
    pub fn get(&self, name: &str) -> Option<SocketAddr> {
        self.0.get(name).copied()
    }

    /// Every listener, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, SocketAddr)> + '_ {
        self.0.iter().map(|(name, addr)| (*name, *addr))
    }
}

/// Starts nodes.
pub struct Node;

/// A component that is running, for shutdown.
struct Running {
    name: &'static str,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

/// A running node. Stop it with [`NodeHandle::shutdown`]; dropping it leaves its tasks
/// running until the runtime ends (the binary always shuts down first).
pub struct NodeHandle {
    /// Where the node listens.
    pub addrs: NodeAddrs,
    /// The service layer, for in-process callers.
    pub service: Arc<KvService>,
    /// Access control: the node's gate and the auth records' API.
    pub auth: strata_auth::Auth,
    raft: Raft,
    /// Components in start order.
    components: Vec<Running>,
    /// Cancels the node's own listeners and background loops.
    cancel: CancellationToken,
    /// Every task the node itself spawned.
    tracker: TaskTracker,
    /// Cancelled when Raft fails fatally; the binary then exits non-zero.
    fatal: CancellationToken,
    /// Holds the data folder's lock until the node is gone.
    _data: strata_raft::DataDir,
}

/// The components `config` selects (its `roles`, or all), after checking that every section,
/// role and listener it names belongs to one and that each component accepts its section.
pub fn select_components(
    config: &ValidatedConfig,
    all: Vec<Arc<dyn Component>>,
) -> Result<Vec<Arc<dyn Component>>, NodeError> {
    let names: Vec<&str> = all.iter().map(|c| c.name()).collect();
    let unknown = |what: &str, name: &str| {
        NodeError::Config(format!(
            "unknown {what} `{name}`; components are: {}",
            names.join(", ")
        ))
    };
    for section in config.sections.keys() {
        if !names.contains(&section.as_str()) {
            return Err(unknown("section", section));
        }
    }
    if let Some(roles) = &config.roles {
        for role in roles {
            if !names.contains(&role.as_str()) {
                return Err(unknown("role", role));
            }
        }
    }
    for listener in config.listen.keys() {
        let known = ["api", "raft"].contains(&listener.as_str())
            || all
                .iter()
                .any(|c| c.listeners().iter().any(|l| l.name == listener));
        if !known {
            return Err(NodeError::Config(format!(
                "unknown listener `{listener}` in [listen]"
            )));
        }
    }
    for component in &all {
        component
            .check_config(config.sections.get(component.name()))
            .map_err(NodeError::Config)?;
    }
    Ok(all
        .into_iter()
        .filter(|c| {
            config
                .roles
                .as_ref()
                .is_none_or(|roles| roles.iter().any(|r| r == c.name()))
        })
        .collect())
}

impl Node {
    /// Starts a node running every component its configuration selects.
    pub async fn start(config: ValidatedConfig) -> Result<NodeHandle, NodeError> {
        Self::start_with(config, components::all()).await
    }

    /// Starts a node with the given components (a subset of [`components::all`], for tests).
    pub async fn start_with(
        config: ValidatedConfig,
        all: Vec<Arc<dyn Component>>,
    ) -> Result<NodeHandle, NodeError> {
        let components = select_components(&config, all)?;
        let id = config.id;
        info!(node_id = id, data_dir = %config.data_dir.display(), "opening data folder");
        let data = strata_raft::open_storage(&config.data_dir)?;
        data.space.set_reserve(config.kv.disk_reserve.0);
        let load_err = |e: openraft::StorageError<u64>| {
            NodeError::RaftStorage(format!("data folder {}: {e}", data.path.display()))
        };
        let log = LogStore::open_member(&data, id).map_err(load_err)?;
        let machine = Arc::new(KvMachine::new());
        let sm = StateMachineStore::open(machine.clone(), &data).map_err(load_err)?;

        // Every listener is bound before anything starts, so a taken port fails fast.
        let api = listeners::bind("api", &config.listen["api"], Transport::Tcp).await?;
        let raft_listener = listeners::bind("raft", &config.listen["raft"], Transport::Tcp).await?;
        let mut addrs = BTreeMap::from([("api", api.addr), ("raft", raft_listener.addr)]);
        let mut bound: Vec<BTreeMap<&'static str, Bound>> = Vec::new();
        for component in &components {
            let mut mine = BTreeMap::new();
            for spec in component.listeners() {
                if let Some(addr) = config.listen.get(spec.name) {
                    let listener = listeners::bind(spec.name, addr, spec.transport).await?;
                    info!(node_id = id, listener = spec.name, addr = %listener.addr, about = spec.about, "bound");
                    addrs.insert(spec.name, listener.addr);
                    mine.insert(spec.name, listener);
                }
            }
            bound.push(mine);
        }
        let addrs = NodeAddrs(addrs);
        let me = NodeInfo {
            raft_addr: config
                .advertise_raft_addr
                .clone()
                .unwrap_or_else(|| addrs.raft().to_string()),
            api_addr: config
                .advertise_api_addr
                .clone()
                .unwrap_or_else(|| addrs.api().to_string()),
            grpc_addr: addrs.get("grpc").map(|a| a.to_string()).unwrap_or_default(),
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
        let peer_tls = peer_tls(&config)?;
        let peer_client = match &peer_tls {
            Some((files, _)) => strata_raft::network::PeerClient::mutual_tls(files.clone())
                .map_err(|e| NodeError::Config(format!("[peer_tls]: {e}")))?,
            None => strata_raft::network::PeerClient::plain(),
        };
        let network = HttpNetwork::new(peer_client);
        let snapshot_sends = network.snapshot_sends();
        let client = network.client().clone();
        let network_client = client.clone();
        let raft = Raft::new(id, Arc::new(raft_config), network, log.clone(), sm.clone())
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;

        let config = Arc::new(config);
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let snapshot_sizes = (log.clone(), sm.clone());
        let service = strata_kvservice::start(
            strata_kvservice::Parts {
                id,
                raft: raft.clone(),
                machine,
                log,
                sm,
                client,
                config: config.clone(),
                space: data.space.clone(),
            },
            &tracker,
            &cancel,
        );

        info!(node_id = id, addr = %addrs.raft(), "serving raft");
        // Components start after the raft listener serves; their peer routes are set then.
        let peer_routes = Arc::new(std::sync::OnceLock::<axum::Router>::new());
        let raft_router = strata_raft::network::raft_router(raft.clone())
            .merge(http::internal_router(service.clone()))
            .fallback({
                let routes = peer_routes.clone();
                move |request: axum::extract::Request| {
                    component_peer_route(routes.get().cloned(), request)
                }
            })
            // Appends and snapshots can be far larger than a client request; peers are trusted.
            .layer(axum::extract::DefaultBodyLimit::disable());
        let raft_tls = peer_tls.map(|(_, server)| server);
        let raft_router = only_peers(raft_router, &config.peer_tls.allowed_names);
        for reloading in [network_client.reloading()].into_iter().flatten() {
            let stop = cancel.child_token();
            tracker
                .spawn(reloading.watch(TLS_RELOAD_PERIOD, async move { stop.cancelled().await }));
        }
        if let Some(server) = &raft_tls {
            let stop = cancel.child_token();
            tracker.spawn(
                server
                    .clone()
                    .watch(TLS_RELOAD_PERIOD, async move { stop.cancelled().await }),
            );
        }
        strata_component::serve_http(
            &tracker,
            &cancel,
            "raft",
            raft_listener.tcp,
            raft_router,
            raft_tls,
        );

        background::bootstrap(&raft, &config, &me).await?;

        info!(node_id = id, "starting background workers");
        tracker.spawn(background::register_self(
            service.clone(),
            me.clone(),
            cancel.child_token(),
        ));
        let snapshots_cancel = cancel.child_token();
        tracker.spawn(strata_raft::run_snapshot_schedule(
            raft.clone(),
            id,
            strata_raft::SnapshotRule {
                every: config.raft.snapshot_entries,
                log_ratio: config.raft.snapshot_log_ratio,
            },
            snapshot_sizes,
            snapshot_sends,
            async move { snapshots_cancel.cancelled().await },
        ));
        tracker.spawn(background::runtime_watchdog(cancel.child_token()));
        let fatal = CancellationToken::new();
        tracker.spawn(background::leader_change_loop(
            service.clone(),
            fatal.clone(),
            cancel.child_token(),
        ));

        let kv: Arc<dyn KvApi> = Arc::new(kv_api::NodeKv::new(service.clone()));
        let auth = start_auth(&config, &service, kv.clone(), &tracker, &cancel).await?;
        let tls = start_tls(&config, &tracker, &cancel)?;
        let max_request = usize::try_from(config.kv.max_request_bytes.0).unwrap_or(usize::MAX);
        let provided = Provided::default();
        let api_url = format!(
            "{}://{}",
            if tls.is_some() { "https" } else { "http" },
            me.api_addr
        );
        let names: Arc<[&'static str]> = components.iter().map(|c| c.name()).collect();
        let mut running = Vec::new();
        let mut api_routes = axum::Router::new();
        let mut component_peer = axum::Router::new();
        let peers = {
            let client = network_client.clone();
            strata_component::PeerHttp::new(move |addr, path| client.post(addr, path))
        };
        for (component, listeners) in components.iter().zip(bound) {
            let name = component.name();
            let ctx = Context::new(
                id,
                kv.clone(),
                service.metrics.registry().clone(),
                max_request,
                config.data_dir.clone(),
                auth.clone(),
                tls.clone(),
                api_url.clone(),
                names.clone(),
                peers.clone(),
                config.sections.get(name).cloned(),
                listeners,
                provided.clone(),
            );
            running.push(Running {
                name,
                tracker: ctx.tracker.clone(),
                cancel: ctx.cancel.clone(),
            });
            let started = match component.start(ctx).await {
                Ok(started) => started,
                Err(e) => {
                    // Stop what already runs, so a failed start leaves nothing behind.
                    for earlier in running.iter().rev() {
                        earlier.cancel.cancel();
                    }
                    cancel.cancel();
                    let _ = raft.shutdown().await;
                    return Err(NodeError::Component {
                        name,
                        message: e.to_string(),
                    });
                }
            };
            if let Some(routes) = started.api_routes {
                api_routes = api_routes.merge(routes);
            }
            if let Some(routes) = started.peer_routes {
                component_peer = component_peer.merge(routes);
            }
        }
        let _ = peer_routes.set(component_peer);

        info!(node_id = id, addr = %addrs.api(), "serving client API");
        let state = http::ApiState {
            service: service.clone(),
            auth: auth.clone(),
            cancel: cancel.child_token(),
            tracker: tracker.clone(),
        };
        strata_component::serve_http(
            &tracker,
            &cancel,
            "api",
            api.tcp,
            http::api_router(state, max_request + 64 * 1024, api_routes),
            tls,
        );

        if let Some(path) = &config.addrs_file {
            let json = serde_json::to_vec_pretty(&addrs).expect("addresses serialize");
            let tmp = path.with_extension("tmp");
            if let Err(e) = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, path)) {
                warn!(error = %e, path = %path.display(), "cannot write addresses file");
            }
        }
        info!(node_id = id, api = %addrs.api(), raft = %addrs.raft(), "node started");
        Ok(NodeHandle {
            addrs,
            service,
            auth,
            raft,
            components: running,
            cancel,
            tracker,
            fatal,
            _data: data,
        })
    }
}

/// How often TLS files are checked for a rotation.
const TLS_RELOAD_PERIOD: Duration = Duration::from_secs(2);

/// With `[peer_tls] allowed_names`, the raft listener serves only callers whose certificate
/// carries one of them (its name is in each request, from `serve_http`); the rest get 403.
/// The raft listener's fallback: the components' peer routes once they have started, 404
/// before.
async fn component_peer_route(
    routes: Option<axum::Router>,
    request: axum::extract::Request,
) -> axum::response::Response {
    match routes {
        Some(router) => match tower::ServiceExt::oneshot(router, request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        None => axum::response::IntoResponse::into_response(axum::http::StatusCode::NOT_FOUND),
    }
}

fn only_peers(router: axum::Router, allowed: &[String]) -> axum::Router {
    if allowed.is_empty() {
        return router;
    }
    let allowed: Arc<std::collections::HashSet<String>> =
        Arc::new(allowed.iter().cloned().collect());
    router.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let allowed = allowed.clone();
            async move {
                let name = request
                    .extensions()
                    .get::<strata_auth::CertificateName>()
                    .and_then(|c| c.0.clone());
                if name.is_some_and(|n| allowed.contains(&n)) {
                    next.run(request).await
                } else {
                    axum::response::IntoResponse::into_response((
                        axum::http::StatusCode::FORBIDDEN,
                        "this certificate is not one of the cluster's peers ([peer_tls] allowed_names)",
                    ))
                }
            }
        },
    ))
}

/// Mutual TLS between peers from `[peer_tls]`: the files, and the raft listener's config (which
/// requires a certificate signed by the cluster CA); `None` without.
fn peer_tls(
    config: &ValidatedConfig,
) -> Result<Option<(strata_tls::TlsFiles, Arc<strata_tls::ServerTls>)>, NodeError> {
    let settings = &config.peer_tls;
    let (Some(cert), Some(key), Some(ca)) =
        (&settings.cert_file, &settings.key_file, &settings.ca_file)
    else {
        return Ok(None);
    };
    let files = strata_tls::TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        ca: Some(ca.clone()),
    };
    let server = strata_tls::ServerTls::load(
        files.clone(),
        strata_tls::ClientAuth::Require,
        &[b"http/1.1".as_slice()],
    )
    .map_err(|e| NodeError::Config(format!("[peer_tls]: {e}")))?;
    info!(cert = %cert.display(), ca = %ca.display(), "mutual TLS between raft peers");
    Ok(Some((files, server)))
}

/// The client listeners' TLS from `[tls]`, reloaded when its files change; `None` without.
fn start_tls(
    config: &ValidatedConfig,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<Option<Arc<strata_tls::ServerTls>>, NodeError> {
    let settings = &config.tls;
    let (Some(cert), Some(key)) = (&settings.cert_file, &settings.key_file) else {
        return Ok(None);
    };
    let client_auth = match (settings.client_auth.as_deref(), &settings.ca_file) {
        (Some("require"), _) => strata_tls::ClientAuth::Require,
        (Some("none"), _) | (None, None) => strata_tls::ClientAuth::None,
        _ => strata_tls::ClientAuth::Optional,
    };
    let files = strata_tls::TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        ca: settings.ca_file.clone(),
    };
    let tls = strata_tls::ServerTls::load(
        files,
        client_auth,
        &[b"h2".as_slice(), b"http/1.1".as_slice()],
    )
    .map_err(|e| NodeError::Config(format!("[tls]: {e}")))?;
    info!(cert = %cert.display(), client_auth = ?client_auth, "TLS on the client listeners");
    let stop = cancel.child_token();
    tracker.spawn(
        tls.clone()
            .watch(TLS_RELOAD_PERIOD, async move { stop.cancelled().await }),
    );
    Ok(Some(tls))
}

/// Audit files rotate at this size; this many old ones are kept.
const AUDIT_FILE_BYTES: u64 = 64 * 1024 * 1024;
const AUDIT_FILES_KEPT: u32 = 5;

/// The node's access control: a gate auditing to `DATA/audit/`, loaded from this node's copy
/// of the auth records before any interface serves (so a node of a cluster with access
/// control on never starts open), then following them.
async fn start_auth(
    config: &ValidatedConfig,
    service: &Arc<KvService>,
    kv: Arc<dyn KvApi>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<strata_auth::Auth, NodeError> {
    let dir = config.data_dir.join("audit");
    let audit = strata_auth::audit::Audit::to_dir(&dir, AUDIT_FILE_BYTES, AUDIT_FILES_KEPT)
        .map_err(|e| {
            NodeError::Config(format!(
                "cannot open the audit log in {}: {e}",
                dir.display()
            ))
        })?;
    let gate = strata_auth::Gate::new(audit);
    gate.hold_closed(config.start_closed);
    gate.register(service.metrics.registry())
        .map_err(|e| NodeError::Config(format!("auth metrics: {e}")))?;
    let records = kv
        .range(strata_proto::kv::RangeRequest {
            key: strata_auth::state::ROOT.as_bytes().to_vec(),
            prefix: true,
            serializable: true,
            ..Default::default()
        })
        .await
        .map_err(|e| NodeError::Config(format!("cannot read the auth records: {e}")))?;
    strata_store::Follower::load(gate.as_ref(), &records.kvs, records.header.revision);
    tracker.spawn(strata_store::follow(
        kv.clone(),
        strata_auth::state::ROOT,
        gate.clone(),
        cancel.child_token(),
    ));
    Ok(strata_auth::Auth::new(gate, kv))
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

    /// Stops the node: hands off leadership, stops components in reverse order of start
    /// (each waited for at most `grace`), then the node's listeners and background loops,
    /// then Raft.
    pub async fn shutdown(self, grace: Duration) {
        let id = self.service.id;
        if let Some(leader) = self.service.hand_off_leadership().await {
            info!(node_id = id, new_leader = leader, "handed off leadership");
        }
        for component in self.components.iter().rev() {
            info!(
                node_id = id,
                component = component.name,
                "stopping component"
            );
            component.cancel.cancel();
            component.tracker.close();
            if tokio::time::timeout(grace, component.tracker.wait())
                .await
                .is_err()
            {
                warn!(
                    node_id = id,
                    component = component.name,
                    "component did not stop within the grace period"
                );
            }
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
