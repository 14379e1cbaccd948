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
    /// Sent as `Authorization: Bearer TOKEN` when access control is on.
    token: Option<String>,
}

static DEFAULT_TOKEN: std::sync::RwLock<Option<String>> = std::sync::RwLock::new(None);

/// Sets the token every [`Client`] made afterwards in this process sends (the CLI sets it once
/// from `STRATA_TOKEN` or the token `strata auth login` stored; a test harness sets the token
/// of the cluster it started).
pub fn set_default_token(token: Option<String>) {
    *DEFAULT_TOKEN.write().unwrap_or_else(|e| e.into_inner()) = token;
}

static DEFAULT_TLS: std::sync::RwLock<Option<strata_tls::rustls::ClientConfig>> =
    std::sync::RwLock::new(None);

/// Sets the TLS every [`Client`] made afterwards in this process uses for `https://`
/// endpoints: trust `ca` (else the system's roots) and present the certificate and key in
/// `identity` (a node maps its name to a user). Fails on a file that does not load.
pub fn set_default_tls(
    ca: Option<&std::path::Path>,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<(), String> {
    let config = strata_tls::client_config(ca, identity, &[b"http/1.1".as_slice()])
        .map_err(|e| e.to_string())?;
    *DEFAULT_TLS.write().unwrap_or_else(|e| e.into_inner()) = Some(config);
    Ok(())
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

/// What a user is told about the address the CLI needs.
const ENDPOINT_HINT: &str =
    "give the node's API address as http://HOST:PORT (strata dev prints it; default http://127.0.0.1:7700)";

/// Checks one endpoint as a user typed it and returns it as `scheme://host:port`, or says
/// what is wrong with it.
pub fn parse_endpoint(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!("an endpoint is empty; {ENDPOINT_HINT}"));
    }
    let full = match trimmed.split_once("://") {
        Some((scheme, _))
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            trimmed.to_string()
        }
        Some((scheme, _)) => {
            return Err(format!(
                "endpoint {trimmed:?} has the scheme {scheme:?}, not http or https; {ENDPOINT_HINT}"
            ))
        }
        None => format!("http://{trimmed}"),
    };
    let url = reqwest::Url::parse(&full).map_err(|e| {
        format!("endpoint {trimmed:?} is not a valid address ({e}); {ENDPOINT_HINT}")
    })?;
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "endpoint {trimmed:?} has a path ({:?}); give only scheme, host and port, the CLI adds /v1/... itself",
            url.path()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "endpoint {trimmed:?} carries credentials; give only scheme, host and port"
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// [`parse_endpoint`] for every endpoint of a list.
pub fn parse_endpoints(list: &[String]) -> Result<Vec<String>, String> {
    list.iter().map(|e| parse_endpoint(e)).collect()
}

/// Names the Strata listener behind a `strata-listener` response header, when it is not
/// the native API the client needs.
fn wrong_listener(endpoint: &str, headers: &reqwest::header::HeaderMap) -> Option<ClientError> {
    let kind = headers.get("strata-listener")?.to_str().ok()?;
    let what = match kind {
        "api" => return None,
        "raft" => "Strata's node-to-node raft listener (--raft-addr)",
        "consul" => "Strata's Consul-compatible API (--consul-addr)",
        "nacos" => "Strata's Nacos-compatible API (--nacos-addr)",
        "grpc" => "Strata's etcd v3 gRPC listener (--grpc-addr, for etcdctl and etcd clients)",
        _ => "a Strata listener other than the native API",
    };
    Some(ClientError::Transport(format!(
        "{endpoint} is {what}, not the native API; {ENDPOINT_HINT}"
    )))
}

/// An answer that is neither a result nor an API error: say it is not Strata's API.
fn not_the_api(endpoint: &str, status: reqwest::StatusCode, body: &[u8]) -> ClientError {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let shown = if text.is_empty() {
        String::new()
    } else {
        format!(" ({})", text.chars().take(120).collect::<String>())
    };
    ClientError::Transport(format!(
        "{endpoint} answered {status}{shown} but is not Strata's native API; {ENDPOINT_HINT}"
    ))
}

/// After a request failed below HTTP: if `endpoint` speaks only HTTP/2 (a gRPC listener such
/// as Strata's etcd v3 API), says so; otherwise returns `error` unchanged.
async fn explain_transport_error(endpoint: &str, error: String) -> ClientError {
    if speaks_only_http2(endpoint).await {
        return ClientError::Transport(format!(
            "{endpoint} speaks HTTP/2 only: it looks like Strata's etcd v3 gRPC listener (--grpc-addr, for etcdctl and etcd clients); {ENDPOINT_HINT}"
        ));
    }
    ClientError::Transport(error)
}

/// Sends the HTTP/2 connection preface and an empty SETTINGS frame and checks whether a
/// SETTINGS frame comes back, within 500 ms.
async fn speaks_only_http2(endpoint: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(url) = reqwest::Url::parse(endpoint) else {
        return false;
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return false;
    };
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .ok()?;
        let mut head = [0u8; 9];
        stream.read_exact(&mut head).await.ok()?;
        if head[3] != 0x04 {
            return Some(false);
        }
        // Strata's API speaks HTTP/2 too: only a listener that refuses HTTP/1.1 is gRPC's.
        let mut stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut status = [0u8; 5];
        let http1 = stream.read_exact(&mut status).await.is_ok() && &status == b"HTTP/";
        Some(!http1)
    };
    tokio::time::timeout(Duration::from_millis(500), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

impl Client {
    /// Creates a client; endpoints are `http://host:port` (scheme optional).
    pub fn new(endpoints: &[String]) -> Self {
        let mut builder = strata_tls::http_client_builder()
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        if let Some(tls) = DEFAULT_TLS
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            builder = builder.tls_backend_preconfigured(tls);
        }
        let http = builder
            .build()
            .expect("a reqwest client with plain settings and a built TLS config always builds");
        Client {
            endpoints: endpoints.iter().map(|e| normalize_endpoint(e)).collect(),
            http,
            preferred: AtomicUsize::new(0),
            timeout: Duration::from_secs(15),
            connect_timeout: None,
            token: DEFAULT_TOKEN
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Sends `token` with every request (`None`: none).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
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

    /// The token sent with every request, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The HTTP client behind it, with the process's TLS settings (for requests to the
    /// endpoints that [`Client::call`] does not make, such as an OTLP export).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
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
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
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
                    if let Some(error) = wrong_listener(endpoint, response.headers()) {
                        return Err(error);
                    }
                    let bytes = response.bytes().await.map_err(|e| {
                        ClientError::Transport(format!("reading reply from {endpoint}: {e}"))
                    })?;
                    if status.is_success() {
                        self.preferred.store(index, Ordering::Relaxed);
                        return serde_json::from_slice(&bytes).map_err(|e| {
                            ClientError::Transport(format!("unexpected reply from {endpoint}: {e}"))
                        });
                    }
                    let Ok(error) = serde_json::from_slice::<ApiError>(&bytes) else {
                        return Err(not_the_api(endpoint, status, &bytes));
                    };
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
                    return Err(explain_transport_error(
                        endpoint,
                        format!("request to {endpoint} failed: {e}"),
                    )
                    .await)
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

    /// GETs a route that answers with raw bytes (a backup) on one endpoint (trying each in
    /// turn) and returns the body as a stream of chunks.
    pub async fn download(&self, path: &str) -> Result<Download, ClientError> {
        let (endpoint, response) = self.open_response::<()>(Method::GET, path, None).await?;
        Ok(Download {
            endpoint,
            size: response.content_length(),
            body: Box::pin(response.bytes_stream()),
        })
    }

    async fn open_stream<Req: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        request: Option<&Req>,
    ) -> Result<SseStream<T>, ClientError> {
        let (endpoint, response) = self.open_response(method, path, request).await?;
        Ok(SseStream {
            endpoint,
            body: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
            _message: std::marker::PhantomData,
        })
    }

    /// Sends one request whose answer is read as a stream, on the first endpoint that takes
    /// it, and returns that endpoint and the successful response.
    async fn open_response<Req: Serialize>(
        &self,
        method: Method,
        path: &str,
        request: Option<&Req>,
    ) -> Result<(String, reqwest::Response), ClientError> {
        let mut last_error = ClientError::Transport("no endpoints".into());
        for attempt in 0..self.endpoints.len() {
            let index = (self.preferred.load(Ordering::Relaxed) + attempt) % self.endpoints.len();
            let endpoint = &self.endpoints[index];
            let mut builder = self
                .http
                .request(method.clone(), format!("{endpoint}{path}"));
            if let Some(token) = &self.token {
                builder = builder.bearer_auth(token);
            }
            if let Some(request) = request {
                builder = builder.json(request);
            }
            let response = match builder.send().await {
                Ok(response) => response,
                Err(e) if e.is_connect() => {
                    last_error = ClientError::Transport(format!("cannot reach {endpoint}: {e}"));
                    continue;
                }
                Err(e) => {
                    last_error =
                        explain_transport_error(endpoint, format!("cannot reach {endpoint}: {e}"))
                            .await;
                    continue;
                }
            };
            if let Some(error) = wrong_listener(endpoint, response.headers()) {
                return Err(error);
            }
            if !response.status().is_success() {
                let status = response.status();
                let bytes = response.bytes().await.unwrap_or_default();
                let Ok(error) = serde_json::from_slice::<ApiError>(&bytes) else {
                    return Err(not_the_api(endpoint, status, &bytes));
                };
                if error.code == ErrorCode::Unavailable {
                    last_error = ClientError::Api(error);
                    continue;
                }
                return Err(ClientError::Api(error));
            }
            self.preferred.store(index, Ordering::Relaxed);
            return Ok((endpoint.clone(), response));
        }
        Err(last_error)
    }
}

/// A body being downloaded: see [`Client::download`].
pub struct Download {
    /// The endpoint serving it.
    pub endpoint: String,
    /// Its length, when the server said.
    pub size: Option<u64>,
    body: ByteStream,
}

impl Download {
    /// The next chunk, or `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, ClientError> {
        use futures::StreamExt;
        match self.body.next().await {
            None => Ok(None),
            Some(Ok(chunk)) => Ok(Some(chunk)),
            Some(Err(e)) => Err(ClientError::Transport(format!(
                "download from {} broke off: {e}",
                self.endpoint
            ))),
        }
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
