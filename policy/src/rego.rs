//! The Rego half of a decision: the team's own module, compiled once per policy load with
//! regorus and evaluated per request without reparsing; and the built-in module, the
//! specification of the native verdict ([`crate::verdict`]), compiled on first use only.
//!
//! The team module lives in package `tollgate.team` and is evaluated in its own engine, after
//! the built-in verdict allowed the request. Its only outputs are denials and header edits,
//! combined in Rust, so no team rule can turn a built-in refusal into an allow.
//!
//! Where the team module runs is the caller's choice ([`TeamRego`]). regorus bounds the
//! *number* of instructions and the time between them, but not what one built-in call costs:
//! `numbers.range(1, 1e12)` asks the allocator for 24 TB and aborts the process,
//! `numbers.range(1, 1e8)` fills 2.4 GB before the next instruction, `concat` of a thousand
//! copies of a megabyte string is one call, and a recursive function overflows the stack;
//! array literals nested a few thousand deep overflow the parser's. None of that is catchable
//! in-process (an allocation failure aborts), so a module the caller does not trust is compiled
//! and evaluated by a [`TeamEvaluator`] the caller supplies — the supervisor's runs in a worker
//! process with a memory limit and a deadline, and any failure there is a `team_rule_error`.

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::{Program, RegoVM};
pub use regorus::Value;
use regorus::{CompiledPolicy, Engine};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::Duration;

pub const BUILTIN_MODULE: &str = include_str!("../rego/tollgate.rego");
const BUILTIN_ENTRYPOINT: &str = "data.tollgate.decision";
pub const TEAM_PACKAGE: &str = "data.tollgate.team";
const TEAM_MODULE_FILE: &str = "team.rego";

/// Collects the team module's outputs into one value, so one evaluation answers everything
/// and a team module that defines none of them yields empty collections.
const TEAM_RESULT_MODULE: &str = r#"
package tollgate.team_result
import rego.v1
deny := {msg | some msg in data.tollgate.team.deny}
set_headers := {name: value | some name, value in data.tollgate.team.set_headers}
remove_headers := {name | some name in data.tollgate.team.remove_headers}
result := {"deny": deny, "set_headers": set_headers, "remove_headers": remove_headers}
"#;
const TEAM_ENTRYPOINT: &str = "data.tollgate.team_result.result";

/// A Rego rule that runs longer than this is stopped and the request refused: a team module
/// must not be able to stall the proxy.
const EVALUATION_LIMIT: Duration = Duration::from_millis(250);

/// A compile error in the team's module, with its position inside the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegoCompileError {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

/// One compiled entry point. Evaluation runs regorus's bytecode VM (RVM) when the module
/// compiles to it (measurably faster than the tree interpreter: docs/benchmarks.md), and the
/// interpreter otherwise: the RVM does not cover all of Rego yet, and a team module may use
/// what it lacks. `vm_and_interpreter_agree` below keeps the two honest.
///
/// A VM loaded with the program and the policy data is kept for reuse (one per concurrent
/// evaluation, in `idle`): setting up a fresh one re-checks the data against the program's
/// rules on every request. Each execution resets the VM's per-run state — registers, rule
/// results, caches — so nothing of one request's input survives into the next.
struct Compiled {
    policy: CompiledPolicy,
    program: Option<Arc<Program>>,
    entrypoint: &'static str,
    data: Value,
    idle: Mutex<Vec<RegoVM>>,
}

impl Clone for Compiled {
    fn clone(&self) -> Self {
        Compiled {
            policy: self.policy.clone(),
            program: self.program.clone(),
            entrypoint: self.entrypoint,
            data: self.data.clone(),
            idle: Mutex::new(Vec::new()),
        }
    }
}

/// VMs kept per entry point: more would only hold memory (evaluations are short, and run on
/// at most a few threads at once).
const IDLE_VMS: usize = 8;

impl Compiled {
    fn new(policy: CompiledPolicy, entrypoint: &'static str, data: Value) -> Self {
        let program = Compiler::compile_from_policy(&policy, &[entrypoint]).ok();
        Compiled {
            policy,
            program,
            entrypoint,
            data,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn eval(&self, input: Value) -> Result<Value, String> {
        let Some(program) = &self.program else {
            return self
                .policy
                .eval_with_input(input)
                .map_err(|e| e.to_string());
        };
        let reused = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut vm = match reused {
            Some(vm) => vm,
            None => {
                let mut vm = RegoVM::new_with_policy(self.policy.clone());
                vm.load_program(program.clone());
                vm.set_data(self.data.clone()).map_err(|e| e.to_string())?;
                vm
            }
        };
        vm.set_input(input);
        let result = vm
            .execute_entry_point_by_name(self.entrypoint)
            .map_err(|e| e.to_string());
        // The input goes with the request; a VM whose run failed is not kept.
        vm.set_input(Value::Null);
        if result.is_ok() {
            if let Ok(mut idle) = self.idle.lock() {
                if idle.len() < IDLE_VMS {
                    idle.push(vm);
                }
            }
        }
        result
    }
}

#[derive(Clone)]
pub(crate) struct CompiledRules {
    /// The built-in module, compiled the first time it is asked ([`CompiledRules::builtin`]):
    /// no decision at runtime needs it, so a policy load does not pay for it. Shared by
    /// clones of the policy, so it is compiled at most once per load.
    builtin: Arc<OnceLock<Result<Compiled, String>>>,
    /// `data` for the built-in module.
    data: Value,
    team: Option<TeamRules>,
}

#[derive(Clone)]
enum TeamRules {
    InProcess(Arc<LocalTeamRules>),
    Isolated(Arc<dyn TeamEvaluator>),
}

/// Where a policy's team module is compiled and evaluated.
#[derive(Clone, Copy)]
pub enum TeamRego<'a> {
    /// In this process: for modules the caller trusts (tests, benchmarks, embedders). A module
    /// written to exhaust memory or the stack takes this process down with it.
    InProcess,
    /// By `start`, which compiles the module (a compile error is a policy error) and returns
    /// the evaluator, e.g. one backed by a worker process with its own limits.
    Isolated(&'a TeamStarter<'a>),
}

/// Compiles a team module wherever it is to run and returns its evaluator.
pub type TeamStarter<'a> =
    dyn Fn(&TeamModule) -> Result<Arc<dyn TeamEvaluator>, RegoCompileError> + Sync + 'a;

/// Evaluates a compiled team module on one request's input. An error refuses the request
/// (`team_rule_error`) with the error as part of the message.
pub trait TeamEvaluator: Send + Sync {
    fn evaluate(&self, input: &Value) -> Result<TeamOutcome, String>;
}

/// Everything needed to compile a team module elsewhere: its text and `data` (the policy
/// document, which holds no secret values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeamModule {
    pub source: String,
    pub data: Value,
}

impl TeamModule {
    /// Compiles the module here (an evaluator for the worker side, or for trusted modules).
    pub fn compile(&self) -> Result<LocalTeamRules, RegoCompileError> {
        set_evaluation_limit();
        let policy = compile_team(self.data.clone(), &self.source)?;
        Ok(LocalTeamRules(Compiled::new(
            policy,
            TEAM_ENTRYPOINT,
            self.data.clone(),
        )))
    }
}

/// A team module compiled in this process.
pub struct LocalTeamRules(Compiled);

impl TeamEvaluator for LocalTeamRules {
    fn evaluate(&self, input: &Value) -> Result<TeamOutcome, String> {
        let result = self.0.eval(input.clone())?;
        team_outcome(&result)
    }
}

/// What the team module asked for on one request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamOutcome {
    pub denials: Vec<String>,
    pub set_headers: BTreeMap<String, String>,
    pub remove_headers: BTreeSet<String>,
}

fn set_evaluation_limit() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        regorus::utils::limits::set_fallback_execution_timer_config(Some(
            regorus::utils::limits::ExecutionTimerConfig {
                limit: EVALUATION_LIMIT,
                check_interval: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN),
            },
        ));
    });
}

impl CompiledRules {
    pub(crate) fn compile(
        data: Value,
        team_module: Option<&str>,
        where_team: TeamRego,
    ) -> Result<Self, RegoCompileError> {
        set_evaluation_limit();
        let team = team_module
            .map(|text| {
                let module = TeamModule {
                    source: text.to_owned(),
                    data: data.clone(),
                };
                match where_team {
                    TeamRego::InProcess => module
                        .compile()
                        .map(|rules| TeamRules::InProcess(Arc::new(rules))),
                    TeamRego::Isolated(start) => {
                        check_team_nesting(text)?;
                        start(&module).map(TeamRules::Isolated)
                    }
                }
            })
            .transpose()?;
        Ok(CompiledRules {
            builtin: Arc::default(),
            data,
            team,
        })
    }

    /// The built-in module's `decision` on `input`; compiling the module first if this is
    /// the first time (an error then is this and every later evaluation's error).
    pub(crate) fn builtin(&self, input: Value) -> Result<Value, String> {
        self.compiled_builtin()?.eval(input)
    }

    fn compiled_builtin(&self) -> Result<&Compiled, String> {
        self.builtin
            .get_or_init(|| compile_builtin(self.data.clone()))
            .as_ref()
            .map_err(String::clone)
    }

    pub(crate) fn has_team_rules(&self) -> bool {
        self.team.is_some()
    }

    pub(crate) fn team(&self, input: Value) -> Result<TeamOutcome, String> {
        match &self.team {
            None => Ok(TeamOutcome::default()),
            Some(TeamRules::InProcess(rules)) => rules.evaluate(&input),
            Some(TeamRules::Isolated(evaluator)) => evaluator.evaluate(&input),
        }
    }
}

fn compile_builtin(data: Value) -> Result<Compiled, String> {
    set_evaluation_limit();
    let mut engine = Engine::new();
    engine
        .add_data(data.clone())
        .and_then(|_| engine.add_policy("tollgate.rego".into(), BUILTIN_MODULE.into()))
        .map_err(|e| format!("built-in Rego failed to load: {e}"))?;
    let builtin = engine
        .compile_with_entrypoint(&BUILTIN_ENTRYPOINT.into())
        .map_err(|e| format!("built-in Rego failed to compile: {e}"))?;
    Ok(Compiled::new(builtin, BUILTIN_ENTRYPOINT, data))
}

fn internal(message: String) -> RegoCompileError {
    RegoCompileError {
        line: None,
        column: None,
        message,
    }
}

/// Deepest nesting of `[` and `{` a team module may use. regorus parses each of them first as
/// a comprehension and, when that fails, again as a literal, so the time to parse nested
/// literals grows about threefold per level (14 levels took 0.5 s in a debug build, 24 did
/// not finish in a minute) and a few thousand levels overflow its stack; its own limit (32)
/// counts only parentheses. Ten levels are more than any rule needs.
pub const MAX_REGO_NESTING: usize = 10;

/// Refuses a team module whose `[`/`{` nesting exceeds [`MAX_REGO_NESTING`], before regorus
/// parses it, at the bracket that went too deep (line and column within the module). Strings
/// (`"…"` with escapes, `` `…` ``) and `#` comments are skipped; an unterminated one ends the
/// scan, leaving the error to regorus.
pub fn check_team_nesting(text: &str) -> Result<(), RegoCompileError> {
    let (mut line, mut column, mut depth) = (1usize, 0usize, 0usize);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        column += 1;
        match c {
            '\n' => {
                line += 1;
                column = 0;
            }
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        column = 0;
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    column += 1;
                    match c {
                        '\n' => return Ok(()),
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => break,
                        _ => escaped = false,
                    }
                }
            }
            '`' => {
                for c in chars.by_ref() {
                    column += 1;
                    match c {
                        '\n' => {
                            line += 1;
                            column = 0;
                        }
                        '`' => break,
                        _ => {}
                    }
                }
            }
            '[' | '{' => {
                depth += 1;
                if depth > MAX_REGO_NESTING {
                    return Err(RegoCompileError {
                        line: Some(line),
                        column: Some(column),
                        message: format!(
                            "invalid Rego: brackets nested deeper than {MAX_REGO_NESTING} levels"
                        ),
                    });
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn compile_team(data: Value, text: &str) -> Result<CompiledPolicy, RegoCompileError> {
    check_team_nesting(text)?;
    let mut engine = Engine::new();
    engine
        .add_data(data)
        .map_err(|e| internal(format!("policy data failed to load into Rego: {e}")))?;
    let package = engine
        .add_policy(TEAM_MODULE_FILE.into(), text.into())
        .map_err(|e| located(&e.to_string()))?;
    if package != TEAM_PACKAGE {
        return Err(RegoCompileError {
            line: Some(1),
            column: None,
            message: format!(
                "the team module must declare `package tollgate.team`, not `package {}`",
                package.trim_start_matches("data.")
            ),
        });
    }
    engine
        .add_policy("team_result.rego".into(), TEAM_RESULT_MODULE.into())
        .map_err(|e| internal(format!("team result module failed to load: {e}")))?;
    engine
        .compile_with_entrypoint(&TEAM_ENTRYPOINT.into())
        .map_err(|e| located(&e.to_string()))
}

/// regorus messages look like `team.rego:3:5: error: …` followed by a source excerpt; keep
/// the position and the first line of the message.
fn located(message: &str) -> RegoCompileError {
    let mut line = None;
    let mut column = None;
    if let Some(start) = message.find(&format!("{TEAM_MODULE_FILE}:")) {
        let mut numbers = message[start + TEAM_MODULE_FILE.len() + 1..]
            .split(|c: char| !c.is_ascii_digit())
            .take(2)
            .map(|n| n.parse::<usize>().ok());
        line = numbers.next().flatten();
        column = numbers.next().flatten();
    }
    let summary = message
        .lines()
        .find(|l| l.contains("error:"))
        .map(|l| {
            l[l.find("error:").unwrap_or(0)..]
                .trim_start_matches("error:")
                .trim()
        })
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| message.lines().next().unwrap_or("invalid Rego"));
    RegoCompileError {
        line,
        column,
        message: format!("invalid Rego: {summary}"),
    }
}

fn team_outcome(result: &Value) -> Result<TeamOutcome, String> {
    let object = result
        .as_object()
        .map_err(|_| "team rules produced no result".to_owned())?;
    let mut outcome = TeamOutcome::default();
    if let Some(deny) = object.get(&Value::from("deny")) {
        for message in deny
            .as_set()
            .map_err(|_| "`deny` must be a set of strings")?
            .iter()
        {
            let text = message
                .as_string()
                .map_err(|_| "`deny` must contain strings")?;
            outcome.denials.push(text.to_string());
        }
    }
    if let Some(headers) = object.get(&Value::from("set_headers")) {
        for (name, value) in headers
            .as_object()
            .map_err(|_| "`set_headers` must be an object")?
            .iter()
        {
            let name = name
                .as_string()
                .map_err(|_| "`set_headers` keys must be strings")?;
            let value = value
                .as_string()
                .map_err(|_| "`set_headers` values must be strings")?;
            outcome
                .set_headers
                .insert(name.to_string(), value.to_string());
        }
    }
    if let Some(names) = object.get(&Value::from("remove_headers")) {
        for name in names
            .as_set()
            .map_err(|_| "`remove_headers` must be a set")?
            .iter()
        {
            let name = name
                .as_string()
                .map_err(|_| "`remove_headers` must contain strings")?;
            outcome.remove_headers.insert(name.to_string());
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> Value {
        Value::from_json_str(
            r#"{"policy": {"team": "t", "network": true, "allow_all": false, "block_private_ips": true,
                "entries": [{"rule": "network.allow[0]", "host": "a.example", "access": "full", "tls": "intercept", "has_rules": false, "ports": [443]}],
                "providers": []}}"#,
        )
        .unwrap()
    }

    const ALLOWED: &str = r#"{"team": "t",
        "request": {"method": "GET", "scheme": "https", "host": "a.example", "port": 443, "path": "/", "query_keys": [], "header_names": [], "connect": false},
        "destination": {"resolved": true, "addresses": ["93.184.216.34"], "classes": ["public"], "covered": [false], "first_blocked": null, "first_uncovered_internal": null},
        "credential": {"provider": null},
        "match": {"entry": 0, "rule": "network.allow[0]", "near_miss": null, "near_miss_rule": null, "l7_allow": null, "l7_deny": null, "encoded_slash_refused": false,
            "path_parameter_refused": false, "encoded_percent_refused": false, "trailing_dot_refused": false}}"#;

    fn input(edit: impl FnOnce(&mut serde_json::Value)) -> Value {
        let mut doc: serde_json::Value = serde_json::from_str(ALLOWED).unwrap();
        edit(&mut doc);
        Value::from_json_str(&doc.to_string()).unwrap()
    }

    fn allow_of(output: &Value) -> bool {
        output["allow"].as_bool().copied().unwrap_or(false)
    }

    #[test]
    fn the_builtin_module_runs_on_the_bytecode_vm() {
        let rules = CompiledRules::compile(data(), None, TeamRego::InProcess).unwrap();
        assert!(
            rules.compiled_builtin().unwrap().program.is_some(),
            "the RVM must compile the built-in module"
        );
        assert!(allow_of(&rules.builtin(input(|_| {})).unwrap()));
    }

    #[test]
    fn a_missing_fact_never_allows() {
        let rules = CompiledRules::compile(data(), None, TeamRego::InProcess).unwrap();
        for (section, fact) in [
            ("destination", "first_blocked"),
            ("destination", "first_uncovered_internal"),
            ("destination", "resolved"),
            ("destination", "addresses"),
            ("match", "l7_deny"),
            ("match", "encoded_slash_refused"),
            ("match", "path_parameter_refused"),
            ("match", "encoded_percent_refused"),
            ("match", "trailing_dot_refused"),
        ] {
            let doc = input(|d| {
                d[section].as_object_mut().unwrap().remove(fact);
            });
            let output = rules.builtin(doc).unwrap();
            assert!(
                !allow_of(&output),
                "allowed without {section}.{fact}: {output}"
            );
        }
    }

    #[test]
    fn nesting_is_counted_outside_strings_and_comments() {
        let deep = |n: usize| format!("x := {}1{}", "[".repeat(n), "]".repeat(n));
        check_team_nesting(&deep(MAX_REGO_NESTING)).unwrap();
        let error =
            check_team_nesting(&format!("package p\n{}", deep(MAX_REGO_NESTING + 1))).unwrap_err();
        assert_eq!(
            (error.line, error.column),
            (Some(2), Some(6 + MAX_REGO_NESTING)),
            "{error:?}"
        );
        let quoted = format!(
            "a := \"{}\\\"{}\"\nb := `{}\n{}`\n# {}\n",
            "[".repeat(50),
            "{".repeat(50),
            "[".repeat(50),
            "{".repeat(50),
            "[".repeat(50)
        );
        check_team_nesting(&quoted).unwrap();
        let mixed = format!("y := {}", "[{".repeat(MAX_REGO_NESTING));
        assert!(check_team_nesting(&mixed).is_err());
    }

    /// The VM and the interpreter must agree, or the fast path is not the policy.
    #[test]
    fn vm_and_interpreter_agree() {
        let rules = CompiledRules::compile(data(), None, TeamRego::InProcess).unwrap();
        let cases = [
            input(|_| {}),
            input(|d| d["destination"]["first_blocked"] = 0.into()),
            input(|d| d["destination"]["first_uncovered_internal"] = 0.into()),
            input(|d| d["destination"]["resolved"] = false.into()),
            input(|d| d["destination"]["addresses"] = serde_json::json!([])),
            input(|d| d["match"]["entry"] = serde_json::Value::Null),
            input(|d| {
                d["match"]["entry"] = serde_json::Value::Null;
                d["match"]["near_miss"] = "port".into();
            }),
            input(|d| d["match"]["l7_deny"] = "network.allow[0].deny_rules[0]".into()),
            input(|d| d["match"]["encoded_slash_refused"] = true.into()),
            input(|d| d["match"]["path_parameter_refused"] = true.into()),
            input(|d| d["match"]["encoded_percent_refused"] = true.into()),
            input(|d| d["match"]["trailing_dot_refused"] = true.into()),
            input(|d| d["request"]["method"] = "DELETE".into()),
        ];
        for case in cases {
            let vm = rules.builtin(case.clone()).unwrap();
            let interpreted = rules
                .compiled_builtin()
                .unwrap()
                .policy
                .eval_with_input(case.clone())
                .unwrap();
            assert_eq!(vm, interpreted, "input: {case}");
        }
    }
}
