//! Authentication and authorisation at the edge: API keys and JSON Web Tokens on routes.
//!
//! **API keys** are made by `strata gateway keys create`: the caller sees the key once
//! (`sgk_` + 16 hex digits of id + `_` + 64 of secret); the cluster keeps its SHA-256 digest
//! under `/strata/gateway/keys/ID`, with the consumer's name and scopes. Every gateway node
//! reads that prefix from its local copy four times a second, so a new or revoked key takes
//! effect everywhere within a second.
//!
//! **JWT** providers are in the route table: a shared secret (HS256), one public key (RS256,
//! ES256), or a JWKS URL fetched in the background, refreshed every `jwks_refresh` and as soon
//! as a token names a key id not seen yet (at most once a second), so an issuer's key rotation
//! needs nothing from the operator. Tokens must carry `exp`; `iss` and `aud` are checked when
//! the provider names them.
//!
//! A route's `auth` tries its methods in order. No credentials, or bad ones: 401 with a
//! `WWW-Authenticate` challenge per method. Valid ones without the route's scopes or roles: 403.
//! The upstream learns who called from the consumer header (a client's own is removed) and
//! the claims the route maps to headers.

use crate::model::{JwtProviderSpec, RouteAuthSpec};
use axum::body::Body;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use strata_store::KvApi;
use tokio_util::sync::CancellationToken;

/// Where API keys live in the KV store.
pub const KEYS_PREFIX: &str = "/strata/gateway/keys/";
/// What every API key starts with.
pub const KEY_PREFIX: &str = "sgk_";
/// Least time between two JWKS fetches asked for by unknown key ids.
const JWKS_MIN_GAP: Duration = Duration::from_secs(1);
const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);
const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// An API key as the cluster keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The key's id (16 hex digits, also in the key itself).
    pub id: String,
    /// Who uses it: passed upstream, and a rate-limit key.
    pub consumer: String,
    /// What it may do.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// When it was made (ms since the epoch).
    pub created_ms: u64,
    /// SHA-256 of the whole key, in hex.
    pub digest: String,
}

/// A new key: the text to show once, and the record to store.
pub fn new_key(consumer: &str, scopes: Vec<String>) -> (String, KeyRecord) {
    let (token, _) = strata_auth::secret::new_token();
    // The token is `strata_` and 64 hex digits; an API key takes 16 for its id and 64 more.
    let secret = token.trim_start_matches(strata_auth::secret::TOKEN_PREFIX);
    let (id, _) = strata_auth::secret::new_token();
    let id = id.trim_start_matches(strata_auth::secret::TOKEN_PREFIX)[..16].to_string();
    let text = format!("{KEY_PREFIX}{id}_{secret}");
    let record = KeyRecord {
        id,
        consumer: consumer.to_string(),
        scopes,
        created_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        digest: strata_auth::secret::token_digest(&text),
    };
    (text, record)
}

/// The id of a key of the right shape.
fn key_id(text: &str) -> Option<&str> {
    let rest = text.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 16) && hex(secret, 64)).then_some(id)
}

/// The API keys this node knows, kept up to date from the KV store by a watch (so a revoked
/// key stops working as soon as this node applies the revoke, and no key is read twice).
#[derive(Debug, Default)]
pub struct ApiKeys {
    keys: RwLock<Keys>,
}

#[derive(Debug, Default)]
struct Keys {
    by_id: HashMap<String, KeyRecord>,
    /// The id stored under each KV key, to forget it when the key is deleted.
    id_of: HashMap<Vec<u8>, String>,
}

impl Keys {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.delete(key);
        match serde_json::from_slice::<KeyRecord>(value) {
            Ok(record) => {
                self.id_of.insert(key.to_vec(), record.id.clone());
                self.by_id.insert(record.id.clone(), record);
            }
            Err(error) => tracing::warn!(
                key = %String::from_utf8_lossy(key),
                %error,
                "skipping an undecodable API key record"
            ),
        }
    }

    fn delete(&mut self, key: &[u8]) {
        if let Some(id) = self.id_of.remove(key) {
            self.by_id.remove(&id);
        }
    }
}

impl ApiKeys {
    /// The record of `presented`, when it is a valid key.
    pub fn verify(&self, presented: &str) -> Option<KeyRecord> {
        let id = key_id(presented)?;
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let record = keys.by_id.get(id)?;
        strata_auth::secret::token_matches(presented, &record.digest).then(|| record.clone())
    }

    /// Follows the keys in the KV store until `cancel`.
    pub async fn follow(self: Arc<Self>, kv: Arc<dyn KvApi>, cancel: CancellationToken) {
        strata_store::follow(kv, KEYS_PREFIX, self, cancel).await;
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Keys> {
        self.keys.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl strata_store::Follower for ApiKeys {
    fn load(&self, kvs: &[strata_proto::kv::KeyValue], _revision: i64) {
        let mut keys = Keys::default();
        for kv in kvs {
            keys.put(&kv.key, &kv.value);
        }
        tracing::debug!(keys = keys.by_id.len(), "API keys loaded");
        *self.write() = keys;
    }

    fn apply(&self, events: &[strata_proto::kv::Event]) {
        let mut keys = self.write();
        for event in events {
            match event.kind {
                strata_proto::kv::EventType::Put => keys.put(&event.kv.key, &event.kv.value),
                strata_proto::kv::EventType::Delete => keys.delete(&event.kv.key),
            }
        }
    }
}

/// A JWT provider at run time: its keys, and for a JWKS URL the task that fetches them.
pub struct JwtProvider {
    /// As configured.
    pub spec: JwtProviderSpec,
    algorithms: Vec<Algorithm>,
    fixed: Option<DecodingKey>,
    jwks: RwLock<HashMap<String, DecodingKey>>,
    /// Tokens already verified, with their claims.
    verified: Verified,
    refresh: tokio::sync::Notify,
    /// Counts finished JWKS fetches, for callers waiting for the next one.
    fetches: tokio::sync::watch::Sender<u64>,
    last_asked: Mutex<Option<Instant>>,
    /// Why the keys may be stale, when they may.
    pub problem: Mutex<Option<String>>,
    retired: CancellationToken,
}

impl std::fmt::Debug for JwtProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtProvider")
            .field("name", &self.spec.name)
            .field(
                "keys",
                &self.jwks.read().unwrap_or_else(|e| e.into_inner()).len(),
            )
            .finish_non_exhaustive()
    }
}

/// Most tokens whose verification is remembered.
const VERIFIED_MAX: usize = 10_000;
/// Longest a verification is remembered.
const VERIFIED_TTL_SECS: u64 = 300;

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Verified tokens and their claims, until the time stored with each (the token's `exp`, at
/// most [`VERIFIED_TTL_SECS`] ahead).
#[derive(Debug, Default)]
struct Verified {
    entries: Mutex<HashMap<String, (serde_json::Value, u64)>>,
}

impl Verified {
    fn get(&self, token: &str, now: u64) -> Option<serde_json::Value> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(token)
            .filter(|(_, until)| now < *until)
            .map(|(claims, _)| claims.clone())
    }

    fn put(&self, token: &str, claims: serde_json::Value, until: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= VERIFIED_MAX {
            let now = now_secs();
            entries.retain(|_, (_, until)| now < *until);
            if entries.len() >= VERIFIED_MAX {
                entries.clear();
            }
        }
        entries.insert(token.to_string(), (claims, until));
    }

    fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Parses algorithm names.
fn algorithms(spec: &JwtProviderSpec) -> Result<Vec<Algorithm>, String> {
    let names: Vec<String> = if spec.algorithms.is_empty() {
        if spec.secret.is_some() {
            vec!["HS256".into()]
        } else {
            vec!["RS256".into(), "ES256".into()]
        }
    } else {
        spec.algorithms.clone()
    };
    names
        .iter()
        .map(|name| match name.as_str() {
            "HS256" => Ok(Algorithm::HS256),
            "RS256" => Ok(Algorithm::RS256),
            "ES256" => Ok(Algorithm::ES256),
            other => Err(format!(
                "algorithm {other:?} is not one of HS256, RS256, ES256"
            )),
        })
        .collect()
}

/// Checks a provider's spec (at table validation).
pub fn check_provider(spec: &JwtProviderSpec) -> Result<(), String> {
    let fail = |m: String| Err(format!("jwt provider {:?}: {m}", spec.name));
    if spec.name.is_empty() {
        return Err("a jwt provider has an empty name".into());
    }
    let sources = [
        spec.jwks_url.is_some(),
        spec.public_key_pem.is_some(),
        spec.secret.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if sources != 1 {
        return fail("give exactly one of jwks_url, public_key_pem and secret".into());
    }
    if let Err(e) = algorithms(spec) {
        return fail(e);
    }
    if let Some(url) = &spec.jwks_url {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return fail(format!("jwks_url {url:?} is not an http(s) URL"));
        }
    }
    if spec.secret.as_ref().is_some_and(|s| s.len() < 16) {
        return fail("a secret must have at least 16 bytes".into());
    }
    fixed_key(spec).map(|_| ()).or_else(fail)
}

fn fixed_key(spec: &JwtProviderSpec) -> Result<Option<DecodingKey>, String> {
    if let Some(secret) = &spec.secret {
        return Ok(Some(DecodingKey::from_secret(secret.as_bytes())));
    }
    let Some(pem) = &spec.public_key_pem else {
        return Ok(None);
    };
    DecodingKey::from_rsa_pem(pem.as_bytes())
        .or_else(|_| DecodingKey::from_ec_pem(pem.as_bytes()))
        .map(Some)
        .map_err(|e| format!("public_key_pem: not an RSA or EC public key: {e}"))
}

impl JwtProvider {
    /// Starts a provider (and its JWKS fetcher, when it has a URL).
    pub fn start(
        spec: JwtProviderSpec,
        tracker: &tokio_util::task::TaskTracker,
        cancel: &CancellationToken,
    ) -> Result<Arc<JwtProvider>, String> {
        check_provider(&spec)?;
        let provider = Arc::new(JwtProvider {
            algorithms: algorithms(&spec)?,
            fixed: fixed_key(&spec)?,
            jwks: RwLock::new(HashMap::new()),
            verified: Verified::default(),
            refresh: tokio::sync::Notify::new(),
            fetches: tokio::sync::watch::channel(0).0,
            last_asked: Mutex::new(None),
            problem: Mutex::new(None),
            retired: cancel.child_token(),
            spec,
        });
        if provider.spec.jwks_url.is_some() {
            tracker.spawn(provider.clone().fetch_keys());
        }
        Ok(provider)
    }

    /// Stops its fetcher.
    pub fn retire(&self) {
        self.retired.cancel();
    }

    async fn fetch_keys(self: Arc<Self>) {
        let Some(url) = self.spec.jwks_url.clone() else {
            return;
        };
        let every = self.spec.jwks_refresh.map_or(DEFAULT_JWKS_REFRESH, |d| d.0);
        let client = match strata_tls::http_client_builder()
            .timeout(Duration::from_secs(10))
            .build()
        {
            Ok(client) => client,
            Err(error) => {
                *self.problem.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(format!("cannot make an HTTP client: {error}"));
                return;
            }
        };
        loop {
            match fetch_jwks(&client, &url).await {
                Ok(keys) => {
                    tracing::debug!(provider = %self.spec.name, keys = keys.len(), "JWKS fetched");
                    *self.jwks.write().unwrap_or_else(|e| e.into_inner()) = keys;
                    self.verified.clear();
                    *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
                Err(error) => {
                    tracing::warn!(provider = %self.spec.name, %url, %error, "cannot fetch the JWKS; keeping the keys it had");
                    *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
                }
            }
            self.fetches.send_modify(|n| *n += 1);
            tokio::select! {
                () = self.retired.cancelled() => return,
                () = tokio::time::sleep(every) => {}
                () = self.refresh.notified() => {}
            }
        }
    }

    /// Asks the fetcher for the keys again (a token named a key id not seen yet), at most
    /// once per [`JWKS_MIN_GAP`].
    fn ask_refresh(&self) {
        if self.spec.jwks_url.is_none() {
            return;
        }
        let mut last = self.last_asked.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|at| at.elapsed() >= JWKS_MIN_GAP) {
            *last = Some(Instant::now());
            self.refresh.notify_one();
        }
    }

    /// The claims of `token`, when it is valid.
    pub fn verify(&self, token: &str) -> Result<serde_json::Value, String> {
        // A client sends the same token with every request: its signature is checked once
        // (an ES256 check costs tens of microseconds), then the cached claims serve until the
        // token expires, the cache entry ages out, or the keys change.
        let now = now_secs();
        if let Some(claims) = self.verified.get(token, now) {
            return Ok(claims);
        }
        let claims = self.verify_uncached(token)?;
        let exp = claims.get("exp").and_then(|e| e.as_u64()).unwrap_or(0);
        self.verified
            .put(token, claims.clone(), exp.min(now + VERIFIED_TTL_SECS));
        Ok(claims)
    }

    /// As [`JwtProvider::verify`], but a token naming a key id not held yet waits (up to
    /// `patience`) for the fetch that asks for, then is checked once more.
    pub async fn verify_waiting(
        &self,
        token: &str,
        patience: Duration,
    ) -> Result<serde_json::Value, String> {
        let mut fetches = self.fetches.subscribe();
        let seen = *fetches.borrow_and_update();
        match self.verify(token) {
            Err(why) if why.starts_with("unknown key id") && self.spec.jwks_url.is_some() => {
                let _ = tokio::time::timeout(patience, fetches.wait_for(|n| *n > seen)).await;
                self.verify(token)
            }
            other => other,
        }
    }

    fn verify_uncached(&self, token: &str) -> Result<serde_json::Value, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| "malformed token".to_string())?;
        if !self.algorithms.contains(&header.alg) {
            return Err(format!("algorithm {:?} is not accepted", header.alg));
        }
        let key = match &self.fixed {
            Some(key) => key.clone(),
            None => {
                let kid = header.kid.clone().unwrap_or_default();
                let found = self
                    .jwks
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&kid)
                    .cloned();
                match found {
                    Some(key) => key,
                    None => {
                        self.ask_refresh();
                        return Err(format!("unknown key id {kid:?}"));
                    }
                }
            }
        };
        // The token's algorithm was checked against the accepted ones above; the library wants
        // only algorithms of the key's family here.
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.spec.leeway.map_or(DEFAULT_LEEWAY, |d| d.0).as_secs();
        validation.set_required_spec_claims(&["exp"]);
        if let Some(issuer) = &self.spec.issuer {
            validation.set_issuer(&[issuer]);
        }
        if self.spec.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.spec.audiences);
        }
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired".to_string(),
                jsonwebtoken::errors::ErrorKind::InvalidAudience => "wrong audience".to_string(),
                jsonwebtoken::errors::ErrorKind::InvalidIssuer => "wrong issuer".to_string(),
                jsonwebtoken::errors::ErrorKind::InvalidSignature => "bad signature".to_string(),
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                    "token not valid yet".to_string()
                }
                other => format!("invalid token ({other:?})"),
            })
    }
}

async fn fetch_jwks(
    client: &reqwest::Client,
    url: &str,
) -> Result<HashMap<String, DecodingKey>, String> {
    let response = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    let set: jsonwebtoken::jwk::JwkSet = response
        .json()
        .await
        .map_err(|e| format!("{url}: not a JWKS document: {e}"))?;
    Ok(set
        .keys
        .iter()
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            DecodingKey::from_jwk(jwk).ok().map(|key| (kid, key))
        })
        .collect())
}

/// The caller, once authenticated.
#[derive(Debug, Clone)]
pub struct Identity {
    /// A key's consumer, a token's `sub`.
    pub consumer: String,
    scopes: Vec<String>,
    roles: Vec<String>,
    claims: Option<serde_json::Value>,
}

impl Identity {
    /// The caller an API key names.
    fn of_key(record: KeyRecord) -> Identity {
        Identity {
            consumer: record.consumer,
            scopes: record.scopes,
            roles: Vec::new(),
            claims: None,
        }
    }
}

/// A route's compiled `auth`.
#[derive(Debug)]
pub struct RouteAuth {
    api_key: bool,
    basic: bool,
    jwt: Option<String>,
    oidc: Option<String>,
    key_header: HeaderName,
    scopes: Vec<String>,
    roles: Vec<String>,
    consumer_header: HeaderName,
    claims: Vec<(HeaderName, String)>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No valid credentials (401).
    Unauthenticated,
    /// Valid credentials without the scopes or roles asked for (403).
    Forbidden,
}

impl RouteAuth {
    /// Compiles a route's `auth` (`providers` and `oidc_providers`: the table's provider
    /// names).
    pub fn new(
        spec: &RouteAuthSpec,
        providers: &[String],
        oidc_providers: &[String],
    ) -> Result<RouteAuth, String> {
        let mut api_key = false;
        let mut basic = false;
        let mut jwt = None;
        let mut oidc = None;
        for method in &spec.methods {
            match method.as_str() {
                "api_key" => api_key = true,
                "basic" => basic = true,
                "oidc" => {
                    let provider = spec
                        .oidc_provider
                        .clone()
                        .ok_or("auth: `oidc` needs an `oidc_provider`")?;
                    if !oidc_providers.contains(&provider) {
                        return Err(format!("auth: unknown oidc_provider {provider:?}"));
                    }
                    oidc = Some(provider);
                }
                "jwt" => {
                    let provider = spec
                        .jwt_provider
                        .clone()
                        .ok_or("auth: `jwt` needs a `jwt_provider`")?;
                    if !providers.contains(&provider) {
                        return Err(format!("auth: unknown jwt_provider {provider:?}"));
                    }
                    jwt = Some(provider);
                }
                other => {
                    return Err(format!(
                        "auth: method {other:?} is not api_key, basic, jwt or oidc"
                    ))
                }
            }
        }
        if !api_key && !basic && jwt.is_none() && oidc.is_none() {
            return Err("auth: give `methods` (api_key, basic, jwt, oidc)".into());
        }
        let header = |name: &str| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("auth: {name:?} is not a header name"))
        };
        Ok(RouteAuth {
            api_key,
            basic,
            jwt,
            oidc,
            key_header: header(spec.api_key_header.as_deref().unwrap_or("x-api-key"))?,
            scopes: spec.scopes.clone(),
            roles: spec.roles.clone(),
            consumer_header: header(spec.consumer_header.as_deref().unwrap_or("x-consumer"))?,
            claims: spec
                .claims_to_headers
                .iter()
                .map(|(h, claim)| Ok((header(h)?, claim.clone())))
                .collect::<Result<_, String>>()?,
        })
    }

    /// Authenticates the request and checks scopes and roles; the error is the answer.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        context: &AuthContext<'_>,
    ) -> Result<Identity, (Refused, String, Response<Body>)> {
        let (providers, keys) = (context.jwt, context.keys);
        let bearer = headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let mut why = "no credentials".to_string();
        let mut identity = None;
        if self.api_key {
            let presented = headers
                .get(&self.key_header)
                .and_then(|v| v.to_str().ok())
                .or(bearer.filter(|b| b.starts_with(KEY_PREFIX)));
            if let Some(presented) = presented {
                match keys.verify(presented) {
                    Some(record) => identity = Some(Identity::of_key(record)),
                    None => why = "unknown or revoked API key".into(),
                }
            }
        }
        if identity.is_none() && self.basic {
            if let Some((user, password)) = basic_credentials(headers) {
                match keys.verify(&password).filter(|r| r.consumer == user) {
                    Some(record) => identity = Some(Identity::of_key(record)),
                    None => why = "wrong user or password".into(),
                }
            }
        }
        if identity.is_none() {
            if let (Some(name), Some(token)) =
                (&self.jwt, bearer.filter(|b| !b.starts_with(KEY_PREFIX)))
            {
                match providers.get(name).map(|p| p.verify(token)) {
                    Some(Ok(claims)) => identity = Some(identity_of(claims)),
                    Some(Err(reason)) => why = reason,
                    None => why = "the token's provider is not loaded".into(),
                }
            }
        }
        let oidc = self.oidc.as_ref().and_then(|name| context.oidc.get(name));
        if identity.is_none() {
            if let Some(session) = oidc.and_then(|p| p.session(headers)) {
                identity = Some(Identity {
                    consumer: session.sub,
                    scopes: session.scope.split_whitespace().map(String::from).collect(),
                    roles: session.roles,
                    claims: None,
                });
            }
        }
        let Some(identity) = identity else {
            // A browser route without a session: off to the issuer's login page.
            if let Some(provider) = oidc.filter(|_| why == "no credentials") {
                let response = provider.login_redirect(context.origin, context.return_to);
                return Err((Refused::Unauthenticated, "no session".into(), response));
            }
            return Err((Refused::Unauthenticated, why.clone(), self.challenge(&why)));
        };
        let has_scopes = self.scopes.iter().all(|s| identity.scopes.contains(s));
        let has_role =
            self.roles.is_empty() || self.roles.iter().any(|r| identity.roles.contains(r));
        if !(has_scopes && has_role) {
            let why = "the credentials lack the scopes or roles this route requires";
            let mut response = crate::proxy::plain(StatusCode::FORBIDDEN, &format!("{why}\n"));
            if self.jwt.is_some() {
                response.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"strata\", error=\"insufficient_scope\"",
                    ),
                );
            }
            return Err((Refused::Forbidden, why.to_string(), response));
        }
        Ok(identity)
    }

    fn challenge(&self, why: &str) -> Response<Body> {
        let mut response = crate::proxy::plain(
            StatusCode::UNAUTHORIZED,
            &format!("authentication required: {why}\n"),
        );
        let h = response.headers_mut();
        if self.jwt.is_some() {
            let error = if why == "no credentials" {
                "Bearer realm=\"strata\"".to_string()
            } else {
                format!(
                    "Bearer realm=\"strata\", error=\"invalid_token\", error_description=\"{}\"",
                    why.replace('"', "'")
                )
            };
            if let Ok(value) = HeaderValue::from_str(&error) {
                h.append(hyper::header::WWW_AUTHENTICATE, value);
            }
        }
        if self.api_key {
            h.append(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("ApiKey realm=\"strata\""),
            );
        }
        if self.basic {
            h.append(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"strata\", charset=\"UTF-8\""),
            );
        }
        response
    }

    /// Tells the upstream who called: the consumer header and the mapped claims (the client's
    /// own headers of those names are replaced).
    pub fn inject(&self, headers: &mut HeaderMap, identity: &Identity) {
        headers.remove(&self.consumer_header);
        if let Ok(value) = HeaderValue::from_str(&identity.consumer) {
            headers.insert(self.consumer_header.clone(), value);
        }
        for (header, claim) in &self.claims {
            headers.remove(header);
            let value = identity
                .claims
                .as_ref()
                .and_then(|c| c.get(claim))
                .map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
            if let Some(value) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
                headers.insert(header.clone(), value);
            }
        }
    }
}

/// What authentication needs besides the request's headers.
pub struct AuthContext<'a> {
    /// The table's JWT providers.
    pub jwt: &'a BTreeMap<String, Arc<JwtProvider>>,
    /// The table's OIDC providers.
    pub oidc: &'a BTreeMap<String, Arc<crate::oidc::OidcProvider>>,
    /// The API keys.
    pub keys: &'a ApiKeys,
    /// `http(s)://host[:port]` as the client sees the gateway (for redirects).
    pub origin: &'a str,
    /// The path and query the client asked for (to return to after a login).
    pub return_to: &'a str,
}

/// User and password of `Authorization: Basic`.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine;
    let value = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Consumer, scopes and roles from a token's claims.
fn identity_of(claims: serde_json::Value) -> Identity {
    let strings = |v: Option<&serde_json::Value>| -> Vec<String> {
        match v {
            Some(serde_json::Value::String(s)) => s.split_whitespace().map(String::from).collect(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|i| i.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        }
    };
    Identity {
        consumer: claims
            .get("sub")
            .and_then(|s| s.as_str())
            .unwrap_or_default()
            .to_string(),
        scopes: strings(claims.get("scope").or_else(|| claims.get("scp"))),
        roles: strings(claims.get("roles")),
        claims: Some(claims),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_a_checkable_shape_and_verify_by_digest() {
        let (text, record) = new_key("shop", vec!["orders:read".into()]);
        assert_eq!(key_id(&text), Some(record.id.as_str()));
        let keys = ApiKeys::default();
        let stored = |record: &KeyRecord| strata_proto::kv::KeyValue {
            key: format!("{KEYS_PREFIX}{}", record.id).into_bytes(),
            value: serde_json::to_vec(record).unwrap(),
            ..Default::default()
        };
        let event = |kind, kv| strata_proto::kv::Event {
            kind,
            kv,
            prev_kv: None,
        };
        use strata_proto::kv::EventType::{Delete, Put};
        use strata_store::Follower;
        keys.load(&[stored(&record)], 3);
        assert_eq!(keys.verify(&text).map(|r| r.consumer), Some("shop".into()));
        // A revoke (the record deleted) takes effect as it is applied; so does a new key.
        let (other_text, other) = new_key("billing", vec![]);
        keys.apply(&[event(Delete, stored(&record)), event(Put, stored(&other))]);
        assert!(keys.verify(&text).is_none());
        assert_eq!(
            keys.verify(&other_text).map(|r| r.consumer),
            Some("billing".into())
        );
        keys.apply(&[event(Put, stored(&record))]);
        // Same id, another secret: refused.
        let forged = format!(
            "{}{}",
            &text[..text.len() - 1],
            if text.ends_with('0') { '1' } else { '0' }
        );
        assert!(keys.verify(&forged).is_none());
        assert!(keys.verify("sgk_nothex_x").is_none());
    }

    #[test]
    fn hs256_tokens_are_checked_for_signature_expiry_and_audience() {
        let spec = JwtProviderSpec {
            name: "p".into(),
            secret: Some("0123456789abcdef0123".into()),
            audiences: vec!["api".into()],
            issuer: Some("https://issuer.test".into()),
            ..Default::default()
        };
        let provider = JwtProvider {
            algorithms: algorithms(&spec).unwrap(),
            fixed: fixed_key(&spec).unwrap(),
            jwks: Default::default(),
            verified: Verified::default(),
            refresh: tokio::sync::Notify::new(),
            fetches: tokio::sync::watch::channel(0).0,
            last_asked: Mutex::new(None),
            problem: Mutex::new(None),
            retired: CancellationToken::new(),
            spec,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let sign = |claims: serde_json::Value, secret: &str| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap()
        };
        let good = serde_json::json!({"sub": "ann", "aud": "api", "iss": "https://issuer.test", "exp": now + 600, "scope": "a b"});
        let claims = provider
            .verify(&sign(good.clone(), "0123456789abcdef0123"))
            .unwrap();
        let identity = identity_of(claims);
        assert_eq!(identity.consumer, "ann");
        assert_eq!(identity.scopes, ["a", "b"]);
        assert_eq!(
            provider.verify(&sign(good.clone(), "another secret, 20b")),
            Err("bad signature".into())
        );
        let mut expired = good.clone();
        expired["exp"] = (now - 3600).into();
        assert_eq!(
            provider.verify(&sign(expired, "0123456789abcdef0123")),
            Err("token expired".into())
        );
        let mut other = good;
        other["aud"] = "elsewhere".into();
        assert_eq!(
            provider.verify(&sign(other, "0123456789abcdef0123")),
            Err("wrong audience".into())
        );
        assert_eq!(
            provider.verify("not.a.token"),
            Err("malformed token".into())
        );
    }

    #[test]
    fn provider_specs_are_checked() {
        let bad = JwtProviderSpec {
            name: "p".into(),
            secret: Some("short".into()),
            ..Default::default()
        };
        assert!(check_provider(&bad).unwrap_err().contains("16 bytes"));
        let both = JwtProviderSpec {
            name: "p".into(),
            secret: Some("0123456789abcdef".into()),
            jwks_url: Some("https://x.test/jwks".into()),
            ..Default::default()
        };
        assert!(check_provider(&both).unwrap_err().contains("exactly one"));
    }
}
