//! Requests over Strata's native HTTP API (`put` and `get`): every task owns its own
//! [`strata_client::Client`] over every endpoint.

use crate::load::Driver;
use anyhow::bail;
use std::time::Duration;
use strata_client::Client;
use strata_proto::kv::{RangeRequest, RangeResponse};

/// What every request of a run does.
#[derive(Debug, Clone)]
pub enum Workload {
    /// Writes `{key_prefix}{sequence}`, so every put creates a new key.
    Put {
        /// Prefix of every written key.
        key_prefix: String,
        /// The value written each time.
        value: Vec<u8>,
    },
    /// Reads one existing key.
    Get {
        /// The key, written once before the run.
        key: Vec<u8>,
        /// Serve from the contacted replica instead of confirming leadership first.
        serializable: bool,
    },
}

/// A [`Workload`] over the native API, with the settings every client is built from.
#[derive(Debug)]
pub struct NativeDriver {
    /// The request every task repeats.
    pub workload: Workload,
    /// API endpoints; client `i` lists them rotated by `i`, so load spreads over the nodes.
    pub endpoints: Vec<String>,
    /// Per-request timeout (over every endpoint the client tries).
    pub request_timeout: Duration,
}

impl Driver for NativeDriver {
    type Client = Client;

    fn client(&self, client_index: usize) -> Client {
        let mut endpoints = self.endpoints.clone();
        let rotation = client_index % endpoints.len().max(1);
        endpoints.rotate_left(rotation);
        Client::new(&endpoints).with_timeout(self.request_timeout)
    }

    async fn warm_up(&self, client: &mut Client, client_index: usize) -> anyhow::Result<()> {
        match &self.workload {
            Workload::Put { key_prefix, value } => {
                client
                    .put(format!("{key_prefix}warmup-{client_index}"), value.clone())
                    .await?;
                Ok(())
            }
            Workload::Get { .. } => self.issue(client, 0).await,
        }
    }

    async fn issue(&self, client: &mut Client, sequence: u64) -> anyhow::Result<()> {
        match &self.workload {
            Workload::Put { key_prefix, value } => {
                client
                    .put(format!("{key_prefix}{sequence:010}"), value.clone())
                    .await?;
                Ok(())
            }
            Workload::Get { key, serializable } => {
                let request = RangeRequest {
                    key: key.clone(),
                    serializable: *serializable,
                    ..Default::default()
                };
                let response: RangeResponse = client.post("/v1/kv/range", &request).await?;
                if response.kvs.is_empty() {
                    // The key was written before the run; a read that misses it is wrong.
                    bail!("key {:?} not found", String::from_utf8_lossy(key));
                }
                Ok(())
            }
        }
    }
}
