//! Reading a whole large prefix back, as etcd clients do: `etcd-range-all` pages through it
//! with `limit` and a continuation key, and `etcd-watch-replay` replays its history with a
//! watch from an old revision. Both report how long it took and how many keys or events came.

use crate::etcd::Pool;
use crate::watch::prefix_end;
use anyhow::{bail, Context};
use std::time::{Duration, Instant};
use strata_etcd::pb::etcdserverpb::kv_client::KvClient;
use strata_etcd::pb::etcdserverpb::watch_client::WatchClient;
use strata_etcd::pb::etcdserverpb::watch_request::RequestUnion;
use strata_etcd::pb::etcdserverpb::{RangeRequest, WatchCreateRequest, WatchRequest};
use tokio_stream::StreamExt;

/// What one scan measured.
#[derive(Debug, Default)]
pub struct Scan {
    /// Keys or events received.
    pub items: u64,
    /// Requests (pages) or watch responses it took.
    pub batches: u64,
    /// Bytes of keys and values received.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// The slowest page or gap between two responses.
    pub slowest: Duration,
}

/// Reads every key under `prefix` in pages of `page` keys, each page starting after the last
/// key of the one before, as etcd clients page (`--limit` and the next key).
pub async fn range_all(
    pool: &Pool,
    prefix: &[u8],
    page: i64,
    serializable: bool,
    timeout: Duration,
) -> anyhow::Result<Scan> {
    let mut client = KvClient::new(pool.channel(0)).max_decoding_message_size(usize::MAX);
    let end = prefix_end(prefix);
    let mut start = prefix.to_vec();
    let mut scan = Scan::default();
    let began = Instant::now();
    loop {
        let request = RangeRequest {
            key: start.clone(),
            range_end: end.clone(),
            limit: page,
            serializable,
            ..Default::default()
        };
        let sent = Instant::now();
        let response = tokio::time::timeout(timeout, client.range(pool.request(request)))
            .await
            .map_err(|_| anyhow::anyhow!("range page timed out after {timeout:?}"))?
            .with_context(|| format!("range page {} through {}", scan.batches, pool.target(0)))?
            .into_inner();
        scan.slowest = scan.slowest.max(sent.elapsed());
        scan.batches += 1;
        scan.items += response.kvs.len() as u64;
        scan.bytes += response
            .kvs
            .iter()
            .map(|kv| (kv.key.len() + kv.value.len()) as u64)
            .sum::<u64>();
        let Some(last) = response.kvs.last() else {
            break;
        };
        if !response.more {
            break;
        }
        start = last.key.clone();
        start.push(0);
    }
    scan.elapsed = began.elapsed();
    Ok(scan)
}

/// Watches `prefix` from `from_revision` until `expect` events have arrived (or `timeout`
/// passes between two responses), as a client resuming an old watch would.
pub async fn watch_replay(
    pool: &Pool,
    prefix: &[u8],
    from_revision: i64,
    expect: u64,
    timeout: Duration,
) -> anyhow::Result<Scan> {
    let mut client = WatchClient::new(pool.channel(0)).max_decoding_message_size(usize::MAX);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            start_revision: from_revision,
            ..Default::default()
        })),
    };
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    sender
        .send(create)
        .await
        .context("queue the watch request")?;
    let began = Instant::now();
    let mut stream = tokio::time::timeout(
        timeout,
        client.watch(pool.request(tokio_stream::wrappers::ReceiverStream::new(receiver))),
    )
    .await
    .map_err(|_| anyhow::anyhow!("watch timed out after {timeout:?}"))?
    .context("open the watch")?
    .into_inner();
    let mut scan = Scan::default();
    let mut last = Instant::now();
    while scan.items < expect {
        let response = tokio::time::timeout(timeout, stream.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no watch response for {timeout:?} after {} of {expect} events",
                    scan.items
                )
            })?
            .with_context(|| format!("watch ended after {} of {expect} events", scan.items))?
            .context("watch stream")?;
        if response.canceled {
            bail!("watch canceled: {}", response.cancel_reason);
        }
        scan.slowest = scan.slowest.max(last.elapsed());
        last = Instant::now();
        if !response.events.is_empty() {
            scan.batches += 1;
        }
        scan.items += response.events.len() as u64;
        scan.bytes += response
            .events
            .iter()
            .filter_map(|e| e.kv.as_ref())
            .map(|kv| (kv.key.len() + kv.value.len()) as u64)
            .sum::<u64>();
    }
    scan.elapsed = began.elapsed();
    drop(sender);
    Ok(scan)
}
