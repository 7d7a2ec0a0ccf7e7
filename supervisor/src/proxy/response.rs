//! The upstream's final response on its way to the sandbox: checked against the limits
//! before its head is sent (`Content-Length` over `max_response_bytes` or a byte budget),
//! hop-by-hop and tollgate's own headers removed, `Via` added, echoed secrets redacted, the
//! `after_http` hooks told, then the body streamed under its limits ([`RelayBody`]) or
//! buffered whole, its trailers after it either way.

use super::body::{self, ProxyBody};
use super::credentials::redact::{self, stream::Replacement, stream::StreamRedactor};
use super::errors::{ErrorCode, ProxyError};
use super::hooks::HookResponse;
use super::http1::Delivery;
use super::relay::{Finish, RelayBody, MAX_BUFFERED};
use super::{headers, limits, upstream, Shared};
use crate::audit::{Finding, Outcome, Traffic};
use crate::quota::ByteMeter;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use std::sync::Arc;
use tollgate_policy::url::NormalizedUrl;
use upstream::Outgoing;

/// Relays the final response: size check on `Content-Length`, hop-by-hop removal, `Via`,
/// redaction of echoed secrets, `after_http` hooks, then the body under its limits: streamed
/// (see `relay`), or buffered whole when it has no length while the limit is small enough to
/// hold ([`MAX_BUFFERED`]), so that an over-limit body is a `response_too_large` refusal
/// instead of a truncated answer; event streams and gRPC, which must not wait for their end,
/// stream and are aborted at the limit ([`must_stream`]).
///
/// A body from a credential scope is searched for echoed secrets the way it travels: whole
/// when buffered, chunk by chunk when it streams (a [`StreamRedactor`]; its `Content-Length`
/// goes, since a replacement changes the length, except for gRPC, whose secrets are replaced
/// byte for byte so that its length-prefixed messages keep their lengths). Streaming it
/// rather than holding it whole as before keeps a large download from a credential scope
/// out of memory and an event stream live; what it costs is the exact `Content-Length`.
///
/// What the sandbox gets is tollgate's own HTTP/1.1 message, not a copy of the upstream's:
/// an HTTP/1.0 answer copied as such would reach the sandbox close-delimited, where a body
/// cut short looks complete (hyper answers an HTTP/1.0 client in HTTP/1.0 by itself); and the
/// upstream's reason phrase (which hyper keeps in an extension for its server to repeat) may
/// carry anything, an echoed secret included: the sandbox gets the standard one.
pub(crate) async fn relay(
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
    record.upstream_protocol = Some(sent.protocol);
    record.status = Some(parts.status.as_u16());
    let limit = shared.policy.limits.max_response_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        // Only an allowed WebSocket handshake may switch (`websocket::switch` takes those).
        return Err(ProxyError::new(
            ErrorCode::ConnectError,
            format!(
                "{} answered 101 Switching Protocols to a request that did not ask to upgrade",
                outgoing.url.authority()
            ),
        ));
    }
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
    headers::sanitise_response(&mut parts.headers);
    if parts.status == StatusCode::NO_CONTENT {
        // RFC 9110 §8.6: never in a 204. HTTP/1.1 clients ignore one; an HTTP/2 client
        // (nghttp2: curl) resets the stream as malformed.
        parts.headers.remove(header::CONTENT_LENGTH);
    }
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
    if unknown_length && limit <= MAX_BUFFERED && !must_stream(&parts) {
        let read = Read {
            limit,
            deadline: sent.deadline,
            meter,
        };
        return buffered(shared, outgoing, parts, body, read, finish).await;
    }
    let redactor = if outgoing.redact && !bodiless {
        if let Err(refused) = check_searchable(outgoing, &parts) {
            finish.abandon();
            return Err(refused);
        }
        let replacement = if is_grpc(&parts) {
            Replacement::SameLength
        } else {
            parts.headers.remove(header::CONTENT_LENGTH);
            Replacement::Text
        };
        let needles = shared.credentials.needles().clone();
        Some(StreamRedactor::new(needles, replacement))
    } else {
        None
    };
    let deadline = Box::pin(tokio::time::sleep_until(sent.deadline));
    let body = RelayBody::new(body, limit, deadline, delivery, finish)
        .metered(meter)
        .redacted(redactor);
    Ok(Response::from_parts(parts, body.boxed()))
}

/// Bodies that are read as they arrive, never held until they end: event streams, which
/// never end, and gRPC, whose server-streaming calls send each message when it is ready.
fn must_stream(parts: &http::response::Parts) -> bool {
    is_event_stream(parts) || is_grpc(parts)
}

/// The media type of the response, lower case, without parameters.
fn media_type(parts: &http::response::Parts) -> Option<String> {
    parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
}

/// A stream of events (server-sent events, newline-delimited JSON) has no end to wait for:
/// holding it until it ends would hold back every event. It streams even when its limit
/// could be buffered, and one byte over the limit aborts it (no last chunk), so no client
/// takes a cut stream as complete.
fn is_event_stream(parts: &http::response::Parts) -> bool {
    media_type(parts).is_some_and(|v| {
        matches!(
            v.as_str(),
            "text/event-stream" | "application/x-ndjson" | "application/jsonl"
        )
    })
}

/// gRPC (`application/grpc`, `application/grpc+proto`, …) and gRPC-Web
/// (`application/grpc-web`, `application/grpc-web-text+proto`, …): messages framed with
/// their length.
fn is_grpc(parts: &http::response::Parts) -> bool {
    media_type(parts).is_some_and(|v| {
        [
            "application/grpc",
            "application/grpc-web",
            "application/grpc-web-text",
        ]
        .iter()
        .any(|grpc| v == *grpc || v.strip_prefix(grpc).is_some_and(|s| s.starts_with('+')))
    })
}

/// A compressed body cannot be searched for secrets: tollgate asked for
/// `Accept-Encoding: identity`, so one from a credential scope is refused.
fn check_searchable(outgoing: &Outgoing, parts: &http::response::Parts) -> Result<(), ProxyError> {
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("identity"));
    match encoded {
        Some(encoding) => Err(ProxyError::new(
            ErrorCode::ConnectError,
            format!(
                "{} answered with a {encoding}-encoded body although tollgate asked for none; bodies from credential scopes must be readable so echoed secrets can be removed",
                outgoing.url.authority()
            ),
        )
        .with_reason("encoded_response")),
        None => Ok(()),
    }
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
/// every secret when `outgoing.redact` (a compressed one is refused there:
/// [`check_searchable`]), and sent with its length; or, when the upstream sent trailers,
/// with them after it, scrubbed and redacted as the head was, and then without a length
/// (an HTTP/1.1 client gets trailers only after a chunked body).
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
    if outgoing.redact {
        if let Err(refused) = check_searchable(outgoing, &parts) {
            finish.abandon();
            return Err(refused);
        }
    }
    let authority = outgoing.url.authority();
    let read = tokio::time::timeout_at(deadline, limits::read_response(body, limit, &authority));
    let (data, trailers) = match read.await {
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
        Ok(Ok(read)) => read,
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
    let trailers = trailers
        .map(|mut trailers| {
            headers::sanitise_trailers(&mut trailers);
            let needles = shared.credentials.needles();
            if outgoing.redact && redact::headers(&mut trailers, needles) > 0 {
                finish.traffic.finding = Some(Finding::SecretEchoed);
            }
            trailers
        })
        .filter(|trailers| !trailers.is_empty());
    headers::announce_trailers(
        &mut parts.headers,
        trailers.iter().flat_map(HeaderMap::keys),
    );
    let bodiless = is_bodiless(&outgoing.method, parts.status);
    if !bodiless {
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    finish.write(Outcome::Complete, data.len() as u64);
    let body = match trailers {
        Some(trailers) if !bodiless => {
            let frames = [Ok(Frame::data(data)), Ok(Frame::trailers(trailers))];
            StreamBody::new(futures_util::stream::iter(frames)).boxed()
        }
        _ => {
            if !bodiless {
                let length = HeaderValue::from(data.len());
                parts.headers.insert(header::CONTENT_LENGTH, length);
            }
            body::full(data)
        }
    };
    Ok(Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(content_type: &str) -> http::response::Parts {
        let mut parts = Response::new(()).into_parts().0;
        let value = HeaderValue::from_str(content_type).expect("a header value");
        parts.headers.insert(header::CONTENT_TYPE, value);
        parts
    }

    #[test]
    fn grpc_and_event_streams_must_stream() {
        for streams in [
            "application/grpc",
            "Application/GRPC+proto; charset=x",
            "application/grpc-web",
            "application/grpc-web+json",
            "application/grpc-web-text+proto",
            "text/event-stream",
            "application/x-ndjson",
        ] {
            assert!(must_stream(&typed(streams)), "{streams}");
        }
        for buffered in ["application/grpcx", "application/json", "text/plain"] {
            assert!(!must_stream(&typed(buffered)), "{buffered}");
        }
        assert!(is_grpc(&typed("application/grpc-web-text")));
        assert!(!is_grpc(&typed("text/event-stream")));
    }
}
