//! Access log: one JSON line per request, written off the hot path.
//!
//! A request hands its record to a bounded channel and moves on; one task formats and writes
//! the lines (buffered, flushed when the channel runs dry). When the writer falls behind by more
//! than [`QUEUE`] records, new ones are dropped and counted
//! (`strata_gateway_access_log_dropped_total`) rather than slowing requests down.

use crate::balance::Endpoint;
use crate::h1::Text;
use hyper::header::HeaderValue;
use hyper::{Method, Uri};
use std::borrow::Cow;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Records waiting for the writer, at most.
pub const QUEUE: usize = 16 * 1024;

/// Every field a line can carry, in the order written by default, with its name.
const FIELDS: [(&str, Field); 13] = [
    ("ts_ms", Field::TsMs),
    ("client", Field::Client),
    ("method", Field::Method),
    ("host", Field::Host),
    ("path", Field::Path),
    ("query", Field::Query),
    ("status", Field::Status),
    ("route", Field::Route),
    ("member", Field::Member),
    ("duration_ms", Field::DurationMs),
    ("request_id", Field::RequestId),
    ("user_agent", Field::UserAgent),
    ("protocol", Field::Protocol),
];

/// One request, as logged: what it takes from the request, shared or copied cheaply, so that
/// the text is made by the writer, off the request's path.
#[derive(Debug)]
pub struct Record {
    /// Milliseconds since the Unix epoch at arrival.
    pub ts_ms: u64,
    /// The client's address.
    pub client: IpAddr,
    /// Method.
    pub method: Method,
    /// Host.
    pub host: String,
    /// The request's target: its path and query.
    pub uri: Uri,
    /// Status answered.
    pub status: u16,
    /// Route name (empty: none matched).
    pub route: String,
    /// The upstream member that answered, if one did.
    pub member: Option<Arc<Endpoint>>,
    /// Time to the response headers.
    pub duration_ms: f64,
    /// `X-Request-Id`.
    pub request_id: Option<Text>,
    /// `User-Agent`.
    pub user_agent: Option<HeaderValue>,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'static str,
}

/// A field of a line (named in [`FIELDS`]).
#[derive(Debug, Clone, Copy)]
enum Field {
    TsMs,
    Client,
    Method,
    Host,
    Path,
    Query,
    Status,
    Route,
    Member,
    DurationMs,
    RequestId,
    UserAgent,
    Protocol,
}

/// A line's fields in their order, each with its key as written (`"name":`, after a comma
/// but for the first): made once, so a line looks up no name and escapes no key.
#[derive(Debug)]
struct Layout(Vec<(Field, Vec<u8>)>);

impl Layout {
    /// The layout of `names` (none: every field), each one of [`FIELDS`] (checked by
    /// [`check_fields`]); an unknown name is left out.
    fn new(names: &[String]) -> Layout {
        let chosen: Vec<(&str, Field)> = if names.is_empty() {
            FIELDS.to_vec()
        } else {
            names
                .iter()
                .filter_map(|name| FIELDS.iter().find(|(known, _)| known == name).copied())
                .collect()
        };
        Layout(
            chosen
                .into_iter()
                .enumerate()
                .map(|(index, (name, field))| {
                    let comma = if index == 0 { "" } else { "," };
                    (field, format!("{comma}\"{name}\":").into_bytes())
                })
                .collect(),
        )
    }
}

impl Record {
    /// Writes the record as one JSON object with the layout's fields in their order, and a
    /// newline: straight into `out`, without building a map or copying a value.
    fn write_line(&self, layout: &Layout, out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(b"{")?;
        for (field, key) in &layout.0 {
            out.write_all(key)?;
            match field {
                Field::TsMs => serde_json::to_writer(&mut *out, &self.ts_ms),
                Field::Client => serde_json::to_writer(&mut *out, &self.client),
                Field::Method => serde_json::to_writer(&mut *out, self.method.as_str()),
                Field::Host => serde_json::to_writer(&mut *out, &self.host),
                Field::Path => serde_json::to_writer(&mut *out, self.uri.path()),
                Field::Query => serde_json::to_writer(&mut *out, &self.uri.query()),
                Field::Status => serde_json::to_writer(&mut *out, &self.status),
                Field::Route => serde_json::to_writer(&mut *out, &self.route),
                Field::Member => serde_json::to_writer(
                    &mut *out,
                    &self.member.as_ref().map(|member| member.address.as_str()),
                ),
                Field::DurationMs => serde_json::to_writer(
                    &mut *out,
                    &((self.duration_ms * 1000.0).round() / 1000.0),
                ),
                Field::RequestId => serde_json::to_writer(
                    &mut *out,
                    &self.request_id.as_ref().map_or(Cow::Borrowed(""), |id| {
                        String::from_utf8_lossy(id.as_bytes())
                    }),
                ),
                Field::UserAgent => serde_json::to_writer(
                    &mut *out,
                    &self.user_agent.as_ref().and_then(|v| v.to_str().ok()),
                ),
                Field::Protocol => serde_json::to_writer(&mut *out, self.protocol),
            }
            .map_err(std::io::Error::other)?;
        }
        out.write_all(b"}\n")
    }
}

#[derive(Debug, Clone)]
pub struct AccessLog {
    queue: mpsc::Sender<Record>,
    dropped: prometheus::IntCounter,
}

/// Checks a field list.
pub fn check_fields(fields: &[String]) -> Result<(), String> {
    let known = |name: &String| FIELDS.iter().any(|(field, _)| field == name);
    match fields.iter().find(|name| !known(name)) {
        Some(unknown) => Err(format!(
            "gateway.access_log_fields: unknown field {unknown:?}; fields are {}",
            FIELDS.map(|(name, _)| name).join(", ")
        )),
        None => Ok(()),
    }
}

impl AccessLog {
    /// Starts the writer: `target` is `stdout` or a file (appended to).
    pub fn start(
        target: &str,
        fields: Vec<String>,
        dropped: prometheus::IntCounter,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Result<AccessLog, String> {
        let mut out: Box<dyn Write + Send> = if target == "stdout" {
            Box::new(std::io::stdout())
        } else {
            let path = PathBuf::from(target);
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("gateway.access_log: cannot open {}: {e}", path.display()))?;
            Box::new(file)
        };
        let layout = Layout::new(&fields);
        let (queue, mut rx) = mpsc::channel::<Record>(QUEUE);
        // Formatting and writing happen in a task of their own, in batches: whatever queued
        // while the last batch was written goes out with one flush.
        tracker.spawn(async move {
            let mut buffer = std::io::BufWriter::with_capacity(64 * 1024, &mut out);
            loop {
                let first = tokio::select! {
                    () = cancel.cancelled() => None,
                    record = rx.recv() => record,
                };
                let Some(first) = first else {
                    break;
                };
                let mut pending = Some(first);
                while let Some(record) = pending.take() {
                    let _ = record.write_line(&layout, &mut buffer);
                    pending = rx.try_recv().ok();
                }
                let _ = buffer.flush();
            }
            let _ = buffer.flush();
        });
        Ok(AccessLog { queue, dropped })
    }

    /// Hands a record to the writer, or drops it when the writer is behind.
    pub fn log(&self, record: Record) {
        if self.queue.try_send(record).is_err() {
            self.dropped.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_json_line_with_the_fields_in_their_order() {
        let record = Record {
            ts_ms: 7,
            client: "10.0.0.1".parse().unwrap(),
            method: Method::GET,
            host: "a \"quoted\"\nhost".into(),
            uri: "/a%20b?x=1".parse().unwrap(),
            status: 200,
            route: String::new(),
            member: None,
            duration_ms: 1.23456,
            request_id: Some(Text::Made(bytes::Bytes::from_static(b"abc"))),
            user_agent: None,
            protocol: "HTTP/1.1",
        };
        let fields: Vec<String> = [
            "status",
            "host",
            "path",
            "user_agent",
            "duration_ms",
            "ts_ms",
            "protocol",
        ]
        .iter()
        .map(|f| f.to_string())
        .collect();
        let mut out = Vec::new();
        record.write_line(&Layout::new(&fields), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "{text:?}"
        );
        assert!(text.starts_with("{\"status\":200,\"host\":"), "{text}");
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"status": 200, "host": "a \"quoted\"\nhost", "path": "/a%20b",
                "user_agent": null, "duration_ms": 1.235, "ts_ms": 7, "protocol": "HTTP/1.1"})
        );
        let mut all = Vec::new();
        let every: Vec<String> = FIELDS.iter().map(|(name, _)| name.to_string()).collect();
        record.write_line(&Layout::new(&every), &mut all).unwrap();
        let parsed: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&all).unwrap();
        assert_eq!(parsed.len(), FIELDS.len());
        assert_eq!(parsed["client"], "10.0.0.1");
        assert_eq!(parsed["method"], "GET");
        assert_eq!(parsed["query"], "x=1");
        assert_eq!(parsed["request_id"], "abc");
        assert_eq!(parsed["member"], serde_json::Value::Null);
    }
}
