//! The checksummed snapshot / vote-marker file format: any bytes parse to parts or an error,
//! never a panic; the parts decode as the node decodes them (snapshot metadata, vote marker,
//! KV store snapshot, by postcard and by the store's streaming reader, which must agree) with a
//! value or an error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use openraft::{SnapshotMeta, Vote};
use strata_kv::KvStore;
use strata_proto::NodeInfo;

fuzz_target!(|data: &[u8]| {
    // The parser alone, and behind the magic so the fuzzer need not find it first.
    let _ = strata_raft::parse_checked(data);
    let mut file = b"STRATA-SNAPSHOT-1\n".to_vec();
    file.extend_from_slice(data);
    let Ok((meta, body)) = strata_raft::parse_checked(&file) else {
        return;
    };
    let _ = postcard::from_bytes::<SnapshotMeta<u64, NodeInfo>>(&meta);
    let _ = postcard::from_bytes::<Vote<u64>>(&meta);
    snapshot_body(&body);
});

/// The KV store's own reader agrees with postcard's on what postcard reads, and fails cleanly
/// on the rest.
fn snapshot_body(body: &[u8]) {
    let streamed = KvStore::read_snapshot(&mut &body[..]);
    if let Ok(store) = postcard::from_bytes::<KvStore>(body) {
        assert_eq!(streamed.as_ref().ok(), Some(&store));
    }
}
