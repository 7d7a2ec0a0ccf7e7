//! The framing witness: sees each request head on a client connection before hyper does, to
//! report a request that carried both `Content-Length` and `Transfer-Encoding`.
//!
//! hyper resolves that conflict the RFC 9112 way (it drops `Content-Length`, decodes the
//! chunked body and closes the connection afterwards), so the conflict cannot desynchronise
//! tollgate; but its `Content-Length` is gone by the time the request reaches the service,
//! and such a request is an attempt at smuggling that the issue wants refused with 400. The
//! witness follows the message framing on the raw bytes (heads with `httparse`, the parser
//! hyper uses, then body lengths and chunk sizes) and queues one verdict per head. It only
//! ever *adds* refusals: if it loses track of the framing it stops giving verdicts, and the
//! service treats a missing verdict as no evidence.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Heads longer than this are left to hyper (which answers 431 well before).
const MAX_HEAD: usize = 64 * 1024;
/// Chunk-size lines and trailer sections are short; longer ones mean lost framing.
const MAX_LINE: usize = 4 * 1024;
const MAX_HEADERS: usize = 128;

/// One verdict per request head, in order: `true` when the head had both headers.
#[derive(Debug, Default)]
pub(crate) struct Verdicts(Mutex<VecDeque<bool>>);

impl Verdicts {
    /// The verdict on the next request the service handles; `None` when the witness lost
    /// track (no evidence either way).
    pub fn next(&self) -> Option<bool> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
    }

    fn push(&self, ambiguous: bool) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(ambiguous);
    }
}

#[derive(Debug)]
enum State {
    Head,
    Fixed(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailers,
    /// A tunnel, or framing the witness could not follow: stop looking.
    Done,
}

/// Follows the framing of the bytes a client sends.
pub(crate) struct Witness {
    state: State,
    pending: Vec<u8>,
    verdicts: Arc<Verdicts>,
}

impl Witness {
    pub fn new(verdicts: Arc<Verdicts>) -> Witness {
        Witness {
            state: State::Head,
            pending: Vec::new(),
            verdicts,
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Done => return,
                State::Fixed(left) | State::ChunkData(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                    data = &data[take..];
                    let left = left - take as u64;
                    self.state = match (&self.state, left) {
                        (State::Fixed(_), 0) => State::Head,
                        (State::Fixed(_), n) => State::Fixed(n),
                        (_, 0) => State::ChunkEnd,
                        (_, n) => State::ChunkData(n),
                    };
                }
                State::Head | State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    let used = self.buffered(data);
                    data = &data[used..];
                }
            }
        }
    }

    /// Buffers bytes of a head, chunk-size line, chunk end or trailer section, and moves on
    /// when it is complete. Returns how many bytes of `data` were consumed.
    fn buffered(&mut self, data: &[u8]) -> usize {
        let before = self.pending.len();
        self.pending.extend_from_slice(data);
        let end = match self.state {
            State::Head => self.head(),
            State::ChunkSize => self.chunk_size(),
            State::ChunkEnd => self.chunk_end(),
            State::Trailers => self.trailers(),
            _ => None,
        };
        let Some(end) = end else {
            let limit = if matches!(self.state, State::Head) {
                MAX_HEAD
            } else {
                MAX_LINE
            };
            if self.pending.len() > limit {
                self.lose_track();
            }
            return data.len();
        };
        self.pending.clear();
        // `end` counts from the start of what was buffered; the rest of `data` is fed again.
        let consumed = end.saturating_sub(before).min(data.len());
        if consumed == 0 {
            self.lose_track();
        }
        consumed
    }

    fn lose_track(&mut self) {
        self.state = State::Done;
        self.pending = Vec::new();
    }

    /// A complete head: queue its verdict and pick the body framing hyper will use.
    fn head(&mut self) -> Option<usize> {
        // hyper skips empty lines before a request line.
        let skip = self
            .pending
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let parsed = match request.parse(&self.pending[skip..]) {
            Ok(httparse::Status::Complete(n)) => n + skip,
            Ok(httparse::Status::Partial) => return None,
            Err(_) => {
                self.state = State::Done;
                return Some(self.pending.len());
            }
        };
        let mut content_length = None;
        let mut chunked = false;
        let mut transfer_encoding = false;
        for header in request.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                content_length = std::str::from_utf8(header.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .or(Some(0));
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                transfer_encoding = true;
                chunked = header
                    .value
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
        }
        self.verdicts
            .push(transfer_encoding && content_length.is_some());
        self.state = if request.method == Some("CONNECT") || (transfer_encoding && !chunked) {
            State::Done
        } else if chunked {
            State::ChunkSize
        } else {
            match content_length {
                Some(0) | None => State::Head,
                Some(n) => State::Fixed(n),
            }
        };
        Some(parsed)
    }

    fn chunk_size(&mut self) -> Option<usize> {
        match httparse::parse_chunk_size(&self.pending) {
            Ok(httparse::Status::Complete((used, 0))) => {
                self.state = State::Trailers;
                Some(used)
            }
            Ok(httparse::Status::Complete((used, size))) => {
                self.state = State::ChunkData(size);
                Some(used)
            }
            Ok(httparse::Status::Partial) => None,
            Err(_) => {
                self.state = State::Done;
                Some(self.pending.len())
            }
        }
    }

    /// The CRLF (or bare LF) after a chunk's data.
    fn chunk_end(&mut self) -> Option<usize> {
        match self.pending.as_slice() {
            [b'\r', b'\n', ..] => {
                self.state = State::ChunkSize;
                Some(2)
            }
            [b'\n', ..] => {
                self.state = State::ChunkSize;
                Some(1)
            }
            [b'\r'] | [] => None,
            _ => {
                self.state = State::Done;
                Some(self.pending.len())
            }
        }
    }

    /// Trailer fields end with an empty line (right away when there are none).
    fn trailers(&mut self) -> Option<usize> {
        let mut start = 0;
        while let Some(end) = self.pending[start..].iter().position(|b| *b == b'\n') {
            let line = &self.pending[start..start + end];
            start += end + 1;
            if line.is_empty() || line == b"\r" {
                self.state = State::Head;
                return Some(start);
            }
        }
        None
    }
}

/// A client stream whose reads are shown to a [`Witness`] on their way to hyper.
pub(crate) struct Witnessed<T> {
    inner: T,
    witness: Witness,
}

impl<T> Witnessed<T> {
    pub fn new(inner: T, verdicts: Arc<Verdicts>) -> Self {
        Witnessed {
            inner,
            witness: Witness::new(verdicts),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Witnessed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let this = &mut *self;
            this.witness.feed(&buf.filled()[before..]);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Witnessed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

    fn verdicts(chunks: &[&[u8]]) -> Vec<bool> {
        let log = Arc::new(Verdicts::default());
        let mut witness = Witness::new(log.clone());
        for chunk in chunks {
            witness.feed(chunk);
        }
        std::iter::from_fn(|| log.next()).collect()
    }

    #[test]
    fn follows_keep_alive_framing_and_flags_only_the_ambiguous_head() {
        let stream: &[u8] = b"POST http://a/ HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
GET http://a/ HTTP/1.1\r\n\r\n\
POST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n\
POST http://a/ HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let want = vec![false, false, false, true];
        assert_eq!(verdicts(&[stream]), want);
        // Byte by byte, the same verdicts.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(verdicts(&bytes), want);
        // Bodies that look like heads are skipped, not parsed.
        let tricky: &[u8] = b"POST http://a/ HTTP/1.1\r\nContent-Length: 60\r\n\r\n\
GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(verdicts(&[tricky]), vec![false]);
    }

    #[test]
    fn stops_after_connect_and_on_garbage() {
        assert_eq!(
            verdicts(&[b"CONNECT a:443 HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"]),
            vec![false]
        );
        assert_eq!(
            verdicts(&[b"\x00\x01 nonsense\r\n\r\n"]),
            Vec::<bool>::new()
        );
    }
}
