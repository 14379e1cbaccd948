//! openraft glue: how Strata persists and replicates its control-plane log.
//!
//! - [`TypeConfig`]: the openraft type configuration. Log entries carry
//!   [`strata_proto::kv::Command`]s; members are [`strata_proto::NodeInfo`].
//! - [`LogStore`]: the Raft log and vote on fjall. Appends are group-committed by one writer
//!   thread: every append queued while a commit is in flight goes into the next commit, and
//!   openraft is told an entry is durable only after the fsync that covers it returns.
//! - [`StateMachineStore`]: adapts any [`StateMachine`] to openraft. The application state
//!   lives in memory; it is made durable by the log plus a snapshot file written atomically.
//!   On restart the latest snapshot is restored and openraft re-applies the committed tail.
//! - [`run_snapshot_schedule`]: when each node snapshots (staggered across members).
//! - [`network`]: the node-to-node transport (HTTP/1.1, postcard bodies) and its server routes.
//! - [`consensus::Consensus`]: the consensus plumbing behind one handle: write batching into
//!   log entries (`proposer`), a follower's forwarding to the leader, read-index batching
//!   (`read_index`), membership changes and the leadership hand-off.
//! - [`parse_checked`]: the parser of the checksummed snapshot and vote-marker files; public
//!   only so that fuzz targets and tests can feed it arbitrary bytes.
//!
//! **Architecture Invariant:** nothing here knows about KV semantics; the state machine is a
//! trait object and commands are opaque. **Architecture Invariant:** a write is acknowledged only after it is applied,
//! which openraft allows only after a majority has fsynced it.

pub mod backup;
pub mod consensus;
mod disk_space;
mod log_store;
pub mod network;
mod proposer;
mod read_index;
mod slow;
mod snapshot_data;
mod snapshot_file;
mod snapshot_schedule;
mod state_machine;
mod storage;

pub use disk_space::{DiskSpace, DEFAULT_RESERVE as DEFAULT_DISK_RESERVE};
pub use log_store::{LogStore, CACHE_BYTES as LOG_CACHE_BYTES};
pub use slow::SlowSteps;
pub use snapshot_data::SnapshotData;
pub use snapshot_file::{parse_checked, SnapshotParts};
pub use snapshot_schedule::{
    next_snapshot_due, run_snapshot_schedule, snapshot_phase, SnapshotRule, SnapshotSends,
    SnapshotSizes,
};
pub use state_machine::{SnapshotStats, SnapshotWriter, StateMachine, StateMachineStore};
pub use storage::{open_storage, DataDir, StorageError};

use strata_proto::kv::{Command, CommandResult};
use strata_proto::NodeInfo;

openraft::declare_raft_types!(
    /// The openraft type configuration of Strata's control plane.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Lets every task on the current-thread test runtime run until it waits (tests on tokio's
/// paused clock use it to observe that something did, or did not, happen).
#[cfg(test)]
pub(crate) async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// The Raft handle specialised to Strata.
pub type Raft = openraft::Raft<TypeConfig>;
/// Node id.
pub type NodeId = u64;
