//! [`KvMachine`]: the KV store as a replicated state machine, plus the feed of applied
//! events that watches read.

use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use strata_kv::KvStore;
use strata_proto::kv::{Command, CommandResult, Event, KvCommand, KvResult, LeaseStatus};
use tokio::sync::broadcast;

/// Capacity of the applied-events feed. A watcher that falls further behind re-reads the
/// history from the store instead of blocking apply.
const FEED_CAPACITY: usize = 4096;

/// One applied command's effect on watches.
#[derive(Debug, Clone)]
pub enum Applied {
    /// The events of one revision, in order.
    Events {
        /// The revision they were written at.
        revision: i64,
        /// The events.
        events: Arc<Vec<Event>>,
    },
    /// The state was replaced by a snapshot: watchers must re-read history.
    Reset,
}

/// A lease that apply granted or revoked, for the leader's lease clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseChange {
    /// Lease `id` was granted with `ttl` seconds.
    Granted {
        /// The lease.
        id: i64,
        /// Its granted TTL in seconds.
        ttl: i64,
    },
    /// Lease `id` was revoked (by a client or by expiry).
    Revoked(i64),
}

/// What the lease clock learns on one pass (see [`KvMachine::lease_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseChanges {
    /// Every live lease: the clock asked for them all, or the changes since its last pass
    /// were lost (a snapshot replaced the state, or nobody read them for too long).
    All(Vec<LeaseStatus>),
    /// The grants and revokes applied since the last pass, in apply order.
    Since(Vec<LeaseChange>),
}

/// Lease changes kept for the clock's next pass; more than this and the next pass reads every
/// lease instead (the clock reads them every 100 ms, so only a stalled clock gets here).
const LEASE_JOURNAL_MAX: usize = 1 << 16;

/// Lease grants and revokes applied since the lease clock last looked, so that its pass
/// costs the changes rather than every lease in the store.
#[derive(Debug, Default)]
struct LeaseJournal {
    changes: Vec<LeaseChange>,
    /// The changes are incomplete: the next pass must read every lease.
    lost: bool,
}

impl LeaseJournal {
    fn push(&mut self, change: LeaseChange) {
        if self.lost {
            return;
        }
        if self.changes.len() >= LEASE_JOURNAL_MAX {
            self.lose();
        } else {
            self.changes.push(change);
        }
    }

    fn lose(&mut self) {
        self.changes = Vec::new();
        self.lost = true;
    }
}

/// The KV store behind a lock, and the feed of what apply changes.
pub struct KvMachine {
    /// The store. Readers take the read lock for the duration of one read; apply takes the
    /// write lock for one command. A std lock because nothing awaits while holding it.
    store: RwLock<KvStore>,
    /// Applied changes, for watches.
    feed: broadcast::Sender<Applied>,
    /// A running average of the bytes one feed message holds, for the memory estimate.
    feed_message_bytes: std::sync::atomic::AtomicUsize,
    /// Woken when a compaction dropped much of the history (see
    /// [`KvMachine::compacted_much`]).
    compacted: tokio::sync::Notify,
    /// Lease grants and revokes since the lease clock's last pass. Written under the store's
    /// write lock and read under its read lock, so a pass sees the changes and the store at
    /// the same point.
    lease_journal: Mutex<LeaseJournal>,
}

/// A compaction that drops at least this share of the retained versions (and at least
/// `COMPACTED_MIN` of them) asks for a snapshot, so the disk is reclaimed.
const COMPACTED_SHARE: usize = 10;
const COMPACTED_MIN: usize = 1000;

impl Default for KvMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl KvMachine {
    /// Returns an empty machine.
    pub fn new() -> Self {
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        KvMachine {
            store: RwLock::new(KvStore::new()),
            feed,
            compacted: tokio::sync::Notify::new(),
            feed_message_bytes: std::sync::atomic::AtomicUsize::new(0),
            lease_journal: Mutex::default(),
        }
    }

    /// What changed in the leases since the last call: every live lease when `all` is set or
    /// when changes were lost, otherwise the grants and revokes applied since (in order).
    pub fn lease_changes(&self, all: bool) -> LeaseChanges {
        let store = self.read();
        let mut journal = self.lease_journal.lock().unwrap_or_else(|e| e.into_inner());
        let journal = std::mem::take(&mut *journal);
        if all || journal.lost {
            LeaseChanges::All(store.leases())
        } else {
            LeaseChanges::Since(journal.changes)
        }
    }

    /// Returns a read guard on the store.
    pub fn read(&self) -> RwLockReadGuard<'_, KvStore> {
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves after a compaction that dropped at least a tenth of the retained versions
    /// (and at least 1,000 of them).
    pub async fn compacted_much(&self) {
        self.compacted.notified().await
    }

    /// Estimates the bytes the applied-events feed holds: the messages it keeps for slow
    /// watchers (at most its capacity) times their average size.
    pub fn feed_bytes(&self) -> usize {
        self.feed.len()
            * self
                .feed_message_bytes
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Subscribes to applied changes. Subscribe *before* reading history to leave no gap.
    pub fn subscribe(&self) -> broadcast::Receiver<Applied> {
        self.feed.subscribe()
    }
}

impl KvMachine {
    fn apply_command(&self, command: &Command) -> CommandResult {
        match command {
            Command::Kv(kv) => CommandResult::Kv(self.apply_kv(kv)),
            Command::Batch(commands) => {
                CommandResult::Batch(commands.iter().map(|c| self.apply_command(c)).collect())
            }
        }
    }

    fn apply_kv(&self, command: &KvCommand) -> KvResult {
        let mut store = self.store.write().unwrap_or_else(|e| e.into_inner());
        let before = store.stats().versions;
        let (result, events) = store.apply(command);
        let lease_change = match (command, &result) {
            (KvCommand::LeaseGrant { id, ttl }, KvResult::LeaseGrant(_)) => {
                Some(LeaseChange::Granted { id: *id, ttl: *ttl })
            }
            (KvCommand::LeaseRevoke { id }, KvResult::LeaseRevoke(_)) => {
                Some(LeaseChange::Revoked(*id))
            }
            _ => None,
        };
        if let Some(change) = lease_change {
            self.lease_journal
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(change);
        }
        if let (KvCommand::Compact(_), KvResult::Compact(_)) = (command, &result) {
            let dropped = before.saturating_sub(store.stats().versions);
            if dropped >= COMPACTED_MIN && dropped * COMPACTED_SHARE >= before {
                tracing::info!(dropped, before, "compaction dropped versions");
                self.compacted.notify_one();
            }
        }
        if !events.is_empty() {
            // Sent under the write lock, so a reader holding the read lock knows that every
            // event up to `store.revision()` is either in its feed or in the history it reads.
            // No receivers is fine: nobody is watching.
            let revision = store.revision();
            let size: usize = events
                .iter()
                .map(|e| {
                    size_of::<Event>()
                        + 2 * e.kv.key.len()
                        + e.kv.value.len()
                        + e.prev_kv
                            .as_ref()
                            .map_or(0, |p| p.key.len() + p.value.len())
                })
                .sum();
            let average = &self.feed_message_bytes;
            let old = average.load(std::sync::atomic::Ordering::Relaxed);
            average.store((old * 7 + size) / 8, std::sync::atomic::Ordering::Relaxed);
            let _ = self.feed.send(Applied::Events {
                revision,
                events: Arc::new(events),
            });
        }
        result
    }
}

impl strata_raft::StateMachine for KvMachine {
    fn apply(&self, _log_index: u64, command: &Command) -> CommandResult {
        self.apply_command(command)
    }

    fn snapshot(&self) -> strata_raft::SnapshotWriter {
        // Constant time: the view shares the store's structure; writes after this copy only
        // the nodes they change.
        let view = self.read().view();
        Box::new(move |out| {
            postcard::to_io(&view, out)
                .map(|_| ())
                .map_err(std::io::Error::other)
        })
    }

    fn restore(&self, data: &mut dyn std::io::Read, format: u32) -> Result<(), String> {
        // Formats 1 and 2 store the same `KvStore` shape.
        if !(strata_proto::log::OLDEST_FORMAT..=strata_proto::log::FORMAT).contains(&format) {
            return Err(format!(
                "snapshot format {format} is not one this build reads"
            ));
        }
        let restored =
            KvStore::read_snapshot(data).map_err(|e| format!("snapshot does not decode: {e}"))?;
        let mut store = self.store.write().unwrap_or_else(|e| e.into_inner());
        *store = restored;
        self.lease_journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lose();
        drop(store);
        let _ = self.feed.send(Applied::Reset);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::kv::LeaseStatus;
    use strata_raft::StateMachine;

    fn apply(machine: &KvMachine, command: KvCommand) -> KvResult {
        match machine.apply(1, &Command::Kv(command)) {
            CommandResult::Kv(result) => result,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn the_lease_clock_learns_applied_grants_and_revokes_or_every_lease_when_they_were_lost() {
        let machine = KvMachine::new();
        apply(&machine, KvCommand::LeaseGrant { id: 1, ttl: 10 });
        apply(&machine, KvCommand::LeaseGrant { id: 2, ttl: 20 });
        // Refused commands change nothing and are not reported.
        apply(&machine, KvCommand::LeaseGrant { id: 2, ttl: 30 });
        apply(&machine, KvCommand::LeaseRevoke { id: 9 });
        apply(&machine, KvCommand::LeaseRevoke { id: 1 });
        assert_eq!(
            machine.lease_changes(false),
            LeaseChanges::Since(vec![
                LeaseChange::Granted { id: 1, ttl: 10 },
                LeaseChange::Granted { id: 2, ttl: 20 },
                LeaseChange::Revoked(1),
            ])
        );
        assert_eq!(machine.lease_changes(false), LeaseChanges::Since(vec![]));
        let every = LeaseChanges::All(vec![LeaseStatus {
            id: 2,
            granted_ttl: 20,
        }]);
        assert_eq!(machine.lease_changes(true), every);

        // A snapshot install replaces the state: the next pass gets every lease.
        let mut bytes = Vec::new();
        machine.snapshot()(&mut bytes).unwrap();
        apply(&machine, KvCommand::LeaseGrant { id: 3, ttl: 5 });
        machine
            .restore(&mut bytes.as_slice(), strata_proto::log::FORMAT)
            .unwrap();
        assert_eq!(machine.lease_changes(false), every);
        assert_eq!(machine.lease_changes(false), LeaseChanges::Since(vec![]));

        // So does a pass that comes after more changes than the journal keeps.
        for id in 10..10 + LEASE_JOURNAL_MAX as i64 + 1 {
            apply(&machine, KvCommand::LeaseGrant { id, ttl: 5 });
        }
        match machine.lease_changes(false) {
            LeaseChanges::All(live) => assert_eq!(live.len(), LEASE_JOURNAL_MAX + 2),
            LeaseChanges::Since(changes) => {
                panic!("expected every lease, got {} changes", changes.len())
            }
        }
    }
}
