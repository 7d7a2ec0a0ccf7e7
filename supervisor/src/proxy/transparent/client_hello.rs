//! Reading a transparent TLS connection's ClientHello before anything is decided: its server
//! name (SNI) says where the client means to go, and the bytes are kept to be replayed to
//! whoever takes the connection on (the interception's acceptor, or a passthrough upstream).
//! rustls parses it: hostile handshakes are its job, not a hand-written parser's.

use bytes::Bytes;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// A ClientHello larger than this is refused (real ones are a few hundred bytes to a few KiB;
/// post-quantum key shares stay well under it).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

#[derive(Debug)]
pub(super) enum Unread {
    Closed,
    TimedOut,
    Invalid(String),
}

/// Reads until a whole ClientHello is in: the bytes read and the server name it sent.
pub(super) async fn read<S>(
    client: &mut S,
    timeout: Duration,
) -> Result<(Bytes, Option<String>), Unread>
where
    S: AsyncRead + Unpin,
{
    match tokio::time::timeout(timeout, read_until_hello(client)).await {
        Ok(result) => result,
        Err(_) => Err(Unread::TimedOut),
    }
}

async fn read_until_hello<S>(client: &mut S) -> Result<(Bytes, Option<String>), Unread>
where
    S: AsyncRead + Unpin,
{
    let mut acceptor = rustls::server::Acceptor::default();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = client.read(&mut chunk).await.map_err(|_| Unread::Closed)?;
        if n == 0 {
            return Err(Unread::Closed);
        }
        if seen.len() + n > MAX_CLIENT_HELLO {
            return Err(Unread::Invalid(format!(
                "the ClientHello is larger than {MAX_CLIENT_HELLO} bytes"
            )));
        }
        seen.extend_from_slice(&chunk[..n]);
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            acceptor
                .read_tls(&mut fresh)
                .map_err(|e| Unread::Invalid(e.to_string()))?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted.client_hello().server_name().map(str::to_owned);
                return Ok((Bytes::from(seen), sni));
            }
            Ok(None) => {}
            Err((error, _alert)) => return Err(Unread::Invalid(error.to_string())),
        }
    }
}
