//! The cluster's Nacos servers. Each node that serves the Nacos gRPC API keeps a record of
//! its Nacos addresses under [`PREFIX`]`NODE_ID`, on a lease it renews, so that a node that
//! stops can send its clients to another one (`ConnectResetRequest`, see [`crate::grpc`]).
//!
//! The record is the only thing of the Nacos gRPC API in the replicated store besides the
//! instances: one key per node, written when the lease is granted (once the node is in a
//! cluster of several, and again after the lease was lost), renewed by keep-alives that never
//! reach the log, and revoked when the node stops. A node alone has nobody to send its
//! clients to, so it writes nothing (a single node's store sees no write it did not ask
//! for). A node that dies without stopping drops out when the lease expires ([`TTL_SECS`]);
//! until then it may still be recommended, and a client that cannot reach it falls back to
//! its own server list.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strata_proto::error::ErrorCode;
use strata_proto::kv::{LeaseGrantRequest, PutRequest, RangeRequest};
use strata_store::KvApi;
use tokio_util::sync::CancellationToken;

/// Prefix of the servers' records; the key ends with the node id.
pub const PREFIX: &str = "/strata/nacos/servers/";
/// TTL of a record's lease, in seconds: how long a dead node may still be recommended.
pub const TTL_SECS: i64 = 10;
/// How often the lease is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(3);
/// Deadline of each store call.
const CALL_DEADLINE: Duration = Duration::from_secs(2);
/// Longest pause between attempts to write the record after a failure.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);
/// The port offset of Nacos 2.x clients: they dial gRPC at the server port + 1000.
pub const NACOS_GRPC_OFFSET: u16 = 1000;

/// Where a node serves Nacos clients, as other nodes and clients reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// `HOST:PORT` of the Nacos 2.x gRPC listener.
    pub grpc: String,
    /// `HOST:PORT` of the Nacos HTTP listener, when the node serves one.
    #[serde(default)]
    pub http: Option<String>,
}

impl ServerRecord {
    /// The `serverIp` and `serverPort` a `ConnectResetRequest` names for this server. Nacos
    /// clients take the port as a *server* port and dial gRPC at it + 1000, as they do for
    /// every address of their server list; so this is the HTTP port when the node serves
    /// HTTP, else the gRPC port - 1000. `None` when neither yields an address.
    pub fn redirect(&self) -> Option<(String, u16)> {
        if let Some(http) = self.http.as_deref() {
            if let Some(address) = split_host_port(http) {
                return Some(address);
            }
        }
        let (host, grpc_port) = split_host_port(&self.grpc)?;
        let port = grpc_port
            .checked_sub(NACOS_GRPC_OFFSET)
            .filter(|p| *p > 0)?;
        Some((host, port))
    }
}

/// `HOST` (brackets of an IPv6 host removed) and `PORT` of `HOST:PORT`.
fn split_host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port))
}

/// `HOST:PORT` of a listener bound at `bound`, as others reach it: an unspecified address
/// (`0.0.0.0`, `::`) is replaced by the host of `api_url`, the node's advertised API.
pub fn advertised(bound: SocketAddr, api_url: &str) -> String {
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let authority = api_url
        .split_once("://")
        .map_or(api_url, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    match split_host_port(authority) {
        Some((host, _)) if host.contains(':') => format!("[{host}]:{}", bound.port()),
        Some((host, _)) => format!("{host}:{}", bound.port()),
        None => bound.to_string(),
    }
}

/// This node's record and the way to the others'.
pub struct Servers {
    /// The store the records live in.
    kv: Arc<dyn KvApi>,
    /// This node's id (the key of its record).
    node_id: u64,
    /// This node's record.
    record: ServerRecord,
    /// The lease the record lives on; 0 while there is none.
    lease: AtomicI64,
}

impl Servers {
    /// The records of the cluster in `kv`, this node's being `record`.
    pub fn new(kv: Arc<dyn KvApi>, node_id: u64, record: ServerRecord) -> Arc<Self> {
        Arc::new(Servers {
            kv,
            node_id,
            record,
            lease: AtomicI64::new(0),
        })
    }

    fn key(node_id: u64) -> Vec<u8> {
        format!("{PREFIX}{node_id}").into_bytes()
    }

    /// Keeps this node's record in the store until `cancel`, while the cluster has other
    /// members: writes it on a new lease, renews the lease, and writes it again whenever the
    /// lease was lost. Failures are retried with a growing pause (the cluster may have no
    /// leader yet while the node starts).
    ///
    /// Cancel safety: the loop stops at `cancel`; a write cut short may still land, and its
    /// lease then expires or is revoked by [`Servers::withdraw`].
    pub async fn advertise(self: Arc<Self>, cancel: CancellationToken) {
        let mut backoff =
            strata_api::backoff::Backoff::new(Duration::from_millis(200), MAX_RETRY_PAUSE);
        let mut written = false;
        loop {
            let alone = self
                .kv
                .status()
                .members
                .iter()
                .all(|m| m.id == self.node_id);
            if alone {
                if self.lease.load(Ordering::Acquire) != 0 {
                    self.withdraw().await;
                    written = false;
                }
                tokio::select! {
                    () = tokio::time::sleep(RENEW_EVERY) => {}
                    () = cancel.cancelled() => return,
                }
                continue;
            }
            let outcome = tokio::select! {
                outcome = self.keep() => outcome,
                () = cancel.cancelled() => return,
            };
            let pause = match outcome {
                Ok(()) => {
                    if !written {
                        tracing::info!(node_id = self.node_id, grpc = %self.record.grpc, "advertised this node's Nacos gRPC address to the cluster");
                        written = true;
                    }
                    backoff.reset();
                    RENEW_EVERY
                }
                Err(error) => {
                    tracing::debug!(node_id = self.node_id, %error, "keeping this node's Nacos server record failed; retrying");
                    backoff.next_pause()
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = cancel.cancelled() => return,
            }
        }
    }

    /// One round: renews the lease, or writes the record on a new one.
    async fn keep(&self) -> Result<(), String> {
        let lease = self.lease.load(Ordering::Acquire);
        if lease != 0 {
            match bounded(self.kv.lease_keepalive(lease)).await {
                Ok(alive) if alive.ttl > 0 => return Ok(()),
                Ok(_) => {}
                Err(e) if e.code == ErrorCode::NotFound => {}
                Err(e) => return Err(e.to_string()),
            }
            self.lease.store(0, Ordering::Release);
        }
        let granted = bounded(self.kv.lease_grant(LeaseGrantRequest {
            ttl: TTL_SECS,
            id: 0,
        }))
        .await
        .map_err(|e| e.to_string())?
        .id;
        let value = serde_json::to_vec(&self.record).map_err(|e| e.to_string())?;
        bounded(self.kv.put(PutRequest {
            key: Self::key(self.node_id),
            value,
            lease: granted,
            ..PutRequest::default()
        }))
        .await
        .map_err(|e| e.to_string())?;
        self.lease.store(granted, Ordering::Release);
        Ok(())
    }

    /// Removes this node's record (revokes its lease), so that no other node recommends it
    /// any more. Bounded by a deadline; on failure the lease expires by itself.
    pub async fn withdraw(&self) {
        let lease = self.lease.swap(0, Ordering::AcqRel);
        if lease == 0 {
            return;
        }
        match bounded(self.kv.lease_revoke(lease)).await {
            Ok(_) => {
                tracing::debug!(
                    node_id = self.node_id,
                    "withdrew this node's Nacos server record"
                )
            }
            Err(error) => {
                tracing::debug!(node_id = self.node_id, %error, "withdrawing this node's Nacos server record failed; its lease will expire")
            }
        }
    }

    /// The records of the other nodes that are members of the cluster, by node id: where
    /// this node's clients may go. Read from this node's copy of the store (it may be a
    /// little behind); empty when the read fails.
    pub async fn others(&self) -> Vec<(u64, ServerRecord)> {
        let members: Vec<u64> = self.kv.status().members.iter().map(|m| m.id).collect();
        let read = bounded(self.kv.range(RangeRequest {
            key: PREFIX.as_bytes().to_vec(),
            prefix: true,
            serializable: true,
            ..RangeRequest::default()
        }))
        .await;
        let response = match read {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(%error, "reading the Nacos server records failed");
                return Vec::new();
            }
        };
        let mut found = Vec::new();
        for entry in response.kvs {
            let Some(node_id) = std::str::from_utf8(&entry.key)
                .ok()
                .and_then(|key| key.strip_prefix(PREFIX))
                .and_then(|id| id.parse::<u64>().ok())
            else {
                continue;
            };
            if node_id == self.node_id || !members.contains(&node_id) {
                continue;
            }
            if let Ok(record) = serde_json::from_slice::<ServerRecord>(&entry.value) {
                found.push((node_id, record));
            }
        }
        found.sort_by_key(|(node_id, _)| *node_id);
        found
    }
}

/// `call` with [`CALL_DEADLINE`]; a timeout is an `unavailable` error.
async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, strata_proto::error::ApiError>>,
) -> Result<T, strata_proto::error::ApiError> {
    tokio::time::timeout(CALL_DEADLINE, call)
        .await
        .unwrap_or_else(|_| {
            Err(strata_proto::error::ApiError::unavailable(
                "the store did not answer in time",
            ))
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn redirects_name_the_server_port_clients_add_the_offset_to() {
        let both = ServerRecord {
            grpc: "10.0.0.2:9848".into(),
            http: Some("10.0.0.2:8848".into()),
        };
        assert_eq!(both.redirect(), Some(("10.0.0.2".into(), 8848)));
        let grpc_only = ServerRecord {
            grpc: "10.0.0.2:9848".into(),
            http: None,
        };
        assert_eq!(grpc_only.redirect(), Some(("10.0.0.2".into(), 8848)));
        let v6 = ServerRecord {
            grpc: "[::1]:9848".into(),
            http: None,
        };
        assert_eq!(v6.redirect(), Some(("::1".into(), 8848)));
        // A gRPC port below the offset names no server port.
        let low = ServerRecord {
            grpc: "10.0.0.2:900".into(),
            http: None,
        };
        assert_eq!(low.redirect(), None);
        let garbage = ServerRecord {
            grpc: "nonsense".into(),
            http: Some(":x".into()),
        };
        assert_eq!(garbage.redirect(), None);
    }

    #[test]
    fn unspecified_addresses_take_the_api_host() {
        let any: SocketAddr = "0.0.0.0:9848".parse().unwrap();
        assert_eq!(advertised(any, "http://10.1.2.3:7070"), "10.1.2.3:9848");
        assert_eq!(advertised(any, "https://[fd00::1]:7070/"), "[fd00::1]:9848");
        let bound: SocketAddr = "127.0.0.1:9848".parse().unwrap();
        assert_eq!(advertised(bound, "http://10.1.2.3:7070"), "127.0.0.1:9848");
        assert_eq!(advertised(any, "garbage"), "0.0.0.0:9848");
    }

    #[tokio::test]
    async fn records_are_kept_withdrawn_and_read_back() {
        let kv: Arc<dyn KvApi> = Arc::new(strata_store::memory::MemoryKv::new());
        let mine = ServerRecord {
            grpc: "127.0.0.1:1".into(),
            http: None,
        };
        let servers = Servers::new(Arc::clone(&kv), kv.node_id(), mine);
        servers.keep().await.unwrap();
        let other = ServerRecord {
            grpc: "127.0.0.1:2".into(),
            http: Some("127.0.0.1:3".into()),
        };
        kv.put(PutRequest {
            key: Servers::key(99),
            value: serde_json::to_vec(&other).unwrap(),
            ..PutRequest::default()
        })
        .await
        .unwrap();
        // Node 99 is not a member: not recommended. This node never recommends itself.
        assert!(servers.others().await.is_empty());
        let stored = kv
            .range(RangeRequest {
                key: Servers::key(kv.node_id()),
                ..RangeRequest::default()
            })
            .await
            .unwrap();
        assert_eq!(stored.kvs.len(), 1);
        servers.withdraw().await;
        let gone = kv
            .range(RangeRequest {
                key: Servers::key(kv.node_id()),
                ..RangeRequest::default()
            })
            .await
            .unwrap();
        assert!(gone.kvs.is_empty());
    }
}
