//! The KV state machine applies any decodable command without panicking, keeps its
//! invariants, and answers reads and watch catch-up on fuzzed ranges with a result or an error.
//!
//! Input: postcard `Vec<KvCommand>`, then postcard `Vec<(RangeRequest, RangeSpec, i64)>` read
//! probes (missing probes are fine).

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_kv::KvStore;
use strata_proto::kv::{KvCommand, KvResult, RangeRequest, RangeSpec};

fuzz_target!(|data: &[u8]| {
    let Ok((commands, rest)) = postcard::take_from_bytes::<Vec<KvCommand>>(data) else {
        return;
    };
    let probes: Vec<(RangeRequest, RangeSpec, i64)> =
        postcard::from_bytes(rest).unwrap_or_default();
    let mut store = KvStore::new();
    for command in &commands {
        let before = store.revision();
        let (result, events) = store.apply(command);
        let after = store.revision();
        assert!(after == before || after == before + 1, "revision jumped");
        assert!(store.compact_revision() <= after);
        assert_eq!(
            events.is_empty(),
            after == before,
            "events without a new revision"
        );
        if let KvResult::Error(_) = result {
            assert_eq!(after, before, "a rejected command changed the store");
        }
        for (request, spec, from) in &probes {
            let _ = store.range(request);
            let _ = store.events_since(spec, *from);
        }
    }
    // The snapshot encoding round-trips whatever the commands did.
    let snapshot = postcard::to_allocvec(&store).expect("the store encodes");
    let restored: KvStore = postcard::from_bytes(&snapshot).expect("a snapshot decodes");
    assert_eq!(restored, store);
    let streamed = KvStore::read_snapshot(&mut &snapshot[..]).expect("a snapshot streams in");
    assert_eq!(streamed, store);
});
