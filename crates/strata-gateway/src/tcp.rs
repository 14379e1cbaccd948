//! TCP (L4) listeners: raw connections balanced over an upstream group.
//!
//! The table's `[[tcp]]` entries are bound by the gateway itself when a table is installed; one
//! whose name and address did not change keeps its socket (and its connections) across table
//! changes, and each new connection reads the upstream group from the table in force when it
//! arrives. A member that refuses is skipped for the next one.

use crate::proxy::Gateway;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A bound (or failed) TCP listener.
#[derive(Debug)]
pub struct TcpState {
    /// `HOST:PORT` as configured.
    pub listen: String,
    /// Where it listens, once bound.
    pub bound: Option<SocketAddr>,
    /// Why it does not listen, if it does not.
    pub problem: Option<String>,
    /// Connections open now.
    pub active: Arc<AtomicU64>,
    /// Connections accepted, all time.
    pub accepted: Arc<AtomicU64>,
    stop: CancellationToken,
}

/// The TCP listeners of one gateway, by name.
#[derive(Debug, Default)]
pub struct TcpListeners {
    by_name: Mutex<BTreeMap<String, TcpState>>,
}

/// What `GET /v1/gateway/tcp` shows of one listener.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TcpView {
    /// Its name.
    pub name: String,
    /// As configured.
    pub listen: String,
    /// Where it listens.
    pub bound: Option<String>,
    /// Connections open now.
    pub active: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Why it does not listen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl TcpListeners {
    /// Makes the running listeners those of `wanted` (name to address): keeps unchanged ones,
    /// stops removed ones, binds new ones.
    pub fn reconcile(
        &self,
        wanted: &BTreeMap<String, String>,
        gateway: &Arc<Gateway>,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) {
        let mut running = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|name, state| {
            let keep = wanted.get(name) == Some(&state.listen) && state.problem.is_none();
            if !keep {
                state.stop.cancel();
            }
            keep
        });
        for (name, listen) in wanted {
            if running.contains_key(name) {
                continue;
            }
            let stop = cancel.child_token();
            let active = Arc::new(AtomicU64::new(0));
            let accepted = Arc::new(AtomicU64::new(0));
            let (bound, problem) = match bind(listen) {
                Ok(listener) => {
                    let addr = listener.local_addr().ok();
                    tracing::info!(tcp = %name, addr = ?addr, "TCP listener bound");
                    tracker.spawn(serve(
                        name.clone(),
                        listener,
                        gateway.clone(),
                        tracker.clone(),
                        stop.clone(),
                        active.clone(),
                        accepted.clone(),
                    ));
                    (addr, None)
                }
                Err(e) => {
                    tracing::warn!(tcp = %name, %listen, error = %e, "cannot bind the TCP listener");
                    (None, Some(format!("cannot listen on {listen}: {e}")))
                }
            };
            running.insert(
                name.clone(),
                TcpState {
                    listen: listen.clone(),
                    bound,
                    problem,
                    active,
                    accepted,
                    stop,
                },
            );
        }
    }

    /// Every listener as the admin API shows it.
    pub fn views(&self) -> Vec<TcpView> {
        let running = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        running
            .iter()
            .map(|(name, s)| TcpView {
                name: name.clone(),
                listen: s.listen.clone(),
                bound: s.bound.map(|a| a.to_string()),
                active: s.active.load(Ordering::Relaxed),
                accepted: s.accepted.load(Ordering::Relaxed),
                problem: s.problem.clone(),
            })
            .collect()
    }
}

fn bind(listen: &str) -> std::io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

async fn serve(
    name: String,
    listener: TcpListener,
    gateway: Arc<Gateway>,
    tracker: TaskTracker,
    stop: CancellationToken,
    active: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
) {
    loop {
        let Some((client, peer)) = crate::proxy::accept(&listener, &name, &stop).await else {
            return;
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        let _ = client.set_nodelay(true);
        let (gateway, name, stop, active) =
            (gateway.clone(), name.clone(), stop.clone(), active.clone());
        tracker.spawn(async move {
            active.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                () = stop.cancelled() => {}
                () = relay(&gateway, &name, client, peer) => {}
            }
            active.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Connects `client` to a member of the listener's upstream and copies bytes both ways.
async fn relay(gateway: &Gateway, name: &str, mut client: TcpStream, mut peer: SocketAddr) {
    let live = gateway.live();
    let Some((upstream, proxy_protocol)) = live
        .compiled
        .source
        .tcp
        .iter()
        .find(|t| t.name == name)
        .map(|t| (t.upstream.clone(), t.proxy_protocol))
    else {
        return;
    };
    if proxy_protocol {
        match crate::proxy_protocol::read_header(&mut client, crate::proxy::HEADER_TIMEOUT).await {
            Ok(crate::proxy_protocol::Header::Proxied { source, .. }) => peer = source,
            Ok(crate::proxy_protocol::Header::Local) => {}
            Err(error) => {
                tracing::debug!(tcp = %name, %peer, %error, "connection without a valid PROXY header closed");
                return;
            }
        }
    }
    let Some(group) = live.groups.get(&upstream) else {
        return;
    };
    let members = group.members();
    let key = peer.ip().to_string();
    let mut tried = Vec::new();
    while tried.len() < members.endpoints.len() {
        let Some(index) = members.pick(Some(key.as_bytes()), &tried) else {
            return;
        };
        tried.push(index);
        let endpoint = &members.endpoints[index];
        endpoint.requests.fetch_add(1, Ordering::Relaxed);
        let connect =
            tokio::time::timeout(group.connect_timeout, TcpStream::connect(&endpoint.address))
                .await;
        match connect {
            Ok(Ok(mut server)) => {
                endpoint.connected();
                let _ = server.set_nodelay(true);
                endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            Ok(Err(_)) | Err(_) => {
                endpoint.failures.fetch_add(1, Ordering::Relaxed);
                endpoint.eject();
                gateway
                    .metrics
                    .upstream_failures
                    .with_label_values(&[upstream.as_str(), "connect"])
                    .inc();
            }
        }
    }
    tracing::debug!(tcp = %name, %upstream, "no member accepted the connection");
}
