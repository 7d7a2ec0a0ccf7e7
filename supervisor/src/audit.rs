//! The audit log: JSON Lines, one object per decision or event, shared by the proxy and the
//! sandbox's bypass reports.
//!
//! Writes are serialised through one lock and flushed per record, so a supervisor that is
//! killed loses at most the record being written.

use serde_json::Value;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct AuditLog {
    sink: Option<Arc<Mutex<BufWriter<File>>>>,
}

impl AuditLog {
    /// An audit log that records nothing (no `--audit`).
    pub fn disabled() -> Self {
        AuditLog { sink: None }
    }

    /// Creates (truncates) `path`, readable by root only: records name destinations.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        // Append mode: the proxy writes records through its own handle on the same file, and
        // with O_APPEND each record lands whole at the end, whoever writes it.
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        file.set_len(0)?;
        Ok(AuditLog {
            sink: Some(Arc::new(Mutex::new(BufWriter::new(file)))),
        })
    }

    /// Another handle on the audit file, for the proxy's own writer.
    pub fn writer(&self) -> Option<File> {
        let sink = self.sink.as_ref()?;
        let writer = sink.lock().ok()?;
        writer.get_ref().try_clone().ok()
    }

    pub fn is_enabled(&self) -> bool {
        self.sink.is_some()
    }

    /// Appends one record. A full disk must not take the sandbox down: errors are logged.
    pub fn record(&self, record: &Value) {
        let Some(sink) = &self.sink else { return };
        let Ok(mut writer) = sink.lock() else { return };
        let written = serde_json::to_writer(&mut *writer, record)
            .map_err(std::io::Error::other)
            .and_then(|_| writer.write_all(b"\n"))
            .and_then(|_| writer.flush());
        if let Err(error) = written {
            tracing::warn!("cannot write the audit log: {error}");
        }
    }
}

/// RFC 3339 UTC time with milliseconds, for records.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
