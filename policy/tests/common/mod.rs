//! The decision every test of this crate makes, by both verdicts: the native one the proxy
//! runs and the built-in Rego module it implements (`Policy::decide_by_rego`). Every decision
//! a test asserts on is thereby also a case of the differential test: the two must agree on
//! everything, `allow`, `reason`, `rule`, `address` and the message included.

use tollgate_policy::{Decision, Destination, HostAddresses, Policy, Request};

/// [`Policy::decide`], after checking that the Rego specification decides the same.
#[track_caller]
pub fn decide(
    policy: &Policy,
    request: &Request,
    destination: &Destination,
    node: &HostAddresses,
) -> Decision {
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
