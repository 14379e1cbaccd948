use crate::{next, TestServer};
use strata_etcd::pb::etcdserverpb::watch_request::RequestUnion;
use strata_etcd::pb::etcdserverpb::{WatchCreateRequest, WatchRequest};
use tokio_stream::StreamExt;

#[tokio::test]
async fn shutdown_ends_open_watch_streams() {
    let server = TestServer::start().await;
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })),
    };
    // The request stream stays open for the whole test, as a real watcher's does.
    let requests = tokio_stream::iter(vec![create]).chain(tokio_stream::pending::<WatchRequest>());
    let mut replies = server.watch().watch(requests).await.unwrap().into_inner();
    assert!(next(&mut replies).await.unwrap().unwrap().created);

    let stopped = tokio::spawn(async move {
        let status = next(&mut replies).await.unwrap_err();
        (status.code(), status.message().to_string())
    });
    server.shutdown().await.expect("serve returns cleanly");
    let (code, message) = stopped.await.unwrap();
    assert_eq!(code, tonic::Code::Unavailable);
    assert_eq!(message, "etcdserver: server stopped");
}
