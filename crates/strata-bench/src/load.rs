//! The closed-loop load driver: N tasks, each with its own client handle, share one request
//! budget.
//!
//! Each task claims the next sequence number from a shared counter, sends one request, waits
//! for the answer and repeats (closed loop: at most one request in flight per task). The run
//! stops when the budget of `requests` is spent or `max_duration` has passed, whichever comes
//! first; a request already in flight at the deadline is still waited for, bounded by the
//! driver's own request timeout.
//!
//! What a request is lives behind [`Driver`]: the native HTTP API (`crate::native`) and the
//! etcd v3 gRPC API (`crate::etcd`) share this loop, so their numbers are measured the same way.

use crate::stats::{Latencies, Summary};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// One kind of request against one API, issued by many concurrent tasks.
pub trait Driver: Send + Sync + 'static {
    /// What one task holds to send its requests (a client, or a handle on a shared channel).
    type Client: Send + 'static;

    /// Returns the handle task `client_index` uses for the whole run.
    fn client(&self, client_index: usize) -> Self::Client;

    /// Sends one untimed request, so connections are open before the clock starts.
    fn warm_up(
        &self,
        client: &mut Self::Client,
        client_index: usize,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Sends the request with sequence number `sequence` and waits for its answer.
    fn issue(
        &self,
        client: &mut Self::Client,
        sequence: u64,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// How much load to apply.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Concurrent tasks, each with its own client handle.
    pub clients: usize,
    /// Total requests over all tasks.
    pub requests: u64,
    /// The run stops claiming new requests after this long.
    pub max_duration: Duration,
}

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    /// Requests that succeeded.
    pub succeeded: u64,
    /// Requests that failed.
    pub errors: u64,
    /// The first failure's message, to show why requests failed.
    pub first_error: Option<String>,
    /// Wall time from the first request to the last answer.
    pub elapsed: Duration,
    /// When the timed run started (after the warm-ups), in ms since the Unix epoch: the start
    /// of the first 1-second window, to lay the windows beside the servers' logs.
    pub started_unix_ms: u64,
    /// Latency percentiles of the successful requests.
    pub latency: Option<Summary>,
}

/// One task's tally.
#[derive(Debug, Default)]
struct TaskTally {
    /// Latencies of its successful requests.
    latencies: Latencies,
    /// Its failed requests.
    errors: u64,
    /// Its first failure's message.
    first_error: Option<String>,
}

/// Warms up every client, then runs `driver` under `plan`.
///
/// Fails only if a client cannot complete its warm-up request (the cluster is unreachable);
/// failures during the timed run are counted in [`Outcome::errors`].
pub async fn run<D: Driver>(driver: D, plan: Plan) -> anyhow::Result<Outcome> {
    let driver = Arc::new(driver);

    let mut warm_ups = JoinSet::new();
    for client_index in 0..plan.clients {
        let driver = Arc::clone(&driver);
        warm_ups.spawn(async move {
            let mut client = driver.client(client_index);
            driver.warm_up(&mut client, client_index).await?;
            anyhow::Ok(client)
        });
    }
    let mut clients = Vec::with_capacity(plan.clients);
    while let Some(joined) = warm_ups.join_next().await {
        clients.push(joined??);
    }

    let next_sequence = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let stop_claiming_at = started + plan.max_duration;
    let mut tasks = JoinSet::new();
    for mut client in clients {
        let driver = Arc::clone(&driver);
        let next_sequence = Arc::clone(&next_sequence);
        let requests = plan.requests;
        tasks.spawn(async move {
            let mut tally = TaskTally::default();
            while Instant::now() < stop_claiming_at {
                let sequence = next_sequence.fetch_add(1, Ordering::Relaxed);
                if sequence >= requests {
                    break;
                }
                let sent = Instant::now();
                match driver.issue(&mut client, sequence).await {
                    Ok(()) => tally.latencies.record_at(started.elapsed(), sent.elapsed()),
                    Err(error) => {
                        tally.errors += 1;
                        tally
                            .first_error
                            .get_or_insert_with(|| format!("{error:#}"));
                    }
                }
            }
            tally
        });
    }

    let mut latencies = Latencies::default();
    let mut errors = 0;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let tally = joined?;
        latencies.merge(tally.latencies);
        errors += tally.errors;
        if first_error.is_none() {
            first_error = tally.first_error;
        }
    }
    let elapsed = started.elapsed();
    let succeeded = u64::try_from(latencies.len()).expect("sample count fits in u64");
    Ok(Outcome {
        succeeded,
        errors,
        first_error,
        elapsed,
        started_unix_ms,
        latency: latencies.summary(),
    })
}
