//! Upstream groups at run time: their members, static or followed in the registry.
//!
//! A registry group runs one task that keeps a blocking query open on its service (passing
//! instances only, with the group's tag and metadata filters); each answer replaces the member
//! set, so a new, drained or failed instance changes where requests go as soon as the registry
//! knows. Counters of a member survive a rebuild while its id and address stay the same.

use crate::balance::{Endpoint, HashOn, Members};
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::model::UpstreamSpec;
use crate::route::DEFAULT_CONNECT_TIMEOUT;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use strata_api::registry::{Instance, Query, RegistryService};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest blocking query on the registry; it returns early on any change.
const REGISTRY_WAIT: Duration = Duration::from_secs(30);
/// Pause after a failed registry query.
const REGISTRY_RETRY: Duration = Duration::from_secs(1);

/// The pooled HTTP client of a group.
pub type HttpClient = hyper_util::client::legacy::Client<Connector, axum::body::Body>;

/// How long an idle pooled connection to a member stays open.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// Opens connections to members and counts them: connect time, connections opened, open now.
#[derive(Clone, Debug)]
pub struct Connector {
    inner: HttpConnector,
    /// Shared: the pooled client clones its connector for every request.
    metrics: Arc<UpstreamMetrics>,
}

/// A connection to a member; the open-connections gauge goes down when it closes.
pub struct Counted {
    io: hyper_util::rt::TokioIo<tokio::net::TcpStream>,
    open: prometheus::IntGauge,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.dec();
    }
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<Counted, Box<dyn std::error::Error + Send + Sync>>> + Send>>;

impl tower_service::Service<hyper::Uri> for Connector {
    type Response = Counted;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let started = std::time::Instant::now();
        let connecting = self.inner.call(uri);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let io = connecting.await?;
            metrics
                .connect_seconds
                .observe(started.elapsed().as_secs_f64());
            metrics.opened.inc();
            metrics.open.inc();
            Ok(Counted {
                io,
                open: metrics.open.clone(),
            })
        })
    }
}

impl hyper::rt::Read for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

fn http_client(
    spec: &UpstreamSpec,
    connect_timeout: Duration,
    metrics: UpstreamMetrics,
) -> HttpClient {
    let mut inner = HttpConnector::new();
    inner.set_connect_timeout(Some(connect_timeout));
    inner.set_nodelay(true);
    inner.enforce_http(true);
    let connector = Connector {
        inner,
        metrics: Arc::new(metrics),
    };
    let mut builder =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
    builder
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .timer(hyper_util::rt::TokioTimer::new());
    if spec.protocol == crate::model::Protocol::H2c {
        builder.http2_only(true);
    }
    builder.build(connector)
}

/// Retries a group may make, as Finagle's and tower's budgets count them: each request adds a
/// fifth of a retry, and ten retries a second are always allowed, up to ten seconds' worth; a
/// retry spends one. So retries add at most about 20% to the load a failing group gets.
#[derive(Debug)]
pub struct RetryBudget {
    state: Mutex<(f64, std::time::Instant)>,
}

/// Share of a retry each request earns.
const RETRY_RATIO: f64 = 0.2;
/// Retries a second always allowed.
const RETRY_FLOOR_PER_SEC: f64 = 10.0;
/// Most retries saved up.
const RETRY_CAP: f64 = 100.0;

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            state: Mutex::new((RETRY_FLOOR_PER_SEC, std::time::Instant::now())),
        }
    }
}

impl RetryBudget {
    /// Counts a first attempt.
    pub fn deposit(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 = (state.0 + RETRY_RATIO).min(RETRY_CAP);
    }

    /// Takes one retry if the budget has it.
    pub fn withdraw(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let earned = now.duration_since(state.1).as_secs_f64() * RETRY_FLOOR_PER_SEC;
        state.0 = (state.0 + earned).min(RETRY_CAP);
        state.1 = now;
        if state.0 >= 1.0 {
            state.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One upstream group.
#[derive(Debug)]
pub struct Group {
    /// Retries it may still make.
    pub retry_budget: RetryBudget,
    /// The connection pool to its members, shared by every request.
    pub client: HttpClient,
    /// As configured.
    pub spec: UpstreamSpec,
    /// What `ring_hash` hashes.
    pub hash_on: Option<HashOn>,
    /// Connect timeout per member.
    pub connect_timeout: Duration,
    /// Its metric handles.
    pub metrics: UpstreamMetrics,
    members: RwLock<Arc<Members>>,
    /// Why the member set may be stale (registry unreachable), if it may.
    pub problem: Mutex<Option<String>>,
    /// Stops the registry follower when the group leaves the table.
    follower: CancellationToken,
}

impl Group {
    /// The current member set.
    pub fn members(&self) -> Arc<Members> {
        self.members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the member set. Members not in the old set warm up under slow start unless
    /// `initial` (the group's first set).
    fn replace(&self, endpoints: Vec<(String, String, u32)>, initial: bool) {
        let old = self.members();
        let endpoints = endpoints
            .into_iter()
            .map(|(address, id, weight)| {
                old.endpoints
                    .iter()
                    .find(|e| e.address == address && e.id == id && e.weight == weight)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(if initial {
                            Endpoint::new(address, id, weight)
                        } else {
                            Endpoint::joining(address, id, weight)
                        })
                    })
            })
            .collect();
        let slow_start = self.spec.slow_start.map_or(0, |d| d.0.as_millis() as u64);
        *self.members.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(
            Members::with_slow_start(endpoints, self.spec.balance, slow_start),
        );
    }

    /// Cancelled when the group leaves the table (its background tasks end).
    pub fn retired(&self) -> CancellationToken {
        self.follower.clone()
    }

    /// Stops following the registry.
    pub fn retire(&self) {
        self.follower.cancel();
    }
}

/// Builds the groups of a new table, reusing `previous` groups whose spec did not change (so
/// their members, counters and registry followers carry over), and retires the rest.
pub fn build_groups(
    specs: &BTreeMap<String, UpstreamSpec>,
    metrics: &Metrics,
    previous: &BTreeMap<String, Arc<Group>>,
    registry: Option<&Arc<dyn RegistryService>>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> BTreeMap<String, Arc<Group>> {
    let mut groups = BTreeMap::new();
    for (name, spec) in specs {
        if let Some(existing) = previous.get(name).filter(|g| g.spec == *spec) {
            groups.insert(name.clone(), existing.clone());
            continue;
        }
        let connect_timeout = spec
            .connect_timeout
            .map_or(DEFAULT_CONNECT_TIMEOUT, |t| t.0);
        let upstream_metrics = metrics.upstream(name);
        let group = Arc::new(Group {
            retry_budget: RetryBudget::default(),
            client: http_client(spec, connect_timeout, upstream_metrics.clone()),
            metrics: upstream_metrics,
            spec: spec.clone(),
            hash_on: spec.hash_on.as_deref().and_then(|h| HashOn::parse(h).ok()),
            connect_timeout,
            members: RwLock::new(Arc::new(Members::new(Vec::new(), spec.balance))),
            problem: Mutex::new(None),
            follower: cancel.child_token(),
        });
        let statics: Vec<(String, String, u32)> = spec
            .addresses
            .iter()
            .map(|a| (a.clone(), a.clone(), 1))
            .chain(
                spec.endpoints
                    .iter()
                    .map(|e| (e.address.clone(), e.address.clone(), e.weight)),
            )
            .collect();
        // A group that replaces one of the same name starts from its members, so members
        // that stay keep their counters and warmth, and only new ones warm up.
        let predecessor = previous.get(name);
        if let Some(old) = predecessor {
            *group.members.write().unwrap_or_else(|e| e.into_inner()) = old.members();
        }
        let keep = match predecessor {
            // A registry group keeps the old members until its first answer.
            Some(old) if spec.service.is_some() && registry.is_some() => old
                .members()
                .endpoints
                .iter()
                .map(|e| (e.address.clone(), e.id.clone(), e.weight))
                .collect(),
            _ => statics,
        };
        group.replace(keep, predecessor.is_none());
        if let Some(check) = spec.health_check.clone().filter(|_| spec.service.is_none()) {
            tracker.spawn(crate::health::run(
                group.clone(),
                check,
                metrics.upstream_member_healthy.clone(),
            ));
        }
        if let Some(service) = &spec.service {
            match registry {
                Some(registry) => {
                    tracker.spawn(follow(group.clone(), registry.clone(), service.clone()));
                }
                None => {
                    *group.problem.lock().unwrap_or_else(|e| e.into_inner()) = Some(
                        "the registry does not run on this node, so the service cannot be followed"
                            .into(),
                    );
                }
            }
        }
        groups.insert(name.clone(), group);
    }
    for (name, group) in previous {
        if !groups.get(name).is_some_and(|g| Arc::ptr_eq(g, group)) {
            group.retire();
        }
    }
    groups
}

/// The address to dial for an instance (IPv6 in brackets).
fn instance_address(instance: &Instance) -> String {
    if instance.address.contains(':') && !instance.address.starts_with('[') {
        format!("[{}]:{}", instance.address, instance.port)
    } else {
        format!("{}:{}", instance.address, instance.port)
    }
}

/// The registry's weight (a positive real, 1 by default) as a share: hundredths, at least 1.
fn instance_weight(instance: &Instance) -> u32 {
    let scaled = (instance.weight * 100.0).round();
    if scaled.is_finite() && scaled >= 1.0 {
        scaled.min(f64::from(u32::MAX)) as u32
    } else {
        1
    }
}

/// Keeps `group`'s members equal to the passing instances of `service`.
async fn follow(group: Arc<Group>, registry: Arc<dyn RegistryService>, service: String) {
    let cancel = group.follower.clone();
    let mut index = 0;
    let mut failing = false;
    loop {
        let query = Query {
            namespace: group.spec.namespace.clone(),
            passing: true,
            status: None,
            tags: group.spec.tags.clone(),
            meta: group.spec.meta.clone(),
            index,
            wait: Some(REGISTRY_WAIT),
        };
        let answer = tokio::select! {
            () = cancel.cancelled() => return,
            answer = registry.query(&service, &query) => answer,
        };
        match answer {
            Ok(result) => {
                if failing {
                    tracing::info!(upstream = %group.spec.name, %service, "registry answers again");
                    failing = false;
                }
                *group.problem.lock().unwrap_or_else(|e| e.into_inner()) = None;
                if index == 0 || result.index != index {
                    let members: Vec<_> = result
                        .instances
                        .iter()
                        .map(|i| (instance_address(i), i.id.clone(), instance_weight(i)))
                        .collect();
                    tracing::debug!(upstream = %group.spec.name, %service, members = members.len(), index = result.index, "members changed");
                    let initial = index == 0 && group.members().endpoints.is_empty();
                    group.replace(members, initial);
                }
                index = result.index.max(1);
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(upstream = %group.spec.name, %service, %error, "registry query failed; keeping the last members and retrying");
                    failing = true;
                }
                *group.problem.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(format!("registry query failed: {error}"));
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(REGISTRY_RETRY) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_budget_allows_a_fifth_of_the_requests_plus_a_floor() {
        let budget = RetryBudget::default();
        // The floor's first second is there at once: ten retries, then none.
        let granted = (0..50).filter(|_| budget.withdraw()).count();
        assert!((10..=11).contains(&granted), "{granted}");
        // A hundred requests earn twenty more.
        for _ in 0..100 {
            budget.deposit();
        }
        let granted = (0..50).filter(|_| budget.withdraw()).count();
        assert!((20..=21).contains(&granted), "{granted}");
    }
}
