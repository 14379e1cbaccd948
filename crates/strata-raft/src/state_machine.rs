//! [`StateMachineStore`]: adapts an application [`StateMachine`] to openraft, with snapshots
//! persisted as a file in the data folder (see `snapshot_file`).

use crate::snapshot_data::SnapshotData;
use crate::snapshot_file::{Pace, Region};
use crate::{NodeId, TypeConfig};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata_proto::kv::{Command, CommandResult};
use strata_proto::NodeInfo;

/// Writes a frozen view of the state: see [`StateMachine::snapshot`]. It may be called more
/// than once and must then write the same bytes each time (a snapshot sent to a peer is
/// measured first, then streamed).
pub type SnapshotWriter = Box<dyn Fn(&mut dyn Write) -> std::io::Result<()> + Send + Sync>;

/// The application state replicated by Raft.
///
/// Implementations keep their state in memory and must be deterministic: the same commands
/// in the same order give the same state and results on every replica.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies one committed command. Never fails: a rejected command returns an error result.
    fn apply(&self, log_index: u64, command: &Command) -> CommandResult;
    /// Freezes the state as it is now, in constant time, and returns what serializes that
    /// view. Called with apply held off (so the view matches the applied position); the
    /// writer then runs on another thread while apply goes on.
    fn snapshot(&self) -> SnapshotWriter;
    /// Replaces the whole state with a snapshot written by [`StateMachine::snapshot`] of a
    /// build writing log `format` (see `strata_proto::log`), read as a stream: a newer build
    /// restores what an older one wrote.
    fn restore(&self, data: &mut dyn Read, format: u32) -> Result<(), String>;
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

pub(crate) fn encode_meta(
    meta: &SnapshotMeta<NodeId, NodeInfo>,
) -> Result<Vec<u8>, postcard::Error> {
    encode_meta_as(meta, strata_proto::log::FORMAT)
}

/// Encodes metadata tagged with `format`: the format of the data it goes with.
pub(crate) fn encode_meta_as(
    meta: &SnapshotMeta<NodeId, NodeInfo>,
    format: u32,
) -> Result<Vec<u8>, postcard::Error> {
    let mut bytes = postcard::to_allocvec(&format)?;
    postcard::to_io(&StoredSnapshot { meta: meta.clone() }, &mut bytes)?;
    Ok(bytes)
}

/// Decodes stored metadata of any format this build reads, with its format.
pub(crate) fn decode_meta(bytes: &[u8]) -> Result<(SnapshotMeta<NodeId, NodeInfo>, u32), String> {
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
/// A snapshot as opened on disk: metadata, where its data lies, and format.
type LoadedSnapshot = Option<(SnapshotMeta<NodeId, NodeInfo>, Region, u32)>;

struct Inner<S> {
    app: Arc<S>,
    /// The data folder, where `snapshot.bin` lives.
    dir: PathBuf,
    /// Its free space: a snapshot is built only if it fits above the reserve.
    space: Arc<crate::DiskSpace>,
    applied: Mutex<Applied>,
    current: Mutex<CurrentSnapshot>,
    /// Held while `snapshot.bin` is replaced, so a snapshot built and one installed never
    /// write it at once, and the older of two never replaces the newer.
    saving: Mutex<()>,
    snapshot_seq: AtomicU64,
    snapshot_bytes: AtomicU64,
    snapshots_installed: AtomicU64,
    snapshots_built: AtomicU64,
    /// The longest time apply waited for a snapshot to freeze the state, since start.
    freeze_max_us: AtomicU64,
    /// How long the latest snapshot took to serialise and write.
    last_write_ms: AtomicU64,
    /// Apply batches that held up writes (see [`crate::SlowSteps`]).
    slow_applies: crate::SlowSteps,
}

/// An apply batch that takes this long is warned of (every write waits on it).
const SLOW_APPLY: Duration = Duration::from_millis(50);

/// What this node's snapshots cost, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Size of the latest snapshot's data.
    pub bytes: u64,
    /// Snapshots installed from a leader since start.
    pub installed: u64,
    /// Snapshots built by this node since start.
    pub built: u64,
    /// The longest time apply was held off by a snapshot since start (freezing the state).
    pub freeze_max_us: u64,
    /// How long the latest built snapshot took to serialise and write, apply going on.
    pub last_write_ms: u64,
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
    /// Restores `app` from the latest snapshot in `dir`, if any: the file's checksum is
    /// checked, then the data is streamed into the state machine, with progress in the log.
    pub fn open(app: Arc<S>, data: &crate::DataDir) -> Result<Self, StorageError<NodeId>> {
        let dir = data.path.clone();
        SnapshotData::remove_leftovers(&dir);
        let store = StateMachineStore {
            inner: Arc::new(Inner {
                app,
                dir,
                space: data.space.clone(),
                applied: Mutex::new(Applied::default()),
                current: Mutex::new(None),
                saving: Mutex::new(()),
                snapshot_seq: AtomicU64::new(0),
                snapshot_bytes: AtomicU64::new(0),
                snapshots_installed: AtomicU64::new(0),
                snapshots_built: AtomicU64::new(0),
                slow_applies: crate::SlowSteps::new("raft_apply", SLOW_APPLY),
                freeze_max_us: AtomicU64::new(0),
                last_write_ms: AtomicU64::new(0),
            }),
        };
        if let Some((meta, region, format)) = store.load_snapshot(true)? {
            let started = Instant::now();
            tracing::info!(
                snapshot = %meta.snapshot_id,
                bytes = region.len,
                "restoring state machine from snapshot"
            );
            let mut reader = Progress::new(region.reader(), region.len, "restoring snapshot");
            store
                .inner
                .app
                .restore(&mut reader, format)
                .map_err(|e| snap_err(ErrorVerb::Read, e))?;
            *store.applied() = Applied {
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
            };
            store
                .inner
                .snapshot_bytes
                .store(region.len, Ordering::Relaxed);
            *store.current() = Some(meta);
            tracing::info!(
                applied = ?store.applied().last_applied,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "restored state machine from snapshot"
            );
        }
        Ok(store)
    }

    /// Returns the application state machine.
    pub fn app(&self) -> &Arc<S> {
        &self.inner.app
    }

    /// Returns what this node's snapshots cost so far.
    pub fn snapshot_stats(&self) -> SnapshotStats {
        let inner = &self.inner;
        SnapshotStats {
            bytes: inner.snapshot_bytes.load(Ordering::Relaxed),
            installed: inner.snapshots_installed.load(Ordering::Relaxed),
            built: inner.snapshots_built.load(Ordering::Relaxed),
            freeze_max_us: inner.freeze_max_us.load(Ordering::Relaxed),
            last_write_ms: inner.last_write_ms.load(Ordering::Relaxed),
        }
    }

    fn applied(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.inner.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current(&self) -> std::sync::MutexGuard<'_, CurrentSnapshot> {
        self.inner.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn load_snapshot(&self, verify: bool) -> Result<LoadedSnapshot, StorageError<NodeId>> {
        let Some((meta, region)) =
            crate::snapshot_file::open_region(&self.inner.dir, crate::snapshot_file::FILE, verify)
                .map_err(|e| snap_err(ErrorVerb::Read, e))?
        else {
            return Ok(None);
        };
        let (meta, format) = decode_meta(&meta).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Some((meta, region, format)))
    }

    /// Writes `snapshot.bin` with the data `write_data` streams, unless a snapshot at least as
    /// new is already there, and makes it current. Blocking: run it off the async runtime.
    /// Returns the data's length, or `None` when a newer snapshot was kept.
    fn save_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        pace: Pace,
        write_data: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<Option<u64>, StorageError<NodeId>> {
        let dir = self.inner.dir.clone();
        self.store_snapshot(meta, |meta_bytes| {
            crate::snapshot_file::save_streaming(
                &dir,
                crate::snapshot_file::FILE,
                meta_bytes,
                pace,
                write_data,
            )
        })
    }

    /// Makes `snapshot.bin` the snapshot of `meta`, written by `store` (given the encoded
    /// metadata; it returns the data's length), unless a snapshot at least as new is already
    /// there. Blocking. Returns the data's length, or `None` when a newer snapshot was kept.
    fn store_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        store: impl FnOnce(&[u8]) -> std::io::Result<u64>,
    ) -> Result<Option<u64>, StorageError<NodeId>> {
        let _saving = self.inner.saving.lock().unwrap_or_else(|e| e.into_inner());
        let newer_kept = self
            .current()
            .as_ref()
            .is_some_and(|current| current.last_log_id > meta.last_log_id);
        if newer_kept {
            return Ok(None);
        }
        let meta_bytes = encode_meta(meta).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let written = store(&meta_bytes).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        self.inner.snapshot_bytes.store(written, Ordering::Relaxed);
        *self.current() = Some(meta.clone());
        Ok(Some(written))
    }

    /// Writes a snapshot of the state as it is now into a new file in the data folder and
    /// returns the whole file (removed when the returned data is dropped): a backup, in the
    /// format of `snapshot.bin`, that `strata cluster snapshot restore` reads. The state is
    /// frozen in constant time, so apply goes on while it is written.
    pub async fn export(&self) -> Result<SnapshotData, StorageError<NodeId>> {
        let (writer, mut meta, _) = self.freeze();
        let seq = self.inner.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        meta.snapshot_id = format!("export-{seq}");
        let name = format!("{}{seq}", crate::snapshot_data::EXPORT_PREFIX);
        let dir = self.inner.dir.clone();
        tokio::task::spawn_blocking(move || {
            let meta_bytes = encode_meta(&meta).map_err(|e| snap_err(ErrorVerb::Write, e))?;
            crate::snapshot_file::save_streaming(
                &dir,
                &name,
                &meta_bytes,
                Pace::BesideTraffic,
                writer,
            )
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
            SnapshotData::whole_temp_file(dir.join(&name)).map_err(|e| snap_err(ErrorVerb::Read, e))
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))?
    }

    /// Freezes the state as it is now and names the view: its writer, its metadata, and how
    /// long apply was held off (constant time: the state shares structure with the view).
    /// The state and the applied position are read under the lock `apply` holds, so the view
    /// contains exactly the entries up to `last_applied`.
    fn freeze(&self) -> (SnapshotWriter, SnapshotMeta<NodeId, NodeInfo>, u64) {
        let frozen = Instant::now();
        let (writer, applied) = {
            let applied = self.applied();
            (self.inner.app.snapshot(), applied.clone())
        };
        let freeze_us = frozen.elapsed().as_micros() as u64;
        self.inner
            .freeze_max_us
            .fetch_max(freeze_us, Ordering::Relaxed);
        let seq = self.inner.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match applied.last_applied {
            Some(id) => format!("{}-{}-{seq}", id.leader_id.term, id.index),
            None => format!("0-0-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership,
            snapshot_id,
        };
        (writer, meta, freeze_us)
    }

    /// The current snapshot with its data, opened from disk (not read).
    fn stored_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self
            .load_snapshot(false)?
            .map(|(meta, region, _format)| Snapshot {
                meta,
                snapshot: Box::new(SnapshotData::stored(region)),
            }))
    }
}

/// A reader that logs how far it has got every few seconds, for long restores.
struct Progress<R> {
    inner: R,
    done: u64,
    total: u64,
    what: &'static str,
    last: Instant,
}

impl<R> Progress<R> {
    fn new(inner: R, total: u64, what: &'static str) -> Self {
        Progress {
            inner,
            done: 0,
            total,
            what,
            last: Instant::now(),
        }
    }
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if self.last.elapsed() >= Duration::from_secs(2) {
            self.last = Instant::now();
            tracing::info!(
                done_bytes = self.done,
                total_bytes = self.total,
                percent = self.done * 100 / self.total.max(1),
                "{}",
                self.what
            );
        }
        Ok(n)
    }
}

impl<S: StateMachine> RaftSnapshotBuilder<TypeConfig> for StateMachineStore<S> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // Freeze the state and read the applied position under the lock that `apply` holds,
        // so the view contains exactly the entries up to `last_applied`. Freezing takes
        // constant time (the state shares structure with the view), so apply waits for
        // nothing that grows with the store; serialising and writing the view then run on a
        // blocking thread while apply goes on.
        let (writer, meta, freeze_us) = self.freeze();
        // The new snapshot takes about as much as the last one; without room for it above
        // the reserve, or when writing it fails, the last snapshot stands (a failed build
        // must not reach openraft, which stops the node on it) and the next turn tries again.
        let last_bytes = self.inner.snapshot_bytes.load(Ordering::Relaxed);
        let this = self.clone();
        let writing = Instant::now();
        let saved = if self.inner.space.has_room(last_bytes) {
            let meta = meta.clone();
            in_background(move || this.save_snapshot(&meta, Pace::BesideTraffic, writer))
                .await
                .map_err(|e| snap_err(ErrorVerb::Write, e))
                .and_then(|saved| saved)
        } else {
            Err(snap_err(
                ErrorVerb::Write,
                format!(
                    "{} bytes free, below the reserve plus the last snapshot's {last_bytes} bytes",
                    self.inner.space.free()
                ),
            ))
        };
        let saved = match saved {
            Ok(saved) => saved,
            Err(e) => {
                tracing::warn!(error = %e, "snapshot not built; the last one stands");
                return self.last_snapshot_or_none().await;
            }
        };
        let write_ms = writing.elapsed().as_millis() as u64;
        self.inner.last_write_ms.store(write_ms, Ordering::Relaxed);
        self.inner.snapshots_built.fetch_add(1, Ordering::Relaxed);
        match saved {
            Some(bytes) => tracing::info!(
                snapshot = %meta.snapshot_id,
                bytes,
                freeze_us,
                write_ms,
                "built snapshot"
            ),
            None => tracing::info!(
                snapshot = %meta.snapshot_id,
                "a newer snapshot was installed meanwhile; kept it"
            ),
        }
        self.stored_off_runtime()
            .await?
            .ok_or_else(|| snap_err(ErrorVerb::Read, "the snapshot just written is gone"))
    }
}

/// Runs `work` on a thread of its own at a lower CPU priority (nice 10), so that serialising
/// and writing a large snapshot yields the cores to requests, apply and the log writer; it
/// still runs at full speed on an idle machine.
async fn in_background<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("raft-snapshot".into())
        .spawn(move || {
            // On Linux this sets the calling thread's nice value; failing only costs priority.
            let _ = rustix::process::setpriority_process(None, 10);
            let _ = done.send(work());
        })
        .map_err(|e| e.to_string())?;
    result
        .await
        .map_err(|_| "the snapshot thread ended without a result".to_string())
}

impl<S: StateMachine> StateMachineStore<S> {
    /// The stored snapshot, or, with none stored, one that covers nothing (openraft keeps
    /// what it has when handed a snapshot no newer than its own).
    async fn last_snapshot_or_none(&self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        match self.stored_off_runtime().await? {
            Some(snapshot) => Ok(snapshot),
            None => Ok(Snapshot {
                meta: SnapshotMeta::default(),
                snapshot: Box::new(
                    SnapshotData::empty().map_err(|e| snap_err(ErrorVerb::Read, e))?,
                ),
            }),
        }
    }

    /// [`Self::stored_snapshot`] on a blocking thread.
    async fn stored_off_runtime(
        &self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.stored_snapshot())
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?
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
        let started = Instant::now();
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
        self.inner.slow_applies.observe(started.elapsed());
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<SnapshotData>, StorageError<NodeId>> {
        let seq = self.inner.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        SnapshotData::receiving(&self.inner.dir, seq)
            .map(Box::new)
            .map_err(|e| snap_err(ErrorVerb::Write, e))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError<NodeId>> {
        let started = Instant::now();
        let bytes = snapshot.len();
        let this = self.clone();
        let stored = meta.clone();
        // Streamed from the received file into the state machine, then made `snapshot.bin`:
        // memory holds the state, never the serialized bytes. A snapshot sent by the leader is
        // in the format both run (see `strata_proto::log`).
        tokio::task::spawn_blocking(move || {
            let mut snapshot = snapshot;
            // A received file that will be kept goes to disk while the state is restored from
            // it, so that making it the snapshot afterwards waits for little (one that will be
            // copied is not synced: the copy is).
            let flushing = snapshot.is_laid_out_as_stored().then(|| {
                let file = snapshot.region().file.clone();
                std::thread::Builder::new()
                    .name("raft-snapshot-sync".into())
                    .spawn(move || file.sync_data())
            });
            let region = snapshot.region();
            let mut reader = Progress::new(region.reader(), region.len, "installing snapshot");
            {
                // The state and its position change together: a snapshot built meanwhile
                // freezes under this lock, so it never pairs the new state with the old
                // position (which a restart would re-apply on top of it).
                let mut applied = this.applied();
                this.inner
                    .app
                    .restore(&mut reader, strata_proto::log::FORMAT)
                    .map_err(|e| sm_err(ErrorVerb::Write, e))?;
                *applied = Applied {
                    last_applied: stored.last_log_id,
                    membership: stored.last_membership.clone(),
                };
            }
            // Its error must be taken here: Linux reports a failed writeback to one fsync
            // only and marks the pages clean, so the final sync would succeed over a file
            // with holes in it.
            if let Some(Ok(flushing)) = flushing {
                match flushing.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(sm_err(ErrorVerb::Write, e)),
                    Err(_) => {
                        return Err(sm_err(
                            ErrorVerb::Write,
                            "the snapshot sync thread panicked",
                        ))
                    }
                }
            }
            // A file received in the layout of `snapshot.bin` becomes it; any other is
            // copied, at full speed: the node needs it before it can serve.
            let dir = this.inner.dir.clone();
            this.store_snapshot(&stored, |meta_bytes| {
                let name = crate::snapshot_file::FILE;
                if let Some(len) = snapshot.finish_in_place(meta_bytes, &dir, name)? {
                    return Ok(len);
                }
                let mut reader = snapshot.region().reader();
                crate::snapshot_file::save_streaming(&dir, name, meta_bytes, Pace::Alone, |out| {
                    std::io::copy(&mut reader, out).map(|_| ())
                })
            })
        })
        .await
        .map_err(|e| sm_err(ErrorVerb::Write, e))??;
        self.inner
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "installed snapshot from leader"
        );
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        // openraft asks for the current snapshot to send it to a peer whose log entries are
        // gone (and once at start-up). The peer gets the state as of now, serialised as it is
        // sent, rather than the stored snapshot plus every entry since, which it would then
        // have to receive, write and apply one by one (etcd also sends its current database).
        // With nothing applied since the stored snapshot, that file is the same state.
        let Some(stored) = self.current().clone() else {
            return Ok(None);
        };
        if self.applied().last_applied <= stored.last_log_id {
            return self.stored_off_runtime().await;
        }
        let (view, meta, _) = self.freeze();
        let data = SnapshotData::live(view).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(data),
        }))
    }
}
