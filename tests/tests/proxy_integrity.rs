//! What the proxy relays is whole or visibly broken, its size and tunnel limits hold whatever
//! the framing, and no echo of an injected secret reaches the sandbox (issue #10, sections 1
//! and 3), end to end: real clients (`/usr/bin/curl`, `/usr/bin/python3` `http.client` and
//! urllib, the `tollgate_http` helper) inside `tollgate run`, over HTTP (forward proxy) and
//! HTTPS (interception, and `tls: passthrough` tunnels), against a hostile upstream
//! (`proxy_integrity_server.py`) in a network namespace of its own.
//!
//! The upstream misbehaves the ways real servers do: bodies delimited by the close of a TLS
//! connection that never sends `close_notify`, a `Content-Length` it does not reach, chunked
//! bodies without the last chunk, bodies over the team's limits in every framing, slow
//! trickles, and echoes of the `Authorization` it received in every place and spelling a
//! response can carry (reason phrase, body, `Location`, `Set-Cookie`, another header; raw,
//! JSON-escaped, URL-encoded).
//!
//! Each test runs one (or two) executions whose script prints its observations as one JSON
//! object; the test checks them against what the upstream logged, the `--audit` records and
//! the `--summary`. No test asserts how long anything took.
//!
//! Needs root (namespaces, veth pairs, `tollgate run`). No packet goes anywhere but loopback
//! and the veth pair of the upstream host (10.201.0.0/16, one /30 per upstream).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use serde_json::Value;
use tollgate_tests::{
    certs::{make_certificates, Certificates},
    leaks::SuiteLock,
    sandbox::{read_json, read_json_lines, shared_dir, Finished, Sandbox, PYTHON},
    script_run::{files_in, results_line, ScriptRun},
    spellings::{spell, SPELLINGS},
    upstream::UpstreamHost,
    Scratch,
};

const SERVER_PY: &str = include_str!("proxy_integrity_server.py");
const CLIENT_PY: &str = include_str!("proxy_integrity_client.py");

/// The bearer token and the Basic password the team's providers inject. Both hold `/`, `:`
/// and `+` (the Basic one a space as well), and the base64 of `robot:<password>` holds `+`,
/// `/` and `=`, so every escaped spelling differs from the plain one.
const BEARER: &str = "e2e/Bear+tok:5ea0-912f==";
const PASSWORD: &str = "pw/Ba:sic+x 31f7x?yz>q";
const USER: &str = "robot";

// ---------------------------------------------------------------------------------------
// The upstream: HTTP on :8080 and HTTPS on :443, with a CA of its own
// ---------------------------------------------------------------------------------------

/// The names the upstream's certificate is valid for (both pinned to it).
const NAMES: [&str; 2] = ["api.example.com", "passthrough.example.com"];

/// One test's upstream, certificates, secrets and scratch space.
struct Bench {
    host: UpstreamHost,
    ca: PathBuf,
    scratch: Scratch,
    runs: u32,
}

/// What one execution left: its output, the script's results, the audit and the summary,
/// and every file the script wrote.
struct Outcome {
    finished: Finished,
    results: Value,
    audit: Vec<Value>,
    audit_text: String,
    summary: Value,
    summary_text: String,
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Bench {
    fn new(tag: &str) -> Bench {
        let scratch = Scratch::new(tag);
        fs::set_permissions(&scratch.dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let Certificates { ca, cert, key } = make_certificates(&scratch.dir, &NAMES);
        let host = UpstreamHost::start_server(SERVER_PY, move |addr, log| {
            vec![addr.to_string().into(), cert.into(), key.into(), log.into()]
        });
        let bench = Bench {
            host,
            ca,
            scratch,
            runs: 0,
        };
        bench.scratch.secret("acme", "bearer.secret", BEARER);
        bench.scratch.secret("acme", "basic.secret", PASSWORD);
        bench
    }

    /// The policy of every test: `api.example.com` on 443 (intercepted) and 8080 (plain),
    /// `passthrough.example.com` on 443 as a raw tunnel, both pinned to the upstream; two
    /// providers (`Bearer`, `Basic One`) scoped to `/echo` and `/scoped` on both schemes.
    /// `limits` lines go under `limits:` (indented by two spaces).
    fn policy(&self, limits: &str) -> String {
        let scope = "[https://api.example.com/echo, https://api.example.com/scoped, \
                     http://api.example.com:8080/echo, http://api.example.com:8080/scoped]";
        format!(
            "version: 1
team: acme
network:
  hosts:
    api.example.com: {addr}
    passthrough.example.com: {addr}
  upstream_ca: {{file: {ca}}}
  allow:
    - host: api.example.com
      ports: [443, 8080]
      allowed_ips: [{subnet}]
    - host: passthrough.example.com
      ports: [443]
      tls: passthrough
      allowed_ips: [{subnet}]
limits:
  default_timeout: 50s
  max_timeout: 60s
{limits}
auth_providers:
  - name: Bearer
    type: bearer
    secret: {{file: bearer.secret}}
    scope: {scope}
  - name: Basic One
    type: basic
    username: {USER}
    secret: {{file: basic.secret}}
    scope: {scope}
",
            addr = self.host.addr,
            subnet = self.host.subnet(),
            ca = self.ca.display(),
        )
    }

    /// Runs `script` (after `proxy_integrity_client.py`) in `tollgate run` with the policy.
    fn run(&mut self, policy: &str, script: &str) -> Outcome {
        self.runs += 1;
        let n = self.runs;
        let run = ScriptRun::write(&self.scratch, n, "script", policy, CLIENT_PY, script);
        let out = shared_dir(&self.scratch, &format!("out{n}"));
        let finished = run
            .sandbox(Sandbox::new())
            .arg("--secrets-dir")
            .arg(self.scratch.secrets_root())
            .timeout("55s")
            .run([PYTHON, run.script_arg(), out.to_str().expect("utf-8")]);
        assert!(
            self.host.alive(),
            "the upstream died during the run\n{}",
            finished.describe()
        );
        let results = results_line(&finished.stdout)
            .unwrap_or_else(|| panic!("the script printed no results\n{}", finished.describe()));
        assert_eq!(finished.code(), 0, "{}", finished.describe());
        Outcome {
            results,
            audit: read_json_lines(&run.audit),
            audit_text: run.audit_text(),
            summary: read_json(&run.summary),
            summary_text: run.summary_text(),
            files: files_in(&out),
            finished,
        }
    }

    /// Paths of the logged requests whose path starts with `prefix`.
    fn arrived(&self, prefix: &str) -> Vec<String> {
        self.host
            .requests_to(prefix)
            .iter()
            .filter_map(|r| r["path"].as_str().map(str::to_owned))
            .collect()
    }
}

impl Outcome {
    fn result(&self, name: &str) -> &Value {
        let value = &self.results[name];
        assert!(
            !value.is_null(),
            "the script recorded no result {name:?}\n{}",
            self.finished.describe()
        );
        value
    }

    /// The last `http` record for `path` (after any `retrying` ones); `null` when there is
    /// none (which fails every check made on it).
    fn http_record(&self, path: &str) -> &Value {
        static NONE: Value = Value::Null;
        self.audit
            .iter()
            .rev()
            .find(|r| r["type"] == "http" && r["path"] == path)
            .unwrap_or(&NONE)
    }

    /// The `connect` records of tunnels to `host`.
    fn tunnels(&self, host: &str) -> Vec<&Value> {
        self.audit
            .iter()
            .filter(|r| r["type"] == "connect" && r["host"] == host)
            .collect()
    }

    fn requests(&self) -> u64 {
        self.summary["proxy"]["requests"]
            .as_u64()
            .unwrap_or(u64::MAX)
    }
}

/// The broken expectations of one test, collected so that one run reports all of them (an
/// acceptance test that stops at the first says little about the rest).
/// The reason phrase a client should see with `standard`'s status: that phrase on an
/// HTTP/1.x head, none on an HTTP/2 one (curl negotiates h2 inside intercepted tunnels, and
/// HTTP/2 has no reason phrase, RFC 9113 §8.3.2).
fn standard_reason<'a>(result: &Value, standard: &'a str) -> &'a str {
    if result["version"] == "HTTP/2" {
        ""
    } else {
        standard
    }
}

#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    fn assert_none(self, outcome: &Outcome) {
        assert!(
            self.0.is_empty(),
            "{} failed expectations:\n- {}\n\ntollgate stderr (last 3000 bytes):\n{}",
            self.0.len(),
            self.0.join("\n- "),
            tail(&outcome.finished.stderr, 3000)
        );
    }
}

fn tail(text: &str, n: usize) -> &str {
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Whether a record names `what` as its error, outcome or reason.
fn record_says(record: &Value, what: &str) -> bool {
    ["error", "outcome", "reason"]
        .iter()
        .any(|field| record[field] == what)
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// A curl result that reached the client whole: exit 0, 200, exactly the server's bytes.
fn is_whole(result: &Value) -> bool {
    result["rc"] == 0 && result["status"] == 200 && result["exact"] == true
}

/// A response tollgate answered itself with `code` (`Tollgate-Error`) and `status`.
fn is_tollgate_error(result: &Value, status: u64, code: &str) -> bool {
    result["status"] == status && result["headers"]["tollgate-error"] == code
}

/// A body the client can tell is incomplete: curl failed (or tollgate answered an error of
/// its own instead), never exit 0 with a 200.
fn curl_saw_it_broken(result: &Value) -> bool {
    let failed = result["rc"] != 0;
    let refused = result["status"].as_u64().is_some_and(|s| s >= 500)
        && result["headers"]["tollgate-error"].is_string();
    failed || refused
}

/// The same for Python (`http.client`, urllib): an exception while reading (`IncompleteRead`
/// for a body cut short), or an error tollgate answered itself.
fn python_saw_it_broken(result: &Value) -> bool {
    let raised = text(&result["error"]).starts_with("IncompleteRead");
    let refused = result["status"].as_u64().is_some_and(|s| s >= 500)
        && result["headers"]["tollgate-error"].is_string();
    raised || refused
}

/// Runs `/usr/bin/curl` in the host namespace straight at the upstream (no tollgate): the
/// control that shows the fixture itself delivers whole bodies.
fn direct_download(bench: &Bench, url: &str, dir: &Path) -> Vec<u8> {
    let file = dir.join("direct.body");
    let _ = fs::remove_file(&file);
    let resolve = |port: u16| format!("api.example.com:{port}:{}", bench.host.addr);
    let out = Command::new("/usr/bin/curl")
        .args(["-sS", "--noproxy", "*", "--max-time", "30", "--cacert"])
        .arg(&bench.ca)
        .args([
            "--resolve",
            &resolve(443),
            "--resolve",
            &resolve(8080),
            "-o",
        ])
        .arg(&file)
        .arg(url)
        .output()
        .expect("run curl on the host");
    assert!(out.status.success(), "direct {url}: {out:?}");
    fs::read(&file).unwrap_or_default()
}

/// The server's body of `n` bytes (see `pattern` in the server).
fn pattern(n: usize) -> Vec<u8> {
    (0..65521u32)
        .map(|i| ((i * 131 + 7) % 256) as u8)
        .cycle()
        .take(n)
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. Integrity of what is relayed
// ---------------------------------------------------------------------------------------

const BIG: usize = 500_000;

#[test]
fn close_delimited_bodies_arrive_whole_or_visibly_failed_over_https_and_http() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("integrity-close");
    // The control: straight from the host, every download is whole (so a short body
    // through tollgate is tollgate's doing).
    let control = Scratch::new("integrity-close-direct");
    for url in [
        "https://api.example.com/close/500000/direct",
        "https://api.example.com/close10/500000/direct",
        "http://api.example.com:8080/close/500000/direct",
    ] {
        assert!(
            direct_download(&bench, url, &control.dir) == pattern(BIG),
            "the fixture itself cut {url} short"
        );
    }
    let policy = bench.policy("  max_requests: 1000\n  max_response_bytes: 4MiB\n");
    let outcome = bench.run(
        &policy,
        r#"
for i in range(15):
    route = "close" if i % 2 == 0 else "close10"
    curl("tls-%d" % i, TLS + "/%s/500000/tls-%d" % (route, i), expect=500000)
for i in range(15):
    route = "close" if i % 2 == 0 else "close10"
    curl("plain-%d" % i, PLAIN + "/%s/500000/plain-%d" % (route, i), expect=500000)
for i in range(5):
    # Content-Length reached, then the bare TCP close: complete by any reading.
    curl("tls-cl-%d" % i, TLS + "/short-cl/500000/500000/tls-cl-%d" % i, expect=500000)
    curl("scoped-%d" % i, TLS + "/scoped/close/500000/scoped-%d" % i, expect=500000)
    fetch("urllib-%d" % i, TLS + "/close/500000/urllib-%d" % i, expect=500000)
    hc("hc-%d" % i, "https", "GET", "/close10/500000/hc-%d" % i, expect=500000)
"#,
    );
    let mut cases: Vec<(String, String)> = Vec::new();
    for i in 0..15 {
        let route = if i % 2 == 0 { "close" } else { "close10" };
        cases.push((format!("tls-{i}"), format!("/{route}/500000/tls-{i}")));
        cases.push((format!("plain-{i}"), format!("/{route}/500000/plain-{i}")));
    }
    for i in 0..5 {
        cases.push((
            format!("scoped-{i}"),
            format!("/scoped/close/500000/scoped-{i}"),
        ));
        cases.push((
            format!("tls-cl-{i}"),
            format!("/short-cl/500000/500000/tls-cl-{i}"),
        ));
    }
    let mut failures = Failures::default();
    let mut whole = Vec::new();
    let mut broken = Vec::new();
    for (name, path) in &cases {
        let result = outcome.result(name);
        if is_whole(result) {
            whole.push((name, path));
            continue;
        }
        // Not whole: the client must have seen a failure. Over plain HTTP the close is the
        // end of the body, and a Content-Length that was reached is the end of it whatever
        // came after, so those may not fail at all.
        let must_be_whole = name.starts_with("plain") || name.starts_with("tls-cl");
        failures.check(result["rc"] != 0 && !must_be_whole, || {
            format!(
                "{name}: curl exit {} status {}: {} of {BIG} bytes (content intact so far: {})",
                result["rc"], result["status"], result["len"], result["prefix_ok"]
            )
        });
        broken.push(name.clone());
        let record = outcome.http_record(path);
        failures.check(record["outcome"] != "complete", || {
            format!(
                "{name}: the client got {} bytes but the audit says complete: {record}",
                result["len"]
            )
        });
    }
    for i in 0..5 {
        for name in [format!("urllib-{i}"), format!("hc-{i}")] {
            let result = outcome.result(&name);
            let ok =
                (result["status"] == 200 && result["exact"] == true) || result["error"].is_string();
            failures.check(ok, || {
                format!(
                    "{name}: Python read {} of {BIG} bytes as a complete body",
                    result["len"]
                )
            });
        }
    }
    for (name, path) in whole {
        let record = outcome.http_record(path);
        failures.check(record["bytes_down"] == BIG, || {
            format!("{name}: the audit must count what the client got: {record}")
        });
    }
    eprintln!(
        "{} of {} curl downloads whole; failed visibly: {broken:?}",
        cases.len() - broken.len(),
        cases.len()
    );
    failures.assert_none(&outcome);
}

#[test]
fn bodies_the_upstream_cut_short_reach_the_client_visibly_incomplete() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("integrity-short");
    let policy = bench.policy("  max_requests: 1000\n  max_response_bytes: 4MiB\n");
    let outcome = bench.run(
        &policy,
        r#"
for scheme, base in (("https", TLS), ("http", PLAIN)):
    for scope in ("", "/scoped"):
        tag = scheme + scope.replace("/", "-")
        cl = scope + "/short-cl/500000/300000/"
        ch = scope + "/short-chunked/300000/"
        curl("curl-cl-" + tag, base + cl + "curl-" + tag, expect=500000)
        curl("curl-chunked-" + tag, base + ch + "curl-" + tag)
        hc("hc-cl-" + tag, scheme, "GET", cl + "hc-" + tag, expect=500000)
        hc("hc-chunked-" + tag, scheme, "GET", ch + "hc-" + tag)
        fetch("urllib-cl-" + tag, base + cl + "urllib-" + tag, expect=500000)
        fetch("urllib-chunked-" + tag, base + ch + "urllib-" + tag)
        helper("helper-cl-" + tag, "GET", base + cl + "helper-" + tag)
        helper("helper-chunked-" + tag, "GET", base + ch + "helper-" + tag)
"#,
    );
    let mut failures = Failures::default();
    for tag in ["https", "https-scoped", "http", "http-scoped"] {
        let scope = if tag.ends_with("scoped") {
            "/scoped"
        } else {
            ""
        };
        for (framing, route) in [
            ("cl", "/short-cl/500000/300000/"),
            ("chunked", "/short-chunked/300000/"),
        ] {
            let curl = outcome.result(&format!("curl-{framing}-{tag}"));
            failures.check(curl_saw_it_broken(curl), || {
                format!(
                    "curl {framing} {tag}: a body the upstream cut short ended cleanly: exit {}, \
                     status {}, {} bytes",
                    curl["rc"], curl["status"], curl["len"]
                )
            });
            for client in ["hc", "urllib"] {
                let result = outcome.result(&format!("{client}-{framing}-{tag}"));
                failures.check(python_saw_it_broken(result), || {
                    format!(
                        "{client} {framing} {tag}: no IncompleteRead for a body cut short: \
                         status {}, error {}, {} bytes",
                        result["status"], result["error"], result["len"]
                    )
                });
            }
            let helper = outcome.result(&format!("helper-{framing}-{tag}"));
            failures.check(helper["raised"].is_string(), || {
                format!(
                    "helper {framing} {tag}: returned a body cut short as a response: status {}, \
                     {} characters",
                    helper["status"], helper["len"]
                )
            });
            let path = format!("{scope}{route}curl-{tag}");
            let record = outcome.http_record(&path);
            failures.check(
                record.is_object() && record["outcome"] != "complete",
                || format!("{path}: the audit must not call a cut body complete: {record}"),
            );
        }
    }
    failures.assert_none(&outcome);
}

// ---------------------------------------------------------------------------------------
// 2. max_response_bytes whatever the framing
// ---------------------------------------------------------------------------------------

const FRAMINGS: [&str; 4] = ["cl", "chunked", "close", "close10"];

#[test]
fn max_response_bytes_is_response_too_large_in_every_framing_and_the_limit_passes() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("integrity-response-limit");
    let policy = bench.policy("  max_requests: 1000\n  max_response_bytes: 64KiB\n");
    let outcome = bench.run(
        &policy,
        r#"
# Bodies within the limit end with a clean TLS close (?notify=1): what a close without
# close_notify does is the business of the truncation tests.
for scheme, base in (("https", TLS), ("http", PLAIN)):
    for framing in ("cl", "chunked", "close", "close10"):
        for n in (65000, 65536):
            curl("%s-%s-%d" % (scheme, framing, n),
                 base + "/%s/%d/curl-%s?notify=1" % (framing, n, scheme), expect=n)
        for n in (65537, 1000000):
            curl("%s-%s-%d" % (scheme, framing, n),
                 base + "/%s/%d/curl-%s" % (framing, n, scheme), expect=n)
        for n in (65537, 1000000):
            helper("helper-%s-%s-%d" % (scheme, framing, n), "GET",
                   base + "/%s/%d/helper-%s" % (framing, n, scheme))
        hc("hc-%s-%s" % (scheme, framing), scheme, "GET",
           "/%s/1000000/hc-%s" % (framing, scheme), expect=1000000)
    for framing in ("chunked", "close"):
        curl("scoped-%s-%s" % (scheme, framing),
             base + "/scoped/%s/1000000/curl-%s" % (framing, scheme), expect=1000000)
"#,
    );
    let mut failures = Failures::default();
    for scheme in ["https", "http"] {
        for framing in FRAMINGS {
            for n in [65000, 65536] {
                let name = format!("{scheme}-{framing}-{n}");
                let result = outcome.result(&name);
                failures.check(is_whole(result), || {
                    format!(
                        "{name}: a body within the limit must pass whole: exit {}, status {}, \
                         {} bytes, tollgate-error {}",
                        result["rc"],
                        result["status"],
                        result["len"],
                        result["headers"]["tollgate-error"]
                    )
                });
                let record = outcome.http_record(&format!("/{framing}/{n}/curl-{scheme}"));
                failures.check(record["bytes_down"] == n, || {
                    format!("{name}: audit bytes_down: {record}")
                });
            }
            for n in [65537, 1_000_000] {
                let name = format!("{scheme}-{framing}-{n}");
                let result = outcome.result(&name);
                failures.check(
                    is_tollgate_error(result, 502, "response_too_large") && result["rc"] == 0,
                    || {
                        format!(
                            "{name}: over max_response_bytes curl must get a whole 502 \
                             response_too_large: exit {}, status {}, {} bytes, tollgate-error {}",
                            result["rc"],
                            result["status"],
                            result["len"],
                            result["headers"]["tollgate-error"]
                        )
                    },
                );
                let helper = outcome.result(&format!("helper-{name}"));
                failures.check(helper["raised"] == "HttpResponseTooLarge", || {
                    format!(
                        "helper {name}: want HttpResponseTooLarge, got {} (status {})",
                        helper["raised"], helper["status"]
                    )
                });
                let path = format!("/{framing}/{n}/curl-{scheme}");
                let record = outcome.http_record(&path);
                failures.check(record_says(record, "response_too_large"), || {
                    format!("{path}: the audit must say response_too_large: {record}")
                });
            }
            let name = format!("hc-{scheme}-{framing}");
            let result = outcome.result(&name);
            failures.check(
                is_tollgate_error(result, 502, "response_too_large") && result["error"].is_null(),
                || {
                    format!(
                        "{name}: http.client must read a whole 502 response_too_large: status \
                         {}, error {}, tollgate-error {}",
                        result["status"], result["error"], result["headers"]["tollgate-error"]
                    )
                },
            );
        }
        for framing in ["chunked", "close"] {
            let name = format!("scoped-{scheme}-{framing}");
            let result = outcome.result(&name);
            failures.check(is_tollgate_error(result, 502, "response_too_large"), || {
                format!(
                    "{name}: inside a provider's scope too: status {}, exit {}, {} bytes",
                    result["status"], result["rc"], result["len"]
                )
            });
        }
    }
    failures.assert_none(&outcome);
}

#[test]
fn a_response_limit_too_big_to_buffer_still_never_ends_an_over_limit_body_cleanly() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("integrity-response-stream");
    let limit: u64 = 20 << 20;
    let policy = bench.policy("  max_requests: 1000\n  max_response_bytes: 20MiB\n");
    let outcome = bench.run(
        &policy,
        &format!(
            r#"
LIMIT = {limit}
for scheme, base in (("https", TLS), ("http", PLAIN)):
    for framing in ("chunked", "close"):
        curl("exact-%s-%s" % (scheme, framing),
             base + "/%s/%d/exact-%s?notify=1" % (framing, LIMIT, scheme), expect=LIMIT)
        curl("over-%s-%s" % (scheme, framing),
             base + "/%s/%d/over-%s" % (framing, LIMIT + 1, scheme), expect=LIMIT + 1)
    hc("hc-" + scheme, scheme, "GET", "/close/%d/hc-%s" % (LIMIT + 1, scheme), expect=LIMIT + 1)
"#
        ),
    );
    let mut failures = Failures::default();
    for scheme in ["https", "http"] {
        for framing in ["chunked", "close"] {
            let exact = outcome.result(&format!("exact-{scheme}-{framing}"));
            failures.check(is_whole(exact), || {
                format!(
                    "{scheme} {framing}: a body of exactly max_response_bytes must pass whole: \
                     exit {}, status {}, {} bytes",
                    exact["rc"], exact["status"], exact["len"]
                )
            });
            let name = format!("over-{scheme}-{framing}");
            let result = outcome.result(&name);
            failures.check(
                curl_saw_it_broken(result) && result["exact"] != true,
                || {
                    format!(
                        "{name}: one byte over a 20MiB limit reached curl as a clean end: exit \
                         {}, status {}, {} bytes",
                        result["rc"], result["status"], result["len"]
                    )
                },
            );
            let path = format!("/{framing}/{}/over-{scheme}", limit + 1);
            let record = outcome.http_record(&path);
            failures.check(record_says(record, "response_too_large"), || {
                format!("{path}: the audit must say response_too_large: {record}")
            });
        }
        // An aborted stream may reach Python as IncompleteRead (no last chunk) or as a reset.
        let hc = outcome.result(&format!("hc-{scheme}"));
        let failed = hc["error"].is_string() || python_saw_it_broken(hc);
        failures.check(failed && hc["exact"] != true, || {
            format!(
                "http.client {scheme}: read an over-limit body as complete: status {}, error {}, \
                 {} bytes",
                hc["status"], hc["error"], hc["len"]
            )
        });
    }
    failures.assert_none(&outcome);
}

// ---------------------------------------------------------------------------------------
// 3. max_request_bytes over HTTP and HTTPS, up to 64 MiB
// ---------------------------------------------------------------------------------------

/// Checks one over-limit upload as its client saw it.
fn check_request_too_large(failures: &mut Failures, outcome: &Outcome, name: &str) {
    let result = outcome.result(name);
    if name.starts_with("helper") {
        failures.check(
            result["raised"] == "HttpRequestTooLarge" && result["status"] == 413,
            || {
                format!(
                    "{name}: the helper must raise HttpRequestTooLarge (413), raised {}: {}",
                    result["raised"], result["message"]
                )
            },
        );
        return;
    }
    let stderr = text(&result["stderr"]);
    failures.check(is_tollgate_error(result, 413, "request_too_large"), || {
        format!(
            "{name}: the client must read 413 request_too_large: status {}, tollgate-error {}, \
             {}",
            result["status"],
            result["headers"]["tollgate-error"],
            if name.starts_with("curl") {
                format!("curl exit {} {:?}", result["rc"], stderr.trim())
            } else {
                format!("raised {}", result["error"])
            }
        )
    });
    // And nothing else went wrong on the way (the answer arrived, then a clean end).
    if name.starts_with("curl") {
        let bad = ["Broken pipe", "SSL", "reset", "Send failure"]
            .iter()
            .any(|b| stderr.contains(b));
        failures.check(result["rc"] == 0 && !bad, || {
            format!("{name}: curl exit {}: {:?}", result["rc"], stderr.trim())
        });
    } else if result["status"] == 413 {
        failures.check(result["error"].is_null(), || {
            format!(
                "{name}: http.client raised {} reading the 413",
                result["error"]
            )
        });
    }
}

/// The script lines that upload `n` bytes with every client over both schemes (each result
/// is named `<client>-<scheme>-<framing>-<n>[-<try>]`, see [`upload_names`]).
fn upload_script(n: u64) -> String {
    format!(
        r#"
N = {n}
DATA = b"u" * N
for scheme, base in (("https", TLS), ("http", PLAIN)):
    for t in range(3):
        name = "helper-%s-cl-%d-%d" % (scheme, N, t)
        helper(name, "POST", base + "/upload/" + name, data=DATA)
    for framing in ("cl", "chunked"):
        name = "curl-%s-%s-%d" % (scheme, framing, N)
        args = ["-H", "Expect:", "--data-binary", "@" + body_file(N)]
        if framing == "chunked":
            args += ["-H", "Transfer-Encoding: chunked"]
        curl(name, *args, base + "/upload/" + name)
        name = "hc-%s-%s-%d" % (scheme, framing, N)
        hc(name, scheme, "POST", "/upload/" + name, body=DATA, chunked=framing == "chunked")
    # curl's own way for big bodies: Expect: 100-continue
    name = "curl-%s-expect-%d" % (scheme, N)
    curl(name, "--data-binary", "@" + body_file(N), base + "/upload/" + name)
"#
    )
}

fn upload_names(n: u64) -> Vec<String> {
    let mut names = Vec::new();
    for scheme in ["https", "http"] {
        for t in 0..3 {
            names.push(format!("helper-{scheme}-cl-{n}-{t}"));
        }
        for framing in ["cl", "chunked"] {
            names.push(format!("curl-{scheme}-{framing}-{n}"));
            names.push(format!("hc-{scheme}-{framing}-{n}"));
        }
        names.push(format!("curl-{scheme}-expect-{n}"));
    }
    names
}

#[test]
fn max_request_bytes_is_answered_413_over_https_and_http_for_every_client_and_framing() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("integrity-request-limit");
    let policy = bench.policy("  max_requests: 1000\n  max_request_bytes: 100KiB\n");
    let script = format!(
        r#"
for scheme, base in (("https", TLS), ("http", PLAIN)):
    helper("at-limit-" + scheme, "POST", base + "/upload/at-limit-" + scheme, data=b"u" * 102400)
{}
{}
"#,
        upload_script(110_000),
        upload_script(1_000_000)
    );
    let outcome = bench.run(&policy, &script);
    let mut failures = Failures::default();
    for scheme in ["https", "http"] {
        let at = outcome.result(&format!("at-limit-{scheme}"));
        failures.check(
            at["status"] == 200 && text(&at["text"]).contains("102400"),
            || format!("{scheme}: a body of exactly max_request_bytes must pass: {at}"),
        );
    }
    for n in [110_000, 1_000_000] {
        for name in upload_names(n) {
            check_request_too_large(&mut failures, &outcome, &name);
        }
    }
    let arrived: Vec<String> = bench
        .arrived("/upload/")
        .into_iter()
        .filter(|p| !p.starts_with("/upload/at-limit"))
        .collect();
    failures.check(arrived.is_empty(), || {
        format!("over-limit uploads reached the upstream: {arrived:?}")
    });
    let refused = outcome
        .audit
        .iter()
        .filter(|r| r["type"] == "http" && record_says(r, "request_too_large"))
        .map(|r| r["count"].as_u64().unwrap_or(1))
        .sum::<u64>();
    let want = 2 * upload_names(1).len() as u64;
    failures.check(refused == want, || {
        format!("{refused} request_too_large records for {want} refused uploads")
    });
    failures.assert_none(&outcome);
}

#[test]
fn a_64_mib_body_over_the_limit_is_answered_413_not_a_broken_connection() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("integrity-request-64mib");
    let policy = bench.policy("  max_requests: 1000\n  max_request_bytes: 100KiB\n");
    let n = 64 << 20;
    let outcome = bench.run(&policy, &upload_script(n));
    let mut failures = Failures::default();
    for name in upload_names(n) {
        check_request_too_large(&mut failures, &outcome, &name);
    }
    let arrived = bench.arrived("/upload/");
    failures.check(arrived.is_empty(), || {
        format!("over-limit uploads reached the upstream: {arrived:?}")
    });
    failures.assert_none(&outcome);
}

// ---------------------------------------------------------------------------------------
// 4. Passthrough tunnels
// ---------------------------------------------------------------------------------------

#[test]
fn passthrough_tunnels_are_cut_at_max_tunnel_bytes_and_max_tunnel_duration() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("integrity-tunnel-limits");
    let limit: u64 = 64 << 10;
    let policy = bench
        .policy("  max_requests: 1000\n  max_tunnel_bytes: 64KiB\n  max_tunnel_duration: 2s\n");
    let outcome = bench.run(
        &policy,
        r#"
curl("small", PASS + "/cl/1000/pt-small", expect=1000)
curl("download", PASS + "/cl/1000000/pt-download", expect=1000000)
curl("upload", "-H", "Expect:", "--data-binary", "@" + body_file(1000000),
     PASS + "/upload/pt-upload")
curl("slow", PASS + "/trickle/15/pt-slow")
"#,
    );
    let mut failures = Failures::default();
    let small = outcome.result("small");
    failures.check(is_whole(small), || {
        format!("a tunnel within its limits must work: {small}")
    });
    let download = outcome.result("download");
    failures.check(
        download["rc"] != 0
            && download["exact"] != true
            && download["len"].as_u64().unwrap_or(u64::MAX) <= limit,
        || {
            format!(
                "1 MB through a 64KiB tunnel: curl exit {}, {} bytes",
                download["rc"], download["len"]
            )
        },
    );
    let upload = outcome.result("upload");
    failures.check(upload["rc"] != 0 && upload["status"] != 200, || {
        format!(
            "1 MB up a 64KiB tunnel was answered: exit {}, status {}",
            upload["rc"], upload["status"]
        )
    });
    let slow = outcome.result("slow");
    failures.check(slow["rc"] != 0, || {
        format!(
            "a 15 s trickle outlived max_tunnel_duration 2s: exit {}",
            slow["rc"]
        )
    });

    let tunnels = outcome.tunnels("passthrough.example.com");
    failures.check(tunnels.len() == 4, || {
        format!("{} connect records for 4 tunnels", tunnels.len())
    });
    let cut: Vec<&&Value> = tunnels
        .iter()
        .filter(|r| r["outcome"] == "tunnel_bytes_exceeded")
        .collect();
    failures.check(cut.len() == 2, || {
        format!(
            "{} tunnel_bytes_exceeded records, want 2 (download, upload)",
            cut.len()
        )
    });
    for record in &cut {
        let total =
            record["bytes_up"].as_u64().unwrap_or(0) + record["bytes_down"].as_u64().unwrap_or(0);
        failures.check(
            total >= limit / 2 && total <= 2 * limit + (16 << 10),
            || format!("a tunnel cut at max_tunnel_bytes counts bytes near the limit: {record}"),
        );
    }
    let downloads = cut
        .iter()
        .filter(|r| r["bytes_down"].as_u64() > r["bytes_up"].as_u64())
        .count();
    failures.check(downloads == 1 && cut.len() == 2, || {
        format!("one cut download and one cut upload: {cut:?}")
    });
    let timed_out = tunnels
        .iter()
        .filter(|r| r["outcome"] == "tunnel_duration_exceeded")
        .count();
    failures.check(timed_out == 1, || {
        format!("{timed_out} tunnel_duration_exceeded records, want 1")
    });
    failures.check(outcome.requests() == 4, || {
        format!("4 tunnels are 4 requests: {}", outcome.summary_text)
    });
    if !failures.0.is_empty() {
        failures.0.push(format!("audit:\n{}", outcome.audit_text));
    }
    failures.assert_none(&outcome);
}

#[test]
fn a_passthrough_tunnel_is_one_request_and_the_next_tunnel_is_refused_at_max_requests() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("integrity-tunnel-count");
    let policy = bench.policy("  max_requests: 1\n");
    let outcome = bench.run(
        &policy,
        r#"
args = ["/usr/bin/curl", "-sS", "--max-time", "30", "-w", "%{http_code} %{num_connects}\n"]
for i in range(8):
    args += ["-o", "/dev/null", PASS + "/count/%d" % i]
done = subprocess.run(args, capture_output=True)
results["one-tunnel"] = {"rc": done.returncode, "lines": done.stdout.decode().split("\n"),
                         "stderr": done.stderr.decode()}
curl("second-tunnel", PASS + "/count/second")
curl("intercepted", TLS + "/count/intercepted")
"#,
    );
    let mut failures = Failures::default();
    let one = outcome.result("one-tunnel");
    let lines: Vec<&str> = one["lines"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let connects: u32 = lines
        .iter()
        .filter_map(|l| l.split(' ').nth(1)?.parse::<u32>().ok())
        .sum();
    failures.check(
        one["rc"] == 0
            && lines.len() == 8
            && lines.iter().all(|l| l.starts_with("200 "))
            && connects == 1,
        || format!("8 requests on one tunnel (one connection) all pass: {one}"),
    );
    for name in ["second-tunnel", "intercepted"] {
        let result = outcome.result(name);
        failures.check(result["rc"] != 0 || result["status"] == 429, || {
            format!(
                "{name}: with max_requests 1 spent on a tunnel, nothing else goes out: {result}"
            )
        });
    }
    let arrived = bench.arrived("/count/");
    failures.check(
        arrived.len() == 8 && arrived.iter().all(|p| p[7..].parse::<u32>().is_ok()),
        || format!("the upstream got the 8 tunnelled requests and nothing else: {arrived:?}"),
    );
    failures.check(outcome.requests() == 1, || {
        format!("one tunnel is one request: {}", outcome.summary_text)
    });
    let tunnels = outcome.tunnels("passthrough.example.com");
    let allowed = tunnels.iter().filter(|r| r["decision"] == "allow").count();
    let refused: Vec<&&Value> = tunnels.iter().filter(|r| r["decision"] == "deny").collect();
    failures.check(
        allowed == 1 && refused.len() == 1 && record_says(refused[0], "request_limit_exceeded"),
        || {
            format!(
                "one allowed tunnel and one refused request_limit_exceeded:\n{}",
                outcome.audit_text
            )
        },
    );
    failures.assert_none(&outcome);
}

// ---------------------------------------------------------------------------------------
// 5. Echoed secrets
// ---------------------------------------------------------------------------------------

/// Where the upstream puts an echo, and how it spells it (see the server). `early` (a 103
/// before the answer) is read through raw sockets only: http.client takes a 103 for the
/// answer.
const WHERES: [&str; 7] = [
    "reason", "body", "location", "cookie", "xecho", "trailer", "split",
];

/// Every spelling of every secret the sandbox must never see: (what, needle).
fn needles() -> Vec<(String, String)> {
    let userpass = format!("{USER}:{PASSWORD}");
    let token = STANDARD.encode(&userpass);
    let mut needles = Vec::new();
    for (what, value) in [
        ("bearer token", BEARER),
        ("password", PASSWORD),
        ("basic token", token.as_str()),
        ("user:pass", userpass.as_str()),
    ] {
        for how in SPELLINGS {
            needles.push((format!("{what} ({how})"), spell(value, how)));
        }
    }
    needles
}

#[test]
fn every_spelling_of_the_test_secrets_differs_from_the_plain_one() {
    // The premise of the echo test: each secret has characters every encoding changes.
    let token = STANDARD.encode(format!("{USER}:{PASSWORD}"));
    for value in [BEARER, PASSWORD, token.as_str()] {
        for how in &SPELLINGS[1..] {
            assert_ne!(spell(value, how), value, "{how} of {value}");
        }
    }
    let spelled: Vec<String> = SPELLINGS.iter().map(|how| spell(PASSWORD, how)).collect();
    for (i, a) in spelled.iter().enumerate() {
        assert!(!spelled[i + 1..].contains(a), "two encodings spell {a}");
    }
    assert!(
        token.contains('+') && token.contains('/') && token.ends_with('='),
        "{token}"
    );
    assert_eq!(spell("a/b c+d:e", "url_plus"), "a%2Fb+c%2Bd%3Ae");
    assert_eq!(spell("a/b:c", "json_u"), "a\\u002fb\\u003ac");
}

#[test]
fn echoed_secrets_never_reach_the_sandbox_in_any_place_or_spelling() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("integrity-echo");
    let policy = bench.policy("  max_requests: 2000\n");
    let outcome = bench.run(
        &policy,
        r#"
WHERES = ["reason", "body", "location", "cookie", "xecho", "trailer", "split"]
SPELLINGS = ["raw", "json", "json_u", "json_U", "json_mixed", "url", "url_lower", "url_plus",
             "url_path"]
PROVIDERS = {"Bearer": ["header", "secret"],
             "Basic One": ["header", "secret", "token", "userpass"]}
echoes = {}
for scheme in ("https", "http"):
    connection = Connection(scheme)
    for provider, whats in PROVIDERS.items():
        for where in WHERES:
            for what in whats:
                for how in SPELLINGS:
                    path = "/echo/%s/%s/%s/%s-%s" % (where, what, how, scheme,
                                                     provider.replace(" ", "-"))
                    status, reason, fields, data, error = connection.request(
                        "GET", path, headers={"Tollgate-Auth": provider})
                    echoes[path] = [status, reason, error]
                    save("hc" + path.replace("/", "_"), "%s %s\n%s\n\n%s" % (
                        status, reason, json.dumps(fields), data.decode("latin-1")))
    connection.close()
results["echoes"] = echoes
# Raw sockets: every byte on the wire, 103s, trailers and the status line included.
for scheme in ("https", "http"):
    for provider, whats in PROVIDERS.items():
        for where in ("early", "trailer", "reason", "split"):
            for what in whats[:3]:
                for how in ("raw", "json", "url"):
                    path = "/echo/%s/%s/%s/raw-%s-%s" % (where, what, how, scheme,
                                                        provider.replace(" ", "-"))
                    save("raw" + path.replace("/", "_"),
                         raw(scheme, path, {"Tollgate-Auth": provider}))
# curl shows the raw status line (-i) and everything it saw (-v, in its stderr).
for base, scheme in ((TLS, "https"), (PLAIN, "http")):
    for provider, what in (("Bearer", "header"), ("Bearer", "secret"), ("Basic One", "header"),
                           ("Basic One", "token"), ("Basic One", "secret")):
        for where in ("reason", "location", "cookie", "body"):
            name = "curl-%s-%s-%s-%s" % (scheme, provider.replace(" ", "-"), what, where)
            curl(name, "-i", "-v", "-H", "Tollgate-Auth: " + provider,
                 base + "/echo/%s/%s/raw/%s" % (where, what, name), keep=True)
    for how in ("raw", "json", "url", "url_lower", "url_plus"):
        for where in ("body", "xecho", "cookie"):
            name = "helper-%s-%s-%s" % (scheme, how, where)
            helper(name, "GET", base + "/echo/%s/token/%s/%s" % (where, how, name),
                   auth="Basic One")
            save(name + ".json", json.dumps(results[name]))
        name = "urllib-%s-%s" % (scheme, how)
        fetch(name, base + "/echo/body/secret/%s/%s" % (how, name),
              headers={"Tollgate-Auth": "Bearer"})
        save(name + ".json", json.dumps(results[name]))
"#,
    );
    let mut failures = Failures::default();
    // The upstream really got both secrets, so each echo carried one.
    let authorizations: Vec<String> = bench
        .host
        .requests()
        .iter()
        .flat_map(|r| r["headers"].as_array().cloned().unwrap_or_default())
        .filter(|h| h[0] == "authorization")
        .filter_map(|h| h[1].as_str().map(str::to_owned))
        .collect();
    let basic = format!("Basic {}", STANDARD.encode(format!("{USER}:{PASSWORD}")));
    assert!(
        authorizations.contains(&format!("Bearer {BEARER}")) && authorizations.contains(&basic),
        "both providers' credentials were injected: {authorizations:?}"
    );
    // Every echo was answered with its own status and the standard reason phrase.
    let echoes = outcome.result("echoes").as_object().expect("echoes");
    assert_eq!(echoes.len(), 2 * 6 * WHERES.len() * SPELLINGS.len());
    for (path, seen) in echoes {
        let (status, reason) = if path.starts_with("/echo/location/") {
            (302, "Found")
        } else {
            (200, "OK")
        };
        failures.check(
            seen[2].is_null() && seen[0] == status && seen[1] == reason,
            || format!("{path}: want {status} {reason}, got [status, reason, error] {seen}"),
        );
    }
    for (name, result) in outcome.results.as_object().expect("results") {
        if name.starts_with("curl-") {
            let (status, reason) = if name.ends_with("-location") {
                (302, "Found")
            } else {
                (200, "OK")
            };
            let reason = standard_reason(result, reason);
            failures.check(
                result["status"] == status && result["reason"] == reason,
                || {
                    format!(
                        "{name}: want {status} {reason}, got {} (reason phrase withheld)",
                        result["status"]
                    )
                },
            );
        }
        if name.starts_with("helper-") || name.starts_with("urllib-") {
            failures.check(result["status"] == 200, || {
                format!("{name}: status {}", result["status"])
            });
        }
    }

    // Nowhere the sandbox or an operator sees: not one spelling of one secret.
    let mut places: Vec<(String, Vec<u8>)> = outcome
        .files
        .iter()
        .map(|(path, data)| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            (name.unwrap_or_default(), data.clone())
        })
        .collect();
    assert!(
        places.len() > 600,
        "the script saved what it saw: {:?}",
        places.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    places.push((
        "stdout".into(),
        outcome.finished.stdout.clone().into_bytes(),
    ));
    places.push((
        "stderr".into(),
        outcome.finished.stderr.clone().into_bytes(),
    ));
    places.push(("audit".into(), outcome.audit_text.clone().into_bytes()));
    places.push(("summary".into(), outcome.summary_text.clone().into_bytes()));
    for (place, data) in &places {
        if place.starts_with("raw_echo_reason_") {
            failures.check(data.starts_with(b"HTTP/1.1 200 OK\r\n"), || {
                let line = data.split(|b| *b == b'\n').next().unwrap_or_default();
                format!(
                    "{place}: the status line on the wire is {:?}",
                    String::from_utf8_lossy(line)
                )
            });
        }
    }
    let needles = needles();
    places.sort();
    for (place, data) in &places {
        let found: Vec<&str> = needles
            .iter()
            .filter(|(_, needle)| {
                data.windows(needle.len())
                    .any(|window| window == needle.as_bytes())
            })
            .map(|(what, _)| what.as_str())
            .collect();
        failures.check(found.is_empty(), || {
            format!("{place} shows {}", found.join(", "))
        });
    }
    failures.assert_none(&outcome);
}

#[test]
fn the_client_gets_the_standard_reason_phrase_never_the_upstreams() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("integrity-reason");
    let policy = bench.policy("  max_requests: 100\n");
    let outcome = bench.run(
        &policy,
        r#"
for scheme, base in (("https", TLS), ("http", PLAIN)):
    for scope in ("", "/scoped"):
        for code, text in ((200, "Totally%20Fine"), (201, "Made%20It"), (404, "Gone%20Fishing"),
                           (451, "Ask%20Legal")):
            path = "%s/reason/%d/%s/%s" % (scope, code, text, scheme)
            tag = "%s%s-%d" % (scheme, scope.replace("/", "-"), code)
            curl("curl-" + tag, "-i", base + path)
            hc("hc-" + tag, scheme, "GET", path)
"#,
    );
    let mut failures = Failures::default();
    for scheme in ["https", "http"] {
        for scope in ["", "-scoped"] {
            for (code, reason) in [
                (200, "OK"),
                (201, "Created"),
                (404, "Not Found"),
                (451, "Unavailable For Legal Reasons"),
            ] {
                for client in ["curl", "hc"] {
                    let name = format!("{client}-{scheme}{scope}-{code}");
                    let result = outcome.result(&name);
                    let reason = standard_reason(result, reason);
                    failures.check(
                        result["status"] == code && result["reason"] == reason,
                        || {
                            format!(
                                "{name}: want {code} {reason:?}, got {} {}",
                                result["status"], result["reason"]
                            )
                        },
                    );
                }
            }
        }
    }
    failures.assert_none(&outcome);
}
