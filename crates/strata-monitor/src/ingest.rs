//! Where samples enter: the local store, then every other monitor node.
//!
//! Replication is full: each monitor node keeps every sample, so any node answers any query
//! from its own disk and losing a node loses nothing. The node that ingests a batch appends
//! it to its store and sends it to each peer as a remote write body on the peer listener
//! ([`PEER_WRITE_PATH`], reached only by members, so it needs no credentials even with
//! access control on), where it is stored as a replica and not forwarded again:
//! - A batch a client sent (remote write, OTLP) is acknowledged only once it is on this
//!   node's disk and on at least one peer's ([`Ingest::write_durable`]), so a kill -9 of the
//!   node that took it loses nothing acknowledged, anywhere.
//! - The node's own batches (scrapes, rule results) go through a queue per peer
//!   ([`Ingest::write`]); losing the node loses at most what the queue held, for targets that
//!   were also that node's to scrape.
//!
//! A peer's queue is bounded ([`QUEUE_BATCHES`]); a peer that is down has its batches retried
//! until the queue overflows, then the oldest are dropped and counted. A peer with a backlog
//! gets new batches through its queue too, so each peer receives a series' samples in order.
//! Samples are idempotent in the store (a repeat is refused as out of order), so a retry
//! never doubles.

use crate::model::Labels;
use crate::remote;
use crate::store::{Appended, Store};
use prometheus::{IntCounterVec, Opts};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Batches queued for one peer before the oldest are dropped.
pub const QUEUE_BATCHES: usize = 4096;
/// Where a peer takes replicated batches, on its peer (raft) listener.
pub const PEER_WRITE_PATH: &str = "/peer/monitor/write";

struct Peer {
    addr: String,
    queue: Mutex<VecDeque<Arc<Vec<u8>>>>,
    ready: Notify,
    cancel: CancellationToken,
}

/// The ingest path.
pub struct Ingest {
    /// The local store.
    pub store: Arc<Store>,
    peers: Mutex<HashMap<u64, Arc<Peer>>>,
    http: strata_component::PeerHttp,
    tracker: TaskTracker,
    cancel: CancellationToken,
    samples: IntCounterVec,
    replication: IntCounterVec,
}

impl Ingest {
    /// The ingest path over `store`; peers (by their peer addresses) are added with
    /// [`Ingest::set_peers`] and called through `http`.
    pub fn new(
        store: Arc<Store>,
        http: strata_component::PeerHttp,
        tracker: TaskTracker,
        cancel: CancellationToken,
        registry: &prometheus::Registry,
    ) -> Result<Ingest, prometheus::Error> {
        let samples = IntCounterVec::new(
            Opts::new(
                "strata_monitor_samples_total",
                "Samples offered to the store, by source (scrape, remote_write, otlp, replica) and result (stored, out_of_order, out_of_bounds).",
            ),
            &["source", "result"],
        )?;
        let replication = IntCounterVec::new(
            Opts::new(
                "strata_monitor_replication_batches_total",
                "Batches sent to peer monitor nodes, by result (sent, retried, dropped).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(samples.clone()))?;
        registry.register(Box::new(replication.clone()))?;
        Ok(Ingest {
            store,
            peers: Mutex::new(HashMap::new()),
            http,
            tracker,
            cancel,
            samples,
            replication,
        })
    }

    /// Appends `batch` locally, then sends it to every peer at once and returns when at least
    /// one has it (or there are no peers). Peers that fail, or have a backlog, get it through
    /// their queue. `Err` says why the batch is not safe yet; the client should retry (a retry
    /// never doubles a sample).
    pub async fn write_durable(
        self: &Arc<Self>,
        source: &'static str,
        batch: Vec<(Labels, i64, f64)>,
    ) -> Result<Appended, String> {
        let me = self.clone();
        let (appended, batch) = tokio::task::spawn_blocking(move || {
            let appended = me.append_local(source, &batch);
            (appended, batch)
        })
        .await
        .map_err(|e| e.to_string())?;
        let appended = appended.map_err(|e| format!("cannot store the samples: {e}"))?;
        let peers: Vec<Arc<Peer>> = self
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        if peers.is_empty() || batch.is_empty() {
            return Ok(appended);
        }
        let body = Arc::new(remote::encode(&batch));
        let sends = peers.iter().map(|peer| {
            let body = body.clone();
            async move {
                let backlog = !peer
                    .queue
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty();
                let sent = !backlog && self.send(&peer.addr, &body).await.is_ok();
                if sent {
                    self.replication.with_label_values(&["sent"]).inc();
                } else {
                    self.enqueue(peer, body);
                }
                sent
            }
        });
        let acked = futures::future::join_all(sends)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count();
        if acked == 0 {
            return Err(format!(
                "no peer monitor node acknowledged the samples (of {}); they are stored here and queued for the peers",
                peers.len()
            ));
        }
        Ok(appended)
    }

    fn enqueue(&self, peer: &Peer, body: Arc<Vec<u8>>) {
        let mut queue = peer.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() >= QUEUE_BATCHES {
            queue.pop_front();
            self.replication.with_label_values(&["dropped"]).inc();
        }
        queue.push_back(body);
        drop(queue);
        peer.ready.notify_one();
    }

    /// One replicated batch to one peer.
    async fn send(&self, addr: &str, body: &[u8]) -> Result<(), String> {
        let request = self
            .http
            .post(addr, PEER_WRITE_PATH)
            .header("content-encoding", "snappy")
            .header("content-type", "application/x-protobuf")
            .timeout(Duration::from_secs(5))
            .body(body.to_vec());
        match request.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(r.status().to_string()),
            Err(e) => Err(e.without_url().to_string()),
        }
    }

    fn append_local(
        &self,
        source: &str,
        batch: &[(Labels, i64, f64)],
    ) -> std::io::Result<Appended> {
        let appended = self.store.append(batch)?;
        for (result, n) in [
            ("stored", appended.stored),
            ("out_of_order", appended.out_of_order),
            ("out_of_bounds", appended.out_of_bounds),
        ] {
            if n > 0 {
                self.samples
                    .with_label_values(&[source, result])
                    .inc_by(n as u64);
            }
        }
        Ok(appended)
    }

    /// Appends `batch` locally and, unless it came from a peer, queues it for every peer.
    pub fn write(&self, source: &str, batch: &[(Labels, i64, f64)]) -> std::io::Result<Appended> {
        let appended = self.append_local(source, batch)?;
        if source != "replica" && !batch.is_empty() {
            let peers: Vec<Arc<Peer>> = self
                .peers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect();
            if !peers.is_empty() {
                let body = Arc::new(remote::encode(batch));
                for peer in peers {
                    self.enqueue(&peer, body.clone());
                }
            }
        }
        Ok(appended)
    }

    /// Peers replicated to.
    pub fn peer_count(&self) -> usize {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Replaces the peer set (node id to peer address), starting and stopping senders.
    pub fn set_peers(self: &Arc<Self>, wanted: &BTreeMap<u64, String>) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.retain(|id, peer| {
            let keep = wanted.get(id) == Some(&peer.addr);
            if !keep {
                peer.cancel.cancel();
            }
            keep
        });
        for (id, addr) in wanted {
            if peers.contains_key(id) || addr.is_empty() {
                continue;
            }
            tracing::info!(peer = id, %addr, "replicating monitor samples to a peer");
            let peer = Arc::new(Peer {
                addr: addr.clone(),
                queue: Mutex::new(VecDeque::new()),
                ready: Notify::new(),
                cancel: self.cancel.child_token(),
            });
            peers.insert(*id, peer.clone());
            self.tracker.spawn(self.clone().send_loop(*id, peer));
        }
    }

    async fn send_loop(self: Arc<Self>, id: u64, peer: Arc<Peer>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let next = peer
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .front()
                .cloned();
            let Some(body) = next else {
                tokio::select! {
                    () = peer.cancel.cancelled() => return,
                    () = peer.ready.notified() => continue,
                }
            };
            match self.send(&peer.addr, &body).await {
                Ok(()) => {
                    peer.queue
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .pop_front();
                    self.replication.with_label_values(&["sent"]).inc();
                    backoff = Duration::from_millis(100);
                }
                Err(error) if error.starts_with('4') => {
                    tracing::warn!(peer = id, %error, "a peer refused a replicated batch; dropping it");
                    peer.queue
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .pop_front();
                    self.replication.with_label_values(&["dropped"]).inc();
                }
                Err(error) => {
                    tracing::debug!(peer = id, %error, "replication to a peer failed; retrying");
                    self.replication.with_label_values(&["retried"]).inc();
                    tokio::select! {
                        () = peer.cancel.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
