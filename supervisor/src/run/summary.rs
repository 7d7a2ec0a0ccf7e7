//! The `--summary` object: one JSON document describing the execution once it ended.

use super::outputs::SummaryTarget;
use crate::sandbox::limits::LimitsReport;
use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub execution: String,
    pub team: Option<String>,
    pub command: String,
    pub network: bool,
    /// The uid (and gid) the command ran as.
    pub uid: u32,
    /// The Landlock ABI the command restricted itself with; `null` when it ran without
    /// Landlock (a kernel without it, under `filesystem.landlock: best_effort`).
    pub landlock_abi: Option<u32>,
    pub exit_status: i32,
    /// The signal that ended the command, if any.
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// Why `limits.on_violation: kill` ended the execution (`null`: it did not).
    pub violation: Option<String>,
    pub duration_ms: u64,
    /// Direct connection attempts the eBPF wall refused (and reported).
    pub bypass_attempts: u64,
    /// Reports lost because the event ring was full (attempts were still refused).
    pub bypass_reports_dropped: u64,
    /// Proxy counters (requests, denials, bytes, destinations, and `refused`: what was
    /// refused where and why, most first), when the network is enabled.
    pub proxy: Option<serde_json::Value>,
    /// The team's quotas as this execution used them: the store, what was admitted and
    /// refused, and what remained of each (absent when the policy has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quotas: Option<crate::quota::QuotaReport>,
    /// The stub resolver's counters (queries, answered with an address, refused), when
    /// transparent egress ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<crate::dns::DnsStats>,
    /// The memory limit killed a process of the execution (the kernel's OOM killer, inside
    /// the execution's cgroup); with exit status 137, the command itself.
    pub oom_killed: bool,
    /// The most memory the execution held at once, as its cgroup counted it (`null`: this
    /// host's kernel does not say).
    pub memory_peak_bytes: Option<u64>,
    /// CPU time of every process of the execution, user and system, in milliseconds.
    pub cpu_time_ms: Option<u64>,
    /// Scheduling periods (100 ms each) in which `limits.cpu` held the execution back
    /// (`null`: no CPU limit).
    pub cpu_throttled_periods: Option<u64>,
    /// The most tasks (processes and threads) the execution ran at once (`null`: this host's
    /// kernel does not say).
    pub tasks_peak: Option<u64>,
    /// The limits the execution ran under, and what enforced each.
    pub limits: Option<LimitsReport>,
}

impl Summary {
    pub fn write(&self, target: &SummaryTarget) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        target.write((text + "\n").as_bytes())
    }
}
