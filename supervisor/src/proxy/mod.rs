//! The egress proxy: every HTTP request and CONNECT tunnel that leaves a sandbox passes here.
//!
//! It serves one execution: a listener that `tollgate run` bound inside the sandbox's network
//! namespace, a compiled team policy, per-execution limits and an audit log. Upstream
//! connections are dialed by the runtime's threads, which stay in the host namespace.
//!
//! # Using it from `run`
//!
//! ```no_run
//! # async fn example(policy: tollgate_policy::Policy, listener: std::net::TcpListener,
//! #                  audit: std::fs::File) -> std::io::Result<()> {
//! use std::sync::Arc;
//! use tollgate::proxy::Proxy;
//!
//! let proxy = Proxy::builder(Arc::new(policy))
//!     .execution_id("exec-1234")
//!     .audit(audit)
//!     .build();
//! // On a runtime whose worker threads live in the host network namespace:
//! let handle = proxy.start(&tokio::runtime::Handle::current(), listener)?;
//! // … the child runs …
//! let stats = handle.shutdown().await; // requests, denied, retried, bytes, destinations
//! # let _ = stats; Ok(()) }
//! ```
//!
//! # One request, step by step
//!
//! [`listener`] accepts (connection cap, header timeout, 16 KiB header limit; `witness`
//! follows the raw request framing) → [`forward`] parses and normalises the absolute URL
//! (or [`intercept`] builds it from the tunnel's origin) → [`pipeline`]: [`headers`]
//! (smuggling refusals, hop-by-hop, `Tollgate-*`) → [`gate`]: decide → [`resolve`] once →
//! decide on the addresses → [`hooks`] → [`limits`] (body size) → [`credentials`]
//! (placeholders, `Tollgate-Auth`, URL credentials) → `attempt`: the request budget and the
//! team's quotas ([`crate::quota`]), a pooled connection to a decided address or
//! [`transport`] dials one ([`upstream_tls`] for https), [`bot_auth`] signs, [`exchange`] →
//! [`retry`] → [`relay`] the response under its limits ([`redact`] removes echoed secrets)
//! → [`audit`].
//!
//! CONNECT takes the same gate, then [`connect`] either relays a `tls: passthrough` tunnel
//! byte for byte (one counted request) or hands a `tls: intercept` tunnel to [`intercept`],
//! which terminates TLS with a leaf certificate from the execution's CA ([`ca`], [`tls`])
//! and serves every request inside through the pipeline above.
//!
//! # What the sandbox sees when refused
//!
//! An HTTP response with `Tollgate-Error: <code>` and `{"error", "message", "execution"}`
//! ([`errors`]); the only exceptions are hyper's own bare 431 (header block over 16 KiB) and
//! 400 (unparseable request), which it sends before tollgate sees a request.

pub mod body;
mod builder;
mod credentials;
mod denials;
pub mod errors;
mod finish;
mod forward;
mod gate;
mod headers;
pub mod hooks;
mod http1;
mod http2;
mod limits;
mod listener;
mod pipeline;
mod relay;
mod repeats;
mod resolve;
mod response;
mod stats;
#[cfg(feature = "testing")]
pub mod testing;
mod tls;
pub mod transparent;
mod tunnel;
mod upstream;
mod websocket;

pub use builder::{Proxy, ProxyBuilder, Settings};
pub use credentials::bot_auth::{thumbprint, BotSigner};
pub use credentials::secrets::{self, TeamSecrets};
pub use credentials::{CredentialError, Credentials};
pub use denials::ViolationAlarm;
pub use errors::{ErrorCode, ProxyError};
/// The one decision, for `policy eval` (the proxy calls it through `gate::clear`).
pub(crate) use gate::{evaluate, Evaluation, Gate};
pub use hooks::{AfterHttp, BeforeHttp, HookRequest, HookResponse, HookVerdict};
pub use listener::ProxyHandle;
pub use resolve::{Resolver, SystemResolver};
pub use stats::{DestinationStats, ProxyStats, RefusedStats};
pub use tls::ca::ExecutionCa;
pub use tls::upstream_ca;
pub use tls::{Interception, TlsSetupError};
pub use upstream::{DialError, DialTarget, Dialed, DirectTransport, Transport, Upstream};

use crate::audit::AuditLog;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tollgate_policy::Policy;

/// A boxed, sendable future: the return type of the pluggable traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything one execution's proxy shares across connections.
pub(crate) struct Shared {
    pub policy: Arc<Policy>,
    pub execution: String,
    pub transport: Arc<dyn Transport>,
    pub resolver: Arc<dyn Resolver>,
    pub before: Vec<Arc<dyn BeforeHttp>>,
    pub after: Vec<Arc<dyn AfterHttp>>,
    pub audit: Option<AuditLog>,
    pub stats: stats::Stats,
    /// `limits.max_denied` and the violation alarm.
    pub denials: denials::Denials,
    /// The operator log, identical refusals summed.
    pub log: repeats::LogRepeats,
    pub budget: limits::Budget,
    pub pool: upstream::pool::Pool,
    pub settings: Settings,
    /// The team's secrets, placeholders and signing key (loaded once per execution).
    pub credentials: Credentials,
    /// The execution's CA and upstream trust, or why there is none.
    pub tls: Result<Arc<Interception>, String>,
    /// The team's quotas, when its policy has any: every attempt takes from them after the
    /// execution's budget.
    pub quotas: Option<Arc<crate::quota::QuotaEnforcer>>,
}

impl Shared {
    /// The counters so far, with the team's quotas.
    pub fn counters(&self) -> ProxyStats {
        let mut stats = self.stats.snapshot();
        stats.quotas = self.quotas.as_ref().map(|quotas| quotas.report());
        stats
    }
}

/// What a request handler needs beyond [`Shared`]: a guard that keeps shutdown waiting for
/// the connection (and any tunnel it opens), and the shutdown signal.
#[derive(Clone)]
pub(crate) struct ConnContext {
    pub shared: Arc<Shared>,
    pub guard: tokio::sync::mpsc::Sender<()>,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// What the framing witness saw in each request head on this connection.
    pub framing: Arc<http1::Verdicts>,
    /// The connection's place under `max_connections`; a tunnel keeps it until it closes.
    pub slot: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
}

/// How a connection reached the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// A client that uses the proxy settings (absolute-form requests, CONNECT).
    Proxy,
    /// A client that ignored them, redirected to the transparent listener (see
    /// `transparent`).
    Transparent,
}

/// Resolves when the shutdown signal is set (or its sender is gone).
pub(crate) async fn stopped(signal: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = signal.wait_for(|stop| *stop).await;
}
