//! `tollgate run --rootfs DIR` (and `filesystem.rootfs`) on the roots `images/sandbox/build.sh`
//! builds from Debian packages: the command sees the image as `/`, not the host.
//!
//! In the `python` image, the image's own `/usr/bin/python3` makes real HTTPS requests (urllib
//! and the `tollgate_http` helper) through the proxy to an HTTPS upstream in a network
//! namespace the test builds, trusting the execution's CA from the runtime directory. In the
//! `minimal` image there is no Python at all (127), `/` holds exactly the image's top-level
//! entries, and a marker file the test puts in the host's `/opt` is nowhere.
//!
//! The images are built once per machine and cached (`tollgate_tests::images`). Needs root.
//! No packet goes anywhere but loopback and the veth pair of the upstream (10.201.0.0/16).

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use serde_json::Value;
use tollgate_tests::{
    images,
    leaks::SuiteLock,
    repo_root,
    sandbox::{read_json, Finished, Sandbox, OFFLINE_POLICY},
    upstream::UpstreamHost,
    Scratch,
};

const SERVER_PY: &str = include_str!("tls_e2e_server.py");
const HTTPS_PORT: u16 = 443;
const API: &str = "api.example.com";

// ---------------------------------------------------------------------------------------
// An HTTPS upstream with a test CA of its own
// ---------------------------------------------------------------------------------------

/// Runs `openssl` in `dir` with `args`, split at spaces (no argument here has one).
/// `openssl` with its arguments written as one line.
fn openssl(dir: &Path, args: &str) {
    tollgate_tests::openssl(dir, &args.split(' ').collect::<Vec<_>>());
}

/// A CA (`ca.pem`) and a leaf for [`API`] signed by it (`leaf.pem`, `leaf.key`) in `dir`.
fn make_certificates(dir: &Path) {
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    openssl(
        dir,
        &format!(
            "req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=tollgate-rootfs-test-CA \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
        ),
    );
    openssl(
        dir,
        &format!("req {ec} -keyout leaf.key -out leaf.csr -subj /CN={API}"),
    );
    fs::write(
        dir.join("leaf.ext"),
        format!(
            "subjectAltName=DNS:{API}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        ),
    )
    .unwrap();
    openssl(
        dir,
        "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 2 \
         -extfile leaf.ext",
    );
}

/// The HTTPS upstream of `tls_e2e_server.py` on :443 in its own namespace, with the leaf.
fn start_https_upstream(dir: &Path) -> UpstreamHost {
    let (cert, key) = (dir.join("leaf.pem"), dir.join("leaf.key"));
    UpstreamHost::start_server(SERVER_PY, move |addr, log| {
        vec![
            addr.to_string().into(),
            HTTPS_PORT.to_string().into(),
            cert.into(),
            key.into(),
            log.into(),
        ]
    })
}

// ---------------------------------------------------------------------------------------
// A marker in the host's /opt
// ---------------------------------------------------------------------------------------

/// A file in the host's `/opt` that no sandbox may see; removed on drop.
struct HostMarker(PathBuf);

impl HostMarker {
    fn new() -> Self {
        let path = PathBuf::from(format!(
            "/opt/tollgate-rootfs-marker-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        fs::write(&path, "the host's /opt\n").expect("write the /opt marker");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        HostMarker(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 path")
    }
}

impl Drop for HostMarker {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// The names in directory `dir` of the host, sorted.
fn entries(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

fn assert_ok(finished: &Finished) {
    assert_eq!(finished.code(), 0, "{}", finished.describe());
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// What the script in the python image reports, as one JSON line.
const HTTPS_SCRIPT: &str = r#"
import json, os, sys, urllib.request
marker = sys.argv[1]
out = {}
with urllib.request.urlopen("https://api.example.com/echo/urllib", timeout=20) as r:
    out["urllib"] = {"status": r.status, "body": json.loads(r.read())}
from tollgate_http import http
r = http.get("https://api.example.com/echo/helper", params={"q": "1"})
out["helper"] = {"status": r["status_code"], "path": r["json"]["path"]}
out["helper_file"] = sys.modules["tollgate_http"].__file__
out["ssl_cert_file"] = os.environ.get("SSL_CERT_FILE")
out["bundle_certs"] = open(os.environ["SSL_CERT_FILE"]).read().count("BEGIN CERTIFICATE")
out["image"] = open("/etc/tollgate-image").read().splitlines()[1]
out["marker_visible"] = os.path.exists(marker)
print(json.dumps(out))
"#;

#[test]
fn python_in_the_python_image_makes_an_https_request_through_the_proxy() {
    let image = images::image("python");
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("rootfs-python");
    fs::set_permissions(&scratch.dir, fs::Permissions::from_mode(0o755)).unwrap();
    make_certificates(&scratch.dir);
    let upstream = start_https_upstream(&scratch.dir);
    let marker = HostMarker::new();
    let policy = scratch.file(
        "policy.yaml",
        &format!(
            "version: 1
team: acme
network:
  hosts:
    {API}: {addr}
  upstream_ca: {{file: {ca}}}
  allow:
    - host: {API}
      ports: [{HTTPS_PORT}]
      allowed_ips: [{subnet}]
",
            addr = upstream.addr,
            ca = scratch.dir.join("ca.pem").display(),
            subnet = upstream.subnet(),
        ),
    );
    let summary = scratch.output("summary.json");
    let finished = Sandbox::new()
        .policy(&policy)
        .arg("--rootfs")
        .arg(&image)
        .summary(&summary)
        .timeout("60s")
        .run(["/usr/bin/python3", "-c", HTTPS_SCRIPT, marker.path()]);
    assert_ok(&finished);
    let out: Value = serde_json::from_str(finished.stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no JSON from the script ({e}): {}", finished.describe()));

    // The interpreter is the image's, and so is everything it sees.
    assert_eq!(out["image"], "variant python", "{out}");
    assert_eq!(out["marker_visible"], false, "the host's /opt leaked in");
    // A verified HTTPS request through the proxy, with the CA bundle of the runtime dir.
    assert_eq!(out["urllib"]["status"], 200, "{out}");
    assert_eq!(out["urllib"]["body"]["path"], "/echo/urllib", "{out}");
    assert_eq!(out["helper"]["status"], 200, "{out}");
    assert_eq!(out["helper"]["path"], "/echo/helper?q=1", "{out}");
    let execution = read_json(&summary)["execution"]
        .as_str()
        .expect("the summary names the execution")
        .to_owned();
    let runtime = format!("/run/tollgate/{execution}");
    assert_eq!(out["ssl_cert_file"], format!("{runtime}/ca-bundle.pem"));
    assert!(out["bundle_certs"].as_u64().unwrap_or(0) >= 1, "{out}");
    assert_eq!(
        out["helper_file"],
        format!("{runtime}/python/tollgate_http.py")
    );
    // Both requests reached the upstream, by name, through the proxy.
    let requests = upstream.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    for request in &requests {
        let host: Vec<&Value> = request["headers"]
            .as_array()
            .expect("headers")
            .iter()
            .filter(|h| h[0] == "host")
            .map(|h| &h[1])
            .collect();
        assert_eq!(host, [API], "{request}");
    }
}

#[test]
fn the_minimal_image_has_no_python_and_shows_only_itself() {
    let image = images::image("minimal");
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("rootfs-minimal");
    let marker = HostMarker::new();
    let policy = scratch.file("policy.yaml", OFFLINE_POLICY);
    let sandbox = Sandbox::new().policy(&policy).arg("--rootfs").arg(&image);

    // No interpreter in the image, whatever the host has: tollgate's "not found".
    assert!(
        Path::new("/usr/bin/python3").exists(),
        "the host has python3"
    );
    let python = sandbox.run(["/usr/bin/python3", "-c", "print(1)"]);
    assert_eq!(python.code(), 127, "{}", python.describe());

    // `/` is the image: its top-level entries, no more, no fewer.
    let listing = sandbox.run(["/bin/sh", "-c", "ls -1A /"]);
    assert_ok(&listing);
    let inside: BTreeSet<String> = listing.stdout.lines().map(str::to_owned).collect();
    assert_eq!(inside, entries(&image), "{}", listing.describe());

    // The host's own directories are not there, nor the marker, nor this checkout.
    let checkout = repo_root();
    let probe = sandbox.run([
        "/bin/sh",
        "-c",
        "for p in \"$@\"; do if [ -e \"$p\" ]; then echo \"visible $p\"; fi; done; echo done",
        "sh",
        "/home",
        "/root",
        "/opt",
        marker.path(),
        checkout.to_str().unwrap(),
    ]);
    assert_ok(&probe);
    assert_eq!(probe.stdout.trim(), "done", "{}", probe.describe());
}

#[test]
fn the_policy_chooses_the_root_with_filesystem_rootfs() {
    let image = images::image("minimal");
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("rootfs-policy");
    let policy = scratch.file(
        "policy.yaml",
        &format!(
            "version: 1\nteam: offline\nfilesystem:\n  rootfs: {}\n",
            image.display()
        ),
    );
    let finished = Sandbox::new().policy(&policy).run([
        "/bin/sh",
        "-c",
        "head -2 /etc/tollgate-image | tail -1",
    ]);
    assert_ok(&finished);
    assert_eq!(
        finished.stdout.trim(),
        "variant minimal",
        "{}",
        finished.describe()
    );
}
