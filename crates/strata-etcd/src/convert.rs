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
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
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

/// A header with only the revision, as etcd puts inside transaction responses.
fn bare_header(header: &ResponseHeader) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        revision: header.revision,
        ..Default::default()
    })
}

/// Converts a range request's plain fields (sorting and revision filters are applied by
/// [`RangePlan`](crate::kv::RangePlan)).
pub(crate) fn range_request(request: &pb::RangeRequest) -> Result<RangeRequest, Status> {
    if request.key.is_empty() {
        return Err(error::empty_key());
    }
    Ok(RangeRequest {
        key: request.key.clone(),
        range_end: request.range_end.clone(),
        prefix: false,
        limit: request.limit,
        revision: request.revision,
        keys_only: request.keys_only,
        count_only: request.count_only,
        serializable: request.serializable,
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

/// Converts a put. `ignore_value` and `ignore_lease` are handled by the KV service before
/// this, at the top level; inside a transaction they are refused.
pub(crate) fn put_request(request: pb::PutRequest) -> Result<PutRequest, Status> {
    if request.key.is_empty() {
        return Err(error::empty_key());
    }
    if request.ignore_value || request.ignore_lease {
        return Err(Status::invalid_argument(
            "etcdserver: ignore_value and ignore_lease are not supported inside a txn by strata",
        ));
    }
    Ok(PutRequest {
        key: request.key,
        value: request.value,
        lease: request.lease,
        prev_kv: request.prev_kv,
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
/// Range operations are converted with their plain fields only; the caller keeps the
/// original requests to sort and filter their results (see `kv::TxnPlan`).
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
            Some(Request::RequestRange(range)) => RequestOp::Range(range_request(range)?),
            Some(Request::RequestPut(put)) => RequestOp::Put(put_request(put.clone())?),
            Some(Request::RequestDeleteRange(delete)) => {
                RequestOp::DeleteRange(delete_request(delete.clone())?)
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

/// Converts a transaction response; `header` is the top-level header (nested responses get a
/// revision-only header, as in etcd).
pub(crate) fn txn_response(
    response: TxnResponse,
    header: Option<pb::ResponseHeader>,
) -> pb::TxnResponse {
    use pb::response_op::Response;
    let responses = response
        .responses
        .into_iter()
        .map(|op| {
            let converted = match op {
                ResponseOp::Range(range) => {
                    let nested = bare_header(&range.header);
                    Response::ResponseRange(range_response(range, nested))
                }
                ResponseOp::Put(put) => {
                    let nested = bare_header(&put.header);
                    Response::ResponsePut(put_response(put, nested))
                }
                ResponseOp::DeleteRange(delete) => {
                    let nested = bare_header(&delete.header);
                    Response::ResponseDeleteRange(delete_response(delete, nested))
                }
                ResponseOp::Txn(txn) => {
                    let nested = bare_header(&txn.header);
                    Response::ResponseTxn(txn_response(txn, nested))
                }
            };
            pb::ResponseOp {
                response: Some(converted),
            }
        })
        .collect();
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
}
