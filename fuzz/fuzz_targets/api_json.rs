//! JSON request bodies of the native HTTP API (and the responses a client reads): any bytes
//! decode to a value or an error, never a panic; every decoded range resolves or is refused.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_proto::error::ApiError;
use strata_proto::kv::{
    CompactRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseIdRequest, PutRequest,
    RangeRequest, RangeResponse, RangeSpec, RequestOp, TxnRequest, TxnResponse, WatchRequest,
    WatchResponse,
};

/// Resolves a spec as the service does. A resolved range is never empty by construction.
fn resolve(spec: RangeSpec) {
    if let Ok((start, Some(end))) = spec.resolve() {
        assert!(end.is_empty() || start < end, "resolved to an empty range");
    }
}

fn resolve_txn(txn: &TxnRequest) {
    for compare in &txn.compare {
        resolve(compare.spec());
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match op {
            RequestOp::Range(range) => resolve(range.spec()),
            RequestOp::DeleteRange(delete) => resolve(delete.spec()),
            RequestOp::Put(_) => {}
            RequestOp::Txn(nested) => resolve_txn(nested),
        }
    }
}

/// What decodes must encode again to the same value.
fn round_trips<T>(value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let json = serde_json::to_vec(value).expect("a decoded request encodes");
    let back: T = serde_json::from_slice(&json).expect("an encoded request decodes");
    assert_eq!(&back, value);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<RangeRequest>(data) {
        resolve(req.spec());
        round_trips(&req);
    }
    if let Ok(req) = serde_json::from_slice::<DeleteRangeRequest>(data) {
        resolve(req.spec());
    }
    if let Ok(req) = serde_json::from_slice::<WatchRequest>(data) {
        resolve(req.spec());
    }
    if let Ok(spec) = serde_json::from_slice::<RangeSpec>(data) {
        resolve(spec);
    }
    if let Ok(txn) = serde_json::from_slice::<TxnRequest>(data) {
        resolve_txn(&txn);
        round_trips(&txn);
    }
    if let Ok(put) = serde_json::from_slice::<PutRequest>(data) {
        round_trips(&put);
    }
    let _ = serde_json::from_slice::<LeaseGrantRequest>(data);
    let _ = serde_json::from_slice::<LeaseIdRequest>(data);
    let _ = serde_json::from_slice::<CompactRequest>(data);
    let _ = serde_json::from_slice::<RangeResponse>(data);
    let _ = serde_json::from_slice::<TxnResponse>(data);
    let _ = serde_json::from_slice::<WatchResponse>(data);
    let _ = serde_json::from_slice::<ApiError>(data);
});
