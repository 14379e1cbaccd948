//! The closed-loop load driver: N tasks, each with its own client, share one request budget.
//!
//! Each task claims the next sequence number from a shared counter, sends one request, waits
//! for the answer and repeats (closed loop: at most one request in flight per task). The run
//! stops when the budget of `requests` is spent or `max_duration` has passed, whichever comes
//! first; a request already in flight at the deadline is still waited for, bounded by the
//! client's own timeout.

use crate::stats::{Latencies, Summary};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_client::{Client, ClientError};
use strata_proto::kv::{RangeRequest, RangeResponse};
use tokio::task::JoinSet;

/// What every request of a run does.
#[derive(Debug, Clone)]
pub enum Workload {
    /// Writes `{key_prefix}{sequence}`, so every put creates a new key.
    Put {
        /// Prefix of every written key.
        key_prefix: String,
        /// The value written each time.
        value: Vec<u8>,
    },
    /// Reads one existing key.
    Get {
        /// The key, written once before the run.
        key: Vec<u8>,
        /// Serve from the contacted replica instead of confirming leadership first.
        serializable: bool,
    },
}

impl Workload {
    /// Sends the request with sequence number `sequence` and waits for its answer.
    async fn issue(&self, client: &Client, sequence: u64) -> Result<(), ClientError> {
        match self {
            Workload::Put { key_prefix, value } => {
                client
                    .put(format!("{key_prefix}{sequence:010}"), value.clone())
                    .await?;
                Ok(())
            }
            Workload::Get { key, serializable } => {
                let request = RangeRequest {
                    key: key.clone(),
                    serializable: *serializable,
                    ..Default::default()
                };
                let response: RangeResponse = client.post("/v1/kv/range", &request).await?;
                if response.kvs.is_empty() {
                    // The key was written before the run; a read that misses it is wrong.
                    return Err(ClientError::Transport(format!(
                        "key {:?} not found",
                        String::from_utf8_lossy(key)
                    )));
                }
                Ok(())
            }
        }
    }

    /// Sends one untimed request, so connections are open before the clock starts.
    async fn warm_up(&self, client: &Client, client_index: usize) -> Result<(), ClientError> {
        match self {
            Workload::Put { key_prefix, value } => {
                client
                    .put(format!("{key_prefix}warmup-{client_index}"), value.clone())
                    .await?;
                Ok(())
            }
            Workload::Get { .. } => self.issue(client, 0).await,
        }
    }
}

/// How much load to apply.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Concurrent tasks, each with its own client (and connection pool).
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

/// Warms up every client, then runs `workload` under `plan`.
///
/// Fails only if a client cannot complete its warm-up request (the cluster is unreachable);
/// failures during the timed run are counted in [`Outcome::errors`].
pub async fn run(workload: Workload, plan: Plan, clients: Vec<Client>) -> anyhow::Result<Outcome> {
    debug_assert_eq!(clients.len(), plan.clients, "one client per task");
    let workload = Arc::new(workload);
    let clients: Vec<Arc<Client>> = clients.into_iter().map(Arc::new).collect();

    let mut warm_ups = JoinSet::new();
    for (client_index, client) in clients.iter().enumerate() {
        let workload = Arc::clone(&workload);
        let client = Arc::clone(client);
        warm_ups.spawn(async move { workload.warm_up(&client, client_index).await });
    }
    while let Some(joined) = warm_ups.join_next().await {
        joined??;
    }

    let next_sequence = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop_claiming_at = started + plan.max_duration;
    let mut tasks = JoinSet::new();
    for client in clients {
        let workload = Arc::clone(&workload);
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
                match workload.issue(&client, sequence).await {
                    Ok(()) => tally.latencies.record(sent.elapsed()),
                    Err(error) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert_with(|| error.to_string());
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
        latency: latencies.summary(),
    })
}
