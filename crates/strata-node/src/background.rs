//! The node's own background work: founding the cluster, keeping this node's addresses in the
//! membership, lease expiry, automatic compaction, leader-change accounting, and the gauges
//! refreshed at scrape time.

use crate::metrics;
use crate::service::{KvService, LeaderRequest};
use crate::NodeError;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_config::{AutoCompaction, ValidatedConfig};
use strata_proto::kv::CompactRequest;
use strata_proto::NodeInfo;
use strata_raft::Raft;
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
/// raft address; a restart may change the API port).
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
                if node.api_addr != me.api_addr || node.grpc_addr != me.grpc_addr =>
            {
                let info = NodeInfo {
                    raft_addr: node.raft_addr,
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

/// On the leader: revokes leases whose TTL passed without a keep-alive.
pub(crate) async fn lease_expiry_loop(service: Arc<KvService>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        for id in service.expired_leases() {
            info!(lease = id, "lease expired; revoking");
            if let Err(e) = service
                .serve_as_leader(LeaderRequest::Write(strata_proto::kv::Command::Kv(
                    strata_proto::kv::KvCommand::LeaseRevoke { id },
                )))
                .await
            {
                tracing::debug!(lease = id, error = %e, "revoking expired lease failed; will retry");
            }
        }
    }
}

/// On the leader: compacts history automatically by revision count or by age.
pub(crate) async fn compaction_loop(
    service: Arc<KvService>,
    mode: AutoCompaction,
    cancel: CancellationToken,
) {
    let mut samples: std::collections::VecDeque<(Instant, i64)> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !service.is_leader() {
            samples.clear();
            continue;
        }
        let (revision, compacted) = {
            let store = service.machine.read();
            (store.revision(), store.compact_revision())
        };
        let target = match mode {
            AutoCompaction::Off => continue,
            AutoCompaction::Revisions(keep) => {
                let target = revision - keep;
                // Compact in steps of at least a tenth of the retention, not every second.
                if target - compacted >= (keep / 10).max(1) {
                    Some(target)
                } else {
                    None
                }
            }
            AutoCompaction::Period(keep) => {
                let now = Instant::now();
                samples.push_back((now, revision));
                let mut target = None;
                while let Some((at, rev)) = samples.front().copied() {
                    if now.duration_since(at) < keep {
                        break;
                    }
                    target = Some(rev);
                    samples.pop_front();
                }
                target.filter(|t| *t > compacted)
            }
        };
        if let Some(target) = target {
            info!(revision = target, "auto-compacting");
            if let Err(e) = service.compact(CompactRequest { revision: target }).await {
                tracing::debug!(error = %e, "auto-compaction failed; will retry");
            }
        }
    }
}

/// Counts leader changes for metrics.
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

/// Copies current values into the gauges (called when /metrics is scraped).
pub fn refresh_metrics(service: &KvService) {
    let m = service.raft.metrics().borrow().clone();
    let metrics = &service.metrics;
    metrics.raft_term.set(m.current_term as i64);
    metrics
        .raft_applied_index
        .set(m.last_applied.map(|l| l.index).unwrap_or(0) as i64);
    metrics
        .raft_commit_index
        .set(service.log.committed_index() as i64);
    metrics
        .raft_last_log_index
        .set(m.last_log_index.unwrap_or(0) as i64);
    metrics
        .raft_is_leader
        .set(i64::from(m.current_leader == Some(service.id)));
    metrics::advance(&metrics.raft_log_fsyncs, service.log.fsync_count());
    metrics.raft_log_entries.set(service.log.len() as i64);
    metrics
        .raft_snapshot_bytes
        .set(service.sm.snapshot_bytes() as i64);
    metrics::advance(
        &metrics.raft_snapshots_installed,
        service.sm.snapshots_installed(),
    );
    let (stats, revision, compacted) = {
        let store = service.machine.read();
        (store.stats(), store.revision(), store.compact_revision())
    };
    metrics.kv_revision.set(revision);
    metrics.kv_compact_revision.set(compacted);
    metrics.kv_keys.set(stats.keys as i64);
    metrics.kv_leases.set(stats.leases as i64);
    metrics
        .storage_db_bytes
        .set(folder_size(&service.config.data_dir) as i64);
}

/// Returns the total size of the files under `path` (bounded depth; errors count as 0).
pub(crate) fn folder_size(path: &std::path::Path) -> u64 {
    fn walk(path: &std::path::Path, depth: u32) -> u64 {
        let Ok(entries) = std::fs::read_dir(path) else {
            return 0;
        };
        entries
            .flatten()
            .map(|entry| match entry.metadata() {
                Ok(meta) if meta.is_dir() && depth < 4 => walk(&entry.path(), depth + 1),
                Ok(meta) => meta.len(),
                Err(_) => 0,
            })
            .sum()
    }
    walk(path, 0)
}
