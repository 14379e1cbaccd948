//! The data folder: version file, process lock, the fjall database (`log/`) and the
//! snapshot file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The on-disk format version this build reads and writes.
pub const DATA_FORMAT_VERSION: u32 = strata_proto::log::FORMAT;
const VERSION_FILE: &str = "VERSION";
const LOCK_FILE: &str = "LOCK";
/// Folder of the fjall database holding the Raft log, vote and commit index.
pub const LOG_DIR: &str = "log";

/// Why the data folder could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Creating or reading the folder failed.
    #[error("cannot use data folder {path}: {source}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Another process holds the lock.
    #[error(
        "data folder {0} is in use by another strata process; stop it or choose another --data-dir"
    )]
    Locked(PathBuf),
    /// The folder was written by an incompatible version.
    #[error("data folder {path} has format version {found}, this build reads versions 1 to {expected}; use a newer strata release")]
    Version {
        /// The folder.
        path: PathBuf,
        /// What the version file says.
        found: String,
        /// What this build expects.
        expected: u32,
    },
    /// The database is damaged or not a database.
    #[error("data folder {path} holds a damaged database ({message}); restore it from a backup, or remove the folder and re-join the cluster as a new member")]
    Corrupt {
        /// The database folder.
        path: PathBuf,
        /// What the engine said.
        message: String,
    },
}

/// An open, locked data folder. The lock is released when this is dropped.
pub struct DataDir {
    /// The folder.
    pub path: PathBuf,
    /// The open database holding the log, vote and commit index.
    pub log_db: fjall::Database,
    /// The folder's free space and the reserve the node keeps (read-only below it).
    pub space: std::sync::Arc<crate::DiskSpace>,
    /// Held for the lifetime of the process: `try_lock` fails for a second process.
    _lock: File,
}

/// Opens (creating if needed) a data folder, locks it and opens its database.
pub fn open_storage(path: &Path) -> Result<DataDir, StorageError> {
    let io = |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(path).map_err(io)?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.join(LOCK_FILE))
        .map_err(io)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(StorageError::Locked(path.to_path_buf()))
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    check_version(path)?;
    let db_path = path.join(LOG_DIR);
    // Small caches: the log is read from memory (see LogStore); fjall only needs to write it.
    // Two workers, not one: a worker that rotates a memtable then waits to queue its flush on
    // the workers' own queue (1,000 requests), which every commit over the memtable's size
    // adds to; with one worker, a full queue would leave nobody to empty it, and the log's
    // writes would stop for good.
    let log_db = fjall::Database::builder(&db_path)
        .cache_size(4 * 1024 * 1024)
        .worker_threads(2)
        .open()
        .map_err(|e| StorageError::Corrupt {
            path: db_path.clone(),
            message: e.to_string(),
        })?;
    Ok(DataDir {
        path: path.to_path_buf(),
        log_db,
        space: std::sync::Arc::new(crate::DiskSpace::new(path, crate::DEFAULT_DISK_RESERVE)),
        _lock: lock,
    })
}

impl std::fmt::Debug for DataDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataDir")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn check_version(path: &Path) -> Result<(), StorageError> {
    let io = |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let version_path = path.join(VERSION_FILE);
    let write_version = || -> Result<(), StorageError> {
        let tmp = path.join("VERSION.tmp");
        let mut file = File::create(&tmp).map_err(io)?;
        writeln!(file, "{DATA_FORMAT_VERSION}").map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &version_path).map_err(io)?;
        File::open(path).and_then(|dir| dir.sync_all()).map_err(io)
    };
    match std::fs::read_to_string(&version_path) {
        Ok(text) => {
            let found = text.trim();
            let readable = strata_proto::log::OLDEST_FORMAT..=DATA_FORMAT_VERSION;
            match found.parse::<u32>() {
                Ok(version) if version == DATA_FORMAT_VERSION => Ok(()),
                // An older folder: the log store and the snapshot reader upgrade what they
                // read (strata_proto::log); from now on an older binary must not open it.
                Ok(version) if readable.contains(&version) => {
                    tracing::info!(from = version, to = DATA_FORMAT_VERSION, path = %path.display(), "upgrading the data folder format");
                    write_version()
                }
                _ => Err(StorageError::Version {
                    path: path.to_path_buf(),
                    found: found.chars().take(32).collect(),
                    expected: DATA_FORMAT_VERSION,
                }),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let has_db = path.join(LOG_DIR).exists();
            if has_db {
                return Err(StorageError::Version {
                    path: path.to_path_buf(),
                    found: "missing".into(),
                    expected: DATA_FORMAT_VERSION,
                });
            }
            write_version()
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_is_refused_while_first_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let first = open_storage(dir.path()).unwrap();
        let second = open_storage(dir.path()).unwrap_err();
        assert!(matches!(second, StorageError::Locked(_)), "{second}");
        drop(first);
        open_storage(dir.path()).unwrap();
    }

    #[test]
    fn garbled_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        drop(open_storage(dir.path()).unwrap());
        let log_dir = dir.path().join(LOG_DIR);
        for entry in std::fs::read_dir(&log_dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::write(&path, b"this is not a database").unwrap();
            }
        }
        let err = open_storage(dir.path()).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn wrong_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(open_storage(dir.path()).unwrap());
        std::fs::write(dir.path().join(VERSION_FILE), "99\n").unwrap();
        let err = open_storage(dir.path()).unwrap_err();
        assert!(err.to_string().contains("format version 99"), "{err}");
    }
}
