//! Resilience for callers of remote services: the gateway uses it per route and per upstream,
//! the RPC consumer per method and per provider. One implementation of each idea, with the
//! semantics (and the defaults) users know from Resilience4j, Sentinel, Envoy and Finagle:
//!
//! - [`balance`]: load-balancing policies over a group's members (round robin, smooth
//!   weighted, random, P2C least request, ring hash, Maglev), skipping ejected, unhealthy and
//!   breaker-open members, with slow start.
//! - [`breaker`]: circuit breakers (closed, open, half-open, forced-open, disabled) over a
//!   count- or time-based sliding window of failures and slow calls.
//! - [`budget`]: retry budgets (a share of the traffic, with a floor) and backoff with jitter.
//! - [`limit`]: rate limits by GCRA (bursts, warm-up from cold, queueing with a maximum wait),
//!   keyed limiters (per client, per API key, per header value) and concurrency limits.
//! - [`outlier`]: passive outlier detection with Envoy's fields and defaults.
//!
//! Everything reads time from `tokio::time::Instant`, so tests run on tokio's paused clock and
//! are exact. Nothing here does I/O or logs per call: state changes are returned or reported
//! through callbacks, and the caller turns them into metrics and one log line each.

pub mod balance;
pub mod breaker;
pub mod budget;
pub mod limit;
pub mod outlier;
