//! Relaying an upstream response body to the sandbox under the execution's limits.
//!
//! The body streams through unbuffered. Bytes are counted against `max_response_bytes` and the
//! request's deadline keeps running; crossing either aborts the client connection mid-body,
//! so the client sees a truncated message, never a shortened one that looks complete. The
//! audit record and operator log line of the attempt are written when the body ends, fails,
//! or is dropped.

use super::body::BoxError;
use super::finish::finish;
use super::upstream::pool;
use super::Shared;
use crate::audit::{Outcome, Traffic};
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::time::Sleep;

/// What is written when the body is done: the record so far.
pub(crate) struct Finish {
    pub shared: Arc<Shared>,
    pub traffic: Traffic,
    pub started: Instant,
    /// The upstream connection, returned to the pool if the body completes.
    pub reuse: Option<(pool::Key, pool::Sender)>,
}

impl Finish {
    /// Drops the upstream connection without writing anything: the caller refuses the
    /// request instead, and that refusal is the record.
    pub fn abandon(self) {}

    /// Completes the record with `outcome`; a complete body returns the connection to the
    /// pool.
    pub fn write(mut self, outcome: Outcome, bytes_down: u64) {
        if outcome == Outcome::Complete {
            if let Some((key, sender)) = self.reuse.take() {
                self.shared.pool.put(key, sender);
            }
        }
        self.traffic.outcome = outcome;
        self.traffic.bytes_down = bytes_down;
        finish(&self.shared, self.traffic, self.started);
    }
}

/// The relayed body.
pub(crate) struct RelayBody {
    inner: Incoming,
    limit: u64,
    sent: u64,
    deadline: Pin<Box<Sleep>>,
    finish: Option<Finish>,
}

impl RelayBody {
    pub fn new(inner: Incoming, limit: u64, deadline: Pin<Box<Sleep>>, finish: Finish) -> Self {
        RelayBody {
            inner,
            limit,
            sent: 0,
            deadline,
            finish: Some(finish),
        }
    }

    fn end(&mut self, outcome: Outcome) {
        if let Some(finish) = self.finish.take() {
            finish.write(outcome, self.sent);
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum Cut {
    #[error("the response body is larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("the request timed out while the response body was streaming")]
    Timeout,
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.finish.is_none() {
            return Poll::Ready(None);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.end(Outcome::Timeout);
            return Poll::Ready(Some(Err(Box::new(Cut::Timeout))));
        }
        loop {
            return match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => {
                    this.end(Outcome::Complete);
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(error))) => {
                    this.end(Outcome::UpstreamError);
                    Poll::Ready(Some(Err(Box::new(error))))
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let total = this.sent.saturating_add(data.len() as u64);
                        if total > this.limit {
                            this.end(Outcome::ResponseTooLarge);
                            return Poll::Ready(Some(Err(Box::new(Cut::TooLarge(this.limit)))));
                        }
                        this.sent = total;
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    // Trailers are hop-by-hop here (`TE`/`Trailer` were removed): dropped.
                    Err(_) => continue,
                },
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finish.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RelayBody {
    fn drop(&mut self) {
        let outcome = if self.inner.is_end_stream() {
            Outcome::Complete
        } else {
            Outcome::ClientClosed
        };
        self.end(outcome);
    }
}
