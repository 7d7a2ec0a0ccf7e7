//! Shared bench of `proxy_refusals.rs` and `audit_records.rs`: an upstream that writes down
//! every request line it receives (HTTP on 8080, HTTPS on 443 with a test CA of its own), the
//! client helpers of `refusals_client.py`, `tollgate run` with `--audit` and `--summary`, and
//! `tollgate policy eval` against the same policy file.
//!
//! Every name the tests use lies under `up.test` (one leaf certificate, `*.up.test`) and is
//! pinned to the upstream in `network.hosts`; `allowed_ips` covers its /30. Tests that need
//! to tell one refusal's audit record from another's give each its own host name, since the
//! audit writes the normalised path (two spellings of one path are one path there) and
//! aggregates identical refusals.

#![allow(dead_code)] // each test file uses its own part of the bench

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use serde_json::Value;
use tollgate_tests::{
    certs::{make_certificates, Certificates},
    sandbox::{assert_execution_gone, read_json_lines, Finished, Sandbox, PYTHON},
    script_run::{results_line, ScriptRun},
    tollgate,
    upstream::UpstreamHost,
    Scratch,
};

pub const SERVER_PY: &str = include_str!("../refusals_upstream.py");
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

/// One test's upstream host, its CA, and scratch space.
pub struct Bench {
    pub up: UpstreamHost,
    pub scratch: Scratch,
    ca: PathBuf,
    runs: u32,
}

/// What one `tollgate run` left behind.
pub struct Outcome {
    pub finished: Finished,
    /// The client's `results` (Null when it printed none, e.g. when it was killed).
    pub results: Value,
    pub audit: Vec<Value>,
    pub audit_text: String,
    /// The summary (Null when tollgate wrote none).
    pub summary: Value,
    pub summary_text: String,
    pub policy: PathBuf,
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
        let scratch = Scratch::new(tag);
        fs::set_permissions(&scratch.dir, fs::Permissions::from_mode(0o755)).unwrap();
        // One leaf for every name the tests use (see the module doc).
        let Certificates { ca, cert, key } =
            make_certificates(&scratch.dir, &["up.test", "*.up.test"]);
        let up = UpstreamHost::start_server(SERVER_PY, move |addr, log| {
            vec![
                addr.to_string().into(),
                HTTP_PORT.to_string().into(),
                HTTPS_PORT.to_string().into(),
                cert.into(),
                key.into(),
                log.into(),
            ]
        });
        Bench {
            up,
            scratch,
            ca,
            runs: 0,
        }
    }

    /// A policy of team `e2e` pinning each of `names` to the upstream (`name=ADDR` to another
    /// address), trusting its CA, with the allow entries `allow` (YAML list items indented 4;
    /// `SUBNET` is replaced by the upstream's /30) and the top-level sections `top`.
    pub fn policy(&self, names: &[&str], allow: &str, top: &str) -> String {
        let up = self.up.addr.to_string();
        let pins: String = names
            .iter()
            .map(|name| {
                let (name, addr) = name.split_once('=').unwrap_or((name, &up));
                format!("    {name}: {addr}\n")
            })
            .collect();
        format!(
            "version: 1\nteam: e2e\nnetwork:\n  hosts:\n{pins}  upstream_ca: {{file: {ca}}}\n  allow:\n{allow}\n{top}",
            ca = self.ca.display(),
            allow = allow.replace("SUBNET", &self.up.subnet()),
        )
    }

    /// A path for a file tollgate writes (`--log`), in a root-only directory outside the
    /// scratch space the sandbox shares.
    pub fn output(&self, name: &str) -> PathBuf {
        self.scratch.output(name)
    }

    /// Runs `script` (after the client helpers) with `/usr/bin/python3` in `tollgate run
    /// --policy … --audit … --summary …` plus `sandbox`'s options. The exit status is the
    /// test's to check.
    pub fn run(&mut self, sandbox: Sandbox, policy: &str, script: &str) -> Outcome {
        self.runs += 1;
        let n = self.runs;
        let run = ScriptRun::write(&self.scratch, n, "client", policy, CLIENT_PY, script);
        let finished = run.sandbox(sandbox).run([PYTHON, run.script_arg()]);
        assert!(
            self.up.alive(),
            "the upstream server died during the run\n{}",
            finished.describe()
        );
        let results = results_line(&finished.stdout).unwrap_or(Value::Null);
        let summary_text = run.summary_text();
        Outcome {
            audit: read_json_lines(&run.audit),
            audit_text: run.audit_text(),
            summary: serde_json::from_str(summary_text.trim()).unwrap_or(Value::Null),
            summary_text,
            results,
            finished,
            policy: run.policy,
        }
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

    /// The request lines the upstream received (each a JSON entry: scheme, line, method, path).
    pub fn seen(&self) -> Vec<Value> {
        self.up.requests()
    }
}

impl Outcome {
    /// The client's observation `name`; panics with the run's output when missing.
    pub fn result(&self, name: &str) -> &Value {
        let value = &self.results[name];
        assert!(
            !value.is_null(),
            "the client recorded no result {name:?}\n{}",
            self.finished.describe()
        );
        value
    }

    /// The records of `type` `kind` (`http`, `connect`, `bypass_attempt`).
    pub fn records(&self, kind: &str) -> Vec<&Value> {
        self.audit.iter().filter(|r| r["type"] == kind).collect()
    }

    /// The `http` records about `host`.
    pub fn http_records(&self, host: &str) -> Vec<&Value> {
        self.records("http")
            .into_iter()
            .filter(|r| r["host"] == host)
            .collect()
    }

    pub fn execution(&self) -> String {
        self.summary["execution"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The run's output, audit and summary, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "{}\n--- audit ---\n{}\n--- summary ---\n{}",
            self.finished.describe(),
            self.audit_text,
            self.summary_text
        )
    }
}

/// How many events a record stands for: `count` on an aggregated record, else one.
pub fn events(record: &Value) -> u64 {
    record.get("count").and_then(Value::as_u64).unwrap_or(1)
}

/// The events the refusal records (`decision: deny`) among `records` stand for.
pub fn refused_events<'a>(records: impl IntoIterator<Item = &'a Value>) -> u64 {
    records
        .into_iter()
        .filter(|r| r["decision"] == "deny")
        .map(events)
        .sum()
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

/// Asserts the run itself went through: tollgate exited 0, the client printed its results,
/// and nothing of the execution is left behind.
pub fn assert_ran(outcome: &Outcome) {
    assert_eq!(
        outcome.finished.code(),
        0,
        "the run failed\n{}",
        outcome.describe()
    );
    assert!(
        outcome.results.is_object(),
        "the client printed no results\n{}",
        outcome.describe()
    );
    assert_execution_gone(&outcome.execution());
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
