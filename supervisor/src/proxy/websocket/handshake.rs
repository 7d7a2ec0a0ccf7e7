//! The WebSocket handshake's two halves as tollgate checks them: the sandbox's upgrade
//! request (RFC 6455 §4.1: `GET`, HTTP/1.1, `Connection: Upgrade`, a 16-byte key, version
//! 13; the allow entry's `websocket: true`), and the upstream's `101` (no extension, since
//! tollgate offered none), with the answer the sandbox gets.
//!
//! Why refuse a malformed upgrade instead of dropping `Upgrade` as any hop-by-hop header: a
//! client that asked for a WebSocket and got a plain response back cannot tell why; a `400`
//! saying what is wrong can.

use super::super::body::{self, ProxyBody};
use super::super::errors::{ErrorCode, ProxyError};
use super::super::{ConnContext, Shared};
use super::{invalid, Requested};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode, Version};
use tollgate_policy::model::EntryTarget;
use tollgate_policy::url::NormalizedUrl;
use tollgate_policy::Decision;

/// Whether this request asks to upgrade to WebSocket (`Upgrade` lists `websocket`); takes
/// the client's `OnUpgrade` (and the [`ConnContext`]) from `parts.extensions`. An upgrade
/// (`Connection` names it) that is not a well-formed RFC 6455 handshake (another method, a
/// missing or malformed key, a version other than 13, HTTP/2) is `invalid_request`.
/// Other `Upgrade` values are not WebSocket: `sanitise_request` drops them as today.
pub(crate) fn requested(parts: &mut Parts) -> Result<Option<Requested>, ProxyError> {
    // An `Upgrade` that `Connection` does not name is no upgrade (RFC 9110 §7.8): it is
    // dropped with the other hop-by-hop headers and the request answered as it is.
    if !lists(&parts.headers, header::UPGRADE, "websocket")
        || !lists(&parts.headers, header::CONNECTION, "upgrade")
    {
        return Ok(None);
    }
    match parts.version {
        Version::HTTP_11 => {}
        Version::HTTP_2 | Version::HTTP_3 => {
            return Err(invalid(
                "WebSocket over HTTP/2 (RFC 8441) is not offered through tollgate: open the WebSocket over HTTP/1.1",
            ))
        }
        _ => {
            return Err(invalid(
                "a WebSocket upgrade needs HTTP/1.1 (RFC 6455 §4.1)",
            ))
        }
    }
    if parts.method != Method::GET {
        return Err(invalid(format!(
            "a WebSocket upgrade must be a GET request (RFC 6455 §4.1), not {}",
            parts.method
        )));
    }
    let key = parts
        .headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|key| STANDARD.decode(key.as_bytes().trim_ascii()));
    match key {
        None => {
            return Err(invalid(
                "a WebSocket upgrade needs a Sec-WebSocket-Key header (RFC 6455 §4.1)",
            ))
        }
        Some(Ok(key)) if key.len() == 16 => {}
        Some(_) => {
            return Err(invalid(
                "Sec-WebSocket-Key must be 16 random bytes in base64 (RFC 6455 §4.1)",
            ))
        }
    }
    let version = parts
        .headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes().trim_ascii());
    if version != Some(b"13") {
        return Err(invalid(
            "a WebSocket upgrade needs Sec-WebSocket-Version: 13 (RFC 6455), the only version tollgate relays",
        ));
    }
    let Some(client) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return Err(invalid("this connection cannot switch protocols"));
    };
    let conn = parts.extensions.get::<ConnContext>().cloned();
    Ok(Some(Requested { client, conn }))
}

/// Refuses the upgrade unless the allow entry that decided it says `websocket: true`; the
/// message names the option and the entry (`network.allow[N]`).
pub(crate) fn check_allowed(
    shared: &Shared,
    decision: &Decision,
    url: &NormalizedUrl,
) -> Result<(), ProxyError> {
    let host = url.authority();
    let entry = decision.entry.and_then(|index| shared.policy.entry(index));
    let message = match entry {
        Some(entry) if entry.websocket => return Ok(()),
        Some(entry) => match entry.target {
            EntryTarget::Prefix(_) => format!(
                "WebSocket upgrades to {host} are not enabled: {} is a URL prefix, which cannot enable them; write it as a long-form entry (`host: …`) with `websocket: true`",
                entry.rule
            ),
            EntryTarget::Host { .. } => format!(
                "WebSocket upgrades to {host} are not enabled: add `websocket: true` to {}, the allow entry that matched",
                entry.rule
            ),
        },
        None => format!(
            "WebSocket upgrades to {host} are not enabled: only a long-form network.allow entry with `websocket: true` enables them, and none matched (network.allow_all does not)"
        ),
    };
    let mut refusal =
        ProxyError::new(ErrorCode::PolicyDenied, message).with_reason("websocket_not_enabled");
    refusal.rule = entry.map(|entry| entry.rule.clone());
    Err(refusal)
}

/// The handshake's headers as they go upstream: `Upgrade: websocket` and `Connection:
/// Upgrade` put back (`sanitise_request` removed them), `Sec-WebSocket-Extensions` removed
/// (tollgate reads every message, so no extension is negotiated through it).
pub(crate) fn handshake_headers(headers: &mut HeaderMap) {
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
}

/// The upstream's `101` must switch to WebSocket and negotiate no extension (none was
/// offered: an extension's frames would not parse as plain ones).
pub(super) fn check_answer(headers: &HeaderMap, host: &str) -> Result<(), ProxyError> {
    if !lists(headers, header::UPGRADE, "websocket") {
        return Err(ProxyError::new(
            ErrorCode::ConnectError,
            format!("{host} switched protocols, but not to WebSocket"),
        ));
    }
    if headers.contains_key(header::SEC_WEBSOCKET_EXTENSIONS) {
        return Err(ProxyError::new(
            ErrorCode::ConnectError,
            format!("{host} accepted the WebSocket with an extension tollgate did not offer"),
        ));
    }
    Ok(())
}

/// The `101` the sandbox gets: `Upgrade`, `Connection`, and the upstream's
/// `Sec-WebSocket-Accept` (made from the sandbox's own key, which went upstream unchanged)
/// and `Sec-WebSocket-Protocol`; nothing else of the upstream's head.
pub(super) fn answer(upstream: &HeaderMap) -> Response<ProxyBody> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    for name in [header::SEC_WEBSOCKET_ACCEPT, header::SEC_WEBSOCKET_PROTOCOL] {
        if let Some(value) = upstream.get(&name) {
            headers.insert(name, value.clone());
        }
    }
    response
}

/// Whether the comma-separated header `name` lists `token` (case-insensitive; an `Upgrade`
/// protocol's `/version` is ignored).
fn lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|item| item.split('/').next().unwrap_or_default().trim())
        .any(|item| item.eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder()
            .method(method)
            .uri("http://api.test/ws");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let (parts, ()) = builder.body(()).unwrap().into_parts();
        parts
    }

    const GOOD: [(&str, &str); 4] = [
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];

    fn refusal(method: &str, headers: &[(&str, &str)]) -> String {
        refusal_of(parts(method, headers))
    }

    fn refusal_of(mut parts: Parts) -> String {
        match requested(&mut parts) {
            Err(error) => {
                assert_eq!(error.code, ErrorCode::InvalidRequest);
                error.message
            }
            Ok(found) => panic!("refused expected, got {:?}", found.is_some()),
        }
    }

    #[test]
    fn malformed_upgrades_are_refused_with_what_is_wrong() {
        assert!(refusal("POST", &GOOD).contains("must be a GET"));
        // An `Upgrade` that `Connection` does not name is no upgrade: not refused, not taken.
        let mut no_connection = GOOD;
        no_connection[1] = ("connection", "keep-alive");
        let mut unnamed = parts("GET", &no_connection);
        assert!(matches!(requested(&mut unnamed), Ok(None)));
        assert!(refusal("GET", &GOOD[..2]).contains("Sec-WebSocket-Key"));
        let mut short_key = GOOD;
        short_key[2] = ("sec-websocket-key", "c2hvcnQ=");
        assert!(refusal("GET", &short_key).contains("16 random bytes"));
        let mut version = GOOD;
        version[3] = ("sec-websocket-version", "8");
        assert!(refusal("GET", &version).contains("Version: 13"));
        let mut h2 = parts("GET", &GOOD);
        h2.version = Version::HTTP_2;
        assert!(refusal_of(h2).contains("HTTP/2"));
    }

    #[test]
    fn other_upgrades_are_not_websocket() {
        let mut h2c = parts("GET", &[("upgrade", "h2c"), ("connection", "Upgrade")]);
        assert!(requested(&mut h2c).unwrap().is_none());
        // Well formed, but no connection of hyper's to switch: refused, never half-done.
        assert!(refusal("GET", &GOOD).contains("cannot switch"));
    }

    #[test]
    fn the_upstream_gets_the_upgrade_back_without_extensions() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("permessage-deflate"),
        );
        handshake_headers(&mut headers);
        assert_eq!(headers[header::UPGRADE], "websocket");
        assert_eq!(headers[header::CONNECTION], "Upgrade");
        assert!(!headers.contains_key(header::SEC_WEBSOCKET_EXTENSIONS));
    }
}
