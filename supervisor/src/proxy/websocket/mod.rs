//! WebSocket through tollgate (STUB: the WebSocket helper replaces this with the real
//! module; signatures are the contract in /work/briefs/contract-14.md).

use super::body::ProxyBody;
use super::errors::ProxyError;
use super::upstream::{Outgoing, Sent};
use super::{ConnContext, Shared};
use crate::audit::Traffic;
use http::request::Parts;
use http::{HeaderMap, Response};
use std::sync::Arc;
use tollgate_policy::url::NormalizedUrl;
use tollgate_policy::Decision;

/// A WebSocket upgrade the sandbox asked for: its side of the connection once hyper
/// switches it, and the connection's context (guard, shutdown, slot) the session keeps.
pub(crate) struct Requested {
    pub client: hyper::upgrade::OnUpgrade,
    pub conn: Option<ConnContext>,
}

/// Whether this request asks to upgrade to WebSocket (`GET`, HTTP/1.1, `Upgrade:
/// websocket`, `Connection: upgrade`); takes the client's `OnUpgrade` (and the
/// [`ConnContext`]) from `parts.extensions`. A malformed upgrade is refused.
pub(crate) fn requested(_parts: &mut Parts) -> Result<Option<Requested>, ProxyError> {
    Ok(None)
}

/// Refuses the upgrade unless the allow entry that decided it says `websocket: true`; the
/// message names the option.
pub(crate) fn check_allowed(
    _shared: &Shared,
    _decision: &Decision,
    _url: &NormalizedUrl,
) -> Result<(), ProxyError> {
    Ok(())
}

/// The handshake's headers as they go upstream: `Upgrade: websocket` and `Connection:
/// Upgrade` put back (`sanitise_request` removed them), `Sec-WebSocket-Extensions` removed
/// (tollgate reads every message, so no extension is negotiated through it).
pub(crate) fn handshake_headers(_headers: &mut HeaderMap) {}

/// The upstream switched protocols: the session is spawned (relayed message by message
/// under the session limits until it ends, then its record), and the `101` for the sandbox
/// is returned.
pub(crate) fn switch(
    _shared: &Arc<Shared>,
    _outgoing: &Outgoing,
    _sent: Sent,
    _record: Traffic,
    _requested: Requested,
) -> Result<Response<ProxyBody>, ProxyError> {
    Err(ProxyError::new(
        super::errors::ErrorCode::ConnectError,
        "WebSocket sessions are not built yet",
    ))
}
