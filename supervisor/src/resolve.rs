//! `policy eval`'s resolver: `--resolve HOST=IP` answers for HOST, the system resolver for
//! every other name.
//!
//! It stands where DNS stands in the proxy, behind the gate ([`crate::proxy::Gate`]): the
//! policy's `network.hosts` pins and IP literals are answered before any resolver is asked,
//! exactly as in the proxy, and the gate bounds the lookup with the proxy's resolve timeout.

use crate::proxy::{BoxFuture, Resolver, SystemResolver};
use std::io;
use std::net::IpAddr;

/// `--resolve` answers first, then the system resolver.
#[derive(Debug, Clone, Default)]
pub struct EvalResolver {
    /// `(host, address)`, host lower case without a trailing dot; a host may repeat.
    overrides: Vec<(String, IpAddr)>,
}

impl EvalResolver {
    pub fn new(overrides: Vec<(String, IpAddr)>) -> EvalResolver {
        EvalResolver { overrides }
    }

    /// Every address `--resolve` gives `name`, in the order given.
    fn overridden(&self, name: &str) -> Vec<IpAddr> {
        self.overrides
            .iter()
            .filter(|(host, _)| host == name)
            .map(|(_, ip)| *ip)
            .collect()
    }
}

impl Resolver for EvalResolver {
    fn lookup<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        let overridden = self.overridden(name);
        if overridden.is_empty() {
            SystemResolver.lookup(name)
        } else {
            Box::pin(async move { Ok(overridden) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overrides_answer_for_their_host_only() {
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let resolver = EvalResolver::new(vec![
            ("api.test".into(), a),
            ("other.test".into(), a),
            ("api.test".into(), b),
        ]);
        assert_eq!(resolver.lookup("api.test").await.unwrap(), vec![a, b]);
        assert_eq!(resolver.overridden("other.test"), vec![a]);
        assert!(resolver.overridden("api.test.other").is_empty());
    }
}
