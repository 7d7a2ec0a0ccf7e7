//! The upstream side of a request: the attempts of one decided request (budget, pooled or
//! dialed connection, TLS, signature, exchange, retry) and the pluggable transport that dials.

mod attempt;
mod exchange;
pub(crate) mod pool;
mod retry;
mod transport;

pub(crate) use attempt::{attempts, Outgoing, Sent};
pub use transport::{DialError, DialTarget, Dialed, DirectTransport, Transport, Upstream};
