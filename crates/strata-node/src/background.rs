//! The node's own background work: founding the cluster, keeping this node's addresses in the
//! membership, and leader-change accounting (with the exit on a fatal Raft failure).

use crate::NodeError;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use strata_kvservice::service::{KvService, LeaderRequest};
use strata_proto::NodeInfo;
use strata_raft::Raft;
use strata_settings::ValidatedConfig;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Founds the cluster if this node is the lowest id of `initial_cluster` and has no state.
pub(crate) async fn bootstrap(
    raft: &Raft,
    config: &ValidatedConfig,
    me: &NodeInfo,
) -> Result<(), NodeError> {
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
    let founder = config.initial_cluster.keys().next().copied();
    if initialized || founder != Some(config.id) {
        if !initialized && config.initial_cluster.is_empty() {
            info!(
                node_id = config.id,
                "no cluster state; waiting to be added with `strata cluster add-member`"
            );
        }
        return Ok(());
    }
    let members: BTreeMap<u64, NodeInfo> = config
        .initial_cluster
        .iter()
        .map(|(id, addr)| {
            let info = if *id == config.id {
                me.clone()
            } else {
                NodeInfo {
                    raft_addr: addr.clone(),
                    api_addr: String::new(),
                    grpc_addr: String::new(),
                }
            };
            (*id, info)
        })
        .collect();
    info!(
        node_id = config.id,
        members = members.len(),
        "founding the cluster"
    );
    raft.initialize(members)
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))
}

/// Keeps this node's addresses in the membership current (founding members start with only a
/// raft address; a restart may change the API port; a member restored from a backup may not
/// know its raft address, which is then filled in).
pub(crate) async fn register_self(
    service: Arc<KvService>,
    me: NodeInfo,
    cancel: CancellationToken,
) {
    loop {
        let known = {
            let metrics = service.raft.metrics();
            let m = metrics.borrow();
            let node = m
                .membership_config
                .membership()
                .get_node(&service.id)
                .cloned();
            (node, m.current_leader)
        };
        match known {
            (Some(node), Some(_))
                if node.api_addr != me.api_addr
                    || node.grpc_addr != me.grpc_addr
                    || node.raft_addr.is_empty() =>
            {
                let raft_addr = if node.raft_addr.is_empty() {
                    me.raft_addr.clone()
                } else {
                    node.raft_addr
                };
                let info = NodeInfo {
                    raft_addr,
                    api_addr: me.api_addr.clone(),
                    grpc_addr: me.grpc_addr.clone(),
                };
                match service
                    .leader_call(LeaderRequest::SetNode(service.id, info))
                    .await
                {
                    Ok(_) => {
                        info!(node_id = service.id, api = %me.api_addr, "registered API address")
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "registering API address failed; will retry")
                    }
                }
            }
            _ => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Counts leader changes, and cancels `fatal` if Raft stops on its own (a storage failure):
/// a node whose consensus is dead must exit rather than keep answering `unavailable`.
pub(crate) async fn leader_change_loop(
    service: Arc<KvService>,
    fatal: CancellationToken,
    cancel: CancellationToken,
) {
    let mut metrics = service.raft.metrics();
    let mut last_leader = metrics.borrow().current_leader;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() {
                if !cancel.is_cancelled() {
                    tracing::error!(node_id = service.id, "raft stopped unexpectedly; the node will exit");
                    fatal.cancel();
                }
                return;
            },
        }
        if let Err(e) = &metrics.borrow().running_state {
            tracing::error!(node_id = service.id, error = %e, "raft failed; the node will exit");
            fatal.cancel();
            return;
        }
        let leader = metrics.borrow().current_leader;
        if leader != last_leader {
            if leader.is_some() {
                service.metrics.raft_leader_changes.inc();
                info!(node_id = service.id, leader = ?leader, "leader changed");
            }
            last_leader = leader;
        }
    }
}

/// Warns when the async runtime's timers run late (see [`strata_raft::SlowSteps`]): a worker
/// thread held by a long synchronous step, or the process starved of CPU, stalls every request
/// the way a slow disk does, and this tells the two apart in the log.
pub(crate) async fn runtime_watchdog(cancel: CancellationToken) {
    const PERIOD: Duration = Duration::from_millis(100);
    let late = strata_raft::SlowSteps::new("async_runtime_timer", Duration::from_millis(50));
    loop {
        let before = std::time::Instant::now();
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(PERIOD) => {}
        }
        late.observe(before.elapsed().saturating_sub(PERIOD));
    }
}
