//! The `etcdserverpb.Cluster` service: list, add, remove and promote members.
//!
//! Strata adds every member as a learner and promotes it once it has caught up, by itself;
//! `MemberPromote` therefore only reports where a member stands.

use crate::context::Context;
use crate::error::{self, Subject};
use crate::pb::etcdserverpb as pb;
use strata_proto::{MemberStatus, NodeInfo};
use tonic::{Request, Response, Status};

/// The role name a learner has in `strata_proto::MemberStatus`.
const LEARNER: &str = "learner";

/// Serves the Cluster service.
pub(crate) struct ClusterService {
    ctx: Context,
}

impl ClusterService {
    /// The header of a membership answer: etcd's carries no revision (the membership is not
    /// part of the key space), so its JSON has none either.
    fn cluster_header(&self) -> pb::ResponseHeader {
        pb::ResponseHeader {
            revision: 0,
            ..self.ctx.current_header()
        }
    }

    /// Returns the service over the shared context.
    pub(crate) fn new(ctx: Context) -> Self {
        ClusterService { ctx }
    }

    fn members(&self) -> Vec<pb::Member> {
        self.ctx
            .backend
            .status()
            .members
            .iter()
            .map(member)
            .collect()
    }
}

/// Converts a member to etcd's shape.
pub(crate) fn member(status: &MemberStatus) -> pb::Member {
    // Clients dial `client_urls` for gRPC, so this is the member's gRPC address (the HTTP API
    // address only for a member that serves no gRPC).
    let client_addr = if status.grpc_addr.is_empty() {
        &status.api_addr
    } else {
        &status.grpc_addr
    };
    let client_urls = if client_addr.is_empty() {
        Vec::new()
    } else {
        vec![format!("http://{client_addr}")]
    };
    pb::Member {
        id: status.id,
        name: format!("strata-{}", status.id),
        peer_ur_ls: vec![format!("http://{}", status.raft_addr)],
        client_ur_ls: client_urls,
        is_learner: status.role == LEARNER,
    }
}

/// Returns the `HOST:PORT` of a peer URL such as `http://10.0.0.1:7701`.
fn peer_address(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let address = rest.trim_end_matches('/');
    let (host, port) = address.rsplit_once(':')?;
    if host.is_empty() || address.contains('/') || port.parse::<u16>().is_err() {
        return None;
    }
    Some(address.to_string())
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let who = self.ctx.who(&request).await?;
        self.ctx.allow_root(&who, "member_add")?;
        let request = request.into_inner();
        // A Strata member has one Raft address; etcd allows several peer URLs.
        let [url] = request.peer_ur_ls.as_slice() else {
            return Err(error::member_bad_urls());
        };
        let raft_addr = peer_address(url).ok_or_else(error::member_bad_urls)?;
        let status = self.ctx.backend.status();
        if status.members.iter().any(|m| m.raft_addr == raft_addr) {
            return Err(Status::failed_precondition(
                "etcdserver: Peer URLs already exists",
            ));
        }
        let info = NodeInfo {
            raft_addr,
            api_addr: String::new(),
            grpc_addr: String::new(),
        };
        let id = self
            .ctx
            .backend
            .add_member(0, info)
            .await
            .map_err(|e| self.ctx.status(e, Subject::Member))?;
        let added = pb::Member {
            id,
            name: String::new(),
            peer_ur_ls: request.peer_ur_ls.clone(),
            client_ur_ls: Vec::new(),
            is_learner: request.is_learner,
        };
        Ok(Response::new(pb::MemberAddResponse {
            header: Some(self.cluster_header()),
            member: Some(added),
            members: self.members(),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let who = self.ctx.who(&request).await?;
        self.ctx.allow_root(&who, "member_remove")?;
        let id = request.into_inner().id;
        let status = self.ctx.backend.status();
        if !status.members.iter().any(|m| m.id == id) {
            return Err(error::member_not_found());
        }
        self.ctx
            .backend
            .remove_member(id)
            .await
            .map_err(|e| self.ctx.status(e, Subject::Member))?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: Some(self.cluster_header()),
            members: self.members(),
        }))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let who = self.ctx.who(&request).await?;
        self.ctx.allow_root(&who, "member_update")?;
        Err(error::unimplemented(
            "MemberUpdate (changing a member's peer URLs; remove and add the member instead)",
        ))
    }

    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.cluster_header()),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let who = self.ctx.who(&request).await?;
        self.ctx.allow_root(&who, "member_promote")?;
        let id = request.into_inner().id;
        let status = self.ctx.backend.status();
        let Some(found) = status.members.iter().find(|m| m.id == id) else {
            return Err(error::member_not_found());
        };
        if found.role == LEARNER {
            // The node promotes the learner itself as soon as it has caught up.
            return Err(Status::failed_precondition(
                "etcdserver: can only promote a learner member which is in sync with leader",
            ));
        }
        Err(error::member_not_learner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_become_addresses() {
        assert_eq!(
            peer_address("http://127.0.0.1:7701").as_deref(),
            Some("127.0.0.1:7701")
        );
        assert_eq!(
            peer_address("https://[::1]:7701/").as_deref(),
            Some("[::1]:7701")
        );
        assert_eq!(peer_address("node:7701").as_deref(), Some("node:7701"));
        assert_eq!(peer_address("http://node"), None);
        assert_eq!(peer_address("http://:7701"), None);
        assert_eq!(peer_address("http://node:7701/path"), None);
    }

    #[test]
    fn members_look_like_etcd_members() {
        let status = MemberStatus {
            id: 3,
            raft_addr: "127.0.0.1:7701".into(),
            api_addr: "127.0.0.1:7700".into(),
            grpc_addr: String::new(),
            role: "learner".into(),
        };
        let converted = member(&status);
        assert_eq!(converted.name, "strata-3");
        assert_eq!(converted.peer_ur_ls, ["http://127.0.0.1:7701"]);
        assert_eq!(converted.client_ur_ls, ["http://127.0.0.1:7700"]);
        assert!(converted.is_learner);
    }
}
