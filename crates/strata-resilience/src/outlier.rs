//! Passive outlier detection with Envoy's field names and defaults.
//!
//! Every answer of a host is recorded ([`Detector::record`]): five 5xx in a row
//! (`consecutive_5xx`, where a connection failure or timeout counts as a 5xx) eject it at once;
//! five gateway failures in a row (502, 503, 504, connection failures) do too when
//! `enforcing_consecutive_gateway_failure` says so (0% by default, as in Envoy). Every
//! `interval` ([`Detector::sweep`]) the success-rate rule (hosts more than
//! `success_rate_stdev_factor / 1000` standard deviations below the mean) and the
//! failure-percentage rule (hosts failing at least `failure_percentage_threshold` percent) run
//! over hosts with enough requests. An ejection lasts `base_ejection_time` times the number of
//! times the host was ejected (capped at `max_ejection_time`); each interval a host spends in
//! the group un-ejected lowers that number again. At most `max_ejection_percent` of the hosts
//! are ejected at once, but always at least one may be.

use rand::Rng;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use strata_api::units::HumanDuration;

/// Outlier detection as configured (Envoy's names and defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// 5xx answers in a row that eject a host (default 5).
    #[serde(default = "five")]
    pub consecutive_5xx: u32,
    /// Gateway failures (502, 503, 504, connection failures) in a row that eject (default 5).
    #[serde(default = "five")]
    pub consecutive_gateway_failure: u32,
    /// Percent chance a `consecutive_5xx` detection ejects (default 100).
    #[serde(default = "hundred")]
    pub enforcing_consecutive_5xx: u32,
    /// Percent chance a `consecutive_gateway_failure` detection ejects (default 0).
    #[serde(default)]
    pub enforcing_consecutive_gateway_failure: u32,
    /// Between sweeps of the rate rules (default 10s).
    #[serde(default = "ten_seconds")]
    pub interval: HumanDuration,
    /// An ejection lasts this times the host's ejection count (default 30s).
    #[serde(default = "thirty_seconds")]
    pub base_ejection_time: HumanDuration,
    /// Longest ejection (default 300s).
    #[serde(default = "five_minutes")]
    pub max_ejection_time: HumanDuration,
    /// Most hosts ejected at once, in percent (default 10; one host may always be).
    #[serde(default = "ten")]
    pub max_ejection_percent: u32,
    /// Hosts with enough requests for the success-rate rule to run (default 5).
    #[serde(default = "five")]
    pub success_rate_minimum_hosts: u32,
    /// Requests in an interval for a host to count in the success-rate rule (default 100).
    #[serde(default = "hundred")]
    pub success_rate_request_volume: u32,
    /// Standard deviations (in thousandths) below the mean that eject (default 1900).
    #[serde(default = "nineteen_hundred")]
    pub success_rate_stdev_factor: u32,
    /// Percent chance a success-rate detection ejects (default 100).
    #[serde(default = "hundred")]
    pub enforcing_success_rate: u32,
    /// Failure percent that ejects (default 85).
    #[serde(default = "eighty_five")]
    pub failure_percentage_threshold: u32,
    /// Hosts with enough requests for the failure-percentage rule to run (default 5).
    #[serde(default = "five")]
    pub failure_percentage_minimum_hosts: u32,
    /// Requests in an interval for a host to count in that rule (default 50).
    #[serde(default = "fifty")]
    pub failure_percentage_request_volume: u32,
    /// Percent chance a failure-percentage detection ejects (default 0).
    #[serde(default)]
    pub enforcing_failure_percentage: u32,
}

fn five() -> u32 {
    5
}
fn ten() -> u32 {
    10
}
fn fifty() -> u32 {
    50
}
fn eighty_five() -> u32 {
    85
}
fn hundred() -> u32 {
    100
}
fn nineteen_hundred() -> u32 {
    1900
}
fn ten_seconds() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn thirty_seconds() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn five_minutes() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

impl Default for OutlierConfig {
    fn default() -> Self {
        // Every field has its serde default; an empty table reads as the defaults.
        serde_json::from_str("{}").expect("the defaults deserialize")
    }
}

impl OutlierConfig {
    /// Checks the percentages; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        for (name, value) in [
            ("enforcing_consecutive_5xx", self.enforcing_consecutive_5xx),
            (
                "enforcing_consecutive_gateway_failure",
                self.enforcing_consecutive_gateway_failure,
            ),
            ("max_ejection_percent", self.max_ejection_percent),
            ("enforcing_success_rate", self.enforcing_success_rate),
            (
                "failure_percentage_threshold",
                self.failure_percentage_threshold,
            ),
            (
                "enforcing_failure_percentage",
                self.enforcing_failure_percentage,
            ),
        ] {
            if value > 100 {
                return Err(format!("{name} is a percentage: at most 100, not {value}"));
            }
        }
        if self.interval.0.is_zero() || self.base_ejection_time.0.is_zero() {
            return Err("interval and base_ejection_time must be longer than 0".into());
        }
        Ok(())
    }
}

/// What happened to one request to a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered below 500.
    Success,
    /// Answered with this 5xx status.
    Status(u16),
    /// No answer: the connection failed, was reset, or timed out.
    LocalFailure,
}

impl Outcome {
    fn is_5xx(self) -> bool {
        !matches!(self, Outcome::Success)
    }

    fn is_gateway_failure(self) -> bool {
        matches!(self, Outcome::Status(502..=504) | Outcome::LocalFailure)
    }
}

/// Why a host was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// `consecutive_5xx`.
    Consecutive5xx,
    /// `consecutive_gateway_failure`.
    ConsecutiveGatewayFailure,
    /// The success-rate rule.
    SuccessRate,
    /// The failure-percentage rule.
    FailurePercentage,
}

impl Reason {
    /// The reason's name, as in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Consecutive5xx => "consecutive_5xx",
            Reason::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            Reason::SuccessRate => "success_rate",
            Reason::FailurePercentage => "failure_percentage",
        }
    }
}

/// The detector's state of one host; it lives as long as the host is in the group.
#[derive(Debug, Default)]
pub struct HostState {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    interval_success: AtomicU64,
    interval_total: AtomicU64,
    /// Ejected until this time (ms on [`now_ms`]'s clock); 0: not ejected.
    ejected_until: AtomicU64,
    times_ejected: AtomicU32,
    ejected_this_interval: AtomicBool,
    /// Ejections so far.
    pub ejections: AtomicU64,
}

impl HostState {
    /// True while the host is ejected.
    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// Until when (ms on [`now_ms`]'s clock) it is ejected; 0 when it is not.
    pub fn ejected_until(&self) -> u64 {
        self.ejected_until.load(Ordering::Relaxed)
    }
}

/// Milliseconds on a process-wide clock that follows tokio's (paused in tests).
pub fn now_ms() -> u64 {
    ms_at(tokio::time::Instant::now())
}

/// `instant` in ms on [`now_ms`]'s clock.
pub fn ms_at(instant: tokio::time::Instant) -> u64 {
    static ORIGIN: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(tokio::time::Instant::now);
    instant.saturating_duration_since(origin).as_millis() as u64 + 1
}

/// An ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// Index of the host in the slice given.
    pub host: usize,
    /// Why.
    pub reason: Reason,
    /// For how long.
    pub duration: Duration,
}

/// The rules, applied to a group's hosts.
#[derive(Debug, Clone)]
pub struct Detector {
    config: OutlierConfig,
}

impl Detector {
    /// A detector with `config`.
    pub fn new(config: OutlierConfig) -> Detector {
        Detector { config }
    }

    /// Its configuration.
    pub fn config(&self) -> &OutlierConfig {
        &self.config
    }

    /// Records an outcome of `hosts[host]`; returns the ejection it caused, if any.
    pub fn record(&self, hosts: &[&HostState], host: usize, outcome: Outcome) -> Option<Ejection> {
        let state = hosts.get(host)?;
        state.interval_total.fetch_add(1, Ordering::Relaxed);
        if !outcome.is_5xx() {
            state.interval_success.fetch_add(1, Ordering::Relaxed);
            state.consecutive_5xx.store(0, Ordering::Relaxed);
            state.consecutive_gateway.store(0, Ordering::Relaxed);
            return None;
        }
        let fives = state.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        let gateway = if outcome.is_gateway_failure() {
            state.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            state.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        let now = now_ms();
        if state.is_ejected(now) {
            return None;
        }
        let reason = if fives >= self.config.consecutive_5xx
            && chance(self.config.enforcing_consecutive_5xx)
        {
            Reason::Consecutive5xx
        } else if gateway >= self.config.consecutive_gateway_failure
            && chance(self.config.enforcing_consecutive_gateway_failure)
        {
            Reason::ConsecutiveGatewayFailure
        } else {
            return None;
        };
        let ejection = self.eject(hosts, host, reason, now)?;
        state.consecutive_5xx.store(0, Ordering::Relaxed);
        state.consecutive_gateway.store(0, Ordering::Relaxed);
        Some(ejection)
    }

    /// The interval's work: the success-rate and failure-percentage rules, then a fresh
    /// interval. Returns the ejections it made.
    pub fn sweep(&self, hosts: &[&HostState]) -> Vec<Ejection> {
        let now = now_ms();
        let c = &self.config;
        let volumes: Vec<(u64, u64)> = hosts
            .iter()
            .map(|h| {
                (
                    h.interval_success.swap(0, Ordering::Relaxed),
                    h.interval_total.swap(0, Ordering::Relaxed),
                )
            })
            .collect();
        let mut ejections = Vec::new();
        // Success rate: hosts far below the mean.
        let sr: Vec<(usize, f64)> = volumes
            .iter()
            .enumerate()
            .filter(|(_, (_, total))| {
                *total >= u64::from(c.success_rate_request_volume) && *total > 0
            })
            .map(|(i, (ok, total))| (i, *ok as f64 * 100.0 / *total as f64))
            .collect();
        if sr.len() >= c.success_rate_minimum_hosts as usize && !sr.is_empty() {
            let mean = sr.iter().map(|(_, r)| r).sum::<f64>() / sr.len() as f64;
            let variance =
                sr.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / sr.len() as f64;
            let floor = mean - variance.sqrt() * f64::from(c.success_rate_stdev_factor) / 1000.0;
            for (i, rate) in &sr {
                if *rate < floor && chance(c.enforcing_success_rate) && !hosts[*i].is_ejected(now) {
                    ejections.extend(self.eject(hosts, *i, Reason::SuccessRate, now));
                }
            }
        }
        // Failure percentage: hosts failing at least the threshold.
        let fp: Vec<(usize, f64)> = volumes
            .iter()
            .enumerate()
            .filter(|(_, (_, total))| {
                *total >= u64::from(c.failure_percentage_request_volume) && *total > 0
            })
            .map(|(i, (ok, total))| (i, (*total - *ok) as f64 * 100.0 / *total as f64))
            .collect();
        if fp.len() >= c.failure_percentage_minimum_hosts as usize {
            for (i, failed) in &fp {
                if *failed >= f64::from(c.failure_percentage_threshold)
                    && chance(c.enforcing_failure_percentage)
                    && !hosts[*i].is_ejected(now)
                {
                    ejections.extend(self.eject(hosts, *i, Reason::FailurePercentage, now));
                }
            }
        }
        // A host that spent the interval in the group earns back one ejection.
        for host in hosts {
            if !host.ejected_this_interval.swap(false, Ordering::Relaxed) && !host.is_ejected(now) {
                let _ =
                    host.times_ejected
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            }
        }
        ejections
    }

    fn eject(
        &self,
        hosts: &[&HostState],
        host: usize,
        reason: Reason,
        now: u64,
    ) -> Option<Ejection> {
        let ejected = hosts.iter().filter(|h| h.is_ejected(now)).count();
        let allowed = ejected == 0
            || (ejected + 1) * 100 <= hosts.len() * self.config.max_ejection_percent as usize;
        if !allowed {
            return None;
        }
        let state = hosts[host];
        let times = state.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = self.config.base_ejection_time.0.saturating_mul(times).min(
            self.config
                .max_ejection_time
                .0
                .max(self.config.base_ejection_time.0),
        );
        state
            .ejected_until
            .store(now + duration.as_millis() as u64, Ordering::Relaxed);
        state.ejected_this_interval.store(true, Ordering::Relaxed);
        state.ejections.fetch_add(1, Ordering::Relaxed);
        Some(Ejection {
            host,
            reason,
            duration,
        })
    }
}

/// True with probability `percent` / 100.
fn chance(percent: u32) -> bool {
    percent >= 100 || (percent > 0 && rand::thread_rng().gen_range(0..100) < percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(n: usize) -> Vec<HostState> {
        (0..n).map(|_| HostState::default()).collect()
    }

    fn refs(hosts: &[HostState]) -> Vec<&HostState> {
        hosts.iter().collect()
    }

    #[test]
    fn defaults_are_envoys() {
        let c = OutlierConfig::default();
        assert_eq!((c.consecutive_5xx, c.consecutive_gateway_failure), (5, 5));
        assert_eq!(
            (
                c.enforcing_consecutive_5xx,
                c.enforcing_consecutive_gateway_failure
            ),
            (100, 0)
        );
        assert_eq!(c.interval.0, Duration::from_secs(10));
        assert_eq!(c.base_ejection_time.0, Duration::from_secs(30));
        assert_eq!(c.max_ejection_percent, 10);
        assert_eq!(
            (
                c.success_rate_minimum_hosts,
                c.success_rate_request_volume,
                c.success_rate_stdev_factor
            ),
            (5, 100, 1900)
        );
        assert_eq!(
            (
                c.failure_percentage_threshold,
                c.enforcing_failure_percentage
            ),
            (85, 0)
        );
        assert!(c.check().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn five_5xx_in_a_row_eject_and_the_ejection_grows_with_repeats() {
        let d = Detector::new(OutlierConfig::default());
        let h = hosts(3);
        let r = refs(&h);
        for _ in 0..4 {
            assert_eq!(d.record(&r, 0, Outcome::Status(500)), None);
        }
        // A success in between starts the count again.
        d.record(&r, 0, Outcome::Success);
        for _ in 0..4 {
            assert_eq!(d.record(&r, 0, Outcome::LocalFailure), None);
        }
        let e = d.record(&r, 0, Outcome::Status(503)).unwrap();
        assert_eq!(
            (e.reason, e.duration),
            (Reason::Consecutive5xx, Duration::from_secs(30))
        );
        assert!(h[0].is_ejected(now_ms()));
        // Only one of three may be ejected at 10%: the next host stays in.
        for _ in 0..5 {
            assert_eq!(d.record(&r, 1, Outcome::Status(500)), None);
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(!h[0].is_ejected(now_ms()));
        for _ in 0..5 {
            d.record(&r, 0, Outcome::Status(500));
        }
        assert_eq!(
            (h[0].ejected_until() - now_ms()) / 1000,
            60,
            "a second ejection lasts twice the base"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gateway_failures_eject_only_when_enforced() {
        let h = hosts(2);
        let r = refs(&h);
        let default = Detector::new(OutlierConfig {
            consecutive_5xx: 100,
            ..OutlierConfig::default()
        });
        for _ in 0..10 {
            assert_eq!(default.record(&r, 0, Outcome::Status(502)), None);
        }
        let enforcing = Detector::new(OutlierConfig {
            consecutive_5xx: 100,
            enforcing_consecutive_gateway_failure: 100,
            ..OutlierConfig::default()
        });
        let h = hosts(2);
        let r = refs(&h);
        for _ in 0..4 {
            enforcing.record(&r, 0, Outcome::Status(504));
        }
        // A 500 is not a gateway failure: the count starts over.
        enforcing.record(&r, 0, Outcome::Status(500));
        for _ in 0..4 {
            assert_eq!(enforcing.record(&r, 0, Outcome::LocalFailure), None);
        }
        let e = enforcing.record(&r, 0, Outcome::Status(502)).unwrap();
        assert_eq!(e.reason, Reason::ConsecutiveGatewayFailure);
    }

    #[tokio::test(start_paused = true)]
    async fn the_success_rate_rule_ejects_the_host_far_below_the_mean() {
        let d = Detector::new(OutlierConfig {
            consecutive_5xx: 1000,
            max_ejection_percent: 50,
            ..OutlierConfig::default()
        });
        let h = hosts(6);
        let r = refs(&h);
        for (i, _) in h.iter().enumerate() {
            for n in 0..200 {
                // Host 5 fails every other request; the others one in a hundred.
                let failed = if i == 5 { n % 2 == 0 } else { n % 100 == 0 };
                d.record(
                    &r,
                    i,
                    if failed {
                        Outcome::Status(500)
                    } else {
                        Outcome::Success
                    },
                );
            }
        }
        let ejections = d.sweep(&r);
        assert_eq!(ejections.len(), 1, "{ejections:?}");
        assert_eq!(
            (ejections[0].host, ejections[0].reason),
            (5, Reason::SuccessRate)
        );
        // Too few hosts with enough volume: the rule does not run.
        let h = hosts(4);
        let r = refs(&h);
        for n in 0..200 {
            d.record(
                &r,
                0,
                if n % 2 == 0 {
                    Outcome::Status(500)
                } else {
                    Outcome::Success
                },
            );
        }
        assert!(d.sweep(&r).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn failure_percentage_ejects_when_enforced_and_counts_decay() {
        let d = Detector::new(OutlierConfig {
            consecutive_5xx: 1000,
            enforcing_failure_percentage: 100,
            failure_percentage_minimum_hosts: 1,
            max_ejection_percent: 100,
            ..OutlierConfig::default()
        });
        let h = hosts(2);
        let r = refs(&h);
        for n in 0..100 {
            d.record(
                &r,
                0,
                if n % 10 == 0 {
                    Outcome::Success
                } else {
                    Outcome::Status(503)
                },
            );
            d.record(&r, 1, Outcome::Success);
        }
        let ejections = d.sweep(&r);
        assert_eq!(ejections.len(), 1);
        assert_eq!(
            (ejections[0].host, ejections[0].reason),
            (0, Reason::FailurePercentage)
        );
        assert_eq!(h[0].times_ejected.load(Ordering::Relaxed), 1);
        // Ejected through the next sweep, then back; a clean interval lowers the count.
        d.sweep(&r);
        assert_eq!(h[0].times_ejected.load(Ordering::Relaxed), 1);
        tokio::time::advance(Duration::from_secs(31)).await;
        d.sweep(&r);
        assert_eq!(h[0].times_ejected.load(Ordering::Relaxed), 0);
    }
}
