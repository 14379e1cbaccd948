//! The route table as users write it (TOML or JSON), and its validation.
//!
//! A table is `routes` and `upstreams`, each named. [`Table::parse`] reads either format;
//! [`crate::route::Compiled::new`] checks everything that can be wrong (unknown upstream, bad
//! regex, a route that can never match, ...) and builds what the proxy matches against. A table
//! that fails is refused whole: the gateway keeps serving the one it has.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use strata_api::units::{ByteSize, HumanDuration};

/// The whole route table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    /// Routes, matched in the documented order (see [`crate::route`]).
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// Upstream groups the routes proxy to.
    #[serde(default)]
    pub upstreams: Vec<UpstreamSpec>,
    /// TCP (L4) listeners, each balancing raw connections over an upstream group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpSpec>,
    /// Certificates of the HTTPS listener, chosen by SNI name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateSpec>,
    /// Rules per host that apply before any route (client address lists).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostSpec>,
    /// Issuers of JSON Web Tokens that routes accept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_providers: Vec<JwtProviderSpec>,
    /// OpenID Connect issuers for single sign-on on browser routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oidc_providers: Vec<OidcProviderSpec>,
}

/// An OpenID Connect issuer that logs browsers in (authorization code with PKCE).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcProviderSpec {
    /// Unique name, referred to by routes.
    pub name: String,
    /// The issuer; its endpoints come from `ISSUER/.well-known/openid-configuration`.
    pub issuer: String,
    /// The client id registered at the issuer.
    pub client_id: String,
    /// The client secret, for confidential clients (PKCE is used either way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// Scopes asked for (default `openid`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Signs the session and login cookies (at least 32 bytes; the same on every node).
    pub cookie_secret: String,
    /// Where the issuer sends the browser back (default `/_strata/oidc/callback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_path: Option<String>,
    /// Where a browser logs out (default `/_strata/oidc/logout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logout_path: Option<String>,
    /// The session cookie's name (default `strata_session`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_name: Option<String>,
    /// How long a session lasts (default 8h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_ttl: Option<HumanDuration>,
}

/// An issuer of JSON Web Tokens and how to check its tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProviderSpec {
    /// Unique name, referred to by routes.
    pub name: String,
    /// `iss` must be this, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// `aud` must hold one of these, when given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// The issuer's keys (a JWKS document), fetched, cached, refreshed every `jwks_refresh`
    /// and when a token names a key id not seen yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// Or: one public key (PEM), for RS256 or ES256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_pem: Option<String>,
    /// Or: a shared secret, for HS256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Accepted algorithms (default: HS256 with a secret, RS256 and ES256 with keys).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub algorithms: Vec<String>,
    /// Allowed clock skew for `exp` and `nbf` (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leeway: Option<HumanDuration>,
    /// How often the JWKS document is fetched again (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_refresh: Option<HumanDuration>,
}

/// Who may use a route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAuthSpec {
    /// Credentials accepted, tried in this order: `api_key`, `basic` (user: a consumer,
    /// password: one of its API keys), `jwt`, `oidc` (a browser session; without one, a
    /// redirect to the issuer's login).
    pub methods: Vec<String>,
    /// The JWT provider (with `jwt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_provider: Option<String>,
    /// The OpenID Connect provider (with `oidc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc_provider: Option<String>,
    /// The header that carries an API key (default `x-api-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_header: Option<String>,
    /// Scopes the caller must all have (a key's scopes; a token's `scope` or `scp`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Roles of which the caller must have one (a token's `roles`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// The header that tells the upstream who called (default `x-consumer`): a key's
    /// consumer, a token's `sub`. A client's own header of that name is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_header: Option<String>,
    /// Token claims passed upstream: header name to claim name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims_to_headers: BTreeMap<String, String>,
}

/// Rules for every request to some hosts, checked before the routes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// Hosts: `api.example.com`, or `*.example.com` for any subdomain.
    pub hosts: Vec<String>,
    /// Only clients in these blocks may send requests to these hosts; empty: any. 403
    /// otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_ips: Vec<String>,
    /// Clients in these blocks get 403 from these hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_ips: Vec<String>,
}

/// A certificate of the HTTPS listener and the names it serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSpec {
    /// SNI names: `api.example.com`, or `*.example.com`. The table's first certificate also
    /// answers clients that send no name or one no entry covers.
    pub hosts: Vec<String>,
    /// PEM certificate chain (read on every gateway node; rotated files are re-read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM private key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<std::path::PathBuf>,
    /// Or: the PEM certificate chain itself, kept in the table (so in the config center).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_pem: Option<String>,
    /// Or: the PEM private key itself. Anyone who may read the table's config document may
    /// read it: give `config` read access on namespace `gateway` accordingly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
}

impl CertificateSpec {
    /// How the certificate is named in messages: its file, or its first host.
    pub fn label(&self) -> String {
        match &self.cert_file {
            Some(file) => file.display().to_string(),
            None => format!(
                "for {}",
                self.hosts.first().map_or("(no host)", String::as_str)
            ),
        }
    }
}

/// A TCP (L4) listener.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpSpec {
    /// Unique name.
    pub name: String,
    /// `HOST:PORT` to listen on (port 0: any free port, shown by `GET /v1/gateway/tcp`).
    pub listen: String,
    /// The upstream group whose members get the connections (`ring_hash` hashes the client's
    /// address).
    pub upstream: String,
    /// Connections start with a PROXY protocol header (v1 or v2) naming the client, as sent
    /// by a load balancer in front; connections without one are closed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy_protocol: bool,
}

/// One route: what it matches and what it does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Unique name (metrics label, `strata gateway routes show NAME`).
    pub name: String,
    /// Higher priorities are tried first; equal priorities by specificity (see the module docs
    /// of [`crate::route`]).
    #[serde(default)]
    pub priority: i32,
    /// Hosts: `api.example.com`, or `*.example.com` for any subdomain. Empty: any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// The path condition. Absent: any path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathSpec>,
    /// Methods (`GET`, `POST`, ...). Empty: any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Request headers that must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<FieldMatch>,
    /// Query parameters that must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<FieldMatch>,
    /// Cookies that must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cookies: Vec<FieldMatch>,
    /// Action: proxy to this upstream group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Action: answer with a redirect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Action: answer with a fixed response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond: Option<Respond>,
    /// Action: serve static files from a folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesSpec>,
    /// Proxy: remove the matched path prefix before forwarding (`/api/users` to `/users`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_prefix: bool,
    /// Proxy: replace the path; `{name}` is a parameter of a template path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
    /// Changes to the request before it is forwarded.
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub request_headers: HeaderOps,
    /// Changes to the response before it is returned.
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub response_headers: HeaderOps,
    /// Proxy: the whole exchange with the upstream, headers of the answer included (default
    /// 30s); 504 after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Proxy: longest wait for the next bytes of a streamed answer (after its headers) or
    /// upload; the exchange is cut after it (default: no limit beyond `timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<HumanDuration>,
    /// Largest request body (default 10MiB); 413 over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<ByteSize>,
    /// Retries of an idempotent request on another instance when the connection fails
    /// (default 1; 0 turns them off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Proxy: a canary release, sending a share of the requests to another upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// Cross-origin requests from browsers: preflights answered here, headers added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsSpec>,
    /// Only clients in these blocks (`10.0.0.0/8`, `2001:db8::/32`, an address) may use the
    /// route; empty: any. 403 otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_ips: Vec<String>,
    /// Clients in these blocks get 403.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_ips: Vec<String>,
    /// Rate limits, each checked in turn; over one: 429 with `Retry-After`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitSpec>,
    /// Requests of this route in flight at once (bulkhead); over it: 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Proxy: what to answer when the upstream's circuit breaker is open (default 503 with
    /// `Retry-After`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// Proxy: the wait before each retry, random up to a bound that doubles from 25ms to 1s
    /// (gRPC's retry backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff: Option<strata_resilience::budget::Backoff>,
    /// Proxy: what counts as a failure for the upstream's circuit breakers on this route
    /// (same words as the upstream's `failure_on`, which applies when this is empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure_on: Vec<String>,
    /// Proxy: retry non-idempotent requests too (POST, PATCH) when the member may have seen
    /// them (off by default: only idempotent methods are sent twice).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry_non_idempotent: bool,
    /// Who may use the route: API keys, JWT; 401 without valid credentials, 403 without the
    /// scopes or roles asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RouteAuthSpec>,
    /// Proxy: for idempotent requests without a body, send the same request to a second
    /// member when the first has not answered within this long, and take the first answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge_after: Option<HumanDuration>,
}

/// A rate limit of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Requests per `per`.
    pub requests: u32,
    /// The period (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<HumanDuration>,
    /// Requests at once over the steady pace (default `requests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// What is limited: unset, the whole route; `client_ip`; `consumer` (who the route's
    /// `auth` found); `header:NAME` (per value, e.g. a tenant header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Sentinel's warm-up: after this long idle, start at a third of the rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_up: Option<HumanDuration>,
    /// Queueing: wait up to this long for a turn instead of answering 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait: Option<HumanDuration>,
    /// The rate holds for the whole cluster: the gateway nodes share it by their traffic.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster: bool,
}

impl RateLimitSpec {
    /// The library's configuration.
    pub fn rate(&self) -> strata_resilience::limit::RateConfig {
        strata_resilience::limit::RateConfig {
            requests: self.requests,
            per: self
                .per
                .unwrap_or(HumanDuration(std::time::Duration::from_secs(1))),
            burst: self.burst,
            warm_up: self.warm_up,
            max_wait: self.max_wait,
        }
    }
}

/// The answer of a route whose upstream's breaker is open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    /// Send the request to this upstream group instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Or answer this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond: Option<Respond>,
}

/// A CORS policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSpec {
    /// Origins allowed (`https://app.example.com`), or `"*"` for any.
    pub allow_origins: Vec<String>,
    /// Methods a preflight allows (default GET, HEAD, POST).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight allows (default: those it asks for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// Response headers scripts may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// Whether cookies and credentials may be sent (not with origin `"*"`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight (default 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<HumanDuration>,
}

/// A canary release: `weight` percent of a route's requests go to `upstream` (typically a
/// group of the same service filtered by `meta = { version = "v2" }`) instead of the route's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// The canary's upstream group.
    pub upstream: String,
    /// Percent of requests (0 to 100, fractions allowed).
    pub weight: f64,
    /// A request header that forces the choice: `canary` (or `true`, `1`) sends to the canary,
    /// `stable` (or `false`, `0`) to the route's upstream; other values are ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_header: Option<String>,
    /// Keeps a client on one side: `cookie:NAME` (the gateway sets NAME to `canary` or
    /// `stable` on the first answer; a client sending it chooses, as with `force_header`), or
    /// `header:NAME` (the side follows a hash of that header's value, e.g. a user id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<String>,
}

/// A path condition: exactly one of the four kinds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum PathSpec {
    /// The path is exactly this.
    Exact(String),
    /// The path starts with this, at a segment boundary (`/api` matches `/api` and `/api/x`,
    /// not `/apix`); a prefix ending in `/` matches anything under it.
    Prefix(String),
    /// The whole path matches this regular expression.
    Regex(String),
    /// Segments, where `{name}` matches one non-empty segment (`/users/{id}/orders`).
    Template(String),
}

/// A condition on a header, query parameter or cookie: its value equals `value`, matches
/// `regex`, or (neither given) it is present. `present = false` asks for its absence.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMatch {
    /// Header, parameter or cookie name (header names are case-insensitive).
    pub name: String,
    /// The exact value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// A regular expression the whole value must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `false`: the field must be absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// Header changes: `set` replaces, `add` appends, `remove` deletes (applied in that order:
/// remove, set, add).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Headers to append.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Headers to replace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Headers to delete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderOps {
    /// True when it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }
}

/// A redirect answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// The `Location`: an absolute URL or a path. `{path}` is the request's path, `{query}` its
    /// query string (with the `?`, or empty).
    pub to: String,
    /// 301, 302 (default), 303, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status: u16,
}

fn default_redirect_status() -> u16 {
    302
}

/// Static files from a folder on each gateway node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSpec {
    /// The folder.
    pub dir: std::path::PathBuf,
    /// File served for a directory (e.g. `index.html`); unset, a directory answers 404.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
}

/// A fixed answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Respond {
    /// Status (default 200).
    #[serde(default = "default_respond_status")]
    pub status: u16,
    /// Body.
    #[serde(default)]
    pub body: String,
    /// `Content-Type` (default `text/plain; charset=utf-8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

fn default_respond_status() -> u16 {
    200
}

/// An upstream group: where proxied requests go.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// Unique name, referred to by routes.
    pub name: String,
    /// Static members, `HOST:PORT` (weight 1 each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Static members with weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointSpec>,
    /// Or: the healthy instances of this registry service, followed as they change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The service's namespace (default `public`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Only instances with every one of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Only instances whose metadata has these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// How a member is chosen (default `round_robin`).
    #[serde(default)]
    pub balance: Balance,
    /// For `ring_hash` and `maglev`: what is hashed, `header:NAME`, `cookie:NAME` or
    /// `client_ip` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<String>,
    /// How to talk to members: `http1` (default) or `h2c` (HTTP/2 without TLS, for gRPC).
    #[serde(default)]
    pub protocol: Protocol,
    /// Longest wait for a connection to a member (default 1s); the next member is tried after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<HumanDuration>,
    /// A member that joins the group gets a share growing linearly from 10% to its full
    /// weight over this long (`round_robin`, `weighted`, `random`, `least_request`); unset: at
    /// once. Members present when the group is built start warm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<HumanDuration>,
    /// Active health checks of static members (registry groups follow the registry's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    /// A circuit breaker (Resilience4j's fields and defaults), for the whole group or for each
    /// member (`breaker_scope`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<strata_resilience::breaker::BreakerConfig>,
    /// `group` (default: one breaker; open, the route's fallback answers) or `instance` (one
    /// per member; an open member is skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker_scope: Option<BreakerScope>,
    /// What counts as a failure for the breaker: `5xx` (default with `timeout`, `connect`
    /// and `reset`), `4xx`, a status such as `429`, `timeout`, `connect`, `reset`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure_on: Vec<String>,
    /// Passive outlier detection (Envoy's fields and defaults): ejected members are skipped by
    /// every balancing policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<strata_resilience::outlier::OutlierConfig>,
    /// The retry budget (on by default: 20% of requests plus 10 a second, over 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<strata_resilience::budget::BudgetConfig>,
    /// Requests to this group in flight at once (bulkhead); over it: 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Idle pooled connections kept per member (default 1,024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_per_member: Option<usize>,
}

/// Where a circuit breaker sits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerScope {
    /// One breaker for the group.
    #[default]
    Group,
    /// One breaker per member.
    Instance,
}

/// Active health checks: each static member is probed on an interval; one that fails
/// `unhealthy` probes in a row gets no requests until it passes `healthy` in a row. When no
/// member is healthy, every member gets requests again (as Envoy's panic mode).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    /// `GET` this path and expect 2xx or 3xx; unset: a TCP connect is the probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Between probes of a member (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<HumanDuration>,
    /// A probe slower than this fails (default 2s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Passed probes in a row that bring a member back (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<u32>,
    /// Failed probes in a row that take a member out (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy: Option<u32>,
}

/// A static member with a weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// `HOST:PORT`.
    pub address: String,
    /// Relative share of the requests (default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

pub use strata_resilience::balance::Balance;

/// Upstream protocols.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (gRPC backends).
    H2c,
}

/// Why a table was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableError(pub String);

impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TableError {}

impl Table {
    /// Reads a table from TOML or JSON text (JSON when it starts with `{`).
    pub fn parse(text: &str) -> Result<Table, TableError> {
        if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| TableError(format!("route table (JSON): {e}")))
        } else {
            toml::from_str(text).map_err(|e| {
                TableError(format!(
                    "route table (TOML): {}",
                    e.to_string().trim().replace('\n', " ")
                ))
            })
        }
    }

    /// Adds or replaces (by name) the routes and upstreams of `other`.
    pub fn merge(&mut self, other: Table) {
        for route in other.routes {
            match self.routes.iter_mut().find(|r| r.name == route.name) {
                Some(existing) => *existing = route,
                None => self.routes.push(route),
            }
        }
        if !other.certificates.is_empty() {
            self.certificates = other.certificates;
        }
        if !other.hosts.is_empty() {
            self.hosts = other.hosts;
        }
        for provider in other.oidc_providers {
            match self
                .oidc_providers
                .iter_mut()
                .find(|p| p.name == provider.name)
            {
                Some(existing) => *existing = provider,
                None => self.oidc_providers.push(provider),
            }
        }
        for provider in other.jwt_providers {
            match self
                .jwt_providers
                .iter_mut()
                .find(|p| p.name == provider.name)
            {
                Some(existing) => *existing = provider,
                None => self.jwt_providers.push(provider),
            }
        }
        for tcp in other.tcp {
            match self.tcp.iter_mut().find(|t| t.name == tcp.name) {
                Some(existing) => *existing = tcp,
                None => self.tcp.push(tcp),
            }
        }
        for upstream in other.upstreams {
            match self.upstreams.iter_mut().find(|u| u.name == upstream.name) {
                Some(existing) => *existing = upstream,
                None => self.upstreams.push(upstream),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_read_the_same_table() {
        let toml = r#"
            [[routes]]
            name = "api"
            hosts = ["api.example.com"]
            path = { prefix = "/v1" }
            upstream = "backend"
            [[upstreams]]
            name = "backend"
            addresses = ["127.0.0.1:8080"]
        "#;
        let json = r#"{"routes":[{"name":"api","hosts":["api.example.com"],
            "path":{"prefix":"/v1"},"upstream":"backend"}],
            "upstreams":[{"name":"backend","addresses":["127.0.0.1:8080"]}]}"#;
        assert_eq!(Table::parse(toml).unwrap(), Table::parse(json).unwrap());
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let error = Table::parse("[[routes]]\nname = \"a\"\nupstrem = \"x\"\n").unwrap_err();
        assert!(error.0.contains("upstrem"), "{error}");
    }

    #[test]
    fn merge_replaces_by_name_and_appends_new_ones() {
        let mut table = Table::parse(
            "[[routes]]\nname = \"a\"\nupstream = \"u\"\n[[routes]]\nname = \"b\"\nupstream = \"u\"\n",
        )
        .unwrap();
        table.merge(
            Table::parse("[[routes]]\nname = \"b\"\nupstream = \"v\"\n[[routes]]\nname = \"c\"\nupstream = \"u\"\n")
                .unwrap(),
        );
        let names: Vec<_> = table.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(table.routes[1].upstream.as_deref(), Some("v"));
    }
}
