//! The `tollgate_http` helper against the real proxy's quota refusals (#13): code that uses
//! the helper gets `HttpTeamRateLimited`, `HttpTeamBudgetExhausted` or
//! `HttpQuotaUnavailable`, with the wait and the quota the proxy named, for plain requests
//! and for the `CONNECT` of a passthrough tunnel.
//!
//! The helper's unit tests (`python_helper.rs`) check its parsing against a fake proxy; these
//! check that what the proxy really sends is what the helper reads. Each test runs one
//! `/usr/bin/python3` script with the helper inside `tollgate run` against a real upstream in
//! a network namespace of its own (`tollgate_tests::upstream`), with the node store (no Redis)
//! or a Redis URL nothing listens on. They assert classes, fields and what the upstream saw.
//!
//! Needs root. No packet goes anywhere but loopback and the upstream's veth pair.

use std::{fs, net::TcpListener};

use serde_json::Value;
use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{output, HANG_LIMIT, PYTHON},
    script_run::{assert_ran, Outcome, ScriptRun},
    unique,
    upstream::UpstreamHost,
    Scratch,
};

/// Where the node store keeps one file per team (`QuotaStoreConfig::default().node_dir`).
const NODE_DIR: &str = "/run/tollgate/quotas";

/// Before each test's lines: `call(name, f)` stores what `f()` returned or raised in
/// `results[name]`, printed as one JSON line at exit.
const PRELUDE: &str = r#"
import atexit, json
import tollgate_http
from tollgate_http import http

results = {}
atexit.register(lambda: print(json.dumps(results), flush=True))

def call(name, f):
    try:
        results[name] = {"returned": f()["status_code"]}
    except tollgate_http.HttpError as e:
        results[name] = {
            "class": type(e).__name__,
            "quota_exceeded": isinstance(e, tollgate_http.HttpQuotaExceeded),
            "error": e.error, "status_code": e.status_code, "message": e.message,
            "retry_after": e.retry_after, "quota": e.quota, "scope": e.scope,
        }
"#;

/// One quota of each kind the helper names, each on a host of its own; no retries, so each
/// refusal reaches the code at once.
const QUOTAS: &str = "retry: {attempts: 1}
quotas:
  destinations:
    - host: up.test
      requests_per_minute: 1
    - host: other.test
      requests_per_day: 1
    - host: tunnel.test
      requests_per_minute: 1
";

/// A policy of `team` allowing `up.test` and `other.test` over HTTP and a passthrough
/// `tunnel.test`, all names of `up`, with `quotas`.
fn policy(up: &UpstreamHost, team: &str, quotas: &str) -> String {
    format!(
        "version: 1
team: {team}
network:
  hosts:
    up.test: {addr}
    other.test: {addr}
    tunnel.test: {addr}
  allow:
    - host: up.test
      ports: [8080]
      schemes: [http]
      allowed_ips: [{subnet}]
    - host: other.test
      ports: [8080]
      schemes: [http]
      allowed_ips: [{subnet}]
    - host: tunnel.test
      ports: [8080]
      tls: passthrough
      allowed_ips: [{subnet}]
{quotas}",
        addr = up.addr,
        subnet = up.subnet(),
    )
}

/// Runs `script` (after [`PRELUDE`]) under `policy` with `args` added to `tollgate run`.
fn run(scratch: &Scratch, policy: &str, script: &str, args: &[&str]) -> Outcome {
    let run = ScriptRun::write(scratch, 1, "client", policy, PRELUDE, script);
    let mut sandbox = run.sandbox(Default::default()).timeout("120s");
    for arg in args {
        sandbox = sandbox.arg(arg);
    }
    let mut command = sandbox.command([PYTHON, run.script_arg()]);
    command.env_remove("TOLLGATE_REDIS_URL");
    let outcome = run.outcome(output(&mut command, Some(b""), HANG_LIMIT));
    assert_ran(&outcome);
    outcome
}

/// Removes the node store's file of a team when the test ends, whatever it reached.
struct NodeFiles(String);

impl Drop for NodeFiles {
    fn drop(&mut self) {
        let Ok(entries) = fs::read_dir(NODE_DIR) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().contains(&self.0) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// What the helper raises for one of tollgate's quota answers.
struct Raised {
    class: &'static str,
    error: &'static str,
    status: u16,
}

const RATE_LIMITED: Raised = Raised {
    class: "HttpTeamRateLimited",
    error: "team_rate_limited",
    status: 429,
};
const BUDGET_EXHAUSTED: Raised = Raised {
    class: "HttpTeamBudgetExhausted",
    error: "team_budget_exhausted",
    status: 429,
};
const UNAVAILABLE: Raised = Raised {
    class: "HttpQuotaUnavailable",
    error: "quota_unavailable",
    status: 503,
};

/// Asserts `got` is what the helper raises for `want`, with tollgate's sentence.
fn assert_raised(got: &Value, want: &Raised, outcome: &Outcome) {
    assert_eq!(got["class"], want.class, "{got}\n{}", outcome.describe());
    assert_eq!(got["error"], want.error, "{got}");
    assert_eq!(got["status_code"], want.status, "{got}");
    assert!(
        got["message"].as_str().is_some_and(|m| !m.is_empty()),
        "tollgate's sentence: {got}"
    );
}

/// The `retry_after` the helper read: whole seconds (as the proxy sends them), at least 1.
fn retry_after(got: &Value) -> f64 {
    let seconds = got["retry_after"]
        .as_f64()
        .unwrap_or_else(|| panic!("no retry_after: {got}"));
    assert!(
        seconds >= 1.0 && seconds.fract() == 0.0,
        "Retry-After in whole seconds, at least 1: {got}"
    );
    seconds
}

#[test]
fn the_helper_raises_each_quota_refusal_with_its_wait_and_quota() {
    let _suite = SuiteLock::shared();
    let up = UpstreamHost::start();
    let scratch = Scratch::new("helper-quota");
    let team = unique("helper-quota");
    let _files = NodeFiles(team.clone());
    let prefix = format!("/echo/{team}");
    let script = format!(
        r#"
call("up-1", lambda: http.get("http://up.test:8080{prefix}/up/1"))
call("up-2", lambda: http.get("http://up.test:8080{prefix}/up/2"))
call("other-1", lambda: http.post("http://other.test:8080{prefix}/other/1", json={{"a": 1}}))
call("other-2", lambda: http.post("http://other.test:8080{prefix}/other/2", json={{"a": 1}}))
# The first tunnel is admitted (its TLS then fails: the upstream speaks plain HTTP); the
# second CONNECT is refused by the quota.
call("tunnel-1", lambda: http.get("https://tunnel.test:8080/", timeout=10))
call("tunnel-2", lambda: http.get("https://tunnel.test:8080/", timeout=10))
"#
    );
    let outcome = run(&scratch, &policy(&up, &team, QUOTAS), &script, &[]);
    let got = |name: &str| outcome.result(name).clone();

    assert_eq!(got("up-1")["returned"], 200, "{}", outcome.describe());
    let rate = got("up-2");
    assert_raised(&rate, &RATE_LIMITED, &outcome);
    assert_eq!(rate["quota_exceeded"], true, "{rate}");
    assert!(retry_after(&rate) <= 60.0, "one a minute: {rate}");
    assert_eq!(rate["quota"], "requests_per_minute", "{rate}");
    assert_eq!(rate["scope"], "up.test", "{rate}");

    assert_eq!(got("other-1")["returned"], 200, "{}", outcome.describe());
    let day = got("other-2");
    assert_raised(&day, &BUDGET_EXHAUSTED, &outcome);
    assert_eq!(day["quota_exceeded"], true, "{day}");
    assert!(
        retry_after(&day) <= 86_400.0,
        "to the next UTC midnight: {day}"
    );
    assert_eq!(day["quota"], "requests_per_day", "{day}");
    assert_eq!(day["scope"], "other.test", "{day}");

    let first_tunnel = got("tunnel-1");
    assert_eq!(
        first_tunnel["class"], "HttpConnectionError",
        "{first_tunnel}"
    );
    let tunnel = got("tunnel-2");
    assert_raised(&tunnel, &RATE_LIMITED, &outcome);
    assert!(retry_after(&tunnel) <= 60.0, "{tunnel}");
    assert_eq!(tunnel["quota"], "requests_per_minute", "{tunnel}");
    assert_eq!(tunnel["scope"], "tunnel.test", "{tunnel}");

    // Refused attempts were not dialed, and the helper tried none of them again.
    for path in ["up/1", "other/1"] {
        let seen = up.requests_to(&format!("{prefix}/{path}"));
        assert_eq!(seen.len(), 1, "{path}: {seen:?}");
    }
    for path in ["up/2", "other/2"] {
        let seen = up.requests_to(&format!("{prefix}/{path}"));
        assert!(seen.is_empty(), "{path} was refused, yet sent: {seen:?}");
    }
}

#[test]
fn the_helper_raises_quota_unavailable_when_the_store_cannot_answer() {
    let _suite = SuiteLock::shared();
    let up = UpstreamHost::start();
    let scratch = Scratch::new("helper-quota-down");
    let team = unique("helper-quota-down");
    // A loopback port nothing listens on: every connection is refused at once.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port();
    let redis = format!("redis://127.0.0.1:{port}");
    let prefix = format!("/echo/{team}");
    let script = format!(r#"call("up", lambda: http.get("http://up.test:8080{prefix}/up"))"#);
    let outcome = run(
        &scratch,
        &policy(&up, &team, QUOTAS),
        &script,
        &["--redis-url", &redis, "--quota-store-failure", "deny"],
    );
    let got = outcome.result("up").clone();
    assert_raised(&got, &UNAVAILABLE, &outcome);
    assert_eq!(got["quota_exceeded"], false, "{got}");
    assert!(
        up.requests_to(&prefix).is_empty(),
        "an unchecked quota is not granted: {:?}",
        up.requests_to(&prefix)
    );
}
