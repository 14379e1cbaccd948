//! [`run_snapshot_schedule`]: when each node builds its snapshots.
//!
//! openraft's own policy (`LogsSinceLast(n)`) makes every member snapshot at the same log
//! index, and members apply an index at about the same moment, so a whole cluster would
//! serialise its state at once and every member's latency would spike together. Instead each
//! node snapshots at indexes of its own phase: a node's snapshots fall on indexes congruent to
//! its phase modulo `every`, and the phases of ids 1, 2, 3, ... are spread over the interval by
//! the golden ratio, so any few members are far apart.

use crate::Raft;
use std::future::Future;
use std::time::Duration;

/// How often the schedule looks at the applied index.
const TICK: Duration = Duration::from_millis(100);

/// The phase of node `id`'s snapshots within an interval of `every` entries.
pub fn snapshot_phase(id: u64, every: u64) -> u64 {
    if every == 0 {
        return 0;
    }
    let fraction = (id as f64 * 0.618_033_988_749_895).fract();
    ((fraction * every as f64) as u64).min(every - 1)
}

/// The first log index after `last` (the latest snapshot's index) at which node `id` builds
/// its next snapshot: at least `every / 2` entries later, on the node's phase.
pub fn next_snapshot_due(id: u64, every: u64, last: u64) -> u64 {
    let every = every.max(1);
    let phase = snapshot_phase(id, every);
    let earliest = last.saturating_add(every / 2).saturating_add(1);
    let base = earliest - earliest % every;
    let candidate = base.saturating_add(phase);
    if candidate >= earliest {
        candidate
    } else {
        candidate.saturating_add(every)
    }
}

/// Triggers a snapshot on `raft` whenever the applied index reaches the node's next due index.
/// Configure openraft with `SnapshotPolicy::Never` when running this. Returns when `shutdown`
/// resolves.
pub async fn run_snapshot_schedule(
    raft: Raft,
    id: u64,
    every: u64,
    shutdown: impl Future<Output = ()>,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    // The due index last triggered: openraft may take a while to build it, and the trigger
    // must not be repeated meanwhile.
    let mut triggered = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        let (applied, last) = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            (
                m.last_applied.map(|l| l.index).unwrap_or(0),
                m.snapshot.map(|l| l.index).unwrap_or(0),
            )
        };
        let due = next_snapshot_due(id, every, last);
        if applied >= due && triggered != Some(due) {
            tracing::debug!(applied, due, "triggering snapshot");
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
            triggered = Some(due);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_indexes_keep_each_node_on_its_phase() {
        for id in 1..=5 {
            let every = 10_000;
            let mut last = 0;
            for _ in 0..20 {
                let due = next_snapshot_due(id, every, last);
                assert!(
                    due > last + every / 2,
                    "node {id}: {due} too soon after {last}"
                );
                assert!(
                    due <= last + every / 2 + every,
                    "node {id}: {due} too late after {last}"
                );
                assert_eq!(due % every, snapshot_phase(id, every));
                last = due + 37; // a snapshot lands a little after its trigger
            }
        }
    }

    #[test]
    fn phases_of_a_small_cluster_are_far_apart() {
        let every = 10_000;
        for members in 3..=5u64 {
            let mut phases: Vec<u64> = (1..=members).map(|id| snapshot_phase(id, every)).collect();
            phases.sort_unstable();
            let mut gaps: Vec<u64> = phases.windows(2).map(|w| w[1] - w[0]).collect();
            gaps.push(every - phases[phases.len() - 1] + phases[0]);
            let closest = gaps.into_iter().min().unwrap_or(0);
            assert!(
                closest >= every / (members * 3),
                "{members} members: phases {phases:?} too close ({closest})"
            );
        }
    }

    #[test]
    fn tiny_intervals_do_not_divide_by_zero() {
        assert_eq!(snapshot_phase(3, 0), 0);
        assert!(next_snapshot_due(3, 0, 0) >= 1);
        assert!(next_snapshot_due(3, 1, 5) > 5);
    }
}
