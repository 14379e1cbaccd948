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
}

/// The percentiles a report prints, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Slowest request.
    pub max_ms: f64,
}

impl Latencies {
    /// Adds one sample.
    pub fn record(&mut self, latency: Duration) {
        self.samples.push(latency);
    }

    /// Moves every sample of `other` into `self`.
    pub fn merge(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
    }

    /// Returns how many samples were recorded.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Returns p50, p99 and max, or `None` when nothing was recorded.
    pub fn summary(&mut self) -> Option<Summary> {
        self.samples.sort_unstable();
        let max = *self.samples.last()?;
        Some(Summary {
            p50_ms: millis(nearest_rank(&self.samples, 0.50)),
            p99_ms: millis(nearest_rank(&self.samples, 0.99)),
            max_ms: millis(max),
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
    fn millis_rounds_to_microseconds() {
        assert_eq!(millis(Duration::from_nanos(1_234_567)), 1.235);
    }
}
