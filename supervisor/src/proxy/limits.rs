//! Per-execution limits enforced on the request side: the `max_requests` budget (checked
//! before every upstream attempt) and `max_request_bytes` (checked on `Content-Length`
//! before any byte is read, then counted while the body streams in); and the response
//! body read whole under `max_response_bytes` (with its trailers).
//!
//! A refused request's body is read and thrown away before the refusal is sent (up to
//! [`DRAIN_LIMIT`], within the request timeout), as nginx's lingering close does: a server
//! that answers and closes while the client is still sending makes the kernel reset the
//! connection, and the client reads `Broken pipe` or a TLS EOF instead of its `413`.

use super::errors::{ErrorCode, ProxyError};
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// At most this much of a refused request's body is read (and thrown away) so that its client
/// gets to read the refusal; a client that sends more gets the answer and a closed connection.
pub(crate) const DRAIN_LIMIT: u64 = 256 * 1024 * 1024;

/// The execution's upstream attempts: every attempt (retries and tunnels included) takes one.
pub(crate) struct Budget {
    max: u64,
    used: AtomicU64,
}

impl Budget {
    pub fn new(max: u64) -> Budget {
        Budget {
            max,
            used: AtomicU64::new(0),
        }
    }

    /// Takes one attempt, or refuses with `request_limit_exceeded` when none is left.
    pub fn take(&self) -> Result<(), ProxyError> {
        self.used
            .try_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < self.max).then_some(used + 1)
            })
            .map(|_| ())
            .map_err(|_| {
                ProxyError::new(
                    ErrorCode::RequestLimitExceeded,
                    format!(
                        "this execution has used all {} upstream requests its team allows (limits.max_requests)",
                        self.max
                    ),
                )
            })
    }

    /// Returns an attempt that was taken and never dialed (a team quota refused it).
    pub fn give_back(&self) {
        let _ = self
            .used
            .try_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_sub(1)
            });
    }
}

/// The reason of a request whose client went away while its body was read: the pipeline
/// records it `cancelled`, not refused (there is no one to answer).
pub(crate) const CANCELLED: &str = "cancelled";

/// Whether a request body broke because its client went away: it closed the connection
/// mid-body (HTTP/1.1), or reset its stream or the connection (HTTP/2), rather than sending
/// something malformed.
fn client_went_away(error: &hyper::Error) -> bool {
    use std::error::Error as _;
    let h2 = error.source().and_then(|s| s.downcast_ref::<h2::Error>());
    error.is_incomplete_message()
        || error.is_canceled()
        || error.is_closed()
        || h2.is_some_and(|e| e.is_io() || (e.is_remote() && (e.is_reset() || e.is_go_away())))
}

fn too_large(limit: u64) -> ProxyError {
    ProxyError::new(
        ErrorCode::RequestTooLarge,
        format!(
            "the request body is larger than the {limit}-byte limit (limits.max_request_bytes)"
        ),
    )
}

/// Fails fast on a declared `Content-Length` above `limit`, before the body is read (and
/// so before a `100 Continue` is sent).
pub(crate) fn check_declared_length(headers: &HeaderMap, limit: u64) -> Result<(), ProxyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit => Err(too_large(limit)),
        _ => Ok(()),
    }
}

/// The sandbox's request body, held until the request is answered: read whole for the
/// upstream, or, when the request is refused, read and thrown away first.
pub(crate) struct RequestBody {
    body: Incoming,
    /// The client waits for `100 Continue` before it sends the body (hyper sends that when
    /// the body is first read).
    awaits_continue: bool,
    /// Reading started: any `100 Continue` went out, the client is sending.
    started: bool,
    /// The body broke or stalled: nothing more can be read from it.
    broken: bool,
}

impl RequestBody {
    pub fn new(body: Incoming, headers: &HeaderMap) -> RequestBody {
        let awaits_continue = headers
            .get(header::EXPECT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
        RequestBody {
            body,
            awaits_continue,
            started: false,
            broken: false,
        }
    }

    /// Reads the whole body, at most `limit` bytes within `timeout`, so it can be replayed
    /// on retries.
    pub async fn read(&mut self, limit: u64, timeout: Duration) -> Result<Bytes, ProxyError> {
        self.started = true;
        let mut buffer = BytesMut::new();
        let read = async {
            while let Some(frame) = self.body.frame().await {
                let frame = frame.map_err(|e| {
                    let error = ProxyError::new(
                        ErrorCode::InvalidRequest,
                        format!("the request body could not be read: {e}"),
                    );
                    if client_went_away(&e) {
                        error.with_reason(CANCELLED)
                    } else {
                        error
                    }
                })?;
                if let Ok(data) = frame.into_data() {
                    if (buffer.len() as u64).saturating_add(data.len() as u64) > limit {
                        return Err(too_large(limit));
                    }
                    buffer.extend_from_slice(&data);
                }
            }
            Ok(())
        };
        let result = match tokio::time::timeout(timeout, read).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::new(
                ErrorCode::ClientTimeout,
                format!("the request body did not arrive within {timeout:?}"),
            )),
        };
        if let Err(error) = &result {
            self.broken = error.code != ErrorCode::RequestTooLarge;
        }
        result.map(|()| buffer.freeze())
    }

    /// Makes a refusal readable before it is sent: reads and throws away what is left of the
    /// body (at most [`DRAIN_LIMIT`] bytes within `within`), unless the client still waits
    /// for `100 Continue` (it has sent nothing and will send nothing) or the body is broken.
    /// Returns whether the connection must close after the refusal: whenever the body had not
    /// been read to its end.
    pub async fn settle(&mut self, within: Duration) -> bool {
        if self.body.is_end_stream() {
            return false;
        }
        if self.broken || (self.awaits_continue && !self.started) {
            return true;
        }
        let body = &mut self.body;
        let drain = async {
            let mut thrown = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    thrown = thrown.saturating_add(data.len() as u64);
                    if thrown > DRAIN_LIMIT {
                        return;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(within, drain).await;
        true
    }
}

/// Reads a whole response body (to search it for echoed secrets), at most `limit` bytes,
/// and its trailers, if it has any (not counted: hyper bounds a trailer block as it bounds a
/// head).
pub(crate) async fn read_response(
    body: Incoming,
    limit: u64,
    authority: &str,
) -> Result<(Bytes, Option<HeaderMap>), ProxyError> {
    let mut body = body;
    let mut buffer = BytesMut::new();
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ProxyError::new(
                ErrorCode::ConnectError,
                format!("the response body from {authority} broke off: {e}"),
            )
        })?;
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(more) = frame.into_trailers() {
                    trailers.get_or_insert_with(HeaderMap::new).extend(more);
                }
                continue;
            }
        };
        if (buffer.len() as u64).saturating_add(data.len() as u64) > limit {
            return Err(ProxyError::new(
                ErrorCode::ResponseTooLarge,
                format!(
                    "the response from {authority} is larger than the {limit}-byte limit (limits.max_response_bytes)"
                ),
            ));
        }
        buffer.extend_from_slice(&data);
    }
    Ok((buffer.freeze(), trailers))
}
