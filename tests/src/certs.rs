//! Test certificate material, made with Debian's `openssl` CLI: a CA of the test's own and a
//! leaf it signs for the names the test's upstream answers to.
//!
//! The suites that run an HTTPS upstream trust it through `network.upstream_ca`, so each
//! needs a CA that tollgate will read (world-readable, root-owned) and a leaf valid for the
//! names the test pins. Real `openssl` output, not a hand-built certificate, so the proxy
//! parses what operators hand it.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use crate::openssl;

/// The P-256 key every certificate here gets (small and quick to make).
const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// A CA and a leaf signed by it, as files in one directory.
pub struct Certificates {
    /// The CA certificate (`ca.pem`, 0644: tollgate reads `upstream_ca` only if everyone may
    /// read it, and the sandbox may read it too).
    pub ca: PathBuf,
    /// The leaf certificate (`leaf.pem`).
    pub cert: PathBuf,
    /// The leaf's private key (`leaf.key`).
    pub key: PathBuf,
}

/// Makes a CA in `dir`: `ca.pem` (certificate, 0644) and `ca.key` (PKCS#8 key). Returns the
/// certificate's path.
pub fn make_ca(dir: &Path) -> PathBuf {
    let mut args = vec!["req", "-x509"];
    args.extend(EC_KEY);
    args.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=tollgate test upstream CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &args);
    let ca = dir.join("ca.pem");
    fs::set_permissions(&ca, fs::Permissions::from_mode(0o644)).expect("chmod ca.pem");
    ca
}

/// Makes a CA (see [`make_ca`]) and a server leaf it signs for `names` (the first is also the
/// subject's common name; entries may be wildcards such as `*.up.test`, or IP addresses), in
/// `dir`.
pub fn make_certificates(dir: &Path, names: &[&str]) -> Certificates {
    let first = names.first().expect("a leaf needs at least one name");
    let ca = make_ca(dir);
    let subject = format!("/CN={first}");
    let mut csr = vec!["req"];
    csr.extend(EC_KEY);
    csr.extend(["-keyout", "leaf.key", "-out", "leaf.csr", "-subj", &subject]);
    openssl(dir, &csr);
    // An IP address is an IP SAN (a client dialing `https://127.0.0.1` checks that), any
    // other name a DNS one.
    let sans: Vec<String> = names
        .iter()
        .map(|name| match name.parse::<std::net::IpAddr>() {
            Ok(_) => format!("IP:{name}"),
            Err(_) => format!("DNS:{name}"),
        })
        .collect();
    fs::write(
        dir.join("leaf.ext"),
        format!(
            "subjectAltName={}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
            sans.join(",")
        ),
    )
    .expect("write leaf.ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ],
    );
    Certificates {
        ca,
        cert: dir.join("leaf.pem"),
        key: dir.join("leaf.key"),
    }
}
