//! The W3C trace context a request carries: `traceparent` (and `tracestate`, passed on as is).

use http::{HeaderMap, HeaderName, HeaderValue};

/// The `traceparent` header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The `tracestate` header.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The value of header `name`, found by comparing names rather than hashing: gRPC messages
/// carry a handful of headers, and hashing a custom name (SipHash) costs more than reading
/// them all.
pub fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if headers.len() > 16 {
        return headers.get(name);
    }
    headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
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
    let mut out = vec![0u8; bytes.len() * 2];
    write_hex(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

/// Writes the lower-case hex of `bytes` into `out` (twice as long).
fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 15)];
    }
}

/// A header value of `bytes` (hex digits and dashes: always valid).
fn value_of(bytes: bytes::Bytes) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes).unwrap_or(HeaderValue::from_static(""))
}

/// The `traceparent` value of `bytes`, marked sensitive: it is unique per call, so HTTP/2
/// sends it literally instead of churning the HPACK table.
fn traceparent_value(bytes: bytes::Bytes) -> HeaderValue {
    let mut value = value_of(bytes);
    value.set_sensitive(true);
    value
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

    /// The `traceparent` header value.
    pub fn header_value(&self) -> HeaderValue {
        traceparent_value(self.bytes())
    }

    /// The header's text, `00-TRACEID-SPANID-FLAGS`, in one owner-backed allocation (its
    /// slices and clones count references to it).
    fn bytes(&self) -> bytes::Bytes {
        let mut text = [0u8; 55];
        text[..3].copy_from_slice(b"00-");
        write_hex(&mut text[3..35], &self.trace_id);
        text[35] = b'-';
        write_hex(&mut text[36..52], &self.span_id);
        text[52..].copy_from_slice(if self.sampled { b"-01" } else { b"-00" });
        bytes::Bytes::from_owner(text)
    }

    /// The `traceparent` header value and its trace id alone (32 hex digits), both over one
    /// allocation: the gateway's `X-Request-Id` when a client sends none, so that a request's
    /// log lines and its trace share one id.
    pub fn header_values(&self) -> (HeaderValue, HeaderValue) {
        let (text, trace_id) = self.texts();
        (traceparent_value(text), value_of(trace_id))
    }

    /// As [`TraceParent::header_values`], as text: for a writer that puts header lines on
    /// the wire itself and so needs no `HeaderValue` (whose making checks every byte of what
    /// is hex digits and dashes by construction).
    pub fn texts(&self) -> (bytes::Bytes, bytes::Bytes) {
        let bytes = self.bytes();
        let trace_id = bytes.slice(3..35);
        (bytes, trace_id)
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.header_value().to_str().unwrap_or(""))
    }
}

/// Random bytes, not all zero (W3C trace context forbids an all-zero id). Drawn from a fast
/// generator per thread (xoshiro, seeded from the OS): ids must be unique and spread, not
/// secret, and the gateway draws two for every request it serves, where the thread's
/// cryptographic generator (ChaCha) cost about 250 instructions a request.
fn nonzero<const N: usize>() -> [u8; N] {
    use rand::{rngs::SmallRng, RngCore, SeedableRng};
    thread_local! {
        static IDS: std::cell::RefCell<SmallRng> = std::cell::RefCell::new(SmallRng::from_entropy());
    }
    let mut bytes = [0u8; N];
    IDS.with_borrow_mut(|rng| {
        while bytes == [0; N] {
            rng.fill_bytes(&mut bytes);
        }
    });
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_the_traceparent_and_its_trace_id() {
        for sampled in [true, false] {
            let parent = TraceParent::root(sampled);
            let (value, trace_id) = parent.header_values();
            assert_eq!(value, parent.header_value());
            assert!(value.is_sensitive());
            assert_eq!(trace_id.to_str().unwrap(), parent.trace_hex());
            assert_eq!(TraceParent::parse(value.to_str().unwrap()), Some(parent));
        }
    }

    #[test]
    fn traceparent_parses_what_w3c_allows_only() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = TraceParent::parse(text).unwrap();
        assert!(parent.sampled);
        assert_eq!(parent.to_string(), text);
        let unsampled = TraceParent {
            sampled: false,
            ..parent
        };
        assert_eq!(unsampled.to_string(), format!("{}-00", &text[..52]));
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

    #[test]
    fn ids_differ_within_and_across_threads() {
        // Each thread seeds its own generator: two threads (and one thread's draws) must
        // never repeat an id, as a request id is a trace id.
        let draw = || {
            (0..1000)
                .map(|_| TraceParent::root(false))
                .flat_map(|p| [p.trace_hex(), p.child().span_hex()])
                .collect::<Vec<_>>()
        };
        let other = std::thread::spawn(draw).join().unwrap();
        let ids: std::collections::HashSet<String> = draw().into_iter().chain(other).collect();
        assert_eq!(ids.len(), 4000);
    }

    #[test]
    fn headers_are_found_in_small_and_large_maps() {
        let root = TraceParent::root(true);
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, root.header_value());
        assert_eq!(TraceParent::from_headers(&headers), Some(root));
        for i in 0..20 {
            headers.insert(
                HeaderName::try_from(format!("x-filler-{i}")).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        assert_eq!(TraceParent::from_headers(&headers), Some(root));
        assert_eq!(header(&headers, &TRACESTATE), None);
    }
}
