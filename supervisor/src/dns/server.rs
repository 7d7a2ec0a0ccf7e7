//! The stub resolver's sockets: UDP and TCP loops on sockets the caller bound (inside the
//! sandbox's network namespace, on `127.0.0.1:53`), answering each message with
//! [`answer`](super::answer::answer) and counting what it said.
//!
//! It has no upstream at all: the only packet it ever sends is a response to the asker.
//! What a hostile sandbox can make it hold is bounded: one message buffer per UDP socket
//! and per TCP connection, at most [`MAX_TCP_CONNECTIONS`] connections (more are closed at
//! once), each closed after [`IDLE_TIMEOUT`] without a whole message or a write that does
//! not complete.

use super::answer::{answer, refuse_oversized, Outcome, Reply, MAX_MESSAGE};
use super::names::SyntheticNames;
use serde::Serialize;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};
use tollgate_policy::Policy;

/// TCP connections served at once; a client that opens more gets the extra ones closed.
pub const MAX_TCP_CONNECTIONS: usize = 16;
/// How long a TCP connection may take to send its next whole message, or to take a
/// response, before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the accept loop waits after an accept error that is not the client's (out of
/// file descriptors), so it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The resolver's counters (the summary's `dns` object).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DnsStats {
    /// Messages received, over UDP and TCP, including those that got no response.
    pub queries: u64,
    /// Responses with an A record (a synthetic address).
    pub answered: u64,
    /// NXDOMAIN, REFUSED, NOTIMP, FORMERR, SERVFAIL and BADVERS responses. NODATA (a name
    /// that exists without records of the type asked) counts in neither.
    pub refused: u64,
}

#[derive(Debug, Default)]
struct Counters {
    queries: AtomicU64,
    answered: AtomicU64,
    refused: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DnsStats {
        DnsStats {
            queries: self.queries.load(Ordering::Relaxed),
            answered: self.answered.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// What both loops answer from.
struct Responder {
    names: Arc<SyntheticNames>,
    policy: Arc<Policy>,
    counters: Counters,
}

impl Responder {
    /// The response to one whole message, counted.
    fn respond(&self, message: &[u8]) -> Option<Vec<u8>> {
        self.counters.queries.fetch_add(1, Ordering::Relaxed);
        let reply = answer(message, self.policy.network.as_ref(), &self.names);
        self.count(reply)
    }

    /// The response to a TCP message over [`MAX_MESSAGE`] bytes of which `head` was read.
    fn respond_oversized(&self, head: &[u8]) -> Option<Vec<u8>> {
        self.counters.queries.fetch_add(1, Ordering::Relaxed);
        self.count(refuse_oversized(head))
    }

    fn count(&self, reply: Option<Reply>) -> Option<Vec<u8>> {
        let reply = reply?;
        match reply.outcome {
            Outcome::Answered => self.counters.answered.fetch_add(1, Ordering::Relaxed),
            Outcome::Refused => self.counters.refused.fetch_add(1, Ordering::Relaxed),
            Outcome::NoData => 0,
        };
        Some(reply.message)
    }
}

/// The running resolver. Dropping it stops both loops too; [`StubResolver::shutdown`]
/// also waits for them and returns the final counters.
pub struct StubResolver {
    responder: Arc<Responder>,
    udp: JoinHandle<()>,
    tcp: JoinHandle<()>,
}

impl StubResolver {
    /// Serves `udp` and `tcp` (bound by the caller, blocking or not) on `runtime`,
    /// answering from `names` and the policy's network section.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
        names: Arc<SyntheticNames>,
        policy: Arc<Policy>,
    ) -> io::Result<StubResolver> {
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        let _entered = runtime.enter();
        let udp = UdpSocket::from_std(udp)?;
        let tcp = TcpListener::from_std(tcp)?;
        let responder = Arc::new(Responder {
            names,
            policy,
            counters: Counters::default(),
        });
        Ok(StubResolver {
            udp: runtime.spawn(serve_udp(udp, Arc::clone(&responder))),
            tcp: runtime.spawn(serve_tcp(tcp, Arc::clone(&responder))),
            responder,
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> DnsStats {
        self.responder.counters.snapshot()
    }

    /// Stops both loops (and every TCP connection) and returns the final counters.
    pub async fn shutdown(mut self) -> DnsStats {
        self.udp.abort();
        self.tcp.abort();
        // Cancelled is the expected result; a panic inside a loop has been logged by tokio.
        let _ = (&mut self.udp).await;
        let _ = (&mut self.tcp).await;
        self.stats()
    }
}

impl Drop for StubResolver {
    fn drop(&mut self) {
        self.udp.abort();
        self.tcp.abort();
    }
}

async fn serve_udp(socket: UdpSocket, responder: Arc<Responder>) {
    // One byte more than the largest message read, so a longer datagram is seen as such
    // (the kernel cuts it to the buffer) and refused.
    let mut buffer = vec![0u8; MAX_MESSAGE + 1];
    loop {
        let (length, asker) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(error) if is_transient(&error) => continue,
            Err(error) => {
                tracing::warn!(%error, "dns: the stub resolver's UDP socket failed; UDP queries go unanswered from now on");
                return;
            }
        };
        let Some(response) = responder.respond(&buffer[..length]) else {
            continue;
        };
        if let Err(error) = socket.send_to(&response, asker).await {
            tracing::debug!(%error, "dns: a UDP response could not be sent");
        }
    }
}

async fn serve_tcp(listener: TcpListener, responder: Arc<Responder>) {
    // Dropped with this loop when the resolver stops: that aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) if is_transient(&error) => continue,
            Err(error) => {
                tracing::debug!(%error, "dns: accepting a TCP connection failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_TCP_CONNECTIONS {
            tracing::debug!(
                limit = MAX_TCP_CONNECTIONS,
                "dns: a TCP connection over the limit was closed"
            );
            continue;
        }
        connections.spawn(serve_connection(stream, Arc::clone(&responder)));
    }
}

/// Errors of one datagram or one connection attempt, not of the socket.
fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

/// RFC 7766: messages with a two-byte length in front, as many as the client sends, each
/// answered in turn. A message that gets no response (no header) closes the connection.
async fn serve_connection(mut stream: TcpStream, responder: Arc<Responder>) {
    let mut buffer = Vec::with_capacity(MAX_MESSAGE);
    let mut framed = Vec::with_capacity(2 + 512);
    loop {
        let read = tokio::time::timeout(IDLE_TIMEOUT, read_message(&mut stream, &mut buffer));
        let response = match read.await {
            Ok(Ok(Framing::Whole)) => responder.respond(&buffer),
            Ok(Ok(Framing::Oversized)) => responder.respond_oversized(&buffer),
            // The client closed, broke the framing or went idle.
            Ok(Err(_)) | Err(_) => return,
        };
        let Some(response) = response else {
            return;
        };
        let Ok(length) = u16::try_from(response.len()) else {
            return;
        };
        framed.clear();
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(&response);
        match tokio::time::timeout(IDLE_TIMEOUT, stream.write_all(&framed)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// What [`read_message`] left in the buffer.
enum Framing {
    /// The whole message.
    Whole,
    /// The first 12 bytes of a message over [`MAX_MESSAGE`]; the rest was read and dropped.
    Oversized,
}

async fn read_message(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> io::Result<Framing> {
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix).await?;
    let length = usize::from(u16::from_be_bytes(prefix));
    buffer.clear();
    if length <= MAX_MESSAGE {
        buffer.resize(length, 0);
        stream.read_exact(buffer).await?;
        return Ok(Framing::Whole);
    }
    const HEADER: usize = 12;
    buffer.resize(HEADER, 0);
    stream.read_exact(buffer).await?;
    let rest = u64::try_from(length - HEADER).unwrap_or(u64::MAX);
    let skipped = tokio::io::copy(&mut (&mut *stream).take(rest), &mut tokio::io::sink()).await?;
    if skipped < rest {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Framing::Oversized)
}

#[cfg(test)]
mod tests;
