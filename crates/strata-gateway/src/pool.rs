//! HTTP/1.1 connections to upstream members, each used by one request at a time and driven by
//! that request's own task.
//!
//! A request checks a connection out of [`Http1Pool`] (or opens one), writes its head (and
//! body) on it and reads the answer's head, all in the request's task; the answer's body is a
//! [`PooledBody`] that reads the rest from the connection as it is polled and puts the
//! connection back when the body ends on a connection that may be reused. The wire format is
//! [`crate::h1`]'s. There is no task per connection and no channel between the request and its
//! connection: issue 13's profile found hyper's client connection (a dispatcher, a request
//! channel, an answer channel and a body channel per exchange) to be most of the proxy's user
//! time. Requests that switch protocols (`Upgrade`) still go through hyper's client, which
//! hands the connection over when the switch is done. One pool serves every worker thread; a
//! `std::sync::Mutex` guards the idle lists (never held across an `.await`, nor while a
//! connection is read or closed).
//!
//! An idle connection is read by nobody, so an upstream that closes it is noticed when it is
//! next checked out: the check-out looks at the socket's readiness (a read only when it became
//! readable) and drops the connection if it ended or holds bytes nobody asked for. One that the
//! upstream closes just as a request is written to it (the keep-alive race) fails that
//! exchange: a request whose head could not be written at all is sent on another connection,
//! and an idempotent request without a body on a connection idle for at least
//! [`Settings::replay_after_idle`] is sent once more on a new connection, without using up one
//! of the route's retries (as nginx does for a cached keep-alive connection). A sweep task
//! closes connections idle longer than the idle timeout and those their member closed.
//!
//! **Invariant:** a connection is in an idle list only when no request uses it, the last
//! answer on it was read to its end with no byte after it, and both sides said it persists.

use crate::deadline::Reused;
use crate::h1::{self, AnswerHead, BodyFraming, Chunked, Piece, RequestFraming};
use crate::metrics::UpstreamMetrics;
use crate::upstream::{Answer, OpenCount};
use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use hyper::client::conn::http1;
use hyper::{Request, Response};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
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
    /// The deadline passed before the answer's head arrived (the connection, if any, is
    /// closed).
    TimedOut,
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
            SendError::TimedOut => f.write_str("no answer before the deadline"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(error) | SendError::Broken(error) => Some(error.as_ref()),
            SendError::TimedOut => None,
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
    /// hyper's HTTP/1.1 client options, for exchanges that switch protocols.
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
    conn: Box<Conn>,
    since: Instant,
}

/// One connection to a member; boxed wherever it goes (the idle lists, a request's future,
/// an answer's body), so that it moves as a pointer: it is taken out of its list, carried by
/// the exchange and put back on every request.
struct Conn {
    /// The member's address, the key of its idle list.
    member: Arc<str>,
    stream: TcpStream,
    /// Bytes read from the member and not yet taken: the rest of an answer's head or body.
    read: BytesMut,
    /// Where a request's head is written before it is sent (kept, so that its allocation is).
    write: BytesMut,
    /// Ends the wait for an answer at the request's deadline; kept with the connection.
    timer: Reused,
    /// Counts the connection as open until it is dropped.
    _open: OpenCount,
}

/// Bytes read at a time: an answer smaller than this arrives in one read, and a read that
/// does not fill the buffer tells tokio that the socket is drained (no extra `recv` that
/// would only say "nothing more"). 32 KiB: a 16 KiB answer with its head fits (with 16 KiB,
/// such an answer took two reads from the member and two writes to the client).
const READ_CHUNK: usize = 32 * 1024;

impl Conn {
    /// True when the connection is open, idle and holds nothing unread: no bytes have arrived
    /// since its last answer ended, and its member has not closed it. Looks only at the
    /// socket's readiness, reading (once) only when it says something arrived.
    fn settle(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut byte = [0u8; 1];
                matches!(self.stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads what the member sent next into `self.read`; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        poll_fill(Pin::new(&mut self.stream), &mut self.read, cx, want)
    }

    /// Reads the final answer's head to `request` (`head_request`: it was `HEAD`; `raw`: its
    /// headers stay raw, see [`h1::parse_answer`]).
    async fn read_head(&mut self, head_request: bool, raw: bool) -> io::Result<AnswerHead> {
        read_head(&mut self.stream, &mut self.read, head_request, raw).await
    }

    /// Sends `body` after its head, framed as `framing` says, and reads the answer's head at
    /// the same time: a member may answer before it has read the whole body (a 413 for a body
    /// too large, a 401) and stop reading or close. That answer is the one passed on, and the
    /// connection, with part of the body unsent, is not used again.
    async fn send_body_and_read_head(
        &mut self,
        body: Body,
        framing: RequestFraming,
        head_request: bool,
        raw: bool,
    ) -> io::Result<AnswerHead> {
        let (mut from, mut to) = self.stream.split();
        let mut sending = std::pin::pin!(write_body(&mut to, body, framing));
        let mut answered = std::pin::pin!(read_head(&mut from, &mut self.read, head_request, raw));
        let early = |head: io::Result<AnswerHead>| {
            head.map(|mut head| {
                head.keep_alive = false;
                head
            })
        };
        tokio::select! {
            biased;
            sent = &mut sending => match sent {
                Ok(()) => answered.await,
                // The member stopped taking the body: it may have answered first.
                Err(error) if broken_by_peer(&error) => early(answered.await).map_err(|_| error),
                Err(error) => Err(error),
            },
            head = &mut answered => early(head),
        }
    }
}

/// Whether a write failed because the peer closed or reset the connection (rather than
/// because the body being sent failed).
fn broken_by_peer(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

/// Reads what `from` sent next into `read`; `Ok(0)` at the end of the stream.
fn poll_fill(
    from: Pin<&mut impl AsyncRead>,
    read: &mut BytesMut,
    cx: &mut Context<'_>,
    want: usize,
) -> Poll<io::Result<usize>> {
    if read.capacity() - read.len() < want.clamp(1, READ_CHUNK) {
        read.reserve(want.clamp(READ_CHUNK, 4 * READ_CHUNK));
    }
    tokio_util::io::poll_read_buf(from, cx, read)
}

/// Reads the final answer's head from `from` (after what `read` holds already).
async fn read_head(
    from: &mut (impl AsyncRead + Unpin),
    read: &mut BytesMut,
    head_request: bool,
    raw: bool,
) -> io::Result<AnswerHead> {
    loop {
        if let Some(head) = h1::parse_answer(read, head_request, raw)? {
            return Ok(head);
        }
        let n = std::future::poll_fn(|cx| poll_fill(Pin::new(&mut *from), read, cx, READ_CHUNK))
            .await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the upstream closed the connection before answering",
            ));
        }
    }
}

/// Sends `body` to `to` after its head, framed as `framing` says.
async fn write_body(
    to: &mut (impl AsyncWrite + Unpin),
    mut body: Body,
    framing: RequestFraming,
) -> io::Result<()> {
    let mut sent = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(io::Error::other)?;
        let Ok(mut data) = frame.into_data() else {
            continue; // trailers are not forwarded over HTTP/1.1
        };
        if data.is_empty() {
            continue;
        }
        match framing {
            RequestFraming::Length(length) => {
                let room = length - sent;
                if data.len() as u64 > room {
                    return Err(io::Error::other(
                        "the request body is longer than its Content-Length",
                    ));
                }
                sent += data.len() as u64;
                to.write_all_buf(&mut data).await?;
            }
            RequestFraming::Chunked => {
                let mut chunk = bytes::Buf::chain(
                    bytes::Buf::chain(h1::chunk_header(data.len()), data),
                    &b"\r\n"[..],
                );
                to.write_all_buf(&mut chunk).await?;
            }
            RequestFraming::Empty => {
                return Err(io::Error::other("a request without a body sent one"))
            }
        }
    }
    match framing {
        RequestFraming::Length(length) if sent < length => Err(io::Error::other(
            "the request body ended before its Content-Length",
        )),
        RequestFraming::Chunked => to.write_all(b"0\r\n\r\n").await,
        _ => Ok(()),
    }
}

/// How an exchange failed; `unsent` gives back a request none of which was written.
struct Failed {
    unsent: Option<Request<Body>>,
    error: io::Error,
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
    /// once its head arrived, if it does before `deadline`; its body keeps the connection and
    /// returns it to the pool when it ends. `replayable`: the request has no body and may be
    /// sent twice (idempotent).
    ///
    /// Cancel safety: dropping the future closes the connection it was using.
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        member: &str,
        request: Request<Body>,
        replayable: bool,
        raw_answer: bool,
        added: &[u8],
        deadline: tokio::time::Instant,
    ) -> Result<Answer, SendError> {
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
                None => {
                    match tokio::time::timeout_at(deadline, Box::pin(self.shared.connect(member)))
                        .await
                    {
                        Ok(opened) => (opened?, None),
                        Err(_) => return Err(SendError::TimedOut),
                    }
                }
            };
            let replay = match idle_for {
                Some(idle_for)
                    if replayable && idle_for >= self.shared.settings.replay_after_idle =>
                {
                    Some(Box::new(copy_head(&request)))
                }
                _ => None,
            };
            let mut timer = std::mem::take(&mut conn.timer);
            let exchanged = {
                let work = std::pin::pin!(exchange(&mut conn, request, raw_answer, added));
                timer.within(deadline, work).await
            };
            conn.timer = timer;
            let Some(exchanged) = exchanged else {
                // Mid-exchange: the connection is not used again.
                return Err(SendError::TimedOut);
            };
            match exchanged {
                Ok(head) => return Ok(self.shared.clone().wrap(conn, head)),
                Err(failed) => {
                    drop(conn);
                    let reused = idle_for.is_some();
                    match (failed.unsent, replay) {
                        // Never written: safe to send on another connection, any request.
                        (Some(unsent), _) if reused => {
                            tracing::debug!(%member, "pooled connection closed before the request was written; using another");
                            request = unsent;
                        }
                        (_, Some(copy)) => {
                            tracing::debug!(%member, error = %failed.error, "pooled connection broke before an answer; sending again on a new connection");
                            request = *copy;
                            fresh_only = true;
                        }
                        _ => return Err(SendError::Broken(Box::new(failed.error))),
                    }
                }
            }
        }
    }

    /// Sends a request that asks to switch protocols (`Upgrade`) with hyper's client: its
    /// connection runs in a task of its own until the switch (or the end), and never goes back
    /// to the pool.
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
        let io = crate::upstream::Counted::new(
            hyper_util::rt::TokioIo::new(conn.stream),
            &self.shared.metrics.open,
        );
        let (mut sender, connection) = self
            .shared
            .builder
            .handshake::<_, Body>(io)
            .await
            .map_err(|error| SendError::Broken(Box::new(error)))?;
        self.shared.tracker.spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
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
    fn checkout(&self, member: &str) -> Option<(Box<Conn>, Duration)> {
        loop {
            let idle = self.lock_idle().get_mut(member)?.pop()?;
            let idle_for = idle.since.elapsed();
            let mut conn = idle.conn;
            if idle_for < self.settings.idle_timeout && conn.settle() {
                return Some((conn, idle_for));
            }
        }
    }

    /// Puts `conn` back, its answer read to the end and both sides keeping it open; closes it
    /// when the member's list is full.
    fn check_in(&self, conn: Box<Conn>) {
        if !conn.read.is_empty() {
            // Bytes after the end of the answer: the member does not speak HTTP/1.1 properly.
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
    async fn connect(&self, member: &str) -> Result<Box<Conn>, SendError> {
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
        Ok(Box::new(Conn {
            member: Arc::from(member),
            stream,
            read: BytesMut::new(),
            write: BytesMut::new(),
            timer: Reused::default(),
            _open: OpenCount::new(&self.metrics.open),
        }))
    }

    /// The answer with a body that reads the rest from `conn` and checks it in at its end.
    fn wrap(self: Arc<Self>, conn: Box<Conn>, head: AnswerHead) -> Answer {
        let AnswerHead {
            response,
            framing,
            keep_alive,
            raw,
        } = head;
        let state = match framing {
            BodyFraming::Empty => Framing::Ended,
            BodyFraming::Length(length) => Framing::Length(length),
            BodyFraming::Chunked => Framing::Chunked(Chunked::default()),
            BodyFraming::UntilClose => Framing::UntilClose,
        };
        let mut body = PooledBody {
            conn: Some(conn),
            framing: state,
            keep_alive,
            pool: self,
        };
        // An answer without a body (HEAD, 204, 304, `Content-Length: 0`) is never polled.
        if body.framing == Framing::Ended {
            body.finish();
        }
        let (parts, ()) = response.into_parts();
        Answer {
            response: Response::from_parts(parts, Body::new(body)),
            raw,
        }
    }
}

/// Sends `request` on `conn` and reads the answer's head, in this task.
async fn exchange(
    conn: &mut Conn,
    request: Request<Body>,
    raw_answer: bool,
    added: &[u8],
) -> Result<AnswerHead, Failed> {
    let body_ended = hyper::body::Body::is_end_stream(request.body());
    let exact = hyper::body::Body::size_hint(request.body()).exact();
    let head_request = request.method() == hyper::Method::HEAD;
    conn.write.clear();
    let framing = h1::encode_request_head(&request, added, body_ended, exact, &mut conn.write);
    let mut written = 0;
    while written < conn.write.len() {
        match std::future::poll_fn(|cx| {
            Pin::new(&mut conn.stream).poll_write(cx, &conn.write[written..])
        })
        .await
        {
            Ok(0) => {
                let error = io::Error::new(io::ErrorKind::WriteZero, "the upstream took no bytes");
                return Err(failed(written, request, error));
            }
            Ok(n) => written += n,
            Err(error) => return Err(failed(written, request, error)),
        }
    }
    let broken = |error| Failed {
        unsent: None,
        error,
    };
    if framing != RequestFraming::Empty {
        // Boxed: the usual request has no body, and its exchange stays half the size.
        return Box::pin(conn.send_body_and_read_head(
            request.into_body(),
            framing,
            head_request,
            raw_answer,
        ))
        .await
        .map_err(broken);
    }
    conn.read_head(head_request, raw_answer)
        .await
        .map_err(broken)
}

/// An exchange that failed after `written` bytes of the request's head.
fn failed(written: usize, request: Request<Body>, error: io::Error) -> Failed {
    Failed {
        unsent: (written == 0).then_some(request),
        error,
    }
}

/// Opens a TCP connection to `HOST:PORT`, trying each address the host resolves to.
async fn open(member: &str) -> io::Result<TcpStream> {
    if let Ok(address) = member.parse::<SocketAddr>() {
        return TcpStream::connect(address).await;
    }
    let mut last = None;
    for address in tokio::net::lookup_host(member).await? {
        match TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{member} resolves to no address"),
        )
    }))
}

/// A `Host` header naming the member when the client sent none (an HTTP/2 client names the
/// host in the URI), and authority-form for `CONNECT`.
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

/// Where an answer's body stands.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    /// This many bytes to go.
    Length(u64),
    Chunked(Chunked),
    /// Everything until the member closes the connection.
    UntilClose,
    /// Read to its end.
    Ended,
}

/// An answer's body that reads from its connection as it is polled, and checks the
/// connection back in when it ends.
pub struct PooledBody {
    /// `None` once checked in or given up.
    conn: Option<Box<Conn>>,
    framing: Framing,
    /// Both sides keep the connection open after this answer.
    keep_alive: bool,
    pool: Arc<Shared>,
}

impl PooledBody {
    /// The body ended: the connection goes back to the pool, or is closed.
    fn finish(&mut self) {
        self.framing = Framing::Ended;
        if let Some(conn) = self.conn.take() {
            if self.keep_alive {
                self.pool.check_in(conn);
            }
        }
    }

    /// The next piece of the body, or its end.
    fn poll_piece(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(match self.framing {
                    Framing::Ended => Ok(None),
                    _ => Err(io::Error::other("the upstream answer's body broke")),
                });
            };
            let want = match &mut self.framing {
                Framing::Ended => return Poll::Ready(Ok(None)),
                Framing::Length(left) => {
                    if !conn.read.is_empty() {
                        let take = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(conn.read.len());
                        let data = conn.read.split_to(take).freeze();
                        *left -= take as u64;
                        if *left == 0 {
                            self.finish();
                        }
                        return Poll::Ready(Ok(Some(data)));
                    }
                    usize::try_from(*left).unwrap_or(usize::MAX)
                }
                Framing::Chunked(decoder) => match decoder.next(&mut conn.read)? {
                    Piece::Data(data) => return Poll::Ready(Ok(Some(data))),
                    Piece::End => {
                        self.finish();
                        return Poll::Ready(Ok(None));
                    }
                    Piece::NeedMore => READ_CHUNK,
                },
                Framing::UntilClose => {
                    if !conn.read.is_empty() {
                        return Poll::Ready(Ok(Some(conn.read.split().freeze())));
                    }
                    READ_CHUNK
                }
            };
            if std::task::ready!(conn.poll_fill(cx, want))? == 0 {
                if self.framing == Framing::UntilClose {
                    self.framing = Framing::Ended;
                    self.conn = None;
                    return Poll::Ready(Ok(None));
                }
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the upstream closed the connection before the answer's body ended",
                )));
            }
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        match std::task::ready!(this.poll_piece(cx)) {
            Ok(Some(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => {
                // A broken body's connection is not reused.
                this.conn = None;
                this.framing = Framing::Ended;
                Poll::Ready(Some(Err(error)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Ended
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(left) => SizeHint::with_exact(left),
            Framing::Ended => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
#[path = "pool_test.rs"]
mod tests;
