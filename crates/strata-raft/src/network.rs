//! Node-to-node transport: Raft RPCs as HTTP/1.1 POSTs with postcard bodies, and appends over
//! one long-lived connection per peer.
//!
//! Routes (on the raft listener): `POST /raft/append`, `POST /raft/vote`, `POST /raft/snapshot`,
//! and `POST /raft/stream`, which upgrades its connection (`Upgrade: strata-raft`) to a stream
//! of length-prefixed append requests and replies (see [`FrameStream`]). Appends go over the
//! stream; a peer of an older build without the route gets them as POSTs.
//! Every call carries the deadline openraft gives it (`RPCOption::hard_ttl`); a connection
//! that cannot be made is reported as `Unreachable`, so openraft backs off instead of spinning.

use crate::{NodeId, Raft, SnapshotData, SnapshotSends, TypeConfig};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures::StreamExt;
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Snapshot, SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strata_proto::NodeInfo;

/// How long a whole-snapshot transfer may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a node-to-node call failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No connection could be made (peer down or address wrong).
    #[error("peer {addr} unreachable: {message}")]
    Unreachable {
        /// The peer's address.
        addr: String,
        /// What the connection attempt said.
        message: String,
    },
    /// The call was sent but failed or timed out; it may or may not have taken effect.
    #[error("call to {addr} failed: {message}")]
    Failed {
        /// The peer's address.
        addr: String,
        /// What went wrong.
        message: String,
    },
}

/// Fault injection for tests: peers this node must not talk to, as if the network between
/// them were cut. Only reachable through `POST /internal/fault/partition`, which a node serves
/// only when started with `STRATA_FAULT_INJECTION=1`; empty otherwise.
static CUT_OFF: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Cuts this node off from the peers at `addrs` (raft addresses): every node-to-node call
/// to them fails as unreachable until the list is replaced. An empty list heals.
pub fn set_cut_off_peers(addrs: Vec<String>) {
    *CUT_OFF.write().unwrap_or_else(|e| e.into_inner()) = addrs;
}

fn is_cut_off(addr: &str) -> bool {
    CUT_OFF
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|peer| peer == addr)
}

/// For how long after start-up a peer that cannot be reached is expected (it may still be
/// starting): reported at INFO instead of WARN.
const STARTUP_GRACE: Duration = Duration::from_secs(15);

/// Peers whose calls are failing, and since when; one line when a peer stops answering and
/// one when it answers again, instead of one per failed call (openraft's own per-call
/// network errors are filtered out of the default log for that reason).
static UNREACHABLE: std::sync::Mutex<Vec<(String, std::time::Instant)>> =
    std::sync::Mutex::new(Vec::new());
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn note_peer(addr: &str, failure: Option<&TransportError>) {
    let started = *STARTED.get_or_init(std::time::Instant::now);
    let mut down = UNREACHABLE.lock().unwrap_or_else(|e| e.into_inner());
    let known = down.iter().position(|(peer, _)| peer == addr);
    match (failure, known) {
        (Some(error), None) => {
            down.push((addr.to_string(), std::time::Instant::now()));
            if started.elapsed() < STARTUP_GRACE {
                tracing::info!(
                    peer = addr,
                    "peer not reachable yet (it may still be starting): {error}"
                );
            } else {
                tracing::warn!(peer = addr, "peer unreachable: {error}; retrying");
            }
        }
        (None, Some(index)) => {
            let (_, since) = down.swap_remove(index);
            tracing::info!(
                peer = addr,
                after_ms = since.elapsed().as_millis() as u64,
                "peer reachable again"
            );
        }
        _ => {}
    }
}

/// How this node calls its peers: plain HTTP, or HTTPS presenting the node's certificate and
/// trusting only the cluster CA (mutual TLS: the raft listener asks for the same), rebuilt
/// when the files change so certificates rotate without a restart. Cheap to clone.
#[derive(Clone, Debug)]
pub enum PeerClient {
    /// Plain HTTP.
    Plain(reqwest::Client),
    /// Mutual TLS.
    Tls(Arc<strata_tls::Reloading<reqwest::Client>>),
}

/// The settings of every peer client, plain or TLS.
fn peer_settings(builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
    builder
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60))
}

impl PeerClient {
    /// Plain HTTP to peers.
    pub fn plain() -> PeerClient {
        PeerClient::Plain(
            peer_settings(strata_tls::http_client_builder())
                .build()
                .expect("a reqwest client with plain settings always builds"),
        )
    }

    /// HTTPS to peers with the node's certificate; `files.ca` (the cluster CA) is required.
    pub fn mutual_tls(files: strata_tls::TlsFiles) -> Result<PeerClient, strata_tls::TlsError> {
        let Some(ca) = files.ca.clone() else {
            return Err(strata_tls::TlsError::Config(
                "peer TLS needs the cluster CA (peer_tls.ca_file, --peer-tls-ca)".into(),
            ));
        };
        let paths = vec![files.cert.clone(), files.key.clone(), ca.clone()];
        let reloading = strata_tls::Reloading::new("peers", paths, move || {
            let builder = strata_tls::https_client_builder(
                Some(&ca),
                Some((files.cert.as_path(), files.key.as_path())),
            )?;
            peer_settings(builder)
                .build()
                .map_err(|e| strata_tls::TlsError::Config(format!("peer client: {e}")))
        })?;
        Ok(PeerClient::Tls(reloading))
    }

    /// The files' watcher, when there are files.
    pub fn reloading(&self) -> Option<Arc<strata_tls::Reloading<reqwest::Client>>> {
        match self {
            PeerClient::Plain(_) => None,
            PeerClient::Tls(reloading) => Some(reloading.clone()),
        }
    }

    /// A POST to `path` on the peer listener at `addr`, over this client's transport.
    pub fn post(&self, addr: &str, path: &str) -> reqwest::RequestBuilder {
        match self {
            PeerClient::Plain(client) => client.post(format!("http://{addr}{path}")),
            PeerClient::Tls(reloading) => reloading.get().post(format!("https://{addr}{path}")),
        }
    }
}

/// Posts a postcard-encoded request to `{addr}{path}` over HTTP or HTTPS and decodes the reply.
pub async fn post_postcard<Req: Serialize, Resp: DeserializeOwned>(
    client: &PeerClient,
    addr: &str,
    path: &str,
    request: &Req,
    timeout: Duration,
) -> Result<Resp, TransportError> {
    let result = post_postcard_once(client, addr, path, request, timeout).await;
    note_outcome(addr, &result);
    result
}

/// Notes a call's outcome for the peer's reachability ([`note_peer`]): an answer means it is
/// up; an unreachable peer or a timed-out call means it is not; other failures say nothing.
fn note_outcome<T>(addr: &str, result: &Result<T, TransportError>) {
    match result {
        Ok(_) => note_peer(addr, None),
        Err(error @ TransportError::Unreachable { .. }) => note_peer(addr, Some(error)),
        Err(error @ TransportError::Failed { message, .. }) if message.contains("timed out") => {
            note_peer(addr, Some(error))
        }
        Err(_) => {}
    }
}

async fn post_postcard_once<Req: Serialize, Resp: DeserializeOwned>(
    client: &PeerClient,
    addr: &str,
    path: &str,
    request: &Req,
    timeout: Duration,
) -> Result<Resp, TransportError> {
    let body = postcard::to_allocvec(request).map_err(|e| TransportError::Failed {
        addr: addr.to_string(),
        message: format!("encode: {e}"),
    })?;
    let response = post_body(client, addr, path, body.into(), timeout).await?;
    decode_reply(addr, response).await
}

/// Posts `body` to `{addr}{path}` (unless fault injection cut the peer off).
async fn post_body(
    client: &PeerClient,
    addr: &str,
    path: &str,
    body: reqwest::Body,
    timeout: Duration,
) -> Result<reqwest::Response, TransportError> {
    if is_cut_off(addr) {
        return Err(TransportError::Unreachable {
            addr: addr.to_string(),
            message: "cut off by fault injection".into(),
        });
    }
    client
        .post(addr, path)
        .timeout(timeout)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .map_err(|e| send_error(addr, e))
}

/// A request that could not be sent: unreachable when no connection could be made.
fn send_error(addr: &str, error: reqwest::Error) -> TransportError {
    let addr = addr.to_string();
    let message = error.to_string();
    if error.is_connect() {
        TransportError::Unreachable { addr, message }
    } else {
        TransportError::Failed { addr, message }
    }
}

/// Decodes a peer's postcard reply; a status other than success is a failure with its text.
async fn decode_reply<Resp: DeserializeOwned>(
    addr: &str,
    response: reqwest::Response,
) -> Result<Resp, TransportError> {
    let failed = |message: String| TransportError::Failed {
        addr: addr.to_string(),
        message,
    };
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| failed(e.to_string()))?;
    if !status.is_success() {
        return Err(failed(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&bytes)
        )));
    }
    postcard::from_bytes(&bytes).map_err(|e| failed(format!("decode: {e}")))
}

/// Creates connections to peers. Holds one pooled HTTP client for all of them.
#[derive(Clone)]
pub struct HttpNetwork {
    client: PeerClient,
    sends: SnapshotSends,
}

impl HttpNetwork {
    /// Creates the factory over `client` and its connection pool.
    pub fn new(client: PeerClient) -> Self {
        HttpNetwork {
            client,
            sends: SnapshotSends::default(),
        }
    }

    /// Counts the snapshots this node's connections are sending (for the snapshot schedule).
    pub fn snapshot_sends(&self) -> SnapshotSends {
        self.sends.clone()
    }

    /// Returns the shared peer client, for other node-to-node calls.
    pub fn client(&self) -> &PeerClient {
        &self.client
    }
}

/// A connection to one peer.
pub struct PeerConnection {
    client: PeerClient,
    target: NodeId,
    addr: String,
    /// The upgraded connection appends go over, once opened; dropped on any failure and
    /// opened again by the next append. Only ever reached through `&mut self` (`get_mut`, no
    /// locking): the mutex is there because openraft wants the connection `Sync` and an
    /// upgraded connection is not.
    stream: std::sync::Mutex<Option<FrameStream>>,
    /// The peer has no stream route (an older build): appends are POSTed.
    stream_refused: bool,
    /// The peer's log matched the last append sent to it (false until one has, and again
    /// after a refusal or a failure): large appends go only after a probe while it is false.
    matched: bool,
    sends: SnapshotSends,
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerConnection {
        PeerConnection {
            client: self.client.clone(),
            target,
            addr: node.raft_addr.clone(),
            stream: std::sync::Mutex::new(None),
            stream_refused: !append_streams_enabled(),
            matched: false,
            sends: self.sends.clone(),
        }
    }
}

fn rpc_error<E: std::error::Error>(error: TransportError) -> RPCError<NodeId, NodeInfo, E> {
    match &error {
        TransportError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&error)),
        TransportError::Failed { .. } => RPCError::Network(NetworkError::new(&error)),
    }
}

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let reply: Result<Resp, RaftError<NodeId, E>> =
            post_postcard(&self.client, &self.addr, path, request, timeout)
                .await
                .map_err(rpc_error)?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// The body of a whole-snapshot transfer in one message, as builds before streamed transfers
/// send it (`POST /raft/snapshot`); still served, and sent to a peer without the stream route.
#[derive(Serialize, Deserialize)]
struct SnapshotTransfer {
    vote: Vote<NodeId>,
    meta: SnapshotMeta<NodeId, NodeInfo>,
    data: Vec<u8>,
}

/// What precedes the data of a streamed snapshot (`POST /raft/snapshot/stream`): the body is
/// a u32 LE length, this header in postcard, the data, and the CRC-32 of the data (u32 LE).
/// The receiver installs nothing whose length or checksum is wrong.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    vote: Vote<NodeId>,
    meta: SnapshotMeta<NodeId, NodeInfo>,
    data_len: u64,
}

/// The size of the chunks a snapshot is streamed in.
const SNAPSHOT_CHUNK: usize = 1 << 20;
/// The largest header a streamed snapshot may start with.
const MAX_SNAPSHOT_HEADER: usize = 1 << 20;

impl PeerConnection {
    /// Sends one append and returns the peer's answer.
    async fn send_append(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        if !self.stream_refused {
            let sent = append_over_stream(
                &self.client,
                &self.addr,
                self.stream
                    .get_mut()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
                rpc,
                option.hard_ttl(),
            )
            .await;
            match sent {
                Ok(Some(reply)) => {
                    return reply
                        .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
                }
                Ok(None) => {
                    tracing::info!(
                        peer = %self.addr,
                        "peer takes appends as one request each (older build)"
                    );
                    self.stream_refused = true;
                }
                Err(error) => return Err(rpc_error(error)),
            }
        }
        POSTED_APPENDS.fetch_add(1, Ordering::Relaxed);
        self.call("/raft/append", rpc, option.hard_ttl()).await
    }
}

/// Appends of more entries than this to a peer whose log is not known to match are preceded by
/// a probe without entries ([`PeerConnection::matched`]).
const PROBE_ABOVE_ENTRIES: usize = 16;

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        // While openraft looks for where a peer's log matches (a new member, a member back
        // from an outage), each probe carries up to `max_payload_entries` entries, which an
        // empty or diverged peer receives, decodes and refuses: after a bulk load that is tens
        // of megabytes per probe, and the first one outlasts its timeout. The answer depends
        // only on `prev_log_id`, so the same request without entries asks it first; the
        // entries go only to a peer whose log matches.
        if !self.matched && rpc.entries.len() > PROBE_ABOVE_ENTRIES {
            let probe = AppendEntriesRequest {
                vote: rpc.vote,
                prev_log_id: rpc.prev_log_id,
                entries: Vec::new(),
                leader_commit: rpc.leader_commit,
            };
            let answer = self.send_append(&probe, &option).await;
            if !matches!(answer, Ok(AppendEntriesResponse::Success)) {
                return answer;
            }
        }
        let answer = self.send_append(&rpc, &option).await;
        self.matched = matches!(
            answer,
            Ok(AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_))
        );
        answer
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        // Snapshots are sent whole through `full_snapshot`; openraft never calls this with the
        // `generic-snapshot-data` feature, but the trait still requires it.
        Err(RPCError::Network(NetworkError::new(
            &std::io::Error::other("chunked snapshot transfer is not supported; use full_snapshot"),
        )))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.call("/raft/vote", &rpc, option.hard_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let _sending = self.sends.start();
        let send = send_snapshot(&self.client, &self.addr, vote, snapshot);
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            reply = send => reply,
        };
        match reply {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(fatal)) => Err(StreamingError::RemoteError(RemoteError::new(
                self.target,
                fatal,
            ))),
            Err(error @ TransportError::Unreachable { .. }) => {
                Err(StreamingError::Unreachable(Unreachable::new(&error)))
            }
            Err(error) => Err(StreamingError::Network(NetworkError::new(&error))),
        }
    }
}

/// Returns the router serving Raft RPCs for `raft`. Mount it on the raft listener.
pub fn raft_router(raft: Raft) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/snapshot/stream", post(snapshot_stream))
        .route("/raft/stream", post(append_stream))
        .with_state(raft)
}

/// Encodes a reply as a postcard body.
pub fn postcard_reply<T: Serialize>(value: &T) -> Response {
    match postcard::to_allocvec(value) {
        Ok(bytes) => (StatusCode::OK, bytes).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encode reply: {e}"),
        )
            .into_response(),
    }
}

/// Decodes a postcard request body, or answers 400.
pub fn decode_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    postcard::from_bytes(body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("malformed node-to-node request: {e}"),
        )
            .into_response()
    })
}

/// A postcard request body as an extractor; a malformed one is answered 400, as
/// [`decode_body`] answers it.
pub struct Postcard<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Postcard<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        decode_body(&body).map(Postcard)
    }
}

/// Checks the shape of an append-entries request: its entries follow `prev_log_id` with
/// consecutive indexes and non-decreasing leaders, as every leader sends them. openraft relies
/// on this shape without checking it (only `debug_assert`s, then index arithmetic), so a
/// malformed request from a buggy or hostile sender is refused here with an error instead.
pub fn check_append(request: &AppendEntriesRequest<TypeConfig>) -> Result<(), String> {
    let ids = request
        .prev_log_id
        .iter()
        .chain(request.entries.iter().map(|entry| &entry.log_id))
        .chain(&request.leader_commit);
    if ids.into_iter().any(|id| id.index == u64::MAX) {
        return Err("log index out of range".into());
    }
    let mut prev = request.prev_log_id;
    for entry in &request.entries {
        let id = entry.log_id;
        let expected = prev.map_or(0, |p| p.index + 1);
        if id.index != expected {
            return Err(format!(
                "entries are not consecutive: index {} where {expected} was expected",
                id.index
            ));
        }
        if prev.is_some_and(|p| id.leader_id < p.leader_id) {
            return Err(format!("entry {} goes back to an older leader", id.index));
        }
        prev = Some(id);
    }
    Ok(())
}

async fn append(
    State(raft): State<Raft>,
    Postcard(request): Postcard<AppendEntriesRequest<TypeConfig>>,
) -> Response {
    if let Err(message) = check_append(&request) {
        return (
            StatusCode::BAD_REQUEST,
            format!("malformed append-entries request: {message}"),
        )
            .into_response();
    }
    postcard_reply(&raft.append_entries(request).await)
}

async fn vote(
    State(raft): State<Raft>,
    Postcard(request): Postcard<VoteRequest<NodeId>>,
) -> Response {
    postcard_reply(&raft.vote(request).await)
}

/// Receives a snapshot sent in one message by a peer of an older build.
async fn snapshot(
    State(raft): State<Raft>,
    Postcard(transfer): Postcard<SnapshotTransfer>,
) -> Response {
    let data = match receive_into(
        &raft,
        None,
        futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(transfer.data))]),
    )
    .await
    {
        Ok(data) => data,
        Err(response) => return response,
    };
    let snapshot = Snapshot {
        meta: transfer.meta,
        snapshot: data,
    };
    postcard_reply(&raft.install_full_snapshot(transfer.vote, snapshot).await)
}

/// Receives a streamed snapshot: the header, then the data written to a file chunk by chunk
/// as it arrives, so memory holds at most a chunk whatever the snapshot's size.
async fn snapshot_stream(State(raft): State<Raft>, body: axum::body::Body) -> Response {
    let bad = |message: String| (StatusCode::BAD_REQUEST, message).into_response();
    let mut stream = body.into_data_stream();
    let mut head = Vec::new();
    let header_len = loop {
        if head.len() >= 4 {
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            if len > MAX_SNAPSHOT_HEADER {
                return bad(format!("snapshot header of {len} bytes is too large"));
            }
            if head.len() >= 4 + len {
                break len;
            }
        }
        match stream.next().await {
            Some(Ok(chunk)) => head.extend_from_slice(&chunk),
            Some(Err(e)) => return bad(format!("snapshot body: {e}")),
            None => return bad("snapshot body ended inside its header".into()),
        }
    };
    let header: SnapshotHeader = match postcard::from_bytes(&head[4..4 + header_len]) {
        Ok(header) => header,
        Err(e) => return bad(format!("malformed snapshot header: {e}")),
    };
    let rest = Bytes::from(head.split_off(4 + header_len));
    let chunks = futures::stream::iter([Ok(rest)])
        .chain(stream.map(|chunk| chunk.map_err(std::io::Error::other)));
    let mut data = match receive_into(&raft, Some(&header.meta), chunks).await {
        Ok(data) => data,
        Err(response) => return response,
    };
    if let Err(message) = data.strip_checksum(header.data_len).await {
        return bad(format!("received snapshot is damaged: {message}"));
    }
    let snapshot = Snapshot {
        meta: header.meta,
        snapshot: data,
    };
    postcard_reply(&raft.install_full_snapshot(header.vote, snapshot).await)
}

/// Writes `chunks` into a new receiving file of the state machine, a chunk of up to
/// `SNAPSHOT_CHUNK` at a time. With the snapshot's `meta` known up front, the file is laid out
/// as `snapshot.bin` so that installing it needs no copy.
async fn receive_into(
    raft: &Raft,
    meta: Option<&SnapshotMeta<NodeId, NodeInfo>>,
    chunks: impl futures::Stream<Item = std::io::Result<Bytes>>,
) -> Result<Box<SnapshotData>, Response> {
    let failed = |message: String| (StatusCode::INTERNAL_SERVER_ERROR, message).into_response();
    let mut data = raft
        .begin_receiving_snapshot()
        .await
        .map_err(|e| failed(format!("cannot receive a snapshot: {e}")))?;
    if let Some(meta) = meta {
        let laid_out = crate::state_machine::encode_meta(meta)
            .map_err(std::io::Error::other)
            .and_then(|meta| data.lay_out_as_stored(meta));
        if let Err(e) = laid_out {
            // Installing it copies the data instead.
            tracing::debug!(error = %e, "received snapshot not laid out as stored");
        }
    }
    let mut chunks = std::pin::pin!(chunks);
    let mut pending = Vec::with_capacity(SNAPSHOT_CHUNK);
    loop {
        let next = chunks.next().await;
        let done = next.is_none();
        if let Some(chunk) = next {
            let chunk = chunk.map_err(|e| {
                (StatusCode::BAD_REQUEST, format!("snapshot body: {e}")).into_response()
            })?;
            pending.extend_from_slice(&chunk);
        }
        if pending.len() >= SNAPSHOT_CHUNK || (done && !pending.is_empty()) {
            let full = std::mem::replace(&mut pending, Vec::with_capacity(SNAPSHOT_CHUNK));
            data.append(full)
                .await
                .map_err(|e| failed(format!("write received snapshot: {e}")))?;
        }
        if done {
            return Ok(data);
        }
    }
}

/// Sends a snapshot to `addr` as a stream of chunks read from its file, or in one message to
/// a peer of an older build that has no stream route.
async fn send_snapshot(
    client: &PeerClient,
    addr: &str,
    vote: Vote<NodeId>,
    snapshot: Snapshot<TypeConfig>,
) -> Result<Result<SnapshotResponse<NodeId>, Fatal<NodeId>>, TransportError> {
    let failed = |message: String| TransportError::Failed {
        addr: addr.to_string(),
        message,
    };
    let mut data = snapshot.snapshot;
    let data_len = data
        .measure()
        .await
        .map_err(|e| failed(format!("measure snapshot: {e}")))?;
    tracing::info!(
        peer = addr,
        snapshot = %snapshot.meta.snapshot_id,
        bytes = data_len,
        live_state = data.is_live(),
        "sending snapshot"
    );
    let header = postcard::to_allocvec(&SnapshotHeader {
        vote,
        meta: snapshot.meta.clone(),
        data_len,
    })
    .map_err(|e| failed(format!("encode: {e}")))?;
    let mut head = (header.len() as u32).to_le_bytes().to_vec();
    head.extend_from_slice(&header);
    // The data is read again for the fallback below, so the stream reads a second handle.
    let crc = Arc::new(std::sync::Mutex::new(crc32fast::Hasher::new()));
    let hashing = crc.clone();
    let region_stream = data.chunks(SNAPSHOT_CHUNK).inspect(move |chunk| {
        if let Ok(chunk) = chunk {
            hashing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .update(chunk);
        }
    });
    let trailer = futures::stream::once(async move {
        let crc = crc.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(Bytes::from(crc.finalize().to_le_bytes().to_vec()))
    });
    let body = futures::stream::iter([Ok(Bytes::from(head))])
        .chain(region_stream)
        .chain(trailer);
    // A transfer's time grows with the snapshot, and the reply comes only once the follower
    // has installed it: a minute for every 100 MiB on top of the base.
    let timeout = SNAPSHOT_TIMEOUT + Duration::from_secs(60 * (data.len() >> 20) / 100);
    let response = post_body(
        client,
        addr,
        "/raft/snapshot/stream",
        reqwest::Body::wrap_stream(body),
        timeout,
    )
    .await?;
    if response.status() == StatusCode::NOT_FOUND {
        tracing::info!(
            peer = addr,
            "peer takes snapshots in one message (older build)"
        );
        let transfer = SnapshotTransfer {
            vote,
            meta: snapshot.meta,
            data: data
                .read_all()
                .await
                .map_err(|e| failed(format!("read snapshot: {e}")))?,
        };
        return post_postcard(client, addr, "/raft/snapshot", &transfer, timeout).await;
    }
    decode_reply(addr, response).await
}

/// The protocol name a `POST /raft/stream` upgrades to.
const STREAM_PROTOCOL: &str = "strata-raft";
/// The largest frame either side of an append stream accepts (an append of many large
/// entries; the POST route has no limit either, peers being trusted).
const MAX_STREAM_FRAME: usize = 1 << 30;

/// Whether appends go over streams: yes, unless `STRATA_RAFT_APPEND_STREAM=off` asks for a
/// POST per append (the transport of older builds; for comparing the two, or as a way round a
/// proxy between nodes that refuses upgrades).
fn append_streams_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        std::env::var("STRATA_RAFT_APPEND_STREAM").map_or(true, |value| value != "off")
    })
}

/// The route a follower's forwarded writes go to the leader over, as a frame stream.
pub const LEADER_STREAM_PATH: &str = "/internal/leader/stream";
/// The protocol name a `POST /internal/leader/stream` upgrades to.
pub const LEADER_STREAM_PROTOCOL: &str = "strata-leader";

static STREAMS_OPENED: AtomicU64 = AtomicU64::new(0);
static STREAMED_APPENDS: AtomicU64 = AtomicU64::new(0);
static POSTED_APPENDS: AtomicU64 = AtomicU64::new(0);
static STREAMED_FORWARDS: AtomicU64 = AtomicU64::new(0);
static LATE_REPLIES_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Counts one forward sent to the leader over a stream.
pub(crate) fn count_streamed_forward() {
    STREAMED_FORWARDS.fetch_add(1, Ordering::Relaxed);
}

/// Counts of this node's outgoing appends and forwards, for its metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct TransportStats {
    /// Streams (append streams and the stream to the leader) opened to peers since start.
    pub streams_opened: u64,
    /// Appends sent over a stream.
    pub streamed_appends: u64,
    /// Appends sent as one POST each (to peers of older builds).
    pub posted_appends: u64,
    /// Batches of writes forwarded to the leader over a stream.
    pub streamed_forwards: u64,
    /// Replies that came after their exchange had been given up (timed out), read and
    /// dropped by the next exchange on the same stream.
    pub late_replies_dropped: u64,
}

/// This node's transport counters since start.
pub fn transport_stats() -> TransportStats {
    TransportStats {
        streams_opened: STREAMS_OPENED.load(Ordering::Relaxed),
        streamed_appends: STREAMED_APPENDS.load(Ordering::Relaxed),
        posted_appends: POSTED_APPENDS.load(Ordering::Relaxed),
        streamed_forwards: STREAMED_FORWARDS.load(Ordering::Relaxed),
        late_replies_dropped: LATE_REPLIES_DROPPED.load(Ordering::Relaxed),
    }
}

/// What answers one framed append: the follower's answer, or why the request was refused
/// before reaching raft (malformed).
type StreamReply = Result<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>, String>;

/// One upgraded connection to a peer carrying requests one at a time: appends to a follower
/// (openraft sends a follower its next append only after the previous answer), or a
/// follower's forwarded writes to the leader (one batch in flight). Each frame, both ways, is
/// a u32 LE length and that many bytes of postcard: a request one way, its reply the other.
/// Compared with a POST each it saves the HTTP framing, the pooled client's hand-off to its
/// connection task and the server's routing on every call: the caller's task writes the
/// request and reads the reply itself.
///
/// An exchange cut off at any await (openraft drops an append that outlasts its timeout, a
/// heartbeat interval) leaves the stream in step: bytes read stay in `incoming`, and the reply
/// the cut exchange was owed is read and dropped by the next one. So a follower that answers
/// late costs the next append only the wait for that answer, not a new connection (an HTTP
/// upgrade) opened while the follower still works through the old one's append. A request cut
/// off before it was wholly written and flushed is never finished: its caller was told it
/// failed, and a forwarded write must not be applied long after that, so such a stream is
/// replaced (the peer sees a frame cut short and drops it).
pub(crate) struct FrameStream {
    io: reqwest::Upgraded,
    /// Set from a request's encoding until its write and flush return: a request cut off
    /// before then (part of it unwritten, or held in a TLS layer's buffer) makes the stream
    /// unusable.
    unsent: bool,
    /// Bytes read and not yet taken as a reply.
    incoming: bytes::BytesMut,
    /// Requests sent whose reply has not been taken: more than one after an exchange was cut
    /// off.
    owed: usize,
    /// The request being written, encoded (the buffer is kept for its capacity).
    frame: Vec<u8>,
    /// How much of `frame` is written.
    written: usize,
}

/// Replies a stream may owe before it is given up as stuck and a new one opened.
const MAX_OWED_REPLIES: usize = 8;

impl FrameStream {
    fn new(io: reqwest::Upgraded) -> FrameStream {
        FrameStream {
            io,
            incoming: bytes::BytesMut::new(),
            unsent: false,
            owed: 0,
            frame: Vec::new(),
            written: 0,
        }
    }

    /// Bytes of the request in `frame` not written yet.
    fn unwritten(&self) -> usize {
        self.frame.len() - self.written
    }

    /// Sends one request and reads its reply, after the replies still owed to exchanges cut
    /// off before it (read and dropped). Cancel-safe: see the type's comment.
    async fn exchange<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        addr: &str,
        request: &Req,
    ) -> Result<Resp, TransportError> {
        use tokio::io::AsyncWriteExt;
        let failed = |message: String| TransportError::Failed {
            addr: addr.to_string(),
            message,
        };
        encode_frame(&mut self.frame, request).map_err(failed)?;
        self.written = 0;
        self.owed += 1;
        self.unsent = true;
        while self.unwritten() > 0 {
            let written = self
                .io
                .write(&self.frame[self.written..])
                .await
                .map_err(|e| failed(format!("stream: {e}")))?;
            self.written += written;
            if written == 0 {
                return Err(failed("stream: the peer stopped reading".into()));
            }
        }
        self.io
            .flush()
            .await
            .map_err(|e| failed(format!("stream: {e}")))?;
        self.unsent = false;
        loop {
            let reply = self.next_frame().await.map_err(failed)?;
            self.owed -= 1;
            if self.owed == 0 {
                return postcard::from_bytes(&reply).map_err(|e| failed(format!("decode: {e}")));
            }
            LATE_REPLIES_DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads until `incoming` holds a whole frame and takes its body off. Cancel-safe:
    /// `read_buf` keeps what it read in `incoming`.
    async fn next_frame(&mut self) -> Result<bytes::BytesMut, String> {
        use tokio::io::AsyncReadExt;
        loop {
            let needed = match self.incoming.get(..4) {
                Some(len) => {
                    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
                    if len > MAX_STREAM_FRAME {
                        return Err(format!("stream: a frame of {len} bytes is too large"));
                    }
                    if self.incoming.len() >= 4 + len {
                        let mut taken = self.incoming.split_to(4 + len);
                        bytes::Buf::advance(&mut taken, 4);
                        return Ok(taken);
                    }
                    4 + len
                }
                None => 4,
            };
            self.incoming
                .reserve((needed - self.incoming.len()).max(READ_CHUNK));
            let read = self
                .io
                .read_buf(&mut self.incoming)
                .await
                .map_err(|e| format!("stream: {e}"))?;
            if read == 0 {
                return Err("stream closed by the peer".into());
            }
        }
    }

    /// Whether this stream can carry another request: not if the peer closed it (or sent
    /// something unasked) while it was idle, since a request written to it would fail with an
    /// outcome the caller cannot know though it never reached the peer; not if a request's
    /// write was cut off; nor if it owes too many replies. Checked before each reuse; keeps
    /// any late reply it reads.
    fn usable(&mut self) -> bool {
        use futures::FutureExt;
        use tokio::io::AsyncReadExt;
        if self.unsent || self.owed >= MAX_OWED_REPLIES {
            return false;
        }
        self.incoming.reserve(READ_CHUNK);
        match self.io.read_buf(&mut self.incoming).now_or_never() {
            None => true,
            Some(Ok(read)) => read > 0 && self.owed > 0,
            Some(Err(_)) => false,
        }
    }
}

/// How much room a stream's read makes in its buffer at least.
const READ_CHUNK: usize = 16 * 1024;

/// Encodes `value` into `frame` as a length-prefixed postcard frame.
fn encode_frame<T: Serialize>(frame: &mut Vec<u8>, value: &T) -> Result<(), String> {
    frame.clear();
    frame.extend_from_slice(&[0; 4]);
    let mut frame_vec = std::mem::take(frame);
    frame_vec = postcard::to_extend(value, frame_vec).map_err(|e| format!("encode: {e}"))?;
    let len = frame_vec.len() - 4;
    if len > MAX_STREAM_FRAME {
        return Err(format!("a frame of {len} bytes is too large"));
    }
    frame_vec[..4].copy_from_slice(&(len as u32).to_le_bytes());
    *frame = frame_vec;
    Ok(())
}

/// Reads one frame's body into `frame`; false at a clean end of the stream before a frame.
async fn read_frame(
    io: &mut (impl tokio::io::AsyncRead + Unpin),
    frame: &mut Vec<u8>,
) -> std::io::Result<bool> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    let mut filled = 0;
    while filled < len.len() {
        match io.read(&mut len[filled..]).await? {
            0 if filled == 0 => return Ok(false),
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the stream ended inside a frame's length",
                ))
            }
            read => filled += read,
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_STREAM_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes is too large"),
        ));
    }
    frame.clear();
    frame.resize(len, 0);
    io.read_exact(frame).await?;
    Ok(true)
}

/// Opens a frame stream to `path` on `addr`, upgrading to `protocol`; `None` when the peer
/// has no such route (an older build answers 404) or will not upgrade (426).
async fn open_stream(
    client: &PeerClient,
    addr: &str,
    path: &str,
    protocol: &str,
) -> Result<Option<FrameStream>, TransportError> {
    use reqwest::header::{CONNECTION, UPGRADE};
    let failed = |message: String| TransportError::Failed {
        addr: addr.to_string(),
        message,
    };
    let response = client
        .post(addr, path)
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, protocol)
        .send()
        .await
        .map_err(|e| send_error(addr, e))?;
    let status = response.status();
    if status == StatusCode::NOT_FOUND || status == StatusCode::UPGRADE_REQUIRED {
        return Ok(None);
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let text = response.text().await.unwrap_or_default();
        return Err(failed(format!("{path} refused: status {status}: {text}")));
    }
    let upgraded = response
        .upgrade()
        .await
        .map_err(|e| failed(format!("{path} upgrade: {e}")))?;
    STREAMS_OPENED.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(peer = addr, path, "stream opened");
    Ok(Some(FrameStream::new(upgraded)))
}

/// Sends `request` over the stream in `slot`, or over a stream opened to `path` (upgrading to
/// `protocol`) when there is none or it cannot be used, and reads the reply, all within
/// `timeout`. `Ok(None)`: the peer has no such route. A stream opened stays in `slot`, also
/// when the exchange times out or is dropped (its late reply is dropped by the next exchange,
/// see [`FrameStream`]); an error of the connection or the encoding empties it.
pub(crate) async fn exchange_over_stream<Req: Serialize, Resp: DeserializeOwned>(
    client: &PeerClient,
    addr: &str,
    (path, protocol): (&str, &str),
    slot: &mut Option<FrameStream>,
    request: &Req,
    timeout: Duration,
) -> Result<Option<Resp>, TransportError> {
    if is_cut_off(addr) {
        let error = TransportError::Unreachable {
            addr: addr.to_string(),
            message: "cut off by fault injection".into(),
        };
        note_peer(addr, Some(&error));
        return Err(error);
    }
    let exchange = async {
        if slot.as_mut().is_some_and(|open| !open.usable()) {
            *slot = None;
        }
        let open = match slot {
            Some(open) => open,
            None => match open_stream(client, addr, path, protocol).await? {
                Some(opened) => slot.insert(opened),
                None => return Ok(None),
            },
        };
        open.exchange(addr, request).await.map(Some)
    };
    let outcome = tokio::time::timeout(timeout, exchange).await;
    let result = match outcome {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(error)) => {
            *slot = None;
            Err(error)
        }
        Err(_) => Err(TransportError::Failed {
            addr: addr.to_string(),
            message: format!("{path} timed out after {timeout:?}"),
        }),
    };
    note_outcome(addr, &result);
    result
}

/// Sends `request` over the peer's append stream, opening it first when there is none.
/// `Ok(None)`: the peer has no stream route, POST instead. See [`exchange_over_stream`]:
/// openraft wraps each append in a timeout of its own and drops the future when it fires; the
/// stream stays in `stream`, in step.
async fn append_over_stream(
    client: &PeerClient,
    addr: &str,
    stream: &mut Option<FrameStream>,
    request: &AppendEntriesRequest<TypeConfig>,
    timeout: Duration,
) -> Result<Option<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>, TransportError> {
    let route = ("/raft/stream", STREAM_PROTOCOL);
    match exchange_over_stream::<_, StreamReply>(client, addr, route, stream, request, timeout)
        .await?
    {
        Some(Ok(reply)) => {
            STREAMED_APPENDS.fetch_add(1, Ordering::Relaxed);
            Ok(Some(reply))
        }
        Some(Err(refused)) => Err(TransportError::Failed {
            addr: addr.to_string(),
            message: format!("append refused: {refused}"),
        }),
        None => Ok(None),
    }
}

/// `POST /raft/stream` with `Upgrade: strata-raft`: switches the connection to an append
/// stream served by a task of its own until the peer closes it.
async fn append_stream(State(raft): State<Raft>, request: Request) -> Response {
    accept_stream(request, STREAM_PROTOCOL, move |io| {
        serve_frames(
            io,
            move |request: Result<AppendEntriesRequest<TypeConfig>, String>| {
                let raft = raft.clone();
                async move {
                    let reply: StreamReply = match request
                        .and_then(|r| check_append(&r).map(|()| r))
                    {
                        Err(message) => Err(format!("malformed append-entries request: {message}")),
                        Ok(request) => Ok(raft.append_entries(request).await),
                    };
                    reply
                }
            },
        )
    })
}

/// Answers a request to upgrade to a frame stream of `protocol`: 101, and `serve` runs on
/// the upgraded connection in a task of its own; 426 when the request is not HTTP/1.1 with
/// `Upgrade: <protocol>`.
pub fn accept_stream<F, Fut>(mut request: Request, protocol: &'static str, serve: F) -> Response
where
    F: FnOnce(hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let asks_upgrade = request
        .headers()
        .get(axum::http::header::UPGRADE)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(protocol.as_bytes()));
    if request.version() != axum::http::Version::HTTP_11 || !asks_upgrade {
        return (
            StatusCode::UPGRADE_REQUIRED,
            format!("this stream needs HTTP/1.1 and Upgrade: {protocol}"),
        )
            .into_response();
    }
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => serve(hyper_util::rt::TokioIo::new(upgraded)).await,
            Err(e) => tracing::debug!(error = %e, protocol, "stream upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(axum::http::header::CONNECTION, "upgrade")
        .header(axum::http::header::UPGRADE, protocol)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())
}

/// Serves one frame stream: reads a request, decodes it (a frame that does not decode is
/// handed over as `Err` with postcard's message, for `answer` to refuse), writes `answer`'s
/// reply, one request at a time, until the peer closes the connection or sends something that
/// is not a frame.
pub async fn serve_frames<Req, Resp, F, Fut>(
    io: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    mut answer: F,
) where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnMut(Result<Req, String>) -> Fut,
    Fut: Future<Output = Resp>,
{
    use tokio::io::AsyncWriteExt;
    let mut io = tokio::io::BufStream::new(io);
    let mut frame = Vec::new();
    loop {
        match read_frame(&mut io, &mut frame).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::debug!(error = %e, "stream ended");
                return;
            }
        }
        let request = postcard::from_bytes::<Req>(&frame).map_err(|e| e.to_string());
        let reply = answer(request).await;
        if let Err(message) = encode_frame(&mut frame, &reply) {
            tracing::warn!("stream: cannot encode a reply: {message}");
            return;
        }
        let written = async {
            io.write_all(&frame).await?;
            io.flush().await
        };
        if let Err(e) = written.await {
            tracing::debug!(error = %e, "stream ended");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn append(entries: u64) -> AppendEntriesRequest<TypeConfig> {
        let leader = openraft::CommittedLeaderId::new(3, 1);
        AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(openraft::LogId::new(leader, 9)),
            entries: (10..10 + entries)
                .map(|index| openraft::Entry {
                    log_id: openraft::LogId::new(leader, index),
                    payload: openraft::EntryPayload::Blank,
                })
                .collect(),
            leader_commit: None,
        }
    }

    #[tokio::test]
    async fn frames_carry_requests_and_replies_back_to_back_on_one_connection() {
        let (mut near, mut far) = tokio::io::duplex(64);
        let mut frame = Vec::new();
        let mut sent = Vec::new();
        for entries in [0, 1, 300] {
            encode_frame(&mut frame, &append(entries)).unwrap();
            sent.extend_from_slice(&frame);
        }
        let writer = tokio::spawn(async move {
            near.write_all(&sent).await.unwrap();
        });
        let mut got = Vec::new();
        for entries in [0, 1, 300] {
            assert!(read_frame(&mut far, &mut got).await.unwrap());
            let request: AppendEntriesRequest<TypeConfig> = postcard::from_bytes(&got).unwrap();
            assert_eq!(request.entries.len() as u64, entries);
            assert!(check_append(&request).is_ok());
        }
        writer.await.unwrap();
        assert!(
            !read_frame(&mut far, &mut got).await.unwrap(),
            "the writer's close between frames is a clean end"
        );
    }

    /// A peer whose append streams answer an append of one entry with `Conflict`, held until
    /// `release`, and every other append with `Success`.
    async fn holding_peer(
        received: tokio::sync::mpsc::UnboundedSender<()>,
        release: Arc<tokio::sync::Notify>,
    ) -> String {
        async fn serve(
            io: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
            received: tokio::sync::mpsc::UnboundedSender<()>,
            release: Arc<tokio::sync::Notify>,
        ) {
            let mut io = tokio::io::BufStream::new(io);
            let mut frame = Vec::new();
            while let Ok(true) = read_frame(&mut io, &mut frame).await {
                let request: AppendEntriesRequest<TypeConfig> =
                    postcard::from_bytes(&frame).unwrap();
                let reply: StreamReply = if request.entries.len() == 1 {
                    received.send(()).unwrap();
                    release.notified().await;
                    Ok(Ok(AppendEntriesResponse::Conflict))
                } else {
                    Ok(Ok(AppendEntriesResponse::Success))
                };
                encode_frame(&mut frame, &reply).unwrap();
                if io.write_all(&frame).await.is_err() || io.flush().await.is_err() {
                    return;
                }
            }
        }
        let router = Router::new().route(
            "/raft/stream",
            post(move |mut request: Request| {
                let received = received.clone();
                let release = release.clone();
                async move {
                    let upgrade = hyper::upgrade::on(&mut request);
                    tokio::spawn(async move {
                        if let Ok(upgraded) = upgrade.await {
                            serve(hyper_util::rt::TokioIo::new(upgraded), received, release).await;
                        }
                    });
                    Response::builder()
                        .status(StatusCode::SWITCHING_PROTOCOLS)
                        .header(axum::http::header::CONNECTION, "upgrade")
                        .header(axum::http::header::UPGRADE, STREAM_PROTOCOL)
                        .body(axum::body::Body::empty())
                        .unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        addr
    }

    #[tokio::test]
    async fn an_append_dropped_mid_exchange_never_hands_its_reply_to_the_next() {
        let (received_tx, mut received) = tokio::sync::mpsc::unbounded_channel();
        let release = Arc::new(tokio::sync::Notify::new());
        let addr = holding_peer(received_tx, release.clone()).await;
        let client = PeerClient::plain();
        let mut stream = None;
        // As openraft's own timeout does: the append's future is dropped once the peer has the
        // request and before its reply arrives.
        let first = append(1);
        tokio::select! {
            _ = append_over_stream(&client, &addr, &mut stream, &first, Duration::from_secs(30)) => {
                panic!("the held append was answered")
            }
            _ = received.recv() => {}
        }
        // The held reply (Conflict) now goes out on the old connection, if it is still open.
        release.notify_one();
        let second = append(2);
        let reply = append_over_stream(
            &client,
            &addr,
            &mut stream,
            &second,
            Duration::from_secs(30),
        )
        .await
        .unwrap()
        .unwrap()
        .unwrap();
        assert!(
            matches!(reply, AppendEntriesResponse::Success),
            "the second append got {reply:?}: the first one's reply"
        );
    }

    #[tokio::test]
    async fn a_large_append_to_a_peer_not_known_to_match_asks_without_entries_first() {
        // A peer whose log matches from index 15 on; it records how many entries each append
        // it receives carries.
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let router = Router::new().route(
            "/raft/stream",
            post(move |request: Request| {
                let record = record.clone();
                async move {
                    accept_stream(request, STREAM_PROTOCOL, move |io| {
                        serve_frames(
                            io,
                            move |rpc: Result<AppendEntriesRequest<TypeConfig>, String>| {
                                let record = record.clone();
                                async move {
                                    let rpc = rpc.unwrap();
                                    record.lock().unwrap().push(rpc.entries.len());
                                    let at = rpc.prev_log_id.map_or(0, |id| id.index);
                                    let reply: StreamReply = Ok(Ok(if at >= 15 {
                                        AppendEntriesResponse::Success
                                    } else {
                                        AppendEntriesResponse::Conflict
                                    }));
                                    reply
                                }
                            },
                        )
                    })
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let mut network = HttpNetwork::new(PeerClient::plain());
        let node = NodeInfo {
            raft_addr: addr,
            ..NodeInfo::default()
        };
        let mut peer = network.new_client(2, &node).await;
        let option = || RPCOption::new(Duration::from_secs(10));
        let at = |prev: u64, entries: u64| {
            let mut rpc = append(entries);
            let leader = openraft::CommittedLeaderId::new(3, 1);
            rpc.prev_log_id = Some(openraft::LogId::new(leader, prev));
            for (i, entry) in rpc.entries.iter_mut().enumerate() {
                entry.log_id = openraft::LogId::new(leader, prev + 1 + i as u64);
            }
            rpc
        };
        // Not matching: only the probe goes, and its refusal is the answer.
        let answer = peer.append_entries(at(9, 100), option()).await.unwrap();
        assert!(
            matches!(answer, AppendEntriesResponse::Conflict),
            "{answer:?}"
        );
        assert_eq!(*seen.lock().unwrap(), [0]);
        // Matching: the probe, then the entries.
        let answer = peer.append_entries(at(20, 100), option()).await.unwrap();
        assert!(
            matches!(answer, AppendEntriesResponse::Success),
            "{answer:?}"
        );
        assert_eq!(*seen.lock().unwrap(), [0, 0, 100]);
        // Known to match now: no probe.
        peer.append_entries(at(120, 100), option()).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), [0, 0, 100, 100]);
        // A refusal forgets the match; a small append goes without a probe anyway.
        peer.append_entries(at(3, 5), option()).await.unwrap();
        peer.append_entries(at(3, 100), option()).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), [0, 0, 100, 100, 5, 0]);
    }

    #[tokio::test]
    async fn a_snapshot_send_is_counted_until_it_ends() {
        // A peer that takes the connection and never answers: the send stays in flight.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                held.push(socket);
            }
        });
        let mut network = HttpNetwork::new(PeerClient::plain());
        let sends = network.snapshot_sends();
        let node = NodeInfo {
            raft_addr: addr,
            ..NodeInfo::default()
        };
        let mut peer = network.new_client(2, &node).await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let snapshot = Snapshot {
            meta: SnapshotMeta::default(),
            snapshot: Box::new(SnapshotData::empty().unwrap()),
        };
        let cancel = async move {
            let _ = stopped.await;
            ReplicationClosed::new("test")
        };
        let mut send = Box::pin(peer.full_snapshot(
            Vote::new(1, 1),
            snapshot,
            cancel,
            RPCOption::new(Duration::from_secs(60)),
        ));
        // The send is counted from its first step on, before it waits for the peer.
        assert!(futures::poll!(&mut send).is_pending());
        assert_eq!(sends.in_flight(), 1, "a send in flight is counted");
        stop.send(()).unwrap();
        let ended = send.await;
        assert!(matches!(ended, Err(StreamingError::Closed(_))), "{ended:?}");
        assert_eq!(sends.in_flight(), 0, "an ended send is no longer counted");
    }

    /// A peer serving `POST /s` as a frame stream that doubles numbers (`serve_frames`), and
    /// `POST /once`, whose streams answer one number and are then closed by the peer.
    async fn doubling_peer() -> String {
        async fn double(n: Result<u64, String>) -> Result<u64, String> {
            n.map(|n| n * 2)
        }
        let router = Router::new()
            .route(
                "/s",
                post(|request: Request| async move {
                    accept_stream(request, "test-frames", |io| serve_frames(io, double))
                }),
            )
            .route(
                "/once",
                post(|request: Request| async move {
                    accept_stream(request, "test-frames", |io| async move {
                        let mut io = tokio::io::BufStream::new(io);
                        let mut frame = Vec::new();
                        if let Ok(true) = read_frame(&mut io, &mut frame).await {
                            let n: u64 = postcard::from_bytes(&frame).unwrap();
                            encode_frame(&mut frame, &double(Ok(n)).await).unwrap();
                            io.write_all(&frame).await.unwrap();
                            io.flush().await.unwrap();
                        }
                        io.shutdown().await.unwrap();
                    })
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        addr
    }

    /// One exchange with the doubling peer that must succeed.
    async fn ask<Req: Serialize>(
        client: &PeerClient,
        addr: &str,
        route: (&str, &str),
        slot: &mut Option<FrameStream>,
        request: &Req,
    ) -> Result<u64, String> {
        exchange_over_stream(client, addr, route, slot, request, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn a_frame_stream_answers_in_order_and_refuses_a_malformed_frame_without_closing() {
        let addr = doubling_peer().await;
        let client = PeerClient::plain();
        let route = ("/s", "test-frames");
        let mut stream = None;
        assert_eq!(
            ask(&client, &addr, route, &mut stream, &21u64).await,
            Ok(42)
        );
        for n in [0u64, 7, u64::MAX / 2] {
            assert_eq!(ask(&client, &addr, route, &mut stream, &n).await, Ok(n * 2));
        }
        // `()` encodes as no bytes at all: not a u64. The peer says so and keeps the stream.
        let reply = ask(&client, &addr, route, &mut stream, &()).await;
        assert!(reply.is_err(), "{reply:?}");
        assert!(stream.is_some(), "a refused request keeps the stream");
        assert_eq!(ask(&client, &addr, route, &mut stream, &5u64).await, Ok(10));
        assert!(
            STREAMS_OPENED.load(Ordering::Relaxed) >= 1,
            "streams are counted"
        );
        // A peer without the route: `None`, so the caller POSTs instead.
        let missing = exchange_over_stream::<_, Result<u64, String>>(
            &client,
            &addr,
            ("/nowhere", "test-frames"),
            &mut None,
            &1u64,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        assert!(missing.is_none());
    }

    #[tokio::test]
    async fn a_stream_the_peer_closed_while_idle_is_replaced_before_a_request_is_lost_on_it() {
        let addr = doubling_peer().await;
        let client = PeerClient::plain();
        let route = ("/once", "test-frames");
        let mut slot = None;
        assert_eq!(ask(&client, &addr, route, &mut slot, &1u64).await, Ok(2));
        // The peer closes it; wait (bounded) until this side has seen the end.
        let stream = slot.as_mut().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while stream.usable() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the close was never seen"
            );
            tokio::task::yield_now().await;
        }
        // Left in the slot, it is replaced, not written to.
        assert_eq!(ask(&client, &addr, route, &mut slot, &2u64).await, Ok(4));
    }

    /// A peer serving `POST /gated` as a frame stream that answers a string with its length,
    /// reading each request only once the test adds a permit to the returned gate; the
    /// counter is the streams it accepted.
    async fn gated_peer() -> (String, Arc<tokio::sync::Semaphore>, Arc<AtomicU64>) {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let (peer_gate, peer_accepted) = (gate.clone(), accepted.clone());
        let router = Router::new().route(
            "/gated",
            post(move |request: Request| {
                let (gate, accepted) = (peer_gate.clone(), peer_accepted.clone());
                async move {
                    accept_stream(request, "test-frames", move |io| async move {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        let mut io = tokio::io::BufStream::new(io);
                        let mut frame = Vec::new();
                        loop {
                            gate.acquire().await.unwrap().forget();
                            if !read_frame(&mut io, &mut frame).await.unwrap_or(false) {
                                return;
                            }
                            let text: String = postcard::from_bytes(&frame).unwrap();
                            let reply: Result<u64, String> = Ok(text.len() as u64);
                            encode_frame(&mut frame, &reply).unwrap();
                            io.write_all(&frame).await.unwrap();
                            io.flush().await.unwrap();
                        }
                    })
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (addr, gate, accepted)
    }

    /// One exchange of `len` bytes with the gated peer, given up after `timeout`.
    async fn ask_len(
        client: &PeerClient,
        addr: &str,
        slot: &mut Option<FrameStream>,
        len: usize,
        timeout: Duration,
    ) -> Result<Option<Result<u64, String>>, TransportError> {
        let route = ("/gated", "test-frames");
        exchange_over_stream(client, addr, route, slot, &"x".repeat(len), timeout).await
    }

    #[tokio::test]
    async fn a_reply_that_comes_after_its_timeout_is_dropped_and_the_stream_kept() {
        let (addr, gate, accepted) = gated_peer().await;
        let client = PeerClient::plain();
        let mut slot = None;
        gate.add_permits(1);
        let first = ask_len(&client, &addr, &mut slot, 3, Duration::from_secs(30)).await;
        assert_eq!(first.unwrap(), Some(Ok(3)));
        // The peer holds the next request: the exchange times out with the request written.
        let late = ask_len(&client, &addr, &mut slot, 5, Duration::from_millis(100)).await;
        let error = late.unwrap_err();
        assert!(error.to_string().contains("timed out"), "{error}");
        assert!(slot.is_some(), "a timed-out exchange keeps its stream");
        let dropped = LATE_REPLIES_DROPPED.load(Ordering::Relaxed);
        // The peer answers both; this exchange gets its own answer, not the late one.
        gate.add_permits(2);
        let next = ask_len(&client, &addr, &mut slot, 11, Duration::from_secs(30)).await;
        assert_eq!(next.unwrap(), Some(Ok(11)));
        assert_eq!(accepted.load(Ordering::Relaxed), 1, "no second stream");
        assert!(LATE_REPLIES_DROPPED.load(Ordering::Relaxed) > dropped);
    }

    #[tokio::test]
    async fn a_request_cut_off_halfway_through_its_write_is_never_finished() {
        let (addr, gate, accepted) = gated_peer().await;
        let client = PeerClient::plain();
        let mut slot = None;
        gate.add_permits(1);
        let first = ask_len(&client, &addr, &mut slot, 1, Duration::from_secs(30)).await;
        assert_eq!(first.unwrap(), Some(Ok(1)));
        // 32 MiB to a peer that does not read: far more than the sockets' buffers take, so
        // the write is cut off by the timeout with part of the request still to write.
        let big = 32 << 20;
        let cut = ask_len(&client, &addr, &mut slot, big, Duration::from_millis(200)).await;
        assert!(cut.is_err());
        let stream = slot.as_mut().unwrap();
        assert!(
            stream.unwritten() > 0 && stream.unwritten() < big,
            "the write was cut off halfway ({} bytes left)",
            stream.unwritten()
        );
        assert!(!stream.usable(), "a stream with a half-written request");
        // The next request goes over a new stream; the old one's half request is dropped.
        gate.add_permits(2);
        let next = ask_len(&client, &addr, &mut slot, 9, Duration::from_secs(30)).await;
        assert_eq!(next.unwrap(), Some(Ok(9)));
        assert_eq!(accepted.load(Ordering::Relaxed), 2, "a second stream");
    }

    #[tokio::test]
    async fn a_stream_cut_inside_a_frame_or_claiming_a_huge_one_is_an_error() {
        let mut frame = Vec::new();
        encode_frame(&mut frame, &append(5)).unwrap();
        for cut in [2, 4, frame.len() - 1] {
            let mut reader = &frame[..cut];
            let mut got = Vec::new();
            let error = read_frame(&mut reader, &mut got).await.unwrap_err();
            assert_eq!(
                error.kind(),
                std::io::ErrorKind::UnexpectedEof,
                "cut at {cut}"
            );
        }
        let huge = ((MAX_STREAM_FRAME + 1) as u32).to_le_bytes();
        let mut reader = &huge[..];
        let error = read_frame(&mut reader, &mut Vec::new()).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("too large"), "{error}");
    }
}
