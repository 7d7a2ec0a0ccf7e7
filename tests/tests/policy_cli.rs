//! `tollgate policy check | eval | schema` from the built binary: exit codes and output.

mod secrets_support;

use secrets_support::SecretsRoot;
use serde_json::Value;
use std::ffi::OsString;
use tollgate_tests::{repo_root, tollgate, Scratch};

fn eval(policy: &std::path::Path, args: &[&str]) -> (i32, Value) {
    let output = tollgate()
        .args(["policy", "eval"])
        .arg(policy)
        .args(args)
        .output()
        .expect("run tollgate");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "eval output is JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().expect("exit code"), json)
}

/// `policy eval` of `policy` with `args`, asserting its exit status and its `reason`.
fn assert_eval(policy: &std::path::Path, args: &[&str], code: i32, reason: &str) {
    let (got, json) = eval(policy, args);
    assert_eq!(
        (got, json["reason"].as_str()),
        (code, Some(reason)),
        "{args:?}: {json}"
    );
}

fn allowlist() -> std::path::PathBuf {
    repo_root().join("examples/policies/allowlist.yaml")
}

#[test]
fn check_accepts_every_shipped_example() {
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("examples/policies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let output = tollgate()
        .args(["policy", "check"])
        .args(&files)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    for file in &files {
        assert!(
            stdout.contains(&format!("{}: ok", file.display())),
            "{stdout}"
        );
    }
}

#[test]
fn check_reports_file_line_col_and_exits_2() {
    let scratch = Scratch::new("check");
    let bad = scratch.file(
        "bad.yaml",
        "version: 1\nteam: acme\nnetwork:\n  allow:\n    - host: \"*\"\n    - host: a.internal\n      allowed_ips: [127.0.0.0/8]\n",
    );
    let good = scratch.file("good.yaml", "version: 1\nteam: acme\n");
    let output = tollgate()
        .args(["policy", "check"])
        .arg(&bad)
        .arg(&good)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains(&format!("{}:5:13: ", bad.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{}:7:", bad.display())),
        "{stdout}"
    );
    assert!(stdout.contains("overlaps"), "{stdout}");
    assert!(
        stdout.contains(&format!("{}: ok", good.display())),
        "{stdout}"
    );
}

#[test]
fn check_never_panics_on_garbage() {
    let scratch = Scratch::new("garbage");
    for (i, text) in [
        "\u{feff}\0\0\0",
        "[[[[[[[[",
        "version: 1\nteam: acme\nnetwork: {allow: [{host: [a]}]}\n",
        "!!binary aGVsbG8=",
        "*alias",
    ]
    .iter()
    .enumerate()
    {
        let file = scratch.file(&format!("g{i}.yaml"), text);
        let output = tollgate()
            .args(["policy", "check"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{text:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let output = tollgate()
        .args(["policy", "check", "/nonexistent/policy.yaml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stdout).contains("cannot read the policy file"));
}

#[test]
fn eval_allows_with_exit_0_and_prints_the_decision() {
    let (code, json) = eval(
        &allowlist(),
        &[
            "GET",
            "https://API.github.com./repos/x?token=secret",
            "--resolve",
            "api.github.com=140.82.112.5",
        ],
    );
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["allow"], true);
    assert_eq!(json["reason"], "allowed");
    assert_eq!(json["rule"], "network.allow[0]");
    assert_eq!(json["url"], "https://api.github.com/repos/x");
    assert_eq!(json["addresses"], serde_json::json!(["140.82.112.5"]));
    assert_eq!(json["class"], "public");
    assert_eq!(json["error"], Value::Null, "{json}");
    assert!(
        !json.to_string().contains("secret"),
        "the query string never appears: {json}"
    );
}

#[test]
fn eval_denies_with_exit_1_and_a_reason() {
    let cases: &[(&[&str], &str)] = &[
        (&["GET", "https://api.evil.com/"], "host_not_allowed"),
        (
            &[
                "GET",
                "http://api.github.com/",
                "--resolve",
                "api.github.com=140.82.112.5",
            ],
            "scheme_not_allowed",
        ),
        (&["GET", "https://api.openai.com/v10"], "path_not_allowed"),
        (
            &["GET", "https://api.openai.com/v1/../admin"],
            "path_not_allowed",
        ),
        (
            &["POST", "https://a.example.com/repos/x"],
            "method_not_allowed",
        ),
        (&["GET", "https://a.example.com/admin/x"], "l7_denied"),
        (
            &[
                "GET",
                "https://api.github.com/",
                "--resolve",
                "api.github.com=10.0.0.7",
            ],
            "private_address",
        ),
        (
            &[
                "GET",
                "https://api.github.com/",
                "--resolve",
                "api.github.com=::ffff:127.0.0.1",
            ],
            "address_blocked",
        ),
        (
            &[
                "DELETE",
                "https://api.github.com/repos/x",
                "--resolve",
                "api.github.com=140.82.112.5",
            ],
            "team_rule",
        ),
        (
            &["GET", "https://api.github.com.evil.com/"],
            "host_not_allowed",
        ),
        (
            &["GET", "https://api.github.com@evil.com/"],
            "host_not_allowed",
        ),
    ];
    for (args, reason) in cases {
        let (code, json) = eval(&allowlist(), args);
        assert_eq!(code, 1, "{args:?}: {json}");
        assert_eq!(json["allow"], false, "{args:?}");
        assert_eq!(json["reason"], *reason, "{args:?}: {json}");
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
        // The `Tollgate-Error` the proxy would answer with.
        let error = match *reason {
            "private_address" | "address_blocked" => "ssrf_denied",
            _ => "policy_denied",
        };
        assert_eq!(json["error"], error, "{args:?}: {json}");
    }
}

/// `policy eval` with `args`: exit status, stdout, stderr.
fn eval_raw(policy: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let output = tollgate()
        .args(["policy", "eval"])
        .arg(policy)
        .args(args)
        .output()
        .expect("run tollgate");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn eval_input_errors_exit_2_with_one_message_and_no_decision() {
    let resolve = ["--resolve", "api.github.com=140.82.112.5"];
    let cases: &[(&[&str], &str)] = &[
        // What the proxy answers with 400 invalid_url.
        (&["GET", "ftp://api.github.com/"], "ftp"),
        (&["GET", "not a url"], "URL"),
        (&["GET", "https://api.github.com/a b"], "URL"),
        (&["GET", "https://[::1/"], "URL"),
        (&["GET", "https://api.github.com:99999/"], "URL"),
        // Methods not in upper case: 400 invalid_request, reason method_not_uppercase.
        (&["get", "https://api.github.com/"], "`GET`"),
        (&["gEt", "https://api.github.com/"], "`GET`"),
        (&["Delete", "https://api.github.com/"], "`DELETE`"),
        (&["connect", "api.github.com:443"], "`CONNECT`"),
        // Headers the proxy refuses with 400 invalid_request.
        (
            &["GET", "https://api.github.com/", "-H", "Host: evil.com"],
            "Host",
        ),
        (
            &[
                "GET",
                "https://api.github.com/",
                "-H",
                "Tollgate-Timeout: soon",
            ],
            "Tollgate-Timeout",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().chain(&resolve).copied().collect();
        let (code, stdout, stderr) = eval_raw(&allowlist(), &args);
        assert_eq!(
            code,
            Some(2),
            "{args:?}\nstdout: {stdout}\nstderr: {stderr}"
        );
        assert!(
            stdout.is_empty(),
            "{args:?}: no decision is printed: {stdout}"
        );
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one message: {stderr}");
        assert!(lines[0].contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // A header that cannot be written at all is a usage error too.
    for header in ["no colon", "Bad Name: x", ": x", "X: a\u{7}b"] {
        let (code, stdout, stderr) = eval_raw(
            &allowlist(),
            &["GET", "https://api.github.com/", "-H", header],
        );
        assert_eq!(
            code,
            Some(2),
            "{header:?}\nstdout: {stdout}\nstderr: {stderr}"
        );
        assert!(stdout.is_empty(), "{header:?}: {stdout}");
        assert!(
            !stderr.is_empty() && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
}

#[test]
fn eval_honours_tollgate_auth_as_the_proxy_does() {
    let scratch = Scratch::new("eval-auth");
    // One provider, `Tok`, whose scope is a part of what the policy allows.
    let policy = scratch.file(
        "auth.yaml",
        "version: 1\nteam: t\nnetwork:\n  allow:\n    - https://api.test\nauth_providers:\n  - name: Tok\n    type: bearer\n    secret: {env: TOLLGATE_SECRET_T_TOK}\n    scope: [https://api.test/ok]\n",
    );
    let none = scratch.file(
        "none.yaml",
        "version: 1\nteam: t\nnetwork:\n  allow:\n    - https://api.test\n",
    );
    let resolve = ["--resolve", "api.test=140.82.112.5"];
    // (policy, path, headers, exit, reason, error)
    type Case<'a> = (
        &'a std::path::Path,
        &'a str,
        &'a [&'a str],
        i32,
        &'a str,
        Option<&'a str>,
    );
    let cases: &[Case] = &[
        (&policy, "/ok/x", &[], 0, "allowed", None),
        (
            &policy,
            "/ok/x",
            &["Tollgate-Auth: Tok"],
            0,
            "allowed",
            None,
        ),
        (
            &policy,
            "/ok/x",
            &["tollgate-auth:   tOK  "],
            0,
            "allowed",
            None,
        ),
        (
            &policy,
            "/ok/x",
            &["Tollgate-Auth: Nope"],
            1,
            "unknown_auth_provider",
            Some("auth_provider_error"),
        ),
        (
            &policy,
            "/ok/x",
            &["TOLLGATE-AUTH: Nope"],
            1,
            "unknown_auth_provider",
            Some("auth_provider_error"),
        ),
        (
            &policy,
            "/other",
            &["Tollgate-Auth: Tok"],
            1,
            "credential_scope_denied",
            Some("credential_scope_denied"),
        ),
        (
            &policy,
            "/ok/x",
            &["Tollgate-Auth:"],
            1,
            "bad_auth_header",
            Some("auth_provider_error"),
        ),
        (
            &policy,
            "/ok/x",
            &["Tollgate-Auth: Tok", "Tollgate-Auth: Tok"],
            1,
            "bad_auth_header",
            Some("auth_provider_error"),
        ),
        (
            &none,
            "/ok/x",
            &["Tollgate-Auth: Tok"],
            1,
            "no_auth_providers",
            Some("auth_provider_error"),
        ),
    ];
    for (policy, path, headers, exit, reason, error) in cases {
        let url = format!("https://api.test{path}");
        let mut args = vec!["GET", url.as_str()];
        args.extend(resolve);
        for header in *headers {
            args.extend(["--header", header]);
        }
        let (code, json) = eval(policy, &args);
        assert_eq!(code, *exit, "{path} {headers:?}: {json}");
        assert_eq!(json["allow"], *exit == 0, "{path} {headers:?}: {json}");
        assert_eq!(json["reason"], *reason, "{path} {headers:?}: {json}");
        assert_eq!(json["error"].as_str(), *error, "{path} {headers:?}: {json}");
        assert!(
            json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{json}"
        );
    }
    // The policy decides first, as in the proxy: a refused destination keeps its reason.
    assert_eval(
        &policy,
        &[
            "GET",
            "https://evil.test/",
            "--header",
            "Tollgate-Auth: Nope",
        ],
        1,
        "host_not_allowed",
    );
    // A tunnel carries no credential, so Tollgate-Auth on a CONNECT changes nothing.
    assert_eval(
        &policy,
        &[
            "CONNECT",
            "api.test:443",
            "--resolve",
            "api.test=140.82.112.5",
            "-H",
            "Tollgate-Auth: Nope",
        ],
        0,
        "allowed",
    );
}

#[test]
fn eval_classifies_ip_literals_in_every_encoding() {
    let scratch = Scratch::new("literals");
    let policy = scratch.file(
        "all.yaml",
        "version: 1\nteam: t\nnetwork:\n  allow_all: true\n",
    );
    for url in [
        "http://2130706433/",
        "http://0x7f.1/",
        "http://017700000001/",
        "http://[::ffff:127.0.0.1]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[2002:7f00:1::]/",
        "http://169.254.169.254/",
    ] {
        let (code, json) = eval(&policy, &["GET", url]);
        assert_eq!(code, 1, "{url}: {json}");
        assert_eq!(json["reason"], "address_blocked", "{url}: {json}");
        assert_eq!(json["class"], "always_blocked", "{url}");
    }
    for url in [
        "http://10.1.1.1/",
        "http://[::ffff:10.0.0.1]/",
        "http://[2001:db8::1]/",
        "http://100.64.0.1/",
    ] {
        assert_eval(&policy, &["GET", url], 1, "private_address");
    }
}

#[test]
fn eval_uses_host_pins_and_reports_cannot_resolve() {
    let internal = repo_root().join("examples/policies/internal-service.yaml");
    let (code, json) = eval(&internal, &["GET", "http://tools.internal:8000/health"]);
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["addresses"], serde_json::json!(["10.86.8.223"]));
    assert_eq!(json["class"], "internal");
    // The system resolver, asked from a network namespace of its own with nothing in it: the
    // lookup fails on this machine, and no query leaves it.
    let scratch = Scratch::new("resolve");
    let policy = scratch.file(
        "p.yaml",
        "version: 1\nteam: t\nnetwork:\n  allow: [https://nothing.invalid]\n",
    );
    let output = std::process::Command::new("/usr/bin/unshare")
        .arg("--net")
        .arg(tollgate_tests::tollgate_path())
        .args(["policy", "eval"])
        .arg(&policy)
        .args(["GET", "https://nothing.invalid/"])
        .output()
        .expect("run tollgate in a network namespace of its own");
    let json: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(
        (output.status.code(), json["reason"].as_str()),
        (Some(1), Some("cannot_resolve")),
        "{json}"
    );
    assert_eq!(json["error"], "connect_error", "{json}");
    // The message says why the lookup failed.
    assert!(
        json["message"]
            .as_str()
            .is_some_and(|m| m.contains("does not resolve (")),
        "{json}"
    );
}

#[test]
fn eval_usage_and_policy_errors_exit_2() {
    let scratch = Scratch::new("usage");
    let bad = scratch.file("bad.yaml", "version: 1\n");
    for args in [
        vec![
            "policy",
            "eval",
            bad.to_str().unwrap(),
            "GET",
            "https://a.example/",
        ],
        vec![
            "policy",
            "eval",
            allowlist().to_str().unwrap(),
            "GET",
            "https://a.example/",
            "--resolve",
            "nonsense",
        ],
        vec![
            "policy",
            "eval",
            allowlist().to_str().unwrap(),
            "G E T",
            "https://a.example/",
        ],
        vec!["policy", "eval", allowlist().to_str().unwrap(), "GET"],
        vec!["policy", "frobnicate"],
    ] {
        let output = tollgate().args(&args).output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.stderr.is_empty());
    }
}

#[test]
fn schema_is_json_schema_for_the_policy_file() {
    let output = tollgate().args(["policy", "schema"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let schema: Value = serde_json::from_slice(&output.stdout).expect("schema is JSON");
    assert_eq!(schema["title"], "PolicyFile");
    let properties = schema["properties"].as_object().expect("properties");
    for key in [
        "version",
        "team",
        "network",
        "limits",
        "retry",
        "auth_providers",
        "credentials",
        "placeholders",
        "bot_auth",
        "rego",
    ] {
        assert!(properties.contains_key(key), "schema lacks {key}");
    }
}

#[test]
fn help_and_version() {
    let output = tollgate().arg("--version").output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("tollgate "));
    for args in [
        vec!["--help"],
        vec!["policy", "--help"],
        vec!["policy", "eval", "--help"],
    ] {
        let output = tollgate().args(&args).output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        assert!(String::from_utf8_lossy(&output.stdout).contains("Usage"));
    }
}

// ---------------------------------------------------------------------------------------
// Secrets: a team's policy may name only that team's secrets
// ---------------------------------------------------------------------------------------

/// Team `a`'s policy with one bearer provider whose secret reference is `secret`; the value
/// of the reference (`file` or `env`) is at line 8.
fn team_a_policy(secret: &str) -> String {
    format!(
        "version: 1\nteam: a\nnetwork:\n  allow: [https://api.example.com]\nauth_providers:\n  - name: K\n    type: bearer\n    secret: {secret}\n    scope: [https://api.example.com]\n"
    )
}

/// `tollgate policy check [flags] FILE` → (exit code, stdout + stderr).
fn check_with(file: &std::path::Path, flags: &[OsString]) -> (Option<i32>, String) {
    let output = tollgate()
        .args(["policy", "check"])
        .args(flags)
        .arg(file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

/// Asserts `policy check` refuses `secret` in team a's policy: exit 2, and the problem at
/// `FILE:8:COL: RULE: ...` saying `why`.
fn assert_check_refuses(
    scratch: &Scratch,
    flags: &[OsString],
    secret: &str,
    column: usize,
    rule: &str,
    why: &str,
) {
    let file = scratch.file("a.yaml", &team_a_policy(secret));
    let (code, text) = check_with(&file, flags);
    assert_eq!(code, Some(2), "{secret}: {text}");
    let expected = format!("{}:8:{column}: {rule}: ", file.display());
    assert!(
        text.contains(&expected) && text.contains(why),
        "{secret}: expected {expected:?} and {why:?} in:\n{text}"
    );
}

#[test]
fn check_refuses_secrets_outside_the_teams_own() {
    let scratch = Scratch::new("check-secrets");
    let root = SecretsRoot::new("check");
    root.secret("a", "key", "team-a-value");
    root.secret("b", "key", "team-b-value");
    let flags = root.flag().to_vec();
    let file_rule = "auth_providers[0].secret.file";
    // `    secret: {file: ` is 19 characters: the path starts at column 20; `{env: ` at 19.
    let other = format!("{{file: {}}}", root.root.join("b/key").display());
    for (secret, column, rule, why) in [
        (
            other.as_str(),
            20,
            file_rule,
            "outside team a's secrets directory",
        ),
        ("{file: ../b/key}", 20, file_rule, "`..`"),
        (
            "{file: /etc/shadow}",
            20,
            file_rule,
            "outside team a's secrets directory",
        ),
        (
            "{env: NODE_CREDENTIAL}",
            19,
            "auth_providers[0].secret.env",
            "TOLLGATE_SECRET_A_",
        ),
        (
            "{env: TOLLGATE_SECRET_A_B_KEY}",
            19,
            "auth_providers[0].secret.env",
            "another team's namespace",
        ),
    ] {
        assert_check_refuses(&scratch, &flags, secret, column, rule, why);
    }
    // Without --secrets-dir the root is /etc/tollgate/secrets.
    assert_check_refuses(
        &scratch,
        &[],
        "{file: /etc/tollgate/secrets/b/key}",
        20,
        file_rule,
        "outside team a's secrets directory /etc/tollgate/secrets/a",
    );
}

#[test]
fn check_looks_at_the_secrets_directory_when_it_exists_here() {
    let scratch = Scratch::new("check-secrets-disk");
    let rule = "auth_providers[0].secret.file";
    // a/key -> ../b/key
    let root = SecretsRoot::new("check-link");
    root.secret("b", "key", "team-b-value");
    root.team("a");
    std::os::unix::fs::symlink("../b/key", root.root.join("a/key")).unwrap();
    let flags = root.flag().to_vec();
    assert_check_refuses(&scratch, &flags, "{file: key}", 20, rule, "symbolic link");
    // A missing file, where the root exists.
    assert_check_refuses(
        &scratch,
        &flags,
        "{file: nothing}",
        20,
        rule,
        "does not exist",
    );
    // A FIFO is looked at, never opened (which would wait for a writer).
    let fifo = root.root.join("a/fifo");
    let made = std::process::Command::new("/usr/bin/mkfifo")
        .args(["-m", "600"])
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    assert_check_refuses(
        &scratch,
        &flags,
        "{file: fifo}",
        20,
        rule,
        "not a regular file",
    );
    // a -> b
    let root = SecretsRoot::new("check-team-link");
    root.secret("b", "key", "team-b-value");
    std::os::unix::fs::symlink("b", root.root.join("a")).unwrap();
    let flags = root.flag().to_vec();
    assert_check_refuses(&scratch, &flags, "{file: key}", 20, rule, "symbolic link");
    // Nothing of any file's content is ever printed.
    let (_, text) = check_with(
        &scratch.file("a.yaml", &team_a_policy("{file: key}")),
        &flags,
    );
    assert!(!text.contains("team-b-value"), "{text}");
}

#[test]
fn check_accepts_the_teams_own_secrets_and_what_the_operator_allows() {
    let scratch = Scratch::new("check-secrets-ok");
    let root = SecretsRoot::new("check-ok");
    let absolute = root.secret("a", "key", "team-a-value");
    let mut flags = root.flag().to_vec();
    let absolute = format!("{{file: {}}}", absolute.display());
    for secret in [
        "{file: key}",
        absolute.as_str(),
        "{env: TOLLGATE_SECRET_A_KEY}",
    ] {
        let file = scratch.file("a.yaml", &team_a_policy(secret));
        let (code, text) = check_with(&file, &flags);
        assert_eq!(code, Some(0), "{secret}: {text}");
        assert!(text.contains(&format!("{}: ok", file.display())), "{text}");
    }
    flags.extend(["--allow-secret-env".into(), "NODE_CREDENTIAL".into()]);
    let file = scratch.file("a.yaml", &team_a_policy("{env: NODE_CREDENTIAL}"));
    let (code, text) = check_with(&file, &flags);
    assert_eq!(code, Some(0), "{text}");
}

#[test]
fn bad_secrets_flags_are_usage_errors() {
    let scratch = Scratch::new("check-secrets-flags");
    let file = scratch.file("a.yaml", &team_a_policy("{file: key}"));
    for (flags, needle) in [
        (["--secrets-dir", "relative/dir"], "not an absolute path"),
        (["--secrets-dir", "/etc/../root"], "`..`"),
        (
            ["--allow-secret-env", "NOT-A-NAME"],
            "not an environment variable name",
        ),
    ] {
        let flags: Vec<OsString> = flags.iter().map(OsString::from).collect();
        let (code, text) = check_with(&file, &flags);
        assert_eq!(code, Some(2), "{flags:?}: {text}");
        assert!(text.contains(needle), "{flags:?}: {text}");
    }
}

#[test]
fn the_schema_says_where_secrets_may_come_from() {
    let output = tollgate().args(["policy", "schema"]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "TOLLGATE_SECRET_<TEAM>_<NAME>",
        "/etc/tollgate/secrets",
        "--secrets-dir",
        "--allow-secret-env",
    ] {
        assert!(text.contains(needle), "the schema mentions {needle}");
    }
}

/// Every address assigned to an interface of this machine (`ip -j addr`).
fn own_addresses() -> Vec<std::net::IpAddr> {
    let output = std::process::Command::new("/usr/sbin/ip")
        .args(["-j", "addr", "show"])
        .output()
        .expect("run ip -j addr");
    let links: Value = serde_json::from_slice(&output.stdout).expect("ip -j prints JSON");
    links
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|link| link["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|info| info["local"].as_str().and_then(|a| a.parse().ok()))
        .collect()
}

#[test]
fn eval_refuses_the_nodes_own_addresses_whatever_the_policy_opens() {
    // The host side of a veth gives this machine a 10.x address of its own for certain.
    let up = tollgate_tests::upstream::UpstreamHost::start();
    let scratch = Scratch::new("host-address");
    let gateway = std::net::IpAddr::V4(up.gateway);
    let mut addresses = own_addresses();
    assert!(addresses.contains(&gateway), "{addresses:?}");
    // The tables already block loopback and link-local, with their own reasons; the veths
    // of other tests (10.201/16, 10.202/16) may be gone by the time they are evaluated.
    addresses.retain(|a| {
        let other_tests = matches!(a, std::net::IpAddr::V4(v4)
            if v4.octets()[..2] == [10, 201] || v4.octets()[..2] == [10, 202]);
        !a.is_loopback()
            && !matches!(a, std::net::IpAddr::V6(v6) if v6.is_unicast_link_local())
            && (!other_tests || *a == gateway)
    });
    // `allowed_ips` naming exactly the node's addresses.
    let covering: Vec<String> = addresses
        .iter()
        .map(|a| format!("'{a}/{}'", if a.is_ipv4() { 32 } else { 128 }))
        .collect();
    let policies = [
        scratch.file(
            "open.yaml",
            "version: 1\nteam: t\nnetwork:\n  block_private_ips: false\n  allow:\n    - http://up.test\n",
        ),
        scratch.file(
            "covered.yaml",
            &format!(
                "version: 1\nteam: t\nnetwork:\n  allow:\n    - host: up.test\n      allowed_ips: [{}, {}]\n",
                covering.join(", "),
                up.subnet()
            ),
        ),
        scratch.file(
            "all.yaml",
            "version: 1\nteam: t\nnetwork:\n  allow_all: true\n  block_private_ips: false\n",
        ),
    ];
    for policy in &policies {
        let mut forms: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
        forms.push(format!("::ffff:{}", up.gateway));
        for address in &forms {
            let (code, json) = eval(
                policy,
                &[
                    "GET",
                    "http://up.test/",
                    "--resolve",
                    &format!("up.test={address}"),
                ],
            );
            assert_eq!(code, 1, "{address}: {json}");
            assert_eq!(json["reason"], "host_address", "{address}: {json}");
            assert_eq!(json["class"], "always_blocked", "{address}: {json}");
        }
        // The other end of the veth is not this machine's.
        assert_eval(
            policy,
            &[
                "GET",
                "http://up.test/",
                "--resolve",
                &format!("up.test={}", up.addr),
            ],
            0,
            "allowed",
        );
    }
    // An IP literal of the node, too.
    assert_eval(
        &policies[2],
        &["GET", &format!("http://{}/", up.gateway)],
        1,
        "host_address",
    );
}

/// Hostile YAML: each file is refused by `policy check` with exit 2 and `FILE:LINE:COL` (or
/// `FILE:` for the size), within the harness's hang limit (today's parser took 83 s on the
/// 100 000-level flow file in a debug build).
fn hostile_yaml(scratch: &Scratch) -> Vec<(&'static str, std::path::PathBuf, &'static str)> {
    let levels = 100_000;
    let flow = format!(
        "version: 1\nteam: t\nnetwork: {}{}\n",
        "[".repeat(levels),
        "]".repeat(levels)
    );
    let block = format!("version: 1\nteam: t\nnetwork:\n{}x\n", "- ".repeat(levels));
    // Block sequences, then flow sequences inside them.
    let mixed = format!(
        "version: 1\nteam: t\nnetwork:\n{}{}{}\n",
        "- ".repeat(50),
        "[".repeat(50),
        "]".repeat(50)
    );
    let big = format!("version: 1\nteam: t\n# {}\n", "x".repeat(2 * 1024 * 1024));
    // Nine aliases of nine aliases of …: the classic (serde_yaml's own repetition limit
    // stops its replay; the shape pass refuses it before that).
    let mut laughs = String::from(
        "version: 1\nteam: t\na0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        laughs.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    // The wide form: one big valid entry repeated by 70 000 aliases (no alias nests, so
    // serde_yaml's own repetition limit never trips).
    let rules: Vec<String> = (0..8000)
        .map(|i| format!("{{method: GET, path: /p{i}}}"))
        .collect();
    let mut wide = format!(
        "version: 1\nteam: t\nnetwork:\n  allow:\n    - &e {{host: a.example, rules: [{}]}}\n",
        rules.join(", ")
    );
    while wide.len() < 1000 * 1024 {
        wide.push_str("    - *e\n");
    }
    vec![
        ("flow", scratch.file("flow.yaml", &flow), "3:"),
        ("block", scratch.file("block.yaml", &block), "4:"),
        ("mixed", scratch.file("mixed.yaml", &mixed), "4:"),
        ("big", scratch.file("big.yaml", &big), ""),
        ("laughs", scratch.file("laughs.yaml", &laughs), "9:"),
        ("wide", scratch.file("wide.yaml", &wide), ""),
    ]
}

#[test]
fn check_refuses_hostile_yaml_before_parsing_it_in_full() {
    let scratch = Scratch::new("hostile-yaml");
    for (name, file, at) in hostile_yaml(&scratch) {
        let finished = tollgate_tests::sandbox::output(
            tollgate().args(["policy", "check"]).arg(&file),
            None,
            tollgate_tests::sandbox::HANG_LIMIT,
        );
        assert_eq!(
            finished.status.code(),
            Some(2),
            "{name}: {}",
            finished.describe()
        );
        let line = finished
            .stdout
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        let expected = format!("{}:{at}", file.display());
        assert!(line.starts_with(&expected), "{name}: {line}");
        // FILE:LINE:COL wherever a node is to blame.
        let position = line[file.display().to_string().len()..]
            .split(' ')
            .next()
            .unwrap_or_default();
        let numbers = position.split(':').filter(|p| !p.is_empty()).count();
        assert_eq!(numbers, if name == "big" { 0 } else { 2 }, "{name}: {line}");
        let reason = match name {
            "big" => "larger than 1 MiB",
            "laughs" | "wide" => "aliases",
            _ => "deeper than 64 levels",
        };
        assert!(line.contains(reason), "{name}: {line}");
        assert!(
            !finished.stderr.contains("panicked"),
            "{name}: {}",
            finished.stderr
        );
    }
    // Nothing that is not a regular file is read: a FIFO would block, /dev/zero never ends.
    // (A directory is a directory of team policies: `/proc/self` holds none, so it fails
    // too, without reading anything in it: see policy_check_dir.rs.)
    let proc_self = tollgate_tests::sandbox::output(
        tollgate().args(["policy", "check", "/proc/self"]),
        None,
        tollgate_tests::sandbox::HANG_LIMIT,
    );
    assert_eq!(
        proc_self.status.code(),
        Some(2),
        "/proc/self: {}",
        proc_self.describe()
    );
    assert!(
        proc_self.stderr.contains("holds no team policy"),
        "/proc/self: {}",
        proc_self.describe()
    );
    let path = "/dev/zero";
    let finished = tollgate_tests::sandbox::output(
        tollgate().args(["policy", "check", path]),
        None,
        tollgate_tests::sandbox::HANG_LIMIT,
    );
    assert_eq!(
        finished.status.code(),
        Some(2),
        "{path}: {}",
        finished.describe()
    );
    assert!(
        finished.stdout.contains("not a regular file"),
        "{path}: {}",
        finished.stdout
    );
    let fifo = scratch.dir.join("policy.fifo");
    let made = std::process::Command::new("/usr/bin/mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let finished = tollgate_tests::sandbox::output(
        tollgate().args(["policy", "check"]).arg(&fifo),
        None,
        tollgate_tests::sandbox::HANG_LIMIT,
    );
    assert_eq!(finished.status.code(), Some(2), "{}", finished.describe());
}

#[test]
fn run_refuses_hostile_yaml_with_125_before_starting() {
    let _suite = tollgate_tests::leaks::SuiteLock::shared();
    let scratch = Scratch::new("hostile-yaml-run");
    for (name, file, _) in hostile_yaml(&scratch) {
        let finished = tollgate_tests::sandbox::Sandbox::new()
            .policy(&file)
            .run(["/bin/true"]);
        assert_eq!(finished.code(), 125, "{name}: {}", finished.describe());
        assert!(
            finished.stderr.contains("invalid policy"),
            "{name}: {}",
            finished.stderr
        );
    }
}

/// A team module that asks for far more than an evaluation may use, for `/x`.
fn hostile_team_policy(scratch: &Scratch, name: &str, rules: &str) -> std::path::PathBuf {
    scratch.file(
        &format!("{name}.yaml"),
        &format!(
            "version: 1\nteam: t\nnetwork:\n  allow:\n    - https://api.example.com\nrego: |\n  package tollgate.team\n  import rego.v1\n{rules}\n  deny contains \"no deletes\" if input.request.method == \"DELETE\"\n"
        ),
    )
}

#[test]
fn eval_refuses_with_team_rule_error_when_team_rego_exceeds_its_bounds() {
    let scratch = Scratch::new("team-rego-eval");
    let cases = [
        ("range", "  deny contains \"r\" if { count(numbers.range(1, 1e8)) > 0 }"),
        ("huge-range", "  deny contains \"r\" if { count(numbers.range(1, 1e12)) > 0 }"),
        ("overflowing-range", "  deny contains \"r\" if { count(numbers.range(1, 1e18)) > 0 }"),
        (
            "cross",
            "  deny contains \"c\" if { count([x | some x in numbers.range(1, 100000); some y in numbers.range(1, 100000)]) > 0 }",
        ),
        ("recursion", "  f(x) := y if { y := f(x) }\n  deny contains \"f\" if { f(1) }"),
        (
            "mutual-recursion",
            "  f(x) := y if { y := g(x) }\n  g(x) := y if { y := f(x) }\n  deny contains \"f\" if { f(1) }",
        ),
        (
            "concat",
            "  k := concat(\"\", [\"x\" | some _ in numbers.range(1, 1000)])\n  m := concat(\"\", [k | some _ in numbers.range(1, 1000)])\n  g := concat(\"\", [m | some _ in numbers.range(1, 1000)])\n  deny contains \"g\" if { count(g) > 0 }",
        ),
        (
            "array-doubling",
            "  a0 := [\"0123456789abcdef\"]\n  a1 := array.concat(a0, a0)\n  a2 := array.concat(a1, a1)\n  a3 := array.concat(a2, a2)\n  a4 := array.concat(a3, a3)\n  a5 := array.concat(a4, a4)\n  a6 := array.concat(a5, a5)\n  a7 := array.concat(a6, a6)\n  a8 := array.concat(a7, a7)\n  a9 := array.concat(a8, a8)\n  a10 := array.concat(a9, a9)\n  big := concat(\"\", a10)\n  b1 := concat(big, a10)\n  b2 := concat(b1, a10)\n  deny contains \"b\" if { count(b2) > 0 }",
        ),
    ];
    for (name, rules) in cases {
        let policy = hostile_team_policy(&scratch, name, rules);
        let finished = tollgate_tests::sandbox::output(
            tollgate().args(["policy", "eval"]).arg(&policy).args([
                "GET",
                "https://api.example.com/x",
                "--resolve",
                "api.example.com=140.82.112.5",
            ]),
            None,
            tollgate_tests::sandbox::HANG_LIMIT,
        );
        let json: Value = serde_json::from_str(finished.stdout.trim())
            .unwrap_or_else(|e| panic!("{name}: not JSON ({e})\n{}", finished.describe()));
        assert_eq!(
            finished.status.code(),
            Some(1),
            "{name}: {}",
            finished.describe()
        );
        assert_eq!(json["reason"], "team_rule_error", "{name}: {json}");
        assert!(
            json["message"]
                .as_str()
                .is_some_and(|m| m.contains("failed to evaluate (")),
            "{name}: {json}"
        );
    }
    // The same module's ordinary rule still decides.
    let policy = hostile_team_policy(&scratch, "ordinary", "");
    assert_eval(
        &policy,
        &[
            "DELETE",
            "https://api.example.com/x",
            "--resolve",
            "api.example.com=140.82.112.5",
        ],
        1,
        "team_rule",
    );
    assert_eval(
        &policy,
        &[
            "GET",
            "https://api.example.com/x",
            "--resolve",
            "api.example.com=140.82.112.5",
        ],
        0,
        "allowed",
    );
}

#[test]
fn check_refuses_rego_nested_deeper_than_the_parser_can_bear() {
    let scratch = Scratch::new("team-rego-check");
    // The rules start on line 9 of the file; the 11th bracket is the one refused.
    for (name, rules, line) in [
        (
            "arrays",
            format!("  x := {}1{}", "[".repeat(100_000), "]".repeat(100_000)),
            9,
        ),
        (
            "objects",
            format!("  x := {}1{}", "{\"a\": ".repeat(20), "}".repeat(20)),
            9,
        ),
        (
            "multiline",
            format!("  x := {}\n  1{}", "[\n  ".repeat(5000), "]".repeat(5000)),
            19,
        ),
    ] {
        let policy = hostile_team_policy(&scratch, name, &rules);
        let finished = tollgate_tests::sandbox::output(
            tollgate().args(["policy", "check"]).arg(&policy),
            None,
            tollgate_tests::sandbox::HANG_LIMIT,
        );
        assert_eq!(
            finished.status.code(),
            Some(2),
            "{name}: {}",
            finished.describe()
        );
        let expected = format!("{}:{line}:", policy.display());
        assert!(
            finished.stdout.starts_with(&expected)
                && finished.stdout.contains("nested deeper than 10"),
            "{name}: {}",
            finished.describe()
        );
    }
}
