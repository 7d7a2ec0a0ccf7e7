//! Name resolution for decisions: static pins first, then the system resolver.
//!
//! Every address a name resolves to is returned, so the policy can refuse a name that mixes
//! public and private answers, and the caller dials only what was decided on.

use std::net::{IpAddr, ToSocketAddrs};
use tollgate_policy::url::UrlHost;
use tollgate_policy::Policy;

/// Addresses for `policy eval`: `--resolve` overrides, then `network.hosts` pins, then the
/// system resolver. An empty list means the name does not resolve.
pub fn resolve_for_eval(
    policy: &Policy,
    host: &UrlHost,
    overrides: &[(String, IpAddr)],
) -> Vec<IpAddr> {
    let name = match host {
        UrlHost::Ip(ip) => return vec![*ip],
        UrlHost::Domain(name) => name,
    };
    let overridden: Vec<IpAddr> = overrides
        .iter()
        .filter(|(h, _)| h == name)
        .map(|(_, ip)| *ip)
        .collect();
    if !overridden.is_empty() {
        return overridden;
    }
    if let Some(pinned) = policy.pinned_address(host) {
        return vec![pinned];
    }
    system_lookup(name)
}

fn system_lookup(name: &str) -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = match (name, 0u16).to_socket_addrs() {
        Ok(found) => found.map(|a| a.ip()).collect(),
        Err(_) => vec![],
    };
    addresses.sort();
    addresses.dedup();
    addresses
}
