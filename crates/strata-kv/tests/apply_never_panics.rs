//! [`KvStore::apply`] takes commands straight from the Raft log, so any decodable command must
//! give a result or an error, never a panic. `tests/model.rs` checks *what* the store does on
//! sensible inputs; this only checks that wide inputs (huge limits, `i64::MIN`/`MAX`
//! revisions, negative ids and TTLs, empty and `0xff` keys, nested txns) are survived with the
//! store's invariants intact. `fuzz/` has the same property as the `kv_apply` target.

use proptest::prelude::*;
use strata_kv::KvStore;
use strata_proto::kv::{
    CompactRequest, Compare, CompareResult, CompareTarget, DeleteRangeRequest, KvCommand, KvResult,
    PutRequest, RangeRequest, RangeSpec, RequestOp, TxnRequest,
};
use strata_proto::MAX_NESTING;

fn key() -> BoxedStrategy<Vec<u8>> {
    prop::sample::select(vec![
        vec![],
        vec![0],
        vec![0xff],
        vec![0xff, 0xff],
        b"a".to_vec(),
        b"a/b".to_vec(),
        b"b".to_vec(),
    ])
    .boxed()
}

/// Revisions and limits: the edges, and small values that name real revisions.
fn wide() -> BoxedStrategy<i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        Just(-1i64),
        Just(0),
        1..8i64,
        any::<i64>(),
    ]
    .boxed()
}

fn range() -> BoxedStrategy<RangeRequest> {
    (
        key(),
        key(),
        any::<bool>(),
        wide(),
        wide(),
        any::<[bool; 2]>(),
    )
        .prop_map(
            |(key, range_end, prefix, limit, revision, [keys_only, count_only])| RangeRequest {
                key,
                range_end,
                prefix,
                limit,
                revision,
                keys_only,
                count_only,
                serializable: false,
                ..Default::default()
            },
        )
        .boxed()
}

fn put() -> BoxedStrategy<PutRequest> {
    (key(), key(), wide(), any::<bool>())
        .prop_map(|(key, value, lease, prev_kv)| PutRequest {
            key,
            value,
            lease,
            prev_kv,
            ..Default::default()
        })
        .boxed()
}

fn delete() -> BoxedStrategy<DeleteRangeRequest> {
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
        wide().prop_map(CompareTarget::Version),
        wide().prop_map(CompareTarget::CreateRevision),
        wide().prop_map(CompareTarget::ModRevision),
        wide().prop_map(CompareTarget::Lease),
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

fn txn() -> BoxedStrategy<TxnRequest> {
    let flat = prop_oneof![
        range().prop_map(RequestOp::Range),
        put().prop_map(RequestOp::Put),
        delete().prop_map(RequestOp::DeleteRange),
    ]
    .boxed();
    let ops = |op: BoxedStrategy<RequestOp>| prop::collection::vec(op, 0..4);
    let leaf = (
        prop::collection::vec(compare(), 0..2),
        ops(flat.clone()),
        ops(flat.clone()),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        })
        .boxed();
    leaf.prop_recursive(3, 16, 4, move |inner| {
        let op = prop_oneof![3 => flat.clone(), 1 => inner.prop_map(RequestOp::Txn)].boxed();
        (
            prop::collection::vec(compare(), 0..2),
            ops(op.clone()),
            ops(op),
        )
            .prop_map(|(compare, success, failure)| TxnRequest {
                compare,
                success,
                failure,
            })
    })
    .boxed()
}

fn command() -> BoxedStrategy<KvCommand> {
    prop_oneof![
        4 => put().prop_map(KvCommand::Put),
        2 => delete().prop_map(KvCommand::DeleteRange),
        3 => txn().prop_map(KvCommand::Txn),
        1 => wide().prop_map(|revision| KvCommand::Compact(CompactRequest { revision })),
        2 => (prop_oneof![1..4i64, wide()], wide())
            .prop_map(|(id, ttl)| KvCommand::LeaseGrant { id, ttl }),
        1 => prop_oneof![1..4i64, wide()].prop_map(|id| KvCommand::LeaseRevoke { id }),
    ]
    .boxed()
}

/// Applies `command` and checks what must hold whatever the command was.
fn apply_checked(store: &mut KvStore, command: &KvCommand) {
    let before = store.revision();
    let (result, events) = store.apply(command);
    let after = store.revision();
    assert!(after == before || after == before + 1, "revision jumped");
    assert!(store.compact_revision() <= after);
    assert_eq!(
        events.is_empty(),
        after == before,
        "events without a new revision"
    );
    if let KvResult::Error(_) = result {
        assert_eq!(after, before, "a rejected command changed the store");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn wide_commands_never_panic(
        commands in prop::collection::vec(command(), 1..24),
        probes in prop::collection::vec((range(), key(), key(), any::<bool>(), wide()), 0..4),
    ) {
        let mut store = KvStore::new();
        for command in &commands {
            apply_checked(&mut store, command);
            for (request, key, range_end, prefix, from) in &probes {
                let _ = store.range(request);
                let spec = RangeSpec { key: key.clone(), range_end: range_end.clone(), prefix: *prefix };
                let _ = store.events_since(&spec, *from);
                let _ = strata_kv::spec_contains(&spec, key);
            }
            let _ = store.stats();
            let _ = store.leases();
        }
        let snapshot = postcard::to_allocvec(&store).expect("the store encodes");
        let restored: KvStore = postcard::from_bytes(&snapshot).expect("a snapshot decodes");
        prop_assert_eq!(&restored, &store);
        let streamed = KvStore::read_snapshot(&mut &snapshot[..]).expect("a snapshot streams in");
        prop_assert_eq!(streamed, store);
    }
}

/// A txn nested as deep as the log accepts, with a put at the bottom.
fn deepest_txn() -> TxnRequest {
    let mut txn = TxnRequest {
        success: vec![RequestOp::Put(PutRequest {
            key: b"deep".to_vec(),
            ..Default::default()
        })],
        ..Default::default()
    };
    for _ in 0..MAX_NESTING {
        txn = TxnRequest {
            compare: vec![],
            success: vec![RequestOp::Txn(txn)],
            failure: vec![RequestOp::Txn(TxnRequest::default())],
        };
    }
    txn
}

#[test]
fn the_deepest_decodable_txn_applies_on_a_small_stack() {
    // Decoding refuses anything deeper (strata-proto); what it lets through must apply on a
    // 2 MiB thread (tokio's worker stack) even in a debug build.
    let command = KvCommand::Txn(deepest_txn());
    let bytes = postcard::to_allocvec(&command).unwrap();
    let decoded: KvCommand = postcard::from_bytes(&bytes).unwrap();
    let applied = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let mut store = KvStore::new();
            let (result, events) = store.apply(&decoded);
            matches!(result, KvResult::Txn(_)) && events.len() == 1
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(applied);
}

#[test]
fn edge_values_are_errors() {
    let mut store = KvStore::new();
    let cases = [
        KvCommand::Compact(CompactRequest { revision: i64::MAX }),
        KvCommand::Compact(CompactRequest { revision: i64::MIN }),
        KvCommand::LeaseGrant {
            id: i64::MIN,
            ttl: 1,
        },
        KvCommand::LeaseGrant {
            id: 1,
            ttl: i64::MIN,
        },
        KvCommand::LeaseRevoke { id: -1 },
        KvCommand::Put(PutRequest {
            key: vec![0xff],
            lease: i64::MIN,
            ..Default::default()
        }),
    ];
    for command in &cases {
        let (result, _) = store.apply(command);
        assert!(
            matches!(result, KvResult::Error(_)),
            "{command:?}: {result:?}"
        );
    }
    let read = RangeRequest {
        key: vec![0xff],
        range_end: vec![0],
        limit: i64::MAX,
        revision: i64::MAX,
        ..Default::default()
    };
    assert!(store.range(&read).is_err());
    let read = RangeRequest {
        revision: i64::MIN,
        limit: i64::MAX,
        ..read
    };
    assert!(store.range(&read).is_ok());
    let everything = RangeSpec {
        key: vec![],
        range_end: vec![0],
        prefix: false,
    };
    let _ = store.events_since(&everything, i64::MIN);
    let _ = store.events_since(&everything, i64::MAX);
}
