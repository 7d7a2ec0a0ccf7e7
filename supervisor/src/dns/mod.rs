//! The sandbox's stub resolver: DNS answers made up from the policy, never forwarded.
//!
//! Clients that ignore the proxy settings (Node before 22, aiohttp, Go with its own
//! transport) look a name up and connect to the address. Inside the sandbox's network
//! namespace, this resolver (on `127.0.0.1:53`, UDP and TCP, named by the sandbox's
//! `/etc/resolv.conf`) answers a name the policy could allow with a *synthetic* address
//! from `127.77.0.0/16`, one per name for the execution ([`SyntheticNames`]); every other
//! name gets NXDOMAIN. The addresses are loopback, so the eBPF and nftables walls, which
//! admit only loopback, stay as they are; an nftables rule redirects TCP to them to the
//! proxy's transparent listener, which maps the address back to the name and sends the
//! connection through the same pipeline as a proxied request.
//!
//! Nothing is forwarded: the resolver has no upstream, so a query carries nothing off the
//! machine, whatever its labels or type hold. A name leaves the machine only when the proxy
//! itself resolves it to dial a request the policy allowed.
//!
//! [`answer`] is the pure function from a query to a response; [`server`] runs it on the
//! sockets and counts ([`DnsStats`]); [`names`] is the table of synthetic addresses.

pub mod answer;
pub mod names;
pub mod server;

pub use names::SyntheticNames;
pub use server::{DnsStats, StubResolver};
