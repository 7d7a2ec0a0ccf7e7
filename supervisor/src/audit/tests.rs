//! Records against what docs/audit.md and docs/audit.schema.json say of them: real records of
//! every type, outcome, verdict and finding validate; whatever the documentation does not
//! have is refused; the schema's closed sets are the code's and the documentation names
//! each; every record's OCSF events are well-formed OCSF 1.3.0 events of the right class.

use super::ocsf;
use super::{
    Finding, Kind, LaunchEvent, Outcome, QuotaRecord, Record, Traffic, Verdict, TOLLGATE_REASONS,
};
use crate::proxy::ErrorCode;
use crate::quota::store::Answered;
use crate::sandbox::bpf::{AddressFamily, BypassAttempt, BypassKind, Protocol, SocketType};
use crate::serve::wire::CallerIdentity;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use tollgate_policy::quotas::QuotaKind;
use tollgate_policy::schema::TlsMode;
use tollgate_policy::Reason;

const EXECUTION: &str = "exec-7f3a";

/// A caller of the node service, as its socket reports one.
fn caller() -> CallerIdentity {
    CallerIdentity {
        uid: 1000,
        gid: 1000,
        pid: 31337,
        groups: vec![27, 1001],
    }
}

/// The node service's records of a launch: refused before and after it had an execution,
/// started, finished.
fn launches() -> [Record; 5] {
    let refused = |execution| {
        Record::launch(
            execution,
            Some("payments"),
            &caller(),
            LaunchEvent::Refused {
                message: "uid 1000 may not launch for team payments".into(),
            },
        )
    };
    [
        refused(None),
        refused(Some(EXECUTION)),
        Record::launch(
            None,
            None,
            &caller(),
            LaunchEvent::Refused {
                message: "give --team NAME".into(),
            },
        ),
        Record::launch(
            Some(EXECUTION),
            Some("payments"),
            &caller(),
            LaunchEvent::Started,
        ),
        Record::launch(
            Some(EXECUTION),
            Some("payments"),
            &caller(),
            LaunchEvent::Finished {
                status: 137,
                duration_ms: 5_012,
            },
        ),
    ]
}

/// Every outcome, with the record type it is written on.
const OUTCOMES: [(Outcome, Kind); 35] = [
    (Outcome::Refused, Kind::Http),
    (Outcome::Failed, Kind::Http),
    (Outcome::Retrying, Kind::Http),
    (Outcome::Complete, Kind::Http),
    (Outcome::ResponseTooLarge, Kind::Http),
    (Outcome::Timeout, Kind::Http),
    (Outcome::UpstreamError, Kind::Http),
    (Outcome::ClientClosed, Kind::Http),
    (Outcome::QuotaExhausted, Kind::Http),
    (Outcome::Refused, Kind::Connect),
    (Outcome::Failed, Kind::Connect),
    (Outcome::Closed, Kind::Connect),
    (Outcome::Reset, Kind::Connect),
    (Outcome::IdleTimeout, Kind::Connect),
    (Outcome::Shutdown, Kind::Connect),
    (Outcome::TunnelBytesExceeded, Kind::Connect),
    (Outcome::TunnelDurationExceeded, Kind::Connect),
    (Outcome::NotTls, Kind::Connect),
    (Outcome::SniMismatch, Kind::Connect),
    (Outcome::TlsUnavailable, Kind::Connect),
    (Outcome::ClientTimeout, Kind::Connect),
    (Outcome::TlsHandshakeFailed, Kind::Connect),
    (Outcome::CertificateError, Kind::Connect),
    (Outcome::NonHttpRefused, Kind::Connect),
    (Outcome::UnmappedAddress, Kind::Connect),
    (Outcome::QuotaExhausted, Kind::Connect),
    (Outcome::Cancelled, Kind::Http),
    (Outcome::ProtocolError, Kind::Connect),
    (Outcome::MessageTooLarge, Kind::Http),
    (Outcome::Closed, Kind::Http),
    (Outcome::IdleTimeout, Kind::Http),
    (Outcome::TunnelDurationExceeded, Kind::Http),
    (Outcome::TunnelBytesExceeded, Kind::Http),
    (Outcome::Reset, Kind::Http),
    (Outcome::Shutdown, Kind::Http),
];

/// Fails to compile when an outcome is added, until it is listed above and in the schema.
fn listed(outcome: Outcome) -> bool {
    match outcome {
        Outcome::Refused
        | Outcome::Failed
        | Outcome::Retrying
        | Outcome::Complete
        | Outcome::ResponseTooLarge
        | Outcome::Timeout
        | Outcome::UpstreamError
        | Outcome::ClientClosed
        | Outcome::Closed
        | Outcome::Reset
        | Outcome::IdleTimeout
        | Outcome::Shutdown
        | Outcome::TunnelBytesExceeded
        | Outcome::TunnelDurationExceeded
        | Outcome::NotTls
        | Outcome::SniMismatch
        | Outcome::TlsUnavailable
        | Outcome::ClientTimeout
        | Outcome::TlsHandshakeFailed
        | Outcome::CertificateError
        | Outcome::NonHttpRefused
        | Outcome::UnmappedAddress
        | Outcome::QuotaExhausted
        | Outcome::Cancelled
        | Outcome::ProtocolError
        | Outcome::MessageTooLarge => true,
    }
}

/// Every (outcome, type) pair records are written with.
fn every_outcome() -> Vec<(Outcome, Kind)> {
    assert!(OUTCOMES.iter().all(|(o, _)| listed(*o)));
    OUTCOMES.to_vec()
}

/// Every error code; fails to compile when one is added, until it is listed here.
fn every_error_code() -> Vec<ErrorCode> {
    let all = vec![
        ErrorCode::PolicyDenied,
        ErrorCode::SsrfDenied,
        ErrorCode::InvalidUrl,
        ErrorCode::InvalidRequest,
        ErrorCode::RequestLimitExceeded,
        ErrorCode::DenialLimit,
        ErrorCode::RequestTooLarge,
        ErrorCode::ResponseTooLarge,
        ErrorCode::ConnectError,
        ErrorCode::Timeout,
        ErrorCode::ClientTimeout,
        ErrorCode::TooManyConnections,
        ErrorCode::AuthProviderError,
        ErrorCode::CredentialScopeDenied,
        ErrorCode::CredentialPlaceholderMismatch,
        ErrorCode::UpstreamTlsError,
        ErrorCode::TeamRateLimited,
        ErrorCode::TeamBudgetExhausted,
        ErrorCode::QuotaUnavailable,
    ];
    for code in &all {
        match code {
            ErrorCode::PolicyDenied
            | ErrorCode::SsrfDenied
            | ErrorCode::InvalidUrl
            | ErrorCode::InvalidRequest
            | ErrorCode::RequestLimitExceeded
            | ErrorCode::DenialLimit
            | ErrorCode::RequestTooLarge
            | ErrorCode::ResponseTooLarge
            | ErrorCode::ConnectError
            | ErrorCode::Timeout
            | ErrorCode::ClientTimeout
            | ErrorCode::TooManyConnections
            | ErrorCode::AuthProviderError
            | ErrorCode::CredentialScopeDenied
            | ErrorCode::CredentialPlaceholderMismatch
            | ErrorCode::UpstreamTlsError
            | ErrorCode::TeamRateLimited
            | ErrorCode::TeamBudgetExhausted
            | ErrorCode::QuotaUnavailable => {}
        }
    }
    all
}

/// tollgate's own reasons are string literals at the refusal (`with_reason("…")`): a new one
/// must reach [`TOLLGATE_REASONS`] (audit/record.rs), and through it the schema and
/// docs/audit.md.
#[test]
fn every_reason_the_proxy_gives_of_its_own_is_listed() {
    let mut given = BTreeSet::new();
    let mut dirs = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("a source directory") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("a source file");
                const CALL: &str = "with_reason(\"";
                for (at, _) in text.match_indices(CALL) {
                    // A reason is a snake_case word; anything else is prose about the call.
                    let word = text[at + CALL.len()..].split('"').next().filter(|w| {
                        !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    });
                    given.extend(word.map(str::to_owned));
                }
            }
        }
    }
    let listed: BTreeSet<String> = TOLLGATE_REASONS.map(str::to_owned).into_iter().collect();
    let missing: Vec<&String> = given.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "reasons given with with_reason but not in TOLLGATE_REASONS (and so not in the schema and docs/audit.md): {missing:?}"
    );
    assert!(given.contains("max_requests"), "the scan found {given:?}");
}

const FINDINGS: [Finding; 2] = [Finding::PlaceholderOutsideScope, Finding::SecretEchoed];

fn docs(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name)
}

fn schema() -> Value {
    let path = docs("audit.schema.json");
    let text = std::fs::read_to_string(&path).expect("docs/audit.schema.json");
    serde_json::from_str(&text).expect("the schema is JSON")
}

fn validator() -> jsonschema::Validator {
    jsonschema::draft202012::new(&schema()).expect("the schema is a valid 2020-12 schema")
}

/// `value` as records spell it.
fn word(value: impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .expect("a word")
}

fn json_of(record: &Record) -> Value {
    serde_json::to_value(record).expect("a record serialises")
}

/// A request or tunnel record as the proxy fills it for `outcome` with `decision`.
fn traffic(kind: Kind, outcome: Outcome, decision: Verdict) -> Traffic {
    let mut traffic = match kind {
        Kind::Connect => {
            let mut t = Traffic::new(Kind::Connect, "CONNECT");
            t.scheme = "connect".into();
            t.tls = Some(TlsMode::Intercept);
            // Every field a tunnel record can carry, so the schema is checked against each.
            t.transparent = true;
            t.tls_alert = Some("unknown_ca".into());
            t
        }
        _ => {
            let mut t = Traffic::new(Kind::Http, "GET");
            t.scheme = "https".into();
            t.path = "/v1/items".into();
            t
        }
    };
    traffic.host = "api.example.test".into();
    traffic.port = 443;
    traffic.decision = decision;
    traffic.outcome = outcome;
    traffic.duration_ms = 12;
    match decision {
        Verdict::Deny => {
            traffic.reason = Reason::L7Denied.as_str().into();
            traffic.rule = Some("network.allow[0].deny_rules[0]".into());
            traffic.error = Some(ErrorCode::PolicyDenied.as_str());
            traffic.message = Some("GET /admin on api.example.test is refused by …".into());
            traffic.status = Some(403);
        }
        Verdict::Allow => {
            traffic.reason = Reason::Allowed.as_str().into();
            traffic.rule = Some("network.allow[0]".into());
            traffic.address = Some("10.0.0.2:443".into());
            traffic.attempt = Some(1);
            traffic.status = Some(200);
            traffic.bytes_up = 120;
            traffic.bytes_down = 5_000;
        }
    }
    if outcome == Outcome::Failed {
        traffic.error = Some(ErrorCode::ConnectError.as_str());
        traffic.message = Some("api.example.test:443 could not be reached".into());
        traffic.status = Some(502);
    }
    if outcome == Outcome::Retrying {
        traffic.status = Some(503);
        traffic.retry_wait_ms = Some(250);
    }
    traffic
}

/// The records a team quota leaves: refused, retried, the store unavailable, cut.
fn quota_records() -> Vec<Traffic> {
    let quota = |kind, scope: &str, retry_after_ms, store| QuotaRecord {
        quota: kind,
        scope: (!scope.is_empty()).then(|| scope.to_owned()),
        limit: kind.map(|_| 60),
        remaining: kind.map(|_| 0),
        retry_after_ms,
        store,
    };
    let refused = |code: ErrorCode, reason: &str, quota: QuotaRecord| {
        let mut t = traffic(Kind::Http, Outcome::Refused, Verdict::Allow);
        t.address = None;
        t.bytes_down = 0;
        t.reason = reason.into();
        t.error = Some(code.as_str());
        t.message = Some("the team's requests_per_minute quota (60 a minute) is used up".into());
        t.status = Some(code.status().as_u16());
        t.quota = Some(quota);
        t
    };
    let rate = Some(QuotaKind::RequestsPerMinute);
    let mut retried = refused(
        ErrorCode::TeamRateLimited,
        "quotas.requests_per_minute",
        quota(rate, "team", Some(1000), Answered::LocalFallback),
    );
    retried.outcome = Outcome::Retrying;
    retried.retry_wait_ms = Some(1000);
    let mut tunnel = traffic(Kind::Connect, Outcome::Refused, Verdict::Allow);
    tunnel.tls = Some(TlsMode::Passthrough);
    tunnel.reason = "quotas.destinations[3].requests_per_day".into();
    tunnel.error = Some(ErrorCode::TeamBudgetExhausted.as_str());
    tunnel.message = Some("the team's requests_per_day quota for *.example.test …".into());
    tunnel.status = Some(429);
    tunnel.quota = Some(quota(
        Some(QuotaKind::RequestsPerDay),
        "*.example.test",
        Some(3_600_000),
        Answered::Node,
    ));
    let cut_quota = quota(
        Some(QuotaKind::BytesPerDay),
        "team",
        Some(60_000),
        Answered::Redis,
    );
    let mut cut_body = traffic(Kind::Http, Outcome::QuotaExhausted, Verdict::Allow);
    cut_body.error = Some(ErrorCode::TeamBudgetExhausted.as_str());
    cut_body.message = Some("the team's bytes_per_day quota (…) has no room left".into());
    cut_body.quota = Some(cut_quota.clone());
    let mut cut_tunnel = traffic(Kind::Connect, Outcome::QuotaExhausted, Verdict::Allow);
    cut_tunnel.tls = Some(TlsMode::Passthrough);
    cut_tunnel.error = Some(ErrorCode::TeamBudgetExhausted.as_str());
    cut_tunnel.message = cut_body.message.clone();
    cut_tunnel.quota = Some(cut_quota);
    vec![
        refused(
            ErrorCode::TeamRateLimited,
            "quotas.destinations[0].requests_per_minute",
            quota(rate, "api.example.test", Some(1000), Answered::Redis),
        ),
        retried,
        refused(
            ErrorCode::QuotaUnavailable,
            "quota_unavailable",
            quota(None, "", None, Answered::Redis),
        ),
        tunnel,
        cut_body,
        cut_tunnel,
    ]
}

fn record(traffic: Traffic) -> Record {
    Record::traffic(EXECUTION, "payments", traffic)
}

fn bypass(kind: BypassKind, destination: Option<&str>) -> BypassAttempt {
    let destination: Option<SocketAddr> = destination.map(|d| d.parse().expect("an address"));
    BypassAttempt {
        kind,
        pid: 4242,
        tid: 4243,
        comm: "python3".into(),
        family: match destination {
            Some(SocketAddr::V6(_)) => AddressFamily::Inet6,
            _ => AddressFamily::Inet,
        },
        destination,
        sock_type: SocketType::Stream,
        protocol: Protocol::Unspecified,
        cgroup_id: 9001,
    }
}

/// Records of every type, every outcome on its type with either verdict, every finding,
/// aggregated ones, and odd but real shapes (no team, an unparsed target, numbers the
/// supervisor has no name for).
fn every_record() -> Vec<Record> {
    let mut records = Vec::new();
    for (outcome, kind) in every_outcome() {
        for decision in [Verdict::Allow, Verdict::Deny] {
            records.push(record(traffic(kind, outcome, decision)));
        }
    }
    // Retried after a failure: an error and its sentence, no status.
    let mut failed_attempt = traffic(Kind::Http, Outcome::Retrying, Verdict::Allow);
    failed_attempt.status = None;
    failed_attempt.error = Some(ErrorCode::ConnectError.as_str());
    failed_attempt.message = Some("connection refused by 10.0.0.2:443".into());
    records.push(record(failed_attempt));
    // Credentials went out; an echoed secret was scrubbed.
    let mut credentialed = traffic(Kind::Http, Outcome::Complete, Verdict::Allow);
    credentialed.credentials = vec!["github".into()];
    credentialed.finding = Some(Finding::SecretEchoed);
    records.push(record(credentialed));
    // A placeholder where its provider may not go.
    let mut outside = traffic(Kind::Http, Outcome::Refused, Verdict::Deny);
    outside.reason = "placeholder_outside_scope".into();
    outside.rule = None;
    outside.error = Some(ErrorCode::CredentialPlaceholderMismatch.as_str());
    outside.finding = Some(Finding::PlaceholderOutsideScope);
    records.push(record(outside));
    // Refused before the target was parsed: the scheme it named, no host, no path.
    let mut unparsed = Traffic::new(Kind::Http, "GET");
    unparsed.scheme = "ftp".into();
    unparsed.reason = ErrorCode::InvalidUrl.as_str().into();
    unparsed.error = Some(ErrorCode::InvalidUrl.as_str());
    unparsed.message = Some("the request target is not an absolute http:// URL".into());
    unparsed.status = Some(400);
    records.push(record(unparsed));
    let mut unparsed_tunnel = Traffic::new(Kind::Connect, "CONNECT");
    unparsed_tunnel.reason = ErrorCode::InvalidUrl.as_str().into();
    unparsed_tunnel.error = Some(ErrorCode::InvalidUrl.as_str());
    unparsed_tunnel.message = Some("the CONNECT target is not host:port".into());
    unparsed_tunnel.status = Some(400);
    records.push(record(unparsed_tunnel));
    // A lower-case method, a passthrough tunnel cut at its limit, an IPv6 upstream.
    let mut lower = traffic(Kind::Http, Outcome::Refused, Verdict::Deny);
    lower.method = "delete".into();
    lower.reason = Reason::MethodNotUppercase.as_str().into();
    lower.rule = None;
    lower.error = Some(ErrorCode::InvalidRequest.as_str());
    lower.status = Some(400);
    records.push(record(lower));
    let mut cut = traffic(Kind::Connect, Outcome::TunnelBytesExceeded, Verdict::Allow);
    cut.tls = Some(TlsMode::Passthrough);
    cut.address = Some("[2001:db8::7]:443".into());
    records.push(record(cut));
    // Team quotas: a refused attempt (reason: the quota's rule path), one retried after
    // its wait, the store unavailable, a tunnel and a body cut at a byte budget.
    records.extend(quota_records().into_iter().map(record));
    // Aggregated refusals.
    let mut flood = record(traffic(Kind::Http, Outcome::Refused, Verdict::Deny));
    flood.count = Some(41);
    flood.first_time = Some("2026-01-02T03:04:05.006Z".into());
    records.push(flood);
    let mut tunnels = record(traffic(Kind::Connect, Outcome::Refused, Verdict::Deny));
    tunnels.count = Some(2);
    tunnels.first_time = Some(tunnels.time.clone());
    records.push(tunnels);
    // The eBPF wall's refusals, of every hook, with and without a team.
    records.push(Record::bypass(
        EXECUTION,
        Some("payments"),
        &bypass(BypassKind::Connect, Some("10.0.0.1:80")),
    ));
    records.push(Record::bypass(
        EXECUTION,
        None,
        &bypass(BypassKind::Sendmsg, Some("[2001:db8::1]:53")),
    ));
    let mut raw = bypass(BypassKind::SockCreate, None);
    raw.sock_type = SocketType::Raw;
    raw.protocol = Protocol::Icmp;
    records.push(Record::bypass(EXECUTION, None, &raw));
    let mut strange = bypass(BypassKind::Other(9), None);
    strange.family = AddressFamily::Other(16);
    strange.sock_type = SocketType::Other(10);
    strange.protocol = Protocol::Other(262);
    records.push(Record::bypass(EXECUTION, None, &strange));
    let mut knocking = Record::bypass(
        EXECUTION,
        Some("payments"),
        &bypass(BypassKind::Connect, Some("10.0.0.1:80")),
    );
    knocking.count = Some(99);
    knocking.first_time = Some(knocking.time.clone());
    records.push(knocking);
    // The opening record, with and without Landlock and a team.
    records.push(Record::sandbox(EXECUTION, Some("payments"), Some(7)));
    records.push(Record::sandbox(EXECUTION, None, None));
    records
        .push(Record::sandbox(EXECUTION, Some("payments"), Some(7)).launched_by(Some(&caller())));
    records.extend(launches());
    records
}

/// Why `validator` refuses `value`, one line (empty: it does not).
fn refusals(validator: &jsonschema::Validator, value: &Value) -> String {
    validator
        .iter_errors(value)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn every_record_of_every_type_outcome_and_finding_is_valid_against_the_schema() {
    let validator = validator();
    let records = every_record();
    let mut wrong = Vec::new();
    for record in &records {
        let value = json_of(record);
        let why = refusals(&validator, &value);
        if !why.is_empty() {
            wrong.push(format!("{value}\n  {why}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "records the schema refuses:\n{}",
        wrong.join("\n")
    );
    for kind in [
        Kind::Http,
        Kind::Connect,
        Kind::BypassAttempt,
        Kind::Sandbox,
        Kind::Launch,
    ] {
        assert!(records.iter().any(|r| r.kind == kind), "no {kind:?} record");
    }
}

#[test]
fn the_schema_refuses_what_the_documentation_does_not_have() {
    let validator = validator();
    let http = json_of(&record(traffic(
        Kind::Http,
        Outcome::Refused,
        Verdict::Deny,
    )));
    let connect = json_of(&record(traffic(
        Kind::Connect,
        Outcome::Closed,
        Verdict::Allow,
    )));
    let bypass = json_of(&Record::bypass(
        EXECUTION,
        None,
        &bypass(BypassKind::Connect, Some("10.0.0.1:80")),
    ));
    let sandbox = json_of(&Record::sandbox(EXECUTION, None, Some(7)));
    let [refused, _, _, started, finished] = launches().map(|r| json_of(&r));
    let changed = |record: &Value, change: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut record = record.clone();
        change(record.as_object_mut().expect("an object"));
        record
    };
    let mut accepted = Vec::new();
    for (what, record) in [&http, &connect, &bypass, &sandbox, &started]
        .into_iter()
        .flat_map(|record| {
            let mut cases: Vec<(String, Value)> = Vec::new();
            for field in ["type", "time", "execution", "team"] {
                cases.push((
                    format!("no {field}"),
                    changed(record, &|r| {
                        r.remove(field);
                    }),
                ));
            }
            cases.push((
                "a field nobody documented".into(),
                changed(record, &|r| {
                    r.insert("surprise".into(), json!(1));
                }),
            ));
            cases.push((
                "the old `kind`".into(),
                changed(record, &|r| {
                    r.insert("kind".into(), json!("proxy"));
                }),
            ));
            cases.push((
                "a time without milliseconds".into(),
                changed(record, &|r| {
                    r.insert("time".into(), json!("2026-01-02T03:04:05Z"));
                }),
            ));
            cases.push((
                "a count without first_time".into(),
                changed(record, &|r| {
                    r.insert("count".into(), json!(3));
                }),
            ));
            cases
        })
        .chain([
            (
                "a refusal without its message".to_owned(),
                changed(&http, &|r| {
                    r.remove("message");
                }),
            ),
            (
                "an http record without `rule`".to_owned(),
                changed(&http, &|r| {
                    r.remove("rule");
                }),
            ),
            (
                "an outcome nobody documented".to_owned(),
                changed(&http, &|r| {
                    r.insert("outcome".into(), json!("vanished"));
                }),
            ),
            (
                "a tunnel's outcome on a request".to_owned(),
                changed(&http, &|r| {
                    r.insert("outcome".into(), json!("not_tls"));
                }),
            ),
            (
                "a reason nobody documented".to_owned(),
                changed(&http, &|r| {
                    r.insert("reason".into(), json!("felt_like_it"));
                }),
            ),
            (
                "a quota path nobody documented".to_owned(),
                changed(&http, &|r| {
                    r.insert("reason".into(), json!("quotas.requests_per_hour"));
                }),
            ),
            (
                "a quota from a store nobody documented".to_owned(),
                changed(&http, &|r| {
                    let mut quota = serde_json::to_value(QuotaRecord {
                        quota: Some(QuotaKind::RequestsPerDay),
                        scope: Some("team".into()),
                        limit: Some(5),
                        remaining: Some(0),
                        retry_after_ms: Some(1),
                        store: Answered::Node,
                    })
                    .expect("a quota object");
                    quota["store"] = json!("memcached");
                    r.insert("quota".into(), quota);
                }),
            ),
            (
                "an error code nobody documented".to_owned(),
                changed(&http, &|r| {
                    r.insert("error".into(), json!("teapot"));
                }),
            ),
            (
                "tls on a request".to_owned(),
                changed(&http, &|r| {
                    r.insert("tls".into(), json!("intercept"));
                }),
            ),
            (
                "a tunnel with a path".to_owned(),
                changed(&connect, &|r| {
                    r.insert("path".into(), json!("/x"));
                }),
            ),
            (
                "an allowed bypass attempt".to_owned(),
                changed(&bypass, &|r| {
                    r.insert("decision".into(), json!("allow"));
                }),
            ),
            (
                "a bypass attempt without its message".to_owned(),
                changed(&bypass, &|r| {
                    r.remove("message");
                }),
            ),
            (
                "an aggregated sandbox record".to_owned(),
                changed(&sandbox, &|r| {
                    r.insert("count".into(), json!(2));
                    r.insert("first_time".into(), r["time"].clone());
                }),
            ),
            (
                "a caller without its groups".to_owned(),
                changed(&sandbox, &|r| {
                    r.insert("caller".into(), json!({"uid": 1, "gid": 1, "pid": 2}));
                }),
            ),
            (
                "a caller with a field nobody documented".to_owned(),
                changed(&started, &|r| {
                    r["caller"]["name"] = json!("alice");
                }),
            ),
            (
                "a launch without its caller".to_owned(),
                changed(&started, &|r| {
                    r.remove("caller");
                }),
            ),
            (
                "a launch event nobody documented".to_owned(),
                changed(&started, &|r| {
                    r.insert("event".into(), json!("paused"));
                }),
            ),
            (
                "a refused launch without its message".to_owned(),
                changed(&refused, &|r| {
                    r.remove("message");
                }),
            ),
            (
                "a refused launch with a status".to_owned(),
                changed(&refused, &|r| {
                    r.insert("status".into(), json!(125));
                }),
            ),
            (
                "a started launch without an execution".to_owned(),
                changed(&started, &|r| {
                    r.insert("execution".into(), Value::Null);
                }),
            ),
            (
                "a finished launch without its status".to_owned(),
                changed(&finished, &|r| {
                    r.remove("status");
                }),
            ),
            (
                "a finished launch with a message".to_owned(),
                changed(&finished, &|r| {
                    r.insert("message".into(), json!("done"));
                }),
            ),
        ])
    {
        if validator.is_valid(&record) {
            accepted.push(format!("{what}: {record}"));
        }
    }
    assert!(
        accepted.is_empty(),
        "the schema accepts:\n{}",
        accepted.join("\n")
    );
}

/// The words of `$defs.<name>.enum` in the schema.
fn schema_enum(schema: &Value, name: &str) -> BTreeSet<String> {
    schema["$defs"][name]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("the schema has no $defs.{name}.enum"))
        .iter()
        .map(|v| v.as_str().expect("a word").to_owned())
        .collect()
}

fn reasons() -> BTreeSet<String> {
    Reason::ALL
        .iter()
        .map(|r| r.as_str().to_owned())
        .chain(TOLLGATE_REASONS.map(str::to_owned))
        .chain(every_error_code().iter().map(|c| c.as_str().to_owned()))
        .collect()
}

#[test]
fn the_schemas_closed_sets_are_the_codes() {
    let schema = schema();
    let outcomes = |kind: Option<Kind>| -> BTreeSet<String> {
        every_outcome()
            .into_iter()
            .filter(|(_, k)| kind.is_none_or(|kind| *k == kind))
            .map(|(o, _)| word(o))
            .collect()
    };
    assert_eq!(schema_enum(&schema, "outcome"), outcomes(None));
    assert_eq!(
        schema_enum(&schema, "http_outcome"),
        outcomes(Some(Kind::Http))
    );
    assert_eq!(
        schema_enum(&schema, "connect_outcome"),
        outcomes(Some(Kind::Connect))
    );
    let codes: BTreeSet<String> = every_error_code()
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(schema_enum(&schema, "error_code"), codes);
    assert_eq!(schema_enum(&schema, "reason"), reasons());
    let findings: BTreeSet<String> = FINDINGS.map(word).into_iter().collect();
    let in_schema: BTreeSet<String> = schema["$defs"]["http"]["properties"]["finding"]["enum"]
        .as_array()
        .expect("finding enum")
        .iter()
        .map(|v| v.as_str().expect("a word").to_owned())
        .collect();
    assert_eq!(in_schema, findings);
}

#[test]
fn docs_audit_md_names_every_field_and_every_value() {
    let text = std::fs::read_to_string(docs("audit.md")).expect("docs/audit.md");
    let mut names = BTreeSet::new();
    for record in every_record() {
        names.extend(
            json_of(&record)
                .as_object()
                .expect("an object")
                .keys()
                .cloned(),
        );
    }
    names.extend(every_outcome().into_iter().map(|(o, _)| word(o)));
    names.extend(reasons());
    names.extend(FINDINGS.map(word));
    names.extend(
        [
            "http",
            "connect",
            "bypass_attempt",
            "sandbox",
            "launch",
            "refused",
            "started",
            "finished",
            "allow",
            "deny",
        ]
        .map(str::to_owned),
    );
    let missing: Vec<&String> = names
        .iter()
        .filter(|name| !text.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/audit.md does not name {missing:?}"
    );
}

/// The checks every OCSF event passes, whatever its class.
fn check_event(event: &Value, record: &Record) -> Vec<String> {
    let mut wrong = Vec::new();
    let class = event["class_uid"].as_u64().unwrap_or(0);
    let activity = event["activity_id"].as_u64();
    if event["category_uid"].as_u64() != Some(class / 1000) {
        wrong.push("category_uid is not class_uid / 1000".to_owned());
    }
    if activity.is_none() || event["type_uid"].as_u64() != activity.map(|a| class * 100 + a) {
        wrong.push("type_uid is not class_uid × 100 + activity_id".to_owned());
    }
    if !event["severity_id"]
        .as_u64()
        .is_some_and(|s| (1..=6).contains(&s))
    {
        wrong.push("no severity_id".to_owned());
    }
    let time = humantime::parse_rfc3339(&record.time).expect("a record's time");
    let ms = time
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    if event["time"].as_u64() != Some(ms) {
        wrong.push(format!("time is not the record's, {ms} ms"));
    }
    let metadata = &event["metadata"];
    if metadata["version"] != ocsf::VERSION
        || metadata["product"]["name"] != "tollgate"
        || !metadata["product"]["vendor_name"].is_string()
        || !metadata["uid"].is_string()
    {
        wrong.push("metadata needs version, product.name, product.vendor_name, uid".to_owned());
    }
    if event["unmapped"]["execution"] != json!(record.execution) {
        wrong.push("unmapped.execution is not the record's".to_owned());
    }
    if let Some(count) = record.count {
        if event["count"] != count || !event["start_time"].is_u64() || event["end_time"] != ms {
            wrong.push("an aggregated record needs count, start_time and end_time".to_owned());
        }
    }
    if class == 4001 || class == 4002 || class == 2004 {
        let action = event["action_id"].as_u64();
        if !matches!(action, Some(1 | 2)) || !event["disposition_id"].is_u64() {
            wrong.push("action_id (1 or 2) and disposition_id are required".to_owned());
        }
    }
    wrong
}

#[test]
fn every_record_is_one_ocsf_event_of_its_class_and_findings_are_findings_too() {
    let mut encoder = ocsf::Encoder::default();
    let mut wrong = Vec::new();
    let mut uids = BTreeSet::new();
    for record in every_record() {
        let events = encoder.events(&record);
        let classes: Vec<u64> = events
            .iter()
            .map(|e| e["class_uid"].as_u64().unwrap_or(0))
            .collect();
        let placeholder = record
            .traffic
            .as_ref()
            .is_some_and(|t| t.finding == Some(Finding::PlaceholderOutsideScope));
        let want: Vec<u64> = match record.kind {
            Kind::Http if placeholder => vec![4002, 2004],
            Kind::Http => vec![4002],
            Kind::Connect => vec![4001],
            Kind::BypassAttempt => vec![2004],
            Kind::Sandbox | Kind::Launch => vec![6002],
        };
        if classes != want {
            wrong.push(format!(
                "{:?} became classes {classes:?}, want {want:?}",
                record.kind
            ));
        }
        for event in &events {
            for problem in check_event(event, &record) {
                wrong.push(format!("{problem}: {event}"));
            }
            if !uids.insert(event["metadata"]["uid"].to_string()) {
                wrong.push(format!("metadata.uid repeated: {event}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn an_http_record_becomes_http_activity_with_its_request_response_and_endpoint() {
    let mut refused = traffic(Kind::Http, Outcome::Refused, Verdict::Deny);
    refused.method = "POST".into();
    let mut encoder = ocsf::Encoder::default();
    let event = encoder.events(&record(refused)).remove(0);
    assert_eq!(event["class_uid"], 4002);
    assert_eq!(event["activity_id"], 6, "POST: {event}");
    assert_eq!(event["type_uid"], 400206);
    assert_eq!(event["http_request"]["http_method"], "POST");
    let url = &event["http_request"]["url"];
    assert_eq!(url["scheme"], "https");
    assert_eq!(url["hostname"], "api.example.test");
    assert_eq!(url["port"], 443);
    assert_eq!(url["path"], "/v1/items");
    assert_eq!(url["url_string"], "https://api.example.test/v1/items");
    assert_eq!(event["http_response"]["code"], 403);
    assert_eq!(event["action_id"], 2);
    assert_eq!(event["action"], "Denied");
    assert_eq!(event["disposition"], "Blocked");
    assert_eq!(event["status_id"], 2);
    assert_eq!(event["status_detail"], "refused");
    assert_eq!(event["status_code"], "policy_denied");
    assert_eq!(event["dst_endpoint"]["hostname"], "api.example.test");
    assert!(event["message"]
        .as_str()
        .is_some_and(|m| m.contains("refused")));
    let unmapped = &event["unmapped"];
    assert_eq!(unmapped["team"], "payments");
    assert_eq!(unmapped["reason"], "l7_denied");
    assert_eq!(unmapped["rule"], "network.allow[0].deny_rules[0]");

    let allowed = traffic(Kind::Http, Outcome::Complete, Verdict::Allow);
    let event = encoder.events(&record(allowed)).remove(0);
    assert_eq!(event["activity_id"], 3, "GET");
    assert_eq!(event["action"], "Allowed");
    assert_eq!(event["status"], "Success");
    assert_eq!(event["severity_id"], 1);
    assert_eq!(event["dst_endpoint"]["ip"], "10.0.0.2");
    assert_eq!(event["dst_endpoint"]["port"], 443);
    assert_eq!(event["traffic"]["bytes_out"], 120);
    assert_eq!(event["traffic"]["bytes_in"], 5_000);
    assert_eq!(event["duration"], 12);

    let mut patch = traffic(Kind::Http, Outcome::Complete, Verdict::Allow);
    patch.method = "PATCH".into();
    let event = encoder.events(&record(patch)).remove(0);
    assert_eq!(event["activity_id"], 99, "OCSF 1.3.0 has no Patch");
    assert_eq!(event["activity_name"], "PATCH");
}

#[test]
fn a_tunnel_becomes_network_activity_refused_closed_reset_or_failed() {
    let mut encoder = ocsf::Encoder::default();
    let mut activity = |outcome, decision| {
        let event = encoder
            .events(&record(traffic(Kind::Connect, outcome, decision)))
            .remove(0);
        assert_eq!(event["class_uid"], 4001, "{event}");
        (
            event["activity_name"].as_str().unwrap_or("").to_owned(),
            event,
        )
    };
    assert_eq!(activity(Outcome::Refused, Verdict::Deny).0, "Refuse");
    assert_eq!(activity(Outcome::NotTls, Verdict::Deny).0, "Refuse");
    assert_eq!(activity(Outcome::Closed, Verdict::Allow).0, "Close");
    assert_eq!(activity(Outcome::Reset, Verdict::Allow).0, "Reset");
    assert_eq!(
        activity(Outcome::TunnelDurationExceeded, Verdict::Allow).0,
        "Reset"
    );
    assert_eq!(activity(Outcome::Failed, Verdict::Allow).0, "Fail");
    assert_eq!(
        activity(Outcome::TlsHandshakeFailed, Verdict::Allow).0,
        "Fail"
    );
    let (_, closed) = activity(Outcome::Closed, Verdict::Allow);
    assert_eq!(closed["traffic"]["bytes"], 5_120);
    assert_eq!(closed["unmapped"]["tls"], "intercept");
    assert_eq!(closed["unmapped"]["outcome"], "closed");
}

#[test]
fn a_bypass_attempt_and_a_placeholder_outside_its_scope_are_detection_findings() {
    let mut encoder = ocsf::Encoder::default();
    let attempt = Record::bypass(
        EXECUTION,
        Some("payments"),
        &bypass(BypassKind::Connect, Some("10.0.0.1:80")),
    );
    let event = encoder.events(&attempt).remove(0);
    assert_eq!(event["class_uid"], 2004);
    assert_eq!(event["type_uid"], 200401);
    assert_eq!(event["finding_info"]["types"], json!(["bypass_attempt"]));
    assert_eq!(event["finding_info"]["uid"], event["metadata"]["uid"]);
    assert!(event["finding_info"]["title"].is_string());
    let evidence = &event["evidences"][0];
    assert_eq!(evidence["process"]["pid"], 4242);
    assert_eq!(evidence["process"]["name"], "python3");
    assert_eq!(evidence["dst_endpoint"]["ip"], "10.0.0.1");
    assert_eq!(evidence["dst_endpoint"]["port"], 80);
    assert_eq!(event["action"], "Denied");
    assert_eq!(event["unmapped"]["hook"], "connect");
    assert!(event["message"]
        .as_str()
        .is_some_and(|m| m.contains("connect(2) to 10.0.0.1:80")));

    let mut outside = traffic(Kind::Http, Outcome::Refused, Verdict::Deny);
    outside.finding = Some(Finding::PlaceholderOutsideScope);
    let events = encoder.events(&record(outside));
    let (request, finding) = (&events[0], &events[1]);
    assert_eq!(finding["class_uid"], 2004);
    assert_eq!(finding["severity_id"], 4, "High");
    assert_eq!(
        finding["finding_info"]["types"],
        json!(["placeholder_outside_scope"])
    );
    assert_eq!(
        finding["finding_info"]["related_events"][0]["uid"],
        request["metadata"]["uid"]
    );
    assert_eq!(
        finding["evidences"][0]["url"]["hostname"],
        "api.example.test"
    );
}

#[test]
fn a_bypass_record_says_what_was_refused_in_a_sentence() {
    let message = |attempt: &BypassAttempt| {
        Record::bypass(EXECUTION, None, attempt)
            .bypass
            .expect("bypass fields")
            .message
    };
    let sent = message(&bypass(BypassKind::Sendmsg, Some("[2001:db8::1]:53")));
    assert!(sent.contains("sendmsg(2) to [2001:db8::1]:53"), "{sent}");
    let mut raw = bypass(BypassKind::SockCreate, None);
    raw.sock_type = SocketType::Raw;
    raw.protocol = Protocol::Icmp;
    let created = message(&raw);
    assert!(created.contains("raw socket (protocol icmp)"), "{created}");
    let mut odd = bypass(BypassKind::SockCreate, None);
    odd.sock_type = SocketType::Other(10);
    odd.protocol = Protocol::Other(262);
    let odd = message(&odd);
    assert!(
        odd.contains("other 10 socket (protocol other 262)"),
        "{odd}"
    );
}

#[test]
fn a_launch_is_one_record_with_its_caller_and_an_application_lifecycle_event() {
    let [refused, _, _, started, finished] = launches().map(|r| json_of(&r));
    assert_eq!(refused["type"], "launch");
    assert_eq!(refused["execution"], Value::Null);
    assert_eq!(refused["event"], "refused");
    assert_eq!(
        refused["caller"],
        json!({"uid": 1000, "gid": 1000, "pid": 31337, "groups": [27, 1001]})
    );
    assert_eq!(started["event"], "started");
    assert_eq!(finished["status"], 137);
    assert_eq!(finished["duration_ms"], 5_012);
    for record in launches() {
        let event = &record.launch.as_ref().expect("launch fields").event;
        assert_eq!(json_of(&record)["event"], event.name());
    }
    // A local run's sandbox record is as it always was; one launched by the service names
    // its caller.
    let local = json_of(&Record::sandbox(EXECUTION, None, Some(7)));
    assert!(local.get("caller").is_none(), "{local}");
    let served = json_of(&Record::sandbox(EXECUTION, None, Some(7)).launched_by(Some(&caller())));
    assert_eq!(served["caller"]["uid"], 1000);

    let mut encoder = ocsf::Encoder::default();
    let [refused, _, _, started, finished] = launches().map(|r| encoder.events(&r).remove(0));
    assert_eq!(refused["activity_name"], "Start");
    assert_eq!(refused["status"], "Failure");
    assert_eq!(
        refused["message"],
        "uid 1000 may not launch for team payments"
    );
    assert_eq!(refused["actor"]["user"]["uid"], "1000");
    assert_eq!(refused["unmapped"]["execution"], Value::Null);
    assert_eq!(started["status"], "Success");
    assert_eq!(started["actor"]["process"]["pid"], 31337);
    assert_eq!(finished["activity_name"], "Stop");
    assert_eq!(finished["unmapped"]["status"], 137);
    assert_eq!(finished["duration"], 5_012);
    assert_eq!(finished["metadata"]["profiles"], json!(["host"]));
}

/// A tee that keeps what it is given, as the node service would receive it.
#[derive(Clone, Default)]
struct Kept {
    taken: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    flushed: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl super::Tee for Kept {
    fn record(&mut self, record: &Record) {
        self.taken.lock().unwrap().push(json_of(record));
    }
    fn buffered(&self) -> usize {
        self.taken.lock().unwrap().len()
    }
    fn flush(&mut self) {
        let taken = std::mem::take(&mut *self.taken.lock().unwrap());
        self.flushed.lock().unwrap().extend(taken);
    }
}

#[test]
fn the_tee_gets_every_record_as_json_aggregated_as_written_with_or_without_a_file() {
    let refusal = || record(traffic(Kind::Http, Outcome::Refused, Verdict::Deny));
    // No file: the tee alone.
    let kept = Kept::default();
    let log = super::AuditLog::teed(None, super::Format::Json, Box::new(kept.clone()));
    assert!(log.is_enabled());
    log.write(Record::sandbox(EXECUTION, None, None));
    for _ in 0..5 {
        log.write(refusal());
    }
    log.close();
    let flushed = kept.flushed.lock().unwrap().clone();
    assert!(kept.taken.lock().unwrap().is_empty(), "all of it flushed");
    assert_eq!(flushed[0]["type"], "sandbox");
    // The first refusal at once, the four repeats as one record with their count.
    let events: u64 = flushed[1..]
        .iter()
        .map(|r| r["count"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(flushed.len(), 3, "{flushed:?}");
    assert_eq!(events, 5);

    // An OCSF file: the file gets OCSF, the tee tollgate's own records.
    let path = std::env::temp_dir().join(format!("tollgate-tee-test-{}", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    let kept = Kept::default();
    let log = super::AuditLog::teed(Some(file), super::Format::Ocsf, Box::new(kept.clone()));
    log.write(Record::sandbox(EXECUTION, None, Some(7)));
    log.close();
    let written = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let line: Value = serde_json::from_str(written.trim()).unwrap();
    assert_eq!(line["class_uid"], 6002);
    assert_eq!(kept.flushed.lock().unwrap()[0]["type"], "sandbox");
}
