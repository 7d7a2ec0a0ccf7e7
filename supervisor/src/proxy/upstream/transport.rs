//! The upstream byte stream: a [`Transport`] connects to one of the addresses the gate
//! decided on, and tollgate speaks HTTP (or relays a tunnel) over what it returns.
//!
//! The trait sits *after* the policy and SSRF checks: it receives only decided addresses,
//! so swapping it (a mock for fault injection, an address map for loopback tests) never
//! moves the security boundary out of tollgate. The default [`DirectTransport`] dials the
//! addresses in order, each under the connect timeout, and nothing else.

use crate::proxy::BoxFuture;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A connected upstream stream.
pub trait Upstream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Upstream for T {}

/// What to connect to: only these addresses, on this port.
#[derive(Debug, Clone)]
pub struct DialTarget<'a> {
    /// The normalised host name, for messages and for transports that route by name.
    pub host: &'a str,
    pub port: u16,
    /// The decided addresses, in the order to try them.
    pub addresses: &'a [IpAddr],
    /// The timeout for each connection attempt.
    pub connect_timeout: Duration,
}

/// A connected stream and the address it reached (for the audit record).
pub struct Dialed {
    pub stream: Box<dyn Upstream>,
    pub peer: SocketAddr,
}

/// Why no connection was made.
#[derive(Debug)]
pub enum DialError {
    /// Every address refused or failed; the last error is kept.
    Failed(io::Error),
    /// The last address did not answer within the connect timeout.
    TimedOut,
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::Failed(error) => write!(f, "{error}"),
            DialError::TimedOut => f.write_str("the connection attempt timed out"),
        }
    }
}

/// Opens upstream streams to decided addresses.
pub trait Transport: Send + Sync + 'static {
    fn dial<'a>(&'a self, target: DialTarget<'a>) -> BoxFuture<'a, Result<Dialed, DialError>>;
}

/// TCP from the supervisor's network namespace to the decided addresses, in order.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirectTransport;

impl Transport for DirectTransport {
    fn dial<'a>(&'a self, target: DialTarget<'a>) -> BoxFuture<'a, Result<Dialed, DialError>> {
        Box::pin(async move {
            let mut last = DialError::Failed(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "no address to dial",
            ));
            for address in target.addresses {
                let peer = SocketAddr::new(*address, target.port);
                match tokio::time::timeout(target.connect_timeout, TcpStream::connect(peer)).await {
                    Ok(Ok(stream)) => {
                        let _ = stream.set_nodelay(true);
                        return Ok(Dialed {
                            stream: Box::new(stream),
                            peer,
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
