//! Config-center workloads over Strata's native `/v1/config/` API.
//!
//! - `config-publish` ([`PublishDriver`]): the closed loop of [`crate::load`]; request `s`
//!   publishes a new version of data id `{prefix}{s mod configs}` whose content (of
//!   `value_size` bytes) starts with `s`, so every publish changes the md5.
//! - `config-get` ([`GetDriver`]): the closed loop over `GET /v1/config/get`; request `s`
//!   reads `{prefix}{s mod configs}`. [`ensure_configs`] publishes the configs that are missing
//!   first and waits until every endpoint's view has all of them. Reads are served from each
//!   node's in-memory view, so the client's own cost matters: by default each task owns one
//!   raw hyper HTTP/1.1 keep-alive connection ([`HttpConn`]) to one endpoint (task `i` to
//!   endpoint `i mod n`), with no pool and no failover; `--http client` uses
//!   `strata_client::Client` (reqwest) instead, for comparison.
//! - `config-listen` ([`listen`]): many long-polls (`POST /v1/config/listen`, one HTTP
//!   connection each) against one node, all holding the config's current md5; once the node's
//!   `strata_configcenter_listeners` gauge shows every one of them held, one publish, and for each
//!   listener the time from just before that publish left to its answer.
//!
//! Client task `i` of the closed loops talks to endpoint `i mod n` first, as in `put`.

use crate::load::Driver;
use crate::stats::{Latencies, Summary};
use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_client::{Client, ClientError};
use strata_proto::error::ErrorCode;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

// --- a raw HTTP/1.1 connection --------------------------------------------------------------

/// One HTTP/1.1 keep-alive connection driven by hyper's low-level client: no pool, no
/// failover, nothing per request beyond the request itself. Dropping it closes the connection.
pub struct HttpConn {
    sender: http1::SendRequest<Full<Bytes>>,
    /// Drives the connection; aborted on drop.
    driver: tokio::task::JoinHandle<()>,
    host: HeaderValue,
}

impl Drop for HttpConn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl std::fmt::Debug for HttpConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConn")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// Returns `HOST:PORT` of an API endpoint (`http://` optional; `https://` is refused).
pub fn authority_of(endpoint: &str) -> anyhow::Result<String> {
    let normalized = strata_client::normalize_endpoint(endpoint);
    let Some(rest) = normalized.strip_prefix("http://") else {
        bail!("{endpoint:?}: only http:// endpoints are supported");
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    if authority.is_empty() {
        bail!("{endpoint:?} names no host");
    }
    Ok(authority.to_string())
}

impl HttpConn {
    /// Connects to `authority` (`HOST:PORT`).
    pub async fn connect(authority: &str) -> anyhow::Result<HttpConn> {
        let stream = TcpStream::connect(authority)
            .await
            .with_context(|| format!("connect to {authority}"))?;
        stream.set_nodelay(true).context("set TCP_NODELAY")?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP handshake with {authority}"))?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(HttpConn {
            sender,
            driver,
            host: HeaderValue::from_str(authority).context("the authority as a Host header")?,
        })
    }

    /// Sends one request (a JSON body when `body` is given) and returns the answer's status
    /// and body.
    pub async fn send(
        &mut self,
        method: Method,
        uri: Uri,
        body: Option<Bytes>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        self.sender
            .ready()
            .await
            .context("the connection is closed")?;
        let json = body.is_some();
        let mut request = Request::new(Full::new(body.unwrap_or_default()));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(HOST, self.host.clone());
        if json {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let response = self
            .sender
            .send_request(request)
            .await
            .context("send the request")?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .context("read the answer")?
            .to_bytes();
        Ok((status, body))
    }
}

/// Fails unless `status` is a success, with the answer's body in the message.
fn expect_success(status: StatusCode, body: &[u8], what: &str) -> anyhow::Result<()> {
    if status.is_success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
    bail!("{what}: HTTP {status}: {}", text.trim_end())
}

/// How the closed-loop workloads send their requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HttpMode {
    /// One raw hyper HTTP/1.1 keep-alive connection per task, to one endpoint.
    Hyper,
    /// `strata_client::Client` (reqwest, its own pool) per task, over every endpoint with
    /// failover.
    Client,
}

impl HttpMode {
    /// The name printed in reports.
    pub fn name(self) -> &'static str {
        match self {
            HttpMode::Hyper => "hyper",
            HttpMode::Client => "client",
        }
    }
}

/// What one closed-loop task sends its requests through.
pub enum Conn {
    /// A raw connection to `authority`, (re)opened on first use and after a failure.
    Hyper {
        /// `HOST:PORT` of the task's endpoint.
        authority: String,
        /// The open connection, if any.
        conn: Option<HttpConn>,
    },
    /// A `strata_client::Client` over every endpoint.
    Client(Client),
}

impl Conn {
    /// Builds task `client_index`'s handle: endpoint `client_index mod n` first.
    fn new(mode: HttpMode, endpoints: &[String], client_index: usize, timeout: Duration) -> Conn {
        let endpoints = rotated(endpoints, client_index);
        match mode {
            HttpMode::Hyper => Conn::Hyper {
                // Checked by `authorities` before any task is built.
                authority: authority_of(&endpoints[0]).unwrap_or_default(),
                conn: None,
            },
            HttpMode::Client => Conn::Client(Client::new(&endpoints).with_timeout(timeout)),
        }
    }

    /// Sends one request over the raw connection, bounded by `timeout`; a failure closes the
    /// connection so the next request opens a fresh one.
    async fn send_raw(
        authority: &str,
        slot: &mut Option<HttpConn>,
        method: Method,
        uri: Uri,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> anyhow::Result<Bytes> {
        let what = format!("{method} {uri} on {authority}");
        let attempt = async {
            if slot.is_none() {
                *slot = Some(HttpConn::connect(authority).await?);
            }
            let conn = slot.as_mut().context("no connection")?;
            conn.send(method, uri, body).await
        };
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(anyhow::anyhow!("no answer within {timeout:?}")),
        };
        match result {
            Ok((status, body)) => {
                expect_success(status, &body, &what)?;
                Ok(body)
            }
            Err(error) => {
                *slot = None;
                Err(error.context(what))
            }
        }
    }
}

/// Returns `endpoints` rotated left by `index`, so task `index` starts at endpoint
/// `index mod n`.
fn rotated(endpoints: &[String], index: usize) -> Vec<String> {
    let mut rotated = endpoints.to_vec();
    let by = index % rotated.len().max(1);
    rotated.rotate_left(by);
    rotated
}

/// Checks that every endpoint can be reached with a raw connection.
pub fn check_endpoints(endpoints: &[String]) -> anyhow::Result<()> {
    if endpoints.is_empty() {
        bail!("--endpoints needs at least one endpoint");
    }
    for endpoint in endpoints {
        authority_of(endpoint)?;
    }
    Ok(())
}

// --- names and bodies -----------------------------------------------------------------------

/// Which configs a workload touches: `{prefix}{j}` for j in 0..configs.
#[derive(Debug, Clone)]
pub struct ConfigSet {
    /// Namespace, or the server's default.
    pub namespace: Option<String>,
    /// Group, or the server's default.
    pub group: Option<String>,
    /// Data id `j` is `{prefix}{j}`.
    pub prefix: String,
    /// How many configs.
    pub configs: u64,
}

impl ConfigSet {
    /// Data id of request `sequence`.
    pub fn data_id(&self, sequence: u64) -> String {
        format!("{}{}", self.prefix, sequence % self.configs.max(1))
    }

    /// `GET /v1/config/get` path and query of data id `data_id`.
    fn get_path(&self, data_id: &str) -> String {
        let mut query = form_pairs(&[("data_id", Some(data_id))]);
        append_names(&mut query, self.namespace.as_deref(), self.group.as_deref());
        format!("/v1/config/get?{query}")
    }

    /// The JSON body of a publish of `content` to `data_id`.
    fn publish_body(&self, data_id: &str, content: String) -> PublishBody {
        PublishBody {
            namespace: self.namespace.clone(),
            group: self.group.clone(),
            data_id: data_id.to_string(),
            content,
        }
    }
}

/// Appends `&namespace=..&group=..` for the names that are set.
fn append_names(query: &mut String, namespace: Option<&str>, group: Option<&str>) {
    let more = form_pairs(&[("namespace", namespace), ("group", group)]);
    if !more.is_empty() {
        query.push('&');
        query.push_str(&more);
    }
}

/// `k=v&k=v` of the pairs with a value; names here are `[A-Za-z0-9._:-]`, which need no
/// escaping, so values are checked rather than encoded.
fn form_pairs(pairs: &[(&str, Option<&str>)]) -> String {
    pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join("&")
}

/// Fails unless `name` is 1-256 characters of `a-z A-Z 0-9 - _ . :` (the config center's
/// alphabet, which also needs no escaping in a query string).
pub fn check_name(name: &str, flag: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if !valid {
        bail!("{flag} {name:?}: use 1-256 characters of a-z A-Z 0-9 - _ . :");
    }
    Ok(())
}

/// What a client sends to `POST /v1/config/publish`.
#[derive(Debug, Serialize)]
struct PublishBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    data_id: String,
    content: String,
}

/// The parts of a publish answer the workloads read.
#[derive(Debug, Deserialize)]
struct Published {
    version: u64,
}

/// The parts of a `GET /v1/config/get` answer the workloads read.
#[derive(Debug, Deserialize)]
struct Served {
    md5: String,
    version: u64,
}

/// Content of `value_size` bytes (at least the digits of `sequence`) that starts with
/// `sequence`, so each publish has its own md5.
pub fn content_of(sequence: u64, value_size: usize) -> String {
    let mut content = format!("{sequence:012}-");
    let mut i = 0;
    while content.len() < value_size {
        content.push((b'a' + (i % 26) as u8) as char);
        i += 1;
    }
    content.truncate(value_size.max(12));
    content
}

// --- config-publish -------------------------------------------------------------------------

/// `config-publish` as a [`Driver`].
#[derive(Debug)]
pub struct PublishDriver {
    /// The configs written, round-robin by sequence number.
    pub set: ConfigSet,
    /// Bytes of content per publish.
    pub value_size: usize,
    /// API endpoints.
    pub endpoints: Vec<String>,
    /// How each task sends its requests.
    pub mode: HttpMode,
    /// Per-request timeout.
    pub request_timeout: Duration,
}

/// Publishes `content` to `data_id` through `conn`; returns the new version.
async fn publish_through(
    conn: &mut Conn,
    set: &ConfigSet,
    data_id: &str,
    content: String,
    timeout: Duration,
) -> anyhow::Result<u64> {
    let body = set.publish_body(data_id, content);
    let published: Published = match conn {
        Conn::Hyper { authority, conn } => {
            let json = Bytes::from(serde_json::to_vec(&body)?);
            let uri = Uri::from_static("/v1/config/publish");
            let answer =
                Conn::send_raw(authority, conn, Method::POST, uri, Some(json), timeout).await?;
            serde_json::from_slice(&answer).context("decode the publish answer")?
        }
        Conn::Client(client) => client
            .post("/v1/config/publish", &body)
            .await
            .with_context(|| format!("publish {data_id}"))?,
    };
    Ok(published.version)
}

impl Driver for PublishDriver {
    type Client = Conn;

    fn client(&self, client_index: usize) -> Conn {
        Conn::new(
            self.mode,
            &self.endpoints,
            client_index,
            self.request_timeout,
        )
    }

    /// Lists an empty namespace: opens the connection, changes nothing, costs nothing even
    /// when earlier runs left many configs behind.
    async fn warm_up(&self, conn: &mut Conn, _client_index: usize) -> anyhow::Result<()> {
        const PATH: &str = "/v1/config/list?namespace=bench-warm-up";
        match conn {
            Conn::Hyper { authority, conn } => {
                let uri = Uri::from_static(PATH);
                Conn::send_raw(
                    authority,
                    conn,
                    Method::GET,
                    uri,
                    None,
                    self.request_timeout,
                )
                .await?;
            }
            Conn::Client(client) => {
                let _: serde_json::Value = client.get_json(PATH).await?;
            }
        }
        Ok(())
    }

    async fn issue(&self, conn: &mut Conn, sequence: u64) -> anyhow::Result<()> {
        let data_id = self.set.data_id(sequence);
        let content = content_of(sequence, self.value_size);
        publish_through(conn, &self.set, &data_id, content, self.request_timeout).await?;
        Ok(())
    }
}

// --- config-get -----------------------------------------------------------------------------

/// `config-get` as a [`Driver`]. The request of every config is built once.
#[derive(Debug)]
pub struct GetDriver {
    /// `GET /v1/config/get` of config `j`, for j in 0..configs.
    uris: Vec<Uri>,
    /// The same as strings, for `--http client`.
    paths: Vec<String>,
    /// API endpoints.
    endpoints: Vec<String>,
    /// How each task sends its requests.
    mode: HttpMode,
    /// Per-request timeout.
    request_timeout: Duration,
}

impl GetDriver {
    /// Builds the driver for the configs of `set`.
    pub fn new(
        set: &ConfigSet,
        endpoints: Vec<String>,
        mode: HttpMode,
        request_timeout: Duration,
    ) -> anyhow::Result<GetDriver> {
        let paths: Vec<String> = (0..set.configs)
            .map(|j| set.get_path(&set.data_id(j)))
            .collect();
        let uris = paths
            .iter()
            .map(|p| p.parse::<Uri>().with_context(|| format!("parse {p}")))
            .collect::<anyhow::Result<_>>()?;
        Ok(GetDriver {
            uris,
            paths,
            endpoints,
            mode,
            request_timeout,
        })
    }
}

impl Driver for GetDriver {
    type Client = Conn;

    fn client(&self, client_index: usize) -> Conn {
        Conn::new(
            self.mode,
            &self.endpoints,
            client_index,
            self.request_timeout,
        )
    }

    async fn warm_up(&self, conn: &mut Conn, client_index: usize) -> anyhow::Result<()> {
        self.issue(conn, client_index as u64).await
    }

    /// Reads config `sequence mod configs` and checks the answer names a version.
    async fn issue(&self, conn: &mut Conn, sequence: u64) -> anyhow::Result<()> {
        let j = (sequence % self.uris.len() as u64) as usize;
        let served: Served = match conn {
            Conn::Hyper { authority, conn } => {
                let uri = self.uris[j].clone();
                let timeout = self.request_timeout;
                let body = Conn::send_raw(authority, conn, Method::GET, uri, None, timeout).await?;
                serde_json::from_slice(&body).context("decode the config")?
            }
            Conn::Client(client) => client.get_json(&self.paths[j]).await?,
        };
        if served.version == 0 {
            bail!("{} answered version 0", self.paths[j]);
        }
        Ok(())
    }
}

/// Publishes the configs of `set` that do not exist yet (`value_size` bytes each), then waits
/// until every endpoint's view lists all of them. Returns how many it published.
pub async fn ensure_configs(
    set: &ConfigSet,
    endpoints: &[String],
    value_size: usize,
    timeout: Duration,
) -> anyhow::Result<u64> {
    const SETUP_TASKS: u64 = 16;
    let set = Arc::new(set.clone());
    let mut tasks = JoinSet::new();
    for task in 0..SETUP_TASKS {
        let set = Arc::clone(&set);
        let client = Client::new(&rotated(endpoints, task as usize)).with_timeout(timeout);
        tasks.spawn(async move {
            let mut created = 0u64;
            let mut j = task;
            while j < set.configs {
                let data_id = set.data_id(j);
                match client.get_json::<Served>(&set.get_path(&data_id)).await {
                    Ok(_) => {}
                    Err(error) if error.code() == Some(ErrorCode::NotFound) => {
                        let body = set.publish_body(&data_id, content_of(j, value_size));
                        let _: Published = client
                            .post("/v1/config/publish", &body)
                            .await
                            .with_context(|| format!("publish {data_id}"))?;
                        created += 1;
                    }
                    Err(error) => {
                        return Err(anyhow::Error::new(error).context(format!("read {data_id}")))
                    }
                }
                j += SETUP_TASKS;
            }
            anyhow::Ok(created)
        });
    }
    let mut created = 0;
    while let Some(joined) = tasks.join_next().await {
        created += joined??;
    }

    // Reads are local: wait until each node's view has every config.
    let wanted: HashSet<String> = (0..set.configs).map(|j| set.data_id(j)).collect();
    let mut query = form_pairs(&[("prefix", Some(&set.prefix))]);
    append_names(&mut query, set.namespace.as_deref(), set.group.as_deref());
    let path = format!("/v1/config/list?{query}");
    for endpoint in endpoints {
        let client = Client::new(std::slice::from_ref(endpoint)).with_timeout(timeout);
        let deadline = Instant::now() + timeout;
        loop {
            let listed: Vec<serde_json::Value> = client
                .get_json(&path)
                .await
                .with_context(|| format!("list the configs on {endpoint}"))?;
            let seen = listed
                .iter()
                .filter_map(|s| s.get("data_id").and_then(|d| d.as_str()))
                .filter(|d| wanted.contains(*d))
                .count();
            if seen == wanted.len() {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "{endpoint} lists {seen} of the {} configs after {timeout:?}",
                    wanted.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(created)
}

// --- config-listen --------------------------------------------------------------------------

/// The shape of one `config-listen` run.
#[derive(Debug, Clone)]
pub struct ListenPlan {
    /// The node every long-poll goes to.
    pub endpoint: String,
    /// Where the change is published (default: `endpoint`).
    pub publish_endpoint: String,
    /// Concurrent long-polls, one connection each.
    pub listeners: usize,
    /// The config they listen to.
    pub namespace: Option<String>,
    /// Its group.
    pub group: Option<String>,
    /// Its data id.
    pub data_id: String,
    /// Bytes of the published content.
    pub value_size: usize,
    /// The `timeout` each long-poll asks for (the server holds at most 120 s).
    pub poll_timeout: Duration,
    /// Longest wait for every long-poll to be held.
    pub open_timeout: Duration,
    /// Long-polls on their way at once: sent (or connecting) but not yet counted by the
    /// node's gauge.
    pub open_window: usize,
    /// How long to keep them all held before publishing.
    pub hold: Duration,
    /// Written (with the number held) once every long-poll is held, for scripts.
    pub ready_file: Option<PathBuf>,
    /// Longest wait after the publish for every answer.
    pub delivery_timeout: Duration,
    /// Longest wait for the publish and the setup requests.
    pub request_timeout: Duration,
}

/// What a `config-listen` run measured.
#[derive(Debug)]
pub struct ListenOutcome {
    /// Listeners answered with the change after the publish.
    pub notified: u64,
    /// Listeners answered with nothing changed (the server's hold timed out).
    pub timed_out: u64,
    /// Listeners not answered within the delivery timeout.
    pub unanswered: u64,
    /// Listeners answered with a change before the publish (they held a stale md5).
    pub early: u64,
    /// Listeners that failed (connect, send or a bad answer).
    pub failed: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// Long-polls the node's gauge showed held (above its count before the run).
    pub held: u64,
    /// From the first connection to every long-poll held.
    pub open_elapsed: Duration,
    /// From the first connection to every connection open (or failed).
    pub connect_elapsed: Option<Duration>,
    /// This process's resident memory while every long-poll was held, in MiB.
    pub client_rss_mib: Option<f64>,
    /// The publish's own latency.
    pub publish_latency: Duration,
    /// The version the publish created.
    pub version: u64,
    /// From just before the publish to the last answer (or the delivery timeout).
    pub elapsed: Duration,
    /// Notification latency: just before the publish to each listener's answer.
    pub latency: Option<Summary>,
}

/// The answer of `POST /v1/config/listen`.
#[derive(Debug, Deserialize)]
struct Changed {
    changed: Vec<serde_json::Value>,
}

/// How one long-poll ended.
#[derive(Debug)]
enum PollEnd {
    /// Answered at this moment; `true` when the answer names a change.
    Answered(Instant, bool),
    /// Failed before or after it was sent.
    Failed(String),
}

/// Value of the gauge `name` in a Prometheus text exposition (summed over its label sets,
/// such as `{node_id="2"}`), if present.
pub fn gauge_value(text: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if let Some(labelled) = rest.strip_prefix('{') {
            labelled.split_once('}').map(|(_, value)| value)
        } else {
            rest.starts_with(' ').then_some(rest)
        };
        if let Some(value) = value.and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()) {
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}

/// Reads `strata_configcenter_listeners` from the node at `authority`, over `slot`'s connection
/// (opened when there is none, closed after a failure).
async fn listeners_gauge(
    authority: &str,
    slot: &mut Option<HttpConn>,
    timeout: Duration,
) -> anyhow::Result<u64> {
    let uri = Uri::from_static("/metrics");
    let body = Conn::send_raw(authority, slot, Method::GET, uri, None, timeout).await?;
    let text = String::from_utf8_lossy(&body);
    let value = gauge_value(&text, "strata_configcenter_listeners")
        .context("no strata_configcenter_listeners in /metrics")?;
    Ok(value.max(0.0) as u64)
}

/// Resident memory of this process in MiB, from `/proc/self/status`.
fn own_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((kib / 1024.0 * 10.0).round() / 10.0)
}

/// Returns the md5 `client` reads for `data_id` (through `path`), or `None` if it does not
/// exist.
async fn current_md5(client: &Client, path: &str) -> anyhow::Result<Option<Served>> {
    match client.get_json::<Served>(path).await {
        Ok(served) => Ok(Some(served)),
        Err(ClientError::Api(e)) if e.code == ErrorCode::NotFound => Ok(None),
        Err(error) => Err(anyhow::Error::new(error).context(format!("GET {path}"))),
    }
}

/// Runs one long-poll fan-out under `plan`.
pub async fn listen(plan: &ListenPlan) -> anyhow::Result<ListenOutcome> {
    if plan.listeners == 0 {
        bail!("--listeners must be at least 1");
    }
    if plan.open_window == 0 {
        bail!("--open-window must be at least 1");
    }
    let authority = authority_of(&plan.endpoint)?;
    let set = ConfigSet {
        namespace: plan.namespace.clone(),
        group: plan.group.clone(),
        prefix: String::new(),
        configs: 1,
    };
    let get_path = set.get_path(&plan.data_id);
    let reader =
        Client::new(std::slice::from_ref(&plan.endpoint)).with_timeout(plan.request_timeout);
    let writer = Client::new(std::slice::from_ref(&plan.publish_endpoint))
        .with_timeout(plan.request_timeout);
    let stamp = crate::registry::unix_nanos() as u64;

    // 1. The config exists and the listening node has it: its md5 is what every listener holds.
    if current_md5(&reader, &get_path).await?.is_none() {
        let body = set.publish_body(&plan.data_id, content_of(stamp, plan.value_size));
        let _: Published = writer
            .post("/v1/config/publish", &body)
            .await
            .with_context(|| format!("create {}", plan.data_id))?;
    }
    let deadline = Instant::now() + plan.request_timeout;
    let held_md5 = loop {
        if let Some(served) = current_md5(&reader, &get_path).await? {
            break served.md5;
        }
        if Instant::now() >= deadline {
            bail!("{} never saw {} appear", plan.endpoint, plan.data_id);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut metrics_conn = None;
    let baseline = listeners_gauge(&authority, &mut metrics_conn, plan.request_timeout).await?;

    // 2. Open every long-poll. A task may connect only with a permit, and permits are granted
    //    (step 3) so that at most `open_window` long-polls are on their way (sent, or in the
    //    node's accept queue, but not yet counted by its gauge) at any time.
    let body = Bytes::from(serde_json::to_vec(&serde_json::json!({
        "configs": [{
            "namespace": plan.namespace,
            "group": plan.group,
            "data_id": plan.data_id,
            "md5": held_md5,
        }],
        "timeout": humantime::format_duration(plan.poll_timeout).to_string(),
    }))?);
    let permits = Arc::new(Semaphore::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let open_failed = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(AtomicU64::new(0));
    let open_started = Instant::now();
    let mut polls = JoinSet::new();
    for _ in 0..plan.listeners {
        let authority = authority.clone();
        let body = body.clone();
        let permits = Arc::clone(&permits);
        let finished = Arc::clone(&finished);
        let open_failed = Arc::clone(&open_failed);
        let opened = Arc::clone(&opened);
        polls.spawn(async move {
            let end = async {
                permits
                    .acquire()
                    .await
                    .context("semaphore closed")?
                    .forget();
                let mut conn = match HttpConn::connect(&authority).await {
                    Ok(conn) => conn,
                    Err(error) => {
                        open_failed.fetch_add(1, Ordering::AcqRel);
                        return Err(error);
                    }
                };
                opened.fetch_add(1, Ordering::AcqRel);
                let uri = Uri::from_static("/v1/config/listen");
                let (status, answer) = conn.send(Method::POST, uri, Some(body)).await?;
                let answered = Instant::now();
                expect_success(status, &answer, "POST /v1/config/listen")?;
                let changed: Changed =
                    serde_json::from_slice(&answer).context("decode the listen answer")?;
                anyhow::Ok(PollEnd::Answered(answered, !changed.changed.is_empty()))
            };
            let end = end
                .await
                .unwrap_or_else(|error| PollEnd::Failed(format!("{error:#}")));
            finished.fetch_add(1, Ordering::AcqRel);
            end
        });
    }

    // 3. Grant permits as the node's gauge counts long-polls held, until it holds every one
    //    that is still open (bounded in time).
    let target = plan.listeners as u64;
    let window = plan.open_window as u64;
    let open_deadline = open_started + plan.open_timeout;
    let mut granted = 0u64;
    let mut held;
    let mut connect_elapsed = None;
    loop {
        held = listeners_gauge(&authority, &mut metrics_conn, plan.request_timeout)
            .await?
            .saturating_sub(baseline);
        let done = finished.load(Ordering::Acquire);
        let allowed = (held + done + window).min(target);
        if allowed > granted {
            permits.add_permits((allowed - granted) as usize);
            granted = allowed;
        }
        let all_tried = opened.load(Ordering::Acquire) + open_failed.load(Ordering::Acquire);
        if all_tried >= target && connect_elapsed.is_none() {
            connect_elapsed = Some(open_started.elapsed());
        }
        if all_tried >= target && held + done >= target {
            break;
        }
        if Instant::now() >= open_deadline {
            eprintln!(
                "config-listen: only {held} of {target} long-polls held after {:?} \
                 ({done} finished, {} failed to connect); publishing anyway",
                plan.open_timeout,
                open_failed.load(Ordering::Acquire)
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(metrics_conn);
    let open_elapsed = open_started.elapsed();
    let client_rss_mib = own_rss_mib();
    if let Some(path) = &plan.ready_file {
        std::fs::write(path, format!("{held}\n"))
            .with_context(|| format!("write {}", path.display()))?;
    }
    tokio::time::sleep(plan.hold).await;

    // 4. One change; t0 is taken just before it leaves.
    let body = set.publish_body(
        &plan.data_id,
        content_of(stamp.wrapping_add(1), plan.value_size),
    );
    let t0 = Instant::now();
    let published: Published = writer
        .post("/v1/config/publish", &body)
        .await
        .with_context(|| format!("publish a change of {}", plan.data_id))?;
    let publish_latency = t0.elapsed();

    // 5. Every answer, until the delivery timeout; the rest are counted unanswered.
    let delivery_deadline = tokio::time::Instant::now() + plan.delivery_timeout;
    let mut latencies = Latencies::default();
    let mut outcome = ListenOutcome {
        notified: 0,
        timed_out: 0,
        unanswered: 0,
        early: 0,
        failed: 0,
        first_error: None,
        held,
        open_elapsed,
        connect_elapsed,
        client_rss_mib,
        publish_latency,
        version: published.version,
        elapsed: Duration::ZERO,
        latency: None,
    };
    let mut last_answer = t0;
    let mut joined_count = 0u64;
    loop {
        let joined = match tokio::time::timeout_at(delivery_deadline, polls.join_next()).await {
            Ok(Some(joined)) => joined,
            Ok(None) => break,
            Err(_) => break,
        };
        joined_count += 1;
        match joined.context("a listener task panicked")? {
            PollEnd::Answered(at, true) if at >= t0 => {
                latencies.record(at - t0);
                outcome.notified += 1;
                last_answer = last_answer.max(at);
            }
            PollEnd::Answered(_, true) => outcome.early += 1,
            PollEnd::Answered(_, false) => outcome.timed_out += 1,
            PollEnd::Failed(message) => {
                outcome.failed += 1;
                outcome.first_error.get_or_insert(message);
            }
        }
    }
    outcome.unanswered = target - joined_count;
    // Closes every connection still open.
    polls.shutdown().await;
    outcome.elapsed = if outcome.unanswered > 0 {
        plan.delivery_timeout
    } else {
        last_answer - t0
    };
    outcome.latency = latencies.summary();
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_has_the_size_and_starts_with_the_sequence() {
        let c = content_of(42, 256);
        assert_eq!(c.len(), 256);
        assert!(c.starts_with("000000000042-"));
        assert_ne!(c, content_of(43, 256));
        // Never shorter than the sequence itself.
        assert_eq!(content_of(7, 4), "000000000007");
    }

    #[test]
    fn config_sets_spread_requests_and_build_paths() {
        let set = ConfigSet {
            namespace: None,
            group: Some("G".to_string()),
            prefix: "bench-".to_string(),
            configs: 1000,
        };
        assert_eq!(set.data_id(1234), "bench-234");
        assert_eq!(
            set.get_path("bench-1"),
            "/v1/config/get?data_id=bench-1&group=G"
        );
        let body = serde_json::to_value(set.publish_body("bench-1", "x".into())).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"group": "G", "data_id": "bench-1", "content": "x"})
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("bench-1.a:b_c", "--x").is_ok());
        assert!(check_name("", "--x").is_err());
        assert!(check_name("a b", "--x").is_err());
        assert!(check_name("a&b", "--x").is_err());
    }

    #[test]
    fn authorities_come_from_endpoints() {
        assert_eq!(authority_of("127.0.0.1:7700").unwrap(), "127.0.0.1:7700");
        assert_eq!(
            authority_of("http://127.0.0.1:7700/").unwrap(),
            "127.0.0.1:7700"
        );
        assert!(authority_of("https://a:1").is_err());
    }

    #[test]
    fn gauges_parse_from_the_exposition() {
        let text = "# HELP strata_configcenter_listeners Open\n\
                    # TYPE strata_configcenter_listeners gauge\n\
                    strata_configcenter_listeners{node_id=\"2\"} 10003\n\
                    strata_configcenter_listeners_other 5\n\
                    strata_configcenter_configs 7\n";
        assert_eq!(
            gauge_value(text, "strata_configcenter_listeners"),
            Some(10003.0)
        );
        assert_eq!(gauge_value(text, "strata_configcenter_configs"), Some(7.0));
        assert_eq!(gauge_value(text, "strata_configcenter_other"), None);
    }

    #[test]
    fn tasks_start_at_successive_endpoints() {
        let endpoints = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(rotated(&endpoints, 4), ["b", "c", "a"]);
    }
}
