use crate::{next, TestServer};
use strata_etcd::pb::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, PutRequest, RangeRequest,
};

#[tokio::test]
async fn grant_keep_alive_time_to_live_revoke() {
    let server = TestServer::start().await;
    let mut lease = server.lease();
    let mut kv = server.kv();

    let granted = lease
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(granted.ttl, 30);
    assert!(granted.id > 0);
    assert!(granted.header.is_some());
    let id = granted.id;

    kv.put(PutRequest {
        key: b"owned".to_vec(),
        value: b"v".to_vec(),
        lease: id,
        ..Default::default()
    })
    .await
    .unwrap();

    let pings = tokio_stream::iter(vec![
        LeaseKeepAliveRequest { id },
        LeaseKeepAliveRequest { id: 999 },
        LeaseKeepAliveRequest { id },
    ]);
    let mut replies = lease.lease_keep_alive(pings).await.unwrap().into_inner();
    let first = next(&mut replies).await.unwrap().unwrap();
    assert_eq!((first.id, first.ttl), (id, 30));
    let unknown = next(&mut replies).await.unwrap().unwrap();
    assert_eq!((unknown.id, unknown.ttl), (999, 0), "unknown lease: TTL 0");
    let again = next(&mut replies).await.unwrap().unwrap();
    assert_eq!(again.id, id);
    assert!(next(&mut replies).await.unwrap().is_none(), "stream ends");

    let ttl = lease
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.granted_ttl, 30);
    assert_eq!(ttl.keys, [b"owned".to_vec()]);

    let listed = lease
        .lease_leases(LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.leases.len(), 1);
    assert_eq!(listed.leases[0].id, id);

    lease.lease_revoke(LeaseRevokeRequest { id }).await.unwrap();
    let gone = kv
        .range(RangeRequest {
            key: b"owned".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(gone.kvs.is_empty(), "revoking deletes attached keys");

    let expired = lease
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(expired.ttl, -1, "etcd reports a missing lease as TTL -1");
}

#[tokio::test]
async fn unknown_leases_give_etcds_error() {
    let server = TestServer::start().await;
    let mut lease = server.lease();
    let status = lease
        .lease_revoke(LeaseRevokeRequest { id: 12345 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.message(), "etcdserver: requested lease not found");

    let status = server
        .kv()
        .put(PutRequest {
            key: b"k".to_vec(),
            lease: 12345,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.message(), "etcdserver: requested lease not found");

    lease
        .lease_grant(LeaseGrantRequest { ttl: 10, id: 77 })
        .await
        .unwrap();
    let status = lease
        .lease_grant(LeaseGrantRequest { ttl: 10, id: 77 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(status.message(), "etcdserver: lease already exists");

    let status = lease
        .lease_grant(LeaseGrantRequest {
            ttl: 9_000_000_001,
            id: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange);
    assert_eq!(status.message(), "etcdserver: too large lease TTL");
}
