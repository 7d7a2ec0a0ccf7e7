//! The security gate every request passes before anything is dialed:
//! decide → resolve → classify and decide again.
//!
//! A name the policy refuses is never looked up; a name it allows is resolved exactly once,
//! and the decision on those addresses lists the only ones the transport may dial. Every
//! decision knows the node's own addresses ([`crate::host_addresses`]), which no policy opens.
//!
//! [`Gate::decide`] is the one decision: the proxy calls it through [`clear`] for every
//! request and tunnel, `policy eval` through [`evaluate`], which adds the checks the proxy
//! makes on a request's headers before and after it, so that both give the same verdict.

use super::credentials;
use super::errors::{ErrorCode, ProxyError};
use super::headers;
use super::resolve::{known_without_dns, resolve, Resolver};
use super::Shared;
use http::HeaderMap;
use std::time::Duration;
use tollgate_policy::url::NormalizedUrl;
use tollgate_policy::{Decision, Destination, HostAddresses, Policy, Reason, Request};

/// What a decision needs besides the request.
pub(crate) struct Gate<'a> {
    pub policy: &'a Policy,
    /// Asked only for names the policy allows; pins and IP literals never reach it.
    pub resolver: &'a dyn Resolver,
    pub resolve_timeout: Duration,
    /// The addresses of the node the proxy dials from, never dialed.
    pub node: &'a HostAddresses,
}

impl Gate<'_> {
    /// Decides `request`, resolving its host once if the policy allows the name. The
    /// decision allows only with at least one address to dial.
    pub(crate) async fn decide(&self, request: &Request<'_>) -> Decision {
        let policy = self.policy;
        let host = &request.url.host;
        // An IP literal or a pin needs no DNS: one decision on the known address.
        if let Some(address) = known_without_dns(policy, host) {
            let decision = policy.decide(request, &Destination::Resolved(vec![address]), self.node);
            return with_addresses(decision);
        }
        let first = policy.decide(request, &Destination::Unresolved, self.node);
        if !first.needs_resolution() {
            return with_addresses(first);
        }
        let resolution = resolve(policy, self.resolver, host, self.resolve_timeout).await;
        let mut decision = policy.decide(
            request,
            &Destination::Resolved(resolution.addresses),
            self.node,
        );
        if let (Some(failure), Reason::CannotResolve) = (&resolution.failure, decision.reason) {
            decision.message = format!("{} ({failure})", decision.message);
        }
        with_addresses(decision)
    }
}

/// Fails closed on an allow without an address: there would be nothing decided to dial.
fn with_addresses(mut decision: Decision) -> Decision {
    if decision.allow && decision.addresses.is_empty() {
        decision.allow = false;
        decision.reason = Reason::PolicyError;
        decision.message =
            "the policy allowed the request without an address to dial, so it is refused".into();
    }
    decision
}

/// The proxy's gate: decides `url` for the execution `shared` serves; `Ok` only when allowed.
/// `credential` is the provider named in `Tollgate-Auth` (team rules may refuse on it).
pub(crate) async fn clear(
    shared: &Shared,
    method: &str,
    url: &NormalizedUrl,
    connect: bool,
    header_names: &[String],
    credential: Option<&str>,
) -> Result<Decision, ProxyError> {
    // Fail closed: without the node's addresses no address can be cleared for dialing.
    let node = crate::host_addresses::current().map_err(|message| {
        ProxyError::new(ErrorCode::PolicyDenied, message).with_reason(Reason::PolicyError.as_str())
    })?;
    let gate = Gate {
        policy: &shared.policy,
        resolver: shared.resolver.as_ref(),
        resolve_timeout: shared.settings.resolve_timeout,
        node: &node,
    };
    // What remained of the team's quotas at this execution's last check: team rules may
    // decide on it (`input.quotas`).
    let standings = shared
        .quotas
        .as_ref()
        .map(|quotas| quotas.standings(&url.host))
        .unwrap_or_default();
    let request = Request {
        method,
        url,
        connect,
        header_names,
        credential,
        quotas: &standings,
    };
    let decision = gate.decide(&request).await;
    if decision.allow {
        Ok(decision)
    } else {
        Err(ProxyError::from_decision(&decision))
    }
}

/// The proxy's verdict on a request without a body, as `policy eval` reports it.
pub(crate) enum Evaluation {
    /// A check on the request's method or headers refused it before the gate.
    Refused(ProxyError),
    /// The gate decided; `refusal` is what the sandbox would get instead of the upstream's
    /// answer (the decision's, or the `Tollgate-Auth` check's after an allow).
    Decided {
        decision: Box<Decision>,
        refusal: Option<ProxyError>,
    },
}

/// Runs `method url` with `headers` through the checks the proxy makes before it reads a
/// body, in its order, calling the same functions: for a request, the method, the
/// smuggling and `Tollgate-*` header checks, the gate on the headers that would leave, and
/// the existence and scope of the `Tollgate-Auth` provider; for a tunnel (`connect`), the
/// method and the gate. What needs the execution (its placeholders, the request budget,
/// the upstream) is not evaluated.
pub(crate) async fn evaluate(
    gate: &Gate<'_>,
    method: &str,
    url: &NormalizedUrl,
    connect: bool,
    headers: &HeaderMap,
) -> Evaluation {
    if let Err(error) = headers::check_method(method) {
        return Evaluation::Refused(error);
    }
    let mut outgoing = headers.clone();
    let provider = if connect {
        // A tunnel is decided on the headers of the CONNECT as sent, and carries no
        // credential (`tunnel::open`).
        None
    } else {
        let checked = headers::refuse_smuggling(headers, url)
            .and_then(|()| headers::requested_timeout(headers))
            .and_then(|_| headers::requested_provider(headers));
        match checked {
            Ok(provider) => provider,
            Err(error) => return Evaluation::Refused(error),
        }
    };
    if !connect {
        headers::sanitise_request(&mut outgoing);
    }
    let names = headers::names(&outgoing);
    let request = Request {
        method,
        url,
        connect,
        header_names: &names,
        credential: provider.as_deref(),
        quotas: &[],
    };
    let decision = gate.decide(&request).await;
    let refusal = if !decision.allow {
        Some(ProxyError::from_decision(&decision))
    } else {
        provider
            .as_deref()
            .and_then(|name| credentials::check_requested(gate.policy, name, url).err())
    };
    Evaluation::Decided {
        decision: Box::new(decision),
        refusal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::BoxFuture;
    use http::HeaderValue;
    use std::io;
    use std::net::IpAddr;
    use std::sync::Mutex;

    /// Answers every name with `answer` (or never, with `None`), and writes down each name.
    struct Fake {
        answer: Option<Vec<IpAddr>>,
        asked: Mutex<Vec<String>>,
    }

    impl Fake {
        fn new(answer: Option<&[&str]>) -> Fake {
            Fake {
                answer: answer.map(|a| a.iter().map(|ip| ip.parse().unwrap()).collect()),
                asked: Mutex::new(vec![]),
            }
        }

        fn asked(&self) -> Vec<String> {
            self.asked.lock().unwrap().clone()
        }
    }

    impl Resolver for Fake {
        fn lookup<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
            self.asked.lock().unwrap().push(name.to_owned());
            let answer = self.answer.clone();
            Box::pin(async move {
                match answer {
                    Some(addresses) => Ok(addresses),
                    None => std::future::pending().await,
                }
            })
        }
    }

    const POLICY: &str = "version: 1\nteam: t\nnetwork:\n  hosts:\n    pinned.test: 203.0.113.9\n  allow:\n    - host: api.test\n      allowed_ips: [203.0.113.0/24]\n      deny_rules: [{method: \"*\", path: \"/admin/**\"}]\n    - host: pinned.test\n      allowed_ips: [203.0.113.0/24]\nauth_providers:\n  - name: Tok\n    type: bearer\n    secret: {env: TOK}\n    scope: [https://api.test/ok]\n";

    fn policy() -> Policy {
        Policy::from_yaml("gate-test.yaml", POLICY).expect("test policy")
    }

    fn url(text: &str) -> NormalizedUrl {
        NormalizedUrl::parse(text).expect("test URL")
    }

    async fn decide(policy: &Policy, resolver: &Fake, method: &str, target: &str) -> Decision {
        let node = HostAddresses::none();
        let gate = Gate {
            policy,
            resolver,
            resolve_timeout: Duration::from_millis(20),
            node: &node,
        };
        let url = url(target);
        let request = Request {
            method,
            url: &url,
            connect: false,
            header_names: &[],
            credential: None,
            quotas: &[],
        };
        gate.decide(&request).await
    }

    #[tokio::test]
    async fn a_refused_name_is_never_looked_up_and_an_allowed_one_once() {
        let policy = policy();
        let resolver = Fake::new(Some(&["203.0.113.7", "203.0.113.7", "203.0.113.8"]));
        let refused = decide(&policy, &resolver, "GET", "https://evil.test/").await;
        assert_eq!(refused.reason, Reason::HostNotAllowed);
        let refused = decide(&policy, &resolver, "GET", "https://api.test/admin/x").await;
        assert_eq!(refused.reason, Reason::L7Denied);
        assert!(resolver.asked().is_empty(), "{:?}", resolver.asked());
        let allowed = decide(&policy, &resolver, "GET", "https://api.test/x").await;
        assert!(allowed.allow, "{}", allowed.message);
        // De-duplicated, in the resolver's order: the order they are dialed in.
        let addresses: Vec<String> = allowed.addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(addresses, ["203.0.113.7", "203.0.113.8"]);
        assert_eq!(resolver.asked(), ["api.test"]);
    }

    #[tokio::test]
    async fn pins_and_literals_need_no_resolver() {
        let policy = policy();
        let resolver = Fake::new(Some(&["198.51.100.1"]));
        let pinned = decide(&policy, &resolver, "GET", "https://pinned.test/").await;
        assert!(pinned.allow, "{}", pinned.message);
        assert_eq!(pinned.addresses, ["203.0.113.9".parse::<IpAddr>().unwrap()]);
        let literal = decide(&policy, &resolver, "GET", "http://127.0.0.1/").await;
        assert_eq!(literal.reason, Reason::HostNotAllowed);
        assert!(resolver.asked().is_empty(), "{:?}", resolver.asked());
    }

    #[tokio::test]
    async fn a_lookup_that_never_answers_is_cannot_resolve_after_the_timeout() {
        let policy = policy();
        let resolver = Fake::new(None);
        let decision = decide(&policy, &resolver, "GET", "https://api.test/x").await;
        assert!(!decision.allow);
        assert_eq!(decision.reason, Reason::CannotResolve);
        assert!(
            decision.message.contains("timed out"),
            "{}",
            decision.message
        );
        let empty = Fake::new(Some(&[]));
        let decision = decide(&policy, &empty, "GET", "https://api.test/x").await;
        assert_eq!(
            (decision.allow, decision.reason),
            (false, Reason::CannotResolve)
        );
    }

    async fn evaluate_with(target: &str, headers: &[(&str, &str)]) -> Evaluation {
        let policy = policy();
        let resolver = Fake::new(Some(&["203.0.113.7"]));
        let node = HostAddresses::none();
        let gate = Gate {
            policy: &policy,
            resolver: &resolver,
            resolve_timeout: Duration::from_secs(1),
            node: &node,
        };
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            map.append(name, HeaderValue::from_str(value).unwrap());
        }
        evaluate(&gate, "GET", &url(target), false, &map).await
    }

    /// `(reason, error code)` of an evaluation's refusal, `None` when it allows.
    fn refusal(evaluation: &Evaluation) -> Option<(String, &'static str)> {
        let refusal = match evaluation {
            Evaluation::Refused(refusal) => Some(refusal),
            Evaluation::Decided { refusal, .. } => refusal.as_ref(),
        };
        refusal.map(|r| (r.reason.clone(), r.code.as_str()))
    }

    #[tokio::test]
    async fn evaluate_checks_tollgate_auth_as_the_proxy_does() {
        /// (URL, headers, the refusal's reason and code).
        type Case<'a> = (
            &'a str,
            &'a [(&'a str, &'a str)],
            Option<(&'a str, &'a str)>,
        );
        let cases: [Case; 8] = [
            ("https://api.test/ok/x", &[], None),
            ("https://api.test/ok/x", &[("tollgate-auth", " tok ")], None),
            (
                "https://api.test/ok/x",
                &[("tollgate-auth", "Nope")],
                Some(("unknown_auth_provider", "auth_provider_error")),
            ),
            (
                "https://api.test/other",
                &[("tollgate-auth", "Tok")],
                Some(("credential_scope_denied", "credential_scope_denied")),
            ),
            (
                "https://api.test/ok/x",
                &[("tollgate-auth", "")],
                Some(("bad_auth_header", "auth_provider_error")),
            ),
            (
                "https://api.test/ok/x",
                &[("tollgate-auth", "Tok"), ("tollgate-auth", "Tok")],
                Some(("bad_auth_header", "auth_provider_error")),
            ),
            // The gate first: a refused destination is refused for its own reason.
            (
                "https://api.test/admin/x",
                &[("tollgate-auth", "Nope")],
                Some(("l7_denied", "policy_denied")),
            ),
            (
                "https://api.test/ok/x",
                &[("host", "other.test")],
                Some(("invalid_request", "invalid_request")),
            ),
        ];
        for (target, headers, want) in cases {
            let evaluation = evaluate_with(target, headers).await;
            let got = refusal(&evaluation);
            let want = want.map(|(reason, code)| (reason.to_owned(), code));
            assert_eq!(got, want, "{target} {headers:?}");
        }
    }
}
