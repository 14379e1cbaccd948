//! Checksummed files replaced atomically: the snapshot (`snapshot.bin`) and the vote marker
//! (`vote.bin`, see `LogStore`).
//!
//! Layout: magic `STRATA-SNAPSHOT-1\n`, u32 LE length + postcard metadata, u64 LE length +
//! data, u32 LE CRC-32 of metadata and data. Written to a temp file, fsynced, renamed over the
//! old file, and the folder fsynced, so a crash leaves either the old or the new snapshot.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

const MAGIC: &[u8] = b"STRATA-SNAPSHOT-1\n";
const FILE: &str = "snapshot.bin";

/// Writes a snapshot durably, replacing the previous one.
pub fn save(dir: &Path, meta: &[u8], data: &[u8]) -> std::io::Result<()> {
    save_named(dir, FILE, meta, data)
}

/// Reads the snapshot, if there is one. A damaged file is an error, never a panic.
pub fn load(dir: &Path) -> Result<Option<SnapshotParts>, String> {
    load_named(dir, FILE)
}

/// Bytes written between two flushes of a snapshot file to disk. Flushing as it goes keeps
/// the dirty data small, so the final sync is short and the Raft log's own fsyncs on the same
/// disk are never queued behind a whole snapshot's worth of writes.
const FLUSH_EVERY: usize = 4 * 1024 * 1024;

/// Writes `dir/name` durably and atomically.
pub fn save_named(dir: &Path, name: &str, meta: &[u8], data: &[u8]) -> std::io::Result<()> {
    let meta_len = u32::try_from(meta.len()).map_err(std::io::Error::other)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(meta);
    crc.update(data);
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut file = std::io::BufWriter::new(File::create(&tmp)?);
        file.write_all(MAGIC)?;
        file.write_all(&meta_len.to_le_bytes())?;
        file.write_all(meta)?;
        file.write_all(&(data.len() as u64).to_le_bytes())?;
        for chunk in data.chunks(FLUSH_EVERY) {
            file.write_all(chunk)?;
            file.flush()?;
            file.get_ref().sync_data()?;
        }
        file.write_all(&crc.finalize().to_le_bytes())?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
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
        assert_eq!(load(dir.path()).unwrap(), None);
        save(dir.path(), b"meta", b"data bytes").unwrap();
        assert_eq!(
            load(dir.path()).unwrap(),
            Some((b"meta".to_vec(), b"data bytes".to_vec()))
        );
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 6;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert!(load(dir.path()).unwrap_err().contains("checksum"));
        std::fs::write(&path, &bytes[..10]).unwrap();
        assert!(load(dir.path()).is_err());
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
