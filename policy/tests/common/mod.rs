//! The decision every test of this crate makes, by both verdicts: the native one the proxy
//! runs and the built-in Rego module it implements (`Policy::decide_by_rego`). Every decision
//! a test asserts on is thereby also a case of the differential test: the two must agree on
//! everything, `allow`, `reason`, `rule`, `address` and the message included. And the match
//! found through the host index must be the one a walk over every entry finds.

use tollgate_policy::decision::Match;
use tollgate_policy::{Decision, Destination, HostAddresses, Policy, Request};

/// What a match decides with: the entry, the first near miss, the L7 rules, the hazards.
fn found(m: &Match) -> impl PartialEq + std::fmt::Debug {
    (
        m.index,
        m.near_miss.map(|(miss, entry)| (miss, entry.rule.clone())),
        m.l7_allow.clone(),
        m.l7_deny.clone(),
        m.refused_hazards,
    )
}

/// [`Policy::decide`], after checking that the Rego specification decides the same.
#[track_caller]
pub fn decide(
    policy: &Policy,
    request: &Request,
    destination: &Destination,
    node: &HostAddresses,
) -> Decision {
    assert_eq!(
        found(&policy.match_request(request)),
        found(&policy.match_request_linear(request)),
        "the host index finds another match for {} {}",
        request.method,
        request.url.host_str(),
    );
    let native = policy.decide(request, destination, node);
    let specified = policy.decide_by_rego(request, destination, node);
    assert_eq!(
        native,
        specified,
        "the native verdict differs from tollgate.rego's on {} {}://{}:{}{} to {destination:?}",
        request.method,
        request.url.scheme,
        request.url.host_str(),
        request.url.port,
        request.url.path,
    );
    native
}
