//! [`Proposer`]: batches concurrent writes into one log entry.
//!
//! openraft 0.9 appends each proposal separately and waits for its fsync before taking the
//! next, so one entry per write caps the leader at one fsync per write. The proposer queues
//! writes; a loop takes everything queued, proposes it as one [`Command::Batch`], and while
//! that batch is being made durable and replicated the next one accumulates. Under load one
//! fsync and one replication round cover many writes; an idle cluster still proposes a lone
//! write at once (no timer, no added latency).

use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Instant;
use strata_proto::error::ApiError;
use strata_proto::kv::{Command, CommandResult};
use strata_raft::Raft;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Most commands in one batch entry.
const MAX_BATCH: usize = 512;
/// Most batches in flight at once (each waits for commit and apply). Writes that arrive while
/// this many are in flight wait in the queue and form the next batch; openraft's own queue
/// would otherwise absorb them one entry (and one fsync) at a time.
const MAX_IN_FLIGHT: usize = 1;
/// Most writes waiting for a batch; beyond this, callers wait (backpressure).
const QUEUE_CAPACITY: usize = 16 * 1024;

type Reply = oneshot::Sender<Result<CommandResult, ApiError>>;

/// The handle writers submit to. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<(Command, Reply)>,
}

impl Proposer {
    /// Starts the batching loop on `tracker`; it stops when `cancel` fires.
    pub fn start(
        raft: Raft,
        metrics: Arc<Metrics>,
        map_error: fn(
            openraft::error::RaftError<
                u64,
                openraft::error::ClientWriteError<u64, strata_proto::NodeInfo>,
            >,
        ) -> ApiError,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let inner_tracker = tracker.clone();
        tracker.spawn(run(
            raft,
            metrics,
            map_error,
            receiver,
            inner_tracker,
            cancel,
        ));
        Proposer { queue }
    }

    /// Proposes `command` (batched with concurrent ones) and returns its result once applied.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, ApiError> {
        let (reply, result) = oneshot::channel();
        self.queue
            .send((command, reply))
            .await
            .map_err(|_| ApiError::unavailable("the node is shutting down"))?;
        result
            .await
            .map_err(|_| ApiError::unavailable("the node is shutting down"))?
    }
}

async fn run(
    raft: Raft,
    metrics: Arc<Metrics>,
    map_error: fn(
        openraft::error::RaftError<
            u64,
            openraft::error::ClientWriteError<u64, strata_proto::NodeInfo>,
        >,
    ) -> ApiError,
    mut receiver: mpsc::Receiver<(Command, Reply)>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            next = receiver.recv() => match next {
                Some(item) => item,
                None => return,
            },
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // Everything that queued while the previous batch was in flight goes into this one.
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        let metrics = metrics.clone();
        tracker.spawn(async move {
            let (commands, replies): (Vec<Command>, Vec<Reply>) = batch.into_iter().unzip();
            let size = commands.len();
            let entry = if size == 1 {
                commands.into_iter().next().expect("batch has one command")
            } else {
                Command::Batch(commands)
            };
            let started = Instant::now();
            let result = raft.client_write(entry).await;
            metrics
                .proposal_seconds
                .observe(started.elapsed().as_secs_f64());
            metrics.proposal_batch_size.observe(size as f64);
            drop(permit);
            match result {
                Ok(response) => match response.data {
                    CommandResult::Batch(results) if size > 1 => {
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    single => {
                        if let Some(reply) = replies.into_iter().next() {
                            let _ = reply.send(Ok(single));
                        }
                    }
                },
                Err(e) => {
                    let error = map_error(e);
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}

/// Batches the writes a follower forwards to the leader: everything that queues while one
/// forward is in flight goes to the leader as one [`LeaderRequest::WriteBatch`]. Without it,
/// each forwarded write is its own node-to-node request, which costs more CPU than the write.
///
/// [`LeaderRequest::WriteBatch`]: crate::service::LeaderRequest::WriteBatch
#[derive(Clone)]
pub struct Forwarder {
    queue: mpsc::Sender<(Command, Reply)>,
}

impl Forwarder {
    /// Starts the forwarding loop on `tracker`; it stops when `cancel` fires.
    pub fn start(
        service: std::sync::Weak<crate::service::KvService>,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        tracker.spawn(forward_loop(service, receiver, cancel));
        Forwarder { queue }
    }

    /// Sends `command` to the leader (batched with concurrent ones) and returns its result.
    pub async fn forward(&self, command: Command) -> Result<CommandResult, ApiError> {
        let (reply, result) = oneshot::channel();
        self.queue
            .send((command, reply))
            .await
            .map_err(|_| ApiError::unavailable("the node is shutting down"))?;
        result
            .await
            .map_err(|_| ApiError::unavailable("the node is shutting down"))?
    }
}

async fn forward_loop(
    service: std::sync::Weak<crate::service::KvService>,
    mut receiver: mpsc::Receiver<(Command, Reply)>,
    cancel: CancellationToken,
) {
    use crate::service::{LeaderReply, LeaderRequest};
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            next = receiver.recv() => match next {
                Some(item) => item,
                None => return,
            },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let Some(service) = service.upgrade() else {
            return;
        };
        let (commands, replies): (Vec<Command>, Vec<Reply>) = batch.into_iter().unzip();
        // One forward in flight: the next batch gathers while this one is committed.
        match service
            .leader_call(LeaderRequest::WriteBatch(commands))
            .await
        {
            Ok(LeaderReply::WrittenBatch(results)) if results.len() == replies.len() => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Ok(other) => {
                let error =
                    ApiError::internal(format!("unexpected reply to a write batch: {other:?}"));
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
            Err(error) => {
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}
