//! Stream wrappers that count a tunnel's bytes each way, remember when any of them last
//! moved, and stop the tunnel at its byte limits: for tunnel byte accounting, idle timeouts,
//! `limits.max_tunnel_bytes` and a team's `bytes_per_day`.
//!
//! The limit is enforced on reads, where a byte enters tollgate: a read that would take the
//! tunnel past it is dropped whole and fails, so no more than the limit is ever relayed
//! (up and down together) and the copy loop stops at once, both ways.

use crate::quota::{ByteMeter, QuotaRefusal};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// At most this many bytes, up and down together, are let through.
    max_bytes: u64,
    /// Bytes let through so far, both ways.
    total: AtomicU64,
    /// A read was refused because it would have passed `max_bytes`.
    exceeded: AtomicBool,
    /// The team's byte budgets, which every byte let through counts against too.
    meter: Option<ByteMeter>,
    /// A read was refused because a team byte budget ran out.
    quota_exhausted: AtomicBool,
}

/// Which side of the tunnel a [`Counted`] stream is.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side {
    Client,
    Upstream,
}

impl Activity {
    /// Counters for a tunnel that may carry `max_bytes` up and down together.
    pub fn new(max_bytes: u64) -> Arc<Activity> {
        Arc::new(Activity {
            origin: Instant::now(),
            last: AtomicU64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            max_bytes,
            total: AtomicU64::new(0),
            exceeded: AtomicBool::new(false),
            meter: None,
            quota_exhausted: AtomicBool::new(false),
        })
    }

    /// These counters, with every byte also counted against the team's byte budgets in
    /// `meter`: one past them ends the tunnel as `max_bytes` would.
    pub fn metered(self: Arc<Self>, meter: Option<ByteMeter>) -> Arc<Activity> {
        match Arc::try_unwrap(self) {
            Ok(mut activity) => {
                activity.meter = meter;
                Arc::new(activity)
            }
            Err(shared) => shared,
        }
    }

    /// Whether the tunnel was stopped at a team byte budget.
    pub fn quota_exhausted(&self) -> bool {
        self.quota_exhausted.load(Ordering::Relaxed)
    }

    /// The refusal to record when [`Activity::quota_exhausted`].
    pub fn quota_refusal(&self) -> Option<QuotaRefusal> {
        self.meter
            .as_ref()
            .filter(|_| self.quota_exhausted())
            .map(ByteMeter::exhausted)
    }

    /// Whether the tunnel was stopped at its byte limit.
    pub fn bytes_exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Relaxed)
    }

    /// Takes `n` more bytes under the limit, or marks the limit exceeded and takes none.
    fn admit(&self, n: u64) -> bool {
        let admitted = self
            .total
            .try_update(Ordering::Relaxed, Ordering::Relaxed, |total| {
                total.checked_add(n).filter(|sum| *sum <= self.max_bytes)
            })
            .is_ok();
        if !admitted {
            self.exceeded.store(true, Ordering::Relaxed);
            return false;
        }
        if self.meter.as_ref().is_some_and(|meter| !meter.add(n)) {
            self.quota_exhausted.store(true, Ordering::Relaxed);
            return false;
        }
        true
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
            if !self.activity.admit(moved) {
                // Never handed on: the tunnel ends here, with what was relayed before.
                buf.set_filled(before);
                return Poll::Ready(Err(io::Error::other(
                    "the tunnel reached limits.max_tunnel_bytes or a team bytes_per_day quota",
                )));
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A tunnel of `limit` bytes between two in-memory pipes; `up` bytes are offered by the
    /// client side and `down` by the upstream side, then each side closes.
    async fn carry(limit: u64, up: usize, down: usize) -> (Arc<Activity>, io::Result<(u64, u64)>) {
        let activity = Activity::new(limit);
        let (client_far, client_near) = tokio::io::duplex(1 << 20);
        let (upstream_far, upstream_near) = tokio::io::duplex(1 << 20);
        let mut client = Counted::new(client_near, activity.clone(), Side::Client);
        let mut upstream = Counted::new(upstream_near, activity.clone(), Side::Upstream);
        let feed = |mut far: tokio::io::DuplexStream, n: usize| async move {
            let _ = far.write_all(&vec![7u8; n]).await;
            let _ = far.shutdown().await;
            let mut sink = Vec::new();
            let _ = far.read_to_end(&mut sink).await;
            sink.len()
        };
        let client_side = tokio::spawn(feed(client_far, up));
        let upstream_side = tokio::spawn(feed(upstream_far, down));
        let result = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        drop((client, upstream));
        let (to_client, to_upstream) = (client_side.await.unwrap(), upstream_side.await.unwrap());
        // What was read is counted; a cut may leave the last of it unwritten.
        assert!(to_upstream as u64 <= activity.up.load(Ordering::Relaxed));
        assert!(to_client as u64 <= activity.down.load(Ordering::Relaxed));
        (activity, result)
    }

    #[tokio::test]
    async fn a_tunnel_within_its_limit_carries_everything() {
        let (activity, result) = carry(10_000, 4_000, 6_000).await;
        assert_eq!(result.unwrap(), (4_000, 6_000));
        assert!(!activity.bytes_exceeded());
    }

    #[tokio::test]
    async fn a_tunnel_is_cut_before_it_relays_more_than_its_limit() {
        for (up, down) in [(0, 100_000), (100_000, 0), (60_000, 60_000)] {
            let (activity, result) = carry(64 << 10, up, down).await;
            assert!(result.is_err(), "{up} up, {down} down");
            assert!(activity.bytes_exceeded());
            let total = activity.up.load(Ordering::Relaxed) + activity.down.load(Ordering::Relaxed);
            assert!(total <= 64 << 10, "{total} bytes relayed");
        }
    }
}
