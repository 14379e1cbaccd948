//! The Nacos 2.x gRPC API on its own listener (`nacos_grpc`, `--nacos-grpc-addr`): the
//! `Request` service for unary requests and the `BiRequestStream` service that carries a
//! connection's setup and the server's pushes. Nacos 2.x clients dial it at the Nacos port
//! + 1000.
//!
//! # Connections
//! A client first sends `ServerCheckRequest` (unary) and learns its connection id, then opens
//! the bi-stream and sends `ConnectionSetupRequest` on it: that registers the [`Connection`].
//! Both ride one HTTP/2 connection, so the client's address names the connection: requests
//! find their connection by it. When the bi-stream ends (the client closed, crashed or its
//! TCP connection died, found by HTTP/2 keepalive) the connection is gone, and with it what
//! it owned: its config listeners, its subscriptions and its ephemeral instances, which are
//! deregistered then (and, should this node die first, expire with their lease).
//!
//! # Pushes
//! A connection's listened configs and subscribed services are followed by one task each
//! (the config center's `wait_changed`, the registry's blocking query); a change becomes a
//! `ConfigChangeNotifyRequest` or `NotifySubscriberRequest` on the bi-stream. The push queue
//! is bounded; a client that does not read its stream loses pushes (counted), and catches up
//! on its next listen or query.
//!
//! # Instances
//! `InstanceRequest` and `BatchInstanceRequest` register ephemeral instances owned by the
//! connection, whatever the instance's `ephemeral` field says (as Nacos 2.x's
//! `InstanceRequestHandler` does); `PersistentInstanceRequest` registers persistent ones,
//! which belong to no connection and stay until deregistered. As in Nacos, a service is
//! either ephemeral or persistent: registering one kind into a service that has instances of
//! the other (registered through Nacos, in that group) is refused.
//!
//! # Client detection
//! A connection that has sent nothing for [`DETECT_AFTER`] (clients send health checks every
//! few seconds, so only a stuck client does) gets a `ClientDetectionRequest`; without any
//! message from it within [`DETECT_WAIT`] it is closed as its stream ending would close it.
//!
//! # Shutdown
//! When the component stops, the node first withdraws its record from the cluster's Nacos
//! servers ([`crate::servers`]) and pushes `ConnectResetRequest` to every connection, naming
//! another live node (round robin over them) or none (the client then picks from its own
//! list), as Nacos's `expelAll` does at shutdown. New connections are refused meanwhile
//! (`ServerCheckRequest` answers `ErrorResponse`; a setup gets a `ConnectResetRequest` and its
//! stream ends) and health checks fail, so that a client which ignores the reset moves on its
//! next health check. The listener stops once every client has gone or after [`DRAIN_WAIT`]
//! (Nacos waits 2 s). Ephemeral instances of connections closed by the shutdown stay on
//! their leases: their clients register them again where they reconnect.

use crate::grpc_metrics::GrpcMetrics;
use crate::grpc_wire::{self as wire, pb, Incoming};
use crate::servers::Servers;
use crate::NacosState;
use futures::Stream;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata_api::config::{ClientIdentity, ConfigKey, ConfigType, Publish};
use strata_api::registry::{Instance, InstanceRef, Query, RegistryKey};
use strata_auth::{Access, Caller, Kind, Names};
use strata_proto::error::{ApiError, ErrorCode};
use strata_store::KvApi;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Pushes queued for one connection before more are dropped.
const PUSH_QUEUE: usize = 256;
/// How long a request waits for its connection's `ConnectionSetupRequest` (the client sends
/// it on the bi-stream just before its first request, so the two may cross).
const SETUP_WAIT: Duration = Duration::from_secs(2);
/// How long one config or service wait lasts before it is renewed.
const WATCH_ROUND: Duration = Duration::from_secs(30);
/// How often a connection renews the leases of its ephemeral instances.
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// HTTP/2 pings find a dead peer's connection (a killed client whose TCP never closed).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a ping may go unanswered.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of each registry call made when a connection goes.
const CLEANUP_DEADLINE: Duration = Duration::from_secs(5);

/// Renewals of one connection's instances in flight at once.
const RENEW_CONCURRENCY: usize = 32;

/// How long a stopping node waits for its clients to move after `ConnectResetRequest` (Nacos
/// sleeps 2 s in `BaseRpcServer.stopServer`).
const DRAIN_WAIT: Duration = Duration::from_secs(2);
/// How long a connection may stay silent before it gets a `ClientDetectionRequest` (Nacos's
/// `KEEP_ALIVE_TIME`).
const DETECT_AFTER: Duration = Duration::from_secs(20);
/// How long a detected connection has to answer (Nacos's detection timeout).
const DETECT_WAIT: Duration = Duration::from_secs(5);
/// Nacos's page size when a `ServiceListRequest` names none.
const DEFAULT_PAGE_SIZE: i64 = 10;

/// The id a connection from `remote` gets, as Nacos spells them (`IP_PORT`).
fn connection_id(remote: SocketAddr) -> String {
    format!("{}_{}", remote.ip(), remote.port())
}

/// Page `page_no` (from 1) of `page_size` names, as Nacos's `ServiceUtil.pageServiceName`
/// pages: a page number below 1 is the first page; a page past the end, or of no size, is
/// empty.
fn page_of(names: &[String], page_no: i64, page_size: i64) -> &[String] {
    if page_size <= 0 {
        return &[];
    }
    let start = page_no.saturating_sub(1).saturating_mul(page_size).max(0);
    let start = usize::try_from(start).unwrap_or(usize::MAX);
    if start >= names.len() {
        return &[];
    }
    let size = usize::try_from(page_size).unwrap_or(usize::MAX);
    let end = start.saturating_add(size).min(names.len());
    &names[start..end]
}

/// A failed request: a Nacos `errorCode` and a message.
#[derive(Debug)]
struct Failure(u32, String);

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        let code = match e.code {
            ErrorCode::BadRequest
            | ErrorCode::NotFound
            | ErrorCode::FailedPrecondition
            | ErrorCode::AlreadyExists
            | ErrorCode::PayloadTooLarge => wire::ERROR_BAD_REQUEST,
            ErrorCode::PermissionDenied | ErrorCode::Unauthenticated => wire::ERROR_FORBIDDEN,
            _ => wire::ERROR_SERVER,
        };
        Failure(code, e.message)
    }
}

type Answer = Result<Value, Failure>;

/// One client connection, from its `ConnectionSetupRequest` until its bi-stream ends.
pub struct Connection {
    /// The id the client was told.
    id: String,
    /// The namespace the client set up with ("" for the default).
    tenant: String,
    /// The client's labels, for gray config releases.
    labels: BTreeMap<String, String>,
    /// The client's address.
    remote: SocketAddr,
    /// The bi-stream's outgoing half.
    push: mpsc::Sender<pb::Payload>,
    /// Cancelled when the connection goes; stops its tasks.
    cancel: CancellationToken,
    /// Wakes the config listener task when the listened set changes.
    listen_changed: Notify,
    /// Ids of server pushes.
    next_push_id: AtomicU64,
    /// What the connection owns. A std mutex: held briefly, never across `.await`.
    owned: Mutex<Owned>,
    /// When the connection was set up; [`Connection::last_active_ms`] counts from it.
    born: tokio::time::Instant,
    /// Milliseconds after `born` of the client's last message (a request or a stream
    /// message), for client detection.
    last_active_ms: AtomicU64,
    /// Set when client detection found the client unresponsive (why the connection went).
    unresponsive: AtomicBool,
}

/// What a connection owns, given up when it goes.
#[derive(Default)]
struct Owned {
    /// Listened configs: key → (md5 the client was last told about, tenant as it spells it).
    listened: BTreeMap<ConfigKey, (String, String)>,
    /// Ephemeral instances registered through this connection.
    instances: BTreeSet<InstanceRef>,
    /// Subscribed services `(namespace, group, name)` and the token that ends each one's task.
    subscriptions: BTreeMap<(String, String, String), CancellationToken>,
}

impl Connection {
    /// A connection of `remote` set up with `tenant` and `labels`, pushing on `push`, ended
    /// by `cancel`.
    fn new(
        remote: SocketAddr,
        tenant: String,
        labels: BTreeMap<String, String>,
        push: mpsc::Sender<pb::Payload>,
        cancel: CancellationToken,
    ) -> Self {
        Connection {
            id: connection_id(remote),
            tenant,
            labels,
            remote,
            push,
            cancel,
            listen_changed: Notify::new(),
            next_push_id: AtomicU64::new(1),
            owned: Mutex::new(Owned::default()),
            born: tokio::time::Instant::now(),
            last_active_ms: AtomicU64::new(0),
            unresponsive: AtomicBool::new(false),
        }
    }

    /// Notes that the client just sent something.
    fn touch(&self) {
        let now = self.born.elapsed().as_millis();
        self.last_active_ms
            .fetch_max(u64::try_from(now).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Milliseconds after set-up of the client's last message.
    fn last_active(&self) -> u64 {
        self.last_active_ms.load(Ordering::Relaxed)
    }

    /// How long the client has been silent.
    fn idle(&self) -> Duration {
        self.born
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_active()))
    }

    /// The identity the config center serves gray releases by.
    fn client(&self) -> ClientIdentity {
        ClientIdentity {
            ip: Some(self.remote.ip().to_string()),
            labels: self.labels.clone(),
        }
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, Owned> {
        self.owned
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a push of class `kind`; false when the queue is full or the stream gone.
    fn send_push(&self, metrics: &GrpcMetrics, kind: &str, module: &str, fields: Value) -> bool {
        let id = self
            .next_push_id
            .fetch_add(1, Ordering::Relaxed)
            .to_string();
        let sent = self
            .push
            .try_send(wire::push(kind, &id, module, fields))
            .is_ok();
        let outcome = if sent { "sent" } else { "dropped" };
        metrics.pushes.with_label_values(&[kind, outcome]).inc();
        if sent {
            tracing::debug!(connection = %self.id, kind, "pushed");
        } else {
            tracing::warn!(connection = %self.id, kind, "push dropped: the client's queue is full");
        }
        sent
    }
}

/// The connections of this listener, by client address.
#[derive(Default)]
struct Connections {
    /// A std mutex: held briefly, never across `.await`.
    by_remote: Mutex<HashMap<SocketAddr, Arc<Connection>>>,
    /// Wakes requests waiting for their connection's setup.
    registered: Notify,
    /// Wakes the shutdown waiting for the clients to go.
    removed: Notify,
    /// Set when the node stops: clients are being sent elsewhere and new ones refused.
    draining: AtomicBool,
}

impl Connections {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Connection>>> {
        self.by_remote
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, remote: SocketAddr) -> Option<Arc<Connection>> {
        self.map().get(&remote).cloned()
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Waits until no connection is left, or `deadline`; returns how many are left.
    ///
    /// Cancel safety: holds nothing; dropping it only stops the wait.
    async fn wait_empty(&self, deadline: tokio::time::Instant) -> usize {
        loop {
            let notified = self.removed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let left = self.map().len();
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.map().len();
            }
        }
    }

    /// The connection of `remote`, waiting up to [`SETUP_WAIT`] for its setup.
    ///
    /// Cancel safety: holds nothing; dropping it only stops the wait.
    async fn wait_for(&self, remote: SocketAddr) -> Option<Arc<Connection>> {
        let deadline = tokio::time::Instant::now() + SETUP_WAIT;
        loop {
            let notified = self.registered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(connection) = self.get(remote) {
                return Some(connection);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

/// The Nacos gRPC services.
#[derive(Clone)]
pub struct GrpcApi {
    /// The config center, registry and access control, shared with the HTTP API. Its
    /// `cancel` starts the shutdown ([`GrpcApi::drain_at_shutdown`]).
    nacos: NacosState,
    /// The replicated store, for the registry's service list.
    kv: Arc<dyn KvApi>,
    /// The cluster's Nacos servers: where clients go when this node stops.
    servers: Arc<Servers>,
    /// Live connections.
    connections: Arc<Connections>,
    /// Metrics.
    metrics: GrpcMetrics,
    /// Tracks the connections' tasks.
    tracker: TaskTracker,
    /// Stops the listener and ends every stream; cancelled by the shutdown once the clients
    /// have gone (or were given [`DRAIN_WAIT`]).
    stop: CancellationToken,
}

impl GrpcApi {
    /// The services over `nacos` and `kv`, sending clients to `servers` when stopping,
    /// counting in `metrics`, their tasks on `tracker`.
    pub fn new(
        nacos: NacosState,
        kv: Arc<dyn KvApi>,
        servers: Arc<Servers>,
        metrics: GrpcMetrics,
        tracker: TaskTracker,
    ) -> Self {
        GrpcApi {
            nacos,
            kv,
            servers,
            connections: Arc::new(Connections::default()),
            metrics,
            tracker,
            // Not a child of `nacos.cancel`: the listener outlives it by the drain, and
            // `drain_at_shutdown` (a tracked task of the same component) always cancels it.
            stop: CancellationToken::new(),
        }
    }

    /// Serves both services on `listener` until the shutdown has drained the clients.
    pub async fn serve(
        self,
        listener: TcpListener,
        max_message_bytes: usize,
    ) -> Result<(), tonic::transport::Error> {
        let stop = self.stop.clone();
        let unary = pb::request_server::RequestServer::new(self.clone())
            .max_decoding_message_size(max_message_bytes);
        let stream = pb::bi_request_stream_server::BiRequestStreamServer::new(self)
            .max_decoding_message_size(max_message_bytes);
        tonic::transport::Server::builder()
            .initial_connection_window_size(strata_component::HTTP2_CONNECTION_WINDOW)
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .add_service(unary)
            .add_service(stream)
            .serve_with_incoming_shutdown(accept(listener), async move { stop.cancelled().await })
            .await
    }

    /// The caller named by the request's token.
    fn caller(&self, remote: Option<SocketAddr>, request: &Incoming) -> Result<Caller, Failure> {
        self.nacos
            .auth
            .gate
            .caller("nacos", request.token(), remote.map(|a| a.to_string()))
            .map_err(|e| Failure(wire::ERROR_FORBIDDEN, e.message))
    }

    /// Allows `who` `access` on `name` of `kind`.
    fn allow(&self, who: &Caller, kind: Kind, access: Access, name: String) -> Result<(), Failure> {
        self.nacos
            .auth
            .gate
            .check(who, kind, access, &Names::one(name), "nacos")
            .map_err(|_| Failure(wire::ERROR_FORBIDDEN, "authorization failed!".into()))
    }

    /// The request's connection, which must have been set up.
    async fn connection(&self, remote: Option<SocketAddr>) -> Result<Arc<Connection>, Failure> {
        let unregistered = || {
            Failure(
                wire::ERROR_UNREGISTERED,
                "Connection is unregistered.".into(),
            )
        };
        let remote = remote.ok_or_else(unregistered)?;
        self.connections
            .wait_for(remote)
            .await
            .ok_or_else(unregistered)
    }

    /// Answers one unary request.
    async fn dispatch(&self, remote: Option<SocketAddr>, request: &Incoming) -> Answer {
        match request.kind.as_str() {
            "ServerCheckRequest" => Ok(json!({
                "connectionId": remote.map(connection_id).unwrap_or_default(),
            })),
            "HealthCheckRequest" => {
                self.connection(remote).await?;
                if self.connections.draining() {
                    // A client that ignored `ConnectResetRequest` reconnects elsewhere on a
                    // failed health check (nacos-sdk-python 2.0.11 does).
                    return Err(Failure(
                        wire::ERROR_SERVER,
                        "this server is shutting down".into(),
                    ));
                }
                Ok(json!({}))
            }
            "ConfigQueryRequest" => self.config_query(remote, request).await,
            "ConfigPublishRequest" => self.config_publish(remote, request).await,
            "ConfigRemoveRequest" => self.config_remove(remote, request).await,
            "ConfigBatchListenRequest" => self.config_listen(remote, request).await,
            "InstanceRequest" => self.instance(remote, request).await,
            "PersistentInstanceRequest" => self.persistent_instance(remote, request).await,
            "BatchInstanceRequest" => self.batch_instance(remote, request).await,
            "ServiceQueryRequest" => self.service_query(remote, request).await,
            "SubscribeServiceRequest" => self.subscribe(remote, request).await,
            "ServiceListRequest" => self.service_list(remote, request).await,
            other => Err(Failure(
                wire::ERROR_NO_HANDLER,
                format!("RequestHandler Not Found: {other}"),
            )),
        }
    }

    // ---- config ----

    /// The config a request names (`dataId`, `group`, `tenant`).
    fn config_key(request: &Incoming) -> Result<ConfigKey, Failure> {
        let data_id = request.text("dataId");
        if data_id.is_empty() {
            return Err(Failure(
                wire::ERROR_BAD_REQUEST,
                "dataId is required".into(),
            ));
        }
        let group = request.text("group");
        let tenant = request.text("tenant");
        Ok(ConfigKey::new(
            Some(tenant.as_str()).filter(|t| !t.is_empty()),
            Some(group.as_str()).filter(|g| !g.is_empty()),
            &data_id,
        )?)
    }

    /// The config a request names, once its caller may `access` it.
    fn authorized_config(
        &self,
        remote: Option<SocketAddr>,
        request: &Incoming,
        access: Access,
    ) -> Result<ConfigKey, Failure> {
        let who = self.caller(remote, request)?;
        let key = Self::config_key(request)?;
        self.allow(&who, Kind::Config, access, crate::config_name(&key))?;
        Ok(key)
    }

    async fn config_query(&self, remote: Option<SocketAddr>, request: &Incoming) -> Answer {
        let key = self.authorized_config(remote, request, Access::Read)?;
        let client = match remote.and_then(|r| self.connections.get(r)) {
            Some(connection) => connection.client(),
            None => ClientIdentity {
                ip: remote.map(|r| r.ip().to_string()),
                labels: BTreeMap::new(),
            },
        };
        match self.nacos.configs.get(&key, &client) {
            Ok(served) => Ok(json!({
                "content": served.content,
                "encryptedDataKey": "",
                "contentType": served.kind.as_str(),
                "md5": served.md5,
                "lastModified": served.modified_at,
                "isBeta": served.gray,
            })),
            Err(e) if e.code == ErrorCode::NotFound => Err(Failure(
                wire::ERROR_CONFIG_NOT_FOUND,
                "config data not exist".into(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    async fn config_publish(&self, remote: Option<SocketAddr>, request: &Incoming) -> Answer {
        let key = self.authorized_config(remote, request, Access::Write)?;
        let Some(content) = request.body.get("content").and_then(Value::as_str) else {
            return Err(Failure(
                wire::ERROR_BAD_REQUEST,
                "content is required".into(),
            ));
        };
        let addition = request.body.get("additionMap");
        let extra = |name: &str| {
            addition
                .and_then(|a| a.get(name))
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        // Nacos knows types Strata does not check (html, text); they are stored as text.
        let kind = extra("type")
            .and_then(|t| t.parse::<ConfigType>().ok())
            .unwrap_or_default();
        let cas = request.text("casMd5");
        let source = remote.map(|r| r.to_string()).unwrap_or_default();
        self.nacos
            .configs
            .publish(
                Publish {
                    namespace: Some(key.namespace),
                    group: Some(key.group),
                    data_id: key.data_id,
                    content: content.to_string(),
                    kind: Some(kind),
                    desc: extra("desc"),
                    if_md5: (!cas.is_empty()).then_some(cas),
                    ..Publish::default()
                },
                &source,
            )
            .await?;
        Ok(json!({}))
    }

    async fn config_remove(&self, remote: Option<SocketAddr>, request: &Incoming) -> Answer {
        let key = self.authorized_config(remote, request, Access::Write)?;
        let source = remote.map(|r| r.to_string()).unwrap_or_default();
        match self.nacos.configs.delete(&key, &source).await {
            // Nacos answers success for a config that does not exist.
            Ok(_) => Ok(json!({})),
            Err(e) if e.code == ErrorCode::NotFound => Ok(json!({})),
            Err(e) => Err(e.into()),
        }
    }

    /// `ConfigBatchListenRequest`: with `listen` true, starts (or keeps) pushing changes of
    /// each config to the connection and answers which ones already differ from the md5 the
    /// client sent; with `listen` false, stops.
    async fn config_listen(&self, remote: Option<SocketAddr>, request: &Incoming) -> Answer {
        let who = self.caller(remote, request)?;
        let connection = self.connection(remote).await?;
        let listen = request.flag("listen", true);
        let Some(contexts) = request
            .body
            .get("configListenContexts")
            .and_then(Value::as_array)
        else {
            return Err(Failure(
                wire::ERROR_BAD_REQUEST,
                "configListenContexts is required".into(),
            ));
        };
        let client = connection.client();
        let mut entries = Vec::with_capacity(contexts.len());
        for context in contexts {
            let field = |name: &str| {
                context
                    .get(name)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let (data_id, group, tenant, md5) = (
                field("dataId"),
                field("group"),
                field("tenant"),
                field("md5"),
            );
            let key = ConfigKey::new(
                Some(tenant.as_str()).filter(|t| !t.is_empty()),
                Some(group.as_str()).filter(|g| !g.is_empty()),
                &data_id,
            )?;
            self.allow(&who, Kind::Config, Access::Read, crate::config_name(&key))?;
            // Pushes follow changes from what the client reads now; what already differs
            // from the client's md5 is answered here.
            let current = self.md5_now(&key, &client);
            entries.push((key, md5, tenant, current));
        }
        let mut changed = Vec::new();
        {
            let mut owned = connection.owned();
            for (key, md5, tenant, current) in entries {
                if !listen {
                    owned.listened.remove(&key);
                    continue;
                }
                if current != md5 {
                    changed.push(json!({
                        "dataId": key.data_id, "group": key.group, "tenant": tenant,
                    }));
                }
                owned.listened.insert(key, (current, tenant));
            }
        }
        connection.listen_changed.notify_one();
        Ok(json!({"changedConfigs": changed}))
    }

    /// The md5 of what `client` reads for `key` now ("" for a config that does not exist).
    fn md5_now(&self, key: &ConfigKey, client: &ClientIdentity) -> String {
        self.nacos
            .configs
            .get(key, client)
            .map(|served| served.md5)
            .unwrap_or_default()
    }

    // ---- naming ----

    /// `(namespace, group, service)` of a naming request.
    fn service_of(request: &Incoming) -> Result<(String, String, String), Failure> {
        let raw = request.text("serviceName");
        if raw.is_empty() {
            return Err(Failure(
                wire::ERROR_BAD_REQUEST,
                "serviceName is required".into(),
            ));
        }
        let (group, name) = match raw.split_once("@@") {
            Some((g, n)) => (g.to_string(), n.to_string()),
            None => {
                let group = request.text("groupName");
                let group = if group.is_empty() {
                    "DEFAULT_GROUP".into()
                } else {
                    group
                };
                (group, raw)
            }
        };
        let namespace = request.text("namespace");
        let namespace = if namespace.is_empty() {
            strata_api::registry::DEFAULT_NAMESPACE.to_string()
        } else {
            namespace
        };
        Ok((namespace, group, name))
    }

    /// The service a naming request names, once its caller may `access` it (registry names
    /// as permissions see them: `NAMESPACE/SERVICE`).
    fn authorized_service(
        &self,
        remote: Option<SocketAddr>,
        request: &Incoming,
        access: Access,
    ) -> Result<(String, String, String), Failure> {
        let who = self.caller(remote, request)?;
        let service = Self::service_of(request)?;
        let name = format!("{}/{}", service.0, service.2);
        self.allow(&who, Kind::Registry, access, name)?;
        Ok(service)
    }

    /// The registry registration of one Nacos instance object of service
    /// `(namespace, group, name)`: its reference and the registration, ephemeral (on a lease)
    /// or persistent.
    fn registration(
        (namespace, group, name): &(String, String, String),
        instance: &Value,
        ephemeral: bool,
    ) -> Result<(InstanceRef, strata_api::registry::Registration), Failure> {
        let ip = instance
            .get("ip")
            .and_then(Value::as_str)
            .filter(|ip| !ip.is_empty())
            .ok_or_else(|| Failure(wire::ERROR_BAD_REQUEST, "instance.ip is required".into()))?;
        let port = instance
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| Failure(wire::ERROR_BAD_REQUEST, "instance.port is required".into()))?;
        let mut meta: BTreeMap<String, String> = BTreeMap::new();
        if let Some(fields) = instance.get("metadata").and_then(Value::as_object) {
            for (k, v) in fields {
                let text = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                meta.insert(k.clone(), text);
            }
        }
        let cluster = instance
            .get("clusterName")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .unwrap_or("DEFAULT");
        meta.insert("nacos.group".into(), group.clone());
        meta.insert("nacos.cluster".into(), cluster.to_string());
        let id = crate::instance_id(ip, &port.to_string(), group);
        let registration = crate::registration_of(
            namespace.clone(),
            name.clone(),
            id.clone(),
            ip.to_string(),
            port,
            meta,
            instance.get("weight").and_then(Value::as_f64),
            instance
                .get("enabled")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            ephemeral,
        );
        Ok((InstanceRef::new(namespace, name, &id), registration))
    }

    /// The reference of the instance object `instance` of `service` names (its `ip` and
    /// `port`; missing ones make a reference nothing has).
    fn reference_of(
        (namespace, group, name): &(String, String, String),
        instance: &Value,
    ) -> InstanceRef {
        let ip = instance
            .get("ip")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let port = instance
            .get("port")
            .and_then(Value::as_u64)
            .unwrap_or_default();
        let id = crate::instance_id(ip, &port.to_string(), group);
        InstanceRef::new(namespace, name, &id)
    }

    /// Every instance of service `name` in `namespace` (none for a name the registry refuses).
    async fn service_instances(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<Arc<Instance>>, Failure> {
        let query = Query {
            namespace: Some(namespace.to_string()),
            ..Query::default()
        };
        match self.nacos.registry.query(name, &query).await {
            Ok(r) => Ok(r.instances),
            Err(e) if e.code == ErrorCode::BadRequest => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// The instances of `service` registered through Nacos in its group.
    async fn nacos_instances(
        &self,
        (namespace, group, name): &(String, String, String),
    ) -> Result<Vec<Arc<Instance>>, Failure> {
        let mut instances = self.service_instances(namespace, name).await?;
        instances.retain(|i| i.meta.get("nacos.group") == Some(group));
        Ok(instances)
    }

    /// Refuses to add an instance of kind `ephemeral` to `service` when the service has
    /// instances of the other kind, with Nacos's words (`EphemeralClientOperationServiceImpl`:
    /// "Current service %s is persistent service, can't register ephemeral instance.", and
    /// `PersistentClientOperationServiceImpl` the other way round). `what` is "register" or
    /// "batch register". Re-registering the same instance as the other kind is refused too.
    async fn refuse_mixed(
        &self,
        service: &(String, String, String),
        ephemeral: bool,
        what: &str,
    ) -> Result<(), Failure> {
        let existing = self.nacos_instances(service).await?;
        if existing.iter().all(|i| i.ephemeral == ephemeral) {
            return Ok(());
        }
        let (kind, wanted) = if ephemeral {
            ("persistent", "ephemeral")
        } else {
            ("ephemeral", "persistent")
        };
        Err(Failure(
            wire::ERROR_BAD_REQUEST,
            format!(
                "Current service {}@@{} is {kind} service, can't {what} {wanted} instance.",
                service.1, service.2
            ),
        ))
    }

    /// Registers one Nacos instance object of service `(namespace, group, name)` as an
    /// ephemeral instance of `connection`.
    async fn register(
        &self,
        connection: &Connection,
        service: &(String, String, String),
        instance: &Value,
    ) -> Result<InstanceRef, Failure> {
        let (reference, registration) = Self::registration(service, instance, true)?;
        self.nacos.registry.register(registration, true).await?;
        connection.owned().instances.insert(reference.clone());
        tracing::info!(connection = %connection.id, instance = %reference.id, service = %service.2, "registered an ephemeral instance");
        Ok(reference)
    }

    /// Deregisters instance `reference` and forgets it on `connection`. A persistent
    /// instance is left alone: Nacos's ephemeral operations never touch one.
    async fn deregister(
        &self,
        connection: &Connection,
        reference: &InstanceRef,
    ) -> Result<(), Failure> {
        connection.owned().instances.remove(reference);
        if self.stored_kind(reference).await? == Some(false) {
            tracing::debug!(connection = %connection.id, instance = %reference.id, "an ephemeral deregistration left a persistent instance alone");
            return Ok(());
        }
        match self.nacos.registry.deregister(reference).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == ErrorCode::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether instance `reference` is registered ephemeral (`Some(true)`), persistent
    /// (`Some(false)`) or not at all (`None`).
    async fn stored_kind(&self, reference: &InstanceRef) -> Result<Option<bool>, Failure> {
        let instances = self
            .service_instances(&reference.namespace, &reference.service)
            .await?;
        Ok(instances
            .iter()
            .find(|i| i.id == reference.id)
            .map(|i| i.ephemeral))
    }

    /// `InstanceRequest`: registers or deregisters an ephemeral instance of the connection.
    /// As Nacos 2.x's `InstanceRequestHandler` (which builds the service with
    /// `Service.newService(namespace, group, name, true)` and hands the instance to the
    /// ephemeral client operations), the instance's own `ephemeral` field is not read: even
    /// `ephemeral=false` registers an ephemeral instance that goes with the connection.
    /// Persistent instances travel in `PersistentInstanceRequest`.
    async fn instance(&self, remote: Option<SocketAddr>, request: &Incoming) -> Answer {
        let service = self.authorized_service(remote, request, Access::Write)?;
        let connection = self.connection(remote).await?;
        let instance = request.body.get("instance").cloned().unwrap_or(Value::Null);
        let kind = request.text("type");
        match kind.as_str() {
            "registerInstance" => {
                self.refuse_mixed(&service, true, "register").await?;
                self.register(&connection, &service, &instance).await?;
            }
            "deregisterInstance" => {
                let reference = Self::reference_of(&service, &instance);
                self.deregister(&connection, &reference).await?;
            }
            other => {
                return Err(Failure(
                    wire::ERROR_BAD_REQUEST,
                    format!("unknown InstanceRequest type {other:?}"),
                ))
            }
        }
        Ok(json!({"type": kind}))
    }

    /// `PersistentInstanceRequest`: registers or deregisters a persistent instance, stored
    /// as the HTTP open API stores one (no lease, owned by no connection: it outlives the
    /// connection and the client). Deregistering an ephemeral instance this way does
    /// nothing, as in Nacos (the persistent client never had it).
    async fn persistent_instance(&self, remote: Option<SocketAddr>, request: &Incoming) -> Answer {
        let service = self.authorized_service(remote, request, Access::Write)?;
        let connection = self.connection(remote).await?;
        let instance = request.body.get("instance").cloned().unwrap_or(Value::Null);
        let kind = request.text("type");
        match kind.as_str() {
            "registerInstance" => {
                let (reference, registration) = Self::registration(&service, &instance, false)?;
                self.refuse_mixed(&service, false, "register").await?;
                self.nacos.registry.register(registration, true).await?;
                tracing::info!(connection = %connection.id, instance = %reference.id, service = %service.2, "registered a persistent instance");
            }
            "deregisterInstance" => {
                let reference = Self::reference_of(&service, &instance);
                if self.stored_kind(&reference).await? == Some(false) {
                    match self.nacos.registry.deregister(&reference).await {
                        Ok(_) => {}
                        Err(e) if e.code == ErrorCode::NotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                    tracing::info!(connection = %connection.id, instance = %reference.id, service = %service.2, "deregistered a persistent instance");
                }
            }
            other => {
                return Err(Failure(
                    wire::ERROR_BAD_REQUEST,
                    format!("unknown PersistentInstanceRequest type {other:?}"),
                ))
            }
        }
        Ok(json!({"type": kind}))
    }

    /// `BatchInstanceRequest` (`batchRegisterInstance`): the connection's instances of the
    /// service become exactly these, as in Nacos.
    async fn batch_instance(&self, remote: Option<SocketAddr>, request: &Incoming) -> Answer {
        let service = self.authorized_service(remote, request, Access::Write)?;
        let connection = self.connection(remote).await?;
        let kind = request.text("type");
        if kind != "batchRegisterInstance" {
            return Err(Failure(
                wire::ERROR_BAD_REQUEST,
                format!("unknown BatchInstanceRequest type {kind:?}"),
            ));
        }
        let Some(instances) = request.body.get("instances").and_then(Value::as_array) else {
            return Err(Failure(
                wire::ERROR_BAD_REQUEST,
                "instances is required".into(),
            ));
        };
        self.refuse_mixed(&service, true, "batch register").await?;
        let mut kept = BTreeSet::new();
        for instance in instances {
            kept.insert(self.register(&connection, &service, instance).await?);
        }
        let stale: Vec<InstanceRef> = connection
            .owned()
            .instances
            .iter()
            .filter(|r| r.namespace == service.0 && r.service == service.2 && !kept.contains(*r))
            .filter(|r| crate::instance_group(&r.id) == service.1)
            .cloned()
            .collect();
        for reference in stale {
            self.deregister(&connection, &reference).await?;
        }
        Ok(json!({"type": kind}))
    }

    /// `ServiceListRequest`: a page of the names of the services of a namespace and group,
    /// and how many there are, as Nacos's `ServiceListRequestHandler` answers (names without
    /// the `GROUP@@` prefix, `pageNo` from 1; the `selector` is ignored, as Nacos's own
    /// handler ignores it). A service is listed while it has instances in the group:
    /// registered through Nacos in it, or, in `DEFAULT_GROUP`, registered without a Nacos
    /// group (the native API). Names are sorted, so pages do not overlap. Services the
    /// caller may not read are left out, as the registry's own list does.
    async fn service_list(&self, remote: Option<SocketAddr>, request: &Incoming) -> Answer {
        let who = self.caller(remote, request)?;
        self.connection(remote).await?;
        let namespace = Some(request.text("namespace"))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| strata_api::registry::DEFAULT_NAMESPACE.to_string());
        let group = Some(request.text("groupName"))
            .filter(|g| !g.is_empty())
            .unwrap_or_else(|| "DEFAULT_GROUP".to_string());
        let page_no = request.integer("pageNo", 1);
        let page_size = request.integer("pageSize", DEFAULT_PAGE_SIZE);
        let mut names = self.service_names(&namespace, &group).await?;
        if who.enforced() {
            names.retain(|name| {
                self.allow(
                    &who,
                    Kind::Registry,
                    Access::Read,
                    format!("{namespace}/{name}"),
                )
                .is_ok()
            });
        }
        let page = page_of(&names, page_no, page_size);
        Ok(json!({"count": names.len(), "serviceNames": page}))
    }

    /// The services of `namespace` with instances in Nacos group `group`, sorted (read from
    /// this node's copy of the registry, as the registry's own reads are).
    async fn service_names(&self, namespace: &str, group: &str) -> Result<Vec<String>, Failure> {
        let response = self
            .kv
            .range(strata_proto::kv::RangeRequest {
                key: strata_api::registry::instances_prefix(Some(namespace), None).into_bytes(),
                prefix: true,
                serializable: true,
                ..Default::default()
            })
            .await?;
        let mut names = BTreeSet::new();
        for entry in response.kvs {
            let Some(RegistryKey::Instance(reference)) = RegistryKey::parse(&entry.key) else {
                continue;
            };
            if reference.namespace != namespace || names.contains(&reference.service) {
                continue;
            }
            let Ok(instance) = serde_json::from_slice::<Instance>(&entry.value) else {
                continue;
            };
            let in_group = match instance.meta.get("nacos.group") {
                Some(g) => g == group,
                None => group == "DEFAULT_GROUP",
            };
            if in_group {
                names.insert(reference.service);
            }
        }
        Ok(names.into_iter().collect())
    }

    /// The Nacos `ServiceInfo` of a service and the registry index it reflects.
    async fn service_info(
        &self,
        service: &(String, String, String),
        healthy_only: bool,
        index: i64,
        wait: Option<Duration>,
    ) -> Result<(Value, i64), Failure> {
        let (instances, protected, index) = self
            .query_service(service, healthy_only, index, wait)
            .await?;
        Ok((service_info_json(service, &instances, protected), index))
    }

    /// The instances of `service`, whether its protection threshold applies, and its index;
    /// with `wait`, after a change past `index` or when `wait` ends.
    async fn query_service(
        &self,
        (namespace, _, name): &(String, String, String),
        healthy_only: bool,
        index: i64,
        wait: Option<Duration>,
    ) -> Result<(Vec<Arc<Instance>>, bool, i64), Failure> {
        let result = self
            .nacos
            .registry
            .query(
                name,
                &Query {
                    namespace: Some(namespace.clone()),
                    passing: healthy_only,
                    index,
                    wait,
                    ..Query::default()
                },
            )
            .await;
        match result {
            Ok(r) => Ok((r.instances, r.protected, r.index)),
            Err(e) if e.code == ErrorCode::BadRequest => Ok((Vec::new(), false, index)),
            Err(e) => Err(e.into()),
        }
    }

    async fn service_query(&self, remote: Option<SocketAddr>, request: &Incoming) -> Answer {
        let service = self.authorized_service(remote, request, Access::Read)?;
        // Java clients send `healthyOnly`, nacos-sdk-python 2.x `healthOnly`.
        let healthy_only = request.flag("healthyOnly", false) || request.flag("healthOnly", false);
        let (info, _) = self.service_info(&service, healthy_only, 0, None).await?;
        Ok(json!({"serviceInfo": info}))
    }

    /// `SubscribeServiceRequest`: answers the service now and, with `subscribe` true, pushes
    /// it again on every change; with false, stops.
    async fn subscribe(&self, remote: Option<SocketAddr>, request: &Incoming) -> Answer {
        let service = self.authorized_service(remote, request, Access::Read)?;
        let connection = self.connection(remote).await?;
        let (info, index) = self.service_info(&service, false, 0, None).await?;
        let previous = connection.owned().subscriptions.remove(&service);
        if let Some(previous) = previous {
            previous.cancel();
        }
        if request.flag("subscribe", true) {
            let stop = connection.cancel.child_token();
            connection
                .owned()
                .subscriptions
                .insert(service.clone(), stop.clone());
            let api = self.clone();
            let connection = Arc::clone(&connection);
            self.tracker.spawn(async move {
                api.follow_service(connection, service, index, stop).await;
            });
        }
        Ok(json!({"serviceInfo": info}))
    }

    /// Pushes `NotifySubscriberRequest` to `connection` whenever `service` changes after
    /// `index`, until `stop`.
    async fn follow_service(
        &self,
        connection: Arc<Connection>,
        service: (String, String, String),
        mut index: i64,
        stop: CancellationToken,
    ) {
        loop {
            let round = tokio::select! {
                round = self.query_service(&service, false, index, Some(WATCH_ROUND)) => round,
                () = stop.cancelled() => return,
            };
            match round {
                // Encoded only when it changed (not for a round that timed out).
                Ok((instances, protected, next)) if next != index => {
                    index = next;
                    let info = service_info_json(&service, &instances, protected);
                    connection.send_push(
                        &self.metrics,
                        "NotifySubscriberRequest",
                        "naming",
                        json!({
                            "namespace": service.0, "groupName": service.1,
                            "serviceName": service.2, "serviceInfo": info,
                        }),
                    );
                }
                Ok(_) => {}
                Err(Failure(_, message)) => {
                    tracing::warn!(connection = %connection.id, service = %service.2, error = %message, "follow a subscribed service failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
        }
    }

    // ---- connections ----

    /// Registers the connection of `remote` from its `ConnectionSetupRequest`.
    fn set_up(
        &self,
        remote: SocketAddr,
        setup: &Incoming,
        push: mpsc::Sender<pb::Payload>,
        cancel: CancellationToken,
    ) -> Arc<Connection> {
        let labels: BTreeMap<String, String> = setup
            .body
            .get("labels")
            .and_then(Value::as_object)
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let connection = Arc::new(Connection::new(
            remote,
            setup.text("tenant"),
            labels,
            push,
            cancel,
        ));
        let replaced = self
            .connections
            .map()
            .insert(remote, Arc::clone(&connection));
        if let Some(old) = replaced {
            old.cancel.cancel();
        }
        self.connections.registered.notify_waiters();
        self.metrics.connections.inc();
        tracing::info!(connection = %connection.id, tenant = %connection.tenant, client_version = %setup.text("clientVersion"), "Nacos gRPC connection set up");
        let api = self.clone();
        let follower = Arc::clone(&connection);
        self.tracker
            .spawn(async move { api.follow_configs(follower).await });
        let api = self.clone();
        let renewer = Arc::clone(&connection);
        self.tracker
            .spawn(async move { api.renew_instances(renewer).await });
        let metrics = self.metrics.clone();
        let detected = Arc::clone(&connection);
        self.tracker.spawn(async move {
            if detect_unresponsive(&detected, &metrics).await {
                tracing::info!(connection = %detected.id, "closing a Nacos gRPC connection that did not answer ClientDetectionRequest");
                detected.unresponsive.store(true, Ordering::Release);
                detected.cancel.cancel();
            }
        });
        connection
    }

    /// Forgets `connection` and gives up what it owned.
    async fn tear_down(&self, connection: &Arc<Connection>) {
        connection.cancel.cancel();
        {
            let mut map = self.connections.map();
            if map
                .get(&connection.remote)
                .is_some_and(|c| Arc::ptr_eq(c, connection))
            {
                map.remove(&connection.remote);
            }
        }
        self.connections.removed.notify_waiters();
        self.metrics.connections.dec();
        let reason = if self.nacos.cancel.is_cancelled() {
            "shutdown"
        } else if connection.unresponsive.load(Ordering::Acquire) {
            "unresponsive"
        } else {
            "client"
        };
        self.metrics.closed.with_label_values(&[reason]).inc();
        let instances: Vec<InstanceRef> = std::mem::take(&mut connection.owned().instances)
            .into_iter()
            .collect();
        if self.nacos.cancel.is_cancelled() {
            // The node is stopping, not the client: its instances stay until their lease
            // expires, and the client registers them again wherever it reconnects.
            tracing::info!(connection = %connection.id, instances = instances.len(), "Nacos gRPC connection closed by shutdown");
            return;
        }
        for reference in &instances {
            match tokio::time::timeout(CLEANUP_DEADLINE, self.nacos.registry.deregister(reference))
                .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.code == ErrorCode::NotFound => {}
                Ok(Err(e)) => {
                    tracing::warn!(connection = %connection.id, instance = %reference.id, error = %e, "deregister an instance of a closed connection failed; its lease will expire");
                }
                Err(_) => {
                    tracing::warn!(connection = %connection.id, instance = %reference.id, "deregister an instance of a closed connection timed out; its lease will expire");
                }
            }
        }
        tracing::info!(connection = %connection.id, instances = instances.len(), "Nacos gRPC connection closed");
    }

    /// The `ConnectResetRequest` fields sending a client to `target` (`serverIp` and
    /// `serverPort`), or empty ones, which leave the choice to the client's own server list.
    fn reset_fields(target: Option<&crate::servers::ServerRecord>) -> Value {
        match target.and_then(crate::servers::ServerRecord::redirect) {
            Some((ip, port)) => json!({"serverIp": ip, "serverPort": port.to_string()}),
            None => json!({"serverIp": "", "serverPort": ""}),
        }
    }

    /// Answers a setup that arrives while this node stops: a `ConnectResetRequest` naming
    /// another node, as for the connections that were there.
    async fn refuse_while_draining(&self, remote: SocketAddr, push: &mpsc::Sender<pb::Payload>) {
        let others = self.servers.others().await;
        let fields = Self::reset_fields(others.first().map(|(_, record)| record));
        let outcome =
            match push.try_send(wire::push("ConnectResetRequest", "1", "internal", fields)) {
                Ok(()) => "sent",
                Err(_) => "dropped",
            };
        self.metrics
            .pushes
            .with_label_values(&["ConnectResetRequest", outcome])
            .inc();
        self.metrics.closed.with_label_values(&["refused"]).inc();
        tracing::info!(remote = %remote, "refused a Nacos gRPC connection set up while this node stops; told it to reconnect elsewhere");
    }

    /// Waits for the component to stop, then sends every client elsewhere: withdraws this
    /// node from the cluster's Nacos servers, pushes `ConnectResetRequest` to each
    /// connection (naming the other live nodes in turn), waits until the clients have gone or
    /// [`DRAIN_WAIT`] passed, and stops the listener.
    pub async fn drain_at_shutdown(self) {
        self.nacos.cancel.cancelled().await;
        self.connections.draining.store(true, Ordering::Release);
        let started = tokio::time::Instant::now();
        let connections: Vec<Arc<Connection>> = self.connections.map().values().cloned().collect();
        let others = if connections.is_empty() {
            self.servers.withdraw().await;
            Vec::new()
        } else {
            let ((), others) = tokio::join!(self.servers.withdraw(), self.servers.others());
            others
        };
        if connections.is_empty() {
            self.stop.cancel();
            return;
        }
        for (n, connection) in connections.iter().enumerate() {
            let target = others
                .get(n % others.len().max(1))
                .map(|(_, record)| record);
            let fields = Self::reset_fields(target);
            connection.send_push(&self.metrics, "ConnectResetRequest", "internal", fields);
        }
        let targets: Vec<String> = others.iter().map(|(_, r)| r.grpc.clone()).collect();
        tracing::info!(connections = connections.len(), targets = ?targets, "this node stops: asked its Nacos gRPC clients to reconnect elsewhere");
        let left = self.connections.wait_empty(started + DRAIN_WAIT).await;
        tracing::info!(
            moved = connections.len().saturating_sub(left),
            left,
            waited_ms = started.elapsed().as_millis() as u64,
            "stopping the Nacos gRPC listener"
        );
        self.stop.cancel();
    }

    /// Pushes `ConfigChangeNotifyRequest` for each listened config that changes, until the
    /// connection goes.
    async fn follow_configs(&self, connection: Arc<Connection>) {
        let client = connection.client();
        let _listening = self.nacos.configs.listening("nacos_grpc_listen");
        loop {
            let watched: Vec<(ConfigKey, String)> = connection
                .owned()
                .listened
                .iter()
                .map(|(key, (md5, _))| (key.clone(), md5.clone()))
                .collect();
            let changed = tokio::select! {
                changed = self.nacos.configs.wait_changed(&watched, &client, WATCH_ROUND), if !watched.is_empty() => changed,
                () = connection.listen_changed.notified() => continue,
                () = connection.cancel.cancelled() => return,
            };
            for key in changed {
                let current = self.md5_now(&key, &client);
                let tenant = {
                    let mut owned = connection.owned();
                    match owned.listened.get_mut(&key) {
                        Some(entry) => {
                            entry.0 = current;
                            entry.1.clone()
                        }
                        None => continue,
                    }
                };
                connection.send_push(
                    &self.metrics,
                    "ConfigChangeNotifyRequest",
                    "config",
                    json!({"dataId": key.data_id, "group": key.group, "tenant": tenant}),
                );
            }
        }
    }

    /// Renews the leases of the connection's ephemeral instances while it lives.
    async fn renew_instances(&self, connection: Arc<Connection>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(RENEW_EVERY) => {}
                () = connection.cancel.cancelled() => return,
            }
            let instances: Vec<InstanceRef> =
                connection.owned().instances.iter().cloned().collect();
            // Several at a time: one after another, a connection holding a few thousand
            // instances (batch registrations) would take longer than their TTL to renew.
            futures::StreamExt::for_each_concurrent(
                futures::stream::iter(instances),RENEW_CONCURRENCY, |reference| {
                    let connection = &connection;
                    async move {
                        let renewed = tokio::time::timeout(
                            CLEANUP_DEADLINE,
                            self.nacos.registry.heartbeat(&reference),
                        )
                        .await;
                        if !matches!(renewed, Ok(Ok(_))) {
                            tracing::debug!(connection = %connection.id, instance = %reference.id, "renew an ephemeral instance failed");
                        }
                    }
                })
                .await;
        }
    }

    /// Reads a connection's bi-stream: its setup, then its answers to pushes, until it ends.
    async fn read_stream(
        self,
        remote: SocketAddr,
        mut inbound: tonic::Streaming<pb::Payload>,
        push: mpsc::Sender<pb::Payload>,
    ) {
        let mut connection: Option<Arc<Connection>> = None;
        let cancel = self.stop.child_token();
        loop {
            // The connection closed by this node (client detection, or a newer setup of the
            // same client): its stream ends here.
            let closed = async {
                match &connection {
                    Some(connection) => connection.cancel.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            let message = tokio::select! {
                message = inbound.message() => message,
                () = cancel.cancelled() => break,
                () = closed => break,
            };
            let payload = match message {
                Ok(Some(payload)) => payload,
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(remote = %remote, error = %status, "Nacos gRPC stream ended");
                    break;
                }
            };
            let incoming = match Incoming::decode(&payload) {
                Ok(incoming) => incoming,
                Err(message) => {
                    tracing::debug!(remote = %remote, error = %message, "ignored a bad payload on a bi-stream");
                    continue;
                }
            };
            if let Some(connection) = &connection {
                connection.touch();
            }
            if incoming.kind == "ConnectionSetupRequest" {
                if let Some(old) = connection.take() {
                    self.tear_down(&old).await;
                }
                if self.connections.draining() {
                    // As Nacos refuses a connection while it stops: told to go elsewhere,
                    // and its stream ends.
                    self.refuse_while_draining(remote, &push).await;
                    break;
                }
                connection =
                    Some(self.set_up(remote, &incoming, push.clone(), cancel.child_token()));
            } else if incoming.kind.ends_with("Response") {
                self.metrics
                    .pushes
                    .with_label_values(&[incoming.kind.as_str(), "acked"])
                    .inc();
            } else {
                tracing::debug!(remote = %remote, kind = %incoming.kind, "ignored a request on a bi-stream");
            }
        }
        if let Some(connection) = connection {
            self.tear_down(&connection).await;
        }
    }
}

#[tonic::async_trait]
impl pb::request_server::Request for GrpcApi {
    async fn request(
        &self,
        request: tonic::Request<pb::Payload>,
    ) -> Result<tonic::Response<pb::Payload>, tonic::Status> {
        let started = Instant::now();
        let remote = request.remote_addr();
        let payload = request.into_inner();
        let incoming = match Incoming::decode(&payload) {
            Ok(incoming) => incoming,
            Err(message) => {
                tracing::debug!(remote = ?remote, error = %message, "refused a bad Nacos gRPC payload");
                self.metrics
                    .requests
                    .with_label_values(&["invalid", "error"])
                    .inc();
                return Ok(tonic::Response::new(wire::failure(
                    "ErrorResponse",
                    "",
                    wire::ERROR_BAD_REQUEST,
                    &message,
                )));
            }
        };
        let kind = wire::response_kind(&incoming.kind);
        let request_id = incoming.request_id();
        if let Some(connection) = remote.and_then(|r| self.connections.get(r)) {
            connection.touch();
        }
        if incoming.kind == "ServerCheckRequest" && self.connections.draining() {
            // Not a `ServerCheckResponse`: Nacos clients then try their next server at once.
            self.metrics
                .requests
                .with_label_values(&["ServerCheckRequest", "error"])
                .inc();
            tracing::debug!(remote = ?remote, "refused a Nacos gRPC server check: this node stops");
            return Ok(tonic::Response::new(wire::failure(
                "ErrorResponse",
                &request_id,
                wire::ERROR_SERVER,
                "this server is shutting down",
            )));
        }
        let answer = self.dispatch(remote, &incoming).await;
        let type_label = if kind == "ErrorResponse" {
            "unknown"
        } else {
            incoming.kind.as_str()
        };
        let reply = match answer {
            Ok(fields) => {
                self.metrics
                    .requests
                    .with_label_values(&[type_label, "ok"])
                    .inc();
                wire::success(kind, &request_id, fields)
            }
            Err(Failure(code, message)) => {
                self.metrics
                    .requests
                    .with_label_values(&[type_label, "error"])
                    .inc();
                tracing::debug!(remote = ?remote, kind = %incoming.kind, code, error = %message, "Nacos gRPC request failed");
                wire::failure(kind, &request_id, code, &message)
            }
        };
        self.metrics
            .request_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(tonic::Response::new(reply))
    }
}

/// Waits until `connection` has been silent for [`DETECT_AFTER`], then pushes it a
/// `ClientDetectionRequest`; returns true when nothing came from the client within
/// [`DETECT_WAIT`] after that, false when the connection went first.
///
/// Cancel safety: holds nothing; dropping it only stops the detection.
async fn detect_unresponsive(connection: &Connection, metrics: &GrpcMetrics) -> bool {
    loop {
        let idle = connection.idle();
        if idle < DETECT_AFTER {
            tokio::select! {
                () = tokio::time::sleep(DETECT_AFTER - idle) => {}
                () = connection.cancel.cancelled() => return false,
            }
            continue;
        }
        let before = connection.last_active();
        connection.send_push(metrics, "ClientDetectionRequest", "internal", json!({}));
        tokio::select! {
            () = tokio::time::sleep(DETECT_WAIT) => {}
            () = connection.cancel.cancelled() => return false,
        }
        if connection.last_active() == before {
            return true;
        }
    }
}

/// The server's half of a bi-stream.
type PushStream = Pin<Box<dyn Stream<Item = Result<pb::Payload, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl pb::bi_request_stream_server::BiRequestStream for GrpcApi {
    type requestBiStreamStream = PushStream;

    async fn request_bi_stream(
        &self,
        request: tonic::Request<tonic::Streaming<pb::Payload>>,
    ) -> Result<tonic::Response<PushStream>, tonic::Status> {
        let Some(remote) = request.remote_addr() else {
            return Err(tonic::Status::failed_precondition(
                "the client's address is unknown",
            ));
        };
        let (push, pushed) = mpsc::channel(PUSH_QUEUE);
        let api = self.clone();
        let inbound = request.into_inner();
        self.tracker
            .spawn(async move { api.read_stream(remote, inbound, push).await });
        let outbound = futures::stream::unfold(pushed, |mut pushed| async move {
            let payload = pushed.recv().await?;
            Some((Ok(payload), pushed))
        });
        Ok(tonic::Response::new(Box::pin(outbound)))
    }
}

/// Accepts connections for tonic, with `TCP_NODELAY` so small pushes leave at once.
fn accept(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> + Send {
    futures::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((connection, _)) => {
                    if let Err(e) = connection.set_nodelay(true) {
                        tracing::debug!(error = %e, "set TCP_NODELAY on a Nacos gRPC connection");
                    }
                    return Some((Ok(connection), listener));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept a Nacos gRPC connection failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// A service's `serviceInfo` as Nacos clients read it.
fn service_info_json(
    (_, group, name): &(String, String, String),
    instances: &[Arc<Instance>],
    protected: bool,
) -> Value {
    let full = format!("{group}@@{name}");
    let hosts = crate::hosts_json(instances, group, &full);
    json!({
        "name": name, "groupName": group, "clusters": "", "cacheMillis": 10000,
        "hosts": hosts, "lastRefTime": crate::ref_time(), "checksum": "",
        "allIps": false, "reachProtectionThreshold": protected,
    })
}
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn request(kind: &str, body: Value) -> Incoming {
        Incoming {
            kind: kind.into(),
            body,
            headers: HashMap::new(),
        }
    }

    #[test]
    fn connection_ids_name_the_client_address() {
        let remote: SocketAddr = "127.0.0.1:4321".parse().unwrap();
        assert_eq!(connection_id(remote), "127.0.0.1_4321");
    }

    #[test]
    fn config_keys_default_and_refuse() {
        let key =
            GrpcApi::config_key(&request("ConfigQueryRequest", json!({"dataId": "a"}))).unwrap();
        assert_eq!(key.namespace, "public");
        assert_eq!(key.group, "DEFAULT_GROUP");
        let key = GrpcApi::config_key(&request(
            "ConfigQueryRequest",
            json!({"dataId": "a", "group": "g", "tenant": "dev"}),
        ))
        .unwrap();
        assert_eq!((key.namespace.as_str(), key.group.as_str()), ("dev", "g"));
        let missing = GrpcApi::config_key(&request("ConfigQueryRequest", json!({"group": "g"})));
        assert!(matches!(missing, Err(Failure(wire::ERROR_BAD_REQUEST, _))));
        // A non-string dataId reads as absent, never as a panic.
        let wrong = GrpcApi::config_key(&request("ConfigQueryRequest", json!({"dataId": 7})));
        assert!(matches!(wrong, Err(Failure(wire::ERROR_BAD_REQUEST, _))));
    }

    #[test]
    fn pages_are_cut_as_nacos_cuts_them() {
        let names: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        assert_eq!(page_of(&names, 1, 2), ["a", "b"]);
        assert_eq!(page_of(&names, 3, 2), ["e"]);
        assert!(page_of(&names, 4, 2).is_empty());
        // Below page 1 is page 1; no size is no page; nothing overflows.
        assert_eq!(page_of(&names, 0, 2), ["a", "b"]);
        assert_eq!(page_of(&names, i64::MIN, 2), ["a", "b"]);
        assert!(page_of(&names, 1, 0).is_empty());
        assert!(page_of(&names, 1, -3).is_empty());
        assert_eq!(page_of(&names, 1, i64::MAX), names.as_slice());
        assert!(page_of(&names, i64::MAX, i64::MAX).is_empty());
    }

    fn test_connection() -> (Arc<Connection>, mpsc::Receiver<pb::Payload>) {
        let (push, pushed) = mpsc::channel(8);
        let connection = Connection::new(
            "127.0.0.1:4321".parse().unwrap(),
            String::new(),
            BTreeMap::new(),
            push,
            CancellationToken::new(),
        );
        (Arc::new(connection), pushed)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_detected_after_the_detection_wait() {
        let metrics = GrpcMetrics::unregistered();
        let (connection, mut pushed) = test_connection();
        let started = tokio::time::Instant::now();
        assert!(detect_unresponsive(&connection, &metrics).await);
        assert_eq!(started.elapsed(), DETECT_AFTER + DETECT_WAIT);
        let ping = Incoming::decode(&pushed.try_recv().unwrap()).unwrap();
        assert_eq!(ping.kind, "ClientDetectionRequest");
        assert_eq!(ping.text("module"), "internal");
        assert!(pushed.try_recv().is_err(), "one ping only");
    }

    #[tokio::test(start_paused = true)]
    async fn answering_and_busy_clients_are_kept() {
        let metrics = GrpcMetrics::unregistered();
        // A client that answers every ping: pinged again and again, never found silent.
        let (connection, mut pushed) = test_connection();
        let answering = Arc::clone(&connection);
        let answerer = tokio::spawn(async move {
            let mut pings = 0;
            while let Some(payload) = pushed.recv().await {
                assert_eq!(
                    Incoming::decode(&payload).unwrap().kind,
                    "ClientDetectionRequest"
                );
                answering.touch();
                pings += 1;
                if pings == 3 {
                    answering.cancel.cancel();
                    break;
                }
            }
            pings
        });
        assert!(!detect_unresponsive(&connection, &metrics).await);
        assert_eq!(answerer.await.unwrap(), 3);

        // A client that sends something every 10 s is never pinged.
        let (connection, mut pushed) = test_connection();
        let busy = Arc::clone(&connection);
        tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(10)).await;
                busy.touch();
            }
            busy.cancel.cancel();
        });
        assert!(!detect_unresponsive(&connection, &metrics).await);
        assert!(pushed.try_recv().is_err());
    }

    #[test]
    fn connect_resets_name_a_server_port_or_nothing() {
        let record = crate::servers::ServerRecord {
            grpc: "10.0.0.2:9848".into(),
            http: Some("10.0.0.2:8848".into()),
        };
        assert_eq!(
            GrpcApi::reset_fields(Some(&record)),
            json!({"serverIp": "10.0.0.2", "serverPort": "8848"})
        );
        assert_eq!(
            GrpcApi::reset_fields(None),
            json!({"serverIp": "", "serverPort": ""})
        );
    }

    #[test]
    fn service_names_split_groups() {
        let plain = GrpcApi::service_of(&request(
            "InstanceRequest",
            json!({"serviceName": "web", "groupName": "G", "namespace": ""}),
        ))
        .unwrap();
        assert_eq!(plain, ("public".into(), "G".into(), "web".into()));
        let grouped = GrpcApi::service_of(&request(
            "InstanceRequest",
            json!({"serviceName": "H@@web", "namespace": "dev"}),
        ))
        .unwrap();
        assert_eq!(grouped, ("dev".into(), "H".into(), "web".into()));
        assert!(GrpcApi::service_of(&request("InstanceRequest", json!({}))).is_err());
        assert_eq!(crate::instance_group("1.2.3.4:80"), "DEFAULT_GROUP");
        assert_eq!(crate::instance_group("1.2.3.4:80@H"), "H");
    }
}
