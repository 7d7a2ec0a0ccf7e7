//! The denial limit and the violation alarm: once the sandbox was refused
//! `limits.max_denied` times, every further request and tunnel of the execution gets
//! `429 denial_limit` before any policy work; with `limits.on_violation: kill` the alarm
//! rings once, at the limit, and `tollgate run` ends the execution.
//!
//! What counts is every refusal the sandbox caused (a `deny` record: policy, address checks,
//! invalid requests, limits, credential misuse, the connection cap), never an upstream
//! failure. Without a limit a knocking sandbox costs nothing: 650,000 refusals in 20 s
//! cost it no `max_requests` at all.

use super::body::ProxyBody;
use super::errors::{ErrorCode, ProxyError};
use super::finish::refuse;
use super::Shared;
use crate::audit::{Kind, Traffic};
use http::request::Parts;
use http::{Request, Response};
use hyper::body::Incoming;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tollgate_policy::model::Limits;
use tollgate_policy::schema::OnViolation;
use tollgate_policy::url::NormalizedUrl;

/// Rung once with one sentence saying why the execution must end.
pub type ViolationAlarm = Arc<dyn Fn(String) + Send + Sync>;

/// `limits.max_denied` and what reaching it does.
pub(crate) struct Denials {
    limit: u64,
    kill: bool,
    alarm: Option<ViolationAlarm>,
    rung: AtomicBool,
}

impl Denials {
    pub(crate) fn new(limits: &Limits, alarm: Option<ViolationAlarm>) -> Denials {
        Denials {
            limit: limits.max_denied,
            kill: limits.on_violation == OnViolation::Kill,
            alarm,
            rung: AtomicBool::new(false),
        }
    }

    /// The refusal for everything once `refused` reached the limit.
    fn admit(&self, refused: u64) -> Result<(), ProxyError> {
        if refused < self.limit {
            return Ok(());
        }
        // The same sentence every time, so that identical refusals stay identical.
        Err(ProxyError::new(
            ErrorCode::DenialLimit,
            format!(
                "this execution was refused {} requests (limits.max_denied), so tollgate \
                 refuses every request and tunnel it asks for from now on",
                self.limit
            ),
        ))
    }

    /// After a refusal, `refused` so far: rings the alarm at the limit under `kill`.
    pub(crate) fn counted(&self, refused: u64) {
        if !self.kill || refused < self.limit || self.rung.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(alarm) = &self.alarm {
            alarm(format!(
                "the proxy refused {refused} requests of the execution (limits.max_denied: {}, \
                 on_violation: kill)",
                self.limit
            ));
        }
    }
}

/// At the entry of the request pipeline: past the limit, the refusal (recorded), before
/// anything else is looked at.
pub(crate) fn past_limit(
    shared: &Shared,
    parts: &Parts,
    url: Option<&NormalizedUrl>,
) -> Option<Response<ProxyBody>> {
    let error = shared.denials.admit(shared.stats.denied_so_far()).err()?;
    let started = Instant::now();
    let mut record = Traffic::new(Kind::Http, parts.method.as_str());
    match url {
        Some(url) => record.set_url(url),
        None => record.set_unparsed_target(&parts.uri),
    }
    Some(refuse(shared, record, &error, started))
}

/// At the entry of a CONNECT: past the limit, the refusal (recorded), before anything else.
pub(crate) fn tunnel_past_limit(
    shared: &Shared,
    request: &Request<Incoming>,
) -> Option<Response<ProxyBody>> {
    let error = shared.denials.admit(shared.stats.denied_so_far()).err()?;
    let started = Instant::now();
    let mut record = Traffic::new(Kind::Connect, "CONNECT");
    if let Some(authority) = request.uri().authority() {
        record.scheme = "connect".into();
        record.host = authority.host().to_ascii_lowercase();
        record.port = authority.port_u16().unwrap_or(0);
    }
    Some(refuse(shared, record, &error, started))
}

/// A connection refused over `max_connections` (it has no record): counted like the rest.
pub(crate) fn connection_refused(shared: &Shared) {
    let refused = shared.stats.refused_connection();
    shared.denials.counted(refused);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn limits(yaml: &str) -> Limits {
        let policy = tollgate_policy::Policy::from_yaml(
            "test.yaml",
            &format!("version: 1\nteam: t\nlimits:\n{yaml}"),
        )
        .expect("policy");
        policy.limits.clone()
    }

    fn alarm() -> (Arc<Mutex<Vec<String>>>, ViolationAlarm) {
        let rung = Arc::new(Mutex::new(Vec::new()));
        let sink = rung.clone();
        (
            rung,
            Arc::new(move |sentence| sink.lock().unwrap().push(sentence)),
        )
    }

    #[test]
    fn the_limit_refuses_from_max_denied_on() {
        let denials = Denials::new(&limits("  max_denied: 3\n"), None);
        assert!(denials.admit(2).is_ok());
        let error = denials.admit(3).unwrap_err();
        assert_eq!(error.code, ErrorCode::DenialLimit);
        assert_eq!(error.code.status().as_u16(), 429);
        assert_eq!(error.reason, "denial_limit");
        assert!(
            error
                .message
                .contains("refused 3 requests (limits.max_denied)"),
            "{}",
            error.message
        );
        // The same sentence whatever the count: identical refusals stay identical.
        assert_eq!(denials.admit(10).unwrap_err().message, error.message);
    }

    #[test]
    fn kill_rings_once_at_the_limit_and_continue_never() {
        let (rung, ring) = alarm();
        let denials = Denials::new(
            &limits("  max_denied: 2\n  on_violation: kill\n"),
            Some(ring),
        );
        denials.counted(1);
        assert!(rung.lock().unwrap().is_empty());
        denials.counted(2);
        denials.counted(3);
        assert_eq!(rung.lock().unwrap().len(), 1);

        let (rung, ring) = alarm();
        let denials = Denials::new(&limits("  max_denied: 2\n"), Some(ring));
        for refused in 1..10 {
            denials.counted(refused);
        }
        assert!(rung.lock().unwrap().is_empty());
    }
}
