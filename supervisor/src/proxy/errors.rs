//! The refusals the sandbox sees: one error code per failure class, each an HTTP response
//! with a `Tollgate-Error` header and a JSON body.
//!
//! Every message is one sentence saying what happened and what to change. Messages are built
//! from normalised, redacted parts only (never a query string or a header value), so they are
//! safe to return to the sandbox and to write to the audit log.

use super::body::{self, ProxyBody};

/// The `Via` value tollgate adds to every response it relays or generates.
pub const VIA: &str = "1.1 tollgate";
use crate::quota::{QuotaRefusal, RefusalKind};
use http::{header, HeaderValue, Response, StatusCode};
use tollgate_policy::{Decision, Reason};

/// The header naming the error code on every response tollgate itself generates.
pub const ERROR_HEADER: &str = "tollgate-error";

/// The header repeating the refusal's sentence (the JSON body's `message`).
pub const MESSAGE_HEADER: &str = "tollgate-message";

/// Why tollgate answered instead of the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The team policy refuses the destination, method or path (or a hook cancelled it).
    PolicyDenied,
    /// The destination resolves to an address that may not be dialed.
    SsrfDenied,
    /// The request target is not an absolute `http://` URL tollgate can parse.
    InvalidUrl,
    /// The request is malformed in a way that could smuggle a second request.
    InvalidRequest,
    /// The execution's `max_requests` budget is used up.
    RequestLimitExceeded,
    /// The execution was refused `max_denied` requests; it gets nothing more.
    DenialLimit,
    /// The request body is larger than `max_request_bytes`.
    RequestTooLarge,
    /// The response body is larger than `max_response_bytes`.
    ResponseTooLarge,
    /// The upstream could not be resolved, reached, or sent no valid response.
    ConnectError,
    /// The upstream did not answer within the request's timeout.
    Timeout,
    /// The client did not send its request body in time.
    ClientTimeout,
    /// The execution already has `max_connections` connections open to the proxy.
    TooManyConnections,
    /// `Tollgate-Auth` names a provider the team does not have (or it has none).
    AuthProviderError,
    /// A credential was asked for (or matched) a destination outside its provider's scope.
    CredentialScopeDenied,
    /// A placeholder was sent where its provider may not go (or sent twice in a header).
    CredentialPlaceholderMismatch,
    /// The TLS connection to the upstream failed (certificate, handshake).
    UpstreamTlsError,
    /// A team `requests_per_minute` quota has no room now (`Retry-After` says when).
    TeamRateLimited,
    /// A team day budget (`requests_per_day`, `bytes_per_day`) is spent.
    TeamBudgetExhausted,
    /// The team's quotas could not be checked (the quota store failed, `deny` mode).
    QuotaUnavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::PolicyDenied => "policy_denied",
            ErrorCode::SsrfDenied => "ssrf_denied",
            ErrorCode::InvalidUrl => "invalid_url",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::RequestLimitExceeded => "request_limit_exceeded",
            ErrorCode::DenialLimit => "denial_limit",
            ErrorCode::RequestTooLarge => "request_too_large",
            ErrorCode::ResponseTooLarge => "response_too_large",
            ErrorCode::ConnectError => "connect_error",
            ErrorCode::Timeout => "timeout",
            ErrorCode::ClientTimeout => "client_timeout",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::AuthProviderError => "auth_provider_error",
            ErrorCode::CredentialScopeDenied => "credential_scope_denied",
            ErrorCode::CredentialPlaceholderMismatch => "credential_placeholder_mismatch",
            ErrorCode::UpstreamTlsError => "upstream_tls_error",
            ErrorCode::TeamRateLimited => "team_rate_limited",
            ErrorCode::TeamBudgetExhausted => "team_budget_exhausted",
            ErrorCode::QuotaUnavailable => "quota_unavailable",
        }
    }

    /// Whether the sandbox caused this answer (a refusal, counted against
    /// `limits.max_denied`), rather than the upstream (a failure) or the team's quotas
    /// (shared with every other execution of the team: [`ErrorCode::is_quota`]).
    pub fn is_refusal(self) -> bool {
        !matches!(
            self,
            ErrorCode::ConnectError
                | ErrorCode::Timeout
                | ErrorCode::ClientTimeout
                | ErrorCode::UpstreamTlsError
                | ErrorCode::TeamRateLimited
                | ErrorCode::TeamBudgetExhausted
                | ErrorCode::QuotaUnavailable
        )
    }

    /// Whether a team quota (or its store) answered: refused, but not the sandbox's doing.
    pub fn is_quota(self) -> bool {
        matches!(
            self,
            ErrorCode::TeamRateLimited
                | ErrorCode::TeamBudgetExhausted
                | ErrorCode::QuotaUnavailable
        )
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::PolicyDenied
            | ErrorCode::SsrfDenied
            | ErrorCode::AuthProviderError
            | ErrorCode::CredentialScopeDenied
            | ErrorCode::CredentialPlaceholderMismatch => StatusCode::FORBIDDEN,
            ErrorCode::InvalidUrl | ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorCode::RequestLimitExceeded
            | ErrorCode::DenialLimit
            | ErrorCode::TeamRateLimited
            | ErrorCode::TeamBudgetExhausted => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::ResponseTooLarge | ErrorCode::ConnectError | ErrorCode::UpstreamTlsError => {
                StatusCode::BAD_GATEWAY
            }
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::TooManyConnections | ErrorCode::QuotaUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

/// A refusal: the code, the sentence, and the policy reason and rule for the audit record.
#[derive(Debug, Clone)]
pub struct ProxyError {
    pub code: ErrorCode,
    pub message: String,
    /// The machine reason (`host_not_allowed`, `private_address`, `budget`, …).
    pub reason: String,
    /// The policy rule that decided, when there was one.
    pub rule: Option<String>,
    /// A team quota's refusal: the audit record's `quota`, and `Retry-After`.
    pub quota: Option<Box<QuotaRefusal>>,
}

impl ProxyError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ProxyError {
        ProxyError {
            code,
            message: message.into(),
            reason: code.as_str().to_owned(),
            rule: None,
            quota: None,
        }
    }

    /// The answer to an attempt a team quota refused (or an exchange a byte budget cut):
    /// `team_rate_limited`, `team_budget_exhausted` or `quota_unavailable`, whose reason is
    /// the quota's rule path (`quotas.destinations[0].requests_per_minute`).
    pub fn from_quota(refusal: impl Into<Box<QuotaRefusal>>) -> ProxyError {
        let refusal = refusal.into();
        let code = match refusal.kind {
            RefusalKind::RateLimited => ErrorCode::TeamRateLimited,
            RefusalKind::BudgetExhausted => ErrorCode::TeamBudgetExhausted,
            RefusalKind::Unavailable => ErrorCode::QuotaUnavailable,
        };
        ProxyError {
            code,
            message: refusal.message.clone(),
            reason: refusal
                .rule
                .clone()
                .unwrap_or_else(|| code.as_str().to_owned()),
            rule: None,
            quota: Some(refusal),
        }
    }

    pub fn with_reason(mut self, reason: impl Into<String>) -> ProxyError {
        self.reason = reason.into();
        self
    }

    /// The refusal for a policy decision that did not allow the request.
    pub fn from_decision(decision: &Decision) -> ProxyError {
        let code = match decision.reason {
            Reason::PrivateAddress | Reason::AddressBlocked | Reason::HostAddress => {
                ErrorCode::SsrfDenied
            }
            Reason::CannotResolve => ErrorCode::ConnectError,
            // Not a policy's verdict: the request itself is malformed (as a 400 says).
            Reason::MethodNotUppercase => ErrorCode::InvalidRequest,
            Reason::NetworkDisabled
            | Reason::HostNotAllowed
            | Reason::SchemeNotAllowed
            | Reason::PortNotAllowed
            | Reason::PathNotAllowed
            | Reason::MethodNotAllowed
            | Reason::EncodedSlash
            | Reason::PathParameter
            | Reason::EncodedPercent
            | Reason::TrailingDot
            | Reason::L7Denied
            | Reason::L7NotMatched
            | Reason::NotResolved
            | Reason::TeamRule
            | Reason::TeamRuleError
            | Reason::PolicyError
            // An allow reaches here only without an address to dial: fail closed.
            | Reason::Allowed => ErrorCode::PolicyDenied,
        };
        let message = if code == ErrorCode::ConnectError {
            format!("{}, so the request was not sent", decision.message)
        } else {
            decision.message.clone()
        };
        ProxyError {
            code,
            message,
            reason: decision.reason.as_str().to_owned(),
            rule: decision.rule.clone(),
            quota: None,
        }
    }

    /// The response the sandbox receives (with `Retry-After` when a quota said when).
    pub fn to_response(&self, execution: &str) -> Response<ProxyBody> {
        let mut response = error_response(self.code, &self.message, execution);
        if let Some(refusal) = &self.quota {
            // The audit record's `quota` object in the body too, so the sandbox's code can
            // tell which quota refused (the Python helper's `quota` and `scope`).
            let json = serde_json::json!({
                "error": self.code.as_str(),
                "message": self.message,
                "execution": execution,
                "quota": crate::audit::QuotaRecord::of(refusal),
            });
            *response.body_mut() = body::full(json.to_string());
        }
        if let Some(seconds) = self.quota.as_ref().and_then(|q| q.retry_after_secs()) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ProxyError {}

/// `{"error", "message", "execution"}` with `Tollgate-Error: <code>`.
pub fn error_response(code: ErrorCode, message: &str, execution: &str) -> Response<ProxyBody> {
    let json = serde_json::json!({
        "error": code.as_str(),
        "message": message,
        "execution": execution,
    })
    .to_string();
    let mut response = Response::new(body::full(json));
    *response.status_mut() = code.status();
    let headers = response.headers_mut();
    headers.insert(ERROR_HEADER, HeaderValue::from_static(code.as_str()));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::VIA, HeaderValue::from_static(VIA));
    // The sentence again as a header: a client that only shows a refused CONNECT's head
    // (`curl -v`: "CONNECT tunnel failed, response 403") still shows why.
    if let Ok(value) = HeaderValue::from_str(&header_text(message)) {
        headers.insert(MESSAGE_HEADER, value);
    }
    if code == ErrorCode::InvalidRequest {
        // The client's framing cannot be trusted any more: do not read another request.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// `message` as a header value: printable ASCII only (anything else becomes `?`), at most
/// 512 characters.
fn header_text(message: &str) -> String {
    message
        .chars()
        .take(512)
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The same refusal as raw HTTP/1.1 bytes (`Connection: close`), for the places that answer
/// on a stream hyper does not serve: connections over the cap, non-TLS bytes in an
/// intercepted tunnel.
pub fn raw_response(code: ErrorCode, message: &str, execution: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "error": code.as_str(),
        "message": message,
        "execution": execution,
    })
    .to_string();
    let status = code.status();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ntollgate-error: {}\r\ntollgate-message: {}\r\ncontent-length: {}\r\nconnection: close\r\nvia: {}\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        code.as_str(),
        header_text(message),
        body.len(),
        VIA
    )
    .into_bytes()
}
