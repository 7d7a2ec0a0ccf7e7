//! The files of one scripted `tollgate run`: a bench's numbered policy and Python client
//! script, the `--audit` and `--summary` files tollgate writes, and reading back what it left.
//!
//! The proxy suites (`proxy_e2e`, `proxy_integrity`, `tls_e2e`, the refusals bench) each run
//! many executions of a client script against one upstream; numbering every run's files keeps
//! one run's audit from being read as another's. What each suite asserts of a run stays with
//! the suite.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use serde_json::Value;

use crate::{sandbox::Sandbox, Scratch};

/// Run `n`'s files: the policy and the script in the scratch directory the sandbox shares,
/// the audit and the summary in the root-only output directory beside it.
pub struct ScriptRun {
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
