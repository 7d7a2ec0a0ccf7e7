//! The built-in verdict in Rust: `rego/tollgate.rego`'s `decision`, for every input.
//!
//! Every request is decided twice by the proxy, and running the built-in module on regorus's
//! VM cost more than everything else in a decision put together (building its input document
//! and setting up the VM: docs/benchmarks.md, "Policy decision"). So the verdict runs here,
//! and the Rego module stays in the crate as its specification: [`crate::Policy::decide_by_rego`]
//! evaluates it on the same [`Grounds`], and the differential test
//! (policy/tests/differential.rs, and every decision the crate's other tests make) requires
//! the two to agree on `allow`, `reason`, `rule` and `address`.
//!
//! The shape follows the module's: the allow is one conjunction of positive checks, and when
//! it does not hold, the first refusal of the chain, in the module's order, names the reason;
//! if none does, the refusal is `policy_error`. Nothing here can allow what a check refuses.

use crate::decision::{refusal, Destination, Match, Reason};
use crate::ip::AddressClass;
use crate::model::NearMiss;
use crate::schema::Access;
use crate::{Decision, Policy};
use std::net::IpAddr;

/// The module's `read_only_methods`.
const READ_ONLY_METHODS: [&str; 3] = ["GET", "HEAD", "OPTIONS"];
/// The module's `read_write_methods`: read-only plus these.
const WRITE_METHODS: [&str; 3] = ["POST", "PUT", "PATCH"];

/// The facts a verdict is reached from: the request's method and kind, the allow entry it
/// matched, and the destination's addresses classified (each slice one item per address).
/// The Rego input document (`input.request`, `input.match`, `input.destination`) is built
/// from exactly these, so both verdicts see the same thing.
pub(crate) struct Grounds<'a> {
    pub method: &'a str,
    pub connect: bool,
    pub matched: &'a Match<'a>,
    pub destination: &'a Destination,
    pub addresses: &'a [IpAddr],
    pub classes: &'a [AddressClass],
    /// The address is covered by the matched entry's `allowed_ips`.
    pub covered: &'a [bool],
    /// The address is one of the node's own (and not already in the always-blocked tables).
    pub node_owned: &'a [bool],
}

impl Grounds<'_> {
    /// `input.destination.first_blocked`.
    pub fn first_blocked(&self) -> Option<usize> {
        self.classes
            .iter()
            .position(|c| *c == AddressClass::AlwaysBlocked)
    }

    /// `input.destination.first_uncovered_internal`.
    pub fn first_uncovered_internal(&self) -> Option<usize> {
        self.classes
            .iter()
            .zip(self.covered)
            .position(|(c, covered)| *c == AddressClass::Internal && !covered)
    }
}

/// The verdict on `grounds` under `policy`: `allow`, `reason`, `rule` and `address` set, the
/// message left for [`crate::decision`] to write.
pub(crate) fn verdict(policy: &Policy, grounds: &Grounds) -> Decision {
    let matched = grounds.matched;
    let network = policy.network.as_ref();
    let allow_all = network.is_some_and(|n| n.allow_all);
    let block_private_ips = network.is_none_or(|n| n.block_private_ips);
    // `index` and `entry` are set together ([`crate::Policy::match_request`]).
    let entry = matched.entry;
    let rule = || entry.map(|e| e.rule.clone());
    // `allow_all` admits a host no entry lists, and then skips the entry's checks.
    let unlisted_under_allow_all = entry.is_none() && allow_all;

    let destination_listed = entry.is_some() || allow_all;
    let method_ok = grounds.connect
        || unlisted_under_allow_all
        || entry.is_some_and(|e| access_admits(e.access, grounds.method));
    let l7_ok = grounds.connect
        || unlisted_under_allow_all
        || entry.is_some_and(|e| {
            matched.l7_deny.is_none() && (e.rules.is_empty() || matched.l7_allow.is_some())
        });
    let hazards = matched.refused_hazards;
    let resolved = matches!(grounds.destination, Destination::Resolved(_));
    let first_blocked = grounds.first_blocked();
    let first_uncovered_internal = grounds.first_uncovered_internal();
    let private_addresses_ok = !block_private_ips || first_uncovered_internal.is_none();

    let allow = network.is_some()
        && destination_listed
        && method_ok
        && !hazards.encoded_slash
        && !hazards.path_parameter
        && !hazards.encoded_percent
        && !hazards.trailing_dot
        && l7_ok
        && resolved
        && !grounds.addresses.is_empty()
        && first_blocked.is_none()
        && private_addresses_ok;

    let refuse = |reason: Reason, rule: Option<String>| {
        let mut decision = refusal(reason, String::new());
        decision.rule = rule;
        decision
    };
    let refuse_address = |reason: Reason, index: usize| {
        let mut decision = refuse(reason, rule());
        decision.address = grounds.addresses.get(index).copied();
        decision
    };
    if allow {
        let mut decision = refuse(
            Reason::Allowed,
            Some(rule().unwrap_or_else(|| "network.allow_all".to_owned())),
        );
        decision.allow = true;
        decision
    } else if network.is_none() {
        refuse(Reason::NetworkDisabled, None)
    } else if !destination_listed {
        match matched.near_miss {
            None => refuse(Reason::HostNotAllowed, None),
            Some((miss, near)) => refuse(near_miss_reason(miss), Some(near.rule.clone())),
        }
    } else if !method_ok {
        refuse(Reason::MethodNotAllowed, rule())
    } else if hazards.encoded_slash {
        refuse(Reason::EncodedSlash, rule())
    } else if hazards.path_parameter {
        refuse(Reason::PathParameter, rule())
    } else if hazards.encoded_percent {
        refuse(Reason::EncodedPercent, rule())
    } else if hazards.trailing_dot {
        refuse(Reason::TrailingDot, rule())
    } else if let Some(deny) = &matched.l7_deny {
        refuse(Reason::L7Denied, Some(deny.clone()))
    } else if !l7_ok {
        refuse(Reason::L7NotMatched, rule())
    } else if !resolved {
        // The caller decides before resolving, so refused names are never looked up.
        refuse(Reason::NotResolved, rule())
    } else if grounds.addresses.is_empty() {
        refuse(Reason::CannotResolve, rule())
    } else if let Some(blocked) = first_blocked {
        // The node's own addresses are not in the always-blocked tables: named apart.
        if grounds.node_owned.get(blocked) == Some(&true) {
            refuse_address(Reason::HostAddress, blocked)
        } else {
            refuse_address(Reason::AddressBlocked, blocked)
        }
    } else if let Some(uncovered) = first_uncovered_internal.filter(|_| !private_addresses_ok) {
        refuse_address(Reason::PrivateAddress, uncovered)
    } else {
        refuse(Reason::PolicyError, None)
    }
}

/// Whether an entry's `access` admits `method` (already checked to be upper case).
fn access_admits(access: Access, method: &str) -> bool {
    match access {
        Access::Full => true,
        Access::ReadWrite => READ_ONLY_METHODS.contains(&method) || WRITE_METHODS.contains(&method),
        Access::ReadOnly => READ_ONLY_METHODS.contains(&method),
    }
}

/// The module's `sprintf("%s_not_allowed", [input.match.near_miss])`.
fn near_miss_reason(miss: NearMiss) -> Reason {
    match miss {
        NearMiss::Scheme => Reason::SchemeNotAllowed,
        NearMiss::Port => Reason::PortNotAllowed,
        NearMiss::Path => Reason::PathNotAllowed,
    }
}
