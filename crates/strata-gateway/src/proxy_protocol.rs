//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2): the header a load
//! balancer in front of a listener writes at the start of each connection to say who the
//! client was and which address it connected to.
//!
//! [`parse`] reads a header from bytes at hand; [`read_header`] reads one from a connection
//! and never reads a byte past its end, so what follows (a TLS handshake, an HTTP request)
//! stays in the stream for the next reader and no buffer has to be handed over.
//!
//! What is accepted:
//! - v1: `PROXY TCP4|TCP6 SOURCE DESTINATION SOURCE_PORT DESTINATION_PORT\r\n`, fields
//!   separated by exactly one space, addresses of the named family (no zone, no brackets),
//!   ports decimal from 0 to 65535 with no sign and no leading zero, at most 107 bytes with the
//!   CRLF. `PROXY UNKNOWN`, then anything up to the first CRLF, is [`Header::Local`].
//! - v2: the 12-byte signature, version 2, command LOCAL (the rest is ignored, as the spec
//!   says: [`Header::Local`]) or PROXY. For PROXY, TCP over IPv4 or IPv6 gives the addresses;
//!   UDP, UNIX sockets and `AF_UNSPEC` give [`Header::Local`]. The address block must be as
//!   long as its family needs, TLVs after it must fit exactly and are skipped, and at most 4096
//!   bytes may follow the fixed 16.
//!
//! How reading stays exact: for any valid prefix the parser knows the fewest bytes any header
//! starting with it still needs (15 before the first byte, since `PROXY UNKNOWN\r\n` is the
//! shortest header; then the rest of the v2 fixed part and the announced length; for v1 the
//! minimum length of the fields still missing and the CRLF), and [`read_header`] never asks
//! the stream for more than that. A v1 line thus takes a few short reads, a v2 header two.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The v1 signature.
const V1_SIGNATURE: &[u8] = b"PROXY";
/// The shortest v1 header, `PROXY UNKNOWN\r\n`, and the shortest of all.
const V1_MIN_LEN: usize = 15;
/// The longest v1 header the spec allows, CRLF included.
const V1_MAX_LEN: usize = 107;
/// The names of the v1 fields after `PROXY `, in order.
const V1_FIELDS: [&str; 5] = [
    "protocol",
    "source address",
    "destination address",
    "source port",
    "destination port",
];
/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part of a v2 header: signature, version and command, family, length.
const V2_FIXED_LEN: usize = 16;
/// The most bytes accepted after a v2 header's fixed part (addresses and TLVs). The length
/// field allows 65535; real headers, addresses and a few TLVs, are far smaller.
const V2_MAX_BODY: usize = 4096;

/// What a PROXY header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied TCP connection: the original client and the address it connected to.
    Proxied {
        /// The original client.
        source: SocketAddr,
        /// The address the client connected to (the proxy's listener).
        destination: SocketAddr,
    },
    /// `PROXY UNKNOWN` (v1) or a v2 LOCAL command or an unsupported family (UNIX sockets, UDP):
    /// use the connection's own peer address.
    Local,
}

/// Why no PROXY header could be read.
#[derive(Debug)]
pub enum Error {
    /// The bytes start with neither the v1 nor the v2 signature.
    NotProxy,
    /// A header with a bad field; the message says which and why.
    Malformed(String),
    /// A v1 line with no CRLF within 107 bytes, or a v2 header announcing more than 4096 bytes.
    TooLong(String),
    /// The connection ended inside the header.
    Eof {
        /// The bytes of the header read before the end.
        read: usize,
    },
    /// No whole header arrived in time.
    Timeout {
        /// The time allowed.
        after: Duration,
        /// The bytes of the header read by then.
        read: usize,
    },
    /// Reading from the connection failed.
    Io(std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotProxy => f.write_str("not a PROXY protocol header"),
            Error::Malformed(why) => write!(f, "malformed PROXY protocol header: {why}"),
            Error::TooLong(why) => write!(f, "PROXY protocol header too long: {why}"),
            Error::Eof { read } => {
                write!(
                    f,
                    "connection closed after {read} bytes of a PROXY protocol header"
                )
            }
            Error::Timeout { after, read } => write!(
                f,
                "no complete PROXY protocol header within {after:?} ({read} bytes read)"
            ),
            Error::Io(error) => write!(f, "read a PROXY protocol header: {error}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(error) => Some(error),
            _ => None,
        }
    }
}

/// Parses a header at the start of `buf`. `Ok(None)`: more bytes are needed (`buf` is a valid
/// prefix so far; a v6 address cut short is only checked for its characters and length until
/// it ends). `Ok(Some((header, consumed)))`: the header and how many bytes it used; the bytes
/// after it are not looked at. `Err`: not a PROXY header, or a malformed one.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    Ok(match step(buf)? {
        Step::Done(header, used) => Some((header, used)),
        Step::More(_) => None,
    })
}

/// Reads exactly the header from `io`, within `timeout`, and returns it. It never reads past
/// the header's end, so `io` can be an unbuffered socket whose next bytes belong to someone
/// else. Errors: [`Error::Timeout`], [`Error::Eof`], [`Error::NotProxy`],
/// [`Error::Malformed`], [`Error::TooLong`], [`Error::Io`].
///
/// Cancel safety: not cancel-safe. Bytes already read are lost with the future, so a
/// connection whose read is cancelled must be dropped.
pub async fn read_header<R: AsyncRead + Unpin>(
    io: &mut R,
    timeout: Duration,
) -> Result<Header, Error> {
    let mut buf = Vec::with_capacity(V1_MAX_LEN);
    let result = tokio::time::timeout(timeout, read_exact_header(io, &mut buf)).await;
    match result {
        Ok(result) => result,
        Err(_elapsed) => Err(Error::Timeout {
            after: timeout,
            read: buf.len(),
        }),
    }
}

/// Appends to `buf` (empty at first) until it holds a whole header, asking `io` each time for
/// no more than the header still needs at least.
async fn read_exact_header<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Header, Error> {
    loop {
        match step(buf)? {
            Step::Done(header, used) => {
                debug_assert_eq!(used, buf.len(), "read past the end of the header");
                return Ok(header);
            }
            Step::More(need) => {
                debug_assert!(need > 0, "a prefix always needs more bytes");
                buf.reserve(need);
                // `take` bounds the read; `read_buf` only grows `buf` by what arrived, so a
                // timeout in the middle leaves it exact.
                let limit = u64::try_from(need).unwrap_or(u64::MAX);
                let read = (&mut *io)
                    .take(limit)
                    .read_buf(buf)
                    .await
                    .map_err(Error::Io)?;
                if read == 0 {
                    return Err(Error::Eof { read: buf.len() });
                }
            }
        }
    }
}

/// Where parsing stands.
#[derive(Debug)]
enum Step {
    /// A whole header, and its length.
    Done(Header, usize),
    /// A valid prefix: any header it begins needs at least this many more bytes (never 0).
    More(usize),
}

/// Parses `buf` as far as it goes.
fn step(buf: &[u8]) -> Result<Step, Error> {
    match buf.first() {
        None => Ok(Step::More(V1_MIN_LEN)),
        Some(b'P') => v1(buf),
        Some(b'\r') => v2(buf),
        Some(_) => Err(Error::NotProxy),
    }
}

fn malformed(why: String) -> Error {
    Error::Malformed(why)
}

/// Bytes from the peer, for a message (a v1 field is at most 107 bytes).
fn shown(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// The address family of a v1 line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// A v1 header: `buf` starts with `P`.
fn v1(buf: &[u8]) -> Result<Step, Error> {
    let signature = buf.len().min(V1_SIGNATURE.len());
    if buf.get(..signature) != V1_SIGNATURE.get(..signature) {
        return Err(Error::NotProxy);
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    if let Some(end) = window.windows(2).position(|pair| pair == b"\r\n") {
        return Ok(Step::Done(v1_line(&buf[..end])?, end + 2));
    }
    let too_long = || {
        Error::TooLong(format!(
            "no CRLF within the {V1_MAX_LEN} bytes of a v1 line"
        ))
    };
    if buf.len() >= V1_MAX_LEN {
        return Err(too_long());
    }
    let need = v1_need(buf)?;
    if buf.len() + need > V1_MAX_LEN {
        return Err(too_long());
    }
    Ok(Step::More(need))
}

/// What follows `PROXY ` in a line that starts with `PROXY`.
fn v1_rest(line: &[u8]) -> Result<&[u8], Error> {
    match line.strip_prefix(b"PROXY ") {
        Some(rest) => Ok(rest),
        None => Err(malformed(
            "v1: expected a single space after PROXY".to_string(),
        )),
    }
}

/// `PROXY UNKNOWN`, then nothing or a space and anything.
fn v1_is_unknown(rest: &[u8]) -> bool {
    rest == b"UNKNOWN" || rest.starts_with(b"UNKNOWN ")
}

/// A whole v1 line, without its CRLF.
fn v1_line(line: &[u8]) -> Result<Header, Error> {
    let rest = v1_rest(line)?;
    if v1_is_unknown(rest) {
        return Ok(Header::Local);
    }
    let fields: Vec<&[u8]> = rest.split(|byte| *byte == b' ').collect();
    let family = v1_protocol(fields.first().copied().unwrap_or_default())?;
    v1_no_empty_field(&fields)?;
    let [_, source, destination, source_port, destination_port] = fields[..] else {
        return Err(malformed(format!(
            "v1: {} fields after PROXY, expected 5: protocol, source and destination address, \
             source and destination port",
            fields.len()
        )));
    };
    Ok(Header::Proxied {
        source: SocketAddr::new(
            v1_address(source, family, V1_FIELDS[1])?,
            v1_port(source_port, V1_FIELDS[3])?,
        ),
        destination: SocketAddr::new(
            v1_address(destination, family, V1_FIELDS[2])?,
            v1_port(destination_port, V1_FIELDS[4])?,
        ),
    })
}

/// The fewest bytes still needed after `buf`, a v1 prefix with no CRLF shorter than 107 bytes;
/// or why no header starts with it.
fn v1_need(buf: &[u8]) -> Result<usize, Error> {
    if buf.len() <= V1_SIGNATURE.len() {
        return Ok(V1_MIN_LEN - buf.len());
    }
    // A CR at the end may start the CRLF.
    let (content, cr) = match buf.strip_suffix(b"\r") {
        Some(content) => (content, true),
        None => (buf, false),
    };
    let rest = v1_rest(content)?;
    if v1_is_unknown(rest) {
        return Ok(if cr { 1 } else { 2 });
    }
    if cr {
        // Only UNKNOWN lines hold a CR, so this one ends here if it is whole.
        v1_line(content)?;
        return Ok(1);
    }
    if b"UNKNOWN".starts_with(rest) {
        return Ok(b"UNKNOWN".len() - rest.len() + 2);
    }
    let fields: Vec<&[u8]> = rest.split(|byte| *byte == b' ').collect();
    let Some((last, done)) = fields.split_last() else {
        return Err(malformed("v1: no protocol after PROXY".to_string()));
    };
    if fields.len() > V1_FIELDS.len() {
        return Err(malformed(format!(
            "v1: more than {} fields after PROXY",
            V1_FIELDS.len()
        )));
    }
    let family = match done.first() {
        Some(protocol) => Some(v1_protocol(protocol)?),
        None => None,
    };
    v1_no_empty_field(done)?;
    let index = done.len();
    let what = V1_FIELDS.get(index).copied().unwrap_or("field");
    for (at, field) in done.iter().enumerate().skip(1) {
        let what = V1_FIELDS.get(at).copied().unwrap_or("field");
        if at <= 2 {
            v1_address(field, family.unwrap_or(Family::V6), what)?;
        } else {
            v1_port(field, what)?;
        }
    }
    // The field cut short.
    let family = match index {
        0 if last == b"TCP4" => Some(Family::V4),
        0 if last == b"TCP6" => Some(Family::V6),
        0 if b"TCP4".starts_with(last) || b"TCP6".starts_with(last) => None,
        0 => return Err(v1_bad_protocol(last)),
        1 | 2 => match family.unwrap_or(Family::V6) {
            Family::V4 if ipv4_prefix_ok(last) => family,
            Family::V6 if ipv6_prefix_ok(last) => family,
            family => return Err(v1_bad_address(last, family, what)),
        },
        _ if port_prefix_ok(last) => family,
        _ => return Err(v1_bad_port(last, what)),
    };
    // The shortest fields that could follow: `TCP4`, `0.0.0.0` or `::`, `0`.
    let address = if family == Some(Family::V4) { 7 } else { 2 };
    let shortest = [4, address, address, 1, 1];
    let this = shortest
        .get(index)
        .map_or(0, |len: &usize| len.saturating_sub(last.len()));
    let later: usize = shortest.iter().skip(index + 1).map(|len| 1 + len).sum();
    Ok(this + later + 2)
}

fn v1_protocol(field: &[u8]) -> Result<Family, Error> {
    match field {
        b"TCP4" => Ok(Family::V4),
        b"TCP6" => Ok(Family::V6),
        _ => Err(v1_bad_protocol(field)),
    }
}

fn v1_bad_protocol(field: &[u8]) -> Error {
    malformed(format!(
        "v1 protocol {:?} is not TCP4, TCP6 or UNKNOWN",
        shown(field)
    ))
}

fn v1_no_empty_field(fields: &[&[u8]]) -> Result<(), Error> {
    if fields.iter().any(|field| field.is_empty()) {
        return Err(malformed(
            "v1 fields must be separated by exactly one space".to_string(),
        ));
    }
    Ok(())
}

fn v1_address(field: &[u8], family: Family, what: &str) -> Result<IpAddr, Error> {
    let text = std::str::from_utf8(field).ok();
    let address = match family {
        Family::V4 => text
            .and_then(|text| text.parse::<Ipv4Addr>().ok())
            .map(IpAddr::V4),
        Family::V6 => text
            .and_then(|text| text.parse::<Ipv6Addr>().ok())
            .map(IpAddr::V6),
    };
    address.ok_or_else(|| v1_bad_address(field, family, what))
}

fn v1_bad_address(field: &[u8], family: Family, what: &str) -> Error {
    let (family, protocol) = match family {
        Family::V4 => ("IPv4", "TCP4"),
        Family::V6 => ("IPv6", "TCP6"),
    };
    malformed(format!(
        "v1 {what} {:?} is not an {family} address ({protocol})",
        shown(field)
    ))
}

fn v1_port(field: &[u8], what: &str) -> Result<u16, Error> {
    if field.is_empty() || !port_prefix_ok(field) {
        return Err(v1_bad_port(field, what));
    }
    u16::try_from(decimal(field)).map_err(|_| v1_bad_port(field, what))
}

fn v1_bad_port(field: &[u8], what: &str) -> Error {
    malformed(format!(
        "v1 {what} {:?} is not a decimal number from 0 to 65535 without sign or leading zero",
        shown(field)
    ))
}

/// The value of at most 5 ASCII digits.
fn decimal(digits: &[u8]) -> u32 {
    digits.iter().fold(0, |value, digit| {
        value * 10 + u32::from(digit.wrapping_sub(b'0'))
    })
}

/// Whether `field` (maybe empty) is a port or the start of one.
fn port_prefix_ok(field: &[u8]) -> bool {
    field.len() <= 5
        && field.iter().all(u8::is_ascii_digit)
        && !(field.len() > 1 && field.first() == Some(&b'0'))
        && decimal(field) <= u32::from(u16::MAX)
}

/// Whether `field` (maybe empty) is the start of a dotted-quad IPv4 address: up to four parts,
/// each a decimal octet without leading zero, the last maybe empty or cut short.
fn ipv4_prefix_ok(field: &[u8]) -> bool {
    let parts: Vec<&[u8]> = field.split(|byte| *byte == b'.').collect();
    let octet = |part: &[u8]| {
        !part.is_empty()
            && part.len() <= 3
            && part.iter().all(u8::is_ascii_digit)
            && !(part.len() > 1 && part.first() == Some(&b'0'))
            && decimal(part) <= 255
    };
    parts.len() <= 4
        && parts
            .iter()
            .enumerate()
            .all(|(at, part)| octet(part) || (at + 1 == parts.len() && part.is_empty()))
}

/// Whether `field` could start an IPv6 address: its characters and length only (45 is the
/// longest text form, six groups and a dotted quad).
fn ipv6_prefix_ok(field: &[u8]) -> bool {
    field.len() <= 45
        && field
            .iter()
            .all(|byte| byte.is_ascii_hexdigit() || *byte == b':' || *byte == b'.')
}

/// What a v2 PROXY command's family byte announces.
#[derive(Debug, Clone, Copy)]
enum V2Family {
    /// `AF_UNSPEC`: the receiver may use the connection's own addresses.
    Unspec,
    /// TCP over IPv4.
    Tcp4,
    /// TCP over IPv6.
    Tcp6,
    /// UDP or UNIX sockets: valid, but nothing this listener can use.
    Ignored {
        /// The size of the family's address block.
        addresses: usize,
    },
}

impl V2Family {
    fn from_byte(byte: u8) -> Result<V2Family, Error> {
        Ok(match byte {
            0x00 => V2Family::Unspec,
            0x11 => V2Family::Tcp4,
            0x12 => V2Family::Ignored { addresses: 12 },
            0x21 => V2Family::Tcp6,
            0x22 => V2Family::Ignored { addresses: 36 },
            0x31 | 0x32 => V2Family::Ignored { addresses: 216 },
            other => {
                return Err(malformed(format!(
                    "v2 address family and transport 0x{other:02x} is not one the protocol \
                     defines"
                )))
            }
        })
    }

    /// The size of the address block.
    fn addresses(self) -> usize {
        match self {
            V2Family::Unspec => 0,
            V2Family::Tcp4 => 12,
            V2Family::Tcp6 => 36,
            V2Family::Ignored { addresses } => addresses,
        }
    }
}

/// A v2 header: `buf` starts with CR.
fn v2(buf: &[u8]) -> Result<Step, Error> {
    let signature = buf.len().min(V2_SIGNATURE.len());
    if buf.get(..signature) != V2_SIGNATURE.get(..signature) {
        return Err(Error::NotProxy);
    }
    let more = || Ok(Step::More(V2_FIXED_LEN - buf.len()));
    let Some(&version_command) = buf.get(12) else {
        return more();
    };
    let version = version_command >> 4;
    if version != 2 {
        return Err(malformed(format!(
            "v2 signature with version {version}, expected 2"
        )));
    }
    let proxy = match version_command & 0x0f {
        0 => false,
        1 => true,
        command => {
            return Err(malformed(format!(
                "v2 command {command}, expected 0 (LOCAL) or 1 (PROXY)"
            )))
        }
    };
    let Some(&family) = buf.get(13) else {
        return more();
    };
    // A LOCAL command's family and addresses are ignored, as the spec says.
    let family = if proxy {
        Some(V2Family::from_byte(family)?)
    } else {
        None
    };
    let (Some(&high), Some(&low)) = (buf.get(14), buf.get(15)) else {
        return more();
    };
    let length = usize::from(u16::from_be_bytes([high, low]));
    if length > V2_MAX_BODY {
        return Err(Error::TooLong(format!(
            "v2 header announces {length} bytes after its fixed part, more than the \
             {V2_MAX_BODY} allowed"
        )));
    }
    let addresses = family.map_or(0, V2Family::addresses);
    if length < addresses {
        return Err(malformed(format!(
            "v2 address block of {length} bytes, its family needs {addresses}"
        )));
    }
    let total = V2_FIXED_LEN + length;
    let Some(body) = buf.get(V2_FIXED_LEN..total) else {
        return Ok(Step::More(total - buf.len()));
    };
    let header = match family {
        None | Some(V2Family::Unspec) => Header::Local,
        Some(family) => {
            let Some((addresses, tlvs)) = body.split_at_checked(addresses) else {
                return Err(malformed("v2 address block cut short".to_string()));
            };
            v2_tlvs(tlvs)?;
            match family {
                V2Family::Tcp4 => v2_tcp4(addresses)?,
                V2Family::Tcp6 => v2_tcp6(addresses)?,
                V2Family::Unspec | V2Family::Ignored { .. } => Header::Local,
            }
        }
    };
    Ok(Step::Done(header, total))
}

/// Checks that the TLVs (type, 16-bit length, value) fill `tlvs` exactly.
fn v2_tlvs(mut tlvs: &[u8]) -> Result<(), Error> {
    while !tlvs.is_empty() {
        let [kind, high, low, rest @ ..] = tlvs else {
            return Err(malformed(format!(
                "v2 TLVs end with {} bytes, less than a TLV header",
                tlvs.len()
            )));
        };
        let length = usize::from(u16::from_be_bytes([*high, *low]));
        let Some(after) = rest.get(length..) else {
            return Err(malformed(format!(
                "v2 TLV of type 0x{kind:02x} announces {length} bytes, {} are left",
                rest.len()
            )));
        };
        tlvs = after;
    }
    Ok(())
}

/// The array at `at` in `bytes`.
fn array<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], Error> {
    bytes
        .get(at..at + N)
        .and_then(|slice| <[u8; N]>::try_from(slice).ok())
        .ok_or_else(|| malformed("v2 address block cut short".to_string()))
}

fn v2_tcp4(block: &[u8]) -> Result<Header, Error> {
    let source = Ipv4Addr::from(array::<4>(block, 0)?);
    let destination = Ipv4Addr::from(array::<4>(block, 4)?);
    let source_port = u16::from_be_bytes(array(block, 8)?);
    let destination_port = u16::from_be_bytes(array(block, 10)?);
    Ok(Header::Proxied {
        source: SocketAddr::new(source.into(), source_port),
        destination: SocketAddr::new(destination.into(), destination_port),
    })
}

fn v2_tcp6(block: &[u8]) -> Result<Header, Error> {
    let source = Ipv6Addr::from(array::<16>(block, 0)?);
    let destination = Ipv6Addr::from(array::<16>(block, 16)?);
    let source_port = u16::from_be_bytes(array(block, 32)?);
    let destination_port = u16::from_be_bytes(array(block, 34)?);
    Ok(Header::Proxied {
        source: SocketAddr::new(source.into(), source_port),
        destination: SocketAddr::new(destination.into(), destination_port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncWriteExt, ReadBuf};

    fn socket(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn proxied(source: &str, destination: &str) -> Header {
        Header::Proxied {
            source: socket(source),
            destination: socket(destination),
        }
    }

    /// A v2 header with the given version and command byte, family byte and body.
    fn v2_header(version_command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(version_command);
        out.push(family);
        out.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// A v2 PROXY header for TCP between two addresses of the same family, then `tlvs`.
    fn v2_tcp(source: SocketAddr, destination: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        let family = match (source.ip(), destination.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                body.extend_from_slice(&s.octets());
                body.extend_from_slice(&d.octets());
                0x11
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                body.extend_from_slice(&s.octets());
                body.extend_from_slice(&d.octets());
                0x21
            }
            _ => panic!("mixed families"),
        };
        body.extend_from_slice(&source.port().to_be_bytes());
        body.extend_from_slice(&destination.port().to_be_bytes());
        body.extend_from_slice(tlvs);
        v2_header(0x21, family, &body)
    }

    /// A v1 line for TCP between two addresses of the same family.
    fn v1_tcp(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
        let protocol = if source.is_ipv4() { "TCP4" } else { "TCP6" };
        format!(
            "PROXY {protocol} {} {} {} {}\r\n",
            source.ip(),
            destination.ip(),
            source.port(),
            destination.port()
        )
        .into_bytes()
    }

    /// Valid headers and what they say.
    fn good() -> Vec<(Vec<u8>, Header)> {
        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let mut tlvs = vec![0x01, 0x00, 0x02, b'h', b'2', 0x04, 0x00, 0x03, 0, 0, 0];
        tlvs.extend_from_slice(&[0x05, 0x00, 0x00]);
        let mut biggest = vec![0x04];
        biggest.extend_from_slice(&u16::try_from(V2_MAX_BODY - 12 - 3).unwrap().to_be_bytes());
        biggest.resize(V2_MAX_BODY - 12, 0xee);
        vec![
            (
                b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_vec(),
                proxied("192.168.0.1:56324", "192.168.0.11:443"),
            ),
            (
                b"PROXY TCP4 0.0.0.0 1.2.3.4 0 1\r\n".to_vec(),
                proxied("0.0.0.0:0", "1.2.3.4:1"),
            ),
            (
                b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 0 65535\r\n".to_vec(),
                proxied("[2001:db8::1]:0", "[::ffff:10.0.0.1]:65535"),
            ),
            (
                b"PROXY TCP6 :: ::1 10 20\r\n".to_vec(),
                proxied("[::]:10", "[::1]:20"),
            ),
            (
                format!("PROXY TCP6 {full} {full} 65535 65535\r\n").into_bytes(),
                proxied(&format!("[{full}]:65535"), &format!("[{full}]:65535")),
            ),
            (b"PROXY UNKNOWN\r\n".to_vec(), Header::Local),
            // The spec's worst case: 107 bytes.
            (
                format!("PROXY UNKNOWN {full} {full} 65535 65535\r\n").into_bytes(),
                Header::Local,
            ),
            (b"PROXY UNKNOWN a\rb\nc \r\n".to_vec(), Header::Local),
            (
                v2_tcp(socket("10.1.2.3:4000"), socket("10.9.8.7:443"), &[]),
                proxied("10.1.2.3:4000", "10.9.8.7:443"),
            ),
            (
                v2_tcp(socket("[2001:db8::7]:1"), socket("[fe80::1]:65535"), &tlvs),
                proxied("[2001:db8::7]:1", "[fe80::1]:65535"),
            ),
            (
                v2_tcp(socket("1.1.1.1:1"), socket("2.2.2.2:2"), &biggest),
                proxied("1.1.1.1:1", "2.2.2.2:2"),
            ),
            (v2_header(0x20, 0x00, &[]), Header::Local),
            // LOCAL ignores whatever follows, even an unknown family.
            (v2_header(0x20, 0xff, &[1, 2, 3]), Header::Local),
            (v2_header(0x21, 0x00, &[]), Header::Local),
            (v2_header(0x21, 0x12, &[0; 12]), Header::Local),
            (v2_header(0x21, 0x22, &[0; 36]), Header::Local),
            (v2_header(0x21, 0x31, &[0; 216]), Header::Local),
            (v2_header(0x21, 0x32, &[0; 219]), Header::Local),
        ]
    }

    /// A name for the kind of an error.
    fn kind(error: &Error) -> &'static str {
        match error {
            Error::NotProxy => "not proxy",
            Error::Malformed(_) => "malformed",
            Error::TooLong(_) => "too long",
            Error::Eof { .. } => "eof",
            Error::Timeout { .. } => "timeout",
            Error::Io(_) => "io",
        }
    }

    /// Invalid inputs and the kind of error each gives.
    fn bad() -> Vec<(Vec<u8>, &'static str)> {
        let tail = " 1.2.3.4 5.6.7.8 1 2\r\n";
        let mut cases: Vec<(Vec<u8>, &'static str)> = [
            "GET / HTTP/1.1\r\n",
            "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXZ TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            "\r\n\r\n\0\r\nQUIZ\n!!!!",
            "\x16\x03\x01\x02\x00\x01",
        ]
        .iter()
        .map(|text| (text.as_bytes().to_vec(), "not proxy"))
        .collect();
        let malformed_v1 = [
            "PROXY\r\n".to_string(),
            "PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_string(),
            "PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_string(),
            "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n".to_string(),
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n".to_string(),
            "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n".to_string(),
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n".to_string(),
            "PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n".to_string(),
            "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n".to_string(),
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n".to_string(),
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n".to_string(),
            "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n".to_string(),
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 0x2\r\n".to_string(),
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_string(),
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\r\n".to_string(),
            "PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n".to_string(),
            "PROXY TCP4 ::1 ::1 1 2\r\n".to_string(),
            "PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n".to_string(),
            "PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n".to_string(),
            "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n".to_string(),
            "PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n".to_string(),
            "PROXY TCP4 1.2.3.4 5.6.7.8:1 1 2\r\n".to_string(),
            "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n".to_string(),
            "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n".to_string(),
            "PROXY TCP6 [::1] ::1 1 2\r\n".to_string(),
            "PROXY TCP6 1::2::3 ::1 1 2\r\n".to_string(),
            "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n".to_string(),
            format!("PROXY tcp4{tail}"),
            format!("PROXY UDP4{tail}"),
            format!("PROXY UNKNOWNX{tail}"),
            "PROXY UNKNOWNX\r\n".to_string(),
            "PROXY UNKNOW\r\n".to_string(),
            "PROXY \r\n".to_string(),
            "PROXY TCP4\r\n".to_string(),
        ];
        cases.extend(
            malformed_v1
                .into_iter()
                .map(|text| (text.into_bytes(), "malformed")),
        );
        let unknown = |pad: usize| format!("PROXY UNKNOWN {}\r\n", "a".repeat(pad)).into_bytes();
        cases.push((unknown(92), "too long")); // 108 bytes
        cases.push((unknown(200), "too long"));
        cases.push((
            format!(
                "PROXY TCP6 {0} {0} 65535 65535\r\n",
                "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
            )
            .into_bytes(),
            "too long",
        ));
        let body4 = [0u8; 12];
        cases.extend([
            (v2_header(0x11, 0x11, &body4), "malformed"),
            (v2_header(0x31, 0x11, &body4), "malformed"),
            (v2_header(0x22, 0x11, &body4), "malformed"),
            (v2_header(0x2f, 0x11, &body4), "malformed"),
            (v2_header(0x21, 0x13, &body4), "malformed"),
            (v2_header(0x21, 0x41, &body4), "malformed"),
            (v2_header(0x21, 0x10, &body4), "malformed"),
            (v2_header(0x21, 0x01, &body4), "malformed"),
            (v2_header(0x21, 0x11, &body4[..11]), "malformed"),
            (v2_header(0x21, 0x21, &[0; 35]), "malformed"),
            (v2_header(0x21, 0x31, &[0; 215]), "malformed"),
            (
                v2_header(0x21, 0x11, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
                "malformed",
            ),
            (
                v2_header(
                    0x21,
                    0x11,
                    &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 5, 1, 2],
                ),
                "malformed",
            ),
            (v2_header(0x21, 0x11, &[0; V2_MAX_BODY + 1]), "too long"),
            (v2_header(0x20, 0x00, &[0; 65535]), "too long"),
        ]);
        cases
    }

    #[test]
    fn good_headers_parse_and_leave_what_follows() {
        for (bytes, header) in good() {
            let len = bytes.len();
            assert_eq!(parse(&bytes).unwrap(), Some((header, len)), "{bytes:?}");
            let mut more = bytes.clone();
            more.extend_from_slice(b"\x16\x03\x01 and more\r\n");
            assert_eq!(parse(&more).unwrap(), Some((header, len)), "{bytes:?}");
        }
    }

    #[test]
    fn every_proper_prefix_asks_for_no_more_than_is_left() {
        for (bytes, _) in good() {
            for end in 0..bytes.len() {
                let prefix = &bytes[..end];
                assert!(
                    matches!(parse(prefix), Ok(None)),
                    "{prefix:?}: {:?}",
                    parse(prefix)
                );
                match step(prefix).unwrap() {
                    Step::More(need) => {
                        assert!(
                            need >= 1 && need <= bytes.len() - end,
                            "{prefix:?} needs {need}"
                        )
                    }
                    Step::Done(..) => panic!("{prefix:?} is not whole"),
                }
            }
        }
    }

    #[test]
    fn bad_headers_are_refused_with_their_kind() {
        for (bytes, expected) in bad() {
            let error = parse(&bytes).unwrap_err();
            assert_eq!(kind(&error), expected, "{:?}: {error}", shown(&bytes));
            assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn messages_name_the_field_and_value() {
        let message = |text: &str| parse(text.as_bytes()).unwrap_err().to_string();
        let port = message("PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n");
        assert!(port.contains("source port \"+1\""), "{port}");
        let address = message("PROXY TCP6 1.2.3.4 ::1 1 2\r\n");
        assert!(
            address.contains("source address \"1.2.3.4\" is not an IPv6"),
            "{address}"
        );
        let destination = message("PROXY TCP4 1.2.3.4 ::1 1 2\r\n");
        assert!(
            destination.contains("destination address \"::1\""),
            "{destination}"
        );
        let count = message("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n");
        assert!(count.contains("4 fields"), "{count}");
        let version = parse(&v2_header(0x11, 0x11, &[0; 12]))
            .unwrap_err()
            .to_string();
        assert!(version.contains("version 1"), "{version}");
        let family = parse(&v2_header(0x21, 0x41, &[0; 12]))
            .unwrap_err()
            .to_string();
        assert!(family.contains("0x41"), "{family}");
    }

    #[test]
    fn bad_prefixes_are_refused_early() {
        for text in [
            "G",
            "PROXY TCP4 1.2.3.4 5.6.7.8 +",
            "PROXY TCP4 300",
            "PROXY TCP4 1..",
            "PROXY TCP6 ::g",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 655350",
            "PROXY TCX",
            "PROXY UNKNOWN\r ",
        ] {
            assert!(parse(text.as_bytes()).is_err(), "{text:?}");
        }
        assert!(parse(&V2_SIGNATURE[..5]).unwrap().is_none());
        assert!(parse(&v2_header(0x11, 0x11, &[])[..13]).is_err());
        assert!(parse(&v2_header(0x21, 0x77, &[])[..14]).is_err());
        assert!(parse(&v2_header(0x21, 0x11, &[0; 5000])[..16]).is_err());
    }

    /// A reader that hands out one byte per read.
    struct Trickle<'a>(&'a [u8]);

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if let Some((first, rest)) = self.0.split_first() {
                if buf.remaining() > 0 {
                    buf.put_slice(&[*first]);
                    self.0 = rest;
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// A reader that fails.
    struct Broken;

    impl AsyncRead for Broken {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "reset",
            )))
        }
    }

    const SECOND: Duration = Duration::from_secs(1);
    const AFTER: &[u8] = b"\x16\x03\x01\x00\xa5 a TLS hello";

    #[tokio::test]
    async fn read_header_stops_at_the_end_of_the_header() {
        for (bytes, header) in good() {
            let mut input = bytes.clone();
            input.extend_from_slice(AFTER);
            let mut slice = &input[..];
            assert_eq!(
                read_header(&mut slice, SECOND).await.unwrap(),
                header,
                "{bytes:?}"
            );
            assert_eq!(slice, AFTER, "{bytes:?}");
            let mut trickle = Trickle(&input);
            assert_eq!(
                read_header(&mut trickle, SECOND).await.unwrap(),
                header,
                "{bytes:?}"
            );
            assert_eq!(trickle.0, AFTER, "{bytes:?}");
        }
    }

    #[tokio::test]
    async fn read_header_over_a_duplex_in_pieces() {
        for (bytes, header) in good() {
            for cut in [1, 5, 13, 16, 20, bytes.len() - 1] {
                let cut = cut.min(bytes.len() - 1);
                let (mut client, mut server) = tokio::io::duplex(8192);
                let write = async {
                    client.write_all(&bytes[..cut]).await.unwrap();
                    tokio::task::yield_now().await;
                    client.write_all(&bytes[cut..]).await.unwrap();
                    client.write_all(AFTER).await.unwrap();
                    client
                };
                let (client, read) = tokio::join!(write, read_header(&mut server, SECOND));
                assert_eq!(read.unwrap(), header);
                drop(client);
                let mut rest = Vec::new();
                server.read_to_end(&mut rest).await.unwrap();
                assert_eq!(rest, AFTER);
            }
        }
    }

    #[tokio::test]
    async fn read_header_refuses_what_parse_refuses() {
        for (bytes, expected) in bad() {
            let mut slice = &bytes[..];
            let error = read_header(&mut slice, SECOND).await.unwrap_err();
            assert_eq!(kind(&error), expected, "{:?}: {error}", shown(&bytes));
        }
    }

    #[tokio::test]
    async fn read_header_reports_the_end_of_the_connection() {
        let mut cut = &b"PROXY TCP4 1.2"[..];
        let error = read_header(&mut cut, SECOND).await.unwrap_err();
        assert!(matches!(error, Error::Eof { read: 14 }), "{error}");
        let mut empty = &b""[..];
        let error = read_header(&mut empty, SECOND).await.unwrap_err();
        assert!(matches!(error, Error::Eof { read: 0 }), "{error}");
        let mut v2 = &v2_header(0x21, 0x11, &[0; 12])[..20];
        let error = read_header(&mut v2, SECOND).await.unwrap_err();
        assert!(matches!(error, Error::Eof { read: 20 }), "{error}");
        let error = read_header(&mut Broken, SECOND).await.unwrap_err();
        assert!(matches!(error, Error::Io(_)), "{error}");
        assert!(std::error::Error::source(&error).is_some());
    }

    #[tokio::test]
    async fn read_header_times_out_on_a_silent_or_stalled_peer() {
        let short = Duration::from_millis(20);
        let (_silent, mut server) = tokio::io::duplex(64);
        let error = read_header(&mut server, short).await.unwrap_err();
        assert!(
            matches!(error, Error::Timeout { read: 0, after } if after == short),
            "{error}"
        );

        let (mut stalled, mut server) = tokio::io::duplex(64);
        stalled.write_all(b"PROXY TCP4 1.2").await.unwrap();
        let error = read_header(&mut server, short).await.unwrap_err();
        assert!(matches!(error, Error::Timeout { read: 14, .. }), "{error}");
        assert!(error.to_string().contains("14 bytes read"), "{error}");
    }

    /// What any input must satisfy: a header is within the input and parses alone to the same
    /// header, every proper prefix of it asks for more, and a request for more is short.
    fn check(bytes: &[u8]) {
        match parse(bytes) {
            Ok(Some((header, used))) => {
                assert!(used > 0 && used <= bytes.len());
                assert_eq!(parse(&bytes[..used]).unwrap(), Some((header, used)));
                for end in 0..used {
                    assert!(matches!(parse(&bytes[..end]), Ok(None)), "{end}");
                }
            }
            Ok(None) => assert!(bytes.len() < V2_FIXED_LEN + V2_MAX_BODY),
            Err(error) => assert!(!error.to_string().is_empty()),
        }
    }

    fn pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
        prop_oneof![
            (
                any::<Ipv4Addr>(),
                any::<u16>(),
                any::<Ipv4Addr>(),
                any::<u16>()
            )
                .prop_map(|(s, sp, d, dp)| (
                    SocketAddr::new(s.into(), sp),
                    SocketAddr::new(d.into(), dp)
                )),
            (
                any::<Ipv6Addr>(),
                any::<u16>(),
                any::<Ipv6Addr>(),
                any::<u16>()
            )
                .prop_map(|(s, sp, d, dp)| (
                    SocketAddr::new(s.into(), sp),
                    SocketAddr::new(d.into(), dp)
                )),
        ]
    }

    fn tlvs() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)),
            0..4,
        )
        .prop_map(|tlvs| {
            let mut out = Vec::new();
            for (kind, value) in tlvs {
                out.push(kind);
                out.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
                out.extend_from_slice(&value);
            }
            out
        })
    }

    /// Checks that `bytes` is exactly one header saying `expected`, and that reading it from a
    /// stream leaves what follows.
    fn round_trip(bytes: &[u8], expected: Header) {
        assert_eq!(parse(bytes).unwrap(), Some((expected, bytes.len())));
        for end in 0..bytes.len() {
            match step(&bytes[..end]).unwrap() {
                Step::More(need) => assert!(need >= 1 && need <= bytes.len() - end),
                Step::Done(..) => panic!("a proper prefix is whole"),
            }
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut input = bytes.to_vec();
        input.extend_from_slice(AFTER);
        let mut slice = &input[..];
        let header = runtime.block_on(read_header(&mut slice, SECOND)).unwrap();
        assert_eq!(header, expected);
        assert_eq!(slice, AFTER);
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            check(&bytes);
        }

        #[test]
        fn parse_never_panics_after_a_signature(
            v2 in any::<bool>(),
            tail in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut bytes = if v2 { V2_SIGNATURE.to_vec() } else { b"PROXY ".to_vec() };
            bytes.extend_from_slice(&tail);
            check(&bytes);
        }

        #[test]
        fn mutated_headers_never_panic(
            (source, destination) in pair(),
            v2 in any::<bool>(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            insert in any::<bool>(),
        ) {
            let mut bytes =
                if v2 { v2_tcp(source, destination, &[]) } else { v1_tcp(source, destination) };
            let at = at.index(bytes.len());
            if insert {
                bytes.insert(at, byte);
            } else {
                bytes[at] = byte;
            }
            check(&bytes);
        }

        #[test]
        fn v1_headers_round_trip((source, destination) in pair()) {
            round_trip(&v1_tcp(source, destination), Header::Proxied { source, destination });
        }

        #[test]
        fn v2_headers_round_trip((source, destination) in pair(), tlvs in tlvs()) {
            round_trip(&v2_tcp(source, destination, &tlvs), Header::Proxied { source, destination });
        }
    }
}
