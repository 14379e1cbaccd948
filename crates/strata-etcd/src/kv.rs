//! The `etcdserverpb.KV` service: Range, Put, DeleteRange, Txn, Compact.
//!
//! A thin translation: sorting, revision filters, `ignore_value` and `ignore_lease` are
//! applied by the store (atomically, in apply, for writes). What stays here is etcd's wire
//! convention for inverted ranges (`range_end` not above `key`), which etcd answers with
//! nothing rather than an error.

use crate::context::Context;
use crate::convert::{self, is_inverted};
use crate::error::{self, Subject};
use crate::pb::etcdserverpb as pb;
use strata_auth::kv as needs;
use strata_proto::kv::{
    CompactRequest, DeleteRangeResponse, RangeResponse, ResponseOp, TxnResponse,
};
use tonic::{Request, Response, Status};

/// Serves the KV service.
pub(crate) struct KvService {
    ctx: Context,
}

impl KvService {
    /// Returns the service over the shared context.
    pub(crate) fn new(ctx: Context) -> Self {
        KvService { ctx }
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let who = self.ctx.who(&request).await?;
        let request = request.into_inner();
        self.ctx.check_size(&request)?;
        let read = convert::range_request(&request)?;
        self.ctx.allow(&who, &needs::range(&read), "range")?;
        if is_inverted(&request.key, &request.range_end) {
            return Ok(Response::new(pb::RangeResponse {
                header: Some(self.ctx.current_header()),
                ..Default::default()
            }));
        }
        let result = self
            .ctx
            .backend
            .range(read)
            .await
            .map_err(|e| self.ctx.status(e, Subject::Key))?;
        let header = self.ctx.header_from(&result.header);
        Ok(Response::new(convert::range_response(result, Some(header))))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let who = self.ctx.who(&request).await?;
        let request = request.into_inner();
        self.ctx.check_size(&request)?;
        if request.key.is_empty() {
            return Err(error::empty_key());
        }
        let put = convert::put_request(request)?;
        self.ctx.allow(&who, &needs::put(&put), "put")?;
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
        let who = self.ctx.who(&request).await?;
        let request = request.into_inner();
        self.ctx.check_size(&request)?;
        if !request.key.is_empty() && is_inverted(&request.key, &request.range_end) {
            return Ok(Response::new(pb::DeleteRangeResponse {
                header: Some(self.ctx.current_header()),
                ..Default::default()
            }));
        }
        let delete = convert::delete_request(request)?;
        self.ctx.allow(&who, &needs::delete(&delete), "delete")?;
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
        let who = self.ctx.who(&request).await?;
        let request = request.into_inner();
        self.ctx.check_size(&request)?;
        let txn = convert::txn_request(&request, 0)?;
        self.ctx.allow(&who, &needs::txn(&txn), "txn")?;
        let plan = InvertedOps::new(&request);
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
        let who = self.ctx.who(&request).await?;
        self.ctx.allow_root(&who, "compact")?;
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

/// Where a transaction has inverted ranges or deletes, in the shape of its branches: they
/// go to the store as placeholder reads (see `convert::txn_request`), whose results are
/// replaced here by the empty ones etcd returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct InvertedOps {
    /// One entry per operation of the success branch.
    success: Vec<OpKind>,
    /// One entry per operation of the failure branch.
    failure: Vec<OpKind>,
}

/// What one transaction operation needs after the store answered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OpKind {
    /// A nested transaction.
    Txn(InvertedOps),
    /// An inverted range: etcd returns nothing.
    EmptyRange,
    /// An inverted delete: etcd deletes nothing.
    EmptyDelete,
    /// Returned as it is.
    Other,
}

impl InvertedOps {
    /// Reads a transaction. Call after [`convert::txn_request`], which bounds the nesting.
    pub(crate) fn new(request: &pb::TxnRequest) -> Self {
        InvertedOps {
            success: op_kinds(&request.success),
            failure: op_kinds(&request.failure),
        }
    }

    /// Replaces the placeholder results of the branch that ran.
    pub(crate) fn finish(&self, response: &mut TxnResponse) {
        let kinds = if response.succeeded {
            &self.success
        } else {
            &self.failure
        };
        for (kind, result) in kinds.iter().zip(response.responses.iter_mut()) {
            match (kind, result) {
                (OpKind::Txn(nested), ResponseOp::Txn(txn)) => nested.finish(txn),
                (OpKind::EmptyRange, result) => {
                    *result = ResponseOp::Range(RangeResponse::default());
                }
                (OpKind::EmptyDelete, result) => {
                    *result = ResponseOp::DeleteRange(DeleteRangeResponse::default());
                }
                _ => {}
            }
        }
    }
}

fn op_kinds(ops: &[pb::RequestOp]) -> Vec<OpKind> {
    use pb::request_op::Request;
    ops.iter()
        .map(|op| match &op.request {
            Some(Request::RequestRange(range)) if is_inverted(&range.key, &range.range_end) => {
                OpKind::EmptyRange
            }
            Some(Request::RequestDeleteRange(delete))
                if is_inverted(&delete.key, &delete.range_end) =>
            {
                OpKind::EmptyDelete
            }
            Some(Request::RequestTxn(nested)) => OpKind::Txn(InvertedOps::new(nested)),
            _ => OpKind::Other,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_sort_enums_are_refused() {
        let request = pb::RangeRequest {
            key: b"a".to_vec(),
            sort_order: 7,
            ..Default::default()
        };
        let status = convert::range_request(&request).unwrap_err();
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
