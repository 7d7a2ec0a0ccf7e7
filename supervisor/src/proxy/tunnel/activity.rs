//! Stream wrappers that count a tunnel's bytes each way and remember when any of them last
//! moved, for tunnel byte accounting and idle timeouts.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Shared counters of one wrapped stream.
#[derive(Debug)]
pub(crate) struct Activity {
    origin: Instant,
    /// Milliseconds after `origin` of the last read or write that moved bytes.
    last: AtomicU64,
    /// Bytes read from the client side (sent upstream).
    pub up: AtomicU64,
    /// Bytes read from the upstream side (sent to the client).
    pub down: AtomicU64,
}

/// Which side of the tunnel a [`Counted`] stream is.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side {
    Client,
    Upstream,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            origin: Instant::now(),
            last: AtomicU64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    fn last_moved(&self) -> Instant {
        self.origin + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }

    /// Resolves once nothing has moved for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let due = self.last_moved() + idle;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// `T` with its traffic recorded in an [`Activity`].
pub(crate) struct Counted<T> {
    inner: T,
    activity: Arc<Activity>,
    side: Side,
}

impl<T> Counted<T> {
    pub fn new(inner: T, activity: Arc<Activity>, side: Side) -> Self {
        Counted {
            inner,
            activity,
            side,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let moved = (buf.filled().len() - before) as u64;
        if moved > 0 {
            let counter = match self.side {
                Side::Client => &self.activity.up,
                Side::Upstream => &self.activity.down,
            };
            counter.fetch_add(moved, Ordering::Relaxed);
            self.activity.touch();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(&result, Poll::Ready(Ok(n)) if *n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
