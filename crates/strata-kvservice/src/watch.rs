//! Watches: a task per watch that replays history from the requested revision, then follows
//! the applied-events feed, delivering each event exactly once in revision order.
//!
//! Gap-freedom: the task subscribes to the feed *before* reading history, and apply publishes
//! to the feed under the store's write lock. Every event is therefore in the history read, in
//! the feed, or both; `next_revision` drops the duplicates. When the task falls behind the
//! feed (or a snapshot replaces the state) it re-reads history from `next_revision`.

use crate::kv_machine::Applied;
use crate::service::KvService;
use std::sync::Arc;
use std::time::Duration;
use strata_proto::error::{ApiError, ErrorCode};
use strata_proto::kv::{Event, EventType, RangeSpec, ResponseHeader, WatchRequest, WatchResponse};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Most events in one message when replaying history.
const MAX_EVENTS_PER_MESSAGE: usize = 1000;

/// Opens a watch and returns the stream of its messages. The first message has `created`.
pub fn open(
    service: Arc<KvService>,
    request: WatchRequest,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<mpsc::Receiver<WatchResponse>, ApiError> {
    request.spec().resolve()?;
    if request.start_revision < 0 {
        return Err(ApiError::bad_request("start_revision must not be negative"));
    }
    {
        let store = service.machine.read();
        if request.start_revision > 0 && request.start_revision < store.compact_revision() {
            return Err(ApiError::new(
                ErrorCode::Compacted,
                format!(
                    "required revision {} has been compacted; watch from {} or later",
                    request.start_revision,
                    store.compact_revision()
                ),
            ));
        }
    }
    let (tx, rx) = mpsc::channel(64);
    let interval = service.config.kv.watch_progress_interval.0;
    service.metrics.watchers.inc();
    tracker.spawn(async move {
        let metrics = service.metrics.clone();
        Watcher {
            service,
            spec: request.spec(),
            request,
            tx,
            cancel,
            next_revision: 0,
        }
        .run(interval)
        .await;
        metrics.watchers.dec();
    });
    Ok(rx)
}

struct Watcher {
    service: Arc<KvService>,
    request: WatchRequest,
    /// The keys `request` watches, resolved once.
    spec: RangeSpec,
    tx: mpsc::Sender<WatchResponse>,
    cancel: CancellationToken,
    /// The smallest revision not yet delivered.
    next_revision: i64,
}

enum Flow {
    Continue,
    Stop,
}

impl Watcher {
    fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            revision,
            raft_term: 0,
            member_id: self.service.id,
        }
    }

    async fn run(mut self, progress_interval: Duration) {
        let mut feed = self.service.machine.subscribe();
        let current = {
            let store = self.service.machine.read();
            store.revision()
        };
        self.next_revision = if self.request.start_revision > 0 {
            self.request.start_revision
        } else {
            current + 1
        };
        let created = WatchResponse {
            header: self.header(current),
            created: true,
            ..Default::default()
        };
        if let Flow::Stop = self.send(created).await {
            return;
        }
        if let Flow::Stop = self.catch_up().await {
            return;
        }
        let mut progress = tokio::time::interval(progress_interval);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        progress.tick().await;
        let mut sent_since_tick = false;
        loop {
            let flow = tokio::select! {
                _ = self.cancel.cancelled() => Flow::Stop,
                _ = self.tx.closed() => Flow::Stop,
                message = feed.recv() => match message {
                    Ok(Applied::Events { revision, events }) => {
                        if revision < self.next_revision {
                            Flow::Continue
                        } else {
                            self.next_revision = revision + 1;
                            let events = self.filter_shared(&events);
                            if events.is_empty() {
                                Flow::Continue
                            } else {
                                sent_since_tick = true;
                                let response = WatchResponse { header: self.header(revision), events, ..Default::default() };
                                self.send(response).await
                            }
                        }
                    }
                    Ok(Applied::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        sent_since_tick = true;
                        self.catch_up().await
                    }
                    Err(broadcast::error::RecvError::Closed) => Flow::Stop,
                },
                _ = progress.tick(), if self.request.progress_notify => {
                    if sent_since_tick {
                        sent_since_tick = false;
                        Flow::Continue
                    } else {
                        let revision = {
                            let store = self.service.machine.read();
                            // Under the read lock: if the feed is drained, every event up to the
                            // store's revision has been delivered.
                            if feed.is_empty() { store.revision() } else { self.next_revision - 1 }
                        };
                        self.send(WatchResponse { header: self.header(revision), ..Default::default() }).await
                    }
                }
            };
            if let Flow::Stop = flow {
                return;
            }
        }
    }

    /// Delivers history from `next_revision` up to the store's current revision. The history
    /// is read from a view of the store (taken in constant time, so apply never waits for a
    /// replay), ordered off the async runtime, and sent a message at a time: memory holds the
    /// order of the events and one message, never the whole history.
    async fn catch_up(&mut self) -> Flow {
        let spec = self.request.spec();
        let (current, view) = {
            let store = self.service.machine.read();
            let current = store.revision();
            if self.next_revision > current {
                return Flow::Continue;
            }
            (current, store.view())
        };
        let (from, with_prev) = (self.next_revision, self.request.prev_kv);
        let replay = tokio::task::spawn_blocking(move || view.replay(&spec, from, with_prev)).await;
        let mut replay = match replay {
            Ok(Ok(replay)) => replay,
            Ok(Err(e)) if e.code == ErrorCode::Compacted => {
                let compact_revision = self.service.machine.read().compact_revision();
                let response = WatchResponse {
                    header: self.header(current),
                    compact_revision,
                    ..Default::default()
                };
                let _ = self.send(response).await;
                return Flow::Stop;
            }
            Ok(Err(_)) | Err(_) => return Flow::Stop,
        };
        self.next_revision = current + 1;
        loop {
            let events = self.filter(replay.next_batch(MAX_EVENTS_PER_MESSAGE));
            if replay.is_empty() && events.is_empty() {
                return Flow::Continue;
            }
            if events.is_empty() {
                continue;
            }
            // The header carries the store's revision the replay was read at, as etcd's
            // catch-up does, not the last event's.
            let response = WatchResponse {
                header: self.header(current),
                events,
                ..Default::default()
            };
            if let Flow::Stop = self.send(response).await {
                return Flow::Stop;
            }
        }
    }

    /// Whether this watch delivers `event`.
    fn wants(&self, event: &Event) -> bool {
        strata_kv::spec_contains(&self.spec, &event.kv.key)
            && match event.kind {
                EventType::Put => !self.request.no_put,
                EventType::Delete => !self.request.no_delete,
            }
    }

    /// The events of a replay this watch delivers.
    fn filter(&self, events: Vec<Event>) -> Vec<Event> {
        events
            .into_iter()
            .filter(|event| self.wants(event))
            .map(|mut event| {
                if !self.request.prev_kv {
                    event.prev_kv = None;
                }
                event
            })
            .collect()
    }

    /// The events of the feed this watch delivers, copied: only those are, though every watch
    /// on the node sees every event.
    fn filter_shared(&self, events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .filter(|event| self.wants(event))
            .map(|event| Event {
                kind: event.kind,
                kv: event.kv.clone(),
                prev_kv: event.prev_kv.clone().filter(|_| self.request.prev_kv),
            })
            .collect()
    }

    async fn send(&self, response: WatchResponse) -> Flow {
        tokio::select! {
            _ = self.cancel.cancelled() => Flow::Stop,
            sent = self.tx.send(response) => if sent.is_ok() { Flow::Continue } else { Flow::Stop },
        }
    }
}
