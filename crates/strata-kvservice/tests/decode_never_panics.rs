//! The internal leader route (`POST /internal/leader`, and each frame of its stream) decodes a
//! postcard [`LeaderRequest`] from any peer, and followers decode the leader's reply:
//! arbitrary bytes and mutated valid encodings give a value or an error, never a panic. The
//! `raft_postcard` fuzz target in `fuzz/` explores the same property for longer.

use proptest::prelude::*;
use strata_kvservice::service::{LeaderReply, LeaderRequest};
use strata_proto::error::ApiError;
use strata_proto::kv::{Command, CommandResult, KvCommand, PutRequest};
use strata_proto::NodeInfo;

fn decode_all(bytes: &[u8]) {
    let _ = postcard::from_bytes::<LeaderRequest>(bytes);
    let _ = postcard::from_bytes::<Result<LeaderReply, ApiError>>(bytes);
    let _ = postcard::from_bytes::<strata_raft::consensus::LeaderStreamReply>(bytes);
}

fn request() -> BoxedStrategy<LeaderRequest> {
    let node = ("[0-9.:]{0,10}", "[0-9.:]{0,10}").prop_map(|(raft_addr, api_addr)| NodeInfo {
        raft_addr,
        api_addr,
        grpc_addr: String::new(),
    });
    let put = prop::collection::vec(any::<u8>(), 0..6).prop_map(|key| {
        Command::Kv(KvCommand::Put(PutRequest {
            key,
            ..Default::default()
        }))
    });
    prop_oneof![
        put.clone().prop_map(LeaderRequest::Write),
        prop::collection::vec(put, 0..3).prop_map(|b| LeaderRequest::Write(Command::Batch(b))),
        Just(LeaderRequest::ReadIndex),
        any::<i64>().prop_map(LeaderRequest::LeaseKeepAlive),
        any::<i64>().prop_map(LeaderRequest::LeaseTimeToLive),
        (any::<u64>(), node.clone()).prop_map(|(id, n)| LeaderRequest::AddMember(id, n)),
        any::<u64>().prop_map(LeaderRequest::RemoveMember),
        (any::<u64>(), node).prop_map(|(id, n)| LeaderRequest::SetNode(id, n)),
    ]
    .boxed()
}

fn reply() -> BoxedStrategy<Result<LeaderReply, ApiError>> {
    prop_oneof![
        Just(Ok(LeaderReply::Written(CommandResult::None))),
        any::<u64>().prop_map(|i| Ok(LeaderReply::ReadIndex(i))),
        (any::<i64>(), any::<i64>())
            .prop_map(|(ttl, granted_ttl)| Ok(LeaderReply::Lease { ttl, granted_ttl })),
        Just(Ok(LeaderReply::Done)),
        "[a-z ]{0,12}".prop_map(|m| Err(ApiError::unavailable(m))),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        decode_all(&bytes);
    }

    #[test]
    fn mutated_encodings_never_panic(
        bytes in prop_oneof![
            request().prop_map(|r| postcard::to_allocvec(&r).expect("requests encode")),
            reply().prop_map(|r| postcard::to_allocvec(&r).expect("replies encode")),
        ],
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let mut bytes = bytes;
        for (at, byte, kind) in edits {
            let len = bytes.len();
            match kind {
                0 if len > 0 => bytes[at % len] = byte,
                1 => bytes.insert(at % (len + 1), byte),
                _ => bytes.truncate(at % (len + 1)),
            }
        }
        decode_all(&bytes);
    }
}

#[test]
fn deeply_nested_writes_are_refused_not_a_stack_overflow() {
    // LeaderRequest::Write (0), then 100 000 nested Command::Batch (1) of one element (1).
    let mut bytes = vec![0u8];
    bytes.extend([1u8, 1].repeat(100_000));
    bytes.extend([1, 0]);
    assert!(postcard::from_bytes::<LeaderRequest>(&bytes).is_err());
}
