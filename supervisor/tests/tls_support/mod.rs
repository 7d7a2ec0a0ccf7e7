//! Shared pieces of the TLS and credential tests: a test CA of the upstream's own (trusted
//! by the proxy through `network.upstream_ca`), loopback HTTPS upstreams that echo what they
//! receive, the proxy with its execution CA written where clients can read it, and clients
//! (`/usr/bin/curl`, `/usr/bin/python3`) that trust only that CA.
//!
//! Upstreams listen on 127.0.0.1 behind a `RemapTransport`: the policy decides on pinned
//! documentation addresses. No test sends a packet off the host.
#![allow(dead_code)]

pub use crate::proxy_support::policy;
use crate::proxy_support::{build, listen, serve, Harness, Seen, Upstream};
use bytes::Bytes;
use http::Response;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tollgate::proxy::body::{self, ProxyBody};
use tollgate::proxy::testing::RemapTransport;
use tollgate::proxy::ProxyBuilder;
use tollgate_policy::Policy;

/// `api.test` and `other.test` are pinned to these; the remap sends both to upstreams.
pub const API_IP: &str = "198.51.100.10";
pub const OTHER_IP: &str = "198.51.100.11";

/// A scratch directory removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(tag: &str) -> Dir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tollgate-tls-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    pub fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, data).unwrap();
        path
    }

    /// A secret file as tollgate wants it: 0600, root's.
    pub fn secret(&self, name: &str, value: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.file(name, format!("{value}\n").as_bytes());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The upstreams' own CA (an "internal CA" the team trusts through `upstream_ca`).
pub struct TestCa {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server configuration presenting a leaf for `names`, signed by this CA.
    pub fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(cert.der().to_vec())], key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A loopback HTTPS upstream: the plain upstream's record (what it received, connections
/// accepted) behind a TLS acceptor.
pub type TlsUpstream = Upstream;

/// An HTTPS upstream presenting `config`, answering with `handler(request, n)`.
pub async fn tls_upstream(
    config: Arc<rustls::ServerConfig>,
    handler: impl Fn(&Seen, usize) -> Response<ProxyBody> + Send + Sync + 'static,
) -> TlsUpstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    serve(
        listener,
        move |stream| {
            let accept = acceptor.accept(stream);
            async move { accept.await.ok() }
        },
        move |seen, n| {
            let response = handler(&seen, n);
            async move { response }
        },
    )
}

/// The request as JSON: `{"method", "uri", "headers": [[name, value]...], "body"}`.
pub fn echo(seen: &Seen, _: usize) -> Response<ProxyBody> {
    let headers: Vec<(String, String)> = seen
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let json = serde_json::json!({
        "method": seen.method,
        "uri": seen.uri,
        "headers": headers,
        "body": String::from_utf8_lossy(&seen.body),
    });
    let mut response = Response::new(body::full(Bytes::from(json.to_string())));
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

/// The values of header `name` the upstream received.
pub fn values(seen: &Seen, name: &str) -> Vec<String> {
    seen.headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// The network section every test shares: `api.test` and `other.test` pinned, the test CA
/// trusted; `allow` is the list body (indented entries), `extra` top-level sections.
pub fn tls_policy(ca_file: &Path, allow: &str, extra: &str) -> Arc<Policy> {
    policy(&format!(
        "version: 1
team: acme
network:
  hosts:
    api.test: {API_IP}
    other.test: {OTHER_IP}
  upstream_ca: {{file: {}}}
  allow:
{allow}
limits:
  max_requests: 1000
retry:
  attempts: 3
  initial_wait: 10ms
  max_wait: 50ms
{extra}",
        ca_file.display()
    ))
}

/// An allow entry for `host` on 443 reaching the pinned documentation range.
pub fn entry(host: &str, more: &str) -> String {
    format!("    - host: {host}\n      ports: [443]\n      allowed_ips: [198.51.100.0/24]\n{more}")
}

/// A transport sending `api.test`'s address to `api` and `other.test`'s to `other`.
pub fn remap(api: SocketAddr, other: Option<SocketAddr>) -> RemapTransport {
    let mut map: Vec<(IpAddr, SocketAddr)> = vec![(API_IP.parse().unwrap(), api)];
    if let Some(other) = other {
        map.push((OTHER_IP.parse().unwrap(), other));
    }
    RemapTransport::new(map)
}

/// A started proxy and the file holding its execution CA (what `SSL_CERT_FILE` names).
pub struct Intercepting {
    pub harness: Harness,
    pub ca_file: PathBuf,
    _dir: Dir,
}

impl std::ops::Deref for Intercepting {
    type Target = Harness;
    fn deref(&self) -> &Harness {
        &self.harness
    }
}

pub fn start(builder: ProxyBuilder) -> Intercepting {
    let (proxy, audit) = build(builder);
    let dir = Dir::new("ca");
    let ca_file = dir.file(
        "execution-ca.pem",
        proxy.ca_certificate_pem().expect("interception").as_bytes(),
    );
    Intercepting {
        harness: listen(proxy, audit),
        ca_file,
        _dir: dir,
    }
}

/// What a client run saw.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// `/usr/bin/curl -sS -x PROXY --cacert CA` plus `args`; `-w` prints the status last.
pub async fn curl(proxy: &Intercepting, args: &[&str]) -> Ran {
    let mut all: Vec<String> = vec![
        "-sS".into(),
        "-x".into(),
        proxy.url(),
        "--cacert".into(),
        proxy.ca_file.display().to_string(),
    ];
    all.extend(args.iter().map(|s| s.to_string()));
    run("/usr/bin/curl", all, vec![]).await
}

/// `/usr/bin/python3 -c script` with the proxy and CA in its environment, the helper's
/// directory on `PYTHONPATH`.
pub async fn python(proxy: &Intercepting, script: &str, env: &[(&str, &str)]) -> Ran {
    let url = proxy.url();
    let ca = proxy.ca_file.display().to_string();
    let helper = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../clients/python")
        .display()
        .to_string();
    let mut vars: Vec<(String, String)> = vec![
        ("HTTP_PROXY".into(), url.clone()),
        ("HTTPS_PROXY".into(), url),
        ("SSL_CERT_FILE".into(), ca),
        ("PYTHONPATH".into(), helper),
    ];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    run("/usr/bin/python3", vec!["-c".into(), script.into()], vars).await
}

async fn run(program: &str, args: Vec<String>, env: Vec<(String, String)>) -> Ran {
    let program = program.to_owned();
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(program)
            .env_clear()
            .envs(env)
            .args(args)
            .output()
            .unwrap();
        Ran {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}
