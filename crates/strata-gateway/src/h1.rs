//! The HTTP/1.1 wire format of exchanges with upstream members (RFC 9112): a request's head
//! written straight from `http` types, an answer's head parsed by httparse into `http` types
//! without copying the header values, and the framing of the answer's body (empty, by length,
//! in chunks, or until the connection closes).
//!
//! Pure functions over byte buffers, with no I/O: [`crate::pool`] does the reading and the
//! writing. Nothing here panics on bytes from the network; a malformed answer is an
//! [`std::io::Error`] of kind `InvalidData`.

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use std::io;
use std::mem::MaybeUninit;

/// The most header lines an answer's head may have.
pub const MAX_HEADERS: usize = 128;

/// The longest a head may be (offsets into it are kept as `u16`).
pub const MAX_HEAD: usize = 64 * 1024 - 1;

/// The longest a chunk-size line or a trailer section may be.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;

/// How a request's body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// In chunks (the body's length is not known in advance).
    Chunked,
}

/// Writes `request`'s head (origin-form or, for `CONNECT`, authority-form target) into `out`
/// and says how its body follows. `added`: whole header lines (each ending in CRLF) written
/// after the request's own headers; `body_ended`: the body is known to be empty; `exact`: its
/// length when known. A `Content-Length` the request carries is kept and frames the body;
/// `Transfer-Encoding` is always the framing's own.
pub fn encode_request_head<B>(
    request: &Request<B>,
    added: &[u8],
    body_ended: bool,
    exact: Option<u64>,
    out: &mut BytesMut,
) -> RequestFraming {
    let uri = request.uri();
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.extend_from_slice(b" ");
    match (request.method() == Method::CONNECT, uri.authority()) {
        (true, Some(authority)) => out.extend_from_slice(authority.as_str().as_bytes()),
        _ => match uri.path_and_query().map(|p| p.as_str()) {
            Some(target) if !target.is_empty() => out.extend_from_slice(target.as_bytes()),
            _ => out.extend_from_slice(b"/"),
        },
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let declared = content_length(request.headers()).ok().flatten();
    let framing = match (declared, body_ended, exact) {
        (Some(length), _, _) => RequestFraming::Length(length),
        (None, true, _) => RequestFraming::Empty,
        (None, false, Some(length)) => RequestFraming::Length(length),
        (None, false, None) => RequestFraming::Chunked,
    };
    for (name, value) in request.headers() {
        // The framing's own headers are written below; a declared length is kept as sent.
        if name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH && declared.is_none())
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(added);
    match framing {
        RequestFraming::Length(length) if declared.is_none() => put_content_length(length, out),
        // A method whose request normally has a body says that this one has none.
        RequestFraming::Empty
            if matches!(
                *request.method(),
                Method::POST | Method::PUT | Method::PATCH
            ) =>
        {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// The chunk header of a body piece of `length` bytes (`SIZE CRLF`).
pub fn chunk_header(length: usize) -> Bytes {
    Bytes::from(format!("{length:x}\r\n"))
}

/// How an answer's body follows its head (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (an answer to `HEAD`, a 204 or 304, or `Content-Length: 0`).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// In chunks.
    Chunked,
    /// Until the member closes the connection.
    UntilClose,
}

/// A parsed answer head: the answer without its body, how the body follows, and whether the
/// connection may carry another request after it.
#[derive(Debug)]
pub struct AnswerHead {
    pub response: Response<()>,
    pub framing: BodyFraming,
    pub keep_alive: bool,
    /// The header lines, when they stayed raw (the response's map is then empty).
    pub raw: Option<Box<RawHeaders>>,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// An answer's header lines kept as the upstream wrote them, for a client connection that
/// writes them on as they are: no header map is built for them (see [`parse_answer`]'s `raw`).
/// Left out are the headers the gateway never passes on (the hop-by-hop ones but `Trailer`,
/// and `Upgrade`), `X-Request-Id` (the gateway sets its own), and the framing's own
/// (`Transfer-Encoding`, and a `Content-Length` beside it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawHeaders {
    /// `name: value\r\n` lines, names as the upstream spelled them.
    pub lines: Bytes,
    /// The lines carry a `Date`.
    pub dated: bool,
    /// The lines carry a `Content-Length`...
    pub framed: bool,
    /// ...and this is its value, when valid.
    pub length: Option<u64>,
    /// The gateway's `X-Request-Id`, written after the lines (kept here rather than put in
    /// the response's empty map, whose first entry allocates its table).
    pub request_id: Option<Text>,
}

impl RawHeaders {
    /// Drops the lines whose name `dropped` picks and appends `added`, in one copy.
    pub fn edit<'a>(
        &mut self,
        dropped: impl Fn(&[u8]) -> bool,
        added: impl Iterator<Item = &'a (HeaderName, HeaderValue)> + Clone,
    ) {
        let more: usize = added
            .clone()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        let mut lines = BytesMut::with_capacity(self.lines.len() + more);
        // Every line ends in CRLF (`raw_answer` writes anew any that did not); a name may have
        // had spaces before its colon.
        for line in self.lines.split_inclusive(|b| *b == b'\n') {
            let name = line.split(|b| *b == b':').next().unwrap_or(line);
            if !dropped(name.trim_ascii_end()) {
                lines.extend_from_slice(line);
            }
        }
        for (name, value) in added {
            for part in [name.as_str().as_bytes(), b": ", value.as_bytes(), b"\r\n"] {
                lines.extend_from_slice(part);
            }
        }
        self.lines = lines.freeze();
    }
}

/// True for a header an answer's raw lines pass on as they are, one a route may edit there.
pub fn passed_as_is(name: &HeaderName) -> bool {
    role(name.as_str().as_bytes()) == Role::On
}

/// A header value the gateway passes on: one it received (checked when its head was parsed),
/// or text it made itself of characters always valid in a header (hex digits and dashes),
/// checked only if it goes into a map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    Received(HeaderValue),
    Made(Bytes),
}

impl Text {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Text::Received(value) => value.as_bytes(),
            Text::Made(text) => text,
        }
    }

    /// As a value for a map, marked sensitive: new in every request, it is kept out of an
    /// HTTP/2 encoder's table (it would fill it with values never seen again).
    pub fn to_value(&self) -> HeaderValue {
        let mut value = match self {
            Text::Received(value) => value.clone(),
            Text::Made(text) => {
                HeaderValue::from_maybe_shared(text.clone()).unwrap_or(HeaderValue::from_static(""))
            }
        };
        value.set_sensitive(true);
        value
    }
}

/// The final answer head at the start of `buf`, taken out of it, or `None` when more bytes
/// are needed. Interim answers (1xx other than 101) are skipped. `head_request`: the request
/// was `HEAD`, so the answer has no body whatever its headers say. `raw`: the answer's headers
/// come back as [`RawHeaders`] beside the response, whose map stays empty; for a client
/// connection that writes them itself and for answers nothing else reads headers of. (Beside
/// it, not in its extensions: a first extension costs three allocations.)
pub fn parse_answer(
    buf: &mut BytesMut,
    head_request: bool,
    raw: bool,
) -> io::Result<Option<AnswerHead>> {
    // The usual first call, before anything was read: no parser to set up.
    if buf.is_empty() {
        return Ok(None);
    }
    loop {
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut headers,
        ) {
            Ok(httparse::Status::Complete(length)) if length <= MAX_HEAD => length,
            Ok(httparse::Status::Complete(_)) => {
                return Err(invalid("the upstream's answer head is too large"))
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(invalid("the upstream's answer head is too large"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(invalid("the upstream's answer has too many headers"))
            }
            Err(error) => {
                return Err(invalid(&format!(
                    "the upstream's answer is malformed: {error}"
                )))
            }
        };
        let code = parsed.code.unwrap_or(0);
        let status = StatusCode::from_u16(code)
            .map_err(|_| invalid("the upstream's answer has an invalid status"))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            buf.advance(length);
            continue;
        }
        let version = match parsed.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        if raw {
            let (framing, keep_alive, kept) = raw_answer(
                &buf[..length],
                parsed.headers,
                status,
                head_request,
                version,
            )?;
            buf.advance(length);
            return Ok(Some(AnswerHead {
                response,
                framing,
                keep_alive,
                raw: Some(Box::new(kept)),
            }));
        }
        let mut spans = [Span::default(); MAX_HEADERS];
        let spans = spans_of(buf, parsed.headers, &mut spans);
        let head = buf.split_to(length).freeze();
        let (mut map, seen) = header_map(&head, spans)
            .map_err(|what| invalid(&format!("the upstream's answer has an {what}")))?;
        let (framing, keep_alive) = framing_of(&map, seen, status, head_request)?;
        if seen.transfer_encoding && seen.content_length {
            // The chunks (or the close) frame the body, not the length: a length passed on
            // with a body of another size would split the client's stream (RFC 9112
            // section 6.3).
            map.remove(header::CONTENT_LENGTH);
        }
        let keep_alive = keep_alive && connection_persists(&map, seen, version);
        *response.headers_mut() = map;
        return Ok(Some(AnswerHead {
            response,
            framing,
            keep_alive,
            raw: None,
        }));
    }
}

/// Room in a parsed head's map for the one header the gateway adds to nearly every one: an
/// answer's `X-Request-Id`. A request's forwarding headers are written as head lines on the
/// usual path, and `prepare_headers` reserves room itself when it inserts them. Kept small: a
/// map's entries take about 100 bytes each, and an allocation over 1 KiB takes the
/// allocator's slower path (a request of four headers with room for eight more crossed it).
const ROOM_FOR_ADDED: usize = 1;

/// Where a header's name and value lie in a head: offsets, so that the parse's borrow of the
/// buffer ends before the head is split off and shared by the values.
#[derive(Clone, Copy, Default)]
struct Span {
    name: (u16, u16),
    value: (u16, u16),
}

/// The spans of `headers`, parsed from `buf`, in `out` (on the caller's stack: no allocation
/// per head).
fn spans_of<'o>(
    buf: &[u8],
    headers: &[httparse::Header<'_>],
    out: &'o mut [Span; MAX_HEADERS],
) -> &'o [Span] {
    let base = buf.as_ptr() as usize;
    let at = |part: &[u8]| ((part.as_ptr() as usize - base) as u16, part.len() as u16);
    for (span, header) in out.iter_mut().zip(headers) {
        *span = Span {
            name: at(header.name.as_bytes()),
            value: at(header.value),
        };
    }
    &out[..headers.len()]
}

/// Which of the headers that frame a message or steer its connection a head carries, noted
/// while its map is built, so that a head without them (most) needs no lookup for each.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    transfer_encoding: bool,
    content_length: bool,
    connection: bool,
    upgrade: bool,
    expect: bool,
}

impl Seen {
    fn note(&mut self, name: &HeaderName) {
        if name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if name == header::CONTENT_LENGTH {
            self.content_length = true;
        } else if name == header::CONNECTION {
            self.connection = true;
        } else if name == header::UPGRADE {
            self.upgrade = true;
        } else if name == header::EXPECT {
            self.expect = true;
        }
    }
}

/// The headers of `head` at `spans`; values share `head`'s bytes. Names what was invalid.
fn header_map(head: &Bytes, spans: &[Span]) -> Result<(HeaderMap, Seen), &'static str> {
    // Room for what the gateway adds without growing the map, which would copy it.
    let mut map = HeaderMap::with_capacity(spans.len() + ROOM_FOR_ADDED);
    let mut seen = Seen::default();
    for span in spans {
        let (name, name_len) = (span.name.0 as usize, span.name.1 as usize);
        let (value, value_len) = (span.value.0 as usize, span.value.1 as usize);
        let name = HeaderName::from_bytes(&head[name..name + name_len])
            .map_err(|_| "invalid header name")?;
        let value = HeaderValue::from_maybe_shared(head.slice(value..value + value_len))
            .map_err(|_| "invalid header value")?;
        seen.note(&name);
        map.append(name, value);
    }
    Ok((map, seen))
}

/// True when no body follows an answer of `status` (`head_request`: it answers `HEAD`), whatever
/// its headers say (RFC 9112 section 6.3).
pub fn bodiless(status: StatusCode, head_request: bool) -> bool {
    head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// The body's framing, and false when the framing itself rules out reusing the connection.
fn framing_of(
    headers: &impl Fields,
    seen: Seen,
    status: StatusCode,
    head_request: bool,
) -> io::Result<(BodyFraming, bool)> {
    framing(
        seen,
        status,
        head_request,
        || ends_chunked(headers),
        || content_length(headers),
    )
}

/// As [`framing_of`], from what the head carries (`seen`), whether its last transfer coding is
/// `chunked` and its `Content-Length`: each asked only when the framing depends on it.
fn framing(
    seen: Seen,
    status: StatusCode,
    head_request: bool,
    chunked: impl FnOnce() -> bool,
    length: impl FnOnce() -> io::Result<Option<u64>>,
) -> io::Result<(BodyFraming, bool)> {
    if bodiless(status, head_request) {
        // A switch of protocols hands the connection over: it never carries a request again.
        return Ok((
            BodyFraming::Empty,
            status != StatusCode::SWITCHING_PROTOCOLS,
        ));
    }
    if seen.transfer_encoding {
        // Both framings named: the length is ignored, and the connection is not reused.
        let clean = !seen.content_length;
        return Ok(if chunked() {
            (BodyFraming::Chunked, clean)
        } else {
            (BodyFraming::UntilClose, false)
        });
    }
    let length = if seen.content_length { length()? } else { None };
    Ok(match length {
        Some(0) => (BodyFraming::Empty, true),
        Some(length) => (BodyFraming::Length(length), true),
        None => (BodyFraming::UntilClose, false),
    })
}

/// Whether the last transfer coding named is `chunked` (the body is then framed in chunks).
fn ends_chunked(headers: &impl Fields) -> bool {
    headers
        .values(&header::TRANSFER_ENCODING)
        .next_back()
        .and_then(|v| v.rsplit(|b| *b == b',').next())
        .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// The `Content-Length`, when there is one: every value (and every comma-separated element)
/// must be the same number.
pub fn content_length(headers: &impl Fields) -> io::Result<Option<u64>> {
    headers
        .values(&header::CONTENT_LENGTH)
        .try_fold(None, |length, value| {
            with_length(length, value).map_err(invalid)
        })
}

/// The length so far (`None` before the first `Content-Length` value) with `value`'s
/// elements; each must be a number, and the same one.
fn with_length(mut length: Option<u64>, value: &[u8]) -> Result<Option<u64>, &'static str> {
    for element in value.split(|b| *b == b',') {
        let element = element.trim_ascii();
        if element.is_empty() || element.len() > 19 || !element.iter().all(u8::is_ascii_digit) {
            return Err("invalid Content-Length");
        }
        let parsed = element
            .iter()
            .fold(0u64, |n, digit| n * 10 + u64::from(digit - b'0'));
        if length.is_some_and(|seen| seen != parsed) {
            return Err("conflicting Content-Length values");
        }
        length = Some(parsed);
    }
    Ok(length)
}

/// Whether the connection stays open after this message by its `Connection` header and
/// version: HTTP/1.1 unless `close`, HTTP/1.0 only with `keep-alive`.
fn connection_persists(headers: &impl Fields, seen: Seen, version: Version) -> bool {
    persists(seen, version, |token| {
        has_token(headers, header::CONNECTION, token)
    })
}

/// As [`connection_persists`], with `listed` saying whether the `Connection` header lists a
/// token (asked only when the head has one).
fn persists(seen: Seen, version: Version, listed: impl FnOnce(&str) -> bool) -> bool {
    if !seen.connection {
        version != Version::HTTP_10
    } else if version == Version::HTTP_10 {
        listed("keep-alive")
    } else {
        !listed("close")
    }
}

/// Whether an answer's own headers ask for its connection to close after it
/// (`Connection: close`).
pub fn asks_close(headers: &HeaderMap) -> bool {
    has_token(headers, header::CONNECTION, "close")
}

/// Whether a comma-separated header `name` lists `token` (case-insensitive).
fn has_token(headers: &impl Fields, name: HeaderName, token: &str) -> bool {
    headers.values(&name).any(|value| lists(value, token))
}

/// Whether the comma-separated `value` lists `token` (case-insensitive).
fn lists(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Header fields looked up by name: a parsed map, or a head's raw lines.
pub trait Fields {
    /// The values of every field named `name`, in order.
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl DoubleEndedIterator<Item = &'a [u8]>;
}

impl Fields for HeaderMap {
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl DoubleEndedIterator<Item = &'a [u8]> {
        self.get_all(name).into_iter().map(HeaderValue::as_bytes)
    }
}

/// What an answer header is to the gateway when the answer's lines stay raw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Passed on as it is.
    On,
    /// Passed on; it is the `Date`.
    Date,
    /// The `Content-Length`: passed on unless a transfer coding frames the body.
    Length,
    /// The `Transfer-Encoding` (the framing's own: never passed on).
    Coding,
    /// The `Connection` (hop-by-hop: never passed on).
    Connection,
    /// Never passed on: the other hop-by-hop headers but `Trailer`, `Upgrade`, and
    /// `X-Request-Id` (the gateway sets its own). The names `proxy::finish_response` drops
    /// from a map, plus the framing's own.
    Dropped,
}

/// The role of an answer header named `name` (any case).
fn role(name: &[u8]) -> Role {
    let is = |other: &[u8]| name.eq_ignore_ascii_case(other);
    match name.len() {
        2 if is(b"te") => Role::Dropped,
        4 if is(b"date") => Role::Date,
        7 if is(b"upgrade") => Role::Dropped,
        10 if is(b"connection") => Role::Connection,
        10 if is(b"keep-alive") => Role::Dropped,
        12 if is(b"x-request-id") => Role::Dropped,
        14 if is(b"content-length") => Role::Length,
        16 if is(b"proxy-connection") => Role::Dropped,
        17 if is(b"transfer-encoding") => Role::Coding,
        18 if is(b"proxy-authenticate") => Role::Dropped,
        19 if is(b"proxy-authorization") => Role::Dropped,
        _ => Role::On,
    }
}

/// An answer's framing, whether its connection may carry another request, and the header
/// lines passed on, from `headers` as httparse found them in `head` (the head's bytes): one
/// look at each name, and the lines passed on copied from `head` a run at a time (a line not
/// ending in CRLF is written anew, with one).
fn raw_answer(
    head: &[u8],
    headers: &[httparse::Header<'_>],
    status: StatusCode,
    head_request: bool,
    version: Version,
) -> io::Result<(BodyFraming, bool, RawHeaders)> {
    let mut roles = [Role::On; MAX_HEADERS];
    let mut length: Result<Option<u64>, &'static str> = Ok(None);
    let (mut lengths, mut coded, mut chunked) = (false, false, false);
    let (mut connection, mut close, mut keep_alive) = (false, false, false);
    let mut kept = RawHeaders::default();
    for (header, slot) in headers.iter().zip(roles.iter_mut()) {
        let value = header.value;
        *slot = role(header.name.as_bytes());
        match *slot {
            Role::Length => {
                lengths = true;
                length = length.and_then(|length| with_length(length, value));
            }
            Role::Coding => {
                // The last coding named decides.
                coded = true;
                chunked = value
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            Role::Connection => {
                connection = true;
                close |= lists(value, "close");
                keep_alive |= lists(value, "keep-alive");
            }
            Role::Date => kept.dated = true,
            Role::On | Role::Dropped => {}
        }
    }
    let seen = Seen {
        transfer_encoding: coded,
        content_length: lengths,
        connection,
        ..Seen::default()
    };
    let (framing, reusable) = framing(
        seen,
        status,
        head_request,
        || chunked,
        || length.map_err(invalid),
    )?;
    let persists = persists(seen, version, |token| match token {
        "close" => close,
        _ => keep_alive,
    });
    // The chunks (or the close) frame the body, not the length: a length passed on with a
    // body of another size would split the client's stream (RFC 9112 section 6.3).
    kept.framed = lengths && !coded;
    if kept.framed {
        kept.length = length.ok().flatten();
    }
    let base = head.as_ptr() as usize;
    let mut lines = BytesMut::with_capacity(head.len());
    // Lines passed on and not yet copied: a range of `head`.
    let mut run = 0..0;
    for (header, role) in headers.iter().zip(roles) {
        let passed = match role {
            Role::On | Role::Date => true,
            Role::Length => kept.framed,
            Role::Coding | Role::Connection | Role::Dropped => false,
        };
        if !passed {
            continue;
        }
        let (name, value) = (header.name.as_bytes(), header.value);
        // httparse's slices lie in `head`; the line ends at the first LF after the value.
        let start = name.as_ptr() as usize - base;
        let value_end = value.as_ptr() as usize - base + value.len();
        let end = head[value_end..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(head.len(), |at| value_end + at + 1);
        if head[..end].ends_with(b"\r\n") {
            if run.end != start {
                lines.extend_from_slice(&head[run]);
                run = start..start;
            }
            run.end = end;
        } else {
            lines.extend_from_slice(&head[run]);
            run = 0..0;
            for part in [name, b": ", value, b"\r\n"] {
                lines.extend_from_slice(part);
            }
        }
    }
    lines.extend_from_slice(&head[run]);
    kept.lines = lines.freeze();
    Ok((framing, reusable && persists, kept))
}

/// How a client's request body follows its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody {
    Empty,
    Length(u64),
    Chunked,
}

/// A client's request head, parsed.
#[derive(Debug)]
pub struct RequestHead {
    /// The request without its body.
    pub request: Request<()>,
    /// The head's bytes as they arrived (to hand the connection to another server).
    pub raw: Bytes,
    pub body: RequestBody,
    /// The client keeps the connection open after this exchange.
    pub keep_alive: bool,
    /// It asks to switch protocols (`Connection: upgrade` with `Upgrade`) or is `CONNECT`.
    pub upgrade: bool,
    /// It waits for `100 Continue` before sending its body.
    pub expect_continue: bool,
}

/// Why a request head was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum BadRequest {
    /// Over the size or header-count limit: 431.
    TooLarge,
    /// Not a valid HTTP/1.x request head: 400, saying why.
    Malformed(String),
}

/// The HTTP/2 connection preface a client with prior knowledge starts with.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The request head at the start of `buf`, taken out of it, or `None` when more bytes are
/// needed. `max_head`: the longest head accepted (at most [`MAX_HEAD`]). Empty lines before a request are skipped
/// (RFC 9112 section 2.2).
pub fn parse_request(
    buf: &mut BytesMut,
    max_head: usize,
) -> Result<Option<RequestHead>, BadRequest> {
    if buf.is_empty() {
        return Ok(None);
    }
    let max_head = max_head.min(MAX_HEAD);
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let length = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(length)) if length > max_head => {
            return Err(BadRequest::TooLarge)
        }
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buf.len() > max_head => return Err(BadRequest::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(BadRequest::TooLarge),
        Err(error) => return Err(BadRequest::Malformed(format!("malformed request: {error}"))),
    };
    let malformed = |what: &str| BadRequest::Malformed(what.to_string());
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| malformed("invalid method"))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let base = buf.as_ptr() as usize;
    let target = parsed.path.unwrap_or_default();
    let target = (target.as_ptr() as usize - base, target.len());
    let mut spans = [Span::default(); MAX_HEADERS];
    let spans = spans_of(buf, parsed.headers, &mut spans);
    let raw = buf.split_to(length).freeze();
    let uri = hyper::Uri::from_maybe_shared(raw.slice(target.0..target.0 + target.1))
        .map_err(|_| malformed("invalid request target"))?;
    let (headers, seen) = header_map(&raw, spans).map_err(malformed)?;
    let length = if seen.content_length {
        content_length(&headers)
    } else {
        Ok(None)
    };
    let body = match (seen.transfer_encoding, length) {
        (true, Ok(None)) => {
            if !ends_chunked(&headers) || version == Version::HTTP_10 {
                return Err(malformed(
                    "a request body's transfer coding must end in chunked",
                ));
            }
            RequestBody::Chunked
        }
        // Both framings at once is how requests are smuggled past proxies (RFC 9112 6.3).
        (true, _) => return Err(malformed("Transfer-Encoding and Content-Length together")),
        (false, Err(_)) => return Err(malformed("invalid Content-Length")),
        (false, Ok(None | Some(0))) => RequestBody::Empty,
        (false, Ok(Some(length))) => RequestBody::Length(length),
    };
    let keep_alive = connection_persists(&headers, seen, version);
    let upgrade = method == Method::CONNECT
        || (seen.connection && seen.upgrade && has_token(&headers, header::CONNECTION, "upgrade"));
    let expect_continue = seen.expect
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(RequestHead {
        request,
        raw,
        body,
        keep_alive,
        upgrade,
        expect_continue,
    }))
}

/// Writes a `content-length` header line.
fn put_content_length(length: u64, out: &mut BytesMut) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes an answer's head into `out`: the status line, `raw`'s lines, `headers`, a `Date`
/// when they have none (its value written by `date`, called only then: the clock is read only
/// for an answer without one), `Connection: close` when `close`, and the framing of a body of `length` bytes unless
/// the answer has no body (see [`bodiless`]; `head_request`: it answers `HEAD`) or `headers`
/// frame it already. A body of unknown length (`None`) goes chunked, or until the close when
/// `close`. Returns whether the body follows chunked.
#[allow(clippy::too_many_arguments)] // each is one fact about the answer; a struct would only name them again
pub fn encode_answer_head(
    status: StatusCode,
    headers: &HeaderMap,
    raw: Option<&RawHeaders>,
    length: Option<u64>,
    head_request: bool,
    close: bool,
    date: impl FnOnce(&mut BytesMut),
    out: &mut BytesMut,
) -> bool {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // Whether the headers carry a date and a length, noted on the way (a lookup each costs
    // more than the comparisons).
    let (mut dated, mut framed) = (false, false);
    if let Some(raw) = raw {
        out.extend_from_slice(&raw.lines);
        if let Some(id) = &raw.request_id {
            out.extend_from_slice(b"x-request-id: ");
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        (dated, framed) = (raw.dated, raw.framed);
    }
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING || (close && name == header::CONNECTION) {
            continue;
        }
        dated |= name == header::DATE;
        framed |= name == header::CONTENT_LENGTH;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        date(out);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    // No body follows an answer to HEAD, a 1xx, a 204 or a 304, and no framing is added to
    // them (a HEAD or 304 answer keeps the length its headers give). An answer to HEAD that
    // the gateway made itself carries the body a GET would get: its length is told, as GET's
    // answer would tell it (a proxied answer to HEAD has an empty body and tells nothing).
    let mut chunked = false;
    if !framed {
        match length {
            Some(length) if head_request && length > 0 && !bodiless(status, false) => {
                put_content_length(length, out)
            }
            _ if bodiless(status, head_request) => {}
            Some(length) => put_content_length(length, out),
            // A connection that closes after the answer delimits its body itself.
            None if close => {}
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                chunked = true;
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    chunked
}

/// Decodes a chunked body as its bytes arrive.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Chunked {
    state: ChunkState,
    /// Bytes of trailer section seen so far.
    trailers: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, with this many bytes to go.
    Data(u64),
    /// Expecting the CRLF that ends a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    /// The body has ended.
    Done,
}

/// What [`Chunked::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Some of the body.
    Data(Bytes),
    /// The buffer holds no whole next step: read more.
    NeedMore,
    /// The body ended (its last chunk and trailers were taken out of the buffer).
    End,
}

impl Chunked {
    /// The next piece of the body from `buf`, taking what it decodes out of `buf`.
    pub fn next(&mut self, buf: &mut BytesMut) -> io::Result<Piece> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(Piece::End),
                ChunkState::Size => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE, "chunk-size line")? else {
                        return Ok(Piece::NeedMore);
                    };
                    let size = parse_chunk_size(&line)?;
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Piece::NeedMore);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Piece::Data(data));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Piece::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(invalid("a chunk's data does not end with CRLF"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE, "trailer line")? else {
                        return Ok(Piece::NeedMore);
                    };
                    self.trailers += line.len() + 2;
                    if self.trailers > MAX_TRAILERS {
                        return Err(invalid("the chunked body's trailers are too large"));
                    }
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }
}

/// The line at the start of `buf` without its CRLF, taken out of `buf`; `None` when the CRLF
/// has not arrived yet.
fn take_line(buf: &mut BytesMut, max: usize, what: &str) -> io::Result<Option<Bytes>> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() > max {
            return Err(invalid(&format!("a {what} is too long")));
        }
        return Ok(None);
    };
    if end > max {
        return Err(invalid(&format!("a {what} is too long")));
    }
    let line = buf.split_to(end).freeze();
    buf.advance(2);
    Ok(Some(line))
}

/// The size in a chunk-size line (hex digits, then optional extensions after `;`).
fn parse_chunk_size(line: &[u8]) -> io::Result<u64> {
    let digits = line
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(invalid("invalid chunk size"));
    }
    let mut size = 0u64;
    for digit in digits {
        let value = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            b'A'..=b'F' => digit - b'A' + 10,
            _ => return Err(invalid("invalid chunk size")),
        };
        size = size * 16 + u64::from(value);
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(bytes: &[u8], head_request: bool) -> io::Result<Option<AnswerHead>> {
        parse_answer(&mut BytesMut::from(bytes), head_request, false)
    }

    #[test]
    fn a_request_head_keeps_its_headers_and_frames_its_body() {
        let mut out = BytesMut::new();
        let request = Request::get("/a/b?c=d")
            .header("host", "svc")
            .header("x-two", "1")
            .header("x-two", "2")
            .body(())
            .unwrap();
        assert_eq!(
            encode_request_head(&request, b"", true, Some(0), &mut out),
            RequestFraming::Empty
        );
        assert_eq!(
            &out[..],
            b"GET /a/b?c=d HTTP/1.1\r\nhost: svc\r\nx-two: 1\r\nx-two: 2\r\n\r\n"
        );

        out.clear();
        let request = Request::post("/up")
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap();
        assert_eq!(
            encode_request_head(&request, b"", false, None, &mut out),
            RequestFraming::Chunked
        );
        assert_eq!(
            &out[..],
            b"POST /up HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );

        out.clear();
        let request = Request::put("/p").body(()).unwrap();
        assert_eq!(
            encode_request_head(&request, b"x-added: 1\r\n", false, Some(5), &mut out),
            RequestFraming::Length(5)
        );
        assert_eq!(
            &out[..],
            b"PUT /p HTTP/1.1\r\nx-added: 1\r\ncontent-length: 5\r\n\r\n"
        );

        out.clear();
        let request = Request::post("/e").body(()).unwrap();
        encode_request_head(&request, b"", true, Some(0), &mut out);
        assert_eq!(&out[..], b"POST /e HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    }

    #[test]
    fn an_answer_head_is_parsed_and_taken_out_of_the_buffer() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhelloNEXT"[..],
        );
        let head = parse_answer(&mut buf, false, false).unwrap().unwrap();
        assert_eq!(head.response.status(), StatusCode::OK);
        assert_eq!(head.framing, BodyFraming::Length(5));
        assert!(head.keep_alive);
        let values: Vec<_> = head.response.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(&buf[..], b"helloNEXT");
    }

    #[test]
    fn a_raw_answer_keeps_the_lines_passed_on_as_they_came() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: D\r\nContent-Length: 5\r\n\
               Connection: keep-alive\r\nX-Request-Id: theirs\r\nTrailer: x\r\n\r\nhello"[..],
        );
        let head = parse_answer(&mut buf, false, true).unwrap().unwrap();
        assert_eq!(head.framing, BodyFraming::Length(5));
        assert!(head.keep_alive);
        assert!(head.response.headers().is_empty());
        let raw = head.raw.as_deref().unwrap();
        assert_eq!(
            &raw.lines[..],
            b"Server: nginx\r\nDate: D\r\nContent-Length: 5\r\nTrailer: x\r\n"
        );
        assert!(raw.dated && raw.framed);
        assert_eq!(raw.length, Some(5));
        assert_eq!(&buf[..], b"hello");

        // Chunks frame the body: the length beside them is not passed on.
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        );
        let head = parse_answer(&mut buf, false, true).unwrap().unwrap();
        assert_eq!(head.framing, BodyFraming::Chunked);
        assert!(!head.keep_alive, "both framings at once: not reused");
        let raw = head.raw.as_deref().unwrap();
        assert_eq!(
            (&raw.lines[..], raw.framed, raw.length),
            (&b""[..], false, None)
        );

        let mut out = BytesMut::new();
        let raw = RawHeaders {
            request_id: Some(Text::Made(Bytes::from_static(b"r1"))),
            ..raw.clone()
        };
        let chunked = encode_answer_head(
            StatusCode::OK,
            &HeaderMap::new(),
            Some(&raw),
            None,
            false,
            false,
            |out: &mut BytesMut| out.extend_from_slice(b"D"),
            &mut out,
        );
        assert!(chunked);
        assert_eq!(
            &out[..],
            b"HTTP/1.1 200 OK\r\nx-request-id: r1\r\ndate: D\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn a_partial_head_asks_for_more_and_interim_answers_are_skipped() {
        assert!(answer(b"HTTP/1.1 200 OK\r\nContent-Le", false)
            .unwrap()
            .is_none());
        let head = answer(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.response.status(), StatusCode::NO_CONTENT);
        assert_eq!(head.framing, BodyFraming::Empty);
    }

    #[test]
    fn the_body_framing_follows_rfc_9112() {
        let framing = |bytes: &[u8], head: bool| {
            let head = answer(bytes, head).unwrap().unwrap();
            (head.framing, head.keep_alive)
        };
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true),
            (BodyFraming::Empty, true)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false
            ),
            (BodyFraming::Empty, true)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                false
            ),
            (BodyFraming::Chunked, true)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                false
            ),
            (BodyFraming::Chunked, false)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\n\r\n", false),
            (BodyFraming::UntilClose, false)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: Close\r\n\r\n",
                false
            ),
            (BodyFraming::Length(2), false)
        );
        assert_eq!(
            framing(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", false),
            (BodyFraming::Length(2), false)
        );
        assert_eq!(
            framing(
                b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n",
                false
            ),
            (BodyFraming::Length(2), true)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
                false
            ),
            (BodyFraming::Empty, false)
        );
    }

    #[test]
    fn a_length_beside_a_transfer_coding_is_dropped() {
        let head = answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.framing, BodyFraming::Chunked);
        assert!(!head.response.headers().contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn bad_answers_are_errors() {
        for bytes in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
        ] {
            assert!(
                answer(bytes, false).is_err(),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let huge = [b'a'; MAX_HEAD + 1];
        let mut head = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        head.extend_from_slice(&huge);
        assert!(answer(&head, false).is_err());
    }

    #[test]
    fn a_chunked_body_decodes_however_its_bytes_are_split() {
        let wire = b"5;ext=1\r\nhello\r\nB\r\n, chunked!!\r\n0\r\nx-trailer: 1\r\n\r\nREST";
        for split in 0..wire.len() {
            let mut decoder = Chunked::default();
            let mut buf = BytesMut::from(&wire[..split]);
            let mut body = Vec::new();
            let mut fed = false;
            loop {
                match decoder.next(&mut buf).unwrap() {
                    Piece::Data(data) => body.extend_from_slice(&data),
                    Piece::NeedMore => {
                        assert!(!fed, "asked for more after everything arrived");
                        buf.extend_from_slice(&wire[split..]);
                        fed = true;
                    }
                    Piece::End => break,
                }
            }
            if !fed {
                buf.extend_from_slice(&wire[split..]);
            }
            assert_eq!(body, b"hello, chunked!!");
            assert_eq!(&buf[..], b"REST");
        }
    }

    #[test]
    fn bad_chunks_are_errors() {
        for wire in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"ffffffffffffffffff\r\n",
            b"\r\n",
        ] {
            let mut decoder = Chunked::default();
            let mut buf = BytesMut::from(wire);
            let result = loop {
                match decoder.next(&mut buf) {
                    Ok(Piece::Data(_)) => continue,
                    other => break other,
                }
            };
            assert!(result.is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
        let mut long = BytesMut::from(&[b'1'; MAX_CHUNK_LINE + 10][..]);
        assert!(Chunked::default().next(&mut long).is_err());
    }

    #[test]
    fn a_request_head_is_parsed_with_its_framing_and_intent() {
        let mut buf = BytesMut::from(
            &b"\r\nPOST /up?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabcGET"[..],
        );
        let head = parse_request(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(head.request.method(), Method::POST);
        assert_eq!(head.request.uri(), "/up?x=1");
        assert_eq!(head.request.headers()["host"], "a");
        assert_eq!(head.body, RequestBody::Length(3));
        assert!(head.keep_alive && head.expect_continue && !head.upgrade);
        assert!(head.raw.ends_with(b"\r\n\r\n"));
        assert_eq!(&buf[..], b"abcGET");
        assert!(parse_request(&mut buf.split_off(3), 1024)
            .unwrap()
            .is_none());

        let mut buf = BytesMut::from(
            &b"GET /ws HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"[..],
        );
        let head = parse_request(&mut buf, 1024).unwrap().unwrap();
        assert!(head.upgrade && !head.keep_alive);
        assert_eq!(head.request.version(), Version::HTTP_10);

        let mut buf = BytesMut::from(&b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..]);
        assert_eq!(
            parse_request(&mut buf, 1024).unwrap().unwrap().body,
            RequestBody::Chunked
        );
    }

    #[test]
    fn bad_request_heads_are_refused_with_the_right_kind() {
        let refuse = |bytes: &[u8], max| parse_request(&mut BytesMut::from(bytes), max).err();
        assert_eq!(
            refuse(b"GET / HTTP/1.1\r\nX: aaaaaaaaaaaaaaaaaaaa", 16),
            Some(BadRequest::TooLarge)
        );
        assert_eq!(
            refuse(b"GET / HTTP/1.1\r\nX: a\r\n\r\n", 16),
            Some(BadRequest::TooLarge)
        );
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("h{i}: v\r\n"))
            .collect();
        assert_eq!(
            refuse(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes(), 1 << 20),
            Some(BadRequest::TooLarge)
        );
        for bad in [
            &b"NOT HTTP AT ALL\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
        ] {
            assert!(
                matches!(refuse(bad, 1024), Some(BadRequest::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn an_answer_head_frames_its_body_once() {
        let head = |status: u16, headers: &[(&str, &str)], length, bodiless, close| {
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                map.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            let mut out = BytesMut::new();
            let chunked = encode_answer_head(
                StatusCode::from_u16(status).unwrap(),
                &map,
                None,
                length,
                bodiless,
                close,
                |out: &mut BytesMut| out.extend_from_slice(b"D"),
                &mut out,
            );
            (String::from_utf8(out.to_vec()).unwrap(), chunked)
        };
        assert_eq!(
            head(200, &[("x", "1")], Some(12), false, false),
            (
                "HTTP/1.1 200 OK\r\nx: 1\r\ndate: D\r\ncontent-length: 12\r\n\r\n".into(),
                false
            )
        );
        assert_eq!(
            head(
                200,
                &[("content-length", "5"), ("date", "E")],
                Some(5),
                false,
                false
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: E\r\n\r\n".into(),
                false
            )
        );
        assert_eq!(
            head(200, &[("transfer-encoding", "gzip")], None, false, false),
            (
                "HTTP/1.1 200 OK\r\ndate: D\r\ntransfer-encoding: chunked\r\n\r\n".into(),
                true
            )
        );
        assert_eq!(
            head(200, &[("connection", "keep-alive")], None, false, true),
            (
                "HTTP/1.1 200 OK\r\ndate: D\r\nconnection: close\r\n\r\n".into(),
                false
            )
        );
        assert_eq!(
            head(204, &[], Some(0), false, false),
            ("HTTP/1.1 204 No Content\r\ndate: D\r\n\r\n".into(), false)
        );
        assert_eq!(
            head(200, &[], Some(0), true, false),
            ("HTTP/1.1 200 OK\r\ndate: D\r\n\r\n".into(), false)
        );
        let close = |value: &str| {
            let mut map = HeaderMap::new();
            map.insert(header::CONNECTION, HeaderValue::from_str(value).unwrap());
            asks_close(&map)
        };
        assert!(close("close") && close("Keep-Alive, CLOSE"));
        assert!(!close("keep-alive") && !asks_close(&HeaderMap::new()));
        // An answer to HEAD made by the gateway tells the length GET's body would have; a
        // HEAD answer that states its own length, or a 304, is left as it is.
        assert_eq!(
            head(200, &[], Some(7), true, false),
            (
                "HTTP/1.1 200 OK\r\ndate: D\r\ncontent-length: 7\r\n\r\n".into(),
                false
            )
        );
        assert_eq!(
            head(200, &[("content-length", "9")], Some(7), true, false),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 9\r\ndate: D\r\n\r\n".into(),
                false
            )
        );
        assert_eq!(
            head(304, &[], Some(7), true, false),
            ("HTTP/1.1 304 Not Modified\r\ndate: D\r\n\r\n".into(), false)
        );
    }

    /// An answer's lines as the raw path passes them on, read back: (lower-case name, value),
    /// by name (a map keeps the order of each name's values, not of the names).
    fn lines_of(raw: &RawHeaders) -> Vec<(String, Vec<u8>)> {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
        buf.extend_from_slice(&raw.lines);
        buf.extend_from_slice(b"\r\n");
        let head = parse_answer(&mut buf, true, false).unwrap().unwrap();
        by_name(head.response.headers().iter())
    }

    fn by_name<'a>(
        headers: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    ) -> Vec<(String, Vec<u8>)> {
        let mut lines: Vec<_> = headers
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
            .collect();
        lines.sort_by(|a, b| a.0.cmp(&b.0));
        lines
    }

    proptest::proptest! {
        /// The raw path reads an answer as the map path does: the same framing, the same
        /// verdict on the connection, and the lines it passes on are the map's headers but
        /// those the gateway never passes on (in order), however names are spelled, values
        /// spaced and lines ended.
        #[test]
        fn a_raw_answer_is_read_as_its_map_is(
            status in proptest::sample::select(vec![200u16, 204, 304, 101, 404, 502]),
            http10 in proptest::bool::ANY,
            head_request in proptest::bool::ANY,
            lines in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "Server", "date", "Content-Length", "content-length",
                        "Transfer-Encoding", "Connection", "Keep-Alive", "X-Request-Id",
                        "Upgrade", "TE", "Trailer", "X-Custom", "Proxy-Connection", "Content-Type",
                    ]),
                    proptest::bool::ANY,
                    proptest::sample::select(vec![
                        "5", "0", "12", "5, 5", "5, 6", "x", "chunked", "gzip, chunked",
                        "chunked, gzip", "close", "keep-alive", "Keep-Alive, CLOSE", "upgrade",
                        "nginx", "", "text/plain; charset=utf-8",
                    ]),
                    proptest::sample::select(vec![": ", ":", ":  ", ":\t"]),
                    proptest::sample::select(vec!["\r\n", "\n", " \r\n", "\t\n"]),
                ),
                0..10,
            ),
        ) {
            let mut bytes = format!("HTTP/1.{} {status} X\r\n", u8::from(!http10)).into_bytes();
            for (name, upper, value, colon, end) in &lines {
                let name = if *upper { name.to_uppercase() } else { name.to_string() };
                bytes.extend_from_slice(format!("{name}{colon}{value}{end}").as_bytes());
            }
            bytes.extend_from_slice(b"\r\nbody");
            let mapped = parse_answer(&mut BytesMut::from(&bytes[..]), head_request, false);
            let mut buf = BytesMut::from(&bytes[..]);
            let raw = parse_answer(&mut buf, head_request, true);
            let (mapped, raw) = match (mapped, raw) {
                (Ok(Some(mapped)), Ok(Some(raw))) => (mapped, raw),
                (Err(_), Err(_)) => return Ok(()),
                (mapped, raw) => panic!("the paths differ: {mapped:?} against {raw:?}"),
            };
            proptest::prop_assert_eq!(&buf[..], b"body");
            proptest::prop_assert_eq!(raw.framing, mapped.framing);
            proptest::prop_assert_eq!(raw.keep_alive, mapped.keep_alive);
            proptest::prop_assert_eq!(raw.response.status(), mapped.response.status());
            proptest::prop_assert_eq!(raw.response.version(), mapped.response.version());
            proptest::prop_assert!(raw.response.headers().is_empty());
            let kept = raw.raw.as_deref().unwrap();
            let expected = by_name(mapped.response.headers().iter().filter(|(name, _)| {
                !matches!(
                    role(name.as_str().as_bytes()),
                    Role::Coding | Role::Connection | Role::Dropped
                )
            }));
            proptest::prop_assert_eq!(lines_of(kept), expected);
            let map = mapped.response.headers();
            proptest::prop_assert_eq!(kept.dated, map.contains_key(header::DATE));
            proptest::prop_assert_eq!(kept.framed, map.contains_key(header::CONTENT_LENGTH));
            let length = content_length(map).ok().flatten().filter(|_| kept.framed);
            proptest::prop_assert_eq!(kept.length, length);
            proptest::prop_assert!(kept.lines.ends_with(b"\r\n") || kept.lines.is_empty());
        }
    }
}
