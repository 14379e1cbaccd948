//! The consumer: a gRPC channel to `strata://SERVICE` for tonic's generated clients.
//!
//! [`Consumer`] is a `tower::Service` over HTTP requests, so `OrdersClient::new(consumer)`
//! works as it does with tonic's own `Channel`. Each call goes through, in order:
//! 1. the concurrency limit (`RESOURCE_EXHAUSTED` over it);
//! 2. the deadline: the least of the caller's `grpc-timeout`, the method's `timeout` from the
//!    service config, the consumer's default, and what is left of the deadline of the call
//!    this task serves (see [`crate::context`]);
//! 3. the trace: a client span, child of the call this task serves or a new trace;
//! 4. attempts, as the method's service-config policy says (one; retries with backoff; or
//!    hedges), each on an instance picked by the balancer among those whose breaker lets
//!    the call through and that outlier detection has not ejected. A retry or hedge also
//!    needs the retry budget and, when configured, the throttling tokens of gRFC A6. A call
//!    that never reached an instance (refused connection) is retried on another at once
//!    ("transparent retry"), within the same budget.
//!
//! A call is retried only when its request body was complete when it was made (every unary
//! and bounded client-streaming call); a streaming request goes out once.
//!
//! Every failure the consumer makes itself, and every failed status it passes on, says which
//! service, method and instance, how many attempts were made, and why.

use crate::context::{
    format_grpc_timeout, header, parse_grpc_timeout, CallContext, TraceParent, GRPC_STATUS,
    GRPC_TIMEOUT, TRACEPARENT, TRACESTATE,
};
use crate::discovery::{Discovery, Selector};
use crate::metrics::METRICS;
use crate::service_config::{code_name, MethodConfig, ServiceConfig, Throttling};
use crate::trace::{self, CallSpan, SpanKind};
use crate::watched::Watched;
use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;
use http_body_util::BodyExt;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use strata_resilience::balance::{Balance, Endpoint};
use strata_resilience::breaker::{BreakerConfig, CircuitBreaker, Permit};
use strata_resilience::budget::{BudgetConfig, RetryBudget};
use strata_resilience::limit::ConcurrencyLimit;
use strata_resilience::outlier::{Detector, Outcome, OutlierConfig};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::Code;

/// How long a call waits for discovery's first answer at most.
const FIRST_ANSWER: Duration = Duration::from_secs(5);

/// Largest request body kept for retries (gRFC A6's per-call buffer limit).
const RETRY_BUFFER: usize = 256 * 1024;

/// Codes that count as failures for breakers and outlier detection by default: the ones that
/// say the instance could not do the work, not that the request was wrong.
pub const DEFAULT_FAILURE_CODES: &[Code] = &[
    Code::Unavailable,
    Code::DeadlineExceeded,
    Code::Internal,
    Code::Unknown,
    Code::DataLoss,
];

/// Whether one breaker covers the whole service or each instance has its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BreakerScope {
    /// One breaker per instance: a failing instance is skipped, the others still serve.
    #[default]
    Instance,
    /// One breaker for the service: when it opens, calls get the fallback.
    Service,
}

/// Builds a [`Consumer`].
pub struct ConsumerBuilder {
    client: strata_client::Client,
    selector: Selector,
    service_config: ServiceConfig,
    breaker: Option<BreakerConfig>,
    breaker_scope: BreakerScope,
    outlier: Option<OutlierConfig>,
    budget: BudgetConfig,
    max_concurrent: Option<u32>,
    timeout: Option<Duration>,
    connect_timeout: Duration,
    hash_key: Option<HeaderName>,
    fallbacks: HashMap<String, Bytes>,
    failure_codes: Vec<Code>,
}

impl ConsumerBuilder {
    /// Only instances in this namespace (default `public`).
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.selector.namespace = Some(namespace.into());
        self
    }

    /// Only instances with this tag (repeatable: all of them).
    pub fn tag(mut self, tag: &str) -> Self {
        self.selector.tags.push(tag.into());
        self
    }

    /// Only instances whose metadata has `key=value` (repeatable).
    pub fn meta(mut self, key: &str, value: &str) -> Self {
        self.selector.meta.push((key.into(), value.into()));
        self
    }

    /// The balancing policy (default round robin).
    pub fn balance(mut self, balance: Balance) -> Self {
        self.selector.balance = balance;
        self
    }

    /// Per-method timeouts, retries, hedging and throttling.
    pub fn service_config(mut self, config: ServiceConfig) -> Self {
        self.service_config = config;
        self
    }

    /// Circuit breakers with this configuration (default: Resilience4j's defaults, per
    /// instance).
    pub fn breaker(mut self, config: BreakerConfig, scope: BreakerScope) -> Self {
        self.breaker = Some(config);
        self.breaker_scope = scope;
        self
    }

    /// No circuit breakers.
    pub fn no_breaker(mut self) -> Self {
        self.breaker = None;
        self
    }

    /// Outlier detection with this configuration (default: Envoy's defaults).
    pub fn outlier(mut self, config: Option<OutlierConfig>) -> Self {
        self.outlier = config;
        self
    }

    /// The retry budget (default: 20% of calls plus 10 per second).
    pub fn retry_budget(mut self, config: BudgetConfig) -> Self {
        self.budget = config;
        self
    }

    /// At most this many calls in flight through this consumer.
    pub fn max_concurrent(mut self, max: u32) -> Self {
        self.max_concurrent = Some(max);
        self
    }

    /// The deadline of calls that set none and whose method config has no `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How long a connection to an instance may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The request metadata key whose value `ring_hash` and `maglev` hash.
    pub fn hash_key(mut self, key: &str) -> Result<Self, String> {
        self.hash_key = Some(
            HeaderName::from_bytes(key.to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("{key:?} is not a metadata key"))?,
        );
        Ok(self)
    }

    /// Answers `method` (`/package.Service/Method`) with `message` while the breakers keep
    /// every instance out.
    pub fn fallback(mut self, method: &str, message: &impl prost::Message) -> Self {
        self.fallbacks
            .insert(method.into(), Bytes::from(message.encode_to_vec()));
        self
    }

    /// The codes that count as failures for breakers and outlier detection (default
    /// [`DEFAULT_FAILURE_CODES`]).
    pub fn failure_codes(mut self, codes: &[Code]) -> Self {
        self.failure_codes = codes.to_vec();
        self
    }

    /// The consumer. It follows the registry from now on (in the current tokio runtime).
    /// Unless the process says otherwise, its spans go to the node its client points at
    /// ([`crate::trace`]).
    pub fn build(self) -> Consumer {
        trace::default_to_node(&self.client, None);
        let discovery = Discovery::follow(self.client, self.selector.clone());
        let service_breaker = match (self.breaker_scope, &self.breaker) {
            (BreakerScope::Service, Some(config)) => {
                Some(Arc::new(CircuitBreaker::new(config.clone())))
            }
            _ => None,
        };
        let inner = Arc::new(Inner {
            service: self.selector.service.clone(),
            filters: describe(&self.selector),
            discovery,
            channels: RwLock::new(FastMap::default()),
            throttle: self.service_config.throttling.clone().map(Throttle::new),
            config: self.service_config,
            instance_breaker: match self.breaker_scope {
                BreakerScope::Instance => self.breaker,
                BreakerScope::Service => None,
            },
            service_breaker,
            detector: self.outlier.map(Detector::new),
            budget: RetryBudget::new(self.budget),
            limit: self.max_concurrent.map(ConcurrencyLimit::new),
            timeout: self.timeout,
            connect_timeout: self.connect_timeout,
            hash_key: self.hash_key,
            fallbacks: self.fallbacks,
            failure_codes: self.failure_codes,
            methods: RwLock::new(FastMap::default()),
            first_attempts: METRICS
                .client_attempts
                .with_label_values(&[self.selector.service.as_str(), "first"]),
        });
        if let Some(detector) = &inner.detector {
            let interval = detector.config().interval.0.max(Duration::from_millis(100));
            let weak = Arc::downgrade(&inner);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(interval).await;
                    let Some(inner) = weak.upgrade() else { return };
                    let members = inner.discovery.members();
                    let hosts: Vec<_> = members.endpoints.iter().map(|e| &e.outlier).collect();
                    if let Some(detector) = &inner.detector {
                        for ejection in detector.sweep(&hosts) {
                            let endpoint = &members.endpoints[ejection.host];
                            tracing::warn!(service = %inner.service, instance = %endpoint.id, reason = ejection.reason.as_str(), "outlier detection ejected an instance");
                        }
                    }
                }
            });
        }
        Consumer { inner }
    }

    /// A consumer of a plain HTTP service instead (same discovery, balancing, breakers).
    pub fn build_rest(self) -> crate::RestConsumer {
        crate::RestConsumer::new(self.build().inner)
    }
}

fn describe(selector: &Selector) -> String {
    let mut parts = vec![format!(
        "namespace {}",
        selector.namespace.as_deref().unwrap_or("public")
    )];
    if !selector.tags.is_empty() {
        parts.push(format!("tags {}", selector.tags.join(",")));
    }
    if !selector.meta.is_empty() {
        let meta: Vec<String> = selector
            .meta
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.push(format!("meta {}", meta.join(",")));
    }
    parts.join(", ")
}

/// A channel to a service's instances, followed in the registry. Cheap to clone; clones share
/// everything.
#[derive(Clone)]
pub struct Consumer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("service", &self.inner.service)
            .finish()
    }
}

pub(crate) struct Inner {
    pub(crate) service: String,
    filters: String,
    pub(crate) discovery: Arc<Discovery>,
    channels: RwLock<FastMap<tonic::transport::Channel>>,
    config: ServiceConfig,
    instance_breaker: Option<BreakerConfig>,
    service_breaker: Option<Arc<CircuitBreaker>>,
    detector: Option<Detector>,
    pub(crate) budget: RetryBudget,
    throttle: Option<Throttle>,
    limit: Option<ConcurrencyLimit>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) connect_timeout: Duration,
    pub(crate) hash_key: Option<HeaderName>,
    fallbacks: HashMap<String, Bytes>,
    failure_codes: Vec<Code>,
    /// Metric handles by method path, so a call looks its labels up once.
    methods: RwLock<FastMap<Arc<MethodMetrics>>>,
    first_attempts: prometheus::IntCounter,
}

/// FNV-1a: the per-call lookups by address and method path hash short keys the process
/// chose or its registry holds, in maps of bounded size, where SipHash's cost showed and its
/// protection buys nothing.
type FastMap<V> = HashMap<String, V, fnv::FnvBuildHasher>;

/// A method's metric handles.
struct MethodMetrics {
    /// `package.Service/Method`.
    name: String,
    ok: prometheus::IntCounter,
    duration: prometheus::Histogram,
}

/// The policy of a method the service config does not mention.
const NO_POLICY: MethodConfig = MethodConfig {
    timeout: None,
    retry: None,
    hedging: None,
};

/// Methods whose metric handles are kept (beyond: looked up per call).
const METHODS_CACHED: usize = 1024;

/// gRFC A6 retry throttling.
struct Throttle {
    config: Throttling,
    tokens: Mutex<f64>,
}

impl Throttle {
    fn new(config: Throttling) -> Throttle {
        Throttle {
            tokens: Mutex::new(config.max_tokens),
            config,
        }
    }

    fn record(&self, failed: bool) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        *tokens = if failed {
            (*tokens - 1.0).max(0.0)
        } else {
            (*tokens + self.config.token_ratio).min(self.config.max_tokens)
        };
    }

    fn allows(&self) -> bool {
        *self.tokens.lock().unwrap_or_else(|e| e.into_inner()) > self.config.max_tokens / 2.0
    }
}

impl Consumer {
    /// A consumer of `service`, discovered through `client` (any node of the cluster).
    pub fn builder(client: strata_client::Client, service: &str) -> ConsumerBuilder {
        ConsumerBuilder {
            client,
            selector: Selector {
                service: service.into(),
                ..Default::default()
            },
            service_config: ServiceConfig::default(),
            breaker: Some(BreakerConfig::default()),
            breaker_scope: BreakerScope::Instance,
            outlier: Some(OutlierConfig::default()),
            budget: BudgetConfig::default(),
            max_concurrent: None,
            timeout: None,
            connect_timeout: Duration::from_secs(1),
            hash_key: None,
            fallbacks: HashMap::new(),
            failure_codes: DEFAULT_FAILURE_CODES.to_vec(),
        }
    }

    /// A builder for a `strata://SERVICE` URI, whose query may select instances and the
    /// balancing: `strata://orders?tag=v1&meta=version:v2&namespace=shop&balance=least_request`
    /// (`tag` and `meta` repeat).
    pub fn from_uri(client: strata_client::Client, uri: &str) -> Result<ConsumerBuilder, String> {
        let rest = uri
            .strip_prefix("strata://")
            .ok_or_else(|| format!("{uri:?}: expected strata://SERVICE"))?;
        let (service, query) = rest.split_once('?').unwrap_or((rest, ""));
        let service = service.trim_end_matches('/');
        if service.is_empty() || service.contains('/') {
            return Err(format!("{uri:?}: expected strata://SERVICE"));
        }
        let mut builder = Consumer::builder(client, service);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            builder = match key {
                "tag" => builder.tag(value),
                "namespace" => builder.namespace(value),
                "meta" => {
                    let (k, v) = value
                        .split_once(':')
                        .ok_or_else(|| format!("{uri:?}: meta={value:?} is not KEY:VALUE"))?;
                    builder.meta(k, v)
                }
                "balance" => builder.balance(
                    serde_json::from_value(serde_json::Value::String(value.into()))
                        .map_err(|_| format!("{uri:?}: balance={value:?} is not a policy"))?,
                ),
                other => return Err(format!("{uri:?}: unknown parameter {other:?}")),
            };
        }
        Ok(builder)
    }

    /// The service's instances, as discovery sees them.
    pub fn discovery(&self) -> &Arc<Discovery> {
        &self.inner.discovery
    }

    /// The service-wide breaker's state, when the breaker covers the service.
    pub fn breaker_state(&self) -> Option<strata_resilience::breaker::State> {
        self.inner.service_breaker.as_ref().map(|b| b.state())
    }
}

impl tower::Service<http::Request<Body>> for Consumer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { Ok(inner.call(request).await) })
    }
}

/// A request body, whole (retryable) or streaming (sent once).
enum Payload {
    Whole(Bytes),
    Streaming(Option<Body>),
}

impl Payload {
    /// Takes what is ready of `body` without waiting: a body that ends that way is whole.
    fn read(mut body: Body) -> Result<Payload, tonic::Status> {
        let mut chunks: VecDeque<Frame<Bytes>> = VecDeque::new();
        let mut size = 0;
        loop {
            match body.frame().now_or_never() {
                Some(Some(Ok(frame))) => {
                    let data = frame.data_ref().map(Bytes::len);
                    match data {
                        Some(n) if size + n <= RETRY_BUFFER => size += n,
                        // Too large to keep, or request trailers: sent once, as it comes.
                        _ => {
                            chunks.push_back(frame);
                            return Ok(Payload::streaming(chunks, body));
                        }
                    }
                    if chunks.is_empty() {
                        // The common case, a unary request: one frame, then the end. Kept
                        // as it is, with no copy and no queue.
                        match body.frame().now_or_never() {
                            Some(None) => {
                                return Ok(Payload::Whole(frame.into_data().unwrap_or_default()))
                            }
                            Some(Some(Ok(next))) => {
                                chunks.push_back(frame);
                                let n = next.data_ref().map(Bytes::len);
                                chunks.push_back(next);
                                match n {
                                    Some(n) if size + n <= RETRY_BUFFER => size += n,
                                    _ => return Ok(Payload::streaming(chunks, body)),
                                }
                                continue;
                            }
                            Some(Some(Err(status))) => return Err(status),
                            None => {
                                chunks.push_back(frame);
                                return Ok(Payload::streaming(chunks, body));
                            }
                        }
                    }
                    chunks.push_back(frame);
                }
                Some(Some(Err(status))) => return Err(status),
                Some(None) => {
                    let mut whole = BytesMut::with_capacity(size);
                    for frame in chunks {
                        if let Ok(data) = frame.into_data() {
                            whole.extend_from_slice(&data);
                        }
                    }
                    return Ok(Payload::Whole(whole.freeze()));
                }
                None => return Ok(Payload::streaming(chunks, body)),
            }
        }
    }

    fn streaming(prefix: VecDeque<Frame<Bytes>>, rest: Body) -> Payload {
        Payload::Streaming(Some(Body::new(Prefixed { prefix, rest })))
    }

    /// The body of one more attempt, if the payload allows one.
    fn body(&mut self) -> Option<Body> {
        match self {
            Payload::Whole(bytes) => Some(Body::new(http_body_util::Full::new(bytes.clone()))),
            Payload::Streaming(body) => body.take(),
        }
    }

    fn retryable(&self) -> bool {
        matches!(self, Payload::Whole(_))
    }
}

/// Frames already read, then the rest of the body.
struct Prefixed {
    prefix: VecDeque<Frame<Bytes>>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if let Some(frame) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }
}

/// How one attempt ended before its response was committed to.
enum Answer {
    /// Response headers without a final status: the call is committed to this attempt.
    Committed(http::Response<Body>),
    /// A final status without a response body (trailers-only), or a failure to get one.
    Failed {
        code: Code,
        message: String,
        /// Never reached the instance (the connection was refused or could not be made).
        unsent: bool,
        /// Server pushback (`grpc-retry-pushback-ms`): `Some(None)` forbids retries.
        pushback: Option<Option<Duration>>,
        /// The response, when there was one, to pass on if this is the last attempt.
        response: Option<http::Response<Body>>,
    },
}

impl Answer {
    /// The call's deadline passed.
    fn expired(call: &Call) -> Answer {
        Answer::Failed {
            code: Code::DeadlineExceeded,
            message: format!(
                "deadline exceeded after {} ms",
                call.started.elapsed().as_millis()
            ),
            unsent: false,
            pushback: None,
            response: None,
        }
    }
}

/// One attempt on one instance: its permits, and what it owes the breaker, outlier
/// detection and the balancer's in-flight count when it ends. Dropped unfinished (a hedge
/// that lost, a call the caller gave up on), it counts as neither success nor failure.
pub(crate) struct Attempt {
    inner: Arc<Inner>,
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) index: usize,
    permit: Option<(Arc<CircuitBreaker>, Permit)>,
    service_permit: Option<Permit>,
    finished: bool,
}

impl Attempt {
    pub(crate) fn finish(&mut self, code: Code, local: bool) {
        if self.finished {
            return;
        }
        self.finished = true;
        let now = Instant::now();
        let failed = self.inner.failure_codes.contains(&code);
        self.endpoint
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if failed {
            self.endpoint
                .failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some((breaker, permit)) = self.permit.take() {
            if let Some(t) = breaker.record_at(permit, failed, now) {
                self.inner.transition(Some(&self.endpoint.id), t);
                if t.to == strata_resilience::breaker::State::Open {
                    let until = strata_resilience::balance::ms_at(now)
                        + breaker.config().wait_in_open.0.as_millis() as u64;
                    self.endpoint
                        .breaker_open_until
                        .store(until, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        if let (Some(breaker), Some(permit)) =
            (&self.inner.service_breaker, self.service_permit.take())
        {
            if let Some(t) = breaker.record_at(permit, failed, now) {
                self.inner.transition(None, t);
            }
        }
        if let Some(detector) = &self.inner.detector {
            let outcome = match (failed, local, code) {
                (false, _, _) => Outcome::Success,
                (true, true, _) => Outcome::LocalFailure,
                (true, false, Code::Unavailable) => Outcome::Status(503),
                (true, false, Code::DeadlineExceeded) => Outcome::Status(504),
                (true, false, _) => Outcome::Status(500),
            };
            if outcome == Outcome::Success {
                // A success only resets this host's counters: no other host is needed.
                detector.record(&[&self.endpoint.outlier], 0, outcome);
            } else {
                let members = self.inner.discovery.members();
                let current = members
                    .endpoints
                    .get(self.index)
                    .is_some_and(|e| Arc::ptr_eq(e, &self.endpoint));
                if current {
                    let hosts: Vec<_> = members.endpoints.iter().map(|e| &e.outlier).collect();
                    if let Some(ejection) = detector.record(&hosts, self.index, outcome) {
                        tracing::warn!(service = %self.inner.service, instance = %self.endpoint.id, reason = ejection.reason.as_str(), seconds = ejection.duration.as_secs_f64(), "outlier detection ejected an instance");
                    }
                }
            }
        }
        if let Some(throttle) = &self.inner.throttle {
            throttle.record(failed);
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            self.endpoint
                .in_flight
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            // Not the instance's doing: the breaker counts it as a success, so that a
            // half-open trial that was cancelled does not hold the breaker half-open.
            if let Some((breaker, permit)) = self.permit.take() {
                breaker.record(permit, false);
            }
            if let (Some(breaker), Some(permit)) =
                (&self.inner.service_breaker, self.service_permit.take())
            {
                breaker.record(permit, false);
            }
        }
    }
}

/// Why no attempt could be made.
pub(crate) enum NoPick {
    NoInstance,
    BreakerOpen(Duration),
}

/// The members a call has tried (at most [`MAX_TRIED`] are remembered), kept inline: a call
/// that needs one attempt allocates nothing for it.
#[derive(Default)]
pub(crate) struct Tried {
    items: [usize; MAX_TRIED],
    len: usize,
}

const MAX_TRIED: usize = 8;

impl Tried {
    pub(crate) fn push(&mut self, index: usize) {
        if self.len < MAX_TRIED {
            self.items[self.len] = index;
            self.len += 1;
        }
    }

    pub(crate) fn as_slice(&self) -> &[usize] {
        &self.items[..self.len]
    }
}

/// What a call knows while it runs.
pub(crate) struct Call {
    /// The method's path (`/package.Service/Method`), or a REST request's.
    pub(crate) uri: http::Uri,
    /// A REST request's method (`None` for gRPC).
    pub(crate) rest_method: Option<http::Method>,
    pub(crate) started: Instant,
    pub(crate) deadline: Option<Instant>,
    pub(crate) span: TraceParent,
    pub(crate) parent: Option<[u8; 8]>,
    pub(crate) trace_state: Option<String>,
    pub(crate) headers: HeaderMap,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) attempts: u32,
    pub(crate) last: Option<Arc<Endpoint>>,
}

impl Inner {
    fn transition(&self, instance: Option<&str>, t: strata_resilience::breaker::Transition) {
        METRICS
            .breaker_transitions
            .with_label_values(&[&self.service, t.to.as_str()])
            .inc();
        tracing::warn!(service = %self.service, instance = instance.unwrap_or("(service)"), from = t.from.as_str(), to = t.to.as_str(), "circuit breaker changed state");
    }

    fn channel(&self, address: &str) -> tonic::transport::Channel {
        if let Some(channel) = self
            .channels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(address)
        {
            return channel.clone();
        }
        let mut channels = self.channels.write().unwrap_or_else(|e| e.into_inner());
        if channels.len() > 64 {
            let live: Vec<String> = self
                .discovery
                .members()
                .endpoints
                .iter()
                .map(|e| e.address.clone())
                .collect();
            channels.retain(|a, _| live.contains(a));
        }
        channels
            .entry(address.to_string())
            .or_insert_with(|| {
                // The address comes from the registry; a bad one fails at connect time.
                tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                    .unwrap_or_else(|_| tonic::transport::Endpoint::from_static("http://0.0.0.0:1"))
                    .connect_timeout(self.connect_timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .connect_lazy()
            })
            .clone()
    }

    /// Picks an instance not tried yet (any, when all were) whose breaker lets a call through.
    pub(crate) fn pick(self: &Arc<Self>, call: &Call, tried: &[usize]) -> Result<Attempt, NoPick> {
        // One reading of the clock for the whole pick; the first attempt's is the call's start.
        let now = if call.attempts == 0 {
            call.started
        } else {
            Instant::now()
        };
        let now_ms = strata_resilience::balance::ms_at(now);
        let service_permit = match &self.service_breaker {
            Some(breaker) => {
                let (permit, transition) = breaker.try_acquire_at(now);
                if let Some(t) = transition {
                    self.transition(None, t);
                }
                Some(permit.map_err(|r| NoPick::BreakerOpen(r.retry_after))?)
            }
            None => None,
        };
        let members = self.discovery.members();
        if members.endpoints.is_empty() {
            return Err(NoPick::NoInstance);
        }
        // Instances whose breaker refused this call.
        let mut rejected: Vec<usize> = Vec::new();
        let mut retry_after = None::<Duration>;
        loop {
            let skip: Vec<usize> = tried.iter().chain(&rejected).copied().collect();
            let mut index = members.pick_at(call.key.as_deref(), &skip, now_ms);
            if index.is_some_and(|i| rejected.contains(&i)) {
                // Every untried instance refused: an instance tried before may still do.
                index = members
                    .pick_at(call.key.as_deref(), &rejected, now_ms)
                    .filter(|i| !rejected.contains(i));
            }
            let Some(index) = index else {
                return Err(match retry_after {
                    Some(after) => NoPick::BreakerOpen(after),
                    None => NoPick::NoInstance,
                });
            };
            let endpoint = members.endpoints[index].clone();
            let permit = match &self.instance_breaker {
                Some(config) => {
                    let breaker = endpoint
                        .breaker
                        .get_or_init(|| Arc::new(CircuitBreaker::new(config.clone())))
                        .clone();
                    let (permit, transition) = breaker.try_acquire_at(now);
                    if let Some(t) = transition {
                        self.transition(Some(&endpoint.id), t);
                    }
                    match permit {
                        Ok(permit) => Some((breaker, permit)),
                        Err(refusal) => {
                            let until = now_ms + refusal.retry_after.as_millis() as u64;
                            endpoint
                                .breaker_open_until
                                .store(until, std::sync::atomic::Ordering::Relaxed);
                            retry_after = Some(
                                retry_after
                                    .map_or(refusal.retry_after, |a| a.min(refusal.retry_after)),
                            );
                            rejected.push(index);
                            continue;
                        }
                    }
                }
                None => None,
            };
            endpoint
                .in_flight
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            endpoint
                .requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(Attempt {
                inner: self.clone(),
                endpoint,
                index,
                permit,
                service_permit,
                finished: false,
            });
        }
    }

    /// Sends one attempt and waits for its response headers.
    async fn send(&self, call: &Call, attempt: &mut Attempt, body: Body) -> Answer {
        let mut request = http::Request::new(body);
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = call.uri.clone();
        *request.headers_mut() = call.headers.clone();
        let headers = request.headers_mut();
        let remaining = call
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        if let Some(remaining) = remaining {
            if let Ok(mut value) = HeaderValue::from_str(&format_grpc_timeout(remaining)) {
                // Nearly unique per call, like `traceparent`: kept out of the HPACK table.
                value.set_sensitive(true);
                headers.insert(GRPC_TIMEOUT, value);
            }
        }
        if attempt_number(call) > 1 {
            if let Ok(value) = HeaderValue::from_str(&(attempt_number(call) - 1).to_string()) {
                headers.insert("grpc-previous-rpc-attempts", value);
            }
        }
        let mut channel = self.channel(&attempt.endpoint.address);
        let exchange = async {
            use tower::ServiceExt;
            channel.ready().await?;
            tower::Service::call(&mut channel, request).await
        };
        let result = match remaining {
            Some(remaining) => match tokio::time::timeout(remaining, exchange).await {
                Ok(result) => result,
                Err(_) => return Answer::expired(call),
            },
            None => exchange.await,
        };
        match result {
            Err(error) => {
                let unsent = refused(&error);
                if unsent {
                    attempt.endpoint.eject();
                }
                // tonic's channel enforces the `grpc-timeout` it sends, too.
                let expired =
                    call.deadline.is_some_and(|d| d <= Instant::now()) || timed_out(&error);
                if expired {
                    return Answer::expired(call);
                }
                Answer::Failed {
                    code: Code::Unavailable,
                    message: error_chain(&error),
                    unsent,
                    pushback: None,
                    response: None,
                }
            }
            Ok(response) => {
                attempt.endpoint.connected();
                if header(response.headers(), &GRPC_STATUS).is_some() {
                    let status = tonic::Status::from_header_map(response.headers())
                        .unwrap_or_else(|| tonic::Status::unknown("a bad grpc-status"));
                    if status.code() == Code::Ok {
                        return Answer::Committed(response);
                    }
                    // tonic's server ends a call whose `grpc-timeout` passed with CANCELLED;
                    // for the caller it is the deadline.
                    if status.code() == Code::Cancelled
                        && call.deadline.is_some_and(|d| d <= Instant::now())
                    {
                        return Answer::expired(call);
                    }
                    let pushback = response.headers().get("grpc-retry-pushback-ms").map(|v| {
                        v.to_str()
                            .ok()
                            .and_then(|v| v.parse::<u64>().ok())
                            .map(Duration::from_millis)
                    });
                    return Answer::Failed {
                        code: status.code(),
                        message: status.message().to_string(),
                        unsent: false,
                        pushback,
                        response: Some(response),
                    };
                }
                if response.status() != http::StatusCode::OK {
                    let code = match response.status().as_u16() {
                        400 => Code::Internal,
                        401 => Code::Unauthenticated,
                        403 => Code::PermissionDenied,
                        404 => Code::Unimplemented,
                        429 | 502 | 503 | 504 => Code::Unavailable,
                        _ => Code::Unknown,
                    };
                    return Answer::Failed {
                        code,
                        message: format!("the instance answered HTTP {}", response.status()),
                        unsent: false,
                        pushback: None,
                        response: None,
                    };
                }
                Answer::Committed(response)
            }
        }
    }

    pub(crate) fn where_(&self, call: &Call) -> String {
        let method = call.method_name();
        match call.last.as_deref() {
            Some(Endpoint { id, address, .. }) => format!(
                "{method} on service {:?} instance {id} ({address}), {} attempt{}{}",
                self.service,
                call.attempts,
                if call.attempts == 1 { "" } else { "s" },
                if call.attempts > 1 { " (retried)" } else { "" },
            ),
            None => method.to_string(),
        }
    }

    pub(crate) fn no_pick(&self, call: &Call, why: NoPick) -> tonic::Status {
        match why {
            NoPick::NoInstance => tonic::Status::unavailable(format!(
                "{}: no passing instance of service {:?} ({})",
                self.where_(call),
                self.service,
                self.filters
            )),
            NoPick::BreakerOpen(after) => tonic::Status::unavailable(format!(
                "{}: circuit breaker open for every instance of service {:?}; next trial in {:.1}s",
                self.where_(call),
                self.service,
                after.as_secs_f64()
            )),
        }
    }

    async fn call(self: Arc<Self>, request: http::Request<Body>) -> http::Response<Body> {
        let started = Instant::now();
        let (parts, body) = request.into_parts();
        let method_config = self.config.method(parts.uri.path()).unwrap_or(&NO_POLICY);
        let context = CallContext::current().unwrap_or_default();
        let mut deadline = context.deadline;
        let own = header(&parts.headers, &GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .or(method_config.timeout)
            .or(self.timeout);
        // A timeout too long to add to the clock (grpc-timeout allows 11,000 years) is none.
        if let Some(own) = own.and_then(|own| started.checked_add(own)) {
            deadline = Some(deadline.map_or(own, |d| d.min(own)));
        }
        let parent = TraceParent::from_headers(&parts.headers).or(context.trace);
        let span = match parent {
            Some(parent) => parent.child(),
            None => TraceParent::root(trace::sample_new()),
        };
        // Wall-clock time only for spans that are exported.
        let wall = span.sampled.then(SystemTime::now);
        let mut call = Call {
            key: self
                .hash_key
                .as_ref()
                .and_then(|k| parts.headers.get(k))
                .map(|v| v.as_bytes().to_vec()),
            uri: parts.uri,
            rest_method: None,
            started,
            deadline,
            span,
            parent: parent.map(|p| p.span_id),
            trace_state: header(&parts.headers, &TRACESTATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or(context.trace_state),
            headers: parts.headers,
            attempts: 0,
            last: None,
        };
        // What every attempt sends is set once here, so that an attempt's copy of the headers
        // changes at most `grpc-timeout` in place (no growth, no rehash per attempt).
        call.headers.insert(TRACEPARENT, call.span.header_value());
        if let Some(state) = call
            .trace_state
            .as_deref()
            .and_then(|s| HeaderValue::from_str(s).ok())
        {
            call.headers.insert(TRACESTATE, state);
        }
        if call.deadline.is_some() {
            call.headers
                .insert(GRPC_TIMEOUT, HeaderValue::from_static("0n"));
        }
        let _limit = match &self.limit {
            Some(limit) => match limit.try_acquire() {
                Some(permit) => Some(permit),
                None => {
                    let status = tonic::Status::resource_exhausted(format!(
                        "{}: {} calls in flight to service {:?}, the consumer's limit",
                        self.where_(&call),
                        limit.max(),
                        self.service
                    ));
                    return self.end(&call, wall, Err(status), None);
                }
            },
            None => None,
        };
        let payload = match Payload::read(body) {
            Ok(payload) => payload,
            Err(status) => return self.end(&call, wall, Err(status), None),
        };
        self.budget.deposit();
        // A new consumer's first calls wait for the registry's first answer (bounded by the
        // deadline) rather than fail for want of instances.
        let wait = call
            .deadline
            .map_or(FIRST_ANSWER, |d| {
                d.saturating_duration_since(Instant::now())
            })
            .min(FIRST_ANSWER);
        self.discovery.ready(wait).await;
        let result = match &method_config.hedging {
            // Boxed: the hedging state machine is large and rarely used.
            Some(_) if payload.retryable() => {
                Box::pin(self.hedged(&mut call, method_config, payload)).await
            }
            _ => self.retried(&mut call, method_config, payload).await,
        };
        self.end(&call, wall, result.0, result.1)
    }

    /// Whether another attempt may be made now: attempts left, budget, throttling.
    pub(crate) fn may_retry(&self, call: &Call, max_attempts: u32, unsent: bool) -> bool {
        if call.attempts >= max_attempts.max(if unsent { 3 } else { 1 }) {
            return false;
        }
        if call.deadline.is_some_and(|d| d <= Instant::now()) {
            return false;
        }
        if self.throttle.as_ref().is_some_and(|t| !t.allows()) {
            return false;
        }
        self.budget.withdraw()
    }

    async fn retried(
        self: &Arc<Self>,
        call: &mut Call,
        config: &MethodConfig,
        mut payload: Payload,
    ) -> (Result<http::Response<Body>, tonic::Status>, Option<Attempt>) {
        let mut tried = Tried::default();
        loop {
            let Some(body) = payload.body() else {
                return (
                    Err(tonic::Status::internal("the request body was already sent")),
                    None,
                );
            };
            let mut attempt = match self.pick(call, tried.as_slice()) {
                Ok(attempt) => attempt,
                Err(why) => return (self.fallback_or(call, why), None),
            };
            self.begin(call, &attempt, &mut tried, "retry");
            match self.send(call, &mut attempt, body).await {
                Answer::Committed(response) => return (Ok(response), Some(attempt)),
                Answer::Failed {
                    code,
                    message,
                    unsent,
                    pushback,
                    response,
                } => {
                    attempt.finish(code, response.is_none());
                    let policy = config.retry.as_ref();
                    let retryable = unsent || policy.is_some_and(|p| p.retryable.contains(&code));
                    let allowed = !matches!(pushback, Some(None))
                        && payload.retryable()
                        && retryable
                        && self.may_retry(call, policy.map_or(1, |p| p.max_attempts), unsent);
                    if !allowed {
                        return (Err(self.failed(call, code, &message)), None);
                    }
                    let wait = match (pushback, policy) {
                        (Some(Some(after)), _) => after,
                        _ if unsent => Duration::ZERO,
                        (_, Some(policy)) => policy.backoff(call.attempts),
                        (_, None) => Duration::ZERO,
                    };
                    if call.deadline.is_some_and(|d| Instant::now() + wait >= d) {
                        return (Err(self.failed(call, code, &message)), None);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn hedged(
        self: &Arc<Self>,
        call: &mut Call,
        config: &MethodConfig,
        mut payload: Payload,
    ) -> (Result<http::Response<Body>, tonic::Status>, Option<Attempt>) {
        let Some(policy) = config.hedging.clone() else {
            return self.retried(call, config, payload).await;
        };
        let mut tried = Tried::default();
        let mut running = FuturesUnordered::new();
        let mut last_failure: Option<(Code, String)> = None;
        let mut next_at = Instant::now();
        loop {
            let may_send = call.attempts < policy.max_attempts
                && Instant::now() >= next_at
                && (call.attempts == 0 || self.may_retry(call, policy.max_attempts, false));
            if may_send {
                let Some(body) = payload.body() else { break };
                match self.pick(call, tried.as_slice()) {
                    Ok(mut attempt) => {
                        self.begin(call, &attempt, &mut tried, "hedge");
                        let snapshot = call.snapshot();
                        let this = self.clone();
                        running.push(async move {
                            let answer = this.send(&snapshot, &mut attempt, body).await;
                            (answer, attempt)
                        });
                        next_at = Instant::now() + policy.delay;
                    }
                    Err(why) if running.is_empty() => return (self.fallback_or(call, why), None),
                    Err(_) => next_at = Instant::now() + policy.delay,
                }
            }
            if running.is_empty() {
                break;
            }
            let more = call.attempts < policy.max_attempts;
            let next = tokio::select! {
                next = running.next() => next,
                () = tokio::time::sleep_until(next_at), if more => continue,
            };
            let Some((answer, mut attempt)) = next else {
                break;
            };
            match answer {
                Answer::Committed(response) => return (Ok(response), Some(attempt)),
                Answer::Failed {
                    code,
                    message,
                    pushback,
                    response,
                    ..
                } => {
                    attempt.finish(code, response.is_none());
                    if !policy.non_fatal.contains(&code) || matches!(pushback, Some(None)) {
                        return (Err(self.failed(call, code, &message)), None);
                    }
                    last_failure = Some((code, message));
                    // A non-fatal failure sends the next hedge at once.
                    next_at = match pushback {
                        Some(Some(after)) => Instant::now() + after,
                        _ => Instant::now(),
                    };
                }
            }
        }
        let (code, message) =
            last_failure.unwrap_or((Code::Unavailable, "no attempt could be made".into()));
        (Err(self.failed(call, code, &message)), None)
    }

    fn method_metrics(&self, path: &str) -> Arc<MethodMetrics> {
        if let Some(m) = self
            .methods
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
        {
            return m.clone();
        }
        let name = path.trim_start_matches('/').to_string();
        let metrics = Arc::new(MethodMetrics {
            ok: METRICS
                .client_calls
                .with_label_values(&[self.service.as_str(), &name, "OK"]),
            duration: METRICS
                .client_duration
                .with_label_values(&[self.service.as_str(), &name]),
            name,
        });
        let mut methods = self.methods.write().unwrap_or_else(|e| e.into_inner());
        if methods.len() < METHODS_CACHED {
            methods.insert(path.to_string(), metrics.clone());
        }
        metrics
    }

    /// Counts an attempt that is about to go out (`kind` when it is not the first).
    fn begin(&self, call: &mut Call, attempt: &Attempt, tried: &mut Tried, kind: &str) {
        call.attempts += 1;
        call.last = Some(attempt.endpoint.clone());
        tried.push(attempt.index);
        if call.attempts == 1 {
            self.first_attempts.inc();
        } else {
            METRICS
                .client_attempts
                .with_label_values(&[self.service.as_str(), kind])
                .inc();
        }
    }

    fn failed(&self, call: &Call, code: Code, message: &str) -> tonic::Status {
        tonic::Status::new(code, format!("{}: {}", self.where_(call), message))
    }

    fn fallback_or(&self, call: &Call, why: NoPick) -> Result<http::Response<Body>, tonic::Status> {
        if let (NoPick::BreakerOpen(_), Some(message)) = (&why, self.fallbacks.get(call.uri.path()))
        {
            METRICS
                .client_fallbacks
                .with_label_values(&[&self.service])
                .inc();
            return Ok(fallback_response(message.clone()));
        }
        Err(self.no_pick(call, why))
    }

    /// Ends a call: metrics, the client span, a log line for failures, and the response
    /// (watched to its trailers when it is committed).
    fn end(
        self: &Arc<Self>,
        call: &Call,
        wall: Option<SystemTime>,
        result: Result<http::Response<Body>, tonic::Status>,
        attempt: Option<Attempt>,
    ) -> http::Response<Body> {
        let method = self.method_metrics(call.uri.path());
        method
            .duration
            .observe(call.started.elapsed().as_secs_f64());
        let finish = Finish {
            inner: self.clone(),
            method,
            wall,
            started: call.started,
            span: call.span,
            parent: call.parent,
            peer: call.last.clone(),
            retries: call.attempts.saturating_sub(1),
            attempt,
        };
        match result {
            Ok(response) => {
                if header(response.headers(), &GRPC_STATUS).is_some() {
                    let status = tonic::Status::from_header_map(response.headers())
                        .unwrap_or_else(|| tonic::Status::unknown("a bad grpc-status"));
                    finish.done(status.code(), status.message());
                    return response;
                }
                let (parts, body) = response.into_parts();
                http::Response::from_parts(
                    parts,
                    Watched::wrap(body, move |code, message| finish.done(code, message)),
                )
            }
            Err(status) => {
                finish.done(status.code(), status.message());
                status.into_http()
            }
        }
    }
}

fn attempt_number(call: &Call) -> u32 {
    call.attempts
}

impl Call {
    /// `package.Service/Method`, or `GET /path` for REST.
    fn method_name(&self) -> std::borrow::Cow<'_, str> {
        match &self.rest_method {
            Some(method) => format!("{method} {}", self.uri.path()).into(),
            None => self.uri.path().trim_start_matches('/').into(),
        }
    }

    fn snapshot(&self) -> Call {
        Call {
            uri: self.uri.clone(),
            rest_method: self.rest_method.clone(),
            started: self.started,
            deadline: self.deadline,
            span: self.span,
            parent: self.parent,
            trace_state: self.trace_state.clone(),
            headers: self.headers.clone(),
            key: self.key.clone(),
            attempts: self.attempts,
            last: self.last.clone(),
        }
    }
}

/// A successful gRPC response carrying `message` (a fallback).
fn fallback_response(message: Bytes) -> http::Response<Body> {
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.extend_from_slice(&[0]);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(frame.freeze())),
        Ok(Frame::trailers(trailers)),
    ];
    let mut response = http::Response::new(Body::new(http_body_util::StreamBody::new(
        futures::stream::iter(frames),
    )));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response.headers_mut().insert(
        "x-strata-fallback",
        HeaderValue::from_static("breaker-open"),
    );
    response
}

/// True when the error says the request never reached the instance.
pub(crate) fn refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            ) {
                return true;
            }
        }
        let text = e.to_string();
        if text.contains("tcp connect error") || text.contains("error trying to connect") {
            return true;
        }
        source = e.source();
    }
    false
}

fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = e.source();
    }
    false
}

pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

/// What happens when a call's final status is known.
struct Finish {
    inner: Arc<Inner>,
    method: Arc<MethodMetrics>,
    wall: Option<SystemTime>,
    started: Instant,
    span: TraceParent,
    parent: Option<[u8; 8]>,
    peer: Option<Arc<Endpoint>>,
    retries: u32,
    attempt: Option<Attempt>,
}

impl Finish {
    fn done(mut self, code: Code, message: &str) {
        if let Some(attempt) = &mut self.attempt {
            attempt.finish(code, false);
        }
        if code == Code::Ok {
            self.method.ok.inc();
        } else {
            METRICS
                .client_calls
                .with_label_values(&[&self.inner.service, &self.method.name, code_name(code)])
                .inc();
        }
        if code != Code::Ok && code != Code::Cancelled {
            tracing::warn!(
                service = %self.inner.service,
                method = %self.method.name,
                instance = self.peer.as_ref().map_or("", |p| p.id.as_str()),
                code = code_name(code),
                retries = self.retries,
                trace_id = %self.span.trace_hex(),
                error = message,
                "call failed"
            );
        }
        if let Some(start) = self.wall {
            trace::record_call(CallSpan {
                context: self.span,
                parent: self.parent,
                method: self.method.name.clone(),
                kind: SpanKind::Client,
                start,
                duration: self.started.elapsed(),
                code,
                message: message.to_string(),
                peer: self.peer.as_ref().map(|p| p.address.clone()),
                instance: self.peer.as_ref().map(|p| p.id.clone()),
                retries: self.retries,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(body: Body) -> Vec<Bytes> {
        futures::executor::block_on(async move {
            let collected = body.collect().await.unwrap();
            vec![collected.to_bytes()]
        })
    }

    #[test]
    fn a_complete_body_is_kept_whole_and_a_pending_one_streams_through_intact() {
        // One frame, then the end: kept as it is.
        let one = Body::new(http_body_util::Full::new(Bytes::from_static(b"abc")));
        match Payload::read(one).unwrap() {
            Payload::Whole(bytes) => assert_eq!(bytes, "abc"),
            Payload::Streaming(_) => panic!("a one-frame body streams"),
        }
        // Several ready frames: joined.
        let parts: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::data(Bytes::from_static(b"cd"))),
            Ok(Frame::data(Bytes::from_static(b"e"))),
        ];
        let several = Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            parts,
        )));
        let mut payload = Payload::read(several).unwrap();
        assert!(payload.retryable());
        assert_eq!(
            frames(payload.body().unwrap()),
            [Bytes::from_static(b"abcde")]
        );
        assert_eq!(
            frames(payload.body().unwrap()),
            [Bytes::from_static(b"abcde")]
        );
        // A body whose second frame is not ready yet (a client stream): sent once, whole.
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
        tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"first"))))
            .unwrap();
        let pending = Body::new(http_body_util::StreamBody::new(rx));
        let mut payload = Payload::read(pending).unwrap();
        assert!(!payload.retryable());
        let body = payload.body().unwrap();
        assert!(payload.body().is_none(), "a stream goes out once");
        tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"-second"))))
            .unwrap();
        drop(tx);
        assert_eq!(frames(body), [Bytes::from_static(b"first-second")]);
    }

    #[test]
    fn a_strata_uri_names_the_service_and_its_filters() {
        let client = || strata_client::Client::new(&["http://127.0.0.1:1".into()]);
        let builder = Consumer::from_uri(
            client(),
            "strata://orders?tag=v1&tag=eu&meta=version:v2&namespace=shop&balance=least_request",
        )
        .unwrap();
        assert_eq!(builder.selector.service, "orders");
        assert_eq!(builder.selector.tags, ["v1", "eu"]);
        assert_eq!(builder.selector.meta, [("version".into(), "v2".into())]);
        assert_eq!(builder.selector.namespace.as_deref(), Some("shop"));
        assert_eq!(builder.selector.balance, Balance::LeastRequest);
        for bad in [
            "http://orders",
            "strata://",
            "strata://a/b",
            "strata://orders?meta=x",
            "strata://orders?balance=fastest",
            "strata://orders?color=red",
        ] {
            assert!(Consumer::from_uri(client(), bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tried_remembers_in_order() {
        let mut tried = Tried::default();
        assert!(tried.as_slice().is_empty());
        for i in 0..10 {
            tried.push(i);
        }
        assert_eq!(tried.as_slice(), [0, 1, 2, 3, 4, 5, 6, 7]);
    }
}
