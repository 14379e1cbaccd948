//! What a call carries from hop to hop: its deadline (`grpc-timeout`) and its trace (W3C
//! `traceparent` and `tracestate`).
//!
//! A provider puts the context of the call it serves into a task-local for the handler's
//! future ([`CallContext::scope`]); a consumer called from inside the handler reads it, so an
//! outgoing call gets what is left of the incoming deadline and becomes a child span of the
//! incoming call, with no code in the handler.

use std::time::Duration;
pub use strata_trace::{header, TraceParent, TRACEPARENT, TRACESTATE};
use tokio::time::Instant;

tokio::task_local! {
    static CURRENT: CallContext;
}

/// The deadline and trace of the call being served.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// When the caller stops waiting.
    pub deadline: Option<Instant>,
    /// The span of the call being served (outgoing calls are its children).
    pub trace: Option<TraceParent>,
    /// The caller's `tracestate`, passed on unchanged.
    pub trace_state: Option<String>,
}

impl CallContext {
    /// The context of the call this task serves, if any.
    pub fn current() -> Option<CallContext> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `future` with this context as the current one.
    pub async fn scope<F: std::future::Future>(self, future: F) -> F::Output {
        CURRENT.scope(self, future).await
    }

    /// The time left before the deadline (`None`: no deadline).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// The `grpc-timeout` header.
pub const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
/// The `grpc-status` header or trailer.
pub const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// Parses a `grpc-timeout` value (`100m`, `5S`, ...): at most 8 digits and a unit.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 || !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a duration as a `grpc-timeout` value in the finest unit that fits 8 digits,
/// rounded up: never shorter than the time left, at most one unit longer.
pub fn format_grpc_timeout(timeout: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    for (unit, size) in [
        ("n", 1u128),
        ("u", 1_000),
        ("m", 1_000_000),
        ("S", 1_000_000_000),
        ("M", 60_000_000_000),
    ] {
        let n = nanos.div_ceil(size);
        if n <= MAX {
            return format!("{n}{unit}");
        }
    }
    format!("{}H", nanos.div_ceil(3_600_000_000_000).min(MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_round_trips_and_rejects_junk() {
        for (text, duration) in [
            ("100m", Duration::from_millis(100)),
            ("5S", Duration::from_secs(5)),
            ("2M", Duration::from_secs(120)),
            ("1H", Duration::from_secs(3600)),
            ("7u", Duration::from_micros(7)),
            ("9n", Duration::from_nanos(9)),
        ] {
            assert_eq!(parse_grpc_timeout(text), Some(duration), "{text}");
            assert_eq!(
                parse_grpc_timeout(&format_grpc_timeout(duration)),
                Some(duration)
            );
        }
        for junk in [
            "",
            "m",
            "100",
            "123456789m",
            "1x",
            "-1m",
            "1.5S",
            "١m",
            "1١",
        ] {
            assert_eq!(parse_grpc_timeout(junk), None, "{junk:?}");
        }
        // Never shorter than asked, at most one unit longer.
        let odd = Duration::from_nanos(123_456_789_123);
        let back = parse_grpc_timeout(&format_grpc_timeout(odd)).unwrap();
        assert!(
            back >= odd && back - odd < Duration::from_millis(1),
            "{back:?}"
        );
    }
}
