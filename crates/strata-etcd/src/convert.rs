//! Translation between etcd's protobuf messages and `strata_proto::kv` types.
//!
//! The two models are the same (Strata's KV has etcd semantics), so most of this is moving
//! fields. The exceptions: etcd's enum fields arrive as raw integers and are checked here,
//! and nested transaction responses carry a header with only the revision, as etcd's do.

use crate::error;
use crate::pb::etcdserverpb as pb;
use crate::pb::mvccpb;
use strata_proto::kv::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, Event,
    EventType, KeyValue, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse,
};
use tonic::Status;

/// Deepest transaction nesting accepted over gRPC. The Raft log decoder refuses values nested
/// past `strata_proto::MAX_NESTING` levels (batches count too), so a request is stopped well
/// before that, here, instead of being proposed and then refused by every replica.
pub(crate) const MAX_TXN_DEPTH: usize = strata_proto::MAX_NESTING as usize / 2;

/// Converts a key-value to etcd's message.
pub(crate) fn key_value(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// Converts a watch event; `prev_kv` is dropped unless `with_prev_kv`.
pub(crate) fn event(event: Event, with_prev_kv: bool) -> mvccpb::Event {
    let kind = match event.kind {
        EventType::Put => mvccpb::event::EventType::Put,
        EventType::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(key_value(event.kv)),
        prev_kv: event.prev_kv.filter(|_| with_prev_kv).map(key_value),
    }
}

/// Returns true when `[key, range_end)` is empty because `range_end` is not above `key`.
/// etcd answers such a range with nothing (and deletes nothing), at the top level and inside
/// transactions alike; it is not an error.
pub(crate) fn is_inverted(key: &[u8], range_end: &[u8]) -> bool {
    !range_end.is_empty() && range_end != [0] && range_end <= key
}

/// What an inverted range or delete inside a transaction goes to the backend as: a
/// count-only read of its first key at the same revision. It changes nothing and passes the
/// backend's checks (which refuse inverted ranges, and compacted or future revisions as etcd
/// does); `kv::InvertedOps` replaces its result with an empty one of the right kind.
fn inverted_placeholder(key: Vec<u8>, revision: i64) -> RequestOp {
    RequestOp::Range(RangeRequest {
        key,
        revision,
        count_only: true,
        ..Default::default()
    })
}

/// Converts a range request, refusing unknown sort enums as etcd does. Sorting and the
/// revision filters are applied by the store.
pub(crate) fn range_request(request: &pb::RangeRequest) -> Result<RangeRequest, Status> {
    use pb::range_request::{SortOrder as PbOrder, SortTarget as PbTarget};
    if request.key.is_empty() {
        return Err(error::empty_key());
    }
    let sort_order = match PbOrder::try_from(request.sort_order) {
        Ok(PbOrder::None) => SortOrder::None,
        Ok(PbOrder::Ascend) => SortOrder::Ascend,
        Ok(PbOrder::Descend) => SortOrder::Descend,
        Err(_) => return Err(error::invalid_sort_option()),
    };
    let sort_target = match PbTarget::try_from(request.sort_target) {
        Ok(PbTarget::Key) => SortTarget::Key,
        Ok(PbTarget::Version) => SortTarget::Version,
        Ok(PbTarget::Create) => SortTarget::Create,
        Ok(PbTarget::Mod) => SortTarget::Mod,
        Ok(PbTarget::Value) => SortTarget::Value,
        Err(_) => return Err(error::invalid_sort_option()),
    };
    Ok(RangeRequest {
        key: request.key.clone(),
        range_end: request.range_end.clone(),
        prefix: false,
        limit: request.limit,
        revision: request.revision,
        keys_only: request.keys_only,
        count_only: request.count_only,
        serializable: request.serializable,
        sort_order,
        sort_target,
        min_mod_revision: request.min_mod_revision,
        max_mod_revision: request.max_mod_revision,
        min_create_revision: request.min_create_revision,
        max_create_revision: request.max_create_revision,
    })
}

/// Converts a range response; `full_header` says whether it is a top-level response (every
/// header field) or one inside a transaction (revision only).
pub(crate) fn range_response(
    response: RangeResponse,
    header: Option<pb::ResponseHeader>,
) -> pb::RangeResponse {
    pb::RangeResponse {
        header,
        kvs: response.kvs.into_iter().map(key_value).collect(),
        more: response.more,
        count: response.count,
    }
}

/// Converts a put. `ignore_value` and `ignore_lease` are applied by the store, atomically
/// with the write, at the top level and inside transactions.
pub(crate) fn put_request(request: pb::PutRequest) -> Result<PutRequest, Status> {
    if request.key.is_empty() {
        return Err(error::empty_key());
    }
    Ok(PutRequest {
        key: request.key,
        value: request.value,
        lease: request.lease,
        prev_kv: request.prev_kv,
        ignore_value: request.ignore_value,
        ignore_lease: request.ignore_lease,
    })
}

/// Converts a put response.
pub(crate) fn put_response(
    response: PutResponse,
    header: Option<pb::ResponseHeader>,
) -> pb::PutResponse {
    pb::PutResponse {
        header,
        prev_kv: response.prev_kv.map(key_value),
    }
}

/// Converts a delete.
pub(crate) fn delete_request(
    request: pb::DeleteRangeRequest,
) -> Result<DeleteRangeRequest, Status> {
    if request.key.is_empty() {
        return Err(error::empty_key());
    }
    Ok(DeleteRangeRequest {
        key: request.key,
        range_end: request.range_end,
        prefix: false,
        prev_kv: request.prev_kv,
    })
}

/// Converts a delete response.
pub(crate) fn delete_response(
    response: DeleteRangeResponse,
    header: Option<pb::ResponseHeader>,
) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header,
        deleted: response.deleted,
        prev_kvs: response.prev_kvs.into_iter().map(key_value).collect(),
    }
}

/// Converts one transaction condition. As in etcd, `target` says which operand is compared;
/// an operand of another kind (or none) compares as zero or empty.
pub(crate) fn compare(request: pb::Compare) -> Result<Compare, Status> {
    use pb::compare::{CompareResult as PbResult, CompareTarget as PbTarget, TargetUnion};
    if request.key.is_empty() {
        return Err(error::empty_key());
    }
    let result = match PbResult::try_from(request.result) {
        Ok(PbResult::Equal) => CompareResult::Equal,
        Ok(PbResult::NotEqual) => CompareResult::NotEqual,
        Ok(PbResult::Greater) => CompareResult::Greater,
        Ok(PbResult::Less) => CompareResult::Less,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "etcdserver: unknown compare result {}",
                request.result
            )))
        }
    };
    let operand = request.target_union;
    let number =
        |pick: fn(&TargetUnion) -> Option<i64>| operand.as_ref().and_then(pick).unwrap_or(0);
    let target = match PbTarget::try_from(request.target) {
        Ok(PbTarget::Version) => CompareTarget::Version(number(|u| match u {
            TargetUnion::Version(n) => Some(*n),
            _ => None,
        })),
        Ok(PbTarget::Create) => CompareTarget::CreateRevision(number(|u| match u {
            TargetUnion::CreateRevision(n) => Some(*n),
            _ => None,
        })),
        Ok(PbTarget::Mod) => CompareTarget::ModRevision(number(|u| match u {
            TargetUnion::ModRevision(n) => Some(*n),
            _ => None,
        })),
        Ok(PbTarget::Lease) => CompareTarget::Lease(number(|u| match u {
            TargetUnion::Lease(n) => Some(*n),
            _ => None,
        })),
        Ok(PbTarget::Value) => CompareTarget::Value(match operand {
            Some(TargetUnion::Value(value)) => value,
            _ => Vec::new(),
        }),
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "etcdserver: unknown compare target {}",
                request.target
            )))
        }
    };
    Ok(Compare {
        key: request.key,
        range_end: request.range_end,
        prefix: false,
        result,
        target,
    })
}

/// Converts a transaction, refusing nesting deeper than [`MAX_TXN_DEPTH`].
///
/// Inverted ranges and deletes become placeholder reads, whose results the caller replaces
/// (see `kv::InvertedOps`).
pub(crate) fn txn_request(request: &pb::TxnRequest, depth: usize) -> Result<TxnRequest, Status> {
    if depth > MAX_TXN_DEPTH {
        return Err(Status::invalid_argument(format!(
            "etcdserver: txn requests nest at most {MAX_TXN_DEPTH} levels deep"
        )));
    }
    let mut compares = Vec::with_capacity(request.compare.len());
    for condition in &request.compare {
        compares.push(compare(condition.clone())?);
    }
    Ok(TxnRequest {
        compare: compares,
        success: request_ops(&request.success, depth)?,
        failure: request_ops(&request.failure, depth)?,
    })
}

fn request_ops(ops: &[pb::RequestOp], depth: usize) -> Result<Vec<RequestOp>, Status> {
    use pb::request_op::Request;
    let mut converted = Vec::with_capacity(ops.len());
    for op in ops {
        let op = match &op.request {
            Some(Request::RequestRange(range)) => {
                let read = range_request(range)?;
                if is_inverted(&read.key, &read.range_end) {
                    inverted_placeholder(read.key, read.revision)
                } else {
                    RequestOp::Range(read)
                }
            }
            Some(Request::RequestPut(put)) => RequestOp::Put(put_request(put.clone())?),
            Some(Request::RequestDeleteRange(delete)) => {
                let delete = delete_request(delete.clone())?;
                if is_inverted(&delete.key, &delete.range_end) {
                    inverted_placeholder(delete.key, 0)
                } else {
                    RequestOp::DeleteRange(delete)
                }
            }
            Some(Request::RequestTxn(nested)) => RequestOp::Txn(txn_request(nested, depth + 1)?),
            None => {
                return Err(Status::invalid_argument(
                    "etcdserver: txn operation has no request",
                ))
            }
        };
        converted.push(op);
    }
    Ok(converted)
}

/// Converts a transaction response; `header` is the top-level header.
///
/// The headers inside carry only a revision, and it is the one etcd reports: the store's
/// revision at that point of the transaction. etcd writes all of a transaction's changes at
/// `begin + 1`, `begin` being the revision before it, so a read reports `begin` until the
/// transaction has changed something and `begin + 1` after; a put reports `begin + 1`; a
/// delete `begin + 1` once anything changed, itself included; and a nested transaction's own
/// header is empty (etcd-io/etcd `applierV3backend.applyTxn`, `storeTxnWrite`).
pub(crate) fn txn_response(
    response: TxnResponse,
    header: Option<pb::ResponseHeader>,
) -> pb::TxnResponse {
    let end = response.header.revision;
    let begin = if txn_changes(&response) { end - 1 } else { end };
    let mut changed = false;
    convert_txn(response, header, begin, &mut changed)
}

/// Returns true when the transaction wrote anything (so it created a revision).
fn txn_changes(response: &TxnResponse) -> bool {
    response.responses.iter().any(|op| match op {
        ResponseOp::Range(_) => false,
        ResponseOp::Put(_) => true,
        ResponseOp::DeleteRange(delete) => delete.deleted > 0,
        ResponseOp::Txn(nested) => txn_changes(nested),
    })
}

/// Converts the responses of one (possibly nested) transaction in order; `changed` says
/// whether an earlier operation of the whole transaction wrote anything.
fn convert_txn(
    response: TxnResponse,
    header: Option<pb::ResponseHeader>,
    begin: i64,
    changed: &mut bool,
) -> pb::TxnResponse {
    use pb::response_op::Response;
    let at = |changed: bool| {
        Some(pb::ResponseHeader {
            revision: if changed { begin + 1 } else { begin },
            ..Default::default()
        })
    };
    let mut responses = Vec::with_capacity(response.responses.len());
    for op in response.responses {
        let converted = match op {
            ResponseOp::Range(range) => {
                Response::ResponseRange(range_response(range, at(*changed)))
            }
            ResponseOp::Put(put) => {
                *changed = true;
                Response::ResponsePut(put_response(put, at(true)))
            }
            ResponseOp::DeleteRange(delete) => {
                *changed |= delete.deleted > 0;
                Response::ResponseDeleteRange(delete_response(delete, at(*changed)))
            }
            ResponseOp::Txn(nested) => Response::ResponseTxn(convert_txn(
                nested,
                Some(pb::ResponseHeader::default()),
                begin,
                changed,
            )),
        };
        responses.push(pb::ResponseOp {
            response: Some(converted),
        });
    }
    pb::TxnResponse {
        header,
        succeeded: response.succeeded,
        responses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::compare::{CompareResult as PbResult, CompareTarget as PbTarget, TargetUnion};

    #[test]
    fn compare_reads_the_operand_named_by_target() {
        let condition = pb::Compare {
            result: PbResult::Greater as i32,
            target: PbTarget::Mod as i32,
            key: b"k".to_vec(),
            range_end: vec![],
            target_union: Some(TargetUnion::ModRevision(7)),
        };
        let converted = compare(condition).unwrap();
        assert_eq!(converted.result, CompareResult::Greater);
        assert_eq!(converted.target, CompareTarget::ModRevision(7));

        let mismatched = pb::Compare {
            result: PbResult::Equal as i32,
            target: PbTarget::Version as i32,
            key: b"k".to_vec(),
            range_end: vec![],
            target_union: Some(TargetUnion::Value(b"v".to_vec())),
        };
        assert_eq!(
            compare(mismatched).unwrap().target,
            CompareTarget::Version(0)
        );
    }

    #[test]
    fn bad_enums_and_empty_keys_are_refused() {
        let unknown = pb::Compare {
            result: 9,
            key: b"k".to_vec(),
            ..Default::default()
        };
        assert_eq!(
            compare(unknown).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let empty = pb::PutRequest::default();
        assert_eq!(
            put_request(empty).unwrap_err().message(),
            "etcdserver: key is not provided"
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut txn = pb::TxnRequest::default();
        for _ in 0..=MAX_TXN_DEPTH {
            txn = pb::TxnRequest {
                success: vec![pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestTxn(txn)),
                }],
                ..Default::default()
            };
        }
        assert!(txn_request(&txn, 0).is_err());
        let shallow = pb::TxnRequest::default();
        assert!(txn_request(&shallow, 0).is_ok());
    }

    fn revisions(response: &pb::TxnResponse) -> Vec<i64> {
        use pb::response_op::Response;
        let mut found = Vec::new();
        for op in &response.responses {
            match op.response.as_ref().expect("response") {
                Response::ResponseRange(r) => found.push(r.header.as_ref().unwrap().revision),
                Response::ResponsePut(r) => found.push(r.header.as_ref().unwrap().revision),
                Response::ResponseDeleteRange(r) => found.push(r.header.as_ref().unwrap().revision),
                Response::ResponseTxn(r) => {
                    found.push(r.header.as_ref().unwrap().revision);
                    found.extend(revisions(r));
                }
            }
        }
        found
    }

    #[test]
    fn nested_headers_carry_the_revision_etcd_reports_at_each_step() {
        use strata_proto::kv::ResponseHeader;
        let at = |revision| ResponseHeader {
            revision,
            ..Default::default()
        };
        let deleted = |n| {
            ResponseOp::DeleteRange(DeleteRangeResponse {
                header: at(11),
                deleted: n,
                prev_kvs: vec![],
            })
        };
        // Before any change reads and empty deletes see the old revision (10); after the
        // put everything sees the new one (11); a nested txn's own header is empty.
        let written = TxnResponse {
            header: at(11),
            succeeded: true,
            responses: vec![
                ResponseOp::Range(RangeResponse::default()),
                deleted(0),
                ResponseOp::Put(PutResponse::default()),
                ResponseOp::Range(RangeResponse::default()),
                ResponseOp::Txn(TxnResponse {
                    header: at(11),
                    succeeded: true,
                    responses: vec![deleted(0)],
                }),
            ],
        };
        let converted = txn_response(written, None);
        assert_eq!(revisions(&converted), [10, 10, 11, 11, 0, 11]);

        let deleting = TxnResponse {
            header: at(11),
            succeeded: true,
            responses: vec![ResponseOp::Range(RangeResponse::default()), deleted(2)],
        };
        assert_eq!(revisions(&txn_response(deleting, None)), [10, 11]);

        let reading = TxnResponse {
            header: at(10),
            succeeded: false,
            responses: vec![ResponseOp::Range(RangeResponse::default()), deleted(0)],
        };
        assert_eq!(revisions(&txn_response(reading, None)), [10, 10]);
    }

    #[test]
    fn inverted_ranges_in_a_txn_become_placeholder_reads() {
        use pb::request_op::Request;
        let txn = pb::TxnRequest {
            success: vec![
                pb::RequestOp {
                    request: Some(Request::RequestDeleteRange(pb::DeleteRangeRequest {
                        key: b"b".to_vec(),
                        range_end: b"a".to_vec(),
                        ..Default::default()
                    })),
                },
                pb::RequestOp {
                    request: Some(Request::RequestRange(pb::RangeRequest {
                        key: b"b".to_vec(),
                        range_end: b"b".to_vec(),
                        revision: 4,
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        };
        let converted = txn_request(&txn, 0).unwrap();
        let expected = |revision| {
            RequestOp::Range(RangeRequest {
                key: b"b".to_vec(),
                revision,
                count_only: true,
                ..Default::default()
            })
        };
        assert_eq!(converted.success, [expected(0), expected(4)]);
    }
}
