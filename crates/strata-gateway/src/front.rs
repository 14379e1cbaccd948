//! The gateway's own HTTP/1.1 server for plain-text connections: the connection's task reads
//! a request head ([`crate::h1::parse_request`]), hands the request to
//! [`Gateway::handle`](crate::proxy::Gateway::handle), and writes the answer's head and body,
//! usually in one `writev`.
//!
//! hyper's server did the same with a dispatcher, a header-read timer armed per request and
//! more state per exchange; issue 13's profile put a third of the proxy's user time there. What
//! this server does not do itself it hands over to hyper, with the bytes read so far replayed
//! ([`Replay`]), for the rest of the connection: HTTP/2 with prior knowledge (h2c), a request
//! that switches protocols (WebSocket, `CONNECT`), a chunked request body, and a body longer
//! than [`MAX_BUFFERED_BODY`] (so large and streamed uploads stream as before). A request body
//! up to that size is read before the request is handled, as nginx buffers small bodies.
//!
//! Bad input gets what hyper gave it: 431 for a head over [`MAX_HEADER_BYTES`] or with too
//! many headers, 400 for a malformed head, and a client that has not sent a whole head within
//! [`HEADER_TIMEOUT`] of connecting, or of the first byte of a later head, is disconnected
//! (slowloris). Between requests a connection may idle for [`KEEPALIVE_TIMEOUT`].

use crate::deadline::Reused;
use crate::h1::{self, BadRequest, RequestBody, RequestHead};
use crate::proxy::{Gateway, HEADER_TIMEOUT, MAX_HEADER_BYTES};
use crate::upstream::Answer;
use axum::body::Body;
use bytes::{Buf, Bytes, BytesMut};
use hyper::body::Body as _;
use hyper::{Method, Response, StatusCode, Version};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The longest request body read before its request is handled; a longer one hands the
/// connection to hyper, which streams it.
pub const MAX_BUFFERED_BODY: u64 = 64 * 1024;

/// How long a connection may wait idle for its next request (nginx's `keepalive_timeout`).
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(75);

/// Bytes read at a time (a read that does not fill them tells tokio the socket is drained);
/// also what an idle connection keeps, as hyper's server did.
const READ_CHUNK: usize = 8 * 1024;

/// How much of a pipelined next request is read while the current one is handled (to notice
/// a client that closes the connection); more waits in the socket.
const MAX_READ_AHEAD: usize = 64 * 1024;

/// Answer body pieces up to this size are copied behind what is buffered and written with it;
/// a larger piece goes out in the same `writev` without the copy.
const COALESCE: usize = 4 * 1024;

/// How a connection ended.
pub(crate) enum Ended {
    /// Closed (or the client left).
    Closed,
    /// The rest of the connection goes to hyper, starting with the bytes already read.
    HandOver(Replay<TcpStream>),
}

/// What waiting for the next request head gave.
#[allow(clippy::large_enum_variant)] // returned once per request: a box would cost more
enum Next {
    Head(RequestHead),
    HandOver,
    Refuse(StatusCode, String),
    Closed,
}

/// One client connection: serves its requests until it closes, fails, or needs hyper.
pub(crate) async fn serve(
    gateway: &Gateway,
    mut stream: TcpStream,
    client: SocketAddr,
    cancel: &CancellationToken,
) -> Ended {
    let mut conn = Conn {
        read: BytesMut::with_capacity(READ_CHUNK),
        write: BytesMut::with_capacity(1024),
        timer: Reused::default(),
        cancelled: Box::pin(cancel.clone().cancelled_owned()),
        served: 0,
    };
    loop {
        let head = match conn.next_head(&mut stream).await {
            Next::Head(head) => head,
            Next::HandOver => return conn.hand_over(None, stream),
            Next::Refuse(status, why) => {
                tracing::debug!(%client, %status, %why, "bad request head; closing");
                let answer = crate::proxy::plain(status, &format!("{why}\n"));
                let _ = conn
                    .write_answer(&mut stream, answer, None, false, true)
                    .await;
                return Ended::Closed;
            }
            Next::Closed => return Ended::Closed,
        };
        let length = match head.body {
            RequestBody::Empty => 0,
            RequestBody::Length(length) if length <= MAX_BUFFERED_BODY => length as usize,
            _ => return conn.hand_over(Some(head.raw), stream),
        };
        if head.upgrade {
            return conn.hand_over(Some(head.raw), stream);
        }
        let RequestHead {
            request,
            keep_alive,
            expect_continue,
            ..
        } = head;
        // `100 Continue` is for HTTP/1.1 clients only (RFC 9110 section 10.1.1).
        let expect_continue = expect_continue && request.version() == Version::HTTP_11;
        if conn.read.len() < length && !conn.read_body(&mut stream, length, expect_continue).await {
            return Ended::Closed;
        }
        let body = match length {
            0 => Body::empty(),
            _ => Body::from(conn.read.split_to(length).freeze()),
        };
        let head_request = request.method() == Method::HEAD;
        let version = request.version();
        // In a block of its own: the handling's state (kilobytes) is gone before the answer
        // is written, so the two waits share their room in this future.
        let answer = {
            let handling =
                std::pin::pin!(gateway.handle(request.map(|()| body), client, false, true));
            conn.unless_client_leaves(&stream, handling).await
        };
        let Some(Answer { mut response, raw }) = answer else {
            tracing::debug!(%client, "the client closed the connection before its answer; request dropped");
            return Ended::Closed;
        };
        // An answer of unknown length to an HTTP/1.0 client ends with the connection, as does
        // one that says so.
        let close = !keep_alive
            || h1::asks_close(response.headers())
            || (version == Version::HTTP_10 && response.body().size_hint().exact().is_none());
        if version == Version::HTTP_10 && !close {
            // An HTTP/1.0 client keeps the connection only when the answer says so (`ab -k`).
            response.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("keep-alive"),
            );
        }
        if conn
            .write_answer(&mut stream, response, raw.as_deref(), head_request, close)
            .await
            .is_err()
            || close
        {
            return Ended::Closed;
        }
        conn.served += 1;
    }
}

/// A connection's buffers and timers.
struct Conn {
    /// Bytes read from the client and not yet used.
    read: BytesMut,
    /// Where answer heads (and small bodies) are put together.
    write: BytesMut,
    /// The timer that ends a wait for a head (see [`crate::deadline`]).
    timer: Reused,
    /// Fires when the gateway stops; an idle connection then closes.
    cancelled: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    /// Requests answered on this connection.
    served: u64,
}

impl Conn {
    /// Waits for the next request head: parses what arrived, reads more when it is not whole.
    async fn next_head(&mut self, stream: &mut TcpStream) -> Next {
        // Between requests a connection may idle for KEEPALIVE_TIMEOUT; a head, from its first
        // byte (or from the connection's start), must be whole within HEADER_TIMEOUT.
        // Both read the clock only when a read has to wait.
        let mut idle = self.served > 0 && self.read.is_empty();
        let mut deadline = None;
        loop {
            // The first byte rules out HTTP/2 for nearly every HTTP/1.1 head, without the
            // comparison's call.
            if self.read.first() == Some(&h1::H2_PREFACE[0])
                && self
                    .read
                    .starts_with(&h1::H2_PREFACE[..self.read.len().min(14)])
            {
                if self.read.len() >= 14 {
                    return Next::HandOver;
                }
            } else {
                match h1::parse_request(&mut self.read, MAX_HEADER_BYTES) {
                    Ok(Some(head)) => return Next::Head(head),
                    Ok(None) => {}
                    Err(BadRequest::TooLarge) => {
                        return Next::Refuse(
                            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                            "request head too large".into(),
                        )
                    }
                    Err(BadRequest::Malformed(why)) => {
                        return Next::Refuse(StatusCode::BAD_REQUEST, why)
                    }
                }
            }
            let wait = if idle {
                KEEPALIVE_TIMEOUT
            } else {
                HEADER_TIMEOUT
            };
            let until = *deadline.get_or_insert_with(|| Instant::now() + wait);
            match self.fill(stream, until).await {
                Some(0) | None => return Next::Closed,
                Some(_) => {}
            }
            if idle {
                // The head's first bytes: from here it has HEADER_TIMEOUT to be whole.
                idle = false;
                deadline = None;
            }
        }
    }

    /// Reads until `length` body bytes are buffered, first telling a client that waits for
    /// it to go on. False when the client left or took too long.
    async fn read_body(
        &mut self,
        stream: &mut TcpStream,
        length: usize,
        expect_continue: bool,
    ) -> bool {
        if expect_continue
            && stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return false;
        }
        // HEADER_TIMEOUT without a byte ends the wait; a slow but steady upload goes on.
        while self.read.len() < length {
            self.read.reserve(length - self.read.len());
            match self.fill(stream, Instant::now() + HEADER_TIMEOUT).await {
                Some(0) | None => return false,
                Some(_) => {}
            }
        }
        true
    }

    /// Reads what the client sent next; `Some(0)` at its end, `None` when `deadline` passed,
    /// the read failed, or the gateway stopped while nothing was buffered.
    async fn fill(&mut self, stream: &mut TcpStream, deadline: Instant) -> Option<usize> {
        if self.read.capacity() - self.read.len() < READ_CHUNK / 4 {
            self.read.reserve(READ_CHUNK);
        }
        self.timer.arm(deadline);
        let idle = self.read.is_empty();
        std::future::poll_fn(|cx| {
            match tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, &mut self.read) {
                Poll::Ready(Ok(n)) => return Poll::Ready(Some(n)),
                Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Pending => {}
            }
            if idle && self.cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            self.timer.poll_passed(deadline, cx).map(|()| None)
        })
        .await
    }

    /// Runs `handling` until it gives the answer, or until the client closes the connection
    /// first: then `None`, and the request is dropped with its upstream exchange (as nginx
    /// aborts it, and hyper's server did), so a client that gave up holds no upstream
    /// connection until the route's timeout. Bytes of a pipelined next request that arrive
    /// meanwhile are kept, up to [`MAX_READ_AHEAD`]; beyond that the client is not watched.
    async fn unless_client_leaves<F: Future>(
        &mut self,
        stream: &TcpStream,
        mut handling: Pin<&mut F>,
    ) -> Option<F::Output> {
        // By hand rather than with `select!` and `readable()`: the socket's one reader waker
        // slot is cheaper than a waiter list entry, and nothing is moved per request.
        std::future::poll_fn(|cx| {
            if let Poll::Ready(answer) = handling.as_mut().poll(cx) {
                return Poll::Ready(Some(answer));
            }
            while self.read.len() < MAX_READ_AHEAD {
                match stream.poll_read_ready(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Err(_)) => return Poll::Ready(None),
                    Poll::Ready(Ok(())) => {}
                }
                self.read.reserve(READ_CHUNK);
                match stream.try_read_buf(&mut self.read) {
                    Ok(0) => return Poll::Ready(None),
                    // Read, or nothing there after all (readiness is now cleared): look again.
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Poll::Ready(None),
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Writes `response` (head and body), with `raw`, the upstream's own header lines when
    /// the gateway left them as they came; `head_request`: it answers `HEAD`, so no body goes
    /// out; `close`: the connection closes after it.
    async fn write_answer(
        &mut self,
        stream: &mut TcpStream,
        response: Response<Body>,
        raw: Option<&h1::RawHeaders>,
        head_request: bool,
        close: bool,
    ) -> io::Result<()> {
        let (parts, mut body) = response.into_parts();
        let exact = body.size_hint().exact();
        // The length the client is told: the body must be exactly that long, or the
        // connection closes (a shorter or longer body would desynchronise it).
        let promised = exact
            .or_else(|| raw.and_then(|raw| raw.length))
            .or_else(|| h1::content_length(&parts.headers).ok().flatten());
        self.write.clear();
        let chunked = h1::encode_answer_head(
            parts.status,
            &parts.headers,
            raw,
            exact,
            head_request,
            close,
            date::put,
            &mut self.write,
        );
        if h1::bodiless(parts.status, head_request) {
            return stream.write_all(&self.write).await;
        }
        let mut written = 0u64;
        loop {
            if body.is_end_stream() {
                break;
            }
            // A frame that is ready now joins what is buffered; otherwise the buffer goes out
            // before waiting, so a streamed answer is never held back.
            let frame =
                match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx)))
                    .await
                {
                    Poll::Ready(frame) => frame,
                    Poll::Pending => {
                        if !self.write.is_empty() {
                            stream.write_all(&self.write).await?;
                            self.write.clear();
                        }
                        std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                    }
                };
            let data = match frame {
                None => break,
                Some(Err(error)) => return Err(io::Error::other(error)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => data,
                    _ => continue,
                },
            };
            written += data.len() as u64;
            if promised.is_some_and(|promised| written > promised) {
                return Err(io::Error::other("the answer's body is longer than it said"));
            }
            if chunked {
                self.write.extend_from_slice(&h1::chunk_header(data.len()));
            }
            if self.write.len() + data.len() <= COALESCE {
                self.write.extend_from_slice(&data);
            } else {
                let mut out = (&self.write[..]).chain(data);
                stream.write_all_buf(&mut out).await?;
                self.write.clear();
            }
            if chunked {
                self.write.extend_from_slice(b"\r\n");
            }
        }
        if chunked {
            self.write.extend_from_slice(b"0\r\n\r\n");
        }
        if !self.write.is_empty() {
            stream.write_all(&self.write).await?;
        }
        if promised.is_some_and(|promised| written != promised) {
            return Err(io::Error::other(
                "the answer's body is shorter than it said",
            ));
        }
        Ok(())
    }

    /// The rest of the connection for hyper: `head` (a request head already taken out of the
    /// buffer) and the buffered bytes come first.
    fn hand_over(self, head: Option<Bytes>, stream: TcpStream) -> Ended {
        let prefix = match head {
            None => self.read.freeze(),
            Some(head) => {
                let mut prefix = BytesMut::with_capacity(head.len() + self.read.len());
                prefix.extend_from_slice(&head);
                prefix.extend_from_slice(&self.read);
                prefix.freeze()
            }
        };
        Ended::HandOver(Replay {
            prefix,
            inner: stream,
        })
    }
}

/// A stream whose first reads return `prefix`.
pub(crate) struct Replay<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Replay<T> {
    /// The connection was handed over for HTTP/2 with prior knowledge (h2c).
    pub(crate) fn is_h2(&self) -> bool {
        self.prefix.starts_with(&h1::H2_PREFACE[..14])
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Replay<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let take = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..take]);
            self.prefix.advance(take);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Replay<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The `Date` header's value, formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }

    /// Writes the current date in IMF-fixdate form.
    pub fn put(out: &mut bytes::BytesMut) {
        let now = SystemTime::now();
        let second = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != second {
                *cached = (second, httpdate::fmt_http_date(now));
            }
            out.extend_from_slice(cached.1.as_bytes());
        })
    }
}
