//! The security gate every request passes before anything is dialed:
//! decide → resolve → classify and decide again.
//!
//! A name the policy refuses is never looked up; a name it allows is resolved exactly once,
//! and the decision on those addresses lists the only ones the transport may dial. Every
//! decision knows the node's own addresses ([`crate::host_addresses`]), which no policy opens.

use super::errors::{ErrorCode, ProxyError};
use super::resolve::{known_without_dns, resolve};
use super::Shared;
use tollgate_policy::url::NormalizedUrl;
use tollgate_policy::{Decision, Destination, Reason, Request};

/// Decides `url`, resolving it if the policy allows the name; `Ok` only when allowed.
/// `credential` is the provider named in `Tollgate-Auth` (team rules may refuse on it).
pub(crate) async fn clear(
    shared: &Shared,
    method: &str,
    url: &NormalizedUrl,
    connect: bool,
    header_names: &[String],
    credential: Option<&str>,
) -> Result<Decision, ProxyError> {
    let policy = &shared.policy;
    let request = Request {
        method,
        url,
        connect,
        header_names,
        credential,
    };
    // Fail closed: without the node's addresses no address can be cleared for dialing.
    let node = crate::host_addresses::current().map_err(|message| {
        ProxyError::new(ErrorCode::PolicyDenied, message).with_reason(Reason::PolicyError.as_str())
    })?;
    // An IP literal or a pin needs no DNS: one decision on the known address.
    if let Some(address) = known_without_dns(policy, &url.host) {
        return allowed(policy.decide(&request, &Destination::Resolved(vec![address]), &node));
    }
    let first = policy.decide(&request, &Destination::Unresolved, &node);
    if !first.needs_resolution() {
        return allowed(first);
    }
    let resolution = resolve(
        policy,
        shared.resolver.as_ref(),
        &url.host,
        shared.settings.resolve_timeout,
    )
    .await;
    let mut decision = policy.decide(
        &request,
        &Destination::Resolved(resolution.addresses),
        &node,
    );
    if let (Some(failure), Reason::CannotResolve) = (&resolution.failure, decision.reason) {
        decision.message = format!("{} ({failure})", decision.message);
    }
    allowed(decision)
}

fn allowed(decision: Decision) -> Result<Decision, ProxyError> {
    if decision.allow && !decision.addresses.is_empty() {
        Ok(decision)
    } else {
        Err(ProxyError::from_decision(&decision))
    }
}
