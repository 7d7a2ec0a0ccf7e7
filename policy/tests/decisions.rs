//! Decisions end to end through the public API: YAML in, verdict out.

mod common;

use std::net::IpAddr;
use tollgate_policy::url::NormalizedUrl;
use tollgate_policy::{Decision, Destination, HostAddresses, Policy, Reason, Request};

fn policy(yaml: &str) -> Policy {
    Policy::from_yaml("test.yaml", yaml).unwrap_or_else(|e| panic!("policy should load:\n{e}"))
}

/// Decides like the proxy does: first without addresses, then with `addresses` if needed.
fn decide_with(
    policy: &Policy,
    method: &str,
    url: &str,
    addresses: &[&str],
    credential: Option<&str>,
) -> Decision {
    decide_on_node(
        policy,
        method,
        url,
        addresses,
        credential,
        &HostAddresses::none(),
    )
}

/// [`decide_with`] from a node whose own addresses are `node`.
fn decide_on_node(
    policy: &Policy,
    method: &str,
    url: &str,
    addresses: &[&str],
    credential: Option<&str>,
    node: &HostAddresses,
) -> Decision {
    let url = NormalizedUrl::parse(url).expect("test URL parses");
    let request = Request {
        method,
        url: &url,
        connect: method == "CONNECT",
        header_names: &[],
        credential,
        quotas: &[],
    };
    let first = common::decide(policy, &request, &Destination::Unresolved, node);
    if !first.needs_resolution() {
        return first;
    }
    let addresses: Vec<IpAddr> = if addresses.is_empty() {
        match &url.host {
            tollgate_policy::url::UrlHost::Ip(ip) => vec![*ip],
            host => policy.pinned_address(host).into_iter().collect(),
        }
    } else {
        addresses.iter().map(|a| a.parse().unwrap()).collect()
    };
    common::decide(policy, &request, &Destination::Resolved(addresses), node)
}

fn decide(policy: &Policy, method: &str, url: &str, addresses: &[&str]) -> Decision {
    decide_with(policy, method, url, addresses, None)
}

const PUBLIC: &[&str] = &["140.82.112.5"];

fn assert_allowed(d: &Decision) {
    assert!(d.allow, "expected allow, got {} ({})", d.reason, d.message);
    assert_eq!(d.reason, Reason::Allowed);
}

fn assert_denied(d: &Decision, reason: &str) {
    assert!(
        !d.allow,
        "expected deny {reason}, got allow ({})",
        d.message
    );
    assert_eq!(d.reason.as_str(), reason, "message: {}", d.message);
    assert!(!d.message.is_empty());
}

const ALLOWLIST: &str = r#"
version: 1
team: acme
network:
  allow:
    - https://api.github.com
    - https://api.openai.com/v1
    - http://plain.example:8080/api
    - host: "*.example.com"
      ports: [443]
      access: read-only
      rules:
        - {method: GET, path: "/repos/**"}
        - {method: HEAD, path: "/status"}
      deny_rules:
        - {method: "*", path: "/repos/secret/**"}
    - host: "**.deep.example.org"
      ports: [443]
      access: read-write
"#;

#[test]
fn omitted_network_disables_everything() {
    let p = policy("version: 1\nteam: offline\n");
    assert!(!p.network_enabled());
    assert_denied(
        &decide(&p, "GET", "https://api.github.com/", PUBLIC),
        "network_disabled",
    );
}

#[test]
fn empty_allow_list_blocks_everything_but_is_not_disabled() {
    let p = policy("version: 1\nteam: acme\nnetwork:\n  allow: []\n");
    assert!(p.network_enabled());
    assert_denied(
        &decide(&p, "GET", "https://api.github.com/", PUBLIC),
        "host_not_allowed",
    );
}

#[test]
fn short_form_prefix_allows_its_origin_and_path() {
    let p = policy(ALLOWLIST);
    assert_allowed(&decide(&p, "GET", "https://api.github.com/repos/x", PUBLIC));
    assert_allowed(&decide(
        &p,
        "POST",
        "https://api.openai.com/v1/chat/completions",
        PUBLIC,
    ));
    assert_allowed(&decide(&p, "GET", "https://api.openai.com/v1", PUBLIC));
    assert_allowed(&decide(&p, "GET", "https://api.openai.com/v1?x=1", PUBLIC));
    let d = decide(&p, "GET", "https://api.github.com/", PUBLIC);
    assert_eq!(d.rule.as_deref(), Some("network.allow[0]"));
}

#[test]
fn path_prefix_is_on_a_segment_boundary() {
    let p = policy(ALLOWLIST);
    assert_denied(
        &decide(&p, "GET", "https://api.openai.com/v10/models", PUBLIC),
        "path_not_allowed",
    );
    assert_denied(
        &decide(&p, "GET", "https://api.openai.com/", PUBLIC),
        "path_not_allowed",
    );
}

#[test]
fn dot_segments_cannot_climb_out_of_a_prefix() {
    let p = policy(ALLOWLIST);
    for url in [
        "https://api.openai.com/v1/../admin",
        "https://api.openai.com/v1/%2e%2e/admin",
        "https://api.openai.com/v1/%2E%2E/admin",
        "https://api.openai.com/v1/.%2e/admin",
        "https://api.openai.com/v1\\..\\admin",
    ] {
        assert_denied(&decide(&p, "GET", url, PUBLIC), "path_not_allowed");
    }
}

#[test]
fn scheme_downgrade_is_refused() {
    let p = policy(ALLOWLIST);
    assert_denied(
        &decide(&p, "GET", "http://api.github.com/", PUBLIC),
        "scheme_not_allowed",
    );
}

#[test]
fn default_and_explicit_ports() {
    let p = policy(ALLOWLIST);
    assert_allowed(&decide(&p, "GET", "https://api.github.com:443/", PUBLIC));
    assert_denied(
        &decide(&p, "GET", "https://api.github.com:8443/", PUBLIC),
        "port_not_allowed",
    );
    assert_allowed(&decide(
        &p,
        "GET",
        "http://plain.example:8080/api/x",
        PUBLIC,
    ));
    assert_denied(
        &decide(&p, "GET", "http://plain.example/api/x", PUBLIC),
        "port_not_allowed",
    );
}

#[test]
fn host_tricks_do_not_match() {
    let p = policy(ALLOWLIST);
    for url in [
        "https://api.github.com.evil.com/",
        "https://evilapi.github.com/",
        "https://sub.api.github.com/",
        "https://api.github.com@evil.com/",
        "https://api.github.com:443@evil.com/",
        "https://github.com/",
    ] {
        assert_denied(&decide(&p, "GET", url, PUBLIC), "host_not_allowed");
    }
}

#[test]
fn userinfo_is_ignored_for_matching_and_never_reported() {
    let p = policy(ALLOWLIST);
    let d = decide(&p, "GET", "https://user:hunter2@api.github.com/", PUBLIC);
    assert_allowed(&d);
    let d = decide(
        &p,
        "GET",
        "https://user:hunter2@evil.com/?token=s3cret",
        PUBLIC,
    );
    assert!(
        !d.message.contains("hunter2") && !d.message.contains("s3cret"),
        "{}",
        d.message
    );
}

#[test]
fn trailing_dot_and_case_are_normalised() {
    let p = policy(ALLOWLIST);
    assert_allowed(&decide(&p, "GET", "https://API.GitHub.COM./", PUBLIC));
}

#[test]
fn wildcard_hosts_match_one_label_and_double_star_any_depth() {
    let p = policy(ALLOWLIST);
    assert_allowed(&decide(
        &p,
        "GET",
        "https://a.example.com/repos/x/y",
        PUBLIC,
    ));
    assert_denied(
        &decide(&p, "GET", "https://example.com/repos/x", PUBLIC),
        "host_not_allowed",
    );
    assert_denied(
        &decide(&p, "GET", "https://a.b.example.com/repos/x", PUBLIC),
        "host_not_allowed",
    );
    assert_allowed(&decide(&p, "POST", "https://a.deep.example.org/x", PUBLIC));
    assert_allowed(&decide(
        &p,
        "POST",
        "https://a.b.c.deep.example.org/x",
        PUBLIC,
    ));
    assert_denied(
        &decide(&p, "GET", "https://deep.example.org/x", PUBLIC),
        "host_not_allowed",
    );
}

#[test]
fn access_levels_limit_methods() {
    let p = policy(ALLOWLIST);
    assert_denied(
        &decide(&p, "POST", "https://a.example.com/repos/x", PUBLIC),
        "method_not_allowed",
    );
    assert_denied(
        &decide(&p, "DELETE", "https://a.deep.example.org/x", PUBLIC),
        "method_not_allowed",
    );
    assert_allowed(&decide(&p, "PATCH", "https://a.deep.example.org/x", PUBLIC));
}

#[test]
fn l7_rules_and_deny_rules() {
    let p = policy(ALLOWLIST);
    assert_allowed(&decide(&p, "HEAD", "https://a.example.com/status", PUBLIC));
    assert_denied(
        &decide(&p, "GET", "https://a.example.com/status", PUBLIC),
        "l7_not_matched",
    );
    assert_denied(
        &decide(&p, "GET", "https://a.example.com/other", PUBLIC),
        "l7_not_matched",
    );
    let d = decide(&p, "GET", "https://a.example.com/repos/secret/key", PUBLIC);
    assert_denied(&d, "l7_denied");
    assert_eq!(d.rule.as_deref(), Some("network.allow[3].deny_rules[0]"));
    // Encoded unreserved characters cannot dodge a deny rule.
    assert_denied(
        &decide(
            &p,
            "GET",
            "https://a.example.com/repos/%73ecret/key",
            PUBLIC,
        ),
        "l7_denied",
    );
}

#[test]
fn encoded_slash_is_refused_unless_the_entry_opts_in() {
    let p = policy(ALLOWLIST);
    assert_denied(
        &decide(&p, "GET", "https://api.github.com/repos/a%2Fb", PUBLIC),
        "encoded_slash",
    );
    let p = policy("version: 1\nteam: t\nnetwork:\n  allow:\n    - host: api.github.com\n      allow_encoded_slash: true\n");
    assert_allowed(&decide(
        &p,
        "GET",
        "https://api.github.com/repos/a%2Fb",
        PUBLIC,
    ));
}

#[test]
fn ip_literals_in_every_encoding_are_classified() {
    let p = policy("version: 1\nteam: t\nnetwork:\n  allow_all: true\n");
    for url in [
        "http://2130706433/",
        "http://0x7f.1/",
        "http://017700000001/",
        "http://127.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[2002:7f00:1::1]/",
        "http://169.254.169.254/latest/meta-data",
        "http://0.0.0.0/",
        "http://[::]/",
    ] {
        assert_denied(&decide(&p, "GET", url, &[]), "address_blocked");
    }
    for url in [
        "http://10.0.0.1/",
        "http://[::ffff:10.0.0.1]/",
        "http://[64:ff9b::a00:1]/",
        "http://[2002:a00:1::1]/",
        "http://100.64.0.1/",
        "http://[fd00::1]/",
        "http://[2001:db8::1]/",
    ] {
        assert_denied(&decide(&p, "GET", url, &[]), "private_address");
    }
    assert_allowed(&decide(&p, "GET", "http://8.8.8.8/", &[]));
}

#[test]
fn allow_all_keeps_private_ranges_blocked() {
    let p = policy("version: 1\nteam: t\nnetwork:\n  allow_all: true\n");
    assert_allowed(&decide(&p, "GET", "https://anything.example/", PUBLIC));
    let d = decide(&p, "GET", "https://internal.example/", &["10.1.2.3"]);
    assert_denied(&d, "private_address");
    assert_eq!(d.address, Some("10.1.2.3".parse().unwrap()));
}

#[test]
fn a_name_resolving_to_mixed_addresses_is_refused() {
    let p = policy(ALLOWLIST);
    assert_denied(
        &decide(
            &p,
            "GET",
            "https://api.github.com/",
            &["140.82.112.5", "10.0.0.7"],
        ),
        "private_address",
    );
    assert_denied(
        &decide(
            &p,
            "GET",
            "https://api.github.com/",
            &["140.82.112.5", "127.0.0.1"],
        ),
        "address_blocked",
    );
    assert_denied(
        &decide(
            &p,
            "GET",
            "https://api.github.com/",
            &["::ffff:169.254.169.254"],
        ),
        "address_blocked",
    );
}

#[test]
fn unresolvable_names_are_refused() {
    let p = policy(ALLOWLIST);
    let url = NormalizedUrl::parse("https://api.github.com/").unwrap();
    let request = Request {
        method: "GET",
        url: &url,
        connect: false,
        header_names: &[],
        credential: None,
        quotas: &[],
    };
    assert_denied(
        &common::decide(
            &p,
            &request,
            &Destination::Resolved(vec![]),
            &HostAddresses::none(),
        ),
        "cannot_resolve",
    );
    // A caller that forgets to resolve never gets an allow.
    assert_denied(
        &common::decide(
            &p,
            &request,
            &Destination::Unresolved,
            &HostAddresses::none(),
        ),
        "not_resolved",
    );
}

const INTERNAL: &str = r#"
version: 1
team: tools
network:
  allow:
    - host: tools.internal
      ports: [8000]
      allowed_ips: [10.86.8.0/24]
    - host: other.internal
      ports: [8000]
  hosts:
    tools.internal: 10.86.8.223
    other.internal: 10.86.8.224
"#;

#[test]
fn allowed_ips_admit_exactly_their_cidr() {
    let p = policy(INTERNAL);
    assert_allowed(&decide(&p, "GET", "http://tools.internal:8000/x", &[]));
    assert_allowed(&decide(
        &p,
        "GET",
        "http://tools.internal:8000/x",
        &["10.86.8.0"],
    ));
    assert_allowed(&decide(
        &p,
        "GET",
        "http://tools.internal:8000/x",
        &["10.86.8.255"],
    ));
    assert_allowed(&decide(
        &p,
        "GET",
        "http://tools.internal:8000/x",
        &["::ffff:10.86.8.5"],
    ));
    assert_denied(
        &decide(&p, "GET", "http://tools.internal:8000/x", &["10.86.9.1"]),
        "private_address",
    );
    assert_denied(
        &decide(&p, "GET", "http://tools.internal:8000/x", &["10.86.7.255"]),
        "private_address",
    );
    assert_denied(
        &decide(&p, "GET", "http://tools.internal:8000/x", &["192.168.1.1"]),
        "private_address",
    );
    // Always-blocked stays blocked even inside an allowed entry.
    assert_denied(
        &decide(&p, "GET", "http://tools.internal:8000/x", &["127.0.0.1"]),
        "address_blocked",
    );
}

#[test]
fn private_address_without_allowed_ips_is_refused() {
    let p = policy(INTERNAL);
    assert_denied(
        &decide(&p, "GET", "http://other.internal:8000/x", &[]),
        "private_address",
    );
}

#[test]
fn block_private_ips_false_lets_listed_hosts_reach_private_addresses() {
    let p = policy("version: 1\nteam: t\nnetwork:\n  block_private_ips: false\n  allow:\n    - host: db.internal\n  hosts:\n    db.internal: 10.0.0.5\n");
    assert_allowed(&decide(&p, "GET", "http://db.internal/", &[]));
    assert_denied(
        &decide(&p, "GET", "http://db.internal/", &["169.254.169.254"]),
        "address_blocked",
    );
}

/// A node whose interfaces hold 10.201.0.1 (the host side of a veth), 192.0.2.2 and
/// fd00::2, besides loopback.
fn node() -> HostAddresses {
    ["10.201.0.1", "192.0.2.2", "fd00::2", "127.0.0.1", "::1"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect()
}

#[test]
fn the_nodes_own_addresses_are_refused_whatever_the_policy_opens() {
    for policy_text in [
        // Every private address opened.
        "version: 1\nteam: t\nnetwork:\n  block_private_ips: false\n  allow:\n    - host: gw.internal\n  hosts:\n    gw.internal: 10.201.0.1\n",
        // An allowed_ips entry covering the node's address.
        "version: 1\nteam: t\nnetwork:\n  allow:\n    - host: gw.internal\n      allowed_ips: [10.0.0.0/8, 192.0.2.0/24, 'fd00::/8']\n  hosts:\n    gw.internal: 10.201.0.1\n",
        // allow_all with private addresses open.
        "version: 1\nteam: t\nnetwork:\n  allow_all: true\n  block_private_ips: false\n  hosts:\n    gw.internal: 10.201.0.1\n",
    ] {
        let p = policy(policy_text);
        for address in [
            "10.201.0.1",
            "::ffff:10.201.0.1",
            "64:ff9b::ac9:1",
            "192.0.2.2",
            "fd00::2",
        ] {
            let d = decide_on_node(&p, "GET", "http://gw.internal/", &[address], None, &node());
            assert_denied(&d, "host_address");
            assert_eq!(d.address, Some(address.parse().unwrap()), "{address}");
            assert_eq!(d.worst_class(), Some(tollgate_policy::ip::AddressClass::AlwaysBlocked));
            assert!(d.message.contains("this node"), "{}", d.message);
        }
        // One address of the node among others refuses the name.
        assert_denied(
            &decide_on_node(&p, "GET", "http://gw.internal/", &["10.201.0.2", "10.201.0.1"], None, &node()),
            "host_address",
        );
        // Another address of the same subnet is not the node's.
        assert_allowed(&decide_on_node(&p, "GET", "http://gw.internal/", &["10.201.0.2"], None, &node()));
        // An IP literal is the same address.
        if policy_text.contains("allow_all") {
            assert_denied(
                &decide_on_node(&p, "GET", "http://10.201.0.1/", &[], None, &node()),
                "host_address",
            );
        }
    }
}

#[test]
fn loopback_keeps_its_own_reason_on_the_node() {
    let p = policy("version: 1\nteam: t\nnetwork:\n  block_private_ips: false\n  allow:\n    - host: gw.internal\n");
    let d = decide_on_node(
        &p,
        "GET",
        "http://gw.internal/",
        &["127.0.0.1"],
        None,
        &node(),
    );
    assert_denied(&d, "address_blocked");
    assert!(d.message.contains("loopback"), "{}", d.message);
}

#[test]
fn connect_is_decided_on_host_and_port() {
    let p = policy(ALLOWLIST);
    let url = NormalizedUrl::from_parts("https", "a.example.com:443", "/").unwrap();
    let request = Request {
        method: "CONNECT",
        url: &url,
        connect: true,
        header_names: &[],
        credential: None,
        quotas: &[],
    };
    let d = common::decide(
        &p,
        &request,
        &Destination::Resolved(vec!["93.184.216.34".parse().unwrap()]),
        &HostAddresses::none(),
    );
    assert_allowed(&d);
    let url = NormalizedUrl::from_parts("https", "a.example.com:8443", "/").unwrap();
    let request = Request {
        method: "CONNECT",
        url: &url,
        connect: true,
        header_names: &[],
        credential: None,
        quotas: &[],
    };
    assert_denied(
        &common::decide(
            &p,
            &request,
            &Destination::Unresolved,
            &HostAddresses::none(),
        ),
        "port_not_allowed",
    );
}

const TEAM_REGO: &str = r#"
version: 1
team: acme
network:
  allow:
    - https://api.github.com
rego: |
  package tollgate.team
  import rego.v1

  deny contains msg if {
    input.request.method == "DELETE"
    msg := "deletes are not allowed"
  }

  set_headers["X-Team"] := input.team
"#;

#[test]
fn team_rego_can_add_a_denial() {
    let p = policy(TEAM_REGO);
    let d = decide(&p, "DELETE", "https://api.github.com/repos/x", PUBLIC);
    assert_denied(&d, "team_rule");
    assert_eq!(d.message, "deletes are not allowed");
    let d = decide(&p, "GET", "https://api.github.com/repos/x", PUBLIC);
    assert_allowed(&d);
    assert_eq!(
        d.team.set_headers.get("X-Team").map(String::as_str),
        Some("acme")
    );
}

#[test]
fn team_rego_cannot_widen() {
    let p = policy(
        r#"
version: 1
team: acme
network:
  allow:
    - https://api.github.com
rego: |
  package tollgate.team
  import rego.v1
  allow := true
  decision := {"allow": true, "reason": "allowed"}
  deny := set()
"#,
    );
    assert_denied(
        &decide(&p, "GET", "https://evil.com/", PUBLIC),
        "host_not_allowed",
    );
    assert_denied(
        &decide(&p, "GET", "https://api.github.com/", &["10.0.0.1"]),
        "private_address",
    );
}

#[test]
fn team_rego_sees_the_request_and_credential() {
    let p = policy(
        r#"
version: 1
team: acme
network:
  allow:
    - https://api.github.com
rego: |
  package tollgate.team
  import rego.v1
  deny contains "no credentials on /public" if {
    startswith(input.request.path, "/public")
    input.credential.provider != null
  }
"#,
    );
    assert_allowed(&decide_with(
        &p,
        "GET",
        "https://api.github.com/public/x",
        PUBLIC,
        None,
    ));
    assert_denied(
        &decide_with(
            &p,
            "GET",
            "https://api.github.com/public/x",
            PUBLIC,
            Some("GitHub"),
        ),
        "team_rule",
    );
}

#[test]
fn a_team_rule_that_errors_fails_closed() {
    let p = policy(
        r#"
version: 1
team: acme
network:
  allow:
    - https://api.github.com
rego: |
  package tollgate.team
  import rego.v1
  deny contains 42 if input.request.method == "GET"
"#,
    );
    let d = decide(&p, "GET", "https://api.github.com/", PUBLIC);
    assert!(!d.allow, "{d:?}");
}

/// A team module evaluated elsewhere (the supervisor's worker processes): the policy crate
/// hands it over at load, and an evaluator's failure is a `team_rule_error` that says why.
#[test]
fn an_isolated_team_module_is_compiled_and_evaluated_by_its_starter() {
    use std::sync::{Arc, Mutex};
    use tollgate_policy::rego::{RegoCompileError, Value};
    use tollgate_policy::{TeamEvaluator, TeamModule, TeamOutcome, TeamRego};

    struct Failing;
    impl TeamEvaluator for Failing {
        fn evaluate(&self, _: &Value) -> Result<TeamOutcome, String> {
            Err("their evaluator aborted\nwith details on a second line".into())
        }
    }
    let seen: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let start = |module: &TeamModule| -> Result<Arc<dyn TeamEvaluator>, RegoCompileError> {
        seen.lock().unwrap().push(module.source.clone());
        Ok(Arc::new(Failing))
    };
    let p = Policy::from_yaml_with("t.yaml", TEAM_REGO, TeamRego::Isolated(&start))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert!(seen.lock().unwrap()[0].starts_with("package tollgate.team"));
    let d = decide(&p, "GET", "https://api.github.com/x", PUBLIC);
    assert_denied(&d, "team_rule_error");
    assert!(
        d.message.contains("(their evaluator aborted)"),
        "{}",
        d.message
    );
    // A compile error from the starter is a policy error at its line in the file.
    let refuse = |_: &TeamModule| -> Result<Arc<dyn TeamEvaluator>, RegoCompileError> {
        Err(RegoCompileError {
            line: Some(2),
            column: Some(3),
            message: "invalid Rego: nope".into(),
        })
    };
    let errors = Policy::from_yaml_with("t.yaml", TEAM_REGO, TeamRego::Isolated(&refuse))
        .expect_err("refused");
    assert_eq!(errors.to_string(), "t.yaml:9:3: invalid Rego: nope");
}
