//! The data plane: the gateway's listener, route lookup and forwarding.
//!
//! Every request reads the current [`Live`] table once (an `Arc` clone) and uses it to the
//! end, so a reload never changes the rules under a request in flight. Forwarding uses the
//! group's connections ([`crate::pool`] for HTTP/1.1, driven in the request's own task;
//! hyper-util's pooled client for h2c); hop-by-hop headers are dropped both ways,
//! `X-Forwarded-*` and `X-Request-Id` are set, `Upgrade` (WebSocket) is passed through.

use crate::balance::HashOn;
use crate::guard::FallbackAction;
use crate::h1::Text;
use crate::metrics::{Metrics, RouteMetrics};
use crate::pool::SendError;
use crate::route::{parse_cookies, Action, CanaryChoice, Compiled, RequestView, Route};
use crate::span::{Forwarded, RequestSpan};
use crate::upstream::{build_groups, Answer, Group};
use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use strata_api::registry::RegistryService;
use strata_resilience::outlier::Outcome;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a client may take to send a request's headers (slowloris protection).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers) accepted; 431 over it.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The table in force and the groups it uses.
pub struct Live {
    /// The compiled routes.
    pub compiled: Arc<Compiled>,
    /// Upstream groups by name.
    pub groups: BTreeMap<String, Arc<Group>>,
    /// The config-center version it came from (0: none or a file).
    pub version: u64,
    /// Metrics of each route, by index in `compiled.routes`.
    route_metrics: Vec<RouteMetrics>,
    /// Metrics of requests no route matched.
    unmatched: RouteMetrics,
    /// The table's JWT providers, by name.
    pub providers: BTreeMap<String, Arc<crate::edge_auth::JwtProvider>>,
    /// The table's OpenID Connect providers, by name.
    pub oidc: BTreeMap<String, Arc<crate::oidc::OidcProvider>>,
}

/// The gateway of one node: the live table and everything requests share.
pub struct Gateway {
    live: RwLock<Arc<Live>>,
    /// Its metrics.
    pub metrics: Metrics,
    registry: Option<Arc<dyn RegistryService>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    applied: tokio::sync::watch::Sender<u64>,
    /// The table's TCP (L4) listeners.
    pub tcp: crate::tcp::TcpListeners,
    /// Certificates of the HTTPS listener.
    pub sni: Arc<crate::sni::SniCertificates>,
    /// Proxies whose `X-Forwarded-For` names the client.
    trusted: Vec<crate::edge::Cidr>,
    /// The access log, when one is configured.
    pub access_log: std::sync::OnceLock<crate::access_log::AccessLog>,
    /// The API keys, kept up to date from the KV store on a node.
    pub keys: Arc<crate::edge_auth::ApiKeys>,
    /// Where the spans of requests go, when the gateway records them.
    pub spans: std::sync::OnceLock<strata_trace::Exporter>,
}

/// Pause after a failed `accept` (out of file descriptors, say) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The next connection on `tcp`, or `None` once `cancel` fires. A failed accept is logged
/// and retried after [`ACCEPT_BACKOFF`]; the listener's other connections are unaffected.
pub(crate) async fn accept(
    tcp: &TcpListener,
    name: &str,
    cancel: &CancellationToken,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return None,
            accepted = tcp.accept() => match accepted {
                Ok(pair) => return Some(pair),
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed; retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return None,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            },
        }
    }
}

/// Marks a request that came over TLS (for `X-Forwarded-Proto`).
#[derive(Clone, Copy)]
struct Https;

/// Hop-by-hop headers (RFC 9110 section 7.6.1), never forwarded. A `static`: a `const` array
/// would be built and dropped at every use.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static TRACEPARENT: HeaderName = strata_trace::TRACEPARENT;

impl Gateway {
    /// A gateway with an empty table.
    pub fn new(
        metrics: Metrics,
        registry: Option<Arc<dyn RegistryService>>,
        tracker: TaskTracker,
        cancel: CancellationToken,
        trusted: Vec<crate::edge::Cidr>,
    ) -> Arc<Gateway> {
        let empty = Compiled::new(Default::default()).expect("the empty table is valid");
        Arc::new(Gateway {
            live: RwLock::new(Arc::new(Live {
                compiled: Arc::new(empty),
                groups: BTreeMap::new(),
                version: 0,
                route_metrics: Vec::new(),
                unmatched: metrics.route(""),
                providers: BTreeMap::new(),
                oidc: BTreeMap::new(),
            })),
            metrics,
            registry,
            tracker,
            cancel,
            applied: tokio::sync::watch::channel(0).0,
            tcp: Default::default(),
            sni: Default::default(),
            trusted,
            access_log: std::sync::OnceLock::new(),
            keys: Default::default(),
            spans: std::sync::OnceLock::new(),
        })
    }

    /// The table in force.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `compiled` (config-center version `version`) in force: requests that started
    /// before keep the old table, later ones get this one. Refused (the old table stays) when a
    /// certificate it names cannot be loaded.
    pub fn install(self: &Arc<Self>, compiled: Compiled, version: u64) -> Result<(), String> {
        self.sni.set(&compiled.source.certificates)?;
        let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
        let mut compiled = compiled;
        compiled.adopt_limits(&live.compiled);
        // JWT providers whose spec did not change keep their keys and fetcher.
        let mut providers = BTreeMap::new();
        for spec in &compiled.source.jwt_providers {
            let provider = match live.providers.get(&spec.name).filter(|p| p.spec == *spec) {
                Some(same) => same.clone(),
                None => {
                    crate::edge_auth::JwtProvider::start(spec.clone(), &self.tracker, &self.cancel)?
                }
            };
            providers.insert(spec.name.clone(), provider);
        }
        for (name, old) in &live.providers {
            if !providers.get(name).is_some_and(|p| Arc::ptr_eq(p, old)) {
                old.retire();
            }
        }
        let mut oidc = BTreeMap::new();
        for spec in &compiled.source.oidc_providers {
            let provider = match live.oidc.get(&spec.name).filter(|p| p.spec == *spec) {
                Some(same) => same.clone(),
                None => {
                    crate::oidc::OidcProvider::start(spec.clone(), &self.tracker, &self.cancel)?
                }
            };
            oidc.insert(spec.name.clone(), provider);
        }
        for (name, old) in &live.oidc {
            if !oidc.get(name).is_some_and(|p| Arc::ptr_eq(p, old)) {
                old.retire();
            }
        }
        let groups = build_groups(
            &compiled.upstreams,
            &self.metrics,
            &live.groups,
            self.registry.as_ref(),
            &self.tracker,
            &self.cancel,
        );
        let route_metrics = compiled
            .routes
            .iter()
            .map(|r| self.metrics.route(&r.name))
            .collect();
        *live = Arc::new(Live {
            compiled: Arc::new(compiled),
            groups,
            version,
            route_metrics,
            unmatched: self.metrics.route(""),
            providers,
            oidc,
        });
        let tcp_wanted = live
            .compiled
            .source
            .tcp
            .iter()
            .map(|t| (t.name.clone(), t.listen.clone()))
            .collect();
        drop(live);
        self.tcp
            .reconcile(&tcp_wanted, self, &self.tracker, &self.cancel);
        self.metrics.tables_applied.inc();
        self.metrics.table_version.set(version as i64);
        self.applied.send_replace(version);
        tracing::info!(version, "route table applied");
        Ok(())
    }

    /// Waits until a table of at least `version` is in force, up to `timeout`.
    pub async fn wait_applied(&self, version: u64, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v >= version))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Serves the gateway on `tcp` until cancelled: plain HTTP (HTTP/1.1 and h2c), or HTTPS
    /// with `tls` (HTTP/2 or HTTP/1.1 by ALPN). With `proxy_protocol`, every connection must
    /// start with a PROXY protocol header (v1 or v2), whose source address is the client.
    pub fn serve(
        self: &Arc<Self>,
        name: &'static str,
        tcp: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        proxy_protocol: bool,
    ) {
        let gateway = self.clone();
        let tracker = self.tracker.clone();
        let cancel = self.cancel.clone();
        let connections = self.metrics.connections.clone();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        self.tracker.spawn(async move {
            let graceful = hyper_util::server::graceful::GracefulShutdown::new();
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES);
            builder
                .http2()
                .initial_connection_window_size(strata_component::HTTP2_CONNECTION_WINDOW)
                .timer(hyper_util::rt::TokioTimer::new())
                .max_header_list_size(MAX_HEADER_BYTES as u32);
            loop {
                let Some((mut stream, mut client)) = accept(&tcp, name, &cancel).await else {
                    break;
                };
                let _ = stream.set_nodelay(true);
                let gateway = gateway.clone();
                let https = acceptor.is_some();
                let (watcher, builder, acceptor) =
                    (graceful.watcher(), builder.clone(), acceptor.clone());
                let connections = connections.clone();
                let cancel_for_front = cancel.clone();
                // Boxed: the connection's future is about 10 KB (the request's handling is
                // inlined in it), and a task moves its future several times as it is spawned
                // and finishes; a box is moved as one pointer.
                tracker.spawn(Box::pin(async move {
                    if proxy_protocol {
                        match crate::proxy_protocol::read_header(&mut stream, HEADER_TIMEOUT).await {
                            Ok(crate::proxy_protocol::Header::Proxied { source, .. }) => client = source,
                            Ok(crate::proxy_protocol::Header::Local) => {}
                            Err(error) => {
                                tracing::debug!(listener = name, %client, %error, "connection without a valid PROXY header closed");
                                return;
                            }
                        }
                    }
                    let gateway_for_front = gateway.clone();
                    // Boxed for the same reason: hyper's HTTP/2 server spawns a task per
                    // stream around this future, which inlines the whole exchange (~7 KB).
                    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let gateway = gateway.clone();
                        Box::pin(async move {
                            // A body left unread is read to its end after the answer (see
                            // `strata_component::drain`).
                            let request = request.map(|body| Body::new(strata_component::drain::Drained::new(body)));
                            Ok::<_, std::convert::Infallible>(gateway.handle(request, client, https, false).await.response)
                        })
                    });
                    connections.inc();
                    let result = match acceptor {
                        None => match crate::front::serve(&gateway_for_front, stream, client, &cancel_for_front).await {
                            crate::front::Ended::Closed => Ok(()),
                            crate::front::Ended::HandOver(io) => {
                                let h2 = io.is_h2();
                                let io = hyper_util::rt::TokioIo::new(strata_component::cork::Cork::new(io, h2));
                                watcher
                                    .watch(builder.serve_connection_with_upgrades(io, service).into_owned())
                                    .await
                            }
                        },
                        Some(acceptor) => {
                            match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(stream)) => {
                                    // HTTP/2 answers are written in batches (see `cork`).
                                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                                    let io = hyper_util::rt::TokioIo::new(strata_component::cork::Cork::new(stream, h2));
                                    watcher
                                        .watch(builder.serve_connection_with_upgrades(io, service).into_owned())
                                        .await
                                }
                                Ok(Err(e)) => {
                                    tracing::debug!(listener = name, %client, error = %e, "TLS handshake failed");
                                    Ok(())
                                }
                                Err(_) => Ok(()),
                            }
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(listener = name, %client, error = %e, "connection ended with an error");
                    }
                    connections.dec();
                }));
            }
            graceful.shutdown().await;
        });
    }

    /// Answers one request. `raw_answers`: the caller writes an answer's
    /// [`crate::h1::RawHeaders`] itself (the HTTP/1.1 front does), so a proxied answer's
    /// headers may stay as the upstream wrote them, with no map built for them (they come back
    /// in [`Answer::raw`]; never without `raw_answers`).
    pub async fn handle(
        &self,
        mut request: Request<Body>,
        client: SocketAddr,
        https: bool,
        raw_answers: bool,
    ) -> Answer {
        let started = Instant::now();
        if https {
            request.extensions_mut().insert(Https);
        }
        let span = RequestSpan::begin(self.spans.get(), &request, started);
        // The request id a client did not send is its trace's id (one random draw, and its
        // log lines lead to its trace).
        let (mut traceparent, trace_id) = span.as_ref().map(RequestSpan::texts).unzip();
        let mut forwarded = Forwarded::default();
        let live = self.live();
        let host_source = HostSource::of(&request);
        let host = host_source.host();
        // Text until it goes into a map (see `Text::to_value`): the usual answer writes it
        // as a line.
        let request_id = match request
            .headers()
            .get(&X_REQUEST_ID)
            .filter(|v| !v.is_empty() && v.len() <= 200)
        {
            Some(theirs) => Text::Received(theirs.clone()),
            None => Text::Made(trace_id.unwrap_or_else(new_request_id)),
        };
        let origin = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // A CORS preflight is matched as the request it announces.
        let announced = (request.method() == Method::OPTIONS && origin.is_some())
            .then(|| request.headers().get(header::ACCESS_CONTROL_REQUEST_METHOD))
            .flatten()
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
        // A single sign-on callback or logout, whatever the routes say.
        if !live.oidc.is_empty() {
            let path = request.uri().path();
            if let Some(provider) = live
                .oidc
                .values()
                .find(|p| p.callback_path() == path || p.logout_path() == path)
            {
                let origin = origin_of(&request, &host);
                let mut response = if provider.callback_path() == path {
                    let query = request.uri().query().unwrap_or_default().to_string();
                    // Boxed, as every rare branch that awaits: the request's future stays
                    // small, and hyper moves it once per request.
                    Box::pin(provider.callback(request.headers(), &query, &origin)).await
                } else {
                    provider.logout(&origin)
                };
                response
                    .headers_mut()
                    .insert(X_REQUEST_ID.clone(), request_id.to_value());
                live.unmatched
                    .observe(response.status().as_u16(), started.elapsed().as_secs_f64());
                return Answer::parsed(response);
            }
        }
        let found = live.compiled.find(&RequestView {
            method: announced.as_ref().unwrap_or(request.method()),
            host: &host,
            path: request.uri().path(),
            query: request.uri().query(),
            headers: request.headers(),
        });
        let client_ip = crate::edge::client_ip(client.ip(), request.headers(), &self.trusted);
        let matched = found.as_ref().map(|(_, route, _)| *route);
        let logged = self.access_log.get().map(|log| {
            let ts_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let record = crate::access_log::Record {
                ts_ms,
                client: client_ip,
                method: request.method().clone(),
                host: host.to_string(),
                uri: request.uri().clone(),
                status: 0,
                route: String::new(),
                member: None,
                duration_ms: 0.0,
                request_id: None,
                user_agent: request.headers().get(header::USER_AGENT).cloned(),
                protocol: match request.version() {
                    hyper::Version::HTTP_2 => "HTTP/2",
                    hyper::Version::HTTP_10 => "HTTP/1.0",
                    _ => "HTTP/1.1",
                },
            };
            (log, record)
        });
        let found_name = found
            .as_ref()
            .filter(|_| logged.is_some())
            .map(|(_, route, _)| route.name.clone())
            .unwrap_or_default();
        let (route_metrics, mut response) = match found {
            _ if !live.compiled.permits_host(&host, client_ip) => (
                found
                    .as_ref()
                    .map_or(&live.unmatched, |(index, _, _)| &live.route_metrics[*index]),
                plain(
                    StatusCode::FORBIDDEN,
                    "this address may not use this host\n",
                ),
            ),
            None => (
                &live.unmatched,
                plain(StatusCode::NOT_FOUND, "no route matches this request\n"),
            ),
            Some((index, route, _)) if !route.ips.permits(client_ip) => (
                &live.route_metrics[index],
                plain(
                    StatusCode::FORBIDDEN,
                    "this address may not use this route\n",
                ),
            ),
            Some((index, route, _)) if announced.is_some() && route.cors.is_some() => {
                let cors = route.cors.as_ref().expect("checked above");
                let asked = request
                    .headers()
                    .get(header::ACCESS_CONTROL_REQUEST_HEADERS);
                let origin = origin.as_deref().unwrap_or("");
                (&live.route_metrics[index], cors.preflight(origin, asked))
            }
            Some((index, route, params)) => {
                let cors = route.cors.as_ref().zip(origin);
                // Who is calling, when the route asks.
                let identity = match &route.auth {
                    None => Ok(None),
                    Some(auth) => {
                        let origin = origin_of(&request, &host);
                        let return_to = request
                            .uri()
                            .path_and_query()
                            .map_or("/", |p| p.as_str())
                            .to_string();
                        let context = crate::edge_auth::AuthContext {
                            jwt: &live.providers,
                            oidc: &live.oidc,
                            keys: &self.keys,
                            origin: &origin,
                            return_to: &return_to,
                        };
                        match auth.authenticate(request.headers(), &context) {
                            Ok(identity) => {
                                auth.inject(request.headers_mut(), &identity);
                                Ok(Some(identity))
                            }
                            Err((refused, why, response)) => {
                                let kind = match refused {
                                    crate::edge_auth::Refused::Unauthenticated => "unauthenticated",
                                    crate::edge_auth::Refused::Forbidden => "forbidden",
                                };
                                self.metrics
                                    .auth_refused
                                    .with_label_values(&[route.name.as_str(), kind])
                                    .inc();
                                tracing::debug!(route = %route.name, %why, "request refused at the edge");
                                Err(response)
                            }
                        }
                    }
                };
                let consumer = identity
                    .as_ref()
                    .ok()
                    .and_then(|i| i.as_ref())
                    .map(|i| i.consumer.clone());
                let admitted = if let Err(response) = identity {
                    Err(response)
                } else if route.guard.is_open() {
                    Ok(None)
                } else {
                    Box::pin(
                        route
                            .guard
                            .admit(request.headers(), client_ip, consumer.as_deref()),
                    )
                    .await
                    .map(Some)
                    .map_err(|(refusal, response)| {
                        match refusal {
                            crate::guard::Refusal::RateLimited(_) => self
                                .metrics
                                .rate_limited
                                .with_label_values(&[route.name.as_str()])
                                .inc(),
                            crate::guard::Refusal::Busy => self
                                .metrics
                                .over_capacity
                                .with_label_values(&["route", route.name.as_str()])
                                .inc(),
                        }
                        response
                    })
                };
                let response = match admitted {
                    Err(refused) => refused,
                    Ok(admitted) => {
                        let mut response = match &route.action {
                            Action::Respond {
                                status,
                                body,
                                content_type,
                            } => {
                                let mut response = Response::new(Body::from(body.clone()));
                                *response.status_mut() = *status;
                                response
                                    .headers_mut()
                                    .insert(header::CONTENT_TYPE, content_type.clone());
                                response
                            }
                            Action::Redirect { to, status } => redirect(&request, to, *status),
                            Action::Files { files, .. } => {
                                let path = route.upstream_path(request.uri().path(), &params);
                                Box::pin(files.serve(request.method(), &path, request.headers()))
                                    .await
                            }
                            Action::Proxy { upstream, .. } => {
                                // `None`: the request's own path goes upstream unchanged.
                                let path = match route.upstream_path(request.uri().path(), &params)
                                {
                                    Cow::Borrowed(_) => None,
                                    Cow::Owned(path) => Some(path),
                                };
                                let choice = route
                                    .canary
                                    .as_ref()
                                    .map(|c| (c, c.choose(request.headers())));
                                let upstream = match &choice {
                                    Some((rule, choice)) if choice.canary => rule.upstream.as_str(),
                                    _ => upstream.as_str(),
                                };
                                // The answer's headers may stay raw when nothing here reads or
                                // edits them (the gateway then adds only its request id).
                                let raw_answer = raw_answers
                                    && route.response_headers.apply_to_raw()
                                    && cors.is_none()
                                    && admitted.is_none()
                                    && choice
                                        .as_ref()
                                        .is_none_or(|(_, choice)| choice.set_cookie.is_none());
                                let onward = Onward {
                                    client,
                                    client_ip,
                                    host: &host,
                                    request_id: &request_id,
                                    traceparent: traceparent.take(),
                                    https,
                                    raw_answer,
                                    started,
                                };
                                let mut response = self
                                    .forward(
                                        &live,
                                        route,
                                        upstream,
                                        path,
                                        request,
                                        &onward,
                                        &mut forwarded,
                                    )
                                    .await;
                                if let Some((
                                    _,
                                    CanaryChoice {
                                        set_cookie: Some(cookie),
                                        ..
                                    },
                                )) = choice
                                {
                                    response.headers_mut().append(header::SET_COOKIE, cookie);
                                }
                                response
                            }
                        };
                        if let Some(admitted) = admitted {
                            admitted.decorate(response.headers_mut());
                        }
                        response
                    }
                };
                // An answer's raw lines are edited where they are (its map is empty).
                let mut response = match forwarded.raw.as_deref_mut() {
                    Some(raw) => {
                        route.response_headers.apply_raw(raw);
                        response
                    }
                    None => response_with_edits(route, response),
                };
                if let Some((cors, origin)) = cors {
                    cors.decorate(&origin, response.headers_mut());
                }
                (&live.route_metrics[index], response)
            }
        };
        // An answer whose lines stay raw carries the id beside them; an answer with a map, in it.
        let logged_id = logged.as_ref().map(|_| request_id.clone());
        match forwarded.raw.as_deref_mut() {
            Some(raw) => raw.request_id = Some(request_id),
            None => {
                response
                    .headers_mut()
                    .insert(X_REQUEST_ID.clone(), request_id.to_value());
            }
        }
        // One clock read for the metrics, the span and the access log (none when a member
        // answered: its answer's arrival is the end).
        let took = forwarded
            .answered
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(started);
        route_metrics.observe(response.status().as_u16(), took.as_secs_f64());
        let finished =
            span.and_then(|span| span.finish(matched, &response, &forwarded, client_ip, took));
        if let (Some(exporter), Some(finished)) = (self.spans.get(), finished) {
            exporter.record(finished);
        }
        if let Some((log, mut record)) = logged {
            record.status = response.status().as_u16();
            record.route = found_name;
            // The member whose answer was passed on (none when the gateway answered).
            record.member = forwarded.answered.and(forwarded.member.take());
            record.duration_ms = took.as_secs_f64() * 1000.0;
            record.request_id = logged_id;
            log.log(record);
        }
        Answer {
            response,
            raw: forwarded.raw,
        }
    }

    /// Forwards to `upstream` through its circuit breaker (open: the route's fallback) and
    /// concurrency limit.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        live: &Live,
        route: &Route,
        upstream: &str,
        path: Option<String>,
        request: Request<Body>,
        onward: &Onward<'_>,
        forwarded: &mut Forwarded,
    ) -> Response<Body> {
        let Some(group) = live.groups.get(upstream) else {
            return plain(StatusCode::BAD_GATEWAY, "upstream group is missing\n");
        };
        forwarded.upstream = Some(group.clone());
        let permit = match &group.breaker {
            None => None,
            Some(breaker) => {
                let (acquired, transition) = breaker.try_acquire();
                if let Some(transition) = transition {
                    self.breaker_changed(group, None, breaker, transition);
                }
                match acquired {
                    Ok(permit) => Some(permit),
                    Err(rejected) => {
                        self.metrics
                            .breaker_rejected
                            .with_label_values(&[upstream])
                            .inc();
                        return match &route.guard.fallback {
                            Some(FallbackAction::Respond {
                                status,
                                body,
                                content_type,
                            }) => {
                                let mut response = Response::new(Body::from(body.clone()));
                                *response.status_mut() = *status;
                                response
                                    .headers_mut()
                                    .insert(header::CONTENT_TYPE, content_type.clone());
                                response
                            }
                            Some(FallbackAction::Upstream(other)) if other != upstream => {
                                Box::pin(
                                    self.forward(
                                        live, route, other, path, request, onward, forwarded,
                                    ),
                                )
                                .await
                            }
                            _ => {
                                let mut response = plain(
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    &format!("upstream {upstream:?} is failing: its circuit breaker is open\n"),
                                );
                                let seconds = rejected.retry_after.as_secs()
                                    + u64::from(rejected.retry_after.subsec_nanos() > 0);
                                response
                                    .headers_mut()
                                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
                                response
                            }
                        };
                    }
                }
            }
        };
        let _slot = match &group.concurrency {
            None => None,
            Some(limit) => match limit.try_acquire() {
                Some(slot) => Some(slot),
                None => {
                    self.metrics
                        .over_capacity
                        .with_label_values(&["upstream", upstream])
                        .inc();
                    let mut response = plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many requests to this upstream in flight\n",
                    );
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return response;
                }
            },
        };
        let (response, failed) = self
            .attempts(group, route, upstream, path, request, onward, forwarded)
            .await;
        if let (Some(breaker), Some(permit)) = (&group.breaker, permit) {
            if let Some(transition) = breaker.record(permit, failed) {
                self.breaker_changed(group, None, breaker, transition);
            }
        }
        response
    }

    /// Counts, shows and logs (once) a breaker's change of state; a member's open breaker
    /// keeps the balancer away from it for the wait.
    fn breaker_changed(
        &self,
        group: &Group,
        member: Option<&crate::balance::Endpoint>,
        breaker: &strata_resilience::breaker::CircuitBreaker,
        transition: strata_resilience::breaker::Transition,
    ) {
        let upstream = group.spec.name.as_str();
        let address = member.map_or("", |m| m.address.as_str());
        if let Some(member) = member {
            let until = if transition.to == strata_resilience::breaker::State::Open {
                crate::balance::now_ms() + breaker.config().wait_in_open.0.as_millis() as u64
            } else {
                0
            };
            member.breaker_open_until.store(until, Ordering::Relaxed);
        }
        self.metrics
            .breaker_transitions
            .with_label_values(&[
                upstream,
                address,
                transition.from.as_str(),
                transition.to.as_str(),
            ])
            .inc();
        for state in strata_resilience::breaker::State::ALL {
            self.metrics
                .breaker_state
                .with_label_values(&[upstream, address, state.as_str()])
                .set(i64::from(state == transition.to));
        }
        if transition.to == strata_resilience::breaker::State::Open {
            tracing::warn!(%upstream, member = address, from = transition.from.as_str(), "circuit breaker opened");
        } else {
            tracing::info!(%upstream, member = address, from = transition.from.as_str(), to = transition.to.as_str(), "circuit breaker changed state");
        }
    }

    /// Sends the request to members, retrying as the route allows; returns the answer and
    /// whether it counts as a failure for the group's breaker.
    #[allow(clippy::too_many_arguments)]
    async fn attempts(
        &self,
        group: &Group,
        route: &Route,
        upstream: &str,
        path: Option<String>,
        mut request: Request<Body>,
        onward: &Onward<'_>,
        forwarded: &mut Forwarded,
    ) -> (Response<Body>, bool) {
        let raw_answer = onward.raw_answer;
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > route.max_body) {
            return (
                plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body is over the route's limit\n",
                ),
                false,
            );
        }
        let members = group.members();
        if members.endpoints.is_empty() {
            let mut response = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("upstream {upstream:?} has no live members\n"),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return (response, true);
        }
        let key = if matches!(
            group.spec.balance,
            crate::model::Balance::RingHash | crate::model::Balance::Maglev
        ) {
            hash_key(group.hash_on.as_ref(), request.headers(), onward.client_ip)
        } else {
            None
        };
        let upgrade = is_upgrade(request.headers()).then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        let empty_body = declared == Some(0)
            || (declared.is_none()
                && !parts.headers.contains_key(header::TRANSFER_ENCODING)
                && hyper::body::Body::is_end_stream(&body));
        // Only a request without a body can be sent again (the body streams once). One that
        // never reached a member (connection refused) may always go to another; one that may
        // have, only when its method is idempotent.
        let resendable = empty_body && upgrade.is_none();
        let safe_to_repeat =
            resendable && (idempotent(&parts.method) || route.guard.retry_non_idempotent);
        // The forwarding headers go as lines of their own when the route's edits leave them
        // alone (they are made to the map) and the member speaks HTTP/1.1 through the
        // gateway's own pool.
        let mut added = Vec::new();
        let lines = group.writes_head_itself()
            && upgrade.is_none()
            && !route.request_headers.touches(&FORWARDING);
        prepare_headers(
            &mut parts.headers,
            onward,
            upgrade.is_some(),
            lines.then_some(&mut added),
        );
        if group.spec.protocol == crate::model::Protocol::H2c {
            parts.headers.remove(header::HOST);
        }
        route.request_headers.apply(&mut parts.headers);
        let Some(uri) = upstream_uri(&parts.uri, path.as_deref()) else {
            return (
                plain(
                    StatusCode::BAD_REQUEST,
                    "the rewritten path is not a valid URI\n",
                ),
                false,
            );
        };
        let limit = route.max_body;
        let mut body = Some(if empty_body {
            Body::empty()
        } else {
            let upload = match route.idle_timeout {
                Some(idle) => Body::new(crate::idle::IdleBody::new(body, idle)),
                None => Body::new(body),
            };
            Body::new(
                http_body_util::Limited::new(upload, usize::try_from(limit).unwrap_or(usize::MAX))
                    .map_err(|e| std::io::Error::other(e.to_string())),
            )
        });
        let mut headers = Some(parts.headers);
        // From the request's arrival (no clock read of its own).
        let deadline = tokio::time::Instant::from_std(onward.started) + route.timeout;
        let mut tried = Tried::default();
        loop {
            if tried.len() >= members.endpoints.len() && !tried.is_empty() {
                return (
                    plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "every member's circuit breaker is open\n",
                    ),
                    true,
                );
            }
            let Some(index) = members.pick(key.as_deref(), tried.as_slice()) else {
                return (
                    plain(StatusCode::SERVICE_UNAVAILABLE, "no live members\n"),
                    true,
                );
            };
            tried.push(index);
            let endpoint = &members.endpoints[index];
            let member_permit = match endpoint.breaker.get() {
                None => None,
                Some(breaker) => {
                    let (acquired, transition) = breaker.try_acquire();
                    if let Some(transition) = transition {
                        self.breaker_changed(group, Some(endpoint), breaker, transition);
                    }
                    match acquired {
                        Ok(permit) => Some((breaker, permit)),
                        Err(_) => {
                            self.metrics
                                .breaker_rejected
                                .with_label_values(&[upstream])
                                .inc();
                            continue;
                        }
                    }
                }
            };
            let mut outgoing = Request::new(body.take().unwrap_or_else(Body::empty));
            *outgoing.method_mut() = parts.method.clone();
            *outgoing.uri_mut() = uri.clone();
            // A hedge: a second member gets the same request if the first is slow (idempotent
            // requests without a body only, and not with per-member breakers).
            let hedge = route.guard.hedge_after.filter(|_| {
                safe_to_repeat
                    && tried.len() == 1
                    && members.endpoints.len() > 1
                    && endpoint.breaker.get().is_none()
            });
            // The headers are kept for another attempt only when there can be one (a retry
            // goes to another member).
            let another_attempt =
                (route.retries > 0 && members.endpoints.len() > 1) || hedge.is_some();
            *outgoing.headers_mut() = match (resendable && another_attempt, headers.take()) {
                (true, Some(h)) => {
                    let copy = h.clone();
                    headers = Some(h);
                    copy
                }
                (_, Some(h)) => h,
                (_, None) => HeaderMap::new(),
            };
            forwarded.attempts += 1;
            endpoint.requests.fetch_add(1, Ordering::Relaxed);
            if tried.len() == 1 {
                group.retry_budget.deposit();
            }
            endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
            let sent = Instant::now();
            let upgrading = upgrade.is_some();
            let (answer, answered_by) = match hedge {
                None => (
                    group
                        .send(
                            &endpoint.address,
                            outgoing,
                            safe_to_repeat,
                            upgrading,
                            raw_answer,
                            &added,
                            deadline,
                        )
                        .await,
                    index,
                ),
                Some(after) => {
                    // Boxed, like the race: hedging is rare, and unboxed this future would
                    // double the size of every request's.
                    let mut first = Box::pin(group.send(
                        &endpoint.address,
                        outgoing,
                        safe_to_repeat,
                        upgrading,
                        raw_answer,
                        &added,
                        deadline,
                    ));
                    let raced = Box::pin(tokio::time::timeout_at(deadline, async {
                        tokio::select! {
                            answer = &mut first => return (answer, index),
                            () = tokio::time::sleep(after) => {}
                        }
                        let Some(other) = members
                            .pick(key.as_deref(), tried.as_slice())
                            .filter(|other| *other != index)
                        else {
                            return (first.await, index);
                        };
                        self.metrics.hedges.with_label_values(&[upstream]).inc();
                        let spare = &members.endpoints[other];
                        spare.requests.fetch_add(1, Ordering::Relaxed);
                        let mut second = Request::new(Body::empty());
                        *second.method_mut() = parts.method.clone();
                        *second.uri_mut() = uri.clone();
                        *second.headers_mut() = headers.clone().unwrap_or_default();
                        tokio::select! {
                            answer = &mut first => (answer, index),
                            answer = group.send(&spare.address, second, safe_to_repeat, false, raw_answer, &added, deadline) => (answer, other),
                        }
                    }))
                    .await;
                    raced.unwrap_or((Err(SendError::TimedOut), index))
                }
            };
            // The deadline apart from the other ways an exchange fails.
            let answer = match answer {
                Err(SendError::TimedOut) => Err(()),
                answer => Ok(answer),
            };
            endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
            let (index, endpoint) = (answered_by, &members.endpoints[answered_by]);
            forwarded.member = Some(endpoint.clone());
            // What the breakers and outlier detection make of it (the route may count
            // failures its own way).
            let failure_on = route.guard.failure_on.as_ref().unwrap_or(&group.failure_on);
            let mut answered = None;
            let (failed, outcome) = match &answer {
                Ok(Ok(answer)) => {
                    let status = answer.response.status().as_u16();
                    let now = Instant::now();
                    answered = Some(now);
                    let waited = now.saturating_duration_since(sent);
                    group.metrics.observe(status, waited.as_secs_f64());
                    (
                        failure_on.status(status),
                        if status >= 500 {
                            Outcome::Status(status)
                        } else {
                            Outcome::Success
                        },
                    )
                }
                Ok(Err(error)) if error.is_connect() => (failure_on.connect, Outcome::LocalFailure),
                Ok(Err(_)) => (failure_on.reset, Outcome::LocalFailure),
                Err(_) => (failure_on.timeout, Outcome::LocalFailure),
            };
            if let Some((breaker, permit)) = member_permit {
                if let Some(transition) = breaker.record(permit, failed) {
                    self.breaker_changed(group, Some(endpoint), breaker, transition);
                }
            }
            if let Some(detector) = &group.detector {
                let hosts: Vec<_> = members.endpoints.iter().map(|e| &e.outlier).collect();
                if let Some(ejection) = detector.record(&hosts, index, outcome) {
                    crate::upstream::report_ejection(group, &self.metrics, endpoint, ejection);
                }
            }
            let failure = |kind: &str| {
                endpoint.failures.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .upstream_failures
                    .with_label_values(&[upstream, kind])
                    .inc();
            };
            // Whether another attempt is allowed (and paid for from the budget).
            let may_retry = |allowed: bool| {
                if !(allowed
                    && tried.len() as u32 <= route.retries
                    && tried.len() < members.endpoints.len())
                {
                    return false;
                }
                if group.retry_budget.withdraw() {
                    self.metrics.retries.with_label_values(&[upstream]).inc();
                    true
                } else {
                    self.metrics
                        .retries_refused
                        .with_label_values(&[upstream])
                        .inc();
                    false
                }
            };
            match answer {
                Err(_) => {
                    failure("timeout");
                    forwarded.failure = Some("timeout");
                    return (
                        plain(
                            StatusCode::GATEWAY_TIMEOUT,
                            "the upstream did not answer in time\n",
                        ),
                        failed,
                    );
                }
                Ok(Ok(Answer { response, raw })) => {
                    endpoint.connected();
                    let overloaded = matches!(response.status().as_u16(), 502..=504);
                    if overloaded && may_retry(safe_to_repeat) {
                        failure("status");
                        tracing::debug!(%upstream, member = %endpoint.address, status = %response.status(), "member answered 502-504; trying another member");
                        Box::pin(self.back_off(route, tried.len(), deadline)).await;
                        continue;
                    }
                    let mut response = finish_response(response, upgrade, &self.tracker);
                    if let Some(idle) = route.idle_timeout {
                        response =
                            response.map(|body| Body::new(crate::idle::IdleBody::new(body, idle)));
                    }
                    forwarded.raw = raw;
                    forwarded.answered = answered;
                    return (response, failed);
                }
                Ok(Err(error)) => {
                    let connect = error.is_connect();
                    failure(if connect { "connect" } else { "reset" });
                    if connect {
                        endpoint.eject();
                    }
                    if may_retry(if connect { resendable } else { safe_to_repeat }) {
                        tracing::debug!(%upstream, member = %endpoint.address, error = %error, "exchange failed; trying another member");
                        if !connect {
                            Box::pin(self.back_off(route, tried.len(), deadline)).await;
                        }
                        continue;
                    }
                    if limit_exceeded(&error) {
                        return (
                            plain(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                "request body is over the route's limit\n",
                            ),
                            false,
                        );
                    }
                    tracing::debug!(%upstream, member = %endpoint.address, error = %error, "upstream exchange failed");
                    forwarded.failure = Some(if connect { "connect" } else { "reset" });
                    return (
                        plain(StatusCode::BAD_GATEWAY, "the upstream failed to answer\n"),
                        failed,
                    );
                }
            }
        }
    }

    /// Waits before retry number `attempt` (the route's backoff), but not past `deadline`.
    async fn back_off(&self, route: &Route, attempt: usize, deadline: tokio::time::Instant) {
        let delay = route.guard.backoff.delay(attempt as u32);
        if !delay.is_zero() {
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + delay)).await;
        }
    }
}

/// The origin-form URI that goes upstream: the request's own path and query (`path` `None`),
/// or `path` with the request's query. `None` when that is not a valid origin-form URI.
fn upstream_uri(uri: &Uri, path: Option<&str>) -> Option<Uri> {
    let uri = match path {
        None if uri.scheme().is_none() && uri.authority().is_none() => uri.clone(),
        None => Uri::from(uri.path_and_query()?.clone()),
        Some(path) => {
            let text = match uri.query() {
                Some(query) => format!("{path}?{query}"),
                None => path.to_string(),
            };
            Uri::try_from(text).ok()?
        }
    };
    uri.path().starts_with('/').then_some(uri)
}

/// The members a request was sent to, in order: inline for the usual one or two, so a request
/// allocates nothing for it.
#[derive(Default)]
struct Tried {
    inline: [usize; 4],
    length: usize,
    /// All of them, once there are more than fit inline.
    spilled: Vec<usize>,
}

impl Tried {
    fn push(&mut self, index: usize) {
        if self.length < self.inline.len() {
            self.inline[self.length] = index;
        } else {
            if self.spilled.is_empty() {
                self.spilled.extend_from_slice(&self.inline);
            }
            self.spilled.push(index);
        }
        self.length += 1;
    }

    fn as_slice(&self) -> &[usize] {
        if self.spilled.is_empty() {
            &self.inline[..self.length]
        } else {
            &self.spilled
        }
    }

    fn len(&self) -> usize {
        self.length
    }

    fn is_empty(&self) -> bool {
        self.length == 0
    }
}

/// True when the body-size limit cut the upload short.
fn limit_exceeded(error: &SendError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.to_string().contains("length limit exceeded") {
            return true;
        }
        source = e.source();
    }
    false
}

/// Strips hop-by-hop headers from the upstream's answer and splices an upgraded connection.
fn finish_response(
    response: Response<Body>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    tracker: &TaskTracker,
) -> Response<Body> {
    let mut response = response;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tracker.spawn(async move {
                let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await)
                else {
                    return;
                };
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut upstream = hyper_util::rt::TokioIo::new(upstream);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
            let (parts, _) = response.into_parts();
            return Response::from_parts(parts, Body::empty());
        }
    }
    // The client's connection has its own version; hyper picks the wire format from it.
    *response.version_mut() = hyper::Version::HTTP_11;
    // One pass over the names, then a removal for each one there (an answer carries one or
    // two at most, typically `Connection: keep-alive`), rather than a lookup for each of the
    // eight names.
    let headers = response.headers_mut();
    let mut present = [false; 9];
    for name in headers.keys() {
        if let Some(index) = HOP_BY_HOP
            .iter()
            .chain([&header::UPGRADE])
            .position(|hop| hop == name)
        {
            present[index] = true;
        }
    }
    for (name, present) in HOP_BY_HOP.iter().chain([&header::UPGRADE]).zip(present) {
        if present && *name != header::TRAILER {
            headers.remove(name);
        }
    }
    response
}

fn response_with_edits(route: &Route, mut response: Response<Body>) -> Response<Body> {
    route.response_headers.apply(response.headers_mut());
    response
}

/// Who sent a request and what the gateway tells its member about it: the values of the
/// forwarding headers (`X-Forwarded-For`, `-Proto`, `-Host`), `X-Request-Id` and
/// `traceparent`, and whether an answer's headers may stay raw.
struct Onward<'a> {
    client: SocketAddr,
    client_ip: std::net::IpAddr,
    /// The host as matched (no port, lower case).
    host: &'a str,
    request_id: &'a Text,
    /// `None`: the request's trace is not followed (no span), so none is sent.
    traceparent: Option<Bytes>,
    https: bool,
    raw_answer: bool,
    /// When the request arrived: its route's timeout counts from here.
    started: Instant,
}

/// The headers the gateway sets on every request it forwards (a client's own are replaced).
static FORWARDING: [&HeaderName; 5] = [
    &X_FORWARDED_FOR,
    &X_FORWARDED_PROTO,
    &X_FORWARDED_HOST,
    &X_REQUEST_ID,
    &TRACEPARENT,
];

/// Drops hop-by-hop headers (keeping `Connection: upgrade` for an upgrade and `TE: trailers`
/// for gRPC) and sets the forwarding headers of `onward`: in the map, or (`lines` given) as
/// header lines for an HTTP/1.1 member, written after the map's own. Lines cost less: each
/// name outside the standard set is hashed byte by byte when it goes into a map.
fn prepare_headers(
    headers: &mut HeaderMap,
    onward: &Onward<'_>,
    upgrade: bool,
    lines: Option<&mut Vec<u8>>,
) {
    // Most requests carry no hop-by-hop header and none of the gateway's own: one pass over
    // the names (cheaper than a lookup per name) finds that, and then there is nothing to drop.
    let (mut hop, mut ours) = (false, false);
    for name in headers.keys() {
        if HOP_BY_HOP.contains(name) || name == header::UPGRADE {
            hop = true;
        } else if FORWARDING.contains(&name) {
            ours = true;
        }
    }
    if hop {
        drop_hop_by_hop(headers, upgrade);
    }
    // The address as text on the stack (the longest IPv6 text is 45 bytes).
    let mut ip = std::io::Cursor::new([0u8; 64]);
    write_ip(&mut ip, onward.client.ip());
    let ip = &ip.get_ref()[..ip.position() as usize];
    let earlier = if ours {
        headers
            .get(&X_FORWARDED_FOR)
            .filter(|v| v.to_str().is_ok())
            .map(|v| v.as_bytes().to_vec())
    } else {
        None
    };
    let proto = if onward.https { "https" } else { "http" };
    // The `Host` header's own value when it is the host as matched, which is the usual case.
    let host = onward.host.as_bytes();
    // What `HeaderValue::from_str` accepts (visible ASCII, spaces and tabs).
    let host_valid = host
        .iter()
        .all(|&b| b == b'\t' || (b' '..0x7f).contains(&b));
    let Some(out) = lines else {
        // Room for the five set below at once: growing the map one insert at a time
        // reallocates it more than once.
        headers.reserve(5);
        let forwarded_for = match &earlier {
            None => HeaderValue::from_bytes(ip),
            Some(earlier) => HeaderValue::from_bytes(&[earlier, &b", "[..], ip].concat()),
        };
        if let Ok(value) = forwarded_for {
            headers.insert(X_FORWARDED_FOR.clone(), value);
        }
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
        let same = headers
            .get(header::HOST)
            .filter(|v| v.as_bytes() == host)
            .cloned();
        if let Some(value) = same.or_else(|| HeaderValue::from_str(onward.host).ok()) {
            headers.insert(X_FORWARDED_HOST.clone(), value);
        } else {
            headers.remove(&X_FORWARDED_HOST);
        }
        headers.insert(X_REQUEST_ID.clone(), onward.request_id.to_value());
        if let Some(traceparent) = &onward.traceparent {
            let value = Text::Made(traceparent.clone()).to_value();
            headers.insert(strata_trace::TRACEPARENT, value);
        }
        return;
    };
    if ours {
        // A client's `traceparent` goes on unchanged when the gateway sends none of its own.
        let replaced = if onward.traceparent.is_some() {
            &FORWARDING[..]
        } else {
            &FORWARDING[..4]
        };
        for name in replaced {
            headers.remove(*name);
        }
    }
    // Sized once: the names, ~150 bytes of ids, and what varies.
    out.reserve(224 + host.len() + earlier.as_ref().map_or(0, Vec::len));
    let mut line = |name: &HeaderName, parts: &[&[u8]]| {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        for part in parts {
            out.extend_from_slice(part);
        }
        out.extend_from_slice(b"\r\n");
    };
    match &earlier {
        None => line(&X_FORWARDED_FOR, &[ip]),
        Some(earlier) => line(&X_FORWARDED_FOR, &[earlier, b", ", ip]),
    }
    line(&X_FORWARDED_PROTO, &[proto.as_bytes()]);
    if host_valid {
        line(&X_FORWARDED_HOST, &[host]);
    }
    line(&X_REQUEST_ID, &[onward.request_id.as_bytes()]);
    if let Some(traceparent) = &onward.traceparent {
        line(&strata_trace::TRACEPARENT, &[&traceparent[..]]);
    }
}

/// Writes `ip` as text, as its `Display` does (without the formatting machinery for IPv4).
fn write_ip(out: &mut impl std::io::Write, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut text = [0u8; 15];
            let mut length = 0;
            for (index, octet) in v4.octets().into_iter().enumerate() {
                if index > 0 {
                    text[length] = b'.';
                    length += 1;
                }
                if octet >= 100 {
                    text[length] = b'0' + octet / 100;
                    length += 1;
                }
                if octet >= 10 {
                    text[length] = b'0' + octet / 10 % 10;
                    length += 1;
                }
                text[length] = b'0' + octet % 10;
                length += 1;
            }
            let _ = out.write_all(&text[..length]);
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Drops the hop-by-hop headers and those `Connection` names, keeping `Connection: upgrade`
/// for an upgrade and `TE: trailers` (gRPC).
fn drop_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(upgrade && name == header::UPGRADE))
        .collect();
    let trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for name in HOP_BY_HOP.iter().chain(&listed) {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// `http(s)://host[:port]` as the client addressed the gateway (for redirects back to it).
fn origin_of<B>(request: &Request<B>, host: &str) -> String {
    let scheme = if request.extensions().get::<Https>().is_some() {
        "https"
    } else {
        "http"
    };
    let authority = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or(host);
    format!("{scheme}://{authority}")
}

/// What ring hash hashes for this request; `None` picks a random point.
fn hash_key(
    hash_on: Option<&HashOn>,
    headers: &HeaderMap,
    client: std::net::IpAddr,
) -> Option<Vec<u8>> {
    match hash_on {
        None | Some(HashOn::ClientIp) => Some(client.to_string().into_bytes()),
        Some(HashOn::Header(name)) => headers.get(name).map(|v| v.as_bytes().to_vec()),
        Some(HashOn::Cookie(name)) => parse_cookies(headers)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_bytes()),
    }
}

/// The request's host without port, lower case: from the URI (HTTP/2, absolute form) or the
/// `Host` header.
/// Where a request names its host: its URI's authority (absolute form, HTTP/2) or else its
/// `Host` header. A copy that shares the request's bytes, so that the host can be borrowed
/// from it while the request itself moves on.
enum HostSource {
    Authority(hyper::http::uri::Authority),
    Header(HeaderValue),
    Missing,
}

impl HostSource {
    fn of<B>(request: &Request<B>) -> Self {
        if let Some(authority) = request.uri().authority() {
            return HostSource::Authority(authority.clone());
        }
        match request.headers().get(header::HOST) {
            Some(value) => HostSource::Header(value.clone()),
            None => HostSource::Missing,
        }
    }

    /// The host as routes match it: no port, no IPv6 brackets, lower case; empty when the
    /// header is not visible ASCII. Borrowed unless it had to be lowered (a copy for every
    /// request cost an allocation and its free), and found in one pass over bytes.
    fn host(&self) -> Cow<'_, str> {
        let bytes = match self {
            HostSource::Authority(authority) => authority.host().as_bytes(),
            HostSource::Header(value) => {
                let value = value.as_bytes();
                match value.iter().rposition(|&b| b == b':') {
                    Some(colon)
                        if colon > 0 && value[colon + 1..].iter().all(u8::is_ascii_digit) =>
                    {
                        &value[..colon]
                    }
                    _ => value,
                }
            }
            HostSource::Missing => b"",
        };
        let mut bytes = bytes;
        while let [b'[', rest @ ..] = bytes {
            bytes = rest;
        }
        while let [rest @ .., b']'] = bytes {
            bytes = rest;
        }
        let mut upper = false;
        for &b in bytes {
            // What `HeaderValue::to_str` accepts.
            if !(b == b'\t' || (b' '..0x7f).contains(&b)) {
                return Cow::Borrowed("");
            }
            upper |= b.is_ascii_uppercase();
        }
        let text = std::str::from_utf8(bytes).unwrap_or_default();
        if upper {
            Cow::Owned(text.to_ascii_lowercase())
        } else {
            Cow::Borrowed(text)
        }
    }
}

fn redirect<B>(request: &Request<B>, to: &str, status: StatusCode) -> Response<Body> {
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let location = to
        .replace("{path}", request.uri().path())
        .replace("{query}", &query);
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            response.headers_mut().insert(header::LOCATION, value);
            response
        }
        Err(_) => plain(
            StatusCode::BAD_REQUEST,
            "the redirect target is not a valid header\n",
        ),
    }
}

pub(crate) fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(Bytes::copy_from_slice(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A random request id: 32 lowercase hex digits.
fn new_request_id() -> Bytes {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let id: u128 = rand::random();
    let mut hex = [0u8; 32];
    for (index, digit) in hex.iter_mut().enumerate() {
        *digit = DIGITS[((id >> (124 - 4 * index)) & 0xf) as usize];
    }
    // Owner-backed: one allocation holds the bytes, and the clone that goes upstream only
    // counts a reference (a copied slice would allocate again when first cloned).
    Bytes::from_owner(hex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `prepare_headers` as it was before its fast paths: every hop-by-hop name looked up and
    /// the forwarding headers formatted; the reference the fast version must equal.
    fn prepare_headers_reference(
        headers: &mut HeaderMap,
        client: SocketAddr,
        host: &str,
        request_id: &HeaderValue,
        upgrade: bool,
        https: bool,
    ) {
        drop_hop_by_hop(headers, upgrade);
        let ip = client.ip().to_string();
        let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {ip}"),
            None => ip,
        };
        if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
            headers.insert(X_FORWARDED_FOR.clone(), value);
        }
        let proto = if https { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
        if let Ok(value) = HeaderValue::from_str(host) {
            headers.insert(X_FORWARDED_HOST.clone(), value);
        }
        headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    }

    /// Headers drawn from those the forwarding code treats specially, and some others.
    fn headers() -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
        let names = prop::sample::select(vec![
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-request-id",
            "traceparent",
            "host",
            "x-custom",
            "accept",
        ]);
        let values = prop::sample::select(vec![
            "close",
            "keep-alive",
            "upgrade",
            "Upgrade, x-custom",
            "trailers",
            "gzip, trailers",
            "websocket",
            "10.0.0.1",
            "api.example.com",
            "a\u{7f}b",
        ]);
        prop::collection::vec((names, values), 0..8)
    }

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.append(*name, value);
            }
        }
        headers
    }

    fn sorted(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        let mut all: Vec<_> = headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
            .collect();
        all.sort();
        all
    }

    proptest! {
        #[test]
        fn prepare_headers_equals_the_reference(
            pairs in headers(),
            v6 in any::<bool>(),
            octets in any::<[u8; 4]>(),
            https in any::<bool>(),
            traced in any::<bool>(),
            host in prop::sample::select(vec!["api.example.com", "10.0.0.1", ""]),
        ) {
            let client = if v6 {
                SocketAddr::from((std::net::Ipv6Addr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(octets[0])]), 1))
            } else {
                SocketAddr::from((octets, 1))
            };
            let upgrade = is_upgrade(&map(&pairs));
            let request_id = Text::Made(new_request_id());
            let traceparent = traced.then(|| strata_trace::TraceParent::root(true).texts().0);
            let onward = Onward {
                client,
                client_ip: client.ip(),
                host,
                request_id: &request_id,
                traceparent: traceparent.clone(),
                https,
                raw_answer: false,
                started: Instant::now(),
            };
            let mut reference = map(&pairs);
            prepare_headers_reference(&mut reference, client, host, &request_id.to_value(), upgrade, https);
            if let Some(traceparent) = traceparent {
                reference.insert(strata_trace::TRACEPARENT, HeaderValue::from_maybe_shared(traceparent).unwrap());
            }
            let mut fast = map(&pairs);
            prepare_headers(&mut fast, &onward, upgrade, None);
            prop_assert_eq!(sorted(&fast), sorted(&reference));
            // As lines after the map's own: the same headers once the lines are parsed back.
            let (mut rest, mut lines) = (map(&pairs), Vec::new());
            prepare_headers(&mut rest, &onward, upgrade, Some(&mut lines));
            let text = String::from_utf8(lines).unwrap();
            prop_assert!(text.is_empty() || text.ends_with("\r\n"));
            for line in text.split_terminator("\r\n") {
                let (name, value) = line.split_once(": ").unwrap();
                prop_assert!(!rest.contains_key(name), "{} twice", name);
                rest.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
            }
            prop_assert_eq!(sorted(&rest), sorted(&reference));
        }

        #[test]
        fn finish_response_drops_hop_by_hop_headers_but_trailer(pairs in headers()) {
            let mut response = Response::new(Body::empty());
            *response.headers_mut() = map(&pairs);
            let mut expected = map(&pairs);
            for name in HOP_BY_HOP.iter().chain([&header::UPGRADE]) {
                if *name != header::TRAILER {
                    expected.remove(name);
                }
            }
            let finished = finish_response(response, None, &TaskTracker::new());
            prop_assert_eq!(sorted(finished.headers()), sorted(&expected));
        }

        /// An answer whose headers stay raw reaches an HTTP/1.1 client as one parsed into a
        /// map does, once `finish_response` dropped the hop-by-hop headers, the route's
        /// response header edits were made (to the raw lines when they may be, else to the
        /// map) and the gateway set its request id: the same head lines (order and the names'
        /// case aside), framing and connection reuse.
        #[test]
        fn a_raw_answer_is_written_as_a_parsed_one(
            pairs in answer_headers(),
            status in prop::sample::select(vec![200u16, 204, 304, 404, 101]),
            head_request: bool,
            http10: bool,
            edits in header_ops(),
        ) {
            let edits = crate::route::HeaderEdits::new("r", "response_headers", &edits).unwrap();
            let mut wire = format!("HTTP/1.{} {status} X\r\n", u8::from(!http10));
            for (name, value) in &pairs {
                wire.push_str(&format!("{name}: {value}\r\n"));
            }
            wire.push_str("\r\nbody");
            let parse = |raw| crate::h1::parse_answer(&mut wire.as_bytes().into(), head_request, raw);
            let (parsed, raw) = match (parse(false), parse(true)) {
                (Ok(Some(parsed)), Ok(Some(raw))) => (parsed, raw),
                (Err(_), Err(_)) => return Ok(()),
                (parsed, raw) => {
                    return Err(TestCaseError::fail(format!("{parsed:?} against {raw:?}")))
                }
            };
            prop_assert_eq!(parsed.framing, raw.framing);
            prop_assert_eq!(parsed.keep_alive, raw.keep_alive);
            prop_assert_eq!(parsed.response.status(), raw.response.status());
            prop_assert!(raw.response.headers().is_empty());
            let mut lines = raw.raw.as_deref().cloned();
            prop_assert!(lines.is_some());
            // Edits that may not be made to raw lines send the answer the map's way.
            if !edits.apply_to_raw() {
                return Ok(());
            }
            if let Some(lines) = lines.as_mut() {
                edits.apply_raw(lines);
            }
            let head = |response: Response<()>, raw: Option<&crate::h1::RawHeaders>| {
                let mut response = finish_response(
                    response.map(|()| Body::empty()),
                    None,
                    &TaskTracker::new(),
                );
                if raw.is_none() {
                    edits.apply(response.headers_mut());
                }
                response.headers_mut().remove(&X_REQUEST_ID);
                let mut out = bytes::BytesMut::new();
                crate::h1::encode_answer_head(
                    response.status(),
                    response.headers(),
                    raw,
                    Some(4),
                    head_request,
                    false,
                    |out: &mut bytes::BytesMut| out.extend_from_slice(b"D"),
                    &mut out,
                );
                let mut lines: Vec<String> = String::from_utf8_lossy(&out)
                    .split("\r\n")
                    .map(|line| match line.split_once(": ") {
                        Some((name, value)) => format!("{}: {value}", name.to_ascii_lowercase()),
                        None => line.to_string(),
                    })
                    .collect();
                lines.sort();
                lines
            };
            prop_assert_eq!(head(parsed.response, None), head(raw.response, lines.as_ref()));
        }
    }

    /// A route's header edits, on names an answer carries and others, some of them names the
    /// gateway frames with or drops.
    fn header_ops() -> impl Strategy<Value = crate::model::HeaderOps> {
        let names = || {
            prop::sample::select(vec![
                "server",
                "x-custom",
                "x-gateway",
                "content-length",
                "date",
                "connection",
            ])
        };
        let values = || prop::sample::select(vec!["strata", "1", "a b"]);
        let pairs = || {
            prop::collection::btree_map(
                names().prop_map(String::from),
                values().prop_map(String::from),
                0..3,
            )
        };
        (
            pairs(),
            pairs(),
            prop::collection::vec(names().prop_map(String::from), 0..2),
        )
            .prop_map(|(add, set, remove)| crate::model::HeaderOps { add, set, remove })
    }

    /// An answer's headers: those the gateway drops or frames with, in any case, and others.
    fn answer_headers() -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
        let names = prop::sample::select(vec![
            "Connection",
            "connection",
            "Keep-Alive",
            "Proxy-Connection",
            "Proxy-Authenticate",
            "TE",
            "Trailer",
            "Transfer-Encoding",
            "Upgrade",
            "X-Request-Id",
            "x-request-id",
            "Content-Length",
            "content-length",
            "Date",
            "Server",
            "x-custom",
        ]);
        let values = prop::sample::select(vec![
            "close",
            "keep-alive",
            "chunked",
            "gzip, chunked",
            "gzip",
            "4",
            "0",
            "4, 4",
            "5",
            "abc",
            "trailers",
            "Mon, 07 Dec 2026 10:00:00 GMT",
            "a\u{7f}b",
        ]);
        prop::collection::vec((names, values), 0..8)
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let mut addresses: Vec<std::net::IpAddr> = [0u8, 7, 9, 10, 42, 99, 100, 199, 255]
            .iter()
            .map(|&o| std::net::IpAddr::from([o, 255 - o, 1, o]))
            .collect();
        addresses.push("::1".parse().unwrap());
        addresses.push("::ffff:10.0.0.1".parse().unwrap());
        addresses.push(
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
                .parse()
                .unwrap(),
        );
        for address in addresses {
            let mut text = std::io::Cursor::new([0u8; 64]);
            write_ip(&mut text, address);
            let written = &text.get_ref()[..text.position() as usize];
            assert_eq!(written, address.to_string().as_bytes());
        }
    }

    #[test]
    fn tried_members_spill_past_the_inline_ones_in_order() {
        let mut tried = Tried::default();
        assert!(tried.is_empty());
        for index in 0..7 {
            tried.push(index * 3);
            assert_eq!(tried.len(), index + 1);
            let expected: Vec<usize> = (0..=index).map(|i| i * 3).collect();
            assert_eq!(tried.as_slice(), expected.as_slice());
        }
    }

    #[test]
    fn the_upstream_uri_keeps_the_request_target_or_takes_the_rewritten_path() {
        let origin = Uri::from_static("/a/b?x=1");
        assert_eq!(upstream_uri(&origin, None).unwrap(), "/a/b?x=1");
        assert_eq!(upstream_uri(&origin, Some("/b")).unwrap(), "/b?x=1");
        let absolute = Uri::from_static("http://h.example/a?y=2");
        assert_eq!(upstream_uri(&absolute, None).unwrap(), "/a?y=2");
        assert!(upstream_uri(&origin, Some("/bad path")).is_none());
        assert!(upstream_uri(&Uri::from_static("*"), None).is_none());
    }

    #[test]
    fn request_ids_are_32_lowercase_hex_digits() {
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(id
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)));
        // Valid as a header value, as `Text::Made` takes for granted.
        assert!(Text::Made(id.clone()).to_value().as_bytes() == &id[..]);
        assert_ne!(id, new_request_id());
    }

    #[test]
    fn the_host_routes_match_has_no_port_or_brackets_and_is_lower_case() {
        let host = |uri: &str, header: Option<&str>| {
            let mut request = Request::builder().uri(uri);
            if let Some(header) = header {
                request = request.header(header::HOST, header);
            }
            let request = request.body(()).unwrap();
            let source = HostSource::of(&request);
            let host = source.host();
            (host.to_string(), matches!(host, Cow::Borrowed(_)))
        };
        assert_eq!(host("/", Some("api.test:8080")), ("api.test".into(), true));
        assert_eq!(host("/", Some("Api.TEST")), ("api.test".into(), false));
        assert_eq!(host("/", Some("[::1]:7780")), ("::1".into(), true));
        assert_eq!(host("/", Some("odd:port")), ("odd:port".into(), true));
        assert_eq!(host("/", None), (String::new(), true));
        assert_eq!(host("/", Some("[]")), (String::new(), true));
        assert_eq!(host("/", Some("caf\u{e9}.test")), (String::new(), true));
        // The URI's authority wins over the header (absolute form, HTTP/2).
        assert_eq!(
            host("http://Web.test:81/x", Some("other.test")),
            ("web.test".into(), false)
        );
    }
}
