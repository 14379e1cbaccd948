//! [`LeaseClock`]: the leader's lease expiry clock.
//!
//! Only the leader's clock matters. Keep-alives touch only it (never the log), and a node that
//! becomes leader starts every lease at its full TTL, so a new leader extends leases rather
//! than expiring them at once. Time is tokio's, so tests run it on a paused clock.
//!
//! A pass costs the leases that changed and the ones that are due, not every lease: the
//! clock learns grants and revokes from apply ([`LeaseChanges`]) and keeps its deadlines in
//! order. It reads every lease only when it starts leading or when changes were lost.

use crate::kv_machine::{LeaseChange, LeaseChanges};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tokio::time::Instant;

/// Lease id -> when it expires, for the term this node leads.
#[derive(Debug, Default)]
pub struct LeaseClock {
    /// The term in which this node last acted as leader; 0 when it does not lead. A change
    /// resets every expiry.
    term: u64,
    expiry: HashMap<i64, Instant>,
    /// The same deadlines in order, so the due ones are found without a scan.
    due: BTreeSet<(Instant, i64)>,
}

fn full(granted_ttl: i64) -> Duration {
    Duration::from_secs(granted_ttl.unsigned_abs())
}

impl LeaseClock {
    /// Renews lease `id`: it now expires a full `granted_ttl` seconds from now.
    pub fn renew(&mut self, id: i64, granted_ttl: i64) {
        self.set(id, Instant::now() + full(granted_ttl));
    }

    /// Whole seconds left before lease `id` expires (one not seen yet has its full TTL).
    pub fn remaining(&mut self, id: i64, granted_ttl: i64) -> i64 {
        let now = Instant::now();
        let expiry = match self.expiry.get(&id) {
            Some(expiry) => *expiry,
            None => {
                self.set(id, now + full(granted_ttl));
                now + full(granted_ttl)
            }
        };
        expiry.saturating_duration_since(now).as_secs() as i64
    }

    /// Whether the next pass for `leading` must be given every live lease: the node has just
    /// started to lead (a new term starts every lease afresh).
    pub fn wants_all(&self, leading: Option<u64>) -> bool {
        leading.is_some_and(|term| term != self.term)
    }

    /// One pass: takes in what changed since the last pass and returns the leases whose TTL
    /// passed without a renewal. `leading` is the term this node leads, or `None` when it
    /// does not lead: then nothing expires and the clock forgets everything, so a later term
    /// starts every lease afresh. `changes` must be all leases when [`LeaseClock::wants_all`]
    /// said so.
    pub fn expired(&mut self, leading: Option<u64>, changes: LeaseChanges) -> Vec<i64> {
        let Some(term) = leading else {
            self.forget_all();
            return Vec::new();
        };
        if self.term != term {
            // Newly elected: every lease gets its full TTL again (never expire at once).
            self.forget_all();
            self.term = term;
        }
        let now = Instant::now();
        match changes {
            LeaseChanges::All(live) => {
                // Known leases keep their deadlines; the rest start a full TTL now.
                let mut expiry = HashMap::with_capacity(live.len());
                for lease in live {
                    let at = self
                        .expiry
                        .get(&lease.id)
                        .copied()
                        .unwrap_or(now + full(lease.granted_ttl));
                    expiry.insert(lease.id, at);
                }
                self.due = expiry.iter().map(|(id, at)| (*at, *id)).collect();
                self.expiry = expiry;
            }
            LeaseChanges::Since(changes) => {
                for change in changes {
                    match change {
                        LeaseChange::Granted { id, ttl } => {
                            if !self.expiry.contains_key(&id) {
                                self.set(id, now + full(ttl));
                            }
                        }
                        LeaseChange::Revoked(id) => self.forget(id),
                    }
                }
            }
        }
        self.due
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| *id)
            .collect()
    }

    /// Drops lease `id` from the clock (it is gone from the store).
    pub fn forget(&mut self, id: i64) {
        if let Some(at) = self.expiry.remove(&id) {
            self.due.remove(&(at, id));
        }
    }

    /// Leases the clock holds.
    pub fn len(&self) -> usize {
        self.expiry.len()
    }

    /// Whether the clock holds no lease.
    pub fn is_empty(&self) -> bool {
        self.expiry.is_empty()
    }

    fn set(&mut self, id: i64, at: Instant) {
        if let Some(old) = self.expiry.insert(id, at) {
            self.due.remove(&(old, id));
        }
        self.due.insert((at, id));
    }

    fn forget_all(&mut self) {
        self.expiry.clear();
        self.due.clear();
        self.term = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::kv::LeaseStatus;

    fn all(leases: &[(i64, i64)]) -> LeaseChanges {
        LeaseChanges::All(
            leases
                .iter()
                .map(|&(id, granted_ttl)| LeaseStatus { id, granted_ttl })
                .collect(),
        )
    }

    fn none() -> LeaseChanges {
        LeaseChanges::Since(Vec::new())
    }

    async fn advance(secs: u64) {
        tokio::time::advance(Duration::from_secs(secs)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_expires_a_full_ttl_after_its_last_renewal() {
        let mut clock = LeaseClock::default();
        assert!(clock.wants_all(Some(3)));
        assert!(clock.expired(Some(3), all(&[(1, 10)])).is_empty());
        assert!(!clock.wants_all(Some(3)));
        advance(6).await;
        clock.renew(1, 10);
        advance(6).await;
        assert!(clock.expired(Some(3), none()).is_empty(), "renewed 6 s ago");
        assert_eq!(clock.remaining(1, 10), 4);
        advance(4).await;
        assert_eq!(clock.expired(Some(3), none()), vec![1]);
        // Still due on the next pass until a revoke is applied.
        assert_eq!(clock.expired(Some(3), none()), vec![1]);
        assert!(clock
            .expired(Some(3), LeaseChanges::Since(vec![LeaseChange::Revoked(1)]))
            .is_empty());
        assert!(clock.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_leader_gives_every_lease_its_full_ttl_again() {
        let mut clock = LeaseClock::default();
        let live = [(1, 10), (2, 30)];
        assert!(clock.expired(Some(3), all(&live)).is_empty());
        advance(9).await;
        // Term 4 (this node was re-elected): the 9 s already spent are not held against lease 1.
        assert!(clock.wants_all(Some(4)));
        assert!(clock.expired(Some(4), all(&live)).is_empty());
        advance(9).await;
        assert!(clock.expired(Some(4), none()).is_empty());
        advance(1).await;
        assert_eq!(clock.expired(Some(4), none()), vec![1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_expires_nothing_and_forgets_its_clock() {
        let mut clock = LeaseClock::default();
        assert!(clock.expired(Some(3), all(&[(1, 10)])).is_empty());
        advance(20).await;
        assert!(!clock.wants_all(None));
        assert!(clock.expired(None, none()).is_empty());
        assert!(clock.is_empty());
        // Leading the same term again starts afresh, from every lease.
        assert!(clock.wants_all(Some(3)));
        assert!(clock.expired(Some(3), all(&[(1, 10)])).is_empty());
        assert_eq!(clock.remaining(1, 10), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn grants_and_revokes_from_apply_keep_the_clock_in_step() {
        let mut clock = LeaseClock::default();
        assert!(clock.expired(Some(1), all(&[(1, 10), (2, 10)])).is_empty());
        advance(5).await;
        // A grant forwarded from a follower reaches the clock only through apply; one this
        // leader granted and renewed first keeps the renewal.
        clock.renew(4, 10);
        advance(1).await;
        let changes = LeaseChanges::Since(vec![
            LeaseChange::Revoked(1),
            LeaseChange::Granted { id: 3, ttl: 5 },
            LeaseChange::Granted { id: 4, ttl: 10 },
        ]);
        assert!(clock.expired(Some(1), changes).is_empty());
        assert_eq!(clock.len(), 3);
        advance(4).await;
        // Lease 2: 10 s since the pass that first saw it; lease 3: 4 s of its 5.
        assert_eq!(clock.expired(Some(1), none()), vec![2]);
        advance(1).await;
        assert_eq!(clock.expired(Some(1), none()), vec![2, 3]);
        assert_eq!(
            clock.remaining(4, 10),
            4,
            "renewed at 5 s, not granted at 6 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn every_lease_again_keeps_known_deadlines_and_drops_the_gone() {
        let mut clock = LeaseClock::default();
        assert!(clock.expired(Some(1), all(&[(1, 10), (2, 10)])).is_empty());
        advance(6).await;
        // Changes were lost (a snapshot replaced the state): the whole list comes again.
        assert!(clock.expired(Some(1), all(&[(2, 10), (3, 10)])).is_empty());
        assert_eq!(clock.len(), 2);
        assert_eq!(clock.remaining(2, 10), 4, "lease 2 keeps its deadline");
        assert_eq!(clock.remaining(3, 10), 10, "lease 3 starts now");
        advance(4).await;
        assert_eq!(clock.expired(Some(1), none()), vec![2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_returns_only_the_due_leases_in_deadline_order() {
        let mut clock = LeaseClock::default();
        let live: Vec<(i64, i64)> = (1..=10_000).map(|id| (id, 100)).collect();
        assert!(clock.expired(Some(1), all(&live)).is_empty());
        for id in [7, 9_999, 42] {
            clock.forget(id);
        }
        clock.renew(9_999, 5);
        advance(3).await;
        clock.renew(42, 1);
        assert!(clock.expired(Some(1), none()).is_empty());
        advance(2).await;
        assert_eq!(clock.expired(Some(1), none()), vec![42, 9_999]);
        assert_eq!(clock.len(), 9_999);
    }
}
