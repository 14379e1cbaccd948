//! A client's request body that is read to its end when dropped unread: after a refusal
//! (404, 403, 413, 429, 503), a body limit, or an upstream's early answer through the gateway.
//! Every listener of [`crate::serve_http`], and the gateway's hyper listeners, wrap bodies in
//! it. Over HTTP/2 a stream whose body is dropped while the client still sends is reset
//! (`RST_STREAM`, RFC 9113 section 8.1), and clients such as Debian 12's curl then report
//! "Stream error in the HTTP/2 framing layer" in place of the answer they were sent; over
//! HTTP/1.1 hyper closes the connection. So the body goes to a task that reads and drops it,
//! as nginx discards one, within [`DRAIN_BYTES`] and [`DRAIN_WAIT`]; the answer is not held
//! back meanwhile. Past either bound the body is dropped after all (a client that uploads
//! gigabytes to a refusing route is cut off as before).

use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// The most bytes read from a body dropped unread.
pub const DRAIN_BYTES: u64 = 4 * 1024 * 1024;

/// The longest a body dropped unread is read for.
pub const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// `inner`, read to its end (within the bounds above) by a task of its own when dropped first.
pub struct Drained<B: Body + Unpin + Send + 'static> {
    /// `None` once ended or handed to the draining task.
    inner: Option<B>,
}

impl<B: Body + Unpin + Send + 'static> Drained<B> {
    pub fn new(inner: B) -> Drained<B> {
        Drained { inner: Some(inner) }
    }
}

impl<B: Body + Unpin + Send + 'static> Body for Drained<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.inner = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl<B: Body + Unpin + Send + 'static> Drop for Drained<B> {
    fn drop(&mut self) {
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        if inner.is_end_stream() {
            return;
        }
        // Outside a runtime (a test dropping a request) there is no one to read it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let _ = tokio::time::timeout(DRAIN_WAIT, async {
                let mut read = 0u64;
                while let Some(Ok(frame)) =
                    std::future::poll_fn(|cx| Pin::new(&mut inner).poll_frame(cx)).await
                {
                    if let Ok(data) = frame.into_data() {
                        read += bytes::Buf::remaining(&data) as u64;
                        if read > DRAIN_BYTES {
                            break;
                        }
                    }
                }
            })
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A body of `pieces` 1-KiB pieces that counts the pieces taken from it.
    fn counted(
        pieces: usize,
    ) -> (
        impl Body<Data = Bytes, Error = std::convert::Infallible> + Unpin + Send + 'static,
        Arc<AtomicUsize>,
    ) {
        let taken = Arc::new(AtomicUsize::new(0));
        let counter = taken.clone();
        let stream = futures::stream::iter((0..pieces).map(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(Frame::data(Bytes::from(vec![0u8; 1024])))
        }));
        (StreamBody::new(stream), taken)
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_body_dropped_unread_is_read_to_its_end() {
        let (body, taken) = counted(100);
        let mut drained = Drained::new(body);
        let first = drained.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap().len(), 1024);
        drop(drained);
        until("the rest read", || taken.load(Ordering::SeqCst) == 100).await;
    }

    #[tokio::test]
    async fn a_body_over_the_bound_is_read_only_that_far() {
        let pieces = (DRAIN_BYTES / 1024) as usize * 4;
        let (body, taken) = counted(pieces);
        drop(Drained::new(body));
        let bound = (DRAIN_BYTES / 1024) as usize + 1;
        until("the bound read", || taken.load(Ordering::SeqCst) >= bound).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(taken.load(Ordering::SeqCst), bound, "stopped at the bound");
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_passes_its_frames_on() {
        let (body, taken) = counted(3);
        let collected = Drained::new(body).collect().await.unwrap().to_bytes();
        assert_eq!(collected.len(), 3 * 1024);
        assert_eq!(taken.load(Ordering::SeqCst), 3);
    }
}
