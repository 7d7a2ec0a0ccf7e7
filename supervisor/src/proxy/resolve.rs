//! Resolving a destination once: IP literals as they are, `network.hosts` pins next, then a
//! [`Resolver`] (system DNS by default) under a timeout.
//!
//! The gate asks exactly once per request and hands every answer to the policy; the
//! addresses that pass are the only ones ever dialed, so a resolver that changes its answer
//! (DNS rebinding) cannot move a connection to an address that was not checked.

use super::BoxFuture;
use std::io;
use std::net::IpAddr;
use std::time::Duration;
use tollgate_policy::url::UrlHost;
use tollgate_policy::Policy;

/// Looks up a domain name. Implementations are asked only for names the policy already
/// allows; pins and IP literals never reach them.
pub trait Resolver: Send + Sync + 'static {
    /// Every address `name` resolves to; an empty list or an error means it does not resolve.
    fn lookup<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>>;
}

/// The system resolver (`getaddrinfo` on tokio's blocking pool).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn lookup<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            let found = tokio::net::lookup_host((name, 0)).await?;
            Ok(found.map(|a| a.ip()).collect())
        })
    }
}

/// The outcome of resolving a destination.
pub(crate) struct Resolution {
    pub addresses: Vec<IpAddr>,
    /// Why the list is empty, for the error message (`timed out after 2s`, the OS error).
    pub failure: Option<String>,
}

/// Resolves `host`: literal, pin, or one lookup under `timeout`. Answers are de-duplicated
/// but keep the resolver's order, which is the order they are dialed in.
pub(crate) async fn resolve(
    policy: &Policy,
    resolver: &dyn Resolver,
    host: &UrlHost,
    timeout: Duration,
) -> Resolution {
    let name = match host {
        UrlHost::Ip(ip) => return known(*ip),
        UrlHost::Domain(name) => name,
    };
    if let Some(pinned) = policy.pinned_address(host) {
        return known(pinned);
    }
    match tokio::time::timeout(timeout, resolver.lookup(name)).await {
        Ok(Ok(found)) => {
            let mut addresses: Vec<IpAddr> = Vec::with_capacity(found.len());
            for address in found {
                if !addresses.contains(&address) {
                    addresses.push(address);
                }
            }
            Resolution {
                addresses,
                failure: None,
            }
        }
        Ok(Err(error)) => Resolution {
            addresses: vec![],
            failure: Some(error.to_string()),
        },
        Err(_) => Resolution {
            addresses: vec![],
            failure: Some(format!("the lookup timed out after {timeout:?}")),
        },
    }
}

/// The address is known without DNS: an IP literal or a pin.
pub(crate) fn known_without_dns(policy: &Policy, host: &UrlHost) -> Option<IpAddr> {
    match host {
        UrlHost::Ip(ip) => Some(*ip),
        UrlHost::Domain(_) => policy.pinned_address(host),
    }
}

fn known(ip: IpAddr) -> Resolution {
    Resolution {
        addresses: vec![ip],
        failure: None,
    }
}
