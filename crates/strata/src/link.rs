//! How long-running commands (`kv watch`, `svc watch`, `config listen`) report their
//! connection, in the same words everywhere: one line when it is lost, one when it is back,
//! nothing in between however long the retries take. [`Reconnecting`] follows a stream of
//! server-sent events that way until Ctrl-C.

use serde::de::DeserializeOwned;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};
use strata_api::backoff::Backoff;
use strata_client::{Client, ClientError, SseStream};
use strata_proto::error::ErrorCode;

/// The state of one streaming command's connection.
pub(crate) struct Link {
    /// Since when the connection has been down, once it was reported.
    lost_since: Option<Instant>,
    /// Pauses between retries: 200 ms doubling to 2 s.
    pause: Backoff,
}

impl Link {
    pub(crate) fn new() -> Link {
        Link {
            lost_since: None,
            pause: Backoff::new(Duration::from_millis(200), Duration::from_secs(2)),
        }
    }

    /// The connection failed or the stream ended: says so the first time, and returns how long
    /// to wait before the next try.
    pub(crate) fn lost(&mut self, why: &dyn std::fmt::Display) -> Duration {
        if self.lost_since.is_none() {
            eprintln!("connection lost ({why}); retrying until it is back (Ctrl-C to stop)");
            self.lost_since = Some(Instant::now());
        }
        self.pause.next_pause()
    }

    /// A stream is delivering again: says so if it had been lost.
    pub(crate) fn up(&mut self, endpoint: &str) {
        self.pause.reset();
        if let Some(since) = self.lost_since.take() {
            eprintln!(
                "connection back ({endpoint}, after {:.1}s)",
                since.elapsed().as_secs_f64()
            );
        }
    }
}

/// A server-sent-event route followed across reconnects until Ctrl-C or SIGTERM (`svc watch`,
/// `config listen`): it retries while the cluster is unavailable and reports the outage
/// through a [`Link`].
///
/// ```ignore
/// let mut follow = Reconnecting::new(client);
/// while let Some(mut stream) = follow.open::<Message>(&path).await? {
///     while let Some(message) = follow.next(&mut stream).await { /* ... */ }
/// }
/// ```
pub(crate) struct Reconnecting<'a> {
    /// Opens the stream.
    client: &'a Client,
    /// Reports the connection's state.
    link: Link,
    /// Resolves at Ctrl-C or SIGTERM; installed once, so a signal between two streams counts.
    interrupt: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Set once `interrupt` resolved: it must not be polled again, and every call ends at once.
    interrupted: bool,
}

impl<'a> Reconnecting<'a> {
    pub(crate) fn new(client: &'a Client) -> Reconnecting<'a> {
        Reconnecting {
            client,
            link: Link::new(),
            interrupt: Box::pin(crate::coord_cmds::interrupted()),
            interrupted: false,
        }
    }

    /// Opens the stream at `path`, retrying while the cluster is unavailable or unreachable;
    /// `None` once interrupted. Any other API error fails.
    pub(crate) async fn open<T: DeserializeOwned>(
        &mut self,
        path: &str,
    ) -> anyhow::Result<Option<SseStream<T>>> {
        while !self.interrupted {
            let error = match self.client.stream_get::<T>(path).await {
                Ok(stream) => return Ok(Some(stream)),
                Err(ClientError::Api(e)) if e.code != ErrorCode::Unavailable => {
                    return Err(anyhow::anyhow!("{e}"))
                }
                Err(e) => e,
            };
            let pause = self.link.lost(&error);
            tokio::select! {
                () = &mut self.interrupt => self.interrupted = true,
                () = tokio::time::sleep(pause) => {}
            }
        }
        Ok(None)
    }

    /// The stream's next message; `None` once interrupted, or when the stream ended or broke
    /// (reported as a lost connection: [`Reconnecting::open`] it again).
    pub(crate) async fn next<T: DeserializeOwned>(
        &mut self,
        stream: &mut SseStream<T>,
    ) -> Option<T> {
        if self.interrupted {
            return None;
        }
        let message = tokio::select! {
            () = &mut self.interrupt => {
                self.interrupted = true;
                return None;
            }
            message = stream.next() => message,
        };
        let Ok(Some(message)) = message else {
            self.link
                .lost(&format!("{} ended the stream", stream.endpoint));
            return None;
        };
        self.link.up(&stream.endpoint);
        Some(message)
    }
}
