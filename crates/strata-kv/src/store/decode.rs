//! Reads a snapshot body (postcard of [`KvStore`]) from a stream at the speed of the disk.
//!
//! postcard's own reader over `io::Read` takes every byte run one byte at a time through the
//! serde sequence visitor (about 30 MB/s: nine seconds for a million keys), because its
//! scratch space cannot be reused between runs. This reads the same bytes, the layout that
//! `tests/snapshot_format.rs` pins, through a buffer, and byte runs with one copy. The
//! layout, all integers as postcard varints (signed ones zigzagged):
//!
//! ```text
//! store   = revision:i64 compact_revision:i64 keys:map(key history) leases:map(i64 lease)
//! history = seq(version)
//! version = main:i64 sub:u32 create_revision:i64 version:i64 value:bytes lease:i64 tombstone:bool
//! lease   = ttl:i64 keys:seq(key)
//! key     = bytes = len:varint raw
//! ```
//!
//! Nothing read is trusted: a length never reserves more than what has arrived (a hostile
//! length fails at the end of the input, it does not allocate), and every failure is an error.

use super::{Derived, History, Key, KvStore, Lease, Version};
use std::io::{BufRead, BufReader, Read};

/// Reserve at most this much ahead of the bytes that have arrived.
const MAX_RESERVE: usize = 1 << 20;

pub(super) fn read(input: &mut dyn Read) -> Result<KvStore, String> {
    let mut r = Reader(BufReader::with_capacity(256 * 1024, input));
    let revision = r.i64()?;
    let compact_revision = r.i64()?;
    let mut keys = imbl::OrdMap::new();
    for _ in 0..r.len()? {
        let key = r.key()?;
        let count = r.len()?;
        let mut versions = Vec::with_capacity(count.min(MAX_RESERVE / size_of::<Version>()));
        for _ in 0..count {
            versions.push(r.version()?);
        }
        keys.insert(key, History::from_vec(versions));
    }
    let mut leases = imbl::OrdMap::new();
    for _ in 0..r.len()? {
        let id = r.i64()?;
        let ttl = r.i64()?;
        let mut attached = imbl::OrdSet::new();
        for _ in 0..r.len()? {
            attached.insert(r.key()?);
        }
        leases.insert(
            id,
            Lease {
                ttl,
                keys: attached,
            },
        );
    }
    Ok(KvStore {
        derived: Derived::of(&keys),
        revision,
        compact_revision,
        keys,
        leases,
    })
}

struct Reader<R>(BufReader<R>);

impl<R: Read> Reader<R> {
    fn byte(&mut self) -> Result<u8, String> {
        let buf = self.0.fill_buf().map_err(|e| e.to_string())?;
        let Some(&b) = buf.first() else {
            return Err("snapshot ends early".into());
        };
        self.0.consume(1);
        Ok(b)
    }

    /// An unsigned LEB128 varint of at most `bits` bits, as postcard writes them.
    fn varint(&mut self, bits: u32) -> Result<u64, String> {
        let mut value = 0u64;
        let mut shift = 0;
        loop {
            let b = self.byte()?;
            let part = u64::from(b & 0x7f);
            if shift >= bits || (shift > 0 && part >> (bits - shift).min(63) != 0) {
                return Err("snapshot holds an integer out of range".into());
            }
            value |= part << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    fn i64(&mut self) -> Result<i64, String> {
        let n = self.varint(64)?;
        Ok((n >> 1) as i64 ^ -((n & 1) as i64))
    }

    fn u32(&mut self) -> Result<u32, String> {
        u32::try_from(self.varint(32)?).map_err(|_| "snapshot holds an integer out of range".into())
    }

    fn len(&mut self) -> Result<usize, String> {
        usize::try_from(self.varint(64)?).map_err(|_| "snapshot holds a length out of range".into())
    }

    fn bool(&mut self) -> Result<bool, String> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format!("snapshot holds {other} where a bool belongs")),
        }
    }

    fn bytes(&mut self) -> Result<Vec<u8>, String> {
        let len = self.len()?;
        let mut bytes = Vec::with_capacity(len.min(MAX_RESERVE));
        (&mut self.0)
            .take(len as u64)
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        if bytes.len() != len {
            return Err("snapshot ends early".into());
        }
        Ok(bytes)
    }

    fn key(&mut self) -> Result<Key, String> {
        Ok(Key::new(&self.bytes()?))
    }

    fn version(&mut self) -> Result<Version, String> {
        Ok(Version {
            main: self.i64()?,
            sub: self.u32()?,
            create_revision: self.i64()?,
            version: self.i64()?,
            value: self.bytes()?.into_boxed_slice(),
            lease: self.i64()?,
            tombstone: self.bool()?,
        })
    }
}
