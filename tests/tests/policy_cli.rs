//! `tollgate policy check | eval | schema` from the built binary: exit codes and output.

use serde_json::Value;
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
        (&["GET", "ftp://api.github.com/"], "invalid_url"),
    ];
    for (args, reason) in cases {
        let (code, json) = eval(&allowlist(), args);
        assert_eq!(code, 1, "{args:?}: {json}");
        assert_eq!(json["allow"], false, "{args:?}");
        assert_eq!(json["reason"], *reason, "{args:?}: {json}");
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
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
        let (code, json) = eval(&policy, &["GET", url]);
        assert_eq!(
            (code, json["reason"].as_str()),
            (1, Some("private_address")),
            "{url}: {json}"
        );
    }
}

#[test]
fn eval_uses_host_pins_and_reports_cannot_resolve() {
    let internal = repo_root().join("examples/policies/internal-service.yaml");
    let (code, json) = eval(&internal, &["GET", "http://tools.internal:8000/health"]);
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["addresses"], serde_json::json!(["10.86.8.223"]));
    assert_eq!(json["class"], "internal");
    // `.invalid` never resolves (RFC 6761), so this needs no network.
    let scratch = Scratch::new("resolve");
    let policy = scratch.file(
        "p.yaml",
        "version: 1\nteam: t\nnetwork:\n  allow: [https://nothing.invalid]\n",
    );
    let (code, json) = eval(&policy, &["GET", "https://nothing.invalid/"]);
    assert_eq!(
        (code, json["reason"].as_str()),
        (1, Some("cannot_resolve")),
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
