//! The forward proxy: one absolute-form `http://` request, through every step in order.
//!
//! parse → normalise → refuse smuggling → decide → resolve → decide on the addresses →
//! hooks (a rewritten URL goes through the gate again) → read the body under its limit →
//! attempts (`attempt`: budget, connection, exchange, retry) → relay the response → audit.

use super::audit::AuditRecord;
use super::body::ProxyBody;
use super::errors::{ErrorCode, ProxyError};
use super::hooks::{HookRequest, HookResponse, HookVerdict};
use super::relay::{Finish, RelayBody};
use super::{attempt, gate, headers, limits, refuse, Shared};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_policy::url::NormalizedUrl;
use tollgate_policy::Decision;

/// Handles one forward-proxy request; every outcome is a response and an audit record.
///
/// `ambiguous_framing`: the connection's framing witness saw both `Content-Length` and
/// `Transfer-Encoding` in this request's head (hyper has already dropped the former).
pub(crate) async fn forward(
    shared: Arc<Shared>,
    request: Request<Incoming>,
    ambiguous_framing: bool,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let mut record = AuditRecord::new(
        &shared.execution,
        &shared.policy.team,
        "http",
        request.method().as_str(),
        None,
    );
    match forward_steps(&shared, request, ambiguous_framing, &mut record, started).await {
        Ok(response) => response,
        Err(error) => refuse(&shared, record, &error, started),
    }
}

/// The decided, prepared request, ready for attempts.
pub(crate) struct Outgoing {
    pub method: Method,
    pub url: NormalizedUrl,
    /// `scheme://authority`: the pool key and the summary's destination.
    pub origin: String,
    /// The origin-form target sent upstream (normalised path and query).
    pub target: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub decision: Decision,
    pub timeout: Duration,
}

async fn forward_steps(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
    ambiguous_framing: bool,
    record: &mut AuditRecord,
    started: Instant,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (parts, body) = request.into_parts();
    let url = parse_target(&parts.uri)?;
    set_url(record, &url);
    if ambiguous_framing {
        return Err(headers::both_lengths());
    }
    headers::refuse_smuggling(&parts.headers, &url)?;
    let timeout = shared
        .policy
        .limits
        .clamp_timeout(headers::requested_timeout(&parts.headers)?);
    let mut outgoing_headers = parts.headers;
    headers::sanitise_request(&mut outgoing_headers);
    let (url, decision) =
        decide_and_hook(shared, &parts.method, url, &mut outgoing_headers, record).await?;
    let limit = shared.policy.limits.max_request_bytes;
    limits::check_declared_length(&outgoing_headers, limit)?;
    apply_team_edits(&mut outgoing_headers, &decision);
    outgoing_headers.remove(header::CONTENT_LENGTH);
    headers::set_host(&mut outgoing_headers, &url)?;
    headers::add_via(&mut outgoing_headers);
    let body = match tokio::time::timeout(timeout, limits::read_body(body, limit)).await {
        Ok(body) => body?,
        Err(_) => {
            return Err(ProxyError::new(
                ErrorCode::ClientTimeout,
                format!("the request body did not arrive within {timeout:?}"),
            ))
        }
    };
    record.bytes_up = body.len() as u64;
    let target: Uri = url
        .origin_form()
        .parse()
        .map_err(|_| ProxyError::new(ErrorCode::InvalidUrl, "the URL path cannot be sent"))?;
    let outgoing = Outgoing {
        method: parts.method,
        origin: format!("{}://{}", url.scheme, url.authority()),
        url,
        target,
        headers: outgoing_headers,
        body,
        decision,
        timeout,
    };
    let sent = attempt::attempts(shared, &outgoing, record).await?;
    relay(shared, &outgoing, sent, record.clone(), started).await
}

/// parse + normalise: an absolute `http://` URL, through the policy crate's one parser.
fn parse_target(uri: &Uri) -> Result<NormalizedUrl, ProxyError> {
    let invalid = |m: String| Err(ProxyError::new(ErrorCode::InvalidUrl, m));
    match uri.scheme_str() {
        None => invalid(
            "the request target must be an absolute http:// URL: configure the client to use tollgate as its HTTP proxy".into(),
        ),
        Some(s) if s.eq_ignore_ascii_case("https") => invalid(
            "https:// URLs cannot be sent in absolute form: use CONNECT (an HTTPS proxy tunnel), which clients do when HTTPS_PROXY is set".into(),
        ),
        Some(s) if !s.eq_ignore_ascii_case("http") => {
            invalid("only http:// URLs can be forwarded; use CONNECT for https".into())
        }
        Some(_) => NormalizedUrl::parse(&uri.to_string())
            .map_err(|e| ProxyError::new(ErrorCode::InvalidUrl, e.to_string())),
    }
}

fn set_url(record: &mut AuditRecord, url: &NormalizedUrl) {
    record.scheme = url.scheme.clone();
    record.host = url.host_str();
    record.port = url.port;
    record.path = url.path.clone();
}

fn set_decision(record: &mut AuditRecord, decision: &Decision) {
    record.decision = "allow";
    record.reason = decision.reason.clone();
    record.rule = decision.rule.clone();
}

/// decide → resolve → decide, then the `before_http` hooks; a rewritten URL is decided again.
async fn decide_and_hook(
    shared: &Shared,
    method: &Method,
    url: NormalizedUrl,
    headers: &mut HeaderMap,
    record: &mut AuditRecord,
) -> Result<(NormalizedUrl, Decision), ProxyError> {
    let names = headers::names(headers);
    let decision = gate::clear(shared, method.as_str(), &url, false, &names).await?;
    set_decision(record, &decision);
    if shared.before.is_empty() {
        return Ok((url, decision));
    }
    let mut hooked = HookRequest::new(method.clone(), url.clone(), std::mem::take(headers));
    for hook in &shared.before {
        if let HookVerdict::Cancel(reason) = hook.before_http(&mut hooked).await {
            return Err(ProxyError::new(
                ErrorCode::PolicyDenied,
                format!("the request was cancelled by a supervisor hook: {reason}"),
            )
            .with_reason("hook_cancelled"));
        }
    }
    *headers = hooked.headers;
    headers::sanitise_request(headers);
    if hooked.url == url {
        return Ok((url, decision));
    }
    let url = hooked.url;
    set_url(record, &url);
    if url.scheme != "http" {
        return Err(ProxyError::new(
            ErrorCode::InvalidUrl,
            "a supervisor hook rewrote the URL to https, which the forward proxy does not send",
        ));
    }
    let names = headers::names(headers);
    let decision = gate::clear(shared, method.as_str(), &url, false, &names).await?;
    set_decision(record, &decision);
    Ok((url, decision))
}

/// Header edits from the team's Rego rules: removals, then sets.
fn apply_team_edits(headers: &mut HeaderMap, decision: &Decision) {
    for name in &decision.team.remove_headers {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(name);
        }
    }
    for (name, value) in &decision.team.set_headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
}

/// Relays the final response: size check on `Content-Length`, hop-by-hop removal, `Via`,
/// `after_http` hooks, then the body under its limits (see `relay`).
async fn relay(
    shared: &Arc<Shared>,
    outgoing: &Outgoing,
    sent: attempt::Sent,
    mut record: AuditRecord,
    _started: Instant,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, body) = sent.response.into_parts();
    record.address = Some(sent.peer.to_string());
    record.attempt = Some(sent.attempt);
    record.status = Some(parts.status.as_u16());
    let limit = shared.policy.limits.max_response_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(ProxyError::new(
            ErrorCode::ResponseTooLarge,
            format!(
                "the response from {} is larger than the {limit}-byte limit (limits.max_response_bytes)",
                outgoing.url.authority()
            ),
        ));
    }
    let reusable = !parts.headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("close"))
    });
    headers::remove_hop_by_hop(&mut parts.headers);
    headers::add_via(&mut parts.headers);
    if !shared.after.is_empty() {
        let seen = HookResponse {
            method: outgoing.method.clone(),
            url: outgoing.url.clone(),
            status: parts.status,
            headers: parts.headers.clone(),
        };
        for hook in &shared.after {
            hook.after_http(&seen).await;
        }
    }
    let finish = Finish {
        shared: shared.clone(),
        line: format!(
            "{} {} -> {}",
            outgoing.method,
            outgoing.url.redacted(),
            parts.status.as_u16()
        ),
        record,
        started: sent.started,
        reuse: reusable.then_some(sent.connection),
    };
    let deadline = Box::pin(tokio::time::sleep_until(sent.deadline));
    let body = RelayBody::new(body, limit, deadline, finish);
    shared.stats.bytes(outgoing.body.len() as u64, 0);
    Ok(Response::from_parts(parts, body.boxed()))
}
