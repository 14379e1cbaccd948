//! A client for Strata's native HTTP/JSON API.
//!
//! [`Client`] takes every endpoint of the cluster. A request goes to the endpoint that last
//! answered; when that one cannot be reached (or answers `unavailable`), the next one is
//! tried, until `timeout` passes. Nodes forward to the leader themselves, so the client never
//! needs to know who leads.
//!
//! ```no_run
//! # async fn demo() -> Result<(), strata_client::ClientError> {
//! let client = strata_client::Client::new(&["http://127.0.0.1:7700".to_string()]);
//! client.put("greeting", "hello").await?;
//! let value = client.get("greeting").await?;
//! assert_eq!(value.as_deref(), Some(&b"hello"[..]));
//! # Ok(()) }
//! ```

pub mod config;

use futures::StreamExt;
pub use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use strata_proto::error::{ApiError, ErrorCode};
use strata_proto::kv::{
    PutRequest, PutResponse, RangeRequest, RangeResponse, WatchRequest, WatchResponse,
};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The cluster answered with an error.
    #[error("{0}")]
    Api(ApiError),
    /// No endpoint could be reached or the answer was not understood.
    #[error("{0}")]
    Transport(String),
}

impl ClientError {
    /// Returns the API error code, if the cluster answered.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api(e) => Some(e.code),
            ClientError::Transport(_) => None,
        }
    }
}

/// A client over a list of endpoints.
pub struct Client {
    endpoints: Vec<String>,
    http: reqwest::Client,
    preferred: AtomicUsize,
    timeout: Duration,
    /// How long a call keeps retrying while no endpoint accepts a connection; `None` means
    /// until `timeout`.
    connect_timeout: Option<Duration>,
}

/// Adds `http://` when an endpoint has no scheme and drops a trailing slash.
pub fn normalize_endpoint(endpoint: &str) -> String {
    let trimmed = endpoint.trim().trim_end_matches('/');
    if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    }
}

impl Client {
    /// Creates a client; endpoints are `http://host:port` (scheme optional).
    pub fn new(endpoints: &[String]) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .build()
            .expect("a reqwest client with plain settings always builds");
        Client {
            endpoints: endpoints.iter().map(|e| normalize_endpoint(e)).collect(),
            http,
            preferred: AtomicUsize::new(0),
            timeout: Duration::from_secs(15),
            connect_timeout: None,
        }
    }

    /// Sets how long a call may keep trying endpoints.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets how long a call keeps retrying while no endpoint accepts a connection at all (a
    /// wrong port, or every node stopped), so that a command line fails fast instead of
    /// waiting out the whole `timeout`. Answers such as `unavailable` during an election
    /// count as contact and keep the call going until `timeout`.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Returns the endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Sends `body` as JSON to `path` (POST, or GET when `body` is `None`), failing over
    /// between endpoints on connection errors and `unavailable` answers.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Req>,
    ) -> Result<Resp, ClientError> {
        if self.endpoints.is_empty() {
            return Err(ClientError::Transport(
                "no endpoints given; pass --endpoints URL,URL".into(),
            ));
        }
        let deadline = Instant::now() + self.timeout;
        // The last time some endpoint answered (or the start of the call).
        let mut last_contact = Instant::now();
        let mut attempt = 0usize;
        let mut last_error;
        loop {
            let index = (self.preferred.load(Ordering::Relaxed) + attempt) % self.endpoints.len();
            let endpoint = &self.endpoints[index];
            let mut request = self
                .http
                .request(method.clone(), format!("{endpoint}{path}"));
            if let Some(body) = body {
                request = request.json(body);
            }
            let remaining = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100));
            match request.timeout(remaining).send().await {
                Ok(response) => {
                    last_contact = Instant::now();
                    let status = response.status();
                    let bytes = response.bytes().await.map_err(|e| {
                        ClientError::Transport(format!("reading reply from {endpoint}: {e}"))
                    })?;
                    if status.is_success() {
                        self.preferred.store(index, Ordering::Relaxed);
                        return serde_json::from_slice(&bytes).map_err(|e| {
                            ClientError::Transport(format!("unexpected reply from {endpoint}: {e}"))
                        });
                    }
                    let error: ApiError = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                        ApiError::new(
                            ErrorCode::Internal,
                            format!("status {status}: {}", String::from_utf8_lossy(&bytes)),
                        )
                    });
                    if error.code != ErrorCode::Unavailable {
                        return Err(ClientError::Api(error));
                    }
                    last_error = ClientError::Api(error);
                }
                Err(e) if e.is_connect() => {
                    last_error = ClientError::Transport(format!(
                        "cannot reach {endpoint}: is strata running there? ({e})"
                    ));
                }
                Err(e) => {
                    return Err(ClientError::Transport(format!(
                        "request to {endpoint} failed: {e}"
                    )))
                }
            }
            attempt += 1;
            let now = Instant::now();
            let unreachable_too_long = self
                .connect_timeout
                .is_some_and(|limit| now.duration_since(last_contact) >= limit);
            if now >= deadline || unreachable_too_long {
                return Err(last_error);
            }
            if attempt.is_multiple_of(self.endpoints.len()) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// POSTs JSON.
    pub async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
    ) -> Result<Resp, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// GETs JSON.
    pub async fn get_json<Resp: DeserializeOwned>(&self, path: &str) -> Result<Resp, ClientError> {
        self.call::<(), Resp>(Method::GET, path, None).await
    }

    /// Writes a key.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<PutResponse, ClientError> {
        let request = PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        };
        self.post("/v1/kv/put", &request).await
    }

    /// Reads one key's value (linearizable).
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>, ClientError> {
        let request = RangeRequest {
            key: key.into(),
            ..Default::default()
        };
        let response: RangeResponse = self.post("/v1/kv/range", &request).await?;
        Ok(response.kvs.into_iter().next().map(|kv| kv.value))
    }

    /// Opens a watch on one endpoint (trying each in turn) and returns its messages.
    pub async fn watch(&self, request: &WatchRequest) -> Result<WatchStream, ClientError> {
        self.stream("/v1/kv/watch", request).await
    }

    /// POSTs `request` to a server-sent-events route on one endpoint (trying each in turn)
    /// and returns the stream of JSON messages.
    pub async fn stream<Req: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        request: &Req,
    ) -> Result<SseStream<T>, ClientError> {
        self.open_stream(Method::POST, path, Some(request)).await
    }

    /// GETs a server-sent-events route on one endpoint (trying each in turn) and returns the
    /// stream of JSON messages.
    pub async fn stream_get<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<SseStream<T>, ClientError> {
        self.open_stream::<(), T>(Method::GET, path, None).await
    }

    async fn open_stream<Req: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        request: Option<&Req>,
    ) -> Result<SseStream<T>, ClientError> {
        let mut last_error = ClientError::Transport("no endpoints".into());
        for attempt in 0..self.endpoints.len() {
            let index = (self.preferred.load(Ordering::Relaxed) + attempt) % self.endpoints.len();
            let endpoint = &self.endpoints[index];
            let mut builder = self
                .http
                .request(method.clone(), format!("{endpoint}{path}"));
            if let Some(request) = request {
                builder = builder.json(request);
            }
            let response = match builder.send().await {
                Ok(response) => response,
                Err(e) => {
                    last_error = ClientError::Transport(format!("cannot reach {endpoint}: {e}"));
                    continue;
                }
            };
            if !response.status().is_success() {
                let bytes = response.bytes().await.unwrap_or_default();
                let error: ApiError = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                    ApiError::internal(String::from_utf8_lossy(&bytes).into_owned())
                });
                if error.code == ErrorCode::Unavailable {
                    last_error = ClientError::Api(error);
                    continue;
                }
                return Err(ClientError::Api(error));
            }
            self.preferred.store(index, Ordering::Relaxed);
            return Ok(SseStream {
                endpoint: endpoint.clone(),
                body: Box::pin(response.bytes_stream()),
                buffer: Vec::new(),
                _message: std::marker::PhantomData,
            });
        }
        Err(last_error)
    }
}

type ByteStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// A watch's messages.
pub type WatchStream = SseStream<WatchResponse>;

/// JSON messages parsed from server-sent events.
pub struct SseStream<T> {
    /// The endpoint serving the stream.
    pub endpoint: String,
    body: ByteStream,
    buffer: Vec<u8>,
    _message: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> SseStream<T> {
    /// Returns the next message, or `None` when the server closed the stream.
    pub async fn next(&mut self) -> Result<Option<T>, ClientError> {
        loop {
            if let Some(end) = find_event_end(&self.buffer) {
                let event: Vec<u8> = self.buffer.drain(..end).collect();
                let mut data = String::new();
                for line in String::from_utf8_lossy(&event).lines() {
                    if let Some(rest) = line.strip_prefix("data:") {
                        data.push_str(rest.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                let message = serde_json::from_str(&data).map_err(|e| {
                    ClientError::Transport(format!("bad stream message {data:?}: {e}"))
                })?;
                return Ok(Some(message));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(ClientError::Transport(format!(
                        "stream from {} broke: {e}",
                        self.endpoint
                    )))
                }
                None => return Ok(None),
            }
        }
    }
}

/// Returns the length of the first complete SSE event (through its blank line), if any.
fn find_event_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|w| w == b"\n\n").map(|p| p + 2)
}
