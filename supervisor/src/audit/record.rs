//! The one shape every audit record has: `type`, `time`, `execution`, `team`, then the
//! fields of its type (docs/audit.md lists them all, `docs/audit.schema.json` checks them).
//!
//! The values an operator filters on are enums here, so a record can only say what the
//! documentation lists; the proxy fills a [`Traffic`] as a request goes and hands it to its
//! one `finish`, the eBPF wall's reports become [`Record::bypass`]. The node service's own
//! log has one more type, [`Record::launch`]: who asked for which execution, and how it went.

use crate::quota::store::Answered;
use crate::quota::QuotaRefusal;
use crate::sandbox::bpf::{BypassAttempt, BypassKind};
use crate::serve::wire::CallerIdentity;
use serde::Serialize;
use tollgate_policy::quotas::QuotaKind;
use tollgate_policy::schema::TlsMode;
use tollgate_policy::url::NormalizedUrl;

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// One HTTP request (absolute form, or inside an intercepted tunnel).
    Http,
    /// One CONNECT tunnel.
    Connect,
    /// A socket the eBPF wall refused.
    BypassAttempt,
    /// The execution's first record: how its sandbox was built.
    Sandbox,
    /// The node service's record of a launch: refused, started or finished (`tollgate
    /// serve`'s own log, never an execution's).
    Launch,
}

/// Whether the request was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
}

/// What happened after the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// tollgate answered instead of the upstream: a refusal the sandbox caused.
    Refused,
    /// tollgate answered because the upstream could not be reached or answered badly.
    Failed,
    /// This attempt's answer (or failure) is retried; another record follows.
    Retrying,
    /// The response body reached the sandbox whole.
    Complete,
    /// The body was cut off at `limits.max_response_bytes`.
    ResponseTooLarge,
    /// The request's deadline passed while the body streamed.
    Timeout,
    /// The upstream broke off the body (its own framing was not completed).
    UpstreamError,
    /// The sandbox closed its connection before the body ended.
    ClientClosed,
    /// A tunnel ended because one side closed it.
    Closed,
    /// A tunnel ended with a connection error.
    Reset,
    /// A tunnel carried nothing for the idle timeout.
    IdleTimeout,
    /// A tunnel was open when the execution ended.
    Shutdown,
    /// A passthrough tunnel reached `limits.max_tunnel_bytes`.
    TunnelBytesExceeded,
    /// A passthrough tunnel reached `limits.max_tunnel_duration`.
    TunnelDurationExceeded,
    /// The body (or passthrough tunnel) was cut off where a team `bytes_per_day` quota ran
    /// out.
    QuotaExhausted,
    /// Intercepted tunnel: the sandbox sent something other than TLS.
    NotTls,
    /// Intercepted tunnel: the TLS server name is not the tunnel's host.
    SniMismatch,
    /// Intercepted tunnel: no interception was available.
    TlsUnavailable,
    /// Intercepted tunnel: the sandbox did not start its handshake in time.
    ClientTimeout,
    /// Intercepted tunnel: the sandbox's TLS handshake failed (it may not trust the CA).
    TlsHandshakeFailed,
    /// Intercepted tunnel: no leaf certificate could be made for the host.
    CertificateError,
    /// Transparent egress: the connection carried neither TLS nor HTTP.
    NonHttpRefused,
    /// Transparent egress: a synthetic address the resolver never handed out.
    UnmappedAddress,
    /// The sandbox cancelled the request before its response began: it reset its HTTP/2
    /// stream, or closed its connection.
    Cancelled,
    /// Intercepted tunnel: the sandbox's HTTP/2 broke the protocol or one of its limits
    /// (rapid reset, a `CONTINUATION` flood, a header list over the limit); the message says
    /// which. The connection was closed.
    ProtocolError,
    /// WebSocket session: a message was larger than the session's message limit; the
    /// session was closed (1009).
    MessageTooLarge,
}

/// The protocol a request was spoken in: by the sandbox to tollgate (`protocol`), or by
/// tollgate to the upstream (`upstream_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Protocol {
    #[serde(rename = "http/1.1")]
    Http1,
    #[serde(rename = "h2")]
    H2,
}

/// Who ended a WebSocket session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClosedBy {
    /// The sandbox's client sent a Close frame or closed its connection.
    Client,
    /// The upstream did.
    Upstream,
    /// tollgate did: a limit, the idle timeout, or the execution ending (`outcome` says).
    Tollgate,
}

/// The `websocket` object of the record of a WebSocket session (docs/audit.md,
/// "websocket"): its bytes are the record's `bytes_up`/`bytes_down`, its length
/// `duration_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebSocketRecord {
    /// Data messages (text and binary) the sandbox sent.
    pub messages_up: u64,
    /// Data messages the upstream sent.
    pub messages_down: u64,
    /// The close code of the first Close frame (RFC 6455 §7.4); `null` when the session
    /// ended without one.
    pub close_code: Option<u16>,
    pub closed_by: ClosedBy,
}

/// Something an operator should look at, beyond the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finding {
    /// A placeholder was sent where its provider may not go.
    PlaceholderOutsideScope,
    /// The upstream echoed a secret; it was removed before the sandbox saw it.
    SecretEchoed,
}

/// One line of the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    #[serde(rename = "type")]
    pub kind: Kind,
    /// RFC 3339 UTC, milliseconds: when the event happened (the last one, for a `count`).
    pub time: String,
    /// The execution's id; `None` only on a launch refused before an execution existed.
    pub execution: Option<String>,
    pub team: Option<String>,
    /// On an aggregated record: how many identical events it stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// On an aggregated record: when the first of them happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_time: Option<String>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Traffic>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub bypass: Option<Bypass>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxBuilt>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub launch: Option<Launch>,
}

impl Record {
    /// The record of one request or tunnel, stamped now.
    pub fn traffic(execution: &str, team: &str, traffic: Traffic) -> Record {
        let kind = traffic.kind;
        Record {
            traffic: Some(traffic),
            ..Record::stamped(kind, Some(execution), Some(team))
        }
    }

    /// The record of one socket the eBPF wall refused, stamped now.
    pub fn bypass(execution: &str, team: Option<&str>, attempt: &BypassAttempt) -> Record {
        Record {
            bypass: Some(Bypass {
                decision: Verdict::Deny,
                attempt: attempt.clone(),
                message: bypass_message(attempt),
            }),
            ..Record::stamped(Kind::BypassAttempt, Some(execution), team)
        }
    }

    /// The record that opens an execution's audit trail, stamped now.
    pub fn sandbox(execution: &str, team: Option<&str>, landlock_abi: Option<u32>) -> Record {
        Record {
            sandbox: Some(SandboxBuilt {
                landlock_abi,
                caller: None,
            }),
            ..Record::stamped(Kind::Sandbox, Some(execution), team)
        }
    }

    /// This `sandbox` record with the caller the node service launched the execution for
    /// (a local run's has none).
    pub fn launched_by(mut self, caller: Option<&CallerIdentity>) -> Record {
        if let Some(sandbox) = &mut self.sandbox {
            sandbox.caller = caller.cloned();
        }
        self
    }

    /// The node service's record of one launch by `caller`, stamped now: `execution` is
    /// `None` for a launch refused before it had one, `team` for a request that named none.
    pub fn launch(
        execution: Option<&str>,
        team: Option<&str>,
        caller: &CallerIdentity,
        event: LaunchEvent,
    ) -> Record {
        Record {
            launch: Some(Launch {
                caller: caller.clone(),
                event,
            }),
            ..Record::stamped(Kind::Launch, execution, team)
        }
    }

    /// The fields every record has, stamped now; the fields of its type still empty.
    fn stamped(kind: Kind, execution: Option<&str>, team: Option<&str>) -> Record {
        Record {
            kind,
            time: now_rfc3339(),
            execution: execution.map(str::to_owned),
            team: team.map(str::to_owned),
            count: None,
            first_time: None,
            traffic: None,
            bypass: None,
            sandbox: None,
            launch: None,
        }
    }
}

/// The fields of a `sandbox` record.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxBuilt {
    /// The Landlock ABI the command restricted itself with (`null`: none).
    pub landlock_abi: Option<u32>,
    /// Who launched the execution through the node service (absent: a local run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<CallerIdentity>,
}

/// The fields of a `launch` record: who asked, and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct Launch {
    pub caller: CallerIdentity,
    #[serde(flatten)]
    pub event: LaunchEvent,
}

/// What became of a launch (`event`, and the fields of each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LaunchEvent {
    /// The service refused it, or it failed before its command could run: the sentence the
    /// caller got.
    Refused { message: String },
    /// The execution exists; its own audit trail (if the caller asked for one) has the rest.
    Started,
    /// The execution ended: the status its caller exits with, and how long it took from
    /// the launch.
    Finished { status: i32, duration_ms: u64 },
}

impl LaunchEvent {
    /// The record's `event`.
    pub fn name(&self) -> &'static str {
        match self {
            LaunchEvent::Refused { .. } => "refused",
            LaunchEvent::Started => "started",
            LaunchEvent::Finished { .. } => "finished",
        }
    }
}

/// The fields of a `bypass_attempt` record: always refused, what was tried, and the
/// operator's sentence saying so (the command itself only got `EPERM`).
#[derive(Debug, Clone, Serialize)]
pub struct Bypass {
    pub decision: Verdict,
    #[serde(flatten)]
    pub attempt: BypassAttempt,
    pub message: String,
}

/// What the eBPF wall refused, in one sentence made of the record's own fields.
fn bypass_message(attempt: &BypassAttempt) -> String {
    let around = "a sandbox reaches other hosts only through tollgate's proxy";
    let call = match attempt.kind {
        BypassKind::Connect => "connect(2)",
        BypassKind::Sendmsg => "sendmsg(2)",
        BypassKind::SockCreate => {
            return format!(
                "the eBPF wall refused to create a {} socket (protocol {}): a sandbox may open \
                 only plain TCP and UDP sockets",
                word(&attempt.sock_type),
                word(&attempt.protocol)
            )
        }
        BypassKind::Other(hook) => {
            return format!(
                "the eBPF wall refused an operation it reports as hook {hook}, which this \
                 tollgate does not know (its eBPF object and supervisor are out of step)"
            )
        }
    };
    match attempt.destination {
        Some(to) => format!("the eBPF wall refused {call} to {to}: {around}"),
        None => format!(
            "the eBPF wall refused {call} to an address of family {}: {around}",
            word(&attempt.family)
        ),
    }
}

/// A field's value as the record spells it: `raw`, `icmp`, or `other 16` for a number the
/// supervisor has no name for.
fn word(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(word)) => word,
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .map(|(name, number)| format!("{name} {number}"))
            .collect::<Vec<_>>()
            .join(" "),
        _ => "unknown".to_owned(),
    }
}

/// The reasons tollgate gives of its own (`ProxyError::with_reason`), beside the policy's
/// [`tollgate_policy::Reason`]s and the error codes (a refusal with no more specific word has
/// its code); docs/audit.md, "reason", and the schema's `$defs.reason` list them. A test
/// finds every `with_reason("…")` here; the node service's metrics label by them.
pub const TOLLGATE_REASONS: [&str; 17] = [
    "max_requests",
    "non_http",
    "unmapped_address",
    "sni_missing",
    "hook_cancelled",
    "encoded_response",
    "not_tls",
    "sni_mismatch",
    "bad_auth_header",
    "no_auth_providers",
    "unknown_auth_provider",
    "credential_scope_denied",
    "placeholder_outside_scope",
    "placeholder_repeated",
    "websocket_not_enabled",
    "h2c_unsupported",
    "cancelled",
];

/// The fields of an `http` or `connect` record, filled in as the request goes.
///
/// A record carries what an operator needs to reconstruct an execution's traffic (where,
/// which rule, which address was dialed, status, timing, bytes) and nothing that could be a
/// secret: the path without its query string, no header names or values at all (provider
/// names, never their secrets).
#[derive(Debug, Clone, Serialize)]
pub struct Traffic {
    #[serde(skip)]
    pub kind: Kind,
    pub method: String,
    pub scheme: String,
    pub host: String,
    pub port: u16,
    /// The normalised path, never the query string.
    pub path: String,
    /// The address dialed (`ip:port`), when one was.
    pub address: Option<String>,
    pub decision: Verdict,
    /// The policy reason (`allowed`, `host_not_allowed`, …) or the limit that refused.
    pub reason: String,
    pub rule: Option<String>,
    /// The tollgate error code, when tollgate answered instead of the upstream.
    pub error: Option<&'static str>,
    /// On a refusal or failure: the sentence the sandbox got in the error body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The status the upstream (or tollgate) answered with.
    pub status: Option<u16>,
    /// 1-based upstream attempt; absent for requests refused before any attempt.
    pub attempt: Option<u32>,
    /// On a `retrying` record: how long tollgate waits before the next attempt (backoff, or
    /// the upstream's `Retry-After` clamped to the policy's bounds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_wait_ms: Option<u64>,
    pub outcome: Outcome,
    pub duration_ms: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Auth providers whose credentials went out with this request (names only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finding: Option<Finding>,
    /// For tunnels: `intercept` or `passthrough`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsMode>,
    /// For tunnels whose handshake the sandbox's client broke off: the TLS alert it sent
    /// (`unknown_ca`, `bad_certificate`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_alert: Option<String>,
    /// Arrived through transparent egress (a client that ignored the proxy settings).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub transparent: bool,
    /// A team quota refused this attempt (or cut its bytes): which, and what remained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaRecord>,
    /// `http`: what the sandbox spoke to tollgate (`http/1.1`, `h2`); `connect` (an
    /// intercepted tunnel): what it spoke inside, once the handshake chose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// `http`: what tollgate spoke to the upstream on the attempt this record is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_protocol: Option<Protocol>,
    /// A WebSocket session (the upgrade was allowed and the upstream switched protocols).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websocket: Option<WebSocketRecord>,
}

/// The `quota` object of a record a team quota refused or cut (docs/audit.md, "quota").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuotaRecord {
    /// `requests_per_minute`, `requests_per_day`, `bytes_per_day`; `null` when the store
    /// could not be asked (`quota_unavailable`).
    pub quota: Option<QuotaKind>,
    /// `team`, or the destination's host pattern.
    pub scope: Option<String>,
    pub limit: Option<u64>,
    /// What remained when it refused (0 for an empty bucket; `null` when not known).
    pub remaining: Option<u64>,
    /// When the quota admits again, as the store computed it.
    pub retry_after_ms: Option<u64>,
    /// Which store answered (or failed to): `redis`, `node`, `local_fallback`.
    pub store: Answered,
}

impl QuotaRecord {
    pub fn of(refusal: &QuotaRefusal) -> QuotaRecord {
        QuotaRecord {
            quota: refusal.quota,
            scope: refusal.scope.clone(),
            limit: refusal.limit,
            remaining: refusal.remaining,
            retry_after_ms: refusal
                .retry_after
                .map(|wait| u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
            store: refusal.store,
        }
    }
}

impl Traffic {
    /// A record of `kind` for `method` with every outcome field empty; the URL is set with
    /// the `target` fields as soon as it is known.
    pub fn new(kind: Kind, method: &str) -> Traffic {
        Traffic {
            kind,
            method: method.to_owned(),
            scheme: String::new(),
            host: String::new(),
            port: 0,
            path: String::new(),
            address: None,
            decision: Verdict::Deny,
            reason: String::new(),
            rule: None,
            error: None,
            message: None,
            status: None,
            attempt: None,
            retry_wait_ms: None,
            outcome: Outcome::Refused,
            duration_ms: 0,
            bytes_up: 0,
            bytes_down: 0,
            credentials: Vec::new(),
            finding: None,
            tls: None,
            tls_alert: None,
            transparent: false,
            quota: None,
            protocol: None,
            upstream_protocol: None,
            websocket: None,
        }
    }

    /// Where the request was headed: the normalised URL's scheme, host, port and path.
    pub fn set_url(&mut self, url: &NormalizedUrl) {
        self.scheme = url.scheme.clone();
        self.host = url.host_str();
        self.port = url.port;
        self.path = url.path.clone();
    }

    /// Where a request whose target could not be normalised was headed: its scheme and
    /// authority as sent, lower-cased; the path is left out, unparsed.
    pub fn set_unparsed_target(&mut self, uri: &http::Uri) {
        self.scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
        self.host = uri.host().unwrap_or_default().to_ascii_lowercase();
        self.port = uri.port_u16().unwrap_or(0);
    }

    /// `scheme://host[:port]/path` (the port when not the scheme's default) for log lines (`<invalid target>` when none was parsed).
    pub fn target(&self) -> String {
        if self.host.is_empty() {
            return "<invalid target>".to_owned();
        }
        if self.kind == Kind::Connect {
            return format!("{}:{}", self.host, self.port);
        }
        let default_port = matches!(
            (self.scheme.as_str(), self.port),
            ("http", 80) | ("https", 443)
        );
        if default_port || self.port == 0 {
            format!("{}://{}{}", self.scheme, self.host, self.path)
        } else {
            format!("{}://{}:{}{}", self.scheme, self.host, self.port, self.path)
        }
    }
}

/// RFC 3339 UTC time with milliseconds, for records.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
