//! Upstream groups at run time: their members, static or followed in the registry.
//!
//! A registry group runs one task that keeps a blocking query open on its service (passing
//! instances only, with the group's tag and metadata filters); each answer replaces the member
//! set, so a new, drained or failed instance changes where requests go as soon as the registry
//! knows. Counters of a member survive a rebuild while its id and address stay the same.

use crate::balance::{Endpoint, HashOn, Members};
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::model::{BreakerScope, UpstreamSpec};
use crate::pool::{Http1Pool, SendError};
use crate::route::DEFAULT_CONNECT_TIMEOUT;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use strata_api::registry::{Query, RegistryService};
use strata_resilience::breaker::{BreakerConfig, CircuitBreaker};
use strata_resilience::budget::RetryBudget;
use strata_resilience::limit::ConcurrencyLimit;
use strata_resilience::outlier::Detector;
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
/// Idle pooled connections kept per member unless the group says otherwise. As many as
/// requests in flight to a member under load (HAProxy keeps every idle connection, Envoy caps a
/// cluster at 1,024 connections): with 256, 640 concurrent HTTP/2 streams over TLS closed and
/// opened about 250 member connections a second.
const POOL_MAX_IDLE: usize = 1024;
/// An idempotent request on an HTTP/1.1 connection idle this long is sent again on a new
/// connection when the exchange breaks before an answer: servers close idle keep-alive
/// connections after a timeout (nginx 75 s, Node.js 5 s), and one that closes as the request
/// is written answers nothing. Busier connections are reused within microseconds and never
/// pay for the copy this needs.
const REPLAY_AFTER_IDLE: Duration = Duration::from_millis(100);

/// Opens connections to members and counts them: connect time, connections opened, open now.
#[derive(Clone, Debug)]
pub struct Connector {
    inner: HttpConnector,
    /// Shared: the pooled client clones its connector for every request.
    metrics: Arc<UpstreamMetrics>,
}

/// Counts one open connection in a gauge for as long as it lives.
pub(crate) struct OpenCount(prometheus::IntGauge);

impl OpenCount {
    pub(crate) fn new(gauge: &prometheus::IntGauge) -> OpenCount {
        gauge.inc();
        OpenCount(gauge.clone())
    }
}

impl Drop for OpenCount {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A connection to a member; the open-connections gauge goes down when it closes.
pub struct Counted {
    io: hyper_util::rt::TokioIo<tokio::net::TcpStream>,
    _open: OpenCount,
}

impl Counted {
    /// Counts `io` as open in `open` until it is dropped.
    pub(crate) fn new(
        io: hyper_util::rt::TokioIo<tokio::net::TcpStream>,
        open: &prometheus::IntGauge,
    ) -> Counted {
        Counted {
            io,
            _open: OpenCount::new(open),
        }
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
            Ok(Counted::new(io, &metrics.open))
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

/// How a group reaches its members.
pub enum Transport {
    /// HTTP/1.1: connections checked out by one request at a time and driven in its task.
    Http1(Http1Pool),
    /// HTTP/2 without TLS (`protocol = "h2c"`): hyper-util's pooled client, which multiplexes
    /// requests over one connection per member. Boxed: it is much larger than the pool's handle.
    H2c(Box<HttpClient>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Http1(pool) => pool.fmt(f),
            Transport::H2c(_) => f.write_str("H2c"),
        }
    }
}

fn transport(
    spec: &UpstreamSpec,
    connect_timeout: Duration,
    metrics: UpstreamMetrics,
    tracker: &TaskTracker,
) -> Transport {
    let metrics = Arc::new(metrics);
    let max_idle = spec.max_idle_per_member.unwrap_or(POOL_MAX_IDLE);
    if spec.protocol != crate::model::Protocol::H2c {
        let settings = crate::pool::Settings {
            connect_timeout,
            idle_timeout: POOL_IDLE,
            max_idle_per_member: max_idle,
            replay_after_idle: REPLAY_AFTER_IDLE,
        };
        return Transport::Http1(Http1Pool::new(settings, metrics, tracker.clone()));
    }
    let mut inner = HttpConnector::new();
    inner.set_connect_timeout(Some(connect_timeout));
    inner.set_nodelay(true);
    inner.enforce_http(true);
    let connector = Connector { inner, metrics };
    let mut builder =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
    builder
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(max_idle)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .http2_only(true);
    Transport::H2c(Box::new(builder.build(connector)))
}

/// What counts as a failure for a circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureOn {
    /// Status classes (index 1 to 5) that count.
    classes: [bool; 6],
    /// Single statuses that count.
    codes: Vec<u16>,
    /// No answer within the route's timeout.
    pub timeout: bool,
    /// The connection could not be opened.
    pub connect: bool,
    /// The connection broke before an answer.
    pub reset: bool,
}

impl FailureOn {
    /// Parses `failure_on` (empty: `5xx`, `timeout`, `connect`, `reset`).
    pub fn parse(list: &[String]) -> Result<FailureOn, String> {
        let defaults = ["5xx", "timeout", "connect", "reset"].map(String::from);
        let list = if list.is_empty() { &defaults[..] } else { list };
        let mut on = FailureOn {
            classes: [false; 6],
            codes: Vec::new(),
            timeout: false,
            connect: false,
            reset: false,
        };
        for item in list {
            match item.as_str() {
                "timeout" => on.timeout = true,
                "connect" => on.connect = true,
                "reset" => on.reset = true,
                class if class.len() == 3 && class.ends_with("xx") => {
                    let digit = class.as_bytes()[0];
                    if !(b'1'..=b'5').contains(&digit) {
                        return Err(format!("failure_on {item:?}: no such status class"));
                    }
                    on.classes[usize::from(digit - b'0')] = true;
                }
                code => match code.parse::<u16>() {
                    Ok(code) if (100..600).contains(&code) => on.codes.push(code),
                    _ => {
                        return Err(format!(
                            "failure_on {item:?} is not a status, a class such as 5xx, timeout, connect or reset"
                        ))
                    }
                },
            }
        }
        Ok(on)
    }

    /// True when an answer with `status` counts as a failure.
    pub fn status(&self, status: u16) -> bool {
        self.classes[usize::from((status / 100).min(5))] || self.codes.contains(&status)
    }
}

/// One upstream group.
#[derive(Debug)]
pub struct Group {
    /// Retries it may still make.
    pub retry_budget: RetryBudget,
    /// The group's circuit breaker (scope `group`).
    pub breaker: Option<Arc<CircuitBreaker>>,
    /// The members' breakers' configuration (scope `instance`).
    member_breaker: Option<BreakerConfig>,
    /// What the breakers count as failures.
    pub failure_on: FailureOn,
    /// Outlier detection, when configured.
    pub detector: Option<Detector>,
    /// Requests in flight at once, when limited.
    pub concurrency: Option<ConcurrencyLimit>,
    /// The connections to its members, shared by every request.
    pub transport: Transport,
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
        // Indexed, so a change to a group of n members costs O(n), not O(n^2).
        let kept: std::collections::HashMap<(&str, &str, u32), &Arc<Endpoint>> = old
            .endpoints
            .iter()
            .map(|e| ((e.address.as_str(), e.id.as_str(), e.weight), e))
            .collect();
        let endpoints = endpoints
            .into_iter()
            .map(|(address, id, weight)| {
                kept.get(&(address.as_str(), id.as_str(), weight))
                    .map(|e| Arc::clone(e))
                    .unwrap_or_else(|| {
                        let endpoint = if initial {
                            Endpoint::new(address, id, weight)
                        } else {
                            Endpoint::joining(address, id, weight)
                        };
                        if let Some(config) = &self.member_breaker {
                            let _ = endpoint
                                .breaker
                                .set(Arc::new(CircuitBreaker::new(config.clone())));
                        }
                        Arc::new(endpoint)
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

    /// Whether a request (other than an upgrade) goes out through the gateway's own HTTP/1.1
    /// pool, which writes its head and can add header lines to it.
    pub fn writes_head_itself(&self) -> bool {
        matches!(self.transport, Transport::Http1(_))
    }

    /// Stops following the registry.
    pub fn retire(&self) {
        self.follower.cancel();
    }

    /// Sends `request` (with an origin-form URI) to `member` (`HOST:PORT`) and returns the
    /// answer once its head arrived, or [`SendError::TimedOut`] when `deadline` came first.
    /// `replayable`: it has no body and may be sent twice; `upgrade`: it asks to switch
    /// protocols; `raw_answer`: an HTTP/1.1 answer's headers may stay raw (see
    /// [`crate::h1::parse_answer`]); `added`: header lines written after the request's own,
    /// only where [`Group::writes_head_itself`] (empty otherwise).
    ///
    /// Cancel safety: dropping the future drops the request and closes the HTTP/1.1
    /// connection it was using.
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        member: &str,
        request: hyper::Request<axum::body::Body>,
        replayable: bool,
        upgrade: bool,
        raw_answer: bool,
        added: &[u8],
        deadline: tokio::time::Instant,
    ) -> Result<Answer, SendError> {
        debug_assert!(added.is_empty() || (self.writes_head_itself() && !upgrade));
        // The usual case keeps a timer with each pooled connection; the rare ones (boxed, so
        // that the common one's future stays small) set one of their own.
        match &self.transport {
            Transport::Http1(pool) if upgrade => {
                Box::pin(by_deadline(deadline, async move {
                    pool.send_upgrade(member, request).await.map(Answer::parsed)
                }))
                .await
            }
            Transport::Http1(pool) => {
                pool.send(member, request, replayable, raw_answer, added, deadline)
                    .await
            }
            Transport::H2c(client) => {
                Box::pin(by_deadline(deadline, async move {
                    let mut request = request;
                    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
                    *request.uri_mut() = hyper::Uri::try_from(format!("http://{member}{path}"))
                        .map_err(|error| SendError::Broken(Box::new(error)))?;
                    match client.request(request).await {
                        Ok(response) => Ok(Answer::parsed(response.map(axum::body::Body::new))),
                        Err(error) if error.is_connect() => {
                            Err(SendError::Connect(Box::new(error)))
                        }
                        Err(error) => Err(SendError::Broken(Box::new(error))),
                    }
                }))
                .await
            }
        }
    }
}

/// `sent`, cut short at `deadline`.
async fn by_deadline(
    deadline: tokio::time::Instant,
    sent: impl Future<Output = Result<Answer, SendError>>,
) -> Result<Answer, SendError> {
    tokio::time::timeout_at(deadline, sent)
        .await
        .unwrap_or(Err(SendError::TimedOut))
}

/// A member's answer once its head arrived: the response, and its header lines when they
/// stayed raw (see [`crate::h1::parse_answer`]; the response's map is then empty). Carried
/// beside the response rather than in its extensions, where the first one costs three
/// allocations on every request; boxed, as the answer is moved several times on its way
/// to the client and a pointer moves for less than the lines' 56 bytes.
#[derive(Debug)]
pub struct Answer {
    pub response: hyper::Response<axum::body::Body>,
    pub raw: Option<Box<crate::h1::RawHeaders>>,
}

impl Answer {
    /// An answer whose headers are in its map.
    pub fn parsed(response: hyper::Response<axum::body::Body>) -> Self {
        Answer {
            response,
            raw: None,
        }
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
        let scope = spec.breaker_scope.unwrap_or_default();
        let group = Arc::new(Group {
            retry_budget: RetryBudget::new(spec.retry_budget.clone().unwrap_or_default()),
            breaker: spec
                .circuit_breaker
                .clone()
                .filter(|_| scope == BreakerScope::Group)
                .map(|c| Arc::new(CircuitBreaker::new(c))),
            member_breaker: spec
                .circuit_breaker
                .clone()
                .filter(|_| scope == BreakerScope::Instance),
            failure_on: FailureOn::parse(&spec.failure_on)
                .unwrap_or_else(|_| FailureOn::parse(&[]).expect("the default failure_on parses")),
            detector: spec.outlier_detection.clone().map(Detector::new),
            concurrency: spec.max_concurrent.map(ConcurrencyLimit::new),
            transport: transport(spec, connect_timeout, upstream_metrics.clone(), tracker),
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
        if let Transport::Http1(pool) = &group.transport {
            tracker.spawn(pool.sweep(group.retired()));
        }
        if group.detector.is_some() {
            tracker.spawn(sweep_outliers(group.clone(), metrics.clone()));
        }
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
                        .map(|i| (i.dial_address(), i.id.clone(), i.weight_share()))
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

/// Runs outlier detection's interval rules over `group`'s members until it is retired.
async fn sweep_outliers(group: Arc<Group>, metrics: Metrics) {
    let Some(detector) = group.detector.clone() else {
        return;
    };
    let retired = group.retired();
    loop {
        tokio::select! {
            () = retired.cancelled() => return,
            () = tokio::time::sleep(detector.config().interval.0) => {}
        }
        let members = group.members();
        let hosts: Vec<_> = members.endpoints.iter().map(|e| &e.outlier).collect();
        for ejection in detector.sweep(&hosts) {
            let member = &members.endpoints[ejection.host];
            report_ejection(&group, &metrics, member, ejection);
        }
    }
}

/// Counts and logs (once) an ejection by outlier detection.
pub fn report_ejection(
    group: &Group,
    metrics: &Metrics,
    member: &Endpoint,
    ejection: strata_resilience::outlier::Ejection,
) {
    metrics
        .ejections
        .with_label_values(&[group.spec.name.as_str(), ejection.reason.as_str()])
        .inc();
    tracing::warn!(
        upstream = %group.spec.name,
        member = %member.address,
        reason = ejection.reason.as_str(),
        seconds = ejection.duration.as_secs(),
        "member ejected by outlier detection"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_on_reads_classes_statuses_and_kinds() {
        let on = FailureOn::parse(&[]).unwrap();
        assert!(on.status(503) && !on.status(404) && on.timeout && on.connect && on.reset);
        let on = FailureOn::parse(&["4xx".into(), "503".into()]).unwrap();
        assert!(on.status(404) && on.status(503) && !on.status(500) && !on.timeout);
        assert!(FailureOn::parse(&["6xx".into()]).is_err());
        assert!(FailureOn::parse(&["slow".into()]).is_err());
    }
}
