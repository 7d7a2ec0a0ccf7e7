//! Intercepted tunnels: the sandbox's TLS is terminated here with a leaf certificate from
//! the execution's CA, and each HTTP request inside goes through `pipeline` as an
//! `https://` request to the tunnel's origin.
//!
//! accept the tunnel → first byte must start a TLS handshake (anything else gets a plain
//! 400 and the tunnel closes: there is no silent raw tunnel) → ClientHello: the SNI, when
//! sent, must name the CONNECT host → handshake (ALPN `http/1.1`) → the HTTP/1.1 server of
//! `listener` on the decrypted stream, its requests in origin form and bound to the
//! tunnel's origin → the tunnel's audit record when it closes.

use crate::audit::{Outcome, Traffic, Verdict};
use crate::proxy::body::ProxyBody;
use crate::proxy::errors::{raw_response, ErrorCode, ProxyError};
use crate::proxy::finish::finish;
use crate::proxy::http1::serve_http;
use crate::proxy::{pipeline, ConnContext, Shared};
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

/// Serves one intercepted tunnel until it closes; writes its audit record.
pub(crate) async fn serve(
    conn: ConnContext,
    upgrade: OnUpgrade,
    origin: NormalizedUrl,
    mut record: Traffic,
    started: Instant,
) {
    let shared = conn.shared.clone();
    let client = match upgrade.await {
        Ok(upgraded) => TokioIo::new(upgraded),
        Err(error) => {
            tracing::debug!("CONNECT upgrade failed: {error}");
            return;
        }
    };
    record.outcome = match terminate(&conn, client, &origin).await {
        Ok(()) => Outcome::Closed,
        Err(Ended::Quiet(outcome)) => outcome,
        Err(Ended::Refused(error, outcome)) => {
            record.decision = Verdict::Deny;
            record.reason = error.reason.clone();
            record.error = Some(error.code.as_str());
            record.message = Some(error.message.clone());
            record.status = Some(error.code.status().as_u16());
            outcome
        }
    };
    finish(&shared, record, started);
}

/// How a tunnel ended before or instead of serving requests.
enum Ended {
    /// Nothing to tell the sandbox (it closed, or the handshake failed: it sees that).
    Quiet(Outcome),
    /// Refused; the tunnel's record says why.
    Refused(ProxyError, Outcome),
}

async fn terminate<S>(
    conn: &ConnContext,
    mut client: S,
    origin: &NormalizedUrl,
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
    if first[0] != TLS_HANDSHAKE {
        let error = ProxyError::new(
            ErrorCode::InvalidRequest,
            format!(
                "{} is intercepted (tls: intercept), so only TLS may be sent through its tunnel; send plain HTTP as http:// requests to the proxy, or ask for `tls: passthrough` for other protocols",
                origin.authority()
            ),
        )
        .with_reason("not_tls");
        let answer = raw_response(error.code, &error.message, &shared.execution);
        let _ = tokio::time::timeout(settings.shutdown_grace, async {
            client.write_all(&answer).await?;
            client.shutdown().await
        })
        .await;
        return Err(Ended::Refused(error, Outcome::NotTls));
    }
    let stream = Prefixed::new(Bytes::copy_from_slice(&first), client);
    let handshake = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
            .await
            .map_err(|e| Ended::Quiet(log_handshake(origin, &e)))?;
        if let Some(sni) = start.client_hello().server_name() {
            if !names_host(sni, &origin.host) {
                let error = ProxyError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "the TLS server name {} does not match the tunnel's host {}",
                        printable(sni),
                        origin.host
                    ),
                )
                .with_reason("sni_mismatch");
                return Err(Ended::Refused(error, Outcome::SniMismatch));
            }
        }
        let config = interception.ca().server_config(&origin.host).map_err(|e| {
            tracing::error!("{e}");
            Ended::Quiet(Outcome::CertificateError)
        })?;
        start
            .into_stream(config)
            .await
            .map_err(|e| Ended::Quiet(log_handshake(origin, &e)))
    };
    let tls = match tokio::time::timeout(settings.header_read_timeout, handshake).await {
        Err(_) => return Err(Ended::Quiet(Outcome::ClientTimeout)),
        Ok(result) => result?,
    };
    let inner = ConnContext {
        framing: Default::default(),
        ..conn.clone()
    };
    let origin = Arc::new(origin.clone());
    let route = move |context: ConnContext, inner: Request<Incoming>, ambiguous: bool| {
        let origin = origin.clone();
        async move { request(context.shared.clone(), &origin, inner, ambiguous).await }
    };
    serve_http(inner, tls, route).await;
    Ok(())
}

/// One request inside an intercepted tunnel: origin form (or absolute form naming the same
/// origin) becomes `https://<tunnel origin><path>`; then the pipeline.
pub(crate) async fn request(
    shared: Arc<Shared>,
    origin: &NormalizedUrl,
    request: Request<Incoming>,
    ambiguous_framing: bool,
) -> Response<ProxyBody> {
    let (parts, body) = request.into_parts();
    let url = inner_url(origin, &parts.method, &parts.uri);
    pipeline::handle(shared, url, parts, body, ambiguous_framing).await
}

fn inner_url(
    origin: &NormalizedUrl,
    method: &Method,
    uri: &http::Uri,
) -> Result<NormalizedUrl, ProxyError> {
    let invalid = |m: String| ProxyError::new(ErrorCode::InvalidUrl, m);
    if method == Method::CONNECT {
        return Err(invalid(
            "CONNECT inside an intercepted tunnel is not supported".into(),
        ));
    }
    let authority = origin.authority();
    if let Some(scheme) = uri.scheme_str() {
        let same = scheme.eq_ignore_ascii_case("https")
            && uri.authority().is_some_and(|a| {
                NormalizedUrl::from_parts("https", a.as_str(), "/")
                    .is_ok_and(|u| u.host == origin.host && u.port == origin.port)
            });
        if !same {
            return Err(invalid(format!(
                "a request inside the tunnel to {authority} must be for https://{authority}"
            )));
        }
    }
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    NormalizedUrl::from_parts("https", &authority, path).map_err(|e| invalid(e.to_string()))
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

/// Logs why the sandbox's handshake failed (an unknown-CA alert means the client does not
/// trust the execution's CA: its bundle variables were not honoured).
fn log_handshake(origin: &NormalizedUrl, error: &io::Error) -> Outcome {
    tracing::info!(
        "CONNECT {}: the sandbox's TLS handshake failed: {error}",
        origin.authority()
    );
    Outcome::TlsHandshakeFailed
}

/// A stream that first replays bytes already read from it.
struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(prefix: Bytes, inner: S) -> Self {
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
    fn sni_must_name_the_tunnel_host() {
        let host = UrlHost::Domain("api.test".into());
        assert!(names_host("API.test.", &host));
        assert!(!names_host("evil.test", &host));
        assert!(!names_host("api.test.evil", &host));
    }
}
