//! TLS towards upstreams: rustls, verifying against the system's CA bundle plus the team's
//! own `network.upstream_ca` (internal CAs), with SNI for the decided host name and ALPN
//! `h2` and `http/1.1` (the upstream picks; [`Offer::Http1Only`] for a WebSocket handshake,
//! which needs an HTTP/1.1 connection to switch).
//!
//! The system bundle is the file OpenSSL would use (`SSL_CERT_FILE`, else the
//! distribution's bundle); the team's file is read by [`super::upstream_ca`]. Both are kept
//! as certificates (DER) only, which is all the sandbox's bundle is made of: no text of
//! either file reaches it. Turning the system roots into trust anchors is deferred to the
//! first upstream TLS connection, so executions that never reach an HTTPS upstream do not
//! pay for it (decoding the bundle's PEM, needed for the sandbox's bundle anyway, takes
//! about a millisecond in a release build).
//!
//! A certificate the upstream presents that does not verify is a `upstream_tls_error` with
//! rustls's reason, never retried; a connection reset during the handshake is retried like
//! any reset.
//!
//! A TCP close without a TLS `close_notify` reads as the end of the stream
//! ([`CloseIsEnd`]), as it does for curl and browsers: see there why that is safe for HTTP.

use super::upstream_ca;
use crate::audit::Protocol;
use crate::proxy::upstream::Upstream;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tollgate_policy::url::UrlHost;

/// A system bundle larger than this is refused (the Debian bundle is about 220 KB).
const MAX_BUNDLE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("network.upstream_ca {path}: {reason}")]
    UpstreamCa { path: String, reason: String },
    #[error("cannot read the system CA bundle {path}: {reason}")]
    System { path: String, reason: String },
}

/// Why an upstream TLS connection failed.
#[derive(Debug)]
pub enum HandshakeError {
    /// TLS itself refused: certificate, protocol, alert. Not retried.
    Tls(String),
    /// The connection failed under the handshake (reset, closed): retried like a reset.
    Io(io::Error),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Tls(reason) => f.write_str(reason),
            HandshakeError::Io(error) => write!(f, "{error}"),
        }
    }
}

/// Which application protocols the TLS handshake offers the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// `h2` then `http/1.1`: HTTP/2 when the upstream offers it.
    Http2OrHttp1,
    /// `http/1.1` alone: a WebSocket handshake, whose connection switches protocols.
    Http1Only,
}

/// The client configurations, one per [`Offer`] (the same roots; only ALPN differs).
#[derive(Clone)]
struct Configs {
    any: Arc<ClientConfig>,
    http1: Arc<ClientConfig>,
}

/// The roots upstreams are verified against, and the client configurations built from them.
pub struct UpstreamTrust {
    /// The system bundle's certificates (not yet parsed as trust anchors).
    system: Vec<CertificateDer<'static>>,
    system_path: Option<PathBuf>,
    /// The team's extra roots (`network.upstream_ca`), each checked as a trust anchor.
    team: Vec<CertificateDer<'static>>,
    configs: OnceLock<Result<Configs, String>>,
}

impl std::fmt::Debug for UpstreamTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTrust")
            .field("system", &self.system_path)
            .field("system_roots", &self.system.len())
            .field("team_roots", &self.team.len())
            .finish_non_exhaustive()
    }
}

impl UpstreamTrust {
    /// Reads the system bundle and `upstream_ca` (checked now, so a bad file stops the run
    /// before the sandbox starts).
    pub fn load(upstream_ca: Option<&Path>) -> Result<UpstreamTrust, TrustError> {
        let system_path = openssl_probe::probe().cert_file;
        let system = match &system_path {
            Some(path) => {
                let text = read_limited(path).map_err(|reason| TrustError::System {
                    path: path.display().to_string(),
                    reason,
                })?;
                CertificateDer::pem_slice_iter(&text).flatten().collect()
            }
            None => Vec::new(),
        };
        let team = match upstream_ca {
            None => Vec::new(),
            Some(path) => upstream_ca::read(path).map_err(|reason| TrustError::UpstreamCa {
                path: path.display().to_string(),
                reason,
            })?,
        };
        Ok(UpstreamTrust {
            system,
            system_path,
            team,
            configs: OnceLock::new(),
        })
    }

    /// Every root, system's then team's, as DER (for the sandbox's bundle: its passthrough
    /// tunnels verify upstreams themselves).
    pub fn roots(&self) -> impl Iterator<Item = &CertificateDer<'static>> {
        self.system.iter().chain(&self.team)
    }

    /// The client configuration offering `offer` (both built on first use).
    pub fn client_config(&self, offer: Offer) -> Result<Arc<ClientConfig>, String> {
        let configs = self.configs.get_or_init(|| self.build()).as_ref()?;
        Ok(match offer {
            Offer::Http2OrHttp1 => configs.any.clone(),
            Offer::Http1Only => configs.http1.clone(),
        })
    }

    fn build(&self) -> Result<Configs, String> {
        let mut roots = RootCertStore::empty();
        let system = self.system.iter().cloned();
        let (added, ignored) = roots.add_parsable_certificates(system);
        tracing::debug!("upstream TLS: {added} system roots ({ignored} unusable)");
        for cert in &self.team {
            let _ = roots.add(cert.clone());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut any = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("upstream TLS cannot be configured: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http1 = any.clone();
        any.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        http1.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Configs {
            any: Arc::new(any),
            http1: Arc::new(http1),
        })
    }

    /// A TLS client connection to `host` over `stream` offering `offer`, and the protocol
    /// the upstream chose (HTTP/1.1 when it chose none).
    pub async fn connect(
        &self,
        host: &UrlHost,
        stream: Box<dyn Upstream>,
        offer: Offer,
    ) -> Result<(CloseIsEnd<TlsStream<Box<dyn Upstream>>>, Protocol), HandshakeError> {
        let name = match host {
            UrlHost::Ip(ip) => ServerName::IpAddress(ip_for_rustls(*ip)),
            UrlHost::Domain(name) => ServerName::try_from(name.clone()).map_err(|e| {
                HandshakeError::Tls(format!("{name} is not a valid TLS server name: {e}"))
            })?,
        };
        let config = self.client_config(offer).map_err(HandshakeError::Tls)?;
        let stream = TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(classify)?;
        let protocol = match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => Protocol::H2,
            _ => Protocol::Http1,
        };
        Ok((CloseIsEnd(stream), protocol))
    }
}

/// An upstream TLS stream on which the peer's TCP close without a `close_notify` alert is
/// the end of the stream rather than an error.
///
/// Many servers close that way, and rustls reports it as `UnexpectedEof` after the last
/// bytes. Taken as an error it fails every close-delimited body (no `Content-Length`, not
/// chunked: the close is its end) at its very end, after all of it arrived. RFC 9112 §9.8
/// would call such a body complete only with the alert, since without it a forged TCP close
/// can shorten it unnoticed; curl (`SSL_OP_IGNORE_UNEXPECTED_EOF`) and browsers accept it
/// anyway, because refusing it breaks downloads from all those servers, and so does tollgate
/// (the reproduction: curl straight to such a server got 15 of 15 bodies whole).
/// Nothing else is relaxed: a `Content-Length` not reached or a chunked body without its
/// last chunk is an error in hyper whatever ended the stream, and reaches the sandbox as a
/// body cut short.
pub struct CloseIsEnd<S>(S);

impl<S: AsyncRead + Unpin> AsyncRead for CloseIsEnd<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            Poll::Ready(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => {
                tracing::debug!("upstream TLS closed without close_notify: end of stream");
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CloseIsEnd<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

fn ip_for_rustls(ip: IpAddr) -> rustls::pki_types::IpAddr {
    rustls::pki_types::IpAddr::from(ip)
}

/// A rustls error inside the I/O error is a TLS refusal; anything else is the connection.
fn classify(error: io::Error) -> HandshakeError {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map(ToString::to_string);
    match tls {
        Some(reason) => HandshakeError::Tls(reason),
        None if error.kind() == io::ErrorKind::InvalidData => {
            HandshakeError::Tls(error.to_string())
        }
        None => HandshakeError::Io(error),
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = Vec::new();
    file.take(MAX_BUNDLE_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_BUNDLE_BYTES {
        return Err(format!("larger than {MAX_BUNDLE_BYTES} bytes"));
    }
    Ok(text)
}
