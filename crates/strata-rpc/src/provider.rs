//! The provider: serves tonic services (and plain HTTP routes) and keeps itself registered.
//!
//! [`Provider::serve`] adds `grpc.health.v1`, server reflection (when given the services'
//! descriptors) and `/metrics`, registers the instance in the Strata registry as an
//! ephemeral instance on a lease kept by heartbeats (re-registering if the registry forgot
//! it), and puts the call context of every call it serves (deadline and trace) where
//! consumers called from the handler find it. On shutdown it deregisters first, tells health
//! checkers it is not serving, waits `deregister_delay` for consumers to see the change, then
//! stops accepting calls and waits up to `drain_timeout` for the ones in flight.

use crate::context::{parse_grpc_timeout, CallContext, TraceParent, GRPC_TIMEOUT};
use crate::metrics::METRICS;
use crate::service_config::code_name;
use crate::trace::{self, CallSpan, SpanKind};
use crate::watched::Watched;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use strata_api::registry::{Registered, Registration};
use strata_api::units::HumanDuration;
use strata_client::{Client, ClientError, Method};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::service::Routes;

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The registry refused or could not be reached for the first registration.
    #[error("registering {service}/{id}: {error}")]
    Register {
        /// The service.
        service: String,
        /// The instance.
        id: String,
        /// Why.
        error: ClientError,
    },
    /// The listener's address could not be read.
    #[error("listener: {0}")]
    Listener(std::io::Error),
    /// Reflection descriptors that do not parse.
    #[error("reflection descriptors: {0}")]
    Reflection(String),
    /// The server stopped with an error.
    #[error("server: {0}")]
    Server(#[from] tonic::transport::Error),
}

/// How long shutdown waits for the registry to confirm the deregistration.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(3);

/// What runs once the instance is registered.
type OnRegistered = Box<dyn FnOnce(&Registered) + Send>;

/// A provider of one service.
pub struct Provider {
    client: Arc<Client>,
    namespace: Option<String>,
    service: String,
    id: Option<String>,
    address: Option<String>,
    tags: Vec<String>,
    meta: BTreeMap<String, String>,
    weight: Option<f64>,
    ttl: Duration,
    descriptors: Vec<Vec<u8>>,
    drain_timeout: Duration,
    deregister_delay: Duration,
    on_registered: Option<OnRegistered>,
}

impl Provider {
    /// A provider of `service`, registered through `client` (any node of the cluster). Unless
    /// the process says otherwise, its spans go to that node as service `service`
    /// ([`crate::trace`]).
    pub fn new(client: Client, service: &str) -> Provider {
        trace::default_to_node(&client, Some(service));
        Provider {
            client: Arc::new(client),
            namespace: None,
            service: service.into(),
            id: None,
            address: None,
            tags: Vec::new(),
            meta: BTreeMap::new(),
            weight: None,
            ttl: Duration::from_secs(10),
            descriptors: Vec::new(),
            drain_timeout: Duration::from_secs(10),
            deregister_delay: Duration::from_secs(1),
            on_registered: None,
        }
    }

    /// The namespace (default `public`).
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The instance id (default `SERVICE-HOST-PORT`).
    pub fn id(mut self, id: &str) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The address consumers dial (default the listener's, or 127.0.0.1 when it listens on
    /// every address).
    pub fn address(mut self, address: &str) -> Self {
        self.address = Some(address.into());
        self
    }

    /// A tag (repeatable).
    pub fn tag(mut self, tag: &str) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// A metadata entry, such as `version=v2` (repeatable).
    pub fn meta(mut self, key: &str, value: &str) -> Self {
        self.meta.insert(key.into(), value.into());
        self
    }

    /// The instance's weight (default 1).
    pub fn weight(mut self, weight: f64) -> Self {
        self.weight = Some(weight);
        self
    }

    /// Consumers give a newly started instance a share that grows from a tenth to all of it
    /// over `window` (slow start), so that caches and JIT warm up under light load.
    pub fn warmup(self, window: Duration) -> Self {
        let text = humantime::format_duration(window).to_string();
        self.meta("warmup", &text)
    }

    /// How long the registry keeps the instance without a heartbeat (default 10 s; a
    /// heartbeat goes out every third of it).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// Serves reflection for the services in this encoded `FileDescriptorSet` (repeatable).
    pub fn reflection(mut self, file_descriptor_set: &[u8]) -> Self {
        self.descriptors.push(file_descriptor_set.to_vec());
        self
    }

    /// How long in-flight calls may take to finish on shutdown (default 10 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// How long to keep serving after deregistering, so that consumers stop picking the
    /// instance before it stops accepting (default 1 s).
    pub fn deregister_delay(mut self, delay: Duration) -> Self {
        self.deregister_delay = delay;
        self
    }

    /// Runs `f` once the instance is registered (and serving).
    pub fn on_registered(mut self, f: impl FnOnce(&Registered) + Send + 'static) -> Self {
        self.on_registered = Some(Box::new(f));
        self
    }

    fn registration(&self, local: SocketAddr) -> Registration {
        let address = self.address.clone().unwrap_or_else(|| {
            if local.ip().is_unspecified() {
                tracing::warn!(%local, "listening on every address; registering 127.0.0.1 (set an address for other hosts)");
                "127.0.0.1".into()
            } else {
                local.ip().to_string()
            }
        });
        let mut meta = self.meta.clone();
        meta.insert("protocol".into(), "grpc".into());
        meta.insert("metrics_port".into(), local.port().to_string());
        meta.insert("metrics_path".into(), "/metrics".into());
        Registration {
            namespace: self.namespace.clone(),
            service: self.service.clone(),
            id: self
                .id
                .clone()
                .unwrap_or_else(|| format!("{}-{}-{}", self.service, address, local.port())),
            address,
            port: u32::from(local.port()),
            tags: self.tags.clone(),
            meta,
            weight: self.weight,
            enabled: None,
            ttl: Some(HumanDuration(self.ttl)),
            check: None,
            status: None,
        }
    }

    /// Serves `routes` on `listener` until `shutdown` completes, registered meanwhile.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        routes: Routes,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ProviderError> {
        let local = listener.local_addr().map_err(ProviderError::Listener)?;
        let registration = self.registration(local);
        let (reporter, health) = tonic_health::server::health_reporter();
        let mut names = vec![String::new()];
        let mut routes = routes.add_service(health);
        if !self.descriptors.is_empty() {
            let mut v1 = tonic_reflection::server::Builder::configure();
            let mut v1alpha = tonic_reflection::server::Builder::configure();
            for set in &self.descriptors {
                v1 = v1.register_encoded_file_descriptor_set(set);
                v1alpha = v1alpha.register_encoded_file_descriptor_set(set);
                names.extend(service_names(set));
            }
            routes = routes
                .add_service(
                    v1.build_v1()
                        .map_err(|e| ProviderError::Reflection(e.to_string()))?,
                )
                .add_service(
                    v1alpha
                        .build_v1alpha()
                        .map_err(|e| ProviderError::Reflection(e.to_string()))?,
                );
        }
        for name in &names {
            reporter
                .set_service_status(name, tonic_health::ServingStatus::Serving)
                .await;
        }
        let router = routes
            .into_axum_router()
            .route("/metrics", axum::routing::get(metrics));
        let drain = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .accept_http1(true)
            .tcp_nodelay(true)
            .layer(tower::layer::layer_fn(|inner| ContextService { inner }))
            .add_routes(Routes::from(router))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                drain.clone().cancelled_owned(),
            );
        let mut server = tokio::spawn(server);

        let instance = self.register(&registration).await?;
        tracing::info!(service = %registration.service, id = %registration.id, address = %local, lease = instance.lease, "serving and registered");
        if let Some(f) = self.on_registered.take() {
            f(&instance);
        }
        let heartbeats = tokio::spawn(heartbeat(
            self.client.clone(),
            registration.clone(),
            self.ttl,
        ));

        let stopped_early = tokio::select! {
            () = shutdown => None,
            result = &mut server => Some(result),
        };
        heartbeats.abort();
        let path = instance_path(&registration);
        let deregistered = tokio::time::timeout(
            DEREGISTER_TIMEOUT,
            self.client
                .call::<(), serde_json::Value>(Method::DELETE, &path, None),
        )
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::Transport(format!(
                "no answer within {DEREGISTER_TIMEOUT:?}"
            )))
        });
        match deregistered {
            Ok(_) => tracing::info!(id = %registration.id, "deregistered"),
            Err(error) => {
                tracing::warn!(id = %registration.id, %error, "deregistering failed; the registry drops the instance when its lease expires")
            }
        }
        if let Some(result) = stopped_early {
            return match result {
                Ok(result) => result.map_err(ProviderError::from),
                Err(join) => Err(ProviderError::Listener(std::io::Error::other(join))),
            };
        }
        for name in &names {
            reporter
                .set_service_status(name, tonic_health::ServingStatus::NotServing)
                .await;
        }
        tokio::time::sleep(self.deregister_delay).await;
        drain.cancel();
        let in_flight = METRICS
            .server_in_flight
            .with_label_values(&[&registration.service]);
        tracing::info!(calls = in_flight.get(), timeout = ?self.drain_timeout, "draining in-flight calls");
        match tokio::time::timeout(self.drain_timeout, &mut server).await {
            Ok(Ok(result)) => result.map_err(ProviderError::from),
            Ok(Err(join)) => Err(ProviderError::Listener(std::io::Error::other(join))),
            Err(_) => {
                tracing::warn!(
                    calls = in_flight.get(),
                    "drain timeout passed; stopping with calls in flight"
                );
                server.abort();
                Ok(())
            }
        }
    }

    async fn register(&self, registration: &Registration) -> Result<Registered, ProviderError> {
        let error = |error| ProviderError::Register {
            service: registration.service.clone(),
            id: registration.id.clone(),
            error,
        };
        match self
            .client
            .post::<_, Registered>("/v1/registry/instances", registration)
            .await
        {
            Ok(registered) => Ok(registered),
            // A previous run with other content (another port): replace it.
            Err(e) if e.code() == Some(strata_proto::error::ErrorCode::AlreadyExists) => {
                self.client
                    .call::<(), serde_json::Value>(
                        Method::DELETE,
                        &instance_path(registration),
                        None,
                    )
                    .await
                    .map_err(error)?;
                self.client
                    .post("/v1/registry/instances", registration)
                    .await
                    .map_err(error)
            }
            Err(e) => Err(error(e)),
        }
    }
}

fn instance_path(registration: &Registration) -> String {
    format!(
        "/v1/registry/services/{}/instances/{}?namespace={}",
        registration.service,
        registration.id,
        registration.namespace.as_deref().unwrap_or("public")
    )
}

/// Heartbeats every third of the TTL; re-registers when the registry no longer has the
/// instance (its lease expired while this process could not reach the cluster).
async fn heartbeat(client: Arc<Client>, registration: Registration, ttl: Duration) {
    let path = format!(
        "/v1/registry/services/{}/instances/{}/heartbeat?namespace={}",
        registration.service,
        registration.id,
        registration.namespace.as_deref().unwrap_or("public")
    );
    let mut failing = false;
    loop {
        tokio::time::sleep(ttl / 3).await;
        let answer = client
            .call::<(), serde_json::Value>(Method::PUT, &path, None)
            .await;
        match answer {
            Ok(_) => {
                METRICS.heartbeats.with_label_values(&["ok"]).inc();
                if failing {
                    tracing::info!(id = %registration.id, "heartbeats reach the registry again");
                    failing = false;
                }
            }
            Err(e) if e.code() == Some(strata_proto::error::ErrorCode::NotFound) => {
                METRICS
                    .heartbeats
                    .with_label_values(&["reregistered"])
                    .inc();
                tracing::warn!(id = %registration.id, "the registry lost the instance (lease expired); registering again");
                if let Err(error) = client
                    .post::<_, Registered>("/v1/registry/instances", &registration)
                    .await
                {
                    tracing::warn!(id = %registration.id, %error, "registering again failed");
                }
            }
            Err(error) => {
                METRICS.heartbeats.with_label_values(&["failed"]).inc();
                if !failing {
                    tracing::warn!(id = %registration.id, %error, "heartbeat failed; retrying");
                    failing = true;
                }
            }
        }
    }
}

async fn metrics() -> String {
    let families = prometheus::default_registry().gather();
    prometheus::TextEncoder::new()
        .encode_to_string(&families)
        .unwrap_or_default()
}

/// The full names of the services in an encoded `FileDescriptorSet`.
fn service_names(set: &[u8]) -> Vec<String> {
    let Ok(set) = <prost_types::FileDescriptorSet as prost::Message>::decode(set) else {
        return Vec::new();
    };
    set.file
        .iter()
        .flat_map(|file| {
            file.service.iter().map(move |service| {
                match file.package.as_deref().filter(|p| !p.is_empty()) {
                    Some(package) => format!("{package}.{}", service.name()),
                    None => service.name().to_string(),
                }
            })
        })
        .collect()
}

/// Wraps every call served: its context for the handler, its server span, its metrics.
#[derive(Clone)]
struct ContextService<S> {
    inner: S,
}

impl<S, ResBody> tower::Service<http::Request<Body>> for ContextService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if !grpc {
            let future = self.inner.call(request);
            return Box::pin(async move { Ok(future.await?.map(Body::new)) });
        }
        let started = Instant::now();
        let wall = SystemTime::now();
        let method = request.uri().path().trim_start_matches('/').to_string();
        let headers = request.headers();
        let parent = TraceParent::from_headers(headers);
        let span = match parent {
            Some(parent) => parent.child(),
            None => TraceParent::root(trace::sample_new()),
        };
        let context = CallContext {
            deadline: headers
                .get(&GRPC_TIMEOUT)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_grpc_timeout)
                .and_then(|t| started.checked_add(t)),
            trace: Some(span),
            trace_state: headers
                .get(&crate::context::TRACESTATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        };
        let peer = request
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|i| i.remote_addr())
            .map(|a| a.to_string());
        let service = method.split('/').next().unwrap_or("").to_string();
        let in_flight = METRICS.server_in_flight.with_label_values(&[&service]);
        in_flight.inc();
        let future = context.scope(self.inner.call(request));
        Box::pin(async move {
            let done = OnDrop(Some(move |code: tonic::Code, message: &str| {
                in_flight.dec();
                METRICS
                    .server_calls
                    .with_label_values(&[&method, code_name(code)])
                    .inc();
                METRICS
                    .server_duration
                    .with_label_values(&[&method])
                    .observe(started.elapsed().as_secs_f64());
                trace::record_call(CallSpan {
                    context: span,
                    parent: parent.map(|p| p.span_id),
                    method,
                    kind: SpanKind::Server,
                    start: wall,
                    duration: started.elapsed(),
                    code,
                    message: message.to_string(),
                    peer,
                    instance: None,
                    retries: 0,
                });
            }));
            // Dropped here when the deadline passes or the caller goes away.
            let response = future.await;
            match response {
                Ok(response) => {
                    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
                        done.fire(status.code(), status.message());
                        return Ok(response.map(Body::new));
                    }
                    let (parts, body) = response.into_parts();
                    Ok(http::Response::from_parts(
                        parts,
                        Watched::wrap(Body::new(body), move |code, message| {
                            done.fire(code, message)
                        }),
                    ))
                }
                Err(error) => {
                    done.fire(tonic::Code::Internal, "the server failed the call");
                    Err(error)
                }
            }
        })
    }
}

/// Runs its function once: when fired, or as `CANCELLED` when dropped unfired.
struct OnDrop<F: FnOnce(tonic::Code, &str)>(Option<F>);

impl<F: FnOnce(tonic::Code, &str)> OnDrop<F> {
    fn fire(mut self, code: tonic::Code, message: &str) {
        if let Some(f) = self.0.take() {
            f(code, message);
        }
    }
}

impl<F: FnOnce(tonic::Code, &str)> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(
                tonic::Code::Cancelled,
                "cancelled: the deadline passed or the caller went away",
            );
        }
    }
}
