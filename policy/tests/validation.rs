//! Every validation error, with the line and column it points at.

use tollgate_policy::{Policy, PolicyErrors};

fn errors(yaml: &str) -> PolicyErrors {
    match Policy::from_yaml("team.yaml", yaml) {
        Ok(_) => panic!("policy should be rejected:\n{yaml}"),
        Err(errors) => errors,
    }
}

/// Asserts one error mentions `needle` at `line` and returns the rendered output.
fn assert_error_at(yaml: &str, line: usize, needle: &str) -> String {
    let errors = errors(yaml);
    let rendered = errors.to_string();
    let found = errors
        .errors
        .iter()
        .any(|e| e.line == Some(line) && e.message.contains(needle));
    assert!(
        found,
        "expected an error containing {needle:?} at line {line}, got:\n{rendered}"
    );
    assert!(rendered.starts_with("team.yaml:"), "{rendered}");
    rendered
}

const HEAD: &str = "version: 1\nteam: acme\n";

#[test]
fn syntax_errors_have_a_location() {
    let rendered = assert_error_at("version: 1\nteam: acme\nnetwork: {allow: [\n", 4, "");
    assert!(rendered.starts_with("team.yaml:4:"), "{rendered}");
    assert_error_at("version: 1\nteam: [acme]\n", 2, "expected a string");
}

#[test]
fn unknown_keys_are_errors() {
    assert_error_at(
        &format!("{HEAD}network:\n  alow: []\n"),
        4,
        "unknown field `alow`",
    );
    assert_error_at(
        &format!("{HEAD}netwrok: {{}}\n"),
        3,
        "unknown field `netwrok`",
    );
    assert_error_at(
        &format!("{HEAD}network:\n  allow:\n    - host: a.example.com\n      port: [443]\n"),
        6,
        "unknown field `port`",
    );
}

#[test]
fn team_is_required_and_well_formed() {
    assert_error_at("version: 1\n", 1, "missing field `team`");
    assert_error_at("version: 1\nteam: Acme Corp\n", 2, "team names");
    assert_error_at(
        "version: 2\nteam: acme\n",
        1,
        "unsupported policy version 2",
    );
}

#[test]
fn wildcard_alone_and_tld_wildcards_are_rejected() {
    for (host, line) in [
        ("\"*\"", 5),
        ("\"**\"", 5),
        ("\"*.com\"", 5),
        ("\"**.com\"", 5),
        ("\"a.*.example.com\"", 5),
    ] {
        let yaml = format!("{HEAD}network:\n  allow:\n    - host: {host}\n");
        let errors = errors(&yaml);
        assert_eq!(errors.errors[0].line, Some(line), "{host}: {errors}");
    }
    assert_error_at(
        &format!("{HEAD}network:\n  allow:\n    - https://*.example.com\n"),
        5,
        "invalid allow entry",
    );
}

#[test]
fn allowed_ips_cannot_open_always_blocked_ranges() {
    for net in [
        "127.0.0.0/8",
        "127.0.0.1/32",
        "169.254.0.0/16",
        "0.0.0.0/0",
        "::1/128",
        "fe80::/10",
        "::/0",
        "0.0.0.0/8",
        "::ffff:127.0.0.1/128",
    ] {
        let yaml = format!("{HEAD}network:\n  allow:\n    - host: a.internal\n      allowed_ips: [10.0.0.0/8, \"{net}\"]\n");
        assert_error_at(&yaml, 6, "overlaps");
    }
}

#[test]
fn inline_secrets_are_rejected_without_echoing_them() {
    let yaml = format!(
        "{HEAD}network:\n  allow: [https://api.example.com]\nauth_providers:\n  - name: K\n    type: bearer\n    secret: sk-live-abcdef\n    scope: [https://api.example.com]\n"
    );
    let rendered = assert_error_at(&yaml, 8, "inline secrets are not allowed");
    assert!(!rendered.contains("sk-live-abcdef"), "{rendered}");
}

#[test]
fn unknown_providers_are_rejected() {
    let base = format!(
        "{HEAD}network:\n  allow: [https://api.example.com]\nauth_providers:\n  - name: Known\n    type: bearer\n    secret: {{env: K}}\n    scope: [https://api.example.com]\n"
    );
    let rendered = assert_error_at(
        &format!("{base}credentials:\n  - {{pattern: https://api.example.com, provider: Nope}}\n"),
        11,
        "unknown provider `Nope`",
    );
    assert!(rendered.contains("Known"), "{rendered}");
    assert_error_at(
        &format!("{base}placeholders:\n  - {{env: OPENAI_API_KEY, provider: Missing}}\n"),
        11,
        "unknown provider `Missing`",
    );
}

#[test]
fn credential_patterns_must_lie_inside_their_providers_scope() {
    let base = format!(
        "{HEAD}network:\n  allow: [https://api.example.com]\nauth_providers:\n  - name: K\n    type: bearer\n    secret: {{env: K}}\n    scope: [https://api.example.com/v1]\n"
    );
    let rendered = assert_error_at(
        &format!("{base}credentials:\n  - {{pattern: https://api.example.com/v2, provider: K}}\n"),
        11,
        "outside the scope of provider `K`",
    );
    assert!(
        rendered.contains("https://api.example.com/v1"),
        "{rendered}"
    );
    assert!(Policy::from_yaml(
        "team.yaml",
        &format!(
            "{base}credentials:\n  - {{pattern: https://api.example.com/v1/x, provider: K}}\n"
        )
    )
    .is_ok());
}

#[test]
fn placeholders_cannot_take_variables_tollgate_sets() {
    let base = format!(
        "{HEAD}network:\n  allow: [https://api.example.com]\nauth_providers:\n  - name: K\n    type: bearer\n    secret: {{env: K}}\n    scope: [https://api.example.com]\n"
    );
    for name in ["SSL_CERT_FILE", "HTTPS_PROXY", "PATH", "PYTHONPATH"] {
        assert_error_at(
            &format!("{base}placeholders:\n  - {{env: {name}, provider: K}}\n"),
            11,
            "set by tollgate itself",
        );
    }
}

#[test]
fn allow_all_with_allow_is_rejected() {
    assert_error_at(
        &format!("{HEAD}network:\n  allow_all: true\n  allow: [https://a.example.com]\n"),
        4,
        "cannot be combined",
    );
}

#[test]
fn upstream_ca_must_be_an_absolute_normalised_path() {
    for (file, needle) in [
        ("ca.pem", "not an absolute path"),
        ("/etc/../root/ca.pem", "not a normalised path"),
        ("/etc//ca.pem", "not a normalised path"),
    ] {
        assert_error_at(
            &format!("{HEAD}network:\n  allow_all: true\n  upstream_ca:\n    file: {file}\n"),
            6,
            needle,
        );
    }
    let yaml = format!("{HEAD}network:\n  allow_all: true\n  upstream_ca: {{file: /etc/ca.pem}}\n");
    Policy::from_yaml("team.yaml", &yaml).expect("an absolute path is accepted");
}

#[test]
fn provider_scope_must_lie_inside_the_allow_list() {
    let yaml = format!(
        "{HEAD}network:\n  allow: [https://api.example.com/v1]\nauth_providers:\n  - name: K\n    type: bearer\n    secret: {{env: K}}\n    scope:\n      - https://api.example.com/v1/x\n      - https://evil.example.net\n"
    );
    let errors = errors(&yaml);
    assert_eq!(
        errors.errors.len(),
        1,
        "only the second scope is outside: {errors}"
    );
    assert_error_at(&yaml, 11, "outside every `network.allow` entry");
    let no_network = format!("{HEAD}auth_providers:\n  - name: K\n    type: bearer\n    secret: {{env: K}}\n    scope: [https://api.example.com]\n");
    assert_error_at(&no_network, 7, "no `network` section");
}

#[test]
fn credentials_and_rules_cannot_bind_to_passthrough_entries() {
    let yaml = format!(
        "{HEAD}network:\n  allow:\n    - host: api.example.com\n      tls: passthrough\n      rules: [{{method: GET, path: /x}}]\n"
    );
    assert_error_at(&yaml, 6, "passthrough");
    let yaml = format!(
        "{HEAD}network:\n  allow:\n    - host: api.example.com\n      tls: passthrough\nauth_providers:\n  - name: K\n    type: bearer\n    secret: {{env: K}}\n    scope: [https://api.example.com]\n"
    );
    assert_error_at(&yaml, 11, "passthrough");
}

#[test]
fn invalid_rego_is_rejected_with_its_location_in_the_yaml() {
    let yaml = format!(
        "{HEAD}network:\n  allow: [https://api.example.com]\nrego: |\n  package tollgate.team\n  import rego.v1\n  deny contains msg if {{\n    msg := \n  }}\n"
    );
    let errors = errors(&yaml);
    let error = &errors.errors[0];
    assert!(error.message.starts_with("invalid Rego"), "{errors}");
    let line = error.line.expect("a line");
    assert!(
        (9..=11).contains(&line),
        "rego error should point into the block, got {errors}"
    );
}

#[test]
fn team_rego_must_use_its_package() {
    let yaml = format!("{HEAD}network:\n  allow: []\nrego: |\n  package tollgate\n  import rego.v1\n  decision := {{\"allow\": true}}\n");
    assert_error_at(&yaml, 6, "package tollgate.team");
}

#[test]
fn provider_fields_fit_their_type() {
    let p = |body: &str| {
        format!("{HEAD}network:\n  allow: [https://api.example.com]\nauth_providers:\n  - name: K\n{body}    scope: [https://api.example.com]\n")
    };
    // A missing field points at its provider (line 6); a wrong one at itself.
    assert_error_at(
        &p("    type: api_key\n    secret: {env: K}\n"),
        6,
        "needs `header`",
    );
    assert_error_at(
        &p("    type: basic\n    secret: {env: K}\n"),
        6,
        "needs `username`",
    );
    assert_error_at(&p("    type: bearer\n"), 6, "needs `secret");
    assert_error_at(
        &p("    type: api_key\n    header: Host\n    secret: {env: K}\n"),
        8,
        "reserved",
    );
    assert_error_at(&p("    type: headers\n"), 6, "at least one");
    assert_error_at(
        &p("    type: bearer\n    username: u\n    secret: {env: K}\n"),
        8,
        "takes no `username`",
    );
    assert_error_at(
        &p("    type: oauth\n    secret: {env: K}\n"),
        7,
        "unknown variant `oauth`",
    );
}

#[test]
fn limits_and_units_are_checked() {
    assert_error_at(
        &format!("{HEAD}limits:\n  max_request_bytes: 1 parsec\n"),
        4,
        "unknown size unit",
    );
    assert_error_at(&format!("{HEAD}limits:\n  default_timeout: 5\n"), 4, "5s");
    assert_error_at(
        &format!("{HEAD}limits:\n  default_timeout: 10s\n  max_timeout: 5s\n"),
        5,
        "below default_timeout",
    );
    assert_error_at(
        &format!("{HEAD}retry:\n  on_status: [200]\n"),
        4,
        "not an error status",
    );
    assert_error_at(&format!("{HEAD}retry:\n  attempts: 0\n"), 4, "between 1");
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let yaml = format!("{HEAD}network:\n  allow:\n    - host: \"*\"\n    - host: \"*.com\"\n");
    assert_eq!(errors(&yaml).errors.len(), 2);
}

#[test]
fn hostile_inputs_never_panic() {
    let bomb = "a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n";
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let huge = "a".repeat(2 * 1024 * 1024);
    for text in [
        bomb,
        &deep,
        &huge,
        "",
        "---",
        "~",
        "\u{0}",
        "version: 1\nteam: acme\nnetwork: 7\n",
        "- a\n- b\n",
    ] {
        assert!(Policy::from_yaml("x.yaml", text).is_err());
    }
}

#[test]
fn the_shipped_examples_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/policies exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
            count += 1;
        }
    }
    assert!(
        count >= 4,
        "expected at least 4 example policies, found {count}"
    );
}

// ----- secrets: a team's policy may name only that team's secrets ------------------------

/// Team `a`'s policy with a bearer provider (its secret at line 8), a `headers` provider
/// (its header secret at line 14) and a bot-auth key (line 17).
fn secrets_policy(provider: &str, header: &str, bot: &str) -> String {
    format!(
        "version: 1
team: a
network:
  allow: [https://api.example.com]
auth_providers:
  - name: K
    type: bearer
    secret: {provider}
    scope: [https://api.example.com]
  - name: H
    type: headers
    scope: [https://api.example.com]
    headers:
      - {{name: X-Key, secret: {header}}}
bot_auth:
  signature_agent: https://bot.example.com
  key: {bot}
"
    )
}

/// `FILE:LINE:COL: message` lines the default secrets rules give for `yaml`.
fn secret_problems(yaml: &str, rules: &tollgate_policy::secrets::SecretRules) -> Vec<String> {
    let policy = Policy::from_yaml("a.yaml", yaml).expect("the policy itself is valid");
    let problems = rules.check(&policy);
    tollgate_policy::secrets::locate("a.yaml", Some(yaml), problems)
        .to_string()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn secrets_of_other_teams_and_of_the_node_are_refused_at_their_rule() {
    let rules = tollgate_policy::secrets::SecretRules::default();
    let yaml = secrets_policy(
        "{file: /etc/tollgate/secrets/b/key}",
        "{file: ../b/key}",
        "{env: NODE_CREDENTIAL}",
    );
    let problems = secret_problems(&yaml, &rules);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(
        problems[0].starts_with("a.yaml:8:20: auth_providers[0].secret.file: ")
            && problems[0].contains("outside team a's secrets directory /etc/tollgate/secrets/a"),
        "{problems:#?}"
    );
    assert!(
        problems[1].starts_with("a.yaml:14:38: auth_providers[1].headers[0].secret.file: ")
            && problems[1].contains("`..`"),
        "{problems:#?}"
    );
    assert!(
        problems[2].starts_with("a.yaml:17:14: bot_auth.key.env: ")
            && problems[2].contains("TOLLGATE_SECRET_A_"),
        "{problems:#?}"
    );
    let yaml = secrets_policy(
        "{file: /etc/shadow}",
        "{env: TOLLGATE_SECRET_A_B_KEY}",
        "{env: TOLLGATE_SECRET_B_KEY}",
    );
    assert_eq!(secret_problems(&yaml, &rules).len(), 3);
}

#[test]
fn a_teams_own_secrets_pass_the_rules() {
    let rules = tollgate_policy::secrets::SecretRules::default();
    let yaml = secrets_policy(
        "{file: key}",
        "{file: /etc/tollgate/secrets/a/headers/x-key}",
        "{env: TOLLGATE_SECRET_A_BOTSEED}",
    );
    assert_eq!(secret_problems(&yaml, &rules), Vec::<String>::new());
    // Under another root, the default root's paths are outside.
    let moved = tollgate_policy::secrets::SecretRules::new("/srv/secrets", ["NODE_KEY".to_owned()])
        .expect("rules");
    assert_eq!(secret_problems(&yaml, &moved).len(), 1);
    let yaml = secrets_policy(
        "{file: key}",
        "{env: NODE_KEY}",
        "{file: /srv/secrets/a/seed}",
    );
    assert_eq!(secret_problems(&yaml, &moved), Vec::<String>::new());
}

#[test]
fn the_shipped_examples_name_only_their_teams_secrets() {
    let rules = tollgate_policy::secrets::SecretRules::default();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies");
    for entry in std::fs::read_dir(&dir).expect("examples/policies exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let policy = Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                rules.check(&policy),
                Vec::<(String, String)>::new(),
                "{}",
                path.display()
            );
        }
    }
}

#[test]
fn websocket_is_opt_in_and_refused_on_passthrough_entries() {
    let yaml = format!(
        "{HEAD}network:\n  allow:\n    - host: api.example.com\n      tls: passthrough\n      websocket: true\n"
    );
    let rendered = assert_error_at(&yaml, 7, "already carries anything");
    assert!(rendered.contains("team.yaml:7:"), "{rendered}");
    assert!(rendered.contains("tls: intercept"), "{rendered}");

    let yaml = format!(
        "{HEAD}network:\n  allow:\n    - host: ws.example.com\n      websocket: true\n    - host: api.example.com\n    - https://short.example.com\n"
    );
    let policy = Policy::from_yaml("team.yaml", &yaml).expect("loads");
    let flags: Vec<bool> = (0..3).map(|i| policy.entry(i).unwrap().websocket).collect();
    assert_eq!(flags, [true, false, false], "only the entry that opts in");

    let yaml = format!(
        "{HEAD}network:\n  allow:\n    - host: ws.example.com\n      websocket: yes please\n"
    );
    assert_error_at(&yaml, 6, "websocket");
}
