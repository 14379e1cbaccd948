//! JSON bodies of etcd's JSON gateway (`POST /v3/...`), decoded with the `pbjson` mapping into
//! every request message the gateway serves. Nothing panics; what decodes encodes and decodes
//! back to the same message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_etcd::pb::etcdserverpb as pb;

fn round_trip<T>(bytes: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    if let Ok(message) = serde_json::from_slice::<T>(bytes) {
        let json = serde_json::to_vec(&message).expect("a decoded message encodes");
        let again: T = serde_json::from_slice(&json).expect("an encoded message decodes");
        assert_eq!(message, again);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    match pick % 12 {
        0 => round_trip::<pb::RangeRequest>(body),
        1 => round_trip::<pb::PutRequest>(body),
        2 => round_trip::<pb::DeleteRangeRequest>(body),
        3 => round_trip::<pb::TxnRequest>(body),
        4 => round_trip::<pb::CompactionRequest>(body),
        5 => round_trip::<pb::LeaseGrantRequest>(body),
        6 => round_trip::<pb::LeaseTimeToLiveRequest>(body),
        7 => round_trip::<pb::AuthenticateRequest>(body),
        8 => round_trip::<pb::AuthRoleGrantPermissionRequest>(body),
        9 => round_trip::<pb::AuthUserAddRequest>(body),
        10 => round_trip::<pb::MemberAddRequest>(body),
        _ => round_trip::<pb::RangeResponse>(body),
    }
});
