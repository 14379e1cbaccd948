//! Watches: a stream per watch that replays history from the requested revision, then follows
//! the applied-events feed, delivering each event exactly once in revision order. A watch has
//! no task of its own: its consumer (an etcd watch stream, an SSE response, a view) polls it,
//! so a delivered event wakes one task, not two.
//!
//! Gap-freedom: the watch subscribes to the feed *before* reading history, and apply publishes
//! to the feed under the store's write lock. Every event is therefore in the history read, in
//! the feed, or both; `next_revision` drops the duplicates. When the watch falls behind the
//! feed (or a snapshot replaces the state) it re-reads history from `next_revision`.

use crate::kv_machine::Applied;
use crate::service::KvService;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use strata_kv::Replay;
use strata_proto::error::{ApiError, ErrorCode};
use strata_proto::kv::{Event, EventType, RangeSpec, ResponseHeader, WatchRequest, WatchResponse};
use strata_store::WatchStream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Most events in one message when replaying history.
const MAX_EVENTS_PER_MESSAGE: usize = 1000;

/// Opens a watch and returns the stream of its messages. The first message has `created`.
/// The stream ends when `cancel` fires, the node stops, or a compaction passed its start.
pub fn open(
    service: Arc<KvService>,
    request: WatchRequest,
    cancel: CancellationToken,
) -> Result<WatchStream, ApiError> {
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
    let progress_interval = service.config.kv.watch_progress_interval.0;
    service.metrics.watchers.inc();
    let watcher = Watcher {
        _open: Open(service.metrics.watchers.clone()),
        spec: request.spec(),
        // Subscribed before any history is read (gap-freedom, above).
        feed: service.machine.subscribe(),
        progress: None,
        service,
        request,
        cancel,
        next_revision: 0,
        progress_interval,
        phase: Phase::Start,
        sent_since_tick: false,
    };
    // Fused: a consumer that polls again after the end gets the end again.
    Ok(futures::stream::unfold(watcher, |mut watcher| async move {
        let message = watcher.next().await?;
        Some((message, watcher))
    })
    .fuse()
    .boxed())
}

/// Counts an open watch in `strata_kv_watchers` until it is dropped.
struct Open(prometheus::IntGauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct Watcher {
    service: Arc<KvService>,
    request: WatchRequest,
    /// The keys `request` watches, resolved once.
    spec: RangeSpec,
    cancel: CancellationToken,
    /// The applied-events feed.
    feed: broadcast::Receiver<Applied>,
    /// Progress notifications' clock, started when the watch first follows the feed (with
    /// `progress_notify` only).
    progress: Option<tokio::time::Interval>,
    /// The smallest revision not yet delivered.
    next_revision: i64,
    progress_interval: Duration,
    phase: Phase,
    /// Whether anything was sent since the last progress tick.
    sent_since_tick: bool,
    /// Held for its `Drop`.
    _open: Open,
}

/// Where a watch is.
enum Phase {
    /// The next message is `created`.
    Start,
    /// History from `next_revision` is to be read (again).
    CatchUp,
    /// Replaying history read at revision `current`, a message at a time.
    Replaying { replay: Box<Replay>, current: i64 },
    /// Following the feed.
    Following,
    /// Over: nothing more is sent.
    Done,
}

impl Watcher {
    fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            revision,
            raft_term: 0,
            member_id: self.service.id,
        }
    }

    /// A message carrying `events` (none: a progress notification) at `revision`.
    fn message(&self, revision: i64, events: Vec<Event>) -> WatchResponse {
        WatchResponse {
            header: self.header(revision),
            events,
            ..Default::default()
        }
    }

    /// The next message, or `None` once the watch is over.
    async fn next(&mut self) -> Option<WatchResponse> {
        loop {
            if self.cancel.is_cancelled() {
                self.phase = Phase::Done;
            }
            match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Done => return None,
                Phase::Start => {
                    let current = self.service.machine.read().revision();
                    self.next_revision = if self.request.start_revision > 0 {
                        self.request.start_revision
                    } else {
                        current + 1
                    };
                    self.phase = Phase::CatchUp;
                    return Some(WatchResponse {
                        created: true,
                        ..self.message(current, Vec::new())
                    });
                }
                Phase::CatchUp => {
                    // The history is read from a view of the store (taken in constant time, so
                    // apply never waits for a replay) and ordered off the async runtime; memory
                    // holds the order of the events and one message, never the whole history.
                    let (current, view) = {
                        let store = self.service.machine.read();
                        (store.revision(), store.view())
                    };
                    if self.next_revision > current {
                        self.phase = Phase::Following;
                        continue;
                    }
                    let (spec, from, with_prev) =
                        (self.spec.clone(), self.next_revision, self.request.prev_kv);
                    let replay = tokio::select! {
                        _ = self.cancel.cancelled() => return None,
                        replay = tokio::task::spawn_blocking(move || view.replay(&spec, from, with_prev)) => replay,
                    };
                    match replay {
                        Ok(Ok(replay)) => {
                            self.next_revision = current + 1;
                            self.phase = Phase::Replaying {
                                replay: Box::new(replay),
                                current,
                            };
                        }
                        Ok(Err(e)) if e.code == ErrorCode::Compacted => {
                            let compact_revision = self.service.machine.read().compact_revision();
                            return Some(WatchResponse {
                                compact_revision,
                                ..self.message(current, Vec::new())
                            });
                        }
                        Ok(Err(_)) | Err(_) => return None,
                    }
                }
                Phase::Replaying {
                    mut replay,
                    current,
                } => {
                    let events = self.filter(replay.next_batch(MAX_EVENTS_PER_MESSAGE));
                    self.phase = if replay.is_empty() {
                        Phase::Following
                    } else {
                        Phase::Replaying { replay, current }
                    };
                    if !events.is_empty() {
                        self.sent_since_tick = true;
                        // The header carries the store's revision the replay was read at, as
                        // etcd's catch-up does, not the last event's.
                        return Some(self.message(current, events));
                    }
                }
                Phase::Following => {
                    if self.progress.is_none() && self.request.progress_notify {
                        let period = self.progress_interval;
                        let mut progress =
                            tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        self.progress = Some(progress);
                    }
                    self.phase = Phase::Following;
                    let woken = tokio::select! {
                        _ = self.cancel.cancelled() => return None,
                        message = self.feed.recv() => Ok(message),
                        _ = tick(&mut self.progress) => Err(()),
                    };
                    match woken {
                        Ok(Ok(Applied::Events { revision, events })) => {
                            if revision < self.next_revision {
                                continue;
                            }
                            self.next_revision = revision + 1;
                            let events = self.filter_shared(&events);
                            if !events.is_empty() {
                                self.sent_since_tick = true;
                                return Some(self.message(revision, events));
                            }
                        }
                        Ok(Ok(Applied::Reset) | Err(broadcast::error::RecvError::Lagged(_))) => {
                            self.service.metrics.watch_resyncs.inc();
                            self.sent_since_tick = true;
                            self.phase = Phase::CatchUp;
                        }
                        Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                        Err(()) => {
                            let revision = {
                                let store = self.service.machine.read();
                                // Under the read lock: if the feed is drained, every event up
                                // to the store's revision has been delivered.
                                if self.feed.is_empty() {
                                    store.revision()
                                } else {
                                    self.next_revision - 1
                                }
                            };
                            if !std::mem::take(&mut self.sent_since_tick) {
                                return Some(self.message(revision, Vec::new()));
                            }
                        }
                    }
                }
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
}

/// The next progress tick, or never without progress notifications.
async fn tick(progress: &mut Option<tokio::time::Interval>) {
    match progress {
        Some(progress) => {
            progress.tick().await;
        }
        None => std::future::pending().await,
    }
}
