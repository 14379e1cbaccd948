//! The state machine's per-request work on a store that already holds many keys: a registry's
//! create-if-absent (a transaction comparing one key's mod revision, then a put), an update
//! of a key spread over the store, a read of one key. `cargo bench -p strata-kv`.

use criterion::{criterion_group, criterion_main, Criterion};
use strata_kv::KvStore;
use strata_proto::kv::{
    Compare, CompareResult, CompareTarget, KvCommand, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};

/// Keys already in the store for every case.
const STORED: usize = 200_000;

fn filled() -> KvStore {
    let mut store = KvStore::new();
    for n in 0..STORED {
        store.apply(&KvCommand::Put(PutRequest {
            key: format!("/registry/svc-{}/instance-{n:08}", n % 100).into_bytes(),
            value: vec![b'v'; 256],
            ..Default::default()
        }));
    }
    store
}

fn create_if_absent(key: &[u8]) -> KvCommand {
    KvCommand::Txn(TxnRequest {
        compare: vec![Compare {
            key: key.to_vec(),
            range_end: Vec::new(),
            prefix: false,
            result: CompareResult::Equal,
            target: CompareTarget::ModRevision(0),
        }],
        success: vec![RequestOp::Put(PutRequest {
            key: key.to_vec(),
            value: vec![b'v'; 256],
            ..Default::default()
        })],
        failure: vec![RequestOp::Range(RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })],
    })
}

fn point_operations(c: &mut Criterion) {
    let mut store = filled();
    let mut next = 0u64;
    c.bench_function("txn_create_if_absent_200k", |b| {
        b.iter(|| {
            next += 1;
            let key = format!("/registry/svc-new/instance-{next:08}");
            store.apply(&create_if_absent(key.as_bytes()))
        })
    });
    let mut round = 0u64;
    c.bench_function("put_existing_key_200k", |b| {
        b.iter(|| {
            round += 1;
            let n = round * 7919 % STORED as u64;
            store.apply(&KvCommand::Put(PutRequest {
                key: format!("/registry/svc-{}/instance-{n:08}", n % 100).into_bytes(),
                value: vec![b'w'; 256],
                ..Default::default()
            }))
        })
    });
    let read = RangeRequest {
        key: b"/registry/svc-7/instance-00100007".to_vec(),
        ..Default::default()
    };
    c.bench_function("range_one_key_200k", |b| b.iter(|| store.range(&read)));
}

criterion_group!(benches, point_operations);
criterion_main!(benches);
