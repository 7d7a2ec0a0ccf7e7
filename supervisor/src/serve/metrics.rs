//! The node service's Prometheus metrics: what its executions did, counted by team.
//!
//! The service counts what it sees: launches (refused or started), each execution's end
//! (its exit status and summary), every audit record its workers send back, and team
//! policy reloads. A plain local `tollgate run` is not counted: there is no service to
//! count it.
//!
//! The records come from a worker that relays an untrusted command's traffic, so no label
//! value is ever taken from a record as it is: a decision, reason, type or hook outside the
//! closed sets docs/audit.md lists is counted as `other`, and a host, path or message never
//! becomes a label. Those labels are `&'static str` taken from this module's own lists, so
//! a string read from a record cannot become one without a change the compiler would show.
//! Team labels come from the node's own team directory, and at most [`MAX_TEAMS`] of them
//! are kept apart: past that (or for a name that is not a team name) they are counted as
//! [`OTHER_TEAM`], which no team can be called.

use crate::audit::TOLLGATE_REASONS;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use serde::Deserialize;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Distinct team labels kept apart; later teams are counted together as [`OTHER_TEAM`].
pub const MAX_TEAMS: usize = 1000;

/// The team label of teams past [`MAX_TEAMS`] and of names that are not team names. A team
/// name is `[a-z0-9-]`, so no team can be called this.
pub const OTHER_TEAM: &str = "_other";

/// The label value of anything outside a closed set.
pub const OTHER: &str = "other";

/// The `Content-Type` of [`Metrics::render`]: the Prometheus text format 0.0.4.
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The `Content-Type` of [`Metrics::render_openmetrics`].
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why the service refused a launch (the caller got exit status 125 and a sentence).
const LAUNCH_REFUSALS: [&str; 5] = [
    "bad_request",
    "not_allowed",
    "no_policy",
    "busy",
    "shutting_down",
];

/// The `Tollgate-Error` codes, which are also the reason of a refusal with no more
/// specific word (docs/audit.md, "error").
const ERROR_CODES: [&str; 19] = [
    "policy_denied",
    "ssrf_denied",
    "invalid_url",
    "invalid_request",
    "request_limit_exceeded",
    "denial_limit",
    "request_too_large",
    "response_too_large",
    "connect_error",
    "timeout",
    "client_timeout",
    "too_many_connections",
    "auth_provider_error",
    "credential_scope_denied",
    "credential_placeholder_mismatch",
    "upstream_tls_error",
    "team_rate_limited",
    "team_budget_exhausted",
    "quota_unavailable",
];

/// The `Tollgate-Error` codes of a quota's refusal (a record with a `quota` object).
const QUOTA_ERRORS: [&str; 3] = [
    "team_rate_limited",
    "team_budget_exhausted",
    "quota_unavailable",
];

/// The quotas a policy can set (a `quota` object's `quota`).
const QUOTA_KINDS: [&str; 3] = ["requests_per_minute", "requests_per_day", "bytes_per_day"];

/// Distinct destination scopes (team and host pattern) kept apart across every team;
/// later ones are counted as [`OTHER`]. A policy has a handful; this bounds what a node's
/// team directory can make of the exposition.
pub const MAX_QUOTA_SCOPES: usize = 1000;

/// The longest host pattern a scope label can be (a DNS name's most).
const MAX_SCOPE_LEN: usize = 253;

/// The operations the eBPF wall reports (a `bypass_attempt` record's `hook`).
const HOOKS: [&str; 3] = ["connect", "sendmsg", "sock_create"];

/// One record stands for at most this many events when it is counted. The worker sums
/// identical refusals into one record with a `count`; the bound keeps a malformed record
/// from costing the service more than a bounded loop (the latency histogram observes each
/// event).
const MAX_EVENTS_PER_RECORD: u64 = 1_000_000;

/// Execution durations, in seconds: from a quick command to a long job.
const EXECUTION_BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
];

/// Proxy request latencies, in seconds (records have millisecond resolution).
const REQUEST_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TeamLabels {
    team: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishLabels {
    team: String,
    exit_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    team: String,
    r#type: &'static str,
    decision: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    team: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    team: String,
    hook: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaLabels {
    team: String,
    quota: &'static str,
    /// `team`, or a destination's host pattern from the team's policy.
    scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaRefusedLabels {
    team: String,
    quota: &'static str,
    scope: String,
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    team: String,
    result: &'static str,
}

type Histograms = Family<TeamLabels, Histogram, fn() -> Histogram>;

/// Every metric of the service, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    teams: Mutex<HashSet<String>>,
    launches_refused: Family<RefusalLabels, Counter>,
    executions_started: Family<TeamLabels, Counter>,
    executions_finished: Family<FinishLabels, Counter>,
    executions_active: Family<TeamLabels, Gauge>,
    execution_duration: Histograms,
    oom_killed: Family<TeamLabels, Counter>,
    bypass_reports_dropped: Family<TeamLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    request_duration: Histograms,
    upstream_bytes: Family<DirectionLabels, Counter>,
    retries: Family<TeamLabels, Counter>,
    bypass_attempts: Family<HookLabels, Counter>,
    policy_reloads: Family<ReloadLabels, Counter>,
    policy_failing: Family<TeamLabels, Gauge>,
    /// The destination scopes that have a label (see [`MAX_QUOTA_SCOPES`]).
    quota_scopes: Mutex<HashSet<(String, String)>>,
    quota_admitted: Family<QuotaLabels, Counter>,
    quota_refused: Family<QuotaRefusedLabels, Counter>,
    quota_round_trips: Family<TeamLabels, Counter>,
    quota_errors: Family<TeamLabels, Counter>,
    quota_latency: Family<TeamLabels, Counter<f64, AtomicU64>>,
    quota_local_fallback: Family<TeamLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tollgate");
        let launches_refused = Family::default();
        registry.register(
            "launches_refused",
            "Launches the service refused, by reason",
            launches_refused.clone(),
        );
        let executions_started = Family::default();
        registry.register(
            "executions_started",
            "Executions started through the service",
            executions_started.clone(),
        );
        let executions_finished = Family::default();
        registry.register(
            "executions_finished",
            "Executions that ended, by exit class (ok 0, failed 1-123, timeout 124, \
             tollgate_error 125, not_executable 126, not_found 127, signal 128+)",
            executions_finished.clone(),
        );
        let executions_active = Family::default();
        registry.register(
            "executions_active",
            "Executions running now",
            executions_active.clone(),
        );
        let execution_duration: Histograms =
            Family::new_with_constructor(|| Histogram::new(EXECUTION_BUCKETS));
        registry.register_with_unit(
            "execution_duration",
            "How long executions ran, from launch to exit",
            Unit::Seconds,
            execution_duration.clone(),
        );
        let oom_killed = Family::default();
        registry.register(
            "executions_oom_killed",
            "Executions in which the memory limit killed a process",
            oom_killed.clone(),
        );
        let bypass_reports_dropped = Family::default();
        registry.register(
            "bypass_reports_dropped",
            "Bypass attempts refused but not reported (the event ring was full)",
            bypass_reports_dropped.clone(),
        );
        let requests = Family::default();
        registry.register(
            "requests",
            "Proxy requests (type http) and CONNECT tunnels (type connect), by decision and \
             reason; a request inside an intercepted tunnel counts as http besides its tunnel",
            requests.clone(),
        );
        let request_duration: Histograms =
            Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS));
        registry.register_with_unit(
            "proxy_request_duration",
            "Proxy request latency (http records), from the request's arrival to its last byte",
            Unit::Seconds,
            request_duration.clone(),
        );
        let upstream_bytes = Family::default();
        registry.register_with_unit(
            "upstream",
            "Body and passthrough tunnel bytes exchanged with upstreams (direction up: sent \
             upstream; down: reached the sandbox)",
            Unit::Bytes,
            upstream_bytes.clone(),
        );
        let retries = Family::default();
        registry.register(
            "upstream_retries",
            "Upstream attempts that were retried",
            retries.clone(),
        );
        let bypass_attempts = Family::default();
        registry.register(
            "bypass_attempts",
            "Sockets the eBPF wall refused, by the refused operation (hook)",
            bypass_attempts.clone(),
        );
        let policy_reloads = Family::default();
        registry.register(
            "policy_reloads",
            "Team policy loads and reloads, by result (ok or failed)",
            policy_reloads.clone(),
        );
        let policy_failing = Family::default();
        registry.register(
            "policy_reload_failing",
            "1 while a team's policy file fails validation (its last good version stays in \
             force), else 0",
            policy_failing.clone(),
        );
        let quota_admitted = Family::default();
        registry.register(
            "quota_admitted",
            "Upstream attempts a team quota admitted, by quota and scope (from the \
             executions' summaries, so counted when each execution ends)",
            quota_admitted.clone(),
        );
        let quota_refused = Family::default();
        registry.register(
            "quota_refused",
            "Upstream attempts a team quota refused (or bodies a byte budget cut), by quota, \
             scope and Tollgate-Error",
            quota_refused.clone(),
        );
        let quota_round_trips = Family::default();
        registry.register(
            "quota_store_round_trips",
            "Round trips to the quota store's Redis, answered or not",
            quota_round_trips.clone(),
        );
        let quota_errors = Family::default();
        registry.register(
            "quota_store_errors",
            "Round trips to the quota store's Redis that failed (connection, timeout, protocol)",
            quota_errors.clone(),
        );
        let quota_latency = Family::default();
        registry.register_with_unit(
            "quota_store_latency",
            "Time the answered round trips to the quota store's Redis took, summed",
            Unit::Seconds,
            quota_latency.clone(),
        );
        let quota_local_fallback = Family::default();
        registry.register(
            "quota_local_fallback",
            "Quota checks this node answered alone because Redis did not (store_failure: local)",
            quota_local_fallback.clone(),
        );
        Metrics {
            registry,
            teams: Mutex::new(HashSet::new()),
            launches_refused,
            executions_started,
            executions_finished,
            executions_active,
            execution_duration,
            oom_killed,
            bypass_reports_dropped,
            requests,
            request_duration,
            upstream_bytes,
            retries,
            bypass_attempts,
            policy_reloads,
            policy_failing,
            quota_scopes: Mutex::new(HashSet::new()),
            quota_admitted,
            quota_refused,
            quota_round_trips,
            quota_errors,
            quota_latency,
            quota_local_fallback,
        }
    }

    /// The service refused a launch; `reason` is `bad_request`, `not_allowed`, `no_policy`,
    /// `busy` or `shutting_down` (anything else counts as `other`).
    pub fn launch_refused(&self, reason: &str) {
        let reason = closed(&LAUNCH_REFUSALS, reason);
        self.launches_refused
            .get_or_create(&RefusalLabels { reason })
            .inc();
    }

    /// An execution of `team` started (its worker reported its id).
    pub fn execution_started(&self, team: &str) {
        let team = self.team(team);
        self.executions_started.get_or_create(&team).inc();
        self.executions_active.get_or_create(&team).inc();
    }

    /// An execution of `team` ended with `status` after `duration`; `summary` is its
    /// `--summary` document when the worker sent one.
    pub fn execution_finished(
        &self,
        team: &str,
        status: i32,
        duration: Duration,
        summary: Option<&serde_json::Value>,
    ) {
        let team = self.team(team);
        self.executions_finished
            .get_or_create(&FinishLabels {
                team: team.team.clone(),
                exit_class: exit_class(status),
            })
            .inc();
        // Never below zero, whatever order a confused caller reports in.
        let _ = self
            .executions_active
            .get_or_create(&team)
            .inner()
            .try_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n > 0).then(|| n - 1)
            });
        self.execution_duration
            .get_or_create(&team)
            .observe(duration.as_secs_f64());
        let Some(summary) = summary else { return };
        if summary.get("oom_killed") == Some(&serde_json::Value::Bool(true)) {
            self.oom_killed.get_or_create(&team).inc();
        }
        if let Some(dropped) = summary
            .get("bypass_reports_dropped")
            .and_then(serde_json::Value::as_u64)
        {
            self.bypass_reports_dropped
                .get_or_create(&team)
                .inc_by(dropped);
        }
        if let Some(quotas) = summary.get("quotas") {
            self.quota_report(team, quotas);
        }
    }

    /// The summary's `quotas` object: what each quota admitted, and the store's counters.
    fn quota_report(&self, team: TeamLabels, report: &serde_json::Value) {
        let Ok(report) = QuotaReportFields::deserialize(report) else {
            tracing::debug!("a summary's quotas the metrics cannot read were not counted");
            return;
        };
        for line in &report.quotas {
            if line.admitted == 0 {
                continue;
            }
            let labels = QuotaLabels {
                team: team.team.clone(),
                quota: closed(&QUOTA_KINDS, line.quota),
                scope: self.scope(&team.team, Some(line.scope)),
            };
            self.quota_admitted
                .get_or_create(&labels)
                .inc_by(line.admitted);
        }
        let counters = [
            (&self.quota_round_trips, report.round_trips),
            (&self.quota_errors, report.errors),
            (&self.quota_local_fallback, report.local_fallback_checks),
        ];
        for (family, n) in counters {
            family.get_or_create(&team).inc_by(n);
        }
        self.quota_latency
            .get_or_create(&team)
            .inc_by(Duration::from_micros(report.latency_us_total).as_secs_f64());
    }

    /// A record's `quota` object with a quota's `Tollgate-Error`: one refused attempt (or
    /// cut body) per event.
    fn quota_refusal(&self, team: &TeamLabels, fields: &RecordFields, events: u64) {
        let (Some(quota), Some(error)) = (&fields.quota, fields.error) else {
            return;
        };
        let error = closed(&QUOTA_ERRORS, error);
        if error == OTHER {
            return;
        }
        let labels = QuotaRefusedLabels {
            team: team.team.clone(),
            // `null` when the store could not be asked: no one quota refused.
            quota: quota.quota.map_or("", |kind| closed(&QUOTA_KINDS, kind)),
            scope: match quota.scope {
                None => String::new(),
                scope => self.scope(&team.team, scope),
            },
            error,
        };
        self.quota_refused.get_or_create(&labels).inc_by(events);
    }

    /// A quota's scope as a label: `team`, or a destination's host pattern (the team
    /// policy's, not the sandbox's, but still checked to look like one and bounded in
    /// number), else [`OTHER`].
    fn scope(&self, team: &str, scope: Option<&str>) -> String {
        let Some(scope) = scope else {
            return OTHER.to_owned();
        };
        if scope == "team" {
            return scope.to_owned();
        }
        let host = scope.strip_prefix("*.").unwrap_or(scope);
        let pattern = !host.is_empty()
            && scope.len() <= MAX_SCOPE_LEN
            && host
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !pattern {
            return OTHER.to_owned();
        }
        let key = (team.to_owned(), scope.to_owned());
        let mut scopes = self.quota_scopes.lock().unwrap_or_else(|p| p.into_inner());
        if scopes.contains(&key) || scopes.len() < MAX_QUOTA_SCOPES {
            scopes.insert(key);
            scope.to_owned()
        } else {
            OTHER.to_owned()
        }
    }

    /// One audit record of an execution of `team`, in tollgate's JSON form (docs/audit.md).
    ///
    /// `http` and `connect` records count requests and tunnels (the final record of each:
    /// a `retrying` record counts a retry instead), the requests' latency, and upstream
    /// bytes the way the summary does (records that dialed an address, so an intercepted
    /// tunnel's bytes are not counted twice); `bypass_attempt` records count by hook.
    /// Other records, and records that are not of this shape, are not counted.
    pub fn record(&self, team: &str, record: &serde_json::Value) {
        let Ok(fields) = RecordFields::deserialize(record) else {
            tracing::debug!("an audit record the metrics cannot read was not counted");
            return;
        };
        let events = fields.count.clamp(1, MAX_EVENTS_PER_RECORD);
        let team = self.team(team);
        match fields.kind {
            "http" => self.traffic(team, "http", &fields, events),
            "connect" => self.traffic(team, "connect", &fields, events),
            "bypass_attempt" => {
                let hook = fields
                    .hook
                    .as_ref()
                    .and_then(serde_json::Value::as_str)
                    .map_or(OTHER, |hook| closed(&HOOKS, hook));
                self.bypass_attempts
                    .get_or_create(&HookLabels {
                        team: team.team,
                        hook,
                    })
                    .inc_by(events);
            }
            _ => {}
        }
    }

    fn traffic(&self, team: TeamLabels, kind: &'static str, fields: &RecordFields, events: u64) {
        // Every attempt a quota refused, the ones tollgate then retried included.
        self.quota_refusal(&team, fields, events);
        if fields.outcome == Some("retrying") {
            self.retries.get_or_create(&team).inc_by(events);
            return;
        }
        if fields.address.is_some() {
            for (direction, bytes) in [("up", fields.bytes_up), ("down", fields.bytes_down)] {
                self.upstream_bytes
                    .get_or_create(&DirectionLabels {
                        team: team.team.clone(),
                        direction,
                    })
                    .inc_by(bytes);
            }
        }
        // Requests only: a tunnel's duration is how long it stayed open, not a latency.
        if kind == "http" {
            let seconds = Duration::from_millis(fields.duration_ms).as_secs_f64();
            let latency = self.request_duration.get_or_create_owned(&team);
            for _ in 0..events {
                latency.observe(seconds);
            }
        }
        let labels = RequestLabels {
            team: team.team,
            r#type: kind,
            decision: fields
                .decision
                .map_or(OTHER, |d| closed(&["allow", "deny"], d)),
            reason: fields.reason.map_or(OTHER, reason),
        };
        self.requests.get_or_create(&labels).inc_by(events);
    }

    /// A load or reload of `team`'s policy file succeeded (`ok`) or failed (the last good
    /// version stays in force).
    pub fn policy_reload(&self, team: &str, ok: bool) {
        let team = self.team(team);
        let result = if ok { "ok" } else { "failed" };
        self.policy_reloads
            .get_or_create(&ReloadLabels {
                team: team.team.clone(),
                result,
            })
            .inc();
        self.policy_failing
            .get_or_create(&team)
            .set(if ok { 0 } else { 1 });
    }

    /// The exposition in the Prometheus text format 0.0.4 ([`PROMETHEUS_TEXT`]).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }

    /// The exposition in the OpenMetrics text format ([`OPENMETRICS_TEXT`]), for a scraper
    /// that asks for it.
    pub fn render_openmetrics(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// The label of `team`: itself while fewer than [`MAX_TEAMS`] teams have one, else
    /// [`OTHER_TEAM`] (as is a name that is not a team name).
    fn team(&self, team: &str) -> TeamLabels {
        let label = if crate::cli::run::check_team_name(team).is_err() {
            OTHER_TEAM
        } else {
            let mut teams = self.teams.lock().unwrap_or_else(|p| p.into_inner());
            if teams.contains(team) {
                team
            } else if teams.len() < MAX_TEAMS {
                teams.insert(team.to_owned());
                team
            } else {
                OTHER_TEAM
            }
        };
        TeamLabels {
            team: label.to_owned(),
        }
    }
}

/// The fields of an audit record the metrics count from; any other field is ignored.
#[derive(Deserialize)]
struct RecordFields<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default = "one")]
    count: u64,
    #[serde(default, borrow)]
    decision: Option<&'a str>,
    #[serde(default, borrow)]
    reason: Option<&'a str>,
    #[serde(default, borrow)]
    outcome: Option<&'a str>,
    /// Set (`ip:port`) when an upstream was dialed; only its presence matters.
    #[serde(default)]
    address: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    duration_ms: u64,
    #[serde(default)]
    bytes_up: u64,
    #[serde(default)]
    bytes_down: u64,
    /// `connect`, `sendmsg`, `sock_create`, or `{"other": N}`.
    #[serde(default)]
    hook: Option<serde_json::Value>,
    /// The `Tollgate-Error` code, for a record with a `quota` object.
    #[serde(default, borrow)]
    error: Option<&'a str>,
    /// Set on a record a team quota refused or cut.
    #[serde(default, borrow)]
    quota: Option<QuotaFields<'a>>,
}

/// A record's `quota` object (docs/audit.md): the fields the metrics label by.
#[derive(Deserialize)]
struct QuotaFields<'a> {
    #[serde(default, borrow)]
    quota: Option<&'a str>,
    #[serde(default, borrow)]
    scope: Option<&'a str>,
}

/// A summary's `quotas` object: the fields the metrics count.
#[derive(Deserialize)]
struct QuotaReportFields<'a> {
    #[serde(default)]
    round_trips: u64,
    #[serde(default)]
    errors: u64,
    #[serde(default)]
    latency_us_total: u64,
    #[serde(default)]
    local_fallback_checks: u64,
    #[serde(default, borrow)]
    quotas: Vec<QuotaLineFields<'a>>,
}

#[derive(Deserialize)]
struct QuotaLineFields<'a> {
    #[serde(borrow)]
    quota: &'a str,
    #[serde(borrow)]
    scope: &'a str,
    #[serde(default)]
    admitted: u64,
}

fn one() -> u64 {
    1
}

/// `value` when it is one of `set`, else [`OTHER`].
fn closed(set: &[&'static str], value: &str) -> &'static str {
    set.iter().copied().find(|&v| v == value).unwrap_or(OTHER)
}

/// A record's reason as a label: one docs/audit.md lists, else [`OTHER`].
fn reason(word: &str) -> &'static str {
    if let Some(reason) = tollgate_policy::Reason::parse(word) {
        return reason.as_str();
    }
    let own = closed(&TOLLGATE_REASONS, word);
    if own != OTHER {
        return own;
    }
    closed(&ERROR_CODES, word)
}

/// The class of an exit status, as a label.
fn exit_class(status: i32) -> &'static str {
    match status {
        0 => "ok",
        1..=123 => "failed",
        124 => "timeout",
        125 => "tollgate_error",
        126 => "not_executable",
        127 => "not_found",
        128..=255 => "signal",
        _ => OTHER,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::{BTreeMap, BTreeSet};

    /// One sample of an exposition: its name and labels.
    pub(crate) type SampleKey = (String, BTreeMap<String, String>);

    /// Parses the Prometheus text format 0.0.4: `# TYPE` lines declare families, every
    /// sample belongs to a declared one (a histogram's `_bucket`, `_sum`, `_count`), label
    /// values are quoted, values are numbers. Panics with the offending line otherwise.
    pub(crate) fn parse_exposition(text: &str) -> BTreeMap<SampleKey, f64> {
        let mut families: BTreeMap<String, String> = BTreeMap::new();
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect(line);
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                families.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with("# HELP ") || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect(line);
            let value: f64 = value.parse().expect(line);
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, labels)) => {
                    let labels = labels.strip_suffix('}').expect(line);
                    let mut map = BTreeMap::new();
                    for pair in labels.split(',').filter(|p| !p.is_empty()) {
                        let (key, quoted) = pair.split_once('=').expect(line);
                        let unquoted = quoted
                            .strip_prefix('"')
                            .and_then(|q| q.strip_suffix('"'))
                            .expect(line);
                        map.insert(key.to_owned(), unquoted.to_owned());
                    }
                    (name, map)
                }
            };
            let family = [name, "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = if *suffix == name {
                        name
                    } else {
                        name.strip_suffix(suffix)?
                    };
                    families.get(base).map(|kind| (base, kind))
                });
            let (base, kind) = family.unwrap_or_else(|| panic!("no # TYPE for {line}"));
            assert!(base == name || kind == "histogram", "{line}");
            samples.insert((name.to_owned(), labels), value);
        }
        samples
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn value(samples: &BTreeMap<SampleKey, f64>, name: &str, pairs: &[(&str, &str)]) -> f64 {
        let key = (name.to_owned(), labels(pairs));
        *samples
            .get(&key)
            .unwrap_or_else(|| panic!("no sample {key:?} in {samples:#?}"))
    }

    /// Every label value of `label` that appears in the exposition.
    fn label_values(samples: &BTreeMap<SampleKey, f64>, label: &str) -> BTreeSet<String> {
        samples
            .keys()
            .filter_map(|(_, labels)| labels.get(label).cloned())
            .collect()
    }

    fn http(decision: &str, reason: &str, outcome: &str) -> serde_json::Value {
        json!({
            "type": "http", "time": "2026-05-21T09:14:03.377Z", "execution": "1-2-3",
            "team": "payments", "method": "GET", "scheme": "https", "host": "api.test",
            "port": 443, "path": "/v1", "address": "10.0.0.2:443", "decision": decision,
            "reason": reason, "rule": null, "error": null, "status": 200, "attempt": 1,
            "outcome": outcome, "duration_ms": 12, "bytes_up": 10, "bytes_down": 2000
        })
    }

    #[test]
    fn executions_are_counted_by_team_and_exit_class() {
        let metrics = Metrics::new();
        metrics.execution_started("payments");
        metrics.execution_started("payments");
        metrics.execution_started("data-eng");
        let summary = json!({"oom_killed": true, "bypass_reports_dropped": 3});
        metrics.execution_finished("payments", 0, Duration::from_millis(300), None);
        metrics.execution_finished("payments", 137, Duration::from_secs(2), Some(&summary));
        let samples = parse_exposition(&metrics.render());
        let team = |t| [("team", t)];
        assert_eq!(
            value(
                &samples,
                "tollgate_executions_started_total",
                &team("payments")
            ),
            2.0
        );
        assert_eq!(
            value(&samples, "tollgate_executions_active", &team("payments")),
            0.0
        );
        assert_eq!(
            value(&samples, "tollgate_executions_active", &team("data-eng")),
            1.0
        );
        for class in ["ok", "signal"] {
            let labels = [("team", "payments"), ("exit_class", class)];
            assert_eq!(
                value(&samples, "tollgate_executions_finished_total", &labels),
                1.0
            );
        }
        let count = "tollgate_execution_duration_seconds_count";
        assert_eq!(value(&samples, count, &team("payments")), 2.0);
        assert_eq!(
            value(
                &samples,
                "tollgate_execution_duration_seconds_bucket",
                &[("team", "payments"), ("le", "0.5")]
            ),
            1.0
        );
        assert_eq!(
            value(
                &samples,
                "tollgate_executions_oom_killed_total",
                &team("payments")
            ),
            1.0
        );
        assert_eq!(
            value(
                &samples,
                "tollgate_bypass_reports_dropped_total",
                &team("payments")
            ),
            3.0
        );
    }

    #[test]
    fn every_exit_status_has_its_class() {
        let classes: Vec<&str> = [0, 1, 123, 124, 125, 126, 127, 128, 143, 255, 256, -1]
            .into_iter()
            .map(exit_class)
            .collect();
        assert_eq!(
            classes,
            [
                "ok",
                "failed",
                "failed",
                "timeout",
                "tollgate_error",
                "not_executable",
                "not_found",
                "signal",
                "signal",
                "signal",
                "other",
                "other"
            ]
        );
    }

    #[test]
    fn active_executions_never_go_below_zero() {
        let metrics = Metrics::new();
        metrics.execution_finished("payments", 125, Duration::ZERO, None);
        metrics.execution_started("payments");
        let samples = parse_exposition(&metrics.render());
        assert_eq!(
            value(
                &samples,
                "tollgate_executions_active",
                &[("team", "payments")]
            ),
            1.0
        );
    }

    #[test]
    fn requests_tunnels_bytes_retries_and_latency_are_counted_from_records() {
        let metrics = Metrics::new();
        metrics.record("payments", &http("allow", "allowed", "retrying"));
        metrics.record("payments", &http("allow", "allowed", "complete"));
        // Nine identical refusals, aggregated into one record; nothing was dialed.
        let mut refusal = http("deny", "host_not_allowed", "refused");
        refusal["address"] = json!(null);
        refusal["duration_ms"] = json!(0);
        refusal["count"] = json!(9);
        refusal["first_time"] = json!("2026-05-21T09:14:02.377Z");
        metrics.record("payments", &refusal);
        // An intercepted tunnel (no address: its requests dialed) and a passthrough one.
        let tunnel = |tls: &str, address: serde_json::Value| {
            json!({
                "type": "connect", "time": "2026-05-21T09:14:04.020Z", "execution": "1-2-3",
                "team": "payments", "method": "CONNECT", "scheme": "connect",
                "host": "api.test", "port": 443, "path": "", "address": address,
                "decision": "allow", "reason": "allowed", "rule": "network.allow[0]",
                "error": null, "status": 200, "attempt": 1, "outcome": "closed",
                "duration_ms": 40, "bytes_up": 5000, "bytes_down": 7000, "tls": tls
            })
        };
        metrics.record("payments", &tunnel("intercept", json!(null)));
        metrics.record("payments", &tunnel("passthrough", json!("10.0.0.3:443")));
        metrics.record(
            "payments",
            &json!({"type": "sandbox", "time": "2026-05-21T09:14:03.101Z",
                    "execution": "1-2-3", "team": "payments", "landlock_abi": 7}),
        );
        let samples = parse_exposition(&metrics.render());
        let request = |kind, decision, reason| {
            value(
                &samples,
                "tollgate_requests_total",
                &[
                    ("team", "payments"),
                    ("type", kind),
                    ("decision", decision),
                    ("reason", reason),
                ],
            )
        };
        assert_eq!(request("http", "allow", "allowed"), 1.0);
        assert_eq!(request("http", "deny", "host_not_allowed"), 9.0);
        assert_eq!(request("connect", "allow", "allowed"), 2.0);
        let team = [("team", "payments")];
        assert_eq!(
            value(&samples, "tollgate_upstream_retries_total", &team),
            1.0
        );
        let bytes = |direction| {
            value(
                &samples,
                "tollgate_upstream_bytes_total",
                &[("team", "payments"), ("direction", direction)],
            )
        };
        // The completed request and the passthrough tunnel; not the retried attempt, the
        // refusals or the intercepted tunnel (whose bytes its requests already counted).
        assert_eq!(bytes("up"), 10.0 + 5000.0);
        assert_eq!(bytes("down"), 2000.0 + 7000.0);
        let latency = "tollgate_proxy_request_duration_seconds";
        // The final request records: not the retried attempt, not the tunnels.
        assert_eq!(value(&samples, &format!("{latency}_count"), &team), 10.0);
        assert_eq!(
            value(
                &samples,
                &format!("{latency}_bucket"),
                &[("team", "payments"), ("le", "0.001")]
            ),
            9.0
        );
        assert_eq!(value(&samples, &format!("{latency}_sum"), &team), 0.012);
    }

    #[test]
    fn bypass_attempts_are_counted_by_hook() {
        let metrics = Metrics::new();
        let bypass = |hook: serde_json::Value, count: Option<u64>| {
            let mut record = json!({
                "type": "bypass_attempt", "time": "2026-05-21T09:14:04.310Z",
                "execution": "1-2-3", "team": "payments", "decision": "deny", "hook": hook,
                "pid": 1, "tid": 1, "comm": "python3", "family": "inet",
                "destination": "10.0.0.1:80", "sock_type": "stream", "protocol": "tcp",
                "cgroup_id": 1, "message": "refused"
            });
            if let Some(count) = count {
                record["count"] = json!(count);
                record["first_time"] = json!("2026-05-21T09:14:03.310Z");
            }
            record
        };
        metrics.record("payments", &bypass(json!("connect"), None));
        metrics.record("payments", &bypass(json!("connect"), Some(4)));
        metrics.record("payments", &bypass(json!("sock_create"), None));
        metrics.record("payments", &bypass(json!({"other": 9}), None));
        let samples = parse_exposition(&metrics.render());
        let hook = |hook| {
            value(
                &samples,
                "tollgate_bypass_attempts_total",
                &[("team", "payments"), ("hook", hook)],
            )
        };
        assert_eq!(hook("connect"), 5.0);
        assert_eq!(hook("sock_create"), 1.0);
        assert_eq!(hook("other"), 1.0);
    }

    /// A worker relays the sandbox's traffic: whatever its records say, no label value can
    /// be one the sandbox chose (a host, a path, a made-up reason or decision or hook).
    #[test]
    fn no_label_value_comes_from_the_sandbox() {
        let metrics = Metrics::new();
        let hostile = "evil.example/\"}\n# TYPE x counter\nx 1";
        let mut record = http(hostile, hostile, hostile);
        record["host"] = json!(hostile);
        record["path"] = json!(hostile);
        metrics.record("payments", &record);
        let mut record = http("deny", "host_not_allowed", "refused");
        record["type"] = json!(hostile);
        metrics.record("payments", &record);
        metrics.record(
            "payments",
            &json!({"type": "bypass_attempt", "hook": hostile, "decision": "deny"}),
        );
        metrics.record(hostile, &http("allow", "allowed", "complete"));
        metrics.launch_refused(hostile);
        // Not a record at all, or with fields of the wrong type: ignored.
        metrics.record("payments", &json!("a string"));
        metrics.record("payments", &json!({"type": "http", "count": "many"}));
        let text = metrics.render();
        assert!(!text.contains("evil"), "{text}");
        let samples = parse_exposition(&text);
        assert_eq!(
            label_values(&samples, "decision"),
            BTreeSet::from(["other".into(), "allow".into()])
        );
        assert_eq!(
            label_values(&samples, "reason"),
            BTreeSet::from(["other".into(), "allowed".into()])
        );
        assert_eq!(
            label_values(&samples, "hook"),
            BTreeSet::from(["other".into()])
        );
        assert_eq!(
            label_values(&samples, "team"),
            BTreeSet::from(["payments".into(), OTHER_TEAM.into()])
        );
        assert_eq!(
            value(
                &samples,
                "tollgate_launches_refused_total",
                &[("reason", "other")]
            ),
            1.0
        );
    }

    #[test]
    fn team_labels_are_bounded() {
        let metrics = Metrics::new();
        for n in 0..MAX_TEAMS + 5 {
            metrics.execution_started(&format!("team-{n}"));
        }
        // A team that has its label keeps it.
        metrics.execution_started("team-0");
        let samples = parse_exposition(&metrics.render());
        let teams = label_values(&samples, "team");
        assert_eq!(teams.len(), MAX_TEAMS + 1);
        assert!(teams.contains(OTHER_TEAM));
        let started = "tollgate_executions_started_total";
        assert_eq!(value(&samples, started, &[("team", OTHER_TEAM)]), 5.0);
        assert_eq!(value(&samples, started, &[("team", "team-0")]), 2.0);
    }

    #[test]
    fn launch_refusals_and_policy_reloads_are_counted() {
        let metrics = Metrics::new();
        for reason in LAUNCH_REFUSALS {
            metrics.launch_refused(reason);
        }
        metrics.launch_refused("busy");
        metrics.policy_reload("payments", true);
        metrics.policy_reload("payments", false);
        metrics.policy_reload("data-eng", true);
        let samples = parse_exposition(&metrics.render());
        let refused = |reason| {
            value(
                &samples,
                "tollgate_launches_refused_total",
                &[("reason", reason)],
            )
        };
        assert_eq!(refused("busy"), 2.0);
        assert_eq!(refused("not_allowed"), 1.0);
        let reloads = |team, result| {
            value(
                &samples,
                "tollgate_policy_reloads_total",
                &[("team", team), ("result", result)],
            )
        };
        assert_eq!(reloads("payments", "ok"), 1.0);
        assert_eq!(reloads("payments", "failed"), 1.0);
        let failing = |team| {
            value(
                &samples,
                "tollgate_policy_reload_failing",
                &[("team", team)],
            )
        };
        assert_eq!(failing("payments"), 1.0);
        assert_eq!(failing("data-eng"), 0.0);
        metrics.policy_reload("payments", true);
        let samples = parse_exposition(&metrics.render());
        assert_eq!(
            value(
                &samples,
                "tollgate_policy_reload_failing",
                &[("team", "payments")]
            ),
            0.0
        );
    }

    /// The closed set of reasons is the one the audit schema (and so docs/audit.md) lists.
    #[test]
    fn the_reasons_are_the_audit_schemas() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/audit.schema.json");
        let schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("the audit schema"))
                .expect("JSON");
        let documented: BTreeSet<&str> = schema["$defs"]["reason"]["enum"]
            .as_array()
            .expect("$defs.reason.enum")
            .iter()
            .map(|v| v.as_str().expect("a word"))
            .collect();
        let ours: BTreeSet<&str> = tollgate_policy::Reason::ALL
            .iter()
            .map(|r| r.as_str())
            .chain(TOLLGATE_REASONS)
            .chain(ERROR_CODES)
            .collect();
        assert_eq!(ours, documented);
        for word in documented {
            assert_eq!(reason(word), word);
        }
        let hooks: BTreeSet<&str> = schema["$defs"]["bypass_attempt"]["properties"]["hook"]
            ["oneOf"][0]["enum"]
            .as_array()
            .expect("the hook's names")
            .iter()
            .map(|v| v.as_str().expect("a word"))
            .collect();
        assert_eq!(hooks, BTreeSet::from(HOOKS));
    }

    /// docs/metrics.md has a table row for every metric, and none for a metric that is not.
    #[test]
    fn docs_metrics_md_lists_every_metric() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
        let text = std::fs::read_to_string(path).expect("docs/metrics.md");
        let documented: BTreeSet<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("| `tollgate_"))
            .filter_map(|rest| rest.split('`').next())
            .collect();
        // A family with no series is not rendered: give each one.
        let metrics = Metrics::new();
        metrics.launch_refused("busy");
        metrics.execution_started("payments");
        let summary = json!({"oom_killed": true, "bypass_reports_dropped": 1});
        metrics.execution_finished("payments", 0, Duration::ZERO, Some(&summary));
        metrics.record("payments", &http("allow", "allowed", "retrying"));
        metrics.record("payments", &http("allow", "allowed", "complete"));
        metrics.record(
            "payments",
            &json!({"type": "bypass_attempt", "hook": "connect", "decision": "deny"}),
        );
        metrics.policy_reload("payments", true);
        metrics.record(
            "payments",
            &quota_refusal("team_rate_limited", json!("team")),
        );
        let summary = json!({"quotas": quota_report()});
        metrics.execution_finished("payments", 0, Duration::ZERO, Some(&summary));
        let rendered = metrics.render();
        let families: BTreeSet<&str> = rendered
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE tollgate_"))
            .filter_map(|rest| rest.split(' ').next())
            .collect();
        assert_eq!(documented, families);
    }

    /// A refused attempt's record, as the proxy writes it (docs/audit.md, "quota").
    fn quota_refusal(error: &str, scope: serde_json::Value) -> serde_json::Value {
        let mut record = http("deny", error, "refused");
        record["address"] = json!(null);
        record["status"] = json!(429);
        record["error"] = json!(error);
        record["rule"] = json!("quotas.requests_per_minute");
        record["quota"] = json!({
            "quota": "requests_per_minute", "scope": scope, "limit": 60, "remaining": 0,
            "retry_after_ms": 1000, "store": "redis"
        });
        record
    }

    /// A summary's `quotas` object (docs/audit.md, the summary).
    fn quota_report() -> serde_json::Value {
        json!({
            "store": "redis://127.0.0.1:6379", "fleet_wide": true, "on_failure": "deny",
            "admitted": 12,
            "refused": {"team_rate_limited": 3, "team_budget_exhausted": 0,
                        "quota_unavailable": 0},
            "round_trips": 15, "errors": 2, "latency_us_total": 2100,
            "local_fallback_checks": 4,
            "quotas": [
                {"quota": "requests_per_minute", "scope": "team",
                 "rule": "quotas.requests_per_minute", "limit": 60, "remaining": 0,
                 "admitted": 12, "refused": 3},
                {"quota": "bytes_per_day", "scope": "*.openai.com",
                 "rule": "quotas.destinations[0].bytes_per_day", "limit": 1000000,
                 "remaining": null, "admitted": 5, "refused": 0},
                {"quota": "requests_per_day", "scope": "api.test",
                 "rule": "quotas.destinations[1].requests_per_day", "limit": 9,
                 "remaining": 9, "admitted": 0, "refused": 0}
            ]
        })
    }

    #[test]
    fn quotas_are_counted_from_summaries_and_refused_records() {
        let metrics = Metrics::new();
        let summary = json!({"quotas": quota_report()});
        metrics.execution_finished("payments", 0, Duration::ZERO, Some(&summary));
        metrics.execution_finished("payments", 0, Duration::ZERO, Some(&summary));
        // No quotas in the policy: no `quotas` in the summary, nothing counted.
        metrics.execution_finished("data-eng", 0, Duration::ZERO, Some(&json!({})));
        metrics.record(
            "payments",
            &quota_refusal("team_rate_limited", json!("team")),
        );
        // A retried attempt was refused all the same; an aggregated record is its count.
        let mut retried = quota_refusal("team_rate_limited", json!("team"));
        retried["outcome"] = json!("retrying");
        metrics.record("payments", &retried);
        let mut many = quota_refusal("team_budget_exhausted", json!("api.test"));
        many["quota"]["quota"] = json!("requests_per_day");
        many["count"] = json!(7);
        metrics.record("payments", &many);
        // The store could not be asked: no quota, no scope.
        let mut unavailable = quota_refusal("quota_unavailable", json!(null));
        unavailable["status"] = json!(503);
        unavailable["quota"]["quota"] = json!(null);
        metrics.record("payments", &unavailable);
        // Not a quota's refusal: no quota metric.
        metrics.record("payments", &http("deny", "host_not_allowed", "refused"));

        let samples = parse_exposition(&metrics.render());
        let admitted = |quota, scope| {
            value(
                &samples,
                "tollgate_quota_admitted_total",
                &[("team", "payments"), ("quota", quota), ("scope", scope)],
            )
        };
        assert_eq!(admitted("requests_per_minute", "team"), 24.0);
        assert_eq!(admitted("bytes_per_day", "*.openai.com"), 10.0);
        let refused = |quota, scope, error| {
            value(
                &samples,
                "tollgate_quota_refused_total",
                &[
                    ("team", "payments"),
                    ("quota", quota),
                    ("scope", scope),
                    ("error", error),
                ],
            )
        };
        assert_eq!(
            refused("requests_per_minute", "team", "team_rate_limited"),
            2.0
        );
        assert_eq!(
            refused("requests_per_day", "api.test", "team_budget_exhausted"),
            7.0
        );
        assert_eq!(refused("", "", "quota_unavailable"), 1.0);
        let team = [("team", "payments")];
        let counter = |name| value(&samples, name, &team);
        assert_eq!(counter("tollgate_quota_store_round_trips_total"), 30.0);
        assert_eq!(counter("tollgate_quota_store_errors_total"), 4.0);
        assert_eq!(counter("tollgate_quota_local_fallback_total"), 8.0);
        assert_eq!(
            counter("tollgate_quota_store_latency_seconds_total"),
            0.0042
        );
        let series = samples
            .keys()
            .filter(|(name, labels)| {
                name.starts_with("tollgate_quota") && labels.get("team").unwrap() == "data-eng"
            })
            .count();
        assert_eq!(series, 0, "a team without quotas has no quota series");
        // A quota that admitted nothing has no admitted series.
        assert!(!samples.keys().any(|(name, labels)| {
            name == "tollgate_quota_admitted_total"
                && labels.get("quota").map(String::as_str) == Some("requests_per_day")
        }));
    }

    /// Scopes are the policy's host patterns, but the record carries them: whatever it
    /// says, a label is `team`, a host pattern, or `other`, and there are boundedly many.
    #[test]
    fn quota_labels_are_closed_or_checked_and_bounded() {
        let metrics = Metrics::new();
        let hostile = "evil\"}\n# TYPE x counter\nx 1";
        let mut record = quota_refusal("team_rate_limited", json!(hostile));
        record["quota"]["quota"] = json!(hostile);
        metrics.record("payments", &record);
        // An error that is not a quota's is not counted as a quota refusal.
        metrics.record("payments", &quota_refusal(hostile, json!("team")));
        let summary = json!({"quotas": {"quotas": [
            {"quota": hostile, "scope": "UPPER.example", "admitted": 1},
            {"quota": "requests_per_day", "scope": "*.", "admitted": 1}
        ]}});
        metrics.execution_finished("payments", 0, Duration::ZERO, Some(&summary));
        for n in 0..MAX_QUOTA_SCOPES + 3 {
            let record = quota_refusal("team_rate_limited", json!(format!("h{n}.test")));
            metrics.record("payments", &record);
        }
        let text = metrics.render();
        assert!(!text.contains("evil") && !text.contains("UPPER"), "{text}");
        let samples = parse_exposition(&text);
        let refused = |quota, scope| {
            value(
                &samples,
                "tollgate_quota_refused_total",
                &[
                    ("team", "payments"),
                    ("quota", quota),
                    ("scope", scope),
                    ("error", "team_rate_limited"),
                ],
            )
        };
        assert_eq!(refused("other", "other"), 1.0);
        assert_eq!(refused("requests_per_minute", "h0.test"), 1.0);
        assert_eq!(
            refused("requests_per_minute", "other"),
            3.0,
            "past the bound"
        );
        let errors = label_values(&samples, "error");
        assert_eq!(errors, BTreeSet::from(["team_rate_limited".into()]));
        let admitted = |quota| {
            value(
                &samples,
                "tollgate_quota_admitted_total",
                &[("team", "payments"), ("quota", quota), ("scope", "other")],
            )
        };
        assert_eq!(admitted("other"), 1.0);
        assert_eq!(admitted("requests_per_day"), 1.0);
    }

    #[test]
    fn the_openmetrics_rendering_ends_with_eof() {
        let metrics = Metrics::new();
        metrics.execution_started("payments");
        let text = metrics.render_openmetrics();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("tollgate_executions_started_total{team=\"payments\"} 1"));
    }
}
