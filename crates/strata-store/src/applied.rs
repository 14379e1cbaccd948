//! [`AppliedRevision`]: how far a materialised view has applied the store, for callers that
//! wait until it has caught up with a write of their own.

use std::time::Duration;
use tokio::sync::watch;

/// The last revision a view (a [`Follower`](crate::Follower)) has applied, published so that
/// callers can wait for it. Waiters wake when it moves; it starts at 0.
#[derive(Debug)]
pub struct AppliedRevision(watch::Sender<i64>);

impl Default for AppliedRevision {
    fn default() -> Self {
        AppliedRevision::new()
    }
}

impl AppliedRevision {
    /// Revision 0: nothing applied yet.
    pub fn new() -> Self {
        AppliedRevision(watch::channel(0).0)
    }

    /// Sets the revision of a fresh load, which replaces whatever the view held before.
    pub fn loaded(&self, revision: i64) {
        self.0.send_replace(revision);
    }

    /// Raises the revision to `revision` once events up to it are applied; never lowers it,
    /// and wakes the waiters only when it moved.
    pub fn advance(&self, revision: i64) {
        self.0.send_if_modified(|applied| {
            let moved = revision > *applied;
            *applied = (*applied).max(revision);
            moved
        });
    }

    /// Waits until `revision` is applied, at most `timeout`; true if it is.
    ///
    /// Cancel safety: cancel-safe; it only reads the channel.
    pub async fn wait_for(&self, revision: i64, timeout: Duration) -> bool {
        let mut rx = self.0.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision)).await;
        matches!(reached, Ok(Ok(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_until_advanced_and_never_moves_back_on_apply() {
        let applied = AppliedRevision::new();
        assert!(applied.wait_for(0, Duration::ZERO).await);
        assert!(!applied.wait_for(5, Duration::from_millis(10)).await);
        applied.advance(5);
        applied.advance(3);
        assert!(applied.wait_for(5, Duration::ZERO).await);
        applied.loaded(2);
        assert!(!applied.wait_for(5, Duration::from_millis(10)).await);
    }
}
