//! The audit log: one JSON line per write and per denied request (who, from where, through
//! which API, what, on what, allowed or not), written by a thread of its own so a request
//! never waits for the disk, and rotated by size.
//!
//! A line never holds a secret: callers pass an action and a resource name, and neither is
//! ever a password or a token.

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// One audited request.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// When (RFC 3339, milliseconds, UTC).
    pub time: String,
    /// The user, or `None` for a role-set token or when access control is off.
    pub user: Option<String>,
    /// The client's address, when known.
    pub from: Option<String>,
    /// Which interface: `native`, `etcd`, `consul`, `nacos`.
    pub api: &'static str,
    /// What was asked (`put`, `delete`, `register`, `user_add`, ...).
    pub action: String,
    /// On what (`kv:app/x`, `registry:public/web`, ...).
    pub resource: String,
    /// Whether it was allowed.
    pub allowed: bool,
}

/// Where audit records go.
#[derive(Clone)]
pub struct Audit {
    sender: Option<SyncSender<Record>>,
    dropped: Arc<AtomicU64>,
    writer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("on", &self.sender.is_some())
            .finish()
    }
}

/// Lines buffered before records are dropped (and counted) rather than slowing requests.
const QUEUE: usize = 16 * 1024;

impl Audit {
    /// An audit log that writes nothing.
    pub fn off() -> Self {
        Audit {
            sender: None,
            dropped: Arc::new(AtomicU64::new(0)),
            writer: Arc::default(),
        }
    }

    /// Writes records to `dir/audit.log`, moving it to `audit.log.1` (and older ones up to
    /// `audit.log.KEEP`) when it passes `max_bytes`. The writer thread ends when every
    /// clone of the returned value is dropped.
    pub fn to_dir(dir: &Path, max_bytes: u64, keep: u32) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("audit.log");
        let file = open(&path)?;
        let (sender, receiver) = sync_channel(QUEUE);
        let writer = Writer {
            path,
            size: file.metadata().map(|m| m.len()).unwrap_or(0),
            out: BufWriter::new(file),
            max_bytes,
            keep,
        };
        let handle = std::thread::Builder::new()
            .name("strata-audit".into())
            .spawn(move || writer.run(receiver))?;
        Ok(Audit {
            sender: Some(sender),
            dropped: Arc::new(AtomicU64::new(0)),
            writer: Arc::new(std::sync::Mutex::new(Some(handle))),
        })
    }

    /// True when records are written somewhere.
    pub fn is_on(&self) -> bool {
        self.sender.is_some()
    }

    /// Queues a record; when the queue is full it is dropped and counted.
    pub fn record(&self, record: Record) {
        let Some(sender) = &self.sender else {
            return;
        };
        match sender.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Stops taking records and waits until the writer has written the queued ones. The
    /// writer ends when the last clone is closed or dropped; close the last one.
    pub fn close(mut self) {
        self.sender = None;
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    /// Records dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The current time as the audit log writes it.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Opens for appending; readable by the owner only (it names users, clients and keys).
fn open(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

struct Writer {
    path: PathBuf,
    size: u64,
    out: BufWriter<File>,
    max_bytes: u64,
    keep: u32,
}

impl Writer {
    fn run(mut self, receiver: Receiver<Record>) {
        loop {
            // Flush at most every 200 ms while records arrive, and whenever the queue drains.
            match receiver.recv_timeout(Duration::from_millis(200)) {
                Ok(record) => self.write(&record),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => self.flush(),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
            while let Ok(record) = receiver.try_recv() {
                self.write(&record);
            }
            self.flush();
        }
        self.flush();
    }

    fn write(&mut self, record: &Record) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        if let Err(e) = self.out.write_all(&line) {
            tracing::warn!(error = %e, path = %self.path.display(), "cannot write the audit log");
            return;
        }
        self.size += line.len() as u64;
        if self.size >= self.max_bytes {
            self.rotate();
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            tracing::warn!(error = %e, path = %self.path.display(), "cannot write the audit log");
        }
    }

    /// `audit.log` becomes `audit.log.1`, `.1` becomes `.2`, ..., and the oldest is removed.
    fn rotate(&mut self) {
        self.flush();
        let numbered = |n: u32| self.path.with_extension(format!("log.{n}"));
        let _ = std::fs::remove_file(numbered(self.keep));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        if self.keep > 0 {
            let _ = std::fs::rename(&self.path, numbered(1));
        } else {
            let _ = std::fs::remove_file(&self.path);
        }
        match open(&self.path) {
            Ok(file) => {
                self.out = BufWriter::new(file);
                self.size = 0;
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %self.path.display(), "cannot reopen the audit log")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn record(n: usize) -> Record {
        Record {
            time: now(),
            user: Some("alice".into()),
            from: Some("127.0.0.1:1".into()),
            api: "native",
            action: "put".into(),
            resource: format!("kv:key-{n}"),
            allowed: true,
        }
    }

    #[test]
    fn lines_are_json_and_rotate_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::to_dir(dir.path(), 1000, 2).unwrap();
        for n in 0..40 {
            audit.record(record(n));
        }
        audit.close();
        assert!(dir.path().join("audit.log.1").exists());
        assert!(dir.path().join("audit.log.2").exists());
        assert!(!dir.path().join("audit.log.3").exists());
        for name in ["audit.log.1", "audit.log.2"] {
            let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
            assert!(text.len() < 1000 + 200, "{name} is {} bytes", text.len());
            for line in text.lines() {
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(value["user"], "alice");
                assert_eq!(value["allowed"], true);
            }
        }
    }
}
