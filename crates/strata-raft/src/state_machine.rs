//! [`StateMachineStore`]: adapts an application [`StateMachine`] to openraft, with snapshots
//! persisted as a file in the data folder (see `snapshot_file`).

use crate::{NodeId, TypeConfig};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use strata_proto::kv::{Command, CommandResult};
use strata_proto::NodeInfo;

/// The application state replicated by Raft.
///
/// Implementations keep their state in memory and must be deterministic: the same commands
/// in the same order give the same state and results on every replica.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies one committed command. Never fails: a rejected command returns an error result.
    fn apply(&self, log_index: u64, command: &Command) -> CommandResult;
    /// Serializes the whole state.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the whole state with a snapshot produced by [`StateMachine::snapshot`] of a
    /// build writing log `format` (see `strata_proto::log`): a newer build restores what an
    /// older one wrote.
    fn restore(&self, data: &[u8], format: u32) -> Result<(), String>;
}

/// Where the application state stands in the log.
#[derive(Debug, Clone, Default)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, NodeInfo>,
}

/// The metadata stored in `snapshot.bin`. Format 1 wrote it bare; from format 2 on it follows a
/// varint format tag. Format 1's first byte is postcard's tag of `last_log_id`, an `Option`
/// (0 or 1), so a tag of 2 or more can never be mistaken for it.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, NodeInfo>,
}

fn encode_meta(meta: &SnapshotMeta<NodeId, NodeInfo>) -> Result<Vec<u8>, postcard::Error> {
    let mut bytes = postcard::to_allocvec(&strata_proto::log::FORMAT)?;
    postcard::to_io(&StoredSnapshot { meta: meta.clone() }, &mut bytes)?;
    Ok(bytes)
}

/// Decodes stored metadata of any format this build reads, with its format.
fn decode_meta(bytes: &[u8]) -> Result<(SnapshotMeta<NodeId, NodeInfo>, u32), String> {
    let (format, body) = match bytes.first() {
        Some(0 | 1) => (1, bytes),
        _ => postcard::take_from_bytes::<u32>(bytes).map_err(|e| e.to_string())?,
    };
    if !(strata_proto::log::OLDEST_FORMAT..=strata_proto::log::FORMAT).contains(&format) {
        return Err(format!(
            "snapshot format {format} is not one this build reads (a newer strata wrote it?)"
        ));
    }
    let stored: StoredSnapshot = postcard::from_bytes(body).map_err(|e| e.to_string())?;
    Ok((stored.meta, format))
}

/// The latest snapshot: its metadata and bytes.
/// Only the metadata stays in memory; the data is read back from `snapshot.bin` when a
/// follower needs it, so the node does not hold a second copy of its state.
type CurrentSnapshot = Option<SnapshotMeta<NodeId, NodeInfo>>;
/// A snapshot as loaded from disk: metadata, data and format.
type LoadedSnapshot = Option<(SnapshotMeta<NodeId, NodeInfo>, Vec<u8>, u32)>;

struct Inner<S> {
    app: Arc<S>,
    /// The data folder, where `snapshot.bin` lives.
    dir: PathBuf,
    applied: Mutex<Applied>,
    current: Mutex<CurrentSnapshot>,
    snapshot_seq: AtomicU64,
    snapshot_bytes: AtomicU64,
    snapshots_installed: AtomicU64,
}

/// The openraft state machine over an application [`StateMachine`]. Cheap to clone.
pub struct StateMachineStore<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for StateMachineStore<S> {
    fn clone(&self) -> Self {
        StateMachineStore {
            inner: self.inner.clone(),
        }
    }
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::new(
        ErrorSubject::StateMachine,
        verb,
        openraft::AnyError::error(e.to_string()),
    )
    .into()
}

fn snap_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::new(
        ErrorSubject::Snapshot(None),
        verb,
        openraft::AnyError::error(e.to_string()),
    )
    .into()
}

impl<S: StateMachine> StateMachineStore<S> {
    /// Restores `app` from the latest snapshot in `dir`, if any.
    pub fn open(app: Arc<S>, dir: PathBuf) -> Result<Self, StorageError<NodeId>> {
        let store = StateMachineStore {
            inner: Arc::new(Inner {
                app,
                dir,
                applied: Mutex::new(Applied::default()),
                current: Mutex::new(None),
                snapshot_seq: AtomicU64::new(0),
                snapshot_bytes: AtomicU64::new(0),
                snapshots_installed: AtomicU64::new(0),
            }),
        };
        if let Some((meta, data, format)) = store.load_snapshot()? {
            store
                .inner
                .app
                .restore(&data, format)
                .map_err(|e| snap_err(ErrorVerb::Read, e))?;
            *store.applied() = Applied {
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
            };
            store
                .inner
                .snapshot_bytes
                .store(data.len() as u64, Ordering::Relaxed);
            *store.current() = Some(meta);
            tracing::info!(applied = ?store.applied().last_applied, "restored state machine from snapshot");
        }
        Ok(store)
    }

    /// Returns the application state machine.
    pub fn app(&self) -> &Arc<S> {
        &self.inner.app
    }

    /// Returns the size of the latest snapshot in bytes.
    pub fn snapshot_bytes(&self) -> u64 {
        self.inner.snapshot_bytes.load(Ordering::Relaxed)
    }

    /// Returns how many snapshots this node has installed from a leader.
    pub fn snapshots_installed(&self) -> u64 {
        self.inner.snapshots_installed.load(Ordering::Relaxed)
    }

    fn applied(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.inner.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current(&self) -> std::sync::MutexGuard<'_, CurrentSnapshot> {
        self.inner.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn load_snapshot(&self) -> Result<LoadedSnapshot, StorageError<NodeId>> {
        let Some((meta, data)) = crate::snapshot_file::load(&self.inner.dir)
            .map_err(|e| snap_err(ErrorVerb::Read, e))?
        else {
            return Ok(None);
        };
        let (meta, format) = decode_meta(&meta).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Some((meta, data, format)))
    }

    /// Persists a snapshot durably, off the async runtime.
    async fn save_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        data: Arc<Vec<u8>>,
    ) -> Result<(), StorageError<NodeId>> {
        let dir = self.inner.dir.clone();
        let meta_bytes = encode_meta(meta).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        tokio::task::spawn_blocking(move || crate::snapshot_file::save(&dir, &meta_bytes, &data))
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?
            .map_err(|e| snap_err(ErrorVerb::Write, e))
    }
}

impl<S: StateMachine> RaftSnapshotBuilder<TypeConfig> for StateMachineStore<S> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // Serialize and read the applied position under the same lock that `apply` holds, so
        // the snapshot contains exactly the entries up to `last_applied`. The builder runs
        // concurrently with apply in openraft, so this lock is what makes the pair consistent.
        // Serialising is CPU-bound and can take a while on a large store: it runs off the
        // async runtime, so heartbeats and appends keep flowing meanwhile.
        let this = self.clone();
        let started = std::time::Instant::now();
        let (data, applied) = tokio::task::spawn_blocking(move || {
            let applied = this.applied();
            (this.inner.app.snapshot(), applied.clone())
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let serialize_ms = started.elapsed().as_millis() as u64;
        let seq = self.inner.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match applied.last_applied {
            Some(id) => format!("{}-{}-{seq}", id.leader_id.term, id.index),
            None => format!("0-0-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership.clone(),
            snapshot_id,
        };
        let data = Arc::new(data);
        let writing = std::time::Instant::now();
        self.save_snapshot(&meta, data.clone()).await?;
        self.inner
            .snapshot_bytes
            .store(data.len() as u64, Ordering::Relaxed);
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes = data.len(),
            serialize_ms,
            write_ms = writing.elapsed().as_millis() as u64,
            "built snapshot"
        );
        *self.current() = Some(meta.clone());
        let data = Arc::try_unwrap(data).unwrap_or_else(|shared| shared.as_ref().clone());
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl<S: StateMachine> RaftStateMachine<TypeConfig> for StateMachineStore<S> {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeInfo>), StorageError<NodeId>>
    {
        let applied = self.applied();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        for entry in entries {
            // Held while applying so that a concurrent snapshot sees state and position agree.
            let mut applied = self.applied();
            let result = match &entry.payload {
                EntryPayload::Blank => CommandResult::None,
                EntryPayload::Normal(command) => self.inner.app.apply(entry.log_id.index, command),
                EntryPayload::Membership(membership) => {
                    applied.membership =
                        StoredMembership::new(Some(entry.log_id), membership.clone());
                    CommandResult::None
                }
            };
            applied.last_applied = Some(entry.log_id);
            results.push(result);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = Arc::new(snapshot.into_inner());
        let app = self.inner.app.clone();
        let restoring = data.clone();
        // A snapshot sent by the leader is in the format both run (see `strata_proto::log`).
        tokio::task::spawn_blocking(move || app.restore(&restoring, strata_proto::log::FORMAT))
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, e))?
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        *self.applied() = Applied {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        self.save_snapshot(meta, data.clone()).await?;
        self.inner
            .snapshot_bytes
            .store(data.len() as u64, Ordering::Relaxed);
        self.inner
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "installed snapshot from leader");
        *self.current() = Some(meta.clone());
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        if self.current().is_none() {
            return Ok(None);
        }
        let this = self.clone();
        let loaded = tokio::task::spawn_blocking(move || this.load_snapshot())
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))??;
        Ok(loaded.map(|(meta, data, _format)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
