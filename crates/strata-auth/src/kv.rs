//! What a KV request needs: the key ranges it reads and writes, as etcd checks them. A range
//! read or a watch reads its range; a put or delete writes its key or range; a transaction
//! reads every compared range and needs whatever each operation in either branch needs (both
//! branches are checked, so the outcome of the compares never decides whether it is allowed).

use crate::{Access, Names};
use strata_proto::kv::{
    DeleteRangeRequest, PutRequest, RangeRequest, RangeSpec, RequestOp, TxnRequest, WatchRequest,
};

/// One thing a request needs: an access over a range of keys.
pub type Need = (Access, Names);

/// The names a spec addresses (the spec is validated later by the store; a spec that does not
/// resolve is checked as its first key alone, which asks for no more than it says).
pub fn names(spec: &RangeSpec) -> Names {
    match spec.resolve() {
        Ok((start, end)) => Names { start, end },
        Err(_) => Names::one(spec.key.clone()),
    }
}

/// What a range read needs.
pub fn range(req: &RangeRequest) -> Vec<Need> {
    vec![(Access::Read, names(&req.spec()))]
}

/// What a put needs. `prev_kv` also reads the key, as in etcd.
pub fn put(req: &PutRequest) -> Vec<Need> {
    let mut needs = vec![(Access::Write, Names::one(req.key.clone()))];
    if req.prev_kv {
        needs.push((Access::Read, Names::one(req.key.clone())));
    }
    needs
}

/// What a delete needs. `prev_kv` also reads the range.
pub fn delete(req: &DeleteRangeRequest) -> Vec<Need> {
    let names = names(&req.spec());
    let mut needs = vec![(Access::Write, names.clone())];
    if req.prev_kv {
        needs.push((Access::Read, names));
    }
    needs
}

/// What a watch needs.
pub fn watch(req: &WatchRequest) -> Vec<Need> {
    vec![(Access::Read, names(&req.spec()))]
}

/// What a transaction needs: its compares, and both branches, nested transactions included.
pub fn txn(req: &TxnRequest) -> Vec<Need> {
    let mut needs = Vec::new();
    txn_into(req, &mut needs);
    needs
}

fn txn_into(req: &TxnRequest, needs: &mut Vec<Need>) {
    for compare in &req.compare {
        needs.push((Access::Read, names(&compare.spec())));
    }
    for op in req.success.iter().chain(&req.failure) {
        match op {
            RequestOp::Range(r) => needs.extend(range(r)),
            RequestOp::Put(p) => needs.extend(put(p)),
            RequestOp::DeleteRange(d) => needs.extend(delete(d)),
            RequestOp::Txn(t) => txn_into(t, needs),
        }
    }
}

/// True when `names` reaches into `reserved` (a prefix of keys no one but root may touch
/// through the KV APIs).
pub fn touches(names: &Names, reserved: &[u8]) -> bool {
    // Two half-open intervals overlap when each starts before the other ends; compared in
    // place, as this runs on every request. `reserved` is [reserved, its prefix end).
    let reserved_end = strata_proto::kv::prefix_end(reserved);
    let lo = names.start.as_slice();
    let starts_before_reserved_ends = reserved_end.is_empty() || lo < reserved_end.as_slice();
    match names.end.as_deref() {
        // One key: inside the prefix or not.
        None => lo.starts_with(reserved),
        // Everything from lo on.
        Some([]) => starts_before_reserved_ends,
        Some(hi) => starts_before_reserved_ends && reserved < hi,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::kv::{Compare, CompareResult, CompareTarget};

    proptest::proptest! {
        /// The in-place overlap test agrees with interval arithmetic on [lo, hi).
        #[test]
        fn touches_agrees_with_interval_arithmetic(
            start in proptest::collection::vec(proptest::sample::select(vec![b'/', b'a', b'z', 0xff]), 0..4),
            end in proptest::option::of(proptest::collection::vec(proptest::sample::select(vec![b'/', b'a', b'z', 0xff]), 0..4)),
            reserved in proptest::collection::vec(proptest::sample::select(vec![b'/', b'a', b'z', 0xff]), 0..3),
        ) {
            let names = Names { start, end };
            let (lo, hi) = names.interval();
            let (r_lo, r_hi) = Names::prefix(reserved.clone()).interval();
            let before = |start: &Vec<u8>, end: &Option<Vec<u8>>| end.as_ref().is_none_or(|e| start < e);
            let expected = before(&lo, &r_hi) && before(&r_lo, &hi);
            proptest::prop_assert_eq!(touches(&names, &reserved), expected);
        }
    }

    #[test]
    fn a_transaction_needs_both_branches_and_its_compares() {
        let req = TxnRequest {
            compare: vec![Compare {
                key: b"c".to_vec(),
                range_end: Vec::new(),
                prefix: false,
                result: CompareResult::Equal,
                target: CompareTarget::Version(0),
            }],
            success: vec![RequestOp::Put(PutRequest {
                key: b"s".to_vec(),
                ..PutRequest::default()
            })],
            failure: vec![RequestOp::Txn(TxnRequest {
                compare: Vec::new(),
                success: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                    key: b"d/".to_vec(),
                    prefix: true,
                    ..DeleteRangeRequest::default()
                })],
                failure: Vec::new(),
            })],
        };
        assert_eq!(
            txn(&req),
            vec![
                (Access::Read, Names::one("c")),
                (Access::Write, Names::one("s")),
                (Access::Write, Names::prefix("d/")),
            ]
        );
    }

    #[test]
    fn reserved_prefix_overlap() {
        let reserved = b"/strata/auth/";
        assert!(touches(&Names::one("/strata/auth/users/x"), reserved));
        assert!(touches(&Names::prefix("/strata/"), reserved));
        assert!(touches(&Names::range("", vec![0]), reserved));
        assert!(touches(&Names::range("/a", "/z"), reserved));
        assert!(!touches(&Names::prefix("/strata/authx"), reserved));
        assert!(!touches(&Names::one("/strata/auth"), reserved));
        assert!(!touches(&Names::prefix("app/"), reserved));
        assert!(!touches(&Names::range("/strata/b", vec![0]), reserved));
    }
}
