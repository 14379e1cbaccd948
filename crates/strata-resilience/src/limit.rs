//! Rate limits and concurrency limits.
//!
//! A rate limit is GCRA (the generic cell rate algorithm, a token bucket kept as one
//! timestamp): `requests` per `per` at a steady pace, with `burst` requests allowed at once
//! (default: a whole period's worth). Two of Sentinel's modes are options:
//!
//! - **warm-up** (cold start): after the limit has been idle for `warm_up`, the pace starts at a
//!   third of the rate and grows linearly to the full rate over `warm_up`, so a cold service is
//!   not hit by its full rate at once;
//! - **queueing** (leaky bucket): a request over the pace waits for its turn, up to `max_wait`,
//!   instead of being refused; requests leave evenly spaced.
//!
//! A [`KeyedLimiter`] keeps one limit per key (client address, API key, header value), in
//! shards, forgetting keys whose bucket is full again. A cluster-wide limit divides the rate
//! by the limiter's share ([`KeyedLimiter::set_share`]).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strata_api::units::HumanDuration;
use tokio::time::Instant;

/// How much slower than the rate a cold limit starts (Sentinel's `coldFactor`).
const COLD_FACTOR: f64 = 3.0;
/// Keys per shard before idle ones are forgotten.
const SHARD_KEYS: usize = 16_384;
const SHARDS: usize = 16;

/// A rate limit as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    /// Requests per `per`.
    pub requests: u32,
    /// The period (default 1s).
    #[serde(default = "one_second")]
    pub per: HumanDuration,
    /// Requests allowed at once over the steady pace (default `requests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Warm-up: after this long idle, start at a third of the rate and reach it over this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_up: Option<HumanDuration>,
    /// Queueing: a request over the pace waits up to this long for its turn instead of being
    /// refused (bursts are then not allowed: requests leave evenly spaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait: Option<HumanDuration>,
}

fn one_second() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

impl RateConfig {
    /// Checks the numbers; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.requests == 0 {
            return Err("requests must be at least 1".into());
        }
        if self.per.0.is_zero() {
            return Err("per must be longer than 0".into());
        }
        if self.burst == Some(0) {
            return Err("burst must be at least 1".into());
        }
        if self.max_wait.is_some() && self.burst.is_some() {
            return Err("max_wait (queueing) and burst cannot go together: queued requests leave evenly spaced".into());
        }
        Ok(())
    }

    /// The burst (requests allowed at once).
    pub fn burst(&self) -> u32 {
        if self.max_wait.is_some() {
            1
        } else {
            self.burst.unwrap_or(self.requests).max(1)
        }
    }

    /// The steady interval between requests.
    fn interval(&self) -> Duration {
        self.per.0 / self.requests.max(1)
    }
}

/// What the limit says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow {
        /// Requests left in the burst now.
        remaining: u32,
        /// Until the bucket is full again.
        reset: Duration,
    },
    /// Queued: go ahead after this wait.
    Wait(Duration),
    /// Refused.
    Deny {
        /// When a request would be allowed.
        retry_after: Duration,
    },
}

/// One bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Theoretical arrival time: when the bucket is full again.
    tat: Instant,
    /// Warm-up: since when traffic has been flowing.
    hot_since: Instant,
    /// The last request that was let through.
    last: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Bucket {
        Bucket {
            tat: now,
            hot_since: now,
            last: now,
        }
    }

    fn decide(&mut self, config: &RateConfig, share: f64, now: Instant) -> Decision {
        let mut interval = config.interval().mul_f64(share.max(1e-9).recip());
        if let Some(warm_up) = config.warm_up.map(|w| w.0).filter(|w| !w.is_zero()) {
            if now.saturating_duration_since(self.last) >= warm_up {
                self.hot_since = now;
            }
            let progress = (now.saturating_duration_since(self.hot_since).as_secs_f64()
                / warm_up.as_secs_f64())
            .min(1.0);
            interval = interval.mul_f64(COLD_FACTOR - (COLD_FACTOR - 1.0) * progress);
        }
        let tat = self.tat.max(now);
        if let Some(max_wait) = config.max_wait {
            let wait = tat - now;
            if wait > max_wait.0 {
                return Decision::Deny {
                    retry_after: wait - max_wait.0,
                };
            }
            self.tat = tat + interval;
            self.last = now;
            return if wait.is_zero() {
                Decision::Allow {
                    remaining: 0,
                    reset: self.tat - now,
                }
            } else {
                Decision::Wait(wait)
            };
        }
        // A share of a cluster-wide rate has the same share of its burst.
        let burst = ((f64::from(config.burst()) * share).round() as u32).max(1);
        let tolerance = interval * (burst - 1);
        let allowed_from = tat.checked_sub(tolerance).unwrap_or(now);
        if now < allowed_from {
            return Decision::Deny {
                retry_after: allowed_from - now,
            };
        }
        self.tat = tat + interval;
        self.last = now;
        let debt = self.tat - now;
        let room = (tolerance + interval).saturating_sub(debt);
        Decision::Allow {
            remaining: (room.as_nanos() / interval.as_nanos().max(1)) as u32,
            reset: debt,
        }
    }
}

/// Rate limits per key.
#[derive(Debug)]
pub struct KeyedLimiter {
    config: RateConfig,
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
    /// This limiter's share of a cluster-wide rate, in millionths (1,000,000: all of it).
    share_ppm: AtomicU64,
    allowed: AtomicU64,
    denied: AtomicU64,
}

impl KeyedLimiter {
    /// A limiter with every key's bucket full.
    pub fn new(config: RateConfig) -> KeyedLimiter {
        KeyedLimiter {
            config,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            share_ppm: AtomicU64::new(1_000_000),
            allowed: AtomicU64::new(0),
            denied: AtomicU64::new(0),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &RateConfig {
        &self.config
    }

    /// The limit as the `RateLimit-Limit` header states it (this node's share).
    pub fn limit(&self) -> u32 {
        ((f64::from(self.config.burst()) * self.share()).round() as u32).max(1)
    }

    /// This limiter's share of the rate (1: all of it).
    pub fn share(&self) -> f64 {
        self.share_ppm.load(Ordering::Relaxed) as f64 / 1_000_000.0
    }

    /// Sets this limiter's share of a cluster-wide rate (a fraction from 0 to 1).
    pub fn set_share(&self, share: f64) {
        let ppm = (share.clamp(0.000_001, 1.0) * 1_000_000.0).round() as u64;
        self.share_ppm.store(ppm, Ordering::Relaxed);
    }

    /// Decides on one request of `key`.
    pub fn check(&self, key: &str) -> Decision {
        let now = Instant::now();
        let share = self.share();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        let shard = &self.shards[hasher.finish() as usize % SHARDS];
        let mut buckets = shard.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= SHARD_KEYS && !buckets.contains_key(key) {
            // Forget keys whose bucket is full again: they are as good as new.
            buckets.retain(|_, b| b.tat > now);
        }
        let decision = match buckets.get_mut(key) {
            Some(bucket) => bucket.decide(&self.config, share, now),
            None => {
                let mut bucket = Bucket::new(now);
                let decision = bucket.decide(&self.config, share, now);
                if buckets.len() < SHARD_KEYS {
                    buckets.insert(key.to_string(), bucket);
                }
                decision
            }
        };
        drop(buckets);
        match decision {
            Decision::Deny { .. } => self.denied.fetch_add(1, Ordering::Relaxed),
            _ => self.allowed.fetch_add(1, Ordering::Relaxed),
        };
        decision
    }

    /// Requests allowed (queued ones included) and denied so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.allowed.load(Ordering::Relaxed),
            self.denied.load(Ordering::Relaxed),
        )
    }

    /// Keys with a bucket now.
    pub fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

/// A concurrency limit (bulkhead): at most `max` calls at once.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit {
    semaphore: Arc<tokio::sync::Semaphore>,
    max: u32,
}

impl ConcurrencyLimit {
    /// A limit of `max` calls in flight.
    pub fn new(max: u32) -> ConcurrencyLimit {
        ConcurrencyLimit {
            semaphore: Arc::new(tokio::sync::Semaphore::new(max as usize)),
            max,
        }
    }

    /// A slot, or `None` when `max` calls are in flight; the slot frees itself when dropped.
    pub fn try_acquire(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.semaphore.clone().try_acquire_owned().ok()
    }

    /// Calls in flight now.
    pub fn in_use(&self) -> u32 {
        self.max
            .saturating_sub(self.semaphore.available_permits() as u32)
    }

    /// The limit.
    pub fn max(&self) -> u32 {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rate(requests: u32, per_ms: u64) -> RateConfig {
        RateConfig {
            requests,
            per: HumanDuration(Duration::from_millis(per_ms)),
            burst: None,
            warm_up: None,
            max_wait: None,
        }
    }

    fn allowed(d: Decision) -> bool {
        !matches!(d, Decision::Deny { .. })
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_bucket_allows_its_burst_then_the_steady_pace() {
        let limiter = KeyedLimiter::new(rate(10, 1000));
        for expected_remaining in (0..10).rev() {
            match limiter.check("k") {
                Decision::Allow { remaining, .. } => assert_eq!(remaining, expected_remaining),
                other => panic!("{other:?}"),
            }
        }
        match limiter.check("k") {
            Decision::Deny { retry_after } => assert_eq!(retry_after, Duration::from_millis(100)),
            other => panic!("{other:?}"),
        }
        // Another key has its own bucket.
        assert!(allowed(limiter.check("other")));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(allowed(limiter.check("k")));
        assert!(!allowed(limiter.check("k")));
        // A second later the bucket is full again.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!((0..20).filter(|_| allowed(limiter.check("k"))).count(), 10);
        assert_eq!(limiter.counts(), (22, 12));
    }

    #[tokio::test(start_paused = true)]
    async fn over_a_long_run_the_rate_holds() {
        let limiter = KeyedLimiter::new(RateConfig {
            burst: Some(5),
            ..rate(100, 1000)
        });
        let mut passed = 0;
        // 1,000 requests a second for 10 s, one per millisecond.
        for _ in 0..10_000 {
            if allowed(limiter.check("k")) {
                passed += 1;
            }
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!((1000..=1005).contains(&passed), "{passed}");
    }

    #[tokio::test(start_paused = true)]
    async fn queueing_spaces_requests_and_refuses_past_the_maximum_wait() {
        let limiter = KeyedLimiter::new(RateConfig {
            max_wait: Some(HumanDuration(Duration::from_millis(250))),
            ..rate(10, 1000)
        });
        assert!(matches!(limiter.check("k"), Decision::Allow { .. }));
        assert_eq!(
            limiter.check("k"),
            Decision::Wait(Duration::from_millis(100))
        );
        assert_eq!(
            limiter.check("k"),
            Decision::Wait(Duration::from_millis(200))
        );
        assert_eq!(
            limiter.check("k"),
            Decision::Deny {
                retry_after: Duration::from_millis(50)
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn warm_up_starts_at_a_third_and_reaches_the_rate() {
        let limiter = KeyedLimiter::new(RateConfig {
            burst: Some(1),
            warm_up: Some(HumanDuration(Duration::from_secs(10))),
            ..rate(100, 1000)
        });
        let mut per_second = Vec::new();
        for _ in 0..12 {
            let mut passed = 0;
            for _ in 0..1000 {
                if allowed(limiter.check("k")) {
                    passed += 1;
                }
                tokio::time::advance(Duration::from_millis(1)).await;
            }
            per_second.push(passed);
        }
        assert!((33..=40).contains(&per_second[0]), "{per_second:?}");
        assert!(per_second[5] > per_second[1], "{per_second:?}");
        assert!((99..=101).contains(&per_second[11]), "{per_second:?}");
        // Idle for the warm-up period: cold again, three times the interval.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(allowed(limiter.check("k")));
        tokio::time::advance(Duration::from_millis(15)).await;
        assert!(!allowed(limiter.check("k")));
        tokio::time::advance(Duration::from_millis(15)).await;
        assert!(allowed(limiter.check("k")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_of_a_cluster_wide_rate_divides_it() {
        let limiter = KeyedLimiter::new(rate(100, 1000));
        limiter.set_share(0.25);
        assert_eq!(limiter.limit(), 25);
        let passed = (0..100).filter(|_| allowed(limiter.check("k"))).count();
        assert_eq!(passed, 25);
    }

    #[test]
    fn concurrency_limits_count_slots_in_use() {
        let limit = ConcurrencyLimit::new(2);
        let a = limit.try_acquire().unwrap();
        let _b = limit.try_acquire().unwrap();
        assert!(limit.try_acquire().is_none());
        assert_eq!(limit.in_use(), 2);
        drop(a);
        assert!(limit.try_acquire().is_some());
    }

    #[test]
    fn bad_configs_are_refused_by_name() {
        assert!(rate(0, 1000).check().unwrap_err().contains("requests"));
        let both = RateConfig {
            burst: Some(2),
            max_wait: Some(HumanDuration(Duration::from_secs(1))),
            ..rate(1, 1000)
        };
        assert!(both.check().unwrap_err().contains("max_wait"));
    }

    proptest! {
        /// Whatever the arrival pattern, no window of `per` lets more than burst + rate
        /// requests through.
        #[test]
        fn no_window_exceeds_burst_plus_rate(gaps in proptest::collection::vec(0u64..30, 1..400), requests in 1u32..20, burst in 1u32..10) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            runtime.block_on(async move {
                let limiter = KeyedLimiter::new(RateConfig { burst: Some(burst), ..rate(requests, 100) });
                let start = Instant::now();
                let mut passed = Vec::new();
                for gap in gaps {
                    tokio::time::advance(Duration::from_millis(gap)).await;
                    if allowed(limiter.check("k")) {
                        passed.push(Instant::now() - start);
                    }
                }
                for (i, t) in passed.iter().enumerate() {
                    let in_window = passed[i..].iter().take_while(|u| **u < *t + Duration::from_millis(100)).count();
                    prop_assert!(in_window as u32 <= burst + requests, "{in_window} in 100 ms");
                }
                Ok(())
            })?;
        }
    }
}
