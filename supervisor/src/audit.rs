//! The audit log: JSON Lines, one object per decision or event, shared by the proxy and the
//! sandbox's bypass reports.
//!
//! Writes are serialised through one lock and flushed per record, so a supervisor that is
//! killed loses at most the record being written.

use serde_json::Value;
use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct AuditLog {
    sink: Option<Arc<Mutex<File>>>,
}

impl AuditLog {
    /// An audit log that records nothing (no `--audit`).
    pub fn disabled() -> Self {
        AuditLog { sink: None }
    }

    /// An audit log writing to `file`, which must be open for appending (see
    /// `run::outputs`): the proxy writes records through its own handle on the same file, and
    /// with O_APPEND each record lands whole at the end, whoever writes it, and runs sharing
    /// one log keep every record.
    pub fn from_file(file: File) -> Self {
        AuditLog {
            sink: Some(Arc::new(Mutex::new(file))),
        }
    }

    /// Another handle on the audit file, for the proxy's own writer.
    pub fn writer(&self) -> Option<File> {
        let sink = self.sink.as_ref()?;
        let writer = sink.lock().ok()?;
        writer.try_clone().ok()
    }

    pub fn is_enabled(&self) -> bool {
        self.sink.is_some()
    }

    /// Appends one record. A full disk must not take the sandbox down: errors are logged.
    pub fn record(&self, record: &Value) {
        let Some(sink) = &self.sink else { return };
        let Ok(mut writer) = sink.lock() else { return };
        // One write per record: encoded whole first, so a record never lands in pieces.
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(error) => {
                tracing::warn!("cannot encode an audit record: {error}");
                return;
            }
        };
        line.push(b'\n');
        let written = writer.write_all(&line);
        if let Err(error) = written {
            tracing::warn!("cannot write the audit log: {error}");
        }
    }
}

/// RFC 3339 UTC time with milliseconds, for records.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
