//! A timer kept by a connection from one wait to the next (for a client's next head, for a
//! member's answer), so that a busy connection touches tokio's timer wheel about once a
//! second instead of twice a request (an insert on the first poll and a removal on drop:
//! about 650 instructions a proxied request when each attempt had a timer of its own).
//!
//! It is moved only when a wait's deadline is earlier than where it is set, or later by a
//! second or more; otherwise it stays early, and when it fires before a wait's deadline it
//! is moved to that deadline and the wait goes on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// How much earlier than a wait's deadline the timer may stay set.
const SLACK: Duration = Duration::from_secs(1);

/// A reusable timer; unset until the first wait.
#[derive(Default)]
pub struct Reused {
    set: Option<Set>,
}

struct Set {
    /// Where the timer is set...
    at: Instant,
    /// ...and the deadline from which on it is moved forward (`at` + [`SLACK`], kept so that
    /// a wait compares instants and does no arithmetic on them).
    stale_from: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl Set {
    fn move_to(&mut self, deadline: Instant) {
        self.at = deadline;
        self.stale_from = deadline + SLACK;
        self.sleep.as_mut().reset(deadline);
    }
}

impl Reused {
    /// Sets the timer for a wait that ends at `deadline` (see the module's note).
    pub fn arm(&mut self, deadline: Instant) {
        match &mut self.set {
            Some(set) => {
                if deadline < set.at || deadline >= set.stale_from {
                    set.move_to(deadline);
                }
            }
            None => {
                self.set = Some(Set {
                    at: deadline,
                    stale_from: deadline + SLACK,
                    sleep: Box::pin(tokio::time::sleep_until(deadline)),
                })
            }
        }
    }

    /// Ready once `deadline` passed; registers `cx` to be woken at the timer otherwise. The
    /// timer must be armed for `deadline` (or a later one) first.
    pub fn poll_passed(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let Some(set) = self.set.as_mut() else {
            return Poll::Ready(());
        };
        if set.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if Instant::now() >= deadline {
            return Poll::Ready(());
        }
        // Set for an earlier wait: moved to this one's deadline.
        set.move_to(deadline);
        let _ = set.sleep.as_mut().poll(cx);
        Poll::Pending
    }

    /// Runs `work` until it ends (`Some` of its output) or `deadline` passes first (`None`;
    /// the caller drops `work`). Pinned by the caller, where it was made: taken by value, a
    /// large future is copied twice on its way in (in the pool, about 1 KiB each time).
    pub async fn within<F: Future>(
        &mut self,
        deadline: Instant,
        mut work: Pin<&mut F>,
    ) -> Option<F::Output> {
        self.arm(deadline);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(output) = work.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            self.poll_passed(deadline, cx).map(|()| None)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> std::future::Pending<()> {
        std::future::pending()
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_its_own_deadline_whatever_the_timer_was_set_for() {
        let mut timer = Reused::default();
        let start = Instant::now();
        // The first wait sets it; the work ends first.
        let done = timer
            .within(start + Duration::from_secs(30), std::pin::pin!(async { 7 }))
            .await;
        assert_eq!(done, Some(7));
        // A later deadline within the slack leaves the timer early: it fires at 30 s, and
        // the wait goes on to its own deadline.
        let later = start + Duration::from_millis(30_500);
        let waited = timer.within(later, std::pin::pin!(pending())).await;
        assert_eq!(waited, None);
        assert_eq!(Instant::now(), later);
        // An earlier deadline moves it back.
        let sooner = Instant::now() + Duration::from_millis(10);
        assert_eq!(timer.within(sooner, std::pin::pin!(pending())).await, None);
        assert_eq!(Instant::now(), sooner);
        // A deadline further out than the slack moves it forward.
        let far = Instant::now() + Duration::from_secs(5);
        assert_eq!(timer.within(far, std::pin::pin!(pending())).await, None);
        assert_eq!(Instant::now(), far);
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_ends_in_time_is_not_cut_short() {
        let mut timer = Reused::default();
        let deadline = Instant::now() + Duration::from_secs(2);
        // The work ends when the clock, moved by hand, is a millisecond short of the deadline.
        let (done, finished) = tokio::sync::oneshot::channel();
        let work = async { finished.await.unwrap() };
        let clock = async {
            tokio::time::advance(Duration::from_millis(1_999)).await;
            done.send("answered").unwrap();
        };
        let work = std::pin::pin!(work);
        let (answer, ()) = tokio::join!(timer.within(deadline, work), clock);
        assert_eq!(answer, Some("answered"));
    }
}
