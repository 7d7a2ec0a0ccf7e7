//! Shared bench of `proxy_refusals.rs`, `audit_records.rs` and `run_violation.rs`: an upstream
//! that writes down every request line it receives (HTTP on 8080, HTTPS on 443 with a test CA
//! of its own: the test host of `tollgate_tests::bench`), the client
//! helpers of `refusals_client.py`, `tollgate run` with `--audit` and `--summary`, and
//! `tollgate policy eval` against the same policy file.
//!
//! Every name the tests use lies under `up.test` (one leaf certificate, `*.up.test`) and is
//! pinned to the upstream in `network.hosts`; `allowed_ips` covers its /30. Tests that need
//! to tell one refusal's audit record from another's give each its own host name, since the
//! audit writes the normalised path (two spellings of one path are one path there) and
//! aggregates identical refusals.

#![allow(dead_code)] // each test file uses its own part of the bench

use std::{
    ops::{Deref, DerefMut},
    path::Path,
};

use serde_json::Value;
#[allow(unused_imports)] // each test file uses its own part of these
pub use tollgate_tests::script_run::{assert_ran, events, refused_events, Outcome};
use tollgate_tests::{bench, tollgate};

pub const CLIENT_PY: &str = include_str!("../refusals_client.py");
pub const HTTP_PORT: u16 = 8080;
pub const HTTPS_PORT: u16 = 443;

/// One allow entry for `host` on both ports and schemes, with `extra` YAML lines (indented 6).
pub fn entry(host: &str, extra: &str) -> String {
    format!(
        "    - host: {host}\n      ports: [8080, 443]\n      schemes: [http, https]\n      allowed_ips: [SUBNET]\n{extra}"
    )
}

/// `scheme://host[:8080]` for the upstream's port of that scheme.
pub fn origin(scheme: &str, host: &str) -> String {
    match scheme {
        "http" => format!("http://{host}:8080"),
        _ => format!("https://{host}"),
    }
}

/// `deny_rules: [{method: "*", path: /admin/**}]`, as `extra` lines of [`entry`].
pub const DENY_ADMIN: &str = "      deny_rules:\n        - {method: \"*\", path: \"/admin/**\"}\n";

/// The shared bench (`tollgate_tests::bench`: the host, its CA, `policy`, `run`, `output`,
/// its log) serving HTTP on 8080 and HTTPS on 443, plus what only these suites ask of it.
pub struct Bench(bench::Bench);

impl Deref for Bench {
    type Target = bench::Bench;

    fn deref(&self) -> &bench::Bench {
        &self.0
    }
}

impl DerefMut for Bench {
    fn deref_mut(&mut self) -> &mut bench::Bench {
        &mut self.0
    }
}

/// What `tollgate policy eval` answered.
#[derive(Debug)]
pub struct Eval {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// stdout as JSON, when it is.
    pub json: Value,
}

impl Eval {
    /// The decision's `reason` ("" when there is none).
    pub fn reason(&self) -> &str {
        self.json["reason"].as_str().unwrap_or_default()
    }
}

impl Bench {
    pub fn new(tag: &str) -> Bench {
        // One leaf for every name the tests use (see the module doc).
        Bench(bench::Bench::start(
            tag,
            &["up.test", "*.up.test"],
            &[&format!("http:{HTTP_PORT}"), &format!("https:{HTTPS_PORT}")],
            CLIENT_PY,
        ))
    }

    /// `tollgate policy eval POLICY METHOD URL --resolve HOST=<upstream> [-H header]...`,
    /// never asking the host's resolver.
    pub fn eval(&self, policy: &Path, method: &str, url: &str, headers: &[&str]) -> Eval {
        let host = url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split(['/', ':', '?']).next())
            .unwrap_or("up.test");
        let mut command = tollgate();
        command
            .args(["policy", "eval"])
            .arg(policy)
            .args([method, url, "--resolve"])
            .arg(format!("{host}={}", self.up.addr));
        for header in headers {
            command.args(["--header", header]);
        }
        let output = command.output().expect("run tollgate policy eval");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        Eval {
            code: output
                .status
                .code()
                .expect("policy eval exits with a status"),
            json: serde_json::from_str(stdout.trim()).unwrap_or(Value::Null),
            stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The request lines the upstream received (each a JSON entry: scheme, port, line,
    /// method, path, headers), without the connections it also logs.
    pub fn seen(&self) -> Vec<Value> {
        self.events_of("request")
    }
}

/// Whether `text` is an RFC 3339 UTC time with milliseconds: `2026-01-31T23:59:59.123Z`.
pub fn is_rfc3339_ms(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| range.into_iter().all(|i| b[i].is_ascii_digit());
    b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z'
        && (1..=12).contains(&text[5..7].parse::<u32>().unwrap_or(0))
        && (1..=31).contains(&text[8..10].parse::<u32>().unwrap_or(0))
        && text[11..13].parse::<u32>().unwrap_or(99) < 24
        && text[14..16].parse::<u32>().unwrap_or(99) < 60
        && text[17..19].parse::<u32>().unwrap_or(99) < 61
}

/// The `Tollgate-Error` header of a client result.
pub fn tollgate_error(response: &Value) -> Option<&str> {
    response["headers"].as_array()?.iter().find_map(|pair| {
        (pair[0] == "tollgate-error")
            .then(|| pair[1].as_str())
            .flatten()
    })
}

/// The JSON refusal body of a client result (Null when the body is not JSON).
pub fn refusal_body(response: &Value) -> Value {
    serde_json::from_str(response["body"].as_str().unwrap_or_default()).unwrap_or(Value::Null)
}
