//! The upstream attempts of one decided request: take a budgeted attempt (and the team's
//! quotas, whose refusal gives the budget back and may be waited out), reuse a pooled
//! connection to a decided address or dial one (TLS on top for `https`, HTTP/2 when the
//! upstream's ALPN picks it), sign it when the team has Web Bot Auth, exchange, and decide
//! whether to retry (retryable status, refused or reset connection, connect timeout) and how
//! long to wait.

use super::pool::Turn;
use super::transport::{DialError, DialTarget, Upstream};
use super::{exchange, pool, retry};
use crate::audit::{Outcome, Protocol, QuotaRecord, Traffic};
use crate::proxy::errors::{ErrorCode, ProxyError};
use crate::proxy::finish::{finish, millis};
use crate::proxy::tls::upstream::Offer;
use crate::proxy::tls::HandshakeError;
use crate::proxy::Shared;
use crate::quota::{Admission, ByteMeter, QuotaRefusal};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::Instant as Deadline;
use tollgate_policy::model::Retry;
use tollgate_policy::url::NormalizedUrl;
use tollgate_policy::Decision;

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
    /// The response may echo a secret: buffer it and redact.
    pub redact: bool,
    /// An allowed WebSocket handshake: dialed afresh (never pooled), HTTP/1.1 whatever the
    /// upstream offers, on a connection that can switch protocols on a `101`
    /// (`hyper::upgrade::on(response)` then yields the upstream's side of the session).
    pub upgrade: bool,
}

/// The final attempt's response, to be relayed.
pub(crate) struct Sent {
    pub response: Response<Incoming>,
    pub peer: SocketAddr,
    pub connection: (pool::Key, pool::Sender),
    pub attempt: u32,
    pub started: Instant,
    pub deadline: Deadline,
    /// The team's byte budgets the response must stay within (`None`: no `bytes_per_day`).
    pub meter: Option<ByteMeter>,
    /// What tollgate spoke to the upstream on this attempt.
    pub protocol: Protocol,
}

/// Why an attempt produced no response.
enum Failure {
    Dial(DialError),
    /// The upstream closed or reset the connection before a response head.
    Reset(SocketAddr, hyper::Error),
    /// The upstream sent something that is not an HTTP response.
    Invalid(SocketAddr, hyper::Error),
    /// No response head before the deadline.
    HeadTimeout(SocketAddr),
    /// The upstream's TLS refused (certificate, protocol): not retried.
    Tls(SocketAddr, String),
    /// The connection broke during the TLS handshake: retried like a reset.
    TlsReset(SocketAddr, std::io::Error),
}

impl Failure {
    fn retryable(&self) -> bool {
        matches!(
            self,
            Failure::Dial(_) | Failure::Reset(..) | Failure::TlsReset(..)
        )
    }

    fn peer(&self) -> Option<SocketAddr> {
        match self {
            Failure::Dial(_) => None,
            Failure::Reset(peer, _)
            | Failure::Invalid(peer, _)
            | Failure::HeadTimeout(peer)
            | Failure::Tls(peer, _)
            | Failure::TlsReset(peer, _) => Some(*peer),
        }
    }

    fn describe(&self) -> String {
        match self {
            Failure::Dial(DialError::TimedOut) => "connect timeout".into(),
            Failure::Dial(DialError::Failed(e)) => format!("connect failed: {e}"),
            Failure::Reset(_, e) => format!("connection closed before a response: {}", why(e)),
            Failure::Invalid(_, e) => format!("invalid response: {}", why(e)),
            Failure::HeadTimeout(_) => "no response before the timeout".into(),
            Failure::Tls(_, reason) => format!("TLS failed: {reason}"),
            Failure::TlsReset(_, e) => format!("connection closed during the TLS handshake: {e}"),
        }
    }

    fn into_error(self, url: &NormalizedUrl, timeout: Duration) -> ProxyError {
        let host = url.authority();
        match self {
            Failure::Dial(DialError::TimedOut) | Failure::HeadTimeout(_) => ProxyError::new(
                ErrorCode::Timeout,
                format!("{host} did not answer within {timeout:?}; send Tollgate-Timeout: <seconds> to wait longer (up to limits.max_timeout)"),
            ),
            Failure::Dial(DialError::Failed(e)) => ProxyError::new(
                ErrorCode::ConnectError,
                format!("could not connect to {host}: {e}"),
            ),
            Failure::Reset(_, e) => ProxyError::new(
                ErrorCode::ConnectError,
                format!("{host} closed the connection before responding: {}", why(&e)),
            ),
            Failure::Invalid(_, e) => ProxyError::new(
                ErrorCode::ConnectError,
                format!("{host} sent an invalid HTTP response: {}", why(&e)),
            ),
            Failure::Tls(_, reason) => ProxyError::new(
                ErrorCode::UpstreamTlsError,
                format!("the TLS connection to {host} failed: {reason}"),
            ),
            Failure::TlsReset(_, e) => ProxyError::new(
                ErrorCode::ConnectError,
                format!("{host} closed the connection during the TLS handshake: {e}"),
            ),
        }
    }
}

/// Attempts until a response worth relaying, retrying what the policy retries. Each retried
/// attempt is completed (`retrying`) with its own record.
pub(crate) async fn attempts(
    shared: &Arc<Shared>,
    outgoing: &Outgoing,
    record: &mut Traffic,
) -> Result<Sent, ProxyError> {
    let retry = &shared.policy.retry;
    // A wait for a quota never outlasts the request's own timeout.
    let waits_end_by = Deadline::now() + outgoing.timeout;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        record.attempt = Some(attempt);
        record.address = None;
        shared
            .budget
            .take()
            .map_err(|e| e.with_reason("max_requests"))?;
        let started = Instant::now();
        let last = attempt >= retry.attempts;
        let admission = match admit(shared, outgoing).await {
            Ok(admission) => admission,
            Err(refusal) => {
                // Not dialed: the execution's budget is not spent on it.
                shared.budget.give_back();
                let error = ProxyError::from_quota(refusal);
                let wait = (!last)
                    .then(|| quota_wait(retry, attempt + 1, &error, waits_end_by))
                    .flatten();
                let Some(wait) = wait else {
                    return Err(error);
                };
                let mut retried = record.clone();
                retried.outcome = Outcome::Retrying;
                retried.reason = error.reason.clone();
                retried.error = Some(error.code.as_str());
                retried.message = Some(error.message.clone());
                retried.status = Some(error.code.status().as_u16());
                retried.quota = error.quota.as_deref().map(QuotaRecord::of);
                retried.retry_wait_ms = Some(millis(wait));
                finish(shared, retried, started);
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        shared.stats.attempt(&outgoing.origin, attempt > 1);
        let deadline = Deadline::now() + outgoing.timeout;
        let mut retried = record.clone();
        retried.outcome = Outcome::Retrying;
        let wait = match one_attempt(shared, outgoing, deadline).await {
            Ok(Exchanged {
                response,
                peer,
                connection,
            }) => {
                let status = response.status();
                record.address = Some(peer.to_string());
                if last || !retry::retryable_status(retry, status) {
                    let protocol = connection.1.protocol();
                    return Ok(Sent {
                        response,
                        peer,
                        connection,
                        attempt,
                        started,
                        deadline,
                        meter: admission.meter,
                        protocol,
                    });
                }
                retried.address = Some(peer.to_string());
                retried.status = Some(status.as_u16());
                retry::wait_before(retry, attempt + 1, Some(response.headers()))
            }
            Err(failure) => {
                record.address = failure.peer().map(|p| p.to_string());
                if last || !failure.retryable() {
                    return Err(failure.into_error(&outgoing.url, outgoing.timeout));
                }
                retried.address = record.address.clone();
                retried.error = Some(ErrorCode::ConnectError.as_str());
                retried.message = Some(failure.describe());
                retry::wait_before(retry, attempt + 1, None)
            }
        };
        retried.retry_wait_ms = Some(millis(wait));
        finish(shared, retried, started);
        tokio::time::sleep(wait).await;
    }
}

/// Takes the attempt from the team's quotas, when the policy has any.
async fn admit(shared: &Shared, outgoing: &Outgoing) -> Result<Admission, Box<QuotaRefusal>> {
    match &shared.quotas {
        None => Ok(Admission { meter: None }),
        Some(quotas) => {
            let body = outgoing.body.len() as u64;
            quotas.admit(&outgoing.url.host, body).await
        }
    }
}

/// How long to wait before attempt `next` after a quota refused this one, when the policy
/// retries its status (`429`, or `503` for a store that failed): the quota's own wait (or
/// the backoff when it named none), if that is within `retry.max_wait` and ends by
/// `waits_end_by`. `None`: answer the refusal.
fn quota_wait(
    retry: &Retry,
    next: u32,
    error: &ProxyError,
    waits_end_by: Deadline,
) -> Option<Duration> {
    if !retry::retryable_status(retry, error.code.status()) {
        return None;
    }
    let wait = match error.quota.as_ref().and_then(|q| q.retry_after) {
        Some(wait) => wait,
        None => retry::wait_before(retry, next, None),
    };
    (wait <= retry.max_wait && Deadline::now() + wait <= waits_end_by).then_some(wait)
}

/// A response head and the connection it came on (kept for reuse if its body completes).
pub(crate) struct Exchanged {
    pub response: Response<Incoming>,
    pub peer: SocketAddr,
    pub connection: (pool::Key, pool::Sender),
}

/// The request as it goes out on this attempt in `protocol` (signed afresh: each attempt
/// its own nonce).
fn upstream_request(
    shared: &Shared,
    outgoing: &Outgoing,
    protocol: Protocol,
) -> Request<Full<Bytes>> {
    let mut headers = outgoing.headers.clone();
    let (uri, version) = exchange::shape(protocol, &outgoing.url, &outgoing.target, &mut headers);
    let mut request = Request::new(Full::new(outgoing.body.clone()));
    *request.method_mut() = outgoing.method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    if let Some(signer) = shared.credentials.bot() {
        signer.sign(request.headers_mut(), &outgoing.url.authority());
    }
    request
}

/// An exchange's error as a failure: what the upstream sent that is not HTTP (an HTTP/1.1
/// head that does not parse; HTTP/2 frames h2 itself found broken) is an invalid response,
/// anything else (closed, reset, refused, `GOAWAY` with an error) a reset.
fn classify(peer: SocketAddr, error: hyper::Error) -> Failure {
    let broken_h2 = h2_error(&error).is_some_and(|e| {
        e.is_library()
            && e.reason().is_some_and(|reason| {
                matches!(
                    reason,
                    h2::Reason::PROTOCOL_ERROR
                        | h2::Reason::FRAME_SIZE_ERROR
                        | h2::Reason::COMPRESSION_ERROR
                )
            })
    });
    if error.is_parse() || error.is_parse_status() || broken_h2 {
        Failure::Invalid(peer, error)
    } else {
        Failure::Reset(peer, error)
    }
}

/// hyper's words for an exchange's error; for HTTP/2, h2's too (hyper says only "http2
/// error"; h2 says which frame: "stream error received: refused stream before processing
/// any application logic").
fn why(error: &hyper::Error) -> String {
    match h2_error(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

fn h2_error(error: &hyper::Error) -> Option<&h2::Error> {
    std::error::Error::source(error)?.downcast_ref::<h2::Error>()
}

/// Whether a request on a pooled connection certainly never reached the upstream's
/// application, so a fresh connection is the same attempt: the connection had closed before
/// the request was written (hyper's `canceled`), or, on HTTP/2, the upstream refused the
/// stream (`REFUSED_STREAM`, RFC 9113 §8.7) or announced a graceful `GOAWAY` whose last
/// stream is below it (§6.8).
fn unprocessed(error: &hyper::Error) -> bool {
    if error.is_canceled() {
        return true;
    }
    h2_error(error).is_some_and(|e| {
        let reason = e.reason();
        (e.is_reset() && e.is_remote() && reason == Some(h2::Reason::REFUSED_STREAM))
            || (e.is_go_away() && e.is_remote() && reason == Some(h2::Reason::NO_ERROR))
    })
}

/// A pooled connection to a decided address, else dial one → send → response head, all
/// before `deadline`.
async fn one_attempt(
    shared: &Shared,
    outgoing: &Outgoing,
    deadline: Deadline,
) -> Result<Exchanged, Failure> {
    let addresses = &outgoing.decision.addresses;
    let port = outgoing.url.port;
    // A WebSocket handshake gets a connection of its own, never a pooled one.
    let mut turn = None;
    if !outgoing.upgrade {
        loop {
            if let Some(done) = on_pooled(shared, outgoing, deadline).await {
                return done;
            }
            match shared.pool.dial_turn(&outgoing.origin) {
                Turn::Free => break,
                Turn::Mine(mine) => {
                    turn = Some(mine);
                    break;
                }
                // Its connection may be HTTP/2, to share; past the deadline, the dial below
                // reports the timeout.
                Turn::Wait(dial) => {
                    if tokio::time::timeout_at(deadline, dial.ended())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    }
    let remaining = deadline.saturating_duration_since(Deadline::now());
    let host = outgoing.url.host_str();
    let target = DialTarget {
        host: &host,
        port,
        addresses,
        connect_timeout: shared.settings.connect_timeout.min(remaining),
    };
    let dialed = shared.transport.dial(target).await.map_err(Failure::Dial)?;
    let peer = dialed.peer;
    // Plain `http://` upstreams are spoken to in HTTP/1.1 (no HTTP/2 without TLS).
    let (stream, protocol) = if outgoing.url.scheme == "https" {
        let offer = match outgoing.upgrade {
            true => Offer::Http1Only,
            false => Offer::Http2OrHttp1,
        };
        let handshake = secure(shared, &outgoing.url, dialed.stream, peer, offer);
        match tokio::time::timeout_at(deadline, handshake).await {
            Err(_) => return Err(Failure::HeadTimeout(peer)),
            Ok(secured) => secured?,
        }
    } else {
        (dialed.stream, Protocol::Http1)
    };
    let key = pool::Key {
        origin: outgoing.origin.clone(),
        peer,
    };
    let exchanged = async {
        let mut sender = exchange::handshake(stream, protocol, outgoing.upgrade).await?;
        // An HTTP/2 connection is shared from now on: requests arriving while this one
        // waits for its answer go on it too, and those that waited for this dial wake.
        shared.pool.connected(&key, &sender);
        drop(turn);
        let response = sender
            .send(upstream_request(shared, outgoing, protocol))
            .await?;
        Ok::<_, hyper::Error>((response, sender))
    };
    match tokio::time::timeout_at(deadline, exchanged).await {
        Err(_) => Err(Failure::HeadTimeout(peer)),
        Ok(Err(error)) => Err(classify(peer, error)),
        Ok(Ok((response, sender))) => Ok(Exchanged {
            response,
            peer,
            connection: (key, sender),
        }),
    }
}

/// The request on a pooled connection to a decided address, if there is one that takes
/// it. `None`: nothing pooled, or the connection did not take the request.
async fn on_pooled(
    shared: &Shared,
    outgoing: &Outgoing,
    deadline: Deadline,
) -> Option<Result<Exchanged, Failure>> {
    let addresses = &outgoing.decision.addresses;
    let port = outgoing.url.port;
    let (key, mut sender) = shared.pool.take(&outgoing.origin, port, addresses).await?;
    let peer = key.peer;
    let request = upstream_request(shared, outgoing, sender.protocol());
    let sent = sender.send(request);
    match tokio::time::timeout_at(deadline, sent).await {
        Err(_) => Some(Err(Failure::HeadTimeout(peer))),
        Ok(Ok(response)) => Some(Ok(Exchanged {
            response,
            peer,
            connection: (key, sender),
        })),
        // The upstream had closed the idle connection before the request was written, or
        // refused the stream unprocessed: nothing reached it, so a fresh connection is the
        // same attempt. Any other failure may have reached the upstream and is an attempt of
        // its own, counted, audited and retried by the caller like every other.
        Ok(Err(error)) if unprocessed(&error) => {
            shared.pool.evict(&key, &sender);
            tracing::debug!(
                "pooled connection to {peer} did not take the request ({error}); dialing afresh"
            );
            None
        }
        Ok(Err(error)) => Some(Err(classify(peer, error))),
    }
}

/// TLS over a dialed stream, verified for the URL's host, offering `offer` by ALPN; the
/// stream and the protocol the upstream chose.
async fn secure(
    shared: &Shared,
    url: &NormalizedUrl,
    stream: Box<dyn Upstream>,
    peer: SocketAddr,
    offer: Offer,
) -> Result<(Box<dyn Upstream>, Protocol), Failure> {
    let tls = shared
        .tls
        .as_ref()
        .map_err(|reason| Failure::Tls(peer, reason.clone()))?;
    match tls.upstream().connect(&url.host, stream, offer).await {
        Ok((stream, protocol)) => Ok((Box::new(stream), protocol)),
        Err(HandshakeError::Tls(reason)) => Err(Failure::Tls(peer, reason)),
        Err(HandshakeError::Io(error)) => Err(Failure::TlsReset(peer, error)),
    }
}
