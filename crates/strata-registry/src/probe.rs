//! Runs one health probe (HTTP, TCP or gRPC) against a service instance, with Consul's
//! semantics.
//!
//! [`Prober::run`] never panics on what a target sends and always returns within its deadline
//! (plus scheduling slack). Every failure, including a malformed probe that slipped past
//! [`validate`], becomes [`Health::Critical`] with a short, lowercase, human-readable output.
//!
//! Differences from Consul worth knowing:
//! - HTTP redirects are followed, at most 10 hops, as Consul's Go client does; a longer chain is
//!   critical. The status of the last hop decides.
//! - The HTTP client is built without TLS (the workspace's reqwest has no TLS feature), so an
//!   `https` URL passes [`validate`] but every probe of it is critical, with an output that says
//!   the scheme is unsupported.
//! - gRPC probes speak plaintext HTTP/2 (`http://HOST:PORT`); there is no TLS option.

use std::collections::{BTreeMap, HashMap};
use std::error::Error as StdError;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// How much of an HTTP response body goes into the probe output.
const MAX_BODY_BYTES: usize = 4 * 1024;
/// How many redirects an HTTP probe follows before it gives up (Go's and Consul's default).
const MAX_REDIRECTS: usize = 10;
/// How many gRPC channels the prober keeps; past this the cache is emptied, so addresses of
/// long-gone instances cannot pile up forever.
const MAX_CACHED_CHANNELS: usize = 1024;
/// The methods an HTTP probe may use.
const HTTP_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
pub use strata_api::registry::{Health, Probe};

/// Runs probes; holds the shared HTTP client. Cheap to clone.
#[derive(Clone)]
pub struct Prober {
    /// Shared HTTP client, so connections to a target are reused between probes; the pool keeps
    /// one connection per concurrent request, so a slow target delays only its own probes. An
    /// `Err` holds why the client could not be built; HTTP probes then report it.
    http: Result<reqwest::Client, Arc<str>>,
    /// gRPC channels by address; a channel multiplexes probes and reconnects on its own.
    /// A std mutex: it is held only to look up or insert, never across an `.await`.
    grpc_channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Default for Prober {
    fn default() -> Self {
        Self::new()
    }
}

impl Prober {
    /// Returns a prober with a fresh HTTP client and an empty gRPC channel cache.
    pub fn new() -> Self {
        let http = strata_tls::http_client_builder()
            .user_agent("strata-health-check")
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .no_proxy()
            .build()
            .map_err(|error| {
                tracing::error!(error = %error_chain(&error), "build health check http client");
                Arc::from(format!("http client unavailable: {}", error_chain(&error)))
            });
        Self {
            http,
            grpc_channels: Arc::default(),
        }
    }

    /// A prober sharing this one's HTTP client, with a gRPC channel cache of its own: each
    /// check runner has one, so its channel lives as long as the runner and a node probing
    /// more gRPC targets than the cache holds does not reconnect on every probe.
    pub fn for_one_check(&self) -> Self {
        Self {
            http: self.http.clone(),
            grpc_channels: Arc::default(),
        }
    }

    /// Runs one probe with a deadline; returns the health and a short human-readable output
    /// (e.g. "HTTP GET http://x/health: 200 OK", "dial tcp 127.0.0.1:9: connection refused",
    /// "HTTP GET http://x/health: timed out after 2s").
    ///
    /// Cancel safety: safe to drop at any point; an abandoned HTTP request or TCP connection is
    /// closed, and a cached gRPC channel stays usable.
    pub async fn run(&self, probe: &Probe, timeout: Duration) -> (Health, String) {
        let target = describe(probe);
        let outcome = tokio::time::timeout(timeout, self.run_unbounded(probe, timeout)).await;
        match outcome {
            Ok((health, detail)) => (health, format!("{target}: {detail}")),
            Err(_elapsed) => (
                Health::Critical,
                format!("{target}: timed out after {timeout:?}"),
            ),
        }
    }

    /// Runs `probe` without a deadline of its own; `timeout` only bounds a new gRPC channel's
    /// connect attempts. Returns the health and the output after the target name.
    async fn run_unbounded(&self, probe: &Probe, timeout: Duration) -> (Health, String) {
        match probe {
            Probe::Http {
                url,
                method,
                headers,
            } => self.run_http(url, method, headers).await,
            Probe::Tcp { addr } => {
                if let Err(message) = validate_host_port(addr) {
                    return (Health::Critical, format!("invalid probe: {message}"));
                }
                match tokio::net::TcpStream::connect(addr.as_str()).await {
                    Ok(_stream) => (Health::Passing, "success".to_owned()),
                    Err(error) => (Health::Critical, io_error_text(&error)),
                }
            }
            Probe::Grpc { addr, service } => self.run_grpc(addr, service, timeout).await,
        }
    }

    async fn run_http(
        &self,
        url: &str,
        method: &str,
        headers: &BTreeMap<String, String>,
    ) -> (Health, String) {
        let client = match &self.http {
            Ok(client) => client,
            Err(message) => return (Health::Critical, message.to_string()),
        };
        let (parsed_url, parsed_method, header_map) = match parse_http(url, method, headers) {
            Ok(parsed) => parsed,
            Err(message) => return (Health::Critical, format!("invalid probe: {message}")),
        };
        let request = client
            .request(parsed_method, parsed_url)
            .headers(header_map);
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(error) => return (Health::Critical, error_chain(&error)),
        };
        let status = response.status();
        let health = if status.is_success() {
            Health::Passing
        } else if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            Health::Warning
        } else {
            Health::Critical
        };
        // The status decides; the body is only a hint for the operator, so a body that fails
        // half-way keeps what arrived.
        let mut body = Vec::new();
        while body.len() < MAX_BODY_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let wanted = (MAX_BODY_BYTES - body.len()).min(chunk.len());
                    body.extend_from_slice(&chunk[..wanted]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let body = String::from_utf8_lossy(&body);
        let body = body.trim();
        if body.is_empty() {
            (health, status.to_string())
        } else {
            (health, format!("{status} Output: {body}"))
        }
    }

    async fn run_grpc(&self, addr: &str, service: &str, timeout: Duration) -> (Health, String) {
        let channel = match self.grpc_channel(addr, timeout) {
            Ok(channel) => channel,
            Err(message) => return (Health::Critical, format!("invalid probe: {message}")),
        };
        // No grpc-timeout header: tonic would enforce it too and race `run`'s deadline, making
        // the output of a timeout vary; a health check is cheap for the server anyway.
        let request = tonic::Request::new(HealthCheckRequest {
            service: service.to_owned(),
        });
        match HealthClient::new(channel).check(request).await {
            Ok(response) => {
                let status = response.into_inner().status;
                let name = ServingStatus::try_from(status)
                    .map(|status| status.as_str_name().to_owned())
                    .unwrap_or_else(|_| format!("unknown status {status}"));
                let health = if status == i32::from(ServingStatus::Serving) {
                    Health::Passing
                } else {
                    Health::Critical
                };
                (health, name)
            }
            Err(status) => (Health::Critical, grpc_status_text(&status)),
        }
    }

    /// Returns the cached channel for `addr`, creating a lazily connecting one if needed.
    fn grpc_channel(&self, addr: &str, timeout: Duration) -> Result<Channel, String> {
        let mut channels = self
            .grpc_channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let endpoint = grpc_endpoint(addr)?
            // Bounds the TCP connect that a timed-out probe leaves behind in the channel. Twice
            // the deadline so that, for the probe that created the channel, `run`'s deadline
            // fires first and the output says "timed out".
            .connect_timeout(timeout.saturating_mul(2));
        // Lazy: `connect_lazy` does no I/O, so holding the lock here is fine; the connection is
        // made by the first check, under that check's deadline.
        let channel = endpoint.connect_lazy();
        if channels.len() >= MAX_CACHED_CHANNELS {
            channels.clear();
        }
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// Validates a probe's target at registration time, returning a precise error message for bad
/// input: an HTTP url that doesn't parse or isn't http/https, an unknown HTTP method, a header
/// name/value that is invalid, a TCP/gRPC addr that is not HOST:PORT with a port 1..=65535.
pub fn validate(probe: &Probe) -> Result<(), String> {
    match probe {
        Probe::Http {
            url,
            method,
            headers,
        } => parse_http(url, method, headers).map(|_| ()),
        Probe::Tcp { addr } => validate_host_port(addr),
        Probe::Grpc { addr, .. } => grpc_endpoint(addr).map(|_| ()),
    }
}

/// Names the probe's target for its output, as Consul does.
fn describe(probe: &Probe) -> String {
    match probe {
        Probe::Http { url, method, .. } => format!("HTTP {} {url}", method.to_ascii_uppercase()),
        Probe::Tcp { addr } => format!("dial tcp {addr}"),
        Probe::Grpc { addr, service } if service.is_empty() => format!("gRPC check {addr}"),
        Probe::Grpc { addr, service } => format!("gRPC check {addr}/{service}"),
    }
}

fn parse_http(
    url: &str,
    method: &str,
    headers: &BTreeMap<String, String>,
) -> Result<(Url, Method, HeaderMap), String> {
    let parsed_url = Url::parse(url).map_err(|error| format!("bad url {url:?}: {error}"))?;
    if !matches!(parsed_url.scheme(), "http" | "https") {
        return Err(format!(
            "bad url {url:?}: scheme must be http or https, not {:?}",
            parsed_url.scheme()
        ));
    }
    let upper_method = method.to_ascii_uppercase();
    if !HTTP_METHODS.contains(&upper_method.as_str()) {
        return Err(format!(
            "unknown http method {method:?}: expected one of {}",
            HTTP_METHODS.join(", ")
        ));
    }
    let parsed_method = Method::from_bytes(upper_method.as_bytes())
        .map_err(|error| format!("unknown http method {method:?}: {error}"))?;
    let mut header_map = HeaderMap::new();
    for (name, value) in headers {
        let header_name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid http header name {name:?}"))?;
        let header_value = HeaderValue::from_str(value)
            .map_err(|_| format!("invalid value for http header {name:?}: {value:?}"))?;
        header_map.insert(header_name, header_value);
    }
    Ok((parsed_url, parsed_method, header_map))
}

/// Checks that `addr` is HOST:PORT, where HOST is a DNS name, an IPv4 address or a bracketed
/// IPv6 address, and PORT is 1..=65535.
fn validate_host_port(addr: &str) -> Result<(), String> {
    let bad = |why: String| Err(format!("bad address {addr:?}: {why}"));
    let Some((host, port)) = addr.rsplit_once(':') else {
        return bad("expected HOST:PORT".to_owned());
    };
    match port.parse::<u32>() {
        Ok(1..=65535) => {}
        Ok(_) => return bad("port must be 1..=65535".to_owned()),
        Err(_) => return bad(format!("port {port:?} is not a number")),
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        if inner.parse::<Ipv6Addr>().is_err() {
            return bad(format!("{inner:?} is not an IPv6 address"));
        }
        return Ok(());
    }
    if host.contains(':') {
        return bad("an IPv6 host must be in brackets, as [::1]:80".to_owned());
    }
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if host.is_empty() || !host.chars().all(is_name_char) {
        return bad(format!("host {host:?} is not a valid host name"));
    }
    // A dotted quad that is not a valid IPv4 address would be looked up as a name; refuse it.
    let looks_numeric = host.chars().all(|c| c.is_ascii_digit() || c == '.');
    if looks_numeric && host.parse::<Ipv4Addr>().is_err() {
        return bad(format!("{host:?} is not an IPv4 address"));
    }
    Ok(())
}

/// Returns the plaintext HTTP/2 endpoint for a gRPC probe of `addr`.
fn grpc_endpoint(addr: &str) -> Result<Endpoint, String> {
    validate_host_port(addr)?;
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|error| format!("bad address {addr:?}: {}", error_chain(&error)))
}

/// Joins an error and its sources, skipping repeats and the reqwest, hyper and tonic wrappers
/// that repeat the URL or say nothing ("error sending request for url (..)", "client error
/// (Connect)", "transport error").
fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut parts = Vec::new();
    push_error_chain(&mut parts, error);
    parts.join(": ")
}

fn push_error_chain(parts: &mut Vec<String>, error: &(dyn StdError + 'static)) {
    let mut current = Some(error);
    while let Some(error) = current {
        let text = match error.downcast_ref::<std::io::Error>() {
            Some(io_error) => io_error_text(io_error),
            None => error.to_string(),
        };
        let is_wrapper = error.source().is_some()
            && (text.starts_with("error sending request for url")
                || text.starts_with("client error (")
                || text == "transport error");
        if !is_wrapper && !parts.contains(&text) {
            parts.push(text);
        }
        current = error.source();
    }
}

/// Formats an I/O error the way Go does: lowercase, without the "(os error N)" suffix.
fn io_error_text(error: &std::io::Error) -> String {
    let text = error.to_string();
    let text = match text.rfind(" (os error ") {
        Some(index) if text.ends_with(')') => &text[..index],
        _ => text.as_str(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("{:?}", error.kind()),
    }
}

fn grpc_status_text(status: &tonic::Status) -> String {
    let mut parts = Vec::new();
    let source = status.source();
    // tonic's transport failures say "transport error" and keep the cause in the source.
    let is_wrapper = source.is_some() && status.message() == "transport error";
    if !status.message().is_empty() && !is_wrapper {
        parts.push(status.message().to_owned());
    }
    if let Some(source) = source {
        push_error_chain(&mut parts, source);
    }
    format!(
        "rpc error: code = {:?}: {}",
        status.code(),
        parts.join(": ")
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// Serves HTTP/1.1 on loopback; `respond` maps the request head to the whole response.
    async fn http_server(respond: fn(&str) -> String) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let head = read_head(&mut stream).await;
                    let _ = stream.write_all(respond(&head).as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        addr
    }

    async fn read_head(stream: &mut TcpStream) -> String {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&head).into_owned()
    }

    fn response(status: &str, extra_headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\n{extra_headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    /// Accepts connections and never answers.
    async fn silent_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        addr
    }

    /// Returns a loopback address on which nothing listens.
    async fn closed_addr() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    fn http(url: String) -> Probe {
        Probe::Http {
            url,
            method: "GET".to_owned(),
            headers: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn http_status_maps_to_health() {
        let prober = Prober::new();
        let cases = [
            ("200 OK", Health::Passing),
            ("204 No Content", Health::Passing),
            ("429 Too Many Requests", Health::Warning),
            ("500 Internal Server Error", Health::Critical),
            ("404 Not Found", Health::Critical),
        ];
        let addr = http_server(|head| {
            let status = match head.split_whitespace().nth(1).unwrap_or("") {
                "/200" => "200 OK",
                "/204" => "204 No Content",
                "/429" => "429 Too Many Requests",
                "/500" => "500 Internal Server Error",
                _ => "404 Not Found",
            };
            response(status, "", "")
        })
        .await;
        for (status, want) in cases {
            let code = &status[..3];
            let url = format!("http://{addr}/{code}");
            let (health, output) = prober.run(&http(url.clone()), TIMEOUT).await;
            assert_eq!(health, want, "{output}");
            assert_eq!(output, format!("HTTP GET {url}: {status}"));
        }
    }

    #[tokio::test]
    async fn http_sends_user_agent_and_headers_and_shows_body() {
        let addr = http_server(|head| response("200 OK", "", head)).await;
        let probe = Probe::Http {
            url: format!("http://{addr}/health"),
            method: "post".to_owned(),
            headers: BTreeMap::from([("X-Check".to_owned(), "yes".to_owned())]),
        };
        let (health, output) = Prober::new().run(&probe, TIMEOUT).await;
        assert_eq!(health, Health::Passing, "{output}");
        let lower = output.to_ascii_lowercase();
        assert!(output.contains("HTTP POST http://"), "{output}");
        assert!(
            output.contains("200 OK Output: POST /health HTTP/1.1"),
            "{output}"
        );
        assert!(
            lower.contains("user-agent: strata-health-check"),
            "{output}"
        );
        assert!(lower.contains("x-check: yes"), "{output}");
    }

    #[tokio::test]
    async fn http_body_is_truncated() {
        let addr =
            http_server(|_| response("500 Internal Server Error", "", &"z".repeat(100_000))).await;
        let (health, output) = Prober::new()
            .run(&http(format!("http://{addr}/")), TIMEOUT)
            .await;
        assert_eq!(health, Health::Critical);
        assert_eq!(
            output.matches('z').count(),
            MAX_BODY_BYTES,
            "{}",
            output.len()
        );
    }

    #[tokio::test]
    async fn http_follows_redirects() {
        let addr = http_server(|head| match head.split_whitespace().nth(1) {
            Some("/ok") => response("200 OK", "", ""),
            _ => response("302 Found", "Location: /ok\r\n", ""),
        })
        .await;
        let (health, output) = Prober::new()
            .run(&http(format!("http://{addr}/start")), TIMEOUT)
            .await;
        assert_eq!(
            (health, output.ends_with(": 200 OK")),
            (Health::Passing, true),
            "{output}"
        );

        let looping = http_server(|_| response("302 Found", "Location: /again\r\n", "")).await;
        let (health, output) = Prober::new()
            .run(&http(format!("http://{looping}/")), TIMEOUT)
            .await;
        assert_eq!(health, Health::Critical, "{output}");
        assert!(output.contains("redirect"), "{output}");
    }

    #[tokio::test]
    async fn http_refused_garbage_and_https_are_critical() {
        let prober = Prober::new();
        let closed = closed_addr().await;
        let (health, output) = prober
            .run(&http(format!("http://{closed}/")), TIMEOUT)
            .await;
        assert_eq!(health, Health::Critical);
        assert!(output.contains("connection refused"), "{output}");

        let garbage = http_server(|_| "\u{0}\u{ff}not http at all\r\n\r\n".to_owned()).await;
        let (health, output) = prober
            .run(&http(format!("http://{garbage}/")), TIMEOUT)
            .await;
        assert_eq!(health, Health::Critical, "{output}");

        // HTTPS to a server that speaks plain HTTP fails the handshake.
        let plain =
            http_server(|_| "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_owned()).await;
        let (health, output) = prober
            .run(&http(format!("https://{plain}/")), TIMEOUT)
            .await;
        assert_eq!(health, Health::Critical, "{output}");
    }

    #[tokio::test]
    async fn http_timeout_is_critical() {
        let addr = silent_server().await;
        let probe = http(format!("http://{addr}/"));
        let timeout = Duration::from_millis(200);
        // The outer bound only catches a probe that ignores its deadline; it never decides.
        let (health, output) = tokio::time::timeout(TIMEOUT, Prober::new().run(&probe, timeout))
            .await
            .unwrap();
        assert_eq!(health, Health::Critical);
        assert_eq!(
            output,
            format!("HTTP GET http://{addr}/: timed out after 200ms")
        );
    }

    #[tokio::test]
    async fn tcp_open_and_closed() {
        let prober = Prober::new();
        let open = silent_server().await;
        let (health, output) = prober
            .run(
                &Probe::Tcp {
                    addr: open.to_string(),
                },
                TIMEOUT,
            )
            .await;
        assert_eq!(
            (health, output),
            (Health::Passing, format!("dial tcp {open}: success"))
        );

        let closed = closed_addr().await;
        let (health, output) = prober
            .run(
                &Probe::Tcp {
                    addr: closed.to_string(),
                },
                TIMEOUT,
            )
            .await;
        assert_eq!(health, Health::Critical);
        assert_eq!(output, format!("dial tcp {closed}: connection refused"));
    }

    #[tokio::test]
    async fn grpc_health_statuses() {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("up", tonic_health::ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("down", tonic_health::ServingStatus::NotServing)
            .await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let prober = Prober::new();
        let cases = [
            ("", Health::Passing, "SERVING"),
            ("up", Health::Passing, "SERVING"),
            ("down", Health::Critical, "NOT_SERVING"),
            ("nope", Health::Critical, "NotFound"),
        ];
        for (service, want, text) in cases {
            let probe = Probe::Grpc {
                addr: addr.clone(),
                service: service.to_owned(),
            };
            let (health, output) = prober.run(&probe, TIMEOUT).await;
            assert_eq!(health, want, "{output}");
            assert!(output.contains(text), "{output}");
        }
        assert_eq!(prober.grpc_channels.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn grpc_unreachable_or_silent_is_critical() {
        let prober = Prober::new();
        let closed = closed_addr().await;
        let probe = Probe::Grpc {
            addr: closed.to_string(),
            service: String::new(),
        };
        let (health, output) = prober.run(&probe, TIMEOUT).await;
        assert_eq!(health, Health::Critical);
        assert!(output.contains("connection refused"), "{output}");

        let silent = silent_server().await;
        let probe = Probe::Grpc {
            addr: silent.to_string(),
            service: String::new(),
        };
        let run = prober.run(&probe, Duration::from_millis(200));
        let (health, output) = tokio::time::timeout(TIMEOUT, run).await.unwrap();
        assert_eq!(health, Health::Critical);
        assert!(output.ends_with("timed out after 200ms"), "{output}");
    }

    #[test]
    fn validate_rejects_bad_targets() {
        let bad_http = |url: &str, method: &str, header: (&str, &str)| Probe::Http {
            url: url.to_owned(),
            method: method.to_owned(),
            headers: BTreeMap::from([(header.0.to_owned(), header.1.to_owned())]),
        };
        let ok_header = ("X-A", "b");
        assert_eq!(
            validate(&bad_http("http://h:1/x", "get", ok_header)),
            Ok(())
        );
        assert_eq!(
            validate(&bad_http("https://h/x", "HEAD", ok_header)),
            Ok(())
        );
        let cases = [
            (bad_http("not a url", "GET", ok_header), "bad url"),
            (
                bad_http("ftp://h/", "GET", ok_header),
                "scheme must be http or https",
            ),
            (
                bad_http("http://h/", "FETCH", ok_header),
                "unknown http method",
            ),
            (
                bad_http("http://h/", "GET", ("bad name", "v")),
                "invalid http header name",
            ),
            (
                bad_http("http://h/", "GET", ("X-A", "a\nb")),
                "invalid value for http header",
            ),
        ];
        for (probe, want) in cases {
            let error = validate(&probe).unwrap_err();
            assert!(error.contains(want), "{error}");
        }
        for addr in [
            "localhost:80",
            "10.0.0.1:65535",
            "[::1]:8080",
            "my_svc.internal:1",
        ] {
            assert_eq!(
                validate(&Probe::Tcp {
                    addr: addr.to_owned()
                }),
                Ok(()),
                "{addr}"
            );
            let grpc = Probe::Grpc {
                addr: addr.to_owned(),
                service: String::new(),
            };
            assert_eq!(validate(&grpc), Ok(()), "{addr}");
        }
        let bad_addrs = [
            ("localhost", "expected HOST:PORT"),
            ("localhost:0", "port must be 1..=65535"),
            ("localhost:65536", "port must be 1..=65535"),
            ("localhost:http", "is not a number"),
            (":80", "is not a valid host name"),
            ("a b:80", "is not a valid host name"),
            ("::1:80", "must be in brackets"),
            ("[zz]:80", "is not an IPv6 address"),
            ("300.1.1.1:80", "is not an IPv4 address"),
        ];
        for (addr, want) in bad_addrs {
            let error = validate(&Probe::Tcp {
                addr: addr.to_owned(),
            })
            .unwrap_err();
            assert!(error.contains(want), "{addr}: {error}");
        }
    }

    #[test]
    fn serde_shape() {
        let probe: Probe =
            serde_json::from_str(r#"{"kind":"http","url":"http://h/health"}"#).unwrap();
        assert_eq!(probe, http("http://h/health".to_owned()));
        let probe: Probe = serde_json::from_str(r#"{"kind":"grpc","addr":"h:1"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&probe).unwrap(),
            r#"{"kind":"grpc","addr":"h:1","service":""}"#
        );
        assert_eq!(
            serde_json::to_string(&Health::Warning).unwrap(),
            r#""warning""#
        );
    }
}
