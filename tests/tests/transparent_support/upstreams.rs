//! The bench of `transparent_dns.rs` and `transparent_refusals.rs`: a test host in a network
//! namespace of its own that writes down every connection, request line and DNS message it
//! receives (`transparent_refusals_upstream.py`), the client helpers of
//! `transparent_refusals_client.py`, and `tollgate run` with `--audit` and `--summary`.
//!
//! The suites include this file with `#[path]`, so it needs no `mod.rs` of its own.
//!
//! Every name the policies use (`allowed.test`, `other.test`, `*.allowed.test`) is pinned to
//! the host in `network.hosts`, and `allowed_ips` covers its /30: the proxy dials only the
//! test namespace. The HTTPS services present one leaf for all those names, signed by the
//! test's own CA (`network.upstream_ca`).

#![allow(dead_code)] // each suite uses its own part of the bench

use std::{fs, os::unix::fs::PermissionsExt as _, path::PathBuf};

use serde_json::Value;
use tollgate_tests::{
    certs::{make_certificates, Certificates},
    sandbox::{assert_execution_gone, read_json_lines, Finished, Sandbox, PYTHON},
    script_run::{results_line, ScriptRun},
    upstream::UpstreamHost,
    Scratch,
};

pub const UPSTREAM_PY: &str = include_str!("../transparent_refusals_upstream.py");
pub const CLIENT_PY: &str = include_str!("../transparent_refusals_client.py");

/// The plain HTTP port the policies allow.
pub const HTTP_PORT: u16 = 8080;
/// The HTTPS port the policies allow (the scheme's default).
pub const HTTPS_PORT: u16 = 443;
/// A plain HTTP port the host serves and no policy allows.
pub const HTTP_DENIED_PORT: u16 = 8081;
/// An HTTPS port the host serves and no policy allows.
pub const HTTPS_DENIED_PORT: u16 = 8443;

/// The services of the usual host: both allowed ports and both refused ones.
pub const WEB_SERVICES: [&str; 4] = ["http:8080", "https:443", "http:8081", "https:8443"];

/// One test's host, its CA, and scratch space for the runs.
pub struct Bench {
    pub up: UpstreamHost,
    pub scratch: Scratch,
    pub ca: PathBuf,
    runs: u32,
}

/// What one `tollgate run` left behind.
pub struct Outcome {
    pub finished: Finished,
    /// The client's `results` (Null when it printed none).
    pub results: Value,
    pub audit: Vec<Value>,
    pub audit_text: String,
    /// The summary (Null when tollgate wrote none).
    pub summary: Value,
    pub summary_text: String,
}

impl Bench {
    /// A host serving `services` (`http:PORT`, `https:PORT`, `dns:PORT`).
    pub fn new(tag: &str, services: &[&str]) -> Bench {
        let scratch = Scratch::new(tag);
        fs::set_permissions(&scratch.dir, fs::Permissions::from_mode(0o755)).unwrap();
        let Certificates { ca, cert, key } = make_certificates(
            &scratch.dir,
            &["allowed.test", "other.test", "*.allowed.test"],
        );
        let services: Vec<String> = services.iter().map(|s| s.to_string()).collect();
        let up = UpstreamHost::start_server(UPSTREAM_PY, move |addr, log| {
            let mut args = vec![addr.to_string().into(), cert.into(), key.into(), log.into()];
            args.extend(services.into_iter().map(Into::into));
            args
        });
        Bench {
            up,
            scratch,
            ca,
            runs: 0,
        }
    }

    /// A policy of team `e2e` pinning `allowed.test` and `other.test` to the host, trusting
    /// its CA, with the allow entries `allow` (YAML list items indented 4; `SUBNET` is the
    /// host's /30) and the top-level sections `top`. [`ENTRIES`] is the usual `allow`.
    pub fn policy(&self, allow: &str, top: &str) -> String {
        format!(
            "version: 1\nteam: e2e\nnetwork:\n  hosts:\n    allowed.test: {up}\n    other.test: {up}\n  upstream_ca: {{file: {ca}}}\n  allow:\n{allow}\n{top}",
            up = self.up.addr,
            ca = self.ca.display(),
            allow = allow.replace("SUBNET", &self.up.subnet()),
        )
    }

    /// Runs `script` (after the client helpers) with `/usr/bin/python3` in `tollgate run
    /// --policy … --audit … --summary …` plus `sandbox`'s options. The exit status is the
    /// test's to check.
    pub fn run(&mut self, sandbox: Sandbox, policy: &str, script: &str) -> Outcome {
        self.runs += 1;
        let outcome = run_script(&self.scratch, self.runs, sandbox, policy, script);
        assert!(
            self.up.alive(),
            "the test host died during the run\n{}",
            outcome.describe()
        );
        outcome
    }

    /// Every event the host logged so far (connections, requests, DNS messages), in order.
    pub fn events(&self) -> Vec<Value> {
        self.up.requests()
    }

    /// The logged events of kind `event` (`connection`, `request`, `dns`).
    pub fn events_of(&self, event: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == event)
            .collect()
    }

    /// The logged requests whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Value> {
        self.events_of("request")
            .into_iter()
            .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
            .collect()
    }
}

/// The usual allow entries: `allowed.test` and `other.test`, each on 8080 (http) and 443
/// (https) only.
pub const ENTRIES: &str = "    - host: allowed.test
      ports: [8080, 443]
      schemes: [http, https]
      allowed_ips: [SUBNET]
    - host: other.test
      ports: [8080, 443]
      schemes: [http, https]
      allowed_ips: [SUBNET]
";

/// Writes run `n`'s policy and script (the client helpers, then `script`) into `scratch`.
pub fn write_run(scratch: &Scratch, n: u32, policy: &str, script: &str) -> ScriptRun {
    ScriptRun::write(scratch, n, "client", policy, CLIENT_PY, script)
}

/// Runs `script` (after the client helpers) with `/usr/bin/python3` in `tollgate run
/// --policy … --audit … --summary …` plus `sandbox`'s options, as run `n` of `scratch`.
pub fn run_script(
    scratch: &Scratch,
    n: u32,
    sandbox: Sandbox,
    policy: &str,
    script: &str,
) -> Outcome {
    let run = write_run(scratch, n, policy, script);
    let finished = run.sandbox(sandbox).run([PYTHON, run.script_arg()]);
    outcome_of(&run, finished)
}

/// What `run` left behind, once its `tollgate run` has `finished`.
pub fn outcome_of(run: &ScriptRun, finished: Finished) -> Outcome {
    let summary_text = run.summary_text();
    Outcome {
        results: results_line(&finished.stdout).unwrap_or(Value::Null),
        audit: read_json_lines(&run.audit),
        audit_text: run.audit_text(),
        summary: serde_json::from_str(summary_text.trim()).unwrap_or(Value::Null),
        summary_text,
        finished,
    }
}

impl Outcome {
    /// The client's observation `name`; panics with the run's output when missing.
    pub fn result(&self, name: &str) -> &Value {
        let value = &self.results[name];
        assert!(
            !value.is_null(),
            "the client recorded no result {name:?}\n{}",
            self.describe()
        );
        value
    }

    /// The records of `type` `kind` (`http`, `connect`, `bypass_attempt`).
    pub fn records(&self, kind: &str) -> Vec<&Value> {
        self.audit.iter().filter(|r| r["type"] == kind).collect()
    }

    /// The `connect` records with `outcome`.
    pub fn connects_with(&self, outcome: &str) -> Vec<&Value> {
        self.records("connect")
            .into_iter()
            .filter(|r| r["outcome"] == outcome)
            .collect()
    }

    /// The summary's `dns` counters (Null when there are none).
    pub fn dns(&self) -> &Value {
        &self.summary["dns"]
    }

    pub fn execution(&self) -> &str {
        self.summary["execution"].as_str().unwrap_or_default()
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

/// Asserts the run itself went through: tollgate exited 0, the client printed its results,
/// no panic anywhere in stderr, and nothing of the execution is left behind.
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
    assert!(
        !outcome.finished.stderr.contains("panicked"),
        "something panicked\n{}",
        outcome.describe()
    );
    assert_execution_gone(outcome.execution());
}

/// Whether `text` is an address in the synthetic range 127.77.0.0/16.
pub fn is_synthetic(text: &str) -> bool {
    text.parse::<std::net::Ipv4Addr>()
        .is_ok_and(|a| a.octets()[0] == 127 && a.octets()[1] == 77)
}

/// How many events a record stands for: `count` on an aggregated record, else one.
pub fn events(record: &Value) -> u64 {
    record.get("count").and_then(Value::as_u64).unwrap_or(1)
}

/// The `Tollgate-Error` header of a client result (`brief()` puts it in `error`).
pub fn tollgate_error(response: &Value) -> Option<&str> {
    response["error"].as_str()
}
