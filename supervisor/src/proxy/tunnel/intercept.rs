//! Intercepted tunnels: the sandbox's TLS is terminated here with a leaf certificate from
//! the execution's CA, and each HTTP request inside goes through `pipeline` as an
//! `https://` request to the tunnel's origin.
//!
//! accept the tunnel → first byte must start a TLS handshake (anything else gets a plain
//! 400 and the tunnel closes: there is no silent raw tunnel; HTTP/2's clear-text preface
//! gets an HTTP/2 `GOAWAY` saying so) → ClientHello: the SNI, when sent, must name the
//! CONNECT host → handshake (ALPN `h2` or `http/1.1`) → on the decrypted stream, the
//! HTTP/2 server (`http2`) when the client picked `h2`, else the HTTP/1.1 server (`http1`),
//! each request (or stream) bound to the tunnel's origin → the tunnel's audit record when
//! it closes, saying which protocol was spoken inside and, when the client's HTTP/2 broke
//! the protocol or a limit, why tollgate closed it (`protocol_error`).

use crate::audit::{Outcome, Protocol, Traffic, Verdict};
use crate::proxy::body::ProxyBody;
use crate::proxy::errors::{raw_response, ErrorCode, ProxyError};
use crate::proxy::finish::finish;
use crate::proxy::http1::serve_http;
use crate::proxy::http2::{h2c, serve_h2};
use crate::proxy::{pipeline, ConnContext, Shared, Via};
use bytes::Bytes;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::LazyConfigAcceptor;
use tollgate_policy::url::{NormalizedUrl, UrlHost};

/// The first byte of every TLS record carrying a handshake (RFC 8446 §5.1).
const TLS_HANDSHAKE: u8 = 0x16;

/// Serves one intercepted CONNECT tunnel until it closes; writes its audit record.
pub(crate) async fn serve(
    conn: ConnContext,
    upgrade: OnUpgrade,
    origin: NormalizedUrl,
    record: Traffic,
    started: Instant,
) {
    let client = match upgrade.await {
        Ok(upgraded) => TokioIo::new(upgraded),
        Err(error) => {
            tracing::debug!("CONNECT upgrade failed: {error}");
            return;
        }
    };
    serve_stream(conn, client, origin, record, started, Via::Proxy).await;
}

/// Serves one intercepted connection from the sandbox — a CONNECT tunnel, or a transparent
/// TLS connection (`via`) — until it closes; writes its audit record.
pub(crate) async fn serve_stream<S>(
    conn: ConnContext,
    client: S,
    origin: NormalizedUrl,
    mut record: Traffic,
    started: Instant,
    via: Via,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = conn.shared.clone();
    record.outcome = match terminate(&conn, client, &origin, via, &mut record.protocol).await {
        Ok(()) => Outcome::Closed,
        Err(Ended::ProtocolError(message)) => {
            record.message = Some(message);
            Outcome::ProtocolError
        }
        Err(Ended::Quiet(outcome)) => outcome,
        Err(Ended::HandshakeFailed { alert, message }) => {
            record.tls_alert = alert;
            record.message = Some(message);
            Outcome::TlsHandshakeFailed
        }
        Err(Ended::Refused {
            error,
            outcome,
            answered,
        }) => {
            record.decision = Verdict::Deny;
            record.reason = error.reason.clone();
            record.error = Some(error.code.as_str());
            record.message = Some(error.message.clone());
            // Answered with an HTTP status, or (h2c) with an HTTP/2 GOAWAY.
            record.status = answered.then(|| error.code.status().as_u16());
            outcome
        }
    };
    finish(&shared, record, started);
}

/// How a tunnel ended before or instead of serving requests.
enum Ended {
    /// Nothing to tell the sandbox (it closed, or timed out).
    Quiet(Outcome),
    /// The sandbox's client broke off the handshake (most often: it does not trust the
    /// execution's CA), with the alert it sent, if any.
    HandshakeFailed {
        alert: Option<String>,
        message: String,
    },
    /// Refused; the tunnel's record says why. `answered`: with an HTTP response (not an
    /// HTTP/2 `GOAWAY`).
    Refused {
        error: ProxyError,
        outcome: Outcome,
        answered: bool,
    },
    /// The client's HTTP/2 broke the protocol or a limit; the sentence says which.
    ProtocolError(String),
}

impl Ended {
    fn refused(error: ProxyError, outcome: Outcome) -> Ended {
        Ended::Refused {
            error,
            outcome,
            answered: true,
        }
    }
}

async fn terminate<S>(
    conn: &ConnContext,
    mut client: S,
    origin: &NormalizedUrl,
    via: Via,
    protocol: &mut Option<Protocol>,
) -> Result<(), Ended>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = &conn.shared;
    let settings = &shared.settings;
    let Ok(interception) = &shared.tls else {
        return Err(Ended::Quiet(Outcome::TlsUnavailable));
    };
    let mut first = [0u8; 1];
    let mut stop = conn.shutdown.clone();
    let read = tokio::select! {
        read = tokio::time::timeout(settings.header_read_timeout, client.read(&mut first)) => read,
        _ = crate::proxy::stopped(&mut stop) => return Err(Ended::Quiet(Outcome::Shutdown)),
    };
    match read {
        Err(_) => return Err(Ended::Quiet(Outcome::ClientTimeout)),
        Ok(Err(_)) | Ok(Ok(0)) => return Err(Ended::Quiet(Outcome::Closed)),
        Ok(Ok(_)) => {}
    }
    if h2c::may_be_preface(&first) {
        let timeout = settings.header_read_timeout;
        let (preface, _) = h2c::read_preface(&mut client, &first, timeout).await;
        if preface {
            let error = h2c::unsupported(format!(
                "{} is intercepted (tls: intercept), so only TLS may be sent through its tunnel, \
                 and HTTP/2 is spoken inside it: speak TLS and offer h2 by ALPN (https://), not \
                 HTTP/2 in clear text (h2c)",
                origin.authority()
            ));
            h2c::refuse(&mut client, &error.message).await;
            return Err(Ended::Refused {
                error,
                outcome: Outcome::NotTls,
                answered: false,
            });
        }
        return Err(not_tls(shared, client, origin).await);
    }
    if first[0] != TLS_HANDSHAKE {
        return Err(not_tls(shared, client, origin).await);
    }
    let stream = Prefixed::new(Bytes::copy_from_slice(&first), client);
    let handshake = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
            .await
            .map_err(|e| handshake_failed(origin, &e))?;
        check_server_name(start.client_hello().server_name(), origin, via)
            .map_err(|error| Ended::refused(error, Outcome::SniMismatch))?;
        let config = interception.ca().server_config(&origin.host).map_err(|e| {
            tracing::error!("{e}");
            Ended::Quiet(Outcome::CertificateError)
        })?;
        start
            .into_stream(config)
            .await
            .map_err(|e| handshake_failed(origin, &e))
    };
    let tls = match tokio::time::timeout(settings.header_read_timeout, handshake).await {
        Err(_) => return Err(Ended::Quiet(Outcome::ClientTimeout)),
        Ok(result) => result?,
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    *protocol = Some(if h2 { Protocol::H2 } else { Protocol::Http1 });
    let inner = ConnContext {
        framing: Default::default(),
        ..conn.clone()
    };
    let origin = Arc::new(origin.clone());
    let route = move |context: ConnContext, inner: Request<Incoming>, ambiguous: bool| {
        let origin = origin.clone();
        async move { request(context.shared.clone(), &origin, inner, ambiguous, via).await }
    };
    if h2 {
        return serve_h2(inner, tls, route)
            .await
            .map_err(|broken| Ended::ProtocolError(broken.0));
    }
    serve_http(inner, tls, route).await;
    Ok(())
}

/// Something other than TLS (or h2c) as a tunnel's first bytes: a plain 400 saying
/// what to do, then the tunnel closes.
async fn not_tls<S>(shared: &Shared, mut client: S, origin: &NormalizedUrl) -> Ended
where
    S: AsyncWrite + Unpin,
{
    let error = ProxyError::new(
        ErrorCode::InvalidRequest,
        format!(
            "{} is intercepted (tls: intercept), so only TLS may be sent through its tunnel; send plain HTTP as http:// requests to the proxy, or ask for `tls: passthrough` for other protocols",
            origin.authority()
        ),
    )
    .with_reason("not_tls");
    let answer = raw_response(error.code, &error.message, &shared.execution);
    let _ = tokio::time::timeout(shared.settings.shutdown_grace, async {
        client.write_all(&answer).await?;
        client.shutdown().await
    })
    .await;
    Ended::refused(error, Outcome::NotTls)
}

/// One request on a connection bound to `origin` (an intercepted tunnel, or a transparent
/// connection): origin form (or absolute form naming the same origin) becomes
/// `<origin's scheme>://<origin><path>`; then the pipeline.
pub(crate) async fn request(
    shared: Arc<Shared>,
    origin: &NormalizedUrl,
    request: Request<Incoming>,
    ambiguous_framing: bool,
    via: Via,
) -> Response<ProxyBody> {
    let (parts, body) = request.into_parts();
    let url = inner_url(origin, &parts.method, &parts.uri);
    pipeline::handle(shared, url, parts, body, ambiguous_framing, via).await
}

fn inner_url(
    origin: &NormalizedUrl,
    method: &Method,
    uri: &http::Uri,
) -> Result<NormalizedUrl, ProxyError> {
    let invalid = |m: String| ProxyError::new(ErrorCode::InvalidUrl, m);
    let scheme = origin.scheme.as_str();
    if method == Method::CONNECT {
        return Err(invalid(format!(
            "CONNECT is not supported on a connection to {scheme}://{}",
            origin.authority()
        )));
    }
    let authority = origin.authority();
    if let Some(sent) = uri.scheme_str() {
        let same = sent.eq_ignore_ascii_case(scheme)
            && uri.authority().is_some_and(|a| {
                NormalizedUrl::from_parts(scheme, a.as_str(), "/")
                    .is_ok_and(|u| u.host == origin.host && u.port == origin.port)
            });
        if !same {
            return Err(invalid(format!(
                "a request on this connection to {authority} must be for {scheme}://{authority}"
            )));
        }
    }
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    NormalizedUrl::from_parts(scheme, &authority, path).map_err(|e| invalid(e.to_string()))
}

/// The TLS server name must name the origin's host: when sent, through CONNECT (the tunnel
/// already says where it goes); always, on a transparent connection (the name is what the
/// synthetic address was handed out for).
pub(crate) fn check_server_name(
    sni: Option<&str>,
    origin: &NormalizedUrl,
    via: Via,
) -> Result<(), ProxyError> {
    let refused = |message: String, reason: &'static str| {
        Err(ProxyError::new(ErrorCode::InvalidRequest, message).with_reason(reason))
    };
    match sni {
        Some(sni) if !names_host(sni, &origin.host) => refused(
            format!(
                "the TLS server name {} does not match the host {} this connection is for",
                printable(sni),
                origin.host
            ),
            "sni_mismatch",
        ),
        None if via == Via::Transparent => refused(
            format!(
                "the TLS handshake to {} sent no server name (SNI); send one naming the host",
                origin.host
            ),
            "sni_missing",
        ),
        _ => Ok(()),
    }
}

/// Whether a TLS server name (SNI) names `host`: case-insensitively, one trailing dot
/// allowed. An IP host is never named by SNI (RFC 6066 forbids literal addresses there).
fn names_host(sni: &str, host: &UrlHost) -> bool {
    match host {
        UrlHost::Domain(name) => {
            let sni = sni.strip_suffix('.').unwrap_or(sni);
            sni.eq_ignore_ascii_case(name)
        }
        UrlHost::Ip(ip) => sni.parse::<std::net::IpAddr>().is_ok_and(|s| s == *ip),
    }
}

fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(255).collect()
}

/// Why the sandbox's handshake failed, for its record and the log: most often an alert
/// (`unknown_ca`) from a client that does not trust the execution's CA.
fn handshake_failed(origin: &NormalizedUrl, error: &io::Error) -> Ended {
    let alert = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .and_then(|e| match e {
            rustls::Error::AlertReceived(alert) => Some(alert_name(*alert)),
            _ => None,
        });
    let message = match &alert {
        Some(alert) => format!(
            "the client broke off the TLS handshake to {} with the alert {alert}: it does not \
             trust the execution's CA (point it at the bundle in SSL_CERT_FILE, or use a client \
             that reads the system trust store)",
            origin.authority()
        ),
        None if matches!(
            error.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
        ) =>
        {
            format!(
                "the client closed the connection during the TLS handshake to {}, without an \
                 alert; clients that do not trust the execution's CA often do",
                origin.authority()
            )
        }
        None => format!(
            "the client's TLS handshake to {} failed: {error}",
            origin.authority()
        ),
    };
    tracing::info!("{message}");
    Ended::HandshakeFailed { alert, message }
}

/// A TLS alert in snake case, as TLS names it (`UnknownCA` → `unknown_ca`).
fn alert_name(alert: rustls::AlertDescription) -> String {
    if let rustls::AlertDescription::Unknown(code) = alert {
        return format!("alert_{code}");
    }
    let camel: Vec<char> = format!("{alert:?}").chars().collect();
    let mut name = String::new();
    for (i, &c) in camel.iter().enumerate() {
        let after_lower = i > 0 && camel[i - 1].is_ascii_lowercase();
        let starts_word = i > 0
            && camel[i - 1].is_ascii_uppercase()
            && camel.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
        if c.is_ascii_uppercase() && (after_lower || starts_word) {
            name.push('_');
        }
        name.push(c.to_ascii_lowercase());
    }
    name
}

/// A stream that first replays bytes already read from it.
pub(crate) struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(prefix: Bytes, inner: S) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(s: &str) -> NormalizedUrl {
        NormalizedUrl::from_parts("https", s, "/").expect("origin")
    }

    #[test]
    fn inner_targets_are_bound_to_the_tunnel() {
        let o = origin("api.test:443");
        let url = inner_url(&o, &Method::GET, &"/v1/x?q=1".parse().expect("uri")).expect("ok");
        assert_eq!(url.redacted(), "https://api.test/v1/x");
        assert_eq!(url.origin_form(), "/v1/x?q=1");
        assert!(inner_url(
            &o,
            &Method::GET,
            &"https://api.test/x".parse().expect("uri")
        )
        .is_ok());
        assert!(inner_url(
            &o,
            &Method::GET,
            &"https://evil.test/x".parse().expect("uri")
        )
        .is_err());
        assert!(inner_url(&o, &Method::GET, &"http://api.test/x".parse().expect("uri")).is_err());
        assert!(inner_url(&o, &Method::CONNECT, &"api.test:443".parse().expect("uri")).is_err());
        let alt = origin("api.test:8443");
        let url = inner_url(&alt, &Method::GET, &"/".parse().expect("uri")).expect("ok");
        assert_eq!(url.redacted(), "https://api.test:8443/");
    }

    #[test]
    fn alerts_are_named_as_tls_names_them() {
        use rustls::AlertDescription as A;
        assert_eq!(alert_name(A::UnknownCA), "unknown_ca");
        assert_eq!(alert_name(A::BadCertificate), "bad_certificate");
        assert_eq!(alert_name(A::CertificateUnknown), "certificate_unknown");
        assert_eq!(alert_name(A::UnknownPSKIdentity), "unknown_psk_identity");
        assert_eq!(alert_name(A::Unknown(200)), "alert_200");
    }

    #[test]
    fn a_transparent_connection_must_send_the_mapped_name() {
        let o = origin("api.test:443");
        assert!(check_server_name(None, &o, Via::Proxy).is_ok());
        let missing = check_server_name(None, &o, Via::Transparent).unwrap_err();
        assert_eq!(missing.reason, "sni_missing");
        assert!(check_server_name(Some("api.test"), &o, Via::Transparent).is_ok());
        let other = check_server_name(Some("evil.test"), &o, Via::Transparent).unwrap_err();
        assert_eq!(other.reason, "sni_mismatch");
    }

    #[test]
    fn plain_http_origins_keep_their_scheme() {
        let o = NormalizedUrl::from_parts("http", "api.test:8080", "/").expect("origin");
        let url = inner_url(&o, &Method::GET, &"/x".parse().expect("uri")).expect("ok");
        assert_eq!(url.redacted(), "http://api.test:8080/x");
        assert!(inner_url(
            &o,
            &Method::GET,
            &"https://api.test:8080/x".parse().expect("uri")
        )
        .is_err());
    }

    #[test]
    fn sni_must_name_the_tunnel_host() {
        let host = UrlHost::Domain("api.test".into());
        assert!(names_host("API.test.", &host));
        assert!(!names_host("evil.test", &host));
        assert!(!names_host("api.test.evil", &host));
    }
}
