//! The `tollgate_http` helper end to end: importable in every sandbox, refusing every call
//! when the execution has no network, and refusing URLs and headers it cannot send before
//! anything leaves the sandbox.
//!
//! Each test runs one `/usr/bin/python3` script inside `tollgate run` that prints its
//! observations as one JSON object: for each call, the class of what it raised, the
//! message, and whether it is an `HttpError`.
//!
//! Needs root. The only upstream is a server in a network namespace the test builds
//! (`tollgate_tests::upstream`); no packet goes anywhere but loopback and its veth pair.

use serde_json::Value;
use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{read_json_lines, Finished, Sandbox, OFFLINE_POLICY, PYTHON},
    upstream::UpstreamHost,
    Scratch,
};

/// Runs each `(name, call)` of `CALLS` (a Python list of pairs of a name and a lambda) and
/// prints `{name: [class, message, is an HttpError, error code]}` (or `["returned", status]`).
const PROBE: &str = r#"
import json, os, sys
out = {"imported": False}
try:
    import tollgate_http
    from tollgate_http import http, HttpError
    out["imported"] = True
except Exception as e:
    out["import_error"] = "%s: %s" % (type(e).__name__, e)
    print(json.dumps(out))
    sys.exit(0)
out["helper_dir"] = os.path.dirname(tollgate_http.__file__)
out["ca_bundle_beside"] = os.path.exists(os.path.join(out["helper_dir"], "..", "ca-bundle.pem"))
out["env"] = {k: v for k, v in os.environ.items()
              if k in ("SSL_CERT_FILE", "HTTP_PROXY", "HTTPS_PROXY", "PYTHONPATH")}
results = {}
for name, call in CALLS:
    try:
        response = call()
        results[name] = ["returned", response["status_code"]]
    except Exception as e:
        results[name] = [type(e).__name__, str(e), isinstance(e, HttpError),
                         getattr(e, "error", None)]
out["results"] = results
print(json.dumps(out))
"#;

/// The message the contract of #10 fixes for a call with the network off.
const NOT_ENABLED: &str = "HTTP requests are not enabled for this execution";

/// Runs `calls` (Python source of the `CALLS` list) in a sandbox and returns the JSON it
/// printed.
fn probe(sandbox: Sandbox, scratch: &Scratch, calls: &str) -> (Value, Finished) {
    let script = scratch.file("probe.py", &format!("CALLS = {calls}\n{PROBE}"));
    let finished = sandbox.run([PYTHON, script.to_str().expect("utf-8 path")]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let line = finished
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("the probe printed no results\n{}", finished.describe()));
    let results = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("results are not JSON ({e})\n{}", finished.describe()));
    (results, finished)
}

/// Every function of the helper's API, each with arguments that would be sent were the
/// network on (and one with a URL that would not).
const EVERY_CALL: &str = r#"[
    ("get", lambda: http.get("http://api.example.com/x")),
    ("head", lambda: http.head("https://api.example.com/x")),
    ("post", lambda: http.post("https://api.example.com/x", json={"a": 1}, auth="Key")),
    ("put", lambda: http.put("http://api.example.com/x", data=b"raw")),
    ("patch", lambda: http.patch("http://api.example.com/x", data={"k": "v"})),
    ("delete", lambda: http.delete("http://api.example.com/x", timeout=3)),
    ("request", lambda: http.request("OPTIONS", "http://api.example.com/x")),
    ("invalid_url", lambda: http.get("not a url")),
]"#;

fn assert_every_call_not_enabled(results: &Value, finished: &Finished) {
    assert_eq!(
        results["imported"],
        true,
        "the helper is importable without network: {results}\n{}",
        finished.describe()
    );
    assert_eq!(
        results["ca_bundle_beside"], false,
        "no CA bundle without network: {results}"
    );
    for name in ["SSL_CERT_FILE", "HTTP_PROXY", "HTTPS_PROXY"] {
        assert!(
            results["env"].get(name).is_none(),
            "no {name} without network: {results}"
        );
    }
    let calls = results["results"].as_object().expect("results");
    assert_eq!(calls.len(), 8, "{results}");
    for (name, outcome) in calls {
        assert_eq!(
            outcome[0], "HttpNotEnabled",
            "{name} raises HttpNotEnabled: {outcome}"
        );
        assert_eq!(outcome[1], NOT_ENABLED, "{name}: {outcome}");
        assert_eq!(outcome[2], true, "{name}: HttpNotEnabled is an HttpError");
    }
}

#[test]
fn the_helper_is_importable_and_refuses_every_call_without_network() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("helper-offline");
    let offline = scratch.file("offline.yaml", OFFLINE_POLICY);
    // A policy without `network`, and no policy at all: both mean no network.
    for sandbox in [Sandbox::new().policy(&offline), Sandbox::new()] {
        let (results, finished) = probe(sandbox, &scratch, EVERY_CALL);
        assert_every_call_not_enabled(&results, &finished);
    }
}

#[test]
fn the_helper_offline_keeps_the_callers_pythonpath_after_its_own() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("helper-offline-path");
    let (results, finished) = probe(
        Sandbox::new().arg("--env").arg("PYTHONPATH=/mine"),
        &scratch,
        "[]",
    );
    assert_eq!(results["imported"], true, "{}", finished.describe());
    let helper_dir = results["helper_dir"].as_str().expect("helper_dir");
    assert!(
        helper_dir.starts_with("/run/tollgate/"),
        "the helper lives in the execution's runtime directory: {results}"
    );
    assert_eq!(
        results["env"]["PYTHONPATH"].as_str(),
        Some(format!("{helper_dir}:/mine").as_str()),
        "{results}"
    );
}

#[test]
fn helper_variables_cannot_be_handed_in() {
    let _lock = SuiteLock::shared();
    for flag in ["--env", "--pass-env"] {
        let value = if flag == "--env" {
            "TOLLGATE_HTTP=enabled"
        } else {
            "TOLLGATE_HTTP"
        };
        let finished = Sandbox::new()
            .supervisor_env("TOLLGATE_HTTP", "enabled")
            .arg(flag)
            .arg(value)
            .run(["/bin/true"]);
        assert_eq!(finished.code(), 125, "{}", finished.describe());
        assert!(
            finished.stderr.contains("TOLLGATE_HTTP"),
            "{}",
            finished.describe()
        );
    }
}

/// URLs, headers and arguments the helper cannot send. Each must raise `HttpInvalidURL` (or
/// its subclass for headers and arguments) before any byte leaves the sandbox.
const UNSENDABLE: &str = r#"[
    ("space_in_path", lambda: http.get("http://up.test:8080/echo/a b")),
    ("space_in_path_https", lambda: http.get("https://up.test:8080/echo/a b")),
    ("space_in_host", lambda: http.get("http://up .test:8080/echo/x")),
    ("crlf_in_path", lambda: http.get("http://up.test:8080/echo/x\r\nX-Injected: 1")),
    ("tab_in_path", lambda: http.get("http://up.test:8080/echo/\tx")),
    ("nul_in_path", lambda: http.get("http://up.test:8080/echo/\x00")),
    ("del_in_query", lambda: http.get("http://up.test:8080/echo/x?a=\x7f")),
    ("leading_space", lambda: http.get(" http://up.test:8080/echo/x")),
    ("no_scheme", lambda: http.get("up.test:8080/echo/x")),
    ("no_scheme_slashes", lambda: http.get("//up.test:8080/echo/x")),
    ("ftp_scheme", lambda: http.get("ftp://up.test:8080/echo/x")),
    ("file_scheme", lambda: http.get("file:///etc/passwd")),
    ("empty_host", lambda: http.get("http:///echo/x")),
    ("empty_host_port", lambda: http.get("http://:8080/echo/x")),
    ("port_zero", lambda: http.get("http://up.test:0/echo/x")),
    ("port_too_big", lambda: http.get("http://up.test:65536/echo/x")),
    ("bad_ipv6", lambda: http.get("http://[::1/echo/x")),
    ("backslash", lambda: http.get("http://up.test:8080\\@evil.test/echo/x")),
    ("userinfo", lambda: http.get("http://user:pass@up.test:8080/echo/x")),
    ("not_a_string", lambda: http.get(b"http://up.test:8080/echo/x")),
    ("header_value_crlf", lambda: http.get("http://up.test:8080/echo/x",
                                           headers={"X-A": "v\r\nX-Injected: 1"})),
    ("header_value_lf", lambda: http.get("http://up.test:8080/echo/x",
                                         headers={"X-A": "v\nX-Injected: 1"})),
    ("header_name_colon", lambda: http.get("http://up.test:8080/echo/x",
                                           headers={"X-A: b": "v"})),
    ("header_name_space", lambda: http.get("http://up.test:8080/echo/x",
                                           headers={"X A": "v"})),
    ("header_name_empty", lambda: http.get("http://up.test:8080/echo/x", headers={"": "v"})),
    ("auth_crlf", lambda: http.get("http://up.test:8080/echo/x", auth="K\r\nX-Injected: 1")),
    ("method_with_space", lambda: http.request("GET /other", "http://up.test:8080/echo/x")),
    ("method_empty", lambda: http.request("", "http://up.test:8080/echo/x")),
    ("timeout_negative", lambda: http.get("http://up.test:8080/echo/x", timeout=-1)),
    ("timeout_nan", lambda: http.get("http://up.test:8080/echo/x", timeout=float("nan"))),
    ("timeout_text", lambda: http.get("http://up.test:8080/echo/x", timeout="soon")),
    ("json_and_data", lambda: http.post("http://up.test:8080/echo/x", json={}, data="x")),
    ("json_unencodable", lambda: http.post("http://up.test:8080/echo/x", json={"a": object()})),
    ("data_number", lambda: http.post("http://up.test:8080/echo/x", data=5)),
    ("sent", lambda: http.get("http://up.test:8080/echo/sent")),
]"#;

#[test]
fn urls_and_headers_that_cannot_be_sent_raise_before_anything_is_sent() {
    let _lock = SuiteLock::shared();
    let up = UpstreamHost::start();
    let scratch = Scratch::new("helper-invalid");
    let policy = format!(
        "version: 1\nteam: helper\nnetwork:\n  hosts:\n    up.test: {}\n  allow:\n    - host: up.test\n      ports: [8080]\n      schemes: [http, https]\n      allowed_ips: [{}]\n",
        up.addr,
        up.subnet()
    );
    let policy = scratch.file("policy.yaml", &policy);
    let audit = scratch.output("audit.jsonl");
    let (results, finished) = probe(
        Sandbox::new().policy(&policy).audit(&audit),
        &scratch,
        UNSENDABLE,
    );
    assert_eq!(results["imported"], true, "{}", finished.describe());
    let calls = results["results"].as_object().expect("results");
    for (name, outcome) in calls {
        if name == "sent" {
            continue;
        }
        let class = outcome[0].as_str().unwrap_or_default();
        let expected = if name.starts_with("header")
            || name.starts_with("auth")
            || name.starts_with("method")
            || name.starts_with("timeout")
            || name.starts_with("json")
            || name.starts_with("data")
        {
            "HttpInvalidRequest"
        } else {
            "HttpInvalidURL"
        };
        assert_eq!(class, expected, "{name}: {outcome}");
        assert_eq!(outcome[2], true, "{name} raises an HttpError: {outcome}");
        assert!(
            !outcome[1].as_str().unwrap_or_default().is_empty(),
            "{name} says what is wrong: {outcome}"
        );
    }
    assert_eq!(
        calls["sent"][0], "returned",
        "a valid request still goes through: {results}"
    );
    assert_eq!(calls["sent"][1], 200, "{results}");
    // Only the valid request reached the proxy (its records name a host; the sandbox's own
    // records do not) and the upstream.
    let records: Vec<Value> = read_json_lines(&audit)
        .into_iter()
        .filter(|r| r.get("host").is_some())
        .collect();
    assert_eq!(
        records.len(),
        1,
        "only the valid request reached the proxy: {records:#?}"
    );
    assert_eq!(records[0]["path"], "/echo/sent", "{records:#?}");
    let seen: Vec<Value> = up.requests();
    assert_eq!(
        seen.len(),
        1,
        "only the valid request reached the upstream: {seen:#?}"
    );
}
