//! The entry points: [`routes`] (the services, to mount on any tonic server) and [`serve`]
//! (a complete HTTP/2 gRPC server on a listener).

use crate::auth::AuthService;
use crate::cluster::ClusterService;
use crate::context::Context;
use crate::election::ElectionService;
use crate::kv::KvService;
use crate::lease::LeaseService;
use crate::lock::LockService;
use crate::maintenance::MaintenanceService;
use crate::oversize::EtcdCodes;
use crate::pb::{etcdserverpb, v3electionpb, v3lockpb};
use crate::watch::WatchService;
use futures::stream::{self, Stream};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use strata_store::KvApi;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::TcpConnectInfo;
use tonic::transport::Server;

/// How far past the request limit a message may be and still be decoded, so that a request
/// just over the limit gets etcd's "request is too large" rather than a transport error.
/// etcd allows the same margin (`grpcOverheadBytes`) on top of `--max-request-bytes`.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// How long the accept loop pauses after a failed accept (for example when out of file
/// descriptors), instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// HTTP/2 keep-alive pings to idle clients, as etcd's `--grpc-keepalive-interval` default:
/// they detect clients that vanished without closing their streams.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2 * 60 * 60);

/// How long a keep-alive ping may go unanswered (etcd's `--grpc-keepalive-timeout`).
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Why [`serve`] failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The HTTP/2 server failed.
    #[error("serve the etcd gRPC API")]
    Transport(#[from] tonic::transport::Error),
}

/// Returns every etcd service (KV, Watch, Lease, Cluster, Maintenance, Lock, Election) over
/// `backend`, refusing requests larger than `max_message_bytes` with etcd's "request is too
/// large".
///
/// Streams served through these routes end only when their client leaves; [`serve`] also
/// ends them at shutdown.
pub fn routes(backend: Arc<dyn KvApi>, max_message_bytes: usize) -> Routes {
    let ctx = Context {
        backend,
        max_request_bytes: max_message_bytes,
        stop: CancellationToken::new(),
        auth: None,
    };
    build_routes(ctx)
}

/// `routes` plus etcd's JSON gateway (`POST /v3/...`). A request for no route gets gRPC's
/// "unimplemented" when it is gRPC, else a 404 that names this listener (`strata-listener:
/// grpc`), so the CLI pointed here can say where it is.
fn with_gateway(mut routes: Routes, ctx: &Context) -> Routes {
    let gateway = crate::gateway::router(ctx);
    let router = std::mem::take(routes.axum_router_mut());
    *routes.axum_router_mut() = router.merge(gateway).fallback(crate::gateway::fallback);
    routes
}

fn build_routes(ctx: Context) -> Routes {
    let decode_limit = ctx.max_request_bytes.saturating_add(GRPC_OVERHEAD_BYTES);
    let mut builder = Routes::builder();
    if let Some(auth) = ctx.auth.clone() {
        builder.add_service(EtcdCodes::new(
            etcdserverpb::auth_server::AuthServer::new(AuthService::new(ctx.clone(), auth))
                .max_decoding_message_size(decode_limit),
        ));
    }
    builder
        .add_service(EtcdCodes::new(
            etcdserverpb::kv_server::KvServer::new(KvService::new(ctx.clone()))
                .max_decoding_message_size(decode_limit),
        ))
        .add_service(EtcdCodes::new(
            etcdserverpb::watch_server::WatchServer::new(WatchService::new(ctx.clone()))
                .max_decoding_message_size(decode_limit),
        ))
        .add_service(EtcdCodes::new(
            etcdserverpb::lease_server::LeaseServer::new(LeaseService::new(ctx.clone()))
                .max_decoding_message_size(decode_limit),
        ))
        .add_service(EtcdCodes::new(
            etcdserverpb::cluster_server::ClusterServer::new(ClusterService::new(ctx.clone()))
                .max_decoding_message_size(decode_limit),
        ))
        .add_service(EtcdCodes::new(
            etcdserverpb::maintenance_server::MaintenanceServer::new(MaintenanceService::new(
                ctx.clone(),
            ))
            .max_decoding_message_size(decode_limit),
        ))
        .add_service(EtcdCodes::new(
            v3lockpb::lock_server::LockServer::new(LockService::new(ctx.clone()))
                .max_decoding_message_size(decode_limit),
        ))
        .add_service(EtcdCodes::new(
            v3electionpb::election_server::ElectionServer::new(ElectionService::new(ctx))
                .max_decoding_message_size(decode_limit),
        ));
    builder.routes()
}

/// Serves the etcd v3 API on `listener` (gRPC over HTTP/2 with prior knowledge, which is
/// what gRPC clients speak) until `shutdown` completes. With `auth`, the Auth service is
/// served too and every request is checked against the caller's grants.
///
/// At shutdown the listener closes, open watch, keep-alive and observe streams end with
/// etcd's "server stopped" (clients reconnect elsewhere and resume), and the call returns
/// once in-flight unary requests have finished.
pub async fn serve(
    listener: TcpListener,
    backend: Arc<dyn KvApi>,
    max_message_bytes: usize,
    auth: Option<strata_auth::Auth>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    serve_tls(listener, backend, max_message_bytes, auth, None, shutdown).await
}

/// [`serve`] over TLS when `tls` is given (its ALPN should offer `h2`): each connection's
/// handshake runs on its own task, and a verified client certificate's name is the user when
/// a request carries no token (etcd's `--client-cert-auth`).
pub async fn serve_tls(
    listener: TcpListener,
    backend: Arc<dyn KvApi>,
    max_message_bytes: usize,
    auth: Option<strata_auth::Auth>,
    tls: Option<Arc<strata_tls::ServerTls>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let stop = CancellationToken::new();
    let ctx = Context {
        backend,
        max_request_bytes: max_message_bytes,
        stop: stop.clone(),
        auth,
    };
    let signal = async move {
        shutdown.await;
        stop.cancel();
    };
    let server = Server::builder()
        // etcd lets one connection carry any number of streams (a client may open a
        // watch stream per key); per-request work is bounded by the backend.
        .max_concurrent_streams(u32::MAX)
        .initial_connection_window_size(strata_component::HTTP2_CONNECTION_WINDOW)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        // The JSON gateway answers HTTP/1.1 clients (curl, scripts) on the same port.
        .accept_http1(true)
        .add_routes(with_gateway(build_routes(ctx.clone()), &ctx));
    match tls {
        None => {
            server
                .serve_with_incoming_shutdown(corked(accept(listener)), signal)
                .await?
        }
        Some(tls) => {
            server
                .serve_with_incoming_shutdown(accept_tls(listener, tls), signal)
                .await?
        }
    }
    Ok(())
}

/// What a TLS connection tells a request: the client's address and its certificate's name.
#[derive(Debug, Clone)]
pub struct TlsConnectInfo {
    /// The client's address.
    pub remote: Option<std::net::SocketAddr>,
    /// The name in its verified certificate, if it sent one.
    pub certificate: Option<String>,
}

/// A connection as tonic serves it: its stream, whose HTTP/2 answers are written in batches
/// ([`Cork`](strata_component::cork::Cork)), and what it tells a request (`info`).
pub struct Connection<S, I> {
    stream: strata_component::cork::Cork<S>,
    info: I,
}

impl<S, I> Connection<S, I> {
    fn new(stream: S, info: I) -> Self {
        Connection {
            stream: strata_component::cork::Cork::new(stream, true),
            info,
        }
    }
}

/// A TLS connection as tonic serves it.
pub type TlsConnection = Connection<tokio_rustls::server::TlsStream<TcpStream>, TlsConnectInfo>;

impl<S, I> tonic::transport::server::Connected for Connection<S, I>
where
    I: Clone + Send + Sync + 'static,
{
    type ConnectInfo = I;

    fn connect_info(&self) -> I {
        self.info.clone()
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin, I: Unpin> tokio::io::AsyncRead
    for Connection<S, I>
{
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin, I: Unpin> tokio::io::AsyncWrite
    for Connection<S, I>
{
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections and runs each handshake on a task of its own (a slow client never holds
/// up the others), yielding the finished ones.
fn accept_tls(
    listener: TcpListener,
    tls: Arc<strata_tls::ServerTls>,
) -> impl Stream<Item = std::io::Result<TlsConnection>> + Send {
    let (ready, connections) = tokio::sync::mpsc::channel::<std::io::Result<TlsConnection>>(64);
    tokio::spawn(async move {
        let raw = accept(listener);
        tokio::pin!(raw);
        loop {
            // Stop accepting (and release the port) once tonic drops the connection stream.
            let tcp = tokio::select! {
                () = ready.closed() => return,
                next = futures::StreamExt::next(&mut raw) => match next {
                    Some(Ok(tcp)) => tcp,
                    _ => return,
                },
            };
            let acceptor = tls.acceptor();
            let ready = ready.clone();
            tokio::spawn(async move {
                let remote = tcp.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let certificate = strata_tls::peer_name(stream.get_ref().1);
                        let info = TlsConnectInfo {
                            remote,
                            certificate,
                        };
                        let _ = ready.send(Ok(Connection::new(stream, info))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(connections)
}

/// Plain connections wrapped as [`Connection`]s, telling a request what tonic tells it of a
/// TCP connection.
fn corked(
    accepted: impl Stream<Item = std::io::Result<TcpStream>> + Send,
) -> impl Stream<Item = std::io::Result<Connection<TcpStream, TcpConnectInfo>>> + Send {
    futures::StreamExt::map(accepted, |accepted| {
        accepted.map(|tcp| {
            let info = tonic::transport::server::Connected::connect_info(&tcp);
            Connection::new(tcp, info)
        })
    })
}

/// Accepts connections forever, with `TCP_NODELAY` (replies are small frames that must not
/// wait for Nagle's algorithm) and a pause after failed accepts.
fn accept(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> + Send {
    stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((connection, _peer)) => {
                    if let Err(e) = connection.set_nodelay(true) {
                        tracing::debug!(error = %e, "set TCP_NODELAY on a gRPC connection");
                    }
                    return Some((Ok(connection), listener));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept a gRPC connection failed; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    })
}
