//! [`LogStore`]: the Raft log and vote on fjall, with group commit.
//!
//! Every mutation (append, truncate, purge, vote, committed) is sent in order to one writer
//! thread. The writer drains everything queued, writes it as one fjall batch, commits it with
//! the journal fsynced (`PersistMode::SyncAll`), and only then completes the callbacks. So under load many appends share one
//! fsync, and the order of mutations on disk is the order openraft issued them.
//!
//! The newest entries are also kept in memory (at most [`CACHE_BYTES`], and never fewer than
//! the entries not yet fsynced): replication of recent entries and apply never touch disk, and
//! entries are readable as soon as they are appended, before their fsync completes (openraft
//! only asks for entries it has appended). Older entries are read back from fjall, which is
//! needed only by a follower that lags far behind.
//!
//! A purge writes no tombstones. It records the purge point, and a thread of its own then
//! drops every table of the log keyspace whose keys all lie at or below it (`drop_range`, which
//! deletes whole files). The keys are indexes in big-endian order, so each flushed table holds
//! a run of consecutive entries and the engine's compaction can move tables between levels
//! without rewriting them. With a tombstone per purged entry (as before) every purge left
//! tables that overlapped older ones, and compaction rewrote the live log each time: tens of
//! MB written and synced every few seconds, beside the log's own fsyncs. Entries at or below
//! the purge point that still sit in a table reaching past it (or in the memtable) stay on
//! disk until a later purge covers their table; nothing reads them (reads start after the
//! purge point, and loading at startup stops there).
//!
//! The engine flushes the log's memtable to a table file (written, then fsynced whole) each
//! time it fills, and while that table goes to disk the journal's fsyncs wait behind it: a log
//! commit that meets a flush takes tens of milliseconds instead of a fraction of one, and every
//! write waits for the leader's commit and a follower's. Members append the same entries, so
//! with one memtable size they all flushed at the same moment (three 7-MiB tables at once on a
//! shared disk: commits of 110 ms on both followers, puts of 180 ms). So the memtable is small
//! ([`MEMTABLE_BYTES`], a short flush) and its size differs per member
//! ([`memtable_bytes_for`], spread like the snapshot phases), so members flush apart.

use crate::{NodeId, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

const LOG: &str = "raft_log";
const META: &str = "raft_meta";
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";
/// The format of the entries in the log keyspace (`strata_proto::log`); absent: format 1.
const KEY_FORMAT: &str = "log_format";

/// Encodes an entry as this build stores it: a varint format tag, then the entry.
fn encode_entry(entry: &Entry<TypeConfig>) -> Result<Vec<u8>, postcard::Error> {
    let mut bytes = postcard::to_allocvec(&strata_proto::log::FORMAT)?;
    postcard::to_io(entry, &mut bytes)?;
    Ok(bytes)
}

/// Decodes a stored entry of any format this build reads.
fn decode_entry(index: u64, value: &[u8]) -> Result<Entry<TypeConfig>, StorageError<NodeId>> {
    let bad = |e: String| read_err(ErrorSubject::Logs, format!("log entry {index}: {e}"));
    let (format, body) = postcard::take_from_bytes::<u32>(value).map_err(|e| bad(e.to_string()))?;
    match format {
        // Format 2 stores format 1's entry behind the tag; format 3's types decode format 2's
        // bytes unchanged (it only appends variants).
        2 | 3 => postcard::from_bytes(body).map_err(|e| bad(e.to_string())),
        other => Err(bad(format!(
            "format {other} is not one this build reads (a newer strata wrote it?)"
        ))),
    }
}

/// Rewrites a format-1 log (entries without a tag) in the current format, in one atomic batch
/// that also records the format, so a crash leaves either the old log or the new one.
fn upgrade_log(
    db: &fjall::Database,
    log: &fjall::Keyspace,
    meta: &fjall::Keyspace,
) -> Result<(), StorageError<NodeId>> {
    let format = meta
        .get(KEY_FORMAT)
        .map_err(|e| read_err(ErrorSubject::Store, e))?
        .map(|v| postcard::from_bytes::<u32>(&v))
        .transpose()
        .map_err(|e| read_err(ErrorSubject::Store, e))?
        .unwrap_or(1);
    // From format 2 on every entry carries its own tag, so the log needs no rewriting.
    if (2..=strata_proto::log::FORMAT).contains(&format) {
        return Ok(());
    }
    if format != 1 {
        return Err(read_err(
            ErrorSubject::Store,
            format!("log format {format} is not one this build reads (a newer strata wrote it?)"),
        ));
    }
    let mut batch = db.batch().durability(Some(fjall::PersistMode::SyncAll));
    let mut entries = 0;
    for item in log.iter() {
        let (key, value) = item
            .into_inner()
            .map_err(|e| read_err(ErrorSubject::Logs, e))?;
        let index = decode_index(&key)?;
        let entry: Entry<TypeConfig> = postcard::from_bytes(&value).map_err(|e| {
            read_err(
                ErrorSubject::Logs,
                format!("format 1 log entry {index}: {e}"),
            )
        })?;
        let bytes = encode_entry(&entry).map_err(|e| write_err(ErrorSubject::Logs, e))?;
        batch.insert(log, key, bytes.as_slice());
        entries += 1;
    }
    let tag = postcard::to_allocvec(&strata_proto::log::FORMAT)
        .map_err(|e| write_err(ErrorSubject::Store, e))?;
    batch.insert(meta, KEY_FORMAT, tag.as_slice());
    batch
        .commit()
        .map_err(|e| write_err(ErrorSubject::Store, e))?;
    tracing::info!(
        entries,
        from = format,
        to = strata_proto::log::FORMAT,
        "upgraded the raft log format"
    );
    Ok(())
}
/// A copy of the latest vote outside the journal. fjall cannot tell a damaged journal from a
/// torn tail and would silently drop it; a node that forgot its vote could vote twice in one
/// term. So every saved vote is also written here, and a log whose vote is older than this
/// marker is refused at startup.
const VOTE_MARKER: &str = "vote.bin";

/// Most mutations the writer folds into one transaction.
const MAX_BATCH_OPS: usize = 4096;

/// Approximate bytes of entries kept in memory once they are durable.
pub const CACHE_BYTES: usize = 8 * 1024 * 1024;

/// The in-memory view of the log.
#[derive(Default)]
struct MemLog {
    /// The newest entries, a contiguous suffix of the log, with their encoded sizes. Entries
    /// before the first one here are durable in fjall.
    cache: BTreeMap<u64, (Entry<TypeConfig>, usize)>,
    /// Bytes held in `cache`.
    cache_bytes: usize,
    /// The last entry of the log (in `cache`, or in fjall when the cache is empty).
    last_log_id: Option<LogId<NodeId>>,
    /// The first index of the log that is still stored (after `last_purged`).
    first_index: u64,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

enum WriteOp {
    Append {
        entries: Vec<(u64, Vec<u8>)>,
        /// The id of the last entry, recorded as flushed once the batch is durable.
        last: LogId<NodeId>,
        callback: LogFlushed<TypeConfig>,
    },
    /// Remove these indexes (a conflicting tail).
    Truncate {
        indexes: Vec<u64>,
    },
    /// Record the purge point (entries up to `index` are covered by a snapshot); their tables
    /// are dropped afterwards.
    Purge {
        index: u64,
        log_id: Vec<u8>,
    },
    Vote {
        bytes: Vec<u8>,
        done: tokio::sync::oneshot::Sender<std::io::Result<()>>,
    },
    Committed {
        bytes: Vec<u8>,
    },
}

struct Shared {
    mem: Mutex<MemLog>,
    /// Read handle on the log keyspace, for entries no longer cached.
    log: fjall::Keyspace,
    /// Bytes of durable entries kept cached.
    cache_budget: usize,
    /// The newest entry known fsynced. Cached entries at or below it (by term, then index) may
    /// be evicted. Comparing whole log ids keeps a truncated and re-appended index cached until
    /// the new entry itself is durable.
    flushed: Mutex<Option<LogId<NodeId>>>,
    writer: Mutex<mpsc::Sender<WriteOp>>,
    /// The highest committed index seen, for status and metrics.
    committed_index: AtomicU64,
    /// Bytes of entries appended since the store was opened (encoded, as stored).
    appended_bytes: AtomicU64,
    /// How long each durable batch took to write and fsync (its count is the fsyncs made).
    commit_seconds: prometheus::Histogram,
}

/// The Raft log store. Cheap to clone; clones share the same log.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
    /// The data folder, where the vote marker lives.
    dir: std::path::PathBuf,
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn read_err(subject: ErrorSubject<NodeId>, e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::new(
        subject,
        ErrorVerb::Read,
        openraft::AnyError::error(e.to_string()),
    )
    .into()
}

fn write_err(subject: ErrorSubject<NodeId>, e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::new(
        subject,
        ErrorVerb::Write,
        openraft::AnyError::error(e.to_string()),
    )
    .into()
}

impl LogStore {
    /// Loads the log from the data folder's database and starts the writer thread. The
    /// thread exits when the last clone of the store is dropped.
    pub fn open(data: &crate::DataDir) -> Result<LogStore, StorageError<NodeId>> {
        Self::open_with_cache(data, CACHE_BYTES)
    }

    /// [`LogStore::open`] for member `id`: a log created now gets that member's memtable size
    /// ([`memtable_bytes_for`]), so members flush their logs at different moments.
    pub fn open_member(
        data: &crate::DataDir,
        id: NodeId,
    ) -> Result<LogStore, StorageError<NodeId>> {
        Self::open_with(data, CACHE_BYTES, memtable_bytes_for(id))
    }

    /// [`LogStore::open`] with a cache budget of `cache_bytes` (tests use 0 to force every
    /// durable entry to be read back from disk).
    pub fn open_with_cache(
        data: &crate::DataDir,
        cache_bytes: usize,
    ) -> Result<LogStore, StorageError<NodeId>> {
        Self::open_with(data, cache_bytes, MEMTABLE_BYTES)
    }

    fn open_with(
        data: &crate::DataDir,
        cache_bytes: usize,
        memtable_bytes: u64,
    ) -> Result<LogStore, StorageError<NodeId>> {
        let (db, dir, space) = (data.log_db.clone(), &data.path, data.space.clone());
        let mut mem = MemLog::default();
        let log = db
            // A small memtable: the newest entries are cached by us already, and a small one
            // is flushed quickly (see the module docs). The engine keeps the size a keyspace
            // was created with.
            .keyspace(LOG, || {
                fjall::KeyspaceCreateOptions::default().max_memtable_size(memtable_bytes)
            })
            .map_err(|e| read_err(ErrorSubject::Logs, e))?;
        let meta = db
            .keyspace(META, fjall::KeyspaceCreateOptions::default)
            .map_err(|e| read_err(ErrorSubject::Store, e))?;
        upgrade_log(&db, &log, &meta)?;
        let decode_meta = |key: &str| -> Result<Option<Vec<u8>>, StorageError<NodeId>> {
            Ok(meta
                .get(key)
                .map_err(|e| read_err(ErrorSubject::Store, e))?
                .map(|v| v.to_vec()))
        };
        if let Some(bytes) = decode_meta(KEY_VOTE)? {
            mem.vote =
                Some(postcard::from_bytes(&bytes).map_err(|e| read_err(ErrorSubject::Vote, e))?);
        }
        if let Some(bytes) = decode_meta(KEY_COMMITTED)? {
            mem.committed =
                postcard::from_bytes(&bytes).map_err(|e| read_err(ErrorSubject::Store, e))?;
        }
        if let Some(bytes) = decode_meta(KEY_PURGED)? {
            mem.last_purged =
                postcard::from_bytes(&bytes).map_err(|e| read_err(ErrorSubject::Logs, e))?;
        }
        // Only the newest entries are loaded; older ones are read from fjall on demand. Entries
        // at or below the purge point may still be on disk (their tables are dropped later, see
        // the module docs); they are not part of the log.
        let purged_index = mem.last_purged.map(|l| l.index);
        let after_purge = purged_index.map_or(0, |i| i + 1);
        let mut loaded = Vec::new();
        let mut bytes_loaded = 0;
        for item in log.range(after_purge.to_be_bytes()..).rev() {
            let (key, value) = item
                .into_inner()
                .map_err(|e| read_err(ErrorSubject::Logs, e))?;
            let index = decode_index(&key)?;
            let entry = decode_entry(index, &value)?;
            bytes_loaded += value.len();
            loaded.push((index, entry, value.len()));
            if bytes_loaded >= cache_bytes {
                break;
            }
        }
        mem.last_log_id = loaded
            .first()
            .map(|(_, e, _)| *e.get_log_id())
            .or(mem.last_purged);
        for (index, entry, size) in loaded.into_iter().rev() {
            mem.cache.insert(index, (entry, size));
            mem.cache_bytes += size;
        }
        mem.first_index = after_purge;
        let flushed = mem.last_log_id;
        check_vote_marker(dir, mem.vote)?;
        let committed_index = mem.committed.map(|c| c.index).unwrap_or(0);
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            mem: Mutex::new(mem),
            log: log.clone(),
            cache_budget: cache_bytes,
            flushed: Mutex::new(flushed),
            writer: Mutex::new(tx),
            committed_index: AtomicU64::new(committed_index),
            appended_bytes: AtomicU64::new(0),
            commit_seconds: commit_histogram(),
        });
        let weak = Arc::downgrade(&shared);
        let (purger, purges) = mpsc::channel();
        let purger_log = log.clone();
        std::thread::Builder::new()
            .name("raft-log-purger".into())
            .spawn(move || purger_loop(purger_log, purges))
            .map_err(|e| write_err(ErrorSubject::Store, e))?;
        // What an earlier run purged but had not dropped yet (it stopped in between).
        if let Some(purged) = purged_index {
            let _ = purger.send(purged);
        }
        let tables = Tables {
            db,
            log,
            meta,
            purger,
        };
        let commit_seconds = shared.commit_seconds.clone();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_loop(tables, rx, weak, &space, &commit_seconds))
            .map_err(|e| write_err(ErrorSubject::Store, e))?;
        Ok(LogStore {
            shared,
            dir: dir.to_path_buf(),
        })
    }

    /// Returns the highest index known committed.
    pub fn committed_index(&self) -> u64 {
        self.shared.committed_index.load(Ordering::Relaxed)
    }

    /// Returns how many fsynced transactions the writer has committed.
    pub fn fsync_count(&self) -> u64 {
        self.shared.commit_seconds.get_sample_count()
    }

    /// The histogram of durable log commits (a batch of appends, truncations or a vote,
    /// written and fsynced), for the node to register: `strata_raft_log_commit_duration_seconds`,
    /// what etcd calls `etcd_disk_wal_fsync_duration_seconds`.
    pub fn commit_seconds(&self) -> prometheus::Histogram {
        self.shared.commit_seconds.clone()
    }

    /// Returns how many bytes of entries (encoded, as stored) were appended since the store
    /// was opened. The snapshot schedule compares the log's growth with the snapshot's size.
    pub fn appended_bytes(&self) -> u64 {
        self.shared.appended_bytes.load(Ordering::Relaxed)
    }

    /// Returns how many entries are in the unpurged log.
    pub fn len(&self) -> usize {
        let mem = self.mem();
        match mem.last_log_id {
            Some(last) if last.index + 1 > mem.first_index => {
                (last.index + 1 - mem.first_index) as usize
            }
            _ => 0,
        }
    }

    /// Returns the bytes of encoded entries held in memory (the log's read cache).
    pub fn cache_bytes(&self) -> usize {
        self.mem().cache_bytes
    }

    /// Returns true when the unpurged log is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn mem(&self) -> std::sync::MutexGuard<'_, MemLog> {
        // A poisoned lock means a panic while holding it; the data is still consistent
        // because every critical section is a plain map update.
        self.shared.mem.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, op: WriteOp) -> Result<(), StorageError<NodeId>> {
        let writer = self.shared.writer.lock().unwrap_or_else(|e| e.into_inner());
        writer
            .send(op)
            .map_err(|_| write_err(ErrorSubject::Logs, "log writer thread has stopped"))
    }
}

fn decode_index(key: &[u8]) -> Result<u64, StorageError<NodeId>> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| read_err(ErrorSubject::Logs, "log key is not an 8-byte index"))
}

/// Reads entries `[start, end)` from fjall.
fn read_range(
    log: &fjall::Keyspace,
    start: u64,
    end: u64,
) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
    let mut entries = Vec::new();
    for item in log.range(start.to_be_bytes()..end.to_be_bytes()) {
        let (key, value) = item
            .into_inner()
            .map_err(|e| read_err(ErrorSubject::Logs, e))?;
        let index = decode_index(&key)?;
        entries.push(decode_entry(index, &value)?);
    }
    Ok(entries)
}

/// Refuses a log whose vote is older than the marker: the journal lost data.
fn check_vote_marker(
    dir: &std::path::Path,
    loaded: Option<Vote<NodeId>>,
) -> Result<(), StorageError<NodeId>> {
    let Some((bytes, _)) = crate::snapshot_file::load_named(dir, VOTE_MARKER)
        .map_err(|e| read_err(ErrorSubject::Vote, e))?
    else {
        return Ok(());
    };
    let marker: Vote<NodeId> =
        postcard::from_bytes(&bytes).map_err(|e| read_err(ErrorSubject::Vote, e))?;
    let lost = match loaded {
        None => true,
        Some(vote) => vote.leader_id().term < marker.leader_id().term,
    };
    if lost {
        return Err(read_err(
            ErrorSubject::Vote,
            format!(
                "the log journal is damaged: it has lost the vote of term {} recorded in {VOTE_MARKER}",
                marker.leader_id().term
            ),
        ));
    }
    Ok(())
}

/// The database and its two keyspaces, owned by the writer thread, and where purge points go
/// once they are written.
struct Tables {
    db: fjall::Database,
    log: fjall::Keyspace,
    meta: fjall::Keyspace,
    purger: mpsc::Sender<u64>,
}

/// Drops the log's tables that lie wholly at or below each purge point it is sent, newest point
/// first when several are waiting. On a thread of its own: a drop waits for a compaction that
/// is running, which the writer must never do.
fn purger_loop(log: fjall::Keyspace, rx: mpsc::Receiver<u64>) {
    use fjall::AbstractTree as _;
    while let Ok(mut index) = rx.recv() {
        while let Ok(later) = rx.try_recv() {
            index = index.max(later);
        }
        let before = log.table_count();
        match log.tree.drop_range(..=index.to_be_bytes()) {
            Ok(()) => tracing::debug!(
                purged_to = index,
                tables_dropped = before.saturating_sub(log.table_count()),
                "dropped purged log tables"
            ),
            // Nothing is lost: the tables stay, and the next purge drops them.
            Err(e) => {
                tracing::warn!(error = %e, purged_to = index, "dropping purged log tables failed")
            }
        }
    }
}

/// `strata_raft_log_commit_duration_seconds`: 100 µs to about 3.3 s.
fn commit_histogram() -> prometheus::Histogram {
    prometheus::Histogram::with_opts(
        prometheus::HistogramOpts::new(
            "strata_raft_log_commit_duration_seconds",
            "Time to write and fsync one batch of the raft log (appends, truncations, votes)",
        )
        .buckets(vec![
            0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
            5.0,
        ]),
    )
    .expect("valid histogram")
}

/// The log's memtable size before the per-member spread: small, so that flushing it to a table
/// holds up the journal's fsyncs only briefly.
pub const MEMTABLE_BYTES: u64 = 4 * 1024 * 1024;

/// Member `id`'s log memtable size: [`MEMTABLE_BYTES`] times 0.75 to 1.25, spread over the
/// members by the golden ratio (as the snapshot phases are), so that members appending the same
/// entries fill and flush their memtables apart.
pub fn memtable_bytes_for(id: NodeId) -> u64 {
    let fraction = (id as f64 * 0.618_033_988_749_895).fract();
    (MEMTABLE_BYTES as f64 * (0.75 + 0.5 * fraction)) as u64
}

/// A durable log commit that takes this long is warned of (every write waits on it).
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(50);

fn writer_loop(
    tables: Tables,
    rx: mpsc::Receiver<WriteOp>,
    shared: std::sync::Weak<Shared>,
    space: &crate::DiskSpace,
    commit_seconds: &prometheus::Histogram,
) {
    let slow = crate::SlowSteps::new("raft_log_commit", SLOW_COMMIT);
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < MAX_BATCH_OPS {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let durable = needs_fsync(&ops);
        let result = wait_for_room(&ops, &shared, space).and_then(|()| {
            let started = std::time::Instant::now();
            write_batch(&tables, &ops, durable).inspect(|()| {
                if durable {
                    let took = started.elapsed();
                    commit_seconds.observe(took.as_secs_f64());
                    slow.observe(took);
                }
            })
        });
        match &result {
            Ok(()) => {
                for op in &ops {
                    if let WriteOp::Purge { index, .. } = op {
                        let _ = tables.purger.send(*index);
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "raft log commit failed; the node cannot make progress")
            }
        }
        for op in ops {
            let outcome = result.as_ref().map(|_| ()).map_err(io_err);
            match op {
                WriteOp::Append { callback, last, .. } => {
                    if let (Ok(()), Some(shared)) = (&result, shared.upgrade()) {
                        let mut flushed = shared.flushed.lock().unwrap_or_else(|e| e.into_inner());
                        if *flushed < Some(last) {
                            *flushed = Some(last);
                        }
                    }
                    callback.log_io_completed(outcome)
                }
                WriteOp::Vote { done, .. } => {
                    let _ = done.send(outcome);
                }
                WriteOp::Truncate { .. } | WriteOp::Purge { .. } | WriteOp::Committed { .. } => {}
            }
        }
    }
}

/// Holds a batch with appends until the disk has room for it above half the reserve, so the
/// engine never meets a full disk (see [`crate::DiskSpace`]). Appends already accepted wait rather
/// than fail: failing one would stop Raft. Gives up only when the store is gone (shutdown).
fn wait_for_room(
    ops: &[WriteOp],
    shared: &std::sync::Weak<Shared>,
    space: &crate::DiskSpace,
) -> Result<(), fjall::Error> {
    let bytes: usize = ops
        .iter()
        .map(|op| match op {
            WriteOp::Append { entries, .. } => entries.iter().map(|(_, b)| b.len()).sum(),
            _ => 0,
        })
        .sum();
    if bytes == 0 {
        return Ok(());
    }
    // The journal writes each entry with a small header; twice the payload covers it.
    if space.wait_for_room(2 * bytes as u64, || shared.strong_count() == 0) {
        Ok(())
    } else {
        Err(fjall::Error::Io(std::io::Error::other(
            "the log was closed while waiting for disk space",
        )))
    }
}

fn needs_fsync(ops: &[WriteOp]) -> bool {
    ops.iter().any(|op| {
        matches!(
            op,
            WriteOp::Append { .. } | WriteOp::Truncate { .. } | WriteOp::Vote { .. }
        )
    })
}

/// Writes every op as one atomic batch and, when `durable` ([`needs_fsync`]), fsyncs the
/// journal before returning.
fn write_batch(tables: &Tables, ops: &[WriteOp], durable: bool) -> Result<(), fjall::Error> {
    // Only appends, truncations and votes must be durable before they are acknowledged. The
    // commit index and purge point are hints (losing them means re-applying from the
    // snapshot, or purging again), so a batch of only those skips the fsync.
    let mode = if durable {
        fjall::PersistMode::SyncAll
    } else {
        fjall::PersistMode::Buffer
    };
    let mut batch = tables.db.batch().durability(Some(mode));
    for op in ops {
        match op {
            WriteOp::Append { entries, .. } => {
                for (index, bytes) in entries {
                    batch.insert(&tables.log, index.to_be_bytes(), bytes.as_slice());
                }
            }
            WriteOp::Truncate { indexes } => {
                for index in indexes {
                    batch.remove(&tables.log, index.to_be_bytes());
                }
            }
            // The entries go with their tables, once this is written (see the module docs).
            WriteOp::Purge { log_id, .. } => {
                batch.insert(&tables.meta, KEY_PURGED, log_id.as_slice())
            }
            WriteOp::Vote { bytes, .. } => batch.insert(&tables.meta, KEY_VOTE, bytes.as_slice()),
            WriteOp::Committed { bytes } => {
                batch.insert(&tables.meta, KEY_COMMITTED, bytes.as_slice())
            }
        }
    }
    batch.commit()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => e.saturating_add(1),
            Bound::Excluded(e) => *e,
            Bound::Unbounded => u64::MAX,
        };
        if start >= end {
            return Ok(Vec::new());
        }
        let (disk_range, cached) = {
            let mem = self.mem();
            let cache_first = mem.cache.keys().next().copied().unwrap_or(u64::MAX);
            let cached_start = start.max(cache_first);
            let cached: Vec<Entry<TypeConfig>> = if cached_start < end {
                mem.cache
                    .range(cached_start..end)
                    .map(|(_, (entry, _))| entry.clone())
                    .collect()
            } else {
                Vec::new()
            };
            // Clamp to the log's end: truncated entries may still be on disk until the writer
            // deletes them.
            let log_end = mem
                .last_log_id
                .map(|l| l.index.saturating_add(1))
                .unwrap_or(0);
            let disk_start = start.max(mem.first_index);
            let disk_end = end.min(cache_first).min(log_end);
            (
                (disk_start < disk_end).then_some((disk_start, disk_end)),
                cached,
            )
        };
        let Some((disk_start, disk_end)) = disk_range else {
            return Ok(cached);
        };
        // Entries older than the cache: only a far-behind follower needs these.
        let log = self.shared.log.clone();
        let mut entries =
            tokio::task::spawn_blocking(move || read_range(&log, disk_start, disk_end))
                .await
                .map_err(|e| read_err(ErrorSubject::Logs, e))??;
        entries.extend(cached);
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let mem = self.mem();
        Ok(LogState {
            last_purged_log_id: mem.last_purged,
            last_log_id: mem.last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = postcard::to_allocvec(vote).map_err(|e| write_err(ErrorSubject::Vote, e))?;
        let (done, wait) = tokio::sync::oneshot::channel();
        self.send(WriteOp::Vote { bytes, done })?;
        // The vote must be durable before we answer any vote request with it.
        wait.await
            .map_err(|_| write_err(ErrorSubject::Vote, "log writer thread has stopped"))?
            .map_err(|e| write_err(ErrorSubject::Vote, e))?;
        let dir = self.dir.clone();
        let marker = postcard::to_allocvec(vote).map_err(|e| write_err(ErrorSubject::Vote, e))?;
        tokio::task::spawn_blocking(move || {
            crate::snapshot_file::save_named(&dir, VOTE_MARKER, &marker, &[])
        })
        .await
        .map_err(|e| write_err(ErrorSubject::Vote, e))?
        .map_err(|e| write_err(ErrorSubject::Vote, e))?;
        self.mem().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.mem().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not fsynced on its own: losing it only means re-applying from the snapshot.
        let bytes =
            postcard::to_allocvec(&committed).map_err(|e| write_err(ErrorSubject::Store, e))?;
        self.mem().committed = committed;
        if let Some(c) = committed {
            self.shared
                .committed_index
                .fetch_max(c.index, Ordering::Relaxed);
        }
        self.send(WriteOp::Committed { bytes })
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.mem().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        let flushed = *self
            .shared
            .flushed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut mem = self.mem();
        for entry in entries {
            let log_id = *entry.get_log_id();
            let bytes =
                encode_entry(&entry).map_err(|e| write_err(ErrorSubject::Log(log_id), e))?;
            mem.cache_bytes += bytes.len();
            self.shared
                .appended_bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            mem.cache.insert(log_id.index, (entry, bytes.len()));
            mem.last_log_id = Some(log_id);
            encoded.push((log_id.index, bytes));
        }
        // Evict the oldest cached entries that are already durable, down to the budget.
        while mem.cache_bytes > self.shared.cache_budget && mem.cache.len() > 1 {
            match mem.cache.first_key_value() {
                Some((_, (entry, _))) if Some(*entry.get_log_id()) <= flushed => {}
                _ => break,
            }
            if let Some((_, (_, size))) = mem.cache.pop_first() {
                mem.cache_bytes -= size;
            }
        }
        let Some(last) = mem.last_log_id else {
            // Nothing was appended: still report the (empty) write as durable.
            drop(mem);
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        // Sending under the mem lock keeps the writer's order equal to the memory order.
        self.send(WriteOp::Append {
            entries: encoded,
            last,
            callback,
        })
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let (indexes, previous) = {
            let mut mem = self.mem();
            let removed = mem.cache.split_off(&log_id.index);
            mem.cache_bytes -= removed.values().map(|(_, size)| size).sum::<usize>();
            let last = mem.last_log_id.map(|l| l.index).unwrap_or(0);
            let indexes: Vec<u64> = (log_id.index..=last).collect();
            let previous_index = log_id.index.checked_sub(1);
            let previous = match previous_index {
                Some(p) if mem.cache.contains_key(&p) => {
                    Lookup::Known(mem.cache.get(&p).map(|(e, _)| *e.get_log_id()))
                }
                Some(p) if p >= mem.first_index => Lookup::OnDisk(p),
                _ => Lookup::Known(mem.last_purged),
            };
            (indexes, previous)
        };
        let last_log_id = match previous {
            Lookup::Known(id) => id,
            Lookup::OnDisk(index) => {
                let log = self.shared.log.clone();
                let found = tokio::task::spawn_blocking(move || read_range(&log, index, index + 1))
                    .await
                    .map_err(|e| read_err(ErrorSubject::Logs, e))??;
                found.first().map(|e| *e.get_log_id())
            }
        };
        let mut mem = self.mem();
        mem.last_log_id = last_log_id.or(mem.last_purged);
        self.send(WriteOp::Truncate { indexes })
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes =
            postcard::to_allocvec(&Some(log_id)).map_err(|e| write_err(ErrorSubject::Logs, e))?;
        let mut mem = self.mem();
        let keep = mem.cache.split_off(&(log_id.index + 1));
        let purged = std::mem::replace(&mut mem.cache, keep);
        mem.cache_bytes -= purged.values().map(|(_, size)| size).sum::<usize>();
        mem.first_index = log_id.index + 1;
        mem.last_purged = Some(log_id);
        if mem.last_log_id < Some(log_id) {
            mem.last_log_id = Some(log_id);
        }
        self.send(WriteOp::Purge {
            index: log_id.index,
            log_id: bytes,
        })
    }
}

/// Where the entry before a truncation point is.
enum Lookup {
    Known(Option<LogId<NodeId>>),
    OnDisk(u64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::log_id;
    use openraft::{EntryPayload, RaftLogReader};

    #[test]
    fn members_get_memtable_sizes_apart() {
        let sizes: Vec<u64> = (1..=5).map(memtable_bytes_for).collect();
        for (i, a) in sizes.iter().enumerate() {
            assert!(
                (MEMTABLE_BYTES * 3 / 4..MEMTABLE_BYTES * 5 / 4).contains(a),
                "{sizes:?}"
            );
            for b in &sizes[i + 1..] {
                // Any two of the first five differ by at least 4% of the base size.
                assert!(a.abs_diff(*b) >= MEMTABLE_BYTES / 25, "{sizes:?}");
            }
        }
    }

    /// Writes entries `indexes` of `term` straight into the log keyspace, as appends would have
    /// stored them (each a put of 1,000 bytes), after a first open has recorded the format.
    fn write_entries(data: &crate::DataDir, term: u64, indexes: std::ops::RangeInclusive<u64>) {
        drop(LogStore::open(data).unwrap());
        let log = data
            .log_db
            // Created by the open above; the options are those it used.
            .keyspace(LOG, || {
                fjall::KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
            })
            .unwrap();
        // In batches, as the writer commits them: fjall asks its worker for a memtable rotation
        // on every commit over the memtable's size, and its queue holds 1,000 requests.
        let mut batch = data.log_db.batch();
        for index in indexes {
            if batch.len() == 1000 {
                std::mem::replace(&mut batch, data.log_db.batch())
                    .commit()
                    .unwrap();
            }
            let entry = Entry::<TypeConfig> {
                log_id: log_id(term, 1, index),
                payload: EntryPayload::Normal(strata_proto::kv::Command::Kv(
                    strata_proto::kv::KvCommand::Put(strata_proto::kv::PutRequest {
                        key: format!("key-{index}").into_bytes(),
                        value: vec![7; 1000],
                        ..Default::default()
                    }),
                )),
            };
            batch.insert(&log, index.to_be_bytes(), encode_entry(&entry).unwrap());
        }
        batch.commit().unwrap();
    }

    /// Flushes the keyspace's memtables, the active one and any sealed earlier, and waits until
    /// every one of them is a table. (`rotate_memtable_and_wait` alone returns at once when the
    /// active memtable is empty, even while memtables sealed by the last commits still flush.)
    async fn flush_all(log: &fjall::Keyspace) {
        use fjall::AbstractTree as _;
        log.rotate_memtable_and_wait().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while log.tree.sealed_memtable_count() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "memtables were not flushed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Waits until everything sent to the writer before now is written (a vote is answered
    /// only once its batch, and so every op queued before it, is on disk).
    async fn settle(store: &mut LogStore) {
        let vote = store.read_vote().await.unwrap().unwrap_or_default();
        store.save_vote(&vote).await.unwrap();
    }

    #[tokio::test]
    async fn durable_commits_are_timed_and_hints_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let data = crate::open_storage(dir.path()).unwrap();
        let mut store = LogStore::open(&data).unwrap();
        let timed = store.commit_seconds();
        // A commit index is a hint, written without an fsync: not a durable commit.
        store.save_committed(Some(log_id(1, 1, 3))).await.unwrap();
        settle(&mut store).await;
        // The vote `settle` saved is one durable commit; a second vote makes two.
        assert_eq!(timed.get_sample_count(), 1);
        settle(&mut store).await;
        assert_eq!(timed.get_sample_count(), 2);
        assert_eq!(timed.get_sample_count(), store.fsync_count());
        assert!(timed.get_sample_sum() > 0.0);
    }

    #[tokio::test]
    async fn a_purge_drops_the_tables_below_it_and_keeps_the_rest_readable() {
        let dir = tempfile::tempdir().unwrap();
        let data = crate::open_storage(dir.path()).unwrap();
        write_entries(&data, 1, 1..=30_000);
        let mut store = LogStore::open(&data).unwrap();
        flush_all(&store.shared.log).await;
        let before = store.shared.log.table_count();
        assert!(
            before >= 3,
            "30 MB of entries should make several tables, got {before}"
        );

        store.purge(log_id(1, 1, 29_000)).await.unwrap();
        settle(&mut store).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while store.shared.log.table_count() > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "tables below the purge point were not dropped: {} of {before} left",
                store.shared.log.table_count()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // What is above the purge point is all there, on disk and through the store.
        let read = read_range(&store.shared.log, 29_001, 30_001).unwrap();
        assert_eq!(read.len(), 1000);
        let through_store = store.try_get_log_entries(29_001..=30_000).await.unwrap();
        let indexes: Vec<u64> = through_store.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, (29_001..=30_000).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn entries_left_below_the_purge_point_are_not_loaded_again() {
        let dir = tempfile::tempdir().unwrap();
        let data = crate::open_storage(dir.path()).unwrap();
        write_entries(&data, 1, 1..=100);
        let mut store = LogStore::open(&data).unwrap();
        assert_eq!(
            store.get_log_state().await.unwrap().last_log_id,
            Some(log_id(1, 1, 100))
        );
        // A snapshot of a later term installed past the end of this log purges up to its last
        // entry; the old entries stay on disk (they are in the memtable, no table to drop).
        let snapshot_end = log_id(2, 1, 200);
        store.purge(snapshot_end).await.unwrap();
        settle(&mut store).await;
        drop(store);

        let mut reopened = LogStore::open(&data).unwrap();
        let state = reopened.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(snapshot_end));
        assert_eq!(state.last_log_id, Some(snapshot_end));
        assert!(reopened
            .try_get_log_entries(1..=300)
            .await
            .unwrap()
            .is_empty());
    }
}
