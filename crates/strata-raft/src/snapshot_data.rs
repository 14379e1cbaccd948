//! [`SnapshotData`]: a snapshot's data as openraft hands it around: a region of a file on
//! disk, read and written in chunks, or a frozen view of the live state that is serialised as
//! it is sent; never held in memory whole.

use crate::snapshot_file::Region;
use crate::SnapshotWriter;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Prefix of the files a follower receives a snapshot into; removed once installed, and
/// left-overs of a crash are removed at start-up.
pub(crate) const RECEIVING_PREFIX: &str = "snapshot.recv-";
/// Prefix of the files a backup is written to before it is sent (`StateMachineStore::export`);
/// removed once sent, and left-overs of a crash are removed at start-up.
pub(crate) const EXPORT_PREFIX: &str = "snapshot.export-";

/// A snapshot's data: the data region of `snapshot.bin`, a file being received, or a frozen
/// view of the state to send ([`Self::live`]).
#[derive(Debug)]
pub struct SnapshotData {
    region: Region,
    /// Set for a received file, removed when this is dropped.
    temp: Option<PathBuf>,
    /// Set for a file received in the layout of `snapshot.bin` ([`Self::lay_out_as_stored`]).
    in_place: Option<InPlace>,
    /// Set for a frozen view of the state: the data is what it writes, not the region.
    live: Option<Live>,
    /// A received file's bytes written since its last background sync started.
    unsynced: u64,
    /// The background sync of a file being received, if one is running or unchecked.
    syncing: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The CRC-32 of what was appended, but for the last 4 bytes (a streamed snapshot's
    /// checksum), kept as the bytes arrive so that checking it reads nothing back.
    arrived: Trailing,
}

/// A CRC-32 of a byte stream that stays 4 bytes behind its end.
#[derive(Debug, Clone, Default)]
struct Trailing {
    crc: crc32fast::Hasher,
    /// Bytes the CRC covers.
    hashed: u64,
    /// The last bytes (at most 4), not in the CRC.
    tail: Vec<u8>,
}

impl Trailing {
    fn feed(&mut self, bytes: &[u8]) {
        let mut hash = |part: &[u8]| {
            self.crc.update(part);
            self.hashed += part.len() as u64;
        };
        if bytes.len() >= 4 {
            hash(&self.tail);
            let (body, tail) = bytes.split_at(bytes.len() - 4);
            hash(body);
            self.tail.clear();
            self.tail.extend_from_slice(tail);
        } else {
            self.tail.extend_from_slice(bytes);
            let over = self.tail.len().saturating_sub(4);
            let head: Vec<u8> = self.tail.drain(..over).collect();
            hash(&head);
        }
    }
}

/// A file being received is synced to disk in the background every this many bytes, so that
/// installing it, which must wait until it is durable, finds little left to write (and the
/// disk, shared with the log's fsyncs, gets it spread out rather than all at once).
const SYNC_BEHIND_EVERY: u64 = 32 << 20;

/// A frozen view of the state, serialised on demand; its length is known once measured.
struct Live {
    view: Arc<SnapshotWriter>,
    len: Option<u64>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").field("len", &self.len).finish()
    }
}

/// Counts what is written into it and keeps nothing.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Hands what is written into it on as chunks of `chunk` bytes through a bounded channel, so
/// that a writer on a blocking thread fills at most the channel's chunks ahead of the reader.
struct ChunkSender {
    out: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    pending: Vec<u8>,
    chunk: usize,
    written: u64,
}

impl ChunkSender {
    fn send(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.pending, Vec::with_capacity(self.chunk));
        self.out
            .blocking_send(Ok(Bytes::from(full)))
            .map_err(|_| std::io::Error::other("the snapshot's receiver went away"))
    }
}

impl Write for ChunkSender {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.chunk - self.pending.len();
        let n = buf.len().min(room);
        self.pending.extend_from_slice(&buf[..n]);
        self.written += n as u64;
        if self.pending.len() == self.chunk {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
    /// The data in `region`; a file at `temp` is removed when this is dropped.
    fn in_region(region: Region, temp: Option<PathBuf>) -> Self {
        SnapshotData {
            region,
            temp,
            in_place: None,
            live: None,
            unsynced: 0,
            syncing: None,
            arrived: Trailing::default(),
        }
    }

    /// The data of a stored snapshot.
    pub(crate) fn stored(region: Region) -> Self {
        SnapshotData::in_region(region, None)
    }

    /// A frozen view of the state (see [`crate::StateMachine::snapshot`]), serialised when it
    /// is measured or sent: a leader sends a peer its state as of now rather than its last
    /// stored snapshot, so the peer has no log tail to catch up on after installing it.
    pub(crate) fn live(view: SnapshotWriter) -> std::io::Result<Self> {
        let mut data = SnapshotData::empty()?;
        data.live = Some(Live {
            view: Arc::new(view),
            len: None,
        });
        Ok(data)
    }

    /// Works out the data's length, serialising a live view once into a counter (off the
    /// runtime); a stored region's length is known already. Call before [`Self::len`] is
    /// needed.
    pub(crate) async fn measure(&mut self) -> std::io::Result<u64> {
        let Some(live) = &mut self.live else {
            return Ok(self.region.len);
        };
        if let Some(len) = live.len {
            return Ok(len);
        }
        let view = live.view.clone();
        let len = tokio::task::spawn_blocking(move || {
            let mut counter = Counter(0);
            view(&mut counter).map(|()| counter.0)
        })
        .await
        .map_err(std::io::Error::other)??;
        live.len = Some(len);
        Ok(len)
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
        let region = Region {
            file: Arc::new(file),
            offset: 0,
            len: 0,
        };
        Ok(SnapshotData::in_region(region, Some(path)))
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
        let region = Region {
            file: Arc::new(file),
            offset: 0,
            len,
        };
        Ok(SnapshotData::in_region(region, Some(path)))
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

    /// The data's length in bytes (of a live view: 0 until [`Self::measure`]d).
    pub fn len(&self) -> u64 {
        match &self.live {
            Some(live) => live.len.unwrap_or(0),
            None => self.region.len,
        }
    }

    /// True when there is no data.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this is a frozen view of the state rather than a file ([`Self::live`]).
    pub(crate) fn is_live(&self) -> bool {
        self.live.is_some()
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
        let mut arrived = std::mem::take(&mut self.arrived);
        self.arrived = tokio::task::spawn_blocking(move || {
            file.write_all_at(&bytes, at)?;
            arrived.feed(&bytes);
            Ok::<_, std::io::Error>(arrived)
        })
        .await
        .map_err(std::io::Error::other)??;
        self.region.len += n;
        if let Some(in_place) = &mut self.in_place {
            // Whatever was checked before, this is not it.
            in_place.data_crc = None;
        }
        self.unsynced += n;
        let idle = self.syncing.as_ref().is_none_or(|s| s.is_finished());
        if self.temp.is_some() && self.unsynced >= SYNC_BEHIND_EVERY && idle {
            self.synced_behind().await?;
            let file = self.region.file.clone();
            self.syncing = Some(tokio::task::spawn_blocking(move || file.sync_data()));
            self.unsynced = 0;
        }
        Ok(())
    }

    /// Waits for the background sync of a received file, if one was started, and returns its
    /// error: Linux reports a failed writeback to one sync only, so a later sync of the same
    /// file could succeed over lost pages.
    async fn synced_behind(&mut self) -> std::io::Result<()> {
        match self.syncing.take() {
            Some(syncing) => syncing.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }

    /// Checks and removes the CRC-32 a streamed snapshot ends with (see `network`): the data
    /// must be `data_len` bytes followed by their checksum. Reads the data once, off the
    /// runtime.
    pub(crate) async fn strip_checksum(&mut self, data_len: u64) -> Result<(), String> {
        self.synced_behind()
            .await
            .map_err(|e| format!("sync of the received file: {e}"))?;
        if self.region.len != data_len.saturating_add(4) {
            return Err(format!(
                "{} bytes arrived where {data_len} and a checksum were sent",
                self.region.len
            ));
        }
        // Everything arrived through `append`, which hashed all but the last 4 bytes.
        let arrived = &self.arrived;
        if arrived.hashed != data_len || arrived.tail.len() != 4 {
            return Err("the received bytes were not all checksummed as they arrived".into());
        }
        let sum = arrived.crc.clone().finalize();
        if sum.to_le_bytes()[..] != arrived.tail[..] {
            return Err("checksum mismatch".into());
        }
        self.region.len = data_len;
        if let Some(in_place) = &mut self.in_place {
            in_place.data_crc = Some(sum);
        }
        Ok(())
    }

    /// The data as a stream of chunks of at most `chunk` bytes, each read off the runtime
    /// when the stream is polled: a sender holds one chunk at a time. A live view is
    /// serialised on a blocking thread at most two chunks ahead of the stream; when it has
    /// been measured, a serialisation of another length ends the stream with an error.
    pub fn into_chunks(
        self,
        chunk: usize,
    ) -> std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>> {
        if self.live.is_some() {
            return self.chunks(chunk);
        }
        Box::pin(self.read_chunks(chunk))
    }

    /// [`Self::into_chunks`] of a second handle on the same data: this one stays usable (a
    /// send that falls back to one message reads the data again).
    pub(crate) fn chunks(
        &self,
        chunk: usize,
    ) -> std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>> {
        match &self.live {
            Some(live) => Box::pin(Self::serialise(live.view.clone(), live.len, chunk)),
            None => Box::pin(SnapshotData::stored(self.region.clone()).read_chunks(chunk)),
        }
    }

    /// A live view serialised as a stream of chunks (see [`Self::into_chunks`]).
    fn serialise(
        view: Arc<SnapshotWriter>,
        measured: Option<u64>,
        chunk: usize,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
        let (out, chunks) = tokio::sync::mpsc::channel(2);
        let failed = out.clone();
        let writer = move || {
            let mut sender = ChunkSender {
                out,
                pending: Vec::with_capacity(chunk),
                chunk: chunk.max(1),
                written: 0,
            };
            view(&mut sender)?;
            sender.send()?;
            match measured {
                Some(len) if len != sender.written => Err(std::io::Error::other(format!(
                    "the state serialised to {} bytes after measuring {len}",
                    sender.written
                ))),
                _ => Ok(()),
            }
        };
        let spawned = std::thread::Builder::new()
            .name("raft-snapshot-send".into())
            .spawn(move || {
                if let Err(e) = writer() {
                    let _ = failed.blocking_send(Err(e));
                }
            });
        let refused = spawned.err().map(|e| Err(std::io::Error::other(e)));
        let received = futures::stream::unfold(chunks, |mut chunks| async move {
            chunks.recv().await.map(|chunk| (chunk, chunks))
        });
        futures::stream::iter(refused).chain(received)
    }

    /// A region read as a stream of chunks (see [`Self::into_chunks`]).
    fn read_chunks(self, chunk: usize) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
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
        if let Some(live) = &self.live {
            let view = live.view.clone();
            return tokio::task::spawn_blocking(move || {
                let mut all = Vec::new();
                view(&mut all).map(|()| all)
            })
            .await
            .map_err(std::io::Error::other)?;
        }
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
    use futures::TryStreamExt;

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

    #[test]
    fn the_checksum_kept_as_bytes_arrive_leaves_out_the_last_four_however_they_are_cut() {
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 31 % 256) as u8).collect();
        for cuts in [
            vec![1usize; 3000],
            vec![3; 1000],
            vec![2, 5, 1, 3, 7, 4],
            vec![2999, 1],
        ] {
            let mut arrived = Trailing::default();
            let mut at = 0;
            for cut in cuts.iter().cycle() {
                if at == data.len() {
                    break;
                }
                let end = (at + cut).min(data.len());
                arrived.feed(&data[at..end]);
                at = end;
            }
            assert_eq!(arrived.hashed, 2996);
            assert_eq!(arrived.tail, data[2996..]);
            assert_eq!(arrived.crc.finalize(), crc32fast::hash(&data[..2996]));
        }
    }

    #[tokio::test]
    async fn a_received_file_with_a_wrong_checksum_or_length_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![9u8; 5000];
        let mut received = SnapshotData::receiving(dir.path(), 1).unwrap();
        received.append(data.clone()).await.unwrap();
        let mut wrong = crc32fast::hash(&data).to_le_bytes().to_vec();
        wrong[0] ^= 1;
        received.append(wrong).await.unwrap();
        assert_eq!(
            received.strip_checksum(5000).await.unwrap_err(),
            "checksum mismatch"
        );
        let mut short = SnapshotData::receiving(dir.path(), 2).unwrap();
        short.append(data).await.unwrap();
        assert!(short.strip_checksum(5000).await.is_err());
    }

    #[tokio::test]
    async fn a_live_view_is_measured_then_streamed_in_chunks_as_often_as_asked() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let written = bytes.clone();
        let mut live = SnapshotData::live(Box::new(move |out| out.write_all(&written))).unwrap();
        assert!(live.is_live());
        assert_eq!(live.len(), 0, "unknown until measured");
        assert_eq!(live.measure().await.unwrap(), 10_000);
        assert_eq!(live.len(), 10_000);
        for _ in 0..2 {
            let chunks: Vec<Bytes> = live.chunks(3000).try_collect().await.unwrap();
            let sizes: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
            assert_eq!(sizes, [3000, 3000, 3000, 1000]);
            assert_eq!(chunks.concat(), bytes);
        }
        assert_eq!(live.read_all().await.unwrap(), bytes);
        let all: Vec<Bytes> = live.into_chunks(1 << 20).try_collect().await.unwrap();
        assert_eq!(all.concat(), bytes);
    }

    #[tokio::test]
    async fn a_live_view_that_writes_other_bytes_than_it_measured_ends_its_stream_with_an_error() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let mut live = SnapshotData::live(Box::new(move |out| {
            let extra = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            out.write_all(&vec![7; 100 + extra])
        }))
        .unwrap();
        assert_eq!(live.measure().await.unwrap(), 100);
        let results: Vec<std::io::Result<Bytes>> = live.chunks(64).collect().await;
        let last = results.last().unwrap();
        let error = last.as_ref().unwrap_err().to_string();
        assert!(error.contains("101 bytes after measuring 100"), "{error}");
    }

    #[tokio::test]
    async fn a_live_stream_dropped_early_stops_its_writer() {
        let (ended, ended_rx) = std::sync::mpsc::channel();
        let live = SnapshotData::live(Box::new(move |out| {
            // Far more than the channel holds: only a reader that keeps reading gets it all.
            let chunk = vec![1u8; 1 << 16];
            let result = (0..100_000).try_for_each(|_| out.write_all(&chunk));
            let _ = ended.send(result.is_err());
            result
        }))
        .unwrap();
        let mut chunks = live.chunks(1 << 16);
        assert_eq!(chunks.next().await.unwrap().unwrap().len(), 1 << 16);
        drop(chunks);
        let failed = ended_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the writer stopped once its reader was gone");
        assert!(failed, "the writer was told its reader went away");
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
