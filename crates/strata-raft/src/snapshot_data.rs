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
    /// Set for a file received in the layout of `snapshot.bin` ([`Self::lay_out_as_stored`]).
    in_place: Option<InPlace>,
}

/// A received file that starts with the head of a snapshot file, so that installing it is a
/// rename rather than a copy.
#[derive(Debug)]
struct InPlace {
    /// The metadata in its head, as `snapshot.bin` stores it.
    meta: Vec<u8>,
    /// The data's CRC-32, once [`SnapshotData::strip_checksum`] has checked it.
    data_crc: Option<u32>,
}

impl SnapshotData {
    /// The data of a stored snapshot.
    pub(crate) fn stored(region: Region) -> Self {
        SnapshotData {
            region,
            temp: None,
            in_place: None,
        }
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
            in_place: None,
        })
    }

    /// Starts a file being received (still empty) with the head of a snapshot file holding
    /// `meta` (encoded as `snapshot.bin` stores it), so that the data lands where
    /// `snapshot.bin` keeps it and [`Self::finish_in_place`] can make the file the snapshot
    /// without copying it.
    pub(crate) fn lay_out_as_stored(&mut self, meta: Vec<u8>) -> std::io::Result<()> {
        if self.temp.is_none() || self.region.len != 0 || self.in_place.is_some() {
            return Err(std::io::Error::other(
                "only an empty file being received can take a snapshot's head",
            ));
        }
        let head = crate::snapshot_file::head(&meta)?;
        self.region.file.write_all_at(&head, 0)?;
        self.region.offset = head.len() as u64;
        self.in_place = Some(InPlace {
            meta,
            data_crc: None,
        });
        Ok(())
    }

    /// Whether this received file was laid out as `snapshot.bin` ([`Self::lay_out_as_stored`]),
    /// so that installing it may keep the file rather than copy it.
    pub(crate) fn is_laid_out_as_stored(&self) -> bool {
        self.in_place.is_some()
    }

    /// Makes this received file `dir/name`, durably, when it was laid out for it with the
    /// metadata `meta` and its data was checked; the file is then no longer temporary and
    /// this returns the data's length. `None`: it cannot be (the caller copies the data).
    /// Blocking.
    pub(crate) fn finish_in_place(
        &mut self,
        meta: &[u8],
        dir: &Path,
        name: &str,
    ) -> std::io::Result<Option<u64>> {
        let (Some(temp), Some(in_place)) = (&self.temp, &self.in_place) else {
            return Ok(None);
        };
        let Some(data_crc) = in_place.data_crc.filter(|_| in_place.meta == meta) else {
            return Ok(None);
        };
        crate::snapshot_file::finish_in_place(
            &self.region.file,
            temp,
            dir,
            name,
            meta,
            self.region.len,
            data_crc,
        )?;
        self.temp = None;
        self.in_place = None;
        Ok(Some(self.region.len))
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
            in_place: None,
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
        if let Some(in_place) = &mut self.in_place {
            // Whatever was checked before, this is not it.
            in_place.data_crc = None;
        }
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
        let sum = tokio::task::spawn_blocking(move || -> Result<u32, String> {
            let sum = region
                .crc_after(crc32fast::Hasher::new())
                .map_err(|e| e.to_string())?;
            if sum != region.u32_after()? {
                return Err("checksum mismatch".into());
            }
            Ok(sum)
        })
        .await
        .map_err(|e| e.to_string())??;
        self.region.len = data_len;
        if let Some(in_place) = &mut self.in_place {
            in_place.data_crc = Some(sum);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot_file::{load_named, open_region, FILE};

    /// A file received as the network receives a streamed snapshot: laid out for `meta`, the
    /// data and its CRC-32 appended in pieces, the CRC checked and stripped.
    async fn received(dir: &Path, meta: &[u8], data: &[u8]) -> SnapshotData {
        let mut received = SnapshotData::receiving(dir, 7).unwrap();
        received.lay_out_as_stored(meta.to_vec()).unwrap();
        for piece in data.chunks(1000) {
            received.append(piece.to_vec()).await.unwrap();
        }
        let crc = crc32fast::hash(data).to_le_bytes().to_vec();
        received.append(crc).await.unwrap();
        received.strip_checksum(data.len() as u64).await.unwrap();
        received
    }

    #[tokio::test]
    async fn a_received_file_laid_out_as_stored_becomes_the_snapshot_without_a_copy() {
        for len in [0usize, 1, 999, 1000, 4321] {
            let dir = tempfile::tempdir().unwrap();
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
            let mut received = received(dir.path(), b"the meta", &data).await;
            let temp = received.temp.clone().unwrap();
            assert_eq!(
                received
                    .finish_in_place(b"the meta", dir.path(), FILE)
                    .unwrap(),
                Some(len as u64)
            );
            assert!(!temp.exists(), "the received file was moved, not copied");
            // The same file a snapshot written the usual way is, checksum included.
            assert_eq!(
                load_named(dir.path(), FILE).unwrap(),
                Some((b"the meta".to_vec(), data.clone()))
            );
            let (meta, region) = open_region(dir.path(), FILE, true).unwrap().unwrap();
            assert_eq!(meta, b"the meta");
            assert_eq!(region.len, len as u64);
            // Dropping what was received leaves the snapshot in place.
            drop(received);
            assert!(dir.path().join(FILE).exists());
        }
    }

    #[tokio::test]
    async fn a_received_file_is_not_made_the_snapshot_unless_everything_matches() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![5u8; 3000];
        // Other metadata than the head holds.
        let mut received = received(dir.path(), b"meta A", &data).await;
        assert_eq!(
            received
                .finish_in_place(b"meta B", dir.path(), FILE)
                .unwrap(),
            None
        );
        // Bytes appended after the check.
        received.append(vec![1]).await.unwrap();
        assert_eq!(
            received
                .finish_in_place(b"meta A", dir.path(), FILE)
                .unwrap(),
            None
        );
        // Never laid out, or its checksum never checked.
        let mut plain = SnapshotData::receiving(dir.path(), 8).unwrap();
        plain.append(data.clone()).await.unwrap();
        assert_eq!(
            plain.finish_in_place(b"meta A", dir.path(), FILE).unwrap(),
            None
        );
        let mut unchecked = SnapshotData::receiving(dir.path(), 9).unwrap();
        unchecked.lay_out_as_stored(b"meta A".to_vec()).unwrap();
        unchecked.append(data).await.unwrap();
        assert_eq!(
            unchecked
                .finish_in_place(b"meta A", dir.path(), FILE)
                .unwrap(),
            None
        );
        assert!(!dir.path().join(FILE).exists());
        // A file with data cannot take a head.
        assert!(unchecked.lay_out_as_stored(b"meta A".to_vec()).is_err());
    }
}
