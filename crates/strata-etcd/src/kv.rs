//! The `etcdserverpb.KV` service: Range, Put, DeleteRange, Txn, Compact.
//!
//! Sorting and the min/max revision filters of Range are done here, on the result the
//! backend returns, exactly as etcd does them after its MVCC read: fetch everything in the
//! range, filter, sort, then cut at `limit`. `count` stays the number of keys in the range.

use crate::context::Context;
use crate::convert::{self, is_inverted};
use crate::error::{self, Subject};
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use std::cmp::Ordering;
use strata_proto::kv::{
    CompactRequest, Compare, CompareResult, CompareTarget, DeleteRangeResponse, KeyValue,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp, TxnRequest,
    TxnResponse,
};
use tonic::{Request, Response, Status};

/// How often a put with `ignore_value`/`ignore_lease` retries its read-then-swap when the
/// key changes in between. Each attempt only fails because another write won, so a few are
/// plenty; past that the client gets `aborted` and may retry.
const IGNORE_PUT_ATTEMPTS: usize = 16;

/// Serves the KV service.
pub(crate) struct KvService {
    ctx: Context,
}

impl KvService {
    /// Returns the service over the shared context.
    pub(crate) fn new(ctx: Context) -> Self {
        KvService { ctx }
    }

    async fn put_keeping_fields(&self, request: pb::PutRequest) -> Result<pb::PutResponse, Status> {
        if request.ignore_value && !request.value.is_empty() {
            return Err(error::value_provided());
        }
        if request.ignore_lease && request.lease != 0 {
            return Err(error::lease_provided());
        }
        for _ in 0..IGNORE_PUT_ATTEMPTS {
            let read = RangeRequest {
                key: request.key.clone(),
                ..Default::default()
            };
            let current = self
                .ctx
                .backend
                .range(read)
                .await
                .map_err(|e| self.ctx.status(e, Subject::Key))?;
            let Some(existing) = current.kvs.into_iter().next() else {
                return Err(error::key_not_found());
            };
            let put = PutRequest {
                key: request.key.clone(),
                value: if request.ignore_value {
                    existing.value
                } else {
                    request.value.clone()
                },
                lease: if request.ignore_lease {
                    existing.lease
                } else {
                    request.lease
                },
                prev_kv: request.prev_kv,
            };
            // Swap only if nobody wrote the key since the read, so the kept value or lease
            // is the one current at the write, as etcd guarantees.
            let swap = TxnRequest {
                compare: vec![Compare {
                    key: request.key.clone(),
                    range_end: Vec::new(),
                    prefix: false,
                    result: CompareResult::Equal,
                    target: CompareTarget::ModRevision(existing.mod_revision),
                }],
                success: vec![RequestOp::Put(put)],
                failure: Vec::new(),
            };
            let outcome = self
                .ctx
                .backend
                .txn(swap)
                .await
                .map_err(|e| self.ctx.status(e, Subject::Key))?;
            if !outcome.succeeded {
                continue;
            }
            let header = self.ctx.header_from(&outcome.header);
            let written = match outcome.responses.into_iter().next() {
                Some(ResponseOp::Put(put)) => put,
                _ => PutResponse::default(),
            };
            return Ok(convert::put_response(written, Some(header)));
        }
        Err(Status::aborted(
            "etcdserver: the key kept changing during a put with ignore_value or ignore_lease; retry",
        ))
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let request = request.into_inner();
        self.ctx.check_size(&request)?;
        let mut read = convert::range_request(&request)?;
        let plan = RangePlan::new(&request)?;
        if is_inverted(&request.key, &request.range_end) {
            return Ok(Response::new(pb::RangeResponse {
                header: Some(self.ctx.current_header()),
                ..Default::default()
            }));
        }
        plan.adjust(&mut read);
        let mut result = self
            .ctx
            .backend
            .range(read)
            .await
            .map_err(|e| self.ctx.status(e, Subject::Key))?;
        plan.finish(&mut result);
        let header = self.ctx.header_from(&result.header);
        Ok(Response::new(convert::range_response(result, Some(header))))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let request = request.into_inner();
        self.ctx.check_size(&request)?;
        if request.key.is_empty() {
            return Err(error::empty_key());
        }
        if request.ignore_value || request.ignore_lease {
            return self.put_keeping_fields(request).await.map(Response::new);
        }
        let put = convert::put_request(request)?;
        let result = self
            .ctx
            .backend
            .put(put)
            .await
            .map_err(|e| self.ctx.status(e, Subject::Key))?;
        let header = self.ctx.header_from(&result.header);
        Ok(Response::new(convert::put_response(result, Some(header))))
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let request = request.into_inner();
        self.ctx.check_size(&request)?;
        if !request.key.is_empty() && is_inverted(&request.key, &request.range_end) {
            return Ok(Response::new(pb::DeleteRangeResponse {
                header: Some(self.ctx.current_header()),
                ..Default::default()
            }));
        }
        let delete = convert::delete_request(request)?;
        let result = self
            .ctx
            .backend
            .delete_range(delete)
            .await
            .map_err(|e| self.ctx.status(e, Subject::Key))?;
        let header = self.ctx.header_from(&result.header);
        Ok(Response::new(convert::delete_response(
            result,
            Some(header),
        )))
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let request = request.into_inner();
        self.ctx.check_size(&request)?;
        let mut txn = convert::txn_request(&request, 0)?;
        let plan = TxnPlan::new(&request)?;
        plan.adjust(&mut txn);
        let mut result = self
            .ctx
            .backend
            .txn(txn)
            .await
            .map_err(|e| self.ctx.status(e, Subject::Key))?;
        plan.finish(&mut result);
        let header = self.ctx.header_from(&result.header);
        Ok(Response::new(convert::txn_response(result, Some(header))))
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let request = request.into_inner();
        // `physical` asks to wait until the compaction is on disk; Strata's compaction is
        // applied with the log entry, so every successful compaction already is.
        let compact = CompactRequest {
            revision: request.revision,
        };
        let result = self
            .ctx
            .backend
            .compact(compact)
            .await
            .map_err(|e| self.ctx.status(e, Subject::Key))?;
        let header = self.ctx.header_from(&result.header);
        Ok(Response::new(pb::CompactionResponse {
            header: Some(header),
        }))
    }
}

/// What etcd does to a range result after reading it: revision filters, sorting, the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RangePlan {
    /// Sort direction; `None` means the natural key order.
    order: SortOrder,
    /// What to sort by.
    target: SortTarget,
    /// The client's limit (0: none), applied after filtering and sorting.
    limit: i64,
    /// The client asked for keys without values.
    keys_only: bool,
    /// Keep only keys with `mod_revision >=` this (0: no bound).
    min_mod_revision: i64,
    /// Keep only keys with `mod_revision <=` this (0: no bound).
    max_mod_revision: i64,
    /// Keep only keys with `create_revision >=` this (0: no bound).
    min_create_revision: i64,
    /// Keep only keys with `create_revision <=` this (0: no bound).
    max_create_revision: i64,
    /// Only the count was asked for: nothing to filter or sort.
    count_only: bool,
}

impl RangePlan {
    /// Reads the plan from a request, refusing unknown sort enums as etcd does.
    pub(crate) fn new(request: &pb::RangeRequest) -> Result<Self, Status> {
        let order =
            SortOrder::try_from(request.sort_order).map_err(|_| error::invalid_sort_option())?;
        let target =
            SortTarget::try_from(request.sort_target).map_err(|_| error::invalid_sort_option())?;
        // etcd: a sort target other than the key without an order means ascending.
        let order = if order == SortOrder::None && target != SortTarget::Key {
            SortOrder::Ascend
        } else {
            order
        };
        Ok(RangePlan {
            order,
            target,
            limit: request.limit,
            keys_only: request.keys_only,
            min_mod_revision: request.min_mod_revision,
            max_mod_revision: request.max_mod_revision,
            min_create_revision: request.min_create_revision,
            max_create_revision: request.max_create_revision,
            count_only: request.count_only,
        })
    }

    fn filters(&self) -> bool {
        self.min_mod_revision != 0
            || self.max_mod_revision != 0
            || self.min_create_revision != 0
            || self.max_create_revision != 0
    }

    fn sorts(&self) -> bool {
        // Ascending by key is the order the store returns.
        !(self.order == SortOrder::None
            || (self.order == SortOrder::Ascend && self.target == SortTarget::Key))
    }

    /// True when the backend's result can be returned as it is.
    fn is_identity(&self) -> bool {
        self.count_only || !(self.filters() || self.sorts())
    }

    /// Widens the backend request so the plan sees every key it may keep: no limit, and
    /// values when sorting by value.
    pub(crate) fn adjust(&self, request: &mut RangeRequest) {
        if self.is_identity() {
            return;
        }
        request.limit = 0;
        if self.target == SortTarget::Value && self.order != SortOrder::None {
            request.keys_only = false;
        }
    }

    /// Filters, sorts and cuts the backend's result.
    pub(crate) fn finish(&self, response: &mut RangeResponse) {
        if self.is_identity() {
            return;
        }
        response.kvs.retain(|kv| self.keeps(kv));
        if self.sorts() {
            let target = self.target;
            let descending = self.order == SortOrder::Descend;
            // A stable sort keeps equal elements in key order.
            response.kvs.sort_by(|a, b| {
                let ordering = compare_by(target, a, b);
                if descending {
                    ordering.reverse()
                } else {
                    ordering
                }
            });
        }
        let limit = usize::try_from(self.limit).unwrap_or(0);
        response.more = limit > 0 && response.kvs.len() > limit;
        if response.more {
            response.kvs.truncate(limit);
        }
        if self.keys_only {
            for kv in &mut response.kvs {
                kv.value.clear();
            }
        }
    }

    fn keeps(&self, kv: &KeyValue) -> bool {
        let above = |value: i64, bound: i64| bound == 0 || value >= bound;
        let below = |value: i64, bound: i64| bound == 0 || value <= bound;
        above(kv.mod_revision, self.min_mod_revision)
            && below(kv.mod_revision, self.max_mod_revision)
            && above(kv.create_revision, self.min_create_revision)
            && below(kv.create_revision, self.max_create_revision)
    }
}

fn compare_by(target: SortTarget, a: &KeyValue, b: &KeyValue) -> Ordering {
    match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    }
}

/// The range plans of a transaction's operations, in the shape of its branches, so the
/// results of ranges inside a txn are sorted and filtered like top-level ones.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct TxnPlan {
    /// One plan per operation of the success branch.
    success: Vec<OpPlan>,
    /// One plan per operation of the failure branch.
    failure: Vec<OpPlan>,
}

/// The plan of one transaction operation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OpPlan {
    /// A range: sorted and filtered like a top-level one.
    Range(RangePlan),
    /// A nested transaction.
    Txn(TxnPlan),
    /// A range whose end is not above its key: etcd returns nothing. The backend gets a
    /// placeholder read instead (see `convert::txn_request`), whose result is replaced.
    EmptyRange,
    /// The same for a delete: etcd deletes nothing.
    EmptyDelete,
    /// A put or a delete: returned as it is.
    Other,
}

impl TxnPlan {
    /// Reads the plans of every range in the transaction. Call after
    /// [`convert::txn_request`], which bounds the nesting.
    pub(crate) fn new(request: &pb::TxnRequest) -> Result<Self, Status> {
        Ok(TxnPlan {
            success: op_plans(&request.success)?,
            failure: op_plans(&request.failure)?,
        })
    }

    /// Widens the transaction's range requests (see [`RangePlan::adjust`]).
    pub(crate) fn adjust(&self, request: &mut TxnRequest) {
        adjust_ops(&self.success, &mut request.success);
        adjust_ops(&self.failure, &mut request.failure);
    }

    /// Finishes the results of the branch that ran.
    pub(crate) fn finish(&self, response: &mut TxnResponse) {
        let plans = if response.succeeded {
            &self.success
        } else {
            &self.failure
        };
        for (plan, result) in plans.iter().zip(response.responses.iter_mut()) {
            match (plan, result) {
                (OpPlan::Range(plan), ResponseOp::Range(range)) => plan.finish(range),
                (OpPlan::Txn(plan), ResponseOp::Txn(txn)) => plan.finish(txn),
                (OpPlan::EmptyRange, result) => {
                    *result = ResponseOp::Range(RangeResponse::default());
                }
                (OpPlan::EmptyDelete, result) => {
                    *result = ResponseOp::DeleteRange(DeleteRangeResponse::default());
                }
                _ => {}
            }
        }
    }
}

fn op_plans(ops: &[pb::RequestOp]) -> Result<Vec<OpPlan>, Status> {
    use pb::request_op::Request;
    let mut plans = Vec::with_capacity(ops.len());
    for op in ops {
        let plan = match &op.request {
            Some(Request::RequestRange(range)) => {
                let plan = RangePlan::new(range)?;
                if is_inverted(&range.key, &range.range_end) {
                    OpPlan::EmptyRange
                } else {
                    OpPlan::Range(plan)
                }
            }
            Some(Request::RequestDeleteRange(delete))
                if is_inverted(&delete.key, &delete.range_end) =>
            {
                OpPlan::EmptyDelete
            }
            Some(Request::RequestTxn(nested)) => OpPlan::Txn(TxnPlan::new(nested)?),
            _ => OpPlan::Other,
        };
        plans.push(plan);
    }
    Ok(plans)
}

fn adjust_ops(plans: &[OpPlan], ops: &mut [RequestOp]) {
    for (plan, op) in plans.iter().zip(ops.iter_mut()) {
        match (plan, op) {
            (OpPlan::Range(plan), RequestOp::Range(range)) => plan.adjust(range),
            (OpPlan::Txn(plan), RequestOp::Txn(txn)) => plan.adjust(txn),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, create: i64, modified: i64, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            create_revision: create,
            mod_revision: modified,
            version: 1,
            value: value.into(),
            lease: 0,
        }
    }

    fn keys(response: &RangeResponse) -> Vec<String> {
        response
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect()
    }

    fn sample() -> RangeResponse {
        RangeResponse {
            kvs: vec![kv("a", 5, 9, "z"), kv("b", 3, 3, "x"), kv("c", 7, 7, "y")],
            count: 3,
            ..Default::default()
        }
    }

    #[test]
    fn sorts_by_target_and_order_then_limits() {
        let request = pb::RangeRequest {
            key: b"a".to_vec(),
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Create as i32,
            limit: 2,
            ..Default::default()
        };
        let plan = RangePlan::new(&request).unwrap();
        let mut read = RangeRequest {
            limit: 2,
            ..Default::default()
        };
        plan.adjust(&mut read);
        assert_eq!(read.limit, 0);
        let mut result = sample();
        plan.finish(&mut result);
        assert_eq!(keys(&result), ["c", "a"]);
        assert!(result.more);
        assert_eq!(result.count, 3);
    }

    #[test]
    fn a_target_without_order_sorts_ascending() {
        let request = pb::RangeRequest {
            sort_target: SortTarget::Value as i32,
            keys_only: true,
            ..Default::default()
        };
        let plan = RangePlan::new(&request).unwrap();
        let mut read = RangeRequest {
            keys_only: true,
            ..Default::default()
        };
        plan.adjust(&mut read);
        assert!(!read.keys_only, "values are needed to sort by value");
        let mut result = sample();
        plan.finish(&mut result);
        assert_eq!(keys(&result), ["b", "c", "a"]);
        assert!(result.kvs.iter().all(|kv| kv.value.is_empty()));
    }

    #[test]
    fn revision_filters_keep_the_count() {
        let request = pb::RangeRequest {
            max_create_revision: 5,
            min_mod_revision: 4,
            ..Default::default()
        };
        let plan = RangePlan::new(&request).unwrap();
        let mut result = sample();
        plan.finish(&mut result);
        assert_eq!(keys(&result), ["a"]);
        assert_eq!(result.count, 3);
        assert!(!result.more);
    }

    #[test]
    fn unknown_sort_enums_are_refused() {
        let request = pb::RangeRequest {
            sort_order: 7,
            ..Default::default()
        };
        let status = RangePlan::new(&request).unwrap_err();
        assert_eq!(status.message(), "etcdserver: invalid sort option");
    }

    #[test]
    fn inverted_ranges_are_empty_not_errors() {
        assert!(is_inverted(b"b", b"a"));
        assert!(is_inverted(b"b", b"b"));
        assert!(!is_inverted(b"a", b"b"));
        assert!(!is_inverted(b"a", b""));
        assert!(!is_inverted(b"a", b"\0"));
    }
}
