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
