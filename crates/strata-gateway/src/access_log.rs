//! Access log: one JSON line per request, written off the hot path.
//!
//! A request hands its record to a bounded channel and moves on; one task formats and writes
//! the lines (buffered, flushed when the channel runs dry). When the writer falls behind by more
//! than [`QUEUE`] records, new ones are dropped and counted
//! (`strata_gateway_access_log_dropped_total`) rather than slowing requests down.

use serde_json::{Map, Value};
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
    fn field(&self, name: &str) -> Value {
        match name {
            "ts_ms" => self.ts_ms.into(),
            "client" => self.client.clone().into(),
            "method" => self.method.clone().into(),
            "host" => self.host.clone().into(),
            "path" => self.path.clone().into(),
            "query" => self.query.clone().into(),
            "status" => self.status.into(),
            "route" => self.route.clone().into(),
            "member" => self.member.clone().into(),
            "duration_ms" => ((self.duration_ms * 1000.0).round() / 1000.0).into(),
            "request_id" => self.request_id.clone().into(),
            "user_agent" => self.user_agent.clone().into(),
            "protocol" => self.protocol.into(),
            _ => Value::Null,
        }
    }
}

/// Where lines go, and which fields they carry.
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
                    let mut line = Map::new();
                    for name in &fields {
                        line.insert(name.clone(), record.field(name));
                    }
                    let _ = serde_json::to_writer(&mut buffer, &Value::Object(line));
                    let _ = buffer.write_all(b"\n");
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
