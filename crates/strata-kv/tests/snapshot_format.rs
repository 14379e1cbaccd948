//! The snapshot body is postcard of `KvStore`'s own types, outside `strata_proto::log`'s frozen
//! types. This pins the bytes formats 1 and 2 write for a small store: if it fails, the
//! snapshot format changed, and the rule in `strata_proto::log` applies (new format version, a
//! reader for the old one, an upgrade fixture).

#![allow(clippy::unwrap_used)]

use strata_kv::KvStore;
use strata_proto::kv::{DeleteRangeRequest, KvCommand, PutRequest};

#[test]
fn the_snapshot_bytes_of_formats_1_and_2_are_unchanged() {
    let mut store = KvStore::new();
    store.apply(&KvCommand::LeaseGrant { id: 5, ttl: 60 });
    store.apply(&KvCommand::Put(PutRequest {
        key: b"a".to_vec(),
        value: b"1".to_vec(),
        lease: 5,
        prev_kv: false,
        ..Default::default()
    }));
    store.apply(&KvCommand::Put(PutRequest {
        key: b"b".to_vec(),
        value: b"2".to_vec(),
        ..PutRequest::default()
    }));
    store.apply(&KvCommand::DeleteRange(DeleteRangeRequest {
        key: b"b".to_vec(),
        ..DeleteRangeRequest::default()
    }));
    let bytes = postcard::to_allocvec(&store).unwrap();
    assert_eq!(bytes, PINNED);
    let back: KvStore = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back.revision(), store.revision());
}

const PINNED: &[u8] = &[
    8, 0, 2, 1, 97, 1, 4, 0, 4, 2, 1, 49, 10, 0, 1, 98, 2, 6, 0, 6, 2, 1, 50, 0, 0, 8, 0, 0, 0, 0,
    0, 1, 1, 10, 120, 1, 1, 97,
];

/// A store with every shape the snapshot holds: many keys, histories of several versions,
/// tombstones, leases with keys, a compaction, and values from empty to over a MiB.
fn varied_store() -> KvStore {
    let mut store = KvStore::new();
    store.apply(&KvCommand::LeaseGrant { id: 7, ttl: 30 });
    store.apply(&KvCommand::LeaseGrant {
        id: 1 << 40,
        ttl: 1,
    });
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..3_000u64 {
        if i == 1_500 {
            store.apply(&KvCommand::Compact(strata_proto::kv::CompactRequest {
                revision: store.revision() - 200,
            }));
        }
        let pick = next();
        let key = format!("k/{}", pick % 700).into_bytes();
        match pick % 10 {
            0 => {
                store.apply(&KvCommand::DeleteRange(DeleteRangeRequest {
                    key,
                    ..Default::default()
                }));
            }
            _ => {
                let len = match pick % 7 {
                    0 => 0,
                    1 => 300,
                    _ => (pick % 40) as usize,
                };
                store.apply(&KvCommand::Put(PutRequest {
                    key,
                    value: vec![(pick >> 8) as u8; len],
                    lease: [0, 0, 7, 1 << 40][(pick % 4) as usize],
                    ..Default::default()
                }));
            }
        }
    }
    store.apply(&KvCommand::Put(PutRequest {
        key: b"big".to_vec(),
        value: vec![0xab; (1 << 20) + 4321],
        ..Default::default()
    }));
    store
}

#[test]
fn the_streaming_reader_reads_what_postcard_reads() {
    let store = varied_store();
    let bytes = postcard::to_allocvec(&store).unwrap();
    let by_postcard: KvStore = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(by_postcard, store);
    // Read in small pieces, as a socket or a file hands them over.
    let mut trickle = Trickle(&bytes[..]);
    let streamed = KvStore::read_snapshot(&mut trickle).unwrap();
    assert_eq!(streamed, store);
    assert!(streamed.derived_state_is_consistent());
    let pinned: KvStore = KvStore::read_snapshot(&mut &PINNED[..]).unwrap();
    assert_eq!(pinned, postcard::from_bytes::<KvStore>(PINNED).unwrap());
}

/// Hands out at most 7 bytes per read.
struct Trickle<'a>(&'a [u8]);

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(7).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

#[test]
fn a_cut_or_damaged_snapshot_body_is_an_error() {
    let bytes = postcard::to_allocvec(&varied_store()).unwrap();
    for cut in (0..bytes.len()).step_by(997).chain([bytes.len() - 1]) {
        assert!(
            KvStore::read_snapshot(&mut &bytes[..cut]).is_err(),
            "a body cut at {cut} of {} bytes was read",
            bytes.len()
        );
    }
    // A map claiming 2^62 keys, and a key claiming 2^62 bytes: errors at the end of the
    // input, with nothing reserved for the claim.
    let huge = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
    let claims_keys: Vec<u8> = [&[0, 0][..], &huge].concat();
    assert!(KvStore::read_snapshot(&mut &claims_keys[..]).is_err());
    let claims_bytes: Vec<u8> = [&[0, 0, 1][..], &huge, b"abc"].concat();
    assert!(KvStore::read_snapshot(&mut &claims_bytes[..]).is_err());
    // A bool that is neither 0 nor 1, and an integer of eleven bytes.
    let bad_bool = [&PINNED[..PINNED.len() - 1], &[2]].concat();
    let _ = KvStore::read_snapshot(&mut &bad_bool[..]);
    let long = [0xff; 11];
    assert!(KvStore::read_snapshot(&mut &long[..]).is_err());
}

proptest::proptest! {
    /// The `snapshot_file` fuzz target's body check: any bytes are read or refused, never a
    /// panic, and whatever postcard reads the streaming reader reads the same.
    #[test]
    fn any_bytes_stream_in_or_fail_as_postcard_says(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
    ) {
        let streamed = KvStore::read_snapshot(&mut &bytes[..]);
        if let Ok(store) = postcard::from_bytes::<KvStore>(&bytes) {
            proptest::prop_assert_eq!(streamed.ok(), Some(store));
        }
    }
}
