//! The KV state machine's two designs for snapshots that do not stop apply (issue 12), measured
//! on the same work: `N` keys of 256-byte values applied in batches of 128 (one Raft entry's
//! worth), a frozen view taken, overwrites applied while the view is held, point reads and a
//! full scan of the view (what shipping a snapshot to a follower reads).
//!
//! - `imbl`: the state in a persistent B-tree (`imbl::OrdMap<Arc<[u8]>, Arc<[u8]>>`, key to
//!   value plus 32 bytes of revisions, as `KvStore` holds it); the view is a clone.
//! - `fjall`: the state in an fjall keyspace (no fsync: the Raft log is the durable record),
//!   each batch one fjall batch; the view is `Database::snapshot()`.
//!
//! Each engine runs in its own process (`state-machine imbl|fjall N DIR`) so that RSS is its
//! own. Prints one JSON line.

use fjall::Readable;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

const VALUE: usize = 256 + 32;
const BATCH: usize = 128;

fn key(n: u64) -> Vec<u8> {
    format!(
        "scale/a/{:010}",
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 10_000_000_000
    )
    .into_bytes()
}

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1 << 20) as f64
}

fn us_per(start: Instant, ops: u64) -> f64 {
    start.elapsed().as_secs_f64() * 1e6 / ops as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let engine = args.get(1).map(String::as_str).unwrap_or("imbl");
    let n: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let dir = args
        .get(3)
        .cloned()
        .unwrap_or_else(|| "/tmp/state-machine".into());
    let value = vec![7u8; VALUE];
    let overwrites = n / 10;
    let reads = 200_000u64;
    let (load_us, freeze_us, overwrite_us, get_us, scan_s, scanned, rss) = match engine {
        "imbl" => {
            let mut map: imbl::OrdMap<Arc<[u8]>, Arc<[u8]>> = imbl::OrdMap::new();
            let t = Instant::now();
            for i in 0..n {
                map.insert(Arc::from(key(i)), Arc::from(value.as_slice()));
            }
            let load = us_per(t, n);
            let t = Instant::now();
            let view = map.clone();
            let freeze = t.elapsed().as_secs_f64() * 1e6;
            let t = Instant::now();
            for i in 0..overwrites {
                map.insert(Arc::from(key(i * 7 % n)), Arc::from(value.as_slice()));
            }
            let overwrite = us_per(t, overwrites);
            let t = Instant::now();
            for i in 0..reads {
                black_box(view.get(key(i * 13 % n).as_slice()));
            }
            let get = us_per(t, reads);
            let t = Instant::now();
            let mut bytes = 0usize;
            for (k, v) in view.iter() {
                bytes += k.len() + v.len();
            }
            (
                load,
                freeze,
                overwrite,
                get,
                t.elapsed().as_secs_f64(),
                bytes,
                rss_mib(),
            )
        }
        _ => {
            let _ = std::fs::remove_dir_all(&dir);
            let db = fjall::Database::builder(&dir).open().expect("open");
            let kv = db
                .keyspace("kv", fjall::KeyspaceCreateOptions::default)
                .expect("keyspace");
            let apply = |from: u64, to: u64, step: u64| {
                let mut i = from;
                while i < to {
                    let mut batch = db.batch().durability(None);
                    for j in i..(i + BATCH as u64).min(to) {
                        batch.insert(&kv, key(j * step % n), value.as_slice());
                    }
                    batch.commit().expect("commit");
                    i += BATCH as u64;
                }
            };
            let t = Instant::now();
            apply(0, n, 1);
            let load = us_per(t, n);
            let t = Instant::now();
            let view = db.snapshot();
            let freeze = t.elapsed().as_secs_f64() * 1e6;
            let t = Instant::now();
            apply(0, overwrites, 7);
            let overwrite = us_per(t, overwrites);
            let t = Instant::now();
            for i in 0..reads {
                black_box(view.get(&kv, key(i * 13 % n)).expect("get"));
            }
            let get = us_per(t, reads);
            let t = Instant::now();
            let mut bytes = 0usize;
            for item in view.iter(&kv) {
                let (k, v) = item.into_inner().expect("scan");
                bytes += k.len() + v.len();
            }
            (
                load,
                freeze,
                overwrite,
                get,
                t.elapsed().as_secs_f64(),
                bytes,
                rss_mib(),
            )
        }
    };
    println!(
        "{{\"engine\":\"{engine}\",\"keys\":{n},\"apply_us_per_put\":{load_us:.3},\"freeze_us\":{freeze_us:.1},\"apply_us_per_put_with_view_held\":{overwrite_us:.3},\"get_us\":{get_us:.3},\"scan_s\":{scan_s:.3},\"scanned_bytes\":{scanned},\"rss_mib\":{rss:.1}}}"
    );
}
