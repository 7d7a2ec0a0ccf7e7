//! A team's policy reaches only that team's secrets, end to end through `tollgate run`.
//!
//! Team `a`'s policy tries to name team `b`'s key (by absolute path, by `../`, through a
//! symlink planted as its own file, through its whole directory being a symlink, through a
//! symlinked subdirectory), a host file (`/etc/shadow`), a FIFO that would hang the reader,
//! and a variable of the node's environment. Each run must stop before the command starts
//! (exit 125) with a message naming the policy rule, and the upstream must never receive
//! the secret. The same policy shapes with team `a`'s own secrets are delivered.
//!
//! Needs root. The only packets go to loopback and the upstream's veth (10.201.0.0/16).

mod secrets_support;

use secrets_support::SecretsRoot;
use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{Finished, Sandbox},
    upstream::{UpstreamHost, HTTP_PORT},
    Scratch,
};

const SECRET_A: &str = "team-a-key-3f9c1e";
const SECRET_B: &str = "team-b-key-77d0aa";
const NODE_SECRET: &str = "node-credential-c4b2e8";

/// What one run did: its output, and the `X-Api-Key` values the upstream received for it.
struct Outcome {
    finished: Finished,
    delivered: Vec<String>,
}

struct Bench {
    up: UpstreamHost,
    scratch: Scratch,
    runs: u32,
}

impl Bench {
    fn new() -> Bench {
        Bench {
            up: UpstreamHost::start(),
            scratch: Scratch::new("run-secrets"),
            runs: 0,
        }
    }

    /// Team `a`'s policy: one `api_key` provider whose secret is `secret`, scoped to the
    /// upstream.
    fn policy(&self, secret: &str) -> String {
        format!(
            "version: 1
team: a
network:
  hosts:
    up.test: {addr}
  allow:
    - host: up.test
      ports: [{HTTP_PORT}]
      schemes: [http]
      allowed_ips: [{subnet}]
auth_providers:
  - name: K
    type: api_key
    header: X-Api-Key
    secret: {secret}
    scope: [http://up.test:{HTTP_PORT}]
",
            addr = self.up.addr,
            subnet = self.up.subnet(),
        )
    }

    /// Runs curl with `Tollgate-Auth: K` against the upstream, under `secret` and `sandbox`.
    fn run(&mut self, sandbox: Sandbox, secret: &str) -> Outcome {
        self.runs += 1;
        let path = format!("/echo/secrets-{}", self.runs);
        let policy = self
            .scratch
            .file(&format!("policy{}.yaml", self.runs), &self.policy(secret));
        let finished = sandbox.policy(&policy).timeout("30s").run([
            "/usr/bin/curl",
            "-sS",
            "-H",
            "Tollgate-Auth: K",
            &format!("http://up.test:{HTTP_PORT}{path}"),
        ]);
        let delivered = self
            .up
            .requests_to(&path)
            .iter()
            .flat_map(|r| r["headers"].as_array().cloned().unwrap_or_default())
            .filter(|h| h[0] == "x-api-key")
            .filter_map(|h| h[1].as_str().map(str::to_owned))
            .collect();
        Outcome {
            finished,
            delivered,
        }
    }
}

fn with_root(root: &SecretsRoot) -> Sandbox {
    let [flag, dir] = root.flag();
    Sandbox::new().arg(flag).arg(dir)
}

/// A root with team `a`'s key and team `b`'s key.
fn two_teams(tag: &str) -> SecretsRoot {
    let root = SecretsRoot::new(tag);
    root.secret("a", "key", SECRET_A);
    root.secret("b", "key", SECRET_B);
    root
}

fn assert_delivered(outcome: &Outcome, value: &str, what: &str) {
    assert_eq!(
        outcome.finished.code(),
        0,
        "{what}: {}",
        outcome.finished.describe()
    );
    assert_eq!(outcome.delivered, vec![value.to_owned()], "{what}");
}

/// The run stopped before the command (125), said which rule and why, and nothing with a
/// secret reached the upstream or the output.
fn assert_refused(outcome: &Outcome, rule: &str, why: &str, what: &str) {
    let finished = &outcome.finished;
    assert_eq!(finished.code(), 125, "{what}: {}", finished.describe());
    assert!(
        finished.stderr.contains(rule) && finished.stderr.contains(why),
        "{what}: the error names {rule} and says {why:?}: {}",
        finished.describe()
    );
    assert!(
        outcome.delivered.is_empty(),
        "{what}: delivered {:?}",
        outcome.delivered
    );
    for secret in [SECRET_A, SECRET_B, NODE_SECRET] {
        assert!(
            !finished.stderr.contains(secret) && !finished.stdout.contains(secret),
            "{what}: the output shows a secret: {}",
            finished.describe()
        );
    }
}

#[test]
fn a_teams_own_secrets_are_delivered() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new();
    let root = two_teams("own");
    let absolute = root.root.join("a/key");
    root.secret("a/sub", "key", SECRET_A);
    for (secret, what) in [
        (
            "{file: key}".to_owned(),
            "a path relative to the team's dir",
        ),
        ("{file: sub/key}".to_owned(), "a path in a subdirectory"),
        (
            format!("{{file: {}}}", absolute.display()),
            "an absolute path inside the team's dir",
        ),
    ] {
        let outcome = bench.run(with_root(&root), &secret);
        assert_delivered(&outcome, SECRET_A, what);
    }
    let outcome = bench.run(
        Sandbox::new().supervisor_env("TOLLGATE_SECRET_A_KEY", SECRET_A),
        "{env: TOLLGATE_SECRET_A_KEY}",
    );
    assert_delivered(&outcome, SECRET_A, "the team's prefixed variable");
    let outcome = bench.run(
        Sandbox::new()
            .supervisor_env("NODE_CREDENTIAL", NODE_SECRET)
            .arg("--allow-secret-env")
            .arg("NODE_CREDENTIAL"),
        "{env: NODE_CREDENTIAL}",
    );
    assert_delivered(&outcome, NODE_SECRET, "a variable the operator allowed");
}

#[test]
fn another_teams_files_are_never_read() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new();
    let root = two_teams("paths");
    let rule = "auth_providers[0].secret.file";
    let other = root.root.join("b/key");
    for (secret, why, what) in [
        (
            format!("{{file: {}}}", other.display()),
            "outside team a's secrets directory",
            "team b's key by absolute path",
        ),
        ("{file: ../b/key}".to_owned(), "`..`", "team b's key by ../"),
        (
            "{file: sub/../../b/key}".to_owned(),
            "`..`",
            "team b's key by a longer ../",
        ),
        (
            "{file: /etc/shadow}".to_owned(),
            "outside team a's secrets directory",
            "a host file",
        ),
    ] {
        let outcome = bench.run(with_root(&root), &secret);
        assert_refused(&outcome, rule, why, what);
    }
    // The default root is /etc/tollgate/secrets: naming team b's directory there is refused
    // before anything is opened.
    let outcome = bench.run(Sandbox::new(), "{file: /etc/tollgate/secrets/b/key}");
    assert_refused(
        &outcome,
        rule,
        "outside team a's secrets directory /etc/tollgate/secrets/a",
        "team b's key under the default root",
    );
}

#[test]
fn symlinks_planted_on_the_way_are_never_followed() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new();
    let rule = "auth_providers[0].secret.file";

    // a/key -> ../b/key
    let root = two_teams("link-file");
    std::fs::remove_file(root.root.join("a/key")).unwrap();
    std::os::unix::fs::symlink("../b/key", root.root.join("a/key")).unwrap();
    let outcome = bench.run(with_root(&root), "{file: key}");
    assert_refused(&outcome, rule, "symbolic link", "a/key is a link to b/key");

    // a/sub -> ../b
    let root = two_teams("link-subdir");
    std::os::unix::fs::symlink("../b", root.root.join("a/sub")).unwrap();
    let outcome = bench.run(with_root(&root), "{file: sub/key}");
    assert_refused(&outcome, rule, "symbolic link", "a/sub is a link to b");

    // a -> b: the team's whole directory
    let root = SecretsRoot::new("link-team");
    root.secret("b", "key", SECRET_B);
    std::os::unix::fs::symlink("b", root.root.join("a")).unwrap();
    let outcome = bench.run(with_root(&root), "{file: key}");
    assert_refused(
        &outcome,
        rule,
        "symbolic link",
        "team a's directory is a link to b's",
    );

    // The secrets root itself reached through a symlink.
    let root = two_teams("link-root");
    let link = root.root.with_extension("link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&root.root, &link).unwrap();
    let outcome = bench.run(
        Sandbox::new().arg("--secrets-dir").arg(&link),
        "{file: key}",
    );
    let _ = std::fs::remove_file(&link);
    assert_refused(&outcome, rule, "symbolic link", "the root is a link");
}

#[test]
fn a_fifo_or_a_directory_open_to_others_is_refused_without_hanging() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new();
    let rule = "auth_providers[0].secret.file";
    let root = two_teams("fifo");
    let fifo = root.root.join("a/fifo");
    let status = std::process::Command::new("/usr/bin/mkfifo")
        .arg("-m")
        .arg("600")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let outcome = bench.run(with_root(&root), "{file: fifo}");
    assert_refused(&outcome, rule, "not a regular file", "a FIFO");

    // Whoever may write team a's directory could swap another team's file in.
    let root = two_teams("open-dir");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(root.root.join("a"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let outcome = bench.run(with_root(&root), "{file: key}");
    assert_refused(
        &outcome,
        rule,
        "chmod go-w",
        "a world-writable team directory",
    );
}

#[test]
fn the_nodes_environment_is_not_the_teams() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new();
    let rule = "auth_providers[0].secret.env";
    let outcome = bench.run(
        Sandbox::new().supervisor_env("NODE_CREDENTIAL", NODE_SECRET),
        "{env: NODE_CREDENTIAL}",
    );
    assert_refused(&outcome, rule, "TOLLGATE_SECRET_A_", "a node variable");
    // Team a-b's variable is not team a's, although it starts with TOLLGATE_SECRET_A_.
    let outcome = bench.run(
        Sandbox::new().supervisor_env("TOLLGATE_SECRET_A_B_KEY", SECRET_B),
        "{env: TOLLGATE_SECRET_A_B_KEY}",
    );
    assert_refused(&outcome, rule, "TOLLGATE_SECRET_A_", "team a-b's variable");
    // Another team's prefix.
    let outcome = bench.run(
        Sandbox::new().supervisor_env("TOLLGATE_SECRET_B_KEY", SECRET_B),
        "{env: TOLLGATE_SECRET_B_KEY}",
    );
    assert_refused(&outcome, rule, "TOLLGATE_SECRET_A_", "team b's variable");
}
