//! The streams of one HTTP/2 connection, counted: how many are open (a connection with none
//! is idle), and how many the client cancelled before their response began against how many
//! were answered (the cancel guard).
//!
//! Why the guard: h2 closes a connection whose client resets streams before the server took
//! them (`MAX_PENDING_ACCEPT_RESETS`), but a stream hyper already accepted costs tollgate
//! more — a decision, perhaps an upstream request — and a client that resets it just after
//! is not counted there. A connection whose client cancels far more than it lets finish is
//! doing that on purpose.

use crate::proxy::body::{BoxError, ProxyBody};
use bytes::Bytes;
use http::Response;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Notify;

/// Below this many cancelled streams a connection is never called abusive: clients do
/// cancel (a deadline passed, a user moved on, a gRPC call abandoned).
const CANCELLED_FLOOR: u64 = 100;
/// Past the floor, a connection is abusive once its cancelled streams outnumber its
/// answered ones this many times over.
const CANCEL_RATIO: u64 = 4;

/// One connection's stream counts.
#[derive(Default)]
pub(super) struct Streams {
    open: AtomicUsize,
    answered: AtomicU64,
    cancelled: AtomicU64,
    /// Woken at every open and close.
    changed: Notify,
}

/// What [`Streams::watch`] saw.
pub(super) enum Watch {
    /// No stream was open for the whole idle timeout.
    Idle,
    /// The cancel guard tripped; the sentence for the record.
    Abusive(String),
}

impl Streams {
    /// A stream began (its request reached the service).
    pub fn open(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        Open {
            streams: self.clone(),
            answered: false,
        }
    }

    fn abusive(&self) -> Option<String> {
        let cancelled = self.cancelled.load(Ordering::SeqCst);
        let answered = self.answered.load(Ordering::SeqCst);
        (cancelled >= CANCELLED_FLOOR && cancelled > CANCEL_RATIO.saturating_mul(answered)).then(
            || {
                format!(
                    "the client reset streams faster than it used them (rapid reset): it \
                     cancelled {cancelled} streams before their responses and let {answered} \
                     be answered; tollgate closed the connection"
                )
            },
        )
    }

    /// Resolves when no stream has been open for `idle`, or the cancel guard trips.
    pub async fn watch(&self, idle: Duration) -> Watch {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the state is read, so no change slips between the two.
            notified.as_mut().enable();
            if let Some(message) = self.abusive() {
                return Watch::Abusive(message);
            }
            if self.open.load(Ordering::SeqCst) == 0 {
                if tokio::time::timeout(idle, notified).await.is_err() {
                    return Watch::Idle;
                }
            } else {
                notified.await;
            }
        }
    }
}

/// One open stream: open until its response body is done; cancelled if dropped before its
/// response began.
pub(super) struct Open {
    streams: Arc<Streams>,
    answered: bool,
}

impl Open {
    /// The response began: the stream counts as answered and stays open until its body ends.
    pub fn answered(mut self, response: Response<ProxyBody>) -> Response<Counted> {
        self.answered = true;
        self.streams.answered.fetch_add(1, Ordering::SeqCst);
        response.map(|body| Counted { body, _open: self })
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if !self.answered {
            self.streams.cancelled.fetch_add(1, Ordering::SeqCst);
        }
        self.streams.open.fetch_sub(1, Ordering::SeqCst);
        self.streams.changed.notify_waiters();
    }
}

/// A response body that keeps its stream counted as open until hyper drops it.
pub(super) struct Counted {
    body: ProxyBody,
    _open: Open,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancelling_far_more_than_answering_trips_the_guard() {
        let streams = Arc::new(Streams::default());
        for _ in 0..10 {
            drop(
                streams
                    .open()
                    .answered(Response::new(crate::proxy::body::empty())),
            );
        }
        for _ in 0..(CANCELLED_FLOOR - 1) {
            drop(streams.open());
        }
        assert!(streams.abusive().is_none(), "under the floor");
        drop(streams.open());
        let message = streams.abusive().expect("tripped");
        assert!(message.contains("cancelled 100 streams"), "{message}");
        let fair = Arc::new(Streams::default());
        for _ in 0..50 {
            drop(
                fair.open()
                    .answered(Response::new(crate::proxy::body::empty())),
            );
        }
        for _ in 0..200 {
            drop(fair.open());
        }
        assert!(
            fair.abusive().is_none(),
            "200 cancelled against 50 answered"
        );
    }

    #[tokio::test]
    async fn a_connection_is_idle_only_while_no_stream_is_open() {
        let streams = Arc::new(Streams::default());
        let open = streams.open();
        let idle = Duration::from_millis(20);
        let watched = tokio::time::timeout(Duration::from_millis(200), streams.watch(idle)).await;
        assert!(watched.is_err(), "an open stream is never idle");
        drop(open);
        let watched = tokio::time::timeout(Duration::from_secs(30), streams.watch(idle)).await;
        assert!(matches!(watched, Ok(Watch::Idle)));
    }
}
