//! Warnings for the steps every write waits on, when one takes long enough to stall writes: a
//! Raft log commit (write and fsync), an apply batch, the async runtime's own turn. etcd warns
//! of a slow fdatasync and of an apply that took too long; these lines say which step, when,
//! for how long, and how many more there were since the last line, at most five lines a
//! second per step, so that a stall clients saw can be laid beside its cause in the node's log.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The target of the warnings: the node's log filter lets them through unlimited, since they
/// limit themselves.
pub const TARGET: &str = "strata::slow";

/// One kind of step, with the time over which it counts as slow.
pub struct SlowSteps {
    step: &'static str,
    threshold: Duration,
    state: Mutex<Unreported>,
}

/// Lines a step may log in one second; slow steps beyond them are counted for the next line.
const LINES_PER_SECOND: u32 = 5;

/// The current second's lines, and the slow steps not yet told.
#[derive(Default)]
struct Unreported {
    /// When the current one-second window of lines began.
    window_start: Option<Instant>,
    /// Lines logged in it.
    lines: u32,
    count: u64,
    worst: Duration,
}

impl SlowSteps {
    /// Slow steps of kind `step` (`raft_log_commit`, ...): those taking `threshold` or more.
    pub const fn new(step: &'static str, threshold: Duration) -> SlowSteps {
        SlowSteps {
            step,
            threshold,
            state: Mutex::new(Unreported {
                window_start: None,
                lines: 0,
                count: 0,
                worst: Duration::ZERO,
            }),
        }
    }

    /// Notes that one step took `took`; a slow one is warned of, or, past
    /// [`LINES_PER_SECOND`] lines in the current second, counted for the next warning.
    /// Returns whether it was slow.
    pub fn observe(&self, took: Duration) -> bool {
        if took < self.threshold {
            return false;
        }
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.window_start {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => {}
            _ => {
                state.window_start = Some(now);
                state.lines = 0;
            }
        }
        if state.lines >= LINES_PER_SECOND {
            state.count += 1;
            state.worst = state.worst.max(took);
            return true;
        }
        state.lines += 1;
        let earlier = std::mem::take(&mut state.count);
        let worst_earlier = std::mem::take(&mut state.worst);
        drop(state);
        tracing::warn!(
            target: TARGET,
            step = self.step,
            took_ms = millis(took),
            threshold_ms = millis(self.threshold),
            untold_since_last_warning = earlier,
            worst_untold_ms = millis(worst_earlier),
            "slow step: writes waited on it"
        );
        true
    }
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e4).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_steps_over_the_threshold_are_slow_and_a_burst_waits_for_the_next_line() {
        let steps = SlowSteps::new("test", Duration::from_millis(50));
        assert!(!steps.observe(Duration::from_millis(49)));
        for _ in 0..LINES_PER_SECOND {
            assert!(steps.observe(Duration::from_millis(50)));
        }
        assert_eq!(steps.state.lock().unwrap().count, 0, "each one told");
        // Past the second's lines: counted, not told.
        assert!(steps.observe(Duration::from_millis(70)));
        assert!(steps.observe(Duration::from_millis(60)));
        let state = steps.state.lock().unwrap();
        assert_eq!((state.count, state.worst), (2, Duration::from_millis(70)));
    }
}
