//! Bad bytes get an error, never a panic: every decoder of strata-proto's wire types (JSON
//! request bodies of the HTTP API, postcard commands in the Raft log) is fed arbitrary bytes
//! and mutated valid encodings. Mutations of valid encodings reach far deeper into a decoder
//! than random bytes do. `fuzz/` explores the same property for longer (see fuzz/README.md).

use proptest::prelude::*;
use strata_proto::error::ApiError;
use strata_proto::kv::{
    Command, CommandResult, CompactRequest, Compare, CompareResult, CompareTarget,
    DeleteRangeRequest, KvCommand, KvResult, LeaseGrantRequest, LeaseIdRequest, PutRequest,
    RangeRequest, RangeResponse, RangeSpec, RequestOp, TxnRequest, TxnResponse, WatchRequest,
    WatchResponse,
};
use strata_proto::MAX_NESTING;

// ---------------------------------------------------------------------------------------------
// The decoders under test
// ---------------------------------------------------------------------------------------------

/// Resolves a spec the way the service does; both outcomes are fine, a panic is not.
fn resolve(spec: RangeSpec) {
    if let Ok((start, Some(end))) = spec.resolve() {
        assert!(end.is_empty() || start < end, "resolved to an empty range");
    }
}

/// Decodes `bytes` as every JSON request body of the native API (and the responses a client
/// reads), resolving every range found.
fn decode_json(bytes: &[u8]) {
    if let Ok(req) = serde_json::from_slice::<RangeRequest>(bytes) {
        resolve(req.spec());
    }
    if let Ok(req) = serde_json::from_slice::<DeleteRangeRequest>(bytes) {
        resolve(req.spec());
    }
    if let Ok(req) = serde_json::from_slice::<WatchRequest>(bytes) {
        resolve(req.spec());
    }
    if let Ok(spec) = serde_json::from_slice::<RangeSpec>(bytes) {
        resolve(spec);
    }
    if let Ok(txn) = serde_json::from_slice::<TxnRequest>(bytes) {
        resolve_txn(&txn);
    }
    let _ = serde_json::from_slice::<PutRequest>(bytes);
    let _ = serde_json::from_slice::<LeaseGrantRequest>(bytes);
    let _ = serde_json::from_slice::<LeaseIdRequest>(bytes);
    let _ = serde_json::from_slice::<CompactRequest>(bytes);
    let _ = serde_json::from_slice::<RangeResponse>(bytes);
    let _ = serde_json::from_slice::<TxnResponse>(bytes);
    let _ = serde_json::from_slice::<WatchResponse>(bytes);
    let _ = serde_json::from_slice::<ApiError>(bytes);
}

fn resolve_txn(txn: &TxnRequest) {
    for compare in &txn.compare {
        resolve(compare.spec());
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match op {
            RequestOp::Range(r) => resolve(r.spec()),
            RequestOp::DeleteRange(d) => resolve(d.spec()),
            RequestOp::Put(_) => {}
            RequestOp::Txn(nested) => resolve_txn(nested),
        }
    }
}

/// Decodes `bytes` as every postcard type of the Raft log and of leader replies.
fn decode_postcard(bytes: &[u8]) {
    if let Ok(command) = postcard::from_bytes::<Command>(bytes) {
        // What decodes must encode again to the same value (the log is re-read on restart).
        let again = postcard::to_allocvec(&command).expect("a decoded command encodes");
        assert_eq!(postcard::from_bytes::<Command>(&again).ok(), Some(command));
    }
    let _ = postcard::from_bytes::<KvCommand>(bytes);
    let _ = postcard::from_bytes::<CommandResult>(bytes);
    let _ = postcard::from_bytes::<KvResult>(bytes);
    let _ = postcard::from_bytes::<Result<CommandResult, ApiError>>(bytes);
}

// ---------------------------------------------------------------------------------------------
// Valid values to start from
// ---------------------------------------------------------------------------------------------

fn key() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        Just(vec![0]),
        Just(vec![0xff]),
        Just(vec![0xff, 0xff]),
        "[ab/]{1,3}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..6),
    ]
    .boxed()
}

fn wide_i64() -> BoxedStrategy<i64> {
    prop_oneof![
        Just(0i64),
        Just(-1),
        Just(1),
        Just(i64::MIN),
        Just(i64::MAX),
        any::<i64>(),
    ]
    .boxed()
}

fn range_request() -> BoxedStrategy<RangeRequest> {
    (
        key(),
        key(),
        any::<bool>(),
        wide_i64(),
        wide_i64(),
        any::<[bool; 3]>(),
    )
        .prop_map(
            |(key, range_end, prefix, limit, revision, [keys_only, count_only, serializable])| {
                RangeRequest {
                    key,
                    range_end,
                    prefix,
                    limit,
                    revision,
                    keys_only,
                    count_only,
                    serializable,
                    ..Default::default()
                }
            },
        )
        .boxed()
}

fn put_request() -> BoxedStrategy<PutRequest> {
    (key(), key(), wide_i64(), any::<bool>())
        .prop_map(|(key, value, lease, prev_kv)| PutRequest {
            key,
            value,
            lease,
            prev_kv,
            ..Default::default()
        })
        .boxed()
}

fn delete_request() -> BoxedStrategy<DeleteRangeRequest> {
    (key(), key(), any::<bool>(), any::<bool>())
        .prop_map(|(key, range_end, prefix, prev_kv)| DeleteRangeRequest {
            key,
            range_end,
            prefix,
            prev_kv,
        })
        .boxed()
}

fn compare() -> BoxedStrategy<Compare> {
    let target = prop_oneof![
        key().prop_map(CompareTarget::Value),
        wide_i64().prop_map(CompareTarget::Version),
        wide_i64().prop_map(CompareTarget::CreateRevision),
        wide_i64().prop_map(CompareTarget::ModRevision),
        wide_i64().prop_map(CompareTarget::Lease),
    ];
    let result = prop::sample::select(vec![
        CompareResult::Equal,
        CompareResult::NotEqual,
        CompareResult::Greater,
        CompareResult::Less,
    ]);
    (key(), key(), any::<bool>(), result, target)
        .prop_map(|(key, range_end, prefix, result, target)| Compare {
            key,
            range_end,
            prefix,
            result,
            target,
        })
        .boxed()
}

fn txn_request() -> BoxedStrategy<TxnRequest> {
    let flat = || {
        prop_oneof![
            range_request().prop_map(RequestOp::Range),
            put_request().prop_map(RequestOp::Put),
            delete_request().prop_map(RequestOp::DeleteRange),
        ]
        .boxed()
    };
    let leaf = (
        prop::collection::vec(compare(), 0..2),
        prop::collection::vec(flat(), 0..3),
        prop::collection::vec(flat(), 0..3),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        });
    leaf.prop_recursive(3, 12, 3, move |inner| {
        let op = prop_oneof![3 => flat(), 1 => inner.prop_map(RequestOp::Txn)].boxed();
        (
            prop::collection::vec(compare(), 0..2),
            prop::collection::vec(op.clone(), 0..3),
            prop::collection::vec(op, 0..3),
        )
            .prop_map(|(compare, success, failure)| TxnRequest {
                compare,
                success,
                failure,
            })
    })
    .boxed()
}

fn kv_command() -> BoxedStrategy<KvCommand> {
    prop_oneof![
        put_request().prop_map(KvCommand::Put),
        delete_request().prop_map(KvCommand::DeleteRange),
        txn_request().prop_map(KvCommand::Txn),
        wide_i64().prop_map(|revision| KvCommand::Compact(CompactRequest { revision })),
        (wide_i64(), wide_i64()).prop_map(|(id, ttl)| KvCommand::LeaseGrant { id, ttl }),
        wide_i64().prop_map(|id| KvCommand::LeaseRevoke { id }),
    ]
    .boxed()
}

fn command() -> BoxedStrategy<Command> {
    prop_oneof![
        3 => kv_command().prop_map(Command::Kv),
        1 => prop::collection::vec(kv_command().prop_map(Command::Kv), 0..3).prop_map(Command::Batch),
    ]
    .boxed()
}

/// A JSON request body: a valid request of any kind, as the HTTP API receives it.
fn json_body() -> BoxedStrategy<Vec<u8>> {
    let to_json = |value: serde_json::Result<Vec<u8>>| value.expect("requests encode as JSON");
    prop_oneof![
        range_request().prop_map(move |r| to_json(serde_json::to_vec(&r))),
        put_request().prop_map(move |r| to_json(serde_json::to_vec(&r))),
        delete_request().prop_map(move |r| to_json(serde_json::to_vec(&r))),
        txn_request().prop_map(move |r| to_json(serde_json::to_vec(&r))),
        (wide_i64(), wide_i64())
            .prop_map(move |(ttl, id)| to_json(serde_json::to_vec(&LeaseGrantRequest { ttl, id }))),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------------

/// JSON fragments that make a mutated body interesting: wrong types, edge numbers, the b64
/// form of byte strings, broken escapes, nesting.
const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "null",
    "true",
    "0",
    "-1",
    "1e999",
    "-0",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551616",
    r#"{"b64":"AA=="}"#,
    r#"{"b64":"!"}"#,
    r#"{"b64":1}"#,
    r#"{}"#,
    r#""\ud800""#,
    r#""\u0000""#,
    r#""key""#,
    r#""range_end""#,
    r#""prefix""#,
    r#""txn""#,
    r#""success""#,
    r#""compare""#,
    r#""target""#,
    r#""value""#,
    r#"[0,255]"#,
    r#"[256]"#,
];

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
    /// Inserts one of [`JSON_TOKENS`].
    Token(usize, usize),
}

fn mutation() -> BoxedStrategy<Mutation> {
    let at = any::<usize>();
    prop_oneof![
        (at, 0u8..8).prop_map(|(i, bit)| Mutation::Flip(i, 1 << bit)),
        (
            at,
            prop_oneof![Just(0u8), Just(0xff), Just(0x80), any::<u8>()]
        )
            .prop_map(|(i, b)| Mutation::Set(i, b)),
        (at, any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        at.prop_map(Mutation::Remove),
        at.prop_map(Mutation::Truncate),
        (at, at, 1usize..16).prop_map(|(a, b, n)| Mutation::Duplicate(a, b, n)),
        (at, 0..JSON_TOKENS.len()).prop_map(|(i, t)| Mutation::Token(i, t)),
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
            Mutation::Token(i, t) => {
                let at = i % (len + 1);
                bytes.splice(at..at, JSON_TOKENS[t].bytes());
            }
            _ => {}
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        decode_json(&bytes);
        decode_postcard(&bytes);
    }

    #[test]
    fn mutated_json_never_panics(
        body in json_body(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        decode_json(&mutate(body, &mutations));
    }

    #[test]
    fn mutated_postcard_never_panics(
        command in command(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let bytes = postcard::to_allocvec(&command).expect("commands encode");
        decode_postcard(&mutate(bytes, &mutations));
    }

    #[test]
    fn valid_encodings_round_trip(command in command()) {
        let bytes = postcard::to_allocvec(&command).expect("commands encode");
        prop_assert_eq!(postcard::from_bytes::<Command>(&bytes).ok(), Some(command.clone()));
        if let Command::Kv(KvCommand::Txn(txn)) = &command {
            let json = serde_json::to_vec(txn).expect("txns encode as JSON");
            prop_assert_eq!(&serde_json::from_slice::<TxnRequest>(&json).ok(), &Some(txn.clone()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Nesting: postcard has no recursion limit of its own
// ---------------------------------------------------------------------------------------------

/// `Command::Batch([Command::Batch([... Command::Batch([]) ...])])`, `depth` batches deep.
fn nested_batches(depth: usize) -> Vec<u8> {
    nested_variant(1, depth)
}

/// `depth` levels of the newtype variant `variant` holding a one-element sequence of itself;
/// the innermost sequence is empty.
fn nested_variant(variant: u8, depth: usize) -> Vec<u8> {
    let mut bytes = [variant, 1].repeat(depth - 1);
    bytes.extend([variant, 0]);
    bytes
}

/// A txn with one nested txn in `success`, `depth` txns deep, as a `KvCommand`.
fn nested_txns(depth: usize) -> Vec<u8> {
    // KvCommand::Txn; then per level: no compares, one success op that is a RequestOp::Txn;
    // the innermost txn is empty; then every level's empty failure list.
    let mut bytes = vec![2u8];
    bytes.extend([0u8, 1, 3].repeat(depth - 1));
    bytes.extend([0, 0, 0]);
    bytes.extend(vec![0u8; depth - 1]);
    bytes
}

fn nested_json_txn(depth: usize) -> String {
    let mut json = r#"{"success":[{"txn":"#.repeat(depth - 1);
    json.push_str("{}");
    json.push_str(&"}]}".repeat(depth - 1));
    json
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    // 200 KB of nested batches used to overflow the stack and abort the process.
    assert!(postcard::from_bytes::<Command>(&nested_batches(100_000)).is_err());
    assert!(postcard::from_bytes::<KvCommand>(&nested_txns(100_000)).is_err());
    // CommandResult::Batch is variant 2.
    assert!(postcard::from_bytes::<CommandResult>(&nested_variant(2, 100_000)).is_err());
    assert!(postcard::from_bytes::<CommandResult>(&nested_variant(2, 10)).is_ok());
    assert!(serde_json::from_str::<TxnRequest>(&nested_json_txn(100_000)).is_err());
    decode_postcard(&nested_batches(100_000));
    decode_postcard(&nested_txns(100_000));
}

#[test]
fn nesting_limit_is_exact() {
    let depth = MAX_NESTING as usize;
    assert!(postcard::from_bytes::<Command>(&nested_batches(depth)).is_ok());
    assert!(postcard::from_bytes::<Command>(&nested_batches(depth + 1)).is_err());
    // After a refused decode the depth counter is back to zero.
    assert!(postcard::from_bytes::<Command>(&nested_batches(depth)).is_ok());
    // The outermost txn is the command itself, not a nested op.
    assert!(postcard::from_bytes::<KvCommand>(&nested_txns(depth + 1)).is_ok());
    assert!(postcard::from_bytes::<KvCommand>(&nested_txns(depth + 2)).is_err());
}

#[test]
fn everything_the_json_api_accepts_fits_in_the_log() {
    // The deepest txn serde_json accepts, batched by the proposer, still decodes from the log.
    let deepest = (1..200)
        .map_while(|depth| serde_json::from_str::<TxnRequest>(&nested_json_txn(depth)).ok())
        .last()
        .unwrap();
    let command = Command::Batch(vec![Command::Kv(KvCommand::Txn(deepest))]);
    let bytes = postcard::to_allocvec(&command).unwrap();
    assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), command);
}
