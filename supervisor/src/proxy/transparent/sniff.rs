//! What a transparent connection carries, from its first bytes: a TLS handshake record, an
//! HTTP/1 request line (a method token and a space), or something else.

use bytes::Bytes;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The first byte of every TLS record carrying a handshake (RFC 8446 §5.1).
const TLS_HANDSHAKE: u8 = 0x16;
/// The longest method token read before deciding it is not HTTP (`OPTIONS`, `PROPFIND` and
/// extension methods fit).
const MAX_METHOD: usize = 16;

/// What the connection's first bytes are; the bytes read are handed on to be replayed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Sniffed {
    Tls(Bytes),
    Http(Bytes),
    Other,
    /// Nothing within the timeout.
    Silent,
    /// Closed before sending anything.
    Closed,
    Shutdown,
}

/// Reads until the first bytes decide, `timeout` at most.
pub(super) async fn first_bytes(
    stream: &mut TcpStream,
    timeout: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Sniffed {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buffer = [0u8; MAX_METHOD + 1];
    let mut len = 0;
    loop {
        let read = tokio::select! {
            read = stream.read(&mut buffer[len..]) => read,
            _ = tokio::time::sleep_until(deadline) => {
                return if len == 0 { Sniffed::Silent } else { Sniffed::Other };
            }
            _ = crate::proxy::stopped(&mut shutdown) => return Sniffed::Shutdown,
        };
        match read {
            Ok(0) | Err(_) if len == 0 => return Sniffed::Closed,
            Ok(0) | Err(_) => return Sniffed::Other,
            Ok(n) => len += n,
        }
        match classify(&buffer[..len]) {
            Some(Kind::Tls) => return Sniffed::Tls(Bytes::copy_from_slice(&buffer[..len])),
            Some(Kind::Http) => return Sniffed::Http(Bytes::copy_from_slice(&buffer[..len])),
            Some(Kind::Other) => return Sniffed::Other,
            None => {}
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Tls,
    Http,
    Other,
}

/// `None` while more bytes are needed to tell.
fn classify(bytes: &[u8]) -> Option<Kind> {
    let first = *bytes.first()?;
    if first == TLS_HANDSHAKE {
        return Some(Kind::Tls);
    }
    if !first.is_ascii_uppercase() {
        return Some(Kind::Other);
    }
    for (i, &byte) in bytes.iter().enumerate() {
        if byte == b' ' {
            return Some(Kind::Http);
        }
        // Methods are tokens (RFC 9110 §9.1); real ones are upper-case letters and `-`.
        if !(byte.is_ascii_uppercase() || byte == b'-' || byte == b'_') || i >= MAX_METHOD {
            return Some(Kind::Other);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_tell_tls_from_http_from_anything_else() {
        assert_eq!(classify(&[0x16, 0x03, 0x01]), Some(Kind::Tls));
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Kind::Http));
        assert_eq!(classify(b"PROPFIND /"), Some(Kind::Http));
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Some(Kind::Other));
        assert_eq!(classify(b"get / HTTP/1.1"), Some(Kind::Other));
        assert_eq!(classify(b"\x00\x01"), Some(Kind::Other));
        assert_eq!(classify(b"AAAAAAAAAAAAAAAAAAAA"), Some(Kind::Other));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b""), None);
    }
}
