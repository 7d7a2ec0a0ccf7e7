//! The audit log: one JSON Lines record per decision and per upstream attempt.
//!
//! A record carries what an operator needs to reconstruct an execution's traffic (who, where,
//! which rule, which address was dialed, status, timing, bytes) and nothing that could be a
//! secret: the path without its query string, no header names or values at all (provider
//! names, never their secrets).

use serde::Serialize;
use std::io::Write;
use std::sync::{mpsc, Mutex};
use std::time::SystemTime;
use tollgate_policy::url::NormalizedUrl;

/// One line of the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// RFC 3339 UTC, milliseconds.
    pub time: String,
    pub execution: String,
    pub team: String,
    /// `http` for a forwarded request, `connect` for a tunnel.
    pub kind: &'static str,
    pub method: String,
    pub scheme: String,
    pub host: String,
    pub port: u16,
    /// The normalised path, never the query string.
    pub path: String,
    /// The address dialed (`ip:port`), when one was.
    pub address: Option<String>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The policy reason (`allowed`, `host_not_allowed`, …) or the limit that refused.
    pub reason: String,
    pub rule: Option<String>,
    /// The tollgate error code, when tollgate answered instead of the upstream.
    pub error: Option<&'static str>,
    /// The status the upstream (or tollgate) answered with.
    pub status: Option<u16>,
    /// 1-based upstream attempt; absent for requests refused before any attempt.
    pub attempt: Option<u32>,
    /// On a `retrying` record: how long tollgate waits before the next attempt (backoff, or
    /// the upstream's `Retry-After` clamped to the policy's bounds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_wait_ms: Option<u64>,
    /// What happened after the decision: `retrying`, `complete`, `truncated`, `timeout`, …
    pub outcome: &'static str,
    pub duration_ms: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Auth providers whose credentials went out with this request (names only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<String>,
    /// Something an operator should look at: `placeholder_outside_scope` (a placeholder
    /// sent where its provider may not go), `secret_echoed` (an upstream echoed a secret,
    /// redacted before the sandbox saw it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finding: Option<&'static str>,
    /// For tunnels: `intercept` or `passthrough`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<&'static str>,
}

impl AuditRecord {
    /// A record about `url` with every outcome field empty.
    pub fn new(
        execution: &str,
        team: &str,
        kind: &'static str,
        method: &str,
        url: Option<&NormalizedUrl>,
    ) -> AuditRecord {
        AuditRecord {
            time: String::new(),
            execution: execution.to_owned(),
            team: team.to_owned(),
            kind,
            method: method.to_owned(),
            scheme: url.map(|u| u.scheme.clone()).unwrap_or_default(),
            host: url.map(|u| u.host_str()).unwrap_or_default(),
            port: url.map(|u| u.port).unwrap_or(0),
            path: url.map(|u| u.path.clone()).unwrap_or_default(),
            address: None,
            decision: "deny",
            reason: String::new(),
            rule: None,
            error: None,
            status: None,
            attempt: None,
            retry_wait_ms: None,
            outcome: "refused",
            duration_ms: 0,
            bytes_up: 0,
            bytes_down: 0,
            credentials: Vec::new(),
            finding: None,
            tls: None,
        }
    }
}

/// Where records go: a writer thread that receives encoded lines and writes whatever has
/// queued up in one go, then flushes. Under load records are batched into few writes; when
/// idle each record reaches the writer at once. [`AuditLog::close`] (called on shutdown)
/// writes everything still queued.
pub struct AuditLog {
    lines: Mutex<Option<mpsc::Sender<Message>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

enum Message {
    Line(Vec<u8>),
    /// Acknowledged once everything queued before it is written.
    Sync(mpsc::Sender<()>),
}

impl AuditLog {
    pub fn new(mut out: Box<dyn Write + Send>) -> AuditLog {
        let (lines, queue) = mpsc::channel::<Message>();
        let writer = std::thread::Builder::new()
            .name("tollgate-audit".into())
            .spawn(move || {
                let mut batch = Vec::with_capacity(64 * 1024);
                let mut acks = Vec::new();
                while let Ok(first) = queue.recv() {
                    let mut next = Some(first);
                    while let Some(message) = next.take() {
                        match message {
                            Message::Line(line) => batch.extend_from_slice(&line),
                            Message::Sync(ack) => acks.push(ack),
                        }
                        if batch.len() < 1024 * 1024 {
                            next = queue.try_recv().ok();
                        }
                    }
                    if let Err(error) = out.write_all(&batch).and_then(|()| out.flush()) {
                        tracing::error!("audit log write failed: {error}");
                    }
                    batch.clear();
                    for ack in acks.drain(..) {
                        let _ = ack.send(());
                    }
                }
            });
        let writer = match writer {
            Ok(handle) => Some(handle),
            Err(error) => {
                tracing::error!("the audit writer thread could not start: {error}");
                None
            }
        };
        AuditLog {
            lines: Mutex::new(writer.as_ref().map(|_| lines)),
            writer: Mutex::new(writer),
        }
    }

    /// Queues one record, stamping its time.
    pub fn write(&self, mut record: AuditRecord) {
        record.time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let mut line = match serde_json::to_vec(&record) {
            Ok(line) => line,
            Err(error) => {
                tracing::error!("audit record could not be encoded: {error}");
                return;
            }
        };
        line.push(b'\n');
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        match lines.as_ref() {
            Some(lines) if lines.send(Message::Line(line)).is_ok() => {}
            _ => tracing::error!("audit record dropped: the audit log is closed"),
        }
    }

    /// Blocks until every record queued so far has been written and flushed.
    pub fn sync(&self) {
        let (ack, done) = mpsc::channel();
        let sent = {
            let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
            lines
                .as_ref()
                .is_some_and(|lines| lines.send(Message::Sync(ack)).is_ok())
        };
        if sent {
            let _ = done.recv();
        }
    }

    /// Writes every queued record and stops the writer; later records are reported and
    /// dropped.
    pub fn close(&self) {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            if writer.join().is_err() {
                tracing::error!("the audit writer thread panicked");
            }
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}
