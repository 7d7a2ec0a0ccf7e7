//! Transparent egress: connections from clients that ignore the proxy settings.
//!
//! Inside the sandbox's namespace, the stub resolver (`crate::dns`) answers every name the
//! policy could allow with a synthetic loopback address, and an nftables rule sends TCP
//! connections to those addresses to this listener (`sandbox::nft`). So a client that dials
//! `api.example.com:443` itself — Node before 22's `fetch`, Go with a custom `Transport`,
//! aiohttp's defaults — reaches tollgate, and only tollgate, without one wall being moved:
//! every address involved is loopback.
//!
//! For each connection: the original destination (`SO_ORIGINAL_DST`) → the name the
//! resolver handed that address out for (none: `unmapped_address`) → the first bytes say what
//! it carries:
//! - a TLS handshake: its ClientHello must name the mapped host (SNI), then the tunnel is
//!   decided and carried exactly as `CONNECT name:port` would be (`tunnel`): intercepted, each
//!   request inside through the pipeline, or passed through;
//! - an HTTP/1 request line: an HTTP/1.1 server whose requests are bound to
//!   `http://name:port` (a `Host` naming anything else is refused, as for intercepted
//!   tunnels) and go through the pipeline; HTTP/2's clear-text preface (h2c) is refused with
//!   an HTTP/2 `GOAWAY` (`h2c_unsupported`);
//! - a TLS handshake is served as an intercepted tunnel's is, in HTTP/2 when its client
//!   picks `h2` by ALPN;
//! - anything else, or nothing within the header read timeout: closed, `non_http_refused`.
//!
//! Every record of this traffic says `"transparent": true`.

mod client_hello;
mod sniff;

use crate::audit::{Kind, Outcome, Traffic, Verdict};
use crate::proxy::errors::{ErrorCode, ProxyError};
use crate::proxy::finish::{finish, refuse};
use crate::proxy::http1::serve_http;
use crate::proxy::http2::h2c;
use crate::proxy::tunnel::intercept::{self, Prefixed};
use crate::proxy::tunnel::{self, Opened};
use crate::proxy::{ConnContext, Via};
use http::Request;
use hyper::body::Incoming;
use sniff::Sniffed;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpStream;
use tollgate_policy::url::NormalizedUrl;

/// Maps a synthetic address back to the name it was handed out for.
pub type NameOf = Arc<dyn Fn(Ipv4Addr) -> Option<String> + Send + Sync>;

/// The transparent listener (bound inside the sandbox's namespace, where the redirect rule
/// sends connections to the synthetic addresses) and the resolver's table.
pub struct TransparentListener {
    pub listener: std::net::TcpListener,
    pub names: NameOf,
}

/// Serves one redirected connection until it closes.
pub(crate) async fn serve(conn: ConnContext, mut stream: TcpStream, names: NameOf) {
    let started = Instant::now();
    let _ = stream.set_nodelay(true);
    let mut record = Traffic::new(Kind::Connect, "CONNECT");
    record.scheme = "connect".into();
    record.transparent = true;
    let original = match original_destination(&stream) {
        Ok(original) => original,
        Err(error) => {
            // Not redirected: the listener's own address was dialed.
            tracing::debug!("transparent connection without an original destination: {error}");
            record.host = Ipv4Addr::LOCALHOST.to_string();
            let message = "this port only takes connections redirected from tollgate's synthetic \
                           addresses; connect by name";
            return refuse_unmapped(&conn, record, message.to_owned(), started);
        }
    };
    record.port = original.port();
    let Some(name) = names(*original.ip()) else {
        record.host = original.ip().to_string();
        let message = format!(
            "{} is not an address tollgate's resolver handed out; connect by name",
            original.ip()
        );
        return refuse_unmapped(&conn, record, message, started);
    };
    record.host = name.clone();
    let settings = &conn.shared.settings;
    match sniff::first_bytes(
        &mut stream,
        settings.header_read_timeout,
        conn.shutdown.clone(),
    )
    .await
    {
        Sniffed::Tls(prefix) => {
            let client = Prefixed::new(prefix, stream);
            tls(conn, client, &name, original.port(), record, started).await;
        }
        Sniffed::Http(prefix) if h2c::may_be_preface(&prefix) => {
            let timeout = settings.header_read_timeout;
            let (preface, read) = h2c::read_preface(&mut stream, &prefix, timeout).await;
            if preface {
                let error = h2c::unsupported(format!(
                    "{name}:{} is served in HTTP/1.1, not HTTP/2 in clear text (h2c, prior \
                     knowledge); send HTTP/1.1, or https:// where HTTP/2 is offered by ALPN",
                    original.port()
                ));
                let shared = conn.shared.clone();
                let outcome = Outcome::Refused;
                h2c::refuse_recorded(&shared, &mut stream, record, error, outcome, started).await;
                return;
            }
            http(conn, Prefixed::new(read, stream), &name, original.port()).await;
        }
        Sniffed::Http(prefix) => {
            let client = Prefixed::new(prefix, stream);
            http(conn, client, &name, original.port()).await;
        }
        Sniffed::Other => {
            let message = format!(
                "{name}:{} carried neither TLS nor HTTP; only HTTP and HTTPS leave the sandbox",
                original.port()
            );
            refuse_non_http(&conn, record, message, started);
        }
        Sniffed::Silent => {
            let message = format!(
                "nothing was sent to {name}:{} within {:?}; only HTTP and HTTPS leave the sandbox \
                 (protocols where the server speaks first cannot)",
                original.port(),
                settings.header_read_timeout
            );
            refuse_non_http(&conn, record, message, started);
        }
        Sniffed::Closed | Sniffed::Shutdown => {}
    }
}

/// The destination the redirect rule rewrote (`SO_ORIGINAL_DST`).
fn original_destination(stream: &TcpStream) -> std::io::Result<SocketAddrV4> {
    let address = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::OriginalDst)?;
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr)),
        u16::from_be(address.sin_port),
    ))
}

/// TLS to `name:port`: the ClientHello's SNI must be `name`; then the tunnel is decided and
/// carried as a CONNECT to `name:port` would be.
async fn tls<S>(
    conn: ConnContext,
    mut client: S,
    name: &str,
    port: u16,
    mut record: Traffic,
    started: Instant,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let shared = conn.shared.clone();
    let url = match NormalizedUrl::from_parts("https", &format!("{name}:{port}"), "/") {
        Ok(url) => url,
        Err(error) => {
            let error = ProxyError::new(ErrorCode::InvalidUrl, error.to_string());
            let _ = refuse(&shared, record, &error, started);
            return;
        }
    };
    let hello = client_hello::read(&mut client, shared.settings.header_read_timeout).await;
    let (seen, sni) = match hello {
        Ok(hello) => hello,
        Err(client_hello::Unread::Closed) => return,
        Err(client_hello::Unread::TimedOut) => {
            record.outcome = Outcome::ClientTimeout;
            return finish(&shared, record, started);
        }
        Err(client_hello::Unread::Invalid(why)) => {
            let message = format!("{name}:{port}: the TLS ClientHello could not be read: {why}");
            return refuse_non_http(&conn, record, message, started);
        }
    };
    if let Err(error) = intercept::check_server_name(sni.as_deref(), &url, Via::Transparent) {
        record.decision = Verdict::Deny;
        record.reason = error.reason.clone();
        record.error = Some(error.code.as_str());
        record.message = Some(error.message.clone());
        record.outcome = Outcome::SniMismatch;
        return finish(&shared, record, started);
    }
    // Replayed to whoever takes the connection from here: the interception's acceptor, or
    // the upstream of a passthrough tunnel.
    let client = Prefixed::new(seen, client);
    match tunnel::open_target(&shared, url, &http::HeaderMap::new(), &mut record).await {
        Err(error) => {
            let _ = refuse(&shared, record, &error, started);
        }
        Ok(Opened::Intercept(url)) => {
            intercept::serve_stream(conn, client, url, record, started, Via::Transparent).await;
        }
        Ok(Opened::Passthrough(passage)) => {
            tunnel::relay(conn, client, passage, record, started).await;
        }
    }
}

/// Plain HTTP to `name:port`: each request bound to `http://name:port`, then the pipeline.
async fn http<S>(conn: ConnContext, client: S, name: &str, port: u16)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let origin = match NormalizedUrl::from_parts("http", &format!("{name}:{port}"), "/") {
        Ok(origin) => Arc::new(origin),
        Err(error) => {
            tracing::warn!("transparent connection to {name}:{port}: {error}");
            return;
        }
    };
    let route = move |context: ConnContext, request: Request<Incoming>, ambiguous: bool| {
        let origin = origin.clone();
        async move {
            intercept::request(
                context.shared.clone(),
                &origin,
                request,
                ambiguous,
                Via::Transparent,
            )
            .await
        }
    };
    serve_http(conn, client, route).await;
}

fn refuse_unmapped(conn: &ConnContext, record: Traffic, message: String, started: Instant) {
    let error = ProxyError::new(ErrorCode::InvalidRequest, message).with_reason("unmapped_address");
    close_refused(conn, record, &error, Outcome::UnmappedAddress, started);
}

fn refuse_non_http(conn: &ConnContext, record: Traffic, message: String, started: Instant) {
    let error = ProxyError::new(ErrorCode::InvalidRequest, message).with_reason("non_http");
    close_refused(conn, record, &error, Outcome::NonHttpRefused, started);
}

/// A connection refused before anything was decided: its record; the caller closes it.
fn close_refused(
    conn: &ConnContext,
    mut record: Traffic,
    error: &ProxyError,
    outcome: Outcome,
    started: Instant,
) {
    record.decision = Verdict::Deny;
    record.reason = error.reason.clone();
    record.error = Some(error.code.as_str());
    record.message = Some(error.message.clone());
    record.outcome = outcome;
    finish(&conn.shared, record, started);
}
