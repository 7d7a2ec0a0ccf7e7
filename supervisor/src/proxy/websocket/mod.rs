//! WebSocket through tollgate: an upgrade is one request, decided, counted and credentialed
//! like any other, then a session relayed message by message under the tunnel limits.
//!
//! Why message by message and not byte for byte: tollgate terminates both legs
//! (tokio-tungstenite's codec over the connections hyper upgraded), so it counts data, not
//! frame overhead, closes a session it ends with a real Close frame (1008, 1009, 1001) the
//! client can read, and redacts echoed secrets in the upstream's messages. The steps, as
//! `pipeline::steps` calls them:
//!
//! - [`requested`] (before the headers are sanitised): is this a WebSocket handshake, and a
//!   well-formed one ([`handshake`]);
//! - [`check_allowed`] (after the decision): only an allow entry with `websocket: true`;
//! - [`handshake_headers`]: `Upgrade`/`Connection` put back for the upstream, no extension;
//! - [`switch`] (the upstream answered `101`): both legs upgraded, the `101` for the
//!   sandbox, and the [`session`] spawned; it writes the one record when it ends.
//!
//! Not done: placeholders inside messages are not swapped (only the handshake's headers are
//! credentialed), no extension (permessage-deflate) is negotiated through tollgate, and
//! WebSocket over HTTP/2 (RFC 8441) is not offered.

mod ending;
mod handshake;
mod session;

use super::body::ProxyBody;
use super::errors::{ErrorCode, ProxyError};
use super::upstream::{Outgoing, Sent};
use super::{ConnContext, Shared};
use crate::audit::Traffic;
use http::Response;
use std::sync::Arc;

pub(crate) use handshake::{check_allowed, handshake_headers, requested};

/// The largest WebSocket message (and frame) either side may send through tollgate: 16 MiB,
/// tungstenite's own frame limit. A whole message is held in memory before it is relayed
/// (to count and redact it), so this bounds a session's memory; a larger one closes the
/// session with 1009 (`message_too_large`).
pub(crate) const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A WebSocket upgrade the sandbox asked for: its side of the connection once hyper
/// switches it, and the connection's context (guard, shutdown, slot) the session keeps.
pub(crate) struct Requested {
    pub client: hyper::upgrade::OnUpgrade,
    pub conn: Option<ConnContext>,
}

/// The upstream switched protocols: the upstream's connection is taken over (before the
/// sandbox is told anything, so a connection that cannot switch is an ordinary `502`), the
/// session is spawned (relayed message by message under the session limits until it ends,
/// then its record), and the `101` for the sandbox is returned.
pub(crate) async fn switch(
    shared: &Arc<Shared>,
    outgoing: &Outgoing,
    mut sent: Sent,
    mut record: Traffic,
    requested: Requested,
) -> Result<Response<ProxyBody>, ProxyError> {
    let host = outgoing.url.authority();
    record.address = Some(sent.peer.to_string());
    record.attempt = Some(sent.attempt);
    record.upstream_protocol = Some(sent.protocol);
    record.status = Some(sent.response.status().as_u16());
    handshake::check_answer(sent.response.headers(), &host)?;
    let answer = handshake::answer(sent.response.headers());
    let upgrade = hyper::upgrade::on(&mut sent.response);
    let upstream = match tokio::time::timeout_at(sent.deadline, upgrade).await {
        Ok(Ok(upgraded)) => upgraded,
        Ok(Err(error)) => {
            return Err(ProxyError::new(
                ErrorCode::ConnectError,
                format!(
                    "{host} answered 101 but its connection could not switch protocols: {error}"
                ),
            ))
        }
        Err(_) => {
            return Err(ProxyError::new(
                ErrorCode::Timeout,
                format!(
                    "{host} did not switch protocols within {:?}",
                    outgoing.timeout
                ),
            ))
        }
    };
    let session = session::Session {
        shared: shared.clone(),
        record,
        started: sent.started,
        meter: sent.meter,
        redact: outgoing.redact,
        conn: requested.conn,
    };
    // The HTTP/1.1 client connection has been handed over; nothing goes back to the pool.
    drop(sent.connection);
    tokio::spawn(session.run(requested.client, upstream));
    Ok(answer)
}

/// The refusal for a handshake that is not well formed.
fn invalid(message: impl Into<String>) -> ProxyError {
    ProxyError::new(ErrorCode::InvalidRequest, message)
}
