//! [`ReadIndexBatcher`]: one leadership confirmation serves every read that arrived before it.
//!
//! A linearizable read needs the leader to confirm, with a quorum, that it still leads, and
//! that costs a heartbeat round. Done per read, a read-heavy load turns into a heartbeat storm.
//! Instead, reads wait for the next *round*: a loop runs `get_read_log_id` once and hands its
//! result to every read that arrived before the round started (as etcd's linearizable read
//! loop does). A round that starts after a read arrived is as good as one started for it, so
//! linearizability is preserved.

use crate::Raft;
use openraft::error::{CheckIsLeaderError, RaftError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use strata_proto::error::ApiError;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type RoundResult = Result<u64, ApiError>;

struct Shared {
    /// Rounds started so far.
    started: AtomicU64,
    /// The last finished round and its outcome.
    done: watch::Sender<(u64, RoundResult)>,
    /// Wakes the loop when a read is waiting.
    wake: Notify,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct ReadIndexBatcher {
    shared: Arc<Shared>,
}

impl ReadIndexBatcher {
    /// Starts the round loop on `tracker`; it stops when `cancel` fires. A round that has not
    /// confirmed leadership within `timeout` fails its reads with `timeout`.
    pub fn start(
        raft: Raft,
        timeout: std::time::Duration,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        Self::start_with(
            move || {
                let confirm = confirm_leadership(raft.clone());
                async move {
                    tokio::time::timeout(timeout, confirm)
                        .await
                        .unwrap_or_else(|_| {
                            Err(ApiError::new(
                                strata_proto::error::ErrorCode::Timeout,
                                format!("leadership was not confirmed within {timeout:?} (kv.request_timeout)"),
                            ))
                        })
                }
            },
            tracker,
            cancel,
        )
    }

    /// [`ReadIndexBatcher::start`] with the round given as a function (tests use a fake).
    pub fn start_with<F, Fut>(round: F, tracker: &TaskTracker, cancel: CancellationToken) -> Self
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = RoundResult> + Send + 'static,
    {
        let (done, _) = watch::channel((0, Err(ApiError::unavailable("no read round yet"))));
        let shared = Arc::new(Shared {
            started: AtomicU64::new(0),
            done,
            wake: Notify::new(),
        });
        tracker.spawn(run(round, shared.clone(), cancel));
        ReadIndexBatcher { shared }
    }

    /// Returns a read index obtained by a leadership confirmation that started after this call.
    pub async fn read_index(&self) -> RoundResult {
        let mut done = self.shared.done.subscribe();
        let needed = self.shared.started.load(Ordering::SeqCst) + 1;
        self.shared.wake.notify_one();
        loop {
            {
                let (round, result) = &*done.borrow_and_update();
                if *round >= needed {
                    return result.clone();
                }
            }
            if done.changed().await.is_err() {
                return Err(ApiError::unavailable("the node is shutting down"));
            }
        }
    }
}

/// One leadership confirmation: the index reads must wait for.
async fn confirm_leadership(raft: Raft) -> RoundResult {
    match raft.get_read_log_id().await {
        Ok((read_log_id, _)) => Ok(read_log_id.map(|l| l.index).unwrap_or(0)),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
            Err(ApiError::unavailable("this node is not the leader"))
        }
        Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => Err(
            ApiError::unavailable(format!("leadership not confirmed by a quorum: {e}")),
        ),
        Err(RaftError::Fatal(e)) => Err(ApiError::unavailable(format!("raft stopped: {e}"))),
    }
}

async fn run<F, Fut>(round: F, shared: Arc<Shared>, cancel: CancellationToken)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = RoundResult>,
{
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = shared.wake.notified() => {}
        }
        let number = shared.started.fetch_add(1, Ordering::SeqCst) + 1;
        let result = round().await;
        // The previous round's outcome is dropped: every reader of it has already taken it.
        let _previous = shared.done.send_replace((number, result));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// A fake round that takes 10 ms and answers with its own number times 100.
    fn batcher(rounds: Arc<AtomicUsize>) -> (ReadIndexBatcher, CancellationToken) {
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let batcher = ReadIndexBatcher::start_with(
            move || {
                let rounds = rounds.clone();
                async move {
                    let n = rounds.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Ok(n as u64 * 100)
                }
            },
            &tracker,
            cancel.clone(),
        );
        (batcher, cancel)
    }

    #[tokio::test(start_paused = true)]
    async fn reads_that_arrive_during_a_round_share_the_next_one() {
        let rounds = Arc::new(AtomicUsize::new(0));
        let (batcher, cancel) = batcher(rounds.clone());
        let first = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.read_index().await }
        });
        // Let round 1 start for the first read.
        while rounds.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let during: Vec<_> = (0..100)
            .map(|_| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.read_index().await })
            })
            .collect();
        assert_eq!(first.await.unwrap().unwrap(), 100);
        for read in during {
            // Round 1 began before these reads: they must not take its answer.
            assert_eq!(read.await.unwrap().unwrap(), 200);
        }
        assert_eq!(rounds.load(Ordering::SeqCst), 2, "101 reads, 2 rounds");
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_batcher_runs_no_rounds_and_a_lone_read_runs_one() {
        let rounds = Arc::new(AtomicUsize::new(0));
        let (batcher, cancel) = batcher(rounds.clone());
        // Every task ran until it waits: an idle batcher would have started a round by now.
        crate::settle().await;
        assert_eq!(rounds.load(Ordering::SeqCst), 0);
        assert_eq!(batcher.read_index().await.unwrap(), 100);
        assert_eq!(rounds.load(Ordering::SeqCst), 1);
        cancel.cancel();
    }
}
