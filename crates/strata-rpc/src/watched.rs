//! A gRPC response body watched to its end, so that whoever made the call (the consumer's
//! breaker and span, the provider's span and metrics) learns the final status from the
//! trailers without buffering anything.

use bytes::Bytes;
use http_body::Frame;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::Code;

/// Calls `done` once with the response's final status: from the trailers, from a status in
/// the headers (a trailers-only response), `CANCELLED` when the body is dropped unfinished,
/// or `UNKNOWN` when it ends without a status.
pub(crate) struct Watched<F: FnOnce(Code, &str)> {
    body: Body,
    done: Option<F>,
}

impl<F: FnOnce(Code, &str) + Send + Unpin + 'static> Watched<F> {
    pub(crate) fn wrap(body: Body, done: F) -> Body {
        Body::new(Watched {
            body,
            done: Some(done),
        })
    }
}

impl<F: FnOnce(Code, &str) + Send + Unpin + 'static> http_body::Body for Watched<F> {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    // The common case, `0`, without parsing the rest of the status.
                    let ok = crate::context::header(trailers, &crate::context::GRPC_STATUS)
                        .is_some_and(|v| v.as_bytes() == b"0");
                    if ok {
                        self.finish(Code::Ok, "");
                    } else {
                        match tonic::Status::from_header_map(trailers) {
                            Some(status) => self.finish(status.code(), status.message()),
                            None => {
                                self.finish(Code::Unknown, "the response ended without a status")
                            }
                        }
                    }
                }
            }
            Poll::Ready(Some(Err(status))) => {
                let (code, message) = (status.code(), status.message().to_string());
                self.finish(code, &message);
            }
            Poll::Ready(None) => self.finish(Code::Unknown, "the response ended without a status"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl<F: FnOnce(Code, &str)> Watched<F> {
    fn finish(&mut self, code: Code, message: &str) {
        if let Some(done) = self.done.take() {
            done(code, message);
        }
    }
}

impl<F: FnOnce(Code, &str)> Drop for Watched<F> {
    fn drop(&mut self) {
        self.finish(Code::Cancelled, "the response was dropped before its end");
    }
}
