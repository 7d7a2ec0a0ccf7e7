//! `network.upstream_ca` as hostile input: a team's policy names a file that tollgate, as root,
//! reads and turns into trust (the proxy's, and the sandbox's bundle).
//!
//! Each test points a policy at a file an attacker would choose — a certificate with its
//! private key beside it, a FIFO, a device, a symbolic link, a root-only file, a file in a
//! directory the sandbox can write — and checks what `tollgate run` (and `tollgate policy
//! check`) make of it: the sandbox's bundle holds certificates and nothing else; everything
//! else is refused with one clear message, at once, before the sandbox starts.
//!
//! Needs root (`tollgate run`, chown). No packet leaves the machine: the policies allow one
//! name that nothing here ever connects to.

use std::{
    ffi::CString,
    fs,
    os::unix::{ffi::OsStrExt as _, fs::PermissionsExt as _},
    path::{Path, PathBuf},
};

use tollgate_tests::{
    certs, openssl,
    sandbox::{shared_dir, Finished, Sandbox, PYTHON},
    tollgate, Scratch,
};

/// `tollgate run`'s status when it refuses to start.
const REFUSED: i32 = 125;
/// `tollgate policy check`'s status for a policy with problems.
const CHECK_FAILED: i32 = 2;

/// A CA of the team's own in `dir`: `ca.pem` (certificate, 0644), `ca.key` (PKCS#8, `BEGIN
/// PRIVATE KEY`) and `ca-ec.key` (the same key as `BEGIN EC PRIVATE KEY`).
fn make_ca(dir: &Path) {
    certs::make_ca(dir);
    openssl(dir, &["ec", "-in", "ca.key", "-out", "ca-ec.key"]);
}

/// A scratch directory (root, 0755) holding the team's CA.
fn scratch_with_ca(tag: &str) -> Scratch {
    let scratch = Scratch::new(tag);
    fs::set_permissions(&scratch.dir, fs::Permissions::from_mode(0o755)).unwrap();
    make_ca(&scratch.dir);
    scratch
}

/// A policy with the proxy on (one allowed name) and `upstream_ca` naming `ca`.
fn policy_text(ca: &Path) -> String {
    format!(
        "version: 1
team: acme
network:
  allow:
    - https://api.example.com
  upstream_ca: {{file: {}}}
",
        ca.display()
    )
}

fn write_policy(scratch: &Scratch, ca: &Path) -> PathBuf {
    scratch.file("policy.yaml", &policy_text(ca))
}

/// `tollgate run` of `policy` with a command that never matters (the run must not start).
fn run_refused(policy: &Path) -> Finished {
    Sandbox::new().policy(policy).run(["/bin/true"])
}

/// `tollgate policy check` of `policy`: (status, stdout and stderr together).
fn check(policy: &Path) -> (i32, String) {
    let out = tollgate()
        .args(["policy", "check"])
        .arg(policy)
        .output()
        .expect("run tollgate policy check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().expect("an exit status"), text)
}

/// Asserts `run` refused to start (125) with a message naming `upstream_ca` and containing
/// `why`.
fn assert_refused(run: &Finished, why: &str) {
    assert_eq!(run.code(), REFUSED, "{}", run.describe());
    assert!(
        run.stderr.contains("network.upstream_ca") && run.stderr.contains(why),
        "the message should name network.upstream_ca and say `{why}`:\n{}",
        run.describe()
    );
}

/// The base64 body of the first PEM section in `text`, on one line.
fn pem_body(text: &str) -> String {
    text.lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect()
}

#[test]
fn only_certificates_of_upstream_ca_reach_the_sandbox_bundle() {
    let scratch = scratch_with_ca("ca-key");
    let dir = &scratch.dir;
    let cert = fs::read_to_string(dir.join("ca.pem")).unwrap();
    let pkcs8 = fs::read_to_string(dir.join("ca.key")).unwrap();
    let ec = fs::read_to_string(dir.join("ca-ec.key")).unwrap();
    assert!(pkcs8.contains("-----BEGIN PRIVATE KEY-----"), "{pkcs8}");
    // What an operator's combined file may hold besides the certificate: comments, the key
    // in two encodings, and a section no TLS library knows.
    let combined = format!(
        "# node-note: not-for-the-sandbox-7f3a\n{cert}{pkcs8}\
         -----BEGIN TOLLGATE TEST SECRET-----\nc2VjcmV0LXNlY3Rpb24tYm9keQ==\n\
         -----END TOLLGATE TEST SECRET-----\n{ec}"
    );
    let path = dir.join("combined.pem");
    fs::write(&path, combined).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let policy = write_policy(&scratch, &path);

    // The sandbox reads its bundle and has OpenSSL load it as a CA file.
    let script = "import os, ssl, sys\n\
                  path = os.environ['SSL_CERT_FILE']\n\
                  text = open(path).read()\n\
                  n = len(ssl.create_default_context(cafile=path).get_ca_certs())\n\
                  sys.stdout.write('roots=%d\\n' % n + text)\n";
    let run = Sandbox::new().policy(&policy).run([PYTHON, "-c", script]);
    assert_eq!(run.code(), 0, "{}", run.describe());
    let bundle = &run.stdout;
    for leaked in [
        "PRIVATE KEY",
        "not-for-the-sandbox-7f3a",
        "TOLLGATE TEST SECRET",
        "c2VjcmV0LXNlY3Rpb24tYm9keQ",
        &pem_body(&pkcs8),
        &pem_body(&ec),
    ] {
        assert!(
            !bundle.contains(leaked),
            "the sandbox's bundle holds `{leaked}` from upstream_ca:\n{bundle}"
        );
    }
    // The team's CA is still there, as a certificate OpenSSL loads (with the execution's
    // CA and the system roots).
    let flat: String = bundle.lines().collect();
    assert!(
        flat.contains(&pem_body(&cert)),
        "the team's CA is missing from the bundle:\n{bundle}"
    );
    let roots: usize = bundle
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("roots="))
        .and_then(|n| n.parse().ok())
        .expect("the script's first line");
    assert!(roots >= 2, "{bundle}");
}

#[test]
fn a_fifo_or_device_as_upstream_ca_is_refused_at_once() {
    let scratch = scratch_with_ca("ca-fifo");
    let fifo = scratch.dir.join("ca.fifo");
    let name = CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o644) }, 0, "mkfifo");
    // Nothing ever writes the FIFO: a supervisor that opened it for reading would wait
    // forever (the harness kills a run that hangs and fails the test).
    let policy = write_policy(&scratch, &fifo);
    assert_refused(&run_refused(&policy), "FIFO");
    let (status, text) = check(&policy);
    assert_eq!(status, CHECK_FAILED, "{text}");
    assert!(
        text.contains("network.upstream_ca") && text.contains("FIFO"),
        "{text}"
    );

    // A device answers whatever it likes (/dev/zero: zeros without end).
    let policy = write_policy(&scratch, Path::new("/dev/zero"));
    assert_refused(&run_refused(&policy), "character device");
    // A directory is not a file of certificates either.
    let policy = write_policy(&scratch, &scratch.dir);
    assert_refused(&run_refused(&policy), "directory");
}

#[test]
fn upstream_ca_through_a_symbolic_link_is_refused() {
    let scratch = scratch_with_ca("ca-link");
    let dir = &scratch.dir;
    // The link itself, and a link to a directory on the way: both would let whoever planted
    // them send root's read anywhere. Each points at a perfectly good CA.
    std::os::unix::fs::symlink(dir.join("ca.pem"), dir.join("link.pem")).unwrap();
    fs::create_dir(dir.join("real")).unwrap();
    fs::set_permissions(dir.join("real"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::copy(dir.join("ca.pem"), dir.join("real/ca.pem")).unwrap();
    std::os::unix::fs::symlink(dir.join("real"), dir.join("via")).unwrap();
    for through_link in [dir.join("link.pem"), dir.join("via/ca.pem")] {
        let policy = write_policy(&scratch, &through_link);
        assert_refused(&run_refused(&policy), "symbolic link");
        let (status, text) = check(&policy);
        assert_eq!(status, CHECK_FAILED, "{text}");
        assert!(text.contains("symbolic link"), "{text}");
    }
    // The same CA by its real path is accepted.
    let policy = write_policy(&scratch, &dir.join("real/ca.pem"));
    let run = Sandbox::new().policy(&policy).run(["/bin/true"]);
    assert_eq!(run.code(), 0, "{}", run.describe());
}

#[test]
fn upstream_ca_must_be_public_and_writable_only_by_root() {
    let scratch = scratch_with_ca("ca-modes");
    let dir = &scratch.dir;
    let cert = fs::read(dir.join("ca.pem")).unwrap();
    let place = |relative: &str, mode: u32| {
        let path = dir.join(relative);
        fs::write(&path, &cert).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    };

    // A root-only file: tollgate must not read for a team what the team could not read.
    let private = place("private.pem", 0o600);
    assert_refused(
        &run_refused(&write_policy(&scratch, &private)),
        "readable by everyone",
    );
    // A file in a root-only directory: the same.
    fs::create_dir(dir.join("closed")).unwrap();
    fs::set_permissions(dir.join("closed"), fs::Permissions::from_mode(0o700)).unwrap();
    let hidden = place("closed/ca.pem", 0o644);
    assert_refused(&run_refused(&write_policy(&scratch, &hidden)), "closed");

    // Files someone else could rewrite: a world-writable file, one owned by another user,
    // one in a directory every sandbox can write (a shared directory).
    let writable = place("writable.pem", 0o666);
    assert_refused(&run_refused(&write_policy(&scratch, &writable)), "writable");
    let foreign = place("foreign.pem", 0o644);
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    assert_refused(
        &run_refused(&write_policy(&scratch, &foreign)),
        "belongs to uid 65534",
    );
    let shared = shared_dir(&scratch, "shared");
    fs::write(shared.join("ca.pem"), &cert).unwrap();
    fs::set_permissions(shared.join("ca.pem"), fs::Permissions::from_mode(0o644)).unwrap();
    assert_refused(
        &run_refused(&write_policy(&scratch, &shared.join("ca.pem"))),
        "writable",
    );

    // More than 1 MiB of certificates is not a CA file.
    let big = dir.join("big.pem");
    let copies = (1024 * 1024) / cert.len() + 1;
    fs::write(&big, cert.repeat(copies)).unwrap();
    fs::set_permissions(&big, fs::Permissions::from_mode(0o644)).unwrap();
    assert_refused(&run_refused(&write_policy(&scratch, &big)), "larger than");
}

#[test]
fn upstream_ca_must_be_an_absolute_normal_path() {
    let scratch = scratch_with_ca("ca-path");
    for bad in ["ca.pem", "/tmp/../tmp/ca.pem", "/tmp//ca.pem"] {
        let policy = write_policy(&scratch, Path::new(bad));
        let (status, text) = check(&policy);
        assert_eq!(status, CHECK_FAILED, "{bad}: {text}");
        // Pointed at the line of `upstream_ca` (the sixth of the policy).
        assert!(
            text.contains("policy.yaml:6:") && text.contains("path"),
            "{bad}: {text}"
        );
    }
}
