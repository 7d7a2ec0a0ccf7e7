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
//!
//! The upstream's trailers follow the data, scrubbed as a head is (hop-by-hop and `Tollgate-*`
//! names removed, echoed secrets redacted). A body from a credential scope goes through a
//! streaming redactor ([`StreamRedactor`]) on its way: the limits count the upstream's bytes,
//! the record's `bytes_down` what the sandbox got. On a cut, what the redactor still holds back
//! (possibly the start of a secret) is not sent: the client sees the body fail.

use super::body::BoxError;
use super::credentials::redact::{self, stream::StreamRedactor};
use super::errors::ErrorCode;
use super::finish::finish;
use super::http1::Delivery;
use super::upstream::pool;
use super::{headers, Shared};
use crate::audit::{Finding, Outcome, QuotaRecord, Traffic};
use crate::quota::ByteMeter;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::collections::VecDeque;
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
    /// Bytes the upstream sent (what the limits count).
    received: u64,
    /// Bytes handed to the client (`bytes_down`): fewer or more once redacted.
    sent: u64,
    /// The body is searched for echoed secrets as it streams (a credential scope's).
    redactor: Option<StreamRedactor>,
    /// A secret was redacted in the trailers.
    echoed_in_trailers: bool,
    /// Frames to hand on before reading more: the redactor's last bytes, the trailers.
    queued: VecDeque<Frame<Bytes>>,
    /// The upstream's body has ended (what is queued is the last of it).
    upstream_done: bool,
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
            received: 0,
            sent: 0,
            redactor: None,
            echoed_in_trailers: false,
            queued: VecDeque::new(),
            upstream_done: false,
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

    /// Searches the body for echoed secrets as it streams (see [`StreamRedactor`]).
    pub fn redacted(mut self, redactor: Option<StreamRedactor>) -> Self {
        self.redactor = redactor;
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
        let echoed =
            self.echoed_in_trailers || self.redactor.as_ref().is_some_and(|r| r.found() > 0);
        if let Some(mut finish) = self.finish.take() {
            if echoed {
                finish.traffic.finding = Some(Finding::SecretEchoed);
            }
            finish.write(outcome, self.sent);
        }
    }

    /// Queues `data` (when there is any) for the client; it is counted in `bytes_down` when
    /// it is handed on.
    fn queue_data(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.queued.push_back(Frame::data(data));
        }
    }

    /// The upstream's trailers, scrubbed and redacted, queued after the redactor's last
    /// bytes: they end the body (hyper polls a body no further once it has its trailers).
    fn queue_trailers(&mut self, mut trailers: http::HeaderMap) {
        self.upstream_done = true;
        if let Some(redactor) = self.redactor.as_mut() {
            let tail = redactor.finish();
            self.queue_data(tail);
        }
        headers::sanitise_trailers(&mut trailers);
        if let Some(redactor) = &self.redactor {
            if redact::headers(&mut trailers, redactor.needles()) > 0 {
                self.echoed_in_trailers = true;
            }
        }
        if !trailers.is_empty() {
            self.queued.push_back(Frame::trailers(trailers));
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
            if let Some(frame) = this.queued.pop_front() {
                if let Some(data) = frame.data_ref() {
                    this.sent = this.sent.saturating_add(data.len() as u64);
                    if let Some(delivery) = &this.delivery {
                        delivery.handed();
                    }
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            if this.upstream_done {
                this.end(Outcome::Complete);
                this.phase = Phase::Ended;
                return Poll::Ready(None);
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
                    this.upstream_done = true;
                    if let Some(redactor) = this.redactor.as_mut() {
                        let tail = redactor.finish();
                        this.queue_data(tail);
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    this.cut(Outcome::UpstreamError, None, Box::new(error));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(frame) => {
                            if let Ok(trailers) = frame.into_trailers() {
                                this.queue_trailers(trailers);
                            }
                            continue;
                        }
                    };
                    let total = this.received.saturating_add(data.len() as u64);
                    if total > this.limit {
                        let error = Box::new(Cut::TooLarge(this.limit));
                        let code = Some(ErrorCode::ResponseTooLarge);
                        this.cut(Outcome::ResponseTooLarge, code, error);
                        continue;
                    }
                    if !this.within_budget(data.len() as u64) {
                        continue;
                    }
                    this.received = total;
                    let data = match this.redactor.as_mut() {
                        Some(redactor) => redactor.push(data),
                        None => data,
                    };
                    this.queue_data(data);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.phase {
            Phase::Relaying => {
                let holding = self.redactor.as_ref().is_some_and(|r| r.held() > 0);
                self.queued.is_empty()
                    && !holding
                    && (self.upstream_done || self.inner.is_end_stream())
            }
            Phase::Cutting { .. } => false,
            Phase::Ended => true,
        }
    }

    /// The upstream's, unless redaction may change the length.
    fn size_hint(&self) -> SizeHint {
        match &self.redactor {
            Some(redactor) if !redactor.keeps_length() => SizeHint::default(),
            _ => self.inner.size_hint(),
        }
    }
}

impl Drop for RelayBody {
    fn drop(&mut self) {
        // A body whose every declared byte was handed on is whole even when the client went
        // before the upstream's end-of-stream arrived: an HTTP/2 upstream may end the stream
        // in an empty DATA frame after the last byte, and a client that has its
        // `Content-Length` stops reading there.
        let every_byte = self.inner.size_hint().exact() == Some(0)
            && self.received > 0
            && self.queued.is_empty()
            && self.redactor.as_ref().is_none_or(|r| r.held() == 0);
        let outcome = if self.upstream_done || self.inner.is_end_stream() || every_byte {
            Outcome::Complete
        } else {
            Outcome::ClientClosed
        };
        self.end(outcome);
    }
}
