//! Node identity and cluster status.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What the cluster knows about a member: where to reach it. Stored in the Raft membership,
/// so it is written through the frozen [`crate::log::v1::NodeInfo`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// `HOST:PORT` of the node-to-node (Raft) listener.
    pub raft_addr: String,
    /// `HOST:PORT` of the client HTTP API listener; empty until the node has reported it.
    pub api_addr: String,
    /// `HOST:PORT` of the etcd v3 gRPC listener; empty when the node serves none.
    pub grpc_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} api={}", self.raft_addr, self.api_addr)
    }
}

/// One member as `strata cluster status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The member's node id.
    pub id: u64,
    /// `HOST:PORT` of its Raft listener.
    pub raft_addr: String,
    /// `HOST:PORT` of its client API listener.
    pub api_addr: String,
    /// `HOST:PORT` of its etcd v3 gRPC listener, empty when it serves none.
    #[serde(default)]
    pub grpc_addr: String,
    /// `leader`, `follower` or `learner`.
    pub role: String,
}

/// The cluster as seen by the node that answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The id of the node answering.
    pub node_id: u64,
    /// The current leader's id, if one is known.
    pub leader: Option<u64>,
    /// The current Raft term.
    pub term: u64,
    /// The highest log index known to be committed.
    pub commit_index: u64,
    /// The highest log index applied to this node's state machine.
    pub applied_index: u64,
    /// The KV store's current revision on this node.
    pub revision: i64,
    /// Every voter and learner.
    pub members: Vec<MemberStatus>,
    /// Bytes of disk the answering node's data folder uses (allocated blocks).
    #[serde(default)]
    pub disk_bytes: u64,
    /// Bytes free on the file system of the answering node's data folder.
    #[serde(default)]
    pub disk_free_bytes: u64,
    /// True while the answering node refuses writes because its free disk space is below
    /// `kv.disk_reserve`.
    #[serde(default)]
    pub read_only: bool,
}
