//! The audit log as OCSF 1.3.0 events (`--audit-format ocsf`): the same records in the
//! classes of the Open Cybersecurity Schema Framework, for SIEM pipelines that ingest OCSF.
//!
//! | record | OCSF event |
//! |---|---|
//! | `http` | HTTP Activity (4002), the activity named by the method |
//! | `connect` | Network Activity (4001): Refuse, Close, Reset or Fail |
//! | `bypass_attempt` | Detection Finding (2004) |
//! | `http` with `finding: placeholder_outside_scope` | its HTTP Activity and a Detection Finding |
//! | `sandbox` | Application Lifecycle (6002), Start |
//! | `launch` | Application Lifecycle (6002): Start (`started`; `refused`, as a failure), Stop (`finished`) |
//!
//! What OCSF has no attribute for (the execution, the team, the policy's reason and rule, the
//! outcome, the error code, …) is under `unmapped` with the names and values of the JSON
//! records, so one vocabulary serves both formats. docs/audit.md has the whole mapping.

use super::record::{
    Bypass, Finding, Kind, Launch, LaunchEvent, Outcome, Record, SandboxBuilt, Traffic, Verdict,
};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// The OCSF schema version the events follow (`metadata.version`).
pub const VERSION: &str = "1.3.0";

/// An OCSF event class and its category.
struct Class {
    uid: u32,
    name: &'static str,
    category_uid: u32,
    category_name: &'static str,
}

const HTTP_ACTIVITY: Class = Class {
    uid: 4002,
    name: "HTTP Activity",
    category_uid: 4,
    category_name: "Network Activity",
};

const NETWORK_ACTIVITY: Class = Class {
    uid: 4001,
    name: "Network Activity",
    category_uid: 4,
    category_name: "Network Activity",
};

const DETECTION_FINDING: Class = Class {
    uid: 2004,
    name: "Detection Finding",
    category_uid: 2,
    category_name: "Findings",
};

const APPLICATION_LIFECYCLE: Class = Class {
    uid: 6002,
    name: "Application Lifecycle",
    category_uid: 6,
    category_name: "Application Activity",
};

/// An event's `activity_id` and its caption (`activity_name`).
type Activity<'a> = (u32, &'a str);

/// Detection Finding: a finding was created.
const CREATE: Activity<'static> = (1, "Create");

/// Application Lifecycle: the application (here: the execution's sandbox) started.
const START: Activity<'static> = (3, "Start");

/// Application Lifecycle: the application (here: an execution launched by the node service)
/// stopped.
const STOP: Activity<'static> = (4, "Stop");

/// `severity_id`: refusals are Low, a socket around the proxy Medium, a placeholder sent
/// outside its provider's scope (credentials pointed somewhere else) High.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Severity {
    Informational = 1,
    Low = 2,
    Medium = 3,
    High = 4,
}

impl Severity {
    fn name(self) -> &'static str {
        match self {
            Severity::Informational => "Informational",
            Severity::Low => "Low",
            Severity::Medium => "Medium",
            Severity::High => "High",
        }
    }
}

/// The profile of events that carry `action_id` and `disposition_id`.
const SECURITY_CONTROL: &[&str] = &["security_control"];

/// The profile of events that carry an `actor` (here: the node service's caller).
const HOST: &[&str] = &["host"];

/// Encodes one log's records; numbers its events so each has a `metadata.uid` of its own
/// (`<execution>-<n>`, unique across logs since execution ids are).
#[derive(Debug, Default)]
pub struct Encoder {
    sequence: u64,
}

impl Encoder {
    /// The OCSF events `record` stands for: one, or two for a request that is a finding too.
    pub fn events(&mut self, record: &Record) -> Vec<Value> {
        if let (Kind::Launch, Some(launch)) = (record.kind, &record.launch) {
            return vec![launch_lifecycle(record, launch, &self.next_uid(record))];
        }
        match (
            record.kind,
            &record.traffic,
            &record.bypass,
            &record.sandbox,
        ) {
            (Kind::Http, Some(traffic), _, _) => {
                let uid = self.next_uid(record);
                let mut events = vec![http_activity(record, traffic, &uid)];
                if traffic.finding == Some(Finding::PlaceholderOutsideScope) {
                    let finding = self.next_uid(record);
                    events.push(placeholder_finding(record, traffic, &finding, &uid));
                }
                events
            }
            (Kind::Connect, Some(traffic), _, _) => {
                vec![network_activity(record, traffic, &self.next_uid(record))]
            }
            (Kind::BypassAttempt, _, Some(bypass), _) => {
                vec![bypass_finding(record, bypass, &self.next_uid(record))]
            }
            (Kind::Sandbox, _, _, Some(sandbox)) => {
                vec![sandbox_started(record, sandbox, &self.next_uid(record))]
            }
            (kind, ..) => {
                tracing::error!("an audit record of type {kind:?} without its fields");
                Vec::new()
            }
        }
    }

    fn next_uid(&mut self, record: &Record) -> String {
        self.sequence += 1;
        // A launch refused before it had an execution is numbered in the log's own series.
        let execution = record.execution.as_deref().unwrap_or("launch");
        format!("{execution}-{}", self.sequence)
    }
}

/// HTTP Activity (4002) for one request.
fn http_activity(record: &Record, traffic: &Traffic, uid: &str) -> Value {
    let severity = refusal_severity(traffic.decision);
    let mut event = base(
        &HTTP_ACTIVITY,
        method_activity(&traffic.method),
        severity,
        record,
        uid,
        SECURITY_CONTROL,
    );
    let mut request = Map::new();
    request.insert("http_method".into(), json!(traffic.method));
    if let Some(url) = url(traffic) {
        request.insert("url".into(), url);
    }
    event.insert("http_request".into(), Value::Object(request));
    if let Some(code) = traffic.status {
        event.insert("http_response".into(), json!({ "code": code }));
    }
    connection(&mut event, record, traffic);
    Value::Object(event)
}

/// Network Activity (4001) for one CONNECT tunnel.
fn network_activity(record: &Record, traffic: &Traffic, uid: &str) -> Value {
    let mut event = base(
        &NETWORK_ACTIVITY,
        tunnel_activity(traffic.decision, traffic.outcome),
        refusal_severity(traffic.decision),
        record,
        uid,
        SECURITY_CONTROL,
    );
    connection(&mut event, record, traffic);
    Value::Object(event)
}

/// The attributes HTTP and Network Activity share: where it went, what went each way, the
/// verdict, how it ended, and tollgate's own fields.
fn connection(event: &mut Map<String, Value>, record: &Record, traffic: &Traffic) {
    if let Some(endpoint) = dst_endpoint(traffic) {
        event.insert("dst_endpoint".into(), endpoint);
    }
    event.insert(
        "connection_info".into(),
        json!({
            "direction": "Outbound",
            "direction_id": 2,
            "protocol_name": "tcp",
            "protocol_num": 6,
        }),
    );
    event.insert(
        "traffic".into(),
        json!({
            "bytes_out": traffic.bytes_up,
            "bytes_in": traffic.bytes_down,
            "bytes": traffic.bytes_up.saturating_add(traffic.bytes_down),
        }),
    );
    security_control(event, traffic.decision);
    let (status_id, status) = if succeeded(traffic.outcome) {
        (1, "Success")
    } else {
        (2, "Failure")
    };
    event.insert("status_id".into(), json!(status_id));
    event.insert("status".into(), json!(status));
    event.insert("status_detail".into(), word(traffic.outcome));
    if let Some(error) = traffic.error {
        event.insert("status_code".into(), json!(error));
    }
    // An aggregated record covers start_time..end_time instead.
    if record.count.is_none() {
        event.insert("duration".into(), json!(traffic.duration_ms));
    }
    if let Some(message) = &traffic.message {
        event.insert("message".into(), json!(message));
    }
    event.insert("unmapped".into(), traffic_unmapped(record, traffic));
}

/// Detection Finding (2004) for a request that carried a placeholder where its provider may
/// not go; `related` is the uid of the request's own HTTP Activity.
fn placeholder_finding(record: &Record, traffic: &Traffic, uid: &str, related: &str) -> Value {
    let mut event = base(
        &DETECTION_FINDING,
        CREATE,
        Severity::High,
        record,
        uid,
        SECURITY_CONTROL,
    );
    let request = method_activity(&traffic.method);
    let mut info = finding_info(
        "A credential placeholder was sent outside its provider's scope",
        uid,
        Finding::PlaceholderOutsideScope,
        traffic.message.as_deref(),
    );
    info.insert(
        "related_events".into(),
        json!([{
            "uid": related,
            "type_uid": type_uid(&HTTP_ACTIVITY, request),
            "type_name": type_name(&HTTP_ACTIVITY, request),
        }]),
    );
    event.insert("finding_info".into(), Value::Object(info));
    let mut evidence = Map::new();
    if let Some(url) = url(traffic) {
        evidence.insert("url".into(), url);
    }
    if let Some(endpoint) = dst_endpoint(traffic) {
        evidence.insert("dst_endpoint".into(), endpoint);
    }
    if !evidence.is_empty() {
        event.insert("evidences".into(), json!([evidence]));
    }
    security_control(&mut event, traffic.decision);
    new_finding(&mut event);
    if let Some(message) = &traffic.message {
        event.insert("message".into(), json!(message));
    }
    event.insert("unmapped".into(), traffic_unmapped(record, traffic));
    Value::Object(event)
}

/// Detection Finding (2004) for a socket the eBPF wall refused.
fn bypass_finding(record: &Record, bypass: &Bypass, uid: &str) -> Value {
    let attempt = &bypass.attempt;
    let mut event = base(
        &DETECTION_FINDING,
        CREATE,
        Severity::Medium,
        record,
        uid,
        SECURITY_CONTROL,
    );
    let info = finding_info(
        "The sandbox tried to reach the network around the proxy",
        uid,
        Kind::BypassAttempt,
        Some(&bypass.message),
    );
    event.insert("finding_info".into(), Value::Object(info));
    let mut evidence = Map::new();
    evidence.insert(
        "process".into(),
        json!({ "pid": attempt.pid, "tid": attempt.tid, "name": attempt.comm }),
    );
    if let Some(destination) = attempt.destination {
        evidence.insert(
            "dst_endpoint".into(),
            json!({ "ip": destination.ip().to_string(), "port": destination.port() }),
        );
    }
    event.insert("evidences".into(), json!([evidence]));
    security_control(&mut event, bypass.decision);
    new_finding(&mut event);
    event.insert("message".into(), json!(bypass.message));
    let mut unmapped = identity(record);
    put(&mut unmapped, "hook", attempt.kind);
    put(&mut unmapped, "family", attempt.family);
    put(&mut unmapped, "sock_type", attempt.sock_type);
    put(&mut unmapped, "protocol", attempt.protocol);
    put(&mut unmapped, "cgroup_id", attempt.cgroup_id);
    event.insert("unmapped".into(), Value::Object(unmapped));
    Value::Object(event)
}

/// Application Lifecycle (6002), Start: the execution's sandbox is built and its command
/// about to run.
fn sandbox_started(record: &Record, sandbox: &SandboxBuilt, uid: &str) -> Value {
    let mut event = base(
        &APPLICATION_LIFECYCLE,
        START,
        Severity::Informational,
        record,
        uid,
        &[],
    );
    event.insert("app".into(), product());
    let landlock = match sandbox.landlock_abi {
        Some(abi) => format!("Landlock ABI {abi}"),
        None => "no Landlock".to_owned(),
    };
    event.insert(
        "message".into(),
        json!(format!(
            "the sandbox of execution {} is built ({landlock})",
            record.execution.as_deref().unwrap_or_default()
        )),
    );
    let mut unmapped = identity(record);
    put(&mut unmapped, "landlock_abi", sandbox.landlock_abi);
    put(&mut unmapped, "caller", &sandbox.caller);
    event.insert("unmapped".into(), Value::Object(unmapped));
    Value::Object(event)
}

/// Application Lifecycle (6002) for one launch through the node service: Start when it
/// started (Success) or was refused (Failure, with the caller's sentence), Stop when it
/// ended; the caller is the `actor`.
fn launch_lifecycle(record: &Record, launch: &Launch, uid: &str) -> Value {
    let (activity, severity, succeeded) = match &launch.event {
        LaunchEvent::Refused { .. } => (START, Severity::Low, false),
        LaunchEvent::Started => (START, Severity::Informational, true),
        LaunchEvent::Finished { .. } => (STOP, Severity::Informational, true),
    };
    let mut event = base(
        &APPLICATION_LIFECYCLE,
        activity,
        severity,
        record,
        uid,
        HOST,
    );
    event.insert("app".into(), product());
    let caller = &launch.caller;
    let groups: Vec<Value> = caller
        .groups
        .iter()
        .map(|gid| json!({ "uid": gid.to_string() }))
        .collect();
    event.insert(
        "actor".into(),
        json!({
            "user": { "uid": caller.uid.to_string(), "groups": groups },
            "process": { "pid": caller.pid },
        }),
    );
    let (status_id, status) = if succeeded {
        (1, "Success")
    } else {
        (2, "Failure")
    };
    event.insert("status_id".into(), json!(status_id));
    event.insert("status".into(), json!(status));
    let execution = record.execution.as_deref().unwrap_or("(none)");
    let message = match &launch.event {
        LaunchEvent::Refused { message } => message.clone(),
        LaunchEvent::Started => format!("uid {} started execution {execution}", caller.uid),
        LaunchEvent::Finished { status, .. } => {
            format!(
                "execution {execution} of uid {} ended with status {status}",
                caller.uid
            )
        }
    };
    event.insert("message".into(), json!(message));
    let mut unmapped = identity(record);
    put(&mut unmapped, "caller", caller);
    put(&mut unmapped, "event", launch.event.name());
    if let LaunchEvent::Finished {
        status,
        duration_ms,
    } = launch.event
    {
        event.insert("duration".into(), json!(duration_ms));
        put(&mut unmapped, "status", status);
        put(&mut unmapped, "duration_ms", duration_ms);
    }
    event.insert("unmapped".into(), Value::Object(unmapped));
    Value::Object(event)
}

/// The attributes every event has: classification, time, severity, metadata and, for an
/// aggregated record, how many events it stands for over which period.
fn base(
    class: &Class,
    activity: Activity<'_>,
    severity: Severity,
    record: &Record,
    uid: &str,
    profiles: &[&str],
) -> Map<String, Value> {
    let time = epoch_ms(&record.time);
    let mut metadata = json!({
        "version": VERSION,
        "product": product(),
        "uid": uid,
        "correlation_uid": record.execution,
        "log_name": "audit",
    });
    if !profiles.is_empty() {
        metadata["profiles"] = json!(profiles);
    }
    let mut event = Map::new();
    event.insert("class_uid".into(), json!(class.uid));
    event.insert("class_name".into(), json!(class.name));
    event.insert("category_uid".into(), json!(class.category_uid));
    event.insert("category_name".into(), json!(class.category_name));
    event.insert("activity_id".into(), json!(activity.0));
    event.insert("activity_name".into(), json!(activity.1));
    event.insert("type_uid".into(), json!(type_uid(class, activity)));
    event.insert("type_name".into(), json!(type_name(class, activity)));
    event.insert("severity_id".into(), json!(severity as u32));
    event.insert("severity".into(), json!(severity.name()));
    event.insert("time".into(), json!(time));
    event.insert("metadata".into(), metadata);
    if let Some(count) = record.count {
        let first = record.first_time.as_deref().map_or(time, epoch_ms);
        event.insert("count".into(), json!(count));
        event.insert("start_time".into(), json!(first));
        event.insert("end_time".into(), json!(time));
    }
    event
}

/// `type_uid`: the class's uid × 100 + the activity's id.
fn type_uid(class: &Class, activity: Activity<'_>) -> u64 {
    u64::from(class.uid) * 100 + u64::from(activity.0)
}

fn type_name(class: &Class, activity: Activity<'_>) -> String {
    format!("{}: {}", class.name, activity.1)
}

/// tollgate as an OCSF product (`metadata.product`, the lifecycle event's `app`).
fn product() -> Value {
    json!({
        "name": "tollgate",
        "vendor_name": "tollgate",
        "version": env!("CARGO_PKG_VERSION"),
    })
}

/// HTTP Activity's activity for `method`; a method OCSF 1.3.0 does not list (`PATCH`, a
/// lower-case one tollgate refused) is Other with the method as its name.
fn method_activity(method: &str) -> Activity<'_> {
    match method {
        "CONNECT" => (1, "Connect"),
        "DELETE" => (2, "Delete"),
        "GET" => (3, "Get"),
        "HEAD" => (4, "Head"),
        "OPTIONS" => (5, "Options"),
        "POST" => (6, "Post"),
        "PUT" => (7, "Put"),
        "TRACE" => (8, "Trace"),
        other => (99, other),
    }
}

/// Network Activity's activity for a tunnel that ended with `outcome`.
fn tunnel_activity(decision: Verdict, outcome: Outcome) -> Activity<'static> {
    const CLOSE: Activity<'static> = (2, "Close");
    const RESET: Activity<'static> = (3, "Reset");
    const FAIL: Activity<'static> = (4, "Fail");
    const REFUSE: Activity<'static> = (5, "Refuse");
    if decision == Verdict::Deny {
        return REFUSE;
    }
    match outcome {
        Outcome::Closed | Outcome::IdleTimeout | Outcome::Shutdown => CLOSE,
        // Cut by tollgate, "a middle device" in OCSF's words.
        Outcome::Reset
        | Outcome::TunnelBytesExceeded
        | Outcome::TunnelDurationExceeded
        | Outcome::QuotaExhausted
        | Outcome::ProtocolError
        | Outcome::MessageTooLarge => RESET,
        Outcome::Refused
        | Outcome::Failed
        | Outcome::Retrying
        | Outcome::Complete
        | Outcome::ResponseTooLarge
        | Outcome::Timeout
        | Outcome::UpstreamError
        | Outcome::ClientClosed
        | Outcome::Cancelled
        | Outcome::NotTls
        | Outcome::SniMismatch
        | Outcome::TlsUnavailable
        | Outcome::ClientTimeout
        | Outcome::TlsHandshakeFailed
        | Outcome::CertificateError
        | Outcome::NonHttpRefused
        | Outcome::UnmappedAddress => FAIL,
    }
}

/// Whether the request or tunnel did what it was for (OCSF `status_id` 1, else 2): a body
/// delivered whole, or a tunnel that ended the way tunnels end. Every other outcome is a
/// refusal, a failure or a cut (each is placed by `tunnel_activity`'s exhaustive match).
fn succeeded(outcome: Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Complete | Outcome::Closed | Outcome::IdleTimeout | Outcome::Shutdown
    )
}

fn refusal_severity(decision: Verdict) -> Severity {
    match decision {
        Verdict::Allow => Severity::Informational,
        Verdict::Deny => Severity::Low,
    }
}

/// `action`/`action_id` and `disposition`/`disposition_id` of the security_control profile.
fn security_control(event: &mut Map<String, Value>, decision: Verdict) {
    let (action, disposition) = match decision {
        Verdict::Allow => ((1, "Allowed"), (1, "Allowed")),
        Verdict::Deny => ((2, "Denied"), (2, "Blocked")),
    };
    event.insert("action_id".into(), json!(action.0));
    event.insert("action".into(), json!(action.1));
    event.insert("disposition_id".into(), json!(disposition.0));
    event.insert("disposition".into(), json!(disposition.1));
}

/// A finding's workflow status: new, nobody has looked at it yet.
fn new_finding(event: &mut Map<String, Value>) {
    event.insert("status_id".into(), json!(1));
    event.insert("status".into(), json!("New"));
}

fn finding_info(
    title: &str,
    uid: &str,
    kind: impl Serialize,
    desc: Option<&str>,
) -> Map<String, Value> {
    let mut info = Map::new();
    info.insert("title".into(), json!(title));
    info.insert("uid".into(), json!(uid));
    info.insert("types".into(), json!([word(kind)]));
    if let Some(desc) = desc {
        info.insert("desc".into(), json!(desc));
    }
    info
}

/// The request's URL: `scheme://host[:port]/path`, never a query string (records have none).
fn url(traffic: &Traffic) -> Option<Value> {
    if traffic.host.is_empty() {
        return None;
    }
    Some(json!({
        "scheme": traffic.scheme,
        "hostname": traffic.host,
        "port": traffic.port,
        "path": traffic.path,
        "url_string": traffic.target(),
    }))
}

/// The upstream: its name and port, and the address dialed when one was.
fn dst_endpoint(traffic: &Traffic) -> Option<Value> {
    let mut endpoint = Map::new();
    if !traffic.host.is_empty() {
        endpoint.insert("hostname".into(), json!(traffic.host));
        endpoint.insert("port".into(), json!(traffic.port));
    }
    let dialed = traffic
        .address
        .as_deref()
        .and_then(|a| a.parse::<SocketAddr>().ok());
    if let Some(dialed) = dialed {
        endpoint.insert("ip".into(), json!(dialed.ip().to_string()));
        endpoint.insert("port".into(), json!(dialed.port()));
    }
    (!endpoint.is_empty()).then_some(Value::Object(endpoint))
}

/// tollgate's fields of a request or tunnel that OCSF has no attribute for.
fn traffic_unmapped(record: &Record, traffic: &Traffic) -> Value {
    let mut unmapped = identity(record);
    put(&mut unmapped, "reason", &traffic.reason);
    put(&mut unmapped, "rule", &traffic.rule);
    put(&mut unmapped, "error", traffic.error);
    put(&mut unmapped, "outcome", traffic.outcome);
    put(&mut unmapped, "attempt", traffic.attempt);
    put(&mut unmapped, "retry_wait_ms", traffic.retry_wait_ms);
    if !traffic.credentials.is_empty() {
        put(&mut unmapped, "credentials", &traffic.credentials);
    }
    put(&mut unmapped, "finding", traffic.finding);
    put(&mut unmapped, "tls", traffic.tls);
    put(&mut unmapped, "tls_alert", &traffic.tls_alert);
    if traffic.transparent {
        put(&mut unmapped, "transparent", true);
    }
    put(&mut unmapped, "quota", &traffic.quota);
    put(&mut unmapped, "protocol", traffic.protocol);
    put(
        &mut unmapped,
        "upstream_protocol",
        traffic.upstream_protocol,
    );
    put(&mut unmapped, "websocket", &traffic.websocket);
    Value::Object(unmapped)
}

/// `execution` and `team`, which every event's `unmapped` starts with.
fn identity(record: &Record) -> Map<String, Value> {
    let mut unmapped = Map::new();
    unmapped.insert("execution".into(), json!(record.execution));
    unmapped.insert("team".into(), json!(record.team));
    unmapped
}

/// Sets `name` to `value` as the JSON records spell it, unless it is null.
fn put(map: &mut Map<String, Value>, name: &str, value: impl Serialize) {
    let value = word(value);
    if !value.is_null() {
        map.insert(name.into(), value);
    }
}

/// `value` as the JSON records spell it (`"complete"`, `"placeholder_outside_scope"`).
fn word(value: impl Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Milliseconds since the epoch of a record's RFC 3339 time (now, should it not parse).
fn epoch_ms(time: &str) -> u64 {
    let at = humantime::parse_rfc3339(time).unwrap_or_else(|_| SystemTime::now());
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
