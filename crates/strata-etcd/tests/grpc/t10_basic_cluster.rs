use crate::fake::{MEMBER_ID, TERM};
use crate::TestServer;
use strata_etcd::pb::etcdserverpb::alarm_request::AlarmAction;
use strata_etcd::pb::etcdserverpb::{
    AlarmRequest, HashKvRequest, MemberAddRequest, MemberListRequest, MemberPromoteRequest,
    MemberRemoveRequest, StatusRequest,
};

#[tokio::test]
async fn member_list_add_remove() {
    let server = TestServer::start().await;
    let mut cluster = server.cluster();
    let listed = cluster
        .member_list(MemberListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.members.len(), 1);
    let member = &listed.members[0];
    assert_eq!(member.id, MEMBER_ID);
    assert_eq!(member.name, "strata-1");
    assert_eq!(member.peer_ur_ls, ["http://127.0.0.1:7701"]);
    assert_eq!(member.client_ur_ls, ["http://127.0.0.1:7700"]);
    assert!(!member.is_learner);

    let added = cluster
        .member_add(MemberAddRequest {
            peer_ur_ls: vec!["http://127.0.0.1:7711".into()],
            is_learner: false,
        })
        .await
        .unwrap()
        .into_inner();
    let new_id = added.member.expect("the new member").id;
    assert_eq!(added.members.len(), 2);

    let again = cluster
        .member_add(MemberAddRequest {
            peer_ur_ls: vec!["http://127.0.0.1:7711".into()],
            is_learner: false,
        })
        .await
        .unwrap_err();
    assert_eq!(again.message(), "etcdserver: Peer URLs already exists");
    let bad = cluster
        .member_add(MemberAddRequest {
            peer_ur_ls: vec!["not a url".into()],
            is_learner: false,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    let promote = cluster
        .member_promote(MemberPromoteRequest { id: MEMBER_ID })
        .await
        .unwrap_err();
    assert_eq!(
        promote.message(),
        "etcdserver: can only promote a learner member"
    );

    let removed = cluster
        .member_remove(MemberRemoveRequest { id: new_id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.members.len(), 1);
    let missing = cluster
        .member_remove(MemberRemoveRequest { id: new_id })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert_eq!(missing.message(), "etcdserver: member not found");
}

#[tokio::test]
async fn status_and_alarms() {
    let server = TestServer::start().await;
    let mut maintenance = server.maintenance();
    let status = maintenance
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.version, strata_etcd::ETCD_VERSION);
    assert_eq!(status.leader, MEMBER_ID);
    assert_eq!(status.raft_term, TERM);
    assert_eq!(status.raft_index, 42);
    assert_eq!(status.raft_applied_index, 41);
    assert_eq!(status.db_size, 4096);
    assert!(!status.is_learner);
    assert_eq!(status.header.unwrap().member_id, MEMBER_ID);

    let alarms = maintenance
        .alarm(AlarmRequest {
            action: AlarmAction::Get as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(alarms.alarms.is_empty());

    let hash = maintenance
        .hash_kv(HashKvRequest { revision: 0 })
        .await
        .unwrap_err();
    assert_eq!(hash.code(), tonic::Code::Unimplemented);
}
