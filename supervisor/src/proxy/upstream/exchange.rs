//! One exchange over an upstream stream, in HTTP/1.1 or HTTP/2: hyper does the framing,
//! tollgate chose the socket (a fresh dial to a decided address, or a pooled connection to
//! one) and, through TLS's ALPN, which protocol the upstream speaks on it.
//!
//! The request is shaped for the protocol here, once: HTTP/2 takes its `:scheme` and
//! `:authority` from the decided URL (never from anything the sandbox sent), and carries no
//! `Host` and no connection-specific header (RFC 9113 §8.2.2).

use crate::audit::Protocol;
use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, Uri, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::time::Duration;
use tollgate_policy::url::NormalizedUrl;

use super::transport::Upstream;

/// The largest response header block an HTTP/2 upstream may send (hyper's client default is
/// 16 KiB, smaller than the HTTP/1.1 heads it accepts). Real responses stay far below this
/// (nginx proxies refuse upstream heads over 4–8 KiB by default), and it bounds what one
/// stream may make tollgate hold before any limit of the response applies.
const MAX_RESPONSE_HEADER_LIST: u32 = 64 * 1024;
/// Flow-control windows: how much an HTTP/2 upstream may send ahead of what the sandbox has
/// read, per stream and per connection. They bound the memory one connection's unread
/// responses take (the connection window across all its streams), while a single stream
/// still keeps a fast link busy. hyper's own defaults, stated here because they are limits.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
/// A pooled HTTP/2 connection is pinged this often, open streams or not: a connection that
/// died silently (a NAT or load balancer dropped it) is found and closed while idle, so the
/// next request dials afresh instead of waiting out its timeout on a dead connection.
const PING_EVERY: Duration = Duration::from_secs(20);
/// A ping unanswered this long closes the connection.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// A client connection to an upstream, by the protocol it speaks.
pub(crate) enum Sender {
    /// HTTP/1.1, one request at a time; pooled when its response ends cleanly.
    Http1(http1::SendRequest<Full<Bytes>>),
    /// HTTP/1.1 dialed for a WebSocket handshake: its connection may switch protocols on a
    /// `101` (`hyper::upgrade::on(response)`), so it is never pooled.
    Upgrade(http1::SendRequest<Full<Bytes>>),
    /// HTTP/2: one connection shared by concurrent requests (the sender is cloned).
    Http2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    pub fn protocol(&self) -> Protocol {
        match self {
            Sender::Http1(_) | Sender::Upgrade(_) => Protocol::Http1,
            Sender::Http2(_) => Protocol::H2,
        }
    }

    /// Sends `request` and waits for the response head.
    pub async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Sender::Http1(sender) | Sender::Upgrade(sender) => sender.send_request(request).await,
            Sender::Http2(sender) => sender.send_request(request).await,
        }
    }
}

/// Starts a client connection on `stream` in `protocol` (what ALPN chose; plain `http`
/// is HTTP/1.1); `upgrade` asks for an HTTP/1.1 connection that can switch protocols. The
/// connection task runs until every sender is dropped or the upstream closes.
pub(crate) async fn handshake(
    stream: Box<dyn Upstream>,
    protocol: Protocol,
    upgrade: bool,
) -> Result<Sender, hyper::Error> {
    let io = TokioIo::new(stream);
    match protocol {
        Protocol::H2 => {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(MAX_RESPONSE_HEADER_LIST)
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .keep_alive_interval(PING_EVERY)
                .keep_alive_timeout(PING_TIMEOUT)
                .keep_alive_while_idle(true)
                .handshake::<_, Full<Bytes>>(io)
                .await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!("upstream HTTP/2 connection ended: {error}");
                }
            });
            Ok(Sender::Http2(sender))
        }
        Protocol::Http1 => {
            let (sender, connection) = http1::Builder::new()
                .handshake::<_, Full<Bytes>>(io)
                .await?;
            if upgrade {
                tokio::spawn(async move {
                    if let Err(error) = connection.with_upgrades().await {
                        tracing::debug!("upstream connection ended: {error}");
                    }
                });
                return Ok(Sender::Upgrade(sender));
            }
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!("upstream connection ended: {error}");
                }
            });
            Ok(Sender::Http1(sender))
        }
    }
}

/// The request as `protocol` carries it. HTTP/1.1: the origin-form target and the headers
/// as prepared (`Host` set from the decided URL). HTTP/2: the absolute URI of the decided
/// URL (hyper sends its scheme and authority as `:scheme` and `:authority`), no `Host`, and
/// none of the headers RFC 9113 forbids (`TE` only as `trailers`).
pub(crate) fn shape(
    protocol: Protocol,
    url: &NormalizedUrl,
    target: &Uri,
    headers: &mut HeaderMap,
) -> (Uri, Version) {
    match protocol {
        Protocol::Http1 => (target.clone(), Version::HTTP_11),
        Protocol::H2 => {
            strip_for_h2(headers);
            let absolute = format!("{}://{}{}", url.scheme, url.authority(), target);
            // The parts were each valid in a URI already (the decided URL's authority, the
            // parsed target), so their join is too; the fallback is never taken.
            let uri = absolute.parse().unwrap_or_else(|_| target.clone());
            (uri, Version::HTTP_2)
        }
    }
}

/// Removes what an HTTP/2 request must not carry: `Host` (`:authority` says it) and the
/// connection-specific headers, `TE` unless it is exactly `trailers`.
fn strip_for_h2(headers: &mut HeaderMap) {
    headers.remove(header::HOST);
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::HeaderName::from_static("keep-alive"),
        header::HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    let trailers_only = headers
        .get_all(header::TE)
        .iter()
        .all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !trailers_only {
        headers.remove(header::TE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn url(text: &str) -> NormalizedUrl {
        NormalizedUrl::parse(text).expect("test URL")
    }

    #[test]
    fn h2_requests_name_the_decided_origin_and_carry_no_connection_headers() {
        let url = url("https://api.test:8443/a/b?q=1");
        let target: Uri = url.origin_form().parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("api.test:8443"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert("x-kept", HeaderValue::from_static("yes"));
        let (uri, version) = shape(Protocol::H2, &url, &target, &mut headers);
        assert_eq!(uri.to_string(), "https://api.test:8443/a/b?q=1");
        assert_eq!(version, Version::HTTP_2);
        let mut names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["te", "x-kept"]);

        headers.insert(header::TE, HeaderValue::from_static("gzip"));
        shape(Protocol::H2, &url, &target, &mut headers);
        assert!(headers.get(header::TE).is_none());
    }

    #[test]
    fn http1_requests_keep_the_origin_form_and_their_host() {
        let url = url("https://api.test/a?q=1");
        let target: Uri = url.origin_form().parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("api.test"));
        let (uri, version) = shape(Protocol::Http1, &url, &target, &mut headers);
        assert_eq!(
            (uri.to_string().as_str(), version),
            ("/a?q=1", Version::HTTP_11)
        );
        assert_eq!(headers.len(), 1);
    }
}
