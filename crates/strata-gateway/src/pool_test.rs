//! The HTTP/1.1 pool against small upstreams written here, whose every byte the tests decide.

use super::*;
use crate::metrics::Metrics;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a test upstream does on each connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Answers every request, keeping the connection open.
    KeepAlive,
    /// Answers the first request, then closes the connection without saying so.
    CloseAfterFirst,
    /// Answers the first request, reads the second and closes without answering it.
    DropSecond,
    /// Answers with `Connection: close` and closes.
    ConnectionClose,
    /// Answers the first request, reads the second and never answers it.
    SilentSecond,
}

/// A test upstream: its address and what it counted.
struct Upstream {
    address: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

/// The head of the next request on `stream` (and its body, skipped), or `None` at its end.
async fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut received = Vec::new();
    let mut byte = [0u8; 1];
    while !received.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => received.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&received).to_string();
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(head)
}

async fn upstream(mode: Mode) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (opened, served) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            opened.fetch_add(1, Ordering::SeqCst);
            let served = served.clone();
            tokio::spawn(async move {
                let mut on_this = 0;
                while let Some(head) = read_request(&mut stream).await {
                    on_this += 1;
                    if mode == Mode::DropSecond && on_this == 2 {
                        return;
                    }
                    if mode == Mode::SilentSecond && on_this == 2 {
                        std::future::pending::<()>().await;
                    }
                    served.fetch_add(1, Ordering::SeqCst);
                    let close = if mode == Mode::ConnectionClose {
                        "connection: close\r\n"
                    } else {
                        ""
                    };
                    let body = if head.starts_with("HEAD ") {
                        ""
                    } else {
                        "hello"
                    };
                    let answer =
                        format!("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n{close}\r\n{body}");
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    if matches!(mode, Mode::CloseAfterFirst | Mode::ConnectionClose) {
                        return;
                    }
                }
            });
        }
    });
    Upstream {
        address,
        connections,
        requests,
    }
}

fn settings() -> Settings {
    Settings {
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(90),
        max_idle_per_member: 8,
        replay_after_idle: Duration::ZERO,
    }
}

fn pool_with(settings: Settings) -> (Http1Pool, Arc<UpstreamMetrics>) {
    let metrics = Metrics::new(&prometheus::Registry::new()).expect("metrics register");
    let upstream = Arc::new(metrics.upstream("u"));
    let pool = Http1Pool::new(settings, upstream.clone(), TaskTracker::new());
    (pool, upstream)
}

fn request(method: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri("/x")
        .header("host", "example.com")
        .body(Body::empty())
        .unwrap()
}

/// A deadline no test reaches.
fn far() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(60)
}

/// Sends a request and reads its whole answer.
async fn get(pool: &Http1Pool, member: &str) -> Result<String, SendError> {
    // Its headers stay raw (as the HTTP/1.1 front asks): reuse does not depend on them.
    let response = pool
        .send(member, request("GET"), true, true, b"", far())
        .await?
        .response;
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok(String::from_utf8_lossy(&body).to_string())
}

#[tokio::test]
async fn a_connection_is_reused_once_its_answer_was_read() {
    let upstream = upstream(Mode::KeepAlive).await;
    let (pool, metrics) = pool_with(settings());
    for _ in 0..5 {
        assert_eq!(get(&pool, &upstream.address).await.unwrap(), "hello");
    }
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
    assert_eq!(metrics.opened.get(), 1);
    assert_eq!(metrics.open.get(), 1);
    assert_eq!(pool.idle_count(&upstream.address), 1);
}

#[tokio::test]
async fn an_answer_without_a_body_returns_its_connection_unread() {
    let upstream = upstream(Mode::KeepAlive).await;
    let (pool, _) = pool_with(settings());
    let response = pool
        .send(&upstream.address, request("HEAD"), true, false, b"", far())
        .await
        .unwrap();
    assert_eq!(pool.idle_count(&upstream.address), 1);
    drop(response);
    get(&pool, &upstream.address).await.unwrap();
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_closed_by_its_member_while_idle_is_not_used_again() {
    let upstream = upstream(Mode::CloseAfterFirst).await;
    let (pool, metrics) = pool_with(settings());
    for _ in 0..3 {
        assert_eq!(get(&pool, &upstream.address).await.unwrap(), "hello");
    }
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 3);
    assert_eq!(metrics.opened.get(), 3);
}

#[tokio::test]
async fn an_idempotent_request_is_sent_again_when_a_pooled_connection_breaks_before_answering() {
    let upstream = upstream(Mode::DropSecond).await;
    let (pool, _) = pool_with(settings());
    for _ in 0..3 {
        assert_eq!(get(&pool, &upstream.address).await.unwrap(), "hello");
    }
    // Each connection answers its first request and drops its second, which the next
    // connection answers as its first.
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 3);
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_request_that_may_not_be_repeated_fails_when_a_pooled_connection_breaks() {
    let upstream = upstream(Mode::DropSecond).await;
    let (pool, _) = pool_with(settings());
    get(&pool, &upstream.address).await.unwrap();
    let error = pool
        .send(&upstream.address, request("POST"), false, false, b"", far())
        .await
        .unwrap_err();
    assert!(!error.is_connect(), "{error}");
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_request_is_not_sent_again_on_a_connection_idle_for_less_than_the_replay_threshold() {
    let upstream = upstream(Mode::DropSecond).await;
    let (pool, _) = pool_with(Settings {
        replay_after_idle: Duration::from_secs(3600),
        ..settings()
    });
    get(&pool, &upstream.address).await.unwrap();
    let error = get(&pool, &upstream.address).await.unwrap_err();
    assert!(!error.is_connect(), "{error}");
}

#[tokio::test]
async fn connection_close_and_expired_connections_are_not_reused() {
    let closing = upstream(Mode::ConnectionClose).await;
    let (pool, _) = pool_with(settings());
    get(&pool, &closing.address).await.unwrap();
    assert_eq!(pool.idle_count(&closing.address), 0);
    get(&pool, &closing.address).await.unwrap();
    assert_eq!(closing.connections.load(Ordering::SeqCst), 2);

    let upstream = upstream(Mode::KeepAlive).await;
    let (pool, metrics) = pool_with(Settings {
        idle_timeout: Duration::ZERO,
        ..settings()
    });
    get(&pool, &upstream.address).await.unwrap();
    get(&pool, &upstream.address).await.unwrap();
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 2);
    // The expired one was closed at the second checkout; the second waits for the sweep.
    assert_eq!(metrics.open.get(), 1);
    let closed = pool.shared.sweep_idle();
    assert_eq!(closed.len(), 1);
    drop(closed);
    assert_eq!(metrics.open.get(), 0);
    assert!(pool.shared.lock_idle().is_empty());
}

#[tokio::test]
async fn a_body_dropped_before_its_end_closes_its_connection() {
    let upstream = upstream(Mode::KeepAlive).await;
    let (pool, metrics) = pool_with(settings());
    let response = pool
        .send(&upstream.address, request("GET"), true, false, b"", far())
        .await
        .unwrap();
    drop(response);
    assert_eq!(pool.idle_count(&upstream.address), 0);
    assert_eq!(metrics.open.get(), 0);
    get(&pool, &upstream.address).await.unwrap();
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn idle_connections_beyond_the_limit_are_closed() {
    let upstream = upstream(Mode::KeepAlive).await;
    let (pool, metrics) = pool_with(Settings {
        max_idle_per_member: 1,
        ..settings()
    });
    // Two answers held at once: two connections.
    let first = pool
        .send(&upstream.address, request("GET"), true, false, b"", far())
        .await
        .unwrap();
    let second = pool
        .send(&upstream.address, request("GET"), true, false, b"", far())
        .await
        .unwrap();
    assert_eq!(metrics.opened.get(), 2);
    first.response.into_body().collect().await.unwrap();
    second.response.into_body().collect().await.unwrap();
    assert_eq!(pool.idle_count(&upstream.address), 1);
    assert_eq!(metrics.open.get(), 1);
}

#[tokio::test]
async fn a_member_that_refuses_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    let (pool, metrics) = pool_with(settings());
    let error = pool
        .send(&address, request("GET"), true, false, b"", far())
        .await
        .unwrap_err();
    assert!(error.is_connect(), "{error}");
    assert_eq!(metrics.opened.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_from_many_tasks_share_the_connections() {
    let upstream = upstream(Mode::KeepAlive).await;
    let (pool, metrics) = pool_with(settings());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (pool, address) = (pool.clone(), upstream.address.clone());
        tasks.spawn(async move {
            for _ in 0..50 {
                assert_eq!(get(&pool, &address).await.unwrap(), "hello");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 400);
    assert!(metrics.opened.get() <= 8, "{} opened", metrics.opened.get());
    assert_eq!(
        pool.idle_count(&upstream.address) as i64,
        metrics.open.get()
    );
}

#[tokio::test]
async fn a_request_without_a_host_header_names_the_member() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let seen = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let head = read_request(&mut stream).await.unwrap();
        stream
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        head
    });
    let (pool, _) = pool_with(settings());
    let mut bare = Request::new(Body::empty());
    *bare.uri_mut() = hyper::Uri::from_static("/y?z=1");
    let response = pool
        .send(&address, bare, true, false, b"", far())
        .await
        .unwrap()
        .response;
    assert_eq!(response.status(), 204);
    let head = seen.await.unwrap().to_ascii_lowercase();
    assert!(head.starts_with("get /y?z=1 http/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("host: {address}\r\n")), "{head}");
}

#[tokio::test]
async fn an_answer_late_for_its_deadline_times_out_and_its_connection_is_not_reused() {
    let upstream = upstream(Mode::SilentSecond).await;
    let (pool, _) = pool_with(settings());
    get(&pool, &upstream.address).await.unwrap();
    assert_eq!(pool.idle_count(&upstream.address), 1);
    // The pooled connection's timer was set for the first request's far deadline; this
    // request's nearer one must still end the wait.
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_millis(300);
    let sent = pool
        .send(
            &upstream.address,
            request("GET"),
            true,
            false,
            b"",
            deadline,
        )
        .await;
    assert!(matches!(sent, Err(SendError::TimedOut)), "{sent:?}");
    assert!(tokio::time::Instant::now() >= deadline);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(pool.idle_count(&upstream.address), 0);
    // The next request opens a new connection (its first request is answered).
    get(&pool, &upstream.address).await.unwrap();
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 2);
}
