//! The `etcdserverpb.Watch` service: one bidirectional stream carries many watches.
//!
//! Each stream is a [`WatchSession`], driven by the response stream itself: tonic polls it
//! for the next reply, and the session waits on the client's requests and on every watch's
//! backend receiver at once. No task is spawned, so nothing outlives the stream: when the
//! client goes away tonic drops the response stream, which drops every receiver, which
//! cancels every watch in the backend.
//!
//! Replies follow etcd 3.4:
//! - a create gets `created: true` with the watch id (client-chosen, or the next free id
//!   counting from 0 on this stream), before any event of that watch;
//! - a watch whose start revision is compacted gets `canceled: true` with
//!   `compact_revision` set;
//! - a create whose range end is not above its key gets `created` and `canceled` with watch
//!   id -1 and etcd's reason "mvcc: watcher range is empty";
//! - a cancel of a live watch gets `canceled: true`; of an unknown id, nothing;
//! - a progress request gets the current revision with watch id -1 (every watch). As in
//!   etcd 3.4, that revision may be ahead of events still queued for a watch of the stream
//!   (etcd fixed this in 3.5, etcd-io/etcd#15220); clients that need "everything up to R
//!   was delivered" should use `progress_notify` on the watch instead, which the backend
//!   sends in order with the events.
//!
//! A client that closes its sending side keeps its watches, as with etcd; the stream ends
//! once it also has no watch left.
//!
//! With access control on, the stream's caller is resolved again from its credential at each
//! create and whenever a user, role or token changes: a watch its caller may no longer read
//! (token expired or revoked, user deleted, role revoked) is canceled with the reason.

use crate::context::Context;
use crate::convert;
use crate::error::{self, Subject};
use crate::pb::etcdserverpb as pb;
use futures::stream::{self, BoxStream, StreamExt};
use std::collections::{HashMap, VecDeque};
use strata_auth::kv::Need;
use strata_auth::Caller;
use strata_proto::error::ErrorCode;
use strata_proto::kv::{WatchRequest, WatchResponse};
use tokio_stream::StreamMap;
use tonic::{Request, Response, Status, Streaming};

/// The watch id etcd uses for replies that belong to no single watch.
const NO_WATCH: i64 = -1;

/// Why a watch ended without the client asking, when the backend closed it.
const CLOSED_BY_SERVER: &str = "etcdserver: watch closed by the server; watch again";

/// etcd's reason for refusing a client-chosen id already in use on the stream.
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// etcd's reason for refusing a watch whose range end is not above its key.
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";

/// Serves the Watch service.
pub(crate) struct WatchService {
    ctx: Context,
}

impl WatchService {
    /// Returns the service over the shared context.
    pub(crate) fn new(ctx: Context) -> Self {
        WatchService { ctx }
    }
}

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = BoxStream<'static, Result<pb::WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.ctx.check_require_leader(request.metadata())?;
        let who = self.ctx.who(&request).await?;
        let requests = request.into_inner().boxed();
        Ok(Response::new(
            WatchSession::new(self.ctx.clone(), who, requests).into_stream(),
        ))
    }
}

/// What a watch's feed yields.
enum FeedItem {
    /// A reply for the client; `last` when the watch is over after it (compaction).
    Reply {
        /// The reply, with the watch id set.
        reply: pb::WatchResponse,
        /// True when the watch ends with this reply.
        last: bool,
    },
    /// The backend closed the watch without saying why (for example at shutdown).
    Closed,
}

/// What [`WatchSession::next`] waits for.
enum Woken {
    Stopped,
    Request(Option<Result<pb::WatchRequest, Status>>),
    AuthChanged,
    Watch(i64, FeedItem),
}

/// One watch stream: the client's requests, the live watches and replies waiting to go out.
pub(crate) struct WatchSession {
    /// Shared server state.
    ctx: Context,
    /// Who opened the stream, as last resolved; each watch is checked against its grants.
    who: Caller,
    /// What each live watch needs, to check it again when the auth records change.
    needs: HashMap<i64, Vec<Need>>,
    /// Moves when the auth records change (`None` without access control).
    auth_changes: Option<tokio::sync::watch::Receiver<i64>>,
    /// The client's requests; `None` once the client closed its sending side.
    requests: Option<BoxStream<'static, Result<pb::WatchRequest, Status>>>,
    /// Live watches by id, each its backend receiver turned into replies.
    watches: StreamMap<i64, BoxStream<'static, FeedItem>>,
    /// The next automatically assigned watch id.
    next_id: i64,
    /// Control replies (created, canceled, progress) not yet sent, in order.
    replies: VecDeque<pb::WatchResponse>,
    /// Set once the stream has ended with an error; nothing more is sent.
    finished: bool,
}

impl WatchSession {
    /// Starts a session over the client's request stream.
    pub(crate) fn new(
        ctx: Context,
        who: Caller,
        requests: BoxStream<'static, Result<pb::WatchRequest, Status>>,
    ) -> Self {
        let auth_changes = ctx.auth.as_ref().map(|auth| {
            let mut changes = auth.gate.changes();
            // `who` was resolved before this subscription: a change in between counts.
            changes.mark_changed();
            changes
        });
        WatchSession {
            ctx,
            who,
            needs: HashMap::new(),
            auth_changes,
            requests: Some(requests),
            watches: StreamMap::new(),
            next_id: 0,
            replies: VecDeque::new(),
            finished: false,
        }
    }

    /// Turns the session into the response stream tonic sends.
    pub(crate) fn into_stream(self) -> BoxStream<'static, Result<pb::WatchResponse, Status>> {
        stream::unfold(self, |mut session| async move {
            let item = session.next().await?;
            Some((item, session))
        })
        .boxed()
    }

    /// Returns the next reply, or `None` when the stream is over.
    async fn next(&mut self) -> Option<Result<pb::WatchResponse, Status>> {
        loop {
            if self.finished {
                return None;
            }
            if let Some(reply) = self.replies.pop_front() {
                return Some(Ok(reply));
            }
            if self.requests.is_none() && self.watches.is_empty() {
                return None;
            }
            // What woke the session, decided while its parts are borrowed separately (no
            // clone of the stop token per reply: with many watch streams on a node, every
            // clone and drop locks the token tree they share), then acted upon.
            let woken = tokio::select! {
                _ = self.ctx.stop.cancelled() => Woken::Stopped,
                request = next_request(&mut self.requests) => Woken::Request(request),
                () = auth_changed(&mut self.auth_changes) => Woken::AuthChanged,
                Some((id, item)) = self.watches.next() => Woken::Watch(id, item),
            };
            match woken {
                Woken::Stopped => return Some(Err(self.finish(error::stopped()))),
                Woken::Request(request) => match request {
                    Some(Ok(request)) => self.handle(request).await,
                    Some(Err(status)) => {
                        let status = error::oversized_message(&status).unwrap_or(status);
                        return Some(Err(self.finish(status)));
                    }
                    None => self.requests = None,
                },
                Woken::AuthChanged => self.recheck_watches(),
                Woken::Watch(id, item) => match item {
                    FeedItem::Reply { reply, last } => {
                        if last {
                            self.drop_watch(id);
                        }
                        return Some(Ok(reply));
                    }
                    FeedItem::Closed => {
                        self.drop_watch(id);
                        let reply = self.canceled(id, Some(CLOSED_BY_SERVER.to_string()));
                        return Some(Ok(reply));
                    }
                },
            }
        }
    }

    fn drop_watch(&mut self, id: i64) -> bool {
        self.needs.remove(&id);
        self.watches.remove(&id).is_some()
    }

    /// Resolves the caller again; a watch it may no longer read is canceled with the reason.
    fn recheck_watches(&mut self) {
        let Some(auth) = &self.ctx.auth else {
            return;
        };
        let mut ids: Vec<i64> = self.needs.keys().copied().collect();
        ids.sort_unstable();
        let refused = match auth.gate.recheck(&self.who) {
            Ok(who) => {
                self.who = who;
                ids.retain(|id| self.ctx.allow(&self.who, &self.needs[id], "watch").is_err());
                permission_reason(&error::permission_denied())
            }
            Err(_) => permission_reason(&error::invalid_auth_token()),
        };
        for id in ids {
            self.drop_watch(id);
            let reply = self.canceled(id, Some(refused.clone()));
            self.replies.push_back(reply);
        }
    }

    /// Ends the session with `status`, dropping every watch.
    fn finish(&mut self, status: Status) -> Status {
        self.finished = true;
        self.requests = None;
        self.watches.clear();
        self.needs.clear();
        self.replies.clear();
        status
    }

    async fn handle(&mut self, request: pb::WatchRequest) {
        use pb::watch_request::RequestUnion;
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => self.cancel(cancel.watch_id),
            Some(RequestUnion::ProgressRequest(_)) => {
                self.replies.push_back(pb::WatchResponse {
                    header: Some(self.ctx.current_header()),
                    watch_id: NO_WATCH,
                    ..Default::default()
                });
            }
            // etcd ignores requests it does not understand rather than ending the stream.
            None => {}
        }
    }

    /// Cancels a live watch and confirms it; an unknown id gets no reply, as in etcd.
    fn cancel(&mut self, id: i64) {
        if !self.drop_watch(id) {
            return;
        }
        let reply = self.canceled(id, None);
        self.replies.push_back(reply);
    }

    /// Picks the id for a new watch: the client's, or the next free one.
    fn assign_id(&mut self, requested: i64) -> Option<i64> {
        if requested != 0 {
            return (!self.watches.contains_key(&requested)).then_some(requested);
        }
        while self.watches.contains_key(&self.next_id) {
            self.next_id += 1;
        }
        let id = self.next_id;
        self.next_id += 1;
        Some(id)
    }

    async fn create(&mut self, create: pb::WatchCreateRequest) {
        // etcd refuses such a watch (`watchStream.Watch`) before it takes an id; the backend
        // would refuse it too, but with its own reason.
        if convert::is_inverted(&create.key, &create.range_end) {
            self.refuse(EMPTY_RANGE.to_string());
            return;
        }
        let Some(id) = self.assign_id(create.watch_id) else {
            self.refuse(DUPLICATE_ID.to_string());
            return;
        };
        let with_prev_kv = create.prev_kv;
        let request = watch_request(create);
        let needs = strata_auth::kv::watch(&request);
        // As etcd: a watch the caller may not read is created and canceled at once, with the
        // permission error as the reason; the stream stays open. The caller is resolved again
        // first: its token may have expired since the stream opened.
        let allowed = match self.ctx.auth.as_ref().map(|a| a.gate.recheck(&self.who)) {
            Some(Err(_)) => Err(error::invalid_auth_token()),
            Some(Ok(who)) => {
                self.who = who;
                self.ctx.allow(&self.who, &needs, "watch")
            }
            None => self.ctx.allow(&self.who, &needs, "watch"),
        };
        if let Err(status) = allowed {
            self.replies
                .push_back(self.created(id, self.ctx.backend.revision()));
            let reason = permission_reason(&status);
            self.replies.push_back(self.canceled(id, Some(reason)));
            return;
        }
        let mut receiver = match self.ctx.backend.watch(request, self.ctx.stop.child_token()) {
            Ok(receiver) => receiver,
            Err(e) if e.code == ErrorCode::Compacted => {
                // etcd accepts the watch, then cancels it for compaction.
                let created = self.created(id, self.ctx.backend.revision());
                self.replies.push_back(created);
                let compacted = self.compacted(id, self.ctx.backend.compact_revision());
                self.replies.push_back(compacted);
                return;
            }
            Err(e) => {
                let status = self.ctx.status(e, Subject::Key);
                self.refuse(status.message().to_string());
                return;
            }
        };
        // The backend's first message confirms the watch and gives its start revision;
        // waiting for it keeps `created` replies in the order of the create requests.
        let first = receiver.next().await;
        let Some(first) = first else {
            let created = self.created(id, self.ctx.backend.revision());
            self.replies.push_back(created);
            let closed = self.canceled(id, Some(CLOSED_BY_SERVER.to_string()));
            self.replies.push_back(closed);
            return;
        };
        let pending = if first.created {
            let created = self.created(id, first.header.revision);
            self.replies.push_back(created);
            (!first.events.is_empty() || first.compact_revision > 0).then_some(first)
        } else {
            let created = self.created(id, self.ctx.backend.revision());
            self.replies.push_back(created);
            Some(first)
        };
        if let Some(message) = pending {
            let (reply, last) = watch_reply(&self.ctx, id, with_prev_kv, message);
            self.replies.push_back(reply);
            if last {
                return;
            }
        }
        self.watches
            .insert(id, feed(self.ctx.clone(), id, with_prev_kv, receiver));
        self.needs.insert(id, needs);
    }

    fn created(&self, id: i64, revision: i64) -> pb::WatchResponse {
        pb::WatchResponse {
            header: Some(self.ctx.header(revision)),
            watch_id: id,
            created: true,
            ..Default::default()
        }
    }

    fn canceled(&self, id: i64, reason: Option<String>) -> pb::WatchResponse {
        pb::WatchResponse {
            header: Some(self.ctx.current_header()),
            watch_id: id,
            canceled: true,
            cancel_reason: reason.unwrap_or_default(),
            ..Default::default()
        }
    }

    fn compacted(&self, id: i64, compact_revision: i64) -> pb::WatchResponse {
        pb::WatchResponse {
            header: Some(self.ctx.current_header()),
            watch_id: id,
            canceled: true,
            compact_revision,
            cancel_reason: error::compacted().message().to_string(),
            ..Default::default()
        }
    }

    /// Answers a create that could not start: etcd replies `created` and `canceled` with
    /// watch id -1 and the reason.
    fn refuse(&mut self, reason: String) {
        self.replies.push_back(pb::WatchResponse {
            header: Some(self.ctx.current_header()),
            watch_id: NO_WATCH,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        });
    }
}

/// A canceled watch's reason for a refused permission or credential, as etcd words it.
fn permission_reason(status: &Status) -> String {
    format!(
        "rpc error: code = {:?} desc = {}",
        status.code(),
        status.message()
    )
}

/// Resolves when the auth records change; never without access control (or once the gate
/// is gone).
async fn auth_changed(changes: &mut Option<tokio::sync::watch::Receiver<i64>>) {
    match changes {
        Some(rx) => {
            if rx.changed().await.is_err() {
                *changes = None;
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending().await,
    }
}

/// Waits for the client's next request; never resolves once the client stopped sending.
///
/// Cancel safety: cancel safe (it only polls the stream).
async fn next_request(
    requests: &mut Option<BoxStream<'static, Result<pb::WatchRequest, Status>>>,
) -> Option<Result<pb::WatchRequest, Status>> {
    match requests {
        Some(requests) => requests.next().await,
        None => std::future::pending().await,
    }
}

/// Converts a create request to the backend's watch request.
fn watch_request(create: pb::WatchCreateRequest) -> WatchRequest {
    use pb::watch_create_request::FilterType;
    let mut request = WatchRequest {
        key: create.key,
        range_end: create.range_end,
        prefix: false,
        start_revision: create.start_revision,
        prev_kv: create.prev_kv,
        progress_notify: create.progress_notify,
        no_put: false,
        no_delete: false,
    };
    for filter in create.filters {
        match FilterType::try_from(filter) {
            Ok(FilterType::Noput) => request.no_put = true,
            Ok(FilterType::Nodelete) => request.no_delete = true,
            // etcd drops filters it does not know.
            Err(_) => {}
        }
    }
    request
}

/// Turns a backend message into the client's reply; true when the watch ends with it.
fn watch_reply(
    ctx: &Context,
    id: i64,
    with_prev_kv: bool,
    message: WatchResponse,
) -> (pb::WatchResponse, bool) {
    let header = Some(ctx.header_from(&message.header));
    if message.compact_revision > 0 {
        let reply = pb::WatchResponse {
            header,
            watch_id: id,
            canceled: true,
            compact_revision: message.compact_revision,
            cancel_reason: error::compacted().message().to_string(),
            ..Default::default()
        };
        return (reply, true);
    }
    let events = message
        .events
        .into_iter()
        .map(|event| convert::event(event, with_prev_kv))
        .collect();
    let reply = pb::WatchResponse {
        header,
        watch_id: id,
        events,
        ..Default::default()
    };
    (reply, false)
}

/// Turns a watch's backend receiver into replies, ending with [`FeedItem::Closed`].
fn feed(
    ctx: Context,
    id: i64,
    with_prev_kv: bool,
    receiver: strata_store::WatchStream,
) -> BoxStream<'static, FeedItem> {
    receiver
        .map(move |message| {
            let (reply, last) = watch_reply(&ctx, id, with_prev_kv, message);
            FeedItem::Reply { reply, last }
        })
        .chain(stream::once(async { FeedItem::Closed }))
        .boxed()
}
