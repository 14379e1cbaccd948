use crate::{next, TestServer};
use strata_etcd::pb::etcdserverpb::watch_create_request::FilterType;
use strata_etcd::pb::etcdserverpb::watch_request::RequestUnion;
use strata_etcd::pb::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, WatchCancelRequest, WatchCreateRequest,
    WatchProgressRequest, WatchRequest, WatchResponse,
};
use strata_etcd::pb::mvccpb::event::EventType;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// An open watch stream: requests go in through `requests`, replies come out of `replies`.
struct Stream {
    requests: mpsc::Sender<WatchRequest>,
    replies: tonic::Streaming<WatchResponse>,
}

impl Stream {
    async fn open(server: &TestServer) -> Stream {
        let (requests, outgoing) = mpsc::channel(16);
        let replies = server
            .watch()
            .watch(ReceiverStream::new(outgoing))
            .await
            .expect("open a watch stream")
            .into_inner();
        Stream { requests, replies }
    }

    async fn send(&self, request: RequestUnion) {
        self.requests
            .send(WatchRequest {
                request_union: Some(request),
            })
            .await
            .expect("stream open");
    }

    async fn create(&self, create: WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(create)).await;
    }

    async fn reply(&mut self) -> WatchResponse {
        next(&mut self.replies)
            .await
            .expect("no error")
            .expect("stream still open")
    }
}

fn on_prefix(prefix: &str) -> WatchCreateRequest {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    WatchCreateRequest {
        key: prefix.into(),
        range_end: end,
        ..Default::default()
    }
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_watch_sees_puts_and_deletes() {
    let server = TestServer::start().await;
    let mut kv = server.kv();
    let mut stream = Stream::open(&server).await;
    stream
        .create(WatchCreateRequest {
            prev_kv: true,
            ..on_prefix("w/")
        })
        .await;
    let created = stream.reply().await;
    assert!(created.created);
    assert_eq!(created.watch_id, 0);
    assert_eq!(created.header.unwrap().revision, 1);

    kv.put(put("w/a", "1")).await.unwrap();
    kv.put(put("other", "x")).await.unwrap();
    kv.put(put("w/a", "2")).await.unwrap();
    kv.delete_range(DeleteRangeRequest {
        key: b"w/a".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let reply = stream.reply().await;
        assert_eq!(reply.watch_id, 0);
        assert!(!reply.created && !reply.canceled);
        seen.extend(reply.events);
    }
    let kinds: Vec<i32> = seen.iter().map(|e| e.r#type).collect();
    assert_eq!(
        kinds,
        [
            EventType::Put as i32,
            EventType::Put as i32,
            EventType::Delete as i32
        ]
    );
    let revisions: Vec<i64> = seen
        .iter()
        .map(|e| e.kv.as_ref().unwrap().mod_revision)
        .collect();
    assert_eq!(revisions, [2, 4, 5]);
    assert_eq!(seen[1].prev_kv.as_ref().unwrap().value, b"1");
}

#[tokio::test]
async fn many_watches_on_one_stream_with_history_filters_cancel_and_progress() {
    let server = TestServer::start().await;
    let mut kv = server.kv();
    kv.put(put("h/a", "1")).await.unwrap();
    kv.put(put("h/b", "2")).await.unwrap();

    let mut stream = Stream::open(&server).await;
    stream
        .create(WatchCreateRequest {
            start_revision: 2,
            ..on_prefix("h/")
        })
        .await;
    let created = stream.reply().await;
    assert!(created.created);
    assert_eq!(created.watch_id, 0);
    let history = stream.reply().await;
    assert_eq!(history.events.len(), 2);

    // A client-chosen id, and a filter that drops puts.
    stream
        .create(WatchCreateRequest {
            watch_id: 7,
            filters: vec![FilterType::Noput as i32],
            ..on_prefix("h/")
        })
        .await;
    let created = stream.reply().await;
    assert!(created.created);
    assert_eq!(created.watch_id, 7);

    // The same id again is refused with id -1.
    stream
        .create(WatchCreateRequest {
            watch_id: 7,
            ..on_prefix("h/")
        })
        .await;
    let refused = stream.reply().await;
    assert!(refused.created && refused.canceled);
    assert_eq!(refused.watch_id, -1);

    kv.put(put("h/c", "3")).await.unwrap();
    let event = stream.reply().await;
    assert_eq!(event.watch_id, 0, "watch 7 filters puts out");

    kv.delete_range(DeleteRangeRequest {
        key: b"h/c".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut ids = vec![stream.reply().await.watch_id, stream.reply().await.watch_id];
    ids.sort();
    assert_eq!(ids, [0, 7]);

    stream
        .send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    let progress = stream.reply().await;
    assert_eq!(progress.watch_id, -1);
    assert_eq!(progress.header.unwrap().revision, 5);
    assert!(progress.events.is_empty());

    stream
        .send(RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: 0,
        }))
        .await;
    let canceled = stream.reply().await;
    assert!(canceled.canceled);
    assert_eq!(canceled.watch_id, 0);

    // The next automatic id skips the ones in use.
    stream.create(on_prefix("h/")).await;
    let created = stream.reply().await;
    assert_eq!(created.watch_id, 1);
}

#[tokio::test]
async fn a_compacted_start_revision_cancels_the_watch() {
    let server = TestServer::start().await;
    let mut kv = server.kv();
    for value in ["1", "2", "3"] {
        kv.put(put("k", value)).await.unwrap();
    }
    kv.compact(CompactionRequest {
        revision: 3,
        physical: false,
    })
    .await
    .unwrap();

    let mut stream = Stream::open(&server).await;
    stream
        .create(WatchCreateRequest {
            key: b"k".to_vec(),
            start_revision: 2,
            ..Default::default()
        })
        .await;
    let created = stream.reply().await;
    assert!(created.created);
    let canceled = stream.reply().await;
    assert!(canceled.canceled);
    assert_eq!(canceled.watch_id, created.watch_id);
    assert_eq!(canceled.compact_revision, 3);

    // The stream itself stays usable.
    stream
        .create(WatchCreateRequest {
            key: b"k".to_vec(),
            start_revision: 3,
            ..Default::default()
        })
        .await;
    assert!(stream.reply().await.created);
    let replay = stream.reply().await;
    assert_eq!(replay.events[0].kv.as_ref().unwrap().value, b"2");
}

#[tokio::test]
async fn closing_the_stream_drops_the_watches() {
    let server = TestServer::start().await;
    let mut kv = server.kv();
    let mut stream = Stream::open(&server).await;
    stream.create(on_prefix("d/")).await;
    assert!(stream.reply().await.created);
    drop(stream);
    // The backend notices the dropped receiver on its next delivery.
    kv.put(put("d/x", "1")).await.unwrap();
    kv.put(put("d/y", "1")).await.unwrap();
    let deadline = tokio::time::Instant::now() + crate::WAIT;
    while server.backend.watcher_count() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "watch still registered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        kv.put(put("d/z", "1")).await.unwrap();
    }
}
