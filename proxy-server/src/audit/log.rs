//! The audit log's file, written by the router alone (one chain for every application).
//!
//! Each line is a JSON object whose last field, `prev`, is the hex SHA-256 of the line before
//! it (its bytes, without the newline); the first line of a new log has 64 zeros. A server
//! that starts on an existing file continues its chain from its last line, and says so with a
//! `start` record. Rotation (`--audit-max-bytes`) renames the file `PATH.<milliseconds>` and
//! starts a new one with a `rotated` record whose `prev` is the hash of the old file's last
//! line, so the chain runs on across files.
//!
//! Writing never holds a call for long: workers send their events in batches
//! (`super::Sink`), through a bounded queue to one writer thread, which writes what is
//! queued before a stopping server exits ([`AuditLog::close`]). When the queue is full (the disk stalls), events are dropped and counted
//! (`pkcs11_proxy_audit_dropped_total`, a log line), and the next line written is a `gap`
//! record that says how many: the log shows where it lost events and how many. Lines are
//! handed to the operating system after each batch (no fsync: a crash of the machine may
//! lose the last lines, a crash of the server does not).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use serde::Serialize;

use super::{now_ms, rfc3339, Event};

/// Events waiting for the writer, at most.
const QUEUE: usize = 65_536;

/// The `prev` of a log's first line.
pub const ORIGIN: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hex SHA-256 of a line (without its newline).
pub fn hash(line: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, line)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One line as written: the event's fields in a fixed order, `prev` last.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    application: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    slot: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_label: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mechanism: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rv: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    prev: &'a str,
}

impl<'a> Line<'a> {
    fn of(e: &'a Event, prev: &'a str) -> Self {
        Self {
            time: rfc3339(e.at_ms),
            event: &e.event,
            identity: e.identity.as_deref(),
            application: e.application.as_deref(),
            client: e.client,
            function: e.function.as_deref(),
            slot: e.slot,
            token: e.token.as_deref(),
            object_id: e.object_id.as_deref(),
            object_label: e.object_label.as_deref(),
            mechanism: e.mechanism.as_deref(),
            rv: e.rv.as_deref(),
            detail: e.detail.as_deref(),
            prev,
        }
    }
}

/// The router's audit log: events in, lines out.
pub struct AuditLog {
    /// Taken away at [`AuditLog::close`].
    queue: parking_lot::Mutex<Option<SyncSender<Event>>>,
    writer: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    pub written: Arc<AtomicU64>,
    pub dropped: Arc<AtomicU64>,
}

impl AuditLog {
    /// Opens (or continues) the log at `path`, rotated past `max_bytes`, and starts its
    /// writer, which counts the lines it writes and the events it drops in `written` and
    /// `dropped`.
    pub fn open(
        path: &Path,
        max_bytes: u64,
        written: Arc<AtomicU64>,
        dropped: Arc<AtomicU64>,
    ) -> Result<Self, String> {
        let at = |e: std::io::Error| format!("audit log {}: {e}", path.display());
        let prev = last_hash(path).map_err(at)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(at)?;
        let size = file.metadata().map_err(at)?.len();
        let (queue, events) = mpsc::sync_channel(QUEUE);
        let log = Self {
            queue: parking_lot::Mutex::new(Some(queue)),
            writer: parking_lot::Mutex::new(None),
            written,
            dropped,
        };
        let mut writer = Writer {
            path: path.to_path_buf(),
            file,
            size,
            prev,
            max_bytes,
            written: log.written.clone(),
            dropped: log.dropped.clone(),
            gap_from: 0,
        };
        writer
            .write(&Event {
                at_ms: now_ms(),
                event: "start".into(),
                detail: Some(format!("pkcs11-proxy-server {}", env!("CARGO_PKG_VERSION"))),
                ..Event::default()
            })
            .map_err(at)?;
        let handle = std::thread::Builder::new()
            .name("p11-audit".into())
            .spawn(move || writer.run(events))
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        *log.writer.lock() = Some(handle);
        Ok(log)
    }

    /// Writes what is queued and closes the file (the server stops).
    pub fn close(&self) {
        self.queue.lock().take();
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
    }

    /// Counts events a worker dropped before they reached the router.
    pub fn lost(&self, dropped: u64) {
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
            tracing::error!(
                dropped,
                "audit events dropped in a worker (a `gap` record will count them)"
            );
        }
    }

    /// Queues an event; drops (and counts) it when the writer is that far behind.
    pub fn record(&self, event: Event) {
        let queue = self.queue.lock();
        let Some(queue) = queue.as_ref() else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match queue.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if self
                    .dropped
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(10_000)
                {
                    tracing::error!(
                        "audit log queue full: events dropped (a `gap` record will count them)"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

struct Writer {
    path: PathBuf,
    file: File,
    size: u64,
    prev: String,
    max_bytes: u64,
    written: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    /// Dropped events already told by a `gap` record.
    gap_from: u64,
}

impl Writer {
    fn run(mut self, events: Receiver<Event>) {
        while let Ok(first) = events.recv() {
            let batch = std::iter::once(first).chain(events.try_iter().take(1024));
            for e in batch {
                if let Err(err) = self.gap().and_then(|()| self.write(&e)) {
                    tracing::error!(error = %err, path = %self.path.display(), "audit log write failed");
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            let _ = self.file.flush();
        }
    }

    /// A `gap` record when events were dropped since the last one.
    fn gap(&mut self) -> std::io::Result<()> {
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped == self.gap_from {
            return Ok(());
        }
        let lost = dropped - self.gap_from;
        self.gap_from = dropped;
        self.write(&Event {
            at_ms: now_ms(),
            event: "gap".into(),
            detail: Some(format!("{lost} events dropped: the audit queue was full")),
            ..Event::default()
        })
    }

    fn write(&mut self, e: &Event) -> std::io::Result<()> {
        let line =
            serde_json::to_string(&Line::of(e, &self.prev)).map_err(std::io::Error::other)?;
        self.file.write_all(line.as_bytes())?;
        self.file.write_all(b"\n")?;
        self.prev = hash(line.as_bytes());
        self.size += line.len() as u64 + 1;
        self.written.fetch_add(1, Ordering::Relaxed);
        if self.size > self.max_bytes && e.event != "rotated" {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let at = now_ms();
        let old = PathBuf::from(format!("{}.{at:013}", self.path.display()));
        std::fs::rename(&self.path, &old)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        self.write(&Event {
            at_ms: at,
            event: "rotated".into(),
            detail: Some(format!("continues {}", old.display())),
            ..Event::default()
        })
    }
}

/// The hash of the last line of the log at `path`, or [`ORIGIN`] for a new log.
fn last_hash(path: &Path) -> std::io::Result<String> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ORIGIN.into()),
        Err(e) => return Err(e),
    };
    // The last 64 KiB hold the last line (a line is far shorter).
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
    let last = BufReader::new(file)
        .split(b'\n')
        .filter_map(Result::ok)
        .filter(|l| !l.is_empty())
        .last();
    Ok(last.map_or_else(|| ORIGIN.into(), |l| hash(&l)))
}
