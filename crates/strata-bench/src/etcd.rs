//! Requests over the etcd v3 gRPC API (`etcd-put`, `etcd-get`), to any etcd-compatible
//! endpoint list: a real etcd cluster or Strata's `--grpc-addr`. The same code drives both, so
//! a comparison measures the servers, not two different clients.
//!
//! Clients share a small [`Pool`] of HTTP/2 connections, as etcd's own `benchmark` tool does
//! (`--conns` connections, `--clients` multiplexed over them): connection `j` goes to endpoint
//! `j mod endpoints`, and client `i` sends every request on connection `i mod connections`.

use crate::load::Driver;
use anyhow::{bail, Context};
use std::time::Duration;
use strata_etcd::pb::etcdserverpb::auth_client::AuthClient;
use strata_etcd::pb::etcdserverpb::kv_client::KvClient;
use strata_etcd::pb::etcdserverpb::{AuthenticateRequest, PutRequest, RangeRequest};
use tonic::transport::{Channel, Endpoint};

/// A fixed set of HTTP/2 connections to the endpoints, shared by every client of a run.
#[derive(Debug, Clone)]
pub struct Pool {
    /// One entry per connection; cloning a [`Channel`] shares its connection.
    channels: Vec<Channel>,
    /// `host:port` of each connection, for messages.
    targets: Vec<String>,
    /// The token of `--user`, sent as the `token` metadata on every call (as clientv3 does).
    token: Option<tonic::metadata::AsciiMetadataValue>,
}

impl Pool {
    /// Opens `connections` connections, round-robin over `endpoints` (`host:port`, an
    /// `http://` prefix is accepted), each within `connect_timeout`.
    pub async fn connect(
        endpoints: &[String],
        connections: usize,
        connect_timeout: Duration,
        user: Option<&str>,
        tls: Option<&tonic::transport::ClientTlsConfig>,
    ) -> anyhow::Result<Pool> {
        if endpoints.is_empty() {
            bail!("--endpoints needs at least one HOST:PORT");
        }
        if connections == 0 {
            bail!("--connections must be at least 1");
        }
        let mut channels = Vec::with_capacity(connections);
        let mut targets = Vec::with_capacity(connections);
        for connection_index in 0..connections {
            let target = host_port(&endpoints[connection_index % endpoints.len()]);
            let scheme = if tls.is_some() { "https" } else { "http" };
            let mut endpoint = Endpoint::from_shared(format!("{scheme}://{target}"))
                .with_context(|| format!("parse the endpoint {target:?}"))?
                .connect_timeout(connect_timeout)
                .tcp_nodelay(true)
                // As grpc-go's windows grow to (etcd's benchmark tool): with h2's default 64 KiB,
                // a burst of small answers (thousands of watches created at once) exhausts its
                // budget for unread small DATA frames and it drops the connection.
                .initial_connection_window_size(8 << 20);
            if let Some(tls) = tls {
                endpoint = endpoint
                    .tls_config(tls.clone())
                    .context("TLS settings (--cacert, --cert, --cert-key)")?;
            }
            // `connect` opens a connection of its own each time; clones of the channel share it.
            let channel = tokio::time::timeout(connect_timeout, endpoint.connect())
                .await
                .map_err(|_| anyhow::anyhow!("connect to {target} timed out"))?
                .with_context(|| format!("connect to {target}"))?;
            channels.push(channel);
            targets.push(target);
        }
        let token = match user {
            None => None,
            Some(user) => Some(authenticate(&channels[0], user, connect_timeout).await?),
        };
        Ok(Pool {
            channels,
            targets,
            token,
        })
    }

    /// `message` as a request carrying the pool's token, if any.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            request.metadata_mut().insert("token", token.clone());
        }
        request
    }

    /// Returns the connection client `client_index` uses.
    pub fn channel(&self, client_index: usize) -> Channel {
        self.channels[client_index % self.channels.len()].clone()
    }

    /// Returns the `host:port` behind the connection client `client_index` uses.
    pub fn target(&self, client_index: usize) -> &str {
        &self.targets[client_index % self.targets.len()]
    }

    /// Returns how many connections the pool holds.
    pub fn len(&self) -> usize {
        self.channels.len()
    }
}

/// The default connection count: one per endpoint (as an etcd client library holds one per
/// member, and etcd's `benchmark` tool is run), and never more than there are clients.
pub fn default_connections(endpoints: usize, clients: usize) -> usize {
    endpoints.min(clients).max(1)
}

/// Strips an `http://` prefix and any trailing `/`, leaving `host:port`.
pub fn host_port(endpoint: &str) -> String {
    endpoint
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// What every request of an etcd run does.
#[derive(Debug, Clone)]
pub enum EtcdOp {
    /// `Put` of `{key_prefix}{sequence}`, so every put creates a new key.
    Put {
        /// Prefix of every written key.
        key_prefix: String,
        /// The value written each time.
        value: Vec<u8>,
    },
    /// `Range` of one existing key.
    Get {
        /// The key, written once before the run.
        key: Vec<u8>,
        /// etcd's `serializable`: answer from the contacted member without a read index.
        serializable: bool,
    },
}

/// An [`EtcdOp`] over a shared [`Pool`].
#[derive(Debug)]
pub struct EtcdDriver {
    /// The request every task repeats.
    pub op: EtcdOp,
    /// The connections every client multiplexes over.
    pub pool: Pool,
    /// Longest wait for one answer; a request past it counts as an error.
    pub request_timeout: Duration,
}

impl EtcdDriver {
    async fn put(
        &self,
        client: &mut KvClient<Channel>,
        key: String,
        value: &[u8],
    ) -> anyhow::Result<()> {
        let request = PutRequest {
            key: key.into_bytes(),
            value: value.to_vec(),
            ..Default::default()
        };
        tokio::time::timeout(self.request_timeout, client.put(self.pool.request(request)))
            .await
            .map_err(|_| anyhow::anyhow!("put timed out after {:?}", self.request_timeout))??;
        Ok(())
    }
}

impl Driver for EtcdDriver {
    type Client = KvClient<Channel>;

    fn client(&self, client_index: usize) -> KvClient<Channel> {
        KvClient::new(self.pool.channel(client_index))
    }

    async fn warm_up(
        &self,
        client: &mut KvClient<Channel>,
        client_index: usize,
    ) -> anyhow::Result<()> {
        let result = match &self.op {
            EtcdOp::Put { key_prefix, value } => {
                let key = format!("{key_prefix}warmup-{client_index}");
                self.put(client, key, value).await
            }
            EtcdOp::Get { .. } => self.issue(client, 0).await,
        };
        result.with_context(|| format!("warm up through {}", self.pool.target(client_index)))
    }

    async fn issue(&self, client: &mut KvClient<Channel>, sequence: u64) -> anyhow::Result<()> {
        match &self.op {
            EtcdOp::Put { key_prefix, value } => {
                let key = format!("{key_prefix}{sequence:010}");
                self.put(client, key, value).await
            }
            EtcdOp::Get { key, serializable } => {
                let request = RangeRequest {
                    key: key.clone(),
                    serializable: *serializable,
                    ..Default::default()
                };
                let response = tokio::time::timeout(
                    self.request_timeout,
                    client.range(self.pool.request(request)),
                )
                .await
                .map_err(|_| {
                    anyhow::anyhow!("range timed out after {:?}", self.request_timeout)
                })??;
                if response.get_ref().kvs.is_empty() {
                    // The key was written before the run; a read that misses it is wrong.
                    bail!("key {:?} not found", String::from_utf8_lossy(key));
                }
                Ok(())
            }
        }
    }
}

/// Logs in as `NAME:PASSWORD` (etcdctl's `--user` form) and returns the token.
async fn authenticate(
    channel: &Channel,
    user: &str,
    timeout: Duration,
) -> anyhow::Result<tonic::metadata::AsciiMetadataValue> {
    let (name, password) = user
        .split_once(':')
        .context("--user must be NAME:PASSWORD")?;
    let mut auth = AuthClient::new(channel.clone());
    let request = AuthenticateRequest {
        name: name.to_string(),
        password: password.to_string(),
    };
    let response = tokio::time::timeout(timeout, auth.authenticate(request))
        .await
        .map_err(|_| anyhow::anyhow!("authenticate timed out after {timeout:?}"))?
        .with_context(|| format!("authenticate as {name}"))?;
    response
        .into_inner()
        .token
        .parse()
        .context("the token is not valid metadata")
}

/// Writes `key` once (before a get run), through the pool's first connection.
pub async fn write_key(
    pool: &Pool,
    key: &[u8],
    value: Vec<u8>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut client = KvClient::new(pool.channel(0));
    let request = PutRequest {
        key: key.to_vec(),
        value,
        ..Default::default()
    };
    tokio::time::timeout(timeout, client.put(pool.request(request)))
        .await
        .map_err(|_| anyhow::anyhow!("put timed out after {timeout:?}"))?
        .with_context(|| format!("put through {}", pool.target(0)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_strips_scheme_and_slash() {
        assert_eq!(host_port("http://127.0.0.1:2379/"), "127.0.0.1:2379");
        assert_eq!(host_port(" 127.0.0.1:2379"), "127.0.0.1:2379");
    }

    #[test]
    fn default_connections_is_one_per_endpoint_but_not_more_than_clients() {
        assert_eq!(default_connections(3, 128), 3);
        assert_eq!(default_connections(3, 2), 2);
        assert_eq!(default_connections(3, 1), 1);
        assert_eq!(default_connections(1, 0), 1);
    }
}
