//! CONNECT tunnels: decided on `{host, port}` when the tunnel is asked for, then carried the
//! way the matching allow entry says (`tunnel_mode`).
//!
//! - `tls: passthrough`: relayed byte for byte until either side closes, the tunnel idles
//!   out, carries `limits.max_tunnel_bytes` (up and down together), lives for
//!   `limits.max_tunnel_duration`, or the proxy shuts down; one request against
//!   `max_requests` and the team's quotas, whatever it carries inside (every byte both
//!   ways counts against a team `bytes_per_day`).
//! - `tls: intercept` (the default): terminated with the execution's CA (`intercept`); the
//!   tunnel itself dials nothing and counts nothing, each HTTP request inside goes through
//!   the pipeline and is counted, decided and audited on its own.
//!
//! Either way the tunnel has one audit record, written when it closes.

mod activity;
pub(crate) mod intercept;

use crate::audit::{Kind, Outcome, QuotaRecord, Traffic, Verdict};
use crate::proxy::body::{self, ProxyBody};
use crate::proxy::errors::{ErrorCode, ProxyError};
use crate::proxy::finish::{finish, refuse};
use crate::proxy::upstream::{DialError, DialTarget, Dialed};
use crate::proxy::{gate, headers, ConnContext, Shared};
use crate::quota::ByteMeter;
use activity::{Activity, Counted, Side};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tollgate_policy::model::AllowEntry;
use tollgate_policy::schema::TlsMode;
use tollgate_policy::url::NormalizedUrl;
use tollgate_policy::Decision;

/// How an allowed tunnel is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TunnelMode {
    /// Bytes are relayed untouched.
    Passthrough,
    /// TLS is terminated with the execution's CA and each inner request is decided.
    Intercept,
}

/// The mode the matching allow entry asks for (`tls: intercept` is the policy default).
pub(crate) fn tunnel_mode(entry: Option<&AllowEntry>) -> TunnelMode {
    match entry.map(|e| e.tls) {
        Some(TlsMode::Passthrough) => TunnelMode::Passthrough,
        Some(TlsMode::Intercept) | None => TunnelMode::Intercept,
    }
}

/// Handles `CONNECT host:port`.
pub(crate) async fn tunnel(
    conn: ConnContext,
    mut request: Request<Incoming>,
) -> Response<ProxyBody> {
    if let Some(refused) = crate::proxy::denials::tunnel_past_limit(&conn.shared, &request) {
        return refused;
    }
    let started = Instant::now();
    let shared = conn.shared.clone();
    let mut record = Traffic::new(Kind::Connect, "CONNECT");
    let opened = match open(&shared, &request, &mut record).await {
        Ok(opened) => opened,
        Err(error) => return refuse(&shared, record, &error, started),
    };
    let upgrade = hyper::upgrade::on(&mut request);
    match opened {
        Opened::Intercept(url) => {
            tokio::spawn(intercept::serve(conn, upgrade, url, record, started));
        }
        Opened::Passthrough(passage) => {
            tokio::spawn(passthrough(conn, upgrade, passage, record, started));
        }
    }
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::OK;
    response
}

/// Relays a passthrough tunnel until it closes, idles out, reaches a tunnel limit or the
/// proxy stops.
async fn passthrough(
    conn: ConnContext,
    upgrade: hyper::upgrade::OnUpgrade,
    passage: Passage,
    record: Traffic,
    started: Instant,
) {
    let client = match upgrade.await {
        Ok(upgraded) => TokioIo::new(upgraded),
        Err(error) => {
            tracing::debug!("CONNECT upgrade failed: {error}");
            return;
        }
    };
    relay(conn, client, passage, record, started).await;
}

/// Relays an allowed passthrough tunnel's bytes between `client` and the dialed upstream
/// until it closes, idles out, reaches a tunnel limit or the proxy stops; then its record.
pub(crate) async fn relay<S>(
    conn: ConnContext,
    client: S,
    passage: Passage,
    record: Traffic,
    started: Instant,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let ConnContext {
        shared,
        guard,
        mut shutdown,
        slot,
        ..
    } = conn;
    // Nothing inside is seen, so the tunnel itself is bounded: bytes both ways together
    // (also against the team's byte budgets), and its lifetime from the CONNECT.
    let limits = &shared.policy.limits;
    let activity = Activity::new(limits.max_tunnel_bytes).metered(passage.meter);
    let deadline = tokio::time::Instant::from_std(started) + limits.max_tunnel_duration;
    let mut client = Counted::new(client, activity.clone(), Side::Client);
    let mut upstream = Counted::new(passage.dialed.stream, activity.clone(), Side::Upstream);
    let idle = shared.settings.idle_timeout;
    let outcome = tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match result {
            Ok(_) => Outcome::Closed,
            Err(_) if activity.quota_exhausted() => Outcome::QuotaExhausted,
            Err(_) if activity.bytes_exceeded() => Outcome::TunnelBytesExceeded,
            Err(_) => Outcome::Reset,
        },
        _ = activity.idle_for(idle) => Outcome::IdleTimeout,
        _ = tokio::time::sleep_until(deadline) => Outcome::TunnelDurationExceeded,
        _ = crate::proxy::stopped(&mut shutdown) => Outcome::Shutdown,
    };
    close(&shared, record, &activity, outcome, started);
    drop(slot);
    drop(guard);
}

/// How an allowed tunnel goes on.
pub(crate) enum Opened {
    Passthrough(Passage),
    /// Terminated locally; the URL carries the tunnel's scheme, host and port.
    Intercept(NormalizedUrl),
}

/// A dialed passthrough tunnel, and the team's byte budgets its bytes count against.
pub(crate) struct Passage {
    pub dialed: Dialed,
    pub meter: Option<ByteMeter>,
}

/// parse → [`open_target`].
async fn open(
    shared: &Shared,
    request: &Request<Incoming>,
    record: &mut Traffic,
) -> Result<Opened, ProxyError> {
    let url = target(request)?;
    open_target(shared, url, request.headers(), record).await
}

/// decide → resolve → decide → mode → (passthrough: budget → quotas → dial), for a tunnel to `url`
/// (`https://host:port/`): asked for with CONNECT (whose `headers` are decided on and may ask
/// for a timeout), or a transparent TLS connection (no headers).
pub(crate) async fn open_target(
    shared: &Shared,
    url: NormalizedUrl,
    headers: &http::HeaderMap,
    record: &mut Traffic,
) -> Result<Opened, ProxyError> {
    record.scheme = "connect".into();
    record.host = url.host_str();
    record.port = url.port;
    let names = headers::names(headers);
    let decision: Decision = gate::clear(shared, "CONNECT", &url, true, &names, None).await?;
    record.decision = Verdict::Allow;
    record.reason = decision.reason.as_str().to_owned();
    record.rule = decision.rule.clone();
    let entry = decision.entry.and_then(|i| shared.policy.entry(i));
    if tunnel_mode(entry) == TunnelMode::Intercept {
        record.tls = Some(TlsMode::Intercept);
        if let Err(reason) = &shared.tls {
            return Err(ProxyError::new(
                ErrorCode::UpstreamTlsError,
                format!(
                    "{} needs TLS interception, which is not available: {reason}",
                    url.authority()
                ),
            ));
        }
        record.status = Some(200);
        return Ok(Opened::Intercept(url));
    }
    record.tls = Some(TlsMode::Passthrough);
    shared
        .budget
        .take()
        .map_err(|e| e.with_reason("max_requests"))?;
    record.attempt = Some(1);
    let meter = match &shared.quotas {
        None => None,
        Some(quotas) => match quotas.admit(&url.host, 0).await {
            Ok(admission) => admission.meter,
            Err(refusal) => {
                // Not dialed: the execution's budget is not spent on it.
                shared.budget.give_back();
                return Err(ProxyError::from_quota(refusal));
            }
        },
    };
    shared
        .stats
        .attempt(&format!("connect://{}:{}", url.host, url.port), false);
    let timeout = shared
        .policy
        .limits
        .clamp_timeout(headers::requested_timeout(headers)?);
    let host = url.host_str();
    let target = DialTarget {
        host: &host,
        port: url.port,
        addresses: &decision.addresses,
        connect_timeout: shared.settings.connect_timeout.min(timeout),
    };
    let dialed = shared.transport.dial(target).await.map_err(|e| match e {
        DialError::TimedOut => ProxyError::new(
            ErrorCode::Timeout,
            format!(
                "{}:{} did not accept the connection within {timeout:?}",
                url.host, url.port
            ),
        ),
        DialError::Failed(e) => ProxyError::new(
            ErrorCode::ConnectError,
            format!("could not connect to {}:{}: {e}", url.host, url.port),
        ),
    })?;
    record.address = Some(dialed.peer.to_string());
    record.status = Some(200);
    Ok(Opened::Passthrough(Passage { dialed, meter }))
}

/// The CONNECT target: `host:port` with an explicit port (RFC 9110 §9.3.6).
fn target(request: &Request<Incoming>) -> Result<NormalizedUrl, ProxyError> {
    let invalid = |m: &str| ProxyError::new(ErrorCode::InvalidUrl, m);
    let authority = request
        .uri()
        .authority()
        .ok_or_else(|| invalid("CONNECT needs a host:port target"))?;
    if authority.port_u16().is_none() {
        return Err(invalid("CONNECT needs an explicit port: CONNECT host:443"));
    }
    NormalizedUrl::from_parts("https", authority.as_str(), "/")
        .map_err(|e| ProxyError::new(ErrorCode::InvalidUrl, e.to_string()))
}

fn close(
    shared: &Arc<Shared>,
    mut record: Traffic,
    activity: &Activity,
    outcome: Outcome,
    started: Instant,
) {
    record.bytes_up = activity.up.load(Ordering::Relaxed);
    record.bytes_down = activity.down.load(Ordering::Relaxed);
    record.outcome = outcome;
    if let Some(refusal) = activity.quota_refusal() {
        record.error = Some(ErrorCode::TeamBudgetExhausted.as_str());
        record.message = Some(refusal.message.clone());
        record.quota = Some(QuotaRecord::of(&refusal));
    }
    finish(shared, record, started);
}
