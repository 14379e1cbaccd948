//! Write coalescing for HTTP/2 connections (the gateway's, and the gRPC servers').
//!
//! hyper's HTTP/2 server (tonic's too) answers each stream from a task of its own, and every
//! answer wakes the connection's task, which writes what is queued and flushes. tokio runs a task woken by
//! another next (its LIFO slot), so the connection wrote once per answer or two: a TLS record,
//! a system call and a TCP segment each, and a wake-up of the client. nginx and HAProxy write
//! once per turn of their event loop, after every ready stream has answered.
//!
//! [`Cork`] does the same for a task runtime. It keeps what the connection writes, and the
//! first flush of a batch does not write: the task wakes itself and yields, which tokio queues
//! behind the tasks already ready (the answers of the other streams). When the connection runs
//! again, it adds what those answers queued, and the second flush writes it all at once. A
//! connection with nothing else ready pays one extra poll; nothing waits for a timer.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes kept before a write waits for them to go out.
pub const MAX_CORKED: usize = 64 * 1024;

/// A batch buffer larger than this is freed once written, so a connection that once wrote a
/// large batch does not keep its buffer while idle (watch streams stay open for days).
const KEEP_CAPACITY: usize = 16 * 1024;

/// A stream whose writes are held until a flush, and whose flushes yield once per batch
/// (see the module docs). With `enabled` false it passes everything through.
pub struct Cork<T> {
    inner: T,
    enabled: bool,
    /// Bytes written by the connection and not yet handed to `inner`, from `sent` on.
    held: Vec<u8>,
    sent: usize,
    /// The current batch's flush has yielded once already.
    yielded: bool,
}

impl<T> Cork<T> {
    pub fn new(inner: T, enabled: bool) -> Cork<T> {
        Cork {
            inner,
            enabled,
            held: Vec::new(),
            sent: 0,
            yielded: false,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite + Unpin> Cork<T> {
    /// Hands every held byte to `inner`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if self.held.capacity() > KEEP_CAPACITY {
            self.held = Vec::new();
        } else {
            self.held.clear();
        }
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Cork<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Cork<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if !this.enabled {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if this.held.len() >= MAX_CORKED {
            ready!(this.poll_drain(cx))?;
        }
        let take = buf.len().min(MAX_CORKED - this.held.len());
        this.held.extend_from_slice(&buf[..take]);
        Poll::Ready(Ok(take))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.enabled && this.held.len() > this.sent && !this.yielded {
            // Let the tasks already ready (other streams' answers) add to this batch first.
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_drain(cx))?;
        this.yielded = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    /// Records each write it takes; accepts at most `per_write` bytes a call, and returns
    /// `Pending` (waking at once) every other call when `stall` is set.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        per_write: Option<usize>,
        stall: bool,
        stalled: bool,
        flushes: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.stall && !self.stalled {
                self.stalled = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.stalled = false;
            let n = self.per_write.map_or(buf.len(), |p| p.min(buf.len()));
            self.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }

        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A waker that counts its wakes, and the count.
    fn counting_waker() -> (Arc<CountingWaker>, std::task::Waker) {
        let count = Arc::new(CountingWaker(AtomicUsize::new(0)));
        (count.clone(), std::task::Waker::from(count))
    }

    fn write_all(cork: &mut Cork<Recorder>, data: &[u8], cx: &mut Context<'_>) {
        let mut done = 0;
        while done < data.len() {
            if let Poll::Ready(n) = Pin::new(&mut *cork).poll_write(cx, &data[done..]) {
                done += n.unwrap();
            }
        }
    }

    #[test]
    fn writes_until_a_flush_go_out_as_one_after_the_flush_yields_once() {
        let (waker, handle) = counting_waker();
        let mut cx = Context::from_waker(&handle);
        let mut cork = Cork::new(Recorder::default(), true);
        write_all(&mut cork, b"HEADERS ", &mut cx);
        write_all(&mut cork, b"DATA", &mut cx);
        assert!(
            cork.inner.writes.is_empty(),
            "nothing is written before a flush"
        );

        // The first flush yields: Pending, with the task woken to run again later.
        assert!(Pin::new(&mut cork).poll_flush(&mut cx).is_pending());
        assert_eq!(waker.0.load(Ordering::Relaxed), 1);
        assert!(cork.inner.writes.is_empty());

        // What the other streams queue meanwhile joins the batch; the next flush writes it.
        write_all(&mut cork, b" HEADERS DATA", &mut cx);
        assert!(Pin::new(&mut cork).poll_flush(&mut cx).is_ready());
        assert_eq!(
            cork.inner.writes,
            vec![b"HEADERS DATA HEADERS DATA".to_vec()]
        );
        assert_eq!(cork.inner.flushes, 1);

        // A flush with nothing held does not yield.
        assert!(Pin::new(&mut cork).poll_flush(&mut cx).is_ready());
        assert_eq!(waker.0.load(Ordering::Relaxed), 1);

        // The next batch yields once again.
        write_all(&mut cork, b"PING", &mut cx);
        assert!(Pin::new(&mut cork).poll_flush(&mut cx).is_pending());
        assert!(Pin::new(&mut cork).poll_flush(&mut cx).is_ready());
        assert_eq!(cork.inner.writes.len(), 2);
    }

    #[test]
    fn a_full_cork_writes_before_taking_more_and_keeps_the_order() {
        let (_, handle) = counting_waker();
        let mut cx = Context::from_waker(&handle);
        let recorder = Recorder {
            per_write: Some(10_000),
            stall: true,
            ..Recorder::default()
        };
        let mut cork = Cork::new(recorder, true);
        let data: Vec<u8> = (0..3 * MAX_CORKED + 123).map(|i| (i % 251) as u8).collect();
        write_all(&mut cork, &data, &mut cx);
        assert!(
            cork.held.len() <= MAX_CORKED,
            "held {} bytes",
            cork.held.len()
        );
        let mut flushed = false;
        for _ in 0..1000 {
            if Pin::new(&mut cork).poll_flush(&mut cx).is_ready() {
                flushed = true;
                break;
            }
        }
        assert!(flushed, "the flush never finished");
        assert_eq!(cork.inner.writes.concat(), data);
        assert!(cork.inner.writes.iter().all(|w| w.len() <= 10_000));
        // The large batch's buffer is not kept once it is written.
        assert!(cork.held.capacity() <= KEEP_CAPACITY);
    }

    #[test]
    fn shutdown_writes_what_is_held_without_yielding() {
        let (waker, handle) = counting_waker();
        let mut cx = Context::from_waker(&handle);
        let mut cork = Cork::new(Recorder::default(), true);
        write_all(&mut cork, b"GOAWAY", &mut cx);
        assert!(Pin::new(&mut cork).poll_shutdown(&mut cx).is_ready());
        assert_eq!(cork.inner.writes, vec![b"GOAWAY".to_vec()]);
        assert_eq!(waker.0.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_disabled_cork_passes_each_write_through() {
        let (waker, handle) = counting_waker();
        let mut cx = Context::from_waker(&handle);
        let mut cork = Cork::new(Recorder::default(), false);
        write_all(&mut cork, b"one", &mut cx);
        write_all(&mut cork, b"two", &mut cx);
        assert_eq!(cork.inner.writes, vec![b"one".to_vec(), b"two".to_vec()]);
        assert!(Pin::new(&mut cork).poll_flush(&mut cx).is_ready());
        assert_eq!(waker.0.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn bytes_cross_a_real_pipe_in_order() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(1024);
        let mut cork = Cork::new(client, true);
        let data: Vec<u8> = (0..200_000).map(|i| (i % 253) as u8).collect();
        let reader = tokio::spawn(async move {
            let mut server = server;
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            got
        });
        for piece in data.chunks(7_000) {
            cork.write_all(piece).await.unwrap();
            poll_fn(|cx| Pin::new(&mut cork).poll_flush(cx))
                .await
                .unwrap();
        }
        cork.shutdown().await.unwrap();
        drop(cork);
        assert_eq!(reader.await.unwrap(), data);
    }
}
