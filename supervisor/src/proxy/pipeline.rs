//! The request pipeline every HTTP request takes, whether it arrived in absolute form
//! (`forward`) or inside an intercepted TLS tunnel (`intercept`): the two differ only in how
//! the URL is read.
//!
//! refuse smuggling → decide → resolve → decide on the addresses → hooks (a rewritten URL
//! goes through the gate again) → read the body under its limit → credentials (placeholders,
//! `Tollgate-Auth`, URL credentials) → attempts (`attempt`: budget, connection, TLS,
//! signature, exchange, retry) → relay the response (echoed secrets redacted) → audit.

use super::body::{self, ProxyBody};
use super::credentials::redact;
use super::errors::{ErrorCode, ProxyError};
use super::finish::refuse;
use super::hooks::{HookRequest, HookResponse, HookVerdict};
use super::http1::Delivery;
use super::relay::{Finish, RelayBody, MAX_BUFFERED};
use super::upstream::{self, Outgoing};
use super::{credentials, gate, headers, limits, Shared, Via};
use crate::audit::{Finding, Kind, Outcome, Traffic, Verdict};
use crate::quota::ByteMeter;
use bytes::Bytes;
use http::request::Parts;
use http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri, Version,
};
use http_body_util::BodyExt;
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
    let result = match url {
        Ok(url) => {
            steps(
                &shared,
                url,
                parts,
                &mut body,
                ambiguous_framing,
                &mut record,
            )
            .await
        }
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
    match result {
        Ok(response) => response,
        Err(error) => {
            let refusal = refuse(&shared, record, &error, started);
            once_readable(&shared, &mut body, refusal).await
        }
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
    parts: Parts,
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
    };
    let sent = upstream::attempts(shared, &outgoing, record).await?;
    relay(shared, &outgoing, sent, record.clone(), delivery).await
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
    let names = headers::names(headers);
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
    let names = headers::names(headers);
    let decision = gate::clear(shared, method.as_str(), &url, false, &names, credential).await?;
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
/// redaction of echoed secrets, `after_http` hooks, then the body under its limits: streamed
/// (see `relay`), or buffered whole when it must be searched for secrets or has no length
/// while the limit is small enough to hold ([`MAX_BUFFERED`]), so that an over-limit body is
/// a `response_too_large` refusal instead of a truncated answer; event streams, which never
/// end, stream and are aborted at the limit ([`is_event_stream`]).
///
/// What the sandbox gets is tollgate's own HTTP/1.1 message, not a copy of the upstream's:
/// an HTTP/1.0 answer copied as such would reach the sandbox close-delimited, where a body
/// cut short looks complete (hyper answers an HTTP/1.0 client in HTTP/1.0 by itself); and the
/// upstream's reason phrase (which hyper keeps in an extension for its server to repeat) may
/// carry anything, an echoed secret included: the sandbox gets the standard one.
async fn relay(
    shared: &Arc<Shared>,
    outgoing: &Outgoing,
    sent: upstream::Sent,
    mut record: Traffic,
    delivery: Option<Arc<Delivery>>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, body) = sent.response.into_parts();
    parts.version = Version::HTTP_11;
    parts.extensions = http::Extensions::new();
    record.address = Some(sent.peer.to_string());
    record.attempt = Some(sent.attempt);
    record.status = Some(parts.status.as_u16());
    let limit = shared.policy.limits.max_response_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bodiless = is_bodiless(&outgoing.method, parts.status);
    if !bodiless && declared.is_some_and(|length| length > limit) {
        return Err(response_too_large(&outgoing.url, limit));
    }
    let meter = sent.meter;
    if let Some(meter) = meter.as_ref().filter(|_| !bodiless) {
        if declared.is_some_and(|length| length > meter.allowance()) {
            return Err(ProxyError::from_quota(meter.exhausted()));
        }
    }
    let reusable = !parts.headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("close"))
    });
    headers::remove_hop_by_hop(&mut parts.headers);
    headers::remove_own(&mut parts.headers);
    headers::add_via(&mut parts.headers);
    if outgoing.redact {
        let needles = shared.credentials.needles();
        let changed = redact::headers(&mut parts.headers, needles);
        if changed > 0 {
            record.finding = Some(Finding::SecretEchoed);
        }
    }
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
        traffic: record,
        started: sent.started,
        reuse: reusable.then_some(sent.connection),
    };
    let unknown_length = !bodiless && declared.is_none();
    if outgoing.redact || (unknown_length && limit <= MAX_BUFFERED && !is_event_stream(&parts)) {
        let read = Read {
            limit,
            deadline: sent.deadline,
            meter,
        };
        return buffered(shared, outgoing, parts, body, read, finish).await;
    }
    let deadline = Box::pin(tokio::time::sleep_until(sent.deadline));
    let body = RelayBody::new(body, limit, deadline, delivery, finish).metered(meter);
    Ok(Response::from_parts(parts, body.boxed()))
}

/// A stream of events (server-sent events, newline-delimited JSON) has no end to wait for:
/// holding it until it ends would hold back every event. It streams even when its limit
/// could be buffered, and one byte over the limit aborts it (no last chunk), so no client
/// takes a cut stream as complete.
fn is_event_stream(parts: &http::response::Parts) -> bool {
    parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| {
            matches!(
                v.as_str(),
                "text/event-stream" | "application/x-ndjson" | "application/jsonl"
            )
        })
}

/// A HEAD answer (and every 1xx, 204 and 304) carries no body whatever its
/// `Content-Length` says.
fn is_bodiless(method: &Method, status: StatusCode) -> bool {
    method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

fn response_too_large(url: &NormalizedUrl, limit: u64) -> ProxyError {
    ProxyError::new(
        ErrorCode::ResponseTooLarge,
        format!(
            "the response from {} is larger than the {limit}-byte limit (limits.max_response_bytes)",
            url.authority()
        ),
    )
}

/// What a buffered body is read under.
struct Read {
    /// `max_response_bytes`.
    limit: u64,
    deadline: tokio::time::Instant,
    /// The team's byte budgets, when any applies.
    meter: Option<ByteMeter>,
}

/// The whole body read (under the limit, the deadline and any byte budget), searched for
/// every secret when `outgoing.redact`, and sent with its length. A compressed body cannot
/// be searched, so it is refused there: tollgate asked for `Accept-Encoding: identity`.
async fn buffered(
    shared: &Arc<Shared>,
    outgoing: &Outgoing,
    mut parts: http::response::Parts,
    body: Incoming,
    read: Read,
    mut finish: Finish,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Read {
        limit,
        deadline,
        meter,
    } = read;
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("identity"))
        .map(str::to_owned);
    if let Some(encoding) = encoded.filter(|_| outgoing.redact) {
        finish.abandon();
        return Err(ProxyError::new(
            ErrorCode::ConnectError,
            format!(
                "{} answered with a {encoding}-encoded body although tollgate asked for none; bodies from credential scopes must be readable so echoed secrets can be removed",
                outgoing.url.authority()
            ),
        )
        .with_reason("encoded_response"));
    }
    let authority = outgoing.url.authority();
    let read = tokio::time::timeout_at(deadline, limits::read_response(body, limit, &authority));
    let data = match read.await {
        Err(_) => {
            finish.abandon();
            return Err(ProxyError::new(
                ErrorCode::Timeout,
                format!(
                    "{authority} did not finish its response within {:?}",
                    outgoing.timeout
                ),
            ));
        }
        Ok(Err(error)) => {
            finish.abandon();
            return Err(error);
        }
        Ok(Ok(data)) => data,
    };
    if let Some(meter) = &meter {
        if !meter.add(data.len() as u64) {
            finish.abandon();
            return Err(ProxyError::from_quota(meter.exhausted()));
        }
    }
    let redacted = outgoing
        .redact
        .then(|| redact::bytes(&data, shared.credentials.needles()))
        .flatten();
    let data = match redacted {
        Some(clean) => {
            finish.traffic.finding = Some(Finding::SecretEchoed);
            Bytes::from(clean)
        }
        None => data,
    };
    if !is_bodiless(&outgoing.method, parts.status) {
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
    }
    finish.write(Outcome::Complete, data.len() as u64);
    Ok(Response::from_parts(parts, body::full(data)))
}
