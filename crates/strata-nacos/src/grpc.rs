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

use crate::grpc_metrics::GrpcMetrics;
use crate::grpc_wire::{self as wire, pb, Incoming};
use crate::NacosState;
use futures::Stream;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata_api::config::{ClientIdentity, ConfigKey, ConfigType, Publish};
use strata_api::registry::{InstanceRef, Query};
use strata_auth::{Access, Caller, Kind, Names};
use strata_proto::error::{ApiError, ErrorCode};
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

/// The id a connection from `remote` gets, as Nacos spells them (`IP_PORT`).
fn connection_id(remote: SocketAddr) -> String {
    format!("{}_{}", remote.ip(), remote.port())
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
    /// The config center, registry and access control, shared with the HTTP API.
    nacos: NacosState,
    /// Live connections.
    connections: Arc<Connections>,
    /// Metrics.
    metrics: GrpcMetrics,
    /// Tracks the connections' tasks.
    tracker: TaskTracker,
}

impl GrpcApi {
    /// The services over `nacos`, counting in `metrics`, their tasks on `tracker`.
    pub fn new(nacos: NacosState, metrics: GrpcMetrics, tracker: TaskTracker) -> Self {
        GrpcApi {
            nacos,
            connections: Arc::new(Connections::default()),
            metrics,
            tracker,
        }
    }

    /// Serves both services on `listener` until `nacos.cancel` is cancelled.
    pub async fn serve(
        self,
        listener: TcpListener,
        max_message_bytes: usize,
    ) -> Result<(), tonic::transport::Error> {
        let stop = self.nacos.cancel.clone();
        let unary = pb::request_server::RequestServer::new(self.clone())
            .max_decoding_message_size(max_message_bytes);
        let stream = pb::bi_request_stream_server::BiRequestStreamServer::new(self)
            .max_decoding_message_size(max_message_bytes);
        tonic::transport::Server::builder()
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
            "HealthCheckRequest" => self.connection(remote).await.map(|_| json!({})),
            "ConfigQueryRequest" => self.config_query(remote, request).await,
            "ConfigPublishRequest" => self.config_publish(remote, request).await,
            "ConfigRemoveRequest" => self.config_remove(remote, request).await,
            "ConfigBatchListenRequest" => self.config_listen(remote, request).await,
            "InstanceRequest" => self.instance(remote, request).await,
            "BatchInstanceRequest" => self.batch_instance(remote, request).await,
            "ServiceQueryRequest" => self.service_query(remote, request).await,
            "SubscribeServiceRequest" => self.subscribe(remote, request).await,
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

    /// Registers one Nacos instance object of service `(namespace, group, name)` as an
    /// ephemeral instance of `connection`.
    async fn register(
        &self,
        connection: &Connection,
        (namespace, group, name): &(String, String, String),
        instance: &Value,
    ) -> Result<InstanceRef, Failure> {
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
            true,
        );
        self.nacos.registry.register(registration, true).await?;
        let reference = InstanceRef::new(namespace, name, &id);
        connection.owned().instances.insert(reference.clone());
        tracing::info!(connection = %connection.id, instance = %id, service = %name, "registered an ephemeral instance");
        Ok(reference)
    }

    /// Deregisters instance `reference` and forgets it on `connection`.
    async fn deregister(
        &self,
        connection: &Connection,
        reference: &InstanceRef,
    ) -> Result<(), Failure> {
        connection.owned().instances.remove(reference);
        match self.nacos.registry.deregister(reference).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == ErrorCode::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn instance(&self, remote: Option<SocketAddr>, request: &Incoming) -> Answer {
        let service = self.authorized_service(remote, request, Access::Write)?;
        let connection = self.connection(remote).await?;
        let instance = request.body.get("instance").cloned().unwrap_or(Value::Null);
        let kind = request.text("type");
        match kind.as_str() {
            "registerInstance" => {
                self.register(&connection, &service, &instance).await?;
            }
            "deregisterInstance" => {
                let ip = instance
                    .get("ip")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let port = instance
                    .get("port")
                    .and_then(Value::as_u64)
                    .unwrap_or_default();
                let id = crate::instance_id(ip, &port.to_string(), &service.1);
                let reference = InstanceRef::new(&service.0, &service.2, &id);
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

    /// The Nacos `ServiceInfo` of a service and the registry index it reflects.
    async fn service_info(
        &self,
        (namespace, group, name): &(String, String, String),
        healthy_only: bool,
        index: i64,
        wait: Option<Duration>,
    ) -> Result<(Value, i64), Failure> {
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
        let (instances, protected, index) = match result {
            Ok(r) => (r.instances, r.protected, r.index),
            Err(e) if e.code == ErrorCode::BadRequest => (Vec::new(), false, index),
            Err(e) => return Err(e.into()),
        };
        let full = format!("{group}@@{name}");
        let hosts = crate::hosts_json(&instances, group, &full);
        Ok((
            json!({
                "name": name, "groupName": group, "clusters": "", "cacheMillis": 10000,
                "hosts": hosts, "lastRefTime": crate::now_ms(), "checksum": "",
                "allIps": false, "reachProtectionThreshold": protected,
            }),
            index,
        ))
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
                round = self.service_info(&service, false, index, Some(WATCH_ROUND)) => round,
                () = stop.cancelled() => return,
            };
            match round {
                Ok((info, next)) if next != index => {
                    index = next;
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
        let connection = Arc::new(Connection {
            id: connection_id(remote),
            tenant: setup.text("tenant"),
            labels,
            remote,
            push,
            cancel,
            listen_changed: Notify::new(),
            next_push_id: AtomicU64::new(1),
            owned: Mutex::new(Owned::default()),
        });
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
        self.metrics.connections.dec();
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
            for reference in instances {
                let renewed = tokio::time::timeout(
                    CLEANUP_DEADLINE,
                    self.nacos.registry.heartbeat(&reference),
                )
                .await;
                if !matches!(renewed, Ok(Ok(_))) {
                    tracing::debug!(connection = %connection.id, instance = %reference.id, "renew an ephemeral instance failed");
                }
            }
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
        let cancel = self.nacos.cancel.child_token();
        loop {
            let message = tokio::select! {
                message = inbound.message() => message,
                () = cancel.cancelled() => break,
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
            if incoming.kind == "ConnectionSetupRequest" {
                if let Some(old) = connection.take() {
                    self.tear_down(&old).await;
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
