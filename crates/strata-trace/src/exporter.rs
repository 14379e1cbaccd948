//! Finished spans go through a bounded queue to one task that posts them to a collector in
//! batches. A full queue drops spans (counted) rather than slow a request down, and a failed
//! post drops its batch with one warning until posts succeed again.

use crate::span::{export_body, Span};
use prometheus::IntCounter;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Spans waiting for export at most.
const QUEUE: usize = 8192;
/// Spans per request to the collector at most.
const BATCH: usize = 512;
/// How long a span waits for its batch to fill.
const LINGER: Duration = Duration::from_millis(500);
/// How long one post may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where spans go.
#[derive(Debug, Clone)]
pub struct Collector {
    /// OTLP/HTTP traces URLs (`http://HOST:4318/v1/traces`). Batches go to the first; after a
    /// failed connection the next batch goes to the next one, and so on round the list.
    pub urls: Vec<String>,
    /// Sent as `Authorization: Bearer TOKEN` with every post (a Strata node with access
    /// control on wants one).
    pub token: Option<String>,
    /// The client posts go through, with its TLS settings.
    pub http: reqwest::Client,
}

/// A collector in this process (the node's own monitor): spans are handed over as they are,
/// with no encoding, no HTTP and no credentials to present.
pub trait LocalSink: Send + Sync + 'static {
    /// Stores `spans` of `service`. Blocking: it may write a file.
    fn accept(&self, service: &str, spans: Vec<Span>) -> Result<(), String>;
}

/// What an exporter counts.
#[derive(Debug, Clone)]
pub struct Counters {
    /// Spans the collector accepted.
    pub exported: IntCounter,
    /// Spans dropped: the queue was full or the collector failed.
    pub dropped: IntCounter,
}

/// A handle that queues spans for export; clones share the queue.
#[derive(Debug, Clone)]
pub struct Exporter {
    queue: mpsc::Sender<Span>,
    ratio: f64,
    /// At most this many new traces a second (`None`: no cap), as Jaeger's rate-limiting
    /// sampler does: a lone developer's every request is traced, while a load test records a
    /// steady trickle instead of paying for a span per request.
    per_second: Option<Arc<RateCap>>,
    dropped: IntCounter,
}

/// The per-second cap's state: the current second (since `epoch`) in the high 32 bits, traces
/// sampled in it in the low 32.
#[derive(Debug)]
struct RateCap {
    limit: u32,
    epoch: Instant,
    state: AtomicU64,
}

impl RateCap {
    /// Takes one of the slots of the second `now` is in; false when they are gone.
    fn admit(&self, now: Instant) -> bool {
        let second =
            u32::try_from(now.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX);
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let next = if (current >> 32) as u32 != second {
                (u64::from(second) << 32) | 1
            } else if (current as u32) < self.limit {
                current + 1
            } else {
                return false;
            };
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

impl Exporter {
    /// An exporter of `service`'s spans that records `ratio` (0 to 1) of the traces it
    /// starts, and the task that posts them, for the caller to run (and stop by dropping).
    /// The task ends once every handle is dropped and the queue is empty.
    pub fn new(
        collector: Collector,
        service: String,
        ratio: f64,
        counters: Counters,
    ) -> (Exporter, impl Future<Output = ()> + Send + 'static) {
        let (exporter, rx) = Exporter::queue(ratio, &counters);
        (exporter, export(collector, service, counters, rx))
    }

    /// A handle with an empty queue, and the queue's receiving end.
    fn queue(ratio: f64, counters: &Counters) -> (Exporter, mpsc::Receiver<Span>) {
        let (queue, rx) = mpsc::channel(QUEUE);
        let exporter = Exporter {
            queue,
            ratio: ratio.clamp(0.0, 1.0),
            per_second: None,
            dropped: counters.dropped.clone(),
        };
        (exporter, rx)
    }

    /// An exporter that hands its batches to `sink` in this process, and the task that does
    /// it (as [`Exporter::new`]).
    pub fn local(
        sink: Arc<dyn LocalSink>,
        service: String,
        ratio: f64,
        counters: Counters,
    ) -> (Exporter, impl Future<Output = ()> + Send + 'static) {
        let (exporter, rx) = Exporter::queue(ratio, &counters);
        (exporter, export_local(sink, service, counters, rx))
    }

    /// Samples at most `limit` new traces a second (on top of the ratio); 0: no cap. Traces
    /// that arrive sampled (a `traceparent` with the flag) are recorded whatever the cap.
    pub fn per_second(mut self, limit: u32) -> Exporter {
        self.per_second = (limit > 0).then(|| {
            Arc::new(RateCap {
                limit,
                epoch: Instant::now(),
                state: AtomicU64::new(0),
            })
        });
        self
    }

    /// The sampling decision for a trace that starts here.
    pub fn sample_new(&self) -> bool {
        self.sample_new_at(Instant::now())
    }

    /// As [`Exporter::sample_new`], for a trace that starts at `now` (a caller that read the
    /// clock already spares a read).
    pub fn sample_new_at(&self, now: Instant) -> bool {
        let picked = self.ratio >= 1.0 || rand::random::<f64>() < self.ratio;
        picked && self.per_second.as_ref().is_none_or(|cap| cap.admit(now))
    }

    /// Queues a finished span (only when its trace is sampled).
    pub fn record(&self, span: Span) {
        if span.context.sampled && self.queue.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

/// Why a post failed, for the one warning, with a hint where the status says what is wrong.
fn describe(outcome: Result<reqwest::StatusCode, reqwest::Error>) -> String {
    match outcome {
        Ok(status) if status == reqwest::StatusCode::NOT_FOUND => format!(
            "answered {status}: no OTLP traces receiver there (a Strata node without the \
             monitor component?)"
        ),
        Ok(status) if matches!(status.as_u16(), 401 | 403) => {
            format!("answered {status}: the collector refused this process's credentials")
        }
        Ok(status) => format!("answered {status}"),
        Err(e) => e.to_string(),
    }
}

/// The next batch: the first span to arrive and whatever follows it within [`LINGER`], up to
/// [`BATCH`]; `None` once every handle is dropped and the queue is empty.
async fn next_batch(rx: &mut mpsc::Receiver<Span>) -> Option<Vec<Span>> {
    let mut batch = vec![rx.recv().await?];
    let linger = tokio::time::sleep(LINGER);
    tokio::pin!(linger);
    while batch.len() < BATCH {
        tokio::select! {
            span = rx.recv() => match span {
                Some(span) => batch.push(span),
                None => break,
            },
            () = &mut linger => break,
        }
    }
    Some(batch)
}

async fn export_local(
    sink: Arc<dyn LocalSink>,
    service: String,
    counters: Counters,
    mut rx: mpsc::Receiver<Span>,
) {
    let store = match SinkThread::start(sink, service) {
        Ok(store) => store,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the thread that stores spans; dropping them");
            while let Some(batch) = next_batch(&mut rx).await {
                counters.dropped.inc_by(batch.len() as u64);
            }
            return;
        }
    };
    let mut failing = false;
    while let Some(batch) = next_batch(&mut rx).await {
        let spans = batch.len() as u64;
        let outcome = store.accept(batch).await;
        match outcome {
            Ok(()) => {
                counters.exported.inc_by(spans);
                if failing {
                    tracing::info!("this node's monitor stores spans again");
                    failing = false;
                }
            }
            Err(error) => {
                counters.dropped.inc_by(spans);
                if !failing {
                    tracing::warn!(%error, spans, "this node's monitor could not store spans; dropping them");
                    failing = true;
                }
            }
        }
    }
}

/// The thread that hands batches to a [`LocalSink`], at a lower CPU priority (nice 10).
/// Storing a batch (encoding it, a file write, evictions) is work no request waits for; on a
/// core shared with the request path, a blocking-pool thread doing it at normal priority
/// preempted the requests' worker for each batch (and for the page faults of a growing
/// store), which showed as a longer tail for every request in flight. At nice 10 it yields
/// the core instead, and still runs at full speed when the core is idle.
struct SinkThread {
    batches: std::sync::mpsc::Sender<SinkJob>,
}

/// A batch for the [`SinkThread`], and where its outcome goes.
type SinkJob = (Vec<Span>, tokio::sync::oneshot::Sender<Result<(), String>>);

impl SinkThread {
    fn start(sink: Arc<dyn LocalSink>, service: String) -> std::io::Result<SinkThread> {
        let (batches, queue) = std::sync::mpsc::channel::<SinkJob>();
        std::thread::Builder::new()
            .name("span-store".into())
            .spawn(move || {
                // Sets the calling thread's nice value on Linux; failing only costs priority.
                let _ = rustix::process::setpriority_process(None, 10);
                // Ends when the exporter's task drops its end.
                while let Ok((batch, done)) = queue.recv() {
                    let _ = done.send(sink.accept(&service, batch));
                }
            })?;
        Ok(SinkThread { batches })
    }

    /// Stores `batch`, or says why not.
    async fn accept(&self, batch: Vec<Span>) -> Result<(), String> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        self.batches
            .send((batch, done))
            .map_err(|_| "the thread storing spans has ended".to_string())?;
        outcome
            .await
            .unwrap_or_else(|_| Err("the thread storing spans failed".to_string()))
    }
}

async fn export(
    collector: Collector,
    service: String,
    counters: Counters,
    mut rx: mpsc::Receiver<Span>,
) {
    let mut current = 0;
    let mut failing = false;
    while let Some(batch) = next_batch(&mut rx).await {
        let Some(url) = collector.urls.get(current) else {
            counters.dropped.inc_by(batch.len() as u64);
            continue;
        };
        let mut request = collector
            .http
            .post(url)
            .timeout(POST_TIMEOUT)
            .json(&export_body(&service, &batch));
        if let Some(token) = &collector.token {
            request = request.bearer_auth(token);
        }
        let outcome = request.send().await.map(|r| r.status());
        if outcome.as_ref().is_ok_and(|status| status.is_success()) {
            counters.exported.inc_by(batch.len() as u64);
            if failing {
                tracing::info!(%url, "the trace collector accepts spans again");
                failing = false;
            }
            continue;
        }
        counters.dropped.inc_by(batch.len() as u64);
        if outcome.as_ref().is_err_and(reqwest::Error::is_connect) {
            current = (current + 1) % collector.urls.len();
        }
        if !failing {
            let error = describe(outcome);
            tracing::warn!(%url, %error, spans = batch.len(), "exporting spans failed; dropping them");
            failing = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SpanKind, TraceParent};
    use std::sync::{Arc, Mutex};
    use std::time::{Instant, SystemTime};

    fn span(sampled: bool) -> Span {
        Span {
            context: TraceParent::root(sampled),
            parent: None,
            name: "GET /".into(),
            kind: SpanKind::Server,
            start: SystemTime::now(),
            duration: Duration::from_millis(1),
            error: None,
            attributes: Vec::new(),
        }
    }

    fn counters() -> Counters {
        Counters {
            exported: IntCounter::new("exported", "exported").unwrap(),
            dropped: IntCounter::new("dropped", "dropped").unwrap(),
        }
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A sink that keeps what it gets, with the nice value of the thread it ran on, and
    /// refuses every batch after the first `accepting`.
    struct Keep {
        got: Mutex<Vec<(String, usize, i32)>>,
        accepting: usize,
    }

    impl LocalSink for Keep {
        fn accept(&self, service: &str, spans: Vec<Span>) -> Result<(), String> {
            let nice = rustix::process::getpriority_process(None).unwrap_or(0);
            let mut got = self.got.lock().unwrap();
            got.push((service.to_string(), spans.len(), nice));
            if got.len() > self.accepting {
                return Err("full".into());
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn local_batches_are_stored_at_a_lower_priority_and_refused_ones_counted_as_dropped() {
        let sink = Arc::new(Keep {
            got: Mutex::default(),
            accepting: 1,
        });
        let counters = counters();
        let (exporter, task) = Exporter::local(sink.clone(), "svc".into(), 1.0, counters.clone());
        let task = tokio::spawn(task);
        for _ in 0..3 {
            exporter.record(span(true));
        }
        exporter.record(span(false));
        until("the first batch", || counters.exported.get() == 3).await;
        for _ in 0..2 {
            exporter.record(span(true));
        }
        until("the refused batch", || counters.dropped.get() == 2).await;
        drop(exporter);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the task ends once the exporter is gone")
            .unwrap();
        let got = sink.got.lock().unwrap().clone();
        assert_eq!(
            got.iter()
                .map(|(s, n, _)| (s.as_str(), *n))
                .collect::<Vec<_>>(),
            [("svc", 3), ("svc", 2)]
        );
        // Linux gives each thread a nice value of its own (raising it needs no privilege).
        assert!(got.iter().all(|(_, _, nice)| *nice >= 10), "{got:?}");
    }

    #[tokio::test]
    async fn a_per_second_cap_samples_that_many_new_traces_a_second() {
        let collector = Collector {
            urls: Vec::new(),
            token: None,
            http: strata_tls::http_client_builder().build().unwrap(),
        };
        let (exporter, _task) = Exporter::new(collector, "t".into(), 1.0, counters());
        let exporter = exporter.per_second(5);
        let sampled = (0..1000).filter(|_| exporter.sample_new()).count();
        // 5 in one second; 10 if the loop happened to straddle a second's end.
        assert!((5..=10).contains(&sampled), "{sampled} of 1000 sampled");
        until("the next second's slots", || exporter.sample_new()).await;
        let uncapped = exporter.per_second(0);
        assert!((0..100).all(|_| uncapped.sample_new()));
    }

    #[tokio::test]
    async fn batches_carry_the_token_and_move_on_from_a_collector_that_refuses_connections() {
        // What the collector received: the authorization header and the span names.
        let received: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
        let sink = received.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(
                move |headers: http::HeaderMap, body: axum::Json<serde_json::Value>| {
                    let sink = sink.clone();
                    async move {
                        let auth = headers
                            .get(http::header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let spans = body["resourceSpans"][0]["scopeSpans"][0]["spans"]
                            .as_array()
                            .map_or(0, Vec::len);
                        sink.lock().unwrap().push((auth, spans));
                        "{}"
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        // A port nobody listens on any more.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let down = format!("http://{}/v1/traces", closed.local_addr().unwrap());
        drop(closed);

        let counters = counters();
        let collector = Collector {
            urls: vec![down, up],
            token: Some("secret".into()),
            http: strata_tls::http_client_builder().build().unwrap(),
        };
        let (exporter, task) = Exporter::new(collector, "svc".into(), 1.0, counters.clone());
        let task = tokio::spawn(task);
        exporter.record(span(true));
        until("the first batch to fail", || counters.dropped.get() == 1).await;
        assert!(received.lock().unwrap().is_empty());
        exporter.record(span(true));
        exporter.record(span(false));
        exporter.record(span(true));
        until("the next batch to arrive", || counters.exported.get() == 2).await;
        assert_eq!(
            *received.lock().unwrap(),
            vec![("Bearer secret".to_string(), 2)]
        );
        drop(exporter);
        task.await.unwrap();
        server.abort();
    }

    #[test]
    fn sampling_follows_the_ratio() {
        let collector = Collector {
            urls: Vec::new(),
            token: None,
            http: strata_tls::http_client_builder().build().unwrap(),
        };
        let (all, _) = Exporter::new(collector.clone(), "a".into(), 1.0, counters());
        let (none, _) = Exporter::new(collector, "b".into(), 0.0, counters());
        assert!((0..100).all(|_| all.sample_new()));
        assert!((0..100).all(|_| !none.sample_new()));
    }
}
