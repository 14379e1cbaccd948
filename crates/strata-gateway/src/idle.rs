//! A body that gives up when its bytes stop coming: a route's `idle_timeout` bounds the wait
//! for each next piece of a streamed answer (or upload), so an upstream that sends its headers
//! and then stalls does not hold the client's connection for ever.

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `inner`, failing with "idle timeout" when no frame arrives for `idle`.
pub struct IdleBody<B> {
    inner: B,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<B> IdleBody<B> {
    /// Wraps `inner`; the first wait starts now.
    pub fn new(inner: B, idle: Duration) -> IdleBody<B> {
        IdleBody {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + this.idle;
                this.timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                    "idle timeout: no bytes for {:?}",
                    this.idle
                )
                .into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_idle_time_and_a_flowing_one_does_not() {
        use futures::SinkExt;
        let (mut sender, receiver) =
            futures::channel::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let body = http_body_util::StreamBody::new(receiver);
        let mut watched = IdleBody::new(body, Duration::from_millis(100));
        let piece = |text: &'static str| Ok(Frame::data(Bytes::from_static(text.as_bytes())));
        sender.send(piece("abc")).await.unwrap();
        let first = watched.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "abc");
        // 90 ms later another piece: still fine (the wait restarts with each piece).
        tokio::time::advance(Duration::from_millis(90)).await;
        sender.send(piece("d")).await.unwrap();
        assert!(watched.frame().await.unwrap().is_ok());
        // Then nothing: an error once 100 ms pass.
        let stalled = watched.frame().await.unwrap();
        assert!(stalled.unwrap_err().to_string().contains("idle timeout"));
    }
}
