//! `strata gateway --config FILE`: the gateway alone, for users who want it without a cluster.
//!
//! FILE is a route table (TOML) with one more section, `[server]`: where to listen and the
//! options of the node's `[gateway]` section. Upstream groups are static (there is no registry
//! to follow); the table is re-read when the file changes, as a node's `routes_file` is. The
//! `admin` listener serves `/metrics`, `/health`, and read-only views of the routes and
//! upstreams under `/v1/gateway/`.

use crate::component::{build_gateway, install_file, GatewayConfig, TableView, UpstreamList};
use crate::model::{Table, TableError};
use crate::proxy::Gateway;
use axum::extract::State;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where the HTTP listener goes when `[server]` does not say.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7780";

/// The `[server]` section of a standalone gateway's file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// The HTTP listener (HTTP/1.1 and h2c), default 127.0.0.1:7780; port 0 picks a free one.
    #[serde(default)]
    pub listen: Option<String>,
    /// The HTTPS listener (certificates from the table's `[[certificates]]`); unset: none.
    #[serde(default)]
    pub listen_tls: Option<String>,
    /// `/metrics`, `/health` and read-only `/v1/gateway/` views; unset: none.
    #[serde(default)]
    pub admin: Option<String>,
    /// As the node's `[gateway] trusted_proxies`.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// As the node's `[gateway] access_log`.
    #[serde(default)]
    pub access_log: Option<String>,
    /// As the node's `[gateway] access_log_fields`.
    #[serde(default)]
    pub access_log_fields: Vec<String>,
    /// As the node's `[gateway] proxy_protocol`.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// Splits a standalone file into its `[server]` section and its route table.
pub fn split(text: &str) -> Result<(ServerSection, Table), TableError> {
    let mut document: toml::Table = toml::from_str(text).map_err(|e| {
        TableError(format!(
            "gateway config (TOML): {}",
            e.to_string().trim().replace('\n', " ")
        ))
    })?;
    let server = match document.remove("server") {
        Some(section) => section
            .try_into::<ServerSection>()
            .map_err(|e| TableError(format!("[server]: {}", e.to_string().trim())))?,
        None => ServerSection::default(),
    };
    let table = toml::Value::Table(document)
        .try_into::<Table>()
        .map_err(|e| TableError(format!("route table: {}", e.to_string().trim())))?;
    Ok((server, table))
}

/// A running standalone gateway.
pub struct Standalone {
    /// Bound addresses by listener: `gateway`, `gateway_tls`, `admin`.
    pub addrs: BTreeMap<&'static str, SocketAddr>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Standalone {
    /// Starts the gateway of `file`.
    pub async fn start(file: &Path) -> Result<Standalone, String> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let (server, table) = split(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        if let Some(upstream) = table.upstreams.iter().find(|u| u.service.is_some()) {
            return Err(format!(
                "{}: upstream {:?} follows a registry service, which needs a Strata node; a standalone gateway has static upstreams only",
                file.display(),
                upstream.name
            ));
        }
        let config = GatewayConfig {
            routes_file: Some(file.to_path_buf()),
            trusted_proxies: server.trusted_proxies.clone(),
            access_log: server.access_log.clone(),
            access_log_fields: server.access_log_fields.clone(),
            proxy_protocol: server.proxy_protocol,
            // No node, so no monitor to send spans to; `traceparent` passes through.
            traces: false,
            traces_per_second: 0,
        };
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let registry = prometheus::Registry::new();
        let gateway = build_gateway(&config, &registry, None, &tracker, &cancel)?;
        install_file(&gateway, file, true, &tracker, &cancel)?;
        let mut addrs = BTreeMap::new();
        let listen = server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let tcp = bind("listen", listen).await?;
        addrs.insert(crate::component::LISTENER, local(&tcp)?);
        gateway.serve(crate::component::LISTENER, tcp, None, server.proxy_protocol);
        if let Some(listen_tls) = &server.listen_tls {
            let tcp = bind("listen_tls", listen_tls).await?;
            addrs.insert(crate::component::TLS_LISTENER, local(&tcp)?);
            let tls = crate::sni::server_config(gateway.sni.clone());
            gateway.serve(
                crate::component::TLS_LISTENER,
                tcp,
                Some(tls),
                server.proxy_protocol,
            );
        }
        tracker.spawn(crate::component::watch_certificates(
            gateway.clone(),
            cancel.clone(),
        ));
        if let Some(admin) = &server.admin {
            let tcp = bind("admin", admin).await?;
            addrs.insert("admin", local(&tcp)?);
            let router = admin_router(AdminState {
                gateway,
                registry,
                file: file.to_path_buf(),
            });
            let stop = cancel.clone();
            tracker.spawn(async move {
                let served = axum::serve(tcp, router)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
                if let Err(error) = served {
                    tracing::warn!(%error, "the admin listener failed");
                }
            });
        }
        for (name, addr) in &addrs {
            tracing::info!(listener = name, %addr, "standalone gateway listening");
        }
        Ok(Standalone {
            addrs,
            tracker,
            cancel,
        })
    }

    /// Stops accepting, lets requests in flight finish (up to `grace`), and returns.
    pub async fn shutdown(self, grace: std::time::Duration) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "requests still in flight at the end of the grace period"
            );
        }
    }
}

async fn bind(what: &str, addr: &str) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("[server] {what}: cannot listen on {addr}: {e}"))
}

fn local(tcp: &tokio::net::TcpListener) -> Result<SocketAddr, String> {
    tcp.local_addr().map_err(|e| e.to_string())
}

#[derive(Clone)]
struct AdminState {
    gateway: Arc<Gateway>,
    registry: prometheus::Registry,
    file: PathBuf,
}

fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/gateway/routes", get(routes))
        .route("/v1/gateway/upstreams", get(upstreams))
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut text = String::new();
    match prometheus::TextEncoder::new().encode_utf8(&s.registry.gather(), &mut text) {
        Ok(()) => (
            [(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            text,
        )
            .into_response(),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {e}\n"),
        )
            .into_response(),
    }
}

async fn routes(State(s): State<AdminState>) -> axum::Json<TableView> {
    axum::Json(TableView::of(
        &s.gateway,
        format!("file {}", s.file.display()),
    ))
}

async fn upstreams(State(s): State<AdminState>) -> axum::Json<UpstreamList> {
    let live = s.gateway.live();
    axum::Json(UpstreamList {
        upstreams: live
            .groups
            .values()
            .map(|g| crate::component::upstream_view(g))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_section_is_split_from_the_table() {
        let (server, table) = split(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n[[routes]]\nname = \"r\"\nupstream = \"u\"\n[[upstreams]]\nname = \"u\"\naddresses = [\"127.0.0.1:9\"]\n",
        )
        .unwrap();
        assert_eq!(server.listen.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(table.routes.len(), 1);
        let error = split("[server]\nlisen = \"x\"\n").unwrap_err();
        assert!(error.0.contains("lisen"), "{error}");
        let error = split("[[rotes]]\nname = \"r\"\n").unwrap_err();
        assert!(error.0.contains("rotes"), "{error}");
    }
}
