//! Refusals and parity in transparent mode (issue #11, part 2), end to end: a client that
//! ignores the proxy settings and dials the synthetic address of an allowed name itself is
//! held to the same rules as one that goes through the proxy variables, and gets nothing
//! more — a mismatched or missing TLS server name, a `Host` naming another host, bytes that
//! are neither HTTP nor TLS (or none), an address no name was handed out for, a port the
//! policy does not allow: each refused and audited as the contract says, with the upstream
//! receiving nothing. A literal non-loopback address stays the eBPF wall's (`EPERM`,
//! `bypass_attempt`). Limits, credentials (`Tollgate-Auth`, placeholders) and the audit
//! records are the same whichever way a request leaves.
//!
//! Real clients inside `tollgate run`: `/usr/bin/curl` (`--noproxy '*'` for transparent
//! mode, the proxy variables otherwise), Python `ssl` and raw sockets, against a test host in
//! a network namespace of its own that writes down every connection and request line
//! (`transparent_upstream.py`).
//!
//! Needs root. No packet goes anywhere but loopback and the test host's veth pair.

mod transparent_support;

use std::collections::BTreeMap;

use serde_json::Value;
use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{bypass_records, record_destination, Sandbox},
};
use transparent_support::{
    assert_ran, events, host, is_synthetic, tollgate_error, Bench, Outcome, ENTRIES,
    HTTPS_DENIED_PORT, HTTPS_PORT, HTTP_DENIED_PORT, HTTP_PORT, PINNED, WEB_SERVICES,
};

/// Every port the usual host serves.
const SERVED_PORTS: [u16; 4] = [HTTP_PORT, HTTPS_PORT, HTTP_DENIED_PORT, HTTPS_DENIED_PORT];

/// The usual bench and policy.
fn bench(tag: &str) -> (Bench, String) {
    let bench = host(tag, &WEB_SERVICES);
    let policy = bench.policy(&PINNED, ENTRIES, "");
    (bench, policy)
}

/// Runs `script` (after the client helpers) in a plain sandbox under the usual policy against
/// the usual host, and asserts the run itself went through.
fn run_usual(tag: &str, script: &str) -> (Bench, Outcome) {
    let (mut bench, policy) = bench(tag);
    let outcome = bench.run(Sandbox::new(), &policy, script);
    assert_ran(&outcome);
    (bench, outcome)
}

/// Asserts, for each `(outcome, reason, port, count)` of `expected`, the transparent `connect`
/// refusals with that outcome and reason for `host:port` (the events of aggregated records
/// summed to `count`).
fn assert_connect_refusals(outcome: &Outcome, host: &str, expected: &[(&str, &str, u16, u64)]) {
    for (kind, reason, port, count) in expected {
        assert_connect_refusal(outcome, kind, reason, host, *port, *count);
    }
}

/// One row of [`assert_connect_refusals`]: the refusal's record shape, as the contract says.
fn assert_connect_refusal(
    outcome: &Outcome,
    expected: &str,
    reason: &str,
    host: &str,
    port: u16,
    count: u64,
) {
    let records: Vec<&Value> = outcome
        .connects_with(expected)
        .into_iter()
        .filter(|r| r["reason"] == reason && r["host"] == host && r["port"] == port)
        .collect();
    assert_eq!(
        records.iter().map(|r| events(r)).sum::<u64>(),
        count,
        "{count} connect record(s) with outcome {expected}, reason {reason}\n{}",
        outcome.describe()
    );
    for record in records {
        assert_eq!(record["method"], "CONNECT", "{record}");
        assert_eq!(record["scheme"], "connect", "{record}");
        assert_eq!(record["host"], host, "{record}");
        assert_eq!(record["port"], port, "{record}");
        assert_eq!(record["decision"], "deny", "{record}");
        assert_eq!(record["error"], "invalid_request", "{record}");
        assert_eq!(record["transparent"], true, "{record}");
        assert!(
            record["message"].as_str().is_some_and(|m| !m.is_empty()),
            "a refusal says why: {record}"
        );
    }
}

/// Asserts the host received no connection on `ports` and no request but those whose path
/// starts with one of `expected`.
fn assert_upstream_saw_only(bench: &Bench, ports: &[u16], expected: &[&str]) {
    let events = bench.events();
    let wrong: Vec<&Value> = events
        .iter()
        .filter(|e| match e["event"].as_str() {
            Some("connection") => ports.iter().any(|p| e["port"] == *p),
            Some("request") => !expected
                .iter()
                .any(|p| e["path"].as_str().is_some_and(|path| path.starts_with(p))),
            _ => true,
        })
        .collect();
    assert!(wrong.is_empty(), "the upstream received: {wrong:#?}");
}

#[test]
fn tls_naming_another_server_or_none_is_refused() {
    let _lock = SuiteLock::shared();
    let (bench, outcome) = run_usual(
        "tp-sni",
        r#"
A = resolve("allowed.test")
results["address"] = A
def get(path, host="allowed.test"):
    return ("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, host)).encode()
results["other"] = tls(A, 443, "other.test", get("/sni-other", "other.test"))
results["none"] = tls(A, 443, None, get("/sni-none"))
results["right"] = tls(A, 443, "allowed.test", get("/sni-right"))
"#,
    );
    let address = outcome.result("address").as_str().unwrap_or_default();
    assert!(is_synthetic(address), "{}", outcome.describe());
    for name in ["other", "none"] {
        let got = outcome.result(name);
        assert!(
            got["handshake"] != "ok" || got["response"]["status"].is_null(),
            "{name}: the TLS connection is refused: {got}"
        );
    }
    // The control: the mapped name itself goes through.
    let right = outcome.result("right");
    assert_eq!(
        right["response"]["status"],
        200,
        "{right}\n{}",
        outcome.describe()
    );
    assert_connect_refusals(
        &outcome,
        "allowed.test",
        &[
            ("sni_mismatch", "sni_mismatch", 443, 1),
            ("sni_mismatch", "sni_missing", 443, 1),
        ],
    );
    assert_upstream_saw_only(&bench, &[], &["/sni-right"]);
}

#[test]
fn plain_http_naming_another_host_is_refused() {
    let _lock = SuiteLock::shared();
    let (bench, outcome) = run_usual(
        "tp-host",
        r#"
A = resolve("allowed.test")
results["curl"] = brief(curl("-H", "Host: other.test:8080", "http://allowed.test:8080/host-other"))
results["raw"] = brief(raw(A, 8080, b"GET /host-raw HTTP/1.1\r\nHost: other.test\r\n\r\n"))
results["absolute"] = brief(raw(A, 8080,
    b"GET http://other.test:8080/host-absolute HTTP/1.1\r\nHost: allowed.test:8080\r\n\r\n"))
results["right"] = brief(curl("http://allowed.test:8080/host-right"))
"#,
    );
    for name in ["curl", "raw", "absolute"] {
        let got = outcome.result(name);
        assert_eq!(got["status"], 400, "{name}: {got}\n{}", outcome.describe());
        // The absolute form naming another origin is refused as inside an intercepted tunnel
        // (`invalid_url`); a `Host` naming another host as the contract says.
        let codes: &[&str] = if name == "absolute" {
            &["invalid_request", "invalid_url"]
        } else {
            &["invalid_request"]
        };
        assert!(
            tollgate_error(got).is_some_and(|e| codes.contains(&e)),
            "{name}: {got}"
        );
    }
    assert_eq!(outcome.result("right")["status"], 200);
    let refused: Vec<&Value> = outcome
        .records("http")
        .into_iter()
        .filter(|r| r["decision"] == "deny")
        .collect();
    assert_eq!(
        refused.iter().map(|r| events(r)).sum::<u64>(),
        3,
        "{}",
        outcome.describe()
    );
    for record in refused {
        assert!(
            record["error"] == "invalid_request" || record["error"] == "invalid_url",
            "{record}"
        );
        assert_eq!(record["status"], 400, "{record}");
        assert_eq!(record["transparent"], true, "{record}");
    }
    assert_upstream_saw_only(&bench, &[], &["/host-right"]);
}

#[test]
fn bytes_that_are_neither_http_nor_tls_are_refused_and_audited() {
    let _lock = SuiteLock::shared();
    // The silent client is closed after the proxy's header read timeout (10 s by default,
    // `proxy::Settings::header_read_timeout`); it runs beside the others.
    let (bench, outcome) = run_usual(
        "tp-non-http",
        r#"
import random, threading
A = resolve("allowed.test")
silent = {}
waiter = threading.Thread(target=lambda: silent.update(raw(A, 8080, b"", timeout=60)))
waiter.start()
noise = random.Random(7).randbytes(64)
results["ssh"] = raw(A, 8080, b"SSH-2.0-x\r\n")
results["noise"] = raw(A, 8080, b"\x00" + noise)
results["noise 443"] = raw(A, 443, b"\x01" + noise)
results["lower-case smtp"] = raw(A, 8080, b"ehlo sandbox\r\n")
waiter.join()
results["silent"] = silent
"#,
    );
    for name in ["ssh", "noise", "noise 443", "lower-case smtp", "silent"] {
        let got = outcome.result(name);
        assert_eq!(got["connected"], true, "{name}: {got}");
        assert_eq!(got["closed"], true, "{name}: the proxy closes it: {got}");
        assert!(
            got["response"]["status"].is_null(),
            "{name}: no HTTP answer: {got}"
        );
    }
    assert_connect_refusals(
        &outcome,
        "allowed.test",
        &[
            ("non_http_refused", "non_http", 8080, 4),
            ("non_http_refused", "non_http", 443, 1),
        ],
    );
    assert_upstream_saw_only(&bench, &SERVED_PORTS, &[]);
}

#[test]
fn an_address_no_name_was_handed_out_for_is_refused() {
    let _lock = SuiteLock::shared();
    let (bench, outcome) = run_usual(
        "tp-unmapped",
        r#"
results["address"] = resolve("allowed.test")
results["http"] = raw("127.77.200.1", 8080, b"GET /unmapped HTTP/1.1\r\nHost: allowed.test:8080\r\n\r\n")
results["tls"] = tls("127.77.200.1", 443, "allowed.test", b"GET /unmapped-tls HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
"#,
    );
    assert_ne!(outcome.result("address"), "127.77.200.1");
    let http = outcome.result("http");
    assert!(
        http["connected"] == false || http["response"]["status"].is_null(),
        "{http}"
    );
    let tls = outcome.result("tls");
    assert!(tls["handshake"] != "ok", "{tls}");
    assert_connect_refusals(
        &outcome,
        "127.77.200.1",
        &[
            ("unmapped_address", "unmapped_address", 8080, 1),
            ("unmapped_address", "unmapped_address", 443, 1),
        ],
    );
    assert_upstream_saw_only(&bench, &SERVED_PORTS, &[]);
}

/// The fields of a refusal that must not depend on how the request left the sandbox.
const DECISION_FIELDS: [&str; 9] = [
    "type", "method", "scheme", "host", "port", "decision", "reason", "rule", "error",
];

fn decision_of(record: &Value) -> Value {
    DECISION_FIELDS
        .iter()
        .map(|f| (f.to_string(), record[*f].clone()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[test]
fn an_allowed_name_on_a_port_the_policy_does_not_allow_is_refused_as_through_the_proxy() {
    let _lock = SuiteLock::shared();
    let (bench, outcome) = run_usual(
        "tp-port",
        r#"
results["http"] = brief(curl("http://allowed.test:8081/port-transparent"))
results["http proxy"] = brief(curl("http://allowed.test:8081/port-proxy", proxy=True))
results["https"] = curl("https://allowed.test:8443/port-transparent")
results["https proxy"] = curl("https://allowed.test:8443/port-proxy", proxy=True)
"#,
    );
    for name in ["http", "http proxy"] {
        let got = outcome.result(name);
        assert_eq!(got["status"], 403, "{name}: {got}\n{}", outcome.describe());
        assert_eq!(tollgate_error(got), Some("policy_denied"), "{name}: {got}");
    }
    assert_eq!(
        outcome.result("http")["body"],
        outcome.result("http proxy")["body"]
            .clone()
            .to_string()
            .replace("port-proxy", "port-transparent")
            .parse::<Value>()
            .unwrap(),
        "the same refusal body"
    );
    for name in ["https", "https proxy"] {
        let got = outcome.result(name);
        assert!(
            got["rc"] != 0 && got["status"] != 200,
            "{name}: refused: {got}"
        );
    }
    // The records: one refusal each way and scheme, alike but for `transparent`.
    let refusals = |transparent: bool, kind: &str| -> Vec<Value> {
        outcome
            .records(kind)
            .into_iter()
            .filter(|r| r["decision"] == "deny")
            .filter(|r| (r["transparent"] == true) == transparent)
            .map(decision_of)
            .collect()
    };
    for kind in ["http", "connect"] {
        let through_proxy = refusals(false, kind);
        assert_eq!(through_proxy.len(), 1, "{kind}\n{}", outcome.describe());
        assert_eq!(
            through_proxy[0]["reason"], "port_not_allowed",
            "{through_proxy:?}"
        );
        assert_eq!(
            refusals(true, kind),
            through_proxy,
            "{kind}\n{}",
            outcome.describe()
        );
    }
    assert_upstream_saw_only(&bench, &[HTTP_DENIED_PORT, HTTPS_DENIED_PORT], &[]);
}

#[test]
fn a_literal_address_stays_refused_by_the_wall() {
    let _lock = SuiteLock::shared();
    let (mut bench, policy) = bench("tp-literal");
    let up = bench.up.addr;
    let outcome = bench.run(
        Sandbox::new(),
        &policy,
        &format!(
            r#"
results["connect"] = direct_errno("{up}", 8080)
results["curl"] = curl("http://{up}:8080/literal")
"#
        ),
    );
    assert_ran(&outcome);
    assert_eq!(outcome.result("connect"), "EPERM", "{}", outcome.describe());
    let curl = outcome.result("curl");
    assert_eq!(curl["rc"], 7, "curl cannot connect: {curl}");
    let attempts: Vec<&Value> = bypass_records(&outcome.audit)
        .into_iter()
        .filter(|r| r["hook"] == "connect")
        .filter(|r| record_destination(r).is_some_and(|d| d.ip() == up && d.port() == 8080))
        .collect();
    assert_eq!(
        attempts.iter().map(|r| events(r)).sum::<u64>(),
        2,
        "{}",
        outcome.describe()
    );
    assert!(outcome.records("http").is_empty() && outcome.records("connect").is_empty());
    assert_upstream_saw_only(&bench, &SERVED_PORTS, &[]);
}

// ---------------------------------------------------------------------------------------
// Parity: the same requests, once through the proxy variables and once transparently
// ---------------------------------------------------------------------------------------

/// The two ways out, as (mode, whether curl uses the proxy variables). The mode's name is in
/// every path; both names have the same length, so echoed bodies have the same size.
const MODES: [(&str, bool); 2] = [("proxy", true), ("trans", false)];

/// A parity script: `body` with `MODE` (the mode's name, in every path) and `PROXY`.
fn parity_script(mode: &str, proxy: bool, body: &str) -> String {
    let proxy = if proxy { "True" } else { "False" };
    format!("MODE = {mode:?}\nPROXY = {proxy}\n{body}")
}

/// A record as it must be in both modes: no time, execution, duration or `transparent`; the
/// mode's name in paths and messages replaced; a tunnel's byte counts dropped (a CONNECT
/// request head is not a ClientHello).
fn comparable(record: &Value, mode: &str) -> String {
    let mut record = record.clone();
    let object = record.as_object_mut().unwrap();
    for field in ["time", "execution", "duration_ms", "transparent"] {
        object.remove(field);
    }
    if object["type"] == "connect" {
        object.remove("bytes_up");
        object.remove("bytes_down");
    }
    record.to_string().replace(&format!("/{mode}/"), "/MODE/")
}

/// The comparable `http` and `connect` records of a run, sorted.
fn traffic(outcome: &Outcome, mode: &str) -> Vec<String> {
    let mut records: Vec<String> = outcome
        .audit
        .iter()
        .filter(|r| r["type"] == "http" || r["type"] == "connect")
        .map(|r| comparable(r, mode))
        .collect();
    records.sort();
    records
}

/// What the upstream received for a mode: method, path and headers of each request.
fn received(bench: &Bench, mode: &str) -> BTreeMap<String, Value> {
    bench
        .events_of("request")
        .into_iter()
        .filter_map(|r| {
            let path = r["path"].as_str()?.to_owned();
            let key = path.split_once(&format!("/{mode}/"))?.1.to_owned();
            let mut headers: Vec<Value> = r["headers"].as_array()?.clone();
            headers.sort_by_key(|h| h.to_string());
            Some((
                format!("{} {} {key}", r["scheme"].as_str()?, r["method"].as_str()?),
                headers.into(),
            ))
        })
        .collect()
}

/// Runs `body` in both modes; asserts the clients saw, the upstream received and the audit
/// recorded the same things; returns the two outcomes (proxy first).
fn run_both_ways(bench: &mut Bench, policy: &str, sandbox: Sandbox, body: &str) -> Vec<Outcome> {
    let outcomes: Vec<Outcome> = MODES
        .iter()
        .map(|(mode, proxy)| {
            let outcome = bench.run(sandbox.clone(), policy, &parity_script(mode, *proxy, body));
            assert_ran(&outcome);
            outcome
        })
        .collect();
    let [proxied, transparent] = [&outcomes[0], &outcomes[1]];
    let results = |o: &Outcome, mode: &str| {
        o.results
            .to_string()
            .replace(&format!("/{mode}/"), "/MODE/")
    };
    assert_eq!(
        results(transparent, "trans"),
        results(proxied, "proxy"),
        "the client saw the same in both modes"
    );
    assert_eq!(
        received(bench, "trans"),
        received(bench, "proxy"),
        "the upstream received the same in both modes"
    );
    assert_eq!(
        traffic(transparent, "trans"),
        traffic(proxied, "proxy"),
        "the audit recorded the same in both modes\n--- proxy ---\n{}\n--- transparent ---\n{}",
        proxied.audit_text,
        transparent.audit_text
    );
    // ... and says which way each request went.
    for (outcome, transparent) in [(proxied, false), (transparent, true)] {
        for record in outcome
            .records("http")
            .into_iter()
            .chain(outcome.records("connect"))
        {
            assert_eq!(
                record.get("transparent") == Some(&Value::Bool(true)),
                transparent,
                "`transparent` is true exactly on transparent traffic: {record}"
            );
        }
    }
    outcomes
}

/// Asserts the client's result `name` (a parity script's `{status, error}`) has `status` and
/// the `Tollgate-Error` `error`.
fn assert_answer(outcome: &Outcome, name: &str, status: u64, error: Option<&str>) {
    let got = outcome.result(name);
    assert_eq!(
        got["status"],
        status,
        "{name}: {got}\n{}",
        outcome.describe()
    );
    assert_eq!(got["error"].as_str(), error, "{name}: {got}");
}

#[test]
fn limits_are_the_same_in_transparent_mode() {
    let _lock = SuiteLock::shared();
    let mut bench = host("tp-parity-limits", &WEB_SERVICES);
    let policy = bench.policy(
        &PINNED,
        ENTRIES,
        "limits:\n  max_requests: 3\n  max_response_bytes: 1KiB\n",
    );
    let outcomes = run_both_ways(
        &mut bench,
        &policy,
        Sandbox::new(),
        r#"
def get(url):
    got = curl(url, proxy=PROXY)
    return {"status": got["status"], "error": tollgate_error(got), "length": len(got.get("body") or "")}
results["small http"] = get("http://allowed.test:8080/bytes/500/%s/small" % MODE)
results["small https"] = get("https://allowed.test/bytes/600/%s/small" % MODE)
results["large https"] = get("https://allowed.test/bytes/2000/%s/large" % MODE)
results["fourth http"] = get("http://allowed.test:8080/bytes/10/%s/fourth" % MODE)
results["fourth https"] = get("https://allowed.test/bytes/10/%s/fourth" % MODE)
"#,
    );
    let outcome = &outcomes[1];
    assert_answer(outcome, "small http", 200, None);
    assert_answer(outcome, "small https", 200, None);
    assert_answer(outcome, "large https", 502, Some("response_too_large"));
    assert_answer(outcome, "fourth http", 429, Some("request_limit_exceeded"));
    assert_answer(outcome, "fourth https", 429, Some("request_limit_exceeded"));
    for mode in ["proxy", "trans"] {
        assert!(
            bench.requests_to("/bytes/10/").is_empty(),
            "over max_requests: nothing sent"
        );
        let sent: Vec<Value> = bench
            .events_of("request")
            .into_iter()
            .filter(|r| {
                r["path"]
                    .as_str()
                    .is_some_and(|p| p.contains(&format!("/{mode}/")))
            })
            .collect();
        assert_eq!(sent.len(), 3, "{mode}: three upstream attempts: {sent:#?}");
    }
}

const SECRET_KEY: &str = "tg-parity-key-5be1c0";
const SECRET_TOKEN: &str = "tg-parity-token-9a7d3f";

#[test]
fn credentials_are_the_same_in_transparent_mode() {
    let _lock = SuiteLock::shared();
    let mut bench = host("tp-parity-credentials", &WEB_SERVICES);
    let policy = bench.policy(
        &PINNED,
        ENTRIES,
        "auth_providers:
  - name: K
    type: api_key
    header: X-Api-Key
    secret: {env: TOLLGATE_SECRET_E2E_KEY}
    scope: [http://allowed.test:8080, https://allowed.test]
  - name: Tok
    type: bearer
    secret: {env: TOLLGATE_SECRET_E2E_TOKEN}
    scope: [http://allowed.test:8080, https://allowed.test]
placeholders:
  - {env: TOK_PH, provider: Tok}
",
    );
    let sandbox = Sandbox::new()
        .supervisor_env("TOLLGATE_SECRET_E2E_KEY", SECRET_KEY)
        .supervisor_env("TOLLGATE_SECRET_E2E_TOKEN", SECRET_TOKEN);
    let outcomes = run_both_ways(
        &mut bench,
        &policy,
        sandbox,
        r#"
PH = os.environ["TOK_PH"]
def get(url, *headers):
    args = []
    for h in headers:
        args += ["-H", h]
    got = curl(*args, url, proxy=PROXY)
    return {"status": got["status"], "error": tollgate_error(got)}
for base in ["http://allowed.test:8080", "https://allowed.test"]:
    scheme = base.split(":")[0]
    results["auth " + scheme] = get("%s/echo/%s/auth" % (base, MODE), "Tollgate-Auth: K")
    results["placeholder " + scheme] = get("%s/echo/%s/placeholder" % (base, MODE),
                                           "Authorization: Bearer " + PH)
for base in ["http://other.test:8080", "https://other.test"]:
    scheme = base.split(":")[0]
    results["auth elsewhere " + scheme] = get("%s/echo/%s/auth-elsewhere" % (base, MODE),
                                              "Tollgate-Auth: K")
    results["placeholder elsewhere " + scheme] = get(
        "%s/echo/%s/placeholder-elsewhere" % (base, MODE), "Authorization: Bearer " + PH)
"#,
    );
    let outcome = &outcomes[1];
    for scheme in ["http", "https"] {
        for (name, status, error) in [
            (format!("auth {scheme}"), 200, None),
            (format!("placeholder {scheme}"), 200, None),
            (
                format!("auth elsewhere {scheme}"),
                403,
                Some("credential_scope_denied"),
            ),
            (
                format!("placeholder elsewhere {scheme}"),
                403,
                Some("credential_placeholder_mismatch"),
            ),
        ] {
            assert_answer(outcome, &name, status, error);
        }
    }
    // What the upstream got in transparent mode (the proxy mode is the same, checked above).
    let header = |path: &str, name: &str| -> Vec<String> {
        bench
            .requests_to(path)
            .iter()
            .flat_map(|r| r["headers"].as_array().cloned().unwrap_or_default())
            .filter(|h| h[0] == name)
            .filter_map(|h| h[1].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(
        header("/echo/trans/auth", "x-api-key"),
        [SECRET_KEY, SECRET_KEY]
    );
    assert!(header("/echo/trans/auth", "tollgate-auth").is_empty());
    assert_eq!(
        header("/echo/trans/placeholder", "authorization"),
        [
            format!("Bearer {SECRET_TOKEN}"),
            format!("Bearer {SECRET_TOKEN}")
        ]
    );
    assert!(bench.requests_to("/echo/trans/auth-elsewhere").is_empty());
    assert!(bench
        .requests_to("/echo/trans/placeholder-elsewhere")
        .is_empty());
    for outcome in &outcomes {
        for secret in [SECRET_KEY, SECRET_TOKEN] {
            assert!(
                !outcome.audit_text.contains(secret)
                    && !outcome.finished.stdout.contains(secret)
                    && !outcome.finished.stderr.contains(secret),
                "a secret in the sandbox's output or the audit\n{}",
                outcome.describe()
            );
        }
    }
    let credited: Vec<&Value> = outcome
        .records("http")
        .into_iter()
        .filter(|r| r["credentials"].is_array())
        .collect();
    assert_eq!(credited.len(), 4, "{}", outcome.describe());
}
