//! The KV service's own background work on the leader: lease expiry and automatic
//! compaction; and the gauges refreshed when `/metrics` is scraped.

use crate::metrics;
use crate::service::{KvService, LeaderRequest};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_proto::kv::CompactRequest;
use strata_settings::AutoCompaction;
use tokio_util::sync::CancellationToken;
use tracing::info;

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

/// Builds a snapshot soon after a compaction that dropped much of the history, so the disk it
/// took is given back without anyone asking: the snapshot file shrinks to the compacted state
/// and the log behind it is purged. Each node waits a little by its id first, so a cluster's
/// members do not all snapshot at the same moment.
pub(crate) async fn snapshot_after_compaction_loop(
    service: Arc<KvService>,
    cancel: CancellationToken,
) {
    let stagger = Duration::from_secs(2 * (service.id % 5));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = service.machine.compacted_much() => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(stagger) => {}
        }
        info!("a compaction dropped much of the history; building a snapshot to reclaim disk");
        if let Err(e) = service.raft.trigger().snapshot().await {
            // Raft is stopping (the node shuts down and cancels this loop too).
            tracing::debug!(error = %e, "triggering a snapshot failed");
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
    let transport = strata_raft::network::transport_stats();
    metrics::advance(
        &metrics.raft_append_streams_opened,
        transport.streams_opened,
    );
    metrics::advance(&metrics.raft_appends_streamed, transport.streamed_appends);
    metrics::advance(&metrics.raft_appends_posted, transport.posted_appends);
    metrics::advance(&metrics.raft_forwards_streamed, transport.streamed_forwards);
    metrics::advance(
        &metrics.raft_stream_late_replies,
        transport.late_replies_dropped,
    );
    metrics.raft_log_entries.set(service.log.len() as i64);
    metrics
        .raft_snapshot_index
        .set(m.snapshot.map(|l| l.index).unwrap_or(0) as i64);
    let snapshots = service.sm.snapshot_stats();
    metrics.raft_snapshot_bytes.set(snapshots.bytes as i64);
    metrics::advance(&metrics.raft_snapshots_installed, snapshots.installed);
    metrics::advance(&metrics.raft_snapshots_built, snapshots.built);
    metrics
        .raft_snapshot_apply_pause_max
        .set(snapshots.freeze_max_us as f64 / 1e6);
    metrics
        .raft_snapshot_write_seconds
        .set(snapshots.last_write_ms as f64 / 1e3);
    let (stats, revision, compacted, memory) = {
        let store = service.machine.read();
        (
            store.stats(),
            store.revision(),
            store.compact_revision(),
            store.memory(),
        )
    };
    let structures = [
        ("kv_keys", memory.key_bytes),
        ("kv_values", memory.value_bytes),
        ("kv_key_overhead", memory.key_overhead),
        ("kv_value_overhead", memory.value_overhead),
        ("kv_versions", memory.versions),
        ("kv_tree", memory.tree),
        ("kv_indexes", memory.indexes),
        ("watch_feed", service.machine.feed_bytes()),
        ("log_cache", service.log.cache_bytes()),
        ("resident", resident_bytes()),
    ];
    for (structure, bytes) in structures {
        metrics
            .memory
            .with_label_values(&[structure])
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
    metrics.kv_revision.set(revision);
    metrics.kv_compact_revision.set(compacted);
    metrics.kv_keys.set(stats.keys as i64);
    metrics.kv_leases.set(stats.leases as i64);
    metrics.storage_db_bytes.set(service.folder.get() as i64);
    let free = service.space.refresh();
    metrics
        .disk_free_bytes
        .set(i64::try_from(free).unwrap_or(i64::MAX));
    metrics
        .disk_read_only
        .set(i64::from(service.space.is_full()));
}

/// The process's resident memory (`/proc/self/statm`), 0 where that cannot be read.
fn resident_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// How long a walked folder size is reused.
pub const FOLDER_SIZE_TTL: Duration = Duration::from_secs(5);

/// The disk a data folder takes ([`folder_size`]), walked at most once per [`FOLDER_SIZE_TTL`]:
/// the node's status, which carries it, is asked for several times a second by the node's own
/// loops (monitor membership, Consul session reaping, Nacos server lists), and a walk stats
/// every file in the folder.
pub struct FolderSize {
    path: std::path::PathBuf,
    ttl: Duration,
    last: std::sync::Mutex<Option<(Instant, u64)>>,
}

impl FolderSize {
    /// The size of `path`, not walked yet, kept for [`FOLDER_SIZE_TTL`].
    pub fn new(path: std::path::PathBuf) -> Self {
        Self::with_ttl(path, FOLDER_SIZE_TTL)
    }

    /// The size of `path`, kept for `ttl`.
    pub fn with_ttl(path: std::path::PathBuf, ttl: Duration) -> Self {
        FolderSize {
            path,
            ttl,
            last: std::sync::Mutex::new(None),
        }
    }

    /// The folder's size, at most its time to live old.
    pub fn get(&self) -> u64 {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some((at, bytes)) if at.elapsed() < self.ttl => bytes,
            _ => {
                let bytes = folder_size(&self.path);
                *last = Some((Instant::now(), bytes));
                bytes
            }
        }
    }
}

/// Returns the disk the files under `path` take, in allocated bytes (bounded depth; errors
/// count as 0).
pub fn folder_size(path: &std::path::Path) -> u64 {
    fn walk(path: &std::path::Path, depth: u32) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let Ok(entries) = std::fs::read_dir(path) else {
            return 0;
        };
        // Allocated blocks, not lengths: the log engine's journal is a sparse file whose
        // length says nothing about the disk it takes.
        entries
            .flatten()
            .map(|entry| match entry.metadata() {
                Ok(meta) if meta.is_dir() && depth < 4 => walk(&entry.path(), depth + 1),
                Ok(meta) => meta.blocks() * 512,
                Err(_) => 0,
            })
            .sum()
    }
    walk(path, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_size_is_walked_again_only_once_it_is_older_than_its_time_to_live() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 64 * 1024]).unwrap();
        let kept = FolderSize::with_ttl(dir.path().to_path_buf(), Duration::from_secs(3600));
        let fresh = FolderSize::with_ttl(dir.path().to_path_buf(), Duration::ZERO);
        let before = kept.get();
        assert!(before >= 64 * 1024, "{before}");
        assert_eq!(fresh.get(), before);
        std::fs::write(dir.path().join("b"), vec![1u8; 64 * 1024]).unwrap();
        assert_eq!(kept.get(), before, "kept within its time to live");
        assert!(fresh.get() >= before + 64 * 1024, "walked again");
    }
}
