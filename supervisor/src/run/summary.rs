//! The `--summary` object: one JSON document describing the execution once it ended.

use super::outputs::SummaryTarget;
use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub execution: String,
    pub team: Option<String>,
    pub command: String,
    pub network: bool,
    /// The uid (and gid) the command ran as.
    pub uid: u32,
    pub exit_status: i32,
    /// The signal that ended the command, if any.
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub duration_ms: u64,
    /// Direct connection attempts the eBPF wall refused (and reported).
    pub bypass_attempts: u64,
    /// Reports lost because the event ring was full (attempts were still refused).
    pub bypass_reports_dropped: u64,
    /// Proxy counters (requests, denials, bytes, destinations), when the network is enabled.
    pub proxy: Option<serde_json::Value>,
}

impl Summary {
    pub fn write(&self, target: &SummaryTarget) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        target.write((text + "\n").as_bytes())
    }
}
