use crate::{TestServer, MAX_REQUEST_BYTES};
use strata_etcd::pb::etcdserverpb::request_op::Request as Op;
use strata_etcd::pb::etcdserverpb::{PutRequest, RangeRequest, RequestOp, TxnRequest};
use strata_etcd::GRPC_OVERHEAD_BYTES;

fn put(key: &str, value: Vec<u8>) -> PutRequest {
    PutRequest {
        key: key.into(),
        value,
        ..Default::default()
    }
}

#[tokio::test]
async fn oversized_requests_are_refused_and_the_server_keeps_serving() {
    let server = TestServer::start().await;
    let mut kv = server.kv();

    let over_limit = put("big", vec![7; MAX_REQUEST_BYTES + 1]);
    let status = kv.put(over_limit).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "etcdserver: request is too large");

    let past_decoding = put("huge", vec![7; MAX_REQUEST_BYTES + GRPC_OVERHEAD_BYTES + 1]);
    let status = kv.put(past_decoding).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);

    kv.put(put("small", b"ok".to_vec())).await.unwrap();
}

#[tokio::test]
async fn empty_keys_and_duplicate_txn_keys_get_etcds_errors() {
    let server = TestServer::start().await;
    let mut kv = server.kv();
    let status = kv.put(put("", b"v".to_vec())).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "etcdserver: key is not provided");
    let status = kv.range(RangeRequest::default()).await.unwrap_err();
    assert_eq!(status.message(), "etcdserver: key is not provided");

    let twice = TxnRequest {
        success: vec![
            RequestOp {
                request: Some(Op::RequestPut(put("k", b"1".to_vec()))),
            },
            RequestOp {
                request: Some(Op::RequestPut(put("k", b"2".to_vec()))),
            },
        ],
        ..Default::default()
    };
    let status = kv.txn(twice).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "etcdserver: duplicate key given in txn request"
    );

    let empty_op = TxnRequest {
        success: vec![RequestOp { request: None }],
        ..Default::default()
    };
    assert_eq!(
        kv.txn(empty_op).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
}

#[tokio::test]
async fn deeply_nested_txns_are_refused() {
    let server = TestServer::start().await;
    let mut txn = TxnRequest::default();
    for _ in 0..40 {
        txn = TxnRequest {
            success: vec![RequestOp {
                request: Some(Op::RequestTxn(txn)),
            }],
            ..Default::default()
        };
    }
    let status = server.kv().txn(txn).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}
