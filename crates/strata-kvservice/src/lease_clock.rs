//! [`LeaseClock`]: the leader's lease expiry clock.
//!
//! Only the leader's clock matters. Keep-alives touch only it (never the log), and a node that
//! becomes leader starts every lease at its full TTL, so a new leader extends leases rather
//! than expiring them at once. Time is tokio's, so tests run it on a paused clock.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use strata_proto::kv::LeaseStatus;
use tokio::time::Instant;

/// Lease id -> when it expires, for the term this node leads.
#[derive(Debug, Default)]
pub struct LeaseClock {
    /// The term in which this node last acted as leader; a change resets every expiry.
    term: u64,
    expiry: HashMap<i64, Instant>,
}

fn full(granted_ttl: i64) -> Duration {
    Duration::from_secs(granted_ttl.unsigned_abs())
}

impl LeaseClock {
    /// Renews lease `id`: it now expires a full `granted_ttl` seconds from now.
    pub fn renew(&mut self, id: i64, granted_ttl: i64) {
        self.expiry.insert(id, Instant::now() + full(granted_ttl));
    }

    /// Whole seconds left before lease `id` expires (one not seen yet has its full TTL).
    pub fn remaining(&mut self, id: i64, granted_ttl: i64) -> i64 {
        let now = Instant::now();
        let expiry = *self.expiry.entry(id).or_insert(now + full(granted_ttl));
        expiry.saturating_duration_since(now).as_secs() as i64
    }

    /// The leases of `live` whose TTL passed without a renewal. `leading` is the term this
    /// node leads, or `None` when it does not lead: then nothing expires and the clock forgets
    /// everything, so a later term starts every lease afresh.
    pub fn expired(&mut self, leading: Option<u64>, live: &[LeaseStatus]) -> Vec<i64> {
        let Some(term) = leading else {
            self.expiry.clear();
            self.term = 0;
            return Vec::new();
        };
        if self.term != term {
            // Newly elected: every lease gets its full TTL again (never expire at once).
            self.expiry.clear();
            self.term = term;
        }
        let now = Instant::now();
        let ids: BTreeSet<i64> = live.iter().map(|l| l.id).collect();
        self.expiry.retain(|id, _| ids.contains(id));
        live.iter()
            .filter(|lease| {
                let expiry = *self
                    .expiry
                    .entry(lease.id)
                    .or_insert(now + full(lease.granted_ttl));
                expiry <= now
            })
            .map(|lease| lease.id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: i64, ttl: i64) -> LeaseStatus {
        LeaseStatus {
            id,
            granted_ttl: ttl,
        }
    }

    async fn advance(secs: u64) {
        tokio::time::advance(Duration::from_secs(secs)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_expires_a_full_ttl_after_its_last_renewal() {
        let mut clock = LeaseClock::default();
        let live = [lease(1, 10)];
        assert!(clock.expired(Some(3), &live).is_empty());
        advance(6).await;
        clock.renew(1, 10);
        advance(6).await;
        assert!(clock.expired(Some(3), &live).is_empty(), "renewed 6 s ago");
        assert_eq!(clock.remaining(1, 10), 4);
        advance(4).await;
        assert_eq!(clock.expired(Some(3), &live), vec![1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_leader_gives_every_lease_its_full_ttl_again() {
        let mut clock = LeaseClock::default();
        let live = [lease(1, 10), lease(2, 30)];
        assert!(clock.expired(Some(3), &live).is_empty());
        advance(9).await;
        // Term 4 (this node was re-elected): the 9 s already spent are not held against lease 1.
        assert!(clock.expired(Some(4), &live).is_empty());
        advance(9).await;
        assert!(clock.expired(Some(4), &live).is_empty());
        advance(1).await;
        assert_eq!(clock.expired(Some(4), &live), vec![1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_expires_nothing_and_forgets_its_clock() {
        let mut clock = LeaseClock::default();
        let live = [lease(1, 10)];
        assert!(clock.expired(Some(3), &live).is_empty());
        advance(20).await;
        assert!(clock.expired(None, &live).is_empty());
        // Leading the same term again starts afresh.
        assert!(clock.expired(Some(3), &live).is_empty());
        assert_eq!(clock.remaining(1, 10), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoked_lease_leaves_the_clock() {
        let mut clock = LeaseClock::default();
        assert!(clock
            .expired(Some(1), &[lease(1, 10), lease(2, 10)])
            .is_empty());
        assert!(clock.expired(Some(1), &[lease(2, 10)]).is_empty());
        assert_eq!(clock.expiry.len(), 1);
    }
}
