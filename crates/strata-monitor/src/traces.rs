//! Request traces: an OTLP/HTTP receiver, a store that keeps spans grouped by trace, search,
//! and the routes people and the CLI read them through.
//!
//! - `POST /v1/traces` takes an OTLP `ExportTraceServiceRequest` in protobuf
//!   (`application/x-protobuf`, the OpenTelemetry SDKs' default) or JSON (`application/json`,
//!   what `strata_rpc::trace` exports). Point any SDK at the node's API address:
//!   `OTEL_EXPORTER_OTLP_ENDPOINT=http://NODE:7700`. Compressed bodies are refused with 415
//!   (set `OTEL_EXPORTER_OTLP_COMPRESSION=none`): the workspace carries no gzip decoder.
//! - `GET /v1/monitor/traces?service=&operation=&min_duration=&max_duration=&status=&start=&end=&limit=`
//!   finds traces, newest first; `GET /v1/monitor/traces/{id}` returns one trace's spans.
//!
//! [`TraceStore`] keeps spans in memory, bounded by a span count (the oldest traces go first)
//! and a retention ([`TraceStore::prune`]). Every accepted batch is also appended to
//! `traces.log` in the store's folder as one record: `len: u32 LE`, `crc32(body): u32 LE`, then
//! the body, a JSON [`SpanRecord`] batch. Opening the store replays the file; a torn or corrupt
//! record ends it and the file is truncated there. Appends are not fsynced (a crash may lose the
//! last batches, never the file's earlier records); [`TraceStore::prune`] rewrites the file with
//! only the live traces once more than half of its spans are gone.
//!
//! Each monitor node keeps the traces it received: search is local to the node.

use crate::otlp_http::{self, Encoding, PROTOBUF};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use prometheus::{IntCounterVec, IntGauge, Opts};
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use strata_auth::{Access, Caller, Kind, Names};
use strata_http::{ErrorResponse, Who};
use strata_proto::error::ApiError;
use tokio_util::sync::CancellationToken;

/// Spans kept in memory at most, by default.
pub const DEFAULT_MAX_SPANS: usize = 200_000;
/// How long a trace is kept after its last span arrived, by default.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Traces a search returns when it names no limit.
pub const DEFAULT_LIMIT: usize = 20;
/// Traces a search returns at most.
const MAX_LIMIT: usize = 1000;
/// Longest span name, attribute value or status message kept, in bytes (longer ones are cut).
const MAX_TEXT: usize = 4096;
/// Attributes kept per span at most (the rest are dropped).
const MAX_ATTRIBUTES: usize = 128;
/// `service.name` of spans whose resource names none (the SDKs' own default).
const UNKNOWN_SERVICE: &str = "unknown_service";
/// The store's file in its folder.
const LOG_FILE: &str = "traces.log";
/// Where a compaction writes before it replaces [`LOG_FILE`].
const COMPACT_FILE: &str = "traces.log.tmp";
/// Bytes before each record's body: its length and its crc32.
const RECORD_HEADER: u64 = 8;
/// How often [`run_pruning`] prunes.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// What the store keeps and the API returns.

/// One span, as the store keeps it and `GET /v1/monitor/traces/{id}` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    /// The trace it belongs to: 32 lowercase hex digits.
    pub trace_id: String,
    /// Its id: 16 lowercase hex digits.
    pub span_id: String,
    /// The span it is a child of; `None` for a root.
    #[serde(default)]
    pub parent_span_id: Option<String>,
    /// `service.name` of the resource that sent it.
    pub service: String,
    /// The operation (`orders.v1.Orders/Create`, `GET /users/{id}`).
    pub name: String,
    /// `internal`, `server`, `client`, `producer`, `consumer` or `unspecified`.
    pub kind: String,
    /// When it started, in nanoseconds since the Unix epoch.
    pub start_unix_nano: u64,
    /// When it ended, in nanoseconds since the Unix epoch.
    pub end_unix_nano: u64,
    /// Its attributes; values that are not strings are written as JSON.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// 0 unset, 1 ok, 2 error (OTLP's `StatusCode`).
    #[serde(default)]
    pub status_code: i32,
    /// Why it failed, for errors.
    #[serde(default)]
    pub status_message: String,
}

impl SpanRecord {
    /// How long it took (zero when it ends before it starts).
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_unix_nano.saturating_sub(self.start_unix_nano))
    }
}

/// OTLP status code of a failed span.
const STATUS_ERROR: i32 = 2;

/// What [`TraceStore::find`] looks for. A trace matches when one of its spans matches every
/// criterion given.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceQuery {
    /// The span's `service.name`.
    pub service: Option<String>,
    /// The span's name.
    pub operation: Option<String>,
    /// The span took at least this long.
    pub min_duration: Option<Duration>,
    /// The span took at most this long.
    pub max_duration: Option<Duration>,
    /// `ok`, `error` or `unset` (any other value matches nothing).
    pub status: Option<String>,
    /// The span started at or after this time (Unix milliseconds).
    pub start_ms: Option<i64>,
    /// The span started at or before this time (Unix milliseconds).
    pub end_ms: Option<i64>,
    /// Traces returned at most.
    pub limit: usize,
}

impl Default for TraceQuery {
    fn default() -> Self {
        TraceQuery {
            service: None,
            operation: None,
            min_duration: None,
            max_duration: None,
            status: None,
            start_ms: None,
            end_ms: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// One trace in a search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceSummary {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// Service of the root span (the earliest span without a parent in the trace).
    pub root_service: String,
    /// Name of the root span.
    pub root_operation: String,
    /// When its earliest span started (Unix milliseconds).
    pub start_ms: i64,
    /// From its earliest start to its latest end.
    pub duration_ms: f64,
    /// How many spans it has.
    pub spans: usize,
    /// The services its spans came from, sorted.
    pub services: Vec<String>,
    /// How many of its spans failed.
    pub errors: usize,
}

/// What [`TraceStore::append`] did with a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Spans stored.
    pub stored: usize,
    /// Spans refused because a trace or span id is missing, malformed or zero.
    pub invalid: usize,
    /// Spans already stored (an exporter's retry), skipped.
    pub duplicates: usize,
}

/// How much the store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceCounts {
    /// Traces in memory.
    pub traces: usize,
    /// Spans in memory.
    pub spans: usize,
    /// Spans in the file, live or not.
    pub file_spans: usize,
    /// Bytes of the file.
    pub file_bytes: u64,
}

// ---------------------------------------------------------------------------------------------
// OTLP protobuf: the subset of opentelemetry-proto the receiver reads.

/// Hand-written messages of `opentelemetry/proto/{collector/trace,trace,common,resource}/v1`,
/// with only the fields the store keeps (prost skips the others).
pub mod otlp {
    use prost::{Message, Oneof};

    /// `ExportTraceServiceRequest`.
    #[derive(Clone, PartialEq, Message)]
    pub struct ExportTraceServiceRequest {
        /// Spans, grouped by the resource that made them.
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }

    /// `ExportTraceServiceResponse`.
    #[derive(Clone, PartialEq, Message)]
    pub struct ExportTraceServiceResponse {
        /// Set when some spans were refused.
        #[prost(message, optional, tag = "1")]
        pub partial_success: Option<ExportTracePartialSuccess>,
    }

    /// `ExportTracePartialSuccess`.
    #[derive(Clone, PartialEq, Message)]
    pub struct ExportTracePartialSuccess {
        /// Spans refused.
        #[prost(int64, tag = "1")]
        pub rejected_spans: i64,
        /// Why.
        #[prost(string, tag = "2")]
        pub error_message: String,
    }

    /// `ResourceSpans`.
    #[derive(Clone, PartialEq, Message)]
    pub struct ResourceSpans {
        /// The process or service that made the spans.
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        /// Spans, grouped by instrumentation scope.
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }

    /// `Resource`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Resource {
        /// `service.name` among them.
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }

    /// `ScopeSpans`.
    #[derive(Clone, PartialEq, Message)]
    pub struct ScopeSpans {
        /// The instrumentation library.
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        /// The spans.
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }

    /// `InstrumentationScope`.
    #[derive(Clone, PartialEq, Message)]
    pub struct InstrumentationScope {
        /// Library name.
        #[prost(string, tag = "1")]
        pub name: String,
        /// Library version.
        #[prost(string, tag = "2")]
        pub version: String,
    }

    /// `Span`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Span {
        /// 16 bytes.
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        /// 8 bytes.
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        /// W3C `tracestate`.
        #[prost(string, tag = "3")]
        pub trace_state: String,
        /// 8 bytes, empty for a root.
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        /// The operation.
        #[prost(string, tag = "5")]
        pub name: String,
        /// `SpanKind`: 0 unspecified, 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
        #[prost(int32, tag = "6")]
        pub kind: i32,
        /// Nanoseconds since the Unix epoch.
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        /// Nanoseconds since the Unix epoch.
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        /// Attributes.
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        /// How it ended.
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
    }

    /// `Status` (of a span).
    #[derive(Clone, PartialEq, Message)]
    pub struct Status {
        /// Why it failed.
        #[prost(string, tag = "2")]
        pub message: String,
        /// 0 unset, 1 ok, 2 error.
        #[prost(int32, tag = "3")]
        pub code: i32,
    }

    /// `KeyValue`.
    #[derive(Clone, PartialEq, Message)]
    pub struct KeyValue {
        /// Attribute name.
        #[prost(string, tag = "1")]
        pub key: String,
        /// Attribute value.
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    /// `AnyValue`.
    #[derive(Clone, PartialEq, Message)]
    pub struct AnyValue {
        /// One of the kinds, or none.
        #[prost(oneof = "any_value::Value", tags = "1, 2, 3, 4, 5, 6, 7")]
        pub value: Option<any_value::Value>,
    }

    /// The kinds of [`AnyValue`].
    pub mod any_value {
        use super::{ArrayValue, KeyValueList, Oneof};

        /// `AnyValue.value`.
        #[derive(Clone, PartialEq, Oneof)]
        pub enum Value {
            /// `string_value`.
            #[prost(string, tag = "1")]
            StringValue(String),
            /// `bool_value`.
            #[prost(bool, tag = "2")]
            BoolValue(bool),
            /// `int_value`.
            #[prost(int64, tag = "3")]
            IntValue(i64),
            /// `double_value`.
            #[prost(double, tag = "4")]
            DoubleValue(f64),
            /// `array_value`.
            #[prost(message, tag = "5")]
            ArrayValue(ArrayValue),
            /// `kvlist_value`.
            #[prost(message, tag = "6")]
            KvlistValue(KeyValueList),
            /// `bytes_value`.
            #[prost(bytes = "vec", tag = "7")]
            BytesValue(Vec<u8>),
        }
    }

    /// `ArrayValue`.
    #[derive(Clone, PartialEq, Message)]
    pub struct ArrayValue {
        /// The elements.
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<AnyValue>,
    }

    /// `KeyValueList`.
    #[derive(Clone, PartialEq, Message)]
    pub struct KeyValueList {
        /// The entries.
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<KeyValue>,
    }

    /// `google.rpc.Status`, the body of an OTLP/HTTP protobuf error.
    #[derive(Clone, PartialEq, Message)]
    pub struct RpcStatus {
        /// gRPC status code.
        #[prost(int32, tag = "1")]
        pub code: i32,
        /// What went wrong.
        #[prost(string, tag = "2")]
        pub message: String,
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding.

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// `N` bytes from `2N` hex digits (either case); `None` for anything else.
fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        out[i] = (high * 16 + low) as u8;
    }
    Some(out)
}

/// `text`, cut to at most [`MAX_TEXT`] bytes at a character boundary.
fn clip(mut text: String) -> String {
    if text.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The name of an OTLP `SpanKind`.
fn kind_name(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

/// A double as JSON (NaN and infinities as strings, as OTLP JSON writes them).
fn double(value: f64) -> Json {
    serde_json::Number::from_f64(value)
        .map_or_else(|| Json::String(value.to_string()), Json::Number)
}

/// An attribute's value as the store keeps it: strings as they are, anything else as JSON.
fn value_text(value: Json) -> String {
    match value {
        Json::String(text) => text,
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

/// The first [`MAX_ATTRIBUTES`] attributes, values written as text and clipped.
fn attribute_map(pairs: impl Iterator<Item = (String, Json)>) -> BTreeMap<String, String> {
    pairs
        .take(MAX_ATTRIBUTES)
        .map(|(key, value)| (clip(key), clip(value_text(value))))
        .collect()
}

fn proto_value(value: &otlp::AnyValue) -> Json {
    use otlp::any_value::Value;
    match &value.value {
        None => Json::Null,
        Some(Value::StringValue(text)) => Json::String(text.clone()),
        Some(Value::BoolValue(b)) => Json::Bool(*b),
        Some(Value::IntValue(n)) => Json::from(*n),
        Some(Value::DoubleValue(d)) => double(*d),
        Some(Value::ArrayValue(array)) => {
            Json::Array(array.values.iter().map(proto_value).collect())
        }
        Some(Value::KvlistValue(list)) => Json::Object(
            list.values
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        kv.value.as_ref().map_or(Json::Null, proto_value),
                    )
                })
                .collect(),
        ),
        Some(Value::BytesValue(bytes)) => Json::String(hex(bytes)),
    }
}

fn proto_attributes(attributes: &[otlp::KeyValue]) -> BTreeMap<String, String> {
    attribute_map(attributes.iter().map(|kv| {
        (
            kv.key.clone(),
            kv.value.as_ref().map_or(Json::Null, proto_value),
        )
    }))
}

/// The spans of an OTLP protobuf `ExportTraceServiceRequest`. Ids are not checked here
/// ([`TraceStore::append`] refuses bad ones); any bytes give a result or an error, never a panic.
pub fn decode_protobuf(body: &[u8]) -> Result<Vec<SpanRecord>, String> {
    let request = otlp::ExportTraceServiceRequest::decode(body)
        .map_err(|e| format!("invalid OTLP protobuf body: {e}"))?;
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| kv.value.as_ref())
            .map(|v| clip(value_text(proto_value(v))))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| UNKNOWN_SERVICE.to_string());
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                let status = span.status.unwrap_or_default();
                out.push(SpanRecord {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty())
                        .then(|| hex(&span.parent_span_id)),
                    service: service.clone(),
                    attributes: proto_attributes(&span.attributes),
                    name: clip(span.name),
                    kind: kind_name(span.kind).to_string(),
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                    status_code: status.code,
                    status_message: clip(status.message),
                });
            }
        }
    }
    Ok(out)
}

/// A JSON number that OTLP JSON may also write as a string (64-bit integers, enum names).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Lenient {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Text(String),
}

impl Lenient {
    /// A non-negative integer (timestamps).
    fn unsigned(value: Option<&Lenient>, field: &str) -> Result<u64, String> {
        match value {
            None => Ok(0),
            Some(Lenient::Unsigned(n)) => Ok(*n),
            Some(Lenient::Float(f)) if f.is_finite() && *f >= 0.0 && f.fract() == 0.0 => {
                Ok(*f as u64)
            }
            Some(Lenient::Text(text)) => text
                .parse()
                .map_err(|_| format!("{field} {text:?} is not a non-negative integer")),
            Some(other) => Err(format!("{field} {other:?} is not a non-negative integer")),
        }
    }

    /// An enum, by number or by name (`names[i]` is value `i`).
    fn enumeration(value: Option<&Lenient>, names: &[&str]) -> i32 {
        match value {
            None => 0,
            Some(Lenient::Unsigned(n)) => i32::try_from(*n).unwrap_or(0),
            Some(Lenient::Signed(n)) => i32::try_from(*n).unwrap_or(0),
            Some(Lenient::Float(_)) => 0,
            Some(Lenient::Text(text)) => text.parse().unwrap_or_else(|_| {
                names
                    .iter()
                    .position(|n| n.eq_ignore_ascii_case(text))
                    .map_or(0, |i| i as i32)
            }),
        }
    }

    /// An `int_value`.
    fn integer(&self) -> Json {
        match self {
            Lenient::Unsigned(n) => Json::from(*n),
            Lenient::Signed(n) => Json::from(*n),
            Lenient::Float(f) => double(*f),
            Lenient::Text(text) => text
                .parse::<i64>()
                .map_or_else(|_| Json::String(text.clone()), Json::from),
        }
    }

    /// A `double_value`.
    fn float(&self) -> Json {
        match self {
            Lenient::Unsigned(n) => double(*n as f64),
            Lenient::Signed(n) => double(*n as f64),
            Lenient::Float(f) => double(*f),
            Lenient::Text(text) => text
                .parse::<f64>()
                .map_or_else(|_| Json::String(text.clone()), double),
        }
    }
}

const SPAN_KINDS: [&str; 6] = [
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
];
const STATUS_CODES: [&str; 3] = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"];

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonRequest {
    resource_spans: Vec<JsonResourceSpans>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonResourceSpans {
    resource: Option<JsonResource>,
    scope_spans: Vec<JsonScopeSpans>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonResource {
    attributes: Vec<JsonKeyValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonScopeSpans {
    spans: Vec<JsonSpan>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonSpan {
    trace_id: Option<String>,
    span_id: Option<String>,
    parent_span_id: Option<String>,
    name: Option<String>,
    kind: Option<Lenient>,
    start_time_unix_nano: Option<Lenient>,
    end_time_unix_nano: Option<Lenient>,
    attributes: Vec<JsonKeyValue>,
    status: Option<JsonStatus>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonStatus {
    message: Option<String>,
    code: Option<Lenient>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonKeyValue {
    key: String,
    value: Option<JsonAnyValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonAnyValue {
    string_value: Option<String>,
    bool_value: Option<bool>,
    int_value: Option<Lenient>,
    double_value: Option<Lenient>,
    array_value: Option<JsonArrayValue>,
    kvlist_value: Option<JsonKeyValueList>,
    /// Base64, kept as written.
    bytes_value: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct JsonArrayValue {
    values: Vec<JsonAnyValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct JsonKeyValueList {
    values: Vec<JsonKeyValue>,
}

fn json_value(value: &JsonAnyValue) -> Json {
    if let Some(text) = &value.string_value {
        Json::String(text.clone())
    } else if let Some(b) = value.bool_value {
        Json::Bool(b)
    } else if let Some(n) = &value.int_value {
        n.integer()
    } else if let Some(d) = &value.double_value {
        d.float()
    } else if let Some(array) = &value.array_value {
        Json::Array(array.values.iter().map(json_value).collect())
    } else if let Some(list) = &value.kvlist_value {
        Json::Object(
            list.values
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        kv.value.as_ref().map_or(Json::Null, json_value),
                    )
                })
                .collect(),
        )
    } else if let Some(bytes) = &value.bytes_value {
        Json::String(bytes.clone())
    } else {
        Json::Null
    }
}

fn json_attributes(attributes: &[JsonKeyValue]) -> BTreeMap<String, String> {
    attribute_map(attributes.iter().map(|kv| {
        (
            kv.key.clone(),
            kv.value.as_ref().map_or(Json::Null, json_value),
        )
    }))
}

/// The spans of an OTLP JSON `ExportTraceServiceRequest` (hex ids, lowerCamelCase names,
/// 64-bit integers as strings or numbers, enums as numbers or names). Ids are not checked here
/// ([`TraceStore::append`] refuses bad ones); any bytes give a result or an error, never a panic.
pub fn decode_json(body: &[u8]) -> Result<Vec<SpanRecord>, String> {
    let request: JsonRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid OTLP JSON body: {e}"))?;
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| kv.value.as_ref())
            .map(|v| clip(value_text(json_value(v))))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| UNKNOWN_SERVICE.to_string());
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                let status = span.status.unwrap_or_default();
                let start =
                    Lenient::unsigned(span.start_time_unix_nano.as_ref(), "startTimeUnixNano")?;
                let end = Lenient::unsigned(span.end_time_unix_nano.as_ref(), "endTimeUnixNano")?;
                out.push(SpanRecord {
                    trace_id: span.trace_id.unwrap_or_default(),
                    span_id: span.span_id.unwrap_or_default(),
                    parent_span_id: span.parent_span_id.filter(|p| !p.is_empty()),
                    service: service.clone(),
                    name: clip(span.name.unwrap_or_default()),
                    kind: kind_name(Lenient::enumeration(span.kind.as_ref(), &SPAN_KINDS))
                        .to_string(),
                    start_unix_nano: start,
                    end_unix_nano: end,
                    attributes: json_attributes(&span.attributes),
                    status_code: Lenient::enumeration(status.code.as_ref(), &STATUS_CODES),
                    status_message: clip(status.message.unwrap_or_default()),
                });
            }
        }
    }
    Ok(out)
}

/// The node's own components hand their spans over here (the gateway does): the records the
/// OTLP receiver would store for the same spans, without encoding them, posting them to this
/// node's API and decoding them again, and with no credentials to present.
pub struct LocalSpans(pub Arc<TraceStore>);

impl strata_trace::LocalSink for LocalSpans {
    fn accept(&self, service: &str, spans: Vec<strata_trace::Span>) -> Result<(), String> {
        let records = spans
            .into_iter()
            .map(|span| local_record(service, span))
            .collect();
        self.0.append(records).map(|_| ())
    }
}

/// What [`decode_json`] makes of `span` as [`strata_trace::export_body`] encodes it.
fn local_record(service: &str, span: strata_trace::Span) -> SpanRecord {
    use strata_trace::{AttributeValue, SpanKind};
    let start = span
        .start
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let duration = u64::try_from(span.duration.as_nanos()).unwrap_or(u64::MAX);
    let attributes = span.attributes.into_iter().map(|(key, value)| {
        let value = match value {
            AttributeValue::Str(text) => Json::String(text),
            AttributeValue::Int(n) => Json::from(n),
        };
        (key.to_string(), value)
    });
    SpanRecord {
        trace_id: span.context.trace_hex(),
        span_id: span.context.span_hex(),
        parent_span_id: span.parent.map(|parent| hex(&parent)),
        service: clip(service.to_string()),
        name: clip(span.name),
        kind: match span.kind {
            SpanKind::Server => "server",
            SpanKind::Client => "client",
        }
        .to_string(),
        start_unix_nano: start,
        end_unix_nano: start.saturating_add(duration),
        attributes: attribute_map(attributes),
        status_code: if span.error.is_some() {
            STATUS_ERROR
        } else {
            1
        },
        status_message: clip(span.error.unwrap_or_default()),
    }
}

// ---------------------------------------------------------------------------------------------
// The store.

type TraceKey = [u8; 16];
type SpanKey = [u8; 8];

/// One trace in memory.
struct Trace {
    /// When it was first seen, in arrival order: the oldest trace is evicted first.
    seq: u64,
    /// When its last span arrived (Unix milliseconds): retention counts from here, so clocks
    /// of senders do not decide what expires.
    received_ms: i64,
    /// Its earliest span start.
    start_nano: u64,
    /// Its latest span end.
    end_nano: u64,
    /// Ids of its spans, to skip a retried batch's spans.
    span_ids: HashSet<SpanKey>,
    /// Its spans, in arrival order.
    spans: Vec<SpanRecord>,
}

/// A batch as one record of the file.
#[derive(Serialize)]
struct BatchOut<'a> {
    received_ms: i64,
    spans: &'a [SpanRecord],
}

/// A record of the file, read back.
#[derive(Deserialize)]
struct BatchIn {
    received_ms: i64,
    spans: Vec<SpanRecord>,
}

/// What the lock guards.
struct Inner {
    /// Every trace by id.
    traces: HashMap<TraceKey, Trace>,
    /// Trace ids by [`Trace::seq`]: eviction order.
    order: BTreeMap<u64, TraceKey>,
    /// The next trace's `seq`.
    next_seq: u64,
    /// Spans in `traces`.
    spans: usize,
    /// The file, opened for appending.
    file: File,
    /// Its length: where the next record starts (and where a failed write is cut back to).
    file_bytes: u64,
    /// Spans in the file, including the ones no longer in memory.
    file_spans: usize,
}

impl Inner {
    /// Adds a span whose ids were checked; false when its trace already has that span.
    fn insert(
        &mut self,
        trace: TraceKey,
        span_id: SpanKey,
        span: SpanRecord,
        received_ms: i64,
    ) -> bool {
        let entry = match self.traces.entry(trace) {
            Entry::Occupied(occupied) => occupied.into_mut(),
            Entry::Vacant(vacant) => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.order.insert(seq, trace);
                vacant.insert(Trace {
                    seq,
                    received_ms,
                    start_nano: u64::MAX,
                    end_nano: 0,
                    span_ids: HashSet::new(),
                    spans: Vec::new(),
                })
            }
        };
        if !entry.span_ids.insert(span_id) {
            return false;
        }
        entry.received_ms = entry.received_ms.max(received_ms);
        entry.start_nano = entry.start_nano.min(span.start_unix_nano);
        entry.end_nano = entry
            .end_nano
            .max(span.end_unix_nano.max(span.start_unix_nano));
        entry.spans.push(span);
        self.spans += 1;
        true
    }

    fn remove(&mut self, trace: &TraceKey) {
        if let Some(removed) = self.traces.remove(trace) {
            self.order.remove(&removed.seq);
            self.spans -= removed.spans.len();
        }
    }

    /// Drops the oldest traces until at most `max_spans` spans remain.
    fn evict(&mut self, max_spans: usize) {
        while self.spans > max_spans {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(removed) = self.traces.remove(&oldest) {
                self.spans -= removed.spans.len();
            }
        }
    }

    /// Appends one record; on failure cuts the file back so no partial record sits before
    /// later ones.
    fn write_record(&mut self, body: &[u8]) -> io::Result<()> {
        let frame = frame(body)?;
        if let Err(e) = self.file.write_all(&frame) {
            let _ = self.file.set_len(self.file_bytes);
            return Err(e);
        }
        self.file_bytes += frame.len() as u64;
        Ok(())
    }

    /// Adds a batch read back from the file (spans with bad ids or seen before are skipped).
    fn replay(&mut self, batch: BatchIn, max_spans: usize) {
        self.file_spans += batch.spans.len();
        for span in batch.spans {
            if let Some((trace, id, span)) = checked(span) {
                self.insert(trace, id, span, batch.received_ms);
            }
        }
        self.evict(max_spans);
    }
}

/// `body` behind its length and crc32.
fn frame(body: &[u8]) -> io::Result<Vec<u8>> {
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "trace record over 4 GiB"))?;
    let mut out = Vec::with_capacity(body.len() + RECORD_HEADER as usize);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// The span with its ids checked and written in lowercase; `None` when its trace or span id
/// is malformed or zero. A malformed or zero parent makes it a root.
fn checked(mut span: SpanRecord) -> Option<(TraceKey, SpanKey, SpanRecord)> {
    let trace = unhex::<16>(&span.trace_id).filter(|t| t != &[0; 16])?;
    let id = unhex::<8>(&span.span_id).filter(|s| s != &[0; 8])?;
    span.trace_id = hex(&trace);
    span.span_id = hex(&id);
    span.parent_span_id = span
        .parent_span_id
        .as_deref()
        .and_then(unhex::<8>)
        .filter(|p| p != &[0; 8])
        .map(|p| hex(&p));
    Some((trace, id, span))
}

fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The store's metrics.
struct TraceMetrics {
    /// `strata_monitor_spans_total{result}`.
    spans: IntCounterVec,
    /// `strata_monitor_traces`.
    traces: IntGauge,
}

/// Spans grouped by trace: in memory for search, in an append-only file for restarts.
pub struct TraceStore {
    /// Its folder (the file, and where a compaction writes).
    dir: PathBuf,
    /// How long a trace is kept after its last span arrived.
    retention: Duration,
    /// Spans kept at most.
    max_spans: usize,
    /// A std mutex: never held across an `.await`. Appends write the file under it, so the
    /// file's record order is the order spans entered memory, and replay rebuilds the same state.
    inner: Mutex<Inner>,
    metrics: TraceMetrics,
}

impl std::fmt::Debug for TraceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceStore")
            .field("dir", &self.dir)
            .field("counts", &self.counts())
            .finish()
    }
}

impl TraceStore {
    /// Opens (or creates) the store in `dir`, replays its file, and prunes what expired.
    /// Blocking: call it from `spawn_blocking`.
    pub fn open(
        dir: &std::path::Path,
        retention: Duration,
        max_spans: usize,
    ) -> Result<TraceStore, String> {
        let path = dir.join(LOG_FILE);
        let context = |what: &str, e: io::Error| format!("{what} {}: {e}", path.display());
        fs::create_dir_all(dir).map_err(|e| context("create the folder of", e))?;
        let _ = fs::remove_file(dir.join(COMPACT_FILE));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| context("open", e))?;
        let max_spans = max_spans.max(1);
        let metrics = TraceMetrics {
            spans: IntCounterVec::new(
                Opts::new(
                    "strata_monitor_spans_total",
                    "Spans the trace receiver got, by result: stored, or dropped (bad ids, \
                     duplicates, or not written)",
                ),
                &["result"],
            )
            .expect("a valid metric"),
            traces: IntGauge::new(
                "strata_monitor_traces",
                "Traces the monitor keeps in memory",
            )
            .expect("a valid metric"),
        };
        metrics.spans.with_label_values(&["stored"]);
        metrics.spans.with_label_values(&["dropped"]);
        let mut inner = Inner {
            traces: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            spans: 0,
            file,
            file_bytes: 0,
            file_spans: 0,
        };
        replay(&path, &mut inner, max_spans).map_err(|e| context("read", e))?;
        let store = TraceStore {
            dir: dir.to_path_buf(),
            retention,
            max_spans,
            inner: Mutex::new(inner),
            metrics,
        };
        let counts = store.counts();
        tracing::info!(
            dir = %dir.display(),
            traces = counts.traces,
            spans = counts.spans,
            "trace store opened"
        );
        store.prune(SystemTime::now())?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `strata_monitor_spans_total` and `strata_monitor_traces`.
    pub fn register_metrics(
        &self,
        registry: &prometheus::Registry,
    ) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.metrics.spans.clone()))?;
        registry.register(Box::new(self.metrics.traces.clone()))?;
        Ok(())
    }

    /// How much it holds.
    pub fn counts(&self) -> TraceCounts {
        let inner = self.lock();
        TraceCounts {
            traces: inner.traces.len(),
            spans: inner.spans,
            file_spans: inner.file_spans,
            file_bytes: inner.file_bytes,
        }
    }

    /// Stores a batch received now. Blocking (it writes the file).
    pub fn append(&self, spans: Vec<SpanRecord>) -> Result<Appended, String> {
        self.append_at(spans, unix_ms(SystemTime::now()))
    }

    /// Stores a batch received at `received_ms` (Unix milliseconds). Spans with bad ids and
    /// spans already stored are skipped; the rest go to the file, then to memory, and the
    /// oldest traces are evicted beyond the span limit. When the file cannot be written nothing
    /// is stored.
    pub fn append_at(&self, spans: Vec<SpanRecord>, received_ms: i64) -> Result<Appended, String> {
        let mut result = Appended::default();
        let mut keys = Vec::with_capacity(spans.len());
        let mut records = Vec::with_capacity(spans.len());
        let mut in_batch = HashSet::new();
        for span in spans {
            let Some((trace, id, span)) = checked(span) else {
                result.invalid += 1;
                continue;
            };
            if !in_batch.insert((trace, id)) {
                result.duplicates += 1;
                continue;
            }
            keys.push((trace, id));
            records.push(span);
        }
        let dropped = self.metrics.spans.with_label_values(&["dropped"]);
        dropped.inc_by(result.invalid as u64);
        if records.is_empty() {
            dropped.inc_by(result.duplicates as u64);
            return Ok(result);
        }
        // Encoded before taking the lock, so a large batch does not hold up searches. A span
        // already stored goes to the file again, and replay skips it as `insert` does here.
        let body = serde_json::to_vec(&BatchOut {
            received_ms,
            spans: &records,
        })
        .map_err(|e| format!("cannot encode spans: {e}"))?;
        let mut inner = self.lock();
        if let Err(e) = inner.write_record(&body) {
            dropped.inc_by((result.duplicates + records.len()) as u64);
            return Err(format!(
                "cannot write {}: {e}",
                self.dir.join(LOG_FILE).display()
            ));
        }
        inner.file_spans += records.len();
        for ((trace, id), span) in keys.into_iter().zip(records) {
            if inner.insert(trace, id, span, received_ms) {
                result.stored += 1;
            } else {
                result.duplicates += 1;
            }
        }
        inner.evict(self.max_spans);
        self.metrics.traces.set(inner.traces.len() as i64);
        drop(inner);
        dropped.inc_by(result.duplicates as u64);
        self.metrics
            .spans
            .with_label_values(&["stored"])
            .inc_by(result.stored as u64);
        Ok(result)
    }

    /// Drops the traces whose last span arrived more than the retention before `now`, and
    /// rewrites the file with only the live traces once more than half of its spans are gone.
    /// Returns how many traces it dropped. Blocking.
    pub fn prune(&self, now: SystemTime) -> Result<usize, String> {
        let retention_ms = i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = unix_ms(now).saturating_sub(retention_ms);
        let mut inner = self.lock();
        let expired: Vec<TraceKey> = inner
            .traces
            .iter()
            .filter(|(_, t)| t.received_ms < cutoff)
            .map(|(key, _)| *key)
            .collect();
        for key in &expired {
            inner.remove(key);
        }
        self.metrics.traces.set(inner.traces.len() as i64);
        if inner.spans * 2 < inner.file_spans {
            let before = inner.file_bytes;
            compact(&self.dir, &mut inner).map_err(|e| {
                format!("cannot compact {}: {e}", self.dir.join(LOG_FILE).display())
            })?;
            tracing::info!(
                dir = %self.dir.display(),
                before,
                after = inner.file_bytes,
                traces = inner.traces.len(),
                "trace file compacted"
            );
        }
        Ok(expired.len())
    }

    /// The traces with a span matching every criterion of `q`, newest first (by their earliest
    /// span), at most `q.limit`.
    pub fn find(&self, q: &TraceQuery) -> Vec<TraceSummary> {
        let status = match q.status.as_deref() {
            None => None,
            Some("unset") => Some(0),
            Some("ok") => Some(1),
            Some("error") => Some(STATUS_ERROR),
            Some(_) => return Vec::new(),
        };
        if q.limit == 0 {
            return Vec::new();
        }
        let inner = self.lock();
        let mut hits: Vec<(&TraceKey, &Trace)> = inner
            .traces
            .iter()
            .filter(|(_, trace)| trace.spans.iter().any(|s| span_matches(s, q, status)))
            .collect();
        hits.sort_unstable_by(|a, b| b.1.start_nano.cmp(&a.1.start_nano).then(a.0.cmp(b.0)));
        hits.truncate(q.limit);
        hits.into_iter()
            .map(|(key, trace)| summarize(key, trace))
            .collect()
    }

    /// Every span of the trace `trace_id` (hex), by start time; `None` when it is not kept.
    pub fn get(&self, trace_id: &str) -> Option<Vec<SpanRecord>> {
        let key = unhex::<16>(trace_id)?;
        let mut spans = self.lock().traces.get(&key)?.spans.clone();
        spans.sort_by(|a, b| {
            a.start_unix_nano
                .cmp(&b.start_unix_nano)
                .then_with(|| a.span_id.cmp(&b.span_id))
        });
        Some(spans)
    }
}

fn span_matches(span: &SpanRecord, q: &TraceQuery, status: Option<i32>) -> bool {
    if q.service.as_ref().is_some_and(|s| *s != span.service) {
        return false;
    }
    if q.operation.as_ref().is_some_and(|o| *o != span.name) {
        return false;
    }
    let duration = span.duration();
    if q.min_duration.is_some_and(|min| duration < min) {
        return false;
    }
    if q.max_duration.is_some_and(|max| duration > max) {
        return false;
    }
    if status.is_some_and(|code| code != span.status_code) {
        return false;
    }
    let start_ms = (span.start_unix_nano / 1_000_000) as i64;
    if q.start_ms.is_some_and(|from| start_ms < from) {
        return false;
    }
    q.end_ms.is_none_or(|to| start_ms <= to)
}

fn summarize(key: &TraceKey, trace: &Trace) -> TraceSummary {
    let ids: HashSet<&str> = trace.spans.iter().map(|s| s.span_id.as_str()).collect();
    // The root: the earliest span without a parent, else the earliest whose parent is missing.
    let root = trace
        .spans
        .iter()
        .filter(|s| s.parent_span_id.as_deref().is_none_or(|p| !ids.contains(p)))
        .min_by_key(|s| (s.parent_span_id.is_some(), s.start_unix_nano))
        .or_else(|| trace.spans.iter().min_by_key(|s| s.start_unix_nano));
    let services: BTreeSet<&str> = trace.spans.iter().map(|s| s.service.as_str()).collect();
    TraceSummary {
        trace_id: hex(key),
        root_service: root.map(|s| s.service.clone()).unwrap_or_default(),
        root_operation: root.map(|s| s.name.clone()).unwrap_or_default(),
        start_ms: (trace.start_nano / 1_000_000) as i64,
        duration_ms: trace.end_nano.saturating_sub(trace.start_nano) as f64 / 1e6,
        spans: trace.spans.len(),
        services: services.into_iter().map(str::to_string).collect(),
        errors: trace
            .spans
            .iter()
            .filter(|s| s.status_code == STATUS_ERROR)
            .count(),
    }
}

/// Reads the file's records into `inner`; truncates a torn or corrupt tail.
fn replay(path: &std::path::Path, inner: &mut Inner, max_spans: usize) -> io::Result<()> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut at = 0u64;
    while at + RECORD_HEADER <= len {
        let mut header = [0u8; RECORD_HEADER as usize];
        reader.read_exact(&mut header)?;
        let body_len = u64::from(u32::from_le_bytes([
            header[0], header[1], header[2], header[3],
        ]));
        let sum = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if at + RECORD_HEADER + body_len > len {
            break;
        }
        let mut body = vec![0u8; body_len as usize];
        reader.read_exact(&mut body)?;
        if crc32fast::hash(&body) != sum {
            break;
        }
        let Ok(batch) = serde_json::from_slice::<BatchIn>(&body) else {
            break;
        };
        inner.replay(batch, max_spans);
        at += RECORD_HEADER + body_len;
    }
    if at < len {
        tracing::warn!(
            path = %path.display(),
            valid = at,
            size = len,
            "trace file ends in a torn or corrupt record; truncating it there"
        );
        inner.file.set_len(at)?;
    }
    inner.file_bytes = at;
    Ok(())
}

/// Rewrites the file with one record per live trace, oldest first, and swaps it in.
fn compact(dir: &std::path::Path, inner: &mut Inner) -> io::Result<()> {
    let tmp = dir.join(COMPACT_FILE);
    let _ = fs::remove_file(&tmp);
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&tmp)?;
    let mut bytes = 0u64;
    {
        let mut out = BufWriter::with_capacity(1 << 16, &file);
        for key in inner.order.values() {
            let Some(trace) = inner.traces.get(key) else {
                continue;
            };
            let body = serde_json::to_vec(&BatchOut {
                received_ms: trace.received_ms,
                spans: &trace.spans,
            })
            .map_err(io::Error::other)?;
            let record = frame(&body)?;
            out.write_all(&record)?;
            bytes += record.len() as u64;
        }
        out.flush()?;
    }
    file.sync_all()?;
    fs::rename(&tmp, dir.join(LOG_FILE))?;
    // The new file is in place: from here on appends go to it, whatever happens next.
    inner.file = file;
    inner.file_bytes = bytes;
    inner.file_spans = inner.spans;
    if let Err(error) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(%error, dir = %dir.display(), "cannot sync the trace folder after a compaction");
    }
    Ok(())
}

/// Prunes `store` every minute until `cancel`.
///
/// Cancel safety: returns at once when `cancel` fires; a prune under way finishes on its
/// blocking thread.
pub async fn run_pruning(store: Arc<TraceStore>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(PRUNE_EVERY) => {}
        }
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.prune(SystemTime::now())).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "trace retention failed"),
            Err(error) => tracing::error!(%error, "trace retention panicked"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP.

/// What the trace handlers share.
#[derive(Clone)]
pub struct TraceState {
    /// The store.
    pub store: Arc<TraceStore>,
    /// Access control.
    pub auth: strata_auth::Auth,
    /// Largest OTLP body taken (`kv.max_request_bytes`).
    pub max_request_bytes: usize,
}

/// `POST /v1/traces`, `GET /v1/monitor/traces` and `GET /v1/monitor/traces/{id}`.
pub fn router(state: TraceState) -> Router {
    Router::new()
        .route("/v1/traces", post(receive))
        .route("/v1/monitor/traces", get(list))
        .route("/v1/monitor/traces/{id}", get(show))
        .with_state(state)
}

fn allow(s: &TraceState, who: &Caller, access: Access) -> Result<(), ApiError> {
    s.auth.gate.check(
        who,
        Kind::Monitor,
        access,
        &Names::prefix(Vec::new()),
        "monitor",
    )
}

/// The answer to an accepted export: empty, or a partial success naming the refused spans.
fn otlp_success(encoding: Encoding, appended: Appended) -> Response {
    let partial = (appended.invalid > 0).then(|| otlp::ExportTracePartialSuccess {
        rejected_spans: appended.invalid as i64,
        error_message: format!(
            "{} spans refused: a trace id must be 32 hex digits and a span id 16, not all zero",
            appended.invalid
        ),
    });
    match encoding {
        Encoding::Protobuf => {
            let body = otlp::ExportTraceServiceResponse {
                partial_success: partial,
            }
            .encode_to_vec();
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF))],
                body,
            )
                .into_response()
        }
        Encoding::Json => {
            let body = match partial {
                None => json!({}),
                Some(p) => json!({"partialSuccess": {
                    "rejectedSpans": p.rejected_spans.to_string(),
                    "errorMessage": p.error_message,
                }}),
            };
            (StatusCode::OK, axum::Json(body)).into_response()
        }
    }
}

/// `POST /v1/traces`: OTLP/HTTP.
async fn receive(
    State(s): State<TraceState>,
    Who(who): Who,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let allowed = allow(&s, &who, Access::Write);
    let (encoding, body) = match otlp_http::accept(&headers, allowed, body, s.max_request_bytes) {
        Ok(accepted) => accepted,
        Err(answer) => return answer,
    };
    let store = s.store.clone();
    let stored = tokio::task::spawn_blocking(move || {
        let spans = match encoding {
            Encoding::Protobuf => decode_protobuf(&body),
            Encoding::Json => decode_json(&body),
        }
        .map_err(|message| (StatusCode::BAD_REQUEST, message))?;
        store
            .append(spans)
            .map_err(|message| (StatusCode::INTERNAL_SERVER_ERROR, message))
    })
    .await;
    match stored {
        Ok(Ok(appended)) => otlp_success(encoding, appended),
        Ok(Err((status, message))) => {
            if status.is_server_error() {
                tracing::error!(error = %message, "cannot store received spans");
            } else {
                tracing::debug!(error = %message, "refused an OTLP export");
            }
            otlp_http::error(encoding, status, message)
        }
        Err(e) => otlp_http::error(encoding, StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn bad(name: &str, value: &str, expected: &str) -> ApiError {
    ApiError::bad_request(format!("invalid {name} {value:?}: {expected}"))
}

/// The search a query string asks for; empty parameters count as absent.
fn parse_query(raw: Option<&str>) -> Result<TraceQuery, ApiError> {
    let mut q = TraceQuery::default();
    let pairs = form_urlencoded::parse(raw.unwrap_or("").as_bytes()).into_owned();
    for (name, value) in pairs {
        if value.is_empty() {
            continue;
        }
        let duration = |v: &str| {
            humantime::parse_duration(v)
                .map_err(|_| bad(&name, v, "use a duration such as 250ms, 2s or 1m"))
        };
        let time = |v: &str| {
            crate::api::parse_time(v).map_err(|_| bad(&name, v, "use Unix seconds or RFC 3339"))
        };
        match name.as_str() {
            "service" => q.service = Some(value),
            "operation" => q.operation = Some(value),
            "min_duration" => q.min_duration = Some(duration(&value)?),
            "max_duration" => q.max_duration = Some(duration(&value)?),
            "status" => match value.as_str() {
                "ok" | "error" | "unset" => q.status = Some(value),
                other => return Err(bad(&name, other, "use ok, error or unset")),
            },
            "start" => q.start_ms = Some(time(&value)?),
            "end" => q.end_ms = Some(time(&value)?),
            "limit" => {
                q.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| bad(&name, &value, "use a number from 1 to 1000"))?;
            }
            _ => {}
        }
    }
    Ok(q)
}

/// `GET /v1/monitor/traces`.
async fn list(
    State(s): State<TraceState>,
    Who(who): Who,
    RawQuery(raw): RawQuery,
) -> Result<axum::Json<Json>, ErrorResponse> {
    allow(&s, &who, Access::Read)?;
    let query = parse_query(raw.as_deref())?;
    let store = s.store.clone();
    let found = tokio::task::spawn_blocking(move || store.find(&query))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(axum::Json(json!({ "traces": found })))
}

/// `GET /v1/monitor/traces/{id}`.
async fn show(
    State(s): State<TraceState>,
    Who(who): Who,
    Path(id): Path<String>,
) -> Result<axum::Json<Json>, ErrorResponse> {
    allow(&s, &who, Access::Read)?;
    let Some(key) = unhex::<16>(&id) else {
        return Err(bad("trace id", &id, "expected 32 hex digits").into());
    };
    let trace_id = hex(&key);
    let store = s.store.clone();
    let lookup = trace_id.clone();
    let spans = tokio::task::spawn_blocking(move || store.get(&lookup))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    match spans {
        Some(spans) => Ok(axum::Json(json!({ "trace_id": trace_id, "spans": spans }))),
        None => Err(ApiError::not_found(format!(
            "no trace {trace_id}: it was never received here, or it expired or was evicted"
        ))
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const ROOT: &str = "00f067aa0ba902b7";
    const CHILD: &str = "53995c3f42cd8ad8";

    /// What `strata_rpc::trace::export_body("checkout", &[span])` writes for a failed client
    /// call (serde_json sorts the keys).
    const STRATA_RPC_EXPORT: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"checkout"}},{"key":"telemetry.sdk.name","value":{"stringValue":"strata-rpc"}}]},"scopeSpans":[{"scope":{"name":"strata-rpc","version":"0.0.0"},"spans":[{"attributes":[{"key":"rpc.system","value":{"stringValue":"grpc"}},{"key":"rpc.service","value":{"stringValue":"orders.v1.Orders"}},{"key":"rpc.method","value":{"stringValue":"Create"}},{"key":"rpc.grpc.status_code","value":{"intValue":"14"}},{"key":"net.peer.name","value":{"stringValue":"127.0.0.1:5000"}},{"key":"strata.instance","value":{"stringValue":"o-1"}},{"key":"strata.retries","value":{"intValue":"1"}}],"endTimeUnixNano":"1002000000","kind":3,"name":"orders.v1.Orders/Create","parentSpanId":"00f067aa0ba902b7","spanId":"53995c3f42cd8ad8","startTimeUnixNano":"1000000000","status":{"code":2,"message":"no instance"},"traceId":"4bf92f3577b34da6a3ce929d0e0e4736"}]}]}]}"#;

    fn span(trace: &str, id: &str, parent: Option<&str>, service: &str, name: &str) -> SpanRecord {
        SpanRecord {
            trace_id: trace.into(),
            span_id: id.into(),
            parent_span_id: parent.map(str::to_string),
            service: service.into(),
            name: name.into(),
            kind: "server".into(),
            start_unix_nano: 1_000_000_000,
            end_unix_nano: 1_010_000_000,
            attributes: BTreeMap::new(),
            status_code: 0,
            status_message: String::new(),
        }
    }

    fn timed(mut s: SpanRecord, start_ms: u64, duration_ms: u64) -> SpanRecord {
        s.start_unix_nano = start_ms * 1_000_000;
        s.end_unix_nano = (start_ms + duration_ms) * 1_000_000;
        s
    }

    /// Trace ids 000..01, 000..02, ... and span ids likewise.
    fn trace_id(n: u64) -> String {
        format!("{n:032x}")
    }
    fn span_id(n: u64) -> String {
        format!("{n:016x}")
    }

    fn open(dir: &std::path::Path) -> TraceStore {
        TraceStore::open(dir, DEFAULT_RETENTION, DEFAULT_MAX_SPANS).unwrap()
    }

    #[test]
    fn a_span_handed_over_in_process_is_stored_as_its_otlp_json_would_be() {
        use strata_trace::{Span, SpanKind, TraceParent};
        let root = TraceParent::root(true);
        let mut failed = Span {
            context: root.child(),
            parent: Some(root.span_id),
            name: "GET /users/{id}".into(),
            kind: SpanKind::Server,
            start: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            duration: Duration::from_micros(1_500),
            error: Some("502 Bad Gateway: the exchange with the upstream failed (reset)".into()),
            attributes: Vec::new(),
        };
        failed.set("http.method", "GET");
        failed.set("http.status_code", 502u16);
        failed.set("strata.retries", 1u32);
        let ok = Span {
            context: root,
            parent: None,
            name: "orders.v1.Orders/Create".into(),
            kind: SpanKind::Client,
            start: UNIX_EPOCH,
            duration: Duration::ZERO,
            error: None,
            attributes: Vec::new(),
        };
        for span in [failed, ok] {
            let body = serde_json::to_vec(&strata_trace::export_body(
                "strata-gateway",
                std::slice::from_ref(&span),
            ))
            .unwrap();
            let decoded = decode_json(&body).unwrap();
            assert_eq!(vec![local_record("strata-gateway", span)], decoded);
        }
    }

    fn now_ms() -> i64 {
        unix_ms(SystemTime::now())
    }

    #[test]
    fn strata_rpc_json_exports_decode() {
        let spans = decode_json(STRATA_RPC_EXPORT.as_bytes()).unwrap();
        assert_eq!(spans.len(), 1);
        let s = &spans[0];
        assert_eq!(s.trace_id, TRACE);
        assert_eq!(s.span_id, CHILD);
        assert_eq!(s.parent_span_id.as_deref(), Some(ROOT));
        assert_eq!(s.service, "checkout");
        assert_eq!(s.name, "orders.v1.Orders/Create");
        assert_eq!(s.kind, "client");
        assert_eq!(s.start_unix_nano, 1_000_000_000);
        assert_eq!(s.end_unix_nano, 1_002_000_000);
        assert_eq!(s.duration(), Duration::from_millis(2));
        assert_eq!(s.status_code, 2);
        assert_eq!(s.status_message, "no instance");
        assert_eq!(s.attributes["rpc.grpc.status_code"], "14");
        assert_eq!(s.attributes["net.peer.name"], "127.0.0.1:5000");
        assert_eq!(s.attributes.len(), 7);
    }

    #[test]
    fn json_takes_numbers_names_and_nested_values() {
        let body = json!({"resourceSpans": [{
            "scopeSpans": [{"spans": [{
                "traceId": TRACE.to_uppercase(), "spanId": ROOT, "parentSpanId": "",
                "name": "GET /", "kind": "SPAN_KIND_SERVER",
                "startTimeUnixNano": 5_000_000u64, "endTimeUnixNano": 7_000_000u64,
                "status": {"code": "STATUS_CODE_ERROR"},
                "attributes": [
                    {"key": "ok", "value": {"boolValue": true}},
                    {"key": "ratio", "value": {"doubleValue": 0.5}},
                    {"key": "list", "value": {"arrayValue": {"values": [{"intValue": 1}, {"stringValue": "a"}]}}},
                    {"key": "map", "value": {"kvlistValue": {"values": [{"key": "k", "value": {"intValue": "-3"}}]}}},
                    {"key": "none"}
                ]
            }]}]
        }]});
        let spans = decode_json(body.to_string().as_bytes()).unwrap();
        let s = &spans[0];
        assert_eq!(s.service, UNKNOWN_SERVICE);
        assert_eq!(s.parent_span_id, None);
        assert_eq!(s.kind, "server");
        assert_eq!(s.status_code, 2);
        assert_eq!(s.start_unix_nano, 5_000_000);
        assert_eq!(s.attributes["ok"], "true");
        assert_eq!(s.attributes["ratio"], "0.5");
        assert_eq!(s.attributes["list"], r#"[1,"a"]"#);
        assert_eq!(s.attributes["map"], r#"{"k":-3}"#);
        assert_eq!(s.attributes["none"], "");
        // The store writes ids in lowercase.
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.append(spans).unwrap();
        assert_eq!(store.get(TRACE).unwrap()[0].trace_id, TRACE);
    }

    #[test]
    fn bad_json_says_what_is_wrong() {
        let e = decode_json(br#"{"resourceSpans": 3}"#).unwrap_err();
        assert!(e.starts_with("invalid OTLP JSON body"), "{e}");
        let body =
            r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"startTimeUnixNano":"soon"}]}]}]}"#;
        let e = decode_json(body.as_bytes()).unwrap_err();
        assert!(e.contains("startTimeUnixNano"), "{e}");
    }

    fn proto_request() -> otlp::ExportTraceServiceRequest {
        use otlp::any_value::Value;
        let kv = |key: &str, value: Value| otlp::KeyValue {
            key: key.into(),
            value: Some(otlp::AnyValue { value: Some(value) }),
        };
        let span = |id: &str, parent: &str, name: &str, code: i32| otlp::Span {
            trace_id: unhex::<16>(TRACE).unwrap().to_vec(),
            span_id: unhex::<8>(id).unwrap().to_vec(),
            trace_state: String::new(),
            parent_span_id: unhex::<8>(parent).map_or(Vec::new(), |p| p.to_vec()),
            name: name.into(),
            kind: 2,
            start_time_unix_nano: 2_000_000_000,
            end_time_unix_nano: 2_500_000_000,
            attributes: vec![
                kv("http.status_code", Value::IntValue(500)),
                kv("payload", Value::BytesValue(vec![0xab, 0x01])),
            ],
            status: Some(otlp::Status {
                message: "boom".into(),
                code,
            }),
        };
        otlp::ExportTraceServiceRequest {
            resource_spans: vec![otlp::ResourceSpans {
                resource: Some(otlp::Resource {
                    attributes: vec![kv("service.name", Value::StringValue("web".into()))],
                }),
                scope_spans: vec![otlp::ScopeSpans {
                    scope: Some(otlp::InstrumentationScope {
                        name: "lib".into(),
                        version: "1".into(),
                    }),
                    spans: vec![span(ROOT, "", "GET /", 0), span(CHILD, ROOT, "SELECT", 2)],
                }],
            }],
        }
    }

    #[test]
    fn protobuf_exports_decode() {
        let body = proto_request().encode_to_vec();
        let spans = decode_protobuf(&body).unwrap();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].service, "web");
        assert_eq!(spans[0].parent_span_id, None);
        assert_eq!(spans[1].parent_span_id.as_deref(), Some(ROOT));
        assert_eq!(spans[1].status_code, 2);
        assert_eq!(spans[1].status_message, "boom");
        assert_eq!(spans[1].duration(), Duration::from_millis(500));
        assert_eq!(spans[1].attributes["http.status_code"], "500");
        assert_eq!(spans[1].attributes["payload"], "ab01");
        assert!(decode_protobuf(b"\x0a\x05\x12").is_err());
    }

    #[test]
    fn search_matches_on_one_span_and_returns_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut spans = Vec::new();
        for n in 1..=5u64 {
            let t = trace_id(n);
            let root = timed(span(&t, &span_id(1), None, "web", "GET /"), n * 1000, 300);
            let mut db = timed(
                span(&t, &span_id(2), Some(&span_id(1)), "db", "SELECT"),
                n * 1000 + 10,
                n * 50,
            );
            if n == 3 {
                db.status_code = STATUS_ERROR;
            }
            spans.push(db);
            spans.push(root);
        }
        let appended = store.append(spans).unwrap();
        assert_eq!(appended.stored, 10);

        let all = store.find(&TraceQuery::default());
        let ids: Vec<&str> = all.iter().map(|t| t.trace_id.as_str()).collect();
        assert_eq!(ids, [5, 4, 3, 2, 1].map(trace_id));
        let third = &all[2];
        assert_eq!(third.root_service, "web");
        assert_eq!(third.root_operation, "GET /");
        assert_eq!(third.start_ms, 3000);
        assert_eq!(third.duration_ms, 300.0);
        assert_eq!(third.spans, 2);
        assert_eq!(third.services, ["db", "web"]);
        assert_eq!(third.errors, 1);

        let find = |q: TraceQuery| -> Vec<String> {
            store.find(&q).into_iter().map(|t| t.trace_id).collect()
        };
        let errors = TraceQuery {
            status: Some("error".into()),
            ..TraceQuery::default()
        };
        assert_eq!(find(errors), [trace_id(3)]);
        // db spans take 50ms * n; "db and at least 200ms" matches traces 4 and 5 only, though
        // every web span takes 300ms.
        let slow_db = TraceQuery {
            service: Some("db".into()),
            min_duration: Some(Duration::from_millis(200)),
            ..TraceQuery::default()
        };
        assert_eq!(find(slow_db), [trace_id(5), trace_id(4)]);
        let fast_select = TraceQuery {
            operation: Some("SELECT".into()),
            max_duration: Some(Duration::from_millis(100)),
            ..TraceQuery::default()
        };
        assert_eq!(find(fast_select), [trace_id(2), trace_id(1)]);
        let window = TraceQuery {
            start_ms: Some(2000),
            end_ms: Some(3999),
            limit: 1,
            ..TraceQuery::default()
        };
        assert_eq!(find(window), [trace_id(3)]);
        let unknown = TraceQuery {
            status: Some("bad".into()),
            ..TraceQuery::default()
        };
        assert!(find(unknown).is_empty());

        let got = store.get(&trace_id(2)).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].name, "GET /");
        assert_eq!(got[1].name, "SELECT");
        assert!(store.get(&trace_id(9)).is_none());
        assert!(store.get("nonsense").is_none());
    }

    #[test]
    fn bad_ids_and_retried_spans_are_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let good = span(TRACE, ROOT, None, "web", "GET /");
        let batch = vec![
            good.clone(),
            good.clone(),
            span(&trace_id(0), ROOT, None, "web", "zero trace"),
            span(TRACE, "xyz", None, "web", "bad span"),
            span("", ROOT, None, "web", "no trace"),
        ];
        let appended = store.append(batch).unwrap();
        assert_eq!(
            appended,
            Appended {
                stored: 1,
                invalid: 3,
                duplicates: 1
            }
        );
        let again = store.append(vec![good]).unwrap();
        assert_eq!(again.duplicates, 1);
        assert_eq!(store.counts().spans, 1);
        // The retry went to the file too; replay skips it.
        assert_eq!(store.counts().file_spans, 2);
        let reopened = open(dir.path());
        assert_eq!(reopened.get(TRACE).unwrap().len(), 1);
        let registry = prometheus::Registry::new();
        store.register_metrics(&registry).unwrap();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains(r#"strata_monitor_spans_total{result="dropped"} 5"#),
            "{text}"
        );
        assert!(
            text.contains(r#"strata_monitor_spans_total{result="stored"} 1"#),
            "{text}"
        );
        assert!(text.contains("strata_monitor_traces 1"), "{text}");
    }

    #[test]
    fn the_oldest_traces_go_first_beyond_the_span_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = TraceStore::open(dir.path(), DEFAULT_RETENTION, 5).unwrap();
        for n in 1..=4u64 {
            let t = trace_id(n);
            let batch = vec![
                span(&t, &span_id(1), None, "a", "x"),
                span(&t, &span_id(2), Some(&span_id(1)), "a", "y"),
            ];
            store.append(batch).unwrap();
        }
        // 8 spans arrived; traces 1 and 2 were evicted to get back to at most 5.
        assert_eq!(store.counts().spans, 4);
        assert!(store.get(&trace_id(1)).is_none());
        assert!(store.get(&trace_id(2)).is_none());
        assert!(store.get(&trace_id(3)).is_some());
        // A restart rebuilds the same state from the file.
        drop(store);
        let store = TraceStore::open(dir.path(), DEFAULT_RETENTION, 5).unwrap();
        assert_eq!(store.counts().traces, 2);
        assert!(store.get(&trace_id(2)).is_none());
        assert!(store.get(&trace_id(4)).is_some());
    }

    #[test]
    fn spans_survive_a_restart_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut root = span(TRACE, ROOT, None, "web", "GET /");
        root.attributes.insert("k".into(), "v".into());
        store.append(vec![root.clone()]).unwrap();
        store
            .append(vec![span(TRACE, CHILD, Some(ROOT), "db", "SELECT")])
            .unwrap();
        let before = store.get(TRACE).unwrap();
        let size = store.counts().file_bytes;
        drop(store);

        // A record cut short by a crash, after the good ones.
        let path = dir.path().join(LOG_FILE);
        let record = frame(br#"{"received_ms":1,"spans":[]}"#).unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&record[..record.len() - 3]).unwrap();
        drop(file);

        let store = open(dir.path());
        assert_eq!(store.get(TRACE).unwrap(), before);
        assert_eq!(fs::metadata(&path).unwrap().len(), size);
        // Appends after the cut replay too.
        store
            .append(vec![span(&trace_id(7), ROOT, None, "web", "GET /x")])
            .unwrap();
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.counts().traces, 2);
        assert_eq!(store.get(TRACE).unwrap()[0].attributes["k"], "v");
    }

    #[test]
    fn prune_drops_expired_traces_and_compacts_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Duration::from_secs(3600);
        let store = TraceStore::open(dir.path(), retention, DEFAULT_MAX_SPANS).unwrap();
        let now = now_ms();
        for n in 1..=10u64 {
            // Traces 1..=7 arrived two hours ago, 8..=10 just now.
            let at = if n <= 7 { now - 2 * 3600 * 1000 } else { now };
            store
                .append_at(vec![span(&trace_id(n), ROOT, None, "web", "GET /")], at)
                .unwrap();
        }
        let before = store.counts();
        assert_eq!(store.prune(SystemTime::now()).unwrap(), 7);
        let after = store.counts();
        assert_eq!(after.traces, 3);
        assert_eq!(after.file_spans, 3);
        assert!(after.file_bytes < before.file_bytes);
        assert_eq!(
            fs::metadata(dir.path().join(LOG_FILE)).unwrap().len(),
            after.file_bytes
        );
        // Appends go to the new file, and a restart sees the same traces.
        store
            .append(vec![span(&trace_id(11), ROOT, None, "web", "GET /")])
            .unwrap();
        drop(store);
        let store = TraceStore::open(dir.path(), retention, DEFAULT_MAX_SPANS).unwrap();
        let ids: Vec<String> = store
            .find(&TraceQuery::default())
            .into_iter()
            .map(|t| t.trace_id)
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, [8, 9, 10, 11].map(trace_id));
    }

    fn state(dir: &std::path::Path) -> TraceState {
        let kv: Arc<dyn strata_store::KvApi> = Arc::new(strata_store::memory::MemoryKv::new());
        TraceState {
            store: Arc::new(open(dir)),
            auth: strata_auth::Auth::new(strata_auth::Gate::off(), kv),
            max_request_bytes: 1 << 20,
        }
    }

    fn who() -> Who {
        Who(Caller::open("native", None))
    }

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
        h
    }

    async fn body_of(response: Response) -> (StatusCode, Vec<u8>) {
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, bytes.to_vec())
    }

    #[tokio::test]
    async fn the_receiver_answers_as_otlp_says() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(dir.path());
        let post =
            |h: HeaderMap, body: Vec<u8>| receive(State(s.clone()), who(), h, Bytes::from(body));

        let (status, body) =
            body_of(post(headers(PROTOBUF), proto_request().encode_to_vec()).await).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.is_empty());

        let (status, body) = body_of(
            post(
                headers("application/json; charset=utf-8"),
                STRATA_RPC_EXPORT.into(),
            )
            .await,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, b"{}");
        // The JSON span has the id of the protobuf export's child: a retry, stored once.
        assert_eq!(s.store.counts().spans, 2);

        let (status, body) = body_of(post(headers("application/json"), b"{".to_vec()).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let error: Json = serde_json::from_slice(&body).unwrap();
        assert!(error["message"]
            .as_str()
            .unwrap()
            .contains("invalid OTLP JSON"));

        let (status, body) = body_of(post(headers(PROTOBUF), b"\xff\xff".to_vec()).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let error = otlp::RpcStatus::decode(body.as_slice()).unwrap();
        assert_eq!(error.code, 3);

        let mut gzip = headers(PROTOBUF);
        gzip.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let (status, _) = body_of(post(gzip, vec![0x1f, 0x8b]).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let (status, _) = body_of(post(headers("text/plain"), Vec::new()).await).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

        let (status, _) = body_of(post(headers(PROTOBUF), vec![0; (1 << 20) + 1]).await).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

        // A span with a bad id is refused, the rest stored: a partial success.
        let mut request = proto_request();
        request.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![1, 2, 3];
        request.resource_spans[0].scope_spans[0].spans[1].trace_id = vec![7; 16];
        let (status, body) = body_of(post(headers(PROTOBUF), request.encode_to_vec()).await).await;
        assert_eq!(status, StatusCode::OK);
        let answer = otlp::ExportTraceServiceResponse::decode(body.as_slice()).unwrap();
        assert_eq!(answer.partial_success.unwrap().rejected_spans, 1);
    }

    #[tokio::test]
    async fn the_search_routes_answer_json() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(dir.path());
        let body = proto_request().encode_to_vec();
        receive(
            State(s.clone()),
            who(),
            headers(PROTOBUF),
            Bytes::from(body),
        )
        .await;

        let query =
            Some("service=web&status=error&min_duration=100ms&limit=5&operation=".to_string());
        let Ok(axum::Json(found)) = list(State(s.clone()), who(), RawQuery(query)).await else {
            panic!("the search failed");
        };
        assert_eq!(found["traces"][0]["trace_id"], TRACE);
        assert_eq!(found["traces"][0]["root_operation"], "GET /");
        assert_eq!(found["traces"][0]["errors"], 1);

        for bad in [
            "min_duration=100",
            "status=broken",
            "limit=0",
            "start=yesterday",
        ] {
            let e = list(State(s.clone()), who(), RawQuery(Some(bad.into())))
                .await
                .unwrap_err();
            assert_eq!(
                e.0.code,
                strata_proto::error::ErrorCode::BadRequest,
                "{bad}"
            );
        }

        let Ok(axum::Json(trace)) = show(State(s.clone()), who(), Path(TRACE.to_uppercase())).await
        else {
            panic!("the trace is missing");
        };
        assert_eq!(trace["trace_id"], TRACE);
        assert_eq!(trace["spans"].as_array().unwrap().len(), 2);
        assert_eq!(trace["spans"][1]["parent_span_id"], ROOT);

        let missing = show(State(s.clone()), who(), Path(trace_id(5)))
            .await
            .unwrap_err();
        assert_eq!(missing.0.code, strata_proto::error::ErrorCode::NotFound);
        let bad = show(State(s), who(), Path("xyz".into())).await.unwrap_err();
        assert_eq!(bad.0.code, strata_proto::error::ErrorCode::BadRequest);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn decoders_take_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_protobuf(&bytes);
            let _ = decode_json(&bytes);
        }

        #[test]
        fn decoders_take_damaged_exports(
            edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<proptest::sample::Index>(),
        ) {
            for valid in [proto_request().encode_to_vec(), STRATA_RPC_EXPORT.as_bytes().to_vec()] {
                let mut bytes = valid;
                for (at, value) in &edits {
                    let i = at.index(bytes.len());
                    bytes[i] = *value;
                }
                bytes.truncate(cut.index(bytes.len() + 1));
                let _ = decode_protobuf(&bytes);
                let _ = decode_json(&bytes);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn a_damaged_file_opens_with_its_valid_prefix(
            tail in proptest::collection::vec(any::<u8>(), 0..64),
            flip in any::<proptest::sample::Index>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = open(dir.path());
            store.append(vec![span(TRACE, ROOT, None, "web", "GET /")]).unwrap();
            let good = store.counts().file_bytes;
            store.append(vec![span(TRACE, CHILD, Some(ROOT), "db", "SELECT")]).unwrap();
            drop(store);
            let path = dir.path().join(LOG_FILE);
            let mut bytes = fs::read(&path).unwrap();
            // Damage one byte of the second record, then add garbage.
            let i = good as usize + flip.index(bytes.len() - good as usize);
            bytes[i] ^= 0x5a;
            bytes.extend_from_slice(&tail);
            fs::write(&path, &bytes).unwrap();
            let store = open(dir.path());
            let spans = store.get(TRACE).unwrap();
            prop_assert!(!spans.is_empty());
            prop_assert_eq!(&spans[0].span_id, ROOT);
            prop_assert!(fs::metadata(&path).unwrap().len() >= good);
        }
    }
}
