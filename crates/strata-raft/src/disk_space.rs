//! [`DiskSpace`]: the free space of the data folder's file system, and the read-only mode a
//! node enters when it falls below the reserve (`kv.disk_reserve`).
//!
//! The engine must never meet a full disk: fjall marks its database poisoned after a failed
//! journal write, and openraft stops a node whose log or snapshot write fails. So the space is
//! checked before anything large is written, and a node below the reserve refuses writes
//! with `no_space` while it goes on serving reads:
//! - a write arriving at the node, and a write a follower forwards to it when it leads, is
//!   refused at once (measured again first, so freed space is noticed on the next write);
//! - the log writer measures after every batch of appends, and holds one until there is room
//!   for it above half the reserve (appends already accepted wait rather than fail; votes,
//!   truncations and purges are small and go through);
//! - a snapshot is built only if the last one's size fits above the reserve.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use strata_proto::error::{ApiError, ErrorCode};

/// The data folder's free space and the reserve it keeps. Shared by the log writer, the
/// snapshot builder and the write path.
#[derive(Debug)]
pub struct DiskSpace {
    dir: PathBuf,
    reserve: AtomicU64,
    /// Bytes available to the node at the last measurement.
    free: AtomicU64,
    /// Below the reserve at the last measurement, or the log writer waiting for room.
    full: AtomicBool,
    /// The log writer holds appends until there is room for them.
    writer_waiting: AtomicBool,
}

/// The reserve until the node's configuration sets one (`kv.disk_reserve`'s default).
pub const DEFAULT_RESERVE: u64 = 128 * 1024 * 1024;

impl DiskSpace {
    /// Watches the file system holding `dir`, keeping `reserve` bytes free.
    pub fn new(dir: &Path, reserve: u64) -> DiskSpace {
        let space = DiskSpace {
            dir: dir.to_path_buf(),
            reserve: AtomicU64::new(reserve),
            free: AtomicU64::new(u64::MAX),
            full: AtomicBool::new(false),
            writer_waiting: AtomicBool::new(false),
        };
        // Measured without a word: the node sets its reserve next (`set_reserve`), and only
        // then is there something to say.
        space.free.store(space.measure(), Ordering::Relaxed);
        space
    }

    /// Sets the reserve (`kv.disk_reserve`).
    pub fn set_reserve(&self, reserve: u64) {
        self.reserve.store(reserve, Ordering::Relaxed);
        self.refresh();
    }

    /// The bytes kept free.
    pub fn reserve(&self) -> u64 {
        self.reserve.load(Ordering::Relaxed)
    }

    /// Bytes available at the last measurement.
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// True while the node is read-only for lack of space (as last measured).
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Measures the free space again, logs when the node enters or leaves read-only mode,
    /// and returns the bytes available. A file system that cannot be measured counts as
    /// having room (the write itself will report the error).
    pub fn refresh(&self) -> u64 {
        let free = self.measure();
        self.free.store(free, Ordering::Relaxed);
        let reserve = self.reserve();
        let full = free < reserve || self.writer_waiting.load(Ordering::Relaxed);
        if self.full.swap(full, Ordering::Relaxed) != full {
            if full {
                tracing::warn!(
                    data_dir = %self.dir.display(),
                    free_bytes = free,
                    reserve_bytes = reserve,
                    "disk space is low (below kv.disk_reserve, or too little for the writes waiting): this node refuses writes and serves reads until space is freed"
                );
            } else {
                tracing::info!(
                    data_dir = %self.dir.display(),
                    free_bytes = free,
                    "disk space is back above kv.disk_reserve: this node accepts writes again"
                );
            }
        }
        free
    }

    fn measure(&self) -> u64 {
        match rustix::fs::statvfs(&self.dir) {
            Ok(stat) => stat.f_bavail.saturating_mul(stat.f_frsize),
            Err(_) => u64::MAX,
        }
    }

    /// True when `bytes` more fit above the reserve (measured now).
    pub fn has_room(&self, bytes: u64) -> bool {
        self.refresh() >= self.reserve().saturating_add(bytes)
    }

    /// Blocks the calling (log writer) thread until `bytes` fit above half the reserve; the
    /// node counts as read-only meanwhile. New writes are refused below the whole reserve,
    /// so the writer waits only when something else fills the disk. Returns false if
    /// `give_up` says to stop waiting.
    pub(crate) fn wait_for_room(&self, bytes: u64, give_up: impl Fn() -> bool) -> bool {
        let has_room = || self.refresh() >= (self.reserve() / 2).saturating_add(bytes);
        if has_room() {
            return true;
        }
        self.writer_waiting.store(true, Ordering::Relaxed);
        let mut room = false;
        while !give_up() {
            if has_room() {
                room = true;
                break;
            }
            // Polling the file system, not waiting on another thread: nothing signals space.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        self.writer_waiting.store(false, Ordering::Relaxed);
        self.refresh();
        room
    }

    /// Refuses a write with `no_space` while the node is read-only. Measures again first,
    /// so a node whose space was freed accepts the next write.
    pub fn check_writable(&self) -> Result<(), ApiError> {
        if self.is_full() && self.refresh() < self.reserve() {
            return Err(ApiError::new(
                ErrorCode::NoSpace,
                format!(
                    "this node is read-only: its data folder has {} free, below kv.disk_reserve ({}); free disk space or raise the limit, and writes resume by themselves",
                    human_bytes(self.free()),
                    human_bytes(self.reserve())
                ),
            ));
        }
        Ok(())
    }
}

fn human_bytes(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if bytes >= MIB {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_above_the_free_space_makes_the_node_read_only_until_lowered() {
        let dir = std::env::temp_dir();
        let space = DiskSpace::new(&dir, 0);
        assert!(!space.is_full());
        assert!(space.check_writable().is_ok());
        assert!(space.free() > 0 && space.free() < u64::MAX);
        space.set_reserve(u64::MAX);
        assert!(space.is_full());
        let refused = space.check_writable().unwrap_err();
        assert_eq!(refused.code, ErrorCode::NoSpace);
        assert!(refused.message.contains("read-only"), "{}", refused.message);
        assert!(!space.has_room(0));
        space.set_reserve(1);
        assert!(!space.is_full());
        assert!(space.check_writable().is_ok());
        assert!(space.has_room(1));
        // The log writer waiting for room makes the node read-only until it has room.
        assert!(!space.wait_for_room(u64::MAX, || true));
        assert!(space.wait_for_room(1, || true));
        assert!(!space.is_full());
    }
}
