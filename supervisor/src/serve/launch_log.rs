//! The service's own audit log: one `launch` record (docs/audit.md) for every launch refused,
//! every execution started and every execution finished, with the caller's identity.
//!
//! It is the node's record of who ran what, kept apart from the executions' own audit logs
//! (which belong to their callers). Written through the same queued writer as those.

use super::wire::CallerIdentity;
use crate::audit::{AuditLog, Format, LaunchEvent, Record};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::time::Duration;

pub struct LaunchLog {
    audit: AuditLog,
}

impl LaunchLog {
    /// Appends to `path` (the node configuration's `audit`), creating it `0640 root` and its
    /// directory `0750` when missing; records nothing without a path.
    pub fn open(path: Option<&Path>) -> Result<LaunchLog, String> {
        let Some(path) = path else {
            return Ok(LaunchLog {
                audit: AuditLog::disabled(),
            });
        };
        let shown = path.display();
        if let Some(dir) = path.parent().filter(|dir| !dir.exists()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(|e| {
                    format!("cannot create the directory of the launch log {shown}: {e}")
                })?;
        }
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| format!("cannot open the launch log {shown}: {e}"))?;
        let is_file = file.metadata().map(|m| m.is_file()).unwrap_or(false);
        if !is_file {
            return Err(format!("the launch log {shown} is not a regular file"));
        }
        Ok(LaunchLog {
            audit: AuditLog::from_file(file, Format::Json),
        })
    }

    pub fn refused(&self, team: Option<&str>, caller: &CallerIdentity, message: &str) {
        self.audit.write(Record::launch(
            None,
            team,
            caller,
            LaunchEvent::Refused {
                message: message.to_owned(),
            },
        ));
    }

    pub fn started(&self, execution: &str, team: &str, caller: &CallerIdentity) {
        self.audit.write(Record::launch(
            Some(execution),
            Some(team),
            caller,
            LaunchEvent::Started,
        ));
    }

    /// `execution` is `None` when the worker ended before it reported its id.
    pub fn finished(
        &self,
        execution: Option<&str>,
        team: &str,
        caller: &CallerIdentity,
        status: i32,
        duration: Duration,
    ) {
        self.audit.write(Record::launch(
            execution,
            Some(team),
            caller,
            LaunchEvent::Finished {
                status,
                duration_ms: duration.as_millis().try_into().unwrap_or(u64::MAX),
            },
        ));
    }

    /// Writes everything queued (at shutdown).
    pub fn close(&self) {
        self.audit.close();
    }
}
