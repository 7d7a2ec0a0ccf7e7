//! One WebSocket session: both upgraded legs read and written message by message, each
//! direction its own pump (so neither side's writes wait on the other's reads), under the
//! session limits, until a side closes, a limit or the shutdown ends it; then the close
//! handshake on each leg and the session's one record.
//!
//! Each leg keeps its own liveness: tungstenite answers a ping on the leg it came in on, so
//! pings and pongs are not relayed (they count as activity against the idle timeout).

use super::ending::{End, Limit, Side};
use super::MAX_MESSAGE_BYTES;
use crate::audit::{Finding, QuotaRecord, Traffic, WebSocketRecord};
use crate::proxy::credentials::redact;
use crate::proxy::errors::ErrorCode;
use crate::proxy::finish::finish;
use crate::proxy::{ConnContext, Credentials, Shared};
use crate::quota::ByteMeter;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

type Leg = WebSocketStream<TokioIo<Upgraded>>;

/// How long each leg gets for its close handshake once the session has ended (at most the
/// shutdown grace): a peer that never answers a Close does not keep the session (and
/// shutdown) waiting.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Everything a session needs once the `101` has gone out.
pub(super) struct Session {
    pub shared: Arc<Shared>,
    /// The handshake's record, written when the session ends.
    pub record: Traffic,
    /// When the handshake's attempt started: `max_tunnel_duration` counts from here.
    pub started: Instant,
    /// The team's byte budgets, which every message counts against.
    pub meter: Option<ByteMeter>,
    /// Redact echoed secrets in the upstream's messages.
    pub redact: bool,
    /// The client connection's guard and slot, held until the session ends, and the
    /// shutdown signal.
    pub conn: Option<ConnContext>,
}

impl Session {
    /// Waits for the client's side of the connection (hyper hands it over once the `101`
    /// is written), relays until the end, closes both legs and writes the record.
    pub async fn run(mut self, client: OnUpgrade, upstream: Upgraded) {
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let upstream =
            WebSocketStream::from_raw_socket(TokioIo::new(upstream), Role::Client, Some(config))
                .await;
        let max_bytes = self.shared.policy.limits.max_tunnel_bytes;
        let mut books = Books::new(max_bytes, self.meter.take());
        let end = match client.await {
            Ok(client) => {
                let client = WebSocketStream::from_raw_socket(
                    TokioIo::new(client),
                    Role::Server,
                    Some(config),
                )
                .await;
                self.relay(client, upstream, &mut books).await
            }
            Err(error) => {
                let end = End::Broken {
                    side: Side::Client,
                    error: format!("its connection did not switch protocols: {error}"),
                };
                let (mut sink, mut stream) = upstream.split();
                books.close_code.get_or_insert(end.frame().code.into());
                let grace = CLOSE_GRACE.min(self.shared.settings.shutdown_grace);
                close_leg(&mut sink, &mut stream, Some(end.frame()), grace).await;
                end
            }
        };
        self.write(end, books);
    }

    async fn relay(&self, client: Leg, upstream: Leg, books: &mut Books) -> End {
        let (mut client_out, mut client_in) = client.split();
        let (mut upstream_out, mut upstream_in) = upstream.split();
        let limits = &self.shared.policy.limits;
        let deadline = tokio::time::Instant::from_std(self.started) + limits.max_tunnel_duration;
        let idle = self.shared.settings.idle_timeout;
        let mut shutdown = self.conn.as_ref().map(|conn| conn.shutdown.clone());
        let end = {
            let counters = &books.counters;
            let up = pump(
                &mut client_in,
                &mut upstream_out,
                Side::Client,
                counters,
                None,
            );
            let secrets = self.redact.then_some(&self.shared.credentials);
            let down = pump(
                &mut upstream_in,
                &mut client_out,
                Side::Upstream,
                counters,
                secrets,
            );
            tokio::select! {
                end = up => end,
                end = down => end,
                () = counters.idle_for(idle) => End::Limit(Limit::Idle(idle)),
                () = tokio::time::sleep_until(deadline) => {
                    End::Limit(Limit::Duration(limits.max_tunnel_duration))
                }
                () = stopped(shutdown.as_mut()) => End::Limit(Limit::Shutdown),
            }
        };
        let frame = end.frame();
        let (to_client, to_upstream) = if end.closes_both() {
            (Some(frame.clone()), Some(frame.clone()))
        } else if end.other() == Some(Side::Upstream) {
            (None, Some(frame.clone()))
        } else {
            (Some(frame.clone()), None)
        };
        // The first Close frame of the session: the one the ending side sent, or tollgate's.
        books.close_code = match &end {
            End::Closed { frame, .. } => frame.as_ref().map(|f| f.code.into()),
            _ => Some(frame.code.into()),
        };
        let grace = CLOSE_GRACE.min(self.shared.settings.shutdown_grace);
        tokio::join!(
            close_leg(&mut client_out, &mut client_in, to_client, grace),
            close_leg(&mut upstream_out, &mut upstream_in, to_upstream, grace),
        );
        end
    }

    /// The session's one record: bytes and messages each way, how and by whom it ended.
    fn write(self, end: End, books: Books) {
        let Session {
            shared,
            mut record,
            started,
            conn,
            ..
        } = self;
        let counters = &books.counters;
        record.bytes_up = counters.bytes_up.load(Ordering::Relaxed);
        record.bytes_down = counters.bytes_down.load(Ordering::Relaxed);
        record.outcome = end.outcome();
        record.message = end.message();
        if let End::Limit(Limit::Quota(refusal)) = &end {
            record.error = Some(ErrorCode::TeamBudgetExhausted.as_str());
            record.quota = Some(QuotaRecord::of(refusal));
        }
        if counters.redacted.load(Ordering::Relaxed) {
            record.finding = Some(Finding::SecretEchoed);
        }
        record.websocket = Some(WebSocketRecord {
            messages_up: counters.messages_up.load(Ordering::Relaxed),
            messages_down: counters.messages_down.load(Ordering::Relaxed),
            close_code: books.close_code,
            closed_by: end.closed_by(),
        });
        finish(&shared, record, started);
        // Only now may shutdown stop waiting for this connection, and its slot be taken.
        drop(conn);
    }
}

/// The session's books: the counters both pumps share, and the close code.
struct Books {
    counters: Counters,
    close_code: Option<u16>,
}

impl Books {
    fn new(max_bytes: u64, meter: Option<ByteMeter>) -> Books {
        Books {
            counters: Counters {
                origin: tokio::time::Instant::now(),
                last: AtomicU64::new(0),
                bytes_up: AtomicU64::new(0),
                bytes_down: AtomicU64::new(0),
                messages_up: AtomicU64::new(0),
                messages_down: AtomicU64::new(0),
                max_bytes,
                meter,
                redacted: AtomicBool::new(false),
            },
            close_code: None,
        }
    }
}

/// Counters both directions update (atomics: the two pumps run in one task, but the task
/// must be `Send`).
struct Counters {
    origin: tokio::time::Instant,
    /// Milliseconds after `origin` of the last frame either way.
    last: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    messages_up: AtomicU64,
    messages_down: AtomicU64,
    /// `limits.max_tunnel_bytes`: data both ways together.
    max_bytes: u64,
    meter: Option<ByteMeter>,
    /// An upstream message had a secret removed.
    redacted: AtomicBool,
}

impl Counters {
    fn touch(&self) {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    /// Counts a data message of `len` bytes from `side`, or the limit it would pass (the
    /// message is then not relayed).
    fn take(&self, side: Side, len: u64) -> Result<(), Limit> {
        let total = self.bytes_up.load(Ordering::Relaxed) + self.bytes_down.load(Ordering::Relaxed);
        if total.saturating_add(len) > self.max_bytes {
            return Err(Limit::Bytes(self.max_bytes));
        }
        if let Some(meter) = &self.meter {
            if !meter.add(len) {
                return Err(Limit::Quota(Box::new(meter.exhausted())));
            }
        }
        let (bytes, messages) = match side {
            Side::Client => (&self.bytes_up, &self.messages_up),
            Side::Upstream => (&self.bytes_down, &self.messages_down),
        };
        bytes.fetch_add(len, Ordering::Relaxed);
        messages.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Resolves once no frame moved either way for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.origin + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let quiet_until = last + idle;
            if tokio::time::Instant::now() >= quiet_until {
                return;
            }
            tokio::time::sleep_until(quiet_until).await;
        }
    }
}

/// Relays `from`'s data messages to `to` until `from` closes, breaks, or a message passes
/// a limit.
async fn pump(
    from: &mut SplitStream<Leg>,
    to: &mut SplitSink<Leg, Message>,
    side: Side,
    counters: &Counters,
    secrets: Option<&Credentials>,
) -> End {
    loop {
        let message = match from.next().await {
            Some(Ok(message)) => message,
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, .. }))) => {
                return End::TooLarge { side, size }
            }
            Some(Err(error)) => {
                return End::Broken {
                    side,
                    error: error.to_string(),
                }
            }
            None => {
                return End::Broken {
                    side,
                    error: "the connection closed".to_owned(),
                }
            }
        };
        counters.touch();
        let message = match message {
            Message::Close(frame) => return End::Closed { side, frame },
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            data => data,
        };
        if let Err(limit) = counters.take(side, message.len() as u64) {
            return End::Limit(limit);
        }
        let message = match secrets {
            Some(secrets) => redacted(message, secrets, counters),
            None => message,
        };
        if let Err(error) = to.send(message).await {
            let other = match side {
                Side::Client => Side::Upstream,
                Side::Upstream => Side::Client,
            };
            return End::Broken {
                side: other,
                error: error.to_string(),
            };
        }
    }
}

/// `message` with every secret replaced (`[redacted by tollgate]`, which keeps a text
/// message valid UTF-8).
fn redacted(message: Message, secrets: &Credentials, counters: &Counters) -> Message {
    let needles = secrets.needles();
    let clean = match &message {
        Message::Text(text) => redact::bytes(text.as_bytes(), needles)
            .map(|clean| Message::text(String::from_utf8_lossy(&clean).into_owned())),
        Message::Binary(data) => redact::bytes(data, needles).map(Message::binary),
        _ => None,
    };
    match clean {
        Some(clean) => {
            counters.redacted.store(true, Ordering::Relaxed);
            clean
        }
        None => message,
    }
}

/// Ends one leg: sends `frame` (when this leg did not close first), then reads until the
/// peer's answer and the end of the connection (which also flushes tungstenite's answer to
/// a Close the peer sent), for at most `grace`.
async fn close_leg(
    out: &mut SplitSink<Leg, Message>,
    input: &mut SplitStream<Leg>,
    frame: Option<CloseFrame>,
    grace: Duration,
) {
    let handshake = async {
        if let Some(frame) = frame {
            if out.send(Message::Close(Some(frame))).await.is_err() {
                return;
            }
        }
        while let Some(Ok(_)) = input.next().await {}
        let _ = out.close().await;
    };
    let _ = tokio::time::timeout(grace, handshake).await;
}

/// Resolves when the shutdown signal is set; never without one.
async fn stopped(signal: Option<&mut tokio::sync::watch::Receiver<bool>>) {
    match signal {
        Some(signal) => crate::proxy::stopped(signal).await,
        None => std::future::pending().await,
    }
}
