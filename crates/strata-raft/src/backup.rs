//! Backups: what a saved snapshot file holds ([`inspect`]), and a new data folder made from
//! one ([`restore`]), as `strata cluster snapshot save` and `restore` use them.
//!
//! A backup is a file in the format of `snapshot.bin` (see `snapshot_file`), written by
//! `StateMachineStore::export`. Restoring it makes a data folder for a one-member cluster that
//! holds the backup's state: its snapshot is the backup with the membership replaced by the
//! restored node alone, and its log starts right after the snapshot (purged up to it), so the
//! node elects itself and serves; other members join with `strata cluster add-member`.

use crate::state_machine::{decode_meta, encode_meta_as};
use crate::{LogStore, NodeId};
use openraft::storage::RaftLogStorage;
use openraft::{Membership, SnapshotMeta, StoredMembership};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use strata_proto::NodeInfo;

/// What a backup file holds.
#[derive(Debug, Clone)]
pub struct BackupInfo {
    /// The last log entry the state includes: (term, index); `None` for an empty cluster.
    pub last_log: Option<(u64, u64)>,
    /// The members at that point.
    pub members: BTreeMap<NodeId, NodeInfo>,
    /// Bytes of state data.
    pub data_bytes: u64,
    /// The log format of the data (see `strata_proto::log`).
    pub format: u32,
}

fn info_of(meta: &SnapshotMeta<NodeId, NodeInfo>, data_bytes: u64, format: u32) -> BackupInfo {
    BackupInfo {
        last_log: meta.last_log_id.map(|id| (id.leader_id.term, id.index)),
        members: meta
            .last_membership
            .membership()
            .nodes()
            .map(|(id, node)| (*id, node.clone()))
            .collect(),
        data_bytes,
        format,
    }
}

/// Reads a backup file, checks its checksum (reading it whole, streamed) and returns what it
/// holds. Damage is an error naming what is wrong.
pub fn inspect(path: &Path) -> Result<BackupInfo, String> {
    let (meta, region, format) = open_backup(path)?;
    Ok(info_of(&meta, region.len, format))
}

fn open_backup(
    path: &Path,
) -> Result<
    (
        SnapshotMeta<NodeId, NodeInfo>,
        crate::snapshot_file::Region,
        u32,
    ),
    String,
> {
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => (dir, name.to_string_lossy().into_owned()),
        _ => return Err(format!("{} is not a file name", path.display())),
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let (meta, region) = crate::snapshot_file::open_region(dir, &name, true)?
        .ok_or_else(|| format!("{} does not exist", path.display()))?;
    let (meta, format) =
        decode_meta(&meta).map_err(|e| format!("{}: metadata: {e}", path.display()))?;
    Ok((meta, region, format))
}

/// Makes `data_dir` (which must be empty or absent) the data folder of node `id` of a new
/// one-member cluster holding the backup at `backup`. `me` is the node's addresses as far as
/// known; the node corrects them in the membership when it starts.
pub async fn restore(
    backup: &Path,
    data_dir: &Path,
    id: NodeId,
    me: NodeInfo,
) -> Result<BackupInfo, String> {
    if std::fs::read_dir(data_dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(format!(
            "{} is not empty: restore into a new folder, so nothing is overwritten",
            data_dir.display()
        ));
    }
    let (meta, region, format) = open_backup(backup)?;
    let data = crate::open_storage(data_dir).map_err(|e| e.to_string())?;
    let membership = Membership::new(vec![BTreeSet::from([id])], BTreeMap::from([(id, me)]));
    let restored = SnapshotMeta {
        last_log_id: meta.last_log_id,
        last_membership: StoredMembership::new(meta.last_log_id, membership),
        snapshot_id: format!("restored-{}", meta.snapshot_id),
    };
    let meta_bytes = encode_meta_as(&restored, format).map_err(|e| e.to_string())?;
    let mut reader = region.reader();
    crate::snapshot_file::save_streaming(
        &data.path,
        crate::snapshot_file::FILE,
        &meta_bytes,
        crate::snapshot_file::Pace::Alone,
        |out| std::io::copy(&mut reader.by_ref(), out).map(|_| ()),
    )
    .map_err(|e| format!("write {}: {e}", data.path.display()))?;
    // The log starts after the snapshot, as if it had been purged up to it; the vote (this
    // node, in the backup's last term) is written after it, and its write returns once both
    // are durable (one writer, in order).
    if let Some(last) = restored.last_log_id {
        let mut log = LogStore::open(&data).map_err(|e| e.to_string())?;
        log.purge(last).await.map_err(|e| e.to_string())?;
        log.save_vote(&openraft::Vote::new(last.leader_id.term, id))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(info_of(&restored, region.len, format))
}
