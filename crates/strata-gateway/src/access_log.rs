//! Access log: one JSON line per request, written off the hot path.
//!
//! A request hands its record to a bounded channel and moves on; one task formats and writes
//! the lines (buffered, flushed when the channel runs dry). When the writer falls behind by more
//! than [`QUEUE`] records, new ones are dropped and counted
//! (`strata_gateway_access_log_dropped_total`) rather than slowing requests down.

use std::io::Write;
use std::path::PathBuf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Records waiting for the writer, at most.
pub const QUEUE: usize = 16 * 1024;

/// Every field a line can carry, in the order written.
pub const FIELDS: [&str; 13] = [
    "ts_ms",
    "client",
    "method",
    "host",
    "path",
    "query",
    "status",
    "route",
    "member",
    "duration_ms",
    "request_id",
    "user_agent",
    "protocol",
];

/// One request, as logged.
#[derive(Debug, Default)]
pub struct Record {
    /// Milliseconds since the Unix epoch at arrival.
    pub ts_ms: u64,
    /// The client's address.
    pub client: String,
    /// Method.
    pub method: String,
    /// Host.
    pub host: String,
    /// Path.
    pub path: String,
    /// Query string.
    pub query: Option<String>,
    /// Status answered.
    pub status: u16,
    /// Route name (empty: none matched).
    pub route: String,
    /// The upstream member that answered, if one did.
    pub member: Option<String>,
    /// Time to the response headers.
    pub duration_ms: f64,
    /// `X-Request-Id`.
    pub request_id: String,
    /// `User-Agent`.
    pub user_agent: Option<String>,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'static str,
}

impl Record {
    /// Writes the record as one JSON object with `fields` in their order, and a newline:
    /// straight into `out`, without building a map or copying a value.
    fn write_line(&self, fields: &[String], out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(b"{")?;
        for (index, name) in fields.iter().enumerate() {
            if index > 0 {
                out.write_all(b",")?;
            }
            serde_json::to_writer(&mut *out, name.as_str())?;
            out.write_all(b":")?;
            match name.as_str() {
                "ts_ms" => serde_json::to_writer(&mut *out, &self.ts_ms),
                "client" => serde_json::to_writer(&mut *out, &self.client),
                "method" => serde_json::to_writer(&mut *out, &self.method),
                "host" => serde_json::to_writer(&mut *out, &self.host),
                "path" => serde_json::to_writer(&mut *out, &self.path),
                "query" => serde_json::to_writer(&mut *out, &self.query),
                "status" => serde_json::to_writer(&mut *out, &self.status),
                "route" => serde_json::to_writer(&mut *out, &self.route),
                "member" => serde_json::to_writer(&mut *out, &self.member),
                "duration_ms" => serde_json::to_writer(
                    &mut *out,
                    &((self.duration_ms * 1000.0).round() / 1000.0),
                ),
                "request_id" => serde_json::to_writer(&mut *out, &self.request_id),
                "user_agent" => serde_json::to_writer(&mut *out, &self.user_agent),
                "protocol" => serde_json::to_writer(&mut *out, self.protocol),
                _ => serde_json::to_writer(&mut *out, &()),
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
    match fields.iter().find(|f| !FIELDS.contains(&f.as_str())) {
        Some(unknown) => Err(format!(
            "gateway.access_log_fields: unknown field {unknown:?}; fields are {}",
            FIELDS.join(", ")
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
        let fields: Vec<String> = if fields.is_empty() {
            FIELDS.iter().map(|f| f.to_string()).collect()
        } else {
            fields
        };
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
                    let _ = record.write_line(&fields, &mut buffer);
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
            client: "10.0.0.1".into(),
            method: "GET".into(),
            path: "/a \"quoted\"\npath".into(),
            status: 200,
            duration_ms: 1.23456,
            user_agent: None,
            protocol: "HTTP/1.1",
            ..Default::default()
        };
        let fields: Vec<String> = [
            "status",
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
        record.write_line(&fields, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "{text:?}"
        );
        assert!(text.starts_with("{\"status\":200,\"path\":"), "{text}");
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"status": 200, "path": "/a \"quoted\"\npath", "user_agent": null,
                "duration_ms": 1.235, "ts_ms": 7, "protocol": "HTTP/1.1"})
        );
        let mut all = Vec::new();
        let every: Vec<String> = FIELDS.iter().map(|f| f.to_string()).collect();
        record.write_line(&every, &mut all).unwrap();
        let parsed: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&all).unwrap();
        assert_eq!(parsed.len(), FIELDS.len());
    }
}
