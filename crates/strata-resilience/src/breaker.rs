//! Circuit breakers with Resilience4j's semantics and defaults.
//!
//! A breaker is **closed** while calls go through and their outcomes fill a sliding window:
//! the last `window_size` calls (`count`), or the calls of the last `window_size` seconds
//! (`time`). Once the window holds `minimum_calls`, a failure rate at or over
//! `failure_rate_threshold` percent, or a slow-call rate (calls slower than
//! `slow_call_duration`) at or over `slow_call_rate_threshold`, **opens** it: calls are refused
//! for `wait_in_open`. The first call after that turns it **half-open**: `half_open_calls`
//! trial calls go through, and their rates decide between closed (window emptied) and open
//! again. An operator may force it **open** or **disable** it (every call goes through and
//! nothing is counted).
//!
//! A permit remembers the breaker's generation: an outcome that arrives after a transition (a
//! slow call admitted while closed, answering after the breaker opened) is not counted against
//! the new state.

use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::Duration;
use strata_api::units::HumanDuration;
use tokio::time::Instant;

/// How a breaker is configured (each field defaults to Resilience4j's default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Percent of failed calls in the window that opens the breaker (default 50).
    #[serde(default = "default_failure_rate")]
    pub failure_rate_threshold: f64,
    /// Percent of slow calls in the window that opens the breaker (default 100).
    #[serde(default = "default_slow_rate")]
    pub slow_call_rate_threshold: f64,
    /// A call slower than this is slow (default 60s).
    #[serde(default = "default_slow_duration")]
    pub slow_call_duration: HumanDuration,
    /// `count` (the last `window_size` calls, default) or `time` (the last `window_size`
    /// seconds).
    #[serde(default)]
    pub window: WindowKind,
    /// Calls or seconds in the window (default 100).
    #[serde(default = "default_window_size")]
    pub window_size: u32,
    /// Calls the window must hold before its rates count (default 100).
    #[serde(default = "default_minimum_calls")]
    pub minimum_calls: u32,
    /// How long the breaker stays open before trial calls (default 60s).
    #[serde(default = "default_wait_in_open")]
    pub wait_in_open: HumanDuration,
    /// Trial calls in half-open (default 10).
    #[serde(default = "default_half_open_calls")]
    pub half_open_calls: u32,
    /// `auto` (default), `forced_open` or `disabled`.
    #[serde(default)]
    pub mode: Mode,
}

fn default_failure_rate() -> f64 {
    50.0
}
fn default_slow_rate() -> f64 {
    100.0
}
fn default_slow_duration() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_window_size() -> u32 {
    100
}
fn default_minimum_calls() -> u32 {
    100
}
fn default_wait_in_open() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_half_open_calls() -> u32 {
    10
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_rate_threshold: default_failure_rate(),
            slow_call_rate_threshold: default_slow_rate(),
            slow_call_duration: default_slow_duration(),
            window: WindowKind::Count,
            window_size: default_window_size(),
            minimum_calls: default_minimum_calls(),
            wait_in_open: default_wait_in_open(),
            half_open_calls: default_half_open_calls(),
            mode: Mode::Auto,
        }
    }
}

impl BreakerConfig {
    /// Checks the numbers; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        for (name, value) in [
            ("failure_rate_threshold", self.failure_rate_threshold),
            ("slow_call_rate_threshold", self.slow_call_rate_threshold),
        ] {
            if !(value > 0.0 && value <= 100.0) {
                return Err(format!(
                    "{name} must be over 0 and at most 100, not {value}"
                ));
            }
        }
        if self.window_size == 0 || self.window_size > 100_000 {
            return Err("window_size must be from 1 to 100000".into());
        }
        if self.minimum_calls == 0 {
            return Err("minimum_calls must be at least 1".into());
        }
        if self.half_open_calls == 0 {
            return Err("half_open_calls must be at least 1".into());
        }
        Ok(())
    }
}

/// The kind of sliding window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// The last N calls.
    #[default]
    Count,
    /// The calls of the last N seconds.
    Time,
}

/// An operator's override.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The breaker follows the outcomes.
    #[default]
    Auto,
    /// Every call is refused.
    ForcedOpen,
    /// Every call goes through; nothing is counted.
    Disabled,
}

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Calls go through.
    Closed,
    /// Calls are refused until the wait is over.
    Open,
    /// A few trial calls go through.
    HalfOpen,
    /// Refused by the operator.
    ForcedOpen,
    /// Not counting; calls go through.
    Disabled,
}

impl State {
    /// The state's name, as in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
        }
    }

    /// Every state, for metrics that export one series per state.
    pub const ALL: [State; 5] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
        State::Disabled,
    ];
}

/// Permission to make one call; give it back with [`CircuitBreaker::record`].
#[derive(Debug)]
#[must_use = "record the outcome of the call"]
pub struct Permit {
    generation: u64,
    started: Instant,
}

/// A refused call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// When a call may next be let through (for `Retry-After`).
    pub retry_after: Duration,
}

/// A change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Before.
    pub from: State,
    /// After.
    pub to: State,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    calls: u32,
    failures: u32,
    slow: u32,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.calls += other.calls;
        self.failures += other.failures;
        self.slow += other.slow;
    }

    fn sub(&mut self, other: Counts) {
        self.calls -= other.calls;
        self.failures -= other.failures;
        self.slow -= other.slow;
    }

    fn one(failed: bool, slow: bool) -> Counts {
        Counts {
            calls: 1,
            failures: u32::from(failed),
            slow: u32::from(slow),
        }
    }

    /// Failure and slow-call rates in percent.
    fn rates(self) -> (f64, f64) {
        if self.calls == 0 {
            return (0.0, 0.0);
        }
        let calls = f64::from(self.calls);
        (
            f64::from(self.failures) * 100.0 / calls,
            f64::from(self.slow) * 100.0 / calls,
        )
    }
}

/// The sliding window: a ring of calls, or of one-second buckets.
#[derive(Debug)]
struct Window {
    kind: WindowKind,
    /// Count: one entry per call; time: one bucket per second (with its second).
    slots: Vec<(u64, Counts)>,
    next: usize,
    totals: Counts,
    /// Time windows: the last second brought up to date.
    current_second: u64,
    origin: Instant,
}

impl Window {
    fn new(kind: WindowKind, size: u32, origin: Instant) -> Window {
        Window {
            kind,
            slots: vec![(0, Counts::default()); size as usize],
            next: 0,
            totals: Counts::default(),
            current_second: 0,
            origin,
        }
    }

    fn clear(&mut self) {
        self.slots.fill((0, Counts::default()));
        self.next = 0;
        self.totals = Counts::default();
    }

    /// Time windows: empties the buckets of seconds that left the window.
    fn advance(&mut self, now: Instant) {
        if self.kind != WindowKind::Time {
            return;
        }
        let second = now.saturating_duration_since(self.origin).as_secs() + 1;
        let size = self.slots.len() as u64;
        if second <= self.current_second {
            return;
        }
        let first = self.current_second.max(second.saturating_sub(size)) + 1;
        for s in first..=second {
            let slot = &mut self.slots[(s % size) as usize];
            if slot.0 != s {
                let stale = slot.1;
                self.totals.sub(stale);
                *slot = (s, Counts::default());
            }
        }
        self.current_second = second;
    }

    fn record(&mut self, now: Instant, call: Counts) {
        match self.kind {
            WindowKind::Count => {
                let slot = &mut self.slots[self.next];
                let old = slot.1;
                slot.1 = call;
                self.totals.sub(old);
                self.totals.add(call);
                self.next = (self.next + 1) % self.slots.len();
            }
            WindowKind::Time => {
                self.advance(now);
                let size = self.slots.len() as u64;
                let slot = &mut self.slots[(self.current_second % size) as usize];
                slot.1.add(call);
                self.totals.add(call);
            }
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: State,
    generation: u64,
    window: Window,
    opened_at: Instant,
    half_open_left: u32,
    half_open: Counts,
    not_permitted: u64,
}

/// What a breaker looks like now (for the admin API).
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Its state.
    pub state: State,
    /// Calls in the window.
    pub calls: u32,
    /// Failed calls in the window.
    pub failed_calls: u32,
    /// Slow calls in the window.
    pub slow_calls: u32,
    /// Failure rate in percent (0 until the window holds the minimum).
    pub failure_rate: f64,
    /// Slow-call rate in percent.
    pub slow_call_rate: f64,
    /// Calls refused so far.
    pub not_permitted: u64,
    /// While open: how long until trial calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// One circuit breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    /// A closed breaker (or forced open, or disabled, as `config.mode` says).
    pub fn new(config: BreakerConfig) -> CircuitBreaker {
        let now = Instant::now();
        let state = match config.mode {
            Mode::Auto => State::Closed,
            Mode::ForcedOpen => State::ForcedOpen,
            Mode::Disabled => State::Disabled,
        };
        CircuitBreaker {
            inner: Mutex::new(Inner {
                state,
                generation: 0,
                window: Window::new(config.window, config.window_size, now),
                opened_at: now,
                half_open_left: 0,
                half_open: Counts::default(),
                not_permitted: 0,
            }),
            config,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks to make a call. Open: refused until the wait is over; the first call after it
    /// turns the breaker half-open (reported in the transition).
    pub fn try_acquire(&self) -> (Result<Permit, Rejected>, Option<Transition>) {
        self.try_acquire_at(Instant::now())
    }

    /// [`CircuitBreaker::try_acquire`] at `now` (a caller that already read the clock).
    pub fn try_acquire_at(&self, now: Instant) -> (Result<Permit, Rejected>, Option<Transition>) {
        let mut inner = self.lock();
        let mut transition = None;
        if inner.state == State::Open {
            let until = inner.opened_at + self.config.wait_in_open.0;
            if now < until {
                inner.not_permitted += 1;
                return (
                    Err(Rejected {
                        retry_after: until - now,
                    }),
                    None,
                );
            }
            transition = Some(self.enter(&mut inner, State::HalfOpen, now));
        }
        let permit = Permit {
            generation: inner.generation,
            started: now,
        };
        match inner.state {
            State::Closed | State::Disabled => (Ok(permit), transition),
            State::HalfOpen if inner.half_open_left > 0 => {
                inner.half_open_left -= 1;
                (Ok(permit), transition)
            }
            State::HalfOpen | State::Open | State::ForcedOpen => {
                inner.not_permitted += 1;
                let retry_after = if inner.state == State::HalfOpen {
                    // The trial calls are out; their answers decide soon.
                    Duration::from_secs(1)
                } else {
                    self.config.wait_in_open.0
                };
                (Err(Rejected { retry_after }), transition)
            }
        }
    }

    /// Records the outcome of a permitted call (its duration is measured from the permit).
    pub fn record(&self, permit: Permit, failed: bool) -> Option<Transition> {
        self.record_at(permit, failed, Instant::now())
    }

    /// [`CircuitBreaker::record`] at `now`.
    pub fn record_at(&self, permit: Permit, failed: bool, now: Instant) -> Option<Transition> {
        let slow = now.saturating_duration_since(permit.started) > self.config.slow_call_duration.0;
        let mut inner = self.lock();
        if permit.generation != inner.generation {
            return None;
        }
        let call = Counts::one(failed, slow);
        match inner.state {
            State::Closed => {
                inner.window.record(now, call);
                let totals = inner.window.totals;
                if totals.calls >= self.minimum() && self.over_threshold(totals) {
                    return Some(self.enter(&mut inner, State::Open, now));
                }
                None
            }
            State::HalfOpen => {
                inner.half_open.add(call);
                let tried = inner.half_open;
                if tried.calls >= self.config.half_open_calls {
                    let next = if self.over_threshold(tried) {
                        State::Open
                    } else {
                        State::Closed
                    };
                    return Some(self.enter(&mut inner, next, now));
                }
                None
            }
            State::Open | State::ForcedOpen | State::Disabled => None,
        }
    }

    /// The minimum calls, bounded by what a count window can hold.
    fn minimum(&self) -> u32 {
        match self.config.window {
            WindowKind::Count => self.config.minimum_calls.min(self.config.window_size),
            WindowKind::Time => self.config.minimum_calls,
        }
    }

    fn over_threshold(&self, counts: Counts) -> bool {
        let (failure_rate, slow_rate) = counts.rates();
        failure_rate >= self.config.failure_rate_threshold
            || slow_rate >= self.config.slow_call_rate_threshold
    }

    fn enter(&self, inner: &mut Inner, to: State, now: Instant) -> Transition {
        let from = inner.state;
        inner.state = to;
        inner.generation += 1;
        match to {
            State::Open => inner.opened_at = now,
            State::HalfOpen => {
                inner.half_open_left = self.config.half_open_calls;
                inner.half_open = Counts::default();
            }
            State::Closed => inner.window.clear(),
            State::ForcedOpen | State::Disabled => {}
        }
        Transition { from, to }
    }

    /// Sets the operator's override (`Auto` closes the breaker).
    pub fn set_mode(&self, mode: Mode) -> Option<Transition> {
        let now = Instant::now();
        let mut inner = self.lock();
        let to = match mode {
            Mode::Auto => State::Closed,
            Mode::ForcedOpen => State::ForcedOpen,
            Mode::Disabled => State::Disabled,
        };
        (inner.state != to).then(|| self.enter(&mut inner, to, now))
    }

    /// The state now. An open breaker whose wait is over still reads open until a call asks.
    pub fn state(&self) -> State {
        self.lock().state
    }

    /// The state and the window's numbers.
    pub fn snapshot(&self) -> Snapshot {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.window.advance(now);
        let totals = match inner.state {
            State::HalfOpen => inner.half_open,
            _ => inner.window.totals,
        };
        let (failure_rate, slow_call_rate) = if totals.calls >= self.minimum() {
            totals.rates()
        } else {
            (0.0, 0.0)
        };
        Snapshot {
            state: inner.state,
            calls: totals.calls,
            failed_calls: totals.failures,
            slow_calls: totals.slow,
            failure_rate,
            slow_call_rate,
            not_permitted: inner.not_permitted,
            retry_after_ms: (inner.state == State::Open).then(|| {
                (inner.opened_at + self.config.wait_in_open.0)
                    .saturating_duration_since(now)
                    .as_millis() as u64
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(window: WindowKind, size: u32, minimum: u32) -> BreakerConfig {
        BreakerConfig {
            window,
            window_size: size,
            minimum_calls: minimum,
            wait_in_open: HumanDuration(Duration::from_secs(10)),
            half_open_calls: 3,
            slow_call_duration: HumanDuration(Duration::from_millis(500)),
            ..BreakerConfig::default()
        }
    }

    fn call(b: &CircuitBreaker, failed: bool) -> Option<Transition> {
        let (permit, _) = b.try_acquire();
        b.record(permit.expect("permitted"), failed)
    }

    #[tokio::test(start_paused = true)]
    async fn defaults_are_resilience4js() {
        let c = BreakerConfig::default();
        assert_eq!(c.failure_rate_threshold, 50.0);
        assert_eq!(c.slow_call_rate_threshold, 100.0);
        assert_eq!(c.slow_call_duration.0, Duration::from_secs(60));
        assert_eq!(
            (c.window, c.window_size, c.minimum_calls),
            (WindowKind::Count, 100, 100)
        );
        assert_eq!(c.wait_in_open.0, Duration::from_secs(60));
        assert_eq!(c.half_open_calls, 10);
        assert!(c.check().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn opens_at_the_failure_rate_once_the_window_holds_the_minimum() {
        let b = CircuitBreaker::new(config(WindowKind::Count, 10, 10));
        // Nine calls, all failed: below the minimum, still closed.
        for _ in 0..9 {
            assert_eq!(call(&b, true), None);
        }
        assert_eq!(b.state(), State::Closed);
        assert_eq!(
            call(&b, true),
            Some(Transition {
                from: State::Closed,
                to: State::Open
            })
        );
        let (refused, _) = b.try_acquire();
        assert_eq!(refused.unwrap_err().retry_after, Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(
            b.try_acquire().0.unwrap_err().retry_after,
            Duration::from_secs(6)
        );
        assert_eq!(b.snapshot().not_permitted, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_count_window_forgets_the_oldest_call() {
        let b = CircuitBreaker::new(config(WindowKind::Count, 10, 10));
        // 4 failures then 6 successes: 40%, closed; each new success pushes a failure out.
        for failed in [
            true, true, true, true, false, false, false, false, false, false,
        ] {
            assert_eq!(call(&b, failed), None);
        }
        assert_eq!(b.snapshot().failure_rate, 40.0);
        call(&b, false);
        assert_eq!(b.snapshot().failure_rate, 30.0);
        // A failure replacing a failure leaves the rate as it was.
        call(&b, true);
        assert_eq!(b.snapshot().failure_rate, 30.0);
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_the_trial_calls_through_and_decides() {
        let b = CircuitBreaker::new(config(WindowKind::Count, 4, 4));
        for _ in 0..4 {
            call(&b, true);
        }
        assert_eq!(b.state(), State::Open);
        tokio::time::advance(Duration::from_secs(10)).await;
        let (first, transition) = b.try_acquire();
        assert_eq!(
            transition,
            Some(Transition {
                from: State::Open,
                to: State::HalfOpen
            })
        );
        let (second, _) = b.try_acquire();
        let (third, _) = b.try_acquire();
        // Three permits are out: the fourth caller is refused.
        assert!(b.try_acquire().0.is_err());
        assert_eq!(b.record(first.unwrap(), false), None);
        assert_eq!(b.record(second.unwrap(), true), None);
        // 1 failure in 3 is under 50%: closed, with an empty window.
        assert_eq!(
            b.record(third.unwrap(), false),
            Some(Transition {
                from: State::HalfOpen,
                to: State::Closed
            })
        );
        assert_eq!(b.snapshot().calls, 0);
        // Failing trials open it again.
        for _ in 0..4 {
            call(&b, true);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        for i in 0..3 {
            let t = call(&b, true);
            if i == 2 {
                assert_eq!(t.map(|t| t.to), Some(State::Open));
            }
        }
        assert!(b.try_acquire().0.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn slow_calls_open_it_at_their_own_rate() {
        let b = CircuitBreaker::new(BreakerConfig {
            slow_call_rate_threshold: 50.0,
            ..config(WindowKind::Count, 4, 4)
        });
        for _ in 0..2 {
            call(&b, false);
        }
        let (p1, _) = b.try_acquire();
        let (p2, _) = b.try_acquire();
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(b.record(p1.unwrap(), false), None);
        assert_eq!(
            b.record(p2.unwrap(), false).map(|t| t.to),
            Some(State::Open)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_from_before_a_transition_are_not_counted() {
        let b = CircuitBreaker::new(config(WindowKind::Count, 2, 2));
        let (late, _) = b.try_acquire();
        call(&b, true);
        call(&b, true);
        assert_eq!(b.state(), State::Open);
        tokio::time::advance(Duration::from_secs(10)).await;
        let (trial, _) = b.try_acquire();
        // The call admitted while closed answers now: ignored by the half-open trial.
        assert_eq!(b.record(late.unwrap(), true), None);
        assert_eq!(b.snapshot().calls, 0);
        assert_eq!(b.record(trial.unwrap(), false), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_time_window_counts_the_last_seconds_only() {
        let b = CircuitBreaker::new(config(WindowKind::Time, 5, 4));
        for _ in 0..3 {
            call(&b, true);
        }
        // Five seconds later those three failures have left the window.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.snapshot().calls, 0);
        for _ in 0..3 {
            call(&b, false);
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(call(&b, true), None, "1 failure in 4 is 25%");
        call(&b, true);
        assert_eq!(b.snapshot().calls, 5);
        // 2 of 5 failed; in 3 s the successes leave and the failures make it 100%.
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(b.snapshot().calls, 2);
        call(&b, true);
        assert_eq!(call(&b, true).map(|t| t.to), Some(State::Open));
    }

    #[tokio::test(start_paused = true)]
    async fn forced_open_refuses_and_disabled_lets_everything_through() {
        let b = CircuitBreaker::new(config(WindowKind::Count, 2, 2));
        assert_eq!(
            b.set_mode(Mode::ForcedOpen).map(|t| t.to),
            Some(State::ForcedOpen)
        );
        tokio::time::advance(Duration::from_secs(100)).await;
        assert!(b.try_acquire().0.is_err());
        b.set_mode(Mode::Disabled);
        for _ in 0..10 {
            assert_eq!(call(&b, true), None);
        }
        assert_eq!(b.state(), State::Disabled);
        assert_eq!(b.set_mode(Mode::Auto).map(|t| t.to), Some(State::Closed));
    }

    #[test]
    fn bad_numbers_are_refused_by_name() {
        let bad = BreakerConfig {
            failure_rate_threshold: 0.0,
            ..BreakerConfig::default()
        };
        assert!(bad.check().unwrap_err().contains("failure_rate_threshold"));
        let bad = BreakerConfig {
            half_open_calls: 0,
            ..BreakerConfig::default()
        };
        assert!(bad.check().unwrap_err().contains("half_open_calls"));
    }
}
