//! Accepting the sandbox's connections: the concurrent-connection cap, one HTTP/1.1 server
//! ([`super::http1`]) per connection routing CONNECT to [`super::tunnel`] and the rest to
//! [`super::forward`] (HTTP/2 in clear text refused, [`super::http2::h2c`]), the transparent listener's connections to [`super::transparent`]
//! (under the same cap), and an orderly shutdown that waits briefly for in-flight work.

use super::body::ProxyBody;
use super::errors::{raw_response, ErrorCode};
use super::http1::serve_http;
use super::http2::h2c;
use super::stats::ProxyStats;
use super::transparent::{self, NameOf, TransparentListener};
use super::tunnel::intercept::Prefixed;
use super::{forward, tunnel, ConnContext, Shared};
use crate::audit::{Kind, Outcome, Traffic};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

/// A running proxy.
pub struct ProxyHandle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    local: SocketAddr,
}

impl ProxyHandle {
    /// The address the listener is bound to (inside the sandbox's namespace).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        self.shared.counters()
    }

    /// Waits until every audit record so far is written (for readers of a live audit log).
    pub fn sync_audit(&self) {
        if let Some(audit) = &self.shared.audit {
            audit.sync();
        }
    }

    /// Stops accepting, gives in-flight requests `shutdown_grace` to finish, closes tunnels,
    /// flushes the audit log and returns the final counters.
    pub async fn shutdown(self) -> ProxyStats {
        let _ = self.stop.send(true);
        if let Err(error) = self.task.await {
            tracing::error!("the proxy task ended abnormally: {error}");
        }
        // Every exchange has ended: the bytes they carried for the next take are charged now.
        if let Some(quotas) = &self.shared.quotas {
            quotas.flush().await;
        }
        self.shared.pool.clear();
        self.shared.log.flush();
        // The log may be shared with the rest of the execution, which closes it.
        if let Some(audit) = &self.shared.audit {
            audit.sync();
        }
        self.shared.counters()
    }
}

pub(crate) fn start(
    shared: Arc<Shared>,
    runtime: &tokio::runtime::Handle,
    listener: std::net::TcpListener,
    transparent: Option<TransparentListener>,
) -> io::Result<ProxyHandle> {
    let local = listener.local_addr()?;
    let (listener, transparent) = {
        let _entered = runtime.enter();
        let listener = async_listener(listener)?;
        let transparent = transparent
            .map(|t| Ok::<_, io::Error>((async_listener(t.listener)?, t.names)))
            .transpose()?;
        (listener, transparent)
    };
    let (stop, stopped) = watch::channel(false);
    let task = runtime.spawn(accept_loop(shared.clone(), listener, transparent, stopped));
    Ok(ProxyHandle {
        shared,
        stop,
        task,
        local,
    })
}

fn async_listener(listener: std::net::TcpListener) -> io::Result<TcpListener> {
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// The next connection on the transparent listener; never, without one.
async fn accept_transparent(
    transparent: &Option<(TcpListener, NameOf)>,
) -> (io::Result<(TcpStream, SocketAddr)>, NameOf) {
    match transparent {
        Some((listener, names)) => (listener.accept().await, names.clone()),
        None => std::future::pending().await,
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    transparent: Option<(TcpListener, NameOf)>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = shared
        .settings
        .max_connections
        .unwrap_or(shared.policy.limits.max_connections)
        .max(1);
    let slots = Arc::new(Semaphore::new(slots as usize));
    // Every connection and tunnel holds a clone of `guard`; shutdown waits for all of them.
    let (guard, mut all_done) = mpsc::channel::<()>(1);
    loop {
        let (accepted, names) = tokio::select! {
            _ = super::stopped(&mut stop) => break,
            accepted = listener.accept() => (accepted, None),
            (accepted, names) = accept_transparent(&transparent) => (accepted, Some(names)),
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("proxy accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let context = ConnContext {
            shared: shared.clone(),
            guard: guard.clone(),
            shutdown: stop.clone(),
            framing: Default::default(),
            slot: None,
        };
        match (slots.clone().try_acquire_owned(), names) {
            (Ok(permit), names) => {
                let context = ConnContext {
                    slot: Some(Arc::new(permit)),
                    ..context
                };
                match names {
                    None => tokio::spawn(serve_connection(context, stream)),
                    Some(names) => tokio::spawn(transparent::serve(context, stream, names)),
                };
            }
            (Err(_), None) => {
                tokio::spawn(refuse_connection(context, stream));
            }
            (Err(_), Some(_)) => {
                // Whatever it speaks, an answer it understands cannot be assumed: closed.
                super::denials::connection_refused(&context.shared);
                drop(stream);
            }
        }
    }
    drop(listener);
    drop(transparent);
    drop(guard);
    let grace = shared.settings.shutdown_grace + Duration::from_millis(500);
    let _ = tokio::time::timeout(grace, all_done.recv()).await;
}

async fn serve_connection(context: ConnContext, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // Only a connection that starts as the h2c preface does (`P`) is read before hyper
    // takes it; the rest reach the HTTP/1.1 server untouched.
    let timeout = context.shared.settings.header_read_timeout;
    let mut first = [0u8; 1];
    let mut stop = context.shutdown.clone();
    let peeked = tokio::select! {
        peeked = tokio::time::timeout(timeout, stream.peek(&mut first)) => peeked,
        _ = super::stopped(&mut stop) => return,
    };
    match peeked {
        // Silent or gone: what hyper's header read timeout would have done.
        Err(_) | Ok(Err(_)) | Ok(Ok(0)) => {}
        Ok(Ok(_)) if h2c::may_be_preface(&first) => {
            let started = std::time::Instant::now();
            let (preface, read) = h2c::read_preface(&mut stream, &[], timeout).await;
            if preface {
                return refuse_h2c(&context, stream, started).await;
            }
            serve_http(context, Prefixed::new(read, stream), route).await;
        }
        Ok(Ok(_)) => serve_http(context, stream, route).await,
    }
}

/// HTTP/2 in clear text on the proxy port: an HTTP/2 GOAWAY saying what to do, its record
/// (an `http` record: no target was read), then close.
async fn refuse_h2c(context: &ConnContext, mut stream: TcpStream, started: std::time::Instant) {
    let error = h2c::unsupported(
        "tollgate's proxy port speaks HTTP/1.1: send https:// URLs through CONNECT (HTTP/2 is \
         offered by ALPN inside the tunnel's TLS) and http:// URLs in HTTP/1.1, not HTTP/2 in \
         clear text (h2c, prior knowledge)"
            .to_owned(),
    );
    let record = Traffic::new(Kind::Http, "PRI");
    h2c::refuse_recorded(
        &context.shared,
        &mut stream,
        record,
        error,
        Outcome::Refused,
        started,
    )
    .await;
}

/// A request on the sandbox's connection to the proxy: CONNECT or absolute form.
async fn route(
    context: ConnContext,
    request: Request<Incoming>,
    ambiguous: bool,
) -> Response<ProxyBody> {
    if request.method() == Method::CONNECT {
        tunnel::tunnel(context, request).await
    } else {
        forward::forward(context.shared.clone(), request, ambiguous).await
    }
}

/// Over the connection cap: a short 503 with the error body, then close.
async fn refuse_connection(context: ConnContext, mut stream: TcpStream) {
    let shared = &context.shared;
    super::denials::connection_refused(shared);
    let limit = shared
        .settings
        .max_connections
        .unwrap_or(shared.policy.limits.max_connections);
    let message = format!(
        "this execution already has {limit} open connections to the proxy (limits.max_connections); close idle connections or reuse them"
    );
    tracing::warn!("connection refused: {message}");
    let answer = raw_response(ErrorCode::TooManyConnections, &message, &shared.execution);
    let write = async {
        stream.write_all(&answer).await?;
        stream.shutdown().await?;
        // Drain what the client sent so closing does not reset the connection under it.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}
