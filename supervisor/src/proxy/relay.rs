//! Relaying an upstream response body to the sandbox under the execution's limits.
//!
//! The body streams through unbuffered. Bytes are counted against `max_response_bytes` (and
//! any team `bytes_per_day` quota) and the request's deadline keeps running. Crossing any,
//! or the upstream breaking its own framing off, cuts the body: the client first gets every
//! byte tollgate accepted before the cut (see [`Delivery`]), then its connection is aborted
//! mid-body (no last chunk, no `close_notify`), so it sees a truncated message, never a
//! shortened one that looks complete. The sandbox is always answered in HTTP/1.1 framing
//! (`pipeline` sees to that), so an abort is visible whatever framing the upstream used. The
//! audit record and operator log line of the attempt are written when the body ends, is cut,
//! or is dropped.

use super::body::BoxError;
use super::errors::ErrorCode;
use super::finish::finish;
use super::http1::Delivery;
use super::upstream::pool;
use super::Shared;
use crate::audit::{Outcome, QuotaRecord, Traffic};
use crate::quota::ByteMeter;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::time::Sleep;

/// Responses without a length are buffered whole (to answer `response_too_large` before the
/// head when they are over the limit) while `max_response_bytes` is at most this; above it
/// they stream and an over-limit body is aborted.
pub(crate) const MAX_BUFFERED: u64 = 16 * 1024 * 1024;

/// How long a cut body waits for the client to take the bytes before the cut: a client that
/// stops reading does not keep the connection for ever.
const FLUSH_GRACE: Duration = Duration::from_secs(5);

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
    /// The client connection's flushes; `None` aborts a cut at once.
    delivery: Option<Arc<Delivery>>,
    phase: Phase,
    finish: Option<Finish>,
    /// The team's byte budgets, counted as bytes are handed on.
    meter: Option<ByteMeter>,
}

enum Phase {
    Relaying,
    /// Cut short: `error` goes to hyper (which aborts the connection) once the client has
    /// every byte before the cut, or after [`FLUSH_GRACE`].
    Cutting {
        error: BoxError,
        grace: Pin<Box<Sleep>>,
    },
    Ended,
}

#[derive(Debug, thiserror::Error)]
enum Cut {
    #[error("the response body is larger than the {0}-byte limit (limits.max_response_bytes)")]
    TooLarge(u64),
    #[error("the request timed out while the response body was streaming")]
    Timeout,
    /// A team byte budget ran out: the refusal's sentence.
    #[error("{0}")]
    Quota(String),
}

impl RelayBody {
    pub fn new(
        inner: Incoming,
        limit: u64,
        deadline: Pin<Box<Sleep>>,
        delivery: Option<Arc<Delivery>>,
        finish: Finish,
    ) -> Self {
        RelayBody {
            inner,
            limit,
            sent: 0,
            deadline,
            delivery,
            phase: Phase::Relaying,
            finish: Some(finish),
            meter: None,
        }
    }

    /// Counts every byte handed on against the team's byte budgets in `meter`; one past
    /// them cuts the body (`team_budget_exhausted`).
    pub fn metered(mut self, meter: Option<ByteMeter>) -> Self {
        self.meter = meter;
        self
    }

    /// Whether `bytes` more fit the team's byte budgets; if not, the cut is under way.
    fn within_budget(&mut self, bytes: u64) -> bool {
        let Some(meter) = &self.meter else {
            return true;
        };
        if meter.add(bytes) {
            return true;
        }
        let refusal = meter.exhausted();
        if let Some(finish) = self.finish.as_mut() {
            finish.traffic.quota = Some(QuotaRecord::of(&refusal));
        }
        let code = Some(ErrorCode::TeamBudgetExhausted);
        self.cut(
            Outcome::QuotaExhausted,
            code,
            Box::new(Cut::Quota(refusal.message)),
        );
        false
    }

    fn end(&mut self, outcome: Outcome) {
        if let Some(finish) = self.finish.take() {
            finish.write(outcome, self.sent);
        }
    }

    /// Completes the record as cut (`code` and the sentence when tollgate cut it) and starts
    /// waiting for the client to have every byte before the cut.
    fn cut(&mut self, outcome: Outcome, code: Option<ErrorCode>, error: BoxError) {
        if let (Some(finish), Some(code)) = (self.finish.as_mut(), code) {
            finish.traffic.error = Some(code.as_str());
            finish.traffic.message = Some(error.to_string());
        }
        self.end(outcome);
        self.phase = Phase::Cutting {
            error,
            grace: Box::pin(tokio::time::sleep(FLUSH_GRACE)),
        };
    }
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match &mut this.phase {
                Phase::Ended => return Poll::Ready(None),
                Phase::Cutting { grace, .. } => {
                    let flushed = this.delivery.as_ref().is_none_or(|d| d.flushed(cx));
                    if !flushed && grace.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let Phase::Cutting { error, .. } =
                        std::mem::replace(&mut this.phase, Phase::Ended)
                    else {
                        unreachable!("the phase was matched just above");
                    };
                    return Poll::Ready(Some(Err(error)));
                }
                Phase::Relaying => {}
            }
            if this.deadline.as_mut().poll(cx).is_ready() {
                this.cut(
                    Outcome::Timeout,
                    Some(ErrorCode::Timeout),
                    Box::new(Cut::Timeout),
                );
                continue;
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.end(Outcome::Complete);
                    this.phase = Phase::Ended;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(error))) => {
                    this.cut(Outcome::UpstreamError, None, Box::new(error));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are hop-by-hop here (`TE`/`Trailer` were removed): dropped.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let total = this.sent.saturating_add(data.len() as u64);
                    if total > this.limit {
                        let error = Box::new(Cut::TooLarge(this.limit));
                        let code = Some(ErrorCode::ResponseTooLarge);
                        this.cut(Outcome::ResponseTooLarge, code, error);
                        continue;
                    }
                    if !this.within_budget(data.len() as u64) {
                        continue;
                    }
                    this.sent = total;
                    if let Some(delivery) = &this.delivery {
                        delivery.handed();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.phase {
            Phase::Relaying => self.inner.is_end_stream(),
            Phase::Cutting { .. } => false,
            Phase::Ended => true,
        }
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
