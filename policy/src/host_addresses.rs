//! The node's own addresses: the set of addresses assigned to the worker's interfaces, which
//! the proxy never dials, whatever the policy says.
//!
//! The tables in [`crate::ip`] know every range that is *always* the local machine (loopback,
//! `0.0.0.0`, link-local), but not the addresses this particular node holds on its other
//! interfaces: the host side of a veth (`10.201.0.1`), a Docker bridge (`172.17.0.1`), the
//! node's own LAN or public address. Those fall in ranges a team may legitimately open
//! (`allowed_ips: [10.0.0.0/8]`, or `block_private_ips: false`), and dialing them from the
//! supervisor reaches services that listen on the host for the host alone, as root. So the
//! decision takes the node's addresses as data ([`crate::Policy::decide`]) and refuses them
//! with reason `host_address`.
//!
//! This module only holds the set: reading the interfaces and keeping the set current is the
//! supervisor's job (this crate opens no sockets).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::ip::embedded_ipv4;

/// Addresses assigned to the node's interfaces.
///
/// IPv4-mapped IPv6 addresses are stored as the IPv4 address they are, and an IPv6 address
/// that carries one of the node's IPv4 addresses ([`embedded_ipv4`]: mapped, compatible,
/// NAT64, 6to4, Teredo, ISATAP) counts as the node's, following the rule of [`crate::ip`]: an
/// address is at least as severe as what it carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostAddresses {
    v4: BTreeSet<Ipv4Addr>,
    v6: BTreeSet<Ipv6Addr>,
}

impl HostAddresses {
    /// No addresses: for callers that decide without a node (tests, benchmarks, embedders
    /// whose dialer is not on the node).
    pub fn none() -> Self {
        HostAddresses::default()
    }

    /// Adds `address` (an IPv4-mapped IPv6 address is added as its IPv4 address).
    pub fn insert(&mut self, address: IpAddr) {
        match address {
            IpAddr::V4(a) => {
                self.v4.insert(a);
            }
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(mapped) => {
                    self.v4.insert(mapped);
                }
                None => {
                    self.v6.insert(a);
                }
            },
        }
    }

    /// Whether dialing `address` reaches one of the node's own addresses.
    pub fn contains(&self, address: IpAddr) -> bool {
        match address {
            IpAddr::V4(a) => self.v4.contains(&a),
            IpAddr::V6(a) => {
                self.v6.contains(&a) || embedded_ipv4(a).iter().any(|v4| self.v4.contains(v4))
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Every address, IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.v4
            .iter()
            .map(|a| IpAddr::V4(*a))
            .chain(self.v6.iter().map(|a| IpAddr::V6(*a)))
    }
}

impl FromIterator<IpAddr> for HostAddresses {
    fn from_iter<I: IntoIterator<Item = IpAddr>>(addresses: I) -> Self {
        let mut set = HostAddresses::none();
        for address in addresses {
            set.insert(address);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_and_every_form_carrying_it_are_the_nodes() {
        let node: HostAddresses = [ip("10.201.0.1"), ip("2001:db8::7")].into_iter().collect();
        for own in [
            "10.201.0.1",
            "::ffff:10.201.0.1",
            "::ffff:0:10.201.0.1",
            "::10.201.0.1",
            "64:ff9b::10.201.0.1",
            "2002:0ac9:0001::",
            "fe80::5efe:10.201.0.1",
            "2001:db8::7",
        ] {
            assert!(node.contains(ip(own)), "{own} is the node's");
        }
        for other in [
            "10.201.0.2",
            "::ffff:10.201.0.2",
            "2001:db8::8",
            "127.0.0.1",
        ] {
            assert!(!node.contains(ip(other)), "{other} is not the node's");
        }
    }

    #[test]
    fn a_mapped_address_is_stored_as_ipv4() {
        let node: HostAddresses = [ip("::ffff:192.0.2.2")].into_iter().collect();
        assert!(node.contains(ip("192.0.2.2")));
        assert_eq!(node.iter().collect::<Vec<_>>(), vec![ip("192.0.2.2")]);
        assert!(HostAddresses::none().is_empty());
    }
}
