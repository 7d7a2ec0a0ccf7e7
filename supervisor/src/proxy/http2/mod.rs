//! The HTTP/2 server tollgate speaks to the sandbox inside intercepted TLS, when the client
//! picked `h2` by ALPN.
//!
//! Why a second server: gRPC (and any client that insists on HTTP/2) cannot fall back to
//! HTTP/1.1. Each stream is one request and goes through the same route as an HTTP/1.1
//! request (`intercept::request` → `pipeline::handle`), so it is decided, counted,
//! credentialed and audited the same way; a refused stream gets its own error response and
//! the connection's other streams go on.
//!
//! HTTP/2 lets one connection carry a great deal of work, so every limit hyper's builder has
//! is set here with why ([`configure`]), and [`streams`] adds what hyper lacks: the idle
//! timeout of a connection with no open stream, and a guard against a client that cancels
//! far more streams than it lets finish. How the connection ended ([`ending`]) becomes the
//! tunnel's record: `protocol_error` with a sentence when the client broke the protocol or
//! a limit. HTTP/2 in clear text (h2c) is never served ([`h2c`]).

mod ending;
mod goaway;
pub(crate) mod h2c;
mod streams;

use super::body::ProxyBody;
use super::http1::MAX_HEADER_BYTES;
use super::ConnContext;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use streams::{Streams, Watch};
use tokio::io::{AsyncRead, AsyncWrite};

/// Streams one connection may have open at once. RFC 9113 §6.5.2 advises no fewer than 100;
/// each open stream may hold an upstream request, so more would let one connection outgrow
/// `limits.max_connections` many times over.
const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Streams the client may reset before tollgate accepted them, before the connection is
/// closed with `ENHANCE_YOUR_CALM`: the rapid-reset attack (CVE-2023-44487) opens and resets
/// streams as fast as it can write, each costing the server work but counting against no
/// concurrency limit. h2's own default, stated.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams tollgate may reset because of the client's errors, before the connection is
/// closed: the "MadeYouReset" variant (CVE-2025-8671) makes the server reset streams for it.
/// hyper's default, stated.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// How often a connection is pinged, and how long a ping may go unanswered before the
/// connection is closed: a client that vanished (its host gone, no FIN) would otherwise hold
/// its streams, and their upstream requests, until each one's timeout.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Response bytes hyper buffers for one stream ahead of the client's flow-control window.
/// With [`MAX_CONCURRENT_STREAMS`] streams this bounds a connection's send buffers at 12.5
/// MiB (hyper's 400 KiB default would allow 39 MiB to a client that never reads).
const MAX_SEND_BUFFER: usize = 128 * 1024;
/// Request-body bytes the client may send ahead of tollgate reading them, per stream and for
/// the whole connection. The connection window bounds what a connection can make tollgate
/// hold at once whatever the number of streams; 1 MiB keeps uploads at full speed across a
/// loopback or LAN round trip. hyper's defaults, stated.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// How long a connection closed by the cancel guard has to write its GOAWAY.
const GOODBYE_WITHIN: Duration = Duration::from_millis(200);

/// Why a connection was closed by tollgate because of what the client did: the sentence for
/// the tunnel's record (`outcome: protocol_error`).
#[derive(Debug)]
pub(crate) struct ProtocolError(pub String);

/// Serves HTTP/2 on `stream` until it closes, idles past the header read timeout, breaks
/// the protocol, or the proxy shuts down. `route(context, request, ambiguous_framing)`
/// answers each stream (framing is never ambiguous in HTTP/2: every frame has its length).
pub(crate) async fn serve_h2<S, R, F>(
    context: ConnContext,
    stream: S,
    route: R,
) -> Result<(), ProtocolError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    R: Fn(ConnContext, Request<Incoming>, bool) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let settings = context.shared.settings.clone();
    let mut stop = context.shutdown.clone();
    let guard = context.guard.clone();
    let streams = Arc::new(Streams::default());
    let service = {
        let streams = streams.clone();
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            // For work that outlives the response, as on HTTP/1.1.
            request.extensions_mut().insert(context.clone());
            let open = streams.open();
            let answer = route(context.clone(), request, false);
            async move {
                let response = answer.await;
                Ok::<_, Infallible>(open.answered(response))
            }
        })
    };
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    configure(&mut builder);
    let (stream, sent) = goaway::Tapped::new(stream);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        result = connection.as_mut() => {
            result.err().and_then(|e| ending::describe(&e, sent.debug_data().as_deref()))
        }
        watched = streams.watch(settings.header_read_timeout) => match watched {
            // No stream for as long as an HTTP/1.1 connection may idle between requests:
            // GOAWAY, as an h1 connection would close.
            Watch::Idle => {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(settings.shutdown_grace, connection).await;
                None
            }
            // A GOAWAY first, so the client is told rather than cut off (hyper sends it
            // with NO_ERROR: it has no way to send another code), then the connection is
            // dropped: its open streams have nothing to wait for.
            Watch::Abusive(message) => {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(GOODBYE_WITHIN, connection).await;
                Some(message)
            }
        },
        _ = crate::proxy::stopped(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(settings.shutdown_grace, connection).await;
            None
        }
    };
    drop(guard);
    match ended {
        Some(message) => {
            tracing::info!("HTTP/2 connection closed: {message}");
            Err(ProtocolError(message))
        }
        None => Ok(()),
    }
}

/// Every limit of hyper's HTTP/2 server, set (see the constants for why each value).
fn configure(builder: &mut hyper::server::conn::http2::Builder<TokioExecutor>) {
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        // The HTTP/1.1 server's limit, so a request's headers fit the same bound either way.
        // HTTP/2 counts 32 bytes more per field (RFC 9113 §6.5.2); a header block that goes
        // on past it, in CONTINUATION frames or not, is a connection error (h2's flood
        // guard), a smaller excess a 431 on its stream.
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .max_send_buf_size(MAX_SEND_BUFFER)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    // Not enabled: RFC 8441's extended CONNECT. WebSocket goes over HTTP/1.1, where the
    // session is relayed (docs/clients.md).
}
