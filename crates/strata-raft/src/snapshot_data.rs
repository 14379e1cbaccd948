//! [`SnapshotData`]: a snapshot's data as openraft hands it around: a region of a file on
//! disk, read and written in chunks, never held in memory whole.

use crate::snapshot_file::Region;
use bytes::Bytes;
use futures::Stream;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Prefix of the files a follower receives a snapshot into; removed once installed, and
/// left-overs of a crash are removed at start-up.
pub(crate) const RECEIVING_PREFIX: &str = "snapshot.recv-";
/// Prefix of the files a backup is written to before it is sent (`StateMachineStore::export`);
/// removed once sent, and left-overs of a crash are removed at start-up.
pub(crate) const EXPORT_PREFIX: &str = "snapshot.export-";

/// A snapshot's data: the data region of `snapshot.bin`, or a file being received.
#[derive(Debug)]
pub struct SnapshotData {
    region: Region,
    /// Set for a received file, removed when this is dropped.
    temp: Option<PathBuf>,
}

impl SnapshotData {
    /// The data of a stored snapshot.
    pub(crate) fn stored(region: Region) -> Self {
        SnapshotData { region, temp: None }
    }

    /// No data, for a snapshot that covers nothing.
    pub(crate) fn empty() -> std::io::Result<Self> {
        Ok(SnapshotData::stored(Region {
            file: Arc::new(std::fs::File::open("/dev/null")?),
            offset: 0,
            len: 0,
        }))
    }

    /// An empty file in `dir` to receive a snapshot into.
    pub(crate) fn receiving(dir: &Path, seq: u64) -> std::io::Result<Self> {
        let path = dir.join(format!("{RECEIVING_PREFIX}{seq}"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        Ok(SnapshotData {
            region: Region {
                file: Arc::new(file),
                offset: 0,
                len: 0,
            },
            temp: Some(path),
        })
    }

    /// A whole file, removed when this is dropped.
    pub(crate) fn whole_temp_file(path: PathBuf) -> std::io::Result<Self> {
        let file = std::fs::File::open(&path)?;
        let len = file.metadata()?.len();
        Ok(SnapshotData {
            region: Region {
                file: Arc::new(file),
                offset: 0,
                len,
            },
            temp: Some(path),
        })
    }

    /// Removes receiving, export and half-written snapshot files a crash left in `dir`.
    pub(crate) fn remove_leftovers(dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let leftover = name.starts_with(RECEIVING_PREFIX)
                || name.starts_with(EXPORT_PREFIX)
                || name == "snapshot.bin.tmp";
            if leftover {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// The data's length in bytes.
    pub fn len(&self) -> u64 {
        self.region.len
    }

    /// True when there is no data.
    pub fn is_empty(&self) -> bool {
        self.region.len == 0
    }

    /// Where the data lies.
    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    /// Appends received bytes at the end, off the async runtime.
    pub async fn append(&mut self, bytes: Vec<u8>) -> std::io::Result<()> {
        let file = self.region.file.clone();
        let at = self.region.offset + self.region.len;
        let n = bytes.len() as u64;
        tokio::task::spawn_blocking(move || file.write_all_at(&bytes, at))
            .await
            .map_err(std::io::Error::other)??;
        self.region.len += n;
        Ok(())
    }

    /// Checks and removes the CRC-32 a streamed snapshot ends with (see `network`): the data
    /// must be `data_len` bytes followed by their checksum. Reads the data once, off the
    /// runtime.
    pub(crate) async fn strip_checksum(&mut self, data_len: u64) -> Result<(), String> {
        if self.region.len != data_len.saturating_add(4) {
            return Err(format!(
                "{} bytes arrived where {data_len} and a checksum were sent",
                self.region.len
            ));
        }
        let region = Region {
            len: data_len,
            ..self.region.clone()
        };
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let sum = region
                .crc_after(crc32fast::Hasher::new())
                .map_err(|e| e.to_string())?;
            if sum != region.u32_after()? {
                return Err("checksum mismatch".into());
            }
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())??;
        self.region.len = data_len;
        Ok(())
    }

    /// The data as a stream of chunks of at most `chunk` bytes, each read off the runtime
    /// when the stream is polled: a sender holds one chunk at a time.
    pub fn into_chunks(self, chunk: usize) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
        futures::stream::try_unfold((self, 0u64), move |(data, at)| async move {
            if at >= data.region.len {
                return Ok(None);
            }
            let region = data.region.clone();
            let bytes = tokio::task::spawn_blocking(move || region.read_chunk(at, chunk))
                .await
                .map_err(std::io::Error::other)??;
            let next = at + bytes.len() as u64;
            Ok(Some((Bytes::from(bytes), (data, next))))
        })
    }

    /// Reads all the data into memory: only for a peer of an older build, which takes a
    /// snapshot as one message.
    pub async fn read_all(&self) -> std::io::Result<Vec<u8>> {
        let region = self.region.clone();
        let len = usize::try_from(region.len).map_err(std::io::Error::other)?;
        tokio::task::spawn_blocking(move || region.read_chunk(0, len))
            .await
            .map_err(std::io::Error::other)?
    }
}

impl Drop for SnapshotData {
    fn drop(&mut self) {
        if let Some(path) = &self.temp {
            let _ = std::fs::remove_file(path);
        }
    }
}
