//! The execution's CA in the sandbox's system trust stores, and the sandbox's
//! `/etc/resolv.conf` (#11 part 1): clients that read no CA variable trust the interception.
//!
//! Through a real sandbox with the network on, against an HTTPS upstream with a test CA of its
//! own in a network namespace the test builds (trusted by the proxy through
//! `network.upstream_ca`, pinned with `hosts:`), each client runs with every CA variable
//! unset: curl and Python's `ssl` (OpenSSL's default file), wget (GnuTLS's system trust) and
//! `openssl s_client` through the proxy (`-proxy`, `-verify_return_error`). Each must trust
//! the execution's CA with no configuration, because the bundle is bound over the
//! distribution's trust store. The same script checks the bind itself: the trust store holds
//! the execution CA and every system root, is a read-only mount (once, however many names
//! lead to it), cannot be written, and the host's own file is unchanged after the run. The
//! three roots are covered: the system root, a `--rootfs` image (built by the
//! `rootfs_image` suite's cached mechanism) and the host tree of test builds (the `root`
//! layer off).
//!
//! Needs root. No packet goes anywhere but loopback and the upstream's veth pair
//! (10.201.0.0/16).

mod transparent_support;

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use tollgate_tests::{
    images,
    leaks::SuiteLock,
    sandbox::{shared_dir, Finished, Sandbox, NETWORK_POLICY, OFFLINE_POLICY, PYTHON},
    Scratch,
};
use transparent_support::{host, Bench};

const API: &str = "api.example.com";

/// The trust store every Debian-family root has, and a second name of it.
const DEBIAN_STORE: &str = "/etc/ssl/certs/ca-certificates.crt";
const OPENSSL_DEFAULT: &str = "/usr/lib/ssl/cert.pem";

/// What tollgate's stub-resolver `resolv.conf` says (the contract's wording).
const STUB_NAMESERVER: &str = "nameserver 127.0.0.1";

/// Runs in the sandbox: every client with every CA variable unset, then what the sandbox
/// sees of its trust store. Prints one JSON object; copies the trust store to OUT.
const CLIENTS_PY: &str = r#"
import errno, json, os, subprocess, sys
OUT, URL = sys.argv[1], sys.argv[2]
CA_VARIABLES = ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT",
                "GIT_SSL_CAINFO", "NODE_EXTRA_CA_CERTS", "AWS_CA_BUNDLE", "DENO_CERT",
                "CARGO_HTTP_CAINFO"]
bare = {k: v for k, v in os.environ.items() if k not in CA_VARIABLES}
proxy = os.environ["HTTPS_PROXY"].removeprefix("http://")
host = URL.split("/")[2]
clients = {
    "curl": ["/usr/bin/curl", "-sS", "--max-time", "20", URL + "/echo/curl"],
    "wget": ["/usr/bin/wget", "-q", "-T", "20", "-O", "-", URL + "/echo/wget"],
    "python": ["/usr/bin/python3", "-c",
               "import sys, urllib.request; "
               "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=20).read().decode())",
               URL + "/echo/python"],
    "openssl": ["/usr/bin/openssl", "s_client", "-proxy", proxy, "-connect", host + ":443",
                "-servername", host, "-verify_return_error", "-brief"],
}
out = {"clients": {}}
for name, argv in clients.items():
    if not os.path.exists(argv[0]):
        continue
    try:
        p = subprocess.run(argv, env=bare, capture_output=True, input=b"", timeout=40)
        rc, stdout, stderr = p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    except subprocess.TimeoutExpired:
        rc, stdout, stderr = "timeout", "", ""
    out["clients"][name] = {"rc": rc, "stdout": stdout[-2000:], "stderr": stderr[-2000:]}

def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        return None
store = read("/etc/ssl/certs/ca-certificates.crt")
if store is not None:
    with open(os.path.join(OUT, "trust-store.pem"), "wb") as f:
        f.write(store)
bundle = read(os.environ["SSL_CERT_FILE"]) if "SSL_CERT_FILE" in os.environ else None
out["store_is_bundle"] = store is not None and store == bundle
out["openssl_default_is_bundle"] = bundle is not None and read("/usr/lib/ssl/cert.pem") == bundle
try:
    with open("/etc/ssl/certs/ca-certificates.crt", "ab") as f:
        f.write(b"planted\n")
    out["write"] = "written"
except OSError as e:
    out["write"] = errno.errorcode.get(e.errno, str(e.errno))
mounts = []
for line in open("/proc/self/mountinfo"):
    fields = line.split(" ")
    if fields[4] in ("/etc/ssl/certs/ca-certificates.crt", "/usr/lib/ssl/cert.pem",
                     "/etc/resolv.conf"):
        mounts.append({"point": fields[4], "options": fields[5]})
out["mounts"] = mounts
out["resolv_conf"] = (read("/etc/resolv.conf") or b"").decode(errors="replace")
print(json.dumps(out))
"#;

// ---------------------------------------------------------------------------------------
// The HTTPS host with a test CA, and a sandbox run against it
// ---------------------------------------------------------------------------------------

/// What one run left: the client script's JSON, the sandbox's trust store, the host's file
/// before and after.
struct Outcome {
    finished: Finished,
    results: Value,
    store: Option<Vec<u8>>,
    host_before: Vec<u8>,
    host_after: Vec<u8>,
}

/// Starts an HTTPS host for `api.example.com` (the transparent suites' test host, on 443
/// only) and runs [`CLIENTS_PY`] with `python` in a sandbox built by `sandbox` (policy added);
/// asserts the run exited 0.
fn run_clients(tag: &str, sandbox: Sandbox, python: &str) -> (Bench, Outcome) {
    let mut bench = host(tag, &["https:443"]);
    let policy = bench.policy(
        &[API],
        &format!("    - host: {API}\n      ports: [443]\n      allowed_ips: [SUBNET]\n"),
        "",
    );
    let run = bench.write_run(&policy, "", CLIENTS_PY);
    let out = shared_dir(&bench.scratch, &format!("out{}", run.n));
    let host_before = fs::read(DEBIAN_STORE).expect("the host's trust store");
    let finished = run.sandbox(sandbox.timeout("120s")).run([
        python,
        run.script_arg(),
        out.to_str().unwrap(),
        &format!("https://{API}"),
    ]);
    let host_after = fs::read(DEBIAN_STORE).expect("the host's trust store");
    let outcome = bench.outcome(&run, finished);
    assert!(
        outcome.results.is_object(),
        "no JSON from the script: {}",
        outcome.finished.describe()
    );
    let outcome = Outcome {
        store: fs::read(out.join("trust-store.pem")).ok(),
        finished: outcome.finished,
        results: outcome.results,
        host_before,
        host_after,
    };
    assert_eq!(
        outcome.finished.code(),
        0,
        "{}",
        outcome.finished.describe()
    );
    (bench, outcome)
}

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

/// The PEM blocks of a bundle, each as its base64 body on one line.
fn pem_blocks(pem: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(pem);
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        match line {
            "-----BEGIN CERTIFICATE-----" => current = Some(String::new()),
            "-----END CERTIFICATE-----" => blocks.extend(current.take()),
            body => {
                if let Some(block) = current.as_mut() {
                    block.push_str(body);
                }
            }
        }
    }
    blocks
}

/// The subject of the first certificate of `pem`, as `openssl x509` prints it.
fn first_subject(dir: &Path, pem: &[u8]) -> String {
    let path = dir.join("first.pem");
    let first = pem_blocks(pem).into_iter().next().expect("a certificate");
    fs::write(
        &path,
        format!("-----BEGIN CERTIFICATE-----\n{first}\n-----END CERTIFICATE-----\n"),
    )
    .unwrap();
    let out = Command::new("/usr/bin/openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(&path)
        .output()
        .expect("run openssl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every client in `expected` reached the upstream through the interception, trusting it
/// with no CA variable; the upstream saw each one's request.
fn assert_clients_trust_the_interception(bench: &Bench, outcome: &Outcome, expected: &[&str]) {
    let clients = &outcome.results["clients"];
    for name in expected {
        let client = &clients[name];
        assert_eq!(
            client["rc"],
            0,
            "{name} did not trust the interception with no CA variable: {client}\n{}",
            outcome.finished.describe()
        );
        if *name == "openssl" {
            let said = format!("{}{}", client["stdout"], client["stderr"]);
            assert!(said.contains("Verification: OK"), "{name}: {client}");
        } else {
            let body: Value = serde_json::from_str(client["stdout"].as_str().unwrap_or(""))
                .unwrap_or_else(|e| panic!("{name}: no JSON echo ({e}): {client}"));
            assert_eq!(body["path"], format!("/echo/{name}"), "{name}: {client}");
            assert_eq!(
                bench.requests_to(&format!("/echo/{name}")).len(),
                1,
                "{name}'s request did not reach the upstream once"
            );
        }
    }
}

/// The sandbox's trust store is the execution's bundle (the execution CA first, then every
/// root of the host's store), one read-only mount that cannot be written, and the host's
/// file did not change.
fn assert_trust_store_is_the_bundle(scratch: &Scratch, outcome: &Outcome) {
    let results = &outcome.results;
    assert_eq!(results["store_is_bundle"], true, "{results}");
    assert_eq!(results["openssl_default_is_bundle"], true, "{results}");
    let store = outcome.store.as_deref().expect("the sandbox's trust store");
    assert!(
        first_subject(&scratch.dir, store).contains("tollgate"),
        "the first certificate is not the execution CA: {}",
        first_subject(&scratch.dir, store)
    );
    let in_sandbox: BTreeSet<String> = pem_blocks(store).into_iter().collect();
    let host = pem_blocks(&outcome.host_before);
    assert!(host.len() > 10, "the host's store has {} roots", host.len());
    let missing = host.iter().filter(|b| !in_sandbox.contains(*b)).count();
    assert_eq!(
        missing, 0,
        "{missing} system roots are not in the sandbox's store"
    );

    // One mount, read-only, with no set-uid and no devices (/usr/lib/ssl/cert.pem is a link
    // to the same file: not a second one).
    let mounts: Vec<&Value> = results["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter(|m| m["point"] != "/etc/resolv.conf")
        .collect();
    assert_eq!(mounts.len(), 1, "{results}");
    assert_eq!(mounts[0]["point"], DEBIAN_STORE, "{results}");
    let options: Vec<&str> = mounts[0]["options"].as_str().unwrap().split(',').collect();
    for option in ["ro", "nosuid", "nodev"] {
        assert!(options.contains(&option), "{option} missing: {options:?}");
    }
    assert_ne!(results["write"], "written", "{results}");
    assert!(
        outcome.host_before == outcome.host_after,
        "the host's {DEBIAN_STORE} changed"
    );
    assert!(
        !String::from_utf8_lossy(&outcome.host_after).contains("planted"),
        "the sandbox wrote the host's trust store"
    );
}

/// A copy of the `minimal` image (hard links, so it costs no data) whose `/etc/resolv.conf`
/// is systemd-resolved's link into `/run`; removed on drop. It lives beside the image cache,
/// since tollgate refuses a root below a directory others may write (`/tmp`).
struct ResolvedImage(PathBuf);

impl ResolvedImage {
    fn new() -> ResolvedImage {
        let image = images::image("minimal");
        let path = Path::new(images::CACHE_ROOT).with_file_name(format!(
            "trust-store-resolved-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let copy = Command::new("/bin/cp")
            .arg("-al")
            .arg(&image)
            .arg(&path)
            .status()
            .expect("run cp");
        let made = ResolvedImage(path);
        assert!(copy.success(), "cp -al {} failed", image.display());
        std::os::unix::fs::symlink(
            "../run/systemd/resolve/stub-resolv.conf",
            made.0.join("etc/resolv.conf"),
        )
        .expect("link resolv.conf");
        made
    }
}

impl Drop for ResolvedImage {
    fn drop(&mut self) {
        let _ = Command::new("/bin/rm")
            .args(["-rf", "--one-file-system"])
            .arg(&self.0)
            .status();
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

const ALL_CLIENTS: [&str; 4] = ["curl", "wget", "python", "openssl"];

#[test]
fn unconfigured_clients_trust_the_interception_in_the_system_root() {
    let _lock = SuiteLock::shared();
    let (bench, outcome) = run_clients("trust-system", Sandbox::new(), PYTHON);
    assert_clients_trust_the_interception(&bench, &outcome, &ALL_CLIENTS);
    assert_trust_store_is_the_bundle(&bench.scratch, &outcome);
}

#[test]
fn unconfigured_clients_trust_the_interception_in_the_host_tree() {
    // The host's own tree (the `root` layer off): the binds stay in the sandbox's mount
    // namespace, so the host's file is unchanged.
    let _lock = SuiteLock::shared();
    let (bench, outcome) = run_clients("trust-host", Sandbox::new().disable_layers("root"), PYTHON);
    assert_clients_trust_the_interception(&bench, &outcome, &ALL_CLIENTS);
    assert_trust_store_is_the_bundle(&bench.scratch, &outcome);
}

#[test]
fn unconfigured_clients_trust_the_interception_in_an_image_root() {
    let image = images::image("python");
    let _lock = SuiteLock::shared();
    let image_store = image.join(DEBIAN_STORE.trim_start_matches('/'));
    let image_before = fs::read(&image_store).expect("the image's trust store");
    assert!(
        fs::symlink_metadata(image.join(OPENSSL_DEFAULT.trim_start_matches('/')))
            .is_ok_and(|m| m.file_type().is_symlink()),
        "the image's {OPENSSL_DEFAULT} is expected to be Debian's link"
    );
    let (bench, outcome) = run_clients(
        "trust-image",
        Sandbox::new().arg("--rootfs").arg(&image),
        "/usr/bin/python3",
    );
    // The image has Python and openssl, no curl or wget.
    assert_clients_trust_the_interception(&bench, &outcome, &["python", "openssl"]);
    assert_trust_store_is_the_bundle(&bench.scratch, &outcome);
    assert!(
        fs::read(&image_store).expect("the image's trust store") == image_before,
        "the image's trust store changed"
    );
    // The image has no /etc/resolv.conf: none is made (the resolver asks 127.0.0.1 anyway).
    assert_eq!(outcome.results["resolv_conf"], "", "{}", outcome.results);
}

#[test]
fn without_the_network_the_trust_store_is_the_roots_own() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("trust-offline");
    let policy = scratch.file("policy.yaml", OFFLINE_POLICY);
    let finished = Sandbox::new().policy(&policy).run([
        "/bin/sh",
        "-c",
        "cat /etc/ssl/certs/ca-certificates.crt; grep -c ca-certificates.crt /proc/self/mountinfo || true",
    ]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let host = fs::read_to_string(DEBIAN_STORE).unwrap();
    let (store, count) = finished
        .stdout
        .trim_end()
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("{}", finished.describe()));
    assert_eq!(count.trim(), "0", "a trust store is bound with no network");
    assert_eq!(format!("{store}\n"), host);
}

#[test]
fn with_transparent_egress_off_the_sandboxs_resolv_conf_is_the_roots() {
    let _lock = SuiteLock::shared();
    let (bench, outcome) = run_clients(
        "trust-resolv-off",
        Sandbox::new().arg("--no-transparent"),
        PYTHON,
    );
    let host = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert_eq!(outcome.results["resolv_conf"], host.as_str());
    assert!(
        !host.contains(STUB_NAMESERVER),
        "the host itself names 127.0.0.1"
    );
    // The trust stores are covered whatever the transparent switch says.
    assert_clients_trust_the_interception(&bench, &outcome, &["curl"]);
}

#[test]
fn in_transparent_mode_resolv_conf_names_the_stub_resolver_read_only() {
    let _lock = SuiteLock::shared();
    let host_before = fs::read("/etc/resolv.conf").unwrap_or_default();
    let (_bench, outcome) = run_clients("trust-resolv-on", Sandbox::new(), PYTHON);
    let resolv = outcome.results["resolv_conf"].as_str().unwrap_or_default();
    assert!(
        resolv
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("# tollgate")),
        "{resolv}"
    );
    assert!(resolv.lines().any(|l| l == STUB_NAMESERVER), "{resolv}");
    let over_resolv: Vec<&Value> = outcome.results["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter(|m| m["point"] == "/etc/resolv.conf")
        .collect();
    let last = over_resolv.last().expect("a mount over /etc/resolv.conf");
    assert!(
        last["options"]
            .as_str()
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "{last}"
    );
    assert!(
        fs::read("/etc/resolv.conf").unwrap_or_default() == host_before,
        "the host's /etc/resolv.conf changed"
    );
}

#[test]
fn a_systemd_resolved_link_gets_its_target_made_in_the_fresh_run() {
    let _lock = SuiteLock::shared();
    let image = ResolvedImage::new();
    let scratch = Scratch::new("trust-resolved");
    let policy = scratch.file("policy.yaml", NETWORK_POLICY);
    // The image has coreutils and dash only.
    let finished = Sandbox::new()
        .policy(&policy)
        .arg("--rootfs")
        .arg(&image.0)
        .run([
            "/bin/sh",
            "-c",
            "cat /etc/resolv.conf; echo ---; \
             (echo x >> /run/systemd/resolve/stub-resolv.conf) 2>/dev/null && echo written; \
             echo ---; ls /etc/ssl/certs; echo ---; cat /proc/self/mountinfo",
        ]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let parts: Vec<&str> = finished.stdout.split("---\n").collect();
    let [resolv, written, certs, mountinfo] = parts[..] else {
        panic!("{}", finished.describe());
    };
    assert!(resolv.starts_with("# tollgate"), "{}", finished.describe());
    assert!(resolv.lines().any(|l| l == STUB_NAMESERVER), "{resolv}");
    // Bound read-only over the file made in the sandbox's /run.
    assert_eq!(written, "", "the sandbox wrote its resolv.conf");
    let bound: Vec<&str> = mountinfo
        .lines()
        .filter(|line| line.split(' ').nth(4) == Some("/run/systemd/resolve/stub-resolv.conf"))
        .collect();
    assert_eq!(bound.len(), 1, "{mountinfo}");
    let options = bound[0].split(' ').nth(5).unwrap_or_default();
    assert!(options.split(',').any(|o| o == "ro"), "{}", bound[0]);
    // The image has no trust store (its /etc/ssl/certs is empty), which is no error.
    assert_eq!(certs, "", "{}", finished.describe());
    assert!(
        fs::symlink_metadata(image.0.join("run/systemd")).is_err(),
        "the image's own /run was written"
    );
}
