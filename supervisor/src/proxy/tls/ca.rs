//! The execution's certificate authority: an ECDSA P-256 CA made when the execution starts,
//! trusted only inside its sandbox, that signs a leaf certificate for each host the sandbox
//! opens an intercepted tunnel to.
//!
//! Why per execution: a CA that leaked would be worthless after the run; its private key
//! exists only in this process's memory (never written anywhere) and dies with it. The CA
//! is valid for the execution's lifetime plus a small margin, and carries X.509 name
//! constraints limiting it to the names the team's allow list can reach (none with
//! `allow_all`), so even during the run it cannot vouch for anything else. Leaf
//! certificates share one key pair made with the CA, so minting one is a single signature;
//! each is cached for the rest of the execution.

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::crypto::CryptoProvider;
use rustls::server::ServerConfig;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tollgate_policy::url::UrlHost;

/// Clock margin on both ends of every certificate's validity.
const MARGIN: Duration = Duration::from_secs(5 * 60);
/// Hosts with a cached leaf; beyond this the cache starts over (an `allow_all` execution
/// opening tunnels to thousands of names should not grow without bound).
const MAX_CACHED: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot generate the execution's certificate authority: {0}")]
    Generate(String),
    #[error("cannot mint a certificate for {host}: {reason}")]
    Mint { host: String, reason: String },
}

/// One execution's CA and its leaf cache.
pub struct ExecutionCa {
    issuer: Issuer<'static, KeyPair>,
    certificate: CertificateDer<'static>,
    pem: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    leaf_key: KeyPair,
    leaf_signer: Arc<dyn rustls::sign::SigningKey>,
    provider: Arc<CryptoProvider>,
    leaves: Mutex<HashMap<UrlHost, Arc<ServerConfig>>>,
    minted: AtomicU64,
}

impl std::fmt::Debug for ExecutionCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutionCa")
            .field("not_after", &self.not_after)
            .field("minted", &self.minted.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ExecutionCa {
    /// A fresh CA valid for `lifetime` (plus the margin), named after `label` (the execution
    /// id), constrained to `names` (`None`: unconstrained, for `allow_all`).
    pub fn generate(
        label: &str,
        lifetime: Duration,
        names: Option<&[UrlHost]>,
    ) -> Result<ExecutionCa, CaError> {
        let failed = |e: rcgen::Error| CaError::Generate(e.to_string());
        let now = OffsetDateTime::now_utc();
        let not_before = now - MARGIN;
        let not_after = now + lifetime.min(Duration::from_secs(366 * 86_400)) + MARGIN;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(failed)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "tollgate");
        params.distinguished_name.push(
            DnType::CommonName,
            format!("tollgate execution {}", short(label)),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(serial()?);
        params.name_constraints = names.map(constraints);
        let certificate = params.self_signed(&key).map_err(failed)?;
        let pem = certificate.pem();
        let certificate = certificate.der().clone();
        let issuer = Issuer::new(params, key);
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(failed)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let leaf_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let leaf_signer = provider
            .key_provider
            .load_private_key(leaf_der)
            .map_err(|e| CaError::Generate(e.to_string()))?;
        Ok(ExecutionCa {
            issuer,
            certificate,
            pem,
            not_before,
            not_after,
            leaf_key,
            leaf_signer,
            provider,
            leaves: Mutex::new(HashMap::new()),
            minted: AtomicU64::new(0),
        })
    }

    /// The CA certificate (PEM), for the sandbox's trust bundle.
    pub fn certificate_pem(&self) -> &str {
        &self.pem
    }

    /// The CA certificate (DER).
    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// Leaf certificates minted so far (the cache hit rate is `1 - minted/tunnels`).
    pub fn minted(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }

    /// The TLS server configuration presenting a certificate for `host`, minted on first use
    /// and cached for the execution. ALPN offers `h2` and `http/1.1`.
    pub fn server_config(&self, host: &UrlHost) -> Result<Arc<ServerConfig>, CaError> {
        if let Some(found) = self.lock().get(host) {
            return Ok(found.clone());
        }
        let config = Arc::new(self.mint(host)?);
        let mut leaves = self.lock();
        if leaves.len() >= MAX_CACHED {
            leaves.clear();
        }
        Ok(leaves.entry(host.clone()).or_insert(config).clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UrlHost, Arc<ServerConfig>>> {
        self.leaves.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mints the leaf for `host` and its server configuration (uncached).
    pub fn mint(&self, host: &UrlHost) -> Result<ServerConfig, CaError> {
        let failed = |reason: String| CaError::Mint {
            host: host.to_string(),
            reason,
        };
        let leaf = self.leaf_certificate(host)?;
        let certified = CertifiedKey::new(vec![leaf], self.leaf_signer.clone());
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| failed(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        // HTTP/2 first, as browsers and gRPC ask for it; a client that offers neither (or
        // no ALPN at all) gets HTTP/1.1, as it did before HTTP/2 was served (`intercept`
        // dispatches on what was negotiated).
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        self.minted.fetch_add(1, Ordering::Relaxed);
        Ok(config)
    }

    /// A leaf certificate for `host` (DNS name or IP address SAN, server auth only),
    /// valid as long as the CA.
    pub fn leaf_certificate(&self, host: &UrlHost) -> Result<CertificateDer<'static>, CaError> {
        let failed = |reason: String| CaError::Mint {
            host: host.to_string(),
            reason,
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, host.host_str());
        params.subject_alt_names = vec![match host {
            UrlHost::Ip(ip) => SanType::IpAddress(*ip),
            UrlHost::Domain(name) => SanType::DnsName(
                name.clone()
                    .try_into()
                    .map_err(|e: rcgen::Error| failed(e.to_string()))?,
            ),
        }];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        params.serial_number = Some(serial().map_err(|e| failed(e.to_string()))?);
        let leaf = params
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(|e| failed(e.to_string()))?;
        Ok(leaf.der().clone())
    }
}

/// At most 40 characters of the execution id, to tell CAs apart in a certificate viewer.
fn short(label: &str) -> String {
    label.chars().take(40).collect()
}

/// A random positive 128-bit serial (RFC 5280 §4.1.2.2).
fn serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| CaError::Generate(e.to_string()))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Permitted subtrees for the allow list's names; when it names no IP address, every IP
/// address is excluded (a dNSName-only constraint leaves IP SANs unconstrained).
fn constraints(names: &[UrlHost]) -> NameConstraints {
    let mut permitted = Vec::new();
    let mut has_ip = false;
    for name in names {
        match name {
            UrlHost::Domain(domain) => permitted.push(GeneralSubtree::DnsName(domain.clone())),
            UrlHost::Ip(ip) => {
                has_ip = true;
                let prefix = if ip.is_ipv4() { 32 } else { 128 };
                permitted.push(GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                    *ip, prefix,
                )));
            }
        }
    }
    let excluded = if has_ip {
        vec![]
    } else {
        vec![
            GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                0,
            )),
            GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                0,
            )),
        ]
    };
    NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: excluded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    use rustls::RootCertStore;

    fn verifies(ca: &ExecutionCa, host: &str) -> Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.certificate_der().clone()).expect("root");
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier");
        let parsed = UrlHost::parse(host).expect("host");
        let leaf = ca.leaf_certificate(&parsed).expect("leaf");
        let name = ServerName::try_from(host.to_owned()).expect("name");
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    fn domain(name: &str) -> UrlHost {
        UrlHost::Domain(name.to_owned())
    }

    #[test]
    fn leaves_verify_for_allowed_names_and_the_constraints_refuse_the_rest() {
        let names = [domain("api.test"), domain("example.org")];
        let ca =
            ExecutionCa::generate("exec-1", Duration::from_secs(60), Some(&names)).expect("ca");
        verifies(&ca, "api.test").expect("allowed exact name");
        verifies(&ca, "deep.sub.example.org").expect("a subdomain of a wildcard suffix");
        let refused = verifies(&ca, "evil.test").expect_err("outside the constraints");
        assert!(
            format!("{refused:?}").contains("NameConstraint"),
            "{refused:?}"
        );
        assert!(
            verifies(&ca, "10.0.0.1").is_err(),
            "no IP entry: every IP excluded"
        );
        let with_ip = [
            domain("api.test"),
            UrlHost::Ip("10.1.2.3".parse().expect("ip")),
        ];
        let ca =
            ExecutionCa::generate("exec-2", Duration::from_secs(60), Some(&with_ip)).expect("ca");
        verifies(&ca, "10.1.2.3").expect("listed IP");
        assert!(verifies(&ca, "10.1.2.4").is_err());
        let open = ExecutionCa::generate("exec-3", Duration::from_secs(60), None).expect("ca");
        verifies(&open, "anything.example.net").expect("allow_all: unconstrained");
    }

    #[test]
    fn leaves_are_minted_once_per_host() {
        let ca = ExecutionCa::generate("exec-4", Duration::from_secs(60), None).expect("ca");
        let a = ca.server_config(&domain("a.test")).expect("a");
        let again = ca.server_config(&domain("a.test")).expect("a again");
        assert!(Arc::ptr_eq(&a, &again));
        ca.server_config(&domain("b.test")).expect("b");
        assert_eq!(ca.minted(), 2);
    }
}
