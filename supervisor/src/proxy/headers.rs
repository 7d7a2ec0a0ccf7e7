//! Header hygiene between the sandbox and the upstream: hop-by-hop removal (RFC 9110
//! §7.6.1), request-smuggling refusals, `Host` regeneration, `Via`, and tollgate's own
//! request headers (`Tollgate-Timeout`, `Tollgate-Auth`), which are read here and never
//! forwarded.

use super::errors::{ErrorCode, ProxyError};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::time::Duration;
use tollgate_policy::url::{default_port, NormalizedUrl, UrlHost};

/// The `Via` value tollgate adds in both directions.
pub use super::errors::VIA;

/// The request header with which sandboxed code asks for another timeout, in seconds.
pub const TIMEOUT_HEADER: &str = "tollgate-timeout";

/// The request header naming the auth provider whose credentials the request should carry.
pub const AUTH_HEADER: &str = "tollgate-auth";

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// proxy's own credentials and `Expect`, which tollgate satisfies itself (it buffers the
/// request body, so the upstream never needs to answer 100-continue).
///
/// Two of them are put back as tollgate's own, for trailers to pass: a request's
/// `TE: trailers` (the sandbox's client reads trailers; gRPC servers refuse a request without
/// it) goes upstream as `te: trailers` and never with another value (transfer codings are
/// the connection's: [`sanitise_request`]); a response's `Trailer` announcement goes to the
/// sandbox with the names of the trailers that will pass ([`sanitise_response`]), since an
/// HTTP/1.1 server sends only the trailers it announced. Request trailers themselves are
/// dropped: tollgate reads the request body whole before it is sent.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::TRANSFER_ENCODING,
];

/// Refuses requests whose framing or target is ambiguous: two `Host` headers, a `Host` that
/// names another authority than the absolute URI, or both `Content-Length` and
/// `Transfer-Encoding` (hyper drops the former; `witness` reports it).
pub fn refuse_smuggling(headers: &HeaderMap, url: &NormalizedUrl) -> Result<(), ProxyError> {
    let invalid = |message: &str| Err(ProxyError::new(ErrorCode::InvalidRequest, message));
    if headers.contains_key(header::CONTENT_LENGTH)
        && headers.contains_key(header::TRANSFER_ENCODING)
    {
        return Err(both_lengths());
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let Some(host) = hosts.next() else {
        return Ok(());
    };
    if hosts.next().is_some() {
        return invalid("the request has two Host headers; send exactly one");
    }
    let same = names_exactly(host.as_bytes(), url)
        || host
            .to_str()
            .ok()
            .and_then(|h| NormalizedUrl::from_parts(&url.scheme, h, "/").ok())
            .is_some_and(|h| h.host == url.host && h.port == url.port);
    if !same {
        return Err(ProxyError::new(
            ErrorCode::InvalidRequest,
            format!(
                "the Host header does not name {}, the authority of the request URL; send a matching Host or none",
                url.authority()
            ),
        ));
    }
    Ok(())
}

/// Whether `host` is the URL's domain and port spelled as tollgate spells them (lower case, the
/// port only when it is not the scheme's default): what nearly every client sends, and then
/// the Host header needs no parse of its own. Any other spelling is parsed and compared.
fn names_exactly(host: &[u8], url: &NormalizedUrl) -> bool {
    let UrlHost::Domain(domain) = &url.host else {
        return false;
    };
    match host.strip_prefix(domain.as_bytes()) {
        Some([]) => default_port(&url.scheme) == Some(url.port),
        Some([b':', port @ ..]) => port == url.port.to_string().as_bytes(),
        _ => false,
    }
}

/// Refuses a method that is not an upper-case HTTP token with `400 invalid_request`, reason
/// `method_not_uppercase` ([`tollgate_policy::check_method`]; the message says what to send).
pub fn check_method(method: &str) -> Result<(), ProxyError> {
    tollgate_policy::check_method(method).map_err(|error| {
        ProxyError::new(ErrorCode::InvalidRequest, error.to_string())
            .with_reason(error.reason().as_str())
    })
}

/// The refusal of a request with both `Content-Length` and `Transfer-Encoding`.
pub fn both_lengths() -> ProxyError {
    ProxyError::new(
        ErrorCode::InvalidRequest,
        "the request has both Content-Length and Transfer-Encoding, which tollgate refuses because it can smuggle a second request",
    )
}

/// Reads `Tollgate-Timeout: <seconds>` (a positive number, fractions allowed).
pub fn requested_timeout(headers: &HeaderMap) -> Result<Option<Duration>, ProxyError> {
    let Some(value) = headers.get(TIMEOUT_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .map(Some)
        .ok_or_else(|| {
            ProxyError::new(
                ErrorCode::InvalidRequest,
                "Tollgate-Timeout must be a number of seconds, e.g. `Tollgate-Timeout: 20`",
            )
        })
}

/// Reads `Tollgate-Auth: <provider name>` (one header, one name).
pub fn requested_provider(headers: &HeaderMap) -> Result<Option<String>, ProxyError> {
    let mut values = headers.get_all(AUTH_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let refuse = |message: &str| {
        Err(ProxyError::new(ErrorCode::AuthProviderError, message).with_reason("bad_auth_header"))
    };
    if values.next().is_some() {
        return refuse("send one Tollgate-Auth header naming one auth provider");
    }
    let Ok(name) = std::str::from_utf8(value.as_bytes()) else {
        return refuse("the Tollgate-Auth header is not UTF-8 text");
    };
    let name = name.trim();
    if name.is_empty() {
        return refuse("the Tollgate-Auth header is empty: name an auth provider");
    }
    Ok(Some(name.to_owned()))
}

/// Removes hop-by-hop headers (and every header `Connection` names) in place.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// The request headers as they leave for the upstream: hop-by-hop, `Expect`, `Host` and
/// every `Tollgate-*` header removed (the caller sets `Host` from the decided URL), and
/// `te: trailers` when the sandbox's `TE` listed `trailers`.
pub fn sanitise_request(headers: &mut HeaderMap) {
    let trailers = accepts_trailers(headers);
    remove_hop_by_hop(headers);
    headers.remove(header::EXPECT);
    headers.remove(header::HOST);
    remove_own(headers);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether a `TE` header lists the `trailers` token (case-insensitive, RFC 9110 §10.1.4).
fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let name = coding.split(';').next().unwrap_or_default();
            name.trim().eq_ignore_ascii_case("trailers")
        })
}

/// The response headers as they go to the sandbox: hop-by-hop and every `Tollgate-*`
/// header removed, except the `Trailer` announcement, kept with the names of the trailers
/// that pass [`sanitise_trailers`] (and left out when none does).
pub fn sanitise_response(headers: &mut HeaderMap) {
    let announced = headers
        .get_all(header::TRAILER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(passes_as_trailer)
        .collect::<Vec<_>>();
    remove_hop_by_hop(headers);
    remove_own(headers);
    announce_trailers(headers, announced.iter());
}

/// Sets `Trailer` to `names` (de-duplicated), or removes it when there are none.
pub fn announce_trailers<'a>(headers: &mut HeaderMap, names: impl Iterator<Item = &'a HeaderName>) {
    let mut list: Vec<&str> = Vec::new();
    for name in names {
        if !list.contains(&name.as_str()) {
            list.push(name.as_str());
        }
    }
    match HeaderValue::from_str(&list.join(", ")) {
        Ok(value) if !list.is_empty() => {
            headers.insert(header::TRAILER, value);
        }
        _ => {
            headers.remove(header::TRAILER);
        }
    }
}

/// An upstream's trailers as they go to the sandbox: the same names removed as from the
/// head (hop-by-hop, which HTTP/2 refuses in trailers outright, and `Tollgate-*`, which
/// would pass for tollgate's own).
pub fn sanitise_trailers(trailers: &mut HeaderMap) {
    let refused: Vec<HeaderName> = trailers
        .keys()
        .filter(|name| !passes_as_trailer(name))
        .cloned()
        .collect();
    for name in refused {
        trailers.remove(name);
    }
}

fn passes_as_trailer(name: &HeaderName) -> bool {
    !HOP_BY_HOP.contains(name) && !name.as_str().starts_with("tollgate-")
}

/// Removes every `Tollgate-*` header: tollgate's own, which an upstream must not be able
/// to forge in a response (a `Tollgate-Error` would pass for a refusal).
pub fn remove_own(headers: &mut HeaderMap) {
    let own: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("tollgate-"))
        .cloned()
        .collect();
    for name in own {
        headers.remove(name);
    }
}

/// `Host` from the normalised URL (the port only when it is not the scheme default).
pub fn set_host(headers: &mut HeaderMap, url: &NormalizedUrl) -> Result<(), ProxyError> {
    let host = HeaderValue::from_str(&url.authority()).map_err(|_| {
        ProxyError::new(
            ErrorCode::InvalidUrl,
            "the URL host cannot be sent as a Host header",
        )
    })?;
    headers.insert(header::HOST, host);
    Ok(())
}

/// Appends `1.1 tollgate` to `Via`.
pub fn add_via(headers: &mut HeaderMap) {
    headers.append(header::VIA, HeaderValue::from_static(VIA));
}

/// Lowercase, de-duplicated header names, for team rules.
pub fn names(headers: &HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = headers.keys().map(|n| n.as_str().to_owned()).collect();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> NormalizedUrl {
        NormalizedUrl::parse(s).expect("test URL")
    }

    #[test]
    fn connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(names(&h), vec!["x-kept".to_owned()]);
    }

    #[test]
    fn te_goes_upstream_only_as_trailers() {
        for (sent, kept) in [
            (vec!["trailers"], Some("trailers")),
            (vec!["gzip, Trailers"], Some("trailers")),
            (vec!["deflate;q=0.5", " trailers "], Some("trailers")),
            (vec!["gzip"], None),
            (vec!["trailersx, chunked"], None),
        ] {
            let mut h = HeaderMap::new();
            for value in &sent {
                h.append(header::TE, HeaderValue::from_str(value).unwrap());
            }
            // `Connection: TE`, as RFC 9110 asks of a client sending TE, removes nothing more.
            h.insert(header::CONNECTION, HeaderValue::from_static("TE"));
            sanitise_request(&mut h);
            let te: Vec<_> = h.get_all(header::TE).iter().collect();
            assert_eq!(te, kept.into_iter().collect::<Vec<_>>(), "{sent:?}");
            assert!(h.get(header::CONNECTION).is_none());
        }
    }

    #[test]
    fn trailers_lose_hop_by_hop_and_own_names_in_the_head_and_at_the_end() {
        let mut head = HeaderMap::new();
        head.insert(
            header::TRAILER,
            HeaderValue::from_static("grpc-status, Tollgate-Error, transfer-encoding"),
        );
        head.append(
            header::TRAILER,
            HeaderValue::from_static("grpc-message, grpc-status"),
        );
        head.insert(header::CONNECTION, HeaderValue::from_static("close"));
        sanitise_response(&mut head);
        assert_eq!(head[header::TRAILER], "grpc-status, grpc-message");
        assert!(head.get(header::CONNECTION).is_none());
        let mut only_own = HeaderMap::new();
        only_own.insert(header::TRAILER, HeaderValue::from_static("tollgate-error"));
        sanitise_response(&mut only_own);
        assert!(only_own.is_empty());
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("tollgate-error", HeaderValue::from_static("policy_denied"));
        trailers.insert("keep-alive", HeaderValue::from_static("1"));
        sanitise_trailers(&mut trailers);
        assert_eq!(names(&trailers), vec!["grpc-status".to_owned()]);
    }

    #[test]
    fn host_must_match_the_uri() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("Example.COM:80"));
        assert!(refuse_smuggling(&h, &url("http://example.com/x")).is_ok());
        h.insert(header::HOST, HeaderValue::from_static("evil.com"));
        assert!(refuse_smuggling(&h, &url("http://example.com/x")).is_err());
        h.insert(header::HOST, HeaderValue::from_static("example.com:8080"));
        assert!(refuse_smuggling(&h, &url("http://example.com/x")).is_err());
    }

    #[test]
    fn a_host_header_taken_without_parsing_is_one_the_parse_would_take() {
        let parsed_same = |host: &str, target: &NormalizedUrl| {
            NormalizedUrl::from_parts(&target.scheme, host, "/")
                .is_ok_and(|h| h.host == target.host && h.port == target.port)
        };
        for target in [
            "http://example.com/x",
            "https://example.com:8443/",
            "http://10.0.0.1/",
        ] {
            let target = url(target);
            for host in [
                "example.com",
                "example.com:80",
                "example.com:443",
                "example.com:8443",
                "example.com:08443",
                "example.com:",
                "example.com.",
                "example.com.evil.test",
                "example.com:80@evil.test",
                "example.com:8443@evil.test",
                "example.com:80 ",
                "example.comx",
                "EXAMPLE.com",
                "10.0.0.1",
                "10.0.0.1:80",
                "",
            ] {
                let mut h = HeaderMap::new();
                h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
                let taken = refuse_smuggling(&h, &target).is_ok();
                assert_eq!(taken, parsed_same(host, &target), "{host} for {target:?}");
                if names_exactly(host.as_bytes(), &target) {
                    assert!(parsed_same(host, &target), "{host} taken unparsed");
                }
            }
        }
        assert!(names_exactly(b"example.com", &url("http://example.com/x")));
        assert!(names_exactly(
            b"example.com:8443",
            &url("https://example.com:8443/")
        ));
        assert!(!names_exactly(
            b"example.com:80@evil.test",
            &url("http://example.com/x")
        ));
    }

    #[test]
    fn timeout_header_parses_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(requested_timeout(&h).ok(), Some(None));
        h.insert(TIMEOUT_HEADER, HeaderValue::from_static("2.5"));
        assert_eq!(
            requested_timeout(&h).ok(),
            Some(Some(Duration::from_millis(2500)))
        );
        h.insert(TIMEOUT_HEADER, HeaderValue::from_static("soon"));
        assert!(requested_timeout(&h).is_err());
        h.insert(TIMEOUT_HEADER, HeaderValue::from_static("-1"));
        assert!(requested_timeout(&h).is_err());
    }
}
