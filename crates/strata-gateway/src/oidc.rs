//! Single sign-on for browser routes: the OpenID Connect authorization-code flow with PKCE.
//!
//! A route with `auth = { methods = ["oidc"], oidc_provider = "sso" }` sends a browser without
//! a session to the issuer's login page (302), with a fresh `state`, `nonce` and PKCE
//! challenge (S256). Those, and the page the browser asked for, travel in a short-lived signed
//! cookie rather than in the node's memory, so the callback may reach any gateway node. At
//! `callback_path` the gateway checks `state`, trades the code and the PKCE verifier for tokens
//! at the issuer's token endpoint, checks the ID token (signature against the issuer's JWKS,
//! `iss`, `aud` = the client id, `exp`, `nonce`), and sets a session cookie: a JWT signed with
//! `cookie_secret` (HS256) holding the subject, scopes and roles, valid for `session_ttl`.
//! `logout_path` clears it and sends the browser to the issuer's end-session endpoint.
//!
//! The issuer's endpoints come from its discovery document
//! (`ISSUER/.well-known/openid-configuration`), fetched in the background and refreshed hourly.

use crate::edge_auth::JwtProvider;
use crate::model::{JwtProviderSpec, OidcProviderSpec};
use axum::body::Body;
use base64::Engine;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The cookie that carries a login in progress.
const LOGIN_COOKIE: &str = "strata_oidc_login";
/// How long a login may take.
const LOGIN_TTL: Duration = Duration::from_secs(600);
const DEFAULT_CALLBACK: &str = "/_strata/oidc/callback";
const DEFAULT_LOGOUT: &str = "/_strata/oidc/logout";
const DEFAULT_COOKIE: &str = "strata_session";
const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
const DISCOVERY_REFRESH: Duration = Duration::from_secs(3600);
const DISCOVERY_RETRY: Duration = Duration::from_secs(2);

/// What the issuer's discovery document says.
#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    end_session_endpoint: Option<String>,
}

/// The signed content of the login cookie.
#[derive(Debug, Serialize, Deserialize)]
struct Login {
    state: String,
    verifier: String,
    nonce: String,
    return_to: String,
    exp: u64,
}

/// The signed content of the session cookie.
#[derive(Debug, Serialize, Deserialize)]
pub struct Session {
    /// The user (`sub` of the ID token).
    pub sub: String,
    /// Scopes granted.
    #[serde(default)]
    pub scope: String,
    /// Roles (the ID token's `roles`).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
}

/// Checks a provider's spec (at table validation).
pub fn check_provider(spec: &OidcProviderSpec) -> Result<(), String> {
    let fail = |m: &str| Err(format!("oidc provider {:?}: {m}", spec.name));
    if spec.name.is_empty() {
        return Err("an oidc provider has an empty name".into());
    }
    if !(spec.issuer.starts_with("https://") || spec.issuer.starts_with("http://")) {
        return fail("issuer must be an http(s) URL");
    }
    if spec.client_id.is_empty() {
        return fail("give the client_id registered at the issuer");
    }
    if spec.cookie_secret.len() < 32 {
        return fail("cookie_secret must have at least 32 bytes (it signs the session cookies)");
    }
    for path in [&spec.callback_path, &spec.logout_path]
        .into_iter()
        .flatten()
    {
        if !path.starts_with('/') {
            return fail("callback_path and logout_path must start with /");
        }
    }
    Ok(())
}

/// An OIDC provider at run time.
pub struct OidcProvider {
    /// As configured.
    pub spec: OidcProviderSpec,
    discovery: RwLock<Option<Discovery>>,
    tokens: RwLock<Option<Arc<JwtProvider>>>,
    /// Why it cannot log anyone in yet, when it cannot.
    pub problem: Mutex<Option<String>>,
    retired: CancellationToken,
    tracker: TaskTracker,
}

impl std::fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProvider")
            .field("name", &self.spec.name)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_text() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// PKCE's S256 challenge of `verifier`.
pub fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Percent-encodes a query or form value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A query parameter of `query`, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| decode(v))
    })
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie(headers: &hyper::HeaderMap, name: &str) -> Option<String> {
    crate::route::parse_cookies(headers)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

impl OidcProvider {
    /// Starts a provider: its discovery runs in the background.
    pub fn start(
        spec: OidcProviderSpec,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Result<Arc<OidcProvider>, String> {
        check_provider(&spec)?;
        let provider = Arc::new(OidcProvider {
            spec,
            discovery: RwLock::new(None),
            tokens: RwLock::new(None),
            problem: Mutex::new(Some(
                "the issuer's discovery document is not loaded yet".into(),
            )),
            retired: cancel.child_token(),
            tracker: tracker.clone(),
        });
        tracker.spawn(provider.clone().discover());
        Ok(provider)
    }

    /// Stops its background work.
    pub fn retire(&self) {
        self.retired.cancel();
        if let Some(tokens) = self
            .tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            tokens.retire();
        }
    }

    /// The path of its callback.
    pub fn callback_path(&self) -> &str {
        self.spec
            .callback_path
            .as_deref()
            .unwrap_or(DEFAULT_CALLBACK)
    }

    /// The path of its logout.
    pub fn logout_path(&self) -> &str {
        self.spec.logout_path.as_deref().unwrap_or(DEFAULT_LOGOUT)
    }

    fn cookie_name(&self) -> &str {
        self.spec.cookie_name.as_deref().unwrap_or(DEFAULT_COOKIE)
    }

    async fn discover(self: Arc<Self>) {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.spec.issuer.trim_end_matches('/')
        );
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
            let found = async {
                let response = client.get(&url).send().await.map_err(|e| e.to_string())?;
                if !response.status().is_success() {
                    return Err(format!("{url} answered {}", response.status()));
                }
                response
                    .json::<Discovery>()
                    .await
                    .map_err(|e| format!("{url}: not a discovery document: {e}"))
            }
            .await;
            let wait = match found {
                Ok(discovery) => {
                    let changed = self
                        .discovery
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_ref()
                        .is_none_or(|d| d.jwks_uri != discovery.jwks_uri);
                    if changed {
                        let tokens = JwtProvider::start(
                            JwtProviderSpec {
                                name: format!("oidc:{}", self.spec.name),
                                issuer: Some(discovery.issuer.clone()),
                                audiences: vec![self.spec.client_id.clone()],
                                jwks_url: Some(discovery.jwks_uri.clone()),
                                algorithms: vec!["RS256".into(), "ES256".into()],
                                ..Default::default()
                            },
                            &self.tracker,
                            &self.retired,
                        );
                        match tokens {
                            Ok(tokens) => {
                                let old = self
                                    .tokens
                                    .write()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .replace(tokens);
                                if let Some(old) = old {
                                    old.retire();
                                }
                            }
                            Err(error) => {
                                *self.problem.lock().unwrap_or_else(|e| e.into_inner()) =
                                    Some(error);
                                continue;
                            }
                        }
                    }
                    *self.discovery.write().unwrap_or_else(|e| e.into_inner()) = Some(discovery);
                    *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    DISCOVERY_REFRESH
                }
                Err(error) => {
                    tracing::warn!(provider = %self.spec.name, %error, "cannot read the OIDC discovery document; retrying");
                    *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
                    DISCOVERY_RETRY
                }
            };
            tokio::select! {
                () = self.retired.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The session of the request, when its cookie is valid.
    pub fn session(&self, headers: &hyper::HeaderMap) -> Option<Session> {
        let value = cookie(headers, self.cookie_name())?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_aud = false;
        validation.leeway = 0;
        jsonwebtoken::decode::<Session>(
            &value,
            &DecodingKey::from_secret(self.spec.cookie_secret.as_bytes()),
            &validation,
        )
        .ok()
        .map(|data| data.claims)
    }

    fn sign<T: Serialize>(&self, claims: &T) -> Result<String, String> {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(self.spec.cookie_secret.as_bytes()),
        )
        .map_err(|e| e.to_string())
    }

    /// Sends a browser without a session to the issuer's login page.
    pub fn login_redirect(&self, origin: &str, return_to: &str) -> Response<Body> {
        let Some(discovery) = self
            .discovery
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            let why = self
                .problem
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default();
            let mut response = crate::proxy::plain(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("single sign-on is not available yet: {why}\n"),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            return response;
        };
        let login = Login {
            state: random_text(),
            verifier: random_text(),
            nonce: random_text(),
            return_to: safe_return_to(return_to),
            exp: now_secs() + LOGIN_TTL.as_secs(),
        };
        let scopes = if self.spec.scopes.is_empty() {
            "openid".to_string()
        } else {
            self.spec.scopes.join(" ")
        };
        let redirect_uri = format!("{origin}{}", self.callback_path());
        let location = format!(
            "{}{}{}",
            discovery.authorization_endpoint,
            if discovery.authorization_endpoint.contains('?') {
                "&"
            } else {
                "?"
            },
            form(&[
                ("response_type", "code"),
                ("client_id", &self.spec.client_id),
                ("redirect_uri", &redirect_uri),
                ("scope", &scopes),
                ("state", &login.state),
                ("nonce", &login.nonce),
                ("code_challenge", &challenge(&login.verifier)),
                ("code_challenge_method", "S256"),
            ])
        );
        let Ok(signed) = self.sign(&login) else {
            return crate::proxy::plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot sign the login\n",
            );
        };
        let secure = if origin.starts_with("https://") {
            "; Secure"
        } else {
            ""
        };
        redirect(
            &location,
            &format!(
                "{LOGIN_COOKIE}={signed}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
                LOGIN_TTL.as_secs()
            ),
        )
    }

    /// The callback: checks the login, trades the code for tokens, sets the session.
    pub async fn callback(
        &self,
        headers: &hyper::HeaderMap,
        query: &str,
        origin: &str,
    ) -> Response<Body> {
        match self.finish_login(headers, query, origin).await {
            Ok(response) => response,
            Err(why) => {
                tracing::info!(provider = %self.spec.name, %why, "OIDC login refused");
                crate::proxy::plain(StatusCode::UNAUTHORIZED, &format!("login failed: {why}\n"))
            }
        }
    }

    async fn finish_login(
        &self,
        headers: &hyper::HeaderMap,
        query: &str,
        origin: &str,
    ) -> Result<Response<Body>, String> {
        if let Some(error) = query_param(query, "error") {
            return Err(format!("the issuer refused: {error}"));
        }
        let code = query_param(query, "code").ok_or("no code in the callback")?;
        let state = query_param(query, "state").ok_or("no state in the callback")?;
        let pending =
            cookie(headers, LOGIN_COOKIE).ok_or("no login in progress (cookie missing)")?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_aud = false;
        validation.leeway = 0;
        let login = jsonwebtoken::decode::<Login>(
            &pending,
            &DecodingKey::from_secret(self.spec.cookie_secret.as_bytes()),
            &validation,
        )
        .map_err(|_| "the login cookie is invalid or expired")?
        .claims;
        if !strata_auth::secret::equal(login.state.as_bytes(), state.as_bytes()) {
            return Err("state does not match the login in progress".into());
        }
        let discovery = self
            .discovery
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or("the issuer's discovery document is not loaded")?;
        let redirect_uri = format!("{origin}{}", self.callback_path());
        let mut pairs = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect_uri.as_str()),
            ("client_id", self.spec.client_id.as_str()),
            ("code_verifier", login.verifier.as_str()),
        ];
        if let Some(secret) = &self.spec.client_secret {
            pairs.push(("client_secret", secret.as_str()));
        }
        let client = strata_tls::http_client_builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let response = client
            .post(&discovery.token_endpoint)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form(&pairs))
            .send()
            .await
            .map_err(|e| format!("token endpoint: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("the token endpoint answered {}", response.status()));
        }
        #[derive(Deserialize)]
        struct Tokens {
            id_token: String,
        }
        let tokens: Tokens = response
            .json()
            .await
            .map_err(|e| format!("token endpoint: no id_token: {e}"))?;
        let checker = self
            .tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or("the issuer's keys are not loaded")?;
        let claims = checker
            .verify_waiting(&tokens.id_token, Duration::from_secs(2))
            .await
            .map_err(|why| format!("ID token: {why}"))?;
        if claims.get("nonce").and_then(|n| n.as_str()) != Some(login.nonce.as_str()) {
            return Err("ID token: nonce does not match".into());
        }
        let ttl = self.spec.session_ttl.map_or(DEFAULT_SESSION_TTL, |d| d.0);
        let roles = match claims.get("roles") {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|i| i.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        };
        let session = Session {
            sub: claims
                .get("sub")
                .and_then(|s| s.as_str())
                .ok_or("ID token: no sub")?
                .to_string(),
            scope: claims
                .get("scope")
                .and_then(|s| s.as_str())
                .unwrap_or_default()
                .to_string(),
            roles,
            exp: now_secs() + ttl.as_secs(),
        };
        let signed = self.sign(&session)?;
        let secure = if origin.starts_with("https://") {
            "; Secure"
        } else {
            ""
        };
        let mut response = redirect(
            &login.return_to,
            &format!(
                "{}={signed}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
                self.cookie_name(),
                ttl.as_secs()
            ),
        );
        if let Ok(clear) = HeaderValue::from_str(&format!("{LOGIN_COOKIE}=; Path=/; Max-Age=0")) {
            response.headers_mut().append(header::SET_COOKIE, clear);
        }
        tracing::info!(provider = %self.spec.name, sub = %session.sub, "OIDC login");
        Ok(response)
    }

    /// Logout: clears the session and sends the browser to the issuer's end-session page.
    pub fn logout(&self, origin: &str) -> Response<Body> {
        let after = self
            .discovery
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|d| d.end_session_endpoint.clone())
            .map(|end| {
                format!(
                    "{end}{}{}",
                    if end.contains('?') { "&" } else { "?" },
                    form(&[
                        ("client_id", &self.spec.client_id),
                        ("post_logout_redirect_uri", &format!("{origin}/")),
                    ])
                )
            })
            .unwrap_or_else(|| "/".to_string());
        redirect(
            &after,
            &format!("{}=; Path=/; Max-Age=0", self.cookie_name()),
        )
    }
}

/// Where to send the browser after its login: a path on this gateway only. A path that a
/// browser would read as another host (`//evil.test/x`, `/\evil.test`) becomes `/`, so a
/// login can never end in an open redirect.
fn safe_return_to(path: &str) -> String {
    let local = path.starts_with('/')
        && !path.starts_with("//")
        && !path.starts_with("/\\")
        && !path.bytes().any(|b| b.is_ascii_control());
    if local {
        path.to_string()
    } else {
        "/".to_string()
    }
}

fn redirect(location: &str, set_cookie: &str) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::FOUND;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    if let Ok(value) = HeaderValue::from_str(set_cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_rfc_7636s() {
        // The example of RFC 7636, appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn queries_and_forms_round_trip() {
        let text = form(&[("redirect_uri", "https://a.test/cb?x=1 2"), ("s", "a+b")]);
        assert_eq!(
            query_param(&text, "redirect_uri").as_deref(),
            Some("https://a.test/cb?x=1 2")
        );
        assert_eq!(query_param(&text, "s").as_deref(), Some("a+b"));
        assert_eq!(query_param("a=%zz", "a").as_deref(), Some("%zz"));
        assert_eq!(query_param("a=%4", "a").as_deref(), Some("%4"));
    }

    #[test]
    fn a_login_returns_only_to_a_local_path() {
        assert_eq!(safe_return_to("/app/orders?page=2"), "/app/orders?page=2");
        assert_eq!(safe_return_to("//evil.test/x"), "/");
        assert_eq!(safe_return_to("/\\evil.test"), "/");
        assert_eq!(safe_return_to("https://evil.test/"), "/");
        assert_eq!(safe_return_to("/a\r\nSet-Cookie: x"), "/");
    }

    #[test]
    fn specs_are_checked() {
        let spec = OidcProviderSpec {
            name: "sso".into(),
            issuer: "https://idp.test".into(),
            client_id: "app".into(),
            cookie_secret: "short".into(),
            ..Default::default()
        };
        assert!(check_provider(&spec).unwrap_err().contains("32 bytes"));
    }
}
