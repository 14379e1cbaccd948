//! Rust gRPC clients against Strata's etcd v3 API on real `strata server` processes: a watch
//! kept across a kill -9 of the leader, two lock contenders with fencing tokens, thousands of
//! watches opened at once on one connection, and bad input answered with etcd's codes
//! (checked against a real etcd 3.4).
//!
//! The clients are the tonic clients `strata_etcd::pb` generates from etcd's protobuf files,
//! which expose raw fields and status codes; `etcd_client.rs` repeats the watch and lock checks
//! with the independent `etcd-client` crate.

#![allow(clippy::unwrap_used)]

mod common;

use common::{etcd_status, wait_until, Cluster, EtcdProc, NodeProc, GRPC_ON_ANY_PORT};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata_etcd::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use strata_etcd::pb::etcdserverpb::kv_client::KvClient;
use strata_etcd::pb::etcdserverpb::lease_client::LeaseClient;
use strata_etcd::pb::etcdserverpb::request_op::Request as Op;
use strata_etcd::pb::etcdserverpb::watch_client::WatchClient;
use strata_etcd::pb::etcdserverpb::watch_request::RequestUnion;
use strata_etcd::pb::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, PutRequest, RangeRequest, RequestOp, ResponseHeader, TxnRequest,
    WatchCreateRequest, WatchRequest, WatchResponse,
};
use strata_etcd::pb::mvccpb::event::EventType;
use strata_etcd::pb::v3lockpb::lock_client::LockClient;
use strata_etcd::pb::v3lockpb::{LockRequest, UnlockRequest};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Longest a test waits for any one reply or condition.
const WAIT: Duration = Duration::from_secs(15);

/// A channel to `addr` that connects on first use and reconnects after failures.
fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

/// The end of the range of keys starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    end
}

/// The store's current revision, read (linearizably) through `addr`.
async fn current_revision(addr: &str) -> i64 {
    let request = RangeRequest {
        key: b"no-such-key".to_vec(),
        ..Default::default()
    };
    let reply = KvClient::new(channel(addr)).range(request).await.unwrap();
    reply.into_inner().header.unwrap().revision
}

/// An open watch stream: where its requests go and the replies.
struct WatchStream {
    /// Keeps the client's sending side open (closing it is fine, but explicit is clearer).
    _requests: mpsc::Sender<WatchRequest>,
    replies: tonic::Streaming<WatchResponse>,
}

/// Opens a stream on `addr` with one watch of `[key, range_end)` from `start_revision`.
async fn open_watch(
    addr: &str,
    key: &[u8],
    range_end: &[u8],
    start_revision: i64,
) -> Result<WatchStream, tonic::Status> {
    open_watch_on(channel(addr), key, range_end, start_revision).await
}

/// [`open_watch`] over `channel`.
async fn open_watch_on(
    channel: Channel,
    key: &[u8],
    range_end: &[u8],
    start_revision: i64,
) -> Result<WatchStream, tonic::Status> {
    let (requests, receiver) = mpsc::channel(4);
    let create = WatchCreateRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        start_revision,
        ..Default::default()
    };
    requests
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        })
        .await
        .unwrap();
    let replies = WatchClient::new(channel)
        .watch(ReceiverStream::new(receiver))
        .await?
        .into_inner();
    Ok(WatchStream {
        _requests: requests,
        replies,
    })
}

/// The next reply of a watch stream; panics if none comes within [`WAIT`].
async fn next_reply(stream: &mut WatchStream) -> Result<Option<WatchResponse>, tonic::Status> {
    tokio::time::timeout(WAIT, stream.replies.message())
        .await
        .expect("a watch reply (or the end of the stream) within the wait")
}

/// Puts `count` keys under `w/` through every node in turn. Returns the revisions of the
/// acknowledged puts and how many were acknowledged after `killed` was set.
///
/// A failed put (its node is dead, or there is no leader yet) is retried on the next node
/// under a new key, so a put that failed but was committed anyway shows as one more key,
/// never as a second version of a key.
async fn write_keys(
    addrs: Vec<String>,
    count: usize,
    killed: Arc<AtomicBool>,
) -> (Vec<i64>, usize) {
    let clients: Vec<KvClient<Channel>> = addrs
        .iter()
        .map(|addr| KvClient::new(channel(addr)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut acked = Vec::with_capacity(count);
    let mut acked_after_kill = 0;
    let mut attempt = 0usize;
    for n in 0..count {
        loop {
            attempt += 1;
            let mut client = clients[attempt % clients.len()].clone();
            let put = PutRequest {
                key: format!("w/{n:04}-{attempt}").into_bytes(),
                value: b"v".to_vec(),
                ..Default::default()
            };
            match tokio::time::timeout(Duration::from_secs(5), client.put(put)).await {
                Ok(Ok(reply)) => {
                    acked.push(reply.into_inner().header.unwrap().revision);
                    if killed.load(Ordering::SeqCst) {
                        acked_after_kill += 1;
                    }
                    break;
                }
                Ok(Err(_)) | Err(_) => {
                    assert!(Instant::now() < deadline, "puts kept failing for 40s");
                    // Back off a little while a new leader is elected.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    (acked, acked_after_kill)
}

/// Appends the revisions of a reply's events to `seen`; every event must be a put.
fn record(reply: &WatchResponse, seen: &mut Vec<i64>) {
    assert!(!reply.canceled, "watch canceled: {reply:?}");
    for event in &reply.events {
        assert_eq!(event.r#type, EventType::Put as i32, "{event:?}");
        seen.push(event.kv.as_ref().unwrap().mod_revision);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_a_watch_resumed_after_kill9_of_the_leader_misses_and_repeats_nothing() {
    const KEYS: usize = 400;
    const KILL_AFTER_EVENTS: usize = 80;
    let mut cluster = Cluster::start(3, GRPC_ON_ANY_PORT).await;
    let leader = cluster.wait_for_leader().await;
    let leader_addr = cluster.node(leader).grpc_addr().to_string();
    let addrs = cluster.grpc_endpoints();
    let (prefix, end) = (b"w/".to_vec(), prefix_end(b"w/"));

    // Watch the prefix through the leader, from the next revision on.
    let start = current_revision(&leader_addr).await + 1;
    let mut watch = open_watch(&leader_addr, &prefix, &end, start)
        .await
        .unwrap();
    let created = next_reply(&mut watch).await.unwrap().unwrap();
    assert!(created.created && !created.canceled, "{created:?}");

    let killed = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_keys(addrs.clone(), KEYS, killed.clone()));
    let mut seen = Vec::new();
    while seen.len() < KILL_AFTER_EVENTS {
        let reply = next_reply(&mut watch).await.unwrap();
        record(&reply.expect("the stream stays open"), &mut seen);
    }

    cluster.node(leader).kill9();
    killed.store(true, Ordering::SeqCst);
    // The old stream ends with the connection; what it delivered before counts.
    while let Ok(Some(reply)) = next_reply(&mut watch).await {
        record(&reply, &mut seen);
    }
    let seen_from_old_leader = seen.len();
    let last_seen = *seen.last().unwrap();

    // Resume on a survivor from the revision after the last one seen.
    let survivor = addrs.iter().find(|a| **a != leader_addr).unwrap().clone();
    let mut resumed = open_watch(&survivor, &prefix, &end, last_seen + 1)
        .await
        .unwrap();
    let created = next_reply(&mut resumed).await.unwrap().unwrap();
    assert!(created.created && !created.canceled, "{created:?}");
    record(&created, &mut seen);

    let (acked, acked_after_kill) = writer.await.unwrap();
    assert_eq!(acked.len(), KEYS);
    assert!(
        acked_after_kill > 0,
        "the writer finished before the kill; kill earlier"
    );
    // Every write that was committed, acknowledged or not: each key was written once.
    let everything = RangeRequest {
        key: prefix.clone(),
        range_end: end.clone(),
        ..Default::default()
    };
    let committed = KvClient::new(channel(&survivor))
        .range(everything)
        .await
        .unwrap()
        .into_inner();
    let committed: BTreeSet<i64> = committed.kvs.iter().map(|kv| kv.mod_revision).collect();
    let last_committed = *committed.last().unwrap();
    while *seen.last().unwrap() < last_committed {
        let reply = next_reply(&mut resumed).await.unwrap();
        record(&reply.expect("the resumed stream stays open"), &mut seen);
    }

    assert!(
        seen.windows(2).all(|pair| pair[0] < pair[1]),
        "events out of order or repeated: {seen:?}"
    );
    let delivered: BTreeSet<i64> = seen.iter().copied().collect();
    let missing: Vec<_> = committed.difference(&delivered).collect();
    let extra: Vec<_> = delivered.difference(&committed).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, not committed {extra:?}"
    );
    let unseen_acks: Vec<_> = acked.iter().filter(|r| !delivered.contains(r)).collect();
    assert!(
        unseen_acks.is_empty(),
        "acknowledged but never delivered: {unseen_acks:?}"
    );
    eprintln!(
        "delivered {} events ({seen_from_old_leader} by the old leader), {acked_after_kill} \
         writes acknowledged after the kill",
        seen.len()
    );
    for node in &cluster.nodes {
        node.assert_no_panic();
    }
}

/// What the two lock contenders share.
#[derive(Default)]
struct Shared {
    /// Set while a contender is in the critical section.
    inside: AtomicBool,
    /// Every entry into the critical section, in order: (contender, fencing token).
    journal: Mutex<Vec<(usize, i64)>>,
    /// Set once a holder saw the other contender queued behind it.
    contended: AtomicBool,
}

/// Value of the fence key for `token`, zero-padded so that byte order is numeric order.
fn token_text(token: i64) -> Vec<u8> {
    format!("{token:020}").into_bytes()
}

/// Writes to the fenced resource: accepted only if `token` is newer than every token the
/// resource accepted before, as a storage service that checks fencing tokens would.
async fn fenced_write(kv: &mut KvClient<Channel>, token: i64) -> bool {
    let put = |key: &str, value: Vec<u8>| RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: key.into(),
            value,
            ..Default::default()
        })),
    };
    let txn = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Less as i32,
            target: CompareTarget::Value as i32,
            key: b"fence".to_vec(),
            range_end: Vec::new(),
            target_union: Some(TargetUnion::Value(token_text(token))),
        }],
        success: vec![
            put("fence", token_text(token)),
            put(
                "resource",
                format!("written under token {token}").into_bytes(),
            ),
        ],
        failure: Vec::new(),
    };
    kv.txn(txn).await.unwrap().into_inner().succeeded
}

/// Keeps `lease` alive over a LeaseKeepAlive stream, renewing every second, until `stop`;
/// returns how many renewals the server confirmed.
async fn keep_alive(
    mut leases: LeaseClient<Channel>,
    lease: i64,
    mut stop: oneshot::Receiver<()>,
) -> usize {
    let (requests, receiver) = mpsc::channel(2);
    let mut replies = leases
        .lease_keep_alive(ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    let mut renewals = 0;
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = &mut stop => return renewals,
            _ = every_second.tick() => {
                requests.send(LeaseKeepAliveRequest { id: lease }).await.unwrap();
            }
            reply = replies.message() => {
                let reply = reply.unwrap().expect("the keep-alive stream stays open");
                assert!(reply.ttl > 0, "lease {lease} expired: {reply:?}");
                renewals += 1;
            }
        }
    }
}

/// The contenders' lease TTL, in seconds. They keep contending for longer than that, so
/// their leases outlive it only through keep-alives.
const LOCK_LEASE_TTL: i64 = 3;

/// One contender: takes the lock through `addr` at least `rounds` times and for longer than
/// the lease TTL, each time entering the critical section, writing to the fenced
/// resource and unlocking. Returns how many times it held the lock.
async fn contend(me: usize, addr: String, rounds: usize, shared: Arc<Shared>) -> usize {
    let channel = channel(&addr);
    let mut leases = LeaseClient::new(channel.clone());
    let mut locks = LockClient::new(channel.clone());
    let mut kv = KvClient::new(channel);
    let grant = LeaseGrantRequest {
        ttl: LOCK_LEASE_TTL,
        id: 0,
    };
    let lease = leases.lease_grant(grant).await.unwrap().into_inner().id;
    let (stop, stopped) = oneshot::channel();
    let renewer = tokio::spawn(keep_alive(leases.clone(), lease, stopped));
    let started = Instant::now();
    let long_enough = Duration::from_secs(LOCK_LEASE_TTL as u64 + 1);
    let mut held_times = 0;
    while held_times < rounds || started.elapsed() < long_enough {
        held_times += 1;
        let request = LockRequest {
            name: b"contended".to_vec(),
            lease,
        };
        let held = tokio::time::timeout(WAIT, locks.lock(request))
            .await
            .expect("the lock within the wait")
            .unwrap()
            .into_inner();
        // The fencing token is the lock key's create revision.
        let read = RangeRequest {
            key: held.key.clone(),
            ..Default::default()
        };
        let key_now = kv.range(read).await.unwrap().into_inner();
        let token = key_now.kvs[0].create_revision;
        let header = held.header.unwrap();
        assert!(header.revision >= token, "{header:?} below token {token}");

        assert!(
            !shared.inside.swap(true, Ordering::SeqCst),
            "contender {me} entered the critical section while the other was inside"
        );
        shared.journal.lock().unwrap().push((me, token));
        if !shared.contended.load(Ordering::SeqCst) {
            // Stay inside until the other contender is queued, so that at least one
            // handover is between contenders that really competed.
            let queue = RangeRequest {
                key: b"contended/".to_vec(),
                range_end: prefix_end(b"contended/"),
                count_only: true,
                ..Default::default()
            };
            wait_until(WAIT, "the other contender to queue", || {
                let mut kv = kv.clone();
                let queue = queue.clone();
                async move {
                    let count = kv.range(queue).await.ok()?.into_inner().count;
                    (count >= 2).then_some(())
                }
            })
            .await;
            shared.contended.store(true, Ordering::SeqCst);
        }
        assert!(
            fenced_write(&mut kv, token).await,
            "the resource refused token {token} of contender {me}: a stale holder"
        );
        shared.inside.store(false, Ordering::SeqCst);
        locks.unlock(UnlockRequest { key: held.key }).await.unwrap();
    }
    // The lease outlived its TTL through the keep-alives.
    let alive = leases
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: lease,
            keys: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(alive.ttl > 0, "contender {me}'s lease expired: {alive:?}");
    stop.send(()).unwrap();
    let renewals = renewer.await.unwrap();
    assert!(
        renewals >= LOCK_LEASE_TTL as usize,
        "contender {me}'s lease was renewed only {renewals} times"
    );
    leases
        .lease_revoke(LeaseRevokeRequest { id: lease })
        .await
        .unwrap();
    held_times
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_two_lock_contenders_take_turns_with_increasing_fencing_tokens() {
    const ROUNDS: usize = 15;
    let cluster = Cluster::start(3, GRPC_ON_ANY_PORT).await;
    let addrs = cluster.grpc_endpoints();
    let fence = PutRequest {
        key: b"fence".to_vec(),
        value: token_text(0),
        ..Default::default()
    };
    KvClient::new(channel(&addrs[0])).put(fence).await.unwrap();

    let shared = Arc::new(Shared::default());
    let first = tokio::spawn(contend(0, addrs[1].clone(), ROUNDS, shared.clone()));
    let second = tokio::spawn(contend(1, addrs[2].clone(), ROUNDS, shared.clone()));
    let held_times = first.await.unwrap() + second.await.unwrap();

    let journal = shared.journal.lock().unwrap().clone();
    assert_eq!(journal.len(), held_times, "{journal:?}");
    assert!(shared.contended.load(Ordering::SeqCst));
    assert!(
        journal.windows(2).all(|pair| pair[0].1 < pair[1].1),
        "fencing tokens did not increase from holder to holder: {journal:?}"
    );
    let handovers = journal
        .windows(2)
        .filter(|pair| pair[0].0 != pair[1].0)
        .count();
    assert!(
        handovers >= 1,
        "the contenders never took turns: {journal:?}"
    );
    let last_token = journal.last().unwrap().1;
    let fence_now = KvClient::new(channel(&addrs[0]))
        .range(RangeRequest {
            key: b"fence".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fence_now.kvs[0].value, token_text(last_token));
    let lock_keys = RangeRequest {
        key: b"contended/".to_vec(),
        range_end: prefix_end(b"contended/"),
        count_only: true,
        ..Default::default()
    };
    let left = KvClient::new(channel(&addrs[0]))
        .range(lock_keys)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(left.count, 0, "lock keys were left behind");
    eprintln!("{} critical sections, {handovers} handovers", journal.len());
    for node in &cluster.nodes {
        node.assert_no_panic();
    }
}

/// Clears what differs between two servers in a header: ids and the raft term.
fn plain(header: &mut Option<ResponseHeader>) {
    if let Some(header) = header {
        header.cluster_id = 0;
        header.member_id = 0;
        header.raft_term = 0;
    }
}

/// Describes a call's outcome so that two servers' outcomes can be compared.
fn outcome<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    clear: fn(&mut T),
) -> String {
    match result {
        Ok(reply) => {
            let mut reply = reply.into_inner();
            clear(&mut reply);
            format!("ok {reply:?}")
        }
        Err(status) => format!("error {:?}: {}", status.code(), status.message()),
    }
}

fn op(request: Op) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

fn put(key: &str, value: Vec<u8>) -> PutRequest {
    PutRequest {
        key: key.into(),
        value,
        ..Default::default()
    }
}

/// The same bad (and borderline) requests against one server, in order; each case's name
/// and outcome. Both servers start empty, so revisions agree.
async fn bad_input_outcomes(addr: &str) -> Vec<(&'static str, String)> {
    let channel = channel(addr);
    let mut kv = KvClient::new(channel.clone());
    let mut leases = LeaseClient::new(channel.clone());
    let mut outcomes = Vec::new();

    let result = kv.put(put("a", b"1".to_vec())).await;
    outcomes.push((
        "put within the limit",
        outcome(result, |r| plain(&mut r.header)),
    ));
    let result = kv.put(put("big", vec![7; 100 * 1024])).await;
    outcomes.push((
        "put of 100 KiB over a 64 KiB limit",
        outcome(result, |r| plain(&mut r.header)),
    ));
    let result = kv
        .put(put("huge", vec![7; 64 * 1024 + 512 * 1024 + 1]))
        .await;
    outcomes.push((
        "put past the decoding limit",
        outcome(result, |r| plain(&mut r.header)),
    ));

    let result = kv.range(RangeRequest::default()).await;
    outcomes.push((
        "range without a key",
        outcome(result, |r| plain(&mut r.header)),
    ));
    let future = RangeRequest {
        key: b"a".to_vec(),
        revision: 1000,
        ..Default::default()
    };
    let result = kv.range(future).await;
    outcomes.push((
        "range at a future revision",
        outcome(result, |r| plain(&mut r.header)),
    ));
    let inverted = RangeRequest {
        key: b"b".to_vec(),
        range_end: b"a".to_vec(),
        ..Default::default()
    };
    let result = kv.range(inverted).await;
    outcomes.push((
        "range with its end below its key",
        outcome(result, |r| plain(&mut r.header)),
    ));

    let inverted_delete = DeleteRangeRequest {
        key: b"b".to_vec(),
        range_end: b"a".to_vec(),
        ..Default::default()
    };
    let inverted_range = RangeRequest {
        key: b"b".to_vec(),
        range_end: b"a".to_vec(),
        ..Default::default()
    };
    let txn = TxnRequest {
        compare: Vec::new(),
        success: vec![
            op(Op::RequestDeleteRange(inverted_delete.clone())),
            op(Op::RequestRange(inverted_range.clone())),
            op(Op::RequestPut(put("c", b"1".to_vec()))),
            op(Op::RequestRange(inverted_range)),
            op(Op::RequestDeleteRange(inverted_delete)),
        ],
        failure: Vec::new(),
    };
    let result = kv.txn(txn).await;
    outcomes.push((
        "txn with inverted ranges and deletes",
        outcome(result, |r| plain(&mut r.header)),
    ));
    let nested = TxnRequest {
        compare: Vec::new(),
        success: vec![op(Op::RequestTxn(TxnRequest {
            compare: Vec::new(),
            success: vec![
                op(Op::RequestRange(RangeRequest {
                    key: b"a".to_vec(),
                    ..Default::default()
                })),
                op(Op::RequestPut(put("d", b"1".to_vec()))),
            ],
            failure: Vec::new(),
        }))],
        failure: Vec::new(),
    };
    let result = kv.txn(nested).await;
    outcomes.push(("nested txn", outcome(result, |r| plain(&mut r.header))));
    let duplicate = TxnRequest {
        compare: Vec::new(),
        success: vec![
            op(Op::RequestPut(put("e", b"1".to_vec()))),
            op(Op::RequestPut(put("e", b"2".to_vec()))),
        ],
        failure: Vec::new(),
    };
    let result = kv.txn(duplicate).await;
    outcomes.push((
        "txn putting a key twice",
        outcome(result, |r| plain(&mut r.header)),
    ));

    let mut watch = open_watch(addr, b"b", b"a", 0).await.unwrap();
    let mut first = next_reply(&mut watch).await.unwrap().unwrap();
    plain(&mut first.header);
    outcomes.push(("watch with its end below its key", format!("{first:?}")));

    let leased = PutRequest {
        lease: 0x1234,
        ..put("f", b"1".to_vec())
    };
    let result = kv.put(leased).await;
    outcomes.push((
        "put with an unknown lease",
        outcome(result, |r| plain(&mut r.header)),
    ));
    let ask = LeaseTimeToLiveRequest {
        id: 0x1234,
        keys: true,
    };
    let result = leases.lease_time_to_live(ask).await;
    outcomes.push((
        "time-to-live of an unknown lease",
        outcome(result, |r| plain(&mut r.header)),
    ));
    let result = leases.lease_revoke(LeaseRevokeRequest { id: 0x1234 }).await;
    outcomes.push((
        "revoke of an unknown lease",
        outcome(result, |r| plain(&mut r.header)),
    ));
    let (requests, receiver) = mpsc::channel(1);
    requests
        .send(LeaseKeepAliveRequest { id: 0x1234 })
        .await
        .unwrap();
    let mut renewals = leases
        .lease_keep_alive(ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    let mut renewed = tokio::time::timeout(WAIT, renewals.message())
        .await
        .expect("a keep-alive reply within the wait")
        .unwrap()
        .unwrap();
    plain(&mut renewed.header);
    outcomes.push(("keep-alive of an unknown lease", format!("{renewed:?}")));
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t50_bad_input_gets_the_code_etcd_gives() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("small-requests.toml");
    std::fs::write(&config, "[kv]\nmax_request_bytes = \"64KiB\"\n").unwrap();
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend_from_slice(GRPC_ON_ANY_PORT);
    let node = NodeProc::start(1, root.path(), Some("1=127.0.0.1:0"), &args).await;
    wait_until(WAIT, "Strata to serve the etcd API with a leader", || {
        etcd_status(node.grpc_addr())
    })
    .await;
    let mut etcd = EtcdProc::start(root.path(), &["--max-request-bytes", "65536"]).await;

    let from_etcd = bad_input_outcomes(&etcd.client).await;
    let from_strata = bad_input_outcomes(node.grpc_addr()).await;
    for ((case, etcd_gives), (_, strata_gives)) in from_etcd.iter().zip(&from_strata) {
        assert_eq!(
            strata_gives, etcd_gives,
            "{case}: Strata answers differently from etcd"
        );
    }
    assert_eq!(from_strata.len(), from_etcd.len());

    // What etcd 3.4 answers, spelled out (the comparison above would pass if both broke).
    let strata = |case: &str| {
        from_strata
            .iter()
            .find(|(name, _)| *name == case)
            .map(|(_, outcome)| outcome.clone())
            .unwrap()
    };
    assert_eq!(
        strata("put of 100 KiB over a 64 KiB limit"),
        "error InvalidArgument: etcdserver: request is too large"
    );
    assert!(strata("put past the decoding limit")
        .starts_with("error ResourceExhausted: grpc: received message larger than max ("));
    assert_eq!(
        strata("range without a key"),
        "error InvalidArgument: etcdserver: key is not provided"
    );
    assert_eq!(
        strata("range at a future revision"),
        "error OutOfRange: etcdserver: mvcc: required revision is a future revision"
    );
    // etcd 3.4 answers an inverted range with nothing, also inside a txn; a watch of one is
    // created and canceled at once with the reason.
    assert!(strata("txn with inverted ranges and deletes").starts_with("ok "));
    let watch = strata("watch with its end below its key");
    assert!(
        watch.contains("watch_id: -1, created: true, canceled: true")
            && watch.contains("cancel_reason: \"mvcc: watcher range is empty\""),
        "{watch}"
    );
    assert_eq!(
        strata("txn putting a key twice"),
        "error InvalidArgument: etcdserver: duplicate key given in txn request"
    );
    assert_eq!(
        strata("put with an unknown lease"),
        "error NotFound: etcdserver: requested lease not found"
    );
    assert!(
        strata("time-to-live of an unknown lease").contains("ttl: -1"),
        "{}",
        strata("time-to-live of an unknown lease")
    );
    assert_eq!(
        strata("revoke of an unknown lease"),
        "error NotFound: etcdserver: requested lease not found"
    );
    assert!(strata("keep-alive of an unknown lease").contains("ttl: 0"));
    assert!(etcd.is_running(), "etcd died:\n{}", etcd.logs());
    node.assert_no_panic();
}

/// Watches a test opens at once over one connection: with HTTP/2's default 64 KiB connection
/// window the server dropped the connection after a few thousand (13,694 of 20,000 failed in
/// the run that checked this test catches it; 5,000 at once got through).
const WATCH_BURST: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_thousands_of_watches_opened_at_once_on_one_connection_all_work() {
    let root = tempfile::tempdir().unwrap();
    let node = NodeProc::start(1, root.path(), Some("1=127.0.0.1:0"), GRPC_ON_ANY_PORT).await;
    wait_until(WAIT, "Strata to serve the etcd API with a leader", || {
        etcd_status(node.grpc_addr())
    })
    .await;
    // One connection for every stream, as etcd clients multiplex theirs. Its own window is as
    // large as the server's, so that the burst of `created` answers does not trip the same
    // limit on the client's side.
    let channel = Channel::from_shared(format!("http://{}", node.grpc_addr()))
        .unwrap()
        .initial_connection_window_size(8 << 20)
        .connect()
        .await
        .unwrap();
    let opened: Vec<_> = futures::future::join_all((0..WATCH_BURST).map(|_| {
        let channel = channel.clone();
        async move {
            let mut stream = open_watch_on(channel, b"burst/", &prefix_end(b"burst/"), 0).await?;
            let created = next_reply(&mut stream).await?;
            assert!(created.is_some_and(|reply| reply.created));
            Ok::<_, tonic::Status>(stream)
        }
    }))
    .await;
    let failed: Vec<_> = opened.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {WATCH_BURST} watches failed to open, the first with {:?}",
        failed.len(),
        failed[0]
    );
    let put = put("burst/key", b"v".to_vec());
    KvClient::new(channel.clone()).put(put).await.unwrap();
    let delivered = futures::future::join_all(opened.into_iter().map(|stream| async move {
        let mut stream = stream.unwrap();
        let reply = next_reply(&mut stream).await.unwrap().unwrap();
        reply.events.len() == 1 && reply.events[0].kv.as_ref().unwrap().key == b"burst/key"
    }))
    .await;
    assert!(
        delivered.iter().all(|seen| *seen),
        "every watch saw the put"
    );
}
