//! Latency statistics: exact percentiles from the full list of samples.
//!
//! A run records at most a few hundred thousand latencies, so keeping every sample and sorting
//! once costs a few MiB and gives exact numbers; a histogram would only add an error bound.

use std::time::Duration;

/// Every successful request's latency from one run.
#[derive(Debug, Default)]
pub struct Latencies {
    /// Samples, unsorted until [`Latencies::summary`] sorts them.
    samples: Vec<Duration>,
    /// Samples recorded with [`Latencies::record_at`]: the second of the run each completed
    /// in, and its latency, for the per-second percentiles.
    timed: Vec<(u32, Duration)>,
    /// The latest completion time given to [`Latencies::record_at`]: the run's last second
    /// ends there, so its window is shorter than a second.
    last_done: Duration,
    /// The slowest sample given to [`Latencies::record_at`] and when it completed.
    slowest: Option<(Duration, Duration)>,
}

/// Windows with fewer samples than this are left out of the per-second percentiles: the p99 of
/// a handful of requests is just their slowest.
const MIN_WINDOW_SAMPLES: usize = 100;

/// The percentiles a report prints, in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Slowest request.
    pub max_ms: f64,
    /// The p99 of each 1-second window of the run (by completion time, windows of at least
    /// 100 samples): their median (the steady p99) and their worst (a stall shows here).
    pub windows: Option<WindowSummary>,
    /// When the slowest request completed, in ms from the run's start (timed samples only).
    pub max_at_ms: Option<f64>,
}

/// Per-second p99s of a run (see [`Summary::windows`]).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSummary {
    /// Windows counted.
    pub count: usize,
    /// Median of the windows' p99s.
    pub median_p99_ms: f64,
    /// Worst of the windows' p99s.
    pub worst_p99_ms: f64,
    /// The second of the run (from its start) whose window had the worst p99, to set beside
    /// the servers' logs.
    pub worst_at_s: u32,
    /// Every window's p99 in milliseconds, by second (a second with too few requests is
    /// left out, so read it with `seconds`).
    pub p99s_ms: Vec<f64>,
    /// The second of each entry of `p99s_ms`.
    pub seconds: Vec<u32>,
    /// The run's last second, which ended with the run before it was whole: its length in
    /// seconds and its p99, reported apart from the windows above. A pause that holds up every
    /// request in flight weighs more in a short window's p99 (a 0.4-s window with the same
    /// pause as a whole one has 2.5 times its share of slow requests), so it would not be a
    /// 1-second window like the others.
    pub tail: Option<(f64, f64)>,
}

impl Latencies {
    /// Adds one sample.
    pub fn record(&mut self, latency: Duration) {
        self.samples.push(latency);
    }

    /// Adds one sample of a request that completed `done_at` after the run started.
    pub fn record_at(&mut self, done_at: Duration, latency: Duration) {
        self.samples.push(latency);
        let second = u32::try_from(done_at.as_secs()).unwrap_or(u32::MAX);
        self.timed.push((second, latency));
        self.last_done = self.last_done.max(done_at);
        self.note_slowest(latency, done_at);
    }

    /// Keeps `latency`, completed at `done_at`, as the slowest timed sample if it is.
    fn note_slowest(&mut self, latency: Duration, done_at: Duration) {
        if self.slowest.is_none_or(|(slowest, _)| latency > slowest) {
            self.slowest = Some((latency, done_at));
        }
    }

    /// Moves every sample of `other` into `self`.
    pub fn merge(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
        self.timed.extend(other.timed);
        self.last_done = self.last_done.max(other.last_done);
        if let Some((latency, done_at)) = other.slowest {
            self.note_slowest(latency, done_at);
        }
    }

    fn windows(&mut self) -> Option<WindowSummary> {
        self.timed.sort_unstable();
        let mut by_second: Vec<(u32, Duration)> = self
            .timed
            .chunk_by(|a, b| a.0 == b.0)
            .filter(|window| window.len() >= MIN_WINDOW_SAMPLES)
            .map(|window| {
                // Sorted by (second, latency), so each window's latencies are sorted.
                let latencies: Vec<Duration> = window.iter().map(|(_, l)| *l).collect();
                (window[0].0, nearest_rank(&latencies, 0.99))
            })
            .collect();
        // Sorted by second, so only the last window can be the run's last, partial second.
        let last_second = u32::try_from(self.last_done.as_secs()).unwrap_or(u32::MAX);
        let tail = by_second
            .pop_if(|(second, _)| *second >= last_second)
            .map(|(second, p99)| {
                let length = self.last_done.as_secs_f64() - f64::from(second);
                ((length * 1000.0).round() / 1000.0, millis(p99))
            });
        let p99s_ms = by_second.iter().map(|(_, p99)| millis(*p99)).collect();
        let seconds = by_second.iter().map(|(second, _)| *second).collect();
        let (worst_at_s, worst) = by_second.iter().max_by_key(|(_, p99)| *p99).copied()?;
        let mut p99s: Vec<Duration> = by_second.iter().map(|(_, p99)| *p99).collect();
        p99s.sort_unstable();
        Some(WindowSummary {
            count: p99s.len(),
            median_p99_ms: millis(nearest_rank_or_none(&p99s, 0.5)?),
            worst_p99_ms: millis(worst),
            worst_at_s,
            p99s_ms,
            seconds,
            tail,
        })
    }

    /// Returns how many samples were recorded.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Returns p50, p99 and max, or `None` when nothing was recorded.
    pub fn summary(&mut self) -> Option<Summary> {
        self.samples.sort_unstable();
        let max = *self.samples.last()?;
        let windows = self.windows();
        Some(Summary {
            p50_ms: millis(nearest_rank(&self.samples, 0.50)),
            p99_ms: millis(nearest_rank(&self.samples, 0.99)),
            max_ms: millis(max),
            windows,
            max_at_ms: self
                .slowest
                .map(|(_, done_at)| (done_at.as_secs_f64() * 1_000_000.0).round() / 1000.0),
        })
    }
}

/// Returns the nearest-rank percentile `quantile` (0 < quantile <= 1) of sorted, non-empty
/// `sorted`: the smallest sample such that at least that fraction of samples is <= it.
fn nearest_rank(sorted: &[Duration], quantile: f64) -> Duration {
    debug_assert!(!sorted.is_empty(), "percentile of no samples");
    debug_assert!(quantile > 0.0 && quantile <= 1.0, "quantile out of range");
    // Sample counts stay far below 2^52, so the f64 round trip is exact.
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn nearest_rank_or_none(sorted: &[Duration], quantile: f64) -> Option<Duration> {
    (!sorted.is_empty()).then(|| nearest_rank(sorted, quantile))
}

/// Converts to milliseconds, rounded to microseconds so the JSON stays short.
fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Latencies {
        let mut latencies = Latencies::default();
        for value in values {
            latencies.record(Duration::from_millis(*value));
        }
        latencies
    }

    #[test]
    fn empty_has_no_summary() {
        assert_eq!(Latencies::default().summary(), None);
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let summary = ms(&[7]).summary().unwrap();
        assert_eq!(summary.p50_ms, 7.0);
        assert_eq!(summary.p99_ms, 7.0);
        assert_eq!(summary.max_ms, 7.0);
    }

    #[test]
    fn nearest_rank_over_one_hundred_samples() {
        // 100..=1 in reverse, so the summary has to sort.
        let values: Vec<u64> = (1..=100).rev().collect();
        let summary = ms(&values).summary().unwrap();
        assert_eq!(summary.p50_ms, 50.0);
        assert_eq!(summary.p99_ms, 99.0);
        assert_eq!(summary.max_ms, 100.0);
    }

    #[test]
    fn merge_keeps_every_sample() {
        let mut all = ms(&[1, 2]);
        all.merge(ms(&[3]));
        assert_eq!(all.len(), 3);
        assert_eq!(all.summary().unwrap().max_ms, 3.0);
    }

    #[test]
    fn windows_show_the_second_that_stalled() {
        let mut latencies = Latencies::default();
        for second in 0..5u64 {
            for n in 0..200u64 {
                // Second 3 has a slow tail: its p99 is 500 ms; every other second's is 2 ms.
                let latency = if second == 3 && n >= 190 {
                    500
                } else {
                    1 + n / 190
                };
                latencies.record_at(
                    Duration::from_millis(second * 1000 + n),
                    Duration::from_millis(latency),
                );
            }
        }
        // A second with too few samples is not a window.
        latencies.record_at(Duration::from_secs(9), Duration::from_secs(3));
        let windows = latencies.summary().unwrap().windows.unwrap();
        assert_eq!(windows.count, 5);
        assert_eq!(windows.median_p99_ms, 2.0);
        assert_eq!(windows.worst_at_s, 3);
        assert_eq!(windows.seconds, vec![0, 1, 2, 3, 4]);
        assert_eq!(windows.p99s_ms, vec![2.0, 2.0, 2.0, 500.0, 2.0]);
        assert_eq!(windows.worst_p99_ms, 500.0);
        assert_eq!(windows.tail, None);
        assert_eq!(Latencies::default().windows(), None);
    }

    #[test]
    fn the_last_partial_second_is_reported_apart() {
        let mut latencies = Latencies::default();
        // Three whole seconds at 2 ms, then 0.4 s in which 3 of 200 requests took 40 ms.
        for second in 0..3u64 {
            for n in 0..200u64 {
                latencies.record_at(
                    Duration::from_millis(second * 1000 + n * 5),
                    Duration::from_millis(2),
                );
            }
        }
        for n in 0..200u64 {
            let latency = if n >= 197 { 40 } else { 2 };
            latencies.record_at(
                Duration::from_millis(3000 + n * 2),
                Duration::from_millis(latency),
            );
        }
        let summary = latencies.summary().unwrap();
        let windows = summary.windows.unwrap();
        assert_eq!(windows.seconds, vec![0, 1, 2]);
        assert_eq!(windows.worst_p99_ms, 2.0);
        assert_eq!(windows.tail, Some((0.398, 40.0)));
        assert_eq!(summary.max_at_ms, Some(3394.0));
    }

    #[test]
    fn millis_rounds_to_microseconds() {
        assert_eq!(millis(Duration::from_nanos(1_234_567)), 1.235);
    }
}
