//! Team Rego in worker processes: the supervisor never parses, compiles or evaluates a team's
//! own module itself.
//!
//! regorus bounds the number of instructions an evaluation runs and the time between them,
//! but not what a single built-in call costs (`numbers.range(1, 1e12)` asks for 24 TB and the
//! allocation failure aborts the process; `concat` of a thousand copies of a megabyte string
//! is one call), nor the stack a recursive function or a deeply nested literal uses. None of
//! that can be caught inside a process, so it happens in another one: `tollgate policy
//! __team-rules-worker` ([`worker`]), which limits its own address space, drops root and
//! dies with the supervisor. Whatever the module does, the worst outcome is that worker's
//! death: the request is refused with `team_rule_error` and a message saying what happened,
//! and the next request gets a fresh worker. An evaluation that has not answered by
//! [`EVALUATION_DEADLINE`] is killed the same way (regorus's own 250 ms limit usually stops
//! it first, with the worker still alive).
//!
//! [`load`] is how the supervisor loads a policy (`run`, `policy check`, `policy eval`): the
//! module is compiled by a first worker (so a compile error is a policy error, at its line),
//! which then stays as the first of at most [`MAX_WORKERS`]. Decisions call
//! [`TeamEvaluator::evaluate`], which borrows an idle worker, or starts one, or waits for one.

pub mod wire;
pub mod worker;

use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tollgate_policy::rego::{RegoCompileError, Value};
use tollgate_policy::{Policy, PolicyErrors, TeamEvaluator, TeamModule, TeamOutcome, TeamRego};

use wire::{FromWorker, Late, ToWorker};

/// The hidden subcommand (under `tollgate policy`) that runs [`worker::serve`].
pub const WORKER_COMMAND: &str = "__team-rules-worker";

/// Longest one evaluation may take, answer included, before its worker is killed.
pub const EVALUATION_DEADLINE: Duration = Duration::from_secs(1);

/// Longest compiling a module may take (a 1 MiB module compiles in well under a second).
const COMPILE_DEADLINE: Duration = Duration::from_secs(20);

/// Workers evaluating at once, each within [`worker::ADDRESS_SPACE`]: a module written to
/// fill its memory holds at most this many times that.
pub const MAX_WORKERS: usize = 2;

/// After this many evaluations in a row that killed their worker, the module is not started
/// again: every request is refused without spawning another process.
const GIVE_UP_AFTER: u32 = 16;

/// Loads the policy at `path` with its team module in worker processes of this executable.
pub fn load(path: &Path) -> Result<Policy, PolicyErrors> {
    load_with_worker(path, Path::new("/proc/self/exe"))
}

/// [`load`] for a policy given as text (the node service's last good version of a team's
/// file); `name` is what messages call it.
pub fn load_text(name: &str, text: &str) -> Result<Policy, PolicyErrors> {
    let start = |module: &TeamModule| -> Result<Arc<dyn TeamEvaluator>, RegoCompileError> {
        Workers::start(Path::new("/proc/self/exe"), module)
            .map(|w| Arc::new(w) as Arc<dyn TeamEvaluator>)
    };
    Policy::from_yaml_with(name, text, TeamRego::Isolated(&start))
}

/// [`load`], with workers started from `executable` (a `tollgate` binary; for tests and
/// benchmarks that are not one).
pub fn load_with_worker(path: &Path, executable: &Path) -> Result<Policy, PolicyErrors> {
    let start = |module: &TeamModule| -> Result<Arc<dyn TeamEvaluator>, RegoCompileError> {
        Workers::start(executable, module).map(|w| Arc::new(w) as Arc<dyn TeamEvaluator>)
    };
    Policy::load_with(path, TeamRego::Isolated(&start))
}

/// The workers of one policy's team module.
struct Workers {
    executable: PathBuf,
    module: TeamModule,
    pool: Mutex<Pool>,
    returned: Condvar,
}

#[derive(Default)]
struct Pool {
    idle: Vec<Worker>,
    /// Workers alive, idle or evaluating.
    alive: usize,
    /// Evaluations in a row that killed their worker.
    deaths: u32,
}

impl Workers {
    fn start(executable: &Path, module: &TeamModule) -> Result<Workers, RegoCompileError> {
        let first = Worker::spawn(executable, module).map_err(|failure| match failure {
            Spawned::Refused(error) => error,
            Spawned::Failed(message) => RegoCompileError {
                line: None,
                column: None,
                message: format!("the team module could not be compiled: {message}"),
            },
        })?;
        Ok(Workers {
            executable: executable.to_owned(),
            module: module.clone(),
            pool: Mutex::new(Pool {
                idle: vec![first],
                alive: 1,
                deaths: 0,
            }),
            returned: Condvar::new(),
        })
    }

    /// An idle worker, a new one if fewer than [`MAX_WORKERS`] are alive, or the next one
    /// returned.
    fn borrow(&self) -> Result<Worker, String> {
        let mut pool = self
            .pool
            .lock()
            .map_err(|_| "the worker pool is poisoned")?;
        loop {
            if pool.deaths >= GIVE_UP_AFTER {
                return Err(format!(
                    "they killed their evaluator {GIVE_UP_AFTER} times in a row, so they are no \
                     longer run"
                ));
            }
            if let Some(worker) = pool.idle.pop() {
                return Ok(worker);
            }
            if pool.alive < MAX_WORKERS {
                pool.alive += 1;
                drop(pool);
                let spawned = Worker::spawn(&self.executable, &self.module);
                if spawned.is_err() {
                    self.lost(false);
                }
                return spawned.map_err(|failure| match failure {
                    Spawned::Refused(error) => error.message,
                    Spawned::Failed(message) => message,
                });
            }
            pool = self
                .returned
                .wait(pool)
                .map_err(|_| "the worker pool is poisoned")?;
        }
    }

    fn give_back(&self, worker: Worker) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.deaths = 0;
            pool.idle.push(worker);
        }
        self.returned.notify_one();
    }

    /// A worker is gone; `killed_by_rules` counts towards giving up.
    fn lost(&self, killed_by_rules: bool) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.alive = pool.alive.saturating_sub(1);
            if killed_by_rules {
                pool.deaths += 1;
            }
        }
        self.returned.notify_one();
    }
}

impl TeamEvaluator for Workers {
    fn evaluate(&self, input: &Value) -> Result<TeamOutcome, String> {
        let mut worker = self.borrow()?;
        match worker.evaluate(input) {
            Ok(answer) => {
                self.give_back(worker);
                answer
            }
            Err(death) => {
                self.lost(true);
                Err(death)
            }
        }
    }
}

/// One worker process and its pipes.
struct Worker {
    child: Child,
    to: ChildStdin,
    from: ChildStdout,
}

enum Spawned {
    /// The module does not compile (its own error, at its line).
    Refused(RegoCompileError),
    /// The worker could not be started, or died compiling.
    Failed(String),
}

impl Worker {
    fn spawn(executable: &Path, module: &TeamModule) -> Result<Worker, Spawned> {
        let mut child = Command::new(executable)
            .args(["policy", WORKER_COMMAND])
            .env_clear()
            .env(worker::SUPERVISOR_ENV, std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // A module's `print` must not reach the operator's terminal or fill a pipe.
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Spawned::Failed(format!("cannot start a worker process: {e}")))?;
        let (Some(to), Some(from)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Spawned::Failed("the worker has no pipes".into()));
        };
        let mut worker = Worker { child, to, from };
        let answer = worker.call(&ToWorker::Compile(module.clone()), COMPILE_DEADLINE);
        match answer {
            Ok(FromWorker::Compiled) => Ok(worker),
            Ok(FromWorker::CompileError {
                line,
                column,
                message,
            }) => {
                drop(worker);
                Err(Spawned::Refused(RegoCompileError {
                    line,
                    column,
                    message,
                }))
            }
            Ok(other) => Err(Spawned::Failed(format!(
                "the worker answered {other:?} to its module"
            ))),
            Err(why) => Err(Spawned::Failed(worker.death(why, COMPILE_DEADLINE))),
        }
    }

    /// Evaluates one input: `Ok` with the rules' answer (which may itself be a failure the
    /// worker survived), `Err` when the worker is dead (or no longer usable) and must go.
    fn evaluate(&mut self, input: &Value) -> Result<Result<TeamOutcome, String>, String> {
        match self.call(&ToWorker::Evaluate(input.clone()), EVALUATION_DEADLINE) {
            Ok(FromWorker::Outcome(outcome)) => Ok(Ok(outcome)),
            Ok(FromWorker::Failed(message)) => Ok(Err(message)),
            Ok(other) => Err(format!("the worker answered {other:?} to an input")),
            Err(why) => Err(self.death(why, EVALUATION_DEADLINE)),
        }
    }

    fn call(&mut self, message: &ToWorker, within: Duration) -> Result<FromWorker, Late> {
        let deadline = Instant::now() + within;
        wire::send(&mut self.to, message, wire::MAX_REQUEST).map_err(Late::Closed)?;
        wire::receive_by(&mut self.from, deadline, wire::MAX_ANSWER)
    }

    /// Kills and reaps the worker after `why`, and says what became of it.
    fn death(&mut self, why: Late, deadline: Duration) -> String {
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        match why {
            Late::Deadline => format!("they ran longer than {deadline:?} and were stopped"),
            Late::Malformed(message) => format!("their answer was refused: {message}"),
            Late::Closed(_) => match status.and_then(|s| s.signal()) {
                Some(libc::SIGABRT) => format!(
                    "their evaluator aborted: they asked for more than its {} MiB of memory or \
                     overflowed its stack",
                    worker::ADDRESS_SPACE >> 20
                ),
                Some(libc::SIGSEGV) | Some(libc::SIGBUS) => {
                    "their evaluator crashed (its stack overflowed)".into()
                }
                Some(signal) => format!("their evaluator was killed by signal {signal}"),
                None => match status.and_then(|s| s.code()) {
                    Some(101) => "their evaluator failed (the Rego engine panicked)".into(),
                    Some(code) => format!("their evaluator exited with status {code}"),
                    None => "their evaluator exited".into(),
                },
            },
        }
    }
}

impl Drop for Worker {
    /// A worker no longer needed, or dead: killed (a no-op if it already exited) and reaped.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
