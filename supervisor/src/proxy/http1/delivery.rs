//! Whether what a client connection was sent has left tollgate: a response body that must be
//! cut short (the upstream broke off, a limit, the deadline) waits until every byte before
//! the cut is flushed, and only then aborts the connection.
//!
//! hyper aborts a connection whose response body fails at once, dropping what it still holds
//! in its write buffer, and a TLS stream drops the records it has not written yet. A client
//! then sees fewer bytes than tollgate accepted, and cannot tell a slow upstream from a cut.
//! So the relayed body marks each chunk it hands to hyper ([`Delivery::handed`]), the
//! connection's stream ([`Tracked`]) marks each completed flush, and the body delays its
//! error until the two agree ([`Delivery::flushed`]). hyper flushes the stream only once its
//! own buffer is empty, and a TLS stream's flush writes out its records, so a completed
//! flush after the last chunk means every byte of it is in the kernel's socket buffer.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What one client connection has delivered: shared by its stream and its response bodies.
#[derive(Debug, Default)]
pub(crate) struct Delivery(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    /// A chunk was handed to hyper since the last completed flush.
    unflushed: bool,
    /// A body waiting for the next completed flush.
    waiting: Option<Waker>,
}

impl Delivery {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A body handed hyper a chunk to write.
    pub fn handed(&self) {
        self.state().unflushed = true;
    }

    /// Whether every chunk handed so far was flushed; if not, `cx` is woken at the next
    /// completed flush.
    pub fn flushed(&self, cx: &Context<'_>) -> bool {
        let mut state = self.state();
        if state.unflushed {
            state.waiting = Some(cx.waker().clone());
        }
        !state.unflushed
    }

    fn flush_completed(&self) {
        let waiting = {
            let mut state = self.state();
            state.unflushed = false;
            state.waiting.take()
        };
        if let Some(waker) = waiting {
            waker.wake();
        }
    }
}

/// A client connection's stream that reports its completed flushes to its [`Delivery`].
pub(crate) struct Tracked<S> {
    inner: S,
    delivery: Arc<Delivery>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, delivery: Arc<Delivery>) -> Self {
        Tracked { inner, delivery }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(flushed, Poll::Ready(Ok(()))) {
            self.delivery.flush_completed();
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
}
