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
    Server::builder()
        // etcd lets one connection carry any number of streams (a client may open a
        // watch stream per key); per-request work is bounded by the backend.
        .max_concurrent_streams(u32::MAX)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_routes(build_routes(ctx))
        .serve_with_incoming_shutdown(accept(listener), signal)
        .await?;
    Ok(())
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
