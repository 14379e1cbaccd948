//! The watch fan-out workload (`etcd-watch`): many watchers on one prefix, then a sequence of
//! puts of one key under it, and the latency of every delivery.
//!
//! 1. Watcher `w` opens its own `Watch` stream on connection `w mod connections` of the
//!    [`Pool`] (so the watchers spread over the endpoints and share a few HTTP/2 connections)
//!    and creates one watch on the prefix; the run starts once every watch is confirmed.
//! 2. Put `k` writes the value `"{k:010}-xxx..."`; its send time is stored before the request
//!    leaves. Each watcher that receives the event computes `now - send_time[k]`: one delivery
//!    latency, which includes the put's own commit.
//! 3. The next put is sent once every watcher has seen put `k`, or after `delivery_timeout`;
//!    deliveries that never came count as errors (`missed`).

use crate::etcd::Pool;
use crate::stats::{Latencies, Summary};
use anyhow::{bail, Context};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use strata_etcd::pb::etcdserverpb::kv_client::KvClient;
use strata_etcd::pb::etcdserverpb::watch_client::WatchClient;
use strata_etcd::pb::etcdserverpb::watch_request::RequestUnion;
use strata_etcd::pb::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tonic::Streaming;

/// The shape of one fan-out run.
#[derive(Debug, Clone)]
pub struct WatchPlan {
    /// Watchers, one `Watch` stream each.
    pub watchers: usize,
    /// Puts of the watched key, one after the other.
    pub puts: u64,
    /// The watched prefix; the key written is `{prefix}key`.
    pub prefix: String,
    /// Bytes per value.
    pub value_size: usize,
    /// Longest wait for one put's answer, and for every watch to be created.
    pub request_timeout: Duration,
    /// Longest wait, after a put, for every watcher to receive it.
    pub delivery_timeout: Duration,
}

/// What a fan-out run measured.
#[derive(Debug)]
pub struct WatchOutcome {
    /// Events received, over every watcher and put.
    pub delivered: u64,
    /// Deliveries expected (`watchers * successful puts`) that never came.
    pub missed: u64,
    /// Puts that failed.
    pub failed_puts: u64,
    /// The first failure's message.
    pub first_error: Option<String>,
    /// Wall time from the first put to the last delivery (or timeout).
    pub elapsed: Duration,
    /// Delivery latency: put send to receipt by one watcher.
    pub latency: Option<Summary>,
    /// Latency of the puts themselves.
    pub put_latency: Option<Summary>,
}

/// State the watcher tasks and the putter share.
struct Shared {
    /// When put `k` was sent; set before the request leaves, so before any delivery of it.
    sent_at: Vec<OnceLock<Instant>>,
    /// How many watchers have received put `k`.
    received: Vec<AtomicU64>,
    /// Woken when some put has reached every watcher.
    all_received: Notify,
    /// Every delivery latency. A std mutex: held only to push one sample, never across await.
    latencies: Mutex<Latencies>,
    /// Events that could not be matched to a put, or streams that ended early.
    first_error: Mutex<Option<String>>,
    /// Watchers, to know when a put has reached them all.
    watchers: u64,
}

impl Shared {
    fn note_error(&self, message: String) {
        let mut first = self.first_error.lock().expect("error slot lock poisoned");
        first.get_or_insert(message);
    }
}

/// Runs one fan-out over `pool` under `plan`.
pub async fn run(pool: &Pool, plan: &WatchPlan) -> anyhow::Result<WatchOutcome> {
    if plan.watchers == 0 {
        bail!("--watchers must be at least 1");
    }
    let puts = usize::try_from(plan.puts).context("--puts is too large")?;
    let shared = Arc::new(Shared {
        sent_at: (0..puts).map(|_| OnceLock::new()).collect(),
        received: (0..puts).map(|_| AtomicU64::new(0)).collect(),
        all_received: Notify::new(),
        latencies: Mutex::new(Latencies::default()),
        first_error: Mutex::new(None),
        watchers: plan.watchers as u64,
    });

    // 1. Create every watch and wait for each confirmation.
    let mut creating = JoinSet::new();
    for watcher_index in 0..plan.watchers {
        let channel = pool.channel(watcher_index);
        let pool_for_token = pool.clone();
        let target = pool.target(watcher_index).to_string();
        let prefix = plan.prefix.clone().into_bytes();
        let timeout = plan.request_timeout;
        creating.spawn(async move {
            tokio::time::timeout(timeout, create_watch(channel, &pool_for_token, prefix))
                .await
                .map_err(|_| anyhow::anyhow!("watch creation timed out after {timeout:?}"))?
                .with_context(|| format!("create watcher {watcher_index} through {target}"))
        });
    }
    let mut streams = Vec::with_capacity(plan.watchers);
    while let Some(joined) = creating.join_next().await {
        streams.push(joined??);
    }

    // 2. One task per watcher records deliveries until the run ends and the set is dropped.
    let mut watching = JoinSet::new();
    for stream in streams {
        let shared = Arc::clone(&shared);
        watching.spawn(receive(stream, shared));
    }

    // 3. The puts, one at a time.
    let key = format!("{}key", plan.prefix).into_bytes();
    let mut kv = KvClient::new(pool.channel(0));
    let mut put_latencies = Latencies::default();
    let mut failed_puts = 0;
    let mut first_put_error = None;
    let mut expected = 0u64;
    let started = Instant::now();
    for (put_index, sent_at) in shared.sent_at.iter().enumerate() {
        let request = PutRequest {
            key: key.clone(),
            value: value_for(put_index, plan.value_size),
            ..Default::default()
        };
        let sent = Instant::now();
        sent_at.set(sent).expect("each put index is sent once");
        match tokio::time::timeout(plan.request_timeout, kv.put(pool.request(request))).await {
            Ok(Ok(_)) => put_latencies.record(sent.elapsed()),
            Ok(Err(status)) => {
                failed_puts += 1;
                first_put_error.get_or_insert_with(|| format!("put {put_index}: {status}"));
                continue;
            }
            Err(_) => {
                failed_puts += 1;
                first_put_error.get_or_insert_with(|| format!("put {put_index} timed out"));
                continue;
            }
        }
        expected += shared.watchers;
        wait_for_everyone(&shared, put_index, plan.delivery_timeout).await;
    }
    let elapsed = started.elapsed();
    // Dropping the tasks drops their streams, which cancels the watches on the server.
    watching.abort_all();
    while watching.join_next().await.is_some() {}

    let mut latencies = std::mem::take(&mut *shared.latencies.lock().expect("lock poisoned"));
    let delivered = u64::try_from(latencies.len()).expect("sample count fits in u64");
    let watch_error = shared.first_error.lock().expect("lock poisoned").take();
    Ok(WatchOutcome {
        delivered,
        missed: expected.saturating_sub(delivered),
        failed_puts,
        first_error: first_put_error.or(watch_error),
        elapsed,
        latency: latencies.summary(),
        put_latency: put_latencies.summary(),
    })
}

/// Opens a `Watch` stream, creates one watch on `prefix` and waits for its confirmation.
///
/// The request side stays open (an ended request stream makes etcd cancel its watches).
async fn create_watch(
    channel: tonic::transport::Channel,
    pool: &Pool,
    prefix: Vec<u8>,
) -> anyhow::Result<Streaming<strata_etcd::pb::etcdserverpb::WatchResponse>> {
    let range_end = prefix_end(&prefix);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: prefix,
            range_end,
            ..Default::default()
        })),
    };
    let requests = tokio_stream::once(create).chain(tokio_stream::pending());
    let mut stream = WatchClient::new(channel)
        .watch(pool.request(requests))
        .await?
        .into_inner();
    match stream.message().await? {
        Some(response) if response.created && !response.canceled => Ok(stream),
        Some(response) => bail!(
            "watch not created (canceled: {}, reason: {:?})",
            response.canceled,
            response.cancel_reason
        ),
        None => bail!("watch stream ended before the watch was created"),
    }
}

/// Receives events until the stream ends or the task is aborted, recording one delivery
/// latency per event.
///
/// Cancel safety: runs as its own task and is only ever aborted; everything it records is
/// already in `shared`.
async fn receive(
    mut stream: Streaming<strata_etcd::pb::etcdserverpb::WatchResponse>,
    shared: Arc<Shared>,
) {
    loop {
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => {
                shared.note_error("a watch stream ended during the run".to_string());
                return;
            }
            Err(status) => {
                shared.note_error(format!("a watch stream failed: {status}"));
                return;
            }
        };
        let received = Instant::now();
        for event in &response.events {
            let value = event.kv.as_ref().map(|kv| kv.value.as_slice());
            let Some(put_index) = value.and_then(put_index_of) else {
                shared.note_error("an event with an unexpected value".to_string());
                continue;
            };
            let Some(sent) = shared.sent_at.get(put_index).and_then(OnceLock::get) else {
                shared.note_error(format!("an event for put {put_index}, never sent"));
                continue;
            };
            shared
                .latencies
                .lock()
                .expect("latency lock poisoned")
                .record(received.saturating_duration_since(*sent));
            let seen = shared.received[put_index].fetch_add(1, Ordering::AcqRel) + 1;
            if seen == shared.watchers {
                shared.all_received.notify_waiters();
            }
        }
    }
}

/// Waits until every watcher has received put `put_index`, or `timeout` has passed.
async fn wait_for_everyone(shared: &Shared, put_index: usize, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // Created before the check, so a notify_waiters between the two is not lost.
        let notified = shared.all_received.notified();
        if shared.received[put_index].load(Ordering::Acquire) >= shared.watchers {
            return;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return;
        }
    }
}

/// Returns the value of put `put_index`: the index in ten digits, `-`, then padding up to
/// `value_size` bytes.
fn value_for(put_index: usize, value_size: usize) -> Vec<u8> {
    let mut value = format!("{put_index:010}-").into_bytes();
    if value.len() < value_size {
        value.resize(value_size, b'x');
    }
    value
}

/// Reads the put index back from a value written by [`value_for`].
fn put_index_of(value: &[u8]) -> Option<usize> {
    let digits = value.split(|byte| *byte == b'-').next()?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Returns etcd's range end for every key starting with `prefix` (`--prefix` in etcdctl):
/// the prefix with its last byte below 0xff incremented, or `\0` (everything) when there is
/// none.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carry_their_put_index() {
        let value = value_for(42, 256);
        assert_eq!(value.len(), 256);
        assert_eq!(put_index_of(&value), Some(42));
        assert_eq!(put_index_of(&value_for(7, 0)), Some(7));
        assert_eq!(put_index_of(b"nonsense"), None);
    }

    #[test]
    fn prefix_end_follows_etcd() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(prefix_end(&[0xff]), vec![0]);
    }
}
