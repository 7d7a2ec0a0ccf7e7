//! HTTP/2 in clear text with prior knowledge (h2c): recognised by its connection preface and
//! refused in words an HTTP/2 client shows its user.
//!
//! Why refused rather than served: tollgate's plain-HTTP paths (the proxy port, a
//! transparent `http://` connection) are HTTP/1.1 servers, and an intercepted tunnel must
//! carry TLS. HTTP/2 is offered where it can be negotiated: by ALPN inside TLS. An h2c client
//! would read an HTTP/1.1 `400` as garbage, so it gets what it understands: an empty
//! `SETTINGS` (the server's preface) then a `GOAWAY` with `HTTP_1_1_REQUIRED` whose debug
//! data is the sentence saying what to do. h2 cannot write these for a server that never
//! accepts the connection, so [`refusal`] lays out the two frames itself.

use crate::audit::{Outcome, Traffic, Verdict};
use crate::proxy::errors::{ErrorCode, ProxyError};
use crate::proxy::finish::finish;
use crate::proxy::Shared;
use bytes::{BufMut, Bytes, BytesMut};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The client connection preface (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types and the error code used (RFC 9113 §6.5, §6.8, §7).
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const HTTP_1_1_REQUIRED: u32 = 0xd;
/// The largest frame payload a peer must accept before any SETTINGS (RFC 9113 §4.2).
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// How long the client's own preface frames are read and discarded after the refusal, so
/// closing does not reset the connection under the GOAWAY before the client read it.
const DRAIN: Duration = Duration::from_secs(1);

/// Whether `bytes` (what a connection sent first) could still become the preface.
pub(crate) fn may_be_preface(bytes: &[u8]) -> bool {
    let n = bytes.len().min(PREFACE.len());
    bytes[..n] == PREFACE[..n]
}

/// Reads from `stream`, after `seen` (bytes already read from it), until what was read is
/// either the whole preface (`true`) or cannot become it (`false`), within `timeout`. Every
/// byte read is returned, to be replayed to whoever serves the connection otherwise; a
/// client that stops sending, or closes, is handed on (`false`) for that server to time out.
pub(crate) async fn read_preface<S>(stream: &mut S, seen: &[u8], timeout: Duration) -> (bool, Bytes)
where
    S: AsyncRead + Unpin,
{
    let mut read = BytesMut::from(seen);
    let deadline = tokio::time::Instant::now() + timeout;
    while may_be_preface(&read) && read.len() < PREFACE.len() {
        let mut more = [0u8; PREFACE.len()];
        let want = PREFACE.len() - read.len();
        match tokio::time::timeout_at(deadline, stream.read(&mut more[..want])).await {
            Ok(Ok(n)) if n > 0 => read.extend_from_slice(&more[..n]),
            _ => return (false, read.freeze()),
        }
    }
    let whole = read.len() >= PREFACE.len() && may_be_preface(&read);
    (whole, read.freeze())
}

/// The refusal for a connection whose first bytes are the preface: `invalid_request`, reason
/// `h2c_unsupported`, `message` saying what to do instead.
pub(crate) fn unsupported(message: String) -> ProxyError {
    ProxyError::new(ErrorCode::InvalidRequest, message).with_reason("h2c_unsupported")
}

/// Writes `record` as refused with `error` (see [`unsupported`]; `outcome`: the record type's
/// word for it), then refuses the connection ([`refuse`]). The record comes first: the client
/// may look for it as soon as it has read the GOAWAY.
pub(crate) async fn refuse_recorded<S>(
    shared: &Shared,
    stream: &mut S,
    mut record: Traffic,
    error: ProxyError,
    outcome: Outcome,
    started: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    record.decision = Verdict::Deny;
    record.reason = error.reason.clone();
    record.error = Some(error.code.as_str());
    record.message = Some(error.message.clone());
    record.status = None;
    record.outcome = outcome;
    finish(shared, record, started);
    refuse(stream, &error.message).await;
}

/// An empty SETTINGS frame, then GOAWAY (last stream 0, `HTTP_1_1_REQUIRED`, `message` as
/// debug data).
pub(crate) fn refusal(message: &str) -> Vec<u8> {
    // Every frame: 24-bit payload length, 8-bit type, 8-bit flags, one reserved bit and a
    // 31-bit stream id (RFC 9113 §4.1); both frames here are on stream 0.
    fn frame(out: &mut BytesMut, kind: u8, payload: &[u8]) {
        let length = payload.len() as u32;
        out.put_slice(&length.to_be_bytes()[1..]);
        out.put_u8(kind);
        out.put_u8(0);
        out.put_u32(0);
        out.put_slice(payload);
    }
    // GOAWAY's payload (§6.8): reserved bit and 31-bit last stream id (0: none was
    // processed), the 32-bit error code, then debug data (kept within the frame size).
    let debug = &message.as_bytes()[..message.len().min(MAX_FRAME_PAYLOAD - 8)];
    let mut goaway = BytesMut::with_capacity(8 + debug.len());
    goaway.put_u32(0);
    goaway.put_u32(HTTP_1_1_REQUIRED);
    goaway.put_slice(debug);
    let mut out = BytesMut::new();
    frame(&mut out, SETTINGS, &[]);
    frame(&mut out, GOAWAY, &goaway);
    out.to_vec()
}

/// Writes the refusal, closes the write side and reads what the client still sends (its
/// SETTINGS, its first HEADERS) for a moment, so the close does not reset the connection
/// before the client read the GOAWAY.
pub(crate) async fn refuse<S>(stream: &mut S, message: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let answer = refusal(message);
    let _ = tokio::time::timeout(DRAIN, async {
        stream.write_all(&answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_settings_then_goaway_http_1_1_required() {
        let bytes = refusal("use TLS");
        assert_eq!(&bytes[..9], &[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]);
        let goaway = &bytes[9..];
        assert_eq!(&goaway[..3], &[0, 0, 15]);
        assert_eq!(goaway[3], GOAWAY);
        assert_eq!(&goaway[5..9], &[0, 0, 0, 0]);
        assert_eq!(&goaway[9..13], &[0, 0, 0, 0]);
        assert_eq!(&goaway[13..17], &[0, 0, 0, 0xd]);
        assert_eq!(&goaway[17..], b"use TLS");
    }

    #[test]
    fn only_the_preface_is_taken_for_one() {
        assert!(may_be_preface(b"PRI * HTTP/2.0"));
        assert!(may_be_preface(b""));
        assert!(!may_be_preface(b"POST / HTTP/1.1"));
        assert!(!may_be_preface(b"PRI /x HTTP/1.1"));
    }

    #[tokio::test]
    async fn the_preface_is_read_across_short_reads() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&PREFACE[1..10]).await.unwrap();
        let reading =
            tokio::spawn(
                async move { read_preface(&mut server, b"P", Duration::from_secs(30)).await },
            );
        client.write_all(&PREFACE[10..]).await.unwrap();
        let (whole, read) = reading.await.unwrap();
        assert!(whole);
        assert_eq!(&read[..], &PREFACE[..]);
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"UT / HTTP/1.1\r\n").await.unwrap();
        let (whole, read) = read_preface(&mut server, b"P", Duration::from_secs(30)).await;
        assert!(!whole);
        assert!(read.starts_with(b"PUT"), "{read:?}");
    }
}
