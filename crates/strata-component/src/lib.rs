//! The component seam: how one crate becomes part of a Strata node.
//!
//! A [`Component`] declares a name (its role and its config section), the listeners it
//! needs, and a start function. The node binds every declared listener the same way, then
//! calls [`Component::start`] with a [`Context`]: the KV API, the metrics registry, the
//! component's own task tracker and cancellation token, its bound listeners and its config
//! section. The component spawns its tasks on that tracker and returns the routes it mounts on
//! the node's client API ([`Started`]). At shutdown the node stops components in reverse order
//! of start, each by cancelling its token and waiting for its tracker with a deadline.
//!
//! A component never depends on the node or on another component. What one component offers
//! another (the Nacos API serves the registry and the config center) passes through
//! [`Context::provide`] and [`Context::get`], in the order the node lists components.

pub mod cork;
pub mod drain;

use axum::Router;
use serde::de::DeserializeOwned;
use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use strata_store::{BoxFuture, KvApi};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The HTTP/2 connection window every HTTP/2 server of a node advertises (8 MiB; the
/// protocol's default is 64 KiB). Besides throughput, it decides how many small DATA frames a
/// client may have in flight before they are read: the `h2` crate counts the framing overhead
/// of small frames that are not a stream's last against a budget of half the connection window,
/// and closes the connection (GOAWAY `ENHANCE_YOUR_CALM`, "too_many_data_frames") when a burst
/// exceeds it. A watch create or a lease keep-alive is such a frame: with the default window, a
/// client that opened a few thousand etcd watches at once over one connection lost all of them
/// after about 4,400 (`strata-bench etcd-watch --watchers 20000`). 8 MiB admits about 40,000
/// unread small frames per connection; memory stays bounded by what a client actually sends
/// before the server reads it, as with grpc-go's windows, which grow to 16 MiB.
pub const HTTP2_CONNECTION_WINDOW: u32 = 8 << 20;

/// How a listener is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One TCP listener.
    Tcp,
    /// A TCP listener and a UDP socket on the same port (DNS).
    TcpAndUdp,
}

/// A listener a component declares. It is enabled when the node's configuration gives it an
/// address (`[listen] NAME = "HOST:PORT"`, `--listen NAME=HOST:PORT`, or a legacy
/// `NAME_addr` key or `--NAME-addr` flag).
#[derive(Debug, Clone, Copy)]
pub struct ListenerSpec {
    /// The listener's name: the key in `[listen]` and `addrs.json`, and the value of the
    /// `strata-listener` header on HTTP responses.
    pub name: &'static str,
    /// What it serves, for logs and `strata dev`'s banner.
    pub about: &'static str,
    /// TCP, or TCP and UDP.
    pub transport: Transport,
}

/// A bound listener.
#[derive(Debug)]
pub struct Bound {
    /// The TCP listener.
    pub tcp: TcpListener,
    /// The UDP socket on the same port, for [`Transport::TcpAndUdp`].
    pub udp: Option<UdpSocket>,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// Values components offer each other, by type.
#[derive(Default, Clone)]
pub struct Provided {
    values: Arc<Mutex<BTreeMap<TypeIdKey, Arc<dyn Any + Send + Sync>>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct TypeIdKey(TypeId);

/// What the node hands a component at start.
pub struct Context {
    /// This node's id.
    pub node_id: u64,
    /// The replicated KV store.
    pub kv: Arc<dyn KvApi>,
    /// Where the component registers its Prometheus metrics (served at the API's `/metrics`).
    pub metrics: prometheus::Registry,
    /// The component's own tasks; the node waits for them at shutdown.
    pub tracker: TaskTracker,
    /// Cancelled when the node stops this component.
    pub cancel: CancellationToken,
    /// The node's limit for one client request, in bytes (`kv.max_request_bytes`).
    pub max_request_bytes: usize,
    /// The node's data folder, for components that keep files of their own.
    pub data_dir: std::path::PathBuf,
    /// Access control: the node's gate (who is asking, may they) and the auth records' API.
    /// Every interface a component serves resolves its callers through it.
    pub auth: strata_auth::Auth,
    /// TLS for the client listeners (`[tls]`), or `None` for plain TCP.
    pub tls: Option<Arc<strata_tls::ServerTls>>,
    /// This node's client API as the cluster reaches it: `http://`, or `https://` with
    /// `[tls]`, and the address the node advertises. It is bound before components start and
    /// serves once they all have.
    pub api_url: String,
    /// The components this node runs, by name, in start order (this one included).
    pub components: Arc<[&'static str]>,
    /// Calls to the other members' peer listeners, where their [`Started::peer_routes`] are.
    pub peers: PeerHttp,
    section: Option<toml::Value>,
    listeners: BTreeMap<&'static str, Bound>,
    provided: Provided,
}

/// Why a component could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

impl From<prometheus::Error> for StartError {
    fn from(e: prometheus::Error) -> Self {
        StartError(format!("metrics: {e}"))
    }
}

impl From<String> for StartError {
    fn from(message: String) -> Self {
        StartError(message)
    }
}

/// What a started component gives back to the node.
#[derive(Default)]
pub struct Started {
    /// Routes mounted on the node's client API listener (next to `/v1/kv/...`).
    pub api_routes: Option<Router>,
    /// Routes mounted on the node's peer listener (the raft address), under
    /// `/peer/<component>/`: only members reach them (mutual TLS with `[peer_tls]`, loopback
    /// without), so they take no credentials. Other members call them through
    /// [`Context::peers`].
    pub peer_routes: Option<Router>,
}

/// How a component calls another member's peer listener (its `raft_addr`): plain HTTP, or
/// HTTPS with the node's peer certificate when the cluster has `[peer_tls]`. Cheap to clone.
#[derive(Clone)]
pub struct PeerHttp(Arc<PostFn>);

/// Builds a POST to `(raft_addr, path)`.
type PostFn = dyn Fn(&str, &str) -> reqwest::RequestBuilder + Send + Sync;

impl PeerHttp {
    /// Requests built by `post(raft_addr, path)`.
    pub fn new(
        post: impl Fn(&str, &str) -> reqwest::RequestBuilder + Send + Sync + 'static,
    ) -> PeerHttp {
        PeerHttp(Arc::new(post))
    }

    /// Plain HTTP with a default client, for tests and single-process use.
    pub fn plain() -> PeerHttp {
        let client = strata_tls::http_client_builder()
            .build()
            .expect("a plain reqwest client always builds");
        PeerHttp::new(move |addr, path| client.post(format!("http://{addr}{path}")))
    }

    /// A POST to `path` on the peer listener at `raft_addr`.
    pub fn post(&self, raft_addr: &str, path: &str) -> reqwest::RequestBuilder {
        (self.0)(raft_addr, path)
    }
}

impl std::fmt::Debug for PeerHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerHttp")
    }
}

/// One part of a node: the etcd API, the registry, the config center, ...
pub trait Component: Send + Sync + 'static {
    /// The component's name: its role in `roles = [...]` and its config section `[NAME]`.
    fn name(&self) -> &'static str;

    /// The listeners it may serve; each is bound only when configured.
    fn listeners(&self) -> &'static [ListenerSpec] {
        &[]
    }

    /// Checks the component's config section before anything starts (`None`: the section
    /// is absent). The default accepts only an absent section.
    fn check_config(&self, section: Option<&toml::Value>) -> Result<(), String> {
        match section {
            None => Ok(()),
            Some(_) => Err(format!("[{}] takes no settings", self.name())),
        }
    }

    /// The section's defaults as commented TOML, for `strata server --sample-config`.
    fn sample_config(&self) -> Option<String> {
        None
    }

    /// Starts the component: spawns its tasks on `ctx.tracker`, serves its listeners, and
    /// returns the routes it mounts on the client API.
    fn start(&self, ctx: Context) -> BoxFuture<'static, Result<Started, StartError>>;
}

/// Parses a component's config section into its settings type (`None`: the defaults).
pub fn parse_section<T: DeserializeOwned + Default>(
    name: &str,
    section: Option<&toml::Value>,
) -> Result<T, String> {
    match section {
        None => Ok(T::default()),
        Some(value) => value
            .clone()
            .try_into()
            .map_err(|e| format!("[{name}]: {}", e.to_string().trim().replace('\n', " "))),
    }
}

impl Context {
    /// A context for one component; the node fills it.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: u64,
        kv: Arc<dyn KvApi>,
        metrics: prometheus::Registry,
        max_request_bytes: usize,
        data_dir: std::path::PathBuf,
        auth: strata_auth::Auth,
        tls: Option<Arc<strata_tls::ServerTls>>,
        api_url: String,
        components: Arc<[&'static str]>,
        peers: PeerHttp,
        section: Option<toml::Value>,
        listeners: BTreeMap<&'static str, Bound>,
        provided: Provided,
    ) -> Context {
        Context {
            node_id,
            kv,
            metrics,
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            max_request_bytes,
            data_dir,
            auth,
            tls,
            api_url,
            components,
            peers,
            section,
            listeners,
            provided,
        }
    }

    /// The component's settings from its config section (checked by
    /// [`Component::check_config`] before start).
    pub fn settings<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T, StartError> {
        parse_section(name, self.section.as_ref()).map_err(StartError)
    }

    /// Takes the bound listener `name`, if it was configured.
    pub fn take_listener(&mut self, name: &str) -> Option<Bound> {
        self.listeners.remove(name)
    }

    /// Serves `router` on the listener `name` until the component is stopped. Every response
    /// carries a `strata-listener: NAME` header, so a client pointed at the wrong port can say
    /// which one it reached.
    pub fn serve_http(&self, name: &'static str, tcp: TcpListener, router: Router) {
        serve_http(
            &self.tracker,
            &self.cancel,
            name,
            tcp,
            router,
            self.tls.clone(),
        );
    }

    /// Offers `value` to components started after this one.
    pub fn provide<T: Any + Send + Sync>(&self, value: Arc<T>) {
        self.provided
            .values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(TypeIdKey(TypeId::of::<T>()), value);
    }

    /// A value an earlier component offered, if it runs on this node.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let value = self
            .provided
            .values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&TypeIdKey(TypeId::of::<T>()))
            .cloned()?;
        value.downcast::<T>().ok()
    }
}

/// Serves `router` on `tcp` until `cancel`, as a task on `tracker`, with the
/// `strata-listener: NAME` header on every response; over TLS when `tls` is given.
pub fn serve_http(
    tracker: &TaskTracker,
    cancel: &CancellationToken,
    name: &'static str,
    tcp: TcpListener,
    router: Router,
    tls: Option<Arc<strata_tls::ServerTls>>,
) {
    let router = router
        .layer(axum::middleware::map_response(
            move |mut response: axum::response::Response| async move {
                response.headers_mut().insert(
                    "strata-listener",
                    axum::http::HeaderValue::from_static(name),
                );
                response
            },
        ))
        // A body a handler leaves unread is read to its end after the answer (see `drain`).
        .layer(axum::middleware::map_request(
            |request: axum::extract::Request| async move {
                request.map(|body| axum::body::Body::new(drain::Drained::new(body)))
            },
        ));
    if let Some(tls) = tls {
        serve_https(tracker, cancel, name, tcp, router, tls);
        return;
    }
    let token = cancel.clone();
    tracker.spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        // Answers (and the raft listener's append streams) go out at once, not after Nagle's
        // wait for the previous segment's acknowledgement.
        let tcp = axum::serve::ListenerExt::tap_io(tcp, |stream: &mut tokio::net::TcpStream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "set TCP_NODELAY");
            }
        });
        let result = axum::serve(tcp, service)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::warn!(listener = name, error = %e, "listener stopped with an error");
        }
    });
}

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// [`serve_http`] over TLS: each connection's handshake, then HTTP/1.1 or HTTP/2 (by ALPN),
/// with the client's address and its certificate's name in every request's extensions.
fn serve_https(
    tracker: &TaskTracker,
    cancel: &CancellationToken,
    name: &'static str,
    tcp: TcpListener,
    router: Router,
    tls: Arc<strata_tls::ServerTls>,
) {
    use tower::ServiceExt;
    let token = cancel.clone();
    let connections = tracker.clone();
    tracker.spawn(async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let (stream, addr) = tokio::select! {
                () = token.cancelled() => break,
                accepted = tcp.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(listener = name, error = %e, "accept failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let acceptor = tls.acceptor();
            let router = router.clone();
            let watcher = graceful.watcher();
            // Boxed: the handshake and hyper's connection make a future of several KB, which a
            // task would otherwise move several times as it is spawned and finishes.
            connections.spawn(Box::pin(async move {
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(listener = name, client = %addr, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let certified = strata_auth::CertificateName(strata_tls::peer_name(stream.get_ref().1));
                let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(addr));
                    request.extensions_mut().insert(certified.clone());
                    router.clone().oneshot(request.map(axum::body::Body::new))
                });
                let mut builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                builder
                    .http2()
                    .initial_connection_window_size(HTTP2_CONNECTION_WINDOW);
                // HTTP/2 answers are written in batches (see `cork`).
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                let stream = cork::Cork::new(stream, h2);
                let connection = builder
                    .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service);
                if let Err(e) = watcher.watch(connection.into_owned()).await {
                    tracing::debug!(listener = name, client = %addr, error = %e, "connection ended with an error");
                }
            }));
        }
        graceful.shutdown().await;
    });
}
