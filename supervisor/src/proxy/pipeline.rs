//! The request pipeline every HTTP request takes, whether it arrived in absolute form
//! (`forward`) or inside an intercepted TLS tunnel (`intercept`): the two differ only in how
//! the URL is read.
//!
//! refuse smuggling → decide → resolve → decide on the addresses → hooks (a rewritten URL
//! goes through the gate again) → read the body under its limit → credentials (placeholders,
//! `Tollgate-Auth`, URL credentials) → attempts (`attempt`: budget, connection, TLS,
//! signature, exchange, retry) → relay the response (`response`: echoed secrets redacted)
//! or, for an allowed WebSocket upgrade the upstream accepted, the session (`websocket`) →
//! audit. A request whose handling is dropped before it answered (the client reset its
//! HTTP/2 stream or closed its connection) is recorded `cancelled`.

use super::body::ProxyBody;
use super::errors::{ErrorCode, ProxyError};
use super::finish::{finish, refuse};
use super::hooks::{HookRequest, HookVerdict};
use super::http1::Delivery;
use super::upstream::{self, Outgoing};
use super::{credentials, gate, headers, limits, response, websocket, Shared, Via};
use crate::audit::{Kind, Outcome, Protocol, Traffic, Verdict};
use http::request::Parts;
use http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri, Version,
};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Instant;
use tollgate_policy::url::NormalizedUrl;
use tollgate_policy::Decision;

/// Runs `url` (already parsed and normalised) through every step; every outcome is a
/// response and an audit record.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    url: Result<NormalizedUrl, ProxyError>,
    parts: Parts,
    body: Incoming,
    ambiguous_framing: bool,
    via: Via,
) -> Response<ProxyBody> {
    let mut body = limits::RequestBody::new(body, &parts.headers);
    if let Some(refused) = super::denials::past_limit(&shared, &parts, url.as_ref().ok()) {
        return once_readable(&shared, &mut body, refused).await;
    }
    let started = Instant::now();
    let mut record = Traffic::new(Kind::Http, parts.method.as_str());
    record.transparent = via == Via::Transparent;
    record.protocol = Some(match parts.version {
        Version::HTTP_2 => Protocol::H2,
        _ => Protocol::Http1,
    });
    // Written as `cancelled` if this future is dropped before it answers (the client reset
    // its stream or closed its connection); disarmed once the answer or its record exists.
    let mut pending = Unanswered {
        shared: shared.clone(),
        record: Some(record),
        started,
    };
    let record = pending.record.as_mut().expect("armed");
    let result = match url {
        Ok(url) => steps(&shared, url, parts, &mut body, ambiguous_framing, record).await,
        Err(error) => {
            // Refused before normalisation, but its scheme and authority still say where
            // the request was headed.
            record.set_unparsed_target(&parts.uri);
            // The method is the first thing wrong with a `connect host:443`.
            Err(headers::check_method(parts.method.as_str())
                .err()
                .unwrap_or(error))
        }
    };
    if matches!(&result, Err(error) if error.reason == limits::CANCELLED) {
        // The client went away while its body was read: `pending` records it cancelled,
        // and the answer goes nowhere.
        drop(pending);
        return ProxyError::new(ErrorCode::InvalidRequest, "cancelled")
            .to_response(&shared.execution);
    }
    let record = pending.disarm();
    match result {
        Ok(response) => response,
        Err(error) => {
            let refusal = refuse(&shared, record, &error, started);
            once_readable(&shared, &mut body, refusal).await
        }
    }
}

/// A request's record while its answer is being made: if the request's future is dropped
/// first, the record is written `cancelled` so no request goes unrecorded.
struct Unanswered {
    shared: Arc<Shared>,
    /// `None` once disarmed.
    record: Option<Traffic>,
    started: Instant,
}

impl Unanswered {
    /// The answer exists: the record is the caller's (a relayed body or a refusal writes it).
    fn disarm(&mut self) -> Traffic {
        self.record
            .take()
            .unwrap_or_else(|| Traffic::new(Kind::Http, ""))
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        record.outcome = Outcome::Cancelled;
        record.status = None;
        if record.reason.is_empty() {
            // Dropped before the decision: nothing was decided, nothing refused.
            record.reason = "cancelled".to_owned();
            record.message =
                Some("the client cancelled the request before it was decided".to_owned());
        }
        finish(&self.shared, record, self.started);
    }
}

/// A refusal goes out once its client can read it: the rest of the request body is read and
/// thrown away first, and the connection closes after the answer when any of it was left
/// (see [`limits::RequestBody::settle`]).
async fn once_readable(
    shared: &Shared,
    body: &mut limits::RequestBody,
    mut refusal: Response<ProxyBody>,
) -> Response<ProxyBody> {
    let within = shared.policy.limits.clamp_timeout(None);
    if body.settle(within).await {
        refusal
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    refusal
}

async fn steps(
    shared: &Arc<Shared>,
    url: NormalizedUrl,
    mut parts: Parts,
    body: &mut limits::RequestBody,
    ambiguous_framing: bool,
    record: &mut Traffic,
) -> Result<Response<ProxyBody>, ProxyError> {
    let delivery = parts.extensions.get::<Arc<Delivery>>().cloned();
    record.set_url(&url);
    // First of all: a method not in upper case is never matched (`delete` would miss a
    // `DELETE` deny rule on its way to a server that upper-cases it).
    headers::check_method(parts.method.as_str())?;
    if ambiguous_framing {
        return Err(headers::both_lengths());
    }
    headers::refuse_smuggling(&parts.headers, &url)?;
    // Before `sanitise_request`, which removes `Upgrade` and `Connection`.
    let websocket = websocket::requested(&mut parts)?;
    let timeout = shared
        .policy
        .limits
        .clamp_timeout(headers::requested_timeout(&parts.headers)?);
    let provider = headers::requested_provider(&parts.headers)?;
    let mut outgoing_headers = parts.headers;
    headers::sanitise_request(&mut outgoing_headers);
    let (url, decision) = decide_and_hook(
        shared,
        &parts.method,
        url,
        provider.as_deref(),
        &mut outgoing_headers,
        record,
    )
    .await?;
    if websocket.is_some() {
        websocket::check_allowed(shared, &decision, &url)?;
        websocket::handshake_headers(&mut outgoing_headers);
    }
    let limit = shared.policy.limits.max_request_bytes;
    limits::check_declared_length(&outgoing_headers, limit)?;
    apply_team_edits(&mut outgoing_headers, &decision);
    outgoing_headers.remove(header::CONTENT_LENGTH);
    headers::set_host(&mut outgoing_headers, &url)?;
    headers::add_via(&mut outgoing_headers);
    let body = body.read(limit, timeout).await?;
    record.bytes_up = body.len() as u64;
    let attached = credentials::attach(
        &shared.credentials,
        &shared.policy,
        &url,
        provider.as_deref(),
        &mut outgoing_headers,
        &body,
    )
    .map_err(|refused| {
        record.finding = refused.finding;
        refused.error
    })?;
    record.credentials = attached.providers;
    if attached.redact {
        // Compressed bodies cannot be searched for echoed secrets.
        outgoing_headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
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
        redact: attached.redact,
        upgrade: websocket.is_some(),
    };
    let sent = upstream::attempts(shared, &outgoing, record).await?;
    if let Some(requested) = websocket {
        if sent.response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return websocket::switch(shared, &outgoing, sent, record.clone(), requested).await;
        }
    }
    response::relay(shared, &outgoing, sent, record.clone(), delivery).await
}

fn set_decision(record: &mut Traffic, decision: &Decision) {
    record.decision = Verdict::Allow;
    record.reason = decision.reason.as_str().to_owned();
    record.rule = decision.rule.clone();
}

/// decide → resolve → decide, then the `before_http` hooks; a rewritten URL is decided again.
async fn decide_and_hook(
    shared: &Shared,
    method: &Method,
    url: NormalizedUrl,
    credential: Option<&str>,
    headers: &mut HeaderMap,
    record: &mut Traffic,
) -> Result<(NormalizedUrl, Decision), ProxyError> {
    let names = team_header_names(shared, headers);
    let decision = gate::clear(shared, method.as_str(), &url, false, &names, credential).await?;
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
    record.set_url(&url);
    let names = team_header_names(shared, headers);
    let decision = gate::clear(shared, method.as_str(), &url, false, &names, credential).await?;
    set_decision(record, &decision);
    Ok((url, decision))
}

/// The header names a team module reads (`input.request.header_names`); none are collected
/// for a policy without one, which never reads them.
fn team_header_names(shared: &Shared, headers: &HeaderMap) -> Vec<String> {
    if shared.policy.has_team_rules() {
        headers::names(headers)
    } else {
        Vec::new()
    }
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
