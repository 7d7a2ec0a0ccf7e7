//! Transports for tests and benchmarks: [`MockTransport`] injects faults and serves HTTP from
//! memory, [`RemapTransport`] sends decided addresses to other (loopback) sockets.
//!
//! Both sit behind the gate like the real transport: they are only ever handed addresses the
//! policy allowed, and the tests assert on exactly those addresses. Neither is meant for a
//! production run.

use super::body::ProxyBody;
use super::upstream::{DialError, DialTarget, Dialed, Transport, Upstream};
use super::BoxFuture;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

/// What one dial of a [`MockTransport`] does.
pub enum MockDial {
    /// Connection refused.
    Refuse,
    /// No answer: the dial waits out the connect timeout.
    Hang,
    /// Connects, then closes before sending anything (a reset before any response).
    Close,
    /// Connects to this stream (e.g. one half of `tokio::io::duplex`).
    Stream(Box<dyn Upstream>),
    /// Connects to the mock's in-memory HTTP server.
    Http,
}

type Script = dyn Fn(usize, &DialTarget) -> MockDial + Send + Sync;
type Handler = dyn Fn(Request<Incoming>) -> BoxFuture<'static, Response<ProxyBody>> + Send + Sync;

/// A transport whose every dial is scripted: `script(n, target)` decides dial `n` (0-based).
pub struct MockTransport {
    script: Box<Script>,
    handler: Option<Arc<Handler>>,
    dials: Mutex<Vec<SocketAddr>>,
}

impl MockTransport {
    pub fn new(script: impl Fn(usize, &DialTarget) -> MockDial + Send + Sync + 'static) -> Self {
        MockTransport {
            script: Box::new(script),
            handler: None,
            dials: Mutex::new(Vec::new()),
        }
    }

    /// A mock whose every dial reaches an in-memory HTTP/1.1 server running `handler`.
    pub fn http<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
    {
        MockTransport::new(|_, _| MockDial::Http).with_http(handler)
    }

    /// Sets the server that [`MockDial::Http`] connects to.
    pub fn with_http<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
    {
        self.handler = Some(Arc::new(move |request| Box::pin(handler(request))));
        self
    }

    /// Every address dialed (the first decided address of each dial), in order.
    pub fn dials(&self) -> Vec<SocketAddr> {
        match self.dials.lock() {
            Ok(dials) => dials.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn serve(&self) -> io::Result<Box<dyn Upstream>> {
        let handler = self
            .handler
            .clone()
            .ok_or_else(|| io::Error::other("MockDial::Http needs MockTransport::with_http"))?;
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = handler(request);
                async move { Ok::<_, std::convert::Infallible>(response.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), service)
                .await;
        });
        Ok(Box::new(client))
    }
}

impl Transport for MockTransport {
    fn dial<'a>(&'a self, target: DialTarget<'a>) -> BoxFuture<'a, Result<Dialed, DialError>> {
        Box::pin(async move {
            let Some(first) = target.addresses.first() else {
                return Err(DialError::Failed(io::Error::other("no address")));
            };
            let peer = SocketAddr::new(*first, target.port);
            let index = {
                let mut dials = match self.dials.lock() {
                    Ok(dials) => dials,
                    Err(poisoned) => poisoned.into_inner(),
                };
                dials.push(peer);
                dials.len() - 1
            };
            let stream: Box<dyn Upstream> = match (self.script)(index, &target) {
                MockDial::Refuse => {
                    return Err(DialError::Failed(io::ErrorKind::ConnectionRefused.into()))
                }
                MockDial::Hang => {
                    tokio::time::sleep(target.connect_timeout).await;
                    return Err(DialError::TimedOut);
                }
                MockDial::Close => {
                    let (client, server) = tokio::io::duplex(1024);
                    drop(server);
                    Box::new(client)
                }
                MockDial::Stream(stream) => stream,
                MockDial::Http => self.serve().map_err(DialError::Failed)?,
            };
            Ok(Dialed { stream, peer })
        })
    }
}

/// A transport that dials `map[decided address]` instead of the decided address itself, so
/// a test can decide on `198.51.100.10` (pinned, covered by `allowed_ips`) and reach a
/// server on `127.0.0.1`. Unmapped addresses are refused, never dialed.
pub struct RemapTransport {
    map: HashMap<IpAddr, SocketAddr>,
    dials: Mutex<Vec<SocketAddr>>,
}

impl RemapTransport {
    pub fn new(map: impl IntoIterator<Item = (IpAddr, SocketAddr)>) -> Self {
        RemapTransport {
            map: map.into_iter().collect(),
            dials: Mutex::new(Vec::new()),
        }
    }

    /// The decided addresses dialed (before remapping), in order.
    pub fn dials(&self) -> Vec<SocketAddr> {
        match self.dials.lock() {
            Ok(dials) => dials.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl Transport for RemapTransport {
    fn dial<'a>(&'a self, target: DialTarget<'a>) -> BoxFuture<'a, Result<Dialed, DialError>> {
        Box::pin(async move {
            let mut last = DialError::Failed(io::ErrorKind::ConnectionRefused.into());
            for address in target.addresses {
                let decided = SocketAddr::new(*address, target.port);
                if let Ok(mut dials) = self.dials.lock() {
                    dials.push(decided);
                }
                let Some(real) = self.map.get(address) else {
                    continue;
                };
                let connect = tokio::net::TcpStream::connect(*real);
                match tokio::time::timeout(target.connect_timeout, connect).await {
                    Ok(Ok(stream)) => {
                        let _ = stream.set_nodelay(true);
                        return Ok(Dialed {
                            stream: Box::new(stream),
                            peer: decided,
                        });
                    }
                    Ok(Err(error)) => last = DialError::Failed(error),
                    Err(_) => last = DialError::TimedOut,
                }
            }
            Err(last)
        })
    }
}
