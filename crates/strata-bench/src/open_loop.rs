//! `http-open-loop`: HTTP/1.1 GETs at a fixed rate over keep-alive connections, with latency
//! correction (no coordinated omission), as wrk2 and oha do.
//!
//! Request `i` (from 0) of a run is due at `t0 + i / rate`. Connection `c` of `N` sends requests
//! `c, c + N, c + 2N, ...`, one at a time (HTTP/1.1 without pipelining), so each connection
//! carries `rate / N` requests per second, the way wrk2 spreads its rate over its connections.
//!
//! - A request that falls due while its connection still waits for the previous answer goes
//!   out as soon as that answer is in, and its latency counts from the time it was due: that
//!   wait is the server's doing, and a closed-loop tool would leave it out (coordinated
//!   omission). Such requests are counted as `late`.
//! - A request whose connection is idle goes out when the timer fires, and its latency counts
//!   from then: tokio's timer fires up to 1 ms after the due time, and that delay is the load
//!   generator's, not the server's.
//!
//! Everything is bounded: a run schedules `rate × duration` requests (at most
//! [`MAX_REQUESTS`]) over at most [`MAX_CONNECTIONS`] connections; a request (with the
//! reconnection it may need) waits at most the request timeout; nothing is sent or waited for
//! after `t0 + duration + request timeout`, and the requests still unsent then count as errors.
//! A failed request drops its connection; the connection's next request opens a new one.
//!
//! Latencies are kept as whole microseconds (`u32`, 4 bytes per request) and sorted once, so
//! the percentiles are exact.

use crate::config::HttpConn;
use anyhow::{bail, Context};
use hyper::http::uri::Scheme;
use hyper::{Method, Uri};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, timeout_at, Instant};

/// The most requests one run schedules (their latencies take 4 bytes each).
pub const MAX_REQUESTS: u64 = 20_000_000;

/// The most connections one run opens.
pub const MAX_CONNECTIONS: usize = 10_000;

/// What to send, how fast and for how long.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `HOST:PORT` to connect to (and the `Host` header).
    pub authority: String,
    /// The request target: path and query.
    pub target: Uri,
    /// Requests per second over all connections.
    pub rate: f64,
    /// How long the schedule runs.
    pub duration: Duration,
    /// Keep-alive connections the requests are spread over.
    pub connections: usize,
    /// The longest wait for one answer (with the reconnection it may need).
    pub request_timeout: Duration,
}

impl Plan {
    /// Checks the settings: an `http://` URL, a positive finite rate, positive durations,
    /// between 1 and [`MAX_CONNECTIONS`] connections, at least one and at most
    /// [`MAX_REQUESTS`] scheduled requests.
    pub fn new(
        url: &str,
        rate: f64,
        duration: Duration,
        connections: usize,
        request_timeout: Duration,
    ) -> anyhow::Result<Plan> {
        let (authority, target) = parse_url(url)?;
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a positive number of requests per second, got {rate}");
        }
        if duration.is_zero() || request_timeout.is_zero() {
            bail!("--duration and --timeout must be positive");
        }
        if connections == 0 || connections > MAX_CONNECTIONS {
            bail!("--connections must be between 1 and {MAX_CONNECTIONS}, got {connections}");
        }
        let plan = Plan {
            authority,
            target,
            rate,
            duration,
            connections,
            request_timeout,
        };
        let requests = rate * duration.as_secs_f64();
        if requests < 1.0 {
            bail!("--rate × --duration schedules no request");
        }
        if requests > MAX_REQUESTS as f64 {
            bail!("--rate × --duration is {requests:.0} requests, more than {MAX_REQUESTS}");
        }
        Ok(plan)
    }

    /// How many requests the schedule holds.
    pub fn requests(&self) -> u64 {
        // Checked by `new` to be between 1 and MAX_REQUESTS, so the conversion is exact.
        (self.rate * self.duration.as_secs_f64()).floor() as u64
    }

    /// When request `index` is due, after the run's start.
    fn due(&self, index: u64) -> Duration {
        Duration::from_secs_f64(index as f64 / self.rate)
    }
}

/// Splits an `http://HOST:PORT/PATH?QUERY` URL into the authority and the request target.
pub fn parse_url(url: &str) -> anyhow::Result<(String, Uri)> {
    let uri: Uri = url.parse().with_context(|| format!("--url {url:?}"))?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        bail!("--url {url:?}: only http:// URLs are supported");
    }
    let authority = uri
        .authority()
        .with_context(|| format!("--url {url:?} names no host"))?;
    if authority.port_u16().is_none() {
        bail!("--url {url:?}: give the port");
    }
    let target = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .with_context(|| format!("--url {url:?}: the path"))?;
    Ok((authority.as_str().to_string(), target))
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Requests in the schedule.
    pub scheduled: u64,
    /// Requests sent (or whose reconnection was tried).
    pub sent: u64,
    /// Requests that failed, timed out, or were not sent before the run's deadline.
    pub errors: u64,
    /// Requests sent after they were due because their connection was still busy.
    pub late: u64,
    /// The first failure's message.
    pub first_error: Option<String>,
    /// From the start of the schedule to the last answer.
    pub elapsed: Duration,
    /// Latencies of the successful requests in microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl Outcome {
    /// Requests answered with a success status.
    pub fn answered(&self) -> u64 {
        self.latencies_us.len() as u64
    }

    /// The nearest-rank percentile `quantile` (0 < quantile <= 1) in milliseconds; `None`
    /// when nothing succeeded.
    pub fn percentile_ms(&self, quantile: f64) -> Option<f64> {
        nearest_rank(&self.latencies_us, quantile).map(|us| f64::from(us) / 1000.0)
    }
}

/// The smallest of the sorted `samples` such that at least `quantile` of them are <= it.
fn nearest_rank(sorted: &[u32], quantile: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Opens the connections, runs the schedule and returns what it measured. Fails only when a
/// connection cannot be opened before the start; failures during the run are counted.
pub async fn run(plan: Plan) -> anyhow::Result<Outcome> {
    let plan = Arc::new(plan);
    let mut opening = JoinSet::new();
    for _ in 0..plan.connections {
        let plan = Arc::clone(&plan);
        opening.spawn(async move {
            timeout(plan.request_timeout, HttpConn::connect(&plan.authority))
                .await
                .with_context(|| format!("connect to {} (timed out)", plan.authority))?
        });
    }
    let mut connections = Vec::with_capacity(plan.connections);
    while let Some(joined) = opening.join_next().await {
        connections.push(joined??);
    }

    let t0 = Instant::now();
    let mut tasks = JoinSet::new();
    for (first, connection) in connections.into_iter().enumerate() {
        tasks.spawn(drive_connection(
            Arc::clone(&plan),
            first as u64,
            connection,
            t0,
        ));
    }
    let mut outcome = Outcome {
        scheduled: plan.requests(),
        ..Outcome::default()
    };
    while let Some(joined) = tasks.join_next().await {
        let tally = joined.context("a connection's task failed")?;
        outcome.sent += tally.sent;
        outcome.errors += tally.errors;
        outcome.late += tally.late;
        if outcome.first_error.is_none() {
            outcome.first_error = tally.first_error;
        }
        outcome.latencies_us.extend(tally.latencies_us);
    }
    outcome.elapsed = t0.elapsed();
    outcome.latencies_us.sort_unstable();
    Ok(outcome)
}

/// One connection's tally.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    errors: u64,
    late: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
}

impl Tally {
    fn fail(&mut self, count: u64, message: impl FnOnce() -> String) {
        self.errors += count;
        self.first_error.get_or_insert_with(message);
    }
}

/// Sends the requests `first, first + N, ...` of the schedule on one connection.
async fn drive_connection(plan: Arc<Plan>, first: u64, connection: HttpConn, t0: Instant) -> Tally {
    let total = plan.requests();
    let step = plan.connections as u64;
    let deadline = t0 + plan.duration + plan.request_timeout;
    let mut tally = Tally {
        latencies_us: Vec::with_capacity(usize::try_from(total / step + 1).unwrap_or(0)),
        ..Tally::default()
    };
    let mut connection = Some(connection);
    let mut index = first;
    while index < total {
        let due = t0 + plan.due(index);
        let start = if Instant::now() < due {
            sleep_until(due).await;
            Instant::now()
        } else {
            tally.late += 1;
            due
        };
        if Instant::now() >= deadline {
            // This request and every later one of this connection stay unsent.
            let unsent = (total - index).div_ceil(step);
            tally.fail(unsent, || {
                "not sent: the run's deadline (duration + timeout) passed".to_string()
            });
            break;
        }
        index += step;
        tally.sent += 1;
        let wait_until = (Instant::now() + plan.request_timeout).min(deadline);
        match timeout_at(wait_until, send(&plan, &mut connection)).await {
            Ok(Ok(())) => {
                let micros = start.elapsed().as_micros();
                tally
                    .latencies_us
                    .push(u32::try_from(micros).unwrap_or(u32::MAX));
            }
            Ok(Err(error)) => {
                connection = None;
                tally.fail(1, || format!("{error:#}"));
            }
            Err(_) => {
                connection = None;
                tally.fail(1, || {
                    format!("no answer within {:?}", wait_until.duration_since(start))
                });
            }
        }
    }
    tally
}

/// Sends one GET on `connection` (opening it first when it is closed) and reads the whole
/// answer; fails unless the status is a success.
async fn send(plan: &Plan, connection: &mut Option<HttpConn>) -> anyhow::Result<()> {
    let open = match connection {
        Some(open) => open,
        None => connection.insert(HttpConn::connect(&plan.authority).await?),
    };
    let (status, _body) = open.send(Method::GET, plan.target.clone(), None).await?;
    if !status.is_success() {
        bail!("HTTP {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn urls_split_into_authority_and_target() {
        let (authority, target) = parse_url("http://127.0.0.1:8080/a/b?c=1").unwrap();
        assert_eq!(authority, "127.0.0.1:8080");
        assert_eq!(target.to_string(), "/a/b?c=1");
        let (_, target) = parse_url("http://localhost:80").unwrap();
        assert_eq!(target.to_string(), "/");
        assert!(parse_url("https://127.0.0.1:443/").is_err());
        assert!(parse_url("http://127.0.0.1/").is_err());
        assert!(parse_url("127.0.0.1:80").is_err());
    }

    #[test]
    fn plans_are_bounded() {
        let second = Duration::from_secs(1);
        let url = "http://127.0.0.1:1/";
        let plan = Plan::new(url, 1000.0, Duration::from_secs(3), 8, second).unwrap();
        assert_eq!(plan.requests(), 3000);
        assert_eq!(plan.due(500), Duration::from_millis(500));
        assert!(Plan::new(url, 0.0, second, 8, second).is_err());
        assert!(Plan::new(url, f64::NAN, second, 8, second).is_err());
        assert!(Plan::new(url, 0.5, second, 8, second).is_err());
        assert!(Plan::new(url, 1e9, second, 8, second).is_err());
        assert!(Plan::new(url, 10.0, second, 0, second).is_err());
        assert!(Plan::new(url, 10.0, Duration::ZERO, 1, second).is_err());
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let sorted: Vec<u32> = (1..=1000).collect();
        assert_eq!(nearest_rank(&sorted, 0.5), Some(500));
        assert_eq!(nearest_rank(&sorted, 0.99), Some(990));
        assert_eq!(nearest_rank(&sorted, 0.999), Some(999));
        assert_eq!(nearest_rank(&sorted, 1.0), Some(1000));
        assert_eq!(nearest_rank(&[], 0.5), None);
        let outcome = Outcome {
            latencies_us: vec![1500],
            ..Outcome::default()
        };
        assert_eq!(outcome.percentile_ms(0.99), Some(1.5));
    }

    /// A keep-alive HTTP/1.1 server that answers every request with `200 ok`, closing each
    /// connection after `close_after` answers.
    async fn tiny_server(close_after: usize) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 1024];
                    let mut answered = 0;
                    while answered < close_after {
                        let Ok(n) = stream.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            buffer.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(answer).await.is_err() {
                                return;
                            }
                            answered += 1;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_run_sends_the_whole_schedule() {
        let addr = tiny_server(usize::MAX).await;
        let url = format!("http://{addr}/x");
        let plan = Plan::new(
            &url,
            2000.0,
            Duration::from_millis(250),
            4,
            Duration::from_secs(2),
        )
        .unwrap();
        let outcome = run(plan).await.unwrap();
        assert_eq!(outcome.scheduled, 500);
        assert_eq!(outcome.sent, 500);
        assert_eq!(outcome.errors, 0, "{:?}", outcome.first_error);
        assert_eq!(outcome.answered(), 500);
        assert!(outcome.elapsed >= Duration::from_millis(249));
        assert!(outcome.latencies_us.windows(2).all(|w| w[0] <= w[1]));
    }

    #[tokio::test]
    async fn a_closed_connection_is_reopened() {
        // Each connection answers 3 requests, then closes: the 4th fails, the 5th reconnects.
        let addr = tiny_server(3).await;
        let url = format!("http://{addr}/");
        let plan = Plan::new(
            &url,
            200.0,
            Duration::from_millis(100),
            1,
            Duration::from_secs(2),
        )
        .unwrap();
        let outcome = run(plan).await.unwrap();
        assert_eq!(outcome.scheduled, 20);
        assert_eq!(outcome.sent, 20);
        assert!(outcome.answered() >= 15, "{outcome:?}");
        assert_eq!(outcome.answered() + outcome.errors, 20);
    }

    #[tokio::test]
    async fn nothing_listening_fails_before_the_start() {
        let port = crate::free_ports(1).unwrap()[0];
        let url = format!("http://127.0.0.1:{port}/");
        let plan = Plan::new(
            &url,
            10.0,
            Duration::from_secs(1),
            2,
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(run(plan).await.is_err());
    }
}
