//! How a WebSocket session ended, and what follows from it: the Close frame tollgate sends
//! (1008 for a policy limit, 1009 for a message over the cap, 1001 when it goes away), the
//! record's outcome, `closed_by` and message.

use super::MAX_MESSAGE_BYTES;
use crate::audit::{ClosedBy, Outcome};
use crate::quota::QuotaRefusal;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// Which leg of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// The sandbox's client.
    Client,
    Upstream,
}

impl Side {
    pub fn closer(self) -> ClosedBy {
        match self {
            Side::Client => ClosedBy::Client,
            Side::Upstream => ClosedBy::Upstream,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Side::Client => "the client",
            Side::Upstream => "the upstream",
        }
    }
}

/// Why a session ended.
#[derive(Debug)]
pub(super) enum End {
    /// `side` sent a Close frame (tungstenite answered it on that leg).
    Closed {
        side: Side,
        frame: Option<CloseFrame>,
    },
    /// `side`'s connection ended without a Close frame, or broke the protocol.
    Broken { side: Side, error: String },
    /// `side` sent a message over [`MAX_MESSAGE_BYTES`].
    TooLarge { side: Side, size: usize },
    /// tollgate ended it.
    Limit(Limit),
}

/// The limits tollgate ends a session at.
#[derive(Debug)]
pub(super) enum Limit {
    /// `limits.max_tunnel_bytes`: data both ways together.
    Bytes(u64),
    /// `limits.max_tunnel_duration`.
    Duration(std::time::Duration),
    /// No frame either way for the idle timeout.
    Idle(std::time::Duration),
    /// A team byte budget ran out.
    Quota(Box<QuotaRefusal>),
    /// The execution is ending.
    Shutdown,
}

impl End {
    /// The Close frame tollgate sends to the leg(s) that did not end the session: the
    /// ending side's own frame passed on, or tollgate's with its code and a short reason.
    pub fn frame(&self) -> CloseFrame {
        let (code, reason) = match self {
            End::Closed {
                frame: Some(frame), ..
            } => return frame.clone(),
            End::Closed { frame: None, .. } => (CloseCode::Normal, ""),
            End::Broken { side, .. } => (
                CloseCode::Away,
                match side {
                    Side::Client => "tollgate: the client went away",
                    Side::Upstream => "tollgate: the upstream went away",
                },
            ),
            End::TooLarge { .. } => (CloseCode::Size, "tollgate: message over the size limit"),
            End::Limit(Limit::Bytes(_)) => (
                CloseCode::Policy,
                "tollgate: the session reached limits.max_tunnel_bytes",
            ),
            End::Limit(Limit::Duration(_)) => (
                CloseCode::Policy,
                "tollgate: the session reached limits.max_tunnel_duration",
            ),
            End::Limit(Limit::Quota(_)) => (
                CloseCode::Policy,
                "tollgate: the team's byte budget ran out",
            ),
            End::Limit(Limit::Idle(_)) => (CloseCode::Away, "tollgate: the session was idle"),
            End::Limit(Limit::Shutdown) => (CloseCode::Away, "tollgate: the execution is ending"),
        };
        CloseFrame {
            code,
            reason: reason.into(),
        }
    }

    /// Whether tollgate closes both legs (it ended the session), not only the other one.
    pub fn closes_both(&self) -> bool {
        matches!(self, End::TooLarge { .. } | End::Limit(_))
    }

    /// The side that did not end it, which is told with [`End::frame`].
    pub fn other(&self) -> Option<Side> {
        match self {
            End::Closed { side, .. } | End::Broken { side, .. } => Some(match side {
                Side::Client => Side::Upstream,
                Side::Upstream => Side::Client,
            }),
            _ => None,
        }
    }

    /// The record's outcome.
    pub fn outcome(&self) -> Outcome {
        match self {
            End::Closed { .. } => Outcome::Closed,
            End::Broken { .. } => Outcome::Reset,
            End::TooLarge { .. } => Outcome::MessageTooLarge,
            End::Limit(Limit::Bytes(_)) => Outcome::TunnelBytesExceeded,
            End::Limit(Limit::Duration(_)) => Outcome::TunnelDurationExceeded,
            End::Limit(Limit::Idle(_)) => Outcome::IdleTimeout,
            End::Limit(Limit::Quota(_)) => Outcome::QuotaExhausted,
            End::Limit(Limit::Shutdown) => Outcome::Shutdown,
        }
    }

    pub fn closed_by(&self) -> ClosedBy {
        match self {
            End::Closed { side, .. } | End::Broken { side, .. } => side.closer(),
            End::TooLarge { .. } | End::Limit(_) => ClosedBy::Tollgate,
        }
    }

    /// The record's `message`: what happened, in a sentence, when it was not a plain close.
    pub fn message(&self) -> Option<String> {
        match self {
            End::Closed { .. } => None,
            End::Broken { side, error } => Some(format!(
                "{} ended the WebSocket session without a Close frame: {error}",
                side.name()
            )),
            End::TooLarge { side, size } => Some(format!(
                "{} sent a WebSocket message of {size} bytes, over tollgate's {MAX_MESSAGE_BYTES}-byte message limit",
                side.name()
            )),
            End::Limit(Limit::Bytes(limit)) => Some(format!(
                "the WebSocket session reached its {limit}-byte limit (limits.max_tunnel_bytes, messages both ways together)"
            )),
            End::Limit(Limit::Duration(limit)) => Some(format!(
                "the WebSocket session reached its {limit:?} limit (limits.max_tunnel_duration)"
            )),
            End::Limit(Limit::Idle(idle)) => Some(format!(
                "the WebSocket session carried no frame either way for {idle:?}"
            )),
            End::Limit(Limit::Quota(refusal)) => Some(refusal.message.clone()),
            End::Limit(Limit::Shutdown) => {
                Some("the execution ended while the WebSocket session was open".to_owned())
            }
        }
    }
}
