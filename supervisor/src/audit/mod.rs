//! The audit log: JSON Lines, one record per request, tunnel and refused socket of an
//! execution, written by one writer whoever reports (the proxy, the eBPF wall's pump).
//!
//! Every record has one shape ([`Record`]: `type`, `time`, `execution`, `team`, then the
//! fields of its type); docs/audit.md documents each, `docs/audit.schema.json` checks them.
//! Records are queued to a writer thread ([`writer`]) so no request waits on the disk;
//! [`AuditLog::close`] (called when the execution ends) writes everything still queued.
//! The writer encodes them in the log's [`Format`]: these records as they are, or the same
//! events as OCSF objects ([`ocsf`]).

pub(crate) mod aggregate;
pub mod ocsf;
mod record;
#[cfg(test)]
mod tests;
mod wake;
mod writer;

pub use wake::{defer_on_this_thread, wake_deferred};

pub use record::{
    now_rfc3339, Bypass, ClosedBy, Finding, Kind, Launch, LaunchEvent, Outcome, Protocol,
    QuotaRecord, Record, SandboxBuilt, Traffic, Verdict, WebSocketRecord, TOLLGATE_REASONS,
};

use std::fs::File;
use std::io::Write;
use std::sync::{mpsc, Arc, Mutex};

/// How the audit log is written (`--audit-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// tollgate's own records, one JSON object a line (docs/audit.md).
    #[default]
    Json,
    /// The same events as OCSF 1.3.0 objects, one a line, for SIEM pipelines.
    Ocsf,
}

impl Format {
    /// Every format by its `--audit-format` name.
    pub const ALL: [(&'static str, Format); 2] = [("json", Format::Json), ("ocsf", Format::Ocsf)];

    /// The format called `name` (`json`, `ocsf`).
    pub fn from_name(name: &str) -> Option<Format> {
        Format::ALL
            .iter()
            .find(|(known, _)| *known == name)
            .map(|&(_, format)| format)
    }
}

/// A second destination for every record besides the file: the node service's worker
/// channel (`run::service`). Called on the writer thread, with the records as written
/// (aggregated ones with their `count`), whatever the file's format.
pub trait Tee: Send {
    /// Takes one record, to go out at the next [`Tee::flush`].
    fn record(&mut self, record: &Record);
    /// Bytes taken and not yet flushed (the writer flushes at most about a megabyte at once).
    fn buffered(&self) -> usize;
    /// Sends what was taken; called where the file's batch is written.
    fn flush(&mut self);
}

/// A handle on the execution's audit log; clones share the one writer.
#[derive(Clone)]
pub struct AuditLog {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    queue: Mutex<Option<mpsc::Sender<writer::Message>>>,
    /// When the writer wakes ([`wake`]).
    wake: Arc<wake::Wake>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AuditLog {
    /// An audit log that records nothing (no `--audit`).
    pub fn disabled() -> Self {
        AuditLog { inner: None }
    }

    /// An audit log appending to `file` in `format`; the file must be open for appending
    /// (see `run::outputs`).
    pub fn from_file(file: File, format: Format) -> Self {
        AuditLog::encoded(Box::new(file), format)
    }

    /// An audit log writing JSON records to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        AuditLog::encoded(out, Format::Json)
    }

    /// An audit log writing records to `out` in `format`.
    pub fn encoded(out: Box<dyn Write + Send>, format: Format) -> Self {
        AuditLog::start(writer::Sinks::new(Some(out), format, None))
    }

    /// An audit log that hands every record to `tee` (the node service's worker channel),
    /// and appends it to `file` in `format` when there is one.
    pub fn teed(file: Option<File>, format: Format, tee: Box<dyn Tee>) -> Self {
        let out = file.map(|file| Box::new(file) as Box<dyn Write + Send>);
        AuditLog::start(writer::Sinks::new(out, format, Some(tee)))
    }

    fn start(sinks: writer::Sinks) -> Self {
        let (queue, records) = mpsc::channel();
        let wake = Arc::new(wake::Wake::default());
        let writer_wake = wake.clone();
        let thread = std::thread::Builder::new()
            .name("tollgate-audit".into())
            .spawn(move || writer::run(sinks, records, writer_wake));
        match thread {
            Ok(thread) => AuditLog {
                inner: Some(Arc::new(Inner {
                    queue: Mutex::new(Some(queue)),
                    wake: {
                        let _ = wake.writer.set(thread.thread().clone());
                        wake
                    },
                    thread: Mutex::new(Some(thread)),
                })),
            },
            Err(error) => {
                tracing::error!("the audit writer thread could not start: {error}");
                AuditLog::disabled()
            }
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues one record.
    pub fn write(&self, record: Record) {
        let Some(inner) = &self.inner else { return };
        let queue = inner.queue.lock().unwrap_or_else(|p| p.into_inner());
        let sent = queue.as_ref().is_some_and(|queue| {
            queue
                .send(writer::Message::Record(Box::new(record)))
                .is_ok()
        });
        drop(queue);
        if sent {
            inner.wake.queued();
        } else {
            tracing::error!("audit record dropped: the audit log is closed");
        }
    }

    /// Blocks until every record queued so far has been written and flushed.
    pub fn sync(&self) {
        let Some(inner) = &self.inner else { return };
        let (ack, done) = mpsc::channel();
        let sent = {
            let queue = inner.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue
                .as_ref()
                .is_some_and(|queue| queue.send(writer::Message::Sync(ack)).is_ok())
        };
        if sent {
            inner.wake.urgent();
            let _ = done.recv();
        }
    }

    /// Writes every queued record and stops the writer; later records are reported and
    /// dropped.
    pub fn close(&self) {
        let Some(inner) = &self.inner else { return };
        inner.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
        inner.wake.urgent();
        let thread = inner
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("the audit writer thread panicked");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.wake.urgent();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}
