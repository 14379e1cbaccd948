//! postcard bodies of node-to-node messages and Raft log entries: any bytes decode to a value
//! or an error, never a panic (nor a stack overflow), and what decodes encodes back the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use openraft::error::{Fatal, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{Entry, SnapshotMeta, Vote};
use strata_kvservice::service::{LeaderReply, LeaderRequest};
use strata_proto::error::ApiError;
use strata_proto::kv::{Command, CommandResult};
use strata_proto::NodeInfo;
use strata_raft::TypeConfig;

fn decode<T: serde::de::DeserializeOwned>(data: &[u8]) -> Option<T> {
    postcard::from_bytes(data).ok()
}

fuzz_target!(|data: &[u8]| {
    // Raft log entries and their payload (also what the log store reads back on restart).
    if let Some(command) = decode::<Command>(data) {
        let again = postcard::to_allocvec(&command).expect("a decoded command encodes");
        assert_eq!(decode::<Command>(&again), Some(command));
    }
    let _ = decode::<Entry<TypeConfig>>(data);
    // Requests on the raft listener: /raft/append, /raft/vote, /raft/snapshot (whose private
    // `SnapshotTransfer` body has the same encoding as this tuple), /internal/leader.
    if let Some(request) = decode::<AppendEntriesRequest<TypeConfig>>(data) {
        let _ = strata_raft::network::check_append(&request);
    }
    let _ = decode::<VoteRequest<u64>>(data);
    let _ = decode::<(Vote<u64>, SnapshotMeta<u64, NodeInfo>, Vec<u8>)>(data);
    let _ = decode::<LeaderRequest>(data);
    // Replies a node reads from its peers.
    let _ = decode::<Result<AppendEntriesResponse<u64>, RaftError<u64>>>(data);
    let _ = decode::<Result<VoteResponse<u64>, RaftError<u64>>>(data);
    let _ = decode::<Result<SnapshotResponse<u64>, Fatal<u64>>>(data);
    let _ = decode::<Result<LeaderReply, ApiError>>(data);
    let _ = decode::<CommandResult>(data);
});
