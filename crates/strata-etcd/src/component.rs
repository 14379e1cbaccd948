//! The etcd v3 API as a node component: the `grpc` listener.

use strata_component::{Component, Context, ListenerSpec, StartError, Started, Transport};
use strata_store::BoxFuture;

const LISTENERS: &[ListenerSpec] = &[ListenerSpec {
    name: "grpc",
    about: "the etcd v3 gRPC API",
    transport: Transport::Tcp,
}];

/// Serves etcd's gRPC API (etcdctl, etcd client libraries) on the `grpc` listener.
pub struct EtcdComponent;

impl Component for EtcdComponent {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn listeners(&self) -> &'static [ListenerSpec] {
        LISTENERS
    }

    fn start(&self, mut ctx: Context) -> BoxFuture<'static, Result<Started, StartError>> {
        Box::pin(async move {
            if let Some(bound) = ctx.take_listener("grpc") {
                tracing::info!(node_id = ctx.node_id, addr = %bound.addr, "serving the etcd v3 gRPC API");
                let kv = ctx.kv.clone();
                let max = ctx.max_request_bytes;
                let stop = ctx.cancel.clone();
                let auth = ctx.auth.clone();
                // gRPC speaks HTTP/2; the JSON gateway also HTTP/1.1.
                let tls = match &ctx.tls {
                    Some(tls) => Some(
                        tls.with_alpn(&[b"h2".as_slice(), b"http/1.1".as_slice()])
                            .map_err(|e| StartError(format!("[tls]: {e}")))?,
                    ),
                    None => None,
                };
                if let Some(tls) = &tls {
                    let stop = ctx.cancel.clone();
                    ctx.tracker.spawn(
                        tls.clone()
                            .watch(std::time::Duration::from_secs(2), async move {
                                stop.cancelled().await
                            }),
                    );
                }
                ctx.tracker.spawn(async move {
                    let shutdown = async move { stop.cancelled().await };
                    if let Err(e) =
                        crate::server::serve_tls(bound.tcp, kv, max, Some(auth), tls, shutdown)
                            .await
                    {
                        tracing::warn!(error = %e, "gRPC listener stopped with an error");
                    }
                });
            }
            Ok(Started::default())
        })
    }
}
