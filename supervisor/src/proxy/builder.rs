//! Building a proxy for one execution: the policy, the execution id, the team's credentials
//! and TLS interception, the pluggable parts (transport, resolver, hooks, audit writer), plus
//! the connection-level settings.

use super::credentials::Credentials;
use super::denials::{Denials, ViolationAlarm};
use super::hooks::{AfterHttp, BeforeHttp};
use super::listener::{self, ProxyHandle};
use super::resolve::{Resolver, SystemResolver};
use super::stats::ProxyStats;
use super::tls::Interception;
use super::transparent::TransparentListener;
use super::upstream::{DirectTransport, Transport};
use super::{limits, stats, Shared};
use crate::audit::AuditLog;
use crate::quota::QuotaEnforcer;
use std::future::Future;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;
use tollgate_policy::Policy;

/// Connection-level protections that are not part of a team policy.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A client must send a complete request head within this time, and an idle keep-alive
    /// connection is closed after it. Default 10 s.
    pub header_read_timeout: Duration,
    /// A CONNECT tunnel with no bytes moving either way is closed after this. Default 60 s.
    pub idle_timeout: Duration,
    /// Each TCP connect to an upstream address (never longer than the request timeout).
    /// Default 10 s.
    pub connect_timeout: Duration,
    /// One DNS lookup. Default 5 s.
    pub resolve_timeout: Duration,
    /// Concurrent client connections; `None` takes the policy's `limits.max_connections`.
    pub max_connections: Option<u32>,
    /// How long shutdown waits for in-flight requests before dropping them. Default 2 s.
    pub shutdown_grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            resolve_timeout: Duration::from_secs(5),
            max_connections: None,
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

/// Configures a [`Proxy`]; see the module documentation for the order things run in.
pub struct ProxyBuilder {
    policy: Arc<Policy>,
    execution: String,
    transport: Arc<dyn Transport>,
    resolver: Arc<dyn Resolver>,
    before: Vec<Arc<dyn BeforeHttp>>,
    after: Vec<Arc<dyn AfterHttp>>,
    audit: Option<AuditLog>,
    settings: Settings,
    credentials: Option<Credentials>,
    tls: Option<Arc<Interception>>,
    alarm: Option<ViolationAlarm>,
    quotas: Option<Arc<QuotaEnforcer>>,
}

impl ProxyBuilder {
    /// The team's loaded credentials ([`Credentials::load`]); without this call the proxy
    /// has none, and a request naming a provider is refused.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// The execution's CA and upstream trust (its CA is what the sandbox must trust).
    /// Without this call, [`build`](Self::build) makes one valid for 24 hours.
    pub fn interception(mut self, interception: Arc<Interception>) -> Self {
        self.tls = Some(interception);
        self
    }

    /// The id shown in every error body and audit record.
    pub fn execution_id(mut self, id: impl Into<String>) -> Self {
        self.execution = id.into();
        self
    }

    /// Replaces the upstream transport (default: [`DirectTransport`]).
    pub fn transport(mut self, transport: impl Transport) -> Self {
        self.transport = Arc::new(transport);
        self
    }

    /// Shares a transport the caller keeps a handle to (e.g. a mock it inspects).
    pub fn shared_transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = transport;
        self
    }

    /// Replaces the DNS resolver (default: [`SystemResolver`]). Pins still come first.
    pub fn resolver(mut self, resolver: impl Resolver) -> Self {
        self.resolver = Arc::new(resolver);
        self
    }

    /// Shares a resolver the caller keeps a handle to.
    pub fn shared_resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.resolver = resolver;
        self
    }

    /// Adds a hook run before each forwarded request (in registration order).
    pub fn before_http(mut self, hook: impl BeforeHttp) -> Self {
        self.before.push(Arc::new(hook));
        self
    }

    /// Adds a hook run on each relayed response head (in registration order).
    pub fn after_http(mut self, hook: impl AfterHttp) -> Self {
        self.after.push(Arc::new(hook));
        self
    }

    /// Writes the audit log (JSON Lines) to `writer`.
    pub fn audit(self, writer: impl Write + Send + 'static) -> Self {
        self.audit_log(AuditLog::new(Box::new(writer)))
    }

    /// Writes audit records to an audit log the caller shares (`tollgate run`'s, which the
    /// eBPF wall's reports go to as well).
    pub fn audit_log(mut self, audit: AuditLog) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Rung once, with a sentence saying why, when the policy's `limits.on_violation: kill`
    /// asks for the execution to end (`max_denied` refusals); ending it is the caller's.
    pub fn violation_alarm(mut self, alarm: impl Fn(String) + Send + Sync + 'static) -> Self {
        self.alarm = Some(Arc::new(alarm));
        self
    }

    /// The team's quotas ([`QuotaEnforcer::new`]): every upstream attempt and passthrough
    /// tunnel takes from them, after `max_requests`. Without this call there are none.
    pub fn quotas(mut self, quotas: Arc<QuotaEnforcer>) -> Self {
        self.quotas = Some(quotas);
        self
    }

    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    pub fn build(self) -> Proxy {
        let budget = limits::Budget::new(self.policy.limits.max_requests);
        let tls = match self.tls {
            Some(tls) => Ok(tls),
            None => Interception::for_policy(
                &self.policy,
                &self.execution,
                std::time::Duration::from_secs(24 * 3600),
            )
            .map(Arc::new)
            .map_err(|e| {
                tracing::error!("TLS interception is unavailable: {e}");
                e.to_string()
            }),
        };
        let denials = Denials::new(&self.policy.limits, self.alarm);
        Proxy {
            shared: Arc::new(Shared {
                policy: self.policy,
                execution: self.execution,
                transport: self.transport,
                resolver: self.resolver,
                before: self.before,
                after: self.after,
                audit: self.audit,
                stats: stats::Stats::default(),
                denials,
                log: Default::default(),
                budget,
                pool: Default::default(),
                settings: self.settings,
                credentials: self.credentials.unwrap_or_default(),
                tls,
                quotas: self.quotas,
            }),
        }
    }
}

/// One execution's egress proxy, built and not yet serving.
pub struct Proxy {
    pub(crate) shared: Arc<Shared>,
}

impl Proxy {
    pub fn builder(policy: Arc<Policy>) -> ProxyBuilder {
        ProxyBuilder {
            policy,
            execution: String::from("-"),
            transport: Arc::new(DirectTransport),
            resolver: Arc::new(SystemResolver),
            before: Vec::new(),
            after: Vec::new(),
            audit: None,
            settings: Settings::default(),
            credentials: None,
            tls: None,
            alarm: None,
            quotas: None,
        }
    }

    /// The execution's CA certificate (PEM) the sandbox must trust for intercepted tunnels.
    pub fn ca_certificate_pem(&self) -> Option<String> {
        self.shared
            .tls
            .as_ref()
            .ok()
            .map(|tls| tls.ca().certificate_pem().to_owned())
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        self.shared.counters()
    }

    /// Serves `listener` on `runtime` until [`ProxyHandle::shutdown`].
    pub fn start(
        self,
        runtime: &tokio::runtime::Handle,
        listener: std::net::TcpListener,
    ) -> io::Result<ProxyHandle> {
        listener::start(self.shared, runtime, listener, None)
    }

    /// [`Proxy::start`], also serving transparent egress's listener (see `transparent`).
    pub fn start_transparent(
        self,
        runtime: &tokio::runtime::Handle,
        listener: std::net::TcpListener,
        transparent: TransparentListener,
    ) -> io::Result<ProxyHandle> {
        listener::start(self.shared, runtime, listener, Some(transparent))
    }

    /// Serves `listener` on the current runtime until `shutdown` resolves, then returns the
    /// final counters.
    pub async fn serve(
        self,
        listener: std::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> io::Result<ProxyStats> {
        let handle = listener::start(
            self.shared,
            &tokio::runtime::Handle::current(),
            listener,
            None,
        )?;
        shutdown.await;
        Ok(handle.shutdown().await)
    }
}
