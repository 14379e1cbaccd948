//! Consul's KV and transaction endpoints: `GET/PUT/DELETE /v1/kv/KEY` and `PUT /v1/txn`, with
//! Consul's query parameters, JSON, status codes and plain-text answers. What they do is
//! [`crate::consul_txn`] (the rules) on [`crate::consul_store`] (the store).

use crate::consul::{bad, field, index_headers, ConsulError};
use crate::consul_store::{Consistency, ConsulKv, Target, MAX_VALUE_BYTES};
use crate::consul_txn::{Entry, Failure, Op, Outcome, Verb};
use crate::http::query_pairs;
use axum::body::Bytes;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use base64::Engine;
use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;
use strata_auth::{Access, Auth, Caller, Kind, Names};
use strata_http::Who;
use tracing::debug;

/// Consul's limit on operations in one transaction.
pub const MAX_TXN_OPS: usize = 128;
/// Consul's limit on a transaction's body (`txn_max_req_len`, 512 KiB by default).
pub const MAX_TXN_BYTES: usize = 512 * 1024;
/// How long a blocking query waits when it names no `wait` (Consul's default).
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Longest a blocking query waits (Consul caps `wait` at 10 minutes).
const MAX_WAIT: Duration = Duration::from_secs(600);

type ConsulResult = Result<Response, ConsulError>;

/// The KV and transaction routes.
pub fn router(kv: Arc<ConsulKv>) -> Router {
    Router::new()
        .route("/v1/kv/{*key}", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/kv/", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/kv", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/txn", put(txn))
        .with_state(kv)
}

/// The query parameters Consul's read endpoints share: consistency and blocking.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Linearizable unless `?stale`.
    pub consistency: Consistency,
    /// `?index`: block until the result's index passes it (0: do not block).
    pub index: i64,
    /// `?wait`, capped, with Consul's jitter of up to a sixteenth added.
    pub wait: Duration,
}

/// Parses the read options among `pairs`: `index`, `wait`, `stale`, `consistent`.
pub fn read_options(pairs: &[(String, String)]) -> Result<ReadOptions, ConsulError> {
    let mut options = ReadOptions {
        consistency: Consistency::Linearizable,
        index: 0,
        wait: DEFAULT_WAIT,
    };
    let has = |name: &str| pairs.iter().any(|(k, _)| k == name);
    if has("stale") && has("consistent") {
        return Err(bad(
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ));
    }
    if has("stale") {
        options.consistency = Consistency::Stale;
    }
    for (name, value) in pairs {
        match name.as_str() {
            "index" if !value.is_empty() => {
                let index: u64 = value.parse().map_err(|_| bad("Invalid index"))?;
                options.index = i64::try_from(index).unwrap_or(i64::MAX);
            }
            "wait" if !value.is_empty() => {
                let wait =
                    crate::go_duration::parse(value).map_err(|_| bad("Invalid wait time"))?;
                options.wait = wait.min(MAX_WAIT);
            }
            _ => {}
        }
    }
    let jitter_ms = options.wait.as_millis() as u64 / 16;
    if jitter_ms > 0 {
        options.wait += Duration::from_millis(rand::random::<u64>() % jitter_ms);
    }
    Ok(options)
}

/// `X-Consul-KnownLeader` and `X-Consul-LastContact`, for answers that carry no index.
fn leader_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
    headers.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
    headers
}

/// An entry as Consul's JSON shows it (fields in Consul's order).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EntryJson<'a> {
    lock_index: u64,
    key: &'a str,
    flags: u64,
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
    create_index: i64,
    modify_index: i64,
}

impl<'a> EntryJson<'a> {
    /// The entry's JSON: the value base64-encoded, `null` when empty.
    pub fn new(entry: &'a Entry) -> Self {
        EntryJson {
            lock_index: entry.lock_index,
            key: &entry.key,
            flags: entry.flags,
            value: (!entry.value.is_empty())
                .then(|| base64::engine::general_purpose::STANDARD.encode(&entry.value)),
            session: entry.session.as_deref(),
            create_index: entry.create_index,
            modify_index: entry.modify_index,
        }
    }
}

/// Consul's answer when nothing matches a read: 404, no body, and the index to block on.
fn not_found(index: i64) -> Response {
    (StatusCode::NOT_FOUND, index_headers(index)).into_response()
}

fn json_body(status: StatusCode, headers: HeaderMap, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut response = (status, headers, bytes).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => {
            ConsulError(StatusCode::INTERNAL_SERVER_ERROR, format!("encode: {e}")).into_response()
        }
    }
}

/// Consul's answer to a write: a literal `true` or `false`.
fn boolean(value: bool) -> Response {
    json_body(StatusCode::OK, HeaderMap::new(), &value)
}

fn denied(who: &Caller, action: &str, key: &str) -> ConsulError {
    ConsulError(
        StatusCode::FORBIDDEN,
        format!(
            "Permission denied: {} lacks permission '{action}' on {key:?}",
            who.who()
        ),
    )
}

/// Allows `who` `access` on `names` (Consul's `key:read`, `key:write`), or answers 403.
fn allow_keys(
    auth: &Auth,
    who: &Caller,
    access: Access,
    names: &Names,
    shown: &str,
) -> Result<(), ConsulError> {
    if !who.enforced() {
        return Ok(());
    }
    let action = if access == Access::Read {
        "key:read"
    } else {
        "key:write"
    };
    auth.gate
        .check(who, Kind::Kv, access, names, action)
        .map_err(|_| denied(who, action, shown))
}

/// True when `who` may read `key` (listings leave the others out, as Consul filters them).
fn may_read(auth: &Auth, who: &Caller, key: &str) -> bool {
    !who.enforced()
        || auth
            .gate
            .check(who, Kind::Kv, Access::Read, &Names::one(key), "key:read")
            .is_ok()
}

fn has(pairs: &[(String, String)], name: &str) -> bool {
    pairs.iter().any(|(k, _)| k == name)
}

fn value_of<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Consul's answer when flags that do not combine are given together.
fn conflicting(pairs: &[(String, String)], names: &[&str]) -> Result<(), ConsulError> {
    let given = names.iter().filter(|name| has(pairs, name)).count();
    if given > 1 {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs.iter())
            .finish();
        return Err(bad(format!("Conflicting flags: {query}\n")));
    }
    Ok(())
}

fn number(pairs: &[(String, String)], name: &str) -> Result<Option<u64>, ConsulError> {
    match value_of(pairs, name) {
        None => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| bad(format!("invalid {name} {text:?}: use an unsigned integer"))),
    }
}

/// The key of a `/v1/kv/KEY` request; empty for `/v1/kv/` (the root, for listings).
fn key_of(path: Option<Path<String>>) -> String {
    path.map(|Path(key)| key).unwrap_or_default()
}

async fn kv_get(
    State(kv): State<Arc<ConsulKv>>,
    Who(who): Who,
    Extension(auth): Extension<Auth>,
    path: Option<Path<String>>,
    RawQuery(raw): RawQuery,
) -> ConsulResult {
    let key = key_of(path);
    let pairs = query_pairs(raw.as_deref());
    let options = read_options(&pairs)?;
    if has(&pairs, "keys") {
        kv.metrics.request("keys");
        // Consul reads both spellings (its own historic "seperator").
        let separator = value_of(&pairs, "separator")
            .or_else(|| value_of(&pairs, "seperator"))
            .unwrap_or("")
            .to_string();
        return list_keys(&kv, (&who, &auth), &key, &separator, &options).await;
    }
    if has(&pairs, "recurse") {
        kv.metrics.request("list");
        return list_entries(&kv, (&who, &auth), &key, &options).await;
    }
    if key.is_empty() {
        return Err(bad("Missing key name"));
    }
    kv.metrics.request("get");
    allow_keys(&auth, &who, Access::Read, &Names::one(key.as_str()), &key)?;
    if options.index > 0 {
        kv.block(&Target::Key(key.clone()), options.index, options.wait)
            .await;
    }
    let (entry, revision) = kv.read_entry(&key, options.consistency).await?;
    let Some(entry) = entry else {
        // Consul answers a missing key with 404, an empty body and the index to block on.
        return Ok(not_found(revision));
    };
    let index = entry.modify_index;
    if has(&pairs, "raw") {
        // The value as is, as text that a browser must not interpret (Consul's headers).
        let mut headers = index_headers(index);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.insert(
            "X-Content-Type-Options",
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            "Content-Security-Policy",
            HeaderValue::from_static("sandbox"),
        );
        return Ok((StatusCode::OK, headers, entry.value).into_response());
    }
    Ok(json_body(
        StatusCode::OK,
        index_headers(index),
        &[EntryJson::new(&entry)],
    ))
}

/// The entries under `prefix` that `who` may read (keys only when `keys_only`), after
/// blocking as `options` ask; with the store revision they were read at.
async fn visible_tree(
    kv: &ConsulKv,
    (who, auth): (&Caller, &Auth),
    prefix: &str,
    keys_only: bool,
    options: &ReadOptions,
) -> Result<(Vec<Entry>, i64), ConsulError> {
    if options.index > 0 {
        let target = Target::Prefix(prefix.to_string());
        kv.block(&target, options.index, options.wait).await;
    }
    let (mut entries, revision) = kv.read_tree(prefix, keys_only, options.consistency).await?;
    entries.retain(|e| may_read(auth, who, &e.key));
    Ok((entries, revision))
}

async fn list_entries(
    kv: &ConsulKv,
    (who, auth): (&Caller, &Auth),
    prefix: &str,
    options: &ReadOptions,
) -> ConsulResult {
    let (entries, revision) = visible_tree(kv, (who, auth), prefix, false, options).await?;
    let visible: Vec<EntryJson> = entries.iter().map(EntryJson::new).collect();
    if visible.is_empty() {
        return Ok(not_found(revision));
    }
    Ok(json_body(StatusCode::OK, index_headers(revision), &visible))
}

/// The keys under `prefix`, each cut after the first `separator` that follows the prefix
/// (so "a/b/c" lists as "a/b/" under "a/" with separator "/"), without repeats.
pub fn fold_keys<'a>(
    keys: impl Iterator<Item = &'a str>,
    prefix: &str,
    separator: &str,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for key in keys {
        let folded = match key.get(prefix.len()..) {
            Some(rest) if !separator.is_empty() => match rest.find(separator) {
                Some(at) => &key[..prefix.len() + at + separator.len()],
                None => key,
            },
            _ => key,
        };
        if out.last().map(String::as_str) != Some(folded) {
            out.push(folded.to_string());
        }
    }
    out
}

async fn list_keys(
    kv: &ConsulKv,
    (who, auth): (&Caller, &Auth),
    prefix: &str,
    separator: &str,
    options: &ReadOptions,
) -> ConsulResult {
    let (entries, revision) = visible_tree(kv, (who, auth), prefix, true, options).await?;
    let keys = fold_keys(entries.iter().map(|e| e.key.as_str()), prefix, separator);
    // Consul: no keys under a prefix is a 404; at the root, an empty list.
    if keys.is_empty() && !prefix.is_empty() {
        return Ok(not_found(revision));
    }
    Ok(json_body(StatusCode::OK, index_headers(revision), &keys))
}

/// Builds the single operation a `PUT /v1/kv/KEY` is, from its query.
pub fn put_op(key: &str, pairs: &[(String, String)], body: &[u8]) -> Result<Op, ConsulError> {
    if key.is_empty() {
        return Err(bad("Missing key name"));
    }
    conflicting(pairs, &["cas", "acquire", "release"])?;
    if body.len() > MAX_VALUE_BYTES {
        return Err(ConsulError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Request body({} bytes) too large, max size: {MAX_VALUE_BYTES} bytes",
                body.len()
            ),
        ));
    }
    let mut op = Op::new(Verb::Set, key);
    op.value = body.to_vec();
    op.flags = number(pairs, "flags")?.unwrap_or(0);
    if let Some(index) = number(pairs, "cas")? {
        op.verb = Verb::Cas;
        op.index = index;
    }
    if let Some(session) = value_of(pairs, "acquire") {
        op.verb = Verb::Lock;
        op.session = session.to_string();
    }
    if let Some(session) = value_of(pairs, "release") {
        op.verb = Verb::Unlock;
        op.session = session.to_string();
    }
    Ok(op)
}

/// Consul's answer to a single KV write: `true`, `false` when it was refused, an error when
/// it could not apply (a lock without a valid session: Consul's 500).
fn single_answer(outcome: &Outcome) -> ConsulResult {
    match outcome.errors.first().map(|e| &e.failure) {
        None => Ok(boolean(true)),
        Some(Failure::Refused(message)) => {
            debug!(reason = message.as_str(), "Consul KV write refused");
            Ok(boolean(false))
        }
        Some(Failure::Invalid(message)) => Err(ConsulError(
            StatusCode::INTERNAL_SERVER_ERROR,
            message.clone(),
        )),
    }
}

async fn kv_put(
    State(kv): State<Arc<ConsulKv>>,
    Who(who): Who,
    Extension(auth): Extension<Auth>,
    path: Option<Path<String>>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> ConsulResult {
    let key = key_of(path);
    let pairs = query_pairs(raw.as_deref());
    let op = put_op(&key, &pairs, &body)?;
    kv.metrics.request(match op.verb {
        Verb::Cas => "cas",
        Verb::Lock => "acquire",
        Verb::Unlock => "release",
        _ => "put",
    });
    allow_keys(&auth, &who, Access::Write, &Names::one(key.as_str()), &key)?;
    let outcome = kv.transact(&[op], Consistency::Linearizable).await?;
    single_answer(&outcome)
}

/// Builds the single operation a `DELETE /v1/kv/KEY` is, from its query.
pub fn delete_op(key: &str, pairs: &[(String, String)]) -> Result<Op, ConsulError> {
    conflicting(pairs, &["recurse", "cas"])?;
    if has(pairs, "recurse") {
        return Ok(Op::new(Verb::DeleteTree, key));
    }
    if key.is_empty() {
        return Err(bad("Missing key name"));
    }
    let mut op = Op::new(Verb::Delete, key);
    if let Some(index) = number(pairs, "cas")? {
        op.verb = Verb::DeleteCas;
        op.index = index;
    }
    Ok(op)
}

async fn kv_delete(
    State(kv): State<Arc<ConsulKv>>,
    Who(who): Who,
    Extension(auth): Extension<Auth>,
    path: Option<Path<String>>,
    RawQuery(raw): RawQuery,
) -> ConsulResult {
    let key = key_of(path);
    let pairs = query_pairs(raw.as_deref());
    let op = delete_op(&key, &pairs)?;
    let names = if op.verb == Verb::DeleteTree {
        kv.metrics.request("delete_tree");
        Names::prefix(key.as_str())
    } else {
        kv.metrics.request("delete");
        Names::one(key.as_str())
    };
    allow_keys(&auth, &who, Access::Write, &names, &key)?;
    let outcome = kv.transact(&[op], Consistency::Linearizable).await?;
    single_answer(&outcome)
}

/// A transaction body, parsed.
#[derive(Debug)]
pub struct ParsedTxn {
    /// The operations, in order.
    pub ops: Vec<Op>,
    /// Operations with a verb Consul does not know, by position: Consul reports them as the
    /// transaction's errors (409), not as a bad body.
    pub unknown_verbs: Vec<(usize, String)>,
}

/// A transaction body, parsed: the KV operations, or Consul's 400/413 answer.
pub fn parse_txn(body: &[u8]) -> Result<ParsedTxn, ConsulError> {
    if body.len() > MAX_TXN_BYTES {
        return Err(ConsulError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body too large, max size: {MAX_TXN_BYTES} bytes"),
        ));
    }
    let parse_error = |what: String| bad(format!("Failed to parse body: {what}"));
    let value: Value = serde_json::from_slice(body).map_err(|e| parse_error(e.to_string()))?;
    let Value::Array(items) = value else {
        return Err(parse_error("expected a JSON list of operations".into()));
    };
    if items.len() > MAX_TXN_OPS {
        return Err(ConsulError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Transaction contains too many operations ({} > {MAX_TXN_OPS})",
                items.len()
            ),
        ));
    }
    let mut parsed = ParsedTxn {
        ops: Vec::with_capacity(items.len()),
        unknown_verbs: Vec::new(),
    };
    for (at, item) in items.iter().enumerate() {
        let Value::Object(item) = item else {
            return Err(parse_error(format!("operation {at} is not an object")));
        };
        let Some(Value::Object(kv)) = field(item, "KV") else {
            if ["Node", "Service", "Check", "Session"]
                .iter()
                .any(|kind| field(item, kind).is_some())
            {
                return Err(bad(format!(
                    "operation {at}: Strata's /v1/txn runs KV operations only (catalog and session operations are not supported)"
                )));
            }
            return Err(parse_error(format!("operation {at} has no KV object")));
        };
        let verb_name = match field(kv, "Verb") {
            Some(Value::String(name)) => name.as_str(),
            _ => "",
        };
        if Verb::parse(verb_name).is_none() {
            parsed
                .unknown_verbs
                .push((at, format!("unknown KV verb {verb_name:?}")));
            continue;
        }
        parsed.ops.push(parse_kv_op(at, kv).map_err(parse_error)?);
    }
    Ok(parsed)
}

fn parse_kv_op(at: usize, kv: &Map<String, Value>) -> Result<Op, String> {
    let text = |name: &str| -> Result<String, String> {
        match field(kv, name) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!(
                "operation {at}: {name} must be a string, not {other}"
            )),
        }
    };
    let unsigned = |name: &str| -> Result<u64, String> {
        match field(kv, name) {
            None => Ok(0),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| format!("operation {at}: {name} must be an unsigned integer")),
        }
    };
    let verb_name = text("Verb")?;
    let verb = Verb::parse(&verb_name)
        .ok_or_else(|| format!("operation {at}: unknown KV verb {verb_name:?}"))?;
    let value =
        match field(kv, "Value") {
            None => Vec::new(),
            Some(Value::String(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| format!("operation {at}: failed to decode value: {e}"))?,
            Some(other) => {
                return Err(format!(
                    "operation {at}: Value must be base64 text, not {other}"
                ))
            }
        };
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "operation {at}: value is too large ({} > {MAX_VALUE_BYTES} bytes)",
            value.len()
        ));
    }
    let key = text("Key")?;
    if key.is_empty() && !verb.is_tree() {
        return Err(format!("operation {at}: missing key name"));
    }
    Ok(Op {
        verb,
        key,
        value,
        flags: unsigned("Flags")?,
        index: unsigned("Index")?,
        session: text("Session")?,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResult<'a> {
    #[serde(rename = "KV")]
    kv: EntryJson<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TxnError<'a> {
    op_index: usize,
    what: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TxnAnswer<'a> {
    results: Option<Vec<TxnResult<'a>>>,
    errors: Option<Vec<TxnError<'a>>>,
}

/// Consul's answer to a transaction that was rolled back: 409 with `Errors`.
fn rolled_back<'a>(errors: impl Iterator<Item = (usize, &'a str)>, headers: HeaderMap) -> Response {
    let answer = TxnAnswer {
        results: None,
        errors: Some(
            errors
                .map(|(op_index, what)| TxnError { op_index, what })
                .collect(),
        ),
    };
    json_body(StatusCode::CONFLICT, headers, &answer)
}

async fn txn(
    State(kv): State<Arc<ConsulKv>>,
    Who(who): Who,
    Extension(auth): Extension<Auth>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> ConsulResult {
    kv.metrics.request("txn");
    let pairs = query_pairs(raw.as_deref());
    let options = read_options(&pairs)?;
    let parsed = parse_txn(&body)?;
    if !parsed.unknown_verbs.is_empty() {
        let errors = parsed.unknown_verbs.iter();
        return Ok(rolled_back(
            errors.map(|(at, what)| (*at, what.as_str())),
            HeaderMap::new(),
        ));
    }
    let ops = parsed.ops;
    // Consul reports an operation the token may not run as that operation's error.
    let mut denied_ops = Vec::new();
    for (at, op) in ops.iter().enumerate() {
        let access = if op.verb.writes() {
            Access::Write
        } else {
            Access::Read
        };
        let names = if op.verb.is_tree() {
            Names::prefix(op.key.as_str())
        } else {
            Names::one(op.key.as_str())
        };
        if allow_keys(&auth, &who, access, &names, &op.key).is_err() {
            denied_ops.push(at);
        }
    }
    if !denied_ops.is_empty() {
        let errors = denied_ops.iter().map(|at| (*at, "Permission denied"));
        return Ok(rolled_back(errors, HeaderMap::new()));
    }
    let writes = ops.iter().any(|op| op.verb.writes());
    let outcome = kv.transact(&ops, options.consistency).await?;
    let headers = if writes {
        HeaderMap::new()
    } else {
        leader_headers()
    };
    if !outcome.errors.is_empty() {
        debug!(
            ops = ops.len(),
            errors = outcome.errors.len(),
            "Consul transaction rolled back"
        );
        let errors = outcome.errors.iter();
        return Ok(rolled_back(
            errors.map(|e| (e.op_index, e.failure.message())),
            headers,
        ));
    }
    let results = outcome
        .results
        .iter()
        .map(|entry| TxnResult {
            kv: EntryJson::new(entry),
        })
        .collect();
    let answer = TxnAnswer {
        results: Some(results),
        errors: None,
    };
    Ok(json_body(StatusCode::OK, headers, &answer))
}

/// Feeds `data` to every parser of the Consul KV, session and transaction endpoints, as the
/// body, the query string and a stored entry; for the fuzz target and its proptest twin.
/// Each answers a value or an error; none panics.
pub fn parse_untrusted(data: &[u8]) {
    let _ = parse_txn(data);
    let _ = crate::consul_session::parse_new_session(data);
    let _ = crate::consul_store::decode_entry(&strata_proto::kv::KeyValue {
        key: crate::consul_store::kv_key("k"),
        value: data.to_vec(),
        ..strata_proto::kv::KeyValue::default()
    });
    let _ = crate::consul_sessions::decode_session(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let pairs = query_pairs(Some(text));
        let _ = read_options(&pairs);
        let _ = put_op("k", &pairs, data);
        let _ = delete_op("", &pairs);
        let _ = crate::go_duration::parse(text);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pairs(query: &str) -> Vec<(String, String)> {
        query_pairs(Some(query))
    }

    #[test]
    fn keys_fold_at_the_separator() {
        let keys = ["a/b", "a/c/d", "a/c/e", "a/f/", "ab"];
        assert_eq!(
            fold_keys(keys.iter().copied(), "a/", "/"),
            vec!["a/b", "a/c/", "a/f/", "ab"]
        );
        assert_eq!(fold_keys(keys.iter().copied(), "", "/"), vec!["a/", "ab"]);
        assert_eq!(fold_keys(keys.iter().copied(), "a/", "").len(), 5);
    }

    #[test]
    fn put_query_picks_the_operation() {
        assert_eq!(put_op("k", &pairs(""), b"v").unwrap().verb, Verb::Set);
        let cas = put_op("k", &pairs("cas=0&flags=7"), b"v").unwrap();
        assert_eq!((cas.verb, cas.index, cas.flags), (Verb::Cas, 0, 7));
        assert_eq!(
            put_op("k", &pairs("acquire=s"), b"").unwrap().verb,
            Verb::Lock
        );
        assert_eq!(
            put_op("k", &pairs("release=s"), b"").unwrap().verb,
            Verb::Unlock
        );
        for bad_query in [
            "cas=1&acquire=s",
            "flags=x",
            "cas=-1",
            "acquire=s&release=s",
        ] {
            let err = put_op("k", &pairs(bad_query), b"").unwrap_err();
            assert_eq!(err.0, StatusCode::BAD_REQUEST, "{bad_query}");
        }
        assert_eq!(
            put_op("", &pairs(""), b"").unwrap_err().0,
            StatusCode::BAD_REQUEST
        );
        let big = vec![0u8; MAX_VALUE_BYTES + 1];
        assert_eq!(
            put_op("k", &pairs(""), &big).unwrap_err().0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn delete_query_picks_the_operation() {
        assert_eq!(delete_op("k", &pairs("")).unwrap().verb, Verb::Delete);
        assert_eq!(
            delete_op("", &pairs("recurse")).unwrap().verb,
            Verb::DeleteTree
        );
        assert_eq!(
            delete_op("k", &pairs("cas=3")).unwrap().verb,
            Verb::DeleteCas
        );
        assert!(delete_op("k", &pairs("recurse&cas=3")).is_err());
        assert!(delete_op("", &pairs("")).is_err());
    }

    #[test]
    fn txn_bodies_parse_or_get_consul_errors() {
        let ok = br#"[{"KV":{"Verb":"set","Key":"a","Value":"eA==","Flags":3}},
                      {"kv":{"verb":"get-tree","key":""}}]"#;
        let ops = parse_txn(ok).unwrap().ops;
        assert_eq!(ops[0].value, b"x");
        assert_eq!(ops[0].flags, 3);
        assert_eq!(ops[1].verb, Verb::GetTree);
        for body in [
            &b"{"[..],
            b"{}",
            b"[1]",
            br#"[{"KV":{"Verb":"set","Key":"a","Value":"***"}}]"#,
            br#"[{"KV":{"Verb":"set","Key":"a","Flags":-1}}]"#,
            br#"[{"KV":{"Verb":"set"}}]"#,
            br#"[{"Node":{"Verb":"get"}}]"#,
        ] {
            let err = parse_txn(body).unwrap_err();
            assert_eq!(
                err.0,
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let unknown =
            parse_txn(br#"[{"KV":{"Verb":"get","Key":"a"}},{"KV":{"Verb":"fly"}}]"#).unwrap();
        assert_eq!(unknown.unknown_verbs.len(), 1);
        assert_eq!(unknown.unknown_verbs[0].0, 1);
        let many = format!(
            "[{}]",
            vec![r#"{"KV":{"Verb":"get","Key":"a"}}"#; 129].join(",")
        );
        assert_eq!(
            parse_txn(many.as_bytes()).unwrap_err().0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn read_options_parse_and_conflict() {
        let o = read_options(&pairs("index=5&wait=2s&stale")).unwrap();
        assert_eq!(o.index, 5);
        assert!(o.wait >= Duration::from_secs(2) && o.wait <= Duration::from_millis(2125));
        assert_eq!(o.consistency, Consistency::Stale);
        assert!(read_options(&pairs("stale&consistent")).is_err());
        assert!(read_options(&pairs("index=x")).is_err());
        assert!(read_options(&pairs("wait=soon")).is_err());
        assert!(read_options(&pairs("wait=1h")).unwrap().wait <= MAX_WAIT + MAX_WAIT / 16);
    }

    #[test]
    fn entries_show_as_consul_shows_them() {
        let entry = Entry {
            key: "k".into(),
            flags: 1,
            lock_index: 2,
            session: None,
            value: Vec::new(),
            create_index: 3,
            modify_index: 4,
        };
        let json = serde_json::to_string(&EntryJson::new(&entry)).unwrap();
        assert_eq!(
            json,
            r#"{"LockIndex":2,"Key":"k","Flags":1,"Value":null,"CreateIndex":3,"ModifyIndex":4}"#
        );
    }
}
