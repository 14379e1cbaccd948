//! OTLP/HTTP metrics ingest: an OpenTelemetry SDK (or collector) exports metrics straight to the
//! monitor, which stores them as Prometheus samples.
//!
//! - `POST /v1/metrics` (the OTLP/HTTP path: `OTEL_EXPORTER_OTLP_ENDPOINT=http://NODE:7700`) and
//!   `POST /api/v1/otlp/v1/metrics` (Prometheus's path, for exporters configured for Prometheus)
//!   take an `ExportMetricsServiceRequest` in protobuf (`application/x-protobuf`, the SDKs'
//!   default) or OTLP JSON (`application/json`). Compressed bodies are refused with 415 (set
//!   `OTEL_EXPORTER_OTLP_COMPRESSION=none`): the workspace carries no gzip decoder. Bodies over
//!   `kv.max_request_bytes` get 413, bodies that do not decode 400.
//!
//! Metrics are translated as Prometheus's OTLP receiver (`storage/remote/otlptranslator`) does
//! with metric-name suffixes turned off:
//!
//! - Metric names keep `[a-zA-Z0-9_:]`; each run of other characters becomes one `_` (and
//!   leading or trailing runs are dropped), and a name starting with a digit gets a `_` in
//!   front. Monotonic cumulative sums get `_total` unless their name already ends with it. Unit
//!   suffixes (`_seconds`, `_bytes`, ...) are **not** added: the unit goes to the metadata only.
//! - Attribute names keep `[a-zA-Z0-9_]`, every other character becomes `_`; a name starting
//!   with a digit gets `key_` in front, one starting with a single `_` gets `key`. (Prometheus
//!   keeps non-ASCII letters in both; here they become `_`, so every name stays selectable in
//!   PromQL without quoting.) Attributes
//!   whose names collide once sanitized are merged, their values joined with `;` in the order
//!   of the original names. Values are written as Prometheus's translator writes them (numbers
//!   in Go's shortest form, bytes in base64, arrays and maps as JSON).
//! - The resource's `service.name` becomes `job` (`NAMESPACE/NAME` when `service.namespace` is
//!   set) and `service.instance.id` becomes `instance`; other resource attributes are ignored
//!   (no `target_info` series), as are scope names.
//! - Gauges and non-monotonic cumulative sums become gauges, monotonic cumulative sums counters.
//!   Histograms become `NAME_bucket{le=...}` (cumulative counts, `le="+Inf"` carrying the
//!   count), `NAME_sum` (when the point has a sum) and `NAME_count`; summaries `NAME{quantile=...}`,
//!   `NAME_sum` and `NAME_count`.
//! - Timestamps go from nanoseconds to milliseconds. A point flagged "no recorded value"
//!   (`flags & 1`) is stored as the staleness marker, ending its series.
//! - Delta (or unspecified) temporality sums and histograms, exponential histograms, number
//!   points without a value, points without a timestamp, and points past
//!   [`MAX_TRANSLATED_BYTES`] of labels (a histogram repeats its labels in every bucket, so a
//!   small body could otherwise ask for gigabytes) are refused: the export still
//!   succeeds (200), with a `partialSuccess` naming how many data points were refused and why.
//!   Samples the store refuses as out of order (a retried export) are counted in
//!   `strata_monitor_samples_total{source="otlp"}`, not reported back.
//! - The metadata (`/api/v1/metadata`) records each metric's type (`gauge`, `counter`,
//!   `histogram`, `summary`), its description as help, and its unit.

use crate::exposition::Metadata;
use crate::ingest::Ingest;
use crate::model::{format_value, Labels, METRIC_NAME, STALE_NAN};
use crate::otlp_http::{self, Encoding, PROTOBUF};
use crate::scrape::Targets;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use prost::Message;
use serde::Deserialize;
use serde_json::{json, Value as Json};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use strata_auth::{Access, Caller, Kind, Names};
use strata_http::Who;
use strata_proto::error::ApiError;

/// The ingest source the samples are counted under.
pub const SOURCE: &str = "otlp";

/// The "no recorded value" bit of a data point's `flags`.
const NO_RECORDED_VALUE: u32 = 1;
/// `AggregationTemporality` values.
const TEMPORALITY_DELTA: i32 = 1;
const TEMPORALITY_CUMULATIVE: i32 = 2;
/// Distinct reasons for refused points kept for the answer's `errorMessage`.
const MAX_REASONS: usize = 8;
/// Bytes of labels one export may become, roughly. A histogram point repeats its attributes
/// in every bucket, so a small body can ask for far more memory than it takes; points past
/// this are refused.
pub const MAX_TRANSLATED_BYTES: usize = 64 << 20;
/// What a label costs besides its text, for [`MAX_TRANSLATED_BYTES`].
const LABEL_OVERHEAD: usize = 48;

// ---------------------------------------------------------------------------------------------
// OTLP protobuf: the subset of opentelemetry-proto the receiver reads.

/// Hand-written messages of `opentelemetry/proto/{collector/metrics,metrics}/v1`, with only the
/// fields the translation reads (prost skips the others: exemplars, schema URLs, ...). The
/// common messages are the traces receiver's.
pub mod otlp {
    use prost::{Message, Oneof};

    pub use crate::traces::otlp::{
        any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, Resource,
        RpcStatus,
    };

    /// `ExportMetricsServiceRequest`.
    #[derive(Clone, PartialEq, Message)]
    pub struct ExportMetricsServiceRequest {
        /// Metrics, grouped by the resource that made them.
        #[prost(message, repeated, tag = "1")]
        pub resource_metrics: Vec<ResourceMetrics>,
    }

    /// `ExportMetricsServiceResponse`.
    #[derive(Clone, PartialEq, Message)]
    pub struct ExportMetricsServiceResponse {
        /// Set when some data points were refused.
        #[prost(message, optional, tag = "1")]
        pub partial_success: Option<ExportMetricsPartialSuccess>,
    }

    /// `ExportMetricsPartialSuccess`.
    #[derive(Clone, PartialEq, Message)]
    pub struct ExportMetricsPartialSuccess {
        /// Data points refused.
        #[prost(int64, tag = "1")]
        pub rejected_data_points: i64,
        /// Why.
        #[prost(string, tag = "2")]
        pub error_message: String,
    }

    /// `ResourceMetrics`.
    #[derive(Clone, PartialEq, Message)]
    pub struct ResourceMetrics {
        /// The process or service that made the metrics.
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        /// Metrics, grouped by instrumentation scope.
        #[prost(message, repeated, tag = "2")]
        pub scope_metrics: Vec<ScopeMetrics>,
    }

    /// `ScopeMetrics`.
    #[derive(Clone, PartialEq, Message)]
    pub struct ScopeMetrics {
        /// The instrumentation library.
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        /// The metrics.
        #[prost(message, repeated, tag = "2")]
        pub metrics: Vec<Metric>,
    }

    /// `Metric`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Metric {
        /// Its name (`http.server.request.duration`).
        #[prost(string, tag = "1")]
        pub name: String,
        /// Its description.
        #[prost(string, tag = "2")]
        pub description: String,
        /// Its unit (UCUM: `s`, `By`, `{request}`).
        #[prost(string, tag = "3")]
        pub unit: String,
        /// Its points, by kind.
        #[prost(oneof = "metric::Data", tags = "5, 7, 9, 10, 11")]
        pub data: Option<metric::Data>,
    }

    /// The kinds of [`Metric`].
    pub mod metric {
        use super::{ExponentialHistogram, Gauge, Histogram, Oneof, Sum, Summary};

        /// `Metric.data`.
        #[derive(Clone, PartialEq, Oneof)]
        pub enum Data {
            /// `gauge`.
            #[prost(message, tag = "5")]
            Gauge(Gauge),
            /// `sum`.
            #[prost(message, tag = "7")]
            Sum(Sum),
            /// `histogram`.
            #[prost(message, tag = "9")]
            Histogram(Histogram),
            /// `exponential_histogram`.
            #[prost(message, tag = "10")]
            ExponentialHistogram(ExponentialHistogram),
            /// `summary`.
            #[prost(message, tag = "11")]
            Summary(Summary),
        }
    }

    /// `Gauge`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Gauge {
        /// The points.
        #[prost(message, repeated, tag = "1")]
        pub data_points: Vec<NumberDataPoint>,
    }

    /// `Sum`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Sum {
        /// The points.
        #[prost(message, repeated, tag = "1")]
        pub data_points: Vec<NumberDataPoint>,
        /// `AggregationTemporality`: 0 unspecified, 1 delta, 2 cumulative.
        #[prost(int32, tag = "2")]
        pub aggregation_temporality: i32,
        /// A counter when true.
        #[prost(bool, tag = "3")]
        pub is_monotonic: bool,
    }

    /// `Histogram` (explicit buckets).
    #[derive(Clone, PartialEq, Message)]
    pub struct Histogram {
        /// The points.
        #[prost(message, repeated, tag = "1")]
        pub data_points: Vec<HistogramDataPoint>,
        /// `AggregationTemporality`.
        #[prost(int32, tag = "2")]
        pub aggregation_temporality: i32,
    }

    /// `ExponentialHistogram`: only counted, never stored.
    #[derive(Clone, PartialEq, Message)]
    pub struct ExponentialHistogram {
        /// The points.
        #[prost(message, repeated, tag = "1")]
        pub data_points: Vec<ExponentialHistogramDataPoint>,
        /// `AggregationTemporality`.
        #[prost(int32, tag = "2")]
        pub aggregation_temporality: i32,
    }

    /// `ExponentialHistogramDataPoint`, without its buckets.
    #[derive(Clone, PartialEq, Message)]
    pub struct ExponentialHistogramDataPoint {
        /// Nanoseconds since the Unix epoch.
        #[prost(fixed64, tag = "3")]
        pub time_unix_nano: u64,
        /// Observations.
        #[prost(fixed64, tag = "4")]
        pub count: u64,
    }

    /// `Summary`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Summary {
        /// The points.
        #[prost(message, repeated, tag = "1")]
        pub data_points: Vec<SummaryDataPoint>,
    }

    /// `NumberDataPoint`.
    #[derive(Clone, PartialEq, Message)]
    pub struct NumberDataPoint {
        /// Its attributes: the series' labels.
        #[prost(message, repeated, tag = "7")]
        pub attributes: Vec<KeyValue>,
        /// Nanoseconds since the Unix epoch.
        #[prost(fixed64, tag = "2")]
        pub start_time_unix_nano: u64,
        /// Nanoseconds since the Unix epoch.
        #[prost(fixed64, tag = "3")]
        pub time_unix_nano: u64,
        /// The value.
        #[prost(oneof = "number_data_point::Value", tags = "4, 6")]
        pub value: Option<number_data_point::Value>,
        /// `DataPointFlags`: bit 0 is "no recorded value".
        #[prost(uint32, tag = "8")]
        pub flags: u32,
    }

    /// The kinds of a [`NumberDataPoint`]'s value.
    pub mod number_data_point {
        use super::Oneof;

        /// `NumberDataPoint.value`.
        #[derive(Clone, PartialEq, Oneof)]
        pub enum Value {
            /// `as_double`.
            #[prost(double, tag = "4")]
            AsDouble(f64),
            /// `as_int`.
            #[prost(sfixed64, tag = "6")]
            AsInt(i64),
        }
    }

    /// `HistogramDataPoint`.
    #[derive(Clone, PartialEq, Message)]
    pub struct HistogramDataPoint {
        /// Its attributes.
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        /// Nanoseconds since the Unix epoch.
        #[prost(fixed64, tag = "2")]
        pub start_time_unix_nano: u64,
        /// Nanoseconds since the Unix epoch.
        #[prost(fixed64, tag = "3")]
        pub time_unix_nano: u64,
        /// Observations.
        #[prost(fixed64, tag = "4")]
        pub count: u64,
        /// Sum of the observations, when known.
        #[prost(double, optional, tag = "5")]
        pub sum: Option<f64>,
        /// Observations per bucket (not cumulative): one more than `explicit_bounds`.
        #[prost(fixed64, repeated, tag = "6")]
        pub bucket_counts: Vec<u64>,
        /// Upper bounds of the buckets, increasing.
        #[prost(double, repeated, tag = "7")]
        pub explicit_bounds: Vec<f64>,
        /// `DataPointFlags`.
        #[prost(uint32, tag = "10")]
        pub flags: u32,
        /// Smallest observation (not stored).
        #[prost(double, optional, tag = "11")]
        pub min: Option<f64>,
        /// Largest observation (not stored).
        #[prost(double, optional, tag = "12")]
        pub max: Option<f64>,
    }

    /// `SummaryDataPoint`.
    #[derive(Clone, PartialEq, Message)]
    pub struct SummaryDataPoint {
        /// Its attributes.
        #[prost(message, repeated, tag = "7")]
        pub attributes: Vec<KeyValue>,
        /// Nanoseconds since the Unix epoch.
        #[prost(fixed64, tag = "2")]
        pub start_time_unix_nano: u64,
        /// Nanoseconds since the Unix epoch.
        #[prost(fixed64, tag = "3")]
        pub time_unix_nano: u64,
        /// Observations.
        #[prost(fixed64, tag = "4")]
        pub count: u64,
        /// Sum of the observations.
        #[prost(double, tag = "5")]
        pub sum: f64,
        /// The quantiles.
        #[prost(message, repeated, tag = "6")]
        pub quantile_values: Vec<ValueAtQuantile>,
        /// `DataPointFlags`.
        #[prost(uint32, tag = "8")]
        pub flags: u32,
    }

    /// `SummaryDataPoint.ValueAtQuantile`.
    #[derive(Clone, PartialEq, Message)]
    pub struct ValueAtQuantile {
        /// From 0 to 1.
        #[prost(double, tag = "1")]
        pub quantile: f64,
        /// The value at that quantile.
        #[prost(double, tag = "2")]
        pub value: f64,
    }
}

// ---------------------------------------------------------------------------------------------
// Translation.

/// What an export becomes.
#[derive(Debug, Clone, Default)]
pub struct Translated {
    /// Samples for [`Ingest::write`], in the export's order.
    pub samples: Vec<(Labels, i64, f64)>,
    /// Metadata by metric family name, for [`Targets::add_metadata`].
    pub metadata: BTreeMap<String, Metadata>,
    /// OTLP data points refused (a histogram point counts once, however many samples it makes).
    pub rejected: usize,
    /// Why, without repeats (the first eight reasons).
    pub reasons: BTreeSet<String>,
    /// Label bytes of `samples`, roughly.
    label_bytes: usize,
}

impl Translated {
    fn reject(&mut self, points: usize, reason: impl FnOnce() -> String) {
        if points == 0 {
            return;
        }
        self.rejected += points;
        if self.reasons.len() < MAX_REASONS {
            self.reasons.insert(reason());
        }
    }

    /// Takes `samples` samples over `base` plus a name of `name_len` bytes out of the budget;
    /// false (and the point refused) when they do not fit.
    fn afford(&mut self, base: &[(String, String)], name_len: usize, samples: usize) -> bool {
        let per_sample = base
            .iter()
            .map(|(k, v)| k.len() + v.len() + LABEL_OVERHEAD)
            .sum::<usize>()
            .saturating_add(name_len + 2 * LABEL_OVERHEAD + 32);
        let cost = per_sample.saturating_mul(samples);
        if self.label_bytes.saturating_add(cost) > MAX_TRANSLATED_BYTES {
            self.reject(1, || {
                format!(
                    "the export makes over {MAX_TRANSLATED_BYTES} bytes of labels: send smaller batches"
                )
            });
            return false;
        }
        self.label_bytes += cost;
        true
    }

    /// The reasons, as one line.
    pub fn error_message(&self) -> String {
        let reasons: Vec<&str> = self.reasons.iter().map(String::as_str).collect();
        reasons.join("; ")
    }
}

/// `name` in Prometheus's metric-name charset: each run of characters outside `[a-zA-Z0-9_:]`
/// becomes one `_` (runs at either end are dropped), and a leading digit gets a `_` in front.
/// Empty when nothing valid is left.
pub fn sanitize_metric_name(name: &str) -> String {
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = name
        .split(|c: char| !valid(c))
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("_");
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// `name` in Prometheus's label-name charset: every character outside `[a-zA-Z0-9_]` becomes
/// `_`; a leading digit gets `key_` in front, a leading single `_` gets `key`.
pub fn sanitize_label_name(name: &str) -> String {
    let out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        format!("key_{out}")
    } else if out.starts_with('_') && !out.starts_with("__") {
        format!("key{out}")
    } else {
        out
    }
}

/// Standard base64 with padding, as pcommon writes a bytes attribute.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A double inside a JSON attribute value (non-finite ones as strings).
fn json_double(value: f64) -> Json {
    serde_json::Number::from_f64(value)
        .map_or_else(|| Json::String(format_value(value)), Json::Number)
}

/// An attribute value inside an array or map, as JSON.
fn any_json(value: &otlp::AnyValue) -> Json {
    use otlp::any_value::Value;
    match &value.value {
        None => Json::Null,
        Some(Value::StringValue(text)) => Json::String(text.clone()),
        Some(Value::BoolValue(b)) => Json::Bool(*b),
        Some(Value::IntValue(n)) => Json::from(*n),
        Some(Value::DoubleValue(d)) => json_double(*d),
        Some(Value::ArrayValue(array)) => Json::Array(array.values.iter().map(any_json).collect()),
        Some(Value::KvlistValue(list)) => Json::Object(
            list.values
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        kv.value.as_ref().map_or(Json::Null, any_json),
                    )
                })
                .collect(),
        ),
        Some(Value::BytesValue(bytes)) => Json::String(base64(bytes)),
    }
}

/// An attribute value as a label value (pcommon's `AsString`).
fn value_text(value: &otlp::AnyValue) -> String {
    use otlp::any_value::Value;
    match &value.value {
        None => String::new(),
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(n)) => n.to_string(),
        Some(Value::DoubleValue(d)) => format_value(*d),
        Some(Value::BytesValue(bytes)) => base64(bytes),
        Some(Value::ArrayValue(_) | Value::KvlistValue(_)) => any_json(value).to_string(),
    }
}

fn attribute<'a>(attributes: &'a [otlp::KeyValue], key: &str) -> Option<&'a otlp::AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

/// `job` and `instance` from a resource's `service.*` attributes.
fn resource_labels(resource: Option<&otlp::Resource>) -> Vec<(String, String)> {
    let attributes = resource.map_or(&[][..], |r| r.attributes.as_slice());
    let mut out = Vec::new();
    if let Some(name) = attribute(attributes, "service.name") {
        let name = value_text(name);
        let namespace = attribute(attributes, "service.namespace")
            .map(value_text)
            .unwrap_or_default();
        let job = if namespace.is_empty() {
            name
        } else {
            format!("{namespace}/{name}")
        };
        out.push(("job".to_string(), job));
    }
    if let Some(instance) = attribute(attributes, "service.instance.id") {
        out.push(("instance".to_string(), value_text(instance)));
    }
    out
}

/// A point's labels without the metric name: its attributes (sanitized, collisions merged),
/// then the resource's `job` and `instance`, which win over attributes of the same name.
fn point_labels(
    attributes: &[otlp::KeyValue],
    resource: &[(String, String)],
) -> Vec<(String, String)> {
    let mut sorted: Vec<&otlp::KeyValue> = attributes.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let mut merged: BTreeMap<String, String> = BTreeMap::new();
    for kv in sorted {
        let name = sanitize_label_name(&kv.key);
        if name.is_empty() {
            continue;
        }
        let value = kv.value.as_ref().map(value_text).unwrap_or_default();
        match merged.entry(name) {
            Entry::Vacant(vacant) => {
                vacant.insert(value);
            }
            Entry::Occupied(mut occupied) => {
                let joined = occupied.get_mut();
                joined.push(';');
                joined.push_str(&value);
            }
        }
    }
    let mut pairs: Vec<(String, String)> = merged.into_iter().collect();
    pairs.extend(resource.iter().cloned());
    pairs
}

/// `base` plus the metric name and one more label (`le`, `quantile`); those two win over
/// attributes of the same name.
fn series(base: &[(String, String)], name: String, extra: Option<(&str, String)>) -> Labels {
    let mut pairs = Vec::with_capacity(base.len() + 2);
    pairs.extend(base.iter().cloned());
    pairs.push((METRIC_NAME.to_string(), name));
    if let Some((label, value)) = extra {
        pairs.push((label.to_string(), value));
    }
    Labels::new(pairs)
}

/// Nanoseconds to milliseconds; `None` for 0 (OTLP: no timestamp, to be refused).
fn millis(time_unix_nano: u64) -> Option<i64> {
    if time_unix_nano == 0 {
        return None;
    }
    i64::try_from(time_unix_nano / 1_000_000).ok()
}

fn stale() -> f64 {
    f64::from_bits(STALE_NAN)
}

/// `value`, or the staleness marker when the point has no recorded value.
fn or_stale(flags: u32, value: f64) -> f64 {
    if flags & NO_RECORDED_VALUE != 0 {
        stale()
    } else {
        value
    }
}

/// Why a sum or histogram of this temporality is refused; `None` for cumulative.
fn temporality_problem(name: &str, temporality: i32) -> Option<String> {
    match temporality {
        TEMPORALITY_CUMULATIVE => None,
        TEMPORALITY_DELTA => Some(format!(
            "{name}: delta temporality is not supported, only cumulative \
             (OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=cumulative)"
        )),
        other => Some(format!(
            "{name}: aggregation temporality {other} is not supported, only cumulative (2)"
        )),
    }
}

/// The data points of `data`.
fn point_count(data: &otlp::metric::Data) -> usize {
    use otlp::metric::Data;
    match data {
        Data::Gauge(g) => g.data_points.len(),
        Data::Sum(s) => s.data_points.len(),
        Data::Histogram(h) => h.data_points.len(),
        Data::ExponentialHistogram(e) => e.data_points.len(),
        Data::Summary(s) => s.data_points.len(),
    }
}

/// The samples and metadata of an export, and the data points refused. Never fails: what
/// cannot be stored is counted in [`Translated::rejected`].
pub fn translate(request: &otlp::ExportMetricsServiceRequest) -> Translated {
    let mut out = Translated::default();
    for resource_metrics in &request.resource_metrics {
        let resource = resource_labels(resource_metrics.resource.as_ref());
        for scope in &resource_metrics.scope_metrics {
            for metric in &scope.metrics {
                translate_metric(metric, &resource, &mut out);
            }
        }
    }
    out
}

fn translate_metric(metric: &otlp::Metric, resource: &[(String, String)], out: &mut Translated) {
    use otlp::metric::Data;
    let Some(data) = &metric.data else {
        return;
    };
    let base = sanitize_metric_name(&metric.name);
    if base.is_empty() {
        out.reject(point_count(data), || {
            format!("metric name {:?} has no valid character", metric.name)
        });
        return;
    }
    let metadata = |kind: &str| Metadata {
        kind: kind.to_string(),
        help: metric.description.clone(),
        unit: metric.unit.clone(),
    };
    match data {
        Data::Gauge(gauge) => {
            out.metadata.insert(base.clone(), metadata("gauge"));
            for point in &gauge.data_points {
                number_point(&base, point, resource, out);
            }
        }
        Data::Sum(sum) => {
            if let Some(problem) = temporality_problem(&base, sum.aggregation_temporality) {
                out.reject(sum.data_points.len(), || problem);
                return;
            }
            let (name, kind) = if sum.is_monotonic && !base.ends_with("_total") {
                (format!("{base}_total"), "counter")
            } else if sum.is_monotonic {
                (base, "counter")
            } else {
                (base, "gauge")
            };
            out.metadata.insert(name.clone(), metadata(kind));
            for point in &sum.data_points {
                number_point(&name, point, resource, out);
            }
        }
        Data::Histogram(histogram) => {
            if let Some(problem) = temporality_problem(&base, histogram.aggregation_temporality) {
                out.reject(histogram.data_points.len(), || problem);
                return;
            }
            out.metadata.insert(base.clone(), metadata("histogram"));
            for point in &histogram.data_points {
                histogram_point(&base, point, resource, out);
            }
        }
        Data::ExponentialHistogram(histogram) => {
            out.reject(histogram.data_points.len(), || {
                format!(
                    "{base}: exponential histograms are not supported, send explicit bucket \
                     histograms"
                )
            });
        }
        Data::Summary(summary) => {
            out.metadata.insert(base.clone(), metadata("summary"));
            for point in &summary.data_points {
                summary_point(&base, point, resource, out);
            }
        }
    }
}

fn no_timestamp(name: &str) -> impl FnOnce() -> String + '_ {
    move || format!("{name}: a data point has no time_unix_nano")
}

fn number_point(
    name: &str,
    point: &otlp::NumberDataPoint,
    resource: &[(String, String)],
    out: &mut Translated,
) {
    use otlp::number_data_point::Value;
    let Some(t) = millis(point.time_unix_nano) else {
        out.reject(1, no_timestamp(name));
        return;
    };
    let value = match point.value {
        _ if point.flags & NO_RECORDED_VALUE != 0 => stale(),
        Some(Value::AsDouble(v)) => v,
        Some(Value::AsInt(v)) => v as f64,
        None => {
            out.reject(1, || format!("{name}: a number data point has no value"));
            return;
        }
    };
    let base = point_labels(&point.attributes, resource);
    if !out.afford(&base, name.len(), 1) {
        return;
    }
    out.samples
        .push((series(&base, name.to_string(), None), t, value));
}

fn histogram_point(
    name: &str,
    point: &otlp::HistogramDataPoint,
    resource: &[(String, String)],
    out: &mut Translated,
) {
    let Some(t) = millis(point.time_unix_nano) else {
        out.reject(1, no_timestamp(name));
        return;
    };
    let base = point_labels(&point.attributes, resource);
    let buckets = point.explicit_bounds.len().min(point.bucket_counts.len()) + 1;
    if !out.afford(&base, name.len() + 7, buckets + 2) {
        return;
    }
    let value = |v: f64| or_stale(point.flags, v);
    if let Some(sum) = point.sum {
        out.samples
            .push((series(&base, format!("{name}_sum"), None), t, value(sum)));
    }
    let count = value(point.count as f64);
    out.samples
        .push((series(&base, format!("{name}_count"), None), t, count));
    let bucket = format!("{name}_bucket");
    let mut cumulative: u64 = 0;
    for (bound, n) in point.explicit_bounds.iter().zip(&point.bucket_counts) {
        cumulative = cumulative.saturating_add(*n);
        // The +Inf bucket is written from the count below; a NaN bound names no bucket.
        if bound.is_nan() || *bound == f64::INFINITY {
            continue;
        }
        let le = Some(("le", format_value(*bound)));
        out.samples.push((
            series(&base, bucket.clone(), le),
            t,
            value(cumulative as f64),
        ));
    }
    let le = Some(("le", "+Inf".to_string()));
    out.samples.push((series(&base, bucket, le), t, count));
}

fn summary_point(
    name: &str,
    point: &otlp::SummaryDataPoint,
    resource: &[(String, String)],
    out: &mut Translated,
) {
    let Some(t) = millis(point.time_unix_nano) else {
        out.reject(1, no_timestamp(name));
        return;
    };
    let base = point_labels(&point.attributes, resource);
    if !out.afford(&base, name.len() + 6, point.quantile_values.len() + 2) {
        return;
    }
    let value = |v: f64| or_stale(point.flags, v);
    out.samples.push((
        series(&base, format!("{name}_sum"), None),
        t,
        value(point.sum),
    ));
    out.samples.push((
        series(&base, format!("{name}_count"), None),
        t,
        value(point.count as f64),
    ));
    for q in &point.quantile_values {
        let quantile = Some(("quantile", format_value(q.quantile)));
        out.samples
            .push((series(&base, name.to_string(), quantile), t, value(q.value)));
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding.

/// An OTLP protobuf `ExportMetricsServiceRequest`. Any bytes give a request or an error, never
/// a panic.
pub fn decode_protobuf(body: &[u8]) -> Result<otlp::ExportMetricsServiceRequest, String> {
    otlp::ExportMetricsServiceRequest::decode(body)
        .map_err(|e| format!("invalid OTLP protobuf body: {e}"))
}

/// A JSON number that OTLP JSON may also write as a string (64-bit integers, enum names,
/// `"NaN"`, `"Infinity"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Number {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Text(String),
}

impl Number {
    /// A non-negative integer (timestamps, counts, flags); absent is 0.
    fn unsigned(value: Option<&Number>, field: &str) -> Result<u64, String> {
        match value {
            None => Ok(0),
            Some(Number::Unsigned(n)) => Ok(*n),
            Some(Number::Float(f)) if f.is_finite() && *f >= 0.0 && f.fract() == 0.0 => {
                Ok(*f as u64)
            }
            Some(Number::Text(text)) => text
                .parse()
                .map_err(|_| format!("{field} {text:?} is not a non-negative integer")),
            Some(other) => Err(format!("{field} {other:?} is not a non-negative integer")),
        }
    }

    /// A 64-bit signed integer (`asInt`).
    fn signed(&self, field: &str) -> Result<i64, String> {
        let bad = || format!("{field} {self:?} is not a 64-bit integer");
        match self {
            Number::Unsigned(n) => i64::try_from(*n).map_err(|_| bad()),
            Number::Signed(n) => Ok(*n),
            Number::Float(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.2e18 => {
                Ok(*f as i64)
            }
            Number::Float(_) => Err(bad()),
            Number::Text(text) => text.parse().map_err(|_| bad()),
        }
    }

    /// A double.
    fn float(&self, field: &str) -> Result<f64, String> {
        match self {
            Number::Unsigned(n) => Ok(*n as f64),
            Number::Signed(n) => Ok(*n as f64),
            Number::Float(f) => Ok(*f),
            Number::Text(text) => match text.as_str() {
                "NaN" => Ok(f64::NAN),
                "Infinity" => Ok(f64::INFINITY),
                "-Infinity" => Ok(f64::NEG_INFINITY),
                other => other
                    .parse()
                    .map_err(|_| format!("{field} {text:?} is not a number")),
            },
        }
    }

    fn float_or(value: Option<&Number>, field: &str) -> Result<Option<f64>, String> {
        value.map(|n| n.float(field)).transpose()
    }

    /// `flags`.
    fn flags(value: Option<&Number>) -> Result<u32, String> {
        let n = Number::unsigned(value, "flags")?;
        u32::try_from(n).map_err(|_| format!("flags {n} is over 32 bits"))
    }

    /// An enum, by number or by name (`names[i]` is value `i`); unknown names are 0.
    fn enumeration(value: Option<&Number>, names: &[&str]) -> i32 {
        match value {
            None | Some(Number::Float(_)) => 0,
            Some(Number::Unsigned(n)) => i32::try_from(*n).unwrap_or(0),
            Some(Number::Signed(n)) => i32::try_from(*n).unwrap_or(0),
            Some(Number::Text(text)) => text.parse().unwrap_or_else(|_| {
                names
                    .iter()
                    .position(|n| n.eq_ignore_ascii_case(text))
                    .and_then(|i| i32::try_from(i).ok())
                    .unwrap_or(0)
            }),
        }
    }
}

const TEMPORALITIES: [&str; 3] = [
    "AGGREGATION_TEMPORALITY_UNSPECIFIED",
    "AGGREGATION_TEMPORALITY_DELTA",
    "AGGREGATION_TEMPORALITY_CUMULATIVE",
];

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonRequest {
    resource_metrics: Vec<JsonResourceMetrics>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonResourceMetrics {
    resource: Option<JsonResource>,
    scope_metrics: Vec<JsonScopeMetrics>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonResource {
    attributes: Vec<JsonKeyValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonScopeMetrics {
    scope: Option<JsonScope>,
    metrics: Vec<JsonMetric>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonScope {
    name: Option<String>,
    version: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonMetric {
    name: Option<String>,
    description: Option<String>,
    unit: Option<String>,
    gauge: Option<JsonGauge>,
    sum: Option<JsonSum>,
    histogram: Option<JsonHistogram>,
    exponential_histogram: Option<JsonExponentialHistogram>,
    summary: Option<JsonSummary>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonGauge {
    data_points: Vec<JsonNumberPoint>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonSum {
    data_points: Vec<JsonNumberPoint>,
    aggregation_temporality: Option<Number>,
    is_monotonic: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonHistogram {
    data_points: Vec<JsonHistogramPoint>,
    aggregation_temporality: Option<Number>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonExponentialHistogram {
    /// Only counted.
    data_points: Vec<serde::de::IgnoredAny>,
    aggregation_temporality: Option<Number>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonSummary {
    data_points: Vec<JsonSummaryPoint>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonNumberPoint {
    attributes: Vec<JsonKeyValue>,
    start_time_unix_nano: Option<Number>,
    time_unix_nano: Option<Number>,
    as_double: Option<Number>,
    as_int: Option<Number>,
    flags: Option<Number>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonHistogramPoint {
    attributes: Vec<JsonKeyValue>,
    start_time_unix_nano: Option<Number>,
    time_unix_nano: Option<Number>,
    count: Option<Number>,
    sum: Option<Number>,
    bucket_counts: Vec<Number>,
    explicit_bounds: Vec<Number>,
    flags: Option<Number>,
    min: Option<Number>,
    max: Option<Number>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonSummaryPoint {
    attributes: Vec<JsonKeyValue>,
    start_time_unix_nano: Option<Number>,
    time_unix_nano: Option<Number>,
    count: Option<Number>,
    sum: Option<Number>,
    quantile_values: Vec<JsonQuantile>,
    flags: Option<Number>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonQuantile {
    quantile: Option<Number>,
    value: Option<Number>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonKeyValue {
    key: Option<String>,
    value: Option<JsonAnyValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonAnyValue {
    string_value: Option<String>,
    bool_value: Option<bool>,
    int_value: Option<Number>,
    double_value: Option<Number>,
    array_value: Option<JsonArrayValue>,
    kvlist_value: Option<JsonKeyValueList>,
    /// Base64.
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

fn any_value(value: JsonAnyValue) -> otlp::AnyValue {
    use otlp::any_value::Value;
    let value = if let Some(text) = value.string_value {
        Some(Value::StringValue(text))
    } else if let Some(b) = value.bool_value {
        Some(Value::BoolValue(b))
    } else if let Some(n) = value.int_value {
        // A malformed integer is kept as written: attributes are only ever labels.
        Some(match n.signed("intValue") {
            Ok(n) => Value::IntValue(n),
            Err(_) => Value::StringValue(format_number(&n)),
        })
    } else if let Some(d) = value.double_value {
        Some(match d.float("doubleValue") {
            Ok(d) => Value::DoubleValue(d),
            Err(_) => Value::StringValue(format_number(&d)),
        })
    } else if let Some(array) = value.array_value {
        Some(Value::ArrayValue(otlp::ArrayValue {
            values: array.values.into_iter().map(any_value).collect(),
        }))
    } else if let Some(list) = value.kvlist_value {
        Some(Value::KvlistValue(otlp::KeyValueList {
            values: key_values(list.values),
        }))
    } else {
        // Bytes stay in the base64 they were sent in: that is also how they become a label
        // value, so they are not decoded only to be encoded again.
        value.bytes_value.map(Value::StringValue)
    };
    otlp::AnyValue { value }
}

fn format_number(n: &Number) -> String {
    match n {
        Number::Unsigned(n) => n.to_string(),
        Number::Signed(n) => n.to_string(),
        Number::Float(f) => format_value(*f),
        Number::Text(text) => text.clone(),
    }
}

fn key_values(values: Vec<JsonKeyValue>) -> Vec<otlp::KeyValue> {
    values
        .into_iter()
        .map(|kv| otlp::KeyValue {
            key: kv.key.unwrap_or_default(),
            value: kv.value.map(any_value),
        })
        .collect()
}

fn number_point_from_json(p: JsonNumberPoint) -> Result<otlp::NumberDataPoint, String> {
    use otlp::number_data_point::Value;
    let value = if let Some(d) = &p.as_double {
        Some(Value::AsDouble(d.float("asDouble")?))
    } else if let Some(n) = &p.as_int {
        Some(Value::AsInt(n.signed("asInt")?))
    } else {
        None
    };
    Ok(otlp::NumberDataPoint {
        start_time_unix_nano: Number::unsigned(
            p.start_time_unix_nano.as_ref(),
            "startTimeUnixNano",
        )?,
        time_unix_nano: Number::unsigned(p.time_unix_nano.as_ref(), "timeUnixNano")?,
        value,
        flags: Number::flags(p.flags.as_ref())?,
        attributes: key_values(p.attributes),
    })
}

fn histogram_point_from_json(p: JsonHistogramPoint) -> Result<otlp::HistogramDataPoint, String> {
    Ok(otlp::HistogramDataPoint {
        start_time_unix_nano: Number::unsigned(
            p.start_time_unix_nano.as_ref(),
            "startTimeUnixNano",
        )?,
        time_unix_nano: Number::unsigned(p.time_unix_nano.as_ref(), "timeUnixNano")?,
        count: Number::unsigned(p.count.as_ref(), "count")?,
        sum: Number::float_or(p.sum.as_ref(), "sum")?,
        bucket_counts: p
            .bucket_counts
            .iter()
            .map(|n| Number::unsigned(Some(n), "bucketCounts"))
            .collect::<Result<_, _>>()?,
        explicit_bounds: p
            .explicit_bounds
            .iter()
            .map(|n| n.float("explicitBounds"))
            .collect::<Result<_, _>>()?,
        flags: Number::flags(p.flags.as_ref())?,
        min: Number::float_or(p.min.as_ref(), "min")?,
        max: Number::float_or(p.max.as_ref(), "max")?,
        attributes: key_values(p.attributes),
    })
}

fn summary_point_from_json(p: JsonSummaryPoint) -> Result<otlp::SummaryDataPoint, String> {
    Ok(otlp::SummaryDataPoint {
        start_time_unix_nano: Number::unsigned(
            p.start_time_unix_nano.as_ref(),
            "startTimeUnixNano",
        )?,
        time_unix_nano: Number::unsigned(p.time_unix_nano.as_ref(), "timeUnixNano")?,
        count: Number::unsigned(p.count.as_ref(), "count")?,
        sum: Number::float_or(p.sum.as_ref(), "sum")?.unwrap_or(0.0),
        quantile_values: p
            .quantile_values
            .iter()
            .map(|q| {
                Ok(otlp::ValueAtQuantile {
                    quantile: Number::float_or(q.quantile.as_ref(), "quantile")?.unwrap_or(0.0),
                    value: Number::float_or(q.value.as_ref(), "value")?.unwrap_or(0.0),
                })
            })
            .collect::<Result<_, String>>()?,
        flags: Number::flags(p.flags.as_ref())?,
        attributes: key_values(p.attributes),
    })
}

fn metric_from_json(m: JsonMetric) -> Result<otlp::Metric, String> {
    use otlp::metric::Data;
    let data = if let Some(gauge) = m.gauge {
        Some(Data::Gauge(otlp::Gauge {
            data_points: gauge
                .data_points
                .into_iter()
                .map(number_point_from_json)
                .collect::<Result<_, _>>()?,
        }))
    } else if let Some(sum) = m.sum {
        Some(Data::Sum(otlp::Sum {
            data_points: sum
                .data_points
                .into_iter()
                .map(number_point_from_json)
                .collect::<Result<_, _>>()?,
            aggregation_temporality: Number::enumeration(
                sum.aggregation_temporality.as_ref(),
                &TEMPORALITIES,
            ),
            is_monotonic: sum.is_monotonic.unwrap_or(false),
        }))
    } else if let Some(histogram) = m.histogram {
        Some(Data::Histogram(otlp::Histogram {
            data_points: histogram
                .data_points
                .into_iter()
                .map(histogram_point_from_json)
                .collect::<Result<_, _>>()?,
            aggregation_temporality: Number::enumeration(
                histogram.aggregation_temporality.as_ref(),
                &TEMPORALITIES,
            ),
        }))
    } else if let Some(histogram) = m.exponential_histogram {
        Some(Data::ExponentialHistogram(otlp::ExponentialHistogram {
            data_points: histogram
                .data_points
                .iter()
                .map(|_| otlp::ExponentialHistogramDataPoint::default())
                .collect(),
            aggregation_temporality: Number::enumeration(
                histogram.aggregation_temporality.as_ref(),
                &TEMPORALITIES,
            ),
        }))
    } else if let Some(summary) = m.summary {
        Some(Data::Summary(otlp::Summary {
            data_points: summary
                .data_points
                .into_iter()
                .map(summary_point_from_json)
                .collect::<Result<_, _>>()?,
        }))
    } else {
        None
    };
    Ok(otlp::Metric {
        name: m.name.unwrap_or_default(),
        description: m.description.unwrap_or_default(),
        unit: m.unit.unwrap_or_default(),
        data,
    })
}

/// An OTLP JSON `ExportMetricsServiceRequest` (lowerCamelCase names, 64-bit integers as strings
/// or numbers, enums as numbers or names, doubles as numbers or `"NaN"`/`"Infinity"`), as the
/// protobuf message. Any bytes give a request or an error, never a panic.
pub fn decode_json(body: &[u8]) -> Result<otlp::ExportMetricsServiceRequest, String> {
    let request: JsonRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid OTLP JSON body: {e}"))?;
    let bad = |e: String| format!("invalid OTLP JSON body: {e}");
    let mut out = otlp::ExportMetricsServiceRequest::default();
    for rm in request.resource_metrics {
        let mut resource_metrics = otlp::ResourceMetrics {
            resource: rm.resource.map(|r| otlp::Resource {
                attributes: key_values(r.attributes),
            }),
            scope_metrics: Vec::with_capacity(rm.scope_metrics.len()),
        };
        for sm in rm.scope_metrics {
            resource_metrics.scope_metrics.push(otlp::ScopeMetrics {
                scope: sm.scope.map(|s| otlp::InstrumentationScope {
                    name: s.name.unwrap_or_default(),
                    version: s.version.unwrap_or_default(),
                }),
                metrics: sm
                    .metrics
                    .into_iter()
                    .map(metric_from_json)
                    .collect::<Result<_, _>>()
                    .map_err(bad)?,
            });
        }
        out.resource_metrics.push(resource_metrics);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// HTTP.

/// What the receiver needs.
#[derive(Clone)]
pub struct OtlpMetricsState {
    /// Where samples go (the local store, then the peers).
    pub ingest: Arc<Ingest>,
    /// Where metadata goes.
    pub targets: Arc<Targets>,
    /// Access control: exporting needs write access to the monitor.
    pub auth: strata_auth::Auth,
    /// Largest body taken (`kv.max_request_bytes`).
    pub max_request_bytes: usize,
}

/// `POST /v1/metrics` and `POST /api/v1/otlp/v1/metrics`.
pub fn router(state: OtlpMetricsState) -> Router {
    Router::new()
        .route("/v1/metrics", post(receive))
        .route("/api/v1/otlp/v1/metrics", post(receive))
        .with_state(state)
}

fn allow(s: &OtlpMetricsState, who: &Caller, access: Access) -> Result<(), ApiError> {
    s.auth.gate.check(
        who,
        Kind::Monitor,
        access,
        &Names::prefix(Vec::new()),
        "monitor",
    )
}

/// The answer to an accepted export: empty, or a partial success naming the refused points.
fn otlp_success(encoding: Encoding, rejected: usize, message: String) -> Response {
    let partial = (rejected > 0).then(|| otlp::ExportMetricsPartialSuccess {
        rejected_data_points: i64::try_from(rejected).unwrap_or(i64::MAX),
        error_message: message,
    });
    match encoding {
        Encoding::Protobuf => {
            let body = otlp::ExportMetricsServiceResponse {
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
                    "rejectedDataPoints": p.rejected_data_points.to_string(),
                    "errorMessage": p.error_message,
                }}),
            };
            (StatusCode::OK, axum::Json(body)).into_response()
        }
    }
}

/// `POST /v1/metrics`: OTLP/HTTP.
async fn receive(
    State(s): State<OtlpMetricsState>,
    Who(who): Who,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let allowed = allow(&s, &who, Access::Write);
    let (encoding, body) = match otlp_http::accept(&headers, allowed, body, s.max_request_bytes) {
        Ok(accepted) => accepted,
        Err(answer) => return answer,
    };
    let ingest = s.ingest.clone();
    let targets = s.targets.clone();
    let written = tokio::task::spawn_blocking(move || {
        let request = match encoding {
            Encoding::Protobuf => decode_protobuf(&body),
            Encoding::Json => decode_json(&body),
        }
        .map_err(|message| (StatusCode::BAD_REQUEST, message))?;
        drop(body);
        let translated = translate(&request);
        drop(request);
        if !translated.samples.is_empty() {
            ingest.write(SOURCE, &translated.samples).map_err(|e| {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot store the samples: {e}"),
                )
            })?;
        }
        let message = translated.error_message();
        targets.add_metadata(translated.metadata);
        Ok((translated.rejected, message))
    })
    .await;
    match written {
        Ok(Ok((rejected, message))) => {
            if rejected > 0 {
                tracing::debug!(rejected, reasons = %message, "refused some OTLP data points");
            }
            otlp_success(encoding, rejected, message)
        }
        Ok(Err((status, message))) => {
            if status.is_server_error() {
                tracing::error!(error = %message, "cannot store received metrics");
            } else {
                tracing::debug!(error = %message, "refused an OTLP metrics export");
            }
            otlp_http::error(encoding, status, message)
        }
        Err(e) => otlp_http::error(encoding, StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{is_stale, matcher, Queryable};
    use otlp::any_value::Value as Any;
    use otlp::number_data_point::Value as Num;
    use proptest::prelude::*;

    /// 2023-11-14T22:13:20Z, in ms, and that plus 123456 ns.
    const T_MS: i64 = 1_700_000_000_000;
    const T_NS: u64 = 1_700_000_000_000_123_456;

    fn kv(key: &str, value: Any) -> otlp::KeyValue {
        otlp::KeyValue {
            key: key.into(),
            value: Some(otlp::AnyValue { value: Some(value) }),
        }
    }

    fn text(key: &str, value: &str) -> otlp::KeyValue {
        kv(key, Any::StringValue(value.into()))
    }

    fn number(attributes: Vec<otlp::KeyValue>, value: Num, flags: u32) -> otlp::NumberDataPoint {
        otlp::NumberDataPoint {
            attributes,
            start_time_unix_nano: T_NS - 60_000_000_000,
            time_unix_nano: T_NS,
            value: Some(value),
            flags,
        }
    }

    fn metric(name: &str, description: &str, unit: &str, data: otlp::metric::Data) -> otlp::Metric {
        otlp::Metric {
            name: name.into(),
            description: description.into(),
            unit: unit.into(),
            data: Some(data),
        }
    }

    fn request(metrics: Vec<otlp::Metric>) -> otlp::ExportMetricsServiceRequest {
        otlp::ExportMetricsServiceRequest {
            resource_metrics: vec![otlp::ResourceMetrics {
                resource: Some(otlp::Resource {
                    attributes: vec![
                        text("service.name", "checkout"),
                        text("service.namespace", "shop"),
                        text("service.instance.id", "pod-1"),
                        text("host.name", "h1"),
                    ],
                }),
                scope_metrics: vec![otlp::ScopeMetrics {
                    scope: Some(otlp::InstrumentationScope {
                        name: "app".into(),
                        version: "1.0".into(),
                    }),
                    metrics,
                }],
            }],
        }
    }

    /// A gauge, a monotonic cumulative sum (one point without a recorded value), a histogram
    /// and a summary.
    fn four_kinds() -> otlp::ExportMetricsServiceRequest {
        use otlp::metric::Data;
        request(vec![
            metric(
                "process.memory.usage",
                "Memory in use.",
                "By",
                Data::Gauge(otlp::Gauge {
                    data_points: vec![number(
                        vec![
                            text("memory.state", "used"),
                            kv("payload", Any::BytesValue(vec![0xab, 0x01])),
                        ],
                        Num::AsInt(42),
                        0,
                    )],
                }),
            ),
            metric(
                "http.server.requests",
                "Requests served.",
                "{request}",
                Data::Sum(otlp::Sum {
                    data_points: vec![
                        number(
                            vec![
                                text("http.method", "GET"),
                                kv("http.status_code", Any::IntValue(200)),
                            ],
                            Num::AsDouble(7.5),
                            0,
                        ),
                        number(vec![text("http.method", "POST")], Num::AsDouble(0.0), 1),
                    ],
                    aggregation_temporality: TEMPORALITY_CUMULATIVE,
                    is_monotonic: true,
                }),
            ),
            metric(
                "rpc.duration",
                "RPC latency.",
                "s",
                Data::Histogram(otlp::Histogram {
                    data_points: vec![otlp::HistogramDataPoint {
                        attributes: vec![kv("ok", Any::BoolValue(true))],
                        start_time_unix_nano: 1,
                        time_unix_nano: T_NS,
                        count: 6,
                        sum: Some(4.25),
                        bucket_counts: vec![1, 2, 3],
                        explicit_bounds: vec![0.5, 1.0],
                        flags: 0,
                        min: Some(0.1),
                        max: Some(2.0),
                    }],
                    aggregation_temporality: TEMPORALITY_CUMULATIVE,
                }),
            ),
            metric(
                "gc.pause",
                "",
                "s",
                Data::Summary(otlp::Summary {
                    data_points: vec![otlp::SummaryDataPoint {
                        attributes: vec![kv("ratio", Any::DoubleValue(0.25))],
                        start_time_unix_nano: 1,
                        time_unix_nano: T_NS,
                        count: 3,
                        sum: 0.3,
                        quantile_values: vec![
                            otlp::ValueAtQuantile {
                                quantile: 0.5,
                                value: 0.1,
                            },
                            otlp::ValueAtQuantile {
                                quantile: 0.99,
                                value: 0.2,
                            },
                        ],
                        flags: 0,
                    }],
                }),
            ),
        ])
    }

    /// The same export in OTLP JSON, as the JS and Python SDKs write it.
    const FOUR_KINDS_JSON: &str = r#"{"resourceMetrics":[{
        "resource":{"attributes":[
            {"key":"service.name","value":{"stringValue":"checkout"}},
            {"key":"service.namespace","value":{"stringValue":"shop"}},
            {"key":"service.instance.id","value":{"stringValue":"pod-1"}},
            {"key":"host.name","value":{"stringValue":"h1"}}]},
        "scopeMetrics":[{"scope":{"name":"app","version":"1.0"},"metrics":[
            {"name":"process.memory.usage","description":"Memory in use.","unit":"By",
             "gauge":{"dataPoints":[{"attributes":[
                {"key":"memory.state","value":{"stringValue":"used"}},
                {"key":"payload","value":{"bytesValue":"qwE="}}],
              "startTimeUnixNano":"1699999940000123456","timeUnixNano":"1700000000000123456",
              "asInt":"42"}]}},
            {"name":"http.server.requests","description":"Requests served.","unit":"{request}",
             "sum":{"aggregationTemporality":"AGGREGATION_TEMPORALITY_CUMULATIVE","isMonotonic":true,
              "dataPoints":[
                {"attributes":[{"key":"http.method","value":{"stringValue":"GET"}},
                               {"key":"http.status_code","value":{"intValue":"200"}}],
                 "timeUnixNano":"1700000000000123456","asDouble":7.5},
                {"attributes":[{"key":"http.method","value":{"stringValue":"POST"}}],
                 "timeUnixNano":1700000000000123456,"asDouble":0,"flags":1}]}},
            {"name":"rpc.duration","description":"RPC latency.","unit":"s",
             "histogram":{"aggregationTemporality":2,"dataPoints":[{
                "attributes":[{"key":"ok","value":{"boolValue":true}}],
                "startTimeUnixNano":"1","timeUnixNano":"1700000000000123456",
                "count":"6","sum":4.25,"bucketCounts":["1","2",3],"explicitBounds":[0.5,1],
                "min":0.1,"max":2}]}},
            {"name":"gc.pause","unit":"s",
             "summary":{"dataPoints":[{
                "attributes":[{"key":"ratio","value":{"doubleValue":0.25}}],
                "timeUnixNano":"1700000000000123456","count":"3","sum":0.3,
                "quantileValues":[{"quantile":0.5,"value":0.1},{"quantile":0.99,"value":0.2}]}]}}
        ]}]}]}"#;

    /// `(labels as text, t, value as text)`, staleness markers as `stale`.
    fn readable(samples: &[(Labels, i64, f64)]) -> Vec<(String, i64, String)> {
        samples
            .iter()
            .map(|(l, t, v)| {
                let v = if is_stale(*v) {
                    "stale".to_string()
                } else {
                    format_value(*v)
                };
                (l.to_string(), *t, v)
            })
            .collect()
    }

    fn expected_four_kinds() -> Vec<(String, i64, String)> {
        let r = r#"instance="pod-1", job="shop/checkout""#;
        [
            (format!(r#"process_memory_usage{{{r}, memory_state="used", payload="qwE="}}"#), "42"),
            (
                format!(r#"http_server_requests_total{{http_method="GET", http_status_code="200", {r}}}"#),
                "7.5",
            ),
            (format!(r#"http_server_requests_total{{http_method="POST", {r}}}"#), "stale"),
            (format!(r#"rpc_duration_sum{{{r}, ok="true"}}"#), "4.25"),
            (format!(r#"rpc_duration_count{{{r}, ok="true"}}"#), "6"),
            (format!(r#"rpc_duration_bucket{{{r}, le="0.5", ok="true"}}"#), "1"),
            (format!(r#"rpc_duration_bucket{{{r}, le="1", ok="true"}}"#), "3"),
            (format!(r#"rpc_duration_bucket{{{r}, le="+Inf", ok="true"}}"#), "6"),
            (format!(r#"gc_pause_sum{{{r}, ratio="0.25"}}"#), "0.3"),
            (format!(r#"gc_pause_count{{{r}, ratio="0.25"}}"#), "3"),
            (format!(r#"gc_pause{{{r}, quantile="0.5", ratio="0.25"}}"#), "0.1"),
            (format!(r#"gc_pause{{{r}, quantile="0.99", ratio="0.25"}}"#), "0.2"),
        ]
        .into_iter()
        .map(|(labels, v)| (labels, T_MS, v.to_string()))
        .collect()
    }

    fn expected_metadata() -> BTreeMap<String, Metadata> {
        let m = |kind: &str, help: &str, unit: &str| Metadata {
            kind: kind.into(),
            help: help.into(),
            unit: unit.into(),
        };
        BTreeMap::from([
            (
                "process_memory_usage".into(),
                m("gauge", "Memory in use.", "By"),
            ),
            (
                "http_server_requests_total".into(),
                m("counter", "Requests served.", "{request}"),
            ),
            ("rpc_duration".into(), m("histogram", "RPC latency.", "s")),
            ("gc_pause".into(), m("summary", "", "s")),
        ])
    }

    #[test]
    fn protobuf_exports_translate_like_prometheus() {
        let body = four_kinds().encode_to_vec();
        let decoded = decode_protobuf(&body).unwrap();
        let out = translate(&decoded);
        assert_eq!(readable(&out.samples), expected_four_kinds());
        assert_eq!(out.metadata, expected_metadata());
        assert_eq!(out.rejected, 0);
        assert_eq!(out.error_message(), "");
    }

    #[test]
    fn json_exports_translate_the_same() {
        let decoded = decode_json(FOUR_KINDS_JSON.as_bytes()).unwrap();
        let out = translate(&decoded);
        assert_eq!(readable(&out.samples), expected_four_kinds());
        assert_eq!(out.metadata, expected_metadata());
        assert_eq!(out.rejected, 0);
    }

    #[test]
    fn bad_json_says_what_is_wrong() {
        let e = decode_json(br#"{"resourceMetrics": 3}"#).unwrap_err();
        assert!(e.starts_with("invalid OTLP JSON body"), "{e}");
        let body = r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"x",
            "gauge":{"dataPoints":[{"timeUnixNano":"soon","asDouble":1}]}}]}]}]}"#;
        let e = decode_json(body.as_bytes()).unwrap_err();
        assert!(e.contains("timeUnixNano"), "{e}");
        let body = r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"x",
            "gauge":{"dataPoints":[{"timeUnixNano":"1","asInt":"1.5"}]}}]}]}]}"#;
        assert!(decode_json(body.as_bytes()).unwrap_err().contains("asInt"));
        // Special doubles, as proto3 JSON writes them.
        let body = r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"x",
            "gauge":{"dataPoints":[{"timeUnixNano":"1000000","asDouble":"-Infinity"}]}}]}]}]}"#;
        let out = translate(&decode_json(body.as_bytes()).unwrap());
        assert_eq!(out.samples[0].1, 1);
        assert_eq!(out.samples[0].2, f64::NEG_INFINITY);
    }

    #[test]
    fn delta_sums_and_exponential_histograms_are_refused_not_failed() {
        use otlp::metric::Data;
        let delta = |temporality| {
            Data::Sum(otlp::Sum {
                data_points: vec![
                    number(vec![], Num::AsInt(1), 0),
                    number(vec![text("a", "b")], Num::AsInt(2), 0),
                ],
                aggregation_temporality: temporality,
                is_monotonic: true,
            })
        };
        let mut no_time = number(vec![], Num::AsInt(1), 0);
        no_time.time_unix_nano = 0;
        let mut no_value = number(vec![], Num::AsInt(1), 0);
        no_value.value = None;
        let export = request(vec![
            metric("jobs.done", "", "", delta(TEMPORALITY_DELTA)),
            metric("jobs.odd", "", "", delta(0)),
            metric(
                "latency",
                "",
                "s",
                Data::ExponentialHistogram(otlp::ExponentialHistogram {
                    data_points: vec![otlp::ExponentialHistogramDataPoint::default(); 3],
                    aggregation_temporality: TEMPORALITY_CUMULATIVE,
                }),
            ),
            metric(
                "queue.depth",
                "",
                "",
                Data::Gauge(otlp::Gauge {
                    data_points: vec![number(vec![], Num::AsDouble(5.0), 0), no_time, no_value],
                }),
            ),
            metric(
                "...",
                "",
                "",
                Data::Gauge(otlp::Gauge {
                    data_points: vec![number(vec![], Num::AsDouble(5.0), 0)],
                }),
            ),
        ]);
        let out = translate(&export);
        assert_eq!(
            readable(&out.samples),
            [(
                r#"queue_depth{instance="pod-1", job="shop/checkout"}"#.to_string(),
                T_MS,
                "5".to_string()
            )]
        );
        assert_eq!(out.rejected, 2 + 2 + 3 + 2 + 1);
        let message = out.error_message();
        for needle in [
            "jobs_done: delta temporality",
            "jobs_odd: aggregation temporality 0",
            "latency: exponential histograms",
            "queue_depth: a data point has no time_unix_nano",
            "queue_depth: a number data point has no value",
            r#"metric name "...""#,
        ] {
            assert!(message.contains(needle), "{needle} not in {message}");
        }
        // Refused metrics leave no metadata.
        assert_eq!(out.metadata.keys().collect::<Vec<_>>(), ["queue_depth"]);
    }

    #[test]
    fn points_past_the_label_budget_are_refused() {
        use otlp::metric::Data;
        let huge = otlp::HistogramDataPoint {
            attributes: vec![text("blob", &"x".repeat(700_000))],
            time_unix_nano: T_NS,
            count: 1,
            bucket_counts: vec![0; 101],
            explicit_bounds: (1..=100).map(f64::from).collect(),
            ..Default::default()
        };
        let export = request(vec![
            metric(
                "wide",
                "",
                "",
                Data::Histogram(otlp::Histogram {
                    data_points: vec![huge],
                    aggregation_temporality: TEMPORALITY_CUMULATIVE,
                }),
            ),
            metric(
                "small",
                "",
                "",
                Data::Gauge(otlp::Gauge {
                    data_points: vec![number(vec![], Num::AsInt(1), 0)],
                }),
            ),
        ]);
        let out = translate(&export);
        assert_eq!(out.rejected, 1);
        assert!(out.error_message().contains("smaller batches"));
        assert_eq!(out.samples.len(), 1);
        assert_eq!(out.samples[0].0.name(), Some("small"));
    }

    #[test]
    fn names_are_sanitized_as_prometheus_does() {
        for (name, want) in [
            (
                "http.server.request.duration",
                "http_server_request_duration",
            ),
            ("a..b--c", "a_b_c"),
            ("..leading/and/trailing..", "leading_and_trailing"),
            (
                "keeps:colons_and__underscores",
                "keeps:colons_and__underscores",
            ),
            ("2xx.count", "_2xx_count"),
            ("caf\u{e9}.latency", "caf_latency"),
            ("___", "___"),
            ("!!!", ""),
        ] {
            assert_eq!(sanitize_metric_name(name), want, "{name}");
        }
        for (name, want) in [
            ("http.method", "http_method"),
            ("k8s.pod:name", "k8s_pod_name"),
            ("0day", "key_0day"),
            ("_private", "key_private"),
            ("__reserved", "__reserved"),
            ("caf\u{e9}", "caf_"),
        ] {
            assert_eq!(sanitize_label_name(name), want, "{name}");
        }
        use otlp::metric::Data;
        let sum = |name: &str, monotonic| {
            metric(
                name,
                "",
                "",
                Data::Sum(otlp::Sum {
                    data_points: vec![number(
                        vec![
                            text("a.b", "1"),
                            text("a_b", "2"),
                            text("a-b", "3"),
                            text("job", "overridden"),
                            text("__name__", "overridden"),
                            text("", "dropped"),
                        ],
                        Num::AsInt(1),
                        0,
                    )],
                    aggregation_temporality: TEMPORALITY_CUMULATIVE,
                    is_monotonic: monotonic,
                }),
            )
        };
        let mut export = request(vec![
            sum("requests_total", true),
            sum("requests", true),
            sum("in.flight", false),
        ]);
        export.resource_metrics[0].resource = Some(otlp::Resource {
            attributes: vec![text("service.name", "api")],
        });
        let out = translate(&export);
        // Colliding names merge in the order of the original names: "a-b" < "a.b" < "a_b".
        let want = |name: &str| format!(r#"{name}{{a_b="3;1;2", job="api"}}"#);
        let names: Vec<String> = readable(&out.samples).into_iter().map(|s| s.0).collect();
        assert_eq!(
            names,
            [
                want("requests_total"),
                want("requests_total"),
                want("in_flight")
            ]
        );
        assert_eq!(out.metadata["in_flight"].kind, "gauge");
        assert_eq!(out.metadata["requests_total"].kind, "counter");
    }

    #[test]
    fn attribute_values_are_written_as_prometheus_does() {
        let list = Any::ArrayValue(otlp::ArrayValue {
            values: vec![
                otlp::AnyValue {
                    value: Some(Any::IntValue(1)),
                },
                otlp::AnyValue {
                    value: Some(Any::StringValue("a".into())),
                },
            ],
        });
        let map = Any::KvlistValue(otlp::KeyValueList {
            values: vec![kv("k", Any::DoubleValue(f64::INFINITY))],
        });
        for (value, want) in [
            (Any::DoubleValue(1e21), "1000000000000000000000"),
            (Any::DoubleValue(-0.5), "-0.5"),
            (Any::IntValue(-3), "-3"),
            (Any::BoolValue(false), "false"),
            (Any::BytesValue(b"hello".to_vec()), "aGVsbG8="),
            (Any::BytesValue(vec![]), ""),
            (list, r#"[1,"a"]"#),
            (map, r#"{"k":"+Inf"}"#),
        ] {
            let got = value_text(&otlp::AnyValue {
                value: Some(value.clone()),
            });
            assert_eq!(got, want, "{value:?}");
        }
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }

    fn state(dir: &std::path::Path) -> OtlpMetricsState {
        let store = crate::store::Store::open(
            dir,
            crate::store::Options {
                block_ms: 2 * 3600 * 1000,
                retention_ms: 0,
                retention_bytes: 0,
                downsample_after_ms: 0,
            },
        )
        .unwrap();
        let ingest = Ingest::new(
            Arc::new(store),
            strata_component::PeerHttp::plain(),
            tokio_util::task::TaskTracker::new(),
            tokio_util::sync::CancellationToken::new(),
            &prometheus::Registry::new(),
        )
        .unwrap();
        let kv: Arc<dyn strata_store::KvApi> = Arc::new(strata_store::memory::MemoryKv::new());
        OtlpMetricsState {
            ingest: Arc::new(ingest),
            targets: Arc::new(Targets::default()),
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
    async fn the_receiver_answers_as_otlp_says_and_stores_samples() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(dir.path());
        let post =
            |h: HeaderMap, body: Vec<u8>| receive(State(s.clone()), who(), h, Bytes::from(body));

        let (status, body) =
            body_of(post(headers(PROTOBUF), four_kinds().encode_to_vec()).await).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.is_empty());
        let stored = s.ingest.store.select(
            &[matcher(
                "__name__",
                "=~",
                "rpc_duration_bucket|http_server_requests_total",
            )
            .unwrap()],
            0,
            i64::MAX,
        );
        assert_eq!(stored.len(), 5);
        let inf = stored
            .iter()
            .find(|series| series.labels.get("le") == Some("+Inf"))
            .unwrap();
        assert_eq!(inf.samples, [(T_MS, 6.0)]);
        assert_eq!(inf.labels.get("job"), Some("shop/checkout"));
        assert_eq!(s.targets.metadata(), expected_metadata());

        // The JSON export is the same samples again: accepted (the store skips the repeats).
        let (status, body) = body_of(
            post(
                headers("application/json; charset=utf-8"),
                FOUR_KINDS_JSON.into(),
            )
            .await,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, b"{}");

        let (status, body) = body_of(post(headers("application/json"), b"{".to_vec()).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let error: Json = serde_json::from_slice(&body).unwrap();
        assert_eq!(error["code"], 3);
        assert!(error["message"]
            .as_str()
            .unwrap()
            .contains("invalid OTLP JSON"));

        let (status, body) = body_of(post(headers(PROTOBUF), b"\xff\xff".to_vec()).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(otlp::RpcStatus::decode(body.as_slice()).unwrap().code, 3);

        // A truncated gzip body is a bad request; an unknown coding is unsupported.
        let mut gzip = headers(PROTOBUF);
        gzip.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let (status, _) = body_of(post(gzip, vec![0x1f, 0x8b]).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let mut zstd = headers(PROTOBUF);
        zstd.insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
        let (status, _) = body_of(post(zstd, vec![0x28, 0xb5]).await).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

        let (status, _) = body_of(post(headers("text/plain"), Vec::new()).await).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let (status, _) = body_of(post(HeaderMap::new(), Vec::new()).await).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

        let (status, _) = body_of(post(headers(PROTOBUF), vec![0; (1 << 20) + 1]).await).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

        // A delta sum next to a gauge: a partial success.
        use otlp::metric::Data;
        let mut later = number(vec![], Num::AsInt(3), 0);
        later.time_unix_nano += 60_000_000_000;
        let export = request(vec![
            metric(
                "jobs",
                "",
                "",
                Data::Sum(otlp::Sum {
                    data_points: vec![later.clone(), later.clone()],
                    aggregation_temporality: TEMPORALITY_DELTA,
                    is_monotonic: true,
                }),
            ),
            metric(
                "depth",
                "",
                "",
                Data::Gauge(otlp::Gauge {
                    data_points: vec![later],
                }),
            ),
        ]);
        let (status, body) = body_of(post(headers(PROTOBUF), export.encode_to_vec()).await).await;
        assert_eq!(status, StatusCode::OK);
        let answer = otlp::ExportMetricsServiceResponse::decode(body.as_slice()).unwrap();
        let partial = answer.partial_success.unwrap();
        assert_eq!(partial.rejected_data_points, 2);
        assert!(
            partial.error_message.contains("delta"),
            "{}",
            partial.error_message
        );
        let depth =
            s.ingest
                .store
                .select(&[matcher("__name__", "=", "depth").unwrap()], 0, i64::MAX);
        assert_eq!(depth[0].samples, [(T_MS + 60_000, 3.0)]);

        let json_delta = r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"jobs",
            "sum":{"aggregationTemporality":"AGGREGATION_TEMPORALITY_DELTA","isMonotonic":true,
            "dataPoints":[{"timeUnixNano":"1700000000000000000","asInt":"1"}]}}]}]}]}"#;
        let (status, body) =
            body_of(post(headers("application/json"), json_delta.into()).await).await;
        assert_eq!(status, StatusCode::OK);
        let answer: Json = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["partialSuccess"]["rejectedDataPoints"], "1");
    }

    #[test]
    fn both_paths_are_routed() {
        let dir = tempfile::tempdir().unwrap();
        // Building the router checks the paths parse and do not overlap.
        let _ = router(state(dir.path()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn decoders_take_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(request) = decode_protobuf(&bytes) {
                let _ = translate(&request);
            }
            if let Ok(request) = decode_json(&bytes) {
                let _ = translate(&request);
            }
        }

        #[test]
        fn decoders_take_damaged_exports(
            edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<proptest::sample::Index>(),
        ) {
            for valid in [four_kinds().encode_to_vec(), FOUR_KINDS_JSON.as_bytes().to_vec()] {
                let mut bytes = valid;
                for (at, value) in &edits {
                    let i = at.index(bytes.len());
                    bytes[i] = *value;
                }
                bytes.truncate(cut.index(bytes.len() + 1));
                if let Ok(request) = decode_protobuf(&bytes) {
                    let _ = translate(&request);
                }
                if let Ok(request) = decode_json(&bytes) {
                    let _ = translate(&request);
                }
            }
        }
    }
}
