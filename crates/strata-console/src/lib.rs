//! The web console, component `console`: plain HTML, CSS and JavaScript written for Strata,
//! embedded in the binary and served at `/ui` on the node's API listener. Every page reads and
//! writes through the public HTTP APIs with the same credentials as any client, so the console
//! holds no state and no privilege of its own.
//!
//! - Assets are gzip-compressed once, at first use, and served with a strong `ETag` and
//!   `Cache-Control: no-cache` (revalidated, answered `304` when unchanged), so a new binary
//!   never leaves a stale page in a browser.
//! - While access control is off, only loopback clients get the console unless
//!   `[console] allow_remote = true`: anyone else who can reach the port could change the
//!   cluster. With access control on, the console asks for a login and so is served to all.
//! - `[console] assets_dir` serves the files from a folder instead (developing the console).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use prometheus::{IntCounterVec, Opts};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::sync::{Arc, OnceLock};
use strata_component::{parse_section, Component, Context, StartError, Started};
use strata_http::Peer;
use strata_store::BoxFuture;

const NAME: &str = "console";

/// `[console]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve the console to clients that are not on the loopback address while access
    /// control is off.
    pub allow_remote: bool,
    /// Serve the assets from this folder instead of the binary (`""`: the binary's).
    pub assets_dir: String,
}

/// The console component.
pub struct ConsoleComponent;

impl Component for ConsoleComponent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check_config(&self, section: Option<&toml::Value>) -> Result<(), String> {
        parse_section::<ConsoleConfig>(NAME, section).map(|_| ())
    }

    fn sample_config(&self) -> Option<String> {
        let body = toml::to_string_pretty(&ConsoleConfig::default()).ok()?;
        Some(format!("[{NAME}]\n{body}"))
    }

    fn start(&self, ctx: Context) -> BoxFuture<'static, Result<Started, StartError>> {
        Box::pin(async move {
            let config: ConsoleConfig = ctx.settings(NAME)?;
            let requests = IntCounterVec::new(
                Opts::new(
                    "strata_console_requests_total",
                    "Console asset requests by outcome (ok, not_modified, not_found, refused).",
                ),
                &["outcome"],
            )?;
            ctx.metrics.register(Box::new(requests.clone()))?;
            tracing::info!(
                node_id = ctx.node_id,
                url = %format!("{}/ui/", ctx.api_url),
                allow_remote = config.allow_remote,
                "serving the console"
            );
            let state = ConsoleState {
                config: Arc::new(config),
                auth: ctx.auth.clone(),
                requests,
            };
            Ok(Started {
                peer_routes: None,
                api_routes: Some(router(state)),
            })
        })
    }
}

/// What the console's routes share.
#[derive(Clone)]
pub struct ConsoleState {
    config: Arc<ConsoleConfig>,
    auth: strata_auth::Auth,
    requests: IntCounterVec,
}

/// `/ui`, `/ui/` and `/ui/{file}`.
pub fn router(state: ConsoleState) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/{*path}", get(asset))
        .with_state(state)
}

/// One embedded file.
struct Asset {
    path: &'static str,
    bytes: &'static [u8],
}

macro_rules! assets {
    ($($path:literal),* $(,)?) => {
        &[$(Asset { path: $path, bytes: include_bytes!(concat!("../assets/", $path)) }),*]
    };
}

/// Every file of the console.
static ASSETS: &[Asset] = assets![
    "index.html",
    "app.css",
    "app.js",
    "pages/cluster.js",
    "pages/kv.js",
    "pages/services.js",
    "pages/configs.js",
    "pages/gateway.js",
    "pages/monitor.js",
];

/// A file ready to serve: both encodings and its validator.
struct Prepared {
    plain: Vec<u8>,
    gzip: Vec<u8>,
    etag: String,
}

fn prepare(bytes: &[u8]) -> Prepared {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let gzip = encoder
        .write_all(bytes)
        .and_then(|()| encoder.finish())
        .unwrap_or_default();
    Prepared {
        plain: bytes.to_vec(),
        gzip,
        etag: format!("\"{:08x}-{:x}\"", crc32fast::hash(bytes), bytes.len()),
    }
}

fn embedded(path: &str) -> Option<&'static Prepared> {
    static PREPARED: OnceLock<Vec<Prepared>> = OnceLock::new();
    let prepared = PREPARED.get_or_init(|| ASSETS.iter().map(|a| prepare(a.bytes)).collect());
    let i = ASSETS.iter().position(|a| a.path == path)?;
    prepared.get(i)
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

async fn index(state: State<ConsoleState>, peer: Peer, headers: HeaderMap) -> Response {
    serve(&state, &peer, &headers, "index.html").await
}

async fn asset(
    state: State<ConsoleState>,
    peer: Peer,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> Response {
    serve(&state, &peer, &headers, &path).await
}

/// Whether `peer` may have the console: always with access control on (the console asks for
/// a login), else loopback clients, or anyone when `allow_remote` says so.
fn allowed(state: &ConsoleState, peer: &Peer) -> bool {
    state.config.allow_remote
        || state.auth.gate.enabled()
        || peer.0.is_none_or(|a| a.ip().is_loopback())
}

async fn serve(state: &ConsoleState, peer: &Peer, headers: &HeaderMap, path: &str) -> Response {
    let outcome = |o: &str| state.requests.with_label_values(&[o]).inc();
    if !allowed(state, peer) {
        outcome("refused");
        return (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "The Strata console is served only to clients on the loopback address while access \
             control is off, because anyone who reaches it could change the cluster. Turn access \
             control on (docs/auth.md) or set [console] allow_remote = true.\n",
        )
            .into_response();
    }
    if !state.config.assets_dir.is_empty() {
        return from_folder(state, path).await;
    }
    let Some(file) = embedded(path) else {
        outcome("not_found");
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("no console file {path:?}\n"),
        )
            .into_response();
    };
    let mut response_headers = HeaderMap::new();
    security_headers(&mut response_headers, path);
    response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(etag) = HeaderValue::from_str(&file.etag) {
        response_headers.insert(header::ETAG, etag);
    }
    response_headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == file.etag));
    if unchanged {
        outcome("not_modified");
        return (StatusCode::NOT_MODIFIED, response_headers).into_response();
    }
    outcome("ok");
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|c| c.trim().starts_with("gzip")));
    let body = if gzip && !file.gzip.is_empty() {
        response_headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        Body::from(&file.gzip[..])
    } else {
        Body::from(&file.plain[..])
    };
    (StatusCode::OK, response_headers, body).into_response()
}

fn security_headers(headers: &mut HeaderMap, path: &str) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// Serves `path` from `assets_dir`, uncached (developing the console).
async fn from_folder(state: &ConsoleState, path: &str) -> Response {
    let outcome = |o: &str| state.requests.with_label_values(&[o]).inc();
    let clean = !path.split('/').any(|part| part.is_empty() || part == "..");
    let file = std::path::Path::new(state.config.assets_dir.as_str()).join(path);
    match (clean, tokio::fs::read(&file).await) {
        (true, Ok(bytes)) => {
            outcome("ok");
            let mut headers = HeaderMap::new();
            security_headers(&mut headers, path);
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            (StatusCode::OK, headers, bytes).into_response()
        }
        _ => {
            outcome("not_found");
            (StatusCode::NOT_FOUND, format!("no console file {path:?}\n")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_compressed_and_tagged() {
        for a in ASSETS {
            let p = embedded(a.path).unwrap();
            assert!(!p.gzip.is_empty() && p.plain == a.bytes, "{}", a.path);
            assert!(p.etag.starts_with('"'), "{}", p.etag);
        }
        assert!(embedded("nope.js").is_none());
        assert_eq!(
            content_type("pages/kv.js"),
            "text/javascript; charset=utf-8"
        );
    }
}
