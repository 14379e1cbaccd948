//! The native HTTP/JSON API under `/v1/config/`. docs/config-center.md documents every route.

use crate::center::{ConfigCenter, Publish, Served};
use crate::metrics::ListenerGauge;
use crate::model::{ClientIdentity, ConfigItem, ConfigKey, GrayRule, HistoryEntry, Operation};
use crate::transfer::Policy;
use crate::view::ConfigChange;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use strata_proto::error::ApiError;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// Longest a long-poll may be held.
pub const MAX_LONG_POLL: Duration = Duration::from_secs(120);

use strata_auth::{Access, Caller, Kind, Names};
use strata_http::{json_event, ApiResult, Who};
pub use strata_http::{ApiJson as Body, ErrorResponse, Peer};

/// What the handlers share.
#[derive(Clone)]
pub struct ConfigState {
    /// The config center.
    pub center: Arc<ConfigCenter>,
    /// Cancelled at shutdown; ends streams and long-polls.
    pub cancel: CancellationToken,
    /// Access control.
    pub auth: strata_auth::Auth,
}

/// Allows `who` `access` on the config `key` (`NAMESPACE/GROUP/DATA_ID`).
fn allow(s: &ConfigState, who: &Caller, access: Access, key: &ConfigKey) -> Result<(), ApiError> {
    let name = Names::one(format!("{}/{}/{}", key.namespace, key.group, key.data_id));
    s.auth
        .gate
        .check(who, Kind::Config, access, &name, "config")
}

/// Allows `who` `access` on every config of namespace `ns`.
fn allow_namespace(
    s: &ConfigState,
    who: &Caller,
    access: Access,
    ns: &str,
) -> Result<(), ApiError> {
    let names = Names::prefix(format!("{ns}/"));
    s.auth
        .gate
        .check(who, Kind::Config, access, &names, "config")
}

/// The native config routes, to merge into the node's API router.
pub fn router(state: ConfigState) -> Router {
    Router::new()
        .route("/v1/config/publish", post(publish))
        .route("/v1/config/get", get(get_config))
        .route("/v1/config/delete", post(delete))
        .route("/v1/config/list", get(list))
        .route("/v1/config/history", get(history))
        .route("/v1/config/diff", get(diff))
        .route("/v1/config/rollback", post(rollback))
        .route("/v1/config/gray", post(gray))
        .route("/v1/config/gray/promote", post(gray_promote))
        .route("/v1/config/gray/abort", post(gray_abort))
        .route("/v1/config/listen", post(listen))
        .route("/v1/config/watch", get(watch))
        .route("/v1/config/export", get(export))
        .route("/v1/config/import", post(import))
        .with_state(state)
}

/// Query parameters naming a config and a client.
#[derive(Debug, Default)]
pub struct Params {
    /// Namespace.
    pub namespace: Option<String>,
    /// Group.
    pub group: Option<String>,
    /// Data id.
    pub data_id: Option<String>,
    /// Everything else, repeated keys kept.
    pub rest: Vec<(String, String)>,
    /// `label=K=V` pairs.
    pub labels: BTreeMap<String, String>,
    /// `ip=`.
    pub ip: Option<String>,
}

impl Params {
    fn parse(raw: Option<&str>) -> Result<Params, ApiError> {
        let mut p = Params::default();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let (k, v) = (k.into_owned(), v.into_owned());
            match k.as_str() {
                "namespace" => p.namespace = Some(v),
                "group" => p.group = Some(v),
                "data_id" => p.data_id = Some(v),
                "ip" => p.ip = Some(v),
                "label" => {
                    let (lk, lv) = v.split_once('=').ok_or_else(|| {
                        ApiError::bad_request(format!("invalid label {v:?}: use KEY=VALUE"))
                    })?;
                    p.labels.insert(lk.to_string(), lv.to_string());
                }
                _ => p.rest.push((k, v)),
            }
        }
        Ok(p)
    }

    /// The namespace asked for, or the default one.
    fn namespace_or_default(&self) -> String {
        self.namespace
            .clone()
            .unwrap_or_else(|| crate::model::DEFAULT_NAMESPACE.to_string())
    }

    fn key(&self) -> Result<ConfigKey, ApiError> {
        let id = self
            .data_id
            .as_deref()
            .ok_or_else(|| ApiError::bad_request("data_id is required"))?;
        ConfigKey::new(self.namespace.as_deref(), self.group.as_deref(), id)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.rest
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn number(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::bad_request(format!("{name} must be a number, got {v:?}"))
                })
            })
            .transpose()
    }

    fn client(&self, peer: &Peer) -> ClientIdentity {
        ClientIdentity {
            ip: self
                .ip
                .clone()
                .or_else(|| peer.0.map(|a| a.ip().to_string())),
            labels: self.labels.clone(),
        }
    }
}

fn source(peer: &Peer) -> String {
    peer.source()
}

/// A config's identity in request bodies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Named {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    group: Option<String>,
    data_id: String,
}

impl Named {
    fn key(&self) -> Result<ConfigKey, ApiError> {
        ConfigKey::new(
            self.namespace.as_deref(),
            self.group.as_deref(),
            &self.data_id,
        )
    }
}

/// The outcome of a write.
#[derive(Debug, Serialize, Deserialize)]
pub struct Written {
    /// Which config.
    #[serde(flatten)]
    pub key: ConfigKey,
    /// The new version.
    pub version: u64,
    /// MD5 of the new content.
    pub md5: String,
}

/// The reply to a write that made `item` the config's current version.
fn written(item: ConfigItem) -> axum::Json<Written> {
    axum::Json(Written {
        key: item.key,
        version: item.version,
        md5: item.md5,
    })
}

async fn publish(
    State(s): State<ConfigState>,
    Who(who): Who,
    peer: Peer,
    Body(request): Body<Publish>,
) -> ApiResult<Written> {
    let key = ConfigKey::new(
        request.namespace.as_deref(),
        request.group.as_deref(),
        &request.data_id,
    )?;
    allow(&s, &who, Access::Write, &key)?;
    let item = s.center.publish(request, &source(&peer)).await?;
    Ok(written(item))
}

async fn get_config(
    State(s): State<ConfigState>,
    Who(who): Who,
    peer: Peer,
    RawQuery(raw): RawQuery,
) -> ApiResult<Served> {
    let p = Params::parse(raw.as_deref())?;
    let key = p.key()?;
    allow(&s, &who, Access::Read, &key)?;
    if let Some(version) = p.number("version")? {
        let entry = s.center.version(&key, version).await?;
        if entry.op == Operation::Delete {
            return Err(ApiError::not_found(format!(
                "version {version} of config {key} is a delete"
            ))
            .into());
        }
        return Ok(axum::Json(Served {
            key,
            content: entry.content,
            kind: entry.kind,
            md5: entry.md5,
            version,
            gray: false,
            modified_at: entry.modified_at,
        }));
    }
    Ok(axum::Json(s.center.get(&key, &p.client(&peer))?))
}

#[derive(Serialize)]
struct Version {
    version: u64,
}

async fn delete(
    State(s): State<ConfigState>,
    Who(who): Who,
    peer: Peer,
    Body(named): Body<Named>,
) -> ApiResult<Version> {
    allow(&s, &who, Access::Write, &named.key()?)?;
    let version = s.center.delete(&named.key()?, &source(&peer)).await?;
    Ok(axum::Json(Version { version }))
}

async fn list(
    State(s): State<ConfigState>,
    Who(who): Who,
    RawQuery(raw): RawQuery,
) -> ApiResult<Vec<crate::center::Summary>> {
    let p = Params::parse(raw.as_deref())?;
    let ns = p.namespace_or_default();
    allow_namespace(&s, &who, Access::Read, &ns)?;
    Ok(axum::Json(s.center.list(
        &ns,
        p.group.as_deref(),
        p.get("prefix"),
        p.get("tag"),
    )))
}

/// A config's history; each entry's `content` only with `content=true` (otherwise the field
/// is left out rather than shown empty).
async fn history(
    State(s): State<ConfigState>,
    Who(who): Who,
    RawQuery(raw): RawQuery,
) -> ApiResult<Vec<serde_json::Value>> {
    let p = Params::parse(raw.as_deref())?;
    allow(&s, &who, Access::Read, &p.key()?)?;
    let with_content = p.get("content").is_some_and(|v| v == "true" || v == "1");
    let entries: Vec<HistoryEntry> = s.center.history(&p.key()?, with_content).await?;
    let mut shown = Vec::with_capacity(entries.len());
    for entry in entries {
        let mut value = serde_json::to_value(&entry)
            .map_err(|e| ApiError::internal(format!("encode history entry: {e}")))?;
        if !with_content {
            if let Some(object) = value.as_object_mut() {
                object.remove("content");
            }
        }
        shown.push(value);
    }
    Ok(axum::Json(shown))
}

#[derive(Serialize, Deserialize)]
struct Diff {
    diff: String,
}

async fn diff(
    State(s): State<ConfigState>,
    Who(who): Who,
    RawQuery(raw): RawQuery,
) -> ApiResult<Diff> {
    let p = Params::parse(raw.as_deref())?;
    allow(&s, &who, Access::Read, &p.key()?)?;
    let from = p
        .number("from")?
        .ok_or_else(|| ApiError::bad_request("from is required"))?;
    let to = p
        .number("to")?
        .ok_or_else(|| ApiError::bad_request("to is required"))?;
    Ok(axum::Json(Diff {
        diff: s.center.diff(&p.key()?, from, to).await?,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rollback {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    group: Option<String>,
    data_id: String,
    to_version: u64,
}

async fn rollback(
    State(s): State<ConfigState>,
    Who(who): Who,
    peer: Peer,
    Body(r): Body<Rollback>,
) -> ApiResult<Written> {
    let key = ConfigKey::new(r.namespace.as_deref(), r.group.as_deref(), &r.data_id)?;
    allow(&s, &who, Access::Write, &key)?;
    let item = s
        .center
        .rollback(&key, r.to_version, &source(&peer))
        .await?;
    Ok(written(item))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrayRequest {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    group: Option<String>,
    data_id: String,
    content: String,
    #[serde(default)]
    ips: Option<Vec<String>>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, Deserialize)]
struct GrayStarted {
    md5: String,
}

async fn gray(
    State(s): State<ConfigState>,
    Who(who): Who,
    Body(r): Body<GrayRequest>,
) -> ApiResult<GrayStarted> {
    let key = ConfigKey::new(r.namespace.as_deref(), r.group.as_deref(), &r.data_id)?;
    allow(&s, &who, Access::Write, &key)?;
    let rule = match (r.ips, r.labels) {
        (Some(ips), None) => GrayRule::Ips(ips),
        (None, Some(labels)) => GrayRule::Labels(labels),
        _ => {
            return Err(
                ApiError::bad_request("give either ips or labels for a gray release").into(),
            )
        }
    };
    let gray = s.center.gray(&key, &r.content, rule).await?;
    Ok(axum::Json(GrayStarted { md5: gray.md5 }))
}

async fn gray_promote(
    State(s): State<ConfigState>,
    Who(who): Who,
    peer: Peer,
    Body(named): Body<Named>,
) -> ApiResult<Written> {
    allow(&s, &who, Access::Write, &named.key()?)?;
    let item = s.center.gray_promote(&named.key()?, &source(&peer)).await?;
    Ok(written(item))
}

#[derive(Serialize)]
struct Done {
    ok: bool,
}

async fn gray_abort(
    State(s): State<ConfigState>,
    Who(who): Who,
    Body(named): Body<Named>,
) -> ApiResult<Done> {
    allow(&s, &who, Access::Write, &named.key()?)?;
    s.center.gray_abort(&named.key()?).await?;
    Ok(axum::Json(Done { ok: true }))
}

/// A long-poll: the configs a client holds, with the md5 of what it has.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenRequest {
    /// What the client holds.
    pub configs: Vec<Listened>,
    /// Longest hold (default 30s, at most 120s).
    #[serde(default)]
    pub timeout: Option<String>,
    /// The client's labels, for gray releases.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The client's address for gray releases by IP (default: the connection's).
    #[serde(default)]
    pub ip: Option<String>,
}

/// One config a long-poll holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listened {
    /// Namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Group.
    #[serde(default)]
    pub group: Option<String>,
    /// Data id.
    pub data_id: String,
    /// MD5 of the content the client has ("" for none).
    #[serde(default)]
    pub md5: String,
}

/// The configs that changed.
#[derive(Debug, Serialize, Deserialize)]
pub struct Changed {
    /// Configs whose content differs from what the client has.
    pub changed: Vec<ConfigKey>,
}

async fn listen(
    State(s): State<ConfigState>,
    Who(who): Who,
    peer: Peer,
    Body(r): Body<ListenRequest>,
) -> ApiResult<Changed> {
    s.center.metrics.op("listen");
    let timeout = match &r.timeout {
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| ApiError::bad_request(format!("invalid timeout {t:?}: {e}")))?,
        None => Duration::from_secs(30),
    }
    .min(MAX_LONG_POLL);
    let mut watched = Vec::with_capacity(r.configs.len());
    for c in &r.configs {
        let key = ConfigKey::new(c.namespace.as_deref(), c.group.as_deref(), &c.data_id)?;
        allow(&s, &who, Access::Read, &key)?;
        watched.push((key, c.md5.clone()));
    }
    let client = ClientIdentity {
        ip: r.ip.or_else(|| peer.ip()),
        labels: r.labels,
    };
    let _gauge = ListenerGauge::new(&s.center.metrics.listeners);
    let changed = tokio::select! {
        changed = s.center.wait_changed(&watched, &client, timeout) => changed,
        () = s.cancel.cancelled() => Vec::new(),
    };
    Ok(axum::Json(Changed { changed }))
}

pub use strata_api::config::WatchMessage;

fn op_name(op: Operation) -> &'static str {
    match op {
        Operation::Publish => "publish",
        Operation::Rollback => "rollback",
        Operation::GrayPromote => "gray-promote",
        Operation::Delete => "delete",
    }
}

async fn watch(
    State(s): State<ConfigState>,
    Who(who): Who,
    peer: Peer,
    RawQuery(raw): RawQuery,
) -> Response {
    let parsed = Params::parse(raw.as_deref()).and_then(|p| {
        let key = p.key()?;
        allow(&s, &who, Access::Read, &key)?;
        let from = p.number("from_version")?;
        Ok((key, from, p.client(&peer)))
    });
    let (key, from, client) = match parsed {
        Ok(v) => v,
        Err(e) => return ErrorResponse(e).into_response(),
    };
    s.center.metrics.op("watch");
    let gate = s.auth.gate.clone();
    let guarded = Names::one(format!("{}/{}/{}", key.namespace, key.group, key.data_id));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let mut changes = s.center.view.subscribe();
    let tracker = s.center.tracker.clone();
    tracker.spawn(async move {
        let _gauge = ListenerGauge::new(&s.center.metrics.listeners);
        let mut last_version;
        let mut last_md5;
        match from {
            Some(from) => {
                // Replay what happened after `from`, in order, from the history.
                last_version = from;
                last_md5 = String::new();
                if !replay(&s, &key, &client, &mut last_version, &mut last_md5, &tx).await {
                    return;
                }
            }
            None => {
                // The version must be the one `current` came from, or a publish landing in
                // between would be skipped.
                let before = s.center.view.max_version(&key);
                let current = s.center.get(&key, &client).ok();
                last_version = current.as_ref().map(|c| c.version).unwrap_or(before);
                last_md5 = current.as_ref().map(|c| c.md5.clone()).unwrap_or_default();
                let message = WatchMessage {
                    event: "current".into(),
                    version: last_version,
                    md5: last_md5.clone(),
                    content: current.map(|c| c.content).unwrap_or_default(),
                };
                if !send_message(&tx, &message).await {
                    return;
                }
            }
        }
        loop {
            let change = tokio::select! {
                () = s.cancel.cancelled() => return,
                () = tx.closed() => return,
                change = changes.recv() => change,
            };
            let relevant = match &change {
                Ok(c) => c.key().is_none_or(|k| *k == key),
                Err(RecvError::Lagged(_)) => true,
                Err(RecvError::Closed) => return,
            };
            if !relevant {
                continue;
            }
            // After a gap (lag or reload) a gray release may have started or ended unseen.
            let gray_change = matches!(
                change.as_deref(),
                Ok(ConfigChange::Gray(_)) | Ok(ConfigChange::Reset) | Err(_)
            );
            let version = s.center.view.max_version(&key);
            if version > last_version {
                // New versions: replay them from the history, so none is skipped.
                if !replay(&s, &key, &client, &mut last_version, &mut last_md5, &tx).await {
                    return;
                }
            }
            if gray_change {
                let md5 = s.center.md5_for(&key, &client);
                if md5 != last_md5 {
                    let current = s.center.get(&key, &client).ok();
                    last_md5 = md5.clone();
                    let message = WatchMessage {
                        event: "gray".into(),
                        version: last_version,
                        md5,
                        content: current.map(|c| c.content).unwrap_or_default(),
                    };
                    if !send_message(&tx, &message).await {
                        return;
                    }
                }
            }
        }
    });
    let events = tokio_stream::wrappers::ReceiverStream::new(rx);
    let events = strata_http::guard_events(events, gate, who, move |gate, who| {
        gate.check(who, Kind::Config, Access::Read, &guarded, "config")
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

type SseSender = tokio::sync::mpsc::Sender<Result<SseEvent, Infallible>>;

async fn send_message(tx: &SseSender, message: &WatchMessage) -> bool {
    tx.send(Ok(json_event(message))).await.is_ok()
}

/// Sends every version after `last_version` from the history, in order; false when the
/// client is gone.
async fn replay(
    s: &ConfigState,
    key: &ConfigKey,
    client: &ClientIdentity,
    last_version: &mut u64,
    last_md5: &mut String,
    tx: &SseSender,
) -> bool {
    // A client that matches a running gray release keeps seeing the gray content: main
    // versions move its position but are not what it sees, so they are not sent.
    let gray_md5 = s
        .center
        .view
        .gray(key)
        .filter(|g| g.gray.rule.matches(client))
        .map(|g| g.md5);
    let entries = match s.center.history(key, true).await {
        Ok(entries) => entries,
        // No history yet (a config never published) is not an error for a watcher.
        Err(e) if e.code == strata_proto::error::ErrorCode::NotFound => Vec::new(),
        Err(e) => {
            // Say why and end the stream rather than stay silent.
            let event = SseEvent::default()
                .event("error")
                .json_data(&e)
                .unwrap_or_else(|_| SseEvent::default().event("error").data(e.message.clone()));
            let _ = tx.send(Ok(event)).await;
            return false;
        }
    };
    let after = *last_version;
    for entry in entries.into_iter().filter(|e| e.version > after) {
        *last_version = entry.version;
        if let Some(md5) = &gray_md5 {
            last_md5.clone_from(md5);
            continue;
        }
        last_md5.clone_from(&entry.md5);
        let message = WatchMessage {
            event: op_name(entry.op).to_string(),
            version: entry.version,
            md5: entry.md5,
            content: entry.content,
        };
        if !send_message(tx, &message).await {
            return false;
        }
    }
    true
}

async fn export(
    State(s): State<ConfigState>,
    Who(who): Who,
    RawQuery(raw): RawQuery,
) -> ApiResult<crate::transfer::ExportFile> {
    let p = Params::parse(raw.as_deref())?;
    let ns = p.namespace_or_default();
    allow_namespace(&s, &who, Access::Read, &ns)?;
    Ok(axum::Json(s.center.export(&ns)?))
}

async fn import(
    State(s): State<ConfigState>,
    Who(who): Who,
    peer: Peer,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> ApiResult<crate::transfer::ImportReport> {
    let p = Params::parse(raw.as_deref())?;
    let ns = p.namespace_or_default();
    allow_namespace(&s, &who, Access::Write, &ns)?;
    let policy: Policy = p
        .get("policy")
        .unwrap_or("abort")
        .parse()
        .map_err(ApiError::bad_request)?;
    Ok(axum::Json(
        s.center.import(&body, &ns, policy, &source(&peer)).await?,
    ))
}
