//! The compiled route table and the matcher.
//!
//! **Order.** Routes are tried in this order, and the first whose every condition holds wins:
//! 1. higher `priority` first;
//! 2. then the more specific host: an exact host, then a wildcard (longer suffix first), then
//!    a route without hosts;
//! 3. then the more specific path: exact, then template (more segments first), then regex,
//!    then prefix (longer first), then a route without a path;
//! 4. then more conditions on methods, headers, query and cookies;
//! 5. then the order in the table.
//!
//! A table where a route can never match (an earlier route has exactly its conditions) is
//! refused, as is anything else [`Compiled::new`] finds wrong.

use crate::model::{
    Balance, FieldMatch, HeaderOps, PathSpec, Protocol, Redirect, Respond, RouteSpec, Table,
    TableError, UpstreamSpec,
};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, StatusCode};
use regex::Regex;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// Default whole-exchange timeout of a proxied request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default largest request body.
pub const DEFAULT_MAX_BODY: u64 = 10 * 1024 * 1024;
/// Default connect timeout to an upstream member.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the matcher sees of a request.
pub struct RequestView<'a> {
    /// Method.
    pub method: &'a Method,
    /// Host without port, lower case.
    pub host: &'a str,
    /// Path (no query).
    pub path: &'a str,
    /// Raw query string, without `?`.
    pub query: Option<&'a str>,
    /// Headers.
    pub headers: &'a HeaderMap,
}

/// A table ready to serve: routes in match order, upstream specs by name.
#[derive(Debug)]
pub struct Compiled {
    /// The routes, in the order they are tried.
    pub routes: Vec<Route>,
    /// Upstream groups, by name.
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    /// Address lists per host, most specific host first.
    host_rules: Vec<(HostMatch, crate::edge::IpRules)>,
    /// Routes naming exact hosts, by host (indexes into `routes`, ascending).
    by_host: HashMap<String, Vec<usize>>,
    /// Routes for any host or a wildcard (ascending).
    any_host: Vec<usize>,
    /// The table as written (for `routes list|show`).
    pub source: Table,
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// Its name.
    pub name: String,
    hosts: Vec<HostMatch>,
    path: Option<PathMatch>,
    methods: Vec<Method>,
    headers: Vec<Field>,
    query: Vec<Field>,
    cookies: Vec<Field>,
    /// What it does.
    pub action: Action,
    /// Header changes on the way in.
    pub request_headers: HeaderEdits,
    /// Header changes on the way out.
    pub response_headers: HeaderEdits,
    /// Whole-exchange timeout.
    pub timeout: Duration,
    /// Longest wait for the next bytes of a body, when set.
    pub idle_timeout: Option<Duration>,
    /// Largest request body.
    pub max_body: u64,
    /// Retries on another member after a failed connection (idempotent methods only).
    pub retries: u32,
    /// The canary release, if any.
    pub canary: Option<CanaryRule>,
    /// The CORS policy, if any.
    pub cors: Option<crate::edge::Cors>,
    /// Client address lists.
    pub ips: crate::edge::IpRules,
    /// Rate limits, concurrency limit, fallback and retry policy.
    pub guard: crate::guard::RouteGuard,
    /// Who may use the route.
    pub auth: Option<crate::edge_auth::RouteAuth>,
    /// Sort key (see the module docs); `index` last.
    order: (i32, u8, usize, u8, usize, usize, usize),
}

/// What a route does.
#[derive(Debug)]
pub enum Action {
    /// Forward to an upstream group.
    Proxy {
        /// The group.
        upstream: String,
        /// Remove the matched prefix.
        strip_prefix: bool,
        /// Replace the path (with template parameters).
        rewrite: Option<String>,
    },
    /// Answer with a redirect.
    Redirect {
        /// Location template.
        to: String,
        /// Status.
        status: StatusCode,
    },
    /// Serve files from a folder.
    Files {
        /// The folder and its index.
        files: crate::files::StaticFiles,
        /// Remove the matched prefix.
        strip_prefix: bool,
    },
    /// Answer with a fixed response.
    Respond {
        /// Status.
        status: StatusCode,
        /// Body.
        body: bytes::Bytes,
        /// Content type.
        content_type: HeaderValue,
    },
}

/// A compiled canary release.
#[derive(Debug)]
pub struct CanaryRule {
    /// The canary's upstream group.
    pub upstream: String,
    /// Share of requests, in hundredths of a percent (0 to 10,000).
    basis_points: u32,
    force_header: Option<HeaderName>,
    sticky: Option<Sticky>,
}

#[derive(Debug)]
enum Sticky {
    Cookie(String),
    Header(HeaderName),
}

/// Which side of a canary release a request goes to, and the cookie to set, if any.
#[derive(Debug, PartialEq, Eq)]
pub struct CanaryChoice {
    /// True: the canary's upstream.
    pub canary: bool,
    /// `Set-Cookie` value that keeps the client on this side.
    pub set_cookie: Option<HeaderValue>,
}

fn side(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "canary" | "true" | "1" => Some(true),
        "stable" | "false" | "0" => Some(false),
        _ => None,
    }
}

impl CanaryRule {
    fn new(
        spec: &crate::model::Canary,
        upstreams: &BTreeMap<String, UpstreamSpec>,
    ) -> Result<CanaryRule, String> {
        if !upstreams.contains_key(&spec.upstream) {
            return Err(format!("canary: unknown upstream {:?}", spec.upstream));
        }
        if !(0.0..=100.0).contains(&spec.weight) {
            return Err(format!(
                "canary: weight {} is not a percent from 0 to 100",
                spec.weight
            ));
        }
        let header = |name: &str| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("canary: {name:?} is not a valid header name"))
        };
        let sticky = match spec.sticky.as_deref().map(|s| s.split_once(':')) {
            None => None,
            Some(Some(("cookie", name))) if valid_cookie_name(name) => {
                Some(Sticky::Cookie(name.to_string()))
            }
            Some(Some(("header", name))) => Some(Sticky::Header(header(name)?)),
            Some(_) => {
                return Err(format!(
                    "canary: sticky {:?} is not cookie:NAME or header:NAME",
                    spec.sticky.as_deref().unwrap_or_default()
                ))
            }
        };
        Ok(CanaryRule {
            upstream: spec.upstream.clone(),
            basis_points: (spec.weight * 100.0).round() as u32,
            force_header: spec.force_header.as_deref().map(header).transpose()?,
            sticky,
        })
    }

    /// Chooses the side for a request with `headers`.
    pub fn choose(&self, headers: &HeaderMap) -> CanaryChoice {
        let keep = |canary| CanaryChoice {
            canary,
            set_cookie: None,
        };
        if let Some(forced) = self
            .force_header
            .as_ref()
            .and_then(|name| headers.get(name))
            .and_then(|v| v.to_str().ok())
            .and_then(side)
        {
            return keep(forced);
        }
        match &self.sticky {
            Some(Sticky::Header(name)) => match headers.get(name) {
                Some(value) => keep(
                    crate::balance::hash(value.as_bytes()) % 10_000 < u64::from(self.basis_points),
                ),
                None => keep(self.draw()),
            },
            Some(Sticky::Cookie(name)) => {
                let sent = parse_cookies(headers)
                    .into_iter()
                    .find(|(k, _)| k == name)
                    .and_then(|(_, v)| side(&v));
                match sent {
                    Some(canary) => keep(canary),
                    None => {
                        let canary = self.draw();
                        let value = format!(
                            "{name}={}; Path=/",
                            if canary { "canary" } else { "stable" }
                        );
                        CanaryChoice {
                            canary,
                            set_cookie: HeaderValue::from_str(&value).ok(),
                        }
                    }
                }
            }
            None => keep(self.draw()),
        }
    }

    fn draw(&self) -> bool {
        use rand::Rng;
        rand::thread_rng().gen_range(0..10_000) < self.basis_points
    }
}

fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Compiled header changes.
#[derive(Debug)]
pub struct HeaderEdits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    /// Every name touched is one an answer's raw lines pass on as it is (see
    /// [`HeaderEdits::apply_to_raw`]); known when compiled.
    raw: bool,
}

impl HeaderEdits {
    /// True when there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Every name the changes touch.
    fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.remove
            .iter()
            .chain(self.set.iter().chain(&self.add).map(|(name, _)| name))
    }

    /// True when the changes touch a header named in `names`.
    pub fn touches(&self, names: &[&HeaderName]) -> bool {
        self.names().any(|name| names.contains(&name))
    }

    /// True when the changes may be made to an answer whose header lines stay raw: every name
    /// they touch is one the gateway passes on as it is (not `Date`, the framing's or a
    /// hop-by-hop header's, nor `X-Request-Id`).
    pub fn apply_to_raw(&self) -> bool {
        self.raw
    }

    /// Makes the changes to an answer's raw lines, as [`HeaderEdits::apply`] to a map: lines
    /// named in `remove` or `set` go, `set` and `add` lines are appended. Only when
    /// [`HeaderEdits::apply_to_raw`].
    pub fn apply_raw(&self, raw: &mut crate::h1::RawHeaders) {
        if self.is_empty() {
            return;
        }
        let dropped = |name: &[u8]| {
            self.remove
                .iter()
                .chain(self.set.iter().map(|(name, _)| name))
                .any(|ours| ours.as_str().as_bytes().eq_ignore_ascii_case(name))
        };
        raw.edit(dropped, self.set.iter().chain(&self.add));
    }

    /// Applies the changes: remove, then set, then add.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }

    pub(crate) fn new(
        route: &str,
        which: &str,
        ops: &HeaderOps,
    ) -> Result<HeaderEdits, TableError> {
        let name = |n: &str| {
            HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                TableError(format!(
                    "route {route:?}: {which}: {n:?} is not a valid header name"
                ))
            })
        };
        let value = |n: &str, v: &str| {
            HeaderValue::from_str(v).map_err(|_| {
                TableError(format!(
                    "route {route:?}: {which}: the value of {n:?} is not a valid header value"
                ))
            })
        };
        let pairs = |map: &BTreeMap<String, String>| {
            map.iter()
                .map(|(n, v)| Ok((name(n)?, value(n, v)?)))
                .collect::<Result<Vec<_>, TableError>>()
        };
        let mut edits = HeaderEdits {
            remove: ops
                .remove
                .iter()
                .map(|n| name(n))
                .collect::<Result<_, _>>()?,
            set: pairs(&ops.set)?,
            add: pairs(&ops.add)?,
            raw: true,
        };
        let raw = edits.names().all(crate::h1::passed_as_is);
        edits.raw = raw;
        Ok(edits)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
}

impl HostMatch {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(exact) => host == exact,
            HostMatch::Suffix(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }
}

#[derive(Debug)]
enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
    Template(Vec<Segment>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Debug)]
struct Field {
    name: String,
    header: Option<HeaderName>,
    test: FieldTest,
}

#[derive(Debug)]
enum FieldTest {
    Present,
    Absent,
    Equals(String),
    Regex(Regex),
}

/// Parameters captured by a template path.
pub type Params = Vec<(String, String)>;

impl Compiled {
    /// Checks `table` and compiles it; the error names the route or upstream and what is wrong.
    pub fn new(table: Table) -> Result<Compiled, TableError> {
        let mut upstreams = BTreeMap::new();
        for upstream in &table.upstreams {
            check_upstream(upstream)?;
            if upstreams
                .insert(upstream.name.clone(), upstream.clone())
                .is_some()
            {
                return Err(TableError(format!(
                    "two upstreams are named {:?}",
                    upstream.name
                )));
            }
        }
        let mut providers = Vec::new();
        for provider in &table.jwt_providers {
            crate::edge_auth::check_provider(provider).map_err(TableError)?;
            if providers.contains(&provider.name) {
                return Err(TableError(format!(
                    "two jwt providers are named {:?}",
                    provider.name
                )));
            }
            providers.push(provider.name.clone());
        }
        let mut oidc = Vec::new();
        for provider in &table.oidc_providers {
            crate::oidc::check_provider(provider).map_err(TableError)?;
            if oidc.contains(&provider.name) {
                return Err(TableError(format!(
                    "two oidc providers are named {:?}",
                    provider.name
                )));
            }
            oidc.push(provider.name.clone());
        }
        let mut names = BTreeSet::new();
        let mut routes = Vec::with_capacity(table.routes.len());
        for (index, spec) in table.routes.iter().enumerate() {
            if !names.insert(spec.name.as_str()) {
                return Err(TableError(format!("two routes are named {:?}", spec.name)));
            }
            routes.push(compile_route(spec, index, &upstreams, &providers, &oidc)?);
        }
        routes.sort_by_key(|r| r.order);
        check_shadowing(&table, &routes)?;
        check_tcp(&table, &upstreams)?;
        for certificate in &table.certificates {
            let label = certificate.label();
            if certificate.hosts.is_empty() {
                return Err(TableError(format!(
                    "certificate {label}: give the `hosts` it serves"
                )));
            }
            if certificate.cert_file.is_some() == certificate.cert_pem.is_some()
                || certificate.key_file.is_some() == certificate.key_pem.is_some()
            {
                return Err(TableError(format!(
                    "certificate {label}: give the certificate as `cert_file` or `cert_pem` and the key as `key_file` or `key_pem`, one of each"
                )));
            }
            for host in &certificate.hosts {
                compile_host(host).map_err(|m| TableError(format!("certificate {label}: {m}")))?;
            }
        }
        let mut host_rules = Vec::new();
        for (index, rule) in table.hosts.iter().enumerate() {
            let fail = |m: String| TableError(format!("hosts entry {}: {m}", index + 1));
            if rule.hosts.is_empty() {
                return Err(fail("give the `hosts` it applies to".into()));
            }
            let ips = crate::edge::IpRules::new(&rule.allow_ips, &rule.deny_ips).map_err(fail)?;
            for host in &rule.hosts {
                host_rules.push((compile_host(host).map_err(fail)?, ips.clone()));
            }
        }
        // Exact names before wildcards, longer wildcards first: the most specific rule wins.
        host_rules.sort_by_key(|(host, _)| match host {
            HostMatch::Exact(_) => (0, 0),
            HostMatch::Suffix(suffix) => (1, usize::MAX - suffix.len()),
        });
        let mut by_host: HashMap<String, Vec<usize>> = HashMap::new();
        let mut any_host = Vec::new();
        for (index, route) in routes.iter().enumerate() {
            let exact: Option<Vec<&String>> = route
                .hosts
                .iter()
                .map(|h| match h {
                    HostMatch::Exact(host) => Some(host),
                    HostMatch::Suffix(_) => None,
                })
                .collect();
            match exact.filter(|hosts| !hosts.is_empty()) {
                Some(hosts) => {
                    for host in hosts {
                        let list = by_host.entry(host.clone()).or_default();
                        if list.last() != Some(&index) {
                            list.push(index);
                        }
                    }
                }
                None => any_host.push(index),
            }
        }
        Ok(Compiled {
            routes,
            upstreams,
            host_rules,
            by_host,
            any_host,
            source: table,
        })
    }

    /// Takes over the rate-limit buckets of `previous`'s routes of the same name whose limits
    /// did not change.
    pub fn adopt_limits(&mut self, previous: &Compiled) {
        for route in &mut self.routes {
            if let Some(old) = previous.routes.iter().find(|r| r.name == route.name) {
                route.guard.adopt(&old.guard);
            }
        }
    }

    /// True unless the most specific `[[hosts]]` rule for `host` refuses `client`.
    pub fn permits_host(&self, host: &str, client: std::net::IpAddr) -> bool {
        self.host_rules.is_empty()
            || self
                .host_rules
                .iter()
                .find(|(h, _)| h.matches(host))
                .is_none_or(|(_, ips)| ips.permits(client))
    }

    /// The first route that matches (and its index in [`Compiled::routes`]), with the
    /// parameters its template captured.
    pub fn find(&self, request: &RequestView<'_>) -> Option<(usize, &Route, Params)> {
        let mut cookies = None;
        // Only the routes that can match the host, in match order: those naming it exactly,
        // merged with those for any host or a wildcard.
        let exact = self
            .by_host
            .get(request.host)
            .map_or(&[][..], Vec::as_slice);
        let (mut a, mut b) = (0, 0);
        loop {
            let index = match (exact.get(a), self.any_host.get(b)) {
                (Some(&x), Some(&y)) if x < y => {
                    a += 1;
                    x
                }
                (_, Some(&y)) => {
                    b += 1;
                    y
                }
                (Some(&x), None) => {
                    a += 1;
                    x
                }
                (None, None) => return None,
            };
            let route = &self.routes[index];
            if let Some(params) = route.matches(request, &mut cookies) {
                return Some((index, route, params));
            }
        }
    }
}

fn check_tcp(table: &Table, upstreams: &BTreeMap<String, UpstreamSpec>) -> Result<(), TableError> {
    let mut names = BTreeSet::new();
    let mut addresses = BTreeSet::new();
    for tcp in &table.tcp {
        let fail = |m: String| Err(TableError(format!("tcp listener {:?}: {m}", tcp.name)));
        if tcp.name.is_empty() {
            return Err(TableError("a tcp listener has an empty name".into()));
        }
        if !names.insert(tcp.name.as_str()) {
            return Err(TableError(format!(
                "two tcp listeners are named {:?}",
                tcp.name
            )));
        }
        let port_zero = tcp.listen.ends_with(":0");
        if tcp.listen.parse::<std::net::SocketAddr>().is_err() {
            return fail(format!("listen {:?} is not IP:PORT", tcp.listen));
        }
        if !port_zero && !addresses.insert(tcp.listen.as_str()) {
            return fail(format!("another tcp listener has {:?}", tcp.listen));
        }
        if !upstreams.contains_key(&tcp.upstream) {
            return fail(format!("unknown upstream {:?}", tcp.upstream));
        }
    }
    Ok(())
}

fn check_upstream(u: &UpstreamSpec) -> Result<(), TableError> {
    let fail = |m: String| Err(TableError(format!("upstream {:?}: {m}", u.name)));
    if u.name.is_empty() {
        return Err(TableError("an upstream has an empty name".into()));
    }
    let static_members = u.addresses.len() + u.endpoints.len();
    match (&u.service, static_members) {
        (Some(_), n) if n > 0 => {
            return fail("give either a registry `service` or static addresses, not both".into())
        }
        (None, 0) => {
            return fail("has no members: give `addresses`, `endpoints` or `service`".into())
        }
        (Some(service), _) if service.is_empty() => return fail("`service` is empty".into()),
        _ => {}
    }
    for address in u
        .addresses
        .iter()
        .chain(u.endpoints.iter().map(|e| &e.address))
    {
        check_address(address).map_err(|m| TableError(format!("upstream {:?}: {m}", u.name)))?;
    }
    if u.endpoints.iter().any(|e| e.weight == 0) {
        return fail("an endpoint has weight 0 (leave it out instead)".into());
    }
    if !matches!(u.balance, Balance::RingHash | Balance::Maglev) && u.hash_on.is_some() {
        return fail("`hash_on` needs balance = \"ring_hash\" or \"maglev\"".into());
    }
    if let Some(hash_on) = &u.hash_on {
        crate::balance::HashOn::parse(hash_on)
            .map_err(|m| TableError(format!("upstream {:?}: {m}", u.name)))?;
    }
    if u.protocol == Protocol::H2c && u.service.is_none() && static_members == 0 {
        return fail("has no members".into());
    }
    if let Some(breaker) = &u.circuit_breaker {
        breaker
            .check()
            .map_err(|m| TableError(format!("upstream {:?}: circuit_breaker: {m}", u.name)))?;
    } else if u.breaker_scope.is_some() {
        return fail("`breaker_scope` needs a `circuit_breaker`".into());
    }
    crate::upstream::FailureOn::parse(&u.failure_on)
        .map_err(|m| TableError(format!("upstream {:?}: {m}", u.name)))?;
    if let Some(outlier) = &u.outlier_detection {
        outlier
            .check()
            .map_err(|m| TableError(format!("upstream {:?}: outlier_detection: {m}", u.name)))?;
    }
    if u.max_concurrent == Some(0) {
        return fail("max_concurrent must be at least 1".into());
    }
    if u.health_check.is_some() && u.service.is_some() {
        return fail("`health_check` is for static members; a registry service's instances are checked by the registry".into());
    }
    Ok(())
}

/// Checks `HOST:PORT`.
pub fn check_address(address: &str) -> Result<(), String> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("address {address:?} is not HOST:PORT"));
    };
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!("address {address:?} is not HOST:PORT"));
    }
    if address.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!("address {address:?} is not HOST:PORT"));
    }
    Ok(())
}

fn compile_route(
    spec: &RouteSpec,
    index: usize,
    upstreams: &BTreeMap<String, UpstreamSpec>,
    providers: &[String],
    oidc: &[String],
) -> Result<Route, TableError> {
    let route = spec.name.as_str();
    let fail = |m: String| TableError(format!("route {route:?}: {m}"));
    if route.is_empty() {
        return Err(TableError("a route has an empty name".into()));
    }
    let hosts = spec
        .hosts
        .iter()
        .map(|h| compile_host(h).map_err(fail))
        .collect::<Result<Vec<_>, _>>()?;
    let path = spec
        .path
        .as_ref()
        .map(|p| compile_path(p).map_err(fail))
        .transpose()?;
    let methods = spec
        .methods
        .iter()
        .map(|m| {
            Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| fail(format!("{m:?} is not an HTTP method")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let fields = |which: &str, list: &[FieldMatch], header: bool| {
        list.iter()
            .map(|f| compile_field(f, header).map_err(|m| fail(format!("{which}: {m}"))))
            .collect::<Result<Vec<_>, _>>()
    };
    let headers = fields("headers", &spec.headers, true)?;
    let query = fields("query", &spec.query, false)?;
    let cookies = fields("cookies", &spec.cookies, false)?;
    let action = compile_action(spec, upstreams, path.as_ref()).map_err(fail)?;
    let host_rank = match hosts.iter().max_by_key(|h| host_rank(h)) {
        None => (0, 0),
        Some(h) => host_rank(h),
    };
    let path_rank = match &path {
        None => (0, 0),
        Some(PathMatch::Prefix(p)) => (1, p.len()),
        Some(PathMatch::Regex(_)) => (2, 0),
        Some(PathMatch::Template(segments)) => (3, segments.len()),
        Some(PathMatch::Exact(_)) => (4, 0),
    };
    let conditions = methods.len().min(1) + headers.len() + query.len() + cookies.len();
    Ok(Route {
        name: spec.name.clone(),
        order: (
            -spec.priority,
            u8::MAX - host_rank.0,
            usize::MAX - host_rank.1,
            u8::MAX - path_rank.0,
            usize::MAX - path_rank.1,
            usize::MAX - conditions,
            index,
        ),
        hosts,
        path,
        methods,
        headers,
        query,
        cookies,
        action,
        request_headers: HeaderEdits::new(route, "request_headers", &spec.request_headers)?,
        response_headers: HeaderEdits::new(route, "response_headers", &spec.response_headers)?,
        timeout: spec.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0),
        idle_timeout: spec.idle_timeout.map(|t| t.0).filter(|t| !t.is_zero()),
        max_body: spec.max_body.map_or(DEFAULT_MAX_BODY, |b| b.0),
        retries: spec.retries.unwrap_or(1),
        cors: spec
            .cors
            .as_ref()
            .map(crate::edge::Cors::new)
            .transpose()
            .map_err(fail)?,
        ips: crate::edge::IpRules::new(&spec.allow_ips, &spec.deny_ips).map_err(fail)?,
        guard: crate::guard::RouteGuard::new(spec, upstreams).map_err(fail)?,
        auth: spec
            .auth
            .as_ref()
            .map(|auth| crate::edge_auth::RouteAuth::new(auth, providers, oidc))
            .transpose()
            .map_err(fail)?,
        canary: match &spec.canary {
            None => None,
            Some(_) if spec.upstream.is_none() => {
                return Err(fail("`canary` applies only to `upstream` routes".into()))
            }
            Some(canary) => Some(CanaryRule::new(canary, upstreams).map_err(fail)?),
        },
    })
}

/// (kind, length): exact hosts before wildcards, longer wildcards first.
fn host_rank(host: &HostMatch) -> (u8, usize) {
    match host {
        HostMatch::Exact(_) => (2, 0),
        HostMatch::Suffix(suffix) => (1, suffix.len()),
    }
}

fn compile_host(host: &str) -> Result<HostMatch, String> {
    let lower = host.trim().to_ascii_lowercase();
    let valid = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    };
    if let Some(rest) = lower.strip_prefix("*.") {
        if valid(rest) {
            return Ok(HostMatch::Suffix(format!(".{rest}")));
        }
    } else if valid(&lower) {
        return Ok(HostMatch::Exact(lower));
    }
    Err(format!(
        "host {host:?} is neither a host name nor `*.` and a domain"
    ))
}

fn compile_path(path: &PathSpec) -> Result<PathMatch, String> {
    let must_start = |p: &str| {
        if p.starts_with('/') {
            Ok(())
        } else {
            Err(format!("path {p:?} must start with /"))
        }
    };
    Ok(match path {
        PathSpec::Exact(p) => {
            must_start(p)?;
            PathMatch::Exact(p.clone())
        }
        PathSpec::Prefix(p) => {
            must_start(p)?;
            PathMatch::Prefix(p.clone())
        }
        PathSpec::Regex(r) => PathMatch::Regex(anchored(r)?),
        PathSpec::Template(t) => {
            must_start(t)?;
            let mut seen = BTreeSet::new();
            let segments = t[1..]
                .split('/')
                .map(
                    |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                        Some(name) if !name.is_empty() && !name.contains(['{', '}']) => {
                            if seen.insert(name.to_string()) {
                                Ok(Segment::Param(name.to_string()))
                            } else {
                                Err(format!("template {t:?} names {{{name}}} twice"))
                            }
                        }
                        _ if s.contains(['{', '}']) => Err(format!(
                            "template {t:?}: segment {s:?} is not a whole {{name}}"
                        )),
                        _ => Ok(Segment::Literal(s.to_string())),
                    },
                )
                .collect::<Result<Vec<_>, _>>()?;
            PathMatch::Template(segments)
        }
    })
}

fn anchored(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        format!(
            "bad regex {pattern:?}: {}",
            e.to_string().replace('\n', " ")
        )
    })
}

fn compile_field(field: &FieldMatch, header: bool) -> Result<Field, String> {
    if field.name.is_empty() {
        return Err("a condition has an empty name".into());
    }
    let header_name = if header {
        Some(
            HeaderName::from_bytes(field.name.as_bytes())
                .map_err(|_| format!("{:?} is not a valid header name", field.name))?,
        )
    } else {
        None
    };
    let test = match (&field.value, &field.regex, field.present) {
        (Some(_), Some(_), _) => {
            return Err(format!(
                "{:?}: give `value` or `regex`, not both",
                field.name
            ))
        }
        (Some(_) | None, _, Some(false)) if field.value.is_some() || field.regex.is_some() => {
            return Err(format!(
                "{:?}: `present = false` takes no value or regex",
                field.name
            ))
        }
        (Some(v), None, _) => FieldTest::Equals(v.clone()),
        (None, Some(r), _) => FieldTest::Regex(anchored(r)?),
        (None, None, Some(false)) => FieldTest::Absent,
        (None, None, _) => FieldTest::Present,
    };
    Ok(Field {
        name: field.name.clone(),
        header: header_name,
        test,
    })
}

fn compile_action(
    spec: &RouteSpec,
    upstreams: &BTreeMap<String, UpstreamSpec>,
    path: Option<&PathMatch>,
) -> Result<Action, String> {
    let given = [
        spec.upstream.is_some(),
        spec.redirect.is_some(),
        spec.respond.is_some(),
        spec.files.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err("give exactly one action: `upstream`, `redirect`, `respond` or `files`".into());
    }
    if spec.upstream.is_none() && spec.rewrite.is_some() {
        return Err("`rewrite` applies only to `upstream` routes".into());
    }
    if spec.upstream.is_none() && spec.files.is_none() && spec.strip_prefix {
        return Err("`strip_prefix` applies only to `upstream` and `files` routes".into());
    }
    if spec.strip_prefix && spec.rewrite.is_some() {
        return Err("give `strip_prefix` or `rewrite`, not both".into());
    }
    if spec.strip_prefix && !matches!(path, Some(PathMatch::Prefix(_))) {
        return Err("`strip_prefix` needs a `prefix` path".into());
    }
    if let Some(rewrite) = &spec.rewrite {
        if !rewrite.starts_with('/') {
            return Err(format!("rewrite {rewrite:?} must start with /"));
        }
        let params: BTreeSet<&str> = match path {
            Some(PathMatch::Template(segments)) => segments
                .iter()
                .filter_map(|s| match s {
                    Segment::Param(p) => Some(p.as_str()),
                    Segment::Literal(_) => None,
                })
                .collect(),
            _ => BTreeSet::new(),
        };
        for used in placeholders(rewrite) {
            if !params.contains(used) {
                return Err(format!(
                    "rewrite {rewrite:?} uses {{{used}}}, which the path does not capture"
                ));
            }
        }
    }
    if let Some(upstream) = &spec.upstream {
        if !upstreams.contains_key(upstream) {
            return Err(format!("unknown upstream {upstream:?}"));
        }
        return Ok(Action::Proxy {
            upstream: upstream.clone(),
            strip_prefix: spec.strip_prefix,
            rewrite: spec.rewrite.clone(),
        });
    }
    if let Some(files) = &spec.files {
        if files.dir.as_os_str().is_empty() {
            return Err("files: `dir` is empty".into());
        }
        if let Some(index) = &files.index {
            if index.is_empty() || index.contains(['/', '\\']) || index == ".." {
                return Err(format!("files: index {index:?} is not a file name"));
            }
        }
        return Ok(Action::Files {
            files: crate::files::StaticFiles {
                dir: files.dir.clone(),
                index: files.index.clone(),
            },
            strip_prefix: spec.strip_prefix,
        });
    }
    if let Some(Redirect { to, status }) = &spec.redirect {
        if ![301, 302, 303, 307, 308].contains(status) {
            return Err(format!(
                "redirect status {status} is not 301, 302, 303, 307 or 308"
            ));
        }
        if to.is_empty() {
            return Err("redirect `to` is empty".into());
        }
        return Ok(Action::Redirect {
            to: to.clone(),
            status: StatusCode::from_u16(*status).map_err(|e| e.to_string())?,
        });
    }
    let Some(Respond {
        status,
        body,
        content_type,
    }) = &spec.respond
    else {
        return Err("no action".into());
    };
    let status = StatusCode::from_u16(*status)
        .ok()
        .filter(|s| !s.is_informational())
        .ok_or_else(|| format!("respond status {status} is not a final HTTP status"))?;
    let content_type = HeaderValue::from_str(
        content_type
            .as_deref()
            .unwrap_or("text/plain; charset=utf-8"),
    )
    .map_err(|_| "respond content_type is not a valid header value".to_string())?;
    Ok(Action::Respond {
        status,
        body: bytes::Bytes::from(body.clone()),
        content_type,
    })
}

/// The `{name}`s in a rewrite.
fn placeholders(text: &str) -> impl Iterator<Item = &str> {
    text.split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
}

/// Refuses a route that an earlier one shadows: same hosts, path, methods and conditions.
fn check_shadowing(table: &Table, routes: &[Route]) -> Result<(), TableError> {
    let spec_of = |name: &str| table.routes.iter().find(|r| r.name == name);
    let key = |r: &RouteSpec| {
        let mut hosts: Vec<String> = r.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        hosts.sort();
        let mut methods: Vec<String> = r.methods.iter().map(|m| m.to_ascii_uppercase()).collect();
        methods.sort();
        let sorted = |list: &[FieldMatch]| {
            let mut list = list.to_vec();
            list.sort_by(|a, b| a.name.cmp(&b.name));
            list
        };
        (
            hosts,
            r.path.clone(),
            methods,
            sorted(&r.headers),
            sorted(&r.query),
            sorted(&r.cookies),
        )
    };
    let mut seen: Vec<(_, &str)> = Vec::new();
    for route in routes {
        let Some(spec) = spec_of(&route.name) else {
            continue;
        };
        let k = key(spec);
        if let Some((_, earlier)) = seen.iter().find(|(other, _)| *other == k) {
            return Err(TableError(format!(
                "route {:?} can never match: route {earlier:?} has the same conditions and is tried first",
                route.name
            )));
        }
        seen.push((k, &route.name));
    }
    Ok(())
}

impl Route {
    /// The path template (`/users/{id}`) when the route matches paths by one: the request's
    /// `http.route` in its span.
    pub fn template(&self) -> Option<String> {
        let Some(PathMatch::Template(segments)) = &self.path else {
            return None;
        };
        let mut text = String::new();
        for segment in segments {
            text.push('/');
            match segment {
                Segment::Literal(literal) => text.push_str(literal),
                Segment::Param(name) => {
                    text.push('{');
                    text.push_str(name);
                    text.push('}');
                }
            }
        }
        Some(text)
    }

    fn matches(
        &self,
        request: &RequestView<'_>,
        cookies: &mut Option<Vec<(String, String)>>,
    ) -> Option<Params> {
        if !self.methods.is_empty() && !self.methods.contains(request.method) {
            return None;
        }
        if !self.hosts.is_empty() && !self.hosts.iter().any(|h| h.matches(request.host)) {
            return None;
        }
        let params = match &self.path {
            None => Vec::new(),
            Some(path) => match_path(path, request.path)?,
        };
        for field in &self.headers {
            let name = field.header.as_ref()?;
            let values = request.headers.get_all(name).iter();
            if !field.test_values(values.filter_map(|v| v.to_str().ok())) {
                return None;
            }
        }
        if !self.query.is_empty() {
            for field in &self.query {
                let values = form_pairs(request.query.unwrap_or(""))
                    .filter(|(k, _)| *k == field.name)
                    .map(|(_, v)| v);
                if !field.test_owned(values) {
                    return None;
                }
            }
        }
        if !self.cookies.is_empty() {
            let jar = cookies.get_or_insert_with(|| parse_cookies(request.headers));
            for field in &self.cookies {
                let values = jar
                    .iter()
                    .filter(|(k, _)| *k == field.name)
                    .map(|(_, v)| v.clone());
                if !field.test_owned(values) {
                    return None;
                }
            }
        }
        Some(params)
    }

    /// The path to forward for `path` (after prefix strip or rewrite).
    ///
    /// Borrowed exactly when the path is forwarded unchanged, so the request's own URI can be.
    pub fn upstream_path<'p>(&self, path: &'p str, params: &Params) -> Cow<'p, str> {
        Cow::Owned(match &self.action {
            Action::Proxy {
                strip_prefix: true, ..
            }
            | Action::Files {
                strip_prefix: true, ..
            } => {
                let Some(PathMatch::Prefix(prefix)) = &self.path else {
                    return Cow::Borrowed(path);
                };
                let rest = &path[prefix.trim_end_matches('/').len().min(path.len())..];
                if rest.starts_with('/') {
                    rest.to_string()
                } else {
                    format!("/{rest}")
                }
            }
            Action::Proxy {
                rewrite: Some(rewrite),
                ..
            } => {
                let mut out = rewrite.clone();
                for (name, value) in params {
                    out = out.replace(&format!("{{{name}}}"), value);
                }
                out
            }
            _ => return Cow::Borrowed(path),
        })
    }
}

impl Field {
    fn test_values<'v>(&self, mut values: impl Iterator<Item = &'v str>) -> bool {
        match &self.test {
            FieldTest::Present => values.next().is_some(),
            FieldTest::Absent => values.next().is_none(),
            FieldTest::Equals(want) => values.any(|v| v == want),
            FieldTest::Regex(re) => values.any(|v| re.is_match(v)),
        }
    }

    fn test_owned(&self, values: impl Iterator<Item = String>) -> bool {
        let values: Vec<String> = values.collect();
        self.test_values(values.iter().map(String::as_str))
    }
}

fn match_path(path: &PathMatch, request: &str) -> Option<Params> {
    match path {
        PathMatch::Exact(exact) => (request == exact).then(Vec::new),
        PathMatch::Prefix(prefix) => {
            let boundary = prefix.ends_with('/')
                || request.len() == prefix.len()
                || request.as_bytes().get(prefix.len()) == Some(&b'/');
            (request.starts_with(prefix.as_str()) && boundary).then(Vec::new)
        }
        PathMatch::Regex(re) => re.is_match(request).then(Vec::new),
        PathMatch::Template(segments) => {
            let parts = request.strip_prefix('/')?.split('/');
            let mut params = Vec::new();
            let mut count = 0;
            for (segment, part) in segments.iter().zip(parts.clone()) {
                count += 1;
                match segment {
                    Segment::Literal(lit) if lit == part => {}
                    Segment::Param(name) if !part.is_empty() => {
                        params.push((name.clone(), part.to_string()))
                    }
                    _ => return None,
                }
            }
            (count == segments.len() && parts.count() == segments.len()).then_some(params)
        }
    }
}

/// `k=v` pairs of a query string, percent-decoded.
fn form_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k), percent_decode(v))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match bytes.get(i + 1..i + 3) {
                Some(&[h, l]) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                    out.push(hex_value(h) << 4 | hex_value(l));
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

/// The request's cookies, `name=value` pairs from every `Cookie` header.
pub fn parse_cookies(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<Compiled, TableError> {
        Compiled::new(Table::parse(text).unwrap())
    }

    const UPSTREAM: &str = "[[upstreams]]\nname = \"u\"\naddresses = [\"127.0.0.1:1\"]\n";

    fn find<'a>(
        c: &'a Compiled,
        method: &str,
        host: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Option<&'a str> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        c.find(&RequestView {
            method: &method,
            host,
            path,
            query,
            headers: &map,
        })
        .map(|(_, r, _)| r.name.as_str())
    }

    /// Edits say which names they touch: request edits of a forwarding header keep the
    /// gateway's forwarding headers in the map; answer edits of a header the raw lines frame
    /// with or drop keep the answer in a map.
    #[test]
    fn header_edits_know_the_names_they_touch() {
        let edits = |set: &[&str], remove: &[&str]| {
            let ops = HeaderOps {
                set: set
                    .iter()
                    .map(|n| (n.to_string(), "v".to_string()))
                    .collect(),
                remove: remove.iter().map(|n| n.to_string()).collect(),
                ..HeaderOps::default()
            };
            HeaderEdits::new("r", "headers", &ops).unwrap()
        };
        let forwarding = [&HeaderName::from_static("x-forwarded-for")];
        assert!(!edits(&["x-route"], &[]).touches(&forwarding));
        assert!(edits(&["x-route"], &["X-Forwarded-For"]).touches(&forwarding));
        assert!(edits(&["X-FORWARDED-FOR"], &[]).touches(&forwarding));
        assert!(edits(&[], &[]).apply_to_raw());
        assert!(edits(&["x-gateway"], &["server"]).apply_to_raw());
        for special in ["date", "content-length", "connection", "x-request-id"] {
            assert!(!edits(&[special], &[]).apply_to_raw(), "{special}");
            assert!(!edits(&[], &[special]).apply_to_raw(), "{special}");
        }
    }

    proptest::proptest! {
        /// The host index finds what a scan of every route in order finds.
        #[test]
        fn the_host_index_agrees_with_a_full_scan(
            routes in proptest::collection::vec((0usize..4, 0usize..3, -2i32..3), 1..30),
            host in 0usize..4,
            path in 0usize..3,
        ) {
            let hosts = ["a.test", "b.test", "*.test", ""];
            let paths = ["/x", "/x/y", "/z"];
            let mut text = String::new();
            for (i, (h, p, priority)) in routes.iter().enumerate() {
                text += &format!("[[routes]]\nname = \"r{i}\"\nupstream = \"u\"\npriority = {priority}\npath = {{ prefix = \"{}\" }}\n", paths[*p]);
                if !hosts[*h].is_empty() {
                    text += &format!("hosts = [\"{}\"]\n", hosts[*h]);
                }
            }
            text += UPSTREAM;
            // Tables whose routes shadow each other are refused; those prove nothing here.
            if let Ok(c) = table(&text) {
                let request_host = ["a.test", "b.test", "c.test", "other.example"][host];
                let method = Method::GET;
                let map = HeaderMap::new();
                let view = RequestView { method: &method, host: request_host, path: paths[path], query: None, headers: &map };
                let scanned = c.routes.iter().position(|r| r.matches(&view, &mut None).is_some());
                proptest::prop_assert_eq!(c.find(&view).map(|(i, _, _)| i), scanned);
            }
        }
    }

    #[test]
    fn order_is_priority_then_host_then_path_then_conditions_then_table_order() {
        let c = table(&format!(
            r#"
            [[routes]]
            name = "any"
            upstream = "u"
            [[routes]]
            name = "prefix-short"
            path = {{ prefix = "/api" }}
            upstream = "u"
            [[routes]]
            name = "prefix-long"
            path = {{ prefix = "/api/v2" }}
            upstream = "u"
            [[routes]]
            name = "template"
            path = {{ template = "/api/users/{{id}}" }}
            upstream = "u"
            [[routes]]
            name = "exact"
            path = {{ exact = "/api/users/me" }}
            upstream = "u"
            [[routes]]
            name = "wildcard-host"
            hosts = ["*.example.com"]
            upstream = "u"
            [[routes]]
            name = "exact-host"
            hosts = ["api.example.com"]
            upstream = "u"
            [[routes]]
            name = "post-only"
            path = {{ prefix = "/api" }}
            methods = ["POST"]
            upstream = "u"
            [[routes]]
            name = "urgent"
            priority = 10
            headers = [{{ name = "x-urgent" }}]
            upstream = "u"
            {UPSTREAM}"#
        ))
        .unwrap();
        let get = |host, path| find(&c, "GET", host, path, &[]);
        assert_eq!(get("other", "/x"), Some("any"));
        assert_eq!(get("other", "/api/x"), Some("prefix-short"));
        assert_eq!(get("other", "/apix"), Some("any"));
        assert_eq!(get("other", "/api/v2/x"), Some("prefix-long"));
        assert_eq!(get("other", "/api/users/7"), Some("template"));
        let template = |name: &str| c.routes.iter().find(|r| r.name == name).unwrap().template();
        assert_eq!(template("template").as_deref(), Some("/api/users/{id}"));
        assert_eq!(template("exact"), None);
        assert_eq!(get("other", "/api/users/7/x"), Some("prefix-short"));
        assert_eq!(get("other", "/api/users/me"), Some("exact"));
        assert_eq!(
            get("www.example.com", "/api/users/me"),
            Some("wildcard-host")
        );
        assert_eq!(get("example.com", "/"), Some("any"));
        assert_eq!(get("api.example.com", "/"), Some("exact-host"));
        assert_eq!(find(&c, "POST", "other", "/api/x", &[]), Some("post-only"));
        assert_eq!(
            find(&c, "GET", "api.example.com", "/", &[("x-urgent", "1")]),
            Some("urgent")
        );
    }

    #[test]
    fn headers_query_and_cookies_match_by_value_regex_and_presence() {
        let c = table(&format!(
            r#"
            [[routes]]
            name = "v2-header"
            headers = [{{ name = "Accept-Version", value = "v2" }}]
            upstream = "u"
            [[routes]]
            name = "v2-query"
            query = [{{ name = "version", regex = "v2(\\.\\d+)?" }}]
            upstream = "u"
            [[routes]]
            name = "beta-cookie"
            cookies = [{{ name = "beta", value = "on" }}]
            upstream = "u"
            [[routes]]
            name = "no-auth"
            headers = [{{ name = "authorization", present = false }}]
            respond = {{ status = 401 }}
            [[routes]]
            name = "fallback"
            upstream = "u"
            {UPSTREAM}"#
        ))
        .unwrap();
        let auth = ("authorization", "x");
        assert_eq!(
            find(&c, "GET", "h", "/", &[("accept-version", "v2"), auth]),
            Some("v2-header")
        );
        assert_eq!(
            find(&c, "GET", "h", "/?a=1&version=v2.1", &[auth]),
            Some("v2-query")
        );
        assert_eq!(
            find(&c, "GET", "h", "/?version=v3", &[auth]),
            Some("fallback")
        );
        assert_eq!(
            find(&c, "GET", "h", "/", &[("cookie", "a=b; beta=on"), auth]),
            Some("beta-cookie")
        );
        assert_eq!(find(&c, "GET", "h", "/", &[]), Some("no-auth"));
    }

    #[test]
    fn rewrite_and_strip_prefix_build_the_upstream_path() {
        let c = table(&format!(
            r#"
            [[routes]]
            name = "strip"
            path = {{ prefix = "/api/" }}
            strip_prefix = true
            upstream = "u"
            [[routes]]
            name = "rewrite"
            path = {{ template = "/users/{{id}}/profile" }}
            rewrite = "/v2/profiles/{{id}}"
            upstream = "u"
            {UPSTREAM}"#
        ))
        .unwrap();
        let empty = HeaderMap::new();
        let view = |path| RequestView {
            method: &Method::GET,
            host: "h",
            path,
            query: None,
            headers: &empty,
        };
        let (_, route, params) = c.find(&view("/api/orders/1")).unwrap();
        assert_eq!(route.upstream_path("/api/orders/1", &params), "/orders/1");
        let (_, route, params) = c.find(&view("/api/")).unwrap();
        assert_eq!(route.upstream_path("/api/", &params), "/");
        let (_, route, params) = c.find(&view("/users/42/profile")).unwrap();
        assert_eq!(
            route.upstream_path("/users/42/profile", &params),
            "/v2/profiles/42"
        );
    }

    #[test]
    fn bad_tables_are_refused_with_what_is_wrong() {
        let cases = [
            ("[[routes]]\nname = \"a\"\nupstream = \"nope\"\n", "unknown upstream \"nope\""),
            (
                "[[routes]]\nname = \"a\"\npath = { regex = \"(\" }\nupstream = \"u\"\n",
                "bad regex",
            ),
            (
                "[[routes]]\nname = \"a\"\npath = { prefix = \"/x\" }\nupstream = \"u\"\n[[routes]]\nname = \"b\"\npath = { prefix = \"/x\" }\nupstream = \"u\"\n",
                "route \"b\" can never match",
            ),
            ("[[routes]]\nname = \"a\"\n", "exactly one action"),
            ("[[routes]]\nname = \"a\"\nhosts = [\"a b\"]\nupstream = \"u\"\n", "host \"a b\""),
            (
                "[[routes]]\nname = \"a\"\nredirect = { to = \"/x\", status = 200 }\n",
                "redirect status 200",
            ),
            (
                "[[routes]]\nname = \"a\"\npath = { template = \"/u/{id}\" }\nrewrite = \"/{uid}\"\nupstream = \"u\"\n",
                "uses {uid}",
            ),
            (
                "[[routes]]\nname = \"a\"\nupstream = \"u\"\n[[routes]]\nname = \"a\"\nmethods = [\"GET\"]\nupstream = \"u\"\n",
                "two routes are named \"a\"",
            ),
        ];
        for (text, want) in cases {
            let error = table(&format!("{text}{UPSTREAM}")).unwrap_err();
            assert!(error.0.contains(want), "{text}: {error}");
        }
        let error = table("[[upstreams]]\nname = \"u\"\n").unwrap_err();
        assert!(error.0.contains("has no members"), "{error}");
        let error = table("[[upstreams]]\nname = \"u\"\naddresses = [\"nohost\"]\n").unwrap_err();
        assert!(error.0.contains("not HOST:PORT"), "{error}");
    }

    fn canary(sticky: &str) -> Compiled {
        table(&format!(
            r#"
            [[routes]]
            name = "r"
            upstream = "u"
            canary = {{ upstream = "v2", weight = 10, force_header = "x-canary"{sticky} }}
            [[upstreams]]
            name = "v2"
            addresses = ["127.0.0.1:2"]
            {UPSTREAM}"#
        ))
        .unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn canary_takes_its_weight_and_the_forcing_header_wins() {
        let c = canary("");
        let rule = c.routes[0].canary.as_ref().unwrap();
        let share = (0..10_000)
            .filter(|_| rule.choose(&HeaderMap::new()).canary)
            .count();
        assert!((850..=1150).contains(&share), "{share} of 10000");
        for (value, want) in [
            ("canary", true),
            ("1", true),
            ("stable", false),
            ("false", false),
        ] {
            for _ in 0..50 {
                assert_eq!(rule.choose(&headers(&[("x-canary", value)])).canary, want);
            }
        }
    }

    #[test]
    fn canary_stickiness_by_header_hash_and_by_cookie() {
        let c = canary(", sticky = \"header:x-user\"");
        let rule = c.routes[0].canary.as_ref().unwrap();
        let mut canaries = 0;
        for user in 0..2000 {
            let h = headers(&[("x-user", &format!("user-{user}"))]);
            let first = rule.choose(&h).canary;
            assert!((0..5).all(|_| rule.choose(&h).canary == first));
            canaries += usize::from(first);
        }
        assert!((120..=280).contains(&canaries), "{canaries} of 2000");
        let c = canary(", sticky = \"cookie:side\"");
        let rule = c.routes[0].canary.as_ref().unwrap();
        let fresh = rule.choose(&HeaderMap::new());
        let cookie = fresh.set_cookie.unwrap();
        let side = if fresh.canary {
            "side=canary"
        } else {
            "side=stable"
        };
        assert!(cookie.to_str().unwrap().starts_with(side), "{cookie:?}");
        for _ in 0..50 {
            let again = rule.choose(&headers(&[("cookie", side)]));
            assert_eq!((again.canary, again.set_cookie), (fresh.canary, None));
        }
        let error = table(&format!(
            "[[routes]]\nname = \"r\"\nupstream = \"u\"\ncanary = {{ upstream = \"u\", weight = 150.0 }}\n{UPSTREAM}"
        ))
        .unwrap_err();
        assert!(error.0.contains("weight 150"), "{error}");
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
