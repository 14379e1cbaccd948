//! Raft-log storage benchmark: redb vs fjall.
//!
//! Models the write path of a Raft log: 256-byte entries keyed by the
//! big-endian bytes of their u64 log index, appended in batches, with every
//! batch made durable (fsync) before the next one starts. Also times a
//! sequential read of a 1,000-entry range and a purge of a log prefix in a
//! single durable commit.
//!
//! Engines are interleaved round by round so that drift on the machine
//! (page cache, other load, disk state) hits both engines alike; the
//! reported figure for every metric is the median over the rounds.

use std::error::Error;
use std::fs::{self, OpenOptions};
use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use redb::ReadableDatabase;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Size of every log entry's value in bytes.
const VALUE_LEN: usize = 256;
/// Entries per commit while preloading the log for the scan/purge phase.
const PRELOAD_BATCH: u64 = 1_000;
/// Untimed commits at the start of every append run (file creation, first
/// page allocations and so on are not what we want to measure).
const WARMUP_COMMITS: usize = 5;

#[derive(Parser, Debug)]
#[command(about = "Raft-log append benchmark: redb vs fjall, one fsync per commit")]
struct Args {
    /// Interleaved rounds (each round runs every engine once per workload).
    #[arg(long, default_value_t = 3)]
    rounds: usize,

    /// Entries per commit, one append workload per value.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 16, 128])]
    batches: Vec<usize>,

    /// Commits per run, paired position by position with --batches.
    #[arg(long, value_delimiter = ',', default_values_t = vec![2_000, 1_000, 500])]
    commits: Vec<usize>,

    /// Wall-clock cap of a single append run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    max_secs: f64,

    /// Entries written before the scan/purge measurements.
    #[arg(long, default_value_t = 20_000)]
    preload: u64,

    /// Entries read by one sequential range scan.
    #[arg(long, default_value_t = 1_000)]
    scan_len: u64,

    /// Range scans per round and engine (spread over the preloaded log).
    #[arg(long, default_value_t = 20)]
    scans: usize,

    /// Length of the log prefix removed by the purge commit.
    #[arg(long, default_value_t = 10_000)]
    purge: u64,

    /// Parent directory for the data; must be on the disk under test (not
    /// tmpfs). Defaults to <crate>/target/tmp-data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// A Raft log as the benchmark sees it. Every mutating call is one durable
/// commit.
trait LogStore {
    /// Appends entries `first..first + count`, durable on return.
    fn append(&mut self, first: u64, count: u64, payload: &Payload) -> Res<()>;
    /// Reads entries `first..first + count` in order; returns
    /// (entries seen, value bytes seen).
    fn scan(&self, first: u64, count: u64) -> Res<(u64, u64)>;
    /// Removes every entry with index `<= last`, durable on return.
    fn purge_upto(&mut self, last: u64) -> Res<()>;
}

/// Produces the 256-byte value of an entry: a fixed pseudo-random body (so
/// that compression gains nothing) with the index stamped into the front.
struct Payload {
    base: [u8; VALUE_LEN],
}

impl Payload {
    fn new() -> Self {
        let mut base = [0u8; VALUE_LEN];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for chunk in base.chunks_mut(8) {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        Self { base }
    }

    fn value(&self, index: u64) -> [u8; VALUE_LEN] {
        let mut v = self.base;
        v[..8].copy_from_slice(&index.to_be_bytes());
        v
    }
}

// ---------------------------------------------------------------- redb ---

const REDB_LOG: redb::TableDefinition<&[u8; 8], &[u8]> = redb::TableDefinition::new("raft_log");

struct RedbStore {
    db: redb::Database,
}

impl RedbStore {
    fn open(dir: &Path) -> Res<Self> {
        let db = redb::Database::create(dir.join("log.redb"))?;
        // Create the table up front so that the first timed commit does not
        // pay for it.
        let txn = db.begin_write()?;
        txn.open_table(REDB_LOG)?;
        txn.commit()?;
        Ok(Self { db })
    }
}

impl LogStore for RedbStore {
    fn append(&mut self, first: u64, count: u64, payload: &Payload) -> Res<()> {
        // Default durability is Durability::Immediate: commit() returns
        // after the data is synced to disk.
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(REDB_LOG)?;
            for index in first..first + count {
                table.insert(&index.to_be_bytes(), &payload.value(index)[..])?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn scan(&self, first: u64, count: u64) -> Res<(u64, u64)> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REDB_LOG)?;
        let start = first.to_be_bytes();
        let end = (first + count).to_be_bytes();
        let (mut seen, mut bytes) = (0u64, 0u64);
        for item in table.range::<&[u8; 8]>(&start..&end)? {
            let (key, value) = item?;
            black_box(key.value());
            bytes += black_box(value.value()).len() as u64;
            seen += 1;
        }
        Ok((seen, bytes))
    }

    fn purge_upto(&mut self, last: u64) -> Res<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(REDB_LOG)?;
            let end = last.to_be_bytes();
            table.retain_in::<&[u8; 8], _>(..=&end, |_, _| false)?;
        }
        txn.commit()?;
        Ok(())
    }
}

// --------------------------------------------------------------- fjall ---

struct FjallStore {
    db: fjall::Database,
    log: fjall::Keyspace,
}

impl FjallStore {
    fn open(dir: &Path) -> Res<Self> {
        let db = fjall::Database::builder(dir).open()?;
        let log = db.keyspace("raft_log", fjall::KeyspaceCreateOptions::default)?;
        Ok(Self { db, log })
    }

    /// Commits `batch` atomically; the journal is fsynced (SyncAll) before
    /// commit() returns, under the journal lock.
    fn durable_batch(&self) -> fjall::OwnedWriteBatch {
        self.db
            .batch()
            .durability(Some(fjall::PersistMode::SyncAll))
    }
}

impl LogStore for FjallStore {
    fn append(&mut self, first: u64, count: u64, payload: &Payload) -> Res<()> {
        let mut batch = self.durable_batch();
        for index in first..first + count {
            batch.insert(
                &self.log,
                &index.to_be_bytes()[..],
                &payload.value(index)[..],
            );
        }
        batch.commit()?;
        Ok(())
    }

    fn scan(&self, first: u64, count: u64) -> Res<(u64, u64)> {
        let start = first.to_be_bytes();
        let end = (first + count).to_be_bytes();
        let (mut seen, mut bytes) = (0u64, 0u64);
        for guard in self.log.range(start..end) {
            let (key, value) = guard.into_inner()?;
            black_box(&key);
            bytes += black_box(&value).len() as u64;
            seen += 1;
        }
        Ok((seen, bytes))
    }

    fn purge_upto(&mut self, last: u64) -> Res<()> {
        // fjall has no range delete: one tombstone per purged entry, all in
        // one atomic, fsynced batch.
        let mut batch = self.durable_batch();
        for index in 1..=last {
            batch.remove(&self.log, &index.to_be_bytes()[..]);
        }
        batch.commit()?;
        Ok(())
    }
}

// ------------------------------------------------------------- harness ---

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    Redb,
    Fjall,
}

const ENGINES: [Engine; 2] = [Engine::Redb, Engine::Fjall];

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Redb => "redb",
            Engine::Fjall => "fjall",
        }
    }

    fn open(self, dir: &Path) -> Res<Box<dyn LogStore>> {
        Ok(match self {
            Engine::Redb => Box::new(RedbStore::open(dir)?),
            Engine::Fjall => Box::new(FjallStore::open(dir)?),
        })
    }
}

/// Owns the benchmark's scratch directory and removes it when dropped, also
/// on early return or panic unwinding.
struct Scratch {
    root: PathBuf,
    next: u64,
}

impl Scratch {
    fn new(parent: &Path) -> Res<Self> {
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        let root = parent.join(format!("run-{}-{stamp}", process::id()));
        fs::create_dir_all(&root)?;
        Ok(Self { root, next: 0 })
    }

    /// A fresh, empty directory for one store.
    fn fresh(&mut self, label: &str) -> Res<PathBuf> {
        self.next += 1;
        let dir = self.root.join(format!("{:03}-{label}", self.next));
        fs::create_dir(&dir)?;
        Ok(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.root) {
            eprintln!("warning: could not remove {}: {e}", self.root.display());
        }
    }
}

/// Nearest-rank percentile of already sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[derive(Clone, Copy, Debug)]
struct AppendRun {
    commits: usize,
    commits_per_s: f64,
    entries_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

fn run_append(
    store: &mut dyn LogStore,
    payload: &Payload,
    batch: usize,
    commits: usize,
    cap: Duration,
) -> Res<AppendRun> {
    let batch = batch as u64;
    let mut next = 1u64;
    for _ in 0..WARMUP_COMMITS {
        store.append(next, batch, payload)?;
        next += batch;
    }

    let mut lat = Vec::with_capacity(commits);
    let started = Instant::now();
    for _ in 0..commits {
        if started.elapsed() >= cap {
            break;
        }
        let t = Instant::now();
        store.append(next, batch, payload)?;
        lat.push(t.elapsed());
        next += batch;
    }
    let wall = started.elapsed().as_secs_f64();

    // Sanity check: the last appended entry is readable and intact.
    let (seen, bytes) = store.scan(next - 1, 1)?;
    if seen != 1 || bytes != VALUE_LEN as u64 {
        return Err(format!("last entry {} missing after append run", next - 1).into());
    }

    lat.sort_unstable();
    let done = lat.len();
    Ok(AppendRun {
        commits: done,
        commits_per_s: done as f64 / wall,
        entries_per_s: (done as u64 * batch) as f64 / wall,
        p50_us: micros(percentile(&lat, 50.0)),
        p99_us: micros(percentile(&lat, 99.0)),
    })
}

#[derive(Clone, Copy, Debug)]
struct ReadPurgeRun {
    scan_us: f64,
    purge_ms: f64,
    scan_after_purge_us: f64,
}

fn run_read_purge(store: &mut dyn LogStore, payload: &Payload, args: &Args) -> Res<ReadPurgeRun> {
    // Preload 1..=preload in durable commits of PRELOAD_BATCH entries.
    let mut next = 1u64;
    while next <= args.preload {
        let n = PRELOAD_BATCH.min(args.preload - next + 1);
        store.append(next, n, payload)?;
        next += n;
    }

    // Sequential range scans at offsets spread evenly over the log.
    let span = args.preload - args.scan_len; // last valid start offset - 1
    let mut scans = Vec::with_capacity(args.scans);
    for i in 0..args.scans {
        let first = 1 + span * i as u64 / (args.scans.max(2) - 1) as u64;
        let t = Instant::now();
        let (seen, bytes) = store.scan(first, args.scan_len)?;
        scans.push(t.elapsed());
        if seen != args.scan_len || bytes != args.scan_len * VALUE_LEN as u64 {
            return Err(format!("scan at {first} saw {seen} entries").into());
        }
    }
    scans.sort_unstable();

    // Purge the first `purge` entries in one durable commit.
    let t = Instant::now();
    store.purge_upto(args.purge)?;
    let purge = t.elapsed();

    // Check the purge: nothing left below the boundary.
    let (left, _) = store.scan(1, args.purge)?;
    if left != 0 {
        return Err(format!("{left} entries survived the purge").into());
    }

    // Read the new head of the log (what a follower catching up reads).
    let mut after = Vec::with_capacity(args.scans);
    for _ in 0..args.scans {
        let t = Instant::now();
        let (seen, _) = store.scan(args.purge + 1, args.scan_len)?;
        after.push(t.elapsed());
        if seen != args.scan_len {
            return Err(format!("scan after purge saw {seen} entries").into());
        }
    }
    after.sort_unstable();

    Ok(ReadPurgeRun {
        scan_us: micros(percentile(&scans, 50.0)),
        purge_ms: purge.as_secs_f64() * 1e3,
        scan_after_purge_us: micros(percentile(&after, 50.0)),
    })
}

/// The disk's floor: append 256 bytes to a plain file and fdatasync, the
/// cheapest durable write any engine can do.
fn raw_fsync_floor(dir: &Path, iterations: usize, cap: Duration) -> Res<(f64, f64)> {
    let path = dir.join("raw.log");
    let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
    let buf = Payload::new().value(0);
    let mut lat = Vec::with_capacity(iterations);
    let started = Instant::now();
    for _ in 0..iterations {
        if started.elapsed() >= cap {
            break;
        }
        let t = Instant::now();
        file.write_all(&buf)?;
        file.sync_data()?;
        lat.push(t.elapsed());
    }
    lat.sort_unstable();
    Ok((
        micros(percentile(&lat, 50.0)),
        micros(percentile(&lat, 99.0)),
    ))
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        process::exit(1);
    }
}

fn run(args: &Args) -> Res<()> {
    if args.batches.len() != args.commits.len() {
        return Err("--batches and --commits need the same number of values".into());
    }
    if args.rounds == 0 || args.batches.contains(&0) {
        return Err("--rounds and every --batches value must be positive".into());
    }
    if args.scan_len == 0
        || args.scan_len > args.preload
        || args.purge + args.scan_len > args.preload
    {
        return Err("need 0 < scan-len <= preload and purge + scan-len <= preload".into());
    }

    let parent = args
        .data_dir
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp-data"));
    fs::create_dir_all(&parent)?;
    let mut scratch = Scratch::new(&parent)?;
    let cap = Duration::from_secs_f64(args.max_secs);
    let payload = Payload::new();

    println!("data dir: {}", scratch.root.display());
    println!(
        "value {VALUE_LEN} B, key u64 big-endian, rounds {}, run cap {:.1} s",
        args.rounds, args.max_secs
    );

    let floor_dir = scratch.fresh("raw")?;
    let (floor_p50, floor_p99) = raw_fsync_floor(&floor_dir, 1_000, cap)?;
    fs::remove_dir_all(&floor_dir)?;
    println!("raw 256 B append + fdatasync: p50 {floor_p50:.0} us, p99 {floor_p99:.0} us\n");

    // results[engine][batch position] = one entry per round
    let mut appends: Vec<Vec<Vec<AppendRun>>> =
        vec![vec![Vec::new(); args.batches.len()]; ENGINES.len()];
    let mut read_purge: Vec<Vec<ReadPurgeRun>> = vec![Vec::new(); ENGINES.len()];

    for round in 1..=args.rounds {
        println!("== round {round}/{}", args.rounds);
        for (bi, (&batch, &commits)) in args.batches.iter().zip(&args.commits).enumerate() {
            for (ei, engine) in ENGINES.iter().enumerate() {
                let dir = scratch.fresh(&format!("{}-b{batch}", engine.name()))?;
                let r = {
                    let mut store = engine.open(&dir)?;
                    run_append(store.as_mut(), &payload, batch, commits, cap)?
                };
                fs::remove_dir_all(&dir)?;
                println!(
                    "{:<5} batch {:>3}: {:>5} commits  {:>9.1} commits/s  {:>10.0} entries/s  p50 {:>7.0} us  p99 {:>7.0} us",
                    engine.name(),
                    batch,
                    r.commits,
                    r.commits_per_s,
                    r.entries_per_s,
                    r.p50_us,
                    r.p99_us
                );
                appends[ei][bi].push(r);
            }
        }
        for (ei, engine) in ENGINES.iter().enumerate() {
            let dir = scratch.fresh(&format!("{}-read-purge", engine.name()))?;
            let r = {
                let mut store = engine.open(&dir)?;
                run_read_purge(store.as_mut(), &payload, args)?
            };
            fs::remove_dir_all(&dir)?;
            println!(
                "{:<5} scan {} entries {:>7.0} us  purge first {} {:>7.2} ms  scan after purge {:>7.0} us",
                engine.name(),
                args.scan_len,
                r.scan_us,
                args.purge,
                r.purge_ms,
                r.scan_after_purge_us
            );
            read_purge[ei].push(r);
        }
        println!();
    }

    println!(
        "## Appends (median of {} rounds; one fsynced commit per batch)\n",
        args.rounds
    );
    println!("| engine | batch | commits/run | commits/s | entries/s | p50 commit (µs) | p99 commit (µs) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (bi, &batch) in args.batches.iter().enumerate() {
        for (ei, engine) in ENGINES.iter().enumerate() {
            let runs = &appends[ei][bi];
            let m = |f: fn(&AppendRun) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
            println!(
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                engine.name(),
                batch,
                m(|r| r.commits as f64),
                m(|r| r.commits_per_s),
                m(|r| r.entries_per_s),
                m(|r| r.p50_us),
                m(|r| r.p99_us)
            );
        }
    }
    println!("\n_raw file append 256 B + fdatasync on the same disk: p50 {floor_p50:.0} µs, p99 {floor_p99:.0} µs_\n");

    println!(
        "## Read and purge (median of {} rounds; log preloaded with {} entries)\n",
        args.rounds, args.preload
    );
    println!(
        "| engine | scan {} entries (µs, p50) | purge first {} entries, one commit (ms) | scan {} after purge (µs, p50) |",
        args.scan_len, args.purge, args.scan_len
    );
    println!("|---|---:|---:|---:|");
    for (ei, engine) in ENGINES.iter().enumerate() {
        let runs = &read_purge[ei];
        let m = |f: fn(&ReadPurgeRun) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        println!(
            "| {} | {:.0} | {:.2} | {:.0} |",
            engine.name(),
            m(|r| r.scan_us),
            m(|r| r.purge_ms),
            m(|r| r.scan_after_purge_us)
        );
    }

    Ok(())
}
