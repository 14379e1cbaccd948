//! DNS interface of the service registry, in the style of Consul's.
//!
//! The server is authoritative for one domain (`DOMAIN`, e.g. `strata.`) and answers:
//!
//! - `NAME.service.DOMAIN.` and `TAG.NAME.service.DOMAIN.`: `A`, `AAAA`, `SRV` and `ANY` from the
//!   healthy endpoints that [`Lookup`] returns. Names are case-insensitive; `NAME` and `TAG` reach
//!   the lookup lowercased.
//! - `HEX.addr.DOMAIN.`: the SRV targets. 8 hex digits name an IPv4 address (`7f000001` is
//!   127.0.0.1) and answer `A`; 32 hex digits name an IPv6 address and answer `AAAA`.
//! - `DOMAIN.` itself: its `SOA`.
//!
//! Choices worth knowing:
//!
//! - `A`/`AAAA`/`ANY` answer the endpoints whose address is an IP literal (`ANY` means `A` plus
//!   `AAAA`). Hostname endpoints are left out, except when a service has no IP endpoint at all:
//!   then the answer is one `CNAME` to the first hostname (a name can hold only one `CNAME`; the
//!   caller shuffles, so this still spreads load). `SRV` answers every endpoint.
//! - A name with no records of the asked type (an `AAAA` query for an IPv4-only service) gets
//!   NOERROR with no answer and the SOA in the authority section (NODATA), not NXDOMAIN:
//!   resolvers such as musl's treat an NXDOMAIN for `AAAA` as "the name does not exist".
//! - A UDP response that does not fit loses whole records from the end (additional section
//!   first, then answers) and gets the TC bit, even when only additional records were dropped.
//! - Requests that are responses (QR=1), and bytes too short for a header, get no reply.
//! - Every record has TTL 0. The answer order is the lookup's order; duplicate addresses are
//!   answered once.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_proto::ProtoError;
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};

/// Largest UDP request we read and largest UDP response we send (the EDNS cap).
const UDP_MAX: usize = 4096;
/// UDP payload limit for clients without EDNS (RFC 1035).
const UDP_MIN: usize = 512;
/// A TCP message is framed by a 16-bit length.
const TCP_MAX: usize = 65535;
/// A TCP connection that sends no complete query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// At most this many TCP connections are served at once; more wait in the listen backlog.
const TCP_MAX_CONNECTIONS: usize = 256;
/// Pause after a socket error, so a persistent error does not spin the loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Values of the `result` label of `strata_dns_queries_total`.
const RESULTS: [&str; 4] = ["ok", "nxdomain", "error", "truncated"];

/// One healthy endpoint to answer with.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// Instance id.
    pub id: String,
    /// An IPv4/IPv6 literal, or a hostname.
    pub address: String,
    /// Port, answered in SRV records.
    pub port: u16,
    /// SRV weight, already clamped to 1..=65535 by the caller.
    pub weight: u16,
}

/// What the DNS server asks the registry. Implemented by the registry's in-memory view.
pub trait Lookup: Send + Sync + 'static {
    /// Healthy endpoints of `service` (lowercase DNS label) in the default namespace,
    /// filtered to those carrying `tag` when given. Empty when the service is unknown.
    ///
    /// `tag` is lowercased too (DNS names are case-insensitive), so compare tags ignoring case.
    fn healthy(&self, service: &str, tag: Option<&str>) -> Vec<Endpoint>;
}

/// Counters the server bumps; the caller registers them in its prometheus Registry.
#[derive(Clone)]
pub struct DnsMetrics {
    /// `strata_dns_queries_total{result="ok"|"nxdomain"|"error"|"truncated"}`. Requests dropped
    /// without a reply count as `error`.
    pub queries: IntCounterVec,
}

impl DnsMetrics {
    /// Creates the counters and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let queries = IntCounterVec::new(
            Opts::new(
                "strata_dns_queries_total",
                "DNS queries answered by the registry, by result.",
            ),
            &["result"],
        )?;
        registry.register(Box::new(queries.clone()))?;
        for result in RESULTS {
            queries.with_label_values(&[result]);
        }
        Ok(Self { queries })
    }
}

/// Serves DNS on the given bound UDP socket and TCP listener until `shutdown` is cancelled.
/// `domain` is e.g. "strata" (no trailing dot needed; accept either).
///
/// Returns at once, after logging an error, if `domain` is not a valid DNS name. On shutdown it
/// stops accepting, closes open TCP connections after their current query and returns when
/// they are gone.
///
/// Cancel safety: dropping the future drops the sockets and aborts in-flight TCP connections;
/// prefer cancelling `shutdown`.
pub async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    domain: String,
    lookup: Arc<dyn Lookup>,
    metrics: DnsMetrics,
    shutdown: CancellationToken,
) {
    let domain = match parse_domain(&domain) {
        Ok(name) => name,
        Err(err) => {
            error!(%domain, error = %err, "invalid DNS domain, not serving DNS");
            return;
        }
    };
    let server = Arc::new(Server {
        domain,
        lookup,
        metrics,
    });
    tokio::join!(
        serve_udp(udp, Arc::clone(&server), shutdown.clone()),
        serve_tcp(tcp, server, shutdown),
    );
}

/// Pure function used by serve, for unit tests: answers one request message (wire bytes) and
/// returns the wire response, or `None` when the request gets no reply.
///
/// `max_size` is the transport's payload limit: 512 for UDP, which an EDNS request raises to
/// the client's advertised size (capped at 4096); 65535 for TCP. A response over the limit is
/// truncated (TC bit).
pub fn answer(
    request: &[u8],
    domain: &Name,
    lookup: &dyn Lookup,
    max_size: usize,
) -> Option<Vec<u8>> {
    answer_with_result(request, domain, lookup, max_size).map(|(bytes, _)| bytes)
}

/// [`answer`], plus the `result` label for the metrics.
fn answer_with_result(
    request: &[u8],
    domain: &Name,
    lookup: &dyn Lookup,
    max_size: usize,
) -> Option<(Vec<u8>, &'static str)> {
    let header = Header::read(&mut BinDecoder::new(request)).ok()?;
    if header.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut metadata = Metadata::response_from_request(&header.metadata);
    if header.metadata.op_code != OpCode::Query {
        metadata.response_code = ResponseCode::NotImp;
        return header_only(metadata);
    }
    let request = match Message::from_vec(request) {
        Ok(message) => message,
        Err(err) => {
            debug!(error = %err, "malformed DNS request");
            metadata.response_code = ResponseCode::FormErr;
            return header_only(metadata);
        }
    };
    let response = respond(&request, domain, lookup);
    let advertised = request.edns.as_ref().map_or(0, |edns| edns.max_payload());
    let limit = max_size.max(usize::from(advertised).min(UDP_MAX));
    let (bytes, truncated) = match encode_fitting(response, limit) {
        Ok(encoded) => encoded,
        Err(err) => {
            warn!(error = %err, "cannot encode DNS response");
            metadata.response_code = ResponseCode::ServFail;
            return header_only(metadata);
        }
    };
    let rcode = bytes.get(3).map_or(0, |byte| byte & 0x0f);
    let result = match (truncated, rcode) {
        (true, _) => "truncated",
        (false, 0) if request.edns.as_ref().is_none_or(|e| e.version() == 0) => "ok",
        (false, 3) => "nxdomain",
        _ => "error",
    };
    if let Some(query) = request.queries.first() {
        debug!(name = %query.name(), qtype = %query.query_type(), result, "DNS query");
    }
    Some((bytes, result))
}

/// Builds the full (untruncated) response to a decoded query.
fn respond(request: &Message, domain: &Name, lookup: &dyn Lookup) -> Message {
    let mut response = Message::response(request.metadata.id, OpCode::Query);
    response.metadata = Metadata::response_from_request(&request.metadata);
    response.queries = request.queries.clone();
    if let Some(edns) = &request.edns {
        let mut ours = Edns::new();
        ours.set_max_payload(UDP_MAX as u16);
        response.edns = Some(ours);
        if edns.version() > 0 {
            response.metadata.response_code = ResponseCode::BADVERS;
            return response;
        }
    }
    let [query] = request.queries.as_slice() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response;
    };
    let in_class = matches!(query.query_class(), DNSClass::IN | DNSClass::ANY);
    if !in_class || !domain.zone_of(query.name()) {
        response.metadata.response_code = ResponseCode::Refused;
        return response;
    }
    response.metadata.authoritative = true;
    let resolved = resolve(query.name(), query.query_type(), domain, lookup);
    let no_answer = !matches!(&resolved, Ok(Some(records)) if !records.answers.is_empty());
    match resolved {
        Ok(Some(records)) => {
            response.answers = records.answers;
            response.additionals = records.additionals;
        }
        Ok(None) => response.metadata.response_code = ResponseCode::NXDomain,
        Err(err) => {
            warn!(name = %query.name(), error = %err, "cannot build DNS answer");
            response.metadata.response_code = ResponseCode::ServFail;
            return response;
        }
    }
    if no_answer {
        match soa(domain) {
            Ok(record) => response.authorities.push(record),
            Err(err) => warn!(error = %err, "cannot build SOA record"),
        }
    }
    response
}

/// Records of a name that exists; both empty means NODATA.
#[derive(Default)]
struct Records {
    answers: Vec<Record>,
    additionals: Vec<Record>,
}

/// Resolves a name inside `domain`. `Ok(None)` means NXDOMAIN.
fn resolve(
    qname: &Name,
    qtype: RecordType,
    domain: &Name,
    lookup: &dyn Lookup,
) -> Result<Option<Records>, ProtoError> {
    let lower = qname.to_lowercase();
    let labels: Vec<&[u8]> = lower.iter().collect();
    let relative = labels.len().saturating_sub(domain.iter().count());
    let mut records = Records::default();
    match labels.get(..relative).unwrap_or(&[]) {
        [] => {
            if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                records.answers.push(soa(domain)?);
            }
        }
        // Empty non-terminals exist (NODATA): NXDOMAIN would deny every name below them to
        // resolvers that minimise query names (RFC 8020, RFC 9156).
        [b"service"] | [b"addr"] => {}
        [hex, b"addr"] => {
            let Some(ip) = parse_hex(hex) else {
                return Ok(None);
            };
            if wants(qtype, ip) {
                records.answers.push(address_record(qname.clone(), ip));
            }
        }
        [name, b"service"] => return service(qname, qtype, domain, lookup, name, None),
        [tag, name, b"service"] => return service(qname, qtype, domain, lookup, name, Some(tag)),
        _ => return Ok(None),
    }
    Ok(Some(records))
}

/// Where an endpoint's address points.
enum Target {
    Ip(IpAddr),
    Host(Name),
}

/// Answers `[TAG.]NAME.service.DOMAIN.`; see the module doc for the rules.
fn service(
    qname: &Name,
    qtype: RecordType,
    domain: &Name,
    lookup: &dyn Lookup,
    name: &[u8],
    tag: Option<&[u8]>,
) -> Result<Option<Records>, ProtoError> {
    let (Ok(name), Ok(tag)) = (
        std::str::from_utf8(name),
        tag.map(std::str::from_utf8).transpose(),
    ) else {
        return Ok(None);
    };
    let endpoints = lookup.healthy(name, tag);
    if endpoints.is_empty() {
        return Ok(None);
    }
    let targets: Vec<(Target, &Endpoint)> = endpoints
        .iter()
        .filter_map(|endpoint| Some((target(&endpoint.address)?, endpoint)))
        .collect();
    let has_ip = targets.iter().any(|(t, _)| matches!(t, Target::Ip(_)));
    let mut records = Records::default();
    let mut seen = HashSet::new();
    match qtype {
        RecordType::SRV => {
            for (target, endpoint) in &targets {
                let target = match target {
                    Target::Ip(ip) => {
                        let name = addr_name(*ip, domain)?;
                        if seen.insert(*ip) {
                            records.additionals.push(address_record(name.clone(), *ip));
                        }
                        name
                    }
                    Target::Host(host) => host.clone(),
                };
                let srv = SRV::new(1, endpoint.weight, endpoint.port, target);
                records.answers.push(record(qname.clone(), RData::SRV(srv)));
            }
        }
        RecordType::A | RecordType::AAAA | RecordType::ANY | RecordType::CNAME if !has_ip => {
            if let Some((Target::Host(host), _)) = targets.first() {
                let cname = RData::CNAME(CNAME(host.clone()));
                records.answers.push(record(qname.clone(), cname));
            }
        }
        RecordType::A | RecordType::AAAA | RecordType::ANY => {
            for (target, _) in &targets {
                if let Target::Ip(ip) = target {
                    if wants(qtype, *ip) && seen.insert(*ip) {
                        records.answers.push(address_record(qname.clone(), *ip));
                    }
                }
            }
        }
        _ => {}
    }
    Ok(Some(records))
}

/// Classifies an endpoint address; `None` for one that is neither an IP nor a valid name.
fn target(address: &str) -> Option<Target> {
    let unbracketed = address.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Some(Target::Ip(ip));
    }
    let mut name = Name::from_ascii(address).ok()?;
    if name.is_root() {
        return None;
    }
    name.set_fqdn(true);
    Some(Target::Host(name))
}

/// Whether an address record for `ip` answers a query of type `qtype`.
fn wants(qtype: RecordType, ip: IpAddr) -> bool {
    matches!(
        (qtype, ip),
        (RecordType::ANY, _) | (RecordType::A, IpAddr::V4(_)) | (RecordType::AAAA, IpAddr::V6(_))
    )
}

/// `HEX.addr.DOMAIN.` for an address: 8 hex digits for IPv4, 32 for IPv6.
fn addr_name(ip: IpAddr, domain: &Name) -> Result<Name, ProtoError> {
    let hex = match ip {
        IpAddr::V4(v4) => format!("{:08x}", u32::from(v4)),
        IpAddr::V6(v6) => format!("{:032x}", u128::from(v6)),
    };
    domain.prepend_label("addr")?.prepend_label(hex.as_str())
}

/// Inverse of [`addr_name`]'s first label.
fn parse_hex(label: &[u8]) -> Option<IpAddr> {
    if !label.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let hex = std::str::from_utf8(label).ok()?;
    match hex.len() {
        8 => u32::from_str_radix(hex, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v).into()),
        32 => u128::from_str_radix(hex, 16)
            .ok()
            .map(|v| Ipv6Addr::from(v).into()),
        _ => None,
    }
}

fn address_record(name: Name, ip: IpAddr) -> Record {
    match ip {
        IpAddr::V4(v4) => record(name, RData::A(A(v4))),
        IpAddr::V6(v6) => record(name, RData::AAAA(AAAA(v6))),
    }
}

/// The zone's SOA: also sent in the authority section of NXDOMAIN and NODATA answers.
fn soa(domain: &Name) -> Result<Record, ProtoError> {
    let mname = domain.prepend_label("ns")?;
    let rname = domain.prepend_label("hostmaster")?;
    let soa = SOA::new(mname, rname, 1, 3600, 600, 86400, 0);
    Ok(record(domain.clone(), RData::SOA(soa)))
}

fn record(name: Name, data: RData) -> Record {
    Record::from_rdata(name, 0, data)
}

/// Encodes a header-only reply (errors found before the question could be read).
fn header_only(metadata: Metadata) -> Option<(Vec<u8>, &'static str)> {
    let mut message = Message::new(metadata.id, MessageType::Response, metadata.op_code);
    message.metadata = metadata;
    Some((message.to_vec().ok()?, "error"))
}

/// Encodes `message` in at most `limit` bytes. If it is too big, keeps the longest prefix of
/// answers followed by additionals that fits, sets TC, and returns `true` as second value.
fn encode_fitting(mut message: Message, limit: usize) -> Result<(Vec<u8>, bool), ProtoError> {
    let full = message.to_vec()?;
    if full.len() <= limit {
        return Ok((full, false));
    }
    let answers = std::mem::take(&mut message.answers);
    let additionals = std::mem::take(&mut message.additionals);
    message.metadata.truncation = true;
    let mut encode = |keep: usize| {
        message.answers = answers.iter().take(keep).cloned().collect();
        let extra = keep.saturating_sub(answers.len());
        message.additionals = additionals.iter().take(extra).cloned().collect();
        message.to_vec()
    };
    // The size grows with `keep`: binary search for the largest prefix that fits. Keeping
    // nothing is the fallback even if it does not fit (a question cannot exceed 512 bytes).
    let mut best = encode(0)?;
    let (mut fits, mut too_big) = (0, answers.len() + additionals.len());
    while too_big - fits > 1 {
        let mid = fits + (too_big - fits) / 2;
        let bytes = encode(mid)?;
        if bytes.len() <= limit {
            (fits, best) = (mid, bytes);
        } else {
            too_big = mid;
        }
    }
    Ok((best, true))
}

/// Parses the configured domain into a lowercase fully qualified name.
fn parse_domain(domain: &str) -> Result<Name, ProtoError> {
    let mut name = Name::from_ascii(domain)?.to_lowercase();
    if name.is_root() {
        return Err(ProtoError::Message("the DNS domain must not be the root"));
    }
    name.set_fqdn(true);
    Ok(name)
}

/// State shared by the UDP loop and the TCP connections.
struct Server {
    domain: Name,
    lookup: Arc<dyn Lookup>,
    metrics: DnsMetrics,
}

impl Server {
    fn handle(&self, request: &[u8], max_size: usize) -> Option<Vec<u8>> {
        let reply = answer_with_result(request, &self.domain, self.lookup.as_ref(), max_size);
        let result = reply.as_ref().map_or("error", |(_, result)| result);
        self.metrics.queries.with_label_values(&[result]).inc();
        reply.map(|(bytes, _)| bytes)
    }
}

/// Sleeps [`ERROR_BACKOFF`] unless shutdown comes first.
async fn backoff(shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(ERROR_BACKOFF) => {}
    }
}

/// Cancel safety: returns when `shutdown` is cancelled; nothing is lost but the query in hand.
async fn serve_udp(socket: UdpSocket, server: Arc<Server>, shutdown: CancellationToken) {
    let mut buf = vec![0u8; UDP_MAX];
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buf) => received,
        };
        let (len, peer) = match received {
            Ok(received) => received,
            Err(err) => {
                warn!(error = %err, "DNS UDP receive failed");
                backoff(&shutdown).await;
                continue;
            }
        };
        let response = {
            let _span = tracing::debug_span!("dns", %peer, transport = "udp").entered();
            buf.get(..len)
                .and_then(|request| server.handle(request, UDP_MIN))
        };
        let Some(response) = response else { continue };
        if let Err(err) = socket.send_to(&response, peer).await {
            warn!(%peer, error = %err, "DNS UDP send failed");
        }
    }
}

/// Cancel safety: returns when `shutdown` is cancelled and every connection has closed.
async fn serve_tcp(listener: TcpListener, server: Arc<Server>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(TCP_MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => permit,
        };
        let Ok(permit) = permit else { break };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(error = %err, "DNS TCP accept failed");
                backoff(&shutdown).await;
                continue;
            }
        };
        let (server, shutdown) = (Arc::clone(&server), shutdown.clone());
        tracker.spawn(async move {
            serve_connection(stream, peer, &server, &shutdown).await;
            drop(permit);
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// Answers length-prefixed queries on one connection, in order, until the client closes, goes
/// idle for [`TCP_IDLE`], sends a request that gets no reply, or shutdown.
async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    server: &Server,
    shutdown: &CancellationToken,
) {
    loop {
        let read = tokio::select! {
            _ = shutdown.cancelled() => return,
            read = tokio::time::timeout(TCP_IDLE, read_frame(&mut stream)) => read,
        };
        let request = match read {
            Ok(Ok(Some(request))) => request,
            Ok(Ok(None)) => return,
            Ok(Err(err)) => {
                debug!(%peer, error = %err, "DNS TCP read failed");
                return;
            }
            Err(_) => {
                debug!(%peer, "closing idle DNS TCP connection");
                return;
            }
        };
        let response = {
            let _span = tracing::debug_span!("dns", %peer, transport = "tcp").entered();
            server.handle(&request, TCP_MAX)
        };
        let Some(response) = response else { return };
        let Ok(len) = u16::try_from(response.len()) else {
            return;
        };
        let mut frame = Vec::with_capacity(response.len() + 2);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&response);
        match tokio::time::timeout(TCP_IDLE, stream.write_all(&frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                debug!(%peer, error = %err, "DNS TCP write failed");
                return;
            }
            Err(_) => return,
        }
    }
}

/// Reads one 2-byte-length-prefixed message; `None` on a clean end of stream.
async fn read_frame(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    /// Endpoints as `(service, tags, endpoint)`.
    struct Fake(Vec<(&'static str, Vec<&'static str>, Endpoint)>);

    impl Lookup for Fake {
        fn healthy(&self, service: &str, tag: Option<&str>) -> Vec<Endpoint> {
            self.0
                .iter()
                .filter(|(s, tags, _)| *s == service && tag.is_none_or(|t| tags.contains(&t)))
                .map(|(_, _, e)| e.clone())
                .collect()
        }
    }

    fn ep(id: &str, address: &str, port: u16, weight: u16) -> Endpoint {
        Endpoint {
            id: id.into(),
            address: address.into(),
            port,
            weight,
        }
    }

    fn fake() -> Fake {
        Fake(vec![
            ("web", vec!["primary"], ep("w1", "10.0.0.1", 8080, 10)),
            ("web", vec![], ep("w2", "10.0.0.2", 8081, 20)),
            ("web", vec![], ep("w3", "fd00::1", 8082, 30)),
            ("web", vec![], ep("w4", "web4.example.com", 8083, 40)),
            ("db", vec![], ep("d1", "db.example.com", 5432, 1)),
        ])
    }

    fn domain() -> Name {
        parse_domain("strata").unwrap()
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn request(qname: &str, qtype: RecordType, edns: Option<u16>) -> Message {
        let mut message = Message::query();
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(name(qname), qtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            message.set_edns(e);
        }
        message
    }

    fn ask_with(lookup: &dyn Lookup, req: &Message, max_size: usize) -> (Message, usize) {
        let bytes = answer(&req.to_vec().unwrap(), &domain(), lookup, max_size).unwrap();
        (Message::from_vec(&bytes).unwrap(), bytes.len())
    }

    fn ask(qname: &str, qtype: RecordType) -> Message {
        let req = request(qname, qtype, None);
        let (resp, _) = ask_with(&fake(), &req, UDP_MIN);
        assert_eq!(resp.metadata.id, req.metadata.id);
        assert_eq!(resp.queries, req.queries);
        assert_eq!(resp.metadata.message_type, MessageType::Response);
        assert!(resp.metadata.recursion_desired);
        assert!(!resp.metadata.recursion_available);
        assert!(resp.all_sections().all(|r| r.ttl == 0));
        resp
    }

    fn ips(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .map(|r| match &r.data {
                RData::A(a) => a.0.to_string(),
                RData::AAAA(a) => a.0.to_string(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn assert_soa(resp: &Message) {
        let [soa] = resp.authorities.as_slice() else {
            panic!("no SOA: {resp:?}")
        };
        assert_eq!(soa.name, domain());
        let RData::SOA(data) = &soa.data else {
            panic!("not a SOA: {soa:?}")
        };
        assert_eq!(&data.mname, &name("ns.strata."));
        assert_eq!(&data.rname, &name("hostmaster.strata."));
        assert_eq!((data.serial, data.minimum), (1, 0));
    }

    #[test]
    fn a_and_aaaa_answer_ip_endpoints() {
        let resp = ask("web.service.strata.", RecordType::A);
        assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
        assert!(resp.metadata.authoritative);
        assert_eq!(ips(&resp.answers), ["10.0.0.1", "10.0.0.2"]);
        assert!(resp
            .answers
            .iter()
            .all(|r| r.name == name("web.service.strata.")));
        assert!(resp.edns.is_none());
        let resp = ask("web.service.strata.", RecordType::AAAA);
        assert_eq!(ips(&resp.answers), ["fd00::1"]);
        let resp = ask("web.service.strata.", RecordType::ANY);
        assert_eq!(ips(&resp.answers), ["10.0.0.1", "10.0.0.2", "fd00::1"]);
    }

    #[test]
    fn srv_answers_with_additional_addresses() {
        let resp = ask("web.service.strata.", RecordType::SRV);
        let srv: Vec<_> = resp
            .answers
            .iter()
            .map(|r| match &r.data {
                RData::SRV(s) => (s.priority, s.weight, s.port, s.target.to_ascii()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            srv,
            [
                (1, 10, 8080, "0a000001.addr.strata.".to_string()),
                (1, 20, 8081, "0a000002.addr.strata.".to_string()),
                (
                    1,
                    30,
                    8082,
                    "fd000000000000000000000000000001.addr.strata.".to_string()
                ),
                (1, 40, 8083, "web4.example.com.".to_string()),
            ]
        );
        assert_eq!(ips(&resp.additionals), ["10.0.0.1", "10.0.0.2", "fd00::1"]);
        assert_eq!(resp.additionals[0].name, name("0a000001.addr.strata."));
        // The targets resolve.
        let resp = ask("0A000002.addr.strata.", RecordType::A);
        assert_eq!(ips(&resp.answers), ["10.0.0.2"]);
        let resp = ask(
            "fd000000000000000000000000000001.addr.strata.",
            RecordType::AAAA,
        );
        assert_eq!(ips(&resp.answers), ["fd00::1"]);
        let resp = ask("7f000001.addr.strata.", RecordType::A);
        assert_eq!(ips(&resp.answers), ["127.0.0.1"]);
        assert_eq!(parse_hex(b"+7f00001"), None);
        assert_eq!(parse_hex(b"7F000001"), Some(Ipv4Addr::LOCALHOST.into()));
    }

    #[test]
    fn tag_filter_and_case_insensitivity() {
        let resp = ask("primary.web.service.strata.", RecordType::A);
        assert_eq!(ips(&resp.answers), ["10.0.0.1"]);
        let resp = ask("PriMary.WEB.Service.STRATA.", RecordType::A);
        assert_eq!(ips(&resp.answers), ["10.0.0.1"]);
        assert_eq!(
            resp.answers[0].name.to_ascii(),
            "PriMary.WEB.Service.STRATA."
        );
        let resp = ask("nope.web.service.strata.", RecordType::A);
        assert_eq!(resp.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn hostname_only_service_answers_one_cname() {
        let resp = ask("db.service.strata.", RecordType::A);
        let [cname] = resp.answers.as_slice() else {
            panic!("{resp:?}")
        };
        assert_eq!(cname.data, RData::CNAME(CNAME(name("db.example.com."))));
    }

    #[test]
    fn unknown_names_are_nxdomain_with_soa() {
        for qname in [
            "nope.service.strata.",
            "web.nope.strata.",
            "a.b.web.service.strata.",
            "zz000001.addr.strata.",
            "7f0001.addr.strata.",
        ] {
            let resp = ask(qname, RecordType::A);
            assert_eq!(
                resp.metadata.response_code,
                ResponseCode::NXDomain,
                "{qname}"
            );
            assert!(resp.metadata.authoritative);
            assert!(resp.answers.is_empty());
            assert_soa(&resp);
        }
    }

    #[test]
    fn missing_type_is_nodata_and_apex_has_soa() {
        for (qname, qtype) in [
            ("web.service.strata.", RecordType::TXT),
            ("7f000001.addr.strata.", RecordType::AAAA),
            ("strata.", RecordType::A),
            ("service.strata.", RecordType::A),
            ("addr.strata.", RecordType::A),
        ] {
            let resp = ask(qname, qtype);
            assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
            assert!(resp.answers.is_empty());
            assert_soa(&resp);
        }
        let resp = ask("strata.", RecordType::SOA);
        assert!(matches!(resp.answers[0].data, RData::SOA(_)));
    }

    #[test]
    fn other_domains_are_refused() {
        let resp = ask("web.service.example.com.", RecordType::A);
        assert_eq!(resp.metadata.response_code, ResponseCode::Refused);
        assert!(!resp.metadata.authoritative);
        assert!(resp.answers.is_empty());
    }

    #[test]
    fn header_errors() {
        let lookup = fake();
        let rcode = |bytes: &[u8]| {
            let resp = answer(bytes, &domain(), &lookup, UDP_MIN).unwrap();
            Message::from_vec(&resp).unwrap().metadata.response_code
        };
        let mut two = request("web.service.strata.", RecordType::A, None);
        two.add_query(Query::query(name("db.service.strata."), RecordType::A));
        assert_eq!(rcode(&two.to_vec().unwrap()), ResponseCode::FormErr);
        let mut none = request("web.service.strata.", RecordType::A, None);
        none.queries.clear();
        assert_eq!(rcode(&none.to_vec().unwrap()), ResponseCode::FormErr);
        let mut status = request("web.service.strata.", RecordType::A, None);
        status.metadata.op_code = OpCode::Status;
        assert_eq!(rcode(&status.to_vec().unwrap()), ResponseCode::NotImp);
        // A header promising a question that is not there.
        assert_eq!(
            rcode(&[0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]),
            ResponseCode::FormErr
        );
        // Too short for a header, or a response: no reply.
        assert!(answer(&[1, 2, 3], &domain(), &lookup, UDP_MIN).is_none());
        let mut response = request("web.service.strata.", RecordType::A, None);
        response.metadata.message_type = MessageType::Response;
        assert!(answer(&response.to_vec().unwrap(), &domain(), &lookup, UDP_MIN).is_none());
        // EDNS version 1 is not supported.
        let mut v1 = request("web.service.strata.", RecordType::A, Some(1232));
        v1.edns.as_mut().unwrap().set_version(1);
        assert_eq!(u16::from(rcode(&v1.to_vec().unwrap())), 16); // BADVERS
    }

    #[test]
    fn garbage_never_panics() {
        let lookup = fake();
        let seeds: Vec<Vec<u8>> = [RecordType::A, RecordType::SRV]
            .into_iter()
            .map(|t| {
                request("primary.web.service.strata.", t, Some(4096))
                    .to_vec()
                    .unwrap()
            })
            .collect();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..20_000 {
            let mut bytes = seeds[i % 2].clone();
            if i % 5 == 0 {
                bytes = (0..next() % 300).map(|_| next() as u8).collect();
            } else {
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % bytes.len();
                    bytes[at] = next() as u8;
                }
                bytes.truncate(bytes.len() - (next() as usize % 3) * (next() as usize % 8));
            }
            if i % 7 == 0 && bytes.len() > 2 {
                bytes[2] &= 0x7f; // Make it a query, so that it is answered.
            }
            if let Some(resp) = answer(&bytes, &domain(), &lookup, UDP_MIN) {
                assert!(resp.len() <= UDP_MAX);
                Message::from_vec(&resp).unwrap();
            }
        }
    }

    fn many() -> Fake {
        Fake(
            (0..100u16)
                .map(|i| ("big", vec![], ep("b", &format!("10.1.0.{i}"), 9000 + i, 1)))
                .collect(),
        )
    }

    #[test]
    fn udp_truncates_and_tcp_does_not() {
        let lookup = many();
        for qtype in [RecordType::A, RecordType::SRV] {
            let req = request("big.service.strata.", qtype, None);
            let (resp, len) = ask_with(&lookup, &req, UDP_MIN);
            assert!(resp.metadata.truncation);
            assert!(len <= 512, "{len}");
            assert!(!resp.answers.is_empty());
            assert!(resp.answers.len() < 100);
            let (resp, _) = ask_with(&lookup, &req, TCP_MAX);
            assert!(!resp.metadata.truncation);
            assert_eq!(resp.answers.len(), 100);
            let extra = if qtype == RecordType::SRV { 100 } else { 0 };
            assert_eq!(resp.additionals.len(), extra);
        }
    }

    #[test]
    fn edns_payload_size_is_honored() {
        let lookup = many();
        let req = request("big.service.strata.", RecordType::A, Some(4096));
        let (resp, len) = ask_with(&lookup, &req, UDP_MIN);
        assert!(!resp.metadata.truncation, "{len}");
        assert_eq!(resp.answers.len(), 100);
        assert_eq!(resp.edns.as_ref().unwrap().max_payload(), 4096);
        // SRV plus additionals exceed 1232 bytes: additionals go first.
        let req = request("big.service.strata.", RecordType::SRV, Some(1232));
        let (resp, len) = ask_with(&lookup, &req, UDP_MIN);
        assert!(resp.metadata.truncation);
        assert!(len <= 1232 && len > 512, "{len}");
        assert!(resp.edns.is_some());
        // A client advertising less than 512 still gets 512.
        let req = request("big.service.strata.", RecordType::A, Some(100));
        let (_, len) = ask_with(&lookup, &req, UDP_MIN);
        assert!(len > 400 && len <= 512, "{len}");
    }

    #[tokio::test]
    async fn serves_udp_and_tcp() {
        use std::time::Duration;
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (udp_addr, tcp_addr) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let registry = Registry::new();
        let metrics = DnsMetrics::new(&registry).unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            udp,
            tcp,
            "Strata.".into(),
            Arc::new(fake()),
            metrics.clone(),
            shutdown.clone(),
        ));
        let limit = Duration::from_secs(5);

        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let req = request("web.service.strata.", RecordType::A, None);
        client
            .send_to(&req.to_vec().unwrap(), udp_addr)
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        let (len, _) = tokio::time::timeout(limit, client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let resp = Message::from_vec(&buf[..len]).unwrap();
        assert_eq!(resp.metadata.id, req.metadata.id);
        assert_eq!(ips(&resp.answers), ["10.0.0.1", "10.0.0.2"]);

        // Two pipelined queries on one TCP connection.
        let mut stream = TcpStream::connect(tcp_addr).await.unwrap();
        let queries = [
            request("web.service.strata.", RecordType::SRV, None),
            request("nope.service.strata.", RecordType::A, None),
        ];
        for query in &queries {
            let bytes = query.to_vec().unwrap();
            stream
                .write_all(&(bytes.len() as u16).to_be_bytes())
                .await
                .unwrap();
            stream.write_all(&bytes).await.unwrap();
        }
        let mut responses = Vec::new();
        for _ in &queries {
            let frame = tokio::time::timeout(limit, read_frame(&mut stream))
                .await
                .unwrap();
            responses.push(Message::from_vec(&frame.unwrap().unwrap()).unwrap());
        }
        assert_eq!(responses[0].answers.len(), 4);
        assert_eq!(responses[1].metadata.response_code, ResponseCode::NXDomain);

        let count = |result: &str| metrics.queries.with_label_values(&[result]).get();
        assert_eq!((count("ok"), count("nxdomain"), count("error")), (2, 1, 0));
        assert!(registry
            .gather()
            .iter()
            .any(|f| f.name() == "strata_dns_queries_total"));

        shutdown.cancel();
        tokio::time::timeout(limit, server).await.unwrap().unwrap();
    }
}
