//! The egress proxy end to end: real clients (`/usr/bin/curl`, `/usr/bin/python3` urllib,
//! `http.client` and raw sockets) inside `tollgate run`, real upstream servers in network
//! namespaces the tests build (`tollgate_tests::upstream`), reached the way a team reaches an
//! internal service: a `hosts` pin to 10.201.x.y and `allowed_ips` covering its /30.
//!
//! Each test runs one or a few executions; each execution runs one Python script (the helpers
//! in `proxy_e2e_client.py` plus the test's own lines) that prints its observations as one
//! JSON object, and the test checks them against what the upstream logged, the `--audit` file
//! and the `--summary`. No test asserts how long anything took, except that a `Retry-After`
//! wait was not skipped (a lower bound a correct proxy always meets).
//!
//! Needs root (namespaces, veth pairs, `tollgate run`). No packet goes anywhere but loopback
//! and the veth pairs of the upstream hosts made here.

use std::{collections::BTreeMap, fs};

use serde_json::Value;
use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{assert_execution_gone, read_json, read_json_lines, Finished, Sandbox, PYTHON},
    script_run::ScriptRun,
    upstream::UpstreamHost,
    Scratch,
};

const CLIENT_PY: &str = include_str!("proxy_e2e_client.py");

/// The destination every upstream-bound request counts against in the summary.
const ORIGIN: &str = "http://up.test:8080";

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// One test's upstream host and scratch space.
struct Bench {
    up: UpstreamHost,
    scratch: Scratch,
    runs: u32,
}

/// What one execution left: its output, the client's results, audit and summary.
struct Outcome {
    finished: Finished,
    results: Value,
    audit: Vec<Value>,
    audit_text: String,
    summary: Value,
    summary_text: String,
}

impl Bench {
    fn new(tag: &str) -> Self {
        Bench {
            up: UpstreamHost::start(),
            scratch: Scratch::new(tag),
            runs: 0,
        }
    }

    /// A policy whose first entry allows `up.test` (ports 8080 and 9, http) through
    /// `allowed_ips`; `allow` adds entries, `hosts` adds pins (`NAME: ADDR` lines), `top`
    /// adds top-level sections. `ADDR` and `SUBNET` are replaced by the upstream's.
    fn policy(&self, hosts: &str, allow: &str, top: &str) -> String {
        let text = format!(
            "version: 1
team: e2e
network:
  hosts:
    up.test: ADDR
{hosts}
  allow:
    - host: up.test
      ports: [8080, 9]
      schemes: [http]
      allowed_ips: [SUBNET]
{allow}
{top}"
        );
        text.replace("ADDR", &self.up.addr.to_string())
            .replace("SUBNET", &self.up.subnet())
    }

    /// Runs `script` (after the client helpers) with `/usr/bin/python3` inside
    /// `tollgate run --policy … --audit … --summary …`.
    fn run(&mut self, policy: &str, script: &str) -> Outcome {
        self.run_with(Sandbox::new(), policy, script)
    }

    fn run_with(&mut self, sandbox: Sandbox, policy: &str, script: &str) -> Outcome {
        self.runs += 1;
        let n = self.runs;
        let run = ScriptRun::write(&self.scratch, n, "client", policy, CLIENT_PY, script);
        let finished = run.sandbox(sandbox).run([PYTHON, run.script_arg()]);
        assert!(
            self.up.alive(),
            "the upstream server died during the run\n{}",
            finished.describe()
        );
        assert_eq!(finished.code(), 0, "{}", finished.describe());
        let last = finished
            .stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("the client printed no results\n{}", finished.describe()));
        let results: Value = serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("results are not JSON ({e})\n{}", finished.describe()));
        let summary_text = fs::read_to_string(&run.summary).expect("read the summary");
        let summary = read_json(&run.summary);
        let execution = summary["execution"].as_str().expect("summary.execution");
        assert_execution_gone(execution);
        Outcome {
            audit: read_json_lines(&run.audit),
            audit_text: run.audit_text(),
            finished,
            results,
            summary,
            summary_text,
        }
    }
}

impl Outcome {
    /// The client's observation `name`.
    fn result(&self, name: &str) -> &Value {
        let value = &self.results[name];
        assert!(
            !value.is_null(),
            "the client recorded no result {name:?}; results: {}\nstderr:\n{}",
            self.results,
            self.finished.stderr
        );
        value
    }

    /// The proxy's records (`kind` http or connect) whose path starts with `prefix`.
    fn records(&self, prefix: &str) -> Vec<&Value> {
        self.audit
            .iter()
            .filter(|r| matches!(r["type"].as_str(), Some("http" | "connect")))
            .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
            .collect()
    }

    /// The single record whose path is `path` exactly.
    fn record(&self, path: &str) -> &Value {
        let found: Vec<&Value> = self
            .audit
            .iter()
            .filter(|r| matches!(r["type"].as_str(), Some("http" | "connect")) && r["path"] == path)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one audit record for {path}, got {found:#?}\naudit:\n{}",
            self.audit_text
        );
        found[0]
    }

    fn proxy(&self) -> &Value {
        let proxy = &self.summary["proxy"];
        assert!(
            proxy.is_object(),
            "summary without proxy counters: {}",
            self.summary
        );
        proxy
    }

    fn execution(&self) -> &str {
        self.summary["execution"].as_str().expect("execution id")
    }
}

/// The first value of header `name` in a `[[name, value], …]` list (names lowercase).
fn header<'a>(response: &'a Value, name: &str) -> Option<&'a str> {
    headers(response, name).into_iter().next()
}

fn headers<'a>(response: &'a Value, name: &str) -> Vec<&'a str> {
    response["headers"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|pair| pair[0] == name)
                .filter_map(|pair| pair[1].as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// The upstream's echo of the request, from a response body.
fn echo(response: &Value) -> Value {
    let body = response["body"].as_str().unwrap_or_default();
    serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("the response is not an upstream echo ({e}): {response}"))
}

fn status(response: &Value) -> Option<u64> {
    response["status"].as_u64()
}

/// Asserts a tollgate refusal: status, `Tollgate-Error`, and the JSON error body.
fn assert_refusal(response: &Value, want_status: u64, code: &str, execution: &str) -> Value {
    assert_eq!(status(response), Some(want_status), "{response:#}");
    assert_eq!(
        header(response, "tollgate-error"),
        Some(code),
        "{response:#}"
    );
    let body: Value = serde_json::from_str(response["body"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("refusal body is not JSON ({e}): {response:#}"));
    assert_eq!(body["error"], code, "{body}");
    assert_eq!(body["execution"], execution, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "refusal without a message: {body}");
    body
}

/// latin-1 text of bytes, as the upstream echo and the Python client spell bodies.
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

fn via_has_tollgate(values: &[&str]) -> bool {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .any(|v| v.trim() == "1.1 tollgate")
}

// ---------------------------------------------------------------------------------------
// Forward proxy: methods, framings, keep-alive, headers
// ---------------------------------------------------------------------------------------

#[test]
fn every_method_with_both_body_framings_reaches_the_upstream() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("e2e-methods");
    let policy = bench.policy("", "", "limits:\n  max_requests: 100\n");
    let out = bench.run(
        &policy,
        r#"
big = bytes(range(256)) * 20
small = b"small body \x00\x01\xff end"
big_path, small_path = body_file(big), body_file(small)
for method in ["POST", "PUT", "PATCH"]:
    results["curl-%s-length" % method] = curl(
        "-X", method, "--data-binary", "@" + big_path, U + "/echo/m/curl-%s-length" % method)
    results["curl-%s-chunked" % method] = curl(
        "-X", method, "-H", "Transfer-Encoding: chunked", "--data-binary", "@" + big_path,
        U + "/echo/m/curl-%s-chunked" % method)
results["curl-POST-expect"] = curl(
    "-H", "Expect: 100-continue", "--data-binary", "@" + big_path, U + "/echo/m/curl-POST-expect")
results["curl-GET-none"] = curl(U + "/echo/m/curl-GET-none")
results["curl-DELETE-none"] = curl("-X", "DELETE", U + "/echo/m/curl-DELETE-none")
results["curl-DELETE-length"] = curl(
    "-X", "DELETE", "--data-binary", "@" + small_path, U + "/echo/m/curl-DELETE-length")
for method in ["POST", "PUT", "PATCH", "DELETE"]:
    results["py-%s-length" % method] = fetch(U + "/echo/m/py-%s-length" % method, method, small)
    results["py-%s-chunked" % method] = fetch(
        U + "/echo/m/py-%s-chunked" % method, method, iter([small[:7], small[7:]]))
results["py-GET-none"] = fetch(U + "/echo/m/py-GET-none")
"#,
    );
    let big: Vec<u8> = (0..20).flat_map(|_| 0..=255u8).collect();
    let small = b"small body \x00\x01\xff end".to_vec();
    let mut cases: Vec<(String, &str, Vec<u8>)> = Vec::new();
    for method in ["POST", "PUT", "PATCH"] {
        cases.push((format!("curl-{method}-length"), method, big.clone()));
        cases.push((format!("curl-{method}-chunked"), method, big.clone()));
    }
    cases.push(("curl-POST-expect".into(), "POST", big.clone()));
    cases.push(("curl-GET-none".into(), "GET", vec![]));
    cases.push(("curl-DELETE-none".into(), "DELETE", vec![]));
    cases.push(("curl-DELETE-length".into(), "DELETE", small.clone()));
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        cases.push((format!("py-{method}-length"), method, small.clone()));
        cases.push((format!("py-{method}-chunked"), method, small.clone()));
    }
    cases.push(("py-GET-none".into(), "GET", vec![]));

    let mut bytes_up = 0u64;
    for (name, method, body) in &cases {
        let response = out.result(name);
        assert_eq!(status(response), Some(200), "{name}: {response:#}");
        if name.starts_with("curl") {
            assert_eq!(response["code"], 0, "{name}: curl failed: {response:#}");
            if name.ends_with("expect") {
                assert!(
                    response["stderr"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("< HTTP/1.1 100 Continue"),
                    "{name}: the proxy did not answer Expect: 100-continue: {}",
                    response["stderr"]
                );
            }
            if name.ends_with("chunked") {
                assert!(
                    response["stderr"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("> Transfer-Encoding: chunked"),
                    "{name}: curl did not send a chunked body: {}",
                    response["stderr"]
                );
            }
        }
        assert!(
            via_has_tollgate(&headers(response, "via")),
            "{name}: no Via on the response: {response:#}"
        );
        let seen = echo(response);
        assert_eq!(seen["method"], *method, "{name}: {seen:#}");
        assert_eq!(seen["path"], format!("/echo/m/{name}"), "{name}");
        assert_eq!(
            seen["body"],
            latin1(body),
            "{name}: the upstream got another body"
        );
        assert_eq!(seen["body_len"], body.len(), "{name}");
        let up_headers = |h: &str| headers(&seen, h);
        assert_eq!(up_headers("host"), vec!["up.test:8080"], "{name}: {seen:#}");
        assert!(via_has_tollgate(&up_headers("via")), "{name}: {seen:#}");
        assert!(
            up_headers("transfer-encoding").is_empty() || up_headers("content-length").is_empty(),
            "{name}: the upstream got both framings: {seen:#}"
        );
        assert!(up_headers("expect").is_empty(), "{name}: {seen:#}");
        // Each request decided, sent once, audited once.
        let record = out.record(&format!("/echo/m/{name}"));
        assert_eq!(record["type"], "http");
        assert_eq!(record["method"], *method);
        assert_eq!(record["decision"], "allow");
        assert_eq!(record["status"], 200);
        assert_eq!(record["outcome"], "complete", "{record}");
        assert_eq!(record["bytes_up"], body.len(), "{name}: {record}");
        bytes_up += body.len() as u64;
    }
    assert_eq!(bench.up.requests_to("/echo/m/").len(), cases.len());
    let proxy = out.proxy();
    assert_eq!(proxy["requests"], cases.len(), "{proxy:#}");
    assert_eq!(proxy["denied"], 0, "{proxy:#}");
    assert_eq!(proxy["retried"], 0, "{proxy:#}");
    assert_eq!(proxy["bytes_up"], bytes_up, "{proxy:#}");
    assert_eq!(
        proxy["destinations"],
        serde_json::json!([{"destination": ORIGIN, "requests": cases.len()}]),
        "{proxy:#}"
    );
}

#[test]
fn keep_alive_carries_several_requests_each_decided_on_its_own() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("e2e-keepalive");
    let policy = bench.policy("", "", "");
    let out = bench.run(
        &policy,
        r#"
c = http.client.HTTPConnection(*PROXY, timeout=15)
seen = []
steps = [("GET", "/echo/ka/1", None), ("POST", "/echo/ka/2", b"second"),
         ("GET", "http://nope.test/echo/ka/denied", None), ("PUT", "/echo/ka/4", b"fourth"),
         ("DELETE", "/echo/ka/5", None)]
for method, path, body in steps:
    url = path if path.startswith("http") else U + path
    host = urlsplit(url).netloc
    c.request(method, url, body=body, headers={"Host": host})
    r = c.getresponse()
    data = r.read().decode("latin-1")
    seen.append({"status": r.status, "body": data, "headers": _headers(r.getheaders()),
                 "socket": list(c.sock.getsockname()) if c.sock else None})
results["http.client"] = seen
results["curl"] = curl(U + "/echo/kc/1", U + "/echo/kc/2", U + "/echo/kc/3")
"#,
    );
    let steps = out.result("http.client").as_array().expect("list").clone();
    assert_eq!(steps.len(), 5);
    let first_socket = &steps[0]["socket"];
    assert!(first_socket.is_array(), "{steps:#?}");
    for (i, step) in steps.iter().enumerate() {
        assert_eq!(
            &step["socket"], first_socket,
            "request {i} did not reuse the connection: {steps:#?}"
        );
        if i == 2 {
            assert_refusal(step, 403, "policy_denied", out.execution());
        } else {
            assert_eq!(status(step), Some(200), "{step:#}");
            assert_eq!(echo(step)["path"], format!("/echo/ka/{}", i + 1));
        }
    }
    assert_eq!(echo(&steps[1])["body"], "second");
    assert_eq!(echo(&steps[3])["body"], "fourth");

    let curl = out.result("curl");
    assert_eq!(curl["code"], 0, "{curl:#}");
    let stderr = curl["stderr"].as_str().unwrap_or_default();
    assert_eq!(
        stderr.matches("Re-using existing connection").count(),
        2,
        "curl opened more than one connection for three URLs:\n{stderr}"
    );
    assert_eq!(bench.up.requests_to("/echo/kc/").len(), 3);
    assert_eq!(bench.up.requests_to("/echo/ka/").len(), 4);
    assert!(bench.up.requests_to("/echo/ka/denied").is_empty());

    // One decision and one record per request, whatever connection carried it.
    for path in [
        "/echo/ka/1",
        "/echo/ka/2",
        "/echo/ka/4",
        "/echo/ka/5",
        "/echo/kc/1",
    ] {
        assert_eq!(out.record(path)["decision"], "allow");
    }
    let denied = out.record("/echo/ka/denied");
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["reason"], "host_not_allowed");
    assert_eq!(denied["host"], "nope.test");
    let proxy = out.proxy();
    assert_eq!(proxy["requests"], 7, "{proxy:#}");
    assert_eq!(proxy["denied"], 1, "{proxy:#}");
}

#[test]
fn hop_by_hop_headers_are_removed_both_ways_and_via_is_added() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("e2e-hop");
    let policy = bench.policy("", "", "");
    let out = bench.run(
        &policy,
        r#"
results["request"] = curl(
    "-H", "Connection: X-Named-Hop, keep-alive",
    "-H", "X-Named-Hop: must-not-arrive",
    "-H", "Keep-Alive: timeout=5",
    "-H", "Proxy-Connection: keep-alive",
    "-H", "Proxy-Authorization: Basic cHJveHk6cGFzcw==",
    "-H", "TE: trailers",
    "-H", "Trailer: X-Checksum",
    "-H", "Tollgate-Timeout: 5",
    "-H", "Via: 1.0 client-side",
    "-H", "X-Kept: kept",
    U + "/echo/hop/request")
results["upgrade"] = curl("-H", "Upgrade: websocket", U + "/echo/hop/upgrade")
results["response"] = curl(U + "/hop/response")
results["response-py"] = fetch(U + "/hop/response-py")
"#,
    );
    let request = out.result("request");
    assert_eq!(status(request), Some(200), "{request:#}");
    let seen = echo(request);
    for gone in [
        "connection",
        "x-named-hop",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "trailer",
        "upgrade",
        "tollgate-timeout",
    ] {
        assert!(
            headers(&seen, gone).is_empty(),
            "the upstream received hop-by-hop header {gone}: {seen:#}"
        );
    }
    // The one TE value that goes on: the client takes trailers, and tollgate relays them.
    assert_eq!(headers(&seen, "te"), vec!["trailers"], "{seen:#}");
    assert_eq!(headers(&seen, "x-kept"), vec!["kept"]);
    assert_eq!(headers(&seen, "host"), vec!["up.test:8080"]);
    let via = headers(&seen, "via");
    assert!(via_has_tollgate(&via), "{seen:#}");
    assert!(
        via.iter().any(|v| v.contains("1.0 client-side")),
        "the client's Via was dropped instead of appended to: {via:?}"
    );

    let upgrade = out.result("upgrade");
    assert_eq!(status(upgrade), Some(200), "{upgrade:#}");
    assert!(headers(&echo(upgrade), "upgrade").is_empty());

    for name in ["response", "response-py"] {
        let response = out.result(name);
        assert_eq!(status(response), Some(200), "{name}: {response:#}");
        for gone in [
            "x-resp-hop",
            "keep-alive",
            "proxy-authenticate",
            "proxy-connection",
            "upgrade",
        ] {
            assert!(
                headers(response, gone).is_empty(),
                "{name}: the client received hop-by-hop header {gone}: {response:#}"
            );
        }
        assert!(
            headers(response, "connection")
                .iter()
                .all(|v| !v.to_ascii_lowercase().contains("x-resp-hop")),
            "{name}: {response:#}"
        );
        // `Trailer` is end to end (RFC 9110 §6.6.2) and announces the trailers tollgate
        // relays: it reaches the client naming only those that pass (#14).
        assert!(
            headers(response, "trailer")
                .iter()
                .all(|v| v.eq_ignore_ascii_case("x-checksum")),
            "{name}: {response:#}"
        );
        assert_eq!(headers(response, "x-resp-kept"), vec!["yes"], "{name}");
        assert!(
            via_has_tollgate(&headers(response, "via")),
            "{name}: no Via: 1.1 tollgate on the response: {response:#}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Refusals of malformed requests
// ---------------------------------------------------------------------------------------

#[test]
fn smuggling_and_https_in_absolute_form_are_refused() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("e2e-smuggle");
    let policy = bench.policy("", "", "");
    let out = bench.run(
        &policy,
        r#"
inner = b"GET /echo/smuggled/inner HTTP/1.1\r\nHost: up.test:8080\r\n\r\n"
chunked = b"0\r\n\r\n" + inner
results["cl-te"] = raw(
    b"POST " + U.encode() + b"/echo/smuggled/cl-te HTTP/1.1\r\nHost: up.test:8080\r\n"
    b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(chunked) + chunked,
    until_close=True, timeout=5)
results["te-cl"] = raw(
    b"POST " + U.encode() + b"/echo/smuggled/te-cl HTTP/1.1\r\nHost: up.test:8080\r\n"
    b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n" + chunked,
    until_close=True, timeout=5)
results["two-hosts"] = raw(
    b"GET " + U.encode() + b"/echo/smuggled/two-hosts HTTP/1.1\r\nHost: up.test:8080\r\n"
    b"Host: other.test\r\n\r\n", until_close=True, timeout=5)
results["host-mismatch"] = raw(
    b"GET " + U.encode() + b"/echo/smuggled/host-mismatch HTTP/1.1\r\nHost: other.test\r\n\r\n",
    until_close=True, timeout=5)
results["two-lengths"] = raw(
    b"POST " + U.encode() + b"/echo/smuggled/two-lengths HTTP/1.1\r\nHost: up.test:8080\r\n"
    b"Content-Length: 3\r\nContent-Length: 40\r\n\r\nabc", until_close=True, timeout=5)
results["https"] = raw(
    b"GET https://up.test:8080/echo/smuggled/https HTTP/1.1\r\nHost: up.test:8080\r\n\r\n")
results["ftp"] = raw(b"GET ftp://up.test/echo/smuggled/ftp HTTP/1.1\r\nHost: up.test\r\n\r\n")
results["origin-form"] = raw(
    b"GET /echo/smuggled/origin HTTP/1.1\r\nHost: up.test:8080\r\n\r\n")
results["big-head"] = raw(
    b"GET " + U.encode() + b"/echo/smuggled/big HTTP/1.1\r\nHost: up.test:8080\r\n"
    b"X-Big: " + b"a" * 17000 + b"\r\n\r\n", until_close=True, timeout=5)
results["curl-https-absolute"] = curl("--request-target", "https://up.test:8080/echo/smuggled/curl",
                                      U + "/echo/smuggled/curl")
results["after"] = fetch(U + "/echo/after")
"#,
    );
    let execution = out.execution().to_owned();
    for name in ["cl-te", "te-cl", "two-hosts", "host-mismatch"] {
        let response = out.result(name);
        assert_refusal(response, 400, "invalid_request", &execution);
        assert_eq!(
            response["closed"], true,
            "{name}: the proxy kept the connection open after a framing refusal: {response:#}"
        );
        assert!(
            !response["rest"]
                .as_str()
                .unwrap_or_default()
                .contains("HTTP/1.1"),
            "{name}: a second response followed on the connection: {response:#}"
        );
    }
    let two_lengths = out.result("two-lengths");
    assert_eq!(status(two_lengths), Some(400), "{two_lengths:#}");
    let https = out.result("https");
    let body = assert_refusal(https, 400, "invalid_url", &execution);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("CONNECT"),
        "the https refusal does not say to use CONNECT: {body}"
    );
    for name in ["ftp", "origin-form"] {
        assert_refusal(out.result(name), 400, "invalid_url", &execution);
    }
    let curl_https = out.result("curl-https-absolute");
    assert_refusal(curl_https, 400, "invalid_url", &execution);
    let big = out.result("big-head");
    assert_eq!(status(big), Some(431), "{big:#}");
    assert_eq!(status(out.result("after")), Some(200));
    assert!(
        bench.up.requests_to("/echo/smuggled").is_empty(),
        "a refused request reached the upstream: {:#?}",
        bench.up.requests_to("/echo/smuggled")
    );
    for path in [
        "/echo/smuggled/cl-te",
        "/echo/smuggled/te-cl",
        "/echo/smuggled/two-hosts",
        "/echo/smuggled/host-mismatch",
    ] {
        let record = out.record(path);
        assert_eq!(record["decision"], "deny", "{record}");
        assert_eq!(record["error"], "invalid_request", "{record}");
        assert_eq!(record["status"], 400, "{record}");
    }
    // https, ftp, origin-form, curl's https target: one refusal record each.
    let invalid_url = out
        .audit
        .iter()
        .filter(|r| r["type"] == "http" && r["error"] == "invalid_url")
        .count();
    assert_eq!(invalid_url, 4, "{}", out.audit_text);
}

// ---------------------------------------------------------------------------------------
// CONNECT and destination safety
// ---------------------------------------------------------------------------------------

#[test]
fn connect_tunnels_bytes_to_a_passthrough_entry_and_refuses_other_ports() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("e2e-connect");
    let policy = bench.policy(
        "    tunnel.test: ADDR\n    closed.test: ADDR",
        "    - host: tunnel.test
      ports: [7000, 8080]
      tls: passthrough
      allowed_ips: [SUBNET]
    - host: closed.test
      ports: [7000]
      tls: passthrough",
        "",
    );
    let out = bench.run(
        &policy,
        r#"
def tunnel(target, payloads):
    s = connection()
    s.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target))
    head = read_response(s, head_only=True)
    out = {"status": head["status"], "headers": head.get("headers"), "echoed": []}
    if head["status"] != 200:
        out["body"] = head.get("extra", "")
        s.close()
        return out
    for payload in payloads:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        out["echoed"].append(got == payload)
    s.shutdown(socket.SHUT_WR)
    out["eof"] = s.recv(10) == b""
    s.close()
    return out
results["echo"] = tunnel(b"tunnel.test:7000", [b"hello through the tunnel", bytes(range(256)) * 400])
results["wrong-port"] = tunnel(b"tunnel.test:7001", [])
results["unlisted"] = tunnel(b"nope.test:7000", [])
results["private-without-allowed-ips"] = tunnel(b"closed.test:7000", [])
results["no-port"] = raw(b"CONNECT tunnel.test HTTP/1.1\r\nHost: tunnel.test\r\n\r\n")
results["curl-proxytunnel"] = curl("--proxytunnel", "http://tunnel.test:8080/echo/tunnelled")
# A tunnel's record is written when it closes: give the proxy a moment to see the last close
# before the execution ends (otherwise its outcome would read `shutdown`).
time.sleep(0.3)
"#,
    );
    let execution = out.execution().to_owned();
    let echo_result = out.result("echo");
    assert_eq!(status(echo_result), Some(200), "{echo_result:#}");
    assert_eq!(echo_result["echoed"], serde_json::json!([true, true]));
    assert_eq!(echo_result["eof"], true);

    for name in ["wrong-port", "unlisted"] {
        let response = out.result(name);
        assert_eq!(status(response), Some(403), "{name}: {response:#}");
        assert_eq!(header(response, "tollgate-error"), Some("policy_denied"));
    }
    let ssrf = out.result("private-without-allowed-ips");
    assert_eq!(status(ssrf), Some(403), "{ssrf:#}");
    assert_eq!(header(ssrf, "tollgate-error"), Some("ssrf_denied"));
    assert_refusal(out.result("no-port"), 400, "invalid_url", &execution);

    // A real client through a passthrough tunnel: the upstream sees the client's own request,
    // untouched by the proxy (no Via, the client's Host).
    let curl = out.result("curl-proxytunnel");
    assert_eq!(curl["code"], 0, "{curl:#}");
    assert_eq!(status(curl), Some(200), "{curl:#}");
    let seen = echo(curl);
    assert_eq!(seen["path"], "/echo/tunnelled");
    assert_eq!(headers(&seen, "host"), vec!["tunnel.test:8080"]);
    assert!(headers(&seen, "via").is_empty(), "{seen:#}");

    let tunnels: Vec<&Value> = out
        .audit
        .iter()
        .filter(|r| r["type"] == "connect")
        .collect();
    let echo_record = tunnels
        .iter()
        .find(|r| r["port"] == 7000 && r["host"] == "tunnel.test")
        .unwrap_or_else(|| panic!("no record of the echo tunnel: {tunnels:#?}"));
    let sent = 24 + 256 * 400;
    assert_eq!(echo_record["method"], "CONNECT");
    assert_eq!(echo_record["decision"], "allow");
    assert_eq!(
        echo_record["address"],
        format!("{}:7000", bench.up.addr),
        "{echo_record}"
    );
    assert_eq!(echo_record["bytes_up"], sent, "{echo_record}");
    assert_eq!(echo_record["bytes_down"], sent, "{echo_record}");
    assert_eq!(echo_record["outcome"], "closed", "{echo_record}");
    let refused: Vec<&&Value> = tunnels.iter().filter(|r| r["decision"] == "deny").collect();
    assert_eq!(refused.len(), 4, "{tunnels:#?}");
    let ssrf_record = tunnels
        .iter()
        .find(|r| r["host"] == "closed.test")
        .expect("closed.test record");
    assert_eq!(ssrf_record["reason"], "private_address", "{ssrf_record}");
    assert!(ssrf_record["address"].is_null(), "{ssrf_record}");

    let proxy = out.proxy();
    assert_eq!(proxy["requests"], 2, "{proxy:#}");
    assert_eq!(proxy["denied"], 4, "{proxy:#}");
    let destinations: Vec<&str> = proxy["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .filter_map(|d| d["destination"].as_str())
        .collect();
    assert_eq!(
        destinations,
        vec!["connect://tunnel.test:7000", "connect://tunnel.test:8080"]
    );
}

#[test]
fn private_endpoints_are_reachable_only_through_allowed_ips() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("e2e-ssrf");
    let addr = bench.up.addr;
    let policy = bench.policy(
        "    closed.test: ADDR",
        "    - host: closed.test
      ports: [8080]
      schemes: [http]
    - host: ADDR
      ports: [8080]
      schemes: [http]
      allowed_ips: [SUBNET]",
        "",
    );
    let o = addr.octets();
    let decimal = u32::from(addr);
    let script = format!(
        r#"
results["allowed"] = fetch(U + "/echo/ssrf/allowed")
results["curl-allowed"] = curl(U + "/echo/ssrf/curl-allowed")
results["no-allowed-ips"] = fetch("http://closed.test:8080/echo/ssrf/closed")
results["curl-no-allowed-ips"] = curl("http://closed.test:8080/echo/ssrf/curl-closed")
results["unmatched"] = fetch("http://unlisted.test:8080/echo/ssrf/unmatched")
results["literal"] = fetch("http://{addr}:8080/echo/ssrf/literal")
results["literal-decimal"] = raw(b"GET http://{decimal}:8080/echo/ssrf/decimal HTTP/1.1\r\n\r\n")
results["literal-hex"] = raw(b"GET http://0x{a:02x}.0x{b:02x}.0x{c:02x}.0x{d:02x}:8080/echo/ssrf/hex HTTP/1.1\r\n\r\n")
results["literal-octal"] = raw(b"GET http://0{a:o}.0{b:o}.0{c:o}.0{d:o}:8080/echo/ssrf/octal HTTP/1.1\r\n\r\n")
results["https-absolute"] = raw(b"GET https://up.test:8080/echo/ssrf/https HTTP/1.1\r\nHost: up.test:8080\r\n\r\n")
"#,
        a = o[0],
        b = o[1],
        c = o[2],
        d = o[3],
    );
    let out = bench.run(&policy, &script);
    let execution = out.execution().to_owned();
    for name in [
        "allowed",
        "curl-allowed",
        "literal",
        "literal-decimal",
        "literal-hex",
        "literal-octal",
    ] {
        let response = out.result(name);
        assert_eq!(status(response), Some(200), "{name}: {response:#}");
        let seen = echo(response);
        if name.starts_with("literal") {
            assert_eq!(
                headers(&seen, "host"),
                vec![format!("{addr}:8080").as_str()],
                "{name}: Host is not regenerated from the normalised URL: {seen:#}"
            );
        }
    }
    for name in ["no-allowed-ips", "curl-no-allowed-ips"] {
        let body = assert_refusal(out.result(name), 403, "ssrf_denied", &execution);
        assert!(
            body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("allowed_ips")
                || body["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("private"),
            "{name}: the message does not say what to change: {body}"
        );
    }
    let body = assert_refusal(out.result("unmatched"), 403, "policy_denied", &execution);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("unlisted.test"),
        "{body}"
    );
    assert_refusal(out.result("https-absolute"), 400, "invalid_url", &execution);

    assert!(bench.up.requests_to("/echo/ssrf/closed").is_empty());
    assert!(bench.up.requests_to("/echo/ssrf/curl-closed").is_empty());
    assert!(bench.up.requests_to("/echo/ssrf/unmatched").is_empty());
    assert!(bench.up.requests_to("/echo/ssrf/https").is_empty());
    assert_eq!(bench.up.requests_to("/echo/ssrf/").len(), 6);

    let closed = out.record("/echo/ssrf/closed");
    assert_eq!(closed["decision"], "deny");
    assert_eq!(closed["reason"], "private_address");
    assert_eq!(closed["error"], "ssrf_denied");
    assert!(closed["address"].is_null(), "never dialed: {closed}");
    let unmatched = out.record("/echo/ssrf/unmatched");
    assert_eq!(unmatched["reason"], "host_not_allowed");
    assert_eq!(unmatched["error"], "policy_denied");
    for path in ["/echo/ssrf/decimal", "/echo/ssrf/hex", "/echo/ssrf/octal"] {
        let record = out.record(path);
        assert_eq!(record["host"], addr.to_string(), "{record}");
        assert_eq!(record["address"], format!("{addr}:8080"), "{record}");
        assert_eq!(record["rule"], "network.allow[2]", "{record}");
    }
    assert_eq!(out.record("/echo/ssrf/allowed")["rule"], "network.allow[0]");
    let proxy = out.proxy();
    assert_eq!(proxy["requests"], 6, "{proxy:#}");
    assert_eq!(proxy["denied"], 4, "{proxy:#}");
}

// ---------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------

#[test]
fn size_limits_hold_at_the_limit_and_one_over() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("e2e-sizes");
    let policy = bench.policy(
        "",
        "",
        "limits:\n  max_requests: 100\n  max_request_bytes: 1000\n  max_response_bytes: 2000\nretry:\n  attempts: 1\n",
    );
    let out = bench.run(
        &policy,
        r#"
at, over = body_file(b"a" * 1000), body_file(b"o" * 1001)
results["cl-1000"] = curl("--data-binary", "@" + at, U + "/echo/size/cl-1000")
results["cl-1001"] = curl("--data-binary", "@" + over, U + "/echo/size/cl-1001")
results["chunked-1000"] = curl("-H", "Transfer-Encoding: chunked", "--data-binary", "@" + at,
                               U + "/echo/size/chunked-1000")
results["chunked-1001"] = curl("-H", "Transfer-Encoding: chunked", "--data-binary", "@" + over,
                               U + "/echo/size/chunked-1001")
results["py-chunked-1001"] = fetch(U + "/echo/size/py-chunked-1001", "POST",
                                   iter([b"p" * 600, b"p" * 401]))
results["py-cl-1000"] = fetch(U + "/echo/size/py-cl-1000", "PUT", b"q" * 1000)
results["resp-cl-2000"] = curl(U + "/bytes/2000/cl")
results["resp-cl-2001"] = curl(U + "/bytes/2001/cl")
results["resp-chunked-2000"] = curl(U + "/chunked/2000/ch")
results["resp-chunked-2001"] = curl(U + "/chunked/2001/ch")
results["py-resp-chunked-2001"] = fetch(U + "/chunked/2001/py")
results["after"] = fetch(U + "/echo/size/after")
"#,
    );
    let execution = out.execution().to_owned();
    for (name, size) in [
        ("cl-1000", 1000),
        ("chunked-1000", 1000),
        ("py-cl-1000", 1000),
    ] {
        let response = out.result(name);
        assert_eq!(status(response), Some(200), "{name}: {response:#}");
        assert_eq!(echo(response)["body_len"], size, "{name}");
    }
    for name in ["cl-1001", "chunked-1001", "py-chunked-1001"] {
        let body = assert_refusal(out.result(name), 413, "request_too_large", &execution);
        assert!(
            body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("max_request_bytes"),
            "{body}"
        );
        assert!(
            bench
                .up
                .requests_to(&format!("/echo/size/{name}"))
                .is_empty(),
            "{name}: an oversized body reached the upstream"
        );
    }
    for name in ["resp-cl-2000", "resp-chunked-2000"] {
        let response = out.result(name);
        assert_eq!(response["code"], 0, "{name}: {response:#}");
        assert_eq!(status(response), Some(200), "{name}");
        assert_eq!(response["body"], "x".repeat(2000), "{name}");
    }
    assert_refusal(
        out.result("resp-cl-2001"),
        502,
        "response_too_large",
        &execution,
    );
    // A body without a length over a limit small enough to hold is read whole first, so the
    // client gets the refusal, never a 200 that is cut (or, close-delimited, looks whole).
    assert_refusal(
        out.result("resp-chunked-2001"),
        502,
        "response_too_large",
        &execution,
    );
    let py_cut = out.result("py-resp-chunked-2001");
    assert_eq!(status(py_cut), Some(502), "{py_cut:#}");
    assert_eq!(status(out.result("after")), Some(200));

    let record = out.record("/chunked/2001/ch");
    assert_eq!(record["error"], "response_too_large", "{record}");
    assert_eq!(record["status"], 502, "{record}");
    let record = out.record("/bytes/2001/cl");
    assert_eq!(record["error"], "response_too_large", "{record}");
    assert_eq!(record["status"], 502, "{record}");
    let record = out.record("/echo/size/cl-1001");
    assert_eq!(record["error"], "request_too_large", "{record}");
    assert!(
        record["attempt"].is_null(),
        "refused before any attempt: {record}"
    );
}

#[test]
fn max_requests_counts_requests_and_tunnels_and_max_connections_caps_clients() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("e2e-budget");
    let policy = bench.policy(
        "    tunnel.test: ADDR",
        "    - host: tunnel.test
      ports: [7000]
      tls: passthrough
      allowed_ips: [SUBNET]",
        "limits:\n  max_requests: 3\nretry:\n  attempts: 1\n",
    );
    let out = bench.run(
        &policy,
        r#"
def connect(target):
    s = connection()
    s.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target))
    head = read_response(s, head_only=True)
    if head["status"] == 200:
        s.sendall(b"ping")
        head["echo"] = s.recv(4).decode()
    else:
        head["body"] = head.get("extra", "")
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            head["body"] += chunk.decode("latin-1")
            if head["body"].endswith("}"):
                break
    s.close()
    return head
results["1"] = fetch(U + "/echo/budget/1")
results["2"] = curl(U + "/echo/budget/2")
results["tunnel"] = connect(b"tunnel.test:7000")
results["4"] = fetch(U + "/echo/budget/4")
results["tunnel-over"] = connect(b"tunnel.test:7000")
results["5"] = curl(U + "/echo/budget/5")
"#,
    );
    let execution = out.execution().to_owned();
    assert_eq!(status(out.result("1")), Some(200));
    assert_eq!(status(out.result("2")), Some(200));
    let tunnel = out.result("tunnel");
    assert_eq!(status(tunnel), Some(200), "{tunnel:#}");
    assert_eq!(tunnel["echo"], "ping");
    for name in ["4", "5", "tunnel-over"] {
        let body = assert_refusal(out.result(name), 429, "request_limit_exceeded", &execution);
        assert!(
            body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("max_requests"),
            "{body}"
        );
    }
    assert_eq!(bench.up.requests_to("/echo/budget/").len(), 2);
    let proxy = out.proxy();
    assert_eq!(proxy["requests"], 3, "{proxy:#}");
    assert_eq!(proxy["denied"], 3, "{proxy:#}");
    let record = out.record("/echo/budget/4");
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["error"], "request_limit_exceeded");

    // max_connections: two idle keep-alive clients fill the cap, a third is refused with
    // 503 too_many_connections; once one leaves, a new client gets in.
    let policy = bench.policy("", "", "limits:\n  max_connections: 2\n");
    let out = bench.run(
        &policy,
        r#"
held = []
for i in range(2):
    c = http.client.HTTPConnection(*PROXY, timeout=10)
    c.request("GET", U + "/echo/conn/%d" % i, headers={"Host": "up.test:8080"})
    r = c.getresponse(); r.read()
    results["held-%d" % i] = r.status
    held.append(c)
results["third"] = raw(b"GET " + U.encode() + b"/echo/conn/third HTTP/1.1\r\nHost: up.test:8080\r\n\r\n",
                       until_close=True, timeout=5)
held[0].close()
for attempt in range(100):
    got = raw(b"GET " + U.encode() + b"/echo/conn/later HTTP/1.1\r\nHost: up.test:8080\r\nConnection: close\r\n\r\n",
              timeout=5)
    if got["status"] == 200:
        break
    time.sleep(0.05)
results["later"] = got
held[1].close()
"#,
    );
    let execution = out.execution().to_owned();
    assert_eq!(out.result("held-0"), 200);
    assert_eq!(out.result("held-1"), 200);
    let third = out.result("third");
    let body = assert_refusal(third, 503, "too_many_connections", &execution);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("max_connections"),
        "{body}"
    );
    assert_eq!(third["closed"], true, "{third:#}");
    assert_eq!(status(out.result("later")), Some(200));
    assert!(bench.up.requests_to("/echo/conn/third").is_empty());
}

#[test]
fn timeouts_are_clamped_and_slow_upstreams_get_504() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("e2e-timeouts");
    let policy = bench.policy(
        "",
        "",
        "limits:\n  default_timeout: 1s\n  max_timeout: 3s\nretry:\n  attempts: 1\n",
    );
    let out = bench.run(
        &policy,
        r#"
def with_timeout(path, value):
    return lambda: fetch(U + path, headers={"Tollgate-Timeout": value})
parallel({
    "fast": lambda: fetch(U + "/sleep/200/fast"),
    "default-expires": lambda: fetch(U + "/sleep/2500/default"),
    "raised": with_timeout("/sleep/1500/raised", "30"),
    "clamped-high": with_timeout("/sleep/6000/clamped-high", "30"),
    "clamped-low": with_timeout("/sleep/400/clamped-low", "0.1"),
    "drip-head": lambda: fetch(U + "/drip-head/100/x"),
    "drip-body": lambda: fetch(U + "/drip-body/50/100/x"),
    "curl-drip-body": lambda: curl(U + "/drip-body/50/100/curl"),
    "bad-header": with_timeout("/echo/timeout/bad", "soon"),
})
"#,
    );
    let execution = out.execution().to_owned();
    for name in ["fast", "raised", "clamped-low"] {
        let response = out.result(name);
        assert_eq!(status(response), Some(200), "{name}: {response:#}");
        assert!(
            headers(&echo(response), "tollgate-timeout").is_empty(),
            "{name}: Tollgate-Timeout was forwarded"
        );
    }
    for name in ["default-expires", "clamped-high", "drip-head"] {
        let body = assert_refusal(out.result(name), 504, "timeout", &execution);
        assert!(
            body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("Tollgate-Timeout"),
            "{name}: the message does not say how to wait longer: {body}"
        );
    }
    // Headers arrived in time, the body did not: the client sees a cut body.
    let drip = out.result("drip-body");
    assert_eq!(status(drip), Some(200), "{drip:#}");
    assert!(drip["error"].as_str().is_some(), "{drip:#}");
    let curl_drip = out.result("curl-drip-body");
    assert_eq!(status(curl_drip), Some(200), "{curl_drip:#}");
    assert!(
        matches!(curl_drip["code"].as_i64(), Some(18) | Some(56)),
        "{curl_drip:#}"
    );
    assert!(curl_drip["body"].as_str().unwrap_or_default().len() < 50);
    assert_refusal(out.result("bad-header"), 400, "invalid_request", &execution);
    assert!(bench.up.requests_to("/echo/timeout/bad").is_empty());

    assert_eq!(out.record("/sleep/2500/default")["error"], "timeout");
    assert_eq!(out.record("/drip-body/50/100/x")["outcome"], "timeout");
    // A timeout is not retried: one attempt each.
    assert_eq!(bench.up.requests_to("/sleep/2500/default").len(), 1);
    assert_eq!(bench.up.requests_to("/drip-head/").len(), 1);
}

// ---------------------------------------------------------------------------------------
// Retries and redirects
// ---------------------------------------------------------------------------------------

#[test]
fn retryable_statuses_and_refused_connections_are_retried() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("e2e-retry");
    let policy = bench.policy(
        "",
        "",
        "limits:\n  max_requests: 100\nretry:\n  attempts: 3\n  initial_wait: 10ms\n  max_wait: 50ms\n",
    );
    let out = bench.run(
        &policy,
        r#"
# First, while no pooled upstream connection exists: a reset on a fresh connection.
results["reset"] = fetch(U + "/reset/1/once")
for code in (429, 502, 503, 504):
    results["once-%d" % code] = fetch(U + "/flaky/%d/1/once" % code)
results["twice-503"] = fetch(U + "/flaky/503/2/twice")
results["exhausted"] = fetch(U + "/flaky/503/5/exhausted")
results["not-retryable"] = fetch(U + "/flaky/500/5/not-retryable")
results["post"] = fetch(U + "/flaky/503/1/post", "POST", b"replay-me")
results["refused"] = fetch("http://up.test:9/refused")
results["curl-503"] = curl(U + "/flaky/503/1/curl")
"#,
    );
    let execution = out.execution().to_owned();
    let mut retried = 0;
    for (name, path, attempts) in [
        ("once-429", "/flaky/429/1/once", 2),
        ("once-502", "/flaky/502/1/once", 2),
        ("once-503", "/flaky/503/1/once", 2),
        ("once-504", "/flaky/504/1/once", 2),
        ("twice-503", "/flaky/503/2/twice", 3),
        ("post", "/flaky/503/1/post", 2),
        ("reset", "/reset/1/once", 2),
        ("curl-503", "/flaky/503/1/curl", 2),
    ] {
        let response = out.result(name);
        assert_eq!(status(response), Some(200), "{name}: {response:#}");
        let seen = bench.up.requests_to(path);
        assert_eq!(seen.len(), attempts, "{name}: upstream attempts {seen:#?}");
        let records = out.records(path);
        assert_eq!(records.len(), attempts, "{name}: {records:#?}");
        for (i, record) in records.iter().enumerate() {
            assert_eq!(record["attempt"], i + 1, "{name}: {record}");
            let want = if i + 1 < attempts {
                "retrying"
            } else {
                "complete"
            };
            assert_eq!(record["outcome"], want, "{name}: {record}");
        }
        retried += attempts - 1;
    }
    for seen in bench.up.requests_to("/flaky/503/1/post") {
        assert_eq!(seen["body"], "replay-me", "a retry lost the body: {seen}");
    }
    // Attempts ran out on a retryable status: the last upstream response, as it was.
    let exhausted = out.result("exhausted");
    assert_eq!(status(exhausted), Some(503), "{exhausted:#}");
    assert_eq!(header(exhausted, "tollgate-error"), None);
    assert_eq!(echo(exhausted)["path"], "/flaky/503/5/exhausted");
    assert_eq!(bench.up.requests_to("/flaky/503/5/exhausted").len(), 3);
    retried += 2;
    let not_retryable = out.result("not-retryable");
    assert_eq!(status(not_retryable), Some(500));
    assert_eq!(bench.up.requests_to("/flaky/500/5/not-retryable").len(), 1);
    // A refused connection: retried, then connect_error.
    assert_refusal(out.result("refused"), 502, "connect_error", &execution);
    let records = out.records("/refused");
    assert_eq!(records.len(), 3, "{records:#?}");
    assert_eq!(records[2]["attempt"], 3);
    retried += 2;

    let proxy = out.proxy();
    assert_eq!(proxy["retried"], retried, "{proxy:#}");
    assert!(
        out.finished.stderr.contains("retrying (attempt 2/3)"),
        "no operator log line for the retry:\n{}",
        out.finished.stderr
    );
}

#[test]
fn retry_after_is_honoured_in_both_forms_and_clamped_to_max_wait() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("e2e-retry-after");
    let policy = bench.policy(
        "",
        "",
        "retry:\n  attempts: 2\n  initial_wait: 10ms\n  max_wait: 1s\n",
    );
    let out = bench.run(
        &policy,
        r#"
parallel({
    "seconds": lambda: fetch(U + "/flaky/503/1/seconds?ra=1"),
    "date": lambda: fetch(U + "/flaky/429/1/date?ra=date:2"),
    "too-long": lambda: fetch(U + "/flaky/503/1/too-long?ra=3600"),
})
"#,
    );
    for (name, path) in [
        ("seconds", "/flaky/503/1/seconds"),
        ("date", "/flaky/429/1/date"),
        ("too-long", "/flaky/503/1/too-long"),
    ] {
        assert_eq!(status(out.result(name)), Some(200), "{name}");
        let seen = bench.up.requests_to(path);
        assert_eq!(seen.len(), 2, "{name}: {seen:#?}");
        // The retry waited for Retry-After (at least the 1 s floor), not the 10 ms backoff.
        let gap = seen[1]["t"].as_f64().unwrap() - seen[0]["t"].as_f64().unwrap();
        assert!(
            gap >= 0.9,
            "{name}: retried after {gap:.3}s, before Retry-After"
        );
    }
}

#[test]
fn the_budget_runs_out_in_the_middle_of_retries() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("e2e-retry-budget");
    let policy = bench.policy(
        "",
        "",
        "limits:\n  max_requests: 2\nretry:\n  attempts: 3\n  initial_wait: 10ms\n  max_wait: 50ms\n",
    );
    let out = bench.run(
        &policy,
        r#"
results["mid-retry"] = fetch(U + "/flaky/503/5/budget")
results["after"] = curl(U + "/echo/budget/after")
"#,
    );
    let execution = out.execution().to_owned();
    assert_refusal(
        out.result("mid-retry"),
        429,
        "request_limit_exceeded",
        &execution,
    );
    assert_refusal(
        out.result("after"),
        429,
        "request_limit_exceeded",
        &execution,
    );
    assert_eq!(bench.up.requests_to("/flaky/503/5/budget").len(), 2);
    assert!(bench.up.requests_to("/echo/budget/after").is_empty());
    let records = out.records("/flaky/503/5/budget");
    assert_eq!(records.len(), 3, "{records:#?}");
    assert_eq!(records[0]["outcome"], "retrying");
    assert_eq!(records[1]["outcome"], "retrying");
    assert_eq!(records[2]["decision"], "deny", "{}", records[2]);
    assert_eq!(records[2]["error"], "request_limit_exceeded");
    assert_eq!(records[2]["attempt"], 3, "{}", records[2]);
    let proxy = out.proxy();
    assert_eq!(proxy["requests"], 2, "{proxy:#}");
    assert_eq!(proxy["retried"], 1, "{proxy:#}");
    assert_eq!(proxy["denied"], 2, "{proxy:#}");
}

#[test]
fn redirects_go_back_to_the_client_unfollowed() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("e2e-redirect");
    let policy = bench.policy("", "", "");
    let out = bench.run(
        &policy,
        r#"
for code in (301, 302, 303, 307, 308):
    results["curl-%d" % code] = curl(U + "/redirect/%d/x" % code)
c = http.client.HTTPConnection(*PROXY, timeout=10)
c.request("POST", U + "/redirect/307/post", body=b"data", headers={"Host": "up.test:8080"})
r = c.getresponse(); r.read()
results["http.client-307"] = {"status": r.status, "headers": _headers(r.getheaders())}
"#,
    );
    for code in [301u64, 302, 303, 307, 308] {
        let response = out.result(&format!("curl-{code}"));
        assert_eq!(status(response), Some(code), "{response:#}");
        assert_eq!(
            header(response, "location"),
            Some("http://up.test:8080/echo/redirected")
        );
    }
    let raw = out.result("http.client-307");
    assert_eq!(status(raw), Some(307));
    assert!(
        bench.up.requests_to("/echo/redirected").is_empty(),
        "the proxy followed a redirect"
    );
    assert_eq!(bench.up.requests_to("/redirect/").len(), 6);
    assert_eq!(out.proxy()["requests"], 6);
}

// ---------------------------------------------------------------------------------------
// Audit log and summary
// ---------------------------------------------------------------------------------------

#[test]
fn the_audit_log_records_each_decision_without_secrets() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("e2e-audit");
    let secret = format!(
        "s3cret{}x{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let policy = bench.policy(
        "    closed.test: ADDR",
        "    - host: closed.test\n      ports: [8080]\n      schemes: [http]",
        "limits:\n  max_request_bytes: 100\nretry:\n  attempts: 2\n  initial_wait: 10ms\n  max_wait: 20ms\n",
    );
    let script = r#"
S = "SECRET"
planted = {
    "Authorization": "Bearer " + S,
    "Cookie": "sid=" + S,
    "X-Api-Key": S,
    "Proxy-Authorization": "Basic " + base64.b64encode(("user:" + S).encode()).decode(),
    "X-Set-Cookie": "session=" + S + "; HttpOnly",
}
results["plain"] = fetch(U + "/echo/audit/plain")
results["secrets"] = fetch(U + "/cookie/audit/secrets?token=" + S + "&page=2", headers=planted)
results["curl-secrets"] = curl("-H", "Authorization: Bearer " + S, "-b", "sid=" + S,
                               U + "/echo/audit/curl?api_key=" + S)
results["userinfo"] = raw(("GET http://user:" + S + "@up.test:8080/echo/audit/userinfo HTTP/1.1\r\n"
                           "Host: up.test:8080\r\n\r\n").encode())
results["denied"] = fetch("http://nope.test/audit/denied?token=" + S, headers=planted)
results["ssrf"] = fetch("http://closed.test:8080/audit/ssrf?token=" + S, headers=planted)
results["too-large"] = fetch(U + "/echo/audit/too-large?token=" + S, "POST", b"z" * 101,
                             headers=planted)
results["refused"] = fetch("http://up.test:9/audit/refused?token=" + S, headers=planted)
results["retried"] = fetch(U + "/flaky/503/1/audit?token=" + S, headers=planted)
"#
    .replace("SECRET", &secret);
    // The operator log at debug level, stricter than the INFO default: nothing secret even there.
    let out = bench.run_with(
        Sandbox::new().supervisor_env("TOLLGATE_LOG", "debug"),
        &policy,
        &script,
    );
    let execution = out.execution().to_owned();
    let addr = format!("{}:8080", bench.up.addr);

    // What the upstream got: end-to-end credentials pass (they are the client's own), the
    // proxy's credentials and the userinfo do not.
    let secrets = out.result("secrets");
    assert_eq!(status(secrets), Some(200), "{secrets:#}");
    let seen = echo(secrets);
    assert_eq!(
        headers(&seen, "authorization"),
        vec![format!("Bearer {secret}")]
    );
    assert!(headers(&seen, "proxy-authorization").is_empty(), "{seen:#}");
    assert_eq!(
        seen["path"],
        format!("/cookie/audit/secrets?token={secret}&page=2")
    );
    let userinfo = out.result("userinfo");
    assert_eq!(status(userinfo), Some(200), "{userinfo:#}");
    let seen = echo(userinfo);
    assert!(
        !seen.to_string().contains(&secret),
        "the userinfo password reached the upstream: {seen:#}"
    );
    assert_refusal(out.result("denied"), 403, "policy_denied", &execution);
    assert_refusal(out.result("ssrf"), 403, "ssrf_denied", &execution);
    assert_refusal(
        out.result("too-large"),
        413,
        "request_too_large",
        &execution,
    );
    assert_refusal(out.result("refused"), 502, "connect_error", &execution);
    assert_eq!(status(out.result("retried")), Some(200));
    // Nothing tollgate says to the sandbox repeats a secret either.
    for name in ["denied", "ssrf", "too-large", "refused"] {
        let body = out.result(name)["body"].as_str().unwrap_or_default();
        assert!(
            !body.contains(&secret),
            "{name}: the refusal repeats a secret: {body}"
        );
    }

    // Nothing secret anywhere tollgate writes.
    for (what, text) in [
        ("audit log", out.audit_text.as_str()),
        ("summary", out.summary_text.as_str()),
        ("operator log (stderr)", out.finished.stderr.as_str()),
    ] {
        assert!(
            !text.contains(&secret),
            "the {what} contains a planted secret:\n{text}"
        );
        assert!(
            !text.contains("token="),
            "the {what} contains a query:\n{text}"
        );
        assert!(
            !text.contains("api_key="),
            "the {what} contains a query:\n{text}"
        );
    }

    // The fields of a complete record.
    let plain = out.record("/echo/audit/plain");
    let body_len = out.result("plain")["body"].as_str().unwrap().len();
    let time = plain["time"].as_str().expect("time");
    assert!(
        time.len() >= 20 && time.contains('T') && time.ends_with('Z'),
        "time is not RFC 3339 UTC: {time}"
    );
    assert_eq!(plain["execution"], execution.as_str());
    assert_eq!(plain["team"], "e2e");
    assert_eq!(plain["type"], "http");
    assert_eq!(plain["method"], "GET");
    assert_eq!(plain["scheme"], "http");
    assert_eq!(plain["host"], "up.test");
    assert_eq!(plain["port"], 8080);
    assert_eq!(plain["address"], addr.as_str());
    assert_eq!(plain["decision"], "allow");
    assert_eq!(plain["reason"], "allowed");
    assert_eq!(plain["rule"], "network.allow[0]");
    assert_eq!(plain["status"], 200);
    assert_eq!(plain["attempt"], 1);
    assert_eq!(plain["outcome"], "complete");
    assert!(plain["duration_ms"].is_u64(), "{plain}");
    assert_eq!(plain["bytes_up"], 0);
    assert_eq!(plain["bytes_down"], body_len, "{plain}");

    // Paths are recorded without their query strings.
    for path in [
        "/cookie/audit/secrets",
        "/echo/audit/curl",
        "/echo/audit/userinfo",
        "/audit/denied",
        "/audit/ssrf",
        "/echo/audit/too-large",
    ] {
        out.record(path);
    }
    assert_eq!(out.record("/audit/denied")["reason"], "host_not_allowed");
    assert_eq!(out.record("/audit/ssrf")["reason"], "private_address");
    assert_eq!(out.records("/audit/refused").len(), 2);
    assert_eq!(out.records("/flaky/503/1/audit").len(), 2);
    for record in out
        .audit
        .iter()
        .filter(|r| matches!(r["type"].as_str(), Some("http" | "connect")))
    {
        for key in [
            "time",
            "execution",
            "team",
            "method",
            "scheme",
            "host",
            "port",
            "path",
            "address",
            "decision",
            "reason",
            "rule",
            "status",
            "attempt",
            "duration_ms",
            "bytes_up",
            "bytes_down",
        ] {
            assert!(record.get(key).is_some(), "record without {key}: {record}");
        }
    }

    // The summary's proxy counters agree with the audit log.
    let proxy = out.proxy();
    let allowed_attempts = out
        .audit
        .iter()
        .filter(|r| {
            matches!(r["type"].as_str(), Some("http" | "connect"))
                && r["attempt"].is_u64()
                && r["error"] != "request_limit_exceeded"
        })
        .count();
    assert_eq!(
        proxy["requests"], allowed_attempts,
        "{proxy:#}\n{}",
        out.audit_text
    );
    assert_eq!(proxy["denied"], 3, "{proxy:#}");
    assert_eq!(proxy["retried"], 2, "{proxy:#}");
    let mut per_destination = BTreeMap::new();
    for record in out.audit.iter().filter(|r| r["attempt"].is_u64()) {
        let port = record["port"].as_u64().unwrap();
        *per_destination
            .entry(format!("http://up.test:{port}"))
            .or_insert(0u64) += 1;
    }
    let listed: BTreeMap<String, u64> = proxy["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .map(|d| {
            (
                d["destination"].as_str().unwrap().to_owned(),
                d["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, per_destination, "{proxy:#}");
    assert!(proxy["bytes_down"].as_u64().unwrap() >= body_len as u64);
}
