use crate::fake::{CLUSTER_ID, MEMBER_ID, TERM};
use crate::TestServer;
use strata_etcd::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use strata_etcd::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use strata_etcd::pb::etcdserverpb::request_op::Request as Op;
use strata_etcd::pb::etcdserverpb::response_op::Response as OpResponse;
use strata_etcd::pb::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

fn get(key: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        ..Default::default()
    }
}

fn prefix(key: &str) -> RangeRequest {
    let mut end = key.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    RangeRequest {
        key: key.into(),
        range_end: end,
        ..Default::default()
    }
}

#[tokio::test]
async fn put_get_prefix_revision_delete() {
    let server = TestServer::start().await;
    let mut kv = server.kv();

    let first = kv.put(put("app/a", "1")).await.unwrap().into_inner();
    let header = first.header.expect("header");
    assert_eq!(header.cluster_id, CLUSTER_ID);
    assert_eq!(header.member_id, MEMBER_ID);
    assert_eq!(header.raft_term, TERM);
    assert_eq!(header.revision, 2);
    kv.put(put("app/b", "2")).await.unwrap();
    let update = PutRequest {
        prev_kv: true,
        ..put("app/a", "3")
    };
    let updated = kv.put(update).await.unwrap().into_inner();
    assert_eq!(updated.prev_kv.expect("prev kv").value, b"1");

    let got = kv.range(get("app/a")).await.unwrap().into_inner();
    assert_eq!(got.count, 1);
    let value = &got.kvs[0];
    assert_eq!(
        (value.create_revision, value.mod_revision, value.version),
        (2, 4, 2)
    );
    assert_eq!(got.header.unwrap().revision, 4);

    let listed = kv.range(prefix("app/")).await.unwrap().into_inner();
    let keys: Vec<_> = listed.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, [b"app/a".to_vec(), b"app/b".to_vec()]);

    let old = RangeRequest {
        revision: 2,
        ..get("app/a")
    };
    let at_two = kv.range(old).await.unwrap().into_inner();
    assert_eq!(at_two.kvs[0].value, b"1");

    let all_from = RangeRequest {
        key: b"\0".to_vec(),
        range_end: b"\0".to_vec(),
        count_only: true,
        ..Default::default()
    };
    assert_eq!(kv.range(all_from).await.unwrap().into_inner().count, 2);

    let delete = DeleteRangeRequest {
        key: b"app/".to_vec(),
        range_end: b"app0".to_vec(),
        prev_kv: true,
    };
    let deleted = kv.delete_range(delete).await.unwrap().into_inner();
    assert_eq!(deleted.deleted, 2);
    assert_eq!(deleted.prev_kvs.len(), 2);
    assert!(kv
        .range(get("app/a"))
        .await
        .unwrap()
        .into_inner()
        .kvs
        .is_empty());
}

#[tokio::test]
async fn sorting_limits_and_revision_filters() {
    let server = TestServer::start().await;
    let mut kv = server.kv();
    kv.put(put("s/c", "x")).await.unwrap();
    kv.put(put("s/a", "z")).await.unwrap();
    kv.put(put("s/b", "y")).await.unwrap();

    let by_create_desc = RangeRequest {
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Create as i32,
        limit: 2,
        ..prefix("s/")
    };
    let result = kv.range(by_create_desc).await.unwrap().into_inner();
    let keys: Vec<_> = result.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, [b"s/b".to_vec(), b"s/a".to_vec()]);
    assert!(result.more);
    assert_eq!(result.count, 3);

    let by_value = RangeRequest {
        sort_target: SortTarget::Value as i32,
        ..prefix("s/")
    };
    let result = kv.range(by_value).await.unwrap().into_inner();
    let values: Vec<_> = result.kvs.iter().map(|kv| kv.value.clone()).collect();
    assert_eq!(values, [b"x".to_vec(), b"y".to_vec(), b"z".to_vec()]);

    // What etcd's lock recipe asks: the newest waiter created before revision 3.
    let before = RangeRequest {
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Create as i32,
        max_create_revision: 3,
        limit: 1,
        ..prefix("s/")
    };
    let result = kv.range(before).await.unwrap().into_inner();
    assert_eq!(result.kvs.len(), 1);
    assert_eq!(result.kvs[0].key, b"s/a");

    let inverted = RangeRequest {
        key: b"s/z".to_vec(),
        range_end: b"s/a".to_vec(),
        ..Default::default()
    };
    let empty = kv.range(inverted).await.unwrap().into_inner();
    assert!(empty.kvs.is_empty());
    assert_eq!(empty.count, 0);
}

#[tokio::test]
async fn txn_compare_and_swap() {
    let server = TestServer::start().await;
    let mut kv = server.kv();
    let create_if_absent = |value: &str| TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: b"leader".to_vec(),
            range_end: vec![],
            target_union: Some(TargetUnion::CreateRevision(0)),
        }],
        success: vec![RequestOp {
            request: Some(Op::RequestPut(put("leader", value))),
        }],
        failure: vec![RequestOp {
            request: Some(Op::RequestRange(get("leader"))),
        }],
    };
    let first = kv.txn(create_if_absent("me")).await.unwrap().into_inner();
    assert!(first.succeeded);
    assert_eq!(first.header.unwrap().member_id, MEMBER_ID);
    let second = kv.txn(create_if_absent("you")).await.unwrap().into_inner();
    assert!(!second.succeeded);
    let Some(OpResponse::ResponseRange(range)) = &second.responses[0].response else {
        panic!("expected a range response, got {:?}", second.responses);
    };
    assert_eq!(range.kvs[0].value, b"me");
}

#[tokio::test]
async fn compaction_hides_history() {
    let server = TestServer::start().await;
    let mut kv = server.kv();
    kv.put(put("c", "1")).await.unwrap();
    kv.put(put("c", "2")).await.unwrap();
    let compacted = kv
        .compact(CompactionRequest {
            revision: 3,
            physical: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(compacted.header.unwrap().revision, 3);
    let old = RangeRequest {
        revision: 2,
        ..get("c")
    };
    let status = kv.range(old).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange);
    assert_eq!(
        status.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let future = RangeRequest {
        revision: 99,
        ..get("c")
    };
    let status = kv.range(future).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange);
    assert_eq!(
        status.message(),
        "etcdserver: mvcc: required revision is a future revision"
    );
}

#[tokio::test]
async fn put_can_keep_the_value_or_the_lease() {
    let server = TestServer::start().await;
    let mut kv = server.kv();
    kv.put(put("k", "kept")).await.unwrap();
    let touch = PutRequest {
        key: b"k".to_vec(),
        ignore_value: true,
        prev_kv: true,
        ..Default::default()
    };
    let touched = kv.put(touch).await.unwrap().into_inner();
    assert_eq!(touched.prev_kv.unwrap().value, b"kept");
    let read = kv.range(get("k")).await.unwrap().into_inner();
    assert_eq!(read.kvs[0].value, b"kept");
    assert_eq!(read.kvs[0].version, 2);

    let missing = PutRequest {
        key: b"nothing".to_vec(),
        ignore_value: true,
        ..Default::default()
    };
    let status = kv.put(missing).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "etcdserver: key not found");

    let both = PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ignore_value: true,
        ..Default::default()
    };
    let status = kv.put(both).await.unwrap_err();
    assert_eq!(status.message(), "etcdserver: value is provided");
}

#[tokio::test]
async fn a_txn_can_keep_a_value_and_sort_its_reads() {
    let server = TestServer::start().await;
    let mut kv = server.kv();
    for (key, value) in [("a", "2"), ("b", "1"), ("c", "3")] {
        kv.put(put(key, value)).await.unwrap();
    }
    let keep_b = RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: b"b".to_vec(),
            ignore_value: true,
            ..Default::default()
        })),
    };
    let by_value = RequestOp {
        request: Some(Op::RequestRange(RangeRequest {
            key: b"a".to_vec(),
            range_end: b"z".to_vec(),
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Value as i32,
            limit: 2,
            ..Default::default()
        })),
    };
    let txn = TxnRequest {
        success: vec![keep_b, by_value],
        ..Default::default()
    };
    let response = kv.txn(txn).await.unwrap().into_inner();
    assert!(response.succeeded);
    let Some(OpResponse::ResponseRange(read)) = &response.responses[1].response else {
        panic!("{response:?}");
    };
    let keys: Vec<&[u8]> = read.kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, [&b"c"[..], &b"a"[..]]);
    assert!(read.more);
    let b = kv.range(get("b")).await.unwrap().into_inner();
    assert_eq!(
        (b.kvs[0].value.as_slice(), b.kvs[0].version),
        (&b"1"[..], 2)
    );

    // Keeping a missing key's value fails the whole txn, and nothing changes.
    let keep_missing = RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: b"nothing".to_vec(),
            ignore_value: true,
            ..Default::default()
        })),
    };
    let txn = TxnRequest {
        success: vec![
            RequestOp {
                request: Some(Op::RequestPut(put("a", "changed"))),
            },
            keep_missing,
        ],
        ..Default::default()
    };
    let status = kv.txn(txn).await.unwrap_err();
    assert_eq!(status.message(), "etcdserver: key not found");
    let a = kv.range(get("a")).await.unwrap().into_inner();
    assert_eq!(a.kvs[0].value, b"2");
}
