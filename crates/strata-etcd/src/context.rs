//! [`Context`]: what every service shares: the backend, the request size limit and the
//! helpers that fill response headers and map errors.

use crate::error::{self, Subject};
use crate::pb::etcdserverpb as pb;
use prost::Message;
use std::sync::Arc;
use strata_proto::error::ApiError;
use strata_proto::kv::ResponseHeader;
use strata_store::KvApi;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::Status;

/// The metadata key etcd clients set to ask that a stream fail while there is no leader.
const REQUIRE_LEADER_KEY: &str = "hasleader";

/// Shared by every service of one server; cheap to clone.
#[derive(Clone)]
pub(crate) struct Context {
    /// The node behind the API.
    pub(crate) backend: Arc<dyn KvApi>,
    /// Largest request accepted, in encoded bytes (etcd's `--max-request-bytes`). Requests
    /// up to this size plus [`GRPC_OVERHEAD_BYTES`](crate::GRPC_OVERHEAD_BYTES) are decoded,
    /// and then refused with etcd's "request is too large".
    pub(crate) max_request_bytes: usize,
    /// Cancelled when the server shuts down: long-lived streams (watch, keep-alive, observe)
    /// end with etcd's "server stopped" so that graceful shutdown does not wait on them.
    pub(crate) stop: CancellationToken,
}

impl Context {
    /// Returns a header at `revision` carrying this node's cluster id, member id and term.
    pub(crate) fn header(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.backend.cluster_id(),
            member_id: self.backend.node_id(),
            revision,
            raft_term: self.backend.raft_term(),
        }
    }

    /// Returns a header at the backend's current revision.
    pub(crate) fn current_header(&self) -> pb::ResponseHeader {
        self.header(self.backend.revision())
    }

    /// Completes a header that the backend returned with the ids etcd puts in every header.
    pub(crate) fn header_from(&self, header: &ResponseHeader) -> pb::ResponseHeader {
        let mut filled = self.header(header.revision);
        if header.raft_term != 0 {
            filled.raft_term = header.raft_term;
        }
        filled
    }

    /// Maps a backend error about `subject` to etcd's status.
    pub(crate) fn status(&self, error: ApiError, subject: Subject) -> Status {
        let status = error::to_status(&error, subject, || self.backend.status().leader.is_some());
        tracing::debug!(code = %error.code, message = %error.message, grpc = ?status.code(), "etcd request failed");
        status
    }

    /// Refuses a stream when the client asked for a leader (clientv3's `WithRequireLeader`
    /// sends the `hasleader: true` metadata) and none is known, as etcd does.
    pub(crate) fn check_require_leader(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let required = metadata
            .get(REQUIRE_LEADER_KEY)
            .and_then(|value| value.to_str().ok())
            == Some("true");
        if required && self.backend.status().leader.is_none() {
            return Err(error::no_leader());
        }
        Ok(())
    }

    /// Refuses a request larger than the limit, as etcd does before proposing it.
    pub(crate) fn check_size(&self, request: &impl Message) -> Result<(), Status> {
        if request.encoded_len() > self.max_request_bytes {
            return Err(error::request_too_large());
        }
        Ok(())
    }
}
