//! TLS interception for one execution: the execution's CA (which the sandbox trusts) and
//! the trust upstreams are verified against, built once when the execution starts.
//!
//! `tls: intercept` entries (the default) have their CONNECT tunnels terminated with a leaf
//! certificate from [`ExecutionCa`] (see `intercept`), so each HTTP request inside is
//! decided, counted, credentialed and audited like a forward-proxied one; the upstream leg
//! is a new TLS connection verified by [`UpstreamTrust`]. The sandbox trusts the CA through
//! the bundle from [`Interception::sandbox_bundle`], which `tollgate run` writes to the
//! execution's runtime directory and names in `SSL_CERT_FILE` and its relatives.

use super::ca::{CaError, ExecutionCa};
use super::upstream_tls::{TrustError, UpstreamTrust};
use std::time::Duration;
use tollgate_policy::Policy;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Trust(#[from] TrustError),
}

/// The execution's CA and upstream trust.
#[derive(Debug)]
pub struct Interception {
    ca: ExecutionCa,
    upstream: UpstreamTrust,
}

impl Interception {
    /// A CA for `policy`'s allow list, valid for `lifetime` (plus a margin), named after
    /// the execution `label`; upstream trust from the system bundle plus
    /// `network.upstream_ca`.
    pub fn for_policy(
        policy: &Policy,
        label: &str,
        lifetime: Duration,
    ) -> Result<Interception, TlsSetupError> {
        let network = policy.network.as_ref();
        let names = network.and_then(|n| n.certificate_subtrees());
        let ca = ExecutionCa::generate(label, lifetime, names.as_deref())?;
        let upstream = UpstreamTrust::load(network.and_then(|n| n.upstream_ca.as_deref()))?;
        Ok(Interception { ca, upstream })
    }

    pub fn ca(&self) -> &ExecutionCa {
        &self.ca
    }

    pub fn upstream(&self) -> &UpstreamTrust {
        &self.upstream
    }

    /// What the sandbox should trust: the execution's CA, then the system roots and the
    /// team's `upstream_ca` (passthrough tunnels are verified by the sandbox itself).
    pub fn sandbox_bundle(&self) -> Vec<u8> {
        let mut out = self.ca.certificate_pem().as_bytes().to_vec();
        if !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(&self.upstream.bundle_pem());
        out
    }
}
