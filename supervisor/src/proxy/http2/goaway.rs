//! The debug data of the GOAWAY tollgate's HTTP/2 server sent, read off the bytes it writes.
//!
//! Why: h2 names which of its guards tripped (`too_many_resets`, `too_many_continuations`,
//! …) only in the GOAWAY's debug data, and the error hyper hands back has lost it; every
//! guard says `ENHANCE_YOUR_CALM`. The tunnel's record should say which, so the frames going
//! out are followed (a 9-byte header each, RFC 9113 §4.1; payloads skipped) and a GOAWAY's
//! payload is kept.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const GOAWAY: u8 = 0x7;
/// Enough of a GOAWAY payload for h2's words (last stream id, error code, debug data).
const KEPT: usize = 8 + 64;

/// A stream whose written frames are followed; [`Tap::debug_data`] gives the last GOAWAY's.
pub(super) struct Tapped<S> {
    inner: S,
    follow: Follow,
    seen: Tap,
}

/// Where the last GOAWAY's debug data is kept, for after the connection ended.
#[derive(Clone, Default)]
pub(super) struct Tap(Arc<Mutex<Option<Vec<u8>>>>);

impl Tap {
    /// The debug data of the last GOAWAY written, if any.
    pub fn debug_data(&self) -> Option<Vec<u8>> {
        let kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        kept.as_ref()
            .map(|payload| payload.get(8..).unwrap_or_default().to_vec())
    }
}

/// The frame parser's place in the outgoing bytes.
#[derive(Default)]
struct Follow {
    head: [u8; 9],
    head_len: usize,
    /// Payload bytes of the current frame still to come.
    remaining: usize,
    /// The current frame's payload so far, when it is a GOAWAY.
    goaway: Option<Vec<u8>>,
}

impl Follow {
    /// Follows `bytes`; a GOAWAY payload completed is handed to `done`.
    fn feed(&mut self, mut bytes: &[u8], done: &mut dyn FnMut(Vec<u8>)) {
        while !bytes.is_empty() {
            if self.remaining == 0 && self.head_len < 9 {
                let n = (9 - self.head_len).min(bytes.len());
                self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
                self.head_len += n;
                bytes = &bytes[n..];
                if self.head_len < 9 {
                    return;
                }
                self.remaining =
                    u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]) as usize;
                self.goaway = (self.head[3] == GOAWAY).then(Vec::new);
                if self.remaining == 0 {
                    self.end(done);
                }
                continue;
            }
            let n = self.remaining.min(bytes.len());
            if let Some(payload) = &mut self.goaway {
                let room = KEPT.saturating_sub(payload.len());
                payload.extend_from_slice(&bytes[..n.min(room)]);
            }
            self.remaining -= n;
            bytes = &bytes[n..];
            if self.remaining == 0 {
                self.end(done);
            }
        }
    }

    fn end(&mut self, done: &mut dyn FnMut(Vec<u8>)) {
        self.head_len = 0;
        if let Some(payload) = self.goaway.take() {
            done(payload);
        }
    }
}

impl<S> Tapped<S> {
    pub fn new(inner: S) -> (Tapped<S>, Tap) {
        let seen = Tap::default();
        let tapped = Tapped {
            inner,
            follow: Follow::default(),
            seen: seen.clone(),
        };
        (tapped, seen)
    }

    /// Follows bytes the inner stream took.
    fn observe(&mut self, bytes: &[u8]) {
        let seen = &self.seen;
        self.follow.feed(bytes, &mut |payload| {
            *seen.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(payload);
        });
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tapped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tapped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = written {
            this.observe(&data[..n]);
        }
        written
    }

    // h2 writes its frames vectored where the stream can (TLS can): kept so.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = written {
            for buf in bufs {
                if n == 0 {
                    break;
                }
                let taken = n.min(buf.len());
                this.observe(&buf[..taken]);
                n -= taken;
            }
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, 0, 0, 0, 0, 0]);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn a_goaway_is_found_among_frames_split_anywhere() {
        let mut bytes = frame(0x4, &[]);
        bytes.extend(frame(0x0, b"some data"));
        let mut goaway = vec![0, 0, 0, 0, 0, 0, 0, 0xb];
        goaway.extend_from_slice(b"too_many_resets");
        bytes.extend(frame(GOAWAY, &goaway));
        for split in 0..bytes.len() {
            let mut follow = Follow::default();
            let mut found = None;
            follow.feed(&bytes[..split], &mut |p| found = Some(p));
            follow.feed(&bytes[split..], &mut |p| found = Some(p));
            assert_eq!(found.as_deref(), Some(&goaway[..]), "split at {split}");
        }
    }
}
