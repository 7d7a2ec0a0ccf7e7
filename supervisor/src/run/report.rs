//! What an execution leaves for its caller once it ended: why the circuit breaker ended it,
//! the out-of-memory message, the `--summary`, and the exit status.

use super::prepare::Prepared;
use super::supervise::{exit_status_of, Ending};
use super::walls::WallTotals;
use super::Summary;
use crate::proxy::ProxyStats;
use crate::sandbox::limits::{self, ResourceLimits};
use std::time::Instant;

/// Everything the report is made of.
pub(super) struct Outcome<'a> {
    pub(super) prepared: &'a Prepared,
    pub(super) execution: &'a str,
    pub(super) team: Option<String>,
    pub(super) started: Instant,
    pub(super) ending: &'a Ending,
    pub(super) totals: WallTotals,
    pub(super) limits: &'a ResourceLimits,
    pub(super) proxy_stats: Option<ProxyStats>,
    /// The stub resolver's counters, when transparent egress ran.
    pub(super) dns_stats: Option<crate::dns::DnsStats>,
    /// Launched by the node service: the summary is always made, and returned instead of
    /// written (its caller writes it).
    pub(super) service: Option<&'a super::service::ServiceLink>,
}

/// Says why the command died if it ran out of memory, writes the summary, and returns the
/// exit status of `tollgate run` (and, for the node service, the summary).
pub(super) fn report(outcome: Outcome<'_>) -> (i32, Option<Summary>) {
    let Outcome {
        prepared,
        execution,
        team,
        started,
        ending,
        totals,
        limits,
        mut proxy_stats,
        dns_stats,
        service,
    } = outcome;
    let quotas = proxy_stats.as_mut().and_then(|stats| stats.quotas.take());
    let (exit_status, signal) = exit_status_of(ending);
    if ending.ended_by_service {
        super::service::say_ended(service);
    }
    if let Some(violation) = &ending.violation {
        eprintln!("tollgate: ended: {violation}");
    }
    let ended_by = signal.filter(|_| {
        !ending.timed_out
            && ending.interrupted_by.is_none()
            && ending.violation.is_none()
            && !ending.ended_by_service
    });
    if let Some(message) = limits::oom_message(&totals.usage, limits, ended_by) {
        eprintln!("tollgate: {message}");
    }
    if prepared.summary.is_none() && service.is_none() {
        return (exit_status, None);
    }
    let summary = Summary {
        execution: execution.to_owned(),
        team,
        command: prepared
            .options
            .command
            .first()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default(),
        network: prepared.network,
        uid: prepared.uid,
        landlock_abi: prepared.landlock_abi,
        exit_status,
        signal,
        timed_out: ending.timed_out,
        violation: ending.violation.clone(),
        duration_ms: started.elapsed().as_millis() as u64,
        bypass_attempts: totals.denied,
        bypass_reports_dropped: totals.dropped,
        proxy: proxy_stats.and_then(|stats| serde_json::to_value(stats).ok()),
        quotas,
        dns: dns_stats,
        oom_killed: totals.usage.oom_kills > 0,
        memory_peak_bytes: totals.usage.memory_peak_bytes,
        cpu_time_ms: totals.usage.cpu_time_ms,
        cpu_throttled_periods: totals.usage.cpu_throttled_periods,
        tasks_peak: totals.usage.tasks_peak,
        limits: totals.limits,
    };
    let Some(target) = &prepared.summary else {
        return (exit_status, Some(summary));
    };
    if let Err(error) = summary.write(target) {
        eprintln!(
            "tollgate: cannot write the summary {}: {error}",
            target.path().display()
        );
    }
    (exit_status, None)
}
