//! One test's host with a CA of its own, a policy pinning names to it, and numbered scripted
//! runs of `tollgate run` against it.
//!
//! The refusals, transparent-egress and trust-store suites all build the same thing: a
//! scratch directory the sandbox may read, a test CA and a leaf for the names the test uses,
//! a test host in a network namespace of its own ([`UpstreamHost`] running
//! `tests/transparent_upstream.py`) serving that leaf, a policy that pins the names to the
//! host and trusts the CA (`network.upstream_ca`), and runs of a Python client script with
//! `--audit` and `--summary` read back into an [`Outcome`]. Which names, which services and
//! which client helpers is each suite's support module's choice; what a test asserts of a run
//! stays with the test.
//!
//! The host logs every event as one JSON line with an `event` field: `connection` (a TCP
//! connection accepted), `request` (a request line, its headers, scheme and port) and `dns`
//! (a DNS message); see the script's header for the answers it gives.

use std::{fs, os::unix::fs::PermissionsExt as _, path::PathBuf};

use serde_json::Value;

use crate::{
    certs::make_certificates,
    sandbox::{Finished, Sandbox, PYTHON},
    script_run::{Outcome, ScriptRun},
    upstream::UpstreamHost,
    Scratch,
};

/// The test host's server (see the comment at its top).
pub const HOST_PY: &str = include_str!("../tests/transparent_upstream.py");

/// One test's host, its CA, and scratch space for the runs.
pub struct Bench {
    pub up: UpstreamHost,
    pub scratch: Scratch,
    /// The test CA's certificate (`network.upstream_ca`).
    pub ca: PathBuf,
    /// The Python helpers [`Bench::run`] puts before every script.
    client: &'static str,
    runs: u32,
}

impl Bench {
    /// Makes a CA and a leaf for `names` in a new scratch directory (0755, so the sandbox
    /// user can read the scripts in it), and starts the test host serving `services`
    /// (`http:PORT`, `https:PORT` with the leaf, `dns:PORT`). [`Bench::run`] puts `client`
    /// before every script.
    pub fn start(tag: &str, names: &[&str], services: &[&str], client: &'static str) -> Bench {
        let scratch = Scratch::new(tag);
        fs::set_permissions(&scratch.dir, fs::Permissions::from_mode(0o755))
            .expect("chmod the scratch dir");
        let leaf = make_certificates(&scratch.dir, names);
        let up = UpstreamHost::start_server(HOST_PY, |addr, log| {
            let mut args = vec![
                addr.to_string().into(),
                leaf.cert.clone().into(),
                leaf.key.clone().into(),
                log.into(),
            ];
            args.extend(services.iter().map(Into::into));
            args
        });
        Bench {
            up,
            scratch,
            ca: leaf.ca,
            client,
            runs: 0,
        }
    }

    /// A policy of team `e2e` pinning each of `names` to the host (`name=ADDR` to another
    /// address), trusting its CA, with the allow entries `allow` (YAML list items indented 4;
    /// `SUBNET` is replaced by the host's /30) and the top-level sections `top`.
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

    /// The next run's files: `policy`, and `prelude` followed by `script` as its script.
    pub fn write_run(&mut self, policy: &str, prelude: &str, script: &str) -> ScriptRun {
        self.runs += 1;
        ScriptRun::write(&self.scratch, self.runs, "client", policy, prelude, script)
    }

    /// What `run` left once its `tollgate run` has `finished`; panics if the host died
    /// meanwhile (a dead host fails every test that needed it, so say so first).
    pub fn outcome(&mut self, run: &ScriptRun, finished: Finished) -> Outcome {
        let outcome = run.outcome(finished);
        assert!(
            self.up.alive(),
            "the upstream host died during the run\n{}",
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

    /// The logged requests whose path starts with `prefix` (only requests have a path).
    pub fn requests_to(&self, prefix: &str) -> Vec<Value> {
        self.up.requests_to(prefix)
    }

    /// Runs `script` (after the client helpers) with `/usr/bin/python3` in `tollgate run
    /// --policy … --audit … --summary …` plus `sandbox`'s options. The exit status is the
    /// test's to check.
    pub fn run(&mut self, sandbox: Sandbox, policy: &str, script: &str) -> Outcome {
        let run = self.write_run(policy, self.client, script);
        let finished = run.sandbox(sandbox).run([PYTHON, run.script_arg()]);
        self.outcome(&run, finished)
    }
}
