//! [`Proposer`]: batches concurrent writes into one log entry.
//!
//! openraft 0.9 appends each proposal separately and waits for its fsync before taking the
//! next, so one entry per write caps the leader at one fsync per write. The proposer queues
//! writes; a loop takes everything queued, proposes it as one [`Command::Batch`], and while
//! that batch is being made durable and replicated the next one accumulates. Under load one
//! fsync and one replication round cover many writes; an idle cluster still proposes a lone
//! write at once (no timer, no added latency), from the caller's own task: a write that finds
//! the queue empty and no batch in flight proposes itself, without the two task hand-offs
//! (to the loop, and from it to the batch's task) that each cost a thread wake-up.
//!
//! No wait here is unbounded. A batch's wait for commit and apply is tied to the term it was
//! proposed in: if this node stops leading that term (it was paused, partitioned or deposed),
//! the batch fails at once with an "outcome unknown" error and frees its slot, because
//! openraft may never answer it (an entry purged by an installed snapshot is never
//! answered). A batch also gives up after `kv.request_timeout`. A follower's forward to the
//! leader is abandoned the same way when raft elects someone else (`KvService::forward`).

use crate::consensus::ConsensusMetrics;
use crate::Raft;
use futures::future::BoxFuture;
use openraft::ServerState;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_proto::error::{ApiError, ErrorCode};
use strata_proto::kv::{Command, CommandResult};
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
    batches: Arc<Loop>,
}

/// Maps openraft's write error to the API's.
pub type WriteErrorMap = fn(
    openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, strata_proto::NodeInfo>>,
) -> ApiError;

/// Where the proposer's entries go: Raft ([`RaftSink`]), or a test's double.
pub(crate) trait Sink: Send + Sync + 'static {
    /// The term this node leads, or `None`.
    fn leading_term(&self) -> Option<u64>;
    /// Proposes `entry` in `term`; resolves once it is applied, or fails (leadership of
    /// `term` lost included). The proposer bounds the wait with its own timeout.
    fn write(
        &self,
        term: u64,
        entry: Command,
    ) -> BoxFuture<'static, Result<CommandResult, ApiError>>;
}

/// Proposes to openraft; a proposal fails at once when this node stops leading its term.
pub(crate) struct RaftSink {
    raft: Raft,
    metrics: ConsensusMetrics,
    map_error: WriteErrorMap,
}

impl Sink for RaftSink {
    fn leading_term(&self) -> Option<u64> {
        leading_term(&self.raft)
    }

    fn write(
        &self,
        term: u64,
        entry: Command,
    ) -> BoxFuture<'static, Result<CommandResult, ApiError>> {
        let raft = self.raft.clone();
        let abandoned = self.metrics.proposals_abandoned.clone();
        let map_error = self.map_error;
        Box::pin(async move {
            tokio::select! {
                result = raft.client_write(entry) => result.map(|r| r.data).map_err(map_error),
                _ = leadership_lost(&raft, term) => {
                    abandoned.inc();
                    tracing::debug!(term, "leadership lost with a batch in flight");
                    Err(leadership_changed_error())
                }
            }
        })
    }
}

/// Returns the term this node leads, or `None` when it is not the leader.
pub(crate) fn leading_term(raft: &Raft) -> Option<u64> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    (m.state == ServerState::Leader && m.current_leader == Some(m.id)).then_some(m.current_term)
}

/// Resolves once this node no longer leads `term` (deposed, or raft stopped).
///
/// Cancel safety: cancel-safe; it only reads the metrics channel.
pub(crate) async fn leadership_lost(raft: &Raft, term: u64) {
    let _ = raft
        .wait(None)
        .metrics(
            |m| {
                !(m.state == ServerState::Leader
                    && m.current_leader == Some(m.id)
                    && m.current_term == term)
            },
            "leadership lost",
        )
        .await;
}

/// The error of a write whose fate is unknown because leadership changed under it.
pub(crate) fn leadership_changed_error() -> ApiError {
    ApiError::new(
        ErrorCode::Timeout,
        "leadership changed while the write was in flight; it may or may not have been applied",
    )
}

impl Proposer {
    /// Starts the batching loop on `tracker`; it stops when `cancel` fires.
    /// A batch that is not applied within `timeout` fails with an "outcome unknown" error.
    pub fn start(
        raft: Raft,
        metrics: ConsensusMetrics,
        map_error: WriteErrorMap,
        timeout: Duration,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        let sink = RaftSink {
            raft,
            metrics: metrics.clone(),
            map_error,
        };
        Self::start_on(Arc::new(sink), metrics, timeout, tracker, cancel)
    }

    /// [`Proposer::start`] on any [`Sink`].
    pub(crate) fn start_on(
        sink: Arc<dyn Sink>,
        metrics: ConsensusMetrics,
        timeout: Duration,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let batches = Arc::new(Loop {
            sink,
            metrics,
            timeout,
            tracker: tracker.clone(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        });
        tracker.spawn(batches.clone().run(receiver, cancel));
        Proposer { queue, batches }
    }

    /// Proposes `command` (batched with concurrent ones) and returns its result once applied.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, ApiError> {
        match self.propose_all(vec![command]).await.pop() {
            Some(result) => result,
            None => Err(ApiError::internal("a proposal of one write had no result")),
        }
    }

    /// Proposes `commands` together (as few entries as the batching allows) and returns their
    /// results, in order.
    pub async fn propose_all(
        &self,
        commands: Vec<Command>,
    ) -> Vec<Result<CommandResult, ApiError>> {
        // Nothing queued and no batch in flight: these writes are the next batch, proposed
        // from here. (Were the queue not empty, its writes would be older and go first.)
        if commands.len() <= MAX_BATCH && self.queue.capacity() == self.queue.max_capacity() {
            if let Ok(permit) = self.batches.in_flight.clone().try_acquire_owned() {
                let Some(term) = self.batches.sink.leading_term() else {
                    return commands.iter().map(|_| Err(not_leading())).collect();
                };
                let (replies, answers): (Vec<_>, Vec<_>) =
                    commands.iter().map(|_| oneshot::channel()).unzip();
                self.batches.propose_batch(term, commands, replies).await;
                drop(permit);
                let mut results = Vec::with_capacity(answers.len());
                for answer in answers {
                    results.push(answer.await.unwrap_or_else(|_| {
                        Err(ApiError::unavailable("the node is shutting down"))
                    }));
                }
                return results;
            }
        }
        futures::future::join_all(commands.into_iter().map(|c| submit(&self.queue, c))).await
    }
}

/// The error of a write on a node that does not lead; nothing was proposed, so the caller
/// may safely retry on the leader.
fn not_leading() -> ApiError {
    ApiError::unavailable("this node is not the leader")
}

/// What the batching loop and the direct path share.
struct Loop {
    sink: Arc<dyn Sink>,
    metrics: ConsensusMetrics,
    timeout: Duration,
    tracker: TaskTracker,
    /// One permit per batch that may be in flight.
    in_flight: Arc<Semaphore>,
}

impl Loop {
    async fn run(
        self: Arc<Self>,
        mut receiver: mpsc::Receiver<(Command, Reply)>,
        cancel: CancellationToken,
    ) {
        loop {
            let Some(first) = next_item(&mut receiver, &cancel).await else {
                return;
            };
            let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
                return;
            };
            // Everything that queued while the previous batch was in flight goes into this one.
            let (commands, replies) = drain_batch(first, &mut receiver);
            let Some(term) = self.sink.leading_term() else {
                fail_all(replies, &not_leading());
                continue;
            };
            let task = self.propose_batch(term, commands, replies);
            self.tracker.spawn(async move {
                task.await;
                drop(permit);
            });
        }
    }

    /// Proposes one batch in `term` and answers its callers. Every path ends: applied, failed,
    /// leadership of `term` lost, or `timeout`.
    fn propose_batch(
        &self,
        term: u64,
        commands: Vec<Command>,
        replies: Vec<Reply>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let sink = self.sink.clone();
        let metrics = self.metrics.clone();
        let timeout = self.timeout;
        async move {
            let size = commands.len();
            let entry = if size == 1 {
                commands.into_iter().next().expect("batch has one command")
            } else {
                Command::Batch(commands)
            };
            let started = Instant::now();
            let outcome = tokio::select! {
                result = sink.write(term, entry) => result,
                _ = tokio::time::sleep(timeout) => {
                    metrics.proposals_abandoned.inc();
                    Err(ApiError::new(
                        ErrorCode::Timeout,
                        format!("the write was not committed within {timeout:?} (kv.request_timeout); it may or may not have been applied"),
                    ))
                }
            };
            metrics
                .proposal_seconds
                .observe(started.elapsed().as_secs_f64());
            metrics.proposal_batch_size.observe(size as f64);
            match outcome {
                Ok(result) => match result {
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
                Err(error) => fail_all(replies, &error),
            }
        }
    }
}

/// Batches the writes a follower forwards to the leader: everything that queues while one
/// forward is in flight goes to the leader as one [`LeaderRequest::WriteBatch`]. Without it,
/// each forwarded write is its own node-to-node request, which costs more CPU than the write.
/// A write that finds nothing queued and no forward in flight is forwarded from its caller's
/// task, as the [`Proposer`] proposes a lone write.
///
/// [`LeaderRequest::WriteBatch`]: crate::service::LeaderRequest::WriteBatch
#[derive(Clone)]
pub struct Forwarder {
    queue: mpsc::Sender<(Command, Reply)>,
    leader: Arc<crate::consensus::Inner>,
    /// The one permit of the forward in flight.
    in_flight: Arc<Semaphore>,
}

impl Forwarder {
    /// Starts the forwarding loop on `tracker`; it stops when `cancel` fires.
    pub(crate) fn start(
        leader: Arc<crate::consensus::Inner>,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let in_flight = Arc::new(Semaphore::new(1));
        tracker.spawn(forward_loop(
            leader.clone(),
            in_flight.clone(),
            receiver,
            cancel,
        ));
        Forwarder {
            queue,
            leader,
            in_flight,
        }
    }

    /// Sends `command` to the leader (batched with concurrent ones) and returns its result.
    pub async fn forward(&self, command: Command) -> Result<CommandResult, ApiError> {
        if self.queue.capacity() == self.queue.max_capacity() {
            if let Ok(permit) = self.in_flight.clone().try_acquire_owned() {
                let (reply, result) = oneshot::channel();
                forward_batch(&self.leader, vec![command], vec![reply]).await;
                drop(permit);
                return result
                    .await
                    .map_err(|_| ApiError::unavailable("the node is shutting down"))?;
            }
        }
        submit(&self.queue, command).await
    }
}

/// Queues `command` for a batching loop and waits for the loop's answer.
async fn submit(
    queue: &mpsc::Sender<(Command, Reply)>,
    command: Command,
) -> Result<CommandResult, ApiError> {
    let (reply, result) = oneshot::channel();
    queue
        .send((command, reply))
        .await
        .map_err(|_| ApiError::unavailable("the node is shutting down"))?;
    result
        .await
        .map_err(|_| ApiError::unavailable("the node is shutting down"))?
}

/// Answers every caller of a batch with `error`.
fn fail_all(replies: Vec<Reply>, error: &ApiError) {
    for reply in replies {
        let _ = reply.send(Err(error.clone()));
    }
}

/// The next queued write, or `None` once the queue closes or `cancel` fires.
///
/// Cancel safety: cancel-safe (`mpsc::Receiver::recv` is).
async fn next_item(
    receiver: &mut mpsc::Receiver<(Command, Reply)>,
    cancel: &CancellationToken,
) -> Option<(Command, Reply)> {
    tokio::select! {
        _ = cancel.cancelled() => None,
        next = receiver.recv() => next,
    }
}

/// `first` plus whatever is already queued, up to [`MAX_BATCH`], split into commands and
/// their reply channels.
fn drain_batch(
    first: (Command, Reply),
    receiver: &mut mpsc::Receiver<(Command, Reply)>,
) -> (Vec<Command>, Vec<Reply>) {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match receiver.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    batch.into_iter().unzip()
}

async fn forward_loop(
    leader: Arc<crate::consensus::Inner>,
    in_flight: Arc<Semaphore>,
    mut receiver: mpsc::Receiver<(Command, Reply)>,
    cancel: CancellationToken,
) {
    loop {
        let Some(first) = next_item(&mut receiver, &cancel).await else {
            return;
        };
        // One forward in flight: the next batch gathers while this one is committed.
        let Ok(_permit) = in_flight.acquire().await else {
            return;
        };
        let (commands, replies) = drain_batch(first, &mut receiver);
        forward_batch(&leader, commands, replies).await;
    }
}

/// Sends one batch of writes to the leader and answers their callers.
async fn forward_batch(
    leader: &crate::consensus::Inner,
    commands: Vec<Command>,
    replies: Vec<Reply>,
) {
    use crate::consensus::{LeaderReply, LeaderRequest};
    match leader
        .call_leader(LeaderRequest::WriteBatch(commands), |r| leader.serve(r))
        .await
    {
        Ok(LeaderReply::WrittenBatch(results)) if results.len() == replies.len() => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Ok(other) => {
            let error = ApiError::internal(format!("unexpected reply to a write batch: {other:?}"));
            fail_all(replies, &error);
        }
        Err(error) => fail_all(replies, &error),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Mutex;
    use strata_proto::kv::{KvCommand, KvResult, PutRequest, PutResponse, ResponseHeader};

    /// A sink that records each entry's size and answers it when the test releases it. A put
    /// of key "N" is answered with revision N, so each caller can tell its own result.
    struct Gate {
        term: Option<u64>,
        entries: Mutex<Vec<usize>>,
        release: Arc<Semaphore>,
    }

    fn put(n: i64) -> Command {
        Command::Kv(KvCommand::Put(PutRequest {
            key: n.to_string().into_bytes(),
            ..Default::default()
        }))
    }

    fn answer(command: &Command) -> CommandResult {
        match command {
            Command::Kv(KvCommand::Put(put)) => {
                let revision = String::from_utf8_lossy(&put.key).parse().unwrap();
                CommandResult::Kv(KvResult::Put(PutResponse {
                    header: ResponseHeader {
                        revision,
                        ..Default::default()
                    },
                    prev_kv: None,
                }))
            }
            Command::Batch(all) => CommandResult::Batch(all.iter().map(answer).collect()),
            other => panic!("unexpected {other:?}"),
        }
    }

    impl Sink for Gate {
        fn leading_term(&self) -> Option<u64> {
            self.term
        }

        fn write(
            &self,
            _term: u64,
            entry: Command,
        ) -> BoxFuture<'static, Result<CommandResult, ApiError>> {
            let size = match &entry {
                Command::Batch(all) => all.len(),
                _ => 1,
            };
            self.entries.lock().unwrap().push(size);
            let release = self.release.clone();
            Box::pin(async move {
                release.acquire().await.unwrap().forget();
                Ok(answer(&entry))
            })
        }
    }

    fn metrics() -> ConsensusMetrics {
        let histogram = |name: &str| {
            prometheus::Histogram::with_opts(prometheus::HistogramOpts::new(name, "test")).unwrap()
        };
        ConsensusMetrics {
            proposal_batch_size: histogram("batch"),
            proposals_abandoned: prometheus::IntCounter::new("abandoned", "test").unwrap(),
            forwards_abandoned: prometheus::IntCounter::new("forwards", "test").unwrap(),
            proposal_seconds: histogram("seconds"),
        }
    }

    fn start(term: Option<u64>, timeout: Duration) -> (Proposer, Arc<Gate>, ConsensusMetrics) {
        let gate = Arc::new(Gate {
            term,
            entries: Mutex::new(Vec::new()),
            release: Arc::new(Semaphore::new(0)),
        });
        let metrics = metrics();
        let tracker = TaskTracker::new();
        let proposer = Proposer::start_on(
            gate.clone(),
            metrics.clone(),
            timeout,
            &tracker,
            CancellationToken::new(),
        );
        (proposer, gate, metrics)
    }

    fn revision(result: Result<CommandResult, ApiError>) -> i64 {
        match result.unwrap() {
            CommandResult::Kv(KvResult::Put(put)) => put.header.revision,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_write_is_proposed_at_once_without_a_timer() {
        let (proposer, gate, _) = start(Some(1), Duration::from_secs(5));
        gate.release.add_permits(1);
        let began = tokio::time::Instant::now();
        assert_eq!(revision(proposer.propose(put(7)).await), 7);
        assert_eq!(began.elapsed(), Duration::ZERO, "no virtual time passed");
        assert_eq!(*gate.entries.lock().unwrap(), [1]);
    }

    #[tokio::test(start_paused = true)]
    async fn writes_queued_behind_a_batch_in_flight_go_out_together_as_the_next_entry() {
        let (proposer, gate, metrics) = start(Some(1), Duration::from_secs(5));
        let first = tokio::spawn({
            let proposer = proposer.clone();
            async move { proposer.propose(put(1)).await }
        });
        crate::settle().await;
        assert_eq!(
            *gate.entries.lock().unwrap(),
            [1],
            "the first write went out alone"
        );
        let queued: Vec<_> = (2..=10)
            .map(|n| {
                let proposer = proposer.clone();
                tokio::spawn(async move { proposer.propose(put(n)).await })
            })
            .collect();
        crate::settle().await;
        assert_eq!(
            *gate.entries.lock().unwrap(),
            [1],
            "nothing else is proposed while one batch is in flight"
        );
        gate.release.add_permits(2);
        assert_eq!(revision(first.await.unwrap()), 1);
        for (n, write) in (2..=10).zip(queued) {
            assert_eq!(
                revision(write.await.unwrap()),
                n,
                "each caller gets its own result"
            );
        }
        assert_eq!(*gate.entries.lock().unwrap(), [1, 9]);
        assert_eq!(metrics.proposal_batch_size.get_sample_count(), 2);
        assert_eq!(metrics.proposals_abandoned.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn writes_proposed_together_form_one_entry_whether_or_not_a_batch_is_in_flight() {
        let (proposer, gate, _) = start(Some(1), Duration::from_secs(5));
        let idle = tokio::spawn({
            let proposer = proposer.clone();
            async move { proposer.propose_all((1..=4).map(put).collect()).await }
        });
        crate::settle().await;
        assert_eq!(
            *gate.entries.lock().unwrap(),
            [4],
            "proposed at once, as one entry"
        );
        let behind = tokio::spawn({
            let proposer = proposer.clone();
            async move { proposer.propose_all((5..=7).map(put).collect()).await }
        });
        crate::settle().await;
        assert_eq!(
            *gate.entries.lock().unwrap(),
            [4],
            "waits for the batch in flight"
        );
        gate.release.add_permits(2);
        let first: Vec<i64> = idle.await.unwrap().into_iter().map(revision).collect();
        let second: Vec<i64> = behind.await.unwrap().into_iter().map(revision).collect();
        assert_eq!(first, [1, 2, 3, 4]);
        assert_eq!(second, [5, 6, 7]);
        assert_eq!(*gate.entries.lock().unwrap(), [4, 3]);
    }

    /// The liveness bug of issue 9: a batch that is never answered must not hold the one
    /// in-flight slot for ever.
    #[tokio::test(start_paused = true)]
    async fn a_batch_never_answered_fails_after_the_timeout_and_frees_the_slot() {
        let timeout = Duration::from_secs(5);
        let (proposer, gate, metrics) = start(Some(1), timeout);
        let began = tokio::time::Instant::now();
        let stuck = proposer.propose(put(1)).await.unwrap_err();
        assert_eq!(stuck.code, ErrorCode::Timeout, "{stuck:?}");
        assert_eq!(began.elapsed(), timeout);
        assert_eq!(metrics.proposals_abandoned.get(), 1);
        gate.release.add_permits(1);
        assert_eq!(revision(proposer.propose(put(2)).await), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_that_does_not_lead_proposes_nothing_and_says_so() {
        let (proposer, gate, _) = start(None, Duration::from_secs(5));
        let refused = proposer.propose(put(1)).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::Unavailable, "{refused:?}");
        assert!(gate.entries.lock().unwrap().is_empty());
    }
}
