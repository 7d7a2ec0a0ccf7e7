//! The files of one scripted `tollgate run`: a bench's numbered policy and Python client
//! script, the `--audit` and `--summary` files tollgate writes, and reading back what it left
//! ([`Outcome`]).
//!
//! The proxy suites (`proxy_e2e`, `proxy_integrity`, `tls_e2e`, the refusals and transparent
//! benches) each run many executions of a client script against one upstream; numbering every
//! run's files keeps one run's audit from being read as another's. What each suite asserts of
//! a run stays with the suite.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use serde_json::Value;

use crate::{
    sandbox::{assert_execution_gone, read_json_lines, Finished, Sandbox},
    Scratch,
};

/// Run `n`'s files: the policy and the script in the scratch directory the sandbox shares,
/// the audit and the summary in the root-only output directory beside it.
pub struct ScriptRun {
    /// The run's number among its bench's runs (from 1), in every file name.
    pub n: u32,
    pub policy: PathBuf,
    pub script: PathBuf,
    pub audit: PathBuf,
    pub summary: PathBuf,
}

impl ScriptRun {
    /// Writes run `n`'s `policy{n}.yaml` and `{name}{n}.py` (`prelude`, then `script`;
    /// 0644, so the sandbox user can read it) into `scratch`, and names its outputs.
    pub fn write(
        scratch: &Scratch,
        n: u32,
        name: &str,
        policy: &str,
        prelude: &str,
        script: &str,
    ) -> ScriptRun {
        let policy = scratch.file(&format!("policy{n}.yaml"), policy);
        let script = scratch.file(&format!("{name}{n}.py"), &format!("{prelude}\n{script}"));
        fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).expect("chmod script");
        ScriptRun {
            n,
            policy,
            script,
            audit: scratch.output(&format!("audit{n}.jsonl")),
            summary: scratch.output(&format!("summary{n}.json")),
        }
    }

    /// `sandbox` with this run's `--policy`, `--audit` and `--summary`.
    pub fn sandbox(&self, sandbox: Sandbox) -> Sandbox {
        sandbox
            .policy(&self.policy)
            .audit(&self.audit)
            .summary(&self.summary)
    }

    /// The script's path, as the argument `python3` takes.
    pub fn script_arg(&self) -> &str {
        self.script.to_str().expect("a UTF-8 script path")
    }

    /// The audit log's text ("" when tollgate wrote none).
    pub fn audit_text(&self) -> String {
        fs::read_to_string(&self.audit).unwrap_or_default()
    }

    /// The summary's text ("" when tollgate wrote none).
    pub fn summary_text(&self) -> String {
        fs::read_to_string(&self.summary).unwrap_or_default()
    }

    /// What this run left, once its `tollgate run` has `finished`.
    pub fn outcome(&self, finished: Finished) -> Outcome {
        let summary_text = self.summary_text();
        Outcome {
            results: results_line(&finished.stdout).unwrap_or(Value::Null),
            audit: read_json_lines(&self.audit),
            audit_text: self.audit_text(),
            summary: serde_json::from_str(summary_text.trim()).unwrap_or(Value::Null),
            summary_text,
            policy: self.policy.clone(),
            finished,
        }
    }
}

/// What one scripted `tollgate run` left behind.
pub struct Outcome {
    pub finished: Finished,
    /// The client's results line (Null when it printed none, e.g. when it was killed).
    pub results: Value,
    pub audit: Vec<Value>,
    pub audit_text: String,
    /// The summary (Null when tollgate wrote none).
    pub summary: Value,
    pub summary_text: String,
    /// The policy file the run used (for `tollgate policy eval` against the same file).
    pub policy: PathBuf,
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

    /// The `http` records about `host`.
    pub fn http_records(&self, host: &str) -> Vec<&Value> {
        self.records("http")
            .into_iter()
            .filter(|r| r["host"] == host)
            .collect()
    }

    /// The `connect` records with `outcome`.
    pub fn connects_with(&self, outcome: &str) -> Vec<&Value> {
        self.records("connect")
            .into_iter()
            .filter(|r| r["outcome"] == outcome)
            .collect()
    }

    /// The summary's `dns` counters (Null when there are none: no stub resolver ran).
    pub fn dns(&self) -> &Value {
        &self.summary["dns"]
    }

    /// The execution id the summary names ("" without a summary).
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

/// How many events an audit record stands for: `count` on an aggregated record, else one.
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

/// The client's results: the last line of its stdout that opens a JSON object, parsed.
pub fn results_line(stdout: &str) -> Option<Value> {
    stdout
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .and_then(|line| serde_json::from_str(line).ok())
}

/// Every file in `dir` with its contents (what a sandboxed script wrote there).
pub fn files_in(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fs::read_dir(dir)
        .expect("read the output dir")
        .flatten()
        .map(|entry| (entry.path(), fs::read(entry.path()).unwrap_or_default()))
        .collect()
}
