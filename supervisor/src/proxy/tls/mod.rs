//! TLS interception for one execution: the execution's CA (which the sandbox trusts) and
//! the trust upstreams are verified against, built once when the execution starts.
//!
//! `tls: intercept` entries (the default) have their CONNECT tunnels terminated with a leaf
//! certificate from [`ExecutionCa`] (see `intercept`), so each HTTP request inside is
//! decided, counted, credentialed and audited like a forward-proxied one; the upstream leg
//! is a new TLS connection verified by [`UpstreamTrust`]. The sandbox trusts the CA through
//! the bundle from [`Interception::sandbox_bundle`], which `tollgate run` writes to the
//! execution's runtime directory and names in `SSL_CERT_FILE` and its relatives. That bundle
//! is made of certificates only, each re-encoded here from its DER: whatever else the files
//! it comes from hold (a private key beside a certificate, comments) cannot reach it.

pub mod ca;
pub(crate) mod upstream;
pub mod upstream_ca;

use base64::{engine::general_purpose::STANDARD, Engine as _};
use ca::{CaError, ExecutionCa};
use rustls_pki_types::CertificateDer;
use std::time::Duration;
use tollgate_policy::Policy;
pub(crate) use upstream::HandshakeError;
use upstream::{TrustError, UpstreamTrust};

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

    /// What the sandbox should trust, as PEM: the execution's CA, then the system roots and
    /// the team's `upstream_ca` (passthrough tunnels are verified by the sandbox itself).
    pub fn sandbox_bundle(&self) -> Vec<u8> {
        let roots = std::iter::once(self.ca.certificate_der()).chain(self.upstream.roots());
        pem_certificates(roots)
    }
}

/// `certificates` as PEM `CERTIFICATE` sections (RFC 7468: base64 in lines of 64).
fn pem_certificates<'a>(
    certificates: impl Iterator<Item = &'a CertificateDer<'static>>,
) -> Vec<u8> {
    let mut out = Vec::new();
    for certificate in certificates {
        out.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        for line in STANDARD.encode(certificate.as_ref()).as_bytes().chunks(64) {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        out.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn certificates_are_written_as_pem_that_reads_back() {
        let first = CertificateDer::from(vec![0x30; 100]);
        let second = CertificateDer::from(vec![7; 3]);
        let pem = pem_certificates([&first, &second].into_iter());
        let text = String::from_utf8(pem.clone()).expect("ASCII");
        assert!(text.lines().all(|line| line.len() <= 64), "{text}");
        let back: Vec<_> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .expect("PEM");
        assert_eq!(back, vec![first, second]);
    }
}
