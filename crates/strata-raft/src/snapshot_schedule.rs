//! [`run_snapshot_schedule`]: when each node builds its snapshots.
//!
//! openraft's own policy (`LogsSinceLast(n)`) makes every member snapshot at the same log
//! index, and members apply an index at about the same moment, so a whole cluster would
//! serialise its state at once and every member's latency would spike together. Instead each
//! node snapshots at indexes of its own phase: a node's snapshots fall on indexes congruent to
//! its phase modulo `every`, and the phases of ids 1, 2, 3, ... are spread over the interval by
//! the golden ratio, so any few members are far apart.
//!
//! A snapshot serialises the whole state, so at a fixed interval of entries its cost per
//! write grows with the store. A due snapshot therefore also waits until the log written
//! since the last one is at least `log_ratio` times that snapshot's size (then it is built at
//! the node's next index on its phase, so members stay apart): a large store is snapshotted
//! less often, each write pays a constant share of snapshot work, and the log tail a restart
//! replays stays proportional to the state.
//!
//! No snapshot is built while this node is sending one to a peer ([`SnapshotSends`]): building
//! one purges the log up to it, so the peer, once it has installed the snapshot it was sent,
//! would find the entries after it gone and need a second, newer snapshot (etcd pauses its log
//! compaction while a snapshot is in flight for the same reason).

use crate::Raft;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
    let earliest = last.saturating_add(every.max(1) / 2).saturating_add(1);
    on_phase_from(id, every, earliest)
}

/// The first index at or after `from` on node `id`'s phase.
fn on_phase_from(id: u64, every: u64, from: u64) -> u64 {
    let every = every.max(1);
    let phase = snapshot_phase(id, every);
    let candidate = (from - from % every).saturating_add(phase);
    if candidate >= from {
        candidate
    } else {
        candidate.saturating_add(every)
    }
}

/// How many snapshots this node is sending to peers right now (shared by the network, which
/// counts them, and the schedule, which builds no snapshot while any is in flight).
#[derive(Debug, Clone, Default)]
pub struct SnapshotSends(Arc<AtomicUsize>);

impl SnapshotSends {
    /// Snapshots being sent now.
    pub fn in_flight(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts one send until the returned guard is dropped.
    pub(crate) fn start(&self) -> SendingSnapshot {
        self.0.fetch_add(1, Ordering::Relaxed);
        SendingSnapshot(self.0.clone())
    }
}

/// One snapshot being sent ([`SnapshotSends::start`]).
pub(crate) struct SendingSnapshot(Arc<AtomicUsize>);

impl Drop for SendingSnapshot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How big the log and the snapshot are, for the schedule.
pub trait SnapshotSizes: Send + 'static {
    /// Bytes of entries appended to the log so far (a running total).
    fn log_appended_bytes(&self) -> u64;
    /// Bytes of the latest snapshot (0 when there is none).
    fn snapshot_bytes(&self) -> u64;
}

/// A node's sizes: its log store's running total and its state machine's latest snapshot.
impl<S: crate::StateMachine> SnapshotSizes for (crate::LogStore, crate::StateMachineStore<S>)
where
    crate::StateMachineStore<S>: Send + 'static,
{
    fn log_appended_bytes(&self) -> u64 {
        self.0.appended_bytes()
    }

    fn snapshot_bytes(&self) -> u64 {
        self.1.snapshot_stats().bytes
    }
}

/// When the schedule lets a snapshot be built.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotRule {
    /// Entries between snapshots (each node on its own phase).
    pub every: u64,
    /// The log written since the last snapshot must be at least this many times its size
    /// (0: no such condition).
    pub log_ratio: f64,
}

/// What the schedule remembers between ticks.
#[derive(Debug, Default)]
struct ScheduleState {
    /// The snapshot index last seen, and the log's running total at that moment.
    seen: Option<(u64, u64)>,
    /// The applied index when the log first grew enough since the last snapshot.
    grown_at: Option<u64>,
    /// The due index last triggered: openraft may take a while to build it, and the trigger
    /// must not be repeated meanwhile.
    triggered: Option<u64>,
}

impl ScheduleState {
    /// The index to trigger a snapshot at now, if any, given the applied index, the latest
    /// snapshot's index and size, and the log's running total of bytes.
    fn due(
        &mut self,
        id: u64,
        rule: SnapshotRule,
        applied: u64,
        (last, snapshot_bytes): (u64, u64),
        log_bytes: u64,
    ) -> Option<u64> {
        if self.seen.map(|(index, _)| index) != Some(last) {
            self.seen = Some((last, log_bytes));
            self.grown_at = None;
        }
        let mut due = next_snapshot_due(id, rule.every, last);
        if rule.log_ratio > 0.0 {
            let since = log_bytes.saturating_sub(self.seen.map_or(0, |(_, at)| at));
            if (since as f64) < rule.log_ratio * snapshot_bytes as f64 {
                return None;
            }
            let grown_at = *self.grown_at.get_or_insert(applied);
            due = due.max(on_phase_from(id, rule.every, grown_at));
        }
        if applied >= due && self.triggered != Some(due) {
            self.triggered = Some(due);
            Some(due)
        } else {
            None
        }
    }
}

/// Triggers a snapshot on `raft` whenever the applied index reaches the node's next due index
/// and the log has grown enough since the last one ([`SnapshotRule`]), unless a snapshot is
/// being sent to a peer (`sends`, then it waits for the send to end). Configure openraft with
/// `SnapshotPolicy::Never` when running this. Returns when `shutdown` resolves.
pub async fn run_snapshot_schedule(
    raft: Raft,
    id: u64,
    rule: SnapshotRule,
    sizes: impl SnapshotSizes,
    sends: SnapshotSends,
    shutdown: impl Future<Output = ()>,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let mut state = ScheduleState::default();
    let mut deferred = false;
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
        let snapshot = (last, sizes.snapshot_bytes());
        if let Some(due) = state.due(id, rule, applied, snapshot, sizes.log_appended_bytes()) {
            if sends.in_flight() > 0 {
                // Asked again on the next tick.
                state.triggered = None;
                if !deferred {
                    tracing::info!(
                        applied,
                        due,
                        "snapshot deferred while one is sent to a peer"
                    );
                    deferred = true;
                }
                continue;
            }
            deferred = false;
            tracing::debug!(applied, due, "triggering snapshot");
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
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
    fn a_large_snapshot_waits_for_the_log_to_grow_by_its_share_then_lands_on_the_phase() {
        let rule = SnapshotRule {
            every: 1_000,
            log_ratio: 0.5,
        };
        let id = 2;
        let mut state = ScheduleState::default();
        // A snapshot at index 10,000 of 1,000,000 bytes; the log has 5,000,000 bytes so far.
        let snapshot = (10_000, 1_000_000);
        let start = 5_000_000;
        // The schedule sees the snapshot as it lands: the log's growth is counted from here.
        assert_eq!(state.due(id, rule, 10_001, snapshot, start), None);
        // Long past the entry rule's due index, the log has grown by only 400,000 bytes.
        assert_eq!(state.due(id, rule, 30_000, snapshot, start + 400_000), None);
        // Once it grew by 500,000, the snapshot waits for the node's phase after that point.
        let grown_at = 31_000 + 17;
        let due = on_phase_from(id, rule.every, grown_at);
        assert!(due >= grown_at && due < grown_at + rule.every);
        assert_eq!(due % rule.every, snapshot_phase(id, rule.every));
        assert_eq!(
            state.due(id, rule, grown_at, snapshot, start + 500_000),
            (due == grown_at).then_some(due)
        );
        assert_eq!(
            state.due(id, rule, due, snapshot, start + 600_000),
            Some(due)
        );
        // Triggered once, not again while it is being built.
        assert_eq!(
            state.due(id, rule, due + 5, snapshot, start + 600_100),
            None
        );
        // The new snapshot restarts the count from the log's total at that moment.
        let snapshot = (due + 3, 1_200_000);
        assert_eq!(
            state.due(id, rule, due + 50_000, snapshot, start + 1_000_000),
            None
        );
        assert!(state
            .due(id, rule, due + 60_000, snapshot, start + 1_600_000)
            .is_some());
    }

    #[test]
    fn without_the_log_rule_or_with_a_small_snapshot_the_entry_interval_decides() {
        for rule in [
            SnapshotRule {
                every: 1_000,
                log_ratio: 0.0,
            },
            SnapshotRule {
                every: 1_000,
                log_ratio: 0.5,
            },
        ] {
            let mut state = ScheduleState::default();
            let snapshot = (10_000, 2_000);
            let due = next_snapshot_due(3, rule.every, 10_000);
            assert_eq!(state.due(3, rule, due - 1, snapshot, 1_000_000), None);
            assert_eq!(
                state.due(3, rule, due, snapshot, 1_001_000),
                Some(due),
                "{rule:?}"
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
