//! A route's protections before it forwards: rate limits (429 with `Retry-After` and the
//! `RateLimit-*` headers), a concurrency limit (503 over it), the fallback when the upstream's
//! breaker is open, and its retry policy's backoff and hedging. The library behind it is
//! `strata-resilience`.

use crate::model::{Fallback, RateLimitSpec, RouteSpec, UpstreamSpec};
use axum::body::Body;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use strata_resilience::budget::Backoff;
use strata_resilience::limit::{ConcurrencyLimit, Decision, KeyedLimiter};

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// What a rate limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The whole route.
    Route,
    /// Each client address.
    ClientIp,
    /// Each value of a request header (absent: one shared bucket).
    Header(HeaderName),
    /// Each authenticated consumer (the route's `auth`: an API key's consumer, a token's
    /// `sub`).
    Consumer,
}

impl LimitKey {
    fn parse(text: Option<&str>) -> Result<LimitKey, String> {
        match text {
            None => Ok(LimitKey::Route),
            Some("client_ip") => Ok(LimitKey::ClientIp),
            Some("consumer") => Ok(LimitKey::Consumer),
            Some(other) => match other.split_once(':') {
                Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                    .map(LimitKey::Header)
                    .map_err(|_| format!("rate limit key {other:?}: not a header name")),
                _ => Err(format!(
                    "rate limit key {other:?} is not client_ip, consumer or header:NAME"
                )),
            },
        }
    }
}

/// One compiled rate limit.
#[derive(Debug)]
pub struct RouteLimit {
    /// What it counts by.
    pub key: LimitKey,
    /// The buckets (kept across table changes while the spec stays the same).
    pub limiter: Arc<KeyedLimiter>,
    /// As written.
    pub spec: RateLimitSpec,
}

/// What a fallback does.
#[derive(Debug, Clone)]
pub enum FallbackAction {
    /// Proxy to another group.
    Upstream(String),
    /// Answer this.
    Respond {
        /// Status.
        status: StatusCode,
        /// Body.
        body: bytes::Bytes,
        /// Content type.
        content_type: HeaderValue,
    },
}

/// A route's protections.
#[derive(Debug, Default)]
pub struct RouteGuard {
    /// Rate limits, checked in order.
    pub limits: Vec<RouteLimit>,
    /// Requests of the route in flight at once.
    pub concurrency: Option<ConcurrencyLimit>,
    /// When the upstream's breaker is open.
    pub fallback: Option<FallbackAction>,
    /// Waits before retries.
    pub backoff: Backoff,
    /// Retry non-idempotent requests too.
    pub retry_non_idempotent: bool,
    /// Hedge idempotent requests after this long.
    pub hedge_after: Option<Duration>,
    /// What counts as a failure for the upstream's breakers on this route (default: the
    /// upstream's `failure_on`).
    pub failure_on: Option<crate::upstream::FailureOn>,
}

/// A request that passed the guard: holds its concurrency slot, and the rate-limit headers
/// for its response.
#[derive(Debug, Default)]
pub struct Admitted {
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
    headers: Option<(u32, u32, Duration)>,
}

impl Admitted {
    /// Adds the `RateLimit-*` headers of the most restrictive limit.
    pub fn decorate(&self, headers: &mut HeaderMap) {
        if let Some((limit, remaining, reset)) = self.headers {
            put_limit_headers(headers, limit, remaining, reset);
        }
    }
}

fn put_limit_headers(headers: &mut HeaderMap, limit: u32, remaining: u32, reset: Duration) {
    headers.insert(RATELIMIT_LIMIT.clone(), HeaderValue::from(limit));
    headers.insert(RATELIMIT_REMAINING.clone(), HeaderValue::from(remaining));
    headers.insert(RATELIMIT_RESET.clone(), HeaderValue::from(ceil_secs(reset)));
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Why a request was not admitted.
#[derive(Debug)]
pub enum Refusal {
    /// Over a rate limit (the limit's index).
    RateLimited(usize),
    /// Over the concurrency limit.
    Busy,
}

impl RouteGuard {
    /// Compiles a route's protections; the error says what is wrong.
    pub fn new(
        spec: &RouteSpec,
        upstreams: &BTreeMap<String, UpstreamSpec>,
    ) -> Result<RouteGuard, String> {
        let mut limits = Vec::new();
        for (i, limit) in spec.rate_limits.iter().enumerate() {
            let rate = limit.rate();
            rate.check().map_err(|e| format!("rate_limits[{i}]: {e}"))?;
            limits.push(RouteLimit {
                key: LimitKey::parse(limit.key.as_deref())
                    .map_err(|e| format!("rate_limits[{i}]: {e}"))?,
                limiter: Arc::new(KeyedLimiter::new(rate)),
                spec: limit.clone(),
            });
        }
        let concurrency = match spec.max_concurrent {
            Some(0) => return Err("max_concurrent must be at least 1".into()),
            Some(n) => Some(ConcurrencyLimit::new(n)),
            None => None,
        };
        let fallback = spec
            .fallback
            .as_ref()
            .map(|f| fallback(f, upstreams))
            .transpose()?;
        if (fallback.is_some() || spec.hedge_after.is_some()) && spec.upstream.is_none() {
            return Err("`fallback` and `hedge_after` apply only to `upstream` routes".into());
        }
        Ok(RouteGuard {
            limits,
            concurrency,
            fallback,
            backoff: spec.retry_backoff.clone().unwrap_or_default(),
            retry_non_idempotent: spec.retry_non_idempotent,
            hedge_after: spec.hedge_after.map(|d| d.0).filter(|d| !d.is_zero()),
            failure_on: if spec.failure_on.is_empty() {
                None
            } else {
                Some(crate::upstream::FailureOn::parse(&spec.failure_on)?)
            },
        })
    }

    /// Keeps the buckets of `previous`'s limits whose spec did not change, so a table change
    /// does not hand every client a fresh burst.
    pub fn adopt(&mut self, previous: &RouteGuard) {
        for limit in &mut self.limits {
            if let Some(old) = previous.limits.iter().find(|o| o.spec == limit.spec) {
                limit.limiter = old.limiter.clone();
            }
        }
    }

    /// True when the route has nothing to check before forwarding.
    pub fn is_open(&self) -> bool {
        self.limits.is_empty() && self.concurrency.is_none()
    }

    /// Checks the limits for one request; a queued request waits here for its turn.
    pub async fn admit(
        &self,
        headers: &HeaderMap,
        client: IpAddr,
        consumer: Option<&str>,
    ) -> Result<Admitted, (Refusal, Response<Body>)> {
        let mut tightest: Option<(u32, u32, Duration)> = None;
        for (index, limit) in self.limits.iter().enumerate() {
            let key = match &limit.key {
                LimitKey::Route => String::new(),
                LimitKey::ClientIp => client.to_string(),
                LimitKey::Consumer => consumer.unwrap_or_default().to_string(),
                LimitKey::Header(name) => headers
                    .get(name)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .unwrap_or_default(),
            };
            match limit.limiter.check(&key) {
                Decision::Allow { remaining, reset } => {
                    if tightest.is_none_or(|(_, r, _)| remaining < r) {
                        tightest = Some((limit.limiter.limit(), remaining, reset));
                    }
                }
                Decision::Wait(wait) => tokio::time::sleep(wait).await,
                Decision::Deny { retry_after } => {
                    let mut response = crate::proxy::plain(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate limit exceeded; retry after the time in Retry-After\n",
                    );
                    let h = response.headers_mut();
                    h.insert(
                        hyper::header::RETRY_AFTER,
                        HeaderValue::from(ceil_secs(retry_after).max(1)),
                    );
                    put_limit_headers(h, limit.limiter.limit(), 0, retry_after);
                    return Err((Refusal::RateLimited(index), response));
                }
            }
        }
        let slot = match &self.concurrency {
            Some(limit) => match limit.try_acquire() {
                Some(slot) => Some(slot),
                None => {
                    let mut response = crate::proxy::plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many requests of this route in flight\n",
                    );
                    response
                        .headers_mut()
                        .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return Err((Refusal::Busy, response));
                }
            },
            None => None,
        };
        Ok(Admitted {
            _slot: slot,
            headers: tightest,
        })
    }
}

fn fallback(
    spec: &Fallback,
    upstreams: &BTreeMap<String, UpstreamSpec>,
) -> Result<FallbackAction, String> {
    match (&spec.upstream, &spec.respond) {
        (Some(upstream), None) => {
            if !upstreams.contains_key(upstream) {
                return Err(format!("fallback: unknown upstream {upstream:?}"));
            }
            Ok(FallbackAction::Upstream(upstream.clone()))
        }
        (None, Some(respond)) => Ok(FallbackAction::Respond {
            status: StatusCode::from_u16(respond.status).map_err(|_| {
                format!("fallback: status {} is not an HTTP status", respond.status)
            })?,
            body: bytes::Bytes::from(respond.body.clone()),
            content_type: HeaderValue::from_str(
                respond
                    .content_type
                    .as_deref()
                    .unwrap_or("text/plain; charset=utf-8"),
            )
            .map_err(|_| "fallback: content_type is not a header value".to_string())?,
        }),
        _ => Err("fallback: give exactly one of `upstream` and `respond`".into()),
    }
}
