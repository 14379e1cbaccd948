//! The time-series store: an in-memory head of recent samples, a write-ahead log under it,
//! and immutable blocks on disk for everything older.
//!
//! - Appends go to the WAL first (one `write` per batch, so a kill -9 after the call returns
//!   loses nothing; an fsync every second and at every segment's end bounds what a power
//!   loss can take), then to the head: per series, closed chunks and one open chunk
//!   ([`crate::chunk`], 120 samples each, never spanning a block boundary).
//! - Time is cut in aligned block ranges (default 2 h). When the head holds samples half a
//!   range past the end of its oldest range, that range's chunks are written as one block
//!   file (`blocks/MINT-MAXT.blk`), dropped from memory, and WAL segments whose samples all
//!   precede the cut are deleted. Series with no sample left in the head are forgotten, so
//!   memory follows the active series, not every series ever seen.
//! - Each WAL segment starts with the definitions of every live series, so a segment never
//!   needs an earlier one to be read. Replay stops at a torn or corrupt record (the tail of a
//!   crash) and truncates the segment there.
//! - Retention deletes whole blocks: older than `retention`, or the oldest while the store
//!   exceeds `retention_bytes`.
//!
//! Samples at or before a series' last sample are refused (out of order), as are samples
//! older than the last cut (out of bounds); both are counted, never an error for the batch.

use crate::chunk::{self, ChunkWriter};
use crate::model::{Labels, Queryable, Series};
use crate::packed;
use promql_parser::label::{MatchOp, Matcher};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Samples per chunk before a new one starts (as Prometheus).
const CHUNK_SAMPLES: usize = 120;
/// A WAL segment is closed past this size.
const SEGMENT_BYTES: u64 = 128 << 20;
/// Blocks of Gorilla chunks, as the first releases wrote them (still read).
const BLOCK_MAGIC_V1: &[u8; 8] = b"STRBLK1\n";
/// Blocks of one packed chunk per series ([`crate::packed`]) and a symbol table.
const BLOCK_MAGIC: &[u8; 8] = b"STRBLK2\n";
const REC_SERIES: u8 = 1;
const REC_SAMPLES: u8 = 2;

/// How the store is laid out and kept.
#[derive(Debug, Clone)]
pub struct Options {
    /// Width of a block, in ms.
    pub block_ms: i64,
    /// Blocks whose newest sample is older than this are deleted (0: keep forever).
    pub retention_ms: i64,
    /// The oldest blocks are deleted while the store is larger than this (0: no limit).
    pub retention_bytes: u64,
    /// Blocks whose rollup range ended longer ago than this are downsampled to one sample per
    /// [`DOWNSAMPLE_MS`] (0: never).
    pub downsample_after_ms: i64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            block_ms: 2 * 3600 * 1000,
            retention_ms: 15 * 24 * 3600 * 1000,
            retention_bytes: 0,
            downsample_after_ms: 2 * 24 * 3600 * 1000,
        }
    }
}

/// The resolution of downsampled blocks: five minutes, Prometheus's default lookback, so that
/// an instant query anywhere in a downsampled range still finds a sample.
pub const DOWNSAMPLE_MS: i64 = 5 * 60 * 1000;
/// Downsampled blocks cover a day (or a multiple of the block range that holds one).
const ROLLUP_MS: i64 = 24 * 3600 * 1000;

/// What one append did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Samples stored.
    pub stored: usize,
    /// Samples refused: not after the series' last sample.
    pub out_of_order: usize,
    /// Samples refused: older than the last block cut.
    pub out_of_bounds: usize,
    /// Series seen for the first time.
    pub new_series: usize,
}

/// Counts for `/metrics` and `strata monitor` commands.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Series in the head.
    pub head_series: usize,
    /// Samples in the head (closed and open chunks).
    pub head_samples: usize,
    /// Chunk bytes in the head.
    pub head_bytes: usize,
    /// Blocks on disk.
    pub blocks: usize,
    /// Their bytes.
    pub block_bytes: u64,
    /// Their samples.
    pub block_samples: u64,
    /// Blocks downsampled to [`DOWNSAMPLE_MS`].
    pub downsampled_blocks: usize,
    /// WAL bytes on disk.
    pub wal_bytes: u64,
    /// Oldest sample kept, ms (0 when empty).
    pub min_time: i64,
}

/// A chunk and the times of its first and last sample: a closed head chunk, or a packed
/// chunk on its way into a block.
struct Closed {
    mint: i64,
    maxt: i64,
    bytes: Arc<[u8]>,
}

/// One series' samples as packed chunks (several only past [`packed::MAX_SAMPLES`]).
fn pack(samples: &[(i64, f64)]) -> Vec<Closed> {
    samples
        .chunks(packed::MAX_SAMPLES)
        .filter_map(|run| {
            Some(Closed {
                mint: run.first()?.0,
                maxt: run.last()?.0,
                bytes: packed::encode(run).into(),
            })
        })
        .collect()
}

struct MemSeries {
    labels: Labels,
    closed: Vec<Closed>,
    open: ChunkWriter,
    open_mint: i64,
    last_t: i64,
}

impl MemSeries {
    fn new(labels: Labels) -> MemSeries {
        MemSeries {
            labels,
            closed: Vec::new(),
            open: ChunkWriter::new(),
            open_mint: 0,
            last_t: i64::MIN,
        }
    }

    fn close_open(&mut self) {
        if self.open.is_empty() {
            return;
        }
        let open = std::mem::take(&mut self.open);
        self.closed.push(Closed {
            mint: self.open_mint,
            maxt: self.last_t,
            bytes: open.bytes().into(),
        });
    }

    fn samples(&self) -> usize {
        self.closed
            .iter()
            .map(|c| chunk_len(&c.bytes))
            .sum::<usize>()
            + self.open.len()
    }

    /// The samples it holds and the bytes they take (closed chunks as encoded, open samples
    /// at two bytes each), as [`Head`] counts them.
    fn footprint(&self) -> Footprint {
        Footprint {
            samples: self.samples(),
            bytes: self.closed.iter().map(|c| c.bytes.len()).sum::<usize>() + self.open.len() * 2,
        }
    }
}

/// Samples and bytes held in the head, kept as series change so that reading them (every
/// scrape of the node's metrics) does not walk every series.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Footprint {
    samples: usize,
    bytes: usize,
}

impl Footprint {
    /// Replaces `before` (a series' footprint) with `after` in this total.
    fn swap(&mut self, before: Footprint, after: Footprint) {
        self.samples = (self.samples + after.samples).saturating_sub(before.samples);
        self.bytes = (self.bytes + after.bytes).saturating_sub(before.bytes);
    }
}

fn chunk_len(bytes: &[u8]) -> usize {
    match bytes.first_chunk::<2>() {
        Some(b) => usize::from(u16::from_be_bytes(*b)),
        None => 0,
    }
}

#[derive(Default)]
struct Head {
    by_labels: HashMap<Labels, u64>,
    series: HashMap<u64, MemSeries>,
    postings: HashMap<String, HashMap<String, BTreeSet<u64>>>,
    next_id: u64,
    /// Samples before this were cut into blocks.
    cut: i64,
    max_t: i64,
    /// What every series holds, together.
    footprint: Footprint,
}

impl Head {
    fn insert(&mut self, id: u64, labels: Labels) {
        for (k, v) in labels.iter() {
            self.postings
                .entry(k.to_string())
                .or_default()
                .entry(v.to_string())
                .or_default()
                .insert(id);
        }
        self.by_labels.insert(labels.clone(), id);
        if let Some(old) = self.series.insert(id, MemSeries::new(labels)) {
            self.footprint.swap(old.footprint(), Footprint::default());
        }
        self.next_id = self.next_id.max(id + 1);
    }

    fn remove(&mut self, id: u64) {
        let Some(series) = self.series.remove(&id) else {
            return;
        };
        self.footprint
            .swap(series.footprint(), Footprint::default());
        self.by_labels.remove(&series.labels);
        for (k, v) in series.labels.iter() {
            if let Some(values) = self.postings.get_mut(k) {
                if let Some(ids) = values.get_mut(v) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        values.remove(v);
                    }
                }
                if values.is_empty() {
                    self.postings.remove(k);
                }
            }
        }
    }

    /// Adds a sample to series `id`; false when it is out of order.
    fn push(&mut self, id: u64, t: i64, v: f64, block_ms: i64) -> bool {
        let Some(s) = self.series.get_mut(&id) else {
            return false;
        };
        if t <= s.last_t {
            return false;
        }
        if !s.open.is_empty()
            && (s.open.len() >= CHUNK_SAMPLES
                || t.div_euclid(block_ms) != s.open_mint.div_euclid(block_ms))
        {
            let before = s.footprint();
            s.close_open();
            self.footprint.swap(before, s.footprint());
        }
        if s.open.is_empty() {
            s.open_mint = t;
        }
        if s.open.append(t, v).is_err() {
            return false;
        }
        self.footprint.samples += 1;
        self.footprint.bytes += 2;
        s.last_t = t;
        self.max_t = self.max_t.max(t);
        true
    }

    /// The ids of series that may match (by their equality matchers), or every id.
    fn candidates(&self, matchers: &[Matcher]) -> Vec<u64> {
        let mut best: Option<&BTreeSet<u64>> = None;
        for m in matchers {
            if let MatchOp::Equal = m.op {
                if m.value.is_empty() {
                    continue;
                }
                let Some(ids) = self.postings.get(&m.name).and_then(|v| v.get(&m.value)) else {
                    return Vec::new();
                };
                if best.is_none_or(|b| ids.len() < b.len()) {
                    best = Some(ids);
                }
            }
        }
        match best {
            Some(ids) => ids.iter().copied().collect(),
            None => self.series.keys().copied().collect(),
        }
    }
}

struct Segment {
    path: PathBuf,
    max_t: i64,
}

struct Wal {
    dir: PathBuf,
    current: BufWriter<File>,
    current_number: u64,
    current_bytes: u64,
    current_max_t: i64,
    closed: Vec<Segment>,
    last_sync: Instant,
}

impl Wal {
    fn segment_path(dir: &Path, number: u64) -> PathBuf {
        dir.join(format!("{number:08}"))
    }

    fn record(&mut self, kind: u8, payload: &[u8]) -> io::Result<()> {
        let len = u32::try_from(payload.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "WAL record too large"))?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&[kind]);
        hasher.update(payload);
        self.current.write_all(&len.to_le_bytes())?;
        self.current.write_all(&hasher.finalize().to_le_bytes())?;
        self.current.write_all(&[kind])?;
        self.current.write_all(payload)?;
        self.current_bytes += 9 + payload.len() as u64;
        Ok(())
    }

    /// Pushes the batch to the kernel; an fsync at most every second.
    fn commit(&mut self) -> io::Result<()> {
        self.current.flush()?;
        if self.last_sync.elapsed() >= Duration::from_secs(1) {
            self.current.get_ref().sync_data()?;
            self.last_sync = Instant::now();
        }
        Ok(())
    }

    /// Closes the current segment and starts the next with every live series' definition.
    fn rotate(&mut self, head: &Head) -> io::Result<()> {
        self.current.flush()?;
        self.current.get_ref().sync_all()?;
        self.closed.push(Segment {
            path: Wal::segment_path(&self.dir, self.current_number),
            max_t: self.current_max_t,
        });
        self.current_number += 1;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(Wal::segment_path(&self.dir, self.current_number))?;
        self.current = BufWriter::with_capacity(1 << 16, file);
        self.current_bytes = 0;
        self.current_max_t = i64::MIN;
        let mut payload = Vec::new();
        for (id, s) in &head.series {
            payload.clear();
            encode_series(&mut payload, *id, &s.labels);
            self.record(REC_SERIES, &payload)?;
        }
        self.current.flush()?;
        sync_dir(&self.dir)
    }

    fn bytes(&self) -> u64 {
        let closed: u64 = self
            .closed
            .iter()
            .filter_map(|s| fs::metadata(&s.path).ok())
            .map(|m| m.len())
            .sum();
        closed + self.current_bytes
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn encode_series(out: &mut Vec<u8>, id: u64, labels: &Labels) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(labels.len() as u32).to_le_bytes());
    for (k, v) in labels.iter() {
        put_str(out, k);
        put_str(out, v);
    }
}

/// A cursor over untrusted bytes: every read checks its length.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn varint(&mut self) -> Option<u64> {
        let mut x = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.take(1)?.first()?;
            x |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(x);
            }
        }
        None
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    fn labels(&mut self) -> Option<Labels> {
        let n = self.u32()? as usize;
        let mut pairs = Vec::with_capacity(n.min(256));
        for _ in 0..n {
            pairs.push((self.string()?, self.string()?));
        }
        Some(Labels::new(pairs))
    }
    fn done(&self) -> bool {
        self.at == self.bytes.len()
    }
}

struct BlockChunk {
    mint: i64,
    maxt: i64,
    offset: u64,
    len: u32,
}

/// A block on disk: its index in memory, its chunks read on demand.
///
/// Layout (version 2): the magic, the block's first and last time and its resolution (0 when
/// not downsampled; i64 LE each), a symbol table
/// (a varint count, then each string as a varint length and its bytes, sorted), the series
/// (a varint count; each: a varint count of label pairs as symbol numbers, a varint count of
/// chunks, and per chunk its first time as a varint offset from the block's, its span and its
/// length as varints, and the packed chunk itself), and a CRC-32 of everything before it. Version 1 blocks (labels
/// as strings, Gorilla chunks) are still read.
struct Block {
    mint: i64,
    maxt: i64,
    path: PathBuf,
    file: File,
    bytes: u64,
    samples: u64,
    /// Chunks are packed (version 2), not Gorilla (version 1).
    packed: bool,
    /// 0 for raw samples, else the downsampled resolution in ms.
    resolution_ms: i64,
    series: Vec<(Labels, Vec<BlockChunk>)>,
    postings: HashMap<(String, String), Vec<u32>>,
}

/// A block's series and their chunks, as its index says.
type BlockIndex = Vec<(Labels, Vec<BlockChunk>)>;

impl Block {
    fn open(path: &Path) -> Result<Block, String> {
        let mut file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let bad = |what: &str| format!("{}: not a block ({what})", path.display());
        if bytes.len() < BLOCK_MAGIC.len() + 4 {
            return Err(bad("magic"));
        }
        let packed = match &bytes[..8] {
            m if m == BLOCK_MAGIC => true,
            m if m == BLOCK_MAGIC_V1 => false,
            _ => return Err(bad("magic")),
        };
        let (body, sum) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != sum {
            return Err(bad("checksum"));
        }
        let mut c = Cursor { bytes: body, at: 8 };
        let (mint, maxt, resolution_ms, series, samples) = if packed {
            Self::parse_v2(&mut c)
        } else {
            Self::parse_v1(&mut c)
                .map(|(mint, maxt, series, samples)| (mint, maxt, 0, series, samples))
        }
        .filter(|_| c.done())
        .ok_or_else(|| bad("layout"))?;
        let mut postings: HashMap<(String, String), Vec<u32>> = HashMap::new();
        for (i, (labels, _)) in series.iter().enumerate() {
            for (k, v) in labels.iter() {
                postings
                    .entry((k.to_string(), v.to_string()))
                    .or_default()
                    .push(i as u32);
            }
        }
        Ok(Block {
            mint,
            maxt,
            path: path.to_path_buf(),
            file,
            bytes: bytes.len() as u64,
            samples,
            packed,
            resolution_ms,
            series,
            postings,
        })
    }

    fn parse_v1(c: &mut Cursor<'_>) -> Option<(i64, i64, BlockIndex, u64)> {
        let mint = c.u64()? as i64;
        let maxt = c.u64()? as i64;
        let n = c.u32()? as usize;
        let mut series = Vec::with_capacity(n.min(1 << 20));
        let mut samples = 0u64;
        for _ in 0..n {
            let labels = c.labels()?;
            let chunks = c.u32()? as usize;
            let mut metas = Vec::with_capacity(chunks.min(4096));
            for _ in 0..chunks {
                let cmint = c.u64()? as i64;
                let cmaxt = c.u64()? as i64;
                let len = c.u32()?;
                let offset = c.at as u64;
                samples += chunk_len(c.take(len as usize)?) as u64;
                metas.push(BlockChunk {
                    mint: cmint,
                    maxt: cmaxt,
                    offset,
                    len,
                });
            }
            series.push((labels, metas));
        }
        Some((mint, maxt, series, samples))
    }

    fn parse_v2(c: &mut Cursor<'_>) -> Option<(i64, i64, i64, BlockIndex, u64)> {
        let mint = c.u64()? as i64;
        let maxt = c.u64()? as i64;
        let resolution_ms = c.u64()? as i64;
        let n = c.varint()? as usize;
        let mut symbols = Vec::with_capacity(n.min(1 << 20));
        for _ in 0..n {
            let len = c.varint()? as usize;
            symbols.push(String::from_utf8(c.take(len)?.to_vec()).ok()?);
        }
        let symbol = |c: &mut Cursor<'_>| symbols.get(c.varint()? as usize).cloned();
        let n = c.varint()? as usize;
        let mut series = Vec::with_capacity(n.min(1 << 20));
        let mut samples = 0u64;
        for _ in 0..n {
            let pairs = c.varint()? as usize;
            let mut labels = Vec::with_capacity(pairs.min(256));
            for _ in 0..pairs {
                labels.push((symbol(c)?, symbol(c)?));
            }
            let chunks = c.varint()? as usize;
            let mut metas = Vec::with_capacity(chunks.min(64));
            for _ in 0..chunks {
                let cmint = mint.checked_add(i64::try_from(c.varint()?).ok()?)?;
                let cmaxt = cmint.checked_add(i64::try_from(c.varint()?).ok()?)?;
                let len = u32::try_from(c.varint()?).ok()?;
                let offset = c.at as u64;
                samples += packed::count(c.take(len as usize)?) as u64;
                metas.push(BlockChunk {
                    mint: cmint,
                    maxt: cmaxt,
                    offset,
                    len,
                });
            }
            series.push((Labels::new(labels), metas));
        }
        Some((mint, maxt, resolution_ms, series, samples))
    }

    /// Every series and its samples.
    fn read_all(&self) -> Vec<(Labels, Vec<(i64, f64)>)> {
        self.series
            .iter()
            .map(|(labels, chunks)| {
                let samples = chunks
                    .iter()
                    .filter_map(|c| self.read_chunk(c))
                    .flatten()
                    .collect();
                (labels.clone(), samples)
            })
            .collect()
    }

    /// Writes a block of `series` (sorted by labels, each with its packed chunks) and
    /// returns its path.
    fn write(
        dir: &Path,
        (mint, maxt, resolution_ms): (i64, i64, i64),
        series: &[(Labels, Vec<Closed>)],
    ) -> io::Result<PathBuf> {
        let symbols: BTreeSet<&str> = series
            .iter()
            .flat_map(|(labels, _)| labels.iter().flat_map(|(k, v)| [k, v]))
            .collect();
        let number: HashMap<&str, u64> = symbols
            .iter()
            .enumerate()
            .map(|(i, s)| (*s, i as u64))
            .collect();
        let mut out = Vec::with_capacity(1 << 16);
        out.extend_from_slice(BLOCK_MAGIC);
        out.extend_from_slice(&mint.to_le_bytes());
        out.extend_from_slice(&maxt.to_le_bytes());
        out.extend_from_slice(&resolution_ms.to_le_bytes());
        packed::put_varint(&mut out, symbols.len() as u64);
        for s in &symbols {
            packed::put_varint(&mut out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        packed::put_varint(&mut out, series.len() as u64);
        for (labels, chunks) in series {
            packed::put_varint(&mut out, labels.len() as u64);
            for (k, v) in labels.iter() {
                packed::put_varint(&mut out, number[k]);
                packed::put_varint(&mut out, number[v]);
            }
            packed::put_varint(&mut out, chunks.len() as u64);
            for c in chunks {
                packed::put_varint(&mut out, c.mint.wrapping_sub(mint) as u64);
                packed::put_varint(&mut out, c.maxt.wrapping_sub(c.mint) as u64);
                packed::put_varint(&mut out, c.bytes.len() as u64);
                out.extend_from_slice(&c.bytes);
            }
        }
        let sum = crc32fast::hash(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        let path = dir.join(format!("{mint}-{maxt}.blk"));
        let tmp = dir.join(format!("{mint}-{maxt}.tmp"));
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&out)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        sync_dir(dir)?;
        Ok(path)
    }

    fn read_chunk(&self, c: &BlockChunk) -> Option<Vec<(i64, f64)>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; c.len as usize];
        self.file.read_exact_at(&mut buf, c.offset).ok()?;
        if self.packed {
            packed::decode(&buf).ok()
        } else {
            chunk::decode(&buf).ok()
        }
    }

    fn candidates(&self, matchers: &[Matcher]) -> Vec<u32> {
        let mut best: Option<&Vec<u32>> = None;
        for m in matchers {
            if let MatchOp::Equal = m.op {
                if m.value.is_empty() {
                    continue;
                }
                let Some(ids) = self.postings.get(&(m.name.clone(), m.value.clone())) else {
                    return Vec::new();
                };
                if best.is_none_or(|b| ids.len() < b.len()) {
                    best = Some(ids);
                }
            }
        }
        match best {
            Some(ids) => ids.clone(),
            None => (0..self.series.len() as u32).collect(),
        }
    }
}

/// The store.
pub struct Store {
    dir: PathBuf,
    options: Options,
    head: RwLock<Head>,
    wal: Mutex<Wal>,
    blocks: RwLock<Vec<Arc<Block>>>,
    /// Held while a cut runs, so two never overlap.
    cutting: Mutex<()>,
}

impl Store {
    /// Opens (or creates) the store in `dir`, replaying its WAL.
    pub fn open(dir: &Path, options: Options) -> Result<Store, String> {
        let io = |what: &str, e: io::Error| format!("{what}: {e}");
        let wal_dir = dir.join("wal");
        let block_dir = dir.join("blocks");
        fs::create_dir_all(&wal_dir).map_err(|e| io(&wal_dir.display().to_string(), e))?;
        fs::create_dir_all(&block_dir).map_err(|e| io(&block_dir.display().to_string(), e))?;
        let mut blocks = Vec::new();
        for entry in fs::read_dir(&block_dir).map_err(|e| io("blocks", e))? {
            let path = entry.map_err(|e| io("blocks", e))?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("blk") => match Block::open(&path) {
                    Ok(block) => blocks.push(Arc::new(block)),
                    Err(error) => {
                        tracing::error!(%error, "a block cannot be read; it is left on disk and not served")
                    }
                },
                Some("tmp") => {
                    let _ = fs::remove_file(&path);
                }
                _ => {}
            }
        }
        blocks.sort_by_key(|b| b.mint);
        // A crash between writing a downsampled block and deleting the blocks it replaced
        // leaves both: the downsampled one is complete (it was renamed into place), so the
        // raw blocks inside its range go.
        let rollups: Vec<(i64, i64)> = blocks
            .iter()
            .filter(|b| b.resolution_ms > 0)
            .map(|b| (b.mint, b.maxt))
            .collect();
        blocks.retain(|b| {
            let replaced = b.resolution_ms == 0
                && rollups
                    .iter()
                    .any(|(mint, maxt)| *mint <= b.mint && b.maxt <= *maxt);
            if replaced {
                let _ = fs::remove_file(&b.path);
            }
            !replaced
        });
        let cut = blocks.iter().map(|b| b.maxt + 1).max().unwrap_or(i64::MIN);
        let mut head = Head {
            cut,
            max_t: i64::MIN,
            ..Head::default()
        };
        let mut numbers: Vec<u64> = fs::read_dir(&wal_dir)
            .map_err(|e| io("wal", e))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        numbers.sort_unstable();
        let mut closed = Vec::new();
        let started = Instant::now();
        let mut replayed = 0usize;
        for number in &numbers {
            let path = Wal::segment_path(&wal_dir, *number);
            let max_t = replay_segment(&path, &mut head, options.block_ms, &mut replayed)
                .map_err(|e| io(&path.display().to_string(), e))?;
            closed.push(Segment { path, max_t });
        }
        if !numbers.is_empty() {
            tracing::info!(
                segments = numbers.len(),
                samples = replayed,
                series = head.series.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "monitor WAL replayed"
            );
        }
        let number = numbers.last().map_or(1, |n| n + 1);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(Wal::segment_path(&wal_dir, number))
            .map_err(|e| io("wal", e))?;
        let mut wal = Wal {
            dir: wal_dir,
            current: BufWriter::with_capacity(1 << 16, file),
            current_number: number,
            current_bytes: 0,
            current_max_t: i64::MIN,
            closed,
            last_sync: Instant::now(),
        };
        let mut payload = Vec::new();
        for (id, s) in &head.series {
            payload.clear();
            encode_series(&mut payload, *id, &s.labels);
            wal.record(REC_SERIES, &payload).map_err(|e| io("wal", e))?;
        }
        wal.current.flush().map_err(|e| io("wal", e))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            options,
            head: RwLock::new(head),
            wal: Mutex::new(wal),
            blocks: RwLock::new(blocks),
            cutting: Mutex::new(()),
        })
    }

    /// Appends a batch: to the WAL, then to the head. Returns once the WAL write is in the
    /// kernel (a kill -9 after this loses none of it).
    pub fn append(&self, batch: &[(Labels, i64, f64)]) -> io::Result<Appended> {
        let mut result = Appended::default();
        let mut wal = self.wal.lock().unwrap_or_else(|e| e.into_inner());
        let mut head = self.head.write().unwrap_or_else(|e| e.into_inner());
        let mut series_rec = Vec::new();
        let mut samples_rec = Vec::with_capacity(batch.len() * 24);
        let mut accepted = Vec::with_capacity(batch.len());
        for (labels, t, v) in batch {
            if *t < head.cut {
                result.out_of_bounds += 1;
                continue;
            }
            let id = match head.by_labels.get(labels) {
                Some(id) => *id,
                None => {
                    let id = head.next_id;
                    head.insert(id, labels.clone());
                    encode_series(&mut series_rec, id, labels);
                    wal.record(REC_SERIES, &series_rec)?;
                    series_rec.clear();
                    result.new_series += 1;
                    id
                }
            };
            samples_rec.extend_from_slice(&id.to_le_bytes());
            samples_rec.extend_from_slice(&t.to_le_bytes());
            samples_rec.extend_from_slice(&v.to_bits().to_le_bytes());
            accepted.push((id, *t, *v));
        }
        if !samples_rec.is_empty() {
            wal.record(REC_SAMPLES, &samples_rec)?;
        }
        wal.commit()?;
        for (id, t, v) in accepted {
            if head.push(id, t, v, self.options.block_ms) {
                result.stored += 1;
                wal.current_max_t = wal.current_max_t.max(t);
            } else {
                result.out_of_order += 1;
            }
        }
        let rotate = wal.current_bytes > SEGMENT_BYTES;
        if rotate {
            wal.rotate(&head)?;
        }
        Ok(result)
    }

    /// Cuts every complete block range out of the head and applies retention. Run it
    /// periodically; `now_ms` is the wall clock (for retention).
    pub fn maintain(&self, now_ms: i64) -> io::Result<()> {
        let _cutting = self.cutting.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let (cut, max_t) = {
                let head = self.head.read().unwrap_or_else(|e| e.into_inner());
                (head.cut, head.max_t)
            };
            if max_t == i64::MIN {
                break;
            }
            let block_ms = self.options.block_ms;
            // The oldest range that holds head samples.
            let oldest = self.oldest_head_time().unwrap_or(max_t);
            let start = oldest.max(cut).div_euclid(block_ms) * block_ms;
            let end = start + block_ms;
            if max_t < end + block_ms / 2 {
                break;
            }
            self.cut_block(start, end)?;
        }
        self.downsample(now_ms)?;
        self.apply_retention(now_ms)
    }

    /// Rewrites the blocks of each rollup range (a day, or the multiple of the block range
    /// that holds one) that ended more than `downsample_after` ago as one block that keeps
    /// each series' last sample in every [`DOWNSAMPLE_MS`] window: what a Prometheus
    /// scraping every five minutes would have stored. Instant queries and `*_over_time`,
    /// `rate` and `increase` over windows of ten minutes or more keep working on it; a counter
    /// reset inside a window loses the increase before the reset in that window.
    fn downsample(&self, now_ms: i64) -> io::Result<()> {
        let after = self.options.downsample_after_ms;
        if after <= 0 {
            return Ok(());
        }
        let block_ms = self.options.block_ms.max(1);
        let range = ROLLUP_MS
            .saturating_add(block_ms - 1)
            .saturating_div(block_ms)
            .saturating_mul(block_ms);
        let horizon = now_ms.saturating_sub(after);
        let range_of = |b: &Block| b.mint.div_euclid(range).saturating_mul(range);
        loop {
            let group: Vec<Arc<Block>> = {
                let blocks = self.blocks.read().unwrap_or_else(|e| e.into_inner());
                let due = blocks
                    .iter()
                    .filter(|b| b.resolution_ms == 0)
                    .map(|b| range_of(b))
                    .filter(|start| start.saturating_add(range) <= horizon)
                    .min();
                let Some(start) = due else {
                    break;
                };
                blocks
                    .iter()
                    .filter(|b| range_of(b) == start)
                    .cloned()
                    .collect()
            };
            let started = Instant::now();
            let mut merged: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
            for block in &group {
                for (labels, samples) in block.read_all() {
                    let kept = merged.entry(labels).or_default();
                    for sample in samples {
                        match kept.last_mut() {
                            Some(last)
                                if last.0.div_euclid(DOWNSAMPLE_MS)
                                    == sample.0.div_euclid(DOWNSAMPLE_MS) =>
                            {
                                *last = sample;
                            }
                            _ => kept.push(sample),
                        }
                    }
                }
            }
            let series: Vec<(Labels, Vec<Closed>)> = merged
                .into_iter()
                .filter(|(_, s)| !s.is_empty())
                .map(|(labels, samples)| (labels, pack(&samples)))
                .collect();
            let mint = group.iter().map(|b| b.mint).min().unwrap_or(0);
            let maxt = group.iter().map(|b| b.maxt).max().unwrap_or(0);
            let path = Block::write(
                &self.dir.join("blocks"),
                (mint, maxt, DOWNSAMPLE_MS),
                &series,
            )?;
            let block = Arc::new(Block::open(&path).map_err(io::Error::other)?);
            let kept = block.samples;
            {
                let mut blocks = self.blocks.write().unwrap_or_else(|e| e.into_inner());
                blocks.retain(|b| !group.iter().any(|g| Arc::ptr_eq(g, b)));
                blocks.push(block);
                blocks.sort_by_key(|b| b.mint);
            }
            for old in group.iter().filter(|b| b.path != path) {
                let _ = fs::remove_file(&old.path);
            }
            tracing::info!(
                mint,
                maxt,
                blocks = group.len(),
                series = series.len(),
                samples = group.iter().map(|b| b.samples).sum::<u64>(),
                kept,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "monitor blocks downsampled"
            );
        }
        Ok(())
    }

    fn oldest_head_time(&self) -> Option<i64> {
        let head = self.head.read().unwrap_or_else(|e| e.into_inner());
        head.series
            .values()
            .filter_map(|s| {
                s.closed
                    .first()
                    .map(|c| c.mint)
                    .or((!s.open.is_empty()).then_some(s.open_mint))
            })
            .min()
    }

    /// Writes the head's samples in `[start, end)` as a block and drops them from memory.
    fn cut_block(&self, start: i64, end: i64) -> io::Result<()> {
        let started = Instant::now();
        // Close open chunks that lie wholly before the cut (series that went quiet).
        let mut taken: Vec<(Labels, Vec<Closed>)> = Vec::new();
        {
            let mut head = self.head.write().unwrap_or_else(|e| e.into_inner());
            let mut footprint = head.footprint;
            for s in head.series.values_mut() {
                let before = s.footprint();
                if !s.open.is_empty() && s.open_mint < end {
                    s.close_open();
                }
                let split = s.closed.partition_point(|c| c.maxt < end);
                if split > 0 {
                    let chunks: Vec<Closed> = s.closed.drain(..split).collect();
                    taken.push((s.labels.clone(), chunks));
                }
                footprint.swap(before, s.footprint());
            }
            head.footprint = footprint;
            head.cut = end;
        }
        taken.sort_by(|a, b| a.0.cmp(&b.0));
        // One series at a time, so that only its samples are ever decoded at once.
        let mut samples = 0;
        let taken: Vec<(Labels, Vec<Closed>)> = taken
            .into_iter()
            .filter_map(|(labels, chunks)| {
                let decoded: Vec<(i64, f64)> = chunks
                    .iter()
                    .filter_map(|c| chunk::decode(&c.bytes).ok())
                    .flatten()
                    .collect();
                samples += decoded.len();
                (!decoded.is_empty()).then(|| (labels, pack(&decoded)))
            })
            .collect();
        let block_dir = self.dir.join("blocks");
        if !taken.is_empty() {
            let path = Block::write(&block_dir, (start, end - 1, 0), &taken)?;
            let block = Block::open(&path).map_err(io::Error::other)?;
            let mut blocks = self.blocks.write().unwrap_or_else(|e| e.into_inner());
            blocks.push(Arc::new(block));
            blocks.sort_by_key(|b| b.mint);
        }
        // Forget quiet series and rotate the WAL so that old segments can go.
        let mut wal = self.wal.lock().unwrap_or_else(|e| e.into_inner());
        let mut head = self.head.write().unwrap_or_else(|e| e.into_inner());
        let quiet: Vec<u64> = head
            .series
            .iter()
            .filter(|(_, s)| s.closed.is_empty() && s.open.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in &quiet {
            head.remove(*id);
        }
        wal.rotate(&head)?;
        let (old, keep): (Vec<Segment>, Vec<Segment>) = std::mem::take(&mut wal.closed)
            .into_iter()
            .partition(|s| s.max_t < end);
        wal.closed = keep;
        for segment in old {
            let _ = fs::remove_file(&segment.path);
        }
        tracing::info!(
            start,
            end,
            series = taken.len(),
            samples,
            forgotten = quiet.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "monitor block written"
        );
        Ok(())
    }

    fn apply_retention(&self, now_ms: i64) -> io::Result<()> {
        let mut blocks = self.blocks.write().unwrap_or_else(|e| e.into_inner());
        let before = blocks.len();
        if self.options.retention_ms > 0 {
            let horizon = now_ms - self.options.retention_ms;
            blocks.retain(|b| {
                let keep = b.maxt >= horizon;
                if !keep {
                    let _ = fs::remove_file(&b.path);
                }
                keep
            });
        }
        if self.options.retention_bytes > 0 {
            let wal = self.wal.lock().unwrap_or_else(|e| e.into_inner()).bytes();
            let mut total: u64 = wal + blocks.iter().map(|b| b.bytes).sum::<u64>();
            while total > self.options.retention_bytes && !blocks.is_empty() {
                let oldest = blocks.remove(0);
                total -= oldest.bytes;
                let _ = fs::remove_file(&oldest.path);
            }
        }
        if blocks.len() != before {
            tracing::info!(
                deleted = before - blocks.len(),
                "monitor retention deleted blocks"
            );
        }
        Ok(())
    }

    /// Counts for metrics.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        {
            let head = self.head.read().unwrap_or_else(|e| e.into_inner());
            stats.head_series = head.series.len();
            stats.head_samples = head.footprint.samples;
            stats.head_bytes = head.footprint.bytes;
        }
        let blocks = self.blocks.read().unwrap_or_else(|e| e.into_inner());
        stats.blocks = blocks.len();
        stats.block_bytes = blocks.iter().map(|b| b.bytes).sum();
        stats.block_samples = blocks.iter().map(|b| b.samples).sum();
        stats.downsampled_blocks = blocks.iter().filter(|b| b.resolution_ms > 0).count();
        stats.min_time = blocks.first().map_or(0, |b| b.mint);
        stats.wal_bytes = self.wal.lock().unwrap_or_else(|e| e.into_inner()).bytes();
        stats
    }

    /// Every label name, sorted.
    pub fn label_names(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = {
            let head = self.head.read().unwrap_or_else(|e| e.into_inner());
            head.postings.keys().cloned().collect()
        };
        for b in self.blocks.read().unwrap_or_else(|e| e.into_inner()).iter() {
            names.extend(b.postings.keys().map(|(k, _)| k.clone()));
        }
        names.into_iter().collect()
    }

    /// Forces everything in the head into a block (tests and benchmarks: "after compaction").
    pub fn flush_head(&self) -> io::Result<()> {
        let _cutting = self.cutting.lock().unwrap_or_else(|e| e.into_inner());
        let (oldest, max_t) = match (
            self.oldest_head_time(),
            self.head.read().unwrap_or_else(|e| e.into_inner()).max_t,
        ) {
            (Some(o), m) if m != i64::MIN => (o, m),
            _ => return Ok(()),
        };
        self.cut_block(oldest, max_t + 1)
    }
}

/// Replays one segment into the head; returns its newest sample's time. A torn or corrupt
/// record ends the segment: it is truncated there.
fn replay_segment(
    path: &Path,
    head: &mut Head,
    block_ms: i64,
    replayed: &mut usize,
) -> io::Result<i64> {
    let bytes = fs::read(path)?;
    let mut at = 0usize;
    let mut max_t = i64::MIN;
    let mut local: HashMap<u64, u64> = HashMap::new();
    while let Some(header) = bytes.get(at..at + 9) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let sum = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let Some(body) = len
            .checked_sub(1)
            .and_then(|n| bytes.get(at + 8..at + 9 + n))
        else {
            break;
        };
        if crc32fast::hash(body) != sum {
            break;
        }
        let (kind, payload) = (body[0], &body[1..]);
        let mut c = Cursor {
            bytes: payload,
            at: 0,
        };
        match kind {
            REC_SERIES => {
                let (Some(id), Some(labels)) = (c.u64(), c.labels()) else {
                    break;
                };
                let local_id = match head.by_labels.get(&labels) {
                    Some(existing) => *existing,
                    None => {
                        let new = head.next_id.max(id);
                        head.insert(new, labels);
                        new
                    }
                };
                local.insert(id, local_id);
            }
            REC_SAMPLES => {
                while !c.done() {
                    let (Some(id), Some(t), Some(v)) = (c.u64(), c.u64(), c.u64()) else {
                        break;
                    };
                    let t = t as i64;
                    max_t = max_t.max(t);
                    if t < head.cut {
                        continue;
                    }
                    if let Some(local_id) = local.get(&id) {
                        if head.push(*local_id, t, f64::from_bits(v), block_ms) {
                            *replayed += 1;
                        }
                    }
                }
            }
            _ => break,
        }
        at += 8 + len;
    }
    if at < bytes.len() {
        tracing::warn!(path = %path.display(), valid = at, size = bytes.len(), "monitor WAL segment ends in a torn or corrupt record; truncating it there");
        OpenOptions::new()
            .write(true)
            .open(path)?
            .set_len(at as u64)?;
    }
    Ok(max_t)
}

impl Queryable for Store {
    fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<Series> {
        let mut out: HashMap<Labels, Vec<(i64, f64)>> = HashMap::new();
        let blocks: Vec<Arc<Block>> = self
            .blocks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|b| b.maxt >= mint && b.mint <= maxt)
            .cloned()
            .collect();
        for block in &blocks {
            for i in block.candidates(matchers) {
                let (labels, chunks) = &block.series[i as usize];
                if !labels.matches(matchers) {
                    continue;
                }
                let samples = out.entry(labels.clone()).or_default();
                for c in chunks.iter().filter(|c| c.maxt >= mint && c.mint <= maxt) {
                    if let Some(decoded) = block.read_chunk(c) {
                        samples.extend(
                            decoded
                                .into_iter()
                                .filter(|(t, _)| *t >= mint && *t <= maxt),
                        );
                    }
                }
            }
        }
        let mut pending: Vec<(Labels, Vec<Arc<[u8]>>)> = Vec::new();
        {
            let head = self.head.read().unwrap_or_else(|e| e.into_inner());
            for id in head.candidates(matchers) {
                let Some(s) = head.series.get(&id) else {
                    continue;
                };
                if !s.labels.matches(matchers) {
                    continue;
                }
                let mut chunks: Vec<Arc<[u8]>> = s
                    .closed
                    .iter()
                    .filter(|c| c.maxt >= mint && c.mint <= maxt)
                    .map(|c| c.bytes.clone())
                    .collect();
                if !s.open.is_empty() && s.last_t >= mint && s.open_mint <= maxt {
                    chunks.push(s.open.bytes().into());
                }
                if !chunks.is_empty() {
                    pending.push((s.labels.clone(), chunks));
                }
            }
        }
        for (labels, chunks) in pending {
            let samples = out.entry(labels).or_default();
            for c in chunks {
                if let Ok(decoded) = chunk::decode(&c) {
                    samples.extend(
                        decoded
                            .into_iter()
                            .filter(|(t, _)| *t >= mint && *t <= maxt),
                    );
                }
            }
        }
        out.into_iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(labels, samples)| Series { labels, samples })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::matcher;

    fn l(job: &str, i: usize) -> Labels {
        Labels::from_pairs(&[("__name__", "m"), ("job", job), ("i", &i.to_string())])
    }

    fn all(store: &Store) -> Vec<Series> {
        let mut s = store.select(
            &[matcher("__name__", "=", "m").unwrap()],
            i64::MIN,
            i64::MAX,
        );
        s.sort_by(|a, b| a.labels.cmp(&b.labels));
        s
    }

    /// The head's running totals equal a walk over its series.
    fn assert_footprint_kept(store: &Store) {
        let head = store.head.read().unwrap();
        let mut walked = Footprint::default();
        for s in head.series.values() {
            walked.swap(Footprint::default(), s.footprint());
        }
        assert_eq!(head.footprint, walked);
    }

    #[test]
    fn appends_survive_reopen_blocks_and_retention() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            block_ms: 10_000,
            retention_ms: 0,
            retention_bytes: 0,
            downsample_after_ms: 0,
        };
        let store = Store::open(dir.path(), options.clone()).unwrap();
        let mut expected = Vec::new();
        for step in 0..400i64 {
            let t = step * 100;
            let batch: Vec<_> = (0..3)
                .map(|i| (l("a", i), t, (step * 10 + i as i64) as f64))
                .collect();
            let r = store.append(&batch).unwrap();
            assert_eq!(r.stored, 3);
            expected.push(t);
            if step % 50 == 0 {
                store.maintain(0).unwrap();
                assert_footprint_kept(&store);
            }
        }
        assert_footprint_kept(&store);
        let stats = store.stats();
        assert_eq!(
            stats.head_samples as u64 + stats.block_samples,
            1200,
            "{stats:?}"
        );
        // Out of order and duplicate samples are refused.
        let r = store
            .append(&[(l("a", 0), 100, 1.0), (l("a", 0), 39_900, 1.0)])
            .unwrap();
        assert_eq!(r.out_of_order + r.out_of_bounds, 2);
        assert!(store.stats().blocks >= 2, "{:?}", store.stats());
        let before = all(&store);
        assert_eq!(before.len(), 3);
        for s in &before {
            assert_eq!(s.samples.iter().map(|x| x.0).collect::<Vec<_>>(), expected);
        }
        drop(store);
        let store = Store::open(dir.path(), options.clone()).unwrap();
        assert_eq!(all(&store), before);
        assert_footprint_kept(&store);
        // A partial select.
        let part = store.select(&[matcher("i", "=", "1").unwrap()], 15_000, 15_300);
        assert_eq!(part.len(), 1);
        assert_eq!(
            part[0].samples,
            vec![
                (15_000, 1501.0),
                (15_100, 1511.0),
                (15_200, 1521.0),
                (15_300, 1531.0)
            ]
        );
        // Retention by time removes the oldest blocks only.
        drop(store);
        let store = Store::open(
            dir.path(),
            Options {
                retention_ms: 25_000,
                ..options
            },
        )
        .unwrap();
        store.maintain(40_000).unwrap();
        let after = all(&store);
        assert!(
            after[0].samples[0].0 >= 10_000,
            "{:?}",
            &after[0].samples[..3]
        );
        assert_eq!(after[0].samples.last().unwrap().0, 39_900);
    }

    #[test]
    fn old_days_are_downsampled_to_the_last_sample_of_every_five_minutes() {
        const MINUTE: i64 = 60_000;
        const DAY: i64 = 24 * 60 * MINUTE;
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            block_ms: 60 * MINUTE,
            retention_ms: 0,
            retention_bytes: 0,
            downsample_after_ms: DAY,
        };
        let store = Store::open(dir.path(), options.clone()).unwrap();
        let value = |step: i64, i: usize| (step * 3 + i as i64) as f64 / 4.0;
        for step in 0..3 * 24 * 60 {
            let t = step * MINUTE;
            let batch: Vec<_> = (0..2).map(|i| (l("d", i), t, value(step, i))).collect();
            assert_eq!(store.append(&batch).unwrap().stored, 2);
            if step % 60 == 0 {
                store.maintain(t).unwrap();
            }
        }
        let raw_blocks: Vec<PathBuf> = fs::read_dir(dir.path().join("blocks"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let saved = tempfile::tempdir().unwrap();
        for path in &raw_blocks {
            fs::copy(path, saved.path().join(path.file_name().unwrap())).unwrap();
        }
        store.maintain(3 * DAY).unwrap();
        assert_eq!(store.stats().downsampled_blocks, 2, "{:?}", store.stats());
        let check = |store: &Store| {
            for series in all(store) {
                let i: usize = series.labels.get("i").unwrap().parse().unwrap();
                let (old, recent): (Vec<_>, Vec<_>) =
                    series.samples.iter().partition(|(t, _)| *t < 2 * DAY);
                // The first two days: the last minute of every five, with its value.
                assert_eq!(old.len(), 2 * 24 * 12);
                for (t, v) in old {
                    assert_eq!(t % (5 * MINUTE), 4 * MINUTE);
                    assert_eq!(v, value(t / MINUTE, i));
                }
                // The third day is still raw (the head keeps its last part).
                assert_eq!(recent.len(), 24 * 60);
            }
        };
        check(&store);
        drop(store);
        // A crash after the downsampled blocks were written but before the raw ones went:
        // the raw blocks come back and are dropped on open.
        for path in &raw_blocks {
            fs::copy(saved.path().join(path.file_name().unwrap()), path).unwrap();
        }
        let store = Store::open(dir.path(), options).unwrap();
        check(&store);
        assert_eq!(store.stats().downsampled_blocks, 2);
        assert!(
            store.stats().blocks < raw_blocks.len(),
            "{:?}",
            store.stats()
        );
    }

    #[test]
    fn a_torn_wal_tail_loses_only_the_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Options::default()).unwrap();
        for t in 0..10 {
            store.append(&[(l("b", 0), t, t as f64)]).unwrap();
        }
        drop(store);
        let wal = dir.path().join("wal");
        let segment = fs::read_dir(&wal)
            .unwrap()
            .map(|e| e.unwrap().path())
            .max()
            .unwrap();
        let mut f = OpenOptions::new().append(true).open(&segment).unwrap();
        f.write_all(&[40, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        let store = Store::open(dir.path(), Options::default()).unwrap();
        let s = all(&store);
        assert_eq!(s[0].samples.len(), 10);
        store.append(&[(l("b", 0), 10, 10.0)]).unwrap();
        drop(store);
        let store = Store::open(dir.path(), Options::default()).unwrap();
        assert_eq!(all(&store)[0].samples.len(), 11);
    }

    #[test]
    fn quiet_series_are_forgotten_after_a_cut_but_stay_queryable() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            block_ms: 1000,
            retention_ms: 0,
            retention_bytes: 0,
            downsample_after_ms: 0,
        };
        let store = Store::open(dir.path(), options).unwrap();
        store.append(&[(l("q", 0), 10, 1.0)]).unwrap();
        for t in 0..40 {
            store.append(&[(l("q", 1), t * 100, 1.0)]).unwrap();
        }
        store.maintain(0).unwrap();
        assert_eq!(store.stats().head_series, 1);
        assert_eq!(all(&store).len(), 2);
    }
}
