//! [`Context`]: what every service shares: the backend, the request size limit and the
//! helpers that fill response headers and map errors.

use crate::error::{self, Subject};
use crate::pb::etcdserverpb as pb;
use prost::Message;
use std::sync::Arc;
use strata_auth::kv::Need;
use strata_auth::Caller;
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
    /// Access control; `None` serves everyone (tests that mount bare routes).
    pub(crate) auth: Option<strata_auth::Auth>,
}

/// The gRPC metadata keys etcd reads a token from: `token` (clientv3, etcdctl), then
/// `authorization` (what etcd's JSON gateway forwards).
const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];

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

    /// Who sent `request`: the caller behind its token, in etcd's words when refused (no
    /// token at all is etcd's "user name is empty"; a bad one its "invalid auth token").
    ///
    /// The credentials are taken from the request at once, so the returned future owns
    /// everything it needs (a streaming request need not be held across the await).
    pub(crate) fn who<T>(
        &self,
        request: &tonic::Request<T>,
    ) -> impl std::future::Future<Output = Result<Caller, Status>> + Send + 'static {
        let tls = request
            .extensions()
            .get::<crate::server::TlsConnectInfo>()
            .cloned();
        let from = tls
            .as_ref()
            .and_then(|t| t.remote)
            .or_else(|| request.remote_addr())
            .map(|a| a.to_string());
        let token = TOKEN_KEYS.iter().find_map(|key| {
            let value = request.metadata().get(*key)?.to_str().ok()?;
            let value = value.trim();
            Some(value.strip_prefix("Bearer ").unwrap_or(value).to_string())
        });
        let auth = self.auth.clone();
        async move {
            let Some(auth) = auth else {
                return Ok(Caller::open("etcd", from));
            };
            // With no token, a verified client certificate names the user (etcd's
            // --client-cert-auth).
            if let (None, Some(name)) = (&token, tls.and_then(|t| t.certificate)) {
                return auth
                    .gate
                    .caller_by_certificate("etcd", &name, from)
                    .map_err(|_| error::invalid_auth_token());
            }
            auth.caller("etcd", token.as_deref(), from)
                .await
                .map_err(|_| match token {
                    None => error::user_empty(),
                    Some(_) => error::invalid_auth_token(),
                })
        }
    }

    /// Allows `who` what a KV request needs, or refuses with etcd's "permission denied".
    pub(crate) fn allow(&self, who: &Caller, needs: &[Need], action: &str) -> Result<(), Status> {
        match &self.auth {
            None => Ok(()),
            Some(auth) => auth
                .gate
                .check_kv(who, needs, action)
                .map_err(|e| self.status(e, Subject::Key)),
        }
    }

    /// Allows `who` `access` on every key attached to lease `id` (etcd's rule for revoking a
    /// lease and listing its keys); an unknown lease passes, for the call to answer.
    pub(crate) async fn allow_lease_keys(
        &self,
        who: &Caller,
        id: i64,
        access: strata_auth::Access,
        action: &str,
    ) -> Result<(), Status> {
        let Some(auth) = &self.auth else {
            return Ok(());
        };
        if !who.enforced() || who.is_root() {
            return Ok(());
        }
        match self.backend.lease_time_to_live(id, true).await {
            Ok(lease) => auth
                .gate
                .check_lease_keys(who, &lease.keys, access, action)
                .map_err(|e| self.status(e, Subject::Key)),
            Err(_) => Ok(()),
        }
    }

    /// The client's address, from the TLS connection or the TCP one.
    pub(crate) fn from<T>(&self, request: &tonic::Request<T>) -> Option<String> {
        request
            .extensions()
            .get::<crate::server::TlsConnectInfo>()
            .and_then(|t| t.remote)
            .or_else(|| request.remote_addr())
            .map(|a| a.to_string())
    }

    /// Allows only root (membership, compaction, maintenance, auth management).
    pub(crate) fn allow_root(&self, who: &Caller, action: &str) -> Result<(), Status> {
        match &self.auth {
            None => Ok(()),
            Some(auth) => auth
                .gate
                .check_root(who, action)
                .map_err(|e| self.status(e, Subject::Key)),
        }
    }

    /// Refuses a request larger than the limit, as etcd does before proposing it.
    pub(crate) fn check_size(&self, request: &impl Message) -> Result<(), Status> {
        if request.encoded_len() > self.max_request_bytes {
            return Err(error::request_too_large());
        }
        Ok(())
    }
}
