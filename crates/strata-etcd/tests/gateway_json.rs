//! The `fuzz/` target `etcd_gateway` on stable: arbitrary and mutated JSON bodies decode into
//! the gateway's request messages or fail, never panic, and what decodes round-trips.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use strata_etcd::pb::etcdserverpb as pb;

fn round_trip<T>(bytes: &[u8]) -> Result<(), TestCaseError>
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    if let Ok(message) = serde_json::from_slice::<T>(bytes) {
        let json = serde_json::to_vec(&message).unwrap();
        let again: T = serde_json::from_slice(&json).unwrap();
        prop_assert_eq!(message, again);
    }
    Ok(())
}

fn all(bytes: &[u8]) -> Result<(), TestCaseError> {
    round_trip::<pb::RangeRequest>(bytes)?;
    round_trip::<pb::PutRequest>(bytes)?;
    round_trip::<pb::DeleteRangeRequest>(bytes)?;
    round_trip::<pb::TxnRequest>(bytes)?;
    round_trip::<pb::CompactionRequest>(bytes)?;
    round_trip::<pb::LeaseGrantRequest>(bytes)?;
    round_trip::<pb::AuthenticateRequest>(bytes)?;
    round_trip::<pb::AuthRoleGrantPermissionRequest>(bytes)?;
    round_trip::<pb::RangeResponse>(bytes)
}

/// Valid bodies in etcd's spelling, to mutate.
const SEEDS: &[&str] = &[
    r#"{"key":"Zm9v","range_end":"Zm9w","limit":"10","revision":"-1","sort_order":"DESCEND","keys_only":true}"#,
    r#"{"key":"YQ==","value":"Yg==","lease":"7587","prev_kv":true}"#,
    r#"{"compare":[{"key":"YQ==","target":"VALUE","result":"EQUAL","value":"MQ=="}],"success":[{"request_put":{"key":"YQ==","value":"Mg=="}}],"failure":[{"request_range":{"key":"YQ=="}}]}"#,
    r#"{"name":"app","perm":{"permType":"READWRITE","key":"YXBwLw==","range_end":"YXBwMA=="}}"#,
    r#"{"header":{"revision":"3"},"kvs":[{"key":"YQ==","create_revision":"2","mod_revision":"3","version":"2","value":"Yg=="}],"count":"1"}"#,
];

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        all(&bytes)?;
    }

    #[test]
    fn mutated_bodies_never_panic(
        seed in 0..SEEDS.len(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<bool>(),
    ) {
        let mut bytes = SEEDS[seed].as_bytes().to_vec();
        let i = at.index(bytes.len());
        if cut {
            bytes.truncate(i);
        } else {
            bytes[i] = byte;
        }
        all(&bytes)?;
    }
}

#[test]
fn etcds_spellings_decode_as_etcd_means_them() {
    let range: pb::RangeRequest = serde_json::from_str(SEEDS[0]).unwrap();
    assert_eq!(range.key, b"foo");
    assert_eq!(range.range_end, b"fop");
    assert_eq!(range.limit, 10);
    assert_eq!(range.revision, -1);
    assert!(range.keys_only);
    // Either field spelling, and numbers as numbers, are accepted.
    let camel: pb::RangeRequest =
        serde_json::from_str(r#"{"key":"Zm9v","rangeEnd":"Zm9w","limit":10}"#).unwrap();
    assert_eq!((camel.range_end.as_slice(), camel.limit), (&b"fop"[..], 10));
    // Output uses the proto names and 64-bit integers as strings, as etcd's gateway does.
    let json = serde_json::to_string(&pb::RangeResponse {
        count: 1,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(json, r#"{"count":"1"}"#);
}
