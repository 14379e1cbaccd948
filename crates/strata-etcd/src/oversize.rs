//! [`EtcdCodes`]: gives a message over the decoding limit the status code etcd gives it.
//!
//! tonic refuses such a message with `out_of_range`; gRPC-go, and so etcd, with
//! `resource_exhausted` ("grpc: received message larger than max"). For unary calls tonic
//! answers before any response body, with the status in the response headers, which is
//! where this wrapper rewrites it. Streams see the same error from their request stream
//! and map it with [`error::oversized_message`] themselves.

use crate::error;
use std::convert::Infallible;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::Status;

/// Wraps a generated service; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct EtcdCodes<S> {
    /// The generated tonic service.
    inner: S,
}

impl<S> EtcdCodes<S> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: S) -> Self {
        EtcdCodes { inner }
    }
}

impl<S: NamedService> NamedService for EtcdCodes<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for EtcdCodes<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            rewrite(response.headers_mut());
            Ok(response)
        })
    }
}

/// Replaces a "decoded message length too large" status in `headers`, if there is one.
fn rewrite(headers: &mut http::HeaderMap) {
    if !headers.contains_key("grpc-status") {
        return;
    }
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    let Some(replacement) = error::oversized_message(&status) else {
        return;
    };
    if replacement.add_header(headers).is_err() {
        tracing::debug!("could not rewrite an oversized-message status");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_the_oversized_status() {
        let mut headers = http::HeaderMap::new();
        Status::out_of_range(
            "Error, decoded message length too large: found 700 bytes, the limit is: 600 bytes",
        )
        .add_header(&mut headers)
        .unwrap();
        rewrite(&mut headers);
        let status = Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "grpc: received message larger than max (700 vs. 600)"
        );

        let mut other = http::HeaderMap::new();
        Status::out_of_range("etcdserver: mvcc: required revision is a future revision")
            .add_header(&mut other)
            .unwrap();
        rewrite(&mut other);
        assert_eq!(
            Status::from_header_map(&other).unwrap().code(),
            tonic::Code::OutOfRange
        );
    }
}
