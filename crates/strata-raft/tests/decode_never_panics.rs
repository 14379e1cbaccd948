//! Bad bytes get an error, never a panic: node-to-node messages, Raft log entries and the
//! checksummed snapshot / vote-marker files are fed arbitrary bytes and mutated valid
//! encodings. `fuzz/` explores the same property for longer (see fuzz/README.md).

use openraft::error::{Fatal, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership, Vote,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use strata_proto::kv::{Command, KvCommand, PutRequest};
use strata_proto::NodeInfo;
use strata_raft::network::check_append;
use strata_raft::{parse_checked, TypeConfig};

const MAGIC: &[u8] = b"STRATA-SNAPSHOT-1\n";

/// The encoding of a whole-snapshot transfer (the private `SnapshotTransfer` struct encodes
/// exactly like this tuple).
type SnapshotTransfer = (Vote<u64>, SnapshotMeta<u64, NodeInfo>, Vec<u8>);

/// Decodes `bytes` as every postcard type on the raft listener and in the log store.
fn decode_all(bytes: &[u8]) {
    if let Ok(request) = postcard::from_bytes::<AppendEntriesRequest<TypeConfig>>(bytes) {
        let _ = check_append(&request);
    }
    if let Ok(entry) = postcard::from_bytes::<Entry<TypeConfig>>(bytes) {
        let again = postcard::to_allocvec(&entry).expect("a decoded entry encodes");
        assert_eq!(
            postcard::from_bytes::<Entry<TypeConfig>>(&again).ok(),
            Some(entry)
        );
    }
    let _ = postcard::from_bytes::<VoteRequest<u64>>(bytes);
    let _ = postcard::from_bytes::<Vote<u64>>(bytes);
    let _ = postcard::from_bytes::<Option<LogId<u64>>>(bytes);
    let _ = postcard::from_bytes::<SnapshotMeta<u64, NodeInfo>>(bytes);
    let _ = postcard::from_bytes::<SnapshotTransfer>(bytes);
    let _ = postcard::from_bytes::<Result<AppendEntriesResponse<u64>, RaftError<u64>>>(bytes);
    let _ = postcard::from_bytes::<Result<VoteResponse<u64>, RaftError<u64>>>(bytes);
    let _ =
        postcard::from_bytes::<Result<openraft::raft::SnapshotResponse<u64>, Fatal<u64>>>(bytes);
}

/// Builds a checksummed file the way `snapshot_file::save_named` writes one.
fn file_bytes(meta: &[u8], data: &[u8]) -> Vec<u8> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(meta);
    crc.update(data);
    let mut bytes = MAGIC.to_vec();
    bytes.extend((meta.len() as u32).to_le_bytes());
    bytes.extend(meta);
    bytes.extend((data.len() as u64).to_le_bytes());
    bytes.extend(data);
    bytes.extend(crc.finalize().to_le_bytes());
    bytes
}

// ---------------------------------------------------------------------------------------------
// Valid values to start from
// ---------------------------------------------------------------------------------------------

fn wide_u64() -> BoxedStrategy<u64> {
    prop_oneof![Just(0u64), Just(1), Just(u64::MAX), 0..8u64, any::<u64>()].boxed()
}

fn log_id() -> BoxedStrategy<LogId<u64>> {
    (wide_u64(), wide_u64(), wide_u64())
        .prop_map(|(term, node, index)| LogId::new(CommittedLeaderId::new(term, node), index))
        .boxed()
}

fn node_info() -> BoxedStrategy<NodeInfo> {
    ("[0-9.:]{0,12}", "[0-9.:]{0,12}", "[0-9.:]{0,12}")
        .prop_map(|(raft_addr, api_addr, grpc_addr)| NodeInfo {
            raft_addr,
            api_addr,
            grpc_addr,
        })
        .boxed()
}

fn membership() -> BoxedStrategy<Membership<u64, NodeInfo>> {
    (
        prop::collection::vec(prop::collection::btree_set(0..5u64, 0..3), 1..3),
        prop::collection::btree_map(0..7u64, node_info(), 0..3),
    )
        .prop_map(
            |(configs, nodes): (Vec<BTreeSet<u64>>, BTreeMap<u64, NodeInfo>)| {
                Membership::new(configs, nodes)
            },
        )
        .boxed()
}

fn command() -> BoxedStrategy<Command> {
    let put = (prop::collection::vec(any::<u8>(), 0..6), any::<i64>()).prop_map(|(key, lease)| {
        KvCommand::Put(PutRequest {
            key,
            value: b"v".to_vec(),
            lease,
            prev_kv: false,
            ..Default::default()
        })
    });
    prop_oneof![
        put.clone().prop_map(Command::Kv),
        prop::collection::vec(put.prop_map(Command::Kv), 0..3).prop_map(Command::Batch),
    ]
    .boxed()
}

fn payload() -> BoxedStrategy<EntryPayload<TypeConfig>> {
    prop_oneof![
        Just(EntryPayload::Blank),
        command().prop_map(EntryPayload::Normal),
        membership().prop_map(EntryPayload::Membership),
    ]
    .boxed()
}

fn entry() -> BoxedStrategy<Entry<TypeConfig>> {
    (log_id(), payload())
        .prop_map(|(log_id, payload)| Entry { log_id, payload })
        .boxed()
}

fn vote() -> BoxedStrategy<Vote<u64>> {
    (wide_u64(), wide_u64(), any::<bool>())
        .prop_map(|(term, node, committed)| {
            if committed {
                Vote::new_committed(term, node)
            } else {
                Vote::new(term, node)
            }
        })
        .boxed()
}

fn append_request() -> BoxedStrategy<AppendEntriesRequest<TypeConfig>> {
    (
        vote(),
        prop::option::of(log_id()),
        prop::collection::vec(entry(), 0..4),
        prop::option::of(log_id()),
    )
        .prop_map(
            |(vote, prev_log_id, entries, leader_commit)| AppendEntriesRequest {
                vote,
                prev_log_id,
                entries,
                leader_commit,
            },
        )
        .boxed()
}

/// A valid postcard encoding of any message on the raft listener or in the log.
fn encoding() -> BoxedStrategy<Vec<u8>> {
    let encode = |bytes: postcard::Result<Vec<u8>>| bytes.expect("messages encode");
    prop_oneof![
        append_request().prop_map(move |r| encode(postcard::to_allocvec(&r))),
        entry().prop_map(move |e| encode(postcard::to_allocvec(&e))),
        (vote(), prop::option::of(log_id()))
            .prop_map(move |(v, l)| encode(postcard::to_allocvec(&VoteRequest::new(v, l)))),
        (
            vote(),
            prop::option::of(log_id()),
            membership(),
            "[a-z0-9-]{0,8}"
        )
            .prop_map(move |(vote, last_log_id, membership, snapshot_id)| {
                let meta = SnapshotMeta {
                    last_log_id,
                    last_membership: StoredMembership::new(last_log_id, membership),
                    snapshot_id,
                };
                encode(postcard::to_allocvec(&(vote, meta, b"data".to_vec())))
            }),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------------

/// One edit of an encoding. Positions are taken modulo the length at the time.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
    /// Copies a slice of the input to another place (repeats structure).
    Duplicate(usize, usize, usize),
}

fn mutation() -> BoxedStrategy<Mutation> {
    let at = any::<usize>();
    prop_oneof![
        (at, 0u8..8).prop_map(|(i, bit)| Mutation::Flip(i, 1 << bit)),
        (
            at,
            prop_oneof![Just(0u8), Just(0xff), Just(0x80), Just(0x7f), any::<u8>()]
        )
            .prop_map(|(i, b)| Mutation::Set(i, b)),
        (at, any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        at.prop_map(Mutation::Remove),
        at.prop_map(Mutation::Truncate),
        (at, at, 1usize..16).prop_map(|(a, b, n)| Mutation::Duplicate(a, b, n)),
    ]
    .boxed()
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        let len = bytes.len();
        match *mutation {
            Mutation::Flip(i, mask) if len > 0 => bytes[i % len] ^= mask,
            Mutation::Set(i, b) if len > 0 => bytes[i % len] = b,
            Mutation::Insert(i, b) => bytes.insert(i % (len + 1), b),
            Mutation::Remove(i) if len > 0 => {
                bytes.remove(i % len);
            }
            Mutation::Truncate(i) => bytes.truncate(i % (len + 1)),
            Mutation::Duplicate(from, to, n) if len > 0 => {
                let from = from % len;
                let piece = bytes[from..(from + n).min(len)].to_vec();
                let to = to % (len + 1);
                bytes.splice(to..to, piece);
            }
            _ => {}
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
        decode_all(&bytes);
        let _ = parse_checked(&bytes);
        let mut file = MAGIC.to_vec();
        file.extend(&bytes);
        let _ = parse_checked(&file);
    }

    #[test]
    fn mutated_messages_never_panic(
        bytes in encoding(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        decode_all(&mutate(bytes, &mutations));
    }

    #[test]
    fn valid_append_requests_round_trip(request in append_request()) {
        let bytes = postcard::to_allocvec(&request).expect("requests encode");
        let back: AppendEntriesRequest<TypeConfig> =
            postcard::from_bytes(&bytes).expect("requests decode");
        prop_assert_eq!(back.entries, request.entries);
        prop_assert_eq!(back.vote, request.vote);
        prop_assert_eq!(back.prev_log_id, request.prev_log_id);
        prop_assert_eq!(back.leader_commit, request.leader_commit);
    }

    /// The file parser accepts exactly the files the writer produces: a mutated file either
    /// fails to parse or is itself a well-formed file of the parts it parsed to.
    #[test]
    fn mutated_files_are_refused_or_exact(
        meta in prop::collection::vec(any::<u8>(), 0..24),
        data in prop::collection::vec(any::<u8>(), 0..48),
        mutations in prop::collection::vec(mutation(), 0..4),
    ) {
        let file = file_bytes(&meta, &data);
        prop_assert_eq!(parse_checked(&file), Ok((meta, data)));
        let mutated = mutate(file, &mutations);
        if let Ok((meta, data)) = parse_checked(&mutated) {
            prop_assert_eq!(file_bytes(&meta, &data), mutated);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Examples
// ---------------------------------------------------------------------------------------------

fn blank(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Blank,
    }
}

fn append(
    prev: Option<(u64, u64)>,
    entries: Vec<Entry<TypeConfig>>,
) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(5, 1),
        prev_log_id: prev.map(|(term, index)| LogId::new(CommittedLeaderId::new(term, 1), index)),
        entries,
        leader_commit: None,
    }
}

#[test]
fn append_shape_is_checked() {
    // What leaders send: heartbeats, and entries following prev_log_id.
    assert!(check_append(&append(None, vec![])).is_ok());
    assert!(check_append(&append(None, vec![blank(1, 0), blank(1, 1)])).is_ok());
    assert!(check_append(&append(Some((1, 4)), vec![blank(1, 5), blank(2, 6)])).is_ok());
    // What openraft would only debug_assert: gaps, repeats, older leaders, index overflow.
    assert!(check_append(&append(Some((1, 4)), vec![blank(1, 6)])).is_err());
    assert!(check_append(&append(None, vec![blank(1, 1)])).is_err());
    assert!(check_append(&append(Some((1, 4)), vec![blank(1, 5), blank(1, 5)])).is_err());
    assert!(check_append(&append(Some((2, 4)), vec![blank(1, 5)])).is_err());
    assert!(check_append(&append(Some((1, u64::MAX)), vec![])).is_err());
    assert!(check_append(&append(Some((1, u64::MAX - 1)), vec![blank(1, u64::MAX)])).is_err());
}

#[test]
fn deeply_nested_entries_are_refused_not_a_stack_overflow() {
    // An append with one entry whose command is 100 000 nested batches: log id, then
    // EntryPayload::Normal (1), then Command::Batch (1) with one element (1), repeated.
    let request = append(None, vec![blank(1, 0)]);
    let mut bytes = postcard::to_allocvec(&request).unwrap();
    // Replace the entry's Blank payload (the byte before leader_commit's None) by the nest.
    let leader_commit = bytes.pop().unwrap();
    assert_eq!(bytes.pop(), Some(0), "Blank is variant 0");
    bytes.push(1);
    bytes.extend([1u8, 1].repeat(100_000));
    bytes.extend([1, 0, leader_commit]);
    assert!(postcard::from_bytes::<AppendEntriesRequest<TypeConfig>>(&bytes).is_err());
    decode_all(&bytes);
}
