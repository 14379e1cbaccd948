//! Checksummed files replaced atomically: the snapshot (`snapshot.bin`) and the vote marker
//! (`vote.bin`, see `LogStore`).
//!
//! Layout: magic `STRATA-SNAPSHOT-1\n`, u32 LE length + postcard metadata, u64 LE length +
//! data, u32 LE CRC-32 of metadata and data. Written to a temp file, fsynced, renamed over the
//! old file, and the folder fsynced, so a crash leaves either the old or the new snapshot.
//!
//! A snapshot's data is streamed in and out ([`save_streaming`], [`open_region`]): it is never
//! held in memory whole, whatever its size.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

const MAGIC: &[u8] = b"STRATA-SNAPSHOT-1\n";
/// The snapshot's file name in the data folder.
pub(crate) const FILE: &str = "snapshot.bin";

/// How a snapshot file is written: beside live traffic, gently; alone, fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Beside live traffic (a snapshot built or exported while the node serves): around the
    /// page cache (`O_DIRECT`) in 256 KiB blocks, so no dirty pages build up and the Raft
    /// log's fsyncs on the same disk never queue behind snapshot data, without a journal
    /// commit per block. The page cache route it replaced flushed every 64 KiB (flushing every
    /// 4 MiB gave 1-client puts a p99 of 4.5 ms, every 256 KiB 2.1 ms, every 64 KiB 1.5 ms, and
    /// no snapshot at all 1.0 ms), and those flushes were most of a snapshot's CPU: writing
    /// 300 MB took 0.37-0.42 CPU-seconds that way and 0.01-0.04 direct, with the same log
    /// fsync latency beside it (p99 0.25-0.29 ms against 0.26-0.28 at 100 MB/s). Where the
    /// file system refuses `O_DIRECT`, the page cache is used with a flush every 64 KiB.
    BesideTraffic,
    /// Nothing waits on this disk but the write itself (a snapshot installed from the leader,
    /// which the node needs before it can serve; an offline restore): through the page cache,
    /// flushed every 4 MiB.
    Alone,
}

impl Pace {
    /// Bytes between two flushes when writing through the page cache.
    pub const fn flush_every(self) -> usize {
        match self {
            Pace::BesideTraffic => 64 * 1024,
            Pace::Alone => 4 * 1024 * 1024,
        }
    }
}

/// Writes `dir/name` durably and atomically.
pub fn save_named(dir: &Path, name: &str, meta: &[u8], data: &[u8]) -> std::io::Result<()> {
    save_streaming(dir, name, meta, Pace::Alone, |out| out.write_all(data)).map(|_| ())
}

/// Writes `dir/name` durably and atomically, with data that `write_data` streams into it, and
/// returns the data's length. The data passes through a checksum on its way and is flushed to
/// disk as `pace` says, so neither memory nor dirty pages grow with its size.
pub fn save_streaming(
    dir: &Path,
    name: &str,
    meta: &[u8],
    pace: Pace,
    write_data: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    let tmp = dir.join(format!("{name}.tmp"));
    let written = write_file(dir, name, &tmp, meta, pace, write_data);
    if written.is_err() {
        // A failed write (a full disk, say) must not leave a snapshot-sized file behind.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn write_file(
    dir: &Path,
    name: &str,
    tmp: &Path,
    meta: &[u8],
    pace: Pace,
    write_data: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    let head = head(meta)?;
    let sink = match pace {
        Pace::BesideTraffic => match DirectFile::create(tmp)? {
            Some(direct) => Sink::Direct(direct),
            None => Sink::buffered(File::create(tmp)?, pace.flush_every()),
        },
        Pace::Alone => Sink::buffered(File::create(tmp)?, pace.flush_every()),
    };
    let mut out = DataWriter {
        sink,
        crc: crc32fast::Hasher::new(),
        written: 0,
    };
    out.sink.write_all(&head)?;
    out.crc.update(meta);
    write_data(&mut out)?;
    let DataWriter {
        mut sink,
        crc,
        written,
    } = out;
    sink.write_all(&crc.finalize().to_le_bytes())?;
    let file = sink.into_file()?;
    file.write_all_at(&written.to_le_bytes(), (head.len() - 8) as u64)?;
    sync_and_rename(&file, tmp, dir, name)?;
    Ok(written)
}

/// What a file starts with, before its data: the magic, the metadata's length and the
/// metadata, and a placeholder for the data's length (its last 8 bytes), which is not known
/// until the data is written.
pub(crate) fn head(meta: &[u8]) -> std::io::Result<Vec<u8>> {
    let meta_len = u32::try_from(meta.len()).map_err(std::io::Error::other)?;
    let mut head = Vec::with_capacity(MAGIC.len() + 4 + meta.len() + 8);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&meta_len.to_le_bytes());
    head.extend_from_slice(meta);
    head.extend_from_slice(&0u64.to_le_bytes());
    Ok(head)
}

/// Completes `file` at `tmp`, which holds [`head`]`(meta)` followed by `data_len` bytes of
/// data whose CRC-32 is `data_crc` (and possibly bytes after them, which are cut), and moves
/// it durably to `dir/name`: the data is neither read nor copied again, which is what makes
/// installing a received snapshot cost one write of it instead of two.
pub(crate) fn finish_in_place(
    file: &File,
    tmp: &Path,
    dir: &Path,
    name: &str,
    meta: &[u8],
    data_len: u64,
    data_crc: u32,
) -> std::io::Result<()> {
    let data_at = (MAGIC.len() + 4 + meta.len() + 8) as u64;
    let mut crc = crc32fast::Hasher::new();
    crc.update(meta);
    crc.combine(&crc32fast::Hasher::new_with_initial_len(data_crc, data_len));
    let end = data_at + data_len;
    file.write_all_at(&data_len.to_le_bytes(), data_at - 8)?;
    file.write_all_at(&crc.finalize().to_le_bytes(), end)?;
    file.set_len(end + 4)?;
    sync_and_rename(file, tmp, dir, name)
}

/// Makes `file` durable, then moves it from `tmp` to `dir/name` durably.
fn sync_and_rename(file: &File, tmp: &Path, dir: &Path, name: &str) -> std::io::Result<()> {
    file.sync_all()?;
    std::fs::rename(tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// The data part of a file being written: checksummed and counted as it goes.
struct DataWriter {
    sink: Sink,
    crc: crc32fast::Hasher,
    written: u64,
}

impl Write for DataWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.sink.write(buf)?;
        self.crc.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.sink.flush()
    }
}

/// Where a file's bytes go on their way to disk.
enum Sink {
    /// Through the page cache, flushed to disk every `flush_every` bytes.
    Buffered {
        file: std::io::BufWriter<File>,
        unsynced: usize,
        flush_every: usize,
    },
    /// Around the page cache.
    Direct(DirectFile),
}

impl Sink {
    fn buffered(file: File, flush_every: usize) -> Sink {
        Sink::Buffered {
            file: std::io::BufWriter::with_capacity(flush_every, file),
            unsynced: 0,
            flush_every,
        }
    }

    /// Everything written so far on its way to disk (not yet synced), and the file.
    fn into_file(self) -> std::io::Result<File> {
        match self {
            Sink::Buffered { file, .. } => file.into_inner().map_err(|e| e.into_error()),
            Sink::Direct(direct) => direct.finish(),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Buffered {
                file,
                unsynced,
                flush_every,
            } => {
                let n = file.write(buf)?;
                *unsynced += n;
                if *unsynced >= *flush_every {
                    file.flush()?;
                    file.get_ref().sync_data()?;
                    *unsynced = 0;
                }
                Ok(n)
            }
            Sink::Direct(direct) => direct.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Buffered { file, .. } => file.flush(),
            Sink::Direct(direct) => direct.flush(),
        }
    }
}

/// Alignment of `O_DIRECT` writes: offsets, lengths and memory (the largest logical block
/// size Linux file systems use).
const DIRECT_ALIGN: usize = 4096;
/// Bytes per `O_DIRECT` write: large enough to cost few syscalls, small enough that a log
/// fsync queued behind one on the device waits little (1 MiB blocks doubled the log fsync's
/// p99 beside a 100 MB/s writer, 256 KiB left it as it was).
const DIRECT_BLOCK: usize = 256 * 1024;

/// A new file written around the page cache (`O_DIRECT`) in aligned blocks from an aligned
/// buffer, the last block padded and the file then cut to the bytes written.
struct DirectFile {
    file: File,
    /// The buffer, with room to start an aligned block of `DIRECT_BLOCK` bytes at `start`.
    buffer: Vec<u8>,
    start: usize,
    /// Bytes of the current block filled.
    filled: usize,
    /// Where the current block goes in the file.
    offset: u64,
    /// False once the file system refused a direct write: the rest goes through the page
    /// cache, synced block by block.
    direct: bool,
}

impl DirectFile {
    /// Creates (or truncates) `path` for writing around the page cache; `None` when its file
    /// system does not offer that.
    fn create(path: &Path) -> std::io::Result<Option<DirectFile>> {
        use std::os::unix::fs::OpenOptionsExt;
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(path);
        let file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => return Ok(None),
            Err(e) => return Err(e),
        };
        let buffer = vec![0u8; DIRECT_BLOCK + DIRECT_ALIGN];
        // Within the slack of DIRECT_ALIGN bytes (align_offset may also say it cannot align).
        let start = buffer.as_ptr().align_offset(DIRECT_ALIGN);
        if start >= DIRECT_ALIGN {
            return Ok(None);
        }
        Ok(Some(DirectFile {
            file,
            buffer,
            start,
            filled: 0,
            offset: 0,
            direct: true,
        }))
    }

    /// Writes the first `len` bytes of the block (a multiple of the alignment) at `offset`.
    fn write_block(&mut self, len: usize) -> std::io::Result<()> {
        let block = self.start..self.start + len;
        if self.direct {
            match self
                .file
                .write_all_at(&self.buffer[block.clone()], self.offset)
            {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                    tracing::warn!(error = %e, "the file system refused a direct write; writing the snapshot through the page cache");
                    self.cached()?;
                }
                Err(e) => return Err(e),
            }
        }
        self.file.write_all_at(&self.buffer[block], self.offset)?;
        self.file.sync_data()
    }

    /// Turns `O_DIRECT` off for the rest of the file's writes.
    fn cached(&mut self) -> std::io::Result<()> {
        let flags = rustix::fs::fcntl_getfl(&self.file)?;
        rustix::fs::fcntl_setfl(&self.file, flags - rustix::fs::OFlags::DIRECT)?;
        self.direct = false;
        Ok(())
    }

    /// Writes what is left (padded to the alignment with zeros, then cut off), and returns the
    /// file with `O_DIRECT` off, for the small writes that patch it afterwards.
    fn finish(mut self) -> std::io::Result<File> {
        let end = self.offset + self.filled as u64;
        if self.filled > 0 {
            let padded = self.filled.next_multiple_of(DIRECT_ALIGN);
            let from = self.start + self.filled;
            self.buffer[from..self.start + padded].fill(0);
            self.write_block(padded)?;
            self.file.set_len(end)?;
        }
        if self.direct {
            self.cached()?;
        }
        Ok(self.file)
    }
}

impl Write for DirectFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(DIRECT_BLOCK - self.filled);
        let at = self.start + self.filled;
        self.buffer[at..at + n].copy_from_slice(&buf[..n]);
        self.filled += n;
        if self.filled == DIRECT_BLOCK {
            self.write_block(DIRECT_BLOCK)?;
            self.offset += DIRECT_BLOCK as u64;
            self.filled = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Only whole blocks can be written around the cache; the rest waits for `finish`.
        Ok(())
    }
}

/// Where the data of a checksummed file lies: an open file (which stays readable when a newer
/// snapshot replaces its name) and the data's offset and length in it.
#[derive(Debug, Clone)]
pub struct Region {
    /// The open file.
    pub file: Arc<File>,
    /// Where the data starts.
    pub offset: u64,
    /// How long the data is.
    pub len: u64,
}

impl Region {
    /// Reads the data from the start, buffered, without moving any shared file position.
    pub fn reader(&self) -> impl Read + Send + 'static {
        BufReader::with_capacity(
            1 << 20,
            RegionReader {
                file: self.file.clone(),
                pos: self.offset,
                end: self.offset + self.len,
            },
        )
    }

    /// Feeds the data, read in 1 MiB chunks, into `crc` and returns the sum.
    pub fn crc_after(&self, mut crc: crc32fast::Hasher) -> std::io::Result<u32> {
        let mut reader = self.reader();
        let mut buf = vec![0; 1 << 20];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                return Ok(crc.finalize());
            }
            crc.update(&buf[..n]);
        }
    }

    /// The u32 (LE) stored right after the data: its checksum, in both places one is kept.
    pub fn u32_after(&self) -> Result<u32, String> {
        let mut stored = [0u8; 4];
        self.file
            .read_exact_at(&mut stored, self.offset + self.len)
            .map_err(|e| e.to_string())?;
        Ok(u32::from_le_bytes(stored))
    }

    /// Reads at most `max` bytes of the data from `at` (0 = its start); empty past the end.
    pub fn read_chunk(&self, at: u64, max: usize) -> std::io::Result<Vec<u8>> {
        let n = self.len.saturating_sub(at).min(max as u64) as usize;
        let mut buf = vec![0; n];
        self.file.read_exact_at(&mut buf, self.offset + at)?;
        Ok(buf)
    }
}

struct RegionReader {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for RegionReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.end.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        let read = self.file.read_at(&mut buf[..n], self.pos)?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += read as u64;
        Ok(read)
    }
}

/// Opens `dir/name`, if it exists, and returns its metadata and where its data lies, reading
/// the data only when `verify` asks for the checksum to be checked (streamed, in chunks).
/// A damaged file is an error naming what is wrong, never a panic.
pub fn open_region(
    dir: &Path,
    name: &str,
    verify: bool,
) -> Result<Option<(Vec<u8>, Region)>, String> {
    let path = dir.join(name);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("open {}: {e}", path.display())),
    };
    read_region(file, verify)
        .map(Some)
        .map_err(|e| format!("{} is damaged: {e}", path.display()))
}

fn read_region(file: File, verify: bool) -> Result<(Vec<u8>, Region), String> {
    let total = file.metadata().map_err(|e| e.to_string())?.len();
    let mut header = BufReader::new(&file);
    let mut magic = [0u8; MAGIC.len()];
    header
        .read_exact(&mut magic)
        .map_err(|_| "truncated".to_string())?;
    if magic != MAGIC {
        return Err("bad magic".into());
    }
    let mut word = [0u8; 4];
    header
        .read_exact(&mut word)
        .map_err(|_| "truncated".to_string())?;
    let meta_len = u64::from(u32::from_le_bytes(word));
    let data_at = MAGIC.len() as u64 + 4 + meta_len + 8;
    if data_at + 4 > total {
        return Err("truncated".into());
    }
    let mut meta = vec![0; meta_len as usize];
    header
        .read_exact(&mut meta)
        .map_err(|_| "truncated".to_string())?;
    let mut long = [0u8; 8];
    header
        .read_exact(&mut long)
        .map_err(|_| "truncated".to_string())?;
    let len = u64::from_le_bytes(long);
    let envelope = match data_at.checked_add(len).and_then(|end| end.checked_add(4)) {
        Some(end) if end == total => None,
        Some(end) if end > total => return Err("truncated".into()),
        Some(end) if is_etcd_envelope(end, total) => Some(end),
        _ => return Err("trailing bytes".into()),
    };
    drop(header);
    let region = Region {
        file: Arc::new(file),
        offset: data_at,
        len,
    };
    if verify {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&meta);
        if region.crc_after(crc).map_err(|e| e.to_string())? != region.u32_after()? {
            return Err("checksum mismatch".into());
        }
        if let Some(end) = envelope {
            check_etcd_envelope(&region.file, end, total)?;
        }
    }
    Ok((meta, region))
}

/// The length of an etcd snapshot stream holding `content` bytes: the content, zeros up to a
/// multiple of 512, and the SHA-256 of both (what `etcdctl snapshot save` expects to get).
fn etcd_envelope_len(content: u64) -> u64 {
    content.div_ceil(512) * 512 + 32
}

/// True when a file of `total` bytes whose own content ends at `end` is that content in an
/// etcd snapshot envelope (as `etcdctl snapshot save` keeps what the etcd API sent).
fn is_etcd_envelope(end: u64, total: u64) -> bool {
    etcd_envelope_len(end) == total
}

/// Checks an envelope's padding (zeros) and SHA-256.
fn check_etcd_envelope(file: &File, end: u64, total: u64) -> Result<(), String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    reader.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut left = total - 32;
    let mut buf = vec![0; 1 << 20];
    while left > 0 {
        let n = (left as usize).min(buf.len());
        reader
            .read_exact(&mut buf[..n])
            .map_err(|_| "truncated".to_string())?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    let mut padding = vec![0; (total - 32 - end) as usize];
    file.read_exact_at(&mut padding, end)
        .map_err(|e| e.to_string())?;
    if padding.iter().any(|b| *b != 0) {
        return Err("trailing bytes".into());
    }
    let mut stored = [0u8; 32];
    file.read_exact_at(&mut stored, total - 32)
        .map_err(|e| e.to_string())?;
    if hasher.finalize().as_slice() != stored {
        return Err("checksum mismatch (SHA-256 of the etcd snapshot stream)".into());
    }
    Ok(())
}

/// A snapshot's metadata bytes and data bytes.
pub type SnapshotParts = (Vec<u8>, Vec<u8>);

/// Reads `dir/name`, if it exists. A damaged file is an error, never a panic.
pub fn load_named(dir: &Path, name: &str) -> Result<Option<SnapshotParts>, String> {
    let path = dir.join(name);
    let mut bytes = Vec::new();
    match File::open(&path) {
        Ok(mut file) => file
            .read_to_end(&mut bytes)
            .map_err(|e| format!("read {}: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("open {}: {e}", path.display())),
    };
    parse(&bytes)
        .map(Some)
        .map_err(|e| format!("{} is damaged: {e}", path.display()))
}

/// Parses the bytes of a checksummed file (a snapshot or the vote marker) into its metadata
/// and data, checking magic, lengths and CRC. Damage is an error naming what is wrong, never
/// a panic. [`load_named`] is this plus reading the file; this is public so that fuzz targets
/// and tests can feed the parser arbitrary bytes without a file.
pub fn parse_checked(bytes: &[u8]) -> Result<SnapshotParts, String> {
    parse(bytes).map_err(str::to_string)
}

fn parse(bytes: &[u8]) -> Result<SnapshotParts, &'static str> {
    let rest = bytes.strip_prefix(MAGIC).ok_or("bad magic")?;
    let (meta_len, rest) = split_u32(rest)?;
    let (meta, rest) = split_at(rest, meta_len as usize)?;
    let (data_len, rest) = split_u64(rest)?;
    let data_len = usize::try_from(data_len).map_err(|_| "data length overflows")?;
    let (data, rest) = split_at(rest, data_len)?;
    let (crc, rest) = split_u32(rest)?;
    if !rest.is_empty() {
        return Err("trailing bytes");
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(meta);
    hasher.update(data);
    if hasher.finalize() != crc {
        return Err("checksum mismatch");
    }
    Ok((meta.to_vec(), data.to_vec()))
}

fn split_at(bytes: &[u8], n: usize) -> Result<(&[u8], &[u8]), &'static str> {
    if bytes.len() < n {
        return Err("truncated");
    }
    Ok(bytes.split_at(n))
}

fn split_u32(bytes: &[u8]) -> Result<(u32, &[u8]), &'static str> {
    let (head, rest) = split_at(bytes, 4)?;
    Ok((
        u32::from_le_bytes(head.try_into().map_err(|_| "truncated")?),
        rest,
    ))
}

fn split_u64(bytes: &[u8]) -> Result<(u64, &[u8]), &'static str> {
    let (head, rest) = split_at(bytes, 8)?;
    Ok((
        u64::from_le_bytes(head.try_into().map_err(|_| "truncated")?),
        rest,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_named(dir.path(), FILE).unwrap(), None);
        save_named(dir.path(), FILE, b"meta", b"data bytes").unwrap();
        assert_eq!(
            load_named(dir.path(), FILE).unwrap(),
            Some((b"meta".to_vec(), b"data bytes".to_vec()))
        );
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 6;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert!(load_named(dir.path(), FILE)
            .unwrap_err()
            .contains("checksum"));
        std::fs::write(&path, &bytes[..10]).unwrap();
        assert!(load_named(dir.path(), FILE).is_err());
    }

    /// Bytes 0, 1, 2, ... (mod 251) of length `n`.
    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn files_written_around_the_page_cache_hold_every_byte_at_every_length() {
        let dir = tempfile::tempdir().unwrap();
        let head = head(b"meta").unwrap().len();
        // Lengths whose file (head, data, checksum) ends just before, at and after the
        // alignment and a block, and across several blocks.
        let mut lengths = vec![0, 1, 3 * DIRECT_BLOCK + 17];
        for edge in [DIRECT_ALIGN, DIRECT_BLOCK, 2 * DIRECT_BLOCK] {
            let data_len = edge - head - 4;
            lengths.extend([data_len - 1, data_len, data_len + 1]);
        }
        for len in lengths {
            let data = pattern(len);
            let written = save_streaming(dir.path(), FILE, b"meta", Pace::BesideTraffic, |out| {
                for chunk in data.chunks(100_003) {
                    out.write_all(chunk)?;
                }
                Ok(())
            })
            .unwrap();
            assert_eq!(written, len as u64);
            let file_len = std::fs::metadata(dir.path().join(FILE)).unwrap().len();
            assert_eq!(file_len, (head + len + 4) as u64, "length {len}");
            assert_eq!(
                load_named(dir.path(), FILE).unwrap(),
                Some((b"meta".to_vec(), data)),
                "length {len}"
            );
        }
    }

    #[test]
    fn a_refused_direct_write_goes_on_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refused");
        let Some(mut direct) = DirectFile::create(&path).unwrap() else {
            return; // This file system offers no O_DIRECT: the buffered sink is used anyway.
        };
        let data = pattern(2 * DIRECT_BLOCK + 5);
        direct.write_all(&data[..DIRECT_BLOCK + 3]).unwrap();
        // What a refusal does (the file system said EINVAL): O_DIRECT off, then on as before.
        direct.cached().unwrap();
        direct.write_all(&data[DIRECT_BLOCK + 3..]).unwrap();
        let file = direct.finish().unwrap();
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn streams_in_and_out_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(open_region(dir.path(), FILE, true).unwrap().is_none());
        // Across several flushes of the smaller pace.
        let pace = Pace::BesideTraffic;
        let data: Vec<u8> = (0..3 * pace.flush_every() + 17)
            .map(|i| (i % 251) as u8)
            .collect();
        let written = save_streaming(dir.path(), FILE, b"meta", pace, |out| {
            for chunk in data.chunks(100_003) {
                out.write_all(chunk)?;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(written, data.len() as u64);
        // The streamed file is the same file `save` writes, and `load` reads it.
        assert_eq!(
            load_named(dir.path(), FILE).unwrap(),
            Some((b"meta".to_vec(), data.clone()))
        );
        let (meta, region) = open_region(dir.path(), FILE, true).unwrap().unwrap();
        assert_eq!(meta, b"meta");
        let mut back = Vec::new();
        region.reader().read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(region.read_chunk(5, 3).unwrap(), data[5..8]);
        assert!(region.read_chunk(data.len() as u64, 10).unwrap().is_empty());

        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        // Unverified, the header still opens; verified, the damage shows.
        assert!(open_region(dir.path(), FILE, false).unwrap().is_some());
        let error = open_region(dir.path(), FILE, true).unwrap_err();
        assert!(error.contains("checksum"), "{error}");
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let error = open_region(dir.path(), FILE, false).unwrap_err();
        assert!(error.contains("truncated"), "{error}");
        bytes.push(0);
        std::fs::write(&path, &bytes).unwrap();
        let error = open_region(dir.path(), FILE, false).unwrap_err();
        assert!(error.contains("trailing"), "{error}");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..200 {
            let mut bytes = MAGIC.to_vec();
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(seed as u8);
            }
            let _ = parse(&bytes);
            let _ = parse(&bytes[MAGIC.len()..]);
        }
    }
}
