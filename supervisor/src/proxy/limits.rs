//! Per-execution limits enforced on the request side: the `max_requests` budget (checked
//! before every upstream attempt) and `max_request_bytes` (checked on `Content-Length`
//! before any byte is read, then counted while the body streams in).

use super::errors::{ErrorCode, ProxyError};
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::atomic::{AtomicU64, Ordering};

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
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
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

/// Reads the whole request body, at most `limit` bytes, so it can be replayed on retries.
pub(crate) async fn read_body(body: Incoming, limit: u64) -> Result<Bytes, ProxyError> {
    let mut body = body;
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ProxyError::new(
                ErrorCode::InvalidRequest,
                format!("the request body could not be read: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if (buffer.len() as u64).saturating_add(data.len() as u64) > limit {
                return Err(too_large(limit));
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer.freeze())
}

/// Reads a whole response body (to search it for echoed secrets), at most `limit` bytes.
pub(crate) async fn read_response(
    body: Incoming,
    limit: u64,
    authority: &str,
) -> Result<Bytes, ProxyError> {
    let mut body = body;
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ProxyError::new(
                ErrorCode::ConnectError,
                format!("the response body from {authority} broke off: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
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
    }
    Ok(buffer.freeze())
}
