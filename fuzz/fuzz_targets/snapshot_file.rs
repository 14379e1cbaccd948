//! The checksummed snapshot / vote-marker file format: any bytes parse to parts or an error,
//! never a panic; the parts decode as the node decodes them (snapshot metadata, vote marker,
//! KV store snapshot) with a value or an error.

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
    let _ = postcard::from_bytes::<KvStore>(&body);
});
