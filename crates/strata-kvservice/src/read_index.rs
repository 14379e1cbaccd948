//! [`ReadIndexBatcher`]: one leadership confirmation serves every read that arrived before it.
//!
//! A linearizable read needs the leader to confirm, with a quorum, that it still leads, and
//! that costs a heartbeat round. Done per read, a read-heavy load turns into a heartbeat storm.
//! Instead, reads wait for the next *round*: a loop runs `get_read_log_id` once and hands its
//! result to every read that arrived before the round started (as etcd's linearizable read
//! loop does). A round that starts after a read arrived is as good as one started for it, so
//! linearizability is preserved.

use openraft::error::{CheckIsLeaderError, RaftError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use strata_proto::error::ApiError;
use strata_raft::Raft;
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
    /// Starts the round loop on `tracker`; it stops when `cancel` fires.
    pub fn start(raft: Raft, tracker: &TaskTracker, cancel: CancellationToken) -> Self {
        let (done, _) = watch::channel((0, Err(ApiError::unavailable("no read round yet"))));
        let shared = Arc::new(Shared {
            started: AtomicU64::new(0),
            done,
            wake: Notify::new(),
        });
        tracker.spawn(run(raft, shared.clone(), cancel));
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

async fn run(raft: Raft, shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = shared.wake.notified() => {}
        }
        let round = shared.started.fetch_add(1, Ordering::SeqCst) + 1;
        let result = match raft.get_read_log_id().await {
            Ok((read_log_id, _)) => Ok(read_log_id.map(|l| l.index).unwrap_or(0)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                Err(ApiError::unavailable("this node is not the leader"))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => Err(
                ApiError::unavailable(format!("leadership not confirmed by a quorum: {e}")),
            ),
            Err(RaftError::Fatal(e)) => Err(ApiError::unavailable(format!("raft stopped: {e}"))),
        };
        // The previous round's outcome is dropped: every reader of it has already taken it.
        let _previous = shared.done.send_replace((round, result));
    }
}
