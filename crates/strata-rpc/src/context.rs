//! What a call carries from hop to hop: its deadline (`grpc-timeout`) and its trace (W3C
//! `traceparent` and `tracestate`).
//!
//! A provider puts the context of the call it serves into a task-local for the handler's
//! future ([`CallContext::scope`]); a consumer called from inside the handler reads it, so an
//! outgoing call gets what is left of the incoming deadline and becomes a child span of the
//! incoming call, with no code in the handler.

use http::HeaderMap;
use std::time::Duration;
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
/// The `traceparent` header.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
/// The `tracestate` header.
pub const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");
/// The `grpc-status` header or trailer.
pub const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// The value of header `name`, found by comparing names rather than hashing: gRPC messages
/// carry a handful of headers, and hashing a custom name (SipHash) costs more than reading
/// them all.
pub fn header<'a>(
    headers: &'a HeaderMap,
    name: &http::HeaderName,
) -> Option<&'a http::HeaderValue> {
    if headers.len() > 16 {
        return headers.get(name);
    }
    headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
}

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

/// A W3C trace context: `traceparent: 00-TRACEID-SPANID-FLAGS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// 8 bytes, never all zero.
    pub span_id: [u8; 8],
    /// Whether the trace is recorded.
    pub sampled: bool,
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = text.get(2 * i..2 * i + 2)?;
        if !pair
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

impl TraceParent {
    /// The header's name.
    pub const HEADER: &'static str = "traceparent";

    /// A new trace with a random id.
    pub fn root(sampled: bool) -> TraceParent {
        TraceParent {
            trace_id: nonzero(),
            span_id: nonzero(),
            sampled,
        }
    }

    /// A child span of this one, in the same trace.
    pub fn child(&self) -> TraceParent {
        TraceParent {
            span_id: nonzero(),
            ..*self
        }
    }

    /// Parses a `traceparent` value; `None` for anything the W3C specification says to
    /// ignore (then the callee starts a new trace).
    pub fn parse(value: &str) -> Option<TraceParent> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        // Version 00 has exactly four fields; later versions may append more.
        if version == "ff" || unhex::<1>(version).is_none() {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id = unhex::<16>(trace)?;
        let span_id = unhex::<8>(span)?;
        let flags = unhex::<1>(flags)?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// Reads it from request headers.
    pub fn from_headers(headers: &HeaderMap) -> Option<TraceParent> {
        TraceParent::parse(header(headers, &TRACEPARENT)?.to_str().ok()?)
    }

    /// The trace id in hex, as logs and collectors show it.
    pub fn trace_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id in hex.
    pub fn span_hex(&self) -> String {
        hex(&self.span_id)
    }
}

impl TraceParent {
    /// The `traceparent` header value.
    pub fn header_value(&self) -> http::HeaderValue {
        let mut text = String::with_capacity(55);
        text.push_str("00-");
        push_hex(&mut text, &self.trace_id);
        text.push('-');
        push_hex(&mut text, &self.span_id);
        text.push_str(if self.sampled { "-01" } else { "-00" });
        let mut value =
            http::HeaderValue::try_from(text).unwrap_or(http::HeaderValue::from_static(""));
        // Unique per call: HTTP/2 then sends it literally instead of churning the HPACK table.
        value.set_sensitive(true);
        value
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.header_value().to_str().unwrap_or(""))
    }
}

fn nonzero<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut bytes = [0u8; N];
    let mut rng = rand::thread_rng();
    while bytes == [0; N] {
        rng.fill_bytes(&mut bytes);
    }
    bytes
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

    #[test]
    fn traceparent_parses_what_w3c_allows_only() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = TraceParent::parse(text).unwrap();
        assert!(parent.sampled);
        assert_eq!(parent.to_string(), text);
        assert_eq!(parent.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = parent.child();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
        // A later version may carry more fields.
        assert!(TraceParent::parse(&format!("01{}-extra", &text[2..])).is_some());
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        let root = TraceParent::root(false);
        assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
    }
}
