//! Refusals the upstream cannot be talked around, end to end (issue #10, sections 2, 4, 6):
//! method case, path confusion against `deny_rules` and its opt-ins, the denial limit and the
//! violation circuit breaker, the reason of a refused tunnel as the sandbox sees it, and
//! `policy eval` giving the proxy's verdict.
//!
//! Real clients inside `tollgate run` (`/usr/bin/curl --path-as-is`, Python `http.client`,
//! raw sockets) talk HTTP and HTTPS (intercepted) to an upstream in a network namespace of its
//! own that writes down every request line it receives (`transparent_upstream.py`), so each test
//! asserts what never reached it, not only what the client was told.
//!
//! Needs root. No packet goes anywhere but loopback and the upstream's veth pair.

mod refusals_support;

use refusals_support::{
    assert_ran, entry, events, origin, refusal_body, refused_events, tollgate_error, Bench, Eval,
    Outcome, DENY_ADMIN,
};
use serde_json::Value;
use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{assert_execution_gone, Sandbox},
};

/// Asserts a refusal as the client saw it: `status`, `Tollgate-Error: code`, a JSON body with
/// that code and a message.
fn assert_refused(what: &str, response: &Value, status: u64, code: &str) {
    assert_eq!(response["status"], status, "{what}: {response:#}");
    assert_eq!(tollgate_error(response), Some(code), "{what}: {response:#}");
    let body = refusal_body(response);
    assert_eq!(body["error"], code, "{what}: {response:#}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: a refusal without a message: {response:#}"
    );
}

/// Asserts no check of a test found anything `wrong`, showing the run with what did.
fn assert_nothing_wrong(wrong: &[String], outcome: &Outcome) {
    assert!(
        wrong.is_empty(),
        "{}\n{}",
        wrong.join("\n"),
        outcome.describe()
    );
}

/// The request lines the upstream received that are not in `expected` (path prefixes).
fn unexpected(bench: &Bench, expected: &[&str]) -> Vec<Value> {
    bench
        .seen()
        .into_iter()
        .filter(|r| {
            !expected
                .iter()
                .any(|p| r["path"].as_str().is_some_and(|path| path.starts_with(p)))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. Method case
// ---------------------------------------------------------------------------------------

const NOT_UPPER: [&str; 4] = ["delete", "gEt", "Get", "Delete"];

#[test]
fn methods_not_in_upper_case_are_refused_and_never_reach_the_upstream() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("refusals-method");
    let allow = [
        entry(
            "deny.up.test",
            "      deny_rules:\n        - {method: DELETE, path: \"/**\"}\n        - {method: GET, path: \"/getonly/**\"}\n",
        ),
        entry(
            "allow.up.test",
            "      rules:\n        - {method: GET, path: \"/**\"}\n",
        ),
    ]
    .concat();
    let policy = bench.policy(
        &["deny.up.test", "allow.up.test"],
        &allow,
        "limits:\n  max_requests: 100\n",
    );
    let script = format!(
        r#"
NOT_UPPER = {NOT_UPPER:?}
for scheme, port in [("http", ":8080"), ("https", "")]:
    for host, path in [("deny.up.test", "/getonly/"), ("allow.up.test", "/ok/")]:
        base = "%s://%s%s" % (scheme, host, port)
        for m in NOT_UPPER:
            results["curl %s %s %s" % (scheme, host, m)] = brief(curl("c", "-X", m, base + path + m))
            results["hc %s %s %s" % (scheme, host, m)] = brief(hc("h", m, base + path + m))
    results["DELETE " + scheme] = brief(curl("c", "-X", "DELETE", "%s://deny.up.test%s/getonly/x" % (scheme, port)))
    results["GET getonly " + scheme] = brief(hc("h", "GET", "%s://deny.up.test%s/getonly/x" % (scheme, port)))
    results["GET ok " + scheme] = brief(hc("h", "GET", "%s://allow.up.test%s/ok/upper" % (scheme, port)))
    results["GET deny-host ok " + scheme] = brief(curl("c", "%s://deny.up.test%s/ok/upper" % (scheme, port)))
results["connect lower"] = brief(raw("r", b"connect deny.up.test:443 HTTP/1.1\r\nHost: deny.up.test:443\r\n\r\n"))
"#
    );
    let outcome = bench.run(Sandbox::new(), &policy, &script);
    assert_ran(&outcome);

    let mut refused_not_upper = 0;
    for scheme in ["http", "https"] {
        for host in ["deny.up.test", "allow.up.test"] {
            for m in NOT_UPPER {
                for client in ["curl", "hc"] {
                    let name = format!("{client} {scheme} {host} {m}");
                    let got = outcome.result(&name);
                    assert_eq!(got["status"], 400, "{name}: {got}\n{}", outcome.describe());
                    assert_eq!(got["error"], "invalid_request", "{name}: {got}");
                    assert!(got["message"].as_str().is_some_and(|m| !m.is_empty()));
                    refused_not_upper += 1;
                }
            }
        }
        for name in [format!("DELETE {scheme}"), format!("GET getonly {scheme}")] {
            let got = outcome.result(&name);
            assert_eq!(got["status"], 403, "{name}: {got}");
            assert_eq!(got["error"], "policy_denied", "{name}: {got}");
        }
        for name in [
            format!("GET ok {scheme}"),
            format!("GET deny-host ok {scheme}"),
        ] {
            assert_eq!(outcome.result(&name)["status"], 200, "{name}");
        }
    }
    assert_eq!(outcome.result("connect lower")["status"], 400);

    // The upstream saw the four upper-case GETs of /ok/ and nothing else: no method it could
    // have upper-cased itself.
    let seen = bench.seen();
    assert_eq!(seen.len(), 4, "the upstream saw: {seen:#?}");
    for request in &seen {
        assert_eq!(request["method"], "GET", "{request}");
        assert!(request["path"].as_str().unwrap().contains("/ok/upper"));
    }

    // The audit says why, once per refused request (aggregated records count their repeats).
    let not_upper: Vec<&Value> = outcome
        .records("http")
        .into_iter()
        .filter(|r| r["reason"] == "method_not_uppercase")
        .filter(|r| r["method"].as_str().is_some_and(|m| NOT_UPPER.contains(&m)))
        .collect();
    assert_eq!(
        not_upper.iter().map(|r| events(r)).sum::<u64>(),
        refused_not_upper,
        "{}",
        outcome.audit_text
    );
    for record in &not_upper {
        assert_eq!(record["decision"], "deny", "{record}");
        assert_eq!(record["error"], "invalid_request", "{record}");
        assert_eq!(record["status"], 400, "{record}");
        // The operator sees what was asked for: the method as sent, and where.
        let method = record["method"].as_str().unwrap_or_default();
        assert!(
            record["path"]
                .as_str()
                .is_some_and(|p| p == format!("/getonly/{method}") || p == format!("/ok/{method}")),
            "the record names the path: {record}"
        );
    }

    // `policy eval` agrees: an input error (2) for every method not in upper case, on every
    // URL, where the upper-case spelling is decided.
    for scheme in ["http", "https"] {
        for (host, path) in [("deny.up.test", "/getonly/x"), ("allow.up.test", "/ok/x")] {
            let url = format!("{}{path}", origin(scheme, host));
            for m in NOT_UPPER {
                let eval = bench.eval(&outcome.policy, m, &url, &[]);
                assert_eq!(eval.code, 2, "policy eval {m} {url}: {eval:?}");
                assert_no_panic(&eval);
            }
        }
        let deny = format!("{}/getonly/x", origin(scheme, "deny.up.test"));
        for method in ["DELETE", "GET"] {
            let eval = bench.eval(&outcome.policy, method, &deny, &[]);
            assert_eq!(eval.code, 1, "policy eval {method} {deny}: {eval:?}");
            assert_eq!(eval.json["reason"], "l7_denied", "{eval:?}");
        }
        let ok = format!("{}/ok/x", origin(scheme, "allow.up.test"));
        let eval = bench.eval(&outcome.policy, "GET", &ok, &[]);
        assert_eq!(eval.code, 0, "policy eval GET {ok}: {eval:?}");
    }
    for m in ["connect", "Connect"] {
        let eval = bench.eval(&outcome.policy, m, "deny.up.test:443", &[]);
        assert_eq!(eval.code, 2, "policy eval {m}: {eval:?}");
    }
}

/// `scheme host: request line` of each logged request, for assertion messages.
fn lines(requests: &[Value]) -> Vec<String> {
    requests
        .iter()
        .map(|r| {
            let host = r["headers"]
                .as_array()
                .and_then(|h| h.iter().find(|p| p[0] == "host"))
                .and_then(|p| p[1].as_str())
                .unwrap_or("?");
            format!(
                "{} {host}: {}",
                r["scheme"].as_str().unwrap_or("?"),
                r["line"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

fn assert_no_panic(eval: &Eval) {
    assert!(
        !eval.stderr.contains("panicked") && !eval.stdout.contains("panicked"),
        "{eval:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 2. Path confusion against deny_rules, and the entry's opt-ins
// ---------------------------------------------------------------------------------------

/// Spellings of a path under `/admin/` that some server takes for `/admin/...` (case-blind
/// servers, Tomcat's `;` parameters and `..;`, double decoding, IIS trailing dots), each of
/// which a `deny_rules: [{path: /admin/**}]` must refuse.
const DODGES: [&str; 16] = [
    "/ADMIN/x",
    "/Admin/x",
    "/aDmIn/x",
    "/ADMIN",
    "/admin;/x",
    "/admin;jsessionid=1/x",
    "/x/..;/admin/x",
    "/admin%252fx",
    "/admin%2e/x",
    "/admin./x",
    "/admin../x",
    "/admin.",
    "/%61dmin/x",
    "/%41DMIN/x",
    "/admin%3b/x",
    "/admin%3B/x",
];

#[test]
fn deny_rules_cannot_be_dodged_by_case_parameters_encodings_or_dots() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("refusals-dodge");
    // One host per spelling: the audit record of each refusal is then found by its host.
    let hosts: Vec<String> = (0..DODGES.len()).map(|i| format!("p{i}.up.test")).collect();
    let mut names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    names.push("ok.up.test");
    let policy = bench.policy(
        &names,
        &entry("\"*.up.test\"", DENY_ADMIN),
        "limits:\n  max_requests: 100\n",
    );
    let script = format!(
        r#"
DODGES = {DODGES:?}
for scheme, port in [("http", ":8080"), ("https", "")]:
    for i, path in enumerate(DODGES):
        url = "%s://p%d.up.test%s%s" % (scheme, i, port, path)
        results["curl %s %d" % (scheme, i)] = brief(curl("c", "--path-as-is", url))
        results["hc %s %d" % (scheme, i)] = brief(hc("h", "GET", url))
    results["ok " + scheme] = brief(hc("h", "GET", "%s://ok.up.test%s/ok/x" % (scheme, port)))
"#
    );
    let outcome = bench.run(Sandbox::new(), &policy, &script);
    assert_ran(&outcome);
    for scheme in ["http", "https"] {
        assert_eq!(
            outcome.result(&format!("ok {scheme}"))["status"],
            200,
            "the control request\n{}",
            outcome.describe()
        );
    }
    let dodged = lines(&unexpected(&bench, &["/ok/x"]));
    assert!(
        dodged.is_empty(),
        "these reached the upstream past deny_rules /admin/**:\n{}",
        dodged.join("\n")
    );

    let mut wrong = Vec::new();
    for scheme in ["http", "https"] {
        for (i, path) in DODGES.iter().enumerate() {
            let host = &hosts[i];
            let mut statuses = Vec::new();
            for client in ["curl", "hc"] {
                let got = outcome.result(&format!("{client} {scheme} {i}"));
                let refused = matches!(got["status"].as_u64(), Some(400 | 403))
                    && got["error"].as_str().is_some_and(|e| !e.is_empty())
                    && got["message"].as_str().is_some_and(|m| !m.is_empty());
                if !refused {
                    wrong.push(format!("{client} {scheme} {path}: not refused: {got}"));
                }
                statuses.push(got["status"].as_u64().unwrap_or(0));
            }
            // `policy eval` gives the proxy's verdict: the same reason for a refusal (exit 1),
            // an input error (exit 2) where the proxy answered 400.
            let records: Vec<&Value> = outcome
                .http_records(host)
                .into_iter()
                .filter(|r| r["scheme"] == scheme)
                .collect();
            let reasons: std::collections::BTreeSet<&str> = records
                .iter()
                .filter_map(|r| r["reason"].as_str())
                .collect();
            let url = format!("{}{path}", origin(scheme, host));
            let eval = bench.eval(&outcome.policy, "GET", &url, &[]);
            assert_no_panic(&eval);
            if statuses[0] != statuses[1] {
                wrong.push(format!(
                    "{scheme} {path}: curl got {}, http.client {}",
                    statuses[0], statuses[1]
                ));
            }
            match statuses[0] {
                403 if eval.code != 1 || reasons.len() != 1 || !reasons.contains(eval.reason()) => {
                    wrong.push(format!(
                        "{scheme} {path}: the proxy refused with {reasons:?}, policy eval \
                         exited {} with {:?}",
                        eval.code,
                        eval.reason()
                    ));
                }
                400 if eval.code != 2 => wrong.push(format!(
                    "{scheme} {path}: the proxy answered 400, policy eval exited {}: {eval:?}",
                    eval.code
                )),
                _ => {}
            }
            if statuses[0] == 403 && refused_events(records.iter().copied()) != 2 {
                wrong.push(format!(
                    "{scheme} {path}: {} refusals in the audit, 2 sent: {records:?}",
                    refused_events(records.iter().copied())
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{}\n--- audit ---\n{}",
        wrong.join("\n"),
        outcome.audit_text
    );
}

/// Paths outside `/admin/` that are refused unless the entry opts in, with their reason.
const OPT_INS: [(&str, &str, &str); 3] = [
    ("params.up.test", "/ok;a=1/x", "path_parameter"),
    ("percent.up.test", "/ok%25x", "encoded_percent"),
    ("dot.up.test", "/ok./x", "trailing_dot"),
];

/// The entries of `params.up.test`, `percent.up.test` and `dot.up.test`, each denying
/// `/admin/**` and opting in to the spelling its name says ([`OPT_INS`]).
fn opted_in_entries() -> String {
    [
        entry(
            "params.up.test",
            &format!("      allow_path_parameters: true\n{DENY_ADMIN}"),
        ),
        entry(
            "percent.up.test",
            &format!("      allow_encoded_percent: true\n{DENY_ADMIN}"),
        ),
        entry(
            "dot.up.test",
            &format!("      allow_trailing_dot: true\n{DENY_ADMIN}"),
        ),
    ]
    .concat()
}

#[test]
fn path_parameters_encoded_percent_and_trailing_dots_pass_only_where_the_entry_opts_in() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("refusals-optin");
    let allow = opted_in_entries() + &entry("plain.up.test", DENY_ADMIN);
    let policy = bench.policy(
        &[
            "params.up.test",
            "percent.up.test",
            "dot.up.test",
            "plain.up.test",
        ],
        &allow,
        "limits:\n  max_requests: 100\n",
    );
    let paths: Vec<&str> = OPT_INS.iter().map(|(_, path, _)| *path).collect();
    let script = format!(
        r#"
PATHS = {paths:?}
for scheme, port in [("http", ":8080"), ("https", "")]:
    for host in ["params.up.test", "percent.up.test", "dot.up.test", "plain.up.test"]:
        for path in PATHS:
            url = "%s://%s%s%s" % (scheme, host, port, path)
            results["curl %s %s %s" % (scheme, host, path)] = brief(curl("c", "--path-as-is", url))
            results["hc %s %s %s" % (scheme, host, path)] = brief(hc("h", "GET", url))
"#
    );
    let outcome = bench.run(Sandbox::new(), &policy, &script);
    assert_ran(&outcome);
    let seen = bench.seen();
    let mut wrong = Vec::new();
    for scheme in ["http", "https"] {
        for host in [
            "params.up.test",
            "percent.up.test",
            "dot.up.test",
            "plain.up.test",
        ] {
            for (opt_host, path, reason) in OPT_INS {
                let url = format!("{}{path}", origin(scheme, host));
                let eval = bench.eval(&outcome.policy, "GET", &url, &[]);
                for client in ["curl", "hc"] {
                    let got = outcome.result(&format!("{client} {scheme} {host} {path}"));
                    if host == opt_host {
                        if got["status"] != 200 {
                            wrong.push(format!("{client} {url}: opted in, yet {got}"));
                        }
                    } else if got["status"] != 403 || got["error"] != "policy_denied" {
                        wrong.push(format!(
                            "{client} {url}: not refused 403 policy_denied: {got}"
                        ));
                    }
                }
                if host == opt_host {
                    if eval.code != 0 {
                        wrong.push(format!("policy eval {url}: opted in, yet {eval:?}"));
                    }
                } else {
                    if eval.code != 1 || eval.reason() != reason {
                        wrong.push(format!("policy eval {url}: want 1 {reason}, got {eval:?}"));
                    }
                    let records: Vec<&Value> = outcome
                        .http_records(host)
                        .into_iter()
                        .filter(|r| r["scheme"] == scheme && r["reason"] == reason)
                        .collect();
                    if refused_events(records.iter().copied()) != 2 {
                        wrong.push(format!(
                            "{url}: want 2 refusals with reason {reason} in the audit, got {records:?}"
                        ));
                    }
                }
            }
        }
        // What an opted-in entry let through reached the upstream as it was sent, once per
        // client.
        for (host, path, _) in OPT_INS {
            let arrived = seen
                .iter()
                .filter(|r| r["scheme"] == scheme)
                .filter(|r| r["headers"].to_string().contains(host))
                .filter(|r| {
                    r["path"]
                        .as_str()
                        .is_some_and(|p| p.eq_ignore_ascii_case(path))
                })
                .count();
            if arrived != 2 {
                wrong.push(format!(
                    "{scheme}://{host}{path} arrived {arrived} times, want 2"
                ));
            }
        }
    }
    let refused_seen: Vec<Value> = seen
        .iter()
        .filter(|r| {
            !OPT_INS.iter().any(|(host, path, _)| {
                r["headers"].to_string().contains(host)
                    && r["path"]
                        .as_str()
                        .is_some_and(|p| p.eq_ignore_ascii_case(path))
            })
        })
        .cloned()
        .collect();
    if !refused_seen.is_empty() {
        wrong.push(format!(
            "refused requests reached the upstream:\n{}",
            lines(&refused_seen).join("\n")
        ));
    }
    assert_nothing_wrong(&wrong, &outcome);
}

/// On an entry that opted in, spellings some server still reads as `/admin/...`: Tomcat drops
/// `;` parameters (`..;` is `..` to it), IIS drops trailing dots, a double-decoding server
/// turns `%25xx` into `%xx` and then into the character. (host, path)
const OPTED_IN_DODGES: [(&str, &str); 7] = [
    ("params.up.test", "/admin;x=1/y"),
    ("params.up.test", "/x/..;/admin/y"),
    ("params.up.test", "/ADMIN;jsessionid=1/y"),
    ("dot.up.test", "/admin./y"),
    ("dot.up.test", "/admin../y"),
    ("percent.up.test", "/%2561dmin/y"),
    ("percent.up.test", "/admin%252fy"),
];

/// Beyond the contract's letter (its opt-in cases are all outside `/admin`): an opt-in lets a
/// spelling through, not a path past the entry's own deny rules.
#[test]
fn an_opt_in_does_not_open_a_way_around_the_entrys_deny_rules() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("refusals-optin-dodge");
    let allow = opted_in_entries();
    let policy = bench.policy(
        &["params.up.test", "percent.up.test", "dot.up.test"],
        &allow,
        "limits:\n  max_requests: 100\n",
    );
    let script = format!(
        r#"
for scheme, port in [("http", ":8080"), ("https", "")]:
    for host, path in {OPTED_IN_DODGES:?}:
        url = "%s://%s%s%s" % (scheme, host, port, path)
        results["curl " + url] = brief(curl("c", "--path-as-is", url))
        results["hc " + url] = brief(hc("h", "GET", url))
"#
    );
    let outcome = bench.run(Sandbox::new(), &policy, &script);
    assert_ran(&outcome);
    let mut wrong = lines(&bench.seen())
        .into_iter()
        .map(|l| format!("reached the upstream: {l}"))
        .collect::<Vec<_>>();
    for scheme in ["http", "https"] {
        for (host, path) in OPTED_IN_DODGES {
            let url = format!("{}{path}", origin(scheme, host));
            for client in ["curl", "hc"] {
                let got = outcome.result(&format!("{client} {url}"));
                if !matches!(got["status"].as_u64(), Some(400 | 403)) || got["error"].is_null() {
                    wrong.push(format!("{client} {url}: {got}"));
                }
            }
            let eval = bench.eval(&outcome.policy, "GET", &url, &[]);
            if eval.code == 0 {
                wrong.push(format!("policy eval {url}: allowed"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn allow_rules_stay_exact_in_case_while_deny_rules_ignore_it() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("refusals-exact");
    let policy = bench.policy(
        &["exact.up.test"],
        &entry(
            "exact.up.test",
            "      rules:\n        - {method: GET, path: \"/Public/**\"}\n      deny_rules:\n        - {method: \"*\", path: \"/Public/Secret/**\"}\n",
        ),
        "",
    );
    let cases = [
        ("/Public/x", 200),
        ("/public/x", 403),
        ("/PUBLIC/x", 403),
        ("/Public/Secret/x", 403),
        ("/Public/secret/x", 403),
        ("/Public/SECRET/x", 403),
    ];
    let paths: Vec<&str> = cases.iter().map(|(p, _)| *p).collect();
    let script = format!(
        r#"
for scheme, port in [("http", ":8080"), ("https", "")]:
    for path in {paths:?}:
        results[scheme + " " + path] = brief(hc("h", "GET", "%s://exact.up.test%s%s" % (scheme, port, path)))
"#
    );
    let outcome = bench.run(Sandbox::new(), &policy, &script);
    assert_ran(&outcome);
    for scheme in ["http", "https"] {
        for (path, status) in cases {
            let got = outcome.result(&format!("{scheme} {path}"));
            assert_eq!(got["status"], status, "{scheme} {path}: {got}");
            let url = format!("{}{path}", origin(scheme, "exact.up.test"));
            let eval = bench.eval(&outcome.policy, "GET", &url, &[]);
            assert_eq!(
                eval.code,
                if status == 200 { 0 } else { 1 },
                "{url}: {eval:?}"
            );
        }
    }
    let seen = lines(&bench.seen());
    assert_eq!(seen.len(), 2, "only /Public/x, once per scheme: {seen:?}");
}

// ---------------------------------------------------------------------------------------
// 3. Floods: the denial limit and the violation circuit breaker
// ---------------------------------------------------------------------------------------

/// Lines of tollgate's stderr, whatever their level, from a run whose command writes none.
const FLOOD_STDERR_LINES: usize = 50;
/// Records in the audit log of a flood of 200 identical refusals: "far fewer than 200".
const FLOOD_RECORDS: usize = 50;

/// A policy allowing `flood.up.test` but `/admin/**`, with `limits` as its top-level lines.
fn flood_policy(bench: &Bench, limits: &str) -> String {
    bench.policy(
        &["flood.up.test"],
        &entry("flood.up.test", DENY_ADMIN),
        limits,
    )
}

#[test]
fn past_max_denied_every_request_gets_denial_limit_and_the_flood_is_aggregated() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("refusals-flood");
    let policy = flood_policy(&bench, "limits:\n  max_requests: 100\n  max_denied: 20\n");
    let outcome = bench.run(
        Sandbox::new(),
        &policy,
        r#"
results["first"] = brief(hc("h", "GET", "http://flood.up.test:8080/ok/first"))
statuses = []
for i in range(200):
    statuses.append(brief(hc("h", "GET", "http://flood.up.test:8080/admin/x")))
results["statuses"] = statuses
results["allowed after"] = brief(hc("h", "GET", "http://flood.up.test:8080/ok/after"))
results["connect after"] = brief(connect("r", "flood.up.test", 443))
results["https after"] = brief(hc("h", "GET", "https://flood.up.test/ok/after"))
"#,
    );
    assert_ran(&outcome);
    assert_eq!(
        outcome.result("first")["status"],
        200,
        "{}",
        outcome.describe()
    );
    let statuses = outcome.result("statuses").as_array().unwrap();
    for (i, got) in statuses.iter().enumerate() {
        let (status, code) = if i < 20 {
            (403, "policy_denied")
        } else {
            (429, "denial_limit")
        };
        assert_eq!(got["status"], status, "denied request {}: {got}", i + 1);
        assert_eq!(got["error"], code, "denied request {}: {got}", i + 1);
        assert!(
            got["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{got}"
        );
    }
    // Even an allowed request, a tunnel and a request inside one are refused now.
    for name in ["allowed after", "connect after"] {
        let got = outcome.result(name);
        assert_eq!(got["status"], 429, "{name}: {got}");
        assert_eq!(got["error"], "denial_limit", "{name}: {got}");
    }
    assert!(
        outcome.result("https after")["status"].is_null(),
        "the tunnel was refused, so no request went through it: {}",
        outcome.result("https after")
    );
    let seen = lines(&bench.seen());
    assert_eq!(seen, ["http flood.up.test:8080: GET /ok/first HTTP/1.1"]);

    // 200 + the allowed request + two CONNECTs were refused: the records stand for exactly
    // that many, in far fewer lines.
    let proxy: Vec<&Value> = outcome
        .audit
        .iter()
        .filter(|r| r["type"] == "http" || r["type"] == "connect")
        .collect();
    assert!(
        proxy.len() < FLOOD_RECORDS,
        "{} audit records for one flood:\n{}",
        proxy.len(),
        outcome.audit_text
    );
    assert_eq!(
        refused_events(proxy.iter().copied()),
        203,
        "{}",
        outcome.audit_text
    );
    let aggregated: Vec<&&Value> = proxy.iter().filter(|r| r.get("count").is_some()).collect();
    assert!(
        !aggregated.is_empty(),
        "nothing was aggregated:\n{}",
        outcome.audit_text
    );
    for record in aggregated {
        assert!(record["count"].as_u64().is_some_and(|n| n >= 1), "{record}");
        let first = record["first_time"].as_str().unwrap_or_default();
        let time = record["time"].as_str().unwrap_or_default();
        assert!(
            refusals_support::is_rfc3339_ms(first) && first <= time,
            "an aggregated record says when its first repeat happened: {record}"
        );
    }
    let limit: u64 = proxy
        .iter()
        .filter(|r| r["error"] == "denial_limit")
        .map(|r| {
            assert_eq!(r["status"], 429, "{r}");
            assert_eq!(r["decision"], "deny", "{r}");
            events(r)
        })
        .sum();
    assert_eq!(limit, 183, "{}", outcome.audit_text);
    // The records of the limit say what the sandbox was told.
    let told = statuses[20]["message"].as_str().unwrap_or_default();
    for record in proxy.iter().filter(|r| r["error"] == "denial_limit") {
        assert_eq!(record["message"], told, "{record}");
    }
    // tollgate's own log is aggregated too.
    let stderr = outcome.finished.stderr_lines();
    assert!(
        stderr.len() < FLOOD_STDERR_LINES,
        "{} lines of stderr for one flood:\n{}",
        stderr.len(),
        outcome.finished.stderr
    );
    // And the summary counts every refusal.
    let refused: u64 = outcome.summary["proxy"]["refused"]
        .as_array()
        .map(|list| list.iter().filter_map(|e| e["count"].as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(refused, 203, "{}", outcome.summary_text);
}

#[test]
fn concurrent_refusals_stop_at_max_denied_but_for_the_requests_in_flight() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("refusals-concurrent");
    let policy = flood_policy(&bench, "limits:\n  max_denied: 20\n");
    let outcome = bench.run(
        Sandbox::new(),
        &policy,
        r#"
import threading
got = []
lock = threading.Lock()
def knock(n):
    for i in range(15):
        r = brief(hc("h%d" % n, "GET", "http://flood.up.test:8080/admin/%d" % n))
        with lock:
            got.append([r["status"], r["error"]])
threads = [threading.Thread(target=knock, args=(n,)) for n in range(16)]
for t in threads:
    t.start()
for t in threads:
    t.join()
results["got"] = got
results["after"] = brief(hc("h", "GET", "http://flood.up.test:8080/ok/after"))
"#,
    );
    assert_ran(&outcome);
    let got = outcome.result("got").as_array().unwrap();
    assert_eq!(got.len(), 240, "{}", outcome.describe());
    let count = |status: u64, code: &str| {
        got.iter()
            .filter(|r| r[0] == status && r[1] == code)
            .count()
    };
    // A request already being decided when the 20th refusal lands may still be refused by the
    // policy (it was admitted before the limit was reached), so up to one per thread more:
    // never a lost count, never an unbounded overshoot.
    let (policy, limit) = (count(403, "policy_denied"), count(429, "denial_limit"));
    assert!(
        (20..=20 + 16).contains(&policy) && policy + limit == 240,
        "{policy} refusals of the policy's and {limit} of the limit: {got:?}"
    );
    let after = outcome.result("after");
    assert_eq!(after["status"], 429, "{after}");
    assert_eq!(after["error"], "denial_limit", "{after}");
    // And the audit lost none of them.
    assert_eq!(
        refused_events(outcome.records("http")),
        241,
        "{}",
        outcome.audit_text
    );
}

#[test]
fn inside_one_kept_alive_intercepted_tunnel_each_request_counts_against_max_denied() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("refusals-tunnel-flood");
    let policy = flood_policy(&bench, "limits:\n  max_requests: 100\n  max_denied: 20\n");
    let outcome = bench.run(
        Sandbox::new(),
        &policy,
        r#"
# One HTTPS connection, kept alive: http.client reopens it (tunnel and all) only if tollgate
# closes it.
conn = http.client.HTTPSConnection(*PROXY, timeout=20, context=ssl.create_default_context())
conn.set_tunnel("flood.up.test", 443)
statuses = []
for path in ["/ok/first"] + ["/admin/x"] * 60 + ["/ok/after"]:
    try:
        conn.request("GET", path, headers={"Host": "flood.up.test"})
        r = conn.getresponse()
        body = r.read()
        statuses.append([r.status, r.getheader("tollgate-error")])
    except Exception as e:
        statuses.append([None, type(e).__name__])
        conn.close()
results["statuses"] = statuses
"#,
    );
    assert_ran(&outcome);
    let statuses = outcome.result("statuses").as_array().unwrap().clone();
    assert_eq!(statuses.len(), 62);
    assert_eq!(statuses[0][0], 200, "{}", outcome.describe());
    for (i, got) in statuses[1..].iter().enumerate() {
        if i < 20 {
            assert_eq!(got[0], 403, "denied request {}: {got:?}", i + 1);
            assert_eq!(got[1], "policy_denied", "denied request {}: {got:?}", i + 1);
        } else {
            assert_eq!(got[0], 429, "request {}: {got:?}", i + 1);
            assert_eq!(got[1], "denial_limit", "request {}: {got:?}", i + 1);
        }
    }
    assert_eq!(
        lines(&bench.seen()),
        ["https flood.up.test: GET /ok/first HTTP/1.1"]
    );
    let inner: Vec<&Value> = outcome
        .records("http")
        .into_iter()
        .filter(|r| r["scheme"] == "https")
        .collect();
    assert_eq!(
        refused_events(inner.iter().copied()),
        61,
        "{}",
        outcome.audit_text
    );
    assert!(inner.len() < FLOOD_RECORDS, "{}", outcome.audit_text);
    assert!(
        outcome.finished.stderr_lines().len() < FLOOD_STDERR_LINES,
        "{}",
        outcome.finished.stderr
    );
}

#[test]
fn every_refusal_the_sandbox_causes_counts_against_max_denied_and_upstream_failures_do_not() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("refusals-kinds");
    let allow = [
        format!("    - host: kinds.up.test\n      ports: [8080, 443, 9]\n      schemes: [http, https]\n      allowed_ips: [SUBNET]\n{DENY_ADMIN}"),
        entry("uncovered.up.test", ""),
    ]
    .concat();
    let policy = bench.policy(
        &["kinds.up.test", "uncovered.up.test=10.0.0.7"],
        &allow,
        "limits:\n  max_requests: 100\n  max_denied: 8\n  max_request_bytes: 1KiB\nretry: {attempts: 1}\n",
    );
    let outcome = bench.run(
        Sandbox::new(),
        &policy,
        r#"
# Upstream failures first: they are not the sandbox's doing and must not use up the budget.
for i in range(5):
    results["closed %d" % i] = brief(hc("h", "GET", "http://kinds.up.test:9/x%d" % i))
results["host_not_allowed"] = brief(hc("h", "GET", "http://evil.test/x"))
results["ssrf"] = brief(hc("h", "GET", "http://uncovered.up.test:8080/x"))
results["invalid_url"] = brief(raw("r", b"GET /relative HTTP/1.1\r\nHost: kinds.up.test\r\n\r\n"))
results["smuggling"] = brief(raw("r", b"POST http://kinds.up.test:8080/s HTTP/1.1\r\nHost: kinds.up.test:8080\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
results["lower case"] = brief(hc("h", "get", "http://kinds.up.test:8080/lower"))
results["auth"] = brief(hc("h", "GET", "http://kinds.up.test:8080/auth", headers=[("Tollgate-Auth", "Nope")]))
results["too large"] = brief(hc("h", "POST", "http://kinds.up.test:8080/big", body=b"x" * 4096))
results["inside a tunnel"] = brief(hc("h", "GET", "https://kinds.up.test/admin/x"))
results["after"] = brief(hc("h", "GET", "http://kinds.up.test:8080/ok/after"))
"#,
    );
    assert_ran(&outcome);
    for i in 0..5 {
        let got = outcome.result(&format!("closed {i}"));
        assert_eq!(got["status"], 502, "{got}");
        assert_eq!(got["error"], "connect_error", "{got}");
    }
    for (name, status, code) in [
        ("host_not_allowed", 403, "policy_denied"),
        ("ssrf", 403, "ssrf_denied"),
        ("invalid_url", 400, "invalid_url"),
        ("smuggling", 400, "invalid_request"),
        ("lower case", 400, "invalid_request"),
        ("auth", 403, "auth_provider_error"),
        ("too large", 413, "request_too_large"),
        ("inside a tunnel", 403, "policy_denied"),
        ("after", 429, "denial_limit"),
    ] {
        let got = outcome.result(name);
        assert_eq!(
            got["status"],
            status,
            "{name}: {got}\n{}",
            outcome.describe()
        );
        assert_eq!(got["error"], code, "{name}: {got}");
    }
    let seen = lines(&bench.seen());
    assert!(seen.is_empty(), "the upstream saw {seen:?}");
}

#[test]
fn requests_over_max_requests_count_against_max_denied_too() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("refusals-budget");
    let policy = bench.policy(
        &["budget.up.test"],
        &entry("budget.up.test", ""),
        "limits:\n  max_requests: 2\n  max_denied: 2\n",
    );
    let outcome = bench.run(
        Sandbox::new(),
        &policy,
        r#"
results["statuses"] = [brief(hc("h", "GET", "http://budget.up.test:8080/ok/%d" % i)) for i in range(6)]
"#,
    );
    assert_ran(&outcome);
    let got: Vec<(u64, Option<&str>)> = outcome
        .result("statuses")
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["status"].as_u64().unwrap_or(0), r["error"].as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (200, None),
            (200, None),
            (429, Some("request_limit_exceeded")),
            (429, Some("request_limit_exceeded")),
            (429, Some("denial_limit")),
            (429, Some("denial_limit")),
        ],
        "{}",
        outcome.describe()
    );
    assert_eq!(bench.seen().len(), 2);
}

#[test]
fn policy_check_names_a_bad_limit_or_opt_in_and_exits_2() {
    let scratch = tollgate_tests::Scratch::new("refusals-check");
    for (yaml, field) in [
        ("limits:\n  on_violation: explode\n", "on_violation"),
        ("limits:\n  max_denied: lots\n", "max_denied"),
        ("limits:\n  max_denied: -1\n", "max_denied"),
        (
            "network:\n  allow:\n    - host: a.example\n      allow_path_parameters: sometimes\n",
            "allow_path_parameters",
        ),
        (
            "network:\n  allow:\n    - host: a.example\n      allow_encoded_percent: 1\n",
            "allow_encoded_percent",
        ),
        (
            "network:\n  allow:\n    - host: a.example\n      allow_trailing_dot: [true]\n",
            "allow_trailing_dot",
        ),
    ] {
        let file = scratch.file("bad.yaml", &format!("version: 1\nteam: e2e\n{yaml}"));
        let output = tollgate_tests::tollgate()
            .args(["policy", "check"])
            .arg(&file)
            .output()
            .expect("run tollgate policy check");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(output.status.code(), Some(2), "{yaml:?}: {text}");
        assert!(
            text.contains(field),
            "{yaml:?}: the message names {field}: {text}"
        );
        assert!(!text.contains("panicked"), "{text}");
    }
    let good = scratch.file(
        "good.yaml",
        "version: 1\nteam: e2e\nnetwork:\n  allow:\n    - host: a.example\n      allow_path_parameters: true\n      allow_encoded_percent: true\n      allow_trailing_dot: true\nlimits:\n  max_denied: 5\n  on_violation: kill\n",
    );
    let output = tollgate_tests::tollgate()
        .args(["policy", "check"])
        .arg(&good)
        .output()
        .expect("run tollgate policy check");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// A client that makes exactly `max_denied` refused requests (plain and tunnels), says so,
/// then waits forever: only tollgate can end it.
const REFUSE_THEN_WAIT: &str = r#"
import select, sys
for i in range(MAX_DENIED):
    if i % 2:
        r = connect("r", "evil.test", 443)
    else:
        r = hc("h", "GET", "http://kill.up.test:8080/admin/%d" % i)
    print("refused", i, r.get("status"), flush=True)
print("waiting", flush=True)
select.select([], [], [])
print("survived", flush=True)
"#;

/// Asserts the run was ended for its violations: 125, the reason on stderr, in the summary.
fn assert_ended_for_violation(outcome: &Outcome, about: &[&str]) {
    assert_eq!(
        outcome.finished.code(),
        125,
        "the execution was not ended\n{}",
        outcome.describe()
    );
    let said = outcome
        .finished
        .stderr_lines()
        .into_iter()
        .find(|l| l.starts_with("tollgate: ended"))
        .unwrap_or_else(|| panic!("no `tollgate: ended: …` line\n{}", outcome.describe()))
        .to_ascii_lowercase();
    assert!(
        about.iter().any(|word| said.contains(word)),
        "the stderr line does not say why ({about:?}): {said}"
    );
    let violation = outcome.summary["violation"].as_str().unwrap_or_default();
    assert!(
        !violation.is_empty(),
        "the summary says no violation: {}",
        outcome.summary_text
    );
    assert!(!outcome.finished.stdout.contains("survived"));
    assert_execution_gone(&outcome.execution());
}

#[test]
fn on_violation_kill_ends_the_execution_at_max_denied_refusals() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("refusals-kill");
    let policy = bench.policy(
        &["kill.up.test"],
        &entry("kill.up.test", DENY_ADMIN),
        "limits:\n  max_denied: 6\n  on_violation: kill\n",
    );
    let script = REFUSE_THEN_WAIT.replace("MAX_DENIED", "6");
    let outcome = bench.run(Sandbox::new().timeout("30s"), &policy, &script);
    assert_ended_for_violation(&outcome, &["denied", "refus", "max_denied"]);
    assert!(
        outcome.finished.stdout.contains("refused 4 "),
        "five refusals went through before the end\n{}",
        outcome.describe()
    );
    let proxy: Vec<&Value> = outcome
        .audit
        .iter()
        .filter(|r| r["type"] == "http" || r["type"] == "connect")
        .collect();
    assert_eq!(refused_events(proxy), 6, "{}", outcome.audit_text);
    assert!(bench.seen().is_empty());
}

#[test]
fn on_violation_kill_ends_the_execution_at_max_denied_bypass_attempts_with_or_without_network() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("refusals-kill-bypass");
    let limits = "limits:\n  max_denied: 8\n  on_violation: kill\n";
    let with_network = bench.policy(&["kill.up.test"], &entry("kill.up.test", ""), limits);
    let offline = format!("version: 1\nteam: e2e\n{limits}");
    let script = r#"
import select
print("attempts", bypass(8), flush=True)
select.select([], [], [])
print("survived", flush=True)
"#;
    for policy in [with_network, offline] {
        let outcome = bench.run(Sandbox::new().timeout("30s"), &policy, script);
        assert_ended_for_violation(&outcome, &["bypass", "direct", "connect", "socket"]);
        assert!(
            outcome.summary["bypass_attempts"]
                .as_u64()
                .is_some_and(|n| n >= 8),
            "{}",
            outcome.summary_text
        );
    }
}

#[test]
fn below_max_denied_or_with_on_violation_continue_the_command_runs_to_its_end() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("refusals-continue");
    let script = r#"
for i in range(REFUSALS):
    hc("h", "GET", "http://kill.up.test:8080/admin/%d" % i)
results["bypass"] = bypass(BYPASSES)
results["after"] = brief(hc("h", "GET", "http://kill.up.test:8080/ok/after"))
"#;
    // One short of the limit with `kill`; far past it with `continue` (the default).
    for (limits, refusals, bypasses, after) in [
        ("  max_denied: 10\n  on_violation: kill\n", 9, 9, 200),
        ("  max_denied: 10\n  on_violation: continue\n", 30, 30, 429),
        ("  max_denied: 10\n", 30, 30, 429),
    ] {
        let policy = bench.policy(
            &["kill.up.test"],
            &entry("kill.up.test", DENY_ADMIN),
            &format!("limits:\n{limits}"),
        );
        let script = script
            .replace("REFUSALS", &refusals.to_string())
            .replace("BYPASSES", &bypasses.to_string());
        let outcome = bench.run(Sandbox::new().timeout("30s"), &policy, &script);
        assert_ran(&outcome);
        assert_eq!(outcome.result("after")["status"], after, "{limits}");
        assert!(
            outcome.summary.get("violation").is_some_and(Value::is_null),
            "{limits}: violation must be present and null: {}",
            outcome.summary_text
        );
        assert_eq!(
            outcome.summary["bypass_attempts"], bypasses,
            "{}",
            outcome.summary_text
        );
    }
}

// ---------------------------------------------------------------------------------------
// 6. The reason of a refused tunnel, from inside; tollgate's own log kept apart
// ---------------------------------------------------------------------------------------

#[test]
fn a_refused_tunnel_tells_the_sandbox_why_in_what_curl_shows() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("refusals-connect");
    let allow = [entry("ok.up.test", ""), entry("uncovered.up.test", "")].concat();
    let policy = bench.policy(&["ok.up.test", "uncovered.up.test=10.0.0.7"], &allow, "");
    let outcome = bench.run(
        Sandbox::new(),
        &policy,
        r#"
for host in ["evil.test", "uncovered.up.test"]:
    curl("curl " + host, "https://%s/x" % host)
    connect("raw " + host, host, 443)
"#,
    );
    assert_ran(&outcome);
    for (host, code, reason) in [
        ("evil.test", "policy_denied", "host_not_allowed"),
        ("uncovered.up.test", "ssrf_denied", "private_address"),
    ] {
        // A client that reads the CONNECT answer gets the JSON refusal body.
        let raw = outcome.result(&format!("raw {host}"));
        assert_refused(host, raw, 403, code);
        let message = refusal_body(raw)["message"].as_str().unwrap().to_owned();
        // The audit record says the same, with the reason.
        let records: Vec<&Value> = outcome
            .records("connect")
            .into_iter()
            .filter(|r| r["host"] == host)
            .collect();
        assert!(
            !records.is_empty(),
            "no connect record for {host}\n{}",
            outcome.audit_text
        );
        for record in &records {
            assert_eq!(record["reason"], reason, "{record}");
            assert_eq!(record["message"], message.as_str(), "{record}");
        }
        // And `curl -v`, which shows no CONNECT body, still shows the code and the sentence.
        let curl = outcome.result(&format!("curl {host}"));
        let verbose = curl["verbose"].as_str().unwrap_or_default();
        assert_ne!(curl["rc"], 0);
        assert!(
            verbose.contains(code) && verbose.contains(&message),
            "curl -v shows neither {code:?} nor {message:?}:\n{verbose}"
        );
    }
}

#[test]
fn log_file_keeps_tollgates_lines_out_of_the_commands_stderr() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("refusals-log");
    let policy = bench.policy(&["ok.up.test"], &entry("ok.up.test", DENY_ADMIN), "");
    let log = bench.output("tollgate.log");
    let script = r#"
import sys
print("the command's own line", file=sys.stderr, flush=True)
results["allowed"] = brief(hc("h", "GET", "http://ok.up.test:8080/ok/x"))
results["denied"] = brief(hc("h", "GET", "http://ok.up.test:8080/admin/x"))
results["tunnel denied"] = brief(connect("r", "evil.test", 443))
"#;
    let outcome = bench.run(Sandbox::new().arg("--log").arg(&log), &policy, script);
    assert_ran(&outcome);
    assert_eq!(
        outcome.finished.stderr_lines(),
        ["the command's own line"],
        "stderr carries only the command's lines\n{}",
        outcome.describe()
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    for needle in ["/ok/x", "/admin/x", "evil.test"] {
        assert!(
            text.contains(needle),
            "the log has no line about {needle}:\n{text}"
        );
    }
    assert!(!text.contains("the command's own line"), "{text}");

    // `--log` is an output like `--audit`: refused where the sandbox could write.
    let shared = bench.scratch.dir.join("tollgate.log");
    let policy_path = bench.scratch.file("log-policy.yaml", &policy);
    let refused = Sandbox::new()
        .policy(&policy_path)
        .arg("--log")
        .arg(&shared)
        .run(["/bin/true"]);
    let audit_refused = Sandbox::new()
        .policy(&policy_path)
        .audit(bench.scratch.dir.join("audit.jsonl"))
        .run(["/bin/true"]);
    assert_ne!(audit_refused.code(), 0, "{}", audit_refused.describe());
    assert_eq!(
        refused.code(),
        audit_refused.code(),
        "--log in a directory the sandbox writes\n{}",
        refused.describe()
    );
    assert!(refused.stderr.contains("--log"), "{}", refused.describe());
}

// ---------------------------------------------------------------------------------------
// 7. `policy eval` is the proxy's decision
// ---------------------------------------------------------------------------------------

#[test]
fn policy_eval_refuses_tollgate_auth_exactly_as_the_proxy_does() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("refusals-auth");
    let policy = bench.policy(
        &["cred.up.test"],
        &entry("cred.up.test", ""),
        "auth_providers:\n  - name: Tok\n    type: bearer\n    secret: {env: TOLLGATE_SECRET_E2E_TOK}\n    scope: [http://cred.up.test:8080/ok, https://cred.up.test/ok]\n",
    );
    // (path, Tollgate-Auth headers): every case once over HTTP and once over HTTPS.
    let cases: [(&str, &[&str]); 7] = [
        ("/ok/unknown", &["Nope"]),
        ("/other/outside-scope", &["Tok"]),
        ("/ok/in-scope", &["Tok"]),
        ("/ok/any-case", &["  tOK "]),
        ("/ok/empty", &[""]),
        ("/ok/twice", &["Tok", "Tok"]),
        ("/ok/none", &[]),
    ];
    let script: String = cases
        .iter()
        .flat_map(|(path, auth)| {
            let headers: Vec<String> = auth
                .iter()
                .map(|v| format!("(\"Tollgate-Auth\", {v:?})"))
                .collect();
            let headers = headers.join(", ");
            [("http", ":8080"), ("https", "")].map(|(scheme, port)| {
                format!(
                    "results[\"{scheme} {path}\"] = brief(hc(\"h\", \"GET\", \"{scheme}://cred.up.test{port}{path}\", headers=[{headers}]))\n"
                )
            })
        })
        .collect();
    let outcome = bench.run(
        Sandbox::new().supervisor_env("TOLLGATE_SECRET_E2E_TOK", "tok-secret-value"),
        &policy,
        &script,
    );
    assert_ran(&outcome);
    let mut wrong = Vec::new();
    for (path, auth) in cases {
        for scheme in ["http", "https"] {
            let got = outcome.result(&format!("{scheme} {path}"));
            let url = format!("{}{path}", origin(scheme, "cred.up.test"));
            let headers: Vec<String> = auth.iter().map(|v| format!("Tollgate-Auth: {v}")).collect();
            let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
            let eval = bench.eval(&outcome.policy, "GET", &url, &headers);
            assert_no_panic(&eval);
            let records: Vec<&Value> = outcome
                .http_records("cred.up.test")
                .into_iter()
                .filter(|r| r["scheme"] == scheme && r["path"] == path)
                .collect();
            match got["status"].as_u64() {
                Some(200) => {
                    if eval.code != 0 {
                        wrong.push(format!(
                            "{url} {auth:?}: the proxy allowed, policy eval: {eval:?}"
                        ));
                    }
                }
                Some(403) => {
                    let reasons: Vec<&str> = records
                        .iter()
                        .filter_map(|r| r["reason"].as_str())
                        .collect();
                    if eval.code != 1
                        || reasons.is_empty()
                        || reasons.iter().any(|r| *r != eval.reason())
                    {
                        wrong.push(format!(
                            "{url} {auth:?}: the proxy refused ({reasons:?}), policy eval exited {} ({:?})",
                            eval.code,
                            eval.reason()
                        ));
                    }
                }
                _ => wrong.push(format!("{url} {auth:?}: {got}")),
            }
        }
    }
    // What each case must come to, whoever decides.
    for (scheme, path, status, code) in [
        ("http", "/ok/unknown", 403, Some("auth_provider_error")),
        ("https", "/ok/unknown", 403, Some("auth_provider_error")),
        (
            "http",
            "/other/outside-scope",
            403,
            Some("credential_scope_denied"),
        ),
        (
            "https",
            "/other/outside-scope",
            403,
            Some("credential_scope_denied"),
        ),
        ("http", "/ok/in-scope", 200, None),
        ("https", "/ok/any-case", 200, None),
        ("http", "/ok/empty", 403, Some("auth_provider_error")),
        ("https", "/ok/twice", 403, Some("auth_provider_error")),
        ("http", "/ok/none", 200, None),
    ] {
        let got = outcome.result(&format!("{scheme} {path}"));
        assert_eq!(got["status"], status, "{scheme} {path}: {got}");
        assert_eq!(got["error"].as_str(), code, "{scheme} {path}: {got}");
    }
    // The name of the header is matched ignoring case by both.
    let unknown = outcome
        .http_records("cred.up.test")
        .into_iter()
        .find(|r| r["path"] == "/ok/unknown")
        .map(|r| r["reason"].clone())
        .unwrap_or_default();
    let eval = bench.eval(
        &outcome.policy,
        "GET",
        "http://cred.up.test:8080/ok/x",
        &["tollgate-auth: Nope"],
    );
    if eval.code != 1 || eval.json["reason"] != unknown || unknown.is_null() {
        wrong.push(format!(
            "tollgate-auth (lower case): the proxy's reason is {unknown}, policy eval: {eval:?}"
        ));
    }
    assert_nothing_wrong(&wrong, &outcome);
}

#[test]
fn policy_eval_exits_2_with_one_clear_message_for_an_invalid_url() {
    let bench_policy = tollgate_tests::Scratch::new("refusals-eval-url");
    let policy = bench_policy.file(
        "policy.yaml",
        "version: 1\nteam: e2e\nnetwork:\n  hosts:\n    up.test: 10.201.255.254\n  allow:\n    - host: up.test\n      ports: [8080]\n      schemes: [http]\n      allowed_ips: [10.201.255.252/30]\n",
    );
    for url in [
        "http://up.test:8080/a b",
        "http://[::1",
        "not a url",
        "ftp://up.test/",
        "http://",
        "http://up.test:99999/",
        "http://up.test:8080/%zz",
        "http://up .test/",
    ] {
        let output = tollgate_tests::tollgate()
            .args(["policy", "eval"])
            .arg(&policy)
            .args(["GET", url, "--resolve", "up.test=10.201.255.254"])
            .output()
            .expect("run tollgate policy eval");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{url:?}: an invalid URL is an input error\nstdout: {stdout}\nstderr: {stderr}"
        );
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{url:?}: one message on stderr: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            !stdout.contains("\"allow\":true") && !stdout.contains("\"allow\": true"),
            "{stdout}"
        );
    }
}
