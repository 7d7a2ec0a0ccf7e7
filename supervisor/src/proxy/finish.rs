//! The one place a request's or tunnel's outcome is completed: every record of the proxy,
//! refusal or relayed response or tunnel, ends here.
//!
//! [`finish`] stamps the duration, writes the one operator log line (made from the record,
//! so the log and the audit can never tell different stories; identical refusals summed),
//! counts the stats and queues the audit record, then counts a refusal against
//! `limits.max_denied` ([`super::denials`]). [`refuse`] fills a record from a [`ProxyError`] first and returns the
//! response the sandbox gets.

use super::body::ProxyBody;
use super::errors::ProxyError;
use super::Shared;
use crate::audit::aggregate::Key;
use crate::audit::{Outcome, QuotaRecord, Record, Traffic, Verdict};
use http::Response;
use std::time::{Duration, Instant};
use tracing::level_filters::LevelFilter;
use tracing::Level;

/// Completes `traffic`, which started at `started`.
pub(crate) fn finish(shared: &Shared, mut traffic: Traffic, started: Instant) {
    traffic.duration_ms = millis(started.elapsed());
    // Identical refusals are logged once a second with their count (see `repeats`). A line
    // no subscriber would show is not even made: this runs for every request.
    let level = level_of(traffic.outcome);
    if level <= LevelFilter::current() {
        let line = log_line(&traffic, shared.policy.retry.attempts);
        shared.log.log(Key::of_traffic(&traffic), level, line);
    }
    // Every refusal the sandbox caused is `deny`; an upstream failure stays `allow`. A
    // request cancelled before its decision is `deny` too, but nothing was refused.
    let refused = (traffic.decision == Verdict::Deny && traffic.outcome != Outcome::Cancelled)
        .then(|| shared.stats.refused(&traffic));
    if traffic.outcome != Outcome::Retrying && traffic.address.is_some() {
        shared.stats.bytes(traffic.bytes_up, traffic.bytes_down);
    }
    if let Some(audit) = &shared.audit {
        audit.write(Record::traffic(
            &shared.execution,
            &shared.policy.team,
            traffic,
        ));
    }
    // After the record is queued: an alarm that ends the execution leaves it in the log.
    if let Some(refused) = refused {
        shared.denials.counted(refused);
    }
}

/// Answers with `error`: the record says why (refused when the sandbox or a team quota
/// caused it, failed when the upstream did), then [`finish`].
pub(crate) fn refuse(
    shared: &Shared,
    mut traffic: Traffic,
    error: &ProxyError,
    started: Instant,
) -> Response<ProxyBody> {
    let refusal = error.code.is_refusal();
    if traffic.decision == Verdict::Deny || refusal {
        traffic.decision = Verdict::Deny;
        traffic.reason = error.reason.clone();
        traffic.rule = error.rule.clone();
    }
    // A team quota refused: the policy allowed it (no `max_denied` count), the quota's rule
    // path is the reason.
    if let Some(quota) = &error.quota {
        traffic.reason = error.reason.clone();
        traffic.quota = Some(QuotaRecord::of(quota));
    }
    traffic.error = Some(error.code.as_str());
    traffic.message = Some(error.message.clone());
    traffic.status = Some(error.code.status().as_u16());
    traffic.outcome = if refusal || error.code.is_quota() {
        Outcome::Refused
    } else {
        Outcome::Failed
    };
    finish(shared, traffic, started);
    error.to_response(&shared.execution)
}

/// Milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `GET https://api.test:443/v1 -> 200 complete (12ms, 0 bytes up, 512 bytes down)`, and on a
/// refusal the sentence the sandbox got, on a retried attempt which attempt comes next
/// (`attempts` in all).
fn log_line(traffic: &Traffic, attempts: u32) -> String {
    let status = match (traffic.status, traffic.error) {
        (Some(status), Some(error)) => format!("{status} {error}"),
        (Some(status), None) => status.to_string(),
        (None, Some(error)) => error.to_owned(),
        (None, None) => "-".to_owned(),
    };
    let outcome = serde_json::to_value(traffic.outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut line = format!(
        "{} {} -> {status} {outcome} ({}ms, {} bytes up, {} bytes down)",
        traffic.method,
        traffic.target(),
        traffic.duration_ms,
        traffic.bytes_up,
        traffic.bytes_down
    );
    if let Some(wait) = traffic.retry_wait_ms {
        let next = traffic.attempt.unwrap_or(0) + 1;
        line.push_str(&format!(
            ", retrying (attempt {next}/{attempts}) in {wait}ms"
        ));
    }
    if let Some(message) = &traffic.message {
        line.push_str(": ");
        line.push_str(message);
    }
    line
}

/// WARN for what an operator should look at (a body or tunnel cut short), INFO for the rest.
fn level_of(outcome: Outcome) -> Level {
    match outcome {
        Outcome::ResponseTooLarge
        | Outcome::Timeout
        | Outcome::UpstreamError
        | Outcome::TunnelBytesExceeded
        | Outcome::TunnelDurationExceeded
        | Outcome::QuotaExhausted => Level::WARN,
        _ => Level::INFO,
    }
}
