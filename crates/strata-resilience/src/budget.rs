//! Retry budgets and backoff.
//!
//! A [`RetryBudget`] bounds the extra load retries put on a failing service, as Finagle's and
//! tower's budgets do: each first attempt deposits a fraction of a retry (`ratio`, 0.2 by
//! default, so retries add at most 20%), a floor of `min_per_sec` retries a second (10) is
//! always allowed, and at most `ttl` seconds' worth (10 s) is saved up. [`Backoff`] spaces
//! retries as gRPC does (gRFC A6): attempt n waits a random time up to
//! `min(initial * multiplier^(n-1), max)`.

use rand::Rng;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::Duration;
use strata_api::units::HumanDuration;
use tokio::time::Instant;

/// A retry budget's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Retries each first attempt earns (default 0.2: at most 20% extra load).
    #[serde(default = "default_ratio")]
    pub ratio: f64,
    /// Retries a second always allowed (default 10).
    #[serde(default = "default_min_per_sec")]
    pub min_per_sec: f64,
    /// Seconds of deposits and floor that can be saved up (default 10).
    #[serde(default = "default_ttl")]
    pub ttl: HumanDuration,
}

fn default_ratio() -> f64 {
    0.2
}
fn default_min_per_sec() -> f64 {
    10.0
}
fn default_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            ratio: default_ratio(),
            min_per_sec: default_min_per_sec(),
            ttl: default_ttl(),
        }
    }
}

/// Retries a caller may still make.
#[derive(Debug)]
pub struct RetryBudget {
    config: BudgetConfig,
    /// Balance, and when the floor was last added.
    state: Mutex<(f64, Instant)>,
    spent: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(BudgetConfig::default())
    }
}

impl RetryBudget {
    /// A budget holding the floor's first second.
    pub fn new(config: BudgetConfig) -> RetryBudget {
        RetryBudget {
            state: Mutex::new((config.min_per_sec.max(0.0), Instant::now())),
            config,
            spent: Default::default(),
            refused: Default::default(),
        }
    }

    /// Most retries saved up: the floor's `ttl` seconds (deposits beyond it are spent as
    /// they come, so a busy service still retries up to `ratio` of its requests).
    fn cap(&self) -> f64 {
        (self.config.min_per_sec * self.config.ttl.0.as_secs_f64()).max(1.0)
    }

    /// Counts a first attempt.
    pub fn deposit(&self) {
        let cap = self.cap();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 = (state.0 + self.config.ratio).min(cap);
    }

    /// Takes one retry if the budget has it.
    pub fn withdraw(&self) -> bool {
        let cap = self.cap();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let earned = now.saturating_duration_since(state.1).as_secs_f64() * self.config.min_per_sec;
        state.0 = (state.0 + earned).min(cap);
        state.1 = now;
        // Deposits are fifths: allow for the rounding of their sum.
        if state.0 >= 1.0 - 1e-9 {
            state.0 -= 1.0;
            self.spent
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            true
        } else {
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            false
        }
    }

    /// Retries taken from the budget so far.
    pub fn spent(&self) -> u64 {
        self.spent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Retries the budget refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Retries available now (rounded down).
    pub fn available(&self) -> u64 {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0.max(0.0) as u64
    }
}

/// Exponential backoff with full jitter (gRPC's retry policy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// Upper bound of the first wait (default 25ms).
    #[serde(default = "default_initial")]
    pub initial: HumanDuration,
    /// Growth of the bound per attempt (default 2).
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Largest bound (default 1s).
    #[serde(default = "default_max")]
    pub max: HumanDuration,
}

fn default_initial() -> HumanDuration {
    HumanDuration(Duration::from_millis(25))
}
fn default_multiplier() -> f64 {
    2.0
}
fn default_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: default_initial(),
            multiplier: default_multiplier(),
            max: default_max(),
        }
    }
}

impl Backoff {
    /// The bound of retry `attempt` (1 for the first retry).
    pub fn bound(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let grown = self.initial.0.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        Duration::from_secs_f64(grown.min(self.max.0.as_secs_f64()).max(0.0))
    }

    /// How long to wait before retry `attempt`: uniformly random up to its bound.
    pub fn delay(&self, attempt: u32) -> Duration {
        let bound = self.bound(attempt);
        if bound.is_zero() {
            return bound;
        }
        bound.mul_f64(rand::thread_rng().gen::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_budget_allows_a_fifth_of_the_requests_plus_a_floor() {
        let budget = RetryBudget::default();
        // The floor's first second is there at once: ten retries, then none.
        let granted = (0..50).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 10);
        // A hundred requests earn twenty more.
        for _ in 0..100 {
            budget.deposit();
        }
        let granted = (0..50).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 20);
        // Half a second of floor: five more.
        tokio::time::advance(Duration::from_millis(500)).await;
        let granted = (0..50).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 5);
        assert_eq!(budget.spent(), 35);
        assert_eq!(budget.refused(), 115);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_budget_saves_up_at_most_its_ttl() {
        let budget = RetryBudget::new(BudgetConfig {
            ratio: 0.0,
            ..BudgetConfig::default()
        });
        tokio::time::advance(Duration::from_secs(3600)).await;
        let granted = (0..10_000).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 100, "ten seconds of ten a second");
    }

    #[test]
    fn backoff_grows_to_its_maximum_and_jitters_below_the_bound() {
        let b = Backoff::default();
        assert_eq!(b.bound(1), Duration::from_millis(25));
        assert_eq!(b.bound(2), Duration::from_millis(50));
        assert_eq!(b.bound(3), Duration::from_millis(100));
        assert_eq!(b.bound(10), Duration::from_secs(1));
        assert_eq!(b.bound(u32::MAX), Duration::from_secs(1));
        for attempt in 1..8 {
            let d = b.delay(attempt);
            assert!(d <= b.bound(attempt), "{d:?}");
        }
    }
}
