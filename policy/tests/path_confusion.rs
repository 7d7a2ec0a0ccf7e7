//! Paths and methods an upstream reads differently from tollgate (issue #10, section 2).
//!
//! Each case is a request that slipped past a `deny_rules` entry because the upstream server
//! (Tomcat, Spring, IIS, nginx, a case-insensitive file system) turns it into the denied path
//! after tollgate decided: path parameters (`;`), double-encoded escapes (`%25`), segments
//! ending in `.`, another letter case, a method in lower case. Every one is refused by
//! default, each path rule has its opt-in on the allow entry, and the opt-ins lift nothing
//! else.

mod common;

use std::net::IpAddr;
use tollgate_policy::url::NormalizedUrl;
use tollgate_policy::{Decision, Destination, HostAddresses, Policy, Request};

const POLICY: &str = r#"
version: 1
team: acme
network:
  allow:
    - host: app.example.com
      deny_rules:
        - {method: "*", path: "/admin/**"}
        - {method: DELETE, path: "/del/**"}
        - {method: GET, path: "/getonly/**"}
        - {method: "*", path: "/secret/*.json"}
    - host: open.example.com
      allow_path_parameters: true
      allow_encoded_percent: true
      allow_trailing_dot: true
      deny_rules:
        - {method: "*", path: "/admin/**"}
    - host: params.example.com
      allow_path_parameters: true
    - host: percent.example.com
      allow_encoded_percent: true
    - host: dots.example.com
      allow_trailing_dot: true
    - host: rules.example.com
      rules:
        - {method: GET, path: "/public/**"}
        - {method: "*", path: "/Docs/*.PDF"}
    - https://prefix.example.com/v1
"#;

fn policy() -> Policy {
    Policy::from_yaml("paths.yaml", POLICY).unwrap_or_else(|e| panic!("policy should load:\n{e}"))
}

const PUBLIC: &[&str] = &["140.82.112.5"];

/// Decides like the proxy: first without addresses, then with a public one.
fn decide(policy: &Policy, method: &str, url: &str) -> Decision {
    let url = NormalizedUrl::parse(url).unwrap_or_else(|e| panic!("{url} should parse: {e}"));
    let request = Request {
        method,
        url: &url,
        connect: false,
        header_names: &[],
        credential: None,
        quotas: &[],
    };
    let node = HostAddresses::none();
    let first = common::decide(policy, &request, &Destination::Unresolved, &node);
    if !first.needs_resolution() {
        return first;
    }
    let addresses: Vec<IpAddr> = PUBLIC.iter().map(|a| a.parse().unwrap()).collect();
    common::decide(policy, &request, &Destination::Resolved(addresses), &node)
}

#[track_caller]
fn assert_allowed(policy: &Policy, method: &str, url: &str) {
    let d = decide(policy, method, url);
    assert!(
        d.allow,
        "{method} {url}: expected allow, got {} ({})",
        d.reason, d.message
    );
}

#[track_caller]
fn assert_refused(policy: &Policy, method: &str, url: &str, reason: &str) -> Decision {
    let d = decide(policy, method, url);
    assert!(!d.allow, "{method} {url}: expected {reason}, got allow");
    assert_eq!(d.reason.as_str(), reason, "{method} {url}: {}", d.message);
    d
}

#[test]
fn deny_rules_match_whatever_the_letter_case() {
    let p = policy();
    for path in [
        "/admin/x",
        "/ADMIN/x",
        "/Admin/x",
        "/aDmIn/X",
        "/%41DMIN/x",
        "/%41%44%4d%49%4e/x",
        "/ADMIN",
        "/x/../ADMIN/x",
        "/x/%2E%2E/Admin/x",
        "/SECRET/KEY.JSON",
        "/secret/key.Json",
    ] {
        let d = assert_refused(
            &p,
            "GET",
            &format!("https://app.example.com{path}"),
            "l7_denied",
        );
        assert!(d.rule.as_deref().unwrap().contains("deny_rules"), "{path}");
    }
    // The deny rule's method is still exact (upper case, as methods are).
    assert_refused(&p, "DELETE", "https://app.example.com/DEL/x", "l7_denied");
    assert_refused(&p, "GET", "https://app.example.com/GetOnly/x", "l7_denied");
    assert_allowed(&p, "POST", "https://app.example.com/GETONLY/x");
    // No opt-in makes a denial case-sensitive.
    assert_refused(&p, "GET", "https://open.example.com/ADMIN/x", "l7_denied");
    // Near names stay allowed.
    for path in ["/administrator", "/adm1n/x", "/x/admin", "/secret/key.yaml"] {
        assert_allowed(&p, "GET", &format!("https://app.example.com{path}"));
    }
}

#[test]
fn allow_rules_and_prefixes_stay_exact() {
    let p = policy();
    assert_allowed(&p, "GET", "https://rules.example.com/public/x");
    assert_refused(
        &p,
        "GET",
        "https://rules.example.com/PUBLIC/x",
        "l7_not_matched",
    );
    assert_refused(
        &p,
        "GET",
        "https://rules.example.com/Public/x",
        "l7_not_matched",
    );
    assert_allowed(&p, "GET", "https://rules.example.com/Docs/a.PDF");
    assert_refused(
        &p,
        "GET",
        "https://rules.example.com/docs/a.pdf",
        "l7_not_matched",
    );
    assert_allowed(&p, "GET", "https://prefix.example.com/v1/x");
    assert_refused(
        &p,
        "GET",
        "https://prefix.example.com/V1/x",
        "path_not_allowed",
    );
}

#[test]
fn a_semicolon_in_a_path_segment_is_refused() {
    let p = policy();
    for path in [
        "/admin;/x",
        "/admin;foo=bar/x",
        "/x/..;/admin/x",
        "/x/.;/admin/x",
        "/x/%2e%2e;/admin/x",
        "/x/%2E.;/admin/x",
        "/.;/admin",
        "/a;jsessionid=1",
        "/a/b;",
        "/;/admin/x",
        // Encoded: a server (or a proxy in front of it) that decodes `%3B` sees `;`.
        "/admin%3b/x",
        "/admin%3B/x",
        "/x/..%3B/admin/x",
    ] {
        let d = assert_refused(
            &p,
            "GET",
            &format!("https://app.example.com{path}"),
            "path_parameter",
        );
        assert_eq!(d.rule.as_deref(), Some("network.allow[0]"), "{path}");
        assert!(
            d.message.contains("allow_path_parameters: true"),
            "{}",
            d.message
        );
    }
    // The query is not the path.
    assert_allowed(&p, "GET", "https://app.example.com/x?a=1;b=2");
    assert_allowed(&p, "GET", "https://app.example.com/x?a=%3B");
    // The opt-in lets the parameters through, and only them.
    assert_allowed(&p, "GET", "https://params.example.com/a;jsessionid=1");
    assert_allowed(&p, "GET", "https://params.example.com/x/..;/y");
    assert_allowed(&p, "GET", "https://params.example.com/a%3Bb");
    // An opt-in never opens a way around the entry's deny rules: they also match the
    // path as a lenient server reads it.
    assert_refused(&p, "GET", "https://open.example.com/admin;/x", "l7_denied");
    assert_refused(
        &p,
        "GET",
        "https://params.example.com/a%252fb",
        "encoded_percent",
    );
    assert_refused(&p, "GET", "https://params.example.com/a./b", "trailing_dot");
    assert_refused(
        &p,
        "GET",
        "https://params.example.com/a%2Fb",
        "encoded_slash",
    );
}

#[test]
fn an_encoded_percent_is_refused() {
    let p = policy();
    for path in [
        "/admin%252fx",
        "/admin%252Fx",
        "/%252e%252e/admin",
        "/x/%252E%252E/admin/x",
        "/%2561dmin/x",
        "/admin%253bx",
        "/a%25",
        "/a%2500",
        "/100%25",
    ] {
        let d = assert_refused(
            &p,
            "GET",
            &format!("https://app.example.com{path}"),
            "encoded_percent",
        );
        assert!(
            d.message.contains("allow_encoded_percent: true"),
            "{}",
            d.message
        );
    }
    assert_allowed(&p, "GET", "https://app.example.com/x?q=100%25");
    assert_allowed(&p, "GET", "https://percent.example.com/100%25");
    // An opt-in never opens a way around the entry's deny rules: they also match the
    // path as a lenient server reads it.
    assert_refused(
        &p,
        "GET",
        "https://open.example.com/admin%252fx",
        "l7_denied",
    );
    assert_refused(
        &p,
        "GET",
        "https://percent.example.com/a;b",
        "path_parameter",
    );
    assert_refused(
        &p,
        "GET",
        "https://percent.example.com/a./b",
        "trailing_dot",
    );
}

#[test]
fn a_segment_ending_in_a_dot_is_refused() {
    let p = policy();
    for path in [
        "/admin./x",
        "/admin../x",
        "/admin.../x",
        "/admin%2e/x",
        "/admin%2E/x",
        "/admin.%2e/x",
        "/x.",
        "/x/admin.",
        "/x/admin%2e",
        "/...",
        "/a/.../b",
        "/ADMIN./x",
    ] {
        let d = assert_refused(
            &p,
            "GET",
            &format!("https://app.example.com{path}"),
            "trailing_dot",
        );
        assert!(
            d.message.contains("allow_trailing_dot: true"),
            "{}",
            d.message
        );
    }
    // Dot segments are resolved before anything is matched, so they never count.
    assert_allowed(&p, "GET", "https://app.example.com/x/.");
    assert_allowed(&p, "GET", "https://app.example.com/x/./y");
    assert_allowed(&p, "GET", "https://app.example.com/x/y/..");
    assert_refused(&p, "GET", "https://app.example.com/admin/x/.", "l7_denied");
    assert_refused(
        &p,
        "GET",
        "https://app.example.com/x/%2e%2e/admin/x",
        "l7_denied",
    );
    // Dots elsewhere in a segment are ordinary.
    for path in [
        "/.well-known/x",
        "/v1.2/x",
        "/files/report.pdf",
        "/..a/b",
        "/a.b.c",
    ] {
        assert_allowed(&p, "GET", &format!("https://app.example.com{path}"));
    }
    assert_allowed(&p, "GET", "https://dots.example.com/x.");
    // An opt-in never opens a way around the entry's deny rules: they also match the
    // path as a lenient server reads it.
    assert_refused(&p, "GET", "https://open.example.com/admin./x", "l7_denied");
    assert_refused(&p, "GET", "https://dots.example.com/a;b", "path_parameter");
    assert_refused(
        &p,
        "GET",
        "https://dots.example.com/a%25b",
        "encoded_percent",
    );
}

#[test]
fn encoded_slashes_in_every_case_are_still_refused() {
    let p = policy();
    for path in ["/admin%2fx", "/admin%2Fx", "/admin%5cx", "/x/..%2Fadmin"] {
        assert_refused(
            &p,
            "GET",
            &format!("https://app.example.com{path}"),
            "encoded_slash",
        );
    }
    // The path-confusion opt-ins do not include the slash one.
    assert_refused(
        &p,
        "GET",
        "https://open.example.com/admin%2Fx",
        "encoded_slash",
    );
}

#[test]
fn a_prefix_cannot_be_climbed_out_of_with_path_parameters() {
    let p = policy();
    assert_refused(
        &p,
        "GET",
        "https://prefix.example.com/v1/..;/admin",
        "path_parameter",
    );
    assert_refused(
        &p,
        "GET",
        "https://prefix.example.com/v1/%2e%2e%3b/admin",
        "path_parameter",
    );
    assert_refused(
        &p,
        "GET",
        "https://prefix.example.com/v1/%252e%252e/admin",
        "encoded_percent",
    );
    assert_refused(
        &p,
        "GET",
        "https://prefix.example.com/v1/x./",
        "trailing_dot",
    );
}

#[test]
fn methods_that_are_not_upper_case_are_refused_never_upper_cased() {
    let p = policy();
    for (method, path) in [
        ("delete", "/del/x"),
        ("Delete", "/del/x"),
        ("gEt", "/getonly/x"),
        ("get", "/getonly/x"),
        ("get", "/ok"),
        ("post", "/ok"),
    ] {
        let d = assert_refused(
            &p,
            method,
            &format!("https://app.example.com{path}"),
            "method_not_uppercase",
        );
        assert!(d.message.contains("upper case"), "{}", d.message);
    }
    assert_refused(&p, "DELETE", "https://app.example.com/del/x", "l7_denied");
    assert_refused(&p, "GET", "https://app.example.com/getonly/x", "l7_denied");
    assert_allowed(&p, "GET", "https://app.example.com/ok");
    assert_allowed(&p, "DELETE", "https://app.example.com/ok");
    // Extension methods are tokens too; upper case passes.
    assert_allowed(&p, "PROPFIND", "https://app.example.com/ok");
    assert_allowed(&p, "M-SEARCH", "https://app.example.com/ok");
    for method in ["", "GE T", "GET\r\n", "GÉT", "GET/", "(GET)"] {
        assert_refused(
            &p,
            method,
            "https://app.example.com/ok",
            "method_not_uppercase",
        );
    }
}
