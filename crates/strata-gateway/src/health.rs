//! Active health checks of static upstream members.
//!
//! One task per group probes every member each interval, all members at once: a TCP
//! connect, or `GET path` expecting 2xx or 3xx. A member that fails `unhealthy` probes in a
//! row gets no requests until it passes `healthy` in a row (the balancer still uses it when no
//! member is healthy). Registry groups have no checker: the registry's own checks decide which
//! instances are members.

use crate::model::HealthCheckSpec;
use crate::upstream::Group;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_HEALTHY: u32 = 2;
const DEFAULT_UNHEALTHY: u32 = 3;
/// Most bytes of an answer read to find its status line.
const STATUS_LINE_MAX: usize = 1024;

/// Consecutive results of one member.
#[derive(Default)]
struct Streak {
    passed: u32,
    failed: u32,
}

/// Probes `group`'s members until the group leaves the table.
pub async fn run(group: Arc<Group>, check: HealthCheckSpec, gauge: prometheus::IntGaugeVec) {
    let interval = check.interval.map_or(DEFAULT_INTERVAL, |d| d.0);
    let timeout = check.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
    let rise = check.healthy.unwrap_or(DEFAULT_HEALTHY).max(1);
    let fall = check.unhealthy.unwrap_or(DEFAULT_UNHEALTHY).max(1);
    let retired = group.retired();
    let upstream = group.spec.name.clone();
    let mut streaks: HashMap<String, Streak> = HashMap::new();
    loop {
        let members = group.members();
        let probes = members.endpoints.iter().map(|endpoint| {
            let path = check.path.as_deref();
            async move {
                let outcome = tokio::time::timeout(timeout, probe(&endpoint.address, path))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
                (endpoint.clone(), outcome)
            }
        });
        let results = tokio::select! {
            () = retired.cancelled() => return,
            results = futures::future::join_all(probes) => results,
        };
        for (endpoint, outcome) in results {
            let streak = streaks.entry(endpoint.address.clone()).or_default();
            match &outcome {
                Ok(()) => {
                    streak.passed += 1;
                    streak.failed = 0;
                }
                Err(_) => {
                    streak.failed += 1;
                    streak.passed = 0;
                }
            }
            let verdict = if streak.failed >= fall {
                Some(false)
            } else if streak.passed >= rise {
                Some(true)
            } else {
                None
            };
            if let Some(healthy) = verdict {
                if endpoint.set_healthy(healthy) {
                    match &outcome {
                        Ok(()) => {
                            tracing::info!(%upstream, member = %endpoint.address, "member passes its health checks again")
                        }
                        Err(error) => {
                            tracing::warn!(%upstream, member = %endpoint.address, %error, "member fails its health checks; no requests go to it")
                        }
                    }
                }
                gauge
                    .with_label_values(&[upstream.as_str(), endpoint.address.as_str()])
                    .set(i64::from(healthy));
            }
        }
        tokio::select! {
            () = retired.cancelled() => {
                for endpoint in &members.endpoints {
                    let _ = gauge.remove_label_values(&[upstream.as_str(), endpoint.address.as_str()]);
                }
                return;
            }
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// One probe: connect, and with a path, `GET` it and read the status.
async fn probe(address: &str, path: Option<&str>) -> Result<(), String> {
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let Some(path) = path else {
        return Ok(());
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: strata-gateway-health-check\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < STATUS_LINE_MAX {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
    }
    match status_of(&answer) {
        Some(status) if (200..400).contains(&status) => Ok(()),
        Some(status) => Err(format!("answered {status}")),
        None => Err("did not answer with an HTTP status line".into()),
    }
}

/// The status code of an HTTP/1.x status line at the start of `answer`.
fn status_of(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_read_strictly() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_of(b"HTTP/1.0 503 Busy\r\nx"), Some(503));
        assert_eq!(status_of(b"HTTP/1.1 204\r\n"), Some(204));
        assert_eq!(status_of(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_of(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(status_of(b""), None);
    }
}
