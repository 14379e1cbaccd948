//! HTTP/1.1 connections to upstream members, each used by one request at a time and driven by
//! that request's own task.
//!
//! hyper-util's pooled client runs every connection in a task of its own: a request crosses a
//! channel to that task, and the answer and each piece of its body cross back, so each proxied
//! request wakes two tasks and hops between them both ways (issue 13's profile). Here a request
//! checks a connection out of [`Http1Pool`] (or opens one), polls hyper's `Connection` future
//! itself while it waits for the answer's head, and hands the answer's body a [`PooledBody`]
//! that keeps polling the connection and puts it back when the body ends on a connection that
//! may be reused. One pool serves every worker thread; a `std::sync::Mutex` guards the idle
//! lists (it is never held across an `.await`, nor while a connection is polled or closed).
//!
//! An idle connection is polled by nobody, so an upstream that closes it is noticed when it is
//! next checked out: the check-out polls it once (a read only when the socket became readable)
//! and drops it if it ended. One that the upstream closes just as a request is written to it
//! (the keep-alive race) fails that exchange: a request hyper had not started writing is sent
//! on another connection, and an idempotent request without a body on a connection idle for at
//! least [`Settings::replay_after_idle`] is sent once more on a new connection, without using up
//! one of the route's retries (as nginx does for a cached keep-alive connection). A sweep task
//! closes connections idle longer than the idle timeout and those their member closed.
//!
//! **Invariant:** a connection is in an idle list only when no request uses it, hyper's
//! dispatcher is idle (the last answer was read to its end) and it accepts a new request.

use crate::metrics::UpstreamMetrics;
use crate::upstream::Counted;
use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper::{Request, Response};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How the pool opens, keeps and reuses connections.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Longest wait for a member to accept a connection.
    pub connect_timeout: Duration,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
    /// Idle connections kept per member; more are closed when their answers end.
    pub max_idle_per_member: usize,
    /// An idempotent request without a body sent on a connection idle at least this long is
    /// sent again on a new connection when the exchange breaks before an answer: the member
    /// may have closed the connection as the request was being written.
    pub replay_after_idle: Duration,
}

/// Why a request got no answer from a member.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened (refused, unreachable, no address, connect timeout).
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The exchange broke before the answer's head arrived (reset, closed, malformed answer,
    /// or the request's body failed).
    Broken(Box<dyn std::error::Error + Send + Sync>),
}

impl SendError {
    /// True when no connection to the member could be opened (so the request never reached it).
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(error) => write!(f, "connect: {error}"),
            SendError::Broken(error) => write!(f, "exchange: {error}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(error) | SendError::Broken(error) => Some(error.as_ref()),
        }
    }
}

/// The HTTP/1.1 connections of one upstream group to its members, shared by every request.
#[derive(Clone)]
pub struct Http1Pool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Pool")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

/// What the pool's handle, the answers' bodies and the sweep task share.
struct Shared {
    /// Idle connections by member address, the most recently used last (taken first: it is
    /// the least likely to have been closed by its member, and the others can expire).
    idle: Mutex<IdleLists>,
    /// As configured.
    settings: Settings,
    /// Connect time, connections opened and open.
    metrics: Arc<UpstreamMetrics>,
    /// hyper's HTTP/1.1 client options (its defaults, as the pooled client used).
    builder: http1::Builder,
    /// Where connections that switched protocols (`Upgrade`) run until the upgrade is done.
    tracker: TaskTracker,
}

/// Idle connections by member address. FNV-1a: the lists are looked up by member address
/// twice per request, and the keys come from the table or the registry, never from clients,
/// so SipHash's protection against chosen keys buys nothing here.
type IdleLists = HashMap<Arc<str>, Vec<Idle>, fnv::FnvBuildHasher>;

/// An idle connection and when it went idle.
struct Idle {
    conn: Conn,
    since: Instant,
}

/// One connection to a member: hyper's request handle and the connection future that does
/// its reading and writing.
struct Conn {
    /// The member's address, the key of its idle list.
    member: Arc<str>,
    sender: http1::SendRequest<Body>,
    /// `None` once the connection ended, so it is never polled again. Boxed (once per
    /// connection): hyper's dispatcher is large, and a `Conn` moves in and out of the idle
    /// lists and into the answer's body on every request.
    connection: Option<Pin<Box<http1::Connection<Counted, Body>>>>,
}

impl Conn {
    /// Polls the connection with `cx` (writing the request, reading the answer); false once
    /// it has ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(connection) = &mut self.connection {
            if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                if let Err(error) = result {
                    tracing::trace!(member = %self.member, %error, "upstream connection ended");
                }
                // Dropping it drops whatever the dispatcher still held: a pending answer or
                // body learns that the connection is gone.
                self.connection = None;
            }
        }
        self.connection.is_some()
    }

    /// Polls a connection that no request waits on (going idle, or checked out): no waker is
    /// kept, and tokio's cooperative budget cannot make it skip its work. True when it is
    /// open and ready for a request.
    fn settle(&mut self) -> bool {
        self.drive_quietly() && self.sender.is_ready()
    }

    /// Polls the connection without keeping a waker; false once it has ended.
    fn drive_quietly(&mut self) -> bool {
        let alive = poll_quietly(&mut std::future::poll_fn(|cx| Poll::Ready(self.drive(cx))));
        matches!(alive, Poll::Ready(true))
    }

    /// Polls the connection until `outcome` (the answer, or the body's next piece) is ready:
    /// first without a waker, and only when that is not enough, again with the task's.
    ///
    /// hyper's body channel wakes the waker its sender last registered whenever a piece is
    /// taken from it. Had the connection been polled with this task's waker while it passed
    /// the piece on, taking the piece would wake this very task: a wasted poll of the whole
    /// client connection on every request. The second poll makes every wait of the
    /// connection register this task's waker, so no wake-up is lost.
    fn poll_until<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut outcome: impl FnMut() -> Poll<T>,
    ) -> Poll<T> {
        self.drive_quietly();
        if let Poll::Ready(ready) = outcome() {
            return Poll::Ready(ready);
        }
        self.drive(cx);
        outcome()
    }
}

/// Polls `future` once with a waker that does nothing, outside tokio's cooperative budget.
///
/// Sound only where the caller polls again itself after whatever could complete `future`:
/// the request's answer and body complete only when the connection is polled, and every
/// poll of the connection (with the task's real waker) is followed by one of these.
fn poll_quietly<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    pin!(tokio::task::coop::unconstrained(future)).poll(&mut cx)
}

/// How often the sweep task looks for expired and closed idle connections.
fn sweep_interval(idle_timeout: Duration) -> Duration {
    (idle_timeout / 3).clamp(Duration::from_millis(100), Duration::from_secs(30))
}

impl Http1Pool {
    /// An empty pool; `tracker` runs the connections of upgraded exchanges.
    pub fn new(settings: Settings, metrics: Arc<UpstreamMetrics>, tracker: TaskTracker) -> Self {
        Http1Pool {
            shared: Arc::new(Shared {
                idle: Mutex::new(HashMap::default()),
                settings,
                metrics,
                builder: http1::Builder::new(),
                tracker,
            }),
        }
    }

    /// Closes idle connections that expired or that their member closed, until `stop` fires
    /// or the pool is gone; then closes the idle ones left.
    ///
    /// Cancel safety: only waits on the timer and `stop`.
    pub fn sweep(&self, stop: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
        let shared = Arc::downgrade(&self.shared);
        let every = sweep_interval(self.shared.settings.idle_timeout);
        async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(every) => {}
                }
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let closed = shared.sweep_idle();
                drop(closed);
            }
            if let Some(shared) = Weak::upgrade(&shared) {
                let idle = std::mem::take(&mut *shared.lock_idle());
                drop(idle);
            }
        }
    }

    /// Idle connections to `member` now (for tests and views).
    pub fn idle_count(&self, member: &str) -> usize {
        self.shared.lock_idle().get(member).map_or(0, Vec::len)
    }

    /// Sends `request` (origin-form URI) to `member` (`HOST:PORT`) and returns the answer
    /// once its head arrived; its body keeps the connection and returns it to the pool when it
    /// ends. `replayable`: the request has no body and may be sent twice (idempotent).
    ///
    /// Cancel safety: dropping the future closes the connection it was using.
    pub async fn send(
        &self,
        member: &str,
        request: Request<Body>,
        replayable: bool,
    ) -> Result<Response<Body>, SendError> {
        let mut request = request;
        prepare(&mut request, member);
        let mut fresh_only = false;
        loop {
            let checked_out = if fresh_only {
                None
            } else {
                self.shared.checkout(member)
            };
            let (mut conn, idle_for) = match checked_out {
                Some((conn, idle_for)) => (conn, Some(idle_for)),
                // Boxed: opening is rare, and the request's future stays small without it.
                None => (Box::pin(self.shared.connect(member)).await?, None),
            };
            let replay = match idle_for {
                Some(idle_for)
                    if replayable && idle_for >= self.shared.settings.replay_after_idle =>
                {
                    Some(Box::new(copy_head(&request)))
                }
                _ => None,
            };
            match exchange(&mut conn, request).await {
                Ok(response) => return Ok(self.shared.clone().wrap(conn, response)),
                Err(mut failed) => {
                    drop(conn);
                    let reused = idle_for.is_some();
                    match (failed.take_message(), replay) {
                        // Never written: safe to send on another connection, any request.
                        (Some(unsent), _) if reused => {
                            tracing::debug!(%member, "pooled connection closed before the request was written; using another");
                            request = unsent;
                        }
                        (_, Some(copy)) => {
                            tracing::debug!(%member, error = %failed.error(), "pooled connection broke before an answer; sending again on a new connection");
                            request = *copy;
                            fresh_only = true;
                        }
                        _ => return Err(SendError::Broken(Box::new(failed.into_error()))),
                    }
                }
            }
        }
    }

    /// Sends a request that asks to switch protocols (`Upgrade`): its connection runs in a
    /// task of its own until the switch (or the end), and never goes back to the pool.
    ///
    /// Cancel safety: dropping the future drops the request; the connection's task ends.
    pub async fn send_upgrade(
        &self,
        member: &str,
        request: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        let mut request = request;
        prepare(&mut request, member);
        let conn = match self.shared.checkout(member) {
            Some((conn, _)) => conn,
            None => Box::pin(self.shared.connect(member)).await?,
        };
        let Conn {
            mut sender,
            connection,
            ..
        } = conn;
        let Some(connection) = connection else {
            return Err(SendError::Broken("the connection closed".into()));
        };
        self.shared.tracker.spawn(async move {
            if let Err(error) = Pin::into_inner(connection).with_upgrades().await {
                tracing::debug!(%error, "upgraded upstream connection ended with an error");
            }
        });
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| SendError::Broken(Box::new(error)))?;
        Ok(response.map(Body::new))
    }
}

impl Shared {
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, IdleLists> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection to `member` that is still open and ready, and
    /// how long it was idle. Expired and closed ones met on the way are closed.
    fn checkout(&self, member: &str) -> Option<(Conn, Duration)> {
        loop {
            let idle = self.lock_idle().get_mut(member)?.pop()?;
            let idle_for = idle.since.elapsed();
            let mut conn = idle.conn;
            if idle_for < self.settings.idle_timeout && conn.settle() {
                return Some((conn, idle_for));
            }
        }
    }

    /// Puts `conn` back when its answer ended and it may be reused; closes it otherwise.
    fn check_in(&self, mut conn: Conn) {
        // Usually the poll that delivered the body's end already left hyper's dispatcher idle
        // and asking for the next request (and it was a quiet one, see `Conn::poll_until`);
        // otherwise one more poll gets it there, or finds the connection closed.
        let ready = conn.connection.is_some() && conn.sender.is_ready();
        if !ready && !conn.settle() {
            return;
        }
        let since = Instant::now();
        let surplus = {
            let mut idle = self.lock_idle();
            let list = match idle.get_mut(&*conn.member) {
                Some(list) => list,
                None => idle.entry(conn.member.clone()).or_default(),
            };
            if list.len() < self.settings.max_idle_per_member {
                list.push(Idle { conn, since });
                None
            } else {
                Some(conn)
            }
        };
        // Closed outside the lock.
        drop(surplus);
    }

    /// Takes out the idle connections that expired or were closed by their member, and the
    /// lists of members with none left; returns them to be closed outside the lock.
    fn sweep_idle(&self) -> Vec<Idle> {
        let now = Instant::now();
        let mut closed = Vec::new();
        let mut idle = self.lock_idle();
        for list in idle.values_mut() {
            let mut index = 0;
            while index < list.len() {
                let entry = &mut list[index];
                let expired =
                    now.saturating_duration_since(entry.since) >= self.settings.idle_timeout;
                if expired || !entry.conn.settle() {
                    closed.push(list.swap_remove(index));
                } else {
                    index += 1;
                }
            }
            // Oldest first again for the next checkouts (swap_remove moved the last entry).
            list.sort_by_key(|entry| entry.since);
        }
        idle.retain(|_, list| !list.is_empty());
        closed
    }

    /// Opens a connection to `member`, counting it.
    async fn connect(&self, member: &str) -> Result<Conn, SendError> {
        let started = Instant::now();
        let stream = match tokio::time::timeout(self.settings.connect_timeout, open(member)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(SendError::Connect(Box::new(error))),
            Err(_) => {
                return Err(SendError::Connect(
                    format!(
                        "no connection within the connect timeout ({:?})",
                        self.settings.connect_timeout
                    )
                    .into(),
                ))
            }
        };
        let _ = stream.set_nodelay(true);
        self.metrics
            .connect_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.opened.inc();
        let io = Counted::new(hyper_util::rt::TokioIo::new(stream), &self.metrics.open);
        let (sender, connection) = self
            .builder
            .handshake(io)
            .await
            .map_err(|error| SendError::Broken(Box::new(error)))?;
        Ok(Conn {
            member: Arc::from(member),
            sender,
            connection: Some(Box::pin(connection)),
        })
    }

    /// The answer with a body that drives `conn` and checks it in at its end.
    fn wrap(self: Arc<Self>, conn: Conn, response: Response<Incoming>) -> Response<Body> {
        let (parts, body) = response.into_parts();
        let mut body = PooledBody {
            body,
            conn: Some(conn),
            pool: self,
        };
        // An answer without a body (HEAD, 204, 304, `Content-Length: 0`) is never polled.
        body.check_in_if_ended();
        Response::from_parts(parts, Body::new(body))
    }
}

/// Sends `request` on `conn`, polling the connection in this task until the answer's head
/// arrives.
async fn exchange(
    conn: &mut Conn,
    request: Request<Body>,
) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>> {
    let mut answer = pin!(conn.sender.try_send_request(request));
    let mut first = true;
    std::future::poll_fn(|cx| {
        // Quietly: the answer arrives only from the connection, which `poll_until` polls with
        // this task's waker, so a wake from the answer's channel would be a wasted poll.
        if std::mem::take(&mut first) {
            // Writes the request; there is no answer to take yet.
            conn.drive(cx);
            return poll_quietly(&mut answer.as_mut());
        }
        conn.poll_until(cx, || poll_quietly(&mut answer.as_mut()))
    })
    .await
}

/// Opens a TCP connection to `HOST:PORT`, trying each address the host resolves to.
async fn open(member: &str) -> std::io::Result<tokio::net::TcpStream> {
    if let Ok(address) = member.parse::<SocketAddr>() {
        return tokio::net::TcpStream::connect(address).await;
    }
    let mut last = None;
    for address in tokio::net::lookup_host(member).await? {
        match tokio::net::TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{member} resolves to no address"),
        )
    }))
}

/// What hyper-util's pooled client did to a request for an HTTP/1.1 connection: a `Host`
/// header naming the member when the client sent none (an HTTP/2 client names the host in
/// the URI), and authority-form for `CONNECT`.
fn prepare(request: &mut Request<Body>, member: &str) {
    if !request.headers().contains_key(hyper::header::HOST) {
        let host = member.strip_suffix(":80").unwrap_or(member);
        if let Ok(value) = hyper::header::HeaderValue::from_str(host) {
            request.headers_mut().insert(hyper::header::HOST, value);
        }
    }
    if request.method() == hyper::Method::CONNECT {
        if let Ok(uri) = hyper::Uri::try_from(member) {
            *request.uri_mut() = uri;
        }
    }
}

/// A copy of a request without a body, to send again.
fn copy_head(request: &Request<Body>) -> Request<Body> {
    let mut copy = Request::new(Body::empty());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// An answer's body that polls its connection while it is read, and checks the connection
/// back in when it ends.
pub struct PooledBody {
    body: Incoming,
    /// `None` once checked in or given up.
    conn: Option<Conn>,
    pool: Arc<Shared>,
}

impl PooledBody {
    fn check_in_if_ended(&mut self) {
        if hyper::body::Body::is_end_stream(&self.body) {
            if let Some(conn) = self.conn.take() {
                self.pool.check_in(conn);
            }
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.conn {
            // Quietly, as in `exchange`: the body's pieces come from the connection.
            Some(conn) => {
                let body = &mut this.body;
                conn.poll_until(cx, || {
                    poll_quietly(&mut std::future::poll_fn(|cx| {
                        Pin::new(&mut *body).poll_frame(cx)
                    }))
                })
            }
            // The connection is back in the pool or gone: the body has ended or holds what
            // it received.
            None => Pin::new(&mut this.body).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(_))) => this.check_in_if_ended(),
            Poll::Ready(None) => {
                if let Some(conn) = this.conn.take() {
                    this.pool.check_in(conn);
                }
            }
            // A broken body's connection is not reused.
            Poll::Ready(Some(Err(_))) => this.conn = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.body)
    }

    fn size_hint(&self) -> SizeHint {
        hyper::body::Body::size_hint(&self.body)
    }
}

#[cfg(test)]
#[path = "pool_test.rs"]
mod tests;
